/* SPDX-License-Identifier: MIT */
/*
 * plan_out.c - writing plans (plan_out.h).
 *
 * The `baton up` file holds only keys `baton up` accepts (its option table refuses unknown
 * names), so what it cannot express — parallel degrees, objectives, the profile — goes in
 * comments above the settings; the JSON and the values file carry them as data.
 */
#include "plan_out.h"

#include <math.h>
#include <string.h>

#include "common/status.h"
#include "common/json.h"

static const char *role_name(pl_role_t r)
{
    return r == PL_ROLE_PREFILL ? "prefill" : r == PL_ROLE_DECODE ? "decode" : "colocated";
}

static void json_phase(FILE *f, const char *name, const pl_phase_cfg_t *c, int n)
{
    fprintf(f,
            "  \"%s\": {\"tp\": %d, \"pp\": %d, \"instances\": %d, \"gpus_per_instance\": %d, "
            "\"goodput_per_instance_rps\": %.6g, \"kv_tokens\": %lld, \"profile_derived\": %s},\n",
            name, c->tp, c->pp, n, c->tp * c->pp, c->goodput, (long long)c->kv_tokens,
            c->derived ? "true" : "false");
}

static void json_head(FILE *f, const pl_plan_params_t *p, const pl_plan_t *plan,
                      const pl_plan_meta_t *m)
{
    const pl_shape_t *s = &p->shape;
    const pl_cluster_t *k = &p->cluster;
    fprintf(f, "{\n  \"version\": 1,\n  \"algorithm\": \"%s\",\n  \"model\": {\"name\": ",
            pl_algo_name(plan->algo));
    bt_json_write_str(f, s->name);
    fprintf(f,
            ", \"layers\": %d, \"dim\": %d, \"heads\": %d, \"kv_heads\": %d, \"ffn\": %d, "
            "\"vocab\": %d, \"weight_bytes\": %.6g, \"kv_bytes_per_token\": %.6g},\n",
            s->n_layers, s->dim, s->n_heads, s->n_kv_heads, s->ffn_dim, s->n_vocab,
            pl_shape_weight_bytes(s), pl_shape_kv_bytes_per_token(s));
    fprintf(f,
            "  \"cluster\": {\"nodes\": %d, \"gpus_per_node\": %d, \"gpu_mem_bytes\": %.6g, "
            "\"intra_gb_per_s\": %.6g, \"inter_gb_per_s\": %.6g},\n",
            k->nodes, k->gpus_per_node, k->gpu_mem_bytes, k->intra_gb_per_s, k->inter_gb_per_s);
    double mp, mo;
    int32_t mx;
    pl_workload_lengths(p->w, &mp, &mo, &mx);
    fputs("  \"workload\": {\"source\": ", f);
    bt_json_write_str(f, m && m->workload ? m->workload : "");
    fprintf(f,
            ", \"requests\": %zu, \"mean_prompt\": %.6g, \"mean_output\": %.6g, "
            "\"max_total\": %d},\n",
            pl_workload_n(p->w), mp, mo, mx);
    fprintf(f,
            "  \"slo\": {\"ttft_ms\": %.6g, \"tpot_ms\": %.6g, \"target\": %.6g},\n"
            "  \"policy\": \"%s\",\n  \"rate_rps\": %.6g,\n",
            p->slo_ttft_ms, p->slo_tpot_ms, p->target ? p->target : 0.9, pl_policy_name(p->policy),
            plan->rate);
}

static void json_placement(FILE *f, const pl_plan_t *plan)
{
    fputs("  \"placement\": [", f);
    for (int i = 0; i < plan->n_slots; i++) {
        const pl_slot_t *s = &plan->slots[i];
        fprintf(f,
                "%s\n    {\"role\": \"%s\", \"instance\": %d, \"stage\": %d, \"node\": %d, "
                "\"gpus\": [",
                i ? "," : "", role_name(s->role), s->instance, s->stage, s->node);
        for (int g = 0; g < s->n_gpus; g++)
            fprintf(f, "%s%d", g ? ", " : "", s->first_gpu + g);
        fputs("]}", f);
    }
    fputs("\n  ]\n}\n", f);
}

int pl_plan_write_json(FILE *f, const pl_plan_params_t *p, const pl_plan_t *plan,
                       const pl_plan_meta_t *m)
{
    json_head(f, p, plan, m);
    if (plan->algo == PL_ALGO_COLOCATED) {
        json_phase(f, "colocated", &plan->colocated, plan->n_colocated);
    } else {
        json_phase(f, "prefill", &plan->prefill, plan->n_prefill);
        json_phase(f, "decode", &plan->decode, plan->n_decode);
    }
    if (plan->algo == PL_ALGO_LOW_AFFINITY)
        fprintf(f,
                "  \"unit\": {\"nodes\": %d, \"prefill\": %d, \"decode\": %d, \"count\": %d, "
                "\"goodput_rps\": %.6g},\n",
                plan->prefill.pp, plan->unit_prefill, plan->unit_decode, plan->n_units,
                plan->unit_goodput);
    fprintf(f,
            "  \"gpus\": %d,\n  \"fits\": %s,\n  \"capacity_rps\": %.6g,\n"
            "  \"goodput_per_gpu_rps\": %.6g,\n",
            plan->gpus, plan->fits ? "true" : "false", plan->capacity, plan->per_gpu_goodput);
    if (plan->verified) {
        const pl_sim_result_t *r = &plan->at_rate;
        fprintf(f,
                "  \"verified\": {\"attainment\": %.6g, \"ttft_p90_ms\": %.6g, "
                "\"tpot_p90_ms\": %.6g, \"added_instances\": %d},\n",
                r->attainment, r->ttft_p90_ms, r->tpot_p90_ms, plan->added);
    }
    fprintf(f, "  \"search\": {\"configs\": %d, \"simulations\": %d, \"seconds\": %.3f},\n",
            plan->n_configs, plan->n_sims, m ? m->search_s : 0.0);
    json_placement(f, plan);
    return ferror(f) ? BT_ERR_IO : BT_OK;
}

