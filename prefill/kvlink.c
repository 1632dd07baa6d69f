/* SPDX-License-Identifier: MIT */
/*
 * kvlink.c - the daemons' kvx context and peer table (see kvlink.h).
 *
 * The peer table is small (one entry per counterpart instance) and is searched linearly. A peer
 * that goes down is released and forgotten: the next assignment with that peer connects again.
 */
#include "kvlink.h"

#include <string.h>

#include "common/alloc.h"
#include "common/clock.h"
#include "common/hash.h"
#include "common/log.h"

#define KVLINK_MAX_PEERS 256
#define PUMP_ROUNDS 32    /* progress rounds one pump makes at most to arm the context */
#define BUSY_SPIN_MS 5    /* busy this long: the loop stops spinning and waits 1 ms at a time */
#define BUSY_WARN_MS 1000 /* busy this long: say so (once per busy spell) */
#define FAILS_MAX 16      /* addresses whose connect failed, remembered for the back-off */
#define RETRY_FIRST_MS 50 /* the first wait before connecting again to a failed address */
#define RETRY_MAX_MS 2000

/* An address a connect failed to: not tried again before until_ms (doubling waits), so that a
 * loop that asks for a dead peer's connection at every turn neither spins on it nor fills the
 * log. A new address (the peer restarted) is tried at once. */
typedef struct {
    char name[BT_KVX_NAME_MAX];
    uint64_t addr_hash, until_ms;
    int wait_ms;
} link_fail_t;

typedef struct {
    char name[BT_KVX_NAME_MAX];
    bt_kvx_peer_t *peer;
} link_peer_t;

struct bt_kvlink {
    bt_kvx_t *kvx;
    uint8_t address[BT_KVX_ADDRESS_MAX];
    size_t address_len;
    link_peer_t peers[KVLINK_MAX_PEERS];
    int n_peers;
    uint64_t busy_since_ms; /* the pumps have not armed the context since then; 0: armed */
    int busy_warned;
    link_fail_t fails[FAILS_MAX];
    int n_fails;
};

int bt_kvlink_create(const bt_kvlink_params_t *p, bt_kvlink_t **out)
{
    bt_kvlink_t *l = bt_calloc(1, sizeof *l);
    if (!l)
        return BT_ERR_NOMEM;
    bt_kv_pool_t *pool = bt_engine_kv_pool(p->engine);
    bt_kvx_params_t kp = {.backend = p->backend,
                          .name = p->name,
                          .base = bt_kv_pool_base(pool),
                          .size_bytes = bt_kv_pool_size_bytes(pool),
                          .peer_timeout_ms = p->peer_timeout_ms,
                          /* device memory cannot be mapped by a peer process: data messages */
                          .map_peers = bt_kv_pool_device_memory(pool) || p->no_map ? -1 : 0,
                          .device_memory = bt_kv_pool_device_memory(pool),
                          .ucx_tls = p->ucx_tls,
                          .pack = p->pack,
                          .stream = p->stream};
    bt_kvx_layout_from_pool(pool, p->model_id, &kp.layout);
    int st = bt_kvx_create(&kp, &l->kvx);
    if (st == BT_OK)
        st = bt_kvx_address(l->kvx, l->address, sizeof l->address, &l->address_len);
    if (st != BT_OK) {
        bt_error("kvlink: cannot create the %s transfer context: %s",
                 p->backend ? p->backend : "default", bt_status_str(st));
        bt_kvlink_destroy(l);
        return st;
    }
    bt_info("kvlink %s: KV transfer over %s (built: %s)", p->name, bt_kvx_backend_name(l->kvx),
            bt_kvx_backend_list());
    *out = l;
    return BT_OK;
}

void bt_kvlink_destroy(bt_kvlink_t *l)
{
    if (!l)
        return;
    bt_kvx_destroy(l->kvx); /* frees the peer handles too */
    bt_free(l);
}

const void *bt_kvlink_address(const bt_kvlink_t *l, size_t *len)
{
    *len = l->address_len;
    return l->address;
}

