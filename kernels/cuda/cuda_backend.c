/* SPDX-License-Identifier: MIT */
/*
 * cuda_backend.c - the "cuda" backend: create/destroy, device memory, the ops table, and the
 * host-side halves of the ops (table staging, matmul dispatch between our GEMV kernels and
 * cuBLAS, for the plain and the fused matmuls).
 *
 * The one thing to know: everything runs in order on one stream, and everything an op needs
 * beyond its arguments is allocated here at create time: pinned staging and device buffers for
 * the host-side tables the ops table passes in (attention block tables, gather indices,
 * sampling temperatures, repetition penalties), the bf16 copy of matmul activations for cuBLAS
 * (read as f32, also the normed rows where an rmsnorm-fused matmul runs as its composition; and the
 * f32 up product of a cuBLAS swiglu), cuBLAS's workspace and the split-attention partials, and the
 * results of the sampling ops (argmax, top-k, window totals). Ops never allocate; a call
 * larger than the scratch is done in pieces.
 *
 * Graph steps (BATON_CUDA_GRAPHS=1, cuda_graph.c): between step_begin and step_end each op
 * traces its by-value arguments and launches only while the step is captured; its host tables
 * go through the graph's input arena instead of the staging buffers, and its downloads wait
 * for step_end.
 *
 * Determinism: by default every matmul goes through the GEMV kernels, whose per-element
 * reduction order does not depend on the batch, and attention is chunked by position only, so
 * the kernels.h contract holds on this backend too (the CUDA results differ from the CPU
 * backend's in the last bits: the reduction orders differ). With allow_nondeterministic,
 * matmuls of more than gemv_max_m rows round the activations to bf16 (or fp16) and run in
 * cuBLAS, and prefill attention runs on tensor cores: much faster prefill, at bf16 precision
 * and no batch invariance.
 */
#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_impl.h"

#define DEFAULT_MAX_ROWS 512
#define DEFAULT_MAX_COLS 8192
#define DEFAULT_GEMV_MAX_M 8
#define BLAS_WS_BYTES ((size_t)32 << 20)
#define ATTN_PART_BYTES ((size_t)64 << 20)
#define SEQ_TABLE_BYTES ((size_t)4 << 20)

void bt_cuda_check(int err, const char *what, const char *file, int line)
{
    if (err == cudaSuccess)
        return;
    fprintf(stderr, "%s:%d: %s: CUDA error %d: %s\n", file, line, what, err,
            cudaGetErrorString((cudaError_t)err));
    abort();
}

void bt_cublas_check(int status, const char *what, const char *file, int line)
{
    if (status == CUBLAS_STATUS_SUCCESS)
        return;
    fprintf(stderr, "%s:%d: %s: cuBLAS status %d\n", file, line, what, status);
    abort();
}

/* ---- staging of small host tables ---- */

static int stage_init(bt_cuda_stage_t *s, size_t cap)
{
    memset(s, 0, sizeof *s);
    s->cap = cap;
    if (cudaMallocHost(&s->host, cap) != cudaSuccess)
        return BT_ERR_NOMEM;
    if (cudaMalloc(&s->dev, cap) != cudaSuccess)
        return BT_ERR_NOMEM;
    if (cudaEventCreateWithFlags(&s->copied, cudaEventDisableTiming) != cudaSuccess)
        return BT_ERR_INTERNAL;
    return BT_OK;
}

static void stage_fini(bt_cuda_stage_t *s)
{
    if (s->copied)
        cudaEventDestroy(s->copied);
    cudaFree(s->dev);
    cudaFreeHost(s->host);
    memset(s, 0, sizeof *s);
}

/* Device copy of bytes of src, uploaded in stream order; free if it equals the last upload.
 * The pinned buffer is rewritten only after the previous copy out of it has finished. */
static const void *stage_put(bt_cuda_ctx_t *c, bt_cuda_stage_t *s, const void *src, size_t bytes)
{
    if (bytes > s->cap) {
        fprintf(stderr, "cuda: table of %zu bytes exceeds its staging buffer (%zu)\n", bytes,
                s->cap);
        abort();
    }
    if (s->len == bytes && memcmp(s->host, src, bytes) == 0)
        return s->dev;
    if (s->len)
        BT_CUDA_CHECK(cudaEventSynchronize(s->copied));
    memcpy(s->host, src, bytes);
    BT_CUDA_CHECK(cudaMemcpyAsync(s->dev, s->host, bytes, cudaMemcpyHostToDevice, c->stream));
    BT_CUDA_CHECK(cudaEventRecord(s->copied, c->stream));
    s->len = bytes;
    return s->dev;
}

/* The CUDA runtime's current device is per host thread, and the thread that drives a backend
 * need not be the one that created it: every entry point makes the backend's device current.
 * The last device set is remembered per thread, so the common case costs a compare. */
static _Thread_local int tl_device = -1;

static bt_cuda_ctx_t *enter(void *ctx)
{
    bt_cuda_ctx_t *c = ctx;
    if (tl_device != c->device) {
        BT_CUDA_CHECK(cudaSetDevice(c->device));
        tl_device = c->device;
    }
    return c;
}

/* ---- graph steps (cuda_graph.c) ---- */

/* Whether an op launches its kernels: always outside a graph step and while one is captured,
 * never while one is replayed (the graph launches them). In a graph step the op's by-value
 * arguments, which the graph bakes in, are traced first, so that a replay with other
 * arguments is caught. */
#define LAUNCHES(c, op, ...)                                                                       \
    ((c)->sg.mode == BT_STEPGRAPH_OFF ||                                                           \
     bt_cuda_graph_op((c), (op), (const uint64_t[]){__VA_ARGS__},                                  \
                      sizeof((const uint64_t[]){__VA_ARGS__}) / sizeof(uint64_t)))
#define U(p) ((uint64_t)(uintptr_t)(p))

static uint64_t fbits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static int cuda_step_begin(void *ctx, const bt_step_shape_t *shape)
{
    return bt_cuda_graph_begin(enter(ctx), shape);
}

static int cuda_step_end(void *ctx)
{
    return bt_cuda_graph_end(enter(ctx));
}

/* ---- memory ---- */

static void cuda_destroy(void *ctx)
{
    bt_cuda_ctx_t *c = ctx;
    if (!c)
        return;
    cudaSetDevice(c->device);
    tl_device = c->device;
    if (c->stream)
        cudaStreamSynchronize(c->stream);
    bt_cuda_graph_fini(c);
    if (c->blas)
        cublasDestroy(c->blas);
    stage_fini(&c->seqs);
    stage_fini(&c->rows);
    stage_fini(&c->tau);
    stage_fini(&c->pen_ids);
    stage_fini(&c->pen_n);
    stage_fini(&c->pen_f);
    cudaFree(c->argmax_out);
    cudaFree(c->topk_ids);
    cudaFree(c->topk_vals);
    cudaFree(c->win_totals);
    cudaFree(c->blas_ws);
    cudaFree(c->act16);
    cudaFree(c->glu_up);
    cudaFree(c->attn_part);
    cudaFree(c->attn_count);
    if (c->stream)
        cudaStreamDestroy(c->stream);
    free(c->pack);
    free(c);
}

static void *cuda_alloc(void *ctx, size_t size_bytes)
{
    void *p = NULL;
    enter(ctx);
    if (cudaMalloc(&p, size_bytes ? size_bytes : 256) != cudaSuccess) {
        cudaGetLastError(); /* clear it, so that later checks see only their own errors */
        return NULL;
    }
    return p;
}

