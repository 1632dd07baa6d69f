/* SPDX-License-Identifier: MIT */
/*
 * threadpool.c - a spin-then-sleep worker pool for the CPU backend's parallel loops.
 *
 * One 64-bit word carries the pool's state: the loop's generation (high 32 bits), a "closed"
 * flag and the number of workers that joined the loop. The caller writes the job, then
 * publishes a new generation; a worker that sees it joins with a CAS (only while the loop is
 * open and still of that generation), pulls task indices from next_task until none are left,
 * and leaves. The caller works too, then closes the loop once no worker is inside it, so it
 * never waits for a worker that was descheduled before joining (a 2-core machine shared with
 * other processes does that often); such a worker later finds the loop closed. Workers spin
 * (with a pause) for about a millisecond before sleeping on a condition variable, which the
 * caller signals only when someone sleeps, keeping back-to-back dispatches near a microsecond.
 */
#include "threadpool.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>

#include "../../common/status.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define CPU_RELAX() _mm_pause()
#else
#define CPU_RELAX() ((void)0)
#endif

#define SPIN_NS 1000000 /* how long an idle worker spins before sleeping */
#define SPIN_CHECK 256  /* spins between clock reads */
#define WAIT_YIELD 1024 /* caller spins before yielding the core to a worker inside the loop */
/* Contention detection. Time a loop loses to its workers is the part of waking them beyond
 * WAKE_NORMAL_NS (a wake-up system call, or the caller preempted by the thread it woke) plus
 * the time it waited for them beyond its own share of the work (over STALL_MIN_NS). When that
 * loss exceeds a fifth of the loops' wall time over a window of WINDOW_NS, the workers are
 * losing their cores to other processes (measured on a shared 2-core machine: a 110M decode
 * step went from 5.5 ms on one thread to 11 ms on two, a third of it in wake-ups), so loops run
 * on the caller alone for SOLO_NS and then the pool tries again. Results do not depend on the
 * thread count, so the switch is invisible to callers. */
#define WAKE_NORMAL_NS 2000
#define STALL_MIN_NS 200000
#define WINDOW_NS 20000000
#define SOLO_NS 100000000

#define ST_GEN(s) ((uint32_t)((s) >> 32))
#define ST_CLOSED ((uint64_t)1 << 31)
#define ST_ACTIVE(s) ((s)&0x7fffffffu)

struct bt_cpu_pool {
    int n_threads; /* including the caller */
    pthread_t *threads;

    _Alignas(64) atomic_uint_least64_t state; /* gen << 32 | closed | active workers */
    _Alignas(64) atomic_llong next_task;
    _Alignas(64) bt_cpu_task_fn fn;
    void *arg;
    int64_t n_tasks;
    atomic_int stop;

    _Alignas(64) atomic_int n_sleeping;
    pthread_mutex_t mu;
    pthread_cond_t cv;

    /* caller-only contention bookkeeping (ns) */
    int64_t span, lost; /* wall time of this window's loops, and the part lost to workers */
    int64_t solo_until; /* run loops inline until this time */
};

typedef struct {
    bt_cpu_pool_t *pool;
    int index;
} worker_arg_t;

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void pool_work(bt_cpu_pool_t *pool, int thread)
{
    for (;;) {
        int64_t t = atomic_fetch_add_explicit(&pool->next_task, 1, memory_order_relaxed);
        if (t >= pool->n_tasks)
            return;
        pool->fn(pool->arg, t, thread);
    }
}

/* Waits until the generation differs from seen; spins first, then sleeps. Returns it. */
static uint32_t pool_wait_gen(bt_cpu_pool_t *pool, uint32_t seen)
{
    int64_t start = now_ns();
    for (unsigned spins = 1;; spins++) {
        uint32_t g = ST_GEN(atomic_load_explicit(&pool->state, memory_order_acquire));
        if (g != seen)
            return g;
        CPU_RELAX();
        if (spins % SPIN_CHECK == 0 && now_ns() - start > SPIN_NS)
            break;
    }
    pthread_mutex_lock(&pool->mu);
    atomic_fetch_add(&pool->n_sleeping, 1);
    uint32_t g;
    while ((g = ST_GEN(atomic_load(&pool->state))) == seen)
        pthread_cond_wait(&pool->cv, &pool->mu);
    atomic_fetch_sub(&pool->n_sleeping, 1);
    pthread_mutex_unlock(&pool->mu);
    return g;
}

/* Joins loop generation g if it is still open; 0 if it has moved on or closed. */
static int pool_join_loop(bt_cpu_pool_t *pool, uint32_t g)
{
    uint64_t s = atomic_load_explicit(&pool->state, memory_order_acquire);
    while (ST_GEN(s) == g && !(s & ST_CLOSED)) {
        if (atomic_compare_exchange_weak_explicit(&pool->state, &s, s + 1, memory_order_acquire,
                                                  memory_order_acquire))
            return 1;
    }
    return 0;
}

static void *worker_main(void *p)
{
    worker_arg_t *wa = p;
    bt_cpu_pool_t *pool = wa->pool;
    int index = wa->index;
    free(wa);
    uint32_t seen = 0;
    for (;;) {
        seen = pool_wait_gen(pool, seen);
        if (atomic_load_explicit(&pool->stop, memory_order_acquire))
            return NULL;
        if (!pool_join_loop(pool, seen))
            continue;
        pool_work(pool, index);
        atomic_fetch_sub_explicit(&pool->state, 1, memory_order_release);
    }
}

