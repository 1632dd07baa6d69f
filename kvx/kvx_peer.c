/* SPDX-License-Identifier: MIT */
/*
 * kvx_peer.c - peers: the handshake, control-message dispatch, liveness and teardown.
 *
 * Liveness: a peer is declared dead when its transport says so (UCX error callback), when its
 * process exits (a pidfd, for peers on this host), or when nothing was heard from it for
 * peer_timeout_ms although we ping idle peers every keepalive_ms. A dead peer's transfers fail
 * with BT_ERR_PEER; what happens to their memory is the transfer code's business.
 *
 * Lifetime: a peer is freed once the caller has released it, it is down, and no transfer
 * points at it; code that may end a peer's last transfer holds it (kvx_peer_hold) meanwhile.
 */
#include "kvx_impl.h"

#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/pidfd.h>
#include <unistd.h>

#include "common/alloc.h"
#include "common/log.h"

static bt_kvx_peer_t *peer_new(bt_kvx_t *kvx, const kvx_blob_t *blob, int initiator)
{
    bt_kvx_peer_t *p = bt_calloc(1, sizeof *p);
    if (!p)
        return NULL;
    p->kvx = kvx;
    if (++kvx->next_peer_id == 0)
        kvx->next_peer_id = 1;
    p->id = kvx->next_peer_id;
    p->initiator = initiator;
    p->pidfd = -1;
    p->app_ref = 1;
    snprintf(p->name, sizeof p->name, "%s", blob->name);
    p->layout = blob->layout;
    p->last_rx_ms = p->last_tx_ms = kvx_now_ms();
    p->next = kvx->peers;
    kvx->peers = p;
    return p;
}

static void peer_free(bt_kvx_peer_t *p)
{
    bt_kvx_t *kvx = p->kvx;
    for (bt_kvx_peer_t **pp = &kvx->peers; *pp; pp = &(*pp)->next) {
        if (*pp == p) {
            *pp = p->next;
            break;
        }
    }
    while (p->resv) {
        kvx_resv_t *r = p->resv;
        p->resv = r->next;
        bt_free(r->dst);
        bt_free(r);
    }
    if (p->pidfd >= 0)
        close(p->pidfd);
    for (int i = 0; i < kvx->ev_count; i++) {
        bt_kvx_event_t *e = &kvx->events[(kvx->ev_head + i) % kvx->ev_cap];
        if (e->peer == p)
            e->peer = NULL;
    }
    bt_free(p);
}

void kvx_peer_unref(bt_kvx_peer_t *p)
{
    if (!p->app_ref && !p->n_xfers && p->state == KVX_PEER_DOWN)
        peer_free(p);
}

void kvx_peer_hold(bt_kvx_peer_t *p)
{
    p->n_xfers++;
}

void kvx_peer_unhold(bt_kvx_peer_t *p)
{
    p->n_xfers--;
    kvx_peer_unref(p);
}

static bt_kvx_peer_t *peer_find(bt_kvx_t *kvx, uint32_t id)
{
    for (bt_kvx_peer_t *p = kvx->peers; p; p = p->next)
        if (p->id == id)
            return p;
    return NULL;
}

int kvx_peer_send_ctrl(bt_kvx_peer_t *peer, const kvx_buf_t *msg)
{
    if (msg->err)
        return msg->err;
    if (!peer->ep)
        return BT_ERR_PEER;
    bt_kvx_t *kvx = peer->kvx;
    int st =
        kvx->ops->send_ctrl(kvx->be, peer->ep, kvx_tag_ctrl(peer->remote_id), msg->data, msg->len);
    if (st == BT_OK)
        peer->last_tx_ms = kvx_now_ms();
    return st;
}

static void peer_watch_process(bt_kvx_peer_t *p, const kvx_host_t *host)
{
    bt_kvx_t *kvx = p->kvx;
    if (!kvx_host_same(&kvx->host, host) || host->pid == kvx->host.pid)
        return;
    p->pidfd = pidfd_open(host->pid, 0);
    if (p->pidfd < 0)
        return; /* the keepalive still covers this peer */
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = p->pidfd};
    epoll_ctl(kvx->epfd, EPOLL_CTL_ADD, p->pidfd, &ev);
}

