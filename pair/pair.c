/* SPDX-License-Identifier: MIT */
/*
 * pair.c - the pair role (see pair.h): the compute side (owned requests in a continuous batcher,
 * replicas, hand-off, resume, memory pressure) and the loop side (the replica's receive, the
 * prompt's ship, the per-step rows, the connection to the partner).
 *
 * Blocks cross threads only as ids, as in the prefill and decode roles: a replica's blocks
 * belong to its receive until the receive's final event, and a shipped prompt's blocks carry an
 * extra reference until the ship's final event, so preempting or ending the owner's sequence in
 * the meantime cannot hand them to anyone else.
 *
 * Rows message (owner -> holder, one per forward): u32 magic, u32 n, n x {u64 request id, i32
 * first position, i32 count}, then for each entry and each layer the K rows then the V rows of
 * its positions, in the pool's element type.
 */
#include "pair.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "common/alloc.h"
#include "common/batcher.h"
#include "common/log.h"
#include "common/reqtable.h"
#include "common/rpc.h"
#include "common/status.h"

#define ROWS_MAGIC 0x52505442u /* "BTPR" */

/* BT_CMD_KV detail: what ended. */
enum { PK_RECV = 1, PK_SHIP, PK_REFUSED };
/* Compute -> loop messages. */
enum { PM_POST = 1, PM_CANCEL_POST, PM_SHIP, PM_CANCEL_SHIP, PM_ROWS, PM_PARTNER };

/* A layer-wise ship as both threads see it; fields under bt_pair_t.stream_mu. */
typedef bt_kvlink_stream_t stream_t;

typedef struct {
    int kind;
    uint64_t req_id;
    int32_t n_tokens;
    stream_t *stream; /* PM_SHIP layer by layer: borrowed from the shipref, which outlives it */
    int32_t n_blocks;
    uint8_t *bytes; /* PM_ROWS, PM_PARTNER, PM_POST (peer address): after blocks */
    size_t len;
    int32_t blocks[];
} pm_t;

/* Rows that came before their replica's prompt KV. */
typedef struct rowbuf {
    struct rowbuf *next;
    int32_t pos0, n;
    uint8_t data[]; /* n_layers x (K rows, V rows) */
} rowbuf_t;

/* Compute side: a replica held here. */
typedef struct {
    bt_req_t *req; /* owned */
    bt_kv_seq_t kv;
    int complete;     /* the prompt's KV is in place (or the KV was ours) */
    int posted;       /* a receive is (or was) under way */
    int abort_status; /* an abort or drop was asked while receiving */
    int32_t *resume_ids;
    int32_t n_resume; /* a RESUME waiting for the prompt's KV */
    rowbuf_t *early, *early_tail;
} rep_t;

/* Compute side: the replication state of a request decoded here. */
typedef struct {
    int partner_has; /* the partner holds (or is receiving) a replica: send it the rows */
} own_t;

/* Compute side: a shipped prompt's blocks, referenced until the ship ends. */
typedef struct {
    stream_t stream; /* layer-wise ships: shared with the loop until the ship ends */
    uint64_t id;
    int cancelled; /* its request is over here: the ship was told to stop */
    int32_t n;
    int32_t blocks[];
} shipref_t;

/* Loop side. */
typedef struct {
    pm_t *msg;
    bt_kvx_recv_t *recv;
    bt_kvx_send_t *send;
    uint64_t deadline_ms;
} xfer_t;

struct bt_pair {
    bt_pair_params_t p;
    char self[BT_REQ_MAX_PEER + 1];
    char partner[BT_REQ_MAX_PEER + 1];
    bt_kv_pool_t *pool;
    const bt_model_t *model;
    size_t row_bytes; /* one position of one layer's K (or V) */
    /* compute thread */
    bt_batcher_t *batcher;
    Baton__Role serving;
    bt_reqtable_t reps;  /* id -> rep_t */
    bt_reqtable_t owns;  /* id -> own_t */
    bt_reqtable_t srefs; /* id -> shipref_t */
    uint64_t *handoff;   /* (max_requests) ids to hand off after the step */
    int n_handoff;
    shipref_t **hooked; /* (max_batch_seqs) layer-wise ships of the running forward */
    int n_hooked;
    pthread_mutex_t stream_mu; /* stream_t fields, both threads */
    /* loop thread */
    bt_reqtable_t posts; /* id -> xfer_t (receives) */
    bt_reqtable_t ships; /* id -> xfer_t (sends) */
    uint8_t *partner_addr;
    size_t partner_addr_len;
    bt_worker_t *w;
};

static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void on_rows_hook(void *arg, bt_worker_t *w, const bt_batcher_rows_t *rows, int n);
static void on_planned_hook(void *arg, bt_worker_t *w, const bt_batcher_rows_t *rows, int n,
                            int chunked);
static void on_layer_done(void *arg, int32_t n_layers_done);
static void on_prefilled_hook(void *arg, bt_worker_t *w, const bt_req_t *req,
                              const bt_kv_seq_t *kv);
static void on_ended_hook(void *arg, const bt_req_t *req);

int bt_pair_create(const bt_pair_params_t *p, bt_pair_t **out)
{
    if (!p->engine || !p->link || !p->self || !p->partner || !p->partner[0])
        return BT_ERR_INVAL;
    bt_pair_t *pr = bt_calloc(1, sizeof *pr);
    if (!pr)
        return BT_ERR_NOMEM;
    pr->p = *p;
    pr->p.peer_wait_ms = p->peer_wait_ms ? p->peer_wait_ms : 5000;
    snprintf(pr->self, sizeof pr->self, "%s", p->self);
    snprintf(pr->partner, sizeof pr->partner, "%s", p->partner);
    pr->p.self = pr->self;
    pr->p.partner = pr->partner;
    pr->serving = p->serving == BATON__ROLE__PREFILL ? BATON__ROLE__PREFILL : BATON__ROLE__DECODE;
    pr->pool = bt_engine_kv_pool(p->engine);
    pr->model = bt_engine_model(p->engine);
    bt_kv_layer_t l0 = bt_kv_pool_layer(pr->pool, 0);
    pr->row_bytes = bt_type_row_bytes(l0.type, (int64_t)l0.n_kv_heads * l0.head_dim);
    bt_reqtable_init(&pr->reps);
    bt_reqtable_init(&pr->owns);
    bt_reqtable_init(&pr->srefs);
    bt_reqtable_init(&pr->posts);
    bt_reqtable_init(&pr->ships);
    pthread_mutex_init(&pr->stream_mu, NULL);
    pr->handoff = bt_calloc((size_t)p->max_requests, sizeof *pr->handoff);
    pr->hooked = bt_calloc((size_t)p->max_batch_seqs, sizeof *pr->hooked);
    bt_batcher_params_t bp = {.engine = p->engine,
                              .max_batch_seqs = p->max_batch_seqs,
                              .prefill_first = pr->serving == BATON__ROLE__PREFILL,
                              .max_requests = p->max_requests,
                              .hooks = {.arg = pr,
                                        .planned = p->layerwise ? on_planned_hook : NULL,
                                        .rows = on_rows_hook,
                                        .prefilled = on_prefilled_hook,
                                        .ended = on_ended_hook},
                              .steplog = p->steplog};
    int st = pr->handoff && pr->hooked ? bt_batcher_create(&bp, &pr->batcher) : BT_ERR_NOMEM;
    if (st != BT_OK) {
        bt_pair_destroy(pr);
        return st;
    }
    if (p->layerwise)
        bt_engine_set_layer_hook(p->engine, on_layer_done, pr);
    *out = pr;
    return BT_OK;
}

