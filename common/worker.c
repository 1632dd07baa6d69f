/* SPDX-License-Identifier: MIT */
/*
 * worker.c - the daemon skeleton: event loop, compute thread, heartbeats, drain (see worker.h).
 *
 * The loop thread never waits on the compute thread: commands go into a queue sized so that it
 * cannot overflow (at most one ASSIGN, one ABORT and one transfer notice per request in flight,
 * and requests in flight are capped), and outputs come back through a queue the loop drains
 * whenever the eventfd fires. Only the compute thread may block, on a full output queue, which
 * is back-pressure from a loop that is behind.
 */
#include "worker.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "alloc.h"
#include "btassert.h"
#include "log.h"
#include "queue.h"
#include "reqtable.h"
#include "rpc.h"
#include "status.h"

#define WORKER_SOFTWARE_VERSION 100 /* 0.1.0, for version-aware pairing */
#define WORKER_TICK_MS 100          /* housekeeping period */
#define WORKER_LINGER_MS 2000       /* how long the last messages may take to leave at exit */

/* Values of the in-flight table: accepted, and accepted with an ABORT already passed on. */
#define INFLIGHT ((void *)1)
#define INFLIGHT_ABORTED ((void *)2)

struct bt_worker {
    bt_worker_params_t p;
    char *id, *router, *model_id; /* owned copies */
    void *zctx, *sock;            /* loop thread only */
    int efd;                      /* eventfd: compute -> loop wake-ups */
    int sfd;                      /* signalfd: SIGTERM, SIGINT */
    bt_queue_t *inbox;            /* bt_cmd_t, to the compute thread */
    bt_queue_t *outbox;           /* bt_out_t *, to the loop thread */
    pthread_t compute;
    int compute_started;
    atomic_int stop;
    pthread_mutex_t stats_mu;
    bt_worker_stats_t stats; /* under stats_mu */
    bt_reqtable_t inflight;  /* loop thread: accepted request ids (INFLIGHT, INFLIGHT_ABORTED) */
    uint64_t *held;          /* loop thread: max_requests ids, the heartbeat's held list */
    int draining;
    int forced; /* a second signal: stop now */
    uint64_t drain_start_ms;
    uint64_t drain_note_ms; /* next log line about what the drain waits for */
    int drain_aborted;
    uint64_t next_hb_ms;
    uint64_t incarnation;    /* start time (ns): tells the router about a restart */
    int holding;             /* compute thread: bt_worker_hold in effect */
    int wake_pending;        /* compute thread: outputs queued since the loop was last woken */
    uint64_t stuck_since_ms; /* sends have failed since then (no connection); 0: fine */
    int wait_cap_ms;         /* loop thread: the coming wait's limit (bt_worker_wait_at_most) */
};

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

void bt_worker_block_signals(void)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
}

const char *bt_worker_id(const bt_worker_t *w)
{
    return w->id;
}

/* ---- compute thread ---------------------------------------------------------------------- */

static void wake_loop(bt_worker_t *w)
{
    uint64_t one = 1;
    w->wake_pending = 0;
    if (write(w->efd, &one, sizeof one) < 0 && errno != EAGAIN)
        bt_warn("worker: eventfd write failed: %s", strerror(errno));
}

void bt_worker_emit(bt_worker_t *w, bt_out_t *o)
{
    if (!o) {
        bt_error("worker: out of memory building an output; it is lost");
        return;
    }
    if (bt_queue_push(w->outbox, &o, 0) != BT_OK) {
        wake_loop(w);                                    /* full: the loop has to drain it first */
        if (bt_queue_push(w->outbox, &o, -1) != BT_OK) { /* closed: stopping */
            bt_out_free(o);
            return;
        }
    }
    if (w->holding)
        w->wake_pending = 1;
    else
        wake_loop(w);
}

void bt_worker_hold(bt_worker_t *w)
{
    w->holding = 1;
}

void bt_worker_flush(bt_worker_t *w)
{
    w->holding = 0;
    if (w->wake_pending)
        wake_loop(w);
}

void bt_worker_forget(bt_worker_t *w, uint64_t request_id)
{
    bt_out_t *o = bt_out_new(BT_OUT_FORGET, request_id, 0);
    if (o)
        bt_worker_emit(w, o);
}

void bt_worker_publish(bt_worker_t *w, const bt_worker_stats_t *stats)
{
    pthread_mutex_lock(&w->stats_mu);
    w->stats = *stats;
    pthread_mutex_unlock(&w->stats_mu);
}

