/* SPDX-License-Identifier: MIT */
/*
 * driver.h - runs a list of requests against a cluster through the client library's
 * asynchronous API on one thread and records each request's client timeline.
 *
 * Open loop: each request is submitted at its arrival time whatever the cluster does (a slow
 * cluster builds a queue, as real users would); closed loop: a fixed number in flight, the next
 * sent as soon as one ends. Every timestamp is the client's CLOCK_MONOTONIC, taken when the
 * chunk or result is handed to us. Prompts are random token ids of exactly the asked length
 * (seeded per request), outputs forced to their length (ignore_eos, max_tokens).
 */
#ifndef BATON_HARNESS_DRIVER_H
#define BATON_HARNESS_DRIVER_H

#include <stddef.h>
#include <stdint.h>

#include "metrics.h"

typedef struct {
    double arrival_ms; /* since the start of the run (open loop only) */
    int32_t prompt;    /* tokens, >= 1 */
    int32_t output;    /* tokens, >= 1 */
} bb_request_t;

typedef struct {
    const char *endpoint; /* the router; borrowed. Each run connects afresh, so requests a
                           * previous run abandoned never reach this one's results. */
    uint32_t n_vocab;     /* prompt ids are drawn from [3, n_vocab) */
    uint64_t seed;        /* prompt contents */
    int concurrency;      /* > 0: closed loop with this many in flight; 0: open loop */
    int timeout_s;        /* give up when nothing arrives for this long; 0: 600 */
    int progress;         /* 1: a progress bar on stderr */
    const char *label;    /* shown by the progress bar, e.g. "rate 2.0" */
} bb_driver_params_t;

/* The outcome of one run: timelines in request order; chunk storage owned by the run. */
typedef struct bb_run {
    bb_timeline_t *tl; /* (n) */
    size_t n;
    double wall_s;                              /* first submit to last result */
    char **prefill_instance, **decode_instance; /* (n) ids, NULL when unknown */
    bb_chunk_t *chunk_mem;
} bb_run_t;

/* Runs n requests. BT_OK with *out even when requests failed (their statuses say why; ones
 * that never ended are BT_ERR_TIMEOUT); an error when the router cannot be reached. */
int bb_drive(const bb_driver_params_t *p, const bb_request_t *reqs, size_t n, bb_run_t **out);
/* NULL is allowed. */
void bb_run_destroy(bb_run_t *r);

#endif
