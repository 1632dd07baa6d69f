/* SPDX-License-Identifier: MIT */
/*
 * attention.c - paged KV cache writes (kv_store) and causal GQA attention over the cache.
 *
 * The one thing to know: a query row at position p always computes the same sequence of
 * operations: its cached positions 0..p are visited in tiles that start at multiples of the
 * tile size (a function of head_dim only), each tile updates an online softmax (running max,
 * running sum, rescaled accumulator) in position order, and scores are fixed-order vector dot
 * products. Nothing depends on the other rows, sequences or heads in the call, nor on the
 * thread count, so attention is batch invariant, and a row gives the same bits whether it is
 * computed in a prefill or as a decode step.
 *
 * Work items are (row block, sequence, KV head): the query rows of a block and the heads that
 * share the KV head reuse one K/V tile, converted to f32 in per-thread scratch (F16, BF16) or
 * read in place (F32 cache with head_dim a multiple of the vector width). Items of the last
 * row blocks, which see the longest contexts, are handed out first.
 */
#include <assert.h>
#include <math.h>
#include <string.h>

#include "cpu_impl.h"
#include "simd.h"

#define KV_STORE_ROWS 16 /* rows per kv_store task */
#define FEW_QUERIES 4    /* at most this many queries per tile read an F16 cache in place */
#define MAX_HDP BT_CPU_ATTN_MAX_HEAD_DIM
#define TILE_FLOATS (BT_CPU_ATTN_TILE * 64) /* tile positions x padded head_dim, at most */

/* ---- kv_store ---- */

typedef struct {
    const bt_kv_layer_t *kv;
    const float *k, *v;
    const bt_attn_seq_t *seqs;
    int n_seqs;
} kv_store_job_t;

static void store_row(void *dst, const float *src, int type, int64_t n)
{
    if (type == BT_TYPE_F32) {
        memcpy(dst, src, (size_t)n * sizeof(float));
        return;
    }
    uint16_t *h = dst;
    int64_t i = 0;
    if (type == BT_TYPE_BF16) {
        for (; i < n; i++)
            h[i] = bt_f32_to_bf16(src[i]);
        return;
    }
    for (; i + BT_VW <= n; i += BT_VW)
        bt_vf_store_f16(h + i, bt_vf_load(src + i));
    for (; i < n; i++)
        h[i] = bt_f32_to_fp16(src[i]);
}

static size_t kv_elem_size(const bt_kv_layer_t *kv)
{
    return kv->type == BT_TYPE_F16 || kv->type == BT_TYPE_BF16 ? 2 : 4;
}

static void kv_store_task(void *arg, int64_t task, int thread)
{
    const kv_store_job_t *jb = arg;
    const bt_attn_seq_t *s = &jb->seqs[task % jb->n_seqs];
    const bt_kv_layer_t *kv = jb->kv;
    const int64_t row_elems = (int64_t)kv->n_kv_heads * kv->head_dim;
    const size_t row_bytes = (size_t)row_elems * kv_elem_size(kv);
    int64_t r0 = task / jb->n_seqs * KV_STORE_ROWS;
    int64_t r1 = r0 + KV_STORE_ROWS < s->n_new ? r0 + KV_STORE_ROWS : s->n_new;
    for (int64_t r = r0; r < r1; r++) {
        int64_t pos = s->n_past + r;
        uint8_t *blk =
            (uint8_t *)kv->data + (size_t)s->blocks[pos / kv->block_size] * kv->block_bytes;
        uint8_t *kd = blk + (size_t)(pos % kv->block_size) * row_bytes;
        uint8_t *vd = kd + (size_t)kv->block_size * row_bytes;
        int64_t src = (s->row0 + r) * row_elems;
        store_row(kd, jb->k + src, kv->type, row_elems);
        store_row(vd, jb->v + src, kv->type, row_elems);
    }
}

