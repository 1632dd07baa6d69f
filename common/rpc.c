/* SPDX-License-Identifier: MIT */
/*
 * rpc.c - framing of baton messages over ZeroMQ (see rpc.h).
 *
 * Frames are received one at a time so that surplus frames can be drained without keeping
 * them: ZMQ_MAXMSGSIZE already bounds every frame, and a bad message is read to its end so the
 * socket stays in step. ROUTER sockets carry exactly one route frame (the peer identity).
 */
#include "rpc.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <zmq.h>

#include "alloc.h"
#include "status.h"

uint64_t bt_rpc_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

void bt_rpc_header_init(bt_rpc_header_t *h, Baton__Method method, uint64_t request_id)
{
    memset(h, 0, sizeof *h);
    h->version = BT_RPC_VERSION;
    h->method = method;
    h->request_id = request_id;
}

const ProtobufCMessageDescriptor *bt_rpc_body_type(Baton__Method method)
{
    switch (method) {
    case BATON__METHOD__GENERATE: return &baton__generate_request__descriptor;
    case BATON__METHOD__TOKENS:
    case BATON__METHOD__FIRST_TOKEN:
    case BATON__METHOD__STREAM: return &baton__token_chunk__descriptor;
    case BATON__METHOD__RESULT: return &baton__generate_result__descriptor;
    case BATON__METHOD__HEALTH: return &baton__empty__descriptor;
    case BATON__METHOD__INFO: return &baton__empty__descriptor;
    case BATON__METHOD__CANCEL:
    case BATON__METHOD__ABORT:
    case BATON__METHOD__RESET:
    case BATON__METHOD__DRAIN: return &baton__empty__descriptor;
    case BATON__METHOD__HEARTBEAT: return &baton__heartbeat__descriptor;
    case BATON__METHOD__ASSIGN: return &baton__assignment__descriptor;
    case BATON__METHOD__ASSIGN_REPLY: return &baton__assign_reply__descriptor;
    case BATON__METHOD__DONE: return &baton__done__descriptor;
    case BATON__METHOD__HANDOFF: return &baton__handoff__descriptor;
    case BATON__METHOD__RESUME: return &baton__resume__descriptor;
    case BATON__METHOD__SET_ROLE: return &baton__set_role__descriptor;
    default: return NULL;
    }
}

static int method_known(int method)
{
    return bt_rpc_body_type((Baton__Method)method) != NULL;
}

int bt_rpc_socket_setup(void *sock)
{
    int64_t max = BT_RPC_MAX_BODY_BYTES + BT_RPC_MAX_HEADER_BYTES;
    int linger = 0, hwm = 100000;
    if (zmq_setsockopt(sock, ZMQ_MAXMSGSIZE, &max, sizeof max) != 0 ||
        zmq_setsockopt(sock, ZMQ_LINGER, &linger, sizeof linger) != 0 ||
        zmq_setsockopt(sock, ZMQ_SNDHWM, &hwm, sizeof hwm) != 0 ||
        zmq_setsockopt(sock, ZMQ_RCVHWM, &hwm, sizeof hwm) != 0)
        return BT_ERR_IO;
    return BT_OK;
}

static void drain_rest(void *sock)
{
    int more = 1;
    size_t sz = sizeof more;
    while (zmq_getsockopt(sock, ZMQ_RCVMORE, &more, &sz) == 0 && more) {
        zmq_msg_t f;
        zmq_msg_init(&f);
        zmq_msg_recv(&f, sock, 0);
        zmq_msg_close(&f);
    }
}

/* --- the header, coded directly ------------------------------------------------------
 *
 * Every message carries a Header (proto/baton.proto: five scalar fields). protobuf-c's
 * table-driven coder spent more on it than on many bodies: in the router, a tenth of its
 * CPU at 50,000 requests/s. The wire format is protobuf's, unchanged: fields in any order,
 * the last of a repeated field wins, unknown fields (varint, 64-bit, length-prefixed,
 * 32-bit) are skipped, and what protobuf-c refuses is refused (an unterminated varint, a tag
 * over 5 bytes, a known field with the wrong wire type, groups, a length past the end).
 * tests/common/test_rpc.c holds both coders to the same results on valid, unusual and
 * damaged input, and to the same bytes when encoding. */

enum { WT_VARINT = 0, WT_64BIT = 1, WT_LEN = 2, WT_32BIT = 5 };

/* A varint of at most max bytes at p[*pos..len); its value modulo 2^64. */
static int get_varint(const uint8_t *p, size_t len, size_t *pos, int max, uint64_t *v)
{
    uint64_t r = 0;
    for (int i = 0; i < max && *pos < len; i++) {
        uint8_t b = p[(*pos)++];
        r |= (uint64_t)(b & 0x7f) << (7 * i);
        if (!(b & 0x80)) {
            *v = r;
            return 1;
        }
    }
    return 0;
}

