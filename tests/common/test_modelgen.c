/* SPDX-License-Identifier: MIT */
/*
 * test_modelgen.c - the synthetic model generator: presets, parameter checks, every weight type
 * loading back through bt_model_load, byte-for-byte determinism, agreement of the stored types
 * with the f32 weights, a valid vocabulary, and a one-token forward pass whose greedy choice
 * depends on its input (a model that always says the same token would be useless for serving
 * tests). None of these need shared data.
 */
// ctest-labels: unit
#include "../support/testutil.h" /* relative: works whatever the include path */

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/alloc.h"
#include "common/gguf.h"
#include "common/log.h"
#include "common/model.h"
#include "common/modelgen.h"
#include "common/status.h"
#include "kernels/fp16.h"

static const bt_type_t all_types[] = {BT_TYPE_F32, BT_TYPE_F16, BT_TYPE_BF16, BT_TYPE_Q8_0};

static bt_modelgen_params_t tiny(bt_type_t type, uint64_t seed)
{
    bt_modelgen_params_t p;
    assert_int_equal(bt_modelgen_preset("tiny", &p), BT_OK);
    p.type = type;
    p.seed = seed;
    return p;
}

static void gen(const bt_modelgen_params_t *p, char *path, size_t cap)
{
    bt_test_tmp_path("gen.gguf", path, cap);
    assert_int_equal(bt_modelgen_write(p, path), BT_OK);
}

static bt_model_t *load(const char *path)
{
    bt_model_params_t mp = {.path = path};
    bt_model_t *m = NULL;
    assert_int_equal(bt_model_load(&mp, &m), BT_OK);
    return m;
}

static void test_modelgen_presets(void **state)
{
    assert_string_equal(bt_modelgen_preset_list(), "tiny,15m,110m,1b");
    const char *names[] = {"tiny", "15m", "110m", "1b"};
    for (int i = 0; i < 4; i++) {
        bt_modelgen_params_t p;
        assert_int_equal(bt_modelgen_preset(names[i], &p), BT_OK);
        for (int t = 0; t < 4; t++) {
            p.type = all_types[t];
            assert_int_equal(bt_modelgen_check(&p), BT_OK);
        }
    }
    bt_modelgen_params_t p;
    assert_int_equal(bt_modelgen_preset("1b", &p), BT_OK);
    assert_int_equal(p.dim, 2048);
    assert_int_equal(p.n_layers, 16);
    assert_int_equal(p.n_heads, 32);
    assert_int_equal(p.n_kv_heads, 8);
    assert_int_equal(p.ffn_dim, 8192);
    assert_int_equal(p.n_vocab, 128256);
    assert_true(p.rope_theta == 500000.0f);
    assert_int_equal(p.tied, 1);
    assert_int_equal(bt_modelgen_n_params(&p), 1235814400ull); /* Llama-3.2-1B's count */
    assert_int_equal(bt_modelgen_preset("15m", &p), BT_OK);
    assert_int_equal(p.dim, 288);
    assert_int_equal(p.ffn_dim, 768);
    assert_int_equal(bt_modelgen_preset("7b", &p), BT_ERR_NOT_FOUND);
    assert_int_equal(bt_modelgen_preset(NULL, &p), BT_ERR_NOT_FOUND);
}

static void test_modelgen_bad_params(void **state)
{
    char path[512];
    bt_test_tmp_path("bad.gguf", path, sizeof path);
    const bt_modelgen_params_t ok = tiny(BT_TYPE_F32, 1);
    bt_modelgen_params_t bad[8];
    for (int i = 0; i < 8; i++)
        bad[i] = ok;
    bad[0].n_heads = 5;    /* 64 is not 5 heads */
    bad[1].n_kv_heads = 3; /* does not divide 4 */
    bad[2].n_heads = 64;   /* head size 1 is odd */
    bad[3].n_vocab = 259;  /* no room for a normal piece */
    bad[4].n_layers = 0;
    bad[5].type = BT_TYPE_Q8_0;
    bad[5].ffn_dim = 172; /* not whole q8_0 blocks */
    bad[6].type = (bt_type_t)2;
    bad[7].rope_theta = 0.0f;
    for (int i = 0; i < 8; i++) {
        assert_int_equal(bt_modelgen_check(&bad[i]), BT_ERR_INVAL);
        assert_int_equal(bt_modelgen_write(&bad[i], path), BT_ERR_INVAL);
    }
    assert_int_not_equal(access(path, F_OK), 0);
    assert_int_equal(bt_modelgen_write(&ok, "/nonexistent/dir/x.gguf"), BT_ERR_IO);
}