int bt_worker_stopping(bt_worker_t *w)
{
    return atomic_load(&w->stop);
}

static void *compute_main(void *arg)
{
    bt_worker_t *w = arg;
    bt_cmd_t c;
    while (!atomic_load(&w->stop)) {
        while (bt_queue_pop(w->inbox, &c, 0) == BT_OK)
            w->p.ops->command(w->p.ctx, w, &c);
        if (atomic_load(&w->stop))
            break;
        int idle = w->p.ops->step(w->p.ctx, w) == BT_AGAIN;
        if (idle)
            bt_steplog_flush(w->p.steplog); /* the steps so far reach the file while idle */
        if (idle && bt_queue_pop(w->inbox, &c, WORKER_TICK_MS) == BT_OK)
            w->p.ops->command(w->p.ctx, w, &c);
        bt_worker_flush(w); /* a role that held and forgot */
    }
    return NULL;
}

/* ---- loop thread: sending ---------------------------------------------------------------- */

int bt_worker_command(bt_worker_t *w, const bt_cmd_t *cmd)
{
    return bt_queue_push(w->inbox, cmd, 0);
}

static void send_msg(bt_worker_t *w, Baton__Method method, uint64_t rid, int32_t status,
                     const char *error, const ProtobufCMessage *body)
{
    bt_rpc_header_t h;
    bt_rpc_header_init(&h, method, rid);
    h.status = status;
    if (error)
        snprintf(h.error, sizeof h.error, "%s", error);
    int st = bt_rpc_send(w->sock, NULL, &h, body, ZMQ_DONTWAIT);
    if (st == BT_OK) {
        w->stuck_since_ms = 0;
        return;
    }
    if (st == BT_AGAIN && !w->stuck_since_ms)
        w->stuck_since_ms = now_ms();
    if (method != BATON__METHOD__HEARTBEAT) /* heartbeats are retried anyway */
        bt_warn("req %llu: cannot send method %d to the router: %s", (unsigned long long)rid,
                (int)method, bt_status_str(st));
}

static void send_heartbeat(bt_worker_t *w)
{
    bt_worker_stats_t s;
    pthread_mutex_lock(&w->stats_mu);
    s = w->stats;
    pthread_mutex_unlock(&w->stats_mu);
    Baton__Heartbeat hb = BATON__HEARTBEAT__INIT;
    hb.instance_id = w->id;
    hb.role = w->p.limits.role;
    hb.model_id = w->model_id;
    hb.version = WORKER_SOFTWARE_VERSION;
    hb.queue_len = s.queue_len;
    hb.running = s.running;
    hb.kv_free_blocks = s.kv_free_blocks;
    hb.kv_total_blocks = s.kv_total_blocks;
    hb.kv_block_size = (uint32_t)w->p.limits.block_size;
    hb.queued_tokens = s.queued_tokens;
    hb.unshipped_blocks = s.unshipped_blocks;
    hb.draining = w->draining;
    hb.time_ns = bt_rpc_now_ns();
    hb.incarnation = w->incarnation;
    hb.serving = s.serving;
    hb.replicas = s.replicas;
    hb.replica_blocks = s.replica_blocks;
    hb.decoding = s.decoding;
    /* what it holds and has not been told to abort: the router ABORTs what it does not know */
    size_t pos = 0, n = 0;
    uint64_t rid;
    void *v;
    while (n < (size_t)w->p.max_requests && (v = bt_reqtable_next(&w->inflight, &pos, &rid)))
        if (v != INFLIGHT_ABORTED)
            w->held[n++] = rid;
    hb.held = w->held;
    hb.n_held = n;
    if (w->p.ops->heartbeat)
        w->p.ops->heartbeat(w->p.ctx, &hb);
    send_msg(w, BATON__METHOD__HEARTBEAT, 0, 0, NULL, &hb.base);
    w->next_hb_ms = now_ms() + (uint64_t)w->p.heartbeat_ms;
}

static void send_assign_reply(bt_worker_t *w, const bt_out_t *o)
{
    Baton__AssignReply r = BATON__ASSIGN_REPLY__INIT;
    Baton__KvReservation kr = BATON__KV_RESERVATION__INIT;
    r.part = o->part;
    if (o->status == BT_OK && o->resv.n_blocks > 0) {
        kr.reservation_id = o->resv.id;
        kr.generation = o->resv.generation;
        kr.block_ids = o->resv.blocks;
        kr.n_block_ids = (size_t)o->resv.n_blocks;
        kr.n_tokens = (uint32_t)o->resv.n_tokens;
        r.reservation = &kr;
    }
    send_msg(w, BATON__METHOD__ASSIGN_REPLY, o->request_id, o->status, o->error, &r.base);
    if (o->status != BT_OK) /* refused: it was never in flight */
        bt_reqtable_del(&w->inflight, o->request_id);
}

