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
#include "worker.h"

typedef struct bt_batcher bt_batcher_t;

typedef struct {
    bt_engine_t *engine;    /* borrowed; the batcher is its only user */
    int32_t max_batch_seqs; /* most sequences per forward (<= the engine's) */
    int prefill_first;      /* 1: iterations that admit prompts run them alone (colocated) */
    int32_t max_requests;   /* most sequences held at once */
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
/* Ends request id with DONE: CANCELLED for status BT_ERR_CANCELLED, else FAILED with status.
 * BT_ERR_NOT_FOUND when the batcher does not hold it. */
int bt_batcher_abort(bt_batcher_t *b, bt_worker_t *w, uint64_t id, int32_t status);
/* One iteration. BT_OK when a forward ran, BT_AGAIN when there was nothing to run. */
int bt_batcher_step(bt_batcher_t *b, bt_worker_t *w);

int32_t bt_batcher_n_waiting(const bt_batcher_t *b);
int32_t bt_batcher_n_running(const bt_batcher_t *b);
/* Context tokens of the running sequences. */
int64_t bt_batcher_running_tokens(const bt_batcher_t *b);
/* Prompt tokens still to be computed (waiting sequences). */
int64_t bt_batcher_waiting_tokens(const bt_batcher_t *b);

#endif
