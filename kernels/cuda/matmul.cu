/* SPDX-License-Identifier: MIT */
/*
 * matmul.cu - y[m][n] = x[m][k] . W^T with W of n rows (F32, F16, BF16 or Q8_0), f32
 * activations and f32 accumulation: the GEMV / skinny-GEMM kernels used for decode (and for
 * every matmul in deterministic mode).
 *
 * The one thing to know: one warp owns one weight row and up to MT tokens. Lane l reads the
 * 16-byte pieces l, l + 32, l + 64, ... of the row (coalesced, 512 bytes per warp per step),
 * widens them exactly to f32 and accumulates each token's dot product in that order; a fixed
 * shuffle tree then sums the 32 lane partials. So y[i][j] is computed the same way whatever m,
 * MT or the row's place in the batch (kernels.h determinism contract), and the weights are
 * read once per MT tokens. Blocks that share weight rows differ only in blockIdx.x, which the
 * hardware schedules first, so for m > MT the repeated reads of a weight tile hit in L2.
 *
 * Shapes the 16-byte path cannot take (k not a multiple of 8 elements, or misaligned data) go
 * through a scalar kernel with the same structure; Q8_0 has its own kernel (one lane per
 * 32-weight block), correct but not tuned.
 */
#include <cuda_fp16.h>

#include "cuda_impl.h"

#define GEMV_WARPS 8 /* weight rows per block */
#define MAX_GRID_Y 65535

