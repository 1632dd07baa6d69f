/* SPDX-License-Identifier: MIT */
/*
 * sim_pairs.c - AcceLLM pairs in the simulator (DESIGN.md section 5): instances 2k and 2k + 1
 * form pair k; each member holds the full weights, runs a continuous batcher and serves prefill
 * or decode as the router says. The rules are the router's pair manager's (router/router_pair.c)
 * and the pair daemon's (pair/pair.c):
 *  - placement: the pair with the least load, a member's load being queue_len + pend_reqs +
 *    running (request counts) as the router sees them: queue and running as of the member's last
 *    heartbeat, pend_reqs the assignments (owner and replica ones) sent to it since;
 *  - in the pair the owner is the member serving prefill if exactly one does, else the less
 *    loaded one; its partner, the holder, reserves the KV first and refuses without room (the
 *    request then runs on the owner alone); the owner gets its assignment a round trip later;
 *  - the owner prefills; after the first token it ships the prompt's KV to the holder, and after
 *    every forward each step's new rows. An owner serving prefill runs prompts alone and hands
 *    each request off after its first token: the holder resumes it a round trip later, once the
 *    prompt's KV is there, and the old owner keeps its copy as the replica. An owner serving
 *    decode decodes the request itself, prompts joining its running batch;
 *  - on the router's ticks: if neither member serves prefill and a prompt waits (queue_len of
 *    both plus the prompts, not replicas, assigned since their heartbeats), the one with fewer
 * running sequences turns to prefill and, at its next batch boundary, hands off everything it
 * decodes; if one serves prefill, nothing waits and it was last given a prompt idle_ms ago, it
 * turns to decode (nothing moves). Switches of one pair are switch_ms apart;
 *  - memory: every copy is reserved for the whole sequence (as elsewhere in the simulator);
 *    before each iteration a member drops complete replicas, oldest first, while its waiting
 *    prompts do not fit, and a holder refuses a replica that would leave them no room.
 * The one thing to know: a request is owned by exactly one member at a time (preq.own), whose
 * queue, batch or ready list holds it, or which a RESUME event is on its way to.
 */
#include <math.h>

#include "common/alloc.h"
#include "common/btassert.h"
#include "common/status.h"
#include "sim_impl.h"

/* --- the router's view ----------------------------------------------------------------------- */

static int32_t queue_len(const sim_inst_t *x)
{
    return (int32_t)(x->queue.len + x->ready.len);
}

static int32_t running(const sim_inst_t *x)
{
    return x->lanes[0].n_seqs + (int32_t)x->lanes[0].prefill.len;
}

/* Brings member i's reported state up to its last heartbeat. State only changes at events, so
 * the state a heartbeat at t reported is the state before the first event after t: call this
 * before anything changes member i's queue or batch. */
static void hb_sync(sim_t *s, int i)
{
    sim_inst_t *x = &s->inst[i];
    if (!(s->pp.heartbeat_ms > 0))
        return;
    double t = floor(s->now / s->pp.heartbeat_ms) * s->pp.heartbeat_ms;
    if (x->hb_ms < t) {
        x->hb_ms = t;
        x->hb_queue = queue_len(x);
        x->hb_running = running(x);
        x->pend = 0;
        x->pend_prompts = 0;
    }
}

static int64_t seen_waiting(const sim_t *s, const sim_inst_t *x)
{
    return s->pp.heartbeat_ms > 0 ? (int64_t)x->hb_queue + x->pend : queue_len(x);
}

/* Prompts waiting here as the router sees them (replica assignments are not prompts). */
static int64_t seen_prompts(const sim_t *s, const sim_inst_t *x)
{
    return s->pp.heartbeat_ms > 0 ? (int64_t)x->hb_queue + x->pend_prompts : queue_len(x);
}

static int64_t seen_running(const sim_t *s, const sim_inst_t *x)
{
    return s->pp.heartbeat_ms > 0 ? x->hb_running : running(x);
}

static int64_t seen_load(const sim_t *s, const sim_inst_t *x)
{
    return seen_waiting(s, x) + seen_running(s, x);
}

/* --- memory ---------------------------------------------------------------------------------- */

/* Drops the list entries of replicas no longer held there, when they are most of the list. */
static void replicas_compact(sim_t *s, int i)
{
    sim_inst_t *x = &s->inst[i];
    size_t n = x->replicas.len;
    for (size_t j = 0; j < n; j++) {
        uint32_t r = sim_fifo_pop(&x->replicas);
        if (s->preq[r].rep == i && s->preq[r].listed)
            sim_fifo_push(s, &x->replicas, r);
    }
}

