/* SPDX-License-Identifier: MIT */
/*
 * router_stats.c - what the monitoring endpoint (metrics.h) reports: the router's counters and
 * request states, every instance as of its last heartbeat, and latency histograms of the
 * requests that completed, as the router relayed them (TTFT: from ISSUED to the first token
 * sent on; TPOT: first to last token over the tokens after the first; duration: ISSUED to
 * RESULT).
 */
#include <string.h>

#include "router_impl.h"

static const double latency_bounds[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                        0.5,   1,      2.5,   5,    10,    30,   60};
static const double tpot_bounds[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                     0.05,   0.1,   0.25,   0.5,   1};
static const double wait_bounds[] = {5e-6,  1e-5,   2.5e-5, 5e-5, 1e-4,  2.5e-4, 5e-4,
                                     0.001, 0.0025, 0.005,  0.01, 0.025, 0.1};
#define N_OF(a) ((int)(sizeof(a) / sizeof(a)[0]))

void router_stats_init(router_t *r)
{
    router_hist_init(&r->h_ttft, latency_bounds, N_OF(latency_bounds));
    router_hist_init(&r->h_tpot, tpot_bounds, N_OF(tpot_bounds));
    router_hist_init(&r->h_total, latency_bounds, N_OF(latency_bounds));
    router_hist_init(&r->h_wait, wait_bounds, N_OF(wait_bounds));
}

void router_stats_input_wait(router_t *r, uint64_t rx_ns)
{
    uint64_t now = bt_rpc_now_ns();
    router_hist_observe(&r->h_wait, now > rx_ns ? (double)(now - rx_ns) / 1e9 : 0);
}

void router_stats_observe(router_t *r, const router_request_t *rq, uint64_t now_ns)
{
    if (!rq->first_ns || rq->first_ns < rq->issued_ns)
        return; /* nothing relayed, or a clock step */
    router_hist_observe(&r->h_ttft, (double)(rq->first_ns - rq->issued_ns) / 1e9);
    if (rq->n_out > 1 && rq->last_ns >= rq->first_ns)
        router_hist_observe(&r->h_tpot,
                            (double)(rq->last_ns - rq->first_ns) / 1e9 / (rq->n_out - 1));
    if (now_ns >= rq->issued_ns)
        router_hist_observe(&r->h_total, (double)(now_ns - rq->issued_ns) / 1e9);
}

/* A label value: backslash, double quote and newline escaped, as the text format wants. */
static void label(FILE *f, const char *s)
{
    fputc('"', f);
    for (; *s; s++) {
        if (*s == '\\' || *s == '"')
            fprintf(f, "\\%c", *s);
        else if (*s == '\n')
            fputs("\\n", f);
        else
            fputc(*s, f);
    }
    fputc('"', f);
}

