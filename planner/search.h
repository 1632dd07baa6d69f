/* SPDX-License-Identifier: MIT */
/*
 * search.h - goodput: the highest request rate at which a cluster still meets its objectives
 * for a target fraction of requests (DistServe's definition, with joint attainment: a request
 * counts only when it meets both TTFT and TPOT; in a phase-only run, that phase's objective).
 *
 * The search brackets the rate by doubling or halving from a hint, then bisects until the
 * bracket is within rel_tol. Every trial simulates the same workload placed at the trial rate
 * (workload.h), and stops as soon as too many requests have missed to reach the target, so a
 * trial far above goodput costs little.
 */
#ifndef BATON_PLANNER_SEARCH_H
#define BATON_PLANNER_SEARCH_H

#include "sim.h"
#include "workload.h"

typedef struct {
    const pl_workload_t *w; /* borrowed */
    pl_sim_params_t sim;    /* the cluster, mode, policy, objectives; max_failures is set here */
    double target;          /* attainment wanted, in (0, 1] */
    double rel_tol;         /* bracket width to stop at, relative; 0: 0.01 */
    double rate_hint;       /* first rate tried, requests/s; 0: 1 */
    double rate_max;        /* no rate above is tried; 0: 1e7 */
} pl_goodput_params_t;

typedef struct {
    double rate;        /* goodput, requests/s; 0 when even the lowest rate tried fails */
    pl_sim_result_t at; /* the simulation at that rate (full run, not stopped early) */
    int n_sims;         /* simulations run */
} pl_goodput_t;

/* BT_ERR_INVAL / BT_ERR_NOMEM as pl_sim_run. */
int pl_goodput(const pl_goodput_params_t *p, pl_goodput_t *out);

/* One simulation of the workload at rate (no early stop unless sim->max_failures is set). */
int pl_attainment(const pl_workload_t *w, const pl_sim_params_t *sim, double rate,
                  pl_sim_result_t *res);

#endif