/* r's replica is complete: it joins the end of its holder's list and may be dropped. */
static void replica_list(sim_t *s, uint32_t r)
{
    sim_preq_t *e = &s->preq[r];
    sim_inst_t *x = &s->inst[e->rep];
    e->listed = 1;
    x->n_replicas++;
    sim_fifo_push(s, &x->replicas, r);
    if (x->replicas.len > 2 * (size_t)x->n_replicas + 64)
        replicas_compact(s, e->rep);
}

static void replica_free(sim_t *s, uint32_t r)
{
    sim_preq_t *e = &s->preq[r];
    if (e->rep < 0)
        return;
    s->inst[e->rep].kv_used -= e->kv;
    if (e->listed)
        s->inst[e->rep].n_replicas--;
    e->rep = -1;
    e->listed = 0;
}

/* pr_make_room: drops complete replicas held by member i, oldest first, until need more tokens
 * fit there (or none is left). */
static void make_room(sim_t *s, int i, int64_t need)
{
    sim_inst_t *x = &s->inst[i];
    while (!sim_fits(x, need) && x->n_replicas > 0) {
        uint32_t r = sim_fifo_pop(&x->replicas);
        if (s->preq[r].rep == i && s->preq[r].listed) {
            replica_free(s, r);
            s->n_dropped++;
        }
    }
}

/* --- hand-offs ------------------------------------------------------------------------------- */

/* The prompt's KV leaves member i for its partner after the first token, one ship at a time per
 * member. Returns when it has arrived. */
static double ship(sim_t *s, int i, uint32_t r)
{
    sim_inst_t *x = &s->inst[i];
    double start = fmax(s->now, x->link_free_ms);
    x->link_free_ms = start + sim_transfer_ms(s, x, &s->inst[x->partner], s->req[r].prompt);
    s->preq[r].shipped = 1;
    return x->link_free_ms;
}

/* Member i hands r off (pr_handoff): with a live replica the parts swap, the holder is told to
 * RESUME once the round trip is over and the KV is there (kv_ms), and i keeps its copy as the
 * replica; without one the router tells i itself to resume it. */
static void hand_off(sim_t *s, int i, uint32_t r, double kv_ms)
{
    sim_preq_t *e = &s->preq[r];
    int to = i;
    if (e->rep >= 0) {
        to = e->rep;
        if (e->listed) {
            s->inst[to].n_replicas--;
            e->listed = 0;
        }
        e->rep = i;
        e->own = to;
        replica_list(s, r);
    }
    s->n_moved++;
    sim_ev_push(s, fmax(s->now + s->pp.rtt_ms, kv_ms), SIM_EV_PAIR_RESUME, r, (uint32_t)to);
}

/* Takes every sequence out of the batch into s->buf, with its context and steps left. Returns
 * the count. */
static int32_t lane_take(sim_t *s, sim_lane_t *l)
{
    int32_t n = 0;
    while (l->n_fin > 0) {
        int64_t step = l->fin[0].step;
        uint32_t r = sim_fin_pop(l);
        const sim_req_t *q = &s->req[r];
        sim_preq_t *e = &s->preq[r];
        e->left = (int32_t)(step - l->step);
        e->ctx = q->prompt + q->output - e->left;
        s->buf[n++] = r;
    }
    l->n_seqs = 0;
    l->sum_ctx = 0;
    return n;
}

static void lane_put(sim_t *s, sim_lane_t *l, uint32_t r)
{
    const sim_preq_t *e = &s->preq[r];
    l->n_seqs++;
    l->sum_ctx += e->ctx;
    sim_fin_push(s, l, l->step + e->left, r);
}

/* Member i turned to prefill (pr_handoff_all): every sequence it decodes whose KV it shipped
 * leaves the batch; the others stay and are decoded between prompt batches. */
static void hand_off_all(sim_t *s, int i)
{
    sim_lane_t *l = &s->inst[i].lanes[0];
    int32_t n = lane_take(s, l);
    for (int32_t j = 0; j < n; j++) {
        uint32_t r = s->buf[j];
        if (s->preq[r].shipped)
            hand_off(s, i, r, s->now);
        else
            lane_put(s, l, r);
    }
}

/* --- the members ----------------------------------------------------------------------------- */

static void arm(sim_t *s, int k);

/* A forward of n prompts (their lengths' sum and sum of squares) together with the batch's
 * decode step when it steps: the step shares the forward's fixed cost. */
