/* SPDX-License-Identifier: MIT */
/*
 * attention.cu - paged KV cache writes (kv_store) and causal GQA attention over the paged cache
 * for prefill and decode rows alike, with split chunks (flash-decoding) for long contexts.
 *
 * The one thing to know: a query at position p always performs the same arithmetic. Its cached
 * positions 0..p are cut into chunks of the context's chunk size and each chunk into tiles
 * of BT_CUDA_ATTN_TILE (one position per lane). Within a chunk an online softmax runs tile by
 * tile in position order (scores are fixed-order dot products, tile sums a fixed shuffle
 * tree); the chunk states are then merged in chunk order. A launch either walks the chunks of
 * a block's queries one after the other (prefill, big batches) or gives each chunk its own
 * block, whose partial state the last of them to finish merges in chunk order (decode of few
 * sequences over long contexts); both apply the same merge to the same chunk states, so the
 * result does not
 * depend on the launch shape, the batch, or whether the row came from a prefill or a decode
 * step. All arithmetic that matters uses the explicitly rounded intrinsics, so the compiler
 * cannot contract it differently in the two kernels.
 *
 * A block is four warps over one (sequence, KV head): QPW query vectors per warp (the heads of
 * the group for one row, then the next rows), sharing each K/V tile, which the block converts
 * to f32 in shared memory (rows padded by one float so the per-lane score loop is free of bank
 * conflicts); the next tile's loads are issued into registers before the current one is
 * computed. This is a SIMT kernel; in nondeterministic mode prefills run on tensor cores
 * instead (attention_mma.cu).
 */
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <math.h>

#include "cuda_impl.h"
#include "elementwise.cuh"
#include "launch.cuh"

#define ATT_WARPS 4
#define TILE BT_CUDA_ATTN_TILE
#define ND (BT_MAX_HEAD_DIM / 32) /* head dims per lane, at most */
#define MAX_GRID_YZ 65535

/* ---- kv_store ---- */

static __device__ __forceinline__ void store_elem(uint8_t *dst, int type, int64_t i, float v)
{
    if (type == BT_TYPE_F32)
        ((float *)dst)[i] = v;
    else if (type == BT_TYPE_F16)
        ((__half *)dst)[i] = __float2half_rn(v);
    else
        ((__nv_bfloat16 *)dst)[i] = __float2bfloat16_rn(v);
}

static __device__ __forceinline__ int elem_size(int type)
{
    return type == BT_TYPE_F32 ? 4 : 2;
}

/* Where row r of sequence s goes in the cache: its K row (all KV heads) in *kd, its V row in
 * *vd. */
static __device__ __forceinline__ void cache_rows(const bt_kv_layer_t &kv, const bt_cuda_seq_t &s,
                                                  const int32_t *blocks, int32_t r, uint8_t **kd,
                                                  uint8_t **vd)
{
    const size_t row_bytes = (size_t)kv.n_kv_heads * kv.head_dim * elem_size(kv.type);
    const int32_t pos = s.n_past + r;
    *kd = (uint8_t *)kv.data + (size_t)blocks[s.blk + pos / kv.block_size] * kv.block_bytes +
          (size_t)(pos % kv.block_size) * row_bytes;
    *vd = *kd + (size_t)kv.block_size * row_bytes;
}

static __global__ void kv_store_kernel(bt_kv_layer_t kv, const float *k, const float *v,
                                       const bt_cuda_seq_t *seqs, const int32_t *blocks)
{
    const bt_cuda_seq_t s = seqs[blockIdx.y];
    const int32_t r = blockIdx.x;
    if (r >= s.n_new)
        return;
    const int64_t row_elems = (int64_t)kv.n_kv_heads * kv.head_dim;
    uint8_t *kd, *vd;
    cache_rows(kv, s, blocks, r, &kd, &vd);
    const int64_t src = (int64_t)(s.row0 + r) * row_elems;
    for (int64_t i = threadIdx.x; i < row_elems; i += blockDim.x) {
        store_elem(kd, kv.type, i, k[src + i]);
        store_elem(vd, kv.type, i, v[src + i]);
    }
}

