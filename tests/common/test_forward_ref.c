/* SPDX-License-Identifier: MIT */
// ctest-labels: integration
/*
 * test_forward_ref.c - holds the engine's logits to an independent float64 reference.
 *
 * The judge is tests/ref/llama_ref.py, a numpy forward pass with its own GGUF and llama2.c
 * readers that shares nothing with the engine. For synthetic models generated here (F32 with and
 * without grouped-query attention, tied and untied output, and F16, BF16, Q8_0 weights) every
 * sequence is run through the engine alone and inside mixed batches (prefills of other lengths
 * and decode steps of other sequences in the same forward), and then:
 *   - each logits row must match the reference within the weight type's bound, and
 *   - the engine's alone and batched rows must be bit-identical (the determinism contract),
 *     also when the batch asks for only some rows' logits (BT_LOGITS_LAST and _NONE mixed in).
 * stories260K is checked against the golden JSON in ../shared without Python at all.
 *
 * Error measure (one number per logits row; the worst and the median row are reported):
 * rel = max_i |e_i - r_i| / max_i |r_i|, the largest deviation relative to the row's largest
 * logit. A per-element relative error would blow up on logits near zero, which carry no
 * information about whether the forward pass is right; normalizing by the row's scale does not.
 *
 * Tests needing the reference are skipped when no Python 3 with numpy is found: the
 * interpreter is BATON_PYTHON if set, else the first of /usr/bin/python3, python3, python that
 * can import numpy.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/engine.h"
#include "common/kvcache.h"
#include "common/model.h"
#include "common/modelgen.h"
#include "../support/testutil.h" /* relative: works whatever the include path */

#define REF_SCRIPT BATON_SOURCE_DIR "/tests/ref/llama_ref.py"

/* ------------------------------------------------------------------------------------------ */
/* The reference, run as a child process */

static const char *find_python(void)
{
    static char found[512];
    static int searched;
    if (searched)
        return found[0] ? found : NULL;
    searched = 1;
    const char *cands[] = {getenv("BATON_PYTHON"), "/usr/bin/python3", "python3", "python"};
    for (size_t i = 0; i < sizeof cands / sizeof cands[0]; i++) {
        if (!cands[i] || !cands[i][0])
            continue;
        char cmd[700];
        int n = snprintf(cmd, sizeof cmd, "'%s' -c 'import numpy' >/dev/null 2>&1", cands[i]);
        if (n > 0 && (size_t)n < sizeof cmd && system(cmd) == 0) {
            snprintf(found, sizeof found, "%s", cands[i]);
            return found;
        }
    }
    fprintf(stderr, "SKIP: no Python 3 with numpy found (tried $BATON_PYTHON, /usr/bin/python3, "
                    "python3, python); install python3-numpy to run the reference checks\n");
    return NULL;
}

#define NEED_PYTHON(py)                                                                            \
    do {                                                                                           \
        (py) = find_python();                                                                      \
        if (!(py))                                                                                 \
            skip();                                                                                \
    } while (0)

/* Reference logits of every position of every sequence: (sum of lens, n_vocab) floats. */
static float *ref_logits(const char *py, const char *model, const char *extra, int n_seqs,
                         int32_t *const *toks, const int32_t *lens, int32_t n_vocab)
{
    char tok_path[512], out_path[512], cmd[2048];
    bt_test_tmp_path("ref_tokens", tok_path, sizeof tok_path);
    bt_test_tmp_path("ref_logits", out_path, sizeof out_path);
    FILE *f = fopen(tok_path, "w");
    assert_non_null(f);
    size_t total = 0;
    for (int s = 0; s < n_seqs; s++) {
        for (int32_t i = 0; i < lens[s]; i++)
            fprintf(f, "%s%d", i ? "," : "", toks[s][i]);
        fputc('\n', f);
        total += (size_t)lens[s];
    }
    assert_int_equal(fclose(f), 0);
    int n = snprintf(cmd, sizeof cmd, "'%s' '%s' --model '%s' --tokens-file '%s' --out '%s' %s", py,
                     REF_SCRIPT, model, tok_path, out_path, extra);
    assert_true(n > 0 && (size_t)n < sizeof cmd);
    int rc = system(cmd);
    if (rc != 0)
        fprintf(stderr, "reference failed (%d): %s\n", rc, cmd);
    assert_int_equal(rc, 0);
    size_t len = 0;
    float *out = (float *)bt_test_read_file(out_path, &len);
    assert_non_null(out);
    assert_int_equal(len, total * (size_t)n_vocab * sizeof(float));
    unlink(tok_path);
    unlink(out_path);
    return out;
}

