/* SPDX-License-Identifier: MIT */
/*
 * kvx_stream.c - data messages over a kernel TCP connection per peer (see kvx_stream.h).
 *
 * Why not UCX's own TCP transport: UCX 1.13 moves a large tagged message over TCP as a
 * rendezvous (request, reply, then the bytes in segments through its own buffers), one per
 * message, and it sends a gathered buffer slower than a contiguous one. A plain socket needs
 * neither: the sender's bytes go from the pool into the kernel in one gathered system call and
 * come out into the receiver's blocks in one scattered call, and the receiver places them by
 * the tag as it does every data message. Measured on TCP loopback (docs/PERFORMANCE.md, "KV
 * transfer"): faster than ucx_perftest's tag and active-message bandwidth over UCX TCP.
 *
 * Every descriptor is level-triggered in one epoll set of this module's own, which also holds
 * the owner's other descriptor and is what the owner sleeps on (one level of nesting fewer:
 * each arriving segment's wake-up walks every set above the socket); progress reads only the
 * connections that set reports. Callbacks can end a
 * stream (the owner closes its endpoint): a closed stream is only marked and is freed at the
 * end of progress, and every loop checks the stream's state after a callback.
 */
#include "kvx_stream.h"

#include <arpa/inet.h>
#include <errno.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "common/alloc.h"
#include "common/log.h"

#define STREAM_MAGIC 0x5358564bu /* "KVXS" */
#define STREAM_VERSION 1u
#define STREAM_HDR 16   /* u64 tag, u64 length */
#define STREAM_HELLO 24 /* u32 magic, u32 version, u64 acceptor's key, u64 connector's key */
#define STREAM_ACK 8    /* u32 magic, u32 status (0) */
#define STREAM_IOV 256  /* pieces per system call */
/* Socket buffers: a few MiB in flight keep the sender copying while the receiver copies out
 * (measured on loopback: the default autotuned buffers ran at about two thirds of this). */
#define STREAM_SOCKBUF (4 << 20)
#define STREAM_CONNECT_MS 3000 /* per address */
#define STREAM_PAIR_MS 10000   /* an accepted connection waits this long for its endpoint */
#define STREAM_READ_BUDGET ((size_t)32 << 20) /* bytes read per connection per progress */
#define STREAM_ACCEPT_PAUSE_MS 100            /* after accept fails for want of descriptors */
#define STREAM_MSG_MAX ((uint64_t)1 << 40)

enum {
    ST_CONNECTING = 1, /* initiator: connect() under way */
    ST_HELLO_OUT,      /* initiator: hello sent, waiting for the answer */
    ST_EXPECT,         /* acceptor's endpoint: waiting for the peer's connection */
    ST_INBOUND,        /* accepted, reading the hello */
    ST_HELD,           /* accepted with a good hello, waiting for its endpoint */
    ST_READY,
    ST_FAILED, /* never paired (or broken): data goes over UCX */
    ST_CLOSED, /* the owner let go; freed at the end of progress */
};

/* One outgoing message. */
typedef struct sout {
    struct sout *next;
    kvx_op_t *op;
    uint8_t hdr[STREAM_HDR];
    const kvx_iov_t *iov;
    int n;
    kvx_iov_t one;
    size_t total; /* header + body */
    size_t done;
} sout_t;

struct kvx_stream {
    kvx_streams_t *ss;
    kvx_stream_t *next;
    int fd;
    int state;
    int broken; /* a downcall saw the connection fail; progress reports it */
    void *user;
    uint64_t key; /* the peer's key */
    int64_t deadline_ms;
    kvx_stream_addr_t peer; /* initiator: where to connect */
    int next_addr;          /* initiator: next address to try; -1: loopback */
    uint8_t hs[STREAM_HELLO];
    size_t hs_got;
    int want_out; /* EPOLLOUT is in the set */
    sout_t *out_head;
    sout_t *out_tail;
    uint8_t hdr[STREAM_HDR]; /* the next message's header (read ahead with a body) */
    size_t hdr_got;
    int in_body;
    int claimed;
    size_t in_left;
    const kvx_iov_t *in_iov; /* NULL: dropping */
    kvx_iov_t in_one;
    int in_n;
    int in_i; /* cursor: piece, offset */
    size_t in_off;
    kvx_op_t *in_op;
};

