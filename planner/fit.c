/* SPDX-License-Identifier: MIT */
/*
 * fit.c - weighted non-negative least squares and the three latency-model fits (fit.h).
 *
 * Weighting each row by 1/y turns "minimize relative error" into an ordinary least-squares
 * problem (by 1/sqrt(y): relative error weighted by the time). Columns are scaled to unit norm
 * before the QR so that sum(l^2), which reaches 1e7 while the constant column is 1, does not swamp
 * the others; a column whose scaled pivot vanishes makes that subset rank-deficient and it is
 * skipped.
 */
#include "fit.h"

#include <math.h>
#include <string.h>

#include "common/alloc.h"
#include "common/status.h"

/* Householder QR of the n x m matrix in the first m columns of a (n rows of m + 1, the last
 * column the right-hand side, which each reflection is applied to as well), then back
 * substitution into b[m]. Returns 0, or -1 when the columns are rank-deficient. */
static int qr_solve(double *a, int n, int m, double *b)
{
    const int w = m + 1;
    for (int j = 0; j < m; j++) {
        double norm = 0;
        for (int i = j; i < n; i++)
            norm += a[i * w + j] * a[i * w + j];
        norm = sqrt(norm);
        if (norm < 1e-12)
            return -1;
        double alpha = a[j * w + j] > 0 ? -norm : norm;
        double v0 = a[j * w + j] - alpha, vnorm2 = v0 * v0;
        for (int i = j + 1; i < n; i++)
            vnorm2 += a[i * w + j] * a[i * w + j];
        for (int col = j + 1; col < w; col++) {
            double dot = v0 * a[j * w + col];
            for (int i = j + 1; i < n; i++)
                dot += a[i * w + j] * a[i * w + col];
            double f = 2 * dot / vnorm2;
            a[j * w + col] -= f * v0;
            for (int i = j + 1; i < n; i++)
                a[i * w + col] -= f * a[i * w + j];
        }
        a[j * w + j] = alpha;
    }
    for (int j = m - 1; j >= 0; j--) {
        double s = a[j * w + m];
        for (int l = j + 1; l < m; l++)
            s -= a[j * w + l] * b[l];
        b[j] = s / a[j * w + j];
    }
    return 0;
}

/* The factor a row's error is weighted by (its square weights the squared error): 1/y for
 * relative error, 1/sqrt(y) for relative error weighted by the time itself. */
static double row_weight(double y, pl_fit_weight_t w)
{
    return w == PL_FIT_TIME ? 1 / sqrt(y) : 1 / y;
}

/* Solves min |W (A c - y)| for the columns of x listed in cols (m of them), W the rows'
 * weights; writes c[m]. Returns 0, or -1 when the columns are rank-deficient. a is scratch of
 * n * (m + 1) doubles. Columns are scaled to unit norm first, and the solution unscaled. */
static int lsq_subset(const double *x, const double *y, int n, int k, pl_fit_weight_t wt,
                      const int *cols, int m, double *a, double *c)
{
    double b[PL_FIT_MAX_COLS], scale[PL_FIT_MAX_COLS];
    const int w = m + 1;
    for (int j = 0; j < m; j++) {
        double s = 0;
        for (int i = 0; i < n; i++) {
            a[i * w + j] = x[i * k + cols[j]] * row_weight(y[i], wt);
            s += a[i * w + j] * a[i * w + j];
        }
        scale[j] = s > 0 ? 1 / sqrt(s) : 0;
        for (int i = 0; i < n; i++)
            a[i * w + j] *= scale[j];
    }
    for (int i = 0; i < n; i++)
        a[i * w + m] = y[i] * row_weight(y[i], wt);
    if (qr_solve(a, n, m, b) != 0)
        return -1;
    for (int j = 0; j < m; j++)
        c[j] = b[j] * scale[j];
    return 0;
}

static double weighted_sse(const double *x, const double *y, int n, int k, pl_fit_weight_t wt,
                           const double *coef)
{
    double s = 0;
    for (int i = 0; i < n; i++) {
        double p = 0;
        for (int j = 0; j < k; j++)
            p += x[i * k + j] * coef[j];
        double e = (p - y[i]) * row_weight(y[i], wt);
        s += e * e;
    }
    return s;
}

static void fit_stats(const double *x, const double *y, int n, int k, const double *coef,
                      bt_profile_fit_t *st)
{
    double mean = 0, sst = 0, sse = 0, worst = 0;
    for (int i = 0; i < n; i++)
        mean += y[i] / n;
    for (int i = 0; i < n; i++) {
        double p = 0;
        for (int j = 0; j < k; j++)
            p += x[i * k + j] * coef[j];
        sse += (p - y[i]) * (p - y[i]);
        sst += (y[i] - mean) * (y[i] - mean);
        worst = fmax(worst, fabs(p - y[i]) / y[i]);
    }
    st->n_points = n;
    st->r2 = sst > 0 ? 1 - sse / sst : (sse == 0 ? 1 : 0);
    st->max_rel_err = worst;
}