static void send_chunk(bt_worker_t *w, const bt_out_t *o)
{
    Baton__TokenChunk c = BATON__TOKEN_CHUNK__INIT;
    c.ids = (int32_t *)o->ids;
    c.n_ids = (size_t)o->n_ids;
    c.text = (ProtobufCBinaryData){o->text ? o->n_text : 0, (uint8_t *)o->text};
    c.index = o->index;
    c.time_ns = o->time_ns;
    Baton__Method m =
        o->kind == BT_OUT_FIRST_TOKEN ? BATON__METHOD__FIRST_TOKEN : BATON__METHOD__STREAM;
    send_msg(w, m, o->request_id, 0, NULL, &c.base);
}

static void send_done(bt_worker_t *w, const bt_out_t *o)
{
    Baton__LifetimeEvent ev[BT_REQ_MAX_EVENTS], *evp[BT_REQ_MAX_EVENTS];
    for (int i = 0; i < o->n_events; i++) {
        baton__lifetime_event__init(&ev[i]);
        ev[i].kind = (Baton__EventKind)o->events[i].kind;
        ev[i].time_ns = o->events[i].time_ns;
        ev[i].instance = w->id;
        ev[i].code = o->events[i].code;
        evp[i] = &ev[i];
    }
    Baton__Done d = BATON__DONE__INIT;
    d.part = o->part;
    d.finish_reason = o->finish;
    d.n_output_tokens = o->n_output;
    d.events = evp;
    d.n_events = (size_t)o->n_events;
    send_msg(w, BATON__METHOD__DONE, o->request_id, o->status, o->error, &d.base);
    if (!bt_reqtable_del(&w->inflight, o->request_id))
        bt_warn("req %llu: DONE for a request not in flight", (unsigned long long)o->request_id);
}

void bt_worker_send(bt_worker_t *w, bt_out_t *o)
{
    if (!o)
        return;
    switch (o->kind) {
    case BT_OUT_ASSIGN_REPLY: send_assign_reply(w, o); break;
    case BT_OUT_FIRST_TOKEN:
    case BT_OUT_STREAM: send_chunk(w, o); break;
    case BT_OUT_DONE: send_done(w, o); break;
    case BT_OUT_HANDOFF: {
        Baton__Handoff h = BATON__HANDOFF__INIT;
        h.n_output_tokens = o->n_output;
        send_msg(w, BATON__METHOD__HANDOFF, o->request_id, 0, NULL, &h.base);
        break;
    }
    case BT_OUT_FORGET:
        if (bt_reqtable_get(&w->inflight, o->request_id) == INFLIGHT_ABORTED) {
            bt_warn("req %llu: aborted, but nothing of it was left to end; forgotten",
                    (unsigned long long)o->request_id);
            bt_reqtable_del(&w->inflight, o->request_id);
        }
        break;
    case BT_OUT_ROLE:
        if (w->p.ops->loop_output) {
            w->p.ops->loop_output(w->p.ctx, w, o);
            return; /* the role frees it */
        }
        break;
    }
    bt_out_free(o);
}

/* Sends everything the compute thread has produced. */
static void drain_outbox(bt_worker_t *w)
{
    uint64_t wakes;
    if (read(w->efd, &wakes, sizeof wakes) < 0 && errno != EAGAIN)
        bt_warn("worker: eventfd read failed: %s", strerror(errno));
    /* Whatever is queued is ready now: a request's consecutive tokens go out as one chunk. */
    bt_out_t *batch[256];
    size_t n;
    do {
        for (n = 0; n < sizeof batch / sizeof batch[0]; n++)
            if (bt_queue_pop(w->outbox, &batch[n], 0) != BT_OK)
                break;
        bt_out_coalesce(batch, n);
        for (size_t i = 0; i < n; i++)
            bt_worker_send(w, batch[i]);
    } while (n == sizeof batch / sizeof batch[0]);
}

/* ---- loop thread: receiving -------------------------------------------------------------- */

