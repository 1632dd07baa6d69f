/* SPDX-License-Identifier: MIT */
/*
 * attention_mma.cu - causal GQA attention over the paged cache on tensor cores (WMMA, bf16 or
 * fp16 inputs, f32 accumulation), flash-attention style, for prefill in nondeterministic mode.
 *
 * The one thing to know: this kernel trades the SIMT kernel's guarantees for speed. Queries and
 * softmax weights are rounded to the cache's 16-bit type before they meet K and V, and the
 * summation order depends on where a row sits in its query tile, so a row does not give the
 * same bits as the same row in a decode step or in another batch. The backend uses it only
 * when the engine allows nondeterministic paths; otherwise attention.cu runs.
 *
 * A block is four warps over one (sequence, tile of 64 query vectors, KV head). Query vectors
 * are the GQA group's heads of a row, then the next rows (as in attention.cu), so one K/V tile
 * in shared memory serves every head of the group. Each warp owns 16 query vectors: it keeps
 * their Q fragments and their output rows (accumulator fragments) in registers for the whole
 * block. Per tile of 64 cached positions the warp computes its 16 x 64 scores with WMMA into
 * shared memory (the accumulator layout is opaque, so scores go through memory), runs the
 * online softmax there in f32 (base 2, masked by position), writes P in 16 bits and adds P.V
 * to its output fragments with WMMA. The softmax reference of a row moves only when a score
 * exceeds it by 2^8, so the output needs rescaling (a round trip through shared memory) on few
 * tiles. Tiles above a warp's last row are skipped; the block stops at the tile holding its
 * last row's position.
 */
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <math.h>
#include <mma.h>
#include <stdint.h>

#include "attention_tc.cuh"
#include "cuda_impl.h"

using namespace nvcuda;

#define BK 64             /* cached positions per tile */
#define SP (BK + 4)       /* score row pitch, floats (a multiple of 4, as WMMA requires) */
#define PP (BK + 8)       /* P row pitch, 16-bit elements (a multiple of 8) */
#define RESCALE_LOG2 8.0f /* the softmax reference moves when exceeded by this (base 2) */

/* Shared memory of one block for head_dim D. Pitches are padded by 16 bytes (rows start in
 * different banks) and every region starts 32-byte aligned, as WMMA loads and stores need.
 * Q is staged through the K region before the first tile (each warp keeps it in fragments). */
template <int D> struct mma_layout {
    static constexpr int KP = D + 8; /* K, V (and Q) row pitch, 16-bit elements */
    static constexpr int OP = D + 4; /* output staging row pitch, floats */
    static constexpr int SCR_FLOATS = 16 * (SP > OP ? SP : OP); /* scores, or the output */
    static constexpr size_t KV_BYTES = (size_t)BK * KP * 2;
    static constexpr size_t P_OFF = (size_t)SCR_FLOATS * 4;
    static constexpr size_t STAT_OFF = P_OFF + (size_t)16 * PP * 2;
    static constexpr size_t WARP_BYTES = STAT_OFF + 32 * 4; /* stats: alpha[16], 1/l[16] */
    static constexpr size_t BYTES = 2 * KV_BYTES + TC_WARPS * WARP_BYTES;
    static_assert(KV_BYTES % 32 == 0 && P_OFF % 32 == 0 && STAT_OFF % 32 == 0 &&
                      WARP_BYTES % 32 == 0,
                  "WMMA needs 32-byte aligned tiles");
};

template <typename T> static __device__ __forceinline__ T from_f32(float x);
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float x)
{
    return __float2bfloat16_rn(x);
}
template <> __device__ __forceinline__ __half from_f32<__half>(float x)
{
    return __float2half_rn(x);
}
static __device__ __forceinline__ float to_f32(__nv_bfloat16 x)
{
    return __bfloat162float(x);
}
static __device__ __forceinline__ float to_f32(__half x)
{
    return __half2float(x);
}

/* Query vectors [q_first, q_end) of the tile, rounded to T, into qs [TC_BQ][KP]; zeros past
 * q_end so that inactive fragment rows hold finite values. */
template <typename T, int D>
static __device__ void load_q(const tc_params_t &p, const bt_cuda_seq_t &s, int kvh,
                              int64_t q_first, int64_t q_end, T *qs)
{
    constexpr int KP = mma_layout<D>::KP, V4 = D / 4;
    for (int e = threadIdx.x; e < TC_BQ * V4; e += TC_THREADS) {
        const int j = e / V4, c = e % V4;
        const int64_t qi = q_first + j;
        float4 x = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        if (qi < q_end) {
            const int64_t row = s.row0 + qi / p.group;
            const int head = kvh * p.group + (int)(qi % p.group);
            x = ((const float4 *)(p.q + (row * p.n_heads + head) * D))[c];
        }
        T *d = qs + j * KP + 4 * c;
        d[0] = from_f32<T>(x.x);
        d[1] = from_f32<T>(x.y);
        d[2] = from_f32<T>(x.z);
        d[3] = from_f32<T>(x.w);
    }
}

