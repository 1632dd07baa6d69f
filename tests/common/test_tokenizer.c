/* SPDX-License-Identifier: MIT */
/*
 * test_tokenizer.c - SentencePiece and byte-level BPE encoding, llama2.c tokenizers, streaming
 * detokenization, hostile metadata and allocation faults.
 *
 * The SentencePiece cases are llama.cpp's own (tokenizer-tests/ggml-vocab-llama-spm.gguf.inp and
 * .out, read the way its test-tokenizer-0 reads them); tests that need ../shared skip without it.
 * BPE is checked against a small hand-built vocabulary whose ids follow from the merge ranks.
 */
// ctest-labels: unit
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/alloc.h"
#include "common/gguf.h"
#include "common/status.h"
#include "common/tokenizer.h"
#include "common/unicode.h"

#define SPM_VOCAB "tokenizer-tests/ggml-vocab-llama-spm.gguf"
#define MAX_IDS 4096

static bt_tokenizer_t *load_gguf(const char *path)
{
    bt_gguf_t *g = NULL;
    bt_tokenizer_t *t = NULL;
    assert_int_equal(bt_gguf_open(path, &g), BT_OK);
    assert_int_equal(bt_tokenizer_from_gguf(g, &t), BT_OK);
    bt_gguf_close(g);
    return t;
}

static int encode(const bt_tokenizer_t *t, const char *s, size_t len, int bos, int special,
                  int32_t *ids)
{
    int32_t n = -1;
    assert_int_equal(bt_tokenizer_encode(t, s, len, bos, special, ids, MAX_IDS, &n), BT_OK);
    return n;
}

static void assert_ids(const bt_tokenizer_t *t, const char *s, int bos, int special,
                       const int32_t *want, int n_want)
{
    int32_t ids[MAX_IDS];
    int n = encode(t, s, strlen(s), bos, special, ids);
    if (n != n_want || memcmp(ids, want, (size_t)n * sizeof(int32_t)) != 0) {
        fprintf(stderr, "encoding '%s': got", s);
        for (int i = 0; i < n; i++) {
            fprintf(stderr, " %d", ids[i]);
        }
        fprintf(stderr, "\n");
        fail();
    }
}

/* Text of ids through a detokenizer (after BOS when with_bos), flushed. */
static size_t detok_all(const bt_tokenizer_t *t, const int32_t *ids, int n, int with_bos, char *out,
                        size_t cap)
{
    bt_detok_t d;
    size_t len = 0;
    bt_detok_init(&d, t);
    if (with_bos) {
        len += bt_detok_push(&d, bt_tokenizer_bos(t), out + len, cap - len);
    }
    for (int i = 0; i < n; i++) {
        assert_true(cap - len >= bt_detok_max_bytes(t));
        len += bt_detok_push(&d, ids[i], out + len, cap - len);
    }
    len += bt_detok_flush(&d, out + len, cap - len);
    return len;
}

/* llama.cpp's test-tokenizer-0 format: inputs separated by "\n__ggml_vocab_test__\n", one line
 * of space-separated ids per input. */
typedef struct {
    char *inp, *out;
    const char *text[64];
    size_t len[64];
    char *ids[64];
    int n;
} cases_t;

static void cases_read(const char *base, cases_t *c)
{
    char path[1024];
    static const char sep[] = "\n__ggml_vocab_test__\n";
    size_t n_inp;
    snprintf(path, sizeof(path), "%s.inp", base);
    c->inp = bt_test_read_file(path, &n_inp);
    snprintf(path, sizeof(path), "%s.out", base);
    c->out = bt_test_read_file(path, NULL);
    assert_non_null(c->inp);
    assert_non_null(c->out);
    c->n = 0;
    for (char *p = c->inp, *end = c->inp + n_inp; p < end && c->n < 64; c->n++) {
        char *next = memmem(p, (size_t)(end - p), sep, sizeof(sep) - 1);
        c->text[c->n] = p;
        c->len[c->n] = next ? (size_t)(next - p) : (size_t)(end - p);
        p = next ? next + sizeof(sep) - 1 : end;
    }
    char *save = NULL;
    int n_out = 0;
    for (char *line = c->out; line && n_out < 64; n_out++) {
        char *nl = strchr(line, '\n');
        if (nl) {
            *nl = '\0';
        }
        c->ids[n_out] = line;
        line = nl && nl[1] ? nl + 1 : NULL;
    }
    (void)save;
    assert_int_equal(n_out, c->n);
}

