/* SPDX-License-Identifier: MIT */
/*
 * model.c - loads a Llama model from GGUF (llama.cpp names and layout) or a llama2.c checkpoint.
 *
 * The one thing to know: nothing in a file is trusted. The GGUF reader has already checked
 * that every tensor lies inside the file; this loader checks that the metadata describes a
 * Llama model it can run and that every tensor it uses has exactly the shape and a type the
 * metadata implies (ggml's ne[0] is the number of columns, the input features). A model whose
 * parts contradict each other is refused with BT_ERR_FORMAT before anything computes with it.
 * Weights are borrowed from the mapping; only norms stored as f16/bf16 and the RoPE frequency
 * table are owned copies.
 */
#include "model.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../kernels/fp16.h"
#include "alloc.h"
#include "gguf.h"
#include "log.h"
#include "modelid.h"
#include "status.h"

#define MODEL_MAX_DIM (1 << 24) /* caps every hyperparameter well below int32 overflow */

struct bt_model_impl {
    bt_gguf_t *gguf; /* GGUF models: owns the mapping */
    void *map;       /* llama2.c checkpoints: the mapping */
    size_t map_bytes;
    float *norms; /* (2 * n_layers + 1, dim) f32 copies of norms not stored as f32 */
};

/* llama3 RoPE scaling parameters (Meta's apply_scaling), used when no rope_freqs tensor. */
typedef struct {
    float factor, low_freq_factor, high_freq_factor;
    float orig_ctx;
} llama3_rope_t;

/* --- files -------------------------------------------------------------------------------- */

static int read_magic(const char *path, char magic[4])
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        bt_error("model %s: cannot open: %s", path, strerror(errno));
        return BT_ERR_IO;
    }
    ssize_t n = read(fd, magic, 4);
    int err = errno;
    close(fd);
    if (n < 0) {
        bt_error("model %s: cannot read: %s", path, strerror(err));
        return BT_ERR_IO;
    }
    if (n < 4)
        memset(magic + n, 0, (size_t)(4 - n));
    return BT_OK;
}

static int map_file(const char *path, void **map, size_t *size_bytes)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        bt_error("model %s: cannot open: %s", path, strerror(errno));
        return BT_ERR_IO;
    }
    struct stat sb;
    int st = BT_OK;
    if (fstat(fd, &sb) != 0) {
        bt_error("model %s: cannot stat: %s", path, strerror(errno));
        st = BT_ERR_IO;
    } else if (sb.st_size == 0) {
        bt_error("model %s: the file is empty", path);
        st = BT_ERR_FORMAT;
    } else {
        void *p = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (p == MAP_FAILED) {
            bt_error("model %s: cannot map: %s", path, strerror(errno));
            st = BT_ERR_IO;
        } else {
            *map = p;
            *size_bytes = (size_t)sb.st_size;
        }
    }
    close(fd);
    return st;
}

static void set_name(bt_model_hparams_t *hp, const char *name, size_t len)
{
    if (len >= sizeof hp->name)
        len = sizeof hp->name - 1;
    memcpy(hp->name, name, len);
    hp->name[len] = 0;
}

static void set_name_from_path(bt_model_hparams_t *hp, const char *path)
{
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    set_name(hp, base, strlen(base));
}

/* --- GGUF metadata ------------------------------------------------------------------------ */

/* A positive integer hyperparameter; def < 0 makes it required. */
static int get_dim(const bt_gguf_t *g, const char *path, const char *key, int64_t def, int32_t *out)
{
    int64_t v;
    int st = bt_gguf_get_i64(g, key, &v);
    if (st == BT_ERR_NOT_FOUND && def >= 0) {
        *out = (int32_t)def;
        return BT_OK;
    }
    if (st == BT_ERR_NOT_FOUND) {
        bt_error("model %s: required key %s is missing", path, key);
        return BT_ERR_FORMAT;
    }
    if (st != BT_OK || v <= 0 || v > MODEL_MAX_DIM) {
        bt_error("model %s: %s must be an integer in [1, %d]", path, key, MODEL_MAX_DIM);
        return BT_ERR_FORMAT;
    }
    *out = (int32_t)v;
    return BT_OK;
}

