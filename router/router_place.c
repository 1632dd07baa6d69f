/* SPDX-License-Identifier: MIT */
/*
 * router_place.c - the request state machine: placement, ASSIGN, refusal and failover,
 * cancel, timeouts, and the one RESULT every accepted request ends with.
 *
 * Every placement is an attempt with a fresh cluster id, so a message that a previous attempt's
 * instance sends late (a DONE after an ABORT, tokens from an instance declared dead) finds no
 * request and is dropped; the router never has to tell attempts apart by anything else.
 * router_finish is the only place that sends a RESULT and frees a request, so "exactly one
 * RESULT" holds by construction.
 */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "common/alloc.h"
#include "common/log.h"
#include "common/status.h"
#include "router_impl.h"

uint64_t router_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* --- lists and states ---------------------------------------------------------------- */

void rq_list_push(rq_list_t *l, router_request_t *rq, int which, int front)
{
    rq->list = which;
    if (front) {
        rq->prev = NULL;
        rq->next = l->head;
        if (l->head)
            l->head->prev = rq;
        else
            l->tail = rq;
        l->head = rq;
    } else {
        rq->next = NULL;
        rq->prev = l->tail;
        if (l->tail)
            l->tail->next = rq;
        else
            l->head = rq;
        l->tail = rq;
    }
    l->n++;
}

void rq_list_remove(router_t *r, router_request_t *rq)
{
    rq_list_t *l = rq->list == RQ_LIST_QUEUE   ? &r->queue
                   : rq->list == RQ_LIST_TIMED ? &r->timed
                                               : NULL;
    if (!l)
        return;
    if (rq->prev)
        rq->prev->next = rq->next;
    else
        l->head = rq->next;
    if (rq->next)
        rq->next->prev = rq->prev;
    else
        l->tail = rq->prev;
    rq->prev = rq->next = NULL;
    rq->list = RQ_LIST_NONE;
    l->n--;
}

void rq_set_state(router_t *r, router_request_t *rq, rq_state_t state)
{
    r->n_state[rq->state]--;
    rq->state = state;
    r->n_state[state]++;
}

/* Moves rq to the timed list in a new state, due after ms. */
static void set_timed(router_t *r, router_request_t *rq, rq_state_t state, int ms)
{
    rq_list_remove(r, rq);
    rq_set_state(r, rq, state);
    rq->deadline_ms = r->now_ms + (uint64_t)ms;
    rq_list_push(&r->timed, rq, RQ_LIST_TIMED, 0);
}

static void set_running(router_t *r, router_request_t *rq)
{
    rq_list_remove(r, rq);
    rq_set_state(r, rq, RQ_RUNNING);
}

/* Back to the head of the queue: it arrived before everything queued behind it. */
static void requeue(router_t *r, router_request_t *rq)
{
    rq_list_remove(r, rq);
    rq_set_state(r, rq, RQ_QUEUED);
    rq_list_push(&r->queue, rq, RQ_LIST_QUEUE, 1);
}

/* --- parts --------------------------------------------------------------------------- */

static int part_finished(const rq_part_t *p)
{
    return !p->inst || !p->sent || p->done;
}

void router_abort_part(router_t *r, router_request_t *rq, rq_part_t *part)
{
    if (part->inst && part->sent && !part->done && part->inst->alive)
        router_send_instance(r, part->inst, BATON__METHOD__ABORT, rq->id, NULL);
}

/* The part's ASSIGN becomes its instance's probe (router_place). */
static void probe_hold(rq_part_t *part)
{
    part->probe = 1;
    part->inst->probe_out = 1;
}

int router_probe_drop(rq_part_t *part)
{
    if (!part->probe)
        return 0;
    part->probe = 0;
    part->inst->probe_out = 0;
    return 1;
}

void router_probe_answered(router_t *r, rq_part_t *part)
{
    if (router_probe_drop(part))
        r->queue_dirty = 1;
}

void router_detach_parts(router_request_t *rq)
{
    rq_part_t *parts[2] = {&rq->prefill, &rq->decode};
    for (int i = 0; i < 2; i++) {
        router_probe_drop(parts[i]);
        if (parts[i]->inst)
            parts[i]->inst->n_active--;
        memset(parts[i], 0, sizeof *parts[i]);
    }
}

/* Undoes a placement: ABORT to what was sent, forget the instances and held-back chunks. */
static void retract(router_t *r, router_request_t *rq)
{
    router_abort_part(r, rq, &rq->prefill);
    router_abort_part(r, rq, &rq->decode);
    router_detach_parts(rq);
    router_request_drop_pending(rq);
    rq->pair = 0;
}

