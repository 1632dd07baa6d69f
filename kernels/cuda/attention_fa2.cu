/* SPDX-License-Identifier: MIT */
/*
 * attention_fa2.cu - causal GQA prefill attention over the paged cache in the FlashAttention-2
 * style: raw mma.sync tensor-core instructions with scores, softmax and weights in registers,
 * and K/V tiles streamed into shared memory by cp.async, double-buffered.
 *
 * The one thing to know: this is a drop-in for attention_mma.cu (same arguments, same shapes
 * taken and refused, same output layout) with the same nondeterministic-mode caveats: Q and the
 * softmax weights P are rounded to the cache's 16-bit type, and a row's bits depend on where it
 * sits in its query tile. What differs is where data lives. With raw mma.sync the fragment
 * layouts are documented, so the score fragments of Q K^T are fed straight back as the A operand
 * of P V, and only K and V ever go through shared memory.
 *
 * A block is four warps over one (sequence, tile of 64 query vectors, KV head). Query vectors
 * are the GQA group's heads of a row, then the next rows (as in attention.cu), so one K/V tile
 * serves every head of the group. Warp w owns query vectors 16w..16w+15 of the tile: their Q
 * (A fragments, read once from global memory), their 16 x D output (C fragments) and their
 * softmax state stay in registers for the whole block. Per tile of 64 cached positions:
 *   1. the block waits for the tile's K and V (one barrier), then issues the cp.async copies
 *      of the next tile into the other stage, which land while this one is computed: 16-byte
 *      pieces at each position's cache offset, zeros past the block's last position. The
 *      offsets come from shared memory, where a thread per position put them (its block from
 *      the table, its row in the block: the only divisions by the block size) from a load
 *      issued a tile before, so the table's latency is hidden too;
 *   2. S = Q K^T, 16 x 64 f32 scores per warp in 8 m16n8 accumulators, K by ldmatrix;
 *   3. online softmax on the accumulators (f32, base 2, scale folded in), masked by position
 *      only in tiles that reach past the warp's first position; a row's max and sum are shared
 *      by the 4 lanes (a quad) holding it, through shuffles;
 *   4. O = O * alpha + P V, P packed in registers into A fragments, V by ldmatrix .trans.
 * A warp skips tiles wholly above its last position; the block stops at the tile holding its
 * last position. At the end each row is divided by its sum and written as f32.
 *
 * Fragment layouts relied on (PTX ISA, mma.m16n8k16, .bf16/.f16 inputs, f32 accumulators;
 * g = lane / 4, c = lane % 4; a 32-bit register holds two 16-bit elements, the lower column of
 * A and C, or the lower k of B, in its low half):
 * - A 16x16, row: reg0 (row g, k 2c, 2c+1), reg1 (row g+8, k 2c, 2c+1), reg2 (row g,
 *   k 2c+8, 2c+9), reg3 (row g+8, k 2c+8, 2c+9).
 * - B 16x8, col: reg0 (k 2c, 2c+1; n g), reg1 (k 2c+8, 2c+9; n g).
 * - C 16x8, f32: c0, c1 (row g, n 2c, 2c+1), c2, c3 (row g+8, n 2c, 2c+1).
 * So the C fragments of score n-tiles 2j and 2j+1, packed pairwise, are the A fragment of
 * k-step j of P V. ldmatrix .x4: lane l gives the address of row l % 8 of matrix l / 8, and
 * lane t gets register i = (row t / 4, elements 2(t % 4), 2(t % 4) + 1) of matrix i, or with
 * .trans (rows 2(t % 4) and 2(t % 4) + 1 in the low and high half, element t / 4). K rows
 * [position][d] are then B's columns as they stand, and V rows [position][d] B's rows once
 * transposed.
 *
 * Shared memory: two stages of K and V, each [64 positions][D + 8] 16-bit elements, then the
 * two stages' position offsets (int64, 1 KiB), so 37 KiB at D = 64 and 69 KiB at D = 128.
 * Rows are padded by 16 bytes: the row pitch is then 4 x (an odd number) of 4-byte words, the
 * 8 rows an ldmatrix phase reads start 4 banks apart and cover all 32 banks once. Padding, not
 * an XOR swizzle, because it holds for every head dim taken (multiples of 16), where a 128-byte
 * swizzle needs multiples of 64.
 */
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "attention_tc.cuh"
#include "cuda_impl.h"