static void cuda_free(void *ctx, void *ptr)
{
    bt_cuda_ctx_t *c = enter(ctx);
    /* cudaFree synchronizes the device, so no kernel still reads the memory. */
    BT_CUDA_CHECK(cudaStreamSynchronize(c->stream));
    BT_CUDA_CHECK(cudaFree(ptr));
}

/* Pageable sources are copied out before cudaMemcpyAsync returns, so src_host may be reused at
 * once; the copy is ordered with the kernels on the stream. */
static void cuda_upload(void *ctx, void *dst, const void *src_host, size_t size_bytes)
{
    bt_cuda_ctx_t *c = enter(ctx);
    if (c->sg.mode != BT_STEPGRAPH_OFF) {
        bt_cuda_graph_upload(c, dst, src_host, size_bytes);
        return;
    }
    BT_CUDA_CHECK(cudaMemcpyAsync(dst, src_host, size_bytes, cudaMemcpyHostToDevice, c->stream));
}

static void cuda_download(void *ctx, void *dst_host, const void *src, size_t size_bytes)
{
    bt_cuda_ctx_t *c = enter(ctx);
    if (c->sg.mode != BT_STEPGRAPH_OFF) { /* pageable: not capturable, done by step_end */
        bt_cuda_graph_download(c, dst_host, src, size_bytes);
        return;
    }
    BT_CUDA_CHECK(cudaMemcpyAsync(dst_host, src, size_bytes, cudaMemcpyDeviceToHost, c->stream));
    BT_CUDA_CHECK(cudaStreamSynchronize(c->stream));
}

static void cuda_sync(void *ctx)
{
    bt_cuda_ctx_t *c = enter(ctx);
    if (c->sg.mode != BT_STEPGRAPH_OFF) {
        fprintf(stderr, "cuda: sync inside a graph step (step_end syncs)\n");
        abort();
    }
    BT_CUDA_CHECK(cudaStreamSynchronize(c->stream));
}

/* ---- matmul ---- */

/* How x . w^T of m rows runs: the GEMV kernels (batch-invariant, any m), or with nondet and
 * more than gemv_max_m rows, cuBLAS on a 16-bit copy of the activations (BF16/F16 weights) or
 * in f32 (F32 weights). The fused ops take the same path as the plain matmul of each weight. */
enum { MM_GEMV, MM_GEMM16, MM_SGEMM };

/* The GEMV launchers' stream and launch mode. */
static bt_cuda_launch_t gemv_launch_of(const bt_cuda_ctx_t *c)
{
    return (bt_cuda_launch_t){c->stream, c->pdl, c->pdl_prefetch};
}

static int mm_path(const bt_cuda_ctx_t *c, const bt_tensor_t *w, int64_t m)
{
    const int big = c->nondet && m > c->gemv_max_m && w->rows < INT32_MAX && w->cols < INT32_MAX &&
                    m < INT32_MAX;
    if (big && (w->type == BT_TYPE_BF16 || w->type == BT_TYPE_F16) &&
        (size_t)w->cols <= c->act16_elems)
        return MM_GEMM16;
    if (big && w->type == BT_TYPE_F32)
        return MM_SGEMM;
    return MM_GEMV;
}

/* Rows of x per chunk of the 16-bit activation copy. */
static int64_t act16_rows(const bt_cuda_ctx_t *c, int64_t k)
{
    return (int64_t)(c->act16_elems / (size_t)k);
}

/* cuBLAS's name for a 16-bit weight type (BF16 or F16). */
static cudaDataType_t blas16_type(int type)
{
    return type == BT_TYPE_BF16 ? CUDA_R_16BF : CUDA_R_16F;
}

/* y (mi x w.rows, of type yt: f32, or the weight's 16-bit type) = act16 . w^T + beta * y: one
 * cublasGemmEx on the activation copy, f32 accumulation, rounded once on output. */
static void gemm16_to(bt_cuda_ctx_t *c, void *y, cudaDataType_t yt, const bt_tensor_t *w,
                      int64_t mi, float beta)
{
    const cudaDataType_t dt = blas16_type(w->type);
    const int n = (int)w->rows, k = (int)w->cols;
    const float alpha = 1.0f;
    /* Column-major view: y^T (n x mi) = W^T(op T of a k x n matrix) . x^T (k x mi). */
    BT_CUBLAS_CHECK(cublasGemmEx(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, n, (int)mi, k, &alpha, w->data,
                                 dt, k, c->act16, dt, k, &beta, y, yt, n, CUBLAS_COMPUTE_32F,
                                 CUBLAS_GEMM_DEFAULT));
}

static void gemm16(bt_cuda_ctx_t *c, float *y, const bt_tensor_t *w, int64_t mi, float beta)
{
    gemm16_to(c, y, CUDA_R_32F, w, mi, beta);
}

/* act16 = mi rows of x (k floats each) in the 16-bit type, or with norm set of rmsnorm(x,
 * norm, eps): the bits of the rmsnorm op into f32 rows then converted (elementwise.cu), without
 * the f32 rows. */
static void to_act16(bt_cuda_ctx_t *c, int type, const float *x, const float *norm, float eps,
                     int64_t mi, int64_t k)
{
    if (norm)
        bt_cuda_rms_convert_launch(c->stream, c->act16, type, x, norm, mi, k, eps);
    else
        bt_cuda_convert_launch(c->stream, c->act16, type, x, mi * k);
}

/* y[t] = x . w[t]^T + beta * y[t] for n_w weights of one 16-bit type and column count (x
 * normed first when norm is set), in row chunks that fit the activation copy: each chunk is
 * converted once and every weight's GEMM reads that copy (a layer's q, k and v share one
 * conversion). */
static void blas_gemm16(bt_cuda_ctx_t *c, int n_w, float *const *y, const bt_tensor_t *const *w,
                        const float *x, const float *norm, float eps, int64_t m, float beta)
{
    const int64_t k = w[0]->cols, chunk = act16_rows(c, k);
    for (int64_t i0 = 0; i0 < m; i0 += chunk) {
        const int64_t mi = m - i0 < chunk ? m - i0 : chunk;
        to_act16(c, w[0]->type, x + i0 * k, norm, eps, mi, k);
        for (int t = 0; t < n_w; t++)
            if (w[t]->rows > 0)
                gemm16(c, y[t] + i0 * w[t]->rows, w[t], mi, beta);
    }
}

static void blas_sgemm(bt_cuda_ctx_t *c, float *y, const bt_tensor_t *w, const float *x, int64_t m,
                       float beta)
{
    const float alpha = 1.0f;
    const int n = (int)w->rows, k = (int)w->cols;
    if (n > 0)
        BT_CUBLAS_CHECK(cublasSgemm(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, n, (int)m, k, &alpha,
                                    w->data, k, x, k, &beta, y, n));
}

/* The plain matmul once its arguments are traced. */
static void matmul_run(bt_cuda_ctx_t *c, float *y, const bt_tensor_t *w, const float *x, int64_t m)
{
    switch (mm_path(c, w, m)) {
    case MM_GEMM16: blas_gemm16(c, 1, &y, &w, x, NULL, 0.0f, m, 0.0f); break;
    case MM_SGEMM: blas_sgemm(c, y, w, x, m, 0.0f); break;
    default: bt_cuda_gemv_launch(gemv_launch_of(c), y, w, x, m);
    }
}

/* A weight's by-value arguments, as graph steps trace them. */
#define TENSOR_ARGS(w) (w)->type, (w)->rows, (w)->cols, U((w)->data)

