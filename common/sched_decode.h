/* SPDX-License-Identifier: MIT */
/*
 * sched_decode.h - the decode scheduler: iteration-level continuous batching (DistServe, Orca).
 *
 * Sequences wait FCFS until they can be admitted: in the decode daemon, requests whose KV has
 * arrived; in the colocated daemon, new prompts; in both, sequences preempted earlier. Each
 * iteration plans one forward: every running sequence feeds its last token, and waiting ones are
 * admitted while the token budget, the batch-size limit and the free KV blocks allow.
 *
 * With growth_reserve, admission also keeps free the blocks that a fraction of the running
 * sequences' remaining growth (up to their most tokens) will take, so that growth seldom
 * overruns the pool: a recompute costs a prefill of the whole sequence in the middle of every
 * running sequence's decoding (SGLang reserves the same way, with an estimated ratio).
 *
 * Memory pressure never fails a request. When the running sequences cannot all grow by one
 * token, the newest running one is preempted by recompute: its KV is dropped and it waits again
 * with its prompt and generated tokens, to be fed whole when there is room (batch invariance
 * and position-seeded sampling make the recomputed tokens identical). When nothing can run at
 * all because waiting sequences hold the blocks (KV that arrived but cannot grow), the newest
 * of those drop their KV too, so the oldest always makes progress; a request that fits the pool
 * alone (checked when it is assigned) therefore always finishes.
 *
 * With prefill_first (the colocated daemon, vLLM's default policy) an iteration that admits new
 * prompts runs them alone, and the running sequences wait for the next iteration.
 *
 * Like the prefill scheduler it only keeps counts; the caller owns the KV and the engine.
 *
 * Threads: the compute thread.
 */
#ifndef BATON_SCHED_DECODE_H
#define BATON_SCHED_DECODE_H

#include <stdint.h>

#include "sched_prefill.h"

typedef struct {
    int32_t max_batch_tokens; /* rows of one forward */
    int32_t max_batch_seqs;   /* sequences of one forward, hence most running sequences */
    int32_t block_size;       /* KV tokens per block */
    int prefill_first;        /* 1: iterations that admit prompts run them alone */
    float growth_reserve;     /* a waiting sequence is admitted only while, after it, the free
                               * blocks also cover this fraction of every running sequence's
                               * remaining growth and of its own (items' n_max); 0: no reserve,
                               * growth that overruns the pool preempts */
} bt_sched_decode_params_t;

typedef struct {
    bt_sched_decode_params_t p;
    bt_sched_prefill_t waiting; /* FCFS admission queue */
    bt_sched_list_t running;    /* in admission order */
} bt_sched_decode_t;

/* One iteration. Items of run feed [n_kv, n_total) in the next forward and are RUNNING; items of
 * preempted lost their KV in the scheduler's books (n_kv and n_blocks are 0 now, they are
 * WAITING again) and the caller must release their blocks before the forward. */
typedef struct {
    bt_sched_item_t **run; /* (max_batch_seqs) */
    int32_t n_run;
    bt_sched_item_t **preempted; /* (capacity: every sequence the scheduler holds) */
    int32_t n_preempted;
    int32_t n_prefill; /* how many of run were admitted from waiting this iteration */
} bt_sched_plan_t;

void bt_sched_decode_init(bt_sched_decode_t *s, const bt_sched_decode_params_t *p);
/* Queues a sequence for admission (n_total > n_kv). */
void bt_sched_decode_add(bt_sched_decode_t *s, bt_sched_item_t *it);
/* Takes a sequence out, waiting or running (finished or cancelled). */
void bt_sched_decode_remove(bt_sched_decode_t *s, bt_sched_item_t *it);
int32_t bt_sched_decode_n_waiting(const bt_sched_decode_t *s);
int32_t bt_sched_decode_n_running(const bt_sched_decode_t *s);
/* Context tokens of the running sequences (for heartbeats). */
int64_t bt_sched_decode_running_tokens(const bt_sched_decode_t *s);
/* The blocks growth_reserve keeps for the running sequences' growth beyond their next token
 * (0 without a reserve): what must stay free besides a block for each of them. */
int32_t bt_sched_decode_growth_blocks(const bt_sched_decode_t *s);

/*
 * Plans the next forward given the pool's free blocks. plan->run and plan->preempted must have
 * room as documented above. Returns the number of sequences to run (0: nothing can run now).
 */
int32_t bt_sched_decode_plan(bt_sched_decode_t *s, int32_t free_blocks, bt_sched_plan_t *plan);

#endif
