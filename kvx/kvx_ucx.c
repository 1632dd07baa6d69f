/* SPDX-License-Identifier: MIT */
/*
 * kvx_ucx.c - the UCX backend: one ucp worker per context, tag messages for control and data,
 * the KV pool registered once (ucp_mem_map) and its handle passed with every data operation.
 *
 * Why tags: a tag send lets UCX pick its zero-copy rendezvous per transport (CMA on one host,
 * TCP zero-copy sends across hosts, RDMA reads where there is RDMA) into memory the receiver
 * chose, which is what fencing needs. UCX 1.13 runs RMA get/put on ordinary (not UCX-allocated)
 * memory in software over active messages, 30x slower on shared memory and 60x on TCP (see
 * docs/kvx.md), so the RMA operations are not used. Messages are not pre-posted: the progress
 * loop probes each arrival and the core decides where it goes, or drops it (a zero-length
 * receive, which UCX completes as truncated and acknowledges to the sender).
 *
 * Error handling: UCX 1.13 cannot combine peer-failure handling with its shared-memory
 * transports (sysv, posix: "no peer failure handler"). An endpoint is therefore first made
 * without it; if UCX picked a shared-memory lane it stays so (kvx's keepalive and pidfd
 * detect a dead peer), otherwise it is remade with UCP_ERR_HANDLING_MODE_PEER, so that UCX
 * reports failures and a forced close ends every operation in flight.
 *
 * Control messages are delivered in arrival order even when a long one (a big reservation)
 * completes after a later short one: they wait in a FIFO until everything before them is in.
 */
#include "kvx_impl.h"
#include "kvx_shm.h"
#include "kvx_stream.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/pidfd.h>
#include <ucp/api/ucp.h>
#include <unistd.h>

#include "common/alloc.h"
#include "common/log.h"

#define UCX_PROBE_BUDGET 256 /* arrivals handled per progress call */

typedef struct ucx_be ucx_be_t;

typedef struct ucx_ep {
    struct ucx_ep *next;
    ucx_be_t *be;
    ucp_ep_h ep;
    void *user;    /* the core's peer; NULL once closing */
    int peer_mode; /* UCP_ERR_HANDLING_MODE_PEER: can be cut */
    int pack;      /* whole layers go to it packed (ucx_ep_pack) */
    void *close_req;
    kvx_shm_t peer_pool;  /* the peer's pool mapped here (same host); map NULL if not */
    kvx_stream_t *stream; /* data over a kernel TCP connection (kvx_stream.h); NULL if not */
} ucx_ep_t;

/* What the core gets as a data message: a probed UCX message, or the one a stream holds. */
typedef struct {
    ucp_tag_message_h h;
    kvx_stream_t *stream;
} ucx_msg_t;

typedef struct ctrl_rx {
    struct ctrl_rx *next;
    uint64_t tag;
    uint8_t *buf;
    size_t len;
    int done;
    int status;
} ctrl_rx_t;

/* A control message's copy while UCX sends it; freed by its completion, or at destroy for a
 * send that never completes (to a peer that died over shared memory). A ring with a head. */
typedef struct ctrl_link {
    struct ctrl_link *prev, *next;
} ctrl_link_t;

typedef struct {
    ctrl_link_t link; /* first: a link is its message */
    uint8_t data[];
} ctrl_tx_t;

/* An upcall that could not be made where it arose (inside a downcall). */
typedef struct {
    kvx_op_t *op;
    void *ep_user;
    int status;
    int is_ep_error;
} deferred_t;

struct ucx_be {
    kvx_upcalls_t up;
    ucp_context_h ctx;
    ucp_worker_h worker;
    ucp_mem_h memh;
    char *base;
    size_t size_bytes;
    int efd;
    ucx_ep_t *eps;
    ctrl_rx_t *ctrl_head;
    ctrl_rx_t *ctrl_tail;
    ctrl_link_t tx; /* control sends in flight (head of the ring) */
    deferred_t *deferred;
    int n_deferred;
    int cap_deferred;
    int in_downcall;
    int probe_more;
    int map_peers;
    int pack;          /* bt_kvx_params_t.pack */
    int device_memory; /* our pool is in GPU memory */
    kvx_host_t host;
    kvx_shm_t shm;          /* our pool, shared with same-host peers (fd -1 if not) */
    int stream;             /* bt_kvx_params_t.stream */
    kvx_streams_t *streams; /* NULL: no TCP data connections */
    uint8_t scratch[8];
};

