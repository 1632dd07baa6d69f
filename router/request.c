/* SPDX-License-Identifier: MIT */
/*
 * request.c - a request's stream, text and events (see request.h).
 *
 * Held-back chunks form a short list sorted by index; a daemon streams in order over one
 * connection, so a gap only opens when the first token (from the prefill) and the first decode
 * chunk race on two connections, or around a failover. The list is bounded so that a daemon
 * that skips a position cannot make the router hold memory without end.
 */
#include "request.h"

#include <string.h>

#include "common/alloc.h"
#include "common/status.h"

#define RQ_MAX_PENDING 256

struct rq_chunk {
    struct rq_chunk *next;
    uint32_t index;
    uint32_t n;
    size_t text_len;
    int32_t *ids; /* points after the struct */
    char *text;   /* points after the ids */
};

int router_request_create(Baton__GenerateRequest *req, const bt_tokenizer_t *tok,
                          router_request_t **out)
{
    router_request_t *rq = bt_calloc(1, sizeof *rq);
    if (!rq) {
        baton__generate_request__free_unpacked(req, NULL);
        return BT_ERR_NOMEM;
    }
    rq->req = req;
    rq->prompt = req->prompt_ids;
    rq->n_prompt = (uint32_t)req->n_prompt_ids;
    rq->return_text = req->return_text;
    rq->make_text = req->return_text && tok;
    if (rq->make_text) {
        bt_detok_init(&rq->detok, tok);
        const Baton__SamplingParams *s = req->sampling;
        if (s && s->n_stop > 0) {
            bt_stop_params_t sp = {.stop_strs = (const char *const *)s->stop,
                                   .n_stop_strs = (int32_t)s->n_stop};
            int st = bt_stop_create(&sp, NULL, &rq->stop);
            if (st != BT_OK) {
                router_request_destroy(rq);
                return st;
            }
        }
    }
    *out = rq;
    return BT_OK;
}

void router_request_drop_pending(router_request_t *rq)
{
    while (rq->pending) {
        rq_chunk_t *c = rq->pending;
        rq->pending = c->next;
        bt_free(c);
    }
    rq->n_pending = 0;
}

void router_request_destroy(router_request_t *rq)
{
    if (!rq)
        return;
    router_request_drop_pending(rq);
    if (rq->req)
        baton__generate_request__free_unpacked(rq->req, NULL);
    bt_stop_destroy(rq->stop);
    bt_free(rq->prompt_owned);
    bt_free(rq->out);
    bt_free(rq->text);
    bt_free(rq->events);
    bt_free(rq);
}

int router_request_event(router_request_t *rq, int32_t kind, uint64_t time_ns, const char *instance,
                         int32_t code)
{
    if (rq->n_events == rq->cap_events) {
        int cap = rq->cap_events ? rq->cap_events * 2 : 16;
        rq_event_t *e = bt_realloc(rq->events, (size_t)cap * sizeof *e);
        if (!e)
            return BT_ERR_NOMEM;
        rq->events = e;
        rq->cap_events = cap;
    }
    rq_event_t *e = &rq->events[rq->n_events++];
    e->kind = kind;
    e->code = code;
    e->time_ns = time_ns;
    size_t len = instance ? strnlen(instance, sizeof e->instance - 1) : 0;
    memcpy(e->instance, instance ? instance : "", len);
    e->instance[len] = 0;
    return BT_OK;
}

int router_request_events_from(router_request_t *rq, Baton__LifetimeEvent *const *ev, size_t n)
{
    /* A hostile or buggy daemon cannot grow a request without bound. */
    for (size_t i = 0; i < n && rq->n_events < 1024; i++) {
        int st =
            router_request_event(rq, ev[i]->kind, ev[i]->time_ns, ev[i]->instance, ev[i]->code);
        if (st != BT_OK)
            return st;
    }
    return BT_OK;
}

void router_request_sort_events(router_request_t *rq)
{
    for (int i = 1; i < rq->n_events; i++) {
        rq_event_t e = rq->events[i];
        int j = i;
        for (; j > 0 && rq->events[j - 1].time_ns > e.time_ns; j--)
            rq->events[j] = rq->events[j - 1];
        rq->events[j] = e;
    }
}

static int text_append(router_request_t *rq, const char *s, size_t n)
{
    if (n == 0)
        return BT_OK;
    if (rq->text_len + n + 1 > rq->text_cap) {
        size_t cap = rq->text_cap ? rq->text_cap : 256;
        while (cap < rq->text_len + n + 1)
            cap *= 2;
        char *t = bt_realloc(rq->text, cap);
        if (!t)
            return BT_ERR_NOMEM;
        rq->text = t;
        rq->text_cap = cap;
    }
    memcpy(rq->text + rq->text_len, s, n);
    rq->text_len += n;
    rq->text[rq->text_len] = 0;
    return BT_OK;
}

