/* SPDX-License-Identifier: MIT */
/*
 * tokenizer.h - Llama tokenizers: SentencePiece-style ("llama": score-driven merges with byte
 * fallback) and byte-level BPE ("gpt2": ranked merges with a regex pre-tokenizer, llama3 style).
 *
 * A tokenizer is immutable after creation and may be used from any number of threads. Decoding
 * to a token stream goes through bt_detok_t, which holds back incomplete UTF-8 so that no
 * broken character ever reaches a client.
 */
#ifndef BATON_TOKENIZER_H
#define BATON_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "gguf.h"

typedef struct bt_tokenizer bt_tokenizer_t;

typedef enum { BT_TOK_SPM = 0, BT_TOK_BPE = 1 } bt_tok_kind_t;

/* From a GGUF's tokenizer.ggml.* metadata; everything needed is copied, so the GGUF may be
 * closed afterwards. BT_ERR_UNSUPPORTED for an unknown tokenizer model or pre-tokenizer,
 * BT_ERR_FORMAT for inconsistent metadata. */
int bt_tokenizer_from_gguf(const bt_gguf_t *g, bt_tokenizer_t **out);
/* From a llama2.c tokenizer.bin (max_token_length, then per token: score f32, len i32, bytes);
 * n_vocab is the model's vocabulary size. */
int bt_tokenizer_from_llama2c(const char *path, int32_t n_vocab, bt_tokenizer_t **out);
void bt_tokenizer_destroy(bt_tokenizer_t *t);

bt_tok_kind_t bt_tokenizer_kind(const bt_tokenizer_t *t);
int32_t bt_tokenizer_n_vocab(const bt_tokenizer_t *t);
int32_t bt_tokenizer_bos(const bt_tokenizer_t *t); /* -1 if none */
int32_t bt_tokenizer_eos(const bt_tokenizer_t *t); /* -1 if none */
/* Whether the vocabulary asks for BOS before a prompt (tokenizer.ggml.add_bos_token; llama2.c:
 * yes) and has one: the add_bos value a caller should pass unless it knows better. */
int bt_tokenizer_add_bos(const bt_tokenizer_t *t);
/* Whether the id is a control/special token that ends generation by default (eos, eot). */
int bt_tokenizer_is_eog(const bt_tokenizer_t *t, int32_t id);

/* Encodes len bytes of text (need not be NUL-terminated, any bytes). add_bos prepends BOS when
 * the vocabulary has one. Writes at most max_ids ids; *n_ids always receives the full count, and
 * BT_ERR_NOSPACE is returned when it exceeds max_ids. parse_special: whether text like "<s>"
 * is matched as a control token (off for untrusted client text); user-defined tokens are
 * matched either way, as llama.cpp does. BT_ERR_RANGE for more than 256 MiB of text. */
int bt_tokenizer_encode(const bt_tokenizer_t *t, const char *text, size_t len, int add_bos,
                        int parse_special, int32_t *ids, int32_t max_ids, int32_t *n_ids);

/* The bytes a token stands for (SentencePiece "▁" turned into a space, <0xNN> into its byte,
 * byte-level BPE mapped back to raw bytes; control tokens decode to ""). Borrowed from t. */
const char *bt_tokenizer_piece(const bt_tokenizer_t *t, int32_t id, size_t *len);

/* Streaming detokenizer state for one sequence; caller-owned (init/fini, no heap). */
typedef struct {
    const bt_tokenizer_t *tok;
    int n_emitted;      /* tokens pushed so far */
    uint8_t pending[8]; /* bytes of an incomplete UTF-8 character */
    int n_pending;      /* how many (at most 3) */
    int32_t prev_id;    /* the last token pushed, -1 before the first */
} bt_detok_t;

void bt_detok_init(bt_detok_t *d, const bt_tokenizer_t *t);
/* The most bytes one bt_detok_push can write with this vocabulary: 31 for Llama 2's (pieces of
 * at most 27 bytes); byte-level BPE vocabularies have longer pieces. */
size_t bt_detok_max_bytes(const bt_tokenizer_t *t);
/* Appends the text of token id to out (capacity cap bytes), emitting only complete UTF-8
 * characters; a leading space of the token right after BOS in SentencePiece vocabularies is
 * dropped, as llama.cpp and llama2.c do. Invalid byte sequences come out as U+FFFD (one per
 * maximal invalid subpart). Returns the number of bytes written, at most bt_detok_max_bytes(t):
 * cap >= that is always enough; with less, output stops at the first character that does not
 * fit and the rest of this token's text is lost. Ids out of range decode to nothing. */
size_t bt_detok_push(bt_detok_t *d, int32_t id, char *out, size_t cap);
/* Flushes held-back bytes at the end of a stream (as U+FFFD if incomplete). */
size_t bt_detok_flush(bt_detok_t *d, char *out, size_t cap);

#endif