/* A positive finite float hyperparameter with a default. */
static int get_pos_f32(const bt_gguf_t *g, const char *path, const char *key, float def, float *out)
{
    int st = bt_gguf_get_f32(g, key, out);
    if (st == BT_ERR_NOT_FOUND) {
        *out = def;
        return BT_OK;
    }
    if (st != BT_OK || !(*out > 0.0f) || !isfinite(*out)) {
        bt_error("model %s: %s must be a positive finite float", path, key);
        return BT_ERR_FORMAT;
    }
    return BT_OK;
}

static int check_heads(const char *path, bt_model_hparams_t *hp, int32_t rope_dims)
{
    const char *why = NULL;
    if (hp->dim % hp->n_heads != 0 || (hp->dim / hp->n_heads) % 2 != 0)
        why = "embedding_length is not head_count times an even head size";
    else if (hp->n_heads % hp->n_kv_heads != 0)
        why = "head_count_kv does not divide head_count";
    if (why) {
        bt_error("model %s: %s (dim %d, heads %d, kv heads %d)", path, why, hp->dim, hp->n_heads,
                 hp->n_kv_heads);
        return BT_ERR_FORMAT;
    }
    hp->head_dim = hp->dim / hp->n_heads;
    if (rope_dims != hp->head_dim) {
        bt_error("model %s: rope.dimension_count %d differs from the head size %d (partial "
                 "rotary embeddings are not supported)",
                 path, rope_dims, hp->head_dim);
        return BT_ERR_UNSUPPORTED;
    }
    return BT_OK;
}

static int read_hparams(const bt_gguf_t *g, const char *path, bt_model_hparams_t *hp)
{
    int32_t rope_dims = 0;
    int st = bt_model_id_read_name(g, path, hp);
    if (st == BT_OK)
        st = get_dim(g, path, "llama.embedding_length", -1, &hp->dim);
    if (st == BT_OK)
        st = get_dim(g, path, "llama.block_count", -1, &hp->n_layers);
    if (st == BT_OK)
        st = get_dim(g, path, "llama.attention.head_count", -1, &hp->n_heads);
    if (st == BT_OK)
        st = get_dim(g, path, "llama.attention.head_count_kv", hp->n_heads, &hp->n_kv_heads);
    if (st == BT_OK)
        st = get_dim(g, path, "llama.feed_forward_length", -1, &hp->ffn_dim);
    if (st == BT_OK)
        st = get_dim(g, path, "llama.context_length", -1, &hp->n_ctx_train);
    if (st == BT_OK)
        st = get_pos_f32(g, path, "llama.attention.layer_norm_rms_epsilon", 1e-5f, &hp->norm_eps);
    if (st == BT_OK)
        st = get_pos_f32(g, path, "llama.rope.freq_base", 10000.0f, &hp->rope_theta);
    if (st == BT_OK && hp->dim % hp->n_heads == 0)
        st = get_dim(g, path, "llama.rope.dimension_count", hp->dim / hp->n_heads, &rope_dims);
    if (st == BT_OK)
        st = check_heads(path, hp, rope_dims);
    return st;
}

static int read_llama3(const bt_gguf_t *g, const char *path, llama3_rope_t *l3)
{
    int st = get_pos_f32(g, path, "llama.rope.scaling.low_freq_factor", 1.0f, &l3->low_freq_factor);
    if (st == BT_OK)
        st = get_pos_f32(g, path, "llama.rope.scaling.high_freq_factor", 4.0f,
                         &l3->high_freq_factor);
    int32_t orig_ctx = 0;
    if (st == BT_OK)
        st = get_dim(g, path, "llama.rope.scaling.original_context_length", 8192, &orig_ctx);
    l3->orig_ctx = (float)orig_ctx;
    if (st == BT_OK && !(l3->high_freq_factor > l3->low_freq_factor)) {
        bt_error("model %s: llama3 rope scaling needs high_freq_factor > low_freq_factor", path);
        st = BT_ERR_FORMAT;
    }
    return st;
}

