/* SPDX-License-Identifier: MIT */
/*
 * limits.h - admission checks on a client's GenerateRequest: prompt length, output length,
 * sampling parameters, stop lists, objectives; and tokenization of a text prompt.
 *
 * Every refusal carries the status the contract names (BT_ERR_RANGE for a limit exceeded,
 * BT_ERR_INVAL for a malformed value, BT_ERR_UNSUPPORTED for a text prompt when the router
 * has no tokenizer) and a message for the client. Nothing here touches sockets or the
 * cluster; the queue-depth and draining checks belong to the router. Any thread.
 */
#ifndef BATON_ROUTER_LIMITS_H
#define BATON_ROUTER_LIMITS_H

#include <stddef.h>
#include <stdint.h>

#include "common/tokenizer.h"
#include "proto/baton.pb-c.h"

typedef struct {
    uint32_t max_prompt_tokens;  /* longest prompt, in tokens */
    uint32_t max_tokens;         /* most output tokens a request may ask for */
    uint32_t default_max_tokens; /* used when a request says 0 */
    int32_t n_vocab;             /* token ids must be below it; 0: unknown (only >= 0 checked) */
    double slo_ttft_ms;          /* cluster default objectives, > 0 */
    double slo_tpot_ms;
    const bt_tokenizer_t *tok; /* borrowed; NULL: text prompts are refused */
} router_limits_t;

/* What an admitted request resolves to. */
typedef struct {
    int32_t *prompt_owned; /* tokenized text prompt (caller frees with bt_free), or NULL */
    const int32_t *prompt; /* prompt_owned or req's prompt_ids */
    uint32_t n_prompt;
    uint32_t max_tokens; /* defaults applied */
    double slo_ttft_ms, slo_tpot_ms;
} router_admit_t;

/* BT_OK with *out filled; else the status for the client and a message in err (cap bytes). */
int router_limits_check(const router_limits_t *lim, const Baton__GenerateRequest *req,
                        router_admit_t *out, char *err, size_t cap);

#endif
