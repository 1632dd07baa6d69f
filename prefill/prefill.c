/* SPDX-License-Identifier: MIT */
/*
 * prefill.c - the prefill role (see prefill.h): the compute side (schedule, forward, first
 * token, hand the KV to the loop for shipping) and the loop side (kvx sends).
 *
 * A request's KV crosses threads only as block ids: the compute thread keeps the blocks until
 * the loop thread reports the send's final event (BT_CMD_KV), and the loop thread never touches
 * the pool. A ship waits for its peer's connection (the decode instance connects to us when it
 * takes the request) for at most peer_wait_ms after its prefill.
 *
 * Layer-wise mode (--kv-stream layer): the compute thread reserves a prompt's blocks and hands
 * them to the loop before the forward (SHIP_STREAM), the loop starts a layer-wise kvx send, and
 * the engine's layer hook releases each layer of the prompts that complete in this forward as
 * soon as it is computed; the first token follows after the forward (SHIP_FINISH). The one
 * thing both threads touch is a pf_stream_t, under stream_mu: the compute thread stores the
 * layers done and, once the loop has published the send there, calls bt_kvx_send_layers_ready
 * (the only kvx call that may come from another thread); the loop publishes the send (and
 * releases the layers already done) when it starts it, and withdraws it before releasing it.
 * A prompt computed in chunks completes its layers only in its last chunk's forward: layer l of
 * the earlier chunks is final too, but kvx releases whole layers, and layer l of the last
 * chunk's tokens does not exist before that forward. So a chunked prompt overlaps its transfer
 * with its last chunk only.
 */
#include "prefill.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "common/alloc.h"
#include "common/clock.h"
#include "common/log.h"
#include "common/parfor.h"
#include "common/reqtable.h"
#include "common/rpc.h"
#include "common/sampler.h"
#include "common/sched_prefill.h"
#include "common/seqgen.h"
#include "common/status.h"

enum { PF_QUEUED = 1, PF_SHIPPING = 2 };

/* A layer-wise send as both threads see it; fields under bt_prefill_t.stream_mu. */
typedef bt_kvlink_stream_t pf_stream_t;

/* Compute side: one request. */
typedef struct {
    bt_req_t *req;
    bt_sched_item_t item;
    bt_kv_seq_t kv;
    int state;
    int abort_status;      /* 0, or why an abort was asked while shipping */
    const char *abort_why; /* DONE's detail for abort_status; NULL: "KV transfer failed" */
    int has_first;         /* the first token was sampled */
    pf_stream_t stream;    /* layer-wise mode: shared with the loop while shipping */
    bt_out_t *finish;      /* layer-wise mode: the SHIP_FINISH output, allocated up front */
} pf_req_t;

/* Compute -> loop: ship a request's KV (whole, or streamed layer by layer), the first token of a
 * streamed one, or cancel a ship. */
enum { SHIP_WHOLE = 1, SHIP_STREAM, SHIP_FINISH, SHIP_CANCEL };
typedef struct {
    int op;
    uint64_t req_id;
    char peer[BT_REQ_MAX_PEER + 1];
    int32_t first_token; /* SHIP_WHOLE, SHIP_FINISH */
    int32_t n_tokens;
    pf_stream_t *stream; /* SHIP_STREAM: borrowed from the pf_req_t, which outlives the ship
                          * (the compute thread frees it only after BT_CMD_KV) */
    int32_t n_blocks;
    int32_t blocks[]; /* (n_blocks) */
} ship_msg_t;

/* Loop side: one ship in progress (or waiting for its peer). */
typedef struct {
    ship_msg_t *msg;      /* owned */
    bt_kvx_send_t *send;  /* NULL while parked */
    int have_token;       /* msg->first_token is known: finish once started */
    uint64_t deadline_ms; /* parked until then */
} ship_t;

