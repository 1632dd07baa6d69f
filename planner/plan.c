/* SPDX-License-Identifier: MIT */
/*
 * plan.c - the placement searches of plan.h: high node-affinity, low node-affinity and the
 * colocated baseline.
 *
 * Every configuration is judged by one goodput search on the same workload, so the comparison
 * between configurations is paired: they all see the same requests. Configurations whose KV
 * memory cannot hold the longest request of the workload are skipped, since a simulated
 * instance would stall on it forever (and a real one would refuse it).
 */
#include "plan_impl.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "common/alloc.h"
#include "common/log.h"
#include "common/status.h"
#include "search.h"

int pl_algo_parse(const char *name)
{
    static const char *const names[] = {"high-affinity", "low-affinity", "colocated"};
    for (int i = 0; name && i < 3; i++)
        if (!strcmp(name, names[i]))
            return i;
    return -1;
}

const char *pl_algo_name(pl_algo_t a)
{
    return a == PL_ALGO_HIGH_AFFINITY  ? "high-affinity"
           : a == PL_ALGO_LOW_AFFINITY ? "low-affinity"
                                       : "colocated";
}

int pl_plan_profile_for(const pl_plan_params_t *p, int tp, bt_profile_t *out, int *derived)
{
    const bt_profile_t *base = NULL;
    for (int i = 0; i < p->n_profiles; i++) {
        const bt_profile_t *q = &p->profiles[i];
        if (q->tp == tp) {
            *out = *q;
            *derived = 0;
            return BT_OK;
        }
        /* The nearest smaller degree; failing that, the smallest. */
        if (!base || (q->tp < tp && (base->tp > tp || q->tp > base->tp)) ||
            (base->tp > tp && q->tp < base->tp))
            base = q;
    }
    if (!base)
        return BT_ERR_NOT_FOUND;
    double st = p->tp_scale_token > 0 ? p->tp_scale_token : PL_TP_SCALE_TOKEN;
    double sf = p->tp_scale_fixed > 0 ? p->tp_scale_fixed : PL_TP_SCALE_FIXED;
    pl_profile_scale_tp(base, tp, st, sf, out);
    *derived = 1;
    return BT_OK;
}

int plan_ctx_init(const pl_plan_params_t *in, plan_ctx_t *c)
{
    c->p = *in;
    pl_plan_params_t *p = &c->p;
    const pl_cluster_t *k = &p->cluster;
    if (!p->target)
        p->target = 0.9;
    if (!p->max_batch_tokens)
        p->max_batch_tokens = 4096;
    if (!p->mem_util)
        p->mem_util = 0.9;
    if (!p->max_tp)
        p->max_tp = k->gpus_per_node;
    if (!p->max_pp)
        p->max_pp = k->nodes * k->gpus_per_node;
    if (!p->verify_steps)
        p->verify_steps = 16;
    const char *why = NULL;
    if (k->nodes < 1 || k->gpus_per_node < 1 || !(k->gpu_mem_bytes > 0))
        why = "the cluster needs nodes, GPUs per node and GPU memory";
    else if (!p->w || !(p->rate > 0) || !(p->slo_ttft_ms > 0) || !(p->slo_tpot_ms > 0))
        why = "a workload, a rate and both objectives are needed";
    else if (!(p->target > 0 && p->target <= 1) || !(p->mem_util > 0 && p->mem_util <= 1))
        why = "target and memory utilization must be in (0, 1]";
    else if (p->n_profiles < 1)
        why = "at least one latency profile is needed";
    if (why) {
        bt_error("plan: %s", why);
        return BT_ERR_INVAL;
    }
    double mp, mo;
    pl_workload_lengths(p->w, &mp, &mo, &c->max_total);
    return pl_shape_check(&p->shape);
}

