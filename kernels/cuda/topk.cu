/* SPDX-License-Identifier: MIT */
/*
 * topk.cu - each row's k best logits on the device (bt_topk_f32's order), so that top-k
 * sampling downloads k candidates a row instead of the vocabulary (0.5 MB a row on a 128k
 * vocabulary). The draw itself stays on the host, from these candidates, with the sequence's own
 * seeded sampler: the same token as the host would draw from the whole row.
 *
 * One block per row. Values map to unsigned keys in which larger is better (NaN lowest, -0 equal
 * to +0: bt_topk_key). A radix select finds the k-th best key T a byte at a time (four passes
 * of a 256-bin histogram over the row, each restricted to the keys that share the bytes found
 * so far); every key above T is in, and of the keys equal to T the lowest indices fill the rest,
 * which a block-wide scan over contiguous index ranges picks in index order. The k winners are
 * then sorted in shared memory by a bitonic network. Counting and selection are exact integer
 * work, so the result is the host's, bit for bit.
 *
 * Sampling at a temperature without top-k draws from these candidates and the row's window
 * total (window.h), which the device computes here too: one block of BT_WINDOW_LANES threads
 * per row, thread t being lane t of window.h's order, so that the total is the host's
 * bt_window_total_f32 to the last bit.
 *
 * The repetition penalty goes before all of these, in place on the logits: one block per row,
 * its threads over the row's few ids, each logit divided or multiplied once with the IEEE
 * intrinsics, so that it is the host's bt_penalize_logit bit for bit.
 */
#include <stdint.h>

#include "cuda_impl.h"

#include "../window.h"

#define TK_THREADS 512
#define TK_MAX_GRID 65535

static __device__ __forceinline__ uint32_t tk_key(float v)
{
    uint32_t u = __float_as_uint(v);
    if (v != v)
        return 0;
    if (v == 0.0f)
        u = 0;
    return (u & 0x80000000u) ? ~u : u | 0x80000000u;
}

/* Whether (ka, ia) ranks before (kb, ib). */
static __device__ __forceinline__ bool tk_before(uint32_t ka, int32_t ia, uint32_t kb, int32_t ib)
{
    return ka > kb || (ka == kb && ia < ib);
}

/* In-place exclusive prefix sum of a[0, TK_THREADS) (Hillis-Steele through b); returns the
 * total. Every thread of the block must call it. */
static __device__ uint32_t tk_scan(uint32_t *a, uint32_t *b)
{
    const int t = threadIdx.x;
    uint32_t mine = a[t];
    __syncthreads();
    for (int off = 1; off < TK_THREADS; off <<= 1) {
        b[t] = a[t] + (t >= off ? a[t - off] : 0u);
        __syncthreads();
        a[t] = b[t];
        __syncthreads();
    }
    uint32_t total = a[TK_THREADS - 1];
    __syncthreads();
    a[t] -= mine; /* inclusive to exclusive */
    __syncthreads();
    return total;
}

