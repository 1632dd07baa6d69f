/* SPDX-License-Identifier: MIT */
/*
 * cmd_bench.c - `baton bench-engine`: engine throughput on one model, in the shapes llama.cpp's
 * llama-bench (pp512, tg128) and batched-bench use, so the two can be run side by side:
 * prefill tokens/s of one prompt, decode tokens/s at several batch sizes, resident memory.
 */
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "common/alloc.h"
#include "common/config.h"
#include "common/engine.h"
#include "common/log.h"
#include "common/sampler.h"

typedef struct {
    char *model;
    char *tokenizer;
    char *backend;
    char *batches;
    int threads;
    int prompt_len;
    int gen;
    int reps;
} bench_cfg_t;

#define OPT(n, t, d, lo, hi, f, h)                                                                 \
    {                                                                                              \
        n, 0, t, d, lo, hi, offsetof(bench_cfg_t, f), h                                            \
    }
static const bt_cfg_opt_t bench_opts[] = {
    OPT("model", BT_CFG_STRING, NULL, 0, 0, model, "model file (.gguf, or llama2.c .bin)"),
    OPT("tokenizer", BT_CFG_STRING, NULL, 0, 0, tokenizer, "llama2.c tokenizer (.bin models)"),
    OPT("threads", BT_CFG_INT, "0", 0, 1024, threads, "compute threads; 0: all cores"),
    OPT("prompt-len", BT_CFG_INT, "512", 1, 65536, prompt_len, "prefill prompt length (pp)"),
    OPT("gen", BT_CFG_INT, "128", 1, 65536, gen, "decode steps per sequence (tg)"),
    OPT("batches", BT_CFG_STRING, "1,4,16", 0, 0, batches, "decode batch sizes, comma-separated"),
    OPT("reps", BT_CFG_INT, "3", 1, 100, reps, "repetitions of each test (after one warm-up)"),
    OPT("backend", BT_CFG_STRING, "cpu", 0, 0, backend, "compute backend"),
};
static const bt_cfg_table_t bench_table = {
    .prog = "baton bench-engine",
    .summary = "Prefill and decode throughput of the engine (prints a table on stdout).",
    .opts = bench_opts,
    .n_opts = sizeof bench_opts / sizeof bench_opts[0],
};

#define MAX_BATCHES 16

typedef struct {
    bt_engine_t *e;
    const bench_cfg_t *c;
    int32_t n_vocab;
    int32_t bos;
    bt_kv_seq_t kv[256];
    int32_t tok[256];
    bt_batch_seq_t b[256];
    float *logits;   /* (256, n_vocab) */
    int32_t *prompt; /* (prompt_len) */
} bench_t;

static void seqs_reset(bench_t *bn, int n, int32_t max_tokens)
{
    for (int i = 0; i < n; i++) {
        bt_kv_seq_fini(&bn->kv[i], bt_engine_kv_pool(bn->e));
        if (max_tokens)
            bt_kv_seq_init(&bn->kv[i], bt_engine_kv_pool(bn->e), max_tokens);
    }
}

/* Seconds for one prefill of the whole prompt. */
static double bench_prefill(bench_t *bn)
{
    seqs_reset(bn, 1, bn->c->prompt_len + 1);
    bt_batch_seq_t b = {.kv = &bn->kv[0],
                        .tokens = bn->prompt,
                        .n_tokens = bn->c->prompt_len,
                        .logits = BT_LOGITS_LAST};
    double t0 = cli_now();
    int st = bt_engine_forward(bn->e, &b, 1, bn->logits);
    double t = cli_now() - t0;
    return st == BT_OK ? t : -1;
}

/* Seconds for gen decode steps of a batch of n sequences (from one BOS token each). */
static double bench_decode(bench_t *bn, int n)
{
    seqs_reset(bn, n, bn->c->gen + 1);
    for (int i = 0; i < n; i++)
        bn->tok[i] = bn->bos;
    double t0 = cli_now();
    for (int step = 0; step < bn->c->gen; step++) {
        for (int i = 0; i < n; i++)
            bn->b[i] = (bt_batch_seq_t){
                .kv = &bn->kv[i], .tokens = &bn->tok[i], .n_tokens = 1, .logits = BT_LOGITS_LAST};
        if (bt_engine_forward(bn->e, bn->b, n, bn->logits) != BT_OK)
            return -1;
        for (int i = 0; i < n; i++)
            bn->tok[i] = bt_argmax(bn->logits + (size_t)i * bn->n_vocab, bn->n_vocab);
    }
    return cli_now() - t0;
}

/* Peak and current resident memory from /proc/self/status, in MiB. */
static void rss_mib(double *peak, double *cur)
{
    char line[256];
    FILE *f = fopen("/proc/self/status", "r");
    *peak = *cur = 0;
    while (f && fgets(line, sizeof line, f)) {
        long kb;
        if (sscanf(line, "VmHWM: %ld", &kb) == 1)
            *peak = kb / 1024.0;
        if (sscanf(line, "VmRSS: %ld", &kb) == 1)
            *cur = kb / 1024.0;
    }
    if (f)
        fclose(f);
}

