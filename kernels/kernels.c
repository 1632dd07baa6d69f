/* SPDX-License-Identifier: MIT */
/*
 * kernels.c - the backend registry and the thin wrappers through which callers reach an ops
 * table (callers never call through ops directly).
 */
#include "kernels.h"

#include <assert.h>
#include <math.h>

#include <stdlib.h>
#include <string.h>

#include "window.h"

struct bt_backend {
    const bt_backend_ops_t *ops;
    void *ctx;
    int fused; /* 0: BATON_FUSED_OPS=0, the fused ops run as their composition */
};

typedef struct {
    const char *name;
    bt_backend_create_fn create;
} registry_entry_t;

static const registry_entry_t registry[] = {
    {"cpu", bt_cpu_backend_create},
#ifdef BATON_HAVE_CUDA
    {"cuda", bt_cuda_backend_create},
#endif
};

#define N_REGISTRY (sizeof registry / sizeof registry[0])

const char *bt_backend_list(void)
{
#ifdef BATON_HAVE_CUDA
    return "cpu,cuda";
#else
    return "cpu";
#endif
}

const char *bt_type_name(int type)
{
    switch (type) {
    case BT_TYPE_F32: return "f32";
    case BT_TYPE_F16: return "f16";
    case BT_TYPE_BF16: return "bf16";
    case BT_TYPE_Q8_0: return "q8_0";
    }
    return NULL;
}

int bt_type_parse(const char *name)
{
    static const int types[] = {BT_TYPE_F32, BT_TYPE_F16, BT_TYPE_BF16, BT_TYPE_Q8_0};
    for (size_t i = 0; name && i < sizeof types / sizeof types[0]; i++)
        if (!strcmp(name, bt_type_name(types[i])))
            return types[i];
    return -1;
}

size_t bt_type_row_bytes(int type, int64_t n)
{
    if (n < 0)
        return 0;
    switch (type) {
    case BT_TYPE_F32: return (size_t)n * 4;
    case BT_TYPE_F16:
    case BT_TYPE_BF16: return (size_t)n * 2;
    case BT_TYPE_Q8_0: return n % BT_QK8_0 ? 0 : (size_t)(n / BT_QK8_0) * sizeof(bt_block_q8_0_t);
    }
    return 0;
}

int bt_backend_create(const char *name, const bt_backend_params_t *params, bt_backend_t **out)
{
    bt_backend_params_t defaults = {0};
    if (!params)
        params = &defaults;
    for (size_t i = 0; i < N_REGISTRY; i++) {
        if (strcmp(registry[i].name, name) != 0)
            continue;
        bt_backend_t *be = malloc(sizeof *be);
        if (!be)
            return BT_ERR_NOMEM;
        int st = registry[i].create(params, &be->ops, &be->ctx);
        if (st != BT_OK) {
            free(be);
            return st;
        }
        const char *f = getenv("BATON_FUSED_OPS");
        be->fused = !(f && !strcmp(f, "0"));
        *out = be;
        return BT_OK;
    }
    return BT_ERR_NOT_FOUND;
}

void bt_backend_destroy(bt_backend_t *be)
{
    if (!be)
        return;
    be->ops->destroy(be->ctx);
    free(be);
}

const char *bt_backend_name(const bt_backend_t *be)
{
    return be->ops->name;
}

int bt_backend_device_memory(const bt_backend_t *be)
{
    return be->ops->device_memory;
}

void *bt_backend_alloc(bt_backend_t *be, size_t size_bytes)
{
    return be->ops->alloc(be->ctx, size_bytes);
}

void bt_backend_free(bt_backend_t *be, void *ptr)
{
    if (ptr)
        be->ops->free(be->ctx, ptr);
}

void bt_backend_upload(bt_backend_t *be, void *dst, const void *src_host, size_t size_bytes)
{
    be->ops->upload(be->ctx, dst, src_host, size_bytes);
}

void bt_backend_download(bt_backend_t *be, void *dst_host, const void *src, size_t size_bytes)
{
    be->ops->download(be->ctx, dst_host, src, size_bytes);
}

void bt_backend_sync(bt_backend_t *be)
{
    if (be->ops->sync)
        be->ops->sync(be->ctx);
}

int bt_backend_step_begin(bt_backend_t *be, const bt_step_shape_t *shape)
{
    return be->ops->step_begin ? be->ops->step_begin(be->ctx, shape) : 0;
}