void router_place_elsewhere(router_t *r, router_request_t *rq, router_instance_t *inst, int unsent)
{
    if (unsent)
        bt_warn("req %llu: cannot send ASSIGN to %s; trying elsewhere", (unsigned long long)rq->id,
                inst->name);
    if (inst)
        inst->full = 1;
    retract(r, rq);
    requeue(r, rq);
    r->queue_dirty = 1;
}

/* --- placement ----------------------------------------------------------------------- */

static int build_cands(router_t *r, router_cands_t *c)
{
    int n = router_instances_count(r->inst);
    if (r->cand_cap < 3 * n) {
        router_instance_t **v = bt_realloc(r->cands, (size_t)(3 * n) * sizeof *v);
        if (!v)
            return BT_ERR_NOMEM;
        r->cands = v;
        r->cand_cap = 3 * n;
    }
    *c = (router_cands_t){
        .prefill = r->cands, .decode = r->cands + n, .colocated = r->cands + 2 * n};
    for (int i = 0; i < n; i++) {
        router_instance_t *x = router_instances_at(r->inst, i);
        if (!router_instance_eligible(x))
            continue;
        if (x->role == BATON__ROLE__PREFILL)
            c->prefill[c->n_prefill++] = x;
        else if (x->role == BATON__ROLE__DECODE)
            c->decode[c->n_decode++] = x;
        else if (x->role == BATON__ROLE__COLOCATED)
            c->colocated[c->n_colocated++] = x;
    }
    return BT_OK;
}

int router_send_assign(router_t *r, router_request_t *rq, rq_part_t *part, Baton__Role role,
                       int replica, const router_instance_t *peer, Baton__KvReservation *resv)
{
    Baton__Assignment a = BATON__ASSIGNMENT__INIT;
    a.part = role;
    a.replica = replica;
    a.prompt_ids = (int32_t *)rq->prompt;
    a.n_prompt_ids = rq->n_prompt;
    a.max_tokens = rq->max_tokens;
    a.sampling = rq->req->sampling;
    a.return_text = rq->return_text && !rq->make_text;
    if (peer) {
        a.peer_instance = (char *)peer->name;
        a.peer_kvx_address.len = peer->kvx_len;
        a.peer_kvx_address.data = peer->kvx_address;
    }
    a.reservation = resv;
    a.skip_tokens = rq->n_out;
    a.issued_ns = rq->issued_ns;
    int st = router_send_instance(r, part->inst, BATON__METHOD__ASSIGN, rq->id, &a.base);
    if (st == BT_OK) {
        part->sent = 1;
        router_instance_note_assign(part->inst, replica ? 0 : rq->n_prompt);
    }
    return st;
}

static void attach(rq_part_t *part, router_instance_t *inst, char *name)
{
    part->inst = inst;
    inst->n_active++;
    memcpy(name, inst->name, ROUTER_INSTANCE_NAME_MAX); /* both NUL-terminated in this size */
}

/* Places rq on an AcceLLM pair (router_pair.c); probe as in router_place, held by the owner. */
static void place_pair(router_t *r, router_request_t *rq, int probe)
{
    router_instance_t *owner, *holder;
    if (router_pair_place(r, &owner, &holder) != BT_OK)
        return; /* stays queued */
    router_reqtable_rekey(r->table, rq, r->next_id++);
    rq->pair = 1;
    rq->colocated = 0;
    attach(&rq->decode, owner, rq->decode_name);
    memcpy(rq->prefill_name, rq->decode_name, sizeof rq->prefill_name);
    if (holder) {
        rq->prefill.inst = holder;
        holder->n_active++;
    }
    if (probe)
        probe_hold(&rq->decode);
    set_timed(r, rq, RQ_ASSIGNING, r->p.dead_after_ms);
    bt_debug("req %llu: placed on pair member %s%s%s", (unsigned long long)rq->id, owner->name,
             holder ? ", replica on " : "", holder ? holder->name : "");
    if (router_pair_start(r, rq) != BT_OK) /* the holder is told first, if there is one */
        router_place_elsewhere(r, rq, holder ? holder : owner, 1);
}

/* probe: rq comes from the router's queue, where requests wait only while instances have no
 * room (or none is there). Until the instance answers this ASSIGN it gets no other, so that a
 * request that fits cannot overtake an older one that did not (refused again at every try, the
 * older one would wait until its queue timeout): the queue stays first come, first served. That
 * costs a round trip per placement, and only while requests queue. */