/* A same-host peer whose pool the backend could map: receives from it copy directly. */
static void peer_find_map(bt_kvx_peer_t *p)
{
    bt_kvx_t *kvx = p->kvx;
    size_t len = kvx->ops->ep_peer_readable && kvx->map_peers >= 0
                     ? kvx->ops->ep_peer_readable(kvx->be, p->ep)
                     : 0;
    size_t need = (size_t)p->layout.n_layers * (size_t)p->layout.n_blocks * p->layout.block_bytes;
    p->readable = len && len >= need;
}

static void peer_set_up(bt_kvx_peer_t *p)
{
    p->state = KVX_PEER_UP;
    p->last_rx_ms = kvx_now_ms();
    peer_find_map(p);
    bt_kvx_event_t ev = {.type = BT_KVX_EV_PEER_UP, .status = BT_OK, .peer = p};
    kvx_push_event(p->kvx, &ev);
    bt_info("kvx %s: peer '%s' up", p->kvx->name, p->name);
}

static void peer_close_ep(bt_kvx_peer_t *p, int force)
{
    if (!p->ep)
        return;
    int cut = 0;
    void *ep = p->ep;
    p->ep = NULL;
    p->kvx->ops->ep_close(p->kvx->be, ep, force, &cut);
    p->ep_cut = cut;
}

static void peer_down(bt_kvx_peer_t *p, int status, int force)
{
    if (p->state == KVX_PEER_DOWN)
        return;
    bt_kvx_t *kvx = p->kvx;
    kvx_peer_hold(p);
    p->state = KVX_PEER_DOWN;
    p->status = status;
    p->readable = 0; /* the backend unmaps its pool with the endpoint */
    if (p->pidfd >= 0) {
        epoll_ctl(kvx->epfd, EPOLL_CTL_DEL, p->pidfd, NULL);
        close(p->pidfd);
        p->pidfd = -1;
    }
    peer_close_ep(p, force);
    kvx_xfer_peer_down(p);
    if (p->app_ref) {
        bt_kvx_event_t ev = {.type = BT_KVX_EV_PEER_DOWN, .status = status, .peer = p};
        kvx_push_event(kvx, &ev);
    }
    kvx_peer_unhold(p);
}

void kvx_peer_fail(bt_kvx_peer_t *peer, int status)
{
    if (peer->state != KVX_PEER_DOWN)
        bt_warn("kvx %s: peer '%s' down: %s", peer->kvx->name, peer->name, bt_status_str(status));
    peer_down(peer, status, 1);
}

void bt_kvx_peer_close(bt_kvx_peer_t *peer)
{
    if (peer->state == KVX_PEER_DOWN)
        return;
    kvx_buf_t m;
    kvx_buf_init(&m);
    kvx_buf_u8(&m, KVX_MSG_BYE);
    if (peer->state == KVX_PEER_UP)
        kvx_peer_send_ctrl(peer, &m);
    kvx_buf_fini(&m);
    /* A flushing close, so that the goodbye gets there. */
    peer_down(peer, BT_ERR_CANCELLED, 0);
}

void bt_kvx_peer_release(bt_kvx_peer_t *peer)
{
    if (!peer)
        return;
    if (peer->state != KVX_PEER_DOWN)
        bt_kvx_peer_close(peer);
    peer->app_ref = 0;
    kvx_peer_unref(peer);
}

const char *bt_kvx_peer_name(const bt_kvx_peer_t *peer)
{
    return peer->name;
}

const char *bt_kvx_peer_data_path(const bt_kvx_peer_t *peer)
{
    const bt_kvx_t *kvx = peer->kvx;
    if (peer->state != KVX_PEER_UP || !peer->ep)
        return "none";
    if (peer->readable)
        return "mapped";
    if (kvx->ops->ep_pack && kvx->ops->ep_pack(kvx->be, peer->ep) == KVX_PACK_GATHER)
        return "stream";
    return kvx->ops->name;
}

int bt_kvx_peer_status(const bt_kvx_peer_t *peer)
{
    if (peer->state == KVX_PEER_UP)
        return BT_OK;
    return peer->state == KVX_PEER_CONNECTING ? BT_AGAIN : peer->status;
}

/* ---- handshake ---- */

static int blob_check(bt_kvx_t *kvx, const kvx_blob_t *blob, char *why, size_t cap)
{
    if (strcmp(blob->backend, kvx->ops->name) != 0) {
        snprintf(why, cap, "backend %s here, %s there", kvx->ops->name, blob->backend);
        return BT_ERR_MISMATCH;
    }
    return kvx_layout_check(&kvx->layout, &blob->layout, why, cap);
}

