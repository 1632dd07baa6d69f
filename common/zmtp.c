/* SPDX-License-Identifier: MIT */
/*
 * zmtp.c - a ZeroMQ ROUTER socket served on the caller's thread (see zmtp.h).
 *
 * Each connection has an input buffer that whole messages are parsed from in place (the
 * caller gets pointers into it) and an output buffer that sends append to. A connection goes
 * through GREETING (64 bytes each way), READY (the NULL mechanism's one command each way) and
 * OPEN. Connections with input not yet parsed wait on a ready list and are served one message
 * at a time in turn; connections with output not yet written wait on a dirty list until the
 * next flush. A connection that fails is closed at once but freed only on the next
 * bt_zmtp_recv, since the caller may still hold a message that points into it. A connection
 * this side made (bt_zmtp_connect) is in the identity table from the start, under the caller's
 * name for it; messages sent to it before the peer's READY wait in a buffer of their own,
 * since a libzmq peer takes none before it has sent its own READY.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* accept4 */
#endif
#include "zmtp.h"

#include <arpa/inet.h>
#include <linux/net_tstamp.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "alloc.h"
#include "clock.h"
#include "hash.h"
#include "log.h"
#include "status.h"

#define GREETING_BYTES 64
#define F_MORE 0x01
#define F_LONG 0x02
#define F_COMMAND 0x04
#define BUF_MIN (4u << 10)    /* a buffer to start with, and the least room a read gets */
#define BUF_KEEP (1u << 20)   /* an emptied buffer larger than this is given back */
#define OUT_EAGER (64u << 10) /* queued output written at once past this */
#define EVENTS 64
#define POLLS 8             /* epoll rounds one recv may make before it reports nothing */
#define ACCEPT_PAUSE_MS 100 /* out of descriptors: how long new connections wait */
#define HANDSHAKE_MS 30000  /* a connection not past its handshake by then is closed */
#define MAX_MSG_FRAMES 1024 /* frames one message may have */

enum { ST_GREETING, ST_READY, ST_OPEN };

/* A byte buffer whose bytes [pos, len) are still to be consumed. */
typedef struct {
    uint8_t *p;
    size_t cap, pos, len;
} buf_t;

typedef struct conn conn_t;
typedef struct {
    conn_t *head, *tail;
} list_t;
typedef struct {
    conn_t *prev, *next;
    int on;
} link_t;

struct conn {
    int fd;
    int state;
    int eof;        /* the peer closed: serve what is buffered, then go */
    int dead;       /* closed; freed on the next recv */
    buf_t in;       /* unparsed input */
    buf_t out;      /* unwritten output */
    buf_t held;     /* messages sent to an outgoing connection before its handshake ended */
    int want_out;   /* EPOLLOUT is registered */
    int outgoing;   /* made by bt_zmtp_connect: its id is the caller's name for the peer */
    int connecting; /* outgoing, and the connect has not completed */
    uint8_t id[BT_ZMTP_MAX_ID];
    size_t id_len;
    int has_id; /* in the identity table */
    conn_t *hnext;
    link_t ready, dirty, all, hs; /* hs: still in the handshake, oldest first */
    uint64_t accepted_ms;         /* or when the connect began */
    conn_t *dnext;                /* the dead list */
    uint64_t rx_ns;               /* rx_stamps: the kernel's stamp of the last read */
};

struct bt_zmtp {
    int ep, lfd, tfd;   /* epoll set, listener, timer (accept pause, handshake deadlines) */
    int unix_path;      /* lfd is bound to a file to remove on close */
    char endpoint[256]; /* as bound; empty for a socket that only connects */
    size_t max_frame, max_queued;
    int rx_stamps;
    conn_t **buckets;
    size_t n_buckets, n_ids;
    list_t ready, dirty, all, hs;
    conn_t *dead;
    int n_peers;
    uint64_t n_refused; /* connections closed for breaking the protocol or its limits */
    uint32_t next_gen;  /* generated identities */
    uint8_t listener_tag, timer_tag;
    uint64_t accept_paused_until; /* ms; 0: the listener is watched */
    uint64_t timer_at;            /* ms the timer is armed for; 0: disarmed */
};

/* The socket's name in the log. */
static const char *zname(const bt_zmtp_t *z)
{
    return z->endpoint[0] ? z->endpoint : "(connecting)";
}

/* --- intrusive lists ------------------------------------------------------------------ */

#define LINK(c, off) ((link_t *)((char *)(c) + (off)))

static void list_push(list_t *l, conn_t *c, size_t off)
{
    link_t *k = LINK(c, off);
    if (k->on)
        return;
    k->on = 1;
    k->next = NULL;
    k->prev = l->tail;
    if (l->tail)
        LINK(l->tail, off)->next = c;
    else
        l->head = c;
    l->tail = c;
}

static void list_remove(list_t *l, conn_t *c, size_t off)
{
    link_t *k = LINK(c, off);
    if (!k->on)
        return;
    if (k->prev)
        LINK(k->prev, off)->next = k->next;
    else
        l->head = k->next;
    if (k->next)
        LINK(k->next, off)->prev = k->prev;
    else
        l->tail = k->prev;
    k->on = 0;
    k->prev = k->next = NULL;
}

#define READY_OFF offsetof(conn_t, ready)
#define DIRTY_OFF offsetof(conn_t, dirty)
#define ALL_OFF offsetof(conn_t, all)
#define HS_OFF offsetof(conn_t, hs)

