/* SPDX-License-Identifier: MIT */
/*
 * servetest.h - helpers for the serving tests: child processes that cannot outlive the test,
 * free loopback ports, a fake router (a ZeroMQ ROUTER socket the daemons register with, which
 * records everything they send per request), and a reference generation on the engine.
 *
 * Every wait takes a deadline and polls; nothing sleeps and hopes.
 */
#ifndef BATON_SERVETEST_H
#define BATON_SERVETEST_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "common/rpc.h"

/* ---- processes ---------------------------------------------------------------------------- */

typedef struct {
    pid_t pid;     /* 0 when not running */
    int status;    /* waitpid status once reaped */
    char log[512]; /* where its stdout and stderr go */
} bt_proc_t;

/* Starts argv[0] (a path) with stdout/stderr to a scratch log; the child gets SIGKILL if the
 * test process dies. 0 on success. */
int bt_proc_start(bt_proc_t *p, char *const argv[]);
/* Waits up to timeout_ms for the process to exit; 1 if it has (p->status set), else 0. */
int bt_proc_wait(bt_proc_t *p, int timeout_ms);
/* SIGKILL and reap (no-op when not running). */
void bt_proc_kill(bt_proc_t *p);
/* Exit code once exited normally, else -1. */
int bt_proc_exit_code(const bt_proc_t *p);
/* Prints the tail of the process log to stderr (for failing tests). */
void bt_proc_dump_log(const bt_proc_t *p);

/* A TCP port on 127.0.0.1 free right now. */
int bt_test_free_port(void);
/* Milliseconds on a monotonic clock. */
uint64_t bt_test_now_ms(void);
/* Writes a synthetic model of preset ("tiny" in F32, others in Q8_0) to a scratch path in buf.
 * 0 on success. */
int bt_test_make_model(const char *preset, char *buf, size_t cap);

/* ---- fake router --------------------------------------------------------------------------- */

#define FAKE_MAX_TOKENS 4096
#define FAKE_MAX_REQS 512
#define FAKE_MAX_INSTANCES 16

typedef struct {
    uint64_t id;
    int replied; /* ASSIGN_REPLY seen (count) */
    int32_t reply_status;
    int32_t resv_blocks[1024]; /* the reservation of a decode reply */
    int n_resv_blocks;
    uint64_t resv_id;
    uint32_t resv_gen;
    int first_seen;                /* FIRST_TOKEN chunks seen */
    int32_t ids[FAKE_MAX_TOKENS];  /* tokens by output index */
    uint8_t seen[FAKE_MAX_TOKENS]; /* 1: that index has arrived */
    int n_ids;                     /* highest index + 1 */
    int n_chunks;
    int dup_index; /* a chunk repeated an index already seen (chunks from the prefill and the
                    * decode instance may arrive in either order: the router reorders them) */
    char text[8192];
    size_t n_text;
    int done; /* DONE messages seen */
    int32_t done_status;
    int finish; /* Baton__FinishReason */
    uint32_t n_output;
    int n_events;
    int32_t event_kinds[16];
    int pre_done; /* DONE{PREFILL} seen; its status, finish and events */
    int32_t pre_status;
    int pre_finish;
    int pre_n_events;
    int32_t pre_event_kinds[16];
    int errors; /* error replies that were not ASSIGN_REPLY/DONE */
} fake_req_t;

typedef struct {
    char id[256];
    int n_heartbeats;
    Baton__Heartbeat *last; /* unpacked, owned */
} fake_inst_t;

typedef struct {
    void *zctx, *sock;
    char endpoint[64]; /* tcp://127.0.0.1:PORT the daemons connect to */
    fake_req_t *reqs;  /* (FAKE_MAX_REQS) */
    int n_reqs;
    fake_inst_t inst[FAKE_MAX_INSTANCES];
    int n_inst;
    int n_bad;      /* error replies without a request id we know */
    int ignore_eos; /* set in the sampling of the next assignments */
    /* If set, the next assignments' sampling (temperature, top-k, ...; ignore_eos as above). */
    const Baton__SamplingParams *sampling;
} fake_router_t;

int fake_router_open(fake_router_t *r);
void fake_router_close(fake_router_t *r);
/* Receives and records messages for up to timeout_ms (returns after the first batch). */
void fake_router_poll(fake_router_t *r, int timeout_ms);
/* The instance record, NULL if never heard from. */
fake_inst_t *fake_router_inst(fake_router_t *r, const char *id);
/* Waits until instance id has sent n heartbeats more than now; 1 on success. */
int fake_router_wait_heartbeats(fake_router_t *r, const char *id, int n, int timeout_ms);
/* The record of request id (created empty on first use). */
fake_req_t *fake_router_req(fake_router_t *r, uint64_t id);
/* Sends raw frames to instance id: [id][frames...]. 0 on success. */
int fake_router_send_raw(fake_router_t *r, const char *id, const void *const *frames,
                         const size_t *lens, int n);
/* Sends method with body to instance id. */
int fake_router_send(fake_router_t *r, const char *id, Baton__Method method, uint64_t rid,
                     const ProtobufCMessage *body);
