/* SPDX-License-Identifier: MIT */
/*
 * batcher.h - continuous batching on the engine: the decode loop shared by the decode daemon
 * and the colocated daemon.
 *
 * Each step asks the decode scheduler (sched_decode.h) for a plan, drops the KV of preempted
 * sequences, runs one forward over the planned sequences (a prompt longer than the token budget
 * runs alone, in chunks), samples one token for each, streams it to the router through the
 * worker, and ends finished sequences with DONE. Sequences enter either as prompts (colocated:
 * the batcher computes the prompt's KV and samples the first token, sending FIRST_TOKEN) or as
 * continuations (decode: the prompt's KV has arrived in the pool and the first token was
 * sampled by the prefill daemon).
 *
 * Threads: the compute thread, which owns the engine and its KV pool.
 */
#ifndef BATON_BATCHER_H
#define BATON_BATCHER_H

#include <stdint.h>

#include "engine.h"
#include "request.h"
#include "steplog.h"
#include "worker.h"

typedef struct bt_batcher bt_batcher_t;

/* What one forward wrote into a sequence's KV: positions [pos0, pos0 + n) of req's kv. */
typedef struct {
    const bt_req_t *req;
    bt_kv_seq_t *kv;
    int32_t pos0, n;
    int decoding; /* the sequence's first token existed before this forward */
} bt_batcher_rows_t;

/* Optional callbacks of the batcher's owner (compute thread), for replicas (pair daemons). */
typedef struct {
    void *arg;
    /* Before a forward: what it will compute (n rows from pos0; a prompt computed in several
     * forwards comes with chunked set). The owner may reserve the sequences' blocks now. */
    void (*planned)(void *arg, bt_worker_t *w, const bt_batcher_rows_t *rows, int n, int chunked);
    /* After a forward, before the tokens it produced are sampled and streamed. */
    void (*rows)(void *arg, bt_worker_t *w, const bt_batcher_rows_t *rows, int n);
    /* A prompt's first token was sampled and sent (the sequence goes on decoding here). */
    void (*prefilled)(void *arg, bt_worker_t *w, const bt_req_t *req, const bt_kv_seq_t *kv);
    /* A sequence ended (DONE sent); req is about to be freed. */
    void (*ended)(void *arg, const bt_req_t *req);
} bt_batcher_hooks_t;

typedef struct {
    bt_engine_t *engine;    /* borrowed; the batcher is its only user */
    int32_t max_batch_seqs; /* most sequences per forward (<= the engine's) */
    int prefill_first;      /* 1: iterations that admit prompts run them alone (colocated) */
    float growth_reserve;   /* admission keeps free this fraction of the running sequences'
                             * remaining growth (bt_sched_decode_params_t); 0: none */
    int32_t max_requests;   /* most sequences held at once */
    bt_batcher_hooks_t hooks;
    bt_steplog_t *steplog; /* borrowed; NULL: steps are not recorded */
} bt_batcher_params_t;

int bt_batcher_create(const bt_batcher_params_t *p, bt_batcher_t **out);
/* NULL-safe. Sequences still held are dropped without DONE (the worker is gone by then). */
void bt_batcher_destroy(bt_batcher_t *b);

/* Takes req over to prefill and decode here. On failure req has been ended with DONE. */
void bt_batcher_add_prompt(bt_batcher_t *b, bt_worker_t *w, bt_req_t *req);
/*
 * Takes req over with its prompt's KV already in kv (moved in: the caller's copy is no longer
 * used; kv->n_tokens == req->n_prompt) and its first token sampled elsewhere. The first token is
 * not streamed again (the prefill sent it). On failure req has been ended with DONE.
 */
void bt_batcher_add_continued(bt_batcher_t *b, bt_worker_t *w, bt_req_t *req, bt_kv_seq_t *kv,
                              int32_t first_token);
/*
 * Takes req over from a replica: kv holds the KV of the first kv->n_tokens positions of prompt +
 * ids (moved in), ids (k >= 1) are the tokens generated so far (already delivered; not streamed
 * again). KV past prompt + k - 1 positions is dropped; positions missing are recomputed by the
 * next forward. The next token streamed has index k. On failure req has been ended with DONE.
 */
void bt_batcher_add_resumed(bt_batcher_t *b, bt_worker_t *w, bt_req_t *req, bt_kv_seq_t *kv,
                            const int32_t *ids, int32_t k);
/*
 * Removes a decoding sequence without DONE, at a batch boundary: its KV moves to *kv (the
 * caller owns it now) and *n_generated is set. The request's ownership also moves: *req_out.
 * BT_ERR_NOT_FOUND when not held; BT_AGAIN when it cannot move now (not decoding yet, or its KV
 * was preempted).
 */
int bt_batcher_detach(bt_batcher_t *b, uint64_t id, bt_kv_seq_t *kv, int32_t *n_generated,
                      bt_req_t **req_out);
/* Ids of the sequences that are decoding (first token exists) and hold their KV; at most cap.
 * Returns how many were written. */
int bt_batcher_decoding_ids(const bt_batcher_t *b, uint64_t *ids, int cap);
/* Changes the admission policy from the next step on (see bt_batcher_params_t). */
void bt_batcher_set_prefill_first(bt_batcher_t *b, int prefill_first);
/* Whether request id is held here. */
int bt_batcher_has(const bt_batcher_t *b, uint64_t id);

/* Ends request id with DONE: CANCELLED for status BT_ERR_CANCELLED, else FAILED with status.
 * BT_ERR_NOT_FOUND when the batcher does not hold it. */
int bt_batcher_abort(bt_batcher_t *b, bt_worker_t *w, uint64_t id, int32_t status);
/* One iteration. BT_OK when a forward ran, BT_AGAIN when there was nothing to run. */
int bt_batcher_step(bt_batcher_t *b, bt_worker_t *w);

int32_t bt_batcher_n_waiting(const bt_batcher_t *b);
int32_t bt_batcher_n_running(const bt_batcher_t *b);
/* Blocks kept for the running sequences' growth past their next token (--growth-reserve). */
int32_t bt_batcher_growth_blocks(const bt_batcher_t *b);
/* Context tokens of the running sequences. */
int64_t bt_batcher_running_tokens(const bt_batcher_t *b);
/* Prompt tokens still to be computed (waiting sequences). */
int64_t bt_batcher_waiting_tokens(const bt_batcher_t *b);

#endif
