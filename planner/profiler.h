/* SPDX-License-Identifier: MIT */
/*
 * profiler.h - measures an engine over a grid of batch shapes and fits the latency models
 * (fit.h) into a profile (common/profile.h): what baton-profile does.
 *
 * Prefill: batches of k prompts of length l (every k and l of the grid with k * l within the
 * token budget). Decode: steps of B sequences at context c: one prompt of c tokens is prefilled
 * once and its KV blocks are shared (reference counts) by all B sequences, so a step at B = 64
 * and c = 2048 needs the KV memory of one sequence, not 64; attention still reads c tokens per
 * sequence, as a real batch does (the contexts must be multiples of the block size, so each
 * sequence writes its new tokens into a block of its own). A timed run includes picking each
 * sequence's next token from its logits (greedy), as a served step does. Each shape is timed reps
 * times, in rounds over the whole grid after one warm-up, and the fastest run is kept (or the
 * median): whatever else runs on the machine can only add time, so the minimum is the best estimate
 * of what the engine itself costs, and rounds spread a burst of outside load over many shapes.
 * Transfers: copies of KV-sized buffers with memcpy (a local link), unless a link is stated
 * (latency and bandwidth are then written as given).
 */
#ifndef BATON_PLANNER_PROFILER_H
#define BATON_PLANNER_PROFILER_H

#include <stdio.h>

#include "common/engine.h"
#include "common/profile.h"
#include "fit.h"

#define PL_PROF_MAX_GRID 32

typedef struct {
    bt_engine_t *engine;                /* borrowed; its limits must cover the grid */
    int prefill_lens[PL_PROF_MAX_GRID]; /* prompt lengths, tokens */
    int n_prefill_lens;
    int prefill_counts[PL_PROF_MAX_GRID]; /* prompts per batch */
    int n_prefill_counts;
    int max_batch_tokens;                 /* largest prefill batch, tokens */
    int decode_batches[PL_PROF_MAX_GRID]; /* sequences per step */
    int n_decode_batches;
    int decode_ctx[PL_PROF_MAX_GRID]; /* context lengths, multiples of the block size */
    int n_decode_ctx;
    int reps;                   /* timed runs per shape, >= 1 */
    int use_median;             /* keep the median of the runs instead of the minimum */
    int allow_knee;             /* fit decode piecewise when one line does not fit */
    pl_fit_weight_t fit_weight; /* how the prefill and decode fits weight each shape */
    double link_gb_per_s;       /* > 0: a stated link instead of measuring memcpy */
    double link_latency_ms;     /* with link_gb_per_s */
    FILE *raw;                  /* if set, every measurement as CSV (kind,n,len_or_ctx,ms) */
    FILE *refit;                /* if set, fit the measurements of such a file instead */
    double window_from_ms;      /* with refit, when window_to_ms > 0: only step-log lines whose */
    double window_to_ms;        /* start (T_MS, monotonic) is within [from, to] */
    int verbose;                /* progress lines on stderr */
} pl_profiler_params_t;

/* Measures (or, with refit, reads) and fits; fills the coefficients, kv_bytes_per_token, max_batch
 * and the fit quality of out (model, backend, device, tp and note are the caller's). BT_ERR_INVAL
 * for a grid the engine cannot run (logged), BT_ERR_NOMEM/BT_ERR_NOSPACE from the engine. */
int pl_profiler_run(const pl_profiler_params_t *p, bt_profile_t *out);

/* Fits p->refit's measurements alone (no engine: p's grids are not used): out's prefill and
 * decode models and their fit quality, and the transfer model when the file has transfers;
 * the rest of out is kept. BT_ERR_INVAL for a line it cannot read, or too few points. */
int pl_profiler_refit(const pl_profiler_params_t *p, bt_profile_t *out);

/* The files of a comma-separated list as one stream, rewound: the file itself, or a temporary
 * file holding them one after the other. NULL (logged) when one cannot be read. */
FILE *pl_refit_open(const char *list);

#endif
