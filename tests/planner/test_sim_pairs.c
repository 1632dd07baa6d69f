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

/* n pairs with an instant link (unless the test restores the profile's) and no thresholds. */
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
                              .intra_gb_per_s = 1e15};
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

/* One request: the prefill ends one layer's copy after its compute (latency 0.5 ms, 100 tokens
 * of 1e5 bytes at 1 GB/s = 10 ms over 10 layers); the idle prefill member turns to decode, and
 * the request decodes on the partner (both have no sequence and 112 tokens reserved: the
 * prompt's on the producer, the whole sequence's on the partner; ties go to the partner). */
static void test_pairs_single_request(void **state)
{
    (void)state;
    pairs_t c;
    pairs_init(&c, 1, profile(5, 0.1, 2));
    c.sp.intra_gb_per_s = 0; /* the profile's link */
    c.sp.pairs.layers = 10;
    pl_req_t r = {0, 100, 11};
    pl_sim_result_t res;
    pl_sim_req_t per;
    assert_int_equal(pl_sim_run(&c.sp, &r, 1, &res, &per), BT_OK);
    near(per.ttft_ms, 0.5 + 15 + 1);
    near(per.tpot_ms, 2);
    assert_int_equal(per.prefill, 0);
    assert_int_equal(per.decode, 1);
    assert_int_equal(res.n_switches, 1);
    assert_int_equal(res.n_finished, 1);
    /* A slow link: the whole copy (10 ms at 1 GB/s x 4) outlasts the compute. */
    c.prof.transfer_gb_per_s = 0.25;
    assert_int_equal(pl_sim_run(&c.sp, &r, 1, &res, &per), BT_OK);
    near(per.ttft_ms, 0.5 + 15.0 / 10 + 40);
}

/* Only prompts (one output token each): the pair serves them FCFS exactly as one prefill
 * instance would, its member 0 turning to decode at the end of every busy period and back to
 * prefill at the start of the next: 2 x busy periods - 1 switches. */
static void test_pairs_prompts_only(void **state)
{
    (void)state;
    const size_t n = 20000;
    bt_profile_t p = profile(3, 0.02, 1);
    pl_req_t *r = poisson(n, 0.05, 11, 512, 1);
    pairs_t c;
    pairs_init(&c, 1, p);
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
    uint64_t busy = 0;
    double done = -1;
    for (size_t i = 0; i < n; i++) {
        near(a[i].ttft_ms, b[i].ttft_ms);
        assert_int_equal(a[i].prefill, 0);
        busy += r[i].arrival_ms >= done;
        done = r[i].arrival_ms + b[i].ttft_ms;
    }
    assert_int_equal(ra.n_finished, n);
    assert_int_equal(ra.n_switches, 2 * busy - 1);
    assert_int_equal(ra.n_moved, 0);
    printf("prompts only: %llu busy periods, %llu switches, mean TTFT %.3f ms both\n",
           (unsigned long long)busy, (unsigned long long)ra.n_switches, ra.ttft_mean_ms);
    free(a);
    free(b);
    free(r);
}

/* The thresholds: the prefill member turns to decode only after idle_ms without a prompt; no
 * switch either way comes sooner than min_switch_ms after the pair's last; a prompt finding both
 * members decoding and idle, past that time, is prefilled at once. Prompts take 15 ms, one
 * output token. */
static void test_pairs_switch_thresholds(void **state)
{
    (void)state;
    pairs_t c;
    pairs_init(&c, 1, profile(15, 0, 1));
    pl_req_t r[3] = {{0, 16, 1}, {40, 16, 1}, {200, 16, 1}};
    pl_sim_result_t res;
    pl_sim_req_t per[3];
    /* No thresholds: to decode at 15, prefill at 40, decode 55, prefill 200, decode 215. */
    assert_int_equal(pl_sim_run(&c.sp, r, 3, &res, per), BT_OK);
    assert_int_equal(res.n_switches, 5);
    /* idle 50 ms: r1 (40) comes before the turn (15 + 50); to decode at 105, back at 200, to
     * decode at 265. */
    c.sp.pairs.idle_ms = 50;
    assert_int_equal(pl_sim_run(&c.sp, r, 3, &res, per), BT_OK);
    assert_int_equal(res.n_switches, 3);
    near(res.makespan_ms, 265);
    for (int i = 0; i < 3; i++)
        near(per[i].ttft_ms, 15);
    /* min switch 100 ms, both ways: to decode at 15; r1 (40) waits for the turn to prefill until
     * 115 and is done at 130; r2 (200) finds member 0 still prefilling (it may turn to decode at
     * 215 only) and is done at 215, when member 0 turns. */
    c.sp.pairs.idle_ms = 0;
    c.sp.pairs.min_switch_ms = 100;
    assert_int_equal(pl_sim_run(&c.sp, r, 3, &res, per), BT_OK);
    assert_int_equal(res.n_switches, 3);
    near(res.makespan_ms, 215);
    near(per[1].ttft_ms, 90);
    near(per[2].ttft_ms, 15);
    /* r2 at 120 queues behind r1: prefilled 130-145. */
    r[2].arrival_ms = 120;
    assert_int_equal(pl_sim_run(&c.sp, r, 3, &res, per), BT_OK);
    assert_int_equal(res.n_switches, 3);
    near(per[2].ttft_ms, 25);
    near(res.makespan_ms, 215);
}

