/* SPDX-License-Identifier: MIT */
/*
 * test_json.c - the strict JSON reader: valid documents and accessors, every class of invalid
 * input RFC 8259 forbids, the limits that protect against hostile files, error positions, and
 * the allocation-failure ladder.
 */
// ctest-labels: unit
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/alloc.h"
#include "common/json.h"
#include "common/status.h"

static int parse(const char *text, bt_json_t **doc, char *err, size_t cap)
{
    return bt_json_parse(text, strlen(text), NULL, doc, err, cap);
}

static void test_json_parses_values_and_accessors(void **state)
{
    (void)state;
    const char *text = " {\"a\": [1, -2.5e3, true, false, null], \"s\": \"x\\u00e9\\ud83d\\ude00\","
                       " \"o\": {}, \"e\": [], \"z\": \"\\u0000b\"}\n";
    bt_json_t *doc = NULL;
    char err[128];
    assert_int_equal(parse(text, &doc, err, sizeof err), BT_OK);
    const bt_json_value_t *root = bt_json_root(doc);
    assert_int_equal(bt_json_type(root), BT_JSON_OBJECT);
    assert_int_equal(bt_json_len(root), 5);
    assert_string_equal(bt_json_key_at(root, 1), "s");
    const bt_json_value_t *a = bt_json_get(root, "a");
    assert_int_equal(bt_json_len(a), 5);
    double x;
    int b;
    assert_int_equal(bt_json_number(bt_json_at(a, 1), &x), BT_OK);
    assert_true(x == -2500.0);
    assert_int_equal(bt_json_bool(bt_json_at(a, 2), &b), BT_OK);
    assert_int_equal(b, 1);
    assert_int_equal(bt_json_type(bt_json_at(a, 4)), BT_JSON_NULL);
    assert_null(bt_json_at(a, 5));
    const char *s;
    size_t len;
    assert_int_equal(bt_json_string(bt_json_get(root, "s"), &s, &len), BT_OK);
    assert_int_equal(len, 7);
    assert_memory_equal(s, "x\xc3\xa9\xf0\x9f\x98\x80", 7);
    assert_int_equal(bt_json_string(bt_json_get(root, "z"), &s, &len), BT_OK);
    assert_int_equal(len, 2);
    assert_int_equal(bt_json_number(bt_json_get(root, "s"), &x), BT_ERR_INVAL);
    assert_null(bt_json_get(bt_json_get(root, "missing"), "deeper"));
    assert_int_equal(bt_json_len(bt_json_get(root, "o")), 0);
    bt_json_destroy(doc);
    bt_json_destroy(NULL);
}

static void test_json_refuses_what_rfc8259_forbids(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "",
        "  ",
        "{",
        "[1,]",
        "{\"a\":1,}",
        "01",
        "1.",
        ".5",
        "1e",
        "+1",
        "NaN",
        "Infinity",
        "[1 2]",
        "{\"a\" 1}",
        "{1:2}",
        "\"abc",
        "\"a\tb\"",
        "\"\\x\"",
        "\"\\ud800\"",
        "\"\\udc00\"",
        "\"\\u12g4\"",
        "tru",
        "nul",
        "[1] x",
        "/* c */ 1",
        "{\"a\":1,\"a\":2}",
        "\"\xc0\xaf\"",
        "\"\xed\xa0\x80\"",
        "\"\xf5\x80\x80\x80\"",
        "1e999",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        bt_json_t *doc = (bt_json_t *)0x1;
        char err[128];
        int st = parse(bad[i], &doc, err, sizeof err);
        if (st == BT_OK)
            fail_msg("accepted invalid JSON #%zu: %s", i, bad[i]);
        assert_true(st == BT_ERR_FORMAT || st == BT_ERR_RANGE);
        assert_ptr_equal(doc, (bt_json_t *)0x1); /* untouched on error */
        assert_true(strncmp(err, "line ", 5) == 0);
    }
}

static void test_json_reports_line_and_column(void **state)
{
    (void)state;
    bt_json_t *doc = NULL;
    char err[128];
    assert_int_equal(parse("{\n  \"a\": 1,\n  \"b\": ?\n}", &doc, err, sizeof err), BT_ERR_FORMAT);
    assert_string_equal(err, "line 3 column 8: unexpected character");
}

static void test_json_limits_depth_size_values(void **state)
{
    (void)state;
    char deep[300];
    memset(deep, '[', 100);
    memset(deep + 100, ']', 100);
    deep[200] = 0;
    bt_json_t *doc = NULL;
    char err[128];
    bt_json_limits_t lim = {.max_depth = 10};
    assert_int_equal(bt_json_parse(deep, strlen(deep), &lim, &doc, err, sizeof err), BT_ERR_RANGE);
    assert_non_null(strstr(err, "nesting"));
    const char *nine = "[[[[[[[[[1]]]]]]]]]";
    assert_int_equal(bt_json_parse(nine, strlen(nine), &lim, &doc, err, sizeof err), BT_OK);
    bt_json_destroy(doc);
    lim = (bt_json_limits_t){.max_bytes = 4};
    assert_int_equal(bt_json_parse("12345", 5, &lim, &doc, err, sizeof err), BT_ERR_RANGE);
    lim = (bt_json_limits_t){.max_values = 3};
    assert_int_equal(bt_json_parse("[1,2,3]", 7, &lim, &doc, err, sizeof err), BT_ERR_RANGE);
    assert_int_equal(bt_json_parse("[1,2]", 5, &lim, &doc, err, sizeof err), BT_OK);
    bt_json_destroy(doc);
}

