/* SPDX-License-Identifier: MIT */
/*
 * test_cpu_matmul.c - the CPU backend's matmul against scalar double-precision references, for
 * every weight type and awkward shapes, plus the determinism contract: each batch row is
 * bit-identical to the same row computed alone, and 1, 2 and 3 threads agree bit for bit.
 *
 * Tolerances: F32/F16/BF16 are f32 dot products of exactly dequantized weights, so they are
 * checked to 1e-5 of sum |x * w|. Q8_0 quantizes the activations; against a reference that
 * quantizes them the same way (exact integer block dots, scaled in double) it is checked to
 * 1e-5 of sum_b |dx * dw| * sum |qx * qw|; against the float reference the error is bounded by
 * the activation rounding, sum over blocks of (amax_b / 254) * sum_b |w|, plus that slack.
 */
// ctest-labels: unit
#include "../support/testutil.h" /* relative: works whatever the include path */

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/fp16.h"
#include "kernels/kernels.h"

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint32_t rnd_u32(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 16);
}

static float rnd_f(void) /* uniform in [-1, 1) */
{
    return (float)(rnd_u32() % 2000001) / 1000000.0f - 1.0f;
}

static bt_backend_t *make_backend(int n_threads, int64_t max_rows, int64_t max_cols)
{
    bt_backend_params_t p = {.n_threads = n_threads, .max_rows = max_rows, .max_cols = max_cols};
    bt_backend_t *be = NULL;
    assert_int_equal(bt_backend_create("cpu", &p, &be), BT_OK);
    return be;
}

/* A weight matrix of the given type made from random floats; deq gets the exact values the
 * kernel sees (rows x cols). */
typedef struct {
    bt_tensor_t t;
    void *data;
    float *deq;
} weight_t;

static void quantize_block_q8(const float *x, bt_block_q8_0_t *b)
{
    float amax = 0.0f;
    for (int l = 0; l < BT_QK8_0; l++)
        amax = fabsf(x[l]) > amax ? fabsf(x[l]) : amax;
    float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
    b->d = bt_f32_to_fp16(d);
    for (int l = 0; l < BT_QK8_0; l++)
        b->qs[l] = (int8_t)nearbyintf(x[l] * id);
}

static weight_t make_weight(bt_type_t type, int64_t rows, int64_t cols)
{
    weight_t w = {.t = {.type = type, .rows = rows, .cols = cols}};
    size_t rb = bt_type_row_bytes(type, cols);
    w.data = malloc(rb * (size_t)rows + 64);
    w.deq = malloc(sizeof(float) * (size_t)(rows * cols) + 4);
    float src[64];
    for (int64_t r = 0; r < rows; r++) {
        uint8_t *row = (uint8_t *)w.data + (size_t)r * rb;
        for (int64_t c0 = 0; c0 < cols; c0 += 32) {
            int n = cols - c0 < 32 ? (int)(cols - c0) : 32;
            for (int l = 0; l < n; l++)
                src[l] = rnd_f();
            float *dq = w.deq + r * cols + c0;
            if (type == BT_TYPE_Q8_0) {
                bt_block_q8_0_t *b = (bt_block_q8_0_t *)row + c0 / 32;
                quantize_block_q8(src, b);
                for (int l = 0; l < 32; l++)
                    dq[l] = bt_fp16_to_f32(b->d) * (float)b->qs[l];
                continue;
            }
            for (int l = 0; l < n; l++) {
                if (type == BT_TYPE_F32) {
                    ((float *)row)[c0 + l] = dq[l] = src[l];
                } else if (type == BT_TYPE_F16) {
                    ((uint16_t *)row)[c0 + l] = bt_f32_to_fp16(src[l]);
                    dq[l] = bt_fp16_to_f32(((uint16_t *)row)[c0 + l]);
                } else {
                    ((uint16_t *)row)[c0 + l] = bt_f32_to_bf16(src[l]);
                    dq[l] = bt_bf16_to_f32(((uint16_t *)row)[c0 + l]);
                }
            }
        }
    }
    w.t.data = w.data;
    return w;
}

static void free_weight(weight_t *w)
{
    free(w->data);
    free(w->deq);
}

static float *rand_vec(int64_t n)
{
    float *v = malloc(sizeof(float) * (size_t)(n > 0 ? n : 1));
    for (int64_t i = 0; i < n; i++)
        v[i] = rnd_f() * 2.0f;
    return v;
}

