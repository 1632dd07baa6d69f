/* SPDX-License-Identifier: MIT */
/*
 * arrival.h - open-loop arrival times: Poisson, gamma with a chosen coefficient of variation
 * (bursts when cv > 1), constant spacing, or a trace's own timestamps with a time scale.
 *
 * Times are drawn once at unit rate and placed at a rate by scaling (bb_arrival_at_rate), so
 * every rate a goodput search tries sends the same requests in the same order with
 * proportionally spaced gaps: attainment then changes with load, not with the draw. Everything
 * is a function of the seed (the planner's generator).
 */
#ifndef BATON_HARNESS_ARRIVAL_H
#define BATON_HARNESS_ARRIVAL_H

#include <stddef.h>
#include <stdint.h>

typedef enum {
    BB_ARRIVAL_POISSON = 0,
    BB_ARRIVAL_GAMMA,    /* gamma gaps with coefficient of variation cv */
    BB_ARRIVAL_CONSTANT, /* equal gaps */
    BB_ARRIVAL_TRACE,    /* the trace's timestamps */
} bb_arrival_t;

/* Parses "poisson", "gamma", "constant", "trace"; -1 otherwise. */
int bb_arrival_parse(const char *s);
const char *bb_arrival_name(bb_arrival_t a);

/* Writes n arrival times in seconds at rate 1 req/s, the first at 0 (a run starts with a
 * request). kind is POISSON, GAMMA (cv > 0) or CONSTANT. BT_ERR_INVAL otherwise. */
int bb_arrival_unit(bb_arrival_t kind, double cv, size_t n, uint64_t seed, double *out_s);

/* Arrival times in ms at rate_per_s from unit times: unit_s[i] * 1000 / rate. */
void bb_arrival_at_rate(const double *unit_s, size_t n, double rate_per_s, double *out_ms);

/* A trace's times (ms since its first request) scaled by time_scale (0.5: twice as fast). */
void bb_arrival_trace(const double *trace_ms, size_t n, double time_scale, double *out_ms);

#endif