static void write_own_blob(bt_kvx_t *kvx, kvx_buf_t *out)
{
    kvx_buf_t be;
    kvx_buf_init(&be);
    int st = kvx->ops->address(kvx->be, &be);
    if (st != BT_OK && !out->err)
        out->err = st;
    kvx_blob_write(out, kvx->ops->name, kvx->name, &kvx->layout, &kvx->host, be.data, be.len);
    if (be.err && !out->err)
        out->err = be.err;
    kvx_buf_fini(&be);
}

int bt_kvx_address(bt_kvx_t *kvx, void *buf, size_t cap, size_t *len)
{
    kvx_buf_t b;
    kvx_buf_init(&b);
    write_own_blob(kvx, &b);
    int st = b.err;
    if (st == BT_OK && b.len > cap)
        st = BT_ERR_RANGE;
    if (st == BT_OK) {
        memcpy(buf, b.data, b.len);
        *len = b.len;
    }
    kvx_buf_fini(&b);
    return st;
}

static int send_hello(bt_kvx_peer_t *p)
{
    bt_kvx_t *kvx = p->kvx;
    kvx_buf_t m, ext;
    kvx_buf_init(&m);
    kvx_buf_init(&ext);
    int st = kvx_be_hello_ext(kvx->ops, kvx->be, p->ep, &ext);
    kvx_buf_u8(&m, KVX_MSG_HELLO);
    kvx_buf_u32(&m, p->id);
    write_own_blob(kvx, &m);
    kvx_buf_u32(&m, (uint32_t)ext.len);
    kvx_buf_bytes(&m, ext.data, ext.len);
    if (st == BT_OK)
        st = ext.err ? ext.err : m.err;
    if (st == BT_OK)
        st = kvx->ops->send_ctrl(kvx->be, p->ep, kvx_tag_ctrl(0), m.data, m.len);
    kvx_buf_fini(&ext);
    kvx_buf_fini(&m);
    return st;
}

int bt_kvx_connect(bt_kvx_t *kvx, const void *address, size_t len, bt_kvx_peer_t **out)
{
    kvx_rd_t rd;
    kvx_blob_t blob;
    char why[192];
    kvx_rd_init(&rd, address, len);
    int st = kvx_blob_read(&rd, &blob);
    if (st != BT_OK) {
        bt_error("kvx %s: cannot connect: malformed or foreign address", kvx->name);
        return st;
    }
    st = blob_check(kvx, &blob, why, sizeof why);
    if (st != BT_OK) {
        bt_error("kvx %s: refusing peer '%s': %s", kvx->name, blob.name, why);
        return st;
    }
    bt_kvx_peer_t *p = peer_new(kvx, &blob, 1);
    if (!p)
        return BT_ERR_NOMEM;
    st = kvx->ops->ep_create(kvx->be, blob.be_addr, blob.be_len, p, 1, &p->ep);
    if (st == BT_OK)
        st = send_hello(p);
    if (st != BT_OK) {
        bt_error("kvx %s: cannot reach peer '%s': %s", kvx->name, blob.name, bt_status_str(st));
        peer_close_ep(p, 1);
        peer_free(p);
        return st;
    }
    p->state = KVX_PEER_CONNECTING;
    p->deadline_ms = kvx_now_ms() + kvx->peer_timeout_ms;
    peer_watch_process(p, &blob.host);
    *out = p;
    return BT_OK;
}

static void send_ack(bt_kvx_peer_t *p, int status, const char *why)
{
    kvx_buf_t m;
    kvx_buf_init(&m);
    kvx_buf_u8(&m, KVX_MSG_HELLO_ACK);
    kvx_buf_i32(&m, status);
    kvx_buf_u32(&m, p->id);
    kvx_buf_str(&m, why);
    kvx_peer_send_ctrl(p, &m);
    kvx_buf_fini(&m);
}