/* Largest deviation of a row relative to the row's largest reference magnitude. */
static double row_rel_err(const float *got, const float *want, int32_t n)
{
    double dmax = 0, wmax = 0;
    for (int32_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - (double)want[i]);
        if (!(d <= dmax)) /* also catches NaN */
            dmax = d;
        if (fabs(want[i]) > wmax)
            wmax = fabs(want[i]);
    }
    return dmax / (wmax > 1e-30 ? wmax : 1e-30);
}

/* ------------------------------------------------------------------------------------------ */
/* Driving the engine */

typedef struct {
    int32_t *tokens;  /* (n_total) prompt then the tokens fed by decode steps */
    int32_t n_prompt; /* prefilled in one forward */
    int32_t n_total;
    int32_t chunk;  /* if > 0, the prompt is prefilled in chunks of this many tokens */
    int32_t start;  /* batch step at which the sequence joins a mixed batch */
    float *alone;   /* (n_total, n_vocab) engine logits, sequence run alone */
    float *batched; /* (n_total, n_vocab) engine logits, sequence run in mixed batches */
    float *sparse;  /* (n_total, n_vocab) the same, when only some rows' logits are asked for */
    uint8_t *have;  /* (n_total) which rows of sparse were returned */
    bt_kv_seq_t kv;
    int32_t done; /* tokens fed so far in the batched run */
} seq_run_t;

typedef struct {
    bt_model_t *model;
    bt_engine_t *engine;
    int32_t n_vocab;
} rig_t;

static void rig_open(rig_t *r, const char *path, const char *tokenizer, bt_type_t kv_type)
{
    bt_model_params_t mp = {.path = path, .tokenizer_path = tokenizer};
    assert_int_equal(bt_model_load(&mp, &r->model), BT_OK);
    bt_engine_params_t ep = {.max_batch_tokens = 512, .max_seqs = 16, .kv_type = kv_type};
    assert_int_equal(bt_engine_create(r->model, &ep, &r->engine), BT_OK);
    r->n_vocab = r->model->hp.n_vocab;
}

static void rig_close(rig_t *r)
{
    bt_engine_destroy(r->engine);
    bt_model_destroy(r->model);
}

/* The next span of a sequence: the whole prompt (or its next chunk), else one decode token. */
static int32_t next_span(const seq_run_t *s)
{
    if (s->done < s->n_prompt) {
        int32_t left = s->n_prompt - s->done;
        return s->chunk > 0 && s->chunk < left ? s->chunk : left;
    }
    return 1;
}

/* Runs one sequence by itself: prefill (in chunks if asked), then one decode step per token. */
static void run_alone(rig_t *r, seq_run_t *s)
{
    bt_kv_pool_t *pool = bt_engine_kv_pool(r->engine);
    bt_kv_seq_t kv;
    assert_int_equal(bt_kv_seq_init(&kv, pool, s->n_total), BT_OK);
    s->alone = malloc((size_t)s->n_total * r->n_vocab * sizeof(float));
    assert_non_null(s->alone);
    for (int32_t done = 0; done < s->n_total;) {
        seq_run_t tmp = *s;
        tmp.done = done;
        bt_batch_seq_t b = {.kv = &kv,
                            .tokens = s->tokens + done,
                            .n_tokens = next_span(&tmp),
                            .logits = BT_LOGITS_ALL};
        assert_int_equal(bt_engine_forward(r->engine, &b, 1, s->alone + (size_t)done * r->n_vocab),
                         BT_OK);
        done += b.n_tokens;
        assert_int_equal(kv.n_tokens, done);
    }
    bt_kv_seq_fini(&kv, pool);
}

/* Which logits a span asks for in the sparse run: prefill chunks only their last row, decode
 * steps alternately all (one row) or none. */
