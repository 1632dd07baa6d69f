/* SPDX-License-Identifier: MIT */
/*
 * metrics.h - what a benchmark run measured, computed from per-request timelines taken on the
 * client's clock: TTFT, TPOT (excluding the first token), inter-token latency, end-to-end
 * latency, their means and percentiles, joint SLO attainment, throughput, errors by code, and a
 * breakdown of where requests spent their time from the server's lifetime events.
 *
 * The one thing to know: client and server clocks are never mixed. Every latency is a
 * difference of two client CLOCK_MONOTONIC times; the breakdown only takes differences of
 * server event times (which on one host share a clock). Pure functions, no I/O: the tests feed
 * hand-made timelines with known answers.
 */
#ifndef BATON_HARNESS_METRICS_H
#define BATON_HARNESS_METRICS_H

#include <stddef.h>
#include <stdint.h>

/* One streamed chunk as the client received it. */
typedef struct {
    double t_ms;       /* client time since the start of the run */
    uint32_t n_tokens; /* tokens it carried (>= 1) */
} bb_chunk_t;

/* Server-side phases of one request, in ms (differences of server event times); < 0 when the
 * request did not go through that phase (a colocated instance has no transfer). */
typedef struct {
    double prefill_queue_ms, prefill_ms, transfer_ms, decode_queue_ms, decode_ms;
} bb_phases_t;

/* One request's timeline. Chunks are owned by whoever filled them (the driver or a test). */
typedef struct {
    double send_ms;           /* client time the request was submitted */
    double done_ms;           /* client time its result came; < 0 if it never did */
    int32_t n_prompt;         /* prompt tokens sent */
    int32_t n_expected;       /* output tokens asked for (max_tokens) */
    int status;               /* 0, or the baton status it failed with */
    const bb_chunk_t *chunks; /* (n_chunks) in arrival order */
    size_t n_chunks;
    bb_phases_t phases;
} bb_timeline_t;

/* Per-request latencies derived from a timeline; a value < 0 is "not defined" (a failed request
 * has no TTFT; a one-token output has no TPOT). */
typedef struct {
    double ttft_ms, tpot_ms, e2e_ms;
    uint32_t n_output; /* tokens received */
    int ok;            /* completed with status 0 */
    int slo_ok;        /* ok and both objectives met */
} bb_req_metrics_t;

/* Summary statistics of one latency. */
typedef struct {
    double mean, median, p90, p99, std, max;
    size_t n; /* samples */
} bb_dist_t;

#define BB_MAX_ERROR_CODES 16

typedef struct {
    double slo_ttft_ms, slo_tpot_ms; /* objectives; <= 0: that one is always met */
} bb_slo_t;

typedef struct {
    size_t n_requests, completed, failed;
    uint64_t total_input_tokens, total_output_tokens;
    double duration_s; /* first send to last result */
    double request_throughput, output_throughput, total_token_throughput; /* per second */
    bb_dist_t ttft, tpot, itl, e2el;                                      /* ms */
    double slo_attainment;  /* fraction of all requests meeting both objectives */
    double ttft_attainment; /* fraction meeting the TTFT objective */
    double tpot_attainment;
    int error_codes[BB_MAX_ERROR_CODES]; /* distinct failure statuses */
    size_t error_counts[BB_MAX_ERROR_CODES];
    int n_error_codes;
    bb_dist_t prefill_queue, prefill, transfer, decode_queue, decode; /* ms, over requests
                                                                       * that had the phase */
} bb_summary_t;

/* Latencies of one request against slo. */
void bb_req_metrics(const bb_timeline_t *t, const bb_slo_t *slo, bb_req_metrics_t *out);

/* Phases from a request's lifetime events: kinds are the client library's bt_client_lifetime_t
 * values, times the server's CLOCK_REALTIME in ns. The first event of each kind counts (a
 * failover repeats some). */
void bb_phases_from_events(const int *kinds, const uint64_t *time_ns, size_t n, bb_phases_t *out);

/* Percentile q in [0, 100] of v (sorted in place), linearly interpolated between closest ranks
 * like numpy's default; 0 for n == 0. */
double bb_percentile(double *v, size_t n, double q);

/* Fills d from n samples (v is sorted in place). */
void bb_dist(double *v, size_t n, bb_dist_t *d);

/* Summarises n timelines. BT_ERR_NOMEM; BT_OK otherwise. */
int bb_summarize(const bb_timeline_t *t, size_t n, const bb_slo_t *slo, bb_summary_t *out);

/* Joint attainment of n timelines against slo scaled by scale (the SLO-scale sweep). */
double bb_attainment(const bb_timeline_t *t, size_t n, const bb_slo_t *slo, double scale);

#endif