static int parse_ids(char *line, int32_t *ids)
{
    int n = 0;
    for (char *tok = strtok(line, " "); tok; tok = strtok(NULL, " ")) {
        ids[n++] = (int32_t)atoi(tok);
    }
    return n;
}

static void cases_free(cases_t *c)
{
    free(c->inp);
    free(c->out);
}

static void test_spm_llama_cpp_cases(void **state)
{
    char path[512];
    BT_TEST_NEED_SHARED(SPM_VOCAB, path);
    bt_tokenizer_t *t = load_gguf(path);
    cases_t c;
    cases_read(path, &c);
    int passed = 0;
    for (int i = 0; i < c.n; i++) {
        int32_t want[MAX_IDS], got[MAX_IDS];
        int n_want = parse_ids(c.ids[i], want);
        int n = encode(t, c.text[i], c.len[i], 0, 0, got);
        if (n == n_want && memcmp(got, want, (size_t)n * sizeof(int32_t)) == 0) {
            passed++;
        } else {
            fprintf(stderr, "case %d '%.*s': got", i, (int)c.len[i], c.text[i]);
            for (int j = 0; j < n; j++) {
                fprintf(stderr, " %d", got[j]);
            }
            fprintf(stderr, "\n");
        }
    }
    fprintf(stderr, "spm: %d of %d llama.cpp cases pass\n", passed, c.n);
    assert_int_equal(passed, c.n);
    assert_int_equal(c.n, 46);
    cases_free(&c);
    bt_tokenizer_destroy(t);
}

/* Every case decodes back to its input: BOS, then the ids, through the streaming detokenizer. */
static void test_spm_round_trip(void **state)
{
    char path[512];
    BT_TEST_NEED_SHARED(SPM_VOCAB, path);
    bt_tokenizer_t *t = load_gguf(path);
    cases_t c;
    cases_read(path, &c);
    for (int i = 0; i < c.n; i++) {
        int32_t ids[MAX_IDS];
        char text[8192];
        int n = encode(t, c.text[i], c.len[i], 0, 0, ids);
        size_t len = detok_all(t, ids, n, 1, text, sizeof(text));
        assert_int_equal(len, c.len[i]);
        assert_memory_equal(text, c.text[i], len);
    }
    cases_free(&c);
    bt_tokenizer_destroy(t);
}

/* The same vocabulary in llama2.c's format, encoded with run.c's rules, gives the same ids. */
static void test_spm_matches_llama2c_format(void **state)
{
    char path[512], bin[512];
    BT_TEST_NEED_SHARED(SPM_VOCAB, path);
    BT_TEST_NEED_SHARED("models/tokenizer.bin", bin);
    bt_tokenizer_t *t = load_gguf(path), *l2 = NULL;
    assert_int_equal(bt_tokenizer_from_llama2c(bin, 32000, &l2), BT_OK);
    cases_t c;
    cases_read(path, &c);
    for (int i = 0; i < c.n; i++) {
        int32_t a[MAX_IDS], b[MAX_IDS];
        int na = encode(t, c.text[i], c.len[i], 1, 0, a);
        int nb = encode(l2, c.text[i], c.len[i], 1, 0, b);
        assert_int_equal(na, nb);
        assert_memory_equal(a, b, (size_t)na * sizeof(int32_t));
    }
    cases_free(&c);
    bt_tokenizer_destroy(l2);
    bt_tokenizer_destroy(t);
}

