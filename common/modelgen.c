/* SPDX-License-Identifier: MIT */
/*
 * modelgen.c - the synthetic model generator (see modelgen.h).
 *
 * The one thing to know: every weight row is drawn from its own xoshiro256** stream, seeded from
 * (model seed, tensor name, row index). Rows can therefore be produced in any order and any
 * chunking, which is what lets the GGUF writer pull them through a small buffer at write time,
 * and it makes the f32 values independent of the storage type. Values are a scaled sum of four
 * 16-bit uniforms (Irwin-Hall, close to normal and bounded at 3.5 std), which costs one 64-bit
 * draw per weight instead of a log and a sqrt: the 1b preset (1.2e9 weights) takes seconds.
 */
#include "modelgen.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "../kernels/fp16.h"
#include "alloc.h"
#include "gguf.h"
#include "log.h"
#include "status.h"

#define GEN_N_SPECIAL 3  /* <unk>, <s>, </s> */
#define GEN_N_BYTES 256  /* <0x00> .. <0xFF> */
#define GEN_PIECE_CAP 16 /* bytes per generated piece, terminator included */
#define GEN_NORM_STD 0.02f
/* Sum of four uniform integers in [0, 65535]: mean 131070, std sqrt(4 * (65536^2 - 1) / 12). */
#define GEN_SUM4_MEAN 131070
#define GEN_SUM4_STD 37837.23f

/* ggml token types (llama_token_type). */
enum { TOKEN_NORMAL = 1, TOKEN_UNKNOWN = 2, TOKEN_CONTROL = 3, TOKEN_BYTE = 6 };

typedef struct {
    const char *name;
    bt_modelgen_params_t params;
} preset_t;

static const preset_t presets[] = {
    {"tiny", {"tiny", 64, 2, 4, 2, 160, 512, 512, BT_TYPE_F32, 1, 10000.0f, 0}},
    {"15m", {"15m", 288, 6, 6, 6, 768, 32000, 2048, BT_TYPE_F32, 1, 10000.0f, 1}},
    {"110m", {"110m", 768, 12, 12, 12, 2048, 32000, 2048, BT_TYPE_F32, 1, 10000.0f, 1}},
    {"1b", {"1b", 2048, 16, 32, 8, 8192, 128256, 2048, BT_TYPE_F32, 1, 500000.0f, 1}},
};

#define N_PRESETS (sizeof presets / sizeof presets[0])

int bt_modelgen_preset(const char *name, bt_modelgen_params_t *out)
{
    for (size_t i = 0; name && i < N_PRESETS; i++) {
        if (strcmp(presets[i].name, name) == 0) {
            *out = presets[i].params;
            return BT_OK;
        }
    }
    return BT_ERR_NOT_FOUND;
}

const char *bt_modelgen_preset_list(void)
{
    return "tiny,15m,110m,1b";
}

int bt_modelgen_check(const bt_modelgen_params_t *p)
{
    const char *why = NULL;
    if (p->dim <= 0 || p->n_layers <= 0 || p->n_heads <= 0 || p->n_kv_heads <= 0 ||
        p->ffn_dim <= 0 || p->n_ctx <= 0)
        why = "all sizes must be positive";
    else if (p->dim > 65536 || p->n_layers > 1024 || p->ffn_dim > (1 << 20))
        why = "sizes are beyond any real model (dim <= 65536, layers <= 1024, ffn <= 2^20)";
    else if (p->dim % p->n_heads != 0 || (p->dim / p->n_heads) % 2 != 0)
        why = "dim must be n_heads times an even head size";
    else if (p->n_heads % p->n_kv_heads != 0)
        why = "n_kv_heads must divide n_heads";
    else if (p->n_vocab < GEN_N_SPECIAL + GEN_N_BYTES + 1 || p->n_vocab > (1 << 24))
        why = "n_vocab must be in [260, 2^24]";
    else if (!bt_type_name(p->type))
        why = "unsupported weight type";
    else if (p->type == BT_TYPE_Q8_0 && (p->dim % BT_QK8_0 != 0 || p->ffn_dim % BT_QK8_0 != 0))
        why = "q8_0 needs dim and ffn_dim to be multiples of 32";
    else if (!(p->rope_theta > 0.0f))
        why = "rope_theta must be positive";
    if (why) {
        bt_error("modelgen: bad parameters: %s", why);
        return BT_ERR_INVAL;
    }
    return BT_OK;
}