#define FA_BK 64 /* cached positions per tile */

template <int D> struct fa_layout {
    static constexpr int KP = D + 8; /* K and V row pitch, 16-bit elements */
    static constexpr uint32_t TILE_BYTES = (uint32_t)FA_BK * KP * 2; /* one K or V tile */
    static constexpr uint32_t STAGE_BYTES = 2 * TILE_BYTES;          /* K, then V */
    static constexpr uint32_t OFFS = 2 * STAGE_BYTES; /* [2][FA_BK] int64: the stages' offsets */
    static constexpr uint32_t BYTES = OFFS + 2 * FA_BK * sizeof(int64_t);
    static_assert(D % 16 == 0 && TILE_BYTES % 128 == 0, "16-byte rows, aligned tiles");
};

/* The two input types: packing two floats into one register (low half first) and the mma. */
template <typename T> struct fa_type;
template <> struct fa_type<__nv_bfloat16> {
    static __device__ __forceinline__ uint32_t pack(float lo, float hi)
    {
        const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
        uint32_t u;
        memcpy(&u, &v, sizeof u);
        return u;
    }
    static __device__ __forceinline__ void mma(float *d, const uint32_t *a, uint32_t b0,
                                               uint32_t b1)
    {
#ifdef BATON_CUDAEMU
        emu_mma_m16n8k16_bf16(d, a, b0, b1);
#else
        asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
            "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
    }
};
template <> struct fa_type<__half> {
    static __device__ __forceinline__ uint32_t pack(float lo, float hi)
    {
        const __half2 v = __floats2half2_rn(lo, hi);
        uint32_t u;
        memcpy(&u, &v, sizeof u);
        return u;
    }
    static __device__ __forceinline__ void mma(float *d, const uint32_t *a, uint32_t b0,
                                               uint32_t b1)
    {
#ifdef BATON_CUDAEMU
        emu_mma_m16n8k16_f16(d, a, b0, b1);
#else
        asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, "
            "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
    }
};

/* Memory operations in inline PTX carry a "memory" clobber so that the compiler keeps them in
 * order with __syncthreads and with each other. Each wrapper's BATON_CUDAEMU body is the
 * instruction on the emulated device (tests/cudaemu/cudaemu.h), for testing without one. */
static __device__ __forceinline__ void cp_async16(uint32_t dst, const void *src, int src_bytes)
{
    /* src_bytes = 0: no read, 16 zero bytes written. */
#ifdef BATON_CUDAEMU
    emu_cp_async_cg16(dst, src, src_bytes);
#else
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(src),
                 "r"(src_bytes)
                 : "memory");
#endif
}

static __device__ __forceinline__ void cp_async_commit(void)
{
#ifdef BATON_CUDAEMU
    emu_cp_async_commit_group();
#else
    asm volatile("cp.async.commit_group;" ::: "memory");
#endif
}

/* Waits until at most n of this thread's committed groups are still in flight. */
template <int n> static __device__ __forceinline__ void cp_async_wait(void)
{
#ifdef BATON_CUDAEMU
    emu_cp_async_wait_group(n);
#else
    asm volatile("cp.async.wait_group %0;" ::"n"(n) : "memory");
#endif
}

static __device__ __forceinline__ void ldsm_x4(uint32_t addr, uint32_t *r)
{
#ifdef BATON_CUDAEMU
    emu_ldmatrix_x4(addr, r, 0);
#else
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr)
                 : "memory");
#endif
}

static __device__ __forceinline__ void ldsm_x4_trans(uint32_t addr, uint32_t *r)
{
#ifdef BATON_CUDAEMU
    emu_ldmatrix_x4(addr, r, 1);
#else
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr)
                 : "memory");