static double forward_ms(const sim_t *s, const sim_inst_t *x, double sum, double sum2, uint32_t n,
                         int stepping)
{
    const sim_lane_t *l = &x->lanes[0];
    double t = n > 0 ? sim_prefill_ms(x, sum, sum2, n) : 0;
    if (stepping) {
        double d = bt_profile_decode_ms(x->spec->profile, l->sum_ctx, l->n_seqs) + s->pp.step_ms;
        t += n > 0 ? fmax(0, d - x->spec->profile->decode.a_ms) : d;
    }
    return t;
}

/* Member i at a batch boundary: the router's role takes effect, replicas make room for the
 * waiting prompts, resumed sequences join, and the next forward is planned as the decode
 * scheduler does (FCFS prompts within the token budget, the batch limit and memory; serving
 * prefill, an iteration that admits prompts runs them alone). */
static void lane_run(sim_t *s, int i)
{
    sim_inst_t *x = &s->inst[i];
    sim_lane_t *l = &x->lanes[0];
    const pl_inst_spec_t *sp = x->spec;
    if (l->busy)
        return;
    hb_sync(s, i);
    if (x->applied != x->serving) {
        x->applied = x->serving;
        if (x->applied == PL_ROLE_PREFILL)
            hand_off_all(s, i);
    }
    int pf = x->applied == PL_ROLE_PREFILL;
    make_room(s, i, x->queued_kv);
    int32_t limit = sp->max_batch_seqs > 0 ? sp->max_batch_seqs : INT32_MAX;
    while (x->ready.len > 0 && l->n_seqs < limit)
        lane_put(s, l, sim_fifo_pop(&x->ready));
    double tokens =
        sp->max_batch_tokens > 0 ? sp->max_batch_tokens - (pf ? 0 : l->n_seqs) : INFINITY;
    int alone_ok = pf || l->n_seqs == 0;
    double sum = 0, sum2 = 0;
    uint32_t n = 0;
    while (x->queue.len > 0 && l->n_seqs + (int64_t)n < limit) {
        uint32_t r = sim_fifo_peek(&x->queue);
        const sim_req_t *q = &s->req[r];
        sim_preq_t *e = &s->preq[r];
        if ((q->prompt > tokens && !(alone_ok && n == 0)) || !sim_fits(x, e->kv))
            break;
        sim_fifo_pop(&x->queue);
        x->kv_used += e->kv;
        x->queued_kv -= e->kv;
        e->own = i;
        sim_fifo_push(s, &l->prefill, r);
        tokens -= fmin(q->prompt, tokens);
        sum += q->prompt;
        sum2 += (double)q->prompt * q->prompt;
        n++;
    }
    int stepping = l->n_seqs > 0 && !(pf && n > 0);
    if (n == 0 && !stepping)
        return;
    l->busy = 1;
    l->in_prefill = n > 0;
    l->stepping = stepping;
    sim_ev_push(s, s->now + forward_ms(s, x, sum, sum2, n, stepping), SIM_EV_PAIR_LANE_DONE,
                (uint32_t)i, 0);
}

/* r is done on member i: its KV and its replica are freed. */
static void finish(sim_t *s, int i, uint32_t r)
{
    sim_preq_t *e = &s->preq[r];
    s->inst[i].kv_used -= e->kv;
    replica_free(s, r);
    e->own = -1;
    s->req[r].d = i;
    sim_finish(s, r);
}

static void kick(sim_t *s, int k)
{
    lane_run(s, 2 * k);
    lane_run(s, 2 * k + 1);
    arm(s, k);
}

static void on_lane_done(sim_t *s, int i)
{
    sim_inst_t *x = &s->inst[i];
    sim_lane_t *l = &x->lanes[0];
    hb_sync(s, i);
    l->busy = 0;
    if (l->stepping) {
        l->step++;
        l->sum_ctx += l->n_seqs; /* every sequence gained a token */
        while (l->n_fin > 0 && l->fin[0].step <= l->step) {
            uint32_t r = sim_fin_pop(l);
            const sim_req_t *q = &s->req[r];
            l->n_seqs--;
            l->sum_ctx -= (double)q->prompt + q->output;
            finish(s, i, r);
        }
        if (l->n_seqs == 0)
            l->sum_ctx = 0;
    }
    while (l->prefill.len > 0) {
        uint32_t r = sim_fifo_pop(&l->prefill);
        const sim_req_t *q = &s->req[r];
        sim_preq_t *e = &s->preq[r];
        sim_first_token(s, r);
        if (q->output <= 1) {
            finish(s, i, r);
            continue;
        }
        e->ctx = q->prompt + 1;
        e->left = q->output - 1;
        double kv_ms = e->rep >= 0 ? ship(s, i, r) : s->now;
        if (x->applied == PL_ROLE_PREFILL && e->rep >= 0) {
            hand_off(s, i, r, kv_ms);
            continue;
        }
        if (e->rep >= 0)
            replica_list(s, r);
        lane_put(s, l, r);
    }
    l->in_prefill = l->stepping = 0;
    kick(s, x->pair);
}

