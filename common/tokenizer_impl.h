/* SPDX-License-Identifier: MIT */
/*
 * tokenizer_impl.h - the inside of bt_tokenizer_t, shared by tokenizer.c (lookups, special
 * tokens, decoding), tokenizer_load.c (GGUF and llama2.c loaders), tokenizer_spm.c and
 * tokenizer_bpe.c (the two merge algorithms). Not a public header.
 *
 * Everything is built once by a loader and read-only afterwards, which is what makes a tokenizer
 * safe to share between threads: encoding keeps its working state in scratch memory of its own.
 */
#ifndef BATON_TOKENIZER_IMPL_H
#define BATON_TOKENIZER_IMPL_H

#include <stddef.h>
#include <stdint.h>

#include "tokenizer.h"

/* Token types as GGUF's tokenizer.ggml.token_type stores them (llama.cpp llama_token_type). */
enum {
    BT_TT_UNDEFINED = 0,
    BT_TT_NORMAL = 1,
    BT_TT_UNKNOWN = 2,
    BT_TT_CONTROL = 3,
    BT_TT_USER_DEFINED = 4,
    BT_TT_UNUSED = 5,
    BT_TT_BYTE = 6,
};

/* Limits that keep hostile metadata from costing unbounded memory or time. */
#define BT_TOK_MAX_VOCAB (1 << 22)        /* tokens */
#define BT_TOK_MAX_TEXT_BYTES 1024        /* bytes of one token's text */
#define BT_TOK_MAX_MERGES (1 << 23)       /* BPE merge rules */
#define BT_TOK_MAX_INPUT_BYTES (1u << 28) /* one encode call: keeps id counts in int32 */
#define BT_TOK_MAX_EOG 16

/* Pre-tokenizers of byte-level BPE vocabularies. */
typedef enum { BT_PRE_NONE = 0, BT_PRE_LLAMA3 = 1, BT_PRE_GPT2 = 2 } bt_pre_t;

/* An open-addressing table of (hash -> index) used for both the vocabulary and the merges;
 * slot value 0 is empty, otherwise index + 1. */
typedef struct {
    uint32_t *slots;
    uint64_t mask; /* number of slots - 1 (a power of two) */
} bt_tok_index_t;

struct bt_tokenizer {
    bt_tok_kind_t kind;
    int llama2c; /* llama2.c rules: " " not "▁", its character grouping */
    int32_t n_vocab;
    char *text;           /* every token's text, each followed by a NUL */
    size_t *text_off;     /* (n_vocab + 1): token i is text[off[i] .. off[i+1] - 1) */
    char *piece;          /* decoded pieces, laid out the same way */
    size_t *piece_off;    /* (n_vocab + 1) */
    float *score;         /* (n_vocab) SentencePiece scores; NaN replaced by -inf */
    uint8_t *type;        /* (n_vocab) BT_TT_* */
    bt_tok_index_t vocab; /* text -> id */
    int32_t byte_id[256]; /* token for a raw byte (SPM <0xNN>, BPE its mapped char); -1 none */
    int32_t *special;     /* ids matched in text before merging, longest text first */
    int32_t n_special;
    int32_t eog[BT_TOK_MAX_EOG];
    int n_eog;
    int32_t bos, eos, unk; /* -1 if none */
    int add_bos;           /* the vocabulary's own preference (tokenizer.ggml.add_bos_token) */
    int add_space_prefix;  /* SPM: prepend "▁" to text that starts a fragment */
    size_t max_piece_bytes;
    size_t max_detok_bytes; /* the most one bt_detok_push can write (see detok_bound) */
    /* byte-level BPE */
    bt_pre_t pre;
    int ignore_merges;     /* llama3: a whole word found in the vocabulary is not merged */
    char *merge_text;      /* each rule's two halves, back to back */
    size_t *merge_off;     /* (n_merges + 1) */
    uint32_t *merge_split; /* (n_merges) length of the left half */
    int64_t n_merges;
    bt_tok_index_t merges; /* (left, right) -> rank */
};

/* Where encoders put ids: up to max are stored, n counts them all. */
typedef struct {
    int32_t *ids;
    int64_t max;
    int64_t n;
} bt_tok_out_t;

static inline void bt_tok_out_push(bt_tok_out_t *o, int32_t id)
{
    if (o->n < o->max) {
        o->ids[o->n] = id;
    }
    o->n++;
}

static inline const char *bt_tok_text(const bt_tokenizer_t *t, int32_t id, size_t *len)
{
    *len = t->text_off[id + 1] - t->text_off[id] - 1;
    return t->text + t->text_off[id];
}

/* tokenizer.c */
uint64_t bt_tok_hash(const void *data, size_t len, uint64_t seed);
/* The id whose text is exactly s[0..len), or -1. */
int32_t bt_tok_find(const bt_tokenizer_t *t, const char *s, size_t len);
/* Allocates an empty tokenizer with room for n_vocab tokens whose texts total text_bytes. */
int bt_tok_alloc(int32_t n_vocab, size_t text_bytes, bt_tokenizer_t **out);
/* After a loader has filled texts, scores and types: builds the lookup index, pieces, byte
 * fallbacks, special-token and end-of-generation lists. Logs and returns an error on
 * inconsistent data. */
int bt_tok_finish(bt_tokenizer_t *t);
/* Builds an index over n keys; key(ctx, i, &len) returns key i. */
typedef const char *(*bt_tok_key_fn)(const void *ctx, int64_t i, size_t *len, size_t *split);
int bt_tok_index_build(bt_tok_index_t *ix, int64_t n, bt_tok_key_fn key, const void *ctx,
                       int keep_first, int64_t *dup_of, int64_t *dup);

/* tokenizer_spm.c: SentencePiece merges of one text fragment (prefix: add the space prefix). */
int bt_tok_spm_encode(const bt_tokenizer_t *t, const char *text, size_t len, int prefix,
                      bt_tok_out_t *out);

/* tokenizer_bpe.c */
int bt_tok_bpe_encode(const bt_tokenizer_t *t, const char *text, size_t len, bt_tok_out_t *out);
int bt_tok_bpe_build_merges(bt_tokenizer_t *t);
/* Splits code points cpts[0..n) into pre-tokenizer words; writes each word's end index to
 * ends (room for n entries) and returns the number of words. */
size_t bt_tok_pre_split(bt_pre_t pre, const uint32_t *cpts, size_t n, size_t *ends);
/* GPT-2's byte <-> code point mapping of byte-level BPE. */
uint32_t bt_tok_byte_to_cpt(uint8_t b);
int bt_tok_cpt_to_byte(uint32_t cpt); /* -1 if cpt stands for no byte */

#endif
