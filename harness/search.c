/* SPDX-License-Identifier: MIT */
/*
 * search.c - bracketing and bisection for the goodput.
 *
 * When even rate_lo fails, the search halves downward (up to max_doublings times) before giving
 * up, so a first guess that is too high costs a few short runs, not a wrong answer.
 */
#include "search.h"

#include "common/status.h"

typedef struct {
    const bb_search_params_t *p;
    bb_measure_fn fn;
    void *user;
    bb_point_t *points;
    int cap, n;
} srch_t;

/* Measures one rate; 1 if it passes, 0 if not, < 0 on error. */
static int probe(srch_t *s, double rate)
{
    double a = 0;
    int st = s->fn(s->user, rate, &a);
    if (st != BT_OK)
        return st < 0 ? st : BT_ERR_INTERNAL;
    if (s->n < s->cap)
        s->points[s->n++] = (bb_point_t){rate, a};
    return a >= s->p->target;
}

/* Finds lo passing and hi failing (hi 0 when nothing failed within the doublings). */
static int bracket(srch_t *s, double *lo, double *hi)
{
    int max = s->p->max_doublings > 0 ? s->p->max_doublings : 10;
    int ok = probe(s, *lo);
    if (ok < 0)
        return ok;
    for (int i = 0; !ok && i < max; i++) { /* too high a start: halve down */
        *hi = *lo;
        *lo /= 2;
        if ((ok = probe(s, *lo)) < 0)
            return ok;
    }
    if (!ok) {
        *lo = 0;
        return BT_OK;
    }
    if (*hi > 0)
        return BT_OK;
    if (s->p->rate_hi > *lo) {
        int r = probe(s, s->p->rate_hi);
        if (r < 0)
            return r;
        if (!r) {
            *hi = s->p->rate_hi;
            return BT_OK;
        }
        *lo = s->p->rate_hi;
    }
    for (int i = 0; i < max; i++) {
        int r = probe(s, *lo * 2);
        if (r < 0)
            return r;
        if (!r) {
            *hi = *lo * 2;
            return BT_OK;
        }
        *lo *= 2;
    }
    *hi = 0;
    return BT_OK;
}

int bb_goodput_search(const bb_search_params_t *p, bb_measure_fn fn, void *user, bb_point_t *points,
                      int cap, int *n_points, double *goodput)
{
    if (!(p->rate_lo > 0) || !(p->target > 0 && p->target <= 1))
        return BT_ERR_INVAL;
    srch_t s = {.p = p, .fn = fn, .user = user, .points = points, .cap = cap};
    double lo = p->rate_lo, hi = 0;
    int st = bracket(&s, &lo, &hi);
    int iters = p->iterations > 0 ? p->iterations : 6;
    double tol = p->rel_tol > 0 ? p->rel_tol : 0.02;
    for (int i = 0; st == BT_OK && lo > 0 && hi > 0 && i < iters && hi / lo - 1 > tol; i++) {
        double mid = (lo + hi) / 2;
        int r = probe(&s, mid);
        if (r < 0)
            st = r;
        else if (r)
            lo = mid;
        else
            hi = mid;
    }
    *n_points = s.n;
    if (st == BT_OK)
        *goodput = lo;
    return st;
}