/* K and V of positions [t0, t0 + BK) into ks and vs [BK][KP], copied as 16-byte pieces (the
 * cache already holds T); zeros from len on, where the block table may end, so that masked
 * weights (exactly 0) never meet garbage that could be NaN. */
template <typename T, int D>
static __device__ void load_kv(const tc_params_t &p, const bt_cuda_seq_t &s, int kvh, int32_t t0,
                               int32_t len, T *ks, T *vs)
{
    constexpr int KP = mma_layout<D>::KP, V8 = D / 8;
    const bt_kv_layer_t &kv = p.kv;
    const size_t row_bytes = (size_t)kv.n_kv_heads * D * sizeof(T);
    for (int e = threadIdx.x; e < BK * V8; e += TC_THREADS) {
        const int j = e / V8, c = e % V8;
        const int32_t pos = t0 + j;
        uint4 kx = make_uint4(0, 0, 0, 0), vx = kx;
        if (pos < len) {
            const uint8_t *kp = (const uint8_t *)kv.data +
                                (size_t)p.blocks[s.blk + pos / kv.block_size] * kv.block_bytes +
                                (size_t)(pos % kv.block_size) * row_bytes +
                                (size_t)kvh * D * sizeof(T);
            kx = ((const uint4 *)kp)[c];
            vx = ((const uint4 *)(kp + (size_t)kv.block_size * row_bytes))[c];
        }
        *(uint4 *)(ks + j * KP + 8 * c) = kx;
        *(uint4 *)(vs + j * KP + 8 * c) = vx;
    }
}

/* scr[16][SP] = the warp's queries . K^T for the tile (unscaled). */
template <typename T, int D>
static __device__ __forceinline__ void
tile_scores(const wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> *qf, const T *ks,
            float *scr)
{
    constexpr int KP = mma_layout<D>::KP;
#pragma unroll
    for (int n = 0; n < BK / 16; n++) {
        wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
        wmma::fill_fragment(acc, 0.0f);
#pragma unroll
        for (int kk = 0; kk < D / 16; kk++) {
            /* K stored [position][d] is K^T in column-major order. */
            wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> kb;
            wmma::load_matrix_sync(kb, ks + n * 16 * KP + kk * 16, KP);
            wmma::mma_sync(acc, qf[kk], kb, acc);
        }
        wmma::store_matrix_sync(scr + n * 16, acc, SP, wmma::mem_row_major);
    }
}

/* Online softmax of one score row, shared by two lanes (h = 0, 1: alternate columns). Writes
 * the row's weights to prow and its rescale factor to *alpha (lane h = 0), updates m and l, and
 * returns 1 when the row's output must be rescaled. m is a reference, not the exact running
 * maximum: it moves only when a score exceeds it by more than RESCALE_LOG2, so weights stay
 * below 2^RESCALE_LOG2 (no 16-bit overflow) and most tiles leave the output alone. A row that
 * is masked so far has m = -inf and an exponent reference of 0, so its weights are exactly 0
 * and nothing becomes NaN; its output and l are still zero when m first becomes finite. */
template <typename T>
static __device__ __forceinline__ int tile_softmax(const float *srow, T *prow, int r, int h,
                                                   int32_t t0, int32_t qpos, float scale_log2,
                                                   float *m, float *l, float *alpha)
{
    float x[BK / 2];
    float mx = -INFINITY;
#pragma unroll
    for (int c = 0; c < BK / 2; c++) {
        /* Rows 8-15 start one column pair later, so that the 32 lanes hit 32 banks. */
        const int col = 2 * ((c + (r >> 3)) & (BK / 2 - 1)) + h;
        x[c] = t0 + col <= qpos ? srow[col] * scale_log2 : -INFINITY;
        mx = fmaxf(mx, x[c]);
    }
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 16));
    float a = 1.0f;
    int rescale = 0;
    if (mx > *m + RESCALE_LOG2) {
        if (*m != -INFINITY) {
            a = exp2f(*m - mx);
            rescale = 1;
        }
        *m = mx;
    }
    const float ref = *m == -INFINITY ? 0.0f : *m;
    float sum = 0.0f;
#pragma unroll
    for (int c = 0; c < BK / 2; c++) {
        const int col = 2 * ((c + (r >> 3)) & (BK / 2 - 1)) + h;
        /* l sums the rounded weights that P.V uses, so that they are what gets normalised. */
        const T w = from_f32<T>(exp2f(x[c] - ref));
        prow[col] = w;
        sum += to_f32(w);
    }
    sum += __shfl_xor_sync(0xffffffffu, sum, 16);
    *l = *l * a + sum;
    if (h == 0)
        *alpha = a;
    return rescale;
}

/* of += P . V for the warp's 16 rows. */
template <typename T, int D>
static __device__ __forceinline__ void
tile_pv(const T *ps, const T *vs, wmma::fragment<wmma::accumulator, 16, 16, 16, float> *of)
{
    constexpr int KP = mma_layout<D>::KP;
    wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> pa[BK / 16];
#pragma unroll
    for (int kk = 0; kk < BK / 16; kk++)
        wmma::load_matrix_sync(pa[kk], ps + kk * 16, PP);
#pragma unroll
    for (int n = 0; n < D / 16; n++) {
#pragma unroll
        for (int kk = 0; kk < BK / 16; kk++) {
            wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> vb;
            wmma::load_matrix_sync(vb, vs + kk * 16 * KP + n * 16, KP);
            wmma::mma_sync(of[n], pa[kk], vb, of[n]);
        }
    }
}

