/* SPDX-License-Identifier: MIT */
/*
 * sim.h - a discrete-event simulator of a serving cluster: disaggregated (prefill and decode
 * instances, KV transfers between them) or colocated, driven by the latency profiles.
 *
 * What it models, and how it matches the real daemons (docs/serving.md, DESIGN.md section 3):
 *  - the router places each request on arrival with the same policies (round-robin,
 *    least-loaded, slo-aware: the same ranking keys and the same TTFT/TPOT predictions as
 *    router/policy*.c), seeing every instance's exact state (as if heartbeats were instant);
 *  - prefill: FCFS batches up to the token budget L_m and a batch-size limit, stopping at the
 *    first prompt that does not fit; the KV of a prompt occupies the instance's memory from
 *    batch start until it has been shipped; pp pipeline stages take a new batch every t/pp and
 *    finish each after t, in order;
 *  - transfer: decode pulls (DistServe): a prefilled request waits FCFS until its decode instance
 *    can reserve KV for prompt + output, then its KV crosses the prefill instance's link (one
 *    transfer at a time per link) in latency + bytes / bandwidth; or, with queue_timeout_ms, as
 *    baton's router admits requests (the decode side reserves the prompt's KV at placement, and
 *    a request with no room anywhere waits in the router's queue, see pl_sim_params_t);
 *  - decode: continuous batching at iteration level, pp micro-batches that step independently
 *    (DistServe's model of a pipelined decode), each with a batch-size limit; memory is reserved
 *    for the whole sequence at admission, so nothing is ever preempted;
 *  - colocated: continuous batching with prefill first (a waiting prompt batch runs before the
 *    next decode step and stalls it), the baseline;
 *  - pairs (AcceLLM, DESIGN.md section 5; sim_pairs.c): instances 2k and 2k + 1 form pair k, each
 *    with the full weights, serving prefill or decode as the router's pair manager switches them
 *    (router/router_pair.c: the same placement, ownership, hand-off and switching rules, on the
 *    router's ticks and heartbeat-old loads); the owner ships the prompt's KV to its partner,
 *    which keeps a replica, dropped first under memory pressure. Work moves between the members
 *    instead of data.
 * Per request it reports TTFT (first token - arrival) and TPOT ((last - first) / (output - 1)).
 * A run is deterministic: the same inputs give the same results, bit for bit.
 */
#ifndef BATON_PLANNER_SIM_H
#define BATON_PLANNER_SIM_H

#include <stddef.h>
#include <stdint.h>

#include "common/profile.h"
#include "workload.h"

typedef enum {
    PL_ROLE_PREFILL = 0,
    PL_ROLE_DECODE,
    PL_ROLE_COLOCATED,
    PL_ROLE_PAIRED, /* a member of an AcceLLM pair: prefills or decodes as its pair decides */
} pl_role_t;

/* A machine's speed over time, to replay a real run (baton-validate --speed-bins-ms): a
 * forward of kind k (0 prefill, 1 decode) starting at simulated time t takes the profile's
 * time times factor[k][t / bin_ms] (the last bin's past the end). */
typedef struct {
    double bin_ms;
    int n_bins;
    const double *factor[2]; /* (n_bins) each */
} pl_speed_t;

typedef struct {
    pl_role_t role;
    const bt_profile_t *profile; /* borrowed; the latency model of this instance's parallelism */
    const pl_speed_t *speed;     /* borrowed; NULL: the profile's times throughout */
    int pp;                      /* pipeline stages, >= 1 (0 counts as 1) */
    int64_t kv_tokens;           /* KV memory in tokens; 0: unlimited */
    int32_t max_batch_tokens;    /* prefill token budget L_m; 0: unlimited */
    int32_t max_batch_seqs;      /* prompts per prefill batch, sequences per decode micro-batch;
                                  * 0: unlimited */
    int node;                    /* node holding the instance (first stage) */
} pl_inst_spec_t;

/* The pairs' settings, as the router and the pair daemons have them (router/router_pair.c,
 * pair/pair.c). 0: the default in brackets; a negative value: none (0 ms; for heartbeat_ms, the
 * router sees every member's exact state). */
typedef struct {
    double switch_ms;    /* least time between two role switches of a pair [200] */
    double idle_ms;      /* a member serving prefill turns to decode when nothing waits and it
                          * was last given a prompt this long ago [1000] */
    double tick_ms;      /* the router's housekeeping period: role switches are decided on its
                          * ticks [10] */
    double heartbeat_ms; /* members report queue and running sequences this often; the router's
                          * load counts assignments since the last report [500] */
    double rtt_ms;       /* a router round trip: from arrival to the owner's assignment (the
                          * holder reserves first) and from a hand-off to the RESUME [1] */
    double step_ms;      /* time added to every forward that decodes, for sending each step's new
                          * KV rows to the holders [0] */
} pl_pairs_params_t;

