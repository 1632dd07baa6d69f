/* SPDX-License-Identifier: MIT */
/*
 * test_cuda_ops.c - every op of the "cuda" backend against the CPU backend on fresh random
 * inputs: matmul for F32, F16, BF16 and Q8_0 weights (16-byte and scalar paths, 1 to 64 rows,
 * deterministic GEMV and cuBLAS), the fused matmul_multi, matmul_add and matmul_swiglu (also
 * bit for bit against the same backend's composition in deterministic mode), the rmsnorm-fused
 * rms_matmul_multi and rms_matmul_swiglu (bit for bit against rmsnorm followed by the fused
 * matmul on the same backend, in both modes), the pre-norm FFN rms_ffn, rope_kv_store (bit for
 * bit against rope, rope and kv_store), get_rows, rmsnorm,
 * rope, swiglu, add, gather_rows, kv_store (byte-exact caches in F32, F16 and BF16), the
 * sampling ops argmax_rows, topk_rows and window_totals and the repetition penalty before them,
 * penalize_rows (exactly the host's results), and paged
 * GQA attention over many sequences with scattered block tables and contexts long enough to
 * split, on the SIMT kernel and on tensor cores (nondeterministic prefill, bf16 tolerance).
 * Errors are normalised by the largest reference value. The determinism contract is checked bit
 * for bit on the device: a matmul row alone equals its row in a batch, and a decode row equals
 * the same row inside a batch that takes the other attention launch shape.
 *
 * Skipped (exit 77) where no CUDA device is present or the backend is not built.
 */
// ctest-labels: gpu
#include "../support/testutil.h" /* relative: works whatever the include path */

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/fp16.h"
#include "kernels/kernels.h"
#include "kernels/window.h"

#define MAX_ROWS 1024
#define MAX_COLS 4096
#define TOL_F32 1e-4  /* both sides f32 products of the same exact values */
#define TOL_BF16 2e-2 /* activations rounded to bf16 (cuBLAS path) or to int8 (CPU Q8_0) */

static bt_backend_t *cpu, *gpu, *gpu_nd;
static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint32_t rnd_u32(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 16);
}

static float rnd_f(void)
{
    return (float)(rnd_u32() % 2000001) / 1000000.0f - 1.0f;
}

static float *rnd_vec(size_t n)
{
    float *v = malloc(n * sizeof *v);
    assert_non_null(v);
    for (size_t i = 0; i < n; i++)
        v[i] = rnd_f();
    return v;
}

static void *to_dev(bt_backend_t *be, const void *host, size_t bytes)
{
    void *d = bt_backend_alloc(be, bytes);
    assert_non_null(d);
    bt_backend_upload(be, d, host, bytes);
    return d;
}

/* Frees the n device buffers of bufs; DEV_FREE(be, a, b, ...) counts them. */
static void dev_free(bt_backend_t *be, void *const *bufs, size_t n)
{
    for (size_t i = 0; i < n; i++)
        bt_backend_free(be, bufs[i]);
}
#define DEV_FREE(be, ...)                                                                          \
    dev_free(be, (void *[]){__VA_ARGS__}, sizeof((void *[]){__VA_ARGS__}) / sizeof(void *))

static float *from_dev(bt_backend_t *be, const void *dev, size_t n)
{
    float *h = malloc(n * sizeof *h);
    assert_non_null(h);
    bt_backend_download(be, h, dev, n * sizeof *h);
    return h;
}

/* max |a - b| / max |b|. */
static double nerr(const float *a, const float *b, size_t n)
{
    double e = 0, r = 1e-30;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        e = d > e || isnan(d) ? d : e;
        r = fabs(b[i]) > r ? fabs(b[i]) : r;
    }
    return e / r;
}

static void expect_close(const char *what, const float *got, const float *ref, size_t n, double tol)
{
    double e = nerr(got, ref, n);
    if (!(e <= tol)) {
        fprintf(stderr, "%s: normalised error %.3g > %.3g\n", what, e, tol);
        fail();
    }
}

/* Weights of type from f32 values (Q8_0: amax / 127 scales, rounded to nearest). */
static void *make_weights(int type, const float *w, int64_t rows, int64_t cols)
{
    size_t rb = bt_type_row_bytes(type, cols);
    uint8_t *out = malloc(rb * (size_t)rows);
    assert_non_null(out);
    for (int64_t r = 0; r < rows; r++) {
        const float *src = w + r * cols;
        uint8_t *dst = out + (size_t)r * rb;
        for (int64_t c = 0; c < cols; c++) {
            if (type == BT_TYPE_F32)
                ((float *)dst)[c] = src[c];
            else if (type == BT_TYPE_F16)
                ((uint16_t *)dst)[c] = bt_f32_to_fp16(src[c]);
            else if (type == BT_TYPE_BF16)
                ((uint16_t *)dst)[c] = bt_f32_to_bf16(src[c]);
        }
        if (type != BT_TYPE_Q8_0)
            continue;
        for (int64_t b = 0; b < cols / BT_QK8_0; b++) {
            bt_block_q8_0_t *blk = (bt_block_q8_0_t *)dst + b;
            float amax = 0;
            for (int l = 0; l < BT_QK8_0; l++)
                amax = fmaxf(amax, fabsf(src[b * BT_QK8_0 + l]));
            float d = amax / 127.0f;
            blk->d = bt_f32_to_fp16(d);
            float id = d > 0 ? 1.0f / d : 0.0f;
            for (int l = 0; l < BT_QK8_0; l++)
                blk->qs[l] = (int8_t)lrintf(src[b * BT_QK8_0 + l] * id);
        }
    }
    return out;
}

/* ---- matmul ---- */

static void check_matmul(int type, int64_t n, int64_t k, int64_t m, int nondet)
{
    float *wf = rnd_vec((size_t)n * k), *x = rnd_vec((size_t)m * k);
    void *wh = make_weights(type, wf, n, k);
    size_t wbytes = bt_type_row_bytes(type, k) * (size_t)n;
    bt_backend_t *g = nondet ? gpu_nd : gpu;
    bt_tensor_t wc = {.type = type, .rows = n, .cols = k, .data = wh};
    bt_tensor_t wg = wc;
    wg.data = to_dev(g, wh, wbytes);
    float *xg = to_dev(g, x, (size_t)m * k * 4);
    float *yg = bt_backend_alloc(g, (size_t)m * n * 4);
    float *yc = malloc((size_t)m * n * 4);
    bt_matmul(cpu, yc, &wc, x, m);
    bt_matmul(g, yg, &wg, xg, m);
    float *y = from_dev(g, yg, (size_t)m * n);
    char what[96];
    snprintf(what, sizeof what, "matmul %s n=%ld k=%ld m=%ld%s", bt_type_name(type), (long)n,
             (long)k, (long)m, nondet ? " (cuBLAS allowed)" : "");
    int lossy = type == BT_TYPE_Q8_0 || (nondet && m > 8 && type != BT_TYPE_F32);
    expect_close(what, y, yc, (size_t)m * n, lossy ? TOL_BF16 : TOL_F32);
    free(y);
    free(yc);
    bt_backend_free(g, yg);
    bt_backend_free(g, xg);
    bt_backend_free(g, (void *)wg.data);
    free(wh);
    free(x);
    free(wf);
}

static void test_cuda_matmul_types_and_shapes(void **state)
{
    static const int types[] = {BT_TYPE_F32, BT_TYPE_F16, BT_TYPE_BF16, BT_TYPE_Q8_0};
    static const int64_t ms[] = {1, 3, 8, 17, 64};
    for (size_t t = 0; t < sizeof types / sizeof types[0]; t++)
        for (size_t i = 0; i < sizeof ms / sizeof ms[0]; i++) {
            check_matmul(types[t], 300, 2048, ms[i], 0);
            check_matmul(types[t], 77, 96, ms[i], 1);
            if (types[t] != BT_TYPE_Q8_0) /* k = 100: the scalar path */
                check_matmul(types[t], 45, 100, ms[i], 0);
        }
}

/* Row i of a 37-row matmul equals the same row computed alone, bit for bit. */
static void test_cuda_matmul_batch_invariant(void **state)
{
    const int64_t n = 256, k = 1024, m = 37;
    float *wf = rnd_vec((size_t)n * k), *x = rnd_vec((size_t)m * k);
    void *wh = make_weights(BT_TYPE_BF16, wf, n, k);
    bt_tensor_t w = {.type = BT_TYPE_BF16, .rows = n, .cols = k};
    w.data = to_dev(gpu, wh, bt_type_row_bytes(BT_TYPE_BF16, k) * n);
    float *xg = to_dev(gpu, x, (size_t)m * k * 4);
    float *yg = bt_backend_alloc(gpu, (size_t)m * n * 4);
    bt_matmul(gpu, yg, &w, xg, m);
    float *all = from_dev(gpu, yg, (size_t)m * n);
    for (int64_t i = 0; i < m; i += 5) {
        bt_matmul(gpu, yg, &w, xg + i * k, 1);
        float *one = from_dev(gpu, yg, (size_t)n);
        assert_memory_equal(one, all + i * n, (size_t)n * 4);
        free(one);
    }
    free(all);
    bt_backend_free(gpu, yg);
    bt_backend_free(gpu, xg);
    bt_backend_free(gpu, (void *)w.data);
    free(wh);
    free(x);
    free(wf);
}

