/* SPDX-License-Identifier: MIT */
/*
 * test_tokenizer_bpe.c - byte-level BPE with a small hand-built vocabulary, the Llama 3 and GPT-2
 * pre-tokenizers, and GGUF tokenizer metadata that is malformed on purpose.
 *
 * The real Llama 3 vocabulary is too large to keep in ../shared, so llama.cpp's BPE .out ids
 * cannot be checked here. Instead the pre-tokenizer (where byte-level BPE implementations
 * usually go wrong) is checked on the texts of its .inp file against splits computed with
 * Python's `regex` module running the original tokenizer.json pattern, and the merges against
 * a vocabulary whose ids follow by hand from its merge ranks.
 */
// ctest-labels: unit
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/alloc.h"
#include "common/gguf.h"
#include "common/status.h"
#include "common/tokenizer.h"
#include "common/tokenizer_impl.h"
#include "common/unicode.h"

#define MAX_IDS 256

/* What to write into a test GGUF; NULL or 0 leaves a key out. */
typedef struct {
    const char *model;
    const char *pre;
    const char *const *tokens;
    int n_tokens;
    const float *scores;
    int n_scores;
    const int32_t *types;
    int n_types;
    const char *const *merges;
    int n_merges;
    int64_t bos; /* -2: absent */
    int64_t eos; /* -2: absent */
} spec_t;

/* Writes the spec as a GGUF file at a fresh scratch path (into path). */
static void write_spec(const spec_t *s, char *path, size_t cap)
{
    bt_gguf_writer_t *w = NULL;
    assert_int_equal(bt_gguf_writer_create(&w), BT_OK);
    if (s->model) {
        assert_int_equal(bt_gguf_writer_set_str(w, "tokenizer.ggml.model", s->model), BT_OK);
    }
    if (s->pre) {
        assert_int_equal(bt_gguf_writer_set_str(w, "tokenizer.ggml.pre", s->pre), BT_OK);
    }
    if (s->tokens) {
        assert_int_equal(bt_gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", s->tokens,
                                                    (uint64_t)s->n_tokens),
                         BT_OK);
    }
    if (s->scores) {
        assert_int_equal(bt_gguf_writer_set_arr(w, "tokenizer.ggml.scores", BT_GGUF_FLOAT32,
                                                s->scores, (uint64_t)s->n_scores),
                         BT_OK);
    }
    if (s->types) {
        assert_int_equal(bt_gguf_writer_set_arr(w, "tokenizer.ggml.token_type", BT_GGUF_INT32,
                                                s->types, (uint64_t)s->n_types),
                         BT_OK);
    }
    if (s->merges) {
        assert_int_equal(bt_gguf_writer_set_arr_str(w, "tokenizer.ggml.merges", s->merges,
                                                    (uint64_t)s->n_merges),
                         BT_OK);
    }
    if (s->bos != -2) {
        assert_int_equal(
            bt_gguf_writer_set_scalar(w, "tokenizer.ggml.bos_token_id", BT_GGUF_INT64, &s->bos),
            BT_OK);
    }
    if (s->eos != -2) {
        assert_int_equal(
            bt_gguf_writer_set_scalar(w, "tokenizer.ggml.eos_token_id", BT_GGUF_INT64, &s->eos),
            BT_OK);
    }
    bt_test_tmp_path("vocab", path, cap);
    assert_int_equal(bt_gguf_writer_write(w, path), BT_OK);
    bt_gguf_writer_destroy(w);
}

/* Writes the spec as a GGUF, loads a tokenizer from it; returns the status. */
static int make(const spec_t *s, bt_tokenizer_t **out)
{
    char path[512];
    bt_gguf_t *g = NULL;
    write_spec(s, path, sizeof(path));
    assert_int_equal(bt_gguf_open(path, &g), BT_OK);
    *out = NULL;
    int rc = bt_tokenizer_from_gguf(g, out);
    bt_gguf_close(g);
    remove(path);
    return rc;
}