static void rep_free(bt_pair_t *pr, rep_t *r)
{
    while (r->early) {
        rowbuf_t *b = r->early;
        r->early = b->next;
        bt_free(b);
    }
    bt_kv_seq_fini(&r->kv, pr->pool);
    bt_req_destroy(r->req);
    bt_free(r->resume_ids);
    bt_free(r);
}

void bt_pair_destroy(bt_pair_t *pr)
{
    if (!pr)
        return;
    size_t pos = 0;
    void *v;
    bt_batcher_destroy(pr->batcher); /* its ended hook touches owns */
    while ((v = bt_reqtable_next(&pr->reps, &pos, NULL)) != NULL)
        rep_free(pr, v);
    bt_reqtable_t *tabs[] = {&pr->owns, &pr->srefs};
    for (int i = 0; i < 2; i++) {
        pos = 0;
        while ((v = bt_reqtable_next(tabs[i], &pos, NULL)) != NULL)
            bt_free(v);
    }
    bt_reqtable_t *xt[] = {&pr->posts, &pr->ships};
    for (int i = 0; i < 2; i++) {
        pos = 0;
        xfer_t *x;
        while ((x = bt_reqtable_next(xt[i], &pos, NULL)) != NULL) {
            bt_free(x->msg);
            bt_free(x);
        }
    }
    bt_reqtable_fini(&pr->reps);
    bt_reqtable_fini(&pr->owns);
    bt_reqtable_fini(&pr->srefs);
    bt_reqtable_fini(&pr->posts);
    bt_reqtable_fini(&pr->ships);
    bt_free(pr->partner_addr);
    bt_free(pr->handoff);
    bt_free(pr->hooked);
    pthread_mutex_destroy(&pr->stream_mu);
    bt_free(pr);
}

/* ---- compute thread ----------------------------------------------------------------------- */

/* A message to the loop with extra bytes after the block ids. */
static pm_t *pm_new(int kind, uint64_t id, int32_t n_blocks, size_t extra)
{
    pm_t *m = bt_calloc(1, sizeof *m + (size_t)n_blocks * sizeof(int32_t) + extra);
    if (!m)
        return NULL;
    m->kind = kind;
    m->req_id = id;
    m->n_blocks = n_blocks;
    m->bytes = (uint8_t *)(m->blocks + n_blocks);
    m->len = extra;
    return m;
}

static int pm_emit(bt_worker_t *w, pm_t *m)
{
    bt_out_t *o = m ? bt_out_new(BT_OUT_ROLE, m->req_id, 0) : NULL;
    if (!o) {
        bt_free(m);
        return BT_ERR_NOMEM;
    }
    o->role_data = m;
    bt_worker_emit(w, o);
    return BT_OK;
}

/* Where position pos of a sequence sits in a layer: its K row (V is block_size rows later). */
static uint8_t *row_ptr(const bt_pair_t *pr, const bt_kv_layer_t *l, const bt_kv_seq_t *kv,
                        int32_t pos)
{
    int32_t blk = kv->blocks[pos / l->block_size];
    return (uint8_t *)l->data + (size_t)blk * l->block_bytes +
           (size_t)(pos % l->block_size) * pr->row_bytes;
}

/* Copies n positions from pos0 between a sequence's blocks and a packed buffer (all layers, K
 * then V per layer). to_kv: buffer -> blocks. */
static void rows_copy(const bt_pair_t *pr, const bt_kv_seq_t *kv, int32_t pos0, int32_t n,
                      uint8_t *buf, int to_kv)
{
    int32_t L = pr->model->hp.n_layers;
    for (int32_t l = 0; l < L; l++) {
        bt_kv_layer_t layer = bt_kv_pool_layer(pr->pool, l);
        size_t v_off = (size_t)layer.block_size * pr->row_bytes;
        for (int which = 0; which < 2; which++)
            for (int32_t i = 0; i < n; i++) {
                uint8_t *p = row_ptr(pr, &layer, kv, pos0 + i) + (which ? v_off : 0);
                if (to_kv)
                    memcpy(p, buf, pr->row_bytes);
                else
                    memcpy(buf, p, pr->row_bytes);
                buf += pr->row_bytes;
            }
    }
}

static size_t rows_bytes(const bt_pair_t *pr, int32_t n)
{
    return (size_t)pr->model->hp.n_layers * 2 * (size_t)n * pr->row_bytes;
}

/* Whether a forward's rows of a sequence go to its replica: decode rows of a request decoded
 * here whose partner holds a replica (the prompt's KV goes by its own transfer). */
static int rows_to_partner(bt_pair_t *pr, const bt_batcher_rows_t *r)
{
    own_t *o = bt_reqtable_get(&pr->owns, r->req->id);
    return o && o->partner_has && r->decoding && r->n > 0;
}

/* Packs this step's new rows of the sequences whose partner holds a replica, for the loop to
 * send before the step's tokens go out. */