/* Reads llama.rope.scaling.* into hp and *l3. As in llama.cpp, a factor without a type means
 * linear scaling, and the older key rope.scale_linear stands in for a missing factor. The
 * llama3 type and its low/high_freq_factor and original_context_length keys are baton's own;
 * llama.cpp files carry llama3 scaling as a rope_freqs.weight tensor instead. */
static int read_rope_scaling(const bt_gguf_t *g, const char *path, bt_model_hparams_t *hp,
                             llama3_rope_t *l3)
{
    const char *type = "linear";
    size_t len = 6;
    float factor = 1.0f;
    int st = bt_gguf_get_f32(g, "llama.rope.scaling.factor", &factor) == BT_ERR_NOT_FOUND
                 ? get_pos_f32(g, path, "llama.rope.scale_linear", 1.0f, &factor)
                 : get_pos_f32(g, path, "llama.rope.scaling.factor", 1.0f, &factor);
    if (st != BT_OK)
        return st;
    if (bt_gguf_get_str(g, "llama.rope.scaling.type", &type, &len) == BT_ERR_FORMAT) {
        bt_error("model %s: llama.rope.scaling.type is not a string", path);
        return BT_ERR_FORMAT;
    }
    hp->rope_scale = factor;
    hp->rope_scaling = BT_ROPE_SCALING_NONE;
    if (len == 4 && memcmp(type, "none", 4) == 0) {
        hp->rope_scale = 1.0f;
    } else if (len == 6 && memcmp(type, "linear", 6) == 0) {
        if (factor != 1.0f)
            hp->rope_scaling = BT_ROPE_SCALING_LINEAR;
    } else if (len == 6 && memcmp(type, "llama3", 6) == 0) {
        hp->rope_scaling = BT_ROPE_SCALING_LLAMA3;
        l3->factor = factor;
        st = read_llama3(g, path, l3);
    } else {
        bt_error("model %s: rope scaling '%.*s' is not supported (none, linear, llama3)", path,
                 (int)(len > 64 ? 64 : len), type);
        st = BT_ERR_UNSUPPORTED;
    }
    return st;
}

/* --- GGUF tensors ------------------------------------------------------------------------- */

/* Finds a tensor that must be there with shape [ne0, ne1] and a type baton computes with. */
static int find_checked(const bt_gguf_t *g, const char *path, const char *name, int64_t ne0,
                        int64_t ne1, bt_gguf_tensor_t *t)
{
    if (bt_gguf_find_tensor(g, name, t) != BT_OK) {
        bt_error("model %s: tensor %s is missing", path, name);
        return BT_ERR_FORMAT;
    }
    if (t->ne[0] != ne0 || t->ne[1] != ne1 || t->ne[2] != 1 || t->ne[3] != 1) {
        bt_error("model %s: tensor %s has shape [%lld, %lld, %lld, %lld], the metadata implies "
                 "[%lld, %lld]",
                 path, name, (long long)t->ne[0], (long long)t->ne[1], (long long)t->ne[2],
                 (long long)t->ne[3], (long long)ne0, (long long)ne1);
        return BT_ERR_FORMAT;
    }
    if (!bt_type_name(t->type)) {
        bt_error("model %s: tensor %s has ggml type %d; baton computes with f32, f16, bf16 and "
                 "q8_0 only",
                 path, name, t->type);
        return BT_ERR_UNSUPPORTED;
    }
    return BT_OK;
}

/* A (rows, cols) weight matrix: ggml ne = [cols, rows]. */
static int get_matrix(const bt_gguf_t *g, const char *path, const char *name, int64_t rows,
                      int64_t cols, bt_tensor_t *out)
{
    bt_gguf_tensor_t t;
    int st = find_checked(g, path, name, cols, rows, &t);
    if (st == BT_OK)
        *out = (bt_tensor_t){.type = (bt_type_t)t.type, .rows = rows, .cols = cols, .data = t.data};
    return st;
}

