/* SPDX-License-Identifier: MIT */
/*
 * test_model.c - model loading: stories260K as GGUF and as a llama2.c checkpoint (same
 * hyperparameters, identical weights), and files that lie about themselves. The lying files are
 * made by copying a generated tiny model through the GGUF writer with one edit each (a key
 * dropped or changed, a tensor dropped, reshaped or added), so these tests need no shared data.
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

/* --- helpers ------------------------------------------------------------------------------ */

static int load(const char *path, const char *tok, bt_model_t **m)
{
    bt_model_params_t p = {.path = path, .tokenizer_path = tok};
    *m = NULL;
    int st = bt_model_load(&p, m);
    if (st != BT_OK)
        assert_null(*m);
    return st;
}

static void write_bytes(const char *path, const void *p, size_t n)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(p, 1, n, f), n);
    assert_int_equal(fclose(f), 0);
}

/* The tiny preset (dim 64, 2 layers, 4 heads of 16, 2 KV heads, ffn 160, vocab 512, untied). */
static void make_tiny(char *path, size_t cap)
{
    bt_modelgen_params_t p;
    assert_int_equal(bt_modelgen_preset("tiny", &p), BT_OK);
    bt_test_tmp_path("tiny.gguf", path, cap);
    assert_int_equal(bt_modelgen_write(&p, path), BT_OK);
}

typedef void (*extra_fn)(bt_gguf_writer_t *w);

typedef struct {
    const char *skip_key;
    const char *skip_tensor;
    const char *reshape; /* tensor given shape [ne0, ne1] (no larger than it was) */
    int64_t ne0, ne1;
    extra_fn extra; /* sets keys (replacing) and adds tensors */
} edit_t;

static void copy_kv(bt_gguf_writer_t *w, const bt_gguf_t *g, const bt_gguf_kv_t *kv,
                    const char *key)
{
    if (kv->type == BT_GGUF_STRING) {
        char *s = strndup(kv->data, kv->n);
        assert_int_equal(bt_gguf_writer_set_str(w, key, s), BT_OK);
        free(s);
    } else if (kv->type == BT_GGUF_ARRAY && kv->elem_type == BT_GGUF_STRING) {
        char **v = calloc(kv->n + 1, sizeof *v);
        for (uint64_t i = 0; i < kv->n; i++) {
            const char *s;
            size_t len;
            assert_int_equal(bt_gguf_get_arr_str(g, key, i, &s, &len), BT_OK);
            v[i] = strndup(s, len);
        }
        assert_int_equal(bt_gguf_writer_set_arr_str(w, key, (const char *const *)v, kv->n), BT_OK);
        for (uint64_t i = 0; i < kv->n; i++)
            free(v[i]);
        free(v);
    } else if (kv->type == BT_GGUF_ARRAY) {
        assert_int_equal(bt_gguf_writer_set_arr(w, key, kv->elem_type, kv->data, kv->n), BT_OK);
    } else {
        assert_int_equal(bt_gguf_writer_set_scalar(w, key, kv->type, kv->data), BT_OK);
    }
}

static void copy_tensors(bt_gguf_writer_t *w, const bt_gguf_t *g, const edit_t *e)
{
    for (int64_t i = 0; i < bt_gguf_n_tensors(g); i++) {
        bt_gguf_tensor_t t;
        char name[128];
        assert_int_equal(bt_gguf_tensor_at(g, i, &t), BT_OK);
        snprintf(name, sizeof name, "%.*s", (int)t.name_len, t.name);
        if (e->skip_tensor && strcmp(name, e->skip_tensor) == 0)
            continue;
        if (e->reshape && strcmp(name, e->reshape) == 0) {
            t.ne[0] = e->ne0;
            t.ne[1] = e->ne1;
        }
        assert_int_equal(bt_gguf_writer_add_tensor(w, name, t.type, t.n_dims, t.ne, t.data), BT_OK);
    }
}