struct bt_prefill {
    bt_prefill_params_t p;
    bt_kv_pool_t *pool;
    const bt_model_t *model;
    /* compute thread */
    bt_sched_prefill_t sched;
    bt_reqtable_t reqs;       /* id -> pf_req_t */
    bt_sched_item_t **picked; /* (max_batch_seqs) */
    bt_batch_seq_t *batch;    /* (max_batch_seqs) */
    bt_engine_out_t out;      /* (max_batch_seqs) rows: logits, greedy ids or top-k */
    bt_seqgen_t **gens;       /* (max_batch_seqs) first-token samplers of the forward */
    bt_seqgen_step_t *steps;  /* (max_batch_seqs) their first tokens */
    int *gen_st;              /* (max_batch_seqs) status of creating each */
    bt_parfor_t *par;         /* helpers for sampling whole rows; NULL: one core */
    int64_t unshipped_blocks;
    int32_t n_shipping;
    pf_req_t **hooked; /* (max_batch_seqs) streamed prompts completing in the running forward */
    int32_t n_hooked;
    pthread_mutex_t stream_mu; /* pf_stream_t fields, both threads */
    /* loop thread */
    bt_reqtable_t ships; /* id -> ship_t */
    bt_worker_t *w;      /* set by the first loop call */
};

static void pf_layer_done(void *arg, int32_t n_layers_done);

#define PF_OF(it) ((pf_req_t *)((char *)(it)-offsetof(pf_req_t, item)))

static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

int bt_prefill_create(const bt_prefill_params_t *p, bt_prefill_t **out)
{
    if (!p->engine || !p->link || p->max_batch_seqs <= 0)
        return BT_ERR_INVAL;
    bt_prefill_t *pf = bt_calloc(1, sizeof *pf);
    if (!pf)
        return BT_ERR_NOMEM;
    pthread_mutex_init(&pf->stream_mu, NULL);
    pf->p = *p;
    pf->p.peer_wait_ms = p->peer_wait_ms ? p->peer_wait_ms : 10000;
    pf->pool = bt_engine_kv_pool(p->engine);
    pf->model = bt_engine_model(p->engine);
    bt_sched_prefill_init(&pf->sched, bt_kv_pool_block_size(pf->pool));
    bt_reqtable_init(&pf->reqs);
    bt_reqtable_init(&pf->ships);
    size_t n = (size_t)p->max_batch_seqs;
    pf->picked = bt_malloc(n * sizeof *pf->picked);
    pf->batch = bt_malloc(n * sizeof *pf->batch);
    pf->hooked = bt_malloc(n * sizeof *pf->hooked);
    pf->gens = bt_calloc(n, sizeof *pf->gens);
    pf->steps = bt_malloc(n * sizeof *pf->steps);
    pf->gen_st = bt_malloc(n * sizeof *pf->gen_st);
    if (!pf->picked || !pf->batch || !pf->hooked || !pf->gens || !pf->steps || !pf->gen_st ||
        bt_parfor_create(0, &pf->par) != BT_OK ||
        bt_engine_out_init(&pf->out, p->max_batch_seqs, pf->model->hp.n_vocab) != BT_OK) {
        bt_prefill_destroy(pf);
        return BT_ERR_NOMEM;
    }
    if (p->layerwise)
        bt_engine_set_layer_hook(p->engine, pf_layer_done, pf);
    *out = pf;
    return BT_OK;
}

static void pf_req_free(bt_prefill_t *pf, pf_req_t *r)
{
    if (r->finish) {
        bt_free(r->finish->role_data);
        bt_out_free(r->finish);
    }
    bt_kv_seq_fini(&r->kv, pf->pool);
    bt_req_destroy(r->req);
    bt_free(r);
}

void bt_prefill_destroy(bt_prefill_t *pf)
{
    if (!pf)
        return;
    if (pf->p.layerwise && pf->hooked)
        bt_engine_set_layer_hook(pf->p.engine, NULL, NULL);
    size_t pos = 0;
    pf_req_t *r;
    while ((r = bt_reqtable_next(&pf->reqs, &pos, NULL)) != NULL)
        pf_req_free(pf, r);
    pos = 0;
    ship_t *s;
    while ((s = bt_reqtable_next(&pf->ships, &pos, NULL)) != NULL) {
        bt_free(s->msg);
        bt_free(s);
    }
    bt_reqtable_fini(&pf->reqs);
    bt_reqtable_fini(&pf->ships);
    bt_free(pf->hooked);
    bt_engine_out_fini(&pf->out);
    bt_parfor_destroy(pf->par);
    bt_free(pf->gens);
    bt_free(pf->steps);
    bt_free(pf->gen_st);
    bt_free(pf->batch);
    bt_free(pf->picked);
    pthread_mutex_destroy(&pf->stream_mu);
    bt_free(pf);
}

