/* SPDX-License-Identifier: MIT */
/*
 * test_cuda_engine.c - the engine on the "cuda" backend against the CPU backend, end to end on
 * synthetic models: the logits of a prompt (normalised error), then greedy tokens, which must
 * be the same tokens; and on the device alone, a sequence's logits alone and inside a batch are
 * bit-identical (deterministic mode), and decode steps run as CUDA graphs (BATON_CUDA_GRAPHS)
 * give the same logits, greedy ids and top-k candidates bit for bit as the same steps run op by
 * op, across attention chunk boundaries and changing batches, deterministic and not; and the
 * backend's fused matmuls (every pre-norm projection and the logits go through the
 * rmsnorm-fused ones) give the same logits bit for bit as their composition
 * (BATON_FUSED_OPS=0). Presets come from BATON_GPU_TEST_MODELS, a list of preset:type pairs
 * (default "15m:f32,1b:bf16"); KV caches are bf16 on both sides.
 *
 * Skipped (exit 77) where no CUDA device is present or the backend is not built.
 */
// ctest-labels: gpu
#include "../support/testutil.h" /* relative: works whatever the include path */

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/engine.h"
#include "common/modelgen.h"
#include "common/sampler.h"

#define PROMPT 40
#define GEN 8
#define BATCH 5
#define TOL_LOGITS 2e-3

typedef struct {
    bt_model_t *m;
    bt_engine_t *cpu, *gpu;
    int32_t n_vocab;
    char path[512];
} rig_t;

static int type_of(const char *s)
{
    return !strcmp(s, "bf16") ? BT_TYPE_BF16 : !strcmp(s, "f16") ? BT_TYPE_F16 : BT_TYPE_F32;
}

/* The rig's engines (cpu unless backend is set), deterministic. */
static bt_engine_params_t rig_engine_params(const rig_t *r)
{
    return (bt_engine_params_t){
        .max_batch_tokens = 256,
        .max_seqs = 16,
        .kv_type = BT_TYPE_BF16,
        .kv_budget_bytes = 16 * 256 * bt_model_kv_bytes_per_token(&r->m->hp, BT_TYPE_BF16)};
}

static void rig_open(rig_t *r, const char *preset, int type)
{
    bt_modelgen_params_t mp;
    memset(r, 0, sizeof *r);
    assert_int_equal(bt_modelgen_preset(preset, &mp), BT_OK);
    mp.type = type;
    char stem[64];
    snprintf(stem, sizeof stem, "cuda-%s-%s", preset, bt_type_name(type));
    bt_test_tmp_path(stem, r->path, sizeof r->path);
    strncat(r->path, ".gguf", sizeof r->path - strlen(r->path) - 1);
    assert_int_equal(bt_modelgen_write(&mp, r->path), BT_OK);
    bt_model_params_t p = {.path = r->path};
    assert_int_equal(bt_model_load(&p, &r->m), BT_OK);
    r->n_vocab = r->m->hp.n_vocab;
    bt_engine_params_t ep = rig_engine_params(r);
    assert_int_equal(bt_engine_create(r->m, &ep, &r->cpu), BT_OK);
    ep.backend = "cuda";
    assert_int_equal(bt_engine_create(r->m, &ep, &r->gpu), BT_OK);
}

static void rig_close(rig_t *r)
{
    bt_engine_destroy(r->gpu);
    bt_engine_destroy(r->cpu);
    bt_model_destroy(r->m);
    unlink(r->path);
}

static double nerr(const float *a, const float *b, size_t n)
{
    double e = 0, ref = 1e-30;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        e = d > e || isnan(d) ? d : e;
        ref = fabs(b[i]) > ref ? fabs(b[i]) : ref;
    }
    return e / ref;
}

/* Prompt logits, then GEN greedy steps, on one engine: logits gets the prompt's logits and
 * each step's ((1 + GEN) x n_vocab), tokens[] the generated ids. */
