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
 * block and merges the written partial states in a second kernel (decode of few sequences over
 * long contexts); both apply the same merge to the same chunk states, so the result does not
 * depend on the launch shape, the batch, or whether the row came from a prefill or a decode
 * step. All arithmetic that matters uses the explicitly rounded intrinsics, so the compiler
 * cannot contract it differently in the two kernels.
 *
 * A block is four warps over one (sequence, KV head): QPW query vectors per warp (the heads of
 * the group for one row, then the next rows), sharing each K/V tile, which the block converts
 * to f32 in shared memory (rows padded by one float so the per-lane score loop is free of bank
 * conflicts). This is a SIMT kernel; in nondeterministic mode prefills run on tensor cores
 * instead (attention_mma.cu).
 */
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <math.h>

#include "cuda_impl.h"

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

static __global__ void kv_store_kernel(bt_kv_layer_t kv, const float *k, const float *v,
                                       const bt_cuda_seq_t *seqs, const int32_t *blocks)
{
    const bt_cuda_seq_t s = seqs[blockIdx.y];
    const int32_t r = blockIdx.x;
    if (r >= s.n_new)
        return;
    const int64_t row_elems = (int64_t)kv.n_kv_heads * kv.head_dim;
    const size_t row_bytes = (size_t)row_elems * elem_size(kv.type);
    const int32_t pos = s.n_past + r;
    uint8_t *kd = (uint8_t *)kv.data +
                  (size_t)blocks[s.blk + pos / kv.block_size] * kv.block_bytes +
                  (size_t)(pos % kv.block_size) * row_bytes;
    uint8_t *vd = kd + (size_t)kv.block_size * row_bytes;
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

/* ---- attention ---- */

typedef struct {
    float *out;
    const float *q;
    bt_kv_layer_t kv;
    const bt_cuda_seq_t *seqs;
    const int32_t *blocks;
    float *part; /* split partials: [row][head][chunk][2 + head_dim] */
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

/* K and V of positions [t0, t0 + TILE) into shared memory as f32; zeros past len. Each thread
 * moves whole 16-byte pieces of a position's head slice when the layout allows, so a tile is a
 * couple of independent loads per thread instead of dozens of dependent 2-byte ones (the
 * values, and so every result, are the same either way). */
static __device__ void load_tile(const attn_params_t &p, const bt_cuda_seq_t &s, int kvh,
                                 int32_t t0, int32_t len, float *ks, float *vs)
{
    const bt_kv_layer_t &kv = p.kv;
    const int hd = kv.head_dim, pitch = hd + 1, es = elem_size(kv.type);
    const size_t row_bytes = (size_t)kv.n_kv_heads * hd * es;
    if ((hd * es) % 16 == 0 && (kv.block_bytes % 16) == 0 && ((uintptr_t)kv.data % 16) == 0) {
        const int piece = 16 / es, per_pos = hd / piece;
        for (int e = threadIdx.x; e < TILE * per_pos; e += blockDim.x) {
            const int j = e / per_pos, c = e % per_pos;
            const int32_t pos = t0 + j;
            float kx[8] = {0}, vx[8] = {0};
            if (pos < len) {
                const uint8_t *kp = (const uint8_t *)kv.data +
                                    (size_t)p.blocks[s.blk + pos / kv.block_size] * kv.block_bytes +
                                    (size_t)(pos % kv.block_size) * row_bytes +
                                    (size_t)kvh * hd * es + (size_t)c * 16;
                const uint4 kr = __ldg((const uint4 *)kp);
                const uint4 vr = __ldg((const uint4 *)(kp + (size_t)kv.block_size * row_bytes));
                kv_unpack16(kr, kv.type, kx);
                kv_unpack16(vr, kv.type, vx);
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
            const uint8_t *kp = (const uint8_t *)kv.data +
                                (size_t)p.blocks[s.blk + pos / kv.block_size] * kv.block_bytes +
                                (size_t)(pos % kv.block_size) * row_bytes + (size_t)kvh * hd * es;
            kx = kv_load(kp, kv.type, d);
            vx = kv_load(kp + (size_t)kv.block_size * row_bytes, kv.type, d);
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

/* blockIdx: x = query block (reversed: long contexts first), y = sequence, z = KV head + n_kv
 * * chunk (split launches; sequential launches have z < n_kv and walk all chunks). */
template <int QPW>
static __global__ void __launch_bounds__(ATT_WARPS * 32) attn_kernel(attn_params_t p, int split)
{
    extern __shared__ float sm[];
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
    for (int c = c0; c < c1; c++) {
#pragma unroll
        for (int t = 0; t < QPW; t++)
            state_clear(&cs[t]);
        const int32_t t_end = (c + 1) * chunk < len_max ? (c + 1) * chunk : len_max;
        for (int32_t t0 = c * chunk; t0 < t_end; t0 += TILE) {
            __syncthreads(); /* the previous tile (and the queries, first time) are done */
            load_tile(p, s, kvh, t0, len_max, ks, vs);
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
    if (split)
        return;
#pragma unroll
    for (int t = 0; t < QPW; t++)
        if (len[t])
            write_out(p, row[t], head[t], tot[t]);
}

/* Split launches: one warp per (row, head) merges the row's chunk partials in order. */
static __global__ void __launch_bounds__(ATT_WARPS * 32) attn_combine_kernel(attn_params_t p)
{
    const int hd = p.kv.head_dim, lane = threadIdx.x % 32;
    const bt_cuda_seq_t s = p.seqs[blockIdx.y];
    const int32_t r = blockIdx.x;
    const int h = blockIdx.z * ATT_WARPS + threadIdx.x / 32;
    if (r >= s.n_new || h >= p.n_heads)
        return;
    const int64_t row = s.row0 + r;
    const int32_t len = s.n_past + r + 1;
    attn_state_t tot;
    state_clear(&tot);
    for (int c = 0; c * p.chunk < len; c++) {
        const float *pp = p.part + ((row * p.n_heads + h) * p.n_chunks + c) * (hd + 2);
        float acc[ND];
#pragma unroll
        for (int i = 0; i < ND; i++)
            acc[i] = lane + 32 * i < hd ? pp[2 + lane + 32 * i] : 0.0f;
        state_merge(&tot, pp[0], pp[1], acc);
    }
    write_out(p, row, h, tot);
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
                                         size_t part_floats, int n_sm)
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
    p.n_heads = a->n_heads;
    p.group = a->n_heads / n_kv;
    p.chunk = a->chunk;
    p.n_chunks = (a->max_len + p.chunk - 1) / p.chunk;
    p.scale = a->scale;
    const int64_t nq = (int64_t)a->max_new * p.group;
    const int64_t qb1 = (nq + ATT_WARPS - 1) / ATT_WARPS;
    /* Split when one block per (sequence, KV head, query block) would leave most SMs idle. */
    const int split = p.n_chunks > 1 && qb1 * a->n_seqs * n_kv < 4 * (int64_t)n_sm &&
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
    if (!split)
        return;
    const dim3 cgrid((unsigned)a->max_new, (unsigned)a->n_seqs,
                     (unsigned)((a->n_heads + ATT_WARPS - 1) / ATT_WARPS));
    attn_combine_kernel<<<cgrid, ATT_WARPS * 32, 0, st>>>(p);
    BT_CUDA_CHECK(cudaGetLastError());
}
