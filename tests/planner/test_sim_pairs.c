/* SPDX-License-Identifier: MIT */
/*
 * test_sim_pairs.c - AcceLLM pairs in the cluster simulator: one request takes exactly what the
 * profile and the layer-by-layer copy say; a pair fed only prompts serves them as one prefill
 * instance does, turning its members between roles at the stated times; the thresholds delay
 * the turn to decode and nothing else; a member turning to prefill waits for its batch boundary
 * and hands its sequences over; replicas are dropped before a member's own work waits for
 * memory; no request is ever lost, whatever the memory and thresholds; runs are deterministic;
 * allocation failures are reported and leak nothing. The simulator's speed is printed.
 */
// ctest-labels: unit
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/alloc.h"
#include "common/log.h"
#include "common/status.h"
#include "planner/rng.h"
#include "planner/sim.h"

/* Prefill a + b l, decode steps of da ms; the KV link is as the test sets it. */
static bt_profile_t profile(double pa, double pb, double da)
{
    return (bt_profile_t){.tp = 1,
                          .prefill = {pa, pb, 0},
                          .decode = {da, 0, 0},
                          .transfer_latency_ms = 0.5,
                          .transfer_gb_per_s = 1,
                          .kv_bytes_per_token = 1e5};
}

typedef struct {
    bt_profile_t prof;
    pl_inst_spec_t inst[8];
    pl_sim_params_t sp;
} pairs_t;

/* n pairs with an instant link (unless the test restores the profile's), a router that sees
 * every member's exact state (no heartbeat lag), a 1 ms round trip and otherwise the defaults. */
static void pairs_init(pairs_t *c, int n, bt_profile_t prof)
{
    memset(c, 0, sizeof *c);
    c->prof = prof;
    for (int i = 0; i < 2 * n; i++)
        c->inst[i] = (pl_inst_spec_t){.role = PL_ROLE_PAIRED, .profile = &c->prof};
    c->sp = (pl_sim_params_t){.inst = c->inst,
                              .n_inst = 2 * n,
                              .mode = PL_SIM_FULL,
                              .slo_ttft_ms = 1e9,
                              .slo_tpot_ms = 1e9,
                              .intra_gb_per_s = 1e15,
                              .pairs = {.heartbeat_ms = -1, .rtt_ms = 1}};
}

static pl_req_t *poisson(size_t n, double rate_per_ms, uint64_t seed, int32_t prompt_max,
                         int32_t output_max)
{
    pl_req_t *r = malloc(n * sizeof *r);
    pl_rng_t g;
    pl_rng_seed(&g, seed);
    double t = 0;
    for (size_t i = 0; i < n; i++) {
        t += pl_rng_exp(&g, 1 / rate_per_ms);
        int32_t l = 1 + (int32_t)(pl_rng_uniform(&g) * prompt_max);
        int32_t o = 1 + (int32_t)(pl_rng_uniform(&g) * output_max);
        r[i] = (pl_req_t){t, l > prompt_max ? prompt_max : l, o > output_max ? output_max : o};
    }
    return r;
}

static void near(double got, double want)
{
    if (fabs(got - want) > 1e-6)
        fail_msg("got %.9f, want %.9f", got, want);
}

/* One request: member 0 serves prefill, so it owns the request; its ASSIGN comes a round trip
 * after arrival (the holder reserved first), it prefills 1 - 16 (5 + 0.1 x 100), ships the
 * prompt's KV and hands the request off; member 1 resumes it a round trip later, or once the KV
 * is there when the link is slower, and decodes 10 steps of 2 ms. Member 0, idle since its
 * assignment, turns to decode on the first router tick 1000 ms after it. */
static void test_pairs_single_request(void **state)
{
    (void)state;
    pairs_t c;
    pairs_init(&c, 1, profile(5, 0.1, 2));
    pl_req_t r = {0, 100, 11};
    pl_sim_result_t res;
    pl_sim_req_t per;
    assert_int_equal(pl_sim_run(&c.sp, &r, 1, &res, &per), BT_OK);
    near(per.ttft_ms, 16);
    near(per.tpot_ms, (17 + 20 - 16) / 10.0);
    assert_int_equal(per.prefill, 0);
    assert_int_equal(per.decode, 1);
    assert_int_equal(res.n_moved, 1);
    assert_int_equal(res.n_switches, 1);
    near(res.makespan_ms, 1010);
    assert_int_equal(res.n_finished, 1);
    /* The profile's link: 0.5 ms + 100 x 1e5 bytes at 1 GB/s = 10.5 ms after the first token. */
    c.sp.intra_gb_per_s = 0;
    assert_int_equal(pl_sim_run(&c.sp, &r, 1, &res, &per), BT_OK);
    near(per.ttft_ms, 16);
    near(per.tpot_ms, (26.5 + 20 - 16) / 10.0);
}