static __global__ void __launch_bounds__(TK_THREADS)
    topk_kernel(int32_t *ids_out, float *vals_out, const float *x, int64_t m, int64_t n, int k)
{
    __shared__ uint32_t hist[256];
    __shared__ uint32_t gt[TK_THREADS], eq[TK_THREADS], tmp[TK_THREADS];
    __shared__ uint32_t ckey[BT_TOPK_MAX];
    __shared__ int32_t cid[BT_TOPK_MAX];
    __shared__ uint32_t s_digit, s_rem;
    const int t = threadIdx.x;
    for (int64_t r = blockIdx.x; r < m; r += gridDim.x) {
        const float *row = x + r * n;

        /* Radix select: after the pass at shift s, prefix holds the top bytes of T down to s,
         * and rem how many keys equal to the prefix (in those bytes) are still to be taken. */
        uint32_t prefix = 0, mask = 0, rem = (uint32_t)k;
        for (int shift = 24; shift >= 0; shift -= 8) {
            for (int i = t; i < 256; i += TK_THREADS)
                hist[i] = 0;
            __syncthreads();
            for (int64_t i = t; i < n; i += TK_THREADS) {
                uint32_t key = tk_key(row[i]);
                if ((key & mask) == prefix)
                    atomicAdd(&hist[(key >> shift) & 255u], 1u);
            }
            __syncthreads();
            if (t == 0) {
                /* The byte d where the keys above it number fewer than rem and those from it up
                 * at least rem (the keys matching prefix number at least rem). */
                uint32_t above = 0;
                int d = 255;
                for (; d > 0 && above + hist[d] < rem; d--)
                    above += hist[d];
                s_digit = (uint32_t)d;
                s_rem = rem - above;
            }
            __syncthreads();
            prefix |= s_digit << shift;
            mask |= 255u << shift;
            rem = s_rem;
        }
        const uint32_t T = prefix;
        const uint32_t n_gt = (uint32_t)k - rem; /* keys above T; rem of those equal to it join */

        /* Each thread's contiguous index range, so equal keys are taken in index order. */
        const int64_t per = (n + TK_THREADS - 1) / TK_THREADS;
        const int64_t lo = t * per < n ? t * per : n, hi = lo + per < n ? lo + per : n;
        uint32_t c_gt = 0, c_eq = 0;
        for (int64_t i = lo; i < hi; i++) {
            uint32_t key = tk_key(row[i]);
            c_gt += key > T;
            c_eq += key == T;
        }
        gt[t] = c_gt;
        eq[t] = c_eq;
        tk_scan(gt, tmp);
        tk_scan(eq, tmp);
        uint32_t at_gt = gt[t], at_eq = eq[t];
        for (int64_t i = lo; i < hi; i++) {
            uint32_t key = tk_key(row[i]);
            if (key > T) {
                ckey[at_gt] = key;
                cid[at_gt++] = (int32_t)i;
            } else if (key == T && at_eq < rem) {
                ckey[n_gt + at_eq] = key;
                cid[n_gt + at_eq++] = (int32_t)i;
            } else if (key == T) {
                at_eq++;
            }
        }
        int P = 1;
        while (P < k)
            P <<= 1;
        for (int i = k + t; i < P; i += TK_THREADS) { /* sentinels sort last */
            ckey[i] = 0;
            cid[i] = INT32_MAX;
        }
        __syncthreads();

        /* Bitonic sort of ckey/cid[0, P) into tk_before order. */
        for (int size = 2; size <= P; size <<= 1) {
            for (int stride = size >> 1; stride > 0; stride >>= 1) {
                for (int i = t; i < P; i += TK_THREADS) {
                    int j = i ^ stride;
                    if (j <= i)
                        continue;
                    bool up = (i & size) == 0;
                    bool swap = up ? tk_before(ckey[j], cid[j], ckey[i], cid[i])
                                   : tk_before(ckey[i], cid[i], ckey[j], cid[j]);
                    if (swap) {
                        uint32_t kk = ckey[i];
                        int32_t ii = cid[i];
                        ckey[i] = ckey[j];
                        cid[i] = cid[j];
                        ckey[j] = kk;
                        cid[j] = ii;
                    }
                }
                __syncthreads();
            }
        }
        for (int j = t; j < k; j += TK_THREADS) {
            ids_out[r * k + j] = cid[j];
            vals_out[r * k + j] = row[cid[j]];
        }
        __syncthreads();
    }
}

extern "C" void bt_cuda_topk_rows_launch(cudaStream_t st, int32_t *ids, float *vals, const float *x,
                                         int64_t m, int64_t n, int32_t k)
{
    if (m <= 0)
        return;
    int grid = (int)(m < TK_MAX_GRID ? m : TK_MAX_GRID);
    topk_kernel<<<grid, TK_THREADS, 0, st>>>(ids, vals, x, m, n, k);
    BT_CUDA_CHECK(cudaGetLastError());
}

/* Row r's window total at tau[r] to totals[r] (0 if tau[r] is not positive or the row has no
 * finite largest number). The largest number is the same whatever order it is found in, so a
 * tree suffices; the sum follows window.h's order exactly: lane t adds the weights of elements
 * t, t + LANES, ... in turn, in double, and the lanes are combined as bt_window_lanes_sum does,
 * halving with a barrier between rounds. */
