/* SPDX-License-Identifier: MIT */
/*
 * engine.c - the batched Llama forward pass.
 *
 * All sequences of a batch are laid out as consecutive rows (tokens) of one activation matrix,
 * so every weight matrix is streamed once per forward whatever the mix of prefill and decode.
 * Only attention needs to know where one sequence ends and the next begins (bt_attn_seq_t).
 * In the last layer, rows whose logits nobody asked for are dropped before the output
 * projection and the FFN, as they cannot affect any requested logit.
 */
#include "engine.h"

#include <math.h>
#include <string.h>

#include "alloc.h"
#include "btassert.h"
#include "devmodel.h"
#include "log.h"

/* Activations, all in backend memory, sized for max_batch_tokens rows. */
typedef struct {
    float *x;      /* (T, dim) residual stream */
    float *xb;     /* (T, dim) normed input / projection output */
    float *x2;     /* (T, dim) residual rows kept for the last layer */
    float *q;      /* (T, n_heads * head_dim) */
    float *k;      /* (T, n_kv_heads * head_dim) */
    float *v;      /* (T, n_kv_heads * head_dim) */
    float *att;    /* (T, n_heads * head_dim) attention output */
    float *gate;   /* (T, ffn_dim) */
    float *up;     /* (T, ffn_dim) */
    float *logits; /* (logit_rows, n_vocab) */
    int32_t *ids;  /* (T) token ids */
    int32_t *pos;  /* (T) positions */
} acts_t;

struct bt_engine {
    const bt_model_t *model;      /* weights the ops read: host_model's, or their device copy */
    const bt_model_t *host_model; /* borrowed */
    bt_dev_model_t *dev;          /* device copy of the weights; NULL for host-memory backends */
    bt_backend_t *be;
    bt_kv_pool_t *kv;
    acts_t a;
    int32_t max_tokens; /* rows per forward */
    int32_t max_seqs;
    int32_t logit_rows; /* rows of the logits buffer; larger requests are chunked */
    int32_t logits_r0;  /* the last forward's output rows still in it: [r0, r0 + n) */
    int32_t logits_n;
    /* Host-side scratch, sized at creation. */
    int32_t *h_ids;         /* (T) */
    int32_t *h_pos;         /* (T) */
    int32_t *h_out_rows;    /* (T) rows that want logits, in batch order */
    int32_t *h_prev_blocks; /* (max_seqs) block counts before reservation, for rollback */
    bt_attn_seq_t *h_seqs;  /* (max_seqs) */

    /* The per-layer hook (bt_engine_set_layer_hook); layer_fn NULL when none is set. */
    bt_engine_layer_fn layer_fn;
    void *layer_arg;
};

static void acts_free(bt_engine_t *e)
{
    void **p = (void **)&e->a;
    for (size_t i = 0; i < sizeof e->a / sizeof(void *); i++)
        bt_backend_free(e->be, p[i]);
    memset(&e->a, 0, sizeof e->a);
}

static int acts_alloc(bt_engine_t *e)
{
    const bt_model_hparams_t *hp = &e->model->hp;
    size_t t = (size_t)e->max_tokens, f = sizeof(float);
    size_t q_dim = (size_t)hp->n_heads * hp->head_dim,
           kv_dim = (size_t)hp->n_kv_heads * hp->head_dim;
    acts_t *a = &e->a;
    a->x = bt_backend_alloc(e->be, t * hp->dim * f);
    a->xb = bt_backend_alloc(e->be, t * hp->dim * f);
    a->x2 = bt_backend_alloc(e->be, t * hp->dim * f);
    a->q = bt_backend_alloc(e->be, t * q_dim * f);
    a->k = bt_backend_alloc(e->be, t * kv_dim * f);
    a->v = bt_backend_alloc(e->be, t * kv_dim * f);
    a->att = bt_backend_alloc(e->be, t * q_dim * f);
    a->gate = bt_backend_alloc(e->be, t * hp->ffn_dim * f);
    a->up = bt_backend_alloc(e->be, t * hp->ffn_dim * f);
    a->logits = bt_backend_alloc(e->be, (size_t)e->logit_rows * hp->n_vocab * f);
    a->ids = bt_backend_alloc(e->be, t * sizeof(int32_t));
    a->pos = bt_backend_alloc(e->be, t * sizeof(int32_t));
    void **p = (void **)a;
    for (size_t i = 0; i < sizeof *a / sizeof(void *); i++)
        if (!p[i])
            return BT_ERR_NOMEM;
    return BT_OK;
}