/* --- identities ----------------------------------------------------------------------- */

static size_t id_hash(const uint8_t *id, size_t len)
{
    uint64_t h = bt_fnv1a(id, len);
    return (size_t)(h ^ (h >> 29));
}

static conn_t *id_find(const bt_zmtp_t *z, const uint8_t *id, size_t len)
{
    for (conn_t *c = z->buckets[id_hash(id, len) & (z->n_buckets - 1)]; c; c = c->hnext)
        if (c->id_len == len && memcmp(c->id, id, len) == 0)
            return c;
    return NULL;
}

static void id_remove(bt_zmtp_t *z, conn_t *c)
{
    if (!c->has_id)
        return;
    conn_t **p = &z->buckets[id_hash(c->id, c->id_len) & (z->n_buckets - 1)];
    while (*p != c)
        p = &(*p)->hnext;
    *p = c->hnext;
    c->hnext = NULL;
    c->has_id = 0;
    z->n_ids--;
}

static int id_grow(bt_zmtp_t *z)
{
    size_t n = z->n_buckets * 2;
    conn_t **b = bt_calloc(n, sizeof *b);
    if (!b)
        return BT_ERR_NOMEM;
    for (size_t i = 0; i < z->n_buckets; i++)
        for (conn_t *c = z->buckets[i], *next; c; c = next) {
            next = c->hnext;
            size_t h = id_hash(c->id, c->id_len) & (n - 1);
            c->hnext = b[h];
            b[h] = c;
        }
    bt_free(z->buckets);
    z->buckets = b;
    z->n_buckets = n;
    return BT_OK;
}

static void id_insert(bt_zmtp_t *z, conn_t *c)
{
    if (z->n_ids >= z->n_buckets)
        id_grow(z); /* on failure the chains only get longer */
    size_t h = id_hash(c->id, c->id_len) & (z->n_buckets - 1);
    c->hnext = z->buckets[h];
    z->buckets[h] = c;
    c->has_id = 1;
    z->n_ids++;
}

/* A generated identity, as libzmq makes them: a zero byte and a 32-bit counter. */
static void id_generate(bt_zmtp_t *z, conn_t *c)
{
    do {
        uint32_t v = z->next_gen++;
        c->id[0] = 0;
        c->id[1] = (uint8_t)(v >> 24);
        c->id[2] = (uint8_t)(v >> 16);
        c->id[3] = (uint8_t)(v >> 8);
        c->id[4] = (uint8_t)v;
        c->id_len = 5;
    } while (id_find(z, c->id, c->id_len));
}

/* --- connections ---------------------------------------------------------------------- */

