/* SPDX-License-Identifier: MIT */
/*
 * test_sim.c - the cluster simulator against closed forms: one prefill instance serving one
 * prompt at a time is an M/G/1 queue (Pollaczek-Khinchine mean wait for fixed and for
 * exponential-like service), a one-at-a-time decode instance is M/D/1 in tokens, an unbounded
 * decode batch adds at most one step of waiting; single requests through the disaggregated and
 * colocated paths take exactly what the profile says; memory limits serialize; policies pick as
 * the router does; a run is deterministic for a seed; allocation failures are reported and leak
 * nothing. The simulator's speed is printed (not asserted).
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

static bt_profile_t profile(double pa, double pb, double pc, double da, double db, double dc)
{
    return (bt_profile_t){.tp = 1,
                          .prefill = {pa, pb, pc},
                          .decode = {da, db, dc},
                          .transfer_latency_ms = 0.5,
                          .transfer_gb_per_s = 1,
                          .kv_bytes_per_token = 1e5};
}

/* Poisson arrivals at rate_per_ms with the given lengths. */
static pl_req_t *poisson(size_t n, double rate_per_ms, uint64_t seed, int32_t prompt_mean_geo,
                         int32_t fixed_prompt, int32_t output)
{
    pl_req_t *r = malloc(n * sizeof *r);
    pl_rng_t g;
    pl_rng_seed(&g, seed);
    double t = 0;
    for (size_t i = 0; i < n; i++) {
        t += pl_rng_exp(&g, 1 / rate_per_ms);
        int32_t l = fixed_prompt;
        if (prompt_mean_geo > 0) /* geometric: the discrete exponential */
            l = 1 + (int32_t)floor(pl_rng_exp(&g, prompt_mean_geo - 0.5));
        r[i] = (pl_req_t){t, l, output};
    }
    return r;
}

static pl_sim_params_t one(const pl_inst_spec_t *inst, int n, pl_sim_mode_t mode)
{
    return (pl_sim_params_t){
        .inst = inst, .n_inst = n, .mode = mode, .slo_ttft_ms = 1e9, .slo_tpot_ms = 1e9};
}

/* One prefill instance, one prompt per batch: M/G/1. Mean TTFT = W + E[S] with the
 * Pollaczek-Khinchine W = lambda E[S^2] / (2 (1 - rho)), from the sampled service times. */
static void check_mg1(int geometric, double rho, double tol)
{
    const size_t n = 200000;
    bt_profile_t p = profile(geometric ? 0 : 10, geometric ? 0.1 : 0, 0, 1, 0, 0);
    double mean_s = 10, lambda = rho / mean_s;
    pl_req_t *r = poisson(n, lambda, 7, geometric ? 100 : 0, 64, 1);
    double es = 0, es2 = 0;
    for (size_t i = 0; i < n; i++) {
        double s = bt_profile_prefill_ms(&p, r[i].prompt, (double)r[i].prompt * r[i].prompt);
        es += s / n;
        es2 += s * s / n;
    }
    double lam = n / r[n - 1].arrival_ms, rh = lam * es;
    double want = lam * es2 / (2 * (1 - rh)) + es;
    pl_inst_spec_t inst = {.role = PL_ROLE_PREFILL, .profile = &p, .max_batch_seqs = 1};
    pl_sim_params_t sp = one(&inst, 1, PL_SIM_PREFILL_ONLY);
    pl_sim_result_t res;
    assert_int_equal(pl_sim_run(&sp, r, n, &res, NULL), BT_OK);
    assert_int_equal(res.n_finished, n);
    double err = fabs(res.ttft_mean_ms - want) / want;
    printf("M/%c/1 rho %.2f: mean TTFT %.3f ms, Pollaczek-Khinchine %.3f ms (%.2f%%)\n",
           geometric ? 'G' : 'D', rh, res.ttft_mean_ms, want, 100 * err);
    assert_true(err < tol);
    free(r);
}

static void test_sim_md1_prefill(void **state)
{
    (void)state;
    check_mg1(0, 0.5, 0.03);
    check_mg1(0, 0.8, 0.05);
}

static void test_sim_mm1_like_prefill(void **state)
{
    (void)state;
    check_mg1(1, 0.7, 0.05);
}

