/* SPDX-License-Identifier: MIT */
/*
 * kvx_impl.h - what the kvx core and its backends share: the backend ops table, the upcalls a
 * backend makes into the core, and the core's objects.
 *
 * The one thing to know: backends move opaque messages; all protocol state (generations,
 * fencing, segmentation, completion) lives in the core, so every backend gets the same
 * semantics. A backend never calls an upcall from inside a downcall: an operation that ends at
 * once is reported by the downcall's return value (BT_OK), one that ends later (BT_AGAIN) by
 * the op_done upcall from inside the backend's progress.
 */
#ifndef BATON_KVX_IMPL_H
#define BATON_KVX_IMPL_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "kvx.h"
#include "kvx_wire.h"

typedef struct kvx_op kvx_op_t;
typedef struct kvx_peer kvx_peer_t;

/* One piece of a gathered receive (laid out as UCX's ucp_dt_iov_t). */
typedef struct {
    void *base;
    size_t len;
} kvx_iov_t;

/* Calls from a backend into whoever created it (the core, or a wrapping backend). */
typedef struct {
    void *arg;
    /* A control message (buf valid during the call only). */
    void (*on_ctrl)(void *arg, uint64_t tag, const void *buf, size_t len);
    /* A data message has arrived; the callee must call the backend's recv_data on msg exactly
     * once before returning (with dst NULL to discard it). */
    void (*on_data)(void *arg, uint64_t tag, size_t len, void *msg);
    /* An operation that returned BT_AGAIN has ended. */
    void (*op_done)(void *arg, kvx_op_t *op, int status);
    /* The connection behind ep failed (peer gone); its in-flight operations end with errors
     * where the transport can tell. */
    void (*ep_error)(void *arg, void *ep_user, int status);
} kvx_upcalls_t;

typedef struct kvx_backend_ops {
    const char *name;
    int (*create)(const bt_kvx_params_t *params, const kvx_upcalls_t *up, void **be);
    void (*destroy)(void *be);
    /* The backend's part of this context's address blob. */
    int (*address)(void *be, kvx_buf_t *out);
    /* Connects to a peer's backend address; ep_user comes back in ep_error. */
    int (*ep_create)(void *be, const void *addr, size_t len, void *ep_user, int initiator,
                     void **ep);
    /* Optional: bytes the initiator adds to its hello (e.g. a NCCL unique id), and their use
     * on the accepting side. */
    int (*ep_hello_ext)(void *be, void *ep, kvx_buf_t *out);
    int (*ep_accept_ext)(void *be, void *ep, const void *ext, size_t len);
    /* Closes an endpoint. force: the peer is dead or must be cut off; operations still in
     * flight end with an error if the transport can cut them (*cut set to 1), else they are
     * abandoned (*cut 0) and their completions never come. */
    void (*ep_close)(void *be, void *ep, int force, int *cut);
    /* Fire and forget; buf is copied. Errors surface as ep_error. */
    int (*send_ctrl)(void *be, void *ep, uint64_t tag, const void *buf, size_t len);
    /* Returns BT_OK (done, op not kept), BT_AGAIN (op_done follows) or an error. */
    int (*send_data)(void *be, void *ep, uint64_t tag, const void *src, size_t len, kvx_op_t *op);
    /* Optional, where ep_pack says KVX_PACK_GATHER: sends one message gathered from n pieces
     * (len bytes in all; the array must stay valid until the op ends). */
    int (*send_data_iov)(void *be, void *ep, uint64_t tag, const kvx_iov_t *iov, int n, size_t len,
                         kvx_op_t *op);
    /* Receives the message announced by on_data into dst (len bytes); dst NULL drops it. */
    int (*recv_data)(void *be, void *msg, void *dst, size_t len, kvx_op_t *op);
    /* Optional, with ep_pack: receives it scattered over n pieces (the array must stay valid
     * until the op ends). */
    int (*recv_data_iov)(void *be, void *msg, const kvx_iov_t *iov, int n, kvx_op_t *op);
    /* Optional: whether whole layers should travel packed into one message to this peer:
     * KVX_PACK_COPY (copied into one buffer: both pools in host memory, and a transport where
     * a message costs more than a copy), KVX_PACK_GATHER (sent where they lie, with
     * send_data_iov), or 0. */
    int (*ep_pack)(void *be, void *ep);
    /* Optional: how many bytes of the peer's pool this process can read directly (a peer on the
     * same host whose pool is mapped here); 0: none. */
    size_t (*ep_peer_readable)(void *be, void *ep);
    /* Copies [off, off + len) of the peer's pool into dst; BT_OK or an error. */
    int (*ep_peer_read)(void *be, void *ep, size_t off, void *dst, size_t len);
    /* Largest data message; the core splits longer runs. 0: no limit. */
    size_t max_msg_bytes;
    int (*progress)(void *be);
    int (*fd)(void *be);  /* -1: none (then the core's own timer paces the loop) */
    int (*arm)(void *be); /* BT_OK or BT_AGAIN */
} kvx_backend_ops_t;

