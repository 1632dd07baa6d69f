/* SPDX-License-Identifier: MIT */
/*
 * sim_pairs.c - AcceLLM pairs in the simulator (DESIGN.md section 5): instances 2k and 2k + 1
 * form pair k; each member holds the full weights and is either the pair's prefill member or a
 * decode member, and the pair moves work between its members instead of moving data.
 *
 * The rules follow the router's pairs policy:
 *  - a new request goes to the pair with the least outstanding work: prompt tokens queued or
 *    being prefilled + seq_weight_tokens x the sequences decoding (or waiting to) on it;
 *  - the prefill member takes FCFS batches as a prefill instance does; the KV is copied layer by
 *    layer to the partner while it is computed, so a batch ends after the last layer's copy;
 *  - at the end of a prefill the request decodes on the decode member with fewer sequences
 *    (then less KV in use); the other member keeps its copy as a replica, kept current at every
 *    step (free, or step_ms per step);
 *  - at a batch boundary of the prefill member, with no prompt waiting, idle for idle_ms and
 *    min_switch_ms after the pair's last switch, it turns to decode and the partner hands it half
 * of its sequences (those with a replica there) at the partner's next batch boundary: no data
 * moves, the sequences only miss a hand-off delay;
 *  - when prompts wait and both members decode, once min_switch_ms have passed since the
 *    pair's last switch, the one with fewer sequences turns to prefill at its next batch boundary
 * and hands all its sequences to the partner; a member decoding a sequence whose replica was
 * dropped (pinned) cannot turn;
 *  - memory: a member reserves the prompt's KV while prefilling it and its partner the whole
 *    sequence's (prompt + output), so that the decode side can always run what it received;
 *    replicas are reserved whole as well. Replicas are dropped, oldest first, whenever a member
 *    needs blocks for its own work (like clean cache lines), and a replica that cannot grow to
 *    the whole sequence is not kept. Own sequences are never preempted: a prompt waits instead.
 * The one thing to know: a request is owned by exactly one member at a time (preq.own), whose
 * batch or ready queue holds it, or it is on its way there (a hand-off event).
 */
#include <math.h>

#include "common/alloc.h"
#include "common/btassert.h"
#include "common/status.h"
#include "sim_impl.h"

/* --- memory ---------------------------------------------------------------------------------- */

static int32_t kv_whole(const sim_t *s, const sim_req_t *q)
{
    return (int32_t)sim_round(s, (int64_t)q->prompt + q->output);
}

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

/* Makes r's replica droppable: it joins the end of its holder's list. */
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
    s->inst[e->rep].kv_used -= e->kv_rep;
    if (e->listed)
        s->inst[e->rep].n_replicas--;
    e->rep = -1;
    e->kv_rep = 0;
    e->listed = 0;
}

/* A replica dropped for memory: its request can no longer move. */
static void replica_drop(sim_t *s, uint32_t r)
{
    replica_free(s, r);
    s->inst[s->preq[r].own].n_pinned++;
    s->n_dropped++;
}

/* Drops replicas held by instance i, oldest first, until need more tokens fit there. */
static int make_room(sim_t *s, int i, int64_t need)
{
    sim_inst_t *x = &s->inst[i];
    while (!sim_fits(x, need) && x->n_replicas > 0) {
        uint32_t r = sim_fifo_pop(&x->replicas);
        if (s->preq[r].rep == i && s->preq[r].listed)
            replica_drop(s, r);
    }
    return sim_fits(x, need);
}

/* --- prefill --------------------------------------------------------------------------------- */

/* The prefill member starts the next FCFS batch from its pair's queue: prompts are taken while
 * they fit the token budget, the batch-size limit and the memory of both members (its own copy
 * of the prompt, the partner's of the whole sequence). */
