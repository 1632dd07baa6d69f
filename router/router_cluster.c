/* SPDX-License-Identifier: MIT */
/*
 * router_cluster.c - what the daemons send the router: heartbeats, ASSIGN_REPLY, FIRST_TOKEN,
 * STREAM and DONE; and what happens to requests when an instance dies or restarts.
 *
 * A message is used only if it comes from the instance that holds the part of the request's
 * current attempt; anything else (a late message from an aborted attempt, a duplicate, a
 * daemon declared dead that speaks again) is dropped. Tokens for a request the router no
 * longer knows get an ABORT back, so a daemon does not keep computing for nobody. The router
 * never answers an error reply with an error reply (that could ping-pong forever).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/alloc.h"
#include "common/log.h"
#include "common/status.h"
#include "router_impl.h"

int router_send_instance(router_t *r, const router_instance_t *inst, Baton__Method method,
                         uint64_t id, const ProtobufCMessage *body)
{
    bt_rpc_route_t route;
    route.n = 1;
    route.len[0] = inst->ident_len;
    memcpy(route.id[0], inst->ident, inst->ident_len);
    bt_rpc_header_t h;
    bt_rpc_header_init(&h, method, id);
    int st = bt_rpc_zsend(r->cluster, &route, &h, body);
    if (st != BT_OK)
        bt_debug("send to instance %s failed: %s", inst->name, bt_status_name(st));
    return st;
}

/* Daemons' messages are used and dropped within their handler, so their protobuf-c allocations
 * come from a scratch buffer that is reset after each one: no malloc on the hot path. An
 * unusually large message spills to malloc and is freed the usual way. */
static void *scratch_alloc(void *data, size_t size)
{
    router_t *r = data;
    size = (size + 15) & ~(size_t)15;
    if (r->scratch_used + size <= r->scratch_cap) {
        void *p = r->scratch + r->scratch_used;
        r->scratch_used += size;
        return p;
    }
    r->scratch_spilled = 1;
    return bt_malloc(size);
}

static void scratch_free(void *data, void *p)
{
    router_t *r = data;
    if ((uint8_t *)p < r->scratch || (uint8_t *)p >= r->scratch + r->scratch_cap)
        bt_free(p);
}

ProtobufCMessage *router_unpack_transient(router_t *r, const bt_rpc_msg_t *m)
{
    const ProtobufCMessageDescriptor *d = bt_rpc_body_type(m->hdr.method);
    ProtobufCAllocator a = {scratch_alloc, scratch_free, r};
    if (!d)
        return NULL;
    ProtobufCMessage *msg =
        protobuf_c_message_unpack(d, &a, m->body_len, m->body ? m->body : (const uint8_t *)"");
    if (!msg)
        r->scratch_used = 0;
    return msg;
}

void router_release_transient(router_t *r, ProtobufCMessage *msg)
{
    ProtobufCAllocator a = {scratch_alloc, scratch_free, r};
    if (msg && r->scratch_spilled)
        protobuf_c_message_free_unpacked(msg, &a);
    r->scratch_used = 0;
    r->scratch_spilled = 0;
}

static rq_part_t *part_of(router_request_t *rq, const router_instance_t *inst)
{
    if (!inst)
        return NULL;
    if (rq->decode.inst == inst)
        return &rq->decode;
    if (rq->prefill.inst == inst)
        return &rq->prefill;
    return NULL;
}

static int all_accepted(const router_request_t *rq)
{
    if (rq->pair)
        return rq->decode.accepted;
    return rq->decode.accepted && (rq->colocated || (rq->prefill.sent && rq->prefill.accepted));
}

/* Held ids looked at per heartbeat: a daemon holds at most its --max-requests (1024 by
 * default); a heartbeat listing more is not believed past this. */
#define HELD_MAX 65536
#define HELD_WARN_MAX 8 /* warnings per heartbeat; one more line counts the rest */

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static int suspect_before(const router_instance_t *inst, uint64_t id)
{
    return inst->n_suspects &&
           bsearch(&id, inst->suspects, inst->n_suspects, sizeof id, cmp_u64) != NULL;
}