static int host_alloc(bt_engine_t *e)
{
    size_t t = (size_t)e->max_tokens, s = (size_t)e->max_seqs;
    e->h_ids = bt_malloc(t * sizeof(int32_t));
    e->h_pos = bt_malloc(t * sizeof(int32_t));
    e->h_out_rows = bt_malloc(t * sizeof(int32_t));
    e->h_prev_blocks = bt_malloc(s * sizeof(int32_t));
    e->h_seqs = bt_malloc(s * sizeof(bt_attn_seq_t));
    if (!e->h_ids || !e->h_pos || !e->h_out_rows || !e->h_prev_blocks || !e->h_seqs)
        return BT_ERR_NOMEM;
    return BT_OK;
}

static void host_free(bt_engine_t *e)
{
    bt_free(e->h_ids);
    bt_free(e->h_pos);
    bt_free(e->h_out_rows);
    bt_free(e->h_prev_blocks);
    bt_free(e->h_seqs);
}

static int engine_params_check(const bt_model_t *model, const bt_engine_params_t *p)
{
    if (p->max_batch_tokens < 0 || p->max_seqs < 0 || p->n_threads < 0 || p->block_size < 0) {
        bt_error("engine: negative limit in parameters");
        return BT_ERR_INVAL;
    }
    const bt_model_hparams_t *hp = &model->hp;
    if (hp->n_kv_heads <= 0 || hp->n_heads % hp->n_kv_heads != 0) {
        bt_error("engine: %d heads is not a multiple of %d KV heads", hp->n_heads, hp->n_kv_heads);
        return BT_ERR_INVAL;
    }
    if (hp->head_dim % 2 || hp->head_dim > BT_MAX_HEAD_DIM ||
        hp->n_heads / hp->n_kv_heads > BT_MAX_GQA_GROUP) {
        bt_error("engine: unsupported attention shape (head dim %d, %d query heads per KV head;"
                 " at most %d and %d)",
                 hp->head_dim, hp->n_heads / hp->n_kv_heads, BT_MAX_HEAD_DIM, BT_MAX_GQA_GROUP);
        return BT_ERR_UNSUPPORTED;
    }
    return BT_OK;
}

int bt_engine_create(const bt_model_t *model, const bt_engine_params_t *params, bt_engine_t **out)
{
    bt_engine_params_t defaults = {0};
    const bt_engine_params_t *p = params ? params : &defaults;
    const bt_model_hparams_t *hp = &model->hp;
    int st = engine_params_check(model, p);
    if (st != BT_OK)
        return st;

    bt_engine_t *e = bt_calloc(1, sizeof *e);
    if (!e)
        return BT_ERR_NOMEM;
    e->model = e->host_model = model;
    e->max_tokens = p->max_batch_tokens ? p->max_batch_tokens : 512;
    e->max_seqs = p->max_seqs ? p->max_seqs : 64;
    if (e->max_seqs > e->max_tokens)
        e->max_seqs = e->max_tokens;
    e->logit_rows = e->max_seqs;

    int64_t max_cols = hp->ffn_dim > hp->dim ? hp->ffn_dim : hp->dim;
    if ((int64_t)hp->n_heads * hp->head_dim > max_cols)
        max_cols = (int64_t)hp->n_heads * hp->head_dim;
    bt_backend_params_t bp = {
        .n_threads = p->n_threads,
        .max_rows = e->max_tokens,
        .max_cols = max_cols,
        .allow_nondeterministic = p->nondeterministic,
    };
    const char *backend = p->backend ? p->backend : "cpu";
    st = bt_backend_create(backend, &bp, &e->be);
    if (st != BT_OK) {
        bt_error("engine: cannot create backend '%s': %s (built: %s)", backend, bt_status_str(st),
                 bt_backend_list());
        goto err_engine;
    }
    bt_kv_pool_params_t kp = {
        .n_layers = hp->n_layers,
        .n_kv_heads = hp->n_kv_heads,
        .head_dim = hp->head_dim,
        .block_size = p->block_size,
        .type = p->kv_type,
        .budget_bytes = p->kv_budget_bytes ? p->kv_budget_bytes
                                           : (size_t)e->max_seqs * 512 *
                                                 bt_model_kv_bytes_per_token(hp, p->kv_type),
    };
    st = bt_dev_model_create(model, e->be, &e->dev);
    if (st != BT_OK)
        goto err_backend;
    if (e->dev)
        e->model = bt_dev_model_view(e->dev);
    st = bt_kv_pool_create(e->be, &kp, &e->kv);
    if (st != BT_OK)
        goto err_dev;
    st = acts_alloc(e);
    if (st != BT_OK) {
        bt_error("engine: cannot allocate activations for %d tokens", e->max_tokens);
        goto err_acts;
    }
    st = host_alloc(e);
    if (st != BT_OK)
        goto err_host;
    *out = e;
    return BT_OK;

err_host:
    host_free(e);
err_acts:
    acts_free(e);
    bt_kv_pool_destroy(e->kv);
err_dev:
    bt_dev_model_destroy(e->dev);
err_backend:
    bt_backend_destroy(e->be);
err_engine:
    bt_free(e);
    return st;
}

