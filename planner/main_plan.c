/* SPDX-License-Identifier: MIT */
/*
 * main_plan.c - baton-plan: sizes a disaggregated (or colocated) cluster for a workload, a
 * request rate and latency objectives with DistServe's placement algorithms, and writes the plan
 * as JSON, as a `baton up` configuration and as Kubernetes values (docs/planner.md).
 *
 * The human summary goes to stderr; the plan JSON to --out (stdout by default).
 */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/config.h"
#include "common/log.h"
#include "common/status.h"
#include "plan.h"
#include "plan_out.h"
#include "plancli.h"

#define MAX_PROFILES 16

typedef struct {
    pl_cli_workload_t wl;
    char *shape, *model_file, *profiles, *algorithm, *policy, *out, *up_config, *values;
    char *log_level;
    int layers, dim, heads, kv_heads, ffn, vocab, ffn_mats;
    float weight_bytes, kv_elem_bytes;
    int nodes, gpus_per_node;
    size_t gpu_mem;
    float intra_gbps, intra_latency_ms, inter_gbps, inter_latency_ms;
    float rate, slo_ttft_ms, slo_tpot_ms, target, tp_scale_token, tp_scale_fixed, mem_util;
    int max_batch_tokens, max_batch_seqs, block_size, max_tp, max_pp, verify_steps;
} plan_cfg_t;