static int32_t sparse_mode(const seq_run_t *s, int t)
{
    if (s->done < s->n_prompt)
        return BT_LOGITS_LAST;
    return (t + s->done) % 2 ? BT_LOGITS_ALL : BT_LOGITS_NONE;
}

/*
 * Runs all sequences together: at step t every sequence with start <= t that is not finished
 * contributes its next span, so one forward mixes prompts of different lengths with decode
 * steps. The order of sequences inside the batch rotates with t (backwards in the sparse run),
 * so each one also moves around inside the batch. sparse = 0 asks for every row's logits into
 * s->batched; sparse = 1 asks as sparse_mode says, into s->sparse and s->have.
 */
static void run_batched(rig_t *r, seq_run_t *seqs, int n, int sparse)
{
    bt_kv_pool_t *pool = bt_engine_kv_pool(r->engine);
    bt_batch_seq_t b[16];
    seq_run_t *who[16];
    float *logits = malloc((size_t)512 * r->n_vocab * sizeof(float));
    assert_non_null(logits);
    assert_true(n <= 16);
    for (int i = 0; i < n; i++) {
        seq_run_t *s = &seqs[i];
        assert_int_equal(bt_kv_seq_init(&s->kv, pool, s->n_total), BT_OK);
        s->done = 0;
        float **dst = sparse ? &s->sparse : &s->batched;
        *dst = malloc((size_t)s->n_total * r->n_vocab * sizeof(float));
        assert_non_null(*dst);
        if (sparse) {
            s->have = calloc((size_t)s->n_total, 1);
            assert_non_null(s->have);
        }
    }
    for (int t = 0, left = 1; left; t++) {
        int nb = 0;
        left = 0;
        for (int j = 0; j < n; j++) {
            seq_run_t *s = &seqs[sparse ? (n - 1 - j + n - t % n) % n : (j + t) % n];
            left |= s->done < s->n_total;
            if (s->start > t || s->done >= s->n_total)
                continue;
            b[nb] = (bt_batch_seq_t){.kv = &s->kv,
                                     .tokens = s->tokens + s->done,
                                     .n_tokens = next_span(s),
                                     .logits = sparse ? sparse_mode(s, t) : BT_LOGITS_ALL};
            who[nb++] = s;
        }
        if (nb == 0)
            continue;
        assert_int_equal(bt_engine_forward(r->engine, b, nb, logits), BT_OK);
        const float *row = logits;
        for (int k = 0; k < nb; k++) {
            seq_run_t *s = who[k];
            int32_t first = b[k].logits == BT_LOGITS_ALL    ? s->done
                            : b[k].logits == BT_LOGITS_LAST ? s->done + b[k].n_tokens - 1
                                                            : s->done + b[k].n_tokens;
            int32_t n_rows = s->done + b[k].n_tokens - first;
            float *dst = sparse ? s->sparse : s->batched;
            memcpy(dst + (size_t)first * r->n_vocab, row,
                   (size_t)n_rows * r->n_vocab * sizeof(float));
            if (sparse)
                memset(s->have + first, 1, (size_t)n_rows);
            row += (size_t)n_rows * r->n_vocab;
            s->done += b[k].n_tokens;
            assert_int_equal(s->kv.n_tokens, s->done);
        }
    }
    for (int i = 0; i < n; i++)
        bt_kv_seq_fini(&seqs[i].kv, pool);
    free(logits);
}

/* ------------------------------------------------------------------------------------------ */
/* Synthetic-model cases */

typedef struct {
    const char *label;
    bt_type_t type;     /* weight type */
    int32_t n_heads;    /* 0: the preset's */
    int32_t n_kv_heads; /* 0: as many as heads */
    int tied;
    float rope_theta;     /* 0: the preset's */
    bt_type_t kv_type;    /* engine KV cache type */
    double bound;         /* max row relative error allowed against the reference */
    double median_act_q8; /* if > 0: median row error allowed against the reference that
                           * rounds activations entering Q8_0 matrices (llama_ref.py --act-q8) */
} synth_case_t;

/* Fills seqs with a fixed mix: lengths, decode steps and start steps chosen so that batches
 * combine prompts of different lengths, decode steps, and a chunked prefill. */