void bt_cpu_kv_store(void *ctx, const bt_kv_layer_t *kv, const float *k, const float *v,
                     const bt_attn_seq_t *seqs, int n_seqs)
{
    bt_cpu_ctx_t *c = ctx;
    assert(kv->type == BT_TYPE_F32 || kv->type == BT_TYPE_F16 || kv->type == BT_TYPE_BF16);
    int64_t max_new = 0, total = 0;
    for (int i = 0; i < n_seqs; i++) {
        max_new = seqs[i].n_new > max_new ? seqs[i].n_new : max_new;
        total += seqs[i].n_new;
    }
    if (total == 0)
        return;
    kv_store_job_t jb = {.kv = kv, .k = k, .v = v, .seqs = seqs, .n_seqs = n_seqs};
    int64_t n_tasks = (max_new + KV_STORE_ROWS - 1) / KV_STORE_ROWS * n_seqs;
    if (total * kv->n_kv_heads * kv->head_dim < 16384) {
        for (int64_t t = 0; t < n_tasks; t++)
            kv_store_task(&jb, t, 0);
        return;
    }
    bt_cpu_pool_run(c->pool, kv_store_task, &jb, n_tasks);
}

/* ---- attention ---- */

typedef struct {
    float *out;
    const float *q;
    const bt_kv_layer_t *kv;
    const bt_attn_seq_t *seqs;
    int n_seqs, n_heads, group; /* group: query heads per KV head */
    float scale;
    int hd, hdp; /* head_dim and head_dim padded to the vector width */
    int tile;    /* positions per tile */
    int rows_per_item;
    int64_t n_rblocks; /* row blocks of the longest sequence */
    bt_cpu_ctx_t *c;
} attn_job_t;

/* One query vector's online-softmax state. */
typedef struct {
    float *acc;      /* [hdp] running sum of p * v */
    const float *qp; /* [hdp] zero-padded query */
    float m, l;      /* running max and sum */
    int64_t len;     /* cached positions it attends to */
} attn_query_t;

/* Tile positions: a function of head_dim only, so it never varies for a given model. */
static int attn_tile_positions(int hdp)
{
    int t = TILE_FLOATS / hdp;
    return t > BT_CPU_ATTN_TILE ? BT_CPU_ATTN_TILE : t;
}

static const void *kv_pos_row(const attn_job_t *jb, const bt_attn_seq_t *s, int64_t pos, int kvh,
                              int is_v)
{
    const bt_kv_layer_t *kv = jb->kv;
    const size_t es = kv_elem_size(kv);
    const size_t row_bytes = (size_t)kv->n_kv_heads * kv->head_dim * es;
    const uint8_t *blk =
        (const uint8_t *)kv->data + (size_t)s->blocks[pos / kv->block_size] * kv->block_bytes;
    return blk + (size_t)is_v * kv->block_size * row_bytes +
           (size_t)(pos % kv->block_size) * row_bytes + (size_t)kvh * kv->head_dim * es;
}

/* dst[0, hdp) = the hd cached values at src as f32, zero-padded. */
static void widen_row(float *dst, const void *src, int type, int hd, int hdp)
{
    int d = 0;
    if (type == BT_TYPE_F16) {
        const uint16_t *h = src;
        for (; d + BT_VW <= hd; d += BT_VW)
            bt_vf_store(dst + d, bt_vf_load_f16(h + d));
        for (; d < hd; d++)
            dst[d] = bt_fp16_to_f32(h[d]);
    } else if (type == BT_TYPE_BF16) {
        const uint16_t *h = src;
        for (; d + BT_VW <= hd; d += BT_VW)
            bt_vf_store(dst + d, bt_vf_load_bf16(h + d));
        for (; d < hd; d++)
            dst[d] = bt_bf16_to_f32(h[d]);
    } else {
        memcpy(dst, src, (size_t)hd * sizeof(float));
        d = hd;
    }
    for (; d < hdp; d++)
        dst[d] = 0.0f;
}

/* The K and V rows of one tile: f32 (widened, or an F32 cache read in place) or, with f16
 * set, F16 cache rows read in place and widened on the fly. Both give the same f32 values,
 * so the choice (made per item, from how many queries share the tile) never changes a bit. */