#define OPT(n, t, d, lo, hi, f, h) PL_CLI_OPT(n, t, d, lo, hi, plan_cfg_t, f, h)
static const bt_cfg_opt_t plan_opts[] = {
    OPT("model", BT_CFG_STRING, "110m", 0, 0, shape,
        "model shape: opt-13b, opt-66b, opt-175b, llama-2-7b, llama-2-13b, llama-2-70b, "
        "llama-3-8b, tiny, 15m, 110m, 1b (fields below override)"),
    OPT("layers", BT_CFG_INT, "0", 0, 1 << 16, layers, "override: layers"),
    OPT("dim", BT_CFG_INT, "0", 0, 1 << 20, dim, "override: embedding width"),
    OPT("heads", BT_CFG_INT, "0", 0, 1 << 16, heads, "override: attention heads"),
    OPT("kv-heads", BT_CFG_INT, "0", 0, 1 << 16, kv_heads, "override: KV heads"),
    OPT("ffn", BT_CFG_INT, "0", 0, 1 << 24, ffn, "override: FFN width"),
    OPT("vocab", BT_CFG_INT, "0", 0, 1 << 24, vocab, "override: vocabulary"),
    OPT("ffn-mats", BT_CFG_INT, "0", 0, 3, ffn_mats, "override: FFN matrices (3 SwiGLU, 2 OPT)"),
    OPT("weight-bytes", BT_CFG_FLOAT, "0", 0, 8, weight_bytes, "override: bytes per weight"),
    OPT("kv-elem-bytes", BT_CFG_FLOAT, "0", 0, 8, kv_elem_bytes, "override: bytes per KV value"),
    OPT("model-file", BT_CFG_STRING, NULL, 0, 0, model_file, "model path for the baton up file"),
    OPT("profiles", BT_CFG_STRING, NULL, 0, 0, profiles,
        "latency profiles, comma-separated, one per tensor-parallel degree (required)"),
    OPT("tp-scale-token", BT_CFG_FLOAT, "0.85", 0, 1, tp_scale_token,
        "derived tp profiles: parallel fraction of per-token terms"),
    OPT("tp-scale-fixed", BT_CFG_FLOAT, "0.45", 0, 1, tp_scale_fixed,
        "derived tp profiles: parallel fraction of fixed terms"),
    OPT("nodes", BT_CFG_INT, "1", 1, 1 << 16, nodes, "nodes in the cluster"),
    OPT("gpus-per-node", BT_CFG_INT, "8", 1, 1024, gpus_per_node, "GPUs per node"),
    OPT("gpu-mem", BT_CFG_SIZE, "80G", 0, 0, gpu_mem, "memory of one GPU (K, M, G)"),
    OPT("intra-gbps", BT_CFG_FLOAT, "0", 0, 1e9, intra_gbps,
        "KV bandwidth within a node, GB/s; 0: the profile's"),
    OPT("intra-latency-ms", BT_CFG_FLOAT, "0", 0, 1e6, intra_latency_ms,
        "KV transfer latency within a node"),
    OPT("inter-gbps", BT_CFG_FLOAT, "0", 0, 1e9, inter_gbps,
        "KV bandwidth between nodes, GB/s; 0: the profile's"),
    OPT("inter-latency-ms", BT_CFG_FLOAT, "0", 0, 1e6, inter_latency_ms,
        "KV transfer latency between nodes"),
    PL_CLI_WORKLOAD_OPTS(plan_cfg_t, wl),
    OPT("rate", BT_CFG_FLOAT, "0", 0, 1e9, rate, "requests/s the plan must serve (required)"),
    OPT("slo-ttft-ms", BT_CFG_FLOAT, "1000", 0.001, 1e9, slo_ttft_ms, "TTFT objective"),
    OPT("slo-tpot-ms", BT_CFG_FLOAT, "100", 0.001, 1e9, slo_tpot_ms, "TPOT objective"),
    OPT("target", BT_CFG_FLOAT, "0.9", 0.01, 1, target, "fraction meeting both objectives"),
    OPT("algorithm", BT_CFG_STRING, "high-affinity", 0, 0, algorithm,
        "high-affinity, low-affinity, colocated, or all (compare; write the smallest plan)"),
    OPT("policy", BT_CFG_STRING, "least-loaded", 0, 0, policy,
        "router policy simulated: round-robin, least-loaded, slo-aware"),
    OPT("max-batch-tokens", BT_CFG_INT, "4096", 1, 1 << 24, max_batch_tokens,
        "prefill token budget L_m"),
    OPT("max-batch-seqs", BT_CFG_INT, "0", 0, 1 << 20, max_batch_seqs,
        "sequences per batch; 0: the profile's max_batch, else 256"),
    OPT("block-size", BT_CFG_INT, "16", 1, 4096, block_size, "KV tokens per block"),
    OPT("mem-util", BT_CFG_FLOAT, "0.9", 0.01, 1, mem_util,
        "fraction of GPU memory for weights and KV"),
    OPT("max-tp", BT_CFG_INT, "0", 0, 1024, max_tp, "largest tensor-parallel degree; 0: node"),
    OPT("max-pp", BT_CFG_INT, "0", 0, 1024, max_pp, "largest pipeline degree; 0: cluster"),
    OPT("verify-steps", BT_CFG_INT, "16", -1, 100000, verify_steps,
        "instances the whole-plan check may add; -1: no check"),
    OPT("out", BT_CFG_STRING, NULL, 0, 0, out, "plan JSON file; default stdout"),
    OPT("up-config", BT_CFG_STRING, NULL, 0, 0, up_config, "write a baton up config here"),
    OPT("values", BT_CFG_STRING, NULL, 0, 0, values, "write Kubernetes values (YAML) here"),
    OPT("log-level", BT_CFG_STRING, "warn", 0, 0, log_level, "debug, info, warn, error"),
};
static const bt_cfg_table_t plan_table = {
    .prog = "baton-plan",
    .summary = "Plans a disaggregated cluster (DistServe's placement search) for a workload.",
    .opts = plan_opts,
    .n_opts = sizeof plan_opts / sizeof plan_opts[0],
};

static int override_shape(const plan_cfg_t *c, pl_shape_t *s)
{
    if (pl_shape_preset(c->shape, s) != BT_OK) {
        fprintf(stderr, "baton-plan: unknown --model %s (one of %s)\n", c->shape,
                pl_shape_preset_list());
        return BT_ERR_INVAL;
    }
    const int v[] = {c->layers, c->dim, c->heads, c->kv_heads, c->ffn, c->vocab, c->ffn_mats};
    int32_t *f[] = {&s->n_layers, &s->dim,     &s->n_heads, &s->n_kv_heads,
                    &s->ffn_dim,  &s->n_vocab, &s->ffn_mats};
    for (int i = 0; i < 7; i++)
        if (v[i] > 0)
            *f[i] = v[i];
    if (c->weight_bytes > 0)
        s->bytes_per_weight = c->weight_bytes;
    if (c->kv_elem_bytes > 0)
        s->kv_bytes_per_elem = c->kv_elem_bytes;
    return pl_shape_check(s);
}