struct kvx_streams {
    kvx_stream_cbs_t cbs;
    int pfd; /* own epoll set */
    int lfd;
    int family;
    uint16_t port;
    uint64_t key;
    int64_t accept_paused_until; /* 0: the listener is watched */
    kvx_stream_addr_t self;
    kvx_stream_t *list;
    uint8_t drop[64 << 10];
};

static void put_u32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void put_u64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static size_t iov_bytes(const kvx_iov_t *iov, int n)
{
    size_t sum = 0;
    for (int i = 0; iov && i < n; i++)
        sum += iov[i].len;
    return sum;
}

static int again(void)
{
    return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR;
}

static void ep_set(kvx_stream_t *s, int op, uint32_t events)
{
    struct epoll_event ev = {.events = events, .data.ptr = s};
    epoll_ctl(s->ss->pfd, op, s->fd, &ev);
}

static void want_out(kvx_stream_t *s, int on)
{
    if (s->want_out == on || s->fd < 0)
        return;
    s->want_out = on;
    ep_set(s, EPOLL_CTL_MOD, EPOLLIN | (on ? EPOLLOUT : 0));
}

static void fd_close(kvx_stream_t *s)
{
    if (s->fd >= 0) {
        epoll_ctl(s->ss->pfd, EPOLL_CTL_DEL, s->fd, NULL);
        close(s->fd);
    }
    s->fd = -1;
    s->want_out = 0;
}

static void sock_tune(int fd)
{
    int one = 1, buf = STREAM_SOCKBUF;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &buf, sizeof buf);
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &buf, sizeof buf);
}

static kvx_stream_t *stream_new(kvx_streams_t *ss, int state, void *user)
{
    kvx_stream_t *s = bt_calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->ss = ss;
    s->fd = -1;
    s->state = state;
    s->user = user;
    s->next = ss->list;
    ss->list = s;
    return s;
}

/* Ends every operation of s with status: the receive under way and the queued sends. */
static void ops_end(kvx_stream_t *s, int status)
{
    const kvx_stream_cbs_t *cb = &s->ss->cbs;
    kvx_op_t *in = s->in_body ? s->in_op : NULL;
    sout_t *m = s->out_head;
    s->in_op = NULL;
    s->in_body = 0;
    s->out_head = s->out_tail = NULL;
    if (in)
        cb->op_end(cb->arg, in, status);
    while (m) {
        sout_t *next = m->next;
        cb->op_end(cb->arg, m->op, status);
        bt_free(m);
        m = next;
    }
}

/* A paired connection failed: its operations end, then the owner hears of it. */
static void stream_break(kvx_stream_t *s, const char *why)
{
    if (s->state != ST_READY)
        return;
    bt_warn("kvx stream: connection to a peer lost (%s)", why);
    s->state = ST_FAILED;
    fd_close(s);
    ops_end(s, BT_ERR_PEER);
    if (s->state == ST_FAILED && s->user)
        s->ss->cbs.failed(s->ss->cbs.arg, s->user, BT_ERR_PEER);
}

/* ---------------------------------------------------------------- pairing */

