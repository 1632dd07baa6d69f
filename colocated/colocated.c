/* SPDX-License-Identifier: MIT */
/*
 * colocated.c - the colocated role (see colocated.h): assignments go straight into the batcher
 * as prompts; each step is one batcher iteration.
 */
#include "colocated.h"

#include "common/alloc.h"
#include "common/batcher.h"
#include "common/log.h"
#include "common/status.h"

struct bt_colocated {
    bt_batcher_t *batcher;
    bt_kv_pool_t *pool;
};

int bt_colocated_create(const bt_colocated_params_t *p, bt_colocated_t **out)
{
    bt_colocated_t *c = bt_calloc(1, sizeof *c);
    if (!c)
        return BT_ERR_NOMEM;
    bt_batcher_params_t bp = {.engine = p->engine,
                              .max_batch_seqs = p->max_batch_seqs,
                              .prefill_first = 1,
                              .growth_reserve = p->growth_reserve,
                              .max_requests = p->max_requests,
                              .steplog = p->steplog};
    int st = bt_batcher_create(&bp, &c->batcher);
    if (st != BT_OK) {
        bt_free(c);
        return st;
    }
    c->pool = bt_engine_kv_pool(p->engine);
    *out = c;
    return BT_OK;
}

void bt_colocated_destroy(bt_colocated_t *c)
{
    if (!c)
        return;
    bt_batcher_destroy(c->batcher);
    bt_free(c);
}

static void colo_command(void *ctx, bt_worker_t *w, const bt_cmd_t *cmd)
{
    bt_colocated_t *c = ctx;
    switch (cmd->kind) {
    case BT_CMD_ASSIGN: bt_batcher_add_prompt(c->batcher, w, cmd->req); break;
    case BT_CMD_ABORT:
        if (bt_batcher_abort(c->batcher, w, cmd->request_id, cmd->status) != BT_OK) {
            bt_debug("req %llu: abort of a request already finished",
                     (unsigned long long)cmd->request_id);
            bt_worker_forget(w, cmd->request_id);
        }
        break;
    case BT_CMD_KV: break; /* no transfers here */
    case BT_CMD_RESUME:
    case BT_CMD_SET_ROLE:
    case BT_CMD_ROLE: break; /* pair daemons only */
    }
}

static int colo_step(void *ctx, bt_worker_t *w)
{
    bt_colocated_t *c = ctx;
    int st = bt_batcher_step(c->batcher, w);
    bt_worker_stats_t s = {
        .queue_len = (uint32_t)bt_batcher_n_waiting(c->batcher),
        .running = (uint32_t)bt_batcher_n_running(c->batcher),
        .kv_free_blocks = (uint32_t)bt_kv_pool_n_free(c->pool),
        .kv_total_blocks = (uint32_t)bt_kv_pool_n_blocks(c->pool),
        .queued_tokens = (uint64_t)bt_batcher_waiting_tokens(c->batcher),
    };
    bt_worker_publish(w, &s);
    return st;
}

const bt_worker_ops_t bt_colocated_ops = {
    .command = colo_command,
    .step = colo_step,
};
