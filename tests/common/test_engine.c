/* SPDX-License-Identifier: MIT */
/*
 * test_engine.c - the batched forward pass: batch invariance (a sequence's logits are
 * bit-identical alone, in any batch, at any position, and with its prompt split into chunks),
 * all-or-nothing KV reservation, limits and allocation faults; the per-layer hook (called once
 * per layer, in order, with the layer's K/V final, and changing no result). Logit accuracy against
 * an independent reference is test_forward_ref.c's job.
 */
// ctest-labels: unit
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/alloc.h"
#include "common/engine.h"
#include "common/modelgen.h"

typedef struct {
    char path[512];
    bt_model_t *model;
} fixture_t;

static int setup(void **state)
{
    fixture_t *f = calloc(1, sizeof *f);
    bt_modelgen_params_t p;
    if (bt_modelgen_preset("tiny", &p) != BT_OK)
        return -1;
    p.seed = 3;
    bt_test_tmp_path("engine-tiny.gguf", f->path, sizeof f->path);
    bt_model_params_t mp = {.path = f->path};
    if (bt_modelgen_write(&p, f->path) != BT_OK || bt_model_load(&mp, &f->model) != BT_OK)
        return -1;
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture_t *f = *state;
    bt_model_destroy(f->model);
    remove(f->path);
    free(f);
    return 0;
}

static bt_engine_t *make_engine(const bt_model_t *m, int threads, size_t kv_budget)
{
    bt_engine_params_t ep = {
        .n_threads = threads, .max_batch_tokens = 64, .max_seqs = 8, .kv_budget_bytes = kv_budget};
    bt_engine_t *e = NULL;
    assert_int_equal(bt_engine_create(m, &ep, &e), BT_OK);
    return e;
}

static void make_tokens(int32_t *t, int n, int32_t n_vocab, uint32_t seed)
{
    for (int i = 0; i < n; i++) {
        seed = seed * 1664525u + 1013904223u;
        t[i] = (int32_t)(seed >> 8) % n_vocab;
    }
}

/* Three prompts: a of na tokens, b of 9 and c of 3, from seeds seed, seed + 1, seed + 2. */
static void make_abc(int32_t V, int32_t *a, int na, int32_t *b, int32_t *c, uint32_t seed)
{
    make_tokens(a, na, V, seed);
    make_tokens(b, 9, V, seed + 1);
    make_tokens(c, 3, V, seed + 2);
}

/* Runs prompt A (13 tokens) alone with all logits, then two decode steps; returns the rows. */
static float *run_alone(const bt_model_t *m, int threads, const int32_t *a, int chunk)
{
    int32_t V = m->hp.n_vocab;
    float *out = malloc((size_t)15 * V * sizeof(float));
    bt_engine_t *e = make_engine(m, threads, 0);
    bt_kv_seq_t kv;
    assert_int_equal(bt_kv_seq_init(&kv, bt_engine_kv_pool(e), 64), BT_OK);
    for (int i = 0; i < 13; i += chunk) {
        int n = 13 - i < chunk ? 13 - i : chunk;
        bt_batch_seq_t b = {.kv = &kv, .tokens = a + i, .n_tokens = n, .logits = BT_LOGITS_ALL};
        assert_int_equal(bt_engine_forward(e, &b, 1, out + (size_t)i * V), BT_OK);
    }
    for (int step = 0; step < 2; step++) {
        bt_batch_seq_t b = {
            .kv = &kv, .tokens = a + 13 + step, .n_tokens = 1, .logits = BT_LOGITS_LAST};
        assert_int_equal(bt_engine_forward(e, &b, 1, out + (size_t)(13 + step) * V), BT_OK);
    }
    assert_int_equal(kv.n_tokens, 15);
    bt_kv_seq_fini(&kv, bt_engine_kv_pool(e));
    bt_engine_destroy(e);
    return out;
}

static void test_engine_chunked_prefill_and_threads_are_bit_identical(void **state)
{
    fixture_t *f = *state;
    int32_t a[15];
    make_tokens(a, 15, f->model->hp.n_vocab, 1);
    size_t bytes = (size_t)15 * f->model->hp.n_vocab * sizeof(float);
    float *ref = run_alone(f->model, 1, a, 13);
    float *chunked = run_alone(f->model, 1, a, 5);
    float *threaded = run_alone(f->model, 2, a, 13);
    assert_memory_equal(ref, chunked, bytes);
    assert_memory_equal(ref, threaded, bytes);
    free(ref);
    free(chunked);
    free(threaded);
}

