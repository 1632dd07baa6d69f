/* SPDX-License-Identifier: MIT */
/*
 * tokenizer.c - what both tokenizer kinds share: the text -> id index, the work a loader hands
 * over to bt_tok_finish (pieces, byte fallbacks, special and end-of-generation tokens), special
 * token partitioning of the input, and encoding's entry point.
 *
 * Encoding follows llama.cpp's llama_vocab::tokenize so that ids match it: the text is first cut
 * at special tokens (longest first; control tokens only when parse_special), then each remaining
 * fragment goes through the SentencePiece or BPE merges on its own.
 */
#include "tokenizer.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "alloc.h"
#include "log.h"
#include "status.h"
#include "tokenizer_impl.h"
#include "unicode.h"

/* FNV-1a, finished with a 64-bit mixer so that the low bits used as slot index are good. */
uint64_t bt_tok_hash(const void *data, size_t len, uint64_t seed)
{
    const uint8_t *p = data;
    uint64_t h = 1469598103934665603ull ^ (seed * 0x9E3779B97F4A7C15ull);
    for (size_t i = 0; i < len; i++) {
        h = (h ^ p[i]) * 1099511628211ull;
    }
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    return h;
}

int bt_tok_index_build(bt_tok_index_t *ix, int64_t n, bt_tok_key_fn key, const void *ctx,
                       int keep_first, int64_t *dup_of, int64_t *dup)
{
    uint64_t n_slots = 16;
    while (n_slots < (uint64_t)n * 2) {
        n_slots *= 2;
    }
    ix->slots = bt_calloc(n_slots, sizeof(uint32_t));
    if (!ix->slots) {
        return BT_ERR_NOMEM;
    }
    ix->mask = n_slots - 1;
    for (int64_t i = 0; i < n; i++) {
        size_t len, split;
        const char *k = key(ctx, i, &len, &split);
        if (len == 0) {
            continue; /* an empty text can never be looked up */
        }
        uint64_t s = bt_tok_hash(k, len, split) & ix->mask;
        for (; ix->slots[s] != 0; s = (s + 1) & ix->mask) {
            size_t olen, osplit;
            const char *o = key(ctx, ix->slots[s] - 1, &olen, &osplit);
            if (olen == len && osplit == split && memcmp(o, k, len) == 0) {
                break;
            }
        }
        if (ix->slots[s] == 0) {
            ix->slots[s] = (uint32_t)i + 1;
        } else if (!keep_first) {
            *dup_of = ix->slots[s] - 1;
            *dup = i;
            return BT_ERR_FORMAT;
        }
    }
    return BT_OK;
}

int32_t bt_tok_find(const bt_tokenizer_t *t, const char *s, size_t len)
{
    if (len == 0) {
        return -1;
    }
    uint64_t i = bt_tok_hash(s, len, 0) & t->vocab.mask;
    for (; t->vocab.slots[i] != 0; i = (i + 1) & t->vocab.mask) {
        int32_t id = (int32_t)t->vocab.slots[i] - 1;
        size_t tlen;
        const char *tt = bt_tok_text(t, id, &tlen);
        if (tlen == len && memcmp(tt, s, len) == 0) {
            return id;
        }
    }
    return -1;
}

int bt_tok_alloc(int32_t n_vocab, size_t text_bytes, bt_tokenizer_t **out)
{
    bt_tokenizer_t *t = bt_calloc(1, sizeof(*t));
    if (!t) {
        return BT_ERR_NOMEM;
    }
    t->n_vocab = n_vocab;
    t->bos = t->eos = t->unk = -1;
    t->text = bt_malloc(text_bytes + 1);
    t->text_off = bt_calloc((size_t)n_vocab + 1, sizeof(size_t));
    t->piece = bt_malloc(text_bytes + 1);
    t->piece_off = bt_calloc((size_t)n_vocab + 1, sizeof(size_t));
    t->score = bt_calloc((size_t)n_vocab, sizeof(float));
    t->type = bt_calloc((size_t)n_vocab, 1);
    if (!t->text || !t->text_off || !t->piece || !t->piece_off || !t->score || !t->type) {
        bt_tokenizer_destroy(t);
        return BT_ERR_NOMEM;
    }
    *out = t;
    return BT_OK;
}