static int make_seqs(seq_run_t *seqs, int32_t n_vocab, uint32_t seed)
{
    static const struct {
        int32_t prompt, decode, chunk, start;
    } mix[] = {
        {29, 6, 0, 0}, {37, 5, 0, 0}, {5, 9, 0, 1}, {23, 4, 0, 2}, {33, 4, 12, 1}, {1, 7, 0, 3},
    };
    int n = (int)(sizeof mix / sizeof mix[0]);
    uint32_t x = seed * 2654435761u + 12345u;
    for (int i = 0; i < n; i++) {
        seq_run_t *s = &seqs[i];
        memset(s, 0, sizeof *s);
        s->n_prompt = mix[i].prompt;
        s->n_total = mix[i].prompt + mix[i].decode;
        s->chunk = mix[i].chunk;
        s->start = mix[i].start;
        s->tokens = malloc((size_t)s->n_total * sizeof(int32_t));
        assert_non_null(s->tokens);
        for (int32_t k = 0; k < s->n_total; k++) {
            x ^= x << 13, x ^= x >> 17, x ^= x << 5; /* xorshift32 */
            s->tokens[k] = (int32_t)(x % (uint32_t)n_vocab);
        }
    }
    return n;
}

static void free_seqs(seq_run_t *seqs, int n)
{
    for (int i = 0; i < n; i++) {
        free(seqs[i].tokens);
        free(seqs[i].alone);
        free(seqs[i].batched);
        free(seqs[i].sparse);
        free(seqs[i].have);
    }
}

static void gen_model(const synth_case_t *c, char *path, size_t cap)
{
    bt_modelgen_params_t p;
    assert_int_equal(bt_modelgen_preset("tiny", &p), BT_OK);
    p.type = c->type;
    if (c->n_heads)
        p.n_heads = c->n_heads;
    p.n_kv_heads = c->n_kv_heads ? c->n_kv_heads : p.n_heads;
    p.tied = c->tied;
    if (c->rope_theta > 0)
        p.rope_theta = c->rope_theta;
    p.seed = 1234;
    bt_test_tmp_path("synth.gguf", path, cap);
    assert_int_equal(bt_modelgen_write(&p, path), BT_OK);
}

typedef struct {
    double max;    /* worst row */
    double median; /* over all rows */
} row_errs_t;

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Row errors of the engine's alone rows against reference rows; also checks that the batched
 * rows are bit-identical to the alone rows. */
static row_errs_t compare_case(const synth_case_t *c, const char *what, const seq_run_t *seqs,
                               int n, const float *ref, int32_t n_vocab)
{
    int n_rows = 0, worst_seq = -1, worst_pos = -1;
    for (int i = 0; i < n; i++)
        n_rows += seqs[i].n_total;
    double *errs = malloc((size_t)n_rows * sizeof(double));
    assert_non_null(errs);
    row_errs_t out = {0, 0};
    size_t row = 0;
    for (int i = 0; i < n; i++) {
        const seq_run_t *s = &seqs[i];
        for (int32_t p = 0; p < s->n_total; p++, row++) {
            const float *alone = s->alone + (size_t)p * n_vocab;
            double e = row_rel_err(alone, ref + row * n_vocab, n_vocab);
            errs[row] = e;
            if (!(e <= out.max))
                out.max = e, worst_seq = i, worst_pos = p;
            size_t bytes = (size_t)n_vocab * sizeof(float);
            if (memcmp(alone, s->batched + (size_t)p * n_vocab, bytes) ||
                (s->have[p] && memcmp(alone, s->sparse + (size_t)p * n_vocab, bytes))) {
                fprintf(stderr, "%s: seq %d position %d: batched logits differ from alone\n",
                        c->label, i, p);
                fail();
            }
        }
    }
    qsort(errs, (size_t)n_rows, sizeof(double), cmp_double);
    out.median = errs[n_rows / 2];
    free(errs);
    printf("%s, %s: row relative error max %.3e (seq %d, position %d), median %.3e, %d rows\n",
           c->label, what, out.max, worst_seq, worst_pos, out.median, n_rows);
    return out;
}

