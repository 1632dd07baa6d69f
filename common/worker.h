/* SPDX-License-Identifier: MIT */
/*
 * worker.h - the skeleton every serving daemon (prefill, decode, colocated) runs on: one
 * event-loop thread that owns the ZeroMQ DEALER socket to the router, and one compute thread
 * that owns the engine and never touches a socket.
 *
 * The loop thread (redis serverCron style) registers with the router and sends a heartbeat
 * every heartbeat_ms, receives and validates messages, keeps the table of requests in flight,
 * refuses work while draining, and sends what the compute thread produces. The compute thread
 * runs the role's step function (one batch at a time) and reacts to commands. They share two
 * bounded queues: commands to the compute thread (it waits on it when idle) and outputs to the
 * loop thread (an eventfd wakes zmq_poll). Nothing else is shared but a stats snapshot under a
 * mutex.
 *
 * Every ASSIGN is answered with ASSIGN_REPLY: an error status if it is refused (malformed,
 * invalid, draining, too many requests), otherwise by the role (a decode daemon answers once it
 * has reserved KV; the others are answered at once). Every accepted request ends with exactly one
 * DONE from its role; the loop thread forgets it then. SIGTERM (or a DRAIN from the router)
 * starts draining: heartbeats say so, new ASSIGNs get BT_ERR_DRAINING, and bt_worker_run
 * returns once nothing is in flight (or the drain timeout aborted what was left). A second
 * SIGTERM/SIGINT stops at once.
 *
 * Threads: bt_worker_create/run/destroy from the main thread; functions marked "compute" from
 * the compute thread (inside the ops), "loop" from the loop thread (inside the loop ops).
 */
#ifndef BATON_WORKER_H
#define BATON_WORKER_H

#include <stddef.h>
#include <stdint.h>

#include "proto/baton.pb-c.h"
#include "request.h"
#include "steplog.h"

typedef struct bt_worker bt_worker_t;

/* Commands to the compute thread. */
typedef enum {
    BT_CMD_ASSIGN = 1, /* req: an accepted request, handed over to the compute thread */
    BT_CMD_ABORT,      /* request_id; status: BT_ERR_CANCELLED (router) or BT_ERR_TIMEOUT (drain) */
    BT_CMD_KV,         /* request_id: the role's transfer finished (status; token; detail) */
    BT_CMD_RESUME,     /* request_id: continue from the replica; ids (owned: bt_free) */
    BT_CMD_SET_ROLE,   /* status: the Baton__Role to serve (pair daemons); data: the partner's
                        * kvx address (len bytes, may be empty) */
    BT_CMD_ROLE,       /* role-defined (detail); data: its bytes */
} bt_cmd_kind_t;

typedef struct {
    bt_cmd_kind_t kind;
    uint64_t request_id;
    bt_req_t *req;
    int32_t status;
    int32_t token;    /* BT_CMD_KV on a decode daemon: the first token */
    uint64_t detail;  /* role-defined */
    uint64_t time_ns; /* when the loop saw what the command reports (CLOCK_REALTIME) */
    int32_t *ids;     /* BT_CMD_RESUME: owned by the command (bt_free) */
    int32_t n_ids;
    void *data; /* BT_CMD_SET_ROLE, BT_CMD_ROLE: owned by the command (bt_free) */
    size_t len;
} bt_cmd_t;

/* Outputs of the compute thread, sent by the loop thread. */
typedef enum {
    BT_OUT_ASSIGN_REPLY = 1,
    BT_OUT_FIRST_TOKEN,
    BT_OUT_STREAM,
    BT_OUT_DONE,
    BT_OUT_ROLE,    /* for the role's loop_output (e.g. a KV send to post) */
    BT_OUT_HANDOFF, /* pair: stopped decoding after n_output tokens; holds the replica now */
    BT_OUT_FORGET,  /* an ABORT found nothing of the request here (bt_worker_forget) */
} bt_out_kind_t;

#define BT_OUT_MAX_ERROR 160

/* One output: a single allocation with its arrays after it (bt_out_free releases it). */
typedef struct {
    bt_out_kind_t kind;
    uint64_t request_id;
    int32_t status;               /* header status (ASSIGN_REPLY, DONE) */
    char error[BT_OUT_MAX_ERROR]; /* detail when status != 0 */
    Baton__Role part;
    /* FIRST_TOKEN, STREAM */
    const int32_t *ids;
    int32_t n_ids;
    const char *text;
    size_t n_text;
    uint32_t index;
    uint64_t time_ns;
    /* ASSIGN_REPLY (decode part): the reservation; blocks point after this struct */
    bt_reservation_t resv;
    /* DONE, HANDOFF */
    Baton__FinishReason finish;
    uint32_t n_output;
    bt_event_t events[BT_REQ_MAX_EVENTS];
    int n_events;
    /* ROLE */
    void *role_data;
} bt_out_t;

/* Role callbacks. command and step are required; the loop ones may be NULL. */
typedef struct {
    /* compute: a command arrived. ASSIGN hands req over; the role must end it with DONE. */
    void (*command)(void *ctx, bt_worker_t *w, const bt_cmd_t *cmd);
    /* compute: one iteration (one batch); BT_OK when it did work, BT_AGAIN when idle. */
    int (*step)(void *ctx, bt_worker_t *w);
    /* loop: does pending work and returns a file descriptor to poll as well (e.g. the
     * transfer library's), or -1. Called before every wait. */
    int (*loop_fd)(void *ctx, bt_worker_t *w);
    /* loop: that fd is readable, or a housekeeping tick passed. */
    void (*loop_poll)(void *ctx, bt_worker_t *w);
    /* loop: a BT_OUT_ROLE output to act on; the role frees o (bt_out_free). */
    void (*loop_output)(void *ctx, bt_worker_t *w, bt_out_t *o);
    /* loop: adds role fields (kvx address) to a heartbeat about to be sent. */
    void (*heartbeat)(void *ctx, Baton__Heartbeat *hb);
} bt_worker_ops_t;

