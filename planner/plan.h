/* SPDX-License-Identifier: MIT */
/*
 * plan.h - DistServe's placement search: the parallelism of each phase and the number of
 * instances that serve a request rate within the objectives with the fewest GPUs.
 *
 * Algorithms (DESIGN.md section 4):
 *  - high node-affinity (fast links between nodes): every (tp, pp) that fits memory is tried
 *    for prefill alone and for decode alone; each phase keeps the configuration with the most
 *    goodput per GPU; then n = ceil(R / goodput_prefill) and m = ceil(R / goodput_decode).
 *  - low node-affinity (slow links between nodes): prefill and decode get the same pipeline
 *    stages, and stage k of every prefill and decode instance of a "unit" sits on one node, so
 *    KV only crosses intra-node links. Every unit (pp, prefill tp and count, decode tp and count
 *    that fit a node) is simulated whole; the best per GPU is replicated ceil(R / goodput).
 *  - colocated (the baseline): the best (tp, pp) of a colocated instance, replicated.
 * Each phase alone is searched at the joint target on its own objective (DistServe's rule),
 * whole units and colocated instances on joint attainment. Among configurations the one that
 * needs the fewest GPUs for R once replicated wins, then the one with the most goodput per GPU
 * (DistServe ranks by goodput per GPU alone, which at a low R can pick one huge instance where
 * a small one would do). The plan is then simulated whole at R, with its placement so that
 * transfers use the links they would, and while it misses the joint target (the two phases'
 * misses add up) an instance is added to the phase that misses more.
 * Profiles: one per tensor-parallel degree, measured or hand-written; a degree with none is
 * derived from the nearest smaller measured one (shape.h's scaling rule). Pipeline stages use
 * DistServe's rule: a stage takes 1/pp of the time, and a batch passes all of them.
 */
#ifndef BATON_PLANNER_PLAN_H
#define BATON_PLANNER_PLAN_H

#include "shape.h"
#include "sim.h"
#include "workload.h"

typedef struct {
    int nodes;                               /* >= 1 */
    int gpus_per_node;                       /* >= 1 */
    double gpu_mem_bytes;                    /* > 0 */
    double intra_gb_per_s, intra_latency_ms; /* KV link within a node; 0 GB/s: the profile's */
    double inter_gb_per_s, inter_latency_ms; /* between nodes; 0 GB/s: the profile's */
} pl_cluster_t;

typedef enum {
    PL_ALGO_HIGH_AFFINITY = 0,
    PL_ALGO_LOW_AFFINITY,
    PL_ALGO_COLOCATED,
} pl_algo_t;

typedef struct {
    pl_shape_t shape;
    const bt_profile_t *profiles; /* (n_profiles) distinct tp; borrowed */
    int n_profiles;
    double tp_scale_token, tp_scale_fixed; /* scaling rule; 0: PL_TP_SCALE_* */
    pl_cluster_t cluster;
    const pl_workload_t *w; /* at unit rate; borrowed */
    double rate;            /* R, requests/s, > 0 */
    double slo_ttft_ms, slo_tpot_ms;
    double target;            /* joint attainment; 0: 0.9 */
    pl_policy_t policy;       /* placement inside the simulated cluster */
    int32_t max_batch_tokens; /* prefill token budget L_m; 0: 4096 */
    int32_t max_batch_seqs;   /* 0: the profile's max_batch, else 256 */
    int32_t block_size;       /* 0: 16 */
    double mem_util;          /* fraction of GPU memory for weights and KV; 0: 0.9 */
    int max_tp, max_pp;       /* 0: GPUs per node, and nodes x GPUs per node */
    int verify_steps;         /* instances verification may add; 0: 16; < 0: do not verify */
} pl_plan_params_t;

/* One pipeline stage of one instance on the cluster. */
typedef struct {
    pl_role_t role;
    int instance;  /* index among the instances of its role */
    int stage;     /* pipeline stage, 0-based */
    int node;      /* node index */
    int first_gpu; /* first GPU of the stage on that node */
    int n_gpus;    /* tp */
} pl_slot_t;

typedef struct {
    int tp, pp;
    double goodput;       /* requests/s of one instance (of one unit: low affinity) */
    double per_gpu;       /* goodput per GPU */
    int64_t kv_tokens;    /* KV capacity of one instance */
    bt_profile_t profile; /* the latency model used */
    int derived;          /* profile derived by the scaling rule */
} pl_phase_cfg_t;

typedef struct {
    pl_algo_t algo;
    pl_phase_cfg_t prefill, decode, colocated; /* those the algorithm uses */
    int n_prefill, n_decode, n_colocated;      /* instances */
    int unit_prefill, unit_decode, n_units;    /* low affinity: per unit, and units */
    double unit_goodput;                       /* low affinity: requests/s of one unit */
    int gpus;                                  /* GPUs the plan uses */
    int fits;                                  /* its placement fits the cluster */
    double rate;                               /* R */
    double capacity;         /* requests/s the instances carry (their goodputs, phase minimum) */
    double per_gpu_goodput;  /* capacity / gpus */
    int verified;            /* the whole plan was simulated at R */
    pl_sim_result_t at_rate; /* that simulation */
    int added;               /* instances verification added */
    pl_slot_t *slots;        /* (n_slots) owned */
    int n_slots;
    int n_configs; /* configurations evaluated */
    int n_sims;    /* simulations run */
} pl_plan_t;

/* Runs one algorithm. BT_ERR_NOT_FOUND (logged) when no configuration fits memory or serves
 * any rate; BT_ERR_INVAL for bad parameters; BT_ERR_NOMEM. A plan that needs more GPUs than the
 * cluster has is returned with fits = 0. Release with pl_plan_fini. */
int pl_plan_run(pl_algo_t algo, const pl_plan_params_t *p, pl_plan_t *out);
void pl_plan_fini(pl_plan_t *plan);

/* "high-affinity", "low-affinity", "colocated"; -1 for others. */
int pl_algo_parse(const char *name);
const char *pl_algo_name(pl_algo_t a);

/* The profile for tp: the measured one, else derived (*derived = 1) from the nearest smaller
 * measured degree (the smallest one when none is smaller). BT_ERR_NOT_FOUND without profiles. */
int pl_plan_profile_for(const pl_plan_params_t *p, int tp, bt_profile_t *out, int *derived);

/* The simulator instances of a plan (n_prefill + n_decode + n_colocated of them, in that
 * order, each on the node of its first stage), for verification and for baton-sim. inst must
 * have room for them all. Returns their count. */
int pl_plan_instances(const pl_plan_params_t *p, const pl_plan_t *plan, pl_inst_spec_t *inst);

#endif
