/* SPDX-License-Identifier: MIT */
/*
 * colocated.h - the colocated role: one daemon doing both phases of every request it is
 * assigned, with continuous batching and prefill first (vLLM's default policy). It is the
 * baseline every disaggregation claim is measured against, so it runs the very same batcher as
 * the decode daemon and differs only in where prompts are computed.
 *
 * Threads: the ops run on the worker's threads as worker.h says; create/destroy on the main
 * thread.
 */
#ifndef BATON_COLOCATED_H
#define BATON_COLOCATED_H

#include "common/engine.h"
#include "common/steplog.h"
#include "common/worker.h"

typedef struct bt_colocated bt_colocated_t;

typedef struct {
    bt_engine_t *engine;    /* borrowed */
    int32_t max_batch_seqs; /* sequences per forward */
    int32_t max_requests;   /* requests held at once */
    float growth_reserve;   /* bt_batcher_params_t */
    bt_steplog_t *steplog;  /* borrowed; NULL: steps are not recorded */
} bt_colocated_params_t;

int bt_colocated_create(const bt_colocated_params_t *p, bt_colocated_t **out);
void bt_colocated_destroy(bt_colocated_t *c);
/* The worker ops; their ctx is the bt_colocated_t. */
extern const bt_worker_ops_t bt_colocated_ops;

#endif
