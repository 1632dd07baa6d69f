/* SPDX-License-Identifier: MIT */
/*
 * test_sched.c - the prefill and decode schedulers' decisions, with numbers alone: FCFS
 * batching under the token budget, the batch-size limit and free KV blocks; admission of
 * waiting sequences; preemption of the newest running sequence under memory pressure, and the
 * deadlock breaker that takes KV from waiting sequences.
 */
// ctest-labels: unit
#include "testutil.h"

#include <string.h>

#include "common/sched_decode.h"
#include "common/sched_prefill.h"

static bt_sched_item_t item(int32_t n_kv, int32_t n_total, int32_t n_blocks)
{
    bt_sched_item_t it;
    memset(&it, 0, sizeof it);
    it.n_kv = n_kv;
    it.n_total = n_total;
    it.n_blocks = n_blocks;
    return it;
}

static void test_prefill_fills_budget_fcfs(void **state)
{
    bt_sched_prefill_t s;
    bt_sched_prefill_init(&s, 16);
    bt_sched_item_t it[4] = {item(0, 100, 0), item(0, 200, 0), item(0, 300, 0), item(0, 10, 0)};
    for (int i = 0; i < 4; i++)
        bt_sched_prefill_push(&s, &it[i]);
    assert_int_equal(bt_sched_prefill_tokens(&s), 610);
    bt_sched_item_t *out[8];
    bt_sched_budget_t b = {.tokens = 512, .seqs = 8, .blocks = 1000};
    /* 100 + 200 fit; 300 does not, and the 10 behind it must not overtake it. */
    assert_int_equal(bt_sched_prefill_pick(&s, &b, 1, out), 2);
    assert_ptr_equal(out[0], &it[0]);
    assert_ptr_equal(out[1], &it[1]);
    assert_int_equal(b.tokens, 212);
    assert_int_equal(b.seqs, 6);
    assert_int_equal(b.blocks, 1000 - 7 - 13);
    assert_int_equal(bt_sched_prefill_len(&s), 2);
    assert_int_equal(bt_sched_prefill_tokens(&s), 310);
    b = (bt_sched_budget_t){.tokens = 512, .seqs = 8, .blocks = 1000};
    assert_int_equal(bt_sched_prefill_pick(&s, &b, 1, out), 2);
    assert_int_equal(bt_sched_prefill_len(&s), 0);
}

static void test_prefill_batch_size_and_memory_limits(void **state)
{
    bt_sched_prefill_t s;
    bt_sched_prefill_init(&s, 16);
    bt_sched_item_t it[5];
    for (int i = 0; i < 5; i++) {
        it[i] = item(0, 16, 0);
        bt_sched_prefill_push(&s, &it[i]);
    }
    bt_sched_item_t *out[8];
    bt_sched_budget_t b = {.tokens = 512, .seqs = 2, .blocks = 100};
    assert_int_equal(bt_sched_prefill_pick(&s, &b, 1, out), 2);
    /* Three blocks free: three one-block prompts, not four. KV not yet shipped is simply not
     * free, so it holds admission back the same way. */
    b = (bt_sched_budget_t){.tokens = 512, .seqs = 8, .blocks = 2};
    assert_int_equal(bt_sched_prefill_pick(&s, &b, 1, out), 2);
    b = (bt_sched_budget_t){.tokens = 512, .seqs = 8, .blocks = 0};
    assert_int_equal(bt_sched_prefill_pick(&s, &b, 1, out), 0);
    assert_int_equal(bt_sched_prefill_len(&s), 1);
}

static void test_prefill_oversized_head_goes_alone(void **state)
{
    bt_sched_prefill_t s;
    bt_sched_prefill_init(&s, 16);
    bt_sched_item_t big = item(0, 2000, 0), small = item(0, 10, 0);
    bt_sched_prefill_push(&s, &big);
    bt_sched_prefill_push(&s, &small);
    bt_sched_item_t *out[4];
    bt_sched_budget_t b = {.tokens = 512, .seqs = 4, .blocks = 1000};
    assert_int_equal(bt_sched_prefill_pick(&s, &b, 0, out), 0); /* not allowed: wait */
    assert_int_equal(bt_sched_prefill_pick(&s, &b, 1, out), 1);
    assert_ptr_equal(out[0], &big);
    assert_int_equal(b.tokens, 0);
    assert_int_equal(b.blocks, 1000 - 125);
    b = (bt_sched_budget_t){.tokens = 512, .seqs = 4, .blocks = 1000};
    assert_int_equal(bt_sched_prefill_pick(&s, &b, 1, out), 1);
    assert_ptr_equal(out[0], &small);
}