/* The owner's assignment arrives (router_pair_holder_replied). */
static void assign(sim_t *s, uint32_t r, int i)
{
    sim_inst_t *x = &s->inst[i];
    hb_sync(s, i);
    if (s->pp.heartbeat_ms > 0) {
        x->pend++;
        x->pend_prompts++;
    }
    x->last_assign_ms = s->now;
    sim_fifo_push(s, &x->queue, r);
    x->queued_kv += s->preq[r].kv;
    kick(s, x->pair);
}

/* --- the router's pair manager --------------------------------------------------------------- */

static double tick_at(const sim_t *s, double t)
{
    return ceil(t / s->pp.tick_ms - 1e-9) * s->pp.tick_ms;
}

/* Schedules the first router tick at which pair k's rules may act, given what the router sees
 * now and what it will see at the next heartbeat; a tick that finds nothing to do arms again. */
static void arm(sim_t *s, int k)
{
    sim_pair_t *pr = &s->pair[k];
    sim_inst_t *x = &s->inst[2 * k], *y = &s->inst[2 * k + 1];
    double hb = s->pp.heartbeat_ms, next_hb = hb > 0 ? (floor(s->now / hb) + 1) * hb : INFINITY;
    double gap_ok = pr->last_switch_ms + s->pp.switch_ms, t = INFINITY;
    int64_t seen = seen_prompts(s, x) + seen_prompts(s, y);
    int64_t real = (int64_t)queue_len(x) + queue_len(y);
    int xp = x->serving == PL_ROLE_PREFILL, yp = y->serving == PL_ROLE_PREFILL;
    if (!xp && !yp) {
        if (seen > 0)
            t = fmax(s->now, gap_ok);
        else if (real > 0)
            t = fmax(next_hb, gap_ok);
    } else if (xp != yp) {
        const sim_inst_t *p = xp ? x : y;
        double idle_ok =
            fmax(gap_ok, p->last_assign_ms < 0 ? s->now : p->last_assign_ms + s->pp.idle_ms);
        if (seen == 0)
            t = fmax(s->now, idle_ok);
        else if (real == 0)
            t = fmax(next_hb, idle_ok);
    }
    if (isinf(t))
        return;
    t = tick_at(s, t);
    if (t < pr->check_ms) {
        pr->check_ms = t;
        sim_ev_push(s, t, SIM_EV_PAIR_CHECK, (uint32_t)k, 0);
    }
}

static void switch_role(sim_t *s, int k, int i, pl_role_t to)
{
    s->inst[i].serving = to;
    s->pair[k].last_switch_ms = s->now;
    s->n_switches++;
}

/* A router tick for pair k (router_pairs_tick). */
static void tick(sim_t *s, int k)
{
    sim_pair_t *pr = &s->pair[k];
    int a = 2 * k, b = a + 1;
    sim_inst_t *x = &s->inst[a], *y = &s->inst[b];
    hb_sync(s, a);
    hb_sync(s, b);
    if (s->now - pr->last_switch_ms < s->pp.switch_ms - 1e-9)
        return;
    int64_t waiting = seen_prompts(s, x) + seen_prompts(s, y);
    int xp = x->serving == PL_ROLE_PREFILL, yp = y->serving == PL_ROLE_PREFILL;
    if (!xp && !yp && waiting > 0) {
        switch_role(s, k, seen_running(s, x) <= seen_running(s, y) ? a : b, PL_ROLE_PREFILL);
    } else if (xp != yp && waiting == 0) {
        sim_inst_t *p = xp ? x : y;
        if (p->last_assign_ms < 0)
            p->last_assign_ms = s->now; /* idle counts from when it was first seen */
        if (s->now - p->last_assign_ms >= s->pp.idle_ms - 1e-9)
            switch_role(s, k, xp ? a : b, PL_ROLE_DECODE);
    }
}