/* One decode sequence at a time: service (output - 1) steps of a ms, so TPOT * (output - 1) is
 * an M/D/1 sojourn time. */
static void test_sim_decode_md1(void **state)
{
    (void)state;
    const size_t n = 100000;
    const int32_t out = 11;
    bt_profile_t p = profile(1, 0, 0, 2, 0, 0);
    double s = 2.0 * (out - 1), rho = 0.6;
    pl_req_t *r = poisson(n, rho / s, 3, 0, 32, out);
    double lam = n / r[n - 1].arrival_ms, rh = lam * s;
    double want = (rh * s / (2 * (1 - rh)) + s) / (out - 1);
    pl_inst_spec_t inst = {.role = PL_ROLE_DECODE, .profile = &p, .max_batch_seqs = 1};
    pl_sim_params_t sp = one(&inst, 1, PL_SIM_DECODE_ONLY);
    pl_sim_result_t res;
    assert_int_equal(pl_sim_run(&sp, r, n, &res, NULL), BT_OK);
    printf("decode M/D/1 rho %.2f: mean TPOT %.4f ms, closed form %.4f ms\n", rh, res.tpot_mean_ms,
           want);
    assert_true(fabs(res.tpot_mean_ms - want) / want < 0.03);
    free(r);
}

/* An unbounded batch with a fixed step time: a sequence waits at most one step to join, so
 * every TPOT lies in [a, a + a / (output - 1)]. */
static void test_sim_decode_unbounded_batch(void **state)
{
    (void)state;
    const size_t n = 20000;
    bt_profile_t p = profile(1, 0, 0, 5, 0, 0);
    pl_req_t *r = poisson(n, 2.0, 5, 0, 32, 11);
    pl_sim_req_t *per = malloc(n * sizeof *per);
    pl_inst_spec_t inst = {.role = PL_ROLE_DECODE, .profile = &p};
    pl_sim_params_t sp = one(&inst, 1, PL_SIM_DECODE_ONLY);
    pl_sim_result_t res;
    assert_int_equal(pl_sim_run(&sp, r, n, &res, per), BT_OK);
    for (size_t i = 0; i < n; i++)
        assert_true(per[i].tpot_ms >= 5 - 1e-9 && per[i].tpot_ms <= 5.5 + 1e-9);
    free(per);
    free(r);
}

/* One request through P, transfer and D, with every term of the models non-zero. */
static void test_sim_single_request_disagg(void **state)
{
    (void)state;
    bt_profile_t p = profile(5, 0.1, 1e-4, 3, 0.01, 0.5);
    pl_inst_spec_t inst[2] = {{.role = PL_ROLE_PREFILL, .profile = &p},
                              {.role = PL_ROLE_DECODE, .profile = &p}};
    pl_req_t r = {10, 100, 11};
    pl_sim_params_t sp = one(inst, 2, PL_SIM_FULL);
    pl_sim_result_t res;
    pl_sim_req_t per;
    assert_int_equal(pl_sim_run(&sp, &r, 1, &res, &per), BT_OK);
    double ttft = 5 + 0.1 * 100 + 1e-4 * 1e4;
    double xfer = 0.5 + 100 * 1e5 / 1e9 * 1e3;
    double steps = 0;
    for (int k = 0; k < 10; k++) /* context 101 + k at step k */
        steps += 3 + 0.01 * (101 + k) + 0.5;
    assert_true(fabs(per.ttft_ms - ttft) < 1e-9);
    assert_true(fabs(per.tpot_ms - (xfer + steps) / 10) < 1e-9);
    assert_int_equal(per.prefill, 0);
    assert_int_equal(per.decode, 1);
    assert_int_equal(res.n_ok, 1);
}

/* One colocated instance (prefill 10 ms, decode step 2 ms) at the given speed: a request of 6
 * tokens at 0 and one of 2 at 13; checks the first's TTFT, the second's, when each finished
 * and the first's TPOT. */
