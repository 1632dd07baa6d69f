/* SPDX-License-Identifier: MIT */
/*
 * main_sim.c - baton-sim: simulates one cluster (P prefill + D decode instances, K colocated
 * ones, or N AcceLLM pairs) on a workload at given request rates and prints SLO attainment, TTFT
 * and TPOT percentiles and the simulator's own speed; optionally searches the goodput and writes
 * every request's outcome as CSV. It is how the simulator is compared with a real cluster
 * (docs/PERFORMANCE.md) and how a plan is looked at more closely.
 */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/alloc.h"
#include "common/config.h"
#include "common/status.h"
#include "plancli.h"
#include "search.h"
#include "sim.h"

#define MAX_RATES 64

typedef struct {
    pl_cli_workload_t wl;
    char *profile, *prefill_profile, *decode_profile, *policy, *rates, *per_request, *log_level;
    int prefill, decode, colocated, pairs, prefill_pp, decode_pp, max_batch_tokens, max_batch_seqs;
    int block_size, goodput;
    int64_t kv_tokens;
    float slo_ttft_ms, slo_tpot_ms, target, queue_timeout_ms;
    float pair_switch_ms, pair_idle_ms, pair_tick_ms, pair_heartbeat_ms, pair_rtt_ms, pair_step_ms;
} sim_cfg_t;

#define OPT(n, t, d, lo, hi, f, h) PL_CLI_OPT(n, t, d, lo, hi, sim_cfg_t, f, h)
static const bt_cfg_opt_t sim_opts[] = {
    OPT("prefill", BT_CFG_INT, "1", 0, 100000, prefill, "prefill instances"),
    OPT("decode", BT_CFG_INT, "1", 0, 100000, decode, "decode instances"),
    OPT("colocated", BT_CFG_INT, "0", 0, 100000, colocated, "colocated instances"),
    OPT("pairs", BT_CFG_INT, "0", 0, 50000, pairs,
        "AcceLLM pairs (2 instances each); when > 0 the cluster is only these"),
    OPT("pair-switch-ms", BT_CFG_FLOAT, "200", 0, 1e9, pair_switch_ms,
        "pairs: least time between two role switches of a pair (the router's --pair-switch-ms)"),
    OPT("pair-idle-ms", BT_CFG_FLOAT, "1000", 0, 1e9, pair_idle_ms,
        "pairs: a member serving prefill turns to decode after this long without a prompt"),
    OPT("pair-tick-ms", BT_CFG_FLOAT, "10", 0.001, 1e6, pair_tick_ms,
        "pairs: the router's tick, on which role switches are decided"),
    OPT("pair-heartbeat-ms", BT_CFG_FLOAT, "500", 0, 1e9, pair_heartbeat_ms,
        "pairs: heartbeat period of the members (the router's loads are this old); 0: exact"),
    OPT("pair-rtt-ms", BT_CFG_FLOAT, "1", 0, 1e9, pair_rtt_ms,
        "pairs: router round trip (holder's reservation, hand-off to RESUME)"),
    OPT("pair-step-ms", BT_CFG_FLOAT, "0", 0, 1e9, pair_step_ms,
        "pairs: time added to each decoding forward to send the new KV rows to the holders"),
    OPT("profile", BT_CFG_STRING, NULL, 0, 0, profile, "latency profile of every instance"),
    OPT("prefill-profile", BT_CFG_STRING, NULL, 0, 0, prefill_profile,
        "profile of the prefill instances (default --profile)"),
    OPT("decode-profile", BT_CFG_STRING, NULL, 0, 0, decode_profile,
        "profile of the decode and colocated instances (default --profile)"),
    OPT("prefill-pp", BT_CFG_INT, "1", 1, 1024, prefill_pp, "pipeline stages of prefill"),
    OPT("decode-pp", BT_CFG_INT, "1", 1, 1024, decode_pp, "pipeline stages of decode"),
    OPT("kv-tokens", BT_CFG_INT64, "0", 0, 0, kv_tokens, "KV capacity per instance; 0: unlimited"),
    OPT("max-batch-tokens", BT_CFG_INT, "4096", 1, 1 << 24, max_batch_tokens,
        "prefill token budget L_m"),
    OPT("max-batch-seqs", BT_CFG_INT, "256", 1, 1 << 20, max_batch_seqs,
        "prompts per prefill batch, sequences per decode batch"),
    OPT("block-size", BT_CFG_INT, "16", 1, 4096, block_size, "KV tokens per block"),
    OPT("queue-timeout-ms", BT_CFG_FLOAT, "0", 0, 1e9, queue_timeout_ms,
        "admit as baton's router does (the decode side reserves the prompt's KV at placement, "
        "the rest when the sequence joins a batch, as baton-decode --growth-reserve 1; a request "
        "without room waits in the router's queue and fails after this long); 0: DistServe's "
        "pull (decode reserves the whole sequence after prefill)"),
    OPT("policy", BT_CFG_STRING, "least-loaded", 0, 0, policy,
        "router policy: round-robin, least-loaded, slo-aware"),
    PL_CLI_WORKLOAD_OPTS(sim_cfg_t, wl),
    OPT("rates", BT_CFG_STRING, "1", 0, 0, rates, "request rates to simulate, req/s, e.g. 1,2,4"),
    OPT("slo-ttft-ms", BT_CFG_FLOAT, "1000", 0.001, 1e9, slo_ttft_ms, "TTFT objective"),
    OPT("slo-tpot-ms", BT_CFG_FLOAT, "100", 0.001, 1e9, slo_tpot_ms, "TPOT objective"),
    OPT("target", BT_CFG_FLOAT, "0.9", 0.01, 1, target, "attainment target (--goodput)"),
    OPT("goodput", BT_CFG_BOOL, "0", 0, 0, goodput, "also search the goodput"),
    OPT("per-request", BT_CFG_STRING, NULL, 0, 0, per_request,
        "write every request's outcome at every rate here (CSV)"),
    OPT("log-level", BT_CFG_STRING, "warn", 0, 0, log_level, "debug, info, warn, error"),
};
static const bt_cfg_table_t sim_table = {
    .prog = "baton-sim",
    .summary = "Simulates a cluster on a workload at given rates (attainment, TTFT, TPOT).",
    .opts = sim_opts,
    .n_opts = sizeof sim_opts / sizeof sim_opts[0],
};

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + t.tv_nsec * 1e-9;
}

