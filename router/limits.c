/* SPDX-License-Identifier: MIT */
/*
 * limits.c - request admission checks (see limits.h).
 *
 * A text prompt is bounded in bytes before it is tokenized, because tokenizing runs on the
 * router's event loop and its cost grows with the text: no Llama token is longer than 64
 * bytes of text, so more than 64 x max_prompt_tokens bytes cannot fit and is refused at once.
 */
#include "limits.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "common/alloc.h"
#include "common/request.h"
#include "common/sampler.h"
#include "common/status.h"
#include "common/stopcond.h"

#define LIMITS_MAX_BYTES_PER_TOKEN 64

__attribute__((format(printf, 4, 5))) static int refuse(char *err, size_t cap, int status,
                                                        const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, cap, fmt, ap);
    va_end(ap);
    return status;
}

static int check_ids(const router_limits_t *lim, const int32_t *ids, size_t n, const char *what,
                     char *err, size_t cap)
{
    for (size_t i = 0; i < n; i++)
        if (ids[i] < 0 || (lim->n_vocab > 0 && ids[i] >= lim->n_vocab))
            return refuse(err, cap, BT_ERR_INVAL, "%s[%zu] = %d is not a token id (vocabulary %d)",
                          what, i, ids[i], lim->n_vocab);
    return BT_OK;
}

static int tokenize(const router_limits_t *lim, const Baton__GenerateRequest *req,
                    router_admit_t *out, char *err, size_t cap)
{
    size_t len = strlen(req->prompt);
    if (!lim->tok)
        return refuse(err, cap, BT_ERR_UNSUPPORTED,
                      "this router has no tokenizer (started without --model): send prompt_ids");
    if (len > (size_t)lim->max_prompt_tokens * LIMITS_MAX_BYTES_PER_TOKEN)
        return refuse(err, cap, BT_ERR_RANGE, "prompt of %zu bytes cannot fit in %u tokens", len,
                      lim->max_prompt_tokens);
    int32_t max = (int32_t)lim->max_prompt_tokens, n = 0;
    int32_t *ids = bt_malloc((size_t)max * sizeof *ids + sizeof *ids);
    if (!ids)
        return refuse(err, cap, BT_ERR_NOMEM, "out of memory");
    int st = bt_tokenizer_encode(lim->tok, req->prompt, len, req->add_bos, 0, ids, max, &n);
    if (st != BT_OK || n == 0) {
        bt_free(ids);
        if (st == BT_ERR_NOSPACE || st == BT_ERR_RANGE)
            return refuse(err, cap, BT_ERR_RANGE, "prompt of %d tokens is longer than %u", n,
                          lim->max_prompt_tokens);
        return refuse(err, cap, BT_ERR_INVAL, "prompt cannot be tokenized: %s",
                      n == 0 ? "it is empty" : bt_status_str(st));
    }
    out->prompt_owned = ids;
    out->prompt = ids;
    out->n_prompt = (uint32_t)n;
    return BT_OK;
}

static int check_prompt(const router_limits_t *lim, const Baton__GenerateRequest *req,
                        router_admit_t *out, char *err, size_t cap)
{
    if (req->n_prompt_ids > 0) {
        if (req->n_prompt_ids > lim->max_prompt_tokens)
            return refuse(err, cap, BT_ERR_RANGE, "prompt of %zu tokens is longer than %u",
                          req->n_prompt_ids, lim->max_prompt_tokens);
        out->prompt = req->prompt_ids;
        out->n_prompt = (uint32_t)req->n_prompt_ids;
        return check_ids(lim, req->prompt_ids, req->n_prompt_ids, "prompt_ids", err, cap);
    }
    if (!req->prompt || !req->prompt[0])
        return refuse(err, cap, BT_ERR_INVAL, "empty prompt: set prompt or prompt_ids");
    return tokenize(lim, req, out, err, cap);
}