static void refuse_assign(bt_worker_t *w, uint64_t rid, int32_t status, const char *why)
{
    bt_info("req %llu: ASSIGN refused: %s (%s)", (unsigned long long)rid, why,
            bt_status_name(status));
    Baton__AssignReply r = BATON__ASSIGN_REPLY__INIT;
    r.part = w->p.limits.role;
    send_msg(w, BATON__METHOD__ASSIGN_REPLY, rid, status, why, &r.base);
}

/* Checks an assignment against the worker's state and limits; on success *out is the request. */
static int accept_assign(bt_worker_t *w, const bt_rpc_msg_t *m, bt_req_t **out, char *err,
                         size_t cap)
{
    uint64_t rid = m->hdr.request_id;
    Baton__Assignment *a = NULL;
    int st;
    if (bt_rpc_unpack(m, (ProtobufCMessage **)&a) != BT_OK) {
        snprintf(err, cap, "assignment does not parse");
        return BT_ERR_FORMAT;
    }
    if (w->draining) {
        st = BT_ERR_DRAINING;
        snprintf(err, cap, "instance is draining");
    } else if (bt_reqtable_get(&w->inflight, rid)) {
        st = BT_ERR_INVAL;
        snprintf(err, cap, "request id already in flight here");
    } else if (bt_reqtable_len(&w->inflight) >= (size_t)w->p.max_requests) {
        st = BT_ERR_OVERLOADED;
        snprintf(err, cap, "%d requests in flight", w->p.max_requests);
    } else {
        st = bt_req_from_assignment(a, rid, &w->p.limits, out, err, cap);
    }
    protobuf_c_message_free_unpacked(&a->base, NULL);
    if (st == BT_OK && (st = bt_reqtable_put(&w->inflight, rid, INFLIGHT)) != BT_OK) {
        snprintf(err, cap, "out of memory");
        bt_req_destroy(*out);
    }
    return st;
}

static void on_assign(bt_worker_t *w, const bt_rpc_msg_t *m)
{
    uint64_t rid = m->hdr.request_id;
    char err[BT_OUT_MAX_ERROR];
    bt_req_t *req = NULL;
    int st = accept_assign(w, m, &req, err, sizeof err);
    if (st != BT_OK) {
        refuse_assign(w, rid, st, err);
        return;
    }
    Baton__Role part = req->part;
    int req_replica = req->replica;
    int32_t n_prompt = req->n_prompt;
    bt_cmd_t c = {.kind = BT_CMD_ASSIGN, .request_id = rid, .req = req};
    if (bt_queue_push(w->inbox, &c, -1) != BT_OK) { /* cannot happen: sized for the cap */
        bt_reqtable_del(&w->inflight, rid);
        bt_req_destroy(req);
        refuse_assign(w, rid, BT_ERR_INTERNAL, "command queue full");
        return;
    }
    bt_debug("req %llu: assigned (part %d, %d prompt tokens)", (unsigned long long)rid, (int)part,
             n_prompt);
    if (part != BATON__ROLE__DECODE && !req_replica) { /* those answer with a reservation */
        Baton__AssignReply r = BATON__ASSIGN_REPLY__INIT;
        r.part = part;
        send_msg(w, BATON__METHOD__ASSIGN_REPLY, rid, BT_OK, NULL, &r.base);
    }
}

/* Passes one ABORT per request to the compute thread (a repeated one would change nothing, and
 * keeping to one keeps the command queue within its bound). */
static void on_abort(bt_worker_t *w, uint64_t rid, int32_t status)
{
    void *v = bt_reqtable_get(&w->inflight, rid);
    if (!v) {
        bt_debug("req %llu: ABORT for a request not in flight (already done)",
                 (unsigned long long)rid);
        return;
    }
    if (v == INFLIGHT_ABORTED)
        return;
    /* in place: abort_all calls this while it walks the table, which a deletion would
     * reshape (an entry moved back behind the walk would never be aborted) */
    bt_reqtable_set(&w->inflight, rid, INFLIGHT_ABORTED);
    bt_cmd_t c = {.kind = BT_CMD_ABORT, .request_id = rid, .status = status};
    if (bt_queue_push(w->inbox, &c, -1) != BT_OK)
        bt_error("req %llu: cannot queue ABORT", (unsigned long long)rid);
}

/* Every request in flight (a pair's replicas included) is aborted; each still ends with DONE. */
static void abort_all(bt_worker_t *w, int32_t status)
{
    size_t pos = 0;
    uint64_t rid;
    while (bt_reqtable_next(&w->inflight, &pos, &rid))
        on_abort(w, rid, status);
}

