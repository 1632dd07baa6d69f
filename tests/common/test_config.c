/* SPDX-License-Identifier: MIT */
/*
 * test_config.c - option tables: defaults, config file, environment, flags, precedence,
 * validation, usage and the tools' main (bt_cfg_run).
 */
// ctest-labels: unit
#include "testutil.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "common/config.h"
#include "common/log.h"
#include "common/status.h"

typedef struct {
    int n;
    float temp;
    int flag;
    size_t mem;
    int64_t big;
    char *name;
} cfg_t;

static const bt_cfg_opt_t opts[] = {
    {"count", 'n', BT_CFG_INT, "5", 1, 100, offsetof(cfg_t, n), "a count"},
    {"temp", 0, BT_CFG_FLOAT, "0.5", 0, 2, offsetof(cfg_t, temp), "a float"},
    {"flag", 0, BT_CFG_BOOL, "0", 0, 0, offsetof(cfg_t, flag), "a switch"},
    {"mem", 0, BT_CFG_SIZE, "1M", 0, 0, offsetof(cfg_t, mem), "bytes"},
    {"big", 0, BT_CFG_INT64, "0", 0, 0, offsetof(cfg_t, big), "wide"},
    {"name", 0, BT_CFG_STRING, "x", 0, 0, offsetof(cfg_t, name), "text"},
};
static const bt_cfg_table_t table = {
    .prog = "t", .opts = opts, .n_opts = 6, .env_prefix = "BTTEST_"};

static int parse(cfg_t *c, int argc, char **argv)
{
    *c = (cfg_t){0};
    return bt_cfg_parse(&table, c, argc, argv, 0, NULL, 0, NULL);
}

static void test_cfg_defaults_and_flags(void **state)
{
    cfg_t c;
    assert_int_equal(parse(&c, 0, NULL), BT_OK);
    assert_int_equal(c.n, 5);
    assert_true(c.temp == 0.5f);
    assert_int_equal(c.mem, 1 << 20);
    assert_string_equal(c.name, "x");
    bt_cfg_free(&table, &c);
    char *argv[] = {"-n", "7",      "--temp=1.5", "--flag", "--mem",
                    "2G", "--name", "abc",        "--big",  "5000000000"};
    assert_int_equal(parse(&c, 10, argv), BT_OK);
    assert_int_equal(c.n, 7);
    assert_true(c.temp == 1.5f);
    assert_int_equal(c.flag, 1);
    assert_int_equal(c.mem, (size_t)2 << 30);
    assert_int_equal(c.big, 5000000000LL);
    assert_string_equal(c.name, "abc");
    bt_cfg_free(&table, &c);
    assert_null(c.name);
}

static void test_cfg_rejects_bad_values(void **state)
{
    cfg_t c;
    char *a1[] = {"-n", "0"}, *a2[] = {"--count", "3.5"}, *a3[] = {"--temp", "x"},
         *a4[] = {"--nope"}, *a5[] = {"--count"}, *a6[] = {"--flag=maybe"}, *a7[] = {"extra"};
    char **all[] = {a1, a2, a3, a4, a5, a6, a7};
    int n[] = {2, 2, 2, 1, 1, 1, 1};
    FILE *saved = stderr;
    stderr = fopen("/dev/null", "w");
    for (int i = 0; i < 7; i++) {
        assert_int_equal(parse(&c, n[i], all[i]), BT_ERR_INVAL);
        bt_cfg_free(&table, &c);
    }
    fclose(stderr);
    stderr = saved;
}

static void test_cfg_precedence_file_env_flag(void **state)
{
    char path[512];
    bt_test_tmp_path("cfg", path, sizeof path);
    FILE *f = fopen(path, "w");
    fprintf(f, "# comment\ncount = 9\ntemp = 1.0  # trailing\nname = fromfile\n");
    fclose(f);
    setenv("BTTEST_TEMP", "1.25", 1);
    setenv("BTTEST_NAME", "fromenv", 1);
    char *argv[] = {"--config", path, "--name", "fromflag", "--no-flag"};
    cfg_t c;
    assert_int_equal(parse(&c, 5, argv), BT_OK);
    assert_int_equal(c.n, 9);                /* file */
    assert_true(c.temp == 1.25f);            /* env beats file */
    assert_string_equal(c.name, "fromflag"); /* flag beats env */
    assert_int_equal(c.flag, 0);
    bt_cfg_free(&table, &c);
    unsetenv("BTTEST_TEMP");
    unsetenv("BTTEST_NAME");
    f = fopen(path, "w");
    fprintf(f, "bogus = 1\n");
    fclose(f);
    FILE *saved = stderr;
    stderr = fopen("/dev/null", "w");
    assert_int_equal(parse(&c, 2, argv), BT_ERR_INVAL);
    fclose(stderr);
    stderr = saved;
    bt_cfg_free(&table, &c);
    remove(path);
}

static void test_cfg_positional_and_help(void **state)
{
    cfg_t c = {0};
    char *pos[2];
    int np = 0;
    char *argv[] = {"first", "-n", "3", "second"};
    assert_int_equal(bt_cfg_parse(&table, &c, 4, argv, 0, pos, 2, &np), BT_OK);
    assert_int_equal(np, 2);
    assert_string_equal(pos[0], "first");
    assert_string_equal(pos[1], "second");
    bt_cfg_free(&table, &c);
    FILE *saved = stdout;
    stdout = fopen("/dev/null", "w");
    char *help[] = {"--help"};
    c = (cfg_t){0};
    assert_int_equal(bt_cfg_parse(&table, &c, 1, help, 0, NULL, 0, NULL), BT_AGAIN);
    fclose(stdout);
    stdout = saved;
    bt_cfg_free(&table, &c);
}

static int run_seen; /* what run_main saw: its count, or -1 before it ran */

static int run_main(const void *cfg)
{
    run_seen = ((const cfg_t *)cfg)->n;
    return 7;
}

static int run(int argc, char **argv)
{
    cfg_t c = {0};
    run_seen = -1;
    return bt_cfg_run(&table, &c, offsetof(cfg_t, name), argc, argv, run_main);
}

static void test_cfg_run_exit_status(void **state)
{
    bt_log_level_t level = bt_log_get_level();
    char *ok[] = {"t", "-n", "3", "--name", "error"}, *help[] = {"t", "--help"},
         *bad[] = {"t", "--nope"}, *unknown[] = {"t", "--name", "loud"};
    assert_int_equal(run(5, ok), 7);
    assert_int_equal(run_seen, 3);
    assert_int_equal(bt_log_get_level(), BT_LOG_ERROR);
    assert_int_equal(run(2, help), 0); /* the usage and the refusals print, as in the tools */
    assert_int_equal(run(2, bad), 2);
    assert_int_equal(run(3, unknown), 2);
    assert_int_equal(run_seen, -1);
    bt_log_set_level(level);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cfg_defaults_and_flags),
        cmocka_unit_test(test_cfg_rejects_bad_values),
        cmocka_unit_test(test_cfg_precedence_file_env_flag),
        cmocka_unit_test(test_cfg_positional_and_help),
        cmocka_unit_test(test_cfg_run_exit_status),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