static int load(const char *path, const char *fallback, bt_profile_t *out)
{
    const char *p = path ? path : fallback;
    if (!p) {
        fprintf(stderr, "baton-sim: a profile is needed (--profile FILE)\n");
        return BT_ERR_INVAL;
    }
    return bt_profile_load(p, out);
}

static pl_inst_spec_t *instances(const sim_cfg_t *c, const bt_profile_t *pre,
                                 const bt_profile_t *dec, int *n)
{
    *n = c->pairs > 0 ? 2 * c->pairs : c->prefill + c->decode + c->colocated;
    pl_inst_spec_t *v = bt_calloc((size_t)*n + 1, sizeof *v);
    for (int i = 0; v && i < *n; i++) {
        pl_role_t role = c->pairs > 0                 ? PL_ROLE_PAIRED
                         : i < c->prefill             ? PL_ROLE_PREFILL
                         : i < c->prefill + c->decode ? PL_ROLE_DECODE
                                                      : PL_ROLE_COLOCATED;
        v[i] = (pl_inst_spec_t){.role = role,
                                .profile = role == PL_ROLE_PREFILL ? pre : dec,
                                .pp = role == PL_ROLE_PREFILL  ? c->prefill_pp
                                      : role == PL_ROLE_DECODE ? c->decode_pp
                                                               : 1,
                                .kv_tokens = c->kv_tokens,
                                .max_batch_tokens = c->max_batch_tokens,
                                .max_batch_seqs = c->max_batch_seqs};
    }
    return v;
}

static void per_request(FILE *f, double rate, const pl_req_t *r, const pl_sim_req_t *q, size_t n)
{
    for (size_t i = 0; i < n; i++)
        fprintf(f, "%g,%zu,%.3f,%d,%d,%.3f,%.4f,%.3f,%d,%d\n", rate, i, r[i].arrival_ms,
                r[i].prompt, r[i].output, q[i].ttft_ms, q[i].tpot_ms, q[i].finish_ms, q[i].prefill,
                q[i].decode);
}

/* Simulates every rate and prints one row each. */
static int run_rates(const sim_cfg_t *c, const pl_workload_t *w, const pl_sim_params_t *sp,
                     const double *rates, int n_rates, FILE *csv)
{
    size_t n = pl_workload_n(w);
    pl_req_t *reqs = bt_malloc(n * sizeof *reqs);
    pl_sim_req_t *out = csv ? bt_malloc(n * sizeof *out) : NULL;
    if (!reqs || (csv && !out)) {
        bt_free(reqs);
        return BT_ERR_NOMEM;
    }
    printf("| rate/s | attain | TTFT ok | TPOT ok | TTFT p50 | TTFT p90 | TTFT p99 | TPOT p50 | "
           "TPOT p90 | TPOT p99 | JCT mean | JCT p90 | finished | sim s | M req/min |%s%s\n"
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|%s%s\n",
           c->queue_timeout_ms > 0 ? " expired in queue |" : "",
           c->pairs > 0 ? " switches | handed off | replicas dropped | replicas refused |" : "",
           c->queue_timeout_ms > 0 ? "---|" : "", c->pairs > 0 ? "---|---|---|---|" : "");
    int st = BT_OK;
    for (int i = 0; i < n_rates && st == BT_OK; i++) {
        pl_workload_at_rate(w, rates[i], reqs);
        pl_sim_result_t r;
        double t0 = now_s();
        st = pl_sim_run(sp, reqs, n, &r, out);
        double t = now_s() - t0;
        if (st != BT_OK)
            break;
        printf("| %g | %.4f | %.4f | %.4f | %.1f | %.1f | %.1f | %.2f | %.2f | %.2f | %.0f | %.0f "
               "| %zu | %.3f | %.2f |",
               rates[i], r.attainment, (double)r.n_ttft_ok / r.n, (double)r.n_tpot_ok / r.n,
               r.ttft_p50_ms, r.ttft_p90_ms, r.ttft_p99_ms, r.tpot_p50_ms, r.tpot_p90_ms,
               r.tpot_p99_ms, r.jct_mean_ms, r.jct_p90_ms, r.n_finished, t,
               n / (t > 0 ? t : 1e-9) * 60 / 1e6);
        if (c->queue_timeout_ms > 0)
            printf(" %zu |", r.n_expired);
        if (c->pairs > 0)
            printf(" %llu | %llu | %llu | %llu |", (unsigned long long)r.n_switches,
                   (unsigned long long)r.n_moved, (unsigned long long)r.n_replicas_dropped,
                   (unsigned long long)r.n_replicas_refused);
        printf("\n");
        if (csv)
            per_request(csv, rates[i], reqs, out, n);
    }
    bt_free(reqs);
    bt_free(out);
    return st;
}

