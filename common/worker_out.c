/* SPDX-License-Identifier: MIT */
/*
 * worker_out.c - the outputs a daemon's compute thread hands to its loop thread (see worker.h).
 *
 * Each output is one allocation: the struct and, after it, the arrays it points to, so the loop
 * thread releases it with one free whatever it carried.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "alloc.h"
#include "rpc.h"
#include "status.h"
#include "worker.h"

static size_t round8(size_t n)
{
    return (n + 7) & ~(size_t)7;
}

bt_out_t *bt_out_new(bt_out_kind_t kind, uint64_t request_id, size_t extra_bytes)
{
    bt_out_t *o = bt_calloc(1, round8(sizeof *o) + extra_bytes);
    if (!o)
        return NULL;
    o->kind = kind;
    o->request_id = request_id;
    o->time_ns = bt_rpc_now_ns();
    return o;
}

void bt_out_free(bt_out_t *o)
{
    bt_free(o);
}

static void *extra(bt_out_t *o)
{
    return (char *)o + round8(sizeof *o);
}

bt_out_t *bt_out_chunk(bt_out_kind_t kind, uint64_t request_id, const int32_t *ids, int32_t n_ids,
                       const char *text, size_t n_text, uint32_t index)
{
    size_t id_bytes = round8((size_t)n_ids * sizeof(int32_t));
    bt_out_t *o = bt_out_new(kind, request_id, id_bytes + n_text + 1);
    if (!o)
        return NULL;
    int32_t *dst = extra(o);
    char *t = (char *)dst + id_bytes;
    if (n_ids > 0)
        memcpy(dst, ids, (size_t)n_ids * sizeof(int32_t));
    if (n_text > 0)
        memcpy(t, text, n_text);
    t[n_text] = '\0';
    o->ids = dst;
    o->n_ids = n_ids;
    o->text = t;
    o->n_text = n_text;
    o->index = index;
    return o;
}

bt_out_t *bt_out_done(const bt_req_t *req, Baton__FinishReason finish, uint32_t n_output,
                      int32_t status, const char *fmt, ...)
{
    bt_out_t *o = bt_out_new(BT_OUT_DONE, req->id, 0);
    if (!o)
        return NULL;
    o->part = req->part;
    o->finish = finish;
    o->n_output = n_output;
    o->status = status;
    memcpy(o->events, req->events, (size_t)req->n_events * sizeof req->events[0]);
    o->n_events = req->n_events;
    if (fmt) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(o->error, sizeof o->error, fmt, ap);
        va_end(ap);
    }
    return o;
}

bt_out_t *bt_out_assign_reply(uint64_t request_id, Baton__Role part, int32_t status,
                              const char *error, const bt_reservation_t *resv)
{
    int32_t n = resv ? resv->n_blocks : 0;
    bt_out_t *o = bt_out_new(BT_OUT_ASSIGN_REPLY, request_id, (size_t)n * sizeof(int32_t));
    if (!o)
        return NULL;
    o->part = part;
    o->status = status;
    snprintf(o->error, sizeof o->error, "%s", error ? error : "");
    if (resv) {
        o->resv = *resv;
        o->resv.blocks = extra(o);
        if (n > 0)
            memcpy(o->resv.blocks, resv->blocks, (size_t)n * sizeof(int32_t));
    }
    return o;
}

/* a followed by b as one STREAM chunk (b's time), or NULL when out of memory. */
static bt_out_t *join(const bt_out_t *a, const bt_out_t *b)
{
    size_t id_bytes = round8((size_t)(a->n_ids + b->n_ids) * sizeof(int32_t));
    size_t n_text = a->n_text + b->n_text;
    bt_out_t *o = bt_out_new(BT_OUT_STREAM, a->request_id, id_bytes + n_text + 1);
    if (!o)
        return NULL;
    int32_t *ids = extra(o);
    char *t = (char *)ids + id_bytes;
    memcpy(ids, a->ids, (size_t)a->n_ids * sizeof(int32_t));
    memcpy(ids + a->n_ids, b->ids, (size_t)b->n_ids * sizeof(int32_t));
    memcpy(t, a->text, a->n_text);
    memcpy(t + a->n_text, b->text, b->n_text);
    t[n_text] = '\0';
    o->ids = ids;
    o->n_ids = a->n_ids + b->n_ids;
    o->text = t;
    o->n_text = n_text;
    o->index = a->index;
    o->time_ns = b->time_ns;
    return o;
}

void bt_out_coalesce(bt_out_t **outs, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (!outs[i] || outs[i]->kind != BT_OUT_STREAM)
            continue;
        for (size_t j = i + 1; j < n; j++) {
            bt_out_t *a = outs[i], *b = outs[j];
            if (!b || b->request_id != a->request_id)
                continue;
            /* Only a direct continuation; anything else of this request ends the run. */
            if (b->kind != BT_OUT_STREAM || b->index != a->index + (uint32_t)a->n_ids)
                break;
            bt_out_t *m = join(a, b);
            if (!m)
                break;
            bt_out_free(a);
            bt_out_free(b);
            outs[i] = m;
            outs[j] = NULL;
        }
    }
}
