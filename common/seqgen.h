/* SPDX-License-Identifier: MIT */
/*
 * seqgen.h - the generation state of one sequence in a serving daemon: the tokens so far
 * (prompt, then generated), the sampler, the stop conditions and the streaming detokenizer.
 *
 * The prefill daemon samples the first token; the decode daemon appends that token and samples
 * the rest. bt_seqgen_append applies a token sampled elsewhere exactly as sampling it here would
 * have (sampler position, penalty history, stop state, held-back text), so the decode side
 * continues bit-for-bit where the prefill side stopped, and a replay after a failover draws the
 * same tokens. After a preemption the tokens so far are all that is needed to recompute the KV.
 *
 * Threads: the compute thread that owns the request.
 */
#ifndef BATON_SEQGEN_H
#define BATON_SEQGEN_H

#include <stddef.h>
#include <stdint.h>

#include "engine.h"
#include "parfor.h"
#include "request.h"
#include "tokenizer.h"

typedef struct bt_seqgen bt_seqgen_t;

/* One generated token and what it releases. */
typedef struct {
    int32_t token;
    uint32_t index;   /* output position: 0 is the first generated token */
    const char *text; /* text now safe to stream (complete UTF-8, stop strings held
                       * back); borrowed until the next call; "" without return_text */
    size_t n_text;
    Baton__FinishReason finish; /* FINISH_NONE: the sequence goes on */
} bt_seqgen_step_t;

/* The request and tokenizer are borrowed and must outlive g. The sampler history starts with
 * the prompt. BT_ERR_INVAL for parameters the sampler or stop conditions refuse; BT_ERR_NOMEM. */
int bt_seqgen_create(const bt_req_t *req, const bt_tokenizer_t *tok, int32_t n_vocab,
                     bt_seqgen_t **out);
void bt_seqgen_destroy(bt_seqgen_t *g);

/* Samples the next token from the logits of the sequence's last token (modified in place). */
void bt_seqgen_sample(bt_seqgen_t *g, float *logits, bt_seqgen_step_t *out);
/* Asks a forward into o for what sampling a sequence's next token with p needs, as output row
 * `row`, after the tokens hist[0, n_hist) (prompt then generated): folds its candidate count
 * into o->k (bt_sampler_cands_merge; start at 1), and sets the row's window-total temperature
 * (bt_sampler_params_tau) and repetition penalty (bt_sampler_penalty_ids). */
void bt_seqgen_out_want(const bt_sampler_params_t *p, const int32_t *hist, int32_t n_hist,
                        int32_t n_vocab, bt_engine_out_t *o, int32_t row);
/* Samples the next token of each of n sequences, gens[i] (NULL: skipped) from output row i of
 * e's last forward into o, into steps[i], whatever o->k: the same tokens as from the whole
 * rows. Whole rows (o->k 0) are sampled on par's threads (NULL: this one). With candidates,
 * each is sampled here, and the rows they cannot decide are read back from e (on this thread,
 * which must be the one that runs e) and then sampled whole on par's threads. */
void bt_seqgen_sample_rows(bt_seqgen_t *const *gens, int32_t n, bt_engine_t *e, bt_engine_out_t *o,
                           bt_parfor_t *par, bt_seqgen_step_t *steps);
/* Appends a token sampled elsewhere, with the same effect as having sampled it here. */
void bt_seqgen_append(bt_seqgen_t *g, int32_t token, bt_seqgen_step_t *out);

/* The sequence so far, prompt then generated tokens (borrowed; valid until the next append). */
const int32_t *bt_seqgen_tokens(const bt_seqgen_t *g);
int32_t bt_seqgen_len(const bt_seqgen_t *g);
int32_t bt_seqgen_n_generated(const bt_seqgen_t *g);
/* Every generated token, in order (borrowed). */
const int32_t *bt_seqgen_generated(const bt_seqgen_t *g);

#endif