/* RESUME and SET_ROLE (pair daemons): to the compute thread. */
static void on_pair_command(bt_worker_t *w, const bt_rpc_msg_t *m)
{
    uint64_t rid = m->hdr.request_id;
    bt_cmd_t c = {.request_id = rid};
    if (m->hdr.method == BATON__METHOD__SET_ROLE) {
        Baton__SetRole *sr = NULL;
        if (bt_rpc_unpack(m, (ProtobufCMessage **)&sr) != BT_OK) {
            bt_rpc_reply_error(w->sock, m, BT_ERR_FORMAT, "SetRole does not parse");
            return;
        }
        c.kind = BT_CMD_SET_ROLE;
        c.status = (int32_t)sr->serving;
        if (sr->partner_kvx_address.len && sr->partner_kvx_address.len <= BT_REQ_MAX_KVX_ADDRESS &&
            (c.data = bt_malloc(sr->partner_kvx_address.len)) != NULL) {
            memcpy(c.data, sr->partner_kvx_address.data, sr->partner_kvx_address.len);
            c.len = sr->partner_kvx_address.len;
        }
        protobuf_c_message_free_unpacked(&sr->base, NULL);
        if (bt_queue_push(w->inbox, &c, 0) != BT_OK) {
            bt_warn("worker: command queue full; SET_ROLE dropped");
            bt_free(c.data);
        }
        return;
    }
    Baton__Resume *rs = NULL;
    const char *why = NULL;
    int32_t st = BT_OK;
    void *v = bt_reqtable_get(&w->inflight, rid);
    if (bt_rpc_unpack(m, (ProtobufCMessage **)&rs) != BT_OK) {
        st = BT_ERR_FORMAT, why = "Resume does not parse";
    } else if (!v || v == INFLIGHT_ABORTED) {
        st = BT_ERR_NOT_FOUND, why = "no replica of the request here";
    } else if (rs->n_output_ids < 1 || rs->n_output_ids > (size_t)w->p.limits.n_ctx) {
        st = BT_ERR_RANGE, why = "resume with no or too many tokens";
    } else {
        for (size_t i = 0; i < rs->n_output_ids && !why; i++)
            if (rs->output_ids[i] < 0 || rs->output_ids[i] >= w->p.limits.n_vocab)
                st = BT_ERR_RANGE, why = "token id outside the vocabulary";
    }
    if (!why) {
        c.kind = BT_CMD_RESUME;
        c.n_ids = (int32_t)rs->n_output_ids;
        c.ids = bt_malloc(rs->n_output_ids * sizeof(int32_t));
        if (!c.ids)
            st = BT_ERR_NOMEM, why = "out of memory";
        else
            memcpy(c.ids, rs->output_ids, rs->n_output_ids * sizeof(int32_t));
        if (c.ids && bt_queue_push(w->inbox, &c, 0) != BT_OK) {
            bt_free(c.ids);
            st = BT_ERR_OVERLOADED, why = "command queue full";
        }
    }
    if (rs)
        protobuf_c_message_free_unpacked(&rs->base, NULL);
    if (why) {
        bt_info("req %llu: RESUME refused: %s", (unsigned long long)rid, why);
        Baton__AssignReply r = BATON__ASSIGN_REPLY__INIT;
        r.part = BATON__ROLE__PAIR;
        send_msg(w, BATON__METHOD__ASSIGN_REPLY, rid, st, why, &r.base);
        /* The router takes the refusal as "nothing here" and will not end the replica: end it
         * now (its DONE is ignored there). */
        if (v == INFLIGHT)
            on_abort(w, rid, BT_ERR_CANCELLED);
    }
}

static void start_drain(bt_worker_t *w, const char *why)
{
    if (w->draining)
        return;
    w->draining = 1;
    w->drain_start_ms = now_ms();
    bt_info("worker %s: draining (%s), %zu requests in flight", w->id, why,
            bt_reqtable_len(&w->inflight));
    send_heartbeat(w);
}