static void check_case(const synth_case_t *c)
{
    const char *py;
    NEED_PYTHON(py);
    char path[512];
    gen_model(c, path, sizeof path);
    rig_t r;
    rig_open(&r, path, NULL, c->kv_type);
    assert_int_equal(r.model->hp.n_kv_heads, c->n_kv_heads ? c->n_kv_heads : r.model->hp.n_heads);
    assert_int_equal(r.model->hp.tied_output, c->tied);
    seq_run_t seqs[8];
    int n = make_seqs(seqs, r.n_vocab, (uint32_t)c->type + 7u * (uint32_t)c->tied);
    for (int i = 0; i < n; i++)
        run_alone(&r, &seqs[i]);
    run_batched(&r, seqs, n, 0);
    run_batched(&r, seqs, n, 1);

    int32_t *toks[8], lens[8];
    for (int i = 0; i < n; i++)
        toks[i] = seqs[i].tokens, lens[i] = seqs[i].n_total;
    float *ref = ref_logits(py, path, "", n, toks, lens, r.n_vocab);
    row_errs_t err = compare_case(c, "exact reference", seqs, n, ref, r.n_vocab);
    free(ref);
    assert_true(err.max <= c->bound);
    if (c->median_act_q8 > 0) {
        ref = ref_logits(py, path, "--act-q8", n, toks, lens, r.n_vocab);
        err = compare_case(c, "reference with q8 activations", seqs, n, ref, r.n_vocab);
        free(ref);
        assert_true(err.median <= c->median_act_q8);
        assert_true(err.max <= c->bound);
    }

    free_seqs(seqs, n);
    rig_close(&r);
    unlink(path);
}

/*
 * Bounds, and what was measured (tiny preset: dim 64, 2 layers, vocab 512; seed 1234; CPU
 * backend with AVX-512; 163 rows per case; worst row, then the median row):
 *   F32 weights, all head layouts      6.5e-7 .. 8.8e-7, median 3.4e-7   bound 1e-4 (contract)
 *   F16 weights                        8.7e-7,           median 3.2e-7   bound 1e-4
 *   BF16 weights                       9.5e-7,           median 3.3e-7   bound 1e-4
 *   Q8_0 weights, exact reference      4.5e-2,           median 2.0e-2   bound 1e-1
 *   Q8_0 weights, --act-q8 reference   3.4e-7,           median 1.4e-7   median bound 1e-5
 *   F32 weights with an F16 KV cache   1.1e-3,           median 3.9e-4   bound 5e-3
 * The reference dequantizes F16, BF16 and Q8_0 weights exactly, and the CPU backend keeps
 * activations in f32, so F16 and BF16 are as close as F32. Q8_0 is far from the exact reference
 * because the engine rounds activations to 8 bits before its int8 dot products (as llama.cpp
 * does): each activation moves by up to half a step of 1/127 of its block's largest value,
 * in every one of the 15 matmuls, and this small random model passes such changes on with
 * little damping. Against a reference that rounds activations the same way, the
 * engine is as close as in F32. Only the median is held tight there: an activation sitting on a
 * rounding boundary may round the other way in f32 than in f64, and one such flip moves the
 * later logits of its sequence by about 1% in this small random model (measured by scaling the
 * reference's activations by 1 + 1e-6), so the worst row is held to the exact bound only.
 */
#define CASE(fn, ...)                                                                              \
    static void fn(void **state)                                                                   \
    {                                                                                              \
        (void)state;                                                                               \
        synth_case_t c = {__VA_ARGS__};                                                            \
        check_case(&c);                                                                            \
    }

CASE(test_f32_gqa_untied, .label = "f32 gqa 4/2 untied", .type = BT_TYPE_F32, .n_kv_heads = 2,
     .bound = 1e-4)
CASE(test_f32_mha_tied, .label = "f32 mha 4/4 tied theta 5e5", .type = BT_TYPE_F32, .n_kv_heads = 4,
     .tied = 1, .rope_theta = 500000.0f, .bound = 1e-4)
CASE(test_f32_gqa_group4, .label = "f32 gqa 8/2", .type = BT_TYPE_F32, .n_heads = 8,
     .n_kv_heads = 2, .bound = 1e-4)
