/* SPDX-License-Identifier: MIT */
/*
 * daemon.c - shared set-up of the serving daemons (see daemon.h).
 */
#include "daemon.h"

#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "rpc.h"
#include "status.h"

int bt_daemon_parse(const bt_cfg_table_t *t, void *cfg, size_t daemon_offset, int argc, char **argv)
{
    int st = bt_cfg_parse(t, cfg, argc, argv, 1, NULL, 0, NULL);
    if (st != BT_OK)
        return st == BT_AGAIN ? 0 : 2;
    const bt_daemon_cfg_t *c = (const bt_daemon_cfg_t *)((const char *)cfg + daemon_offset);
    int level = bt_log_level_parse(c->log_level);
    if (level < 0) {
        fprintf(stderr, "%s: unknown log level '%s'\n", t->prog, c->log_level);
        bt_cfg_usage(t, stderr);
        return 2;
    }
    if (!c->model) {
        fprintf(stderr, "%s: --model FILE is required\n", t->prog);
        bt_cfg_usage(t, stderr);
        return 2;
    }
    int kv = bt_type_parse(c->kv_type);
    if (kv != BT_TYPE_F32 && kv != BT_TYPE_F16 && kv != BT_TYPE_BF16) {
        fprintf(stderr, "%s: --kv-type wants f32, f16 or bf16, not '%s'\n", t->prog, c->kv_type);
        return 2;
    }
    bt_log_set_level((bt_log_level_t)level);
    return -1;
}

static int32_t context_of(const bt_daemon_cfg_t *c, const bt_model_hparams_t *hp)
{
    if (c->ctx > 0)
        return c->ctx;
    return hp->n_ctx_train > 0 && hp->n_ctx_train < 4096 ? hp->n_ctx_train : 4096;
}

int bt_daemon_setup(const bt_daemon_cfg_t *c, Baton__Role role, bt_daemon_t *d)
{
    memset(d, 0, sizeof *d);
    bt_model_params_t mp = {.path = c->model, .tokenizer_path = c->tokenizer};
    int st = bt_model_load(&mp, &d->model);
    if (st != BT_OK) {
        bt_error("cannot load model %s: %s", c->model, bt_status_str(st));
        return st;
    }
    d->n_ctx = context_of(c, &d->model->hp);
    bt_engine_params_t ep = {.backend = c->backend,
                             .n_threads = c->threads,
                             .max_batch_tokens = c->max_batch_tokens,
                             .max_seqs = c->max_batch_seqs,
                             .block_size = c->block_size,
                             .kv_type = (bt_type_t)bt_type_parse(c->kv_type),
                             .kv_budget_bytes = c->kv_mem};
    if ((st = bt_engine_create(d->model, &ep, &d->engine)) != BT_OK) {
        bt_error("cannot create the engine: %s", bt_status_str(st));
        goto err;
    }
    if ((st = bt_model_id_str(&d->model->hp, d->model_id, sizeof d->model_id)) != BT_OK)
        goto err;
    if (c->step_log && (st = bt_steplog_open(c->step_log, &d->steplog)) != BT_OK)
        goto err;
    if (c->id) {
        snprintf(d->instance_id, sizeof d->instance_id, "%s", c->id);
    } else {
        char host[64] = "host";
        gethostname(host, sizeof host - 1);
        snprintf(d->instance_id, sizeof d->instance_id, "%s-%s-%d",
                 role >= BATON__ROLE__PREFILL && role <= BATON__ROLE__PAIR ? bt_rpc_role_name(role)
                                                                           : "daemon",
                 host, (int)getpid());
    }
    bt_kv_pool_t *pool = bt_engine_kv_pool(d->engine);
    bt_info("%s: model %s (%s), context %d, KV pool %d blocks of %d tokens (%s)", d->instance_id,
            c->model, d->model_id, d->n_ctx, bt_kv_pool_n_blocks(pool), bt_kv_pool_block_size(pool),
            c->kv_type);
    return BT_OK;
err:
    bt_daemon_teardown(d);
    return st;
}

void bt_daemon_teardown(bt_daemon_t *d)
{
    bt_steplog_close(d->steplog);
    d->steplog = NULL;
    bt_engine_destroy(d->engine);
    d->engine = NULL;
    bt_model_destroy(d->model);
    d->model = NULL;
}

void bt_daemon_worker_params(const bt_daemon_cfg_t *c, const bt_daemon_t *d, Baton__Role role,
                             const bt_worker_ops_t *ops, void *ctx, bt_worker_params_t *out)
{
    bt_kv_pool_t *pool = bt_engine_kv_pool(d->engine);
    *out = (bt_worker_params_t){
        .instance_id = d->instance_id,
        .router = c->router,
        .model_id = d->model_id,
        .limits = {.role = role,
                   .n_vocab = d->model->hp.n_vocab,
                   .n_ctx = d->n_ctx,
                   .block_size = bt_kv_pool_block_size(pool),
                   .max_blocks = bt_kv_pool_n_blocks(pool)},
        .heartbeat_ms = c->heartbeat_ms,
        .drain_timeout_ms = c->drain_timeout_ms,
        .max_requests = c->max_requests,
        .ops = ops,
        .ctx = ctx,
        .steplog = d->steplog,
    };
}