/* Runs a test reps times after a warm-up and prints mean and deviation of tokens/s. */
static int bench_report(bench_t *bn, const char *name, int n_seq, int64_t tokens)
{
    double sum = 0, sq = 0;
    for (int r = -1; r < bn->c->reps; r++) {
        double t = n_seq ? bench_decode(bn, n_seq) : bench_prefill(bn);
        if (t <= 0)
            return -1;
        if (r >= 0) {
            sum += tokens / t;
            sq += (tokens / t) * (tokens / t);
        }
    }
    double mean = sum / bn->c->reps, var = sq / bn->c->reps - mean * mean;
    printf("| %-18s | %10.2f ± %-8.2f |\n", name, mean, var > 0 ? sqrt(var) : 0.0);
    fflush(stdout);
    return 0;
}

static int bench_all(bench_t *bn, const int *batches, int n_batches)
{
    const bt_model_hparams_t *hp = &bt_engine_model(bn->e)->hp;
    char name[64];
    printf("model: %s, %s weights, dim %d, %d layers, %d heads, %d kv heads, ffn %d, vocab %d\n",
           hp->name, bt_type_name(hp->weight_type), hp->dim, hp->n_layers, hp->n_heads,
           hp->n_kv_heads, hp->ffn_dim, hp->n_vocab);
    printf("| %-18s | %-21s |\n|--------------------|-----------------------|\n", "test",
           "tokens/s");
    snprintf(name, sizeof name, "pp%d", bn->c->prompt_len);
    if (bench_report(bn, name, 0, bn->c->prompt_len) != 0)
        return -1;
    for (int i = 0; i < n_batches; i++) {
        snprintf(name, sizeof name, "tg%d batch %d", bn->c->gen, batches[i]);
        if (bench_report(bn, name, batches[i], (int64_t)batches[i] * bn->c->gen) != 0)
            return -1;
    }
    double peak, cur;
    rss_mib(&peak, &cur);
    printf("resident memory: %.1f MiB now, %.1f MiB peak\n", cur, peak);
    return 0;
}

static int parse_batches(const char *s, int *out)
{
    int n = 0;
    for (const char *p = s; *p && n < MAX_BATCHES;) {
        char *end;
        long v = strtol(p, &end, 10);
        if (end == p || v < 1 || v > 256)
            return -1;
        out[n++] = (int)v;
        p = *end == ',' ? end + 1 : end;
        if (*end && *end != ',')
            return -1;
    }
    return n;
}

static int bench_with_model(const bench_cfg_t *c, const bt_model_t *m, const int *batches,
                            int n_batches)
{
    int max_b = 1;
    for (int i = 0; i < n_batches; i++)
        max_b = batches[i] > max_b ? batches[i] : max_b;
    int32_t max_ctx = c->prompt_len > c->gen ? c->prompt_len + 1 : c->gen + 1;
    size_t per_tok = bt_model_kv_bytes_per_token(&m->hp, BT_TYPE_F32);
    bt_engine_params_t ep = {.backend = c->backend,
                             .n_threads = c->threads,
                             .max_batch_tokens = c->prompt_len > max_b ? c->prompt_len : max_b,
                             .max_seqs = max_b,
                             .kv_budget_bytes = per_tok * (size_t)(max_ctx + 32) * max_b};
    bench_t *bn = bt_calloc(1, sizeof *bn);
    int rc = 1;
    if (!bn || bt_engine_create(m, &ep, &bn->e) != BT_OK)
        goto out;
    bn->c = c;
    bn->n_vocab = m->hp.n_vocab;
    bn->bos = bt_tokenizer_bos(m->tok) >= 0 ? bt_tokenizer_bos(m->tok) : 1;
    bn->logits = bt_malloc((size_t)max_b * m->hp.n_vocab * sizeof(float));
    bn->prompt = bt_malloc((size_t)c->prompt_len * sizeof(int32_t));
    if (!bn->logits || !bn->prompt)
        goto out;
    uint64_t x = 12345;
    for (int i = 0; i < c->prompt_len; i++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        bn->prompt[i] = (int32_t)((x >> 33) % (uint64_t)m->hp.n_vocab);
    }
    printf("backend: %s, threads: %d\n", c->backend, c->threads);
    rc = bench_all(bn, batches, n_batches) == 0 ? 0 : 1;
out:
    if (bn) {
        if (bn->e)
            seqs_reset(bn, 256, 0);
        bt_free(bn->logits);
        bt_free(bn->prompt);
        bt_engine_destroy(bn->e);
        bt_free(bn);
    }
    return rc;
}

int cli_bench_engine(int argc, char **argv)
{
    bench_cfg_t c = {0};
    int batches[MAX_BATCHES], n_batches, rc = 2;
    int st = bt_cfg_parse(&bench_table, &c, argc, argv, 1, NULL, 0, NULL);
    if (st != BT_OK) {
        rc = st == BT_AGAIN ? 0 : 2;
        goto out;
    }
    if ((n_batches = parse_batches(c.batches, batches)) <= 0) {
        fprintf(stderr, "baton bench-engine: --batches wants sizes 1..256 like 1,4,16\n");
        goto out;
    }
    bt_model_t *m = cli_load_model(c.model, c.tokenizer);
    rc = m ? bench_with_model(&c, m, batches, n_batches) : 1;
    bt_model_destroy(m);
out:
    bt_cfg_free(&bench_table, &c);
    return rc;
}
