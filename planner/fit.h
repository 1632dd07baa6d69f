/* SPDX-License-Identifier: MIT */
/*
 * fit.h - least-squares fits of the latency models (DistServe's): prefill batch time
 * a + b*sum(l) + c*sum(l^2), decode step time a + b*sum(ctx) + c*B (one line, or two split at
 * a batch-size knee), and transfer time latency + bytes / bandwidth.
 *
 * The fits minimize squared relative error (weighted by each shape's time, by default: see
 * pl_fit_weight_t) and keep every coefficient >= 0. Relative, because measured times span three
 * orders of magnitude (a 16-token prompt and a batch of 2048-token prompts) and the router and
 * the simulator need the small batches, which are the common ones, close as well; plain least
 * squares would fit the big ones and leave 50% errors on the small. Non-negative, because a profile
 * refuses negative coefficients (a negative per-token cost predicts negative times out of the
 * measured range), and the constrained optimum is found exactly: with at most four columns every
 * subset of active columns is solved and the best feasible one kept. Solves use Householder QR on
 * column-scaled data, in double.
 */
#ifndef BATON_PLANNER_FIT_H
#define BATON_PLANNER_FIT_H

#include "common/profile.h"

#define PL_FIT_MAX_COLS 4

/* One prefill measurement: a batch of prompts and its time. */
typedef struct {
    double sum_len;  /* sum of prompt lengths, tokens */
    double sum_len2; /* sum of squared prompt lengths */
    double ms;       /* measured batch time, > 0 */
} pl_prefill_point_t;

/* One decode-step measurement. */
typedef struct {
    double batch;   /* sequences in the step */
    double sum_ctx; /* sum of their context lengths, tokens */
    double ms;      /* measured step time, > 0 */
} pl_decode_point_t;

/* One KV-transfer measurement. */
typedef struct {
    double bytes; /* bytes moved */
    double ms;    /* measured time, > 0 */
} pl_transfer_point_t;

/* How the fits weight a point's error. PL_FIT_RELATIVE minimizes sum(((p - y) / y)^2): every
 * shape counts alike, the small as much as the big. PL_FIT_TIME minimizes sum((p - y)^2 / y),
 * each shape's squared relative error weighted by its own time: what a queue sees is time, so
 * an error of 2% on a 800 ms batch costs the simulator as much as 8% on a 50 ms one. The
 * profiler's default (measured on the 110m model: batches of 2 - 4 prompts in a serving
 * prefill daemon took 0.97 - 0.98x a relative fit's prediction and 0.99 - 1.0x a time-weighted
 * one's, single prompts 1.01 - 1.03x and 1.0 - 1.03x). */
typedef enum { PL_FIT_RELATIVE, PL_FIT_TIME } pl_fit_weight_t;

/* Generic: y ~ x . coef over n rows of k columns (row-major x), coef >= 0, minimizing the
 * weighted squared error (wt). Every y must be > 0 and n >= k. Fills coef[k] and, when st is
 * not NULL, the fit's quality (bt_profile_fit_t: points, R^2 over y, worst relative error).
 * BT_ERR_INVAL for bad sizes or y <= 0, BT_ERR_RANGE when no subset of columns has a solution
 * (all columns zero). */
int pl_fit_nnls(const double *x, const double *y, int n, int k, pl_fit_weight_t wt, double *coef,
                bt_profile_fit_t *st);

int pl_fit_prefill(const pl_prefill_point_t *pts, int n, pl_fit_weight_t wt,
                   bt_profile_prefill_t *out, bt_profile_fit_t *st);

/* Fits one line and, when allow_knee is set, every split into B < knee and B >= knee with at
 * least 4 points and 2 batch sizes on each side; the split with the smallest worst relative
 * error is used when it cuts the one-line worst error by a fifth or more and that error is over
 * 5% (one line does fit otherwise, and fewer coefficients extrapolate better). *knee is 0 when
 * one line is kept (above is then zeroed,
 * as a profile without a knee reads back). st covers all points. */
int pl_fit_decode(const pl_decode_point_t *pts, int n, int allow_knee, pl_fit_weight_t wt,
                  bt_profile_decode_t *below, bt_profile_decode_t *above, int *knee,
                  bt_profile_fit_t *st);

/* latency_ms >= 0 and gb_per_s (1e9 bytes/s), relative error; a fit with no measurable per-byte
 * cost reports 1e6 GB/s rather than infinity. */
int pl_fit_transfer(const pl_transfer_point_t *pts, int n, double *latency_ms, double *gb_per_s,
                    bt_profile_fit_t *st);

#endif