static void run_greedy(rig_t *r, bt_engine_t *e, const int32_t *prompt, float *logits,
                       int32_t *tokens)
{
    bt_kv_seq_t kv;
    assert_int_equal(bt_kv_seq_init(&kv, bt_engine_kv_pool(e), PROMPT + GEN + 1), BT_OK);
    bt_batch_seq_t b = {.kv = &kv, .tokens = prompt, .n_tokens = PROMPT, .logits = BT_LOGITS_LAST};
    assert_int_equal(bt_engine_forward(e, &b, 1, logits), BT_OK);
    int32_t tok = bt_argmax(logits, r->n_vocab);
    for (int i = 0; i < GEN; i++) {
        tokens[i] = tok;
        float *step = logits + (size_t)(i + 1) * r->n_vocab;
        b = (bt_batch_seq_t){.kv = &kv, .tokens = &tok, .n_tokens = 1, .logits = BT_LOGITS_LAST};
        assert_int_equal(bt_engine_forward(e, &b, 1, step), BT_OK);
        tok = bt_argmax(step, r->n_vocab);
    }
    bt_kv_seq_fini(&kv, bt_engine_kv_pool(e));
}

static void make_prompt(const rig_t *r, int32_t *prompt)
{
    for (int i = 0; i < PROMPT; i++)
        prompt[i] = 3 + (int32_t)((i * 7919u + 13u) % (uint32_t)(r->n_vocab - 3));
}

static void check_against_cpu(rig_t *r)
{
    int32_t prompt[PROMPT], tc[GEN], tg[GEN];
    make_prompt(r, prompt);
    const size_t n = (size_t)(1 + GEN) * r->n_vocab;
    float *lc = malloc(n * sizeof(float)), *lg = malloc(n * sizeof(float));
    run_greedy(r, r->cpu, prompt, lc, tc);
    run_greedy(r, r->gpu, prompt, lg, tg);
    double e = nerr(lg, lc, (size_t)r->n_vocab);
    printf("%s: prompt logits normalised error %.3g\n", r->m->hp.name, e);
    assert_true(e <= TOL_LOGITS);
    assert_memory_equal(tg, tc, sizeof tc);
    free(lc);
    free(lg);
}

/* Sequence 0 alone, then as the third of BATCH sequences of different lengths. */
static void check_batch_invariance(rig_t *r)
{
    bt_kv_pool_t *pool = bt_engine_kv_pool(r->gpu);
    bt_kv_seq_t kv[BATCH];
    int32_t toks[BATCH][PROMPT];
    bt_batch_seq_t b[BATCH];
    for (int s = 0; s < BATCH; s++) {
        assert_int_equal(bt_kv_seq_init(&kv[s], pool, PROMPT + 1), BT_OK);
        for (int i = 0; i < PROMPT; i++)
            toks[s][i] = 3 + (int32_t)(((uint32_t)(s + 1) * 104729u + i * 31u) % 200u);
    }
    float *alone = malloc((size_t)r->n_vocab * 4);
    float *batch = malloc((size_t)BATCH * r->n_vocab * 4);
    b[0] = (bt_batch_seq_t){
        .kv = &kv[0], .tokens = toks[0], .n_tokens = PROMPT, .logits = BT_LOGITS_LAST};
    assert_int_equal(bt_engine_forward(r->gpu, b, 1, alone), BT_OK);
    bt_kv_seq_truncate(&kv[0], pool, 0);
    int order[BATCH] = {1, 2, 0, 3, 4};
    for (int i = 0; i < BATCH; i++) {
        int s = order[i];
        b[i] = (bt_batch_seq_t){.kv = &kv[s],
                                .tokens = toks[s],
                                .n_tokens = s == 0 ? PROMPT : 5 + 7 * s,
                                .logits = BT_LOGITS_LAST};
    }
    assert_int_equal(bt_engine_forward(r->gpu, b, BATCH, batch), BT_OK);
    assert_memory_equal(alone, batch + 2 * (size_t)r->n_vocab, (size_t)r->n_vocab * 4);
    for (int s = 0; s < BATCH; s++)
        bt_kv_seq_fini(&kv[s], pool);
    free(alone);
    free(batch);
}

#define G_MAX_SEQS 12
#define G_STEPS 48
#define G_TOPK 40

