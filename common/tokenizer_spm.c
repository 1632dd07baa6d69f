/* SPDX-License-Identifier: MIT */
/*
 * tokenizer_spm.c - SentencePiece-style encoding of one text fragment: split into characters,
 * then repeatedly merge the adjacent pair whose concatenation is the highest-scoring token
 * (leftmost on ties), then fall back to byte tokens for what is left over.
 *
 * The pairs live in a max-heap keyed by (score, -left), as in llama.cpp's llm_tokenizer_spm, so
 * the whole fragment costs O(n log n); a heap entry whose symbols have changed since it was
 * pushed is recognised by its length and skipped. llama2.c's run.c rescans all pairs after each
 * merge (O(n^2)) but picks the same pair every time, so the same code serves both.
 */
#include <string.h>

#include "alloc.h"
#include "status.h"
#include "tokenizer_impl.h"
#include "unicode.h"

/* 32-bit fields: a fragment is at most 3 * BT_TOK_MAX_INPUT_BYTES + 3 bytes once escaped. */
typedef struct {
    uint32_t off; /* into the escaped text */
    uint32_t n;   /* bytes; 0 once merged into its left neighbour */
    int32_t prev; /* -1 at the ends */
    int32_t next;
} sym_t;

typedef struct {
    float score;
    int32_t left;
    int32_t right;
    uint32_t n; /* bytes of the pair when it was pushed */
} bigram_t;

typedef struct {
    const bt_tokenizer_t *t;
    const char *s; /* escaped text */
    sym_t *sym;
    int32_t n_sym;
    bigram_t *heap;
    int64_t n_heap;
} spm_t;

static int before(const bigram_t *a, const bigram_t *b)
{
    return a->score > b->score || (a->score == b->score && a->left < b->left);
}

static void heap_push(spm_t *w, bigram_t g)
{
    int64_t i = w->n_heap++;
    while (i > 0) {
        int64_t parent = (i - 1) / 2;
        if (!before(&g, &w->heap[parent])) {
            break;
        }
        w->heap[i] = w->heap[parent];
        i = parent;
    }
    w->heap[i] = g;
}

static bigram_t heap_pop(spm_t *w)
{
    bigram_t top = w->heap[0];
    bigram_t last = w->heap[--w->n_heap];
    int64_t i = 0, n = w->n_heap;
    for (;;) {
        int64_t c = 2 * i + 1;
        if (c >= n) {
            break;
        }
        if (c + 1 < n && before(&w->heap[c + 1], &w->heap[c])) {
            c++;
        }
        if (!before(&w->heap[c], &last)) {
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

static void try_pair(spm_t *w, int32_t left, int32_t right)
{
    if (left < 0 || right < 0) {
        return;
    }
    uint32_t n = w->sym[left].n + w->sym[right].n;
    int32_t id = bt_tok_find(w->t, w->s + w->sym[left].off, n);
    if (id < 0) {
        return;
    }
    heap_push(w, (bigram_t){w->t->score[id], left, right, n});
}

/* Writes the text to merge into buf: the optional prefix, then the fragment with spaces
 * escaped as "▁" (llama2.c vocabularies keep plain spaces). Returns its length. */
static size_t escape(const bt_tokenizer_t *t, const char *text, size_t len, int prefix, char *buf,
                     size_t *prefix_len)
{
    const char *space = t->llama2c ? " " : "\xE2\x96\x81";
    size_t space_len = strlen(space), n = 0;
    if (prefix) {
        memcpy(buf, space, space_len);
        n = space_len;
    }
    *prefix_len = n;
    for (size_t i = 0; i < len; i++) {
        if (text[i] == ' ' && !t->llama2c) {
            memcpy(buf + n, space, space_len);
            n += space_len;
        } else {
            buf[n++] = text[i];
        }
    }
    return n;
}

/* Length of the character at s[0..len): llama.cpp goes by the lead byte alone; run.c takes a
 * byte plus the continuation bytes after it, four bytes at most. */
static size_t char_len(const bt_tokenizer_t *t, const uint8_t *s, size_t len)
{
    size_t n = 1;
    if (t->llama2c) {
        while (n < len && n < 4 && (s[n] & 0xC0) == 0x80) {
            n++;
        }
        return n;
    }
    n = bt_utf8_lead_len(s[0]);
    return n < len ? n : len;
}

static void split_chars(spm_t *w, size_t prefix_len, size_t len)
{
    size_t off = 0;
    w->n_sym = 0;
    while (off < len) {
        size_t n =
            off < prefix_len ? prefix_len : char_len(w->t, (const uint8_t *)w->s + off, len - off);
        sym_t *y = &w->sym[w->n_sym];
        y->off = (uint32_t)off;
        y->n = (uint32_t)n;
        y->prev = w->n_sym - 1;
        off += n;
        y->next = off == len ? -1 : w->n_sym + 1;
        w->n_sym++;
    }
}

static void merge_all(spm_t *w)
{
    for (int32_t i = 1; i < w->n_sym; i++) {
        try_pair(w, i - 1, i);
    }
    while (w->n_heap > 0) {
        bigram_t g = heap_pop(w);
        sym_t *l = &w->sym[g.left], *r = &w->sym[g.right];
        if (l->n == 0 || r->n == 0 || l->n + r->n != g.n) {
            continue; /* one side has changed since this pair was pushed */
        }
        l->n += r->n;
        r->n = 0;
        l->next = r->next;
        if (r->next >= 0) {
            w->sym[r->next].prev = g.left;
        }
        try_pair(w, l->prev, g.left);
        try_pair(w, g.left, l->next);
    }
}

static void emit(const spm_t *w, bt_tok_out_t *out)
{
    for (int32_t i = 0; i >= 0 && w->n_sym > 0; i = w->sym[i].next) {
        const sym_t *y = &w->sym[i];
        int32_t id = bt_tok_find(w->t, w->s + y->off, y->n);
        if (id >= 0) {
            bt_tok_out_push(out, id);
            continue;
        }
        for (uint32_t j = 0; j < y->n; j++) {
            int32_t b = w->t->byte_id[(uint8_t)w->s[y->off + j]];
            if (b >= 0) {
                bt_tok_out_push(out, b);
            }
        }
    }
}

int bt_tok_spm_encode(const bt_tokenizer_t *t, const char *text, size_t len, int prefix,
                      bt_tok_out_t *out)
{
    size_t prefix_len;
    char *buf = bt_malloc(3 * len + 3);
    if (!buf) {
        return BT_ERR_NOMEM;
    }
    size_t n = escape(t, text, len, prefix, buf, &prefix_len);
    spm_t w = {.t = t, .s = buf};
    /* At most n symbols; n - 1 initial pairs plus at most two per merge, with fewer than n
     * merges, so 3 n heap entries. */
    w.sym = bt_malloc(n * sizeof(sym_t));
    w.heap = bt_malloc(3 * n * sizeof(bigram_t));
    int rc = BT_ERR_NOMEM;
    if (w.sym && w.heap) {
        split_chars(&w, prefix_len, n);
        merge_all(&w);
        emit(&w, out);
        rc = BT_OK;
    }
    bt_free(w.heap);
    bt_free(w.sym);
    bt_free(buf);
    return rc;
}