static int check_sampling(const router_limits_t *lim, const Baton__SamplingParams *s, char *err,
                          size_t cap)
{
    if (!s)
        return BT_OK;
    bt_sampler_params_t sp = bt_sampling_from_proto(s);
    if (bt_sampler_params_check(&sp) != BT_OK)
        return refuse(err, cap, BT_ERR_INVAL,
                      "sampling parameters out of range (temperature %g, top_k %d, top_p %g, "
                      "min_p %g, repeat_penalty %g, repeat_last_n %d)",
                      (double)s->temperature, s->top_k, (double)s->top_p, (double)s->min_p,
                      (double)s->repeat_penalty, s->repeat_last_n);
    if (s->n_stop > BT_STOP_MAX_STRINGS || s->n_stop_ids > BT_STOP_MAX_IDS)
        return refuse(err, cap, BT_ERR_RANGE, "at most %d stop strings and %d stop ids",
                      BT_STOP_MAX_STRINGS, BT_STOP_MAX_IDS);
    for (size_t i = 0; i < s->n_stop; i++) {
        size_t n = strlen(s->stop[i]);
        if (n == 0 || n > BT_STOP_MAX_STRING_BYTES)
            return refuse(err, cap, BT_ERR_INVAL, "stop string %zu must have 1 to %d bytes", i,
                          BT_STOP_MAX_STRING_BYTES);
    }
    return check_ids(lim, s->stop_ids, s->n_stop_ids, "stop_ids", err, cap);
}

static int check_slo(const router_limits_t *lim, const Baton__Slo *slo, router_admit_t *out,
                     char *err, size_t cap)
{
    double ttft = slo ? slo->ttft_ms : 0, tpot = slo ? slo->tpot_ms : 0;
    if (!(ttft >= 0) || !(tpot >= 0) || !isfinite(ttft) || !isfinite(tpot))
        return refuse(err, cap, BT_ERR_INVAL, "objectives must be finite and >= 0 ms");
    out->slo_ttft_ms = ttft > 0 ? ttft : lim->slo_ttft_ms;
    out->slo_tpot_ms = tpot > 0 ? tpot : lim->slo_tpot_ms;
    return BT_OK;
}

/* A resubmission's tokens: no more than it may generate, each in the vocabulary; its text
 * must be made here (a daemon's text of the tokens already out would never come again). */
static int check_resume(const router_limits_t *lim, const Baton__GenerateRequest *req,
                        const router_admit_t *out, char *err, size_t cap)
{
    if (req->n_resume_ids == 0)
        return BT_OK;
    if (req->n_resume_ids > out->max_tokens)
        return refuse(err, cap, BT_ERR_RANGE, "resume_ids has %zu tokens, over max_tokens %u",
                      req->n_resume_ids, out->max_tokens);
    if (req->return_text && !lim->tok)
        return refuse(err, cap, BT_ERR_UNSUPPORTED,
                      "resuming with return_text needs the router's tokenizer (--model)");
    return check_ids(lim, req->resume_ids, req->n_resume_ids, "resume_ids", err, cap);
}

int router_limits_check(const router_limits_t *lim, const Baton__GenerateRequest *req,
                        router_admit_t *out, char *err, size_t cap)
{
    memset(out, 0, sizeof *out);
    if (err && cap)
        err[0] = 0;
    out->max_tokens = req->max_tokens ? req->max_tokens : lim->default_max_tokens;
    if (out->max_tokens > lim->max_tokens)
        return refuse(err, cap, BT_ERR_RANGE, "max_tokens %u is over the limit of %u",
                      out->max_tokens, lim->max_tokens);
    int st = check_sampling(lim, req->sampling, err, cap);
    if (st == BT_OK)
        st = check_slo(lim, req->slo, out, err, cap);
    if (st == BT_OK)
        st = check_resume(lim, req, out, err, cap);
    if (st == BT_OK)
        st = check_prompt(lim, req, out, err, cap);
    if (st != BT_OK) {
        bt_free(out->prompt_owned);
        out->prompt_owned = NULL;
    }
    return st;
}
