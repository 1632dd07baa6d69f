/* SPDX-License-Identifier: MIT */
/*
 * plan_out.h - a plan written out three ways: as JSON (everything: configuration, counts,
 * placement, verification, search effort), as a `baton up` configuration file (name = value
 * lines that config.h reads, keys that are `baton up` options), and as a values file for the
 * Kubernetes manifests in deploy/ (YAML). docs/planner.md documents the three formats.
 */
#ifndef BATON_PLANNER_PLAN_OUT_H
#define BATON_PLANNER_PLAN_OUT_H

#include <stdio.h>

#include "plan.h"

/* What the plan was made from, for the record (all borrowed, may be NULL). */
typedef struct {
    const char *workload;   /* e.g. "trace sharegpt.csv, poisson" */
    const char *model_file; /* model path for `baton up` */
    const char *profile;    /* profile path the router's slo-aware policy should read */
    double search_s;        /* wall time of the search */
} pl_plan_meta_t;

/* Each returns BT_OK, or BT_ERR_IO when the stream reports an error. */
int pl_plan_write_json(FILE *f, const pl_plan_params_t *p, const pl_plan_t *plan,
                       const pl_plan_meta_t *meta);
int pl_plan_write_up_config(FILE *f, const pl_plan_params_t *p, const pl_plan_t *plan,
                            const pl_plan_meta_t *meta);
int pl_plan_write_values(FILE *f, const pl_plan_params_t *p, const pl_plan_t *plan,
                         const pl_plan_meta_t *meta);

#endif