/* What an instance holds (Heartbeat.held) against what the router placed there. A request the
 * router does not place there would hold its KV forever: it is ABORTed once two heartbeats in a
 * row list it, so that an ABORT already on its way (the heartbeat left before it arrived) is not
 * mistaken for a lost one. A backstop: every known path ends a part with its own ABORT. */
static void reconcile(router_t *r, router_instance_t *inst, const uint64_t *held, size_t n)
{
    uint64_t *next = NULL; /* allocated only when something is amiss */
    uint32_t n_next = 0, n_aborted = 0;
    if (n > HELD_MAX)
        n = HELD_MAX;
    for (size_t i = 0; i < n; i++) {
        router_request_t *rq = router_reqtable_by_id(r->table, held[i]);
        rq_part_t *part = rq ? part_of(rq, inst) : NULL;
        if (part && part->sent && !part->done)
            continue;
        if (suspect_before(inst, held[i])) {
            if (n_aborted++ < HELD_WARN_MAX)
                bt_warn("req %llu: %s still holds it, but the router does not place it there "
                        "(%s); ABORT sent",
                        (unsigned long long)held[i], inst->name,
                        !rq     ? "the request is over"
                        : !part ? "placed elsewhere"
                                : "that part ended");
            r->n_orphans++;
            router_send_instance(r, inst, BATON__METHOD__ABORT, held[i], NULL);
        }
        if (!next && !(next = bt_malloc(n * sizeof *next)))
            break; /* checked again at the next heartbeats */
        next[n_next++] = held[i];
    }
    if (n_aborted > HELD_WARN_MAX)
        bt_warn("%s: %u more requests it held ABORTed the same way", inst->name,
                n_aborted - HELD_WARN_MAX);
    if (n_next > 1)
        qsort(next, n_next, sizeof *next, cmp_u64);
    bt_free(inst->suspects);
    inst->suspects = next;
    inst->n_suspects = n_next;
}

static void on_heartbeat(router_t *r, bt_rpc_msg_t *m)
{
    ProtobufCMessage *body = NULL;
    if (!(body = router_unpack_transient(r, m))) {
        bt_rpc_zreply_error(r->cluster, m, BT_ERR_FORMAT, "heartbeat does not parse");
        return;
    }
    router_instance_t *inst = NULL;
    router_hb_event_t ev;
    int st = router_instances_heartbeat(r->inst, m->route.id[0], m->route.len[0],
                                        (Baton__Heartbeat *)body, r->now_ms, &inst, &ev);
    if (st == BT_OK && ev == ROUTER_HB_REFRESH) {
        const Baton__Heartbeat *hb = (const Baton__Heartbeat *)body;
        reconcile(r, inst, hb->held, hb->n_held);
    } else if (st == BT_OK) { /* the RESET below drops all it holds */
        reconcile(r, inst, NULL, 0);
    }
    router_release_transient(r, body);
    if (st == BT_ERR_INVAL) {
        bt_rpc_zreply_error(r->cluster, m, BT_ERR_INVAL, "heartbeat without a role");
        return;
    }
    if (st != BT_OK) {
        bt_warn("heartbeat refused: %s (raise --max-instances?)", bt_status_str(st));
        return;
    }
    /* Whatever a (re)registered instance holds, the router knows nothing of it any more (it
     * was failed over, or the router restarted): the instance drops it, before anything new
     * is placed there. An instance written off long enough ago is not even remembered. A
     * restarted one (a new incarnation) may hold what was sent to its id between its start
     * and this first heartbeat, meant for the process before it, whose requests are failed
     * over just below: the RESET goes first, so that a failover placed back on it survives. */
    if (ev == ROUTER_HB_NEW || ev == ROUTER_HB_REVIVED || ev == ROUTER_HB_RESTARTED)
        router_send_instance(r, inst, BATON__METHOD__RESET, 0, NULL);
    if (ev == ROUTER_HB_RESTARTED)
        router_on_instance_lost(r, inst);
    if (r->queue.n)
        r->queue_dirty = 1;
}

