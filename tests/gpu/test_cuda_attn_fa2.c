/* SPDX-License-Identifier: MIT */
/*
 * test_cuda_attn_fa2.c - the FlashAttention-2 prefill attention kernel (attention_fa2.cu),
 * reached through the "cuda" backend created with allow_nondeterministic and
 * BATON_CUDA_PREFILL_ATTN=fa2, against the CPU backend and against the WMMA kernel (the same
 * backend without the switch), both within bf16 tolerance. Cases: BF16 and F16 caches,
 * head_dim 64 and 128, GQA groups 1 and 4, block sizes 16 and 32, each in one call that mixes
 * fresh prefills, chunks after cached context, lengths off the 16 and 64 grids and a decode
 * row; plus head_dim 80 with group 3 (query tiles end mid-row) and block size 7, and calls
 * both tensor-core kernels refuse (F32 cache, head_dim 144), which must fall back to the SIMT
 * kernel. Errors are judged over the whole output and, more finely, over each head's output
 * vector on its own, so that a fault in later key tiles (whose rows have small outputs) cannot
 * hide under the early rows' scale.
 *
 * The one thing to know: the switch is only observable through the results, so the test also
 * requires the fa2 output to differ in bits from the WMMA output (the two sum in different
 * orders); equal bits would mean the fa2 kernel refused the call or was never tried.
 *
 * Skipped (exit 77) where no CUDA device is present or the backend is not built.
 */
// ctest-labels: gpu
#include "../support/testutil.h" /* relative: works whatever the include path */

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/kernels.h"

#define MAX_ROWS 1024
#define MAX_SEQS 8
#define SPARE_BLOCKS 16 /* pool blocks no sequence uses, so tables are not a prefix */
#define TOL_BF16 2e-2   /* Q and softmax weights rounded to the cache's 16-bit type */
#define TOL_F32 1e-4    /* the SIMT kernel: f32 arithmetic on the same values */
#define TOL_VECTOR 1e-1 /* per head vector: rounding gives well under 1%, a wrong tile ~100% */
#define ENV "BATON_CUDA_PREFILL_ATTN"

static bt_backend_t *cpu, *fa2, *wmma;
static uint64_t rng = 0x2545f4914f6cdd1dull;

static uint32_t rnd_u32(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng >> 16);
}

static float rnd(void)
{
    return (float)(rnd_u32() % 2000001) / 1000000.0f - 1.0f;
}

static float *rnd_floats(size_t n)
{
    float *v = malloc((n ? n : 1) * sizeof *v);
    assert_non_null(v);
    for (size_t i = 0; i < n; i++)
        v[i] = rnd();
    return v;
}

/* The largest |got - want| over the largest |want|; NaN anywhere gives infinity. */
static double rel_err(const float *got, const float *want, size_t n)
{
    double diff = 0.0, scale = 1e-30;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - (double)want[i]);
        if (isnan(d))
            return INFINITY;
        diff = d > diff ? d : diff;
        scale = fabs((double)want[i]) > scale ? fabs((double)want[i]) : scale;
    }
    return diff / scale;
}

/* The worst of rel_err over each head's output vector (width floats) on its own. A vector's
 * scale falls as its context grows (the softmax averages more values), so the whole output's
 * error is set by the short early rows; this one also sees a fault confined to later tiles. */
static double rel_err_vectors(const float *got, const float *want, size_t n, size_t width)
{
    double worst = 0.0;
    for (size_t i = 0; i + width <= n; i += width) {
        double e = rel_err(got + i, want + i, width);
        worst = e > worst ? e : worst;
    }
    return worst;
}

static void expect_near(const char *what, const float *got, const float *want, size_t n, double tol)
{
    double e = rel_err(got, want, n);
    if (!(e <= tol)) {
        fprintf(stderr, "%s: relative error %.3g > %.3g\n", what, e, tol);
        fail();
    }
}

typedef struct {
    int type, hd, n_heads, n_kv, block_size, n_seqs;
    int32_t n_past[MAX_SEQS], n_new[MAX_SEQS];
} fa2_case_t;

/* One case's host inputs, shared by every backend: sequences with scattered block tables
 * (into ids), the new rows' q, k, v and the cached context's k, v (sequence s's n_past rows
 * from row past0[s]). */
typedef struct {
    bt_attn_seq_t seqs[MAX_SEQS];
    int32_t *ids;
    int32_t n_blocks, rows, past_rows, past0[MAX_SEQS];
    size_t block_bytes, kv_row, q_row; /* bytes; floats; floats */
    float *q, *k, *v, *pk, *pv;
} fa2_inputs_t;