static int status_from_ucs(ucs_status_t st)
{
    switch (st) {
    case UCS_OK:
    case UCS_ERR_MESSAGE_TRUNCATED: return BT_OK; /* only ever asked for when dropping */
    case UCS_ERR_NO_MEMORY: return BT_ERR_NOMEM;
    case UCS_ERR_CANCELED: return BT_ERR_CANCELLED;
    case UCS_ERR_UNREACHABLE:
    case UCS_ERR_ENDPOINT_TIMEOUT:
    case UCS_ERR_CONNECTION_RESET:
    case UCS_ERR_NOT_CONNECTED: return BT_ERR_PEER;
    default: return BT_ERR_IO;
    }
}

static void defer(ucx_be_t *be, deferred_t d)
{
    if (be->n_deferred == be->cap_deferred) {
        int cap = be->cap_deferred ? be->cap_deferred * 2 : 64;
        deferred_t *n = bt_realloc(be->deferred, (size_t)cap * sizeof *n);
        if (!n) {
            /* Cannot queue it: dropping a completion would hang its transfer until its lease,
             * which is the lesser harm than writing through a stale pointer later. */
            bt_error("kvx ucx: out of memory queueing a completion");
            return;
        }
        be->deferred = n;
        be->cap_deferred = cap;
    }
    be->deferred[be->n_deferred++] = d;
}

static void op_end_st(ucx_be_t *be, kvx_op_t *op, int status)
{
    if (!op)
        return;
    if (be->in_downcall)
        defer(be, (deferred_t){.op = op, .status = status});
    else
        be->up.op_done(be->up.arg, op, status);
}

static void op_end(ucx_be_t *be, kvx_op_t *op, ucs_status_t status)
{
    op_end_st(be, op, status_from_ucs(status));
}

static void data_cb(void *req, ucs_status_t status, void *user)
{
    kvx_op_t *op = user;
    ucp_request_free(req);
    if (op)
        op_end(op->backend, op, status);
}

static void data_recv_cb(void *req, ucs_status_t status, const ucp_tag_recv_info_t *info,
                         void *user)
{
    data_cb(req, status, user);
}

static void ctrl_tx_unlink(ctrl_tx_t *t)
{
    t->link.prev->next = t->link.next;
    t->link.next->prev = t->link.prev;
}

static void ctrl_sent_cb(void *req, ucs_status_t status, void *user)
{
    ctrl_tx_unlink(user);
    bt_free(user);
    ucp_request_free(req);
}

static void ctrl_recv_cb(void *req, ucs_status_t status, const ucp_tag_recv_info_t *info,
                         void *user)
{
    ctrl_rx_t *c = user;
    c->done = 1;
    c->status = status_from_ucs(status);
    ucp_request_free(req);
}

/* The stream module's calls back (kvx_stream_cbs_t). */
static void stream_on_data(void *arg, kvx_stream_t *s, uint64_t tag, size_t len)
{
    ucx_be_t *be = arg;
    ucx_msg_t m = {.stream = s};
    be->up.on_data(be->up.arg, tag, len, &m);
}

static void stream_op_end(void *arg, kvx_op_t *op, int status)
{
    op_end_st(arg, op, status);
}

static void stream_failed(void *arg, void *user, int status)
{
    ucx_ep_t *e = user;
    if (e->user) /* deferred: the core may close this endpoint in response */
        defer(arg, (deferred_t){.ep_user = e->user, .status = status, .is_ep_error = 1});
}

static void ep_err_cb(void *arg, ucp_ep_h ep, ucs_status_t status)
{
    ucx_ep_t *e = arg;
    if (!e->user)
        return;
    bt_warn("kvx ucx: connection error: %s", ucs_status_string(status));
    /* Always deferred: the core may close this endpoint in response. */
    defer(e->be, (deferred_t){.ep_user = e->user, .status = BT_ERR_PEER, .is_ep_error = 1});
}

/* Returns the request's outcome as a kvx status: BT_OK done, BT_AGAIN pending, or error. */
static int req_status(ucs_status_ptr_t req)
{
    if (req == NULL)
        return BT_OK;
    if (UCS_PTR_IS_ERR(req))
        return status_from_ucs(UCS_PTR_STATUS(req));
    return BT_AGAIN;
}

static ucp_request_param_t data_param(ucx_be_t *be, kvx_op_t *op, const void *p, size_t len)
{
    ucp_request_param_t prm = {
        .op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA, .user_data = op};
    if (op)
        op->backend = be;
    /* The pool was registered once; telling UCX saves a registration cache lookup. */
    if (be->memh && (const char *)p >= be->base &&
        (const char *)p + len <= be->base + be->size_bytes) {
        prm.op_attr_mask |= UCP_OP_ATTR_FIELD_MEMH;
        prm.memh = be->memh;
    }
    return prm;
}