/* ---- compute thread ----------------------------------------------------------------------- */

/* Ends r with DONE and frees it (and its blocks). */
static void pf_finish(bt_prefill_t *pf, bt_worker_t *w, pf_req_t *r, Baton__FinishReason why,
                      int32_t status, const char *detail)
{
    if (r->state == PF_QUEUED)
        bt_sched_prefill_remove(&pf->sched, &r->item);
    if (r->state == PF_SHIPPING) {
        pf->unshipped_blocks -= r->kv.n_blocks;
        pf->n_shipping--;
    }
    bt_reqtable_del(&pf->reqs, r->req->id);
    bt_worker_emit(
        w, bt_out_done(r->req, why, r->has_first ? 1 : 0, status, detail ? "%s" : NULL, detail));
    pf_req_free(pf, r);
}

static void pf_assign(bt_prefill_t *pf, bt_worker_t *w, bt_req_t *req)
{
    pf_req_t *r = bt_calloc(1, sizeof *r);
    int st = r ? bt_kv_seq_init(&r->kv, pf->pool, req->n_prompt) : BT_ERR_NOMEM;
    if (st == BT_OK && (st = bt_reqtable_put(&pf->reqs, req->id, r)) != BT_OK)
        bt_kv_seq_fini(&r->kv, pf->pool);
    if (st != BT_OK) {
        bt_error("req %llu: cannot take the request: %s", (unsigned long long)req->id,
                 bt_status_str(st));
        bt_worker_emit(w, bt_out_done(req, BATON__FINISH_REASON__FINISH_FAILED, 0, st,
                                      "prefill cannot take it: %s", bt_status_str(st)));
        bt_free(r);
        bt_req_destroy(req);
        return;
    }
    r->req = req;
    r->state = PF_QUEUED;
    r->item.n_total = req->n_prompt;
    bt_req_event(req, BATON__EVENT_KIND__PREFILL_QUEUED, 0);
    bt_sched_prefill_push(&pf->sched, &r->item);
}

/* Asks the loop to stop a ship in progress; the send's final event ends the request. */
static void pf_emit_cancel(bt_worker_t *w, uint64_t id)
{
    bt_out_t *o = bt_out_new(BT_OUT_ROLE, id, 0);
    ship_msg_t *m = bt_calloc(1, sizeof *m);
    if (!o || !m) {
        bt_free(m);
        bt_out_free(o);
        bt_error("req %llu: out of memory cancelling the ship", (unsigned long long)id);
        return;
    }
    m->op = SHIP_CANCEL;
    m->req_id = id;
    o->role_data = m;
    bt_worker_emit(w, o);
}

static void pf_abort(bt_prefill_t *pf, bt_worker_t *w, uint64_t id, int32_t status)
{
    pf_req_t *r = bt_reqtable_get(&pf->reqs, id);
    if (!r) {
        bt_debug("req %llu: abort of a request no longer here", (unsigned long long)id);
        bt_worker_forget(w, id);
        return;
    }
    if (r->state == PF_QUEUED) {
        if (status == BT_ERR_CANCELLED)
            pf_finish(pf, w, r, BATON__FINISH_REASON__FINISH_CANCELLED, BT_OK, NULL);
        else
            pf_finish(pf, w, r, BATON__FINISH_REASON__FINISH_FAILED, status, "aborted");
    } else if (!r->abort_status) {
        r->abort_status = status;
        pf_emit_cancel(w, id);
    }
}

