/* SPDX-License-Identifier: MIT */
/*
 * test_fit.c - the latency-model fits recover known coefficients from noisy synthetic timings
 * (prefill, decode with and without a batch-size knee, transfer), keep coefficients >= 0 where
 * the unconstrained optimum would go negative, and refuse bad input.
 */
// ctest-labels: unit
#include "testutil.h"

#include <math.h>
#include <stdio.h>

#include "common/status.h"
#include "planner/fit.h"
#include "planner/rng.h"

static double noisy(pl_rng_t *g, double x, double rel)
{
    return x * (1 + rel * (2 * pl_rng_uniform(g) - 1));
}

static void near(double got, double want, double rel, const char *what)
{
    if (!(fabs(got - want) <= rel * fabs(want)))
        fail_msg("%s: got %g, want %g (+-%.0f%%)", what, got, want, 100 * rel);
}

static void test_fit_prefill_recovers(void **state)
{
    (void)state;
    pl_rng_t g;
    pl_rng_seed(&g, 1);
    const double a = 5, b = 0.08, c = 2e-5;
    pl_prefill_point_t pts[64];
    int n = 0;
    for (int len = 16; len <= 2048; len *= 2)
        for (int k = 1; k <= 4; k *= 2) { /* k prompts of len tokens */
            double s = (double)k * len, s2 = (double)k * len * len;
            pts[n++] = (pl_prefill_point_t){s, s2, noisy(&g, a + b * s + c * s2, 0.01)};
        }
    bt_profile_prefill_t f;
    bt_profile_fit_t st;
    assert_int_equal(pl_fit_prefill(pts, n, PL_FIT_RELATIVE, &f, &st), BT_OK);
    near(f.a_ms, a, 0.1, "a");
    near(f.b_ms_per_token, b, 0.03, "b");
    near(f.c_ms_per_token2, c, 0.1, "c");
    assert_int_equal(st.n_points, n);
    assert_true(st.r2 > 0.999);
    assert_true(st.max_rel_err < 0.02);
}

/* Two regimes (DistServe's small and large batches): the knee and both lines come back. */
static void test_fit_decode_knee(void **state)
{
    (void)state;
    pl_rng_t g;
    pl_rng_seed(&g, 2);
    const bt_profile_decode_t lo = {10, 1e-4, 0.05}, hi = {2, 2e-4, 0.4};
    pl_decode_point_t pts[64];
    int n = 0;
    for (int bsz = 1; bsz <= 64; bsz *= 2)
        for (int ctx = 64; ctx <= 2048; ctx *= 4) {
            const bt_profile_decode_t *d = bsz < 16 ? &lo : &hi;
            double sc = (double)bsz * ctx;
            double t = d->a_ms + d->b_ms_per_ctx_token * sc + d->c_ms_per_seq * bsz;
            pts[n++] = (pl_decode_point_t){bsz, sc, noisy(&g, t, 0.005)};
        }
    bt_profile_decode_t below, above;
    bt_profile_fit_t st;
    int knee = -1;
    assert_int_equal(pl_fit_decode(pts, n, 1, PL_FIT_RELATIVE, &below, &above, &knee, &st), BT_OK);
    assert_int_equal(knee, 16);
    near(below.a_ms, lo.a_ms, 0.05, "below a");
    near(above.c_ms_per_seq, hi.c_ms_per_seq, 0.1, "above c");
    near(above.b_ms_per_ctx_token, hi.b_ms_per_ctx_token, 0.1, "above b");
    assert_true(st.max_rel_err < 0.02);
    /* Without the knee allowed one line is fitted, and it fits worse. */
    bt_profile_fit_t one;
    assert_int_equal(pl_fit_decode(pts, n, 0, PL_FIT_RELATIVE, &below, &above, &knee, &one), BT_OK);
    assert_int_equal(knee, 0);
    assert_true(one.max_rel_err > 2 * st.max_rel_err);
}

/* One regime: no knee is introduced. */
static void test_fit_decode_one_line(void **state)
{
    (void)state;
    pl_rng_t g;
    pl_rng_seed(&g, 3);
    pl_decode_point_t pts[64];
    int n = 0;
    for (int bsz = 1; bsz <= 64; bsz *= 2)
        for (int ctx = 16; ctx <= 2048; ctx *= 2)
            pts[n++] = (pl_decode_point_t){bsz, (double)bsz * ctx,
                                           noisy(&g, 4 + 3e-5 * bsz * ctx + 0.02 * bsz, 0.01)};
    bt_profile_decode_t below, above;
    bt_profile_fit_t st;
    int knee = -1;
    assert_int_equal(pl_fit_decode(pts, n, 1, PL_FIT_RELATIVE, &below, &above, &knee, &st), BT_OK);
    assert_int_equal(knee, 0);
    near(below.a_ms, 4, 0.05, "a");
    near(below.b_ms_per_ctx_token, 3e-5, 0.05, "b");
    assert_true(above.a_ms == 0 && above.c_ms_per_seq == 0);
}

