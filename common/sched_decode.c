/* SPDX-License-Identifier: MIT */
/*
 * sched_decode.c - continuous batching with preemption by recompute (see sched_decode.h).
 *
 * The order of one plan: first make room for every running sequence to grow by one token
 * (preempting the newest), then admit waiting sequences FCFS into what is left, and only if
 * that leaves the batch empty, take KV away from waiting sequences (newest first) so that the
 * oldest can start.
 */
#include "sched_decode.h"

#include <string.h>

#include "btassert.h"

void bt_sched_decode_init(bt_sched_decode_t *s, const bt_sched_decode_params_t *p)
{
    BT_ASSERT(p->max_batch_tokens > 0 && p->max_batch_seqs > 0 && p->block_size > 0);
    s->p = *p;
    bt_sched_prefill_init(&s->waiting, p->block_size);
    bt_sched_list_init(&s->running);
}

void bt_sched_decode_add(bt_sched_decode_t *s, bt_sched_item_t *it)
{
    bt_sched_prefill_push(&s->waiting, it);
}

void bt_sched_decode_remove(bt_sched_decode_t *s, bt_sched_item_t *it)
{
    if (it->where == BT_SCHED_WAITING) {
        bt_sched_prefill_remove(&s->waiting, it);
    } else if (it->where == BT_SCHED_RUNNING) {
        bt_sched_list_remove(&s->running, it);
        it->where = BT_SCHED_NONE;
    }
}

int32_t bt_sched_decode_n_waiting(const bt_sched_decode_t *s)
{
    return bt_sched_prefill_len(&s->waiting);
}

int32_t bt_sched_decode_n_running(const bt_sched_decode_t *s)
{
    return s->running.len;
}

int64_t bt_sched_decode_running_tokens(const bt_sched_decode_t *s)
{
    int64_t n = 0;
    for (bt_sched_item_t *it = bt_sched_list_first(&s->running); it;
         it = bt_sched_list_next(&s->running, it))
        n += it->n_total;
    return n;
}

int32_t bt_sched_decode_growth_blocks(const bt_sched_decode_t *s)
{
    int32_t n = 0;
    if (s->p.growth_reserve <= 0)
        return 0;
    for (bt_sched_item_t *it = bt_sched_list_first(&s->running); it;
         it = bt_sched_list_next(&s->running, it))
        n += bt_sched_growth_blocks(it, s->p.block_size, s->p.growth_reserve);
    return n;
}

/* Drops its KV in the books and puts it back in the waiting queue at its arrival place. */
static void preempt(bt_sched_decode_t *s, bt_sched_item_t *it, bt_sched_plan_t *plan)
{
    bt_sched_decode_remove(s, it);
    it->n_kv = 0;
    it->n_blocks = 0;
    bt_sched_prefill_requeue(&s->waiting, it);
    plan->preempted[plan->n_preempted++] = it;
}

/* Preempts the newest running sequences until the rest can each grow by one token; returns the
 * blocks that growth takes. *free_blocks grows by what the preempted ones held. */
static int32_t make_room(bt_sched_decode_t *s, int32_t *free_blocks, bt_sched_plan_t *plan)
{
    int32_t growth = 0;
    for (bt_sched_item_t *it = bt_sched_list_first(&s->running); it;
         it = bt_sched_list_next(&s->running, it))
        growth += bt_sched_blocks_needed(it, s->p.block_size);
    while (growth > *free_blocks && s->running.len > 0) {
        bt_sched_item_t *victim = bt_sched_list_last(&s->running);
        growth -= bt_sched_blocks_needed(victim, s->p.block_size);
        *free_blocks += victim->n_blocks;
        preempt(s, victim, plan);
    }
    return growth;
}

/* Nothing can run: takes KV from the newest waiting sequences (never the head) until the head
 * fits. Returns whether it does now. */
static int evict_waiting(bt_sched_decode_t *s, int32_t *free_blocks, bt_sched_plan_t *plan)
{
    bt_sched_item_t *head = bt_sched_list_first(&s->waiting.queue);
    int32_t need = bt_sched_blocks_needed(head, s->p.block_size);
    bt_sched_item_t *it = bt_sched_list_last(&s->waiting.queue);
    while (need > *free_blocks && it && it != head) {
        bt_sched_item_t *prev = it->prev;
        if (it->n_blocks > 0) {
            *free_blocks += it->n_blocks;
            preempt(s, it, plan); /* it stays where it was in the queue */
        }
        it = prev;
    }
    return need <= *free_blocks;
}

int32_t bt_sched_decode_plan(bt_sched_decode_t *s, int32_t free_blocks, bt_sched_plan_t *plan)
{
    plan->n_run = plan->n_preempted = plan->n_prefill = 0;
    int32_t growth = make_room(s, &free_blocks, plan);
    int32_t n_running = s->running.len;
    int pf = s->p.prefill_first;
    int32_t reserve = bt_sched_decode_growth_blocks(s);
    bt_sched_budget_t b = {.tokens = s->p.max_batch_tokens - (pf ? 0 : n_running),
                           .seqs = s->p.max_batch_seqs - n_running,
                           .blocks = free_blocks - growth - reserve,
                           .growth = s->p.growth_reserve};
    bt_sched_item_t **picked = plan->run + n_running;
    int32_t n_picked = bt_sched_prefill_pick(&s->waiting, &b, pf || n_running == 0, picked);
    if (n_picked == 0 && n_running == 0 && bt_sched_prefill_len(&s->waiting) > 0) {
        b.blocks = free_blocks;
        b.growth = 0; /* the oldest always makes progress, reserve or not */
        if (evict_waiting(s, &b.blocks, plan))
            n_picked = bt_sched_prefill_pick(&s->waiting, &b, 1, picked);
    }
    if (pf && n_picked > 0) {
        memmove(plan->run, picked, (size_t)n_picked * sizeof *picked);
        plan->n_run = n_picked;
    } else {
        int32_t i = 0;
        for (bt_sched_item_t *it = bt_sched_list_first(&s->running); it;
             it = bt_sched_list_next(&s->running, it))
            plan->run[i++] = it;
        plan->n_run = n_running + n_picked;
    }
    /* The admitted ones are the last n_picked of run either way. */
    for (int32_t i = plan->n_run - n_picked; i < plan->n_run; i++) {
        bt_sched_list_push_back(&s->running, plan->run[i]);
        plan->run[i]->where = BT_SCHED_RUNNING;
    }
    plan->n_prefill = n_picked;
    return plan->n_run;
}
