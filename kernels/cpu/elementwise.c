/* SPDX-License-Identifier: MIT */
/*
 * elementwise.c - the row-wise and element-wise ops: get_rows, rmsnorm, rope, swiglu, add,
 * gather_rows.
 *
 * The one thing to know: each result depends only on its own row (rmsnorm's sum of squares
 * runs in vector lanes over the row in order, then one fixed horizontal sum) or its own element
 * (swiglu's tail goes through the same zero-padded vector exp as the body), so batch position
 * and thread count never change a bit. Ops go parallel over rows or element chunks only when
 * the work is large enough to pay for a dispatch.
 */
#include <assert.h>
#include <string.h>

#include "cpu_impl.h"
#include "simd.h"

#define PAR_MIN_ELEMS 16384 /* below this an op runs on the calling thread */
#define CHUNK_ELEMS 8192    /* element chunk of the flat ops (a multiple of every BT_VW) */

/* Tasks of about CHUNK_ELEMS elements each, whole rows of n. */
static int64_t rows_per_task(int64_t n)
{
    int64_t r = n > 0 ? CHUNK_ELEMS / n : 1;
    return r < 1 ? 1 : r;
}

static void run_rows(bt_cpu_ctx_t *c, bt_cpu_task_fn fn, void *arg, int64_t m, int64_t n,
                     int64_t *rpt)
{
    *rpt = m * n < PAR_MIN_ELEMS ? m : rows_per_task(n);
    if (*rpt < 1)
        *rpt = 1;
    bt_cpu_pool_run(c->pool, fn, arg, (m + *rpt - 1) / *rpt);
}

/* ---- get_rows ---- */

static void dequant_row(float *y, const bt_tensor_t *t, int64_t row)
{
    const int64_t n = t->cols;
    const uint8_t *src = (const uint8_t *)t->data + (size_t)row * bt_type_row_bytes(t->type, n);
    switch (t->type) {
    case BT_TYPE_F32: memcpy(y, src, (size_t)n * sizeof(float)); return;
    case BT_TYPE_F16:
        for (int64_t i = 0; i < n; i++)
            y[i] = bt_fp16_to_f32(((const uint16_t *)src)[i]);
        return;
    case BT_TYPE_BF16:
        for (int64_t i = 0; i < n; i++)
            y[i] = bt_bf16_to_f32(((const uint16_t *)src)[i]);
        return;
    case BT_TYPE_Q8_0:
        for (int64_t b = 0; b < n / BT_QK8_0; b++) {
            const bt_block_q8_0_t *blk = (const bt_block_q8_0_t *)src + b;
            float d = bt_fp16_to_f32(blk->d);
            for (int l = 0; l < BT_QK8_0; l++)
                y[b * BT_QK8_0 + l] = d * (float)blk->qs[l];
        }
        return;
    }
    assert(!"get_rows: unsupported type");
}

typedef struct {
    float *y;
    const bt_tensor_t *t;
    const int32_t *ids;
    int64_t m, rpt;
} get_rows_job_t;

static void get_rows_task(void *arg, int64_t task, int thread)
{
    const get_rows_job_t *jb = arg;
    int64_t r1 = (task + 1) * jb->rpt < jb->m ? (task + 1) * jb->rpt : jb->m;
    for (int64_t r = task * jb->rpt; r < r1; r++)
        dequant_row(jb->y + r * jb->t->cols, jb->t, jb->ids[r]);
}

void bt_cpu_get_rows(void *ctx, float *y, const bt_tensor_t *table, const int32_t *ids, int64_t m)
{
    get_rows_job_t jb = {.y = y, .t = table, .ids = ids, .m = m};
    run_rows(ctx, get_rows_task, &jb, m, table->cols, &jb.rpt);
}

/* ---- rmsnorm ---- */