extern const kvx_backend_ops_t kvx_ucx_ops;
extern const kvx_backend_ops_t kvx_loop_ops;
extern const kvx_backend_ops_t kvx_nccl_ops;

/* Thin wrappers, so that optional slots get their fallbacks in one place. */
int kvx_be_hello_ext(const kvx_backend_ops_t *ops, void *be, void *ep, kvx_buf_t *out);
int kvx_be_accept_ext(const kvx_backend_ops_t *ops, void *be, void *ep, const void *ext,
                      size_t len);

/* Packing: whole layers go together up to this many bytes a message (a layer bigger than that
 * goes alone, up to KVX_PACK_LAYER_MAX, beyond which nothing is packed); at most
 * KVX_PACK_WINDOW packed messages of a send are in flight, so packing runs just ahead of the
 * wire and its buffers come from the cache. Measured over TCP loopback (docs/PERFORMANCE.md,
 * "KV transfer"): bigger messages or windows were slower. */
#define KVX_PACK_MSG_BYTES ((size_t)1 << 20)
enum { KVX_PACK_COPY = 1, KVX_PACK_GATHER = 2 };
/* Gathered, nothing is copied, so messages can be bigger; their pieces are bounded so that one
 * message is a few system calls. */
#define KVX_GATHER_MSG_BYTES ((size_t)4 << 20)
#define KVX_GATHER_PIECES 1024
#define KVX_GATHER_WINDOW 4
#define KVX_PACK_LAYER_MAX ((size_t)16 << 20)
#define KVX_PACK_WINDOW 2

/* Peer states. */
enum { KVX_PEER_CONNECTING = 1, KVX_PEER_UP, KVX_PEER_DOWN };

/* A reservation the sender has heard of but not yet bound to a send. */
typedef struct kvx_resv {
    struct kvx_resv *next;
    uint64_t req_id;
    uint32_t gen;
    int method; /* KVX_METHOD_* */
    int32_t n_tokens;
    int32_t n_blocks;
    int32_t *dst; /* (n_blocks) the receiver's block ids */
} kvx_resv_t;

struct bt_kvx_peer {
    bt_kvx_t *kvx;
    bt_kvx_peer_t *next; /* context's list */
    uint32_t id;         /* ours: the tag of control messages sent to us by this peer */
    uint32_t remote_id;  /* theirs: the tag we put on control messages to them */
    int state;
    int status; /* why it went down */
    int initiator;
    int app_ref; /* the caller still holds the handle */
    int n_xfers; /* sends and receives that point at this peer */
    int ep_cut;  /* its endpoint was force-closed: nothing of it can land */
    void *ep;
    char name[BT_KVX_NAME_MAX];
    bt_kvx_layout_t layout; /* the peer's */
    int pidfd;              /* same host: readable when the peer process exits; else -1 */
    int readable;           /* we can read the peer's pool directly (same host, mapped) */
    int64_t last_rx_ms;
    int64_t last_tx_ms;
    int64_t deadline_ms; /* handshake deadline while connecting */
    kvx_resv_t *resv;    /* reservations not yet bound (sender side) */
};

/* Transfer states, shared by sends and receives. */
enum { KVX_X_ACTIVE = 1, KVX_X_ENDING, KVX_X_DONE };

/* One data message in flight. */
struct kvx_op {
    kvx_op_t *prev;      /* the context's in-flight list */
    kvx_op_t *next;      /* in-flight list, or free list */
    bt_kvx_send_t *send; /* exactly one of send/recv, or neither for a discard */
    bt_kvx_recv_t *recv;
    size_t len;
    void *backend; /* the backend's own use (its callbacks find themselves here) */
    void *stage;   /* freed with the op: a gathered receive's pieces, or (stage_cap > 0) a
                    * packed send's bytes, which go back to the context's cache */
    size_t stage_cap;
};

/* Packing buffers kept for reuse: a fresh one per message would cost page faults. */
#define KVX_STAGE_CACHE 8