int pl_fit_nnls(const double *x, const double *y, int n, int k, pl_fit_weight_t wt, double *coef,
                bt_profile_fit_t *st)
{
    if (k < 1 || k > PL_FIT_MAX_COLS || n < k)
        return BT_ERR_INVAL;
    for (int i = 0; i < n; i++)
        if (!(y[i] > 0) || !isfinite(y[i]))
            return BT_ERR_INVAL;
    double *a = bt_malloc((size_t)n * (k + 1) * sizeof *a);
    if (!a)
        return BT_ERR_NOMEM;
    double best[PL_FIT_MAX_COLS] = {0}, best_sse = INFINITY;
    /* Every non-empty subset of columns; the unconstrained optimum on the best feasible subset
     * is the constrained optimum (the NNLS solution is the LS solution on its passive set). */
    for (unsigned mask = 1; mask < (1u << k); mask++) {
        int cols[PL_FIT_MAX_COLS], m = 0;
        double c[PL_FIT_MAX_COLS], full[PL_FIT_MAX_COLS] = {0};
        for (int j = 0; j < k; j++)
            if (mask & (1u << j))
                cols[m++] = j;
        if (lsq_subset(x, y, n, k, wt, cols, m, a, c) != 0)
            continue;
        int feasible = 1;
        for (int j = 0; j < m; j++) {
            feasible &= c[j] >= 0 && isfinite(c[j]);
            full[cols[j]] = c[j];
        }
        double sse = feasible ? weighted_sse(x, y, n, k, wt, full) : INFINITY;
        if (sse < best_sse) {
            best_sse = sse;
            memcpy(best, full, sizeof best);
        }
    }
    bt_free(a);
    if (!isfinite(best_sse))
        return BT_ERR_RANGE;
    memcpy(coef, best, (size_t)k * sizeof *coef);
    if (st)
        fit_stats(x, y, n, k, coef, st);
    return BT_OK;
}

/* Rows [1, u, v] and times from three parallel arrays, the shape every model here has. */
static int fit3(int n, const double *u, const double *v, const double *ms, pl_fit_weight_t wt,
                double *coef, bt_profile_fit_t *st)
{
    if (n < 3)
        return BT_ERR_INVAL;
    double *x = bt_malloc((size_t)n * 3 * sizeof *x);
    if (!x)
        return BT_ERR_NOMEM;
    for (int i = 0; i < n; i++) {
        x[i * 3] = 1;
        x[i * 3 + 1] = u[i];
        x[i * 3 + 2] = v[i];
    }
    int rc = pl_fit_nnls(x, ms, n, 3, wt, coef, st);
    bt_free(x);
    return rc;
}

int pl_fit_prefill(const pl_prefill_point_t *pts, int n, pl_fit_weight_t wt,
                   bt_profile_prefill_t *out, bt_profile_fit_t *st)
{
    double *c = bt_malloc((size_t)n * 3 * sizeof *c + 1), coef[3];
    if (!c)
        return BT_ERR_NOMEM;
    for (int i = 0; i < n; i++) {
        c[i] = pts[i].sum_len;
        c[n + i] = pts[i].sum_len2;
        c[2 * n + i] = pts[i].ms;
    }
    int rc = fit3(n, c, c + n, c + 2 * n, wt, coef, st);
    bt_free(c);
    if (rc == BT_OK)
        *out = (bt_profile_prefill_t){coef[0], coef[1], coef[2]};
    return rc;
}

int pl_fit_transfer(const pl_transfer_point_t *pts, int n, double *latency_ms, double *gb_per_s,
                    bt_profile_fit_t *st)
{
    if (n < 2)
        return BT_ERR_INVAL;
    double *x = bt_malloc((size_t)n * 3 * sizeof *x), coef[2];
    if (!x)
        return BT_ERR_NOMEM;
    double *y = x + 2 * n;
    for (int i = 0; i < n; i++) {
        x[i * 2] = 1;
        x[i * 2 + 1] = pts[i].bytes;
        y[i] = pts[i].ms;
    }
    int rc = pl_fit_nnls(x, y, n, 2, PL_FIT_RELATIVE, coef, st);
    bt_free(x);
    if (rc != BT_OK)
        return rc;
    *latency_ms = coef[0];
    /* coef[1] is ms per byte: bytes per second = 1e3 / coef[1]. */
    *gb_per_s = coef[1] > 1e-15 ? 1e3 / coef[1] / 1e9 : 1e6;
    return BT_OK;
}

