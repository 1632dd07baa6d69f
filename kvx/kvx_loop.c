/* SPDX-License-Identifier: MIT */
/*
 * kvx_loop.c - the loopback backend: contexts in one process exchange messages through
 * in-memory inboxes and data with memcpy, with the same semantics as a network backend.
 *
 * The one thing to know: it is built to exercise the core, not to be fast. Every operation
 * completes asynchronously (at the next progress call), data is copied only when the receiver
 * takes the message, and destroying a context behaves like a process dying: its queued data
 * vanishes, senders waiting on it see a connection reset, and peers notice on their next
 * progress. All contexts must be driven by one thread; the registry lock only keeps the
 * bookkeeping consistent.
 */
#include "kvx_impl.h"

#include <pthread.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "common/alloc.h"

enum { LOOP_CTRL = 1, LOOP_DATA, LOOP_DONE, LOOP_EP_ERROR };

typedef struct loop_msg {
    struct loop_msg *next;
    int kind;
    uint64_t tag;
    uint8_t *buf; /* CTRL: a copy */
    size_t len;
    const void *src; /* DATA: the sender's memory */
    uint64_t from;   /* DATA: the sending context, to complete its op */
    kvx_op_t *op;    /* DATA: the sender's op; DONE: the op that ended */
    int status;      /* DONE */
    void *ep_user;   /* EP_ERROR */
} loop_msg_t;

typedef struct loop_ep {
    struct loop_ep *next;
    uint64_t remote;
    void *user; /* NULL once closed */
    int error_sent;
} loop_ep_t;

typedef struct loop_be {
    struct loop_be *next; /* registry */
    uint64_t id;
    kvx_upcalls_t up;
    loop_msg_t *head;
    loop_msg_t *tail;
    loop_ep_t *eps;
    int efd;
    const char *base; /* the pool, which peers in this process read directly */
    size_t size_bytes;
    int pack; /* bt_kvx_params_t.pack: packing is only ever asked for */
} loop_be_t;

static pthread_mutex_t reg_lock = PTHREAD_MUTEX_INITIALIZER;
static loop_be_t *reg_head;
static uint64_t reg_next_id;

static loop_be_t *reg_find(uint64_t id)
{
    for (loop_be_t *b = reg_head; b; b = b->next)
        if (b->id == id)
            return b;
    return NULL;
}

static void inbox_push(loop_be_t *b, loop_msg_t *m)
{
    m->next = NULL;
    if (b->tail)
        b->tail->next = m;
    else
        b->head = m;
    b->tail = m;
    uint64_t one = 1;
    if (write(b->efd, &one, sizeof one) < 0)
        return; /* the counter is full: the reader is due anyway */
}

/* Queues a completion on context id (if it still exists). Call with the lock held. */
static void done_to(uint64_t id, kvx_op_t *op, int status)
{
    loop_be_t *b = reg_find(id);
    loop_msg_t *m = b && op ? bt_calloc(1, sizeof *m) : NULL;
    if (!m)
        return;
    m->kind = LOOP_DONE;
    m->op = op;
    m->status = status;
    inbox_push(b, m);
}

static void msg_free(loop_msg_t *m)
{
    bt_free(m->buf);
    bt_free(m);
}

/* Queues m (handed over) on the backend at the other end of e; BT_ERR_PEER, m freed, when that
 * backend is gone. */
static int deliver(const loop_ep_t *e, loop_msg_t *m)
{
    pthread_mutex_lock(&reg_lock);
    loop_be_t *dst = reg_find(e->remote);
    if (dst)
        inbox_push(dst, m);
    pthread_mutex_unlock(&reg_lock);
    if (!dst) {
        msg_free(m);
        return BT_ERR_PEER;
    }
    return BT_OK;
}

static int loop_send_ctrl(void *bep, void *ep, uint64_t tag, const void *buf, size_t len)
{
    loop_ep_t *e = ep;
    loop_msg_t *m = bt_calloc(1, sizeof *m);
    uint8_t *copy = bt_malloc(len ? len : 1);
    if (!m || !copy) {
        bt_free(m);
        bt_free(copy);
        return BT_ERR_NOMEM;
    }
    memcpy(copy, buf, len);
    *m = (loop_msg_t){.kind = LOOP_CTRL, .tag = tag, .buf = copy, .len = len};
    return deliver(e, m);
}

