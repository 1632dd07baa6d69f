/* SPDX-License-Identifier: MIT */
/*
 * test_cpu_ops.c - the CPU backend's row-wise and element-wise ops (get_rows, rmsnorm, rope,
 * swiglu, add, gather_rows) against scalar double-precision references, plus their
 * determinism: a row gives the same bits alone or in a batch, aliased or not, on 1 or 2
 * threads. Attention and kv_store are in test_cpu_attention.c.
 */
// ctest-labels: unit
#include "../support/testutil.h" /* relative: works whatever the include path */

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/fp16.h"
#include "kernels/kernels.h"
#include "kernels/window.h"

static uint64_t rng_state = 0x243f6a8885a308d3ull;

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

static float *rand_vec(int64_t n, float scale)
{
    float *v = malloc(sizeof(float) * (size_t)(n > 0 ? n : 1));
    for (int64_t i = 0; i < n; i++)
        v[i] = rnd_f() * scale;
    return v;
}

static bt_backend_t *make_backend(int n_threads)
{
    bt_backend_params_t p = {.n_threads = n_threads, .max_rows = 64, .max_cols = 4096};
    bt_backend_t *be = NULL;
    assert_int_equal(bt_backend_create("cpu", &p, &be), BT_OK);
    return be;
}

static void assert_close(double got, double ref, double tol, const char *what, int64_t i)
{
    if (fabs(got - ref) > tol)
        fail_msg("%s[%lld]: got %.9g, want %.9g (tol %g)", what, (long long)i, got, ref, tol);
}

static void test_backend_create_rejects_bad_params(void **state)
{
    bt_backend_params_t p = {.max_rows = -1};
    bt_backend_t *be = NULL;
    assert_int_equal(bt_backend_create("cpu", &p, &be), BT_ERR_INVAL);
    assert_null(be);
    assert_int_equal(bt_backend_create("cpu", NULL, &be), BT_OK); /* defaults: all cores */
    assert_string_equal(bt_backend_name(be), "cpu");
    float *buf = bt_backend_alloc(be, 100);
    assert_non_null(buf);
    assert_int_equal((uintptr_t)buf % 64, 0);
    float src[25] = {1, 2, 3}, dst[25];
    bt_backend_upload(be, buf, src, sizeof src);
    bt_backend_download(be, dst, buf, sizeof dst);
    assert_memory_equal(src, dst, sizeof src);
    bt_backend_sync(be);
    bt_backend_free(be, buf);
    bt_backend_free(be, NULL);
    bt_backend_destroy(be);
    bt_backend_destroy(NULL);
}

/* Scratch that cannot be had is reported, and the half-built backend is torn down (ASan checks
 * for leaks). Skipped under ASan, whose allocator aborts on such sizes instead of failing. */
static void test_backend_create_reports_nomem(void **state)
{
#if defined(__SANITIZE_ADDRESS__)
    skip();
#else
    bt_backend_params_t p = {
        .n_threads = 2, .max_rows = (int64_t)1 << 30, .max_cols = (int64_t)1 << 20};
    bt_backend_t *be = NULL;
    assert_int_equal(bt_backend_create("cpu", &p, &be), BT_ERR_NOMEM);
    assert_null(be);
#endif
}

/* ---- get_rows ---- */

