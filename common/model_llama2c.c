/* SPDX-License-Identifier: MIT */
/*
 * model_llama2c.c - llama2.c checkpoints (the legacy "version 0" export read by run.c).
 *
 * The one thing to know: the format has no magic and no per-tensor records, only seven int32
 * and then the f32 weights back to back in a fixed order, so the only defence against a wrong
 * or damaged file is the size: the header parser computes, with overflow checks, exactly how
 * many bytes the header implies and refuses any file that is not that long. The layout is the
 * one run.c's memory_map_weights reads: token_embedding, rms_att, wq, wk, wv, wo, rms_ffn, w1
 * (gate), w2 (down), w3 (up), rms_final, freq_cis_real and freq_cis_imag (unused: RoPE tables
 * are computed), then wcls when the classifier is not shared. Every matrix is row-major with
 * output features as rows, as ggml lays them out, so the views need no copying.
 */
#include <stdio.h>
#include <string.h>

#include "log.h"
#include "model.h"
#include "status.h"

#define L2C_HEADER_INTS 7
#define L2C_HEADER_BYTES (L2C_HEADER_INTS * 4)
#define L2C_MAX_DIM (1 << 20)           /* beyond any real model; keeps all products in 64 bits */
#define L2C_VERSIONED_MAGIC 0x616b3432u /* "ak42": llama2.c export versions 1 and 2 */

typedef struct {
    int32_t dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len;
} l2c_header_t;

static int check_header(const l2c_header_t *h, const char *path)
{
    int64_t vocab = h->vocab_size < 0 ? -(int64_t)h->vocab_size : h->vocab_size; /* INT32_MIN too */
    const char *why = NULL;
    if (h->dim <= 0 || h->hidden_dim <= 0 || h->n_layers <= 0 || h->n_heads <= 0 ||
        h->n_kv_heads <= 0 || h->vocab_size == 0 || h->vocab_size == INT32_MIN || h->seq_len <= 0)
        why = "a size is zero or negative";
    else if (h->dim > L2C_MAX_DIM || h->hidden_dim > L2C_MAX_DIM || h->n_layers > 4096 ||
             vocab > L2C_MAX_DIM * 16 || h->seq_len > L2C_MAX_DIM * 16)
        why = "a size is beyond any real model";
    else if (h->dim % h->n_heads != 0 || (h->dim / h->n_heads) % 2 != 0)
        why = "dim is not n_heads times an even head size";
    else if (h->n_heads % h->n_kv_heads != 0)
        why = "n_kv_heads does not divide n_heads";
    if (why) {
        bt_error("llama2.c checkpoint %s: bad header (dim %d, hidden %d, layers %d, heads %d, "
                 "kv heads %d, vocab %d, seq %d): %s",
                 path, h->dim, h->hidden_dim, h->n_layers, h->n_heads, h->n_kv_heads, h->vocab_size,
                 h->seq_len, why);
        return BT_ERR_FORMAT;
    }
    return BT_OK;
}

/* Floats the weights take; the header is checked, so every term fits comfortably in 64 bits. */
static uint64_t weight_floats(const l2c_header_t *h)
{
    uint64_t dim = (uint64_t)h->dim, hidden = (uint64_t)h->hidden_dim;
    uint64_t layers = (uint64_t)h->n_layers, head = dim / (uint64_t)h->n_heads;
    uint64_t kv_dim = head * (uint64_t)h->n_kv_heads;
    uint64_t vocab = (uint64_t)(h->vocab_size < 0 ? -(int64_t)h->vocab_size : h->vocab_size);
    uint64_t n = vocab * dim;                                   /* token_embedding */
    n += layers * (2 * dim + 2 * dim * dim + 2 * dim * kv_dim); /* norms, wq, wo, wk, wv */
    n += layers * 3 * dim * hidden;                             /* w1, w2, w3 */
    n += dim + (uint64_t)h->seq_len * head;                     /* rms_final, freq_cis */
    if (h->vocab_size < 0)
        n += vocab * dim; /* wcls */
    return n;
}