/* Turning to prefill waits for the member's batch boundary and hands its sequences to the
 * partner, which decodes them after one step's delay; the partner's own sequence is not
 * disturbed. Prefill 10 ms, decode steps 2 ms. */
static void test_pairs_turn_to_prefill(void **state)
{
    (void)state;
    pairs_t c;
    pairs_init(&c, 1, profile(10, 0, 2));
    /* r0 prefills 0-10 and decodes on member 1 (member 0 still has r1 queued); r1 prefills
     * 10-20; member 0 turns to decode and takes r1 (fewer sequences). r2 at 25: both decode with
     * one sequence each, member 0 (ties: the first) turns at its boundary, 26, handing r1 over
     * (ready on member 1 at 28), and prefills r2 26-36. */
    pl_req_t r[3] = {{0, 16, 101}, {1, 16, 101}, {25, 16, 1}};
    pl_sim_result_t res;
    pl_sim_req_t per[3];
    assert_int_equal(pl_sim_run(&c.sp, r, 3, &res, per), BT_OK);
    near(per[0].ttft_ms, 10);
    near(per[1].ttft_ms, 19);
    near(per[2].ttft_ms, 11);
    assert_int_equal(per[2].prefill, 0);
    /* r0 decodes undisturbed on member 1 (100 steps of 2 ms from 10): member 1 never turns.
     * r1 misses one step at each hand-over: to member 1 at 26 (decoding again at 28), and back
     * at 36 when member 0, idle, turns to decode and takes half of member 1's sequences, those
     * with the most steps left (decoding again at 38): 20 + 200 + 2 x 2. */
    assert_int_equal(per[0].decode, 1);
    near(per[0].finish_ms, 10 + 200);
    assert_int_equal(per[1].decode, 0);
    near(per[1].finish_ms, 20 + 200 + 4);
    assert_int_equal(res.n_moved, 2);
    assert_int_equal(res.n_switches, 3);
    assert_int_equal(res.n_finished, 3);
}

/* Memory: member 0 (150 tokens) holds r0's replica (96 tokens) when r1's prompt (64) needs
 * room there; the replica is dropped and r1 is prefilled at once, while r0 decodes on unharmed.
 * The prefill member stays prefill (idle threshold). */
static void test_pairs_replicas_dropped_first(void **state)
{
    (void)state;
    pairs_t c;
    pairs_init(&c, 1, profile(10, 0, 2));
    c.inst[0].kv_tokens = 150;
    c.inst[1].kv_tokens = 1000;
    c.sp.pairs.idle_ms = 1e6;
    pl_req_t r[2] = {{0, 48, 33}, {20, 64, 17}};
    pl_sim_result_t res;
    pl_sim_req_t per[2];
    assert_int_equal(pl_sim_run(&c.sp, r, 2, &res, per), BT_OK);
    assert_int_equal(res.n_replicas_dropped, 1);
    near(per[1].ttft_ms, 10);
    near(per[0].ttft_ms, 10);
    near(per[0].tpot_ms, 2);
    assert_int_equal(per[0].decode, 1);
    assert_int_equal(per[1].decode, 1);
    /* The one switch: member 0 turns to decode after its idle time, when all is done. */
    assert_int_equal(res.n_switches, 1);
    near(res.makespan_ms, 30 + 1e6);
    /* With room for both replicas whole (2 x 96), nothing is dropped. */
    c.inst[0].kv_tokens = 192;
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
    const double idle[] = {0, 5, 50}, min_switch[] = {0, 20, 500};
    const int64_t kv[] = {0, 700, 4000};
    for (int k = 0; k < 27; k++) {
        pairs_t c;
        pairs_init(&c, 3, profile(2, 0.01, 1));
        for (int i = 0; i < 6; i++) {
            c.inst[i].kv_tokens = kv[k % 3];
            c.inst[i].max_batch_seqs = 16;
            c.inst[i].max_batch_tokens = 512;
        }
        c.sp.pairs.idle_ms = idle[k / 3 % 3];
        c.sp.pairs.min_switch_ms = min_switch[k / 9];
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
    c.sp.pairs.idle_ms = -1;
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
    c.sp.pairs.idle_ms = 200;
    c.sp.pairs.min_switch_ms = 2000;
    pl_req_t *r = poisson(n, 0.03, 4, 600, 200);
    pl_sim_result_t res;
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    assert_int_equal(pl_sim_run(&c.sp, r, n, &res, NULL), BT_OK);
    clock_gettime(CLOCK_MONOTONIC, &b);
    double s = (double)(b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) * 1e-9;
    printf("pairs: %zu requests (%llu events, %llu switches, %llu handed over) in %.3f s: %.2f M "
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
        cmocka_unit_test(test_pairs_switch_thresholds),
        cmocka_unit_test(test_pairs_turn_to_prefill),
        cmocka_unit_test(test_pairs_replicas_dropped_first),
        cmocka_unit_test(test_pairs_no_request_lost),
        cmocka_unit_test(test_pairs_deterministic),
        cmocka_unit_test(test_pairs_refuses_bad_cluster),
        cmocka_unit_test(test_pairs_allocation_failures),
        cmocka_unit_test(test_pairs_speed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
