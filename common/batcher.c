/* SPDX-License-Identifier: MIT */
/*
 * batcher.c - continuous batching over the engine (see batcher.h).
 *
 * A sequence's scheduler item mirrors its KV: n_kv is kv.n_tokens and n_blocks is kv.n_blocks
 * after every forward, and n_total is the length of its token list (prompt and generated), so
 * the next forward always feeds tokens [n_kv, n_total) of that list. A preempted sequence is one
 * whose KV was truncated to nothing: feeding its whole list recomputes it.
 */
#include "batcher.h"

#include <string.h>

#include "alloc.h"
#include "btassert.h"
#include "clock.h"
#include "log.h"
#include "parfor.h"
#include "reqtable.h"
#include "sched_decode.h"
#include "seqgen.h"
#include "status.h"

typedef struct {
    bt_req_t *req; /* owned */
    bt_sched_item_t item;
    bt_kv_seq_t kv;
    bt_seqgen_t *gen;
    int begun;    /* DECODE_BEGIN (or PREFILL_BEGIN) recorded */
    int decoding; /* the first token exists */
} seq_t;

struct bt_batcher {
    bt_batcher_params_t p;
    bt_kv_pool_t *pool; /* the engine's */
    const bt_model_t *model;
    bt_sched_decode_t sched;
    bt_reqtable_t seqs;          /* request id -> seq_t */
    bt_sched_item_t **run;       /* (max_batch_seqs) plan */
    bt_sched_item_t **preempted; /* (max_requests) plan */
    bt_batch_seq_t *batch;       /* (max_batch_seqs) */
    bt_engine_out_t out;         /* (max_batch_seqs) rows: logits, greedy ids or top-k */
    bt_seqgen_step_t *steps;     /* (max_batch_seqs) the forward's tokens, sampled first */
    bt_seqgen_t **gens;          /* (max_batch_seqs) the generators of the forward's rows */
    bt_parfor_t *par;            /* helpers for sampling whole rows; NULL: one core */
    bt_batcher_rows_t *rows;     /* (max_batch_seqs) what a forward computes, for the hooks */
};

#define SEQ_OF(it) ((seq_t *)((char *)(it)-offsetof(seq_t, item)))

int bt_batcher_create(const bt_batcher_params_t *p, bt_batcher_t **out)
{
    if (!p->engine || p->max_batch_seqs <= 0 || p->max_requests <= 0)
        return BT_ERR_INVAL;
    bt_batcher_t *b = bt_calloc(1, sizeof *b);
    if (!b)
        return BT_ERR_NOMEM;
    b->p = *p;
    b->pool = bt_engine_kv_pool(p->engine);
    b->model = bt_engine_model(p->engine);
    bt_sched_decode_params_t sp = {.max_batch_tokens = bt_engine_max_batch_tokens(p->engine),
                                   .max_batch_seqs = p->max_batch_seqs,
                                   .block_size = bt_kv_pool_block_size(b->pool),
                                   .prefill_first = p->prefill_first,
                                   .growth_reserve = p->growth_reserve};
    bt_sched_decode_init(&b->sched, &sp);
    bt_reqtable_init(&b->seqs);
    size_t n = (size_t)p->max_batch_seqs;
    b->run = bt_malloc(n * sizeof *b->run);
    b->preempted = bt_malloc((size_t)p->max_requests * sizeof *b->preempted);
    b->batch = bt_malloc(n * sizeof *b->batch);
    b->rows = bt_malloc(n * sizeof *b->rows);
    b->steps = bt_malloc(n * sizeof *b->steps);
    b->gens = bt_malloc(n * sizeof *b->gens);
    if (!b->run || !b->preempted || !b->batch || !b->rows || !b->steps || !b->gens ||
        bt_parfor_create(0, &b->par) != BT_OK ||
        bt_engine_out_init(&b->out, p->max_batch_seqs, b->model->hp.n_vocab) != BT_OK) {
        bt_batcher_destroy(b);
        return BT_ERR_NOMEM;
    }
    *out = b;
    return BT_OK;
}

static void seq_free(bt_batcher_t *b, seq_t *s)
{
    if (b->p.hooks.ended && s->req)
        b->p.hooks.ended(b->p.hooks.arg, s->req);
    bt_seqgen_destroy(s->gen);
    bt_kv_seq_fini(&s->kv, b->pool);
    bt_req_destroy(s->req);
    bt_free(s);
}

