/* SPDX-License-Identifier: MIT */
/*
 * metrics.c - the monitoring endpoint of metrics.h: a listening socket and a few connections,
 * each read until its request head is complete, answered from a buffer built by the owner's
 * render function, and closed once the answer is written.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* accept4 */
#endif
#include "metrics.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/alloc.h"
#include "common/log.h"
#include "common/status.h"

/* --- histograms ------------------------------------------------------------------------ */

void router_hist_init(router_hist_t *h, const double *bounds, int n_bounds)
{
    memset(h, 0, sizeof *h);
    h->bounds = bounds;
    h->n_bounds = n_bounds < ROUTER_HIST_MAX_BOUNDS ? n_bounds : ROUTER_HIST_MAX_BOUNDS;
}

void router_hist_observe(router_hist_t *h, double v)
{
    int i = 0;
    while (i < h->n_bounds && v > h->bounds[i])
        i++;
    h->counts[i]++;
    h->sum += v;
    h->count++;
}

void router_hist_write(const router_hist_t *h, FILE *f, const char *name, const char *help)
{
    fprintf(f, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
    uint64_t cum = 0;
    for (int i = 0; i < h->n_bounds; i++) {
        cum += h->counts[i];
        fprintf(f, "%s_bucket{le=\"%g\"} %llu\n", name, h->bounds[i], (unsigned long long)cum);
    }
    fprintf(f, "%s_bucket{le=\"+Inf\"} %llu\n%s_sum %.9g\n%s_count %llu\n", name,
            (unsigned long long)h->count, name, h->sum, name, (unsigned long long)h->count);
}

/* --- the server ------------------------------------------------------------------------ */

typedef struct {
    int fd; /* -1: free slot */
    uint64_t last_ms;
    char in[ROUTER_METRICS_REQ_MAX];
    size_t in_len;
    char *out; /* the whole answer once the request is read */
    size_t out_len, out_off;
    int lingering; /* answered and shut for writing: reading to EOF, then closing */
} conn_t;

struct router_metrics {
    int listen_fd, port;
    router_metrics_render_fn render;
    void *ctx;
    conn_t conns[ROUTER_METRICS_CONNS];
};

int router_metrics_open(const char *addr, int port, router_metrics_render_fn render, void *ctx,
                        router_metrics_t **out)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (!addr || !strcmp(addr, "*") || !strcmp(addr, "0.0.0.0")) {
        sa.sin_addr.s_addr = htonl(INADDR_ANY);
    } else if (inet_pton(AF_INET, addr, &sa.sin_addr) != 1) {
        bt_error("metrics: %s is not an IPv4 address", addr);
        return BT_ERR_INVAL;
    }
    router_metrics_t *m = bt_calloc(1, sizeof *m);
    if (!m)
        return BT_ERR_NOMEM;
    for (int i = 0; i < ROUTER_METRICS_CONNS; i++)
        m->conns[i].fd = -1;
    m->render = render;
    m->ctx = ctx;
    int one = 1;
    socklen_t len = sizeof sa;
    m->listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (m->listen_fd < 0 ||
        setsockopt(m->listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
        bind(m->listen_fd, (struct sockaddr *)&sa, sizeof sa) != 0 ||
        listen(m->listen_fd, 16) != 0 ||
        getsockname(m->listen_fd, (struct sockaddr *)&sa, &len) != 0) {
        bt_error("metrics: cannot listen on %s:%d: %s", addr ? addr : "*", port, strerror(errno));
        if (m->listen_fd >= 0)
            close(m->listen_fd);
        bt_free(m);
        return BT_ERR_IO;
    }
    m->port = ntohs(sa.sin_port);
    *out = m;
    return BT_OK;
}

static void conn_close(conn_t *c)
{
    if (c->fd >= 0)
        close(c->fd);
    free(c->out); /* from open_memstream */
    c->fd = -1;
    c->out = NULL;
    c->in_len = c->out_len = c->out_off = 0;
    c->lingering = 0;
}

/* After the answer: reads and drops what the client still sends until it closes. Closing with
 * unread input would reset the connection, and the client could lose the answer with it (an
 * oversized request, say). ROUTER_METRICS_LINGER_MS bounds it. */
static void conn_linger(conn_t *c, uint64_t now_ms)
{
    char buf[4096];
    for (;;) {
        ssize_t n = read(c->fd, buf, sizeof buf);
        if (n > 0)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) &&
            now_ms - c->last_ms <= ROUTER_METRICS_LINGER_MS)
            return;
        conn_close(c);
        return;
    }
}