static void test_spm_special_tokens(void **state)
{
    char path[512];
    BT_TEST_NEED_SHARED(SPM_VOCAB, path);
    bt_tokenizer_t *t = load_gguf(path);
    assert_int_equal(bt_tokenizer_kind(t), BT_TOK_SPM);
    assert_int_equal(bt_tokenizer_n_vocab(t), 32000);
    assert_int_equal(bt_tokenizer_bos(t), 1);
    assert_int_equal(bt_tokenizer_eos(t), 2);
    assert_true(bt_tokenizer_add_bos(t));
    assert_true(bt_tokenizer_is_eog(t, 2));
    assert_false(bt_tokenizer_is_eog(t, 1));
    /* Parsed: the text after a special token gets the space prefix again. */
    assert_ids(t, "<s>Hello</s>", 0, 1, (const int32_t[]){1, 15043, 2}, 3);
    assert_ids(t, "Hello<s>world", 1, 1, (const int32_t[]){1, 15043, 1, 3186}, 4);
    /* Not parsed: plain text that never yields a control id. */
    int32_t ids[MAX_IDS];
    int n = encode(t, "<s>Hello</s>", 12, 0, 0, ids);
    for (int i = 0; i < n; i++) {
        assert_true(ids[i] > 2);
    }
    char text[256];
    size_t len = detok_all(t, ids, n, 1, text, sizeof(text));
    assert_int_equal(len, 12);
    assert_memory_equal(text, "<s>Hello</s>", 12);
    /* Control tokens have no text; "▁" is a space and byte tokens are their byte. */
    size_t plen;
    bt_tokenizer_piece(t, 1, &plen);
    assert_int_equal(plen, 0);
    assert_string_equal(bt_tokenizer_piece(t, 15043, &plen), " Hello");
    assert_string_equal(bt_tokenizer_piece(t, 13, &plen), "\n");
    assert_string_equal(bt_tokenizer_piece(t, -1, &plen), "");
    assert_string_equal(bt_tokenizer_piece(t, 32000, &plen), "");
    bt_tokenizer_destroy(t);
}

/* Any bytes: invalid UTF-8, NUL in the middle, empty text; nothing is lost on the way back. */
static void test_spm_any_bytes(void **state)
{
    char path[512];
    BT_TEST_NEED_SHARED(SPM_VOCAB, path);
    bt_tokenizer_t *t = load_gguf(path);
    static const char raw[] = "a\0b\xFF\xC3(\xE2\x96 \x80\x80z\xF4\x90\x80\x80!";
    size_t raw_len = sizeof(raw) - 1;
    int32_t ids[MAX_IDS];
    int n = encode(t, raw, raw_len, 0, 0, ids);
    assert_true(n > 0);
    char joined[256];
    size_t len = 0, plen;
    for (int i = 0; i < n; i++) {
        const char *p = bt_tokenizer_piece(t, ids[i], &plen);
        memcpy(joined + len, p, plen);
        len += plen;
    }
    assert_int_equal(len, raw_len + 1); /* the space prefix */
    assert_memory_equal(joined, " ", 1);
    assert_memory_equal(joined + 1, raw, raw_len);
    assert_int_equal(encode(t, "", 0, 0, 0, ids), 0);
    assert_int_equal(encode(t, NULL, 0, 1, 1, ids), 1);
    assert_int_equal(ids[0], 1);
    /* Too little room: the full count comes back with BT_ERR_NOSPACE, the prefix is written. */
    int32_t few[2] = {-7, -7}, full[MAX_IDS], n_ids = 0;
    int n_full = encode(t, "Hello world again", 17, 1, 0, full);
    assert_int_equal(bt_tokenizer_encode(t, "Hello world again", 17, 1, 0, few, 1, &n_ids),
                     BT_ERR_NOSPACE);
    assert_int_equal(n_ids, n_full);
    assert_int_equal(few[0], 1);
    assert_int_equal(few[1], -7);
    assert_int_equal(bt_tokenizer_encode(t, "x", 1, 0, 0, NULL, 0, &n_ids), BT_ERR_NOSPACE);
    assert_int_equal(n_ids, 1);
    assert_int_equal(bt_tokenizer_encode(t, NULL, 3, 0, 0, ids, 10, &n_ids), BT_ERR_INVAL);
    bt_tokenizer_destroy(t);
}

static size_t push_str(bt_detok_t *d, int32_t id, char *out)
{
    size_t n = bt_detok_push(d, id, out, 64);
    out[n] = '\0';
    return n;
}

