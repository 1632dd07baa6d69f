/* SPDX-License-Identifier: MIT */
/*
 * sim_impl.h - the simulator's state, shared by the event loop (sim.c) and the placement
 * policies (sim_policy.c). Not part of the planner's interface.
 *
 * Request ids are indices into the run's request array. Every queue is a ring of ids; a decode
 * micro-batch ("lane") keeps its sequences only as counters plus a heap of the steps at which
 * they finish, so a decode step costs O(1) however large the batch (the context sum grows by
 * the batch size each step) and a finishing sequence O(log B).
 */
#ifndef BATON_PLANNER_SIM_IMPL_H
#define BATON_PLANNER_SIM_IMPL_H

#include "sim.h"

typedef struct {
    uint32_t *buf;
    size_t head, len, cap; /* cap is a power of two */
} sim_fifo_t;

typedef struct {
    int64_t step; /* the lane step after which the sequence has all its tokens */
    uint32_t req;
} sim_fin_t;

typedef struct {
    int32_t n_seqs; /* sequences in the micro-batch */
    double sum_ctx; /* their context tokens */
    int64_t step;   /* steps completed */
    int busy;       /* an iteration is running */
    int in_prefill; /* colocated: the running iteration is a prefill batch */
    sim_fin_t *fin; /* (n_fin) min-heap on step */
    int32_t n_fin, cap_fin;
    sim_fifo_t prefill; /* colocated: the prompts of the running prefill iteration */
} sim_lane_t;

typedef struct {
    const pl_inst_spec_t *spec;
    int pp;
    sim_fifo_t queue;      /* prefill, colocated: prompts waiting; decode: prefilled requests
                            * waiting for KV memory */
    sim_fifo_t ready;      /* decode: KV arrived, waiting for a batch slot */
    sim_fifo_t flight;     /* prefill: requests of the batches being computed, in order */
    sim_fifo_t batches;    /* prefill: sizes of those batches */
    int64_t queued_tokens; /* prompt tokens in queue (prefill, colocated) */
    int64_t kv_used;       /* KV tokens reserved, block-rounded */
    int64_t unshipped;     /* prefill: tokens computed and not yet shipped */
    int32_t n_running;     /* prefill: in flight; decode, colocated: in lanes */
    int32_t n_waiting;     /* decode: placed here and not yet in a batch (the router's view:
                            * it assigns both sides at once) */
    int stage_busy;        /* prefill: the first stage is computing */
    double last_done_ms;   /* prefill: completion of the last batch started */
    double link_free_ms;   /* prefill: when its KV link is free */
    sim_lane_t *lanes;     /* (pp) decode, colocated */
    uint64_t seq;          /* registration order (round-robin, ties) */
} sim_inst_t;

typedef struct {
    double arrival, first, finish;
    int32_t prompt, output;
    int32_t p, d;
    uint8_t failed, done;
} sim_req_t;

typedef struct {
    double t;
    uint64_t seq;
    uint32_t kind, a, b;
} sim_ev_t;

typedef struct {
    const pl_sim_params_t *p;
    sim_inst_t *inst;
    int *by_role[3]; /* instance indices per role */
    int n_role[3];
    sim_req_t *req;
    size_t n_req;
    sim_ev_t *heap;
    size_t n_heap, cap_heap;
    uint64_t ev_seq;
    double now;
    int32_t block;
    size_t n_failed, n_done;
    uint64_t n_events;
    int nomem;
    int rr[3]; /* round-robin cursors per role */
} sim_t;

/* The placement for request r: its prefill and decode instances (decode only, or colocated
 * only, as the mode and the cluster say). Set in s->req[r].p and .d. */
void sim_place(sim_t *s, uint32_t r);

/* Block-rounded tokens. */
static inline int64_t sim_round(const sim_t *s, int64_t tokens)
{
    return (tokens + s->block - 1) / s->block * s->block;
}

/* Context tokens running on a decode or colocated instance. */
double sim_ctx_tokens(const sim_inst_t *x);

#endif