void bt_engine_destroy(bt_engine_t *e)
{
    if (!e)
        return;
    host_free(e);
    acts_free(e);
    bt_kv_pool_destroy(e->kv);
    bt_dev_model_destroy(e->dev);
    bt_backend_destroy(e->be);
    bt_free(e);
}

bt_kv_pool_t *bt_engine_kv_pool(bt_engine_t *e)
{
    return e->kv;
}

const bt_model_t *bt_engine_model(const bt_engine_t *e)
{
    return e->host_model;
}

int32_t bt_engine_max_batch_tokens(const bt_engine_t *e)
{
    return e->max_tokens;
}

void bt_engine_set_layer_hook(bt_engine_t *e, bt_engine_layer_fn fn, void *arg)
{
    e->layer_fn = fn;
    e->layer_arg = arg;
}

/* Checks a batch against the engine's limits and the vocabulary; fills the host tables. */
static int batch_prepare(bt_engine_t *e, const bt_batch_seq_t *seqs, int n_seqs, int32_t *n_rows,
                         int32_t *n_out)
{
    if (n_seqs <= 0 || n_seqs > e->max_seqs)
        return BT_ERR_RANGE;
    int32_t rows = 0, outs = 0, n_vocab = e->model->hp.n_vocab;
    for (int s = 0; s < n_seqs; s++) {
        const bt_batch_seq_t *b = &seqs[s];
        if (b->n_tokens <= 0 || b->n_tokens > e->max_tokens - rows || !b->kv)
            return BT_ERR_RANGE;
        if (b->kv->n_tokens + b->n_tokens > b->kv->max_tokens)
            return BT_ERR_RANGE;
        for (int32_t i = 0; i < b->n_tokens; i++) {
            if (b->tokens[i] < 0 || b->tokens[i] >= n_vocab)
                return BT_ERR_RANGE;
            e->h_ids[rows + i] = b->tokens[i];
            e->h_pos[rows + i] = b->kv->n_tokens + i;
        }
        if (b->logits == BT_LOGITS_ALL)
            for (int32_t i = 0; i < b->n_tokens; i++)
                e->h_out_rows[outs++] = rows + i;
        else if (b->logits == BT_LOGITS_LAST)
            e->h_out_rows[outs++] = rows + b->n_tokens - 1;
        e->h_seqs[s] = (bt_attn_seq_t){
            .row0 = rows, .n_new = b->n_tokens, .n_past = b->kv->n_tokens, .blocks = NULL};
        rows += b->n_tokens;
    }
    *n_rows = rows;
    *n_out = outs;
    return BT_OK;
}

/* Reserves KV blocks for every sequence, or none (rolling back what was taken). */
static int batch_reserve(bt_engine_t *e, const bt_batch_seq_t *seqs, int n_seqs)
{
    for (int s = 0; s < n_seqs; s++) {
        bt_kv_seq_t *kv = seqs[s].kv;
        e->h_prev_blocks[s] = kv->n_blocks;
        int st = bt_kv_seq_reserve(kv, e->kv, kv->n_tokens + seqs[s].n_tokens);
        if (st != BT_OK) {
            for (int r = s; r >= 0; r--)
                while (seqs[r].kv->n_blocks > e->h_prev_blocks[r])
                    bt_kv_pool_unref(e->kv, seqs[r].kv->blocks[--seqs[r].kv->n_blocks]);
            return st;
        }
        e->h_seqs[s].blocks = kv->blocks;
    }
    return BT_OK;
}