static int loop_send_data(void *bep, void *ep, uint64_t tag, const void *src, size_t len,
                          kvx_op_t *op)
{
    loop_be_t *be = bep;
    loop_ep_t *e = ep;
    loop_msg_t *m = bt_calloc(1, sizeof *m);
    if (!m)
        return BT_ERR_NOMEM;
    *m = (loop_msg_t){
        .kind = LOOP_DATA, .tag = tag, .src = src, .len = len, .from = be->id, .op = op};
    int st = deliver(e, m);
    return st == BT_OK ? BT_AGAIN : st; /* data completes when the receiver has taken it */
}

static int loop_recv_iov(loop_be_t *be, loop_msg_t *m, const kvx_iov_t *iov, int n, kvx_op_t *op)
{
    const uint8_t *src = m->src;
    for (int i = 0; i < n; i++) {
        if (iov[i].len)
            memcpy(iov[i].base, src, iov[i].len);
        src += iov[i].len;
    }
    pthread_mutex_lock(&reg_lock);
    done_to(m->from, m->op, BT_OK);
    done_to(be->id, op, BT_OK);
    pthread_mutex_unlock(&reg_lock);
    msg_free(m);
    return op ? BT_AGAIN : BT_OK;
}

static int loop_recv_data(void *bep, void *msg, void *dst, size_t len, kvx_op_t *op)
{
    kvx_iov_t one = {.base = dst, .len = dst ? len : 0};
    return loop_recv_iov(bep, msg, &one, 1, op);
}

static int loop_recv_data_iov(void *bep, void *msg, const kvx_iov_t *iov, int n, kvx_op_t *op)
{
    return loop_recv_iov(bep, msg, iov, n, op);
}

static int loop_ep_pack(void *bep, void *ep)
{
    return ((const loop_be_t *)bep)->pack > 0;
}

/* Reports each endpoint whose remote context is gone, once (a reset connection). */
static void eps_check(loop_be_t *be)
{
    for (loop_ep_t *e = be->eps; e; e = e->next) {
        if (!e->user || e->error_sent)
            continue;
        pthread_mutex_lock(&reg_lock);
        int gone = reg_find(e->remote) == NULL;
        pthread_mutex_unlock(&reg_lock);
        if (gone) {
            e->error_sent = 1;
            be->up.ep_error(be->up.arg, e->user, BT_ERR_PEER);
        }
    }
}

static int loop_progress(void *bep)
{
    loop_be_t *be = bep;
    pthread_mutex_lock(&reg_lock);
    loop_msg_t *m = be->head;
    be->head = be->tail = NULL;
    pthread_mutex_unlock(&reg_lock);
    int n = 0;
    while (m) {
        loop_msg_t *next = m->next;
        n++;
        switch (m->kind) {
        case LOOP_CTRL:
            be->up.on_ctrl(be->up.arg, m->tag, m->buf, m->len);
            msg_free(m);
            break;
        case LOOP_DATA: be->up.on_data(be->up.arg, m->tag, m->len, m); break;
        case LOOP_DONE:
            be->up.op_done(be->up.arg, m->op, m->status);
            msg_free(m);
            break;
        default: msg_free(m); break;
        }
        m = next;
    }
    eps_check(be);
    return n;
}

/* Takes back our queued data from context id's inbox, completing each op with status. */
static void purge_data_to(loop_be_t *be, uint64_t id, int status)
{
    loop_be_t *dst = reg_find(id);
    if (!dst)
        return;
    loop_msg_t **pp = &dst->head;
    dst->tail = NULL;
    while (*pp) {
        loop_msg_t *m = *pp;
        if (m->kind == LOOP_DATA && m->from == be->id) {
            *pp = m->next;
            done_to(be->id, m->op, status);
            msg_free(m);
        } else {
            dst->tail = m;
            pp = &m->next;
        }
    }
}

static void loop_ep_close(void *bep, void *ep, int force, int *cut)
{
    loop_ep_t *e = ep;
    e->user = NULL;
    *cut = force;
    if (force) {
        pthread_mutex_lock(&reg_lock);
        purge_data_to(bep, e->remote, BT_ERR_CANCELLED);
        pthread_mutex_unlock(&reg_lock);
    }
}

