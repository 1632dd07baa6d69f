/* SPDX-License-Identifier: MIT */
/*
 * client.c - the client library: one DEALER socket to the router, requests multiplexed on it
 * by request id (see baton_client.h).
 *
 * Messages for requests other than the one a blocking call waits for are parsed into records
 * and queued, in arrival order, for bt_client_next; nothing is ever lost or reordered per
 * request. A chunk handed to the caller is kept (as the unpacked message it points into) until
 * the next call, which is what makes its pointers valid without a copy.
 */
#include <errno.h>
#include <string.h>
#include <time.h>
#include <zmq.h>

#include "client_impl.h"
#include "common/alloc.h"
#include "common/rpc.h"
#include "common/status.h"

_Static_assert(BT_CLIENT_ERR_OVERLOADED == BT_ERR_OVERLOADED &&
                   BT_CLIENT_ERR_UNAVAILABLE == BT_ERR_UNAVAILABLE &&
                   BT_CLIENT_ERR_DRAINING == BT_ERR_DRAINING &&
                   BT_CLIENT_ERR_TIMEOUT == BT_ERR_TIMEOUT && BT_CLIENT_ERR_RANGE == BT_ERR_RANGE &&
                   BT_CLIENT_ERR_NOT_FOUND == BT_ERR_NOT_FOUND &&
                   BT_CLIENT_ERR_UNSUPPORTED == BT_ERR_UNSUPPORTED &&
                   BT_CLIENT_ERR_INTERNAL == BT_ERR_INTERNAL,
               "client status codes mirror bt_status_t");

#define CLIENT_DEFAULT_TIMEOUT_MS 60000

typedef struct rec {
    struct rec *next;
    uint64_t id;
    Baton__TokenChunk *tc;      /* a chunk, or */
    bt_client_result_t *result; /* a result */
} rec_t;

struct bt_client {
    void *zctx, *sock;
    int timeout_ms;
    uint64_t next_id;
    client_idset_t inflight;
    rec_t *head, *tail;      /* events waiting for bt_client_next */
    Baton__TokenChunk *held; /* the chunk last handed out */
    char *text;              /* the text last handed out, NUL-terminated */
    size_t text_cap;
};

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int bt_client_connect(const bt_client_params_t *params, bt_client_t **out)
{
    if (!params || !params->endpoint || !out)
        return BT_ERR_INVAL;
    bt_client_t *c = bt_calloc(1, sizeof *c);
    if (!c)
        return BT_ERR_NOMEM;
    c->timeout_ms = params->timeout_ms ? params->timeout_ms : CLIENT_DEFAULT_TIMEOUT_MS;
    c->next_id = 1;
    c->zctx = zmq_ctx_new();
    c->sock = c->zctx ? zmq_socket(c->zctx, ZMQ_DEALER) : NULL;
    if (!c->sock || bt_rpc_socket_setup(c->sock) != BT_OK ||
        zmq_connect(c->sock, params->endpoint) != 0) {
        int st = c->sock && zmq_errno() == EINVAL ? BT_ERR_INVAL : BT_ERR_IO;
        bt_client_close(c);
        return st;
    }
    *out = c;
    return BT_OK;
}

static void rec_free(rec_t *r)
{
    if (r->tc)
        protobuf_c_message_free_unpacked(&r->tc->base, NULL);
    bt_client_result_free(r->result);
    bt_free(r);
}

static void release_held(bt_client_t *c)
{
    if (c->held)
        protobuf_c_message_free_unpacked(&c->held->base, NULL);
    c->held = NULL;
}

void bt_client_close(bt_client_t *c)
{
    if (!c)
        return;
    release_held(c);
    while (c->head) {
        rec_t *r = c->head;
        c->head = r->next;
        rec_free(r);
    }
    if (c->sock)
        zmq_close(c->sock);
    if (c->zctx)
        zmq_ctx_term(c->zctx);
    client_idset_fini(&c->inflight);
    bt_free(c->text);
    bt_free(c);
}

size_t bt_client_in_flight(const bt_client_t *c)
{
    return c->inflight.n;
}

/* --- receiving ------------------------------------------------------------------------ */

