/* SPDX-License-Identifier: MIT */
/*
 * zmtp.h - a ZeroMQ ROUTER socket served on the caller's own thread.
 *
 * The router relays every token of every request, so each message it handles crosses its
 * socket twice. Through libzmq each crossing is also a hand-off between libzmq's I/O thread
 * and the caller's thread (a wake-up each way, on a busy or a halted core). This socket speaks
 * the wire protocol itself (ZMTP 3.0, NULL security; RFC 23 and 37) on non-blocking sockets
 * watched by one epoll descriptor: a message is read, handled and answered by one thread, and
 * peers on the other side are ordinary libzmq DEALER (or REQ, ROUTER) sockets. The same socket
 * can also connect out (bt_zmtp_connect, as a libzmq ROUTER can), which the router's load
 * generator uses to drive many connections from one thread.
 *
 * What it keeps of a libzmq ROUTER with ZMQ_ROUTER_MANDATORY and ZMQ_ROUTER_HANDOVER set:
 *   - each peer is known by the identity it announces (ZMQ_ROUTING_ID), or by a generated
 *     5-byte one (a zero byte, then a counter) when it announces none;
 *   - a peer that connects with an identity in use takes it over; the older connection keeps
 *     serving under a generated identity;
 *   - a send to an identity no connected peer holds fails (BT_ERR_NOT_FOUND);
 *   - a peer sending a frame larger than max_frame is disconnected (ZMQ_MAXMSGSIZE), and so
 *     is one sending a message of more than 1024 frames or twice max_frame in all;
 *   - messages are delivered whole, in order per peer, round-robin across peers;
 *   - a connection that has not finished its handshake within 30 s is closed
 *     (ZMQ_HANDSHAKE_IVL), and when descriptors run out, accepting pauses for 100 ms rather
 *     than spinning.
 * A send never blocks: output is queued per peer up to max_queued bytes (BT_AGAIN past that)
 * and written when the caller runs out of input (bt_zmtp_recv returning BT_AGAIN) or calls
 * bt_zmtp_flush, so that one system call carries every message a burst produced for a peer.
 *
 * Endpoints: tcp://HOST:PORT (HOST: *, an IPv4 or [IPv6] address, or a name; PORT: a number
 * or * for any), ipc://PATH (a stale file at PATH is replaced, and removed on close) and
 * ipc://@NAME (Linux abstract namespace).
 *
 * Threads: one thread at a time per socket, like a libzmq socket.
 */
#ifndef BATON_ZMTP_H
#define BATON_ZMTP_H

#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#define BT_ZMTP_MAX_FRAMES 8 /* frames of a message kept for the caller; more are counted */
#define BT_ZMTP_MAX_ID 255   /* identity bytes */

typedef struct bt_zmtp bt_zmtp_t;

typedef struct {
    size_t max_frame;  /* largest frame a peer may send; 0: 16 MiB */
    size_t max_queued; /* output bytes queued to one peer before sends fail; 0: 64 MiB */
    int rx_stamps;     /* tcp: note when the kernel received each read's bytes (msg rx_ns) */
} bt_zmtp_params_t;

typedef struct {
    const uint8_t *id; /* the sending peer's identity */
    size_t id_len;
    int n;        /* frames kept: min(n_frames, BT_ZMTP_MAX_FRAMES) */
    int n_frames; /* frames the message had */
    const uint8_t *data[BT_ZMTP_MAX_FRAMES];
    size_t len[BT_ZMTP_MAX_FRAMES];
    /* With rx_stamps, on a tcp connection: when the kernel queued the last bytes of the read
     * that completed the message (CLOCK_REALTIME ns, the software receive stamp, taken on
     * loopback by the sender's send call): the message's arrival in the socket, or a little
     * after it when one read took several sends. It leaves out how long the message then
     * waited to be read. 0: not known (also for a moment after the first socket asks, until
     * the kernel has turned stamping on). */
    uint64_t rx_ns;
} bt_zmtp_msg_t;

/* Listens on endpoint. BT_ERR_INVAL for an endpoint it cannot parse, BT_ERR_IO when the
 * address cannot be bound (the reason is logged). */
int bt_zmtp_bind(const char *endpoint, const bt_zmtp_params_t *params, bt_zmtp_t **out);
/* A socket with no listener, for bt_zmtp_connect alone. BT_ERR_IO when the system refuses
 * an epoll set or a timer. */
int bt_zmtp_new(const bt_zmtp_params_t *params, bt_zmtp_t **out);
/*
 * Connects to a ZeroMQ socket bound at endpoint (tcp://HOST:PORT or ipc://PATH; a ROUTER,
 * DEALER or REQ there), announcing identity (id_len 0: none), and knows that peer by name
 * (as ZMQ_CONNECT_ROUTING_ID): messages from it carry name as their identity, and sends to
 * name reach it. The connect and the handshake complete inside bt_zmtp_recv; messages sent
 * before then are queued and leave once they do. There is no reconnection: when the peer
 * goes (or the connect fails, which is logged), the name is released and sends to it fail.
 * BT_OK; BT_ERR_INVAL for a bad endpoint or a name a connected peer holds; BT_AGAIN when a
 * unix listener's backlog is full; BT_ERR_IO when the connect fails at once (ipc:// with no
 * listener); BT_ERR_NOMEM.
 */
int bt_zmtp_connect(bt_zmtp_t *z, const char *endpoint, const uint8_t *identity, size_t id_len,
                    const uint8_t *name, size_t name_len);
/* Closes every connection at once (queued output is dropped, as with ZMQ_LINGER 0). */
void bt_zmtp_close(bt_zmtp_t *z);

/* The endpoint as bound, with a port chosen for * filled in (ZMQ_LAST_ENDPOINT); "" when
 * the socket only connects. */
const char *bt_zmtp_endpoint(const bt_zmtp_t *z);
/* A descriptor that polls readable whenever bt_zmtp_recv may have something to do: new input,
 * a new or closed connection, or a peer ready for output that was queued. */
int bt_zmtp_fd(const bt_zmtp_t *z);

/*
 * The next whole message. BT_OK: m describes it, its pointers valid until the next call of
 * bt_zmtp_recv or bt_zmtp_close on z. BT_AGAIN: none is ready (queued output was written
 * first, so the caller may sleep on bt_zmtp_fd). Accepting connections, handshakes,
 * protocol errors and closed peers are handled on the way and never reported here.
 */
int bt_zmtp_recv(bt_zmtp_t *z, bt_zmtp_msg_t *m);

/*
 * Queues a copy of a message of n frames (n >= 1) to the peer holding identity id. BT_OK;
 * BT_ERR_NOT_FOUND when no connected peer holds it; BT_AGAIN when the peer's queue is full;
 * BT_ERR_RANGE when a frame is larger than max_frame; BT_ERR_NOMEM.
 */
int bt_zmtp_send(bt_zmtp_t *z, const uint8_t *id, size_t id_len, const struct iovec *frames, int n);
/* Writes queued output as far as the peers take it (the rest waits for them). */
void bt_zmtp_flush(bt_zmtp_t *z);

/* Peers connected and past the handshake. */
int bt_zmtp_peers(const bt_zmtp_t *z);
/* Connections closed by this side for breaking the protocol or its limits (a bad greeting or
 * handshake, none in time, an oversized frame or message), since the bind. */
uint64_t bt_zmtp_refused(const bt_zmtp_t *z);

#endif