/* Closes c's socket: it is no peer any more and takes no sends; its input stays. */
static void conn_detach(bt_zmtp_t *z, conn_t *c)
{
    if (c->state == ST_OPEN && !c->eof)
        z->n_peers--;
    if (c->fd >= 0) {
        epoll_ctl(z->ep, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
        c->fd = -1;
    }
    id_remove(z, c);
    list_remove(&z->dirty, c, DIRTY_OFF);
}

static void conn_kill(bt_zmtp_t *z, conn_t *c, const char *why)
{
    if (c->dead)
        return;
    if (why)
        bt_debug("zmtp %s: closing a connection: %s", zname(z), why);
    conn_detach(z, c);
    c->dead = 1;
    list_remove(&z->ready, c, READY_OFF);
    list_remove(&z->all, c, ALL_OFF);
    list_remove(&z->hs, c, HS_OFF);
    c->dnext = z->dead;
    z->dead = c;
}

/* Closes a connection that broke the protocol or one of its limits, and counts it. */
static void conn_refuse(bt_zmtp_t *z, conn_t *c, const char *why)
{
    if (c->dead)
        return;
    z->n_refused++;
    conn_kill(z, c, why);
}

static void conn_free(conn_t *c)
{
    bt_free(c->in.p);
    bt_free(c->out.p);
    bt_free(c->held.p);
    bt_free(c);
}

static void reap(bt_zmtp_t *z)
{
    while (z->dead) {
        conn_t *c = z->dead;
        z->dead = c->dnext;
        conn_free(c);
    }
}

static int events_set(bt_zmtp_t *z, conn_t *c, int want_out)
{
    if (c->want_out == want_out || c->fd < 0)
        return BT_OK;
    struct epoll_event ev = {.events = EPOLLIN | (want_out ? EPOLLOUT : 0u), .data.ptr = c};
    if (epoll_ctl(z->ep, EPOLL_CTL_MOD, c->fd, &ev) != 0)
        return BT_ERR_IO;
    c->want_out = want_out;
    return BT_OK;
}

/* Makes room for need more bytes at the end of b: what is left to consume moves to the front
 * first, then the buffer doubles until they fit. */
static int buf_reserve(buf_t *b, size_t need)
{
    if (b->pos == b->len)
        b->pos = b->len = 0;
    if (b->cap - b->len >= need)
        return BT_OK;
    if (b->pos > 0) {
        memmove(b->p, b->p + b->pos, b->len - b->pos);
        b->len -= b->pos;
        b->pos = 0;
        if (b->cap - b->len >= need)
            return BT_OK;
    }
    size_t cap = b->cap ? b->cap : BUF_MIN;
    while (cap - b->len < need)
        cap *= 2;
    uint8_t *p = bt_realloc(b->p, cap);
    if (!p)
        return BT_ERR_NOMEM;
    b->p = p;
    b->cap = cap;
    return BT_OK;
}

/* Gives a large buffer back once everything in it was consumed (after a burst). */
static void buf_trim(buf_t *b)
{
    if (b->pos == b->len && b->cap > BUF_KEEP) {
        bt_free(b->p);
        *b = (buf_t){0};
    }
}

/* Writes what c has queued; on a full socket asks epoll to say when it drains. */
static void conn_write(bt_zmtp_t *z, conn_t *c)
{
    list_remove(&z->dirty, c, DIRTY_OFF);
    if (c->connecting)
        return; /* EPOLLOUT is watched: the output goes once the connect completes */
    while (c->out.pos < c->out.len && !c->dead) {
        ssize_t n = send(c->fd, c->out.p + c->out.pos, c->out.len - c->out.pos, MSG_NOSIGNAL);
        if (n > 0) {
            c->out.pos += (size_t)n;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (events_set(z, c, 1) != BT_OK)
                conn_kill(z, c, "epoll_ctl failed");
            return;
        } else {
            conn_kill(z, c, n < 0 ? strerror(errno) : "send wrote nothing");
            return;
        }
    }
    if (!c->dead) {
        c->out.pos = c->out.len = 0;
        buf_trim(&c->out);
        if (events_set(z, c, 0) != BT_OK)
            conn_kill(z, c, "epoll_ctl failed");
    }
}

/* Our greeting and READY, queued as the connection opens; READY announces identity when
 * id_len > 0 (the ZMQ_ROUTING_ID of a connecting socket). */
static int conn_hello(conn_t *c, const uint8_t *identity, size_t id_len)
{
    static const char props[] = "\x05READY\x0bSocket-Type\x00\x00\x00\x06ROUTER";
    static const char id_prop[] = "\x08Identity";
    size_t plen = sizeof props - 1 + (id_len ? sizeof id_prop - 1 + 4 + id_len : 0);
    int st = buf_reserve(&c->out, GREETING_BYTES + 2 + plen);
    if (st != BT_OK)
        return st;
    uint8_t *g = c->out.p + c->out.len;
    memset(g, 0, GREETING_BYTES);
    g[0] = 0xff;
    g[8] = 1; /* padding (a ZMTP 1.0 peer would read an empty identity) */
    g[9] = 0x7f;
    g[10] = 3; /* version 3.0 */
    g[11] = 0;
    memcpy(g + 12, "NULL", 4);
    g[GREETING_BYTES] = F_COMMAND;
    g[GREETING_BYTES + 1] = (uint8_t)plen;
    uint8_t *p = g + GREETING_BYTES + 2;
    memcpy(p, props, sizeof props - 1);
    p += sizeof props - 1;
    if (id_len) {
        memcpy(p, id_prop, sizeof id_prop - 1);
        p += sizeof id_prop - 1;
        for (int s = 24; s >= 0; s -= 8)
            *p++ = (uint8_t)(id_len >> s);
        memcpy(p, identity, id_len);
    }
    c->out.len += GREETING_BYTES + 2 + plen;
    return BT_OK;
}

/* Arms the timer for the next deadline: the end of an accept pause or the oldest handshake's.
 * It wakes a caller that sleeps on bt_zmtp_fd alone, so deadlines hold without traffic. */
static void timer_arm(bt_zmtp_t *z)
{
    uint64_t at = z->accept_paused_until;
    if (z->hs.head) {
        uint64_t h = z->hs.head->accepted_ms + HANDSHAKE_MS + 1;
        if (!at || h < at)
            at = h;
    }
    if (at == z->timer_at)
        return;
    struct itimerspec its = {{0, 0}, {0, 0}};
    if (at) {
        its.it_value.tv_sec = (time_t)(at / 1000u);
        its.it_value.tv_nsec = (long)(at % 1000u) * 1000000L;
    }
    if (timerfd_settime(z->tfd, TFD_TIMER_ABSTIME, &its, NULL) == 0)
        z->timer_at = at;
}

/* Out of descriptors or memory, the listener stays readable: it leaves the epoll set for a
 * while instead of waking the caller in a loop, and pending connections wait in the backlog. */
static void accept_pause(bt_zmtp_t *z, int err)
{
    bt_warn("zmtp %s: cannot accept: %s; new connections wait %d ms", zname(z), strerror(err),
            ACCEPT_PAUSE_MS);
    epoll_ctl(z->ep, EPOLL_CTL_DEL, z->lfd, NULL);
    z->accept_paused_until = (uint64_t)bt_mono_ms() + ACCEPT_PAUSE_MS;
    timer_arm(z);
}

static void accept_resume(bt_zmtp_t *z)
{
    if (!z->accept_paused_until || (uint64_t)bt_mono_ms() < z->accept_paused_until)
        return;
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &z->listener_tag};
    if (epoll_ctl(z->ep, EPOLL_CTL_ADD, z->lfd, &ev) == 0)
        z->accept_paused_until = 0;
    else
        z->accept_paused_until = (uint64_t)bt_mono_ms() + ACCEPT_PAUSE_MS;
    timer_arm(z);
}

/* A tcp connection's options: no Nagle delay, and the kernel's receive stamps if asked for. */
static void tcp_options(const bt_zmtp_t *z, int fd)
{
    int one = 1, stamps = SOF_TIMESTAMPING_RX_SOFTWARE | SOF_TIMESTAMPING_SOFTWARE;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (z->rx_stamps && setsockopt(fd, SOL_SOCKET, SO_TIMESTAMPING, &stamps, sizeof stamps) != 0)
        bt_warn("zmtp %s: no receive stamps: %s", zname(z), strerror(errno));
}

