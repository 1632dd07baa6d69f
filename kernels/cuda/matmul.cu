/* SPDX-License-Identifier: MIT */
/*
 * matmul.cu - y[m][n] = x[m][k] . W^T with W of n rows (F32, F16, BF16 or Q8_0), f32
 * activations and f32 accumulation: the GEMV / skinny-GEMM kernels used for decode (and for
 * every matmul in deterministic mode), and their fused forms (several weights sharing one
 * input, a residual add, swiglu of a gate and an up projection).
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
 * through a scalar path with the same structure; Q8_0 has its own (one lane per 32-weight
 * block), correct but not tuned.
 *
 * Every form is one kernel skeleton (gemv_kernel) with a dot policy per path. A launch covers
 * the rows of up to GEMV_MAX_W weights stacked in order (a layer's q, k and v in one grid), and
 * each warp finds its weight from its global row. The policy accumulates the lane's share for
 * one row, or for a gate row and the up row of the same index at once (swiglu), each
 * accumulator in exactly the order of the one-row case; the epilogue then stores the sum, adds
 * it to y, or applies swiglu through the same device functions as the add and swiglu kernels.
 * A fused op therefore gives the bits of the matmuls followed by the element-wise op.
 */
#include <assert.h>

#include <cuda_fp16.h>

#include "cuda_impl.h"
#include "elementwise.cuh"

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

/* ---- dot policies: where row j of a weight starts, and one lane's partial sums ----
 *
 * sums() adds the lane's share of the dot products of NR weight rows (w[r], the same k) with
 * tokens i0 .. i0 + mt - 1 of x into acc[r][i]. Each accumulator only ever sees its own row's
 * products, in the path's fixed order, so acc[r][i] goes through the same rounded operations
 * for NR = 2 as for NR = 1; unrolling changes which instructions interleave, never that order. */

/* Row j of an F32, F16 or BF16 weight of k columns. */
static __device__ __forceinline__ const uint8_t *dense_row(const uint8_t *w, int type, int64_t j,
                                                           int64_t k)
{
    return w + (size_t)j * (size_t)k * (type == BT_TYPE_F32 ? 4 : 2);
}

/* The 16-byte path: lane l takes pieces l, l + 32, ... of each row. */
template <int TYPE> struct vec_dot {
    __device__ __forceinline__ const uint8_t *row(const uint8_t *w, int64_t j, int64_t k) const
    {
        return dense_row(w, TYPE, j, k);
    }
    template <int MT, int NR>
    __device__ __forceinline__ void sums(float (&acc)[NR][MT], const uint8_t *const (&w)[NR],
                                         const float *x, int64_t i0, int mt, int64_t k,
                                         int lane) const
    {
        constexpr int E = wvec<TYPE>::E;
        const int64_t n_chunks = k / E;
        /* One token: more weight pieces in flight per lane (the arithmetic order is the same). */
#pragma unroll(MT == 1 ? 8 : 4)
        for (int64_t c = lane; c < n_chunks; c += 32) {
            float wv[NR][E];
#pragma unroll
            for (int r = 0; r < NR; r++)
                wvec<TYPE>::unpack(__ldg((const uint4 *)w[r] + c), wv[r]);
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
                for (int r = 0; r < NR; r++)
#pragma unroll
                    for (int e = 0; e < E; e++)
                        acc[r][i] = __fmaf_rn(xv[e], wv[r][e], acc[r][i]);
            }
        }
    }
};

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
struct scalar_dot {
    int type;
    __device__ __forceinline__ const uint8_t *row(const uint8_t *w, int64_t j, int64_t k) const
    {
        return dense_row(w, type, j, k);
    }
    template <int MT, int NR>
    __device__ __forceinline__ void sums(float (&acc)[NR][MT], const uint8_t *const (&w)[NR],
                                         const float *x, int64_t i0, int mt, int64_t k,
                                         int lane) const
    {
        for (int64_t e = lane; e < k; e += 32) {
            float wv[NR];
#pragma unroll
            for (int r = 0; r < NR; r++)
                wv[r] = weight_elem(type, w[r], e);
#pragma unroll
            for (int i = 0; i < MT; i++)
                if (i < mt) {
                    const float xv = x[(i0 + i) * k + e];
#pragma unroll
                    for (int r = 0; r < NR; r++)
                        acc[r][i] = __fmaf_rn(xv, wv[r], acc[r][i]);
                }
        }
    }
};

