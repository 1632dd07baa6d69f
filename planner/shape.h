/* SPDX-License-Identifier: MIT */
/*
 * shape.h - what the planner needs to know of a model: its shape, hence the bytes of its
 * weights and of one token's KV cache, and which (tensor, pipeline) parallel configurations of
 * it fit a GPU; and the rule that derives a latency profile for a tensor-parallel degree that
 * was not measured.
 *
 * Shapes come from a table of published models (the OPT sizes DistServe evaluates, Llama 2 and
 * 3) and baton's synthetic presets, or are given field by field. Memory: an instance of tp x pp
 * GPUs holds the weights once, split evenly; what is left of mem_util of its GPUs' memory
 * holds KV cache (activations and the runtime are what the remaining 1 - mem_util is for, as
 * in vLLM's gpu_memory_utilization).
 */
#ifndef BATON_PLANNER_SHAPE_H
#define BATON_PLANNER_SHAPE_H

#include <stdint.h>

#include "common/profile.h"

typedef struct {
    char name[64];
    int32_t n_layers, dim, n_heads, n_kv_heads, ffn_dim, n_vocab;
    int32_t ffn_mats;         /* weight matrices per FFN: 3 (SwiGLU, Llama), 2 (OPT) */
    int32_t tied;             /* output projection shares the token embedding */
    double bytes_per_weight;  /* 2 (f16/bf16), 4 (f32), 34/32 (q8_0) */
    double kv_bytes_per_elem; /* 2 (f16 KV), 4 (f32 KV) */
} pl_shape_t;

/* Fills *out with a named shape ("opt-13b", "opt-66b", "opt-175b", "llama-2-7b", "llama-2-13b",
 * "llama-2-70b", "llama-3-8b": f16 weights and KV; "tiny", "15m", "110m", "1b": baton's
 * synthetic presets with q8_0 weights and f32 KV, as baton runs them). BT_ERR_NOT_FOUND. */
int pl_shape_preset(const char *name, pl_shape_t *out);
const char *pl_shape_preset_list(void);
/* BT_ERR_INVAL (logged) when fields are missing or inconsistent. */
int pl_shape_check(const pl_shape_t *s);

double pl_shape_n_weights(const pl_shape_t *s);
double pl_shape_weight_bytes(const pl_shape_t *s);
double pl_shape_kv_bytes_per_token(const pl_shape_t *s);

/* Whether tp can split the attention heads (tp divides n_heads, and n_kv_heads divides or is
 * divided by tp: KV heads are replicated past their count) and pp the layers. */
int pl_shape_parallel_ok(const pl_shape_t *s, int tp, int pp);
/* KV tokens an instance of tp x pp GPUs holds: (tp*pp*gpu_mem*mem_util - weights) / KV bytes
 * per token; <= 0 when the weights do not fit. */
int64_t pl_shape_kv_tokens(const pl_shape_t *s, int tp, int pp, double gpu_mem_bytes,
                           double mem_util);

/* Derives a profile for tensor-parallel degree tp from one measured at base->tp (Amdahl's
 * law per term): with r = tp / base->tp, the per-token terms (prefill b and c, decode b and c)
 * are multiplied by s_token / r + (1 - s_token) and the fixed terms (prefill a, decode a) by
 * s_fixed / r + (1 - s_fixed). KV transfer and bytes per token are kept. The note says so. */
void pl_profile_scale_tp(const bt_profile_t *base, int tp, double s_token, double s_fixed,
                         bt_profile_t *out);

/* The default fractions: fitted to DistServe's published A100 coefficients of OPT-13B at
 * tp = 1, 2, 4 (per-token terms shrink to 0.67 and 0.37, fixed terms to 0.81 and 0.67). */
#define PL_TP_SCALE_TOKEN 0.85
#define PL_TP_SCALE_FIXED 0.45

#endif
