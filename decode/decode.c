/* SPDX-License-Identifier: MIT */
/*
 * decode.c - the decode role (see decode.h): the compute side (reserve, admit into the batcher
 * on arrival, abort) and the loop side (connect to the prefill peer, post the kvx receive and
 * answer with the reservation, report the receive's end).
 *
 * The ASSIGN_REPLY is sent by the loop thread as soon as the receive is posted, so the router
 * can assign the prefill part without waiting for a decode step. A request waiting for its KV
 * is "pending": it holds its blocks, and only the receive's final event (BT_CMD_KV) releases
 * them or admits the request.
 */
#include "decode.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

#include "common/alloc.h"
#include "common/batcher.h"
#include "common/log.h"
#include "common/reqtable.h"
#include "common/rpc.h"
#include "common/status.h"

/* BT_CMD_KV detail: the receive was never posted and the ASSIGN was refused (no DONE owed). */
#define DC_REFUSED 1

/* Compute side: a request waiting for its KV. */
typedef struct {
    bt_req_t *req;
    bt_kv_seq_t kv;
    int abort_status;  /* 0, or why an abort was asked */
    uint64_t since_ms; /* when it was reserved (monotonic) */
} dc_req_t;

/* Compute -> loop: post a receive for a request, or cancel it. */
typedef struct {
    int cancel;
    uint64_t req_id;
    char peer[BT_REQ_MAX_PEER + 1];
    uint8_t *peer_kvx; /* (peer_kvx_len) points after blocks */
    size_t peer_kvx_len;
    int32_t n_tokens;
    int32_t n_blocks;
    int32_t blocks[]; /* (n_blocks), then the peer address */
} post_msg_t;

/* Loop side: a receive posted, or waiting for its peer's connection. */
typedef struct {
    post_msg_t *msg;     /* owned */
    bt_kvx_recv_t *recv; /* NULL while parked */
    uint64_t deadline_ms;
} post_t;

struct bt_decode {
    bt_decode_params_t p;
    bt_kv_pool_t *pool;
    /* compute thread */
    bt_batcher_t *batcher;
    bt_reqtable_t pending;  /* id -> dc_req_t */
    uint64_t next_lease_ms; /* when to look for reservations past their time next */
    /* loop thread */
    bt_reqtable_t posts; /* id -> post_t */
    bt_worker_t *w;
};

static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

int bt_decode_create(const bt_decode_params_t *p, bt_decode_t **out)
{
    if (!p->engine || !p->link)
        return BT_ERR_INVAL;
    bt_decode_t *d = bt_calloc(1, sizeof *d);
    if (!d)
        return BT_ERR_NOMEM;
    d->p = *p;
    d->p.peer_wait_ms = p->peer_wait_ms ? p->peer_wait_ms : 5000;
    d->pool = bt_engine_kv_pool(p->engine);
    bt_reqtable_init(&d->pending);
    bt_reqtable_init(&d->posts);
    bt_batcher_params_t bp = {.engine = p->engine,
                              .max_batch_seqs = p->max_batch_seqs,
                              .prefill_first = 0,
                              .growth_reserve = p->growth_reserve,
                              .max_requests = p->max_requests,
                              .steplog = p->steplog};
    int st = bt_batcher_create(&bp, &d->batcher);
    if (st != BT_OK) {
        bt_decode_destroy(d);
        return st;
    }
    *out = d;
    return BT_OK;
}

void bt_decode_destroy(bt_decode_t *d)
{
    if (!d)
        return;
    size_t pos = 0;
    dc_req_t *r;
    while ((r = bt_reqtable_next(&d->pending, &pos, NULL)) != NULL) {
        bt_kv_seq_fini(&r->kv, d->pool);
        bt_req_destroy(r->req);
        bt_free(r);
    }
    pos = 0;
    post_t *q;
    while ((q = bt_reqtable_next(&d->posts, &pos, NULL)) != NULL) {
        bt_free(q->msg);
        bt_free(q);
    }
    bt_reqtable_fini(&d->pending);
    bt_reqtable_fini(&d->posts);
    bt_batcher_destroy(d->batcher);
    bt_free(d);
}