static void on_message(bt_worker_t *w, bt_rpc_msg_t *m, int st)
{
    if (st == BT_ERR_FORMAT || st == BT_ERR_UNSUPPORTED) {
        bt_warn("worker: bad message from the router (%s), answered", bt_status_name(st));
        bt_rpc_reply_error(w->sock, m, st, "malformed, unknown-version or unknown-method message");
        return;
    }
    if (m->body_len > BT_RPC_MAX_BODY_BYTES) {
        bt_warn("req %llu: message of %zu bytes is over the limit, answered",
                (unsigned long long)m->hdr.request_id, m->body_len);
        if (m->hdr.method == BATON__METHOD__ASSIGN)
            refuse_assign(w, m->hdr.request_id, BT_ERR_RANGE, "assignment over the size limit");
        else
            bt_rpc_reply_error(w->sock, m, BT_ERR_RANGE, "message of %zu bytes over the limit",
                               m->body_len);
        return;
    }
    switch (m->hdr.method) {
    case BATON__METHOD__ASSIGN: on_assign(w, m); break;
    case BATON__METHOD__ABORT: on_abort(w, m->hdr.request_id, BT_ERR_CANCELLED); break;
    case BATON__METHOD__DRAIN: start_drain(w, "DRAIN from the router"); break;
    case BATON__METHOD__RESET:
        /* The router (re)registered this instance knowing nothing of what it holds: it wrote it
         * off while it was silent (stopped, starved, cut off) and placed its requests elsewhere,
         * or it restarted. Nobody would end what is still here. */
        if (bt_reqtable_len(&w->inflight))
            bt_warn("worker %s: RESET from the router, which knows nothing of what is here: "
                    "dropping the %zu requests and replicas held",
                    w->id, bt_reqtable_len(&w->inflight));
        abort_all(w, BT_ERR_CANCELLED);
        break;
    case BATON__METHOD__RESUME:
    case BATON__METHOD__SET_ROLE:
        if (w->p.limits.role == BATON__ROLE__PAIR) {
            on_pair_command(w, m);
            break;
        }
        /* fall through */
    default:
        bt_rpc_reply_error(w->sock, m, BT_ERR_UNSUPPORTED, "method %d is not served by a daemon",
                           (int)m->hdr.method);
        break;
    }
}

static void recv_all(bt_worker_t *w)
{
    for (;;) {
        bt_rpc_msg_t m;
        int st = bt_rpc_recv(w->sock, &m, ZMQ_DONTWAIT);
        if (st == BT_AGAIN || st == BT_ERR_IO) {
            bt_rpc_msg_fini(&m);
            return;
        }
        if (st == BT_ERR_NOMEM)
            bt_error("worker: out of memory receiving a message; dropped");
        else
            on_message(w, &m, st);
        bt_rpc_msg_fini(&m);
    }
}

static void on_signal(bt_worker_t *w)
{
    struct signalfd_siginfo si;
    while (read(w->sfd, &si, sizeof si) == (ssize_t)sizeof si) {
        if (w->draining) {
            bt_warn("worker %s: second signal %u, stopping now", w->id, si.ssi_signo);
            w->forced = 1;
        } else {
            start_drain(w, si.ssi_signo == SIGTERM ? "SIGTERM" : "SIGINT");
        }
    }
}

/* Past the drain timeout, what is still in flight is aborted (each still ends with DONE). */
static void drain_timeout_check(bt_worker_t *w)
{
    if (w->draining && now_ms() >= w->drain_note_ms) { /* say what the drain waits for */
        if (w->drain_note_ms) {
            char ids[8 * 24] = "";
            size_t pos = 0, len = 0;
            uint64_t rid;
            void *v;
            for (int i = 0; i < 8 && (v = bt_reqtable_next(&w->inflight, &pos, &rid)); i++)
                len += (size_t)snprintf(ids + len, sizeof ids - len, " %llu%s",
                                        (unsigned long long)rid, v == INFLIGHT_ABORTED ? "*" : "");
            bt_info("worker %s: draining: %zu requests in flight (%s%s; * aborted), %zu outputs "
                    "to send",
                    w->id, bt_reqtable_len(&w->inflight), ids[0] ? "ids" : "none", ids,
                    bt_queue_len(w->outbox));
        }
        w->drain_note_ms = now_ms() + 2000;
    }
    if (!w->draining || w->drain_aborted || w->p.drain_timeout_ms <= 0 ||
        now_ms() - w->drain_start_ms < (uint64_t)w->p.drain_timeout_ms)
        return;
    w->drain_aborted = 1;
    bt_warn("worker %s: drain timeout, aborting %zu requests", w->id,
            bt_reqtable_len(&w->inflight));
    abort_all(w, BT_ERR_TIMEOUT);
}

static int loop_done(bt_worker_t *w)
{
    if (w->forced)
        return 1;
    return w->draining && bt_reqtable_len(&w->inflight) == 0 && bt_queue_len(w->outbox) == 0;
}

/* Receives at most 4x the protocol's limit: bigger frames make ZeroMQ drop the connection
 * for good (a protocol error ends the session), while anything smaller is answered with an
 * error by on_message and the connection stays. Messages are queued only on a live connection
 * (ZMQ_IMMEDIATE): what a router that is gone would never read is not kept, so a daemon whose
 * router has already exited does not wait out the linger at exit. */
