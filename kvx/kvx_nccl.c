/* SPDX-License-Identifier: MIT */
/*
 * kvx_nccl.c - the NCCL backend: KV data GPU to GPU with ncclSend/ncclRecv, control messages
 * (and each data message's header) over an inner UCX backend.
 *
 * The one thing to know: NCCL matches sends and receives purely by order, so each connection
 * has two two-rank communicators, one per direction, each driven through one FIFO and one
 * stream. The sender puts a header (communicator, tag, length) on the control channel, then
 * queues its ncclSend; the receiver learns of the message from the header, asks the core
 * where it goes, and queues the matching ncclRecv (into a scratch buffer when the core drops
 * it), in the same order. The initiator makes both unique ids and sends them in its hello.
 *
 * Communicators are non-blocking (config.blocking = 0): initialisation and enqueueing are
 * polled from the progress loop, so a slow or absent peer never stalls the daemon's loop.
 * Memory: the pool must be device memory. Every entry point first makes the context's device
 * current, so that contexts on different GPUs can share one thread (as the GPU test does).
 */
#include "kvx_impl.h"

#include <cuda_runtime_api.h>
#include <nccl.h>
#include <string.h>

#include "common/alloc.h"
#include "common/hash.h"
#include "common/log.h"

#define NCCL_HDR_ID 0xffffffffu  /* control "peer id" that marks a data header */
#define NCCL_MAX_MSG (64u << 20) /* the core splits runs to this; scratch size */

typedef struct nccl_be nccl_be_t;

typedef struct nccl_op {
    struct nccl_op *next;
    kvx_op_t *op;
    void *ptr;
    size_t len;
    cudaEvent_t ev;
    int stage; /* 0 queued, 1 being enqueued by NCCL, 2 on the stream */
} nccl_op_t;

/* One direction of a connection: a communicator, its stream and its FIFO of operations. */
typedef struct {
    ncclComm_t comm;
    cudaStream_t stream;
    uint64_t key; /* hash of the unique id: names the communicator in headers */
    int rank;     /* 0 sends, 1 receives */
    int ready;
    int failed;
    nccl_op_t *head;
    nccl_op_t *tail;
} nccl_dir_t;

typedef struct nccl_ep {
    struct nccl_ep *next;
    nccl_be_t *be;
    void *uep; /* the inner UCX endpoint */
    void *user;
    nccl_dir_t tx;
    nccl_dir_t rx;
    int error_sent;
} nccl_ep_t;

typedef struct {
    nccl_ep_t *ep; /* NULL: unknown communicator, nothing to receive on */
    size_t len;
} nccl_msg_t;

struct nccl_be {
    void *ucx;
    kvx_upcalls_t up; /* the core's */
    int device;
    void *scratch; /* device memory that dropped messages are received into */
    nccl_ep_t *eps;
    kvx_op_t **done; /* completions found while inside a downcall */
    int *done_status;
    int n_done;
    int cap_done;
};

static uint64_t id_key(const ncclUniqueId *id)
{
    return bt_fnv1a(id->internal, sizeof id->internal);
}

static void use_device(const nccl_be_t *be)
{
    cudaSetDevice(be->device);
}

static void done_later(nccl_be_t *be, kvx_op_t *op, int status)
{
    if (!op)
        return;
    if (be->n_done == be->cap_done) {
        int cap = be->cap_done ? be->cap_done * 2 : 32;
        kvx_op_t **d = bt_realloc(be->done, (size_t)cap * sizeof *d);
        if (d)
            be->done = d;
        int *s = d ? bt_realloc(be->done_status, (size_t)cap * sizeof *s) : NULL;
        if (!s)
            return; /* the transfer's lease will end it */
        be->done_status = s;
        be->cap_done = cap;
    }
    be->done[be->n_done] = op;
    be->done_status[be->n_done++] = status;
}

static int dir_init(nccl_dir_t *d, const ncclUniqueId *id, int rank)
{
    ncclConfig_t cfg = NCCL_CONFIG_INITIALIZER;
    cfg.blocking = 0;
    d->key = id_key(id);
    d->rank = rank;
    if (cudaStreamCreateWithFlags(&d->stream, cudaStreamNonBlocking) != cudaSuccess)
        return BT_ERR_IO;
    ncclResult_t r = ncclCommInitRankConfig(&d->comm, 2, *id, rank, &cfg);
    if (r != ncclSuccess && r != ncclInProgress) {
        bt_error("kvx nccl: communicator init failed: %s", ncclGetErrorString(r));
        return BT_ERR_IO;
    }
    return BT_OK;
}