CASE(test_f16, .label = "f16 gqa 4/2", .type = BT_TYPE_F16, .n_kv_heads = 2, .bound = 1e-4)
CASE(test_bf16, .label = "bf16 gqa 4/2", .type = BT_TYPE_BF16, .n_kv_heads = 2, .bound = 1e-4)
CASE(test_q8_0, .label = "q8_0 gqa 4/2", .type = BT_TYPE_Q8_0, .n_kv_heads = 2, .bound = 1e-1,
     .median_act_q8 = 1e-5)
CASE(test_f32_kv_f16, .label = "f32 gqa 4/2, f16 kv cache", .type = BT_TYPE_F32, .n_kv_heads = 2,
     .kv_type = BT_TYPE_F16, .bound = 5e-3)

/* ------------------------------------------------------------------------------------------ */
/* stories260K against the golden file (no Python needed) */

typedef struct {
    int32_t ids[256];
    int n_ids;
    float logits[3][512];
    int n_rows, n_cols;
    int bos;
} golden_t;

/* Just enough JSON for the golden file: the two arrays and "bos", found by key. */
static const char *json_key(const char *js, const char *key)
{
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\"", key);
    const char *p = strstr(js, pat);
    if (!p)
        return NULL;
    p = strchr(p + strlen(pat), ':');
    return p ? p + 1 : NULL;
}

static void golden_load(const char *path, golden_t *g)
{
    char *js = bt_test_read_file(path, NULL);
    assert_non_null(js);
    const char *p = json_key(js, "bos");
    g->bos = p ? (int)strtol(p, NULL, 10) : 1;
    p = json_key(js, "next_token_ids");
    assert_non_null(p);
    p = strchr(p, '[');
    assert_non_null(p);
    p++;
    for (g->n_ids = 0; *p && *p != ']';) {
        char *end;
        long v = strtol(p, &end, 10);
        assert_true(end != p && g->n_ids < 256);
        g->ids[g->n_ids++] = (int32_t)v;
        p = end + strspn(end, " \t\r\n,");
    }
    p = json_key(js, "logits_first3_positions");
    assert_non_null(p);
    p = strchr(p, '[');
    assert_non_null(p);
    p++;
    for (g->n_rows = 0; (p = strpbrk(p, "[]")) && *p == '[' && g->n_rows < 3; g->n_rows++) {
        p++;
        int n = 0;
        while (*p && *p != ']') {
            char *end;
            double v = strtod(p, &end);
            assert_true(end != p && n < 512);
            g->logits[g->n_rows][n++] = (float)v;
            p = end + strspn(end, " \t\r\n,");
        }
        assert_true(*p == ']');
        g->n_cols = n;
        p++;
    }
    free(js);
}

/* Greedy decoding from BOS one token per forward, plus one prefill of the whole golden
 * sequence whose per-position argmax must give the same ids. */