static void on_rows_hook(void *arg, bt_worker_t *w, const bt_batcher_rows_t *rows, int n)
{
    bt_pair_t *pr = arg;
    if (!pr->p.sync_rows)
        return;
    int32_t n_ent = 0;
    size_t data = 0;
    for (int i = 0; i < n; i++) {
        if (rows_to_partner(pr, &rows[i])) {
            n_ent++;
            data += rows_bytes(pr, rows[i].n);
        }
    }
    if (!n_ent)
        return;
    size_t len = 8 + (size_t)n_ent * 16 + data;
    pm_t *m = pm_new(PM_ROWS, 0, 0, len);
    if (!m) {
        bt_warn("pair: out of memory for a rows message; the partner will recompute them");
        return;
    }
    uint8_t *p = m->bytes, *d = m->bytes + 8 + (size_t)n_ent * 16;
    uint32_t hdr[2] = {ROWS_MAGIC, (uint32_t)n_ent};
    memcpy(p, hdr, 8);
    p += 8;
    for (int i = 0; i < n; i++) {
        if (!rows_to_partner(pr, &rows[i]))
            continue;
        uint64_t id = rows[i].req->id;
        int32_t e[2] = {rows[i].pos0, rows[i].n};
        memcpy(p, &id, 8);
        memcpy(p + 8, e, 8);
        p += 16;
        rows_copy(pr, rows[i].kv, rows[i].pos0, rows[i].n, d, 0);
        d += rows_bytes(pr, rows[i].n);
    }
    pm_emit(w, m);
}

/* Starts the ship of a prompt's blocks [0, nb) to the partner, referencing them until the ship
 * ends; stream: layer by layer as the engine computes them. The shipref, or NULL. */
static shipref_t *ship_start(bt_pair_t *pr, bt_worker_t *w, const bt_req_t *req,
                             const bt_kv_seq_t *kv, int32_t nb, int stream)
{
    pm_t *m = pm_new(PM_SHIP, req->id, nb, 0);
    shipref_t *sr = bt_calloc(1, sizeof *sr + (size_t)nb * sizeof(int32_t));
    if (!m || !sr || bt_reqtable_put(&pr->srefs, req->id, sr) != BT_OK) {
        bt_free(m);
        bt_free(sr);
        bt_warn("req %llu: out of memory shipping the replica", (unsigned long long)req->id);
        return NULL;
    }
    m->n_tokens = req->n_prompt;
    memcpy(m->blocks, kv->blocks, (size_t)nb * sizeof(int32_t));
    sr->id = req->id;
    sr->n = nb;
    memcpy(sr->blocks, kv->blocks, (size_t)nb * sizeof(int32_t));
    for (int32_t i = 0; i < nb; i++)
        bt_kv_pool_ref(pr->pool, sr->blocks[i]);
    if (stream)
        m->stream = &sr->stream;
    own_t *o = bt_reqtable_get(&pr->owns, req->id);
    if (o)
        o->partner_has = 1;
    pm_emit(w, m);
    return sr;
}

/* Whether req's prompt KV should go to the partner now: it has a reservation there and no ship
 * started yet. *nb: the prompt's blocks. */
static int ship_wanted(bt_pair_t *pr, const bt_req_t *req, int32_t *nb)
{
    *nb = bt_blocks_for(req->n_prompt, bt_kv_pool_block_size(pr->pool));
    return bt_reqtable_get(&pr->owns, req->id) && req->resv.n_blocks && *nb == req->resv.n_blocks &&
           !bt_reqtable_get(&pr->srefs, req->id);
}

/* Before a forward: prompts that complete in it (in one forward) get their blocks now and their
 * ship started, so that each layer leaves as soon as the engine has computed it. */
static void on_planned_hook(void *arg, bt_worker_t *w, const bt_batcher_rows_t *rows, int n,
                            int chunked)
{
    bt_pair_t *pr = arg;
    pr->n_hooked = 0;
    if (chunked) /* a layer is final only in the last chunk: shipped whole after it */
        return;
    for (int i = 0; i < n; i++) {
        const bt_req_t *req = rows[i].req;
        int32_t nb;
        if (rows[i].decoding || rows[i].pos0 + rows[i].n != req->n_prompt ||
            !ship_wanted(pr, req, &nb))
            continue;
        if (bt_kv_seq_reserve(rows[i].kv, pr->pool, req->n_prompt) != BT_OK)
            continue; /* the forward will say why; shipped whole if it runs */
        shipref_t *sr = ship_start(pr, w, req, rows[i].kv, nb, 1);
        if (sr) {
            bt_debug("req %llu: its replica's KV streams layer by layer",
                     (unsigned long long)req->id);
            pr->hooked[pr->n_hooked++] = sr;
        }
    }
}

/* The engine finished layer n - 1 of the running forward (compute thread). */
static void on_layer_done(void *arg, int32_t n_layers_done)
{
    bt_pair_t *pr = arg;
    if (!pr->n_hooked)
        return;
    pthread_mutex_lock(&pr->stream_mu);
    for (int i = 0; i < pr->n_hooked; i++)
        bt_kvlink_stream_layers_done(&pr->hooked[i]->stream, n_layers_done);
    pthread_mutex_unlock(&pr->stream_mu);
}

/* After a forward: a streamed ship whose prompt did not complete (the forward failed) is
 * cancelled, so that it ends. */
static void streams_settle(bt_pair_t *pr, bt_worker_t *w)
{
    for (int i = 0; i < pr->n_hooked; i++)
        if (pr->hooked[i]->stream.n_done < pr->model->hp.n_layers)
            pm_emit(w, pm_new(PM_CANCEL_SHIP, pr->hooked[i]->id, 0, 0));
    pr->n_hooked = 0;
}

/* The prompt is computed and its first token sent: ship its KV into the partner's reservation
 * unless it left layer by layer already, and hand the request off if this member serves
 * prefill. */
static void on_prefilled_hook(void *arg, bt_worker_t *w, const bt_req_t *req, const bt_kv_seq_t *kv)
{
    bt_pair_t *pr = arg;
    int32_t nb;
    if (ship_wanted(pr, req, &nb)) {
        if (kv->n_blocks < nb || !ship_start(pr, w, req, kv, nb, 0))
            return;
    } else if (!bt_reqtable_get(&pr->srefs, req->id)) {
        return; /* no replica */
    }
    if (pr->serving == BATON__ROLE__PREFILL && pr->n_handoff < pr->p.max_requests)
        pr->handoff[pr->n_handoff++] = req->id;
}

static void on_ended_hook(void *arg, const bt_req_t *req)
{
    bt_pair_t *pr = arg;
    bt_free(bt_reqtable_del(&pr->owns, req->id));
}