/* Copies src to a new scratch file dst with the edit applied. */
static void rewrite(const char *src, char *dst, size_t cap, const edit_t *e)
{
    bt_gguf_t *g;
    bt_gguf_writer_t *w;
    assert_int_equal(bt_gguf_open(src, &g), BT_OK);
    assert_int_equal(bt_gguf_writer_create(&w), BT_OK);
    for (int64_t i = 0; i < bt_gguf_n_kv(g); i++) {
        bt_gguf_kv_t kv;
        char key[256];
        assert_int_equal(bt_gguf_kv_at(g, i, &kv), BT_OK);
        snprintf(key, sizeof key, "%.*s", (int)kv.key_len, kv.key);
        if (!e->skip_key || strcmp(key, e->skip_key) != 0)
            copy_kv(w, g, &kv, key);
    }
    copy_tensors(w, g, e);
    if (e->extra)
        e->extra(w);
    bt_test_tmp_path("edited.gguf", dst, cap);
    assert_int_equal(bt_gguf_writer_write(w, dst), BT_OK);
    bt_gguf_writer_destroy(w);
    bt_gguf_close(g);
}

/* Loads the tiny model with one edit; returns the status (and the model if asked). */
static int load_edited(const edit_t *e, bt_model_t **keep)
{
    char src[512], dst[512];
    make_tiny(src, sizeof src);
    rewrite(src, dst, sizeof dst, e);
    bt_model_t *m;
    int st = load(dst, NULL, &m);
    if (keep)
        *keep = m;
    else
        bt_model_destroy(m);
    unlink(src);
    unlink(dst);
    return st;
}

/* --- stories260K ---------------------------------------------------------------------------- */

static void check_stories_hparams(const bt_model_hparams_t *hp)
{
    assert_string_equal(hp->arch, "llama");
    assert_int_equal(hp->dim, 64);
    assert_int_equal(hp->ffn_dim, 172);
    assert_int_equal(hp->n_layers, 5);
    assert_int_equal(hp->n_heads, 8);
    assert_int_equal(hp->n_kv_heads, 4);
    assert_int_equal(hp->head_dim, 8);
    assert_int_equal(hp->n_vocab, 512);
    assert_int_equal(hp->n_ctx_train, 512);
    assert_true(fabsf(hp->norm_eps - 1e-5f) < 1e-9f);
    assert_true(hp->rope_theta == 10000.0f);
    assert_int_equal(hp->rope_scaling, BT_ROPE_SCALING_NONE);
    assert_int_equal(hp->weight_type, BT_TYPE_F32);
}

static void test_model_stories_gguf(void **state)
{
    char path[512];
    BT_TEST_NEED_SHARED("models/stories260K.gguf", path);
    bt_model_t *m;
    assert_int_equal(load(path, NULL, &m), BT_OK);
    check_stories_hparams(&m->hp);
    assert_string_equal(m->hp.name, "tinyllamas-stories-260k");
    assert_int_equal(m->hp.tied_output, 0);
    assert_int_equal(m->tok_embd.rows, 512);
    assert_int_equal(m->tok_embd.cols, 64);
    assert_int_equal(m->layers[4].wk.rows, 32);
    assert_int_equal(m->layers[4].wk.cols, 64);
    assert_int_equal(m->layers[0].w_down.rows, 64);
    assert_int_equal(m->layers[0].w_down.cols, 172);
    assert_true(m->rope_inv_freq[0] == 1.0f);
    assert_true(fabsf(m->rope_inv_freq[1] - 0.1f) < 1e-7f);
    assert_true(fabsf(m->rope_inv_freq[3] - 0.001f) < 1e-9f);
    assert_int_equal(bt_model_kv_bytes_per_token(&m->hp, BT_TYPE_F32), 2 * 5 * 4 * 8 * 4);
    assert_int_equal(bt_model_kv_bytes_per_token(&m->hp, BT_TYPE_F16), 2 * 5 * 4 * 8 * 2);
    assert_non_null(m->tok);
    bt_model_destroy(m);
}