#endif
}

/* 2^x on the special function unit. Flushing results below 2^-126 to zero changes no weight
 * that matters, and the non-flushing form costs extra instructions on the softmax's critical
 * unit. 2^-inf = +0, which the masking relies on. */
static __device__ __forceinline__ float fast_exp2(float x)
{
#ifdef BATON_CUDAEMU
    return emu_ex2_approx_ftz(x);
#else
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
#endif
}

/* The A fragments of query vectors qi0 (rows g) and qi0 + 8 (rows g + 8) over all of head_dim,
 * read from the f32 queries and rounded to T; zeros past q_end. */
template <typename T, int D>
static __device__ __forceinline__ void load_q(const tc_params_t &p, const bt_cuda_seq_t &s, int kvh,
                                              int64_t qi0, int64_t q_end, uint32_t (&qf)[D / 16][4])
{
    const int c = threadIdx.x % 4;
    const float *src[2];
#pragma unroll
    for (int h = 0; h < 2; h++) {
        const int64_t qi = qi0 + 8 * h;
        const int64_t row = s.row0 + qi / p.group;
        const int head = kvh * p.group + (int)(qi % p.group);
        src[h] = qi < q_end ? p.q + (row * p.n_heads + head) * D + 2 * c : NULL;
    }
#pragma unroll
    for (int kk = 0; kk < D / 16; kk++)
#pragma unroll
        for (int r = 0; r < 4; r++) { /* r: row half (r & 1), k half (r >> 1) */
            const float *x = src[r & 1];
            const float2 v =
                x ? __ldg((const float2 *)(x + 16 * kk + 8 * (r >> 1))) : make_float2(0.0f, 0.0f);
            qf[kk][r] = fa_type<T>::pack(v.x, v.y);
        }
}

/* This thread's share of a tile's copies: piece i (of FA_BK * D / 8 16-byte pieces, K and V
 * alike) is position (tid + i * TC_THREADS) / (D / 8) of the tile, 16-byte column
 * (tid + i * TC_THREADS) % (D / 8). */
template <int D> struct fa_share {
    static constexpr int N = FA_BK * (D / 8) / TC_THREADS; /* = D / 16 */
    static __device__ __forceinline__ int pos(int i)
    {
        return (threadIdx.x + i * TC_THREADS) / (D / 8);
    }
    static __device__ __forceinline__ int col(int i)
    {
        return (threadIdx.x + i * TC_THREADS) % (D / 8);
    }
};

/* The byte offset in the cache of position pos's K row (all KV heads), or -1 from len on (where
 * the table may end): its block from the table, its row in the block. One thread per position
 * and tile computes it, instead of every thread for each of its copies. */
template <typename T, int D>
static __device__ __forceinline__ int64_t pos_offset(const tc_params_t &p, const bt_cuda_seq_t &s,
                                                     int32_t pos, int32_t len)
{
    if (pos >= len)
        return -1;
    const bt_kv_layer_t &kv = p.kv;
    const int64_t row_bytes = (int64_t)kv.n_kv_heads * D * (int64_t)sizeof(T);
    return (int64_t)p.blocks[s.blk + pos / kv.block_size] * (int64_t)kv.block_bytes +
           (pos % kv.block_size) * row_bytes;
}

/* Issues the cp.async copies of K and V of a tile's positions, at offs ([FA_BK], from
 * pos_offset), into the stage at stage (a shared address): [FA_BK][KP] K, then the same for V.
 * Positions from len on are zeros, so that masked weights (exactly 0) never meet garbage that
 * could be NaN. */
