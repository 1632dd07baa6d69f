/* SPDX-License-Identifier: MIT */
/*
 * policy.h - placement policies: given the instances a request may go to, pick a (prefill,
 * decode) pair or one colocated instance.
 *
 * A policy is a `const router_policy_ops_t` plus a context, chosen by name at start from a
 * registry ("round-robin", "least-loaded", "slo-aware"). The router builds the candidate lists
 * (alive, not draining, not full, same model) and calls router_policy_place; the wrapper
 * applies the rules every policy shares, so that a policy only ranks instances:
 *  - P+D pairs are preferred when the lists allow one (unless the mode says colocated), else
 *    a colocated instance;
 *  - a pair of equal software versions is preferred (rollouts): if the policy's pick mixes
 *    versions and a prefill of the decode's version exists, the policy picks again among those.
 * Policies see instances read-only and keep their own state (cursors) in their context. Used
 * by the router's event-loop thread only.
 */
#ifndef BATON_ROUTER_POLICY_H
#define BATON_ROUTER_POLICY_H

#include <stdint.h>

#include "common/profile.h"
#include "instances.h"

typedef struct {
    router_instance_t **prefill; /* (n_prefill) eligible prefill instances */
    int n_prefill;
    router_instance_t **decode; /* (n_decode) eligible decode instances */
    int n_decode;
    router_instance_t **colocated; /* (n_colocated) eligible colocated instances */
    int n_colocated;
} router_cands_t;

/* What a policy knows of the request being placed. */
typedef struct {
    uint32_t n_prompt_tokens;
    uint32_t max_tokens;
    double slo_ttft_ms; /* objectives (the request's, else the cluster defaults), > 0 */
    double slo_tpot_ms;
} router_job_t;

typedef struct {
    router_instance_t *prefill; /* NULL for a colocated placement */
    router_instance_t *decode;  /* the decode instance, or the colocated one */
    int colocated;
    double ttft_ms, tpot_ms; /* slo-aware: predictions for the pick (0 for the others) */
    double slack;            /* slo-aware: the pick's normalized slack */
} router_placement_t;

typedef enum {
    ROUTER_MODE_AUTO = 0,  /* P+D pairs when possible, else colocated */
    ROUTER_MODE_DISAGG,    /* P+D pairs only */
    ROUTER_MODE_COLOCATED, /* colocated instances only */
} router_mode_t;

typedef struct {
    const bt_profile_t *profile; /* copied; required by slo-aware, ignored by the others */
} router_policy_params_t;

typedef struct router_policy_ops {
    const char *name;
    const char *help;
    int needs_profile;
    /* Optional: makes the policy's context. */
    int (*create)(const router_policy_params_t *params, void **ctx);
    /* Optional. */
    void (*destroy)(void *ctx);
    /* Picks from c, which has either prefill and decode candidates (pick a pair) or colocated
     * ones (pick one), never both. BT_OK with *out filled, BT_AGAIN when nothing fits. */
    int (*place)(void *ctx, const router_cands_t *c, const router_job_t *job,
                 router_placement_t *out);
} router_policy_ops_t;

typedef struct router_policy router_policy_t;

/* BT_ERR_NOT_FOUND for an unknown name, BT_ERR_INVAL when the policy needs a profile and
 * params has none. */
int router_policy_create(const char *name, const router_policy_params_t *params,
                         router_policy_t **out);
void router_policy_destroy(router_policy_t *p);
const char *router_policy_name(const router_policy_t *p);
/* Names of the registered policies, comma-separated. */
const char *router_policy_list(void);

/* Places a request (see the rules above). BT_AGAIN when no candidate fits: keep it queued. */
int router_policy_place(router_policy_t *p, router_mode_t mode, const router_cands_t *c,
                        const router_job_t *job, router_placement_t *out);

/* Parses "auto", "disagg", "colocated"; -1 otherwise. */
int router_mode_parse(const char *name);

/* The built-in policies (policy.c, policy_slo.c). */
extern const router_policy_ops_t router_policy_round_robin;
extern const router_policy_ops_t router_policy_least_loaded;
extern const router_policy_ops_t router_policy_slo_aware;

/* slo-aware's predictions, exposed for tests and logs: a prefill instance's time to first
 * token for the job (queue wait + prefill + transfer when pair is set) and a decode
 * instance's time per output token with the job added to its batch. */
double router_slo_predict_ttft_ms(const bt_profile_t *prof, const router_instance_t *inst,
                                  const router_job_t *job, int pair);
double router_slo_predict_tpot_ms(const bt_profile_t *prof, const router_instance_t *inst,
                                  const router_job_t *job);

#endif