static void reply(bt_worker_t *w, uint64_t id, int32_t status, const char *why,
                  const bt_reservation_t *resv)
{
    bt_worker_emit(w, bt_out_assign_reply(id, BATON__ROLE__PAIR, status, why, resv));
}

/* Ends a replica with DONE (the router forgets the part) and frees it. */
static void rep_end(bt_pair_t *pr, bt_worker_t *w, rep_t *r, int32_t status, const char *why)
{
    bt_reqtable_del(&pr->reps, r->req->id);
    if (r->n_resume)
        reply(w, r->req->id, status ? status : BT_ERR_NOT_FOUND, why ? why : "the replica is gone",
              NULL);
    else
        bt_worker_emit(w, bt_out_done(r->req,
                                      status ? BATON__FINISH_REASON__FINISH_FAILED
                                             : BATON__FINISH_REASON__FINISH_CANCELLED,
                                      0, status, why ? "%s" : NULL, why));
    rep_free(pr, r);
}

/* Applies rows to a complete replica; gaps are left for the resume to recompute. */
static int rep_apply(bt_pair_t *pr, rep_t *r, int32_t pos0, int32_t n, uint8_t *data)
{
    if (pos0 > r->kv.n_tokens || pos0 + n <= r->kv.n_tokens)
        return BT_OK; /* a gap (a lost message), or nothing new */
    int st = bt_kv_seq_reserve(&r->kv, pr->pool, pos0 + n);
    if (st != BT_OK)
        return st;
    rows_copy(pr, &r->kv, pos0, n, data, 1);
    r->kv.n_tokens = pos0 + n;
    return BT_OK;
}

static void rep_resume(bt_pair_t *pr, bt_worker_t *w, rep_t *r)
{
    bt_reqtable_del(&pr->reps, r->req->id);
    bt_req_t *req = r->req;
    int32_t k = r->n_resume, have = req->n_prompt + k - 1;
    own_t *o = bt_calloc(1, sizeof *o);
    if (!o || bt_reqtable_put(&pr->owns, req->id, o) != BT_OK) {
        bt_free(o);
        reply(w, req->id, BT_ERR_NOMEM, "out of memory", NULL);
        rep_free(pr, r);
        return;
    }
    o->partner_has = 1; /* the partner that handed it off keeps its KV */
    if (r->kv.n_tokens < have) {
        bt_info("req %llu: resuming with %d of %d positions; recomputing the rest",
                (unsigned long long)req->id, r->kv.n_tokens, have);
    }
    req->replica = 0;
    bt_debug("req %llu: resumed after %d tokens", (unsigned long long)req->id, k);
    reply(w, req->id, BT_OK, NULL, NULL);
    r->req = NULL;
    bt_batcher_add_resumed(pr->batcher, w, req, &r->kv, r->resume_ids, k);
    rep_free(pr, r);
}

/* Free blocks this member's own work needs kept: one per running sequence for its growth, and
 * the waiting prompts'. Replicas may use only what is beyond. */
static int32_t own_room(const bt_pair_t *pr)
{
    return bt_batcher_n_running(pr->batcher) +
           bt_blocks_for((int32_t)bt_batcher_waiting_tokens(pr->batcher),
                         bt_kv_pool_block_size(pr->pool));
}

/* A replica: reserve the prompt's blocks and have the loop post the receive. */
static void pr_assign_replica(bt_pair_t *pr, bt_worker_t *w, bt_req_t *req)
{
    int32_t need = bt_blocks_for(req->n_prompt, bt_kv_pool_block_size(pr->pool));
    if (bt_kv_pool_n_free(pr->pool) - need < own_room(pr)) {
        reply(w, req->id, BT_ERR_NOSPACE, "no free KV blocks for a replica", NULL);
        bt_req_destroy(req);
        return;
    }
    rep_t *r = bt_calloc(1, sizeof *r);
    int st = r ? bt_kv_seq_init(&r->kv, pr->pool, req->max_ctx) : BT_ERR_NOMEM;
    if (st == BT_OK)
        st = bt_kv_seq_reserve(&r->kv, pr->pool, req->n_prompt);
    pm_t *m = st == BT_OK ? pm_new(PM_POST, req->id, need, req->peer_kvx_len) : NULL;
    if (st == BT_OK && !m)
        st = BT_ERR_NOMEM;
    if (st == BT_OK)
        st = bt_reqtable_put(&pr->reps, req->id, r);
    if (st != BT_OK) {
        bt_free(m);
        if (r)
            bt_kv_seq_fini(&r->kv, pr->pool);
        bt_free(r);
        reply(w, req->id, st, bt_status_str(st), NULL);
        bt_req_destroy(req);
        return;
    }
    r->req = req;
    r->posted = 1;
    m->n_tokens = req->n_prompt;
    memcpy(m->blocks, r->kv.blocks, (size_t)need * sizeof(int32_t));
    if (req->peer_kvx_len)
        memcpy(m->bytes, req->peer_kvx, req->peer_kvx_len);
    if (pm_emit(w, m) != BT_OK) {
        bt_reqtable_del(&pr->reps, req->id);
        reply(w, req->id, BT_ERR_NOMEM, "out of memory", NULL);
        rep_free(pr, r);
    }
}

static void pr_assign(bt_pair_t *pr, bt_worker_t *w, bt_req_t *req)
{
    if (req->peer[0] && strcmp(req->peer, pr->partner) != 0) {
        bt_warn("req %llu: assignment names %s as the partner, not %s", (unsigned long long)req->id,
                req->peer, pr->partner);
        reply(w, req->id, BT_ERR_INVAL, "the assignment's peer is not this instance's partner",
              NULL);
        bt_req_destroy(req);
        return;
    }
    if (req->replica) {
        pr_assign_replica(pr, w, req);
        return;
    }
    own_t *o = bt_calloc(1, sizeof *o);
    if (!o || bt_reqtable_put(&pr->owns, req->id, o) != BT_OK) {
        bt_free(o);
        bt_worker_emit(w, bt_out_done(req, BATON__FINISH_REASON__FINISH_FAILED, 0, BT_ERR_NOMEM,
                                      "out of memory"));
        bt_req_destroy(req);
        return;
    }
    bt_batcher_add_prompt(pr->batcher, w, req);
}