void router_place(router_t *r, router_request_t *rq, int probe)
{
    router_cands_t c;
    router_placement_t pl;
    if (r->mode == ROUTER_MODE_AUTO && router_pairs_present(r)) {
        place_pair(r, rq, probe);
        return;
    }
    router_job_t job = {rq->n_prompt, rq->max_tokens, rq->slo_ttft_ms, rq->slo_tpot_ms};
    if (build_cands(r, &c) != BT_OK ||
        router_policy_place(r->policy, r->mode, &c, &job, &pl) != BT_OK)
        return; /* stays queued */
    router_reqtable_rekey(r->table, rq, r->next_id++);
    rq->colocated = pl.colocated;
    attach(&rq->decode, pl.decode, rq->decode_name);
    if (pl.prefill)
        attach(&rq->prefill, pl.prefill, rq->prefill_name);
    else
        memcpy(rq->prefill_name, rq->decode_name, sizeof rq->prefill_name);
    set_timed(r, rq, RQ_ASSIGNING, r->p.dead_after_ms);
    bt_debug("req %llu (client %llu): placed on %s%s%s, predicted ttft %.1f ms tpot %.2f ms",
             (unsigned long long)rq->id, (unsigned long long)rq->client_req_id, rq->decode_name,
             pl.prefill ? " after " : "", pl.prefill ? rq->prefill_name : "", pl.ttft_ms,
             pl.tpot_ms);
    Baton__Role role = pl.colocated ? BATON__ROLE__COLOCATED : BATON__ROLE__DECODE;
    if (router_send_assign(r, rq, &rq->decode, role, 0, pl.prefill, NULL) != BT_OK) {
        router_place_elsewhere(r, rq, pl.decode, 1);
        return;
    }
    if (probe)
        probe_hold(&rq->decode);
}

void router_dispatch_queue(router_t *r)
{
    r->queue_dirty = 0;
    while (r->queue.head) {
        router_request_t *rq = r->queue.head;
        router_place(r, rq, 1);
        if (rq->state == RQ_QUEUED)
            break; /* every request needs the same kinds of instance: the rest would wait too */
    }
}

/* The decode part accepted: send the prefill part its ASSIGN with the reservation (borrowed
 * from the reply for the send). */
void router_decode_accepted(router_t *r, router_request_t *rq, const Baton__AssignReply *reply)
{
    rq->decode.accepted = 1;
    if (rq->colocated) {
        set_running(r, rq);
        return;
    }
    rq->deadline_ms = r->now_ms + (uint64_t)r->p.dead_after_ms; /* now the prefill's turn */
    if (router_send_assign(r, rq, &rq->prefill, BATON__ROLE__PREFILL, 0, rq->decode.inst,
                           reply->reservation) != BT_OK) {
        rq->prefill.inst->full = 1;
        retract(r, rq);
        requeue(r, rq);
        r->queue_dirty = 1;
    }
}

/* An instance refused a part: NOSPACE and DRAINING are back-pressure (try again, elsewhere or
 * later); any other refusal counts as a failed attempt. A decode instance that cannot reach its
 * prefill peer (PEER: dead or restarted, and not yet noticed here) gives that prefill no new
 * work until it heartbeats again, so that the failover does not spend every retry on it. */
void router_refused(router_t *r, router_request_t *rq, router_instance_t *inst, int status,
                    const char *why)
{
    if (status == BT_ERR_NOSPACE)
        inst->full = 1;
    else if (status == BT_ERR_DRAINING)
        inst->draining = 1;
    else if (status == BT_ERR_PEER && !rq->pair && !rq->colocated && inst == rq->decode.inst &&
             rq->prefill.inst)
        rq->prefill.inst->full = 1;
    if (status != BT_ERR_NOSPACE && status != BT_ERR_DRAINING) {
        router_failover(r, rq, status, why);
        return;
    }
    bt_debug("req %llu: %s refused (%s); queued", (unsigned long long)rq->id, inst->name,
             bt_status_name(status));
    retract(r, rq);
    requeue(r, rq);
    r->queue_dirty = 1;
}

void router_failover(router_t *r, router_request_t *rq, int status, const char *why)
{
    retract(r, rq);
    rq->retries++;
    r->n_failovers++;
    if (rq->cancel_requested || rq->client_gone) {
        router_finish(r, rq, BATON__FINISH_REASON__FINISH_CANCELLED, BT_OK, "cancelled");
        return;
    }
    if (rq->retries > (uint32_t)r->p.max_retries) {
        char msg[192];
        snprintf(msg, sizeof msg, "gave up after %u failovers: %s", rq->retries - 1, why);
        router_finish(r, rq, BATON__FINISH_REASON__FINISH_FAILED,
                      status < 0 ? status : BT_ERR_UNAVAILABLE, msg);
        return;
    }
    bt_warn("req %llu (client %llu): failover %u (%s), %u tokens delivered",
            (unsigned long long)rq->id, (unsigned long long)rq->client_req_id, rq->retries, why,
            rq->n_out);
    rq->wait_deadline_ms = r->now_ms + (uint64_t)r->p.failover_timeout_ms;
    requeue(r, rq);
    router_place(r, rq, r->queue.n > 1); /* a probe when others wait behind it */
}