/* ---- fused matmuls ---- */

enum { FUSED_MULTI, FUSED_ADD, FUSED_SWIGLU };
static const char *const fused_names[] = {"matmul_multi", "matmul_add", "matmul_swiglu"};

typedef struct {
    int op;      /* FUSED_*: n_w weights for MULTI, 1 for ADD, 2 (gate, up) for SWIGLU */
    int type;    /* weight type */
    int n_w;     /* weights */
    int64_t k;   /* columns of every weight */
    int64_t m;   /* rows of x */
    int nondet;  /* on the nondeterministic backend (cuBLAS above 8 rows) */
    int shifted; /* the last weight's device copy starts 2 bytes into its buffer, so that it
                  * takes the scalar path and the others the 16-byte one */
    int64_t rows[4];
} fused_case_t;

/* The case's op on backend b: fused (the wrappers with the backend's fused ops) or composed
 * of b's own matmul, add and swiglu. y[] holds one output per weight for MULTI, else one. */
static void fused_run(bt_backend_t *b, const fused_case_t *fc, float *const *y,
                      const bt_tensor_t *const *w, const float *x, float *tmp, int fused)
{
    const int64_t m = fc->m, n = fc->rows[0];
    if (fc->op == FUSED_MULTI) {
        if (fused)
            bt_matmul_multi(b, fc->n_w, y, w, x, m);
        else
            for (int t = 0; t < fc->n_w; t++)
                bt_matmul(b, y[t], w[t], x, m);
    } else if (fc->op == FUSED_ADD) {
        if (fused) {
            bt_matmul_add(b, y[0], w[0], x, m, tmp);
        } else {
            bt_matmul(b, tmp, w[0], x, m);
            bt_add(b, y[0], tmp, m * n);
        }
    } else if (fused) {
        bt_matmul_swiglu(b, y[0], w[0], w[1], x, m, tmp);
    } else {
        bt_matmul(b, y[0], w[0], x, m);
        bt_matmul(b, tmp, w[1], x, m);
        bt_swiglu(b, y[0], y[0], tmp, m * n);
    }
}

static void expect_same(const char *what, const float *got, const float *ref, size_t n)
{
    if (memcmp(got, ref, n * sizeof *got) != 0) {
        fprintf(stderr, "%s: fused differs from composed (normalised error %.3g)\n", what,
                nerr(got, ref, n));
        fail();
    }
}

/* n weights of one type and k columns, random, on the host (c, pc) and on backend g (d, pd);
 * with shifted, the last one's device copy starts 2 bytes into its buffer. */
typedef struct {
    bt_tensor_t c[4], d[4];
    const bt_tensor_t *pc[4], *pd[4];
    void *host[4], *buf[4];
    int n;
} weights_t;

static void weights_make(weights_t *ws, bt_backend_t *g, int type, int n, const int64_t *rows,
                         int64_t k, int shifted)
{
    const size_t rb = bt_type_row_bytes(type, k);
    ws->n = n;
    for (int t = 0; t < n; t++) {
        const size_t off = shifted && t == n - 1 ? 2 : 0;
        float *wf = rnd_vec((size_t)rows[t] * k);
        ws->host[t] = make_weights(type, wf, rows[t], k);
        free(wf);
        ws->buf[t] = bt_backend_alloc(g, rb * (size_t)rows[t] + 16);
        assert_non_null(ws->buf[t]);
        bt_backend_upload(g, (uint8_t *)ws->buf[t] + off, ws->host[t], rb * (size_t)rows[t]);
        ws->c[t] = (bt_tensor_t){.type = type, .rows = rows[t], .cols = k, .data = ws->host[t]};
        ws->d[t] = ws->c[t];
        ws->d[t].data = (uint8_t *)ws->buf[t] + off;
        ws->pc[t] = &ws->c[t];
        ws->pd[t] = &ws->d[t];
    }
}

static void weights_free(weights_t *ws, bt_backend_t *g)
{
    for (int t = 0; t < ws->n; t++) {
        bt_backend_free(g, ws->buf[t]);
        free(ws->host[t]);
    }
}

static int64_t rows_max(int n, const int64_t *rows)
{
    int64_t r = 0;
    for (int t = 0; t < n; t++)
        r = rows[t] > r ? rows[t] : r;
    return r;
}

/* A case's n outputs, [m][rows[t]] each, starting as the same random values on the host (c,
 * for the CPU backend) and twice on backend g (f: the fused op, q: its composition). */
typedef struct {
    float *f[4], *q[4], *c[4];
    int n;
    int64_t m;
    const int64_t *rows;
} outs_t;

static void outs_make(outs_t *o, bt_backend_t *g, int n, int64_t m, const int64_t *rows)
{
    *o = (outs_t){.n = n, .m = m, .rows = rows};
    for (int t = 0; t < n; t++) {
        const size_t len = (size_t)(m * rows[t]);
        o->c[t] = rnd_vec(len);
        o->f[t] = to_dev(g, o->c[t], len * 4);
        o->q[t] = to_dev(g, o->c[t], len * 4);
    }
}

/* Each output: fused against composed (bit for bit when exact, else within bf16 tolerance)
 * and against the CPU backend's within cpu_tol; frees the outputs. */
static void outs_check(outs_t *o, bt_backend_t *g, const char *label, int exact, double cpu_tol)
{
    for (int t = 0; t < o->n; t++) {
        const size_t n = (size_t)(o->m * o->rows[t]);
        float *a = from_dev(g, o->f[t], n), *b = from_dev(g, o->q[t], n);
        char what[192];
        snprintf(what, sizeof what, "%s output %d n=%ld", label, t, (long)o->rows[t]);
        if (exact)
            expect_same(what, a, b, n);
        else
            expect_close(what, a, b, n, TOL_BF16);
        expect_close(what, a, o->c[t], n, cpu_tol);
        free(a);
        free(b);
        bt_backend_free(g, o->f[t]);
        bt_backend_free(g, o->q[t]);
        free(o->c[t]);
    }
}

/* Fused against composed on the device (bit for bit in deterministic mode, bf16 tolerance with
 * cuBLAS), and against the CPU backend's composition. Outputs start as the same random values,
 * which ADD adds to and the others must overwrite. */
static void check_fused(const fused_case_t *fc)
{
    bt_backend_t *g = fc->nondet ? gpu_nd : gpu;
    weights_t ws;
    weights_make(&ws, g, fc->type, fc->n_w, fc->rows, fc->k, fc->shifted);
    const size_t xn = (size_t)(fc->m * fc->k), tn = (size_t)(fc->m * rows_max(fc->n_w, fc->rows));
    float *x = rnd_vec(xn), *xg = to_dev(g, x, xn * 4);
    float *tmpg = bt_backend_alloc(g, tn * 4), *tmpc = malloc(tn * 4);
    outs_t o;
    outs_make(&o, g, fc->op == FUSED_MULTI ? fc->n_w : 1, fc->m, fc->rows);
    fused_run(g, fc, o.f, ws.pd, xg, tmpg, 1);
    fused_run(g, fc, o.q, ws.pd, xg, tmpg, 0);
    fused_run(cpu, fc, o.c, ws.pc, x, tmpc, 0);
    const int lossy =
        fc->type == BT_TYPE_Q8_0 || (fc->nondet && fc->m > 8 && fc->type != BT_TYPE_F32);
    char label[128];
    snprintf(label, sizeof label, "%s %s k=%ld m=%ld%s%s", fused_names[fc->op],
             bt_type_name(fc->type), (long)fc->k, (long)fc->m,
             fc->nondet ? " (cuBLAS allowed)" : "", fc->shifted ? " (one weight shifted)" : "");
    outs_check(&o, g, label, !fc->nondet, lossy ? TOL_BF16 : TOL_F32);
    weights_free(&ws, g);
    bt_backend_free(g, tmpg);
    bt_backend_free(g, xg);
    free(tmpc);
    free(x);
}

/* The three ops with the 1b layer's shapes (q/k/v 2048/512/512 of 2048 columns) and with row
 * counts that are not multiples of a block's 8 rows, on the 16-byte path. */