static void test_json_many_keys_and_duplicates(void **state)
{
    (void)state;
    size_t n = 20000, cap = n * 24 + 16, off = 0;
    char *text = test_malloc(cap);
    off += (size_t)snprintf(text + off, cap - off, "{");
    for (size_t i = 0; i < n; i++)
        off += (size_t)snprintf(text + off, cap - off, "%s\"k%zu\":%zu", i ? "," : "", i, i);
    snprintf(text + off, cap - off, "}");
    bt_json_t *doc = NULL;
    char err[128];
    assert_int_equal(parse(text, &doc, err, sizeof err), BT_OK);
    double x;
    assert_int_equal(bt_json_number(bt_json_get(bt_json_root(doc), "k19999"), &x), BT_OK);
    assert_true(x == 19999);
    bt_json_destroy(doc);
    memcpy(strstr(text, "\"k19999\""), "\"k19998\"", 8);
    assert_int_equal(parse(text, &doc, err, sizeof err), BT_ERR_FORMAT);
    assert_non_null(strstr(err, "duplicate key \"k19998\""));
    test_free(text);
}

static void test_json_allocation_failures(void **state)
{
    (void)state;
    const char *text = "{\"a\": [1, 2, {\"b\": \"c\"}], \"d\": \"e\"}";
    int fired = 1;
    for (long n = 1; fired; n++) {
        bt_json_t *doc = NULL;
        bt_alloc_fail_at(n);
        int st = parse(text, &doc, NULL, 0);
        fired = bt_alloc_fault_fired();
        bt_alloc_fail_at(0);
        if (fired) {
            assert_int_equal(st, BT_ERR_NOMEM);
        } else {
            assert_int_equal(st, BT_OK);
            bt_json_destroy(doc);
        }
    }
}

static void test_json_file(void **state)
{
    (void)state;
    char path[512];
    bt_test_tmp_path("doc.json", path, sizeof path);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs("{\"x\": [1, 2]}", f);
    fclose(f);
    bt_json_t *doc = NULL;
    char err[128];
    assert_int_equal(bt_json_parse_file(path, NULL, &doc, err, sizeof err), BT_OK);
    assert_int_equal(bt_json_len(bt_json_get(bt_json_root(doc), "x")), 2);
    bt_json_destroy(doc);
    bt_json_limits_t lim = {.max_bytes = 5};
    assert_int_equal(bt_json_parse_file(path, &lim, &doc, err, sizeof err), BT_ERR_RANGE);
    remove(path);
    assert_int_equal(bt_json_parse_file(path, NULL, &doc, err, sizeof err), BT_ERR_IO);
}

/* Written strings parse back to the same bytes, NULs and control characters included. */
static void test_json_write_round_trips_bytes(void **state)
{
    (void)state;
    const char in[] = "a\0\"b\\\n\x01\xc3\xa9z";
    char *buf = NULL;
    size_t size = 0;
    FILE *f = open_memstream(&buf, &size);
    assert_non_null(f);
    fputc('[', f);
    bt_json_write_strn(f, in, sizeof in - 1);
    fputc(',', f);
    bt_json_write_str(f, "x\"y");
    fputc(']', f);
    fclose(f);
    assert_non_null(strstr(buf, "\\u0000"));
    bt_json_t *doc = NULL;
    char err[128];
    assert_int_equal(parse(buf, &doc, err, sizeof err), BT_OK);
    free(buf);
    const char *s;
    size_t len;
    assert_int_equal(bt_json_string(bt_json_at(bt_json_root(doc), 0), &s, &len), BT_OK);
    assert_int_equal(len, sizeof in - 1);
    assert_memory_equal(s, in, len);
    assert_int_equal(bt_json_string(bt_json_at(bt_json_root(doc), 1), &s, &len), BT_OK);
    assert_string_equal(s, "x\"y");
    bt_json_destroy(doc);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_json_parses_values_and_accessors),
        cmocka_unit_test(test_json_refuses_what_rfc8259_forbids),
        cmocka_unit_test(test_json_reports_line_and_column),
        cmocka_unit_test(test_json_limits_depth_size_values),
        cmocka_unit_test(test_json_many_keys_and_duplicates),
        cmocka_unit_test(test_json_allocation_failures),
        cmocka_unit_test(test_json_file),
        cmocka_unit_test(test_json_write_round_trips_bytes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