typedef struct {
    const void *k[BT_CPU_ATTN_TILE];
    const void *v[BT_CPU_ATTN_TILE];
    int f16;
} attn_tile_t;

/* Fills tile with positions [t0, t0 + n). Rows are used in place when head_dim needs no
 * padding and either the cache is F32 or few queries share the tile (widening once pays off
 * only when several queries reuse it); otherwise they are widened into buf. */
static void attn_load_tile(const attn_job_t *jb, const bt_attn_seq_t *s, int kvh, int64_t t0, int n,
                           int few_queries, attn_tile_t *tile, float *buf)
{
    const int f16 = jb->kv->type == BT_TYPE_F16;
    const int f32 = jb->kv->type == BT_TYPE_F32;
    const int direct = jb->hd == jb->hdp && (f32 || (f16 && few_queries));
    tile->f16 = direct && f16;
    for (int j = 0; j < n; j++) {
        const void *kp = kv_pos_row(jb, s, t0 + j, kvh, 0);
        const void *vp = kv_pos_row(jb, s, t0 + j, kvh, 1);
        if (direct) {
            tile->k[j] = kp;
            tile->v[j] = vp;
            continue;
        }
        float *kd = buf + (size_t)j * jb->hdp;
        float *vd = buf + (size_t)(jb->tile + j) * jb->hdp;
        widen_row(kd, kp, jb->kv->type, jb->hd, jb->hdp);
        widen_row(vd, vp, jb->kv->type, jb->hd, jb->hdp);
        tile->k[j] = kd;
        tile->v[j] = vd;
    }
}

static BT_ALWAYS_INLINE bt_vf load_kv(const void *row, int d, const int f16)
{
    return f16 ? bt_vf_load_f16((const uint16_t *)row + d) : bt_vf_load((const float *)row + d);
}

static BT_ALWAYS_INLINE float attn_dot(const float *q, const void *k, int hdp, const int f16)
{
    bt_vf acc = bt_vf_zero();
    for (int d = 0; d < hdp; d += BT_VW)
        acc = bt_vf_fma(bt_vf_load(q + d), load_kv(k, d, f16), acc);
    return bt_vf_hsum(acc);
}

/* acc = acc * alpha + sum_j p[j] * v[j], each element in position order. Four vectors of
 * head_dim are carried in registers at a time to share the broadcasts of p. */
static BT_ALWAYS_INLINE void attn_accumulate_v(float *acc, const float *p, const void *const *vrow,
                                               int n, int hdp, float alpha, const int f16)
{
    const bt_vf va = bt_vf_set1(alpha);
    int d = 0;
    for (; d + 4 * BT_VW <= hdp; d += 4 * BT_VW) {
        bt_vf a0 = bt_vf_load(acc + d), a1 = bt_vf_load(acc + d + BT_VW);
        bt_vf a2 = bt_vf_load(acc + d + 2 * BT_VW), a3 = bt_vf_load(acc + d + 3 * BT_VW);
        if (alpha != 1.0f) {
            a0 = bt_vf_mul(a0, va);
            a1 = bt_vf_mul(a1, va);
            a2 = bt_vf_mul(a2, va);
            a3 = bt_vf_mul(a3, va);
        }
        for (int j = 0; j < n; j++) {
            const bt_vf pj = bt_vf_set1(p[j]);
            a0 = bt_vf_fma(pj, load_kv(vrow[j], d, f16), a0);
            a1 = bt_vf_fma(pj, load_kv(vrow[j], d + BT_VW, f16), a1);
            a2 = bt_vf_fma(pj, load_kv(vrow[j], d + 2 * BT_VW, f16), a2);
            a3 = bt_vf_fma(pj, load_kv(vrow[j], d + 3 * BT_VW, f16), a3);
        }
        bt_vf_store(acc + d, a0);
        bt_vf_store(acc + d + BT_VW, a1);
        bt_vf_store(acc + d + 2 * BT_VW, a2);
        bt_vf_store(acc + d + 3 * BT_VW, a3);
    }
    for (; d < hdp; d += BT_VW) {
        bt_vf a = bt_vf_load(acc + d);
        if (alpha != 1.0f)
            a = bt_vf_mul(a, va);
        for (int j = 0; j < n; j++)
            a = bt_vf_fma(bt_vf_set1(p[j]), load_kv(vrow[j], d, f16), a);
        bt_vf_store(acc + d, a);
    }
}