/* Float reference: checks y against x . deq^T to tol * sum |x w| (+ extra_bound(i, j)). */
static void check_float_ref(const float *y, const float *x, const weight_t *w, int64_t m,
                            double tol)
{
    const int64_t n = w->t.rows, k = w->t.cols;
    for (int64_t i = 0; i < m; i++) {
        for (int64_t j = 0; j < n; j++) {
            double ref = 0, mag = 0;
            for (int64_t c = 0; c < k; c++) {
                double p = (double)x[i * k + c] * w->deq[j * k + c];
                ref += p;
                mag += fabs(p);
            }
            double err = fabs(y[i * n + j] - ref);
            if (err > tol * mag + 1e-30)
                fail_msg("%s m=%lld n=%lld k=%lld y[%lld][%lld]=%.9g ref=%.9g mag=%g",
                         bt_type_name(w->t.type), (long long)m, (long long)n, (long long)k,
                         (long long)i, (long long)j, y[i * n + j], ref, mag);
        }
    }
}

static void run_float_case(bt_backend_t *be, bt_type_t type, int64_t m, int64_t n, int64_t k)
{
    weight_t w = make_weight(type, n, k);
    float *x = rand_vec(m * k), *y = malloc(sizeof(float) * (size_t)(m * n));
    bt_matmul(be, y, &w.t, x, m);
    check_float_ref(y, x, &w, m, 1e-5);
    free(x);
    free(y);
    free_weight(&w);
}

static void test_matmul_float_types_match_reference(void **state)
{
    static const int64_t ks[] = {8, 13, 32, 40, 64, 100, 256, 768, 1024, 4096};
    static const int64_t ns[] = {1, 3, 4, 5, 17, 64, 67};
    static const bt_type_t types[] = {BT_TYPE_F32, BT_TYPE_F16, BT_TYPE_BF16};
    bt_backend_t *be = make_backend(2, 64, 4096);
    for (int t = 0; t < 3; t++)
        for (size_t a = 0; a < sizeof ks / sizeof ks[0]; a++)
            for (size_t b = 0; b < sizeof ns / sizeof ns[0]; b += 2) {
                int64_t m = 1 + (int64_t)(rnd_u32() % 37);
                run_float_case(be, types[t], m, ns[(b + a) % 7], ks[a]);
            }
    bt_backend_destroy(be);
}

/* Big enough that tokens are walked in several cache blocks (k = 4096: 16 per block). */
static void test_matmul_blocked_prefill_matches_reference(void **state)
{
    bt_backend_t *be = make_backend(2, 64, 4096);
    run_float_case(be, BT_TYPE_F16, 37, 70, 4096);
    run_float_case(be, BT_TYPE_F32, 40, 33, 2048);
    bt_backend_destroy(be);
}

/* Q8_0: x quantized per 32-block like the kernel (round half to even, d = amax / 127). */
static void check_q8_refs(const float *y, const float *x, const weight_t *w, int64_t m)
{
    const int64_t n = w->t.rows, k = w->t.cols, nb = k / 32;
    int8_t qx[32];
    for (int64_t i = 0; i < m; i++) {
        for (int64_t j = 0; j < n; j++) {
            const bt_block_q8_0_t *wb = (const bt_block_q8_0_t *)w->t.data + j * nb;
            double ref_q = 0, mag_q = 0, bound = 0;
            for (int64_t b = 0; b < nb; b++) {
                const float *xb = x + i * k + b * 32;
                float amax = 0;
                for (int l = 0; l < 32; l++)
                    amax = fabsf(xb[l]) > amax ? fabsf(xb[l]) : amax;
                float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
                int32_t s = 0, sa = 0;
                double wabs = 0;
                for (int l = 0; l < 32; l++) {
                    qx[l] = (int8_t)nearbyintf(xb[l] * id);
                    s += qx[l] * wb[b].qs[l];
                    sa += abs(qx[l] * wb[b].qs[l]);
                    wabs += fabs(w->deq[j * k + b * 32 + l]);
                }
                double dd = (double)d * bt_fp16_to_f32(wb[b].d);
                ref_q += dd * s;
                mag_q += fabs(dd) * sa;
                bound += amax / 254.0 * wabs;
            }
            double got = y[i * n + j];
            if (fabs(got - ref_q) > 1e-5 * mag_q + 1e-30)
                fail_msg("q8 vs quantized ref k=%lld [%lld][%lld]: %.9g vs %.9g", (long long)k,
                         (long long)i, (long long)j, got, ref_q);
            double ref_f = 0;
            for (int64_t c = 0; c < k; c++)
                ref_f += (double)x[i * k + c] * w->deq[j * k + c];
            if (fabs(got - ref_f) > bound * (1 + 1e-4) + 1e-5 * mag_q + 1e-30)
                fail_msg("q8 vs float ref k=%lld [%lld][%lld]: %.9g vs %.9g bound %g", (long long)k,
                         (long long)i, (long long)j, got, ref_f, bound);
        }
    }
}