uint64_t bt_modelgen_n_params(const bt_modelgen_params_t *p)
{
    uint64_t dim = (uint64_t)p->dim, ffn = (uint64_t)p->ffn_dim;
    uint64_t kv_dim = dim / (uint64_t)p->n_heads * (uint64_t)p->n_kv_heads;
    uint64_t layer = 2 * dim + 2 * dim * dim + 2 * dim * kv_dim + 3 * dim * ffn;
    uint64_t embd = (uint64_t)p->n_vocab * dim;
    return embd * (p->tied ? 1 : 2) + dim + (uint64_t)p->n_layers * layer;
}

/* --- random numbers ---------------------------------------------------------------------- */

typedef struct {
    uint64_t s[4];
} rng_t;

static uint64_t splitmix64(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

static uint64_t rng_next(rng_t *r)
{
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

/* An approximately standard normal value from one draw (see the file comment). */
static float rng_normal(rng_t *r)
{
    uint64_t x = rng_next(r);
    int32_t sum = (int32_t)(x & 0xffff) + (int32_t)((x >> 16) & 0xffff) +
                  (int32_t)((x >> 32) & 0xffff) + (int32_t)(x >> 48);
    return (float)(sum - GEN_SUM4_MEAN) * (1.0f / GEN_SUM4_STD);
}

static uint64_t tensor_seed(uint64_t seed, const char *name)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a of the name */
    for (const char *c = name; *c; c++)
        h = (h ^ (uint8_t)*c) * 1099511628211ull;
    uint64_t state = seed ^ h;
    return splitmix64(&state);
}

/* --- tensors ----------------------------------------------------------------------------- */

typedef struct {
    bt_type_t type;
    int64_t cols;
    uint64_t seed;
    float mean, std;
    float *row; /* scratch of cols floats, shared by all tensors (fills run one at a time) */
} gen_tensor_t;

/* roundf (halves away from zero) in a form the compiler vectorizes: a float widened to double
 * plus one half is exact there (a float near a half has no bits below 2^-25), so truncating
 * the sum equals roundf for every float (test_modelgen compares the bytes with a roundf
 * reference). */
static inline int32_t round_away(float x)
{
    double v = (double)x;
    return (int32_t)(v + copysign(0.5, v));
}

/* ggml's quantize_row_q8_0_ref, so that the bytes equal what llama.cpp would produce. It is
 * written so that the compiler vectorizes it: the largest magnitude is found as the largest
 * bit pattern of |x| (the same order for non-negative floats), and rounding goes through int32
 * before narrowing. */
static void quantize_q8_0(const float *x, bt_block_q8_0_t *y, int64_t n)
{
    for (int64_t b = 0; b < n / BT_QK8_0; b++, x += BT_QK8_0) {
        uint32_t amax_bits = 0;
        for (int j = 0; j < BT_QK8_0; j++) {
            uint32_t u = bt_bits_from_f32(x[j]) & 0x7fffffffu;
            amax_bits = u > amax_bits ? u : amax_bits;
        }
        const float d = bt_f32_from_bits(amax_bits) / 127.0f;
        const float id = d ? 1.0f / d : 0.0f;
        int32_t q[BT_QK8_0];
        for (int j = 0; j < BT_QK8_0; j++)
            q[j] = round_away(x[j] * id);
        y[b].d = bt_f32_to_fp16(d);
        for (int j = 0; j < BT_QK8_0; j++)
            y[b].qs[j] = (int8_t)q[j];
    }
}

static void store_row(bt_type_t type, const float *x, int64_t n, void *dst)
{
    uint16_t *h = dst;
    switch (type) {
    case BT_TYPE_F32: memcpy(dst, x, (size_t)n * sizeof *x); break;
    case BT_TYPE_F16:
        for (int64_t i = 0; i < n; i++)
            h[i] = bt_f32_to_fp16(x[i]);
        break;
    case BT_TYPE_BF16:
        for (int64_t i = 0; i < n; i++)
            h[i] = bt_f32_to_bf16(x[i]);
        break;
    case BT_TYPE_Q8_0: quantize_q8_0(x, dst, n); break;
    }
}

static int fill_rows(void *ctx, int64_t row0, int64_t n_rows, void *dst)
{
    const gen_tensor_t *t = ctx;
    size_t row_bytes = bt_type_row_bytes(t->type, t->cols);
    for (int64_t r = 0; r < n_rows; r++) {
        uint64_t state = t->seed + (uint64_t)(row0 + r) * 0xd1342543de82ef95ull;
        rng_t rng;
        for (int i = 0; i < 4; i++)
            rng.s[i] = splitmix64(&state);
        for (int64_t c = 0; c < t->cols; c++)
            t->row[c] = t->mean + t->std * rng_normal(&rng);
        store_row(t->type, t->row, t->cols, (uint8_t *)dst + (size_t)r * row_bytes);
    }
    return BT_OK;
}

typedef struct {
    const bt_modelgen_params_t *p;
    bt_gguf_writer_t *w;
    gen_tensor_t *gens; /* one per tensor, alive until the write */
    int n_gens;
    float *row;
} gen_t;

/* Adds a (rows, cols) matrix, or a (cols) norm vector when rows is 0. */
static int add(gen_t *g, const char *name, int64_t rows, int64_t cols)
{
    gen_tensor_t *t = &g->gens[g->n_gens++];
    int64_t ne[2] = {cols, rows};
    *t = (gen_tensor_t){
        .type = rows ? g->p->type : BT_TYPE_F32,
        .cols = cols,
        .seed = tensor_seed(g->p->seed, name),
        .mean = rows ? 0.0f : 1.0f,
        .std = rows ? 1.0f / sqrtf((float)cols) : GEN_NORM_STD,
        .row = g->row,
    };
    return bt_gguf_writer_add_tensor_fn(g->w, name, t->type, rows ? 2 : 1, ne, fill_rows, t);
}

static int add_layer(gen_t *g, int l)
{
    const bt_modelgen_params_t *p = g->p;
    int64_t dim = p->dim, ffn = p->ffn_dim;
    int64_t kv_dim = dim / p->n_heads * p->n_kv_heads;
    static const char *const suffix[] = {"attn_norm", "attn_q",      "attn_k",
                                         "attn_v",    "attn_output", "ffn_norm",
                                         "ffn_gate",  "ffn_up",      "ffn_down"};
    const int64_t shape[9][2] = {{0, dim}, {dim, dim}, {kv_dim, dim}, {kv_dim, dim}, {dim, dim},
                                 {0, dim}, {ffn, dim}, {ffn, dim},    {dim, ffn}};
    for (int i = 0; i < 9; i++) {
        char name[64];
        snprintf(name, sizeof name, "blk.%d.%s.weight", l, suffix[i]);
        int st = add(g, name, shape[i][0], shape[i][1]);
        if (st != BT_OK)
            return st;
    }
    return BT_OK;
}

static int add_tensors(gen_t *g)
{
    const bt_modelgen_params_t *p = g->p;
    int st = add(g, "token_embd.weight", p->n_vocab, p->dim);
    for (int l = 0; l < p->n_layers && st == BT_OK; l++)
        st = add_layer(g, l);
    if (st == BT_OK)
        st = add(g, "output_norm.weight", 0, p->dim);
    if (st == BT_OK && !p->tied)
        st = add(g, "output.weight", p->n_vocab, p->dim);
    return st;
}

/* --- vocabulary -------------------------------------------------------------------------- */

/* The j-th lowercase word in bijective base 26: a..z, aa..zz, aaa.. */
static int word_of(uint64_t j, char *out)
{
    char tmp[16];
    int n = 0;
    for (j += 1; j > 0; j = (j - 1) / 26)
        tmp[n++] = (char)('a' + (j - 1) % 26);
    for (int i = 0; i < n; i++)
        out[i] = tmp[n - 1 - i];
    out[n] = 0;
    return n;
}

/* Normal piece number k: "▁", the printable ASCII characters, then for each word "▁word" and,
 * from two letters on, "word" (single letters are already among the ASCII pieces). */
static void piece_of(int64_t k, uint64_t *next_word, int *pending_plain, char *out)
{
    static const char space[] = "\xe2\x96\x81"; /* U+2581, SentencePiece's space */
    if (k == 0) {
        strcpy(out, space);
    } else if (k <= 94) {
        out[0] = (char)(32 + k);
        out[1] = 0;
    } else if (*pending_plain) {
        word_of(*next_word - 1, out);
        *pending_plain = 0;
    } else {
        int len = word_of((*next_word)++, out + 3);
        memcpy(out, space, 3);
        *pending_plain = len >= 2;
    }
}

typedef struct {
    char *blob; /* n_vocab pieces of GEN_PIECE_CAP bytes */
    const char **tokens;
    float *scores;
    int32_t *types;
} vocab_t;

static int vocab_make(int32_t n, vocab_t *v)
{
    v->blob = bt_malloc((size_t)n * GEN_PIECE_CAP);
    v->tokens = bt_malloc((size_t)n * sizeof *v->tokens);
    v->scores = bt_malloc((size_t)n * sizeof *v->scores);
    v->types = bt_malloc((size_t)n * sizeof *v->types);
    if (!v->blob || !v->tokens || !v->scores || !v->types)
        return BT_ERR_NOMEM;
    uint64_t next_word = 0;
    int pending_plain = 0;
    for (int32_t i = 0; i < n; i++) {
        char *s = v->blob + (size_t)i * GEN_PIECE_CAP;
        v->tokens[i] = s;
        v->scores[i] = 0.0f;
        if (i < GEN_N_SPECIAL) {
            static const char *const special[] = {"<unk>", "<s>", "</s>"};
            strcpy(s, special[i]);
            v->types[i] = i == 0 ? TOKEN_UNKNOWN : TOKEN_CONTROL;
        } else if (i < GEN_N_SPECIAL + GEN_N_BYTES) {
            snprintf(s, GEN_PIECE_CAP, "<0x%02X>", i - GEN_N_SPECIAL);
            v->types[i] = TOKEN_BYTE;
        } else {
            int64_t k = i - GEN_N_SPECIAL - GEN_N_BYTES;
            piece_of(k, &next_word, &pending_plain, s);
            v->scores[i] = -(float)k; /* earlier (shorter) pieces merge first */
            v->types[i] = TOKEN_NORMAL;
        }
    }
    return BT_OK;
}

static void vocab_free(vocab_t *v)
{
    bt_free(v->blob);
    bt_free(v->tokens);
    bt_free(v->scores);
    bt_free(v->types);
}

static int set_vocab(bt_gguf_writer_t *w, int32_t n)
{
    vocab_t v = {0};
    int st = vocab_make(n, &v);
    if (st == BT_OK)
        st = bt_gguf_writer_set_str(w, "tokenizer.ggml.model", "llama");
    if (st == BT_OK)
        st = bt_gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", v.tokens, (uint64_t)n);
    if (st == BT_OK)
        st = bt_gguf_writer_set_arr(w, "tokenizer.ggml.scores", BT_GGUF_FLOAT32, v.scores,
                                    (uint64_t)n);
    if (st == BT_OK)
        st = bt_gguf_writer_set_arr(w, "tokenizer.ggml.token_type", BT_GGUF_INT32, v.types,
                                    (uint64_t)n);
    vocab_free(&v);
    if (st == BT_OK)
        st = bt_gguf_writer_set_u32(w, "tokenizer.ggml.unknown_token_id", 0);
    if (st == BT_OK)
        st = bt_gguf_writer_set_u32(w, "tokenizer.ggml.bos_token_id", 1);
    if (st == BT_OK)
        st = bt_gguf_writer_set_u32(w, "tokenizer.ggml.eos_token_id", 2);
    if (st == BT_OK)
        st = bt_gguf_writer_set_bool(w, "tokenizer.ggml.add_bos_token", 1);
    if (st == BT_OK)
        st = bt_gguf_writer_set_bool(w, "tokenizer.ggml.add_eos_token", 0);
    return st;
}

/* llama.cpp's llama_ftype for a model whose matrices are all of one type. */
static uint32_t file_type(bt_type_t type)
{
    switch (type) {
    case BT_TYPE_F16: return 1;
    case BT_TYPE_Q8_0: return 7;
    case BT_TYPE_BF16: return 32;
    default: return 0;
    }
}

static int set_metadata(bt_gguf_writer_t *w, const bt_modelgen_params_t *p)
{
    char name[128];
    snprintf(name, sizeof name, "baton-synthetic-%s", p->preset ? p->preset : "custom");
    const struct {
        const char *key;
        uint32_t v;
    } u32s[] = {
        {"general.file_type", file_type(p->type)},
        {"general.quantization_version", 2},
        {"llama.vocab_size", (uint32_t)p->n_vocab},
        {"llama.context_length", (uint32_t)p->n_ctx},
        {"llama.embedding_length", (uint32_t)p->dim},
        {"llama.block_count", (uint32_t)p->n_layers},
        {"llama.feed_forward_length", (uint32_t)p->ffn_dim},
        {"llama.rope.dimension_count", (uint32_t)(p->dim / p->n_heads)},
        {"llama.attention.head_count", (uint32_t)p->n_heads},
        {"llama.attention.head_count_kv", (uint32_t)p->n_kv_heads},
    };
    int st = bt_gguf_writer_set_str(w, "general.architecture", "llama");
    if (st == BT_OK)
        st = bt_gguf_writer_set_str(w, "general.name", name);
    for (size_t i = 0; i < sizeof u32s / sizeof u32s[0] && st == BT_OK; i++)
        st = bt_gguf_writer_set_u32(w, u32s[i].key, u32s[i].v);
    if (st == BT_OK)
        st = bt_gguf_writer_set_f32(w, "llama.attention.layer_norm_rms_epsilon", 1e-5f);
    if (st == BT_OK)
        st = bt_gguf_writer_set_f32(w, "llama.rope.freq_base", p->rope_theta);
    return st;
}

int bt_modelgen_write(const bt_modelgen_params_t *p, const char *path)
{
    int st = bt_modelgen_check(p);
    if (st != BT_OK)
        return st;
    gen_t g = {.p = p};
    int max_tensors = 9 * p->n_layers + 3;
    int64_t max_cols = p->dim > p->ffn_dim ? p->dim : p->ffn_dim;
    g.gens = bt_calloc((size_t)max_tensors, sizeof *g.gens);
    g.row = bt_malloc((size_t)max_cols * sizeof *g.row);
    if (!g.gens || !g.row) {
        st = BT_ERR_NOMEM;
        goto err_free;
    }
    if ((st = bt_gguf_writer_create(&g.w)) != BT_OK)
        goto err_free;
    st = set_metadata(g.w, p);
    if (st == BT_OK)
        st = set_vocab(g.w, p->n_vocab);
    if (st == BT_OK)
        st = add_tensors(&g);
    if (st == BT_OK)
        st = bt_gguf_writer_write(g.w, path);
    bt_gguf_writer_destroy(g.w);
err_free:
    bt_free(g.row);
    bt_free(g.gens);
    return st;
}