/* Only prompts (one output token each) and no round trip: the member serving prefill owns them
 * all and serves them FCFS exactly as one prefill instance would; nothing is handed off, and with
 * arrivals less than the idle time apart nobody switches. */
static void test_pairs_prompts_only(void **state)
{
    (void)state;
    const size_t n = 20000;
    bt_profile_t p = profile(3, 0.02, 1);
    pl_req_t *r = poisson(n, 0.05, 11, 512, 1);
    pairs_t c;
    pairs_init(&c, 1, p);
    c.sp.pairs.rtt_ms = -1;
    c.inst[0].max_batch_seqs = c.inst[1].max_batch_seqs = 1;
    pl_sim_req_t *a = malloc(n * sizeof *a), *b = malloc(n * sizeof *b);
    pl_sim_result_t ra, rb;
    assert_int_equal(pl_sim_run(&c.sp, r, n, &ra, a), BT_OK);
    pl_inst_spec_t one = {.role = PL_ROLE_PREFILL, .profile = &p, .max_batch_seqs = 1};
    pl_sim_params_t sp = {.inst = &one,
                          .n_inst = 1,
                          .mode = PL_SIM_PREFILL_ONLY,
                          .slo_ttft_ms = 1e9,
                          .slo_tpot_ms = 1e9};
    assert_int_equal(pl_sim_run(&sp, r, n, &rb, b), BT_OK);
    double gap = 0;
    for (size_t i = 0; i < n; i++) {
        near(a[i].ttft_ms, b[i].ttft_ms);
        assert_int_equal(a[i].prefill, 0);
        gap = fmax(gap, r[i].arrival_ms - (i ? r[i - 1].arrival_ms : 0));
    }
    assert_true(gap < 1000);
    assert_int_equal(ra.n_finished, n);
    assert_int_equal(ra.n_moved, 0);
    assert_int_equal(ra.n_switches, 1); /* at the end, idle */
    printf("prompts only: mean TTFT %.3f ms both\n", ra.ttft_mean_ms);
    free(a);
    free(b);
    free(r);
}

/* Switches happen on router ticks (10 ms) only. Idle 50 ms: member 0, given its prompt at 1,
 * turns to decode at the tick after 51, 60. A request at 600 then finds both members decoding:
 * member 0 (the less loaded; ties: the first) owns it and decodes it itself, 601 - 616 - 636, and
 * with exact loads one waiting prompt never turns anyone to prefill.
 * With heartbeats every 500 ms the router counts assignments (the holder's and the owner's) as
 * waiting until the next heartbeat: member 0 turns to decode only at 500, when the heartbeat
 * shows nothing waiting; r1's two assignments make member 0 turn to prefill at the first tick
 * 200 ms after that, 700 (r1 is done by then), and back to decode at the heartbeat at 1000. */
