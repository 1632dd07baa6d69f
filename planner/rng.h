/* SPDX-License-Identifier: MIT */
/*
 * rng.h - the planner's random numbers: xoshiro256** seeded through splitmix64, with the few
 * distributions workloads need (uniform, exponential, gamma, normal).
 *
 * Everything the simulator and the workload generator draw comes from one of these, so a run is
 * a function of its seed on every machine: no libc rand, no global state. A generator is plain
 * caller-owned data; one thread uses it at a time.
 */
#ifndef BATON_PLANNER_RNG_H
#define BATON_PLANNER_RNG_H

#include <stdint.h>

typedef struct {
    uint64_t s[4];
} pl_rng_t;

void pl_rng_seed(pl_rng_t *r, uint64_t seed);
uint64_t pl_rng_u64(pl_rng_t *r);
/* Uniform in (0, 1): never exactly 0 or 1, so logs and inverses are finite. */
double pl_rng_uniform(pl_rng_t *r);
/* Uniform integer in [0, n), n >= 1 (no modulo bias worth measuring for n < 2^32). */
uint64_t pl_rng_below(pl_rng_t *r, uint64_t n);
/* Exponential with the given mean. */
double pl_rng_exp(pl_rng_t *r, double mean);
/* Standard normal (Marsaglia polar method). */
double pl_rng_normal(pl_rng_t *r);
/* Gamma with shape k > 0 and scale theta (mean k * theta), Marsaglia-Tsang. */
double pl_rng_gamma(pl_rng_t *r, double k, double theta);

#endif
