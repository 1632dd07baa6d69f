/* SPDX-License-Identifier: MIT */
/*
 * test_profiler.c - the profiler on the tiny synthetic model: it measures every shape of a
 * small grid, fits all three models, records what it measured with, writes a profile that
 * loads back, and refuses grids the engine cannot run.
 */
// ctest-labels: unit
#include "testutil.h"
#include "testprofile.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "common/engine.h"
#include "common/log.h"
#include "common/modelgen.h"
#include "common/status.h"
#include "common/steplog.h"
#include "planner/profiler.h"

typedef struct {
    char path[512];
    bt_model_t *m;
    bt_engine_t *e;
} tiny_t;

static void tiny_open_kv(tiny_t *t, int kv_tokens)
{
    bt_modelgen_params_t g;
    assert_int_equal(bt_modelgen_preset("tiny", &g), BT_OK);
    bt_test_tmp_path("tiny.gguf", t->path, sizeof t->path);
    assert_int_equal(bt_modelgen_write(&g, t->path), BT_OK);
    bt_model_params_t mp = {.path = t->path};
    assert_int_equal(bt_model_load(&mp, &t->m), BT_OK);
    bt_engine_params_t ep = {.n_threads = 1,
                             .max_batch_tokens = 256,
                             .max_seqs = 8,
                             .kv_budget_bytes =
                                 (size_t)kv_tokens * bt_model_kv_bytes_per_token(&t->m->hp, 0)};
    assert_int_equal(bt_engine_create(t->m, &ep, &t->e), BT_OK);
}

static void tiny_open(tiny_t *t)
{
    tiny_open_kv(t, 2048);
}

static void tiny_close(tiny_t *t)
{
    bt_engine_destroy(t->e);
    bt_model_destroy(t->m);
    remove(t->path);
}

static pl_profiler_params_t grid(bt_engine_t *e)
{
    return (pl_profiler_params_t){.engine = e,
                                  .prefill_lens = {16, 32, 64, 128},
                                  .n_prefill_lens = 4,
                                  .prefill_counts = {1, 2},
                                  .n_prefill_counts = 2,
                                  .max_batch_tokens = 256,
                                  .decode_batches = {1, 2, 4, 8},
                                  .n_decode_batches = 4,
                                  .decode_ctx = {16, 64, 128},
                                  .n_decode_ctx = 3,
                                  .reps = 2,
                                  .allow_knee = 1};
}

static void test_profiler_tiny(void **state)
{
    (void)state;
    tiny_t t;
    tiny_open(&t);
    pl_profiler_params_t p = grid(t.e);
    bt_profile_t prof = {.tp = 1};
    snprintf(prof.backend, sizeof prof.backend, "cpu");
    assert_int_equal(pl_profiler_run(&p, &prof), BT_OK);
    assert_int_equal(prof.fit_prefill.n_points, 8);
    assert_int_equal(prof.fit_decode.n_points, 12);
    assert_true(prof.fit_transfer.n_points >= 4);
    assert_true(prof.kv_bytes_per_token == (double)bt_model_kv_bytes_per_token(&t.m->hp, 0));
    assert_int_equal(prof.max_batch, 8);
    assert_true(prof.transfer_gb_per_s > 0);
    assert_true(bt_profile_prefill_ms(&prof, 64, 64 * 64) > 0);
    char path[512];
    bt_test_tmp_path("tiny-profile.json", path, sizeof path);
    assert_int_equal(bt_profile_write(&prof, path), BT_OK);
    bt_profile_t back;
    assert_int_equal(bt_profile_load(path, &back), BT_OK);
    bt_test_assert_profile_equal(&prof, &back);
    remove(path);
    /* A stated link is written as given, with no transfer fit. */
    p.link_gb_per_s = 3;
    p.link_latency_ms = 0.25;
    assert_int_equal(pl_profiler_run(&p, &prof), BT_OK);
    assert_true(prof.transfer_gb_per_s == 3 && prof.transfer_latency_ms == 0.25);
    tiny_close(&t);
}