static void on_hello(bt_kvx_t *kvx, kvx_rd_t *rd)
{
    char why[192] = "";
    kvx_blob_t blob;
    uint32_t their_id = kvx_rd_u32(rd);
    int st = kvx_blob_read(rd, &blob);
    uint32_t ext_len = kvx_rd_u32(rd);
    const void *ext = kvx_rd_bytes(rd, ext_len);
    if (st == BT_ERR_FORMAT || rd->err) {
        bt_warn("kvx %s: dropping a malformed hello", kvx->name);
        return;
    }
    bt_kvx_peer_t *p = peer_new(kvx, &blob, 0);
    if (!p)
        return;
    p->remote_id = their_id;
    p->app_ref = 0; /* the caller holds it from BT_KVX_EV_PEER_UP on */
    if (kvx->ops->ep_create(kvx->be, blob.be_addr, blob.be_len, p, 0, &p->ep) != BT_OK) {
        bt_warn("kvx %s: cannot reach back to peer '%s'", kvx->name, blob.name);
        peer_free(p);
        return;
    }
    if (st == BT_OK)
        st = blob_check(kvx, &blob, why, sizeof why);
    if (st == BT_OK)
        st = kvx_be_accept_ext(kvx->ops, kvx->be, p->ep, ext, ext_len);
    send_ack(p, st, why);
    if (st != BT_OK) {
        bt_error("kvx %s: refusing peer '%s': %s", kvx->name, blob.name,
                 why[0] ? why : bt_status_str(st));
        peer_close_ep(p, 0);
        peer_free(p);
        return;
    }
    p->app_ref = 1;
    peer_watch_process(p, &blob.host);
    peer_set_up(p);
}

static void on_hello_ack(bt_kvx_peer_t *p, kvx_rd_t *rd)
{
    char why[192];
    int st = kvx_rd_i32(rd);
    uint32_t id = kvx_rd_u32(rd);
    kvx_rd_str(rd, why, sizeof why);
    if (p->state != KVX_PEER_CONNECTING || rd->err)
        return;
    if (st != BT_OK) {
        bt_error("kvx %s: peer '%s' refused us: %s", p->kvx->name, p->name,
                 why[0] ? why : bt_status_str(st));
        peer_down(p, st < 0 ? st : BT_ERR_MISMATCH, 1);
        return;
    }
    p->remote_id = id;
    peer_set_up(p);
}

/* ---- application messages ---- */

int bt_kvx_peer_message(bt_kvx_peer_t *peer, const void *buf, size_t len)
{
    if (len > BT_KVX_MESSAGE_MAX)
        return BT_ERR_RANGE;
    if (peer->state != KVX_PEER_UP)
        return peer->state == KVX_PEER_DOWN ? peer->status : BT_AGAIN;
    kvx_buf_t m;
    kvx_buf_init(&m);
    kvx_buf_u8(&m, KVX_MSG_APP);
    kvx_buf_bytes(&m, buf, len);
    int st = kvx_peer_send_ctrl(peer, &m);
    kvx_buf_fini(&m);
    return st;
}

static void on_app(bt_kvx_peer_t *p, kvx_rd_t *rd)
{
    size_t len = rd->len - rd->off;
    void *copy = bt_malloc(len ? len : 1);
    if (!copy) {
        bt_error("kvx %s: out of memory for a message of %zu bytes from '%s'; dropped",
                 p->kvx->name, len, p->name);
        return;
    }
    memcpy(copy, rd->p + rd->off, len);
    bt_kvx_event_t ev = {
        .type = BT_KVX_EV_MESSAGE, .peer = p, .meta = copy, .meta_len = len, .status = BT_OK};
    kvx_push_event(p->kvx, &ev);
}

/* ---- upcalls from the backend ---- */

static void core_on_ctrl(void *arg, uint64_t tag, const void *buf, size_t len)
{
    bt_kvx_t *kvx = arg;
    if (kvx->destroying)
        return;
    kvx_rd_t rd;
    kvx_rd_init(&rd, buf, len);
    int type = kvx_rd_u8(&rd);
    uint32_t id = (uint32_t)tag;
    if (id == 0) {
        if (type == KVX_MSG_HELLO)
            on_hello(kvx, &rd);
        return;
    }
    bt_kvx_peer_t *p = peer_find(kvx, id);
    if (!p || p->state == KVX_PEER_DOWN)
        return; /* late traffic of a connection we already gave up */
    p->last_rx_ms = kvx_now_ms();
    if (type == KVX_MSG_HELLO_ACK) {
        on_hello_ack(p, &rd);
        return;
    }
    if (p->state != KVX_PEER_UP)
        return;
    kvx_peer_hold(p);
    switch (type) {
    case KVX_MSG_PING: break;
    case KVX_MSG_BYE:
        bt_info("kvx %s: peer '%s' closed the connection", kvx->name, p->name);
        peer_down(p, BT_ERR_PEER, 1);
        break;
    case KVX_MSG_RESERVE: kvx_xfer_on_reserve(p, &rd); break;
    case KVX_MSG_OFFER: kvx_xfer_on_offer(p, &rd); break;
    case KVX_MSG_FINISH: kvx_xfer_on_finish(p, &rd); break;
    case KVX_MSG_CANCEL: kvx_xfer_on_cancel(p, &rd); break;
    case KVX_MSG_RELEASE: kvx_xfer_on_release(p, &rd); break;
    case KVX_MSG_SOURCE: kvx_recv_on_source(p, &rd); break;
    case KVX_MSG_READY: kvx_recv_on_ready(p, &rd); break;
    case KVX_MSG_CONFIRM: kvx_recv_on_confirm(p, &rd); break;
    case KVX_MSG_APP: on_app(p, &rd); break;
    default: kvx->stats.n_ctrl_rejected++; break;
    }
    kvx_peer_unhold(p);
}