static void test_model_stories_bin(void **state)
{
    char path[512], tok[512];
    BT_TEST_NEED_SHARED("models/stories260K.bin", path);
    BT_TEST_NEED_SHARED("models/tok512.bin", tok);
    bt_model_t *m;
    assert_int_equal(load(path, tok, &m), BT_OK);
    check_stories_hparams(&m->hp);
    assert_string_equal(m->hp.name, "stories260K.bin");
    assert_int_equal(m->hp.tied_output, 1);
    assert_ptr_equal(m->output.data, m->tok_embd.data);
    assert_int_equal(bt_tokenizer_n_vocab(m->tok), 512);
    bt_model_destroy(m);
    assert_int_equal(load(path, NULL, &m), BT_ERR_INVAL); /* a .bin needs its tokenizer */
}

/* A real llama.cpp file with f16 matrices, f32 norms and a 32,000-token vocabulary. */
static void test_model_tiny_random_f16(void **state)
{
    char path[512];
    BT_TEST_NEED_SHARED("models/llama-2-tiny-random.gguf", path);
    bt_model_t *m;
    assert_int_equal(load(path, NULL, &m), BT_OK);
    assert_int_equal(m->hp.weight_type, BT_TYPE_F16);
    assert_int_equal(m->hp.dim, 8);
    assert_int_equal(m->hp.n_layers, 1);
    assert_int_equal(m->hp.n_heads, 2);
    assert_int_equal(m->hp.head_dim, 4);
    assert_int_equal(m->hp.ffn_dim, 32);
    assert_int_equal(m->hp.n_vocab, 32000);
    assert_int_equal(m->hp.n_ctx_train, 4096);
    assert_int_equal(m->output.type, BT_TYPE_F16);
    assert_int_equal(m->output.rows, 32000);
    assert_int_equal(bt_tokenizer_n_vocab(m->tok), 32000);
    bt_model_destroy(m);
}

static void assert_same_tensor(const bt_tensor_t *a, const bt_tensor_t *b)
{
    assert_int_equal(a->type, b->type);
    assert_int_equal(a->rows, b->rows);
    assert_int_equal(a->cols, b->cols);
    assert_memory_equal(a->data, b->data, (size_t)(a->rows * a->cols) * 4);
}

static void test_model_gguf_and_bin_identical(void **state)
{
    char gguf[512], bin[512], tok[512];
    BT_TEST_NEED_SHARED("models/stories260K.gguf", gguf);
    BT_TEST_NEED_SHARED("models/stories260K.bin", bin);
    BT_TEST_NEED_SHARED("models/tok512.bin", tok);
    bt_model_t *a, *b;
    assert_int_equal(load(gguf, NULL, &a), BT_OK);
    assert_int_equal(load(bin, tok, &b), BT_OK);
    assert_same_tensor(&a->tok_embd, &b->tok_embd);
    assert_same_tensor(&a->output, &b->output);
    assert_memory_equal(a->out_norm, b->out_norm, 64 * 4);
    for (int l = 0; l < 5; l++) {
        const bt_layer_weights_t *x = &a->layers[l], *y = &b->layers[l];
        assert_memory_equal(x->attn_norm, y->attn_norm, 64 * 4);
        assert_memory_equal(x->ffn_norm, y->ffn_norm, 64 * 4);
        assert_same_tensor(&x->wq, &y->wq);
        assert_same_tensor(&x->wk, &y->wk);
        assert_same_tensor(&x->wv, &y->wv);
        assert_same_tensor(&x->wo, &y->wo);
        assert_same_tensor(&x->w_gate, &y->w_gate);
        assert_same_tensor(&x->w_up, &y->w_up);
        assert_same_tensor(&x->w_down, &y->w_down);
    }
    assert_memory_equal(a->rope_inv_freq, b->rope_inv_freq, 4 * 4);
    bt_model_destroy(a);
    bt_model_destroy(b);
}

