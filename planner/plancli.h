/* SPDX-License-Identifier: MIT */
/*
 * plancli.h - what the planner's programs (baton-plan, baton-sim) share: the workload options
 * of their option tables and the workload they describe, and the parsing of comma-separated
 * number lists.
 *
 * A program embeds pl_cli_workload_t in its config struct and lists PL_CLI_WORKLOAD_OPTS in its
 * option table, so both programs spell and check the workload flags the same way.
 */
#ifndef BATON_PLANNER_PLANCLI_H
#define BATON_PLANNER_PLANCLI_H

#include <stddef.h>
#include <stdint.h>

#include "common/config.h"
#include "trace.h"
#include "workload.h"

typedef struct {
    char *trace;   /* trace file; NULL: lengths from the options */
    char *arrival; /* poisson, gamma, trace */
    float cv;
    int prompt_len, prompt_max, output_len, output_max; /* tokens; max 0: fixed */
    int max_prompt, max_output;                         /* clip trace lengths; 0: no clip */
    int requests;
    int64_t seed;
} pl_cli_workload_t;

#define PL_CLI_OPT(n, t, d, lo, hi, type, f, h)                                                    \
    {                                                                                              \
        n, 0, t, d, lo, hi, offsetof(type, f), h                                                   \
    }
#define PL_CLI_WORKLOAD_OPTS(type, m)                                                              \
    PL_CLI_OPT("trace", BT_CFG_STRING, NULL, 0, 0, type, m.trace,                                  \
               "workload trace (CSV or JSON lines): lengths, and arrivals with --arrival trace"),  \
        PL_CLI_OPT("arrival", BT_CFG_STRING, "poisson", 0, 0, type, m.arrival,                     \
                   "arrivals: poisson, gamma (bursty, --cv), trace (its timestamps)"),             \
        PL_CLI_OPT("cv", BT_CFG_FLOAT, "2", 0.01, 100, type, m.cv,                                 \
                   "coefficient of variation of gamma gaps"),                                      \
        PL_CLI_OPT("prompt-len", BT_CFG_INT, "512", 1, 1 << 24, type, m.prompt_len,                \
                   "prompt tokens without a trace (the minimum with --prompt-max)"),               \
        PL_CLI_OPT("prompt-max", BT_CFG_INT, "0", 0, 1 << 24, type, m.prompt_max,                  \
                   "uniform prompt lengths up to this; 0: fixed"),                                 \
        PL_CLI_OPT("output-len", BT_CFG_INT, "128", 1, 1 << 24, type, m.output_len,                \
                   "output tokens without a trace (the minimum with --output-max)"),               \
        PL_CLI_OPT("output-max", BT_CFG_INT, "0", 0, 1 << 24, type, m.output_max,                  \
                   "uniform output lengths up to this; 0: fixed"),                                 \
        PL_CLI_OPT("max-prompt", BT_CFG_INT, "0", 0, 1 << 24, type, m.max_prompt,                  \
                   "clip trace prompts to this many tokens; 0: no clip"),                          \
        PL_CLI_OPT("max-output", BT_CFG_INT, "0", 0, 1 << 24, type, m.max_output,                  \
                   "clip trace outputs to this many tokens; 0: no clip"),                          \
        PL_CLI_OPT("requests", BT_CFG_INT, "5000", 1, 100000000, type, m.requests,                 \
                   "requests per simulation"),                                                     \
        PL_CLI_OPT("seed", BT_CFG_INT64, "1", 0, 0, type, m.seed, "workload seed")

/* Builds the workload (and loads its trace, returned in *trace for the caller to destroy after
 * the workload). desc receives a one-line description. Errors are logged. */
int pl_cli_workload(const pl_cli_workload_t *c, pl_trace_t **trace, pl_workload_t **w, char *desc,
                    size_t cap);

/* Parses "1,2.5,4" into at most max numbers > 0; returns the count, or -1. */
int pl_cli_numbers(const char *s, double *out, int max);

#endif