/* The hand vocabulary; "Ġ" is the space byte, "Ċ" the newline byte, "Ã©" the bytes of "é". */
/* clang-format off */
static const char *const bpe_tokens[] = {
    "h", "e", "l", "o", "\xC4\xA0", "w", "r", "d", "he", "ll",               /* 0-9 */
    "hell", "hello", "\xC4\xA0w", "or", "\xC4\xA0wor", "ld",                 /* 10-15 */
    "\xC4\xA0world", "\xC3\x83", "\xC2\xA9", "\xC3\x83\xC2\xA9", "\xC4\x8A", /* 16-20 */
    "<|begin_of_text|>", "<|eot_id|>", "<tool>", "1", "2", "4", "5", "12",   /* 21-28 */
    "45", "124", "\xC3\xAF", "\xC2\xBF", "\xC2\xBD", "oh", "lo", "!", "'",   /* 29-37 */
    "s", "'s",                                                               /* 38-39 */
};
enum { N_BPE = sizeof(bpe_tokens) / sizeof(bpe_tokens[0]) };

/* Rank = index: the order in which merges win. */
static const char *const bpe_merges[] = {
    "h e",  "l l",  "he ll", "hell o", "\xC4\xA0 w", "o r",  "\xC4\xA0w or", "l d",
    "\xC4\xA0wor ld", "l o", "\xC3\x83 \xC2\xA9", "1 2",  "4 5",  "12 4",  "' s",
};
/* clang-format on */
enum { N_MERGES = sizeof(bpe_merges) / sizeof(bpe_merges[0]) };

static int32_t bpe_types[N_BPE];

static spec_t bpe_spec(const char *pre)
{
    for (int i = 0; i < N_BPE; i++) {
        bpe_types[i] = i == 21 || i == 22 ? 3 : i == 23 ? 4 : 1;
    }
    return (spec_t){.model = "gpt2",
                    .pre = pre,
                    .tokens = bpe_tokens,
                    .n_tokens = N_BPE,
                    .types = bpe_types,
                    .n_types = N_BPE,
                    .merges = bpe_merges,
                    .n_merges = N_MERGES,
                    .bos = 21,
                    .eos = 22};
}

static void expect(const bt_tokenizer_t *t, const char *s, size_t len, int special,
                   const int32_t *want, int n_want)
{
    int32_t ids[MAX_IDS], n = -1;
    assert_int_equal(bt_tokenizer_encode(t, s, len, 0, special, ids, MAX_IDS, &n), BT_OK);
    if (n != n_want || memcmp(ids, want, (size_t)n * sizeof(int32_t)) != 0) {
        fprintf(stderr, "encoding '%.*s': got", (int)len, s);
        for (int i = 0; i < n; i++) {
            fprintf(stderr, " %d", ids[i]);
        }
        fprintf(stderr, "\n");
        fail();
    }
}

#define EXPECT(t, s, special, ...)                                                                 \
    expect((t), (s), sizeof(s) - 1, (special), (const int32_t[]){__VA_ARGS__},                     \
           (int)(sizeof((const int32_t[]){__VA_ARGS__}) / sizeof(int32_t)))