static void test_model_bin_size_checked(void **state)
{
    char path[512], tok[512], bad[512];
    BT_TEST_NEED_SHARED("models/stories260K.bin", path);
    BT_TEST_NEED_SHARED("models/tok512.bin", tok);
    size_t len;
    char *file = bt_test_read_file(path, &len);
    assert_non_null(file);
    bt_model_t *m;
    bt_test_tmp_path("bad.bin", bad, sizeof bad);
    const size_t sizes[] = {len - 4, len - 1, 28, 27, 3, 1};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        write_bytes(bad, file, sizes[i]);
        assert_int_equal(load(bad, tok, &m), BT_ERR_FORMAT);
    }
    char *longer = calloc(1, len + 4);
    memcpy(longer, file, len);
    write_bytes(bad, longer, len + 4);
    assert_int_equal(load(bad, tok, &m), BT_ERR_FORMAT);
    int32_t hdr[7];
    memcpy(hdr, file, sizeof hdr);
    hdr[1] = -172; /* negative hidden size */
    memcpy(longer, hdr, sizeof hdr);
    write_bytes(bad, longer, len);
    assert_int_equal(load(bad, tok, &m), BT_ERR_FORMAT);
    hdr[1] = 172;
    hdr[4] = 3; /* kv heads do not divide heads */
    memcpy(longer, hdr, sizeof hdr);
    write_bytes(bad, longer, len);
    assert_int_equal(load(bad, tok, &m), BT_ERR_FORMAT);
    memcpy(longer, "24ka", 4); /* a versioned export's magic, read as an int32 */
    write_bytes(bad, longer, len);
    assert_int_equal(load(bad, tok, &m), BT_ERR_UNSUPPORTED);
    write_bytes(bad, "", 0);
    assert_int_equal(load(bad, tok, &m), BT_ERR_FORMAT);
    assert_int_equal(load("/nonexistent/model.bin", tok, &m), BT_ERR_IO);
    free(longer);
    free(file);
    unlink(bad);
}

/* Every allocation the load makes fails once in turn: a clean error each time, no leak. */
static void fault_loop(const char *path, const char *tok)
{
    bt_log_set_level(BT_LOG_OFF);
    long n;
    for (n = 1;; n++) {
        bt_model_t *m;
        bt_alloc_fail_at(n);
        int st = load(path, tok, &m);
        int fired = bt_alloc_fault_fired();
        bt_alloc_fail_at(0);
        if (!fired) {
            assert_int_equal(st, BT_OK);
            bt_model_destroy(m);
            break;
        }
        if (st == BT_OK)
            bt_model_destroy(m); /* a caller that tolerates a failed allocation */
        else
            assert_int_equal(st, BT_ERR_NOMEM);
    }
    bt_log_set_level(BT_LOG_WARN);
    assert_true(n > 3);
}

static void test_model_alloc_faults(void **state)
{
    char gguf[512], bin[512], tok[512];
    BT_TEST_NEED_SHARED("models/stories260K.gguf", gguf);
    BT_TEST_NEED_SHARED("models/stories260K.bin", bin);
    BT_TEST_NEED_SHARED("models/tok512.bin", tok);
    fault_loop(gguf, NULL);
    fault_loop(bin, tok);
}

/* --- generated and edited GGUF files -------------------------------------------------------- */

static void test_model_tiny_generated(void **state)
{
    char path[512];
    make_tiny(path, sizeof path);
    bt_model_t *m;
    assert_int_equal(load(path, NULL, &m), BT_OK);
    assert_int_equal(m->hp.head_dim, 16);
    assert_int_equal(m->hp.n_kv_heads, 2);
    assert_int_equal(m->hp.tied_output, 0);
    assert_int_equal(m->layers[1].wk.rows, 32);
    bt_model_destroy(m);
    fault_loop(path, NULL);
    unlink(path);
}