/* The engine's fused ops (q, k and v in one matmul, the residual adds in the projections,
 * gate, up and swiglu together) give the bits of the plain ops (BATON_FUSED_OPS=0), for a
 * prompt and decode steps, on one and two threads. */
static void test_engine_fused_ops_are_bit_identical(void **state)
{
    fixture_t *f = *state;
    int32_t a[15];
    make_tokens(a, 15, f->model->hp.n_vocab, 5);
    size_t bytes = (size_t)15 * f->model->hp.n_vocab * sizeof(float);
    for (int threads = 1; threads <= 2; threads++) {
        float *fused = run_alone(f->model, threads, a, 13);
        setenv("BATON_FUSED_OPS", "0", 1);
        float *plain = run_alone(f->model, threads, a, 13);
        unsetenv("BATON_FUSED_OPS");
        assert_memory_equal(fused, plain, bytes);
        free(fused);
        free(plain);
    }
}

/* bt_engine_forward_argmax (k 1) and bt_engine_forward_topk (k > 1) give, row for row, the
 * argmax or the k best of the logits bt_engine_forward gives for the same batch (and with
 * BT_TOPK_MAX the asked rows' window totals, and the last piece's rows read back): a mixed
 * batch with all, last and no logits rows, more rows than fit the engine's logits buffer at
 * once, then a decode step. */
static void forward_k_matches_logits(const bt_model_t *m, int32_t k)
{
    int32_t V = m->hp.n_vocab, a[40], b[9], c[3];
    make_abc(V, a, 40, b, c, 4);
    float *logits = malloc((size_t)64 * V * sizeof(float));
    int32_t *ids = malloc((size_t)64 * k * sizeof(int32_t)), best[BT_TOPK_MAX];
    float *vals = malloc((size_t)64 * k * sizeof(float)), wvals[BT_TOPK_MAX];
    float *wrow = malloc((size_t)V * sizeof(float));
    float *olog = malloc((size_t)64 * V * sizeof(float));
    bt_engine_t *e1 = make_engine(m, 2, 0), *e2 = make_engine(m, 2, 0);
    bt_kv_seq_t k1[3], k2[3];
    for (int i = 0; i < 3; i++) {
        assert_int_equal(bt_kv_seq_init(&k1[i], bt_engine_kv_pool(e1), 64), BT_OK);
        assert_int_equal(bt_kv_seq_init(&k2[i], bt_engine_kv_pool(e2), 64), BT_OK);
    }
    for (int step = 0; step < 2; step++) {
        bt_batch_seq_t s1[3], s2[3];
        int rows = 0;
        for (int i = 0; i < 3; i++) {
            const int32_t *t = i == 0 ? a : i == 1 ? b : c;
            int n = step ? 1 : i == 0 ? 39 : i == 1 ? 8 : 2;
            int want = step     ? BT_LOGITS_LAST
                       : i == 0 ? BT_LOGITS_ALL
                       : i == 1 ? BT_LOGITS_LAST
                                : BT_LOGITS_NONE;
            s1[i] = (bt_batch_seq_t){
                .kv = &k1[i], .tokens = t + k1[i].n_tokens, .n_tokens = n, .logits = want};
            s2[i] = s1[i];
            s2[i].kv = &k2[i];
            rows += want == BT_LOGITS_ALL ? n : want == BT_LOGITS_LAST ? 1 : 0;
        }
        assert_int_equal(bt_engine_forward(e1, s1, 3, logits), BT_OK);
        if (k == 1) {
            assert_int_equal(bt_engine_forward_argmax(e2, s2, 3, ids), BT_OK);
            for (int r = 0; r < rows; r++)
                assert_int_equal(ids[r], bt_argmax_f32(logits + (size_t)r * V, V));
            continue;
        }
        /* With k = BT_TOPK_MAX, also the window totals of rows that ask (bt_engine_out_t.tau). */
        float tau[64];
        double totals[64];
        for (int r = 0; r < rows; r++)
            tau[r] = r % 3 == 0 ? 0 : r % 3 == 1 ? 1.0f : 0.7f;
        bt_engine_out_t o = {
            .k = k, .logits = olog, .ids = ids, .vals = vals, .tau = tau, .totals = totals};
        if (k == BT_TOPK_MAX) {
            assert_int_equal(bt_engine_forward_out(e2, s2, 3, &o), BT_OK);
            /* More output rows than the logits buffer (8) holds: whole rows instead. */
            assert_int_equal(o.k, rows > 8 ? 0 : k);
            if (o.k == 0)
                assert_memory_equal(olog, logits, (size_t)rows * V * sizeof(float));
        } else
            assert_int_equal(bt_engine_forward_topk(e2, s2, 3, k, ids, vals), BT_OK);
        for (int r = 0; r < rows && o.k; r++) {
            const float *row = logits + (size_t)r * V;
            bt_topk_f32(row, V, k, best, wvals);
            assert_memory_equal(ids + (size_t)r * k, best, (size_t)k * sizeof(int32_t));
            assert_memory_equal(vals + (size_t)r * k, wvals, (size_t)k * sizeof(float));
            if (k == BT_TOPK_MAX && tau[r] > 0) {
                double want = bt_window_total_f32(row, V, tau[r]);
                assert_memory_equal(&totals[r], &want, sizeof want);
            }
        }
        /* The rows still in the logits buffer read back as they were; earlier pieces of a
         * forward with more rows than it holds are gone. */
        int back = 0;
        for (int r = 0; r < rows; r++) {
            int st = bt_engine_logits_row(e2, r, wrow);
            if (st == BT_OK) {
                assert_memory_equal(wrow, logits + (size_t)r * V, (size_t)V * sizeof(float));
                back++;
            } else {
                assert_int_equal(st, BT_ERR_RANGE);
                assert_true(back == 0); /* only the last piece is kept */
            }
        }
        assert_true(back > 0 && (step == 1 ? back == rows : back < rows));
        assert_int_equal(bt_engine_logits_row(e2, rows, wrow), BT_ERR_RANGE);
    }
    for (int i = 0; i < 3; i++) {
        assert_int_equal(k1[i].n_tokens, k2[i].n_tokens);
        bt_kv_seq_fini(&k1[i], bt_engine_kv_pool(e1));
        bt_kv_seq_fini(&k2[i], bt_engine_kv_pool(e2));
    }
    bt_engine_destroy(e1);
    bt_engine_destroy(e2);
    free(logits);
    free(ids);
    free(vals);
    free(wrow);
    free(olog);
}