static void test_pairs_switch_on_ticks(void **state)
{
    (void)state;
    pairs_t c;
    pairs_init(&c, 1, profile(5, 0.1, 2));
    c.sp.pairs.idle_ms = 50;
    pl_req_t r[2] = {{0, 100, 11}, {600, 100, 11}};
    pl_sim_result_t res;
    pl_sim_req_t per[2];
    assert_int_equal(pl_sim_run(&c.sp, r, 1, &res, per), BT_OK);
    assert_int_equal(res.n_switches, 1);
    near(res.makespan_ms, 60);
    assert_int_equal(pl_sim_run(&c.sp, r, 2, &res, per), BT_OK);
    assert_int_equal(res.n_switches, 1);
    assert_int_equal(per[1].prefill, 0);
    assert_int_equal(per[1].decode, 0);
    near(per[1].ttft_ms, 16);
    near(per[1].tpot_ms, 2);
    near(res.makespan_ms, 636);
    assert_int_equal(res.n_moved, 1);
    c.sp.pairs.heartbeat_ms = 500;
    assert_int_equal(pl_sim_run(&c.sp, r, 2, &res, per), BT_OK);
    assert_int_equal(res.n_switches, 3);
    near(res.makespan_ms, 1000);
    assert_int_equal(per[1].decode, 0);
    near(per[1].tpot_ms, 2);
    assert_int_equal(res.n_moved, 1);
    /* Switches 100 ms apart: member 0 turns to prefill at 610, while it prefills r1; at its
     * boundary (616) it hands r1 off, and member 1 decodes it from 617. */
    c.sp.pairs.switch_ms = 100;
    assert_int_equal(pl_sim_run(&c.sp, r, 2, &res, per), BT_OK);
    assert_int_equal(res.n_switches, 3);
    near(res.makespan_ms, 1000);
    assert_int_equal(per[1].decode, 1);
    near(per[1].tpot_ms, 2.1);
    assert_int_equal(res.n_moved, 2);
}

/* A member that turns to prefill hands what it decodes to the partner at its next batch boundary
 * and prefills alone, handing each prompt off. Prefill 10 ms, decode steps 2 ms, token budget 16:
 * a prompt cannot join a running batch. At 0 member 0 turns to decode (no idle time). r0 (0)
 * goes to member 0 (ties: the first) and decodes there from 11; r1 (2) to member 1, the less
 * loaded, from 13. r2 and r3 (20, 20.5) go to member 0 and wait: two prompts wait at the tick of
 * 30, member 0 (fewest running; ties: the first) turns to prefill, at its boundary at 31 hands r0
 * to member 1 (resumed at 32, in its batch from 33), prefills r2 31 - 41 and r3 41 - 51 and hands
 * them off. */
static void test_pairs_turn_to_prefill(void **state)
{
    (void)state;
    pairs_t c;
    pairs_init(&c, 1, profile(10, 0, 2));
    c.inst[0].max_batch_tokens = c.inst[1].max_batch_tokens = 16;
    c.sp.pairs.idle_ms = -1;
    c.sp.pairs.switch_ms = -1;
    pl_req_t r[4] = {{0, 16, 101}, {2, 16, 101}, {20, 16, 3}, {20.5, 16, 3}};
    pl_sim_result_t res;
    pl_sim_req_t per[4];
    assert_int_equal(pl_sim_run(&c.sp, r, 4, &res, per), BT_OK);
    near(per[0].ttft_ms, 11);
    near(per[1].ttft_ms, 11);
    near(per[2].ttft_ms, 21);
    near(per[3].ttft_ms, 30.5);
    assert_int_equal(per[0].prefill, 0);
    assert_int_equal(per[0].decode, 1);
    assert_int_equal(per[1].decode, 1);
    assert_int_equal(per[2].prefill, 0);
    assert_int_equal(per[2].decode, 1);
    assert_int_equal(per[3].decode, 1);
    /* r0: 10 steps on member 0, 90 on member 1 from 33. r1 is not disturbed. */
    near(per[0].finish_ms, 33 + 180);
    near(per[1].finish_ms, 13 + 200);
    assert_int_equal(res.n_moved, 3);
    assert_int_equal(res.n_finished, 4);
}

/* Memory. Member 1 (150 tokens) decodes r0 (64 tokens, handed off) when r1 (112) comes: as the
 * holder it refuses r1's replica, and r1 runs on member 0 alone, which serves prefill: it
 * decodes r1 itself between prompt batches, and r2's prompt (35) runs alone while r1 waits. */
static void test_pairs_replica_refused(void **state)
{
    (void)state;
    pairs_t c;
    pairs_init(&c, 1, profile(10, 0, 2));
    c.inst[1].kv_tokens = 150;
    pl_req_t r[3] = {{0, 16, 33}, {20, 100, 11}, {35, 16, 1}};
    pl_sim_result_t res;
    pl_sim_req_t per[3];
    assert_int_equal(pl_sim_run(&c.sp, r, 3, &res, per), BT_OK);
    assert_int_equal(res.n_replicas_refused, 1);
    assert_int_equal(per[0].decode, 1);
    near(per[0].finish_ms, 12 + 64);
    assert_int_equal(per[1].decode, 0);
    near(per[1].ttft_ms, 11);
    near(per[1].finish_ms, 47 + 14);
    near(per[2].ttft_ms, 12);
    assert_int_equal(res.n_moved, 1);
}

