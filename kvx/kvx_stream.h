/* SPDX-License-Identifier: MIT */
/*
 * kvx_stream.h - the UCX backend's data path for peers reached over TCP: one kernel TCP
 * connection per peer pair that carries data messages only (control stays on UCX).
 *
 * The one thing to know: a message is a 16-byte header (tag, length) and its bytes, written
 * with one gathered sendmsg straight from the KV pool and read with one scattered readv straight
 * into the receiver's blocks: one kernel copy on each side, no staging buffer, no per-message
 * rendezvous. Where it is not up (yet, or at all), data goes over UCX as before; the receiver
 * takes both, since every message names its destination by its tag alone.
 *
 * Pairing: every context listens on an ephemeral port and advertises the port, a random key
 * and its addresses. The side that initiated the kvx connection connects and sends a hello
 * (the acceptor's key, then its own); the acceptor checks its key, pairs the connection with
 * the endpoint whose peer advertised the other key, and answers. So a connection that reached
 * the wrong process (an address that means another host here) is refused and the next address
 * is tried.
 */
#ifndef BATON_KVX_STREAM_H
#define BATON_KVX_STREAM_H

#include <stddef.h>
#include <stdint.h>

#include "kvx_impl.h"

typedef struct kvx_streams kvx_streams_t; /* a context's listener and connections */
typedef struct kvx_stream kvx_stream_t;   /* the data connection to one peer */

#define KVX_STREAM_ADDRS_MAX 8

/* A peer's advertised listener, as read from its address. */
typedef struct {
    uint16_t port;
    uint64_t key;
    int n;
    struct {
        uint8_t family; /* 4 or 6 */
        uint8_t bytes[16];
    } addr[KVX_STREAM_ADDRS_MAX];
} kvx_stream_addr_t;

/* Calls back into the owner; never made from inside kvx_stream_send, _recv or _open. */
typedef struct {
    void *arg;
    /* A message arrived; the callee calls kvx_stream_recv on s exactly once before returning. */
    void (*on_data)(void *arg, kvx_stream_t *s, uint64_t tag, size_t len);
    /* A send or receive that returned BT_AGAIN has ended (also from kvx_stream_close). */
    void (*op_end)(void *arg, kvx_op_t *op, int status);
    /* The connection of a paired stream broke; user is what the stream was made with. */
    void (*failed)(void *arg, void *user, int status);
} kvx_stream_cbs_t;

/* Listens on an ephemeral port of every address. Its descriptors go into an epoll set of its
 * own, together with owner_fd (the owner's other descriptor, only there to wake it). */
int kvx_streams_create(const kvx_stream_cbs_t *cbs, int owner_fd, kvx_streams_t **out);
/* What the owner sleeps on: readable when a connection or owner_fd is. */
int kvx_streams_fd(const kvx_streams_t *ss);
/* Closes every connection without callbacks. NULL-safe. */
void kvx_streams_destroy(kvx_streams_t *ss);
/* Appends the listener's port, key and addresses to an address blob. */
void kvx_streams_address(const kvx_streams_t *ss, kvx_buf_t *out);
/* Reads what kvx_streams_address wrote; BT_ERR_FORMAT if malformed. */
int kvx_stream_addr_read(kvx_rd_t *rd, kvx_stream_addr_t *a);
/* Initiator: starts connecting to the peer (loopback first when it is on this host). */
kvx_stream_t *kvx_stream_open(kvx_streams_t *ss, const kvx_stream_addr_t *peer, int same_host,
                              void *user);
/* Acceptor: waits for the connection of the peer that advertised key. */
kvx_stream_t *kvx_stream_expect(kvx_streams_t *ss, uint64_t key, void *user);
/* 1 once paired: messages may go over it. */
int kvx_stream_ready(const kvx_stream_t *s);
/* Sends one message gathered from n pieces (len bytes in all; the pieces must stay valid until
 * the op ends): BT_OK if all of it is in the kernel already, BT_AGAIN (op_end follows),
 * BT_ERR_PEER if the connection is gone, BT_ERR_INVAL if the pieces do not add up to len. */
int kvx_stream_send(kvx_stream_t *s, uint64_t tag, const kvx_iov_t *iov, int n, size_t len,
                    kvx_op_t *op);
/* From on_data only: receives the message scattered over n pieces (iov NULL: drops it).
 * BT_OK if nothing is left to read, else BT_AGAIN (op_end follows; op may be NULL for a drop). */
int kvx_stream_recv(kvx_stream_t *s, const kvx_iov_t *iov, int n, kvx_op_t *op);
/* Closes it; its operations in flight end with BT_ERR_PEER through op_end. */
void kvx_stream_close(kvx_stream_t *s);
/* Accepts, pairs, writes and reads; returns the work done. */
int kvx_streams_progress(kvx_streams_t *ss);
/* 1 if progress has work that no descriptor will signal (a buffered header). */
int kvx_streams_pending(const kvx_streams_t *ss);

#endif