static void layer_attention(bt_engine_t *e, int32_t l, int32_t rows, int n_seqs)
{
    const bt_model_hparams_t *hp = &e->model->hp;
    const bt_layer_weights_t *w = &e->model->layers[l];
    acts_t *a = &e->a;
    float *const qkv[3] = {a->q, a->k, a->v};
    const bt_tensor_t *const wqkv[3] = {&w->wq, &w->wk, &w->wv};
    bt_rms_matmul_multi(e->be, 3, qkv, wqkv, a->x, w->attn_norm, hp->norm_eps, rows, a->xb);
    bt_kv_layer_t kv = bt_kv_pool_layer(e->kv, l);
    bt_rope_kv_store(e->be, a->q, a->k, a->v, a->pos, rows, hp->n_heads, e->model->rope_inv_freq,
                     &kv, e->h_seqs, n_seqs);
    bt_attention(e->be, a->att, a->q, &kv, e->h_seqs, n_seqs, hp->n_heads,
                 1.0f / sqrtf((float)hp->head_dim));
}

/* Output projection, residual and FFN for rows of x (x and att hold those rows). */
static void layer_rest(bt_engine_t *e, int32_t l, float *x, const float *att, int32_t rows)
{
    const bt_model_hparams_t *hp = &e->model->hp;
    const bt_layer_weights_t *w = &e->model->layers[l];
    acts_t *a = &e->a;
    bt_matmul_add(e->be, x, &w->wo, att, rows, a->xb);
    bt_rms_ffn(e->be, x, &w->w_gate, &w->w_up, &w->w_down, w->ffn_norm, hp->norm_eps, rows, a->gate,
               a->xb, a->up);
}

/* Whether any of rows [r0, r0 + n) wants its window total (bt_engine_out_t.tau). */
static int wants_totals(const bt_engine_out_t *o, int32_t r0, int32_t n)
{
    if (o->k <= 1 || !o->tau)
        return 0;
    for (int32_t r = r0; r < r0 + n; r++)
        if (o->tau[r] > 0)
            return 1;
    return 0;
}

/* Whether any of rows [r0, r0 + n) has a repetition penalty to apply (bt_engine_out_t.pen_n). */
static int wants_penalty(const bt_engine_out_t *o, int32_t r0, int32_t n)
{
    if (o->k < 1 || !o->pen_n)
        return 0;
    for (int32_t r = r0; r < r0 + n; r++)
        if (o->pen_n[r] > 0)
            return 1;
    return 0;
}

/* Final norm and output projection of n_out rows of x, chunked through the logits buffer. */
static void compute_logits(bt_engine_t *e, const float *x, int32_t n_out, const bt_engine_out_t *o)
{
    const bt_model_hparams_t *hp = &e->model->hp;
    acts_t *a = &e->a;
    for (int32_t r0 = 0; r0 < n_out; r0 += e->logit_rows) {
        int32_t n = n_out - r0 < e->logit_rows ? n_out - r0 : e->logit_rows;
        e->logits_r0 = r0; /* what bt_engine_logits_row can still read */
        e->logits_n = n;
        float *const y[1] = {a->logits};
        const bt_tensor_t *const out[1] = {&e->model->output};
        bt_rms_matmul_multi(e->be, 1, y, out, x + (size_t)r0 * hp->dim, e->model->out_norm,
                            hp->norm_eps, n, a->xb);
        if (wants_penalty(o, r0, n))
            bt_penalize_rows(e->be, a->logits, n, hp->n_vocab,
                             o->pen_ids + (size_t)r0 * BT_PENALTY_MAX, o->pen_n + r0, o->pen + r0,
                             BT_PENALTY_MAX);
        if (o->k == 1)
            bt_argmax_rows(e->be, o->ids + r0, a->logits, n, hp->n_vocab);
        else if (o->k > 1) {
            bt_topk_rows(e->be, o->ids + (size_t)r0 * o->k, o->vals + (size_t)r0 * o->k, a->logits,
                         n, hp->n_vocab, o->k);
            if (wants_totals(o, r0, n))
                bt_window_totals(e->be, o->totals + r0, a->logits, o->tau + r0, n, hp->n_vocab);
        } else
            bt_backend_download(e->be, o->logits + (size_t)r0 * hp->n_vocab, a->logits,
                                (size_t)n * hp->n_vocab * sizeof(float));
    }
}