void bt_tokenizer_destroy(bt_tokenizer_t *t)
{
    if (!t) {
        return;
    }
    bt_free(t->text);
    bt_free(t->text_off);
    bt_free(t->piece);
    bt_free(t->piece_off);
    bt_free(t->score);
    bt_free(t->type);
    bt_free(t->vocab.slots);
    bt_free(t->special);
    bt_free(t->merge_text);
    bt_free(t->merge_off);
    bt_free(t->merge_split);
    bt_free(t->merges.slots);
    bt_free(t);
}

static const char *vocab_key(const void *ctx, int64_t i, size_t *len, size_t *split)
{
    *split = 0;
    return bt_tok_text(ctx, (int32_t)i, len);
}

static void add_eog(bt_tokenizer_t *t, int32_t id)
{
    if (id < 0) {
        return;
    }
    for (int i = 0; i < t->n_eog; i++) {
        if (t->eog[i] == id) {
            return;
        }
    }
    if (t->n_eog < BT_TOK_MAX_EOG) {
        t->eog[t->n_eog++] = id;
    }
}

/* End of generation: eos, plus the end-of-turn tokens llama.cpp recognises by their text
 * (which it also forces to be control tokens, so that they never print). */
static void find_eog(bt_tokenizer_t *t)
{
    static const char *const names[] = {"<|eot_id|>",    "<|im_end|>", "<|end|>", "<end_of_turn>",
                                        "<|endoftext|>", "<|eom_id|>", "<EOT>"};
    add_eog(t, t->eos);
    if (t->llama2c) {
        return;
    }
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        int32_t id = bt_tok_find(t, names[i], strlen(names[i]));
        if (id >= 0) {
            add_eog(t, id);
            t->type[id] = BT_TT_CONTROL;
        }
    }
}

static int hex_digit(char c)
{
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    if ((c >= 'A' && c <= 'F') || (c >= 'a' && c <= 'f')) {
        return (c | 0x20) - 'a' + 10;
    }
    return -1;
}

/* "<0xNN>" -> the byte NN. */
static int parse_byte_token(const char *s, size_t len, uint8_t *b)
{
    if (len != 6 || memcmp(s, "<0x", 3) != 0 || s[5] != '>') {
        return 0;
    }
    int hi = hex_digit(s[3]), lo = hex_digit(s[4]);
    if (hi < 0 || lo < 0) {
        return 0;
    }
    *b = (uint8_t)((hi << 4) | lo);
    return 1;
}

/* Byte-level BPE text back to bytes; a code point that stands for no byte is kept as is. */
static size_t unspell_bpe(const char *s, size_t len, char *dst)
{
    size_t n = 0;
    for (size_t i = 0; i < len;) {
        uint32_t cpt;
        size_t k = bt_utf8_decode((const uint8_t *)s + i, len - i, &cpt);
        int byte = bt_tok_cpt_to_byte(cpt);
        if (byte >= 0) {
            dst[n++] = (char)byte;
        } else {
            memcpy(dst + n, s + i, k);
            n += k;
        }
        i += k;
    }
    return n;
}

/* SentencePiece text with "▁" turned back into spaces (llama2.c vocabularies have spaces). */
static size_t unescape_spm(const bt_tokenizer_t *t, const char *s, size_t len, char *dst)
{
    size_t n = 0;
    for (size_t i = 0; i < len;) {
        if (!t->llama2c && len - i >= 3 && memcmp(s + i, "\xE2\x96\x81", 3) == 0) {
            dst[n++] = ' ';
            i += 3;
        } else {
            dst[n++] = s[i++];
        }
    }
    return n;
}