/* Initiator: closes the current attempt and connects to the next address, or gives up. */
static void connect_next(kvx_stream_t *s)
{
    kvx_streams_t *ss = s->ss;
    fd_close(s);
    while (s->next_addr < s->peer.n) {
        int i = s->next_addr++;
        struct sockaddr_storage sa = {0};
        socklen_t sl;
        int fam = i < 0 ? 4 : s->peer.addr[i].family;
        if (ss->family == AF_INET6) {
            struct sockaddr_in6 *a = (struct sockaddr_in6 *)&sa;
            a->sin6_family = AF_INET6;
            a->sin6_port = htons(s->peer.port);
            if (i < 0)
                a->sin6_addr = in6addr_loopback;
            else if (fam == 4) {
                a->sin6_addr.s6_addr[10] = a->sin6_addr.s6_addr[11] = 0xff;
                memcpy(&a->sin6_addr.s6_addr[12], s->peer.addr[i].bytes, 4);
            } else {
                memcpy(&a->sin6_addr, s->peer.addr[i].bytes, 16);
            }
            sl = sizeof *a;
        } else {
            if (fam != 4)
                continue;
            struct sockaddr_in *a = (struct sockaddr_in *)&sa;
            a->sin_family = AF_INET;
            a->sin_port = htons(s->peer.port);
            if (i < 0)
                a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
            else
                memcpy(&a->sin_addr, s->peer.addr[i].bytes, 4);
            sl = sizeof *a;
        }
        s->fd = socket(ss->family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (s->fd < 0)
            break;
        sock_tune(s->fd);
        if (connect(s->fd, (struct sockaddr *)&sa, sl) < 0 && errno != EINPROGRESS) {
            close(s->fd);
            s->fd = -1;
            continue;
        }
        s->state = ST_CONNECTING;
        s->hs_got = 0;
        s->deadline_ms = kvx_now_ms() + STREAM_CONNECT_MS;
        ep_set(s, EPOLL_CTL_ADD, EPOLLIN | EPOLLOUT);
        s->want_out = 1;
        return;
    }
    s->state = ST_FAILED;
    bt_info("kvx stream: no direct TCP path to a peer; its data goes through UCX");
}

/* Initiator: connected; sends the hello. */
static void connected(kvx_stream_t *s)
{
    int err = 0;
    socklen_t l = sizeof err;
    uint8_t h[STREAM_HELLO];
    put_u32(h, STREAM_MAGIC);
    put_u32(h + 4, STREAM_VERSION);
    put_u64(h + 8, s->peer.key);
    put_u64(h + 16, s->ss->key);
    if (getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &l) < 0 || err ||
        send(s->fd, h, sizeof h, MSG_DONTWAIT | MSG_NOSIGNAL) != (ssize_t)sizeof h) {
        connect_next(s);
        return;
    }
    s->state = ST_HELLO_OUT;
    want_out(s, 0);
}

/* Reads the handshake bytes up to want; 1 when all are in, 0 not yet, -1 failed. */
static int hs_read(kvx_stream_t *s, size_t want)
{
    while (s->hs_got < want) {
        ssize_t n = recv(s->fd, s->hs + s->hs_got, want - s->hs_got, MSG_DONTWAIT);
        if (n > 0)
            s->hs_got += (size_t)n;
        else if (n < 0 && again())
            return 0;
        else
            return -1;
    }
    return 1;
}

/* Logs a connection's pairing with the address at the other end. */
static void log_ready(const kvx_stream_t *s)
{
    struct sockaddr_storage sa;
    socklen_t sl = sizeof sa;
    char host[INET6_ADDRSTRLEN] = "?";
    int port = 0;
    if (getpeername(s->fd, (struct sockaddr *)&sa, &sl) == 0) {
        if (sa.ss_family == AF_INET6) {
            const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)&sa;
            inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof host);
            port = ntohs(a->sin6_port);
        } else if (sa.ss_family == AF_INET) {
            const struct sockaddr_in *a = (const struct sockaddr_in *)&sa;
            inet_ntop(AF_INET, &a->sin_addr, host, sizeof host);
            port = ntohs(a->sin_port);
        }
    }
    bt_info("kvx stream: TCP data connection with [%s]:%d up", host, port);
}

/* Initiator: the acceptor's answer. */
static void hello_answer(kvx_stream_t *s)
{
    int r = hs_read(s, STREAM_ACK);
    if (r == 0)
        return;
    kvx_rd_t rd;
    kvx_rd_init(&rd, s->hs, STREAM_ACK);
    uint32_t magic = kvx_rd_u32(&rd), status = kvx_rd_u32(&rd);
    if (r < 0 || magic != STREAM_MAGIC || status != 0) {
        connect_next(s); /* the wrong process, or it refused us */
        return;
    }
    s->state = ST_READY;
    log_ready(s);
}

/* Acceptor: pairs the held connection in with the endpoint s, which takes its descriptor. */
static void pair(kvx_stream_t *s, kvx_stream_t *in)
{
    uint8_t ack[STREAM_ACK];
    put_u32(ack, STREAM_MAGIC);
    put_u32(ack + 4, 0);
    s->fd = in->fd;
    in->fd = -1;
    in->state = ST_CLOSED;
    ep_set(s, EPOLL_CTL_MOD, EPOLLIN);
    s->state = send(s->fd, ack, sizeof ack, MSG_DONTWAIT | MSG_NOSIGNAL) == (ssize_t)sizeof ack
                   ? ST_READY
                   : ST_FAILED;
    if (s->state == ST_FAILED)
        fd_close(s);
    else
        log_ready(s);
}