template <typename T, int D>
static __device__ __forceinline__ void load_tile(const tc_params_t &p, int kvh, const int64_t *offs,
                                                 uint32_t stage)
{
    using L = fa_layout<D>;
    const bt_kv_layer_t &kv = p.kv;
    const size_t v_off = (size_t)kv.block_size * kv.n_kv_heads * D * sizeof(T);
    const uint8_t *head = (const uint8_t *)kv.data + (size_t)kvh * D * sizeof(T);
#pragma unroll
    for (int i = 0; i < fa_share<D>::N; i++) {
        const int j = fa_share<D>::pos(i), c = fa_share<D>::col(i);
        const int64_t off = offs[j];
        const uint8_t *k = (const uint8_t *)kv.data, *v = k;
        int bytes = 0;
        if (off >= 0) {
            k = head + off + 8 * c * sizeof(T);
            v = k + v_off;
            bytes = 16;
        }
        const uint32_t dst = stage + (uint32_t)(j * L::KP + 8 * c) * 2;
        cp_async16(dst, k, bytes);
        cp_async16(dst + L::TILE_BYTES, v, bytes);
    }
}

/* sc = the warp's 16 query vectors . K^T of the tile, unscaled. k_lane: this lane's ldmatrix
 * row address in the stage's K. One .x4 load gives B of two n-tiles for one k-step: matrices
 * (positions +0..7, d +0..7), (+0..7, +8..15), (+8..15, +0..7), (+8..15, +8..15). */
template <typename T, int D>
static __device__ __forceinline__ void tile_scores(const uint32_t (&qf)[D / 16][4], uint32_t k_lane,
                                                   float (&sc)[FA_BK / 8][4])
{
    constexpr int KP = fa_layout<D>::KP;
#pragma unroll
    for (int n = 0; n < FA_BK / 8; n++)
#pragma unroll
        for (int e = 0; e < 4; e++)
            sc[n][e] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < D / 16; kk++)
#pragma unroll
        for (int np = 0; np < FA_BK / 16; np++) {
            uint32_t b[4];
            ldsm_x4(k_lane + (uint32_t)(np * 16 * KP + kk * 16) * 2, b);
            fa_type<T>::mma(sc[2 * np], qf[kk], b[0], b[1]);
            fa_type<T>::mma(sc[2 * np + 1], qf[kk], b[2], b[3]);
        }
}

/* Online softmax of this lane's share of rows g (h = 0: elements 0, 1 of each n-tile) and
 * g + 8 (h = 1: elements 2, 3). Turns sc into the weights 2^(x - m), x = score * scale_log2
 * (-inf where masked: position past qpos[h]), rescales o and the lane's partial sums l by
 * alpha = 2^(m_old - m_new). m is the row's running max, the same in the 4 lanes of the quad;
 * l is this lane's part of the row sum, which needs no shuffles until the end because alpha is
 * the same across the quad. A row masked so far has m = -inf: its reference becomes 0, so its
 * weights are 2^-inf = 0 and alpha is 2^-inf = 0 (its o and l are still 0), never the NaN of
 * 2^((-inf) - (-inf)). */
template <int D>
static __device__ __forceinline__ void
tile_softmax(float (&sc)[FA_BK / 8][4], float (&o)[D / 8][4], float *m, float *l, int32_t t0,
             const int32_t *qpos, int masked, float scale_log2)
{
    const int c = threadIdx.x % 4;
    float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int n = 0; n < FA_BK / 8; n++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
            float x = sc[n][e] * scale_log2;
            if (masked && t0 + 8 * n + 2 * c + (e & 1) > qpos[e >> 1])
                x = -INFINITY;
            sc[n][e] = x;
            mx[e >> 1] = fmaxf(mx[e >> 1], x);
        }
    float ref[2], alpha[2], sum[2] = {0.0f, 0.0f};
#pragma unroll
    for (int h = 0; h < 2; h++) {
        mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 1));
        mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 2));
        const float mn = fmaxf(m[h], mx[h]);
        ref[h] = mn == -INFINITY ? 0.0f : mn;
        alpha[h] = fast_exp2(m[h] - ref[h]);
        m[h] = mn;
    }
#pragma unroll
    for (int n = 0; n < FA_BK / 8; n++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
            sc[n][e] = fast_exp2(sc[n][e] - ref[e >> 1]);
            sum[e >> 1] += sc[n][e];
        }
#pragma unroll
    for (int h = 0; h < 2; h++)
        l[h] = l[h] * alpha[h] + sum[h];
