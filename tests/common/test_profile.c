/* SPDX-License-Identifier: MIT */
/*
 * test_profile.c - latency profiles: a full file is read into the right fields, the models
 * evaluate as DistServe's formulas say, and wrong files (missing or misspelt keys, negative or
 * non-numeric coefficients, zero bandwidth) are refused.
 */
// ctest-labels: unit
#include "testutil.h"
#include "testprofile.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "common/log.h"
#include "common/profile.h"
#include "common/status.h"

static const char *full =
    "{\"version\": 1, \"model\": \"m:2x64x4x2x512\", \"backend\": \"cpu\", \"device\": \"x\","
    " \"tp\": 2, \"prefill\": {\"a_ms\": 5, \"b_ms_per_token\": 0.1, \"c_ms_per_token2\": 1e-5},"
    " \"decode\": {\"a_ms\": 10, \"b_ms_per_ctx_token\": 0.001, \"c_ms_per_seq\": 0.5},"
    " \"decode_knee\": {\"batch\": 64, \"a_ms\": 20, \"b_ms_per_ctx_token\": 0.001,"
    " \"c_ms_per_seq\": 1}, \"transfer\": {\"latency_ms\": 0.2, \"gb_per_s\": 10},"
    " \"kv_bytes_per_token\": 131072, \"max_batch\": 256}";

static void test_profile_reads_every_field(void **state)
{
    (void)state;
    bt_profile_t p;
    assert_int_equal(bt_profile_parse(full, strlen(full), "t", &p), BT_OK);
    assert_string_equal(p.model, "m:2x64x4x2x512");
    assert_string_equal(p.backend, "cpu");
    assert_int_equal(p.tp, 2);
    assert_int_equal(p.decode_knee_batch, 64);
    assert_int_equal(p.max_batch, 256);
    /* prefill: 5 + 0.1 * 1000 + 1e-5 * 1e6 = 115 */
    assert_true(fabs(bt_profile_prefill_ms(&p, 1000, 1e6) - 115.0) < 1e-9);
    assert_true(bt_profile_prefill_ms(&p, 0, 0) == 0);
    /* decode below the knee: 10 + 0.001 * 8000 + 0.5 * 8 = 22; above: 20 + 0.001 * 64000 + 64 */
    assert_true(fabs(bt_profile_decode_ms(&p, 8000, 8) - 22.0) < 1e-9);
    assert_true(fabs(bt_profile_decode_ms(&p, 64000, 64) - 148.0) < 1e-9);
    /* transfer: 0.2 ms + 1000 * 131072 B / 10 GB/s = 0.2 + 13.1072 ms */
    assert_true(fabs(bt_profile_transfer_ms(&p, 1000) - 13.3072) < 1e-9);
}

static void test_profile_minimal_defaults(void **state)
{
    (void)state;
    const char *min = "{\"prefill\": {\"a_ms\": 1, \"b_ms_per_token\": 0, \"c_ms_per_token2\": 0},"
                      " \"decode\": {\"a_ms\": 1, \"b_ms_per_ctx_token\": 0, \"c_ms_per_seq\": 0},"
                      " \"transfer\": {\"latency_ms\": 0, \"gb_per_s\": 1},"
                      " \"kv_bytes_per_token\": 1}";
    bt_profile_t p;
    assert_int_equal(bt_profile_parse(min, strlen(min), "t", &p), BT_OK);
    assert_int_equal(p.tp, 1);
    assert_int_equal(p.decode_knee_batch, 0);
    assert_string_equal(p.model, "");
}

/* Replaces the first occurrence of from in full with to and expects the parse to fail. */
static void expect_refused(const char *from, const char *to, int want)
{
    char text[2048];
    const char *at = strstr(full, from);
    assert_non_null(at);
    snprintf(text, sizeof text, "%.*s%s%s", (int)(at - full), full, to, at + strlen(from));
    bt_profile_t p;
    memset(&p, 0x5a, sizeof p);
    int st = bt_profile_parse(text, strlen(text), "t", &p);
    if (st != want)
        fail_msg("'%s' -> '%s': status %d, want %d", from, to, st, want);
    assert_int_equal(((unsigned char *)&p)[0], 0x5a); /* untouched on error */
}