/* --- the end of a request ------------------------------------------------------------ */

static void send_result(router_t *r, router_request_t *rq)
{
    Baton__LifetimeEvent *ev = bt_calloc((size_t)rq->n_events + 1, sizeof *ev);
    Baton__LifetimeEvent **evp = bt_calloc((size_t)rq->n_events + 1, sizeof *evp);
    Baton__GenerateResult res = BATON__GENERATE_RESULT__INIT;
    res.finish_reason = rq->finish;
    res.ids = rq->out;
    res.n_ids = rq->n_out;
    if (rq->return_text && rq->text)
        res.text = (ProtobufCBinaryData){rq->text_len, (uint8_t *)rq->text};
    res.n_prompt_tokens = rq->n_prompt;
    res.n_output_tokens = rq->n_out;
    for (int i = 0; ev && evp && i < rq->n_events; i++) {
        baton__lifetime_event__init(&ev[i]);
        ev[i].kind = rq->events[i].kind;
        ev[i].time_ns = rq->events[i].time_ns;
        ev[i].instance = rq->events[i].instance;
        ev[i].code = rq->events[i].code;
        evp[i] = &ev[i];
        res.n_events = (size_t)i + 1;
    }
    res.events = evp;
    res.prefill_instance = rq->prefill_name;
    res.decode_instance = rq->decode_name;
    res.retries = rq->retries;
    router_send_client(r, rq, BATON__METHOD__RESULT, rq->status,
                       rq->status != BT_OK ? rq->error : NULL, &res.base);
    bt_free(ev);
    bt_free(evp);
}

void router_finish(router_t *r, router_request_t *rq, Baton__FinishReason reason, int status,
                   const char *why)
{
    rq->finish = reason;
    rq->status = status;
    if (status != BT_OK && why)
        snprintf(rq->error, sizeof rq->error, "%s", why);
    router_abort_part(r, rq, &rq->prefill);
    router_abort_part(r, rq, &rq->decode);
    router_detach_parts(rq);
    if (!rq->client_gone) {
        rq_relay_t tail = {.first = rq->n_out, .text_from = router_request_flush_text(rq)};
        router_relay(r, rq, &tail, 0);
        int kind = reason == BATON__FINISH_REASON__FINISH_CANCELLED ? BATON__EVENT_KIND__CANCELLED
                   : reason == BATON__FINISH_REASON__FINISH_FAILED  ? BATON__EVENT_KIND__FAILED
                                                                    : BATON__EVENT_KIND__FINISHED;
        router_request_event(rq, kind, bt_rpc_now_ns(), "router", status);
        router_request_sort_events(rq);
        send_result(r, rq);
    }
    if (reason == BATON__FINISH_REASON__FINISH_FAILED) {
        r->n_failed++;
        bt_warn("req %llu (client %llu): failed: %s: %s", (unsigned long long)rq->id,
                (unsigned long long)rq->client_req_id, bt_status_name(status), rq->error);
    } else if (reason == BATON__FINISH_REASON__FINISH_CANCELLED) {
        r->n_cancelled++;
    } else if (r->metrics) {
        router_stats_observe(r, rq, bt_rpc_now_ns());
    }
    r->n_finished++;
    rq_list_remove(r, rq);
    r->n_state[rq->state]--;
    router_reqtable_remove(r->table, rq);
    router_request_destroy(rq);
}

void router_cancel(router_t *r, router_request_t *rq)
{
    rq->cancel_requested = 1;
    if (rq->state == RQ_CANCELLING || rq->state == RQ_FINISHING)
        return;
    if (part_finished(&rq->prefill) && part_finished(&rq->decode)) {
        router_finish(r, rq, BATON__FINISH_REASON__FINISH_CANCELLED, BT_OK, "cancelled");
        return;
    }
    router_abort_part(r, rq, &rq->prefill);
    router_abort_part(r, rq, &rq->decode);
    set_timed(r, rq, RQ_CANCELLING, r->p.dead_after_ms);
}

