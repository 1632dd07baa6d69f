/* SPDX-License-Identifier: MIT */
/*
 * search.h - goodput search: the largest request rate at which at least a target fraction of
 * requests meet both objectives, by bracketing then bisection on rate.
 *
 * The measurement is a callback (a real run against a cluster in baton-bench, a formula in the
 * tests). Attainment is assumed to fall with rate; with the same requests at every rate
 * (arrival.h) it nearly does, and the search keeps the best passing rate it saw, so a noisy
 * point can cost precision but never reports a rate that failed.
 */
#ifndef BATON_HARNESS_SEARCH_H
#define BATON_HARNESS_SEARCH_H

#include "report.h"

/* Measures attainment (0..1) at rate_per_s into *attainment; non-zero status aborts. */
typedef int (*bb_measure_fn)(void *user, double rate_per_s, double *attainment);

typedef struct {
    double target;     /* fraction, e.g. 0.9 */
    double rate_lo;    /* first rate tried, req/s, > 0 */
    double rate_hi;    /* a rate known or expected to fail; 0: found by doubling */
    int max_doublings; /* bracketing limit; 0: 10 */
    int iterations;    /* bisection steps after bracketing; 0: 6 */
    double rel_tol;    /* stop when hi/lo - 1 below this; 0: 0.02 */
} bb_search_params_t;

/* Runs the search; the measured points in points (capacity cap; *n_points written) and the
 * goodput (0 when even rate_lo fails: a lower rate_lo would be needed) in *goodput. */
int bb_goodput_search(const bb_search_params_t *p, bb_measure_fn fn, void *user, bb_point_t *points,
                      int cap, int *n_points, double *goodput);

#endif