struct bt_kvx_send {
    bt_kvx_t *kvx;
    bt_kvx_send_t *next; /* context's list */
    bt_kvx_peer_t *peer;
    uint64_t req_id;
    uint32_t gen; /* 0 until bound to a reservation */
    int method;   /* KVX_METHOD_*, from the reservation */
    int state;
    int status; /* final status once ENDING */
    int32_t n_blocks;
    int32_t n_tokens;
    int32_t *src;     /* (n_blocks) */
    int32_t *seg_idx; /* (n_segs) first block index of each segment */
    int32_t *seg_len; /* (n_segs) blocks in each segment */
    int32_t n_segs;
    int pack; /* layers go packed, several to a message: KVX_PACK_* (kvx_send_pump) */
    _Atomic int32_t layers_ready;
    int32_t next_layer; /* next (layer, segment) to post */
    int32_t next_seg;
    int32_t inflight; /* data ops posted and not ended */
    int finish_set;   /* bt_kvx_send_finish called */
    int finish_sent;
    int released; /* the caller gave the handle back */
    int final_queued;
    int32_t first_token;
    uint32_t meta_len;
    uint8_t meta[BT_KVX_META_MAX];
    int64_t lease_end_ms; /* when ENDING: stop waiting for ops after this */
    void *user;
};

struct bt_kvx_recv {
    bt_kvx_t *kvx;
    bt_kvx_recv_t *next;  /* context's list */
    bt_kvx_recv_t *hnext; /* generation hash chain */
    bt_kvx_peer_t *peer;
    uint64_t req_id;
    uint32_t gen;
    int method; /* KVX_METHOD_* */
    int state;
    int status;
    int32_t n_blocks;
    int32_t n_tokens;
    int32_t *dst;         /* (n_blocks) */
    int32_t *src;         /* mapped method: (n_blocks) the sender's ids, from SOURCE */
    int32_t layers_avail; /* mapped method: layers the sender says are ready */
    int32_t copy_layer;   /* mapped method: the next (layer, block index) to copy */
    int32_t copy_idx;
    int verify_sent;  /* mapped method: RELEASE sent, waiting for CONFIRM */
    uint64_t *have;   /* (n_layers * n_blocks bits) blocks written or being written */
    int64_t n_have;   /* bits set */
    int32_t inflight; /* receives into our blocks not yet ended */
    int finish_seen;
    int released;
    int final_queued;
    int32_t first_token;
    int32_t fin_tokens;
    uint32_t meta_len;
    uint8_t meta[BT_KVX_META_MAX];
    int64_t lease_end_ms;
    void *user;
};

#define KVX_GEN_BUCKETS 256

struct bt_kvx {
    const kvx_backend_ops_t *ops;
    void *be;
    char name[BT_KVX_NAME_MAX];
    bt_kvx_layout_t layout;
    char *base;
    size_t size_bytes;
    int keepalive_ms;
    int peer_timeout_ms;
    int lease_ms;
    int window;
    int map_peers;
    int pack; /* bt_kvx_params_t.pack */
    uint32_t next_gen;
    uint32_t next_peer_id;
    bt_kvx_peer_t *peers;
    bt_kvx_send_t *sends;
    bt_kvx_recv_t *recvs;
    bt_kvx_recv_t *by_gen[KVX_GEN_BUCKETS];
    kvx_op_t *free_ops;
    kvx_op_t *inflight;               /* every op posted to the backend and not yet ended */
    void *stage_buf[KVX_STAGE_CACHE]; /* packing buffers not in use */
    size_t stage_cap[KVX_STAGE_CACHE];
    int destroying;         /* upcalls during teardown are ignored */
    bt_kvx_event_t *events; /* ring */
    int ev_cap;
    int ev_head;
    int ev_count;
    void *msg_held;    /* the bytes of the last MESSAGE event popped (freed at the next pop) */
    int epfd;          /* what bt_kvx_fd returns: backend fd, wake, timer, pidfds */
    int wakefd;        /* eventfd: a compute thread marked layers ready */
    _Atomic int armed; /* the loop may be asleep on epfd (bt_kvx_arm to the next progress) */
    int timerfd;       /* housekeeping tick */
    int64_t next_tick_ms;
    kvx_host_t host; /* this process, for same-host peers */
    bt_kvx_stats_t stats;
};