/* Loads the comma-separated profiles; paths[i] receives the file of out[i] (owned by buf). */
static int load_profiles(const char *list, char *buf, size_t cap, bt_profile_t *out,
                         const char **paths, int *n)
{
    if (!list || snprintf(buf, cap, "%s", list) >= (int)cap) {
        fprintf(stderr, "baton-plan: --profiles is required (comma-separated files)\n");
        return BT_ERR_INVAL;
    }
    *n = 0;
    for (char *save, *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        if (*n == MAX_PROFILES)
            return BT_ERR_RANGE;
        int st = bt_profile_load(tok, &out[*n]);
        if (st != BT_OK)
            return st;
        for (int i = 0; i < *n; i++)
            if (out[i].tp == out[*n].tp) {
                fprintf(stderr, "baton-plan: two profiles for tp %d\n", out[i].tp);
                return BT_ERR_INVAL;
            }
        paths[(*n)++] = tok;
    }
    return *n > 0 ? BT_OK : BT_ERR_INVAL;
}

/* The profile file the router's slo-aware policy should read: the one measured at the tp of
 * the plan's prefill (or colocated) instances, else of its decode ones; NULL when both were
 * derived. The router takes one profile for both sides. */
static const char *router_profile(const pl_plan_t *plan, const bt_profile_t *prof,
                                  const char *const *paths, int n)
{
    int want[2] = {plan->algo == PL_ALGO_COLOCATED ? plan->colocated.tp : plan->prefill.tp,
                   plan->decode.tp};
    for (int k = 0; k < 2; k++)
        for (int i = 0; i < n; i++)
            if (prof[i].tp == want[k])
                return paths[i];
    return NULL;
}

static void params_from(const plan_cfg_t *c, pl_plan_params_t *p)
{
    p->tp_scale_token = c->tp_scale_token;
    p->tp_scale_fixed = c->tp_scale_fixed;
    p->cluster = (pl_cluster_t){.nodes = c->nodes,
                                .gpus_per_node = c->gpus_per_node,
                                .gpu_mem_bytes = (double)c->gpu_mem,
                                .intra_gb_per_s = c->intra_gbps,
                                .intra_latency_ms = c->intra_latency_ms,
                                .inter_gb_per_s = c->inter_gbps,
                                .inter_latency_ms = c->inter_latency_ms};
    p->rate = c->rate;
    p->slo_ttft_ms = c->slo_ttft_ms;
    p->slo_tpot_ms = c->slo_tpot_ms;
    p->target = c->target;
    p->max_batch_tokens = c->max_batch_tokens;
    p->max_batch_seqs = c->max_batch_seqs;
    p->block_size = c->block_size;
    p->mem_util = c->mem_util;
    p->max_tp = c->max_tp;
    p->max_pp = c->max_pp;
    p->verify_steps = c->verify_steps < 0 ? -1 : c->verify_steps;
}

static void summary(const pl_plan_t *plan, double seconds)
{
    fprintf(stderr, "%-13s ", pl_algo_name(plan->algo));
    if (plan->algo == PL_ALGO_COLOCATED)
        fprintf(stderr, "colocated tp%d pp%d x %d", plan->colocated.tp, plan->colocated.pp,
                plan->n_colocated);
    else
        fprintf(stderr, "prefill tp%d pp%d x %d, decode tp%d pp%d x %d", plan->prefill.tp,
                plan->prefill.pp, plan->n_prefill, plan->decode.tp, plan->decode.pp,
                plan->n_decode);
    fprintf(stderr, ": %d GPUs%s, %.4g req/s per GPU", plan->gpus,
            plan->fits ? "" : " (DOES NOT FIT)", plan->per_gpu_goodput);
    if (plan->verified)
        fprintf(stderr, ", attainment at rate %.3f (+%d instances)", plan->at_rate.attainment,
                plan->added);
    fprintf(stderr, "; %d configs, %d simulations, %.2f s\n", plan->n_configs, plan->n_sims,
            seconds);
}

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + t.tv_nsec * 1e-9;
}

/* Runs the asked algorithm, or all three keeping the plan with the fewest GPUs that meets the
 * target (then the most goodput per GPU). */