/* A norm vector as f32: borrowed when stored as f32, else converted into norms slot. */
static int get_norm(bt_model_t *m, const bt_gguf_t *g, const char *path, const char *name, int slot,
                    const float **out)
{
    const int64_t dim = m->hp.dim;
    bt_gguf_tensor_t t;
    int st = find_checked(g, path, name, dim, 1, &t);
    if (st != BT_OK)
        return st;
    if (t.type == BT_TYPE_F32) {
        *out = t.data;
        return BT_OK;
    }
    if (t.type != BT_TYPE_F16 && t.type != BT_TYPE_BF16) {
        bt_error("model %s: norm %s must be f32, f16 or bf16, not %s", path, name,
                 bt_type_name(t.type));
        return BT_ERR_FORMAT;
    }
    if (!m->impl->norms) {
        m->impl->norms = bt_malloc((size_t)(2 * m->hp.n_layers + 1) * (size_t)dim * 4);
        if (!m->impl->norms)
            return BT_ERR_NOMEM;
    }
    float *dst = m->impl->norms + (size_t)slot * (size_t)dim;
    for (int64_t i = 0; i < dim; i++) {
        uint16_t h;
        memcpy(&h, (const uint8_t *)t.data + 2 * i, 2);
        dst[i] = t.type == BT_TYPE_F16 ? bt_fp16_to_f32(h) : bt_bf16_to_f32(h);
    }
    *out = dst;
    return BT_OK;
}

static int get_layer(bt_model_t *m, const bt_gguf_t *g, const char *path, int l)
{
    const bt_model_hparams_t *hp = &m->hp;
    const int64_t dim = hp->dim, ffn = hp->ffn_dim;
    const int64_t q_dim = (int64_t)hp->n_heads * hp->head_dim;
    const int64_t kv_dim = (int64_t)hp->n_kv_heads * hp->head_dim;
    bt_layer_weights_t *w = &m->layers[l];
    const struct {
        const char *name;
        bt_tensor_t *t;
        int64_t rows, cols;
    } mats[] = {
        {"attn_q", &w->wq, q_dim, dim},     {"attn_k", &w->wk, kv_dim, dim},
        {"attn_v", &w->wv, kv_dim, dim},    {"attn_output", &w->wo, dim, q_dim},
        {"ffn_gate", &w->w_gate, ffn, dim}, {"ffn_up", &w->w_up, ffn, dim},
        {"ffn_down", &w->w_down, dim, ffn},
    };
    char name[96];
    snprintf(name, sizeof name, "blk.%d.attn_norm.weight", l);
    int st = get_norm(m, g, path, name, 2 * l, &w->attn_norm);
    snprintf(name, sizeof name, "blk.%d.ffn_norm.weight", l);
    if (st == BT_OK)
        st = get_norm(m, g, path, name, 2 * l + 1, &w->ffn_norm);
    for (size_t i = 0; i < sizeof mats / sizeof mats[0] && st == BT_OK; i++) {
        snprintf(name, sizeof name, "blk.%d.%s.weight", l, mats[i].name);
        st = get_matrix(g, path, name, mats[i].rows, mats[i].cols, mats[i].t);
    }
    return st;
}

static int get_tensors(bt_model_t *m, const bt_gguf_t *g, const char *path)
{
    bt_model_hparams_t *hp = &m->hp;
    bt_gguf_tensor_t t;
    if (bt_gguf_find_tensor(g, "token_embd.weight", &t) == BT_OK && t.n_dims == 2 &&
        hp->n_vocab == 0)
        hp->n_vocab = t.ne[1] > 0 && t.ne[1] <= MODEL_MAX_DIM ? (int32_t)t.ne[1] : 0;
    int st = get_matrix(g, path, "token_embd.weight", hp->n_vocab, hp->dim, &m->tok_embd);
    if (st == BT_OK)
        st = get_norm(m, g, path, "output_norm.weight", 2 * hp->n_layers, &m->out_norm);
    for (int l = 0; l < hp->n_layers && st == BT_OK; l++)
        st = get_layer(m, g, path, l);
    if (st != BT_OK)
        return st;
    hp->tied_output = bt_gguf_find_tensor(g, "output.weight", &t) != BT_OK;
    if (hp->tied_output)
        m->output = m->tok_embd;
    else
        st = get_matrix(g, path, "output.weight", hp->n_vocab, hp->dim, &m->output);
    hp->weight_type = m->layers[0].wq.type;
    return st;
}