static void test_prefill_requeue_keeps_arrival_order(void **state)
{
    bt_sched_prefill_t s;
    bt_sched_prefill_init(&s, 16);
    bt_sched_item_t it[3] = {item(0, 10, 0), item(0, 10, 0), item(0, 10, 0)};
    for (int i = 0; i < 3; i++)
        bt_sched_prefill_push(&s, &it[i]);
    bt_sched_item_t *out[4];
    bt_sched_budget_t b = {.tokens = 10, .seqs = 4, .blocks = 10};
    assert_int_equal(bt_sched_prefill_pick(&s, &b, 1, out), 1);
    bt_sched_prefill_requeue(&s, &it[0]); /* back ahead of the later arrivals */
    assert_ptr_equal(bt_sched_list_first(&s.queue), &it[0]);
    bt_sched_prefill_remove(&s, &it[1]);
    assert_ptr_equal(bt_sched_list_next(&s.queue, &it[0]), &it[2]);
    assert_int_equal(bt_sched_prefill_tokens(&s), 20);
}

static const bt_sched_decode_params_t dparams = {
    .max_batch_tokens = 64, .max_batch_seqs = 4, .block_size = 4, .prefill_first = 0};

static void test_decode_admits_arrivals_and_runs_all(void **state)
{
    bt_sched_decode_t s;
    bt_sched_decode_init(&s, &dparams);
    /* Arrived: prompt KV of 8 tokens (2 blocks) in place, the first token to feed. */
    bt_sched_item_t a = item(8, 9, 2), b = item(8, 9, 2);
    bt_sched_decode_add(&s, &a);
    bt_sched_decode_add(&s, &b);
    bt_sched_item_t *run[4], *pre[4];
    bt_sched_plan_t plan = {.run = run, .preempted = pre};
    assert_int_equal(bt_sched_decode_plan(&s, 2, &plan), 2);
    assert_int_equal(plan.n_prefill, 2);
    assert_int_equal(plan.n_preempted, 0);
    assert_int_equal(bt_sched_decode_n_running(&s), 2);
    /* After the forward each holds 3 blocks and has a new token. */
    a = (bt_sched_item_t){.prev = a.prev,
                          .next = a.next,
                          .n_kv = 9,
                          .n_total = 10,
                          .n_blocks = 3,
                          .order = a.order,
                          .where = a.where};
    b.n_kv = 9, b.n_total = 10, b.n_blocks = 3;
    assert_int_equal(bt_sched_decode_plan(&s, 0, &plan), 2);
    assert_int_equal(plan.n_prefill, 0);
    assert_int_equal(bt_sched_decode_running_tokens(&s), 20);
}

static void test_decode_preempts_newest_under_pressure(void **state)
{
    bt_sched_decode_t s;
    bt_sched_decode_init(&s, &dparams);
    bt_sched_item_t it[3] = {item(0, 4, 0), item(0, 4, 0), item(0, 4, 0)};
    bt_sched_item_t *run[4], *pre[4];
    bt_sched_plan_t plan = {.run = run, .preempted = pre};
    for (int i = 0; i < 3; i++)
        bt_sched_decode_add(&s, &it[i]);
    assert_int_equal(bt_sched_decode_plan(&s, 3, &plan), 3);
    for (int i = 0; i < 3; i++) /* each computed 4 tokens into 1 block, sampled a 5th */
        it[i].n_kv = 4, it[i].n_total = 5, it[i].n_blocks = 1;
    /* Each needs a second block; only two are free: the newest (it[2]) is preempted. */
    assert_int_equal(bt_sched_decode_plan(&s, 2, &plan), 2);
    assert_int_equal(plan.n_preempted, 1);
    assert_ptr_equal(pre[0], &it[2]);
    assert_int_equal(it[2].n_kv, 0);
    assert_int_equal(it[2].n_blocks, 0);
    assert_int_equal(it[2].where, BT_SCHED_WAITING);
    assert_int_equal(bt_sched_decode_n_waiting(&s), 1);
    assert_ptr_equal(run[0], &it[0]);
    assert_ptr_equal(run[1], &it[1]);
    /* It comes back for recompute of its whole sequence once there is room. */
    for (int i = 0; i < 2; i++)
        it[i].n_kv = 5, it[i].n_total = 6, it[i].n_blocks = 2;
    assert_int_equal(bt_sched_decode_plan(&s, 2, &plan), 3);
    assert_int_equal(plan.n_prefill, 1);
    assert_ptr_equal(run[2], &it[2]);
    assert_int_equal(it[2].n_total - it[2].n_kv, 5);
}