/* A character split over byte tokens comes out whole; broken ones come out as U+FFFD. */
static void test_detok_streaming(void **state)
{
    char path[512], out[80];
    BT_TEST_NEED_SHARED(SPM_VOCAB, path);
    bt_tokenizer_t *t = load_gguf(path);
    bt_detok_t d;
    enum { B_E2 = 0xE2 + 3, B_96 = 0x96 + 3, B_81 = 0x81 + 3, B_FF = 0xFF + 3, B_28 = 0x28 + 3 };
    assert_int_equal(bt_detok_max_bytes(t), 31); /* 4 + the longest piece, 27 bytes */
    bt_detok_init(&d, t);
    assert_int_equal(push_str(&d, B_E2, out), 0);
    assert_int_equal(push_str(&d, B_96, out), 0);
    assert_int_equal(push_str(&d, B_81, out), 3);
    assert_string_equal(out, "\xE2\x96\x81");
    assert_int_equal(push_str(&d, B_FF, out), 3); /* never valid */
    assert_string_equal(out, "\xEF\xBF\xBD");
    push_str(&d, B_E2, out);
    assert_int_equal(push_str(&d, 29874, out), 4); /* "a" cuts the character short */
    assert_string_equal(out, "\xEF\xBF\xBD"
                             "a");
    push_str(&d, B_E2, out);
    assert_int_equal(push_str(&d, B_28, out), 4); /* <0x28> is "(", not a continuation */
    assert_string_equal(out, "\xEF\xBF\xBD(");
    push_str(&d, B_E2, out);
    push_str(&d, B_96, out);
    assert_int_equal(bt_detok_flush(&d, out, sizeof(out)), 3);
    assert_int_equal(bt_detok_flush(&d, out, sizeof(out)), 0);
    assert_int_equal(d.n_emitted, 10);
    /* The leading space is dropped right after BOS only. */
    bt_detok_init(&d, t);
    push_str(&d, 1, out);
    push_str(&d, 15043, out);
    assert_string_equal(out, "Hello");
    push_str(&d, 15043, out);
    assert_string_equal(out, " Hello");
    bt_detok_init(&d, t);
    push_str(&d, 15043, out);
    assert_string_equal(out, " Hello");
    /* Too small an output: stops at a character boundary, never overflows. */
    bt_detok_init(&d, t);
    memset(out, 'x', sizeof(out));
    assert_int_equal(bt_detok_push(&d, 15043, out, 3), 3);
    assert_memory_equal(out, " Hex", 4);
    assert_int_equal(bt_detok_push(&d, 0xE2 + 3, out, 1), 0);
    assert_int_equal(bt_detok_push(&d, 0x96 + 3, out, 1), 0);
    assert_int_equal(bt_detok_push(&d, 0x81 + 3, out, 2), 0); /* "▁" needs 3 */
    assert_int_equal(out[0], ' ');
    bt_tokenizer_destroy(t);
}

static const char story[] =
    "Once upon a time, there was a little girl named Lily. She loved to play outside.";
static const int32_t story_ids[] = {1,   403, 407, 261, 378, 432, 383, 286, 261,
                                    376, 298, 315, 421, 395, 317, 426, 338, 401,
                                    396, 267, 337, 410, 408, 419, 292, 411, 426};

/* tok512.bin against ids from a transcription of run.c's encode, and back. */
static void test_llama2c_tok512(void **state)
{
    char path[512], text[512];
    BT_TEST_NEED_SHARED("models/tok512.bin", path);
    bt_tokenizer_t *t = NULL;
    assert_int_equal(bt_tokenizer_from_llama2c(path, 512, &t), BT_OK);
    assert_int_equal(bt_tokenizer_n_vocab(t), 512);
    assert_int_equal(bt_tokenizer_bos(t), 1);
    int n_story = (int)(sizeof(story_ids) / sizeof(story_ids[0]));
    assert_ids(t, story, 1, 0, story_ids, n_story);
    assert_ids(t, "Hello", 1, 0, (const int32_t[]){1, 346, 306, 414}, 4);
    /* "☕" is not in this vocabulary: byte fallback at id byte + 3. */
    assert_ids(t, "caf\xC3\xA9 \xE2\x98\x95 42!", 1, 0,
               (const int32_t[]){1, 280, 412, 431, 485, 410, 229, 155, 152, 410, 484, 479, 443},
               13);
    size_t len = detok_all(t, story_ids + 1, n_story - 1, 1, text, sizeof(text));
    assert_int_equal(len, strlen(story));
    assert_memory_equal(text, story, len);
    bt_tokenizer_destroy(t);
}