static void test_get_rows_dequantizes_every_type(void **state)
{
    static const bt_type_t types[] = {BT_TYPE_F32, BT_TYPE_F16, BT_TYPE_BF16, BT_TYPE_Q8_0};
    const int64_t rows = 9, cols = 96, m = 40;
    bt_backend_t *be = make_backend(2);
    int32_t ids[40];
    for (int i = 0; i < m; i++)
        ids[i] = (int32_t)(rnd_u32() % rows);
    for (int t = 0; t < 4; t++) {
        size_t rb = bt_type_row_bytes(types[t], cols);
        uint8_t *data = malloc(rb * rows);
        for (size_t i = 0; i < rb * rows; i++)
            data[i] = (uint8_t)rnd_u32();
        if (types[t] != BT_TYPE_Q8_0 && types[t] != BT_TYPE_F32)
            for (size_t i = 1; i < rb * rows; i += 2)
                data[i] &= 0x3f; /* finite halves / bf16 values */
        if (types[t] == BT_TYPE_F32)
            for (int64_t i = 0; i < rows * cols; i++)
                ((float *)data)[i] = rnd_f();
        if (types[t] == BT_TYPE_Q8_0)
            for (int64_t b = 0; b < rows * cols / 32; b++)
                ((bt_block_q8_0_t *)data)[b].d = bt_f32_to_fp16(rnd_f());
        bt_tensor_t tab = {.type = types[t], .rows = rows, .cols = cols, .data = data};
        float *y = malloc(sizeof(float) * (size_t)(m * cols));
        bt_get_rows(be, y, &tab, ids, m);
        for (int64_t i = 0; i < m; i++) {
            const uint8_t *row = data + (size_t)ids[i] * rb;
            for (int64_t c = 0; c < cols; c++) {
                float want;
                if (types[t] == BT_TYPE_F32)
                    want = ((const float *)row)[c];
                else if (types[t] == BT_TYPE_F16)
                    want = bt_fp16_to_f32(((const uint16_t *)row)[c]);
                else if (types[t] == BT_TYPE_BF16)
                    want = bt_bf16_to_f32(((const uint16_t *)row)[c]);
                else {
                    const bt_block_q8_0_t *b = (const bt_block_q8_0_t *)row + c / 32;
                    want = bt_fp16_to_f32(b->d) * (float)b->qs[c % 32];
                }
                if (memcmp(&want, &y[i * cols + c], sizeof want) != 0)
                    fail_msg("%s row %lld col %lld: %g vs %g", bt_type_name(types[t]), (long long)i,
                             (long long)c, y[i * cols + c], want);
            }
        }
        free(y);
        free(data);
    }
    bt_backend_destroy(be);
}

/* ---- rmsnorm ---- */

static void check_rmsnorm(bt_backend_t *be, bt_backend_t *be1, int64_t m, int64_t n)
{
    float *x = rand_vec(m * n, 3.0f), *w = rand_vec(n, 1.0f);
    float *y = malloc(sizeof(float) * (size_t)(m * n));
    float *alone = malloc(sizeof(float) * (size_t)n);
    const float eps = 1e-5f;
    bt_rmsnorm(be, y, x, w, m, n, eps);
    for (int64_t i = 0; i < m; i++) {
        double ss = 0;
        for (int64_t c = 0; c < n; c++)
            ss += (double)x[i * n + c] * x[i * n + c];
        double sc = 1.0 / sqrt(ss / (double)n + eps);
        for (int64_t c = 0; c < n; c++)
            assert_close(y[i * n + c], x[i * n + c] * sc * w[c],
                         2e-6 * fabs(x[i * n + c] * sc * w[c]) + 1e-7, "rmsnorm", c);
        bt_rmsnorm(be1, alone, x + i * n, w, 1, n, eps);
        assert_memory_equal(alone, y + i * n, sizeof(float) * (size_t)n);
    }
    bt_rmsnorm(be, x, x, w, m, n, eps); /* in place */
    assert_memory_equal(x, y, sizeof(float) * (size_t)(m * n));
    free(x);
    free(w);
    free(y);
    free(alone);
}

static void test_rmsnorm_matches_reference_and_is_row_invariant(void **state)
{
    bt_backend_t *be = make_backend(2), *be1 = make_backend(1);
    static const int64_t ns[] = {1, 7, 16, 64, 100, 768, 2048, 4100};
    for (size_t i = 0; i < sizeof ns / sizeof ns[0]; i++)
        check_rmsnorm(be, be1, 1 + (int64_t)(rnd_u32() % 37), ns[i]);
    check_rmsnorm(be, be1, 37, 2048); /* big enough to go parallel */
    bt_backend_destroy(be);
    bt_backend_destroy(be1);
}

/* ---- rope ---- */