static int ucx_send_data(void *bep, void *ep, uint64_t tag, const void *src, size_t len,
                         kvx_op_t *op)
{
    ucx_be_t *be = bep;
    ucx_ep_t *e = ep;
    if (kvx_stream_ready(e->stream)) {
        kvx_iov_t one = {.base = (void *)src, .len = len};
        return kvx_stream_send(e->stream, tag, &one, 1, len, op);
    }
    ucp_request_param_t prm = data_param(be, op, src, len);
    prm.cb.send = data_cb;
    return req_status(ucp_tag_send_nbx(e->ep, src, len, tag, &prm));
}

/* Only where ucx_ep_pack says gathered (a stream is up). */
static int ucx_send_data_iov(void *bep, void *ep, uint64_t tag, const kvx_iov_t *iov, int n,
                             size_t len, kvx_op_t *op)
{
    return kvx_stream_send(((ucx_ep_t *)ep)->stream, tag, iov, n, len, op);
}

static int recv_handle(ucx_be_t *be, ucp_tag_message_h msg, void *dst, size_t len, kvx_op_t *op)
{
    if (!dst) {
        dst = be->scratch;
        len = 0;
    }
    ucp_request_param_t prm = data_param(be, op, dst, len);
    prm.cb.recv = data_recv_cb;
    return req_status(ucp_tag_msg_recv_nbx(be->worker, dst, len, msg, &prm));
}

static int ucx_recv_data(void *bep, void *msg, void *dst, size_t len, kvx_op_t *op)
{
    const ucx_msg_t *m = msg;
    if (m->stream) {
        kvx_iov_t one = {.base = dst, .len = len};
        return kvx_stream_recv(m->stream, dst ? &one : NULL, 1, op);
    }
    return recv_handle(bep, m->h, dst, len, op);
}

_Static_assert(sizeof(kvx_iov_t) == sizeof(ucp_dt_iov_t) &&
                   offsetof(kvx_iov_t, base) == offsetof(ucp_dt_iov_t, buffer) &&
                   offsetof(kvx_iov_t, len) == offsetof(ucp_dt_iov_t, length),
               "kvx_iov_t is passed to UCX as ucp_dt_iov_t");

static int ucx_recv_data_iov(void *bep, void *msg, const kvx_iov_t *iov, int n, kvx_op_t *op)
{
    ucx_be_t *be = bep;
    const ucx_msg_t *m = msg;
    if (m->stream)
        return kvx_stream_recv(m->stream, iov, n, op);
    ucp_request_param_t prm = data_param(be, op, NULL, 0);
    prm.op_attr_mask |= UCP_OP_ATTR_FIELD_DATATYPE;
    prm.datatype = ucp_dt_make_iov();
    prm.cb.recv = data_recv_cb;
    return req_status(ucp_tag_msg_recv_nbx(be->worker, (void *)iov, (size_t)n, m->h, &prm));
}

static int ucx_ep_pack(void *bep, void *ep)
{
    const ucx_ep_t *e = ep;
    if (kvx_stream_ready(e->stream))
        return KVX_PACK_GATHER;
    return e->pack ? KVX_PACK_COPY : 0;
}

static int ucx_send_ctrl(void *bep, void *ep, uint64_t tag, const void *buf, size_t len)
{
    ucx_be_t *be = bep;
    ctrl_tx_t *t = bt_malloc(sizeof *t + (len ? len : 1));
    if (!t)
        return BT_ERR_NOMEM;
    memcpy(t->data, buf, len);
    t->link.prev = &be->tx;
    t->link.next = be->tx.next;
    t->link.next->prev = &t->link;
    be->tx.next = &t->link;
    ucp_request_param_t prm = {.op_attr_mask =
                                   UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA,
                               .cb.send = ctrl_sent_cb,
                               .user_data = t};
    int st = req_status(ucp_tag_send_nbx(((ucx_ep_t *)ep)->ep, t->data, len, tag, &prm));
    if (st != BT_AGAIN) {
        ctrl_tx_unlink(t);
        bt_free(t);
    }
    return st == BT_AGAIN ? BT_OK : st;
}