/* Multiplies row i of the warp's output fragments by f[i], through scr (the fragment layout
 * is opaque). Leaves the scaled rows in scr [16][OP] as well. */
template <int D>
static __device__ __forceinline__ void
scale_rows(wmma::fragment<wmma::accumulator, 16, 16, 16, float> *of, float *scr, const float *f,
           int reload)
{
    constexpr int OP = mma_layout<D>::OP;
    const int lane = threadIdx.x % 32;
#pragma unroll
    for (int n = 0; n < D / 16; n++)
        wmma::store_matrix_sync(scr + n * 16, of[n], OP, wmma::mem_row_major);
    __syncwarp();
    for (int i = 0; i < 16; i++) {
        const float a = f[i];
        for (int c = lane; c < D; c += 32)
            scr[i * OP + c] *= a;
    }
    __syncwarp();
    if (!reload)
        return;
#pragma unroll
    for (int n = 0; n < D / 16; n++)
        wmma::load_matrix_sync(of[n], scr + n * 16, OP, wmma::mem_row_major);
}

/* blockIdx: x = query tile (reversed: the tiles with the longest contexts start first),
 * y = sequence, z = KV head. A warp's output rows stay in accumulator fragments; lane l holds
 * the softmax state of row l % 16 (m, l, identical in lane l ^ 16). */
template <typename T, int D>
static __global__ void __launch_bounds__(TC_THREADS) attn_mma_kernel(tc_params_t p)
{
    using L = mma_layout<D>;
    extern __shared__ __align__(128) unsigned char sm[];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    tc_tile_t t;
    if (!tc_block_tile(p, &t))
        return;
    const bt_cuda_seq_t &s = t.s;
    const int kvh = t.kvh;
    const int64_t q_first = t.q_first, q_end = t.q_end;
    const int32_t len = t.len;

    T *ks = (T *)sm, *vs = (T *)(sm + L::KV_BYTES);
    unsigned char *wsm = sm + 2 * L::KV_BYTES + (size_t)warp * L::WARP_BYTES;
    float *scr = (float *)wsm, *stat = (float *)(wsm + L::STAT_OFF);
    T *ps = (T *)(wsm + L::P_OFF);

    load_q<T, D>(p, s, kvh, q_first, q_end, ks);
    __syncthreads();
    wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> qf[D / 16];
#pragma unroll
    for (int kk = 0; kk < D / 16; kk++)
        wmma::load_matrix_sync(qf[kk], ks + warp * 16 * L::KP + kk * 16, L::KP);

    const int64_t w_first = q_first + warp * 16;
    const int64_t w_last = w_first + 15 < q_end - 1 ? w_first + 15 : q_end - 1;
    /* Position of the warp's last query (-1: none), and of this lane's softmax row. */
    const int32_t w_pos = w_last >= w_first ? s.n_past + (int32_t)(w_last / p.group) : -1;
    const int r = lane & 15, h = lane >> 4;
    const int32_t qpos = w_first + r < q_end ? s.n_past + (int32_t)((w_first + r) / p.group) : -1;
    float m = -INFINITY, l = 0.0f;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> of[D / 16];
#pragma unroll
    for (int n = 0; n < D / 16; n++)
        wmma::fill_fragment(of[n], 0.0f);

    for (int32_t t0 = 0; t0 < len; t0 += BK) {
        __syncthreads(); /* the previous tile (the Q staging, first time) is consumed */
        load_kv<T, D>(p, s, kvh, t0, len, ks, vs);
        __syncthreads();
        if (t0 > w_pos) /* warp-uniform: every weight of the tile would be 0 */
            continue;
        tile_scores<T, D>(qf, ks, scr);
        __syncwarp();
        const int rescale = tile_softmax<T>(scr + r * SP, ps + r * PP, r, h, t0, qpos, p.scale_log2,
                                            &m, &l, &stat[r]);
        __syncwarp(); /* scores read; P and alpha written */
        if (__any_sync(0xffffffffu, rescale))
            scale_rows<D>(of, scr, stat, 1);
        tile_pv<T, D>(ps, vs, of);
    }

    if (h == 0)
        stat[16 + r] = l > 0.0f ? 1.0f / l : 0.0f;
    __syncwarp();
    scale_rows<D>(of, scr, stat + 16, 0);
#pragma unroll
    for (int i = 0; i < 16; i++) {
        const int64_t qi = w_first + i;
        if (qi >= q_end)
            continue;
        const int64_t row = s.row0 + qi / p.group;
        const int head = kvh * p.group + (int)(qi % p.group);
        float *dst = p.out + (row * p.n_heads + head) * D;
        for (int c = lane; c < D; c += 32)
            dst[c] = scr[i * L::OP + c];
    }
}

/* bt_cuda_attention_mma_init and _launch. */
TC_ENTRY_POINTS(mma, attn_mma_kernel, mma_layout)
