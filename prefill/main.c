/* SPDX-License-Identifier: MIT */
/*
 * main.c - baton-prefill: the prefill daemon. Parses the config, builds the model, engine,
 * KV-transfer link, role and worker, runs until drained, tears down.
 */
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "common/daemon.h"
#include "common/log.h"
#include "common/status.h"
#include "kvlink.h"
#include "prefill.h"

typedef struct {
    bt_daemon_cfg_t daemon;
    bt_kvlink_cfg_t kv;
    char *kv_stream;
} prefill_cfg_t;

static const bt_cfg_opt_t prefill_opts[] = {
    BT_DAEMON_OPTS(prefill_cfg_t),
    BT_KVLINK_OPTS(prefill_cfg_t),
    {"kv-stream", 0, BT_CFG_STRING, "whole", 0, 0, offsetof(prefill_cfg_t, kv_stream),
     "KV shipping: whole (after the prefill) or layer (each layer as it is computed)"},
};
static const bt_cfg_table_t prefill_table = {
    .prog = "baton-prefill",
    .summary = "Prefill daemon: batches prompts, sends the first token, ships the KV to decode.",
    .opts = prefill_opts,
    .n_opts = sizeof prefill_opts / sizeof prefill_opts[0],
};

static int serve(const prefill_cfg_t *c, bt_daemon_t *d)
{
    const bt_daemon_cfg_t *dc = &c->daemon;
    bt_kvlink_t *link = NULL;
    bt_prefill_t *role = NULL;
    bt_worker_t *w = NULL;
    int st = bt_kvlink_create_from_cfg(&c->kv, d->engine, d->instance_id, d->model_id, &link);
    if (st == BT_OK) {
        bt_prefill_params_t pp = {.engine = d->engine,
                                  .link = link,
                                  .max_batch_seqs = dc->max_batch_seqs < dc->max_batch_tokens
                                                        ? dc->max_batch_seqs
                                                        : dc->max_batch_tokens,
                                  .layerwise = !strcmp(c->kv_stream, "layer"),
                                  .peer_wait_ms = c->kv.peer_wait_ms,
                                  .steplog = d->steplog};
        st = bt_prefill_create(&pp, &role);
    }
    if (st == BT_OK) {
        bt_worker_params_t wp;
        bt_daemon_worker_params(dc, d, BATON__ROLE__PREFILL, &bt_prefill_ops, role, &wp);
        st = bt_worker_create(&wp, &w);
    }
    if (st == BT_OK)
        st = bt_worker_run(w);
    else
        bt_error("baton-prefill: cannot start: %s", bt_status_str(st));
    bt_worker_destroy(w);
    bt_prefill_destroy(role);
    bt_kvlink_destroy(link);
    return st;
}

int main(int argc, char **argv)
{
    bt_worker_block_signals();
    prefill_cfg_t c = {0};
    int rc = bt_daemon_parse(&prefill_table, &c, offsetof(prefill_cfg_t, daemon), argc, argv);
    if (rc < 0 && strcmp(c.kv_stream, "whole") && strcmp(c.kv_stream, "layer")) {
        fprintf(stderr, "baton-prefill: --kv-stream must be whole or layer\n");
        bt_cfg_usage(&prefill_table, stderr);
        rc = 2;
    }
    if (rc >= 0) {
        bt_cfg_free(&prefill_table, &c);
        return rc;
    }
    bt_daemon_t d;
    int st = bt_daemon_setup(&c.daemon, BATON__ROLE__PREFILL, &d);
    if (st == BT_OK)
        st = serve(&c, &d);
    bt_daemon_teardown(&d);
    bt_cfg_free(&prefill_table, &c);
    return st == BT_OK ? 0 : 1;
}
