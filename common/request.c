/* SPDX-License-Identifier: MIT */
/*
 * request.c - validating an Assignment into a bt_req_t (see request.h).
 *
 * The request is sized in one pass over the Assignment and filled in a second, so it is one
 * allocation whatever it carries.
 */
#include "request.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "alloc.h"
#include "btassert.h"
#include "rpc.h"
#include "status.h"

static int fail(char *err, size_t cap, int status, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int fail(char *err, size_t cap, int status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, cap, fmt, ap);
    va_end(ap);
    return status;
}

bt_sampler_params_t bt_sampling_from_proto(const Baton__SamplingParams *s)
{
    return (bt_sampler_params_t){.temperature = s->temperature,
                                 .top_k = s->top_k,
                                 .top_p = s->top_p,
                                 .min_p = s->min_p,
                                 .repeat_penalty = s->repeat_penalty,
                                 .repeat_last_n = s->repeat_last_n,
                                 .seed = s->seed};
}

static int check_sampling(const Baton__SamplingParams *s, char *err, size_t cap)
{
    if (!s)
        return BT_OK;
    bt_sampler_params_t p = bt_sampling_from_proto(s);
    if (bt_sampler_params_check(&p) != BT_OK)
        return fail(err, cap, BT_ERR_INVAL, "invalid sampling parameters");
    if (s->n_stop_ids > BT_STOP_MAX_IDS || s->n_stop > BT_STOP_MAX_STRINGS)
        return fail(err, cap, BT_ERR_INVAL, "too many stop ids or strings (at most %d and %d)",
                    BT_STOP_MAX_IDS, BT_STOP_MAX_STRINGS);
    for (size_t i = 0; i < s->n_stop; i++) {
        size_t n = strlen(s->stop[i]);
        if (n == 0 || n > BT_STOP_MAX_STRING_BYTES)
            return fail(err, cap, BT_ERR_INVAL, "stop string %zu is empty or over %d bytes", i,
                        BT_STOP_MAX_STRING_BYTES);
    }
    return BT_OK;
}

static int check_prompt(const Baton__Assignment *a, const bt_req_limits_t *lim, char *err,
                        size_t cap)
{
    if (a->n_prompt_ids == 0)
        return fail(err, cap, BT_ERR_INVAL, "empty prompt");
    if (a->n_prompt_ids >= (size_t)lim->n_ctx)
        return fail(err, cap, BT_ERR_RANGE, "prompt of %zu tokens does not fit the context of %d",
                    a->n_prompt_ids, lim->n_ctx);
    for (size_t i = 0; i < a->n_prompt_ids; i++)
        if (a->prompt_ids[i] < 0 || a->prompt_ids[i] >= lim->n_vocab)
            return fail(err, cap, BT_ERR_RANGE, "prompt token %zu: id %d outside the vocabulary", i,
                        (int)a->prompt_ids[i]);
    return BT_OK;
}

/* The most tokens the sequence can hold: prompt + max_tokens, capped by the context. */
static int32_t seq_max_ctx(const Baton__Assignment *a, const bt_req_limits_t *lim)
{
    int64_t want = (int64_t)a->n_prompt_ids + (a->max_tokens ? (int64_t)a->max_tokens : lim->n_ctx);
    return want < lim->n_ctx ? (int32_t)want : lim->n_ctx;
}

static int check_part(const Baton__Assignment *a, const bt_req_limits_t *lim, char *err, size_t cap)
{
    if (a->part != lim->role)
        return fail(err, cap, BT_ERR_INVAL, "this instance does not serve part %d", (int)a->part);
    if (a->peer_kvx_address.len > BT_REQ_MAX_KVX_ADDRESS ||
        (a->peer_instance && strlen(a->peer_instance) > BT_REQ_MAX_PEER))
        return fail(err, cap, BT_ERR_RANGE, "peer address too long");
    int32_t need = a->part == BATON__ROLE__PREFILL
                       ? bt_blocks_for((int32_t)a->n_prompt_ids, lim->block_size)
                       : bt_blocks_for(seq_max_ctx(a, lim), lim->block_size);
    if (need > lim->max_blocks)
        return fail(err, cap, BT_ERR_RANGE, "request needs %d KV blocks, the pool has %d", need,
                    lim->max_blocks);
    if (a->part != BATON__ROLE__PREFILL && (a->part != BATON__ROLE__PAIR || !a->reservation))
        return BT_OK;
    const Baton__KvReservation *r = a->reservation;
    if (a->part == BATON__ROLE__PAIR && a->replica)
        return fail(err, cap, BT_ERR_INVAL, "a replica part comes without a reservation");
    if (!r || r->n_tokens != a->n_prompt_ids ||
        r->n_block_ids != (size_t)bt_blocks_for((int32_t)a->n_prompt_ids, lim->block_size))
        return fail(err, cap, BT_ERR_INVAL, "missing or inconsistent KV reservation");
    for (size_t i = 0; i < r->n_block_ids; i++)
        if (r->block_ids[i] < 0)
            return fail(err, cap, BT_ERR_INVAL, "negative block id in the reservation");
    return BT_OK;
}