static void two_colocated(const pl_speed_t *speed, double ttft0, double ttft1, double fin1,
                          double fin0, double tpot0)
{
    bt_profile_t p = profile(10, 0, 0, 2, 0, 0);
    pl_inst_spec_t inst = {.role = PL_ROLE_COLOCATED, .profile = &p, .speed = speed};
    pl_req_t r[2] = {{0, 16, 6}, {13, 16, 2}};
    pl_sim_params_t sp = one(&inst, 1, PL_SIM_FULL);
    pl_sim_result_t res;
    pl_sim_req_t per[2];
    assert_int_equal(pl_sim_run(&sp, r, 2, &res, per), BT_OK);
    assert_true(fabs(per[0].ttft_ms - ttft0) < 1e-9);
    assert_true(fabs(per[1].ttft_ms - ttft1) < 1e-9);
    assert_true(fabs(per[1].finish_ms - fin1) < 1e-9);
    assert_true(fabs(per[0].finish_ms - fin0) < 1e-9);
    assert_true(fabs(per[0].tpot_ms - tpot0) < 1e-9);
}

/* Colocated, prefill first: a prompt arriving mid-decode runs before the next step and stalls
 * the running sequence by exactly its prefill time. */
static void test_sim_colocated_prefill_first(void **state)
{
    (void)state;
    /* r0: prefill 0-10, steps 10-12, 12-14; r1 waits to 14, prefill 14-24; both step 24-26;
     * r1 is done (2 tokens), r0 steps 26-28, 28-30. */
    two_colocated(NULL, 10, 11, 26, 30, 4);
}

/* A replayed speed scales each forward by its kind's factor in the bin where it starts (the last
 * bin's past the end): the colocated case above with prefills 2x and decode steps 3x from 10 ms. */
static void test_sim_speed_replay(void **state)
{
    (void)state;
    const double pf[2] = {1, 2}, df[2] = {1, 3};
    pl_speed_t speed = {.bin_ms = 10, .n_bins = 2, .factor = {pf, df}};
    /* r0: prefill 0-10 (x1), step 10-16 (x3); r1 waits to 16, prefill 16-36 (x2); both step
     * 36-42, r1 is done; r0 steps 42-48, 48-54, 54-60. */
    two_colocated(&speed, 10, 23, 42, 60, 10);
}

/* A prompt over the token budget runs alone, in chunks: each chunk after the first adds the
 * fixed cost. */
static void test_sim_long_prompt_in_chunks(void **state)
{
    (void)state;
    bt_profile_t p = profile(10, 0.1, 1e-4, 1, 0, 0);
    pl_inst_spec_t inst = {.role = PL_ROLE_PREFILL, .profile = &p, .max_batch_tokens = 512};
    pl_req_t r = {0, 1200, 1};
    pl_sim_params_t sp = one(&inst, 1, PL_SIM_PREFILL_ONLY);
    pl_sim_result_t res;
    pl_sim_req_t per;
    assert_int_equal(pl_sim_run(&sp, &r, 1, &res, &per), BT_OK);
    assert_true(fabs(per.ttft_ms - (3 * 10 + 0.1 * 1200 + 1e-4 * 1200 * 1200)) < 1e-9);
}

/* Decode memory for one sequence only: the second waits for the first to finish, and its KV
 * is not shipped before. */
static void test_sim_decode_memory_serializes(void **state)
{
    (void)state;
    bt_profile_t p = profile(1, 0, 0, 1, 0, 0);
    p.transfer_latency_ms = 0;
    p.transfer_gb_per_s = 1e6;
    pl_inst_spec_t inst[2] = {{.role = PL_ROLE_PREFILL, .profile = &p},
                              {.role = PL_ROLE_DECODE, .profile = &p, .kv_tokens = 48}};
    pl_req_t r[2] = {{0, 16, 21}, {0, 16, 21}};
    pl_sim_params_t sp = one(inst, 2, PL_SIM_FULL);
    pl_sim_result_t res;
    pl_sim_req_t per[2];
    assert_int_equal(pl_sim_run(&sp, r, 2, &res, per), BT_OK);
    assert_int_equal(res.n_finished, 2);
    /* Both prompts in one batch (first token at 1); r0 decodes 20 steps to 21, r1 after. */
    assert_true(fabs(per[0].finish_ms - 21) < 1e-4);
    assert_true(fabs(per[1].finish_ms - 41) < 1e-4);
}