/* ---- compute thread ----------------------------------------------------------------------- */

static void dc_free(bt_decode_t *d, dc_req_t *r)
{
    bt_reqtable_del(&d->pending, r->req->id);
    bt_kv_seq_fini(&r->kv, d->pool);
    bt_req_destroy(r->req);
    bt_free(r);
}

static void dc_refuse(bt_worker_t *w, bt_req_t *req, int32_t status, const char *why)
{
    bt_info("req %llu: refused: %s", (unsigned long long)req->id, why);
    bt_worker_emit(w, bt_out_assign_reply(req->id, BATON__ROLE__DECODE, status, why, NULL));
    bt_req_destroy(req);
}

/* Asks the loop to post the receive for r (its blocks, the prefill peer). */
static int dc_emit_post(bt_worker_t *w, const dc_req_t *r)
{
    const bt_req_t *q = r->req;
    size_t blocks = (size_t)r->kv.n_blocks * sizeof(int32_t);
    bt_out_t *o = bt_out_new(BT_OUT_ROLE, q->id, 0);
    post_msg_t *m = bt_calloc(1, sizeof *m + blocks + q->peer_kvx_len);
    if (!o || !m) {
        bt_free(m);
        bt_out_free(o);
        return BT_ERR_NOMEM;
    }
    m->req_id = q->id;
    snprintf(m->peer, sizeof m->peer, "%s", q->peer);
    m->n_tokens = q->n_prompt;
    m->n_blocks = r->kv.n_blocks;
    memcpy(m->blocks, r->kv.blocks, blocks);
    m->peer_kvx = (uint8_t *)m->blocks + blocks;
    m->peer_kvx_len = q->peer_kvx_len;
    if (q->peer_kvx_len)
        memcpy(m->peer_kvx, q->peer_kvx, q->peer_kvx_len);
    o->role_data = m;
    bt_worker_emit(w, o);
    return BT_OK;
}

/* Reserves the prompt's blocks and has the loop post the receive, or refuses. */
static void dc_assign(bt_decode_t *d, bt_worker_t *w, bt_req_t *req)
{
    if (!req->peer[0] || !req->peer_kvx_len) {
        dc_refuse(w, req, BT_ERR_INVAL, "no prefill peer address in the assignment");
        return;
    }
    /* Keep one block per running sequence for its growth, and what --growth-reserve keeps for
     * the rest of it: reserving those for arrivals would only preempt running sequences to
     * make room again. */
    int32_t need = bt_blocks_for(req->n_prompt, bt_kv_pool_block_size(d->pool));
    if (bt_kv_pool_n_free(d->pool) - need <
        bt_batcher_n_running(d->batcher) + bt_batcher_growth_blocks(d->batcher)) {
        dc_refuse(w, req, BT_ERR_NOSPACE, "no free KV blocks for the prompt");
        return;
    }
    dc_req_t *r = bt_calloc(1, sizeof *r);
    int st = r ? bt_kv_seq_init(&r->kv, d->pool, req->max_ctx) : BT_ERR_NOMEM;
    if (st == BT_OK)
        st = bt_kv_seq_reserve(&r->kv, d->pool, req->n_prompt);
    if (st == BT_OK)
        st = bt_reqtable_put(&d->pending, req->id, r);
    if (st == BT_OK) {
        r->req = req;
        r->since_ms = mono_ms();
        if ((st = dc_emit_post(w, r)) == BT_OK)
            return;
        bt_reqtable_del(&d->pending, req->id);
    }
    if (r)
        bt_kv_seq_fini(&r->kv, d->pool);
    bt_free(r);
    dc_refuse(w, req, st,
              st == BT_ERR_NOSPACE ? "no free KV blocks for the prompt" : bt_status_str(st));
}

