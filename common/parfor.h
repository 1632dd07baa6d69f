/* SPDX-License-Identifier: MIT */
/*
 * parfor.h - a small fixed pool of threads that runs fn(arg, i) for i in [0, n) and returns
 * when all are done; the calling thread takes items too. For host work per sequence of a
 * batch that does not share state between sequences (sampling from whole rows of logits
 * costs about a millisecond per sequence on a 128k vocabulary).
 *
 * Threads are created once and sleep between runs. One caller at a time.
 */
#ifndef BATON_PARFOR_H
#define BATON_PARFOR_H

typedef struct bt_parfor bt_parfor_t;

/* A pool of n_threads helpers (0: one fewer than the online cores, at most 15). *out is NULL
 * (and BT_OK returned) when that leaves no helper: bt_parfor_run then runs items in the
 * caller. BT_ERR_NOMEM, or BT_ERR_INTERNAL when a thread cannot be started. */
int bt_parfor_create(int n_threads, bt_parfor_t **out);
void bt_parfor_destroy(bt_parfor_t *p);
/* Runs fn(arg, i) for every i in [0, n), in any order and on any of the threads; returns once
 * all have returned. p may be NULL (all in the caller). */
void bt_parfor_run(bt_parfor_t *p, int n, void (*fn)(void *arg, int i), void *arg);
/* Helper threads of p (0 for NULL). */
int bt_parfor_threads(const bt_parfor_t *p);

#endif