/* Acceptor: the hello of an accepted connection. */
static void hello_in(kvx_stream_t *in)
{
    kvx_streams_t *ss = in->ss;
    int r = hs_read(in, STREAM_HELLO);
    if (r == 0)
        return;
    kvx_rd_t rd;
    kvx_rd_init(&rd, in->hs, STREAM_HELLO);
    uint32_t magic = kvx_rd_u32(&rd), version = kvx_rd_u32(&rd);
    uint64_t ours = kvx_rd_u64(&rd);
    in->key = kvx_rd_u64(&rd);
    if (r < 0 || magic != STREAM_MAGIC || version != STREAM_VERSION || ours != ss->key) {
        fd_close(in);
        in->state = ST_CLOSED;
        return;
    }
    for (kvx_stream_t *s = ss->list; s; s = s->next) {
        if (s->state == ST_EXPECT && s->key == in->key) {
            pair(s, in);
            return;
        }
    }
    in->state = ST_HELD;
}

static void accept_all(kvx_streams_t *ss)
{
    for (;;) {
        int fd = accept4(ss->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0 && (again() || errno == ECONNABORTED))
            return;
        if (fd < 0) {
            /* Out of descriptors (or memory): the connection stays queued and the listener
             * readable; stop watching it for a while rather than spin on it. */
            bt_warn("kvx stream: cannot accept a data connection (%s)", strerror(errno));
            epoll_ctl(ss->pfd, EPOLL_CTL_DEL, ss->lfd, NULL);
            ss->accept_paused_until = kvx_now_ms() + STREAM_ACCEPT_PAUSE_MS;
            return;
        }
        kvx_stream_t *s = stream_new(ss, ST_INBOUND, NULL);
        if (!s) {
            close(fd);
            continue;
        }
        sock_tune(fd);
        s->fd = fd;
        s->deadline_ms = kvx_now_ms() + STREAM_PAIR_MS;
        ep_set(s, EPOLL_CTL_ADD, EPOLLIN);
    }
}

kvx_stream_t *kvx_stream_open(kvx_streams_t *ss, const kvx_stream_addr_t *peer, int same_host,
                              void *user)
{
    kvx_stream_t *s = stream_new(ss, ST_CONNECTING, user);
    if (!s)
        return NULL;
    s->peer = *peer;
    s->key = peer->key;
    s->next_addr = same_host ? -1 : 0;
    connect_next(s);
    return s;
}

kvx_stream_t *kvx_stream_expect(kvx_streams_t *ss, uint64_t key, void *user)
{
    kvx_stream_t *s = stream_new(ss, ST_EXPECT, user);
    if (!s)
        return NULL;
    s->key = key;
    for (kvx_stream_t *in = ss->list; in; in = in->next) {
        if (in->state == ST_HELD && in->key == key) {
            pair(s, in);
            break;
        }
    }
    return s;
}

int kvx_stream_ready(const kvx_stream_t *s)
{
    return s && s->state == ST_READY && !s->broken;
}

/* ---------------------------------------------------------------- sending */

/* The unsent part of m as at most max pieces; returns how many. */
static int sout_fill(const sout_t *m, struct iovec *v, int max)
{
    int k = 0;
    size_t skip = m->done;
    if (skip < STREAM_HDR)
        v[k++] = (struct iovec){(void *)(m->hdr + skip), STREAM_HDR - skip};
    skip = skip > STREAM_HDR ? skip - STREAM_HDR : 0;
    for (int i = 0; i < m->n && k < max; i++) {
        if (skip >= m->iov[i].len) {
            skip -= m->iov[i].len;
            continue;
        }
        v[k++] = (struct iovec){(char *)m->iov[i].base + skip, m->iov[i].len - skip};
        skip = 0;
    }
    return k;
}

static ssize_t send_v(int fd, struct iovec *v, int k)
{
    struct msghdr mh = {.msg_iov = v, .msg_iovlen = (size_t)k};
    return sendmsg(fd, &mh, MSG_DONTWAIT | MSG_NOSIGNAL);
}