#pragma unroll
    for (int n = 0; n < D / 8; n++)
#pragma unroll
        for (int e = 0; e < 4; e++)
            o[n][e] *= alpha[e >> 1];
}

/* o += P . V. P's k-step j (positions 16j..16j+15) is score n-tiles 2j, 2j+1 packed pairwise.
 * v_lane: this lane's ldmatrix row address in the stage's V; one .x4.trans load gives B of two
 * output n-tiles for one k-step: matrices (positions +0..7, d +0..7), (+8..15, +0..7),
 * (+0..7, +8..15), (+8..15, +8..15). */
template <typename T, int D>
static __device__ __forceinline__ void tile_pv(const float (&sc)[FA_BK / 8][4], uint32_t v_lane,
                                               float (&o)[D / 8][4])
{
    constexpr int KP = fa_layout<D>::KP;
#pragma unroll
    for (int j = 0; j < FA_BK / 16; j++) {
        const uint32_t a[4] = {fa_type<T>::pack(sc[2 * j][0], sc[2 * j][1]),
                               fa_type<T>::pack(sc[2 * j][2], sc[2 * j][3]),
                               fa_type<T>::pack(sc[2 * j + 1][0], sc[2 * j + 1][1]),
                               fa_type<T>::pack(sc[2 * j + 1][2], sc[2 * j + 1][3])};
#pragma unroll
        for (int dp = 0; dp < D / 16; dp++) {
            uint32_t b[4];
            ldsm_x4_trans(v_lane + (uint32_t)(j * 16 * KP + dp * 16) * 2, b);
            fa_type<T>::mma(o[2 * dp], a, b[0], b[1]);
            fa_type<T>::mma(o[2 * dp + 1], a, b[2], b[3]);
        }
    }
}

/* Divides the rows by their sums (quad-reduced here) and writes query vectors qi0, qi0 + 8 as
 * f32 rows of out, [row][head][D] like the queries. */
template <int D>
static __device__ __forceinline__ void store_out(const tc_params_t &p, const bt_cuda_seq_t &s,
                                                 int kvh, int64_t qi0, int64_t q_end,
                                                 const float (&o)[D / 8][4], const float *l)
{
    const int c = threadIdx.x % 4;
#pragma unroll
    for (int h = 0; h < 2; h++) {
        float sum = l[h];
        sum += __shfl_xor_sync(0xffffffffu, sum, 1);
        sum += __shfl_xor_sync(0xffffffffu, sum, 2);
        const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
        const int64_t qi = qi0 + 8 * h;
        if (qi >= q_end)
            continue;
        const int64_t row = s.row0 + qi / p.group;
        const int head = kvh * p.group + (int)(qi % p.group);
        float *dst = p.out + (row * p.n_heads + head) * D + 2 * c;
#pragma unroll
        for (int n = 0; n < D / 8; n++) {
            dst[8 * n] = o[n][2 * h] * inv;
            dst[8 * n + 1] = o[n][2 * h + 1] * inv;
        }
    }
}

/* blockIdx: x = query tile (reversed: the tiles with the longest contexts start first),
 * y = sequence, z = KV head. Lane l holds rows g = l / 4 and g + 8 of its warp's 16. */