/* Member 0 (150 tokens) keeps r0's replica (64) after handing it off; r1's prompt (112) needs the
 * room: the replica is dropped before the prompt would wait, and r0 decodes on unharmed. */
static void test_pairs_replicas_dropped_first(void **state)
{
    (void)state;
    pairs_t c;
    pairs_init(&c, 1, profile(10, 0, 2));
    c.inst[0].kv_tokens = 150;
    pl_req_t r[2] = {{0, 16, 33}, {20, 100, 11}};
    pl_sim_result_t res;
    pl_sim_req_t per[2];
    assert_int_equal(pl_sim_run(&c.sp, r, 2, &res, per), BT_OK);
    assert_int_equal(res.n_replicas_dropped, 1);
    near(per[1].ttft_ms, 11);
    near(per[0].finish_ms, 12 + 64);
    assert_int_equal(per[1].decode, 1);
    /* With room for both, nothing is dropped. */
    c.inst[0].kv_tokens = 176;
    assert_int_equal(pl_sim_run(&c.sp, r, 2, &res, per), BT_OK);
    assert_int_equal(res.n_replicas_dropped, 0);
}

/* Under load, tight memory and every threshold setting, every request finishes (or, too long for
 * an instance, is refused at once), and each token time is at least one decode step. */
static void test_pairs_no_request_lost(void **state)
{
    (void)state;
    const size_t n = 20000;
    pl_req_t *r = poisson(n, 0.2, 3, 400, 200);
    const double idle[] = {-1, 5, 50}, switch_ms[] = {-1, 20, 500};
    const int64_t kv[] = {0, 700, 4000};
    for (int k = 0; k < 54; k++) {
        pairs_t c;
        pairs_init(&c, 3, profile(2, 0.01, 1));
        for (int i = 0; i < 6; i++) {
            c.inst[i].kv_tokens = kv[k % 3];
            c.inst[i].max_batch_seqs = 16;
            c.inst[i].max_batch_tokens = 512;
        }
        c.sp.pairs.idle_ms = idle[k / 3 % 3];
        c.sp.pairs.switch_ms = switch_ms[k / 9 % 3];
        c.sp.pairs.heartbeat_ms = k < 27 ? -1 : 50;
        pl_sim_result_t res;
        pl_sim_req_t *per = malloc(n * sizeof *per);
        assert_int_equal(pl_sim_run(&c.sp, r, n, &res, per), BT_OK);
        size_t refused = 0;
        for (size_t i = 0; i < n; i++) {
            int too_long = kv[k % 3] > 0 && (r[i].prompt + r[i].output + 15) / 16 * 16 > kv[k % 3];
            refused += too_long;
            if (too_long)
                continue;
            assert_true(per[i].finish_ms >= r[i].arrival_ms + per[i].ttft_ms - 1e-9);
            assert_true(per[i].ttft_ms > 0 && per[i].prefill >= 0 && per[i].prefill < 6);
            assert_true(r[i].output == 1 || (per[i].decode >= 0 && per[i].decode < 6));
            assert_true(r[i].output == 1 || per[i].tpot_ms >= 1 - 1e-9);
        }
        assert_int_equal(res.n_refused, refused);
        assert_int_equal(res.n_finished + refused, n);
        if (k % 3 == 1)
            assert_true(res.n_replicas_dropped > 0);
        free(per);
    }
    free(r);
}

static void test_pairs_deterministic(void **state)
{
    (void)state;
    const size_t n = 5000;
    pl_req_t *r = poisson(n, 0.2, 9, 400, 200);
    pairs_t c;
    pairs_init(&c, 2, profile(2, 0.01, 1));
    c.inst[0].kv_tokens = c.inst[1].kv_tokens = c.inst[2].kv_tokens = c.inst[3].kv_tokens = 3000;
    pl_sim_req_t *a = malloc(n * sizeof *a), *b = malloc(n * sizeof *b);
    pl_sim_result_t ra, rb;
    assert_int_equal(pl_sim_run(&c.sp, r, n, &ra, a), BT_OK);
    assert_int_equal(pl_sim_run(&c.sp, r, n, &rb, b), BT_OK);
    assert_memory_equal(a, b, n * sizeof *a);
    assert_int_equal(ra.n_switches, rb.n_switches);
    free(a);
    free(b);
    free(r);
}