/* Hands a decoding request to the partner: its KV stays here as a replica. */
static void pr_handoff(bt_pair_t *pr, bt_worker_t *w, uint64_t id)
{
    own_t *o = bt_reqtable_get(&pr->owns, id);
    if (!o || !o->partner_has)
        return;
    rep_t *r = bt_calloc(1, sizeof *r);
    int32_t n_gen = 0;
    bt_req_t *req = NULL;
    if (!r || bt_reqtable_put(&pr->reps, id, r) != BT_OK) {
        bt_free(r);
        return;
    }
    if (bt_batcher_detach(pr->batcher, id, &r->kv, &n_gen, &req) != BT_OK) {
        bt_reqtable_del(&pr->reps, id);
        bt_free(r);
        return;
    }
    bt_free(bt_reqtable_del(&pr->owns, id));
    r->req = req;
    r->complete = 1;
    bt_req_event(req, BATON__EVENT_KIND__HANDED_OFF, 0);
    bt_out_t *out = bt_out_new(BT_OUT_HANDOFF, id, 0);
    if (out) {
        out->n_output = (uint32_t)n_gen;
        bt_worker_emit(w, out);
    }
    bt_debug("req %llu: handed off after %d tokens", (unsigned long long)id, n_gen);
}

static void pr_handoff_all(bt_pair_t *pr, bt_worker_t *w)
{
    int n = bt_batcher_decoding_ids(pr->batcher, pr->handoff, pr->p.max_requests);
    for (int i = 0; i < n; i++)
        pr_handoff(pr, w, pr->handoff[i]);
    pr->n_handoff = 0;
}

static void pr_abort(bt_pair_t *pr, bt_worker_t *w, uint64_t id, int32_t status)
{
    if (bt_reqtable_get(&pr->srefs, id))
        pm_emit(w, pm_new(PM_CANCEL_SHIP, id, 0, 0));
    if (bt_batcher_abort(pr->batcher, w, id, status) == BT_OK)
        return;
    rep_t *r = bt_reqtable_get(&pr->reps, id);
    if (!r) {
        bt_debug("req %llu: abort of a request no longer here", (unsigned long long)id);
        bt_worker_forget(w, id);
        return;
    }
    if (r->posted && !r->complete) { /* the receive's final event ends it */
        if (!r->abort_status) {
            r->abort_status = status;
            pm_emit(w, pm_new(PM_CANCEL_POST, id, 0, 0));
        }
        return;
    }
    rep_end(pr, w, r, status == BT_ERR_CANCELLED ? BT_OK : status, NULL);
}

/* The loop reports the end of a receive or a ship. */
static void pr_kv(bt_pair_t *pr, bt_worker_t *w, const bt_cmd_t *c)
{
    if (c->detail == PK_SHIP) {
        shipref_t *sr = bt_reqtable_del(&pr->srefs, c->request_id);
        if (sr) {
            for (int32_t i = 0; i < sr->n; i++)
                bt_kv_pool_unref(pr->pool, sr->blocks[i]);
            bt_free(sr);
        }
        own_t *o = bt_reqtable_get(&pr->owns, c->request_id);
        if (c->status != BT_OK && o) {
            bt_info("req %llu: the replica's KV did not reach the partner: %s",
                    (unsigned long long)c->request_id, bt_status_str(c->status));
            o->partner_has = 0;
        }
        return;
    }
    rep_t *r = bt_reqtable_get(&pr->reps, c->request_id);
    if (!r || r->complete)
        return;
    if (c->detail == PK_REFUSED) { /* the loop answered the ASSIGN: nothing is owed */
        bt_reqtable_del(&pr->reps, c->request_id);
        rep_free(pr, r);
        return;
    }
    if (c->status != BT_OK || r->abort_status) {
        int32_t st = r->abort_status == BT_ERR_CANCELLED ? BT_OK
                     : r->abort_status                   ? r->abort_status
                                                         : c->status;
        rep_end(pr, w, r, st, st ? "the replica's KV did not arrive" : NULL);
        return;
    }
    r->complete = 1;
    r->kv.n_tokens = r->req->n_prompt;
    int st = BT_OK;
    while (r->early) {
        rowbuf_t *b = r->early;
        r->early = b->next;
        if (st == BT_OK)
            st = rep_apply(pr, r, b->pos0, b->n, b->data);
        bt_free(b);
    }
    r->early_tail = NULL;
    if (st != BT_OK) {
        rep_end(pr, w, r, BT_ERR_NOSPACE, "no KV blocks for the replica's rows");
        return;
    }
    if (r->n_resume)
        rep_resume(pr, w, r);
}

/* Rows from the partner (BT_CMD_ROLE). Malformed messages are dropped whole. */
static void pr_rows(bt_pair_t *pr, bt_worker_t *w, const uint8_t *p, size_t len)
{
    uint32_t hdr[2];
    if (len < 8)
        goto bad;
    memcpy(hdr, p, 8);
    if (hdr[0] != ROWS_MAGIC || hdr[1] > (uint32_t)pr->p.max_requests * 4 ||
        len < 8 + (size_t)hdr[1] * 16)
        goto bad;
    size_t total = 8 + (size_t)hdr[1] * 16;
    for (uint32_t i = 0; i < hdr[1]; i++) {
        int32_t e[2];
        memcpy(e, p + 8 + (size_t)i * 16 + 8, 8);
        if (e[0] < 0 || e[1] <= 0 || e[1] > (1 << 20) || e[0] > (1 << 30))
            goto bad;
        total += rows_bytes(pr, e[1]);
    }
    if (total != len)
        goto bad;
    const uint8_t *d = p + 8 + (size_t)hdr[1] * 16;
    for (uint32_t i = 0; i < hdr[1]; i++) {
        uint64_t id;
        int32_t e[2];
        memcpy(&id, p + 8 + (size_t)i * 16, 8);
        memcpy(e, p + 8 + (size_t)i * 16 + 8, 8);
        size_t nb = rows_bytes(pr, e[1]);
        rep_t *r = bt_reqtable_get(&pr->reps, id);
        if (r && !r->abort_status && e[0] + e[1] <= r->req->max_ctx) {
            if (r->complete) {
                if (rep_apply(pr, r, e[0], e[1], (uint8_t *)d) != BT_OK)
                    rep_end(pr, w, r, BT_ERR_NOSPACE, "no KV blocks for the replica's rows");
            } else {
                rowbuf_t *b = bt_malloc(sizeof *b + nb);
                if (b) {
                    b->next = NULL;
                    b->pos0 = e[0];
                    b->n = e[1];
                    memcpy(b->data, d, nb);
                    if (r->early_tail)
                        r->early_tail->next = b;
                    else
                        r->early = b;
                    r->early_tail = b;
                }
            }
        }
        d += nb;
    }
    return;
bad:
    bt_warn("pair: malformed rows message of %zu bytes from the partner; dropped", len);
}