static void conn_accept(bt_zmtp_t *z)
{
    for (;;) {
        int fd = accept4(z->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == ECONNABORTED || errno == EINTR)
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                accept_pause(z, errno);
            return;
        }
        if (!strncmp(z->endpoint, "tcp://", 6))
            tcp_options(z, fd);
        conn_t *c = bt_calloc(1, sizeof *c);
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        if (!c || conn_hello(c, NULL, 0) != BT_OK ||
            epoll_ctl(z->ep, EPOLL_CTL_ADD, fd, &ev) != 0) {
            bt_warn("zmtp %s: cannot take a connection: %s", zname(z),
                    c ? strerror(errno) : "out of memory");
            close(fd);
            if (c)
                conn_free(c);
            continue;
        }
        c->fd = fd;
        c->state = ST_GREETING;
        c->accepted_ms = (uint64_t)bt_mono_ms();
        list_push(&z->all, c, ALL_OFF);
        list_push(&z->hs, c, HS_OFF);
        if (!z->timer_at)
            timer_arm(z);
        conn_write(z, c);
    }
}

/* recv, noting the kernel's software receive stamp of what it read in c->rx_ns. */
static ssize_t recv_stamped(conn_t *c, void *p, size_t len)
{
    union {
        char buf[CMSG_SPACE(3 * sizeof(struct timespec))];
        struct cmsghdr align;
    } ctl;
    struct iovec iov = {p, len};
    struct msghdr mh = {
        .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.buf, .msg_controllen = sizeof ctl.buf};
    ssize_t n = recvmsg(c->fd, &mh, 0);
    if (n > 0)
        c->rx_ns = 0; /* bytes the kernel did not stamp: not known, rather than an older stamp */
    for (struct cmsghdr *cm = n > 0 ? CMSG_FIRSTHDR(&mh) : NULL; cm; cm = CMSG_NXTHDR(&mh, cm)) {
        if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_TIMESTAMPING) {
            struct timespec ts[3];
            memcpy(ts, CMSG_DATA(cm), sizeof ts);
            c->rx_ns = (uint64_t)ts[0].tv_sec * 1000000000ull + (uint64_t)ts[0].tv_nsec;
        }
    }
    return n;
}

/* Reads once into c's input buffer (growing it when a frame needs more room). */
static void conn_read(bt_zmtp_t *z, conn_t *c)
{
    if (buf_reserve(&c->in, BUF_MIN) != BT_OK) {
        conn_kill(z, c, "out of memory");
        return;
    }
    void *p = c->in.p + c->in.len;
    size_t room = c->in.cap - c->in.len;
    ssize_t n = z->rx_stamps ? recv_stamped(c, p, room) : recv(c->fd, p, room, 0);
    if (n > 0) {
        c->in.len += (size_t)n;
    } else if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
        /* The peer is gone: what it sent whole is still served. */
        if (n < 0)
            bt_debug("zmtp %s: recv: %s", zname(z), strerror(errno));
        conn_detach(z, c);
        c->eof = 1;
    }
}

/* The frame at in[*pos]: 1 when whole (data, len, flags filled and *pos moved past it), 0 when
 * more input is needed (*need: bytes the frame needs in all), -1 when larger than max. */
static int frame_at(const conn_t *c, size_t *pos, size_t max, const uint8_t **data, size_t *len,
                    int *flags, size_t *need)
{
    size_t p = *pos, have = c->in.len - p;
    if (have < 2) {
        *need = 2;
        return 0;
    }
    const uint8_t *b = c->in.p + p;
    size_t hdr = (b[0] & F_LONG) ? 9 : 2;
    if (have < hdr) {
        *need = hdr;
        return 0;
    }
    uint64_t size = b[1];
    if (b[0] & F_LONG) {
        size = 0;
        for (int i = 1; i <= 8; i++)
            size = size << 8 | b[i];
    }
    if (size > max)
        return -1;
    if (have - hdr < size) {
        *need = hdr + (size_t)size;
        return 0;
    }
    *data = b + hdr;
    *len = (size_t)size;
    *flags = b[0];
    *pos = p + hdr + (size_t)size;
    return 1;
}

static int prop_eq(const uint8_t *p, size_t n, const char *s)
{
    return n == strlen(s) && strncasecmp((const char *)p, s, n) == 0;
}

/* The peer's READY: its socket type must suit a ROUTER; its identity, if any, is taken (a
 * connection we made keeps the name the caller gave it). */
