/* SPDX-License-Identifier: MIT */
/*
 * stopcond.h - when a generation ends: end-of-generation tokens, caller stop tokens, stop
 * strings and a token budget; and which generated text is safe to stream.
 *
 * Text that might be the start of a stop string is held back until it is known not to be, and
 * a matched stop string is never emitted, so a client sees exactly the text before it. One
 * object per sequence; buffers are sized at creation from the longest stop string.
 */
#ifndef BATON_STOPCOND_H
#define BATON_STOPCOND_H

#include <stddef.h>
#include <stdint.h>

#include "tokenizer.h"

#define BT_STOP_MAX_STRINGS 16
#define BT_STOP_MAX_STRING_BYTES 256
#define BT_STOP_MAX_IDS 64

typedef enum {
    BT_STOP_NONE = 0, /* keep going */
    BT_STOP_EOS,      /* the model produced an end-of-generation token */
    BT_STOP_TOKEN,    /* a caller stop token */
    BT_STOP_STRING,   /* a caller stop string */
    BT_STOP_LENGTH,   /* max_tokens reached */
} bt_stop_reason_t;

typedef struct {
    int32_t max_tokens;      /* most generated tokens; 0: no limit here */
    int ignore_eos;          /* 1: end-of-generation tokens do not stop (benchmarks) */
    const int32_t *stop_ids; /* copied */
    int32_t n_stop_ids;
    const char *const *stop_strs; /* copied; empty strings are refused */
    int32_t n_stop_strs;
} bt_stop_params_t;

typedef struct bt_stop bt_stop_t;

/* BT_ERR_INVAL when over the BT_STOP_MAX_* limits. The tokenizer is borrowed (NULL: no
 * end-of-generation tokens). */
int bt_stop_create(const bt_stop_params_t *params, const bt_tokenizer_t *tok, bt_stop_t **out);
void bt_stop_destroy(bt_stop_t *s);
const char *bt_stop_reason_str(bt_stop_reason_t r);

/* Feeds one generated token and its text (complete UTF-8 from bt_detok_push). Appends the
 * text that is now safe to show to out (cap >= len + BT_STOP_MAX_STRING_BYTES is always
 * enough) and sets *n_out. len should not exceed bt_detok_max_bytes of the tokenizer. Returns the
 * reason to stop, or BT_STOP_NONE. */
bt_stop_reason_t bt_stop_push(bt_stop_t *s, int32_t id, const char *text, size_t len, char *out,
                              size_t cap, size_t *n_out);
/* Releases text held back at the end of a generation that did not stop on a string. */
size_t bt_stop_flush(bt_stop_t *s, char *out, size_t cap);
int32_t bt_stop_n_generated(const bt_stop_t *s);

#endif
