/* SPDX-License-Identifier: MIT */
/*
 * sched_prefill.h - the prefill scheduler (DistServe): one FCFS queue of sequences waiting for a
 * prefill, and the rule that turns its head into a batch.
 *
 * A batch is filled from the head of the queue while the new tokens fit the token budget L_m
 * (--max-batch-tokens), the sequences fit the batch-size limit and their KV blocks fit the free
 * blocks; it stops at the first sequence that does not fit, so nobody is overtaken. A head
 * longer than the whole budget may go alone (the caller computes it in chunks). Free blocks are
 * what the pool has free, so blocks still held for KV not yet shipped count against admission.
 *
 * The scheduler only does the bookkeeping of counts: it never touches the KV pool or the
 * engine, so its decisions can be tested with numbers alone. Items are intrusive (embedded in
 * the caller's request) and never allocated here.
 *
 * Threads: the compute thread.
 */
#ifndef BATON_SCHED_PREFILL_H
#define BATON_SCHED_PREFILL_H

#include <stdint.h>

/* A sequence as the schedulers see it. The caller sets n_kv, n_total and n_blocks and keeps
 * them current after each forward; the schedulers set the links, order and where. */
typedef struct bt_sched_item {
    struct bt_sched_item *prev, *next;
    int32_t n_kv;     /* tokens whose K/V are in the cache */
    int32_t n_total;  /* tokens of the sequence; the next forward feeds [n_kv, n_total) */
    int32_t n_blocks; /* KV blocks the sequence holds now */
    int32_t n_max;    /* most tokens the sequence may reach (prompt + max new); 0: unknown */
    uint64_t order;   /* arrival order (smaller is older); kept across preemption */
    int where;        /* BT_SCHED_NONE, _WAITING or _RUNNING */
} bt_sched_item_t;

enum { BT_SCHED_NONE = 0, BT_SCHED_WAITING = 1, BT_SCHED_RUNNING = 2 };

/* A circular list with a sentinel. */
typedef struct {
    bt_sched_item_t head;
    int32_t len;
} bt_sched_list_t;

void bt_sched_list_init(bt_sched_list_t *l);
void bt_sched_list_push_back(bt_sched_list_t *l, bt_sched_item_t *it);
/* Inserts in order of it->order (older first), after items of equal order. */
void bt_sched_list_insert_ordered(bt_sched_list_t *l, bt_sched_item_t *it);
void bt_sched_list_remove(bt_sched_list_t *l, bt_sched_item_t *it);
/* First / last item, NULL when empty. */
bt_sched_item_t *bt_sched_list_first(const bt_sched_list_t *l);
bt_sched_item_t *bt_sched_list_last(const bt_sched_list_t *l);
/* Next item after it, NULL at the end. */
bt_sched_item_t *bt_sched_list_next(const bt_sched_list_t *l, const bt_sched_item_t *it);

/* What one batch may still take. */
typedef struct {
    int32_t tokens; /* new tokens (rows of the forward) */
    int32_t seqs;   /* sequences */
    int32_t blocks; /* free KV blocks */
    float growth;   /* decode admission: a picked sequence must also find free the blocks this
                     * fraction of its remaining growth would take (bt_sched_growth_blocks) */
} bt_sched_budget_t;

typedef struct {
    bt_sched_list_t queue; /* FCFS */
    int32_t block_size;    /* KV tokens per block */
    int64_t n_tokens;      /* tokens still to feed, summed over the queue */
    uint64_t next_order;
} bt_sched_prefill_t;

void bt_sched_prefill_init(bt_sched_prefill_t *s, int32_t block_size);
/* Appends a new arrival (gets the next order number). */
void bt_sched_prefill_push(bt_sched_prefill_t *s, bt_sched_item_t *it);
/* Puts back an item that already has an order (a preempted one) at its place by order. */
void bt_sched_prefill_requeue(bt_sched_prefill_t *s, bt_sched_item_t *it);
void bt_sched_prefill_remove(bt_sched_prefill_t *s, bt_sched_item_t *it);
int32_t bt_sched_prefill_len(const bt_sched_prefill_t *s);
/* Tokens waiting to be fed (for heartbeats). */
int64_t bt_sched_prefill_tokens(const bt_sched_prefill_t *s);

/* New blocks an item needs to hold its n_total tokens. */
int32_t bt_sched_blocks_needed(const bt_sched_item_t *it, int32_t block_size);
/* Blocks beyond those for its n_total tokens that the fraction ratio of its remaining growth
 * (n_max - n_total tokens) would take; 0 when n_max is unknown or ratio <= 0. */
int32_t bt_sched_growth_blocks(const bt_sched_item_t *it, int32_t block_size, float ratio);

/*
 * Picks the next batch from the head of the queue within budget (which is decreased by what
 * was taken). allow_oversized: the head may exceed budget->tokens when it is the only sequence
 * of the batch. Picked items leave the queue (where = NONE) and are written to out (capacity
 * budget->seqs); returns how many.
 */
int32_t bt_sched_prefill_pick(bt_sched_prefill_t *s, bt_sched_budget_t *budget, int allow_oversized,
                              bt_sched_item_t **out);

#endif
