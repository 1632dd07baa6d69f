/* SPDX-License-Identifier: MIT */
/*
 * client_msg.c - what the client library builds from the router's messages: results and info
 * as single allocations the caller frees in one call.
 *
 * A result is laid out in one block (struct, events, ids, strings) so that a caller who keeps
 * thousands of them pays one malloc and one free each, and cannot free half of one.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "client_impl.h"
#include "common/alloc.h"
#include "common/status.h"

/* --- one-block layouts ------------------------------------------------------------------ */

typedef struct {
    char *p, *end;
} bump_t;

static void *bump(bump_t *b, size_t n, size_t align)
{
    uintptr_t at = ((uintptr_t)b->p + align - 1) & ~(uintptr_t)(align - 1);
    b->p = (char *)at + n;
    return (void *)at;
}

/* n bytes at s (which may hold NULs), and a NUL after them. */
static const char *bump_text(bump_t *b, const void *s, size_t n)
{
    char *d = bump(b, n + 1, 1);
    if (n)
        memcpy(d, s, n);
    d[n] = 0;
    return d;
}

static const char *bump_str(bump_t *b, const char *s)
{
    return bump_text(b, s, s ? strlen(s) : 0);
}

static size_t str_size(const char *s)
{
    return (s ? strlen(s) : 0) + 1;
}

bt_client_result_t *client_result_make(uint64_t id, int status, const char *error,
                                       const Baton__GenerateResult *g)
{
    size_t n_ev = g ? g->n_events : 0, n_ids = g ? g->n_ids : 0;
    size_t size = sizeof(bt_client_result_t) + 64 + n_ev * sizeof(bt_client_event_t) +
                  n_ids * sizeof(int32_t) + str_size(error);
    if (g) {
        size += g->text.len + 1 + str_size(g->prefill_instance) + str_size(g->decode_instance);
        for (size_t i = 0; i < n_ev; i++)
            size += str_size(g->events[i]->instance);
    }
    char *mem = bt_malloc(size);
    if (!mem)
        return NULL;
    bump_t b = {mem, mem + size};
    bt_client_result_t *r = bump(&b, sizeof *r, 16);
    memset(r, 0, sizeof *r);
    r->request_id = id;
    r->status = status;
    r->error = bump_str(&b, error);
    bt_client_event_t *ev = bump(&b, n_ev * sizeof *ev, 8);
    int32_t *ids = bump(&b, n_ids * sizeof *ids, 4);
    if (n_ids)
        memcpy(ids, g->ids, n_ids * sizeof *ids);
    for (size_t i = 0; i < n_ev; i++) {
        ev[i].kind = g->events[i]->kind;
        ev[i].time_ns = g->events[i]->time_ns;
        ev[i].code = g->events[i]->code;
        ev[i].instance = bump_str(&b, g->events[i]->instance);
    }
    r->events = ev;
    r->n_events = n_ev;
    r->ids = ids;
    r->n_ids = n_ids;
    r->text_len = g && g->text.data ? g->text.len : 0;
    r->text = bump_text(&b, r->text_len ? g->text.data : NULL, r->text_len);
    r->prefill_instance = bump_str(&b, g ? g->prefill_instance : NULL);
    r->decode_instance = bump_str(&b, g ? g->decode_instance : NULL);
    if (g) {
        r->finish_reason = (bt_client_finish_t)g->finish_reason;
        r->n_prompt_tokens = g->n_prompt_tokens;
        r->n_output_tokens = g->n_output_tokens;
        r->retries = g->retries;
    }
    if (status != BT_OK)
        r->finish_reason = BT_CLIENT_FINISH_FAILED;
    return r;
}

void bt_client_result_free(bt_client_result_t *r)
{
    bt_free(r);
}

bt_client_info_t *client_info_make(const Baton__InfoReply *in)
{
    size_t size = sizeof(bt_client_info_t) + 32 + str_size(in->model) + str_size(in->policy) +
                  in->n_instances * sizeof(bt_client_instance_t);
    for (size_t i = 0; i < in->n_instances; i++)
        size += str_size(in->instances[i]->id) + str_size(in->instances[i]->partner);
    char *mem = bt_malloc(size);
    if (!mem)
        return NULL;
    bump_t b = {mem, mem + size};
    bt_client_info_t *info = bump(&b, sizeof *info, 16);
    bt_client_instance_t *v = bump(&b, in->n_instances * sizeof *v, 8);
    *info = (bt_client_info_t){.n_vocab = in->n_vocab,
                               .n_ctx = in->n_ctx,
                               .max_prompt_tokens = in->max_prompt_tokens,
                               .max_tokens = in->max_tokens,
                               .protocol_version = in->protocol_version,
                               .instances = v,
                               .n_instances = in->n_instances};
    info->model = bump_str(&b, in->model);
    info->policy = bump_str(&b, in->policy);
    for (size_t i = 0; i < in->n_instances; i++) {
        const Baton__InstanceInfo *x = in->instances[i];
        v[i] = (bt_client_instance_t){.role = x->role,
                                      .alive = x->alive,
                                      .queue_len = x->queue_len,
                                      .running = x->running,
                                      .kv_free_blocks = x->kv_free_blocks,
                                      .kv_total_blocks = x->kv_total_blocks,
                                      .serving = x->serving,
                                      .replicas = x->replicas};
        v[i].id = bump_str(&b, x->id);
        v[i].partner = bump_str(&b, x->partner);
    }
    return info;
}

void bt_client_info_free(bt_client_info_t *info)
{
    bt_free(info);
}

/* --- names ---------------------------------------------------------------------------- */

const char *bt_client_strerror(int status)
{
    return bt_status_str(status);
}

const char *bt_client_lifetime_name(int kind)
{
    static const char *const names[] = {"NONE",          "ISSUED",        "PREFILL_QUEUED",
                                        "PREFILL_BEGIN", "PREFILL_END",   "TRANSFER_BEGIN",
                                        "TRANSFER_END",  "DECODE_QUEUED", "DECODE_BEGIN",
                                        "FINISHED",      "CANCELLED",     "FAILED"};
    return kind >= 0 && kind < (int)(sizeof names / sizeof names[0]) ? names[kind] : "UNKNOWN";
}

const char *bt_client_finish_name(bt_client_finish_t reason)
{
    static const char *const names[] = {"NONE",        "LENGTH",    "EOS",   "STOP_TOKEN",
                                        "STOP_STRING", "CANCELLED", "FAILED"};
    return (unsigned)reason < sizeof names / sizeof names[0] ? names[reason] : "UNKNOWN";
}