static int on_ready(bt_zmtp_t *z, conn_t *c, const uint8_t *b, size_t len)
{
    if (len < 6 || b[0] != 5 || memcmp(b + 1, "READY", 5) != 0)
        return -1;
    size_t p = 6;
    int typed = 0;
    uint8_t id[BT_ZMTP_MAX_ID];
    size_t id_len = 0;
    while (p < len) {
        size_t nl = b[p++];
        if (len - p < nl + 4)
            return -1;
        const uint8_t *name = b + p;
        p += nl;
        uint32_t vl =
            (uint32_t)b[p] << 24 | (uint32_t)b[p + 1] << 16 | (uint32_t)b[p + 2] << 8 | b[p + 3];
        p += 4;
        if (len - p < vl)
            return -1;
        const uint8_t *v = b + p;
        p += vl;
        if (prop_eq(name, nl, "Socket-Type")) {
            if (!prop_eq(v, vl, "DEALER") && !prop_eq(v, vl, "REQ") && !prop_eq(v, vl, "ROUTER"))
                return -1;
            typed = 1;
        } else if (prop_eq(name, nl, "Identity") && vl > 0 && vl <= BT_ZMTP_MAX_ID) {
            memcpy(id, v, vl);
            id_len = vl;
        }
    }
    if (!typed)
        return -1;
    if (!c->outgoing) { /* (an outgoing one is named, and in the table, since its connect) */
        if (id_len) {
            memcpy(c->id, id, id_len);
            c->id_len = id_len;
            conn_t *old = id_find(z, c->id, c->id_len);
            if (old) { /* handover: the older connection serves on under a new name */
                id_remove(z, old);
                id_generate(z, old);
                id_insert(z, old);
            }
        } else {
            id_generate(z, c);
        }
        id_insert(z, c);
    }
    c->state = ST_OPEN;
    list_remove(&z->hs, c, HS_OFF);
    z->n_peers++;
    if (c->held.len) { /* a peer takes messages only once its READY is sent */
        if (buf_reserve(&c->out, c->held.len) != BT_OK)
            return -1;
        memcpy(c->out.p + c->out.len, c->held.p, c->held.len);
        c->out.len += c->held.len;
        bt_free(c->held.p);
        c->held = (buf_t){0};
        list_push(&z->dirty, c, DIRTY_OFF);
    }
    return 0;
}

static int greeting_ok(const uint8_t *g)
{
    static const uint8_t null_mech[20] = "NULL";
    return g[0] == 0xff && (g[9] & 1) && g[10] >= 3 && memcmp(g + 12, null_mech, 20) == 0;
}

/* Moves a connection through the handshake as far as its input allows. */
static void conn_handshake(bt_zmtp_t *z, conn_t *c)
{
    if (c->state == ST_GREETING) {
        if (c->in.len - c->in.pos < GREETING_BYTES)
            goto short_input;
        if (!greeting_ok(c->in.p + c->in.pos)) {
            conn_refuse(z, c, "not a ZMTP 3 greeting with the NULL mechanism");
            return;
        }
        c->in.pos += GREETING_BYTES;
        c->state = ST_READY;
    }
    if (c->state == ST_READY) {
        const uint8_t *d;
        size_t len, need, pos = c->in.pos;
        int flags, got = frame_at(c, &pos, 64u << 10, &d, &len, &flags, &need);
        if (got == 0)
            goto short_input;
        if (got < 0 || !(flags & F_COMMAND) || on_ready(z, c, d, len) != 0) {
            conn_refuse(z, c, "the handshake failed");
            return;
        }
        c->in.pos = pos;
    }
    return;
short_input:
    if (c->eof)
        conn_kill(z, c, NULL);
}

/* A command between messages: PING is answered; the rest (PONG, ...) need nothing. */
static void on_command(bt_zmtp_t *z, conn_t *c, const uint8_t *b, size_t len)
{
    if (len < 7 || b[0] != 4 || memcmp(b + 1, "PING", 4) != 0 || c->eof)
        return;
    size_t ctx = len - 7 > 16 ? 16 : len - 7; /* after the 2-byte TTL */
    if (buf_reserve(&c->out, 2 + 5 + ctx) != BT_OK)
        return;
    uint8_t *o = c->out.p + c->out.len;
    o[0] = F_COMMAND;
    o[1] = (uint8_t)(5 + ctx);
    memcpy(o + 2, "\x04PONG", 5);
    memcpy(o + 7, b + 7, ctx);
    c->out.len += 7 + ctx;
    list_push(&z->dirty, c, DIRTY_OFF);
}

/* Parses the next whole message of c into m: 1 when there is one, 0 when more input is needed
 * (or c was closed for a protocol error). */
static int conn_message(bt_zmtp_t *z, conn_t *c, bt_zmtp_msg_t *m)
{
    for (;;) {
        size_t pos = c->in.pos, need = 0;
        int n = 0, flags = 0, got;
        const uint8_t *d;
        size_t len;
        while ((got = frame_at(c, &pos, z->max_frame, &d, &len, &flags, &need)) == 1) {
            if (flags & F_COMMAND) {
                if (n > 0) {
                    conn_refuse(z, c, "a command inside a message");
                    return 0;
                }
                break;
            }
            if (n < BT_ZMTP_MAX_FRAMES) {
                m->data[n] = d;
                m->len[n] = len;
            }
            if (++n > MAX_MSG_FRAMES) {
                conn_refuse(z, c, "a message of too many frames");
                return 0;
            }
            if (!(flags & F_MORE))
                break;
        }
        if (got < 0) {
            conn_refuse(z, c, "a frame over the size limit");
            return 0;
        }
        if (got == 0) {
            /* Whole frames of an unfinished message stay in place: the buffer must hold
             * the message so far plus the frame in progress. */
            size_t want = (pos - c->in.pos) + need;
            if (want > 2 * z->max_frame + (64u << 10)) {
                conn_refuse(z, c, "a message over the size limit");
                return 0;
            }
            if (buf_reserve(&c->in, want - (c->in.len - c->in.pos)) != BT_OK) {
                conn_kill(z, c, "out of memory");
                return 0;
            }
            if (c->eof)
                conn_kill(z, c, NULL);
            return 0;
        }
        c->in.pos = pos;
        if (flags & F_COMMAND) {
            on_command(z, c, d, len);
            continue;
        }
        m->id = c->id;
        m->id_len = c->id_len;
        m->n = n < BT_ZMTP_MAX_FRAMES ? n : BT_ZMTP_MAX_FRAMES;
        m->n_frames = n;
        m->rx_ns = c->rx_ns;
        return 1;
    }
}