/* router_pair_place: the pair with the least load (ties: the first), in it the owner. */
void sim_pairs_arrival(sim_t *s, uint32_t r)
{
    sim_req_t *q = &s->req[r];
    int best = 0;
    int64_t lb = INT64_MAX;
    for (int k = 0; k < s->n_pairs; k++) {
        hb_sync(s, 2 * k);
        hb_sync(s, 2 * k + 1);
        int64_t l = seen_load(s, &s->inst[2 * k]) + seen_load(s, &s->inst[2 * k + 1]);
        if (l < lb) {
            best = k;
            lb = l;
        }
    }
    int a = 2 * best, b = a + 1;
    sim_inst_t *x = &s->inst[a], *y = &s->inst[b];
    sim_preq_t *e = &s->preq[r];
    e->kv = (int32_t)sim_round(s, (int64_t)q->prompt + q->output);
    /* A request that one member cannot hold whole could never run there: refused. */
    if ((x->spec->kv_tokens > 0 && e->kv > x->spec->kv_tokens) ||
        (y->spec->kv_tokens > 0 && e->kv > y->spec->kv_tokens)) {
        s->n_refused++;
        sim_fail(s, r);
        return;
    }
    int xp = x->serving == PL_ROLE_PREFILL, yp = y->serving == PL_ROLE_PREFILL;
    int o = xp != yp ? (xp ? a : b) : seen_load(s, y) < seen_load(s, x) ? b : a;
    int h = o ^ 1;
    sim_inst_t *hx = &s->inst[h];
    /* pr_assign_replica: the holder refuses when the reservation would leave its own waiting
     * prompts no room. */
    if (s->pp.heartbeat_ms > 0)
        hx->pend++;
    if (sim_fits(hx, e->kv + hx->queued_kv)) {
        hx->kv_used += e->kv;
        e->rep = h;
    } else {
        s->n_rep_refused++;
    }
    q->p = o;
    if (s->pp.rtt_ms > 0) {
        sim_ev_push(s, s->now + s->pp.rtt_ms, SIM_EV_PAIR_ASSIGN, r, (uint32_t)o);
        arm(s, best);
    } else {
        assign(s, r, o);
    }
}

void sim_pairs_event(sim_t *s, const sim_ev_t *e)
{
    switch (e->kind) {
    case SIM_EV_PAIR_ASSIGN: assign(s, e->a, (int)e->b); break;
    case SIM_EV_PAIR_LANE_DONE: on_lane_done(s, (int)e->a); break;
    case SIM_EV_PAIR_RESUME: {
        sim_inst_t *x = &s->inst[e->b];
        BT_ASSERT(s->preq[e->a].own == (int32_t)e->b);
        hb_sync(s, (int)e->b);
        sim_fifo_push(s, &x->ready, e->a);
        kick(s, x->pair);
        break;
    }
    case SIM_EV_PAIR_CHECK:
        if (s->pair[e->a].check_ms == e->t)
            s->pair[e->a].check_ms = INFINITY;
        tick(s, (int)e->a);
        kick(s, (int)e->a);
        break;
    default: BT_ASSERT(0 && "unknown event");
    }
}

/* 0: the default; negative: none. */
static double setting(double v, double def)
{
    return v == 0 ? def : v < 0 ? 0 : v;
}

int sim_pairs_setup(sim_t *s)
{
    const pl_pairs_params_t *p = &s->p->pairs;
    s->pp.switch_ms = setting(p->switch_ms, 200);
    s->pp.idle_ms = setting(p->idle_ms, 1000);
    s->pp.tick_ms = p->tick_ms > 0 ? p->tick_ms : 10;
    s->pp.heartbeat_ms = setting(p->heartbeat_ms, 500);
    s->pp.rtt_ms = setting(p->rtt_ms, 1);
    s->pp.step_ms = p->step_ms > 0 ? p->step_ms : 0;
    s->n_pairs = s->p->n_inst / 2;
    s->pair = bt_calloc((size_t)s->n_pairs, sizeof *s->pair);
    s->preq = bt_calloc(s->n_req + 1, sizeof *s->preq);
    s->buf = bt_malloc((s->n_req + 1) * sizeof *s->buf);
    if (!s->pair || !s->preq || !s->buf)
        return BT_ERR_NOMEM;
    for (int k = 0; k < s->n_pairs; k++)
        s->pair[k] = (sim_pair_t){.last_switch_ms = -INFINITY, .check_ms = INFINITY};
    for (int i = 0; i < s->p->n_inst; i++) {
        sim_inst_t *x = &s->inst[i];
        x->serving = x->applied = i % 2 == 0 ? PL_ROLE_PREFILL : PL_ROLE_DECODE;
        x->pair = i / 2;
        x->partner = i ^ 1;
        x->last_assign_ms = -1;
    }
    for (size_t r = 0; r < s->n_req; r++)
        s->preq[r] = (sim_preq_t){.own = -1, .rep = -1};
    for (int k = 0; k < s->n_pairs; k++)
        arm(s, k);
    return BT_OK;
}

void sim_pairs_teardown(sim_t *s)
{
    bt_free(s->pair);
    bt_free(s->preq);
    bt_free(s->buf);
}