/* Starts receiving a control message; it joins the FIFO, delivered once all before it are. */
static void ctrl_arrived(ucx_be_t *be, ucp_tag_message_h msg, const ucp_tag_recv_info_t *info)
{
    ctrl_rx_t *c = info->length <= KVX_CTRL_MAX_BYTES ? bt_calloc(1, sizeof *c) : NULL;
    if (c)
        c->buf = bt_malloc(info->length ? info->length : 1);
    if (!c || !c->buf) {
        if (c)
            bt_free(c);
        recv_handle(be, msg, NULL, 0, NULL);
        return;
    }
    c->tag = info->sender_tag;
    c->len = info->length;
    ucp_request_param_t prm = {.op_attr_mask =
                                   UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA,
                               .cb.recv = ctrl_recv_cb,
                               .user_data = c};
    int st = req_status(ucp_tag_msg_recv_nbx(be->worker, c->buf, c->len, msg, &prm));
    if (st != BT_AGAIN) {
        c->done = 1;
        c->status = st;
    }
    if (be->ctrl_tail)
        be->ctrl_tail->next = c;
    else
        be->ctrl_head = c;
    be->ctrl_tail = c;
}

static void ctrl_deliver(ucx_be_t *be)
{
    while (be->ctrl_head && be->ctrl_head->done) {
        ctrl_rx_t *c = be->ctrl_head;
        be->ctrl_head = c->next;
        if (!be->ctrl_head)
            be->ctrl_tail = NULL;
        if (c->status == BT_OK)
            be->up.on_ctrl(be->up.arg, c->tag, c->buf, c->len);
        bt_free(c->buf);
        bt_free(c);
    }
}

static void deferred_run(ucx_be_t *be)
{
    /* Upcalls may defer more; take the batch first. */
    for (int i = 0; i < be->n_deferred; i++) {
        deferred_t d = be->deferred[i];
        if (d.is_ep_error)
            be->up.ep_error(be->up.arg, d.ep_user, d.status);
        else
            be->up.op_done(be->up.arg, d.op, d.status);
    }
    be->n_deferred = 0;
}

static void closes_reap(ucx_be_t *be)
{
    for (ucx_ep_t **pp = &be->eps; *pp;) {
        ucx_ep_t *e = *pp;
        if (e->user || (e->close_req && ucp_request_check_status(e->close_req) == UCS_INPROGRESS)) {
            pp = &e->next;
            continue;
        }
        if (e->close_req)
            ucp_request_free(e->close_req);
        *pp = e->next;
        bt_free(e);
    }
}

static int ucx_progress(void *bep)
{
    ucx_be_t *be = bep;
    int n = 0;
    deferred_run(be);
    while (ucp_worker_progress(be->worker) && n < 64)
        n++;
    be->probe_more = 0;
    for (int k = 0; k < UCX_PROBE_BUDGET; k++) {
        ucp_tag_recv_info_t info;
        ucp_tag_message_h msg = ucp_tag_probe_nb(be->worker, 0, 0, 1, &info);
        if (!msg)
            break;
        n++;
        be->probe_more = k + 1 == UCX_PROBE_BUDGET;
        uint64_t cls = info.sender_tag & KVX_TAG_CLASS_MASK;
        if (cls == KVX_TAG_DATA || cls == KVX_TAG_PACK) {
            ucx_msg_t m = {.h = msg};
            be->up.on_data(be->up.arg, info.sender_tag, info.length, &m);
        } else if (cls == KVX_TAG_CTRL) {
            ctrl_arrived(be, msg, &info);
        } else {
            recv_handle(be, msg, NULL, 0, NULL);
        }
    }
    ctrl_deliver(be);
    if (be->streams)
        n += kvx_streams_progress(be->streams);
    deferred_run(be);
    closes_reap(be);
    return n;
}

static int ucx_fd(void *bep)
{
    ucx_be_t *be = bep;
    return be->streams ? kvx_streams_fd(be->streams) : be->efd;
}

static int ucx_arm(void *bep)
{
    ucx_be_t *be = bep;
    if (be->n_deferred || be->probe_more || (be->ctrl_head && be->ctrl_head->done) ||
        (be->streams && kvx_streams_pending(be->streams)))
        return BT_AGAIN;
    ucs_status_t st = ucp_worker_arm(be->worker);
    return st == UCS_OK ? BT_OK : BT_AGAIN;
}

static int ucx_address(void *bep, kvx_buf_t *out)
{
    ucx_be_t *be = bep;
    ucp_address_t *addr;
    size_t len;
    ucs_status_t st = ucp_worker_get_address(be->worker, &addr, &len);
    if (st != UCS_OK)
        return status_from_ucs(st);
    kvx_buf_u32(out, (uint32_t)len);
    kvx_buf_bytes(out, addr, len);
    ucp_worker_release_address(be->worker, addr);
    /* Where a same-host peer finds our pool: this process's memfd. */
    kvx_buf_bytes(out, be->host.boot_id, sizeof be->host.boot_id);
    kvx_buf_u64(out, be->host.pid_ns);
    kvx_buf_i32(out, be->host.pid);
    kvx_buf_i32(out, be->shm.fd);
    kvx_buf_u64(out, be->shm.len);
    kvx_buf_u64(out, be->shm.off);
    kvx_buf_u64(out, be->shm.pool_va);
    kvx_buf_u64(out, be->shm.pool_len);
    kvx_buf_u8(out, (uint8_t)!be->device_memory); /* a peer may pack layers for us */
    kvx_buf_u8(out, be->streams != NULL);         /* where to open a TCP data connection */
    if (be->streams)
        kvx_streams_address(be->streams, out);
    return out->err;
}

