/* SPDX-License-Identifier: MIT */
/*
 * rpc.h - baton's gRPC-like framing over ZeroMQ multipart messages.
 *
 * A message is [route][Header][body]: route is the peer identity a ROUTER socket prepends
 * (nothing on DEALER sockets; no empty delimiter is used), Header is a
 * baton.Header (version, method, request id, status, error) and body the method's message
 * (proto/baton.proto lists which). bt_rpc_recv validates the frame count, frame sizes, the
 * header, the version and the method before anything reaches the caller; a malformed message
 * is reported with its route kept, so the caller can answer it with bt_rpc_reply_error and go
 * on serving. Bodies are unpacked on demand with bt_rpc_unpack, which checks the body type
 * against the method.
 *
 * Threads: like ZeroMQ sockets, a socket's messages are used by one thread at a time.
 */
#ifndef BATON_RPC_H
#define BATON_RPC_H

#include <stddef.h>
#include <stdint.h>

#include <protobuf-c/protobuf-c.h>

#include "common/zmtp.h"
#include "proto/baton.pb-c.h"

#define BT_RPC_VERSION 1
#define BT_RPC_MAX_ROUTE 4         /* identity frames kept from a ROUTER socket */
#define BT_RPC_MAX_ROUTE_BYTES 255 /* ZeroMQ identities are at most 255 bytes */
#define BT_RPC_MAX_HEADER_BYTES 4096
#define BT_RPC_MAX_BODY_BYTES (16u << 20) /* also set as ZMQ_MAXMSGSIZE on baton's sockets */

typedef struct {
    int n;
    uint8_t id[BT_RPC_MAX_ROUTE][BT_RPC_MAX_ROUTE_BYTES];
    uint8_t len[BT_RPC_MAX_ROUTE];
} bt_rpc_route_t;

typedef struct {
    uint32_t version;
    Baton__Method method;
    uint64_t request_id;
    int32_t status;
    char error[256];
} bt_rpc_header_t;

/* Most bytes bt_rpc_header_encode writes: five keys, three 10-byte varints, a 5-byte one, an
 * error's length and text. */
#define BT_RPC_HEADER_ENCODED_MAX (5 + 3 * 10 + 5 + 2 + 255)

/* The Header message of proto/baton.proto, coded directly (the same bytes protobuf-c writes
 * and reads; see rpc.c). decode: BT_OK, or BT_ERR_FORMAT for bytes protobuf-c would refuse;
 * it does not judge the version or method. encode: writes at most BT_RPC_HEADER_ENCODED_MAX
 * bytes (an error is sent up to its first NUL); returns how many. */
int bt_rpc_header_decode(const uint8_t *data, size_t len, bt_rpc_header_t *h);
size_t bt_rpc_header_encode(const bt_rpc_header_t *h, uint8_t *out);

typedef struct {
    bt_rpc_route_t route;
    bt_rpc_header_t hdr;
    uint8_t *body; /* owned; NULL when the body frame is empty; may point into small */
    size_t body_len;
    uint8_t small[512]; /* holds small bodies: most messages need no allocation */
    uint64_t rx_ns;     /* bt_rpc_zrecv: the kernel's receive stamp (bt_zmtp_msg_t); 0: none */
} bt_rpc_msg_t;

/*
 * Receives one message. Returns BT_OK; BT_AGAIN when flags has ZMQ_DONTWAIT and nothing is
 * there; BT_ERR_FORMAT for a malformed message (wrong frame count, oversized frame, header
 * that does not parse) and BT_ERR_UNSUPPORTED for an unknown version or method — in both
 * cases m->route and whatever header fields parsed are filled so the caller can reply; BT_ERR_IO
 * when the socket fails. Release with bt_rpc_msg_fini in every case.
 */
int bt_rpc_recv(void *sock, bt_rpc_msg_t *m, int flags);
void bt_rpc_msg_fini(bt_rpc_msg_t *m);

/* Sends route (may be NULL), header and body (NULL: empty body). flags: ZMQ_DONTWAIT or 0.
 * BT_AGAIN if it would block with ZMQ_DONTWAIT; BT_ERR_IO on failure. */
int bt_rpc_send(void *sock, const bt_rpc_route_t *route, const bt_rpc_header_t *h,
                const ProtobufCMessage *body, int flags);
/* The same with a body already packed (body_len bytes; 0: empty body). */
int bt_rpc_send_bytes(void *sock, const bt_rpc_route_t *route, const bt_rpc_header_t *h,
                      const uint8_t *body, size_t body_len, int flags);

/* Replies to m (same route and request id) with an error status and a formatted message. */
int bt_rpc_reply_error(void *sock, const bt_rpc_msg_t *m, int status, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/*
 * The same three on a ROUTER socket served on the caller's thread (zmtp.h): the route is the
 * one identity frame; sends never block. bt_rpc_zrecv returns BT_AGAIN when nothing is there;
 * bt_rpc_zsend returns BT_ERR_IO when no connected peer holds the route (as libzmq's
 * ZMQ_ROUTER_MANDATORY does) and BT_AGAIN when that peer's output queue is full.
 */
int bt_rpc_zrecv(bt_zmtp_t *z, bt_rpc_msg_t *m);
int bt_rpc_zsend(bt_zmtp_t *z, const bt_rpc_route_t *route, const bt_rpc_header_t *h,
                 const ProtobufCMessage *body);
int bt_rpc_zreply_error(bt_zmtp_t *z, const bt_rpc_msg_t *m, int status, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* The body descriptor a method carries (NULL for methods with an empty body, or unknown). */
const ProtobufCMessageDescriptor *bt_rpc_body_type(Baton__Method method);
/* Unpacks m's body as the method's message; BT_ERR_FORMAT when it does not parse.
 * Free *out with protobuf_c_message_free_unpacked(*out, NULL). */
int bt_rpc_unpack(const bt_rpc_msg_t *m, ProtobufCMessage **out);

/* Fills a header for a new message. */
void bt_rpc_header_init(bt_rpc_header_t *h, Baton__Method method, uint64_t request_id);

/* Applies baton's socket options (max message size, linger, high-water marks). */
int bt_rpc_socket_setup(void *sock);

/* Wall-clock nanoseconds (CLOCK_REALTIME), the time base of lifetime events. */
uint64_t bt_rpc_now_ns(void);

/* An instance role in lower case: "none", "prefill", "decode", "colocated", "pair"; "unknown"
 * for any other value (a newer peer's). */
const char *bt_rpc_role_name(int role);

#endif