/* --growth-reserve: admission also keeps free the blocks that the given fraction of each
 * sequence's remaining growth (to n_max) takes, its own and the running ones'; the oldest
 * still always runs. */
static void test_decode_growth_reserve(void **state)
{
    bt_sched_item_t g = item(8, 9, 2);
    assert_int_equal(bt_sched_growth_blocks(&g, 4, 1), 0); /* n_max unknown */
    g.n_max = 25;
    assert_int_equal(bt_sched_growth_blocks(&g, 4, 0), 0);
    assert_int_equal(bt_sched_growth_blocks(&g, 4, 0.5f), 2); /* 9 + 8 tokens: blocks 3 -> 5 */
    assert_int_equal(bt_sched_growth_blocks(&g, 4, 1), 4);    /* 25 tokens: 7 blocks */

    bt_sched_decode_params_t p = dparams;
    p.growth_reserve = 1;
    bt_sched_decode_t s;
    bt_sched_decode_init(&s, &p);
    bt_sched_item_t a = item(8, 9, 2), b = item(8, 9, 2);
    a.n_max = b.n_max = 24; /* each may grow to 6 blocks */
    bt_sched_decode_add(&s, &a);
    bt_sched_decode_add(&s, &b);
    bt_sched_item_t *run[4], *pre[4];
    bt_sched_plan_t plan = {.run = run, .preempted = pre};
    /* 4 free: a takes 1 for its next token and keeps 3 for the rest; b must wait. */
    assert_int_equal(bt_sched_decode_plan(&s, 4, &plan), 1);
    assert_ptr_equal(run[0], &a);
    a.n_kv = 9, a.n_total = 10, a.n_blocks = 3;
    assert_int_equal(bt_sched_decode_growth_blocks(&s), 3); /* 24 tokens: 6 blocks */
    /* 3 free, all of them a's reserve: b still waits, a is not preempted. */
    assert_int_equal(bt_sched_decode_plan(&s, 3, &plan), 1);
    assert_int_equal(plan.n_preempted, 0);
    assert_int_equal(bt_sched_decode_n_waiting(&s), 1);
    /* Without the reserve both would have run. */
    bt_sched_decode_t s0;
    bt_sched_decode_init(&s0, &dparams);
    bt_sched_item_t c = item(8, 9, 2), d = item(8, 9, 2);
    c.n_max = d.n_max = 24;
    bt_sched_decode_add(&s0, &c);
    bt_sched_decode_add(&s0, &d);
    assert_int_equal(bt_sched_decode_plan(&s0, 4, &plan), 2);

    /* Nothing runs and the head's growth cannot be covered: it runs anyway. */
    bt_sched_decode_t s1;
    bt_sched_decode_init(&s1, &p);
    bt_sched_item_t e = item(8, 9, 2);
    e.n_max = 400;
    bt_sched_decode_add(&s1, &e);
    assert_int_equal(bt_sched_decode_plan(&s1, 1, &plan), 1);
    assert_ptr_equal(run[0], &e);
}

static void test_decode_prefill_first_runs_prompts_alone(void **state)
{
    bt_sched_decode_params_t p = dparams;
    p.prefill_first = 1;
    bt_sched_decode_t s;
    bt_sched_decode_init(&s, &p);
    bt_sched_item_t a = item(0, 10, 0), b = item(0, 10, 0);
    bt_sched_item_t *run[4], *pre[4];
    bt_sched_plan_t plan = {.run = run, .preempted = pre};
    bt_sched_decode_add(&s, &a);
    assert_int_equal(bt_sched_decode_plan(&s, 100, &plan), 1);
    a.n_kv = 10, a.n_total = 11, a.n_blocks = 3;
    bt_sched_decode_add(&s, &b);
    /* The new prompt runs alone; the running sequence waits one iteration. */
    assert_int_equal(bt_sched_decode_plan(&s, 100, &plan), 1);
    assert_ptr_equal(run[0], &b);
    assert_int_equal(plan.n_prefill, 1);
    b.n_kv = 10, b.n_total = 11, b.n_blocks = 3;
    assert_int_equal(bt_sched_decode_plan(&s, 100, &plan), 2);
    assert_int_equal(plan.n_prefill, 0);
}