/* KV memory of one daemon in MiB, rounded up: baton up takes one size for every daemon, so
 * the larger of the plan's instances is used. */
static long kv_mib(const pl_plan_params_t *p, const pl_plan_t *plan)
{
    int64_t t = plan->algo == PL_ALGO_COLOCATED                    ? plan->colocated.kv_tokens
                : plan->prefill.kv_tokens > plan->decode.kv_tokens ? plan->prefill.kv_tokens
                                                                   : plan->decode.kv_tokens;
    return (long)ceil((double)t * pl_shape_kv_bytes_per_token(&p->shape) / (1 << 20));
}

int pl_plan_write_up_config(FILE *f, const pl_plan_params_t *p, const pl_plan_t *plan,
                            const pl_plan_meta_t *m)
{
    fprintf(f, "# baton up configuration from baton-plan: %s plan for %.6g requests/s\n",
            pl_algo_name(plan->algo), plan->rate);
    fprintf(f, "# objectives: TTFT %.6g ms, TPOT %.6g ms, %.0f%% of requests\n", p->slo_ttft_ms,
            p->slo_tpot_ms, 100 * (p->target ? p->target : 0.9));
    if (plan->algo == PL_ALGO_COLOCATED)
        fprintf(f, "# colocated: tp %d, pp %d\n", plan->colocated.tp, plan->colocated.pp);
    else
        fprintf(f,
                "# prefill: tp %d, pp %d; decode: tp %d, pp %d (daemons on one machine run "
                "tp = pp = 1)\n",
                plan->prefill.tp, plan->prefill.pp, plan->decode.tp, plan->decode.pp);
    if (m && m->profile)
        fprintf(f, "# router: --profile %s --slo-ttft-ms %.6g --slo-tpot-ms %.6g\n", m->profile,
                p->slo_ttft_ms, p->slo_tpot_ms);
    else
        fprintf(f, "# router: no measured profile at the plan's tp (the plan derived it)\n");
    fprintf(f, "prefill = %d\ndecode = %d\ncolocated = %d\n", plan->n_prefill, plan->n_decode,
            plan->n_colocated);
    fprintf(f, "policy = %s\n", pl_policy_name(p->policy));
    if (m && m->model_file)
        fprintf(f, "model = %s\n", m->model_file);
    fprintf(f, "max-batch-tokens = %d\n", p->max_batch_tokens ? p->max_batch_tokens : 4096);
    if (p->max_batch_seqs)
        fprintf(f, "max-batch-seqs = %d\n", p->max_batch_seqs);
    fprintf(f, "kv-mem = %ldM\n", kv_mib(p, plan));
    return ferror(f) ? BT_ERR_IO : BT_OK;
}

static void yaml_role(FILE *f, const char *name, const pl_phase_cfg_t *c, int n,
                      const pl_plan_params_t *p)
{
    fprintf(f,
            "%s:\n  replicas: %d\n  tensorParallel: %d\n  pipelineParallel: %d\n"
            "  gpusPerReplica: %d\n  maxBatchTokens: %d\n  maxBatchSeqs: %d\n"
            "  kvCacheBytes: %.0f\n",
            name, n, n ? c->tp : 0, n ? c->pp : 0, n ? c->tp * c->pp : 0,
            p->max_batch_tokens ? p->max_batch_tokens : 4096,
            p->max_batch_seqs ? p->max_batch_seqs
                              : (c->profile.max_batch > 0 ? c->profile.max_batch : 256),
            n ? (double)c->kv_tokens * pl_shape_kv_bytes_per_token(&p->shape) : 0.0);
}

int pl_plan_write_values(FILE *f, const pl_plan_params_t *p, const pl_plan_t *plan,
                         const pl_plan_meta_t *m)
{
    fprintf(f,
            "# Values for the deploy/ Kubernetes manifests, from baton-plan (%s plan, %.6g "
            "requests/s, %d GPUs).\n",
            pl_algo_name(plan->algo), plan->rate, plan->gpus);
    fprintf(f, "model:\n  name: \"%s\"\n", p->shape.name);
    if (m && m->model_file)
        fprintf(f, "  file: \"%s\"\n", m->model_file);
    fprintf(f,
            "router:\n  policy: %s\n  sloTtftMs: %.6g\n  sloTpotMs: %.6g\n"
            "  attainmentTarget: %.6g\n",
            pl_policy_name(p->policy), p->slo_ttft_ms, p->slo_tpot_ms, p->target ? p->target : 0.9);
    if (m && m->profile)
        fprintf(f, "  profile: \"%s\"\n", m->profile);
    yaml_role(f, "prefill", &plan->prefill, plan->n_prefill, p);
    yaml_role(f, "decode", &plan->decode, plan->n_decode, p);
    yaml_role(f, "colocated", &plan->colocated, plan->n_colocated, p);
    fprintf(f, "placement:\n  affinity: %s\n  nodes: %d\n  gpusPerNode: %d\n",
            plan->algo == PL_ALGO_LOW_AFFINITY ? "low" : "high", p->cluster.nodes,
            p->cluster.gpus_per_node);
    if (plan->algo == PL_ALGO_LOW_AFFINITY)
        fprintf(f,
                "  unit:\n    nodes: %d\n    prefillPerNode: %d\n    decodePerNode: %d\n"
                "    count: %d\n",
                plan->prefill.pp, plan->unit_prefill, plan->unit_decode, plan->n_units);
    return ferror(f) ? BT_ERR_IO : BT_OK;
}