static void test_bpe_hand_vocab_llama3(void **state)
{
    spec_t s = bpe_spec("llama-bpe");
    bt_tokenizer_t *t = NULL;
    assert_int_equal(make(&s, &t), BT_OK);
    assert_int_equal(bt_tokenizer_kind(t), BT_TOK_BPE);
    assert_int_equal(bt_tokenizer_bos(t), 21);
    assert_true(bt_tokenizer_add_bos(t));
    assert_true(bt_tokenizer_is_eog(t, 22));
    EXPECT(t, "hello world", 0, 11, 16);
    EXPECT(t, "llo", 0, 9, 3);    /* "l l" (rank 1) beats "l o" (rank 9) */
    EXPECT(t, "lll", 0, 9, 2);    /* equal ranks: leftmost first */
    EXPECT(t, "oh", 0, 34);       /* a whole word in the vocabulary skips the merges */
    EXPECT(t, "\xC3\xA9", 0, 19); /* "é" is the bytes C3 A9, spelled "Ã©" */
    EXPECT(t, "\n", 0, 20);
    EXPECT(t, "1245", 0, 30, 27); /* digits go in threes: "124" "5" */
    EXPECT(t, "he's!", 0, 8, 39, 36);
    EXPECT(t, "\xFF", 0, 31, 32, 33); /* an invalid byte is read as U+FFFD, EF BF BD */
    EXPECT(t, "<|eot_id|>hello", 1, 22, 11);
    /* Unparsed, the control token is text: "<|" "eot" "_id" "|>" "hello". */
    EXPECT(t, "<|eot_id|>hello", 0, 1, 3, 7, 11);
    EXPECT(t, "<tool>h", 0, 23, 0); /* user-defined tokens are always matched */
    expect(t, "", 0, 1, (const int32_t[]){0}, 0);
    bt_tokenizer_destroy(t);
}

static void test_bpe_hand_vocab_gpt2(void **state)
{
    spec_t s = bpe_spec("gpt-2");
    bt_tokenizer_t *t = NULL;
    assert_int_equal(make(&s, &t), BT_OK);
    assert_false(bt_tokenizer_add_bos(t));
    EXPECT(t, "hello world", 0, 11, 16); /* every merge applied in rank order */
    EXPECT(t, "oh", 0, 3, 0);            /* no "o h" rule, and no whole-word shortcut */
    EXPECT(t, "1245", 0, 28, 29);        /* one number: "4 5" (12) before "12 4" (13) */
    EXPECT(t, "llo", 0, 9, 3);
    bt_tokenizer_destroy(t);
}

static void test_bpe_pieces_and_detok(void **state)
{
    spec_t s = bpe_spec("llama-bpe");
    bt_tokenizer_t *t = NULL;
    size_t n;
    assert_int_equal(make(&s, &t), BT_OK);
    assert_string_equal(bt_tokenizer_piece(t, 16, &n), " world");
    assert_string_equal(bt_tokenizer_piece(t, 20, &n), "\n");
    assert_string_equal(bt_tokenizer_piece(t, 19, &n), "\xC3\xA9");
    assert_string_equal(bt_tokenizer_piece(t, 21, &n), "");
    assert_string_equal(bt_tokenizer_piece(t, 23, &n), "<tool>");
    assert_string_equal(bt_tokenizer_piece(t, 31, &n), "\xEF");
    /* " world" and "<tool>" are the longest: 4 + 6 (see bt_detok_max_bytes). */
    assert_int_equal(bt_detok_max_bytes(t), 10);
    bt_detok_t d;
    char out[64];
    bt_detok_init(&d, t);
    assert_int_equal(bt_detok_push(&d, 21, out, sizeof(out)), 0);
    assert_int_equal(bt_detok_push(&d, 16, out, sizeof(out)), 6); /* no space rule for BPE */
    assert_memory_equal(out, " world", 6);
    assert_int_equal(bt_detok_push(&d, 31, out, sizeof(out)), 0);
    assert_int_equal(bt_detok_push(&d, 32, out, sizeof(out)), 0);
    assert_int_equal(bt_detok_push(&d, 33, out, sizeof(out)), 3);
    assert_memory_equal(out, "\xEF\xBF\xBD", 3);
    bt_tokenizer_destroy(t);
}

/* Splits text with the pre-tokenizer; writes the words joined by '|' into out. */
static void pre_split(bt_pre_t pre, const char *text, size_t len, char *out, size_t cap)
{
    uint32_t *cpts = malloc((len + 1) * sizeof(uint32_t));
    size_t *ends = malloc((len + 1) * sizeof(size_t)), n = 0, o = 0;
    for (size_t i = 0; i < len;) {
        i += bt_utf8_decode((const uint8_t *)text + i, len - i, &cpts[n++]);
    }
    size_t n_words = bt_tok_pre_split(pre, cpts, n, ends);
    for (size_t w = 0, start = 0; w < n_words; start = ends[w++]) {
        if (w > 0) {
            out[o++] = '|';
        }
        for (size_t j = start; j < ends[w]; j++) {
            assert_true(o + 5 < cap);
            o += bt_utf8_encode(cpts[j], out + o);
        }
    }
    out[o] = '\0';
    free(ends);
    free(cpts);
}