/* Whether UCX put one of the n named transports ("tcp/", ...) on a lane of this endpoint. */
static int ep_uses(ucp_ep_h ep, const char *const *names, size_t n)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    if (!f)
        return 0;
    ucp_ep_print_info(ep, f);
    fclose(f);
    int found = 0;
    for (size_t i = 0; text && i < n; i++)
        found |= strstr(text, names[i]) != NULL;
    free(text);
    return found;
}

static int ep_uses_shm(ucp_ep_h ep)
{
    static const char *const shm[] = {"sysv/", "posix/", "cma/", "knem/", "xpmem/"};
    return ep_uses(ep, shm, sizeof shm / sizeof shm[0]);
}

/* Packing pays where every message crosses a socket; it needs both pools in host memory. */
static int ep_packs(const ucx_be_t *be, ucp_ep_h ep, int peer_host_pool)
{
    static const char *const tcp[] = {"tcp/"};
    if (be->pack < 0 || be->device_memory || !peer_host_pool)
        return 0;
    return be->pack > 0 || ep_uses(ep, tcp, 1);
}

static int ep_make(ucx_be_t *be, const void *addr, ucx_ep_t *e, ucp_err_handling_mode_t mode)
{
    ucp_ep_params_t p = {.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS |
                                       UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE |
                                       UCP_EP_PARAM_FIELD_ERR_HANDLER,
                         .address = addr,
                         .err_mode = mode,
                         .err_handler = {.cb = ep_err_cb, .arg = e}};
    ucs_status_t st = ucp_ep_create(be->worker, &p, &e->ep);
    if (st != UCS_OK) {
        bt_error("kvx ucx: cannot create endpoint: %s", ucs_status_string(st));
        return st == UCS_ERR_NO_MEMORY ? BT_ERR_NOMEM : BT_ERR_IO;
    }
    e->peer_mode = mode == UCP_ERR_HANDLING_MODE_PEER;
    return BT_OK;
}

static void ep_close_now(ucx_be_t *be, ucx_ep_t *e, int force)
{
    ucp_request_param_t prm = {.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS,
                               .flags = force && e->peer_mode ? UCP_EP_CLOSE_FLAG_FORCE : 0};
    e->user = NULL;
    be->in_downcall++;
    ucs_status_ptr_t req = ucp_ep_close_nbx(e->ep, &prm);
    be->in_downcall--;
    e->close_req = UCS_PTR_IS_PTR(req) ? req : NULL;
}

/* A decoded UCX backend address. */
typedef struct {
    const void *worker;
    kvx_host_t host;
    int32_t shm_fd;
    kvx_shm_t shm; /* the peer's shared interior, as it describes it */
    int host_pool; /* its pool is in host memory */
    int has_stream;
    kvx_stream_addr_t stream; /* its TCP data listener, if has_stream */
} ucx_addr_t;

static int addr_read(const void *p, size_t len, ucx_addr_t *a)
{
    kvx_rd_t rd;
    kvx_rd_init(&rd, p, len);
    uint32_t n = kvx_rd_u32(&rd);
    a->worker = kvx_rd_bytes(&rd, n);
    const void *boot = kvx_rd_bytes(&rd, sizeof a->host.boot_id);
    if (boot)
        memcpy(a->host.boot_id, boot, sizeof a->host.boot_id);
    a->host.pid_ns = kvx_rd_u64(&rd);
    a->host.pid = kvx_rd_i32(&rd);
    a->shm_fd = kvx_rd_i32(&rd);
    a->shm = (kvx_shm_t){.fd = -1, .pid = a->host.pid};
    a->shm.len = kvx_rd_u64(&rd);
    a->shm.off = kvx_rd_u64(&rd);
    a->shm.pool_va = kvx_rd_u64(&rd);
    a->shm.pool_len = kvx_rd_u64(&rd);
    a->host_pool = rd.off < rd.len ? kvx_rd_u8(&rd) : 0;
    a->has_stream = rd.off < rd.len ? kvx_rd_u8(&rd) : 0;
    if (a->has_stream && kvx_stream_addr_read(&rd, &a->stream) != BT_OK)
        return BT_ERR_FORMAT;
    return rd.err || !a->worker ? BT_ERR_FORMAT : BT_OK;
}