static void on_assign_reply(router_t *r, bt_rpc_msg_t *m, router_instance_t *inst)
{
    router_request_t *rq = router_reqtable_by_id(r->table, m->hdr.request_id);
    ProtobufCMessage *body = NULL;
    int status = m->hdr.status;
    if (m->hdr.method == BATON__METHOD__ASSIGN_REPLY && !(body = router_unpack_transient(r, m)) &&
        status == BT_OK)
        status = BT_ERR_FORMAT;
    rq_part_t *part = rq ? part_of(rq, inst) : NULL;
    if (part)
        router_probe_answered(r, part);
    if (!part || !part->sent || part->accepted || part->done) {
        if (!rq && inst && status == BT_OK) /* a reservation nobody will use */
            router_send_instance(r, inst, BATON__METHOD__ABORT, m->hdr.request_id, NULL);
    } else if (rq->pair && part == &rq->prefill && rq->state == RQ_ASSIGNING && !rq->decode.sent) {
        router_pair_holder_replied(r, rq, status, (Baton__AssignReply *)body);
    } else if (status != BT_OK) {
        char why[320];
        snprintf(why, sizeof why, "%s refused: %s%s%.200s", inst->name, bt_status_name(status),
                 m->hdr.error[0] ? ": " : "", m->hdr.error);
        part->done = 1; /* it holds nothing for the request: no ABORT owed */
        if (rq->state == RQ_CANCELLING)
            router_check_finished(r, rq);
        else {
            router_refused(r, rq, inst, status, why);
        }
    } else if (part == &rq->decode && rq->state == RQ_ASSIGNING && !rq->pair) {
        router_decode_accepted(r, rq, (Baton__AssignReply *)body);
    } else {
        part->accepted = 1;
        if (rq->state == RQ_ASSIGNING && all_accepted(rq)) {
            rq_list_remove(r, rq);
            rq_set_state(r, rq, RQ_RUNNING);
        }
    }
    router_release_transient(r, body);
}

static void take_chunk(router_t *r, router_request_t *rq, rq_part_t *part,
                       const Baton__TokenChunk *c)
{
    part->streamed = 1;
    if (!part->accepted) { /* a token implies the ASSIGN was taken */
        part->accepted = 1;
        if (rq->state == RQ_ASSIGNING && all_accepted(rq)) {
            rq_list_remove(r, rq);
            rq_set_state(r, rq, RQ_RUNNING);
        }
    }
    rq_relay_t rel;
    const char *text = c->text.data ? (const char *)c->text.data : "";
    int st = router_request_push(rq, c->index, c->ids, c->n_ids, text, c->text.len, &rel);
    if (rel.diverged)
        bt_warn("req %llu: a replayed token differs from the one delivered (index %u)",
                (unsigned long long)rq->id, c->index);
    if (st != BT_OK) {
        router_finish(
            r, rq, BATON__FINISH_REASON__FINISH_FAILED, st == BT_ERR_RANGE ? BT_ERR_INTERNAL : st,
            st == BT_ERR_RANGE ? "token stream has a gap that never closed" : "out of memory");
        return;
    }
    router_relay(r, rq, &rel, c->time_ns);
    if (rq->client_gone)
        router_cancel(r, rq);
    else if (rq->state == RQ_FINISHING)
        router_check_finished(r, rq);
}

static void on_chunk(router_t *r, bt_rpc_msg_t *m, router_instance_t *inst)
{
    router_request_t *rq = router_reqtable_by_id(r->table, m->hdr.request_id);
    rq_part_t *part = rq ? part_of(rq, inst) : NULL;
    if (!rq) {
        if (inst) /* tokens for nobody: tell the daemon to stop */
            router_send_instance(r, inst, BATON__METHOD__ABORT, m->hdr.request_id, NULL);
        return;
    }
    if (!part || !part->sent || part->done || m->hdr.status != BT_OK)
        return;
    ProtobufCMessage *body = NULL;
    if (!(body = router_unpack_transient(r, m))) {
        bt_rpc_zreply_error(r->cluster, m, BT_ERR_FORMAT, "token chunk does not parse");
        return;
    }
    take_chunk(r, rq, part, (Baton__TokenChunk *)body);
    router_release_transient(r, body);
}