/* Q8_0: lane l takes blocks l, l + 32, ...; each block's 32 products are summed in order and
 * scaled by the block's fp16 scale. */
struct q8_dot {
    __device__ __forceinline__ const uint8_t *row(const uint8_t *w, int64_t j, int64_t k) const
    {
        return (const uint8_t *)((const bt_block_q8_0_t *)w + j * (k / BT_QK8_0));
    }
    template <int MT, int NR>
    __device__ __forceinline__ void sums(float (&acc)[NR][MT], const uint8_t *const (&w)[NR],
                                         const float *x, int64_t i0, int mt, int64_t k,
                                         int lane) const
    {
        const int64_t nb = k / BT_QK8_0;
        for (int64_t b = lane; b < nb; b += 32) {
            float d[NR], q[NR][BT_QK8_0];
#pragma unroll
            for (int r = 0; r < NR; r++) {
                const bt_block_q8_0_t *blk = (const bt_block_q8_0_t *)w[r] + b;
                d[r] = __half2float(__ushort_as_half(blk->d));
#pragma unroll
                for (int l = 0; l < BT_QK8_0; l++)
                    q[r][l] = (float)blk->qs[l];
            }
#pragma unroll
            for (int i = 0; i < MT; i++) {
                if (i >= mt)
                    break;
                const float *xb = x + (i0 + i) * k + b * BT_QK8_0;
#pragma unroll
                for (int r = 0; r < NR; r++) {
                    float s = 0.0f;
#pragma unroll
                    for (int l = 0; l < BT_QK8_0; l++)
                        s = __fmaf_rn(xb[l], q[r][l], s);
                    acc[r][i] = __fmaf_rn(s, d[r], acc[r][i]);
                }
            }
        }
    }
};

/* ---- the kernel skeleton ---- */

#define GEMV_MAX_W BT_CUDA_GEMV_MAX_W

/* What the epilogue does with a row's sum s (and, for swiglu, the up row's sum u). */
enum {
    EPI_STORE,    /* y = s */
    EPI_ADD,      /* y = y + s: the add op after a matmul */
    EPI_SILU_MUL, /* y = silu(y) * s: y holds the gate's product, s is the up row's */
    EPI_SWIGLU,   /* y = silu(s) * u: two rows per warp (NR = 2) */
};

/* One launch's work: the rows of n_w weights (one type, k columns) stacked in order; global
 * row g belongs to the first weight t with g < end[t], as its row g - end[t - 1], and its
 * results go to y[t], a [m][rows of t] matrix. Passed by value (kernel parameter space). */
typedef struct {
    const uint8_t *w[GEMV_MAX_W];
    float *y[GEMV_MAX_W];
    int64_t end[GEMV_MAX_W]; /* rows of weights 0 .. t together */
    const uint8_t *up;       /* EPI_SWIGLU: the up weight, shaped as w[0] (n_w = 1) */
    int n_w;
    int epi;
} gemv_job_t;

typedef struct {
    const uint8_t *w; /* the weight's data */
    float *y;         /* its output */
    int64_t j, n;     /* the row within the weight, and the weight's rows */
} gemv_row_t;

/* The weight, output and row of global row g, looking at the first NW (1 or GEMV_MAX_W) of
 * the job's weights; false past the last row. Indexes with constants only (the loop is
 * unrolled), so the job stays in parameter space. */
template <int NW>
static __device__ __forceinline__ bool job_row(const gemv_job_t &jb, int64_t g, gemv_row_t *r)
{
    int64_t start = 0;
#pragma unroll
    for (int t = 0; t < NW; t++) {
        if (t < jb.n_w && g < jb.end[t]) {
            *r = {jb.w[t], jb.y[t], g - start, jb.end[t] - start};
            return true;
        }
        start = jb.end[t];
    }
    return false;
}

/* The value y[i][j] gets from the sums s of its row(s); reads y only to combine with it. */
template <int NR>
static __device__ __forceinline__ float epilogue(int epi, const float *y, const float (&s)[NR])
{
    if constexpr (NR == 2)
        return bt_cuda_silu_mul(s[0], s[1]); /* EPI_SWIGLU */
    else if (epi == EPI_ADD)
        return bt_cuda_add_f32(*y, s[0]);
    else if (epi == EPI_SILU_MUL)
        return bt_cuda_silu_mul(*y, s[0]);
    return s[0];
}

