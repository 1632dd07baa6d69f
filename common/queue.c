/* SPDX-License-Identifier: MIT */
/*
 * queue.c - bounded FIFO with a mutex and two condition variables (see queue.h).
 *
 * Waits use CLOCK_MONOTONIC deadlines so a wall-clock step never stretches or cuts them. A
 * wake-up counter lets bt_queue_wake release waiters without putting anything in the queue.
 */
#include "queue.h"

#include <errno.h>
#include <pthread.h>
#include <string.h>
#include <time.h>

#include "alloc.h"
#include "status.h"

struct bt_queue {
    pthread_mutex_t mu;
    pthread_cond_t not_empty;
    pthread_cond_t not_full;
    unsigned char *buf; /* (capacity * elem_bytes) ring */
    size_t elem_bytes;
    size_t capacity;
    size_t head; /* index of the oldest element */
    size_t len;
    unsigned long wakes; /* bumped by bt_queue_wake */
    int closed;
};

int bt_queue_create(size_t elem_bytes, size_t capacity, bt_queue_t **out)
{
    if (elem_bytes == 0 || capacity == 0)
        return BT_ERR_INVAL;
    bt_queue_t *q = bt_calloc(1, sizeof *q);
    if (!q)
        return BT_ERR_NOMEM;
    q->buf = bt_malloc(elem_bytes * capacity);
    if (!q->buf) {
        bt_free(q);
        return BT_ERR_NOMEM;
    }
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_mutex_init(&q->mu, NULL);
    pthread_cond_init(&q->not_empty, &ca);
    pthread_cond_init(&q->not_full, &ca);
    pthread_condattr_destroy(&ca);
    q->elem_bytes = elem_bytes;
    q->capacity = capacity;
    *out = q;
    return BT_OK;
}

void bt_queue_destroy(bt_queue_t *q)
{
    if (!q)
        return;
    pthread_cond_destroy(&q->not_full);
    pthread_cond_destroy(&q->not_empty);
    pthread_mutex_destroy(&q->mu);
    bt_free(q->buf);
    bt_free(q);
}

static struct timespec deadline_after(int wait_ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_sec += wait_ms / 1000;
    ts.tv_nsec += (long)(wait_ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    return ts;
}

/* Waits on cv until ready() holds, the deadline passes, a wake-up or close happens.
 * Called with the mutex held; returns whether ready() holds. */
static int wait_until(bt_queue_t *q, pthread_cond_t *cv, int (*ready)(const bt_queue_t *),
                      int wait_ms)
{
    if (ready(q) || wait_ms == 0)
        return ready(q);
    struct timespec dl = deadline_after(wait_ms > 0 ? wait_ms : 0);
    unsigned long wakes = q->wakes;
    while (!ready(q) && !q->closed && q->wakes == wakes) {
        if (wait_ms < 0)
            pthread_cond_wait(cv, &q->mu);
        else if (pthread_cond_timedwait(cv, &q->mu, &dl) == ETIMEDOUT)
            break;
    }
    return ready(q);
}

static int has_room(const bt_queue_t *q)
{
    return !q->closed && q->len < q->capacity;
}

static int has_elem(const bt_queue_t *q)
{
    return q->len > 0;
}

int bt_queue_push(bt_queue_t *q, const void *elem, int wait_ms)
{
    pthread_mutex_lock(&q->mu);
    if (!wait_until(q, &q->not_full, has_room, wait_ms)) {
        pthread_mutex_unlock(&q->mu);
        return BT_ERR_NOSPACE;
    }
    size_t tail = (q->head + q->len) % q->capacity;
    memcpy(q->buf + tail * q->elem_bytes, elem, q->elem_bytes);
    q->len++;
    pthread_cond_signal(&q->not_empty);
    pthread_mutex_unlock(&q->mu);
    return BT_OK;
}

int bt_queue_pop(bt_queue_t *q, void *elem, int wait_ms)
{
    pthread_mutex_lock(&q->mu);
    if (!wait_until(q, &q->not_empty, has_elem, wait_ms)) {
        pthread_mutex_unlock(&q->mu);
        return BT_AGAIN;
    }
    memcpy(elem, q->buf + q->head * q->elem_bytes, q->elem_bytes);
    q->head = (q->head + 1) % q->capacity;
    q->len--;
    pthread_cond_signal(&q->not_full);
    pthread_mutex_unlock(&q->mu);
    return BT_OK;
}

size_t bt_queue_len(bt_queue_t *q)
{
    pthread_mutex_lock(&q->mu);
    size_t n = q->len;
    pthread_mutex_unlock(&q->mu);
    return n;
}

void bt_queue_wake(bt_queue_t *q)
{
    pthread_mutex_lock(&q->mu);
    q->wakes++;
    pthread_cond_broadcast(&q->not_empty);
    pthread_cond_broadcast(&q->not_full);
    pthread_mutex_unlock(&q->mu);
}

void bt_queue_close(bt_queue_t *q)
{
    pthread_mutex_lock(&q->mu);
    q->closed = 1;
    pthread_cond_broadcast(&q->not_empty);
    pthread_cond_broadcast(&q->not_full);
    pthread_mutex_unlock(&q->mu);
}
