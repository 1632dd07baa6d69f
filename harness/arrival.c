/* SPDX-License-Identifier: MIT */
/*
 * arrival.c - arrival generators over the planner's seeded random numbers.
 *
 * A gamma gap with mean 1 and coefficient of variation cv has shape 1/cv^2 and scale cv^2;
 * cv = 1 is the exponential (Poisson arrivals). The first request goes at time 0 so that a run's
 * duration is the span of its gaps, not a random lead-in.
 */
#include "arrival.h"

#include <string.h>

#include "common/status.h"
#include "planner/rng.h"

static const char *const names[] = {"poisson", "gamma", "constant", "trace"};

int bb_arrival_parse(const char *s)
{
    for (int i = 0; i < (int)(sizeof names / sizeof names[0]); i++)
        if (s && strcmp(s, names[i]) == 0)
            return i;
    return -1;
}

const char *bb_arrival_name(bb_arrival_t a)
{
    return (unsigned)a < sizeof names / sizeof names[0] ? names[a] : "?";
}

int bb_arrival_unit(bb_arrival_t kind, double cv, size_t n, uint64_t seed, double *out_s)
{
    if (kind == BB_ARRIVAL_TRACE || (unsigned)kind > BB_ARRIVAL_CONSTANT ||
        (kind == BB_ARRIVAL_GAMMA && !(cv > 0)))
        return BT_ERR_INVAL;
    pl_rng_t r;
    pl_rng_seed(&r, seed);
    double t = 0;
    for (size_t i = 0; i < n; i++) {
        out_s[i] = t;
        if (kind == BB_ARRIVAL_POISSON)
            t += pl_rng_exp(&r, 1.0);
        else if (kind == BB_ARRIVAL_GAMMA)
            t += pl_rng_gamma(&r, 1.0 / (cv * cv), cv * cv);
        else
            t += 1.0;
    }
    return BT_OK;
}

void bb_arrival_at_rate(const double *unit_s, size_t n, double rate_per_s, double *out_ms)
{
    for (size_t i = 0; i < n; i++)
        out_ms[i] = unit_s[i] * 1e3 / rate_per_s;
}

void bb_arrival_trace(const double *trace_ms, size_t n, double time_scale, double *out_ms)
{
    for (size_t i = 0; i < n; i++)
        out_ms[i] = (trace_ms[i] - trace_ms[0]) * time_scale;
}