static void rmsnorm_row(float *y, const float *x, const float *w, int64_t n, float eps)
{
    bt_vf acc = bt_vf_zero();
    int64_t i = 0;
    for (; i + BT_VW <= n; i += BT_VW) {
        bt_vf v = bt_vf_load(x + i);
        acc = bt_vf_fma(v, v, acc);
    }
    if (i < n) {
        bt_vf v = bt_vf_load_part(x + i, (int)(n - i));
        acc = bt_vf_fma(v, v, acc);
    }
    const float scale = 1.0f / sqrtf(bt_vf_hsum(acc) / (float)n + eps);
    const bt_vf vs = bt_vf_set1(scale);
    for (i = 0; i + BT_VW <= n; i += BT_VW)
        bt_vf_store(y + i, bt_vf_mul(bt_vf_mul(bt_vf_load(x + i), vs), bt_vf_load(w + i)));
    for (; i < n; i++)
        y[i] = x[i] * scale * w[i];
}

typedef struct {
    float *y;
    const float *x, *w;
    int64_t m, n, rpt;
    float eps;
} rmsnorm_job_t;

static void rmsnorm_task(void *arg, int64_t task, int thread)
{
    const rmsnorm_job_t *jb = arg;
    int64_t r1 = (task + 1) * jb->rpt < jb->m ? (task + 1) * jb->rpt : jb->m;
    for (int64_t r = task * jb->rpt; r < r1; r++)
        rmsnorm_row(jb->y + r * jb->n, jb->x + r * jb->n, jb->w, jb->n, jb->eps);
}

void bt_cpu_rmsnorm(void *ctx, float *y, const float *x, const float *w, int64_t m, int64_t n,
                    float eps)
{
    rmsnorm_job_t jb = {.y = y, .x = x, .w = w, .m = m, .n = n, .eps = eps};
    run_rows(ctx, rmsnorm_task, &jb, m, n, &jb.rpt);
}

/* ---- rope ---- */

#define ROPE_MAX_PAIRS 512

typedef struct {
    float *x;
    const int32_t *pos;
    const float *inv_freq;
    int64_t m, rpt;
    int n_heads, head_dim;
} rope_job_t;

static void rope_row(float *x, int32_t pos, int n_heads, int head_dim, const float *inv_freq)
{
    float cs[ROPE_MAX_PAIRS], sn[ROPE_MAX_PAIRS];
    const int half = head_dim / 2;
    for (int i = 0; i < half; i++) {
        float theta = (float)pos * inv_freq[i];
        cs[i] = cosf(theta);
        sn[i] = sinf(theta);
    }
    for (int h = 0; h < n_heads; h++) {
        float *xh = x + (size_t)h * head_dim;
        for (int i = 0; i < half; i++) {
            float x0 = xh[2 * i], x1 = xh[2 * i + 1];
            xh[2 * i] = x0 * cs[i] - x1 * sn[i];
            xh[2 * i + 1] = x0 * sn[i] + x1 * cs[i];
        }
    }
}

static void rope_task(void *arg, int64_t task, int thread)
{
    const rope_job_t *jb = arg;
    const int64_t n = (int64_t)jb->n_heads * jb->head_dim;
    int64_t r1 = (task + 1) * jb->rpt < jb->m ? (task + 1) * jb->rpt : jb->m;
    for (int64_t r = task * jb->rpt; r < r1; r++)
        rope_row(jb->x + r * n, jb->pos[r], jb->n_heads, jb->head_dim, jb->inv_freq);
}

void bt_cpu_rope(void *ctx, float *x, const int32_t *pos, int64_t m, int n_heads, int head_dim,
                 const float *inv_freq)
{
    assert(head_dim % 2 == 0 && head_dim / 2 <= ROPE_MAX_PAIRS);
    rope_job_t jb = {
        .x = x, .pos = pos, .inv_freq = inv_freq, .m = m, .n_heads = n_heads, .head_dim = head_dim};
    run_rows(ctx, rope_task, &jb, m, (int64_t)n_heads * head_dim, &jb.rpt);
}

