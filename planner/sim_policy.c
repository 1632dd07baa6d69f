/* SPDX-License-Identifier: MIT */
/*
 * sim_policy.c - the router's placement policies inside the simulator.
 *
 * These follow router/policy.c and router/policy_slo.c rule for rule (same ranking keys, same
 * TTFT/TPOT predictions, same ties), written against the simulator's instance state instead of
 * heartbeats. What a heartbeat reports maps as: queue_len = prompts waiting (prefill,
 * colocated) or requests placed and not yet batched (decode); running = requests in flight or
 * in the batch; queued_tokens = prompt tokens waiting (prefill, colocated) or context tokens
 * running (decode); unshipped = tokens computed and not yet shipped; free KV = capacity - used.
 * The router also counts what it sent since the last heartbeat; here the state is exact, so
 * that term is zero. If the router's rules change, change them here too: the validation in
 * docs/PERFORMANCE.md rests on the two agreeing.
 */
#include <stdint.h>
#include <string.h>

#include "sim_impl.h"

int pl_policy_parse(const char *name)
{
    if (!name)
        return -1;
    if (!strcmp(name, "round-robin"))
        return PL_POLICY_ROUND_ROBIN;
    if (!strcmp(name, "least-loaded"))
        return PL_POLICY_LEAST_LOADED;
    if (!strcmp(name, "slo-aware"))
        return PL_POLICY_SLO_AWARE;
    return -1;
}

const char *pl_policy_name(pl_policy_t p)
{
    switch (p) {
    case PL_POLICY_ROUND_ROBIN: return "round-robin";
    case PL_POLICY_LEAST_LOADED: return "least-loaded";
    case PL_POLICY_SLO_AWARE: return "slo-aware";
    }
    return "?";
}

static uint64_t queue_len(const sim_inst_t *x)
{
    return x->spec->role == PL_ROLE_DECODE ? (uint64_t)x->n_waiting : x->queue.len;
}

static uint64_t queued_tokens(const sim_inst_t *x)
{
    return x->spec->role == PL_ROLE_DECODE ? (uint64_t)sim_ctx_tokens(x)
                                           : (uint64_t)x->queued_tokens;
}

static uint64_t free_blocks(const sim_t *s, const sim_inst_t *x)
{
    if (x->spec->kv_tokens <= 0)
        return UINT32_MAX;
    return (uint64_t)(x->spec->kv_tokens - x->kv_used) / (uint64_t)s->block;
}

/* --- least-loaded: keys compared in order, smaller is better -------------------------------- */

typedef struct {
    uint64_t k[3];
} load_t;

static load_t load_of(const sim_t *s, const sim_inst_t *x)
{
    uint64_t busy = (uint64_t)x->n_running + queue_len(x);
    switch (x->spec->role) {
    case PL_ROLE_PREFILL: return (load_t){{queued_tokens(x), busy, x->seq}};
    case PL_ROLE_DECODE: return (load_t){{busy, UINT32_MAX - free_blocks(s, x), x->seq}};
    default: return (load_t){{busy, queued_tokens(x), x->seq}};
    }
}

static int load_less(load_t a, load_t b)
{
    for (int i = 0; i < 3; i++)
        if (a.k[i] != b.k[i])
            return a.k[i] < b.k[i];
    return 0;
}

/* Router admission: whether x is a decode instance without room for q's prompt (router_place.c
 * skips an instance that refused with BT_ERR_NOSPACE; decode/decode.c refuses a prompt that
 * would leave fewer free blocks than it runs sequences). */
static int no_room(const sim_t *s, const sim_inst_t *x, const sim_req_t *q)
{
    return s->admit && x->spec->role == PL_ROLE_DECODE && x->spec->kv_tokens > 0 &&
           x->kv_used + sim_round(s, q->prompt) + (int64_t)x->n_running * s->block >
               x->spec->kv_tokens;
}

static int least_loaded(const sim_t *s, pl_role_t role, const sim_req_t *q)
{
    int best = -1;
    load_t lb = {{0}};
    for (int j = 0; j < s->n_role[role]; j++) {
        int i = s->by_role[role][j];
        if (no_room(s, &s->inst[i], q))
            continue;
        load_t l = load_of(s, &s->inst[i]);
        if (best < 0 || load_less(l, lb)) {
            best = i;
            lb = l;
        }
    }
    return best;
}

/* --- slo-aware: router/policy_slo.c's predictions -------------------------------------------- */

static double queue_wait_ms(const bt_profile_t *p, double n, double q_tokens)
{
    if (n <= 0 || q_tokens <= 0)
        return 0;
    return n * p->prefill.a_ms + p->prefill.b_ms_per_token * q_tokens +
           p->prefill.c_ms_per_token2 * q_tokens * q_tokens / n;
}

