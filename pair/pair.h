/* SPDX-License-Identifier: MIT */
/*
 * pair.h - the pair role (AcceLLM redundancy): one member of a pair of instances that each hold
 * the full weights, prefill and decode, and keep a replica of the KV of the requests their
 * partner decodes, so that work can move between them instead of data.
 *
 * A request on a pair has an owner (it prefills and decodes: ASSIGN{PAIR}) and, when the
 * partner has room, a holder (ASSIGN{PAIR, replica}: it reserves blocks for the prompt and
 * answers with the reservation, like a decode daemon). The owner ships the prompt's KV into the
 * reservation (layer by layer while the forward computes it, or whole right after) and keeps
 * its own copy; after every forward it sends the
 * holder the new KV rows of the step (one kvx message per step for all its sequences), before
 * the tokens of that step are streamed. Either member can therefore continue the request:
 *  - HANDOFF: an owner serving PREFILL (SET_ROLE) stops decoding at a batch boundary, keeps the
 *    KV as a replica and tells the router, which RESUMEs the request on the partner;
 *  - failover: when the owner dies, the router RESUMEs the request on the holder with the
 *    tokens delivered so far; the holder has their KV (rows it lacks, e.g. a last step whose
 *    message died with the owner, are recomputed by the first forward) and the stream goes on.
 * Under memory pressure replicas are dropped before any sequence of the instance's own is
 * preempted (DONE{PAIR, CANCELLED, BT_ERR_NOSPACE} tells the router).
 *
 * Threads: as worker.h says (kvx on the loop thread, engine and pool on the compute thread).
 */
#ifndef BATON_PAIR_H
#define BATON_PAIR_H

#include "common/engine.h"
#include "common/steplog.h"
#include "common/worker.h"
#include "prefill/kvlink.h"

typedef struct bt_pair bt_pair_t;

typedef struct {
    bt_engine_t *engine;    /* borrowed; its KV pool must be in host memory */
    bt_kvlink_t *link;      /* borrowed; used on the loop thread only */
    const char *self;       /* this instance's id; copied */
    const char *partner;    /* the partner's instance id; copied */
    Baton__Role serving;    /* PREFILL or DECODE at start */
    int32_t max_batch_seqs; /* sequences per forward */
    int32_t max_requests;   /* requests (owned and replicas) held at once */
    int peer_wait_ms;       /* how long a replica waits for the partner's connection; 0: 5000 */
    int sync_rows;          /* 1 (default): send each step's KV rows to the holder; 0: only the
                             * prompt (the holder recomputes the rest when it takes over) */
    int layerwise;          /* 1: ship the prompt's KV layer by layer during its forward (a
                             * prompt computed in chunks ships whole after the last one) */
    bt_steplog_t *steplog;  /* borrowed; NULL: steps are not recorded */
} bt_pair_params_t;

int bt_pair_create(const bt_pair_params_t *p, bt_pair_t **out);
/* NULL-safe. Requests still held are dropped (the worker has stopped). */
void bt_pair_destroy(bt_pair_t *pr);

/* The worker ops; their ctx is the bt_pair_t. */
extern const bt_worker_ops_t bt_pair_ops;

#endif