static void prefill_try(sim_t *s, int i)
{
    sim_inst_t *x = &s->inst[i], *y = &s->inst[x->partner];
    sim_pair_t *pr = &s->pair[x->pair];
    const pl_inst_spec_t *sp = x->spec;
    if (x->now_role != PL_ROLE_PREFILL || x->stage_busy || pr->queue.len == 0)
        return;
    double sum = 0, sum2 = 0;
    uint32_t n = 0;
    while (pr->queue.len > 0) {
        uint32_t r = sim_fifo_peek(&pr->queue);
        const sim_req_t *q = &s->req[r];
        int32_t own = (int32_t)sim_round(s, q->prompt), whole = kv_whole(s, q);
        if (n > 0 && ((sp->max_batch_seqs > 0 && n >= (uint32_t)sp->max_batch_seqs) ||
                      (sp->max_batch_tokens > 0 && sum + q->prompt > sp->max_batch_tokens)))
            break;
        if (!make_room(s, i, own) || !make_room(s, x->partner, whole))
            break;
        sim_fifo_pop(&pr->queue);
        x->kv_used += own;
        y->kv_used += whole;
        s->preq[r] = (sim_preq_t){.own = i,
                                  .rep = x->partner,
                                  .kv_own = own,
                                  .kv_rep = whole,
                                  .ctx = q->prompt + 1,
                                  .left = q->output - 1};
        s->req[r].p = i;
        sim_fifo_push(s, &x->flight, r);
        sum += q->prompt;
        sum2 += (double)q->prompt * q->prompt;
        n++;
    }
    if (n == 0)
        return;
    pr->queued_tokens -= (int64_t)sum;
    pr->busy_tokens = (int64_t)sum;
    x->n_running = (int32_t)n;
    sim_fifo_push(s, &x->batches, n);
    /* Layer k's KV crosses the link while layer k + 1 is computed: the batch ends one layer's
     * copy after its compute, or after the whole copy when the link is the slower. */
    double t = sim_prefill_ms(x, sum, sum2, n), layers = s->pp.layers;
    double whole = sim_transfer_ms(s, x, y, (int32_t)sum);
    double lat = 2 * whole - sim_transfer_ms(s, x, y, 2 * (int32_t)sum), copy = whole - lat;
    double done = lat + (copy <= t ? t + copy / layers : t / layers + copy);
    x->stage_busy = 1;
    sim_ev_push(s, s->now + done, SIM_EV_PAIR_PREFILL_DONE, (uint32_t)i, 0);
}

/* Sequences decoding on x, or on their way to it (0 for a prefill member). */
static int64_t decoding(const sim_inst_t *x)
{
    if (x->now_role != PL_ROLE_DECODE)
        return 0;
    return (int64_t)x->n_running + (int64_t)x->ready.len + x->n_moving;
}

/* Schedules a new look at pair k's rules at t (once per time). */
static void check_at(sim_t *s, int k, double t)
{
    sim_pair_t *pr = &s->pair[k];
    if (pr->check_ms != t) {
        pr->check_ms = t;
        sim_ev_push(s, t, SIM_EV_PAIR_CHECK, (uint32_t)k, 0);
    }
}

/* The prefill member turns to decode when no prompt waits, it is idle, and the thresholds are
 * met; else, if only the thresholds keep it, the rules are checked again when they will be. */
static void maybe_to_decode(sim_t *s, int k, int i)
{
    sim_inst_t *x = &s->inst[i];
    sim_pair_t *pr = &s->pair[k];
    if (x->stage_busy || pr->queue.len > 0)
        return;
    double ok_ms = fmax(x->last_done_ms + s->pp.idle_ms, pr->last_switch_ms + s->pp.min_switch_ms);
    if (s->now >= ok_ms) {
        x->now_role = PL_ROLE_DECODE;
        x->n_running = 0;
        pr->last_switch_ms = s->now;
        s->n_switches++;
        s->inst[x->partner].give = 1;
        return;
    }
    check_at(s, k, ok_ms);
}

/* A prefilled request decodes on the less busy decode member (fewer sequences, then less KV in
 * use; the partner of the producer on ties, or when the producer has no room to grow its copy
 * to the whole sequence); the other member's copy becomes the replica. */