template <typename T, int D>
static __global__ void __launch_bounds__(TC_THREADS) attn_fa2_kernel(tc_params_t p)
{
    using L = fa_layout<D>;
    extern __shared__ __align__(128) unsigned char sm[];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    tc_tile_t t;
    if (!tc_block_tile(p, &t))
        return;
    const bt_cuda_seq_t &s = t.s;
    const int kvh = t.kvh;
    const int64_t q_first = t.q_first, q_end = t.q_end;
    const int32_t len = t.len;
    const int n_tiles = (len + FA_BK - 1) / FA_BK;
    const uint32_t base = (uint32_t)__cvta_generic_to_shared(sm);
    /* Tile t's position offsets are at offs + (t & 1) * FA_BK, thread j < FA_BK writing
     * position j's. next: this thread's position in the tile after the one whose copies were
     * issued last, loaded from the table a tile before it is stored, so that the store does not
     * wait on the load. The first tile's are needed at once (one more barrier). */
    int64_t *offs = (int64_t *)(sm + L::OFFS), next = -1;
    if (threadIdx.x < FA_BK) {
        offs[threadIdx.x] = pos_offset<T, D>(p, s, threadIdx.x, len);
        next = pos_offset<T, D>(p, s, FA_BK + threadIdx.x, len);
    }
    __syncthreads();
    load_tile<T, D>(p, kvh, offs, base);
    cp_async_commit();

    /* Positions of this lane's two rows (-1: none) and of the warp's first and last query
     * vectors (-1: the warp has none). */
    const int64_t w_first = q_first + warp * 16, qi0 = w_first + lane / 4;
    const int64_t w_last = w_first + 15 < q_end - 1 ? w_first + 15 : q_end - 1;
    const int32_t w_lo = w_first < q_end ? s.n_past + (int32_t)(w_first / p.group) : -1;
    const int32_t w_hi = w_first < q_end ? s.n_past + (int32_t)(w_last / p.group) : -1;
    int32_t qpos[2];
#pragma unroll
    for (int h = 0; h < 2; h++)
        qpos[h] = qi0 + 8 * h < q_end ? s.n_past + (int32_t)((qi0 + 8 * h) / p.group) : -1;

    uint32_t qf[D / 16][4];
    load_q<T, D>(p, s, kvh, qi0, q_end, qf);
    float o[D / 8][4], m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
#pragma unroll
    for (int n = 0; n < D / 8; n++)
#pragma unroll
        for (int e = 0; e < 4; e++)
            o[n][e] = 0.0f;
    /* ldmatrix row addresses (see tile_scores and tile_pv for the matrices' order). */
    const uint32_t k_lane =
        base + (uint32_t)(((lane & 7) + (lane >> 4) * 8) * L::KP + ((lane >> 3) & 1) * 8) * 2;
    const uint32_t v_lane =
        base + L::TILE_BYTES +
        (uint32_t)(((lane & 7) + ((lane >> 3) & 1) * 8) * L::KP + (lane >> 4) * 8) * 2;

    for (int i = 0; i < n_tiles; i++) {
        cp_async_wait<0>(); /* tile i, the only group in flight, has landed for this thread */
        /* Tile i + 1's offsets, over tile i - 1's, which were read before the last barrier. */
        if (threadIdx.x < FA_BK)
            offs[((i + 1) & 1) * FA_BK + threadIdx.x] = next;
        /* After it tile i has landed for every thread and tile i + 1's offsets are there for
         * every thread; and every warp is done with tile i - 1, so its stage ((i + 1) & 1) may
         * be refilled with tile i + 1 while tile i is computed. */
        __syncthreads();
        if (i + 1 < n_tiles) {
            load_tile<T, D>(p, kvh, offs + ((i + 1) & 1) * FA_BK,
                            base + ((i + 1) & 1) * L::STAGE_BYTES);
            cp_async_commit();
            if (threadIdx.x < FA_BK)
                next = pos_offset<T, D>(p, s, (i + 2) * FA_BK + threadIdx.x, len);
        }
        const int32_t t0 = i * FA_BK;
        if (t0 > w_hi) /* warp-uniform: every weight of the tile would be 0 */
            continue;
        const uint32_t st = (i & 1) * L::STAGE_BYTES;
        float sc[FA_BK / 8][4];
        tile_scores<T, D>(qf, k_lane + st, sc);
        tile_softmax<D>(sc, o, m, l, t0, qpos, t0 + FA_BK - 1 > w_lo, p.scale_log2);
        tile_pv<T, D>(sc, v_lane + st, o);
    }
    store_out<D>(p, s, kvh, qi0, q_end, o, l);
}

/* bt_cuda_attention_fa2_init and _launch (the same shapes as attention_mma.cu). */
TC_ENTRY_POINTS(fa2, attn_fa2_kernel, fa_layout)
