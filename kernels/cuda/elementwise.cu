/* SPDX-License-Identifier: MIT */
/*
 * elementwise.cu - the row-wise and element-wise ops on the GPU: get_rows, rmsnorm, rope,
 * swiglu, add, gather_rows, and the f32 -> bf16/fp16 conversion feeding cuBLAS (also fused with
 * rmsnorm, for the pre-norm projections).
 *
 * The one thing to know: each result depends only on its own row or element. rmsnorm's sum of
 * squares runs in a fixed order (per-thread strided sums, then a fixed shuffle tree over a
 * fixed block size), never with atomics, so a row gives the same bits wherever it sits in the
 * batch. Conversions round to nearest even, like fp16.h on the host.
 */
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <string.h>

#include "cuda_impl.h"
#include "elementwise.cuh"

#define THREADS 256
#define MAX_GRID 65535

static int grid_for(int64_t n)
{
    int64_t g = (n + THREADS - 1) / THREADS;
    return (int)(g < 1 ? 1 : g > MAX_GRID ? MAX_GRID : g);
}

static __device__ __forceinline__ float f16_to_f32(uint16_t h)
{
    return __half2float(__ushort_as_half(h));
}

static __device__ __forceinline__ float bf16_to_f32(uint16_t h)
{
    return __uint_as_float((uint32_t)h << 16);
}

/* ---- get_rows ---- */

static __device__ __forceinline__ float table_elem(int type, const uint8_t *row, int64_t i)
{
    switch (type) {
    case BT_TYPE_F32: return ((const float *)row)[i];
    case BT_TYPE_F16: return f16_to_f32(((const uint16_t *)row)[i]);
    case BT_TYPE_BF16: return bf16_to_f32(((const uint16_t *)row)[i]);
    default: {
        const bt_block_q8_0_t *b = (const bt_block_q8_0_t *)row + i / BT_QK8_0;
        return __fmul_rn(f16_to_f32(b->d), (float)b->qs[i % BT_QK8_0]);
    }
    }
}

static __global__ void get_rows_kernel(float *y, const uint8_t *table, int type, size_t row_bytes,
                                       const int32_t *ids, int64_t m, int64_t n)
{
    for (int64_t r = blockIdx.x; r < m; r += gridDim.x) {
        const uint8_t *src = table + (size_t)ids[r] * row_bytes;
        for (int64_t i = threadIdx.x; i < n; i += blockDim.x)
            y[r * n + i] = table_elem(type, src, i);
    }
}

extern "C" void bt_cuda_get_rows_launch(cudaStream_t st, float *y, const bt_tensor_t *table,
                                        const int32_t *ids, int64_t m)
{
    if (m <= 0)
        return;
    int grid = (int)(m < MAX_GRID ? m : MAX_GRID);
    get_rows_kernel<<<grid, THREADS, 0, st>>>(y, (const uint8_t *)table->data, table->type,
                                              bt_type_row_bytes(table->type, table->cols), ids, m,
                                              table->cols);
    BT_CUDA_CHECK(cudaGetLastError());
}

/* ---- rmsnorm ---- */

static_assert(THREADS == BT_CUDA_NORM_THREADS, "rmsnorm blocks are the norm's block size");

static __global__ void rmsnorm_kernel(float *y, const float *x, const float *w, int64_t m,
                                      int64_t n, float eps)
{
    __shared__ float red[32];
    for (int64_t r = blockIdx.x; r < m; r += gridDim.x) {
        const float *xr = x + r * n;
        const float scale = bt_cuda_rms_scale(xr, n, eps, red);
        for (int64_t i = threadIdx.x; i < n; i += blockDim.x)
            y[r * n + i] = bt_cuda_rms_elem(xr[i], scale, w[i]);
    }
}

extern "C" void bt_cuda_rmsnorm_launch(cudaStream_t st, float *y, const float *x, const float *w,
                                       int64_t m, int64_t n, float eps)
{
    if (m <= 0)
        return;
    int grid = (int)(m < MAX_GRID ? m : MAX_GRID);
    rmsnorm_kernel<<<grid, THREADS, 0, st>>>(y, x, w, m, n, eps);
    BT_CUDA_CHECK(cudaGetLastError());
}

/* ---- rope ---- */

static __global__ void rope_kernel(float *x, const int32_t *pos, int64_t m, int n_heads,
                                   int head_dim, const float *inv_freq)
{
    const int half = head_dim / 2;
    const int64_t total = m * n_heads * half;
    for (int64_t t = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; t < total;
         t += (int64_t)gridDim.x * blockDim.x) {
        const int i = (int)(t % half);
        const int64_t rh = t / half; /* row * n_heads + head */
        const int64_t r = rh / n_heads;
        bt_cuda_rope_pair(x + rh * head_dim + 2 * i, pos[r], inv_freq[i]);
    }
}

