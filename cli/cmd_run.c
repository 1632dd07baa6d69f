/* SPDX-License-Identifier: MIT */
/*
 * cmd_run.c - `baton run`: offline generation of one sequence. Only the generated text goes to
 * stdout (streamed as whole UTF-8 characters); statistics go to stderr.
 */
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "common/alloc.h"
#include "common/config.h"
#include "common/engine.h"
#include "common/log.h"
#include "common/sampler.h"
#include "common/stopcond.h"

typedef struct {
    char *model;
    char *tokenizer;
    char *prompt;
    char *backend;
    char *stop;
    int n_predict;
    float temp;
    int top_k;
    float top_p;
    float min_p;
    float repeat_penalty;
    int64_t seed;
    int threads;
    int ctx;
    int batch;
    int ignore_eos;
    int bos;
} run_cfg_t;

#define OPT(n, s, t, d, lo, hi, f, h)                                                              \
    {                                                                                              \
        n, s, t, d, lo, hi, offsetof(run_cfg_t, f), h                                              \
    }
static const bt_cfg_opt_t run_opts[] = {
    OPT("model", 'm', BT_CFG_STRING, NULL, 0, 0, model, "model file (.gguf, or llama2.c .bin)"),
    OPT("tokenizer", 0, BT_CFG_STRING, NULL, 0, 0, tokenizer, "llama2.c tokenizer (.bin models)"),
    OPT("prompt", 'p', BT_CFG_STRING, "", 0, 0, prompt, "prompt text"),
    OPT("n-predict", 'n', BT_CFG_INT, "256", 1, 1 << 20, n_predict, "tokens to generate at most"),
    OPT("temp", 't', BT_CFG_FLOAT, "0.8", 0, 100, temp, "temperature; 0 is greedy"),
    OPT("top-k", 0, BT_CFG_INT, "40", 0, 1 << 20, top_k, "top-k filter; 0 off"),
    OPT("top-p", 0, BT_CFG_FLOAT, "0.95", 0, 1, top_p, "top-p filter; 1 off"),
    OPT("min-p", 0, BT_CFG_FLOAT, "0.05", 0, 1, min_p, "min-p filter; 0 off"),
    OPT("repeat-penalty", 0, BT_CFG_FLOAT, "1", 0, 100, repeat_penalty, "repetition penalty"),
    OPT("seed", 's', BT_CFG_INT64, "42", 0, 9.2e18, seed, "random seed"),
    OPT("stop", 0, BT_CFG_STRING, NULL, 0, 0, stop, "stop when this text is generated"),
    OPT("ignore-eos", 0, BT_CFG_BOOL, "0", 0, 0, ignore_eos, "do not stop at end-of-sequence"),
    OPT("bos", 0, BT_CFG_BOOL, "1", 0, 0, bos, "start the prompt with BOS"),
    OPT("threads", 0, BT_CFG_INT, "0", 0, 1024, threads, "compute threads; 0: all cores"),
    OPT("ctx", 'c', BT_CFG_INT, "0", 0, 1 << 20, ctx, "context length; 0: model's, at most 4096"),
    OPT("batch", 'b', BT_CFG_INT, "512", 1, 65536, batch, "prompt tokens per forward pass"),
    OPT("backend", 0, BT_CFG_STRING, "cpu", 0, 0, backend, "compute backend"),
};
static const bt_cfg_table_t run_table = {
    .prog = "baton run",
    .summary = "Generates text from a prompt; prints only the generated text on stdout.",
    .opts = run_opts,
    .n_opts = sizeof run_opts / sizeof run_opts[0],
};

typedef struct {
    bt_engine_t *engine;
    bt_kv_seq_t kv;
    float *logits;
    int32_t *ids;
} run_state_t;

/* Feeds the prompt in chunks of the engine's batch size; leaves the last logits. */
static int run_prefill(run_state_t *r, int32_t n_ids)
{
    int32_t chunk = bt_engine_max_batch_tokens(r->engine);
    for (int32_t i = 0; i < n_ids; i += chunk) {
        int32_t n = n_ids - i < chunk ? n_ids - i : chunk;
        bt_batch_seq_t b = {.kv = &r->kv,
                            .tokens = r->ids + i,
                            .n_tokens = n,
                            .logits = i + n == n_ids ? BT_LOGITS_LAST : BT_LOGITS_NONE};
        int st = bt_engine_forward(r->engine, &b, 1, r->logits);
        if (st != BT_OK)
            return st;
    }
    return BT_OK;
}

static void emit(const char *s, size_t n)
{
    fwrite(s, 1, n, stdout);
    fflush(stdout);
}