static int run(const plan_cfg_t *c, const pl_plan_params_t *p, pl_plan_t *best, double *secs)
{
    int lo = 0, hi = 2, found = 0;
    if (strcmp(c->algorithm, "all")) {
        lo = hi = pl_algo_parse(c->algorithm);
        if (lo < 0) {
            fprintf(stderr, "baton-plan: unknown --algorithm %s\n", c->algorithm);
            return BT_ERR_INVAL;
        }
    }
    for (int a = lo; a <= hi; a++) {
        pl_plan_t plan;
        double t0 = now_s();
        int st = pl_plan_run((pl_algo_t)a, p, &plan);
        if (st == BT_ERR_NOT_FOUND && lo != hi)
            continue;
        if (st != BT_OK)
            return st;
        double t = now_s() - t0;
        summary(&plan, t);
        int ok = !plan.verified || plan.at_rate.attainment >= p->target;
        int better =
            !found ||
            (ok && (best->gpus > plan.gpus ||
                    (best->gpus == plan.gpus && plan.per_gpu_goodput > best->per_gpu_goodput)));
        if (better) {
            if (found)
                pl_plan_fini(best);
            *best = plan;
            *secs = t;
            found = 1;
        } else {
            pl_plan_fini(&plan);
        }
    }
    return found ? BT_OK : BT_ERR_NOT_FOUND;
}

typedef int (*writer_fn)(FILE *, const pl_plan_params_t *, const pl_plan_t *,
                         const pl_plan_meta_t *);

static int write_to(const char *path, writer_fn fn, const pl_plan_params_t *p,
                    const pl_plan_t *plan, const pl_plan_meta_t *m)
{
    FILE *f = path ? fopen(path, "w") : stdout;
    if (!f) {
        bt_error("cannot write %s", path);
        return BT_ERR_IO;
    }
    int st = fn(f, p, plan, m);
    if (path && fclose(f) != 0)
        st = BT_ERR_IO;
    if (st != BT_OK)
        bt_error("writing %s failed", path ? path : "stdout");
    return st;
}

static int plan_main(const void *cfg)
{
    const plan_cfg_t *c = cfg;
    bt_profile_t prof[MAX_PROFILES];
    const char *paths[MAX_PROFILES];
    char list[4096];
    pl_plan_params_t p = {0};
    pl_trace_t *trace = NULL;
    pl_workload_t *w = NULL;
    char desc[512];
    int n_prof = 0, pol = pl_policy_parse(c->policy);
    if (pol < 0 || !(c->rate > 0)) {
        fprintf(stderr, "baton-plan: %s\n", pol < 0 ? "unknown --policy" : "--rate is required");
        return 2;
    }
    if (override_shape(c, &p.shape) != BT_OK ||
        load_profiles(c->profiles, list, sizeof list, prof, paths, &n_prof) != BT_OK)
        return 2;
    if (pl_cli_workload(&c->wl, &trace, &w, desc, sizeof desc) != BT_OK)
        return 1;
    params_from(c, &p);
    p.profiles = prof;
    p.n_profiles = n_prof;
    p.w = w;
    p.policy = (pl_policy_t)pol;
    fprintf(stderr, "baton-plan: %s, %s at %.4g req/s\n", p.shape.name, desc, p.rate);
    pl_plan_t plan;
    double secs = 0;
    int st = run(c, &p, &plan, &secs);
    if (st == BT_OK) {
        pl_plan_meta_t m = {desc, c->model_file, router_profile(&plan, prof, paths, n_prof), secs};
        st = write_to(c->out, pl_plan_write_json, &p, &plan, &m);
        if (st == BT_OK && c->up_config)
            st = write_to(c->up_config, pl_plan_write_up_config, &p, &plan, &m);
        if (st == BT_OK && c->values)
            st = write_to(c->values, pl_plan_write_values, &p, &plan, &m);
        pl_plan_fini(&plan);
    }
    pl_workload_destroy(w);
    pl_trace_destroy(trace);
    return st == BT_OK ? 0 : 1;
}

int main(int argc, char **argv)
{
    plan_cfg_t c = {0};
    return bt_cfg_run(&plan_table, &c, offsetof(plan_cfg_t, log_level), argc, argv, plan_main);
}