static void assert_split(bt_pre_t pre, const char *text, const char *want)
{
    char got[1024];
    pre_split(pre, text, strlen(text), got, sizeof(got));
    if (strcmp(got, want) != 0) {
        fprintf(stderr, "split of '%s'\n  got  '%s'\n  want '%s'\n", text, got, want);
        fail();
    }
}

/* llama.cpp's BPE test texts, split by Python `regex` with the original Llama 3 pattern
 * (words joined by '|'; none of the texts contains one). */
static const char *const llama3_splits[] = {
    /*  0 */ "ied| |4| |\xC2\xBD| months",
    /*  1 */ "F\xC3\xBChrer",
    /*  2 */ "",
    /*  3 */ " ",
    /*  4 */ "  ",
    /*  5 */ "   ",
    /*  6 */ "\t",
    /*  7 */ "\n",
    /*  8 */ "\n\n",
    /*  9 */ "\n\n\n",
    /* 10 */ "\t\n",
    /* 11 */ "Hello| world",
    /* 12 */ " Hello| world",
    /* 13 */ "Hello| World",
    /* 14 */ " Hello| World",
    /* 15 */ " Hello| World|!",
    /* 16 */ "Hello|,| world|!",
    /* 17 */ " Hello|,| world|!",
    /* 18 */ " this| is| \xF0\x9F\xA6\x99.|cpp",
    /* 19 */ "w|048| |7|tuijk| dsdfhu",
    /* 20 */
    "\xD0\xBD\xD0\xB5\xD1\x89\xD0\xBE| \xD0\xBD\xD0\xB0| \xD0\x91\xD1\x8A\xD0\xBB\xD0\xB3"
    "\xD0\xB0\xD1\x80\xD1\x81\xD0\xBA\xD0\xB8",
    /* 21 */
    "\xE1\x9E\x80|\xE1\x9E\xB6\xE1\x9E\x93|\xE1\x9F\x8B\xE1\x9E\x8F|\xE1\x9F\x82\xE1\x9E"
    "\x96|\xE1\x9E\xB7\xE1\x9E\x9F|\xE1\x9F\x81\xE1\x9E\x9F\xE1\x9E\xA2|\xE1\x9E\xB6\xE1"
    "\x9E\x85\xE1\x9E\x81\xE1\x9E\x9B\xE1\x9E\x85|\xE1\x9F\x81\xE1\x9E\x89",
    /* 22 */
    "\xF0\x9F\x9A\x80| (|normal|)| \xF0\x9F\x98\xB6\xE2\x80\x8D\xF0\x9F\x8C\xAB\xEF\xB8"
    "\x8F| (|multiple| emojis| concatenated|)| \xE2\x9C\x85| (|only| emoji| that| has| it"
    "s| own| token|)",
    /* 23 */ "Hello",
    /* 24 */ " Hello",
    /* 25 */ " | Hello",
    /* 26 */ "  | Hello",
    /* 27 */ "   | Hello",
    /* 28 */ "   | Hello|\n|   | Hello",
    /* 29 */ " (",
    /* 30 */ "\n| =",
    /* 31 */ "'| era",
    /* 32 */
    "Hello|,| y|'all|!| How| are| you| \xF0\x9F\x98\x81| ?|\xE6\x88\x91\xE6\x83\xB3\xE5"
    "\x9C\xA8"
    "apple\xE5\xB7\xA5\xE4\xBD\x9C|131|415|1|\xE5\xA4\xA9|\xEF\xBD\x9E",
    /* 33 */ "!!!!!!",
    /* 34 */ "3",
    /* 35 */ "33",
    /* 36 */ "333",
    /* 37 */ "333|3",
    /* 38 */ "333|33",
    /* 39 */ "333|333",
    /* 40 */ "333|333|3",
    /* 41 */ "333|333|33",
    /* 42 */ "333|333|333",
    /* 43 */
    "C\xE1\xBB\xAD"
    "a| Vi\xE1\xBB\x87t",
    /* 44 */ " discards",
    /* 45 */
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n|\xF0\x9F\x9A\x80| (|normal|)| \xF0"
    "\x9F\x98\xB6\xE2\x80\x8D\xF0\x9F\x8C\xAB\xEF\xB8\x8F| (|multiple| emojis| concatenat"
    "ed|)| \xE2\x9C\x85| \xF0\x9F\xA6\x99\xF0\x9F\xA6\x99| |3| |33| |333| |333|3| |333|33"
    "| |333|333| |333|333|3| |333|333|33| |3|.|3| |3|..|3| |3|...|3| \xE1\x9E\x80|\xE1"
    "\x9E\xB6\xE1\x9E\x93|\xE1\x9F\x8B\xE1\x9E\x8F|\xE1\x9F\x82\xE1\x9E\x96|\xE1\x9E\xB7"
    "\xE1\x9E\x9F|\xE1\x9F\x81\xE1\x9E\x9F\xE1\x9E\xA2|\xE1\x9E\xB6\xE1\x9E\x85|\xF0\x9F"
    "\x98\x81| ?|\xE6\x88\x91\xE6\x83\xB3\xE5\x9C\xA8"
    "apple\xE5\xB7\xA5\xE4\xBD\x9C|131"
    "|415|1|\xE5\xA4\xA9|\xEF\xBD\x9E| ------=======| \xD0\xBD\xD0\xB5\xD1\x89\xD0\xBE| "
    "\xD0\xBD\xD0\xB0| \xD0\x91\xD1\x8A\xD0\xBB\xD0\xB3\xD0\xB0\xD1\x80\xD1\x81\xD0\xBA"
    "\xD0\xB8| ''''''```````\"\"\"\"......!!!!!!??????| I|'ve| been| '|told| he|'s| there"
    "|,| '|RE| you| sure|?| '|M| not| sure| I|'ll| make| it|,| '|D| you| like| some| tea|"
    "?| We|'Ve| a|'lL",

};