/* One warp per global row, up to MT tokens; NR = 2 for EPI_SWIGLU (gate and up rows). A job
 * of one weight runs with NW = 1: the lookup over several weights keeps a few more registers
 * live, which would cost the plain matmul occupancy. */
template <class DOT, int MT, int NR, int NW>
static __global__ void __launch_bounds__(GEMV_WARPS * 32)
    gemv_kernel(DOT dot, gemv_job_t jb, const float *x, int64_t m, int64_t k, int64_t row0)
{
    const int lane = threadIdx.x % 32;
    gemv_row_t r;
    if (!job_row<NW>(jb, row0 + (int64_t)blockIdx.y * GEMV_WARPS + threadIdx.x / 32, &r))
        return;
    const int64_t i0 = (int64_t)blockIdx.x * MT;
    const int mt = m - i0 < MT ? (int)(m - i0) : MT;
    const uint8_t *w[NR];
    w[0] = dot.row(r.w, r.j, k);
    if constexpr (NR == 2)
        w[1] = dot.row(jb.up, r.j, k);
    float acc[NR][MT];
#pragma unroll
    for (int q = 0; q < NR; q++)
#pragma unroll
        for (int i = 0; i < MT; i++)
            acc[q][i] = 0.0f;
    dot.template sums<MT, NR>(acc, w, x, i0, mt, k, lane);
#pragma unroll
    for (int i = 0; i < MT; i++) {
        float s[NR];
#pragma unroll
        for (int q = 0; q < NR; q++)
            s[q] = warp_sum(acc[q][i]);
        if (i < mt && lane == 0) {
            float *yp = r.y + (i0 + i) * r.n + r.j;
            *yp = epilogue<NR>(jb.epi, yp, s);
        }
    }
}

/* ---- launches ---- */

/* Which dot policy a weight takes with input x. */
enum { PATH_Q8, PATH_SCALAR, PATH_VEC };

static int gemv_path(const bt_tensor_t *w, const float *x)
{
    if (w->type == BT_TYPE_Q8_0)
        return PATH_Q8;
    const int e = w->type == BT_TYPE_F32 ? 4 : 8;
    /* The 16-byte path needs every weight row and activation row 16-byte aligned. */
    const int vec = w->cols % e == 0 && ((uintptr_t)w->data & 15) == 0 &&
                    ((uintptr_t)x & 15) == 0 && w->cols % 4 == 0;
    return vec ? PATH_VEC : PATH_SCALAR;
}

template <class DOT, int MT, int NR, int NW>
static void launch_rows(cudaStream_t st, DOT dot, const gemv_job_t &jb, const float *x, int64_t m,
                        int64_t k)
{
    const int64_t n = jb.end[jb.n_w - 1];
    const dim3 block(GEMV_WARPS * 32);
    const int64_t gx = (m + MT - 1) / MT;
    const int64_t rows_per_launch = (int64_t)MAX_GRID_Y * GEMV_WARPS;
    for (int64_t row0 = 0; row0 < n; row0 += rows_per_launch) {
        const int64_t nr = n - row0 < rows_per_launch ? n - row0 : rows_per_launch;
        const dim3 grid((unsigned)gx, (unsigned)((nr + GEMV_WARPS - 1) / GEMV_WARPS));
        gemv_kernel<DOT, MT, NR, NW><<<grid, block, 0, st>>>(dot, jb, x, m, k, row0);
        BT_CUDA_CHECK(cudaGetLastError());
    }
}

template <int MT, int NR, int NW>
static void launch_path(cudaStream_t st, const gemv_job_t &jb, int type, int path, const float *x,
                        int64_t m, int64_t k)
{
    if (path == PATH_Q8)
        launch_rows<q8_dot, MT, NR, NW>(st, q8_dot{}, jb, x, m, k);
    else if (path == PATH_SCALAR)
        launch_rows<scalar_dot, MT, NR, NW>(st, scalar_dot{type}, jb, x, m, k);
    else if (type == BT_TYPE_BF16)
        launch_rows<vec_dot<BT_TYPE_BF16>, MT, NR, NW>(st, vec_dot<BT_TYPE_BF16>{}, jb, x, m, k);
    else if (type == BT_TYPE_F16)
        launch_rows<vec_dot<BT_TYPE_F16>, MT, NR, NW>(st, vec_dot<BT_TYPE_F16>{}, jb, x, m, k);
    else
        launch_rows<vec_dot<BT_TYPE_F32>, MT, NR, NW>(st, vec_dot<BT_TYPE_F32>{}, jb, x, m, k);
}