static link_peer_t *find(bt_kvlink_t *l, const char *name)
{
    for (int i = 0; i < l->n_peers; i++)
        if (!strncmp(l->peers[i].name, name, BT_KVX_NAME_MAX - 1))
            return &l->peers[i];
    return NULL;
}

static link_peer_t *add(bt_kvlink_t *l, const char *name, bt_kvx_peer_t *peer)
{
    if (l->n_peers == KVLINK_MAX_PEERS) {
        bt_error("kvlink: more than %d peers; refusing %s", KVLINK_MAX_PEERS, name);
        return NULL;
    }
    link_peer_t *e = &l->peers[l->n_peers++];
    strncpy(e->name, name, sizeof e->name - 1);
    e->name[sizeof e->name - 1] = 0;
    e->peer = peer;
    return e;
}

static uint64_t now_ms(void)
{
    return (uint64_t)bt_mono_ms();
}

static link_fail_t *fail_find(bt_kvlink_t *l, const char *name)
{
    for (int i = 0; i < l->n_fails; i++)
        if (!strncmp(l->fails[i].name, name, BT_KVX_NAME_MAX - 1))
            return &l->fails[i];
    return NULL;
}

/* A connect to name at the address hashed h failed: the next try waits (the oldest record
 * makes room when all are taken). */
static void fail_note(bt_kvlink_t *l, const char *name, uint64_t h, int st)
{
    link_fail_t *f = fail_find(l, name);
    if (f && f->addr_hash != h)
        f->wait_ms = 0; /* another address: a new spell */
    if (!f) {
        if (l->n_fails == FAILS_MAX)
            memmove(l->fails, l->fails + 1, (FAILS_MAX - 1) * sizeof *l->fails);
        else
            l->n_fails++;
        f = &l->fails[l->n_fails - 1];
        memset(f, 0, sizeof *f);
        strncpy(f->name, name, sizeof f->name - 1);
    }
    if (!f->wait_ms)
        bt_warn("kvlink: cannot connect to %s: %s; trying again from time to time", name,
                bt_status_str(st));
    f->addr_hash = h;
    f->wait_ms = f->wait_ms ? (f->wait_ms * 2 < RETRY_MAX_MS ? f->wait_ms * 2 : RETRY_MAX_MS)
                            : RETRY_FIRST_MS;
    f->until_ms = now_ms() + (uint64_t)f->wait_ms;
}

static void fail_forget(bt_kvlink_t *l, const char *name)
{
    link_fail_t *f = fail_find(l, name);
    if (f)
        *f = l->fails[--l->n_fails];
}

bt_kvx_peer_t *bt_kvlink_peer(bt_kvlink_t *l, const char *name, const void *address,
                              size_t address_len, int connect)
{
    link_peer_t *e = find(l, name);
    if (e || !connect || !address || !address_len)
        return e ? e->peer : NULL;
    uint64_t h = bt_fnv1a(address, address_len);
    link_fail_t *f = fail_find(l, name);
    if (f && f->addr_hash == h && now_ms() < f->until_ms)
        return NULL; /* the last try at this address failed a moment ago */
    bt_kvx_peer_t *peer = NULL;
    int st = bt_kvx_connect(l->kvx, address, address_len, &peer);
    if (st != BT_OK) {
        fail_note(l, name, h, st);
        return NULL;
    }
    fail_forget(l, name);
    bt_info("kvlink: connecting to %s", name);
    if (!add(l, name, peer)) {
        bt_kvx_peer_close(peer);
        bt_kvx_peer_release(peer);
        return NULL;
    }
    return peer;
}

/* Keeps the table in step: accepted connections are added, dead ones forgotten. */
static void track(bt_kvlink_t *l, const bt_kvx_event_t *ev)
{
    if (ev->type == BT_KVX_EV_PEER_UP) {
        const char *name = bt_kvx_peer_name(ev->peer);
        link_peer_t *e = find(l, name);
        if (!e)
            add(l, name, ev->peer);
        else if (e->peer != ev->peer) /* a second connection from the same instance */
            e->peer = ev->peer;
        bt_info("kvlink: peer %s is up", name);
    } else if (ev->type == BT_KVX_EV_PEER_DOWN) {
        for (int i = 0; i < l->n_peers; i++)
            if (l->peers[i].peer == ev->peer) {
                bt_warn("kvlink: peer %s is down: %s", l->peers[i].name, bt_status_str(ev->status));
                l->peers[i] = l->peers[--l->n_peers];
                break;
            }
    }
}