#define WORKER_MAX_FRAME_BYTES (4 * ((int64_t)BT_RPC_MAX_BODY_BYTES + BT_RPC_MAX_HEADER_BYTES))

static int open_socket(bt_worker_t *w)
{
    int ivl = 100, ivl_max = 1000, immediate = 1;
    int64_t max = WORKER_MAX_FRAME_BYTES;
    w->sock = zmq_socket(w->zctx, ZMQ_DEALER);
    if (!w->sock || bt_rpc_socket_setup(w->sock) != BT_OK ||
        zmq_setsockopt(w->sock, ZMQ_MAXMSGSIZE, &max, sizeof max) != 0 ||
        zmq_setsockopt(w->sock, ZMQ_ROUTING_ID, w->id, strlen(w->id)) != 0 ||
        zmq_setsockopt(w->sock, ZMQ_RECONNECT_IVL, &ivl, sizeof ivl) != 0 ||
        zmq_setsockopt(w->sock, ZMQ_RECONNECT_IVL_MAX, &ivl_max, sizeof ivl_max) != 0 ||
        zmq_setsockopt(w->sock, ZMQ_IMMEDIATE, &immediate, sizeof immediate) != 0 ||
        zmq_connect(w->sock, w->router) != 0) {
        bt_error("worker: cannot connect to the router at %s: %s", w->router,
                 zmq_strerror(zmq_errno()));
        return BT_ERR_IO;
    }
    return BT_OK;
}

/* A connection that ZeroMQ gave up on (after a protocol error it does not reconnect) shows as
 * sends that keep failing; a fresh socket reconnects. What was queued on the old one is lost,
 * as it would be with a router restart; the router's failover covers it. */
static void reconnect_if_stuck(bt_worker_t *w)
{
    uint64_t limit = 3 * (uint64_t)w->p.heartbeat_ms;
    if (!w->stuck_since_ms || now_ms() - w->stuck_since_ms < (limit > 1000 ? limit : 1000))
        return;
    bt_warn("worker %s: no connection to the router for %llu ms; reconnecting", w->id,
            (unsigned long long)(now_ms() - w->stuck_since_ms));
    zmq_close(w->sock);
    w->sock = NULL;
    w->stuck_since_ms = 0;
    if (open_socket(w) != BT_OK)
        w->stuck_since_ms = now_ms(); /* try again later */
}

void bt_worker_wait_at_most(bt_worker_t *w, int ms)
{
    if (ms < w->wait_cap_ms)
        w->wait_cap_ms = ms;
}

static void loop_once(bt_worker_t *w)
{
    w->wait_cap_ms = WORKER_TICK_MS;
    int role_fd = w->p.ops->loop_fd ? w->p.ops->loop_fd(w->p.ctx, w) : -1;
    zmq_pollitem_t items[4] = {{w->sock, 0, ZMQ_POLLIN, 0},
                               {NULL, w->efd, ZMQ_POLLIN, 0},
                               {NULL, w->sfd, ZMQ_POLLIN, 0},
                               {NULL, role_fd, ZMQ_POLLIN, 0}};
    uint64_t now = now_ms();
    long timeout = w->next_hb_ms > now ? (long)(w->next_hb_ms - now) : 0;
    if (timeout > w->wait_cap_ms)
        timeout = w->wait_cap_ms;
    if (zmq_poll(items, role_fd >= 0 ? 4 : 3, timeout) < 0 && zmq_errno() != EINTR)
        bt_warn("worker: zmq_poll failed: %s", zmq_strerror(zmq_errno()));
    if (items[2].revents)
        on_signal(w);
    if (items[0].revents)
        recv_all(w);
    if (items[1].revents)
        drain_outbox(w);
    if (w->p.ops->loop_poll)
        w->p.ops->loop_poll(w->p.ctx, w);
    if (now_ms() >= w->next_hb_ms)
        send_heartbeat(w);
    reconnect_if_stuck(w);
    drain_timeout_check(w);
}