static void pr_resume(bt_pair_t *pr, bt_worker_t *w, const bt_cmd_t *c)
{
    rep_t *r = bt_reqtable_get(&pr->reps, c->request_id);
    if (!r && bt_reqtable_get(&pr->owns, c->request_id)) {
        /* running here already (a RESUME again, after the first one resumed it): an error
         * would make the worker forget a request that goes on and could then not be aborted */
        bt_warn("req %llu: RESUME of a request running here; it goes on",
                (unsigned long long)c->request_id);
        bt_free(c->ids);
        reply(w, c->request_id, BT_OK, NULL, NULL);
        return;
    }
    if (r && r->n_resume && !r->abort_status) {
        /* a second RESUME: the first one's reply answers it (an error here would make the
         * worker forget a request that goes on) */
        bt_warn("req %llu: RESUME again; the first one goes on", (unsigned long long)c->request_id);
        bt_free(c->ids);
        return;
    }
    /* (past the check above, a replica with n_resume set is already ending: abort_status) */
    if (!r || r->abort_status || c->n_ids > r->req->max_ctx - r->req->n_prompt) {
        bt_free(c->ids);
        /* An ASSIGN_REPLY error means "nothing in flight here" (the worker forgets the id, and
         * so would drop a later ABORT): drop the replica with it. One whose KV is still arriving
         * ends when its receive does, with a DONE the router ignores. */
        if (r && !r->abort_status) {
            if (r->posted && !r->complete) {
                r->abort_status = BT_ERR_CANCELLED;
                pm_emit(w, pm_new(PM_CANCEL_POST, c->request_id, 0, 0));
            } else {
                bt_reqtable_del(&pr->reps, c->request_id);
                rep_free(pr, r);
            }
        }
        reply(w, c->request_id, BT_ERR_NOT_FOUND, "no usable replica here", NULL);
        return;
    }
    r->resume_ids = c->ids;
    r->n_resume = c->n_ids;
    if (r->complete)
        rep_resume(pr, w, r);
    /* else: resumed when the prompt's KV arrives */
}

/* Memory pressure: drop replicas (clean copies) before own sequences would be preempted. */
static void pr_make_room(bt_pair_t *pr, bt_worker_t *w)
{
    if (!bt_reqtable_len(&pr->reps))
        return;
    int32_t want = own_room(pr);
    size_t pos = 0;
    rep_t *r;
    while (bt_kv_pool_n_free(pr->pool) < want &&
           (r = bt_reqtable_next(&pr->reps, &pos, NULL)) != NULL) {
        if (!r->complete || r->n_resume)
            continue;
        bt_info("req %llu: dropping its replica (%d blocks) for memory",
                (unsigned long long)r->req->id, r->kv.n_blocks);
        rep_end(pr, w, r, BT_ERR_NOSPACE, "replica dropped for memory");
        pos = 0;
    }
}

static void pr_command(void *ctx, bt_worker_t *w, const bt_cmd_t *c)
{
    bt_pair_t *pr = ctx;
    switch (c->kind) {
    case BT_CMD_ASSIGN: pr_assign(pr, w, c->req); break;
    case BT_CMD_ABORT: pr_abort(pr, w, c->request_id, c->status); break;
    case BT_CMD_KV: pr_kv(pr, w, c); break;
    case BT_CMD_RESUME: pr_resume(pr, w, c); break;
    case BT_CMD_ROLE:
        pr_rows(pr, w, c->data, c->len);
        bt_free(c->data);
        break;
    case BT_CMD_SET_ROLE:
        if (c->len) {
            pm_t *m = pm_new(PM_PARTNER, 0, 0, c->len);
            if (m)
                memcpy(m->bytes, c->data, c->len);
            pm_emit(w, m);
        }
        bt_free(c->data);
        if (c->status == BATON__ROLE__PREFILL || c->status == BATON__ROLE__DECODE) {
            if ((int32_t)pr->serving != c->status)
                bt_info("pair: now serving %s",
                        c->status == BATON__ROLE__PREFILL ? "prefill" : "decode");
            pr->serving = (Baton__Role)c->status;
            /* serving prefill: prompts run alone and leave at once; serving decode: prompts
             * and resumed requests join the running batch */
            bt_batcher_set_prefill_first(pr->batcher, pr->serving == BATON__ROLE__PREFILL);
            if (pr->serving == BATON__ROLE__PREFILL)
                pr_handoff_all(pr, w);
        }
        break;
    }
}

/* Ships of requests that are over here (finished, cancelled, or their replica dropped after a
 * hand-off): nobody will use that KV, and a ship whose receiver never reserved for it (the
 * partner's receive ended first) would otherwise wait for it forever, holding its blocks. */
static void ships_orphaned(bt_pair_t *pr, bt_worker_t *w)
{
    size_t pos = 0;
    uint64_t id;
    shipref_t *sr;
    while ((sr = bt_reqtable_next(&pr->srefs, &pos, &id)) != NULL) {
        if (sr->cancelled || bt_reqtable_get(&pr->owns, id) || bt_reqtable_get(&pr->reps, id))
            continue;
        bt_debug("req %llu: over here; its replica's ship stops", (unsigned long long)id);
        sr->cancelled = 1;
        pm_emit(w, pm_new(PM_CANCEL_SHIP, id, 0, 0));
    }
}

