/* SPDX-License-Identifier: MIT */
/*
 * main.c - baton-router: parses its option table, builds the router, serves until SIGTERM or
 * SIGINT and the drain that follows, tears down. Exit 0 after a clean drain, 1 on failure,
 * 2 on a usage error. All logic lives in router.c and the modules it uses.
 */
#include <errno.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>

#include "common/config.h"
#include "common/log.h"
#include "common/status.h"
#include "router.h"

typedef struct {
    int port, cluster_port;
    char *bind, *client_endpoint, *cluster_endpoint;
    char *model, *tokenizer, *model_id, *policy, *mode, *profile, *log_level;
    int dead_after_ms, failover_timeout_ms, queue_timeout_ms, drain_timeout_ms;
    int finish_grace_ms, tick_ms, pair_idle_ms, pair_switch_ms;
    int max_prompt_tokens, max_tokens, default_max_tokens;
    int max_queue, max_requests, max_retries, max_instances;
    float slo_ttft_ms, slo_tpot_ms;
    int busy_poll, poll_us, metrics_port, stamp_input;
} cfg_t;

#define OPT(n, t, d, lo, hi, f, h)                                                                 \
    {                                                                                              \
        n, 0, t, d, lo, hi, offsetof(cfg_t, f), h                                                  \
    }
static const bt_cfg_opt_t opts[] = {
    OPT("port", BT_CFG_INT, "5555", 1, 65535, port, "TCP port for clients"),
    OPT("cluster-port", BT_CFG_INT, "5556", 1, 65535, cluster_port, "TCP port for daemons"),
    OPT("bind", BT_CFG_STRING, "*", 0, 0, bind, "address to bind the ports on"),
    OPT("client-endpoint", BT_CFG_STRING, NULL, 0, 0, client_endpoint,
        "ZeroMQ endpoint for clients (overrides --bind/--port), e.g. ipc:///tmp/baton.sock"),
    OPT("cluster-endpoint", BT_CFG_STRING, NULL, 0, 0, cluster_endpoint,
        "ZeroMQ endpoint for daemons (overrides --bind/--cluster-port)"),
    OPT("model", BT_CFG_STRING, NULL, 0, 0, model,
        "model file (.gguf or llama2.c .bin): tokenizer for text prompts and the model id"),
    OPT("tokenizer", BT_CFG_STRING, NULL, 0, 0, tokenizer, "llama2.c tokenizer (.bin models)"),
    OPT("model-id", BT_CFG_STRING, NULL, 0, 0, model_id,
        "model id to serve (default: from --model, else the first instance's)"),
    OPT("policy", BT_CFG_STRING, "least-loaded", 0, 0, policy,
        "placement policy: round-robin, least-loaded, slo-aware"),
    OPT("mode", BT_CFG_STRING, "auto", 0, 0, mode,
        "auto (P+D pairs, else colocated), disagg (pairs only), colocated (colocated only)"),
    OPT("profile", BT_CFG_STRING, NULL, 0, 0, profile, "latency profile JSON (slo-aware)"),
    OPT("dead-after-ms", BT_CFG_INT, "3000", 10, 3600000, dead_after_ms,
        "an instance silent this long is dead"),
    OPT("failover-timeout-ms", BT_CFG_INT, "10000", 1, 3600000, failover_timeout_ms,
        "a failed-over request waits this long for an instance, then fails"),
    OPT("queue-timeout-ms", BT_CFG_INT, "10000", 1, 3600000, queue_timeout_ms,
        "a new request waits this long for an instance, then fails"),
    OPT("drain-timeout-ms", BT_CFG_INT, "30000", 0, 3600000, drain_timeout_ms,
        "on SIGTERM, requests still running after this fail"),
    OPT("finish-grace-ms", BT_CFG_INT, "500", 0, 60000, finish_grace_ms,
        "after the last DONE, wait this long for a late prefill DONE or token (then run what is "
        "missing again)"),
    OPT("tick-ms", BT_CFG_INT, "10", 1, 1000, tick_ms, "housekeeping period"),
    OPT("busy-poll", BT_CFG_BOOL, "0", 0, 0, busy_poll,
        "the event loop polls without sleeping: half the added latency, a whole core busy"),
    OPT("poll-us", BT_CFG_INT, "50", 0, 1000000, poll_us,
        "after each burst of work the event loop polls this many microseconds before it "
        "sleeps: no wake-up on the path of a message that follows within that time"),
    OPT("metrics-port", BT_CFG_INT, "0", 0, 65535, metrics_port,
        "HTTP port for GET /metrics (Prometheus) and /health, on --bind; 0: none"),
    OPT("stamp-input", BT_CFG_BOOL, "0", 0, 0, stamp_input,
        "note how long each message waits in the router's TCP sockets before it is read (the "
        "kernel's receive stamps): baton_router_input_wait_seconds on /metrics"),
    OPT("pair-idle-ms", BT_CFG_INT, "1000", 1, 3600000, pair_idle_ms,
        "pairs: a member serving prefill with no prompt this long switches to decode"),
    OPT("pair-switch-ms", BT_CFG_INT, "200", 1, 3600000, pair_switch_ms,
        "pairs: least time between two role switches of one pair"),
    OPT("max-prompt-tokens", BT_CFG_INT, "4096", 1, 1 << 24, max_prompt_tokens,
        "longest prompt accepted, in tokens"),
    OPT("max-tokens", BT_CFG_INT, "4096", 1, 1 << 24, max_tokens,
        "most output tokens a request may ask for"),
    OPT("default-max-tokens", BT_CFG_INT, "256", 1, 1 << 24, default_max_tokens,
        "output tokens when a request does not say"),
    OPT("max-queue", BT_CFG_INT, "4096", 1, 1 << 24, max_queue,
        "requests waiting for placement before BT_ERR_OVERLOADED"),
    OPT("max-requests", BT_CFG_INT, "65536", 1, 1 << 24, max_requests,
        "requests in flight before BT_ERR_OVERLOADED"),
    OPT("max-retries", BT_CFG_INT, "3", 0, 100, max_retries, "failovers one request may take"),
    OPT("max-instances", BT_CFG_INT, "1024", 1, 1 << 20, max_instances, "instances tracked"),
    OPT("slo-ttft-ms", BT_CFG_FLOAT, "1000", 0.001, 1e9, slo_ttft_ms,
        "default time-to-first-token objective"),
    OPT("slo-tpot-ms", BT_CFG_FLOAT, "100", 0.001, 1e9, slo_tpot_ms,
        "default time-per-output-token objective"),
    OPT("log-level", BT_CFG_STRING, "info", 0, 0, log_level, "debug, info, warn, error, off"),
};
static const bt_cfg_table_t table = {
    .prog = "baton-router",
    .summary = "Places requests on prefill/decode instances and relays their token streams.",
    .opts = opts,
    .n_opts = sizeof opts / sizeof opts[0],
};

