/* SPDX-License-Identifier: MIT */
/*
 * test_metrics.c - the harness's metrics on hand-made timelines whose answers are worked out by
 * hand: TTFT, TPOT without the first token, ITL over chunk gaps, E2E, percentiles as numpy
 * computes them, joint attainment with failures counted as misses, throughput, errors by code
 * and the server-phase breakdown.
 */
// ctest-labels: unit
#include "testutil.h"

#include <math.h>

#include "common/status.h"
#include "harness/metrics.h"

static void test_percentile_matches_numpy(void **state)
{
    (void)state;
    double v[] = {4, 1, 3, 2, 5};
    assert_true(fabs(bb_percentile(v, 5, 50) - 3) < 1e-12);
    assert_true(fabs(bb_percentile(v, 5, 90) - 4.6) < 1e-12); /* numpy.percentile(.., 90) */
    assert_true(fabs(bb_percentile(v, 5, 99) - 4.96) < 1e-12);
    assert_true(fabs(bb_percentile(v, 5, 100) - 5) < 1e-12);
    assert_true(bb_percentile(v, 0, 50) == 0);
    double one[] = {7};
    assert_true(bb_percentile(one, 1, 99) == 7);
}

/* Sent at 10 ms; chunks of 1, 2, 1 tokens at 60, 80, 110 ms; result at 115 ms. */
static const bb_chunk_t chunks_a[] = {{60, 1}, {80, 2}, {110, 1}};

static void test_req_metrics_known_timeline(void **state)
{
    (void)state;
    bb_timeline_t t = {.send_ms = 10,
                       .done_ms = 115,
                       .n_prompt = 8,
                       .n_expected = 4,
                       .chunks = chunks_a,
                       .n_chunks = 3};
    bb_slo_t slo = {.slo_ttft_ms = 50, .slo_tpot_ms = 20};
    bb_req_metrics_t m;
    bb_req_metrics(&t, &slo, &m);
    assert_true(fabs(m.ttft_ms - 50) < 1e-9);
    assert_true(fabs(m.tpot_ms - 50.0 / 3) < 1e-9); /* (110 - 60) / (4 - 1) */
    assert_true(fabs(m.e2e_ms - 105) < 1e-9);
    assert_int_equal(m.n_output, 4);
    assert_true(m.ok && m.slo_ok);
    slo.slo_ttft_ms = 49.9;
    bb_req_metrics(&t, &slo, &m);
    assert_false(m.slo_ok);
    slo = (bb_slo_t){.slo_ttft_ms = 50, .slo_tpot_ms = 16};
    bb_req_metrics(&t, &slo, &m);
    assert_false(m.slo_ok);
}

static void test_req_metrics_single_token_and_failure(void **state)
{
    (void)state;
    static const bb_chunk_t one[] = {{30, 1}};
    bb_timeline_t t = {.send_ms = 0, .done_ms = 31, .chunks = one, .n_chunks = 1};
    bb_slo_t slo = {.slo_ttft_ms = 100, .slo_tpot_ms = 1};
    bb_req_metrics_t m;
    bb_req_metrics(&t, &slo, &m);
    assert_true(m.tpot_ms < 0); /* no TPOT for one token, and nothing to miss */
    assert_true(m.slo_ok);
    bb_timeline_t f = {.send_ms = 0, .done_ms = 5, .status = BT_ERR_OVERLOADED};
    bb_req_metrics(&f, &slo, &m);
    assert_false(m.ok);
    assert_false(m.slo_ok);
    assert_true(m.ttft_ms < 0);
}