static void dir_fail_all(nccl_be_t *be, nccl_dir_t *d, int status)
{
    while (d->head) {
        nccl_op_t *o = d->head;
        d->head = o->next;
        if (o->stage == 2)
            cudaEventDestroy(o->ev);
        done_later(be, o->op, status);
        bt_free(o);
    }
    d->tail = NULL;
}

static void dir_fini(nccl_be_t *be, nccl_dir_t *d, int abort)
{
    if (d->comm) {
        if (abort)
            ncclCommAbort(d->comm);
        else
            ncclCommDestroy(d->comm);
        d->comm = NULL;
    }
    dir_fail_all(be, d, BT_ERR_CANCELLED);
    if (d->stream) {
        cudaStreamDestroy(d->stream);
        d->stream = NULL;
    }
}

static int dir_queue(nccl_dir_t *d, kvx_op_t *op, void *ptr, size_t len)
{
    nccl_op_t *o = bt_calloc(1, sizeof *o);
    if (!o)
        return BT_ERR_NOMEM;
    o->op = op;
    o->ptr = ptr;
    o->len = len;
    if (d->tail)
        d->tail->next = o;
    else
        d->head = o;
    d->tail = o;
    return BT_AGAIN;
}

/* Issues the first queued operation of a direction, or checks on the one being issued. */
static void dir_issue(nccl_dir_t *d)
{
    nccl_op_t *o = d->head;
    while (o && o->stage == 2)
        o = o->next;
    if (!o || !d->ready || d->failed)
        return;
    ncclResult_t r = ncclSuccess;
    if (o->stage == 1) {
        ncclCommGetAsyncError(d->comm, &r);
    } else {
        int peer = 1 - d->rank;
        ncclGroupStart();
        if (d->rank == 0)
            ncclSend(o->ptr, o->len, ncclInt8, peer, d->comm, d->stream);
        else
            ncclRecv(o->ptr, o->len, ncclInt8, peer, d->comm, d->stream);
        r = ncclGroupEnd();
    }
    if (r == ncclInProgress) {
        o->stage = 1;
        return;
    }
    if (r != ncclSuccess ||
        cudaEventCreateWithFlags(&o->ev, cudaEventDisableTiming) != cudaSuccess ||
        cudaEventRecord(o->ev, d->stream) != cudaSuccess) {
        bt_error("kvx nccl: cannot issue a transfer: %s", ncclGetErrorString(r));
        d->failed = 1;
        return;
    }
    o->stage = 2;
}

/* Completes finished operations in order; returns how many. */
static int dir_reap(nccl_be_t *be, nccl_dir_t *d)
{
    int n = 0;
    while (d->head && d->head->stage == 2) {
        cudaError_t e = cudaEventQuery(d->head->ev);
        if (e == cudaErrorNotReady)
            break;
        nccl_op_t *o = d->head;
        d->head = o->next;
        if (!d->head)
            d->tail = NULL;
        cudaEventDestroy(o->ev);
        be->up.op_done(be->up.arg, o->op, e == cudaSuccess ? BT_OK : BT_ERR_IO);
        bt_free(o);
        n++;
    }
    return n;
}

static void dir_poll(nccl_be_t *be, nccl_ep_t *e, nccl_dir_t *d)
{
    if (!d->comm)
        return;
    if (!d->ready && !d->failed) {
        ncclResult_t r;
        ncclCommGetAsyncError(d->comm, &r);
        if (r == ncclSuccess)
            d->ready = 1;
        else if (r != ncclInProgress)
            d->failed = 1;
    }
    dir_issue(d);
    dir_reap(be, d);
    if (d->failed && e->user && !e->error_sent) {
        e->error_sent = 1;
        be->up.ep_error(be->up.arg, e->user, BT_ERR_PEER);
    }
}

/* ---- upcalls from the inner UCX backend ---- */

static nccl_ep_t *ep_by_rx_key(nccl_be_t *be, uint64_t key)
{
    for (nccl_ep_t *e = be->eps; e; e = e->next)
        if (e->user && e->rx.comm && e->rx.key == key)
            return e;
    return NULL;
}

static void inner_on_ctrl(void *arg, uint64_t tag, const void *buf, size_t len)
{
    nccl_be_t *be = arg;
    if ((uint32_t)tag != NCCL_HDR_ID) {
        be->up.on_ctrl(be->up.arg, tag, buf, len);
        return;
    }
    kvx_rd_t rd;
    kvx_rd_init(&rd, buf, len);
    uint64_t key = kvx_rd_u64(&rd), data_tag = kvx_rd_u64(&rd), n = kvx_rd_u64(&rd);
    if (rd.err || n > NCCL_MAX_MSG)
        return;
    nccl_msg_t msg = {.ep = ep_by_rx_key(be, key), .len = n};
    be->up.on_data(be->up.arg, data_tag, n, &msg);
}