/* Bytes of the one allocation: the struct, then int32 arrays, then strings and the blob. */
static size_t req_size(const Baton__Assignment *a)
{
    const Baton__SamplingParams *s = a->sampling;
    size_t n = sizeof(bt_req_t) + a->n_prompt_ids * sizeof(int32_t);
    if (a->reservation)
        n += a->reservation->n_block_ids * sizeof(int32_t);
    if (s) {
        n += s->n_stop_ids * sizeof(int32_t) + s->n_stop * sizeof(char *);
        for (size_t i = 0; i < s->n_stop; i++)
            n += strlen(s->stop[i]) + 1;
    }
    return n + a->peer_kvx_address.len + sizeof(void *);
}

/* Carves n bytes from the arena cursor, keeping pointer alignment for what follows. */
static void *carve(char **cur, size_t n)
{
    void *p = *cur;
    *cur += (n + sizeof(void *) - 1) & ~(sizeof(void *) - 1);
    return p;
}

static void fill_sampling(bt_req_t *r, const Baton__SamplingParams *s, char **cur)
{
    if (!s)
        return;
    r->sampling = bt_sampling_from_proto(s);
    int32_t *ids = carve(cur, s->n_stop_ids * sizeof(int32_t));
    for (size_t i = 0; i < s->n_stop_ids; i++)
        ids[i] = s->stop_ids[i];
    char **strs = carve(cur, s->n_stop * sizeof(char *));
    for (size_t i = 0; i < s->n_stop; i++) {
        size_t len = strlen(s->stop[i]);
        strs[i] = carve(cur, len + 1);
        memcpy(strs[i], s->stop[i], len + 1);
    }
    r->stop.stop_ids = ids;
    r->stop.n_stop_ids = (int32_t)s->n_stop_ids;
    r->stop.stop_strs = (const char *const *)strs;
    r->stop.n_stop_strs = (int32_t)s->n_stop;
    r->stop.ignore_eos = s->ignore_eos;
}

static void fill_reservation(bt_req_t *r, const Baton__KvReservation *kr, char **cur)
{
    if (!kr)
        return;
    r->resv.id = kr->reservation_id;
    r->resv.generation = kr->generation;
    r->resv.blocks = carve(cur, kr->n_block_ids * sizeof(int32_t));
    for (size_t i = 0; i < kr->n_block_ids; i++)
        r->resv.blocks[i] = kr->block_ids[i];
    r->resv.n_blocks = (int32_t)kr->n_block_ids;
    r->resv.n_tokens = (int32_t)kr->n_tokens;
}

int bt_req_from_assignment(const Baton__Assignment *a, uint64_t id, const bt_req_limits_t *lim,
                           bt_req_t **out, char *err, size_t err_cap)
{
    int st;
    if ((st = check_prompt(a, lim, err, err_cap)) != BT_OK ||
        (st = check_sampling(a->sampling, err, err_cap)) != BT_OK ||
        (st = check_part(a, lim, err, err_cap)) != BT_OK)
        return st;
    size_t size = req_size(a) + 8 * sizeof(void *); /* slack for carve's rounding */
    size += (a->sampling ? a->sampling->n_stop : 0) * sizeof(void *);
    bt_req_t *r = bt_calloc(1, size);
    if (!r)
        return fail(err, err_cap, BT_ERR_NOMEM, "out of memory");
    char *cur = (char *)(r + 1);
    int32_t *prompt = carve(&cur, a->n_prompt_ids * sizeof(int32_t));
    for (size_t i = 0; i < a->n_prompt_ids; i++)
        prompt[i] = a->prompt_ids[i];
    r->id = id;
    r->part = a->part;
    r->replica = a->part == BATON__ROLE__PAIR && a->replica;
    r->prompt = prompt;
    r->n_prompt = (int32_t)a->n_prompt_ids;
    r->max_ctx = seq_max_ctx(a, lim);
    r->max_tokens = r->max_ctx - r->n_prompt;
    r->stop.max_tokens = r->max_tokens;
    fill_sampling(r, a->sampling, &cur);
    fill_reservation(r, a->reservation, &cur);
    r->return_text = a->return_text;
    r->skip_tokens = a->skip_tokens;
    r->issued_ns = a->issued_ns;
    snprintf(r->peer, sizeof r->peer, "%s", a->peer_instance ? a->peer_instance : "");
    if (a->peer_kvx_address.len) {
        uint8_t *blob = carve(&cur, a->peer_kvx_address.len);
        memcpy(blob, a->peer_kvx_address.data, a->peer_kvx_address.len);
        r->peer_kvx = blob;
        r->peer_kvx_len = a->peer_kvx_address.len;
    }
    BT_ASSERT((size_t)(cur - (char *)r) <= size);
    *out = r;
    return BT_OK;
}

void bt_req_destroy(bt_req_t *r)
{
    bt_free(r);
}

void bt_req_event_at(bt_req_t *r, Baton__EventKind kind, int32_t code, uint64_t time_ns)
{
    if (r->n_events >= BT_REQ_MAX_EVENTS)
        return;
    r->events[r->n_events++] = (bt_event_t){.kind = kind, .time_ns = time_ns, .code = code};
}

void bt_req_event(bt_req_t *r, Baton__EventKind kind, int32_t code)
{
    bt_req_event_at(r, kind, code, bt_rpc_now_ns());
}
