/* SPDX-License-Identifier: MIT */
/*
 * driver.c - the single-threaded open/closed-loop client behind baton-bench.
 *
 * The loop alternates between submitting whatever is due and waiting in bt_client_next for at
 * most the time to the next arrival, so sends are late only by the time to handle one event.
 * Chunk storage for every request is one allocation sized from the asked output lengths: the
 * request path only appends within bounds.
 */
#include "driver.h"

#include <math.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "baton_client.h"
#include "common/alloc.h"
#include "common/clock.h"
#include "common/log.h"
#include "common/status.h"
#include "planner/rng.h"

typedef struct {
    const bb_driver_params_t *p;
    const bb_request_t *reqs;
    bb_run_t *run;
    bt_client_t *cl;
    size_t *cap;  /* (n) chunk capacity of each request */
    int32_t *ids; /* prompt scratch, the longest prompt */
    double t0;    /* CLOCK_MONOTONIC ms at the start */
    size_t next, done, in_flight;
    double last_bar_ms;
} drv_t;

static void make_prompt(const drv_t *d, size_t i, int32_t n)
{
    pl_rng_t r;
    pl_rng_seed(&r, d->p->seed * 0x9e3779b97f4a7c15ull + i + 1);
    for (int32_t k = 0; k < n; k++)
        d->ids[k] = 3 + (int32_t)pl_rng_below(&r, d->p->n_vocab - 3); /* no control tokens */
}

static void submit_one(drv_t *d)
{
    size_t i = d->next++;
    const bb_request_t *q = &d->reqs[i];
    bb_timeline_t *t = &d->run->tl[i];
    make_prompt(d, i, q->prompt);
    bt_client_gen_params_t g = {.prompt_ids = d->ids,
                                .n_prompt_ids = (size_t)q->prompt,
                                .max_tokens = (uint32_t)q->output,
                                .ignore_eos = 1,
                                .request_id = i + 1};
    t->send_ms = bt_mono_ms() - d->t0;
    int st = bt_client_submit(d->cl, &g, NULL);
    if (st != BT_CLIENT_OK) {
        t->status = st;
        t->done_ms = t->send_ms;
        d->done++;
        return;
    }
    d->in_flight++;
}

static void on_chunk(drv_t *d, const bt_client_chunk_t *c, double t_ms)
{
    uint64_t id = c->request_id;
    if (id < 1 || id > d->run->n || c->n_ids == 0)
        return;
    bb_timeline_t *t = &d->run->tl[id - 1];
    if (t->n_chunks < d->cap[id - 1])
        ((bb_chunk_t *)t->chunks)[t->n_chunks++] = (bb_chunk_t){t_ms, (uint32_t)c->n_ids};
}

static void on_result(drv_t *d, const bt_client_result_t *r, double t_ms)
{
    uint64_t id = r->request_id;
    if (id < 1 || id > d->run->n || d->run->tl[id - 1].done_ms >= 0)
        return;
    size_t i = id - 1;
    bb_timeline_t *t = &d->run->tl[i];
    t->done_ms = t_ms;
    t->status = r->status;
    int kinds[64];
    uint64_t ns[64];
    size_t n_ev = r->n_events < 64 ? r->n_events : 64;
    for (size_t k = 0; k < n_ev; k++) {
        kinds[k] = r->events[k].kind;
        ns[k] = r->events[k].time_ns;
    }
    bb_phases_from_events(kinds, ns, n_ev, &t->phases);
    if (r->prefill_instance && *r->prefill_instance)
        d->run->prefill_instance[i] = bt_strdup(r->prefill_instance);
    if (r->decode_instance && *r->decode_instance)
        d->run->decode_instance[i] = bt_strdup(r->decode_instance);
    d->done++;
    d->in_flight--;
}

static void progress(drv_t *d, int final)
{
    double now = bt_mono_ms();
    if (!d->p->progress || (!final && now - d->last_bar_ms < 200))
        return;
    d->last_bar_ms = now;
    size_t n = d->run->n, w = 30, fill = n ? d->done * w / n : w;
    char bar[31];
    for (size_t k = 0; k < w; k++)
        bar[k] = k < fill ? '#' : '.';
    bar[w] = 0;
    fprintf(stderr, "\r%s [%s] %zu/%zu done, %zu in flight, %.1f s%s",
            d->p->label ? d->p->label : "", bar, d->done, n, d->in_flight, (now - d->t0) / 1e3,
            final ? "\n" : "");
}

/* Submits what is due; returns how long to wait for events (ms). */
static int submit_due(drv_t *d)
{
    size_t n = d->run->n;
    if (d->p->concurrency > 0) {
        while (d->next < n && d->in_flight < (size_t)d->p->concurrency)
            submit_one(d);
        return 200;
    }
    while (d->next < n && d->reqs[d->next].arrival_ms <= bt_mono_ms() - d->t0)
        submit_one(d);
    if (d->next >= n)
        return 200;
    double wait = d->reqs[d->next].arrival_ms - (bt_mono_ms() - d->t0);
    return wait > 200 ? 200 : wait > 0 ? (int)ceil(wait) : 0;
}