static void test_profile_refuses_bad_files(void **state)
{
    (void)state;
    bt_log_level_t old = bt_log_get_level();
    bt_log_set_level(BT_LOG_OFF);
    expect_refused("\"a_ms\": 5", "\"a_ms\": -5", BT_ERR_RANGE);
    expect_refused("\"a_ms\": 5", "\"a_ms\": \"5\"", BT_ERR_FORMAT);
    expect_refused("\"a_ms\": 5,", "", BT_ERR_FORMAT);
    expect_refused("\"b_ms_per_token\"", "\"b_ms_per_tokn\"", BT_ERR_FORMAT);
    expect_refused("\"tp\": 2", "\"tp\": 0", BT_ERR_RANGE);
    expect_refused("\"tp\": 2", "\"tp\": 1.5", BT_ERR_RANGE);
    expect_refused("\"version\": 1", "\"version\": 2", BT_ERR_RANGE);
    expect_refused("\"gb_per_s\": 10", "\"gb_per_s\": 0", BT_ERR_RANGE);
    expect_refused("\"kv_bytes_per_token\": 131072", "\"kv_bytes_per_token\": 0", BT_ERR_RANGE);
    expect_refused("\"max_batch\": 256", "\"max_batch\": 256, \"extra\": 1", BT_ERR_FORMAT);
    expect_refused("\"batch\": 64", "\"batch\": 1", BT_ERR_RANGE);
    expect_refused("\"decode\": {", "\"decode\": [", BT_ERR_FORMAT);
    expect_refused("\"device\": \"x\"", "\"device\": 3", BT_ERR_FORMAT);
    expect_refused("}", "}}", BT_ERR_FORMAT);
    bt_profile_t p;
    assert_int_equal(bt_profile_load("/nonexistent/profile.json", &p), BT_ERR_IO);
    bt_log_set_level(old);
}

static void test_profile_load_file(void **state)
{
    (void)state;
    char path[512];
    bt_test_tmp_path("profile.json", path, sizeof path);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(full, f);
    fclose(f);
    bt_profile_t p;
    assert_int_equal(bt_profile_load(path, &p), BT_OK);
    assert_true(p.kv_bytes_per_token == 131072);
    remove(path);
}

/* What bt_profile_write writes reads back to the same values, fit quality and note included;
 * a hand-written profile may carry both. */
static void test_profile_write_round_trip(void **state)
{
    (void)state;
    bt_profile_t p, q;
    assert_int_equal(bt_profile_parse(full, strlen(full), "t", &p), BT_OK);
    p.prefill.c_ms_per_token2 = 1.0 / 3e5; /* not exact in decimal: needs all 17 digits */
    p.fit_prefill = (bt_profile_fit_t){12, 0.99876, 0.0412};
    p.fit_decode = (bt_profile_fit_t){40, -0.5, 1.5};
    snprintf(p.note, sizeof p.note, "from \"paper\" table 3\\n\tline two");
    char path[512];
    bt_test_tmp_path("profile-rt.json", path, sizeof path);
    assert_int_equal(bt_profile_write(&p, path), BT_OK);
    assert_int_equal(bt_profile_load(path, &q), BT_OK);
    bt_test_assert_profile_equal(&p, &q);
    remove(path);

    const char *hand =
        "{\"prefill\": {\"a_ms\": 1, \"b_ms_per_token\": 0, \"c_ms_per_token2\": 0},"
        " \"decode\": {\"a_ms\": 1, \"b_ms_per_ctx_token\": 0, \"c_ms_per_seq\": 0},"
        " \"transfer\": {\"latency_ms\": 0, \"gb_per_s\": 1},"
        " \"kv_bytes_per_token\": 1, \"note\": \"DistServe A100\","
        " \"fit\": {\"decode\": {\"points\": 3, \"r2\": 0.9, \"max_rel_err\": 0.1}}}";
    assert_int_equal(bt_profile_parse(hand, strlen(hand), "t", &q), BT_OK);
    assert_string_equal(q.note, "DistServe A100");
    assert_int_equal(q.fit_decode.n_points, 3);
    assert_int_equal(q.fit_prefill.n_points, 0);
    bt_log_level_t old = bt_log_get_level();
    bt_log_set_level(BT_LOG_OFF);
    char bad[1024];
    snprintf(bad, sizeof bad, "%s", hand);
    memcpy(strstr(bad, "max_rel_err"), "max_rel_erx", 11); /* a misspelt fit key */
    assert_int_equal(bt_profile_parse(bad, strlen(bad), "t", &q), BT_ERR_FORMAT);
    snprintf(bad, sizeof bad, "%s", hand);
    memcpy(strstr(bad, "0.9"), "1e9", 3); /* r2 may be anything finite, errors not < 0 */
    assert_int_equal(bt_profile_parse(bad, strlen(bad), "t", &q), BT_OK);
    memcpy(strstr(bad, "0.1}"), "-.1", 3);
    assert_int_equal(bt_profile_parse(bad, strlen(bad), "t", &q), BT_ERR_FORMAT);
    bt_log_set_level(old);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_profile_reads_every_field),
        cmocka_unit_test(test_profile_minimal_defaults),
        cmocka_unit_test(test_profile_refuses_bad_files),
        cmocka_unit_test(test_profile_load_file),
        cmocka_unit_test(test_profile_write_round_trip),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