static void cuda_matmul(void *ctx, float *y, const bt_tensor_t *w, const float *x, int64_t m)
{
    bt_cuda_ctx_t *c = enter(ctx);
    if (m <= 0 || w->rows <= 0 || !LAUNCHES(c, "matmul", U(y), TENSOR_ARGS(w), U(x), m))
        return;
    matmul_run(c, y, w, x, m);
}

/* ---- fused matmuls: the GEMV kernels' fused forms, or cuBLAS with shared conversions ---- */

/* A multi op's weights and outputs in all BT_CUDA_GEMV_MAX_W slots, absent ones as zeros, so
 * that a graph step's trace (MULTI_ARGS) covers each weight and output. */
typedef struct {
    const bt_tensor_t *w[BT_CUDA_GEMV_MAX_W];
    float *y[BT_CUDA_GEMV_MAX_W];
} multi_slots_t;

static multi_slots_t multi_slots(int n_w, float *const *y, const bt_tensor_t *const *w)
{
    static const bt_tensor_t none;
    multi_slots_t s;
    assert(n_w <= BT_CUDA_GEMV_MAX_W);
    for (int t = 0; t < BT_CUDA_GEMV_MAX_W; t++) {
        s.w[t] = t < n_w ? w[t] : &none;
        s.y[t] = t < n_w ? y[t] : NULL;
    }
    return s;
}

#define MULTI_ARGS(s)                                                                              \
    U((s).y[0]), TENSOR_ARGS((s).w[0]), U((s).y[1]), TENSOR_ARGS((s).w[1]), U((s).y[2]),           \
        TENSOR_ARGS((s).w[2]), U((s).y[3]), TENSOR_ARGS((s).w[3])

static void cuda_matmul_multi(void *ctx, int n_w, float *const *y, const bt_tensor_t *const *w,
                              const float *x, int64_t m)
{
    bt_cuda_ctx_t *c = enter(ctx);
    const multi_slots_t s = multi_slots(n_w, y, w);
    if (m <= 0 || n_w <= 0 || !LAUNCHES(c, "matmul_multi", n_w, MULTI_ARGS(s), U(x), m))
        return;
    const int path = mm_path(c, w[0], m);
    int same = 1;
    for (int t = 1; t < n_w; t++)
        same &= w[t]->type == w[0]->type && w[t]->cols == w[0]->cols && mm_path(c, w[t], m) == path;
    if (same && path == MM_GEMM16) {
        blas_gemm16(c, n_w, y, w, x, NULL, 0.0f, m, 0.0f);
    } else if (same && path == MM_GEMV) {
        bt_cuda_gemv_multi_launch(gemv_launch_of(c), n_w, y, w, x, m);
    } else { /* f32 GEMMs share nothing; weights that differ take their own paths */
        for (int t = 0; t < n_w; t++)
            if (w[t]->rows > 0)
                matmul_run(c, y[t], w[t], x, m);
    }
}

/* cuBLAS adds to its output with beta = 1; the GEMV kernels add in their epilogue. x must not
 * overlap y (the kernels write y while other blocks still read x). */
static void cuda_matmul_add(void *ctx, float *y, const bt_tensor_t *w, const float *x, int64_t m)
{
    bt_cuda_ctx_t *c = enter(ctx);
    if (m <= 0 || w->rows <= 0 || !LAUNCHES(c, "matmul_add", U(y), TENSOR_ARGS(w), U(x), m))
        return;
    switch (mm_path(c, w, m)) {
    case MM_GEMM16: blas_gemm16(c, 1, &y, &w, x, NULL, 0.0f, m, 1.0f); break;
    case MM_SGEMM: blas_sgemm(c, y, w, x, m, 1.0f); break;
    default: bt_cuda_gemv_add_launch(gemv_launch_of(c), y, w, x, m);
    }
}

/* cuBLAS swiglu: per row chunk, the gate's GEMM into y and the up's into glu_up (sharing one
 * conversion of x for 16-bit weights, of rmsnorm(x, norm, eps) when norm is set), then the
 * swiglu kernel; the chunk fits both scratch buffers (the caller checked that one row does).
 * The f32 GEMMs read x itself: norm must be NULL. */
static void blas_swiglu(bt_cuda_ctx_t *c, int path, float *y, const bt_tensor_t *gate,
                        const bt_tensor_t *up, const float *x, const float *norm, float eps,
                        int64_t m)
{
    assert(path == MM_GEMM16 || !norm);
    const int64_t k = gate->cols, n = gate->rows;
    int64_t chunk = (int64_t)(c->glu_up_floats / (size_t)n);
    if (path == MM_GEMM16 && act16_rows(c, k) < chunk)
        chunk = act16_rows(c, k);
    for (int64_t i0 = 0; i0 < m; i0 += chunk) {
        const int64_t mi = m - i0 < chunk ? m - i0 : chunk;
        float *yi = y + i0 * n;
        if (path == MM_GEMM16) {
            to_act16(c, gate->type, x + i0 * k, norm, eps, mi, k);
            gemm16(c, yi, gate, mi, 0.0f);
            gemm16(c, c->glu_up, up, mi, 0.0f);
        } else {
            blas_sgemm(c, yi, gate, x + i0 * k, mi, 0.0f);
            blas_sgemm(c, c->glu_up, up, x + i0 * k, mi, 0.0f);
        }
        bt_cuda_swiglu_launch(c->stream, yi, yi, c->glu_up, mi * n);
    }
}

/* x must not overlap y. The GEMV kernels need no scratch; cuBLAS needs glu_up, and a call
 * whose single row would not fit it (rows beyond max_cols) takes the GEMV kernels. */
static void cuda_matmul_swiglu(void *ctx, float *y, const bt_tensor_t *gate, const bt_tensor_t *up,
                               const float *x, int64_t m)
{
    bt_cuda_ctx_t *c = enter(ctx);
    assert(gate->type == up->type && gate->rows == up->rows && gate->cols == up->cols);
    if (m <= 0 || gate->rows <= 0 ||
        !LAUNCHES(c, "matmul_swiglu", U(y), TENSOR_ARGS(gate), TENSOR_ARGS(up), U(x), m))
        return;
    const int path = mm_path(c, gate, m);
    if (path != MM_GEMV && (size_t)gate->rows <= c->glu_up_floats)
        blas_swiglu(c, path, y, gate, up, x, NULL, 0.0f, m);
    else
        bt_cuda_gemv_swiglu_launch(gemv_launch_of(c), y, gate, up, x, m);
}

/* ---- rmsnorm-fused matmuls: rmsnorm(x, norm, eps) as the input, never written out ----
 *
 * Each path gives the bits of the rmsnorm op followed by the same backend's fused op: the
 * pre-norm GEMV kernels and the norm + conversion kernel compute every normed element with the
 * rmsnorm kernel's own code (elementwise.cuh), and cuBLAS gets the same 16-bit rows in the same
 * row chunks. Where neither fits (f32 weights on cuBLAS; an x or norm whose alignment would put
 * the pre-norm GEMV kernel on another path than the plain one on an aligned buffer) the op runs
 * as that composition, the normed rows going to act16 read as f32: those paths never use act16
 * themselves. */

/* Rows of normed f32 activations act16 holds: half its 16-bit rows. */
static int64_t norm_rows(const bt_cuda_ctx_t *c, int64_t k)
{
    return (int64_t)(c->act16_elems / 2 / (size_t)k);
}