static void test_decode_batch_size_limit(void **state)
{
    bt_sched_decode_t s;
    bt_sched_decode_init(&s, &dparams);
    bt_sched_item_t it[6];
    bt_sched_item_t *run[4], *pre[6];
    bt_sched_plan_t plan = {.run = run, .preempted = pre};
    for (int i = 0; i < 6; i++) {
        it[i] = item(4, 5, 1);
        bt_sched_decode_add(&s, &it[i]);
    }
    assert_int_equal(bt_sched_decode_plan(&s, 100, &plan), 4);
    assert_int_equal(bt_sched_decode_n_waiting(&s), 2);
}

static void test_decode_takes_kv_from_waiting_when_stuck(void **state)
{
    bt_sched_decode_t s;
    bt_sched_decode_init(&s, &dparams);
    /* Three arrivals each hold 2 full blocks and need a third to go on; nothing is free. */
    bt_sched_item_t it[3] = {item(8, 9, 2), item(8, 9, 2), item(8, 9, 2)};
    bt_sched_item_t *run[4], *pre[4];
    bt_sched_plan_t plan = {.run = run, .preempted = pre};
    for (int i = 0; i < 3; i++)
        bt_sched_decode_add(&s, &it[i]);
    assert_int_equal(bt_sched_decode_plan(&s, 0, &plan), 2);
    /* The newest gave its KV up; its two blocks let the two oldest go on. */
    assert_int_equal(plan.n_preempted, 1);
    assert_ptr_equal(pre[0], &it[2]);
    assert_ptr_equal(run[0], &it[0]);
    assert_ptr_equal(run[1], &it[1]);
    assert_int_equal(it[2].n_blocks, 0);
    assert_int_equal(it[2].n_kv, 0);
    assert_int_equal(bt_sched_decode_n_waiting(&s), 1);
    assert_ptr_equal(bt_sched_list_first(&s.waiting.queue), &it[2]);
}

static void test_decode_remove_from_anywhere(void **state)
{
    bt_sched_decode_t s;
    bt_sched_decode_init(&s, &dparams);
    bt_sched_item_t a = item(0, 4, 0), b = item(0, 4, 0);
    bt_sched_item_t *run[4], *pre[4];
    bt_sched_plan_t plan = {.run = run, .preempted = pre};
    bt_sched_decode_add(&s, &a);
    assert_int_equal(bt_sched_decode_plan(&s, 10, &plan), 1);
    bt_sched_decode_add(&s, &b);
    bt_sched_decode_remove(&s, &a);
    bt_sched_decode_remove(&s, &b);
    bt_sched_decode_remove(&s, &b); /* twice is harmless */
    assert_int_equal(bt_sched_decode_n_running(&s), 0);
    assert_int_equal(bt_sched_decode_n_waiting(&s), 0);
    assert_int_equal(bt_sched_decode_plan(&s, 10, &plan), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_prefill_fills_budget_fcfs),
        cmocka_unit_test(test_prefill_batch_size_and_memory_limits),
        cmocka_unit_test(test_prefill_oversized_head_goes_alone),
        cmocka_unit_test(test_prefill_requeue_keeps_arrival_order),
        cmocka_unit_test(test_decode_admits_arrivals_and_runs_all),
        cmocka_unit_test(test_decode_preempts_newest_under_pressure),
        cmocka_unit_test(test_decode_growth_reserve),
        cmocka_unit_test(test_decode_prefill_first_runs_prompts_alone),
        cmocka_unit_test(test_decode_batch_size_limit),
        cmocka_unit_test(test_decode_takes_kv_from_waiting_when_stuck),
        cmocka_unit_test(test_decode_remove_from_anywhere),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
