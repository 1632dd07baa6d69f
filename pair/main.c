/* SPDX-License-Identifier: MIT */
/*
 * main.c - baton-pair: one member of an AcceLLM pair. Parses the config, builds the model,
 * engine, KV-transfer link, role and worker, runs until drained, tears down.
 */
#include <stddef.h>
#include <string.h>

#include "common/daemon.h"
#include "common/log.h"
#include "common/status.h"
#include "pair.h"
#include "prefill/kvlink.h"

typedef struct {
    bt_daemon_cfg_t daemon;
    bt_kvlink_cfg_t kv;
    char *partner;
    char *serving;
    int sync_rows;
    char *kv_stream;
} pair_cfg_t;

static const bt_cfg_opt_t pair_opts[] = {
    BT_DAEMON_OPTS(pair_cfg_t),
    BT_KVLINK_OPTS(pair_cfg_t),
    {"partner", 0, BT_CFG_STRING, NULL, 0, 0, offsetof(pair_cfg_t, partner),
     "the partner's instance id (required)"},
    {"serving", 0, BT_CFG_STRING, "decode", 0, 0, offsetof(pair_cfg_t, serving),
     "what to serve at start: prefill or decode (the router switches it)"},
    {"sync-rows", 0, BT_CFG_INT, "1", 0, 1, offsetof(pair_cfg_t, sync_rows),
     "1: send every step's new KV rows to the partner's replica; 0: the prompt's KV only"},
    {"kv-stream", 0, BT_CFG_STRING, "layer", 0, 0, offsetof(pair_cfg_t, kv_stream),
     "the prompt's KV to the partner: layer (during the forward) or whole (after it)"},
};

static const bt_cfg_table_t pair_table = {
    .prog = "baton-pair",
    .summary = "AcceLLM pair member: prefills, decodes, keeps replicas of its partner's requests.",
    .opts = pair_opts,
    .n_opts = sizeof pair_opts / sizeof pair_opts[0],
};

static int serve(const pair_cfg_t *c, bt_daemon_t *d)
{
    const bt_daemon_cfg_t *dc = &c->daemon;
    bt_kvlink_t *link = NULL;
    bt_pair_t *role = NULL;
    bt_worker_t *w = NULL;
    int st = bt_kvlink_create_from_cfg(&c->kv, d->engine, d->instance_id, d->model_id, &link);
    if (st == BT_OK) {
        bt_pair_params_t pp = {.engine = d->engine,
                               .link = link,
                               .self = d->instance_id,
                               .partner = c->partner,
                               .serving = strcmp(c->serving, "prefill") == 0 ? BATON__ROLE__PREFILL
                                                                             : BATON__ROLE__DECODE,
                               .max_batch_seqs = dc->max_batch_seqs < dc->max_batch_tokens
                                                     ? dc->max_batch_seqs
                                                     : dc->max_batch_tokens,
                               .max_requests = dc->max_requests,
                               .peer_wait_ms = c->kv.peer_wait_ms,
                               .sync_rows = c->sync_rows,
                               .layerwise = strcmp(c->kv_stream, "whole") != 0,
                               .steplog = d->steplog};
        st = bt_pair_create(&pp, &role);
    }
    if (st == BT_OK) {
        bt_worker_params_t wp;
        bt_daemon_worker_params(dc, d, BATON__ROLE__PAIR, &bt_pair_ops, role, &wp);
        st = bt_worker_create(&wp, &w);
    }
    if (st == BT_OK)
        st = bt_worker_run(w);
    else
        bt_error("baton-pair: cannot start: %s", bt_status_str(st));
    bt_worker_destroy(w);
    bt_pair_destroy(role);
    bt_kvlink_destroy(link);
    return st;
}

int main(int argc, char **argv)
{
    bt_worker_block_signals();
    pair_cfg_t c = {0};
    int rc = bt_daemon_parse(&pair_table, &c, offsetof(pair_cfg_t, daemon), argc, argv);
    if (rc >= 0) {
        bt_cfg_free(&pair_table, &c);
        return rc;
    }
    if (!c.partner || !c.partner[0] ||
        (strcmp(c.serving, "prefill") != 0 && strcmp(c.serving, "decode") != 0)) {
        bt_error("baton-pair: --partner ID is required and --serving is prefill or decode");
        bt_cfg_free(&pair_table, &c);
        return 2;
    }
    if (strcmp(c.daemon.backend, "cpu") != 0) {
        /* The replica's rows are packed from and applied to the pool in host memory. */
        bt_error("baton-pair: runs on the cpu backend only, not '%s'", c.daemon.backend);
        bt_cfg_free(&pair_table, &c);
        return 2;
    }
    bt_daemon_t d;
    int st = bt_daemon_setup(&c.daemon, BATON__ROLE__PAIR, &d);
    if (st == BT_OK)
        st = serve(&c, &d);
    bt_daemon_teardown(&d);
    bt_cfg_free(&pair_table, &c);
    return st == BT_OK ? 0 : 1;
}
