/* SPDX-License-Identifier: MIT */
/*
 * parfor.c - the pool behind parfor.h. A run publishes (fn, arg, base, n) under the mutex with
 * a new generation number and wakes the helpers; everyone takes items from one counter that
 * only ever grows: run k's items are [base, base + n), and an item is taken by a
 * compare-and-swap that refuses to move the counter past base + n. So a helper still looping
 * on an earlier run's bounds can never take (and lose) an item of the next run, and the next
 * run's base is where the last one's counter stopped. The last thread to finish an item
 * signals the caller.
 */
#include "parfor.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <unistd.h>

#include "alloc.h"
#include "status.h"

#define PARFOR_MAX 15

struct bt_parfor {
    pthread_mutex_t mu;
    pthread_cond_t wake; /* helpers: a new generation or stop */
    pthread_cond_t done; /* caller: every item finished */
    uint64_t gen;
    int stop;
    void (*fn)(void *arg, int i);
    void *arg;
    int n;
    long base;           /* the run's first item number */
    atomic_long next;    /* next item number to take (never reset) */
    atomic_int finished; /* items finished in this run */
    int n_threads;
    pthread_t threads[PARFOR_MAX];
};

/* Takes and runs items of the run [base, base + n) until none are left. */
static void take_items(bt_parfor_t *p, void (*fn)(void *, int), void *arg, long base, int n)
{
    for (;;) {
        long cur = atomic_load(&p->next);
        do {
            if (cur >= base + n)
                return;
        } while (!atomic_compare_exchange_weak(&p->next, &cur, cur + 1));
        fn(arg, (int)(cur - base));
        if (atomic_fetch_add(&p->finished, 1) + 1 == n) {
            pthread_mutex_lock(&p->mu);
            pthread_cond_signal(&p->done);
            pthread_mutex_unlock(&p->mu);
        }
    }
}

static void *helper(void *vp)
{
    bt_parfor_t *p = vp;
    uint64_t seen = 0;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (!p->stop && p->gen == seen)
            pthread_cond_wait(&p->wake, &p->mu);
        if (p->stop)
            break;
        seen = p->gen;
        void (*fn)(void *, int) = p->fn;
        void *arg = p->arg;
        int n = p->n;
        long base = p->base;
        pthread_mutex_unlock(&p->mu);
        take_items(p, fn, arg, base, n);
        pthread_mutex_lock(&p->mu);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

int bt_parfor_create(int n_threads, bt_parfor_t **out)
{
    *out = NULL;
    if (n_threads <= 0) {
        long cores = sysconf(_SC_NPROCESSORS_ONLN);
        n_threads = cores > 1 ? (int)cores - 1 : 0;
    }
    if (n_threads > PARFOR_MAX)
        n_threads = PARFOR_MAX;
    if (n_threads == 0)
        return BT_OK;
    bt_parfor_t *p = bt_calloc(1, sizeof *p);
    if (!p)
        return BT_ERR_NOMEM;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->wake, NULL);
    pthread_cond_init(&p->done, NULL);
    for (int t = 0; t < n_threads; t++) {
        if (pthread_create(&p->threads[t], NULL, helper, p) != 0) {
            bt_parfor_destroy(p);
            return BT_ERR_INTERNAL;
        }
        p->n_threads++;
    }
    *out = p;
    return BT_OK;
}

void bt_parfor_destroy(bt_parfor_t *p)
{
    if (!p)
        return;
    pthread_mutex_lock(&p->mu);
    p->stop = 1;
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    for (int t = 0; t < p->n_threads; t++)
        pthread_join(p->threads[t], NULL);
    pthread_cond_destroy(&p->wake);
    pthread_cond_destroy(&p->done);
    pthread_mutex_destroy(&p->mu);
    bt_free(p);
}

int bt_parfor_threads(const bt_parfor_t *p)
{
    return p ? p->n_threads : 0;
}

void bt_parfor_run(bt_parfor_t *p, int n, void (*fn)(void *arg, int i), void *arg)
{
    if (n <= 0)
        return;
    if (!p || n == 1) {
        for (int i = 0; i < n; i++)
            fn(arg, i);
        return;
    }
    pthread_mutex_lock(&p->mu);
    p->fn = fn;
    p->arg = arg;
    p->n = n;
    p->base = atomic_load(&p->next);
    atomic_store(&p->finished, 0);
    p->gen++;
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    take_items(p, fn, arg, p->base, n);
    pthread_mutex_lock(&p->mu);
    while (atomic_load(&p->finished) < n)
        pthread_cond_wait(&p->done, &p->mu);
    pthread_mutex_unlock(&p->mu);
}