/* y = x with the first point low: the unconstrained intercept is negative. The fit pins it at
 * zero and returns the best line through the origin instead. */
static void test_fit_nonnegative(void **state)
{
    (void)state;
    double x[10], y[5] = {0.5, 2, 3, 4, 5}, c[2], c1;
    for (int i = 0; i < 5; i++) {
        x[2 * i] = 1;
        x[2 * i + 1] = i + 1;
    }
    bt_profile_fit_t st;
    assert_int_equal(pl_fit_nnls(x, y, 5, 2, PL_FIT_RELATIVE, c, &st), BT_OK);
    assert_true(c[0] == 0 && c[1] > 0);
    /* The same as fitting the slope alone (column 1 only). */
    double xs[5] = {1, 2, 3, 4, 5};
    assert_int_equal(pl_fit_nnls(xs, y, 5, 1, PL_FIT_RELATIVE, &c1, NULL), BT_OK);
    assert_true(fabs(c[1] - c1) < 1e-12);
    assert_true(st.max_rel_err > 0.5); /* the low point: 1 * slope vs 0.5 */
}

/* The weightings against their closed forms on a slope through the origin, y ~ c x: relative
 * error gives c = sum(x / y) / sum(x^2 / y^2), time-weighted relative error
 * c = sum(x) / sum(x^2 / y). A short shape 10% slow and a long one exact: the relative fit
 * splits the difference, the time-weighted one follows the long shape. */
static void test_fit_weightings(void **state)
{
    (void)state;
    double x[2] = {1, 10}, y[2] = {1.1, 10}, rel, tw;
    assert_int_equal(pl_fit_nnls(x, y, 2, 1, PL_FIT_RELATIVE, &rel, NULL), BT_OK);
    assert_int_equal(pl_fit_nnls(x, y, 2, 1, PL_FIT_TIME, &tw, NULL), BT_OK);
    double want_rel = (1 / 1.1 + 10 / 10.0) / (1 / (1.1 * 1.1) + 100 / 100.0);
    double want_tw = (1 + 10) / (1 / 1.1 + 100 / 10.0);
    assert_true(fabs(rel - want_rel) < 1e-12);
    assert_true(fabs(tw - want_tw) < 1e-12);
    assert_true(fabs(tw - 1) < fabs(rel - 1));
    /* Exact data: every weighting recovers it. */
    double y2[2] = {2, 20};
    assert_int_equal(pl_fit_nnls(x, y2, 2, 1, PL_FIT_TIME, &tw, NULL), BT_OK);
    assert_true(fabs(tw - 2) < 1e-12);
}

static void test_fit_transfer(void **state)
{
    (void)state;
    pl_rng_t g;
    pl_rng_seed(&g, 4);
    pl_transfer_point_t pts[16];
    for (int i = 0; i < 16; i++) {
        double bytes = 65536.0 * (1 << i % 8) * (1 + i / 8);
        pts[i] = (pl_transfer_point_t){bytes, noisy(&g, 0.05 + bytes / 10e9 * 1e3, 0.01)};
    }
    double lat, gbps;
    bt_profile_fit_t st;
    assert_int_equal(pl_fit_transfer(pts, 16, &lat, &gbps, &st), BT_OK);
    near(lat, 0.05, 0.1, "latency");
    near(gbps, 10, 0.03, "bandwidth");
}

static void test_fit_refuses_bad_input(void **state)
{
    (void)state;
    double x[6] = {1, 1, 1, 2, 1, 3}, y[3] = {1, 2, 0}, c[2];
    assert_int_equal(pl_fit_nnls(x, y, 3, 2, PL_FIT_RELATIVE, c, NULL), BT_ERR_INVAL); /* y <= 0 */
    y[2] = 3;
    assert_int_equal(pl_fit_nnls(x, y, 1, 2, PL_FIT_RELATIVE, c, NULL), BT_ERR_INVAL); /* n < k */
    assert_int_equal(pl_fit_nnls(x, y, 3, 5, PL_FIT_RELATIVE, c, NULL), BT_ERR_INVAL);
    double zeros[6] = {0};
    assert_int_equal(pl_fit_nnls(zeros, y, 3, 2, PL_FIT_RELATIVE, c, NULL), BT_ERR_RANGE);
    assert_int_equal(pl_fit_nnls(x, y, 3, 2, PL_FIT_RELATIVE, c, NULL), BT_OK);
    assert_true(fabs(c[0]) < 1e-9 && fabs(c[1] - 1) < 1e-9); /* y = x exactly */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fit_prefill_recovers),  cmocka_unit_test(test_fit_decode_knee),
        cmocka_unit_test(test_fit_decode_one_line),   cmocka_unit_test(test_fit_nonnegative),
        cmocka_unit_test(test_fit_weightings),        cmocka_unit_test(test_fit_transfer),
        cmocka_unit_test(test_fit_refuses_bad_input),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