/* Whether a forward is a pure decode step, which a backend may record once and replay
 * (bt_backend_step_begin), and its shape: one token per sequence and its logits wanted, no
 * layer hook (it needs the cache written after each layer) and the logits in one piece. */
static int decode_shape(const bt_engine_t *e, int n_seqs, int32_t rows, int32_t n_out,
                        const bt_engine_out_t *o, bt_step_shape_t *sh)
{
    /* A step with penalties runs op by op: their id lists change size from step to step. */
    if (e->layer_fn || rows != n_seqs || n_out != rows || n_out > e->logit_rows ||
        wants_penalty(o, 0, n_out))
        return 0;
    const int32_t bs = bt_kv_pool_block_size(e->kv);
    *sh = (bt_step_shape_t){
        .n_seqs = n_seqs,
        .rows = rows,
        .n_out = n_out,
        .out_kind = o->k == 0                   ? BT_STEP_OUT_LOGITS
                    : o->k == 1                 ? BT_STEP_OUT_ARGMAX
                    : wants_totals(o, 0, n_out) ? BT_STEP_OUT_TOPK_TOTALS
                                                : BT_STEP_OUT_TOPK,
        .k = o->k,
        .n_layers = e->model->hp.n_layers,
        .block_size = bs,
    };
    for (int s = 0; s < n_seqs; s++) {
        int32_t len = e->h_seqs[s].n_past + 1;
        sh->n_kv_blocks += (len + bs - 1) / bs;
        sh->max_len = len > sh->max_len ? len : sh->max_len;
    }
    return 1;
}

/* The ops of one forward, from the uploads of its token ids and positions to its outputs. */
static void forward_ops(bt_engine_t *e, int32_t rows, int n_seqs, int32_t n_out,
                        const bt_engine_out_t *o)
{
    const bt_model_hparams_t *hp = &e->model->hp;
    acts_t *a = &e->a;
    bt_backend_upload(e->be, a->ids, e->h_ids, (size_t)rows * sizeof(int32_t));
    bt_backend_upload(e->be, a->pos, e->h_pos, (size_t)rows * sizeof(int32_t));
    bt_get_rows(e->be, a->x, &e->model->tok_embd, a->ids, rows);
    for (int32_t l = 0; l < hp->n_layers; l++) {
        layer_attention(e, l, rows, n_seqs);
        if (e->layer_fn) { /* layer l's K/V are in the cache once the backend is done */
            bt_backend_sync(e->be);
            e->layer_fn(e->layer_arg, l + 1);
        }
        if (l < hp->n_layers - 1 || n_out == rows) {
            layer_rest(e, l, a->x, a->att, rows);
            continue;
        }
        /* Last layer: keep only the rows whose logits are wanted. */
        if (n_out > 0) {
            size_t q_dim = (size_t)hp->n_heads * hp->head_dim;
            bt_gather_rows(e->be, a->x2, a->x, e->h_out_rows, n_out, hp->dim);
            bt_gather_rows(e->be, a->q, a->att, e->h_out_rows, n_out, (int64_t)q_dim);
            layer_rest(e, l, a->x2, a->q, n_out);
        }
    }
    if (n_out > 0)
        compute_logits(e, n_out == rows ? a->x : a->x2, n_out, o);
}

static int forward(bt_engine_t *e, bt_batch_seq_t *seqs, int n_seqs, bt_engine_out_t *o)
{
    int32_t rows, n_out;
    int st = batch_prepare(e, seqs, n_seqs, &rows, &n_out);
    if (st != BT_OK)
        return st;
    /* Rows the candidates cannot decide are read back from the logits buffer, so a forward
     * with more output rows than it holds sends the whole rows instead. */
    if (o->k > 1 && o->tau && n_out > e->logit_rows)
        o->k = 0;
    e->logits_n = 0;
    st = batch_reserve(e, seqs, n_seqs);
    if (st != BT_OK)
        return st;

    bt_step_shape_t shape;
    int graph =
        decode_shape(e, n_seqs, rows, n_out, o, &shape) && bt_backend_step_begin(e->be, &shape);
    forward_ops(e, rows, n_seqs, n_out, o);
    /* BT_AGAIN: the backend's replay did not fit the step and ran nothing. */
    if (graph && bt_backend_step_end(e->be) != BT_OK)
        forward_ops(e, rows, n_seqs, n_out, o);
    bt_backend_sync(e->be);
    for (int s = 0; s < n_seqs; s++)
        seqs[s].kv->n_tokens += seqs[s].n_tokens;
    return BT_OK;
}

