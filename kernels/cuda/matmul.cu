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
 *
 * The pre-norm kernels (template flag NORM; the plain instantiations do not change) multiply
 * by rmsnorm(x) without it being written: each block first computes the rmsnorm scale of each
 * of its tokens with the rmsnorm kernel's own reduction (elementwise.cuh; a GEMV block has the
 * rmsnorm kernel's 256 threads), then the dot policy turns every x element it loads into the
 * value rmsnorm would have stored before multiplying. The products, and so the results, are
 * those of rmsnorm followed by the plain kernel on a 16-byte aligned buffer.
 */
#include <assert.h>

#include <cuda_fp16.h>

#include "cuda_impl.h"
#include "elementwise.cuh"
#include "launch.cuh"

#define GEMV_WARPS 8 /* weight rows per block */
#define MAX_GRID_Y 65535

static_assert(GEMV_WARPS * 32 == BT_CUDA_NORM_THREADS,
              "a pre-norm block reduces like the rmsnorm kernel: same thread count");

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
 * for NR = 2 as for NR = 1; unrolling changes which instructions interleave, never that order.
 *
 * With NORM, every x element is first replaced by rmsnorm's value for it, from its token's
 * scale (scale[i], shared memory) and the norm weight (norm, k floats): the same rounded value
 * the rmsnorm op stores, so the products that follow are the plain kernel's on rmsnorm's
 * output. Without it, scale and norm are not touched (they are NULL). */

/* A token's input element as the products take it: x, or with NORM the value the rmsnorm op
 * would store for it (element e of token i). */
template <bool NORM>
static __device__ __forceinline__ float xin(float x, const float *scale, int i, const float *norm,
                                            int64_t e)
{
    if constexpr (NORM)
        return bt_cuda_rms_elem(x, scale[i], __ldg(norm + e));
    else
        return x;
}