/* What --raw writes, --refit reads back: the same points give the same coefficients with the
 * same weighting, other ones with the other; a corrupt line is refused. */
static void test_profiler_refit_from_raw(void **state)
{
    (void)state;
    tiny_t t;
    tiny_open(&t);
    char path[512];
    bt_test_tmp_path("tiny-raw.csv", path, sizeof path);
    pl_profiler_params_t p = grid(t.e);
    p.reps = 1;
    p.raw = fopen(path, "w");
    assert_non_null(p.raw);
    fputs("kind,n,len_or_ctx,ms\n", p.raw);
    bt_profile_t measured = {.tp = 1};
    assert_int_equal(pl_profiler_run(&p, &measured), BT_OK);
    fclose(p.raw);
    p.raw = NULL;
    p.refit = fopen(path, "r");
    assert_non_null(p.refit);
    bt_profile_t again = {.tp = 1};
    assert_int_equal(pl_profiler_run(&p, &again), BT_OK);
    fclose(p.refit);
    /* The file keeps 6 decimals of each time: the coefficients agree to well within 1e-4. */
    assert_true(fabs(again.prefill.b_ms_per_token - measured.prefill.b_ms_per_token) <=
                1e-4 * measured.prefill.b_ms_per_token + 1e-9);
    assert_true(fabs(again.decode.c_ms_per_seq - measured.decode.c_ms_per_seq) <=
                1e-4 * measured.decode.c_ms_per_seq + 1e-9);
    assert_int_equal(again.fit_prefill.n_points, measured.fit_prefill.n_points);
    assert_int_equal(again.fit_decode.n_points, measured.fit_decode.n_points);
    assert_int_equal(again.fit_transfer.n_points, measured.fit_transfer.n_points);

    FILE *f = fopen(path, "a");
    fputs("prefill,1,oops,3\n", f);
    fclose(f);
    bt_log_level_t old = bt_log_get_level();
    bt_log_set_level(BT_LOG_OFF);
    p.refit = fopen(path, "r");
    assert_int_equal(pl_profiler_run(&p, &again), BT_ERR_INVAL);
    fclose(p.refit);
    bt_log_set_level(old);
    remove(path);
    tiny_close(&t);
}

/* What the daemons' step logs record, --refit fits: served batches of mixed lengths and decode
 * steps of mixed batches and contexts, timed by known models, give those models back; mixed
 * steps, a second file's header (logs concatenated) and a last line still being written are
 * skipped, and the stated link is kept. */
/* k prompt lengths from 16 to 15 + span, drawn from *x: their sum and sum of squares. */
static void random_prompts(uint64_t *x, int k, int span, double *sum, double *sum2)
{
    *sum = *sum2 = 0;
    for (int j = 0; j < k; j++) {
        *x = *x * 6364136223846793005ull + 1442695040888963407ull;
        double len = 16 + (double)((*x >> 33) % (uint64_t)span);
        *sum += len;
        *sum2 += len * len;
    }
}

