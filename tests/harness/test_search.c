/* SPDX-License-Identifier: MIT */
/*
 * test_search.c - the goodput search against attainment curves with a known answer: it brackets
 * from a start below or above the answer, bisects to within tolerance, never reports a failing
 * rate, and reports 0 when nothing passes.
 */
// ctest-labels: unit
#include "testutil.h"

#include <math.h>

#include "common/status.h"
#include "harness/search.h"

/* Attainment 1 up to knee req/s, then falling linearly to 0 at 2 * knee. */
static int curve(void *user, double rate, double *a)
{
    double knee = *(double *)user;
    *a = rate <= knee ? 1 : fmax(0, 1 - (rate - knee) / knee);
    return BT_OK;
}

static void run(double knee, double start, double *goodput, int *n)
{
    bb_search_params_t p = {.target = 0.9, .rate_lo = start, .iterations = 20, .rel_tol = 0.001};
    bb_point_t pts[64];
    assert_int_equal(bb_goodput_search(&p, curve, &knee, pts, 64, n, goodput), BT_OK);
    for (int i = 0; i < *n; i++) /* the answer passed when it was measured */
        if (fabs(pts[i].rate - *goodput) < 1e-12)
            assert_true(pts[i].attainment >= 0.9);
}

static void test_search_from_below_and_above(void **state)
{
    (void)state;
    double g;
    int n;
    run(10, 1, &g, &n); /* the answer: 10 * 1.1 = 11 */
    assert_true(g <= 11 && g > 11 * 0.998);
    run(10, 100, &g, &n);
    assert_true(g <= 11 && g > 11 * 0.998);
    assert_true(n < 40);
}

static void test_search_nothing_passes(void **state)
{
    (void)state;
    double knee = 1e-9, g = -1;
    int n;
    bb_search_params_t p = {.target = 0.9, .rate_lo = 1, .max_doublings = 3};
    bb_point_t pts[8];
    assert_int_equal(bb_goodput_search(&p, curve, &knee, pts, 8, &n, &g), BT_OK);
    assert_true(g == 0);
    assert_int_equal(n, 4);
}

static int failing(void *user, double rate, double *a)
{
    (void)user, (void)rate, (void)a;
    return BT_ERR_IO;
}

static void test_search_error_and_invalid(void **state)
{
    (void)state;
    double g = -1;
    int n;
    bb_point_t pts[4];
    bb_search_params_t p = {.target = 0.9, .rate_lo = 1};
    assert_int_equal(bb_goodput_search(&p, failing, NULL, pts, 4, &n, &g), BT_ERR_IO);
    p.rate_lo = 0;
    assert_int_equal(bb_goodput_search(&p, failing, NULL, pts, 4, &n, &g), BT_ERR_INVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_search_from_below_and_above),
        cmocka_unit_test(test_search_nothing_passes),
        cmocka_unit_test(test_search_error_and_invalid),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
