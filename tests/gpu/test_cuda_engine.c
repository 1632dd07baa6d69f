/* SPDX-License-Identifier: MIT */
/*
 * test_cuda_engine.c - the engine on the "cuda" backend against the CPU backend, end to end on
 * synthetic models: the logits of a prompt (normalised error), then greedy tokens, which must
 * be the same tokens; and on the device alone, a sequence's logits alone and inside a batch are
 * bit-identical (deterministic mode). Presets come from BATON_GPU_TEST_MODELS, a list of
 * preset:type pairs (default "15m:f32,1b:bf16"); KV caches are bf16 on both sides.
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
    bt_engine_params_t ep = {.max_batch_tokens = 256,
                             .max_seqs = 16,
                             .kv_type = BT_TYPE_BF16,
                             .kv_budget_bytes =
                                 16 * 256 * bt_model_kv_bytes_per_token(&r->m->hp, BT_TYPE_BF16)};
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

/* Prompt logits, then GEN greedy steps, on one engine; tokens[] gets the generated ids. */
static void run_greedy(rig_t *r, bt_engine_t *e, const int32_t *prompt, float *logits,
                       int32_t *tokens)
{
    bt_kv_seq_t kv;
    assert_int_equal(bt_kv_seq_init(&kv, bt_engine_kv_pool(e), PROMPT + GEN + 1), BT_OK);
    bt_batch_seq_t b = {.kv = &kv, .tokens = prompt, .n_tokens = PROMPT, .logits = BT_LOGITS_LAST};
    assert_int_equal(bt_engine_forward(e, &b, 1, logits), BT_OK);
    float *step = malloc((size_t)r->n_vocab * sizeof(float));
    int32_t tok = bt_argmax(logits, r->n_vocab);
    for (int i = 0; i < GEN; i++) {
        tokens[i] = tok;
        b = (bt_batch_seq_t){.kv = &kv, .tokens = &tok, .n_tokens = 1, .logits = BT_LOGITS_LAST};
        assert_int_equal(bt_engine_forward(e, &b, 1, step), BT_OK);
        tok = bt_argmax(step, r->n_vocab);
    }
    free(step);
    bt_kv_seq_fini(&kv, bt_engine_kv_pool(e));
}

static void check_against_cpu(rig_t *r)
{
    int32_t prompt[PROMPT], tc[GEN], tg[GEN];
    for (int i = 0; i < PROMPT; i++)
        prompt[i] = 3 + (int32_t)((i * 7919u + 13u) % (uint32_t)(r->n_vocab - 3));
    float *lc = malloc((size_t)r->n_vocab * 4), *lg = malloc((size_t)r->n_vocab * 4);
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

static void test_cuda_engine_matches_cpu(void **state)
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
        check_against_cpu(&r);
        check_batch_invariance(&r);
        rig_close(&r);
    }
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
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