static void test_summary_known_run(void **state)
{
    (void)state;
    static const bb_chunk_t cb[] = {{120, 1}, {140, 1}};
    bb_timeline_t t[3] = {
        {.send_ms = 10,
         .done_ms = 115,
         .n_prompt = 8,
         .chunks = chunks_a,
         .n_chunks = 3,
         .phases = {1, 2, 3, 4, 5}},
        {.send_ms = 100,
         .done_ms = 1010,
         .n_prompt = 2,
         .chunks = cb,
         .n_chunks = 2,
         .phases = {3, 4, -1, 6, 7}},
        {.send_ms = 200,
         .done_ms = 201,
         .status = BT_ERR_OVERLOADED,
         .phases = {-1, -1, -1, -1, -1}},
    };
    bb_slo_t slo = {.slo_ttft_ms = 40, .slo_tpot_ms = 100};
    bb_summary_t s;
    assert_int_equal(bb_summarize(t, 3, &slo, &s), BT_OK);
    assert_int_equal(s.completed, 2);
    assert_int_equal(s.failed, 1);
    assert_int_equal(s.total_input_tokens, 10);
    assert_int_equal(s.total_output_tokens, 6);
    assert_true(fabs(s.duration_s - 1.0) < 1e-12); /* 10 ms to 1010 ms */
    assert_true(fabs(s.request_throughput - 2) < 1e-9);
    assert_true(fabs(s.output_throughput - 6) < 1e-9);
    assert_true(fabs(s.ttft.mean - 35) < 1e-9); /* 50 and 20 */
    assert_true(fabs(s.ttft.median - 35) < 1e-9);
    assert_true(fabs(s.tpot.mean - (50.0 / 3 + 20) / 2) < 1e-9);
    /* ITL: gaps 20, 30 of the first request and 20 of the second. */
    assert_int_equal(s.itl.n, 3);
    assert_true(fabs(s.itl.mean - 70.0 / 3) < 1e-9);
    assert_true(fabs(s.itl.median - 20) < 1e-9);
    assert_true(fabs(s.e2el.max - 910) < 1e-9);
    /* Only the second meets TTFT <= 40; the failure is a miss. */
    assert_true(fabs(s.slo_attainment - 1.0 / 3) < 1e-12);
    assert_true(fabs(s.ttft_attainment - 1.0 / 3) < 1e-12);
    assert_true(fabs(s.tpot_attainment - 2.0 / 3) < 1e-12);
    assert_int_equal(s.n_error_codes, 1);
    assert_int_equal(s.error_codes[0], BT_ERR_OVERLOADED);
    assert_int_equal(s.error_counts[0], 1);
    assert_int_equal(s.transfer.n, 1);
    assert_true(fabs(s.prefill_queue.mean - 2) < 1e-12);
    assert_true(fabs(s.decode.mean - 6) < 1e-12);
    /* Scaling the objectives by 2 lets the first request's TTFT of 50 pass. */
    assert_true(fabs(bb_attainment(t, 3, &slo, 2.0) - 2.0 / 3) < 1e-12);
    assert_true(fabs(bb_attainment(t, 3, &slo, 1.0) - 1.0 / 3) < 1e-12);
}

static void test_summary_empty(void **state)
{
    (void)state;
    bb_slo_t slo = {0};
    bb_summary_t s;
    assert_int_equal(bb_summarize(NULL, 0, &slo, &s), BT_OK);
    assert_int_equal(s.completed, 0);
    assert_true(s.request_throughput == 0 && s.slo_attainment == 0);
}

static void test_phases_from_events(void **state)
{
    (void)state;
    /* ISSUED, PREFILL_QUEUED, PREFILL_BEGIN, PREFILL_END, TRANSFER_BEGIN, TRANSFER_END,
     * DECODE_QUEUED, DECODE_BEGIN, FINISHED at 1 ms steps from 1000 ms, with a repeated
     * PREFILL_QUEUED (a failover) that must not count. */
    int kinds[] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 2};
    uint64_t ns[10];
    for (int i = 0; i < 10; i++)
        ns[i] = 1000000000ull + (uint64_t)i * 1000000ull * (uint64_t)(i + 1);
    bb_phases_t p;
    bb_phases_from_events(kinds, ns, 10, &p);
    assert_true(fabs(p.prefill_queue_ms - (6 - 2)) < 1e-6);  /* 3*2 - 2*1 */
    assert_true(fabs(p.prefill_ms - (12 - 6)) < 1e-6);       /* 4*3 - 3*2 */
    assert_true(fabs(p.transfer_ms - (30 - 20)) < 1e-6);     /* 6*5 - 5*4 */
    assert_true(fabs(p.decode_queue_ms - (56 - 42)) < 1e-6); /* 8*7 - 7*6 */
    assert_true(fabs(p.decode_ms - (72 - 56)) < 1e-6);       /* 9*8 - 8*7 */
    int colo[] = {2, 3, 4, 8, 9};
    bb_phases_from_events(colo, ns, 5, &p);
    assert_true(p.transfer_ms < 0 && p.decode_queue_ms < 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_percentile_matches_numpy),
        cmocka_unit_test(test_req_metrics_known_timeline),
        cmocka_unit_test(test_req_metrics_single_token_and_failure),
        cmocka_unit_test(test_summary_known_run),
        cmocka_unit_test(test_summary_empty),
        cmocka_unit_test(test_phases_from_events),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