/* Samples, streams and decodes until a stop condition; returns tokens generated, or -1. */
static int run_generate(run_state_t *r, const run_cfg_t *c, bt_sampler_t *smp, bt_stop_t *stop,
                        const bt_tokenizer_t *tok, bt_stop_reason_t *why)
{
    bt_detok_t dt;
    size_t cap_piece = bt_detok_max_bytes(tok), cap_text = cap_piece + BT_STOP_MAX_STRING_BYTES;
    char *piece = bt_malloc(cap_piece), *text = bt_malloc(cap_text);
    int n = 0;
    *why = BT_STOP_NONE;
    if (!piece || !text)
        n = -1;
    bt_detok_init(&dt, tok);
    /* Text straight after BOS loses its leading space (as sentencepiece and llama2.c decode);
     * a continuation of a prompt keeps it, as the served text does. */
    if (n == 0 && c->bos && (!c->prompt || !c->prompt[0]) && bt_tokenizer_bos(tok) >= 0)
        bt_detok_push(&dt, bt_tokenizer_bos(tok), piece, cap_piece); /* control: no text */
    while (n >= 0 && *why == BT_STOP_NONE) {
        int32_t next = bt_sampler_sample(smp, r->logits);
        bt_sampler_accept(smp, next);
        size_t np = bt_detok_push(&dt, next, piece, cap_piece), nt;
        *why = bt_stop_push(stop, next, piece, np, text, cap_text, &nt);
        emit(text, nt);
        n++;
        if (*why == BT_STOP_NONE && r->kv.n_tokens >= r->kv.max_tokens)
            *why = BT_STOP_LENGTH;
        if (*why != BT_STOP_NONE)
            break;
        bt_batch_seq_t b = {.kv = &r->kv, .tokens = &next, .n_tokens = 1, .logits = BT_LOGITS_LAST};
        if (bt_engine_forward(r->engine, &b, 1, r->logits) != BT_OK)
            n = -1;
    }
    if (n >= 0) {
        size_t nt = bt_stop_flush(stop, text, cap_text);
        nt += bt_detok_flush(&dt, text + nt, cap_text - nt);
        emit(text, nt);
    }
    bt_free(piece);
    bt_free(text);
    return n;
}

static int run_with_model(const run_cfg_t *c, bt_model_t *m)
{
    const bt_model_hparams_t *hp = &m->hp;
    int32_t ctx =
        c->ctx ? c->ctx : (hp->n_ctx_train > 0 && hp->n_ctx_train < 4096 ? hp->n_ctx_train : 4096);
    bt_engine_params_t ep = {.backend = c->backend,
                             .n_threads = c->threads,
                             .max_batch_tokens = c->batch,
                             .max_seqs = 1,
                             .kv_budget_bytes =
                                 (size_t)(ctx + 16) * bt_model_kv_bytes_per_token(hp, BT_TYPE_F32)};
    bt_sampler_params_t sp = {.temperature = c->temp,
                              .top_k = c->top_k,
                              .top_p = c->top_p,
                              .min_p = c->min_p,
                              .repeat_penalty = c->repeat_penalty,
                              .seed = (uint64_t)c->seed};
    const char *stops[1] = {c->stop};
    bt_stop_params_t stp = {.max_tokens = c->n_predict,
                            .ignore_eos = c->ignore_eos,
                            .stop_strs = stops,
                            .n_stop_strs = c->stop && *c->stop ? 1 : 0};
    run_state_t r = {0};
    bt_sampler_t *smp = NULL;
    bt_stop_t *stop = NULL;
    int rc = 1, st;
    int32_t n_ids = 0;
    if ((st = bt_engine_create(m, &ep, &r.engine)) != BT_OK ||
        (st = bt_sampler_create(&sp, hp->n_vocab, &smp)) != BT_OK ||
        (st = bt_stop_create(&stp, m->tok, &stop)) != BT_OK ||
        (st = bt_kv_seq_init(&r.kv, bt_engine_kv_pool(r.engine), ctx)) != BT_OK) {
        bt_error("run: setup failed: %s", bt_status_str(st));
        goto out;
    }
    r.logits = bt_malloc((size_t)hp->n_vocab * sizeof(float));
    r.ids = bt_malloc((size_t)ctx * sizeof(int32_t));
    if (!r.logits || !r.ids)
        goto out;
    size_t plen = strlen(c->prompt);
    st = bt_tokenizer_encode(m->tok, c->prompt, plen, c->bos, 0, r.ids, ctx, &n_ids);
    if (st != BT_OK || n_ids == 0) {
        bt_error("run: the prompt (%d tokens) does not fit the context of %d", n_ids, ctx);
        goto out;
    }
    for (int32_t i = 0; i < n_ids; i++)
        bt_sampler_accept(smp, r.ids[i]);
    double t0 = cli_now();
    if ((st = run_prefill(&r, n_ids)) != BT_OK) {
        bt_error("run: prefill failed: %s", bt_status_str(st));
        goto out;
    }
    double t1 = cli_now();
    bt_stop_reason_t why;
    int n_gen = run_generate(&r, c, smp, stop, m->tok, &why);
    double t2 = cli_now();
    if (n_gen < 0)
        goto out;
    fprintf(stderr,
            "\nprompt %d tokens in %.3f s (%.1f tok/s); generated %d tokens in %.3f s "
            "(%.1f tok/s); stop: %s\n",
            n_ids, t1 - t0, n_ids / (t1 - t0), n_gen, t2 - t1,
            n_gen > 1 ? (n_gen - 1) / (t2 - t1) : 0.0, bt_stop_reason_str(why));
    rc = 0;
out:
    if (r.engine)
        bt_kv_seq_fini(&r.kv, bt_engine_kv_pool(r.engine));
    bt_free(r.ids);
    bt_free(r.logits);
    bt_stop_destroy(stop);
    bt_sampler_destroy(smp);
    bt_engine_destroy(r.engine);
    return rc;
}

int cli_run(int argc, char **argv)
{
    run_cfg_t c = {0};
    int st = bt_cfg_parse(&run_table, &c, argc, argv, 1, NULL, 0, NULL);
    if (st != BT_OK) {
        bt_cfg_free(&run_table, &c);
        return st == BT_AGAIN ? 0 : 2;
    }
    int rc = 1;
    bt_model_t *m = cli_load_model(c.model, c.tokenizer);
    if (m) {
        rc = run_with_model(&c, m);
        bt_model_destroy(m);
    }
    bt_cfg_free(&run_table, &c);
    return rc;
}