/* rmsnorm into act16 a row chunk at a time, then the plain matmuls on it (path MM_SGEMM or
 * MM_GEMV, chosen for all m rows as the composition would). With no room for one row (act16
 * holds max_rows / 2 rows of the widest input: only a context of max_rows 1) the pre-norm GEMV
 * kernels run instead: right for any m, only slower (on the SGEMM path their bits are then the
 * GEMV kernels', not cuBLAS's). */
static void rms_compose_multi(bt_cuda_ctx_t *c, int path, int n_w, float *const *y,
                              const bt_tensor_t *const *w, const float *x, const float *norm,
                              float eps, int64_t m)
{
    const int64_t k = w[0]->cols, chunk = norm_rows(c, k);
    if (chunk < 1) {
        bt_cuda_gemv_rms_multi_launch(gemv_launch_of(c), n_w, y, w, x, norm, eps, m);
        return;
    }
    float *xn = (float *)c->act16;
    for (int64_t i0 = 0; i0 < m; i0 += chunk) {
        const int64_t mi = m - i0 < chunk ? m - i0 : chunk;
        float *yi[BT_CUDA_GEMV_MAX_W];
        for (int t = 0; t < n_w; t++)
            yi[t] = y[t] + i0 * w[t]->rows;
        bt_cuda_rmsnorm_launch(c->stream, xn, x + i0 * k, norm, mi, k, eps);
        if (path == MM_SGEMM) {
            for (int t = 0; t < n_w; t++)
                blas_sgemm(c, yi[t], w[t], xn, mi, 0.0f);
        } else {
            bt_cuda_gemv_multi_launch(gemv_launch_of(c), n_w, yi, w, xn, mi);
        }
    }
}

/* Rows up to which the pre-norm GEMV kernels run; above, rmsnorm and the plain kernels (the same
 * bits). A pre-norm kernel norms every x element it loads once per weight row, two multiplies
 * beside each row's multiply-add: free while one or two tokens share a weight read (the kernel
 * waits on memory), but at 8 tokens a block does about three times the arithmetic of the plain
 * kernel and becomes bound by it. */
#define PRENORM_MAX_M 4

/* cuda_matmul_multi's paths with the norm folded in; weights on different paths (which the
 * wrapper's same-type check leaves possible only through mm_path's size limits) each take
 * their own, as there. */
static void rms_multi_run(bt_cuda_ctx_t *c, int n_w, float *const *y, const bt_tensor_t *const *w,
                          const float *x, const float *norm, float eps, int64_t m)
{
    const int path = mm_path(c, w[0], m);
    int same = 1, exact = 1;
    for (int t = 0; t < n_w; t++) {
        same &= w[t]->type == w[0]->type && w[t]->cols == w[0]->cols && mm_path(c, w[t], m) == path;
        exact &= bt_cuda_gemv_rms_exact(w[t], x, norm);
    }
    if (!same) {
        for (int t = 0; t < n_w; t++)
            if (w[t]->rows > 0)
                rms_multi_run(c, 1, &y[t], &w[t], x, norm, eps, m);
    } else if (path == MM_GEMM16) {
        blas_gemm16(c, n_w, y, w, x, norm, eps, m, 0.0f);
    } else if (path == MM_GEMV && exact && m <= PRENORM_MAX_M) {
        bt_cuda_gemv_rms_multi_launch(gemv_launch_of(c), n_w, y, w, x, norm, eps, m);
    } else {
        rms_compose_multi(c, path, n_w, y, w, x, norm, eps, m);
    }
}

static void cuda_rms_matmul_multi(void *ctx, int n_w, float *const *y, const bt_tensor_t *const *w,
                                  const float *x, const float *norm, float eps, int64_t m)
{
    bt_cuda_ctx_t *c = enter(ctx);
    const multi_slots_t s = multi_slots(n_w, y, w);
    if (m <= 0 || n_w <= 0 ||
        !LAUNCHES(c, "rms_matmul_multi", n_w, MULTI_ARGS(s), U(x), U(norm), fbits(eps), m))
        return;
    rms_multi_run(c, n_w, y, w, x, norm, eps, m);
}

/* As rms_compose_multi, for swiglu on cuBLAS f32 GEMMs (blas) or the GEMV kernels. */
static void rms_compose_swiglu(bt_cuda_ctx_t *c, int blas, float *y, const bt_tensor_t *gate,
                               const bt_tensor_t *up, const float *x, const float *norm, float eps,
                               int64_t m)
{
    const int64_t k = gate->cols, n = gate->rows, chunk = norm_rows(c, k);
    if (chunk < 1) {
        bt_cuda_gemv_rms_swiglu_launch(gemv_launch_of(c), y, gate, up, x, norm, eps, m);
        return;
    }
    float *xn = (float *)c->act16;
    for (int64_t i0 = 0; i0 < m; i0 += chunk) {
        const int64_t mi = m - i0 < chunk ? m - i0 : chunk;
        bt_cuda_rmsnorm_launch(c->stream, xn, x + i0 * k, norm, mi, k, eps);
        if (blas)
            blas_swiglu(c, MM_SGEMM, y + i0 * n, gate, up, xn, NULL, 0.0f, mi);
        else
            bt_cuda_gemv_swiglu_launch(gemv_launch_of(c), y + i0 * n, gate, up, xn, mi);
    }
}

/* x must not overlap y. The path is cuda_matmul_swiglu's. */
static void cuda_rms_matmul_swiglu(void *ctx, float *y, const bt_tensor_t *gate,
                                   const bt_tensor_t *up, const float *x, const float *norm,
                                   float eps, int64_t m)
{
    bt_cuda_ctx_t *c = enter(ctx);
    assert(gate->type == up->type && gate->rows == up->rows && gate->cols == up->cols);
    if (m <= 0 || gate->rows <= 0 ||
        !LAUNCHES(c, "rms_matmul_swiglu", U(y), TENSOR_ARGS(gate), TENSOR_ARGS(up), U(x), U(norm),
                  fbits(eps), m))
        return;
    const int path = mm_path(c, gate, m);
    const int blas = path != MM_GEMV && (size_t)gate->rows <= c->glu_up_floats;
    if (blas && path == MM_GEMM16)
        blas_swiglu(c, path, y, gate, up, x, norm, eps, m);
    else if (!blas && m <= PRENORM_MAX_M && bt_cuda_gemv_rms_exact(gate, x, norm) &&
             bt_cuda_gemv_rms_exact(up, x, norm))
        bt_cuda_gemv_rms_swiglu_launch(gemv_launch_of(c), y, gate, up, x, norm, eps, m);
    else
        rms_compose_swiglu(c, blas, y, gate, up, x, norm, eps, m);
}

/* ---- the pre-norm FFN ---- */

/* Rows per chunk of the 16-bit FFN (0: it does not apply, and the op runs as its composition):
 * cuBLAS with 16-bit weights for gate, up and down, which chain (down takes gate's rows as its
 * columns and gives gate's columns), gate's products G and up's U in the weights' type in
 * glu_up (mi x n 16-bit elements each, so mi x n floats in all), and the normed rows, then the
 * swiglu rows H, in act16. */
static int64_t ffn16_rows(const bt_cuda_ctx_t *c, const bt_tensor_t *gate, const bt_tensor_t *up,
                          const bt_tensor_t *down, int64_t m)
{
    const int64_t k = gate->cols, n = gate->rows;
    if (mm_path(c, gate, m) != MM_GEMM16 || mm_path(c, down, m) != MM_GEMM16 ||
        down->type != gate->type || down->cols != n || down->rows != k || n <= 0)
        return 0;
    int64_t rows = (int64_t)(c->glu_up_floats / (size_t)n);
    const int64_t a = act16_rows(c, k > n ? k : n);
    return a < rows ? a : rows;
}

