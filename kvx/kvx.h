/* SPDX-License-Identifier: MIT */
/*
 * kvx.h - KV transfer: ships a request's paged KV cache from a prefill engine's pool into a
 * decode engine's pool, between processes and hosts, behind one interface.
 *
 * The one thing to know: the receiver owns every byte that lands in its pool. The decode side
 * reserves destination blocks (bt_kvx_recv_post) under a fresh generation; data can only land
 * in memory the receiver has posted for that exact (reservation, generation), so a late or
 * duplicate message from a cancelled transfer is dropped, never written. Every send and every
 * receive ends with exactly one final event (BT_KVX_EV_SEND_DONE / BT_KVX_EV_RECV_DONE); from
 * that event on, and not before, the caller owns its blocks again.
 *
 * Backends, chosen by name: "ucx" (default: tag messages with zero-copy rendezvous, so the same
 * code runs over shared memory and CMA on one host, TCP across hosts, RDMA where present),
 * "nccl" (GPU to GPU; built when NCCL is found) and "loopback" (in-process memcpy with the same
 * semantics, for unit tests). No UCX or NCCL type appears here.
 *
 * Life of a transfer (push, the default): decode posts a receive -> the sender gets
 * BT_KVX_EV_RESERVED; prefill starts a send for the same req_id (before or after) -> data flows
 * layer by layer as layers become ready -> bt_kvx_send_finish carries the first token and the
 * request's metadata -> decode gets BT_KVX_EV_RECV_DONE once every byte is in place -> prefill
 * gets BT_KVX_EV_SEND_DONE. Pull (DistServe) uses the same calls in the other order: the send
 * starts first, decode sees BT_KVX_EV_OFFERED and posts the receive when it has room.
 *
 * Threads: a context and everything made from it is driven by one thread (the daemon's event
 * loop), except bt_kvx_send_layers_ready, which a compute thread may call.
 */
#ifndef BATON_KVX_H
#define BATON_KVX_H

#include <stddef.h>
#include <stdint.h>

#include "common/kvcache.h"
#include "common/status.h"

#define BT_KVX_LAYOUT_VERSION 1   /* kvcache.h: layer-major pool, block = K then V */
#define BT_KVX_MODEL_ID_MAX 64    /* bytes of a model id, NUL included */
#define BT_KVX_NAME_MAX 64        /* bytes of an endpoint name, NUL included */
#define BT_KVX_META_MAX 1024      /* bytes of metadata a completion notice carries */
#define BT_KVX_ADDRESS_MAX 4096   /* bytes of an address blob */
#define BT_KVX_MAX_LAYERS 1024    /* layers a transfer may have */
#define BT_KVX_MAX_BLOCKS 1048575 /* blocks one transfer may have */

typedef struct bt_kvx bt_kvx_t;
typedef struct bt_kvx_peer bt_kvx_peer_t;
typedef struct bt_kvx_send bt_kvx_send_t;
typedef struct bt_kvx_recv bt_kvx_recv_t;

/* What the two sides of a connection must agree on; checked in the handshake. */
typedef struct {
    char model_id[BT_KVX_MODEL_ID_MAX]; /* e.g. the model file's name and hash */
    int32_t n_layers;
    int32_t n_kv_heads;
    int32_t head_dim;
    int32_t block_size;     /* tokens per block */
    int32_t type;           /* bt_type_t of K and V */
    int32_t layout_version; /* BT_KVX_LAYOUT_VERSION */
    int32_t n_blocks;       /* blocks in this pool (may differ between peers) */
    uint64_t block_bytes;   /* one block of one layer, K and V */
} bt_kvx_layout_t;

/* Fills a layout from a pool; model_id is copied (truncated to BT_KVX_MODEL_ID_MAX - 1). */
void bt_kvx_layout_from_pool(const bt_kv_pool_t *pool, const char *model_id, bt_kvx_layout_t *out);