static void test_pre_llama3_on_llama_cpp_texts(void **state)
{
    char path[512];
    BT_TEST_NEED_SHARED("tokenizer-tests/ggml-vocab-llama-bpe.gguf.inp", path);
    size_t len;
    char *raw = bt_test_read_file(path, &len);
    assert_non_null(raw);
    static const char sep[] = "\n__ggml_vocab_test__\n";
    int i = 0;
    for (char *p = raw, *end = raw + len; p < end; i++) {
        char *next = memmem(p, (size_t)(end - p), sep, sizeof(sep) - 1);
        size_t n = next ? (size_t)(next - p) : (size_t)(end - p);
        char got[2048];
        assert_true(i < (int)(sizeof(llama3_splits) / sizeof(llama3_splits[0])));
        pre_split(BT_PRE_LLAMA3, p, n, got, sizeof(got));
        if (strcmp(got, llama3_splits[i]) != 0) {
            fprintf(stderr, "case %d\n  got  '%s'\n  want '%s'\n", i, got, llama3_splits[i]);
            fail();
        }
        p = next ? next + sizeof(sep) - 1 : end;
    }
    assert_int_equal(i, 46);
    free(raw);
}

/* More splits, also from Python `regex`, for the corners of both patterns. */
static void test_pre_split_corners(void **state)
{
    assert_split(BT_PRE_LLAMA3, "Hello world's  test\n\n 123456 x",
                 "Hello| world|'s| | test|\n\n| |123|456| x");
    assert_split(BT_PRE_GPT2, "Hello world's  test\n\n 123456 x",
                 "Hello| world|'s| | test|\n\n| 123456| x");
    assert_split(BT_PRE_LLAMA3, "I'M  fine!!\t\tOK?  ", "I|'M| | fine|!!|\t|\tOK|?|  ");
    assert_split(BT_PRE_GPT2, "I'M  fine!!\t\tOK?  ", "I|'|M| | fine|!!|\t|\t|OK|?|  ");
    /* U+00A0 and U+3000 are spaces, U+0663 (Arabic-Indic three) a number. */
    assert_split(BT_PRE_LLAMA3,
                 "a\xC2\xA0\xE3\x80\x80"
                 "b 12\xD9\xA3",
                 "a|\xC2\xA0|\xE3\x80\x80"
                 "b| |12\xD9\xA3");
    assert_split(BT_PRE_GPT2,
                 "a\xC2\xA0\xE3\x80\x80"
                 "b 12\xD9\xA3",
                 "a|\xC2\xA0|\xE3\x80\x80|b| 12\xD9\xA3");
    assert_split(BT_PRE_LLAMA3, "'sa 'Sa", "'s|a| '|Sa");
    assert_split(BT_PRE_GPT2, "x \r\n\r\n y", "x| \r\n\r\n| y");
    assert_split(BT_PRE_LLAMA3, "x \r\n\r\n y", "x| \r\n\r\n| y");
    assert_split(BT_PRE_LLAMA3, "", "");
}