extern "C" void bt_cuda_kv_store_launch(cudaStream_t st, const bt_kv_layer_t *kv, const float *k,
                                        const float *v, const bt_cuda_seq_t *seqs,
                                        const int32_t *blocks, int n_seqs, int32_t max_new)
{
    if (n_seqs <= 0 || max_new <= 0)
        return;
    const dim3 grid((unsigned)max_new, (unsigned)n_seqs);
    kv_store_kernel<<<grid, 128, 0, st>>>(*kv, k, v, seqs, blocks);
    BT_CUDA_CHECK(cudaGetLastError());
}

/* rope of q and k, then kv_store of k and v, for one row per block (blockIdx.x of sequence
 * blockIdx.y): the rope and kv_store kernels' arithmetic on the same elements (a head's pair
 * (2i, 2i + 1) is its element pair t = head * head_dim / 2 + i, at 2t of the row). */
static __global__ void rope_kv_store_kernel(float *q, float *k, const float *v, const int32_t *pos,
                                            int n_heads, const float *inv_freq, bt_kv_layer_t kv,
                                            const bt_cuda_seq_t *seqs, const int32_t *blocks)
{
    const bt_cuda_seq_t s = seqs[blockIdx.y];
    const int32_t r = blockIdx.x;
    if (r >= s.n_new)
        return;
    const int64_t row = s.row0 + r;
    const int half = kv.head_dim / 2;
    const int32_t p = pos[row];
    float *qr = q + row * n_heads * kv.head_dim;
    for (int t = threadIdx.x; t < n_heads * half; t += blockDim.x)
        bt_cuda_rope_pair(qr + 2 * t, p, inv_freq[t % half]);
    const int64_t row_elems = (int64_t)kv.n_kv_heads * kv.head_dim;
    uint8_t *kd, *vd;
    cache_rows(kv, s, blocks, r, &kd, &vd);
    float *kr = k + row * row_elems;
    const float *vr = v + row * row_elems;
    for (int t = threadIdx.x; t < kv.n_kv_heads * half; t += blockDim.x) {
        bt_cuda_rope_pair(kr + 2 * t, p, inv_freq[t % half]);
        store_elem(kd, kv.type, 2 * t, kr[2 * t]);
        store_elem(kd, kv.type, 2 * t + 1, kr[2 * t + 1]);
        store_elem(vd, kv.type, 2 * t, vr[2 * t]);
        store_elem(vd, kv.type, 2 * t + 1, vr[2 * t + 1]);
    }
}

extern "C" void bt_cuda_rope_kv_store_launch(cudaStream_t st, float *q, float *k, const float *v,
                                             const int32_t *pos, int n_heads, const float *inv_freq,
                                             const bt_kv_layer_t *kv, const bt_cuda_seq_t *seqs,
                                             const int32_t *blocks, int n_seqs, int32_t max_new)
{
    if (n_seqs <= 0 || max_new <= 0)
        return;
    const dim3 grid((unsigned)max_new, (unsigned)n_seqs);
    rope_kv_store_kernel<<<grid, 128, 0, st>>>(q, k, v, pos, n_heads, inv_freq, *kv, seqs, blocks);
    BT_CUDA_CHECK(cudaGetLastError());
}

/* ---- attention ---- */

typedef struct {
    float *out;
    const float *q;
    bt_kv_layer_t kv;
    const bt_cuda_seq_t *seqs;
    const int32_t *blocks;
    float *part;    /* split partials: [row][head][chunk][2 + head_dim] */
    int32_t *count; /* split: chunk blocks done per (query block, sequence, KV head); zero between
                       launches */
    int n_heads, group;
    int n_chunks; /* chunks of the longest query: the partials' chunk stride */
    int chunk;    /* positions per chunk, a multiple of TILE */
    float scale;
} attn_params_t;

typedef struct {
    float m, l;
    float acc[ND];
} attn_state_t;