/* The 200 greedy tokens of stories260K decode to the text llama2.c's run.c printed. */
static void test_llama2c_golden_text(void **state)
{
    char tok[512], golden[512], expect[512];
    BT_TEST_NEED_SHARED("models/tok512.bin", tok);
    BT_TEST_NEED_SHARED("models/stories260K_golden_greedy_bos.json", golden);
    BT_TEST_NEED_SHARED("models/stories260K_expected_t0_n200.txt", expect);
    char *json = bt_test_read_file(golden, NULL), *want = bt_test_read_file(expect, NULL);
    assert_non_null(json);
    assert_non_null(want);
    int32_t ids[256];
    int n = 0;
    char *p = strstr(json, "\"next_token_ids\"");
    assert_non_null(p);
    p = strchr(p, '[') + 1;
    while (*p != ']' && n < 256) {
        ids[n++] = (int32_t)strtol(p, &p, 10);
        p += strspn(p, ", \n");
    }
    assert_int_equal(n, 200);
    bt_tokenizer_t *t = NULL;
    assert_int_equal(bt_tokenizer_from_llama2c(tok, 512, &t), BT_OK);
    char text[4096];
    size_t len = detok_all(t, ids, n, 1, text, sizeof(text));
    assert_int_equal(len, strlen(want));
    assert_memory_equal(text, want, len);
    bt_tokenizer_destroy(t);
    free(json);
    free(want);
}

/* Writes a llama2.c tokenizer: max_len, then (score, len, bytes) per token, then extra. */
static const char *write_l2c(char *path, size_t cap, int32_t max_len, const char *const *toks,
                             const int32_t *lens, int n, const char *extra, size_t n_extra)
{
    bt_test_tmp_path("tok", path, cap);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    fwrite(&max_len, 4, 1, f);
    for (int i = 0; i < n; i++) {
        float score = (float)-i;
        int32_t len = lens ? lens[i] : (int32_t)strlen(toks[i]);
        fwrite(&score, 4, 1, f);
        fwrite(&len, 4, 1, f);
        fwrite(toks[i], 1, strlen(toks[i]), f);
    }
    fwrite(extra, 1, n_extra, f);
    fclose(f);
    return path;
}

static void test_llama2c_malformed(void **state)
{
    static const char *const toks[] = {"<unk>", "\n<s>\n", "\n</s>\n", "a", "b", "ab"};
    char path[512];
    bt_tokenizer_t *t = NULL;
    write_l2c(path, sizeof(path), 8, toks, NULL, 6, "", 0);
    assert_int_equal(bt_tokenizer_from_llama2c(path, 6, &t), BT_OK);
    assert_ids(t, "ab", 1, 0, (const int32_t[]){1, 5}, 2);
    bt_tokenizer_destroy(t);
    t = NULL;
    /* Vocabulary size disagreeing with the file, either way. */
    assert_int_equal(bt_tokenizer_from_llama2c(path, 5, &t), BT_ERR_FORMAT);
    assert_int_equal(bt_tokenizer_from_llama2c(path, 7, &t), BT_ERR_FORMAT);
    assert_int_equal(bt_tokenizer_from_llama2c(path, 2, &t), BT_ERR_INVAL);
    remove(path);
    /* A token longer than max_token_length, a negative length, a length past the end. */
    write_l2c(path, sizeof(path), 1, toks, NULL, 6, "", 0);
    assert_int_equal(bt_tokenizer_from_llama2c(path, 6, &t), BT_ERR_FORMAT);
    remove(path);
    write_l2c(path, sizeof(path), 8, toks, (const int32_t[]){5, 5, 6, -1, 1, 2}, 6, "", 0);
    assert_int_equal(bt_tokenizer_from_llama2c(path, 6, &t), BT_ERR_FORMAT);
    remove(path);
    write_l2c(path, sizeof(path), 8, toks, (const int32_t[]){5, 5, 6, 1, 1, 8}, 6, "", 0);
    assert_int_equal(bt_tokenizer_from_llama2c(path, 6, &t), BT_ERR_FORMAT);
    remove(path);
    /* max_token_length of 0, a truncated header, a missing file. */
    write_l2c(path, sizeof(path), 0, toks, NULL, 6, "", 0);
    assert_int_equal(bt_tokenizer_from_llama2c(path, 6, &t), BT_ERR_FORMAT);
    remove(path);
    write_l2c(path, sizeof(path), 8, toks, NULL, 0, "", 0);
    assert_int_equal(bt_tokenizer_from_llama2c(path, 6, &t), BT_ERR_FORMAT);
    remove(path);
    assert_int_equal(bt_tokenizer_from_llama2c(path, 6, &t), BT_ERR_IO);
    assert_null(t);
}