pl_inst_spec_t plan_spec(const plan_ctx_t *c, pl_role_t role, const pl_phase_cfg_t *cfg, int node)
{
    int32_t seqs = c->p.max_batch_seqs;
    if (!seqs)
        seqs = cfg->profile.max_batch > 0 ? cfg->profile.max_batch : 256;
    return (pl_inst_spec_t){.role = role,
                            .profile = &cfg->profile,
                            .pp = cfg->pp,
                            .kv_tokens = cfg->kv_tokens,
                            .max_batch_tokens = c->p.max_batch_tokens,
                            .max_batch_seqs = seqs,
                            .node = node};
}

pl_sim_params_t plan_sim_params(const plan_ctx_t *c, const pl_inst_spec_t *inst, int n,
                                pl_sim_mode_t mode)
{
    const pl_cluster_t *k = &c->p.cluster;
    return (pl_sim_params_t){.inst = inst,
                             .n_inst = n,
                             .policy = c->p.policy,
                             .mode = mode,
                             .slo_ttft_ms = c->p.slo_ttft_ms,
                             .slo_tpot_ms = c->p.slo_tpot_ms,
                             .block_size = c->p.block_size,
                             .intra_gb_per_s = k->intra_gb_per_s,
                             .intra_latency_ms = k->intra_latency_ms,
                             .inter_gb_per_s = k->inter_gb_per_s,
                             .inter_latency_ms = k->inter_latency_ms};
}

static int measured(const pl_plan_params_t *p, int tp)
{
    for (int i = 0; i < p->n_profiles; i++)
        if (p->profiles[i].tp == tp)
            return 1;
    return 0;
}

/* Fills cfg for (tp, pp): 0 when it does not fit memory or has no profile. Tensor-parallel
 * degrees are those that pack a node evenly (divisors of its GPU count) and any degree with a
 * measured profile: a tp of 5 on 8-GPU nodes strands GPUs, and would rest on a derived
 * profile far from any measurement. */
static int config(const plan_ctx_t *c, int tp, int pp, pl_phase_cfg_t *cfg)
{
    const pl_plan_params_t *p = &c->p;
    int gpn = p->cluster.gpus_per_node;
    if (!pl_shape_parallel_ok(&p->shape, tp, pp) || tp > p->max_tp || pp > p->max_pp || tp > gpn ||
        (gpn % tp && !measured(p, tp)) || tp * pp > p->cluster.nodes * gpn)
        return 0;
    *cfg = (pl_phase_cfg_t){.tp = tp, .pp = pp};
    cfg->kv_tokens = pl_shape_kv_tokens(&p->shape, tp, pp, p->cluster.gpu_mem_bytes, p->mem_util);
    if (cfg->kv_tokens < c->max_total)
        return 0;
    return pl_plan_profile_for(p, tp, &cfg->profile, &cfg->derived) == BT_OK;
}

/* Goodput of a simulated cluster; also counts simulations into plan. */
static int goodput(const plan_ctx_t *c, const pl_sim_params_t *sim, double target, double hint,
                   pl_plan_t *plan, double *rate)
{
    pl_goodput_params_t g = {.w = c->p.w, .sim = *sim, .target = target, .rate_hint = hint};
    pl_goodput_t out = {0};
    int st = pl_goodput(&g, &out);
    plan->n_sims += out.n_sims;
    plan->n_configs++;
    if (st == BT_OK)
        *rate = out.rate;
    return st;
}

static pl_sim_mode_t mode_of(pl_role_t role)
{
    return role == PL_ROLE_PREFILL  ? PL_SIM_PREFILL_ONLY
           : role == PL_ROLE_DECODE ? PL_SIM_DECODE_ONLY
                                    : PL_SIM_FULL;
}

static int count_for(double rate, double goodput);

/* Whether a configuration of goodput g on gpus GPUs per copy beats the best so far: fewer GPUs
 * for the rate R once replicated, then more goodput per GPU. This is DistServe's rule (best
 * goodput per GPU, then replicate) with the rounding of the replication counted: at a low R a
 * config with the best goodput per GPU may need one huge copy where a small one would do. */
static int better(double rate, double g, int gpus, int found, double best_g, int best_gpus)
{
    if (!(g > 0))
        return 0;
    if (!found)
        return 1;
    long need = (long)count_for(rate, g) * gpus,
         best_need = (long)count_for(rate, best_g) * best_gpus;
    return need < best_need || (need == best_need && g / gpus > best_g / best_gpus);
}