typedef enum {
    PL_SIM_FULL = 0,     /* requests go through prefill, transfer and decode */
    PL_SIM_PREFILL_ONLY, /* requests end at their first token; only TTFT counts */
    PL_SIM_DECODE_ONLY,  /* requests arrive prefilled (KV in place); only TPOT counts */
} pl_sim_mode_t;

typedef enum {
    PL_POLICY_ROUND_ROBIN = 0,
    PL_POLICY_LEAST_LOADED,
    PL_POLICY_SLO_AWARE,
} pl_policy_t;

typedef struct {
    const pl_inst_spec_t *inst; /* (n_inst) borrowed */
    int n_inst;
    pl_policy_t policy;
    pl_sim_mode_t mode;
    double slo_ttft_ms, slo_tpot_ms; /* > 0 */
    int32_t block_size;              /* KV tokens per block; 0: 16 */
    /* KV links: within a node / across nodes. A bandwidth of 0 uses the sending instance's
     * profile (transfer latency and bandwidth). */
    double intra_gb_per_s, intra_latency_ms;
    double inter_gb_per_s, inter_latency_ms;
    size_t max_failures;     /* stop once more requests than this missed; 0: run to the end */
    pl_pairs_params_t pairs; /* clusters of PL_ROLE_PAIRED instances */
    /* The router's admission (router/router_place.c), for clusters of prefill and decode
     * instances in the full mode: > 0: a request is placed only where a decode instance has
     * room for its prompt's KV, which that instance reserves at once (before the prefill, as
     * the router's ASSIGN to the decode side does), keeping a block free for each sequence it
     * runs; its KV is shipped as soon as it is prefilled, and the rest of the sequence's KV is
     * reserved when it joins a decode batch, which it waits for unless nothing runs there (the
     * decode daemon with --growth-reserve 1: nothing is preempted). A request no decode
     * instance has room for waits, FCFS, in the router's queue, and fails after
     * queue_timeout_ms there (--queue-timeout-ms).
     * 0: DistServe's pull (a prefilled request waits at its decode instance until the whole
     * sequence's KV fits; no router queue). */
    double queue_timeout_ms;
} pl_sim_params_t;

/* What happened to one request. */
typedef struct {
    double ttft_ms;   /* first token - arrival; -1 if never reached */
    double tpot_ms;   /* (finish - first token) / (output - 1); 0 for one-token outputs */
    double finish_ms; /* time of the last token; -1 if never reached */
    int32_t prefill;  /* instance indices; -1: none */
    int32_t decode;   /* the decode or colocated instance */
} pl_sim_req_t;

typedef struct {
    size_t n;          /* requests */
    size_t n_finished; /* completed; n unless stopped early or some could never fit memory */
    size_t n_ok;       /* met both objectives (in a phase-only mode: that phase's) */
    size_t n_ttft_ok, n_tpot_ok;
    double attainment;                                          /* n_ok / n */
    double ttft_mean_ms, ttft_p50_ms, ttft_p90_ms, ttft_p99_ms; /* over finished requests */
    double tpot_mean_ms, tpot_p50_ms, tpot_p90_ms, tpot_p99_ms;
    double jct_mean_ms, jct_p50_ms, jct_p90_ms, jct_p99_ms; /* job completion: finish - arrival */
    double makespan_ms;                                     /* time of the last event */
    uint64_t n_events; /* events processed (arrivals included) */
    int stopped_early; /* max_failures was passed: attainment is an upper bound */
    /* Pairs only: role switches, hand-offs (a sequence leaving its owner, after its prefill or
     * at a turn to prefill), replicas dropped for memory, replicas the holder refused (no room),
     * and requests longer than a member's memory (refused). */
    uint64_t n_switches, n_moved, n_replicas_dropped, n_replicas_refused, n_refused;
    size_t n_expired; /* queue_timeout_ms > 0: requests that waited it out in the router's queue */
} pl_sim_result_t;

/* Simulates the n requests (arrival_ms non-decreasing) on the cluster. A cluster is either all
 * PL_ROLE_PAIRED instances (an even number, pp 1, full mode, policy ignored) or none. per_req may
 * be NULL, else it receives n records. BT_ERR_INVAL (logged) for a cluster the mode cannot run (no
 * instance of a needed role, no profile) or unsorted arrivals, BT_ERR_NOMEM. Any thread; runs
 * share nothing. */
int pl_sim_run(const pl_sim_params_t *p, const pl_req_t *reqs, size_t n, pl_sim_result_t *res,
               pl_sim_req_t *per_req);

/* "round-robin", "least-loaded", "slo-aware"; -1 for others. */
int pl_policy_parse(const char *name);
const char *pl_policy_name(pl_policy_t p);

#endif