/* One message, waiting until deadline (< 0: forever). BT_ERR_TIMEOUT when none came. */
static int recv_msg(bt_client_t *c, int64_t deadline, bt_rpc_msg_t *m)
{
    zmq_pollitem_t it = {c->sock, 0, ZMQ_POLLIN, 0};
    for (;;) {
        int st = bt_rpc_recv(c->sock, m, ZMQ_DONTWAIT);
        if (st != BT_AGAIN)
            return st;
        bt_rpc_msg_fini(m);
        long wait = deadline < 0 ? -1 : (long)(deadline - now_ms());
        if (deadline >= 0 && wait <= 0)
            return BT_ERR_TIMEOUT;
        if (zmq_poll(&it, 1, wait) < 0 && zmq_errno() != EINTR)
            return BT_ERR_IO;
    }
}

/* Turns a message about a request in flight into a record; NULL for anything else. */
static rec_t *to_record(bt_client_t *c, const bt_rpc_msg_t *m)
{
    uint64_t id = m->hdr.request_id;
    int is_result = m->hdr.method == BATON__METHOD__RESULT ||
                    (m->hdr.method == BATON__METHOD__GENERATE && m->hdr.status != BT_OK);
    if (!client_idset_has(&c->inflight, id) ||
        !(is_result || (m->hdr.method == BATON__METHOD__TOKENS && m->hdr.status == BT_OK)))
        return NULL;
    rec_t *r = bt_calloc(1, sizeof *r);
    if (!r)
        return NULL;
    r->id = id;
    ProtobufCMessage *body = NULL;
    if (!is_result) {
        if (bt_rpc_unpack(m, &body) != BT_OK) {
            bt_free(r);
            return NULL;
        }
        r->tc = (Baton__TokenChunk *)body;
        return r;
    }
    int status = m->hdr.status;
    if (m->hdr.method == BATON__METHOD__RESULT && bt_rpc_unpack(m, &body) != BT_OK &&
        status == BT_OK)
        status = BT_ERR_FORMAT;
    r->result = client_result_make(id, status, m->hdr.error, (Baton__GenerateResult *)body);
    if (body)
        protobuf_c_message_free_unpacked(body, NULL);
    if (!r->result) {
        bt_free(r);
        return NULL;
    }
    client_idset_del(&c->inflight, id);
    return r;
}

static void enqueue(bt_client_t *c, rec_t *r)
{
    r->next = NULL;
    if (c->tail)
        c->tail->next = r;
    else
        c->head = r;
    c->tail = r;
}

static rec_t *dequeue(bt_client_t *c)
{
    rec_t *r = c->head;
    if (r) {
        c->head = r->next;
        if (!c->head)
            c->tail = NULL;
    }
    return r;
}

/* The chunk as the caller sees it; its text is copied with a NUL after it (the message's own
 * bytes have none, and may hold NULs of their own). */
static void fill_chunk(bt_client_t *c, const Baton__TokenChunk *tc, uint64_t id,
                       bt_client_chunk_t *out)
{
    out->request_id = id;
    out->index = tc->index;
    out->ids = tc->ids;
    out->n_ids = tc->n_ids;
    out->text = "";
    out->text_len = 0;
    out->time_ns = tc->time_ns;
    size_t n = tc->text.data ? tc->text.len : 0;
    if (n + 1 > c->text_cap) {
        char *t = bt_realloc(c->text, n + 1);
        if (!t)
            return; /* the ids still go through */
        c->text = t;
        c->text_cap = n + 1;
    }
    if (n) {
        memcpy(c->text, tc->text.data, n);
        c->text[n] = 0;
        out->text = c->text;
        out->text_len = n;
    }
}

/* --- sending -------------------------------------------------------------------------- */

