/* SPDX-License-Identifier: MIT */
/*
 * main.c - baton-decode: the decode daemon. Parses the config, builds the model, engine,
 * KV-transfer link, role and worker, runs until drained, tears down.
 */
#include <stddef.h>

#include "common/daemon.h"
#include "common/log.h"
#include "common/status.h"
#include "decode.h"
#include "prefill/kvlink.h"

typedef struct {
    bt_daemon_cfg_t daemon;
    bt_kvlink_cfg_t kv;
    int arrival_timeout_ms;
    float growth_reserve;
} decode_cfg_t;

static const bt_cfg_opt_t decode_opts[] = {
    BT_DAEMON_OPTS(decode_cfg_t),
    BT_KVLINK_OPTS(decode_cfg_t),
    {"kv-arrival-timeout-ms", 0, BT_CFG_INT, "120000", 0, 1 << 30,
     offsetof(decode_cfg_t, arrival_timeout_ms),
     "cancel a reservation whose KV has not arrived after this long; 0: never"},
    {"growth-reserve", 0, BT_CFG_FLOAT, "0", 0, 1, offsetof(decode_cfg_t, growth_reserve),
     BT_GROWTH_RESERVE_HELP},
};
static const bt_cfg_table_t decode_table = {
    .prog = "baton-decode",
    .summary = "Decode daemon: reserves KV, receives it from prefill, decodes and streams tokens.",
    .opts = decode_opts,
    .n_opts = sizeof decode_opts / sizeof decode_opts[0],
};

static int serve(const decode_cfg_t *c, bt_daemon_t *d)
{
    const bt_daemon_cfg_t *dc = &c->daemon;
    bt_kvlink_t *link = NULL;
    bt_decode_t *role = NULL;
    bt_worker_t *w = NULL;
    int st = bt_kvlink_create_from_cfg(&c->kv, d->engine, d->instance_id, d->model_id, &link);
    if (st == BT_OK) {
        bt_decode_params_t pp = {.engine = d->engine,
                                 .link = link,
                                 .max_batch_seqs = dc->max_batch_seqs < dc->max_batch_tokens
                                                       ? dc->max_batch_seqs
                                                       : dc->max_batch_tokens,
                                 .max_requests = dc->max_requests,
                                 .peer_wait_ms = c->kv.peer_wait_ms,
                                 .arrival_timeout_ms = c->arrival_timeout_ms,
                                 .growth_reserve = c->growth_reserve,
                                 .steplog = d->steplog};
        st = bt_decode_create(&pp, &role);
    }
    if (st == BT_OK) {
        bt_worker_params_t wp;
        bt_daemon_worker_params(dc, d, BATON__ROLE__DECODE, &bt_decode_ops, role, &wp);
        st = bt_worker_create(&wp, &w);
    }
    if (st == BT_OK)
        st = bt_worker_run(w);
    else
        bt_error("baton-decode: cannot start: %s", bt_status_str(st));
    bt_worker_destroy(w);
    bt_decode_destroy(role);
    bt_kvlink_destroy(link);
    return st;
}

int main(int argc, char **argv)
{
    bt_worker_block_signals();
    decode_cfg_t c = {0};
    int rc = bt_daemon_parse(&decode_table, &c, offsetof(decode_cfg_t, daemon), argc, argv);
    if (rc >= 0) {
        bt_cfg_free(&decode_table, &c);
        return rc;
    }
    bt_daemon_t d;
    int st = bt_daemon_setup(&c.daemon, BATON__ROLE__DECODE, &d);
    if (st == BT_OK)
        st = serve(&c, &d);
    bt_daemon_teardown(&d);
    bt_cfg_free(&decode_table, &c);
    return st == BT_OK ? 0 : 1;
}