/* Assigns a colocated/decode/prefill part with greedy sampling (or r->sampling). */
int fake_router_assign(fake_router_t *r, const char *id, uint64_t rid, Baton__Role part,
                       const int32_t *prompt, int n_prompt, int max_tokens, uint32_t skip);
/* Waits until pred(r, arg) holds; 1 on success, 0 at the deadline. */
int fake_router_wait(fake_router_t *r, int (*pred)(fake_router_t *, void *), void *arg,
                     int timeout_ms);
/* Waits for DONE of request rid. */
int fake_router_wait_done(fake_router_t *r, uint64_t rid, int timeout_ms);
/* Waits for the ASSIGN_REPLY to request rid. */
int fake_router_wait_replied(fake_router_t *r, uint64_t rid, int timeout_ms);

/* ---- a real cluster: baton-router and daemons -------------------------------------------- */

#define CLUSTER_MAX_DAEMONS 8

typedef struct {
    const char *model; /* borrowed */
    int port, cluster_port;
    char client_ep[64]; /* tcp://127.0.0.1:port, for the client library */
    bt_proc_t router;
    bt_proc_t daemons[CLUSTER_MAX_DAEMONS];
    char ids[CLUSTER_MAX_DAEMONS][32];
    int n_daemons;
} bt_cluster_t;

/* Starts baton-router (dead-after 1 s) and n_p prefill, n_d decode and n_k colocated daemons
 * with extra daemon flags (NULL-terminated, may be NULL), then waits until the router reports
 * all of them healthy. 0 on success (on failure the logs are printed and everything stopped). */
int bt_cluster_start(bt_cluster_t *c, const char *model, int n_p, int n_d, int n_k,
                     const char *const *extra);
/* Starts baton-router and n_pairs AcceLLM pairs (baton-pair daemons pair-0 + pair-1, ...; the
 * first of each serves prefill at start) with extra flags, and waits until they are healthy. */
int bt_cluster_start_pairs(bt_cluster_t *c, const char *model, int n_pairs,
                           const char *const *extra);
/* Starts one more daemon of kind ("prefill", "decode", "colocated"); returns its index. */
int bt_cluster_add(bt_cluster_t *c, const char *kind, const char *const *extra);
/* Waits until HEALTH counts n alive instances (and says ok); 1 on success. */
int bt_cluster_wait_instances(bt_cluster_t *c, int n, int timeout_ms);
/* One HEALTH or INFO request to the router, its reply unpacked with descriptor reply; free
 * *out with protobuf_c_message_free_unpacked. 0 on success. */
int bt_cluster_call(const bt_cluster_t *c, Baton__Method method,
                    const ProtobufCMessageDescriptor *reply, ProtobufCMessage **out);
/* SIGKILL to the router, and a new one on the same ports (the daemons and clients reconnect
 * by themselves); 0 once it answers. */
int bt_cluster_restart_router(bt_cluster_t *c);
/* SIGTERM to the router then the daemons; waits; SIGKILL what is left. Returns 0 when every
 * process exited 0 in time. */
int bt_cluster_stop(bt_cluster_t *c);
/* Prints every log of the cluster. */
void bt_cluster_dump_logs(const bt_cluster_t *c);

/* ---- reference ---------------------------------------------------------------------------- */

/* Greedy generation on the engine alone (one sequence at a time), stopping at
 * end-of-generation like the daemons do: the reference the cluster must match. */
typedef struct bt_test_ref bt_test_ref_t;
bt_test_ref_t *bt_test_ref_open(const char *model_path);
/* The same with a KV cache of kv_type (BT_TYPE_F32, _F16, _BF16), to match daemons run with
 * that --kv-type. */
bt_test_ref_t *bt_test_ref_open_kv(const char *model_path, int kv_type);
void bt_test_ref_close(bt_test_ref_t *ref);
/* The text a daemon streams for ids generated after a prompt ending in last_prompt_id: the
 * streaming detokenizer over the reference's tokenizer. Writes a NUL-terminated string. */
void bt_test_ref_text(bt_test_ref_t *ref, int32_t last_prompt_id, const int32_t *ids, int n,
                      char *out, size_t cap);
/* Writes up to max_tokens generated ids to out (going past end-of-generation tokens when
 * ignore_eos); returns how many. */
int bt_test_ref_run(bt_test_ref_t *ref, const int32_t *prompt, int n_prompt, int max_tokens,
                    int ignore_eos, int32_t *out);
/* The same with sampling params sp (NULL: greedy), drawn from each step's whole row of logits
 * with the sequence's own sampler, as a daemon without candidate selection would. */
int bt_test_ref_run_sampled(bt_test_ref_t *ref, const int32_t *prompt, int n_prompt, int max_tokens,
                            const Baton__SamplingParams *sp, int ignore_eos, int32_t *out);
/* A deterministic prompt of n tokens (ids in [3, n_vocab)), varied by seed. */
void bt_test_prompt(uint32_t seed, int n, int32_t n_vocab, int32_t *out);

#endif