static void test_engine_forward_argmax_and_topk_match_logits(void **state)
{
    fixture_t *f = *state;
    forward_k_matches_logits(f->model, 1);
    forward_k_matches_logits(f->model, 37);
    forward_k_matches_logits(f->model, BT_TOPK_MAX);
}

/* A k the engine cannot give is refused; through bt_engine_forward_out a k beyond the
 * vocabulary falls back to whole rows, and the output says so. */
static void test_engine_topk_limits(void **state)
{
    fixture_t *f = *state;
    const bt_model_t *m = f->model;
    int32_t V = m->hp.n_vocab, a[4], ids[BT_TOPK_MAX];
    float vals[BT_TOPK_MAX];
    make_tokens(a, 4, V, 9);
    bt_engine_t *e = make_engine(m, 1, 0);
    bt_kv_seq_t kv;
    assert_int_equal(bt_kv_seq_init(&kv, bt_engine_kv_pool(e), 64), BT_OK);
    bt_batch_seq_t b = {.kv = &kv, .tokens = a, .n_tokens = 4, .logits = BT_LOGITS_LAST};
    assert_int_equal(bt_engine_forward_topk(e, &b, 1, 0, ids, vals), BT_ERR_INVAL);
    assert_int_equal(bt_engine_forward_topk(e, &b, 1, BT_TOPK_MAX + 1, ids, vals), BT_ERR_INVAL);
    assert_int_equal(kv.n_tokens, 0);
    bt_engine_out_t o;
    assert_int_equal(bt_engine_out_init(&o, 8, V), BT_OK);
    o.k = V + 1;
    assert_int_equal(bt_engine_forward_out(e, &b, 1, &o), BT_OK);
    assert_int_equal(o.k, 0);
    assert_int_equal(kv.n_tokens, 4);
    /* Candidates with window totals for more output rows than the logits buffer holds: whole
     * rows instead, since a row the candidates cannot decide must be readable afterwards. */
    bt_engine_out_fini(&o);
    assert_int_equal(bt_engine_out_init(&o, 64, V), BT_OK);
    int32_t many[40];
    make_tokens(many, 40, V, 10);
    bt_kv_seq_t kv2;
    assert_int_equal(bt_kv_seq_init(&kv2, bt_engine_kv_pool(e), 64), BT_OK);
    bt_batch_seq_t all = {.kv = &kv2, .tokens = many, .n_tokens = 40, .logits = BT_LOGITS_ALL};
    o.k = BT_TOPK_MAX < V ? BT_TOPK_MAX : V;
    assert_int_equal(bt_engine_forward_out(e, &all, 1, &o), BT_OK);
    assert_int_equal(o.k, 0);
    assert_int_equal(bt_engine_logits_row(e, 0, o.logits), BT_ERR_RANGE);
    bt_kv_seq_fini(&kv2, bt_engine_kv_pool(e));
    bt_engine_out_fini(&o);
    bt_kv_seq_fini(&kv, bt_engine_kv_pool(e));
    bt_engine_destroy(e);
}