/* Decoded piece of token id into dst (never longer than its text); its length into *n. */
static int decode_piece(const bt_tokenizer_t *t, int32_t id, char *dst, size_t *n)
{
    size_t len;
    const char *s = bt_tok_text(t, id, &len);
    uint8_t b;
    *n = 0;
    switch (t->type[id]) {
    case BT_TT_NORMAL:
        *n = t->kind == BT_TOK_BPE ? unspell_bpe(s, len, dst) : unescape_spm(t, s, len, dst);
        return BT_OK;
    case BT_TT_USER_DEFINED:
        memcpy(dst, s, len);
        *n = len;
        return BT_OK;
    case BT_TT_BYTE:
        if (t->kind == BT_TOK_BPE) {
            return BT_OK; /* as llama.cpp: byte-type tokens only mean something to SPM */
        }
        if (!parse_byte_token(s, len, &b)) {
            bt_error("tokenizer: byte token %d has text '%.*s', not <0xNN>", id,
                     (int)(len > 64 ? 64 : len), s);
            return BT_ERR_FORMAT;
        }
        dst[0] = (char)b;
        *n = 1;
        return BT_OK;
    default: return BT_OK; /* control, unknown, unused, undefined: no text */
    }
}

static int is_valid_utf8(const char *s, size_t n)
{
    for (size_t i = 0; i < n;) {
        int r = bt_utf8_check((const uint8_t *)s + i, n - i);
        if (r <= 0) {
            return 0;
        }
        i += (size_t)r;
    }
    return 1;
}

/* The most one bt_detok_push can write for a piece. Held-back bytes resolve to one character
 * of at most 4 bytes (or one U+FFFD); after that a valid piece comes out as it is, and an
 * invalid one may turn every byte into a 3-byte U+FFFD. */
static size_t detok_bound(const char *s, size_t n)
{
    return is_valid_utf8(s, n) ? 4 + n : 4 + 3 * n;
}

static int build_pieces(bt_tokenizer_t *t)
{
    size_t off = 0;
    t->max_piece_bytes = 0;
    t->max_detok_bytes = 0;
    for (int32_t id = 0; id < t->n_vocab; id++) {
        size_t n;
        t->piece_off[id] = off;
        int rc = decode_piece(t, id, t->piece + off, &n);
        if (rc != BT_OK) {
            return rc;
        }
        size_t bound = detok_bound(t->piece + off, n);
        t->max_detok_bytes = bound > t->max_detok_bytes ? bound : t->max_detok_bytes;
        t->max_piece_bytes = n > t->max_piece_bytes ? n : t->max_piece_bytes;
        off += n;
        t->piece[off++] = '\0';
    }
    t->piece_off[t->n_vocab] = off;
    return BT_OK;
}

static void build_byte_ids(bt_tokenizer_t *t)
{
    for (int b = 0; b < 256; b++) {
        int32_t id = -1;
        char buf[8];
        if (t->kind == BT_TOK_BPE) {
            size_t n = bt_utf8_encode(bt_tok_byte_to_cpt((uint8_t)b), buf);
            id = bt_tok_find(t, buf, n);
        } else if (t->llama2c) {
            id = b + 3 < t->n_vocab ? b + 3 : -1; /* run.c: byte fallback is byte + 3 */
        } else {
            snprintf(buf, sizeof(buf), "<0x%02X>", b);
            id = bt_tok_find(t, buf, 6);
            if (id < 0) {
                buf[0] = (char)b;
                id = bt_tok_find(t, buf, 1);
            }
            if (id < 0) {
                id = t->unk;
            }
        }
        t->byte_id[b] = id;
    }
}

