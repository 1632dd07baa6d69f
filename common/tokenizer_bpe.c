/* SPDX-License-Identifier: MIT */
/*
 * tokenizer_bpe.c - byte-level BPE (GPT-2 / Llama 3): a regex pre-tokenizer cuts the text into
 * words, each word's bytes are spelled as GPT-2's printable code points, and ranked merge rules
 * are applied lowest rank first (leftmost on ties) until none applies.
 *
 * The pre-tokenizer regexes are implemented by hand, one branch per alternative, the way
 * llama.cpp's unicode_regex_split_custom_* do, so that words (and therefore ids) match it; in
 * particular invalid UTF-8 is read as U+FFFD, one per bad byte, before anything else happens.
 */
#include <string.h>

#include "alloc.h"
#include "log.h"
#include "status.h"
#include "tokenizer_impl.h"
#include "unicode.h"

/* GPT-2 keeps the printable Latin-1 bytes as they are and moves the other 68 bytes, in order,
 * to U+0100 onwards, so that every byte is a visible character. */
static int byte_is_printable(unsigned b)
{
    return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
}

uint32_t bt_tok_byte_to_cpt(uint8_t b)
{
    if (byte_is_printable(b)) {
        return b;
    }
    uint32_t n = 0;
    for (unsigned c = 0; c < b; c++) {
        n += !byte_is_printable(c);
    }
    return 256 + n;
}

int bt_tok_cpt_to_byte(uint32_t cpt)
{
    if (cpt < 256) {
        return byte_is_printable(cpt) ? (int)cpt : -1;
    }
    uint32_t n = 0;
    for (unsigned c = 0; c < 256; c++) {
        if (!byte_is_printable(c) && 256 + n++ == cpt) {
            return (int)c;
        }
    }
    return -1;
}

/* The pre-tokenizer's view of a word being matched: code points in [0, n). */
typedef struct {
    const uint32_t *c;
    size_t n;
} span_t;

static uint32_t cpt_at(const span_t *s, size_t i)
{
    return i < s->n ? s->c[i] : 0xFFFFFFFFu;
}

/* Class flags, and BT_UNI_* | 8 "in range" so that, as in llama.cpp, only positions past the
 * end have no flags at all. */
#define IN_RANGE 8u
static unsigned flags_at(const span_t *s, size_t i)
{
    return i < s->n ? bt_unicode_flags(s->c[i]) | IN_RANGE : 0;
}

/* 's 't 're 've 'm 'll 'd (case-insensitive for llama3): length matched, or 0. */
static size_t match_contraction(const span_t *s, size_t pos, int fold)
{
    if (cpt_at(s, pos) != '\'' || pos + 1 >= s->n) {
        return 0;
    }
    uint32_t a = cpt_at(s, pos + 1), b = pos + 2 < s->n ? cpt_at(s, pos + 2) : 0;
    if (fold) {
        a = bt_unicode_tolower_ascii(a);
        b = bt_unicode_tolower_ascii(b);
    }
    if (a == 's' || a == 't' || a == 'm' || a == 'd') {
        return 2;
    }
    if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) {
        return 3;
    }
    return 0;
}

static int not_wln(unsigned f)
{
    return !(f & (BT_UNI_SPACE | BT_UNI_LETTER | BT_UNI_NUMBER)) && f != 0;
}

/* \s*[\r\n]+ | \s+(?!\S) | \s+ ; returns the end of the match (pos if none). */
static size_t match_spaces(const span_t *s, size_t pos, int newline_rule)
{
    size_t n = 0, last_nl = 0;
    while (flags_at(s, pos + n) & BT_UNI_SPACE) {
        uint32_t c = cpt_at(s, pos + n);
        if (c == '\r' || c == '\n') {
            last_nl = pos + n + 1;
        }
        n++;
    }
    if (newline_rule && last_nl > 0) {
        return last_nl;
    }
    if (n > 1 && pos + n < s->n) {
        return pos + n - 1; /* leave the last space to the word that follows */
    }
    return pos + n;
}

/* One match of the Llama 3 pattern at pos; returns its end (> pos). */
static size_t llama3_next(const span_t *s, size_t pos)
{
    uint32_t c = cpt_at(s, pos);
    unsigned f = flags_at(s, pos);
    size_t k = match_contraction(s, pos, 1);
    if (k > 0) {
        return pos + k;
    }
    /* [^\r\n\p{L}\p{N}]?\p{L}+ */
    if (c != '\r' && c != '\n' && !(f & BT_UNI_NUMBER) &&
        ((f & BT_UNI_LETTER) || (flags_at(s, pos + 1) & BT_UNI_LETTER))) {
        pos++;
        while (flags_at(s, pos) & BT_UNI_LETTER) {
            pos++;
        }
        return pos;
    }
    /* \p{N}{1,3} */
    if (f & BT_UNI_NUMBER) {
        size_t end = pos;
        while (end < pos + 3 && (flags_at(s, end) & BT_UNI_NUMBER)) {
            end++;
        }
        return end;
    }
    /* ' '?[^\s\p{L}\p{N}]+[\r\n]* */
    size_t p = pos + (c == ' ');
    if (not_wln(flags_at(s, p))) {
        while (not_wln(flags_at(s, p))) {
            p++;
        }
        while (cpt_at(s, p) == '\r' || cpt_at(s, p) == '\n') {
            p++;
        }
        return p;
    }
    size_t end = match_spaces(s, pos, 1);
    return end > pos ? end : pos + 1;
}