static void place_decode(sim_t *s, uint32_t r)
{
    sim_preq_t *e = &s->preq[r];
    int a = e->own, b = e->rep;
    sim_inst_t *x = &s->inst[a], *y = &s->inst[b];
    int32_t whole = e->kv_rep, grow = whole - e->kv_own;
    int on_x =
        x->now_role == PL_ROLE_DECODE &&
        (decoding(x) < decoding(y) || (decoding(x) == decoding(y) && x->kv_used < y->kv_used));
    if (on_x && make_room(s, a, grow)) {
        x->kv_used += grow;
        e->kv_own = whole;
    } else {
        e->own = b;
        e->rep = a;
        e->kv_rep = e->kv_own;
        e->kv_own = whole;
        if (sim_fits(x, grow)) {
            x->kv_used += grow;
            e->kv_rep = whole;
        }
    }
    s->req[r].d = e->own;
    if (e->kv_rep == whole)
        replica_list(s, r);
    else
        replica_drop(s, r);
    sim_fifo_push(s, &s->inst[e->own].ready, r);
}

static void kick(sim_t *s, int k);

static void on_prefill_done(sim_t *s, int i)
{
    sim_inst_t *x = &s->inst[i];
    sim_pair_t *pr = &s->pair[x->pair];
    uint32_t n = sim_fifo_pop(&x->batches);
    x->stage_busy = 0;
    x->n_running = 0;
    x->last_done_ms = s->now;
    pr->busy_tokens = 0;
    maybe_to_decode(s, x->pair, i);
    for (uint32_t k = 0; k < n; k++) {
        uint32_t r = sim_fifo_pop(&x->flight);
        sim_preq_t *e = &s->preq[r];
        sim_first_token(s, r);
        if (s->req[r].output > 1) {
            place_decode(s, r);
            continue;
        }
        x->kv_used -= e->kv_own;
        e->own = -1;
        replica_free(s, r);
        sim_finish(s, r);
    }
    kick(s, x->pair);
}

/* --- decode and hand-overs ------------------------------------------------------------------- */

/* Takes every sequence out of the batch into s->buf, fewest steps left first, with its context
 * and steps left. Returns the count. */
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

/* Hands the n sequences of s->buf[from..from + n) from their owner to the partner holding their
 * replica: the two copies swap roles, and the sequences join the partner's ready queue after the
 * hand-off delay. */
static void hand_over(sim_t *s, int32_t from, int32_t n, int to)
{
    if (n == 0)
        return;
    double ctx = 0;
    for (int32_t j = from; j < from + n; j++)
        ctx += s->preq[s->buf[j]].ctx;
    double delay = s->pp.handoff_ms > 0 ? s->pp.handoff_ms
                                        : bt_profile_decode_ms(s->inst[to].spec->profile, ctx, n);
    for (int32_t j = from; j < from + n; j++) {
        uint32_t r = s->buf[j];
        sim_preq_t *e = &s->preq[r];
        BT_ASSERT(e->rep == to && e->listed);
        int32_t kv = e->kv_own;
        s->inst[to].n_replicas--;
        e->rep = e->own;
        e->own = to;
        e->kv_own = e->kv_rep;
        e->kv_rep = kv;
        replica_list(s, r);
        s->req[r].d = to;
        s->inst[to].n_moving++;
        s->n_moved++;
        sim_ev_push(s, s->now + delay, SIM_EV_PAIR_HANDOFF, r, (uint32_t)to);
    }
}

/* The partner turned to decode: hand it half of this member's sequences, those with the most
 * steps left among those with a replica there. */
static void give_half(sim_t *s, int i)
{
    sim_inst_t *x = &s->inst[i];
    sim_lane_t *l = &x->lanes[0];
    x->give = 0;
    if (s->inst[x->partner].now_role != PL_ROLE_DECODE)
        return;
    int32_t want = x->n_running / 2, n = lane_take(s, l), moved = 0;
    /* Partition s->buf: kept sequences first, handed-over ones at the end. */
    int32_t end = n;
    for (int32_t j = n - 1; j >= 0; j--) {
        uint32_t r = s->buf[j];
        if (moved < want && s->preq[r].rep == x->partner && s->preq[r].listed) {
            s->buf[j] = s->buf[--end];
            s->buf[end] = r;
            moved++;
        }
    }
    for (int32_t j = 0; j < end; j++)
        lane_put(s, l, s->buf[j]);
    x->n_running -= moved;
    hand_over(s, end, moved, x->partner);
}