static void inner_on_data(void *arg, uint64_t tag, size_t len, void *msg)
{
    /* Data never travels over the inner backend; drop anything that claims to. */
    nccl_be_t *be = arg;
    kvx_ucx_ops.recv_data(be->ucx, msg, NULL, 0, NULL);
}

static void inner_op_done(void *arg, kvx_op_t *op, int status)
{
    nccl_be_t *be = arg;
    be->up.op_done(be->up.arg, op, status);
}

static void inner_ep_error(void *arg, void *ep_user, int status)
{
    nccl_be_t *be = arg;
    nccl_ep_t *e = ep_user;
    if (e->user && !e->error_sent) {
        e->error_sent = 1;
        be->up.ep_error(be->up.arg, e->user, status);
    }
}

/* ---- the ops ---- */

static int nccl_send_data(void *bep, void *ep, uint64_t tag, const void *src, size_t len,
                          kvx_op_t *op)
{
    nccl_be_t *be = bep;
    use_device(be);
    nccl_ep_t *e = ep;
    if (!e->tx.comm || e->tx.failed)
        return BT_ERR_PEER;
    kvx_buf_t h;
    kvx_buf_init(&h);
    kvx_buf_u64(&h, e->tx.key);
    kvx_buf_u64(&h, tag);
    kvx_buf_u64(&h, len);
    int st = h.err
                 ? h.err
                 : kvx_ucx_ops.send_ctrl(be->ucx, e->uep, kvx_tag_ctrl(NCCL_HDR_ID), h.data, h.len);
    kvx_buf_fini(&h);
    return st == BT_OK ? dir_queue(&e->tx, op, (void *)src, len) : st;
}

static int nccl_recv_data(void *bep, void *msg, void *dst, size_t len, kvx_op_t *op)
{
    nccl_be_t *be = bep;
    use_device(be);
    nccl_msg_t *m = msg;
    if (!m->ep || !m->ep->rx.comm)
        return dst ? BT_ERR_PEER : BT_OK; /* no communicator: no bytes are coming either */
    /* Even a dropped message must be received, or every later one would be misaligned. */
    return dir_queue(&m->ep->rx, op, dst ? dst : be->scratch, dst ? len : m->len);
}

static int nccl_progress(void *bep)
{
    nccl_be_t *be = bep;
    use_device(be);
    for (int i = 0; i < be->n_done; i++)
        be->up.op_done(be->up.arg, be->done[i], be->done_status[i]);
    be->n_done = 0;
    int n = kvx_ucx_ops.progress(be->ucx);
    for (nccl_ep_t *e = be->eps; e; e = e->next) {
        dir_poll(be, e, &e->tx);
        dir_poll(be, e, &e->rx);
    }
    return n;
}

static int nccl_hello_ext(void *bep, void *ep, kvx_buf_t *out)
{
    nccl_ep_t *e = ep;
    use_device(bep);
    ncclUniqueId i2a, a2i;
    if (ncclGetUniqueId(&i2a) != ncclSuccess || ncclGetUniqueId(&a2i) != ncclSuccess)
        return BT_ERR_IO;
    kvx_buf_bytes(out, i2a.internal, sizeof i2a.internal);
    kvx_buf_bytes(out, a2i.internal, sizeof a2i.internal);
    int st = dir_init(&e->tx, &i2a, 0);
    return st == BT_OK ? dir_init(&e->rx, &a2i, 1) : st;
}

static int nccl_accept_ext(void *bep, void *ep, const void *ext, size_t len)
{
    nccl_ep_t *e = ep;
    use_device(bep);
    ncclUniqueId i2a, a2i;
    if (len != sizeof i2a.internal + sizeof a2i.internal)
        return BT_ERR_FORMAT;
    memcpy(i2a.internal, ext, sizeof i2a.internal);
    memcpy(a2i.internal, (const char *)ext + sizeof i2a.internal, sizeof a2i.internal);
    int st = dir_init(&e->rx, &i2a, 1);
    return st == BT_OK ? dir_init(&e->tx, &a2i, 0) : st;
}

static int nccl_ep_create(void *bep, const void *addr, size_t len, void *ep_user, int initiator,
                          void **out)
{
    nccl_be_t *be = bep;
    nccl_ep_t *e = bt_calloc(1, sizeof *e);
    if (!e)
        return BT_ERR_NOMEM;
    e->be = be;
    e->user = ep_user;
    int st = kvx_ucx_ops.ep_create(be->ucx, addr, len, e, initiator, &e->uep);
    if (st != BT_OK) {
        bt_free(e);
        return st;
    }
    e->next = be->eps;
    be->eps = e;
    *out = e;
    return BT_OK;
}