/* Every allocation of the loaders and of encoding fails once in turn: a clean error, no leak. */
static void test_alloc_faults(void **state)
{
    char path[512];
    BT_TEST_NEED_SHARED("models/tok512.bin", path);
    long n;
    for (n = 1;; n++) {
        bt_tokenizer_t *t = NULL;
        bt_alloc_fail_at(n);
        int rc = bt_tokenizer_from_llama2c(path, 512, &t);
        int fired = bt_alloc_fault_fired();
        bt_alloc_fail_at(0);
        if (!fired) {
            assert_int_equal(rc, BT_OK);
            bt_tokenizer_destroy(t);
            break;
        }
        assert_int_equal(rc, BT_ERR_NOMEM);
        assert_null(t);
    }
    assert_true(n > 3);
    bt_tokenizer_t *t = NULL;
    assert_int_equal(bt_tokenizer_from_llama2c(path, 512, &t), BT_OK);
    for (n = 1;; n++) {
        int32_t ids[64], n_ids = -1;
        bt_alloc_fail_at(n);
        int rc = bt_tokenizer_encode(t, story, strlen(story), 1, 1, ids, 64, &n_ids);
        int fired = bt_alloc_fault_fired();
        bt_alloc_fail_at(0);
        if (!fired) {
            assert_int_equal(rc, BT_OK);
            break;
        }
        assert_int_equal(rc, BT_ERR_NOMEM);
    }
    bt_tokenizer_destroy(t);
}

static uint32_t rnd(uint64_t *x)
{
    *x = *x * 6364136223846793005ull + 1442695040888963407ull;
    return (uint32_t)(*x >> 33);
}

static int valid_utf8(const char *s, size_t n)
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

/* Whether pieces joined give back " " + text. A space may come back as the bytes of "▁": like
 * llama.cpp, an invalid lead byte right before a space swallows its "▁" into one unknown
 * character, which then falls back to byte tokens. */
static int same_text(const char *text, size_t len, const char *joined, size_t n)
{
    size_t j = 1;
    if (n == 0 || joined[0] != ' ') {
        return 0;
    }
    for (size_t i = 0; i < len; i++) {
        if (text[i] == ' ' && n - j >= 3 && memcmp(joined + j, "\xE2\x96\x81", 3) == 0) {
            j += 3;
        } else if (j < n && joined[j] == text[i]) {
            j++;
        } else {
            return 0;
        }
    }
    return j == n;
}

/* Random bytes in, random ids out: no crash, pieces give the input back, the stream is always
 * valid UTF-8 and within bt_detok_max_bytes per token. */
static void test_random_bytes_and_ids(void **state)
{
    char path[512];
    BT_TEST_NEED_SHARED(SPM_VOCAB, path);
    bt_tokenizer_t *t = load_gguf(path);
    static const char alphabet[] = "ab <s>\n\0\xE2\x96\x81\x80\xBF\xC3\xF0\x9F\xFF";
    uint64_t x = 42;
    for (int iter = 0; iter < 2000; iter++) {
        char in[64], joined[256], out[2048];
        int32_t ids[MAX_IDS];
        size_t len = rnd(&x) % sizeof(in), n_joined = 0, plen;
        for (size_t i = 0; i < len; i++) {
            in[i] = alphabet[rnd(&x) % (sizeof(alphabet) - 1)];
        }
        int special = (int)(rnd(&x) & 1);
        int n = encode(t, in, len, 0, special, ids);
        for (int i = 0; i < n; i++) {
            const char *p = bt_tokenizer_piece(t, ids[i], &plen);
            memcpy(joined + n_joined, p, plen);
            n_joined += plen;
        }
        if (!special && !memmem(in, len, "\xE2\x96\x81", 3) && len > 0) {
            assert_true(same_text(in, len, joined, n_joined));
        }
        for (int i = 0; i < n; i++) {
            ids[i] = (int32_t)(rnd(&x) % 32100) - 50; /* some out of range */
        }
        size_t n_out = detok_all(t, ids, n, (int)(rnd(&x) & 1), out, sizeof(out));
        assert_true(valid_utf8(out, n_out));
    }
    bt_tokenizer_destroy(t);
}