/* The router's admission (queue_timeout_ms): decode memory for two prompts (32 tokens), three
 * prompts of 16 at 0 with 21 tokens out (48 tokens of KV each), one prompt per prefill batch
 * of 1 ms, decode steps of 1 ms, transfers of a few nanoseconds. r0 and r1 are placed at once
 * (their decode instance reserves 16 tokens each); r2 waits in the router's queue. r0 prefills
 * at 0 - 1 and, alone on the decode instance, joins its batch whatever the memory; it decodes
 * 20 steps to 21. r1, prefilled at 1 - 2, waits for room for the rest of its sequence (32
 * tokens) while r0 runs. r0's end leaves 16 tokens in use (r1's prompt): room for r2's prompt
 * with no sequence running, so r2 is placed at 21 and prefills at 21 - 22; r1, alone now,
 * joins at 21 whatever the memory and finishes at 41; r2 waits for it and decodes 41 - 61.
 * With 10 ms in the queue allowed, r2 fails there. With unlimited memory the admission
 * changes nothing. */
static void test_sim_router_admission(void **state)
{
    (void)state;
    bt_profile_t p = profile(1, 0, 0, 1, 0, 0);
    p.transfer_latency_ms = 0;
    p.transfer_gb_per_s = 1e6;
    pl_inst_spec_t inst[2] = {{.role = PL_ROLE_PREFILL, .profile = &p, .max_batch_seqs = 1},
                              {.role = PL_ROLE_DECODE, .profile = &p, .kv_tokens = 32}};
    pl_req_t r[3] = {{0, 16, 21}, {0, 16, 21}, {0, 16, 21}};
    pl_sim_params_t sp = one(inst, 2, PL_SIM_FULL);
    sp.queue_timeout_ms = 1000;
    pl_sim_result_t res;
    pl_sim_req_t per[3];
    assert_int_equal(pl_sim_run(&sp, r, 3, &res, per), BT_OK);
    assert_int_equal(res.n_finished, 3);
    assert_int_equal(res.n_expired, 0);
    assert_true(fabs(per[0].finish_ms - 21) < 1e-4);
    assert_true(fabs(per[1].finish_ms - 41) < 1e-4);
    assert_true(fabs(per[2].ttft_ms - 22) < 1e-4);
    assert_true(fabs(per[2].finish_ms - 61) < 1e-4);

    /* Transfers of 5 ms (one at a time on the prefill's link): r0 ships 1 - 6 and decodes 6 -
     * 26, over its instance's memory; r1's KV ships 6 - 11 all the same (the prompt's blocks
     * were reserved at placement) and it joins at 26, finishing at 46; r2 is placed at 26,
     * prefills 26 - 27 and ships 27 - 32 while the instance is over its memory, then decodes
     * 46 - 66. */
    p.transfer_latency_ms = 5;
    assert_int_equal(pl_sim_run(&sp, r, 3, &res, per), BT_OK);
    assert_true(fabs(per[0].finish_ms - 26) < 1e-4);
    assert_true(fabs(per[1].finish_ms - 46) < 1e-4);
    assert_true(fabs(per[2].ttft_ms - 27) < 1e-4);
    assert_true(fabs(per[2].finish_ms - 66) < 1e-4);
    p.transfer_latency_ms = 0;

    sp.queue_timeout_ms = 10;
    assert_int_equal(pl_sim_run(&sp, r, 3, &res, per), BT_OK);
    assert_int_equal(res.n_finished, 2);
    assert_int_equal(res.n_expired, 1);
    assert_int_equal(res.n_ok, 2);
    assert_true(per[2].ttft_ms < 0 && per[2].finish_ms < 0);

    /* Unlimited memory: the same run, request for request, as DistServe's pull. */
    const size_t n = 2000;
    bt_profile_t q = profile(5, 0.1, 1e-4, 3, 0.01, 0.5);
    pl_inst_spec_t big[3] = {{.role = PL_ROLE_PREFILL, .profile = &q},
                             {.role = PL_ROLE_DECODE, .profile = &q},
                             {.role = PL_ROLE_DECODE, .profile = &q}};
    pl_req_t *w = poisson(n, 0.05, 3, 100, 0, 20);
    pl_sim_req_t *a = malloc(n * sizeof *a), *b = malloc(n * sizeof *b);
    pl_sim_params_t pull = one(big, 3, PL_SIM_FULL), adm = pull;
    adm.queue_timeout_ms = 1000;
    pl_sim_result_t ra, rb;
    assert_int_equal(pl_sim_run(&pull, w, n, &ra, a), BT_OK);
    assert_int_equal(pl_sim_run(&adm, w, n, &rb, b), BT_OK);
    assert_int_equal(ra.n_finished, n);
    assert_int_equal(rb.n_finished, n);
    assert_memory_equal(a, b, n * sizeof *a);
    free(w);
    free(a);
    free(b);
}

