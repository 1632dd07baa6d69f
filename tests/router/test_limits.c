/* SPDX-License-Identifier: MIT */
/*
 * test_limits.c - request admission: each limit answers with the status the contract names
 * (RANGE, INVAL, UNSUPPORTED), defaults are applied, and a text prompt is tokenized with the
 * model's tokenizer (BOS as asked) and bounded before and after tokenizing.
 */
// ctest-labels: unit
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "common/alloc.h"
#include "common/gguf.h"
#include "common/modelgen.h"
#include "common/status.h"
#include "router/limits.h"

static router_limits_t base_limits(void)
{
    return (router_limits_t){.max_prompt_tokens = 8,
                             .max_tokens = 100,
                             .default_max_tokens = 16,
                             .n_vocab = 512,
                             .slo_ttft_ms = 1000,
                             .slo_tpot_ms = 50};
}

static int check(const router_limits_t *lim, Baton__GenerateRequest *req, router_admit_t *a,
                 char *err)
{
    return router_limits_check(lim, req, a, err, 256);
}

static void test_limits_ids_defaults_and_ranges(void **state)
{
    (void)state;
    router_limits_t lim = base_limits();
    int32_t ids[9] = {1, 2, 3, 4, 5, 6, 7, 8, 9};
    Baton__GenerateRequest req = BATON__GENERATE_REQUEST__INIT;
    Baton__SamplingParams s = BATON__SAMPLING_PARAMS__INIT;
    Baton__Slo slo = BATON__SLO__INIT;
    req.sampling = &s;
    req.slo = &slo;
    req.prompt_ids = ids;
    req.n_prompt_ids = 8;
    router_admit_t a;
    char err[256];
    assert_int_equal(check(&lim, &req, &a, err), BT_OK);
    assert_int_equal(a.n_prompt, 8);
    assert_ptr_equal(a.prompt, ids);
    assert_null(a.prompt_owned);
    assert_int_equal(a.max_tokens, 16);
    assert_true(a.slo_ttft_ms == 1000 && a.slo_tpot_ms == 50);
    slo.ttft_ms = 200;
    req.max_tokens = 100;
    assert_int_equal(check(&lim, &req, &a, err), BT_OK);
    assert_true(a.slo_ttft_ms == 200);
    assert_int_equal(a.max_tokens, 100);

    req.n_prompt_ids = 9;
    assert_int_equal(check(&lim, &req, &a, err), BT_ERR_RANGE);
    assert_non_null(strstr(err, "longer than 8"));
    req.n_prompt_ids = 8;
    req.max_tokens = 101;
    assert_int_equal(check(&lim, &req, &a, err), BT_ERR_RANGE);
    req.max_tokens = 0;
    ids[3] = 512;
    assert_int_equal(check(&lim, &req, &a, err), BT_ERR_INVAL);
    ids[3] = -1;
    assert_int_equal(check(&lim, &req, &a, err), BT_ERR_INVAL);
    ids[3] = 4;
    req.n_prompt_ids = 0;
    assert_int_equal(check(&lim, &req, &a, err), BT_ERR_INVAL); /* empty prompt */
}

static void test_limits_sampling_stops_and_objectives(void **state)
{
    (void)state;
    router_limits_t lim = base_limits();
    int32_t ids[2] = {1, 2};
    Baton__GenerateRequest req = BATON__GENERATE_REQUEST__INIT;
    Baton__SamplingParams s = BATON__SAMPLING_PARAMS__INIT;
    Baton__Slo slo = BATON__SLO__INIT;
    req.prompt_ids = ids;
    req.n_prompt_ids = 2;
    req.sampling = &s;
    req.slo = &slo;
    router_admit_t a;
    char err[256];
    s.temperature = -1;
    assert_int_equal(check(&lim, &req, &a, err), BT_ERR_INVAL);
    s.temperature = NAN;
    assert_int_equal(check(&lim, &req, &a, err), BT_ERR_INVAL);
    s.temperature = 0.7f;
    s.top_p = 1.5f;
    assert_int_equal(check(&lim, &req, &a, err), BT_ERR_INVAL);
    s.top_p = 0.9f;
    char *stops[17];
    for (int i = 0; i < 17; i++)
        stops[i] = "x";
    s.stop = stops;
    s.n_stop = 17;
    assert_int_equal(check(&lim, &req, &a, err), BT_ERR_RANGE);
    stops[0] = "";
    s.n_stop = 1;
    assert_int_equal(check(&lim, &req, &a, err), BT_ERR_INVAL);
    s.n_stop = 0;
    int32_t bad_stop = 9999;
    s.stop_ids = &bad_stop;
    s.n_stop_ids = 1;
    assert_int_equal(check(&lim, &req, &a, err), BT_ERR_INVAL);
    s.n_stop_ids = 0;
    slo.tpot_ms = -5;
    assert_int_equal(check(&lim, &req, &a, err), BT_ERR_INVAL);
    slo.tpot_ms = INFINITY;
    assert_int_equal(check(&lim, &req, &a, err), BT_ERR_INVAL);
    slo.tpot_ms = 0;
    assert_int_equal(check(&lim, &req, &a, err), BT_OK);
}

static void test_limits_text_prompts(void **state)
{
    (void)state;
    char path[512];
    bt_test_tmp_path("limits.gguf", path, sizeof path);
    bt_modelgen_params_t mp;
    assert_int_equal(bt_modelgen_preset("tiny", &mp), BT_OK);
    assert_int_equal(bt_modelgen_write(&mp, path), BT_OK);
    bt_gguf_t *g = NULL;
    bt_tokenizer_t *tok = NULL;
    assert_int_equal(bt_gguf_open(path, &g), BT_OK);
    assert_int_equal(bt_tokenizer_from_gguf(g, &tok), BT_OK);
    bt_gguf_close(g);
    remove(path);

    router_limits_t lim = base_limits();
    Baton__GenerateRequest req = BATON__GENERATE_REQUEST__INIT;
    req.prompt = "ab";
    router_admit_t a;
    char err[256];
    assert_int_equal(check(&lim, &req, &a, err), BT_ERR_UNSUPPORTED); /* no tokenizer */
    lim.tok = tok;
    req.add_bos = 1;
    assert_int_equal(check(&lim, &req, &a, err), BT_OK);
    assert_non_null(a.prompt_owned);
    assert_true(a.n_prompt >= 2);
    assert_int_equal(a.prompt[0], bt_tokenizer_bos(tok));
    bt_free(a.prompt_owned);
    req.prompt = "abcdefghijklmnopqrstuvwxyz abcdefghijklmnopqrstuvwxyz"; /* > 8 tokens */
    assert_int_equal(check(&lim, &req, &a, err), BT_ERR_RANGE);
    assert_null(a.prompt_owned);
    char big[1024];
    memset(big, 'a', sizeof big - 1);
    big[sizeof big - 1] = 0; /* more bytes than 8 tokens could ever hold: refused untokenized */
    req.prompt = big;
    assert_int_equal(check(&lim, &req, &a, err), BT_ERR_RANGE);
    assert_non_null(strstr(err, "bytes"));
    req.prompt = "";
    assert_int_equal(check(&lim, &req, &a, err), BT_ERR_INVAL);
    bt_tokenizer_destroy(tok);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_limits_ids_defaults_and_ranges),
        cmocka_unit_test(test_limits_sampling_stops_and_objectives),
        cmocka_unit_test(test_limits_text_prompts),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