static void check_stories(const char *model_rel, const char *tok_rel)
{
    char mpath[512], tpath[512], gpath[512];
    BT_TEST_NEED_SHARED(model_rel, mpath);
    BT_TEST_NEED_SHARED("models/stories260K_golden_greedy_bos.json", gpath);
    if (tok_rel)
        BT_TEST_NEED_SHARED(tok_rel, tpath);
    golden_t *g = calloc(1, sizeof *g);
    assert_non_null(g);
    golden_load(gpath, g);
    assert_int_equal(g->n_ids, 200);
    assert_int_equal(g->n_rows, 3);

    rig_t r;
    rig_open(&r, mpath, tok_rel ? tpath : NULL, BT_TYPE_F32);
    assert_int_equal(r.n_vocab, g->n_cols);
    bt_kv_pool_t *pool = bt_engine_kv_pool(r.engine);
    int32_t n = g->n_ids + 1;
    int32_t *seq = malloc((size_t)n * sizeof(int32_t));
    float *logits = malloc((size_t)n * r.n_vocab * sizeof(float));
    assert_non_null(seq);
    assert_non_null(logits);

    /* Greedy, one token per forward. */
    bt_kv_seq_t kv;
    assert_int_equal(bt_kv_seq_init(&kv, pool, n), BT_OK);
    seq[0] = g->bos;
    double worst = 0;
    int first_bad = -1;
    for (int32_t i = 0; i < g->n_ids; i++) {
        bt_batch_seq_t b = {.kv = &kv, .tokens = &seq[i], .n_tokens = 1, .logits = BT_LOGITS_LAST};
        assert_int_equal(bt_engine_forward(r.engine, &b, 1, logits), BT_OK);
        if (i < g->n_rows) {
            double e = row_rel_err(logits, g->logits[i], r.n_vocab);
            worst = e > worst ? e : worst;
        }
        int32_t best = 0;
        for (int32_t v = 1; v < r.n_vocab; v++)
            best = logits[v] > logits[best] ? v : best;
        seq[i + 1] = best;
        if (best != g->ids[i] && first_bad < 0)
            first_bad = i;
    }
    bt_kv_seq_fini(&kv, pool);
    printf("%s: first 3 positions max row relative error %.3e; greedy %s\n", model_rel, worst,
           first_bad < 0 ? "200/200 match" : "MISMATCH");
    if (first_bad >= 0)
        fprintf(stderr, "%s: greedy step %d gave %d, golden %d\n", model_rel, first_bad,
                seq[first_bad + 1], g->ids[first_bad]);
    assert_true(worst <= 1e-4);
    assert_int_equal(first_bad, -1);

    /* The golden sequence prefilled at once: every position's argmax is the next golden id. */
    seq[0] = g->bos;
    memcpy(seq + 1, g->ids, (size_t)g->n_ids * sizeof(int32_t));
    assert_int_equal(bt_kv_seq_init(&kv, pool, n), BT_OK);
    bt_batch_seq_t b = {.kv = &kv, .tokens = seq, .n_tokens = g->n_ids, .logits = BT_LOGITS_ALL};
    assert_int_equal(bt_engine_forward(r.engine, &b, 1, logits), BT_OK);
    for (int32_t i = 0; i < g->n_ids; i++) {
        const float *row = logits + (size_t)i * r.n_vocab;
        if (i < g->n_rows)
            assert_true(row_rel_err(row, g->logits[i], r.n_vocab) <= 1e-4);
        int32_t best = 0;
        for (int32_t v = 1; v < r.n_vocab; v++)
            best = row[v] > row[best] ? v : best;
        assert_int_equal(best, g->ids[i]);
    }
    bt_kv_seq_fini(&kv, pool);

    free(seq);
    free(logits);
    rig_close(&r);
    free(g);
}

static void test_stories260k_gguf_golden(void **state)
{
    (void)state;
    check_stories("models/stories260K.gguf", NULL);
}

static void test_stories260k_bin_golden(void **state)
{
    (void)state;
    check_stories("models/stories260K.bin", "models/tok512.bin");
}

/* The judge itself must still reproduce the golden file, on both formats. */
static void test_reference_golden(void **state)
{
    (void)state;
    const char *py;
    char gpath[512], mpath[512], cmd[2048];
    BT_TEST_NEED_SHARED("models/stories260K_golden_greedy_bos.json", gpath);
    NEED_PYTHON(py);
    const char *models[] = {"models/stories260K.gguf", "models/stories260K.bin"};
    for (int i = 0; i < 2; i++) {
        BT_TEST_NEED_SHARED(models[i], mpath);
        int n = snprintf(cmd, sizeof cmd, "'%s' '%s' --model '%s' --self-test --check-golden '%s'",
                         py, REF_SCRIPT, mpath, gpath);
        assert_true(n > 0 && (size_t)n < sizeof cmd);
        assert_int_equal(system(cmd), 0);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reference_golden),
        cmocka_unit_test(test_stories260k_gguf_golden),
        cmocka_unit_test(test_stories260k_bin_golden),
        cmocka_unit_test(test_f32_gqa_untied),
        cmocka_unit_test(test_f32_mha_tied),
        cmocka_unit_test(test_f32_gqa_group4),
        cmocka_unit_test(test_f16),
        cmocka_unit_test(test_bf16),
        cmocka_unit_test(test_q8_0),
        cmocka_unit_test(test_f32_kv_f16),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