/* A pairs setting from the command line: 0 there means none, which the simulator spells < 0. */
static double pair_ms(float v)
{
    return v > 0 ? v : -1;
}

static int sim_main(const void *cfg)
{
    const sim_cfg_t *c = cfg;
    double rates[MAX_RATES];
    int n_rates = pl_cli_numbers(c->rates, rates, MAX_RATES), pol = pl_policy_parse(c->policy);
    if (n_rates < 0 || pol < 0) {
        fprintf(stderr, "baton-sim: %s\n", pol < 0 ? "unknown --policy" : "--rates wants 1,2,4");
        return 2;
    }
    bt_profile_t pre, dec;
    if (load(c->prefill_profile, c->profile, &pre) != BT_OK ||
        load(c->decode_profile, c->profile, &dec) != BT_OK)
        return 2;
    pl_trace_t *trace = NULL;
    pl_workload_t *w = NULL;
    char desc[512];
    if (pl_cli_workload(&c->wl, &trace, &w, desc, sizeof desc) != BT_OK)
        return 1;
    int n_inst, rc = 1;
    pl_inst_spec_t *inst = instances(c, &pre, &dec, &n_inst);
    pl_sim_params_t sp = {.inst = inst,
                          .n_inst = n_inst,
                          .policy = (pl_policy_t)pol,
                          .slo_ttft_ms = c->slo_ttft_ms,
                          .slo_tpot_ms = c->slo_tpot_ms,
                          .block_size = c->block_size,
                          .queue_timeout_ms = c->queue_timeout_ms,
                          .pairs = {.switch_ms = pair_ms(c->pair_switch_ms),
                                    .idle_ms = pair_ms(c->pair_idle_ms),
                                    .tick_ms = c->pair_tick_ms,
                                    .heartbeat_ms = pair_ms(c->pair_heartbeat_ms),
                                    .rtt_ms = pair_ms(c->pair_rtt_ms),
                                    .step_ms = c->pair_step_ms}};
    FILE *csv = c->per_request ? fopen(c->per_request, "w") : NULL;
    if (csv)
        fputs("rate,request,arrival_ms,prompt,output,ttft_ms,tpot_ms,finish_ms,prefill,decode\n",
              csv);
    if (c->pairs > 0)
        printf("cluster: %d AcceLLM pairs (%d instances; switches %g ms apart, idle %g ms, tick %g "
               "ms, heartbeat %g ms, round trip %g ms, rows %g ms per step); ",
               c->pairs, n_inst, c->pair_switch_ms, c->pair_idle_ms, c->pair_tick_ms,
               c->pair_heartbeat_ms, c->pair_rtt_ms, c->pair_step_ms);
    else
        printf("cluster: %d prefill (pp %d) + %d decode (pp %d) + %d colocated, policy %s; ",
               c->prefill, c->prefill_pp, c->decode, c->decode_pp, c->colocated, c->policy);
    printf("workload: %s; SLO TTFT %g ms, TPOT %g ms\n\n", desc, c->slo_ttft_ms, c->slo_tpot_ms);
    if (inst && (!c->per_request || csv) && run_rates(c, w, &sp, rates, n_rates, csv) == BT_OK) {
        rc = 0;
        if (c->goodput) {
            pl_goodput_params_t g = {.w = w, .sim = sp, .target = c->target, .rate_hint = rates[0]};
            pl_goodput_t out;
            rc = pl_goodput(&g, &out) == BT_OK ? 0 : 1;
            if (rc == 0)
                printf("\ngoodput: %.4g req/s at %.0f%% attainment, %.4g per instance "
                       "(%d simulations)\n",
                       out.rate, 100 * c->target, out.rate / n_inst, out.n_sims);
        }
    }
    if (csv)
        fclose(csv);
    bt_free(inst);
    pl_workload_destroy(w);
    pl_trace_destroy(trace);
    return rc;
}

int main(int argc, char **argv)
{
    sim_cfg_t c = {0};
    return bt_cfg_run(&sim_table, &c, offsetof(sim_cfg_t, log_level), argc, argv, sim_main);
}
