/* SPDX-License-Identifier: MIT */
/*
 * workload.h - the requests a simulation runs: arrival times and lengths.
 *
 * A workload is drawn once, at unit rate, and then placed at any rate by scaling its arrival
 * times (pl_workload_at_rate). Every rate a goodput search tries therefore sees the same
 * requests in the same order with proportionally spaced arrivals (common random numbers), which
 * makes attainment a smooth, nearly monotone function of rate and lets a binary search settle
 * on it; fresh draws per rate would add noise of several points at a few thousand requests.
 *
 * Arrivals: Poisson, gamma with a coefficient of variation (bursts when cv > 1), or a trace's
 * own timestamps (compressed or stretched to the asked rate; "rate 0" keeps them as recorded).
 * Lengths: fixed, uniform in a range, or drawn from a trace (in order when its timestamps are
 * used, else sampled with replacement). Everything is a function of the seed.
 */
#ifndef BATON_PLANNER_WORKLOAD_H
#define BATON_PLANNER_WORKLOAD_H

#include <stddef.h>
#include <stdint.h>

#include "trace.h"

/* One request of a simulation. */
typedef struct {
    double arrival_ms; /* since the start of the run */
    int32_t prompt;    /* prompt tokens, >= 1 */
    int32_t output;    /* output tokens including the first, >= 1 (fixed: EOS ignored) */
} pl_req_t;

typedef enum {
    PL_ARRIVAL_POISSON = 0,
    PL_ARRIVAL_GAMMA, /* gamma gaps with coefficient of variation cv */
    PL_ARRIVAL_TRACE, /* the trace's timestamps */
} pl_arrival_t;

typedef enum {
    PL_LEN_FIXED = 0, /* prompt_min / output_min */
    PL_LEN_UNIFORM,   /* uniform integers in [min, max] */
    PL_LEN_TRACE,     /* from the trace */
} pl_len_t;

typedef struct {
    size_t n_requests; /* > 0 */
    uint64_t seed;
    pl_arrival_t arrival;
    double cv; /* gamma only, > 0 */
    pl_len_t lengths;
    int32_t prompt_min, prompt_max; /* tokens */
    int32_t output_min, output_max;
    const pl_trace_t *trace; /* borrowed, used during make only; required by *_TRACE */
    int32_t max_prompt;      /* trace lengths above are clipped to it; 0: no limit */
    int32_t max_output;      /* likewise */
} pl_workload_params_t;

typedef struct pl_workload pl_workload_t;

/* BT_ERR_INVAL (logged) for inconsistent parameters. */
int pl_workload_create(const pl_workload_params_t *p, pl_workload_t **out);
void pl_workload_destroy(pl_workload_t *w);

size_t pl_workload_n(const pl_workload_t *w);
/* Writes the n requests at rate_per_s (> 0; or 0 with trace arrivals: as recorded) into out. */
void pl_workload_at_rate(const pl_workload_t *w, double rate_per_s, pl_req_t *out);
/* Mean prompt and output lengths, and the longest prompt + output of any request. */
void pl_workload_lengths(const pl_workload_t *w, double *mean_prompt, double *mean_output,
                         int32_t *max_total);

/* Parses "poisson", "gamma", "trace"; -1 otherwise. */
int pl_arrival_parse(const char *s);

#endif
