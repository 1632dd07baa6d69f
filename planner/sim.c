/* SPDX-License-Identifier: MIT */
/*
 * sim.c - the simulator's event loop (sim.h).
 *
 * Arrivals are not events: the requests come sorted, so the loop merges the next arrival with
 * the top of a binary heap of completions (events first at equal times, so that what finishes
 * at t frees its resources before what arrives at t asks for them). Events at equal times run
 * in the order they were scheduled (a sequence number breaks ties), which keeps a run
 * deterministic. Instances act only when something changes for them: a stage or a lane falls
 * idle, a prompt arrives, memory is freed, KV lands.
 */
#include "sim_impl.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/alloc.h"
#include "common/btassert.h"
#include "common/log.h"
#include "common/status.h"

/* --- containers ------------------------------------------------------------------------------ */

void sim_fifo_push(sim_t *s, sim_fifo_t *f, uint32_t v)
{
    if (f->len == f->cap) {
        size_t cap = f->cap ? f->cap * 2 : 16;
        uint32_t *b = bt_malloc(cap * sizeof *b);
        if (!b) {
            s->nomem = 1;
            return;
        }
        for (size_t i = 0; i < f->len; i++)
            b[i] = f->buf[(f->head + i) & (f->cap - 1)];
        bt_free(f->buf);
        f->buf = b;
        f->head = 0;
        f->cap = cap;
    }
    f->buf[(f->head + f->len++) & (f->cap - 1)] = v;
}

uint32_t sim_fifo_peek(const sim_fifo_t *f)
{
    return f->buf[f->head];
}

uint32_t sim_fifo_pop(sim_fifo_t *f)
{
    uint32_t v = f->buf[f->head];
    f->head = (f->head + 1) & (f->cap - 1);
    f->len--;
    return v;
}

static int ev_less(const sim_ev_t *a, const sim_ev_t *b)
{
    return a->t < b->t || (a->t == b->t && a->seq < b->seq);
}

void sim_ev_push(sim_t *s, double t, uint32_t kind, uint32_t a, uint32_t b)
{
    if (s->n_heap == s->cap_heap) {
        size_t cap = s->cap_heap ? s->cap_heap * 2 : 256;
        sim_ev_t *h = bt_realloc(s->heap, cap * sizeof *h);
        if (!h) {
            s->nomem = 1;
            return;
        }
        s->heap = h;
        s->cap_heap = cap;
    }
    sim_ev_t e = {t, s->ev_seq++, kind, a, b};
    size_t i = s->n_heap++;
    while (i > 0 && ev_less(&e, &s->heap[(i - 1) / 2])) {
        s->heap[i] = s->heap[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    s->heap[i] = e;
}

static sim_ev_t ev_pop(sim_t *s)
{
    sim_ev_t top = s->heap[0], last = s->heap[--s->n_heap];
    size_t i = 0, n = s->n_heap;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n)
            break;
        if (c + 1 < n && ev_less(&s->heap[c + 1], &s->heap[c]))
            c++;
        if (!ev_less(&s->heap[c], &last))
            break;
        s->heap[i] = s->heap[c];
        i = c;
    }
    if (n > 0)
        s->heap[i] = last;
    return top;
}