/* An outgoing connection's connect has ended, one way or the other. */
static void connect_done(bt_zmtp_t *z, conn_t *c)
{
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0)
        err = errno;
    c->connecting = 0;
    if (err) {
        bt_warn("zmtp: a connect failed: %s", strerror(err));
        conn_kill(z, c, NULL);
    }
}

static void conn_event(bt_zmtp_t *z, conn_t *c, uint32_t events)
{
    if (c->connecting)
        connect_done(z, c);
    if (!c->dead && (events & EPOLLOUT))
        conn_write(z, c);
    if (!c->dead && (events & (EPOLLIN | EPOLLHUP | EPOLLERR)))
        conn_read(z, c);
    if (!c->dead && c->state != ST_OPEN)
        conn_handshake(z, c);
    if (!c->dead && c->state == ST_OPEN && c->in.pos < c->in.len)
        list_push(&z->ready, c, READY_OFF);
    else if (!c->dead && c->eof)
        conn_kill(z, c, NULL);
}

/* Closes connections that have not finished their handshake in time (ZMQ_HANDSHAKE_IVL). */
static void handshake_expire(bt_zmtp_t *z)
{
    if (!z->hs.head)
        return;
    uint64_t now = (uint64_t)bt_mono_ms();
    while (z->hs.head && now - z->hs.head->accepted_ms > HANDSHAKE_MS)
        conn_refuse(z, z->hs.head, "no handshake in time");
}

/* The timer fired: take its expiry count and act on whatever deadline passed. */
static void on_timer(bt_zmtp_t *z)
{
    uint64_t n;
    if (read(z->tfd, &n, sizeof n) < 0 && errno != EAGAIN)
        bt_debug("zmtp %s: timer: %s", zname(z), strerror(errno));
    z->timer_at = 0;
    accept_resume(z);
    handshake_expire(z);
    timer_arm(z);
}

int bt_zmtp_recv(bt_zmtp_t *z, bt_zmtp_msg_t *m)
{
    reap(z);
    accept_resume(z);
    handshake_expire(z);
    for (int polls = 0;; polls++) {
        while (z->ready.head) {
            conn_t *c = z->ready.head;
            list_remove(&z->ready, c, READY_OFF);
            if (conn_message(z, c, m)) {
                if (c->in.pos < c->in.len)
                    list_push(&z->ready, c, READY_OFF); /* its turn again after the others */
                return BT_OK;
            }
            if (!c->dead)
                buf_trim(&c->in);
        }
        if (polls == 0)
            bt_zmtp_flush(z);
        struct epoll_event ev[EVENTS];
        int n = polls < POLLS ? epoll_wait(z->ep, ev, EVENTS, 0) : 0;
        if (n <= 0) {
            bt_zmtp_flush(z); /* what handshakes and PINGs queued */
            return BT_AGAIN;
        }
        for (int i = 0; i < n; i++) {
            if (ev[i].data.ptr == &z->listener_tag)
                conn_accept(z);
            else if (ev[i].data.ptr == &z->timer_tag)
                on_timer(z);
            else
                conn_event(z, ev[i].data.ptr, ev[i].events);
        }
    }
}

int bt_zmtp_send(bt_zmtp_t *z, const uint8_t *id, size_t id_len, const struct iovec *frames, int n)
{
    conn_t *c = id_find(z, id, id_len);
    if (!c || c->dead || c->eof)
        return BT_ERR_NOT_FOUND;
    size_t total = 0;
    for (int i = 0; i < n; i++) {
        if (frames[i].iov_len > z->max_frame)
            return BT_ERR_RANGE;
        total += frames[i].iov_len + (frames[i].iov_len > 255 ? 9 : 2);
    }
    /* Until the handshake ends, messages wait apart from the greeting and READY. */
    buf_t *b = c->state == ST_OPEN ? &c->out : &c->held;
    size_t queued = c->out.len - c->out.pos + c->held.len;
    if (queued > 0 && queued + total > z->max_queued)
        return BT_AGAIN;
    if (buf_reserve(b, total) != BT_OK)
        return BT_ERR_NOMEM;
    uint8_t *o = b->p + b->len;
    for (int i = 0; i < n; i++) {
        size_t len = frames[i].iov_len;
        uint8_t f = (uint8_t)(i + 1 < n ? F_MORE : 0);
        if (len > 255) {
            *o++ = f | F_LONG;
            for (int s = 56; s >= 0; s -= 8)
                *o++ = (uint8_t)((uint64_t)len >> s);
        } else {
            *o++ = f;
            *o++ = (uint8_t)len;
        }
        if (len)
            memcpy(o, frames[i].iov_base, len);
        o += len;
    }
    b->len += total;
    if (b == &c->held)
        return BT_OK;
    if (c->out.len - c->out.pos >= OUT_EAGER && !c->want_out)
        conn_write(z, c);
    else if (!c->want_out)
        list_push(&z->dirty, c, DIRTY_OFF);
    return BT_OK;
}

void bt_zmtp_flush(bt_zmtp_t *z)
{
    while (z->dirty.head)
        conn_write(z, z->dirty.head);
}

/* --- endpoints ------------------------------------------------------------------------ */