/* The loop reports a ship's final event. */
static void pf_shipped(bt_prefill_t *pf, bt_worker_t *w, const bt_cmd_t *c)
{
    pf_req_t *r = bt_reqtable_get(&pf->reqs, c->request_id);
    if (!r || r->state != PF_SHIPPING)
        return;
    if (c->status == BT_OK) {
        bt_req_event_at(r->req, BATON__EVENT_KIND__TRANSFER_END, 0, c->time_ns);
        pf_finish(pf, w, r, BATON__FINISH_REASON__FINISH_NONE, BT_OK, NULL);
    } else if (r->abort_status == BT_ERR_CANCELLED) {
        pf_finish(pf, w, r, BATON__FINISH_REASON__FINISH_CANCELLED, BT_OK, NULL);
    } else {
        int32_t st = r->abort_status ? r->abort_status : c->status;
        const char *why = r->abort_why ? r->abort_why : "KV transfer failed";
        bt_warn("req %llu: %s: %s", (unsigned long long)c->request_id, why,
                bt_status_str(r->abort_why ? st : c->status));
        pf_finish(pf, w, r, BATON__FINISH_REASON__FINISH_FAILED, st, why);
    }
}

static void pf_command(void *ctx, bt_worker_t *w, const bt_cmd_t *c)
{
    bt_prefill_t *pf = ctx;
    switch (c->kind) {
    case BT_CMD_ASSIGN: pf_assign(pf, w, c->req); break;
    case BT_CMD_ABORT: pf_abort(pf, w, c->request_id, c->status); break;
    case BT_CMD_KV: pf_shipped(pf, w, c); break;
    case BT_CMD_RESUME:
    case BT_CMD_SET_ROLE:
    case BT_CMD_ROLE: break; /* pair daemons only */
    }
}

/* Hands r's KV to the loop thread for shipping; r keeps its blocks until the send ends. Whole:
 * after the forward, with the first token. Stream: before the forward, the layers following
 * through r->stream and the first token in r->finish (allocated here, so that a stream started
 * always gets its token). BT_ERR_NOMEM when nothing was handed over. */
static int pf_ship(bt_prefill_t *pf, bt_worker_t *w, pf_req_t *r, int stream, int32_t first)
{
    int32_t n = r->kv.n_blocks;
    bt_out_t *o = bt_out_new(BT_OUT_ROLE, r->req->id, 0);
    ship_msg_t *m = bt_calloc(1, sizeof *m + (size_t)n * sizeof(int32_t));
    bt_out_t *fo = stream ? bt_out_new(BT_OUT_ROLE, r->req->id, 0) : NULL;
    ship_msg_t *fm = stream ? bt_calloc(1, sizeof *fm) : NULL;
    if (!o || !m || (stream && (!fo || !fm))) {
        bt_free(fm);
        bt_out_free(fo);
        bt_free(m);
        bt_out_free(o);
        return BT_ERR_NOMEM;
    }
    r->state = PF_SHIPPING;
    pf->unshipped_blocks += n;
    pf->n_shipping++;
    m->op = stream ? SHIP_STREAM : SHIP_WHOLE;
    m->req_id = r->req->id;
    snprintf(m->peer, sizeof m->peer, "%s", r->req->peer);
    m->first_token = first;
    m->n_tokens = r->req->n_prompt;
    m->stream = stream ? &r->stream : NULL;
    m->n_blocks = n;
    memcpy(m->blocks, r->kv.blocks, (size_t)n * sizeof(int32_t));
    o->role_data = m;
    if (stream) {
        fm->op = SHIP_FINISH;
        fm->req_id = r->req->id;
        fo->role_data = fm;
        r->finish = fo;
    } else {
        bt_req_event(r->req, BATON__EVENT_KIND__TRANSFER_BEGIN, 0);
    }
    bt_worker_emit(w, o);
    return BT_OK;
}

/* Fails r: at once, or, when its KV is with the loop already, by cancelling the ship (its final
 * event ends the request). */
static void pf_fail(bt_prefill_t *pf, bt_worker_t *w, pf_req_t *r, int32_t status, const char *why)
{
    if (r->state != PF_SHIPPING) {
        pf_finish(pf, w, r, BATON__FINISH_REASON__FINISH_FAILED, status, why);
    } else if (!r->abort_status) {
        r->abort_status = status;
        r->abort_why = why;
        pf_emit_cancel(w, r->req->id);
    }
}