static void run_q8_case(bt_backend_t *be, int64_t m, int64_t n, int64_t k)
{
    weight_t w = make_weight(BT_TYPE_Q8_0, n, k);
    float *x = rand_vec(m * k), *y = malloc(sizeof(float) * (size_t)(m * n));
    if (k >= 64)
        memset(x + k / 2, 0, 32 * sizeof(float)); /* an all-zero block: d = 0 */
    bt_matmul(be, y, &w.t, x, m);
    check_q8_refs(y, x, &w, m);
    free(x);
    free(y);
    free_weight(&w);
}

static void test_matmul_q8_matches_references(void **state)
{
    static const int64_t ks[] = {32, 64, 96, 256, 768, 2048, 4096};
    static const int64_t ns[] = {1, 2, 3, 4, 7, 33, 66};
    bt_backend_t *be = make_backend(2, 64, 4096);
    for (size_t a = 0; a < sizeof ks / sizeof ks[0]; a++)
        for (size_t b = 0; b < sizeof ns / sizeof ns[0]; b += 3)
            run_q8_case(be, 1 + (int64_t)(rnd_u32() % 37), ns[(a + b) % 7], ks[a]);
    bt_backend_destroy(be);
}

/* More rows or columns than the scratch promised: passes over rows, and a grown scratch. */
static void test_matmul_q8_beyond_declared_scratch(void **state)
{
    bt_backend_t *be = make_backend(2, 4, 64);
    run_q8_case(be, 37, 9, 128);
    run_q8_case(be, 5, 9, 512);
    bt_backend_destroy(be);
}

/* Each row of an m-row batch equals the same row computed alone, bit for bit, and the
 * results do not depend on the thread count. */
static void check_invariance(bt_type_t type, int64_t n, int64_t k)
{
    bt_backend_t *be[3] = {make_backend(1, 19, k), make_backend(2, 19, k), make_backend(3, 19, k)};
    weight_t w = make_weight(type, n, k);
    float *x = rand_vec(19 * k);
    float *alone = malloc(sizeof(float) * (size_t)(19 * n));
    float *y = malloc(sizeof(float) * (size_t)(19 * n));
    for (int64_t i = 0; i < 19; i++)
        bt_matmul(be[0], alone + i * n, &w.t, x + i * k, 1);
    for (int t = 0; t < 3; t++) {
        for (int64_t m = 1; m <= 19; m++) {
            /* the batch starts at a varying row so every row is seen at several positions */
            int64_t off = (m * 7) % (20 - m);
            bt_matmul(be[t], y, &w.t, x + off * k, m);
            if (memcmp(y, alone + off * n, sizeof(float) * (size_t)(m * n)) != 0)
                fail_msg("%s n=%lld k=%lld: batch m=%lld (offset %lld, %d threads) differs "
                         "from rows computed alone",
                         bt_type_name(type), (long long)n, (long long)k, (long long)m,
                         (long long)off, t + 1);
        }
    }
    free(x);
    free(y);
    free(alone);
    free_weight(&w);
    for (int t = 0; t < 3; t++)
        bt_backend_destroy(be[t]);
}

static void test_matmul_batch_and_thread_invariant(void **state)
{
    static const bt_type_t types[] = {BT_TYPE_F32, BT_TYPE_F16, BT_TYPE_BF16, BT_TYPE_Q8_0};
    for (int t = 0; t < 4; t++) {
        check_invariance(types[t], 37, 256);
        check_invariance(types[t], 9, 4096);
    }
    check_invariance(BT_TYPE_F16, 6, 40);
}

/* The fused forms (bt_matmul_multi, bt_matmul_add, bt_matmul_swiglu, and the pre-norm
 * bt_rms_matmul_multi and bt_rms_matmul_swiglu) give the bits of their composition from the
 * plain ops, with weights of different row counts, one pass or several
 * over the quantization scratch, one thread or two; weights of different types compose. */