/* tok512.bin with random bytes changed: loads or says BT_ERR_FORMAT, never more. */
static void test_llama2c_corrupted(void **state)
{
    char path[512], tmp[512];
    BT_TEST_NEED_SHARED("models/tok512.bin", path);
    size_t size;
    char *orig = bt_test_read_file(path, &size);
    assert_non_null(orig);
    uint64_t x = 7;
    int n_ok = 0;
    for (int iter = 0; iter < 300; iter++) {
        char *d = malloc(size);
        memcpy(d, orig, size);
        for (int k = 0; k < 3; k++) {
            /* Mostly the header and length fields near the start, sometimes anywhere. */
            size_t at = rnd(&x) % (k == 0 ? 64 : size);
            d[at] = (char)rnd(&x);
        }
        size_t n = iter % 10 == 0 ? rnd(&x) % size : size; /* and sometimes truncated */
        bt_test_tmp_path("tok512", tmp, sizeof(tmp));
        FILE *f = fopen(tmp, "wb");
        assert_non_null(f);
        fwrite(d, 1, n, f);
        fclose(f);
        bt_tokenizer_t *t = NULL;
        int rc = bt_tokenizer_from_llama2c(tmp, 512, &t);
        assert_true(rc == BT_OK || rc == BT_ERR_FORMAT);
        if (rc == BT_OK) {
            int32_t ids[MAX_IDS];
            encode(t, story, strlen(story), 1, 1, ids);
            bt_tokenizer_destroy(t);
            n_ok++;
        }
        remove(tmp);
        free(d);
    }
    assert_true(n_ok > 0);
    free(orig);
}

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* A 10 KB prompt: well under 10 ms in an optimised build (loose bound here for sanitizers). */
static void test_encode_speed(void **state)
{
    char path[512];
    BT_TEST_NEED_SHARED(SPM_VOCAB, path);
    bt_tokenizer_t *t = load_gguf(path);
    static const char para[] = "The quick brown fox jumps over the lazy dog; \xC3\xA9t\xC3\xA9 "
                               "\xE2\x98\x95 caf\xC3\xA9, 12345 tokens per second!\n";
    enum { LEN = 10240 };
    char *text = malloc(LEN);
    int32_t *ids = malloc(LEN * sizeof(int32_t)), n_ids = 0;
    for (size_t i = 0; i < LEN; i++) {
        text[i] = para[i % (sizeof(para) - 1)];
    }
    double best = 1e9;
    for (int rep = 0; rep < 5; rep++) {
        double t0 = now_ms();
        assert_int_equal(bt_tokenizer_encode(t, text, LEN, 1, 1, ids, LEN, &n_ids), BT_OK);
        double dt = now_ms() - t0;
        best = dt < best ? dt : best;
    }
    fprintf(stderr, "spm: encoded %d bytes into %d ids in %.3f ms\n", LEN, n_ids, best);
    assert_true(best < 100.0);
    free(ids);
    free(text);
    bt_tokenizer_destroy(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_spm_llama_cpp_cases),
        cmocka_unit_test(test_spm_round_trip),
        cmocka_unit_test(test_spm_matches_llama2c_format),
        cmocka_unit_test(test_spm_special_tokens),
        cmocka_unit_test(test_spm_any_bytes),
        cmocka_unit_test(test_detok_streaming),
        cmocka_unit_test(test_llama2c_tok512),
        cmocka_unit_test(test_llama2c_golden_text),
        cmocka_unit_test(test_llama2c_malformed),
        cmocka_unit_test(test_random_bytes_and_ids),
        cmocka_unit_test(test_llama2c_corrupted),
        cmocka_unit_test(test_alloc_faults),
        cmocka_unit_test(test_encode_speed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
