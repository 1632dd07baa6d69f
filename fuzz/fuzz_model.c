/* SPDX-License-Identifier: MIT */
/*
 * fuzz_model.c - a model file from outside: GGUF (or llama2.c) bytes loaded as a daemon loads
 * one, then used.
 *
 * The bytes go through bt_gguf_open_memory (every key, value and tensor walked) and, written
 * to a memory file, through bt_model_load, the daemons' loader: GGUF or llama2.c detected from
 * the first bytes, hyperparameters, tensor shapes and types, the vocabulary. A model that
 * loads is used: a prompt is encoded and detokenized, and one two-token forward runs on the
 * CPU backend with the model's own shapes. Properties: the walk stays inside the input (the
 * sanitizers see to that), a loaded model's tensors have the shapes its hyperparameters say,
 * the tokenizer's ids are in the vocabulary, and the forward's logits are numbers or infinities
 * (a corrupt weight may be NaN; a crash or an out-of-bounds read never is).
 */
#include <string.h>
#include <unistd.h>

#include "common/engine.h"
#include "common/gguf.h"
#include "common/model.h"
#include "common/status.h"
#include "common/tokenizer.h"
#include "fuzz.h"

static fuzz_file_t g_file; /* the input */
static fuzz_file_t g_tok;  /* a llama2.c tokenizer of 512 tokens, for llama2.c checkpoints */

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_quiet_log();
    fuzz_file_open(&g_file, "baton-fuzz-model");
    fuzz_file_open(&g_tok, "baton-fuzz-tokenizer");
    FILE *f = fdopen(dup(g_tok.fd), "wb");
    int32_t max_len = 16;
    fwrite(&max_len, 4, 1, f);
    for (int i = 0; i < 512; i++) {
        char piece[16];
        int32_t len =
            i < 3 ? snprintf(piece, sizeof piece, "%s", (const char *[]){"<unk>", "<s>", "</s>"}[i])
            : i < 259 ? snprintf(piece, sizeof piece, "<0x%02X>", i - 3)
                      : snprintf(piece, sizeof piece, "t%d", i);
        float score = -(float)i;
        fwrite(&score, 4, 1, f);
        fwrite(&len, 4, 1, f);
        fwrite(piece, 1, (size_t)len, f);
    }
    fclose(f);
    return 0;
}

static void walk_gguf(const uint8_t *data, size_t size)
{
    bt_gguf_t *g = NULL;
    if (bt_gguf_open_memory(data, size, &g) != BT_OK)
        return;
    for (int64_t i = 0; i < bt_gguf_n_kv(g); i++) {
        bt_gguf_kv_t kv;
        FUZZ_CHECK(bt_gguf_kv_at(g, i, &kv) == BT_OK, "kv %lld", (long long)i);
        char key[256];
        snprintf(key, sizeof key, "%.*s", (int)kv.key_len, kv.key);
        const char *s;
        size_t len;
        uint32_t u;
        int64_t v;
        float f;
        int b;
        bt_gguf_get_u32(g, key, &u);
        bt_gguf_get_i64(g, key, &v);
        bt_gguf_get_f32(g, key, &f);
        bt_gguf_get_bool(g, key, &b);
        bt_gguf_get_str(g, key, &s, &len);
        if (kv.type == BT_GGUF_ARRAY && kv.elem_type == BT_GGUF_STRING && kv.n)
            bt_gguf_get_arr_str(g, key, kv.n - 1, &s, &len);
    }
    for (int64_t i = 0; i < bt_gguf_n_tensors(g); i++) {
        bt_gguf_tensor_t t;
        FUZZ_CHECK(bt_gguf_tensor_at(g, i, &t) == BT_OK, "tensor %lld", (long long)i);
        FUZZ_CHECK(t.n_dims >= 1 && t.n_dims <= 4, "%d dims", t.n_dims);
        if (t.size_bytes) {
            const uint8_t *p = t.data;
            FUZZ_CHECK(p >= data && p + t.size_bytes <= data + size, "tensor %lld outside",
                       (long long)i);
        }
    }
    bt_tokenizer_t *tok = NULL;
    if (bt_tokenizer_from_gguf(g, &tok) == BT_OK)
        bt_tokenizer_destroy(tok);
    bt_gguf_close(g);
}

static void check_tensor(const bt_tensor_t *t, int64_t rows, int64_t cols, const char *what)
{
    FUZZ_CHECK(t->rows == rows && t->cols == cols && t->data, "%s is %lldx%lld, not %lldx%lld",
               what, (long long)t->rows, (long long)t->cols, (long long)rows, (long long)cols);
}

