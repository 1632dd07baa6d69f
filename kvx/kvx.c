/* SPDX-License-Identifier: MIT */
/*
 * kvx.c - the kvx context: backend registry, the event queue, operation records and the
 * progress loop. Peers and the handshake live in kvx_peer.c, transfers in kvx_send.c,
 * kvx_recv.c and kvx_xfer.c.
 *
 * The one thing to know: bt_kvx_progress is the only place where anything happens. Backends
 * make their upcalls from inside it, housekeeping (keepalive, timeouts, leases) runs from it
 * every KVX_TICK_MS, and the fd exists only to tell a sleeping loop when to call it again.
 */
#include "kvx_impl.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include "common/alloc.h"
#include "common/btassert.h"
#include "common/log.h"

#define KVX_TICK_MS 100 /* housekeeping period: keepalive, timeouts, leases, pidfds */
#define KVX_COPY_BUDGET                                                                            \
    (32u << 20) /* bytes a progress call copies out of mapped peer pools,                          \
                 * so that a 1 GiB receive does not stall the loop */

static const struct {
    const char *name;
    const kvx_backend_ops_t *ops;
} registry[] = {
    {"ucx", &kvx_ucx_ops},
    {"loopback", &kvx_loop_ops},
#ifdef BATON_KVX_HAVE_NCCL
    {"nccl", &kvx_nccl_ops},
#endif
};

const char *bt_kvx_backend_list(void)
{
#ifdef BATON_KVX_HAVE_NCCL
    return "ucx,loopback,nccl";
#else
    return "ucx,loopback";
#endif
}

int bt_kvx_auto_on_off(const char *v, int *out)
{
    *out = !v || !strcmp(v, "auto") ? 0 : !strcmp(v, "on") ? 1 : !strcmp(v, "off") ? -1 : 2;
    if (*out != 2)
        return BT_OK;
    *out = 0;
    return BT_ERR_INVAL;
}

