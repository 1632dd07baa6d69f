/* SPDX-License-Identifier: MIT */
/*
 * plan_impl.h - what the search (plan.c) and the placement (plan_place.c) share; not part of
 * the planner's interface.
 */
#ifndef BATON_PLANNER_PLAN_IMPL_H
#define BATON_PLANNER_PLAN_IMPL_H

#include "plan.h"

/* Parameters with their defaults filled in. */
typedef struct {
    pl_plan_params_t p;
    int32_t max_total; /* the longest request (prompt + output), tokens */
} plan_ctx_t;

/* Fills in the defaults and checks the parameters (BT_ERR_INVAL, logged). */
int plan_ctx_init(const pl_plan_params_t *in, plan_ctx_t *c);
/* Simulator parameters for instances of this plan's cluster. */
pl_sim_params_t plan_sim_params(const plan_ctx_t *c, const pl_inst_spec_t *inst, int n,
                                pl_sim_mode_t mode);
/* Lays out the plan's slots, sets gpus and fits. BT_ERR_NOMEM. */
int plan_place(const plan_ctx_t *c, pl_plan_t *plan);
/* Simulates the plan at R and adds instances while it misses the target. */
int plan_verify(const plan_ctx_t *c, pl_plan_t *plan);
/* The instance spec of a phase configuration. */
pl_inst_spec_t plan_spec(const plan_ctx_t *c, pl_role_t role, const pl_phase_cfg_t *cfg, int node);

#endif