static void test_engine_batched_equals_alone(void **state)
{
    fixture_t *f = *state;
    const bt_model_t *m = f->model;
    int32_t V = m->hp.n_vocab, a[15], b[9], c[3];
    make_abc(V, a, 15, b, c, 1);
    float *ref = run_alone(m, 2, a, 13);
    float *out = malloc((size_t)32 * V * sizeof(float));
    bt_engine_t *e = make_engine(m, 2, 0);
    bt_kv_pool_t *pool = bt_engine_kv_pool(e);
    bt_kv_seq_t ka, kb, kc;
    bt_kv_seq_init(&ka, pool, 64);
    bt_kv_seq_init(&kb, pool, 64);
    bt_kv_seq_init(&kc, pool, 64);
    /* Step 1: C and B prefill first; A's prompt sits in the middle of a mixed batch. */
    bt_batch_seq_t s1[3] = {
        {.kv = &kb, .tokens = b, .n_tokens = 8, .logits = BT_LOGITS_LAST},
        {.kv = &ka, .tokens = a, .n_tokens = 13, .logits = BT_LOGITS_ALL},
        {.kv = &kc, .tokens = c, .n_tokens = 2, .logits = BT_LOGITS_NONE},
    };
    assert_int_equal(bt_engine_forward(e, s1, 3, out), BT_OK);
    assert_memory_equal(out + V, ref, (size_t)13 * V * sizeof(float));
    /* Step 2: A decodes last in a batch with B decoding and C prefilling. */
    bt_batch_seq_t s2[3] = {
        {.kv = &kc, .tokens = c + 2, .n_tokens = 1, .logits = BT_LOGITS_ALL},
        {.kv = &kb, .tokens = b + 8, .n_tokens = 1, .logits = BT_LOGITS_LAST},
        {.kv = &ka, .tokens = a + 13, .n_tokens = 1, .logits = BT_LOGITS_LAST},
    };
    assert_int_equal(bt_engine_forward(e, s2, 3, out), BT_OK);
    assert_memory_equal(out + 2 * V, ref + (size_t)13 * V, (size_t)V * sizeof(float));
    /* Step 3: A alone again. */
    bt_batch_seq_t s3 = {.kv = &ka, .tokens = a + 14, .n_tokens = 1, .logits = BT_LOGITS_LAST};
    assert_int_equal(bt_engine_forward(e, &s3, 1, out), BT_OK);
    assert_memory_equal(out, ref + (size_t)14 * V, (size_t)V * sizeof(float));
    bt_kv_seq_fini(&ka, pool);
    bt_kv_seq_fini(&kb, pool);
    bt_kv_seq_fini(&kc, pool);
    assert_int_equal(bt_kv_pool_n_free(pool), bt_kv_pool_n_blocks(pool));
    bt_engine_destroy(e);
    free(out);
    free(ref);
}

/* What the layer hook saw: its calls, and layer l's first block of one sequence when l + 1 was
 * reported done. */
typedef struct {
    bt_engine_t *e;
    const bt_kv_seq_t *kv;
    int32_t calls[256];
    int n_calls;
    unsigned char *snap; /* (n_layers, block_bytes) */
} hook_rec_t;

static const unsigned char *layer_block(bt_engine_t *e, int32_t l, int32_t b)
{
    bt_kv_pool_t *pool = bt_engine_kv_pool(e);
    size_t bb = bt_kv_pool_block_bytes(pool);
    return (const unsigned char *)bt_kv_pool_base(pool) +
           ((size_t)l * (size_t)bt_kv_pool_n_blocks(pool) + (size_t)b) * bb;
}

static void hook_record(void *arg, int32_t n_layers_done)
{
    hook_rec_t *h = arg;
    assert_true(h->n_calls < 256);
    h->calls[h->n_calls++] = n_layers_done;
    size_t bb = bt_kv_pool_block_bytes(bt_engine_kv_pool(h->e));
    memcpy(h->snap + (size_t)(n_layers_done - 1) * bb,
           layer_block(h->e, n_layers_done - 1, h->kv->blocks[0]), bb);
}

