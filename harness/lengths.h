/* SPDX-License-Identifier: MIT */
/*
 * lengths.h - request lengths for a benchmark: synthetic (fixed, uniform, lognormal) or drawn
 * from a trace read by the planner's readers, and the DistServe application presets (chatbot,
 * code completion, summarization) with their traces and SLOs.
 *
 * Traces are given by path (presets name a file relative to a traces folder), so nothing is
 * copied into the repository and the harness runs wherever the files are. Seeded throughout.
 */
#ifndef BATON_HARNESS_LENGTHS_H
#define BATON_HARNESS_LENGTHS_H

#include <stddef.h>
#include <stdint.h>

#include "driver.h"
#include "planner/trace.h"

typedef enum {
    BB_LEN_FIXED = 0, /* input_len / output_len */
    BB_LEN_UNIFORM,   /* integers in [len, max] */
    BB_LEN_LOGNORMAL, /* median len, log-space standard deviation sigma */
    BB_LEN_TRACE,     /* pairs from the trace */
} bb_len_kind_t;

typedef struct {
    bb_len_kind_t kind;
    int32_t input_len, output_len; /* tokens, >= 1 */
    int32_t input_max, output_max; /* UNIFORM: upper bounds (>= the lens) */
    double sigma;                  /* LOGNORMAL: > 0 */
    const pl_trace_t *trace;       /* TRACE: borrowed */
    int in_order;                  /* TRACE: its first n requests in order (for its times),
                                    * else sampled with replacement */
    uint64_t seed;
} bb_lengths_params_t;

/* Fills prompt and output of n requests. BT_ERR_INVAL (logged) for bad parameters, or a trace
 * shorter than n with in_order. */
int bb_lengths_make(const bb_lengths_params_t *p, size_t n, bb_request_t *out);

/* Clips lengths to what the cluster takes: prompt <= max_prompt, prompt + output <= max_total
 * (0: no limit). Returns how many requests were changed. */
size_t bb_lengths_clip(bb_request_t *r, size_t n, int32_t max_prompt, int32_t max_total);

typedef struct {
    const char *name;  /* "chatbot", "code", "summarization" */
    const char *trace; /* relative to the traces folder */
    double slo_ttft_ms, slo_tpot_ms;
    const char *description;
} bb_preset_t;

/* The preset of that name, or NULL. */
const bb_preset_t *bb_preset_find(const char *name);

#endif