/* ---- swiglu, add: flat element ranges ---- */

typedef struct {
    float *y;
    const float *a, *b;
    int64_t n;
} flat_job_t;

static BT_ALWAYS_INLINE bt_vf silu_mul(bt_vf g, bt_vf u)
{
    bt_vf e = bt_vf_exp(bt_vf_sub(bt_vf_zero(), g));
    return bt_vf_mul(bt_vf_div(g, bt_vf_add(bt_vf_set1(1.0f), e)), u);
}

static void swiglu_task(void *arg, int64_t task, int thread)
{
    const flat_job_t *jb = arg;
    int64_t i = task * CHUNK_ELEMS;
    int64_t end = i + CHUNK_ELEMS < jb->n ? i + CHUNK_ELEMS : jb->n;
    for (; i + BT_VW <= end; i += BT_VW)
        bt_vf_store(jb->y + i, silu_mul(bt_vf_load(jb->a + i), bt_vf_load(jb->b + i)));
    if (i < end) {
        int rem = (int)(end - i);
        bt_vf r = silu_mul(bt_vf_load_part(jb->a + i, rem), bt_vf_load_part(jb->b + i, rem));
        bt_vf_store_part(jb->y + i, r, rem);
    }
}

static void add_task(void *arg, int64_t task, int thread)
{
    const flat_job_t *jb = arg;
    int64_t i = task * CHUNK_ELEMS;
    int64_t end = i + CHUNK_ELEMS < jb->n ? i + CHUNK_ELEMS : jb->n;
    for (; i + BT_VW <= end; i += BT_VW)
        bt_vf_store(jb->y + i, bt_vf_add(bt_vf_load(jb->y + i), bt_vf_load(jb->a + i)));
    for (; i < end; i++)
        jb->y[i] += jb->a[i];
}

static void run_flat(bt_cpu_ctx_t *c, bt_cpu_task_fn fn, flat_job_t *jb)
{
    int64_t n_tasks = (jb->n + CHUNK_ELEMS - 1) / CHUNK_ELEMS;
    if (jb->n < PAR_MIN_ELEMS) {
        for (int64_t t = 0; t < n_tasks; t++)
            fn(jb, t, 0);
        return;
    }
    bt_cpu_pool_run(c->pool, fn, jb, n_tasks);
}

void bt_cpu_swiglu(void *ctx, float *y, const float *gate, const float *up, int64_t n)
{
    flat_job_t jb = {.y = y, .a = gate, .b = up, .n = n};
    run_flat(ctx, swiglu_task, &jb);
}

void bt_cpu_add(void *ctx, float *y, const float *x, int64_t n)
{
    flat_job_t jb = {.y = y, .a = x, .n = n};
    run_flat(ctx, add_task, &jb);
}

/* ---- gather_rows ---- */

typedef struct {
    float *y;
    const float *x;
    const int32_t *rows;
    int64_t m, n, rpt;
} gather_job_t;

static void gather_task(void *arg, int64_t task, int thread)
{
    const gather_job_t *jb = arg;
    int64_t r1 = (task + 1) * jb->rpt < jb->m ? (task + 1) * jb->rpt : jb->m;
    for (int64_t r = task * jb->rpt; r < r1; r++)
        memmove(jb->y + r * jb->n, jb->x + (int64_t)jb->rows[r] * jb->n,
                (size_t)jb->n * sizeof(float));
}

void bt_cpu_gather_rows(void *ctx, float *y, const float *x, const int32_t *rows, int64_t m,
                        int64_t n)
{
    gather_job_t jb = {.y = y, .x = x, .rows = rows, .m = m, .n = n};
    /* Row copies are memory-bound; one thread is as fast as two on small batches. */
    jb.rpt = m;
    bt_cpu_pool_run(((bt_cpu_ctx_t *)ctx)->pool, gather_task, &jb, 1);
}