static void check_rope(bt_backend_t *be, int64_t m, int n_heads, int head_dim)
{
    const int64_t n = (int64_t)n_heads * head_dim;
    float *x = rand_vec(m * n, 2.0f), *orig = malloc(sizeof(float) * (size_t)(m * n));
    float inv_freq[256];
    int32_t *pos = malloc(sizeof(int32_t) * (size_t)m);
    for (int i = 0; i < head_dim / 2; i++)
        inv_freq[i] = powf(10000.0f, -2.0f * (float)i / (float)head_dim);
    for (int64_t r = 0; r < m; r++)
        pos[r] = (int32_t)(rnd_u32() % 4096);
    memcpy(orig, x, sizeof(float) * (size_t)(m * n));
    bt_rope(be, x, pos, m, n_heads, head_dim, inv_freq);
    for (int64_t r = 0; r < m; r++)
        for (int h = 0; h < n_heads; h++)
            for (int i = 0; i < head_dim / 2; i++) {
                const float *o = orig + r * n + (int64_t)h * head_dim + 2 * i;
                const float *g = x + r * n + (int64_t)h * head_dim + 2 * i;
                double th = (double)((float)pos[r] * inv_freq[i]); /* angle as the op forms it */
                assert_close(g[0], o[0] * cos(th) - o[1] * sin(th), 2e-6, "rope0", i);
                assert_close(g[1], o[0] * sin(th) + o[1] * cos(th), 2e-6, "rope1", i);
            }
    free(x);
    free(orig);
    free(pos);
}

static void test_rope_rotates_adjacent_pairs(void **state)
{
    bt_backend_t *be = make_backend(2);
    check_rope(be, 1, 1, 2);
    check_rope(be, 5, 3, 8);
    check_rope(be, 37, 12, 64);
    check_rope(be, 17, 8, 128);
    bt_backend_destroy(be);
}

/* ---- swiglu, add, gather_rows ---- */

static void check_swiglu(bt_backend_t *be, bt_backend_t *be1, int64_t n)
{
    float *g = rand_vec(n, 12.0f), *u = rand_vec(n, 2.0f), *y = malloc(sizeof(float) * (size_t)n);
    bt_swiglu(be, y, g, u, n);
    for (int64_t i = 0; i < n; i++) {
        double ref = g[i] / (1.0 + exp(-(double)g[i])) * u[i];
        assert_close(y[i], ref, 4e-7 * fabs(ref) + 1e-30, "swiglu", i);
    }
    if (n > 5) { /* an element's bits do not depend on where the range starts or ends */
        float *y2 = malloc(sizeof(float) * (size_t)n);
        bt_swiglu(be1, y2, g + 3, u + 3, n - 5);
        assert_memory_equal(y2, y + 3, sizeof(float) * (size_t)(n - 5));
        free(y2);
    }
    bt_swiglu(be, g, g, u, n); /* y aliases gate */
    assert_memory_equal(g, y, sizeof(float) * (size_t)n);
    free(g);
    free(u);
    free(y);
}

static void test_swiglu_matches_reference(void **state)
{
    bt_backend_t *be = make_backend(2), *be1 = make_backend(1);
    static const int64_t ns[] = {1, 3, 15, 16, 17, 100, 8192, 70001};
    for (size_t i = 0; i < sizeof ns / sizeof ns[0]; i++)
        check_swiglu(be, be1, ns[i]);
    /* saturated inputs stay finite and exact at the ends */
    float g[4] = {-200.0f, 200.0f, 0.0f, -90.0f}, u[4] = {1, 1, 1, 1}, y[4];
    bt_swiglu(be, y, g, u, 4);
    assert_true(y[0] == 0.0f || fabsf(y[0]) < 1e-30f);
    assert_true(y[1] == 200.0f);
    assert_true(y[2] == 0.0f);
    bt_backend_destroy(be);
    bt_backend_destroy(be1);
}

static void test_add_and_gather_rows(void **state)
{
    bt_backend_t *be = make_backend(2);
    const int64_t n = 70003;
    float *y = rand_vec(n, 1.0f), *x = rand_vec(n, 1.0f), *want = malloc(sizeof(float) * n);
    for (int64_t i = 0; i < n; i++)
        want[i] = y[i] + x[i];
    bt_add(be, y, x, n);
    assert_memory_equal(y, want, sizeof(float) * (size_t)n);

    const int64_t cols = 70;
    int32_t rows[5] = {3, 0, 3, 9, 1};
    float *g = malloc(sizeof(float) * 5 * cols);
    bt_gather_rows(be, g, x, rows, 5, cols);
    for (int r = 0; r < 5; r++)
        assert_memory_equal(g + r * cols, x + rows[r] * cols, sizeof(float) * cols);
    free(y);
    free(x);
    free(want);
    free(g);
    bt_backend_destroy(be);
}

static const float *topk_ref_x;

