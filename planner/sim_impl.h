/* SPDX-License-Identifier: MIT */
/*
 * sim_impl.h - the simulator's state, shared by the event loop (sim.c) and the placement
 * policies (sim_policy.c). Not part of the planner's interface.
 *
 * Request ids are indices into the run's request array. Every queue is a ring of ids; a decode
 * micro-batch ("lane") keeps its sequences only as counters plus a heap of the steps at which
 * they finish, so a decode step costs O(1) however large the batch (the context sum grows by
 * the batch size each step) and a finishing sequence O(log B).
 *
 * AcceLLM pairs (sim_pairs.c) reuse the instances, queues and lanes and add a role that changes,
 * the router's view of each member (as of its last heartbeat) and, per request, where its KV and
 * its replica are held.
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
    int in_prefill; /* colocated: the running iteration is a prefill batch; paired: it has
                     * prompts */
    int stepping;   /* paired: the running iteration decodes the batch's sequences */
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
    sim_lane_t *lanes;     /* (pp) decode, colocated, paired */
    uint64_t seq;          /* registration order (round-robin, ties) */
    /* Paired instances only (a continuous batcher each). queue: prompts assigned here, FCFS;
     * ready: resumed sequences, joining the batch at its next iteration; lanes[0]: the batch,
     * lanes[0].prefill: the prompts of the running iteration. */
    pl_role_t serving;     /* PL_ROLE_PREFILL or PL_ROLE_DECODE: what the router has set */
    pl_role_t applied;     /* what the member serves now: the router's, from its next batch
                            * boundary on (PREFILL: prompts run alone and are handed off) */
    int pair, partner;     /* pair index, partner instance */
    int64_t queued_kv;     /* whole-sequence KV tokens of the prompts in queue */
    double last_assign_ms; /* the router's last owner assignment here; < 0: none yet */
    sim_fifo_t replicas;   /* requests whose replica may be here, oldest first; entries of
                            * replicas since dropped or promoted are skipped when met */
    int32_t n_replicas;    /* complete replicas held here and listed in replicas */
    /* The router's view, as of the last heartbeat (heartbeat_ms > 0): */
    double hb_ms;                 /* time of that heartbeat */
    int32_t hb_queue, hb_running; /* queue_len and running it reported */
    int32_t pend;                 /* assignments sent here since (owner and replica ones) */
    int32_t pend_prompts;         /* of them, the owner ones (prompts to compute here) */
} sim_inst_t;

/* One AcceLLM pair: what the router keeps about it. */
typedef struct {
    double last_switch_ms; /* time of the last role switch */
    double check_ms;       /* earliest router tick scheduled to look at the pair; INFINITY: none */
} sim_pair_t;

/* Where a request's KV lives in a paired cluster. Every copy is reserved for the whole
 * sequence (prompt + output, block-rounded: kv tokens). */
typedef struct {
    int32_t own, rep;  /* the member that computes on it (owner) and the one holding its replica
                        * (holder); -1: none */
    int32_t kv;        /* tokens reserved for each copy */
    int32_t ctx, left; /* out of a batch: context tokens, decode steps left */
    uint8_t listed;    /* the replica is complete and in rep's replicas list (droppable) */
    uint8_t shipped;   /* the owner shipped the prompt's KV to a holder that had reserved it: it
                        * hands the request off when it turns to prefill (the owner does not
                        * learn that a replica was dropped since) */
} sim_preq_t;

typedef struct {
    double arrival, first, finish;
    int32_t prompt, output;
    int32_t p, d;
    int32_t held; /* router admission: KV tokens its decode instance reserved at placement */
    uint8_t failed, done;
} sim_req_t;

typedef struct {
    double t;
    uint64_t seq;
    uint32_t kind, a, b;
} sim_ev_t;

enum {
    SIM_EV_STAGE_FREE = 1,
    SIM_EV_PREFILL_DONE,
    SIM_EV_TRANSFER_DONE,
    SIM_EV_LANE_DONE,
    SIM_EV_PAIR_ASSIGN,    /* a: request, b: its owner; the owner's ASSIGN arrives */
    SIM_EV_PAIR_LANE_DONE, /* a: instance */
    SIM_EV_PAIR_RESUME,    /* a: request, b: the instance told to RESUME it */
    SIM_EV_PAIR_CHECK,     /* a: pair; a router tick */
    SIM_EV_QUEUE_EXPIRE,   /* a: request; its time in the router's queue is up */
};

typedef struct {
    const pl_sim_params_t *p;
    sim_inst_t *inst;
    int *by_role[4]; /* instance indices per role */
    int n_role[4];
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
    int rr[3];        /* round-robin cursors per role */
    sim_pair_t *pair; /* (n_pairs) */
    int n_pairs;
    sim_preq_t *preq;     /* (n_req) paired clusters only */
    pl_pairs_params_t pp; /* the thresholds with defaults applied */
    uint32_t *buf;        /* (n_req) scratch for the sequences of a hand-over */
    uint64_t n_switches, n_moved, n_dropped, n_refused, n_rep_refused;
    int admit;          /* the router's admission (pl_sim_params_t.queue_timeout_ms) */
    sim_fifo_t waiting; /* with it: requests in the router's queue, in arrival order */
    size_t n_expired;
} sim_t;

/* The placement for request r: its prefill and decode instances (decode only, or colocated
 * only, as the mode and the cluster say). Set in s->req[r].p and .d. With the router's
 * admission (s->admit), only where a decode instance has room for the prompt's KV, which it
 * reserves (s->req[r].held); returns 0, placing nothing, when none has. */
int sim_place(sim_t *s, uint32_t r);

/* Block-rounded tokens. */
static inline int64_t sim_round(const sim_t *s, int64_t tokens)
{
    return (tokens + s->block - 1) / s->block * s->block;
}

/* Context tokens running on a decode or colocated instance. */
double sim_ctx_tokens(const sim_inst_t *x);

/* The event loop's parts that the pairs use (sim.c). */
void sim_fifo_push(sim_t *s, sim_fifo_t *f, uint32_t v);
uint32_t sim_fifo_peek(const sim_fifo_t *f);
uint32_t sim_fifo_pop(sim_fifo_t *f);
void sim_ev_push(sim_t *s, double t, uint32_t kind, uint32_t a, uint32_t b);
void sim_fin_push(sim_t *s, sim_lane_t *l, int64_t step, uint32_t req);
uint32_t sim_fin_pop(sim_lane_t *l);
int sim_fits(const sim_inst_t *x, int64_t need);
void sim_first_token(sim_t *s, uint32_t r);
void sim_finish(sim_t *s, uint32_t r);
void sim_fail(sim_t *s, uint32_t r);
double sim_transfer_ms(const sim_t *s, const sim_inst_t *from, const sim_inst_t *to,
                       int32_t tokens);
double sim_prefill_ms(const sim_inst_t *x, double sum, double sum2, uint32_t n);

/* Pairs (sim_pairs.c): state set up after the instances (BT_ERR_NOMEM), released, a request's
 * arrival, and the events of kind SIM_EV_PAIR_*. */
int sim_pairs_setup(sim_t *s);
void sim_pairs_teardown(sim_t *s);
void sim_pairs_arrival(sim_t *s, uint32_t r);
void sim_pairs_event(sim_t *s, const sim_ev_t *e);

#endif
