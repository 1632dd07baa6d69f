/* SPDX-License-Identifier: MIT */
/*
 * queue.h - a bounded FIFO of fixed-size elements shared between threads (a daemon's event-loop
 * thread and its compute thread).
 *
 * Capacity is fixed at creation, so a full queue is a status the producer turns into
 * back-pressure (refuse the request, or wait), never an unbounded backlog. Elements are copied
 * in and out by value; an element that carries a pointer hands that pointer over with it.
 *
 * Threads: any number of producers and consumers; every call may be made from any thread.
 */
#ifndef BATON_QUEUE_H
#define BATON_QUEUE_H

#include <stddef.h>

typedef struct bt_queue bt_queue_t;

/* elem_bytes > 0, capacity > 0 (elements). */
int bt_queue_create(size_t elem_bytes, size_t capacity, bt_queue_t **out);
/* NULL-safe. Elements still queued are dropped (the caller drains pointers first). */
void bt_queue_destroy(bt_queue_t *q);

/*
 * Copies elem in. wait_ms: 0 returns at once, < 0 waits for room as long as it takes, > 0
 * waits at most that long. BT_OK, or BT_ERR_NOSPACE when still full (or the queue was closed).
 */
int bt_queue_push(bt_queue_t *q, const void *elem, int wait_ms);
/* Copies the oldest element out. Same wait_ms; BT_OK, or BT_AGAIN when still empty (or the
 * queue was woken with bt_queue_wake). */
int bt_queue_pop(bt_queue_t *q, void *elem, int wait_ms);
/* Elements queued now (a snapshot). */
size_t bt_queue_len(bt_queue_t *q);
/* Wakes every waiter once (their calls return BT_AGAIN / BT_ERR_NOSPACE) without queuing. */
void bt_queue_wake(bt_queue_t *q);
/* Closes the queue: pushes fail, waiters return, pops still drain what is left. */
void bt_queue_close(bt_queue_t *q);

#endif
