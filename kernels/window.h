/* SPDX-License-Identifier: MIT */
/*
 * window.h - the sampler's window weights, with the same bits on the host and on a device.
 *
 * Sampling at a temperature (without top-k) needs the total weight of a row's candidates, and
 * a device that sends only the row's best candidates must send that total too. For the token
 * to be the one the host would draw from the whole row, the device's total has to be the
 * host's to the last bit. So both compute it here, with one exp of their own (IEEE-rounded
 * operations only: no libm, no contraction into FMAs the code does not ask for) and one fixed
 * summation order (BT_WINDOW_LANES lanes, lane l taking elements l, l + LANES, ... in turn, in
 * double, then the lanes combined pairwise). C includes it as static inline functions (ISO C
 * mode: no contraction), CUDA as __host__ __device__ ones whose device code uses explicit
 * round-to-nearest intrinsics.
 */
#ifndef BATON_WINDOW_H
#define BATON_WINDOW_H

#include <math.h>
#include <stdint.h>

#if defined(__CUDACC__)
#define BT_WIN_FN static __host__ __device__ __forceinline__
#else
#define BT_WIN_FN static inline
#endif
#if defined(__CUDA_ARCH__) /* device code: nvcc would contract a * b + c */
#define BT_WIN_FMUL(a, b) __fmul_rn(a, b)
#define BT_WIN_FSUB(a, b) __fsub_rn(a, b)
#define BT_WIN_FDIV(a, b) __fdiv_rn(a, b)
#define BT_WIN_FMA(a, b, c) __fmaf_rn(a, b, c)
#define BT_WIN_DADD(a, b) __dadd_rn(a, b)
#else /* host code, compiled without contraction (ISO C; the emulated device's -ffp-contract=off)  \
       */
#define BT_WIN_FMUL(a, b) ((a) * (b))
#define BT_WIN_FSUB(a, b) ((a) - (b))
#define BT_WIN_FDIV(a, b) ((a) / (b))
#define BT_WIN_FMA(a, b, c) fmaf(a, b, c)
#define BT_WIN_DADD(a, b) ((a) + (b))
#endif

/* Candidates are the logits within this much of the row's largest: the rest weigh less than
 * e^-40 of it at temperature 1. */
#define BT_CAND_WINDOW 40.0f
/* Lanes of the fixed summation order of a window total. */
#define BT_WINDOW_LANES 256

/* e^x for x <= 0 (or NaN): 2^n * p(r) with n = rint(x / ln 2), r = x - n ln 2 (two FMAs) and
 * p the degree-7 Taylor polynomial (relative error under 1e-8 on |r| <= ln 2 / 2); 0 below
 * -87 (where e^x leaves the normal floats), NaN for NaN. */
BT_WIN_FN float bt_exp_det(float x)
{
    const int in = x >= -87.0f; /* branch-free, so that host loops over rows vectorize */
    const float xc = in ? x : 0.0f;
    const float n = rintf(BT_WIN_FMUL(xc, 1.44269504f));
    float r = BT_WIN_FMA(n, -0.693359375f, xc);
    r = BT_WIN_FMA(n, 2.12194440e-4f, r);
    float p = 1.98412698e-4f;
    p = BT_WIN_FMA(p, r, 1.38888889e-3f);
    p = BT_WIN_FMA(p, r, 8.33333333e-3f);
    p = BT_WIN_FMA(p, r, 4.16666667e-2f);
    p = BT_WIN_FMA(p, r, 1.66666667e-1f);
    p = BT_WIN_FMA(p, r, 0.5f);
    p = BT_WIN_FMA(p, r, 1.0f);
    p = BT_WIN_FMA(p, r, 1.0f);
    /* n in [-126, 0]: 2^n is a normal float, and the product p * 2^n is exact. */
    union {
        uint32_t u;
        float f;
    } s;
    s.u = (uint32_t)((int32_t)n + 127) << 23;
    const float e = BT_WIN_FMUL(p, s.f);
    return in ? e : x != x ? x : 0.0f;
}

/* A logit's weight in its row's window at temperature tau: e^((x - max) / tau), 0 outside
 * the window (x < max - BT_CAND_WINDOW, or NaN). max is the row's largest number. */
BT_WIN_FN float bt_window_weight(float x, float max, float tau)
{
    const int in = x >= BT_WIN_FSUB(max, BT_CAND_WINDOW);
    const float e = bt_exp_det(BT_WIN_FDIV(BT_WIN_FSUB(in ? x : max, max), tau));
    return in ? e : 0.0f;
}

/* The last step of the order: lane[0] += lane[LANES / 2] ..., halving until one is left. */
BT_WIN_FN double bt_window_lanes_sum(double *lane)
{
    for (int s = BT_WINDOW_LANES / 2; s > 0; s >>= 1)
        for (int l = 0; l < s; l++)
            lane[l] = BT_WIN_DADD(lane[l], lane[l + s]);
    return lane[0];
}

#endif
