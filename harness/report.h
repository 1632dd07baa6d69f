/* SPDX-License-Identifier: MIT */
/*
 * report.h - what baton-bench writes: result.json (vLLM bench-serve field names where they
 * overlap, so its tooling reads them, plus baton's attainment and breakdown), one CSV row per
 * request, and the one-screen summary.
 */
#ifndef BATON_HARNESS_REPORT_H
#define BATON_HARNESS_REPORT_H

#include <stdio.h>

#include "driver.h"
#include "metrics.h"

/* Context of a result, echoed into result.json. Strings borrowed. */
typedef struct {
    const char *endpoint, *model, *workload, *arrival, *mode;
    double request_rate; /* req/s asked; 0: closed loop or trace times */
    double cv, time_scale;
    int concurrency;
    long long seed;
    bb_slo_t slo;
    int n_gpus; /* instances the goodput is divided by */
} bb_report_ctx_t;

/* One measured rate of a goodput search or sweep. */
typedef struct {
    double rate, attainment;
} bb_point_t;

/* Writes the summary's fields as JSON members (no braces) to f, each line indented by indent. */
void bb_report_json_summary(FILE *f, const bb_summary_t *s, const char *indent);
/* Writes DIR/result.json: the context, the summary, and the search's points and goodput when
 * n_points > 0 (goodput < 0: none). BT_ERR_IO (logged) when it cannot be written. */
int bb_report_json(const char *path, const bb_report_ctx_t *c, const bb_summary_t *s,
                   const bb_point_t *points, int n_points, double goodput);
/* One row per request: id, times, lengths, latencies, status, phases, instances. */
int bb_report_csv(const char *path, const bb_run_t *run, const bb_slo_t *slo);
/* The one-screen summary. */
void bb_report_print(FILE *f, const bb_report_ctx_t *c, const bb_summary_t *s);

#endif
