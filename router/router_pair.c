/* SPDX-License-Identifier: MIT */
/*
 * router_pair.c - the scheduling manager of AcceLLM pairs: placement on pairs, the replica and
 * owner parts of a request, hand-off and resume, failover from a replica, and role switching.
 *
 * A pair request has two parts: decode is the owner (it prefills and decodes and streams), and
 * prefill is the holder of the replica (it receives the prompt's KV and every step's new rows).
 * The holder is assigned first (it answers with a reservation, as a decode instance does), then
 * the owner with that reservation; a holder that has no room only means the request runs
 * without a replica. When the owner hands the request off (it serves prefill now) or dies, the
 * parts swap and the new owner is told to RESUME with the tokens delivered so far: the stream
 * goes on from the next index, without recomputing the prompt.
 *
 * Roles: a pair whose members both decode switches the one with fewer running sequences to
 * prefill as soon as a prompt waits (a prompt assigned since the last heartbeats, one queued at
 * a member, or any in the router's queue); a member that serves prefill with nothing to prefill for
 * pair_idle_ms switches back to decode. Switches of one pair are at least pair_switch_ms apart.
 */
#include <stdio.h>
#include <string.h>

#include "common/log.h"
#include "common/status.h"
#include "router_impl.h"

router_instance_t *router_pair_partner(router_t *r, const router_instance_t *x)
{
    if (x->role != BATON__ROLE__PAIR || !x->partner[0])
        return NULL;
    int n = router_instances_count(r->inst);
    for (int i = 0; i < n; i++) {
        router_instance_t *y = router_instances_at(r->inst, i);
        if (y != x && y->alive && y->role == BATON__ROLE__PAIR && !strcmp(y->name, x->partner) &&
            !strcmp(y->partner, x->name))
            return y;
    }
    return NULL;
}

static uint64_t pair_load(const router_instance_t *x)
{
    return (uint64_t)x->queue_len + x->pend_reqs + x->running;
}

static int send_set_role(router_t *r, router_instance_t *x, router_instance_t *partner,
                         Baton__Role serving)
{
    Baton__SetRole sr = BATON__SET_ROLE__INIT;
    sr.serving = serving;
    if (partner) {
        sr.partner_kvx_address.data = partner->kvx_address;
        sr.partner_kvx_address.len = partner->kvx_len;
    }
    int st = router_send_instance(r, x, BATON__METHOD__SET_ROLE, 0, &sr.base);
    if (st == BT_OK && partner)
        x->told_partner = partner->incarnation + 1;
    return st;
}

static void switch_role(router_t *r, router_instance_t *x, router_instance_t *y, Baton__Role to)
{
    bt_info("pair %s/%s: %s now serves %s", x->name, y->name, x->name,
            to == BATON__ROLE__PREFILL ? "prefill" : "decode");
    if (send_set_role(r, x, y, to) == BT_OK)
        x->serving = to;
    x->last_switch_ms = y->last_switch_ms = r->now_ms; /* a failed send is not retried at once */
}

int router_pairs_present(router_t *r)
{
    int n = router_instances_count(r->inst);
    for (int i = 0; i < n; i++) {
        router_instance_t *x = router_instances_at(r->inst, i);
        if (x->alive && x->role == BATON__ROLE__PAIR)
            return 1;
    }
    return 0;
}

