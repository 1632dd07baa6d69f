/* SPDX-License-Identifier: MIT */
/*
 * seqgen.c - per-sequence sampling, stop conditions and text (see seqgen.h).
 *
 * Text goes through the stop conditions even when the client did not ask for it, because stop
 * strings are matched on text; it is only returned when return_text is set.
 */
#include "seqgen.h"

#include <math.h>
#include <string.h>

#include "alloc.h"
#include "btassert.h"
#include "sampler.h"
#include "status.h"
#include "stopcond.h"

struct bt_seqgen {
    const bt_req_t *req; /* borrowed */
    bt_sampler_t *smp;
    bt_stop_t *stop;
    bt_detok_t detok;
    int32_t *tokens; /* (req->max_ctx) prompt then generated */
    int32_t len;
    int32_t n_vocab;
    char *piece; /* (cap_piece) one token's text */
    size_t cap_piece;
    char *text; /* (cap_text) text released by one step, flush included */
    size_t cap_text;
};

int bt_seqgen_create(const bt_req_t *req, const bt_tokenizer_t *tok, int32_t n_vocab,
                     bt_seqgen_t **out)
{
    bt_seqgen_t *g = bt_calloc(1, sizeof *g);
    if (!g)
        return BT_ERR_NOMEM;
    g->req = req;
    g->n_vocab = n_vocab;
    g->cap_piece = bt_detok_max_bytes(tok);
    g->cap_text = 2 * g->cap_piece + 2 * BT_STOP_MAX_STRING_BYTES + 32;
    g->tokens = bt_malloc((size_t)req->max_ctx * sizeof(int32_t));
    g->piece = bt_malloc(g->cap_piece);
    g->text = bt_malloc(g->cap_text);
    int st = BT_ERR_NOMEM;
    if (!g->tokens || !g->piece || !g->text)
        goto err;
    if ((st = bt_sampler_create(&req->sampling, n_vocab, &g->smp)) != BT_OK ||
        (st = bt_stop_create(&req->stop, tok, &g->stop)) != BT_OK)
        goto err;
    memcpy(g->tokens, req->prompt, (size_t)req->n_prompt * sizeof(int32_t));
    g->len = req->n_prompt;
    for (int32_t i = 0; i < req->n_prompt; i++)
        bt_sampler_accept(g->smp, req->prompt[i]);
    /* The text continues the prompt: a leading space is dropped only right after BOS. */
    bt_detok_init(&g->detok, tok);
    g->detok.prev_id = req->prompt[req->n_prompt - 1];
    *out = g;
    return BT_OK;
err:
    bt_seqgen_destroy(g);
    return st;
}

void bt_seqgen_destroy(bt_seqgen_t *g)
{
    if (!g)
        return;
    bt_stop_destroy(g->stop);
    bt_sampler_destroy(g->smp);
    bt_free(g->text);
    bt_free(g->piece);
    bt_free(g->tokens);
    bt_free(g);
}

static Baton__FinishReason finish_of(bt_stop_reason_t why)
{
    switch (why) {
    case BT_STOP_EOS: return BATON__FINISH_REASON__FINISH_EOS;
    case BT_STOP_TOKEN: return BATON__FINISH_REASON__FINISH_STOP_TOKEN;
    case BT_STOP_STRING: return BATON__FINISH_REASON__FINISH_STOP_STRING;
    case BT_STOP_LENGTH: return BATON__FINISH_REASON__FINISH_LENGTH;
    default: return BATON__FINISH_REASON__FINISH_NONE;
    }
}

/* Records token as the next generated one: sampler history and position, stop state, text. */
static void record(bt_seqgen_t *g, int32_t token, bt_seqgen_step_t *out)
{
    int32_t n_gen = g->len - g->req->n_prompt;
    bt_sampler_accept(g->smp, token);
    bt_sampler_set_position(g->smp, (uint64_t)n_gen + 1);
    g->tokens[g->len++] = token;
    size_t np = bt_detok_push(&g->detok, token, g->piece, g->cap_piece), nt = 0;
    bt_stop_reason_t why = bt_stop_push(g->stop, token, g->piece, np, g->text, g->cap_text, &nt);
    if (why == BT_STOP_NONE && g->len >= g->req->max_ctx)
        why = BT_STOP_LENGTH; /* the context is full */
    if (why != BT_STOP_NONE && why != BT_STOP_STRING) {
        nt += bt_stop_flush(g->stop, g->text + nt, g->cap_text - nt);
        nt += bt_detok_flush(&g->detok, g->text + nt, g->cap_text - nt);
    }
    *out = (bt_seqgen_step_t){.token = token,
                              .index = (uint32_t)n_gen,
                              .text = g->text,
                              .n_text = g->req->return_text ? nt : 0,
                              .finish = finish_of(why)};
}