typedef struct {
    const char *backend; /* "ucx" (NULL: default), "nccl", "loopback" */
    const char *name;    /* this endpoint in peers' logs, e.g. "decode-0"; copied */
    bt_kvx_layout_t layout;
    void *base;          /* the pool's memory (bt_kv_pool_base); borrowed, registered once */
    size_t size_bytes;   /* n_layers * n_blocks * block_bytes */
    int keepalive_ms;    /* ping an idle peer this often; 0: 500 */
    int peer_timeout_ms; /* a peer silent this long is dead; 0: 3000 */
    int lease_ms;        /* longest wait for an aborted transfer's writer; 0: 3000 */
    int window;          /* data messages in flight per send; 0: 32 */
    int map_peers;       /* 0: a receiver on the same host as its sender maps the sender's pool
                          * and copies the KV itself (the pool is moved onto a memfd at create,
                          * in place); -1: all data goes through the transport */
    const char *ucx_tls; /* "ucx": transports (UCX_TLS syntax, e.g. "sm" or "tcp"); NULL:
                          * UCX's own choice (the environment's UCX_TLS) */
    int device;          /* "nccl": CUDA device ordinal */
    int device_memory;   /* 1: the pool is in GPU memory (map_peers must then be -1); the
                          * backend refuses to start if it cannot move such memory */
    int pack;            /* sending whole layers packed into one message (a copy on the sender,
                          * one message instead of one per layer and block run): 0: where it
                          * pays (UCX over TCP, for requests whose runs average under
                          * BT_KVX_PACK_RUN_BYTES); 1: wherever the backend can; -1: never */
    int stream;          /* "ucx": data to a peer over a kernel TCP connection of its own
                          * (control stays on UCX): 0: where UCX would use TCP; 1: to every
                          * peer whose pool is in host memory; -1: never (all data over UCX) */
} bt_kvx_params_t;

/* Parses a setting of the auto/on/off kind above (pack, stream): "auto" (or NULL) 0, "on" 1,
 * "off" -1; BT_ERR_INVAL for anything else. */
int bt_kvx_auto_on_off(const char *v, int *out);

/* Runs of a layer's blocks this big or bigger go as they are by default: over TCP loopback a
 * message of 128 KiB costs about as much as copying it. */
#define BT_KVX_PACK_RUN_BYTES (128u << 10)

/* Creates a context and registers the pool memory. BT_ERR_NOT_FOUND for a backend that is not
 * built in, BT_ERR_UNSUPPORTED when it is built but cannot run here (e.g. no GPU). */
int bt_kvx_create(const bt_kvx_params_t *params, bt_kvx_t **out);
/* Closes every connection and frees everything, handles included. NULL-safe. */
void bt_kvx_destroy(bt_kvx_t *kvx);
const char *bt_kvx_backend_name(const bt_kvx_t *kvx);
/* Comma-separated names of the backends built into this binary. */
const char *bt_kvx_backend_list(void);

/* The out-of-band address that peers connect to (carried by the daemons' control channel).
 * Writes at most cap bytes; *len is set on success; BT_ERR_RANGE if cap is too small. */
int bt_kvx_address(bt_kvx_t *kvx, void *buf, size_t cap, size_t *len);

/* Connects to the context behind an address blob (copied). The layout check is done here and
 * again by the remote side: BT_ERR_MISMATCH (logged with the first differing field) refuses
 * the peer at once. Otherwise *out is valid now and becomes usable with BT_KVX_EV_PEER_UP (or
 * fails with BT_KVX_EV_PEER_DOWN). The remote side sees BT_KVX_EV_PEER_UP with a peer of its
 * own. Call once per pair, off the request path. */
int bt_kvx_connect(bt_kvx_t *kvx, const void *address, size_t len, bt_kvx_peer_t **out);
/* The peer's endpoint name (from its address); valid while the handle is. */
const char *bt_kvx_peer_name(const bt_kvx_peer_t *peer);
/* BT_OK when up, BT_AGAIN while the handshake runs, else the error that took it down. */
int bt_kvx_peer_status(const bt_kvx_peer_t *peer);
/* How data to this peer moves now: "mapped" (we copy out of its pool), "stream" (kvx's own TCP
 * connection; set up just after the peer comes up), the backend's name (its messages), or
 * "none" while it is not up. */
