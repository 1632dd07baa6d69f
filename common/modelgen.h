/* SPDX-License-Identifier: MIT */
/*
 * modelgen.h - writes synthetic Llama models (random weights, a made-up vocabulary) as GGUF.
 *
 * Benchmarks and tests need models of real shapes (up to Llama-3.2-1B) without downloading any.
 * A generated file is a valid llama.cpp model: llama.cpp key and tensor names, a SentencePiece
 * style vocabulary (<unk>, <s>, </s>, 256 byte tokens, then unique letter pieces), weights drawn
 * from a seeded generator with std ~ 1/sqrt(fan-in) (0.022 at width 2048) so that activations
 * stay near unit scale at every width. Output depends only on the parameters: the same seed
 * gives the same bytes on every machine, and each tensor's f32 values do not depend on the
 * storage type (an F32 and a Q8_0 file of one seed hold the same weights up to rounding).
 * Generation streams tensor by tensor through a few megabytes of memory.
 */
#ifndef BATON_MODELGEN_H
#define BATON_MODELGEN_H

#include <stdint.h>

#include "../kernels/kernels.h"

typedef struct {
    const char *preset; /* written into general.name as "baton-synthetic-<preset>"; borrowed;
                         * NULL: "custom" */
    int32_t dim;        /* embedding width; a multiple of n_heads */
    int32_t n_layers;
    int32_t n_heads;
    int32_t n_kv_heads; /* divides n_heads */
    int32_t ffn_dim;    /* SwiGLU hidden width */
    int32_t n_vocab;    /* >= 260: 3 control tokens, 256 byte tokens, at least one piece */
    int32_t n_ctx;      /* llama.context_length, in tokens */
    bt_type_t type;     /* type of the 2-D weights (F32, F16, BF16, Q8_0); norms are F32.
                         * Q8_0 needs dim and ffn_dim to be multiples of 32 */
    uint64_t seed;
    float rope_theta; /* RoPE base frequency */
    int tied;         /* 1: no output.weight; the output projection is token_embd */
} bt_modelgen_params_t;

/* Fills *out with a named preset: "tiny" (unit tests: dim 64, 2 layers, 4 heads, 2 KV heads,
 * ffn 160, vocab 512), "15m", "110m" (llama2.c stories shapes, vocab 32000) and "1b"
 * (Llama-3.2-1B shape: dim 2048, 16 layers, 32/8 heads, ffn 8192, vocab 128256, theta 500000,
 * tied). Type F32, seed 1. BT_ERR_NOT_FOUND for an unknown name. */
int bt_modelgen_preset(const char *name, bt_modelgen_params_t *out);
/* Comma-separated preset names ("tiny,15m,110m,1b"). */
const char *bt_modelgen_preset_list(void);

/* Checks the parameters: BT_ERR_INVAL, with the reason logged, when they cannot make a model. */
int bt_modelgen_check(const bt_modelgen_params_t *p);
/* Number of weights the model has (the output projection counted once when tied). */
uint64_t bt_modelgen_n_params(const bt_modelgen_params_t *p);

/* Generates the model into path (through path.tmp, renamed when complete). BT_ERR_INVAL for
 * bad parameters, BT_ERR_IO, BT_ERR_NOMEM. Any thread; nothing is shared between calls. */
int bt_modelgen_write(const bt_modelgen_params_t *p, const char *path);

#endif