int kvx_stream_send(kvx_stream_t *s, uint64_t tag, const kvx_iov_t *iov, int n, size_t len,
                    kvx_op_t *op)
{
    if (iov_bytes(iov, n) != len)
        return BT_ERR_INVAL;
    if (!kvx_stream_ready(s))
        return BT_ERR_PEER;
    sout_t *m = bt_malloc(sizeof *m);
    if (!m)
        return BT_ERR_NOMEM;
    *m = (sout_t){.op = op, .iov = iov, .n = n, .total = STREAM_HDR + len};
    if (n == 1) { /* the caller's single piece may live on its stack */
        m->one = iov[0];
        m->iov = &m->one;
    }
    put_u64(m->hdr, tag);
    put_u64(m->hdr + 8, len);
    if (!s->out_head) {
        struct iovec v[STREAM_IOV];
        ssize_t w = send_v(s->fd, v, sout_fill(m, v, STREAM_IOV));
        if (w < 0 && !again()) {
            bt_free(m);
            s->broken = 1;
            return BT_ERR_PEER;
        }
        m->done = w > 0 ? (size_t)w : 0;
        if (m->done == m->total) {
            bt_free(m);
            return BT_OK;
        }
    }
    if (s->out_tail)
        s->out_tail->next = m;
    else
        s->out_head = m;
    s->out_tail = m;
    want_out(s, 1);
    return BT_AGAIN;
}

/* Writes queued messages until the socket is full; completions go out after the bookkeeping. */
static void flush(kvx_stream_t *s)
{
    const kvx_stream_cbs_t *cb = &s->ss->cbs;
    sout_t *done = NULL, **tail = &done;
    while (s->out_head) {
        struct iovec v[STREAM_IOV];
        int k = 0;
        for (sout_t *m = s->out_head; m && k < STREAM_IOV; m = m->next)
            k += sout_fill(m, v + k, STREAM_IOV - k);
        ssize_t w = send_v(s->fd, v, k);
        if (w < 0) {
            if (!again())
                s->broken = 1;
            break;
        }
        size_t left = (size_t)w;
        while (left && s->out_head) {
            sout_t *m = s->out_head;
            size_t rest = m->total - m->done;
            if (left < rest) {
                m->done += left;
                break;
            }
            left -= rest;
            s->out_head = m->next;
            if (!s->out_head)
                s->out_tail = NULL;
            m->next = NULL;
            *tail = m;
            tail = &m->next;
        }
    }
    want_out(s, s->out_head != NULL);
    while (done) {
        sout_t *m = done;
        done = m->next;
        cb->op_end(cb->arg, m->op, BT_OK);
        bt_free(m);
    }
}

/* ---------------------------------------------------------------- receiving */

int kvx_stream_recv(kvx_stream_t *s, const kvx_iov_t *iov, int n, kvx_op_t *op)
{
    s->claimed = 1;
    if (iov && iov_bytes(iov, n) != s->in_left) {
        iov = NULL; /* not what the message holds: drop it, and say so */
        op = NULL;
        s->in_iov = NULL;
        s->in_op = NULL;
        return BT_ERR_FORMAT;
    }
    if (iov && n == 1) {
        s->in_one = iov[0];
        iov = &s->in_one;
    }
    s->in_iov = iov;
    s->in_n = iov ? n : 0;
    s->in_i = 0;
    s->in_off = 0;
    /* An empty message is received already: the caller has its op back, nothing ends later. */
    s->in_op = s->in_left ? op : NULL;
    return s->in_left ? BT_AGAIN : BT_OK;
}

/* The body's next pieces from the cursor, then, if they reach its end, room for the next
 * header (a header read into the middle of a body would be data lost from it). */
static int body_fill(kvx_stream_t *s, struct iovec *v)
{
    int k = 0;
    size_t n = 0;
    if (!s->in_iov) {
        n = s->in_left < sizeof s->ss->drop ? s->in_left : sizeof s->ss->drop;
        v[k++] = (struct iovec){s->ss->drop, n};
    } else {
        size_t off = s->in_off;
        for (int i = s->in_i; i < s->in_n && k < STREAM_IOV; i++, off = 0) {
            v[k++] = (struct iovec){(char *)s->in_iov[i].base + off, s->in_iov[i].len - off};
            n += s->in_iov[i].len - off;
        }
    }
    if (n == s->in_left)
        v[k++] = (struct iovec){s->hdr, STREAM_HDR};
    return k;
}