/* The composition rounds only H to 16 bits (the down GEMM's input); here G and U are rounded
 * too, so the f32 products never go through memory: per 2048-token prefill layer of the 1b
 * shape, about 270 MB less traffic (f32 gate and up products, swiglu's f32 in and out, and
 * H's conversion). */
static void cuda_rms_ffn(void *ctx, float *x, const bt_tensor_t *gate, const bt_tensor_t *up,
                         const bt_tensor_t *down, const float *norm, float eps, int64_t m, float *h)
{
    bt_cuda_ctx_t *c = enter(ctx);
    assert(gate->type == up->type && gate->rows == up->rows && gate->cols == up->cols);
    const int64_t chunk = m > 0 ? ffn16_rows(c, gate, up, down, m) : 0;
    if (chunk < 1) {
        cuda_rms_matmul_swiglu(ctx, h, gate, up, x, norm, eps, m);
        cuda_matmul_add(ctx, x, down, h, m);
        return;
    }
    if (!LAUNCHES(c, "rms_ffn", U(x), TENSOR_ARGS(gate), TENSOR_ARGS(up), TENSOR_ARGS(down),
                  U(norm), fbits(eps), m))
        return;
    const int64_t k = gate->cols, n = gate->rows;
    const cudaDataType_t dt = blas16_type(gate->type);
    for (int64_t i0 = 0; i0 < m; i0 += chunk) {
        const int64_t mi = m - i0 < chunk ? m - i0 : chunk;
        uint16_t *g16 = (uint16_t *)c->glu_up, *u16 = g16 + mi * n;
        to_act16(c, gate->type, x + i0 * k, norm, eps, mi, k);
        gemm16_to(c, g16, dt, gate, mi, 0.0f);
        gemm16_to(c, u16, dt, up, mi, 0.0f);
        bt_cuda_swiglu16_launch(c->stream, c->act16, g16, u16, gate->type, mi * n);
        gemm16(c, x + i0 * k, down, mi, 1.0f);
    }
}

/* ---- element-wise ops: straight to their launchers ---- */

static void cuda_get_rows(void *ctx, float *y, const bt_tensor_t *table, const int32_t *ids,
                          int64_t m)
{
    bt_cuda_ctx_t *c = enter(ctx);
    if (LAUNCHES(c, "get_rows", U(y), table->type, table->rows, table->cols, U(table->data), U(ids),
                 m))
        bt_cuda_get_rows_launch(c->stream, y, table, ids, m);
}

static void cuda_rmsnorm(void *ctx, float *y, const float *x, const float *w, int64_t m, int64_t n,
                         float eps)
{
    bt_cuda_ctx_t *c = enter(ctx);
    if (LAUNCHES(c, "rmsnorm", U(y), U(x), U(w), m, n, fbits(eps)))
        bt_cuda_rmsnorm_launch(c->stream, y, x, w, m, n, eps);
}

static void cuda_rope(void *ctx, float *x, const int32_t *pos, int64_t m, int n_heads, int head_dim,
                      const float *inv_freq)
{
    bt_cuda_ctx_t *c = enter(ctx);
    if (LAUNCHES(c, "rope", U(x), U(pos), m, n_heads, head_dim, U(inv_freq)))
        bt_cuda_rope_launch(c->stream, x, pos, m, n_heads, head_dim, inv_freq);
}

static void cuda_swiglu(void *ctx, float *y, const float *gate, const float *up, int64_t n)
{
    bt_cuda_ctx_t *c = enter(ctx);
    if (LAUNCHES(c, "swiglu", U(y), U(gate), U(up), n))
        bt_cuda_swiglu_launch(c->stream, y, gate, up, n);
}

static void cuda_add(void *ctx, float *y, const float *x, int64_t n)
{
    bt_cuda_ctx_t *c = enter(ctx);
    if (LAUNCHES(c, "add", U(y), U(x), n))
        bt_cuda_add_launch(c->stream, y, x, n);
}

static void cuda_gather_rows(void *ctx, float *y, const float *x, const int32_t *rows, int64_t m,
                             int64_t n)
{
    bt_cuda_ctx_t *c = enter(ctx);
    const int64_t per = (int64_t)(c->rows.cap / sizeof(int32_t));
    for (int64_t r0 = 0; r0 < m; r0 += per) {
        int64_t mr = m - r0 < per ? m - r0 : per;
        const size_t bytes = (size_t)mr * sizeof(int32_t);
        const int32_t *d = c->sg.mode == BT_STEPGRAPH_OFF
                               ? stage_put(c, &c->rows, rows + r0, bytes)
                               : bt_cuda_graph_input(c, rows + r0, bytes);
        if (LAUNCHES(c, "gather_rows", U(y + r0 * n), U(x), U(d), mr, n))
            bt_cuda_gather_rows_launch(c->stream, y + r0 * n, x, d, mr, n);
    }
}

/* A penalize_rows table the kernel indexes rows and ids with: checked on the host, where a bad
 * count or id is a message rather than a write outside the logits. */
static void penalize_check(const int32_t *ids, const int32_t *n_ids, int64_t m, int64_t n,
                           int32_t cap)
{
    if (cap < 0 || cap > BT_PENALTY_MAX) {
        fprintf(stderr, "cuda: penalize_rows cap %d outside [0, %d]\n", cap, BT_PENALTY_MAX);
        abort();
    }
    for (int64_t i = 0; i < m; i++) {
        if (n_ids[i] < 0 || n_ids[i] > cap) {
            fprintf(stderr, "cuda: penalize_rows row %lld names %d ids (cap %d)\n", (long long)i,
                    n_ids[i], cap);
            abort();
        }
        for (int32_t j = 0; j < n_ids[i]; j++)
            if (ids[i * cap + j] < 0 || ids[i * cap + j] >= n) {
                fprintf(stderr, "cuda: penalize_rows id %d of row %lld outside [0, %lld)\n",
                        ids[i * cap + j], (long long)i, (long long)n);
                abort();
            }
    }
}

/* The ids, counts and penalties are host tables, staged like gather_rows' indices a piece of
 * argmax_cap rows at a time; the kernel runs in stream order, and the argmax, top-k or totals
 * after it wait for it. Not in a graph step: the engine runs a step with penalties op by op,
 * and a step's shape has no room for their tables in the input arena. */
static void cuda_penalize_rows(void *ctx, float *x, int64_t m, int64_t n, const int32_t *ids_host,
                               const int32_t *n_ids_host, const float *pen_host, int32_t cap)
{
    bt_cuda_ctx_t *c = enter(ctx);
    if (c->sg.mode != BT_STEPGRAPH_OFF) {
        fprintf(stderr, "cuda: penalize_rows inside a graph step (such steps run op by op)\n");
        abort();
    }
    penalize_check(ids_host, n_ids_host, m, n, cap);
    if (cap == 0)
        return;
    for (int64_t r0 = 0; r0 < m; r0 += c->argmax_cap) {
        int64_t mr = m - r0 < c->argmax_cap ? m - r0 : c->argmax_cap;
        const size_t id_bytes = (size_t)mr * (size_t)cap * sizeof(int32_t);
        const int32_t *ids = stage_put(c, &c->pen_ids, ids_host + r0 * cap, id_bytes);
        const int32_t *cnt = stage_put(c, &c->pen_n, n_ids_host + r0, (size_t)mr * sizeof(int32_t));
        const float *pen = stage_put(c, &c->pen_f, pen_host + r0, (size_t)mr * sizeof(float));
        bt_cuda_penalize_rows_launch(c->stream, x + r0 * n, mr, n, ids, cnt, pen, cap);
    }
}

