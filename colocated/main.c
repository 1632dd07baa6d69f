/* SPDX-License-Identifier: MIT */
/*
 * main.c - baton-colocated: a serving daemon that runs both phases of each request (continuous
 * batching, prefill first). Parses the config, builds the model, engine, role and worker, runs
 * until drained, tears down.
 */
#include <stddef.h>

#include "colocated.h"
#include "common/daemon.h"
#include "common/log.h"
#include "common/status.h"

typedef struct {
    bt_daemon_cfg_t daemon;
    float growth_reserve;
} colo_cfg_t;

static const bt_cfg_opt_t colo_opts[] = {
    BT_DAEMON_OPTS(colo_cfg_t),
    {"growth-reserve", 0, BT_CFG_FLOAT, "0", 0, 1, offsetof(colo_cfg_t, growth_reserve),
     BT_GROWTH_RESERVE_HELP},
};
static const bt_cfg_table_t colo_table = {
    .prog = "baton-colocated",
    .summary = "Serves both phases of each request: continuous batching, prefill first.",
    .opts = colo_opts,
    .n_opts = sizeof colo_opts / sizeof colo_opts[0],
};

static int serve(const colo_cfg_t *c, bt_daemon_t *d)
{
    int32_t seqs = c->daemon.max_batch_seqs < c->daemon.max_batch_tokens
                       ? c->daemon.max_batch_seqs
                       : c->daemon.max_batch_tokens;
    bt_colocated_params_t cp = {
        .engine = d->engine,
        .max_batch_seqs = seqs,
        .max_requests = c->daemon.max_requests,
        .growth_reserve = c->growth_reserve,
        .steplog = d->steplog,
    };
    bt_colocated_t *role = NULL;
    bt_worker_t *w = NULL;
    bt_worker_params_t wp;
    int st = bt_colocated_create(&cp, &role);
    if (st == BT_OK) {
        bt_daemon_worker_params(&c->daemon, d, BATON__ROLE__COLOCATED, &bt_colocated_ops, role,
                                &wp);
        st = bt_worker_create(&wp, &w);
    }
    if (st == BT_OK)
        st = bt_worker_run(w);
    else
        bt_error("baton-colocated: cannot start: %s", bt_status_str(st));
    bt_worker_destroy(w);
    bt_colocated_destroy(role);
    return st;
}

int main(int argc, char **argv)
{
    bt_worker_block_signals();
    colo_cfg_t c = {0};
    int rc = bt_daemon_parse(&colo_table, &c, offsetof(colo_cfg_t, daemon), argc, argv);
    if (rc >= 0) {
        bt_cfg_free(&colo_table, &c);
        return rc;
    }
    bt_daemon_t d;
    int st = bt_daemon_setup(&c.daemon, BATON__ROLE__COLOCATED, &d);
    if (st == BT_OK)
        st = serve(&c, &d);
    bt_daemon_teardown(&d);
    bt_cfg_free(&colo_table, &c);
    return st == BT_OK ? 0 : 1;
}