static void test_engine_layer_hook_reports_each_layer_and_changes_nothing(void **state)
{
    fixture_t *f = *state;
    const bt_model_t *m = f->model;
    int32_t V = m->hp.n_vocab, L = m->hp.n_layers, a[15];
    make_tokens(a, 15, V, 1);
    float *ref = run_alone(m, 2, a, 13);
    float *out = malloc((size_t)15 * V * sizeof(float));
    bt_engine_t *e = make_engine(m, 2, 0);
    bt_kv_pool_t *pool = bt_engine_kv_pool(e);
    size_t bb = bt_kv_pool_block_bytes(pool);
    bt_kv_seq_t kv;
    assert_int_equal(bt_kv_seq_init(&kv, pool, 64), BT_OK);
    hook_rec_t h = {.e = e, .kv = &kv, .snap = malloc((size_t)L * bb)};
    assert_true(3 * L <= 256);
    bt_engine_set_layer_hook(e, hook_record, &h);

    /* The prompt: one call per layer, in order, each after that layer's K/V are final. */
    bt_batch_seq_t b = {.kv = &kv, .tokens = a, .n_tokens = 13, .logits = BT_LOGITS_ALL};
    assert_int_equal(bt_engine_forward(e, &b, 1, out), BT_OK);
    assert_int_equal(h.n_calls, L);
    for (int32_t l = 0; l < L; l++) {
        assert_int_equal(h.calls[l], l + 1);
        assert_memory_equal(h.snap + (size_t)l * bb, layer_block(e, l, kv.blocks[0]), bb);
    }
    /* Two decode steps: L calls each; logits bit-identical to the run without a hook. */
    for (int step = 0; step < 2; step++) {
        bt_batch_seq_t d = {
            .kv = &kv, .tokens = a + 13 + step, .n_tokens = 1, .logits = BT_LOGITS_LAST};
        assert_int_equal(bt_engine_forward(e, &d, 1, out + (size_t)(13 + step) * V), BT_OK);
    }
    assert_int_equal(h.n_calls, 3 * L);
    for (int i = 0; i < 3 * L; i++)
        assert_int_equal(h.calls[i], i % L + 1);
    assert_memory_equal(out, ref, (size_t)15 * V * sizeof(float));

    /* Removed: no more calls. */
    bt_engine_set_layer_hook(e, NULL, NULL);
    bt_batch_seq_t d = {.kv = &kv, .tokens = a, .n_tokens = 1, .logits = BT_LOGITS_NONE};
    assert_int_equal(bt_engine_forward(e, &d, 1, out), BT_OK);
    assert_int_equal(h.n_calls, 3 * L);
    bt_kv_seq_fini(&kv, pool);
    bt_engine_destroy(e);
    free(h.snap);
    free(out);
    free(ref);
}

static void test_engine_reservation_is_all_or_nothing(void **state)
{
    fixture_t *f = *state;
    const bt_model_t *m = f->model;
    int32_t t[40];
    make_tokens(t, 40, m->hp.n_vocab, 9);
    /* Room for 3 blocks of 16 tokens. */
    bt_engine_t *e = make_engine(m, 1, 3 * 16 * bt_model_kv_bytes_per_token(&m->hp, BT_TYPE_F32));
    bt_kv_pool_t *pool = bt_engine_kv_pool(e);
    assert_int_equal(bt_kv_pool_n_blocks(pool), 3);
    bt_kv_seq_t k1, k2;
    bt_kv_seq_init(&k1, pool, 64);
    bt_kv_seq_init(&k2, pool, 64);
    float *out = malloc((size_t)2 * m->hp.n_vocab * sizeof(float));
    bt_batch_seq_t s[2] = {
        {.kv = &k1, .tokens = t, .n_tokens = 20, .logits = BT_LOGITS_LAST}, /* 2 blocks */
        {.kv = &k2, .tokens = t, .n_tokens = 20, .logits = BT_LOGITS_LAST}, /* 2 more */
    };
    assert_int_equal(bt_engine_forward(e, s, 2, out), BT_ERR_NOSPACE);
    assert_int_equal(k1.n_blocks, 0);
    assert_int_equal(k1.n_tokens, 0);
    assert_int_equal(bt_kv_pool_n_free(pool), 3);
    assert_int_equal(bt_engine_forward(e, s, 1, out), BT_OK);
    assert_int_equal(k1.n_tokens, 20);
    bt_kv_seq_fini(&k1, pool);
    bt_kv_seq_fini(&k2, pool);
    bt_engine_destroy(e);
    free(out);
}