static void test_cuda_fused_matmuls_match_composed(void **state)
{
    static const int types[] = {BT_TYPE_BF16, BT_TYPE_F32};
    static const int64_t ms[] = {1, 3, 8, 13};
    for (size_t t = 0; t < sizeof types / sizeof types[0]; t++)
        for (size_t i = 0; i < sizeof ms / sizeof ms[0]; i++) {
            const int ty = types[t];
            const int64_t m = ms[i];
            const fused_case_t cases[] = {
                {FUSED_MULTI, ty, 3, 2048, m, 0, 0, {2048, 512, 512}},
                {FUSED_MULTI, ty, 4, 256, m, 0, 0, {300, 77, 45, 13}},
                {FUSED_ADD, ty, 1, 2048, m, 0, 0, {2048}},
                {FUSED_ADD, ty, 1, 256, m, 0, 0, {300}},
                {FUSED_SWIGLU, ty, 2, 2048, m, 0, 0, {1000, 1000}},
                {FUSED_SWIGLU, ty, 2, 256, m, 0, 0, {77, 77}},
            };
            for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++)
                check_fused(&cases[c]);
        }
}

/* The scalar path (k = 100), Q8_0, and weights of one call on different paths (one weight's
 * data not 16-byte aligned): each must still give its own matmul's bits. */
static void test_cuda_fused_matmuls_other_paths(void **state)
{
    static const int64_t ms[] = {1, 3, 8, 13};
    for (size_t i = 0; i < sizeof ms / sizeof ms[0]; i++) {
        const int64_t m = ms[i];
        const fused_case_t cases[] = {
            {FUSED_MULTI, BT_TYPE_F16, 3, 100, m, 0, 0, {45, 30, 7}},
            {FUSED_ADD, BT_TYPE_F16, 1, 100, m, 0, 0, {45}},
            {FUSED_SWIGLU, BT_TYPE_F16, 2, 100, m, 0, 0, {45, 45}},
            {FUSED_MULTI, BT_TYPE_Q8_0, 3, 256, m, 0, 0, {300, 77, 45}},
            {FUSED_ADD, BT_TYPE_Q8_0, 1, 256, m, 0, 0, {77}},
            {FUSED_SWIGLU, BT_TYPE_Q8_0, 2, 256, m, 0, 0, {77, 77}},
            {FUSED_MULTI, BT_TYPE_BF16, 3, 256, m, 0, 1, {300, 77, 45}},
            {FUSED_SWIGLU, BT_TYPE_BF16, 2, 256, m, 0, 1, {77, 77}},
        };
        for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++)
            check_fused(&cases[c]);
    }
}

/* Nondeterministic mode, 64 rows: cuBLAS (one bf16 conversion shared by the weights, beta = 1
 * for the add, the up product in scratch) or f32 GEMMs; an FFN wider than the scratch's row
 * (70000 > max_cols) runs cuBLAS swiglu in row chunks. */
static void test_cuda_fused_matmuls_cublas(void **state)
{
    static const int types[] = {BT_TYPE_BF16, BT_TYPE_F32};
    for (size_t t = 0; t < sizeof types / sizeof types[0]; t++) {
        const int ty = types[t];
        const fused_case_t cases[] = {
            {FUSED_MULTI, ty, 3, 2048, 64, 1, 0, {2048, 512, 512}},
            {FUSED_ADD, ty, 1, 2048, 64, 1, 0, {2048}},
            {FUSED_SWIGLU, ty, 2, 2048, 64, 1, 0, {2000, 2000}},
            {FUSED_SWIGLU, ty, 2, 64, 64, 1, 0, {70000, 70000}},
        };
        for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++)
            check_fused(&cases[c]);
    }
}

/* ---- rmsnorm-fused matmuls ---- */

#define RMS_EPS 1e-5f

enum { RMS_MULTI, RMS_SWIGLU };
static const char *const rms_names[] = {"rms_matmul_multi", "rms_matmul_swiglu"};

/* Where a case moves one input off 16 bytes (each buffer has room for it). */
enum {
    SHIFT_NONE,
    SHIFT_WEIGHT, /* the last weight's data, 2 bytes: the scalar path for it alone */
    SHIFT_X,      /* x, one float: the pre-norm GEMV kernels would leave the 16-byte path, */
    SHIFT_NORM,   /* so the op composes through the backend's scratch (same for norm) */
};

typedef struct {
    int op;     /* RMS_*: n_w weights for MULTI, 2 (gate, up) for SWIGLU */
    int type;   /* weight type */
    int n_w;    /* weights */
    int64_t k;  /* columns of every weight, and of x and norm */
    int64_t m;  /* rows of x */
    int nondet; /* on the nondeterministic backend (cuBLAS above 8 rows) */
    int shift;  /* SHIFT_* */
    int64_t rows[4];
} rms_case_t;

/* The case's op on backend b: fused (the wrapper, with b's rms_ op when it has one) or the
 * contract's reference, b's rmsnorm into xn and then b's fused matmul on xn. */
static void rms_run(bt_backend_t *b, const rms_case_t *rc, float *const *y,
                    const bt_tensor_t *const *w, const float *x, const float *norm, float *xn,
                    float *tmp, int fused)
{
    if (fused && rc->op == RMS_MULTI) {
        bt_rms_matmul_multi(b, rc->n_w, y, w, x, norm, RMS_EPS, rc->m, xn);
    } else if (fused) {
        bt_rms_matmul_swiglu(b, y[0], w[0], w[1], x, norm, RMS_EPS, rc->m, xn, tmp);
    } else {
        bt_rmsnorm(b, xn, x, norm, rc->m, rc->k, RMS_EPS);
        if (rc->op == RMS_MULTI)
            bt_matmul_multi(b, rc->n_w, y, w, xn, rc->m);
        else
            bt_matmul_swiglu(b, y[0], w[0], w[1], xn, rc->m, tmp);
    }
}

/* A device buffer of n floats (plus one, for a shifted start) holding v, starting one float in
 * with shift; *base gets the allocation. */
static float *to_dev_shifted(bt_backend_t *g, const float *v, size_t n, int shift, void **base)
{
    *base = bt_backend_alloc(g, (n + 4) * sizeof(float));
    assert_non_null(*base);
    float *d = (float *)*base + (shift ? 1 : 0);
    bt_backend_upload(g, d, v, n * sizeof(float));
    return d;
}

/* The fused op against rmsnorm + the fused matmul on the same backend, bit for bit in both
 * modes (the cuBLAS path converts the same f32 values in the same row chunks, and the f32 GEMMs
 * get the same shapes), and against the CPU backend within tolerance. The fused op must leave
 * xn as it was (it writes no normed rows), unless BATON_FUSED_OPS=0 makes it compose. */
static void check_rms(const rms_case_t *rc)
{
    bt_backend_t *g = rc->nondet ? gpu_nd : gpu;
    weights_t ws;
    weights_make(&ws, g, rc->type, rc->n_w, rc->rows, rc->k, rc->shift == SHIFT_WEIGHT);
    const size_t xnum = (size_t)(rc->m * rc->k), tn = (size_t)(rc->m * rows_max(rc->n_w, rc->rows));
    float *x = rnd_vec(xnum), *norm = rnd_vec((size_t)rc->k);
    for (int64_t i = 0; i < rc->k; i++)
        norm[i] += 1.0f; /* around 1, as trained norms are */
    void *xbase, *nbase;
    float *xg = to_dev_shifted(g, x, xnum, rc->shift == SHIFT_X, &xbase);
    float *ng = to_dev_shifted(g, norm, (size_t)rc->k, rc->shift == SHIFT_NORM, &nbase);
    float *sentinel = malloc(xnum * 4);
    assert_non_null(sentinel);
    memset(sentinel, 0x5a, xnum * 4);
    float *xng = to_dev(g, sentinel, xnum * 4), *tmpg = bt_backend_alloc(g, tn * 4);
    float *xnc = malloc(xnum * 4), *tmpc = malloc(tn * 4);
    outs_t o;
    outs_make(&o, g, rc->op == RMS_MULTI ? rc->n_w : 1, rc->m, rc->rows);
    rms_run(g, rc, o.f, ws.pd, xg, ng, xng, tmpg, 1);
    const char *env = getenv("BATON_FUSED_OPS");
    if (!(env && !strcmp(env, "0"))) {
        float *xn = from_dev(g, xng, xnum);
        assert_memory_equal(xn, sentinel, xnum * 4);
        free(xn);
    }
    rms_run(g, rc, o.q, ws.pd, xg, ng, xng, tmpg, 0);
    rms_run(cpu, rc, o.c, ws.pc, x, norm, xnc, tmpc, 0);
    const int lossy =
        rc->type == BT_TYPE_Q8_0 || (rc->nondet && rc->m > 8 && rc->type != BT_TYPE_F32);
    static const char *const shifts[] = {"", " (one weight shifted)", " (x shifted)",
                                         " (norm shifted)"};
    char label[128];
    snprintf(label, sizeof label, "%s %s k=%ld m=%ld%s%s", rms_names[rc->op],
             bt_type_name(rc->type), (long)rc->k, (long)rc->m,
             rc->nondet ? " (cuBLAS allowed)" : "", shifts[rc->shift]);
    outs_check(&o, g, label, 1, lossy ? TOL_BF16 : TOL_F32);
    weights_free(&ws, g);
    DEV_FREE(g, xbase, nbase, xng, tmpg);
    free(sentinel);
    free(xnc);
    free(tmpc);
    free(norm);
    free(x);
}

