/* SPDX-License-Identifier: MIT */
/*
 * test_policy.c - placement policies on hand-made instance records: round-robin order per
 * role, least-loaded choices, slo-aware picking the pair with the most slack on a hand-made
 * profile, the shared rules (pairs before colocated, modes, equal versions), and the registry.
 */
// ctest-labels: unit
#include "testutil.h"

#include <math.h>
#include <string.h>

#include "common/status.h"
#include "router/policy.h"

static router_instance_t mk(const char *name, Baton__Role role, uint64_t seq)
{
    router_instance_t x;
    memset(&x, 0, sizeof x);
    snprintf(x.name, sizeof x.name, "%s", name);
    x.role = role;
    x.seq = seq;
    x.alive = 1;
    x.model_ok = 1;
    x.kv_free_blocks = 100;
    x.kv_total_blocks = 100;
    x.kv_block_size = 16;
    x.version = 1;
    return x;
}

static const router_job_t job = {
    .n_prompt_tokens = 100, .max_tokens = 50, .slo_ttft_ms = 100, .slo_tpot_ms = 20};

static void place(router_policy_t *p, router_mode_t mode, router_instance_t **pre, int np,
                  router_instance_t **dec, int nd, router_instance_t **col, int nc,
                  router_placement_t *out)
{
    router_cands_t c = {pre, np, dec, nd, col, nc};
    assert_int_equal(router_policy_place(p, mode, &c, &job, out), BT_OK);
}

static void test_policy_round_robin_walks_each_role_in_order(void **state)
{
    (void)state;
    router_instance_t p0 = mk("p0", BATON__ROLE__PREFILL, 0),
                      p1 = mk("p1", BATON__ROLE__PREFILL, 3);
    router_instance_t d0 = mk("d0", BATON__ROLE__DECODE, 1), d1 = mk("d1", BATON__ROLE__DECODE, 2),
                      d2 = mk("d2", BATON__ROLE__DECODE, 4);
    router_instance_t *pre[] = {&p1, &p0}, *dec[] = {&d2, &d0, &d1}; /* list order is not seq */
    router_policy_t *p;
    assert_int_equal(router_policy_create("round-robin", NULL, &p), BT_OK);
    assert_string_equal(router_policy_name(p), "round-robin");
    const char *want_d[] = {"d0", "d1", "d2", "d0"}, *want_p[] = {"p0", "p1", "p0", "p1"};
    router_placement_t pl;
    for (int i = 0; i < 4; i++) {
        place(p, ROUTER_MODE_AUTO, pre, 2, dec, 3, NULL, 0, &pl);
        assert_string_equal(pl.decode->name, want_d[i]);
        assert_string_equal(pl.prefill->name, want_p[i]);
        assert_false(pl.colocated);
    }
    /* d1 drops out (full): the turn passes it; it comes back in its place. */
    router_instance_t *dec2[] = {&d0, &d2};
    place(p, ROUTER_MODE_AUTO, pre, 2, dec2, 2, NULL, 0, &pl);
    assert_string_equal(pl.decode->name, "d2");
    place(p, ROUTER_MODE_AUTO, pre, 2, dec, 3, NULL, 0, &pl);
    assert_string_equal(pl.decode->name, "d0");
    place(p, ROUTER_MODE_AUTO, pre, 2, dec, 3, NULL, 0, &pl);
    assert_string_equal(pl.decode->name, "d1");
    router_policy_destroy(p);
}

static void test_policy_pairs_before_colocated_and_modes(void **state)
{
    (void)state;
    router_instance_t p0 = mk("p0", BATON__ROLE__PREFILL, 0), d0 = mk("d0", BATON__ROLE__DECODE, 1),
                      c0 = mk("c0", BATON__ROLE__COLOCATED, 2);
    router_instance_t *pre[] = {&p0}, *dec[] = {&d0}, *col[] = {&c0};
    router_policy_t *p;
    assert_int_equal(router_policy_create("least-loaded", NULL, &p), BT_OK);
    router_placement_t pl;
    place(p, ROUTER_MODE_AUTO, pre, 1, dec, 1, col, 1, &pl);
    assert_ptr_equal(pl.decode, &d0);
    assert_ptr_equal(pl.prefill, &p0);
    place(p, ROUTER_MODE_COLOCATED, pre, 1, dec, 1, col, 1, &pl);
    assert_ptr_equal(pl.decode, &c0);
    assert_null(pl.prefill);
    assert_true(pl.colocated);
    place(p, ROUTER_MODE_AUTO, pre, 1, NULL, 0, col, 1, &pl); /* no decode: colocated */
    assert_ptr_equal(pl.decode, &c0);
    router_cands_t c = {pre, 1, NULL, 0, col, 1};
    assert_int_equal(router_policy_place(p, ROUTER_MODE_DISAGG, &c, &job, &pl), BT_AGAIN);
    router_cands_t none = {0};
    assert_int_equal(router_policy_place(p, ROUTER_MODE_AUTO, &none, &job, &pl), BT_AGAIN);
    assert_int_equal(router_mode_parse("disagg"), ROUTER_MODE_DISAGG);
    assert_int_equal(router_mode_parse("both"), -1);
    router_policy_destroy(p);
}

