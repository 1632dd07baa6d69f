/* SPDX-License-Identifier: MIT */
/*
 * sched_prefill.c - FCFS prefill batching under a token budget, a batch-size limit and the free
 * KV blocks (see sched_prefill.h); also the intrusive list both schedulers use.
 */
#include "sched_prefill.h"

#include <math.h>

#include "btassert.h"

void bt_sched_list_init(bt_sched_list_t *l)
{
    l->head.prev = l->head.next = &l->head;
    l->len = 0;
}

static void link_before(bt_sched_list_t *l, bt_sched_item_t *pos, bt_sched_item_t *it)
{
    it->next = pos;
    it->prev = pos->prev;
    pos->prev->next = it;
    pos->prev = it;
    l->len++;
}

void bt_sched_list_push_back(bt_sched_list_t *l, bt_sched_item_t *it)
{
    link_before(l, &l->head, it);
}

void bt_sched_list_insert_ordered(bt_sched_list_t *l, bt_sched_item_t *it)
{
    bt_sched_item_t *pos = l->head.next;
    while (pos != &l->head && pos->order <= it->order)
        pos = pos->next;
    link_before(l, pos, it);
}

void bt_sched_list_remove(bt_sched_list_t *l, bt_sched_item_t *it)
{
    BT_ASSERT(l->len > 0 && it->next && it->prev);
    it->prev->next = it->next;
    it->next->prev = it->prev;
    it->prev = it->next = NULL;
    l->len--;
}

bt_sched_item_t *bt_sched_list_first(const bt_sched_list_t *l)
{
    return l->len ? l->head.next : NULL;
}

bt_sched_item_t *bt_sched_list_last(const bt_sched_list_t *l)
{
    return l->len ? l->head.prev : NULL;
}

bt_sched_item_t *bt_sched_list_next(const bt_sched_list_t *l, const bt_sched_item_t *it)
{
    return it->next == &l->head ? NULL : it->next;
}

void bt_sched_prefill_init(bt_sched_prefill_t *s, int32_t block_size)
{
    BT_ASSERT(block_size > 0);
    bt_sched_list_init(&s->queue);
    s->block_size = block_size;
    s->n_tokens = 0;
    s->next_order = 1;
}

static int32_t feed_of(const bt_sched_item_t *it)
{
    return it->n_total - it->n_kv;
}

void bt_sched_prefill_push(bt_sched_prefill_t *s, bt_sched_item_t *it)
{
    BT_ASSERT(it->where == BT_SCHED_NONE && feed_of(it) > 0);
    it->order = s->next_order++;
    bt_sched_list_push_back(&s->queue, it);
    it->where = BT_SCHED_WAITING;
    s->n_tokens += feed_of(it);
}

void bt_sched_prefill_requeue(bt_sched_prefill_t *s, bt_sched_item_t *it)
{
    BT_ASSERT(it->where == BT_SCHED_NONE && feed_of(it) > 0);
    bt_sched_list_insert_ordered(&s->queue, it);
    it->where = BT_SCHED_WAITING;
    s->n_tokens += feed_of(it);
}

void bt_sched_prefill_remove(bt_sched_prefill_t *s, bt_sched_item_t *it)
{
    BT_ASSERT(it->where == BT_SCHED_WAITING);
    bt_sched_list_remove(&s->queue, it);
    it->where = BT_SCHED_NONE;
    s->n_tokens -= feed_of(it);
}

int32_t bt_sched_prefill_len(const bt_sched_prefill_t *s)
{
    return s->queue.len;
}

int64_t bt_sched_prefill_tokens(const bt_sched_prefill_t *s)
{
    return s->n_tokens;
}

int32_t bt_sched_blocks_needed(const bt_sched_item_t *it, int32_t block_size)
{
    int32_t need = (it->n_total + block_size - 1) / block_size - it->n_blocks;
    return need > 0 ? need : 0;
}

int32_t bt_sched_growth_blocks(const bt_sched_item_t *it, int32_t block_size, float ratio)
{
    if (ratio <= 0 || it->n_max <= it->n_total)
        return 0;
    int64_t grow = (int64_t)ceilf(ratio * (float)(it->n_max - it->n_total));
    int64_t now = (it->n_total + block_size - 1) / block_size;
    int64_t then = (it->n_total + grow + block_size - 1) / block_size;
    return (int32_t)(then - now);
}

int32_t bt_sched_prefill_pick(bt_sched_prefill_t *s, bt_sched_budget_t *budget, int allow_oversized,
                              bt_sched_item_t **out)
{
    int32_t n = 0;
    bt_sched_item_t *it;
    while (budget->seqs > 0 && (it = bt_sched_list_first(&s->queue)) != NULL) {
        int32_t feed = feed_of(it), blocks = bt_sched_blocks_needed(it, s->block_size);
        int32_t reserve = bt_sched_growth_blocks(it, s->block_size, budget->growth);
        int alone_ok = allow_oversized && n == 0;
        if ((feed > budget->tokens && !alone_ok) || blocks + reserve > budget->blocks)
            break; /* FCFS: nobody overtakes the first that does not fit */
        bt_sched_prefill_remove(s, it);
        budget->tokens -= feed < budget->tokens ? feed : budget->tokens;
        budget->blocks -= blocks + reserve;
        budget->seqs--;
        out[n++] = it;
    }
    return n;
}