typedef struct {
    bt_engine_t *e;
    bt_kv_seq_t kv[G_MAX_SEQS];
    float *logits; /* (G_MAX_SEQS, n_vocab) */
    int32_t ids[G_MAX_SEQS * BT_TOPK_MAX];
    float vals[G_MAX_SEQS * BT_TOPK_MAX];
    float tau[G_MAX_SEQS];
    double totals[G_MAX_SEQS];
} graph_side_t;

/* The top-k steps alternate between G_TOPK candidates and BT_TOPK_MAX with window totals (for
 * sampling without top-k) of the rows whose tau is > 0. */
static int step_totals(int step)
{
    return step % 3 == 2 && (step / 3) % 2 == 1;
}

/* Contexts before decoding: some a few steps short of the 256-token attention chunk, so the
 * batch's attention bucket changes during the run, the rest spread out. */
static const int32_t g_prompt[G_MAX_SEQS] = {5, 130, 235, 250, 17, 64, 200, 255, 1, 99, 180, 240};

/* How a side's backend launches: CUDA graphs of decode steps, and programmatic dependent
 * launches of its GEMVs (BATON_CUDA_PDL). */
enum { SIDE_GRAPHS = 1, SIDE_PDL = 2 };

static void graph_side_open(rig_t *r, graph_side_t *g, int mode, int nondet, int n_seqs)
{
    memset(g, 0, sizeof *g);
    bt_engine_params_t ep = {
        .backend = "cuda",
        .max_batch_tokens = 512,
        .max_seqs = 16,
        .kv_type = BT_TYPE_BF16,
        .kv_budget_bytes = 16 * 320 * bt_model_kv_bytes_per_token(&r->m->hp, BT_TYPE_BF16),
        .nondeterministic = nondet,
    };
    /* 2: a replay mismatch aborts */
    setenv("BATON_CUDA_GRAPHS", mode & SIDE_GRAPHS ? "2" : "0", 1);
    setenv("BATON_CUDA_PDL", mode & SIDE_PDL ? "1" : "0", 1);
    int st = bt_engine_create(r->m, &ep, &g->e);
    unsetenv("BATON_CUDA_GRAPHS");
    unsetenv("BATON_CUDA_PDL");
    assert_int_equal(st, BT_OK);
    g->logits = malloc((size_t)G_MAX_SEQS * r->n_vocab * sizeof(float));
    assert_non_null(g->logits);
    bt_kv_pool_t *pool = bt_engine_kv_pool(g->e);
    int32_t toks[256];
    for (int s = 0; s < n_seqs; s++) {
        assert_int_equal(bt_kv_seq_init(&g->kv[s], pool, 256 + G_STEPS + 1), BT_OK);
        for (int i = 0; i < g_prompt[s]; i++)
            toks[i] = 3 + (int32_t)(((uint32_t)(s + 1) * 7919u + (uint32_t)i * 31u) % 200u);
        bt_batch_seq_t b = {
            .kv = &g->kv[s], .tokens = toks, .n_tokens = g_prompt[s], .logits = BT_LOGITS_NONE};
        assert_int_equal(bt_engine_forward(g->e, &b, 1, NULL), BT_OK);
    }
}

static void graph_side_close(graph_side_t *g, int n_seqs)
{
    for (int s = 0; s < n_seqs; s++)
        bt_kv_seq_fini(&g->kv[s], bt_engine_kv_pool(g->e));
    free(g->logits);
    bt_engine_destroy(g->e);
}