static __device__ __forceinline__ float warp_sum(float v)
{
    for (int o = 16; o > 0; o >>= 1)
        v = __fadd_rn(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* 16 bytes of weights widened to E floats (E = 4 for F32, 8 for F16/BF16), element order. */
template <int TYPE> struct wvec;

template <> struct wvec<BT_TYPE_F32> {
    static constexpr int E = 4;
    static __device__ __forceinline__ void unpack(uint4 r, float *w)
    {
        w[0] = __uint_as_float(r.x);
        w[1] = __uint_as_float(r.y);
        w[2] = __uint_as_float(r.z);
        w[3] = __uint_as_float(r.w);
    }
};

template <> struct wvec<BT_TYPE_BF16> {
    static constexpr int E = 8;
    static __device__ __forceinline__ void pair(uint32_t u, float *w)
    {
        w[0] = __uint_as_float(u << 16);
        w[1] = __uint_as_float(u & 0xffff0000u);
    }
    static __device__ __forceinline__ void unpack(uint4 r, float *w)
    {
        pair(r.x, w);
        pair(r.y, w + 2);
        pair(r.z, w + 4);
        pair(r.w, w + 6);
    }
};

template <> struct wvec<BT_TYPE_F16> {
    static constexpr int E = 8;
    static __device__ __forceinline__ void pair(uint32_t u, float *w)
    {
        w[0] = __half2float(__ushort_as_half((unsigned short)(u & 0xffffu)));
        w[1] = __half2float(__ushort_as_half((unsigned short)(u >> 16)));
    }
    static __device__ __forceinline__ void unpack(uint4 r, float *w)
    {
        pair(r.x, w);
        pair(r.y, w + 2);
        pair(r.z, w + 4);
        pair(r.w, w + 6);
    }
};

template <int TYPE, int MT>
static __global__ void __launch_bounds__(GEMV_WARPS * 32)
    gemv_vec_kernel(float *y, const uint8_t *w, const float *x, int64_t m, int64_t n, int64_t k,
                    int64_t row0)
{
    constexpr int E = wvec<TYPE>::E;
    const int lane = threadIdx.x % 32;
    const int64_t j = row0 + (int64_t)blockIdx.y * GEMV_WARPS + threadIdx.x / 32;
    if (j >= n)
        return;
    const int64_t i0 = (int64_t)blockIdx.x * MT;
    const int mt = m - i0 < MT ? (int)(m - i0) : MT;
    const size_t ldw = (size_t)k * (TYPE == BT_TYPE_F32 ? 4 : 2);
    const uint4 *wr = (const uint4 *)(w + (size_t)j * ldw);
    const int64_t n_chunks = k / E;
    float acc[MT];
#pragma unroll
    for (int i = 0; i < MT; i++)
        acc[i] = 0.0f;
        /* One token: more weight pieces in flight per lane (the arithmetic order is the same). */
#pragma unroll(MT == 1 ? 8 : 4)
    for (int64_t c = lane; c < n_chunks; c += 32) {
        float wv[E];
        wvec<TYPE>::unpack(__ldg(wr + c), wv);
#pragma unroll
        for (int i = 0; i < MT; i++) {
            if (i >= mt)
                break;
            const float4 *xr = (const float4 *)(x + (i0 + i) * k + c * E);
            float xv[E];
#pragma unroll
            for (int q = 0; q < E / 4; q++) {
                const float4 t = __ldg(xr + q);
                xv[4 * q] = t.x;
                xv[4 * q + 1] = t.y;
                xv[4 * q + 2] = t.z;
                xv[4 * q + 3] = t.w;
            }
#pragma unroll
            for (int e = 0; e < E; e++)
                acc[i] = __fmaf_rn(xv[e], wv[e], acc[i]);
        }
    }
#pragma unroll
    for (int i = 0; i < MT; i++) {
        const float s = warp_sum(acc[i]);
        if (i < mt && lane == 0)
            y[(i0 + i) * n + j] = s;
    }
}

static __device__ __forceinline__ float weight_elem(int type, const uint8_t *row, int64_t e)
{
    if (type == BT_TYPE_F32)
        return ((const float *)row)[e];
    const uint16_t h = ((const uint16_t *)row)[e];
    if (type == BT_TYPE_BF16)
        return __uint_as_float((uint32_t)h << 16);
    return __half2float(__ushort_as_half(h));
}

/* Any k and alignment: lane l takes elements l, l + 32, ... */
template <int MT>
static __global__ void __launch_bounds__(GEMV_WARPS * 32)
    gemv_scalar_kernel(float *y, const uint8_t *w, int type, const float *x, int64_t m, int64_t n,
                       int64_t k, int64_t row0)
{
    const int lane = threadIdx.x % 32;
    const int64_t j = row0 + (int64_t)blockIdx.y * GEMV_WARPS + threadIdx.x / 32;
    if (j >= n)
        return;
    const int64_t i0 = (int64_t)blockIdx.x * MT;
    const int mt = m - i0 < MT ? (int)(m - i0) : MT;
    const uint8_t *wr = w + (size_t)j * (size_t)k * (type == BT_TYPE_F32 ? 4 : 2);
    float acc[MT];
#pragma unroll
    for (int i = 0; i < MT; i++)
        acc[i] = 0.0f;
    for (int64_t e = lane; e < k; e += 32) {
        const float wv = weight_elem(type, wr, e);
#pragma unroll
        for (int i = 0; i < MT; i++)
            if (i < mt)
                acc[i] = __fmaf_rn(x[(i0 + i) * k + e], wv, acc[i]);
    }
#pragma unroll
    for (int i = 0; i < MT; i++) {
        const float s = warp_sum(acc[i]);
        if (i < mt && lane == 0)
            y[(i0 + i) * n + j] = s;
    }
}

/* Q8_0: lane l takes blocks l, l + 32, ...; each block's 32 products are summed in order and
 * scaled by the block's fp16 scale. */
template <int MT>
static __global__ void __launch_bounds__(GEMV_WARPS * 32)
    gemv_q8_kernel(float *y, const bt_block_q8_0_t *w, const float *x, int64_t m, int64_t n,
                   int64_t k, int64_t row0)
{
    const int lane = threadIdx.x % 32;
    const int64_t j = row0 + (int64_t)blockIdx.y * GEMV_WARPS + threadIdx.x / 32;
    if (j >= n)
        return;
    const int64_t i0 = (int64_t)blockIdx.x * MT;
    const int mt = m - i0 < MT ? (int)(m - i0) : MT;
    const int64_t nb = k / BT_QK8_0;
    const bt_block_q8_0_t *wr = w + j * nb;
    float acc[MT];
#pragma unroll
    for (int i = 0; i < MT; i++)
        acc[i] = 0.0f;
    for (int64_t b = lane; b < nb; b += 32) {
        const bt_block_q8_0_t *blk = wr + b;
        const float d = __half2float(__ushort_as_half(blk->d));
        float q[BT_QK8_0];
#pragma unroll
        for (int l = 0; l < BT_QK8_0; l++)
            q[l] = (float)blk->qs[l];
#pragma unroll
        for (int i = 0; i < MT; i++) {
            if (i >= mt)
                break;
            const float *xb = x + (i0 + i) * k + b * BT_QK8_0;
            float s = 0.0f;
#pragma unroll
            for (int l = 0; l < BT_QK8_0; l++)
                s = __fmaf_rn(xb[l], q[l], s);
            acc[i] = __fmaf_rn(s, d, acc[i]);
        }
    }
#pragma unroll
    for (int i = 0; i < MT; i++) {
        const float s = warp_sum(acc[i]);
        if (i < mt && lane == 0)
            y[(i0 + i) * n + j] = s;
    }
}

template <int MT>
static void gemv_launch_mt(cudaStream_t st, float *y, const bt_tensor_t *w, const float *x,
                           int64_t m, int vec)
{
    const int64_t n = w->rows, k = w->cols;
    const uint8_t *wd = (const uint8_t *)w->data;
    const dim3 block(GEMV_WARPS * 32);
    const int64_t gx = (m + MT - 1) / MT;
    const int64_t rows_per_launch = (int64_t)MAX_GRID_Y * GEMV_WARPS;
    for (int64_t row0 = 0; row0 < n; row0 += rows_per_launch) {
        const int64_t nr = n - row0 < rows_per_launch ? n - row0 : rows_per_launch;
        const dim3 grid((unsigned)gx, (unsigned)((nr + GEMV_WARPS - 1) / GEMV_WARPS));
        if (w->type == BT_TYPE_Q8_0)
            gemv_q8_kernel<MT>
                <<<grid, block, 0, st>>>(y, (const bt_block_q8_0_t *)wd, x, m, n, k, row0);
        else if (!vec)
            gemv_scalar_kernel<MT><<<grid, block, 0, st>>>(y, wd, w->type, x, m, n, k, row0);
        else if (w->type == BT_TYPE_BF16)
            gemv_vec_kernel<BT_TYPE_BF16, MT><<<grid, block, 0, st>>>(y, wd, x, m, n, k, row0);
        else if (w->type == BT_TYPE_F16)
            gemv_vec_kernel<BT_TYPE_F16, MT><<<grid, block, 0, st>>>(y, wd, x, m, n, k, row0);
        else
            gemv_vec_kernel<BT_TYPE_F32, MT><<<grid, block, 0, st>>>(y, wd, x, m, n, k, row0);
        BT_CUDA_CHECK(cudaGetLastError());
    }
}

extern "C" void bt_cuda_gemv_launch(cudaStream_t st, float *y, const bt_tensor_t *w, const float *x,
                                    int64_t m)
{
    if (m <= 0 || w->rows <= 0)
        return;
    const int e = w->type == BT_TYPE_F32 ? 4 : 8;
    /* The 16-byte path needs every weight row and activation row 16-byte aligned. */
    const int vec = w->cols % e == 0 && ((uintptr_t)w->data & 15) == 0 &&
                    ((uintptr_t)x & 15) == 0 && w->cols % 4 == 0;
    if (m >= 8)
        gemv_launch_mt<8>(st, y, w, x, m, vec);
    else if (m >= 4)
        gemv_launch_mt<4>(st, y, w, x, m, vec);
    else if (m >= 2)
        gemv_launch_mt<2>(st, y, w, x, m, vec);
    else
        gemv_launch_mt<1>(st, y, w, x, m, vec);
}
