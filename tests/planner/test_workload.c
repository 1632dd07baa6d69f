/* SPDX-License-Identifier: MIT */
/*
 * test_workload.c - workloads: Poisson and gamma arrivals have the asked rate and burstiness,
 * placing one workload at another rate only rescales its arrivals (same requests), trace
 * arrivals keep the trace's pattern at the asked mean rate, and draws depend only on the seed.
 */
// ctest-labels: unit
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/status.h"
#include "planner/workload.h"

/* Mean rate (per s) and coefficient of variation of the gaps. */
static void gap_stats(const pl_req_t *r, size_t n, double *rate, double *cv)
{
    double m = r[n - 1].arrival_ms / (double)(n - 1), v = 0;
    for (size_t i = 1; i < n; i++) {
        double g = r[i].arrival_ms - r[i - 1].arrival_ms - m;
        v += g * g / (double)(n - 1);
    }
    *rate = 1e3 / m;
    *cv = sqrt(v) / m;
}

static void test_workload_poisson_and_gamma(void **state)
{
    (void)state;
    const size_t n = 100000;
    pl_req_t *r = malloc(n * sizeof *r);
    double rate, cv;
    for (int gamma = 0; gamma < 2; gamma++) {
        pl_workload_params_t p = {.n_requests = n,
                                  .seed = 9,
                                  .arrival = gamma ? PL_ARRIVAL_GAMMA : PL_ARRIVAL_POISSON,
                                  .cv = 3,
                                  .lengths = PL_LEN_UNIFORM,
                                  .prompt_min = 10,
                                  .prompt_max = 20,
                                  .output_min = 1,
                                  .output_max = 3};
        pl_workload_t *w;
        assert_int_equal(pl_workload_create(&p, &w), BT_OK);
        pl_workload_at_rate(w, 50, r);
        gap_stats(r, n, &rate, &cv);
        assert_true(fabs(rate - 50) < 0.5);
        assert_true(fabs(cv - (gamma ? 3 : 1)) < (gamma ? 0.15 : 0.02));
        for (size_t i = 0; i < n; i++)
            assert_true(r[i].prompt >= 10 && r[i].prompt <= 20 && r[i].output <= 3);
        pl_workload_destroy(w);
    }
    free(r);
}

static void test_workload_rate_rescales_only(void **state)
{
    (void)state;
    pl_workload_params_t p = {.n_requests = 1000,
                              .seed = 5,
                              .lengths = PL_LEN_UNIFORM,
                              .prompt_min = 1,
                              .prompt_max = 1000,
                              .output_min = 1,
                              .output_max = 100};
    pl_workload_t *w, *w2;
    assert_int_equal(pl_workload_create(&p, &w), BT_OK);
    assert_int_equal(pl_workload_create(&p, &w2), BT_OK);
    pl_req_t a[1000], b[1000];
    pl_workload_at_rate(w, 10, a);
    pl_workload_at_rate(w2, 10, b);
    assert_memory_equal(a, b, sizeof a); /* same seed, same draws */
    pl_workload_at_rate(w, 40, b);
    for (int i = 0; i < 1000; i++) {
        assert_int_equal(a[i].prompt, b[i].prompt);
        assert_true(fabs(a[i].arrival_ms - 4 * b[i].arrival_ms) < 1e-9 * (1 + a[i].arrival_ms));
    }
    pl_workload_destroy(w2);
    /* Another arrival process leaves the lengths as they were. */
    p.arrival = PL_ARRIVAL_GAMMA;
    p.cv = 2;
    assert_int_equal(pl_workload_create(&p, &w2), BT_OK);
    pl_workload_at_rate(w2, 10, b);
    for (int i = 0; i < 1000; i++)
        assert_int_equal(a[i].output, b[i].output);
    double mp, mo;
    int32_t mx;
    pl_workload_lengths(w, &mp, &mo, &mx);
    assert_true(mp > 400 && mp < 600 && mx <= 1100);
    pl_workload_destroy(w);
    pl_workload_destroy(w2);
}

static void test_workload_trace_arrivals(void **state)
{
    (void)state;
    const char *text = "timestamp_ms,input_length,output_length\n0,5,1\n100,6,2\n400,7,3\n";
    pl_trace_t *t;
    assert_int_equal(pl_trace_parse(text, strlen(text), "t", &t), BT_OK);
    pl_workload_params_t p = {
        .n_requests = 5, .arrival = PL_ARRIVAL_TRACE, .lengths = PL_LEN_TRACE, .trace = t};
    pl_workload_t *w;
    assert_int_equal(pl_workload_create(&p, &w), BT_OK);
    pl_req_t r[5];
    pl_workload_at_rate(w, 0, r); /* as recorded, repeated after one mean gap (200 ms) */
    assert_true(r[1].arrival_ms == 100 && r[2].arrival_ms == 400 && r[3].arrival_ms == 600);
    assert_int_equal(r[3].prompt, 5);
    pl_workload_at_rate(w, 10, r); /* mean gap 100 ms: everything twice as fast */
    assert_true(fabs(r[2].arrival_ms - 200) < 1e-9 && fabs(r[4].arrival_ms - 350) < 1e-9);
    pl_workload_destroy(w);
    bt_log_level_t old = bt_log_get_level();
    bt_log_set_level(BT_LOG_OFF);
    p.trace = NULL;
    assert_int_equal(pl_workload_create(&p, &w), BT_ERR_INVAL);
    p = (pl_workload_params_t){.n_requests = 1, .lengths = PL_LEN_FIXED};
    assert_int_equal(pl_workload_create(&p, &w), BT_ERR_INVAL); /* lengths 0 */
    bt_log_set_level(old);
    pl_trace_destroy(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_workload_poisson_and_gamma),
        cmocka_unit_test(test_workload_rate_rescales_only),
        cmocka_unit_test(test_workload_trace_arrivals),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