/* One decode step of the sequences in use[] (n of them) with output kind step % 3. */
static void graph_side_step(graph_side_t *g, const int *use, int n, int step)
{
    bt_batch_seq_t b[G_MAX_SEQS];
    int32_t tok[G_MAX_SEQS];
    for (int i = 0; i < n; i++) {
        tok[i] = 3 + (int32_t)(((uint32_t)use[i] * 131u + (uint32_t)step * 17u) % 200u);
        b[i] = (bt_batch_seq_t){
            .kv = &g->kv[use[i]], .tokens = &tok[i], .n_tokens = 1, .logits = BT_LOGITS_LAST};
    }
    for (int i = 0; i < n; i++)
        g->tau[i] = (use[i] + step) % 3 == 0 ? 0 : (use[i] + step) % 3 == 1 ? 1.0f : 0.8f;
    bt_engine_out_t o = {
        .k = BT_TOPK_MAX, .ids = g->ids, .vals = g->vals, .tau = g->tau, .totals = g->totals};
    int st = step % 3 == 0       ? bt_engine_forward(g->e, b, n, g->logits)
             : step % 3 == 1     ? bt_engine_forward_argmax(g->e, b, n, g->ids)
             : step_totals(step) ? bt_engine_forward_out(g->e, b, n, &o)
                                 : bt_engine_forward_topk(g->e, b, n, G_TOPK, g->ids, g->vals);
    assert_int_equal(st, BT_OK);
}

/* The same decode run, every step compared bit for bit, on an engine launching as mode says
 * (CUDA graphs, PDL) and on one with plain launches op by op: G_STEPS steps of n_seqs
 * sequences (every fourth step only the even ones, so keys change and come back), logits,
 * greedy ids and top-k candidates in turn (every other time the best BT_TOPK_MAX with window
 * totals, checked against the host's total of the row read back); graphs are captured on the
 * first step of each key and replayed after. */
static void check_graphs_match_eager(rig_t *r, int mode, int nondet, int n_seqs)
{
    graph_side_t eager, graphs;
    graph_side_open(r, &eager, 0, nondet, n_seqs);
    graph_side_open(r, &graphs, mode, nondet, n_seqs);
    for (int step = 0; step < G_STEPS; step++) {
        int use[G_MAX_SEQS], n = 0;
        for (int s = 0; s < n_seqs; s++)
            if (step % 4 != 3 || s % 2 == 0)
                use[n++] = s;
        graph_side_step(&eager, use, n, step);
        graph_side_step(&graphs, use, n, step);
        if (step % 3 == 0)
            assert_memory_equal(graphs.logits, eager.logits,
                                (size_t)n * r->n_vocab * sizeof(float));
        else if (step % 3 == 1)
            assert_memory_equal(graphs.ids, eager.ids, (size_t)n * sizeof(int32_t));
        else if (!step_totals(step)) {
            assert_memory_equal(graphs.ids, eager.ids, (size_t)n * G_TOPK * sizeof(int32_t));
            assert_memory_equal(graphs.vals, eager.vals, (size_t)n * G_TOPK * sizeof(float));
        } else {
            /* The candidates, the totals (0 where tau is 0) and each row read back. */
            size_t kc = (size_t)n * BT_TOPK_MAX;
            assert_memory_equal(graphs.ids, eager.ids, kc * sizeof(int32_t));
            assert_memory_equal(graphs.vals, eager.vals, kc * sizeof(float));
            assert_memory_equal(graphs.totals, eager.totals, (size_t)n * sizeof(double));
            for (int i = 0; i < n; i++) {
                assert_int_equal(bt_engine_logits_row(graphs.e, i, graphs.logits), BT_OK);
                assert_int_equal(bt_engine_logits_row(eager.e, i, eager.logits), BT_OK);
                assert_memory_equal(graphs.logits, eager.logits, r->n_vocab * sizeof(float));
                double want = eager.tau[i] > 0
                                  ? bt_window_total_f32(eager.logits, r->n_vocab, eager.tau[i])
                                  : 0;
                assert_memory_equal(&eager.totals[i], &want, sizeof want);
            }
        }
    }
    printf("%s: %d decode steps of %d sequences%s%s%s match plain launches op by op\n",
           r->m->hp.name, G_STEPS, n_seqs, nondet ? " (nondeterministic)" : "",
           mode & SIDE_GRAPHS ? ", as graphs" : "",
           mode & SIDE_PDL ? ", GEMVs launched with PDL" : "");
    graph_side_close(&graphs, n_seqs);
    graph_side_close(&eager, n_seqs);
}