static int parse_port(const char *s, int listening, int *port)
{
    if (listening && !strcmp(s, "*")) {
        *port = 0;
        return BT_OK;
    }
    char *end;
    long v = strtol(s, &end, 10);
    if (!*s || *end || v < 0 || v > 65535 || (!listening && v == 0))
        return BT_ERR_INVAL;
    *port = (int)v;
    return BT_OK;
}

static int unix_addr(const char *path, struct sockaddr_storage *ss, socklen_t *sl)
{
    struct sockaddr_un *sa = (struct sockaddr_un *)ss;
    size_t len = strlen(path);
    if (len == 0 || len >= sizeof sa->sun_path) {
        bt_error("ipc endpoint: the path must have 1 to %zu bytes", sizeof sa->sun_path - 1);
        return BT_ERR_INVAL;
    }
    sa->sun_family = AF_UNIX;
    memcpy(sa->sun_path, path, len);
    *sl = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len + 1);
    if (path[0] == '@') { /* abstract namespace */
        sa->sun_path[0] = 0;
        *sl = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len);
    }
    return BT_OK;
}

/* HOST:PORT; HOST * (any, IPv4) and PORT * (any) only when listening. */
static int tcp_addr(const char *hostport, int listening, struct sockaddr_storage *ss, socklen_t *sl)
{
    char host[200];
    const char *colon = strrchr(hostport, ':');
    int port;
    if (!colon || (size_t)(colon - hostport) >= sizeof host || colon == hostport ||
        parse_port(colon + 1, listening, &port) != BT_OK) {
        bt_error("tcp endpoint tcp://%s: expected HOST:PORT", hostport);
        return BT_ERR_INVAL;
    }
    memcpy(host, hostport, (size_t)(colon - hostport));
    host[colon - hostport] = 0;
    if (listening && !strcmp(host, "*")) {
        struct sockaddr_in *s4 = (struct sockaddr_in *)ss;
        s4->sin_family = AF_INET;
        s4->sin_addr.s_addr = htonl(INADDR_ANY);
        s4->sin_port = htons((uint16_t)port);
        *sl = sizeof *s4;
        return BT_OK;
    }
    size_t hl = strlen(host);
    if (host[0] == '[' && hl > 2 && host[hl - 1] == ']') {
        memmove(host, host + 1, hl - 2);
        host[hl - 2] = 0;
    }
    /* Names resolve to IPv4 as libzmq's do (without ZMQ_IPV6): "localhost" must not bind
     * ::1 alone. An IPv6 address is taken when one is written. */
    struct addrinfo hints = {.ai_family = strchr(host, ':') ? AF_INET6 : AF_INET,
                             .ai_socktype = SOCK_STREAM};
    struct addrinfo *ai = NULL;
    int rc = getaddrinfo(host, NULL, &hints, &ai);
    if (rc != 0 || !ai) {
        bt_error("tcp endpoint tcp://%s: cannot resolve %s: %s", hostport, host, gai_strerror(rc));
        return BT_ERR_INVAL;
    }
    memcpy(ss, ai->ai_addr, ai->ai_addrlen);
    *sl = ai->ai_addrlen;
    freeaddrinfo(ai);
    if (ss->ss_family == AF_INET)
        ((struct sockaddr_in *)ss)->sin_port = htons((uint16_t)port);
    else
        ((struct sockaddr_in6 *)ss)->sin6_port = htons((uint16_t)port);
    return BT_OK;
}

/* The address of a tcp:// or ipc:// endpoint. */
static int endpoint_addr(const char *endpoint, int listening, struct sockaddr_storage *ss,
                         socklen_t *sl)
{
    memset(ss, 0, sizeof *ss);
    if (!strncmp(endpoint, "tcp://", 6))
        return tcp_addr(endpoint + 6, listening, ss, sl);
    if (!strncmp(endpoint, "ipc://", 6))
        return unix_addr(endpoint + 6, ss, sl);
    bt_error("endpoint %s: only tcp:// and ipc:// are served", endpoint);
    return BT_ERR_INVAL;
}