void bt_batcher_destroy(bt_batcher_t *b)
{
    if (!b)
        return;
    size_t pos = 0;
    seq_t *s;
    while ((s = bt_reqtable_next(&b->seqs, &pos, NULL)) != NULL)
        seq_free(b, s);
    bt_reqtable_fini(&b->seqs);
    bt_free(b->rows);
    bt_engine_out_fini(&b->out);
    bt_parfor_destroy(b->par);
    bt_free(b->steps);
    bt_free(b->gens);
    bt_free(b->batch);
    bt_free(b->preempted);
    bt_free(b->run);
    bt_free(b);
}

/* Ends s with DONE and frees it (its KV goes back to the pool). */
static void seq_finish(bt_batcher_t *b, bt_worker_t *w, seq_t *s, Baton__FinishReason why,
                       int32_t status, const char *detail)
{
    bt_sched_decode_remove(&b->sched, &s->item);
    bt_reqtable_del(&b->seqs, s->req->id);
    uint32_t n_out = s->gen ? (uint32_t)bt_seqgen_n_generated(s->gen) : 0;
    bt_debug("req %llu: finished (reason %d, %u tokens)", (unsigned long long)s->req->id, (int)why,
             n_out);
    bt_worker_emit(w, bt_out_done(s->req, why, n_out, status, detail ? "%s" : NULL, detail));
    seq_free(b, s);
}

/* Creates the sequence state; on failure ends req with DONE FAILED and returns NULL. */
static seq_t *seq_new(bt_batcher_t *b, bt_worker_t *w, bt_req_t *req)
{
    seq_t *s = bt_calloc(1, sizeof *s);
    int st = s ? BT_OK : BT_ERR_NOMEM;
    if (st == BT_OK)
        st = bt_seqgen_create(req, b->model->tok, b->model->hp.n_vocab, &s->gen);
    if (st == BT_OK)
        st = bt_reqtable_put(&b->seqs, req->id, s);
    if (st != BT_OK) {
        bt_error("req %llu: cannot set up generation: %s", (unsigned long long)req->id,
                 bt_status_str(st));
        bt_worker_emit(w, bt_out_done(req, BATON__FINISH_REASON__FINISH_FAILED, 0, st,
                                      "cannot set up generation: %s", bt_status_str(st)));
        if (s)
            bt_seqgen_destroy(s->gen);
        bt_free(s);
        bt_req_destroy(req);
        return NULL;
    }
    s->req = req;
    s->item.n_max = req->max_ctx;
    return s;
}

void bt_batcher_add_prompt(bt_batcher_t *b, bt_worker_t *w, bt_req_t *req)
{
    seq_t *s = seq_new(b, w, req);
    if (!s)
        return;
    int st = bt_kv_seq_init(&s->kv, b->pool, req->max_ctx);
    if (st != BT_OK) {
        seq_finish(b, w, s, BATON__FINISH_REASON__FINISH_FAILED, st, "out of memory");
        return;
    }
    bt_req_event(req, BATON__EVENT_KIND__PREFILL_QUEUED, 0);
    s->item.n_total = req->n_prompt;
    bt_sched_decode_add(&b->sched, &s->item);
}

/* Tokens that came from another daemon (a prefill's first token, a partner's output) go
 * into the next forward with the rest of the batch: one outside the vocabulary would fail the
 * whole step, so it ends only its own request. 1 when it did. */
static int bad_tokens(bt_batcher_t *b, bt_worker_t *w, seq_t *s, const int32_t *ids, int32_t k)
{
    for (int32_t i = 0; i < k; i++) {
        if (ids[i] < 0 || ids[i] >= b->model->hp.n_vocab) {
            bt_error("req %llu: token %d from the peer is outside the vocabulary",
                     (unsigned long long)s->req->id, ids[i]);
            seq_finish(b, w, s, BATON__FINISH_REASON__FINISH_FAILED, BT_ERR_FORMAT,
                       "a token from the peer is outside the vocabulary");
            return 1;
        }
    }
    return 0;
}

/* A sequence that arrives decoding, with its KV (taken over; freed if s cannot be made) and
 * tokens ids[0..k) from the peer; event is recorded on req. NULL when it has ended already (no
 * memory for it, or a token outside the vocabulary). */
static seq_t *seq_adopt(bt_batcher_t *b, bt_worker_t *w, bt_req_t *req, bt_kv_seq_t *kv,
                        Baton__EventKind event, const int32_t *ids, int32_t k)
{
    seq_t *s = seq_new(b, w, req);
    if (!s) {
        bt_kv_seq_fini(kv, b->pool);
        return NULL;
    }
    s->kv = *kv;
    memset(kv, 0, sizeof *kv);
    s->decoding = 1;
    bt_req_event(req, event, 0);
    return bad_tokens(b, w, s, ids, k) ? NULL : s;
}