static size_t put_varint(uint8_t *o, uint64_t v)
{
    size_t n = 0;
    for (; v >= 0x80; v >>= 7)
        o[n++] = (uint8_t)(v | 0x80);
    o[n++] = (uint8_t)v;
    return n;
}

int bt_rpc_header_decode(const uint8_t *p, size_t len, bt_rpc_header_t *h)
{
    memset(h, 0, sizeof *h);
    size_t pos = 0;
    while (pos < len) {
        uint64_t key, v = 0;
        if ((p[pos] & 0xf8) == 0 || !get_varint(p, len, &pos, 5, &key))
            return BT_ERR_FORMAT; /* field number 0 (in a one-byte key, as protobuf-c checks) */
        uint32_t field = (uint32_t)(key >> 3);
        int wt = (int)(key & 7);
        size_t at = pos, n = 0; /* a length-prefixed field's bytes */
        switch (wt) {
        case WT_VARINT:
            if (!get_varint(p, len, &pos, 10, &v))
                return BT_ERR_FORMAT;
            break;
        case WT_64BIT:
        case WT_32BIT:
            n = wt == WT_64BIT ? 8 : 4;
            if (len - pos < n)
                return BT_ERR_FORMAT;
            pos += n;
            break;
        case WT_LEN:
            if (!get_varint(p, len, &pos, 5, &v) || (uint32_t)v > len - pos)
                return BT_ERR_FORMAT;
            at = pos;
            n = (uint32_t)v;
            pos += n;
            break;
        default: return BT_ERR_FORMAT; /* groups, and no such wire type */
        }
        if (field >= 1 && field <= 4 && wt != WT_VARINT)
            return BT_ERR_FORMAT;
        switch (field) {
        case 1: h->version = (uint32_t)v; break;
        case 2: h->method = (Baton__Method)(int32_t)(uint32_t)v; break;
        case 3: h->request_id = v; break;
        case 4: h->status = (int32_t)(uint32_t)v; break;
        case 5: {
            if (wt != WT_LEN)
                return BT_ERR_FORMAT;
            const uint8_t *nul = memchr(p + at, 0, n); /* a C string ends at its first NUL */
            size_t k = nul ? (size_t)(nul - (p + at)) : n;
            k = k < sizeof h->error - 1 ? k : sizeof h->error - 1;
            memcpy(h->error, p + at, k);
            h->error[k] = 0;
            break;
        }
        default: break; /* unknown: skipped */
        }
    }
    return BT_OK;
}

size_t bt_rpc_header_encode(const bt_rpc_header_t *h, uint8_t *o)
{
    size_t n = 0, elen = strnlen(h->error, sizeof h->error - 1);
    if (h->version) {
        o[n++] = 1 << 3 | WT_VARINT;
        n += put_varint(o + n, h->version);
    }
    if (h->method) { /* int32 fields go as sign-extended 64-bit varints */
        o[n++] = 2 << 3 | WT_VARINT;
        n += put_varint(o + n, (uint64_t)(int64_t)(int32_t)h->method);
    }
    if (h->request_id) {
        o[n++] = 3 << 3 | WT_VARINT;
        n += put_varint(o + n, h->request_id);
    }
    if (h->status) {
        o[n++] = 4 << 3 | WT_VARINT;
        n += put_varint(o + n, (uint64_t)(int64_t)h->status);
    }
    if (elen) {
        o[n++] = 5 << 3 | WT_LEN;
        n += put_varint(o + n, elen);
        memcpy(o + n, h->error, elen);
        n += elen;
    }
    return n;
}

static int parse_header(const uint8_t *data, size_t len, bt_rpc_header_t *h)
{
    if (len > BT_RPC_MAX_HEADER_BYTES || bt_rpc_header_decode(data, len, h) != BT_OK)
        return BT_ERR_FORMAT;
    if (h->version != BT_RPC_VERSION || !method_known(h->method))
        return BT_ERR_UNSUPPORTED;
    return BT_OK;
}

/* The header and body frames of a message received whole: what bt_rpc_recv makes of them. */
static int take_frames(const uint8_t *hdr, size_t hlen, const uint8_t *body, size_t blen,
                       bt_rpc_msg_t *m)
{
    int st = parse_header(hdr, hlen, &m->hdr);
    if (st == BT_OK && blen > 0) {
        m->body_len = blen;
        m->body = blen <= sizeof m->small ? m->small : bt_malloc(blen);
        if (m->body)
            memcpy(m->body, body, blen);
        else
            st = BT_ERR_NOMEM;
    }
    return st;
}

