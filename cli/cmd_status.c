/* SPDX-License-Identifier: MIT */
/*
 * cmd_status.c - `baton status`: what a running cluster's router knows, from its HEALTH and
 * INFO replies: whether it can serve, the requests it holds, its limits, and every instance
 * with its role, liveness, queue, running sequences and KV use as of its last heartbeat. Exit
 * status 0 when the cluster can serve, 1 when it cannot or the router does not answer (so it
 * doubles as a probe for scripts).
 */
#include <stddef.h>
#include <stdio.h>

#include "baton_client.h"
#include "cli.h"
#include "common/config.h"
#include "common/json.h"
#include "common/rpc.h"
#include "common/status.h"

typedef struct {
    char *router;
    int json, timeout_ms;
} status_cfg_t;

#define OPT(n, s, t, d, lo, hi, f, h)                                                              \
    {                                                                                              \
        n, s, t, d, lo, hi, offsetof(status_cfg_t, f), h                                           \
    }
static const bt_cfg_opt_t status_opts[] = {
    OPT("router", 'r', BT_CFG_STRING, "tcp://127.0.0.1:5555", 0, 0, router, "router endpoint"),
    OPT("json", 0, BT_CFG_BOOL, "0", 0, 0, json, "print the status as JSON"),
    OPT("timeout-ms", 0, BT_CFG_INT, "5000", 1, 1 << 30, timeout_ms,
        "give up when the router has not answered after this long"),
};
static const bt_cfg_table_t status_table = {
    .prog = "baton status",
    .summary = "Shows a running cluster as its router sees it; exit 0 when it can serve.",
    .opts = status_opts,
    .n_opts = sizeof status_opts / sizeof status_opts[0],
};

/* KV blocks in use, percent; 0 when the instance reported no pool. */
static double kv_used_pct(const bt_client_instance_t *x)
{
    if (!x->kv_total_blocks || x->kv_free_blocks > x->kv_total_blocks)
        return 0;
    return 100.0 * (x->kv_total_blocks - x->kv_free_blocks) / x->kv_total_blocks;
}

static void print_text(const char *router, const bt_client_health_t *h, const bt_client_info_t *in)
{
    printf("router %s: %s (protocol %u, policy %s)\n", router, h->ok ? "can serve" : "cannot serve",
           in->protocol_version, in->policy);
    printf("model %s: context %u, vocabulary %u; limits: prompt %u tokens, output %u\n", in->model,
           in->n_ctx, in->n_vocab, in->max_prompt_tokens, in->max_tokens);
    printf("requests: %u queued at the router, %u running; instances alive: %u prefill, %u "
           "decode, %u colocated\n\n",
           h->queued, h->running, h->n_prefill, h->n_decode, h->n_colocated);
    printf("%-24s %-14s %-5s %6s %8s %9s %s\n", "instance", "role", "state", "queue", "running",
           "KV used", "KV blocks");
    for (size_t i = 0; i < in->n_instances; i++) {
        const bt_client_instance_t *x = &in->instances[i];
        char role[32];
        if (x->role == BATON__ROLE__PAIR)
            snprintf(role, sizeof role, "pair/%s", bt_rpc_role_name(x->serving));
        else
            snprintf(role, sizeof role, "%s", bt_rpc_role_name(x->role));
        printf("%-24s %-14s %-5s %6u %8u %8.1f%% %u / %u", x->id, role, x->alive ? "up" : "down",
               x->queue_len, x->running, kv_used_pct(x), x->kv_total_blocks - x->kv_free_blocks,
               x->kv_total_blocks);
        if (x->role == BATON__ROLE__PAIR)
            printf("  (partner %s, %u replicas)", x->partner, x->replicas);
        printf("\n");
    }
    if (in->n_instances == 0)
        printf("(no instance has registered)\n");
    else
        printf("(queue, running and KV as of each instance's last heartbeat)\n");
}

static void print_json(const char *router, const bt_client_health_t *h, const bt_client_info_t *in)
{
    printf("{\"router\": ");
    bt_json_write_str(stdout, router);
    printf(", \"ok\": %s, \"protocol_version\": %u, \"policy\": ", h->ok ? "true" : "false",
           in->protocol_version);
    bt_json_write_str(stdout, in->policy);
    printf(", \"model\": ");
    bt_json_write_str(stdout, in->model);
    printf(", \"n_ctx\": %u, \"n_vocab\": %u, \"max_prompt_tokens\": %u, \"max_tokens\": %u, "
           "\"queued\": %u, \"running\": %u, \"instances\": [",
           in->n_ctx, in->n_vocab, in->max_prompt_tokens, in->max_tokens, h->queued, h->running);
    for (size_t i = 0; i < in->n_instances; i++) {
        const bt_client_instance_t *x = &in->instances[i];
        printf("%s{\"id\": ", i ? ", " : "");
        bt_json_write_str(stdout, x->id);
        printf(", \"role\": \"%s\", \"alive\": %s, \"queue_len\": %u, \"running\": %u, "
               "\"kv_free_blocks\": %u, \"kv_total_blocks\": %u",
               bt_rpc_role_name(x->role), x->alive ? "true" : "false", x->queue_len, x->running,
               x->kv_free_blocks, x->kv_total_blocks);
        if (x->role == BATON__ROLE__PAIR) {
            printf(", \"serving\": \"%s\", \"partner\": ", bt_rpc_role_name(x->serving));
            bt_json_write_str(stdout, x->partner);
            printf(", \"replicas\": %u", x->replicas);
        }
        printf("}");
    }
    printf("]}\n");
}

static int status_main(const status_cfg_t *c)
{
    bt_client_params_t cp = {.endpoint = c->router, .timeout_ms = c->timeout_ms};
    bt_client_t *cl = NULL;
    bt_client_info_t *info = NULL;
    bt_client_health_t h;
    int st = bt_client_connect(&cp, &cl);
    if (st == BT_CLIENT_OK)
        st = bt_client_health(cl, c->timeout_ms, &h);
    if (st == BT_CLIENT_OK)
        st = bt_client_info(cl, c->timeout_ms, &info);
    if (st != BT_CLIENT_OK) {
        fprintf(stderr, "baton status: router %s: %s\n", c->router, bt_client_strerror(st));
        bt_client_close(cl);
        return 1;
    }
    if (c->json)
        print_json(c->router, &h, info);
    else
        print_text(c->router, &h, info);
    bt_client_info_free(info);
    bt_client_close(cl);
    return h.ok ? 0 : 1;
}

int cli_status(int argc, char **argv)
{
    status_cfg_t c = {0};
    int st = bt_cfg_parse(&status_table, &c, argc, argv, 1, NULL, 0, NULL);
    int rc = st == BT_AGAIN ? 0 : st != BT_OK ? 2 : status_main(&c);
    bt_cfg_free(&status_table, &c);
    return rc;
}