static int topk_ref_cmp(const void *a, const void *b)
{
    int32_t i = *(const int32_t *)a, j = *(const int32_t *)b;
    uint32_t ki = bt_topk_key(topk_ref_x[i]), kj = bt_topk_key(topk_ref_x[j]);
    if (ki != kj)
        return ki > kj ? -1 : 1;
    return i < j ? -1 : i > j;
}

/* The k best of x by the definition: every index sorted (value descending, -0 equal to +0, NaN
 * last, ties by index), the first k. */
static void topk_ref(const float *x, int64_t n, int32_t k, int32_t *ids)
{
    int32_t *all = malloc(sizeof(int32_t) * (size_t)n);
    for (int64_t i = 0; i < n; i++)
        all[i] = (int32_t)i;
    topk_ref_x = x;
    qsort(all, (size_t)n, sizeof(int32_t), topk_ref_cmp);
    memcpy(ids, all, sizeof(int32_t) * (size_t)k);
    free(all);
}

/* Rows of random values with ties, infinities, NaNs, signed zeros, rising and falling runs and
 * all-equal rows, for k from 1 to BT_TOPK_MAX and k == n; through the backend as well. */
static void test_topk_matches_definition(void **state)
{
    const int64_t n = 3001;
    float *x = malloc(sizeof(float) * (size_t)n);
    int32_t ids[BT_TOPK_MAX], want[BT_TOPK_MAX];
    float vals[BT_TOPK_MAX];
    const int32_t ks[] = {1, 2, 7, 40, 255, BT_TOPK_MAX};
    for (int kind = 0; kind < 6; kind++) {
        for (int64_t i = 0; i < n; i++) {
            switch (kind) {
            case 0: x[i] = (float)(rnd_u32() % 50) - 25.0f; break; /* many ties */
            case 1: x[i] = rnd_f(); break;
            case 2: x[i] = (float)i; break;  /* every element enters */
            case 3: x[i] = (float)-i; break; /* none after the first k */
            case 4: x[i] = 1.0f; break;
            default: {
                static const float odd[] = {NAN, INFINITY, -INFINITY, -0.0f, 0.0f, 3.0f, -3.0f};
                x[i] = odd[rnd_u32() % 7];
            }
            }
        }
        for (size_t ki = 0; ki < sizeof ks / sizeof ks[0]; ki++) {
            int32_t k = ks[ki];
            bt_topk_f32(x, n, k, ids, vals);
            topk_ref(x, n, k, want);
            assert_memory_equal(ids, want, sizeof(int32_t) * (size_t)k);
            for (int32_t j = 0; j < k; j++)
                assert_memory_equal(&vals[j], &x[ids[j]], sizeof(float));
        }
    }
    /* k == n: the whole row, sorted. */
    for (int64_t i = 0; i < 40; i++)
        x[i] = (float)(rnd_u32() % 5);
    bt_topk_f32(x, 40, 40, ids, vals);
    topk_ref(x, 40, 40, want);
    assert_memory_equal(ids, want, sizeof(int32_t) * 40);

    /* Rows through a backend: the same as each row alone. */
    bt_backend_t *be = make_backend(2);
    const int64_t cols = 1000;
    float *rows = rand_vec(3 * cols, 5.0f), rvals[3 * 50];
    int32_t rids[3 * 50];
    bt_topk_rows(be, rids, rvals, rows, 3, cols, 50);
    for (int r = 0; r < 3; r++) {
        topk_ref(rows + r * cols, cols, 50, want);
        assert_memory_equal(rids + r * 50, want, sizeof(int32_t) * 50);
    }
    bt_backend_destroy(be);
    free(rows);
    free(x);
}

/* bt_exp_det against libm's exp (in double) over the range the window uses, and exactly at
 * the ends: 1 at 0, 0 below -87, NaN for NaN. */
static void test_exp_det_is_accurate(void **state)
{
    (void)state;
    double worst = 0;
    for (int i = 0; i <= 1000000; i++) {
        float x = -87.0f * (float)i / 1000000.0f;
        double want = exp((double)x), got = bt_exp_det(x);
        double rel = fabs(got - want) / want;
        worst = rel > worst ? rel : worst;
    }
    assert_true(worst < 3e-7); /* a few float ulps */
    assert_true(bt_exp_det(0.0f) == 1.0f && bt_exp_det(-0.0f) == 1.0f);
    assert_true(bt_exp_det(-87.5f) == 0.0f && bt_exp_det(-INFINITY) == 0.0f);
    assert_true(isnan(bt_exp_det(NAN)));
}