int bt_kvlink_pump(bt_kvlink_t *l, bt_kvlink_event_fn fn, void *ctx)
{
    uint64_t now = now_ms();
    /* Busy for a while: one round per wait of the loop, not PUMP_ROUNDS per millisecond. */
    int rounds = l->busy_since_ms && now - l->busy_since_ms >= BUSY_SPIN_MS ? 1 : PUMP_ROUNDS;
    for (int round = 0; round < rounds; round++) {
        bt_kvx_progress(l->kvx);
        bt_kvx_event_t ev;
        while (bt_kvx_next_event(l->kvx, &ev)) {
            track(l, &ev);
            fn(ctx, &ev);
            if (ev.type == BT_KVX_EV_PEER_DOWN)
                bt_kvx_peer_release(ev.peer);
        }
        if (bt_kvx_arm(l->kvx) == BT_OK) {
            if (l->busy_warned)
                bt_info("kvlink: the transfer context can wait for events again");
            l->busy_since_ms = 0;
            l->busy_warned = 0;
            return bt_kvx_fd(l->kvx);
        }
    }
    if (!l->busy_since_ms)
        l->busy_since_ms = now;
    else if (!l->busy_warned && now - l->busy_since_ms >= BUSY_WARN_MS) {
        bt_warn("kvlink: the transfer context has stayed busy for %llu ms (a transport that "
                "cannot flush an endpoint to a dead peer); polling it every millisecond",
                (unsigned long long)(now - l->busy_since_ms));
        l->busy_warned = 1;
    }
    return bt_kvx_fd(l->kvx);
}

int bt_kvlink_loop_fd(bt_kvlink_t *l, bt_worker_t *w, bt_kvlink_event_fn fn, void *ctx)
{
    int fd = bt_kvlink_pump(l, fn, ctx);
    if (l->busy_since_ms)
        bt_worker_wait_at_most(w, now_ms() - l->busy_since_ms < BUSY_SPIN_MS ? 0 : 1);
    return fd;
}

/* An auto|on|off option (NULL: auto) as 0, 1 or -1. */
static int auto_on_off(const char *name, const char *v, int *out)
{
    int st = bt_kvx_auto_on_off(v, out);
    if (st != BT_OK)
        bt_error("kvlink: --%s must be auto, on or off, not '%s'", name, v);
    return st;
}

int bt_kvlink_create_from_cfg(const bt_kvlink_cfg_t *c, bt_engine_t *engine, const char *name,
                              const char *model_id, bt_kvlink_t **out)
{
    int pack, tcp;
    if (auto_on_off("kv-pack", c->pack, &pack) != BT_OK ||
        auto_on_off("kv-tcp", c->tcp, &tcp) != BT_OK)
        return BT_ERR_INVAL;
    bt_kvlink_params_t lp = {.engine = engine,
                             .name = name,
                             .model_id = model_id,
                             .backend = c->backend,
                             .ucx_tls = c->tls,
                             .peer_timeout_ms = c->peer_timeout_ms,
                             .no_map = !c->map,
                             .pack = pack,
                             .stream = tcp};
    return bt_kvlink_create(&lp, out);
}

void bt_kvlink_stream_layers_done(bt_kvlink_stream_t *s, int32_t n_done)
{
    s->n_done = n_done;
    if (s->send)
        bt_kvx_send_layers_ready(s->send, n_done);
}

void bt_kvlink_stream_attach(bt_kvlink_stream_t *s, bt_kvx_send_t *send)
{
    s->send = send;
    if (s->n_done > 0)
        bt_kvx_send_layers_ready(send, s->n_done);
}