/* Maps the pool of a peer process on this host, if it shared one; silently not otherwise. */
static void ep_map_peer_pool(ucx_be_t *be, ucx_ep_t *e, const ucx_addr_t *a)
{
    if (be->map_peers < 0 || a->shm_fd < 0 || !a->shm.len ||
        a->shm.off + a->shm.len > a->shm.pool_len || !kvx_host_same(&be->host, &a->host) ||
        a->host.pid == be->host.pid)
        return;
    int pidfd = pidfd_open(a->host.pid, 0);
    if (pidfd < 0)
        return;
    kvx_shm_map(pidfd, a->shm_fd, &a->shm, &e->peer_pool);
    close(pidfd);
}

/* A TCP data connection to a peer that listens for one, with both pools in host memory: the
 * initiator connects where UCX itself goes over TCP (or always, if asked); the acceptor just
 * waits for it, so that the initiator's choice decides. */
static void ep_stream(ucx_be_t *be, ucx_ep_t *e, const ucx_addr_t *a, int initiator)
{
    static const char *const tcp[] = {"tcp/"};
    if (!be->streams || !a->has_stream || !a->host_pool)
        return;
    if (!initiator)
        e->stream = kvx_stream_expect(be->streams, a->stream.key, e);
    else if (be->stream > 0 || ep_uses(e->ep, tcp, 1))
        e->stream = kvx_stream_open(be->streams, &a->stream, kvx_host_same(&be->host, &a->host), e);
}

static ucx_ep_t *ep_alloc(ucx_be_t *be, void *user)
{
    ucx_ep_t *e = bt_calloc(1, sizeof *e);
    if (e) {
        e->be = be;
        e->user = user;
        e->peer_pool.fd = -1;
    }
    return e;
}

static int ucx_ep_create(void *bep, const void *addr, size_t len, void *ep_user, int initiator,
                         void **out)
{
    ucx_be_t *be = bep;
    ucx_addr_t a;
    if (addr_read(addr, len, &a) != BT_OK)
        return BT_ERR_FORMAT;
    ucx_ep_t *e = ep_alloc(be, ep_user);
    if (!e)
        return BT_ERR_NOMEM;
    int st = ep_make(be, a.worker, e, UCP_ERR_HANDLING_MODE_NONE);
    if (st == BT_OK && !ep_uses_shm(e->ep)) {
        /* Not shared memory: UCX can handle this peer's failure, so let it. The first
         * endpoint has sent nothing; its close only has to let UCX tidy up. */
        ucx_ep_t *probe = ep_alloc(be, NULL);
        if (probe) {
            probe->ep = e->ep;
            probe->next = be->eps;
            be->eps = probe;
            ep_close_now(be, probe, 0);
            st = ep_make(be, a.worker, e, UCP_ERR_HANDLING_MODE_PEER);
        } else {
            st = BT_ERR_NOMEM;
        }
    }
    if (st != BT_OK) {
        bt_free(e);
        return st;
    }
    ep_map_peer_pool(be, e, &a);
    e->pack = ep_packs(be, e->ep, a.host_pool);
    ep_stream(be, e, &a, initiator);
    e->next = be->eps;
    be->eps = e;
    *out = e;
    return BT_OK;
}

static size_t ucx_ep_peer_readable(void *bep, void *ep)
{
    const ucx_ep_t *e = ep;
    return e->peer_pool.map ? e->peer_pool.pool_len : 0;
}

static int ucx_ep_peer_read(void *bep, void *ep, size_t off, void *dst, size_t len)
{
    return kvx_shm_read(&((ucx_ep_t *)ep)->peer_pool, off, dst, len);
}

static void ucx_ep_close(void *bep, void *ep, int force, int *cut)
{
    ucx_ep_t *e = ep;
    ucx_be_t *be = bep;
    *cut = force && e->peer_mode;
    kvx_shm_release(&e->peer_pool); /* the core copies nothing out of it any more */
    /* Its operations end (with errors) after this call, like UCX's. */
    be->in_downcall++;
    kvx_stream_close(e->stream);
    be->in_downcall--;
    e->stream = NULL;
    ep_close_now(bep, e, force);
}

/* UCX settings that suit KV transfer better than the defaults, unless the environment sets
 * them: TCP buffers that take a layer's 64 KiB block in one segment (measured: 1.5-3x the
 * bandwidth for 1-16 MiB requests over TCP loopback, see docs/kvx.md). UCX 1.13 takes
 * transport settings only from the environment (ucp_config_modify reports them as invalid),
 * so they go there, and only when TCP may be in use. */