/* --- RoPE --------------------------------------------------------------------------------- */

/* Meta's llama3 apply_scaling for one frequency. */
static double llama3_scale(double freq, const llama3_rope_t *l3)
{
    const double pi = 3.14159265358979323846;
    double low_wavelen = l3->orig_ctx / l3->low_freq_factor;
    double high_wavelen = l3->orig_ctx / l3->high_freq_factor;
    double wavelen = 2.0 * pi / freq;
    if (wavelen < high_wavelen)
        return freq;
    if (wavelen > low_wavelen)
        return freq / l3->factor;
    double smooth = (l3->orig_ctx / wavelen - l3->low_freq_factor) /
                    (l3->high_freq_factor - l3->low_freq_factor);
    return (1.0 - smooth) * freq / l3->factor + smooth * freq;
}

/* freq_factors: rope_freqs.weight (llama.cpp divides each frequency by its factor), or NULL. */
static int make_rope(bt_model_t *m, const float *freq_factors, const llama3_rope_t *l3)
{
    const bt_model_hparams_t *hp = &m->hp;
    const int half = hp->head_dim / 2;
    m->rope_inv_freq = bt_malloc((size_t)half * sizeof *m->rope_inv_freq);
    if (!m->rope_inv_freq)
        return BT_ERR_NOMEM;
    for (int i = 0; i < half; i++) {
        /* Double precision, rounded once: closest to the float64 references. */
        double f = pow((double)hp->rope_theta, -2.0 * i / hp->head_dim);
        if (freq_factors) {
            float ff;
            memcpy(&ff, freq_factors + i, sizeof ff);
            f /= ff;
        } else if (hp->rope_scaling == BT_ROPE_SCALING_LINEAR) {
            f /= hp->rope_scale;
        } else if (hp->rope_scaling == BT_ROPE_SCALING_LLAMA3) {
            f = llama3_scale(f, l3);
        }
        m->rope_inv_freq[i] = (float)f;
    }
    return BT_OK;
}

static int get_rope_freqs(const bt_model_t *m, const bt_gguf_t *g, const char *path,
                          const float **out)
{
    bt_gguf_tensor_t t;
    *out = NULL;
    if (bt_gguf_find_tensor(g, "rope_freqs.weight", &t) != BT_OK)
        return BT_OK;
    int st = find_checked(g, path, "rope_freqs.weight", m->hp.head_dim / 2, 1, &t);
    if (st != BT_OK)
        return st;
    if (t.type != BT_TYPE_F32) {
        bt_error("model %s: rope_freqs.weight must be f32", path);
        return BT_ERR_FORMAT;
    }
    for (int64_t i = 0; i < t.ne[0]; i++) {
        float f;
        memcpy(&f, (const float *)t.data + i, sizeof f);
        if (!(f > 0.0f) || !isfinite(f)) {
            bt_error("model %s: rope_freqs.weight[%lld] = %g is not a positive factor", path,
                     (long long)i, (double)f);
            return BT_ERR_FORMAT;
        }
    }
    *out = t.data;
    return BT_OK;
}

/* --- loading ------------------------------------------------------------------------------ */

static int check_vocab(const bt_model_t *m, const char *path)
{
    int32_t n = bt_tokenizer_n_vocab(m->tok);
    if (n != m->hp.n_vocab) {
        bt_error("model %s: the tokenizer has %d tokens but the model %d", path, n, m->hp.n_vocab);
        return BT_ERR_FORMAT;
    }
    return BT_OK;
}