/* The first tokens of the forward's n requests into pf->steps, each from its own new sampler
 * (pf->gens[i]; NULL with pf->gen_st[i] when it could not be created). */
static void pf_sample_first(bt_prefill_t *pf, int32_t n)
{
    for (int32_t i = 0; i < n; i++) {
        pf_req_t *r = PF_OF(pf->picked[i]);
        pf->gens[i] = NULL;
        pf->gen_st[i] =
            bt_seqgen_create(r->req, pf->model->tok, pf->model->hp.n_vocab, &pf->gens[i]);
    }
    bt_seqgen_sample_rows(pf->gens, n, pf->p.engine, &pf->out, pf->par, pf->steps);
}

/* Sends the i-th request's first token (pf_sample_first) as FIRST_TOKEN, and ships the KV
 * (or, streamed, sends the token after it). */
static void pf_first_token(bt_prefill_t *pf, bt_worker_t *w, pf_req_t *r, int32_t i)
{
    bt_seqgen_t *g = pf->gens[i];
    pf->gens[i] = NULL;
    if (pf->gen_st[i] != BT_OK) {
        pf_fail(pf, w, r, pf->gen_st[i], "cannot sample");
        return;
    }
    const bt_seqgen_step_t s = pf->steps[i];
    r->has_first = 1;
    bt_req_event(r->req, BATON__EVENT_KIND__PREFILL_END, 0);
    if (r->req->skip_tokens == 0) /* a replay does not send what the client has */
        bt_worker_emit(
            w, bt_out_chunk(BT_OUT_FIRST_TOKEN, r->req->id, &s.token, 1, s.text, s.n_text, 0));
    bt_seqgen_destroy(g);
    if (r->finish) { /* streamed: every layer is out already or on its way */
        ((ship_msg_t *)r->finish->role_data)->first_token = s.token;
        bt_worker_emit(w, r->finish);
        r->finish = NULL;
    } else if (r->state != PF_SHIPPING && pf_ship(pf, w, r, 0, s.token) != BT_OK) {
        pf_finish(pf, w, r, BATON__FINISH_REASON__FINISH_FAILED, BT_ERR_NOMEM, "out of memory");
    }
}

/* The engine's layer hook (compute thread, inside bt_engine_forward): layers [0, n_layers_done)
 * of the streamed prompts completing in this forward are final. */
static void pf_layer_done(void *arg, int32_t n_layers_done)
{
    bt_prefill_t *pf = arg;
    if (pf->n_hooked == 0)
        return;
    pthread_mutex_lock(&pf->stream_mu);
    for (int32_t i = 0; i < pf->n_hooked; i++)
        bt_kvlink_stream_layers_done(&pf->hooked[i]->stream, n_layers_done);
    pthread_mutex_unlock(&pf->stream_mu);
    if (n_layers_done == 1) /* the transfer begins with the first layer handed to kvx */
        for (int32_t i = 0; i < pf->n_hooked; i++)
            bt_req_event(pf->hooked[i]->req, BATON__EVENT_KIND__TRANSFER_BEGIN, 0);
}

/* Layer-wise mode, before the forward: reserves each picked prompt's blocks (the engine then
 * takes none) and starts its ship, so that its layers can leave as they are computed. A prompt
 * whose ship cannot be handed over (out of memory) is shipped whole after the forward. */
static int pf_stream_start(bt_prefill_t *pf, bt_worker_t *w, int32_t n)
{
    for (int32_t i = 0; i < n; i++) {
        pf_req_t *r = PF_OF(pf->picked[i]);
        int st = bt_kv_seq_reserve(&r->kv, pf->pool, r->req->n_prompt);
        if (st != BT_OK)
            return st;
    }
    for (int32_t i = 0; i < n; i++) {
        pf_req_t *r = PF_OF(pf->picked[i]);
        if (pf_ship(pf, w, r, 1, -1) != BT_OK)
            bt_warn("req %llu: out of memory streaming the KV; it ships after the prefill",
                    (unsigned long long)r->req->id);
    }
    return BT_OK;
}

/* A prompt longer than one forward, alone, chunk by chunk; only the last chunk's forward
 * completes its layers (see the top of this file). */