/* Round-robin alternates; least-loaded avoids the busy prefill; slo-aware sends prompts to the
 * faster instance. */
static void test_sim_policies(void **state)
{
    (void)state;
    bt_profile_t fast = profile(1, 0.01, 0, 1, 0, 0), slow = profile(50, 0.5, 0, 1, 0, 0);
    pl_inst_spec_t inst[3] = {{.role = PL_ROLE_PREFILL, .profile = &slow},
                              {.role = PL_ROLE_PREFILL, .profile = &fast},
                              {.role = PL_ROLE_DECODE, .profile = &fast}};
    pl_req_t r[4] = {{0, 100, 2}, {0, 100, 2}, {0, 100, 2}, {0, 100, 2}};
    pl_sim_params_t sp = one(inst, 3, PL_SIM_FULL);
    pl_sim_result_t res;
    pl_sim_req_t per[4];
    sp.policy = PL_POLICY_ROUND_ROBIN;
    assert_int_equal(pl_sim_run(&sp, r, 4, &res, per), BT_OK);
    assert_int_equal(per[0].prefill, 0);
    assert_int_equal(per[1].prefill, 1);
    assert_int_equal(per[2].prefill, 0);
    sp.policy = PL_POLICY_LEAST_LOADED;
    assert_int_equal(pl_sim_run(&sp, r, 4, &res, per), BT_OK);
    /* r0 starts at once on 0 (nothing queued); r1 finds 0 busy (running 1), takes 1. */
    assert_int_equal(per[0].prefill, 0);
    assert_int_equal(per[1].prefill, 1);
    sp.policy = PL_POLICY_SLO_AWARE;
    assert_int_equal(pl_sim_run(&sp, r, 4, &res, per), BT_OK);
    assert_int_equal(per[0].prefill, 1);
    assert_int_equal(per[1].prefill, 1);
    assert_int_equal(pl_policy_parse("slo-aware"), PL_POLICY_SLO_AWARE);
    assert_int_equal(pl_policy_parse("random"), -1);
    assert_string_equal(pl_policy_name(PL_POLICY_LEAST_LOADED), "least-loaded");
}

/* A mixed cluster under load, for the determinism and fault tests. */
typedef struct {
    bt_profile_t p;
    pl_inst_spec_t inst[5];
    pl_sim_params_t sp;
} cluster_t;

static void cluster_init(cluster_t *c, pl_policy_t policy)
{
    c->p = profile(8, 0.05, 1e-6, 6, 2e-4, 0.05);
    for (int i = 0; i < 5; i++)
        c->inst[i] = (pl_inst_spec_t){.role = i < 2 ? PL_ROLE_PREFILL : PL_ROLE_DECODE,
                                      .profile = &c->p,
                                      .pp = 1 + (i == 4),
                                      .kv_tokens = 40000,
                                      .max_batch_tokens = 2048,
                                      .max_batch_seqs = 32,
                                      .node = i % 2};
    c->sp = one(c->inst, 5, PL_SIM_FULL);
    c->sp.policy = policy;
    c->sp.slo_ttft_ms = 200;
    c->sp.slo_tpot_ms = 40;
    c->sp.inter_gb_per_s = 5;
}

