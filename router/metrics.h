/* SPDX-License-Identifier: MIT */
/*
 * metrics.h - the router's HTTP endpoint for monitoring (--metrics-port): GET /metrics answers
 * in the Prometheus text format (request counters, requests by state, every instance's state
 * as of its last heartbeat, TTFT / TPOT / duration histograms as the router saw them), GET
 * /health answers 200 when the cluster can serve and 503 when it cannot (a readiness probe).
 *
 * A small HTTP/1.1 server of its own: non-blocking sockets served from the router's
 * housekeeping tick (every --tick-ms), so a scrape costs the request path nothing and waits at
 * most a tick. One request per connection (Connection: close); at most ROUTER_METRICS_CONNS
 * connections, each closed after ROUTER_METRICS_IDLE_MS without progress; a request line or
 * header over ROUTER_METRICS_REQ_MAX bytes gets 431, anything but GET 405, an unknown path 404.
 * After its answer a connection is shut for writing and read to EOF (for at most
 * ROUTER_METRICS_LINGER_MS) before it is closed, so that unread input cannot reset it under the
 * answer.
 *
 * Threads: the router's loop thread.
 */
#ifndef BATON_ROUTER_METRICS_H
#define BATON_ROUTER_METRICS_H

#include <stdint.h>
#include <stdio.h>

#define ROUTER_METRICS_CONNS 16
#define ROUTER_METRICS_IDLE_MS 5000
#define ROUTER_METRICS_REQ_MAX 4096
#define ROUTER_METRICS_LINGER_MS 1000

/* A Prometheus histogram with fixed upper bounds (seconds), plus +Inf. */
#define ROUTER_HIST_MAX_BOUNDS 16
typedef struct {
    const double *bounds; /* ascending, n_bounds of them */
    int n_bounds;
    uint64_t counts[ROUTER_HIST_MAX_BOUNDS + 1]; /* per bucket, not cumulative; last: +Inf */
    double sum;
    uint64_t count;
} router_hist_t;

void router_hist_init(router_hist_t *h, const double *bounds, int n_bounds);
void router_hist_observe(router_hist_t *h, double v);
/* Writes name_bucket{le=...}, name_sum and name_count lines (HELP and TYPE first). */
void router_hist_write(const router_hist_t *h, FILE *f, const char *name, const char *help);

typedef struct router_metrics router_metrics_t;

/* What the server asks its owner for: the body of a GET, by path. Returns the HTTP status
 * (200, 404, 503, ...) and writes the body to f. */
typedef int (*router_metrics_render_fn)(void *ctx, const char *path, FILE *f);

/* Listens on addr:port (addr "*" or "0.0.0.0": every interface). BT_ERR_IO (logged) when the
 * port cannot be bound. */
int router_metrics_open(const char *addr, int port, router_metrics_render_fn render, void *ctx,
                        router_metrics_t **out);
/* NULL-safe; closes every connection. */
void router_metrics_close(router_metrics_t *m);
/* Accepts, reads and answers whatever is ready, never blocking; closes idle connections. */
void router_metrics_poll(router_metrics_t *m, uint64_t now_ms);
/* The port it listens on (the one given, or the kernel's choice for port 0). */
int router_metrics_port(const router_metrics_t *m);

#endif