/* Introduces partners (their kvx addresses) and switches roles with the load. */
void router_pairs_tick(router_t *r)
{
    int n = router_instances_count(r->inst);
    for (int i = 0; i < n; i++) {
        router_instance_t *x = router_instances_at(r->inst, i);
        router_instance_t *y = x->alive ? router_pair_partner(r, x) : NULL;
        if (!y)
            continue;
        if (x->told_partner != y->incarnation + 1 && y->kvx_len)
            send_set_role(r, x, y, x->serving ? x->serving : BATON__ROLE__DECODE);
        if (x->seq > y->seq || !router_instance_eligible(x) || !router_instance_eligible(y) ||
            r->now_ms - x->last_switch_ms <
                (uint64_t)(r->p.pair_switch_ms ? r->p.pair_switch_ms : 200))
            continue; /* each pair once, by its first member */
        uint32_t waiting = x->queue_len + y->queue_len + x->pend_prompts + y->pend_prompts +
                           (r->queue.n ? 1u : 0u);
        int xp = x->serving == BATON__ROLE__PREFILL, yp = y->serving == BATON__ROLE__PREFILL;
        if (!xp && !yp && waiting > 0) {
            router_instance_t *to = x->running <= y->running ? x : y;
            switch_role(r, to, to == x ? y : x, BATON__ROLE__PREFILL);
        } else if (xp != yp && waiting == 0) {
            router_instance_t *p = xp ? x : y;
            if (!p->last_assign_ms)
                p->last_assign_ms = r->now_ms; /* idle counts from when it was first seen */
            if (r->now_ms - p->last_assign_ms >=
                (uint64_t)(r->p.pair_idle_ms ? r->p.pair_idle_ms : 1000))
                switch_role(r, p, p == x ? y : x, BATON__ROLE__DECODE);
        }
    }
}

/* Picks the least loaded pair and, in it, the owner (the member serving prefill, else the less
 * busy one) and the holder (NULL for a member whose partner is gone). BT_AGAIN when no pair can
 * take a request (it stays queued). */
int router_pair_place(router_t *r, router_instance_t **owner, router_instance_t **holder)
{
    router_instance_t *bo = NULL, *bh = NULL;
    uint64_t best = UINT64_MAX;
    int n = router_instances_count(r->inst);
    for (int i = 0; i < n; i++) {
        router_instance_t *x = router_instances_at(r->inst, i);
        if (x->role != BATON__ROLE__PAIR || !router_instance_eligible(x))
            continue;
        router_instance_t *y = router_pair_partner(r, x);
        if (y && y->probe_out)
            continue; /* the pair waits for its owner's answer, not only that member */
        int y_ok = y && router_instance_eligible(y);
        if (y_ok && x->seq > y->seq)
            continue; /* each pair once */
        uint64_t load = pair_load(x) + (y_ok ? pair_load(y) : 0);
        if (!y_ok)
            load = 2 * pair_load(x) + 1; /* a lone member: no replica, counts double */
        if (load >= best)
            continue;
        best = load;
        router_instance_t *o = x;
        if (y_ok) {
            int xp = x->serving == BATON__ROLE__PREFILL, yp = y->serving == BATON__ROLE__PREFILL;
            if (yp && !xp)
                o = y;
            else if (xp == yp && pair_load(y) < pair_load(x))
                o = y;
        }
        bo = o;
        bh = y_ok ? (o == x ? y : x) : NULL;
    }
    if (!bo)
        return BT_AGAIN;
    *owner = bo;
    *holder = bh;
    return BT_OK;
}

static int send_pair_assign(router_t *r, router_request_t *rq, rq_part_t *part, int replica,
                            const router_instance_t *peer, Baton__KvReservation *resv)
{
    int st = router_send_assign(r, rq, part, BATON__ROLE__PAIR, replica, peer, resv);
    if (st == BT_OK && !replica) {
        part->inst->last_assign_ms = r->now_ms;
        part->inst->pend_prompts++;
    }
    return st;
}

int router_pair_start(router_t *r, router_request_t *rq)
{
    if (rq->prefill.inst) /* the holder reserves first */
        return send_pair_assign(r, rq, &rq->prefill, 1, rq->decode.inst, NULL);
    return send_pair_assign(r, rq, &rq->decode, 0, NULL, NULL);
}

/* The holder answered: with a reservation, the owner gets it; without (refused), the request
 * runs on the owner alone. */