static void core_on_data(void *arg, uint64_t tag, size_t len, void *msg)
{
    bt_kvx_t *kvx = arg;
    if (kvx->destroying)
        kvx->ops->recv_data(kvx->be, msg, NULL, 0, NULL);
    else
        kvx_xfer_on_data(kvx, tag, len, msg);
}

static void core_op_done(void *arg, kvx_op_t *op, int status)
{
    bt_kvx_t *kvx = arg;
    if (!kvx->destroying)
        kvx_xfer_op_done(kvx, op, status);
}

static void core_ep_error(void *arg, void *ep_user, int status)
{
    bt_kvx_t *kvx = arg;
    if (kvx->destroying)
        return;
    for (bt_kvx_peer_t *p = kvx->peers; p; p = p->next) {
        if (p == ep_user) {
            kvx_peer_fail(p, BT_ERR_PEER);
            return;
        }
    }
}

/* ---- housekeeping ---- */

static void check_processes(bt_kvx_t *kvx)
{
    for (bt_kvx_peer_t *p = kvx->peers, *next; p; p = next) {
        next = p->next;
        if (p->pidfd < 0)
            continue;
        struct pollfd pfd = {.fd = p->pidfd, .events = POLLIN};
        if (poll(&pfd, 1, 0) == 1) {
            bt_warn("kvx %s: peer '%s' process exited", kvx->name, p->name);
            peer_down(p, BT_ERR_PEER, 1);
        }
    }
}

static void check_liveness(bt_kvx_t *kvx, int64_t now)
{
    kvx_buf_t ping;
    kvx_buf_init(&ping);
    kvx_buf_u8(&ping, KVX_MSG_PING);
    for (bt_kvx_peer_t *p = kvx->peers, *next; p; p = next) {
        next = p->next;
        if (p->state == KVX_PEER_CONNECTING && now > p->deadline_ms) {
            bt_error("kvx %s: no answer from peer '%s' in %d ms", kvx->name, p->name,
                     kvx->peer_timeout_ms);
            peer_down(p, BT_ERR_TIMEOUT, 1);
        } else if (p->state == KVX_PEER_UP && now - p->last_rx_ms > kvx->peer_timeout_ms) {
            bt_warn("kvx %s: peer '%s' silent for %lld ms", kvx->name, p->name,
                    (long long)(now - p->last_rx_ms));
            peer_down(p, BT_ERR_PEER, 1);
        } else if (p->state == KVX_PEER_UP && now - p->last_tx_ms >= kvx->keepalive_ms) {
            kvx_peer_send_ctrl(p, &ping);
        }
    }
    kvx_buf_fini(&ping);
}

void kvx_core_upcalls(bt_kvx_t *kvx, kvx_upcalls_t *out)
{
    *out = (kvx_upcalls_t){.arg = kvx,
                           .on_ctrl = core_on_ctrl,
                           .on_data = core_on_data,
                           .op_done = core_op_done,
                           .ep_error = core_ep_error};
}

void kvx_peers_tick(bt_kvx_t *kvx, int64_t now_ms)
{
    check_processes(kvx);
    check_liveness(kvx, now_ms);
}

void kvx_peers_close_all(bt_kvx_t *kvx)
{
    for (bt_kvx_peer_t *p = kvx->peers; p; p = p->next) {
        if (p->state == KVX_PEER_UP) {
            kvx_buf_t m;
            kvx_buf_init(&m);
            kvx_buf_u8(&m, KVX_MSG_BYE);
            kvx_peer_send_ctrl(p, &m);
            kvx_buf_fini(&m);
        }
        p->state = KVX_PEER_DOWN;
        peer_close_ep(p, 0);
    }
}

void kvx_peers_free_all(bt_kvx_t *kvx)
{
    while (kvx->peers)
        peer_free(kvx->peers);
}