static void test_profiler_refit_from_step_logs(void **state)
{
    (void)state;
    tiny_t t;
    tiny_open(&t);
    char path[512];
    bt_test_tmp_path("tiny-steps.csv", path, sizeof path);
    bt_steplog_t *l = NULL;
    assert_int_equal(bt_steplog_open(path, &l), BT_OK);
    const double pa = 2.0, pb = 0.05, pc = 1e-4, da = 1.5, db = 0.002, dc = 0.3;
    uint64_t x = 7;
    for (int i = 0; i < 200; i++) {
        int k = 1 + i % 4;
        double sum, sum2;
        random_prompts(&x, k, 500, &sum, &sum2);
        bt_steplog_write(l, BT_STEP_PREFILL, sum, sum2, k, i, 1, pa + pb * sum + pc * sum2);
        double b = 1 + (double)((x >> 20) % 32), ctx = b * (50 + (double)((x >> 8) % 900));
        bt_steplog_write(l, BT_STEP_DECODE, b, ctx, (int)b, i, 1, da + db * ctx + dc * b);
    }
    bt_steplog_write(l, BT_STEP_MIXED, 3, 40, 3, 0, 1, 500);
    bt_steplog_close(l);
    FILE *f = fopen(path, "a");
    assert_non_null(f);
    fprintf(f, "kind,n,len_or_ctx,ms,forward_ms,seqs,t_ms\ndstep,4,400,%.4f,1,4,0\ndstep,2,1",
            da + db * 400 + dc * 4); /* the last line cut short, as a live log can be read */
    fclose(f);

    pl_profiler_params_t p = grid(t.e);
    p.link_gb_per_s = 7;
    p.link_latency_ms = 0.25;
    p.refit = fopen(path, "r");
    assert_non_null(p.refit);
    bt_profile_t prof = {.tp = 1};
    assert_int_equal(pl_profiler_run(&p, &prof), BT_OK);
    fclose(p.refit);
    remove(path);
    /* Times are kept to 1e-4 ms. */
    assert_true(fabs(prof.prefill.a_ms - pa) < 1e-2 * pa);
    assert_true(fabs(prof.prefill.b_ms_per_token - pb) < 1e-3 * pb);
    assert_true(fabs(prof.prefill.c_ms_per_token2 - pc) < 1e-3 * pc);
    assert_true(fabs(prof.decode.a_ms - da) < 1e-2 * da);
    assert_true(fabs(prof.decode.b_ms_per_ctx_token - db) < 1e-3 * db);
    assert_true(fabs(prof.decode.c_ms_per_seq - dc) < 1e-3 * dc);
    assert_int_equal(prof.decode_knee_batch, 0);
    assert_int_equal(prof.fit_prefill.n_points, 200);
    assert_int_equal(prof.fit_decode.n_points, 201);
    assert_true(prof.transfer_gb_per_s == 7 && prof.transfer_latency_ms == 0.25);
    tiny_close(&t);
}

/* A window on the step's start time fits only the steps served within it: two minutes of
 * serving at different speeds, written to two files read as one list, give each minute's own
 * coefficients, and no engine is needed. */
static void test_profiler_refit_window(void **state)
{
    (void)state;
    char path[2][512], list[1100];
    const double pa = 2.0, pb = 0.05, pc = 1e-4, da = 1.5, db = 0.002, dc = 0.3;
    uint64_t x = 11;
    for (int f = 0; f < 2; f++) {
        bt_test_tmp_path(f ? "window-b.csv" : "window-a.csv", path[f], sizeof path[f]);
        bt_steplog_t *l = NULL;
        assert_int_equal(bt_steplog_open(path[f], &l), BT_OK);
        for (int i = 0; i < 200; i++) {
            double t = 1000.0 * f + 500 * (i >= 100) + i; /* slow from t = 600 in each file */
            double speed = fmod(t, 1000) >= 600 ? 2.0 : 1.0;
            int k = 1 + i % 3;
            double sum, sum2;
            random_prompts(&x, k, 400, &sum, &sum2);
            bt_steplog_write(l, BT_STEP_PREFILL, sum, sum2, k, t, 1,
                             speed * (pa + pb * sum + pc * sum2));
            double b = 1 + (double)((x >> 20) % 32), ctx = b * (50 + (double)((x >> 8) % 900));
            bt_steplog_write(l, BT_STEP_DECODE, b, ctx, (int)b, t, 1,
                             speed * (da + db * ctx + dc * b));
        }
        bt_steplog_close(l);
    }
    snprintf(list, sizeof list, "%s,%s", path[0], path[1]);
    const double win[3][2] = {{0, 599}, {600, 999}, {1600, 1800}};
    const double speed[3] = {1, 2, 2};
    for (int w = 0; w < 3; w++) {
        pl_profiler_params_t p = {.allow_knee = 0,
                                  .fit_weight = PL_FIT_TIME,
                                  .window_from_ms = win[w][0],
                                  .window_to_ms = win[w][1]};
        p.refit = pl_refit_open(list);
        assert_non_null(p.refit);
        bt_profile_t prof = {.kv_bytes_per_token = 123};
        assert_int_equal(pl_profiler_refit(&p, &prof), BT_OK);
        fclose(p.refit);
        double k = speed[w];
        assert_true(fabs(prof.prefill.a_ms - k * pa) < 1e-2 * k * pa);
        assert_true(fabs(prof.prefill.b_ms_per_token - k * pb) < 1e-3 * k * pb);
        assert_true(fabs(prof.decode.b_ms_per_ctx_token - k * db) < 1e-3 * k * db);
        assert_true(fabs(prof.decode.c_ms_per_seq - k * dc) < 1e-3 * k * dc);
        assert_int_equal(prof.fit_prefill.n_points, 100);
        assert_true(prof.kv_bytes_per_token == 123); /* the rest of the profile is kept */
    }
    /* A window with nothing in it cannot be fitted. */
    pl_profiler_params_t p = {.window_from_ms = 5000, .window_to_ms = 6000};
    p.refit = pl_refit_open(list);
    bt_profile_t prof = {0};
    assert_int_not_equal(pl_profiler_refit(&p, &prof), BT_OK);
    fclose(p.refit);
    assert_null(pl_refit_open("/nonexistent/steps.csv"));
    remove(path[0]);
    remove(path[1]);
}