int bt_backend_step_end(bt_backend_t *be)
{
    assert(be->ops->step_end);
    return be->ops->step_end(be->ctx);
}

void bt_matmul(bt_backend_t *be, float *y, const bt_tensor_t *w, const float *x, int64_t m)
{
    be->ops->matmul(be->ctx, y, w, x, m);
}

/* Whether n_w weights can go to one fused op: a model file may store a layer's q, k and v in
 * different types. */
static int same_shape(int n_w, const bt_tensor_t *const *w)
{
    int same = n_w >= 1 && n_w <= 4;
    for (int t = 1; t < n_w; t++)
        same &= w[t]->type == w[0]->type && w[t]->cols == w[0]->cols;
    return same;
}

/* Whether gate and up can go to one fused swiglu op: one type and one shape. */
static int same_pair(const bt_tensor_t *gate, const bt_tensor_t *up)
{
    return gate->type == up->type && gate->rows == up->rows && gate->cols == up->cols;
}

void bt_matmul_multi(bt_backend_t *be, int n_w, float *const *y, const bt_tensor_t *const *w,
                     const float *x, int64_t m)
{
    if (be->fused && be->ops->matmul_multi && same_shape(n_w, w)) {
        be->ops->matmul_multi(be->ctx, n_w, y, w, x, m);
        return;
    }
    for (int t = 0; t < n_w; t++)
        be->ops->matmul(be->ctx, y[t], w[t], x, m);
}

void bt_matmul_add(bt_backend_t *be, float *y, const bt_tensor_t *w, const float *x, int64_t m,
                   float *tmp)
{
    if (be->fused && be->ops->matmul_add) {
        be->ops->matmul_add(be->ctx, y, w, x, m);
        return;
    }
    be->ops->matmul(be->ctx, tmp, w, x, m);
    be->ops->add(be->ctx, y, tmp, m * w->rows);
}

void bt_matmul_swiglu(bt_backend_t *be, float *y, const bt_tensor_t *gate, const bt_tensor_t *up,
                      const float *x, int64_t m, float *tmp)
{
    if (be->fused && be->ops->matmul_swiglu && same_pair(gate, up)) {
        be->ops->matmul_swiglu(be->ctx, y, gate, up, x, m);
        return;
    }
    float *const gu[2] = {y, tmp};
    const bt_tensor_t *const w[2] = {gate, up};
    bt_matmul_multi(be, 2, gu, w, x, m);
    be->ops->swiglu(be->ctx, y, y, tmp, m * gate->rows);
}

void bt_rms_matmul_multi(bt_backend_t *be, int n_w, float *const *y, const bt_tensor_t *const *w,
                         const float *x, const float *norm, float eps, int64_t m, float *xn)
{
    if (be->fused && be->ops->rms_matmul_multi && same_shape(n_w, w)) {
        be->ops->rms_matmul_multi(be->ctx, n_w, y, w, x, norm, eps, m);
        return;
    }
    be->ops->rmsnorm(be->ctx, xn, x, norm, m, w[0]->cols, eps);
    bt_matmul_multi(be, n_w, y, w, xn, m);
}

void bt_rms_matmul_swiglu(bt_backend_t *be, float *y, const bt_tensor_t *gate,
                          const bt_tensor_t *up, const float *x, const float *norm, float eps,
                          int64_t m, float *xn, float *tmp)
{
    if (be->fused && be->ops->rms_matmul_swiglu && same_pair(gate, up)) {
        be->ops->rms_matmul_swiglu(be->ctx, y, gate, up, x, norm, eps, m);
        return;
    }
    be->ops->rmsnorm(be->ctx, xn, x, norm, m, gate->cols, eps);
    bt_matmul_swiglu(be, y, gate, up, xn, m, tmp);
}

void bt_rms_ffn(bt_backend_t *be, float *x, const bt_tensor_t *gate, const bt_tensor_t *up,
                const bt_tensor_t *down, const float *norm, float eps, int64_t m, float *h,
                float *xn, float *tmp)
{
    if (be->fused && be->ops->rms_ffn && same_pair(gate, up)) {
        be->ops->rms_ffn(be->ctx, x, gate, up, down, norm, eps, m, h);
        return;
    }
    bt_rms_matmul_swiglu(be, h, gate, up, x, norm, eps, m, xn, tmp);
    bt_matmul_add(be, x, down, h, m, xn);
}