void router_pair_holder_replied(router_t *r, router_request_t *rq, int status,
                                const Baton__AssignReply *reply)
{
    Baton__KvReservation *resv = status == BT_OK && reply ? reply->reservation : NULL;
    if (status == BT_OK && resv) {
        rq->prefill.accepted = 1;
    } else {
        bt_debug("req %llu: no replica on %s (%s)", (unsigned long long)rq->id,
                 rq->prefill.inst->name, bt_status_name(status));
        if (status == BT_OK) /* accepted without a reservation: give it back */
            router_abort_part(r, rq, &rq->prefill);
        rq->prefill.done = 1;
    }
    rq->deadline_ms = r->now_ms + (uint64_t)r->p.dead_after_ms; /* now the owner's turn */
    if (send_pair_assign(r, rq, &rq->decode, 0, resv ? rq->prefill.inst : NULL, resv) != BT_OK) {
        /* The owner's connection is gone (it died or restarts, and its heartbeats have not yet
         * told): the holder gives its reservation back, and the request is placed again without
         * that member. Sent again and again to it, it would spend every retry in a moment. */
        router_place_elsewhere(r, rq, rq->decode.inst, 1);
    }
}

/* Tells the owner (decode part) to continue from its replica after the tokens delivered. */
static void send_resume(router_t *r, router_request_t *rq)
{
    Baton__Resume res = BATON__RESUME__INIT;
    res.output_ids = rq->out;
    res.n_output_ids = rq->n_out;
    rq->decode.accepted = 0; /* until its RESUME reply */
    if (router_send_instance(r, rq->decode.inst, BATON__METHOD__RESUME, rq->id, &res.base) !=
        BT_OK) {
        rq->decode.inst->full = 1; /* unreachable: the failover places it elsewhere */
        router_failover(r, rq, BT_ERR_UNAVAILABLE, "cannot send RESUME");
    }
}

/* The parts swap: the holder becomes the owner and is told to resume; the old owner (if it is
 * alive, it keeps the KV as a replica) becomes the holder. */
static void swap_and_resume(router_t *r, router_request_t *rq, int old_owner_alive)
{
    rq_part_t old = rq->decode;
    rq->decode = rq->prefill;
    rq->decode.streamed = 0;
    rq->decode.done = 0;
    if (old_owner_alive) {
        rq->prefill = old;
        rq->prefill.streamed = 0;
    } else {
        if (old.inst)
            old.inst->n_active--;
        router_probe_drop(&old);
        memset(&rq->prefill, 0, sizeof rq->prefill);
    }
    memcpy(rq->decode_name, rq->decode.inst->name, ROUTER_INSTANCE_NAME_MAX);
    send_resume(r, rq);
}

static int holder_usable(const router_request_t *rq)
{
    const rq_part_t *h = &rq->prefill;
    return h->inst && h->inst->alive && h->sent && h->accepted && !h->done;
}

/* HANDOFF from the owner: it stopped after n tokens and keeps the KV. */
void router_pair_on_handoff(router_t *r, router_request_t *rq, uint32_t n_tokens)
{
    if (rq->state != RQ_RUNNING && rq->state != RQ_ASSIGNING)
        return;
    if (rq->n_out < n_tokens || rq->n_out == 0) {
        router_failover(r, rq, BT_ERR_INTERNAL, "hand-off before its tokens arrived");
        return;
    }
    if (!holder_usable(rq)) { /* nobody else has the KV: the owner goes on itself */
        send_resume(r, rq);
        return;
    }
    if (rq->state == RQ_ASSIGNING) {
        rq_list_remove(r, rq);
        rq_set_state(r, rq, RQ_RUNNING);
    }
    swap_and_resume(r, rq, 1);
}

/* The owner died: resume on the replica when there is one. Returns 1 if it did. */
int router_pair_owner_lost(router_t *r, router_request_t *rq)
{
    if (!rq->pair || rq->state != RQ_RUNNING || rq->n_out == 0 || !holder_usable(rq) ||
        rq->cancel_requested || rq->client_gone)
        return 0;
    bt_warn("req %llu (client %llu): owner %s lost; resuming on the replica at %s after %u tokens",
            (unsigned long long)rq->id, (unsigned long long)rq->client_req_id,
            rq->decode.inst->name, rq->prefill.inst->name, rq->n_out);
    rq->retries++;
    r->n_failovers++;
    router_request_drop_pending(rq);
    swap_and_resume(r, rq, 0);
    return 1;
}
