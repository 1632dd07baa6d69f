/* SPDX-License-Identifier: MIT */
/*
 * client.c - the client library: one DEALER socket to the router, requests multiplexed on it
 * by request id (see baton_client.h).
 *
 * Messages for requests other than the one a blocking call waits for are parsed into records
 * and queued, in arrival order, for bt_client_next; nothing is ever lost or reordered per
 * request. A chunk handed to the caller is kept (as the unpacked message it points into) until
 * the next call, which is what makes its pointers valid without a copy.
 *
 * A lost router: a monitor on the socket reports a connection that dropped (the router died,
 * restarted, or the network cut it). Whatever the router knew of this client's requests is
 * then gone, so the library opens a new socket to the same endpoint and sends every request in
 * flight again, with the tokens it has already received (resume_ids): the router continues
 * after them, as its own failover does, and sampling is a function of seed and position, so
 * the stream goes on with no gap and no repeat. Each request keeps its packed GenerateRequest
 * and its tokens for that.
 */
#include <errno.h>
#include <string.h>
#include <time.h>
#include <zmq.h>

#include "client_impl.h"
#include "common/alloc.h"
#include "common/reqtable.h"
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
#define CLIENT_DEFAULT_RESUBMITS 3

typedef struct rec {
    struct rec *next;
    uint64_t id;
    Baton__TokenChunk *tc;      /* a chunk, or */
    bt_client_result_t *result; /* a result */
} rec_t;

/* A request in flight: what sending it again takes. */
typedef struct {
    uint8_t *body; /* the packed GenerateRequest as first sent */
    size_t body_len;
    int32_t *ids; /* the output tokens received, in order */
    uint32_t n_ids;
    size_t cap_ids;
    uint8_t *text; /* their text, as streamed */
    size_t text_len, text_cap;
    int untracked;      /* a token or its text could not be kept: it cannot be resumed */
    int cancelled;      /* the caller cancelled it: never sent again */
    uint32_t resubmits; /* times sent again after a lost connection */
} creq_t;

