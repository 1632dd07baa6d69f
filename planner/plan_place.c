/* SPDX-License-Identifier: MIT */
/*
 * plan_place.c - where a plan's instances go on the cluster, and the check of the whole plan
 * by simulation at the target rate.
 *
 * High affinity and colocated plans place each pipeline stage (tp GPUs) on the first node with
 * room, prefill instances first: with fast links between nodes, where a stage lands does not
 * change its speed, only how densely nodes are used. Low-affinity units own pp whole nodes:
 * stage k of every instance of unit u sits on node u * pp + k, prefill segments first. A plan
 * larger than the cluster is still laid out, on nodes past the last one, so that it can be
 * simulated and its size reported; fits says whether it is real.
 */
#include <math.h>

#include "common/alloc.h"
#include "common/status.h"
#include "plan_impl.h"
#include "search.h"

typedef struct {
    pl_slot_t *v;
    int n, cap;
    int *used; /* (n_nodes) GPUs taken per node */
    int n_nodes;
} layout_t;

static int add_slot(layout_t *l, pl_slot_t s)
{
    if (l->n == l->cap) {
        int cap = l->cap ? l->cap * 2 : 64;
        pl_slot_t *v = bt_realloc(l->v, (size_t)cap * sizeof *v);
        if (!v)
            return BT_ERR_NOMEM;
        l->v = v;
        l->cap = cap;
    }
    l->v[l->n++] = s;
    return BT_OK;
}

/* First node (real or past the cluster) with tp free GPUs. */
static int first_fit(layout_t *l, int gpn, int tp, int *node, int *first)
{
    for (int i = 0;; i++) {
        if (i == l->n_nodes) {
            int *u = bt_realloc(l->used, (size_t)(i + 16) * sizeof *u);
            if (!u)
                return BT_ERR_NOMEM;
            for (int k = i; k < i + 16; k++)
                u[k] = 0;
            l->used = u;
            l->n_nodes = i + 16;
        }
        if (l->used[i] + tp <= gpn) {
            *node = i;
            *first = l->used[i];
            l->used[i] += tp;
            return BT_OK;
        }
    }
}

static int place_group(layout_t *l, int gpn, pl_role_t role, int n, const pl_phase_cfg_t *cfg)
{
    for (int i = 0; i < n; i++)
        for (int s = 0; s < cfg->pp; s++) {
            pl_slot_t slot = {.role = role, .instance = i, .stage = s, .n_gpus = cfg->tp};
            int st = first_fit(l, gpn, cfg->tp, &slot.node, &slot.first_gpu);
            if (st == BT_OK)
                st = add_slot(l, slot);
            if (st != BT_OK)
                return st;
        }
    return BT_OK;
}

static int place_units(layout_t *l, const pl_plan_t *plan)
{
    int pp = plan->prefill.pp;
    for (int u = 0; u < plan->n_units; u++)
        for (int s = 0; s < pp; s++) {
            int gpu = 0;
            for (int i = 0; i < plan->unit_prefill + plan->unit_decode; i++) {
                int pre = i < plan->unit_prefill;
                const pl_phase_cfg_t *cfg = pre ? &plan->prefill : &plan->decode;
                pl_slot_t slot = {.role = pre ? PL_ROLE_PREFILL : PL_ROLE_DECODE,
                                  .instance = pre ? u * plan->unit_prefill + i
                                                  : u * plan->unit_decode + i - plan->unit_prefill,
                                  .stage = s,
                                  .node = u * pp + s,
                                  .first_gpu = gpu,
                                  .n_gpus = cfg->tp};
                gpu += cfg->tp;
                int st = add_slot(l, slot);
                if (st != BT_OK)
                    return st;
            }
        }
    return BT_OK;
}

int plan_place(const plan_ctx_t *c, pl_plan_t *plan)
{
    int gpn = c->p.cluster.gpus_per_node, st;
    layout_t l = {0};
    if (plan->algo == PL_ALGO_LOW_AFFINITY) {
        st = place_units(&l, plan);
    } else {
        st = place_group(&l, gpn, PL_ROLE_PREFILL, plan->n_prefill, &plan->prefill);
        if (st == BT_OK)
            st = place_group(&l, gpn, PL_ROLE_DECODE, plan->n_decode, &plan->decode);
        if (st == BT_OK)
            st = place_group(&l, gpn, PL_ROLE_COLOCATED, plan->n_colocated, &plan->colocated);
    }
    bt_free(l.used);
    if (st != BT_OK) {
        bt_free(l.v);
        return st;
    }
    bt_free(plan->slots);
    plan->slots = l.v;
    plan->n_slots = l.n;
    plan->gpus = 0;
    plan->fits = 1;
    for (int i = 0; i < l.n; i++) {
        plan->gpus += l.v[i].n_gpus;
        plan->fits &= l.v[i].node < c->p.cluster.nodes;
    }
    return BT_OK;
}

static int instances(const plan_ctx_t *c, const pl_plan_t *plan, pl_inst_spec_t *inst)
{
    int n = 0;
    const int counts[3] = {plan->n_prefill, plan->n_decode, plan->n_colocated};
    const pl_phase_cfg_t *cfg[3] = {&plan->prefill, &plan->decode, &plan->colocated};
    for (int role = 0; role < 3; role++)
        for (int i = 0; i < counts[role]; i++) {
            int node = 0;
            for (int k = 0; k < plan->n_slots; k++)
                if ((int)plan->slots[k].role == role && plan->slots[k].instance == i &&
                    plan->slots[k].stage == 0)
                    node = plan->slots[k].node;
            inst[n++] = plan_spec(c, (pl_role_t)role, cfg[role], node);
        }
    return n;
}

int pl_plan_instances(const pl_plan_params_t *p, const pl_plan_t *plan, pl_inst_spec_t *inst)
{
    plan_ctx_t c;
    if (plan_ctx_init(p, &c) != BT_OK)
        return 0;
    return instances(&c, plan, inst);
}

/* Adds capacity where the plan misses more: the phase with more misses, a unit, or a
 * colocated instance. */
static void grow(pl_plan_t *plan)
{
    const pl_sim_result_t *r = &plan->at_rate;
    plan->added++;
    if (plan->algo == PL_ALGO_COLOCATED) {
        plan->n_colocated++;
    } else if (plan->algo == PL_ALGO_LOW_AFFINITY) {
        plan->n_units++;
        plan->n_prefill += plan->unit_prefill;
        plan->n_decode += plan->unit_decode;
        plan->added += plan->unit_prefill + plan->unit_decode - 1;
    } else if (r->n - r->n_ttft_ok >= r->n - r->n_tpot_ok) {
        plan->n_prefill++;
    } else {
        plan->n_decode++;
    }
}

int plan_verify(const plan_ctx_t *c, pl_plan_t *plan)
{
    int added = 0, st;
    for (;;) {
        if ((st = plan_place(c, plan)) != BT_OK)
            return st;
        int n = plan->n_prefill + plan->n_decode + plan->n_colocated;
        pl_inst_spec_t *inst = bt_malloc((size_t)n * sizeof *inst);
        if (!inst)
            return BT_ERR_NOMEM;
        instances(c, plan, inst);
        pl_sim_params_t sim = plan_sim_params(c, inst, n, PL_SIM_FULL);
        st = pl_attainment(c->p.w, &sim, c->p.rate, &plan->at_rate);
        bt_free(inst);
        if (st != BT_OK)
            return st;
        plan->verified = 1;
        plan->n_sims++;
        if (plan->at_rate.attainment >= c->p.target || added >= c->p.verify_steps)
            return BT_OK;
        grow(plan);
        added++;
    }
}