static void test_sim_deterministic(void **state)
{
    (void)state;
    const size_t n = 5000;
    for (int pol = 0; pol < 3; pol++) {
        cluster_t c;
        cluster_init(&c, (pl_policy_t)pol);
        pl_req_t *r = poisson(n, 0.05, 11, 300, 0, 120);
        pl_sim_req_t *a = malloc(n * sizeof *a), *b = malloc(n * sizeof *b);
        pl_sim_result_t ra, rb;
        assert_int_equal(pl_sim_run(&c.sp, r, n, &ra, a), BT_OK);
        assert_int_equal(pl_sim_run(&c.sp, r, n, &rb, b), BT_OK);
        assert_memory_equal(a, b, n * sizeof *a);
        assert_true(ra.n_ok == rb.n_ok && ra.n_events == rb.n_events);
        assert_true(ra.ttft_mean_ms == rb.ttft_mean_ms && ra.tpot_p99_ms == rb.tpot_p99_ms);
        assert_int_equal(ra.n_finished, n);
        free(r);
        r = poisson(n, 0.05, 12, 300, 0, 120);
        assert_int_equal(pl_sim_run(&c.sp, r, n, &rb, b), BT_OK);
        assert_true(memcmp(a, b, n * sizeof *a) != 0);
        free(a);
        free(b);
        free(r);
    }
}

static void test_sim_stops_early(void **state)
{
    (void)state;
    cluster_t c;
    cluster_init(&c, PL_POLICY_LEAST_LOADED);
    pl_req_t *r = poisson(20000, 5.0, 1, 300, 0, 120); /* far past capacity */
    pl_sim_result_t res;
    c.sp.max_failures = 100;
    assert_int_equal(pl_sim_run(&c.sp, r, 20000, &res, NULL), BT_OK);
    assert_true(res.stopped_early);
    assert_true(res.n_finished < 20000);
    free(r);
}

static void test_sim_refuses_bad_input(void **state)
{
    (void)state;
    bt_log_level_t old = bt_log_get_level();
    bt_log_set_level(BT_LOG_OFF);
    cluster_t c;
    cluster_init(&c, PL_POLICY_ROUND_ROBIN);
    pl_req_t r[2] = {{5, 10, 10}, {4, 10, 10}};
    pl_sim_result_t res;
    assert_int_equal(pl_sim_run(&c.sp, r, 2, &res, NULL), BT_ERR_INVAL);
    r[1] = (pl_req_t){6, 0, 10};
    assert_int_equal(pl_sim_run(&c.sp, r, 2, &res, NULL), BT_ERR_INVAL);
    r[1].prompt = 10;
    c.sp.mode = PL_SIM_PREFILL_ONLY;
    c.sp.n_inst = 0;
    assert_int_equal(pl_sim_run(&c.sp, r, 2, &res, NULL), BT_ERR_INVAL);
    bt_log_set_level(old);
}

static void test_sim_allocation_failures(void **state)
{
    (void)state;
    cluster_t c;
    cluster_init(&c, PL_POLICY_SLO_AWARE);
    pl_req_t *r = poisson(300, 0.05, 2, 300, 0, 50);
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
static void test_sim_speed(void **state)
{
    (void)state;
    const size_t n = 200000;
    cluster_t c;
    cluster_init(&c, PL_POLICY_LEAST_LOADED);
    pl_req_t *r = poisson(n, 0.03, 4, 300, 0, 200);
    pl_sim_result_t res;
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    assert_int_equal(pl_sim_run(&c.sp, r, n, &res, NULL), BT_OK);
    clock_gettime(CLOCK_MONOTONIC, &b);
    double s = (double)(b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) * 1e-9;
    printf("simulator: %zu requests (%llu events, attainment %.3f) in %.3f s: %.2f M requests "
           "per minute\n",
           n, (unsigned long long)res.n_events, res.attainment, s, n / s * 60 / 1e6);
    free(r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sim_md1_prefill),
        cmocka_unit_test(test_sim_mm1_like_prefill),
        cmocka_unit_test(test_sim_decode_md1),
        cmocka_unit_test(test_sim_decode_unbounded_batch),
        cmocka_unit_test(test_sim_single_request_disagg),
        cmocka_unit_test(test_sim_colocated_prefill_first),
        cmocka_unit_test(test_sim_speed_replay),
        cmocka_unit_test(test_sim_long_prompt_in_chunks),
        cmocka_unit_test(test_sim_decode_memory_serializes),
        cmocka_unit_test(test_sim_router_admission),
        cmocka_unit_test(test_sim_policies),
        cmocka_unit_test(test_sim_deterministic),
        cmocka_unit_test(test_sim_stops_early),
        cmocka_unit_test(test_sim_refuses_bad_input),
        cmocka_unit_test(test_sim_allocation_failures),
        cmocka_unit_test(test_sim_speed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