static void use_model(const bt_model_t *m)
{
    const bt_model_hparams_t *hp = &m->hp;
    FUZZ_CHECK(hp->n_vocab > 0 && hp->dim > 0 && hp->n_layers > 0 && hp->n_heads > 0 &&
                   hp->n_kv_heads > 0 && hp->n_heads % hp->n_kv_heads == 0 && hp->ffn_dim > 0 &&
                   hp->head_dim * hp->n_heads == hp->dim,
               "hyperparameters");
    check_tensor(&m->tok_embd, hp->n_vocab, hp->dim, "token_embd");
    check_tensor(&m->output, hp->n_vocab, hp->dim, "output");
    int64_t q = (int64_t)hp->n_heads * hp->head_dim, kv = (int64_t)hp->n_kv_heads * hp->head_dim;
    for (int32_t l = 0; l < hp->n_layers; l++) {
        const bt_layer_weights_t *w = &m->layers[l];
        check_tensor(&w->wq, q, hp->dim, "wq");
        check_tensor(&w->wk, kv, hp->dim, "wk");
        check_tensor(&w->wv, kv, hp->dim, "wv");
        check_tensor(&w->wo, hp->dim, q, "wo");
        check_tensor(&w->w_gate, hp->ffn_dim, hp->dim, "w_gate");
        check_tensor(&w->w_up, hp->ffn_dim, hp->dim, "w_up");
        check_tensor(&w->w_down, hp->dim, hp->ffn_dim, "w_down");
    }
    FUZZ_CHECK(m->tok && bt_tokenizer_n_vocab(m->tok) == hp->n_vocab, "vocabulary of %d for %d",
               m->tok ? bt_tokenizer_n_vocab(m->tok) : -1, hp->n_vocab);

    int32_t ids[64], n = 0;
    static const char text[] = "Hello world, \xc3\xa9t\xc3\xa9 <s> 12345 \xf0\x9f\x99\x82";
    int st = bt_tokenizer_encode(m->tok, text, sizeof text - 1, 1, 0, ids, 64, &n);
    FUZZ_CHECK(st == BT_OK || st == BT_ERR_NOSPACE, "encode: %d", st);
    n = n < 64 ? n : 64;
    bt_detok_t d;
    bt_detok_init(&d, m->tok);
    char out[4096];
    size_t cap = bt_detok_max_bytes(m->tok);
    cap = cap < sizeof out ? cap : sizeof out;
    for (int32_t i = 0; i < n; i++) {
        FUZZ_CHECK(ids[i] >= 0 && ids[i] < hp->n_vocab, "id %d", ids[i]);
        FUZZ_CHECK(bt_detok_push(&d, ids[i], out, cap) <= cap, "detok");
    }
    bt_detok_flush(&d, out, sizeof out);

    /* Models this small only: the fuzzer's inputs are, and a forward is for catching layout
     * mistakes, not for speed. */
    if ((int64_t)hp->dim * hp->n_vocab > (1 << 22) || (int64_t)hp->ffn_dim * hp->dim > (1 << 22))
        return;
    bt_engine_params_t ep = {.n_threads = 1,
                             .max_batch_tokens = 8,
                             .max_seqs = 1,
                             .block_size = 4,
                             .kv_budget_bytes = 0};
    bt_engine_t *e = NULL;
    if (bt_engine_create(m, &ep, &e) != BT_OK)
        return;
    bt_kv_seq_t seq;
    if (bt_kv_seq_init(&seq, bt_engine_kv_pool(e), 8) == BT_OK) {
        int32_t toks[2] = {0, hp->n_vocab - 1};
        float *logits = malloc((size_t)2 * hp->n_vocab * sizeof(float));
        bt_batch_seq_t b = {.kv = &seq, .tokens = toks, .n_tokens = 2, .logits = BT_LOGITS_ALL};
        if (logits && bt_engine_forward(e, &b, 1, logits) == BT_OK)
            FUZZ_CHECK(seq.n_tokens == 2, "the sequence holds %d tokens", seq.n_tokens);
        free(logits);
        bt_kv_seq_fini(&seq, bt_engine_kv_pool(e));
    }
    bt_engine_destroy(e);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    walk_gguf(data, size);
    bt_model_hparams_t hp;
    bt_model_llama2c_header(data, size, "fuzz", &hp);

    fuzz_file_set(&g_file, data, size);
    bt_model_params_t mp = {.path = g_file.path, .tokenizer_path = g_tok.path};
    bt_model_t *m = NULL;
    if (bt_model_load(&mp, &m) == BT_OK) {
        use_model(m);
        bt_model_destroy(m);
    }
    return 0;
}