static double predict_ttft(const sim_inst_t *x, const sim_req_t *q, int pair)
{
    const bt_profile_t *p = x->spec->profile;
    double l = q->prompt;
    double t = queue_wait_ms(p, (double)queue_len(x), (double)queued_tokens(x)) +
               bt_profile_prefill_ms(p, l, l * l);
    if (pair) {
        t += bt_profile_transfer_ms(p, l);
        if (x->unshipped > 0)
            t += bt_profile_transfer_ms(p, (double)x->unshipped) - p->transfer_latency_ms;
    }
    return t;
}

static double predict_tpot(const sim_inst_t *x, const sim_req_t *q)
{
    double batch = (double)x->n_running + (double)queue_len(x) + 1;
    double ctx = (double)queued_tokens(x) + q->prompt + q->output / 2.0;
    return bt_profile_decode_ms(x->spec->profile, ctx, batch);
}

static double slack(const sim_t *s, double ttft, double tpot)
{
    double a = (s->p->slo_ttft_ms - ttft) / s->p->slo_ttft_ms;
    double b = (s->p->slo_tpot_ms - tpot) / s->p->slo_tpot_ms;
    return a < b ? a : b;
}

static double colocated_slack(const sim_t *s, const sim_inst_t *x, const sim_req_t *q)
{
    const bt_profile_t *p = x->spec->profile;
    double n = (double)queue_len(x), l = q->prompt, running = x->n_running;
    double ctx = running * (l + q->output / 2.0);
    double wait = queue_wait_ms(p, n, (double)queued_tokens(x));
    double ttft = wait + bt_profile_prefill_ms(p, l, l * l) + bt_profile_decode_ms(p, ctx, running);
    double steps = q->output > 1 ? q->output - 1 : 1;
    double tpot = bt_profile_decode_ms(p, ctx + l + q->output / 2.0, running + 1.0) + wait / steps;
    return slack(s, ttft, tpot);
}

/* The candidate of the role with the smallest prediction (colocated: the largest slack). */
static int slo_pick(const sim_t *s, pl_role_t role, const sim_req_t *q, int pair)
{
    int best = -1;
    double bv = 0;
    for (int j = 0; j < s->n_role[role]; j++) {
        const sim_inst_t *x = &s->inst[s->by_role[role][j]];
        if (no_room(s, x, q))
            continue;
        double v = role == PL_ROLE_PREFILL  ? predict_ttft(x, q, pair)
                   : role == PL_ROLE_DECODE ? predict_tpot(x, q)
                                            : -colocated_slack(s, x, q);
        if (best < 0 || v < bv) {
            best = s->by_role[role][j];
            bv = v;
        }
    }
    return best;
}

static int pick(sim_t *s, pl_role_t role, const sim_req_t *q, int pair)
{
    switch (s->p->policy) {
    case PL_POLICY_LEAST_LOADED: return least_loaded(s, role, q);
    case PL_POLICY_SLO_AWARE: return slo_pick(s, role, q, pair);
    default:
        for (int k = 0; k < s->n_role[role]; k++) {
            int i = s->by_role[role][s->rr[role]++ % s->n_role[role]];
            if (!no_room(s, &s->inst[i], q))
                return i;
        }
        return -1;
    }
}

int sim_place(sim_t *s, uint32_t r)
{
    sim_req_t *q = &s->req[r];
    switch (s->p->mode) {
    case PL_SIM_PREFILL_ONLY: q->p = pick(s, PL_ROLE_PREFILL, q, 0); break;
    case PL_SIM_DECODE_ONLY: q->d = pick(s, PL_ROLE_DECODE, q, 0); break;
    default:
        if (s->n_role[PL_ROLE_PREFILL] > 0 && s->n_role[PL_ROLE_DECODE] > 0) {
            /* The router picks the decode side first (its ASSIGN reserves the KV). */
            q->d = pick(s, PL_ROLE_DECODE, q, 1);
            if (q->d < 0)
                return 0; /* router admission: no decode instance has room */
            q->p = pick(s, PL_ROLE_PREFILL, q, 1);
            if (s->admit) {
                q->held = (int32_t)sim_round(s, q->prompt);
                s->inst[q->d].kv_used += q->held;
            }
        } else {
            q->d = pick(s, PL_ROLE_COLOCATED, q, 0);
        }
    }
    if (q->d >= 0 && s->inst[q->d].spec->role == PL_ROLE_DECODE)
        s->inst[q->d].n_waiting++;
    return 1;
}