static int loop_ep_create(void *bep, const void *addr, size_t len, void *ep_user, int initiator,
                          void **out)
{
    loop_be_t *be = bep;
    kvx_rd_t rd;
    kvx_rd_init(&rd, addr, len);
    uint64_t id = kvx_rd_u64(&rd);
    pthread_mutex_lock(&reg_lock);
    int found = reg_find(id) != NULL;
    pthread_mutex_unlock(&reg_lock);
    if (rd.err || !found)
        return BT_ERR_PEER;
    loop_ep_t *e = bt_calloc(1, sizeof *e);
    if (!e)
        return BT_ERR_NOMEM;
    e->remote = id;
    e->user = ep_user;
    e->next = be->eps;
    be->eps = e;
    *out = e;
    return BT_OK;
}

/* In one process every pool is readable: a peer's is simply at its address. */
static size_t loop_ep_peer_readable(void *bep, void *ep)
{
    loop_ep_t *e = ep;
    pthread_mutex_lock(&reg_lock);
    loop_be_t *remote = reg_find(e->remote);
    size_t len = remote ? remote->size_bytes : 0;
    pthread_mutex_unlock(&reg_lock);
    return len;
}

static int loop_ep_peer_read(void *bep, void *ep, size_t off, void *dst, size_t len)
{
    loop_ep_t *e = ep;
    pthread_mutex_lock(&reg_lock);
    loop_be_t *remote = reg_find(e->remote);
    int ok = remote && off <= remote->size_bytes && len <= remote->size_bytes - off;
    if (ok)
        memcpy(dst, remote->base + off, len);
    pthread_mutex_unlock(&reg_lock);
    return ok ? BT_OK : BT_ERR_PEER;
}

static int loop_address(void *bep, kvx_buf_t *out)
{
    kvx_buf_u64(out, ((loop_be_t *)bep)->id);
    return out->err;
}

static int loop_fd(void *bep)
{
    return ((loop_be_t *)bep)->efd;
}

static int loop_arm(void *bep)
{
    loop_be_t *be = bep;
    uint64_t v;
    while (read(be->efd, &v, sizeof v) == (ssize_t)sizeof v)
        ;
    pthread_mutex_lock(&reg_lock);
    int busy = be->head != NULL;
    pthread_mutex_unlock(&reg_lock);
    return busy ? BT_AGAIN : BT_OK;
}

static int loop_create(const bt_kvx_params_t *params, const kvx_upcalls_t *up, void **out)
{
    loop_be_t *be = bt_calloc(1, sizeof *be);
    if (!be)
        return BT_ERR_NOMEM;
    be->up = *up;
    be->base = params->base;
    be->size_bytes = params->size_bytes;
    be->pack = params->pack;
    be->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (be->efd < 0) {
        bt_free(be);
        return BT_ERR_IO;
    }
    pthread_mutex_lock(&reg_lock);
    be->id = ++reg_next_id;
    be->next = reg_head;
    reg_head = be;
    pthread_mutex_unlock(&reg_lock);
    *out = be;
    return BT_OK;
}

/* Like a process exit: leave the registry, take our data back from every inbox, and reset
 * the senders whose data we had not taken yet. */
static void loop_destroy(void *bep)
{
    loop_be_t *be = bep;
    pthread_mutex_lock(&reg_lock);
    for (loop_be_t **pp = &reg_head; *pp; pp = &(*pp)->next) {
        if (*pp == be) {
            *pp = be->next;
            break;
        }
    }
    for (loop_be_t *b = reg_head; b; b = b->next)
        purge_data_to(be, b->id, BT_ERR_PEER);
    while (be->head) {
        loop_msg_t *m = be->head;
        be->head = m->next;
        if (m->kind == LOOP_DATA)
            done_to(m->from, m->op, BT_ERR_PEER);
        msg_free(m);
    }
    pthread_mutex_unlock(&reg_lock);
    while (be->eps) {
        loop_ep_t *e = be->eps;
        be->eps = e->next;
        bt_free(e);
    }
    close(be->efd);
    bt_free(be);
}

const kvx_backend_ops_t kvx_loop_ops = {
    .name = "loopback",
    .create = loop_create,
    .destroy = loop_destroy,
    .address = loop_address,
    .ep_create = loop_ep_create,
    .ep_close = loop_ep_close,
    .send_ctrl = loop_send_ctrl,
    .send_data = loop_send_data,
    .recv_data = loop_recv_data,
    .recv_data_iov = loop_recv_data_iov,
    .ep_pack = loop_ep_pack,
    .ep_peer_readable = loop_ep_peer_readable,
    .ep_peer_read = loop_ep_peer_read,
    .progress = loop_progress,
    .fd = loop_fd,
    .arm = loop_arm,
};