/* Publishes generation gen(state) + 1, open, and wakes sleepers. The seq_cst store of the
 * state and load of n_sleeping pair with the worker's increment-then-check under the mutex:
 * either the worker sees the new generation or we see it asleep and broadcast. */
static void pool_publish(bt_cpu_pool_t *pool)
{
    uint64_t s = atomic_load(&pool->state);
    atomic_store(&pool->state, (uint64_t)(ST_GEN(s) + 1) << 32);
    if (atomic_load(&pool->n_sleeping) > 0) {
        pthread_mutex_lock(&pool->mu);
        pthread_cond_broadcast(&pool->cv);
        pthread_mutex_unlock(&pool->mu);
    }
}

/* Closes the current loop once no worker is inside it; after this every task has finished
 * and its writes are visible here. */
static void pool_close(bt_cpu_pool_t *pool)
{
    for (unsigned spins = 1;; spins++) {
        uint64_t s = atomic_load_explicit(&pool->state, memory_order_acquire);
        if (ST_ACTIVE(s) == 0 &&
            atomic_compare_exchange_weak_explicit(&pool->state, &s, s | ST_CLOSED,
                                                  memory_order_acq_rel, memory_order_acquire))
            return;
        CPU_RELAX();
        if (spins % WAIT_YIELD == 0)
            sched_yield();
    }
}

static void pool_stop_threads(bt_cpu_pool_t *pool, int n_started)
{
    atomic_store(&pool->stop, 1);
    pool_publish(pool);
    for (int i = 0; i < n_started; i++)
        pthread_join(pool->threads[i], NULL);
}

static int pool_start(bt_cpu_pool_t *pool, int *n_started)
{
    for (int i = 0; i < pool->n_threads - 1; i++) {
        worker_arg_t *wa = malloc(sizeof *wa);
        if (!wa)
            return BT_ERR_NOMEM;
        wa->pool = pool;
        wa->index = i + 1;
        if (pthread_create(&pool->threads[i], NULL, worker_main, wa) != 0) {
            free(wa);
            return BT_ERR_INTERNAL;
        }
        (*n_started)++;
    }
    return BT_OK;
}

int bt_cpu_pool_create(int n_threads, bt_cpu_pool_t **out)
{
    int st = BT_ERR_NOMEM;
    if (n_threads < 1)
        n_threads = 1;
    bt_cpu_pool_t *pool = calloc(1, sizeof *pool);
    if (!pool)
        goto err;
    pool->n_threads = n_threads;
    pool->threads = calloc((size_t)n_threads, sizeof *pool->threads);
    if (!pool->threads)
        goto err_pool;
    pthread_mutex_init(&pool->mu, NULL);
    pthread_cond_init(&pool->cv, NULL);
    int n_started = 0;
    st = pool_start(pool, &n_started);
    if (st != BT_OK)
        goto err_threads;
    *out = pool;
    return BT_OK;

err_threads:
    pool_stop_threads(pool, n_started);
    pthread_cond_destroy(&pool->cv);
    pthread_mutex_destroy(&pool->mu);
    free(pool->threads);
err_pool:
    free(pool);
err:
    return st;
}

void bt_cpu_pool_destroy(bt_cpu_pool_t *pool)
{
    if (!pool)
        return;
    pool_stop_threads(pool, pool->n_threads - 1);
    pthread_cond_destroy(&pool->cv);
    pthread_mutex_destroy(&pool->mu);
    free(pool->threads);
    free(pool);
}

int bt_cpu_pool_threads(const bt_cpu_pool_t *pool)
{
    return pool->n_threads;
}

static void run_inline(bt_cpu_task_fn fn, void *arg, int64_t n_tasks)
{
    for (int64_t t = 0; t < n_tasks; t++)
        fn(arg, t, 0);
}

/* Books one loop's timing: t0 start, tp published, t1 caller done with tasks, t2 closed. */
static void pool_note_loop(bt_cpu_pool_t *pool, int64_t t0, int64_t tp, int64_t t1, int64_t t2)
{
    const int64_t wake = tp - t0, own = t1 - tp, wait = t2 - t1;
    pool->span += t2 - t0;
    if (wake > WAKE_NORMAL_NS)
        pool->lost += wake - WAKE_NORMAL_NS;
    if (wait > STALL_MIN_NS && wait > own)
        pool->lost += wait - own;
    if (pool->span < WINDOW_NS)
        return;
    if (pool->lost * 5 > pool->span)
        pool->solo_until = t2 + SOLO_NS;
    pool->span = pool->lost = 0;
}

void bt_cpu_pool_run(bt_cpu_pool_t *pool, bt_cpu_task_fn fn, void *arg, int64_t n_tasks)
{
    if (n_tasks <= 0)
        return;
    if (pool->n_threads == 1 || n_tasks == 1) {
        run_inline(fn, arg, n_tasks);
        return;
    }
    const int64_t t0 = now_ns();
    if (t0 < pool->solo_until) {
        run_inline(fn, arg, n_tasks);
        return;
    }
    pool->fn = fn;
    pool->arg = arg;
    pool->n_tasks = n_tasks;
    atomic_store_explicit(&pool->next_task, 0, memory_order_relaxed);
    pool_publish(pool);
    const int64_t tp = now_ns();
    pool_work(pool, 0);
    const int64_t t1 = now_ns();
    pool_close(pool);
    pool_note_loop(pool, t0, tp, t1, now_ns());
}