int bt_model_llama2c_header(const void *data, size_t size_bytes, const char *path,
                            bt_model_hparams_t *hp)
{
    l2c_header_t h;
    if (size_bytes < L2C_HEADER_BYTES) {
        bt_error("llama2.c checkpoint %s: %zu bytes is shorter than the %d-byte header", path,
                 size_bytes, L2C_HEADER_BYTES);
        return BT_ERR_FORMAT;
    }
    memcpy(&h, data, L2C_HEADER_BYTES);
    if ((uint32_t)h.dim == L2C_VERSIONED_MAGIC) {
        bt_error("llama2.c checkpoint %s: export versions 1/2 ('ak42' header) are not "
                 "supported; export with version 0 or convert to GGUF",
                 path);
        return BT_ERR_UNSUPPORTED;
    }
    int st = check_header(&h, path);
    if (st != BT_OK)
        return st;
    uint64_t want = L2C_HEADER_BYTES + weight_floats(&h) * 4;
    if (want != size_bytes) {
        bt_error("llama2.c checkpoint %s: the header implies %llu bytes but the file has %zu "
                 "(truncated, or not a llama2.c checkpoint)",
                 path, (unsigned long long)want, size_bytes);
        return BT_ERR_FORMAT;
    }
    memset(hp, 0, sizeof *hp);
    strcpy(hp->arch, "llama");
    hp->n_vocab = h.vocab_size < 0 ? -h.vocab_size : h.vocab_size;
    hp->dim = h.dim;
    hp->n_layers = h.n_layers;
    hp->n_heads = h.n_heads;
    hp->n_kv_heads = h.n_kv_heads;
    hp->head_dim = h.dim / h.n_heads;
    hp->ffn_dim = h.hidden_dim;
    hp->n_ctx_train = h.seq_len;
    hp->norm_eps = 1e-5f; /* run.c's rmsnorm */
    hp->rope_theta = 10000.0f;
    hp->rope_scaling = BT_ROPE_SCALING_NONE;
    hp->rope_scale = 1.0f;
    hp->tied_output = h.vocab_size > 0;
    hp->weight_type = BT_TYPE_F32;
    return BT_OK;
}

static bt_tensor_t matrix(const float *p, int64_t rows, int64_t cols)
{
    return (bt_tensor_t){.type = BT_TYPE_F32, .rows = rows, .cols = cols, .data = p};
}

void bt_model_llama2c_weights(const void *data, bt_model_t *m)
{
    const bt_model_hparams_t *hp = &m->hp;
    const int64_t dim = hp->dim, ffn = hp->ffn_dim, n_layers = hp->n_layers;
    const int64_t q_dim = (int64_t)hp->n_heads * hp->head_dim;
    const int64_t kv_dim = (int64_t)hp->n_kv_heads * hp->head_dim;
    const float *p = (const float *)((const char *)data + L2C_HEADER_BYTES);

    m->tok_embd = matrix(p, hp->n_vocab, dim);
    p += (int64_t)hp->n_vocab * dim;
    /* Each weight kind is stored for all layers at once: walk kind by kind. */
    for (int64_t l = 0; l < n_layers; l++)
        m->layers[l].attn_norm = p + l * dim;
    p += n_layers * dim;
    for (int64_t l = 0; l < n_layers; l++)
        m->layers[l].wq = matrix(p + l * q_dim * dim, q_dim, dim);
    p += n_layers * q_dim * dim;
    for (int64_t l = 0; l < n_layers; l++)
        m->layers[l].wk = matrix(p + l * kv_dim * dim, kv_dim, dim);
    p += n_layers * kv_dim * dim;
    for (int64_t l = 0; l < n_layers; l++)
        m->layers[l].wv = matrix(p + l * kv_dim * dim, kv_dim, dim);
    p += n_layers * kv_dim * dim;
    for (int64_t l = 0; l < n_layers; l++)
        m->layers[l].wo = matrix(p + l * dim * q_dim, dim, q_dim);
    p += n_layers * dim * q_dim;
    for (int64_t l = 0; l < n_layers; l++)
        m->layers[l].ffn_norm = p + l * dim;
    p += n_layers * dim;
    for (int64_t l = 0; l < n_layers; l++)
        m->layers[l].w_gate = matrix(p + l * ffn * dim, ffn, dim); /* w1 */
    p += n_layers * ffn * dim;
    for (int64_t l = 0; l < n_layers; l++)
        m->layers[l].w_down = matrix(p + l * dim * ffn, dim, ffn); /* w2 */
    p += n_layers * dim * ffn;
    for (int64_t l = 0; l < n_layers; l++)
        m->layers[l].w_up = matrix(p + l * ffn * dim, ffn, dim); /* w3 */
    p += n_layers * ffn * dim;
    m->out_norm = p;
    p += dim;
    p += (int64_t)hp->n_ctx_train * hp->head_dim; /* freq_cis_real and _imag, half each */
    m->output = hp->tied_output ? m->tok_embd : matrix(p, hp->n_vocab, dim);
}