/* At a batch boundary: turns this decode member to prefill, handing all its sequences to the
 * partner, if the reason still holds. Returns whether it turned. */
static int to_prefill(sim_t *s, int i)
{
    sim_inst_t *x = &s->inst[i];
    sim_pair_t *pr = &s->pair[x->pair];
    x->to_prefill = 0;
    if (pr->queue.len == 0 || s->inst[x->partner].now_role != PL_ROLE_DECODE || x->n_pinned > 0 ||
        x->n_moving > 0)
        return 0;
    int32_t n = lane_take(s, &x->lanes[0]);
    while (x->ready.len > 0) {
        uint32_t r = sim_fifo_pop(&x->ready);
        s->buf[n++] = r; /* never in a batch here: ctx and left are as they were set */
    }
    hand_over(s, 0, n, x->partner);
    x->n_running = 0;
    x->give = 0;
    x->now_role = PL_ROLE_PREFILL;
    pr->last_switch_ms = s->now;
    s->n_switches++;
    prefill_try(s, i);
    return 1;
}

/* A decode member at a batch boundary: pending role work first, then the next step. */
static void lane_run(sim_t *s, int i)
{
    sim_inst_t *x = &s->inst[i];
    sim_lane_t *l = &x->lanes[0];
    if (x->now_role != PL_ROLE_DECODE || l->busy)
        return;
    if (x->to_prefill && to_prefill(s, i))
        return;
    if (x->give)
        give_half(s, i);
    int32_t limit = x->spec->max_batch_seqs > 0 ? x->spec->max_batch_seqs : INT32_MAX;
    while (x->ready.len > 0 && l->n_seqs < limit) {
        lane_put(s, l, sim_fifo_pop(&x->ready));
        x->n_running++;
    }
    if (l->n_seqs == 0)
        return;
    double t = bt_profile_decode_ms(x->spec->profile, l->sum_ctx, l->n_seqs) + s->pp.step_ms;
    l->busy = 1;
    sim_ev_push(s, s->now + t, SIM_EV_PAIR_LANE_DONE, (uint32_t)i, 0);
}

static void on_lane_done(sim_t *s, int i)
{
    sim_inst_t *x = &s->inst[i];
    sim_lane_t *l = &x->lanes[0];
    l->busy = 0;
    l->step++;
    l->sum_ctx += l->n_seqs;
    while (l->n_fin > 0 && l->fin[0].step <= l->step) {
        uint32_t r = sim_fin_pop(l);
        const sim_req_t *q = &s->req[r];
        sim_preq_t *e = &s->preq[r];
        l->n_seqs--;
        l->sum_ctx -= (double)q->prompt + q->output;
        x->kv_used -= e->kv_own;
        x->n_running--;
        if (e->rep < 0)
            x->n_pinned--;
        replica_free(s, r);
        e->own = -1;
        sim_finish(s, r);
    }
    if (l->n_seqs == 0)
        l->sum_ctx = 0;
    kick(s, x->pair);
}

/* --- the pair -------------------------------------------------------------------------------- */

/* Applies the pair's rules after anything changed for it: prefill, role switches, decode. */
static void kick(sim_t *s, int k)
{
    int a = 2 * k, b = a + 1;
    sim_inst_t *x = &s->inst[a], *y = &s->inst[b];
    int pm = x->now_role == PL_ROLE_PREFILL ? a : y->now_role == PL_ROLE_PREFILL ? b : -1;
    if (pm >= 0) {
        prefill_try(s, pm);
        maybe_to_decode(s, k, pm);
    } else if (s->pair[k].queue.len > 0 && !x->to_prefill && !y->to_prefill) {
        double ok_ms = s->pair[k].last_switch_ms + s->pp.min_switch_ms;
        int ca = x->n_pinned == 0 && x->n_moving == 0, cb = y->n_pinned == 0 && y->n_moving == 0;
        int c = ca && (!cb || decoding(x) <= decoding(y)) ? a : cb ? b : -1;
        if (s->now < ok_ms)
            check_at(s, k, ok_ms);
        else if (c >= 0)
            s->inst[c].to_prefill = 1;
    }
    lane_run(s, a);
    lane_run(s, b);
}