/* Results of argmax_rows, topk_rows and window_totals to the host: in stream order, or in a
 * graph step queued for step_end (the host buffers are pageable, so the copies cannot be
 * captured). A graph step therefore has room for one piece only: a second would overwrite the
 * scratch before step_end downloads the first (step_begin admits no step that needs two). */
static void copy_out(bt_cuda_ctx_t *c, void *dst_host, const void *src, size_t bytes, int64_t r0)
{
    if (c->sg.mode == BT_STEPGRAPH_OFF) {
        BT_CUDA_CHECK(cudaMemcpyAsync(dst_host, src, bytes, cudaMemcpyDeviceToHost, c->stream));
        return;
    }
    if (r0 > 0) {
        fprintf(stderr, "cuda: more output rows than one piece in a graph step\n");
        abort();
    }
    bt_cuda_graph_download(c, dst_host, src, bytes);
}

static void cuda_argmax_rows(void *ctx, int32_t *out_host, const float *x, int64_t m, int64_t n)
{
    bt_cuda_ctx_t *c = enter(ctx);
    for (int64_t r0 = 0; r0 < m; r0 += c->argmax_cap) {
        int64_t mr = m - r0 < c->argmax_cap ? m - r0 : c->argmax_cap;
        if (LAUNCHES(c, "argmax_rows", U(c->argmax_out), U(x + r0 * n), mr, n))
            bt_cuda_argmax_rows_launch(c->stream, c->argmax_out, x + r0 * n, mr, n);
        copy_out(c, out_host + r0, c->argmax_out, (size_t)mr * sizeof(int32_t), r0);
    }
    if (c->sg.mode == BT_STEPGRAPH_OFF)
        BT_CUDA_CHECK(cudaStreamSynchronize(c->stream));
}

static void cuda_topk_rows(void *ctx, int32_t *ids_host, float *vals_host, const float *x,
                           int64_t m, int64_t n, int32_t k)
{
    bt_cuda_ctx_t *c = enter(ctx);
    for (int64_t r0 = 0; r0 < m; r0 += c->argmax_cap) {
        int64_t mr = m - r0 < c->argmax_cap ? m - r0 : c->argmax_cap;
        size_t bytes = (size_t)mr * (size_t)k * sizeof(int32_t);
        if (LAUNCHES(c, "topk_rows", U(c->topk_ids), U(c->topk_vals), U(x + r0 * n), mr, n, k))
            bt_cuda_topk_rows_launch(c->stream, c->topk_ids, c->topk_vals, x + r0 * n, mr, n, k);
        copy_out(c, ids_host + r0 * k, c->topk_ids, bytes, r0);
        copy_out(c, vals_host + r0 * k, c->topk_vals, bytes, r0);
    }
    if (c->sg.mode == BT_STEPGRAPH_OFF)
        BT_CUDA_CHECK(cudaStreamSynchronize(c->stream));
}

/* The temperatures are a host table like gather_rows' indices: staged, or in a graph step an
 * input of the arena (they change from step to step; the graph's copy node moves them). */
static void cuda_window_totals(void *ctx, double *totals_host, const float *x,
                               const float *tau_host, int64_t m, int64_t n)
{
    bt_cuda_ctx_t *c = enter(ctx);
    for (int64_t r0 = 0; r0 < m; r0 += c->argmax_cap) {
        int64_t mr = m - r0 < c->argmax_cap ? m - r0 : c->argmax_cap;
        const size_t bytes = (size_t)mr * sizeof(float);
        const float *tau = c->sg.mode == BT_STEPGRAPH_OFF
                               ? stage_put(c, &c->tau, tau_host + r0, bytes)
                               : bt_cuda_graph_input(c, tau_host + r0, bytes);
        if (LAUNCHES(c, "window_totals", U(c->win_totals), U(x + r0 * n), U(tau), mr, n))
            bt_cuda_window_totals_launch(c->stream, c->win_totals, x + r0 * n, tau, mr, n);
        copy_out(c, totals_host + r0, c->win_totals, (size_t)mr * sizeof(double), r0);
    }
    if (c->sg.mode == BT_STEPGRAPH_OFF)
        BT_CUDA_CHECK(cudaStreamSynchronize(c->stream));
}

/* ---- attention tables ---- */

typedef struct {
    const bt_cuda_seq_t *seqs; /* device */
    const int32_t *blocks;     /* device */
    int n_seqs;
    int32_t max_new, max_len, n_rows;
} seq_group_t;

/* Packs sequences [s0, s1) into the staging format: the descriptors, then every block table
 * (the blocks covering positions [0, n_past + n_new) of each). Returns the end index: the
 * sequences that fit the staging buffer (at least one). */
static int pack_group(bt_cuda_ctx_t *c, const bt_kv_layer_t *kv, const bt_attn_seq_t *seqs, int s0,
                      int n_seqs, seq_group_t *g)
{
    const size_t cap = c->seqs.cap;
    size_t n_blk = 0;
    int s1 = s0;
    for (; s1 < n_seqs; s1++) {
        const bt_attn_seq_t *s = &seqs[s1];
        size_t nb = (size_t)(s->n_past + s->n_new + kv->block_size - 1) / kv->block_size;
        size_t need =
            (size_t)(s1 + 1 - s0) * sizeof(bt_cuda_seq_t) + (n_blk + nb) * sizeof(int32_t);
        if ((need > cap || s1 - s0 == BT_CUDA_MAX_GROUP_SEQS) && s1 > s0)
            break;
        n_blk += nb;
    }
    if ((size_t)(s1 - s0) * sizeof(bt_cuda_seq_t) + n_blk * sizeof(int32_t) > cap) {
        fprintf(stderr, "cuda: one sequence's block table exceeds the staging buffer (%zu)\n", cap);
        abort();
    }
    bt_cuda_seq_t *d = (bt_cuda_seq_t *)c->pack;
    int32_t *ids = (int32_t *)(d + (s1 - s0));
    int32_t off = 0;
    g->max_new = g->max_len = g->n_rows = 0;
    for (int i = s0; i < s1; i++) {
        const bt_attn_seq_t *s = &seqs[i];
        int32_t len = s->n_past + s->n_new;
        int32_t nb = (len + kv->block_size - 1) / kv->block_size;
        d[i - s0] =
            (bt_cuda_seq_t){.row0 = s->row0, .n_new = s->n_new, .n_past = s->n_past, .blk = off};
        memcpy(ids + off, s->blocks, (size_t)nb * sizeof(int32_t));
        off += nb;
        g->max_new = s->n_new > g->max_new ? s->n_new : g->max_new;
        g->max_len = len > g->max_len ? len : g->max_len;
        g->n_rows = s->row0 + s->n_new > g->n_rows ? s->row0 + s->n_new : g->n_rows;
    }
    size_t bytes = (size_t)(s1 - s0) * sizeof(bt_cuda_seq_t) + (size_t)off * sizeof(int32_t);
    const uint8_t *dev = c->sg.mode == BT_STEPGRAPH_OFF
                             ? stage_put(c, &c->seqs, c->pack, bytes)
                             : bt_cuda_graph_table(c, c->pack, bytes, s1 - s0, kv->block_size);
    g->seqs = (const bt_cuda_seq_t *)dev;
    g->blocks = (const int32_t *)(dev + (size_t)(s1 - s0) * sizeof(bt_cuda_seq_t));
    g->n_seqs = s1 - s0;
    return s1;
}