static int cmp_special(const void *a, const void *b, void *ctx)
{
    const bt_tokenizer_t *t = ctx;
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    size_t lx = t->text_off[x + 1] - t->text_off[x];
    size_t ly = t->text_off[y + 1] - t->text_off[y];
    if (lx != ly) {
        return lx > ly ? -1 : 1;
    }
    return x < y ? -1 : (x > y);
}

static int is_special_type(uint8_t type)
{
    return type == BT_TT_CONTROL || type == BT_TT_USER_DEFINED || type == BT_TT_UNKNOWN;
}

static int build_specials(bt_tokenizer_t *t)
{
    int32_t n = 0;
    if (t->llama2c) {
        return BT_OK; /* llama2.c vocabularies carry no special-token texts to match */
    }
    for (int32_t id = 0; id < t->n_vocab; id++) {
        n += is_special_type(t->type[id]) && t->text_off[id + 1] - t->text_off[id] > 1;
    }
    if (n == 0) {
        return BT_OK;
    }
    t->special = bt_malloc((size_t)n * sizeof(int32_t));
    if (!t->special) {
        return BT_ERR_NOMEM;
    }
    for (int32_t id = 0; id < t->n_vocab; id++) {
        if (is_special_type(t->type[id]) && t->text_off[id + 1] - t->text_off[id] > 1) {
            t->special[t->n_special++] = id;
        }
    }
    qsort_r(t->special, (size_t)n, sizeof(int32_t), cmp_special, t);
    return BT_OK;
}

int bt_tok_finish(bt_tokenizer_t *t)
{
    for (int32_t id = 0; id < t->n_vocab; id++) {
        if (isnan(t->score[id])) {
            t->score[id] = -INFINITY;
        }
        if (t->type[id] > BT_TT_BYTE) {
            t->type[id] = BT_TT_UNDEFINED; /* as llama.cpp treats unknown type values */
        }
    }
    int64_t dup_of = -1, dup = -1;
    int rc = bt_tok_index_build(&t->vocab, t->n_vocab, vocab_key, t, t->llama2c, &dup_of, &dup);
    if (rc == BT_ERR_FORMAT) {
        size_t len;
        const char *s = bt_tok_text(t, (int32_t)dup, &len);
        bt_error("tokenizer: tokens %lld and %lld have the same text '%.*s'", (long long)dup_of,
                 (long long)dup, (int)(len > 64 ? 64 : len), s);
    }
    if (rc != BT_OK) {
        return rc;
    }
    find_eog(t);
    build_byte_ids(t);
    rc = build_pieces(t);
    if (rc != BT_OK) {
        return rc;
    }
    return build_specials(t);
}

bt_tok_kind_t bt_tokenizer_kind(const bt_tokenizer_t *t)
{
    return t->kind;
}

int32_t bt_tokenizer_n_vocab(const bt_tokenizer_t *t)
{
    return t->n_vocab;
}

int32_t bt_tokenizer_bos(const bt_tokenizer_t *t)
{
    return t->bos;
}

int32_t bt_tokenizer_eos(const bt_tokenizer_t *t)
{
    return t->eos;
}

int bt_tokenizer_add_bos(const bt_tokenizer_t *t)
{
    return t->add_bos && t->bos >= 0;
}

int bt_tokenizer_is_eog(const bt_tokenizer_t *t, int32_t id)
{
    for (int i = 0; i < t->n_eog; i++) {
        if (t->eog[i] == id) {
            return 1;
        }
    }
    return 0;
}

const char *bt_tokenizer_piece(const bt_tokenizer_t *t, int32_t id, size_t *len)
{
    if (id < 0 || id >= t->n_vocab) {
        *len = 0;
        return "";
    }
    *len = t->piece_off[id + 1] - t->piece_off[id] - 1;
    return t->piece + t->piece_off[id];
}

/* A stretch of the input: raw text (id < 0) or one special token. */
typedef struct {
    int32_t id;
    size_t off;
    size_t len;
} frag_t;