int bt_worker_run(bt_worker_t *w)
{
    if (pthread_create(&w->compute, NULL, compute_main, w) != 0) {
        bt_error("worker: cannot start the compute thread");
        return BT_ERR_INTERNAL;
    }
    w->compute_started = 1;
    bt_info("worker %s: serving, router %s, model %s", w->id, w->router, w->model_id);
    send_heartbeat(w);
    while (!loop_done(w))
        loop_once(w);
    atomic_store(&w->stop, 1);
    bt_queue_close(w->outbox); /* a compute thread blocked on it returns */
    bt_queue_wake(w->inbox);
    pthread_join(w->compute, NULL);
    w->compute_started = 0;
    if (!w->forced)
        bt_info("worker %s: drained, exiting", w->id);
    return w->forced ? BT_ERR_CANCELLED : BT_OK;
}

/* ---- create / destroy -------------------------------------------------------------------- */

static int open_fds(bt_worker_t *w)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    w->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    w->sfd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
    if (w->efd < 0 || w->sfd < 0) {
        bt_error("worker: cannot create eventfd/signalfd: %s", strerror(errno));
        return BT_ERR_IO;
    }
    return BT_OK;
}

static int check_params(const bt_worker_params_t *p)
{
    if (!p->instance_id || !*p->instance_id || strlen(p->instance_id) > BT_RPC_MAX_ROUTE_BYTES ||
        !p->router || !p->model_id || !p->ops || !p->ops->command || !p->ops->step ||
        p->heartbeat_ms < 0 || p->max_requests < 0) {
        bt_error("worker: invalid parameters (instance id, router, model id, ops)");
        return BT_ERR_INVAL;
    }
    return BT_OK;
}

int bt_worker_create(const bt_worker_params_t *p, bt_worker_t **out)
{
    int st = check_params(p);
    if (st != BT_OK)
        return st;
    bt_worker_t *w = bt_calloc(1, sizeof *w);
    if (!w)
        return BT_ERR_NOMEM;
    w->p = *p;
    w->p.heartbeat_ms = p->heartbeat_ms ? p->heartbeat_ms : 500;
    w->p.max_requests = p->max_requests ? p->max_requests : 1024;
    w->efd = w->sfd = -1;
    w->incarnation = bt_rpc_now_ns();
    /* Until the compute thread publishes, the pool is whole and empty. */
    w->stats.kv_total_blocks = w->stats.kv_free_blocks = (uint32_t)p->limits.max_blocks;
    pthread_mutex_init(&w->stats_mu, NULL);
    bt_reqtable_init(&w->inflight);
    size_t n_cmd = 3 * (size_t)w->p.max_requests + 16;
    st = BT_ERR_NOMEM;
    w->id = bt_strdup(p->instance_id);
    w->router = bt_strdup(p->router);
    w->model_id = bt_strdup(p->model_id);
    w->held = bt_calloc((size_t)w->p.max_requests, sizeof *w->held);
    if (!w->id || !w->router || !w->model_id || !w->held ||
        bt_queue_create(sizeof(bt_cmd_t), n_cmd, &w->inbox) != BT_OK ||
        bt_queue_create(sizeof(bt_out_t *), 4096, &w->outbox) != BT_OK)
        goto err;
    w->zctx = zmq_ctx_new();
    if (!w->zctx)
        goto err;
    if ((st = open_fds(w)) != BT_OK || (st = open_socket(w)) != BT_OK)
        goto err;
    *out = w;
    return BT_OK;
err:
    bt_worker_destroy(w);
    return st;
}

void bt_worker_destroy(bt_worker_t *w)
{
    if (!w)
        return;
    BT_ASSERT(!w->compute_started);
    bt_cmd_t c;
    while (w->inbox && bt_queue_pop(w->inbox, &c, 0) == BT_OK)
        if (c.kind == BT_CMD_ASSIGN)
            bt_req_destroy(c.req);
        else
            bt_free(c.ids), bt_free(c.data);
    bt_out_t *o;
    while (w->outbox && bt_queue_pop(w->outbox, &o, 0) == BT_OK)
        bt_out_free(o);
    if (w->sock) {
        int linger = w->forced ? 0 : WORKER_LINGER_MS;
        zmq_setsockopt(w->sock, ZMQ_LINGER, &linger, sizeof linger);
        zmq_close(w->sock);
    }
    if (w->zctx)
        zmq_ctx_term(w->zctx);
    if (w->efd >= 0)
        close(w->efd);
    if (w->sfd >= 0)
        close(w->sfd);
    bt_queue_destroy(w->outbox);
    bt_queue_destroy(w->inbox);
    bt_reqtable_fini(&w->inflight);
    bt_free(w->held);
    pthread_mutex_destroy(&w->stats_mu);
    bt_free(w->model_id);
    bt_free(w->router);
    bt_free(w->id);
    bt_free(w);
}