static void cuda_kv_store(void *ctx, const bt_kv_layer_t *kv, const float *k, const float *v,
                          const bt_attn_seq_t *seqs, int n_seqs)
{
    bt_cuda_ctx_t *c = enter(ctx);
    for (int s0 = 0; s0 < n_seqs;) {
        seq_group_t g;
        s0 = pack_group(c, kv, seqs, s0, n_seqs, &g);
        if (g.max_new > 0 && LAUNCHES(c, "kv_store", U(kv->data), kv->type, kv->block_size,
                                      kv->n_kv_heads, kv->head_dim, kv->block_bytes, U(k), U(v),
                                      U(g.seqs), U(g.blocks), g.n_seqs, g.max_new))
            bt_cuda_kv_store_launch(c->stream, kv, k, v, g.seqs, g.blocks, g.n_seqs, g.max_new);
    }
}

/* One kernel per table group: each row's rope and store in one block. Rows outside every
 * sequence (which the op's contract excludes) would miss their rope, so such a call composes. */
static void cuda_rope_kv_store(void *ctx, float *q, float *k, const float *v, const int32_t *pos,
                               int64_t m, int n_heads, const float *inv_freq,
                               const bt_kv_layer_t *kv, const bt_attn_seq_t *seqs, int n_seqs)
{
    bt_cuda_ctx_t *c = enter(ctx);
    int64_t covered = 0;
    for (int s = 0; s < n_seqs; s++)
        covered += seqs[s].n_new;
    if (covered != m || kv->head_dim % 2) {
        cuda_rope(ctx, q, pos, m, n_heads, kv->head_dim, inv_freq);
        cuda_rope(ctx, k, pos, m, kv->n_kv_heads, kv->head_dim, inv_freq);
        cuda_kv_store(ctx, kv, k, v, seqs, n_seqs);
        return;
    }
    for (int s0 = 0; s0 < n_seqs;) {
        seq_group_t g;
        s0 = pack_group(c, kv, seqs, s0, n_seqs, &g);
        if (g.max_new > 0 &&
            LAUNCHES(c, "rope_kv_store", U(q), U(k), U(v), U(pos), n_heads, U(inv_freq),
                     U(kv->data), kv->type, kv->block_size, kv->n_kv_heads, kv->head_dim,
                     kv->block_bytes, U(g.seqs), U(g.blocks), g.n_seqs, g.max_new))
            bt_cuda_rope_kv_store_launch(c->stream, q, k, v, pos, n_heads, inv_freq, kv, g.seqs,
                                         g.blocks, g.n_seqs, g.max_new);
    }
}

/* With nondet, calls with at least this many new rows in one sequence run on the tensor-core
 * kernel (whole call: its decode rows too); fewer leave too little to fill a query tile. */
#define MMA_ATTN_MIN_NEW 16

static void cuda_attention(void *ctx, float *out, const float *q, const bt_kv_layer_t *kv,
                           const bt_attn_seq_t *seqs, int n_seqs, int n_heads, float scale)
{
    bt_cuda_ctx_t *c = enter(ctx);
    for (int s0 = 0; s0 < n_seqs;) {
        seq_group_t g;
        s0 = pack_group(c, kv, seqs, s0, n_seqs, &g);
        if (g.max_new <= 0)
            continue;
        bt_cuda_attn_args_t a = {
            .out = out,
            .q = q,
            .kv = kv,
            .seqs = g.seqs,
            .blocks = g.blocks,
            .n_seqs = g.n_seqs,
            .n_heads = n_heads,
            .scale = scale,
            .max_new = g.max_new,
            .max_len = g.max_len,
            .n_rows = g.n_rows,
            .chunk = c->attn_chunk,
        };
        /* A graph serves every step of its attention bucket: the launcher uses max_len only
         * through ceil(max_len / chunk), which rounding up to the chunk keeps (so the split
         * choice, grid and partials' stride are the capture's), and the kernels stop at each
         * sequence's own length, read from the table. */
        if (c->sg.mode != BT_STEPGRAPH_OFF)
            a.max_len = (g.max_len + c->attn_chunk - 1) / c->attn_chunk * c->attn_chunk;
        if (!LAUNCHES(c, "attention", U(out), U(q), U(kv->data), kv->type, kv->block_size,
                      kv->n_kv_heads, kv->head_dim, kv->block_bytes, U(a.seqs), U(a.blocks),
                      a.n_seqs, n_heads, fbits(scale), a.max_new, a.max_len, a.n_rows))
            continue;
        if (c->nondet && g.max_new >= MMA_ATTN_MIN_NEW &&
            ((c->prefill_fa2 && bt_cuda_attention_fa2_launch(c->stream, &a) == BT_OK) ||
             bt_cuda_attention_mma_launch(c->stream, &a) == BT_OK))
            continue;
        bt_cuda_attention_launch(c->stream, &a, c->attn_part, c->attn_part_floats, c->attn_count,
                                 c->attn_count_n, c->n_sm);
    }
}

static const bt_backend_ops_t cuda_ops = {
    .name = "cuda",
    .device_memory = 1,
    .destroy = cuda_destroy,
    .alloc = cuda_alloc,
    .free = cuda_free,
    .upload = cuda_upload,
    .download = cuda_download,
    .sync = cuda_sync,
    .matmul = cuda_matmul,
    .matmul_multi = cuda_matmul_multi,
    .matmul_add = cuda_matmul_add,
    .matmul_swiglu = cuda_matmul_swiglu,
    .rms_matmul_multi = cuda_rms_matmul_multi,
    .rms_matmul_swiglu = cuda_rms_matmul_swiglu,
    .rms_ffn = cuda_rms_ffn,
    .get_rows = cuda_get_rows,
    .rmsnorm = cuda_rmsnorm,
    .rope = cuda_rope,
    .swiglu = cuda_swiglu,
    .add = cuda_add,
    .gather_rows = cuda_gather_rows,
    .argmax_rows = cuda_argmax_rows,
    .topk_rows = cuda_topk_rows,
    .penalize_rows = cuda_penalize_rows,
    .window_totals = cuda_window_totals,
    .kv_store = cuda_kv_store,
    .rope_kv_store = cuda_rope_kv_store,
    .attention = cuda_attention,
    .step_begin = cuda_step_begin,
    .step_end = cuda_step_end,
};

/* ---- create ---- */

static int64_t env_int(const char *name, int64_t dflt)
{
    const char *s = getenv(name);
    if (!s || !*s)
        return dflt;
    char *end;
    long long v = strtoll(s, &end, 10);
    return *end || v < 0 ? dflt : (int64_t)v;
}