static void test_policy_least_loaded_choices(void **state)
{
    (void)state;
    router_instance_t p0 = mk("p0", BATON__ROLE__PREFILL, 0),
                      p1 = mk("p1", BATON__ROLE__PREFILL, 1);
    router_instance_t d0 = mk("d0", BATON__ROLE__DECODE, 2), d1 = mk("d1", BATON__ROLE__DECODE, 3);
    p0.queued_tokens = 5000; /* fewer requests but far more prompt tokens waiting */
    p0.queue_len = 1;
    p1.queued_tokens = 300;
    p1.queue_len = 3;
    d0.running = 8;
    d1.running = 8;
    d1.kv_free_blocks = 500; /* equal batches: more free KV wins */
    router_instance_t *pre[] = {&p0, &p1}, *dec[] = {&d0, &d1};
    router_policy_t *p;
    assert_int_equal(router_policy_create("least-loaded", NULL, &p), BT_OK);
    router_placement_t pl;
    place(p, ROUTER_MODE_AUTO, pre, 2, dec, 2, NULL, 0, &pl);
    assert_ptr_equal(pl.prefill, &p1);
    assert_ptr_equal(pl.decode, &d1);
    /* What the router sent since the last heartbeat counts: a burst spreads. */
    d1.pend_reqs = 1;
    p1.pend_tokens = 4800;
    place(p, ROUTER_MODE_AUTO, pre, 2, dec, 2, NULL, 0, &pl);
    assert_ptr_equal(pl.decode, &d0);
    assert_ptr_equal(pl.prefill, &p0); /* 300 + 4800 sent since = 5100 tokens > 5000 */
    router_policy_destroy(p);
}

static void test_policy_prefers_equal_versions(void **state)
{
    (void)state;
    router_instance_t p0 = mk("p0", BATON__ROLE__PREFILL, 0),
                      p1 = mk("p1", BATON__ROLE__PREFILL, 1);
    router_instance_t d0 = mk("d0", BATON__ROLE__DECODE, 2);
    p1.version = 2;
    d0.version = 2;
    p1.queued_tokens = 1000; /* busier, but the only prefill of the decode's version */
    router_instance_t *pre[] = {&p0, &p1}, *dec[] = {&d0};
    router_policy_t *p;
    assert_int_equal(router_policy_create("least-loaded", NULL, &p), BT_OK);
    router_placement_t pl;
    place(p, ROUTER_MODE_AUTO, pre, 2, dec, 1, NULL, 0, &pl);
    assert_ptr_equal(pl.prefill, &p1);
    router_instance_t *only_old[] = {&p0}; /* none of its version: mixed is allowed */
    place(p, ROUTER_MODE_AUTO, only_old, 1, dec, 1, NULL, 0, &pl);
    assert_ptr_equal(pl.prefill, &p0);
    router_policy_destroy(p);
}

/* prefill = 10 + 0.1 l + 0 l^2 ms; decode step = 5 + 0.001 ctx + 1 B ms; transfer = 1 ms +
 * l * 1e6 B / 1e9 B/s (1 ms per 1000 tokens). */
static bt_profile_t hand_profile(void)
{
    bt_profile_t prof;
    memset(&prof, 0, sizeof prof);
    prof.tp = 1;
    prof.prefill = (bt_profile_prefill_t){10, 0.1, 0};
    prof.decode = (bt_profile_decode_t){5, 0.001, 1};
    prof.transfer_latency_ms = 1;
    prof.transfer_gb_per_s = 1;
    prof.kv_bytes_per_token = 1e6;
    return prof;
}

