/* SPDX-License-Identifier: MIT */
/*
 * profile.h - latency profiles: fitted models of prefill, decode and KV-transfer time for one
 * (model, device, tensor-parallel degree), read from a JSON file (docs/router.md gives the
 * format; the profiler writes it, the router and the planner read it).
 *
 * The models are DistServe's: a prefill batch of prompts with lengths l takes
 * a + b*sum(l) + c*sum(l^2) ms; a decode step of B sequences with context lengths ctx takes
 * a + b*sum(ctx) + c*B ms (optionally with other coefficients from a batch-size knee on);
 * moving n tokens of KV takes latency + n*kv_bytes_per_token / bandwidth. A loaded profile is
 * plain data: copy it, share it between threads, no destroy needed.
 *
 * Besides the coefficients a profile may say how well they fit the measurements ("fit": points,
 * R^2 and worst relative error per model, written by baton-profile) and where hand-written
 * numbers came from ("note"); readers that only predict can ignore both.
 */
#ifndef BATON_PROFILE_H
#define BATON_PROFILE_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define BT_PROFILE_VERSION 1

typedef struct {
    double a_ms;            /* fixed cost of a batch */
    double b_ms_per_token;  /* per prompt token */
    double c_ms_per_token2; /* per squared prompt length (attention) */
} bt_profile_prefill_t;

typedef struct {
    double a_ms;               /* fixed cost of a step */
    double b_ms_per_ctx_token; /* per context token over the batch (attention reads) */
    double c_ms_per_seq;       /* per sequence in the batch */
} bt_profile_decode_t;

/* Quality of one fitted model; n_points == 0 when the profile does not say (hand-written). */
typedef struct {
    int n_points;       /* measurements the fit used */
    double r2;          /* coefficient of determination over those points (may be < 0) */
    double max_rel_err; /* worst |predicted - measured| / measured, >= 0 */
} bt_profile_fit_t;

#define BT_PROFILE_NOTE_MAX 1024

typedef struct {
    char model[192];  /* model id (modelid.h) the profile was measured with; "" if unknown */
    char backend[32]; /* "cpu", "cuda" */
    char device[128]; /* free text, e.g. "NVIDIA H200" */
    int tp;           /* tensor-parallel degree, >= 1 */
    bt_profile_prefill_t prefill;
    bt_profile_decode_t decode;
    int decode_knee_batch;            /* 0: no knee; else from this batch size on ... */
    bt_profile_decode_t decode_above; /* ... these coefficients apply */
    double transfer_latency_ms;       /* fixed cost of one KV transfer */
    double transfer_gb_per_s;         /* KV transfer bandwidth, 1e9 bytes per second, > 0 */
    double kv_bytes_per_token;        /* KV bytes of one token over all layers, > 0 */
    int max_batch;                    /* decode batch-size limit measured; 0: unknown */
    bt_profile_fit_t fit_prefill, fit_decode, fit_transfer; /* "fit" object; zero if absent */
    char note[BT_PROFILE_NOTE_MAX]; /* provenance of hand-written coefficients; "" if absent */
} bt_profile_t;

/* Parses and validates a profile (every coefficient finite and >= 0, required fields present,
 * unknown keys refused so that typos do not go unnoticed). BT_ERR_FORMAT / BT_ERR_RANGE with a
 * "source: what" message logged once; BT_ERR_IO when the file cannot be read. */
int bt_profile_load(const char *path, bt_profile_t *out);
int bt_profile_parse(const char *text, size_t len, const char *source, bt_profile_t *out);

/* Writes p as a JSON profile that bt_profile_parse reads back to the same values (numbers with
 * 17 significant digits; the fit object only for models with n_points > 0; decode_knee only when
 * set). bt_profile_write goes through path.tmp and a rename, so a reader never sees half a file.
 * BT_ERR_IO (logged) when the file cannot be written. Any thread. */
int bt_profile_fprint(const bt_profile_t *p, FILE *f);
int bt_profile_write(const bt_profile_t *p, const char *path);

/* Prefill time of one batch in ms, given the sum of its prompt lengths and of their squares. */
double bt_profile_prefill_ms(const bt_profile_t *p, double sum_len, double sum_len2);
/* Decode step time in ms for batch sequences whose context lengths sum to sum_ctx. */
double bt_profile_decode_ms(const bt_profile_t *p, double sum_ctx, double batch);
/* Time in ms to move n_tokens of KV cache between instances. */
double bt_profile_transfer_ms(const bt_profile_t *p, double n_tokens);

#endif
