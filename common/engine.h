/* SPDX-License-Identifier: MIT */
/*
 * engine.h - the batched Llama forward pass over a paged KV cache.
 *
 * One bt_engine_forward call runs a batch that mixes prefill sequences of any lengths (no
 * padding) and single-token decode steps, writes their K/V into the paged cache and computes
 * logits only for the rows asked for. Activations are sized once at creation from
 * max_batch_tokens; the request path only checks bounds.
 *
 * Determinism: in the default deterministic mode, a sequence's logits are bit-identical whether
 * it runs alone or inside any batch, at any position in it (see kernels.h).
 *
 * Threads: an engine is driven by one thread at a time; the backend parallelizes inside ops.
 */
#ifndef BATON_ENGINE_H
#define BATON_ENGINE_H

#include <stdint.h>

#include "kvcache.h"
#include "model.h"

typedef struct bt_engine bt_engine_t;

typedef struct {
    const char *backend;      /* "cpu" (default) or "cuda" */
    int n_threads;            /* compute threads; 0: all online cores */
    int32_t max_batch_tokens; /* most new tokens in one forward (DistServe's L_m); 0: 512 */
    int32_t max_seqs;         /* most sequences in one forward; 0: 64 */
    int32_t block_size;       /* KV tokens per block; 0: 16 */
    bt_type_t kv_type;        /* KV element type; 0 (F32) default */
    size_t kv_budget_bytes;   /* KV pool size; 0: enough for max_seqs * 512 tokens */
    int nondeterministic;     /* 1: allow batch-variant fast paths */
} bt_engine_params_t;

/* One sequence's share of a batch. */
typedef struct {
    bt_kv_seq_t *kv;       /* its KV blocks; kv->n_tokens advances by n_tokens on success */
    const int32_t *tokens; /* (n_tokens) new token ids, borrowed */
    int32_t n_tokens;      /* >= 1 */
    int32_t logits;        /* BT_LOGITS_NONE, _LAST or _ALL */
} bt_batch_seq_t;

enum { BT_LOGITS_NONE = 0, BT_LOGITS_LAST = 1, BT_LOGITS_ALL = 2 };

/* The model is borrowed and must outlive the engine. */
int bt_engine_create(const bt_model_t *model, const bt_engine_params_t *params, bt_engine_t **out);
void bt_engine_destroy(bt_engine_t *e);

bt_kv_pool_t *bt_engine_kv_pool(bt_engine_t *e);
const bt_model_t *bt_engine_model(const bt_engine_t *e);
int32_t bt_engine_max_batch_tokens(const bt_engine_t *e);

/*
 * Per-layer progress: fn(arg, l + 1) is called from inside bt_engine_forward as soon as layer l's
 * K/V for every sequence of the batch are stored in the paged cache (the backend has finished
 * writing them), for l = 0 .. n_layers - 1 in order, on the thread running the forward. It is
 * what lets a layer's KV leave while later layers are computed. The callback must be quick and
 * must not use the engine. fn NULL (the default) removes the hook; then nothing is added to the
 * forward. arg is borrowed. Results are the same with or without a hook.
 */
typedef void (*bt_engine_layer_fn)(void *arg, int32_t n_layers_done);
void bt_engine_set_layer_hook(bt_engine_t *e, bt_engine_layer_fn fn, void *arg);

/*
 * Runs one forward pass. Reserves KV blocks for every sequence first (all-or-nothing:
 * BT_ERR_NOSPACE leaves every sequence as it was), then computes. Logit rows are written to
 * logits (host memory, n_vocab floats per row) in batch order: for each sequence in turn, its
 * last row (LAST) or all its rows (ALL). BT_ERR_RANGE for a batch over the engine's limits or
 * a token id outside the vocabulary.
 */
int bt_engine_forward(bt_engine_t *e, bt_batch_seq_t *seqs, int n_seqs, float *logits);
/* The same, but instead of logits writes, for each row that wants logits (same order), its
 * greedy token: the first index of the largest logit (bt_argmax). On a device backend only the
 * ids leave the device (4 bytes a row instead of 4 x n_vocab). */
int bt_engine_forward_argmax(bt_engine_t *e, bt_batch_seq_t *seqs, int n_seqs, int32_t *ids);
/* The same, writing each such row's k best logits (1 <= k <= BT_TOPK_MAX and n_vocab;
 * bt_topk_rows): ids and values to [rows][k] arrays, for sampling from them
 * (bt_sampler_sample_top). BT_ERR_INVAL for another k. */
int bt_engine_forward_topk(bt_engine_t *e, bt_batch_seq_t *seqs, int n_seqs, int32_t k,
                           int32_t *ids, float *vals);

/* Where a forward's rows go, chosen per forward by what its sequences' sampling needs
 * (bt_sampler_cands_merge): k 0 the logits, k 1 each row's greedy token, k > 1 its k best
 * logits. */
typedef struct {
    int32_t k;
    float *logits; /* [rows][n_vocab] */
    int32_t *ids;  /* [rows][k]; rows of 1 id when k is 1 */
    float *vals;   /* [rows][k] */
    /* With k > 1: each row's window total (bt_window_totals) at tau[row] where that is > 0
     * (bt_sampler_params_tau; the caller sets it per row, or leaves tau NULL), to totals. */
    float *tau;     /* [rows] */
    double *totals; /* [rows] */
    /* With k >= 1: the repetition penalty applied where the logits are, before the rest:
     * pen_n[row] distinct ids at pen_ids[row * BT_PENALTY_MAX], factor pen[row]
     * (bt_penalize_rows; the caller sets them per row, or leaves pen_n NULL). */
    int32_t *pen_ids; /* [rows][BT_PENALTY_MAX] */
    int32_t *pen_n;   /* [rows] */
    float *pen;       /* [rows] */
    int32_t *whole;   /* [rows] scratch: the rows a sampler needs whole (bt_seqgen_sample_rows) */
} bt_engine_out_t;
/* Buffers for up to max_rows rows of any k (k starts at 0). BT_ERR_NOMEM. */
int bt_engine_out_init(bt_engine_out_t *o, int32_t max_rows, int32_t n_vocab);
void bt_engine_out_fini(bt_engine_out_t *o);
/* bt_engine_forward, bt_engine_forward_argmax or bt_engine_forward_topk as o->k says; a k
 * beyond the vocabulary becomes 0 (whole rows), and so does a k > 1 with o->tau when the
 * forward has more output rows than the logits buffer holds (bt_engine_logits_row could not
 * read them all back). */
int bt_engine_forward_out(bt_engine_t *e, bt_batch_seq_t *seqs, int n_seqs, bt_engine_out_t *o);
/* Row `row` of the last forward's logits (the batch order of its outputs), to out (n_vocab
 * floats, host memory): for a sampler that the candidates could not decide
 * (BT_SAMPLER_NEED_ROW). Valid until the next forward; BT_ERR_RANGE for a row the last forward
 * did not leave on the device (one without outputs, or one of a forward with more rows than
 * the logits buffer, whose earlier pieces are gone). */
int bt_engine_logits_row(bt_engine_t *e, int32_t row, float *out);

#endif
