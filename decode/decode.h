/* SPDX-License-Identifier: MIT */
/*
 * decode.h - the decode role: reserves KV blocks when a request is assigned (answering with
 * the reservation, or BT_ERR_NOSPACE as back-pressure), receives the prefill's KV into them
 * through kvx, then decodes the request in the continuous batch from its first token and
 * streams the rest.
 *
 * Blocks a transfer may still write into are never reused: a cancelled or failed receive keeps
 * its blocks until kvx reports the receive's final event (kvx fences late writers by
 * generation and lease). Every assigned request ends either with a refusal (ASSIGN_REPLY with
 * an error: nothing is held) or with one DONE{DECODE}.
 *
 * Threads: the ops run on the worker's threads as worker.h says (kvx on the loop thread, the
 * engine on the compute thread); create/destroy on the main thread.
 */
#ifndef BATON_DECODE_H
#define BATON_DECODE_H

#include "common/engine.h"
#include "common/steplog.h"
#include "common/worker.h"
#include "prefill/kvlink.h"

typedef struct bt_decode bt_decode_t;

typedef struct {
    bt_engine_t *engine;    /* borrowed */
    bt_kvlink_t *link;      /* borrowed; used on the loop thread only */
    int32_t max_batch_seqs; /* sequences per forward */
    int32_t max_requests;   /* requests held at once */
    float growth_reserve;   /* bt_batcher_params_t */
    int peer_wait_ms;       /* how long an assignment waits for the connection to its prefill
                             * peer before it is refused; 0: 5000 */
    int arrival_timeout_ms; /* a reservation whose KV has not arrived after this long is
                             * cancelled (its request fails over); 0: never */
    bt_steplog_t *steplog;  /* borrowed; NULL: steps are not recorded */
} bt_decode_params_t;

int bt_decode_create(const bt_decode_params_t *p, bt_decode_t **out);
/* NULL-safe. Requests still held are dropped (the worker has stopped). */
void bt_decode_destroy(bt_decode_t *d);
/* The worker ops; their ctx is the bt_decode_t. */
extern const bt_worker_ops_t bt_decode_ops;

#endif
