/* SPDX-License-Identifier: MIT */
/*
 * rng.c - xoshiro256** and the distributions of rng.h.
 *
 * Gamma uses Marsaglia and Tsang's squeeze method; shapes below 1 are drawn at k + 1 and
 * scaled by U^(1/k), which is exact and keeps the one method for every shape (bursty arrivals
 * with a coefficient of variation above 1 need k = 1/cv^2 < 1).
 */
#include "rng.h"

#include <math.h>

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

void pl_rng_seed(pl_rng_t *r, uint64_t seed)
{
    uint64_t x = seed;
    for (int i = 0; i < 4; i++)
        r->s[i] = splitmix64(&x);
}

static uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

uint64_t pl_rng_u64(pl_rng_t *r)
{
    uint64_t *s = r->s;
    uint64_t out = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return out;
}

double pl_rng_uniform(pl_rng_t *r)
{
    /* 53 random bits, offset by half a step: (0, 1) exclusive. */
    return ((double)(pl_rng_u64(r) >> 11) + 0.5) * 0x1.0p-53;
}

uint64_t pl_rng_below(pl_rng_t *r, uint64_t n)
{
    return (uint64_t)(pl_rng_uniform(r) * (double)n) % n;
}

double pl_rng_exp(pl_rng_t *r, double mean)
{
    return -mean * log(pl_rng_uniform(r));
}

double pl_rng_normal(pl_rng_t *r)
{
    double u, v, s;
    do {
        u = 2 * pl_rng_uniform(r) - 1;
        v = 2 * pl_rng_uniform(r) - 1;
        s = u * u + v * v;
    } while (s >= 1 || s == 0);
    return u * sqrt(-2 * log(s) / s);
}

double pl_rng_gamma(pl_rng_t *r, double k, double theta)
{
    if (k < 1) {
        double u = pl_rng_uniform(r);
        return pl_rng_gamma(r, k + 1, theta) * pow(u, 1 / k);
    }
    double d = k - 1.0 / 3, c = 1 / sqrt(9 * d);
    for (;;) {
        double x = pl_rng_normal(r), v = 1 + c * x;
        if (v <= 0)
            continue;
        v = v * v * v;
        double u = pl_rng_uniform(r);
        if (u < 1 - 0.0331 * x * x * x * x || log(u) < 0.5 * x * x + d * (1 - v + log(v)))
            return d * v * theta;
    }
}