static router_t *the_router;

static void on_signal(int sig)
{
    (void)sig;
    if (the_router)
        router_stop(the_router);
}

static void install_signals(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
}

static void fill_params(const cfg_t *c, router_params_t *p, char *cl, char *cu, size_t cap)
{
    snprintf(cl, cap, "tcp://%s:%d", c->bind, c->port);
    snprintf(cu, cap, "tcp://%s:%d", c->bind, c->cluster_port);
    *p = (router_params_t){
        .client_endpoint = c->client_endpoint ? c->client_endpoint : cl,
        .cluster_endpoint = c->cluster_endpoint ? c->cluster_endpoint : cu,
        .model_path = c->model,
        .tokenizer_path = c->tokenizer,
        .model_id = c->model_id,
        .policy = c->policy,
        .mode = c->mode,
        .profile_path = c->profile,
        .dead_after_ms = c->dead_after_ms,
        .failover_timeout_ms = c->failover_timeout_ms,
        .queue_timeout_ms = c->queue_timeout_ms,
        .drain_timeout_ms = c->drain_timeout_ms,
        .finish_grace_ms = c->finish_grace_ms,
        .tick_ms = c->tick_ms,
        .busy_poll = c->busy_poll,
        .poll_us = c->poll_us,
        .metrics_port = c->metrics_port,
        .stamp_input = c->stamp_input,
        .metrics_addr = c->bind,
        .pair_idle_ms = c->pair_idle_ms,
        .pair_switch_ms = c->pair_switch_ms,
        .max_prompt_tokens = (uint32_t)c->max_prompt_tokens,
        .max_tokens = (uint32_t)c->max_tokens,
        .default_max_tokens = (uint32_t)c->default_max_tokens,
        .max_queue = c->max_queue,
        .max_requests = c->max_requests,
        .max_retries = c->max_retries,
        .max_instances = c->max_instances,
        .slo_ttft_ms = c->slo_ttft_ms,
        .slo_tpot_ms = c->slo_tpot_ms,
    };
}

/* Every client and daemon holds a connection, and so a descriptor, for as long as it is
 * connected: the soft limit (often 1024) is raised to the hard one, as servers do. */
static void raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur >= rl.rlim_max)
        return;
    rlim_t was = rl.rlim_cur;
    rl.rlim_cur = rl.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
        bt_warn("router: cannot raise the descriptor limit from %llu: %s", (unsigned long long)was,
                strerror(errno));
}

int main(int argc, char **argv)
{
    cfg_t c = {0};
    int st = bt_cfg_parse(&table, &c, argc, argv, 1, NULL, 0, NULL);
    if (st == BT_AGAIN)
        return 0;
    if (st != BT_OK)
        return 2;
    int level = bt_log_level_parse(c.log_level);
    if (level < 0) {
        fprintf(stderr, "baton-router: unknown --log-level '%s'\n", c.log_level);
        bt_cfg_usage(&table, stderr);
        bt_cfg_free(&table, &c);
        return 2;
    }
    if (c.default_max_tokens > c.max_tokens) /* a lower --max-tokens caps the default too */
        c.default_max_tokens = c.max_tokens;
    bt_log_set_level((bt_log_level_t)level);
    router_params_t p;
    char cl[300], cu[300];
    fill_params(&c, &p, cl, cu, sizeof cl);
    raise_nofile();
    router_t *r = NULL;
    st = router_create(&p, &r);
    if (st == BT_OK) {
        the_router = r;
        install_signals();
        st = router_run(r);
        the_router = NULL;
        router_destroy(r);
    }
    bt_cfg_free(&table, &c);
    return st == BT_OK ? 0 : 1;
}
