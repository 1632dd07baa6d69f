/* SPDX-License-Identifier: MIT */
/*
 * tokenizer_load.c - building a tokenizer from GGUF metadata (tokenizer.ggml.*) or from a
 * llama2.c tokenizer.bin.
 *
 * Both sources are hostile input: every count, length, id and type is checked here, with one
 * error line naming the key or offset at fault, before bt_tok_finish builds the indexes. Limits
 * (BT_TOK_MAX_*) bound the memory a file can make us allocate.
 */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "alloc.h"
#include "log.h"
#include "status.h"
#include "tokenizer_impl.h"

#define KEY_MODEL "tokenizer.ggml.model"
#define KEY_PRE "tokenizer.ggml.pre"
#define KEY_TOKENS "tokenizer.ggml.tokens"
#define KEY_SCORES "tokenizer.ggml.scores"
#define KEY_TYPES "tokenizer.ggml.token_type"
#define KEY_MERGES "tokenizer.ggml.merges"

/* An optional string key, compared to a literal. */
static int str_is(const char *s, size_t len, const char *lit)
{
    return len == strlen(lit) && memcmp(s, lit, len) == 0;
}

static int check_token_array(const bt_gguf_t *g, int64_t *n_out)
{
    bt_gguf_type_t et;
    uint64_t n;
    const void *data;
    int rc = bt_gguf_get_arr(g, KEY_TOKENS, &et, &n, &data);
    if (rc == BT_ERR_NOT_FOUND) {
        bt_error("tokenizer: GGUF has no %s", KEY_TOKENS);
        return BT_ERR_FORMAT;
    }
    if (rc != BT_OK || et != BT_GGUF_STRING) {
        bt_error("tokenizer: %s is not an array of strings", KEY_TOKENS);
        return BT_ERR_FORMAT;
    }
    if (n == 0 || n > BT_TOK_MAX_VOCAB) {
        bt_error("tokenizer: %s has %llu tokens (1..%d allowed)", KEY_TOKENS, (unsigned long long)n,
                 BT_TOK_MAX_VOCAB);
        return BT_ERR_FORMAT;
    }
    *n_out = (int64_t)n;
    return BT_OK;
}

/* Sums the token texts' lengths, checking each. */
static int token_bytes(const bt_gguf_t *g, int64_t n, size_t *total)
{
    *total = 0;
    for (int64_t i = 0; i < n; i++) {
        const char *s;
        size_t len;
        if (bt_gguf_get_arr_str(g, KEY_TOKENS, (uint64_t)i, &s, &len) != BT_OK) {
            bt_error("tokenizer: cannot read token %lld of %s", (long long)i, KEY_TOKENS);
            return BT_ERR_FORMAT;
        }
        if (len > BT_TOK_MAX_TEXT_BYTES) {
            bt_error("tokenizer: token %lld is %zu bytes long (at most %d)", (long long)i, len,
                     BT_TOK_MAX_TEXT_BYTES);
            return BT_ERR_FORMAT;
        }
        *total += len + 1;
    }
    return BT_OK;
}

static void copy_texts(const bt_gguf_t *g, bt_tokenizer_t *t)
{
    size_t off = 0;
    for (int32_t i = 0; i < t->n_vocab; i++) {
        const char *s;
        size_t len;
        bt_gguf_get_arr_str(g, KEY_TOKENS, (uint64_t)i, &s, &len); /* checked before */
        t->text_off[i] = off;
        memcpy(t->text + off, s, len);
        off += len;
        t->text[off++] = '\0';
    }
    t->text_off[t->n_vocab] = off;
}

/* An optional numeric array of n elements of type want; NULL data when absent. */
static int get_parallel_array(const bt_gguf_t *g, const char *key, bt_gguf_type_t want, int64_t n,
                              const void **data)
{
    bt_gguf_type_t et;
    uint64_t count;
    *data = NULL;
    int rc = bt_gguf_get_arr(g, key, &et, &count, data);
    if (rc == BT_ERR_NOT_FOUND) {
        return BT_OK;
    }
    if (rc != BT_OK || et != want) {
        bt_error("tokenizer: %s is not an array of type %d", key, (int)want);
        return BT_ERR_FORMAT;
    }
    if (count != (uint64_t)n) {
        bt_error("tokenizer: %s has %llu entries but there are %lld tokens", key,
                 (unsigned long long)count, (long long)n);
        return BT_ERR_FORMAT;
    }
    return BT_OK;
}