static int pr_step(void *ctx, bt_worker_t *w)
{
    bt_pair_t *pr = ctx;
    pr_make_room(pr, w);
    int st = bt_batcher_step(pr->batcher, w);
    streams_settle(pr, w);
    if (bt_reqtable_len(&pr->srefs))
        ships_orphaned(pr, w);
    for (int i = 0; i < pr->n_handoff; i++)
        pr_handoff(pr, w, pr->handoff[i]);
    pr->n_handoff = 0;
    uint32_t rep_blocks = 0;
    size_t pos = 0;
    rep_t *r;
    while ((r = bt_reqtable_next(&pr->reps, &pos, NULL)) != NULL)
        rep_blocks += (uint32_t)r->kv.n_blocks;
    bt_worker_stats_t s = {
        .queue_len = (uint32_t)bt_batcher_n_waiting(pr->batcher),
        .running = (uint32_t)bt_batcher_n_running(pr->batcher),
        .kv_free_blocks = (uint32_t)bt_kv_pool_n_free(pr->pool),
        .kv_total_blocks = (uint32_t)bt_kv_pool_n_blocks(pr->pool),
        .queued_tokens = (uint64_t)bt_batcher_waiting_tokens(pr->batcher),
        .serving = pr->serving,
        .replicas = (uint32_t)bt_reqtable_len(&pr->reps),
        .replica_blocks = rep_blocks,
        .decoding = (uint32_t)bt_reqtable_len(&pr->owns),
    };
    bt_worker_publish(w, &s);
    return st;
}

/* ---- loop thread -------------------------------------------------------------------------- */

static void report(bt_pair_t *pr, uint64_t id, int detail, int32_t status)
{
    bt_cmd_t c = {.kind = BT_CMD_KV,
                  .request_id = id,
                  .status = status,
                  .detail = (uint64_t)detail,
                  .time_ns = bt_rpc_now_ns()};
    if (bt_worker_command(pr->w, &c) != BT_OK)
        bt_error("req %llu: cannot report the end of a transfer", (unsigned long long)id);
}

static void xfer_free(bt_pair_t *pr, bt_reqtable_t *t, xfer_t *x)
{
    if (x->msg->stream) { /* withdraw the send before it is released */
        pthread_mutex_lock(&pr->stream_mu);
        x->msg->stream->send = NULL;
        pthread_mutex_unlock(&pr->stream_mu);
    }
    bt_reqtable_del(t, x->msg->req_id);
    if (x->recv)
        bt_kvx_recv_release(x->recv);
    if (x->send)
        bt_kvx_send_release(x->send);
    bt_free(x->msg);
    bt_free(x);
}

/* Frees x, then reports its end to the compute thread (which may free what x borrowed, the
 * stream of a layer-wise ship, as soon as it hears). */
static void xfer_end(bt_pair_t *pr, bt_reqtable_t *t, xfer_t *x, int detail, int32_t status)
{
    uint64_t id = x->msg->req_id;
    xfer_free(pr, t, x);
    report(pr, id, detail, status);
}

/* The connection to the partner: the member whose id sorts first connects. */
static bt_kvx_peer_t *partner_peer(bt_pair_t *pr, const void *addr, size_t len)
{
    int connect = strcmp(pr->self, pr->partner) < 0;
    if (!addr || !len) {
        addr = pr->partner_addr;
        len = pr->partner_addr_len;
    }
    return bt_kvlink_peer(pr->p.link, pr->partner, addr, len, connect);
}

/* Posts a replica's receive once the partner is connected and answers with the reservation.
 * Returns 0 while waiting, 1 when posted, 2 when it ended (x is gone). */
static int post_try(bt_pair_t *pr, xfer_t *x)
{
    const pm_t *m = x->msg;
    bt_kvx_peer_t *peer = partner_peer(pr, m->bytes, m->len);
    int st = peer ? bt_kvx_peer_status(peer) : BT_AGAIN;
    if (st == BT_AGAIN)
        return 0;
    bt_kvx_recv_params_t rp = {
        .req_id = m->req_id, .blocks = m->blocks, .n_blocks = m->n_blocks, .n_tokens = m->n_tokens};
    if (st == BT_OK)
        st = bt_kvx_recv_post(peer, &rp, &x->recv);
    if (st == BT_AGAIN)
        return 0;
    if (st != BT_OK) {
        bt_worker_send(pr->w, bt_out_assign_reply(m->req_id, BATON__ROLE__PAIR, BT_ERR_UNAVAILABLE,
                                                  "cannot reach the partner for the KV", NULL));
        xfer_end(pr, &pr->posts, x, PK_REFUSED, st);
        return 2;
    }
    bt_reservation_t resv = {.id = m->req_id,
                             .generation = bt_kvx_recv_gen(x->recv),
                             .blocks = (int32_t *)m->blocks,
                             .n_blocks = m->n_blocks,
                             .n_tokens = m->n_tokens};
    bt_worker_send(pr->w, bt_out_assign_reply(m->req_id, BATON__ROLE__PAIR, BT_OK, NULL, &resv));
    return 1;
}

static int ship_try(bt_pair_t *pr, xfer_t *x)
{
    const pm_t *m = x->msg;
    bt_kvx_peer_t *peer = partner_peer(pr, NULL, 0);
    int st = peer ? bt_kvx_peer_status(peer) : BT_AGAIN;
    if (st == BT_AGAIN)
        return 0;
    bt_kvx_send_params_t sp = {.req_id = m->req_id,
                               .blocks = m->blocks,
                               .n_blocks = m->n_blocks,
                               .n_tokens = m->n_tokens,
                               .layerwise = m->stream != NULL};
    if (st == BT_OK)
        st = bt_kvx_send_start(peer, &sp, &x->send);
    if (st == BT_OK && m->stream) { /* publish it; release what the engine has done */
        pthread_mutex_lock(&pr->stream_mu);
        bt_kvlink_stream_attach(m->stream, x->send);
        pthread_mutex_unlock(&pr->stream_mu);
    }
    if (st == BT_OK) /* the notice follows the last layer */
        st = bt_kvx_send_finish(x->send, 0, NULL, 0);
    if (st != BT_OK) {
        if (x->send) {
            bt_kvx_send_cancel(x->send); /* its final event ends it */
            return 1;
        }
        xfer_end(pr, &pr->ships, x, PK_SHIP, st);
        return 2;
    }
    return 1;
}