/* kvx.c */
int64_t kvx_now_ms(void);
void kvx_push_event(bt_kvx_t *kvx, const bt_kvx_event_t *ev);
int kvx_peer_send_ctrl(bt_kvx_peer_t *peer, const kvx_buf_t *msg);
void kvx_peer_fail(bt_kvx_peer_t *peer, int status);
void kvx_peer_unref(bt_kvx_peer_t *peer);
/* Keeps a peer alive across a call that may end (and free) its last transfer. */
void kvx_peer_hold(bt_kvx_peer_t *peer);
void kvx_peer_unhold(bt_kvx_peer_t *peer);
kvx_op_t *kvx_op_get(bt_kvx_t *kvx);
void kvx_op_put(bt_kvx_t *kvx, kvx_op_t *op);
/* A packing buffer of at least len bytes for op (op->stage, op->stage_cap); NULL if none. */
void *kvx_op_stage(bt_kvx_t *kvx, kvx_op_t *op, size_t len);

/* kvx_peer.c */
void kvx_core_upcalls(bt_kvx_t *kvx, kvx_upcalls_t *out);
void kvx_peers_tick(bt_kvx_t *kvx, int64_t now_ms);
void kvx_peers_close_all(bt_kvx_t *kvx);
void kvx_peers_free_all(bt_kvx_t *kvx);

/* kvx_xfer.c, kvx_send.c, kvx_recv.c: the transfer state machines. */
void kvx_xfer_on_reserve(bt_kvx_peer_t *peer, kvx_rd_t *rd);
void kvx_xfer_on_offer(bt_kvx_peer_t *peer, kvx_rd_t *rd);
void kvx_xfer_on_finish(bt_kvx_peer_t *peer, kvx_rd_t *rd);
void kvx_xfer_on_cancel(bt_kvx_peer_t *peer, kvx_rd_t *rd);
void kvx_xfer_on_release(bt_kvx_peer_t *peer, kvx_rd_t *rd);
void kvx_xfer_on_data(bt_kvx_t *kvx, uint64_t tag, size_t len, void *msg);
void kvx_xfer_op_done(bt_kvx_t *kvx, kvx_op_t *op, int status);
/* The peer went down: fail its transfers and drop its pending reservations. */
void kvx_xfer_peer_down(bt_kvx_peer_t *peer);
/* Posts newly ready layers, ends quiesced transfers, enforces leases. */
void kvx_xfer_poll(bt_kvx_t *kvx, int64_t now_ms);
void kvx_xfer_free_all(bt_kvx_t *kvx);

/* Shared by the send and receive halves (kvx_xfer.c). */
size_t kvx_pool_off(const bt_kvx_t *kvx, int32_t layer, int32_t block);
int kvx_blocks_check(const bt_kvx_t *kvx, const int32_t *blocks, int32_t n, int32_t n_tokens);
int kvx_peer_usable(const bt_kvx_peer_t *peer);
int32_t *kvx_dup_blocks(const int32_t *b, int32_t n);
void kvx_scrub_events(bt_kvx_t *kvx, const void *handle);
void kvx_send_cancel_msg(bt_kvx_peer_t *peer, int target, uint64_t req, uint32_t gen, int status);

/* kvx_recv.c */
void kvx_recv_end(bt_kvx_recv_t *r, int status, int tell_peer);
void kvx_recv_try_finish(bt_kvx_recv_t *r);
void kvx_recv_op_end(bt_kvx_recv_t *r, size_t len, int status);
void kvx_recv_free(bt_kvx_recv_t *r);
void kvx_recv_on_cancel(bt_kvx_peer_t *peer, uint64_t req, uint32_t gen, int status);
void kvx_recv_on_source(bt_kvx_peer_t *peer, kvx_rd_t *rd);
void kvx_recv_on_ready(bt_kvx_peer_t *peer, kvx_rd_t *rd);
void kvx_recv_on_confirm(bt_kvx_peer_t *peer, kvx_rd_t *rd);
/* Copies ready layers of mapped receives, up to budget bytes; returns the bytes copied. */
size_t kvx_recv_copy(bt_kvx_t *kvx, size_t budget);

/* kvx_send.c */
void kvx_send_end(bt_kvx_send_t *s, int status, int tell_peer);
void kvx_send_try_finish(bt_kvx_send_t *s);
void kvx_send_op_end(bt_kvx_send_t *s, size_t len, int status);
void kvx_send_pump(bt_kvx_send_t *s);
void kvx_send_free(bt_kvx_send_t *s);
void kvx_send_on_cancel(bt_kvx_peer_t *peer, uint64_t req, uint32_t gen, int status);

#endif