struct bt_client {
    void *zctx, *sock;
    void *mon; /* PAIR: the socket's connection events */
    char *endpoint;
    int timeout_ms;
    int max_resubmits;  /* < 0: never */
    uint32_t n_sockets; /* sockets opened so far: names each monitor */
    int requeued;       /* a lost connection left records in the queue: a blocking call looks */
    uint64_t next_id;
    bt_reqtable_t inflight;  /* id -> creq_t */
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

static void creq_free(creq_t *q)
{
    if (q) {
        bt_free(q->body);
        bt_free(q->ids);
        bt_free(q->text);
        bt_free(q);
    }
}

static void close_socket(bt_client_t *c)
{
    if (c->mon)
        zmq_close(c->mon);
    if (c->sock)
        zmq_close(c->sock);
    c->mon = c->sock = NULL;
}

/* A DEALER to the endpoint with a monitor of its connections (a dropped one means the router
 * lost what it knew of this client). */
static int open_socket(bt_client_t *c)
{
    char ep[64];
    snprintf(ep, sizeof ep, "inproc://baton-client-%p-%u", (void *)c, c->n_sockets++);
    c->sock = zmq_socket(c->zctx, ZMQ_DEALER);
    if (!c->sock || bt_rpc_socket_setup(c->sock) != BT_OK)
        return BT_ERR_IO;
    if (zmq_socket_monitor(c->sock, ep, ZMQ_EVENT_DISCONNECTED) != 0 ||
        !(c->mon = zmq_socket(c->zctx, ZMQ_PAIR)) || zmq_connect(c->mon, ep) != 0)
        return BT_ERR_IO;
    if (zmq_connect(c->sock, c->endpoint) != 0)
        return zmq_errno() == EINVAL ? BT_ERR_INVAL : BT_ERR_IO;
    return BT_OK;
}

int bt_client_connect(const bt_client_params_t *params, bt_client_t **out)
{
    if (!params || !params->endpoint || !out)
        return BT_ERR_INVAL;
    bt_client_t *c = bt_calloc(1, sizeof *c);
    if (!c)
        return BT_ERR_NOMEM;
    c->timeout_ms = params->timeout_ms ? params->timeout_ms : CLIENT_DEFAULT_TIMEOUT_MS;
    c->max_resubmits = params->max_resubmits ? params->max_resubmits : CLIENT_DEFAULT_RESUBMITS;
    c->next_id = 1;
    bt_reqtable_init(&c->inflight);
    size_t n = strlen(params->endpoint);
    c->endpoint = bt_malloc(n + 1);
    c->zctx = c->endpoint ? zmq_ctx_new() : NULL;
    int st = c->zctx ? BT_OK : BT_ERR_NOMEM;
    if (st == BT_OK) {
        memcpy(c->endpoint, params->endpoint, n + 1);
        st = open_socket(c);
    }
    if (st != BT_OK) {
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
    close_socket(c);
    if (c->zctx)
        zmq_ctx_term(c->zctx);
    size_t pos = 0;
    creq_t *q;
    while ((q = bt_reqtable_next(&c->inflight, &pos, NULL)) != NULL)
        creq_free(q);
    bt_reqtable_fini(&c->inflight);
    bt_free(c->endpoint);
    bt_free(c->text);
    bt_free(c);
}

size_t bt_client_in_flight(const bt_client_t *c)
{
    return bt_reqtable_len(&c->inflight);
}

static void enqueue(bt_client_t *c, rec_t *r);

/* Ends request id here, with what it received so far (a result the router never sent): failed
 * with status and why, or cancelled when status is BT_OK. */
static void end_local(bt_client_t *c, uint64_t id, creq_t *q, int status, const char *why)
{
    Baton__GenerateResult g = BATON__GENERATE_RESULT__INIT;
    g.finish_reason = status == BT_OK ? BATON__FINISH_REASON__FINISH_CANCELLED
                                      : BATON__FINISH_REASON__FINISH_FAILED;
    g.ids = q->ids;
    g.n_ids = q->n_ids;
    g.n_output_tokens = q->n_ids;
    g.text = (ProtobufCBinaryData){q->text_len, q->text};
    g.retries = q->resubmits;
    rec_t *r = bt_calloc(1, sizeof *r);
    if (r && (r->result = client_result_make(id, status, why, &g)) != NULL) {
        r->id = id;
        enqueue(c, r);
    } else {
        bt_free(r); /* out of memory: the caller's timeout ends the wait */
    }
    creq_free(bt_reqtable_del(&c->inflight, id));
}

/* Sends request id (again, after a lost connection: with the tokens received). */
static int send_again(bt_client_t *c, uint64_t id, creq_t *q)
{
    Baton__GenerateRequest *g = (Baton__GenerateRequest *)protobuf_c_message_unpack(
        &baton__generate_request__descriptor, NULL, q->body_len, q->body);
    if (!g)
        return BT_ERR_NOMEM;
    int32_t *keep = g->resume_ids;
    size_t n_keep = g->n_resume_ids;
    g->resume_ids = q->ids;
    g->n_resume_ids = q->n_ids;
    bt_rpc_header_t h;
    bt_rpc_header_init(&h, BATON__METHOD__GENERATE, id);
    int st = bt_rpc_send(c->sock, NULL, &h, &g->base, ZMQ_DONTWAIT);
    g->resume_ids = keep;
    g->n_resume_ids = n_keep;
    protobuf_c_message_free_unpacked(&g->base, NULL);
    return st;
}

/* Messages that reached the old socket before its connection dropped: kept as records. */
static rec_t *to_record(bt_client_t *c, const bt_rpc_msg_t *m);

static void drain_old(bt_client_t *c)
{
    bt_rpc_msg_t m;
    while (bt_rpc_recv(c->sock, &m, ZMQ_DONTWAIT) == BT_OK) {
        rec_t *r = to_record(c, &m);
        if (r)
            enqueue(c, r);
        bt_rpc_msg_fini(&m);
    }
    bt_rpc_msg_fini(&m);
}

/* Whether the socket's connection dropped since the last look. */
static int connection_dropped(bt_client_t *c)
{
    int dropped = 0;
    for (;;) {
        zmq_msg_t f;
        zmq_msg_init(&f);
        if (zmq_msg_recv(&f, c->mon, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&f);
            return dropped;
        }
        uint16_t ev = 0;
        if (zmq_msg_size(&f) >= sizeof ev)
            memcpy(&ev, zmq_msg_data(&f), sizeof ev);
        int more = zmq_msg_more(&f);
        zmq_msg_close(&f);
        while (more) { /* the endpoint's frame */
            zmq_msg_init(&f);
            more = zmq_msg_recv(&f, c->mon, 0) >= 0 && zmq_msg_more(&f);
            zmq_msg_close(&f);
        }
        dropped |= ev == ZMQ_EVENT_DISCONNECTED;
    }
}

/* After a dropped connection: a new socket, and every request in flight sent on it again (or
 * ended here past max_resubmits). 1 when that happened: the caller looks at the queue again. */
static int reconnect_if_lost(bt_client_t *c)
{
    if (!c->mon || !connection_dropped(c))
        return 0;
    drain_old(c);
    close_socket(c);
    int st = open_socket(c);
    size_t n = bt_reqtable_len(&c->inflight), k = 0, pos = 0;
    uint64_t *ids = bt_malloc((n ? n : 1) * sizeof *ids);
    while (ids && bt_reqtable_next(&c->inflight, &pos, &ids[k]) != NULL)
        k++;
    for (size_t i = 0; i < k; i++) { /* ending one changes the table: not while walking it */
        creq_t *q = bt_reqtable_get(&c->inflight, ids[i]);
        const char *why = NULL;
        if (q->cancelled) { /* what the router would have answered */
            end_local(c, ids[i], q, BT_OK, NULL);
            continue;
        }
        if (st != BT_OK)
            why = "the connection to the router was lost and cannot be opened again";
        else if (c->max_resubmits < 0 || q->resubmits >= (uint32_t)c->max_resubmits)
            why = "the connection to the router was lost (the router restarted or died)";
        else if (q->untracked)
            why = "the connection to the router was lost, and the tokens received could not "
                  "all be kept to resume";
        if (!why) {
            q->resubmits++;
            if (send_again(c, ids[i], q) != BT_OK)
                why = "the connection to the router was lost; sending the request again failed";
        }
        if (why)
            end_local(c, ids[i], q, BT_ERR_UNAVAILABLE, why);
    }
    bt_free(ids); /* out of memory: nothing was sent again; the callers' timeouts end them */
    if (st != BT_OK)
        close_socket(c);
    c->requeued = 1;
    return 1;
}

/* --- receiving ------------------------------------------------------------------------ */

/* One message, waiting until deadline (< 0: forever). BT_ERR_TIMEOUT when none came;
 * BT_AGAIN when the connection was opened again meanwhile (requests were sent again, or ended
 * with records in the queue). */
static int recv_msg(bt_client_t *c, int64_t deadline, bt_rpc_msg_t *m)
{
    for (;;) {
        if (reconnect_if_lost(c)) {
            memset(m, 0, sizeof *m);
            return BT_AGAIN;
        }
        if (!c->sock) {
            memset(m, 0, sizeof *m);
            return BT_ERR_IO;
        }
        int st = bt_rpc_recv(c->sock, m, ZMQ_DONTWAIT);
        if (st != BT_AGAIN)
            return st;
        bt_rpc_msg_fini(m);
        long wait = deadline < 0 ? -1 : (long)(deadline - now_ms());
        if (deadline >= 0 && wait <= 0)
            return BT_ERR_TIMEOUT;
        zmq_pollitem_t it[2] = {{c->sock, 0, ZMQ_POLLIN, 0}, {c->mon, 0, ZMQ_POLLIN, 0}};
        if (zmq_poll(it, c->mon ? 2 : 1, wait) < 0 && zmq_errno() != EINTR)
            return BT_ERR_IO;
    }
}

/* buf (*cap elements of elem bytes) grown to hold need, by doubling: the new buffer, or NULL
 * when out of memory (buf and *cap unchanged then). */
static void *reserve(void *buf, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap)
        return buf;
    size_t n = *cap ? *cap : 64;
    while (n < need)
        n *= 2;
    void *p = bt_realloc(buf, n * elem);
    if (p)
        *cap = n;
    return p;
}

/* Appends a chunk's text to what q keeps (a request ended here carries it); 0 when out of
 * memory. */
static int keep_text(creq_t *q, const ProtobufCBinaryData *t)
{
    if (t->len == 0)
        return 1;
    uint8_t *text = reserve(q->text, &q->text_cap, q->text_len + t->len, 1);
    if (!text)
        return 0;
    q->text = text;
    memcpy(q->text + q->text_len, t->data, t->len);
    q->text_len += t->len;
    return 1;
}

/* Keeps the tokens and text of a chunk of request q; 0 when the chunk holds none it lacks (a
 * resubmission's overlap), and then it is dropped. A chunk that overlaps is cut to what is
 * new (without its text, which cannot be cut at a token). */
static int track(creq_t *q, Baton__TokenChunk *tc)
{
    if (tc->n_ids == 0) { /* text only (held back until now) */
        q->untracked |= !keep_text(q, &tc->text);
        return 1;
    }
    if (tc->index + tc->n_ids <= q->n_ids)
        return 0;
    if (tc->index < q->n_ids) {
        size_t skip = q->n_ids - tc->index;
        memmove(tc->ids, tc->ids + skip, (tc->n_ids - skip) * sizeof *tc->ids);
        tc->n_ids -= skip;
        tc->index += (uint32_t)skip;
        tc->text.len = 0;
    }
    if (tc->index != q->n_ids) { /* a gap: the router never sends one */
        q->untracked = 1;
        return 1;
    }
    int32_t *ids = reserve(q->ids, &q->cap_ids, q->n_ids + tc->n_ids, sizeof *ids);
    if (!ids) {
        q->untracked = 1;
        return 1;
    }
    q->ids = ids;
    memcpy(q->ids + q->n_ids, tc->ids, tc->n_ids * sizeof *tc->ids);
    q->n_ids += (uint32_t)tc->n_ids;
    q->untracked |= !keep_text(q, &tc->text);
    return 1;
}

/* Turns a message about a request in flight into a record; NULL for anything else. */
static rec_t *to_record(bt_client_t *c, const bt_rpc_msg_t *m)
{
    uint64_t id = m->hdr.request_id;
    int is_result = m->hdr.method == BATON__METHOD__RESULT ||
                    (m->hdr.method == BATON__METHOD__GENERATE && m->hdr.status != BT_OK);
    creq_t *q = bt_reqtable_get(&c->inflight, id);
    if (!q || !(is_result || (m->hdr.method == BATON__METHOD__TOKENS && m->hdr.status == BT_OK)))
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
        if (!track(q, r->tc)) {
            rec_free(r);
            return NULL;
        }
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
    r->result->retries += q->resubmits;
    creq_free(bt_reqtable_del(&c->inflight, id));
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

/* The first queued record of request id, taken out of the queue; NULL if none. */
static rec_t *dequeue_id(bt_client_t *c, uint64_t id)
{
    rec_t *prev = NULL;
    for (rec_t *r = c->head; r; prev = r, r = r->next) {
        if (r->id != id)
            continue;
        if (prev)
            prev->next = r->next;
        else
            c->head = r->next;
        if (c->tail == r)
            c->tail = prev;
        return r;
    }
    return NULL;
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
    /* kept packed, to send again if the router is lost */
    creq_t *q = bt_reqtable_get(&c->inflight, id);
    q->body_len = protobuf_c_message_get_packed_size(&g.base);
    q->body = bt_malloc(q->body_len ? q->body_len : 1);
    if (!q->body)
        return BT_ERR_NOMEM;
    protobuf_c_message_pack(&g.base, q->body);
    if (!c->sock)
        return BT_ERR_IO;
    bt_rpc_header_t h;
    bt_rpc_header_init(&h, BATON__METHOD__GENERATE, id);
    return bt_rpc_send_bytes(c->sock, NULL, &h, q->body, q->body_len, ZMQ_DONTWAIT);
}

int bt_client_submit(bt_client_t *c, const bt_client_gen_params_t *p, uint64_t *request_id)
{
    if (!c || !p)
        return BT_ERR_INVAL;
    reconnect_if_lost(c); /* send on a connection that still holds */
    uint64_t id = p->request_id;
    if (!id) {
        do
            id = c->next_id++;
        while (!id || bt_reqtable_get(&c->inflight, id));
    }
    if (bt_reqtable_get(&c->inflight, id))
        return BT_ERR_INVAL;
    creq_t *q = bt_calloc(1, sizeof *q);
    if (!q || bt_reqtable_put(&c->inflight, id, q) != BT_OK) {
        bt_free(q);
        return BT_ERR_NOMEM;
    }
    int st = send_request(c, p, id);
    if (st != BT_OK) {
        creq_free(bt_reqtable_del(&c->inflight, id));
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
    creq_t *q = bt_reqtable_get(&c->inflight, request_id);
    if (!q)
        return BT_ERR_NOT_FOUND;
    q->cancelled = 1;
    if (!c->sock)
        return BT_ERR_IO;
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
        if (bt_reqtable_len(&c->inflight) == 0)
            return BT_ERR_NOT_FOUND;
        bt_rpc_msg_t m;
        int st = recv_msg(c, deadline, &m);
        if (st == BT_OK)
            r = to_record(c, &m);
        bt_rpc_msg_fini(&m);
        if (st == BT_ERR_TIMEOUT || st == BT_ERR_IO)
            return st;
        if (!r)
            r = dequeue(c); /* records of a lost connection */
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
        /* its records of a lost connection first, or its end here */
        rec_t *r = c->requeued ? dequeue_id(c, id) : NULL;
        if (c->requeued && !r)
            c->requeued = 0;
        if (r) {
            if (own_record(c, r, on_chunk, user, result))
                return BT_OK;
            continue;
        }
        bt_rpc_msg_t m;
        st = recv_msg(c, deadline, &m);
        r = st == BT_OK ? to_record(c, &m) : NULL;
        bt_rpc_msg_fini(&m);
        if (st == BT_ERR_TIMEOUT || st == BT_ERR_IO) {
            bt_client_cancel(c, id);
            creq_free(bt_reqtable_del(&c->inflight, id)); /* abandoned: late messages dropped */
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
    reconnect_if_lost(c);
    uint64_t id = c->next_id++;
    bt_rpc_header_t h;
    bt_rpc_header_init(&h, method, id);
    int st = c->sock ? bt_rpc_send(c->sock, NULL, &h, NULL, ZMQ_DONTWAIT) : BT_ERR_IO;
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
        if (st == BT_AGAIN && c->sock) /* a new connection: ask again there */
            bt_rpc_send(c->sock, NULL, &h, NULL, ZMQ_DONTWAIT);
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