/* forward with o->k checked: 0 (logits), 1 (argmax) or a top-k the engine can give. */
static int forward_out(bt_engine_t *e, bt_batch_seq_t *seqs, int n_seqs, bt_engine_out_t *o)
{
    if (o->k < 0 || o->k > BT_TOPK_MAX || o->k > e->model->hp.n_vocab || (o->k > 1 && !o->vals))
        return BT_ERR_INVAL;
    return forward(e, seqs, n_seqs, o);
}

int bt_engine_forward(bt_engine_t *e, bt_batch_seq_t *seqs, int n_seqs, float *logits)
{
    return forward(e, seqs, n_seqs, &(bt_engine_out_t){.logits = logits});
}

int bt_engine_forward_argmax(bt_engine_t *e, bt_batch_seq_t *seqs, int n_seqs, int32_t *ids)
{
    return forward(e, seqs, n_seqs, &(bt_engine_out_t){.k = 1, .ids = ids});
}

int bt_engine_forward_topk(bt_engine_t *e, bt_batch_seq_t *seqs, int n_seqs, int32_t k,
                           int32_t *ids, float *vals)
{
    if (k < 1)
        return BT_ERR_INVAL;
    return forward_out(e, seqs, n_seqs, &(bt_engine_out_t){.k = k, .ids = ids, .vals = vals});
}

int bt_engine_out_init(bt_engine_out_t *o, int32_t max_rows, int32_t n_vocab)
{
    *o = (bt_engine_out_t){0};
    o->logits = bt_malloc((size_t)max_rows * (size_t)n_vocab * sizeof(float));
    o->ids = bt_malloc((size_t)max_rows * BT_TOPK_MAX * sizeof(int32_t));
    o->vals = bt_malloc((size_t)max_rows * BT_TOPK_MAX * sizeof(float));
    o->tau = bt_calloc((size_t)max_rows, sizeof(float));
    o->totals = bt_calloc((size_t)max_rows, sizeof(double));
    o->pen_ids = bt_calloc((size_t)max_rows * BT_PENALTY_MAX, sizeof(int32_t));
    o->pen_n = bt_calloc((size_t)max_rows, sizeof(int32_t));
    o->pen = bt_calloc((size_t)max_rows, sizeof(float));
    o->whole = bt_malloc((size_t)max_rows * sizeof(int32_t));
    if (!o->logits || !o->ids || !o->vals || !o->tau || !o->totals || !o->pen_ids || !o->pen_n ||
        !o->pen || !o->whole) {
        bt_engine_out_fini(o);
        return BT_ERR_NOMEM;
    }
    return BT_OK;
}

void bt_engine_out_fini(bt_engine_out_t *o)
{
    bt_free(o->logits);
    bt_free(o->ids);
    bt_free(o->vals);
    bt_free(o->tau);
    bt_free(o->totals);
    bt_free(o->pen_ids);
    bt_free(o->pen_n);
    bt_free(o->pen);
    bt_free(o->whole);
    *o = (bt_engine_out_t){0};
}

int bt_engine_forward_out(bt_engine_t *e, bt_batch_seq_t *seqs, int n_seqs, bt_engine_out_t *o)
{
    if (o->k > e->model->hp.n_vocab)
        o->k = 0; /* a vocabulary smaller than the candidates asked for: the whole rows */
    return forward_out(e, seqs, n_seqs, o);
}

int bt_engine_logits_row(bt_engine_t *e, int32_t row, float *out)
{
    const int32_t nv = e->model->hp.n_vocab;
    if (row < e->logits_r0 || row >= e->logits_r0 + e->logits_n)
        return BT_ERR_RANGE;
    bt_backend_download(e->be, out, e->a.logits + (size_t)(row - e->logits_r0) * nv,
                        (size_t)nv * sizeof(float));
    return BT_OK;
}