/* A part ended badly: the request fails over unless what it owed has been delivered. */
static int done_failed(const router_request_t *rq, Baton__FinishReason reason, int status)
{
    return status < 0 || reason == BATON__FINISH_REASON__FINISH_FAILED ||
           (reason == BATON__FINISH_REASON__FINISH_CANCELLED && !rq->cancel_requested);
}

/* Why a part's end made the request fail over (built only then). */
static void failover_after(router_t *r, router_request_t *rq, rq_part_t *part, int status,
                           const char *error)
{
    char why[320];
    snprintf(why, sizeof why, "%s part on %s ended: %s%s%.200s",
             part == &rq->prefill ? "prefill" : "decode", part->inst ? part->inst->name : "?",
             status < 0 ? bt_status_name(status) : "not finished", error[0] ? ": " : "", error);
    router_failover(r, rq, status < 0 ? status : BT_ERR_UNAVAILABLE, why);
}

static void take_done(router_t *r, router_request_t *rq, rq_part_t *part, const Baton__Done *d,
                      int status, const char *error)
{
    Baton__FinishReason reason = d ? d->finish_reason : BATON__FINISH_REASON__FINISH_FAILED;
    if (d)
        router_request_events_from(rq, d->events, d->n_events);
    part->done = 1;
    part->inst->full = 0; /* it freed KV: worth another try */
    r->queue_dirty = 1;
    if (rq->state == RQ_CANCELLING) {
        router_check_finished(r, rq);
    } else if (rq->pair && part == &rq->prefill) {
        bt_debug("req %llu: replica on %s released (%s)", (unsigned long long)rq->id,
                 part->inst->name, bt_status_name(status));
    } else if (part == &rq->prefill) {
        if (done_failed(rq, reason, status) && !rq->decode.streamed)
            failover_after(r, rq, part, status, error);
        else if (rq->state == RQ_FINISHING)
            router_check_finished(r, rq);
    } else if (done_failed(rq, reason, status)) {
        failover_after(r, rq, part, status, error);
    } else {
        if (rq->pair && rq->prefill.inst && !rq->prefill.done) { /* the replica is not needed */
            router_abort_part(r, rq, &rq->prefill);
            rq->prefill.done = 1;
        }
        rq->finish = reason ? reason : BATON__FINISH_REASON__FINISH_LENGTH;
        rq->n_expected = d->n_output_tokens < rq->max_tokens ? d->n_output_tokens : rq->max_tokens;
        rq_list_remove(r, rq);
        rq_set_state(r, rq, RQ_FINISHING);
        rq->deadline_ms = r->now_ms + (uint64_t)r->p.finish_grace_ms;
        rq_list_push(&r->timed, rq, RQ_LIST_TIMED, 0);
        router_check_finished(r, rq);
    }
}

static void on_done(router_t *r, bt_rpc_msg_t *m, router_instance_t *inst)
{
    router_request_t *rq = router_reqtable_by_id(r->table, m->hdr.request_id);
    rq_part_t *part = rq ? part_of(rq, inst) : NULL;
    if (!part || !part->sent || part->done)
        return;
    ProtobufCMessage *body = NULL;
    int status = m->hdr.status;
    if (!(body = router_unpack_transient(r, m)) && status == BT_OK)
        status = BT_ERR_FORMAT;
    take_done(r, rq, part, (Baton__Done *)body, status, m->hdr.error);
    router_release_transient(r, body);
}

/* HANDOFF: the owner stopped decoding and keeps the request's KV as a replica. From a member
 * that the router does not hold as the request's owner, or as its replica's holder (the
 * request is over, or was failed over without it), nothing will ever end that replica: it
 * gets an ABORT at once. */