static void body_advance(kvx_stream_t *s, size_t n)
{
    s->in_left -= n;
    while (s->in_iov && n) {
        size_t rest = s->in_iov[s->in_i].len - s->in_off;
        if (n < rest) {
            s->in_off += n;
            return;
        }
        n -= rest;
        s->in_i++;
        s->in_off = 0;
    }
}

/* A message's body is all in: its receive ends. */
static void body_done(kvx_stream_t *s)
{
    kvx_op_t *op = s->in_op;
    s->in_body = 0;
    s->in_op = NULL;
    if (op)
        s->ss->cbs.op_end(s->ss->cbs.arg, op, BT_OK);
}

/* A header is in: the owner decides where the body goes. 0 to go on, -1 to stop. */
static int header_in(kvx_stream_t *s)
{
    kvx_rd_t rd;
    kvx_rd_init(&rd, s->hdr, STREAM_HDR);
    uint64_t tag = kvx_rd_u64(&rd), len = kvx_rd_u64(&rd);
    s->hdr_got = 0;
    if (len > STREAM_MSG_MAX) {
        stream_break(s, "malformed message header");
        return -1;
    }
    s->in_body = 1;
    s->claimed = 0;
    s->in_left = (size_t)len;
    s->in_iov = NULL;
    s->in_op = NULL;
    s->ss->cbs.on_data(s->ss->cbs.arg, s, tag, (size_t)len);
    if (s->state != ST_READY)
        return -1;
    if (!s->claimed)
        s->in_iov = NULL;
    if (!s->in_left)
        body_done(s);
    return s->state == ST_READY ? 0 : -1;
}

static void read_in(kvx_stream_t *s)
{
    size_t budget = STREAM_READ_BUDGET;
    while (s->state == ST_READY && budget) {
        if (!s->in_body && s->hdr_got == STREAM_HDR) {
            if (header_in(s) < 0)
                return;
            continue;
        }
        struct iovec v[STREAM_IOV + 1];
        int k = 0;
        if (s->in_body)
            k = body_fill(s, v);
        else
            v[k++] = (struct iovec){s->hdr + s->hdr_got, STREAM_HDR - s->hdr_got};
        ssize_t n = readv(s->fd, v, k);
        if (n < 0 && again())
            return;
        if (n <= 0) {
            stream_break(s, n == 0 ? "closed by the peer" : strerror(errno));
            return;
        }
        budget -= (size_t)n < budget ? (size_t)n : budget;
        if (!s->in_body) {
            s->hdr_got += (size_t)n;
            continue;
        }
        size_t body = (size_t)n < s->in_left ? (size_t)n : s->in_left;
        body_advance(s, body);
        s->hdr_got = (size_t)n - body;
        if (!s->in_left)
            body_done(s);
    }
}

/* ---------------------------------------------------------------- progress */

static void on_event(kvx_stream_t *s, uint32_t events)
{
    switch (s->state) {
    case ST_CONNECTING:
        if (events & (EPOLLOUT | EPOLLERR | EPOLLHUP))
            connected(s);
        break;
    case ST_HELLO_OUT: hello_answer(s); break;
    case ST_INBOUND: hello_in(s); break;
    case ST_HELD: /* anything before the answer is a broken peer */
        fd_close(s);
        s->state = ST_CLOSED;
        break;
    case ST_READY:
        if (events & EPOLLOUT)
            flush(s);
        if (s->state == ST_READY && (events & (EPOLLIN | EPOLLERR | EPOLLHUP)))
            read_in(s);
        break;
    default: break;
    }
}