static double pair_load(const sim_t *s, int k)
{
    const sim_pair_t *pr = &s->pair[k];
    double seqs = (double)(decoding(&s->inst[2 * k]) + decoding(&s->inst[2 * k + 1]));
    return (double)(pr->queued_tokens + pr->busy_tokens) + s->pp.seq_weight_tokens * seqs;
}

void sim_pairs_arrival(sim_t *s, uint32_t r)
{
    sim_req_t *q = &s->req[r];
    int best = 0;
    double lb = pair_load(s, 0);
    for (int k = 1; k < s->n_pairs; k++) {
        double l = pair_load(s, k);
        if (l < lb) {
            best = k;
            lb = l;
        }
    }
    /* A request that one member cannot hold whole could never decode: refused. */
    int64_t cap0 = s->inst[2 * best].spec->kv_tokens, cap1 = s->inst[2 * best + 1].spec->kv_tokens;
    int64_t whole = kv_whole(s, q);
    if ((cap0 > 0 && whole > cap0) || (cap1 > 0 && whole > cap1)) {
        s->n_refused++;
        sim_fail(s, r);
        return;
    }
    sim_pair_t *pr = &s->pair[best];
    sim_fifo_push(s, &pr->queue, r);
    pr->queued_tokens += q->prompt;
    kick(s, best);
}

void sim_pairs_event(sim_t *s, const sim_ev_t *e)
{
    switch (e->kind) {
    case SIM_EV_PAIR_PREFILL_DONE: on_prefill_done(s, (int)e->a); break;
    case SIM_EV_PAIR_LANE_DONE: on_lane_done(s, (int)e->a); break;
    case SIM_EV_PAIR_HANDOFF: {
        sim_inst_t *x = &s->inst[e->b];
        BT_ASSERT(x->now_role == PL_ROLE_DECODE && s->preq[e->a].own == (int32_t)e->b);
        x->n_moving--;
        sim_fifo_push(s, &x->ready, e->a);
        kick(s, x->pair);
        break;
    }
    case SIM_EV_PAIR_CHECK:
        if (s->pair[e->a].check_ms == e->t)
            s->pair[e->a].check_ms = 0;
        kick(s, (int)e->a);
        break;
    default: BT_ASSERT(0 && "unknown event");
    }
}

int sim_pairs_setup(sim_t *s)
{
    const pl_pairs_params_t *p = &s->p->pairs;
    s->pp = *p;
    if (!(s->pp.seq_weight_tokens > 0))
        s->pp.seq_weight_tokens = 64;
    if (s->pp.layers <= 0)
        s->pp.layers = 32;
    s->n_pairs = s->p->n_inst / 2;
    s->pair = bt_calloc((size_t)s->n_pairs, sizeof *s->pair);
    s->preq = bt_calloc(s->n_req + 1, sizeof *s->preq);
    s->buf = bt_malloc((s->n_req + 1) * sizeof *s->buf);
    if (!s->pair || !s->preq || !s->buf)
        return BT_ERR_NOMEM;
    for (int k = 0; k < s->n_pairs; k++)
        s->pair[k].last_switch_ms = -INFINITY;
    for (int i = 0; i < s->p->n_inst; i++) {
        sim_inst_t *x = &s->inst[i];
        x->now_role = i % 2 == 0 ? PL_ROLE_PREFILL : PL_ROLE_DECODE;
        x->pair = i / 2;
        x->partner = i ^ 1;
    }
    for (size_t r = 0; r < s->n_req; r++)
        s->preq[r] = (sim_preq_t){.own = -1, .rep = -1};
    return BT_OK;
}

void sim_pairs_teardown(sim_t *s)
{
    for (int k = 0; s->pair && k < s->n_pairs; k++)
        bt_free(s->pair[k].queue.buf);
    bt_free(s->pair);
    bt_free(s->preq);
    bt_free(s->buf);
}
