/* SPDX-License-Identifier: MIT */
/*
 * model.h - a Llama-architecture model: hyperparameters, borrowed weight views, tokenizer.
 *
 * Weights are never copied: they point into the mmap'ed GGUF (or llama2.c checkpoint), which
 * the model keeps open until bt_model_destroy. Only small tensors the kernels need as f32 (norm
 * weights) and derived tables (RoPE inverse frequencies) are owned copies. Every tensor's type
 * and shape is checked against the metadata at load; a file that contradicts itself is refused
 * with BT_ERR_FORMAT, never trusted. A loaded model is immutable and may be shared by threads.
 */
#ifndef BATON_MODEL_H
#define BATON_MODEL_H

#include <stdint.h>

#include "../kernels/kernels.h"
#include "tokenizer.h"

typedef enum {
    BT_ROPE_SCALING_NONE = 0,
    BT_ROPE_SCALING_LINEAR = 1, /* positions divided by factor */
    BT_ROPE_SCALING_LLAMA3 = 2, /* per-frequency factors (rope_freqs.weight or llama3 params) */
} bt_rope_scaling_t;

typedef struct {
    char arch[32];  /* "llama" */
    char name[128]; /* general.name, or the file's base name */
    int32_t n_vocab;
    int32_t dim; /* embedding width */
    int32_t n_layers;
    int32_t n_heads;
    int32_t n_kv_heads;  /* < n_heads with grouped-query attention */
    int32_t head_dim;    /* dim / n_heads */
    int32_t ffn_dim;     /* hidden width of the SwiGLU FFN */
    int32_t n_ctx_train; /* context length the model was trained for */
    float norm_eps;      /* RMSNorm epsilon */
    float rope_theta;    /* RoPE base frequency */
    bt_rope_scaling_t rope_scaling;
    float rope_scale;      /* linear factor (LINEAR), or llama3 factor */
    int tied_output;       /* 1 if the output projection is the token embedding */
    bt_type_t weight_type; /* dominant type of the big matrices (for display) */
} bt_model_hparams_t;

typedef struct {
    const float *attn_norm; /* (dim) */
    bt_tensor_t wq;         /* (n_heads * head_dim, dim) */
    bt_tensor_t wk;         /* (n_kv_heads * head_dim, dim) */
    bt_tensor_t wv;         /* (n_kv_heads * head_dim, dim) */
    bt_tensor_t wo;         /* (dim, n_heads * head_dim) */
    const float *ffn_norm;  /* (dim) */
    bt_tensor_t w_gate;     /* (ffn_dim, dim) */
    bt_tensor_t w_up;       /* (ffn_dim, dim) */
    bt_tensor_t w_down;     /* (dim, ffn_dim) */
} bt_layer_weights_t;

typedef struct bt_model_impl bt_model_impl_t;

typedef struct {
    bt_model_hparams_t hp;
    bt_tensor_t tok_embd;       /* (n_vocab, dim) */
    const float *out_norm;      /* (dim) */
    bt_tensor_t output;         /* (n_vocab, dim); equals tok_embd when tied */
    bt_layer_weights_t *layers; /* (n_layers) */
    float *rope_inv_freq;       /* (head_dim / 2): angle of pair i = pos * rope_inv_freq[i] */
    bt_tokenizer_t *tok;        /* owned */
    bt_model_impl_t *impl;      /* mapping and owned buffers */
} bt_model_t;

typedef struct {
    const char *path;           /* .gguf, or llama2.c .bin checkpoint */
    const char *tokenizer_path; /* llama2.c tokenizer .bin (llama2.c checkpoints only) */
} bt_model_params_t;

/* Loads a model. The format is detected from the file's first bytes (GGUF magic, else a
 * llama2.c header). BT_ERR_IO, BT_ERR_FORMAT, BT_ERR_UNSUPPORTED with the reason logged. */
int bt_model_load(const bt_model_params_t *params, bt_model_t **out);
void bt_model_destroy(bt_model_t *m);

/* Bytes of KV cache one token takes in every layer for a KV element type
 * (2 * n_layers * n_kv_heads * head_dim elements). */
size_t bt_model_kv_bytes_per_token(const bt_model_hparams_t *hp, bt_type_t kv_type);

/* The llama2.c checkpoint format, for bt_model_load (model_llama2c.c). A checkpoint is a header
 * of seven int32 (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len; a
 * negative vocab_size means a separate classifier follows) and f32 weights. The header parser
 * fills *hp and checks that the size is exactly what the header implies (BT_ERR_FORMAT with the
 * reason logged, naming path); then the weights can be pointed into data without checks. */
int bt_model_llama2c_header(const void *data, size_t size_bytes, const char *path,
                            bt_model_hparams_t *hp);
/* Points m's tensors and norms into data (borrowed); m->layers has hp.n_layers entries. */
void bt_model_llama2c_weights(const void *data, bt_model_t *m);

#endif
