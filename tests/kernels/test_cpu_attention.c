/* SPDX-License-Identifier: MIT */
/*
 * test_cpu_attention.c - kv_store and causal GQA attention over the paged KV cache of the CPU
 * backend: several sequences with different n_past / n_new in one call, scattered
 * (non-contiguous) block tables, F32 and F16 caches, head_dim that needs padding, contexts
 * longer than one tile, checked against a double-precision softmax reference; plus the
 * determinism contract: a sequence alone equals its rows in a batch, a decode step equals the
 * same row of a prefill, and 1 and 2 threads agree, all bit for bit.
 */
// ctest-labels: unit
#include "../support/testutil.h" /* relative: works whatever the include path */

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/fp16.h"
#include "kernels/kernels.h"

#define MAX_SEQS 4
#define N_BLOCKS 160

static uint64_t rng_state = 0x13198a2e03707344ull;

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

static bt_backend_t *make_backend(int n_threads)
{
    bt_backend_params_t p = {.n_threads = n_threads, .max_rows = 64, .max_cols = 1024};
    bt_backend_t *be = NULL;
    assert_int_equal(bt_backend_create("cpu", &p, &be), BT_OK);
    return be;
}

/* A cache layer plus, per sequence, the logical K/V rows it should hold. */
typedef struct {
    bt_kv_layer_t kv;
    int n_heads;
    int n_seqs;
    int32_t blocks[MAX_SEQS][N_BLOCKS];
    int32_t n_past[MAX_SEQS], n_new[MAX_SEQS];
    float *k[MAX_SEQS], *v[MAX_SEQS]; /* [n_past + n_new][n_kv * hd], as stored */
    float *q;                         /* [rows][n_heads * hd] of the new tokens */
} fixture_t;

static int64_t kv_row(const fixture_t *f)
{
    return (int64_t)f->kv.n_kv_heads * f->kv.head_dim;
}