int kvx_streams_progress(kvx_streams_t *ss)
{
    struct epoll_event evs[32];
    int n = epoll_wait(ss->pfd, evs, 32, 0), work = n > 0 ? n : 0;
    for (int i = 0; i < n; i++) {
        if (!evs[i].data.ptr)
            accept_all(ss);
        else if (evs[i].data.ptr != ss) /* the owner's descriptor: its own progress reads it */
            on_event(evs[i].data.ptr, evs[i].events);
    }
    int64_t now = -1;
    if (ss->accept_paused_until && (now = kvx_now_ms()) >= ss->accept_paused_until) {
        struct epoll_event lev = {.events = EPOLLIN, .data.ptr = NULL};
        ss->accept_paused_until = 0;
        epoll_ctl(ss->pfd, EPOLL_CTL_ADD, ss->lfd, &lev);
    }
    for (kvx_stream_t *s = ss->list; s; s = s->next) {
        if (s->state == ST_READY && s->broken)
            stream_break(s, "send failed");
        else if (s->state == ST_READY && !s->in_body && s->hdr_got == STREAM_HDR)
            read_in(s);
        if (s->state != ST_CONNECTING && s->state != ST_HELLO_OUT && s->state != ST_INBOUND &&
            s->state != ST_HELD)
            continue;
        if (now < 0)
            now = kvx_now_ms();
        if (now <= s->deadline_ms)
            continue;
        if (s->state == ST_CONNECTING || s->state == ST_HELLO_OUT) {
            connect_next(s);
        } else {
            fd_close(s);
            s->state = ST_CLOSED;
        }
    }
    for (kvx_stream_t **pp = &ss->list; *pp;) {
        kvx_stream_t *s = *pp;
        if (s->state != ST_CLOSED) {
            pp = &s->next;
            continue;
        }
        *pp = s->next;
        bt_free(s);
    }
    return work;
}

int kvx_streams_pending(const kvx_streams_t *ss)
{
    for (const kvx_stream_t *s = ss->list; s; s = s->next)
        if (s->state == ST_CLOSED ||
            (s->state == ST_READY && (s->broken || (!s->in_body && s->hdr_got == STREAM_HDR))))
            return 1;
    return 0;
}

void kvx_stream_close(kvx_stream_t *s)
{
    if (!s)
        return;
    s->user = NULL;
    fd_close(s);
    s->state = ST_CLOSED;
    ops_end(s, BT_ERR_PEER);
}

/* ---------------------------------------------------------------- listener */

/* This host's addresses a peer elsewhere may reach us at (up, not loopback, not link-local). */
static void self_addrs(kvx_streams_t *ss)
{
    struct ifaddrs *ifs = NULL;
    if (getifaddrs(&ifs) < 0)
        return;
    for (struct ifaddrs *i = ifs; i && ss->self.n < KVX_STREAM_ADDRS_MAX; i = i->ifa_next) {
        if (!i->ifa_addr || !(i->ifa_flags & IFF_UP) || (i->ifa_flags & IFF_LOOPBACK))
            continue;
        if (i->ifa_addr->sa_family == AF_INET) {
            const struct sockaddr_in *a = (const struct sockaddr_in *)i->ifa_addr;
            ss->self.addr[ss->self.n].family = 4;
            memcpy(ss->self.addr[ss->self.n++].bytes, &a->sin_addr, 4);
        } else if (i->ifa_addr->sa_family == AF_INET6 && ss->family == AF_INET6) {
            const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)i->ifa_addr;
            if (IN6_IS_ADDR_LINKLOCAL(&a->sin6_addr))
                continue;
            ss->self.addr[ss->self.n].family = 6;
            memcpy(ss->self.addr[ss->self.n++].bytes, &a->sin6_addr, 16);
        }
    }
    freeifaddrs(ifs);
}

static int listen_on(kvx_streams_t *ss, int family)
{
    int fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_storage sa = {0};
    socklen_t sl;
    if (family == AF_INET6) {
        int off = 0;
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof off);
        ((struct sockaddr_in6 *)&sa)->sin6_family = AF_INET6;
        ((struct sockaddr_in6 *)&sa)->sin6_addr = in6addr_any;
        sl = sizeof(struct sockaddr_in6);
    } else {
        ((struct sockaddr_in *)&sa)->sin_family = AF_INET;
        ((struct sockaddr_in *)&sa)->sin_addr.s_addr = htonl(INADDR_ANY);
        sl = sizeof(struct sockaddr_in);
    }
    sock_tune(fd); /* accepted connections inherit the buffers before their handshake */
    if (bind(fd, (struct sockaddr *)&sa, sl) < 0 || listen(fd, 64) < 0 ||
        getsockname(fd, (struct sockaddr *)&sa, &sl) < 0) {
        close(fd);
        return -1;
    }
    ss->port = ntohs(family == AF_INET6 ? ((struct sockaddr_in6 *)&sa)->sin6_port
                                        : ((struct sockaddr_in *)&sa)->sin_port);
    ss->family = family;
    return fd;
}