static int read_scores_and_types(const bt_gguf_t *g, bt_tokenizer_t *t)
{
    const void *scores, *types;
    int rc = get_parallel_array(g, KEY_SCORES, BT_GGUF_FLOAT32, t->n_vocab, &scores);
    if (rc == BT_OK) {
        rc = get_parallel_array(g, KEY_TYPES, BT_GGUF_INT32, t->n_vocab, &types);
    }
    if (rc != BT_OK) {
        return rc;
    }
    for (int32_t i = 0; i < t->n_vocab; i++) {
        int32_t type = BT_TT_NORMAL;
        if (scores) {
            memcpy(&t->score[i], (const char *)scores + 4 * (size_t)i, 4);
        }
        if (types) {
            memcpy(&type, (const char *)types + 4 * (size_t)i, 4);
        }
        t->type[i] = (uint8_t)(type >= 0 && type <= BT_TT_BYTE ? type : BT_TT_UNDEFINED);
    }
    return BT_OK;
}

/* A token id key: absent keeps *id, -1 means none, anything else must be a valid id. */
static int get_id(const bt_gguf_t *g, const char *key, int32_t n_vocab, int32_t *id)
{
    int64_t v;
    int rc = bt_gguf_get_i64(g, key, &v);
    if (rc == BT_ERR_NOT_FOUND) {
        *id = *id < n_vocab ? *id : -1;
        return BT_OK;
    }
    if (rc != BT_OK || v < -1 || v >= n_vocab) {
        bt_error("tokenizer: %s is not a token id below %d", key, n_vocab);
        return BT_ERR_FORMAT;
    }
    *id = (int32_t)v;
    return BT_OK;
}

static int get_flag(const bt_gguf_t *g, const char *key, int *flag)
{
    int rc = bt_gguf_get_bool(g, key, flag);
    if (rc == BT_ERR_NOT_FOUND) {
        return BT_OK;
    }
    if (rc != BT_OK) {
        bt_error("tokenizer: %s is not a boolean", key);
    }
    return rc;
}

static int read_special_ids(const bt_gguf_t *g, bt_tokenizer_t *t)
{
    int32_t eot = -1, eom = -1;
    int rc = get_id(g, "tokenizer.ggml.bos_token_id", t->n_vocab, &t->bos);
    rc = rc ? rc : get_id(g, "tokenizer.ggml.eos_token_id", t->n_vocab, &t->eos);
    rc = rc ? rc : get_id(g, "tokenizer.ggml.unknown_token_id", t->n_vocab, &t->unk);
    rc = rc ? rc : get_id(g, "tokenizer.ggml.eot_token_id", t->n_vocab, &eot);
    rc = rc ? rc : get_id(g, "tokenizer.ggml.eom_token_id", t->n_vocab, &eom);
    rc = rc ? rc : get_flag(g, "tokenizer.ggml.add_bos_token", &t->add_bos);
    rc = rc ? rc : get_flag(g, "tokenizer.ggml.add_space_prefix", &t->add_space_prefix);
    if (rc == BT_OK) {
        t->n_eog = 0;
        if (eot >= 0) {
            t->eog[t->n_eog++] = eot;
        }
        if (eom >= 0 && eom != eot) {
            t->eog[t->n_eog++] = eom;
        }
    }
    return rc;
}

/* Pre-tokenizers whose pattern is implemented here (names as llama.cpp's convert scripts
 * write them). */
