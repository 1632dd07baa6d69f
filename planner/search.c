/* SPDX-License-Identifier: MIT */
/*
 * search.c - goodput by bracketing and bisection (search.h).
 *
 * Attainment is not exactly monotone in rate (batching can make a slightly higher rate look
 * better), so the search returns a rate that was simulated and passed, never an interpolation:
 * whatever it reports has been seen to meet the target.
 */
#include "search.h"

#include <math.h>

#include "common/alloc.h"
#include "common/status.h"

typedef struct {
    const pl_goodput_params_t *p;
    pl_req_t *reqs;
    pl_sim_params_t sim;
    int n_sims;
} trial_t;

/* Runs the workload at rate: 1 if it meets the target, 0 if not, < 0 on error. */
static int trial(trial_t *t, double rate, pl_sim_result_t *res)
{
    pl_workload_at_rate(t->p->w, rate, t->reqs);
    int st = pl_sim_run(&t->sim, t->reqs, pl_workload_n(t->p->w), res, NULL);
    t->n_sims++;
    if (st != BT_OK)
        return st;
    return !res->stopped_early && res->attainment >= t->p->target;
}

static int search(trial_t *t, pl_goodput_t *out)
{
    const pl_goodput_params_t *p = t->p;
    double rate_max = p->rate_max > 0 ? p->rate_max : 1e7, tol = p->rel_tol > 0 ? p->rel_tol : 0.01;
    double lo = 0, hi = 0, r = p->rate_hint > 0 ? fmin(p->rate_hint, rate_max) : 1;
    pl_sim_result_t res, best = {0};
    int ok = trial(t, r, &res);
    if (ok < 0)
        return ok;
    /* Bracket: double while passing, halve while failing (at most 2^-30 of the hint). */
    for (int i = 0; i < 60; i++) {
        if (ok) {
            lo = r;
            best = res;
            if (hi > 0 || r >= rate_max)
                break;
            r = fmin(r * 2, rate_max);
        } else {
            hi = r;
            if (lo > 0 || i >= 30)
                break;
            r /= 2;
        }
        if ((ok = trial(t, r, &res)) < 0)
            return ok;
    }
    while (lo > 0 && hi > 0 && hi - lo > tol * lo) {
        r = (lo + hi) / 2;
        if ((ok = trial(t, r, &res)) < 0)
            return ok;
        if (ok) {
            lo = r;
            best = res;
        } else {
            hi = r;
        }
    }
    out->rate = lo;
    out->at = best;
    return BT_OK;
}

int pl_goodput(const pl_goodput_params_t *p, pl_goodput_t *out)
{
    size_t n = pl_workload_n(p->w);
    trial_t t = {.p = p, .sim = p->sim};
    /* Past this many misses the target is out of reach: stop the run there (0 turns the early
     * stop off; a target of 1 is then checked after the run). */
    t.sim.max_failures = (size_t)floor((1 - p->target) * (double)n);
    if (!(t.reqs = bt_malloc(n * sizeof *t.reqs)))
        return BT_ERR_NOMEM;
    pl_goodput_t g = {0};
    int st = search(&t, &g);
    bt_free(t.reqs);
    g.n_sims = t.n_sims;
    if (st == BT_OK)
        *out = g;
    return st;
}

int pl_attainment(const pl_workload_t *w, const pl_sim_params_t *sim, double rate,
                  pl_sim_result_t *res)
{
    size_t n = pl_workload_n(w);
    pl_req_t *reqs = bt_malloc(n * sizeof *reqs);
    if (!reqs)
        return BT_ERR_NOMEM;
    pl_workload_at_rate(w, rate, reqs);
    int st = pl_sim_run(sim, reqs, n, res, NULL);
    bt_free(reqs);
    return st;
}
