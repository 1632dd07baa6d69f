/* SPDX-License-Identifier: MIT */
/*
 * kvlink.h - a daemon's KV-transfer context (kvx) as its event loop drives it: the context over
 * the engine's KV pool, the address blob its heartbeats carry, the table of peers by instance
 * id, and the pump that turns kvx events into calls of the role.
 *
 * Decode daemons connect (they know the prefill peer's address from their assignment and reach
 * it before replying with the reservation); prefill daemons accept, and find the connection by
 * the decode instance's id when they ship. One connection per pair, made once, off the request
 * path. The prefill and decode daemons both link this (it lives here, next to its first user,
 * because it needs kvx and common/ must not).
 *
 * Threads: the worker's loop thread only (kvx contexts are driven by one thread).
 */
#ifndef BATON_KVLINK_H
#define BATON_KVLINK_H

#include <stddef.h>

#include "common/engine.h"
#include "common/worker.h"
#include "kvx/kvx.h"

typedef struct bt_kvlink bt_kvlink_t;

/* The transfer options both daemons take (a member `kv` of their config struct). */
typedef struct {
    char *backend;       /* kvx backend */
    char *tls;           /* UCX transports */
    int peer_timeout_ms; /* a silent peer is dead after this */
    int peer_wait_ms;    /* how long a transfer waits for its peer's connection */
    int map;             /* a same-host receiver copies out of the sender's mapped pool */
    char *pack;          /* whole layers packed into one message: auto, on, off */
    char *tcp;           /* data over kvx's own TCP connection: auto, on, off */
} bt_kvlink_cfg_t;

#define BT_KVLINK_OPT(T, n, t, d, lo, hi, f, h)                                                    \
    {                                                                                              \
        n, 0, t, d, lo, hi, offsetof(T, kv.f), h                                                   \
    }
#define BT_KVLINK_OPTS(T)                                                                          \
    BT_KVLINK_OPT(T, "kv-backend", BT_CFG_STRING, "ucx", 0, 0, backend,                            \
                  "KV transfer backend: ucx, nccl"),                                               \
        BT_KVLINK_OPT(T, "kv-tls", BT_CFG_STRING, NULL, 0, 0, tls,                                 \
                      "UCX transports for KV, e.g. sm,self or tcp (default: UCX's choice)"),       \
        BT_KVLINK_OPT(T, "kv-peer-timeout-ms", BT_CFG_INT, "3000", 100, 3600000, peer_timeout_ms,  \
                      "a transfer peer silent this long is dead"),                                 \
        BT_KVLINK_OPT(T, "kv-peer-wait-ms", BT_CFG_INT, "5000", 1, 3600000, peer_wait_ms,          \
                      "how long a transfer waits for its peer's connection"),                      \
        BT_KVLINK_OPT(T, "kv-map", BT_CFG_BOOL, "1", 0, 0, map,                                    \
                      "a decode daemon on the prefill daemon's host copies the KV out of its "     \
                      "pool (--no-kv-map: through the transport)"),                                \
        BT_KVLINK_OPT(T, "kv-pack", BT_CFG_STRING, "auto", 0, 0, pack,                             \
                      "send whole layers packed into one message: auto (over TCP, small block "    \
                      "runs), on, off"),                                                           \
        BT_KVLINK_OPT(T, "kv-tcp", BT_CFG_STRING, "auto", 0, 0, tcp,                               \
                      "KV data over a TCP connection of kvx's own: auto (where UCX would use "     \
                      "TCP), on, off (through UCX)")

typedef struct {
    bt_engine_t *engine;  /* borrowed: its KV pool is registered */
    const char *name;     /* this instance's id; copied (kvx keeps 63 bytes) */
    const char *model_id; /* checked in the handshake */
    const char *backend;  /* kvx backend: "ucx" (NULL: default), "nccl" */
    const char *ucx_tls;  /* UCX transports, e.g. "sm,self" or "tcp"; NULL: UCX's choice */
    int peer_timeout_ms;  /* a silent peer is dead after this; 0: kvx's default */
    int no_map;           /* 1: never copy out of a same-host peer's mapped pool */
    int pack;             /* bt_kvx_params_t.pack */
    int stream;           /* bt_kvx_params_t.stream */
} bt_kvlink_params_t;

/* A layer-wise send as the compute thread and the loop thread both see it. Its fields are
 * guarded by the daemon's own mutex, held around each call below. */
typedef struct {
    bt_kvx_send_t *send; /* set by the loop while its send is live; NULL before and after */
    int32_t n_done;      /* layers the engine has finished (compute thread) */
} bt_kvlink_stream_t;

/* Compute thread (the engine's layer hook): layers [0, n_done) are final; a live send ships
 * them. */
void bt_kvlink_stream_layers_done(bt_kvlink_stream_t *s, int32_t n_done);
/* Loop thread: send takes the stream over and ships the layers already done. */
void bt_kvlink_stream_attach(bt_kvlink_stream_t *s, bt_kvx_send_t *send);

/* Called for every kvx event, after the link's own bookkeeping (peer table). */
typedef void (*bt_kvlink_event_fn)(void *ctx, const bt_kvx_event_t *ev);

int bt_kvlink_create(const bt_kvlink_params_t *p, bt_kvlink_t **out);
/* Creates the link of a daemon from its kv-* options (the strings in c are borrowed and must
 * outlive the call). */
int bt_kvlink_create_from_cfg(const bt_kvlink_cfg_t *c, bt_engine_t *engine, const char *name,
                              const char *model_id, bt_kvlink_t **out);
/* Closes every connection. NULL-safe. */
void bt_kvlink_destroy(bt_kvlink_t *l);

/* The address blob peers connect to (borrowed). */
const void *bt_kvlink_address(const bt_kvlink_t *l, size_t *len);

/* The connection to instance name: up or still connecting (check bt_kvx_peer_status), or NULL
 * when there is none. With an address (and connect set) a missing one is started. */
bt_kvx_peer_t *bt_kvlink_peer(bt_kvlink_t *l, const char *name, const void *address,
                              size_t address_len, int connect);

/* Does pending transfer work and hands every event to fn. Returns the fd to poll for more. The
 * context is then armed (nothing is pending that the fd will not announce) unless it could not
 * be within a few rounds. The pump never loops until it is, since a transport may stay busy for
 * good (UCX cannot flush a shared-memory endpoint whose peer died), and the daemon's loop must
 * go on (heartbeats, the router's messages). */
int bt_kvlink_pump(bt_kvlink_t *l, bt_kvlink_event_fn fn, void *ctx);
/* A daemon loop's loop_fd: the pump, and when it left the context busy, a cap on the loop's
 * coming wait (none for the first few milliseconds of a busy spell, then one millisecond). */
int bt_kvlink_loop_fd(bt_kvlink_t *l, bt_worker_t *w, bt_kvlink_event_fn fn, void *ctx);

#endif