static int set_pre(const bt_gguf_t *g, bt_tokenizer_t *t)
{
    static const struct {
        const char *name;
        bt_pre_t pre;
        int ignore_merges;
    } known[] = {
        {"llama3", BT_PRE_LLAMA3, 1},    {"llama-v3", BT_PRE_LLAMA3, 1},
        {"llama-bpe", BT_PRE_LLAMA3, 1}, {"falcon3", BT_PRE_LLAMA3, 1},
        {"dbrx", BT_PRE_LLAMA3, 0},      {"smaug-bpe", BT_PRE_LLAMA3, 0},
        {"gpt-2", BT_PRE_GPT2, 0},       {"gpt2", BT_PRE_GPT2, 0},
    };
    const char *s;
    size_t len;
    if (bt_gguf_get_str(g, KEY_PRE, &s, &len) != BT_OK) {
        bt_error("tokenizer: BPE vocabulary without a usable %s (llama.cpp's 'default' "
                 "pre-tokenizer is not supported)",
                 KEY_PRE);
        return BT_ERR_UNSUPPORTED;
    }
    for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++) {
        if (str_is(s, len, known[i].name)) {
            t->pre = known[i].pre;
            t->ignore_merges = known[i].ignore_merges;
            t->add_bos = t->pre == BT_PRE_LLAMA3 && t->ignore_merges;
            return BT_OK;
        }
    }
    bt_error("tokenizer: unsupported pre-tokenizer '%.*s' (supported: llama3/llama-bpe, dbrx, "
             "smaug-bpe, gpt-2)",
             (int)(len > 64 ? 64 : len), s);
    return BT_ERR_UNSUPPORTED;
}

/* One merge rule "left right": the split is at the first space after the first byte. */
static int merge_at(const bt_gguf_t *g, int64_t i, const char **s, size_t *len, size_t *sp)
{
    if (bt_gguf_get_arr_str(g, KEY_MERGES, (uint64_t)i, s, len) != BT_OK ||
        *len > 2 * BT_TOK_MAX_TEXT_BYTES + 1) {
        bt_error("tokenizer: merge %lld of %s is unreadable or too long", (long long)i, KEY_MERGES);
        return BT_ERR_FORMAT;
    }
    const char *space = *len > 1 ? memchr(*s + 1, ' ', *len - 1) : NULL;
    if (!space || space == *s + *len - 1) {
        bt_error("tokenizer: merge %lld of %s is not 'left right'", (long long)i, KEY_MERGES);
        return BT_ERR_FORMAT;
    }
    *sp = (size_t)(space - *s);
    return BT_OK;
}

static int read_merges(const bt_gguf_t *g, bt_tokenizer_t *t)
{
    bt_gguf_type_t et;
    uint64_t n;
    const void *data;
    if (bt_gguf_get_arr(g, KEY_MERGES, &et, &n, &data) != BT_OK || et != BT_GGUF_STRING ||
        n > BT_TOK_MAX_MERGES) {
        bt_error("tokenizer: BPE vocabulary needs %s, an array of at most %d strings", KEY_MERGES,
                 BT_TOK_MAX_MERGES);
        return BT_ERR_FORMAT;
    }
    size_t total = 0, len, sp;
    const char *s;
    for (int64_t i = 0; i < (int64_t)n; i++) {
        int rc = merge_at(g, i, &s, &len, &sp);
        if (rc != BT_OK) {
            return rc;
        }
        total += len - 1;
    }
    t->n_merges = (int64_t)n;
    t->merge_text = bt_malloc(total + 1);
    t->merge_off = bt_calloc((size_t)n + 1, sizeof(size_t));
    t->merge_split = bt_calloc((size_t)n + 1, sizeof(uint32_t));
    if (!t->merge_text || !t->merge_off || !t->merge_split) {
        return BT_ERR_NOMEM;
    }
    size_t off = 0;
    for (int64_t i = 0; i < (int64_t)n; i++) {
        merge_at(g, i, &s, &len, &sp); /* checked above */
        t->merge_off[i] = off;
        t->merge_split[i] = (uint32_t)sp;
        memcpy(t->merge_text + off, s, sp);
        memcpy(t->merge_text + off + sp, s + sp + 1, len - sp - 1);
        off += len - 1;
    }
    t->merge_off[n] = off;
    return bt_tok_bpe_build_merges(t);
}