/* Binds z's listener to endpoint and notes the endpoint as bound. */
static int listen_on(bt_zmtp_t *z, const char *endpoint)
{
    struct sockaddr_storage ss;
    socklen_t sl;
    int st = endpoint_addr(endpoint, 1, &ss, &sl);
    if (st != BT_OK)
        return st;
    int one = 1, unix_file = ss.ss_family == AF_UNIX && endpoint[6] != '@';
    if (unix_file)
        unlink(endpoint + 6); /* a stale socket file from an earlier run, as libzmq does */
    z->lfd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (z->lfd < 0 ||
        (ss.ss_family != AF_UNIX &&
         setsockopt(z->lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0) ||
        bind(z->lfd, (struct sockaddr *)&ss, sl) != 0 ||
        getsockname(z->lfd, (struct sockaddr *)&ss, &sl) != 0) {
        bt_error("cannot bind %s: %s", endpoint, strerror(errno));
        return BT_ERR_IO;
    }
    z->unix_path = unix_file;
    char a[INET6_ADDRSTRLEN] = "?";
    if (ss.ss_family == AF_UNIX) {
        snprintf(z->endpoint, sizeof z->endpoint, "%s", endpoint);
    } else if (ss.ss_family == AF_INET) {
        struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
        inet_ntop(AF_INET, &s4->sin_addr, a, sizeof a);
        snprintf(z->endpoint, sizeof z->endpoint, "tcp://%s:%d", a, ntohs(s4->sin_port));
    } else {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
        inet_ntop(AF_INET6, &s6->sin6_addr, a, sizeof a);
        snprintf(z->endpoint, sizeof z->endpoint, "tcp://[%s]:%d", a, ntohs(s6->sin6_port));
    }
    return BT_OK;
}

int bt_zmtp_new(const bt_zmtp_params_t *params, bt_zmtp_t **out)
{
    bt_zmtp_t *z = bt_calloc(1, sizeof *z);
    if (!z)
        return BT_ERR_NOMEM;
    z->ep = z->lfd = z->tfd = -1;
    z->max_frame = params && params->max_frame ? params->max_frame : 16u << 20;
    z->max_queued = params && params->max_queued ? params->max_queued : 64u << 20;
    z->rx_stamps = params && params->rx_stamps;
    z->n_buckets = 64;
    z->buckets = bt_calloc(z->n_buckets, sizeof *z->buckets);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    z->next_gen = (uint32_t)(ts.tv_nsec ^ (uint32_t)getpid() << 12);
    struct epoll_event tev = {.events = EPOLLIN, .data.ptr = &z->timer_tag};
    if (!z->buckets) {
        bt_zmtp_close(z);
        return BT_ERR_NOMEM;
    }
    if ((z->ep = epoll_create1(EPOLL_CLOEXEC)) < 0 ||
        (z->tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC)) < 0 ||
        epoll_ctl(z->ep, EPOLL_CTL_ADD, z->tfd, &tev) != 0) {
        bt_error("zmtp: cannot make an epoll set and a timer: %s", strerror(errno));
        bt_zmtp_close(z);
        return BT_ERR_IO;
    }
    *out = z;
    return BT_OK;
}

int bt_zmtp_bind(const char *endpoint, const bt_zmtp_params_t *params, bt_zmtp_t **out)
{
    bt_zmtp_t *z;
    int st = bt_zmtp_new(params, &z);
    if (st != BT_OK)
        return st;
    st = listen_on(z, endpoint);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &z->listener_tag};
    if (st == BT_OK &&
        (listen(z->lfd, 1024) != 0 || epoll_ctl(z->ep, EPOLL_CTL_ADD, z->lfd, &ev) != 0)) {
        bt_error("cannot listen on %s: %s", endpoint, strerror(errno));
        st = BT_ERR_IO;
    }
    if (st != BT_OK) {
        bt_zmtp_close(z);
        return st;
    }
    *out = z;
    return BT_OK;
}

int bt_zmtp_connect(bt_zmtp_t *z, const char *endpoint, const uint8_t *identity, size_t id_len,
                    const uint8_t *name, size_t name_len)
{
    if (!name_len || name_len > BT_ZMTP_MAX_ID || id_len > BT_ZMTP_MAX_ID)
        return BT_ERR_INVAL;
    if (id_find(z, name, name_len))
        return BT_ERR_INVAL; /* a connected peer holds the name */
    struct sockaddr_storage ss;
    socklen_t sl;
    int st = endpoint_addr(endpoint, 0, &ss, &sl);
    if (st != BT_OK)
        return st;
    conn_t *c = bt_calloc(1, sizeof *c);
    if (!c || conn_hello(c, identity, id_len) != BT_OK) {
        if (c)
            conn_free(c);
        return BT_ERR_NOMEM;
    }
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd >= 0 && ss.ss_family != AF_UNIX)
        tcp_options(z, fd);
    int rc = fd < 0 ? -1 : connect(fd, (struct sockaddr *)&ss, sl);
    c->connecting = rc != 0 && errno == EINPROGRESS;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
    if ((rc != 0 && !c->connecting) || epoll_ctl(z->ep, EPOLL_CTL_ADD, fd, &ev) != 0) {
        /* A unix socket whose listener's backlog is full says EAGAIN: try again later. */
        st = errno == EAGAIN ? BT_AGAIN : BT_ERR_IO;
        bt_warn("zmtp: cannot connect to %s: %s", endpoint, strerror(errno));
        if (fd >= 0)
            close(fd);
        conn_free(c);
        return st;
    }
    c->fd = fd;
    c->want_out = 1;
    c->outgoing = 1;
    c->state = ST_GREETING;
    c->accepted_ms = (uint64_t)bt_mono_ms();
    memcpy(c->id, name, name_len);
    c->id_len = name_len;
    id_insert(z, c);
    list_push(&z->all, c, ALL_OFF);
    list_push(&z->hs, c, HS_OFF);
    if (!z->timer_at)
        timer_arm(z);
    list_push(&z->dirty, c, DIRTY_OFF);
    return BT_OK;
}

void bt_zmtp_close(bt_zmtp_t *z)
{
    if (!z)
        return;
    while (z->all.head)
        conn_kill(z, z->all.head, NULL);
    reap(z);
    if (z->lfd >= 0)
        close(z->lfd);
    if (z->unix_path)
        unlink(z->endpoint + 6);
    if (z->ep >= 0)
        close(z->ep);
    if (z->tfd >= 0)
        close(z->tfd);
    bt_free(z->buckets);
    bt_free(z);
}

const char *bt_zmtp_endpoint(const bt_zmtp_t *z)
{
    return z->endpoint;
}

int bt_zmtp_fd(const bt_zmtp_t *z)
{
    return z->ep;
}

int bt_zmtp_peers(const bt_zmtp_t *z)
{
    return z->n_peers;
}

uint64_t bt_zmtp_refused(const bt_zmtp_t *z)
{
    return z->n_refused;
}