/* One match of the GPT-2 pattern 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+|
 * ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+ at pos. */
static size_t gpt2_next(const span_t *s, size_t pos)
{
    size_t k = match_contraction(s, pos, 0);
    if (k > 0) {
        return pos + k;
    }
    size_t p = pos + (cpt_at(s, pos) == ' ');
    unsigned f = flags_at(s, p);
    unsigned cls = f & BT_UNI_LETTER ? BT_UNI_LETTER : f & BT_UNI_NUMBER ? BT_UNI_NUMBER : 0;
    if (cls) {
        while (flags_at(s, p) & cls) {
            p++;
        }
        return p;
    }
    if (not_wln(f)) {
        while (not_wln(flags_at(s, p))) {
            p++;
        }
        return p;
    }
    size_t end = match_spaces(s, pos, 0);
    return end > pos ? end : pos + 1;
}

size_t bt_tok_pre_split(bt_pre_t pre, const uint32_t *cpts, size_t n, size_t *ends)
{
    span_t s = {cpts, n};
    size_t n_words = 0;
    for (size_t pos = 0; pos < n;) {
        pos = pre == BT_PRE_GPT2 ? gpt2_next(&s, pos) : llama3_next(&s, pos);
        ends[n_words++] = pos;
    }
    return n_words;
}

/* Merge rules: key i is "left right" stored back to back, split after the left half. */
static const char *merge_key(const void *ctx, int64_t i, size_t *len, size_t *split)
{
    const bt_tokenizer_t *t = ctx;
    *len = t->merge_off[i + 1] - t->merge_off[i];
    *split = t->merge_split[i];
    return t->merge_text + t->merge_off[i];
}

int bt_tok_bpe_build_merges(bt_tokenizer_t *t)
{
    int64_t dup_of, dup;
    /* The first of duplicate rules wins, as in llama.cpp (map emplace). */
    return bt_tok_index_build(&t->merges, t->n_merges, merge_key, t, 1, &dup_of, &dup);
}

/* Rank of merging s[0..split) with s[split..len), or -1. */
static int64_t merge_rank(const bt_tokenizer_t *t, const char *s, size_t len, size_t split)
{
    uint64_t i = bt_tok_hash(s, len, split) & t->merges.mask;
    for (; t->merges.slots[i] != 0; i = (i + 1) & t->merges.mask) {
        int64_t r = (int64_t)t->merges.slots[i] - 1;
        size_t mlen, msplit;
        const char *m = merge_key(t, r, &mlen, &msplit);
        if (mlen == len && msplit == split && memcmp(m, s, len) == 0) {
            return r;
        }
    }
    return -1;
}

/* Working state of one word's merges; symbols are 32-bit like the SentencePiece ones. */
typedef struct {
    uint32_t off; /* into the word's spelled-out bytes */
    uint32_t n;   /* 0 once merged into its left neighbour */
    int32_t prev;
    int32_t next;
} sym_t;

typedef struct {
    int32_t rank;
    int32_t left;
    int32_t right;
    uint32_t n; /* bytes of the pair when it was pushed */
} pair_t;

typedef struct {
    const bt_tokenizer_t *t;
    char *word; /* the current word, each byte spelled as its GPT-2 code point */
    sym_t *sym;
    int32_t n_sym;
    pair_t *heap;
    int64_t n_heap;
} bpe_t;

static int pair_before(const pair_t *a, const pair_t *b)
{
    return a->rank < b->rank || (a->rank == b->rank && a->left < b->left);
}