static void test_model_contradictory_shapes(void **state)
{
    edit_t e = {.reshape = "blk.1.attn_k.weight", .ne0 = 64, .ne1 = 16};
    assert_int_equal(load_edited(&e, NULL), BT_ERR_FORMAT);
    e = (edit_t){.reshape = "blk.0.ffn_down.weight", .ne0 = 64, .ne1 = 160}; /* transposed */
    assert_int_equal(load_edited(&e, NULL), BT_ERR_FORMAT);
    e = (edit_t){.reshape = "token_embd.weight", .ne0 = 64, .ne1 = 500};
    assert_int_equal(load_edited(&e, NULL), BT_ERR_FORMAT); /* tokenizer has 512 */
    e = (edit_t){.skip_tensor = "blk.0.ffn_up.weight"};
    assert_int_equal(load_edited(&e, NULL), BT_ERR_FORMAT);
    e = (edit_t){.skip_tensor = "output_norm.weight"};
    assert_int_equal(load_edited(&e, NULL), BT_ERR_FORMAT);
}

static void set_arch_mamba(bt_gguf_writer_t *w)
{
    bt_gguf_writer_set_str(w, "general.architecture", "mamba");
}

static void set_heads_5(bt_gguf_writer_t *w)
{
    bt_gguf_writer_set_u32(w, "llama.attention.head_count", 5);
}

static void set_kv_heads_3(bt_gguf_writer_t *w)
{
    bt_gguf_writer_set_u32(w, "llama.attention.head_count_kv", 3);
}

static void set_vocab_500(bt_gguf_writer_t *w)
{
    bt_gguf_writer_set_u32(w, "llama.vocab_size", 500);
}

static void set_rope_dims_8(bt_gguf_writer_t *w)
{
    bt_gguf_writer_set_u32(w, "llama.rope.dimension_count", 8);
}

static void set_dim_negative(bt_gguf_writer_t *w)
{
    bt_gguf_writer_set_i32(w, "llama.embedding_length", -64);
}

/* The most layers a block count may name: far more than the file's tensors. */
static void set_layers_huge(bt_gguf_writer_t *w)
{
    bt_gguf_writer_set_u32(w, "llama.block_count", 1 << 24);
}

static void set_yarn(bt_gguf_writer_t *w)
{
    bt_gguf_writer_set_str(w, "llama.rope.scaling.type", "yarn");
}

static void test_model_bad_metadata(void **state)
{
    edit_t e = {.extra = set_arch_mamba};
    assert_int_equal(load_edited(&e, NULL), BT_ERR_UNSUPPORTED);
    e = (edit_t){.skip_key = "general.architecture"};
    assert_int_equal(load_edited(&e, NULL), BT_ERR_FORMAT);
    e = (edit_t){.skip_key = "llama.block_count"};
    assert_int_equal(load_edited(&e, NULL), BT_ERR_FORMAT);
    e = (edit_t){.extra = set_heads_5};
    assert_int_equal(load_edited(&e, NULL), BT_ERR_FORMAT);
    e = (edit_t){.extra = set_kv_heads_3};
    assert_int_equal(load_edited(&e, NULL), BT_ERR_FORMAT);
    e = (edit_t){.extra = set_vocab_500};
    assert_int_equal(load_edited(&e, NULL), BT_ERR_FORMAT);
    e = (edit_t){.extra = set_rope_dims_8};
    assert_int_equal(load_edited(&e, NULL), BT_ERR_UNSUPPORTED);
    e = (edit_t){.extra = set_dim_negative};
    assert_int_equal(load_edited(&e, NULL), BT_ERR_FORMAT);
    e = (edit_t){.extra = set_yarn};
    assert_int_equal(load_edited(&e, NULL), BT_ERR_UNSUPPORTED);
    e = (edit_t){.extra = set_layers_huge}; /* refused before any array is sized by it */
    assert_int_equal(load_edited(&e, NULL), BT_ERR_FORMAT);
}

