/* SPDX-License-Identifier: MIT */
/*
 * routertest.h - helpers for the router and client tests: a real baton-router process on
 * private ipc endpoints, fake daemons that speak the real protocol over real ZeroMQ sockets,
 * and raw client sockets.
 *
 * The fake daemons are the router's collaborators, not the thing under test: the test drives
 * each of them by hand (what to answer, when to go silent). Every wait goes through rt_recv,
 * which keeps the fake daemons' heartbeats going while it waits, so a test never has to think
 * about liveness unless it silences a daemon on purpose. Every wait has a deadline.
 */
#ifndef BATON_ROUTERTEST_H
#define BATON_ROUTERTEST_H

#include <stddef.h>
#include <stdint.h>

#include "common/rpc.h"
#include "servetest.h"

#define RT_MAX_DAEMONS 8
#define RT_MODEL_ID "test-model:2x64x4x2x512"
#define RT_HEARTBEAT_MS 50

typedef struct {
    void *sock;
    char id[64];
    Baton__Role role;
    int silent; /* 1: sends no more heartbeats (it "died") */
    uint32_t version;
    uint64_t incarnation;
    uint32_t queue_len, running, kv_free_blocks, kv_total_blocks;
    uint64_t queued_tokens;
    int draining;
    char partner[64];     /* PAIR: the partner's id */
    Baton__Role serving;  /* PAIR: PREFILL or DECODE */
    int resets;           /* RESETs received (rt_recv counts them and reads on) */
    const uint64_t *held; /* request ids its heartbeats say it holds (n_held of them) */
    size_t n_held;
} rt_daemon_t;

typedef struct {
    bt_proc_t proc;
    char dir[64];
    char client_ep[128], cluster_ep[128];
    void *zctx;
    rt_daemon_t d[RT_MAX_DAEMONS];
    int n_d;
    void *clients[RT_MAX_DAEMONS]; /* closed by rt_stop */
    int n_clients;
    struct rt_auto *autos[RT_MAX_DAEMONS]; /* stopped by rt_stop */
    int n_autos;
    uint64_t next_hb_ms;
} rt_cluster_t;

/* Starts baton-router with private endpoints, --model-id RT_MODEL_ID, --log-level warn and
 * the extra flags (NULL-terminated, may be NULL), and waits until it answers HEALTH. 0 on
 * success. */
int rt_start(rt_cluster_t *c, const char *const *extra);
/* Closes the fake sockets, stops the router (SIGTERM, then SIGKILL if it is still draining
 * after 500 ms), removes the endpoints. -1 when the router exited with a failure status (a
 * sanitizer report, for one), else 0. */
int rt_stop(rt_cluster_t *c);
/* Sends sig to the router and waits for it to exit; its exit code, or -1 on timeout. */
int rt_signal_wait(rt_cluster_t *c, int sig, int timeout_ms);

/* A fake daemon that registers with one heartbeat at once. */
rt_daemon_t *rt_daemon_add(rt_cluster_t *c, const char *id, Baton__Role role);
/* A fake AcceLLM pair member (role PAIR) with its partner's id, serving PREFILL or DECODE. */
rt_daemon_t *rt_pair_add(rt_cluster_t *c, const char *id, const char *partner, Baton__Role serving);
/* Closes d's socket, as a process that died would (its connection ends; no more heartbeats). */
void rt_daemon_close(rt_daemon_t *d);
/* Waits until the router counts n alive instances (INFO); 0, or -1 at the deadline. Heartbeats
 * of different daemons reach the router in no particular order: tests that depend on which
 * instances it knows wait here. */
int rt_wait_instances(rt_cluster_t *c, int n, int timeout_ms);
/* Sends d's heartbeat now. */
void rt_heartbeat(rt_cluster_t *c, rt_daemon_t *d);
/* Sends the heartbeats that are due (every RT_HEARTBEAT_MS, silent daemons excepted). */
void rt_pump(rt_cluster_t *c);
/* Waits up to ms doing only heartbeats. */
void rt_sleep(rt_cluster_t *c, int ms);

/* A raw client socket (DEALER) on the router's client endpoint, closed by rt_stop. */
void *rt_client(rt_cluster_t *c);

/* Receives one message on sock (a fake daemon's or a client's), heartbeating meanwhile.
 * 0 on success (release m with bt_rpc_msg_fini), -1 at the deadline. A RESET to a fake daemon
 * (the router sends one on every registration) is counted in its resets, not returned. */
int rt_recv(rt_cluster_t *c, void *sock, bt_rpc_msg_t *m, int timeout_ms);
/* Receives until a message with this method arrives (others are dropped, counted in
 * *skipped when not NULL); 0 or -1. */
int rt_expect(rt_cluster_t *c, void *sock, Baton__Method method, bt_rpc_msg_t *m, int timeout_ms,
              int *skipped);
/* Unpacks a body (asserts it parses); free with protobuf_c_message_free_unpacked. */
void *rt_body(const bt_rpc_msg_t *m);
/* Unpacks a body as d (replies to HEALTH and INFO have their own types); NULL if it does not
 * parse. */
void *rt_body_as(const bt_rpc_msg_t *m, const ProtobufCMessageDescriptor *d);

/* Sends [header][body] on a DEALER socket. */
int rt_send(void *sock, Baton__Method method, uint64_t id, int status,
            const ProtobufCMessage *body);
/* GENERATE with token ids, greedy sampling. */
int rt_generate(void *client, uint64_t id, const int32_t *prompt, size_t n, uint32_t max_tokens);
/* ASSIGN_REPLY for part; a decode (or pair) reply carries a reservation of one block. */
int rt_assign_reply(rt_daemon_t *d, uint64_t id, Baton__Role part, int status);
/* FIRST_TOKEN or STREAM chunk. */
int rt_chunk(rt_daemon_t *d, Baton__Method method, uint64_t id, uint32_t index, const int32_t *ids,
             size_t n);
/* DONE with events of the given kinds (times now + i microseconds). */
int rt_done(rt_daemon_t *d, uint64_t id, Baton__Role part, Baton__FinishReason reason,
            uint32_t n_out, const int *event_kinds, size_t n_events);

/* ---- an automatic colocated daemon on its own thread (for client-library tests) ------- */

typedef struct {
    int step_ms; /* time between tokens */
    int hold;    /* 1: after the first token, stream nothing more until aborted */
} rt_auto_params_t;

typedef struct rt_auto rt_auto_t;

/* Starts a colocated daemon that heartbeats by itself, accepts every ASSIGN and generates
 * token prompt[0] * 100 + i at output position i until max_tokens (DONE LENGTH, with
 * events), or DONE CANCELLED on ABORT. It uses its own socket on its own thread. */
rt_auto_t *rt_auto_start(rt_cluster_t *c, const char *id, const rt_auto_params_t *params);
/* Stops the thread and closes its socket (rt_stop does it for those still running). */
void rt_auto_stop(rt_cluster_t *c, rt_auto_t *a);

#endif