static void dc_emit_cancel(bt_worker_t *w, uint64_t id)
{
    bt_out_t *o = bt_out_new(BT_OUT_ROLE, id, 0);
    post_msg_t *m = bt_calloc(1, sizeof *m);
    if (!o || !m) {
        bt_free(m);
        bt_out_free(o);
        bt_error("req %llu: out of memory cancelling the receive", (unsigned long long)id);
        return;
    }
    m->cancel = 1;
    m->req_id = id;
    o->role_data = m;
    bt_worker_emit(w, o);
}

static void dc_abort(bt_decode_t *d, bt_worker_t *w, uint64_t id, int32_t status)
{
    dc_req_t *r = bt_reqtable_get(&d->pending, id);
    if (r) { /* the receive's final event ends it */
        if (!r->abort_status) {
            r->abort_status = status;
            dc_emit_cancel(w, id);
        }
        return;
    }
    if (bt_batcher_abort(d->batcher, w, id, status) != BT_OK) {
        bt_debug("req %llu: abort of a request no longer here", (unsigned long long)id);
        bt_worker_forget(w, id);
    }
}

/* The receive ended: admit the request with its KV, or end it. */
static void dc_arrived(bt_decode_t *d, bt_worker_t *w, const bt_cmd_t *c)
{
    dc_req_t *r = bt_reqtable_get(&d->pending, c->request_id);
    if (!r)
        return;
    bt_req_t *req = r->req;
    if (c->detail == DC_REFUSED) { /* the loop refused the ASSIGN: no DONE is owed */
        dc_free(d, r);
        return;
    }
    if (c->status == BT_OK && !r->abort_status) {
        r->kv.n_tokens = req->n_prompt;
        bt_reqtable_del(&d->pending, req->id);
        bt_batcher_add_continued(d->batcher, w, req, &r->kv, c->token);
        bt_free(r);
        return;
    }
    bt_out_t *done;
    if (r->abort_status == BT_ERR_CANCELLED) {
        done = bt_out_done(req, BATON__FINISH_REASON__FINISH_CANCELLED, 0, BT_OK, NULL);
    } else {
        int32_t st = r->abort_status ? r->abort_status : c->status;
        bt_warn("req %llu: KV did not arrive: %s", (unsigned long long)req->id,
                bt_status_str(c->status));
        done = bt_out_done(req, BATON__FINISH_REASON__FINISH_FAILED, 0, st,
                           "KV transfer failed: %s", bt_status_str(c->status));
    }
    bt_worker_emit(w, done);
    dc_free(d, r);
}

static void dc_command(void *ctx, bt_worker_t *w, const bt_cmd_t *c)
{
    bt_decode_t *d = ctx;
    switch (c->kind) {
    case BT_CMD_ASSIGN: dc_assign(d, w, c->req); break;
    case BT_CMD_ABORT: dc_abort(d, w, c->request_id, c->status); break;
    case BT_CMD_KV: dc_arrived(d, w, c); break;
    case BT_CMD_RESUME:
    case BT_CMD_SET_ROLE:
    case BT_CMD_ROLE: break; /* pair daemons only */
    }
}

/* A reservation whose KV never comes (its prefill lost it, or a restarted router forgot it)
 * would hold its blocks for good: past arrival_timeout_ms it is cancelled and fails over. */
static void dc_expire(bt_decode_t *d, bt_worker_t *w)
{
    uint64_t now = mono_ms();
    if (!d->p.arrival_timeout_ms || now < d->next_lease_ms || !bt_reqtable_len(&d->pending))
        return;
    d->next_lease_ms = now + 1000;
    size_t pos = 0;
    dc_req_t *r;
    while ((r = bt_reqtable_next(&d->pending, &pos, NULL)) != NULL)
        if (!r->abort_status && now - r->since_ms >= (uint64_t)d->p.arrival_timeout_ms) {
            bt_warn("req %llu: its KV did not arrive in %d ms; cancelling the reservation",
                    (unsigned long long)r->req->id, d->p.arrival_timeout_ms);
            r->abort_status = BT_ERR_TIMEOUT;
            dc_emit_cancel(w, r->req->id);
        }
}

