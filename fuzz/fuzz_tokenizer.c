/* SPDX-License-Identifier: MIT */
/*
 * fuzz_tokenizer.c - a client's text through the tokenizers (the router tokenizes prompts
 * from clients; the daemons detokenize what they generate).
 *
 * Vocabularies: a SentencePiece one (the synthetic models', 512 tokens with byte fallback) and
 * a byte-level BPE one with merges (the Llama 3 and GPT-2 pre-tokenizers), both written as
 * GGUF at start; BATON_FUZZ_VOCAB may name one more GGUF (a real vocabulary) for a campaign.
 * The first byte picks the vocabulary and the flags, the rest is the text. Properties: every
 * id is in the vocabulary; a short output buffer reports the same count as a long one; the
 * streaming detokenizer gives back exactly the text for valid UTF-8 (SentencePiece: with BOS,
 * and without U+2581, which it stands for spaces) and never writes past what it promises.
 */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/alloc.h"
#include "common/gguf.h"
#include "common/modelgen.h"
#include "common/status.h"
#include "common/tokenizer.h"
#include "common/unicode.h"
#include "fuzz.h"

#define MAX_TOKS 3

static bt_tokenizer_t *g_tok[MAX_TOKS];
static int g_n_tok;

static bt_tokenizer_t *load(const char *path)
{
    bt_gguf_t *g = NULL;
    bt_tokenizer_t *t = NULL;
    FUZZ_CHECK(bt_gguf_open(path, &g) == BT_OK, "cannot open %s", path);
    FUZZ_CHECK(bt_tokenizer_from_gguf(g, &t) == BT_OK, "no tokenizer in %s", path);
    bt_gguf_close(g);
    return t;
}

/* GPT-2's byte-level alphabet: the printable bytes stand for themselves, the rest for
 * U+0100 on, in byte order. */
static size_t byte_char(int b, char *out)
{
    uint32_t cpt;
    if ((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255)) {
        cpt = (uint32_t)b;
    } else {
        int n = 0;
        for (int x = 0; x < b; x++)
            n += !((x >= 33 && x <= 126) || (x >= 161 && x <= 172) || (x >= 174 && x <= 255));
        cpt = 256u + (uint32_t)n;
    }
    size_t len = bt_utf8_encode(cpt, out);
    out[len] = 0;
    return len;
}

static void write_bpe(const char *path)
{
    /* 256 byte tokens, then merges of common English pairs, then control and user tokens */
    static const char *const merges[][2] = {
        {"t", "h"}, {"h", "e"},        {"i", "n"},        {"e", "r"},
        {"a", "n"}, {"\xc4\xa0", "t"}, {"th", "e"},       {"\xc4\xa0t", "he"},
        {"o", "n"}, {"r", "e"},        {"\xc4\xa0", "a"}, {"in", "g"},
        {"1", "2"}, {"12", "3"},       {"'", "s"},        {"\xc4\xa0", "\xc4\xa0"},
    };
    enum { N_MERGES = sizeof merges / sizeof merges[0] };
    static char bytes[256][8], merged[N_MERGES][16], rules[N_MERGES][24];
    const char *tokens[256 + N_MERGES + 3];
    int32_t types[256 + N_MERGES + 3];
    const char *rule_ptr[N_MERGES];
    int n = 0;
    for (int b = 0; b < 256; b++) {
        byte_char(b, bytes[b]);
        types[n] = 1;
        tokens[n++] = bytes[b];
    }
    for (int i = 0; i < N_MERGES; i++) {
        snprintf(merged[i], sizeof merged[i], "%s%s", merges[i][0], merges[i][1]);
        snprintf(rules[i], sizeof rules[i], "%s %s", merges[i][0], merges[i][1]);
        rule_ptr[i] = rules[i];
        types[n] = 1;
        tokens[n++] = merged[i];
    }
    int64_t bos = n;
    types[n] = 3;
    tokens[n++] = "<|begin_of_text|>";
    int64_t eos = n;
    types[n] = 3;
    tokens[n++] = "<|eot_id|>";
    types[n] = 4;
    tokens[n++] = "<tool>";
    bt_gguf_writer_t *w = NULL;
    FUZZ_CHECK(bt_gguf_writer_create(&w) == BT_OK, "writer");
    bt_gguf_writer_set_str(w, "tokenizer.ggml.model", "gpt2");
    bt_gguf_writer_set_str(w, "tokenizer.ggml.pre", "llama-bpe");
    bt_gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", tokens, (uint64_t)n);
    bt_gguf_writer_set_arr(w, "tokenizer.ggml.token_type", BT_GGUF_INT32, types, (uint64_t)n);
    bt_gguf_writer_set_arr_str(w, "tokenizer.ggml.merges", rule_ptr, N_MERGES);
    bt_gguf_writer_set_scalar(w, "tokenizer.ggml.bos_token_id", BT_GGUF_INT64, &bos);
    bt_gguf_writer_set_scalar(w, "tokenizer.ggml.eos_token_id", BT_GGUF_INT64, &eos);
    FUZZ_CHECK(bt_gguf_writer_write(w, path) == BT_OK, "cannot write %s", path);
    bt_gguf_writer_destroy(w);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_quiet_log();
    char dir[] = "/tmp/baton-fuzz-tok-XXXXXX", path[128];
    FUZZ_CHECK(mkdtemp(dir) != NULL, "mkdtemp");
    bt_modelgen_params_t p;
    FUZZ_CHECK(bt_modelgen_preset("tiny", &p) == BT_OK, "preset");
    snprintf(path, sizeof path, "%s/spm.gguf", dir);
    FUZZ_CHECK(bt_modelgen_write(&p, path) == BT_OK, "modelgen");
    g_tok[g_n_tok++] = load(path);
    unlink(path);
    snprintf(path, sizeof path, "%s/bpe.gguf", dir);
    write_bpe(path);
    g_tok[g_n_tok++] = load(path);
    unlink(path);
    rmdir(dir);
    const char *extra = getenv("BATON_FUZZ_VOCAB");
    if (extra && *extra)
        g_tok[g_n_tok++] = load(extra);
    return 0;
}