/* A small SentencePiece vocabulary to break in the tests below. */
static const char *const spm_tokens[] = {"<unk>",
                                         "<s>",
                                         "</s>",
                                         "\xE2\x96\x81"
                                         "a",
                                         "a",
                                         "b"};
static const float spm_scores[] = {0, 0, 0, -1, -2, -3};
static const int32_t spm_types[] = {2, 3, 3, 1, 1, 1};

static spec_t spm_spec(void)
{
    return (spec_t){.model = "llama",
                    .tokens = spm_tokens,
                    .n_tokens = 6,
                    .scores = spm_scores,
                    .n_scores = 6,
                    .types = spm_types,
                    .n_types = 6,
                    .bos = -2,
                    .eos = -2};
}

static void test_gguf_metadata_malformed(void **state)
{
    bt_tokenizer_t *t = NULL;
    spec_t s = spm_spec();
    assert_int_equal(make(&s, &t), BT_OK);
    EXPECT(t, "ab", 0, 3, 5);
    bt_tokenizer_destroy(t);
    s.model = NULL;
    assert_int_equal(make(&s, &t), BT_ERR_FORMAT);
    s.model = "bert";
    assert_int_equal(make(&s, &t), BT_ERR_UNSUPPORTED);
    s = spm_spec();
    s.tokens = NULL;
    assert_int_equal(make(&s, &t), BT_ERR_FORMAT);
    s = spm_spec();
    s.n_tokens = 0;
    s.n_scores = s.n_types = 0;
    assert_int_equal(make(&s, &t), BT_ERR_FORMAT);
    s = spm_spec();
    s.n_scores = 5; /* tokens, scores and types must line up */
    assert_int_equal(make(&s, &t), BT_ERR_FORMAT);
    s = spm_spec();
    s.n_types = 4;
    assert_int_equal(make(&s, &t), BT_ERR_FORMAT);
    s = spm_spec();
    s.bos = 6; /* ids out of range */
    assert_int_equal(make(&s, &t), BT_ERR_FORMAT);
    s.bos = -2;
    s.eos = 1ll << 40;
    assert_int_equal(make(&s, &t), BT_ERR_FORMAT);
    assert_null(t);
}

