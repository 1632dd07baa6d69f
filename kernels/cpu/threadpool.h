/* SPDX-License-Identifier: MIT */
/*
 * threadpool.h - the CPU backend's compute threads: a fixed pool that runs one parallel loop at
 * a time, with the calling thread taking part.
 *
 * The one thing to know: bt_cpu_pool_run is meant to be called thousands of times a second (a
 * decode step runs ~10 ops per layer), so workers spin for a short while after each loop before
 * sleeping on a condition variable, and a dispatch to spinning workers costs about a
 * microsecond. Tasks are handed out dynamically; callers must make every task's result
 * independent of which thread ran it (the determinism contract of kernels.h).
 */
#ifndef BATON_CPU_THREADPOOL_H
#define BATON_CPU_THREADPOOL_H

#include <stdint.h>

typedef struct bt_cpu_pool bt_cpu_pool_t;

/* Runs task `task` (0 <= task < n_tasks) of a loop; `thread` is 0 for the caller and
 * 1..n_threads-1 for workers, for indexing per-thread scratch. */
typedef void (*bt_cpu_task_fn)(void *arg, int64_t task, int thread);

/* Starts n_threads - 1 workers (n_threads >= 1). Returns BT_OK or BT_ERR_NOMEM /
 * BT_ERR_INTERNAL (thread creation failed); *out is written only on success. */
int bt_cpu_pool_create(int n_threads, bt_cpu_pool_t **out);
/* Stops and joins the workers. NULL is allowed. */
void bt_cpu_pool_destroy(bt_cpu_pool_t *pool);
int bt_cpu_pool_threads(const bt_cpu_pool_t *pool);

/* Runs fn(arg, t, thread) for every t in [0, n_tasks) and returns when all are done; with one
 * thread or one task it runs them inline. Called from one thread at a time (the owner). */
void bt_cpu_pool_run(bt_cpu_pool_t *pool, bt_cpu_task_fn fn, void *arg, int64_t n_tasks);

#endif