/* A tensor of a type baton cannot compute with (q4_0): patched into the file's record. */
static void test_model_unknown_tensor_type(void **state)
{
    char path[512];
    make_tiny(path, sizeof path);
    size_t len;
    char *file = bt_test_read_file(path, &len);
    assert_non_null(file);
    const char *name = "blk.0.attn_q.weight";
    char *at = memmem(file, len, name, strlen(name));
    assert_non_null(at);
    uint32_t q4_0 = 2;
    memcpy(at + strlen(name) + 4 + 2 * 8, &q4_0, 4); /* after n_dims and two dims */
    write_bytes(path, file, len);
    bt_model_t *m;
    assert_int_equal(load(path, NULL, &m), BT_ERR_UNSUPPORTED);
    free(file);
    unlink(path);
}

static void test_model_tied_output(void **state)
{
    edit_t e = {.skip_tensor = "output.weight"};
    bt_model_t *m;
    assert_int_equal(load_edited(&e, &m), BT_OK);
    assert_int_equal(m->hp.tied_output, 1);
    assert_ptr_equal(m->output.data, m->tok_embd.data);
    assert_int_equal(m->output.rows, 512);
    bt_model_destroy(m);
}

static uint16_t half_norm[64];

static void add_f16_norm(bt_gguf_writer_t *w)
{
    for (int i = 0; i < 64; i++)
        half_norm[i] = bt_f32_to_fp16(0.5f + (float)i / 64);
    int64_t ne[1] = {64};
    bt_gguf_writer_add_tensor(w, "output_norm.weight", BT_TYPE_F16, 1, ne, half_norm);
}

static void add_bf16_norm(bt_gguf_writer_t *w)
{
    for (int i = 0; i < 64; i++)
        half_norm[i] = bt_f32_to_bf16(0.5f + (float)i / 64);
    int64_t ne[1] = {64};
    bt_gguf_writer_add_tensor(w, "blk.1.ffn_norm.weight", BT_TYPE_BF16, 1, ne, half_norm);
}

static bt_block_q8_0_t q8_norm[2];

static void add_q8_norm(bt_gguf_writer_t *w)
{
    int64_t ne[1] = {64};
    bt_gguf_writer_add_tensor(w, "output_norm.weight", BT_TYPE_Q8_0, 1, ne, q8_norm);
}

static void test_model_half_norms_converted(void **state)
{
    edit_t e = {.skip_tensor = "output_norm.weight", .extra = add_f16_norm};
    bt_model_t *m;
    assert_int_equal(load_edited(&e, &m), BT_OK);
    for (int i = 0; i < 64; i++)
        assert_true(m->out_norm[i] == 0.5f + (float)i / 64);
    bt_model_destroy(m);
    e = (edit_t){.skip_tensor = "blk.1.ffn_norm.weight", .extra = add_bf16_norm};
    assert_int_equal(load_edited(&e, &m), BT_OK);
    for (int i = 0; i < 64; i++)
        assert_true(m->layers[1].ffn_norm[i] == bt_bf16_to_f32(bt_f32_to_bf16(0.5f + i / 64.f)));
    bt_model_destroy(m);
    e = (edit_t){.skip_tensor = "output_norm.weight", .extra = add_q8_norm};
    assert_int_equal(load_edited(&e, NULL), BT_ERR_FORMAT);
}

/* --- RoPE scaling --------------------------------------------------------------------------- */

static double base_freq(int i)
{
    return pow(10000.0, -2.0 * i / 16); /* tiny: head_dim 16 */
}

static void set_linear_4(bt_gguf_writer_t *w)
{
    bt_gguf_writer_set_str(w, "llama.rope.scaling.type", "linear");
    bt_gguf_writer_set_f32(w, "llama.rope.scaling.factor", 4.0f);
}

