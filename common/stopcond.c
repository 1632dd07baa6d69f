/* SPDX-License-Identifier: MIT */
/*
 * stopcond.c - stop conditions and held-back text (see stopcond.h).
 *
 * The held text is at most the longest stop string minus one byte plus one token's text (at
 * most bt_detok_max_bytes), so a fixed buffer sized at creation suffices.
 */
#include "stopcond.h"

#include <string.h>

#include "alloc.h"
#include "log.h"
#include "status.h"

struct bt_stop {
    bt_stop_params_t p;
    const bt_tokenizer_t *tok;
    int32_t ids[BT_STOP_MAX_IDS];
    char *strs[BT_STOP_MAX_STRINGS];
    size_t lens[BT_STOP_MAX_STRINGS];
    char *held; /* text not yet released */
    size_t n_held;
    size_t cap_held;
    int32_t n_generated;
};

int bt_stop_create(const bt_stop_params_t *params, const bt_tokenizer_t *tok, bt_stop_t **out)
{
    if (params->n_stop_ids < 0 || params->n_stop_ids > BT_STOP_MAX_IDS || params->n_stop_strs < 0 ||
        params->n_stop_strs > BT_STOP_MAX_STRINGS || params->max_tokens < 0)
        return BT_ERR_INVAL;
    size_t longest = 0;
    for (int32_t i = 0; i < params->n_stop_strs; i++) {
        size_t n = strlen(params->stop_strs[i]);
        if (n == 0 || n > BT_STOP_MAX_STRING_BYTES)
            return BT_ERR_INVAL;
        longest = n > longest ? n : longest;
    }
    bt_stop_t *s = bt_calloc(1, sizeof *s);
    if (!s)
        return BT_ERR_NOMEM;
    s->p = *params;
    s->tok = tok;
    if (params->n_stop_ids > 0)
        memcpy(s->ids, params->stop_ids, (size_t)params->n_stop_ids * sizeof(int32_t));
    /* Held text: a stop string's proper prefix plus one token's text. */
    s->cap_held = longest + (tok ? bt_detok_max_bytes(tok) : 1024);
    s->held = bt_malloc(s->cap_held);
    if (!s->held)
        goto err;
    for (int32_t i = 0; i < params->n_stop_strs; i++) {
        s->strs[i] = bt_strdup(params->stop_strs[i]);
        if (!s->strs[i])
            goto err;
        s->lens[i] = strlen(s->strs[i]);
    }
    *out = s;
    return BT_OK;
err:
    bt_stop_destroy(s);
    return BT_ERR_NOMEM;
}

void bt_stop_destroy(bt_stop_t *s)
{
    if (!s)
        return;
    for (int i = 0; i < BT_STOP_MAX_STRINGS; i++)
        bt_free(s->strs[i]);
    bt_free(s->held);
    bt_free(s);
}

const char *bt_stop_reason_str(bt_stop_reason_t r)
{
    static const char *const names[] = {"none", "eos", "stop_token", "stop_string", "length"};
    return (unsigned)r < sizeof names / sizeof names[0] ? names[r] : "unknown";
}

int32_t bt_stop_n_generated(const bt_stop_t *s)
{
    return s->n_generated;
}

/* Length of the longest suffix of the held text that is a proper prefix of a stop string. */
static size_t held_suffix_prefix(const bt_stop_t *s)
{
    size_t best = 0;
    for (int32_t i = 0; i < s->p.n_stop_strs; i++) {
        size_t max = s->lens[i] - 1 < s->n_held ? s->lens[i] - 1 : s->n_held;
        for (size_t k = max; k > best; k--)
            if (memcmp(s->held + s->n_held - k, s->strs[i], k) == 0) {
                best = k;
                break;
            }
    }
    return best;
}

static size_t release(bt_stop_t *s, size_t n, char *out, size_t cap)
{
    if (n > cap)
        n = cap;
    memcpy(out, s->held, n);
    memmove(s->held, s->held + n, s->n_held - n);
    s->n_held -= n;
    return n;
}

/* Finds the earliest stop string in the held text; returns its offset or -1. */
static long held_find_stop(const bt_stop_t *s)
{
    long best = -1;
    for (int32_t i = 0; i < s->p.n_stop_strs; i++) {
        const char *hit = memmem(s->held, s->n_held, s->strs[i], s->lens[i]);
        if (hit && (best < 0 || hit - s->held < best))
            best = hit - s->held;
    }
    return best;
}

bt_stop_reason_t bt_stop_push(bt_stop_t *s, int32_t id, const char *text, size_t len, char *out,
                              size_t cap, size_t *n_out)
{
    *n_out = 0;
    s->n_generated++;
    if (!s->p.ignore_eos && s->tok && bt_tokenizer_is_eog(s->tok, id))
        return BT_STOP_EOS;
    for (int32_t i = 0; i < s->p.n_stop_ids; i++)
        if (s->ids[i] == id)
            return BT_STOP_TOKEN;
    if (s->p.n_stop_strs == 0) {
        *n_out = len < cap ? len : cap;
        memcpy(out, text, *n_out);
    } else {
        if (s->n_held + len > s->cap_held) /* only for text longer than one token's */
            *n_out = release(s, s->n_held, out, cap);
        memcpy(s->held + s->n_held, text, len);
        s->n_held += len;
        long hit = held_find_stop(s);
        if (hit >= 0) {
            *n_out += release(s, (size_t)hit, out + *n_out, cap - *n_out);
            s->n_held = 0;
            return BT_STOP_STRING;
        }
        *n_out += release(s, s->n_held - held_suffix_prefix(s), out + *n_out, cap - *n_out);
    }
    if (s->p.max_tokens > 0 && s->n_generated >= s->p.max_tokens)
        return BT_STOP_LENGTH;
    return BT_STOP_NONE;
}

size_t bt_stop_flush(bt_stop_t *s, char *out, size_t cap)
{
    return release(s, s->n_held, out, cap);
}