/* Runs a job whose weights are all of one type, k and path; nothing for no rows. */
template <int NR, int NW>
static void launch_job(cudaStream_t st, const gemv_job_t &jb, int type, int path, const float *x,
                       int64_t m, int64_t k)
{
    if (m <= 0 || jb.n_w <= 0 || jb.end[jb.n_w - 1] <= 0)
        return;
    if (m >= 8)
        launch_path<8, NR, NW>(st, jb, type, path, x, m, k);
    else if (m >= 4)
        launch_path<4, NR, NW>(st, jb, type, path, x, m, k);
    else if (m >= 2)
        launch_path<2, NR, NW>(st, jb, type, path, x, m, k);
    else
        launch_path<1, NR, NW>(st, jb, type, path, x, m, k);
}

/* A job of one weight. */
static gemv_job_t job_one(float *y, const bt_tensor_t *w, int epi)
{
    gemv_job_t jb = {};
    jb.w[0] = (const uint8_t *)w->data;
    jb.y[0] = y;
    jb.end[0] = w->rows > 0 ? w->rows : 0;
    jb.n_w = 1;
    jb.epi = epi;
    return jb;
}

static void gemv_one(cudaStream_t st, float *y, const bt_tensor_t *w, const float *x, int64_t m,
                     int epi)
{
    launch_job<1, 1>(st, job_one(y, w, epi), w->type, gemv_path(w, x), x, m, w->cols);
}

extern "C" void bt_cuda_gemv_launch(cudaStream_t st, float *y, const bt_tensor_t *w, const float *x,
                                    int64_t m)
{
    gemv_one(st, y, w, x, m, EPI_STORE);
}

/* One launch when every weight takes the same path; a weight whose alignment sends it down
 * another path than the rest runs alone, so that each weight gets the bits its own matmul
 * would. */
extern "C" void bt_cuda_gemv_multi_launch(cudaStream_t st, int n_w, float *const *y,
                                          const bt_tensor_t *const *w, const float *x, int64_t m)
{
    if (n_w <= 0)
        return;
    assert(n_w <= GEMV_MAX_W);
    const int path = gemv_path(w[0], x);
    int same = 1;
    for (int t = 1; t < n_w; t++) {
        assert(w[t]->type == w[0]->type && w[t]->cols == w[0]->cols);
        same &= gemv_path(w[t], x) == path;
    }
    if (!same) {
        for (int t = 0; t < n_w; t++)
            gemv_one(st, y[t], w[t], x, m, EPI_STORE);
        return;
    }
    gemv_job_t jb = {};
    int64_t end = 0;
    for (int t = 0; t < n_w; t++) {
        end += w[t]->rows > 0 ? w[t]->rows : 0;
        jb.w[t] = (const uint8_t *)w[t]->data;
        jb.y[t] = y[t];
        jb.end[t] = end;
    }
    jb.n_w = n_w;
    jb.epi = EPI_STORE;
    if (n_w == 1)
        launch_job<1, 1>(st, jb, w[0]->type, path, x, m, w[0]->cols);
    else
        launch_job<1, GEMV_MAX_W>(st, jb, w[0]->type, path, x, m, w[0]->cols);
}

extern "C" void bt_cuda_gemv_add_launch(cudaStream_t st, float *y, const bt_tensor_t *w,
                                        const float *x, int64_t m)
{
    gemv_one(st, y, w, x, m, EPI_ADD);
}

/* Gate and up rows in one warp when both take the same path; otherwise (their alignments
 * differ) the gate's product goes to y first and the up launch applies swiglu to it. */
extern "C" void bt_cuda_gemv_swiglu_launch(cudaStream_t st, float *y, const bt_tensor_t *gate,
                                           const bt_tensor_t *up, const float *x, int64_t m)
{
    assert(gate->type == up->type && gate->rows == up->rows && gate->cols == up->cols);
    const int path = gemv_path(gate, x);
    if (gemv_path(up, x) != path) {
        gemv_one(st, y, gate, x, m, EPI_STORE);
        gemv_one(st, y, up, x, m, EPI_SILU_MUL);
        return;
    }
    gemv_job_t jb = job_one(y, gate, EPI_SWIGLU);
    jb.up = (const uint8_t *)up->data;
    launch_job<2, 1>(st, jb, gate->type, path, x, m, gate->cols);
}