/* One instance of the role alone, over every (tp, pp): the best by better() (ties: the one
 * found first, with fewer GPUs). Colocated instances use tensor parallelism only, as
 * DistServe's vLLM baseline: the simulator's pipeline model for them would let a prefill in
 * one micro-batch leave the others' decode steps untouched, which a real pipeline does not. */
static int best_alone(const plan_ctx_t *c, pl_role_t role, pl_plan_t *plan, pl_phase_cfg_t *best)
{
    double target = c->p.target, hint = 1;
    int found = 0;
    int max_pp = role == PL_ROLE_COLOCATED ? 1 : c->p.max_pp;
    for (int tp = 1; tp <= c->p.max_tp; tp++)
        for (int pp = 1; pp <= max_pp; pp++) {
            pl_phase_cfg_t cfg;
            if (!config(c, tp, pp, &cfg))
                continue;
            pl_inst_spec_t inst = plan_spec(c, role, &cfg, 0);
            pl_sim_params_t sim = plan_sim_params(c, &inst, 1, mode_of(role));
            int st = goodput(c, &sim, target, hint, plan, &cfg.goodput);
            if (st != BT_OK)
                return st;
            cfg.per_gpu = cfg.goodput / (tp * pp);
            hint = cfg.goodput > 0 ? cfg.goodput : hint;
            bt_debug("plan: %s tp %d pp %d: %.3f req/s, %.3f per GPU",
                     role == PL_ROLE_PREFILL  ? "prefill"
                     : role == PL_ROLE_DECODE ? "decode"
                                              : "colocated",
                     tp, pp, cfg.goodput, cfg.per_gpu);
            if (better(c->p.rate, cfg.goodput, tp * pp, found, best->goodput,
                       best->tp * best->pp)) {
                *best = cfg;
                found = 1;
            }
        }
    return found ? BT_OK : BT_ERR_NOT_FOUND;
}

static int count_for(double rate, double goodput)
{
    double n = ceil(rate / goodput - 1e-9);
    return n < 1 ? 1 : n > 1e6 ? 1000000 : (int)n;
}

static int high_affinity(const plan_ctx_t *c, pl_plan_t *plan)
{
    int st = best_alone(c, PL_ROLE_PREFILL, plan, &plan->prefill);
    if (st == BT_OK)
        st = best_alone(c, PL_ROLE_DECODE, plan, &plan->decode);
    if (st == BT_OK) {
        plan->n_prefill = count_for(c->p.rate, plan->prefill.goodput);
        plan->n_decode = count_for(c->p.rate, plan->decode.goodput);
    }
    return st;
}

static int colocated(const plan_ctx_t *c, pl_plan_t *plan)
{
    int st = best_alone(c, PL_ROLE_COLOCATED, plan, &plan->colocated);
    if (st == BT_OK)
        plan->n_colocated = count_for(c->p.rate, plan->colocated.goodput);
    return st;
}

/* Goodput of one low-affinity unit: np prefill and nd decode instances whose stages share
 * nodes, so every KV transfer is intra-node. */
static int unit_goodput(const plan_ctx_t *c, const pl_phase_cfg_t *cp, const pl_phase_cfg_t *cd,
                        int np, int nd, double hint, pl_plan_t *plan, double *g)
{
    pl_inst_spec_t inst[64];
    for (int i = 0; i < np + nd; i++)
        inst[i] = plan_spec(c, i < np ? PL_ROLE_PREFILL : PL_ROLE_DECODE, i < np ? cp : cd, 0);
    pl_sim_params_t sim = plan_sim_params(c, inst, np + nd, PL_SIM_FULL);
    return goodput(c, &sim, c->p.target, hint, plan, g);
}

