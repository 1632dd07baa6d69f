/* SPDX-License-Identifier: MIT */
/*
 * test_stopcond.c - stop tokens, stop strings split across tokens, held-back text and the
 * token budget.
 */
// ctest-labels: unit
#include "testutil.h"

#include <string.h>

#include "common/status.h"
#include "common/stopcond.h"

/* Pushes pieces as tokens 100, 101, ...; collects the released text into out. */
static bt_stop_reason_t feed(bt_stop_t *s, const char *const *pieces, int n, char *out, int *n_fed)
{
    char buf[512];
    size_t len = 0, k;
    bt_stop_reason_t r = BT_STOP_NONE;
    out[0] = 0;
    for (*n_fed = 0; *n_fed < n && r == BT_STOP_NONE; (*n_fed)++) {
        r = bt_stop_push(s, 100 + *n_fed, pieces[*n_fed], strlen(pieces[*n_fed]), buf, sizeof buf,
                         &k);
        memcpy(out + len, buf, k);
        len += k;
    }
    if (r != BT_STOP_STRING) {
        k = bt_stop_flush(s, buf, sizeof buf);
        memcpy(out + len, buf, k);
        len += k;
    }
    out[len] = 0;
    return r;
}

static void test_stop_string_across_tokens(void **state)
{
    const char *stops[] = {"END", "\n\n"};
    bt_stop_params_t p = {.stop_strs = stops, .n_stop_strs = 2};
    bt_stop_t *s;
    char out[512];
    int n;
    assert_int_equal(bt_stop_create(&p, NULL, &s), BT_OK);
    const char *pieces[] = {"Hello", " E", "N", "ough", " then E", "ND", " never"};
    assert_int_equal(feed(s, pieces, 7, out, &n), BT_STOP_STRING);
    assert_int_equal(n, 6);
    assert_string_equal(out, "Hello ENough then ");
    bt_stop_destroy(s);
}

static void test_stop_holds_prefix_then_releases(void **state)
{
    const char *stops[] = {"###"};
    bt_stop_params_t p = {.stop_strs = stops, .n_stop_strs = 1, .max_tokens = 3};
    bt_stop_t *s;
    char buf[512];
    size_t k;
    assert_int_equal(bt_stop_create(&p, NULL, &s), BT_OK);
    assert_int_equal(bt_stop_push(s, 5, "a#", 2, buf, sizeof buf, &k), BT_STOP_NONE);
    assert_int_equal(k, 1); /* '#' held: it may start "###" */
    assert_int_equal(bt_stop_push(s, 6, "#b", 2, buf, sizeof buf, &k), BT_STOP_NONE);
    assert_int_equal(k, 3);
    assert_memory_equal(buf, "##b", 3);
    assert_int_equal(bt_stop_push(s, 7, "##", 2, buf, sizeof buf, &k), BT_STOP_LENGTH);
    assert_int_equal(k, 0);
    assert_int_equal(bt_stop_flush(s, buf, sizeof buf), 2);
    assert_int_equal(bt_stop_n_generated(s), 3);
    bt_stop_destroy(s);
}

static void test_stop_tokens_and_limits(void **state)
{
    int32_t ids[] = {7, 9};
    bt_stop_params_t p = {.stop_ids = ids, .n_stop_ids = 2};
    bt_stop_t *s;
    char buf[64];
    size_t k;
    assert_int_equal(bt_stop_create(&p, NULL, &s), BT_OK);
    assert_int_equal(bt_stop_push(s, 3, "x", 1, buf, sizeof buf, &k), BT_STOP_NONE);
    assert_int_equal(k, 1);
    assert_int_equal(bt_stop_push(s, 9, "y", 1, buf, sizeof buf, &k), BT_STOP_TOKEN);
    assert_int_equal(k, 0);
    bt_stop_destroy(s);

    const char *empty[] = {""};
    p = (bt_stop_params_t){.stop_strs = empty, .n_stop_strs = 1};
    assert_int_equal(bt_stop_create(&p, NULL, &s), BT_ERR_INVAL);
    p = (bt_stop_params_t){.n_stop_ids = BT_STOP_MAX_IDS + 1, .stop_ids = ids};
    assert_int_equal(bt_stop_create(&p, NULL, &s), BT_ERR_INVAL);
    assert_string_equal(bt_stop_reason_str(BT_STOP_STRING), "stop_string");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stop_string_across_tokens),
        cmocka_unit_test(test_stop_holds_prefix_then_releases),
        cmocka_unit_test(test_stop_tokens_and_limits),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