static void msg_clear(bt_rpc_msg_t *m)
{
    /* Not memset(m): small need not be cleared, nor route ids past route.n. */
    m->route.n = 0;
    memset(m->route.len, 0, sizeof m->route.len);
    memset(&m->hdr, 0, sizeof m->hdr);
    m->body = NULL;
    m->body_len = 0;
    m->rx_ns = 0;
}

/* Route frames a socket type puts before the header: a ROUTER prepends the peer identity. */
static int route_frames(void *sock)
{
    int type = 0;
    size_t sz = sizeof type;
    zmq_getsockopt(sock, ZMQ_TYPE, &type, &sz);
    return type == ZMQ_ROUTER ? 1 : 0;
}

/* Receives all frames of one message: exactly route + 2 are expected; extra ones are drained. */
int bt_rpc_recv(void *sock, bt_rpc_msg_t *m, int flags)
{
    zmq_msg_t frames[BT_RPC_MAX_ROUTE + 2];
    int n = 0, more = 1, st = BT_OK, n_route = route_frames(sock);
    size_t sz = sizeof more;
    msg_clear(m);
    while (more) {
        if (n == n_route + 2) { /* too many frames: drop the rest */
            drain_rest(sock);
            st = BT_ERR_FORMAT;
            break;
        }
        zmq_msg_init(&frames[n]);
        if (zmq_msg_recv(&frames[n], sock, n == 0 ? flags : 0) < 0) {
            int err = zmq_errno();
            zmq_msg_close(&frames[n]);
            if (n == 0)
                return err == EAGAIN ? BT_AGAIN : BT_ERR_IO;
            st = BT_ERR_FORMAT;
            break;
        }
        n++;
        zmq_getsockopt(sock, ZMQ_RCVMORE, &more, &sz);
    }
    for (int i = 0; i < n_route && i < n; i++) {
        size_t len = zmq_msg_size(&frames[i]);
        if (len > BT_RPC_MAX_ROUTE_BYTES)
            len = BT_RPC_MAX_ROUTE_BYTES;
        memcpy(m->route.id[i], zmq_msg_data(&frames[i]), len);
        m->route.len[i] = (uint8_t)len;
        m->route.n = i + 1;
    }
    if (st == BT_OK && n != n_route + 2)
        st = BT_ERR_FORMAT;
    if (st == BT_OK)
        st = take_frames(zmq_msg_data(&frames[n - 2]), zmq_msg_size(&frames[n - 2]),
                         zmq_msg_data(&frames[n - 1]), zmq_msg_size(&frames[n - 1]), m);
    for (int i = 0; i < n; i++)
        zmq_msg_close(&frames[i]);
    return st;
}

void bt_rpc_msg_fini(bt_rpc_msg_t *m)
{
    if (!m)
        return;
    if (m->body != m->small)
        bt_free(m->body);
    m->body = NULL;
    m->body_len = 0;
}

static int send_frame(void *sock, const void *data, size_t len, int flags)
{
    if (zmq_send(sock, data, len, flags) < 0)
        return zmq_errno() == EAGAIN ? BT_AGAIN : BT_ERR_IO;
    return BT_OK;
}

/* A message's header and body, packed: the body in stackbuf when it fits, else allocated
 * (free it when *bbuf != stackbuf). */
typedef struct {
    uint8_t hbuf[BT_RPC_HEADER_ENCODED_MAX];
    size_t hlen, blen;
    uint8_t *bbuf;
    uint8_t stackbuf[1024];
} packed_t;

static int pack(const bt_rpc_header_t *h, const ProtobufCMessage *body, packed_t *pk)
{
    pk->hlen = bt_rpc_header_encode(h, pk->hbuf);

    pk->blen = body ? protobuf_c_message_get_packed_size(body) : 0;
    if (pk->blen > BT_RPC_MAX_BODY_BYTES)
        return BT_ERR_RANGE;
    pk->bbuf = pk->blen <= sizeof pk->stackbuf ? pk->stackbuf : bt_malloc(pk->blen);
    if (!pk->bbuf)
        return BT_ERR_NOMEM;
    if (body)
        protobuf_c_message_pack(body, pk->bbuf);
    return BT_OK;
}

static void pack_fini(packed_t *pk)
{
    if (pk->bbuf != pk->stackbuf)
        bt_free(pk->bbuf);
}

static int send_frames(void *sock, const bt_rpc_route_t *route, const uint8_t *hbuf, size_t hlen,
                       const uint8_t *body, size_t body_len, int flags)
{
    int st = BT_OK;
    for (int i = 0; route && i < route->n && st == BT_OK; i++)
        st = send_frame(sock, route->id[i], route->len[i], flags | ZMQ_SNDMORE);
    if (st == BT_OK)
        st = send_frame(sock, hbuf, hlen, flags | ZMQ_SNDMORE);
    if (st == BT_OK)
        st = send_frame(sock, body, body_len, flags);
    return st;
}