static const int64_t rms_ms[] = {1, 3, 8, 13};

/* The 16-byte path (and Q8_0) with the 1b layer's shapes: q/k/v 2048/512/512 of 2048 columns,
 * one weight (the logits' n_w = 1), swiglu; row counts off a block's 8. */
static void test_cuda_rms_matmuls_match_composed(void **state)
{
    static const int types[] = {BT_TYPE_BF16, BT_TYPE_F32, BT_TYPE_Q8_0};
    for (size_t t = 0; t < sizeof types / sizeof types[0]; t++)
        for (size_t i = 0; i < sizeof rms_ms / sizeof rms_ms[0]; i++) {
            const int ty = types[t];
            const int64_t m = rms_ms[i];
            const rms_case_t cases[] = {
                {RMS_MULTI, ty, 3, 2048, m, 0, SHIFT_NONE, {2048, 512, 512}},
                {RMS_MULTI, ty, 1, 2048, m, 0, SHIFT_NONE, {1000}},
                {RMS_SWIGLU, ty, 2, 2048, m, 0, SHIFT_NONE, {1000, 1000}},
            };
            for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++)
                check_rms(&cases[c]);
        }
}

/* The scalar path (k = 1001, odd, for every dense type; k = 100, under one element per norm
 * thread), Q8_0 at k = 256, one weight on another path than the rest, and x or norm off 16
 * bytes (the op then runs as its composition, through the backend's scratch). */
static void test_cuda_rms_matmuls_other_paths(void **state)
{
    static const int dense[] = {BT_TYPE_F16, BT_TYPE_BF16, BT_TYPE_F32};
    for (size_t i = 0; i < sizeof rms_ms / sizeof rms_ms[0]; i++) {
        const int64_t m = rms_ms[i];
        for (size_t t = 0; t < sizeof dense / sizeof dense[0]; t++) {
            const int ty = dense[t];
            const rms_case_t cases[] = {
                {RMS_MULTI, ty, 3, 1001, m, 0, SHIFT_NONE, {45, 30, 7}},
                {RMS_MULTI, ty, 1, 1001, m, 0, SHIFT_NONE, {77}},
                {RMS_SWIGLU, ty, 2, 1001, m, 0, SHIFT_NONE, {45, 45}},
            };
            for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++)
                check_rms(&cases[c]);
        }
        const rms_case_t cases[] = {
            {RMS_MULTI, BT_TYPE_F16, 3, 100, m, 0, SHIFT_NONE, {45, 30, 7}},
            {RMS_SWIGLU, BT_TYPE_F16, 2, 100, m, 0, SHIFT_NONE, {45, 45}},
            {RMS_MULTI, BT_TYPE_Q8_0, 3, 256, m, 0, SHIFT_NONE, {300, 77, 45}},
            {RMS_SWIGLU, BT_TYPE_Q8_0, 2, 256, m, 0, SHIFT_NONE, {77, 77}},
            {RMS_MULTI, BT_TYPE_BF16, 3, 256, m, 0, SHIFT_WEIGHT, {300, 77, 45}},
            {RMS_SWIGLU, BT_TYPE_BF16, 2, 256, m, 0, SHIFT_WEIGHT, {77, 77}},
            {RMS_MULTI, BT_TYPE_BF16, 3, 256, m, 0, SHIFT_X, {300, 77, 45}},
            {RMS_SWIGLU, BT_TYPE_F32, 2, 256, m, 0, SHIFT_X, {77, 77}},
            {RMS_MULTI, BT_TYPE_F32, 1, 256, m, 0, SHIFT_NORM, {300}},
            {RMS_SWIGLU, BT_TYPE_BF16, 2, 256, m, 0, SHIFT_NORM, {77, 77}},
        };
        for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++)
            check_rms(&cases[c]);
    }
}

/* Nondeterministic mode, 64 rows: BF16 on cuBLAS (the norm + conversion kernel; an FFN wider
 * than the scratch's row runs in row chunks), F32 as rmsnorm into the scratch + f32 GEMMs, and
 * Q8_0 on the pre-norm GEMV kernels. */
static void test_cuda_rms_matmuls_cublas(void **state)
{
    static const int types[] = {BT_TYPE_BF16, BT_TYPE_F32};
    for (size_t t = 0; t < sizeof types / sizeof types[0]; t++) {
        const int ty = types[t];
        const rms_case_t cases[] = {
            {RMS_MULTI, ty, 3, 2048, 64, 1, SHIFT_NONE, {2048, 512, 512}},
            {RMS_MULTI, ty, 1, 2048, 64, 1, SHIFT_NONE, {1000}},
            {RMS_SWIGLU, ty, 2, 2048, 64, 1, SHIFT_NONE, {2000, 2000}},
            {RMS_SWIGLU, ty, 2, 64, 64, 1, SHIFT_NONE, {70000, 70000}},
            {RMS_MULTI, ty, 3, 2048, 64, 1, SHIFT_X, {2048, 512, 512}},
        };
        for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++)
            check_rms(&cases[c]);
    }
    const rms_case_t q8[] = {
        {RMS_MULTI, BT_TYPE_Q8_0, 3, 2048, 64, 1, SHIFT_NONE, {2048, 512, 512}},
        {RMS_SWIGLU, BT_TYPE_Q8_0, 2, 2048, 64, 1, SHIFT_NONE, {1000, 1000}},
    };
    for (size_t c = 0; c < sizeof q8 / sizeof q8[0]; c++)
        check_rms(&q8[c]);
}

/* ---- the pre-norm FFN (rms_ffn) ---- */

/* x += down(swiglu of rmsnorm(x) through gate and up), k = dim, n = the FFN's width: fused on
 * the device against the same backend's composition (rms_matmul_swiglu, then matmul_add),
 * bit for bit in deterministic mode and within bf16 tolerance on cuBLAS (where the fused op
 * keeps the gate and up products in 16 bits), and against the CPU backend's composition. */
static void check_ffn(int type, int64_t k, int64_t n, int64_t m, int nondet)
{
    bt_backend_t *g = nondet ? gpu_nd : gpu;
    weights_t gu, dn;
    const int64_t gu_rows[2] = {n, n}, dn_rows[1] = {k};
    weights_make(&gu, g, type, 2, gu_rows, k, 0);
    weights_make(&dn, g, type, 1, dn_rows, n, 0);
    float *norm = rnd_vec((size_t)k);
    for (int64_t i = 0; i < k; i++)
        norm[i] += 1.0f;
    float *ng = to_dev(g, norm, (size_t)k * 4);
    const size_t hn = (size_t)(m * n), xn = (size_t)(m * k);
    float *hg = bt_backend_alloc(g, hn * 4), *xng = bt_backend_alloc(g, xn * 4);
    float *tmpg = bt_backend_alloc(g, hn * 4);
    float *hc = malloc(hn * 4), *xnc = malloc(xn * 4), *tmpc = malloc(hn * 4);
    assert_true(hg && xng && tmpg && hc && xnc && tmpc);
    outs_t o;
    outs_make(&o, g, 1, m, dn_rows);
    bt_rms_ffn(g, o.f[0], gu.pd[0], gu.pd[1], dn.pd[0], ng, RMS_EPS, m, hg, xng, tmpg);
    bt_rms_matmul_swiglu(g, hg, gu.pd[0], gu.pd[1], o.q[0], ng, RMS_EPS, m, xng, tmpg);
    bt_matmul_add(g, o.q[0], dn.pd[0], hg, m, xng);
    bt_rms_matmul_swiglu(cpu, hc, gu.pc[0], gu.pc[1], o.c[0], norm, RMS_EPS, m, xnc, tmpc);
    bt_matmul_add(cpu, o.c[0], dn.pc[0], hc, m, xnc);
    const int lossy = type == BT_TYPE_Q8_0 || (nondet && m > 8 && type != BT_TYPE_F32);
    char label[128];
    snprintf(label, sizeof label, "rms_ffn %s k=%ld n=%ld m=%ld%s", bt_type_name(type), (long)k,
             (long)n, (long)m, nondet ? " (cuBLAS allowed)" : "");
    outs_check(&o, g, label, !lossy || type == BT_TYPE_Q8_0, lossy ? TOL_BF16 : TOL_F32);
    weights_free(&gu, g);
    weights_free(&dn, g);
    DEV_FREE(g, ng, hg, xng, tmpg);
    free(hc);
    free(xnc);
    free(tmpc);
    free(norm);
}

