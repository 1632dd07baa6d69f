/* SPDX-License-Identifier: MIT */
/*
 * cmd_model.c - `baton model gen` writes a synthetic Llama GGUF from a preset (the embedded
 * default models; real models are given with --model elsewhere), `baton model info` prints a
 * model's shape.
 */
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "common/config.h"
#include "common/log.h"
#include "common/modelgen.h"

typedef struct {
    char *preset;
    char *out;
    char *type;
    int64_t seed;
    int dim, n_layers, n_heads, n_kv_heads, ffn_dim, n_vocab, n_ctx;
} gen_cfg_t;

#define OPT(n, t, d, lo, hi, f, h)                                                                 \
    {                                                                                              \
        n, 0, t, d, lo, hi, offsetof(gen_cfg_t, f), h                                              \
    }
static const bt_cfg_opt_t gen_opts[] = {
    OPT("preset", BT_CFG_STRING, "110m", 0, 0, preset, "tiny, 15m, 110m or 1b"),
    OPT("out", BT_CFG_STRING, NULL, 0, 0, out, "output .gguf path (required)"),
    OPT("type", BT_CFG_STRING, "q8_0", 0, 0, type, "weight type: f32, f16, bf16, q8_0"),
    OPT("seed", BT_CFG_INT64, "1", 0, 9.2e18, seed, "random seed of the weights"),
    OPT("dim", BT_CFG_INT, "0", 0, 65536, dim, "override the preset's embedding width"),
    OPT("layers", BT_CFG_INT, "0", 0, 1024, n_layers, "override the layer count"),
    OPT("heads", BT_CFG_INT, "0", 0, 1024, n_heads, "override the head count"),
    OPT("kv-heads", BT_CFG_INT, "0", 0, 1024, n_kv_heads, "override the KV head count"),
    OPT("ffn", BT_CFG_INT, "0", 0, 1 << 20, ffn_dim, "override the FFN width"),
    OPT("vocab", BT_CFG_INT, "0", 0, 1 << 22, n_vocab, "override the vocabulary size"),
    OPT("ctx", BT_CFG_INT, "0", 0, 1 << 22, n_ctx, "override the context length"),
};
static const bt_cfg_table_t gen_table = {
    .prog = "baton model gen",
    .summary = "Writes a synthetic Llama model (seeded random weights, valid vocabulary) as GGUF.",
    .opts = gen_opts,
    .n_opts = sizeof gen_opts / sizeof gen_opts[0],
};

static int parse_type(const char *s, bt_type_t *out)
{
    static const bt_type_t types[] = {BT_TYPE_F32, BT_TYPE_F16, BT_TYPE_BF16, BT_TYPE_Q8_0};
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
        if (!strcmp(s, bt_type_name(types[i]))) {
            *out = types[i];
            return 0;
        }
    return -1;
}

static void apply_overrides(const gen_cfg_t *c, bt_modelgen_params_t *p)
{
    const int *src[] = {&c->dim,     &c->n_layers, &c->n_heads, &c->n_kv_heads,
                        &c->ffn_dim, &c->n_vocab,  &c->n_ctx};
    int32_t *dst[] = {&p->dim,     &p->n_layers, &p->n_heads, &p->n_kv_heads,
                      &p->ffn_dim, &p->n_vocab,  &p->n_ctx};
    for (size_t i = 0; i < sizeof src / sizeof src[0]; i++)
        if (*src[i])
            *dst[i] = *src[i];
}

static int model_gen(int argc, char **argv)
{
    gen_cfg_t c = {0};
    bt_modelgen_params_t p;
    int rc = 2, st = bt_cfg_parse(&gen_table, &c, argc, argv, 1, NULL, 0, NULL);
    if (st != BT_OK) {
        rc = st == BT_AGAIN ? 0 : 2;
        goto out;
    }
    if (!c.out || bt_modelgen_preset(c.preset, &p) != BT_OK) {
        fprintf(stderr, "baton model gen: needs --out FILE and a preset among %s\n",
                bt_modelgen_preset_list());
        goto out;
    }
    if (parse_type(c.type, &p.type) != 0) {
        fprintf(stderr, "baton model gen: unknown --type '%s' (f32, f16, bf16, q8_0)\n", c.type);
        goto out;
    }
    p.seed = (uint64_t)c.seed;
    apply_overrides(&c, &p);
    if (bt_modelgen_check(&p) != BT_OK)
        goto out;
    double t0 = cli_now();
    st = bt_modelgen_write(&p, c.out);
    if (st != BT_OK) {
        bt_error("model gen: writing %s failed: %s", c.out, bt_status_str(st));
        rc = 1;
        goto out;
    }
    fprintf(stderr, "wrote %s: preset %s, %s, %.1fM parameters, in %.1f s\n", c.out, c.preset,
            bt_type_name(p.type), (double)bt_modelgen_n_params(&p) / 1e6, cli_now() - t0);
    rc = 0;
out:
    bt_cfg_free(&gen_table, &c);
    return rc;
}

static int model_info(int argc, char **argv)
{
    if (argc != 2 || argv[1][0] == '-') {
        fprintf(stderr, "usage: baton model info FILE.gguf\n");
        return 2;
    }
    bt_model_t *m = cli_load_model(argv[1], NULL);
    if (!m)
        return 1;
    const bt_model_hparams_t *hp = &m->hp;
    printf("name: %s\narch: %s\nweights: %s\ndim: %d\nlayers: %d\nheads: %d\nkv_heads: %d\n"
           "head_dim: %d\nffn: %d\nvocab: %d\nctx_train: %d\nrope_theta: %g\ntied_output: %d\n"
           "kv_bytes_per_token_f32: %zu\n",
           hp->name, hp->arch, bt_type_name(hp->weight_type), hp->dim, hp->n_layers, hp->n_heads,
           hp->n_kv_heads, hp->head_dim, hp->ffn_dim, hp->n_vocab, hp->n_ctx_train, hp->rope_theta,
           hp->tied_output, bt_model_kv_bytes_per_token(hp, BT_TYPE_F32));
    bt_model_destroy(m);
    return 0;
}

int cli_model(int argc, char **argv)
{
    if (argc >= 2 && !strcmp(argv[1], "gen"))
        return model_gen(argc - 1, argv + 1);
    if (argc >= 2 && !strcmp(argv[1], "info"))
        return model_info(argc - 1, argv + 1);
    fprintf(stderr, "usage: baton model gen --preset NAME --out FILE [--type T] [--seed S]\n"
                    "       baton model info FILE\n");
    return 2;
}