void bt_rope_kv_store(bt_backend_t *be, float *q, float *k, const float *v, const int32_t *pos,
                      int64_t m, int n_heads, const float *inv_freq, const bt_kv_layer_t *kv,
                      const bt_attn_seq_t *seqs, int n_seqs)
{
    if (be->fused && be->ops->rope_kv_store) {
        be->ops->rope_kv_store(be->ctx, q, k, v, pos, m, n_heads, inv_freq, kv, seqs, n_seqs);
        return;
    }
    be->ops->rope(be->ctx, q, pos, m, n_heads, kv->head_dim, inv_freq);
    be->ops->rope(be->ctx, k, pos, m, kv->n_kv_heads, kv->head_dim, inv_freq);
    be->ops->kv_store(be->ctx, kv, k, v, seqs, n_seqs);
}

void bt_get_rows(bt_backend_t *be, float *y, const bt_tensor_t *table, const int32_t *ids,
                 int64_t m)
{
    be->ops->get_rows(be->ctx, y, table, ids, m);
}

void bt_rmsnorm(bt_backend_t *be, float *y, const float *x, const float *w, int64_t m, int64_t n,
                float eps)
{
    be->ops->rmsnorm(be->ctx, y, x, w, m, n, eps);
}

void bt_rope(bt_backend_t *be, float *x, const int32_t *pos, int64_t m, int n_heads, int head_dim,
             const float *inv_freq)
{
    be->ops->rope(be->ctx, x, pos, m, n_heads, head_dim, inv_freq);
}

void bt_swiglu(bt_backend_t *be, float *y, const float *gate, const float *up, int64_t n)
{
    be->ops->swiglu(be->ctx, y, gate, up, n);
}

void bt_add(bt_backend_t *be, float *y, const float *x, int64_t n)
{
    be->ops->add(be->ctx, y, x, n);
}

void bt_gather_rows(bt_backend_t *be, float *y, const float *x, const int32_t *rows, int64_t m,
                    int64_t n)
{
    be->ops->gather_rows(be->ctx, y, x, rows, m, n);
}

void bt_kv_store(bt_backend_t *be, const bt_kv_layer_t *kv, const float *k, const float *v,
                 const bt_attn_seq_t *seqs, int n_seqs)
{
    be->ops->kv_store(be->ctx, kv, k, v, seqs, n_seqs);
}

void bt_attention(bt_backend_t *be, float *out, const float *q, const bt_kv_layer_t *kv,
                  const bt_attn_seq_t *seqs, int n_seqs, int n_heads, float scale)
{
    be->ops->attention(be->ctx, out, q, kv, seqs, n_seqs, n_heads, scale);
}

void bt_argmax_rows(bt_backend_t *be, int32_t *out_host, const float *x, int64_t m, int64_t n)
{
    if (be->ops->argmax_rows) {
        be->ops->argmax_rows(be->ctx, out_host, x, m, n);
        return;
    }
    assert(!be->ops->device_memory);
    for (int64_t i = 0; i < m; i++)
        out_host[i] = bt_argmax_f32(x + i * n, n);
}

void bt_topk_rows(bt_backend_t *be, int32_t *ids_host, float *vals_host, const float *x, int64_t m,
                  int64_t n, int32_t k)
{
    assert(k >= 1 && k <= BT_TOPK_MAX && k <= n);
    if (be->ops->topk_rows) {
        be->ops->topk_rows(be->ctx, ids_host, vals_host, x, m, n, k);
        return;
    }
    assert(!be->ops->device_memory);
    for (int64_t i = 0; i < m; i++)
        bt_topk_f32(x + i * n, n, k, ids_host + i * k, vals_host + i * k);
}

void bt_penalize_rows(bt_backend_t *be, float *x, int64_t m, int64_t n, const int32_t *ids_host,
                      const int32_t *n_ids_host, const float *pen_host, int32_t cap)
{
    if (be->ops->penalize_rows) {
        be->ops->penalize_rows(be->ctx, x, m, n, ids_host, n_ids_host, pen_host, cap);
        return;
    }
    assert(!be->ops->device_memory);
    for (int64_t i = 0; i < m; i++)
        for (int32_t j = 0; j < n_ids_host[i]; j++) {
            float *l = x + i * n + ids_host[i * cap + j];
            *l = bt_penalize_logit(*l, pen_host[i]);
        }
}