void bt_seqgen_sample(bt_seqgen_t *g, float *logits, bt_seqgen_step_t *out)
{
    bt_sampler_set_position(g->smp, (uint64_t)(g->len - g->req->n_prompt));
    record(g, bt_sampler_sample(g->smp, logits), out);
}

void bt_seqgen_out_want(const bt_sampler_params_t *p, const int32_t *hist, int32_t n_hist,
                        int32_t n_vocab, bt_engine_out_t *o, int32_t row)
{
    o->k = bt_sampler_cands_merge(o->k, p);
    o->tau[row] = bt_sampler_params_tau(p);
    o->pen[row] = p->repeat_penalty;
    o->pen_n[row] = bt_sampler_params_cands(p) > 0
                        ? bt_sampler_penalty_ids(p, hist, n_hist, n_vocab,
                                                 o->pen_ids + (size_t)row * BT_PENALTY_MAX)
                        : 0;
}

typedef struct {
    bt_seqgen_t *const *gens;
    const bt_engine_out_t *o;
    bt_seqgen_step_t *steps;
    const int32_t *rows; /* the rows to sample whole: these (read back), or all (NULL) */
} rows_job_t;

/* Row i of a job, sampled whole: as it came (o->k 0), or read back with its penalty applied. */
static void sample_whole(void *arg, int i)
{
    const rows_job_t *j = arg;
    int32_t row = j->rows ? j->rows[i] : i;
    bt_seqgen_t *g = j->gens[row];
    if (!g)
        return;
    float *logits = j->o->logits + (size_t)row * (size_t)g->n_vocab;
    if (!j->o->k) {
        bt_seqgen_sample(g, logits, &j->steps[row]);
        return;
    }
    bt_sampler_set_position(g->smp, (uint64_t)(g->len - g->req->n_prompt));
    record(g, bt_sampler_sample_penalized(g->smp, logits), &j->steps[row]);
}

void bt_seqgen_sample_rows(bt_seqgen_t *const *gens, int32_t n, bt_engine_t *e, bt_engine_out_t *o,
                           bt_parfor_t *par, bt_seqgen_step_t *steps)
{
    rows_job_t job = {.gens = gens, .o = o, .steps = steps};
    if (!o->k) {
        bt_parfor_run(par, n, sample_whole, &job);
        return;
    }
    int32_t n_whole = 0;
    for (int32_t i = 0; i < n; i++) {
        bt_seqgen_t *g = gens[i];
        if (!g)
            continue;
        bt_sampler_set_position(g->smp, (uint64_t)(g->len - g->req->n_prompt));
        size_t at = (size_t)i * (size_t)o->k;
        double total = o->tau && o->tau[i] > 0 ? o->totals[i] : NAN;
        int32_t token = bt_sampler_sample_top(g->smp, o->ids + at, o->vals + at, o->k, total);
        if (token != BT_SAMPLER_NEED_ROW) {
            record(g, token, &steps[i]);
            continue;
        }
        int st = bt_engine_logits_row(e, i, o->logits + (size_t)i * (size_t)g->n_vocab);
        BT_ASSERT(st == BT_OK); /* a forward with candidates leaves its rows (forward_out) */
        o->whole[n_whole++] = i;
    }
    job.rows = o->whole;
    bt_parfor_run(n_whole > 1 ? par : NULL, n_whole, sample_whole, &job);
}

void bt_seqgen_append(bt_seqgen_t *g, int32_t token, bt_seqgen_step_t *out)
{
    record(g, token, out);
}

const int32_t *bt_seqgen_tokens(const bt_seqgen_t *g)
{
    return g->tokens;
}

int32_t bt_seqgen_len(const bt_seqgen_t *g)
{
    return g->len;
}

int32_t bt_seqgen_n_generated(const bt_seqgen_t *g)
{
    return g->len - g->req->n_prompt;
}

const int32_t *bt_seqgen_generated(const bt_seqgen_t *g)
{
    return g->tokens + g->req->n_prompt;
}