/* Text of one new token, through the detokenizer and the stop-string hold-back. */
static int make_text(router_request_t *rq, int32_t id)
{
    char piece[4096], shown[sizeof piece + BT_STOP_MAX_STRING_BYTES];
    size_t cap = bt_detok_max_bytes(rq->detok.tok);
    if (cap > sizeof piece)
        cap = sizeof piece; /* longer pieces are cut; no Llama vocabulary has them */
    size_t n = bt_detok_push(&rq->detok, id, piece, cap);
    if (!rq->stop)
        return text_append(rq, piece, n);
    size_t n_shown = 0;
    if (rq->text_stopped)
        return BT_OK;
    if (bt_stop_push(rq->stop, id, piece, n, shown, sizeof shown, &n_shown) == BT_STOP_STRING)
        rq->text_stopped = 1;
    return text_append(rq, shown, n_shown);
}

static int append_ids(router_request_t *rq, const int32_t *ids, size_t n)
{
    if (rq->n_out + n > rq->cap_out) {
        uint32_t cap = rq->cap_out ? rq->cap_out : 16;
        while (cap < rq->n_out + n)
            cap *= 2;
        int32_t *o = bt_realloc(rq->out, cap * sizeof *o);
        if (!o)
            return BT_ERR_NOMEM;
        rq->out = o;
        rq->cap_out = cap;
    }
    for (size_t i = 0; i < n; i++) {
        rq->out[rq->n_out++] = ids[i];
        if (rq->make_text && make_text(rq, ids[i]) != BT_OK)
            return BT_ERR_NOMEM;
    }
    return BT_OK;
}

/* Appends the part of a chunk at index that is new; the rest was delivered already. */
static int extend(router_request_t *rq, uint32_t index, const int32_t *ids, size_t n,
                  const char *text, size_t text_len, rq_relay_t *out)
{
    size_t skip = rq->n_out - index;
    for (size_t i = 0; i < skip && i < n; i++)
        out->diverged |= rq->out[index + i] != ids[i];
    if (skip >= n)
        return BT_OK;
    size_t room = rq->max_tokens > rq->n_out ? rq->max_tokens - rq->n_out : 0;
    size_t take = n - skip < room ? n - skip : room;
    int st = append_ids(rq, ids + skip, take);
    /* A daemon's text covers its whole chunk; it is used only when no token was dropped. */
    if (st == BT_OK && !rq->make_text && rq->return_text && skip == 0 && take == n)
        st = text_append(rq, text, text_len);
    out->n += (uint32_t)take;
    return st;
}

static int hold(router_request_t *rq, uint32_t index, const int32_t *ids, size_t n,
                const char *text, size_t text_len)
{
    if (rq->n_pending >= RQ_MAX_PENDING)
        return BT_ERR_RANGE;
    rq_chunk_t *c = bt_malloc(sizeof *c + n * sizeof *ids + text_len + 1);
    if (!c)
        return BT_ERR_NOMEM;
    c->index = index;
    c->n = (uint32_t)n;
    c->ids = (int32_t *)(c + 1);
    c->text = (char *)(c->ids + n);
    c->text_len = text_len;
    memcpy(c->ids, ids, n * sizeof *ids);
    if (text_len)
        memcpy(c->text, text, text_len);
    rq_chunk_t **p = &rq->pending;
    while (*p && (*p)->index <= index)
        p = &(*p)->next;
    c->next = *p;
    *p = c;
    rq->n_pending++;
    return BT_OK;
}

int router_request_push(router_request_t *rq, uint32_t index, const int32_t *ids, size_t n,
                        const char *text, size_t text_len, rq_relay_t *out)
{
    memset(out, 0, sizeof *out);
    out->first = rq->n_out;
    out->text_from = rq->text_len;
    if (n == 0)
        return BT_OK;
    if (index > rq->n_out)
        return hold(rq, index, ids, n, text, text_len);
    int st = extend(rq, index, ids, n, text, text_len, out);
    while (st == BT_OK && rq->pending && rq->pending->index <= rq->n_out) {
        rq_chunk_t *c = rq->pending;
        rq->pending = c->next;
        rq->n_pending--;
        st = extend(rq, c->index, c->ids, c->n, c->text, c->text_len, out);
        bt_free(c);
    }
    return st;
}

size_t router_request_flush_text(router_request_t *rq)
{
    size_t from = rq->text_len;
    if (!rq->make_text)
        return from;
    char buf[BT_STOP_MAX_STRING_BYTES + 64];
    if (rq->text_stopped)
        return from;
    if (rq->stop && rq->finish != BATON__FINISH_REASON__FINISH_STOP_STRING) {
        size_t n = bt_stop_flush(rq->stop, buf, sizeof buf);
        text_append(rq, buf, n);
    }
    size_t n = bt_detok_flush(&rq->detok, buf, sizeof buf);
    if (!rq->stop || rq->finish != BATON__FINISH_REASON__FINISH_STOP_STRING)
        text_append(rq, buf, n);
    return from;
}