static int loop(drv_t *d)
{
    double last_event = bt_mono_ms(), limit = (d->p->timeout_s > 0 ? d->p->timeout_s : 600) * 1e3;
    while (d->done < d->run->n) {
        int wait = submit_due(d);
        bt_client_next_t ev;
        int st = bt_client_next(d->cl, wait, &ev);
        double t = bt_mono_ms();
        if (st == BT_CLIENT_OK) {
            if (ev.kind == BT_CLIENT_NEXT_CHUNK) {
                on_chunk(d, &ev.chunk, t - d->t0);
            } else {
                on_result(d, ev.result, t - d->t0);
                bt_client_result_free(ev.result);
            }
            last_event = t;
        } else if (st != BT_CLIENT_ERR_TIMEOUT && st != BT_CLIENT_ERR_NOT_FOUND) {
            bt_error("client: %s", bt_client_strerror(st));
            return st;
        } else if (st == BT_CLIENT_ERR_NOT_FOUND && d->next >= d->run->n) {
            break; /* nothing in flight and nothing left to send */
        } else if (st == BT_CLIENT_ERR_NOT_FOUND && d->p->concurrency <= 0) {
            /* Nothing in flight, so the client did not wait: sleep to the next arrival here
             * (spinning would take a core from the cluster it measures). */
            bt_sleep_until_mono_ms(d->t0 + d->reqs[d->next].arrival_ms);
            last_event = bt_mono_ms();
        }
        if (d->in_flight > 0 && t - last_event > limit) {
            bt_warn("nothing from the cluster for %.0f s; giving up on %zu requests", limit / 1e3,
                    d->in_flight);
            break;
        }
        progress(d, 0);
    }
    return BT_OK;
}

static int run_alloc(const bb_request_t *reqs, size_t n, bb_run_t **out, size_t **cap)
{
    bb_run_t *r = bt_calloc(1, sizeof *r);
    size_t total = 0;
    for (size_t i = 0; i < n; i++)
        total += (size_t)reqs[i].output;
    *cap = bt_calloc(n + 1, sizeof **cap);
    if (r) {
        r->n = n;
        r->tl = bt_calloc(n + 1, sizeof *r->tl);
        r->prefill_instance = bt_calloc(n + 1, sizeof(char *));
        r->decode_instance = bt_calloc(n + 1, sizeof(char *));
        r->chunk_mem = bt_calloc(total + 1, sizeof *r->chunk_mem);
    }
    if (!r || !*cap || !r->tl || !r->prefill_instance || !r->decode_instance || !r->chunk_mem) {
        bb_run_destroy(r);
        bt_free(*cap);
        return BT_ERR_NOMEM;
    }
    size_t off = 0;
    for (size_t i = 0; i < n; i++) {
        r->tl[i] = (bb_timeline_t){.done_ms = -1,
                                   .n_prompt = reqs[i].prompt,
                                   .n_expected = reqs[i].output,
                                   .status = BT_ERR_TIMEOUT,
                                   .chunks = r->chunk_mem + off,
                                   .phases = {-1, -1, -1, -1, -1}};
        (*cap)[i] = (size_t)reqs[i].output;
        off += (size_t)reqs[i].output;
    }
    *out = r;
    return BT_OK;
}

int bb_drive(const bb_driver_params_t *p, const bb_request_t *reqs, size_t n, bb_run_t **out)
{
    if (p->n_vocab <= 3 || n == 0)
        return BT_ERR_INVAL;
    drv_t d = {.p = p, .reqs = reqs};
    int32_t longest = 1;
    for (size_t i = 0; i < n; i++)
        longest = reqs[i].prompt > longest ? reqs[i].prompt : longest;
    int st = run_alloc(reqs, n, &d.run, &d.cap);
    if (st != BT_OK)
        return st;
    d.ids = bt_malloc((size_t)longest * sizeof *d.ids);
    bt_client_params_t cp = {.endpoint = p->endpoint, .timeout_ms = 10000};
    st = d.ids ? bt_client_connect(&cp, &d.cl) : BT_ERR_NOMEM;
    if (st != BT_OK)
        goto err_run;
    d.t0 = bt_mono_ms();
    st = loop(&d);
    progress(&d, 1);
    bt_client_close(d.cl);
    if (st != BT_OK)
        goto err_run;
    d.run->wall_s = (bt_mono_ms() - d.t0) / 1e3;
    bt_free(d.ids);
    bt_free(d.cap);
    *out = d.run;
    return BT_OK;
err_run:
    bt_free(d.ids);
    bt_free(d.cap);
    bb_run_destroy(d.run);
    return st;
}

void bb_run_destroy(bb_run_t *r)
{
    if (!r)
        return;
    for (size_t i = 0; r->prefill_instance && i < r->n; i++)
        bt_free(r->prefill_instance[i]);
    for (size_t i = 0; r->decode_instance && i < r->n; i++)
        bt_free(r->decode_instance[i]);
    bt_free(r->prefill_instance);
    bt_free(r->decode_instance);
    bt_free(r->chunk_mem);
    bt_free(r->tl);
    bt_free(r);
}