static int alloc_scratch(bt_cuda_ctx_t *c, const bt_backend_params_t *params)
{
    int64_t rows = params->max_rows > 0 ? params->max_rows : DEFAULT_MAX_ROWS;
    int64_t cols = params->max_cols > 0 ? params->max_cols : DEFAULT_MAX_COLS;
    c->act16_elems = (size_t)rows * (size_t)cols;
    c->attn_part_floats = ATTN_PART_BYTES / sizeof(float);
    c->blas_ws_bytes = BLAS_WS_BYTES;
    c->argmax_cap = rows;
    size_t topk_elems = (size_t)rows * BT_TOPK_MAX;
    if (cudaMalloc((void **)&c->argmax_out, (size_t)rows * sizeof(int32_t)) != cudaSuccess ||
        cudaMalloc((void **)&c->topk_ids, topk_elems * sizeof(int32_t)) != cudaSuccess ||
        cudaMalloc((void **)&c->topk_vals, topk_elems * sizeof(float)) != cudaSuccess ||
        cudaMalloc((void **)&c->win_totals, (size_t)rows * sizeof(double)) != cudaSuccess ||
        cudaMalloc(&c->act16, c->act16_elems * 2) != cudaSuccess ||
        cudaMalloc((void **)&c->attn_part, ATTN_PART_BYTES) != cudaSuccess ||
        cudaMalloc(&c->blas_ws, c->blas_ws_bytes) != cudaSuccess)
        return BT_ERR_NOMEM;
    /* Split attention launches have fewer than 4 x n_sm groups (attention.cu). */
    c->attn_count_n = (size_t)4 * (size_t)c->n_sm;
    if (cudaMalloc((void **)&c->attn_count, c->attn_count_n * sizeof(int32_t)) != cudaSuccess)
        return BT_ERR_NOMEM;
    if (cudaMemset(c->attn_count, 0, c->attn_count_n * sizeof(int32_t)) != cudaSuccess)
        return BT_ERR_INTERNAL;
    /* The up product of a cuBLAS matmul_swiglu, max_rows x max_cols floats: a gate product is
     * the down projection's input, so max_cols (the widest input) bounds its width and the
     * engine's calls fit in one piece. Deterministic mode never runs cuBLAS. */
    c->glu_up_floats = c->nondet ? c->act16_elems : 0;
    if (c->nondet &&
        cudaMalloc((void **)&c->glu_up, c->glu_up_floats * sizeof(float)) != cudaSuccess)
        return BT_ERR_NOMEM;
    size_t seq_cap = SEQ_TABLE_BYTES + (size_t)rows * sizeof(bt_cuda_seq_t);
    c->pack = malloc(seq_cap);
    if (!c->pack)
        return BT_ERR_NOMEM;
    int st = stage_init(&c->seqs, seq_cap);
    if (st == BT_OK)
        st = stage_init(&c->rows, (size_t)rows * sizeof(int32_t));
    if (st == BT_OK)
        st = stage_init(&c->tau, (size_t)rows * sizeof(float));
    if (st == BT_OK)
        st = stage_init(&c->pen_ids, (size_t)rows * BT_PENALTY_MAX * sizeof(int32_t));
    if (st == BT_OK)
        st = stage_init(&c->pen_n, (size_t)rows * sizeof(int32_t));
    if (st == BT_OK)
        st = stage_init(&c->pen_f, (size_t)rows * sizeof(float));
    return st;
}

static int blas_init(bt_cuda_ctx_t *c)
{
    if (cublasCreate(&c->blas) != CUBLAS_STATUS_SUCCESS)
        return BT_ERR_INTERNAL;
    if (cublasSetStream(c->blas, c->stream) != CUBLAS_STATUS_SUCCESS ||
        cublasSetWorkspace(c->blas, c->blas_ws, c->blas_ws_bytes) != CUBLAS_STATUS_SUCCESS)
        return BT_ERR_INTERNAL;
    return BT_OK;
}

int bt_cuda_backend_create(const bt_backend_params_t *params, const bt_backend_ops_t **ops,
                           void **ctx)
{
    bt_backend_params_t defaults = {0};
    if (!params)
        params = &defaults;
    if (params->max_rows < 0 || params->max_cols < 0)
        return BT_ERR_INVAL;
    int n_dev = 0;
    if (cudaGetDeviceCount(&n_dev) != cudaSuccess || n_dev <= 0) {
        cudaGetLastError();
        return BT_ERR_UNSUPPORTED;
    }
    if (params->device < 0 || params->device >= n_dev)
        return BT_ERR_INVAL;
    if (cudaSetDevice(params->device) != cudaSuccess)
        return BT_ERR_UNSUPPORTED;
    tl_device = params->device;
    bt_cuda_ctx_t *c = calloc(1, sizeof *c);
    if (!c)
        return BT_ERR_NOMEM;
    c->device = params->device;
    c->nondet = params->allow_nondeterministic;
    c->gemv_max_m = env_int("BATON_CUDA_GEMV_MAX_M", DEFAULT_GEMV_MAX_M);
    c->attn_chunk = (int)env_int("BATON_CUDA_ATTN_CHUNK", BT_CUDA_ATTN_CHUNK);
    if (c->attn_chunk < BT_CUDA_ATTN_TILE || c->attn_chunk > 4096 ||
        c->attn_chunk % BT_CUDA_ATTN_TILE) {
        fprintf(stderr,
                "cuda: BATON_CUDA_ATTN_CHUNK must be a multiple of %d from %d to 4096; "
                "using %d\n",
                BT_CUDA_ATTN_TILE, BT_CUDA_ATTN_TILE, BT_CUDA_ATTN_CHUNK);
        c->attn_chunk = BT_CUDA_ATTN_CHUNK;
    }
    int st = BT_ERR_INTERNAL;
    if (cudaDeviceGetAttribute(&c->n_sm, cudaDevAttrMultiProcessorCount, c->device) !=
            cudaSuccess ||
        cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking) != cudaSuccess)
        goto err_ctx;
    st = alloc_scratch(c, params);
    if (st != BT_OK)
        goto err_ctx;
    st = blas_init(c);
    if (st != BT_OK)
        goto err_ctx;
    /* BATON_CUDA_PDL=1: GEMVs as programmatic dependent launches (launch.cuh), off until a
     * device run has measured them; the same bits either way. */
    c->pdl = env_int("BATON_CUDA_PDL", 0) == 1;
    const int64_t mb = env_int("BATON_CUDA_PDL_PREFETCH_MB", 16); /* 0: no prefetch */
    c->pdl_prefetch = (mb <= 65536 ? mb : 16) << 20;
    /* Off by default: an H200 run showed graph and op-by-op steps bit-identical and the graphs
     * faster, but no serving daemon has run on graphs yet (docs/cuda.md). 2: as 1, and a replay
     * that misses its key aborts instead of running op by op (the tests' setting). */
    const int graphs = env_int("BATON_CUDA_GRAPHS", 0);
    if (graphs == 1 || graphs == 2) {
        c->graph_strict = graphs == 2;
        st = bt_cuda_graph_init(c);
        if (st != BT_OK)
            goto err_ctx;
    }
    st = bt_cuda_attention_init();
    if (st != BT_OK)
        goto err_ctx;
    st = bt_cuda_attention_mma_init();
    if (st != BT_OK)
        goto err_ctx;
    /* BATON_CUDA_PREFILL_ATTN=fa2: nondeterministic prefill attention tries the FlashAttention-2
     * kernel first (attention_fa2.cu); unset or "wmma": the WMMA kernel, as before. */
    const char *pa = getenv("BATON_CUDA_PREFILL_ATTN");
    c->prefill_fa2 = pa && strcmp(pa, "fa2") == 0;
    if (pa && *pa && !c->prefill_fa2 && strcmp(pa, "wmma") != 0)
        fprintf(stderr, "cuda: BATON_CUDA_PREFILL_ATTN must be fa2 or wmma; using wmma\n");
    if (c->prefill_fa2) {
        st = bt_cuda_attention_fa2_init();
        if (st != BT_OK)
            goto err_ctx;
    }
    *ops = &cuda_ops;
    *ctx = c;
    return BT_OK;

err_ctx:
    fprintf(stderr, "cuda: backend setup on device %d failed: %s\n", params->device,
            cudaGetErrorString(cudaGetLastError()));
    cuda_destroy(c);
    return st;
}