static void test_engine_rejects_out_of_range_batches(void **state)
{
    fixture_t *f = *state;
    const bt_model_t *m = f->model;
    bt_engine_t *e = make_engine(m, 1, 0);
    bt_kv_pool_t *pool = bt_engine_kv_pool(e);
    bt_kv_seq_t kv;
    bt_kv_seq_init(&kv, pool, 8);
    int32_t t[80] = {0}, bad = m->hp.n_vocab, neg = -1;
    float *out = malloc((size_t)m->hp.n_vocab * sizeof(float));
    bt_batch_seq_t b = {.kv = &kv, .tokens = &bad, .n_tokens = 1, .logits = BT_LOGITS_LAST};
    assert_int_equal(bt_engine_forward(e, &b, 1, out), BT_ERR_RANGE);
    b.tokens = &neg;
    assert_int_equal(bt_engine_forward(e, &b, 1, out), BT_ERR_RANGE);
    b.tokens = t;
    b.n_tokens = 9; /* over the sequence's max_tokens of 8 */
    assert_int_equal(bt_engine_forward(e, &b, 1, out), BT_ERR_RANGE);
    b.n_tokens = 0;
    assert_int_equal(bt_engine_forward(e, &b, 1, out), BT_ERR_RANGE);
    assert_int_equal(bt_engine_forward(e, &b, 0, out), BT_ERR_RANGE);
    bt_kv_seq_fini(&kv, pool);
    bt_kv_seq_init(&kv, pool, 100);
    b.n_tokens = 65; /* over max_batch_tokens of 64 */
    assert_int_equal(bt_engine_forward(e, &b, 1, out), BT_ERR_RANGE);
    assert_int_equal(kv.n_tokens, 0);
    assert_int_equal(bt_kv_pool_n_free(pool), bt_kv_pool_n_blocks(pool));
    bt_kv_seq_fini(&kv, pool);
    bt_engine_destroy(e);
    free(out);
}

static void test_engine_create_survives_alloc_faults(void **state)
{
    fixture_t *f = *state;
    bt_engine_params_t ep = {.n_threads = 1, .max_batch_tokens = 16, .max_seqs = 2};
    for (long n = 1;; n++) {
        bt_engine_t *e = NULL;
        bt_alloc_fail_at(n);
        int st = bt_engine_create(f->model, &ep, &e);
        int fired = bt_alloc_fault_fired();
        bt_alloc_fail_at(0);
        if (!fired) {
            assert_int_equal(st, BT_OK);
            bt_engine_destroy(e);
            break;
        }
        assert_int_not_equal(st, BT_OK);
        assert_null(e);
    }
}

static void test_engine_refuses_unsupported_attention_shapes(void **state)
{
    bt_modelgen_params_t p;
    char path[512];
    assert_int_equal(bt_modelgen_preset("tiny", &p), BT_OK);
    p.dim = 1024; /* 2 heads of 512: wider than any kernel supports */
    p.n_heads = 2;
    p.n_kv_heads = 2;
    bt_test_tmp_path("engine-wide.gguf", path, sizeof path);
    assert_int_equal(bt_modelgen_write(&p, path), BT_OK);
    bt_model_params_t mp = {.path = path};
    bt_model_t *m = NULL;
    assert_int_equal(bt_model_load(&mp, &m), BT_OK);
    bt_engine_t *e = NULL;
    assert_int_equal(bt_engine_create(m, NULL, &e), BT_ERR_UNSUPPORTED);
    assert_null(e);
    bt_model_destroy(m);
    remove(path);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_engine_chunked_prefill_and_threads_are_bit_identical),
        cmocka_unit_test(test_engine_batched_equals_alone),
        cmocka_unit_test(test_engine_fused_ops_are_bit_identical),
        cmocka_unit_test(test_engine_forward_argmax_and_topk_match_logits),
        cmocka_unit_test(test_engine_topk_limits),
        cmocka_unit_test(test_engine_layer_hook_reports_each_layer_and_changes_nothing),
        cmocka_unit_test(test_engine_reservation_is_all_or_nothing),
        cmocka_unit_test(test_engine_rejects_out_of_range_batches),
        cmocka_unit_test(test_engine_create_survives_alloc_faults),
        cmocka_unit_test(test_engine_refuses_unsupported_attention_shapes),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