extern "C" void bt_cuda_rope_launch(cudaStream_t st, float *x, const int32_t *pos, int64_t m,
                                    int n_heads, int head_dim, const float *inv_freq)
{
    const int64_t total = m * n_heads * (head_dim / 2);
    if (total <= 0)
        return;
    rope_kernel<<<grid_for(total), THREADS, 0, st>>>(x, pos, m, n_heads, head_dim, inv_freq);
    BT_CUDA_CHECK(cudaGetLastError());
}

/* ---- swiglu, add ---- */

static __global__ void swiglu_kernel(float *y, const float *gate, const float *up, int64_t n)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        y[i] = bt_cuda_silu_mul(gate[i], up[i]);
    }
}

extern "C" void bt_cuda_swiglu_launch(cudaStream_t st, float *y, const float *gate, const float *up,
                                      int64_t n)
{
    if (n <= 0)
        return;
    swiglu_kernel<<<grid_for(n), THREADS, 0, st>>>(y, gate, up, n);
    BT_CUDA_CHECK(cudaGetLastError());
}

static __global__ void add_kernel(float *y, const float *x, int64_t n)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        y[i] = bt_cuda_add_f32(y[i], x[i]);
}

extern "C" void bt_cuda_add_launch(cudaStream_t st, float *y, const float *x, int64_t n)
{
    if (n <= 0)
        return;
    add_kernel<<<grid_for(n), THREADS, 0, st>>>(y, x, n);
    BT_CUDA_CHECK(cudaGetLastError());
}

/* ---- gather_rows ---- */

/* y and x must not overlap (rows are copied in parallel). */
static __global__ void gather_kernel(float *y, const float *x, const int32_t *rows, int64_t m,
                                     int64_t n)
{
    for (int64_t r = blockIdx.x; r < m; r += gridDim.x) {
        const float *src = x + (int64_t)rows[r] * n;
        for (int64_t i = threadIdx.x; i < n; i += blockDim.x)
            y[r * n + i] = src[i];
    }
}

extern "C" void bt_cuda_gather_rows_launch(cudaStream_t st, float *y, const float *x,
                                           const int32_t *rows, int64_t m, int64_t n)
{
    if (m <= 0)
        return;
    int grid = (int)(m < MAX_GRID ? m : MAX_GRID);
    gather_kernel<<<grid, THREADS, 0, st>>>(y, x, rows, m, n);
    BT_CUDA_CHECK(cudaGetLastError());
}

/* ---- argmax of rows (greedy sampling on the device) ---- */

/* One block per row. Each thread keeps the first index of its largest value (NaNs and -inf
 * never replace the initial -inf), the block reduces preferring the larger value, then the
 * lower index; as bt_argmax_f32, 0 when x[0] is NaN or nothing is larger than it. */
static __global__ void argmax_kernel(int32_t *out, const float *x, int64_t m, int64_t n)
{
    __shared__ float sv[THREADS];
    __shared__ int32_t si[THREADS];
    for (int64_t r = blockIdx.x; r < m; r += gridDim.x) {
        const float *row = x + r * n;
        float best = -INFINITY;
        int32_t bi = -1;
        for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
            float v = row[i];
            if (v > best) {
                best = v;
                bi = (int32_t)i;
            }
        }
        sv[threadIdx.x] = best;
        si[threadIdx.x] = bi;
        __syncthreads();
        for (int s = blockDim.x / 2; s > 0; s >>= 1) {
            if (threadIdx.x < s) {
                float ov = sv[threadIdx.x + s], mv = sv[threadIdx.x];
                int32_t oi = si[threadIdx.x + s], mi = si[threadIdx.x];
                if (oi >= 0 && (mi < 0 || ov > mv || (ov == mv && oi < mi))) {
                    sv[threadIdx.x] = ov;
                    si[threadIdx.x] = oi;
                }
            }
            __syncthreads();
        }
        if (threadIdx.x == 0)
            out[r] = si[0] < 0 || !(row[0] < sv[0]) ? 0 : si[0];
        __syncthreads();
    }
}

extern "C" void bt_cuda_argmax_rows_launch(cudaStream_t st, int32_t *out, const float *x, int64_t m,
                                           int64_t n)
{
    if (m <= 0)
        return;
    int grid = (int)(m < MAX_GRID ? m : MAX_GRID);
    argmax_kernel<<<grid, THREADS, 0, st>>>(out, x, m, n);
    BT_CUDA_CHECK(cudaGetLastError());
}