static void check_matrix_type(const bt_model_t *m, bt_type_t type)
{
    assert_int_equal(m->tok_embd.type, type);
    assert_int_equal(m->output.type, type);
    for (int l = 0; l < m->hp.n_layers; l++) {
        const bt_layer_weights_t *w = &m->layers[l];
        const bt_tensor_t *ts[] = {&w->wq,     &w->wk,   &w->wv,    &w->wo,
                                   &w->w_gate, &w->w_up, &w->w_down};
        for (int i = 0; i < 7; i++)
            assert_int_equal(ts[i]->type, type);
    }
}

static void test_modelgen_tiny_each_type(void **state)
{
    for (int t = 0; t < 4; t++) {
        char path[512];
        bt_modelgen_params_t p = tiny(all_types[t], 7);
        p.tied = t % 2; /* both layouts */
        gen(&p, path, sizeof path);
        bt_model_t *m = load(path);
        const bt_model_hparams_t *hp = &m->hp;
        assert_string_equal(hp->name, "baton-synthetic-tiny");
        assert_int_equal(hp->dim, 64);
        assert_int_equal(hp->n_layers, 2);
        assert_int_equal(hp->n_heads, 4);
        assert_int_equal(hp->n_kv_heads, 2);
        assert_int_equal(hp->head_dim, 16);
        assert_int_equal(hp->ffn_dim, 160);
        assert_int_equal(hp->n_vocab, 512);
        assert_int_equal(hp->n_ctx_train, 512);
        assert_true(hp->norm_eps == 1e-5f);
        assert_true(hp->rope_theta == 10000.0f);
        assert_int_equal(hp->weight_type, all_types[t]);
        assert_int_equal(hp->tied_output, p.tied);
        assert_int_equal(m->layers[1].wk.rows, 32);
        assert_int_equal(m->layers[1].w_down.cols, 160);
        check_matrix_type(m, all_types[t]);
        assert_int_equal(bt_tokenizer_n_vocab(m->tok), 512);
        bt_model_destroy(m);
        unlink(path);
    }
}

static void test_modelgen_deterministic(void **state)
{
    char a[512], b[512], c[512];
    bt_modelgen_params_t p = tiny(BT_TYPE_Q8_0, 42);
    gen(&p, a, sizeof a);
    gen(&p, b, sizeof b);
    p.seed = 43;
    gen(&p, c, sizeof c);
    size_t na, nb, nc;
    char *fa = bt_test_read_file(a, &na), *fb = bt_test_read_file(b, &nb);
    char *fc = bt_test_read_file(c, &nc);
    assert_int_equal(na, nb);
    assert_int_equal(na, nc);
    assert_memory_equal(fa, fb, na);
    assert_memory_not_equal(fa, fc, na);
    free(fa);
    free(fb);
    free(fc);
    unlink(a);
    unlink(b);
    unlink(c);
}

/* Dequantized value i of a row of the given type. */
static float value_at(const bt_tensor_t *t, int64_t row, int64_t i)
{
    const uint8_t *r = (const uint8_t *)t->data + (size_t)row * bt_type_row_bytes(t->type, t->cols);
    uint16_t h;
    switch (t->type) {
    case BT_TYPE_F32: return ((const float *)r)[i];
    case BT_TYPE_F16: memcpy(&h, r + 2 * i, 2); return bt_fp16_to_f32(h);
    case BT_TYPE_BF16: memcpy(&h, r + 2 * i, 2); return bt_bf16_to_f32(h);
    default: {
        const bt_block_q8_0_t *b = (const bt_block_q8_0_t *)r + i / BT_QK8_0;
        return bt_fp16_to_f32(b->d) * (float)b->qs[i % BT_QK8_0];
    }
    }
}

/* Every stored value is its f32 counterpart up to the type's rounding. */
static void compare_tensor(const bt_tensor_t *ref, const bt_tensor_t *t)
{
    for (int64_t r = 0; r < ref->rows; r++) {
        for (int64_t b = 0; b < ref->cols; b += BT_QK8_0) {
            float amax = 0.0f;
            for (int64_t i = b; i < b + BT_QK8_0; i++)
                amax = fmaxf(amax, fabsf(value_at(ref, r, i)));
            for (int64_t i = b; i < b + BT_QK8_0; i++) {
                float x = value_at(ref, r, i), y = value_at(t, r, i);
                float tol = t->type == BT_TYPE_F16    ? fabsf(x) * 0x1p-11f + 1e-7f
                            : t->type == BT_TYPE_BF16 ? fabsf(x) * 0x1p-8f
                                                      : amax / 127.0f * 0.6f;
                if (fabsf(x - y) > tol)
                    fail_msg("row %lld col %lld: %g vs %g", (long long)r, (long long)i, (double)x,
                             (double)y);
            }
        }
    }
}