/* Hands s to the scheduler with its item mirroring its KV and token list. */
static void seq_queue_decode(bt_batcher_t *b, seq_t *s)
{
    s->item.n_kv = s->kv.n_tokens;
    s->item.n_blocks = s->kv.n_blocks;
    s->item.n_total = bt_seqgen_len(s->gen);
    bt_sched_decode_add(&b->sched, &s->item);
}

void bt_batcher_add_continued(bt_batcher_t *b, bt_worker_t *w, bt_req_t *req, bt_kv_seq_t *kv,
                              int32_t first_token)
{
    BT_ASSERT(kv->n_tokens == req->n_prompt);
    seq_t *s = seq_adopt(b, w, req, kv, BATON__EVENT_KIND__DECODE_QUEUED, &first_token, 1);
    if (!s)
        return;
    bt_seqgen_step_t st;
    bt_seqgen_append(s->gen, first_token, &st);
    if (st.finish != BATON__FINISH_REASON__FINISH_NONE) { /* the first token ended it */
        seq_finish(b, w, s, st.finish, BT_OK, NULL);
        return;
    }
    seq_queue_decode(b, s);
}

void bt_batcher_add_resumed(bt_batcher_t *b, bt_worker_t *w, bt_req_t *req, bt_kv_seq_t *kv,
                            const int32_t *ids, int32_t k)
{
    BT_ASSERT(k >= 1);
    seq_t *s = seq_adopt(b, w, req, kv, BATON__EVENT_KIND__RESUMED, ids, k);
    if (!s)
        return;
    for (int32_t i = 0; i < k; i++) {
        bt_seqgen_step_t st;
        bt_seqgen_append(s->gen, ids[i], &st);
        if (st.finish != BATON__FINISH_REASON__FINISH_NONE) { /* it had ended already */
            seq_finish(b, w, s, st.finish, BT_OK, NULL);
            return;
        }
    }
    int32_t have = req->n_prompt + k - 1; /* the last token's KV is the next forward's */
    if (s->kv.n_tokens > have)
        bt_kv_seq_truncate(&s->kv, b->pool, have);
    seq_queue_decode(b, s);
}

int bt_batcher_detach(bt_batcher_t *b, uint64_t id, bt_kv_seq_t *kv, int32_t *n_generated,
                      bt_req_t **req_out)
{
    seq_t *s = bt_reqtable_get(&b->seqs, id);
    if (!s)
        return BT_ERR_NOT_FOUND;
    int32_t n_gen = bt_seqgen_n_generated(s->gen);
    if (!s->decoding || n_gen < 1 || s->kv.n_tokens < s->req->n_prompt + n_gen - 1)
        return BT_AGAIN;
    bt_sched_decode_remove(&b->sched, &s->item);
    bt_reqtable_del(&b->seqs, id);
    *kv = s->kv;
    memset(&s->kv, 0, sizeof s->kv);
    *n_generated = n_gen;
    *req_out = s->req;
    s->req = NULL;
    seq_free(b, s);
    return BT_OK;
}

int bt_batcher_decoding_ids(const bt_batcher_t *b, uint64_t *ids, int cap)
{
    int n = 0;
    size_t pos = 0;
    seq_t *s;
    while (n < cap && (s = bt_reqtable_next((bt_reqtable_t *)&b->seqs, &pos, NULL)) != NULL)
        if (s->decoding && s->gen && bt_seqgen_n_generated(s->gen) >= 1 &&
            s->kv.n_tokens >= s->req->n_prompt + bt_seqgen_n_generated(s->gen) - 1)
            ids[n++] = s->req->id;
    return n;
}

void bt_batcher_set_prefill_first(bt_batcher_t *b, int prefill_first)
{
    b->p.prefill_first = prefill_first;
    b->sched.p.prefill_first = prefill_first;
}

int bt_batcher_has(const bt_batcher_t *b, uint64_t id)
{
    return bt_reqtable_get((bt_reqtable_t *)&b->seqs, id) != NULL;
}

int bt_batcher_abort(bt_batcher_t *b, bt_worker_t *w, uint64_t id, int32_t status)
{
    seq_t *s = bt_reqtable_get(&b->seqs, id);
    if (!s)
        return BT_ERR_NOT_FOUND;
    int cancelled = status == BT_ERR_CANCELLED;
    /* A cancel is not a failure: status 0, so the router does not fail it over. */
    if (cancelled)
        seq_finish(b, w, s, BATON__FINISH_REASON__FINISH_CANCELLED, BT_OK, NULL);
    else
        seq_finish(b, w, s, BATON__FINISH_REASON__FINISH_FAILED, status, "aborted");
    return BT_OK;
}

