/* SPDX-License-Identifier: MIT */
/*
 * test_cli.c - the baton tool end to end, as a user runs it: `baton run` on the real
 * stories260K model (GGUF, and llama2.c .bin + tokenizer) prints exactly the text of llama2.c's
 * reference run at temperature 0; `model gen` writes a model `run` can use; bad flags exit 2.
 */
// ctest-labels: integration
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#define BATON BATON_BINARY_DIR "/bin/baton"

/* Runs a shell command; returns its exit status and its stdout (malloc'ed) in *out. */
static int run_cmd(const char *cmd, char **out)
{
    char tmp[512], full[4096];
    bt_test_tmp_path("cli-out", tmp, sizeof tmp);
    snprintf(full, sizeof full, "%s > %s 2>/dev/null", cmd, tmp);
    int rc = system(full);
    *out = bt_test_read_file(tmp, NULL);
    remove(tmp);
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

static void expect_stories_text(const char *model_args)
{
    char exp_path[512], cmd[2048], *out;
    BT_TEST_NEED_SHARED("models/stories260K_expected_t0_n200.txt", exp_path);
    char *expected = bt_test_read_file(exp_path, NULL);
    snprintf(cmd, sizeof cmd, "%s run %s --temp 0 -n 200 --threads 2", BATON, model_args);
    assert_int_equal(run_cmd(cmd, &out), 0);
    assert_non_null(out);
    assert_string_equal(out, expected);
    free(out);
    free(expected);
}

static void test_cli_run_stories_gguf_matches_llama2c(void **state)
{
    char model[512], args[1200];
    BT_TEST_NEED_SHARED("models/stories260K.gguf", model);
    snprintf(args, sizeof args, "--model %s", model);
    expect_stories_text(args);
}

static void test_cli_run_stories_bin_matches_llama2c(void **state)
{
    char model[512], tok[512], args[1200];
    BT_TEST_NEED_SHARED("models/stories260K.bin", model);
    BT_TEST_NEED_SHARED("models/tok512.bin", tok);
    snprintf(args, sizeof args, "--model %s --tokenizer %s", model, tok);
    expect_stories_text(args);
}

static void test_cli_model_gen_then_run(void **state)
{
    char path[512], cmd[2048], *out;
    bt_test_tmp_path("cli-tiny.gguf", path, sizeof path);
    snprintf(cmd, sizeof cmd, "%s model gen --preset tiny --type q8_0 --seed 5 --out %s", BATON,
             path);
    assert_int_equal(run_cmd(cmd, &out), 0);
    free(out);
    /* Same seed twice gives the same text; the text is non-empty. */
    snprintf(cmd, sizeof cmd, "%s run --model %s --prompt 'abc' -n 12 --seed 9 --ignore-eos", BATON,
             path);
    char *out2;
    assert_int_equal(run_cmd(cmd, &out), 0);
    assert_int_equal(run_cmd(cmd, &out2), 0);
    assert_true(strlen(out) > 0);
    assert_string_equal(out, out2);
    free(out);
    free(out2);
    snprintf(cmd, sizeof cmd, "%s model info %s", BATON, path);
    assert_int_equal(run_cmd(cmd, &out), 0);
    assert_non_null(strstr(out, "weights: q8_0"));
    free(out);
    remove(path);
}

static void test_cli_bad_input_is_refused(void **state)
{
    char *out;
    assert_int_equal(run_cmd(BATON " run --no-such-flag", &out), 2);
    free(out);
    assert_int_equal(run_cmd(BATON " run --temp -1 --model x", &out), 2);
    free(out);
    assert_int_equal(run_cmd(BATON " frobnicate", &out), 2);
    free(out);
    assert_int_equal(run_cmd(BATON " run --model /nonexistent.gguf", &out), 1);
    free(out);
    assert_int_equal(run_cmd(BATON " run --help", &out), 0);
    assert_non_null(strstr(out, "--temp"));
    free(out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cli_run_stories_gguf_matches_llama2c),
        cmocka_unit_test(test_cli_run_stories_bin_matches_llama2c),
        cmocka_unit_test(test_cli_model_gen_then_run),
        cmocka_unit_test(test_cli_bad_input_is_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