static int send_request(bt_client_t *c, const bt_client_gen_params_t *p, uint64_t id)
{
    Baton__GenerateRequest g = BATON__GENERATE_REQUEST__INIT;
    Baton__SamplingParams s = BATON__SAMPLING_PARAMS__INIT;
    Baton__Slo slo = BATON__SLO__INIT;
    g.prompt = p->prompt ? (char *)p->prompt : "";
    g.prompt_ids = (int32_t *)p->prompt_ids;
    g.n_prompt_ids = p->prompt_ids ? p->n_prompt_ids : 0;
    g.max_tokens = p->max_tokens;
    g.add_bos = !p->no_bos;
    g.return_text = p->return_text != 0;
    s.temperature = p->temperature;
    s.top_k = p->top_k;
    s.top_p = p->top_p;
    s.min_p = p->min_p;
    s.repeat_penalty = p->repeat_penalty;
    s.repeat_last_n = p->repeat_last_n;
    s.seed = p->seed;
    s.stop_ids = (int32_t *)p->stop_ids;
    s.n_stop_ids = p->stop_ids ? p->n_stop_ids : 0;
    s.stop = (char **)p->stop;
    s.n_stop = p->stop ? p->n_stop : 0;
    s.ignore_eos = p->ignore_eos != 0;
    slo.ttft_ms = p->slo_ttft_ms;
    slo.tpot_ms = p->slo_tpot_ms;
    g.sampling = &s;
    g.slo = &slo;
    bt_rpc_header_t h;
    bt_rpc_header_init(&h, BATON__METHOD__GENERATE, id);
    return bt_rpc_send(c->sock, NULL, &h, &g.base, ZMQ_DONTWAIT);
}

int bt_client_submit(bt_client_t *c, const bt_client_gen_params_t *p, uint64_t *request_id)
{
    if (!c || !p)
        return BT_ERR_INVAL;
    uint64_t id = p->request_id;
    if (!id) {
        do
            id = c->next_id++;
        while (!id || client_idset_has(&c->inflight, id));
    }
    if (client_idset_has(&c->inflight, id))
        return BT_ERR_INVAL;
    if (client_idset_add(&c->inflight, id) != BT_OK)
        return BT_ERR_NOMEM;
    int st = send_request(c, p, id);
    if (st != BT_OK) {
        client_idset_del(&c->inflight, id);
        return st == BT_AGAIN ? BT_ERR_OVERLOADED : st;
    }
    if (request_id)
        *request_id = id;
    return BT_OK;
}

int bt_client_cancel(bt_client_t *c, uint64_t request_id)
{
    if (!c)
        return BT_ERR_INVAL;
    if (!client_idset_has(&c->inflight, request_id))
        return BT_ERR_NOT_FOUND;
    bt_rpc_header_t h;
    bt_rpc_header_init(&h, BATON__METHOD__CANCEL, request_id);
    return bt_rpc_send(c->sock, NULL, &h, NULL, ZMQ_DONTWAIT);
}

/* --- the two ways to run requests --------------------------------------------------------- */

int bt_client_next(bt_client_t *c, int timeout_ms, bt_client_next_t *out)
{
    if (!c || !out)
        return BT_ERR_INVAL;
    release_held(c);
    int64_t deadline = timeout_ms < 0 ? -1 : now_ms() + timeout_ms;
    rec_t *r = dequeue(c);
    while (!r) {
        if (c->inflight.n == 0)
            return BT_ERR_NOT_FOUND;
        bt_rpc_msg_t m;
        int st = recv_msg(c, deadline, &m);
        if (st == BT_OK)
            r = to_record(c, &m);
        bt_rpc_msg_fini(&m);
        if (st == BT_ERR_TIMEOUT || st == BT_ERR_IO)
            return st;
    }
    memset(out, 0, sizeof *out);
    if (r->tc) {
        out->kind = BT_CLIENT_NEXT_CHUNK;
        c->held = r->tc;
        r->tc = NULL;
        fill_chunk(c, c->held, r->id, &out->chunk);
    } else {
        out->kind = BT_CLIENT_NEXT_RESULT;
        out->result = r->result;
        r->result = NULL;
    }
    rec_free(r);
    return BT_OK;
}

/* Handles one record of the request a blocking call runs; 1 when it was the result. */
static int own_record(bt_client_t *c, rec_t *r, bt_client_chunk_fn on_chunk, void *user,
                      bt_client_result_t **result)
{
    if (r->result) {
        *result = r->result;
        r->result = NULL;
        rec_free(r);
        return 1;
    }
    bt_client_chunk_t ch;
    fill_chunk(c, r->tc, r->id, &ch);
    if (on_chunk && on_chunk(user, &ch) != 0)
        bt_client_cancel(c, r->id);
    rec_free(r);
    return 0;
}