/* ggml's quantize_row_q8_0_ref, verbatim apart from names. */
static void ref_quantize_q8_0(const float *x, bt_block_q8_0_t *y, int64_t n)
{
    for (int64_t i = 0; i < n / BT_QK8_0; i++) {
        float amax = 0.0f;
        for (int j = 0; j < BT_QK8_0; j++)
            amax = fmaxf(amax, fabsf(x[i * BT_QK8_0 + j]));
        const float d = amax / ((1 << 7) - 1);
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = bt_f32_to_fp16(d);
        for (int j = 0; j < BT_QK8_0; ++j)
            y[i].qs[j] = (int8_t)roundf(x[i * BT_QK8_0 + j] * id);
    }
}

/* The stored bytes are exactly what converting the f32 weights the reference way gives. */
static void compare_bytes(const bt_tensor_t *ref, const bt_tensor_t *t)
{
    size_t row_bytes = bt_type_row_bytes(t->type, t->cols);
    uint8_t want[1024];
    assert_true(row_bytes <= sizeof want);
    for (int64_t r = 0; r < ref->rows; r++) {
        const float *x = (const float *)ref->data + r * ref->cols;
        uint16_t *h = (uint16_t *)want;
        for (int64_t i = 0; i < ref->cols && t->type != BT_TYPE_Q8_0; i++)
            h[i] = t->type == BT_TYPE_F16 ? bt_f32_to_fp16(x[i]) : bt_f32_to_bf16(x[i]);
        if (t->type == BT_TYPE_Q8_0)
            ref_quantize_q8_0(x, (bt_block_q8_0_t *)want, ref->cols);
        assert_memory_equal((const uint8_t *)t->data + (size_t)r * row_bytes, want, row_bytes);
    }
}

static void test_modelgen_types_agree(void **state)
{
    char ref_path[512];
    bt_modelgen_params_t p = tiny(BT_TYPE_F32, 9);
    gen(&p, ref_path, sizeof ref_path);
    bt_model_t *ref = load(ref_path);
    for (int t = 1; t < 4; t++) {
        char path[512];
        p.type = all_types[t];
        gen(&p, path, sizeof path);
        bt_model_t *m = load(path);
        compare_bytes(&ref->tok_embd, &m->tok_embd);
        compare_bytes(&ref->layers[0].w_down, &m->layers[0].w_down);
        compare_tensor(&ref->tok_embd, &m->tok_embd);
        compare_tensor(&ref->output, &m->output);
        compare_tensor(&ref->layers[1].wk, &m->layers[1].wk);
        compare_tensor(&ref->layers[0].w_down, &m->layers[0].w_down);
        assert_memory_equal(ref->layers[1].ffn_norm, m->layers[1].ffn_norm, 64 * 4);
        bt_model_destroy(m);
        unlink(path);
    }
    bt_model_destroy(ref);
    unlink(ref_path);
}

/* Weights have mean ~0 and std ~1/sqrt(fan-in); norms sit near 1. */
static void test_modelgen_weight_statistics(void **state)
{
    char path[512];
    bt_modelgen_params_t p = tiny(BT_TYPE_F32, 3);
    gen(&p, path, sizeof path);
    bt_model_t *m = load(path);
    const float *w = m->tok_embd.data;
    double sum = 0, sum2 = 0;
    const int64_t n = m->tok_embd.rows * m->tok_embd.cols;
    for (int64_t i = 0; i < n; i++) {
        sum += w[i];
        sum2 += (double)w[i] * w[i];
    }
    double mean = sum / (double)n, std = sqrt(sum2 / (double)n - mean * mean);
    assert_true(fabs(mean) < 0.005);
    assert_true(fabs(std - 0.125) < 0.005); /* 1/sqrt(64) */
    for (int i = 0; i < 64; i++)
        assert_true(fabsf(m->out_norm[i] - 1.0f) < 0.1f);
    bt_model_destroy(m);
    unlink(path);
}