static void head(FILE *f, const char *name, const char *type, const char *help)
{
    fprintf(f, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* The per-instance metrics, in the order per_instance knows them by. */
typedef struct {
    const char *name, *type, *help;
} metric_t;
static const metric_t instance_metrics[] = {
    {"baton_instance_up", "gauge",
     "1 when the instance is alive, not draining and serves the cluster's model"},
    {"baton_instance_queue_length", "gauge", "Requests waiting on the instance (last heartbeat)"},
    {"baton_instance_running", "gauge",
     "Requests in the instance's running batch (last heartbeat)"},
    {"baton_instance_kv_blocks_free", "gauge", "Free KV blocks of the instance (last heartbeat)"},
    {"baton_instance_kv_blocks_total", "gauge", "KV blocks of the instance's pool"},
    {"baton_instance_assigned_total", "counter",
     "Parts of requests the router has assigned to the instance"},
};

/* One sample per instance of metric which: name{instance="...",role="..."} value. */
static void per_instance(router_t *r, FILE *f, const metric_t *m, int which)
{
    const char *name = m->name;
    head(f, name, m->type, m->help);
    for (int i = 0; i < router_instances_count(r->inst); i++) {
        const router_instance_t *x = router_instances_at(r->inst, i);
        uint64_t v = which == 0   ? (uint64_t)(x->alive && !x->draining && x->model_ok)
                     : which == 1 ? x->queue_len
                     : which == 2 ? x->running
                     : which == 3 ? x->kv_free_blocks
                     : which == 4 ? x->kv_total_blocks
                                  : x->n_assigned;
        fprintf(f, "%s{instance=", name);
        label(f, x->name);
        fprintf(f, ",role=\"%s\"} %llu\n", bt_rpc_role_name(x->role), (unsigned long long)v);
    }
}

int router_stats_render(void *ctx, const char *path, FILE *f)
{
    router_t *r = ctx;
    Baton__HealthReply h;
    router_health(r, &h);
    if (!strcmp(path, "/health")) {
        fputs(h.ok ? "ok\n" : "cannot serve\n", f);
        return h.ok ? 200 : 503;
    }
    if (strcmp(path, "/metrics") != 0)
        return 404;
    head(f, "baton_router_up", "gauge", "1 when the cluster can serve (HEALTH ok)");
    fprintf(f, "baton_router_up %d\n", h.ok ? 1 : 0);
    head(f, "baton_router_requests_total", "counter", "Requests by how they ended or were refused");
    uint64_t completed = r->n_finished - r->n_failed - r->n_cancelled;
    fprintf(f,
            "baton_router_requests_total{outcome=\"accepted\"} %llu\n"
            "baton_router_requests_total{outcome=\"refused\"} %llu\n"
            "baton_router_requests_total{outcome=\"completed\"} %llu\n"
            "baton_router_requests_total{outcome=\"failed\"} %llu\n"
            "baton_router_requests_total{outcome=\"cancelled\"} %llu\n",
            (unsigned long long)r->n_accepted, (unsigned long long)r->n_rejected,
            (unsigned long long)completed, (unsigned long long)r->n_failed,
            (unsigned long long)r->n_cancelled);
    head(f, "baton_router_failovers_total", "counter", "Requests placed again after a failure");
    fprintf(f, "baton_router_failovers_total %llu\n", (unsigned long long)r->n_failovers);
    head(f, "baton_router_orphans_aborted_total", "counter",
         "Requests an instance still held that the router did not place there, ABORTed");
    fprintf(f, "baton_router_orphans_aborted_total %llu\n", (unsigned long long)r->n_orphans);
    head(f, "baton_router_requests", "gauge", "Requests held by the router, by state");
    static const char *const states[] = {"queued", "assigning", "running", "cancelling",
                                         "finishing"};
    for (int s = 0; s <= RQ_FINISHING; s++)
        fprintf(f, "baton_router_requests{state=\"%s\"} %zu\n", states[s], r->n_state[s]);
    head(f, "baton_router_connections", "gauge",
         "Connections past the ZeroMQ handshake, by socket (clients, daemons)");
    fprintf(f,
            "baton_router_connections{socket=\"clients\"} %d\n"
            "baton_router_connections{socket=\"cluster\"} %d\n",
            bt_zmtp_peers(r->clients), bt_zmtp_peers(r->cluster));
    head(f, "baton_router_connections_refused_total", "counter",
         "Connections the router closed for breaking the wire protocol or its limits");
    fprintf(f,
            "baton_router_connections_refused_total{socket=\"clients\"} %llu\n"
            "baton_router_connections_refused_total{socket=\"cluster\"} %llu\n",
            (unsigned long long)bt_zmtp_refused(r->clients),
            (unsigned long long)bt_zmtp_refused(r->cluster));
    for (int k = 0; k < N_OF(instance_metrics); k++)
        per_instance(r, f, &instance_metrics[k], k);
    router_hist_write(&r->h_ttft, f, "baton_router_ttft_seconds",
                      "Time to first token of completed requests, as relayed by the router");
    router_hist_write(&r->h_tpot, f, "baton_router_tpot_seconds",
                      "Time per output token after the first, of completed requests");
    router_hist_write(&r->h_total, f, "baton_router_request_duration_seconds",
                      "From arrival to result, of completed requests");
    if (r->p.stamp_input)
        router_hist_write(&r->h_wait, f, "baton_router_input_wait_seconds",
                          "How long messages waited in the router's TCP sockets before it read "
                          "them (the kernel's receive stamps)");
    return 200;
}