static __global__ void __launch_bounds__(BT_WINDOW_LANES)
    window_totals_kernel(double *totals, const float *x, const float *tau, int64_t m, int64_t n)
{
    __shared__ float s_max[BT_WINDOW_LANES];
    __shared__ double lane[BT_WINDOW_LANES];
    const int t = threadIdx.x;
    for (int64_t r = blockIdx.x; r < m; r += gridDim.x) {
        const float *row = x + r * n;
        const float tr = tau[r];
        if (!(tr > 0.0f)) { /* the same for every thread of the block */
            if (t == 0)
                totals[r] = 0.0;
            continue;
        }
        float mx = -INFINITY; /* NaNs never win: bt_max_f32 */
        for (int64_t i = t; i < n; i += BT_WINDOW_LANES)
            mx = row[i] > mx ? row[i] : mx;
        s_max[t] = mx;
        __syncthreads();
        for (int s = BT_WINDOW_LANES / 2; s > 0; s >>= 1) {
            if (t < s)
                s_max[t] = s_max[t + s] > s_max[t] ? s_max[t + s] : s_max[t];
            __syncthreads();
        }
        const float max = s_max[0];
        __syncthreads(); /* s_max is read before the next row rewrites it */
        if (!(max > -INFINITY && max < INFINITY)) { /* never NaN: -inf (none) or +inf */
            if (t == 0)
                totals[r] = 0.0;
            continue;
        }
        double acc = 0.0;
        for (int64_t i = t; i < n; i += BT_WINDOW_LANES)
            acc = BT_WIN_DADD(acc, (double)bt_window_weight(row[i], max, tr));
        lane[t] = acc;
        __syncthreads();
        for (int s = BT_WINDOW_LANES / 2; s > 0; s >>= 1) {
            if (t < s)
                lane[t] = BT_WIN_DADD(lane[t], lane[t + s]);
            __syncthreads();
        }
        if (t == 0)
            totals[r] = lane[0];
        __syncthreads(); /* lane[0] is read before the next row rewrites it */
    }
}

extern "C" void bt_cuda_window_totals_launch(cudaStream_t st, double *totals, const float *x,
                                             const float *tau, int64_t m, int64_t n)
{
    if (m <= 0)
        return;
    int grid = (int)(m < TK_MAX_GRID ? m : TK_MAX_GRID);
    window_totals_kernel<<<grid, BT_WINDOW_LANES, 0, st>>>(totals, x, tau, m, n);
    BT_CUDA_CHECK(cudaGetLastError());
}

#define PEN_THREADS 128

/* Row r's logits at its n_ids[r] ids (from ids + r * cap; distinct, all < n) penalized by
 * pen[r] in place: bt_penalize_logit, the quotient and product rounded as the host's (no
 * reciprocal, no contraction whatever the compiler flags). A NaN logit stays NaN, but the
 * device's NaN may have other bits than the host's. */
static __global__ void __launch_bounds__(PEN_THREADS)
    penalize_rows_kernel(float *x, int64_t m, int64_t n, const int32_t *ids, const int32_t *n_ids,
                         const float *pen, int32_t cap)
{
    for (int64_t r = blockIdx.x; r < m; r += gridDim.x) {
        float *row = x + r * n;
        const int32_t *rid = ids + r * cap;
        const float p = pen[r];
        for (int32_t j = threadIdx.x; j < n_ids[r]; j += PEN_THREADS) {
            const float l = row[rid[j]];
            row[rid[j]] = l > 0.0f ? __fdiv_rn(l, p) : __fmul_rn(l, p);
        }
    }
}

extern "C" void bt_cuda_penalize_rows_launch(cudaStream_t st, float *x, int64_t m, int64_t n,
                                             const int32_t *ids, const int32_t *n_ids,
                                             const float *pen, int32_t cap)
{
    if (m <= 0)
        return;
    int grid = (int)(m < TK_MAX_GRID ? m : TK_MAX_GRID);
    penalize_rows_kernel<<<grid, PEN_THREADS, 0, st>>>(x, m, n, ids, n_ids, pen, cap);
    BT_CUDA_CHECK(cudaGetLastError());
}