/* ---- f32 -> bf16 / fp16 ---- */

/* dst[i] = v rounded to nearest even: the one rounding of both conversion kernels. */
static __device__ __forceinline__ void store16(void *dst, int type, int64_t i, float v)
{
    if (type == BT_TYPE_BF16)
        ((__nv_bfloat16 *)dst)[i] = __float2bfloat16_rn(v);
    else
        ((__half *)dst)[i] = __float2half_rn(v);
}

static __global__ void convert_kernel(void *dst, int type, const float *x, int64_t n)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        store16(dst, type, i, x[i]);
}

/* A 16-bit element of type (BF16 or F16) widened exactly, and a float rounded to one. */
static __device__ __forceinline__ float widen16(uint16_t b, int type)
{
    if (type == BT_TYPE_BF16)
        return __uint_as_float((uint32_t)b << 16);
    return __half2float(__ushort_as_half(b));
}

static __device__ __forceinline__ uint16_t narrow16(float v, int type)
{
    uint16_t b;
    if (type == BT_TYPE_BF16) {
        const __nv_bfloat16 r = __float2bfloat16_rn(v);
        memcpy(&b, &r, 2);
    } else {
        const __half r = __float2half_rn(v);
        memcpy(&b, &r, 2);
    }
    return b;
}

/* vec: all three pointers 16-byte aligned, so threads take 8 elements (16 bytes of each) at a
 * time and the last n % 8 one by one. */
static __global__ void swiglu16_kernel(uint16_t *h, const uint16_t *gate, const uint16_t *up,
                                       int type, int64_t n, int vec)
{
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    const int64_t n8 = vec ? n / 8 : 0;
    for (int64_t v = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; v < n8; v += stride) {
        const uint4 gr = ((const uint4 *)gate)[v], ur = ((const uint4 *)up)[v];
        uint16_t g[8], u[8], o[8];
        memcpy(g, &gr, 16);
        memcpy(u, &ur, 16);
#pragma unroll
        for (int i = 0; i < 8; i++)
            o[i] = narrow16(bt_cuda_silu_mul(widen16(g[i], type), widen16(u[i], type)), type);
        uint4 orr;
        memcpy(&orr, o, 16);
        ((uint4 *)h)[v] = orr;
    }
    for (int64_t i = n8 * 8 + blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += stride)
        h[i] = narrow16(bt_cuda_silu_mul(widen16(gate[i], type), widen16(up[i], type)), type);
}

extern "C" void bt_cuda_swiglu16_launch(cudaStream_t st, void *h, const void *gate, const void *up,
                                        int type, int64_t n)
{
    if (n <= 0)
        return;
    const int vec = (((uintptr_t)h | (uintptr_t)gate | (uintptr_t)up) % 16) == 0;
    swiglu16_kernel<<<grid_for(vec ? (n + 7) / 8 : n), THREADS, 0, st>>>(
        (uint16_t *)h, (const uint16_t *)gate, (const uint16_t *)up, type, n, vec);
    BT_CUDA_CHECK(cudaGetLastError());
}

extern "C" void bt_cuda_convert_launch(cudaStream_t st, void *dst, int type, const float *x,
                                       int64_t n)
{
    if (n <= 0)
        return;
    convert_kernel<<<grid_for(n), THREADS, 0, st>>>(dst, type, x, n);
    BT_CUDA_CHECK(cudaGetLastError());
}

/* rmsnorm_kernel and convert_kernel in one pass: each element is the f32 value rmsnorm would
 * store, rounded as convert_kernel rounds it, so the 16-bit rows are those bits. */
static __global__ void rms_convert_kernel(void *dst, int type, const float *x, const float *w,
                                          int64_t m, int64_t n, float eps)
{
    __shared__ float red[32];
    for (int64_t r = blockIdx.x; r < m; r += gridDim.x) {
        const float *xr = x + r * n;
        const float scale = bt_cuda_rms_scale(xr, n, eps, red);
        for (int64_t i = threadIdx.x; i < n; i += blockDim.x)
            store16(dst, type, r * n + i, bt_cuda_rms_elem(xr[i], scale, w[i]));
    }
}

extern "C" void bt_cuda_rms_convert_launch(cudaStream_t st, void *dst, int type, const float *x,
                                           const float *w, int64_t m, int64_t n, float eps)
{
    if (m <= 0)
        return;
    int grid = (int)(m < MAX_GRID ? m : MAX_GRID);
    rms_convert_kernel<<<grid, THREADS, 0, st>>>(dst, type, x, w, m, n, eps);
    BT_CUDA_CHECK(cudaGetLastError());
}
