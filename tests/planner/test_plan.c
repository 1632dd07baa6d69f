/* SPDX-License-Identifier: MIT */
/*
 * test_plan.c - the placement search: a planted best configuration per phase is found (high
 * node-affinity), memory rules out configurations, missing tensor-parallel profiles are derived
 * by the stated rule, low node-affinity units keep each stage of a unit on one node, the
 * colocated baseline is planned, and goodput is a rate that was simulated and passed while a
 * slightly higher one did not.
 */
// ctest-labels: unit
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "common/log.h"
#include "common/status.h"
#include "planner/plan.h"
#include "planner/search.h"

static bt_profile_t prof(int tp, double pre_scale, double dec_scale)
{
    bt_profile_t p = {.tp = tp,
                      .prefill = {10 * pre_scale, 0.05 * pre_scale, 1e-6 * pre_scale},
                      .decode = {8 * dec_scale, 1e-4 * dec_scale, 0.05 * dec_scale},
                      .transfer_latency_ms = 0.1,
                      .transfer_gb_per_s = 50,
                      .kv_bytes_per_token = 819200};
    return p;
}

typedef struct {
    pl_workload_t *w;
    bt_profile_t profiles[4];
    pl_plan_params_t p;
} fixture_t;

static void fixture(fixture_t *f, int n_profiles)
{
    pl_workload_params_t wp = {.n_requests = 1500,
                               .seed = 3,
                               .lengths = PL_LEN_UNIFORM,
                               .prompt_min = 100,
                               .prompt_max = 900,
                               .output_min = 20,
                               .output_max = 200};
    assert_int_equal(pl_workload_create(&wp, &f->w), BT_OK);
    /* Planted: prefill at tp 2 runs 3x faster than tp 1 (best per GPU: 1.5x), tp 4 only 3.3x;
     * decode gains little from tp (best per GPU: tp 1). */
    f->profiles[0] = prof(1, 1, 1);
    f->profiles[1] = prof(2, 1 / 3.0, 1 / 1.2);
    f->profiles[2] = prof(4, 1 / 3.3, 1 / 1.3);
    f->profiles[3] = prof(8, 1 / 3.4, 1 / 1.35);
    f->p = (pl_plan_params_t){.profiles = f->profiles,
                              .n_profiles = n_profiles,
                              .cluster = {.nodes = 2, .gpus_per_node = 8, .gpu_mem_bytes = 80e9},
                              .w = f->w,
                              .rate = 20,
                              .slo_ttft_ms = 400,
                              .slo_tpot_ms = 60,
                              .policy = PL_POLICY_LEAST_LOADED,
                              .max_pp = 1};
    assert_int_equal(pl_shape_preset("opt-13b", &f->p.shape), BT_OK);
}

static void test_plan_high_affinity_finds_planted(void **state)
{
    (void)state;
    fixture_t f;
    fixture(&f, 4);
    pl_plan_t plan;
    f.p.rate = 300;
    assert_int_equal(pl_plan_run(PL_ALGO_HIGH_AFFINITY, &f.p, &plan), BT_OK);
    printf("high affinity: prefill tp %d x %d (%.2f req/s each), decode tp %d x %d (%.2f), "
           "%d GPUs, attainment at R %.3f, %d configs, %d sims\n",
           plan.prefill.tp, plan.n_prefill, plan.prefill.goodput, plan.decode.tp, plan.n_decode,
           plan.decode.goodput, plan.gpus, plan.at_rate.attainment, plan.n_configs, plan.n_sims);
    assert_int_equal(plan.prefill.tp, 2);
    assert_int_equal(plan.decode.tp, 1);
    assert_false(plan.prefill.derived);
    assert_true(plan.n_prefill >= (int)ceil(300 / plan.prefill.goodput));
    assert_true(plan.n_decode >= (int)ceil(300 / plan.decode.goodput));
    assert_int_equal(plan.n_prefill + plan.n_decode, (int)ceil(300 / plan.prefill.goodput) +
                                                         (int)ceil(300 / plan.decode.goodput) +
                                                         plan.added);
    assert_true(plan.n_prefill > 1 && plan.n_decode > 1);
    assert_true(plan.verified && plan.at_rate.attainment >= 0.9);
    assert_true(plan.fits);
    int gpus = 0;
    for (int i = 0; i < plan.n_slots; i++) {
        assert_true(plan.slots[i].first_gpu + plan.slots[i].n_gpus <= 8);
        gpus += plan.slots[i].n_gpus;
    }
    assert_int_equal(gpus, plan.gpus);
    assert_int_equal(plan.gpus, 2 * plan.n_prefill + plan.n_decode);
    pl_plan_fini(&plan);
    pl_workload_destroy(f.w);
}

/* The goodput of the chosen prefill passes when simulated, and 2% more does not. */
static void test_plan_goodput_is_tight(void **state)
{
    (void)state;
    fixture_t f;
    fixture(&f, 1);
    pl_inst_spec_t inst = {.role = PL_ROLE_PREFILL,
                           .profile = &f.profiles[0],
                           .kv_tokens = 100000,
                           .max_batch_tokens = 4096,
                           .max_batch_seqs = 256};
    pl_goodput_params_t g = {.w = f.w,
                             .sim = {.inst = &inst,
                                     .n_inst = 1,
                                     .mode = PL_SIM_PREFILL_ONLY,
                                     .slo_ttft_ms = 400,
                                     .slo_tpot_ms = 60},
                             .target = 0.9};
    pl_goodput_t out;
    assert_int_equal(pl_goodput(&g, &out), BT_OK);
    pl_sim_result_t res;
    assert_int_equal(pl_attainment(f.w, &g.sim, out.rate, &res), BT_OK);
    assert_true(res.attainment >= 0.9);
    assert_true(fabs(out.at.attainment - res.attainment) < 1e-12);
    assert_int_equal(pl_attainment(f.w, &g.sim, out.rate * 1.02, &res), BT_OK);
    assert_true(res.attainment < 0.9);
    printf("prefill tp1 goodput %.3f req/s after %d simulations\n", out.rate, out.n_sims);
    pl_workload_destroy(f.w);
}