/* Folds tile positions [0, n) into one query's state (online softmax). */
static BT_ALWAYS_INLINE void attn_query_tile_impl(const attn_job_t *jb, attn_query_t *aq,
                                                  const attn_tile_t *tile, int n, const int f16)
{
    float s[BT_CPU_ATTN_TILE + BT_VW];
    float mt = -INFINITY;
    for (int j = 0; j < n; j++) {
        s[j] = attn_dot(aq->qp, tile->k[j], jb->hdp, f16) * jb->scale;
        mt = s[j] > mt ? s[j] : mt;
    }
    const float mnew = aq->m > mt ? aq->m : mt;
    const int nv = (n + BT_VW - 1) / BT_VW * BT_VW;
    for (int j = n; j < nv; j++)
        s[j] = -INFINITY;
    const bt_vf vm = bt_vf_set1(mnew);
    for (int j = 0; j < nv; j += BT_VW)
        bt_vf_store(s + j, bt_vf_exp(bt_vf_sub(bt_vf_load(s + j), vm)));
    bt_vf sum = bt_vf_zero();
    for (int j = n; j < nv; j++)
        s[j] = 0.0f;
    for (int j = 0; j < nv; j += BT_VW)
        sum = bt_vf_add(sum, bt_vf_load(s + j));
    const float alpha = expf(aq->m - mnew);
    aq->l = aq->l * alpha + bt_vf_hsum(sum);
    aq->m = mnew;
    attn_accumulate_v(aq->acc, s, tile->v, n, jb->hdp, alpha, f16);
}

static void attn_query_tile(const attn_job_t *jb, attn_query_t *aq, const attn_tile_t *tile, int n)
{
    if (tile->f16)
        attn_query_tile_impl(jb, aq, tile, n, 1);
    else
        attn_query_tile_impl(jb, aq, tile, n, 0);
}

/* Queries per work item carry their state in per-thread scratch laid out as: K tile, V tile
 * (TILE_FLOATS each), padded queries, accumulators (MAXQ x MAX_HDP each). */
size_t bt_cpu_attention_scratch_floats(void)
{
    return 2 * (size_t)TILE_FLOATS + 2 * (size_t)BT_CPU_ATTN_MAX_QUERIES * MAX_HDP;
}

/* Sets up the query states of one item: rows [r0, r1) of seq s, heads of KV head kvh. */
static int attn_item_queries(const attn_job_t *jb, const bt_attn_seq_t *s, int kvh, int64_t r0,
                             int64_t r1, float *qbuf, float *abuf, attn_query_t *aq)
{
    const int64_t q_stride = (int64_t)jb->n_heads * jb->hd;
    int nq = 0;
    for (int64_t r = r0; r < r1; r++) {
        for (int hh = 0; hh < jb->group; hh++, nq++) {
            const int h = kvh * jb->group + hh;
            float *qp = qbuf + (size_t)nq * jb->hdp;
            memcpy(qp, jb->q + (s->row0 + r) * q_stride + (int64_t)h * jb->hd,
                   (size_t)jb->hd * sizeof(float));
            memset(qp + jb->hd, 0, (size_t)(jb->hdp - jb->hd) * sizeof(float));
            aq[nq].qp = qp;
            aq[nq].acc = abuf + (size_t)nq * jb->hdp;
            memset(aq[nq].acc, 0, (size_t)jb->hdp * sizeof(float));
            aq[nq].m = -INFINITY;
            aq[nq].l = 0.0f;
            aq[nq].len = s->n_past + r + 1;
        }
    }
    return nq;
}