static int pf_forward_chunked(bt_prefill_t *pf, pf_req_t *r)
{
    int32_t chunk = bt_engine_max_batch_tokens(pf->p.engine), n_prompt = r->req->n_prompt;
    while (r->kv.n_tokens < n_prompt) {
        int32_t n = n_prompt - r->kv.n_tokens < chunk ? n_prompt - r->kv.n_tokens : chunk;
        int last = r->kv.n_tokens + n == n_prompt;
        bt_batch_seq_t one = {.kv = &r->kv,
                              .tokens = r->req->prompt + r->kv.n_tokens,
                              .n_tokens = n,
                              .logits = last ? BT_LOGITS_LAST : BT_LOGITS_NONE};
        pf->hooked[0] = r;
        pf->n_hooked = last && r->finish ? 1 : 0;
        int st = bt_engine_forward_out(pf->p.engine, &one, 1, &pf->out);
        pf->n_hooked = 0;
        if (st != BT_OK)
            return st;
    }
    return BT_OK;
}

static int pf_forward(bt_prefill_t *pf, int32_t n)
{
    int32_t rows = 0;
    pf->n_hooked = 0;
    pf->out.k = 1;
    for (int32_t i = 0; i < n; i++) {
        pf_req_t *r = PF_OF(pf->picked[i]);
        bt_seqgen_out_want(&r->req->sampling, r->req->prompt, r->req->n_prompt,
                           pf->model->hp.n_vocab, &pf->out, i);
        pf->batch[i] = (bt_batch_seq_t){.kv = &r->kv,
                                        .tokens = r->req->prompt,
                                        .n_tokens = r->req->n_prompt,
                                        .logits = BT_LOGITS_LAST};
        rows += r->req->n_prompt;
        if (r->finish)
            pf->hooked[pf->n_hooked++] = r;
    }
    if (n == 1 && rows > bt_engine_max_batch_tokens(pf->p.engine))
        return pf_forward_chunked(pf, PF_OF(pf->picked[0]));
    int st = bt_engine_forward_out(pf->p.engine, pf->batch, n, &pf->out);
    pf->n_hooked = 0;
    return st;
}

static void pf_publish(bt_prefill_t *pf, bt_worker_t *w)
{
    bt_worker_stats_t s = {
        .queue_len = (uint32_t)bt_sched_prefill_len(&pf->sched),
        .running = (uint32_t)pf->n_shipping,
        .kv_free_blocks = (uint32_t)bt_kv_pool_n_free(pf->pool),
        .kv_total_blocks = (uint32_t)bt_kv_pool_n_blocks(pf->pool),
        .queued_tokens = (uint64_t)bt_sched_prefill_tokens(&pf->sched),
        .unshipped_blocks = (uint64_t)pf->unshipped_blocks,
    };
    bt_worker_publish(w, &s);
}

static int pf_step(void *ctx, bt_worker_t *w)
{
    bt_prefill_t *pf = ctx;
    bt_sched_budget_t b = {.tokens = bt_engine_max_batch_tokens(pf->p.engine),
                           .seqs = pf->p.max_batch_seqs,
                           .blocks = bt_kv_pool_n_free(pf->pool)};
    int32_t n = bt_sched_prefill_pick(&pf->sched, &b, 1, pf->picked);
    for (int32_t i = 0; i < n; i++) {
        pf_req_t *r = PF_OF(pf->picked[i]);
        r->state = 0; /* neither queued nor shipping while it computes */
        bt_req_event(r->req, BATON__EVENT_KIND__PREFILL_BEGIN, 0);
    }
    double t0 = pf->p.steplog && n > 0 ? bt_mono_ms() : 0, forward_ms = 0;
    int st = n > 0 && pf->p.layerwise ? pf_stream_start(pf, w, n) : BT_OK;
    if (st == BT_OK && n > 0)
        st = pf_forward(pf, n);
    double sum = 0, sum2 = 0; /* the step log's shape, before a first token can free requests */
    if (t0 > 0) {
        forward_ms = bt_mono_ms() - t0;
        for (int32_t i = 0; i < n; i++) {
            double l = PF_OF(pf->picked[i])->req->n_prompt;
            sum += l;
            sum2 += l * l;
        }
    }
    /* Whole rows cost about a millisecond each to sample on a large vocabulary: on every core
     * (bt_seqgen_sample_rows); candidates are cheap and stay on this thread. */
    if (st == BT_OK)
        pf_sample_first(pf, n);
    bt_worker_hold(w);
    for (int32_t i = 0; i < n; i++) {
        pf_req_t *r = PF_OF(pf->picked[i]);
        if (st != BT_OK) {
            bt_error("req %llu: prefill forward failed: %s", (unsigned long long)r->req->id,
                     bt_status_str(st));
            pf_fail(pf, w, r, st, "forward failed");
        } else {
            pf_first_token(pf, w, r, i);
        }
    }
    bt_worker_flush(w);
    if (t0 > 0 && st == BT_OK)
        bt_steplog_write(pf->p.steplog, BT_STEP_PREFILL, sum, sum2, n, t0, forward_ms,
                         bt_mono_ms() - t0);
    pf_publish(pf, w);
    return n > 0 ? BT_OK : BT_AGAIN;
}