const char *bt_kvx_peer_data_path(const bt_kvx_peer_t *peer);
/* Says goodbye and fails the peer's transfers with BT_ERR_CANCELLED (their final events
 * follow); the peer goes down on both sides. */
void bt_kvx_peer_close(bt_kvx_peer_t *peer);
/* Gives the handle back. Call after BT_KVX_EV_PEER_DOWN or bt_kvx_peer_close; memory is freed
 * once its transfers are released too. A reconnect is a new bt_kvx_connect. */
void bt_kvx_peer_release(bt_kvx_peer_t *peer);

/* Receiving side (decode). */
typedef struct {
    uint64_t req_id;       /* the request; the sender starts its send under the same id */
    const int32_t *blocks; /* (n_blocks) destination block ids in the local pool; copied */
    int32_t n_blocks;      /* ceil(n_tokens / block_size) */
    int32_t n_tokens;      /* tokens the KV covers; a partial last block ships whole */
    void *user;            /* returned in the events */
} bt_kvx_recv_params_t;

/* Reserves the blocks for one transfer under a new generation and tells the peer. The blocks
 * belong to the transfer until its BT_KVX_EV_RECV_DONE. BT_ERR_INVAL on a bad block list,
 * BT_AGAIN if the peer is not up yet, the peer's error if it is down. */
int bt_kvx_recv_post(bt_kvx_peer_t *peer, const bt_kvx_recv_params_t *params, bt_kvx_recv_t **out);
/* Cancels; the final event (BT_ERR_CANCELLED) comes once no write can land any more: after
 * every receive already under way has finished, or the lease expired and the connection was
 * cut. No-op once the transfer has ended. */
void bt_kvx_recv_cancel(bt_kvx_recv_t *recv);
/* Refuses an offer (BT_KVX_EV_OFFERED) this side will never post a receive for: the peer's
 * send of req_id that has no reservation yet ends with status (< 0), instead of waiting for
 * one. A receive posted for req_id later is not affected. */
void bt_kvx_decline(bt_kvx_peer_t *peer, uint64_t req_id, int status);
uint32_t bt_kvx_recv_gen(const bt_kvx_recv_t *recv);
/* Frees the handle after its final event (or, before it, cancels first and frees once it
 * ends: the blocks are then not safe until bt_kvx_stats says nothing is quarantined). */
void bt_kvx_recv_release(bt_kvx_recv_t *recv);

/* Sending side (prefill). */
typedef struct {
    uint64_t req_id;
    const int32_t *blocks; /* (n_blocks) source block ids in the local pool; copied */
    int32_t n_blocks;
    int32_t n_tokens;
    int layerwise; /* 0: every layer is ready now (whole cache); 1: layers become
                    * ready through bt_kvx_send_layers_ready (streaming) */
    void *user;
} bt_kvx_send_params_t;

/* Starts a send: announces it (BT_KVX_EV_OFFERED on the peer) unless the peer has reserved
 * already, and ships each ready layer as soon as the peer's reservation for req_id is known.
 * The source blocks must stay untouched until BT_KVX_EV_SEND_DONE. */
int bt_kvx_send_start(bt_kvx_peer_t *peer, const bt_kvx_send_params_t *params, bt_kvx_send_t **out);
/* Layers [0, n_layers_ready) hold their final KV. Monotonic; any thread may call it while the
 * handle is valid (it only stores a counter and wakes the context's loop). */
void bt_kvx_send_layers_ready(bt_kvx_send_t *send, int32_t n_layers_ready);
/* Ends the send: the completion notice with the first sampled token and the request's
 * metadata (meta_len <= BT_KVX_META_MAX, copied) reaches the receiver after all data. */
int bt_kvx_send_finish(bt_kvx_send_t *send, int32_t first_token, const void *meta, size_t meta_len);
/* Cancels; the peer's receive fails with BT_ERR_CANCELLED. Final event follows. */
void bt_kvx_send_cancel(bt_kvx_send_t *send);
/* Frees the handle after its final event (before it: cancels, frees once it ends). */
void bt_kvx_send_release(bt_kvx_send_t *send);