/* Does the text hold U+2581 (SentencePiece's stand-in for a space)? */
static int has_lower_block(const uint8_t *s, size_t n)
{
    for (size_t i = 0; i + 2 < n; i++)
        if (s[i] == 0xe2 && s[i + 1] == 0x96 && s[i + 2] == 0x81)
            return 1;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_in_t in = {data, size};
    uint8_t sel = fuzz_u8(&in);
    const bt_tokenizer_t *t = g_tok[(sel & 3) % g_n_tok];
    int add_bos = (sel >> 2) & 1, parse_special = (sel >> 3) & 1;
    const char *text = (const char *)in.p;
    size_t len = in.n;
    int32_t nv = bt_tokenizer_n_vocab(t);

    int32_t small[4], n_small = -1, n = -1;
    int st = bt_tokenizer_encode(t, text, len, add_bos, parse_special, small, 4, &n_small);
    FUZZ_CHECK(st == BT_OK || st == BT_ERR_NOSPACE, "encode: %d", st);
    FUZZ_CHECK((st == BT_OK) == (n_small <= 4), "status %d for %d ids", st, n_small);
    int32_t *ids = bt_malloc(((size_t)n_small + 1) * sizeof *ids);
    FUZZ_CHECK(bt_tokenizer_encode(t, text, len, add_bos, parse_special, ids, n_small + 1, &n) ==
                       BT_OK &&
                   n == n_small,
               "%d ids with room for 4, %d with room for all", n_small, n);
    for (int32_t i = 0; i < n; i++)
        FUZZ_CHECK(ids[i] >= 0 && ids[i] < nv, "id %d of a vocabulary of %d", ids[i], nv);
    for (int32_t i = 0; i < n && i < 4; i++)
        FUZZ_CHECK(ids[i] == small[i], "id %d differs with a short buffer", i);

    /* detokenize as the daemons stream it */
    size_t max = bt_detok_max_bytes(t), cap = 4 * len + 64 + max, got = 0;
    char *out = bt_malloc(cap);
    bt_detok_t d;
    bt_detok_init(&d, t);
    for (int32_t i = 0; i < n; i++) {
        size_t w = bt_detok_push(&d, ids[i], out + got, max);
        FUZZ_CHECK(w <= max, "a push wrote %zu bytes, promised %zu", w, max);
        got += w;
        FUZZ_CHECK(got + max <= cap, "more text than 4 bytes a byte");
    }
    got += bt_detok_flush(&d, out + got, cap - got);
    FUZZ_CHECK(fuzz_utf8_valid(out, got), "detokenized text is not UTF-8");
    int spm = bt_tokenizer_kind(t) == BT_TOK_SPM;
    if (fuzz_utf8_valid(in.p, len) && !parse_special &&
        (!spm || (add_bos && !has_lower_block(in.p, len))))
        FUZZ_CHECK(got == len && memcmp(out, text, len) == 0,
                   "text of %zu bytes came back as %zu bytes: '%.*s' -> '%.*s'", len, got, (int)len,
                   text, (int)got, out);
    bt_free(out);
    bt_free(ids);
    return 0;
}