/* Kind-specific defaults, then the metadata that overrides them. */
static int read_settings(const bt_gguf_t *g, bt_tokenizer_t *t)
{
    int rc;
    if (t->kind == BT_TOK_SPM) {
        t->bos = 1;
        t->eos = 2;
        t->unk = 0;
        t->add_bos = 1;
        t->add_space_prefix = 1;
    } else if ((rc = set_pre(g, t)) != BT_OK) {
        return rc;
    }
    rc = read_special_ids(g, t);
    if (rc == BT_OK && t->kind == BT_TOK_BPE) {
        t->add_space_prefix = 0;
        rc = read_merges(g, t);
    }
    return rc;
}

static int model_kind(const bt_gguf_t *g, bt_tok_kind_t *kind)
{
    const char *s;
    size_t len;
    int rc = bt_gguf_get_str(g, KEY_MODEL, &s, &len);
    if (rc != BT_OK) {
        bt_error("tokenizer: GGUF has no usable %s", KEY_MODEL);
        return BT_ERR_FORMAT;
    }
    if (str_is(s, len, "llama")) {
        *kind = BT_TOK_SPM;
    } else if (str_is(s, len, "gpt2")) {
        *kind = BT_TOK_BPE;
    } else {
        bt_error("tokenizer: unsupported tokenizer model '%.*s' (llama and gpt2 are supported)",
                 (int)(len > 64 ? 64 : len), s);
        return BT_ERR_UNSUPPORTED;
    }
    return BT_OK;
}

int bt_tokenizer_from_gguf(const bt_gguf_t *g, bt_tokenizer_t **out)
{
    bt_tok_kind_t kind;
    int64_t n;
    size_t bytes;
    bt_tokenizer_t *t = NULL;
    int rc = model_kind(g, &kind);
    rc = rc ? rc : check_token_array(g, &n);
    rc = rc ? rc : token_bytes(g, n, &bytes);
    rc = rc ? rc : bt_tok_alloc((int32_t)n, bytes, &t);
    if (rc != BT_OK) {
        return rc;
    }
    t->kind = kind;
    copy_texts(g, t);
    rc = read_scores_and_types(g, t);
    rc = rc ? rc : read_settings(g, t);
    rc = rc ? rc : bt_tok_finish(t);
    if (rc != BT_OK) {
        bt_tokenizer_destroy(t);
        return rc;
    }
    *out = t;
    return BT_OK;
}

/* Reads a whole file (at most 256 MiB: a tokenizer, not a model). */
static int read_file(const char *path, uint8_t **data, size_t *size)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        bt_error("tokenizer: cannot open %s: %s", path, strerror(errno));
        return BT_ERR_IO;
    }
    int rc = BT_ERR_IO;
    long n = fseek(f, 0, SEEK_END) == 0 ? ftell(f) : -1;
    if (n < 0 || n > (256l << 20) || fseek(f, 0, SEEK_SET) != 0) {
        bt_error("tokenizer: %s: cannot size it, or it is over 256 MiB", path);
        goto err_close;
    }
    *data = bt_malloc((size_t)n + 1);
    if (!*data) {
        rc = BT_ERR_NOMEM;
        goto err_close;
    }
    if (fread(*data, 1, (size_t)n, f) != (size_t)n) {
        bt_error("tokenizer: cannot read %s: %s", path, strerror(errno));
        bt_free(*data);
        goto err_close;
    }
    *size = (size_t)n;
    rc = BT_OK;
err_close:
    fclose(f);
    return rc;
}

/* Walks the entries of a tokenizer.bin: checks them all (pass 1, t == NULL, sums the text
 * bytes into *bytes) or copies them into t (pass 2). */