static void test_gguf_tokens_malformed(void **state)
{
    bt_tokenizer_t *t = NULL;
    spec_t s = spm_spec();
    char *huge = malloc(4096);
    memset(huge, 'x', 4095);
    huge[4095] = '\0';
    const char *toks[6] = {"<unk>", "<s>", "</s>", huge, "a", "b"};
    s.tokens = toks;
    assert_int_equal(make(&s, &t), BT_ERR_FORMAT);
    toks[3] = "a"; /* the same text twice */
    assert_int_equal(make(&s, &t), BT_ERR_FORMAT);
    toks[3] = "xyz";
    int32_t types[6] = {2, 3, 3, 6, 1, 1}; /* a byte token that is not <0xNN> */
    s.types = types;
    assert_int_equal(make(&s, &t), BT_ERR_FORMAT);
    types[3] = 99; /* an unknown type is "undefined", as in llama.cpp: no text */
    types[4] = -5;
    toks[3] = ""; /* an empty text is never matched */
    assert_int_equal(make(&s, &t), BT_OK);
    size_t n;
    assert_string_equal(bt_tokenizer_piece(t, 4, &n), "");
    bt_tokenizer_destroy(t);
    free(huge);
}

static void test_gguf_bpe_malformed(void **state)
{
    bt_tokenizer_t *t = NULL;
    spec_t s = bpe_spec("llama-bpe");
    s.merges = NULL;
    assert_int_equal(make(&s, &t), BT_ERR_FORMAT);
    const char *bad[] = {"h e", "he"};
    s.merges = bad;
    s.n_merges = 2;
    assert_int_equal(make(&s, &t), BT_ERR_FORMAT);
    bad[1] = "he ";
    assert_int_equal(make(&s, &t), BT_ERR_FORMAT);
    s = bpe_spec(NULL);
    assert_int_equal(make(&s, &t), BT_ERR_UNSUPPORTED);
    s.pre = "default";
    assert_int_equal(make(&s, &t), BT_ERR_UNSUPPORTED);
    s.pre = "qwen2";
    assert_int_equal(make(&s, &t), BT_ERR_UNSUPPORTED);
    assert_null(t);
}

/* Each allocation of loading and encoding fails in turn: a clean BT_ERR_NOMEM, no leak. */
static void test_bpe_alloc_faults(void **state)
{
    spec_t s = bpe_spec("llama-bpe");
    bt_tokenizer_t *t = NULL;
    long n;
    char path[512];
    bt_gguf_t *g = NULL;
    write_spec(&s, path, sizeof(path));
    assert_int_equal(bt_gguf_open(path, &g), BT_OK);
    for (n = 1;; n++) {
        bt_alloc_fail_at(n);
        int rc = bt_tokenizer_from_gguf(g, &t);
        int fired = bt_alloc_fault_fired();
        bt_alloc_fail_at(0);
        if (!fired) {
            assert_int_equal(rc, BT_OK);
            bt_tokenizer_destroy(t);
            break;
        }
        assert_int_equal(rc, BT_ERR_NOMEM);
    }
    assert_true(n > 10);
    bt_gguf_close(g);
    remove(path);
    assert_int_equal(make(&s, &t), BT_OK);
    for (n = 1;; n++) {
        int32_t ids[MAX_IDS], n_ids;
        bt_alloc_fail_at(n);
        int rc =
            bt_tokenizer_encode(t, "hello <|eot_id|> world\xFF", 23, 1, 1, ids, MAX_IDS, &n_ids);
        int fired = bt_alloc_fault_fired();
        bt_alloc_fail_at(0);
        if (!fired) {
            assert_int_equal(rc, BT_OK);
            break;
        }
        assert_int_equal(rc, BT_ERR_NOMEM);
    }
    assert_true(n > 2);
    bt_tokenizer_destroy(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bpe_hand_vocab_llama3),
        cmocka_unit_test(test_bpe_hand_vocab_gpt2),
        cmocka_unit_test(test_bpe_pieces_and_detok),
        cmocka_unit_test(test_pre_llama3_on_llama_cpp_texts),
        cmocka_unit_test(test_pre_split_corners),
        cmocka_unit_test(test_gguf_metadata_malformed),
        cmocka_unit_test(test_gguf_tokens_malformed),
        cmocka_unit_test(test_gguf_bpe_malformed),
        cmocka_unit_test(test_bpe_alloc_faults),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