static void check_fused(bt_type_t type, bt_type_t type_v, int64_t m, int threads)
{
    const int64_t k = 96, rows[3] = {40, 9, 9};
    bt_backend_t *be = make_backend(threads, 4, k);
    weight_t w[3] = {make_weight(type, rows[0], k), make_weight(type, rows[1], k),
                     make_weight(type_v, rows[2], k)};
    float *x = rand_vec(m * k), *res = rand_vec(m * rows[0]);
    float *y[3], *ref[3], *tmp = malloc(sizeof(float) * (size_t)(m * rows[0]));
    for (int t = 0; t < 3; t++) {
        y[t] = malloc(sizeof(float) * (size_t)(m * rows[t]));
        ref[t] = malloc(sizeof(float) * (size_t)(m * rows[t]));
        bt_matmul(be, ref[t], &w[t].t, x, m);
    }
    const bt_tensor_t *wt[3] = {&w[0].t, &w[1].t, &w[2].t};
    bt_matmul_multi(be, 3, y, wt, x, m);
    for (int t = 0; t < 3; t++)
        assert_memory_equal(y[t], ref[t], sizeof(float) * (size_t)(m * rows[t]));

    /* y = res + x . w0^T against matmul then add */
    memcpy(y[0], res, sizeof(float) * (size_t)(m * rows[0]));
    bt_matmul_add(be, y[0], &w[0].t, x, m, tmp);
    bt_add(be, res, ref[0], m * rows[0]);
    assert_memory_equal(y[0], res, sizeof(float) * (size_t)(m * rows[0]));

    /* silu(x . w1^T) * (x . w2^T) against two matmuls and swiglu (w1, w2: same rows) */
    bt_matmul_swiglu(be, y[1], &w[1].t, &w[2].t, x, m, tmp);
    bt_swiglu(be, ref[1], ref[1], ref[2], m * rows[1]);
    assert_memory_equal(y[1], ref[1], sizeof(float) * (size_t)(m * rows[1]));

    /* the pre-norm forms against rmsnorm, then the same fused op */
    float *norm = rand_vec(k), *xn = malloc(sizeof(float) * (size_t)(m * k));
    float *xn_ref = malloc(sizeof(float) * (size_t)(m * k));
    bt_rmsnorm(be, xn_ref, x, norm, m, k, 1e-5f);
    bt_matmul_multi(be, 3, ref, wt, xn_ref, m);
    bt_rms_matmul_multi(be, 3, y, wt, x, norm, 1e-5f, m, xn);
    for (int t = 0; t < 3; t++)
        assert_memory_equal(y[t], ref[t], sizeof(float) * (size_t)(m * rows[t]));
    bt_matmul_swiglu(be, ref[1], &w[1].t, &w[2].t, xn_ref, m, tmp);
    bt_rms_matmul_swiglu(be, y[1], &w[1].t, &w[2].t, x, norm, 1e-5f, m, xn, tmp);
    assert_memory_equal(y[1], ref[1], sizeof(float) * (size_t)(m * rows[1]));
    free(norm);
    free(xn);
    free(xn_ref);

    for (int t = 0; t < 3; t++) {
        free(y[t]);
        free(ref[t]);
        free_weight(&w[t]);
    }
    free(tmp);
    free(x);
    free(res);
    bt_backend_destroy(be);
}

static void test_matmul_fused_forms_equal_composition(void **state)
{
    static const bt_type_t types[] = {BT_TYPE_F32, BT_TYPE_F16, BT_TYPE_BF16, BT_TYPE_Q8_0};
    for (int t = 0; t < 4; t++)
        for (int64_t m = 1; m <= 11; m += 5) {
            check_fused(types[t], types[t], m, 1);
            check_fused(types[t], types[t], m, 2);
        }
    check_fused(BT_TYPE_Q8_0, BT_TYPE_F16, 3, 2);
    check_fused(BT_TYPE_BF16, BT_TYPE_F32, 2, 2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_matmul_float_types_match_reference),
        cmocka_unit_test(test_matmul_blocked_prefill_matches_reference),
        cmocka_unit_test(test_matmul_q8_matches_references),
        cmocka_unit_test(test_matmul_q8_beyond_declared_scratch),
        cmocka_unit_test(test_matmul_batch_and_thread_invariant),
        cmocka_unit_test(test_matmul_fused_forms_equal_composition),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