/* The window total: the weights of the numbers within BT_CAND_WINDOW of the largest, summed
 * (to rounding) as a plain double sum would; NaNs and what lies below the window count 0; a row
 * without a finite largest number totals 0. Through a backend, the same bits per row, and 0
 * for rows that do not ask. */
static void test_window_total_matches_definition(void **state)
{
    (void)state;
    enum { N = 30011 };
    float *x = malloc(N * sizeof(float));
    const float taus[] = {1.0f, 0.7f, 2.5f, 0.05f};
    for (int rep = 0; rep < 4; rep++) {
        for (int i = 0; i < N; i++)
            x[i] = 3.0f * rnd_f();
        x[rnd_u32() % N] = 30.0f; /* a favourite: the window reaches down to -10 */
        x[rnd_u32() % N] = NAN;
        x[rnd_u32() % N] = -INFINITY;
        float tau = taus[rep];
        double want = 0;
        for (int i = 0; i < N; i++)
            if (x[i] >= 30.0f - BT_CAND_WINDOW)
                want += exp(((double)x[i] - 30.0) / tau);
        double got = bt_window_total_f32(x, N, tau);
        assert_true(fabs(got - want) <= 1e-6 * want);
    }
    float none[3] = {NAN, NAN, NAN}, inf[2] = {INFINITY, 1.0f}, one[2] = {50.0f, 1.0f};
    assert_true(bt_window_total_f32(none, 3, 1.0f) == 0);
    assert_true(bt_window_total_f32(inf, 2, 1.0f) == 0);
    assert_true(bt_window_total_f32(one, 2, 1.0f) == 1.0); /* 1 lies below the window */

    bt_backend_t *be = make_backend(2);
    float tau[3] = {1.0f, 0, 0.8f};
    double totals[3] = {-1, -1, -1};
    bt_window_totals(be, totals, x, tau, 3, N / 3);
    for (int r = 0; r < 3; r++) {
        double want = tau[r] > 0 ? bt_window_total_f32(x + r * (N / 3), N / 3, tau[r]) : 0;
        assert_memory_equal(&totals[r], &want, sizeof want);
    }
    bt_backend_destroy(be);
    free(x);
}

/* The repetition penalty through a backend: each named logit divided (positive) or multiplied
 * (zero or negative) by its row's factor, nothing else touched. */
static void test_penalize_rows(void **state)
{
    (void)state;
    enum { M = 3, N = 50, CAP = 4 };
    float x[M * N], want[M * N];
    for (int i = 0; i < M * N; i++)
        x[i] = want[i] = 4.0f * rnd_f();
    x[7] = want[7] = 0.0f;
    x[N + 3] = want[N + 3] = -0.0f;
    const int32_t ids[M * CAP] = {7, 1, 2, 49, 3, 0, 0, 0, 9, 8, 0, 0};
    const int32_t n_ids[M] = {4, 1, 0};
    const float pen[M] = {1.3f, 0.5f, 2.0f};
    for (int r = 0; r < M; r++)
        for (int j = 0; j < n_ids[r]; j++) {
            float *l = &want[r * N + ids[r * CAP + j]];
            *l = *l > 0 ? *l / pen[r] : *l * pen[r];
        }
    bt_backend_t *be = make_backend(1);
    bt_penalize_rows(be, x, M, N, ids, n_ids, pen, CAP);
    assert_memory_equal(x, want, sizeof x);
    bt_backend_destroy(be);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_topk_matches_definition),
        cmocka_unit_test(test_backend_create_rejects_bad_params),
        cmocka_unit_test(test_backend_create_reports_nomem),
        cmocka_unit_test(test_get_rows_dequantizes_every_type),
        cmocka_unit_test(test_rmsnorm_matches_reference_and_is_row_invariant),
        cmocka_unit_test(test_rope_rotates_adjacent_pairs),
        cmocka_unit_test(test_swiglu_matches_reference),
        cmocka_unit_test(test_add_and_gather_rows),
        cmocka_unit_test(test_exp_det_is_accurate),
        cmocka_unit_test(test_window_total_matches_definition),
        cmocka_unit_test(test_penalize_rows),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