/* Sends len bytes (copied; len <= BT_KVX_MESSAGE_MAX) to an up peer, in order with everything
 * else sent to it: the peer gets BT_KVX_EV_MESSAGE. Fire and forget, for small state the
 * application keeps in step between peers (e.g. a replica's newest KV rows); a peer that dies
 * loses what it had not received. BT_ERR_RANGE over the limit, the peer's error if it is down. */
#define BT_KVX_MESSAGE_MAX ((8u << 20) - 16)
int bt_kvx_peer_message(bt_kvx_peer_t *peer, const void *buf, size_t len);

typedef enum {
    BT_KVX_EV_PEER_UP = 1, /* handshake done; peer is set (new handle on the accepting side) */
    BT_KVX_EV_PEER_DOWN,   /* refused (BT_ERR_MISMATCH), closed, dead (BT_ERR_PEER), timed out */
    BT_KVX_EV_OFFERED,     /* receiver: the peer has KV for req_id (n_tokens, n_blocks) */
    BT_KVX_EV_RESERVED,    /* sender: the peer reserved blocks for req_id under gen */
    BT_KVX_EV_SEND_DONE,   /* final event of a send; status BT_OK: delivered */
    BT_KVX_EV_RECV_DONE,   /* final event of a receive; status BT_OK: the KV is in place */
    BT_KVX_EV_MESSAGE,     /* a bt_kvx_peer_message from peer: meta, meta_len */
} bt_kvx_event_type_t;

typedef struct {
    bt_kvx_event_type_t type;
    int status;
    bt_kvx_peer_t *peer;
    bt_kvx_send_t *send; /* SEND_DONE */
    bt_kvx_recv_t *recv; /* RECV_DONE */
    uint64_t req_id;
    uint32_t gen;
    int32_t n_tokens;
    int32_t n_blocks;
    int32_t first_token; /* RECV_DONE with BT_OK */
    const void *meta;    /* RECV_DONE with BT_OK: borrowed until bt_kvx_recv_release;
                          * MESSAGE: the bytes, valid until the next bt_kvx_next_event */
    size_t meta_len;
    void *user; /* the transfer's params.user */
} bt_kvx_event_t;

/* Does all pending work without blocking: moves data, handles messages, keepalive, timeouts.
 * Returns the number of events now queued. */
int bt_kvx_progress(bt_kvx_t *kvx);
/* Pops the oldest event into *ev; returns 1, or 0 when none is queued. */
int bt_kvx_next_event(bt_kvx_t *kvx, bt_kvx_event_t *ev);
/* A file descriptor that becomes readable when bt_kvx_progress has work; poll it only after
 * bt_kvx_arm returned BT_OK. */
int bt_kvx_fd(const bt_kvx_t *kvx);
/* BT_OK: nothing pending, safe to sleep on the fd; BT_AGAIN: call bt_kvx_progress first. */
int bt_kvx_arm(bt_kvx_t *kvx);
/* Progress, then sleep on the fd up to timeout_ms if nothing is pending (for simple loops and
 * tests). Returns the number of queued events. */
int bt_kvx_wait(bt_kvx_t *kvx, int timeout_ms);

typedef struct {
    int32_t n_peers_up;
    int32_t n_sends;       /* sends not yet released */
    int32_t n_recvs;       /* receives not yet released */
    int32_t n_quarantined; /* ended receives still waiting for their writer */
    int64_t n_data_msgs_sent;
    int64_t n_data_msgs_recv;
    int64_t bytes_sent;
    int64_t bytes_recv;
    int64_t n_stale_dropped; /* data of a cancelled, finished or unknown generation */
    int64_t n_dup_dropped;   /* data for blocks already written in this generation */
    int64_t n_ctrl_rejected; /* control messages with a stale generation or bad content */
} bt_kvx_stats_t;

void bt_kvx_get_stats(const bt_kvx_t *kvx, bt_kvx_stats_t *out);

#endif