void router_relay(router_t *r, router_request_t *rq, const rq_relay_t *rel, uint64_t time_ns)
{
    if (rq->client_gone || rq->state == RQ_CANCELLING ||
        (rel->n == 0 && rq->text_len == rel->text_from))
        return;
    if (rel->n && r->metrics) { /* only the metrics endpoint reads them */
        rq->last_ns = bt_rpc_now_ns();
        rq->first_ns = rq->first_ns ? rq->first_ns : rq->last_ns;
    }
    Baton__TokenChunk tc = BATON__TOKEN_CHUNK__INIT;
    tc.ids = rel->n ? rq->out + rel->first : NULL;
    tc.n_ids = rel->n;
    tc.index = rel->first;
    tc.time_ns = time_ns;
    if (rq->return_text && rq->text)
        tc.text = (ProtobufCBinaryData){rq->text_len - rel->text_from,
                                        (uint8_t *)rq->text + rel->text_from};
    router_send_client(r, rq, BATON__METHOD__TOKENS, BT_OK, NULL, &tc.base);
}

/* Ends a request whose last part is done once nothing more is owed to it. */
void router_check_finished(router_t *r, router_request_t *rq)
{
    int parts_done = part_finished(&rq->prefill) && part_finished(&rq->decode);
    if (rq->state == RQ_CANCELLING && parts_done)
        router_finish(r, rq, BATON__FINISH_REASON__FINISH_CANCELLED, BT_OK, "cancelled");
    else if (rq->state == RQ_FINISHING && parts_done && rq->n_out >= rq->n_expected)
        router_finish(r, rq, rq->finish, BT_OK, NULL);
}

/* Something due in the timed list. */
static void timed_out(router_t *r, router_request_t *rq)
{
    char msg[160];
    switch (rq->state) {
    case RQ_ASSIGNING: {
        rq_part_t *p = rq->decode.accepted ? &rq->prefill : &rq->decode;
        bt_warn("req %llu: no ASSIGN_REPLY from %s within %d ms; trying elsewhere",
                (unsigned long long)rq->id, p->inst ? p->inst->name : "?", r->p.dead_after_ms);
        router_place_elsewhere(r, rq, p->inst, 0);
        break;
    }
    case RQ_CANCELLING:
        router_finish(r, rq, BATON__FINISH_REASON__FINISH_CANCELLED, BT_OK, "cancelled");
        break;
    case RQ_FINISHING:
        if (rq->n_out >= rq->n_expected) {
            router_finish(r, rq, rq->finish, BT_OK, NULL);
            break;
        }
        /* Every part said DONE but tokens never came (lost with a daemon that died after its
         * DONE left, say): run it again from what the client has; the replay gives the same
         * tokens (greedy, or sampling seeded by position). */
        snprintf(msg, sizeof msg, "stream incomplete: %u of %u tokens arrived", rq->n_out,
                 rq->n_expected);
        router_failover(r, rq, BT_ERR_INTERNAL, msg);
        break;
    default: break;
    }
}

/* Whether the cluster has instances to serve a request, full or not: a request that waited out
 * its time behind full instances was refused for want of room (BT_ERR_OVERLOADED), not for
 * want of instances (BT_ERR_UNAVAILABLE). */
static int cluster_can_serve(router_t *r)
{
    int prefill = 0, decode = 0;
    for (int i = 0, n = router_instances_count(r->inst); i < n; i++) {
        const router_instance_t *x = router_instances_at(r->inst, i);
        if (!router_instance_serving(x))
            continue;
        if (x->role == BATON__ROLE__COLOCATED)
            return 1;
        prefill |= x->role == BATON__ROLE__PREFILL;
        decode |= x->role == BATON__ROLE__DECODE;
    }
    return (prefill && decode) || router_pairs_present(r);
}

static void wait_expired(router_t *r, router_request_t *rq)
{
    int any = cluster_can_serve(r);
    char msg[160];
    int st = rq->retries == 0 && any ? BT_ERR_OVERLOADED : BT_ERR_UNAVAILABLE;
    snprintf(msg, sizeof msg, "%s within %d ms",
             st == BT_ERR_OVERLOADED ? "no instance had room for it" : "no instance to serve it",
             rq->retries ? r->p.failover_timeout_ms : r->p.queue_timeout_ms);
    router_finish(r, rq, BATON__FINISH_REASON__FINISH_FAILED, st, msg);
}

void router_timeouts(router_t *r, uint64_t now_ms)
{
    for (router_request_t *rq = r->timed.head, *next; rq; rq = next) {
        next = rq->next;
        if (rq->deadline_ms <= now_ms)
            timed_out(r, rq);
    }
    for (router_request_t *rq = r->queue.head, *next; rq; rq = next) {
        next = rq->next;
        if (rq->wait_deadline_ms <= now_ms)
            wait_expired(r, rq);
    }
}