static void nccl_ep_close(void *bep, void *ep, int force, int *cut)
{
    nccl_be_t *be = bep;
    use_device(be);
    nccl_ep_t *e = ep;
    int inner_cut;
    e->user = NULL;
    kvx_ucx_ops.ep_close(be->ucx, e->uep, force, &inner_cut);
    dir_fini(be, &e->tx, force);
    dir_fini(be, &e->rx, force);
    *cut = 1; /* the communicators are gone, and every operation on them has ended */
    for (nccl_ep_t **pp = &be->eps; *pp; pp = &(*pp)->next) {
        if (*pp == e) {
            *pp = e->next;
            break;
        }
    }
    bt_free(e);
}

static int nccl_address(void *bep, kvx_buf_t *out)
{
    return kvx_ucx_ops.address(((nccl_be_t *)bep)->ucx, out);
}

static int nccl_send_ctrl(void *bep, void *ep, uint64_t tag, const void *buf, size_t len)
{
    return kvx_ucx_ops.send_ctrl(((nccl_be_t *)bep)->ucx, ((nccl_ep_t *)ep)->uep, tag, buf, len);
}

static int nccl_fd(void *bep)
{
    return kvx_ucx_ops.fd(((nccl_be_t *)bep)->ucx);
}

static int nccl_arm(void *bep)
{
    nccl_be_t *be = bep;
    /* GPU completions do not wake the UCX fd: stay awake while anything is in flight. */
    for (nccl_ep_t *e = be->eps; e; e = e->next)
        if (e->tx.head || e->rx.head || (e->tx.comm && !e->tx.ready) ||
            (e->rx.comm && !e->rx.ready))
            return BT_AGAIN;
    return be->n_done ? BT_AGAIN : kvx_ucx_ops.arm(be->ucx);
}

static void nccl_destroy(void *bep)
{
    nccl_be_t *be = bep;
    use_device(be);
    while (be->eps) {
        int cut;
        nccl_ep_close(be, be->eps, 1, &cut);
    }
    if (be->ucx)
        kvx_ucx_ops.destroy(be->ucx);
    if (be->scratch)
        cudaFree(be->scratch);
    bt_free(be->done);
    bt_free(be->done_status);
    bt_free(be);
}

static int nccl_create(const bt_kvx_params_t *params, const kvx_upcalls_t *up, void **out)
{
    int n_dev = 0;
    if (cudaGetDeviceCount(&n_dev) != cudaSuccess || n_dev <= params->device) {
        bt_error("kvx nccl: no CUDA device %d (found %d)", params->device, n_dev);
        return BT_ERR_UNSUPPORTED;
    }
    nccl_be_t *be = bt_calloc(1, sizeof *be);
    if (!be)
        return BT_ERR_NOMEM;
    be->up = *up;
    be->device = params->device;
    int st = BT_ERR_IO;
    if (cudaSetDevice(params->device) != cudaSuccess ||
        cudaMalloc(&be->scratch, NCCL_MAX_MSG) != cudaSuccess) {
        bt_error("kvx nccl: cannot set up device %d", params->device);
        goto err;
    }
    kvx_upcalls_t inner = {.arg = be,
                           .on_ctrl = inner_on_ctrl,
                           .on_data = inner_on_data,
                           .op_done = inner_op_done,
                           .ep_error = inner_ep_error};
    /* The inner backend registers nothing: its messages are small and in host memory. */
    bt_kvx_params_t p = *params;
    p.base = NULL;
    p.size_bytes = 0;
    st = kvx_ucx_ops.create(&p, &inner, &be->ucx);
    if (st != BT_OK)
        goto err;
    *out = be;
    return BT_OK;

err:
    nccl_destroy(be);
    return st;
}

const kvx_backend_ops_t kvx_nccl_ops = {
    .name = "nccl",
    .create = nccl_create,
    .destroy = nccl_destroy,
    .address = nccl_address,
    .ep_create = nccl_ep_create,
    .ep_hello_ext = nccl_hello_ext,
    .ep_accept_ext = nccl_accept_ext,
    .ep_close = nccl_ep_close,
    .send_ctrl = nccl_send_ctrl,
    .send_data = nccl_send_data,
    .recv_data = nccl_recv_data,
    .max_msg_bytes = NCCL_MAX_MSG,
    .progress = nccl_progress,
    .fd = nccl_fd,
    .arm = nccl_arm,
};