/* ---- loop thread -------------------------------------------------------------------------- */

static void ship_end(bt_prefill_t *pf, ship_t *s, int32_t status)
{
    bt_cmd_t c = {.kind = BT_CMD_KV,
                  .request_id = s->msg->req_id,
                  .status = status,
                  .time_ns = bt_rpc_now_ns()};
    if (s->msg->stream) { /* withdrawn first: after the command the stream may be gone */
        pthread_mutex_lock(&pf->stream_mu);
        s->msg->stream->send = NULL;
        pthread_mutex_unlock(&pf->stream_mu);
    }
    if (bt_worker_command(pf->w, &c) != BT_OK)
        bt_error("req %llu: cannot report the end of its ship", (unsigned long long)c.request_id);
    bt_reqtable_del(&pf->ships, s->msg->req_id);
    if (s->send)
        bt_kvx_send_release(s->send);
    bt_free(s->msg);
    bt_free(s);
}

/* Ends a started ship with the completion notice once its first token is known; a failure
 * cancels the send, whose final event ends the ship. */
static void ship_finish(ship_t *s)
{
    int st = bt_kvx_send_finish(s->send, s->msg->first_token, NULL, 0);
    if (st != BT_OK) {
        bt_warn("req %llu: cannot ship the KV to %s: %s", (unsigned long long)s->msg->req_id,
                s->msg->peer, bt_status_str(st));
        bt_kvx_send_cancel(s->send);
    }
}

/* Starts the kvx send once the decode peer's connection is up. Returns 0 while it waits, 1
 * when started, 2 when it ended at once (s is gone). */
static int ship_try(bt_prefill_t *pf, ship_t *s)
{
    bt_kvx_peer_t *peer = bt_kvlink_peer(pf->p.link, s->msg->peer, NULL, 0, 0);
    if (!peer || bt_kvx_peer_status(peer) == BT_AGAIN)
        return 0;
    const ship_msg_t *m = s->msg;
    bt_kvx_send_params_t sp = {.req_id = m->req_id,
                               .blocks = m->blocks,
                               .n_blocks = m->n_blocks,
                               .n_tokens = m->n_tokens,
                               .layerwise = m->stream != NULL};
    int st = bt_kvx_peer_status(peer);
    if (st == BT_OK)
        st = bt_kvx_send_start(peer, &sp, &s->send);
    if (st != BT_OK) {
        bt_warn("req %llu: cannot ship the KV to %s: %s", (unsigned long long)m->req_id, m->peer,
                bt_status_str(st));
        ship_end(pf, s, st);
        return 2;
    }
    if (m->stream) { /* publish the send; the layers done so far go now */
        pthread_mutex_lock(&pf->stream_mu);
        bt_kvlink_stream_attach(m->stream, s->send);
        pthread_mutex_unlock(&pf->stream_mu);
    }
    if (s->have_token)
        ship_finish(s);
    return 1;
}