static int dc_step(void *ctx, bt_worker_t *w)
{
    bt_decode_t *d = ctx;
    dc_expire(d, w);
    int st = bt_batcher_step(d->batcher, w);
    bt_worker_stats_t s = {
        .queue_len = (uint32_t)(bt_batcher_n_waiting(d->batcher) + bt_reqtable_len(&d->pending)),
        .running = (uint32_t)bt_batcher_n_running(d->batcher),
        .kv_free_blocks = (uint32_t)bt_kv_pool_n_free(d->pool),
        .kv_total_blocks = (uint32_t)bt_kv_pool_n_blocks(d->pool),
        .queued_tokens = (uint64_t)bt_batcher_running_tokens(d->batcher),
    };
    bt_worker_publish(w, &s);
    return st;
}

/* ---- loop thread -------------------------------------------------------------------------- */

/* Reports to the compute thread and forgets the post. */
static void post_end(bt_decode_t *d, post_t *q, int32_t status, int32_t token, int refused)
{
    bt_cmd_t c = {.kind = BT_CMD_KV,
                  .request_id = q->msg->req_id,
                  .status = status,
                  .token = token,
                  .detail = refused ? DC_REFUSED : 0,
                  .time_ns = bt_rpc_now_ns()};
    if (bt_worker_command(d->w, &c) != BT_OK)
        bt_error("req %llu: cannot report its KV", (unsigned long long)c.request_id);
    bt_reqtable_del(&d->posts, q->msg->req_id);
    if (q->recv)
        bt_kvx_recv_release(q->recv);
    bt_free(q->msg);
    bt_free(q);
}

/* Refuses the ASSIGN from the loop (nothing was posted) and has the compute side free it. */
static void post_refuse(bt_decode_t *d, post_t *q, int32_t status, const char *why)
{
    bt_info("req %llu: refused: %s", (unsigned long long)q->msg->req_id, why);
    bt_worker_send(d->w,
                   bt_out_assign_reply(q->msg->req_id, BATON__ROLE__DECODE, status, why, NULL));
    post_end(d, q, status, -1, 1);
}

/* Posts the receive once the prefill peer is connected, and answers the ASSIGN with the
 * reservation. Returns 0 while it waits, 1 when posted, 2 when it ended (q is gone). */
static int post_try(bt_decode_t *d, post_t *q)
{
    const post_msg_t *m = q->msg;
    bt_kvx_peer_t *peer = bt_kvlink_peer(d->p.link, m->peer, m->peer_kvx, m->peer_kvx_len, 1);
    int st = peer ? bt_kvx_peer_status(peer) : BT_ERR_UNAVAILABLE;
    if (st == BT_AGAIN)
        return 0;
    bt_kvx_recv_params_t rp = {
        .req_id = m->req_id, .blocks = m->blocks, .n_blocks = m->n_blocks, .n_tokens = m->n_tokens};
    if (st == BT_OK)
        st = bt_kvx_recv_post(peer, &rp, &q->recv);
    if (st == BT_AGAIN)
        return 0;
    if (st != BT_OK) {
        post_refuse(d, q, BT_ERR_PEER, "cannot reach the prefill peer for the KV");
        return 2;
    }
    bt_reservation_t resv = {.id = m->req_id,
                             .generation = bt_kvx_recv_gen(q->recv),
                             .blocks = (int32_t *)m->blocks,
                             .n_blocks = m->n_blocks,
                             .n_tokens = m->n_tokens};
    bt_worker_send(d->w, bt_out_assign_reply(m->req_id, BATON__ROLE__DECODE, BT_OK, NULL, &resv));
    return 1;
}