int kvx_streams_fd(const kvx_streams_t *ss)
{
    return ss->pfd;
}

int kvx_streams_create(const kvx_stream_cbs_t *cbs, int owner_fd, kvx_streams_t **out)
{
    kvx_streams_t *ss = bt_calloc(1, sizeof *ss);
    if (!ss)
        return BT_ERR_NOMEM;
    ss->cbs = *cbs;
    ss->lfd = listen_on(ss, AF_INET6);
    if (ss->lfd < 0)
        ss->lfd = listen_on(ss, AF_INET);
    ss->pfd = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event lev = {.events = EPOLLIN, .data.ptr = NULL};
    struct epoll_event oev = {.events = EPOLLIN, .data.ptr = ss};
    if (ss->lfd < 0 || ss->pfd < 0 || epoll_ctl(ss->pfd, EPOLL_CTL_ADD, ss->lfd, &lev) < 0 ||
        epoll_ctl(ss->pfd, EPOLL_CTL_ADD, owner_fd, &oev) < 0) {
        bt_warn("kvx stream: cannot listen for TCP data connections (%s)", strerror(errno));
        if (ss->lfd >= 0)
            close(ss->lfd);
        if (ss->pfd >= 0)
            close(ss->pfd);
        bt_free(ss);
        return BT_ERR_IO;
    }
    if (getrandom(&ss->key, sizeof ss->key, 0) != (ssize_t)sizeof ss->key)
        ss->key = (uint64_t)kvx_now_ms() * 0x9e3779b97f4a7c15ull ^ (uint64_t)getpid();
    ss->key |= 1; /* 0 never names a listener */
    self_addrs(ss);
    ss->self.port = ss->port;
    ss->self.key = ss->key;
    *out = ss;
    return BT_OK;
}

void kvx_streams_destroy(kvx_streams_t *ss)
{
    if (!ss)
        return;
    while (ss->list) {
        kvx_stream_t *s = ss->list;
        ss->list = s->next;
        if (s->fd >= 0)
            close(s->fd);
        while (s->out_head) {
            sout_t *m = s->out_head;
            s->out_head = m->next;
            bt_free(m);
        }
        bt_free(s);
    }
    close(ss->lfd);
    close(ss->pfd);
    bt_free(ss);
}

void kvx_streams_address(const kvx_streams_t *ss, kvx_buf_t *out)
{
    kvx_buf_u8(out, 1); /* version of this part */
    kvx_buf_u32(out, ss->port);
    kvx_buf_u64(out, ss->key);
    kvx_buf_u8(out, (uint8_t)ss->self.n);
    for (int i = 0; i < ss->self.n; i++) {
        kvx_buf_u8(out, ss->self.addr[i].family);
        kvx_buf_bytes(out, ss->self.addr[i].bytes, 16);
    }
}

int kvx_stream_addr_read(kvx_rd_t *rd, kvx_stream_addr_t *a)
{
    memset(a, 0, sizeof *a);
    uint8_t version = kvx_rd_u8(rd);
    uint32_t port = kvx_rd_u32(rd);
    a->key = kvx_rd_u64(rd);
    int n = kvx_rd_u8(rd);
    if (rd->err || version != 1 || !port || port > 65535 || !a->key || n > KVX_STREAM_ADDRS_MAX)
        return BT_ERR_FORMAT;
    a->port = (uint16_t)port;
    for (int i = 0; i < n; i++) {
        a->addr[i].family = kvx_rd_u8(rd);
        const void *b = kvx_rd_bytes(rd, 16);
        if (!b || (a->addr[i].family != 4 && a->addr[i].family != 6))
            return BT_ERR_FORMAT;
        memcpy(a->addr[i].bytes, b, 16);
    }
    a->n = n;
    return rd->err ? BT_ERR_FORMAT : BT_OK;
}
