/* SPDX-License-Identifier: MIT */
/*
 * prefill.h - the prefill role: FCFS batches of prompts under the token budget (DistServe),
 * the first token sampled with the request's own sampler and sent at once, the KV shipped into
 * the decode instance's reservation through kvx, and the blocks freed once shipped.
 *
 * Admission counts KV not yet shipped: blocks stay allocated until kvx reports the send done,
 * so when decode instances are slow to take KV, prefill stops admitting (back-pressure) instead
 * of overwriting anything. Every assigned request ends with one DONE{PREFILL}: after its KV
 * arrived (events PREFILL_QUEUED/BEGIN/END, TRANSFER_BEGIN/END), or cancelled, or failed.
 *
 * Threads: the ops run on the worker's threads as worker.h says (kvx on the loop thread, the
 * engine on the compute thread); create/destroy on the main thread.
 */
#ifndef BATON_PREFILL_H
#define BATON_PREFILL_H

#include "common/engine.h"
#include "common/steplog.h"
#include "common/worker.h"
#include "kvlink.h"

typedef struct bt_prefill bt_prefill_t;

typedef struct {
    bt_engine_t *engine;    /* borrowed */
    bt_kvlink_t *link;      /* borrowed; used on the loop thread only */
    int32_t max_batch_seqs; /* prompts per forward */
    int layerwise;          /* 1: stream the KV layer by layer while the forward computes it
                             * (--kv-stream layer); sets the engine's layer hook */
    int peer_wait_ms;       /* how long a finished prefill waits for its decode peer's
                             * connection before failing; 0: 10000 */
    bt_steplog_t *steplog;  /* borrowed; NULL: forwards are not recorded */
} bt_prefill_params_t;

int bt_prefill_create(const bt_prefill_params_t *p, bt_prefill_t **out);
/* NULL-safe. Requests still held are dropped (the worker has stopped). */
void bt_prefill_destroy(bt_prefill_t *pf);
/* The worker ops; their ctx is the bt_prefill_t. */
extern const bt_worker_ops_t bt_prefill_ops;

#endif