/* GEMV rows (1, 3, 8) compose on both backends; 13 and 64 rows on the nondeterministic one take
 * cuBLAS: BF16 and F16 through the 16-bit FFN (FFN widths on and off 8 elements, so both the
 * 16-byte and the element-wise swiglu run), F32 and Q8_0 as the composition. */
static void test_cuda_rms_ffn(void **state)
{
    static const int64_t ms[] = {1, 3, 8, 13, 64};
    static const int types[] = {BT_TYPE_BF16, BT_TYPE_F16, BT_TYPE_F32, BT_TYPE_Q8_0};
    for (size_t t = 0; t < sizeof types / sizeof types[0]; t++)
        for (size_t i = 0; i < sizeof ms / sizeof ms[0]; i++) {
            check_ffn(types[t], 256, 704, ms[i], 0);
            check_ffn(types[t], 256, 704, ms[i], 1);
            if (types[t] == BT_TYPE_BF16 || types[t] == BT_TYPE_F16)
                check_ffn(types[t], 96, 100, ms[i], 1);
        }
}

/* ---- element-wise ---- */

static void test_cuda_get_rows_all_types(void **state)
{
    static const int types[] = {BT_TYPE_F32, BT_TYPE_F16, BT_TYPE_BF16, BT_TYPE_Q8_0};
    const int64_t rows = 500, cols = 192, m = 33;
    int32_t ids[33];
    for (int i = 0; i < m; i++)
        ids[i] = (int32_t)(rnd_u32() % rows);
    float *tf = rnd_vec((size_t)rows * cols);
    for (size_t t = 0; t < sizeof types / sizeof types[0]; t++) {
        void *th = make_weights(types[t], tf, rows, cols);
        bt_tensor_t tc = {.type = types[t], .rows = rows, .cols = cols, .data = th}, tg = tc;
        tg.data = to_dev(gpu, th, bt_type_row_bytes(types[t], cols) * rows);
        int32_t *idg = to_dev(gpu, ids, sizeof ids);
        float *yg = bt_backend_alloc(gpu, (size_t)m * cols * 4), *yc = malloc(m * cols * 4);
        bt_get_rows(cpu, yc, &tc, ids, m);
        bt_get_rows(gpu, yg, &tg, idg, m);
        float *y = from_dev(gpu, yg, (size_t)m * cols);
        assert_memory_equal(y, yc, (size_t)m * cols * 4); /* exact widening both sides */
        free(y);
        free(yc);
        bt_backend_free(gpu, yg);
        bt_backend_free(gpu, idg);
        bt_backend_free(gpu, (void *)tg.data);
        free(th);
    }
    free(tf);
}

static void test_cuda_rmsnorm_rope_swiglu_add(void **state)
{
    const int64_t m = 19, n_heads = 6, hd = 64, n = n_heads * hd;
    float *x = rnd_vec(m * n), *w = rnd_vec(n), *u = rnd_vec(m * n), *inv = rnd_vec(hd / 2);
    int32_t pos[19];
    for (int i = 0; i < m; i++)
        pos[i] = (int32_t)(rnd_u32() % 8192);
    for (int i = 0; i < hd / 2; i++)
        inv[i] = powf(500000.0f, -2.0f * i / hd);
    float *xg = to_dev(gpu, x, m * n * 4), *wg = to_dev(gpu, w, n * 4);
    float *ug = to_dev(gpu, u, m * n * 4), *ig = to_dev(gpu, inv, hd / 2 * 4);
    int32_t *pg = to_dev(gpu, pos, sizeof pos);
    float *yc = malloc(m * n * 4);

    bt_rmsnorm(cpu, yc, x, w, m, n, 1e-5f);
    float *yg = bt_backend_alloc(gpu, m * n * 4);
    bt_rmsnorm(gpu, yg, xg, wg, m, n, 1e-5f);
    float *y = from_dev(gpu, yg, m * n);
    expect_close("rmsnorm", y, yc, m * n, 1e-5);
    free(y);

    memcpy(yc, x, m * n * 4);
    bt_rope(cpu, yc, pos, m, n_heads, hd, inv);
    bt_backend_upload(gpu, yg, x, m * n * 4);
    bt_rope(gpu, yg, pg, m, n_heads, hd, ig);
    y = from_dev(gpu, yg, m * n);
    expect_close("rope", y, yc, m * n, 1e-5);
    free(y);

    bt_swiglu(cpu, yc, x, u, m * n);
    bt_swiglu(gpu, yg, xg, ug, m * n);
    y = from_dev(gpu, yg, m * n);
    expect_close("swiglu", y, yc, m * n, 1e-5);
    free(y);

    memcpy(yc, x, m * n * 4);
    bt_add(cpu, yc, u, m * n);
    bt_add(gpu, xg, ug, m * n);
    y = from_dev(gpu, xg, m * n);
    assert_memory_equal(y, yc, m * n * 4);
    free(y);

    int32_t rows[5] = {18, 0, 7, 7, 3};
    bt_gather_rows(cpu, yc, u, rows, 5, n);
    bt_gather_rows(gpu, yg, ug, rows, 5, n);
    y = from_dev(gpu, yg, 5 * n);
    assert_memory_equal(y, yc, 5 * n * 4);
    free(y);

    DEV_FREE(gpu, xg, wg, ug, ig, pg, yg);
    free(yc);
    free(x);
    free(w);
    free(u);
    free(inv);
}

/* ---- kv_store and attention ---- */

#define N_BLOCKS 512
#define MAX_SEQS 8

typedef struct {
    int type, n_kv, hd, n_heads, block_size, n_seqs;
    int32_t n_past[MAX_SEQS], n_new[MAX_SEQS];
    int nondet; /* 1: on the nondeterministic backend (tensor-core prefill), bf16 tolerance */
} attn_case_t;

typedef struct {
    bt_attn_seq_t seqs[MAX_SEQS];
    int32_t *tables[MAX_SEQS];
    int32_t rows;
} attn_batch_t;