void router_metrics_close(router_metrics_t *m)
{
    if (!m)
        return;
    for (int i = 0; i < ROUTER_METRICS_CONNS; i++)
        conn_close(&m->conns[i]);
    close(m->listen_fd);
    bt_free(m);
}

int router_metrics_port(const router_metrics_t *m)
{
    return m->port;
}

static const char *reason(int code)
{
    switch (code) {
    case 200: return "OK";
    case 400: return "Bad Request";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 431: return "Request Header Fields Too Large";
    case 503: return "Service Unavailable";
    default: return "Internal Server Error";
    }
}

/* Builds c's answer: the status line and headers, then the body (rendered, or the reason). */
static void respond(router_metrics_t *m, conn_t *c, int code, const char *path)
{
    char *body = NULL;
    size_t body_len = 0;
    FILE *f = open_memstream(&body, &body_len);
    if (f && path)
        code = m->render(m->ctx, path, f);
    if (f && code != 200 && code != 503)
        fprintf(f, "%s\n", reason(code));
    if (f)
        fclose(f);
    FILE *o = open_memstream(&c->out, &c->out_len);
    if (!o) {
        free(body);
        conn_close(c);
        return;
    }
    fprintf(o,
            "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\nConnection: close\r\n"
            "\r\n",
            code, reason(code),
            code == 200 && path && !strcmp(path, "/metrics")
                ? "text/plain; version=0.0.4; charset=utf-8"
                : "text/plain; charset=utf-8",
            body ? body_len : 0);
    if (body)
        fwrite(body, 1, body_len, o);
    fclose(o);
    free(body);
}

/* A complete request head in c->in: answers it. */
static void handle(router_metrics_t *m, conn_t *c)
{
    char method[8], path[256], version[16];
    c->in[c->in_len] = 0;
    if (sscanf(c->in, "%7s %255s %15s", method, path, version) != 3 ||
        strncmp(version, "HTTP/1.", 7) != 0) {
        respond(m, c, 400, NULL);
        return;
    }
    if (strcmp(method, "GET") != 0) {
        respond(m, c, 405, NULL);
        return;
    }
    char *q = strchr(path, '?'); /* query strings are ignored */
    if (q)
        *q = 0;
    respond(m, c, 404, path);
}

/* Reads what c has; answers once the head is complete (an empty line). */
static void conn_read(router_metrics_t *m, conn_t *c, uint64_t now_ms)
{
    for (;;) {
        size_t room = sizeof c->in - 1 - c->in_len;
        if (room == 0) {
            respond(m, c, 431, NULL);
            return;
        }
        ssize_t n = read(c->fd, c->in + c->in_len, room);
        if (n > 0) {
            c->in_len += (size_t)n;
            c->last_ms = now_ms;
            c->in[c->in_len] = 0;
            if (strstr(c->in, "\r\n\r\n") || strstr(c->in, "\n\n")) {
                handle(m, c);
                return;
            }
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
            return;
        conn_close(c); /* EOF before a whole request, or an error */
        return;
    }
}

static void conn_write(conn_t *c, uint64_t now_ms)
{
    while (c->out_off < c->out_len) {
        ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
        if (n > 0) {
            c->out_off += (size_t)n;
            c->last_ms = now_ms;
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
            return;
        conn_close(c);
        return;
    }
    shutdown(c->fd, SHUT_WR);
    c->lingering = 1;
    c->last_ms = now_ms;
    conn_linger(c, now_ms);
}

void router_metrics_poll(router_metrics_t *m, uint64_t now_ms)
{
    if (!m)
        return;
    for (;;) {
        int i = 0;
        while (i < ROUTER_METRICS_CONNS && m->conns[i].fd >= 0)
            i++;
        if (i == ROUTER_METRICS_CONNS)
            break; /* full: the rest wait in the backlog */
        int fd = accept4(m->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR && errno != ECONNABORTED)
                bt_warn("metrics: accept: %s", strerror(errno));
            break;
        }
        m->conns[i] = (conn_t){.fd = fd, .last_ms = now_ms};
    }
    for (int i = 0; i < ROUTER_METRICS_CONNS; i++) {
        conn_t *c = &m->conns[i];
        if (c->fd < 0)
            continue;
        if (c->lingering) {
            conn_linger(c, now_ms);
            continue;
        }
        if (!c->out)
            conn_read(m, c, now_ms);
        if (c->fd >= 0 && c->out)
            conn_write(c, now_ms);
        if (c->fd >= 0 && now_ms - c->last_ms > ROUTER_METRICS_IDLE_MS)
            conn_close(c);
    }
}