/* What heartbeats report, published by the compute thread after each step. */
typedef struct {
    uint32_t queue_len;
    uint32_t running;
    uint32_t kv_free_blocks;
    uint32_t kv_total_blocks;
    uint64_t queued_tokens;
    uint64_t unshipped_blocks;
    /* pair daemons */
    Baton__Role serving;
    uint32_t replicas, replica_blocks, decoding;
} bt_worker_stats_t;

typedef struct {
    const char *instance_id; /* ZeroMQ identity and heartbeat id; copied */
    const char *router;      /* endpoint to connect to, e.g. tcp://127.0.0.1:5556; copied */
    const char *model_id;    /* copied */
    bt_req_limits_t limits;  /* role, vocabulary, context, KV size; what ASSIGNs are checked
                              * against */
    int heartbeat_ms;        /* 0: 500 */
    int drain_timeout_ms;    /* after SIGTERM, abort what is left after this long; 0: never */
    int32_t max_requests;    /* most requests in flight; more are refused with
                              * BT_ERR_OVERLOADED; 0: 1024 */
    const bt_worker_ops_t *ops;
    void *ctx;             /* borrowed; passed to every op */
    bt_steplog_t *steplog; /* borrowed; written out whenever the compute thread goes idle */
} bt_worker_params_t;

/* Blocks SIGTERM, SIGINT and SIGPIPE in the calling thread and every thread it creates later.
 * Call first in main, before anything starts a thread: the loop thread takes these signals from
 * a signalfd. */
void bt_worker_block_signals(void);

int bt_worker_create(const bt_worker_params_t *p, bt_worker_t **out);
/* Runs the event loop on the calling thread and the compute thread beside it until drained or
 * stopped. BT_OK after a clean drain; BT_ERR_CANCELLED after a forced stop; BT_ERR_IO when the
 * socket cannot be set up. */
int bt_worker_run(bt_worker_t *w);
/* NULL-safe. Frees requests still queued to the compute thread; the role frees its own. */
void bt_worker_destroy(bt_worker_t *w);

/* compute: hands o over to the loop thread (waits while the output queue is full) and wakes it,
 * unless a hold is in effect. */
void bt_worker_emit(bt_worker_t *w, bt_out_t *o);
/* compute: from now until bt_worker_flush, outputs are queued without waking the loop thread;
 * flush wakes it once for all of them. For the burst of outputs after a forward (a token per
 * sequence): a wake-up per token costs every token two thread switches, which on a core shared
 * with the loop thread come out of the compute time. Never hold across a forward: what was
 * emitted before it (a layer-wise ship) must reach the loop while it runs. */
void bt_worker_hold(bt_worker_t *w);
void bt_worker_flush(bt_worker_t *w);
/* compute: an ABORT found nothing of request_id in the role (it ended, and its DONE, if any,
 * was emitted before). The loop forgets the id if it is still waiting for the abort to end, so
 * that an id the role lost track of cannot hold a slot, or a drain, forever. */
void bt_worker_forget(bt_worker_t *w, uint64_t request_id);
/* compute: publishes the numbers the next heartbeat reports. */
void bt_worker_publish(bt_worker_t *w, const bt_worker_stats_t *stats);
/* compute: whether the worker is stopping (the role abandons its work). */
int bt_worker_stopping(bt_worker_t *w);
/* loop: queues a command to the compute thread (BT_ERR_NOSPACE if the queue is full). */
int bt_worker_command(bt_worker_t *w, const bt_cmd_t *cmd);
/* loop: sends o to the router now, as if the compute thread had emitted it, and frees it (the
 * role's loop code answers without a round trip through the compute thread). */
void bt_worker_send(bt_worker_t *w, bt_out_t *o);
/* loop: the coming wait lasts at most ms (from loop_fd: work is left that its fd will not
 * announce). */
void bt_worker_wait_at_most(bt_worker_t *w, int ms);
/* The instance id (any thread). */
const char *bt_worker_id(const bt_worker_t *w);

/* Outputs. extra_bytes of storage follow the struct (8-byte aligned) for the caller's arrays.
 * NULL when out of memory. */
bt_out_t *bt_out_new(bt_out_kind_t kind, uint64_t request_id, size_t extra_bytes);
void bt_out_free(bt_out_t *o);
/* A token chunk (FIRST_TOKEN or STREAM) with ids and text copied. */
bt_out_t *bt_out_chunk(bt_out_kind_t kind, uint64_t request_id, const int32_t *ids, int32_t n_ids,
                       const char *text, size_t n_text, uint32_t index);
/* DONE for req: its events are copied. status != 0 comes with a formatted error. */
bt_out_t *bt_out_done(const bt_req_t *req, Baton__FinishReason finish, uint32_t n_output,
                      int32_t status, const char *fmt, ...) __attribute__((format(printf, 5, 6)));
/* Joins STREAM outputs of one request that continue each other (index follows index) into the
 * first of them, keeping the order of everything else: tokens that are all ready are sent in
 * one chunk, and none waits for another. Joined ones are freed and their slots set to NULL;
 * an output that cannot be allocated leaves its pair as it was. */
void bt_out_coalesce(bt_out_t **outs, size_t n);
/* ASSIGN_REPLY: resv (may be NULL) is copied. */
bt_out_t *bt_out_assign_reply(uint64_t request_id, Baton__Role part, int32_t status,
                              const char *error, const bt_reservation_t *resv);

#endif