/* Every decode sequence gets KV of its own, so a pool too small for the largest shapes skips
 * them (the ones a daemon with that memory could not run either) and fits the rest, whatever
 * the pool's size (a shape whose context fits but whose next tokens do not is skipped too). */
static void test_profiler_skips_shapes_beyond_the_pool(void **state)
{
    (void)state;
    bt_log_level_t old = bt_log_get_level();
    for (int kv = 496; kv <= 656; kv += 16) {
        tiny_t t;
        tiny_open_kv(&t, kv);
        bt_log_set_level(BT_LOG_ERROR);
        pl_profiler_params_t p = grid(t.e);
        p.reps = 1;
        bt_profile_t prof = {.tp = 1};
        assert_int_equal(pl_profiler_run(&p, &prof), BT_OK);
        bt_log_set_level(old);
        assert_true(prof.fit_decode.n_points >= 6 && prof.fit_decode.n_points < 12);
        assert_int_equal(bt_kv_pool_n_free(bt_engine_kv_pool(t.e)),
                         bt_kv_pool_n_blocks(bt_engine_kv_pool(t.e)));
        tiny_close(&t);
    }
}

static void test_profiler_refuses_bad_grids(void **state)
{
    (void)state;
    tiny_t t;
    tiny_open(&t);
    bt_log_level_t old = bt_log_get_level();
    bt_log_set_level(BT_LOG_OFF);
    bt_profile_t prof = {0};
    pl_profiler_params_t p = grid(t.e);
    p.decode_ctx[0] = 20; /* not a multiple of the block size */
    assert_int_equal(pl_profiler_run(&p, &prof), BT_ERR_INVAL);
    p = grid(t.e);
    p.max_batch_tokens = 4096; /* over the engine's */
    assert_int_equal(pl_profiler_run(&p, &prof), BT_ERR_INVAL);
    p = grid(t.e);
    p.reps = 0;
    assert_int_equal(pl_profiler_run(&p, &prof), BT_ERR_INVAL);
    bt_log_set_level(old);
    tiny_close(&t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_profiler_tiny),
        cmocka_unit_test(test_profiler_refit_from_raw),
        cmocka_unit_test(test_profiler_refit_from_step_logs),
        cmocka_unit_test(test_profiler_refit_window),
        cmocka_unit_test(test_profiler_skips_shapes_beyond_the_pool),
        cmocka_unit_test(test_profiler_refuses_bad_grids),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