static void test_policy_slo_aware_predictions(void **state)
{
    (void)state;
    bt_profile_t prof = hand_profile();
    router_instance_t p0 = mk("p0", BATON__ROLE__PREFILL, 0);
    p0.queue_len = 2;
    p0.queued_tokens = 400; /* two waiting prompts of 200: 2 x 10 + 0.1 x 400 = 60 ms */
    /* ttft = 60 + (10 + 0.1 x 100) + (1 + 100 x 1e6 / 1e9 x 1e3) = 60 + 20 + 101 */
    assert_true(fabs(router_slo_predict_ttft_ms(&prof, &p0, &job, 1) - 181.0) < 1e-9);
    assert_true(fabs(router_slo_predict_ttft_ms(&prof, &p0, &job, 0) - 80.0) < 1e-9);
    router_instance_t d0 = mk("d0", BATON__ROLE__DECODE, 1);
    d0.running = 9;
    d0.queued_tokens = 10000;
    /* B = 10, ctx = 10000 + 100 + 25: 5 + 10.125 + 10 */
    assert_true(fabs(router_slo_predict_tpot_ms(&prof, &d0, &job) - 25.125) < 1e-9);
}

static void test_policy_slo_aware_picks_most_slack(void **state)
{
    (void)state;
    bt_profile_t prof = hand_profile();
    prof.kv_bytes_per_token = 1e3; /* transfer ~1.1 ms, so queues decide */
    router_instance_t p0 = mk("p0", BATON__ROLE__PREFILL, 0),
                      p1 = mk("p1", BATON__ROLE__PREFILL, 1);
    router_instance_t d0 = mk("d0", BATON__ROLE__DECODE, 2), d1 = mk("d1", BATON__ROLE__DECODE, 3);
    p0.queue_len = 1;
    p0.queued_tokens = 900; /* 10 + 90 = 100 ms of waiting */
    p1.queue_len = 4;
    p1.queued_tokens = 40; /* 4 x 10 + 4 = 44 ms: more requests, less work */
    d0.running = 2;
    d0.queued_tokens = 20000; /* 5 + 20.125 + 3 = 28.1 ms per token */
    d1.running = 6;
    d1.queued_tokens = 600; /* 5 + 0.725 + 7 = 12.7 ms per token */
    router_instance_t *pre[] = {&p0, &p1}, *dec[] = {&d0, &d1};
    router_policy_params_t pp = {.profile = &prof};
    router_policy_t *p;
    assert_int_equal(router_policy_create("slo-aware", &pp, &p), BT_OK);
    router_placement_t pl;
    place(p, ROUTER_MODE_AUTO, pre, 2, dec, 2, NULL, 0, &pl);
    assert_ptr_equal(pl.prefill, &p1);
    assert_ptr_equal(pl.decode, &d1);
    /* ttft = 44 + 20 + 1.1 = 65.1 of 100 (slack 0.349); tpot 12.725 of 20 (slack 0.364) */
    assert_true(fabs(pl.ttft_ms - 65.1) < 1e-9);
    assert_true(fabs(pl.slack - (100 - 65.1) / 100) < 1e-9);

    /* A colocated-only cluster: the instance with the most slack. */
    router_instance_t c0 = mk("c0", BATON__ROLE__COLOCATED, 4),
                      c1 = mk("c1", BATON__ROLE__COLOCATED, 5);
    c0.running = 30;
    c1.queue_len = 3;
    c1.queued_tokens = 3000;
    router_instance_t *col[] = {&c0, &c1};
    place(p, ROUTER_MODE_AUTO, NULL, 0, NULL, 0, col, 2, &pl);
    assert_ptr_equal(pl.decode, &c0);
    assert_true(pl.colocated);
    router_policy_destroy(p);
}

static void test_policy_registry(void **state)
{
    (void)state;
    router_policy_t *p = NULL;
    assert_int_equal(router_policy_create("fastest", NULL, &p), BT_ERR_NOT_FOUND);
    assert_int_equal(router_policy_create("slo-aware", NULL, &p), BT_ERR_INVAL);
    assert_non_null(strstr(router_policy_list(), "slo-aware"));
    router_policy_destroy(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_policy_round_robin_walks_each_role_in_order),
        cmocka_unit_test(test_policy_pairs_before_colocated_and_modes),
        cmocka_unit_test(test_policy_least_loaded_choices),
        cmocka_unit_test(test_policy_prefers_equal_versions),
        cmocka_unit_test(test_policy_slo_aware_predictions),
        cmocka_unit_test(test_policy_slo_aware_picks_most_slack),
        cmocka_unit_test(test_policy_registry),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