/* Runs fn on a rig of every preset:type of BATON_GPU_TEST_MODELS. */
static void for_each_model(void (*fn)(rig_t *r))
{
    const char *env = getenv("BATON_GPU_TEST_MODELS");
    char list[256];
    snprintf(list, sizeof list, "%s", env && *env ? env : "15m:f32,1b:bf16");
    char *save = NULL;
    for (char *item = strtok_r(list, ",", &save); item; item = strtok_r(NULL, ",", &save)) {
        char *colon = strchr(item, ':');
        int type = colon ? type_of(colon + 1) : BT_TYPE_F32;
        if (colon)
            *colon = 0;
        rig_t r;
        rig_open(&r, item, type);
        fn(&r);
        rig_close(&r);
    }
}

/* The rig's gpu engine (fused matmuls, unless BATON_FUSED_OPS=0 was set for the whole test)
 * against one created with BATON_FUSED_OPS=0, whose backend runs the fused forms as their
 * composition (rmsnorm into a buffer, then one matmul per weight): a prompt (GEMV blocks of 8
 * tokens) and GEN decode steps (1 token), every logit bit for bit (deterministic mode). */
static void check_fused_matches_composed(rig_t *r)
{
    const char *env = getenv("BATON_FUSED_OPS");
    char *was = env ? strdup(env) : NULL;
    bt_engine_params_t ep = rig_engine_params(r);
    ep.backend = "cuda";
    bt_engine_t *composed = NULL;
    setenv("BATON_FUSED_OPS", "0", 1);
    int st = bt_engine_create(r->m, &ep, &composed);
    if (was)
        setenv("BATON_FUSED_OPS", was, 1);
    else
        unsetenv("BATON_FUSED_OPS");
    free(was);
    assert_int_equal(st, BT_OK);
    int32_t prompt[PROMPT], tf[GEN], tc[GEN];
    make_prompt(r, prompt);
    const size_t n = (size_t)(1 + GEN) * r->n_vocab;
    float *lf = malloc(n * sizeof(float)), *lc = malloc(n * sizeof(float));
    run_greedy(r, r->gpu, prompt, lf, tf);
    run_greedy(r, composed, prompt, lc, tc);
    assert_memory_equal(lf, lc, n * sizeof(float));
    printf("%s: fused and composed matmuls give the same logits (prompt and %d steps)\n",
           r->m->hp.name, GEN);
    free(lf);
    free(lc);
    bt_engine_destroy(composed);
}

static void check_cpu_batches_fused(rig_t *r)
{
    check_against_cpu(r);
    check_batch_invariance(r);
    check_fused_matches_composed(r);
}

static void test_cuda_engine_matches_cpu(void **state)
{
    for_each_model(check_cpu_batches_fused);
}

/* Deterministic with 4 sequences (GEMV matmuls); with nondeterministic and 12 sequences the
 * matmuls of the step go to cuBLAS inside the graph. Then the GEMVs as programmatic dependent
 * launches, in graphs (PDL edges) and op by op: the same bits as plain launches, which a GEMV
 * that read its input before the kernel writing it had finished would not give. An emulated
 * device runs launches one after another, PDL or not, so there they would repeat the first. */
static void check_graphs(rig_t *r)
{
    check_graphs_match_eager(r, SIDE_GRAPHS, 0, 4);
    check_graphs_match_eager(r, SIDE_GRAPHS, 1, G_MAX_SEQS);
    if (getenv("BATON_CUDA_EMULATED")) {
        printf("%s: PDL steps not compared (emulated device)\n", r->m->hp.name);
        return;
    }
    check_graphs_match_eager(r, SIDE_GRAPHS | SIDE_PDL, 0, 4);
    check_graphs_match_eager(r, SIDE_PDL, 0, 4);
}

static void test_cuda_engine_graphs_match_eager(void **state)
{
    for_each_model(check_graphs);
}

int main(void)
{
    bt_backend_t *probe = NULL;
    if (bt_backend_create("cuda", NULL, &probe) != BT_OK) {
        printf("no CUDA device (or the backend is not built): skipped\n");
        return 77;
    }
    bt_backend_destroy(probe);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cuda_engine_matches_cpu),
        cmocka_unit_test(test_cuda_engine_graphs_match_eager),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