typedef struct {
    frag_t *v;
    size_t n;
    size_t cap;
} frag_list_t;

static int frag_push(frag_list_t *l, int32_t id, size_t off, size_t len)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 16;
        frag_t *v = bt_realloc(l->v, cap * sizeof(frag_t));
        if (!v) {
            return BT_ERR_NOMEM;
        }
        l->v = v;
        l->cap = cap;
    }
    l->v[l->n++] = (frag_t){id, off, len};
    return BT_OK;
}

/* Cuts every raw fragment of src at occurrences of special token id, into dst. */
static int split_on(const bt_tokenizer_t *t, const char *text, int32_t id, const frag_list_t *src,
                    frag_list_t *dst)
{
    size_t slen;
    const char *s = bt_tok_text(t, id, &slen);
    dst->n = 0;
    for (size_t i = 0; i < src->n; i++) {
        frag_t f = src->v[i];
        const char *p = text + f.off, *end = text + f.off + f.len;
        const char *m;
        int rc = BT_OK;
        while (f.id < 0 && (m = memmem(p, (size_t)(end - p), s, slen)) != NULL) {
            if (m > p) {
                rc = frag_push(dst, -1, (size_t)(p - text), (size_t)(m - p));
            }
            if (rc == BT_OK) {
                rc = frag_push(dst, id, (size_t)(m - text), slen);
            }
            if (rc != BT_OK) {
                return rc;
            }
            p = m + slen;
        }
        if (f.id >= 0) {
            rc = frag_push(dst, f.id, f.off, f.len);
        } else if (p < end) {
            rc = frag_push(dst, -1, (size_t)(p - text), (size_t)(end - p));
        }
        if (rc != BT_OK) {
            return rc;
        }
    }
    return BT_OK;
}

/* llama.cpp's partition: for each special token, longest first, cut all raw fragments at it.
 * User-defined tokens are always matched; control and unknown ones only with parse_special. */
static int partition(const bt_tokenizer_t *t, const char *text, size_t len, int parse_special,
                     frag_list_t *out)
{
    frag_list_t tmp = {0};
    frag_list_t *a = out, *b = &tmp;
    int rc = frag_push(a, -1, 0, len);
    for (int32_t i = 0; rc == BT_OK && i < t->n_special; i++) {
        int32_t id = t->special[i];
        if (!parse_special && t->type[id] != BT_TT_USER_DEFINED) {
            continue;
        }
        rc = split_on(t, text, id, a, b);
        frag_list_t *c = a;
        a = b;
        b = c;
    }
    if (a != out) {
        frag_list_t c = *out;
        *out = *a;
        *a = c;
    }
    bt_free(tmp.v);
    return rc;
}

int bt_tokenizer_encode(const bt_tokenizer_t *t, const char *text, size_t len, int add_bos,
                        int parse_special, int32_t *ids, int32_t max_ids, int32_t *n_ids)
{
    if (!t || !n_ids || (!text && len > 0) || max_ids < 0 || (!ids && max_ids > 0)) {
        return BT_ERR_INVAL;
    }
    if (len > BT_TOK_MAX_INPUT_BYTES) {
        bt_error("tokenizer: input of %zu bytes is over the %u-byte limit", len,
                 BT_TOK_MAX_INPUT_BYTES);
        return BT_ERR_RANGE;
    }
    bt_tok_out_t out = {ids, max_ids, 0};
    if (add_bos && t->bos >= 0) {
        bt_tok_out_push(&out, t->bos);
    }
    frag_list_t frags = {0};
    int rc = len > 0 ? partition(t, text, len, parse_special, &frags) : BT_OK;
    int prev_special = 1; /* SentencePiece prefixes a space to text that starts a fragment */
    for (size_t i = 0; rc == BT_OK && i < frags.n; i++) {
        const frag_t *f = &frags.v[i];
        if (f->id >= 0) {
            bt_tok_out_push(&out, f->id);
            prev_special = 1;
        } else if (t->kind == BT_TOK_SPM) {
            rc = bt_tok_spm_encode(t, text + f->off, f->len, t->add_space_prefix && prev_special,
                                   &out);
            prev_special = 0;
        } else {
            rc = bt_tok_bpe_encode(t, text + f->off, f->len, &out);
        }
    }
    bt_free(frags.v);
    if (rc != BT_OK) {
        return rc;
    }
    *n_ids = (int32_t)out.n;
    return out.n > max_ids ? BT_ERR_NOSPACE : BT_OK;
}

