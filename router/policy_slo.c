/* SPDX-License-Identifier: MIT */
/*
 * policy_slo.c - slo-aware placement: predict each candidate's TTFT and TPOT for the request
 * from the latency profile and the instance's load, and pick the placement with the most
 * slack to the request's objectives.
 *
 * Slack is normalized per objective, (slo - predicted) / slo, and a placement's slack is the
 * smaller of its two, because a request only counts toward goodput when it meets both. In a
 * pair the prefill side decides TTFT and the decode side TPOT, and they do not interact (the
 * transfer time depends only on the prompt), so the best pair is the best prefill with the
 * best decode: O(P + D), not O(P x D). The predictions are deliberately simple (each waiting
 * prompt prefilled as its own batch, which overestimates the wait when prompts batch together;
 * the load the router sent since the last heartbeat counted in full): their job is to rank
 * instances, not to be exact.
 */
#include "policy.h"

#include "common/alloc.h"
#include "common/status.h"

typedef struct {
    bt_profile_t prof;
} slo_ctx_t;

/* Time for the prompts waiting on an instance: n prompts of Q tokens in all, each its own
 * batch of Q/n tokens. */
static double queue_wait_ms(const bt_profile_t *p, double n, double q_tokens)
{
    if (n <= 0 || q_tokens <= 0)
        return 0;
    return n * p->prefill.a_ms + p->prefill.b_ms_per_token * q_tokens +
           p->prefill.c_ms_per_token2 * q_tokens * q_tokens / n;
}

double router_slo_predict_ttft_ms(const bt_profile_t *prof, const router_instance_t *inst,
                                  const router_job_t *job, int pair)
{
    double n = (double)inst->queue_len + inst->pend_reqs;
    double q = (double)inst->queued_tokens + (double)inst->pend_tokens;
    double l = job->n_prompt_tokens;
    double t = queue_wait_ms(prof, n, q) + bt_profile_prefill_ms(prof, l, l * l);
    if (pair) {
        /* KV computed but not shipped yet goes out before ours. */
        double backlog = (double)inst->unshipped_blocks * inst->kv_block_size;
        t += bt_profile_transfer_ms(prof, l);
        if (backlog > 0)
            t += bt_profile_transfer_ms(prof, backlog) - prof->transfer_latency_ms;
    }
    return t;
}

double router_slo_predict_tpot_ms(const bt_profile_t *prof, const router_instance_t *inst,
                                  const router_job_t *job)
{
    double batch = (double)inst->running + inst->queue_len + inst->pend_reqs + 1;
    double ctx = (double)inst->queued_tokens + (double)inst->pend_tokens + job->n_prompt_tokens +
                 job->max_tokens / 2.0;
    return bt_profile_decode_ms(prof, ctx, batch);
}

/* A colocated instance prefills first: the new prompt waits for the queue and one decode step,
 * and every prompt in its queue stalls the decode steps of the requests already running. */
static void predict_colocated(const bt_profile_t *prof, const router_instance_t *x,
                              const router_job_t *job, double *ttft, double *tpot)
{
    double n = (double)x->queue_len + x->pend_reqs;
    double q = (double)x->pend_tokens + (double)x->queued_tokens;
    double l = job->n_prompt_tokens;
    double ctx = (double)x->running * (l + job->max_tokens / 2.0);
    double wait = queue_wait_ms(prof, n, q);
    *ttft =
        wait + bt_profile_prefill_ms(prof, l, l * l) + bt_profile_decode_ms(prof, ctx, x->running);
    double steps = job->max_tokens > 1 ? job->max_tokens - 1 : 1;
    *tpot = bt_profile_decode_ms(prof, ctx + l + job->max_tokens / 2.0, x->running + 1.0) +
            wait / steps;
}

static double slack(const router_job_t *job, double ttft, double tpot)
{
    double a = (job->slo_ttft_ms - ttft) / job->slo_ttft_ms;
    double b = (job->slo_tpot_ms - tpot) / job->slo_tpot_ms;
    return a < b ? a : b;
}

static int slo_create(const router_policy_params_t *params, void **ctx)
{
    slo_ctx_t *s = bt_malloc(sizeof *s);
    if (!s)
        return BT_ERR_NOMEM;
    s->prof = *params->profile;
    *ctx = s;
    return BT_OK;
}

static void slo_destroy(void *ctx)
{
    bt_free(ctx);
}

static int place_colocated(const bt_profile_t *prof, const router_cands_t *c,
                           const router_job_t *job, router_placement_t *out)
{
    double best = 0;
    for (int i = 0; i < c->n_colocated; i++) {
        double ttft, tpot;
        predict_colocated(prof, c->colocated[i], job, &ttft, &tpot);
        double s = slack(job, ttft, tpot);
        if (!out->decode || s > best) {
            best = s;
            out->decode = c->colocated[i];
            out->ttft_ms = ttft;
            out->tpot_ms = tpot;
            out->slack = s;
        }
    }
    return BT_OK;
}

static int slo_place(void *ctx, const router_cands_t *c, const router_job_t *job,
                     router_placement_t *out)
{
    const bt_profile_t *prof = &((slo_ctx_t *)ctx)->prof;
    if (c->n_colocated > 0)
        return place_colocated(prof, c, job, out);
    for (int i = 0; i < c->n_prefill; i++) {
        double t = router_slo_predict_ttft_ms(prof, c->prefill[i], job, 1);
        if (!out->prefill || t < out->ttft_ms) {
            out->prefill = c->prefill[i];
            out->ttft_ms = t;
        }
    }
    for (int i = 0; i < c->n_decode; i++) {
        double t = router_slo_predict_tpot_ms(prof, c->decode[i], job);
        if (!out->decode || t < out->tpot_ms) {
            out->decode = c->decode[i];
            out->tpot_ms = t;
        }
    }
    out->slack = slack(job, out->ttft_ms, out->tpot_ms);
    return BT_OK;
}

const router_policy_ops_t router_policy_slo_aware = {
    .name = "slo-aware",
    .help = "the placement with the most slack to the TTFT/TPOT objectives (needs --profile)",
    .needs_profile = 1,
    .create = slo_create,
    .destroy = slo_destroy,
    .place = slo_place,
};