static void attn_item_write(const attn_job_t *jb, const bt_attn_seq_t *s, int kvh, int64_t r0,
                            const attn_query_t *aq, int nq)
{
    const int64_t q_stride = (int64_t)jb->n_heads * jb->hd;
    for (int qi = 0; qi < nq; qi++) {
        const int64_t r = r0 + qi / jb->group;
        const int h = kvh * jb->group + qi % jb->group;
        float *o = jb->out + (s->row0 + r) * q_stride + (int64_t)h * jb->hd;
        const float inv = 1.0f / aq[qi].l;
        for (int d = 0; d < jb->hd; d++)
            o[d] = aq[qi].acc[d] * inv;
    }
}

/* Task order: row blocks from the last (longest contexts) to the first, then sequence, then
 * KV head; tasks past a sequence's rows are empty. */
static void attn_task(void *arg, int64_t task, int thread)
{
    const attn_job_t *jb = arg;
    const int n_kv = jb->kv->n_kv_heads;
    const int64_t per_rb = (int64_t)jb->n_seqs * n_kv;
    const int64_t rb = jb->n_rblocks - 1 - task / per_rb;
    const bt_attn_seq_t *s = &jb->seqs[task % per_rb / n_kv];
    const int kvh = (int)(task % n_kv);
    const int64_t r0 = rb * jb->rows_per_item;
    if (r0 >= s->n_new)
        return;
    const int64_t r1 = r0 + jb->rows_per_item < s->n_new ? r0 + jb->rows_per_item : s->n_new;

    float *buf = jb->c->attn + (size_t)thread * jb->c->attn_floats;
    float *qbuf = buf + 2 * TILE_FLOATS;
    float *abuf = qbuf + (size_t)BT_CPU_ATTN_MAX_QUERIES * MAX_HDP;
    attn_query_t aq[BT_CPU_ATTN_MAX_QUERIES];
    const int nq = attn_item_queries(jb, s, kvh, r0, r1, qbuf, abuf, aq);

    attn_tile_t tile;
    const int64_t len_max = s->n_past + r1;
    for (int64_t t0 = 0; t0 < len_max; t0 += jb->tile) {
        int n = len_max - t0 < jb->tile ? (int)(len_max - t0) : jb->tile;
        attn_load_tile(jb, s, kvh, t0, n, nq <= FEW_QUERIES, &tile, buf);
        for (int qi = 0; qi < nq; qi++) {
            if (aq[qi].len <= t0)
                continue;
            int nj = aq[qi].len - t0 < n ? (int)(aq[qi].len - t0) : n;
            attn_query_tile(jb, &aq[qi], &tile, nj);
        }
    }
    attn_item_write(jb, s, kvh, r0, aq, nq);
}

void bt_cpu_attention(void *ctx, float *out, const float *q, const bt_kv_layer_t *kv,
                      const bt_attn_seq_t *seqs, int n_seqs, int n_heads, float scale)
{
    bt_cpu_ctx_t *c = ctx;
    assert(kv->type == BT_TYPE_F32 || kv->type == BT_TYPE_F16 || kv->type == BT_TYPE_BF16);
    assert(kv->head_dim > 0 && kv->head_dim <= MAX_HDP);
    assert(n_heads % kv->n_kv_heads == 0);
    const int group = n_heads / kv->n_kv_heads;
    assert(group <= BT_CPU_ATTN_MAX_QUERIES);
    attn_job_t jb = {
        .out = out,
        .q = q,
        .kv = kv,
        .seqs = seqs,
        .n_seqs = n_seqs,
        .n_heads = n_heads,
        .group = group,
        .scale = scale,
        .hd = kv->head_dim,
        .hdp = (kv->head_dim + BT_VW - 1) / BT_VW * BT_VW,
        .rows_per_item = BT_CPU_ATTN_MAX_QUERIES / group,
        .c = c,
    };
    jb.tile = attn_tile_positions(jb.hdp);
    int64_t max_new = 0;
    for (int i = 0; i < n_seqs; i++)
        max_new = seqs[i].n_new > max_new ? seqs[i].n_new : max_new;
    jb.n_rblocks = (max_new + jb.rows_per_item - 1) / jb.rows_per_item;
    bt_cpu_pool_run(c->pool, attn_task, &jb, jb.n_rblocks * n_seqs * kv->n_kv_heads);
}