static void set_llama3(bt_gguf_writer_t *w)
{
    bt_gguf_writer_set_str(w, "llama.rope.scaling.type", "llama3");
    bt_gguf_writer_set_f32(w, "llama.rope.scaling.factor", 8.0f);
    bt_gguf_writer_set_f32(w, "llama.rope.scaling.low_freq_factor", 1.0f);
    bt_gguf_writer_set_f32(w, "llama.rope.scaling.high_freq_factor", 4.0f);
    bt_gguf_writer_set_u32(w, "llama.rope.scaling.original_context_length", 8192);
}

static float rope_factors[8];

static void add_rope_freqs(bt_gguf_writer_t *w)
{
    int64_t ne[1] = {8};
    bt_gguf_writer_add_tensor(w, "rope_freqs.weight", BT_TYPE_F32, 1, ne, rope_factors);
}

static void test_model_rope_linear(void **state)
{
    edit_t e = {.extra = set_linear_4};
    bt_model_t *m;
    assert_int_equal(load_edited(&e, &m), BT_OK);
    assert_int_equal(m->hp.rope_scaling, BT_ROPE_SCALING_LINEAR);
    assert_true(m->hp.rope_scale == 4.0f);
    for (int i = 0; i < 8; i++)
        assert_true(m->rope_inv_freq[i] == (float)(base_freq(i) / 4));
    bt_model_destroy(m);
}

static void test_model_rope_llama3_metadata(void **state)
{
    edit_t e = {.extra = set_llama3};
    bt_model_t *m;
    assert_int_equal(load_edited(&e, &m), BT_OK);
    assert_int_equal(m->hp.rope_scaling, BT_ROPE_SCALING_LLAMA3);
    int n_kept = 0, n_divided = 0, n_smoothed = 0;
    for (int i = 0; i < 8; i++) {
        /* Meta's apply_scaling: wavelengths below 8192/4 kept, above 8192/1 divided by 8. */
        double f = base_freq(i), wavelen = 2 * M_PI / f, want;
        if (wavelen < 2048) {
            want = f;
            n_kept++;
        } else if (wavelen > 8192) {
            want = f / 8;
            n_divided++;
        } else {
            double smooth = (8192 / wavelen - 1) / 3;
            want = (1 - smooth) * f / 8 + smooth * f;
            n_smoothed++;
        }
        assert_true(fabs(m->rope_inv_freq[i] - want) <= 1e-6 * want);
    }
    assert_true(n_kept > 0 && n_divided > 0 && n_smoothed > 0);
    bt_model_destroy(m);
}

static void test_model_rope_freqs_tensor(void **state)
{
    for (int i = 0; i < 8; i++)
        rope_factors[i] = (float)(i + 1);
    edit_t e = {.extra = add_rope_freqs};
    bt_model_t *m;
    assert_int_equal(load_edited(&e, &m), BT_OK);
    assert_int_equal(m->hp.rope_scaling, BT_ROPE_SCALING_LLAMA3);
    for (int i = 0; i < 8; i++)
        assert_true(m->rope_inv_freq[i] == (float)(base_freq(i) / (i + 1)));
    bt_model_destroy(m);
    rope_factors[3] = 0.0f; /* a factor that would divide by zero */
    assert_int_equal(load_edited(&e, NULL), BT_ERR_FORMAT);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_model_stories_gguf),
        cmocka_unit_test(test_model_stories_bin),
        cmocka_unit_test(test_model_tiny_random_f16),
        cmocka_unit_test(test_model_gguf_and_bin_identical),
        cmocka_unit_test(test_model_bin_size_checked),
        cmocka_unit_test(test_model_alloc_faults),
        cmocka_unit_test(test_model_tiny_generated),
        cmocka_unit_test(test_model_contradictory_shapes),
        cmocka_unit_test(test_model_bad_metadata),
        cmocka_unit_test(test_model_unknown_tensor_type),
        cmocka_unit_test(test_model_tied_output),
        cmocka_unit_test(test_model_half_norms_converted),
        cmocka_unit_test(test_model_rope_linear),
        cmocka_unit_test(test_model_rope_llama3_metadata),
        cmocka_unit_test(test_model_rope_freqs_tensor),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