int bt_client_generate(bt_client_t *c, const bt_client_gen_params_t *p, bt_client_chunk_fn on_chunk,
                       void *user, bt_client_result_t **result)
{
    if (!c || !p || !result)
        return BT_ERR_INVAL;
    release_held(c);
    uint64_t id;
    int st = bt_client_submit(c, p, &id);
    if (st != BT_OK)
        return st;
    int64_t deadline = c->timeout_ms < 0 ? -1 : now_ms() + c->timeout_ms;
    for (;;) {
        bt_rpc_msg_t m;
        st = recv_msg(c, deadline, &m);
        rec_t *r = st == BT_OK ? to_record(c, &m) : NULL;
        bt_rpc_msg_fini(&m);
        if (st == BT_ERR_TIMEOUT || st == BT_ERR_IO) {
            bt_client_cancel(c, id);
            client_idset_del(&c->inflight, id); /* abandoned: its late messages are dropped */
            return st;
        }
        if (r && r->id != id) {
            enqueue(c, r);
        } else if (r) {
            if (own_record(c, r, on_chunk, user, result))
                return BT_OK;
            if (deadline >= 0) /* progress: the timeout is for silence, not the whole run */
                deadline = now_ms() + c->timeout_ms;
        }
    }
}

/* --- health and info --------------------------------------------------------------------- */

/* HEALTH and INFO requests have empty bodies but their replies do not, so a reply is unpacked
 * by its own type rather than by bt_rpc_unpack's table, which maps each method to its
 * request's body. */
static int unpack_reply(const bt_rpc_msg_t *m, ProtobufCMessage **out)
{
    const ProtobufCMessageDescriptor *d = m->hdr.method == BATON__METHOD__HEALTH
                                              ? &baton__health_reply__descriptor
                                              : &baton__info_reply__descriptor;
    *out = protobuf_c_message_unpack(d, NULL, m->body_len, m->body ? m->body : (const uint8_t *)"");
    return *out ? BT_OK : BT_ERR_FORMAT;
}

/* Sends an empty-bodied call and waits for its reply; other requests' events are queued. */
static int call(bt_client_t *c, Baton__Method method, int timeout_ms, ProtobufCMessage **reply)
{
    uint64_t id = c->next_id++;
    bt_rpc_header_t h;
    bt_rpc_header_init(&h, method, id);
    int st = bt_rpc_send(c->sock, NULL, &h, NULL, ZMQ_DONTWAIT);
    if (st != BT_OK)
        return st == BT_AGAIN ? BT_ERR_IO : st;
    int t = timeout_ms ? timeout_ms : c->timeout_ms;
    int64_t deadline = t < 0 ? -1 : now_ms() + t;
    for (;;) {
        bt_rpc_msg_t m;
        st = recv_msg(c, deadline, &m);
        if (st == BT_OK && m.hdr.method == method && m.hdr.request_id == id) {
            st = m.hdr.status != BT_OK ? m.hdr.status : unpack_reply(&m, reply);
            bt_rpc_msg_fini(&m);
            return st;
        }
        rec_t *r = st == BT_OK ? to_record(c, &m) : NULL;
        bt_rpc_msg_fini(&m);
        if (r)
            enqueue(c, r);
        if (st == BT_ERR_TIMEOUT || st == BT_ERR_IO)
            return st;
    }
}

int bt_client_health(bt_client_t *c, int timeout_ms, bt_client_health_t *out)
{
    if (!c || !out)
        return BT_ERR_INVAL;
    ProtobufCMessage *body = NULL;
    int st = call(c, BATON__METHOD__HEALTH, timeout_ms, &body);
    if (st != BT_OK)
        return st;
    const Baton__HealthReply *h = (Baton__HealthReply *)body;
    *out = (bt_client_health_t){.ok = h->ok,
                                .n_prefill = h->n_prefill,
                                .n_decode = h->n_decode,
                                .n_colocated = h->n_colocated,
                                .queued = h->queued,
                                .running = h->running};
    protobuf_c_message_free_unpacked(body, NULL);
    return BT_OK;
}

int bt_client_info(bt_client_t *c, int timeout_ms, bt_client_info_t **out)
{
    if (!c || !out)
        return BT_ERR_INVAL;
    ProtobufCMessage *body = NULL;
    int st = call(c, BATON__METHOD__INFO, timeout_ms, &body);
    if (st != BT_OK)
        return st;
    *out = client_info_make((Baton__InfoReply *)body);
    protobuf_c_message_free_unpacked(body, NULL);
    return *out ? BT_OK : BT_ERR_NOMEM;
}