/* N (a multiple of 4) floats from 16-byte aligned p, in order. */
template <int N> static __device__ __forceinline__ void ldg_f32(const float *p, float *v)
{
#pragma unroll
    for (int q = 0; q < N / 4; q++) {
        const float4 t = __ldg((const float4 *)p + q);
        v[4 * q] = t.x;
        v[4 * q + 1] = t.y;
        v[4 * q + 2] = t.z;
        v[4 * q + 3] = t.w;
    }
}

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
    __device__ __forceinline__ int64_t row_bytes(int64_t k) const
    {
        return k * (TYPE == BT_TYPE_F32 ? 4 : 2);
    }
    template <int MT, int NR, bool NORM>
    __device__ __forceinline__ void sums(float (&acc)[NR][MT], const uint8_t *const (&w)[NR],
                                         const float *x, int64_t i0, int mt, int64_t k, int lane,
                                         const float *scale, const float *norm) const
    {
        constexpr int E = wvec<TYPE>::E;
        const int64_t n_chunks = k / E;
        /* One token: more weight pieces in flight per lane (the arithmetic order is the same).
         * The pre-norm kernels also hold the norm's piece: unrolled as far, four of them spilled
         * a few bytes (ptxas -v); by 2, none does, with about as many registers. */
#pragma unroll(NORM ? 2 : MT == 1 ? 8 : 4)
        for (int64_t c = lane; c < n_chunks; c += 32) {
            float wv[NR][E];
#pragma unroll
            for (int r = 0; r < NR; r++)
                wvec<TYPE>::unpack(__ldg((const uint4 *)w[r] + c), wv[r]);
            float nv[NORM ? E : 1]; /* the norm weight's elements of this piece */
            if constexpr (NORM)
                ldg_f32<E>(norm + c * E, nv);
#pragma unroll
            for (int i = 0; i < MT; i++) {
                if (i >= mt)
                    break;
                float xv[E];
                ldg_f32<E>(x + (i0 + i) * k + c * E, xv);
                if constexpr (NORM) {
#pragma unroll
                    for (int e = 0; e < E; e++)
                        xv[e] = bt_cuda_rms_elem(xv[e], scale[i], nv[e]);
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
    __device__ __forceinline__ int64_t row_bytes(int64_t k) const
    {
        return k * (type == BT_TYPE_F32 ? 4 : 2);
    }
    template <int MT, int NR, bool NORM>
    __device__ __forceinline__ void sums(float (&acc)[NR][MT], const uint8_t *const (&w)[NR],
                                         const float *x, int64_t i0, int mt, int64_t k, int lane,
                                         const float *scale, const float *norm) const
    {
        for (int64_t e = lane; e < k; e += 32) {
            float wv[NR];
#pragma unroll
            for (int r = 0; r < NR; r++)
                wv[r] = weight_elem(type, w[r], e);
#pragma unroll
            for (int i = 0; i < MT; i++)
                if (i < mt) {
                    const float xv = xin<NORM>(x[(i0 + i) * k + e], scale, i, norm, e);
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
    __device__ __forceinline__ int64_t row_bytes(int64_t k) const
    {
        return k / BT_QK8_0 * (int64_t)sizeof(bt_block_q8_0_t);
    }
    template <int MT, int NR, bool NORM>
    __device__ __forceinline__ void sums(float (&acc)[NR][MT], const uint8_t *const (&w)[NR],
                                         const float *x, int64_t i0, int mt, int64_t k, int lane,
                                         const float *scale, const float *norm) const
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
                        s = __fmaf_rn(xin<NORM>(xb[l], scale, i, norm, b * BT_QK8_0 + l), q[r][l],
                                      s);
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

/* A launch's pre-norm: rmsnorm's weight (k floats) and epsilon; w NULL for the plain kernels.
 * Its own kernel parameter: one more field in gemv_job_t made nvcc copy the job to local
 * memory in the plain multi-weight kernels. */
typedef struct {
    const float *w;
    float eps;
} gemv_norm_t;

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

/* The rmsnorm scales of the block's up to MT tokens (rows blockIdx.x * MT .. of x, k floats
 * each), in shared memory, computed exactly as the rmsnorm kernel computes them. Every thread
 * of the block must call it: the reductions and the final barrier take all of them. */
template <int MT>
static __device__ __forceinline__ const float *rms_scales(const float *x, int64_t m, int64_t k,
                                                          float eps)
{
    __shared__ float red[32], scale[MT];
    const int64_t i0 = (int64_t)blockIdx.x * MT;
    const int mt = m - i0 < MT ? (int)(m - i0) : MT; /* the same for the whole block */
    for (int i = 0; i < mt; i++) {
        const float s = bt_cuda_rms_scale(x + (i0 + i) * k, k, eps, red);
        if (threadIdx.x == 0)
            scale[i] = s;
    }
    __syncthreads(); /* scale[] written by thread 0, read by every warp */
    return scale;
}

/* One warp per global row, up to MT tokens; NR = 2 for EPI_SWIGLU (gate and up rows). A job
 * of one weight runs with NW = 1: the lookup over several weights keeps a few more registers
 * live, which would cost the plain matmul occupancy. NORM: the pre-norm kernel (nm.w set);
 * the whole block computes its tokens' scales before any warp past the last row leaves.
 *
 * Launched with PDL (launch.cuh), the blocks whose rows lie in the first prefetch bytes of the
 * launch's weights (x = 0 only) ask L2 for those rows, which no kernel writes, while the kernel
 * before it may still run: the rows needed first, and no more than L2 keeps while that kernel
 * streams its own. Every thread then waits for that kernel before it reads x or writes y. */
template <class DOT, int MT, int NR, int NW, bool NORM>
static __global__ void __launch_bounds__(GEMV_WARPS * 32)
    gemv_kernel(DOT dot, gemv_job_t jb, gemv_norm_t nm, const float *x, int64_t m, int64_t k,
                int64_t row0, int64_t prefetch)
{
    const int lane = threadIdx.x % 32;
    bt_cuda_pdl_trigger();
    gemv_row_t r;
    const bool has_row =
        job_row<NW>(jb, row0 + (int64_t)blockIdx.y * GEMV_WARPS + threadIdx.x / 32, &r);
    const uint8_t *w[NR];
    if (has_row) {
        w[0] = dot.row(r.w, r.j, k);
        if constexpr (NR == 2)
            w[1] = dot.row(jb.up, r.j, k);
        const int64_t bytes = dot.row_bytes(k);
        if (blockIdx.x == 0 && (int64_t)blockIdx.y * GEMV_WARPS * NR * bytes < prefetch) {
#pragma unroll
            for (int q = 0; q < NR; q++)
                for (int64_t off = (int64_t)lane * 128; off < bytes; off += 32 * 128)
                    bt_cuda_prefetch_l2(w[q] + off);
        }
    }
    bt_cuda_pdl_wait();
    const float *scale = nullptr;
    if constexpr (NORM)
        scale = rms_scales<MT>(x, m, k, nm.eps);
    if (!has_row)
        return;
    const int64_t i0 = (int64_t)blockIdx.x * MT;
    const int mt = m - i0 < MT ? (int)(m - i0) : MT;
    float acc[NR][MT];
#pragma unroll
    for (int q = 0; q < NR; q++)
#pragma unroll
        for (int i = 0; i < MT; i++)
            acc[q][i] = 0.0f;
    dot.template sums<MT, NR, NORM>(acc, w, x, i0, mt, k, lane, scale, nm.w);
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

/* Which dot policy a weight takes with an input whose rows are (x_aligned) or are not 16-byte
 * aligned. */
enum { PATH_Q8, PATH_SCALAR, PATH_VEC };

static int weight_path(const bt_tensor_t *w, int x_aligned)
{
    if (w->type == BT_TYPE_Q8_0)
        return PATH_Q8;
    const int e = w->type == BT_TYPE_F32 ? 4 : 8;
    /* The 16-byte path needs every weight row and activation row 16-byte aligned. */
    const int vec =
        w->cols % e == 0 && ((uintptr_t)w->data & 15) == 0 && x_aligned && w->cols % 4 == 0;
    return vec ? PATH_VEC : PATH_SCALAR;
}

static int aligned16(const void *p)
{
    return ((uintptr_t)p & 15) == 0;
}

/* The path for input x, and with a norm weight (pre-norm kernels, which read it as they read
 * x) for rmsnorm(x); norm NULL for the plain kernels. */
static int gemv_path(const bt_tensor_t *w, const float *x, const float *norm)
{
    return weight_path(w, aligned16(x) && aligned16(norm));
}

extern "C" int bt_cuda_gemv_rms_exact(const bt_tensor_t *w, const float *x, const float *norm)
{
    return gemv_path(w, x, norm) == weight_path(w, 1);
}

template <class DOT, int MT, int NR, int NW, bool NORM>
static void launch_rows(const bt_cuda_launch_t &ln, DOT dot, const gemv_job_t &jb, gemv_norm_t nm,
                        const float *x, int64_t m, int64_t k)
{
    const int64_t n = jb.end[jb.n_w - 1];
    const dim3 block(GEMV_WARPS * 32);
    const int64_t gx = (m + MT - 1) / MT;
    const int64_t rows_per_launch = (int64_t)MAX_GRID_Y * GEMV_WARPS;
    for (int64_t row0 = 0; row0 < n; row0 += rows_per_launch) {
        const int64_t nr = n - row0 < rows_per_launch ? n - row0 : rows_per_launch;
        const dim3 grid((unsigned)gx, (unsigned)((nr + GEMV_WARPS - 1) / GEMV_WARPS));
        bt_cuda_launch(ln, gemv_kernel<DOT, MT, NR, NW, NORM>, grid, block, 0, dot, jb, nm, x, m, k,
                       row0, ln.pdl ? ln.prefetch_bytes : (int64_t)0);
        BT_CUDA_CHECK(cudaGetLastError());
    }
}

template <int MT, int NR, int NW, bool NORM>
static void launch_path(const bt_cuda_launch_t &ln, const gemv_job_t &jb, gemv_norm_t nm, int type,
                        int path, const float *x, int64_t m, int64_t k)
{
    if (path == PATH_Q8) {
        launch_rows<q8_dot, MT, NR, NW, NORM>(ln, q8_dot{}, jb, nm, x, m, k);
    } else if (path == PATH_SCALAR) {
        launch_rows<scalar_dot, MT, NR, NW, NORM>(ln, scalar_dot{type}, jb, nm, x, m, k);
    } else if (type == BT_TYPE_BF16) {
        using D = vec_dot<BT_TYPE_BF16>;
        launch_rows<D, MT, NR, NW, NORM>(ln, D{}, jb, nm, x, m, k);
    } else if (type == BT_TYPE_F16) {
        using D = vec_dot<BT_TYPE_F16>;
        launch_rows<D, MT, NR, NW, NORM>(ln, D{}, jb, nm, x, m, k);
    } else {
        using D = vec_dot<BT_TYPE_F32>;
        launch_rows<D, MT, NR, NW, NORM>(ln, D{}, jb, nm, x, m, k);
    }
}

template <int NR, int NW, bool NORM>
static void launch_mt(const bt_cuda_launch_t &ln, const gemv_job_t &jb, gemv_norm_t nm, int type,
                      int path, const float *x, int64_t m, int64_t k)
{
    if (m >= 8)
        launch_path<8, NR, NW, NORM>(ln, jb, nm, type, path, x, m, k);
    else if (m >= 4)
        launch_path<4, NR, NW, NORM>(ln, jb, nm, type, path, x, m, k);
    else if (m >= 2)
        launch_path<2, NR, NW, NORM>(ln, jb, nm, type, path, x, m, k);
    else
        launch_path<1, NR, NW, NORM>(ln, jb, nm, type, path, x, m, k);
}

/* Runs a job whose weights are all of one type, k and path, on rmsnorm(x) when nm.w is set;
 * nothing for no rows. */
template <int NR, int NW>
static void launch_job(const bt_cuda_launch_t &ln, const gemv_job_t &jb, gemv_norm_t nm, int type,
                       int path, const float *x, int64_t m, int64_t k)
{
    if (m <= 0 || jb.n_w <= 0 || jb.end[jb.n_w - 1] <= 0)
        return;
    if (nm.w)
        launch_mt<NR, NW, true>(ln, jb, nm, type, path, x, m, k);
    else
        launch_mt<NR, NW, false>(ln, jb, nm, type, path, x, m, k);
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

static const gemv_norm_t no_norm = {NULL, 0.0f};

static void gemv_one(const bt_cuda_launch_t &ln, float *y, const bt_tensor_t *w, const float *x,
                     int64_t m, int epi, gemv_norm_t nm)
{
    launch_job<1, 1>(ln, job_one(y, w, epi), nm, w->type, gemv_path(w, x, nm.w), x, m, w->cols);
}

extern "C" void bt_cuda_gemv_launch(bt_cuda_launch_t ln, float *y, const bt_tensor_t *w,
                                    const float *x, int64_t m)
{
    gemv_one(ln, y, w, x, m, EPI_STORE, no_norm);
}

/* One launch when every weight takes the same path; a weight whose alignment sends it down
 * another path than the rest runs alone, so that each weight gets the bits its own matmul
 * would. */
static void gemv_multi(const bt_cuda_launch_t &ln, int n_w, float *const *y,
                       const bt_tensor_t *const *w, const float *x, int64_t m, gemv_norm_t nm)
{
    if (n_w <= 0)
        return;
    assert(n_w <= GEMV_MAX_W);
    const int path = gemv_path(w[0], x, nm.w);
    int same = 1;
    for (int t = 1; t < n_w; t++) {
        assert(w[t]->type == w[0]->type && w[t]->cols == w[0]->cols);
        same &= gemv_path(w[t], x, nm.w) == path;
    }
    if (!same) {
        for (int t = 0; t < n_w; t++)
            gemv_one(ln, y[t], w[t], x, m, EPI_STORE, nm);
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
        launch_job<1, 1>(ln, jb, nm, w[0]->type, path, x, m, w[0]->cols);
    else
        launch_job<1, GEMV_MAX_W>(ln, jb, nm, w[0]->type, path, x, m, w[0]->cols);
}

extern "C" void bt_cuda_gemv_multi_launch(bt_cuda_launch_t ln, int n_w, float *const *y,
                                          const bt_tensor_t *const *w, const float *x, int64_t m)
{
    gemv_multi(ln, n_w, y, w, x, m, no_norm);
}

extern "C" void bt_cuda_gemv_rms_multi_launch(bt_cuda_launch_t ln, int n_w, float *const *y,
                                              const bt_tensor_t *const *w, const float *x,
                                              const float *norm, float eps, int64_t m)
{
    assert(norm);
    gemv_multi(ln, n_w, y, w, x, m, gemv_norm_t{norm, eps});
}

extern "C" void bt_cuda_gemv_add_launch(bt_cuda_launch_t ln, float *y, const bt_tensor_t *w,
                                        const float *x, int64_t m)
{
    gemv_one(ln, y, w, x, m, EPI_ADD, no_norm);
}

/* Gate and up rows in one warp when both take the same path; otherwise (their alignments
 * differ) the gate's product goes to y first and the up launch applies swiglu to it. */
static void gemv_swiglu(const bt_cuda_launch_t &ln, float *y, const bt_tensor_t *gate,
                        const bt_tensor_t *up, const float *x, int64_t m, gemv_norm_t nm)
{
    assert(gate->type == up->type && gate->rows == up->rows && gate->cols == up->cols);
    const int path = gemv_path(gate, x, nm.w);
    if (gemv_path(up, x, nm.w) != path) {
        gemv_one(ln, y, gate, x, m, EPI_STORE, nm);
        gemv_one(ln, y, up, x, m, EPI_SILU_MUL, nm);
        return;
    }
    gemv_job_t jb = job_one(y, gate, EPI_SWIGLU);
    jb.up = (const uint8_t *)up->data;
    launch_job<2, 1>(ln, jb, nm, gate->type, path, x, m, gate->cols);
}

extern "C" void bt_cuda_gemv_swiglu_launch(bt_cuda_launch_t ln, float *y, const bt_tensor_t *gate,
                                           const bt_tensor_t *up, const float *x, int64_t m)
{
    gemv_swiglu(ln, y, gate, up, x, m, no_norm);
}

extern "C" void bt_cuda_gemv_rms_swiglu_launch(bt_cuda_launch_t ln, float *y,
                                               const bt_tensor_t *gate, const bt_tensor_t *up,
                                               const float *x, const float *norm, float eps,
                                               int64_t m)
{
    assert(norm);
    gemv_swiglu(ln, y, gate, up, x, m, gemv_norm_t{norm, eps});
}