/* --- vocabulary --------------------------------------------------------------------------- */

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void check_vocab(const bt_gguf_t *g, uint64_t n)
{
    bt_gguf_type_t et;
    uint64_t count;
    const void *types, *scores;
    assert_int_equal(bt_gguf_get_arr(g, "tokenizer.ggml.token_type", &et, &count, &types), BT_OK);
    assert_int_equal(et, BT_GGUF_INT32);
    assert_int_equal(count, n);
    assert_int_equal(bt_gguf_get_arr(g, "tokenizer.ggml.scores", &et, &count, &scores), BT_OK);
    assert_int_equal(et, BT_GGUF_FLOAT32);
    char **all = calloc(n, sizeof *all);
    float prev = 1.0f;
    for (uint64_t i = 0; i < n; i++) {
        const char *s;
        size_t len;
        int32_t type;
        float score;
        assert_int_equal(bt_gguf_get_arr_str(g, "tokenizer.ggml.tokens", i, &s, &len), BT_OK);
        assert_true(len > 0);
        all[i] = strndup(s, len);
        memcpy(&type, (const int32_t *)types + i, 4);
        memcpy(&score, (const float *)scores + i, 4);
        assert_int_equal(type, i == 0 ? 2 : i < 3 ? 3 : i < 259 ? 6 : 1);
        if (i >= 259) {
            assert_true(score < prev); /* strictly decreasing over normal pieces */
            prev = score;
        }
    }
    assert_string_equal(all[0], "<unk>");
    assert_string_equal(all[1], "<s>");
    assert_string_equal(all[2], "</s>");
    assert_string_equal(all[3], "<0x00>");
    assert_string_equal(all[258], "<0xFF>");
    assert_string_equal(all[259], "\xe2\x96\x81");
    qsort(all, n, sizeof *all, cmp_str);
    for (uint64_t i = 1; i < n; i++)
        if (strcmp(all[i - 1], all[i]) == 0)
            fail_msg("token '%s' appears twice", all[i]);
    for (uint64_t i = 0; i < n; i++)
        free(all[i]);
    free(all);
}

static void test_modelgen_vocabulary(void **state)
{
    char path[512];
    bt_modelgen_params_t p = tiny(BT_TYPE_Q8_0, 1);
    p.n_vocab = 128256; /* the 1b preset's size: pieces up to four letters */
    gen(&p, path, sizeof path);
    bt_gguf_t *g;
    assert_int_equal(bt_gguf_open(path, &g), BT_OK);
    check_vocab(g, 128256);
    uint32_t u;
    int b;
    assert_int_equal(bt_gguf_get_u32(g, "tokenizer.ggml.bos_token_id", &u), BT_OK);
    assert_int_equal(u, 1);
    assert_int_equal(bt_gguf_get_u32(g, "tokenizer.ggml.eos_token_id", &u), BT_OK);
    assert_int_equal(u, 2);
    assert_int_equal(bt_gguf_get_bool(g, "tokenizer.ggml.add_bos_token", &b), BT_OK);
    assert_int_equal(b, 1);
    assert_int_equal(bt_gguf_get_u32(g, "general.file_type", &u), BT_OK);
    assert_int_equal(u, 7);
    bt_gguf_close(g);
    /* The engine's tokenizer reads it and round-trips text through it. */
    bt_model_t *m = load(path);
    int32_t ids[64], n_ids;
    const char *text = "hello world, 42!";
    assert_int_equal(bt_tokenizer_encode(m->tok, text, strlen(text), 1, 0, ids, 64, &n_ids), BT_OK);
    assert_int_equal(ids[0], 1);
    char out[128] = "";
    for (int i = 1; i < n_ids; i++) {
        size_t len;
        const char *piece = bt_tokenizer_piece(m->tok, ids[i], &len);
        strncat(out, piece, len);
    }
    assert_string_equal(out, " hello world, 42!");
    bt_model_destroy(m);
    unlink(path);
}

/* --- a one-token forward pass in plain C (f32 model) ---------------------------------------- */

static void rmsnorm(float *y, const float *x, const float *w, int n)
{
    double ss = 0;
    for (int i = 0; i < n; i++)
        ss += (double)x[i] * x[i];
    float s = 1.0f / sqrtf((float)(ss / n) + 1e-5f);
    for (int i = 0; i < n; i++)
        y[i] = x[i] * s * w[i];
}

static void matvec(float *y, const bt_tensor_t *w, const float *x)
{
    const float *d = w->data;
    for (int64_t r = 0; r < w->rows; r++) {
        float acc = 0;
        for (int64_t c = 0; c < w->cols; c++)
            acc += d[r * w->cols + c] * x[c];
        y[r] = acc;
    }
}

