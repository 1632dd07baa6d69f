/* SPDX-License-Identifier: MIT */
/*
 * test_modelid.c - the model id: its format, and that the router's metadata-only reading of a
 * GGUF gives byte for byte the id a daemon computes from the loaded model.
 */
// ctest-labels: unit
#include "testutil.h"

#include <stdio.h>
#include <string.h>

#include "common/gguf.h"
#include "common/model.h"
#include "common/modelgen.h"
#include "common/modelid.h"
#include "common/status.h"

static void test_modelid_format_and_truncation(void **state)
{
    (void)state;
    bt_model_hparams_t hp = {0};
    strcpy(hp.name, "llama-7b");
    hp.n_layers = 32;
    hp.dim = 4096;
    hp.n_heads = 32;
    hp.n_kv_heads = 8;
    hp.n_vocab = 32000;
    char buf[BT_MODEL_ID_MAX];
    assert_int_equal(bt_model_id_str(&hp, buf, sizeof buf), BT_OK);
    assert_string_equal(buf, "llama-7b:32x4096x32x8x32000");
    char small[8];
    assert_int_equal(bt_model_id_str(&hp, small, sizeof small), BT_ERR_NOSPACE);
    assert_int_equal(strlen(small), 7);
    assert_int_equal(bt_model_id_str(NULL, buf, sizeof buf), BT_ERR_INVAL);
    memset(hp.name, 'x', sizeof hp.name); /* not NUL-terminated: still bounded */
    assert_int_equal(bt_model_id_str(&hp, buf, sizeof buf), BT_OK);
}

static void test_modelid_gguf_matches_loaded_model(void **state)
{
    (void)state;
    char path[512];
    bt_test_tmp_path("modelid.gguf", path, sizeof path);
    bt_modelgen_params_t p;
    assert_int_equal(bt_modelgen_preset("tiny", &p), BT_OK);
    assert_int_equal(bt_modelgen_write(&p, path), BT_OK);

    bt_model_params_t mp = {.path = path};
    bt_model_t *m = NULL;
    assert_int_equal(bt_model_load(&mp, &m), BT_OK);
    char want[BT_MODEL_ID_MAX], got[BT_MODEL_ID_MAX];
    assert_int_equal(bt_model_id_str(&m->hp, want, sizeof want), BT_OK);
    bt_model_destroy(m);

    bt_gguf_t *g = NULL;
    assert_int_equal(bt_gguf_open(path, &g), BT_OK);
    bt_model_hparams_t hp;
    assert_int_equal(bt_model_id_hparams_from_gguf(g, path, &hp), BT_OK);
    bt_gguf_close(g);
    assert_int_equal(bt_model_id_str(&hp, got, sizeof got), BT_OK);
    assert_string_equal(got, want);
    assert_string_equal(got, "baton-synthetic-tiny:2x64x4x2x512");
    remove(path);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_modelid_format_and_truncation),
        cmocka_unit_test(test_modelid_gguf_matches_loaded_model),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