/* The units of one (pp, prefill tp, decode tp): every count of each that fits a node. */
static int units_of(const plan_ctx_t *c, const pl_phase_cfg_t *cp, const pl_phase_cfg_t *cd,
                    pl_plan_t *plan, int *found)
{
    int gpn = c->p.cluster.gpus_per_node;
    double hint = 1;
    for (int np = 1; np * cp->tp + cd->tp <= gpn && np < 32; np++)
        for (int nd = 1; np * cp->tp + nd * cd->tp <= gpn && nd < 32; nd++) {
            double g;
            int st = unit_goodput(c, cp, cd, np, nd, hint, plan, &g);
            if (st != BT_OK)
                return st;
            hint = g > 0 ? g : hint;
            int gpus = cp->pp * (np * cp->tp + nd * cd->tp);
            int best_gpus = plan->prefill.pp * (plan->unit_prefill * plan->prefill.tp +
                                                plan->unit_decode * plan->decode.tp);
            if (better(c->p.rate, g, gpus, *found, plan->unit_goodput, best_gpus)) {
                plan->prefill = *cp;
                plan->decode = *cd;
                plan->unit_prefill = np;
                plan->unit_decode = nd;
                plan->unit_goodput = g;
                *found = 1;
            }
        }
    return BT_OK;
}

static int low_affinity(const plan_ctx_t *c, pl_plan_t *plan)
{
    int found = 0, gpn = c->p.cluster.gpus_per_node;
    for (int pp = 1; pp <= c->p.max_pp && pp <= c->p.cluster.nodes; pp++)
        for (int tp_p = 1; tp_p < gpn; tp_p++)
            for (int tp_d = 1; tp_p + tp_d <= gpn; tp_d++) {
                pl_phase_cfg_t cp, cd;
                if (!config(c, tp_p, pp, &cp) || !config(c, tp_d, pp, &cd))
                    continue;
                int st = units_of(c, &cp, &cd, plan, &found);
                if (st != BT_OK)
                    return st;
            }
    if (!found)
        return BT_ERR_NOT_FOUND;
    plan->n_units = count_for(c->p.rate, plan->unit_goodput);
    plan->n_prefill = plan->n_units * plan->unit_prefill;
    plan->n_decode = plan->n_units * plan->unit_decode;
    plan->prefill.goodput = plan->decode.goodput = plan->unit_goodput;
    return BT_OK;
}

static void capacity(pl_plan_t *plan)
{
    double cap;
    if (plan->algo == PL_ALGO_COLOCATED)
        cap = plan->n_colocated * plan->colocated.goodput;
    else if (plan->algo == PL_ALGO_LOW_AFFINITY)
        cap = plan->n_units * plan->unit_goodput;
    else
        cap = fmin(plan->n_prefill * plan->prefill.goodput, plan->n_decode * plan->decode.goodput);
    plan->capacity = cap;
    plan->per_gpu_goodput = plan->gpus > 0 ? cap / plan->gpus : 0;
}

int pl_plan_run(pl_algo_t algo, const pl_plan_params_t *params, pl_plan_t *out)
{
    plan_ctx_t c;
    int st = plan_ctx_init(params, &c);
    if (st != BT_OK)
        return st;
    pl_plan_t plan = {.algo = algo, .rate = c.p.rate};
    st = algo == PL_ALGO_HIGH_AFFINITY  ? high_affinity(&c, &plan)
         : algo == PL_ALGO_LOW_AFFINITY ? low_affinity(&c, &plan)
                                        : colocated(&c, &plan);
    if (st == BT_ERR_NOT_FOUND)
        bt_error("plan %s: no configuration fits memory and serves the objectives at any rate",
                 pl_algo_name(algo));
    if (st == BT_OK)
        st = c.p.verify_steps > 0 ? plan_verify(&c, &plan) : plan_place(&c, &plan);
    if (st == BT_OK)
        capacity(&plan);
    if (st != BT_OK) {
        pl_plan_fini(&plan);
        return st;
    }
    *out = plan;
    return BT_OK;
}

void pl_plan_fini(pl_plan_t *plan)
{
    if (!plan)
        return;
    bt_free(plan->slots);
    plan->slots = NULL;
    plan->n_slots = 0;
}