/* A streamed ship's first token: the prefill is over, so every layer is ready. */
static void ship_token(bt_prefill_t *pf, ship_msg_t *m)
{
    ship_t *s = bt_reqtable_get(&pf->ships, m->req_id);
    int32_t token = m->first_token;
    bt_free(m);
    if (!s) /* the ship has ended already (its peer failed) */
        return;
    s->msg->first_token = token;
    s->have_token = 1;
    if (s->send)
        ship_finish(s);
    else /* parked: from now on it waits for its peer like a whole ship */
        s->deadline_ms = mono_ms() + (uint64_t)pf->p.peer_wait_ms;
}

static void pf_loop_output(void *ctx, bt_worker_t *w, bt_out_t *o)
{
    bt_prefill_t *pf = ctx;
    ship_msg_t *m = o->role_data;
    pf->w = w;
    bt_out_free(o);
    ship_t *s = bt_reqtable_get(&pf->ships, m->req_id);
    if (m->op == SHIP_FINISH) {
        ship_token(pf, m);
        return;
    }
    if (m->op == SHIP_CANCEL) {
        bt_free(m);
        if (s && s->send)
            bt_kvx_send_cancel(s->send);
        else if (s)
            ship_end(pf, s, BT_ERR_CANCELLED);
        return;
    }
    s = bt_calloc(1, sizeof *s);
    if (!s || bt_reqtable_put(&pf->ships, m->req_id, s) != BT_OK) {
        bt_free(s);
        bt_cmd_t c = {.kind = BT_CMD_KV, .request_id = m->req_id, .status = BT_ERR_NOMEM};
        bt_worker_command(w, &c);
        bt_free(m);
        return;
    }
    s->msg = m;
    s->have_token = m->op == SHIP_WHOLE;
    /* A stream waits for its peer at most peer_wait_ms once its prefill is over. */
    s->deadline_ms = s->have_token ? mono_ms() + (uint64_t)pf->p.peer_wait_ms : UINT64_MAX;
    ship_try(pf, s);
}

static void pf_on_event(void *ctx, const bt_kvx_event_t *ev)
{
    bt_prefill_t *pf = ctx;
    if (ev->type != BT_KVX_EV_SEND_DONE)
        return;
    ship_t *s = bt_reqtable_get(&pf->ships, ev->req_id);
    if (s && s->send == ev->send)
        ship_end(pf, s, ev->status);
    else
        bt_kvx_send_release(ev->send);
}

/* Ships waiting for their peer: start them once it is up, fail them at their deadline. */
static void pf_retry_parked(bt_prefill_t *pf)
{
    uint64_t now = mono_ms();
    size_t pos = 0;
    ship_t *s;
    while ((s = bt_reqtable_next(&pf->ships, &pos, NULL)) != NULL) {
        int started = s->send ? 1 : ship_try(pf, s);
        if (started == 2)
            pos = 0; /* the table changed */
        if (started)
            continue;
        if (now >= s->deadline_ms) {
            bt_warn("req %llu: decode peer %s never connected", (unsigned long long)s->msg->req_id,
                    s->msg->peer);
            ship_end(pf, s, BT_ERR_UNAVAILABLE);
            pos = 0; /* the table changed */
        }
    }
}

static int pf_loop_fd(void *ctx, bt_worker_t *w)
{
    bt_prefill_t *pf = ctx;
    pf->w = w;
    return bt_kvlink_loop_fd(pf->p.link, w, pf_on_event, pf);
}

static void pf_loop_poll(void *ctx, bt_worker_t *w)
{
    bt_prefill_t *pf = ctx;
    pf->w = w;
    bt_kvlink_pump(pf->p.link, pf_on_event, pf);
    pf_retry_parked(pf);
}

static void pf_heartbeat(void *ctx, Baton__Heartbeat *hb)
{
    bt_prefill_t *pf = ctx;
    size_t len;
    const void *addr = bt_kvlink_address(pf->p.link, &len);
    hb->kvx_address.data = (uint8_t *)addr;
    hb->kvx_address.len = len;
}

const bt_worker_ops_t bt_prefill_ops = {
    .command = pf_command,
    .step = pf_step,
    .loop_fd = pf_loop_fd,
    .loop_poll = pf_loop_poll,
    .loop_output = pf_loop_output,
    .heartbeat = pf_heartbeat,
};