/* Records the begin event of the phase a planned sequence is in (once per phase). */
static void seq_begin(seq_t *s)
{
    if (s->begun)
        return;
    s->begun = 1;
    bt_req_event(s->req,
                 s->decoding ? BATON__EVENT_KIND__DECODE_BEGIN : BATON__EVENT_KIND__PREFILL_BEGIN,
                 0);
}

/* Streams s's next token (st, sampled from its row of the forward) and ends s at a stop
 * condition. */
static void seq_advance(bt_batcher_t *b, bt_worker_t *w, seq_t *s, const bt_seqgen_step_t *st_in)
{
    const bt_seqgen_step_t st = *st_in;
    int prefilled = 0;
    if (!s->decoding) { /* colocated: this was the prefill */
        bt_req_event(s->req, BATON__EVENT_KIND__PREFILL_END, 0);
        s->decoding = 1;
        s->begun = 0;
        prefilled = 1;
    }
    if (st.index >= s->req->skip_tokens)
        bt_worker_emit(w, bt_out_chunk(st.index == 0 ? BT_OUT_FIRST_TOKEN : BT_OUT_STREAM,
                                       s->req->id, &st.token, 1, st.text, st.n_text, st.index));
    if (prefilled && b->p.hooks.prefilled && st.finish == BATON__FINISH_REASON__FINISH_NONE)
        b->p.hooks.prefilled(b->p.hooks.arg, w, s->req, &s->kv);
    if (st.finish != BATON__FINISH_REASON__FINISH_NONE) {
        seq_finish(b, w, s, st.finish, BT_OK, NULL);
        return;
    }
    s->item.n_total = bt_seqgen_len(s->gen);
}

/* One forward of the plan's rows, into what their sampling needs (b->out.k). */
static int engine_forward(bt_batcher_t *b, bt_batch_seq_t *seqs, int n)
{
    return bt_engine_forward_out(b->p.engine, seqs, n, &b->out);
}

/* Runs a sequence too long for one forward alone, chunk by chunk; logits of the last chunk. */
static int forward_chunked(bt_batcher_t *b, seq_t *s)
{
    int32_t chunk = bt_engine_max_batch_tokens(b->p.engine);
    const int32_t *toks = bt_seqgen_tokens(s->gen);
    int32_t end = s->item.n_total;
    while (s->kv.n_tokens < end) {
        int32_t n = end - s->kv.n_tokens < chunk ? end - s->kv.n_tokens : chunk;
        bt_batch_seq_t one = {.kv = &s->kv,
                              .tokens = toks + s->kv.n_tokens,
                              .n_tokens = n,
                              .logits =
                                  s->kv.n_tokens + n == end ? BT_LOGITS_LAST : BT_LOGITS_NONE};
        int st = engine_forward(b, &one, 1);
        if (st != BT_OK)
            return st;
    }
    return BT_OK;
}

static int forward_plan(bt_batcher_t *b, int32_t n_run)
{
    int32_t rows = 0;
    b->out.k = 1;
    for (int32_t i = 0; i < n_run; i++) {
        seq_t *s = SEQ_OF(b->run[i]);
        bt_seqgen_out_want(&s->req->sampling, bt_seqgen_tokens(s->gen), bt_seqgen_len(s->gen),
                           b->model->hp.n_vocab, &b->out, i);
        int32_t n = s->item.n_total - s->kv.n_tokens;
        b->batch[i] = (bt_batch_seq_t){.kv = &s->kv,
                                       .tokens = bt_seqgen_tokens(s->gen) + s->kv.n_tokens,
                                       .n_tokens = n,
                                       .logits = BT_LOGITS_LAST};
        rows += n;
    }
    if (n_run == 1 && rows > bt_engine_max_batch_tokens(b->p.engine))
        return forward_chunked(b, SEQ_OF(b->run[0]));
    return engine_forward(b, b->batch, n_run);
}

/* The step log's line for the plan's n rows (b->rows, as planned): a prefill batch when no
 * sequence was decoding, a decode step when each computed one token of a decoding sequence. */