static void inputs_init(fa2_inputs_t *in, const fa2_case_t *c)
{
    memset(in, 0, sizeof *in);
    in->kv_row = (size_t)c->n_kv * c->hd;
    in->q_row = (size_t)c->n_heads * c->hd;
    in->block_bytes = 2 * (size_t)c->block_size * in->kv_row * (c->type == BT_TYPE_F32 ? 4 : 2);
    int32_t used = 0;
    for (int s = 0; s < c->n_seqs; s++)
        used += (c->n_past[s] + c->n_new[s] + c->block_size - 1) / c->block_size;
    in->n_blocks = used + SPARE_BLOCKS;
    in->ids = malloc((size_t)in->n_blocks * sizeof *in->ids);
    assert_non_null(in->ids);
    for (int32_t i = 0; i < in->n_blocks; i++)
        in->ids[i] = i;
    for (int32_t i = in->n_blocks - 1; i > 0; i--) { /* shuffled: runs are scattered */
        int32_t j = (int32_t)(rnd_u32() % (uint32_t)(i + 1));
        int32_t t = in->ids[i];
        in->ids[i] = in->ids[j];
        in->ids[j] = t;
    }
    int32_t off = 0;
    for (int s = 0; s < c->n_seqs; s++) {
        in->seqs[s] = (bt_attn_seq_t){.row0 = in->rows,
                                      .n_new = c->n_new[s],
                                      .n_past = c->n_past[s],
                                      .blocks = in->ids + off};
        off += (c->n_past[s] + c->n_new[s] + c->block_size - 1) / c->block_size;
        in->rows += c->n_new[s];
        in->past0[s] = in->past_rows;
        in->past_rows += c->n_past[s];
    }
    in->q = rnd_floats((size_t)in->rows * in->q_row);
    in->k = rnd_floats((size_t)in->rows * in->kv_row);
    in->v = rnd_floats((size_t)in->rows * in->kv_row);
    in->pk = rnd_floats((size_t)in->past_rows * in->kv_row);
    in->pv = rnd_floats((size_t)in->past_rows * in->kv_row);
}

static void inputs_fini(fa2_inputs_t *in)
{
    free(in->ids);
    free(in->q);
    free(in->k);
    free(in->v);
    free(in->pk);
    free(in->pv);
}

static void *put(bt_backend_t *be, const void *host, size_t bytes)
{
    void *p = bt_backend_alloc(be, bytes ? bytes : 4);
    assert_non_null(p);
    if (bytes)
        bt_backend_upload(be, p, host, bytes);
    return p;
}

/* Fills the cache on be (the context by one kv_store per sequence, as its own prefill would,
 * then the new rows in one call), runs the attention call and returns its output on the host
 * ([rows][n_heads][hd], malloc'ed). */
static float *run_case(bt_backend_t *be, const fa2_case_t *c, const fa2_inputs_t *in)
{
    const size_t pool = in->block_bytes * (size_t)in->n_blocks;
    const size_t kv_bytes = (size_t)in->rows * in->kv_row * 4;
    const size_t past_bytes = (size_t)in->past_rows * in->kv_row * 4;
    const size_t q_bytes = (size_t)in->rows * in->q_row * 4;
    void *zeros = calloc(1, pool);
    assert_non_null(zeros);
    bt_kv_layer_t kv = {.type = c->type,
                        .block_size = c->block_size,
                        .n_kv_heads = c->n_kv,
                        .head_dim = c->hd,
                        .block_bytes = in->block_bytes,
                        .data = put(be, zeros, pool)};
    float *pk = put(be, in->pk, past_bytes), *pv = put(be, in->pv, past_bytes);
    for (int s = 0; s < c->n_seqs; s++) {
        if (!c->n_past[s])
            continue;
        bt_attn_seq_t ps = {
            .row0 = in->past0[s], .n_new = c->n_past[s], .blocks = in->seqs[s].blocks};
        bt_kv_store(be, &kv, pk, pv, &ps, 1);
    }
    float *k = put(be, in->k, kv_bytes), *v = put(be, in->v, kv_bytes);
    float *q = put(be, in->q, q_bytes), *out = bt_backend_alloc(be, q_bytes);
    assert_non_null(out);
    bt_kv_store(be, &kv, k, v, in->seqs, c->n_seqs);
    bt_attention(be, out, q, &kv, in->seqs, c->n_seqs, c->n_heads, 1.0f / sqrtf((float)c->hd));
    float *host = malloc(q_bytes);
    assert_non_null(host);
    bt_backend_download(be, host, out, q_bytes);
    void *bufs[] = {out, q, k, v, pk, pv, kv.data};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        bt_backend_free(be, bufs[i]);
    free(zeros);
    return host;
}