/* Greedy next token after a single token at position 0: attention over one position is the
 * value vector itself (RoPE at position 0 is the identity), so no cache is needed. */
static int argmax_after(const bt_model_t *m, int32_t token, float *logit_std)
{
    const int dim = m->hp.dim, ffn = m->hp.ffn_dim, group = m->hp.n_heads / m->hp.n_kv_heads;
    const int hd = m->hp.head_dim;
    float x[64], xb[64], v[64], att[64], h1[160], h2[160], logits[512];
    memcpy(x, (const float *)m->tok_embd.data + (size_t)token * dim, sizeof x);
    for (int l = 0; l < m->hp.n_layers; l++) {
        const bt_layer_weights_t *w = &m->layers[l];
        rmsnorm(xb, x, w->attn_norm, dim);
        matvec(v, &w->wv, xb);
        for (int h = 0; h < m->hp.n_heads; h++)
            memcpy(att + h * hd, v + (h / group) * hd, (size_t)hd * 4);
        matvec(xb, &w->wo, att);
        for (int i = 0; i < dim; i++)
            x[i] += xb[i];
        rmsnorm(xb, x, w->ffn_norm, dim);
        matvec(h1, &w->w_gate, xb);
        matvec(h2, &w->w_up, xb);
        for (int i = 0; i < ffn; i++)
            h1[i] = h1[i] / (1.0f + expf(-h1[i])) * h2[i];
        matvec(xb, &w->w_down, h1);
        for (int i = 0; i < dim; i++)
            x[i] += xb[i];
    }
    rmsnorm(xb, x, m->out_norm, dim);
    matvec(logits, &m->output, xb);
    int best = 0;
    double sum = 0, sum2 = 0;
    for (int i = 0; i < m->hp.n_vocab; i++) {
        best = logits[i] > logits[best] ? i : best;
        sum += logits[i];
        sum2 += (double)logits[i] * logits[i];
    }
    double mean = sum / m->hp.n_vocab;
    *logit_std = (float)sqrt(sum2 / m->hp.n_vocab - mean * mean);
    return best;
}

static void test_modelgen_outputs_vary(void **state)
{
    for (int tied = 0; tied < 2; tied++) {
        char path[512];
        bt_modelgen_params_t p = tiny(BT_TYPE_F32, 5);
        p.tied = tied;
        gen(&p, path, sizeof path);
        bt_model_t *m = load(path);
        int seen[512] = {0}, n_distinct = 0, n_self = 0;
        for (int32_t t = 300; t < 340; t++) {
            float std;
            int next = argmax_after(m, t, &std);
            assert_true(std > 0.3f && std < 10.0f);
            n_distinct += !seen[next]++;
            n_self += next == t;
        }
        /* Most inputs lead to their own next token, and not to themselves. */
        assert_true(n_distinct >= 20);
        assert_true(n_self <= 4);
        bt_model_destroy(m);
        unlink(path);
    }
}

static void test_modelgen_alloc_faults(void **state)
{
    char path[512], tmp[600];
    bt_modelgen_params_t p = tiny(BT_TYPE_Q8_0, 1);
    bt_test_tmp_path("faults.gguf", path, sizeof path);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    bt_log_set_level(BT_LOG_OFF);
    long n;
    for (n = 1;; n++) {
        bt_alloc_fail_at(n);
        int st = bt_modelgen_write(&p, path);
        int fired = bt_alloc_fault_fired();
        bt_alloc_fail_at(0);
        if (!fired) {
            assert_int_equal(st, BT_OK);
            break;
        }
        assert_int_equal(st, BT_ERR_NOMEM);
        assert_int_not_equal(access(path, F_OK), 0);
        assert_int_not_equal(access(tmp, F_OK), 0);
    }
    bt_log_set_level(BT_LOG_WARN);
    assert_true(n > 5);
    unlink(path);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_modelgen_presets),
        cmocka_unit_test(test_modelgen_bad_params),
        cmocka_unit_test(test_modelgen_tiny_each_type),
        cmocka_unit_test(test_modelgen_deterministic),
        cmocka_unit_test(test_modelgen_types_agree),
        cmocka_unit_test(test_modelgen_weight_statistics),
        cmocka_unit_test(test_modelgen_vocabulary),
        cmocka_unit_test(test_modelgen_outputs_vary),
        cmocka_unit_test(test_modelgen_alloc_faults),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