/* OPT-66B (132 GB of f16 weights) fits no single 80 GB GPU: the plan starts at tp 2. With only
 * the tp 1 profile, the others are derived by the scaling rule. */
static void test_plan_memory_and_derived_profiles(void **state)
{
    (void)state;
    fixture_t f;
    fixture(&f, 1);
    assert_int_equal(pl_shape_preset("opt-66b", &f.p.shape), BT_OK);
    assert_true(pl_shape_weight_bytes(&f.p.shape) > 120e9);
    assert_int_equal(pl_shape_kv_tokens(&f.p.shape, 1, 1, 80e9, 0.9), 0);
    bt_profile_t d;
    int derived;
    assert_int_equal(pl_plan_profile_for(&f.p, 4, &d, &derived), BT_OK);
    assert_int_equal(derived, 1);
    assert_int_equal(d.tp, 4);
    double ft = PL_TP_SCALE_TOKEN / 4 + 1 - PL_TP_SCALE_TOKEN;
    double ff = PL_TP_SCALE_FIXED / 4 + 1 - PL_TP_SCALE_FIXED;
    assert_true(fabs(d.prefill.b_ms_per_token - 0.05 * ft) < 1e-12);
    assert_true(fabs(d.decode.a_ms - 8 * ff) < 1e-12);
    assert_true(strstr(d.note, "derived from the tp=1") != NULL);
    pl_plan_t plan;
    f.p.rate = 2;
    assert_int_equal(pl_plan_run(PL_ALGO_HIGH_AFFINITY, &f.p, &plan), BT_OK);
    assert_true(plan.prefill.tp >= 2 && plan.decode.tp >= 2);
    assert_true(plan.prefill.derived);
    pl_plan_fini(&plan);
    pl_workload_destroy(f.w);
}

/* Low affinity: stage k of every instance of a unit is on one node; units own whole nodes. */
static void test_plan_low_affinity_units(void **state)
{
    (void)state;
    fixture_t f;
    fixture(&f, 4);
    f.p.cluster =
        (pl_cluster_t){.nodes = 4, .gpus_per_node = 4, .gpu_mem_bytes = 80e9, .inter_gb_per_s = 3};
    f.p.max_pp = 2;
    f.p.rate = 6;
    pl_plan_t plan;
    assert_int_equal(pl_plan_run(PL_ALGO_LOW_AFFINITY, &f.p, &plan), BT_OK);
    printf("low affinity: pp %d, unit %d prefill tp %d + %d decode tp %d, %d units, %.3f "
           "req/s per unit, attainment %.3f\n",
           plan.prefill.pp, plan.unit_prefill, plan.prefill.tp, plan.unit_decode, plan.decode.tp,
           plan.n_units, plan.unit_goodput, plan.at_rate.attainment);
    assert_int_equal(plan.prefill.pp, plan.decode.pp);
    assert_true(plan.unit_prefill * plan.prefill.tp + plan.unit_decode * plan.decode.tp <= 4);
    for (int i = 0; i < plan.n_slots; i++) {
        const pl_slot_t *s = &plan.slots[i];
        int unit = s->role == PL_ROLE_PREFILL ? s->instance / plan.unit_prefill
                                              : s->instance / plan.unit_decode;
        assert_int_equal(s->node, unit * plan.prefill.pp + s->stage);
        assert_true(s->first_gpu + s->n_gpus <= 4);
    }
    pl_plan_fini(&plan);
    pl_workload_destroy(f.w);
}

static void test_plan_colocated_and_bad_params(void **state)
{
    (void)state;
    fixture_t f;
    fixture(&f, 4);
    pl_plan_t plan;
    f.p.rate = 5;
    assert_int_equal(pl_plan_run(PL_ALGO_COLOCATED, &f.p, &plan), BT_OK);
    assert_true(plan.n_colocated >= 1 && plan.n_prefill == 0);
    assert_true(plan.at_rate.attainment >= 0.9);
    pl_plan_fini(&plan);
    bt_log_level_t old = bt_log_get_level();
    bt_log_set_level(BT_LOG_OFF);
    f.p.rate = 0;
    assert_int_equal(pl_plan_run(PL_ALGO_COLOCATED, &f.p, &plan), BT_ERR_INVAL);
    f.p.rate = 5;
    f.p.cluster.gpu_mem_bytes = 1e9; /* nothing fits */
    assert_int_equal(pl_plan_run(PL_ALGO_HIGH_AFFINITY, &f.p, &plan), BT_ERR_NOT_FOUND);
    bt_log_set_level(old);
    assert_int_equal(pl_algo_parse("low-affinity"), PL_ALGO_LOW_AFFINITY);
    assert_int_equal(pl_algo_parse("medium"), -1);
    pl_workload_destroy(f.w);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plan_high_affinity_finds_planted),
        cmocka_unit_test(test_plan_goodput_is_tight),
        cmocka_unit_test(test_plan_memory_and_derived_profiles),
        cmocka_unit_test(test_plan_low_affinity_units),
        cmocka_unit_test(test_plan_colocated_and_bad_params),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