static void on_handoff(router_t *r, bt_rpc_msg_t *m, router_instance_t *inst)
{
    router_request_t *rq = router_reqtable_by_id(r->table, m->hdr.request_id);
    if (!inst)
        return;
    if (!rq || !rq->pair || rq->decode.inst != inst || rq->decode.done) {
        if (!rq || part_of(rq, inst) != &rq->prefill || rq->prefill.done) {
            bt_info("req %llu: hand-off from %s, which the router does not hold as the owner; "
                    "its replica is ABORTed",
                    (unsigned long long)m->hdr.request_id, inst->name);
            router_send_instance(r, inst, BATON__METHOD__ABORT, m->hdr.request_id, NULL);
        }
        return;
    }
    ProtobufCMessage *body = router_unpack_transient(r, m);
    if (!body) {
        bt_rpc_zreply_error(r->cluster, m, BT_ERR_FORMAT, "handoff does not parse");
        return;
    }
    uint32_t n = ((Baton__Handoff *)body)->n_output_tokens;
    router_release_transient(r, body);
    router_pair_on_handoff(r, rq, n);
}

void router_on_cluster(router_t *r, bt_rpc_msg_t *m)
{
    router_instance_t *inst = router_instances_find(r->inst, m->route.id[0], m->route.len[0]);
    if (inst)
        router_instances_touch(inst, r->now_ms);
    switch (m->hdr.method) {
    case BATON__METHOD__HEARTBEAT: on_heartbeat(r, m); break;
    case BATON__METHOD__ASSIGN_REPLY: on_assign_reply(r, m, inst); break;
    case BATON__METHOD__FIRST_TOKEN:
    case BATON__METHOD__STREAM: on_chunk(r, m, inst); break;
    case BATON__METHOD__DONE: on_done(r, m, inst); break;
    case BATON__METHOD__HANDOFF: on_handoff(r, m, inst); break;
    case BATON__METHOD__ASSIGN: /* a daemon's error reply to an ASSIGN: a refusal */
        if (m->hdr.status != BT_OK)
            on_assign_reply(r, m, inst);
        break;
    default:
        if (m->hdr.status == BT_OK)
            bt_rpc_zreply_error(r->cluster, m, BT_ERR_UNSUPPORTED,
                                "method %d is not sent by daemons", (int)m->hdr.method);
        break;
    }
}

typedef struct {
    router_t *r;
    router_instance_t *inst;
} lost_ctx_t;

static void collect(void *ctx, router_request_t *rq)
{
    lost_ctx_t *c = ctx;
    router_t *r = c->r;
    if (rq->prefill.inst != c->inst && rq->decode.inst != c->inst)
        return;
    if (r->batch_cap <= router_reqtable_count(r->table)) {
        size_t cap = router_reqtable_count(r->table) + 64;
        router_request_t **b = bt_realloc(r->batch, cap * sizeof *b);
        if (!b)
            return; /* those requests will end by their own timeouts */
        r->batch = b;
        r->batch_cap = cap;
    }
    r->batch[r->batch_n++] = rq;
}

/* The parts an instance held are lost: fail over what still needed them. */
static void lose_part(router_t *r, router_request_t *rq, router_instance_t *inst)
{
    rq_part_t *part = part_of(rq, inst);
    char why[160];
    snprintf(why, sizeof why, "instance %s died or restarted", inst->name);
    if (rq->state == RQ_CANCELLING || rq->state == RQ_FINISHING) {
        part->done = 1;
        router_check_finished(r, rq);
    } else if (rq->pair && part == &rq->prefill && rq->decode.sent) {
        part->done = 1; /* a replica lost: the owner goes on */
    } else if (rq->pair && part == &rq->decode && router_pair_owner_lost(r, rq)) {
        /* resumed on the replica */
    } else if (part == &rq->prefill && (part->done || rq->decode.streamed)) {
        part->done = 1; /* its work was delivered: the KV reached the decode side */
    } else {
        router_failover(r, rq, BT_ERR_UNAVAILABLE, why);
    }
}

void router_on_instance_lost(router_t *r, router_instance_t *inst)
{
    lost_ctx_t c = {r, inst};
    r->batch_n = 0;
    router_reqtable_each(r->table, collect, &c);
    size_t n = r->batch_n;
    for (size_t i = 0; i < n; i++) {
        router_request_t *rq = r->batch[i];
        /* An earlier failover in this loop may have placed rq again, on another instance. */
        if (rq->prefill.inst == inst || rq->decode.inst == inst)
            lose_part(r, rq, inst);
    }
    r->queue_dirty = 1;
}