static void test_pairs_refuses_bad_cluster(void **state)
{
    (void)state;
    bt_log_level_t old = bt_log_get_level();
    bt_log_set_level(BT_LOG_OFF);
    pairs_t c;
    pairs_init(&c, 1, profile(2, 0.01, 1));
    pl_req_t r = {0, 10, 10};
    pl_sim_result_t res;
    c.sp.n_inst = 3; /* odd */
    assert_int_equal(pl_sim_run(&c.sp, &r, 1, &res, NULL), BT_ERR_INVAL);
    c.sp.n_inst = 2;
    c.inst[1].role = PL_ROLE_DECODE; /* mixed */
    assert_int_equal(pl_sim_run(&c.sp, &r, 1, &res, NULL), BT_ERR_INVAL);
    c.inst[1].role = PL_ROLE_PAIRED;
    c.sp.mode = PL_SIM_PREFILL_ONLY;
    assert_int_equal(pl_sim_run(&c.sp, &r, 1, &res, NULL), BT_ERR_INVAL);
    c.sp.mode = PL_SIM_FULL;
    c.sp.pairs.tick_ms = -1;
    assert_int_equal(pl_sim_run(&c.sp, &r, 1, &res, NULL), BT_ERR_INVAL);
    c.sp.pairs.tick_ms = 0;
    c.sp.pairs.idle_ms = NAN;
    assert_int_equal(pl_sim_run(&c.sp, &r, 1, &res, NULL), BT_ERR_INVAL);
    bt_log_set_level(old);
}

static void test_pairs_allocation_failures(void **state)
{
    (void)state;
    pairs_t c;
    pairs_init(&c, 2, profile(2, 0.01, 1));
    for (int i = 0; i < 4; i++)
        c.inst[i].kv_tokens = 2000;
    pl_req_t *r = poisson(300, 0.2, 2, 300, 50);
    pl_sim_result_t res;
    int st = BT_ERR_NOMEM;
    for (long k = 1; st != BT_OK && k < 10000; k++) {
        bt_alloc_fail_at(k);
        st = pl_sim_run(&c.sp, r, 300, &res, NULL);
        int fired = bt_alloc_fault_fired();
        bt_alloc_fail_at(0);
        assert_true(st == (fired ? BT_ERR_NOMEM : BT_OK));
    }
    assert_int_equal(st, BT_OK);
    free(r);
}

/* Requests per minute of simulated traffic on one core (printed; not a timed assertion). */
static void test_pairs_speed(void **state)
{
    (void)state;
    const size_t n = 200000;
    pairs_t c;
    pairs_init(&c, 2, profile(5, 0.02, 8));
    c.sp.pairs.heartbeat_ms = 500;
    pl_req_t *r = poisson(n, 0.03, 4, 600, 200);
    pl_sim_result_t res;
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    assert_int_equal(pl_sim_run(&c.sp, r, n, &res, NULL), BT_OK);
    clock_gettime(CLOCK_MONOTONIC, &b);
    double s = (double)(b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) * 1e-9;
    printf("pairs: %zu requests (%llu events, %llu switches, %llu handed off) in %.3f s: %.2f M "
           "requests per minute\n",
           n, (unsigned long long)res.n_events, (unsigned long long)res.n_switches,
           (unsigned long long)res.n_moved, s, n / s * 60 / 1e6);
    assert_int_equal(res.n_finished, n);
    free(r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pairs_single_request),
        cmocka_unit_test(test_pairs_prompts_only),
        cmocka_unit_test(test_pairs_switch_on_ticks),
        cmocka_unit_test(test_pairs_turn_to_prefill),
        cmocka_unit_test(test_pairs_replica_refused),
        cmocka_unit_test(test_pairs_replicas_dropped_first),
        cmocka_unit_test(test_pairs_no_request_lost),
        cmocka_unit_test(test_pairs_deterministic),
        cmocka_unit_test(test_pairs_refuses_bad_cluster),
        cmocka_unit_test(test_pairs_allocation_failures),
        cmocka_unit_test(test_pairs_speed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
