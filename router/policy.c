/* SPDX-License-Identifier: MIT */
/*
 * policy.c - the policy registry, the shared placement rules, and the two simple policies:
 * round-robin and least-loaded (slo-aware is in policy_slo.c).
 *
 * Round-robin walks each role's instances in registration order (a record's seq), so the order
 * does not change when instances join, leave or are skipped for being full. Least-loaded ranks
 * by what the last heartbeat said plus what the router has sent since, which is what keeps a
 * burst between two heartbeats from landing on one instance.
 */
#include "policy.h"

#include <stdint.h>
#include <string.h>

#include "common/alloc.h"
#include "common/status.h"

struct router_policy {
    const router_policy_ops_t *ops;
    void *ctx;
    router_instance_t **scratch; /* same-version prefill list */
    int scratch_cap;
};

static const router_policy_ops_t *const registry[] = {
    &router_policy_round_robin,
    &router_policy_least_loaded,
    &router_policy_slo_aware,
};

#define N_POLICIES ((int)(sizeof registry / sizeof registry[0]))

const char *router_policy_list(void)
{
    return "round-robin, least-loaded, slo-aware";
}

int router_mode_parse(const char *name)
{
    if (!name || !strcmp(name, "auto"))
        return ROUTER_MODE_AUTO;
    if (!strcmp(name, "disagg"))
        return ROUTER_MODE_DISAGG;
    if (!strcmp(name, "colocated"))
        return ROUTER_MODE_COLOCATED;
    return -1;
}

int router_policy_create(const char *name, const router_policy_params_t *params,
                         router_policy_t **out)
{
    const router_policy_ops_t *ops = NULL;
    for (int i = 0; i < N_POLICIES && !ops; i++)
        if (name && !strcmp(registry[i]->name, name))
            ops = registry[i];
    if (!ops)
        return BT_ERR_NOT_FOUND;
    if (ops->needs_profile && (!params || !params->profile))
        return BT_ERR_INVAL;
    router_policy_t *p = bt_calloc(1, sizeof *p);
    if (!p)
        return BT_ERR_NOMEM;
    p->ops = ops;
    int st = ops->create ? ops->create(params, &p->ctx) : BT_OK;
    if (st != BT_OK) {
        bt_free(p);
        return st;
    }
    *out = p;
    return BT_OK;
}

void router_policy_destroy(router_policy_t *p)
{
    if (!p)
        return;
    if (p->ops->destroy)
        p->ops->destroy(p->ctx);
    bt_free(p->scratch);
    bt_free(p);
}

const char *router_policy_name(const router_policy_t *p)
{
    return p->ops->name;
}

/* If the pick mixes versions and prefills of the decode's version exist, pick among those. */
static int prefer_version(router_policy_t *p, const router_cands_t *c, const router_job_t *job,
                          router_placement_t *out)
{
    uint32_t v = out->decode->version;
    if (out->prefill->version == v)
        return BT_OK;
    if (p->scratch_cap < c->n_prefill) {
        router_instance_t **s = bt_realloc(p->scratch, (size_t)c->n_prefill * sizeof *s);
        if (!s)
            return BT_OK; /* keep the mixed pair rather than fail a request */
        p->scratch = s;
        p->scratch_cap = c->n_prefill;
    }
    int n = 0;
    for (int i = 0; i < c->n_prefill; i++)
        if (c->prefill[i]->version == v)
            p->scratch[n++] = c->prefill[i];
    if (n == 0)
        return BT_OK;
    router_instance_t *d = out->decode;
    router_cands_t same = {.prefill = p->scratch, .n_prefill = n, .decode = &d, .n_decode = 1};
    router_placement_t again;
    if (p->ops->place(p->ctx, &same, job, &again) == BT_OK)
        *out = again;
    return BT_OK;
}

int router_policy_place(router_policy_t *p, router_mode_t mode, const router_cands_t *c,
                        const router_job_t *job, router_placement_t *out)
{
    int st = BT_AGAIN;
    if (mode != ROUTER_MODE_COLOCATED && c->n_prefill > 0 && c->n_decode > 0) {
        router_cands_t pair = *c;
        pair.n_colocated = 0;
        memset(out, 0, sizeof *out);
        st = p->ops->place(p->ctx, &pair, job, out);
        if (st == BT_OK)
            st = prefer_version(p, &pair, job, out);
    }
    if (st == BT_AGAIN && mode != ROUTER_MODE_DISAGG && c->n_colocated > 0) {
        router_cands_t colo = {.colocated = c->colocated, .n_colocated = c->n_colocated};
        memset(out, 0, sizeof *out);
        st = p->ops->place(p->ctx, &colo, job, out);
        out->colocated = st == BT_OK;
    }
    return st;
}

