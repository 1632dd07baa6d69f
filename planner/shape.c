/* SPDX-License-Identifier: MIT */
/*
 * shape.c - model shapes, memory and the tensor-parallel scaling rule (shape.h).
 *
 * Weight counts ignore norms, biases and OPT's learned positions (under 0.1% of any model
 * here). The published shapes are from the models' configuration files.
 */
#include "shape.h"

#include <stdio.h>
#include <string.h>

#include "common/log.h"
#include "common/modelgen.h"
#include "common/status.h"

typedef struct {
    const char *name;
    int32_t n_layers, dim, n_heads, n_kv_heads, ffn_dim, n_vocab, ffn_mats, tied;
} known_t;

static const known_t known[] = {
    {"opt-13b", 40, 5120, 40, 40, 20480, 50272, 2, 1},
    {"opt-66b", 64, 9216, 72, 72, 36864, 50272, 2, 1},
    {"opt-175b", 96, 12288, 96, 96, 49152, 50272, 2, 1},
    {"llama-2-7b", 32, 4096, 32, 32, 11008, 32000, 3, 0},
    {"llama-2-13b", 40, 5120, 40, 40, 13824, 32000, 3, 0},
    {"llama-2-70b", 80, 8192, 64, 8, 28672, 32000, 3, 0},
    {"llama-3-8b", 32, 4096, 32, 8, 14336, 128256, 3, 0},
};

const char *pl_shape_preset_list(void)
{
    return "opt-13b, opt-66b, opt-175b, llama-2-7b, llama-2-13b, llama-2-70b, llama-3-8b, "
           "tiny, 15m, 110m, 1b";
}

int pl_shape_preset(const char *name, pl_shape_t *out)
{
    pl_shape_t s = {0};
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++) {
        const known_t *k = &known[i];
        if (strcmp(k->name, name))
            continue;
        s = (pl_shape_t){"",         k->n_layers, k->dim,      k->n_heads, k->n_kv_heads,
                         k->ffn_dim, k->n_vocab,  k->ffn_mats, k->tied,    2,
                         2};
        snprintf(s.name, sizeof s.name, "%s", name);
        *out = s;
        return BT_OK;
    }
    bt_modelgen_params_t g;
    if (bt_modelgen_preset(name, &g) != BT_OK)
        return BT_ERR_NOT_FOUND;
    s = (pl_shape_t){"", g.n_layers, g.dim,     g.n_heads, g.n_kv_heads, g.ffn_dim, g.n_vocab,
                     3,  g.tied,     34.0 / 32, 4};
    snprintf(s.name, sizeof s.name, "baton-synthetic-%s", name);
    *out = s;
    return BT_OK;
}

int pl_shape_check(const pl_shape_t *s)
{
    const char *why = NULL;
    if (s->n_layers < 1 || s->dim < 1 || s->n_heads < 1 || s->n_kv_heads < 1 || s->ffn_dim < 1 ||
        s->n_vocab < 1)
        why = "every dimension must be >= 1";
    else if (s->dim % s->n_heads || s->n_heads % s->n_kv_heads)
        why = "dim must be a multiple of heads, and heads of KV heads";
    else if (s->ffn_mats < 2 || s->ffn_mats > 3)
        why = "ffn_mats must be 2 or 3";
    else if (!(s->bytes_per_weight > 0) || !(s->kv_bytes_per_elem > 0))
        why = "bytes per weight and per KV element must be > 0";
    if (why)
        bt_error("model shape %s: %s", s->name, why);
    return why ? BT_ERR_INVAL : BT_OK;
}

double pl_shape_n_weights(const pl_shape_t *s)
{
    double hd = (double)s->dim / s->n_heads;
    double attn = 2.0 * s->dim * s->n_heads * hd + 2.0 * s->dim * s->n_kv_heads * hd;
    double ffn = (double)s->ffn_mats * s->dim * s->ffn_dim;
    double embed = (double)s->n_vocab * s->dim * (s->tied ? 1 : 2);
    return s->n_layers * (attn + ffn) + embed;
}

double pl_shape_weight_bytes(const pl_shape_t *s)
{
    return pl_shape_n_weights(s) * s->bytes_per_weight;
}

double pl_shape_kv_bytes_per_token(const pl_shape_t *s)
{
    return 2.0 * s->n_layers * s->n_kv_heads * ((double)s->dim / s->n_heads) * s->kv_bytes_per_elem;
}

int pl_shape_parallel_ok(const pl_shape_t *s, int tp, int pp)
{
    if (tp < 1 || pp < 1 || s->n_heads % tp || s->n_layers % pp)
        return 0;
    return s->n_kv_heads % tp == 0 || tp % s->n_kv_heads == 0;
}

int64_t pl_shape_kv_tokens(const pl_shape_t *s, int tp, int pp, double gpu_mem_bytes,
                           double mem_util)
{
    double free_bytes = (double)tp * pp * gpu_mem_bytes * mem_util - pl_shape_weight_bytes(s);
    if (free_bytes <= 0)
        return 0;
    return (int64_t)(free_bytes / pl_shape_kv_bytes_per_token(s));
}

static double amdahl(double s, double r)
{
    return s / r + (1 - s);
}

void pl_profile_scale_tp(const bt_profile_t *base, int tp, double s_token, double s_fixed,
                         bt_profile_t *out)
{
    double r = (double)tp / (base->tp > 0 ? base->tp : 1);
    double ft = amdahl(s_token, r), ff = amdahl(s_fixed, r);
    bt_profile_t p = *base;
    p.tp = tp;
    p.prefill.a_ms *= ff;
    p.prefill.b_ms_per_token *= ft;
    p.prefill.c_ms_per_token2 *= ft;
    bt_profile_decode_t *d[2] = {&p.decode, &p.decode_above};
    for (int i = 0; i < 2; i++) {
        d[i]->a_ms *= ff;
        d[i]->b_ms_per_ctx_token *= ft;
        d[i]->c_ms_per_seq *= ft;
    }
    p.fit_prefill = p.fit_decode = (bt_profile_fit_t){0};
    snprintf(p.note, sizeof p.note,
             "derived from the tp=%d profile: per-token terms x (%.2f/%.3g + %.2f), fixed terms "
             "x (%.2f/%.3g + %.2f)",
             base->tp, s_token, r, 1 - s_token, s_fixed, r, 1 - s_fixed);
    *out = p;
}