int64_t kvx_now_ms(void)
{
    /* The coarse clock (a few ms of resolution, plenty for keepalive, timeouts and leases)
     * reads a value the kernel keeps, which is cheaper than reading the time source in a loop
     * that spins. */
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int kvx_be_hello_ext(const kvx_backend_ops_t *ops, void *be, void *ep, kvx_buf_t *out)
{
    return ops->ep_hello_ext ? ops->ep_hello_ext(be, ep, out) : BT_OK;
}

int kvx_be_accept_ext(const kvx_backend_ops_t *ops, void *be, void *ep, const void *ext, size_t len)
{
    return ops->ep_accept_ext ? ops->ep_accept_ext(be, ep, ext, len) : BT_OK;
}

void bt_kvx_layout_from_pool(const bt_kv_pool_t *pool, const char *model_id, bt_kvx_layout_t *out)
{
    bt_kv_layer_t l0 = bt_kv_pool_layer(pool, 0);
    memset(out, 0, sizeof *out);
    snprintf(out->model_id, sizeof out->model_id, "%s", model_id ? model_id : "");
    out->n_layers = (int32_t)(bt_kv_pool_size_bytes(pool) /
                              (bt_kv_pool_block_bytes(pool) * (size_t)bt_kv_pool_n_blocks(pool)));
    out->n_kv_heads = l0.n_kv_heads;
    out->head_dim = l0.head_dim;
    out->block_size = l0.block_size;
    out->type = (int32_t)l0.type;
    out->layout_version = BT_KVX_LAYOUT_VERSION;
    out->n_blocks = bt_kv_pool_n_blocks(pool);
    out->block_bytes = bt_kv_pool_block_bytes(pool);
}

/* ---- events ---- */

void kvx_push_event(bt_kvx_t *kvx, const bt_kvx_event_t *ev)
{
    if (kvx->ev_count == kvx->ev_cap) {
        int cap = kvx->ev_cap ? kvx->ev_cap * 2 : 64;
        bt_kvx_event_t *e = bt_malloc((size_t)cap * sizeof *e);
        /* Losing a final event would strand blocks, so running out here is fatal. */
        BT_ASSERT(e);
        for (int i = 0; i < kvx->ev_count; i++)
            e[i] = kvx->events[(kvx->ev_head + i) % kvx->ev_cap];
        bt_free(kvx->events);
        kvx->events = e;
        kvx->ev_cap = cap;
        kvx->ev_head = 0;
    }
    kvx->events[(kvx->ev_head + kvx->ev_count) % kvx->ev_cap] = *ev;
    kvx->ev_count++;
}

int bt_kvx_next_event(bt_kvx_t *kvx, bt_kvx_event_t *ev)
{
    bt_free(kvx->msg_held);
    kvx->msg_held = NULL;
    if (!kvx->ev_count)
        return 0;
    *ev = kvx->events[kvx->ev_head];
    if (ev->type == BT_KVX_EV_MESSAGE)
        kvx->msg_held = (void *)ev->meta;
    kvx->ev_head = (kvx->ev_head + 1) % kvx->ev_cap;
    kvx->ev_count--;
    return 1;
}

/* ---- ops free list ---- */

kvx_op_t *kvx_op_get(bt_kvx_t *kvx)
{
    kvx_op_t *op = kvx->free_ops;
    if (op)
        kvx->free_ops = op->next;
    else
        op = bt_malloc(sizeof *op);
    if (!op)
        return NULL;
    memset(op, 0, sizeof *op);
    op->next = kvx->inflight;
    if (kvx->inflight)
        kvx->inflight->prev = op;
    kvx->inflight = op;
    return op;
}

void *kvx_op_stage(bt_kvx_t *kvx, kvx_op_t *op, size_t len)
{
    int best = -1;
    for (int i = 0; i < KVX_STAGE_CACHE; i++)
        if (kvx->stage_buf[i] && kvx->stage_cap[i] >= len &&
            (best < 0 || kvx->stage_cap[i] < kvx->stage_cap[best]))
            best = i;
    if (best >= 0) {
        op->stage = kvx->stage_buf[best];
        op->stage_cap = kvx->stage_cap[best];
        kvx->stage_buf[best] = NULL;
    } else {
        op->stage = bt_malloc(len);
        op->stage_cap = op->stage ? len : 0;
    }
    return op->stage;
}

/* Keeps a packing buffer for the next message, in place of the smallest kept one. */
static void stage_keep(bt_kvx_t *kvx, void *buf, size_t cap)
{
    int slot = 0;
    for (int i = 0; i < KVX_STAGE_CACHE; i++) {
        if (!kvx->stage_buf[i]) {
            slot = i;
            break;
        }
        if (kvx->stage_cap[i] < kvx->stage_cap[slot])
            slot = i;
    }
    if (kvx->stage_buf[slot] && kvx->stage_cap[slot] >= cap) {
        bt_free(buf);
        return;
    }
    bt_free(kvx->stage_buf[slot]);
    kvx->stage_buf[slot] = buf;
    kvx->stage_cap[slot] = cap;
}

void kvx_op_put(bt_kvx_t *kvx, kvx_op_t *op)
{
    if (op->stage && op->stage_cap && !kvx->destroying)
        stage_keep(kvx, op->stage, op->stage_cap);
    else
        bt_free(op->stage);
    op->stage = NULL;
    op->stage_cap = 0;
    if (op->prev)
        op->prev->next = op->next;
    else
        kvx->inflight = op->next;
    if (op->next)
        op->next->prev = op->prev;
    op->prev = NULL;
    op->next = kvx->free_ops;
    kvx->free_ops = op;
}

static void ops_free_all(bt_kvx_t *kvx)
{
    kvx_op_t *lists[2] = {kvx->inflight, kvx->free_ops};
    for (int i = 0; i < 2; i++) {
        while (lists[i]) {
            kvx_op_t *op = lists[i];
            lists[i] = op->next;
            bt_free(op->stage);
            bt_free(op);
        }
    }
    for (int i = 0; i < KVX_STAGE_CACHE; i++) {
        bt_free(kvx->stage_buf[i]);
        kvx->stage_buf[i] = NULL;
    }
    kvx->inflight = kvx->free_ops = NULL;
}

int bt_kvx_progress(bt_kvx_t *kvx)
{
    atomic_store(&kvx->armed, 0);
    kvx->ops->progress(kvx->be);
    int64_t now = kvx_now_ms();
    kvx_xfer_poll(kvx, now);
    kvx_recv_copy(kvx, KVX_COPY_BUDGET);
    if (now >= kvx->next_tick_ms) {
        kvx->next_tick_ms = now + KVX_TICK_MS;
        kvx_peers_tick(kvx, now);
    }
    return kvx->ev_count;
}

static void drain_fd(int fd)
{
    uint64_t v;
    while (read(fd, &v, sizeof v) == (ssize_t)sizeof v)
        ;
}

int bt_kvx_fd(const bt_kvx_t *kvx)
{
    return kvx->epfd;
}

int bt_kvx_arm(bt_kvx_t *kvx)
{
    if (kvx->ev_count || kvx_now_ms() >= kvx->next_tick_ms)
        return BT_AGAIN;
    /* From here a compute thread that marks layers ready wakes the loop (seq_cst on both
     * sides: either the check below sees its layers or it sees armed). */
    atomic_store(&kvx->armed, 1);
    drain_fd(kvx->wakefd);
    drain_fd(kvx->timerfd);
    /* A layer marked ready between the last progress and the drain above. */
    for (bt_kvx_send_t *s = kvx->sends; s; s = s->next)
        if (s->gen && s->state == KVX_X_ACTIVE && s->next_layer < atomic_load(&s->layers_ready))
            return BT_AGAIN;
    for (bt_kvx_recv_t *r = kvx->recvs; r; r = r->next)
        if (r->state == KVX_X_ACTIVE && r->src && r->copy_layer < r->layers_avail)
            return BT_AGAIN; /* copying out of a mapped pool, KVX_COPY_BUDGET at a time */
    return kvx->ops->arm(kvx->be);
}

int bt_kvx_wait(bt_kvx_t *kvx, int timeout_ms)
{
    bt_kvx_progress(kvx);
    if (bt_kvx_arm(kvx) == BT_OK) {
        struct epoll_event ev[8];
        int64_t until_tick = kvx->next_tick_ms - kvx_now_ms();
        if (until_tick < 0)
            until_tick = 0;
        if (timeout_ms < 0 || timeout_ms > until_tick)
            timeout_ms = (int)until_tick;
        epoll_wait(kvx->epfd, ev, 8, timeout_ms);
    }
    return bt_kvx_progress(kvx);
}

void bt_kvx_get_stats(const bt_kvx_t *kvx, bt_kvx_stats_t *out)
{
    *out = kvx->stats;
    out->n_peers_up = 0;
    out->n_sends = 0;
    out->n_recvs = 0;
    out->n_quarantined = 0;
    for (const bt_kvx_peer_t *p = kvx->peers; p; p = p->next)
        out->n_peers_up += p->state == KVX_PEER_UP;
    for (const bt_kvx_send_t *s = kvx->sends; s; s = s->next)
        out->n_sends++;
    for (const bt_kvx_recv_t *r = kvx->recvs; r; r = r->next) {
        out->n_recvs++;
        out->n_quarantined += r->state == KVX_X_ENDING && r->inflight > 0;
    }
}

/* ---- create / destroy ---- */

static int fds_init(bt_kvx_t *kvx)
{
    kvx->epfd = epoll_create1(EPOLL_CLOEXEC);
    kvx->wakefd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    kvx->timerfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (kvx->epfd < 0 || kvx->wakefd < 0 || kvx->timerfd < 0) {
        bt_error("kvx: cannot create file descriptors: %s", strerror(errno));
        return BT_ERR_IO;
    }
    struct itimerspec its = {.it_interval = {0, KVX_TICK_MS * 1000000L},
                             .it_value = {0, KVX_TICK_MS * 1000000L}};
    timerfd_settime(kvx->timerfd, 0, &its, NULL);
    int fds[3] = {kvx->wakefd, kvx->timerfd, kvx->ops->fd(kvx->be)};
    for (int i = 0; i < 3; i++) {
        struct epoll_event ev = {.events = EPOLLIN, .data.fd = fds[i]};
        if (fds[i] >= 0 && epoll_ctl(kvx->epfd, EPOLL_CTL_ADD, fds[i], &ev) != 0) {
            bt_error("kvx: epoll_ctl: %s", strerror(errno));
            return BT_ERR_IO;
        }
    }
    return BT_OK;
}

static void fds_fini(bt_kvx_t *kvx)
{
    if (kvx->epfd >= 0)
        close(kvx->epfd);
    if (kvx->wakefd >= 0)
        close(kvx->wakefd);
    if (kvx->timerfd >= 0)
        close(kvx->timerfd);
}

static int params_check(const bt_kvx_params_t *p)
{
    const bt_kvx_layout_t *l = &p->layout;
    if (l->n_layers <= 0 || l->n_layers > BT_KVX_MAX_LAYERS || l->n_blocks <= 0 ||
        l->block_bytes == 0 || !p->base ||
        p->size_bytes < (size_t)l->n_layers * (size_t)l->n_blocks * l->block_bytes) {
        bt_error("kvx: invalid pool (layers %d, blocks %d, block bytes %llu, %zu bytes)",
                 l->n_layers, l->n_blocks, (unsigned long long)l->block_bytes, p->size_bytes);
        return BT_ERR_INVAL;
    }
    return BT_OK;
}

static const kvx_backend_ops_t *backend_find(const char *name)
{
    for (size_t i = 0; i < sizeof registry / sizeof registry[0]; i++)
        if (strcmp(registry[i].name, name) == 0)
            return registry[i].ops;
    return NULL;
}

static void settings_init(bt_kvx_t *kvx, const bt_kvx_params_t *p)
{
    snprintf(kvx->name, sizeof kvx->name, "%s", p->name ? p->name : "kvx");
    kvx->layout = p->layout;
    kvx->base = p->base;
    kvx->size_bytes = p->size_bytes;
    kvx->keepalive_ms = p->keepalive_ms > 0 ? p->keepalive_ms : 500;
    kvx->peer_timeout_ms = p->peer_timeout_ms > 0 ? p->peer_timeout_ms : 3000;
    kvx->lease_ms = p->lease_ms > 0 ? p->lease_ms : 3000;
    kvx->window = p->window > 0 ? p->window : 32;
    kvx->map_peers = p->map_peers;
    kvx->pack = p->pack;
    kvx->next_gen = (uint32_t)kvx_now_ms() * 2654435761u; /* any start; never reused */
    kvx->epfd = kvx->wakefd = kvx->timerfd = -1;
    kvx_host_self(&kvx->host);
}

int bt_kvx_create(const bt_kvx_params_t *params, bt_kvx_t **out)
{
    const char *name = params->backend ? params->backend : "ucx";
    const kvx_backend_ops_t *ops = backend_find(name);
    if (!ops) {
        bt_error("kvx: no transfer backend '%s' in this build (built: %s)", name,
                 bt_kvx_backend_list());
        return BT_ERR_NOT_FOUND;
    }
    int st = params_check(params);
    if (st != BT_OK)
        return st;
    bt_kvx_t *kvx = bt_calloc(1, sizeof *kvx);
    if (!kvx)
        return BT_ERR_NOMEM;
    settings_init(kvx, params);
    kvx->ops = ops;
    kvx_upcalls_t up;
    kvx_core_upcalls(kvx, &up);
    st = ops->create(params, &up, &kvx->be);
    if (st != BT_OK)
        goto err_kvx;
    st = fds_init(kvx);
    if (st != BT_OK)
        goto err_be;
    kvx->next_tick_ms = kvx_now_ms() + KVX_TICK_MS;
    *out = kvx;
    return BT_OK;

err_be:
    fds_fini(kvx);
    ops->destroy(kvx->be);
err_kvx:
    bt_free(kvx);
    return st;
}

void bt_kvx_destroy(bt_kvx_t *kvx)
{
    if (!kvx)
        return;
    kvx_peers_close_all(kvx);
    /* The backend may still end operations while it shuts down; they point at transfers that
     * are about to go, so every upcall from here on is ignored. */
    kvx->destroying = 1;
    kvx->ops->destroy(kvx->be);
    kvx_xfer_free_all(kvx);
    kvx_peers_free_all(kvx);
    ops_free_all(kvx);
    fds_fini(kvx);
    for (int i = 0; i < kvx->ev_count; i++) {
        bt_kvx_event_t *e = &kvx->events[(kvx->ev_head + i) % kvx->ev_cap];
        if (e->type == BT_KVX_EV_MESSAGE)
            bt_free((void *)e->meta);
    }
    bt_free(kvx->msg_held);
    bt_free(kvx->events);
    bt_free(kvx);
}

const char *bt_kvx_backend_name(const bt_kvx_t *kvx)
{
    return kvx->ops->name;
}
