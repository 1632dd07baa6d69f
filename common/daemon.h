/* SPDX-License-Identifier: MIT */
/*
 * daemon.h - what the three serving daemons (baton-prefill, baton-decode, baton-colocated) share
 * in their main: the common options, loading the model, creating the engine, and the worker
 * parameters that follow from them.
 *
 * Each daemon's option table starts with BT_DAEMON_OPTS (fields of a bt_daemon_cfg_t embedded in
 * its own config struct) and adds its own options, so flags, BATON_* environment variables, the
 * --config file and --help work the same on all three.
 *
 * Threads: the main thread, before the worker runs.
 */
#ifndef BATON_DAEMON_H
#define BATON_DAEMON_H

#include <stddef.h>

#include "config.h"
#include "engine.h"
#include "modelid.h"
#include "steplog.h"
#include "worker.h"

typedef struct {
    char *router;    /* router cluster endpoint */
    char *id;        /* instance id; NULL: <role>-<host>-<pid> */
    char *model;     /* .gguf, or llama2.c .bin */
    char *tokenizer; /* llama2.c tokenizer.bin */
    char *backend;   /* compute backend name */
    char *log_level;
    char *kv_type;        /* KV element type: f32, f16, bf16 */
    int threads;          /* engine compute threads; 0: all cores */
    int max_batch_tokens; /* rows of one forward (DistServe's L_m) */
    int max_batch_seqs;   /* sequences of one forward */
    size_t kv_mem;        /* bytes of the KV pool */
    int block_size;       /* KV tokens per block */
    int ctx;              /* context length; 0: the model's, at most 4096 */
    int heartbeat_ms;
    int max_requests;     /* requests in flight at most */
    int drain_timeout_ms; /* abort what is left this long after SIGTERM; 0: never */
    char *step_log;       /* record every forward here (steplog.h); NULL: no */
} bt_daemon_cfg_t;

#define BT_DAEMON_OPT(T, n, t, d, lo, hi, f, h)                                                    \
    {                                                                                              \
        n, 0, t, d, lo, hi, offsetof(T, daemon.f), h                                               \
    }

/* The common options of a daemon whose config struct T has a bt_daemon_cfg_t member `daemon`. */
#define BT_DAEMON_OPTS(T)                                                                          \
    BT_DAEMON_OPT(T, "router", BT_CFG_STRING, "tcp://127.0.0.1:5556", 0, 0, router,                \
                  "router's cluster endpoint"),                                                    \
        BT_DAEMON_OPT(T, "id", BT_CFG_STRING, NULL, 0, 0, id,                                      \
                      "instance id (default role-host-pid)"),                                      \
        BT_DAEMON_OPT(T, "model", BT_CFG_STRING, NULL, 0, 0, model,                                \
                      "model file (.gguf or llama2.c .bin)"),                                      \
        BT_DAEMON_OPT(T, "tokenizer", BT_CFG_STRING, NULL, 0, 0, tokenizer,                        \
                      "llama2.c tokenizer (.bin models)"),                                         \
        BT_DAEMON_OPT(T, "backend", BT_CFG_STRING, "cpu", 0, 0, backend, "compute backend"),       \
        BT_DAEMON_OPT(T, "threads", BT_CFG_INT, "0", 0, 1024, threads,                             \
                      "compute threads; 0: all cores"),                                            \
        BT_DAEMON_OPT(T, "max-batch-tokens", BT_CFG_INT, "512", 1, 1 << 20, max_batch_tokens,      \
                      "most new tokens in one forward (token budget L_m)"),                        \
        BT_DAEMON_OPT(T, "max-batch-seqs", BT_CFG_INT, "64", 1, 4096, max_batch_seqs,              \
                      "most sequences in one forward"),                                            \
        BT_DAEMON_OPT(T, "kv-mem", BT_CFG_SIZE, "256M", 1024, 1.0e15, kv_mem,                      \
                      "bytes of KV cache (K, M, G suffixes)"),                                     \
        BT_DAEMON_OPT(T, "kv-type", BT_CFG_STRING, "f32", 0, 0, kv_type,                           \
                      "KV cache element type: f32, f16 or bf16 (half the memory per token)"),      \
        BT_DAEMON_OPT(T, "block-size", BT_CFG_INT, "16", 1, 4096, block_size,                      \
                      "KV tokens per block"),                                                      \
        BT_DAEMON_OPT(T, "ctx", BT_CFG_INT, "0", 0, 1 << 20, ctx,                                  \
                      "context length (prompt + output); 0: the model's, at most 4096"),           \
        BT_DAEMON_OPT(T, "heartbeat-ms", BT_CFG_INT, "500", 10, 60000, heartbeat_ms,               \
                      "heartbeat period"),                                                         \
        BT_DAEMON_OPT(T, "max-requests", BT_CFG_INT, "1024", 1, 1 << 20, max_requests,             \
                      "requests in flight at most; more are refused as overloaded"),               \
        BT_DAEMON_OPT(T, "drain-timeout-ms", BT_CFG_INT, "0", 0, 1 << 30, drain_timeout_ms,        \
                      "after SIGTERM, abort requests still running after this long; 0: never"),    \
        BT_DAEMON_OPT(T, "step-log", BT_CFG_STRING, NULL, 0, 0, step_log,                          \
                      "write every forward's shape and time here (CSV; baton-profile --refit)"),   \
        BT_DAEMON_OPT(T, "log-level", BT_CFG_STRING, "info", 0, 0, log_level,                      \
                      "debug, info, warn, error or off")

/* The help of --growth-reserve (the decode and colocated daemons). */
#define BT_GROWTH_RESERVE_HELP                                                                     \
    "admit a sequence only while the free KV also covers this fraction of the remaining growth "   \
    "(to max tokens) of it and of every running one; 0: none (growth that overruns the pool "      \
    "preempts a sequence, to be recomputed)"

/* What a daemon builds from its config before the worker runs. */
typedef struct {
    bt_model_t *model;
    bt_engine_t *engine;
    bt_steplog_t *steplog; /* --step-log; NULL without */
    int32_t n_ctx;         /* the context length in use */
    char model_id[BT_MODEL_ID_MAX];
    char instance_id[256];
} bt_daemon_t;

/*
 * Checks the common options, loads the model and creates the engine (its KV pool sized by
 * kv_mem). role names the default instance id. BT_OK, or the status with the reason logged.
 */
int bt_daemon_setup(const bt_daemon_cfg_t *c, Baton__Role role, bt_daemon_t *d);
/* NULL-safe pieces; idempotent. */
void bt_daemon_teardown(bt_daemon_t *d);
/* Worker parameters from the config and what setup built. */
void bt_daemon_worker_params(const bt_daemon_cfg_t *c, const bt_daemon_t *d, Baton__Role role,
                             const bt_worker_ops_t *ops, void *ctx, bt_worker_params_t *out);
/* Parses argv with table t into cfg (zeroed; a bt_daemon_cfg_t at daemon_offset), sets the log
 * level. Returns -1 to go on, else the exit status (0 after --help, 2 for a usage error). */
int bt_daemon_parse(const bt_cfg_table_t *t, void *cfg, size_t daemon_offset, int argc,
                    char **argv);

#endif