static int tls_tcp(const char *tls)
{
    if (!tls)
        tls = getenv("UCX_TLS");
    return !tls || strstr(tls, "tcp") || strstr(tls, "all") || tls[0] == '^';
}

static void config_tune(const char *tls)
{
    static const char *const tuned[][2] = {{"UCX_TCP_TX_SEG_SIZE", "64K"},
                                           {"UCX_TCP_RX_SEG_SIZE", "256K"}};
    if (!tls_tcp(tls))
        return;
    for (size_t i = 0; i < sizeof tuned / sizeof tuned[0]; i++)
        setenv(tuned[i][0], tuned[i][1], 0);
}

static int ctx_init(ucx_be_t *be, const bt_kvx_params_t *params)
{
    ucp_config_t *cfg;
    config_tune(params->ucx_tls);
    ucs_status_t st = ucp_config_read(NULL, NULL, &cfg);
    if (st != UCS_OK)
        return BT_ERR_IO;
    if (params->ucx_tls)
        st = ucp_config_modify(cfg, "TLS", params->ucx_tls);
    ucp_params_t p = {.field_mask = UCP_PARAM_FIELD_FEATURES | UCP_PARAM_FIELD_NAME,
                      .features = UCP_FEATURE_TAG | UCP_FEATURE_WAKEUP,
                      .name = "baton-kvx"};
    if (st == UCS_OK)
        st = ucp_init(&p, cfg, &be->ctx);
    ucp_config_release(cfg);
    if (st != UCS_OK) {
        bt_error("kvx ucx: cannot initialize UCX (transports '%s'): %s",
                 params->ucx_tls ? params->ucx_tls : "default", ucs_status_string(st));
        return BT_ERR_UNSUPPORTED;
    }
    /* A UCX without CUDA support would take a device pool's addresses for host memory and
     * fault on the first transfer: refuse it here, by name. */
    ucp_context_attr_t attr = {.field_mask = UCP_ATTR_FIELD_MEMORY_TYPES};
    if (params->device_memory && (ucp_context_query(be->ctx, &attr) != UCS_OK ||
                                  !(attr.memory_types & UCS_BIT(UCS_MEMORY_TYPE_CUDA)))) {
        bt_error("kvx ucx: the KV pool is in GPU memory and this UCX cannot move CUDA memory "
                 "(it needs UCX built with CUDA: the cuda_copy and cuda_ipc transports)");
        return BT_ERR_UNSUPPORTED;
    }
    return BT_OK;
}

static int worker_init(ucx_be_t *be, const bt_kvx_params_t *params)
{
    ucp_worker_params_t wp = {.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE,
                              .thread_mode = UCS_THREAD_MODE_SINGLE};
    ucs_status_t st = ucp_worker_create(be->ctx, &wp, &be->worker);
    if (st == UCS_OK)
        st = ucp_worker_get_efd(be->worker, &be->efd);
    if (st != UCS_OK) {
        bt_error("kvx ucx: cannot create worker: %s", ucs_status_string(st));
        return BT_ERR_IO;
    }
    if (!params->size_bytes)
        return BT_OK; /* nothing to register (a wrapping backend's control channel) */
    ucp_mem_map_params_t mp = {
        .field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH |
                      UCP_MEM_MAP_PARAM_FIELD_MEMORY_TYPE,
        .address = params->base,
        .length = params->size_bytes,
        .memory_type = params->device_memory ? UCS_MEMORY_TYPE_CUDA : UCS_MEMORY_TYPE_HOST};
    st = ucp_mem_map(be->ctx, &mp, &be->memh);
    if (st != UCS_OK) {
        bt_error("kvx ucx: cannot register %zu bytes of KV pool: %s", params->size_bytes,
                 ucs_status_string(st));
        return BT_ERR_IO;
    }
    be->base = params->base;
    be->size_bytes = params->size_bytes;
    return BT_OK;
}

static void ucx_destroy(void *bep);

/* Listens for TCP data connections where TCP may be in use and both sides may be host memory;
 * without it, data simply goes over UCX. */
static void streams_init(ucx_be_t *be, const bt_kvx_params_t *params)
{
    if (params->stream < 0 || params->device_memory || !params->size_bytes ||
        (!params->stream && !tls_tcp(params->ucx_tls)))
        return;
    kvx_stream_cbs_t cbs = {
        .arg = be, .on_data = stream_on_data, .op_end = stream_op_end, .failed = stream_failed};
    if (kvx_streams_create(&cbs, be->efd, &be->streams) != BT_OK)
        be->streams = NULL;
}