static void pr_loop_output(void *ctx, bt_worker_t *w, bt_out_t *o)
{
    bt_pair_t *pr = ctx;
    pm_t *m = o->role_data;
    pr->w = w;
    bt_out_free(o);
    bt_reqtable_t *t = m->kind == PM_POST || m->kind == PM_CANCEL_POST ? &pr->posts : &pr->ships;
    xfer_t *x = bt_reqtable_get(t, m->req_id);
    switch (m->kind) {
    case PM_ROWS: {
        bt_kvx_peer_t *peer = partner_peer(pr, NULL, 0);
        if (peer && bt_kvx_peer_status(peer) == BT_OK)
            bt_kvx_peer_message(peer, m->bytes, m->len);
        bt_free(m);
        return;
    }
    case PM_PARTNER:
        if (m->len &&
            (pr->partner_addr_len != m->len || memcmp(pr->partner_addr, m->bytes, m->len) != 0)) {
            uint8_t *a = bt_malloc(m->len);
            if (a) {
                memcpy(a, m->bytes, m->len);
                bt_free(pr->partner_addr);
                pr->partner_addr = a;
                pr->partner_addr_len = m->len;
            }
        }
        partner_peer(pr, NULL, 0); /* connect now, off the request path */
        bt_free(m);
        return;
    case PM_CANCEL_POST:
    case PM_CANCEL_SHIP:
        bt_free(m);
        if (x && (x->recv || x->send)) {
            if (x->recv)
                bt_kvx_recv_cancel(x->recv);
            else
                bt_kvx_send_cancel(x->send);
        } else if (x) {
            /* never started: the compute side ends it (a replica with DONE CANCELLED) */
            xfer_end(pr, t, x, t == &pr->posts ? PK_RECV : PK_SHIP, BT_ERR_CANCELLED);
        }
        return;
    }
    x = bt_calloc(1, sizeof *x);
    if (!x || bt_reqtable_put(t, m->req_id, x) != BT_OK) {
        bt_free(x);
        if (m->kind == PM_POST)
            bt_worker_send(w, bt_out_assign_reply(m->req_id, BATON__ROLE__PAIR, BT_ERR_NOMEM,
                                                  "out of memory", NULL));
        report(pr, m->req_id, m->kind == PM_POST ? PK_REFUSED : PK_SHIP, BT_ERR_NOMEM);
        bt_free(m);
        return;
    }
    x->msg = m;
    x->deadline_ms = mono_ms() + (uint64_t)pr->p.peer_wait_ms;
    if (m->kind == PM_POST)
        post_try(pr, x);
    else
        ship_try(pr, x);
}

static void pr_on_event(void *ctx, const bt_kvx_event_t *ev)
{
    bt_pair_t *pr = ctx;
    if (ev->type == BT_KVX_EV_MESSAGE) {
        bt_cmd_t c = {.kind = BT_CMD_ROLE, .len = ev->meta_len};
        c.data = bt_malloc(ev->meta_len ? ev->meta_len : 1);
        if (c.data)
            memcpy(c.data, ev->meta, ev->meta_len);
        if (!c.data || bt_worker_command(pr->w, &c) != BT_OK) {
            bt_free(c.data);
            bt_warn("pair: rows from the partner dropped (busy); a resume would recompute them");
        }
        return;
    }
    if (ev->type == BT_KVX_EV_OFFERED) {
        /* The partner ships a prompt this member holds no receive for (it ended, or was never
         * posted here): it would wait for a reservation that never comes. */
        if (!bt_reqtable_get(&pr->posts, ev->req_id)) {
            bt_debug("req %llu: declining the partner's ship (no replica here)",
                     (unsigned long long)ev->req_id);
            bt_kvx_decline(ev->peer, ev->req_id, BT_ERR_NOT_FOUND);
        }
        return;
    }
    int recv = ev->type == BT_KVX_EV_RECV_DONE;
    if (!recv && ev->type != BT_KVX_EV_SEND_DONE)
        return;
    bt_reqtable_t *t = recv ? &pr->posts : &pr->ships;
    xfer_t *x = bt_reqtable_get(t, ev->req_id);
    if (x && (recv ? x->recv == ev->recv : x->send == ev->send)) {
        int32_t st = ev->status;
        if (recv && st == BT_OK && ev->n_tokens != x->msg->n_tokens)
            st = BT_ERR_MISMATCH;
        xfer_end(pr, t, x, recv ? PK_RECV : PK_SHIP, st);
    } else if (recv) {
        bt_kvx_recv_release(ev->recv);
    } else {
        bt_kvx_send_release(ev->send);
    }
}

/* Transfers waiting for the partner's connection: start them once it is up; past the deadline
 * a receive is refused and a ship given up (the partner keeps no replica then). */
static void retry_parked(bt_pair_t *pr)
{
    uint64_t now = mono_ms();
    bt_reqtable_t *ts[2] = {&pr->posts, &pr->ships};
    for (int i = 0; i < 2; i++) {
        size_t pos = 0;
        xfer_t *x;
        while ((x = bt_reqtable_next(ts[i], &pos, NULL)) != NULL) {
            int done = x->recv || x->send ? 1 : i == 0 ? post_try(pr, x) : ship_try(pr, x);
            if (done == 2)
                pos = 0;
            if (done || now < x->deadline_ms)
                continue;
            bt_warn("req %llu: the partner %s did not connect in time",
                    (unsigned long long)x->msg->req_id, pr->partner);
            if (i == 0) {
                bt_worker_send(pr->w, bt_out_assign_reply(x->msg->req_id, BATON__ROLE__PAIR,
                                                          BT_ERR_UNAVAILABLE,
                                                          "the partner did not connect", NULL));
                xfer_end(pr, ts[i], x, PK_REFUSED, BT_ERR_UNAVAILABLE);
            } else {
                xfer_end(pr, ts[i], x, PK_SHIP, BT_ERR_UNAVAILABLE);
            }
            pos = 0;
        }
    }
}

static int pr_loop_fd(void *ctx, bt_worker_t *w)
{
    bt_pair_t *pr = ctx;
    pr->w = w;
    return bt_kvlink_loop_fd(pr->p.link, w, pr_on_event, pr);
}

static void pr_loop_poll(void *ctx, bt_worker_t *w)
{
    bt_pair_t *pr = ctx;
    pr->w = w;
    bt_kvlink_pump(pr->p.link, pr_on_event, pr);
    if (pr->partner_addr_len)
        partner_peer(pr, NULL, 0);
    retry_parked(pr);
}

static void pr_heartbeat(void *ctx, Baton__Heartbeat *hb)
{
    bt_pair_t *pr = ctx;
    size_t len;
    const void *addr = bt_kvlink_address(pr->p.link, &len);
    hb->kvx_address.data = (uint8_t *)addr;
    hb->kvx_address.len = len;
    hb->partner = (char *)pr->partner;
}

const bt_worker_ops_t bt_pair_ops = {
    .command = pr_command,
    .step = pr_step,
    .loop_fd = pr_loop_fd,
    .loop_poll = pr_loop_poll,
    .loop_output = pr_loop_output,
    .heartbeat = pr_heartbeat,
};