void sim_fin_push(sim_t *s, sim_lane_t *l, int64_t step, uint32_t req)
{
    if (l->n_fin == l->cap_fin) {
        int32_t cap = l->cap_fin ? l->cap_fin * 2 : 16;
        sim_fin_t *f = bt_realloc(l->fin, (size_t)cap * sizeof *f);
        if (!f) {
            s->nomem = 1;
            return;
        }
        l->fin = f;
        l->cap_fin = cap;
    }
    int32_t i = l->n_fin++;
    sim_fin_t e = {step, req};
    while (i > 0 && (e.step < l->fin[(i - 1) / 2].step ||
                     (e.step == l->fin[(i - 1) / 2].step && e.req < l->fin[(i - 1) / 2].req))) {
        l->fin[i] = l->fin[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    l->fin[i] = e;
}

static int fin_less(sim_fin_t a, sim_fin_t b)
{
    return a.step < b.step || (a.step == b.step && a.req < b.req);
}

uint32_t sim_fin_pop(sim_lane_t *l)
{
    uint32_t top = l->fin[0].req;
    sim_fin_t last = l->fin[--l->n_fin];
    int32_t i = 0, n = l->n_fin;
    for (;;) {
        int32_t c = 2 * i + 1;
        if (c >= n)
            break;
        if (c + 1 < n && fin_less(l->fin[c + 1], l->fin[c]))
            c++;
        if (!fin_less(l->fin[c], last))
            break;
        l->fin[i] = l->fin[c];
        i = c;
    }
    if (n > 0)
        l->fin[i] = last;
    return top;
}

/* --- requests -------------------------------------------------------------------------------- */

static const bt_profile_t *prof(const sim_inst_t *x)
{
    return x->spec->profile;
}

/* The speed factor of x for a forward of kind k (0 prefill, 1 decode) starting now. */
static double speed(const sim_t *s, const sim_inst_t *x, int k)
{
    const pl_speed_t *v = x->spec->speed;
    if (!v || v->n_bins <= 0)
        return 1.0;
    double b = floor(s->now / v->bin_ms);
    int i = b < 0 ? 0 : b >= v->n_bins ? v->n_bins - 1 : (int)b;
    return v->factor[k][i];
}

int sim_fits(const sim_inst_t *x, int64_t need)
{
    return x->spec->kv_tokens <= 0 || x->kv_used + need <= x->spec->kv_tokens;
}

static void fail(sim_t *s, sim_req_t *q)
{
    if (!q->failed) {
        q->failed = 1;
        s->n_failed++;
    }
}

void sim_first_token(sim_t *s, uint32_t r)
{
    sim_req_t *q = &s->req[r];
    q->first = s->now;
    if (s->p->mode != PL_SIM_DECODE_ONLY && s->now - q->arrival > s->p->slo_ttft_ms)
        fail(s, q);
}

void sim_fail(sim_t *s, uint32_t r)
{
    fail(s, &s->req[r]);
}

void sim_finish(sim_t *s, uint32_t r)
{
    sim_req_t *q = &s->req[r];
    q->finish = s->now;
    q->done = 1;
    s->n_done++;
    if (s->p->mode != PL_SIM_PREFILL_ONLY && q->output > 1 &&
        (q->finish - q->first) / (q->output - 1) > s->p->slo_tpot_ms)
        fail(s, q);
}

double sim_transfer_ms(const sim_t *s, const sim_inst_t *from, const sim_inst_t *to, int32_t tokens)
{
    int same = from->spec->node == to->spec->node;
    double gbps = same ? s->p->intra_gb_per_s : s->p->inter_gb_per_s;
    double lat = same ? s->p->intra_latency_ms : s->p->inter_latency_ms;
    if (!(gbps > 0))
        return bt_profile_transfer_ms(prof(from), tokens);
    return lat + tokens * prof(from)->kv_bytes_per_token / (gbps * 1e9) * 1e3;
}

/* A batch's prefill time. A prompt longer than the token budget goes alone and is computed in
 * chunks of the budget (as the daemons do): the per-token and attention terms add up to the
 * whole prompt's, and each chunk after the first adds the fixed cost again. */
double sim_prefill_ms(const sim_inst_t *x, double sum, double sum2, uint32_t n)
{
    double t = bt_profile_prefill_ms(prof(x), sum, sum2);
    int32_t budget = x->spec->max_batch_tokens;
    if (n == 1 && budget > 0 && sum > budget)
        t += (ceil(sum / budget) - 1) * prof(x)->prefill.a_ms;
    return t;
}

/* --- prefill instances ----------------------------------------------------------------------- */

/* Starts the next FCFS batch when the first stage is free: prompts are taken while they fit the
 * token budget, the batch-size limit and the KV memory; the first misfit ends the batch. */
static void prefill_try(sim_t *s, int i)
{
    sim_inst_t *x = &s->inst[i];
    const pl_inst_spec_t *sp = x->spec;
    if (x->stage_busy || x->queue.len == 0)
        return;
    double sum = 0, sum2 = 0;
    int64_t kv = 0;
    uint32_t n = 0;
    while (x->queue.len > 0) {
        const sim_req_t *q = &s->req[sim_fifo_peek(&x->queue)];
        int64_t need = sim_round(s, q->prompt);
        if (n > 0 && ((sp->max_batch_seqs > 0 && n >= (uint32_t)sp->max_batch_seqs) ||
                      (sp->max_batch_tokens > 0 && sum + q->prompt > sp->max_batch_tokens)))
            break;
        if (!sim_fits(x, kv + need))
            break;
        sim_fifo_push(s, &x->flight, sim_fifo_pop(&x->queue));
        sum += q->prompt;
        sum2 += (double)q->prompt * q->prompt;
        kv += need;
        n++;
    }
    if (n == 0)
        return;
    x->kv_used += kv;
    x->queued_tokens -= (int64_t)sum;
    x->n_running += (int32_t)n;
    sim_fifo_push(s, &x->batches, n);
    double t = sim_prefill_ms(x, sum, sum2, n) * speed(s, x, 0), stage = t / x->pp;
    /* Batches leave the pipeline in order: one cannot overtake the one ahead of it. */
    double done = fmax(s->now + t, x->last_done_ms + stage);
    x->last_done_ms = done;
    x->stage_busy = 1;
    sim_ev_push(s, done, SIM_EV_PREFILL_DONE, (uint32_t)i, 0);
    if (x->pp > 1)
        sim_ev_push(s, s->now + stage, SIM_EV_STAGE_FREE, (uint32_t)i, 0);
}

static void decode_admit(sim_t *s, int di);

static void router_dispatch(sim_t *s);

static void on_prefill_done(sim_t *s, int i)
{
    sim_inst_t *x = &s->inst[i];
    int freed = 0;
    uint32_t n = sim_fifo_pop(&x->batches);
    if (x->pp == 1)
        x->stage_busy = 0;
    for (uint32_t k = 0; k < n; k++) {
        uint32_t r = sim_fifo_pop(&x->flight);
        sim_req_t *q = &s->req[r];
        x->n_running--;
        sim_first_token(s, r);
        if (s->p->mode == PL_SIM_PREFILL_ONLY || q->output <= 1) {
            x->kv_used -= sim_round(s, q->prompt);
            if (q->d >= 0) {
                s->inst[q->d].n_waiting--;
                s->inst[q->d].kv_used -= q->held;
                freed |= q->held > 0;
            }
            sim_finish(s, r);
            continue;
        }
        x->unshipped += q->prompt;
        sim_fifo_push(s, &s->inst[q->d].queue, r);
        decode_admit(s, q->d);
    }
    prefill_try(s, i);
    if (freed)
        router_dispatch(s);
}

static void on_transfer_done(sim_t *s, uint32_t r)
{
    sim_req_t *q = &s->req[r];
    sim_inst_t *p = &s->inst[q->p];
    p->unshipped -= q->prompt;
    p->kv_used -= sim_round(s, q->prompt);
    prefill_try(s, q->p);
    sim_fifo_push(s, &s->inst[q->d].ready, r);
    decode_admit(s, q->d);
}

/* --- decode and colocated lanes -------------------------------------------------------------- */

static void lane_join(sim_t *s, sim_lane_t *l, uint32_t r)
{
    const sim_req_t *q = &s->req[r];
    l->n_seqs++;
    l->sum_ctx += q->prompt + 1; /* the prompt and the first token */
    /* The first token came from prefill, so output - 1 steps make the rest. */
    sim_fin_push(s, l, l->step + q->output - 1, r);
}

static void lane_step(sim_t *s, int i, int k)
{
    sim_lane_t *l = &s->inst[i].lanes[k];
    double t =
        bt_profile_decode_ms(prof(&s->inst[i]), l->sum_ctx, l->n_seqs) * speed(s, &s->inst[i], 1);
    l->busy = 1;
    sim_ev_push(s, s->now + t, SIM_EV_LANE_DONE, (uint32_t)i, (uint32_t)k);
}

/* Decode: fills an idle lane from the ready queue, up to the batch limit and to an even share
 * of the instance's sequences, so that micro-batches stay balanced. */
static void lane_admit(sim_t *s, sim_inst_t *x, sim_lane_t *l)
{
    int64_t share = ((int64_t)x->n_running + (int64_t)x->ready.len + x->pp - 1) / x->pp;
    int64_t limit = x->spec->max_batch_seqs > 0 && x->spec->max_batch_seqs < share
                        ? x->spec->max_batch_seqs
                        : share;
    while (x->ready.len > 0 && l->n_seqs < limit) {
        uint32_t r = sim_fifo_peek(&x->ready);
        if (s->admit) { /* --growth-reserve 1: the whole sequence must fit, unless it is alone */
            const sim_req_t *q = &s->req[r];
            int64_t rest = sim_round(s, (int64_t)q->prompt + q->output) - q->held;
            if (!sim_fits(x, rest) && x->n_running > 0)
                break;
            x->kv_used += rest;
        }
        sim_fifo_pop(&x->ready);
        lane_join(s, l, r);
        x->n_running++;
        x->n_waiting--;
    }
}

/* Colocated: runs a prefill batch on an idle lane if prompts wait and fit (prefill first).
 * Returns whether it started one. */
static int coloc_prefill(sim_t *s, int i, int k)
{
    sim_inst_t *x = &s->inst[i];
    sim_lane_t *l = &x->lanes[k];
    const pl_inst_spec_t *sp = x->spec;
    double sum = 0, sum2 = 0;
    int32_t n = 0, room = sp->max_batch_seqs > 0 ? sp->max_batch_seqs - l->n_seqs : INT32_MAX;
    while (x->queue.len > 0 && n < room) {
        const sim_req_t *q = &s->req[sim_fifo_peek(&x->queue)];
        int64_t need = sim_round(s, (int64_t)q->prompt + q->output);
        if ((n > 0 && sp->max_batch_tokens > 0 && sum + q->prompt > sp->max_batch_tokens) ||
            !sim_fits(x, need))
            break;
        sim_fifo_push(s, &l->prefill, sim_fifo_pop(&x->queue));
        x->kv_used += need;
        sum += q->prompt;
        sum2 += (double)q->prompt * q->prompt;
        n++;
    }
    if (n == 0)
        return 0;
    x->queued_tokens -= (int64_t)sum;
    x->n_running += n;
    l->busy = l->in_prefill = 1;
    sim_ev_push(s, s->now + sim_prefill_ms(x, sum, sum2, (uint32_t)n) * speed(s, x, 0),
                SIM_EV_LANE_DONE, (uint32_t)i, (uint32_t)k);
    return 1;
}

static void lanes_run(sim_t *s, int i)
{
    sim_inst_t *x = &s->inst[i];
    for (int k = 0; k < x->pp; k++) {
        sim_lane_t *l = &x->lanes[k];
        if (l->busy)
            continue;
        if (x->spec->role == PL_ROLE_COLOCATED && coloc_prefill(s, i, k))
            continue;
        if (x->spec->role == PL_ROLE_DECODE)
            lane_admit(s, x, l);
        if (l->n_seqs > 0)
            lane_step(s, i, k);
    }
}

/* Decode: reserves KV for prefilled requests, FCFS, and starts their transfers. */
static void decode_admit(sim_t *s, int di)
{
    sim_inst_t *d = &s->inst[di];
    while (d->queue.len > 0) {
        uint32_t r = sim_fifo_peek(&d->queue);
        const sim_req_t *q = &s->req[r];
        /* With the router's admission the prompt's KV is held since placement: the transfer
         * starts at once, whatever the instance's memory holds now, and the rest is reserved
         * when the sequence joins a batch. */
        int64_t need = s->admit ? 0 : sim_round(s, (int64_t)q->prompt + q->output);
        if (!s->admit && !sim_fits(d, need))
            break;
        sim_fifo_pop(&d->queue);
        d->kv_used += need;
        if (q->p < 0) { /* decode-only runs: the KV is already in place */
            sim_fifo_push(s, &d->ready, r);
            continue;
        }
        sim_inst_t *p = &s->inst[q->p];
        double start = fmax(s->now, p->link_free_ms);
        p->link_free_ms = start + sim_transfer_ms(s, p, d, q->prompt);
        sim_ev_push(s, p->link_free_ms, SIM_EV_TRANSFER_DONE, r, 0);
    }
    lanes_run(s, di);
}

static void coloc_prefill_done(sim_t *s, sim_inst_t *x, sim_lane_t *l)
{
    l->in_prefill = 0;
    while (l->prefill.len > 0) {
        uint32_t r = sim_fifo_pop(&l->prefill);
        const sim_req_t *q = &s->req[r];
        sim_first_token(s, r);
        if (q->output > 1) {
            lane_join(s, l, r);
            continue;
        }
        x->kv_used -= sim_round(s, (int64_t)q->prompt + q->output);
        x->n_running--;
        sim_finish(s, r);
    }
}

static void on_lane_done(sim_t *s, int i, int k)
{
    sim_inst_t *x = &s->inst[i];
    sim_lane_t *l = &x->lanes[k];
    l->busy = 0;
    if (l->in_prefill) {
        coloc_prefill_done(s, x, l);
        lanes_run(s, i);
        return;
    }
    l->step++;
    l->sum_ctx += l->n_seqs; /* every sequence gained a token */
    while (l->n_fin > 0 && l->fin[0].step <= l->step) {
        uint32_t r = sim_fin_pop(l);
        const sim_req_t *q = &s->req[r];
        l->n_seqs--;
        l->sum_ctx -= (double)q->prompt + q->output;
        x->kv_used -= sim_round(s, (int64_t)q->prompt + q->output);
        x->n_running--;
        sim_finish(s, r);
    }
    if (x->spec->role == PL_ROLE_DECODE) {
        router_dispatch(s);
        decode_admit(s, i);
    } else {
        lanes_run(s, i);
    }
}

double sim_ctx_tokens(const sim_inst_t *x)
{
    double c = 0;
    for (int k = 0; x->lanes && k < x->pp; k++)
        c += x->lanes[k].sum_ctx;
    return c;
}

/* --- the run --------------------------------------------------------------------------------- */

/* A placed request joins its instance. */
static void start(sim_t *s, uint32_t r)
{
    sim_req_t *q = &s->req[r];
    if (s->p->mode == PL_SIM_DECODE_ONLY) {
        sim_first_token(s, r);
        if (q->output <= 1) {
            s->inst[q->d].n_waiting--;
            sim_finish(s, r);
            return;
        }
        sim_fifo_push(s, &s->inst[q->d].queue, r);
        decode_admit(s, q->d);
        return;
    }
    int i = q->p >= 0 ? q->p : q->d;
    sim_inst_t *x = &s->inst[i];
    sim_fifo_push(s, &x->queue, r);
    x->queued_tokens += q->prompt;
    if (x->spec->role == PL_ROLE_PREFILL)
        prefill_try(s, i);
    else
        lanes_run(s, i);
}

/* Router admission: places what waits in the router's queue while there is room, in order
 * (every request needs a decode side, so the rest would wait too, as in router_place.c). */
static void router_dispatch(sim_t *s)
{
    while (s->admit && s->waiting.len > 0) {
        uint32_t r = sim_fifo_peek(&s->waiting);
        if (!sim_place(s, r))
            return;
        sim_fifo_pop(&s->waiting);
        start(s, r);
    }
}

static void on_arrival(sim_t *s, uint32_t r)
{
    if (s->n_pairs > 0) {
        sim_pairs_arrival(s, r);
        return;
    }
    if (s->admit && (s->waiting.len > 0 || !sim_place(s, r))) {
        sim_fifo_push(s, &s->waiting, r);
        sim_ev_push(s, s->now + s->p->queue_timeout_ms, SIM_EV_QUEUE_EXPIRE, r, 0);
        return;
    }
    if (!s->admit)
        sim_place(s, r);
    start(s, r);
}

/* A request's time in the router's queue is up: it fails there unless it was placed. Requests
 * join the queue in arrival order and all wait as long, so the one whose time is up is at its
 * head if it is still in it. */
static void on_queue_expire(sim_t *s, uint32_t r)
{
    if (s->waiting.len == 0 || sim_fifo_peek(&s->waiting) != r)
        return;
    sim_fifo_pop(&s->waiting);
    sim_fail(s, r);
    s->n_expired++;
}

static void on_event(sim_t *s, const sim_ev_t *e)
{
    switch (e->kind) {
    case SIM_EV_STAGE_FREE:
        s->inst[e->a].stage_busy = 0;
        prefill_try(s, (int)e->a);
        break;
    case SIM_EV_PREFILL_DONE: on_prefill_done(s, (int)e->a); break;
    case SIM_EV_TRANSFER_DONE: on_transfer_done(s, e->a); break;
    case SIM_EV_LANE_DONE: on_lane_done(s, (int)e->a, (int)e->b); break;
    case SIM_EV_QUEUE_EXPIRE: on_queue_expire(s, e->a); break;
    default: sim_pairs_event(s, e);
    }
}

static int loop(sim_t *s, const pl_req_t *reqs, size_t n)
{
    size_t next = 0;
    while (!s->nomem && (next < n || s->n_heap > 0)) {
        if (s->p->max_failures && s->n_failed > s->p->max_failures)
            return 1;
        if (s->n_heap > 0 && (next >= n || s->heap[0].t <= reqs[next].arrival_ms)) {
            sim_ev_t e = ev_pop(s);
            s->now = e.t;
            on_event(s, &e);
        } else {
            s->now = reqs[next].arrival_ms;
            on_arrival(s, (uint32_t)next++);
        }
        s->n_events++;
    }
    return 0;
}

static const char *check(const pl_sim_params_t *p, const pl_req_t *reqs, size_t n,
                         const int *n_role)
{
    if (n >= UINT32_MAX)
        return "too many requests";
    for (int i = 0; i < p->n_inst; i++)
        if (!p->inst[i].profile || p->inst[i].role > PL_ROLE_PAIRED)
            return "an instance has no profile or an unknown role";
    if (n_role[PL_ROLE_PAIRED] > 0) {
        if (n_role[PL_ROLE_PAIRED] != p->n_inst || p->n_inst % 2 != 0)
            return "a paired cluster has an even number of instances, all paired";
        if (p->mode != PL_SIM_FULL)
            return "pairs run prefill and decode: full mode only";
        for (int i = 0; i < p->n_inst; i++)
            if (p->inst[i].pp > 1)
                return "paired instances have one pipeline stage";
        const pl_pairs_params_t *q = &p->pairs;
        if (!isfinite(q->switch_ms) || !isfinite(q->idle_ms) || !isfinite(q->tick_ms) ||
            !isfinite(q->heartbeat_ms) || !isfinite(q->rtt_ms) || !isfinite(q->step_ms) ||
            q->tick_ms < 0)
            return "pair settings must be finite (and the tick >= 0)";
    }
    if (!(p->slo_ttft_ms > 0) || !(p->slo_tpot_ms > 0))
        return "objectives must be > 0";
    if (!(p->queue_timeout_ms >= 0) || !isfinite(p->queue_timeout_ms))
        return "the queue timeout must be finite and >= 0";
    if (p->mode == PL_SIM_FULL && !(n_role[0] && n_role[1]) && !n_role[2] && !n_role[3])
        return "a full run needs prefill and decode instances, or colocated ones";
    if (p->mode == PL_SIM_PREFILL_ONLY && !n_role[0])
        return "a prefill-only run needs prefill instances";
    if (p->mode == PL_SIM_DECODE_ONLY && !n_role[1])
        return "a decode-only run needs decode instances";
    for (size_t i = 0; i < n; i++)
        if (!(reqs[i].arrival_ms >= (i ? reqs[i - 1].arrival_ms : 0)) || reqs[i].prompt < 1 ||
            reqs[i].output < 1 || !isfinite(reqs[i].arrival_ms))
            return "requests need lengths >= 1 and sorted, finite, non-negative arrivals";
    return NULL;
}

static int setup(sim_t *s, const pl_sim_params_t *p, const pl_req_t *reqs, size_t n)
{
    s->p = p;
    s->block = p->block_size > 0 ? p->block_size : 16;
    s->n_req = n;
    s->inst = bt_calloc((size_t)p->n_inst + 1, sizeof *s->inst);
    s->req = bt_calloc(n + 1, sizeof *s->req);
    for (int r = 0; r < 4; r++)
        if (!(s->by_role[r] = bt_malloc(((size_t)p->n_inst + 1) * sizeof(int))))
            return BT_ERR_NOMEM;
    if (!s->inst || !s->req)
        return BT_ERR_NOMEM;
    for (int i = 0; i < p->n_inst; i++) {
        sim_inst_t *x = &s->inst[i];
        x->spec = &p->inst[i];
        x->pp = p->inst[i].pp > 0 ? p->inst[i].pp : 1;
        x->seq = (uint64_t)i;
        s->by_role[x->spec->role][s->n_role[x->spec->role]++] = i;
        if (x->spec->role == PL_ROLE_PAIRED)
            x->pp = 1;
        if (x->spec->role != PL_ROLE_PREFILL &&
            !(x->lanes = bt_calloc((size_t)x->pp, sizeof *x->lanes)))
            return BT_ERR_NOMEM;
    }
    for (size_t i = 0; i < n; i++)
        s->req[i] = (sim_req_t){.arrival = reqs[i].arrival_ms,
                                .first = -1,
                                .finish = -1,
                                .prompt = reqs[i].prompt,
                                .output = reqs[i].output,
                                .p = -1,
                                .d = -1};
    s->admit = p->queue_timeout_ms > 0 && p->mode == PL_SIM_FULL &&
               s->n_role[PL_ROLE_PREFILL] > 0 && s->n_role[PL_ROLE_DECODE] > 0 &&
               s->n_role[PL_ROLE_PAIRED] == 0;
    return s->n_role[PL_ROLE_PAIRED] > 0 ? sim_pairs_setup(s) : BT_OK;
}

static void teardown(sim_t *s)
{
    for (int i = 0; s->inst && i < s->p->n_inst; i++) {
        sim_inst_t *x = &s->inst[i];
        bt_free(x->queue.buf);
        bt_free(x->ready.buf);
        bt_free(x->flight.buf);
        bt_free(x->batches.buf);
        bt_free(x->replicas.buf);
        for (int k = 0; x->lanes && k < x->pp; k++) {
            bt_free(x->lanes[k].fin);
            bt_free(x->lanes[k].prefill.buf);
        }
        bt_free(x->lanes);
    }
    sim_pairs_teardown(s);
    bt_free(s->waiting.buf);
    bt_free(s->inst);
    bt_free(s->req);
    for (int r = 0; r < 4; r++)
        bt_free(s->by_role[r]);
    bt_free(s->heap);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Nearest-rank percentile of a sorted array. */
static double pct(const double *v, size_t n, double q)
{
    if (n == 0)
        return 0;
    size_t k = (size_t)ceil(q * (double)n);
    return v[k > 0 ? k - 1 : 0];
}

static void summarize(const sim_t *s, double *scratch, pl_sim_result_t *res)
{
    size_t n_t = 0, n_p = 0;
    double sum_t = 0, sum_p = 0, sum_j = 0;
    double *tt = scratch, *tp = scratch + s->n_req, *tj = scratch + 2 * s->n_req;
    for (size_t i = 0; i < s->n_req; i++) {
        const sim_req_t *q = &s->req[i];
        if (q->first >= 0) {
            tt[n_t++] = q->first - q->arrival;
            sum_t += q->first - q->arrival;
            res->n_ttft_ok += q->first - q->arrival <= s->p->slo_ttft_ms;
        }
        if (q->done) {
            double tpot = q->output > 1 ? (q->finish - q->first) / (q->output - 1) : 0;
            tj[n_p] = q->finish - q->arrival;
            sum_j += q->finish - q->arrival;
            tp[n_p++] = tpot;
            sum_p += tpot;
            res->n_tpot_ok += tpot <= s->p->slo_tpot_ms;
            res->n_ok += !q->failed;
        }
    }
    qsort(tt, n_t, sizeof *tt, cmp_double);
    qsort(tp, n_p, sizeof *tp, cmp_double);
    qsort(tj, n_p, sizeof *tj, cmp_double);
    res->n = s->n_req;
    res->n_finished = s->n_done;
    res->attainment = s->n_req ? (double)res->n_ok / (double)s->n_req : 1;
    res->ttft_mean_ms = n_t ? sum_t / n_t : 0;
    res->ttft_p50_ms = pct(tt, n_t, 0.5);
    res->ttft_p90_ms = pct(tt, n_t, 0.9);
    res->ttft_p99_ms = pct(tt, n_t, 0.99);
    res->tpot_mean_ms = n_p ? sum_p / n_p : 0;
    res->tpot_p50_ms = pct(tp, n_p, 0.5);
    res->tpot_p90_ms = pct(tp, n_p, 0.9);
    res->tpot_p99_ms = pct(tp, n_p, 0.99);
    res->jct_mean_ms = n_p ? sum_j / n_p : 0;
    res->jct_p50_ms = pct(tj, n_p, 0.5);
    res->jct_p90_ms = pct(tj, n_p, 0.9);
    res->jct_p99_ms = pct(tj, n_p, 0.99);
    res->n_switches = s->n_switches;
    res->n_moved = s->n_moved;
    res->n_replicas_dropped = s->n_dropped;
    res->n_replicas_refused = s->n_rep_refused;
    res->n_refused = s->n_refused;
    res->n_expired = s->n_expired;
    res->makespan_ms = s->now;
    res->n_events = s->n_events;
}

static void per_request(const sim_t *s, pl_sim_req_t *out)
{
    for (size_t i = 0; i < s->n_req; i++) {
        const sim_req_t *q = &s->req[i];
        out[i] = (pl_sim_req_t){
            .ttft_ms = q->first >= 0 ? q->first - q->arrival : -1,
            .tpot_ms = q->done && q->output > 1 ? (q->finish - q->first) / (q->output - 1) : 0,
            .finish_ms = q->done ? q->finish : -1,
            .prefill = q->p,
            .decode = q->d,
        };
    }
}

int pl_sim_run(const pl_sim_params_t *p, const pl_req_t *reqs, size_t n, pl_sim_result_t *res,
               pl_sim_req_t *per_req)
{
    int n_role[4] = {0};
    for (int i = 0; i < p->n_inst; i++)
        if (p->inst[i].role <= PL_ROLE_PAIRED)
            n_role[p->inst[i].role]++;
    const char *why = check(p, reqs, n, n_role);
    if (why) {
        bt_error("simulator: %s", why);
        return BT_ERR_INVAL;
    }
    sim_t s = {0};
    int st = setup(&s, p, reqs, n);
    double *scratch = st == BT_OK ? bt_malloc((3 * n + 1) * sizeof *scratch) : NULL;
    if (st == BT_OK && !scratch)
        st = BT_ERR_NOMEM;
    if (st == BT_OK) {
        int stopped = loop(&s, reqs, n);
        if (s.nomem) {
            st = BT_ERR_NOMEM;
        } else {
            *res = (pl_sim_result_t){.stopped_early = stopped};
            summarize(&s, scratch, res);
            if (per_req)
                per_request(&s, per_req);
        }
    }
    bt_free(scratch);
    teardown(&s);
    return st;
}