/* --- decode, with an optional knee ---------------------------------------------------------- */

/* Fits the points with lo <= batch < hi; BT_ERR_INVAL when fewer than 4 points or fewer than 2
 * batch sizes fall there (a line through one batch size cannot separate b from c). */
static int fit_decode_range(const pl_decode_point_t *pts, int n, double lo, double hi,
                            pl_fit_weight_t wt, bt_profile_decode_t *out)
{
    double *c = bt_malloc((size_t)n * 3 * sizeof *c + 1), coef[3];
    if (!c)
        return BT_ERR_NOMEM;
    int m = 0, sizes = 0;
    double first_b = -1;
    for (int i = 0; i < n; i++) {
        if (pts[i].batch < lo || pts[i].batch >= hi)
            continue;
        c[m] = pts[i].sum_ctx;
        c[n + m] = pts[i].batch;
        c[2 * n + m] = pts[i].ms;
        if (m == 0)
            first_b = pts[i].batch;
        sizes += pts[i].batch != first_b && sizes == 0;
        m++;
    }
    int rc = m >= 4 && sizes > 0 ? fit3(m, c, c + n, c + 2 * n, wt, coef, NULL) : BT_ERR_INVAL;
    bt_free(c);
    if (rc == BT_OK)
        *out = (bt_profile_decode_t){coef[0], coef[1], coef[2]};
    return rc;
}

/* Quality of a (below, knee, above) model over all points, through the profile's own
 * evaluator so that what is reported is what the readers will compute. */
static void decode_stats(const pl_decode_point_t *pts, int n, const bt_profile_decode_t *below,
                         const bt_profile_decode_t *above, int knee, bt_profile_fit_t *st)
{
    bt_profile_t p = {.decode = *below, .decode_above = *above, .decode_knee_batch = knee};
    double mean = 0, sst = 0, sse = 0, worst = 0;
    for (int i = 0; i < n; i++)
        mean += pts[i].ms / n;
    for (int i = 0; i < n; i++) {
        double e = bt_profile_decode_ms(&p, pts[i].sum_ctx, pts[i].batch) - pts[i].ms;
        sse += e * e;
        sst += (pts[i].ms - mean) * (pts[i].ms - mean);
        worst = fmax(worst, fabs(e) / pts[i].ms);
    }
    *st =
        (bt_profile_fit_t){.n_points = n, .r2 = sst > 0 ? 1 - sse / sst : 1, .max_rel_err = worst};
}

int pl_fit_decode(const pl_decode_point_t *pts, int n, int allow_knee, pl_fit_weight_t wt,
                  bt_profile_decode_t *below, bt_profile_decode_t *above, int *knee,
                  bt_profile_fit_t *st)
{
    for (int i = 0; i < n; i++)
        if (!(pts[i].ms > 0) || !(pts[i].batch >= 1))
            return BT_ERR_INVAL;
    bt_profile_decode_t one, best_lo = {0}, best_hi = {0};
    int rc = fit_decode_range(pts, n, 0, INFINITY, wt, &one);
    if (rc != BT_OK)
        return rc;
    bt_profile_fit_t one_st, best_st = {0};
    decode_stats(pts, n, &one, &one, 0, &one_st);
    int best_knee = 0;
    for (int i = 0; allow_knee && i < n; i++) {
        int k = (int)pts[i].batch, seen = 0;
        for (int j = 0; j < i && !seen; j++)
            seen = (int)pts[j].batch == k;
        bt_profile_decode_t lo, hi;
        bt_profile_fit_t s;
        if (seen || k < 2 || fit_decode_range(pts, n, 0, k, wt, &lo) != BT_OK ||
            fit_decode_range(pts, n, k, INFINITY, wt, &hi) != BT_OK)
            continue;
        decode_stats(pts, n, &lo, &hi, k, &s);
        if (!best_knee || s.max_rel_err < best_st.max_rel_err ||
            (s.max_rel_err == best_st.max_rel_err && k < best_knee)) {
            best_knee = k;
            best_st = s;
            best_lo = lo;
            best_hi = hi;
        }
    }
    if (best_knee && one_st.max_rel_err > 0.05 && best_st.max_rel_err <= 0.8 * one_st.max_rel_err) {
        *below = best_lo;
        *above = best_hi;
        *knee = best_knee;
        if (st)
            *st = best_st;
        return BT_OK;
    }
    *below = one;
    *above = (bt_profile_decode_t){0}; /* as a profile without decode_knee reads back */
    *knee = 0;
    if (st)
        *st = one_st;
    return BT_OK;
}