void bt_window_totals(bt_backend_t *be, double *totals_host, const float *x, const float *tau_host,
                      int64_t m, int64_t n)
{
    if (be->ops->window_totals) {
        be->ops->window_totals(be->ctx, totals_host, x, tau_host, m, n);
        return;
    }
    assert(!be->ops->device_memory);
    for (int64_t i = 0; i < m; i++)
        totals_host[i] = tau_host[i] > 0 ? bt_window_total_f32(x + i * n, n, tau_host[i]) : 0;
}

float bt_max_f32(const float *x, int64_t n)
{
    float m = -INFINITY;
    for (int64_t i = 0; i < n; i++)
        m = x[i] > m ? x[i] : m;
    return m;
}

double bt_window_total_f32(const float *x, int64_t n, float tau)
{
    const float max = bt_max_f32(x, n);
    if (!isfinite(max))
        return 0;
    /* Lane l takes x[l], x[l + LANES], ...: a whole block of LANES at a time, which the
     * compiler vectorizes (branch-free weights), then the rest. */
    double lane[BT_WINDOW_LANES] = {0};
    int64_t i = 0;
    for (; i + BT_WINDOW_LANES <= n; i += BT_WINDOW_LANES)
        for (int l = 0; l < BT_WINDOW_LANES; l++)
            lane[l] += bt_window_weight(x[i + l], max, tau);
    for (int l = 0; i + l < n; l++)
        lane[l] += bt_window_weight(x[i + l], max, tau);
    return bt_window_lanes_sum(lane);
}

/* Whether (ka, ia) ranks before (kb, ib). */
static int topk_before(uint32_t ka, int32_t ia, uint32_t kb, int32_t ib)
{
    return ka > kb || (ka == kb && ia < ib);
}

/* A sorted list of the best k so far (keys beside ids, values read back at the end); an entry
 * enters only if its key beats the last one's, since it comes after it in index order. Random
 * logits rarely do: once the list is full, blocks of 16 values are first checked for any
 * above the last entry's value with a plain float compare (branch-free, so it vectorizes),
 * and only a block with one goes through the keys. Float order agrees with key order except
 * for NaN, which never passes the compare and ranks last anyway; while the last entry is a NaN
 * the compare is not used. */
void bt_topk_f32(const float *x, int64_t n, int32_t k, int32_t *ids, float *vals)
{
    enum { BLOCK = 16 };
    uint32_t keys[BT_TOPK_MAX];
    int32_t have = 0;
    for (int64_t i = 0; i < n; i++) {
        if (have == k && keys[k - 1] != 0 && (i % BLOCK) == 0 && i + BLOCK <= n) {
            const float thr = x[ids[k - 1]];
            int any = 0;
            for (int j = 0; j < BLOCK; j++)
                any |= x[i + j] > thr;
            if (!any) {
                i += BLOCK - 1;
                continue;
            }
        }
        uint32_t key = bt_topk_key(x[i]);
        if (have == k && key <= keys[k - 1])
            continue;
        int32_t at = have < k ? have++ : k - 1;
        while (at > 0 && topk_before(key, (int32_t)i, keys[at - 1], ids[at - 1])) {
            keys[at] = keys[at - 1];
            ids[at] = ids[at - 1];
            at--;
        }
        keys[at] = key;
        ids[at] = (int32_t)i;
    }
    for (int32_t j = 0; j < have; j++)
        vals[j] = x[ids[j]];
}

/* Two passes: the maximum over 16 independent lanes (branch-free, so the compiler vectorizes
 * it), then the first index holding it. A running "best index" loop branches on every element
 * and mispredicts on noisy logits: about 12x slower over a 32000-token vocabulary. */
int32_t bt_argmax_f32(const float *x, int64_t n)
{
    enum { LANES = 16 };
    float m[LANES];
    for (int j = 0; j < LANES; j++)
        m[j] = -INFINITY;
    int64_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int j = 0; j < LANES; j++)
            m[j] = x[i + j] > m[j] ? x[i + j] : m[j];
    float mx = -INFINITY;
    for (int j = 0; j < LANES; j++)
        mx = m[j] > mx ? m[j] : mx;
    for (; i < n; i++)
        mx = x[i] > mx ? x[i] : mx;
    if (n <= 0 || !(x[0] < mx))
        return 0;
    for (i = 1; i < n; i++)
        if (x[i] == mx)
            return (int32_t)i;
    return 0;
}