int bt_rpc_send(void *sock, const bt_rpc_route_t *route, const bt_rpc_header_t *h,
                const ProtobufCMessage *body, int flags)
{
    packed_t pk;
    int st = pack(h, body, &pk);
    if (st != BT_OK)
        return st;
    st = send_frames(sock, route, pk.hbuf, pk.hlen, pk.bbuf, pk.blen, flags);
    pack_fini(&pk);
    return st;
}

int bt_rpc_send_bytes(void *sock, const bt_rpc_route_t *route, const bt_rpc_header_t *h,
                      const uint8_t *body, size_t body_len, int flags)
{
    if (body_len > BT_RPC_MAX_BODY_BYTES)
        return BT_ERR_RANGE;
    uint8_t hbuf[BT_RPC_HEADER_ENCODED_MAX];
    size_t hlen = bt_rpc_header_encode(h, hbuf);
    return send_frames(sock, route, hbuf, hlen, body, body_len, flags);
}

int bt_rpc_zrecv(bt_zmtp_t *z, bt_rpc_msg_t *m)
{
    bt_zmtp_msg_t zm;
    msg_clear(m);
    int st = bt_zmtp_recv(z, &zm);
    if (st != BT_OK)
        return st;
    size_t len = zm.id_len < BT_RPC_MAX_ROUTE_BYTES ? zm.id_len : BT_RPC_MAX_ROUTE_BYTES;
    memcpy(m->route.id[0], zm.id, len);
    m->route.len[0] = (uint8_t)len;
    m->route.n = 1;
    m->rx_ns = zm.rx_ns;
    if (zm.n_frames != 2)
        return BT_ERR_FORMAT;
    return take_frames(zm.data[0], zm.len[0], zm.data[1], zm.len[1], m);
}

int bt_rpc_zsend(bt_zmtp_t *z, const bt_rpc_route_t *route, const bt_rpc_header_t *h,
                 const ProtobufCMessage *body)
{
    if (!route || route->n != 1)
        return BT_ERR_INVAL;
    packed_t pk;
    int st = pack(h, body, &pk);
    if (st != BT_OK)
        return st;
    struct iovec iov[2] = {{pk.hbuf, pk.hlen}, {pk.bbuf, pk.blen}};
    st = bt_zmtp_send(z, route->id[0], route->len[0], iov, 2);
    pack_fini(&pk);
    return st == BT_ERR_NOT_FOUND ? BT_ERR_IO : st;
}

/* The error reply to m: same route, request id and method (RESULT when m's is unknown). */
static void error_header(const bt_rpc_msg_t *m, int status, const char *fmt, va_list ap,
                         bt_rpc_header_t *h)
{
    bt_rpc_header_init(h, m->hdr.method ? m->hdr.method : BATON__METHOD__RESULT, m->hdr.request_id);
    if (!method_known(h->method))
        h->method = BATON__METHOD__RESULT;
    h->status = status;
    vsnprintf(h->error, sizeof h->error, fmt, ap);
}

int bt_rpc_zreply_error(bt_zmtp_t *z, const bt_rpc_msg_t *m, int status, const char *fmt, ...)
{
    bt_rpc_header_t h;
    va_list ap;
    va_start(ap, fmt);
    error_header(m, status, fmt, ap, &h);
    va_end(ap);
    return bt_rpc_zsend(z, &m->route, &h, NULL);
}

int bt_rpc_reply_error(void *sock, const bt_rpc_msg_t *m, int status, const char *fmt, ...)
{
    bt_rpc_header_t h;
    va_list ap;
    va_start(ap, fmt);
    error_header(m, status, fmt, ap, &h);
    va_end(ap);
    return bt_rpc_send(sock, &m->route, &h, NULL, ZMQ_DONTWAIT);
}

int bt_rpc_unpack(const bt_rpc_msg_t *m, ProtobufCMessage **out)
{
    const ProtobufCMessageDescriptor *d = bt_rpc_body_type(m->hdr.method);
    if (!d)
        return BT_ERR_UNSUPPORTED;
    ProtobufCMessage *msg =
        protobuf_c_message_unpack(d, NULL, m->body_len, m->body ? m->body : (const uint8_t *)"");
    if (!msg)
        return BT_ERR_FORMAT;
    *out = msg;
    return BT_OK;
}

const char *bt_rpc_role_name(int role)
{
    switch (role) {
    case BATON__ROLE__ROLE_NONE: return "none";
    case BATON__ROLE__PREFILL: return "prefill";
    case BATON__ROLE__DECODE: return "decode";
    case BATON__ROLE__COLOCATED: return "colocated";
    case BATON__ROLE__PAIR: return "pair";
    default: return "unknown";
    }
}