/* --- round-robin ------------------------------------------------------------------------ */

typedef struct {
    uint64_t last_prefill, last_decode, last_colocated; /* seq of the last pick; UINT64_MAX: none */
} rr_ctx_t;

static int rr_create(const router_policy_params_t *params, void **ctx)
{
    rr_ctx_t *r = bt_malloc(sizeof *r);
    if (!r)
        return BT_ERR_NOMEM;
    r->last_prefill = r->last_decode = r->last_colocated = UINT64_MAX;
    *ctx = r;
    return BT_OK;
}

static void rr_destroy(void *ctx)
{
    bt_free(ctx);
}

/* The candidate registered next after *last, wrapping to the earliest. */
static router_instance_t *rr_next(router_instance_t *const *v, int n, uint64_t *last)
{
    router_instance_t *after = NULL, *first = NULL;
    for (int i = 0; i < n; i++) {
        uint64_t s = v[i]->seq;
        if (!first || s < first->seq)
            first = v[i];
        if ((*last == UINT64_MAX || s > *last) && (!after || s < after->seq))
            after = v[i];
    }
    router_instance_t *pick = after ? after : first;
    *last = pick->seq;
    return pick;
}

static int rr_place(void *ctx, const router_cands_t *c, const router_job_t *job,
                    router_placement_t *out)
{
    rr_ctx_t *r = ctx;
    if (c->n_colocated > 0) {
        out->decode = rr_next(c->colocated, c->n_colocated, &r->last_colocated);
        return BT_OK;
    }
    out->decode = rr_next(c->decode, c->n_decode, &r->last_decode);
    out->prefill = rr_next(c->prefill, c->n_prefill, &r->last_prefill);
    return BT_OK;
}

const router_policy_ops_t router_policy_round_robin = {
    .name = "round-robin",
    .help = "each role's instances in turn",
    .create = rr_create,
    .destroy = rr_destroy,
    .place = rr_place,
};

/* --- least-loaded ----------------------------------------------------------------------- */

/* Keys compared in order; smaller is better. */
typedef struct {
    uint64_t k[3];
} load_t;

static int load_less(load_t a, load_t b)
{
    for (int i = 0; i < 3; i++)
        if (a.k[i] != b.k[i])
            return a.k[i] < b.k[i];
    return 0;
}

static load_t prefill_load(const router_instance_t *x)
{
    /* Prompt tokens waiting decide how long a new prompt waits; requests break ties. */
    return (load_t){{x->queued_tokens + x->pend_tokens,
                     (uint64_t)x->queue_len + x->running + x->pend_reqs, x->seq}};
}

static load_t decode_load(const router_instance_t *x)
{
    /* Sequences in the batch set the step time; more free KV breaks ties. */
    return (load_t){{(uint64_t)x->running + x->queue_len + x->pend_reqs,
                     UINT32_MAX - (uint64_t)x->kv_free_blocks, x->seq}};
}

static load_t colocated_load(const router_instance_t *x)
{
    return (load_t){{(uint64_t)x->running + x->queue_len + x->pend_reqs,
                     x->queued_tokens + x->pend_tokens, x->seq}};
}

static router_instance_t *least(router_instance_t *const *v, int n,
                                load_t (*load)(const router_instance_t *))
{
    router_instance_t *best = v[0];
    load_t lb = load(best);
    for (int i = 1; i < n; i++) {
        load_t l = load(v[i]);
        if (load_less(l, lb)) {
            best = v[i];
            lb = l;
        }
    }
    return best;
}

static int ll_place(void *ctx, const router_cands_t *c, const router_job_t *job,
                    router_placement_t *out)
{
    if (c->n_colocated > 0) {
        out->decode = least(c->colocated, c->n_colocated, colocated_load);
        return BT_OK;
    }
    out->decode = least(c->decode, c->n_decode, decode_load);
    out->prefill = least(c->prefill, c->n_prefill, prefill_load);
    return BT_OK;
}

const router_policy_ops_t router_policy_least_loaded = {
    .name = "least-loaded",
    .help = "the prefill with the fewest waiting prompt tokens, the decode with the smallest batch",
    .place = ll_place,
};