static void dc_loop_output(void *ctx, bt_worker_t *w, bt_out_t *o)
{
    bt_decode_t *d = ctx;
    post_msg_t *m = o->role_data;
    d->w = w;
    bt_out_free(o);
    post_t *q = bt_reqtable_get(&d->posts, m->req_id);
    if (m->cancel) {
        bt_free(m);
        if (q && q->recv)
            bt_kvx_recv_cancel(q->recv); /* its final event ends it */
        else if (q) /* never posted, never answered: the DONE will say cancelled */
            post_end(d, q, BT_ERR_CANCELLED, -1, 0);
        return;
    }
    q = bt_calloc(1, sizeof *q);
    if (!q || bt_reqtable_put(&d->posts, m->req_id, q) != BT_OK) {
        bt_free(q);
        bt_worker_send(w, bt_out_assign_reply(m->req_id, BATON__ROLE__DECODE, BT_ERR_NOMEM,
                                              "out of memory", NULL));
        bt_cmd_t c = {.kind = BT_CMD_KV,
                      .request_id = m->req_id,
                      .status = BT_ERR_NOMEM,
                      .detail = DC_REFUSED};
        bt_worker_command(w, &c);
        bt_free(m);
        return;
    }
    q->msg = m;
    q->deadline_ms = mono_ms() + (uint64_t)d->p.peer_wait_ms;
    post_try(d, q);
}

static void dc_on_event(void *ctx, const bt_kvx_event_t *ev)
{
    bt_decode_t *d = ctx;
    if (ev->type == BT_KVX_EV_OFFERED) {
        bt_debug("req %llu: KV offered before it was posted", (unsigned long long)ev->req_id);
        return;
    }
    if (ev->type != BT_KVX_EV_RECV_DONE)
        return;
    post_t *q = bt_reqtable_get(&d->posts, ev->req_id);
    if (q && q->recv == ev->recv) {
        int32_t st = ev->status;
        if (st == BT_OK && ev->n_tokens != q->msg->n_tokens)
            st = BT_ERR_MISMATCH;
        post_end(d, q, st, ev->first_token, 0);
    } else {
        bt_kvx_recv_release(ev->recv);
    }
}

/* Posts waiting for their peer: post once it is up, refuse at the deadline. */
static void dc_retry_parked(bt_decode_t *d)
{
    uint64_t now = mono_ms();
    size_t pos = 0;
    post_t *q;
    while ((q = bt_reqtable_next(&d->posts, &pos, NULL)) != NULL) {
        int done = q->recv ? 1 : post_try(d, q);
        if (done == 2)
            pos = 0; /* the table changed */
        if (done)
            continue;
        if (now >= q->deadline_ms) {
            post_refuse(d, q, BT_ERR_PEER, "the prefill peer did not connect in time");
            pos = 0;
        }
    }
}

static int dc_loop_fd(void *ctx, bt_worker_t *w)
{
    bt_decode_t *d = ctx;
    d->w = w;
    return bt_kvlink_loop_fd(d->p.link, w, dc_on_event, d);
}

static void dc_loop_poll(void *ctx, bt_worker_t *w)
{
    bt_decode_t *d = ctx;
    d->w = w;
    bt_kvlink_pump(d->p.link, dc_on_event, d);
    dc_retry_parked(d);
}

static void dc_heartbeat(void *ctx, Baton__Heartbeat *hb)
{
    bt_decode_t *d = ctx;
    size_t len;
    const void *addr = bt_kvlink_address(d->p.link, &len);
    hb->kvx_address.data = (uint8_t *)addr;
    hb->kvx_address.len = len;
}

const bt_worker_ops_t bt_decode_ops = {
    .command = dc_command,
    .step = dc_step,
    .loop_fd = dc_loop_fd,
    .loop_poll = dc_loop_poll,
    .loop_output = dc_loop_output,
    .heartbeat = dc_heartbeat,
};