static int ucx_create(const bt_kvx_params_t *params, const kvx_upcalls_t *up, void **out)
{
    ucx_be_t *be = bt_calloc(1, sizeof *be);
    if (!be)
        return BT_ERR_NOMEM;
    be->tx.prev = be->tx.next = &be->tx;
    be->up = *up;
    be->efd = -1;
    be->stream = params->stream;
    be->shm.fd = -1;
    be->map_peers = params->map_peers;
    be->pack = params->pack;
    be->device_memory = params->device_memory;
    kvx_host_self(&be->host);
    /* Before registering: a registration pins the pages that sharing replaces. */
    if (params->map_peers >= 0 && params->size_bytes &&
        kvx_shm_share(params->base, params->size_bytes, &be->shm) != BT_OK)
        be->shm.fd = -1;
    int st = ctx_init(be, params);
    if (st == BT_OK)
        st = worker_init(be, params);
    if (st == BT_OK)
        streams_init(be, params);
    if (st != BT_OK) {
        ucx_destroy(be);
        return st;
    }
    *out = be;
    return BT_OK;
}

/* Takes and drops the messages still waiting unexpected (a peer's last notices): nobody will
 * use them now, and the worker would warn about each as it goes. */
static void unexpected_drop(ucx_be_t *be)
{
    ucp_tag_recv_info_t info;
    ucp_tag_message_h msg;
    while ((msg = ucp_tag_probe_nb(be->worker, 0, 0, 1, &info)))
        recv_handle(be, msg, NULL, 0, NULL);
}

/* Gives closing endpoints a moment to say goodbye before the worker goes. */
static void closes_drain(ucx_be_t *be)
{
    int64_t until = kvx_now_ms() + 200;
    for (;;) {
        ucp_worker_progress(be->worker);
        unexpected_drop(be);
        closes_reap(be);
        int busy = 0;
        for (ucx_ep_t *e = be->eps; e; e = e->next)
            busy |= e->close_req != NULL;
        if (!busy || kvx_now_ms() > until)
            return;
    }
}

static void ucx_destroy(void *bep)
{
    ucx_be_t *be = bep;
    if (be->worker) {
        for (ucx_ep_t *e = be->eps; e; e = e->next)
            if (e->user)
                ep_close_now(be, e, 1);
        closes_drain(be);
        ucp_worker_progress(be->worker);
        unexpected_drop(be);
        /* Whatever is still in flight is completed (cancelled) by the worker's destruction;
         * its callbacks may still look at control buffers and deferred slots, so those go
         * after it. */
        be->in_downcall++;
        /* A close still in flight (a flush to a peer that died over shared memory never ends)
         * is let go: the worker frees it as it destroys the endpoint, which it refuses to do
         * for a request the caller still holds. */
        for (ucx_ep_t *e = be->eps; e; e = e->next)
            if (e->close_req) {
                ucp_request_free(e->close_req);
                e->close_req = NULL;
            }
        if (be->memh)
            ucp_mem_unmap(be->ctx, be->memh);
        ucp_worker_destroy(be->worker);
    }
    if (be->ctx)
        ucp_cleanup(be->ctx);
    /* Control sends the worker's destruction left without completion (UCX warns that their
     * requests were not returned): their copies are ours to free. */
    while (be->tx.next != &be->tx) {
        ctrl_tx_t *t = (ctrl_tx_t *)be->tx.next;
        ctrl_tx_unlink(t);
        bt_free(t);
    }
    kvx_streams_destroy(be->streams);
    while (be->eps) {
        ucx_ep_t *e = be->eps;
        be->eps = e->next;
        kvx_shm_release(&e->peer_pool);
        bt_free(e);
    }
    kvx_shm_release(&be->shm);
    while (be->ctrl_head) {
        ctrl_rx_t *c = be->ctrl_head;
        be->ctrl_head = c->next;
        bt_free(c->buf);
        bt_free(c);
    }
    bt_free(be->deferred);
    bt_free(be);
}

const kvx_backend_ops_t kvx_ucx_ops = {
    .name = "ucx",
    .create = ucx_create,
    .destroy = ucx_destroy,
    .address = ucx_address,
    .ep_create = ucx_ep_create,
    .ep_close = ucx_ep_close,
    .send_ctrl = ucx_send_ctrl,
    .send_data = ucx_send_data,
    .send_data_iov = ucx_send_data_iov,
    .recv_data = ucx_recv_data,
    .recv_data_iov = ucx_recv_data_iov,
    .ep_pack = ucx_ep_pack,
    .ep_peer_readable = ucx_ep_peer_readable,
    .ep_peer_read = ucx_ep_peer_read,
    .progress = ucx_progress,
    .fd = ucx_fd,
    .arm = ucx_arm,
};