static __device__ __forceinline__ float warp_sum(float v)
{
    for (int o = 16; o > 0; o >>= 1)
        v = __fadd_rn(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

static __device__ __forceinline__ float warp_max(float v)
{
    for (int o = 16; o > 0; o >>= 1)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

static __device__ __forceinline__ void state_clear(attn_state_t *s)
{
    s->m = -INFINITY;
    s->l = 0.0f;
#pragma unroll
    for (int i = 0; i < ND; i++)
        s->acc[i] = 0.0f;
}

/* total = total (+) chunk: the one merge both launch shapes use. */
static __device__ __forceinline__ void state_merge(attn_state_t *t, float m, float l,
                                                   const float *acc)
{
    const float mn = fmaxf(t->m, m);
    const float fa = expf(t->m - mn), fb = expf(m - mn);
    t->l = __fadd_rn(__fmul_rn(t->l, fa), __fmul_rn(l, fb));
#pragma unroll
    for (int i = 0; i < ND; i++)
        t->acc[i] = __fadd_rn(__fmul_rn(t->acc[i], fa), __fmul_rn(acc[i], fb));
    t->m = mn;
}

static __device__ __forceinline__ float kv_load(const uint8_t *p, int type, int d)
{
    if (type == BT_TYPE_F32)
        return ((const float *)p)[d];
    const uint16_t h = ((const uint16_t *)p)[d];
    if (type == BT_TYPE_BF16)
        return __uint_as_float((uint32_t)h << 16);
    return __half2float(__ushort_as_half(h));
}

/* The 16 bytes at w widened exactly to f32: 4 (F32) or 8 (F16, BF16) elements, in order. */
static __device__ __forceinline__ int kv_unpack16(uint4 r, int type, float *out)
{
    const uint32_t u[4] = {r.x, r.y, r.z, r.w};
    if (type == BT_TYPE_F32) {
#pragma unroll
        for (int i = 0; i < 4; i++)
            out[i] = __uint_as_float(u[i]);
        return 4;
    }
#pragma unroll
    for (int i = 0; i < 4; i++) {
        if (type == BT_TYPE_BF16) {
            out[2 * i] = __uint_as_float(u[i] << 16);
            out[2 * i + 1] = __uint_as_float(u[i] & 0xffff0000u);
        } else {
            out[2 * i] = __half2float(__ushort_as_half((unsigned short)(u[i] & 0xffffu)));
            out[2 * i + 1] = __half2float(__ushort_as_half((unsigned short)(u[i] >> 16)));
        }
    }
    return 8;
}

/* Where the 16-byte path applies: head slices, blocks and the pool 16-byte aligned. */
static __device__ __forceinline__ bool kv_vec_ok(const bt_kv_layer_t &kv)
{
    return (kv.head_dim * elem_size(kv.type)) % 16 == 0 && (kv.block_bytes % 16) == 0 &&
           ((uintptr_t)kv.data % 16) == 0;
}

/* Position pos's K slice of KV head kvh; its V slice is block_size rows further. */
static __device__ __forceinline__ const uint8_t *
kv_row(const attn_params_t &p, const bt_cuda_seq_t &s, int kvh, int32_t pos)
{
    const bt_kv_layer_t &kv = p.kv;
    const size_t es = (size_t)elem_size(kv.type),
                 row_bytes = (size_t)kv.n_kv_heads * kv.head_dim * es;
    return (const uint8_t *)kv.data +
           (size_t)p.blocks[s.blk + pos / kv.block_size] * kv.block_bytes +
           (size_t)(pos % kv.block_size) * row_bytes + (size_t)kvh * kv.head_dim * es;
}

/* A tile's K and V in flight on the 16-byte path: piece threadIdx.x + i * blockDim.x of the
 * tile (position piece / per_pos, 16 bytes c = piece % per_pos of it) in k[i] and v[i]. The
 * kernel fetches the next tile into these registers before it computes the current one, so the
 * loads (and the block table's, ahead of them) land while it works. */
#define PF 4 /* pieces per thread; tiles of more (wide heads of F32) load without prefetch */
typedef struct {
    uint4 k[PF], v[PF];
} tile_regs_t;

/* Pieces of a tile per thread on the 16-byte path. */
static __device__ __forceinline__ int tile_pieces(const bt_kv_layer_t &kv)
{
    const int per_pos = kv.head_dim * elem_size(kv.type) / 16;
    return (TILE * per_pos + (int)blockDim.x - 1) / (int)blockDim.x;
}

/* Issues the loads of the tile at t0 (zeros past len); needs tile_pieces() <= PF. */
static __device__ __forceinline__ void fetch_tile(const attn_params_t &p, const bt_cuda_seq_t &s,
                                                  int kvh, int32_t t0, int32_t len, tile_regs_t &r)
{
    const bt_kv_layer_t &kv = p.kv;
    const int per_pos = kv.head_dim * elem_size(kv.type) / 16;
    const size_t v_off = (size_t)kv.block_size * kv.n_kv_heads * kv.head_dim * elem_size(kv.type);
#pragma unroll
    for (int i = 0; i < PF; i++) {
        const int e = (int)threadIdx.x + i * (int)blockDim.x;
        const int32_t pos = t0 + e / per_pos;
        r.k[i] = r.v[i] = make_uint4(0, 0, 0, 0);
        if (e < TILE * per_pos && pos < len) {
            const uint8_t *kp = kv_row(p, s, kvh, pos) + (size_t)(e % per_pos) * 16;
            r.k[i] = __ldg((const uint4 *)kp);
            r.v[i] = __ldg((const uint4 *)(kp + v_off));
        }
    }
}

/* The fetched pieces widened to f32 into the shared tiles (rows of pitch hd + 1). */
static __device__ __forceinline__ void put_tile(const bt_kv_layer_t &kv, const tile_regs_t &r,
                                                float *ks, float *vs)
{
    const int hd = kv.head_dim, pitch = hd + 1, piece = 16 / elem_size(kv.type);
    const int per_pos = hd / piece;
#pragma unroll
    for (int i = 0; i < PF; i++) {
        const int e = (int)threadIdx.x + i * (int)blockDim.x;
        if (e >= TILE * per_pos)
            break;
        const int j = e / per_pos, c = e % per_pos;
        float kx[8], vx[8];
        kv_unpack16(r.k[i], kv.type, kx);
        kv_unpack16(r.v[i], kv.type, vx);
#pragma unroll
        for (int q = 0; q < 8; q++) { /* static indices: kx, vx stay in registers */
            if (q < piece) {
                ks[j * pitch + c * piece + q] = kx[q];
                vs[j * pitch + c * piece + q] = vx[q];
            }
        }
    }
}

/* K and V of positions [t0, t0 + TILE) into shared memory as f32; zeros past len: whole
 * 16-byte pieces where the layout allows (kv_vec_ok), else element by element. The kernel uses
 * this where it does not prefetch; the values, and so every result, are the same either way. */
static __device__ void load_tile(const attn_params_t &p, const bt_cuda_seq_t &s, int kvh,
                                 int32_t t0, int32_t len, float *ks, float *vs)
{
    const bt_kv_layer_t &kv = p.kv;
    const int hd = kv.head_dim, pitch = hd + 1, es = elem_size(kv.type);
    const size_t v_off = (size_t)kv.block_size * kv.n_kv_heads * hd * es;
    if (kv_vec_ok(kv)) {
        const int piece = 16 / es, per_pos = hd / piece;
        for (int e = threadIdx.x; e < TILE * per_pos; e += blockDim.x) {
            const int j = e / per_pos, c = e % per_pos;
            const int32_t pos = t0 + j;
            float kx[8] = {0}, vx[8] = {0};
            if (pos < len) {
                const uint8_t *kp = kv_row(p, s, kvh, pos) + (size_t)c * 16;
                kv_unpack16(__ldg((const uint4 *)kp), kv.type, kx);
                kv_unpack16(__ldg((const uint4 *)(kp + v_off)), kv.type, vx);
            }
#pragma unroll
            for (int i = 0; i < 8; i++) { /* static indices: kx, vx stay in registers */
                if (i < piece) {
                    ks[j * pitch + c * piece + i] = kx[i];
                    vs[j * pitch + c * piece + i] = vx[i];
                }
            }
        }
        return;
    }
    for (int e = threadIdx.x; e < TILE * hd; e += blockDim.x) {
        const int j = e / hd, d = e % hd;
        const int32_t pos = t0 + j;
        float kx = 0.0f, vx = 0.0f;
        if (pos < len) {
            const uint8_t *kp = kv_row(p, s, kvh, pos);
            kx = kv_load(kp, kv.type, d);
            vx = kv_load(kp + v_off, kv.type, d);
        }
        ks[j * pitch + d] = kx;
        vs[j * pitch + d] = vx;
    }
}

/* Folds one tile into the chunk states of a warp's QPW queries. qs: the queries [QPW][hd];
 * len[t]: positions query t attends to (0: inactive). */
template <int QPW>
static __device__ void tile_step(const float *ks, const float *vs, const float *qs, int hd,
                                 float scale, int32_t t0, const int32_t *len, attn_state_t *cs)
{
    const int lane = threadIdx.x % 32, pitch = hd + 1;
    float sc[QPW];
#pragma unroll
    for (int t = 0; t < QPW; t++)
        sc[t] = 0.0f;
    const float *kr = ks + lane * pitch;
    for (int d = 0; d < hd; d++) {
        const float kd = kr[d];
#pragma unroll
        for (int t = 0; t < QPW; t++)
            sc[t] = __fmaf_rn(qs[t * hd + d], kd, sc[t]);
    }
    float pr[QPW];
#pragma unroll
    for (int t = 0; t < QPW; t++) {
        pr[t] = 0.0f;
        if (len[t] <= t0) /* warp-uniform */
            continue;
        const float s = t0 + lane < len[t] ? __fmul_rn(sc[t], scale) : -INFINITY;
        const float mn = fmaxf(cs[t].m, warp_max(s));
        const float alpha = expf(cs[t].m - mn);
        pr[t] = expf(s - mn);
        cs[t].l = __fmaf_rn(cs[t].l, alpha, warp_sum(pr[t]));
        cs[t].m = mn;
#pragma unroll
        for (int i = 0; i < ND; i++)
            cs[t].acc[i] = __fmul_rn(cs[t].acc[i], alpha);
    }
    for (int j = 0; j < TILE; j++) {
        float pj[QPW];
#pragma unroll
        for (int t = 0; t < QPW; t++)
            pj[t] = __shfl_sync(0xffffffffu, pr[t], j);
#pragma unroll
        for (int i = 0; i < ND; i++) {
            const int d = lane + 32 * i;
            if (d >= hd)
                break;
            const float vx = vs[j * pitch + d];
#pragma unroll
            for (int t = 0; t < QPW; t++)
                cs[t].acc[i] = __fmaf_rn(pj[t], vx, cs[t].acc[i]);
        }
    }
}

static __device__ void write_out(const attn_params_t &p, int64_t row, int h, const attn_state_t &t)
{
    const int hd = p.kv.head_dim, lane = threadIdx.x % 32;
    float *o = p.out + (row * p.n_heads + h) * hd;
    const float inv = __fdiv_rn(1.0f, t.l);
#pragma unroll
    for (int i = 0; i < ND; i++) {
        const int d = lane + 32 * i;
        if (d < hd)
            o[d] = __fmul_rn(t.acc[i], inv);
    }
}

/* Split launches: one warp merges the chunk partials of query (row, head), whose context is
 * len positions, in chunk order, and writes its output. The partials were written by other
 * blocks: read through L2 (__ldcg), never from a stale L1 line. */
static __device__ void merge_partials(const attn_params_t &p, int64_t row, int h, int32_t len)
{
    const int hd = p.kv.head_dim, lane = threadIdx.x % 32;
    attn_state_t tot;
    state_clear(&tot);
    for (int c = 0; c * p.chunk < len; c++) {
        const float *pp = p.part + ((row * p.n_heads + h) * p.n_chunks + c) * (hd + 2);
        float acc[ND];
#pragma unroll
        for (int i = 0; i < ND; i++)
            acc[i] = lane + 32 * i < hd ? __ldcg(pp + 2 + lane + 32 * i) : 0.0f;
        state_merge(&tot, __ldcg(pp), __ldcg(pp + 1), acc);
    }
    write_out(p, row, h, tot);
}

/* blockIdx: x = query block (reversed: long contexts first), y = sequence, z = KV head + n_kv
 * * chunk (split launches; sequential launches have z < n_kv and walk all chunks). */
template <int QPW>
static __global__ void __launch_bounds__(ATT_WARPS * 32) attn_kernel(attn_params_t p, int split)
{
    extern __shared__ float sm[];
    bt_cuda_pdl_trigger(); /* a PDL-launched GEMV after it may fetch its weights meanwhile */
    const int hd = p.kv.head_dim, n_kv = p.kv.n_kv_heads;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const bt_cuda_seq_t s = p.seqs[blockIdx.y];
    const int kvh = blockIdx.z % n_kv, sp = blockIdx.z / n_kv;
    const int64_t nq = (int64_t)s.n_new * p.group;
    const int64_t q_first = (int64_t)(gridDim.x - 1 - blockIdx.x) * ATT_WARPS * QPW;
    if (q_first >= nq)
        return;
    const int64_t q_last =
        q_first + ATT_WARPS * QPW - 1 < nq ? q_first + ATT_WARPS * QPW - 1 : nq - 1;
    const int32_t len_max = s.n_past + (int32_t)(q_last / p.group) + 1;
    const int c0 = split ? sp : 0;
    const int chunk = p.chunk;
    const int c1 = split ? sp + 1 : (len_max + chunk - 1) / chunk;
    if (c0 * chunk >= len_max)
        return;

    float *ks = sm, *vs = ks + TILE * (hd + 1), *qs = vs + TILE * (hd + 1);
    float *wq = qs + (size_t)warp * QPW * hd;
    int32_t len[QPW];
    int64_t row[QPW];
    int head[QPW];
#pragma unroll
    for (int t = 0; t < QPW; t++) {
        const int64_t qi = q_first + warp * QPW + t;
        len[t] = 0;
        row[t] = 0;
        head[t] = 0;
        if (qi < nq) {
            const int32_t r = (int32_t)(qi / p.group);
            row[t] = s.row0 + r;
            head[t] = kvh * p.group + (int)(qi % p.group);
            len[t] = s.n_past + r + 1;
        }
        const float *src = p.q + (row[t] * p.n_heads + head[t]) * hd;
        for (int d = lane; d < hd; d += 32)
            wq[t * hd + d] = len[t] ? src[d] : 0.0f;
    }

    attn_state_t tot[QPW], cs[QPW];
#pragma unroll
    for (int t = 0; t < QPW; t++)
        state_clear(&tot[t]);
    /* Tiles are contiguous across chunks: with prefetch, the one after t0 is always t0 + TILE,
     * up to the block's last position. */
    const int32_t stop = c1 * chunk < len_max ? c1 * chunk : len_max;
    const bool pf = kv_vec_ok(p.kv) && tile_pieces(p.kv) <= PF;
    tile_regs_t nx;
    if (pf)
        fetch_tile(p, s, kvh, c0 * chunk, len_max, nx);
    for (int c = c0; c < c1; c++) {
#pragma unroll
        for (int t = 0; t < QPW; t++)
            state_clear(&cs[t]);
        const int32_t t_end = (c + 1) * chunk < len_max ? (c + 1) * chunk : len_max;
        for (int32_t t0 = c * chunk; t0 < t_end; t0 += TILE) {
            __syncthreads(); /* the previous tile (and the queries, first time) are done */
            if (pf) {
                put_tile(p.kv, nx, ks, vs);
                if (t0 + TILE < stop)
                    fetch_tile(p, s, kvh, t0 + TILE, len_max, nx);
            } else {
                load_tile(p, s, kvh, t0, len_max, ks, vs);
            }
            __syncthreads();
            tile_step<QPW>(ks, vs, wq, hd, p.scale, t0, len, cs);
        }
#pragma unroll
        for (int t = 0; t < QPW; t++) {
            if (len[t] <= c * chunk)
                continue;
            if (!split) {
                state_merge(&tot[t], cs[t].m, cs[t].l, cs[t].acc);
                continue;
            }
            float *pp = p.part + ((row[t] * p.n_heads + head[t]) * p.n_chunks + c) * (hd + 2);
            if (lane == 0) {
                pp[0] = cs[t].m;
                pp[1] = cs[t].l;
            }
#pragma unroll
            for (int i = 0; i < ND; i++)
                if (lane + 32 * i < hd)
                    pp[2 + lane + 32 * i] = cs[t].acc[i];
        }
    }
    if (split) {
        /* The last of the group's chunk blocks to finish merges the partials of its queries, in
         * chunk order; the counter only decides which block that is, so the arithmetic is the
         * same whichever it is. Writers: stores, fence, then the count (as CUDA's threadfence
         * reduction). The last block resets the counter for the next launch. */
        __shared__ int last;
        __threadfence();
        __syncthreads();
        if (threadIdx.x == 0) {
            int32_t *cnt = p.count + ((int64_t)blockIdx.y * gridDim.x + blockIdx.x) * n_kv + kvh;
            const int live = (len_max + chunk - 1) / chunk;
            last = atomicAdd(cnt, 1) == live - 1;
            if (last)
                *cnt = 0;
        }
        __syncthreads();
        if (!last)
            return;
        __threadfence();
#pragma unroll
        for (int t = 0; t < QPW; t++)
            if (len[t])
                merge_partials(p, row[t], head[t], len[t]);
        return;
    }
#pragma unroll
    for (int t = 0; t < QPW; t++)
        if (len[t])
            write_out(p, row[t], head[t], tot[t]);
}

static size_t smem_bytes(int head_dim, int qpw)
{
    return ((size_t)2 * TILE * (head_dim + 1) + (size_t)ATT_WARPS * qpw * head_dim) * sizeof(float);
}

extern "C" size_t bt_cuda_attention_smem_bytes(int head_dim)
{
    if (head_dim <= 0 || head_dim > BT_MAX_HEAD_DIM)
        return 0;
    return smem_bytes(head_dim, 4);
}

extern "C" int bt_cuda_attention_init(void)
{
    const int max1 = (int)smem_bytes(BT_MAX_HEAD_DIM, 1);
    const int max4 = (int)smem_bytes(BT_MAX_HEAD_DIM, 4);
    if (cudaFuncSetAttribute(attn_kernel<1>, cudaFuncAttributeMaxDynamicSharedMemorySize, max1) !=
            cudaSuccess ||
        cudaFuncSetAttribute(attn_kernel<4>, cudaFuncAttributeMaxDynamicSharedMemorySize, max4) !=
            cudaSuccess)
        return BT_ERR_UNSUPPORTED;
    return BT_OK;
}

extern "C" void bt_cuda_attention_launch(cudaStream_t st, const bt_cuda_attn_args_t *a, float *part,
                                         size_t part_floats, int32_t *count, size_t count_n,
                                         int n_sm)
{
    const bt_kv_layer_t *kv = a->kv;
    const int n_kv = kv->n_kv_heads, hd = kv->head_dim;
    attn_params_t p;
    p.out = a->out;
    p.q = a->q;
    p.kv = *kv;
    p.seqs = a->seqs;
    p.blocks = a->blocks;
    p.part = part;
    p.count = count;
    p.n_heads = a->n_heads;
    p.group = a->n_heads / n_kv;
    p.chunk = a->chunk;
    p.n_chunks = (a->max_len + p.chunk - 1) / p.chunk;
    p.scale = a->scale;
    const int64_t nq = (int64_t)a->max_new * p.group;
    const int64_t qb1 = (nq + ATT_WARPS - 1) / ATT_WARPS;
    /* Split when one block per (sequence, KV head, query block) would leave most SMs idle. */
    const int split = p.n_chunks > 1 && qb1 * a->n_seqs * n_kv < 4 * (int64_t)n_sm &&
                      (size_t)(qb1 * a->n_seqs * n_kv) <= count_n &&
                      (int64_t)n_kv * p.n_chunks <= MAX_GRID_YZ &&
                      (size_t)a->n_rows * a->n_heads * p.n_chunks * (hd + 2) <= part_floats;
    const int qpw = !split && nq >= 4 * ATT_WARPS ? 4 : 1;
    const int64_t gx = (nq + ATT_WARPS * qpw - 1) / (ATT_WARPS * qpw);
    const dim3 grid((unsigned)gx, (unsigned)a->n_seqs, (unsigned)(n_kv * (split ? p.n_chunks : 1)));
    const size_t smem = smem_bytes(hd, qpw);
    if (qpw == 4)
        attn_kernel<4><<<grid, ATT_WARPS * 32, smem, st>>>(p, 0);
    else
        attn_kernel<1><<<grid, ATT_WARPS * 32, smem, st>>>(p, split);
    BT_CUDA_CHECK(cudaGetLastError());
}
