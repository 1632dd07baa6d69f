/* SPDX-License-Identifier: MIT */
/*
 * test_lengths.c - request lengths: synthetic fixed, uniform and lognormal draws (bounds,
 * median, seeding), clipping to a cluster's limits, and the DistServe presets on the shared
 * traces (skipped when ../shared is absent) plus a malformed trace refused with an error.
 */
// ctest-labels: unit
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/status.h"
#include "harness/lengths.h"

#define N 20000

static int cmp_i32(const void *a, const void *b)
{
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

static void test_lengths_synthetic(void **state)
{
    (void)state;
    bb_request_t *r = calloc(N, sizeof *r);
    int32_t *v = calloc(N, sizeof *v);
    assert_non_null(r);
    assert_non_null(v);
    bb_lengths_params_t p = {.kind = BB_LEN_FIXED, .input_len = 7, .output_len = 3};
    assert_int_equal(bb_lengths_make(&p, N, r), BT_OK);
    assert_true(r[0].prompt == 7 && r[N - 1].output == 3);
    p = (bb_lengths_params_t){BB_LEN_UNIFORM, 10, 1, 20, 4, .seed = 5};
    assert_int_equal(bb_lengths_make(&p, N, r), BT_OK);
    int seen_lo = 0, seen_hi = 0;
    for (int i = 0; i < N; i++) {
        assert_true(r[i].prompt >= 10 && r[i].prompt <= 20);
        assert_true(r[i].output >= 1 && r[i].output <= 4);
        seen_lo |= r[i].prompt == 10;
        seen_hi |= r[i].prompt == 20;
    }
    assert_true(seen_lo && seen_hi);
    p = (bb_lengths_params_t){BB_LEN_LOGNORMAL, 200, 50, .sigma = 0.7, .seed = 5};
    assert_int_equal(bb_lengths_make(&p, N, r), BT_OK);
    for (int i = 0; i < N; i++)
        v[i] = r[i].prompt;
    qsort(v, N, sizeof *v, cmp_i32);
    assert_true(abs(v[N / 2] - 200) < 8); /* the median is the asked length */
    p.sigma = 0;
    assert_int_equal(bb_lengths_make(&p, N, r), BT_ERR_INVAL);
    free(r);
    free(v);
}

static void test_lengths_clip(void **state)
{
    (void)state;
    bb_request_t r[3] = {{0, 100, 10}, {0, 5000, 10}, {0, 500, 600}};
    assert_int_equal(bb_lengths_clip(r, 3, 1000, 1024), 2);
    assert_true(r[0].prompt == 100 && r[0].output == 10);
    assert_true(r[1].prompt == 1000 && r[1].output == 10);
    assert_true(r[2].prompt == 500 && r[2].output == 524);
}

static void test_lengths_presets_on_shared_traces(void **state)
{
    (void)state;
    const char *names[] = {"chatbot", "code", "summarization"};
    for (int i = 0; i < 3; i++) {
        const bb_preset_t *pre = bb_preset_find(names[i]);
        assert_non_null(pre);
        assert_true(pre->slo_ttft_ms > 0 && pre->slo_tpot_ms > 0);
        char rel[512], path[1024];
        snprintf(rel, sizeof rel, "traces/%s", pre->trace);
        BT_TEST_NEED_SHARED(rel, path);
        pl_trace_t *t = NULL;
        assert_int_equal(pl_trace_load(path, &t), BT_OK);
        bb_request_t r[100];
        bb_lengths_params_t p = {.kind = BB_LEN_TRACE, .trace = t, .seed = 3};
        assert_int_equal(bb_lengths_make(&p, 100, r), BT_OK);
        for (int k = 0; k < 100; k++)
            assert_true(r[k].prompt >= 1 && r[k].output >= 1);
        pl_trace_destroy(t);
    }
    assert_null(bb_preset_find("chat"));
}

static void test_lengths_malformed_trace(void **state)
{
    (void)state;
    const char *bad = "num_prefill_tokens,num_decode_tokens\n12,x\n";
    pl_trace_t *t = NULL;
    assert_int_not_equal(pl_trace_parse(bad, strlen(bad), "bad.csv", &t), BT_OK);
    assert_null(t);
    bb_request_t r[2];
    bb_lengths_params_t p = {.kind = BB_LEN_TRACE, .trace = NULL};
    assert_int_equal(bb_lengths_make(&p, 2, r), BT_ERR_INVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lengths_synthetic),
        cmocka_unit_test(test_lengths_clip),
        cmocka_unit_test(test_lengths_presets_on_shared_traces),
        cmocka_unit_test(test_lengths_malformed_trace),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