static int llama2c_walk(const char *path, const uint8_t *d, size_t size, int32_t n_vocab,
                        bt_tokenizer_t *t, size_t *bytes)
{
    int32_t max_len;
    size_t pos = 4, off = 0;
    memcpy(&max_len, d, 4);
    if (max_len < 1 || max_len > BT_TOK_MAX_TEXT_BYTES) {
        bt_error("tokenizer: %s: max_token_length %d is not in 1..%d", path, max_len,
                 BT_TOK_MAX_TEXT_BYTES);
        return BT_ERR_FORMAT;
    }
    for (int32_t i = 0; i < n_vocab; i++) {
        int32_t len;
        if (size - pos < 8) {
            bt_error("tokenizer: %s ends at token %d of %d", path, i, n_vocab);
            return BT_ERR_FORMAT;
        }
        memcpy(&len, d + pos + 4, 4);
        if (len < 0 || len > max_len || (size_t)len > size - pos - 8) {
            bt_error("tokenizer: %s: token %d has length %d (max_token_length %d, %zu bytes left)",
                     path, i, len, max_len, size - pos - 8);
            return BT_ERR_FORMAT;
        }
        if (t) {
            memcpy(&t->score[i], d + pos, 4);
            t->text_off[i] = off;
            memcpy(t->text + off, d + pos + 8, (size_t)len);
            t->text[off + (size_t)len] = '\0';
        }
        off += (size_t)len + 1;
        pos += 8 + (size_t)len;
    }
    if (pos != size) {
        bt_error("tokenizer: %s has %zu bytes after its %d tokens: it is not a tokenizer for "
                 "a vocabulary of %d",
                 path, size - pos, n_vocab, n_vocab);
        return BT_ERR_FORMAT;
    }
    if (t) {
        t->text_off[n_vocab] = off;
    }
    *bytes = off;
    return BT_OK;
}

/* run.c's conventions: 0 <unk>, 1 BOS, 2 EOS, "<0xNN>" byte tokens, a " " dummy prefix. */
static void llama2c_settings(bt_tokenizer_t *t)
{
    t->kind = BT_TOK_SPM;
    t->llama2c = 1;
    t->unk = 0;
    t->bos = 1;
    t->eos = 2;
    t->add_bos = 1;
    t->add_space_prefix = 1;
    for (int32_t i = 0; i < t->n_vocab; i++) {
        size_t len;
        const char *s = bt_tok_text(t, i, &len);
        int is_byte = len == 6 && memcmp(s, "<0x", 3) == 0 && s[5] == '>' &&
                      isxdigit((unsigned char)s[3]) && isxdigit((unsigned char)s[4]);
        t->type[i] = i == 0    ? BT_TT_UNKNOWN
                     : i <= 2  ? BT_TT_CONTROL
                     : is_byte ? BT_TT_BYTE
                               : BT_TT_NORMAL;
    }
}

int bt_tokenizer_from_llama2c(const char *path, int32_t n_vocab, bt_tokenizer_t **out)
{
    if (!path || !out || n_vocab < 3 || n_vocab > BT_TOK_MAX_VOCAB) {
        bt_error("tokenizer: llama2.c tokenizer needs a path and a vocabulary of 3..%d, not %d",
                 BT_TOK_MAX_VOCAB, n_vocab);
        return BT_ERR_INVAL;
    }
    uint8_t *d = NULL;
    size_t size = 0, bytes = 0;
    bt_tokenizer_t *t = NULL;
    int rc = read_file(path, &d, &size);
    if (rc != BT_OK) {
        return rc;
    }
    if (size < 4) {
        bt_error("tokenizer: %s is too short (%zu bytes) for a llama2.c tokenizer", path, size);
        rc = BT_ERR_FORMAT;
        goto err_free;
    }
    rc = llama2c_walk(path, d, size, n_vocab, NULL, &bytes);
    rc = rc ? rc : bt_tok_alloc(n_vocab, bytes, &t);
    if (rc != BT_OK) {
        goto err_free;
    }
    llama2c_walk(path, d, size, n_vocab, t, &bytes); /* checked above */
    llama2c_settings(t);
    rc = bt_tok_finish(t);
    if (rc != BT_OK) {
        goto err_destroy;
    }
    bt_free(d);
    *out = t;
    return BT_OK;
err_destroy:
    bt_tokenizer_destroy(t);
err_free:
    bt_free(d);
    return rc;
}
