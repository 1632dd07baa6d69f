/* SPDX-License-Identifier: MIT */
/*
 * test_arrival.c - the arrival generators over many samples: the measured rate and coefficient
 * of variation of the gaps within tolerance of what was asked, constant gaps exact, the same
 * seed giving the same times, and trace times scaled.
 */
// ctest-labels: unit
#include "testutil.h"

#include <math.h>
#include <stdlib.h>

#include "common/status.h"
#include "harness/arrival.h"

#define N 200000

/* Mean and coefficient of variation of the gaps of n times. */
static void gap_stats(const double *t, size_t n, double *mean, double *cv)
{
    double s = 0, sq = 0;
    for (size_t i = 1; i < n; i++)
        s += t[i] - t[i - 1];
    *mean = s / (double)(n - 1);
    for (size_t i = 1; i < n; i++) {
        double d = t[i] - t[i - 1] - *mean;
        sq += d * d;
    }
    *cv = sqrt(sq / (double)(n - 1)) / *mean;
}

static void check(bb_arrival_t kind, double cv_asked, double rate, double cv_expect)
{
    double *u = malloc(N * sizeof *u), *ms = malloc(N * sizeof *ms);
    assert_non_null(u);
    assert_non_null(ms);
    assert_int_equal(bb_arrival_unit(kind, cv_asked, N, 42, u), BT_OK);
    assert_true(u[0] == 0);
    bb_arrival_at_rate(u, N, rate, ms);
    double mean, cv;
    gap_stats(ms, N, &mean, &cv);
    double rate_seen = 1e3 / mean;
    assert_true(fabs(rate_seen - rate) / rate < 0.02);
    assert_true(fabs(cv - cv_expect) < 0.03 * fmax(cv_expect, 1));
    free(u);
    free(ms);
}

static void test_arrival_poisson_rate_and_cv(void **state)
{
    (void)state;
    check(BB_ARRIVAL_POISSON, 0, 7.5, 1.0);
}

static void test_arrival_gamma_rate_and_cv(void **state)
{
    (void)state;
    check(BB_ARRIVAL_GAMMA, 0.5, 3, 0.5);
    check(BB_ARRIVAL_GAMMA, 2.0, 20, 2.0);
    check(BB_ARRIVAL_GAMMA, 1.0, 1, 1.0);
}

static void test_arrival_constant_exact(void **state)
{
    (void)state;
    double u[5], ms[5];
    assert_int_equal(bb_arrival_unit(BB_ARRIVAL_CONSTANT, 0, 5, 1, u), BT_OK);
    bb_arrival_at_rate(u, 5, 4, ms);
    for (int i = 0; i < 5; i++)
        assert_true(fabs(ms[i] - 250.0 * i) < 1e-9);
}

static void test_arrival_seeded_and_invalid(void **state)
{
    (void)state;
    double a[100], b[100], c[100];
    assert_int_equal(bb_arrival_unit(BB_ARRIVAL_GAMMA, 3, 100, 9, a), BT_OK);
    assert_int_equal(bb_arrival_unit(BB_ARRIVAL_GAMMA, 3, 100, 9, b), BT_OK);
    assert_int_equal(bb_arrival_unit(BB_ARRIVAL_GAMMA, 3, 100, 10, c), BT_OK);
    assert_memory_equal(a, b, sizeof a);
    assert_memory_not_equal(a, c, sizeof a);
    assert_int_equal(bb_arrival_unit(BB_ARRIVAL_GAMMA, 0, 100, 9, a), BT_ERR_INVAL);
    assert_int_equal(bb_arrival_unit(BB_ARRIVAL_TRACE, 1, 100, 9, a), BT_ERR_INVAL);
    assert_int_equal(bb_arrival_parse("constant"), BB_ARRIVAL_CONSTANT);
    assert_int_equal(bb_arrival_parse("bursty"), -1);
    assert_int_equal(bb_arrival_parse(NULL), -1);
}

static void test_arrival_trace_scaled(void **state)
{
    (void)state;
    double tr[] = {500, 700, 1500}, ms[3];
    bb_arrival_trace(tr, 3, 0.5, ms);
    assert_true(ms[0] == 0 && fabs(ms[1] - 100) < 1e-9 && fabs(ms[2] - 500) < 1e-9);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_arrival_poisson_rate_and_cv),
        cmocka_unit_test(test_arrival_gamma_rate_and_cv),
        cmocka_unit_test(test_arrival_constant_exact),
        cmocka_unit_test(test_arrival_seeded_and_invalid),
        cmocka_unit_test(test_arrival_trace_scaled),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