static void pair_push(bpe_t *w, pair_t g)
{
    int64_t i = w->n_heap++;
    while (i > 0 && pair_before(&g, &w->heap[(i - 1) / 2])) {
        w->heap[i] = w->heap[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    w->heap[i] = g;
}

static pair_t pair_pop(bpe_t *w)
{
    pair_t top = w->heap[0], last = w->heap[--w->n_heap];
    int64_t i = 0, n = w->n_heap;
    for (int64_t c = 1; c < n; c = 2 * i + 1) {
        if (c + 1 < n && pair_before(&w->heap[c + 1], &w->heap[c])) {
            c++;
        }
        if (!pair_before(&w->heap[c], &last)) {
            break;
        }
        w->heap[i] = w->heap[c];
        i = c;
    }
    if (n > 0) {
        w->heap[i] = last;
    }
    return top;
}

static void try_merge(bpe_t *w, int32_t left, int32_t right)
{
    if (left < 0 || right < 0) {
        return;
    }
    const sym_t *l = &w->sym[left], *r = &w->sym[right];
    int64_t rank = merge_rank(w->t, w->word + l->off, l->n + r->n, l->n);
    if (rank >= 0) {
        pair_push(w, (pair_t){(int32_t)rank, left, right, l->n + r->n});
    }
}

/* Spells code points cpts[0..n) as byte-level characters into w->word; returns the length. */
static size_t spell(bpe_t *w, const uint32_t *cpts, size_t n)
{
    size_t len = 0;
    w->n_sym = 0;
    for (size_t i = 0; i < n; i++) {
        char u[4];
        size_t k = bt_utf8_encode(cpts[i], u);
        for (size_t j = 0; j < k; j++) {
            size_t m = bt_utf8_encode(bt_tok_byte_to_cpt((uint8_t)u[j]), w->word + len);
            w->sym[w->n_sym] = (sym_t){(uint32_t)len, (uint32_t)m, w->n_sym - 1, w->n_sym + 1};
            w->n_sym++;
            len += m;
        }
    }
    if (w->n_sym > 0) {
        w->sym[w->n_sym - 1].next = -1;
    }
    return len;
}

static void merge_word(bpe_t *w)
{
    w->n_heap = 0;
    for (int32_t i = 1; i < w->n_sym; i++) {
        try_merge(w, i - 1, i);
    }
    while (w->n_heap > 0) {
        pair_t g = pair_pop(w);
        sym_t *l = &w->sym[g.left], *r = &w->sym[g.right];
        if (l->n == 0 || r->n == 0 || l->n + r->n != g.n) {
            continue; /* stale: one side has changed since */
        }
        l->n += r->n;
        r->n = 0;
        l->next = r->next;
        if (r->next >= 0) {
            w->sym[r->next].prev = g.left;
        }
        try_merge(w, l->prev, g.left);
        try_merge(w, g.left, l->next);
    }
}

static void emit_word(const bpe_t *w, bt_tok_out_t *out)
{
    for (int32_t i = 0; i >= 0 && w->n_sym > 0; i = w->sym[i].next) {
        const sym_t *y = &w->sym[i];
        int32_t id = bt_tok_find(w->t, w->word + y->off, y->n);
        if (id >= 0) {
            bt_tok_out_push(out, id);
            continue;
        }
        /* llama.cpp's fallback: each byte of the spelling that is itself a token. */
        for (uint32_t j = 0; j < y->n; j++) {
            id = bt_tok_find(w->t, w->word + y->off + j, 1);
            if (id >= 0) {
                bt_tok_out_push(out, id);
            }
        }
    }
}

static void encode_word(bpe_t *w, const uint32_t *cpts, size_t n, bt_tok_out_t *out)
{
    size_t len = spell(w, cpts, n);
    if (w->t->ignore_merges) {
        int32_t id = bt_tok_find(w->t, w->word, len);
        if (id >= 0) {
            bt_tok_out_push(out, id);
            return;
        }
    }
    merge_word(w);
    emit_word(w, out);
}

/* Decodes text leniently into cpts; returns the count. */
static size_t decode_all(const char *text, size_t len, uint32_t *cpts)
{
    size_t n = 0;
    for (size_t i = 0; i < len;) {
        i += bt_utf8_decode((const uint8_t *)text + i, len - i, &cpts[n++]);
    }
    return n;
}

/* Most bytes any word takes as UTF-8 (each of which becomes one symbol). */
static size_t max_word_bytes(const uint32_t *cpts, const size_t *ends, size_t n_words)
{
    size_t best = 0, start = 0;
    for (size_t i = 0; i < n_words; i++) {
        size_t bytes = 0;
        char u[4];
        for (size_t j = start; j < ends[i]; j++) {
            bytes += bt_utf8_encode(cpts[j], u);
        }
        best = bytes > best ? bytes : best;
        start = ends[i];
    }
    return best;
}

int bt_tok_bpe_encode(const bt_tokenizer_t *t, const char *text, size_t len, bt_tok_out_t *out)
{
    int rc = BT_ERR_NOMEM;
    bpe_t w = {.t = t};
    uint32_t *cpts = bt_malloc(len * sizeof(uint32_t));
    size_t *ends = bt_malloc(len * sizeof(size_t));
    if (!cpts || !ends) {
        goto out;
    }
    size_t n = decode_all(text, len, cpts);
    size_t n_words = bt_tok_pre_split(t->pre, cpts, n, ends);
    size_t max_bytes = max_word_bytes(cpts, ends, n_words);
    w.word = bt_malloc(2 * max_bytes + 1);
    w.sym = bt_malloc(max_bytes * sizeof(sym_t) + 1);
    w.heap = bt_malloc(3 * max_bytes * sizeof(pair_t) + 1);
    if (!w.word || !w.sym || !w.heap) {
        goto out;
    }
    for (size_t i = 0, start = 0; i < n_words; start = ends[i++]) {
        encode_word(&w, cpts + start, ends[i] - start, out);
    }
    rc = BT_OK;
out:
    bt_free(w.heap);
    bt_free(w.sym);
    bt_free(w.word);
    bt_free(ends);
    bt_free(cpts);
    return rc;
}