static int load_gguf(bt_model_t *m, const char *path)
{
    llama3_rope_t l3 = {0};
    const float *freq_factors = NULL;
    int32_t n_vocab = 0;
    int st = bt_gguf_open(path, &m->impl->gguf);
    const bt_gguf_t *g = m->impl->gguf;
    if (st == BT_OK)
        st = read_hparams(g, path, &m->hp);
    if (st == BT_OK)
        st = read_rope_scaling(g, path, &m->hp, &l3);
    if (st == BT_OK)
        st = get_dim(g, path, "llama.vocab_size", 0, &n_vocab); /* 0: from token_embd */
    if (st != BT_OK)
        return st;
    m->hp.n_vocab = n_vocab;
    /* Each layer has 9 tensors, and token_embd and output_norm are there too: a block count
     * the file cannot hold is refused before anything is sized by it. */
    int64_t need = 9 * (int64_t)m->hp.n_layers + 2, have = bt_gguf_n_tensors(g);
    if (need > have) {
        bt_error("model %s: llama.block_count %d needs at least %lld tensors; the file has %lld",
                 path, m->hp.n_layers, (long long)need, (long long)have);
        return BT_ERR_FORMAT;
    }
    m->layers = bt_calloc((size_t)m->hp.n_layers, sizeof *m->layers);
    if (!m->layers)
        return BT_ERR_NOMEM;
    if ((st = get_tensors(m, g, path)) != BT_OK ||
        (st = get_rope_freqs(m, g, path, &freq_factors)) != BT_OK)
        return st;
    if (freq_factors)
        m->hp.rope_scaling = BT_ROPE_SCALING_LLAMA3;
    if ((st = make_rope(m, freq_factors, &l3)) != BT_OK ||
        (st = bt_tokenizer_from_gguf(g, &m->tok)) != BT_OK)
        return st;
    return check_vocab(m, path);
}

static int load_llama2c(bt_model_t *m, const char *path, const char *tokenizer_path)
{
    if (!tokenizer_path) {
        bt_error("model %s: a llama2.c checkpoint needs a tokenizer file (tokenizer_path)", path);
        return BT_ERR_INVAL;
    }
    int st = map_file(path, &m->impl->map, &m->impl->map_bytes);
    if (st == BT_OK)
        st = bt_model_llama2c_header(m->impl->map, m->impl->map_bytes, path, &m->hp);
    if (st != BT_OK)
        return st;
    set_name_from_path(&m->hp, path);
    m->layers = bt_calloc((size_t)m->hp.n_layers, sizeof *m->layers);
    if (!m->layers)
        return BT_ERR_NOMEM;
    bt_model_llama2c_weights(m->impl->map, m);
    if ((st = make_rope(m, NULL, NULL)) != BT_OK ||
        (st = bt_tokenizer_from_llama2c(tokenizer_path, m->hp.n_vocab, &m->tok)) != BT_OK)
        return st;
    return check_vocab(m, path);
}

int bt_model_load(const bt_model_params_t *params, bt_model_t **out)
{
    if (!params || !params->path || !out)
        return BT_ERR_INVAL;
    char magic[4];
    int st = read_magic(params->path, magic);
    if (st != BT_OK)
        return st;
    bt_model_t *m = bt_calloc(1, sizeof *m);
    if (!m)
        return BT_ERR_NOMEM;
    m->impl = bt_calloc(1, sizeof *m->impl);
    if (!m->impl) {
        bt_free(m);
        return BT_ERR_NOMEM;
    }
    if (memcmp(magic, "GGUF", 4) == 0)
        st = load_gguf(m, params->path);
    else
        st = load_llama2c(m, params->path, params->tokenizer_path);
    if (st != BT_OK) {
        bt_model_destroy(m);
        return st;
    }
    *out = m;
    return BT_OK;
}

void bt_model_destroy(bt_model_t *m)
{
    if (!m)
        return;
    bt_tokenizer_destroy(m->tok);
    bt_free(m->rope_inv_freq);
    bt_free(m->layers);
    if (m->impl) {
        bt_free(m->impl->norms);
        bt_gguf_close(m->impl->gguf);
        if (m->impl->map)
            munmap(m->impl->map, m->impl->map_bytes);
        bt_free(m->impl);
    }
    bt_free(m);
}

size_t bt_model_kv_bytes_per_token(const bt_model_hparams_t *hp, bt_type_t kv_type)
{
    size_t row = bt_type_row_bytes(kv_type, hp->head_dim);
    return 2 * (size_t)hp->n_layers * (size_t)hp->n_kv_heads * row;
}