size_t bt_detok_max_bytes(const bt_tokenizer_t *t)
{
    return t->max_detok_bytes;
}

void bt_detok_init(bt_detok_t *d, const bt_tokenizer_t *t)
{
    memset(d, 0, sizeof(*d));
    d->tok = t;
    d->prev_id = -1;
}

/* Output that stops (at a character boundary) at the first thing that does not fit. */
typedef struct {
    char *out;
    size_t cap;
    size_t n;
} sink_t;

static void put(sink_t *o, const void *p, size_t n)
{
    if (o->n + n > o->cap) {
        o->cap = o->n;
        return;
    }
    memcpy(o->out + o->n, p, n);
    o->n += n;
}

/* Emits the characters of s[0..len) that are complete, U+FFFD for invalid sequences; returns
 * the bytes consumed, which stops short of an incomplete character at the end. Also stops
 * early when called on a prefix bounded by limit: only characters starting before it. */
static size_t emit_chars(const uint8_t *s, size_t len, size_t limit, sink_t *o)
{
    size_t i = 0;
    while (i < limit) {
        int r = bt_utf8_check(s + i, len - i);
        if (r == 0) {
            break;
        }
        if (r > 0) {
            put(o, s + i, (size_t)r);
        } else {
            put(o, "\xEF\xBF\xBD", 3);
        }
        i += (size_t)(r > 0 ? r : -r);
    }
    return i;
}

static const char *detok_piece(const bt_detok_t *d, int32_t id, size_t *n)
{
    const bt_tokenizer_t *t = d->tok;
    const char *p = bt_tokenizer_piece(t, id, n);
    /* SentencePiece's dummy prefix: the text right after BOS drops its leading space. */
    if (t->kind == BT_TOK_SPM && t->add_space_prefix && d->prev_id >= 0 && d->prev_id == t->bos &&
        *n > 0 && p[0] == ' ') {
        p++;
        (*n)--;
    }
    return p;
}

size_t bt_detok_push(bt_detok_t *d, int32_t id, char *out, size_t cap)
{
    size_t n;
    const uint8_t *p = (const uint8_t *)detok_piece(d, id, &n);
    sink_t o = {out, cap, 0};
    d->prev_id = id;
    d->n_emitted++;
    /* First the characters that start in the held-back bytes, seen with the piece's head. */
    uint8_t head[12];
    size_t np = (size_t)d->n_pending, nh = n < 4 ? n : 4;
    memcpy(head, d->pending, np);
    memcpy(head + np, p, nh);
    size_t i = emit_chars(head, np + nh, np, &o);
    if (i < np) {
        /* Still incomplete, which means the whole piece was in head. */
        memmove(d->pending, head + i, np + nh - i);
        d->n_pending = (int)(np + nh - i);
        return o.n;
    }
    size_t at = i - np;
    at += emit_chars(p + at, n - at, n - at, &o);
    memcpy(d->pending, p + at, n - at);
    d->n_pending = (int)(n - at);
    return o.n;
}

size_t bt_detok_flush(bt_detok_t *d, char *out, size_t cap)
{
    sink_t o = {out, cap, 0};
    if (d->n_pending > 0) {
        put(&o, "\xEF\xBF\xBD", 3); /* a valid but unfinished character */
    }
    d->n_pending = 0;
    return o.n;
}
