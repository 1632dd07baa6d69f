/* SPDX-License-Identifier: MIT */
/*
 * sampler.h - turns a row of logits into the next token: repetition penalty, top-k, top-p,
 * min-p, temperature, then a seeded draw (or argmax when the temperature is 0).
 *
 * A sampler belongs to one sequence (it remembers the recent tokens for the penalty and counts
 * its draws). The random number of the i-th draw is a function of (seed, i) only, so two runs
 * with the same seed and logits draw the same tokens, on any instance. Scratch
 * for the vocabulary is allocated once at creation; sampling itself never allocates.
 */
#ifndef BATON_SAMPLER_H
#define BATON_SAMPLER_H

#include <stdint.h>

typedef struct {
    float temperature;     /* 0 (default): greedy; else logits are divided by it */
    int32_t top_k;         /* keep the k most likely tokens; 0: off */
    float top_p;           /* keep the smallest set with probability mass >= p; 0 or 1: off */
    float min_p;           /* drop tokens below min_p * p(most likely); 0: off */
    float repeat_penalty;  /* > 1 penalizes recent tokens (llama.cpp style); 0 or 1: off */
    int32_t repeat_last_n; /* how many recent tokens the penalty looks at; 0: 64 */
    uint64_t seed;         /* random seed of the draw */
} bt_sampler_params_t;

typedef struct bt_sampler bt_sampler_t;

/* BT_ERR_INVAL for out-of-range parameters (negative temperature, top_p > 1, ...). */
int bt_sampler_create(const bt_sampler_params_t *params, int32_t n_vocab, bt_sampler_t **out);
void bt_sampler_destroy(bt_sampler_t *s);
/* Checks parameters without creating anything (for request validation). */
int bt_sampler_params_check(const bt_sampler_params_t *params);

/* How many of a row's best logits (bt_topk_rows) sampling with params needs: 1 at
 * temperature 0, top_k when top-k is on (up to BT_TOPK_MAX), BT_TOPK_MAX when it is off (with
 * the row's window total at bt_sampler_params_tau); 0 when it needs the whole row (top-k over
 * BT_TOPK_MAX, or a repetition penalty looking back further than BT_PENALTY_MAX tokens). With
 * a repetition penalty the candidates are those of the penalized row (bt_penalize_rows with
 * bt_sampler_penalty_ids). */
int32_t bt_sampler_params_cands(const bt_sampler_params_t *params);
/* The temperature at which sampling from candidates needs the row's window total
 * (bt_window_total_f32): 1 with top-p, the temperature when no filter may cut the window, 0
 * when no total is needed. */
float bt_sampler_params_tau(const bt_sampler_params_t *params);
/* Folds one more sequence into a batch's candidate count k (start at 1): the most any of them
 * needs, or 0 once one needs the whole row. */
int32_t bt_sampler_cands_merge(int32_t k, const bt_sampler_params_t *params);

/* Picks the next token from logits (n_vocab floats; modified in place). Greedy picks the
 * lowest id among equal maxima. Does not record the token: call bt_sampler_accept. */
int32_t bt_sampler_sample(bt_sampler_t *s, float *logits);
/* The same for logits the repetition penalty was already applied to (bt_penalize_rows with
 * bt_sampler_penalty_ids), such as a row read back after bt_sampler_sample_top asked for it. */
int32_t bt_sampler_sample_penalized(bt_sampler_t *s, float *logits);
/* The distinct tokens the repetition penalty of params applies to after the tokens hist[0,
 * n_hist) (prompt then generated: what the sampler has accepted), to ids (room for
 * BT_PENALTY_MAX when bt_sampler_params_cands(params) > 0, else for repeat_last_n); their
 * count, 0 without a penalty. */
int32_t bt_sampler_penalty_ids(const bt_sampler_params_t *params, const int32_t *hist,
                               int32_t n_hist, int32_t n_vocab, int32_t *ids);
/* What bt_sampler_sample_top returns when the candidates do not decide the token (a walk
 * without top-k goes past them): sample the whole row then. Nothing was drawn. */
#define BT_SAMPLER_NEED_ROW (-1)
/* Picks the next token from the row's n best logits (bt_topk_rows: ids and values, best
 * first), n >= bt_sampler_params_cands(params) > 0, and total, the row's window total at
 * bt_sampler_params_tau(params) (NAN when that is 0): the same token bt_sampler_sample picks
 * from the whole row, or BT_SAMPLER_NEED_ROW. With n == 1 only ids is read. */
int32_t bt_sampler_sample_top(bt_sampler_t *s, const int32_t *ids, const float *vals, int32_t n,
                              double total);
/* Sets how many tokens this sequence has already sampled (0 at creation): the draw for the
 * token at output position i depends only on (seed, i), so an instance that continues a
 * sequence (or replays it after a failover) sets the position and draws what the first would. */
void bt_sampler_set_position(bt_sampler_t *s, uint64_t n_drawn);
/* Records a token of the sequence (prompt or generated) for the repetition penalty. */
void bt_sampler_accept(bt_sampler_t *s, int32_t token);

/* Index of the largest value (lowest index among ties). */
int32_t bt_argmax(const float *x, int32_t n);

#endif