/* Block tables drawn from a shuffled pool so that runs are scattered. */
static void batch_init(attn_batch_t *b, const attn_case_t *c)
{
    int32_t perm[N_BLOCKS], used = 0;
    for (int i = 0; i < N_BLOCKS; i++)
        perm[i] = i;
    for (int i = N_BLOCKS - 1; i > 0; i--) {
        int j = (int)(rnd_u32() % (uint32_t)(i + 1)), t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    b->rows = 0;
    for (int s = 0; s < c->n_seqs; s++) {
        int32_t len = c->n_past[s] + c->n_new[s];
        int32_t nb = (len + c->block_size - 1) / c->block_size;
        assert_true(used + nb <= N_BLOCKS);
        b->tables[s] = malloc((size_t)nb * sizeof(int32_t));
        memcpy(b->tables[s], perm + used, (size_t)nb * sizeof(int32_t));
        used += nb;
        b->seqs[s] = (bt_attn_seq_t){
            .row0 = b->rows, .n_new = c->n_new[s], .n_past = c->n_past[s], .blocks = b->tables[s]};
        b->rows += c->n_new[s];
    }
}

static void batch_fini(attn_batch_t *b, int n)
{
    for (int s = 0; s < n; s++)
        free(b->tables[s]);
}

/* A case's row widths (elements) and its cache layer of N_BLOCKS blocks at data. */
typedef struct {
    size_t kvrow, qrow, pool; /* pool: bytes */
} attn_geom_t;

static attn_geom_t attn_geom(const attn_case_t *c)
{
    const size_t es = c->type == BT_TYPE_F32 ? 4 : 2, kvrow = (size_t)c->n_kv * c->hd;
    return (attn_geom_t){.kvrow = kvrow,
                         .qrow = (size_t)c->n_heads * c->hd,
                         .pool = 2 * (size_t)c->block_size * kvrow * es * N_BLOCKS};
}

static bt_kv_layer_t attn_layer(const attn_case_t *c, void *data)
{
    return (bt_kv_layer_t){.type = c->type,
                           .block_size = c->block_size,
                           .n_kv_heads = c->n_kv,
                           .head_dim = c->hd,
                           .block_bytes = attn_geom(c).pool / N_BLOCKS,
                           .data = data};
}

/* Fills every sequence's past positions by kv_store calls of the past rows (on both sides),
 * then stores the new rows and runs attention; compares caches bytes and outputs. */
static void check_attention(const attn_case_t *c)
{
    bt_backend_t *g = c->nondet ? gpu_nd : gpu;
    attn_batch_t b;
    batch_init(&b, c);
    const attn_geom_t ge = attn_geom(c);
    const size_t kvrow = ge.kvrow, qrow = ge.qrow, pool = ge.pool;
    void *zero = calloc(1, pool);
    bt_kv_layer_t kc = attn_layer(c, calloc(1, pool)), kg = attn_layer(c, to_dev(g, zero, pool));

    /* Past rows: one kv_store per sequence of its n_past rows (as a prefill would). */
    int32_t max_past = 0;
    for (int s = 0; s < c->n_seqs; s++)
        max_past = c->n_past[s] > max_past ? c->n_past[s] : max_past;
    float *pk = rnd_vec(max_past * kvrow + 1), *pv = rnd_vec(max_past * kvrow + 1);
    float *pkg = to_dev(g, pk, (max_past * kvrow + 1) * 4);
    float *pvg = to_dev(g, pv, (max_past * kvrow + 1) * 4);
    for (int s = 0; s < c->n_seqs; s++) {
        if (!c->n_past[s])
            continue;
        bt_attn_seq_t ps = {.row0 = 0, .n_new = c->n_past[s], .n_past = 0, .blocks = b.tables[s]};
        bt_kv_store(cpu, &kc, pk, pv, &ps, 1);
        bt_kv_store(g, &kg, pkg, pvg, &ps, 1);
    }
    float *k = rnd_vec(b.rows * kvrow), *v = rnd_vec(b.rows * kvrow), *q = rnd_vec(b.rows * qrow);
    float *kgd = to_dev(g, k, b.rows * kvrow * 4), *vgd = to_dev(g, v, b.rows * kvrow * 4);
    float *qg = to_dev(g, q, b.rows * qrow * 4);
    bt_kv_store(cpu, &kc, k, v, b.seqs, c->n_seqs);
    bt_kv_store(g, &kg, kgd, vgd, b.seqs, c->n_seqs);
    uint8_t *cache = malloc(pool);
    bt_backend_download(g, cache, kg.data, pool);
    assert_memory_equal(cache, kc.data, pool);

    float scale = 1.0f / sqrtf((float)c->hd);
    float *oc = malloc(b.rows * qrow * 4), *og = bt_backend_alloc(g, b.rows * qrow * 4);
    bt_attention(cpu, oc, q, &kc, b.seqs, c->n_seqs, c->n_heads, scale);
    bt_attention(g, og, qg, &kg, b.seqs, c->n_seqs, c->n_heads, scale);
    float *o = from_dev(g, og, b.rows * qrow);
    char what[64];
    snprintf(what, sizeof what, "attention %s hd=%d group=%d%s", bt_type_name(c->type), c->hd,
             c->n_heads / c->n_kv, c->nondet ? " nondet" : "");
    expect_close(what, o, oc, b.rows * qrow, c->nondet ? TOL_BF16 : TOL_F32);

    free(o);
    free(oc);
    free(cache);
    DEV_FREE(g, og, qg, kgd, vgd, pkg, pvg, kg.data);
    free(q);
    free(k);
    free(v);
    free(pk);
    free(pv);
    free(zero);
    free(kc.data);
    batch_fini(&b, c->n_seqs);
}

/* rope_kv_store: the fused op against rope, rope and kv_store on the same backend (q, k and
 * the cache bit for bit), and q and k against the CPU backend. Every row belongs to one of the
 * case's sequences; positions are each row's place in its sequence. */
static void check_rope_kv_store(const attn_case_t *c)
{
    attn_batch_t b;
    batch_init(&b, c);
    const int hd = c->hd;
    const attn_geom_t ge = attn_geom(c);
    const size_t kvrow = ge.kvrow, qrow = ge.qrow, pool = ge.pool, rows = (size_t)b.rows;
    int32_t *pos = malloc(rows * sizeof(int32_t));
    float *inv = malloc((size_t)hd / 2 * sizeof(float));
    assert_true(pos && inv);
    for (int s = 0; s < c->n_seqs; s++)
        for (int32_t r = 0; r < c->n_new[s]; r++)
            pos[b.seqs[s].row0 + r] = c->n_past[s] + r;
    for (int i = 0; i < hd / 2; i++)
        inv[i] = powf(500000.0f, -2.0f * i / hd);
    float *q = rnd_vec(rows * qrow), *k = rnd_vec(rows * kvrow), *v = rnd_vec(rows * kvrow);
    uint8_t *zero = calloc(1, pool);
    bt_kv_layer_t kf = attn_layer(c, to_dev(gpu, zero, pool));
    bt_kv_layer_t kq = attn_layer(c, to_dev(gpu, zero, pool));
    float *qf = to_dev(gpu, q, rows * qrow * 4), *kfd = to_dev(gpu, k, rows * kvrow * 4);
    float *qq = to_dev(gpu, q, rows * qrow * 4), *kqd = to_dev(gpu, k, rows * kvrow * 4);
    float *vg = to_dev(gpu, v, rows * kvrow * 4), *ig = to_dev(gpu, inv, (size_t)hd / 2 * 4);
    int32_t *pg = to_dev(gpu, pos, rows * sizeof(int32_t));

    bt_rope_kv_store(gpu, qf, kfd, vg, pg, b.rows, c->n_heads, ig, &kf, b.seqs, c->n_seqs);
    bt_rope(gpu, qq, pg, b.rows, c->n_heads, hd, ig);
    bt_rope(gpu, kqd, pg, b.rows, c->n_kv, hd, ig);
    bt_kv_store(gpu, &kq, kqd, vg, b.seqs, c->n_seqs);
    bt_rope(cpu, q, pos, b.rows, c->n_heads, hd, inv);
    bt_rope(cpu, k, pos, b.rows, c->n_kv, hd, inv);

    char what[96];
    snprintf(what, sizeof what, "rope_kv_store %s hd=%d group=%d", bt_type_name(c->type), hd,
             c->n_heads / c->n_kv);
    float *a = from_dev(gpu, qf, rows * qrow), *z = from_dev(gpu, qq, rows * qrow);
    expect_same(what, a, z, rows * qrow);
    expect_close(what, a, q, rows * qrow, TOL_F32);
    free(a);
    free(z);
    a = from_dev(gpu, kfd, rows * kvrow);
    z = from_dev(gpu, kqd, rows * kvrow);
    expect_same(what, a, z, rows * kvrow);
    expect_close(what, a, k, rows * kvrow, TOL_F32);
    free(a);
    free(z);
    uint8_t *cf = malloc(pool), *cq = malloc(pool);
    bt_backend_download(gpu, cf, kf.data, pool);
    bt_backend_download(gpu, cq, kq.data, pool);
    assert_memory_equal(cf, cq, pool);

    free(cf);
    free(cq);
    DEV_FREE(gpu, kf.data, kq.data, qf, kfd, qq, kqd, vg, ig, pg);
    free(zero);
    free(q);
    free(k);
    free(v);
    free(pos);
    free(inv);
    batch_fini(&b, c->n_seqs);
}

/* Attention against the CPU, and rope_kv_store against its composition, on the same cases. */
static void test_cuda_attention_against_cpu(void **state)
{
    static const int types[] = {BT_TYPE_F32, BT_TYPE_F16, BT_TYPE_BF16};
    for (size_t t = 0; t < 3; t++) {
        /* Decode rows over short and long (split) contexts, plus prefills, GQA group 4. */
        attn_case_t a = {.type = types[t],
                         .n_kv = 2,
                         .hd = 64,
                         .n_heads = 8,
                         .block_size = 16,
                         .n_seqs = 5,
                         .n_past = {0, 700, 31, 0, 1200},
                         .n_new = {37, 1, 1, 1, 20}};
        check_attention(&a);
        check_rope_kv_store(&a);
        /* head_dim not a multiple of 32, MHA, odd block size. */
        attn_case_t b = {.type = types[t],
                         .n_kv = 3,
                         .hd = 80,
                         .n_heads = 3,
                         .block_size = 7,
                         .n_seqs = 3,
                         .n_past = {5, 300, 0},
                         .n_new = {1, 2, 90}};
        check_attention(&b);
        check_rope_kv_store(&b);
    }
}

/* Prefill on tensor cores (the nondeterministic backend) against the CPU: one call with a
 * one-row sequence, short and long prefills, chunks continuing earlier ones (n_past > 0) and a
 * decode row; GQA group 4 at head_dim 64 and 128, and group 12 (query tiles end mid-row) at
 * head_dim 96 with an odd block size. BF16 and F16 caches. */
static void test_cuda_attention_mma_prefill(void **state)
{
    static const int types[] = {BT_TYPE_BF16, BT_TYPE_F16};
    static const int hds[] = {64, 128};
    for (size_t t = 0; t < 2; t++) {
        for (size_t i = 0; i < 2; i++) {
            attn_case_t a = {.type = types[t],
                             .n_kv = 2,
                             .hd = hds[i],
                             .n_heads = 8,
                             .block_size = 16,
                             .n_seqs = 6,
                             .n_past = {0, 0, 0, 100, 0, 333},
                             .n_new = {1, 17, 64, 200, 700, 1},
                             .nondet = 1};
            check_attention(&a);
        }
        attn_case_t b = {.type = types[t],
                         .n_kv = 1,
                         .hd = 96,
                         .n_heads = 12,
                         .block_size = 7,
                         .n_seqs = 3,
                         .n_past = {50, 0, 3},
                         .n_new = {90, 33, 1},
                         .nondet = 1};
        check_attention(&b);
    }
}

/* One decode row over 1000 cached positions: alone (split chunks) and inside a batch with a
 * 600-row prefill (sequential chunks, wide blocks). The outputs must agree bit for bit. */
static void test_cuda_attention_launch_shapes_agree(void **state)
{
    const int n_kv = 2, hd = 64, n_heads = 8, bs = 16;
    const size_t kvrow = n_kv * hd, qrow = n_heads * hd;
    const size_t block_bytes = 2 * (size_t)bs * kvrow * 2, pool = block_bytes * N_BLOCKS;
    bt_kv_layer_t kv = {.type = BT_TYPE_BF16,
                        .block_size = bs,
                        .n_kv_heads = n_kv,
                        .head_dim = hd,
                        .block_bytes = block_bytes};
    void *zero = calloc(1, pool);
    kv.data = to_dev(gpu, zero, pool);
    int32_t t0[63], t1[38];
    for (int i = 0; i < 63; i++)
        t0[i] = 100 + i;
    for (int i = 0; i < 38; i++)
        t1[i] = 300 + i;
    const int rows = 1000 + 601;
    float *k = rnd_vec(rows * kvrow), *v = rnd_vec(rows * kvrow), *q = rnd_vec(rows * qrow);
    float *kg = to_dev(gpu, k, rows * kvrow * 4), *vg = to_dev(gpu, v, rows * kvrow * 4);
    float *qg = to_dev(gpu, q, rows * qrow * 4), *og = bt_backend_alloc(gpu, rows * qrow * 4);
    bt_attn_seq_t fill[2] = {{.row0 = 0, .n_new = 1000, .n_past = 0, .blocks = t0},
                             {.row0 = 1000, .n_new = 600, .n_past = 0, .blocks = t1}};
    bt_kv_store(gpu, &kv, kg, vg, fill, 2);
    /* The decode row is row 1600 of q and k/v. */
    bt_attn_seq_t dec = {.row0 = 1600, .n_new = 1, .n_past = 1000, .blocks = t0};
    bt_kv_store(gpu, &kv, kg, vg, &dec, 1);
    float scale = 0.125f;
    bt_attention(gpu, og, qg, &kv, &dec, 1, n_heads, scale);
    float *alone = from_dev(gpu, og + 1600 * qrow, qrow);
    bt_attn_seq_t both[2] = {{.row0 = 1000, .n_new = 600, .n_past = 0, .blocks = t1}, dec};
    bt_attention(gpu, og, qg, &kv, both, 2, n_heads, scale);
    float *batched = from_dev(gpu, og + 1600 * qrow, qrow);
    assert_memory_equal(alone, batched, qrow * 4);
    /* And the same row inside a prefill of the whole 1001-token sequence. */
    bt_attn_seq_t pre = {.row0 = 600, .n_new = 1001, .n_past = 0, .blocks = t0}; /* ends at 1600 */
    bt_attention(gpu, og, qg, &kv, &pre, 1, n_heads, scale);
    float *prefill = from_dev(gpu, og + 1600 * qrow, qrow);
    assert_memory_equal(alone, prefill, qrow * 4);
    free(alone);
    free(batched);
    free(prefill);
    DEV_FREE(gpu, kg, vg, qg, og, kv.data);
    free(k);
    free(v);
    free(q);
    free(zero);
}

/* argmax_rows against bt_argmax_f32: a 128256-token vocabulary (Llama 3), rows with ties,
 * NaNs, infinities and a NaN first element, more rows than one launch holds. */
static void test_cuda_argmax_rows(void **state)
{
    (void)state;
    const int64_t m = MAX_ROWS + 5, n = 128256;
    float *x = rnd_vec((size_t)(m * n));
    for (int64_t r = 0; r < m; r++) {
        float *row = x + r * n;
        int64_t k = (int64_t)(rnd_u32() % (uint32_t)n);
        switch (r % 6) {
        case 1: row[k] = NAN; break;
        case 2: row[0] = NAN; break;
        case 3: row[k] = INFINITY; break;
        case 4: row[k] = row[n - 1 - k] = 1e6f; break; /* a tie: the lower index wins */
        case 5:
            for (int64_t i = 0; i < n; i++)
                row[i] = -INFINITY;
            break;
        default: break;
        }
    }
    float *xd = to_dev(gpu, x, (size_t)(m * n) * sizeof(float));
    int32_t *got = malloc((size_t)m * sizeof *got);
    assert_non_null(got);
    bt_argmax_rows(gpu, got, xd, m, n);
    for (int64_t r = 0; r < m; r++)
        assert_int_equal(got[r], bt_argmax_f32(x + r * n, n));
    bt_backend_free(gpu, xd);
    free(got);
    free(x);
}

/* topk_rows against bt_topk_f32, exactly: a 128256-token vocabulary, more rows than one launch
 * takes, rows with ties across the k-th place, NaNs, infinities, signed zeros, an all-equal row,
 * and k from 1 to BT_TOPK_MAX. */
static void test_cuda_topk_rows(void **state)
{
    (void)state;
    const int64_t m = MAX_ROWS + 3, n = 128256;
    float *x = rnd_vec((size_t)(m * n));
    for (int64_t r = 0; r < m; r++) {
        float *row = x + r * n;
        switch (r % 5) {
        case 1: /* coarse values: many ties, some at the k-th place */
            for (int64_t i = 0; i < n; i++)
                row[i] = (float)(rnd_u32() % 64);
            break;
        case 2:
            for (int j = 0; j < 50; j++) {
                static const float odd[] = {NAN, INFINITY, -INFINITY, -0.0f, 0.0f};
                row[rnd_u32() % (uint32_t)n] = odd[j % 5];
            }
            break;
        case 3:
            for (int64_t i = 0; i < n; i++)
                row[i] = 2.5f;
            break;
        default: break;
        }
    }
    float *xd = to_dev(gpu, x, (size_t)(m * n) * sizeof(float));
    const int32_t ks[] = {1, 2, 40, 100, BT_TOPK_MAX};
    int32_t *ids = malloc((size_t)m * BT_TOPK_MAX * sizeof(int32_t)), want[BT_TOPK_MAX];
    float *vals = malloc((size_t)m * BT_TOPK_MAX * sizeof(float)), wvals[BT_TOPK_MAX];
    assert_non_null(ids);
    assert_non_null(vals);
    for (size_t ki = 0; ki < sizeof ks / sizeof ks[0]; ki++) {
        int32_t k = ks[ki];
        bt_topk_rows(gpu, ids, vals, xd, m, n, k);
        for (int64_t r = 0; r < m; r++) {
            bt_topk_f32(x + r * n, n, k, want, wvals);
            assert_memory_equal(ids + r * k, want, (size_t)k * sizeof(int32_t));
            assert_memory_equal(vals + r * k, wvals, (size_t)k * sizeof(float));
        }
    }
    bt_backend_free(gpu, xd);
    free(ids);
    free(vals);
    free(x);
}

/* A normal deviate of standard deviation sd (Box-Muller on two uniforms in (0, 1]). */
static float rnd_normal(float sd)
{
    double u = ((double)rnd_u32() + 1.0) / 4294967296.0, v = (double)rnd_u32() / 4294967296.0;
    return (float)(sd * sqrt(-2.0 * log(u)) * cos(6.283185307179586 * v));
}

/* Rows of logits N(0, 3) with a few planted large values, each row given its own case below. */
static float *window_rows(int64_t m, int64_t n)
{
    float *x = malloc((size_t)(m * n) * sizeof *x);
    assert_non_null(x);
    for (int64_t i = 0; i < m * n; i++)
        x[i] = rnd_normal(3.0f);
    for (int64_t r = 0; r < m; r++)
        for (int j = 0; j < 4; j++)
            x[r * n + rnd_u32() % (uint32_t)n] = 14.0f + (float)j;
    return x;
}

/* The op's totals for rows x ([m][n]) at tau to got[m], checked against bt_window_total_f32 bit
 * for bit (0 where tau is not positive). */
static void check_window_totals(double *got, const float *x, const float *tau, int64_t m, int64_t n)
{
    float *xd = to_dev(gpu, x, (size_t)(m * n) * sizeof(float));
    bt_window_totals(gpu, got, xd, tau, m, n);
    for (int64_t r = 0; r < m; r++) {
        double want = tau[r] > 0 ? bt_window_total_f32(x + r * n, n, tau[r]) : 0.0;
        if (memcmp(&got[r], &want, sizeof want) != 0) {
            fprintf(stderr, "window total of row %ld (n %ld, tau %g): %.17g, host %.17g\n", (long)r,
                    (long)n, tau[r], got[r], want);
            fail();
        }
    }
    bt_backend_free(gpu, xd);
}

/* window_totals against bt_window_total_f32, bit for bit: Llama 2 and Llama 3 vocabularies,
 * temperatures from 0 (a total of 0) through 0.05 (most weights underflow) to 1.3, rows with
 * NaNs, -inf entries, a +inf entry, nothing but NaNs, a window of one element and one whose
 * edge (max - BT_CAND_WINDOW) is a logit; then short rows, more than one launch takes, at
 * random temperatures. */
static void test_cuda_window_totals(void **state)
{
    (void)state;
    const int64_t m = 10, n = 32000;
    float *x = window_rows(m, n);
    static const float taus[] = {1.0f, 0.7f, 1.3f, 0.05f, 0.0f, 1.0f, 0.7f, 1.3f, 1.3f, 1.0f};
    float tau[MAX_ROWS + 7];
    double got[MAX_ROWS + 7];
    for (int64_t r = 0; r < m; r++) {
        float *row = x + r * n;
        tau[r] = taus[r];
        switch (r) {
        case 1: /* the window's edge: 20 - BT_CAND_WINDOW is in it, the next float below is not */
            row[7] = 20.0f;
            row[100] = 20.0f - BT_CAND_WINDOW;
            row[101] = nextafterf(20.0f - BT_CAND_WINDOW, -INFINITY);
            break;
        case 5:
            for (int j = 0; j < 100; j++)
                row[rnd_u32() % (uint32_t)n] = NAN;
            row[0] = NAN;
            break;
        case 6:
            for (int j = 0; j < 100; j++)
                row[rnd_u32() % (uint32_t)n] = -INFINITY;
            break;
        case 7:
            for (int64_t i = 0; i < n; i++)
                row[i] = NAN;
            break;
        case 8: row[n / 2] = 100.0f; break; /* alone in its window: a total of exactly 1 */
        case 9: row[n - 1] = INFINITY; break;
        default: break;
        }
    }
    check_window_totals(got, x, tau, m, n);
    for (int64_t r = 0; r < m; r++) /* and what the cases are for */
        assert_true(r == 4 || r == 7 || r == 9 ? got[r] == 0.0 : got[r] >= 1.0);
    assert_true(got[8] == 1.0);
    free(x);

    const int64_t m3 = 1, n3 = 128256;
    x = window_rows(m3, n3);
    tau[0] = 0.7f;
    check_window_totals(got, x, tau, m3, n3);
    free(x);

    const int64_t ms = MAX_ROWS + 7, ns = BT_WINDOW_LANES + 1;
    x = window_rows(ms, ns);
    for (int64_t r = 0; r < ms; r++)
        tau[r] = r % 9 == 0   ? 0.0f
                 : r % 9 == 4 ? -1.0f
                              : 0.05f + (float)(rnd_u32() % 2000) / 1000.0f;
    check_window_totals(got, x, tau, ms, ns);
    free(x);
}

/* penalize_rows on m random rows of n logits against bt_penalize_logit on the host, bit for
 * bit over the whole rows (so the logits it must not touch too): row r names 0, 1, 17 or cap
 * (at most cap) distinct random ids at a penalty of 1.3, 0.8 or 2.0, every pair of the two
 * occurring, and its first ids have exact zeros of both signs, subnormals and logits whose
 * penalized value overflows. The ids past a row's count are -1, which the op must not read. */
static void check_penalize(int64_t m, int64_t n, int32_t cap)
{
    static const float pens[] = {1.3f, 0.8f, 2.0f};
    static const float odd[] = {0.0f, -0.0f, 1e-40f, -1e-40f, 3e38f, -3e38f, 1.0f, -1.0f};
    const int32_t counts[] = {0, 1, 17, cap};
    const size_t bytes = (size_t)(m * n) * sizeof(float);
    float *x = rnd_vec((size_t)(m * n)), *want = malloc(bytes);
    float *pen = malloc((size_t)m * sizeof *pen);
    int32_t *ids = malloc((size_t)(m * cap) * sizeof *ids);
    int32_t *n_ids = malloc((size_t)m * sizeof *n_ids), *perm = malloc((size_t)n * sizeof *perm);
    assert_true(want && pen && ids && n_ids && perm);
    for (int64_t i = 0; i < n; i++)
        perm[i] = (int32_t)i;
    for (int64_t r = 0; r < m; r++) {
        n_ids[r] = counts[r % 4] < cap ? counts[r % 4] : cap;
        pen[r] = pens[r % 3];
        for (int32_t j = 0; j < cap; j++) { /* a partial shuffle: distinct ids */
            if (j >= n_ids[r]) {
                ids[r * cap + j] = -1;
                continue;
            }
            int64_t k = j + (int64_t)(rnd_u32() % (uint32_t)(n - j));
            int32_t t = perm[j];
            perm[j] = perm[k];
            perm[k] = t;
            ids[r * cap + j] = perm[j];
            if (j < (int32_t)(sizeof odd / sizeof odd[0]))
                x[r * n + perm[j]] = odd[j];
        }
    }
    memcpy(want, x, bytes);
    for (int64_t r = 0; r < m; r++)
        for (int32_t j = 0; j < n_ids[r]; j++) {
            float *l = want + r * n + ids[r * cap + j];
            *l = bt_penalize_logit(*l, pen[r]);
        }
    assert_true(memcmp(want, x, bytes) != 0);
    float *xd = to_dev(gpu, x, bytes);
    bt_penalize_rows(gpu, xd, m, n, ids, n_ids, pen, cap);
    float *got = from_dev(gpu, xd, (size_t)(m * n));
    for (int64_t i = 0; i < m * n; i++)
        if (memcmp(&got[i], &want[i], sizeof(float)) != 0) {
            fprintf(stderr,
                    "penalize_rows (m %ld, n %ld, cap %d): row %ld logit %ld %a -> %a, host %a\n",
                    (long)m, (long)n, cap, (long)(i / n), (long)(i % n), x[i], got[i], want[i]);
            fail();
        }
    bt_backend_free(gpu, xd);
    free(got);
    free(perm);
    free(n_ids);
    free(ids);
    free(pen);
    free(want);
    free(x);
}

/* The Llama 2 vocabulary; short rows, more than one piece of staged tables takes (argmax_cap is
 * MAX_ROWS); a cap below BT_PENALTY_MAX, so rows of ids are cap apart. */
static void test_cuda_penalize_rows(void **state)
{
    (void)state;
    check_penalize(5, 32000, BT_PENALTY_MAX);
    check_penalize(MAX_ROWS + 6, 300, BT_PENALTY_MAX);
    check_penalize(40, 300, 17);
}

int main(void)
{
    bt_backend_params_t p = {.max_rows = MAX_ROWS, .max_cols = MAX_COLS};
    if (bt_backend_create("cuda", &p, &gpu) != BT_OK) {
        printf("no CUDA device (or the backend is not built): skipped\n");
        return 77;
    }
    bt_backend_params_t pn = p;
    pn.allow_nondeterministic = 1;
    if (bt_backend_create("cuda", &pn, &gpu_nd) != BT_OK ||
        bt_backend_create("cpu", &p, &cpu) != BT_OK)
        return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cuda_matmul_types_and_shapes),
        cmocka_unit_test(test_cuda_argmax_rows),
        cmocka_unit_test(test_cuda_topk_rows),
        cmocka_unit_test(test_cuda_window_totals),
        cmocka_unit_test(test_cuda_penalize_rows),
        cmocka_unit_test(test_cuda_matmul_batch_invariant),
        cmocka_unit_test(test_cuda_fused_matmuls_match_composed),
        cmocka_unit_test(test_cuda_fused_matmuls_other_paths),
        cmocka_unit_test(test_cuda_fused_matmuls_cublas),
        cmocka_unit_test(test_cuda_rms_matmuls_match_composed),
        cmocka_unit_test(test_cuda_rms_matmuls_other_paths),
        cmocka_unit_test(test_cuda_rms_matmuls_cublas),
        cmocka_unit_test(test_cuda_rms_ffn),
        cmocka_unit_test(test_cuda_get_rows_all_types),
        cmocka_unit_test(test_cuda_rmsnorm_rope_swiglu_add),
        cmocka_unit_test(test_cuda_attention_against_cpu),
        cmocka_unit_test(test_cuda_attention_launch_shapes_agree),
        cmocka_unit_test(test_cuda_attention_mma_prefill),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    bt_backend_destroy(gpu_nd);
    bt_backend_destroy(gpu);
    bt_backend_destroy(cpu);
    return rc;
}
