/* SPDX-License-Identifier: MIT */
/*
 * cpu_backend.c - the "cpu" backend: create/destroy, host memory ops and the ops table.
 *
 * The one thing to know: create sizes everything an op will need (the thread pool, the Q8_0
 * activation scratch, per-thread attention tiles) so that ops never allocate on the request
 * path; "device" memory is plain 64-byte aligned host memory.
 */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cpu_impl.h"

#define DEFAULT_MAX_ROWS 512
#define DEFAULT_MAX_COLS 8192

void *bt_cpu_aligned_alloc(size_t size_bytes)
{
    void *p = NULL;
    if (posix_memalign(&p, 64, size_bytes ? size_bytes : 64) != 0)
        return NULL;
    return p;
}

static void cpu_destroy(void *ctx)
{
    bt_cpu_ctx_t *c = ctx;
    if (!c)
        return;
    bt_cpu_pool_destroy(c->pool);
    free(c->q8_qs);
    free(c->q8_d);
    free(c->attn);
    free(c);
}

/* Large buffers (a KV pool) start on a page: a pool that owns all its pages can be shared
 * with a same-host peer whole (kvx maps it; a partial first page had to be read with a system
 * call on every transfer that touched it), and kernel copies out of it run at full speed. */
static void *cpu_alloc(void *ctx, size_t size_bytes)
{
    long page = sysconf(_SC_PAGESIZE);
    if (size_bytes < ((size_t)1 << 20) || page <= 64)
        return bt_cpu_aligned_alloc(size_bytes);
    void *p = NULL;
    return posix_memalign(&p, (size_t)page, size_bytes) == 0 ? p : NULL;
}

static void cpu_free(void *ctx, void *ptr)
{
    free(ptr);
}

static void cpu_copy(void *ctx, void *dst, const void *src, size_t size_bytes)
{
    memcpy(dst, src, size_bytes);
}

static void cpu_sync(void *ctx) {}

/* The sampling ops' rows on every core: each row's result is the host function's, whichever
 * thread computes it. */
typedef struct {
    const float *x;
    int64_t n;
    int32_t k;
    int32_t *ids;
    float *vals;
    const float *tau;
    double *totals;
} rows_job_t;

static void topk_task(void *arg, int64_t i, int thread)
{
    const rows_job_t *j = arg;
    bt_topk_f32(j->x + i * j->n, j->n, j->k, j->ids + i * j->k, j->vals + i * j->k);
}

static void cpu_topk_rows(void *ctx, int32_t *ids_host, float *vals_host, const float *x, int64_t m,
                          int64_t n, int32_t k)
{
    bt_cpu_ctx_t *c = ctx;
    rows_job_t j = {.x = x, .n = n, .k = k, .ids = ids_host, .vals = vals_host};
    bt_cpu_pool_run(c->pool, topk_task, &j, m);
}

static void totals_task(void *arg, int64_t i, int thread)
{
    const rows_job_t *j = arg;
    j->totals[i] = j->tau[i] > 0 ? bt_window_total_f32(j->x + i * j->n, j->n, j->tau[i]) : 0;
}

static void cpu_window_totals(void *ctx, double *totals_host, const float *x, const float *tau_host,
                              int64_t m, int64_t n)
{
    bt_cpu_ctx_t *c = ctx;
    rows_job_t j = {.x = x, .n = n, .tau = tau_host, .totals = totals_host};
    bt_cpu_pool_run(c->pool, totals_task, &j, m);
}

static const bt_backend_ops_t cpu_ops = {
    .name = "cpu",
    .destroy = cpu_destroy,
    .alloc = cpu_alloc,
    .free = cpu_free,
    .upload = cpu_copy,
    .download = cpu_copy,
    .sync = cpu_sync,
    .matmul = bt_cpu_matmul,
    .matmul_multi = bt_cpu_matmul_multi,
    .get_rows = bt_cpu_get_rows,
    .rmsnorm = bt_cpu_rmsnorm,
    .rope = bt_cpu_rope,
    .swiglu = bt_cpu_swiglu,
    .add = bt_cpu_add,
    .gather_rows = bt_cpu_gather_rows,
    .kv_store = bt_cpu_kv_store,
    .attention = bt_cpu_attention,
    .topk_rows = cpu_topk_rows,
    .window_totals = cpu_window_totals,
};

static int resolve_threads(int n_threads)
{
    if (n_threads > 0)
        return n_threads;
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

static int alloc_scratch(bt_cpu_ctx_t *c, const bt_backend_params_t *params)
{
    int64_t rows = params->max_rows > 0 ? params->max_rows : DEFAULT_MAX_ROWS;
    int64_t cols = params->max_cols > 0 ? params->max_cols : DEFAULT_MAX_COLS;
    cols = (cols + 31) / 32 * 32;
    c->q8_cap = (size_t)rows * (size_t)cols;
    c->q8_qs = bt_cpu_aligned_alloc(c->q8_cap);
    c->q8_d = bt_cpu_aligned_alloc(c->q8_cap / 32 * sizeof(float));
    c->attn_floats = bt_cpu_attention_scratch_floats();
    c->attn = bt_cpu_aligned_alloc((size_t)c->n_threads * c->attn_floats * sizeof(float));
    return c->q8_qs && c->q8_d && c->attn ? BT_OK : BT_ERR_NOMEM;
}

int bt_cpu_backend_create(const bt_backend_params_t *params, const bt_backend_ops_t **ops,
                          void **ctx)
{
    bt_backend_params_t defaults = {0};
    if (!params)
        params = &defaults;
    if (params->max_rows < 0 || params->max_cols < 0 || params->n_threads < 0)
        return BT_ERR_INVAL;
    bt_cpu_ctx_t *c = calloc(1, sizeof *c);
    if (!c)
        return BT_ERR_NOMEM;
    c->n_threads = resolve_threads(params->n_threads);
    int st = alloc_scratch(c, params);
    if (st != BT_OK)
        goto err_ctx;
    st = bt_cpu_pool_create(c->n_threads, &c->pool);
    if (st != BT_OK)
        goto err_ctx;
    *ops = &cpu_ops;
    *ctx = c;
    return BT_OK;

err_ctx:
    cpu_destroy(c);
    return st;
}