static void log_step(bt_batcher_t *b, int32_t n, double t0, double forward_ms)
{
    double sum = 0, sum2 = 0, ctx = 0;
    int32_t decoding = 0;
    for (int32_t i = 0; i < n; i++) {
        const bt_batcher_rows_t *r = &b->rows[i];
        sum += r->n;
        sum2 += (double)r->n * r->n;
        ctx += r->pos0 + r->n;
        decoding += r->decoding && r->n == 1;
    }
    bt_step_kind_t kind = BT_STEP_MIXED; /* sequences, rows */
    double x = n, y = sum;
    if (decoding == n) { /* sequences, positions attended */
        kind = BT_STEP_DECODE;
        y = ctx;
    } else if (decoding == 0) { /* sum of prompt rows, sum of their squares */
        kind = BT_STEP_PREFILL;
        x = sum;
        y = sum2;
    }
    bt_steplog_write(b->p.steplog, kind, x, y, n, t0, forward_ms, bt_mono_ms() - t0);
}

int bt_batcher_step(bt_batcher_t *b, bt_worker_t *w)
{
    bt_sched_plan_t plan = {.run = b->run, .preempted = b->preempted};
    int32_t n_run = bt_sched_decode_plan(&b->sched, bt_kv_pool_n_free(b->pool), &plan);
    for (int32_t i = 0; i < plan.n_preempted; i++) {
        seq_t *s = SEQ_OF(plan.preempted[i]);
        bt_info("req %llu: preempted (KV of %d tokens dropped, recomputed later)",
                (unsigned long long)s->req->id, s->kv.n_tokens);
        bt_kv_seq_truncate(&s->kv, b->pool, 0);
    }
    if (n_run == 0)
        return BT_AGAIN;
    for (int32_t i = 0; i < n_run; i++)
        seq_begin(SEQ_OF(b->run[i]));
    /* A forward that succeeds computes exactly these rows (a long prompt chunk by chunk). */
    int32_t rows = 0;
    for (int32_t i = 0; i < n_run; i++) {
        seq_t *s = SEQ_OF(b->run[i]);
        rows += s->item.n_total - s->kv.n_tokens;
        b->rows[i] = (bt_batcher_rows_t){.req = s->req,
                                         .kv = &s->kv,
                                         .pos0 = s->kv.n_tokens,
                                         .n = s->item.n_total - s->kv.n_tokens,
                                         .decoding = s->decoding};
    }
    if (b->p.hooks.planned)
        b->p.hooks.planned(b->p.hooks.arg, w, b->rows, n_run,
                           n_run == 1 && rows > bt_engine_max_batch_tokens(b->p.engine));
    double t0 = b->p.steplog ? bt_mono_ms() : 0;
    int st = forward_plan(b, n_run);
    double forward_ms = b->p.steplog ? bt_mono_ms() - t0 : 0;
    /* Every sequence's token first, then streamed in order. Whole rows cost about a
     * millisecond each to sample on a large vocabulary: they go to every core (each sequence's
     * sampler and text are its own); greedy and top-k rows are cheap and stay on this thread. */
    if (st == BT_OK) {
        for (int32_t i = 0; i < n_run; i++)
            b->gens[i] = SEQ_OF(b->run[i])->gen;
        bt_seqgen_sample_rows(b->gens, n_run, b->p.engine, &b->out, b->par, b->steps);
    }
    bt_worker_hold(w);
    if (st == BT_OK && b->p.hooks.rows)
        b->p.hooks.rows(b->p.hooks.arg, w, b->rows, n_run);
    for (int32_t i = 0; i < n_run; i++) {
        seq_t *s = SEQ_OF(b->run[i]);
        s->item.n_kv = s->kv.n_tokens;
        s->item.n_blocks = s->kv.n_blocks;
        if (st != BT_OK) {
            bt_error("req %llu: forward failed: %s", (unsigned long long)s->req->id,
                     bt_status_str(st));
            seq_finish(b, w, s, BATON__FINISH_REASON__FINISH_FAILED, st, "forward failed");
            continue;
        }
        seq_advance(b, w, s, &b->steps[i]);
    }
    bt_worker_flush(w);
    if (b->p.steplog && st == BT_OK)
        log_step(b, n_run, t0, forward_ms);
    return BT_OK;
}

int32_t bt_batcher_n_waiting(const bt_batcher_t *b)
{
    return bt_sched_decode_n_waiting(&b->sched);
}

int32_t bt_batcher_n_running(const bt_batcher_t *b)
{
    return bt_sched_decode_n_running(&b->sched);
}

int32_t bt_batcher_growth_blocks(const bt_batcher_t *b)
{
    return bt_sched_decode_growth_blocks(&b->sched);
}

int64_t bt_batcher_running_tokens(const bt_batcher_t *b)
{
    return bt_sched_decode_running_tokens(&b->sched);
}

int64_t bt_batcher_waiting_tokens(const bt_batcher_t *b)
{
    return bt_sched_prefill_tokens(&b->sched.waiting);
}