/* Block tables take distinct random blocks, so no sequence's blocks are contiguous. */
static void fixture_init(fixture_t *f, bt_type_t type, int block_size, int n_kv, int hd,
                         int n_heads, int n_seqs, const int *n_past, const int *n_new)
{
    memset(f, 0, sizeof *f);
    size_t es = type == BT_TYPE_F16 ? 2 : 4;
    f->kv = (bt_kv_layer_t){.type = type,
                            .block_size = block_size,
                            .n_kv_heads = n_kv,
                            .head_dim = hd,
                            .block_bytes = 2 * (size_t)block_size * n_kv * hd * es};
    f->kv.data = calloc(N_BLOCKS, f->kv.block_bytes);
    f->n_heads = n_heads;
    f->n_seqs = n_seqs;
    int32_t perm[N_BLOCKS];
    for (int i = 0; i < N_BLOCKS; i++)
        perm[i] = i;
    for (int i = N_BLOCKS - 1; i > 0; i--) {
        int j = (int)(rnd_u32() % (uint32_t)(i + 1));
        int32_t t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    int used = 0, rows = 0;
    for (int s = 0; s < n_seqs; s++) {
        f->n_past[s] = n_past[s];
        f->n_new[s] = n_new[s];
        int len = n_past[s] + n_new[s], nb = (len + block_size - 1) / block_size;
        assert_true(used + nb <= N_BLOCKS);
        memcpy(f->blocks[s], perm + used, sizeof(int32_t) * (size_t)nb);
        used += nb;
        f->k[s] = malloc(sizeof(float) * (size_t)(len * kv_row(f)) + 4);
        f->v[s] = malloc(sizeof(float) * (size_t)(len * kv_row(f)) + 4);
        for (int64_t i = 0; i < len * kv_row(f); i++) {
            f->k[s][i] = rnd_f() * 2.0f;
            f->v[s][i] = rnd_f();
            if (type == BT_TYPE_F16) { /* what the cache will hold */
                f->k[s][i] = bt_fp16_to_f32(bt_f32_to_fp16(f->k[s][i]));
                f->v[s][i] = bt_fp16_to_f32(bt_f32_to_fp16(f->v[s][i]));
            }
        }
        rows += n_new[s];
    }
    f->q = malloc(sizeof(float) * (size_t)(rows * n_heads * hd) + 4);
    for (int64_t i = 0; i < (int64_t)rows * n_heads * hd; i++)
        f->q[i] = rnd_f();
}

static void fixture_fini(fixture_t *f)
{
    for (int s = 0; s < f->n_seqs; s++) {
        free(f->k[s]);
        free(f->v[s]);
    }
    free(f->q);
    free(f->kv.data);
}

/* Batch descriptors for the new tokens, rows packed in sequence order. */
static int fixture_seqs(const fixture_t *f, bt_attn_seq_t *seqs)
{
    int rows = 0;
    for (int s = 0; s < f->n_seqs; s++) {
        seqs[s] = (bt_attn_seq_t){
            .row0 = rows, .n_new = f->n_new[s], .n_past = f->n_past[s], .blocks = f->blocks[s]};
        rows += f->n_new[s];
    }
    return rows;
}

/* Writes the past tokens (as one earlier call) and then the new ones through kv_store. */
static void fixture_store(const fixture_t *f, bt_backend_t *be)
{
    bt_attn_seq_t past[MAX_SEQS], now[MAX_SEQS];
    int rows = fixture_seqs(f, now);
    const int64_t kr = kv_row(f);
    float *k = malloc(sizeof(float) * (size_t)((rows + 400) * kr));
    float *v = malloc(sizeof(float) * (size_t)((rows + 400) * kr));
    int prow = 0;
    for (int s = 0; s < f->n_seqs; s++) {
        past[s] = (bt_attn_seq_t){
            .row0 = prow, .n_new = f->n_past[s], .n_past = 0, .blocks = f->blocks[s]};
        memcpy(k + prow * kr, f->k[s], sizeof(float) * (size_t)(f->n_past[s] * kr));
        memcpy(v + prow * kr, f->v[s], sizeof(float) * (size_t)(f->n_past[s] * kr));
        prow += f->n_past[s];
    }
    assert_true(prow <= rows + 400);
    bt_kv_store(be, &f->kv, k, v, past, f->n_seqs);
    for (int s = 0; s < f->n_seqs; s++) {
        memcpy(k + now[s].row0 * kr, f->k[s] + f->n_past[s] * kr,
               sizeof(float) * (size_t)(f->n_new[s] * kr));
        memcpy(v + now[s].row0 * kr, f->v[s] + f->n_past[s] * kr,
               sizeof(float) * (size_t)(f->n_new[s] * kr));
    }
    bt_kv_store(be, &f->kv, k, v, now, f->n_seqs);
    free(k);
    free(v);
}

/* Every stored slot holds the expected K and V values (exactly, after the type's rounding). */
static void check_cache_contents(const fixture_t *f)
{
    const int64_t kr = kv_row(f);
    const size_t es = f->kv.type == BT_TYPE_F16 ? 2 : 4;
    for (int s = 0; s < f->n_seqs; s++)
        for (int p = 0; p < f->n_past[s] + f->n_new[s]; p++) {
            const uint8_t *blk = (const uint8_t *)f->kv.data +
                                 (size_t)f->blocks[s][p / f->kv.block_size] * f->kv.block_bytes;
            const uint8_t *ks = blk + (size_t)(p % f->kv.block_size) * kr * es;
            const uint8_t *vs = ks + (size_t)f->kv.block_size * kr * es;
            for (int64_t i = 0; i < kr; i++) {
                float kg =
                    es == 2 ? bt_fp16_to_f32(((const uint16_t *)ks)[i]) : ((const float *)ks)[i];
                float vg =
                    es == 2 ? bt_fp16_to_f32(((const uint16_t *)vs)[i]) : ((const float *)vs)[i];
                assert_true(kg == f->k[s][p * kr + i]);
                assert_true(vg == f->v[s][p * kr + i]);
            }
        }
}

static void check_reference(const fixture_t *f, const float *out, float scale)
{
    const int hd = f->kv.head_dim, group = f->n_heads / f->kv.n_kv_heads;
    const int64_t kr = kv_row(f), qr = (int64_t)f->n_heads * hd;
    double *p = malloc(sizeof(double) * 4096);
    int row = 0;
    for (int s = 0; s < f->n_seqs; s++)
        for (int r = 0; r < f->n_new[s]; r++, row++)
            for (int h = 0; h < f->n_heads; h++) {
                const float *q = f->q + row * qr + (int64_t)h * hd;
                const int kvh = h / group, len = f->n_past[s] + r + 1;
                double mx = -INFINITY, sum = 0;
                for (int j = 0; j < len; j++) {
                    double d = 0;
                    for (int c = 0; c < hd; c++)
                        d += (double)q[c] * f->k[s][j * kr + (int64_t)kvh * hd + c];
                    p[j] = d * scale;
                    mx = p[j] > mx ? p[j] : mx;
                }
                for (int j = 0; j < len; j++)
                    sum += p[j] = exp(p[j] - mx);
                for (int c = 0; c < hd; c++) {
                    double o = 0;
                    for (int j = 0; j < len; j++)
                        o += p[j] * f->v[s][j * kr + (int64_t)kvh * hd + c];
                    o /= sum;
                    double got = out[row * qr + (int64_t)h * hd + c];
                    if (fabs(got - o) > 2e-6)
                        fail_msg("seq %d row %d head %d dim %d: %.9g vs %.9g", s, r, h, c, got, o);
                }
            }
    free(p);
}

typedef struct {
    bt_type_t type;
    int block_size, n_kv, hd, n_heads, n_seqs;
    int n_past[MAX_SEQS], n_new[MAX_SEQS];
} attn_case_t;

static void run_case(const attn_case_t *c)
{
    bt_backend_t *be2 = make_backend(2), *be1 = make_backend(1);
    fixture_t f;
    fixture_init(&f, c->type, c->block_size, c->n_kv, c->hd, c->n_heads, c->n_seqs, c->n_past,
                 c->n_new);
    fixture_store(&f, be2);
    check_cache_contents(&f);
    bt_attn_seq_t seqs[MAX_SEQS];
    const int rows = fixture_seqs(&f, seqs);
    const int64_t qr = (int64_t)c->n_heads * c->hd;
    const float scale = 1.0f / sqrtf((float)c->hd);
    float *out = malloc(sizeof(float) * (size_t)(rows * qr));
    float *out1 = malloc(sizeof(float) * (size_t)(rows * qr));
    bt_attention(be2, out, f.q, &f.kv, seqs, c->n_seqs, c->n_heads, scale);
    check_reference(&f, out, scale);
    bt_attention(be1, out1, f.q, &f.kv, seqs, c->n_seqs, c->n_heads, scale);
    assert_memory_equal(out, out1, sizeof(float) * (size_t)(rows * qr));

    /* each sequence alone gives the bits it had in the batch */
    for (int s = 0; s < c->n_seqs; s++) {
        bt_attn_seq_t one = seqs[s];
        one.row0 = 0;
        bt_attention(be2, out1, f.q + seqs[s].row0 * qr, &f.kv, &one, 1, c->n_heads, scale);
        assert_memory_equal(out1, out + seqs[s].row0 * qr,
                            sizeof(float) * (size_t)(seqs[s].n_new * qr));
        /* and its last row as a decode step (one new token) gives the same bits again */
        bt_attn_seq_t dec = seqs[s];
        dec.row0 = 0;
        dec.n_past = seqs[s].n_past + seqs[s].n_new - 1;
        dec.n_new = 1;
        const int64_t last = seqs[s].row0 + seqs[s].n_new - 1;
        bt_attention(be1, out1, f.q + last * qr, &f.kv, &dec, 1, c->n_heads, scale);
        assert_memory_equal(out1, out + last * qr, sizeof(float) * (size_t)qr);
    }
    free(out);
    free(out1);
    fixture_fini(&f);
    bt_backend_destroy(be2);
    bt_backend_destroy(be1);
}

static void test_attention_gqa_f32_many_sequences(void **state)
{
    attn_case_t c = {.type = BT_TYPE_F32,
                     .block_size = 4,
                     .n_kv = 2,
                     .hd = 64,
                     .n_heads = 6,
                     .n_seqs = 4,
                     .n_past = {0, 37, 5, 150},
                     .n_new = {7, 1, 3, 2}};
    run_case(&c);
}

static void test_attention_gqa_f16_cache(void **state)
{
    attn_case_t c = {.type = BT_TYPE_F16,
                     .block_size = 16,
                     .n_kv = 2,
                     .hd = 128,
                     .n_heads = 8,
                     .n_seqs = 3,
                     .n_past = {130, 0, 9},
                     .n_new = {1, 40, 6}};
    run_case(&c);
}

static void test_attention_mha_padded_head_dim(void **state)
{
    attn_case_t c = {.type = BT_TYPE_F32,
                     .block_size = 3,
                     .n_kv = 3,
                     .hd = 8,
                     .n_heads = 3,
                     .n_seqs = 2,
                     .n_past = {0, 70},
                     .n_new = {20, 1}};
    run_case(&c);
    attn_case_t c16 = {.type = BT_TYPE_F16,
                       .block_size = 5,
                       .n_kv = 1,
                       .hd = 24,
                       .n_heads = 4,
                       .n_seqs = 2,
                       .n_past = {66, 1},
                       .n_new = {3, 1}};
    run_case(&c16);
}

/* Many query rows of one long prefill: more rows than one work item carries. */
static void test_attention_long_prefill(void **state)
{
    attn_case_t c = {.type = BT_TYPE_F16,
                     .block_size = 16,
                     .n_kv = 1,
                     .hd = 64,
                     .n_heads = 4,
                     .n_seqs = 1,
                     .n_past = {100},
                     .n_new = {45}};
    run_case(&c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_attention_gqa_f32_many_sequences),
        cmocka_unit_test(test_attention_gqa_f16_cache),
        cmocka_unit_test(test_attention_mha_padded_head_dim),
        cmocka_unit_test(test_attention_long_prefill),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