/* The fa2 kernel against the CPU and the WMMA kernel; and different bits from the latter. */
static void check_fa2(const fa2_case_t *c)
{
    fa2_inputs_t in;
    inputs_init(&in, c);
    const size_t n = (size_t)in.rows * in.q_row;
    float *want = run_case(cpu, c, &in), *got = run_case(fa2, c, &in);
    float *ref = run_case(wmma, c, &in);
    char what[96];
    snprintf(what, sizeof what, "%s hd=%d group=%d block=%d", bt_type_name(c->type), c->hd,
             c->n_heads / c->n_kv, c->block_size);
    fprintf(stderr, "%s: fa2 vs cpu %.3g, vs wmma %.3g; wmma vs cpu %.3g\n", what,
            rel_err(got, want, n), rel_err(got, ref, n), rel_err(ref, want, n));
    expect_near(what, got, want, n, TOL_BF16);
    expect_near(what, got, ref, n, TOL_BF16);
    expect_near(what, ref, want, n, TOL_BF16);
    double ev = rel_err_vectors(got, want, n, (size_t)c->hd);
    fprintf(stderr, "%s: fa2 vs cpu, worst head vector %.3g\n", what, ev);
    if (!(ev <= TOL_VECTOR)) {
        fprintf(stderr, "%s: a head vector's relative error %.3g > %.3g\n", what, ev, TOL_VECTOR);
        fail();
    }
    if (memcmp(got, ref, n * sizeof *got) == 0) {
        fprintf(stderr, "%s: fa2 output equals the WMMA kernel's bit for bit\n", what);
        fail();
    }
    free(ref);
    free(got);
    free(want);
    inputs_fini(&in);
}

/* Six sequences in one call: a prefill of 200 rows (3 tiles and 8 rows), a 77-row chunk after
 * 100 cached positions, a decode row over 333, a short prefill of 17 rows, a tile-aligned chunk
 * of 64 after 64, and 520 rows after 5 (9 tiles: both stages of the double buffer, often). */
static fa2_case_t mixed_case(int type, int hd, int group, int block_size)
{
    fa2_case_t c = {.type = type,
                    .hd = hd,
                    .n_kv = group == 1 ? 4 : 2,
                    .block_size = block_size,
                    .n_seqs = 6,
                    .n_past = {0, 100, 333, 0, 64, 5},
                    .n_new = {200, 77, 1, 17, 64, 520}};
    c.n_heads = c.n_kv * group;
    return c;
}

static void test_fa2_against_cpu_and_wmma(void **state)
{
    static const int types[] = {BT_TYPE_BF16, BT_TYPE_F16};
    static const int hds[] = {64, 128}, groups[] = {1, 4}, block_sizes[] = {16, 32};
    for (int t = 0; t < 2; t++)
        for (int h = 0; h < 2; h++)
            for (int g = 0; g < 2; g++)
                for (int b = 0; b < 2; b++) {
                    fa2_case_t c = mixed_case(types[t], hds[h], groups[g], block_sizes[b]);
                    check_fa2(&c);
                }
}

/* head_dim 80 (not a power of two), group 3 (a 64-vector query tile ends mid-row), block size
 * 7 (a tile spans up to 11 blocks, none aligned to it). */
static void test_fa2_odd_shapes(void **state)
{
    fa2_case_t c = {.type = BT_TYPE_BF16,
                    .hd = 80,
                    .n_kv = 2,
                    .n_heads = 6,
                    .block_size = 7,
                    .n_seqs = 3,
                    .n_past = {50, 0, 3},
                    .n_new = {90, 133, 1}};
    check_fa2(&c);
}

/* Calls both tensor-core kernels refuse fall back to the SIMT kernel: f32 precision. */
static void test_fa2_refused_calls_fall_back(void **state)
{
    fa2_case_t f32 = mixed_case(BT_TYPE_F32, 64, 4, 16);
    fa2_case_t wide = mixed_case(BT_TYPE_BF16, 144, 4, 16);
    const fa2_case_t *cases[] = {&f32, &wide};
    for (int i = 0; i < 2; i++) {
        fa2_inputs_t in;
        inputs_init(&in, cases[i]);
        float *want = run_case(cpu, cases[i], &in), *got = run_case(fa2, cases[i], &in);
        expect_near("refused call", got, want, (size_t)in.rows * in.q_row, TOL_F32);
        free(got);
        free(want);
        inputs_fini(&in);
    }
}

/* The "cuda" backend, nondeterministic, with the environment switch set to value (NULL:
 * unset) while it is created. */
static int create_cuda(const char *value, bt_backend_t **out)
{
    bt_backend_params_t p = {.max_rows = MAX_ROWS, .allow_nondeterministic = 1};
    if (value)
        setenv(ENV, value, 1);
    else
        unsetenv(ENV);
    int st = bt_backend_create("cuda", &p, out);
    unsetenv(ENV);
    return st;
}

int main(void)
{
    if (create_cuda(NULL, &wmma) != BT_OK) {
        printf("no CUDA device (or the backend is not built): skipped\n");
        return 77;
    }
    bt_backend_params_t p = {.max_rows = MAX_ROWS};
    if (create_cuda("fa2", &fa2) != BT_OK || bt_backend_create("cpu", &p, &cpu) != BT_OK)
        return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fa2_against_cpu_and_wmma),
        cmocka_unit_test(test_fa2_odd_shapes),
        cmocka_unit_test(test_fa2_refused_calls_fall_back),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    bt_backend_destroy(fa2);
    bt_backend_destroy(wmma);
    bt_backend_destroy(cpu);
    return rc;
}
