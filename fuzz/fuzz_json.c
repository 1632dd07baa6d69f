/* SPDX-License-Identifier: MIT */
/*
 * fuzz_json.c - JSON text as baton's files hold it (latency profiles, plans, configs): parsed
 * by common/json.c with small limits, walked whole, then read as a latency profile.
 *
 * Properties: what parses has every string valid UTF-8 with its stated length, no nesting
 * deeper than the limit, and no value count over it; a profile that validates predicts finite,
 * non-negative times, and printing it and reading the print back gives the same profile (the
 * same text printed again).
 */
#include <math.h>
#include <string.h>

#include "common/json.h"
#include "common/profile.h"
#include "common/status.h"
#include "common/unicode.h"
#include "fuzz.h"

#define MAX_DEPTH 16
#define MAX_VALUES 4096

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_quiet_log();
    return 0;
}

static size_t walk(const bt_json_value_t *v, int depth)
{
    FUZZ_CHECK(depth <= MAX_DEPTH + 1, "depth %d", depth);
    size_t n = 1;
    const char *s;
    size_t len;
    double d;
    int b;
    switch (bt_json_type(v)) {
    case BT_JSON_STRING:
        FUZZ_CHECK(bt_json_string(v, &s, &len) == BT_OK, "a string that does not read");
        FUZZ_CHECK(fuzz_utf8_valid(s, len), "a string of invalid UTF-8");
        FUZZ_CHECK(s[len] == 0, "a string not terminated at its length");
        break;
    case BT_JSON_NUMBER:
        FUZZ_CHECK(bt_json_number(v, &d) == BT_OK && !isnan(d), "a number that does not read");
        break;
    case BT_JSON_BOOL: FUZZ_CHECK(bt_json_bool(v, &b) == BT_OK, "a bool"); break;
    case BT_JSON_ARRAY:
        for (size_t i = 0; i < bt_json_len(v); i++)
            n += walk(bt_json_at(v, i), depth + 1);
        break;
    case BT_JSON_OBJECT:
        for (size_t i = 0; i < bt_json_len(v); i++) {
            const char *k = bt_json_key_at(v, i);
            FUZZ_CHECK(k && fuzz_utf8_valid(k, strlen(k)), "a key");
            FUZZ_CHECK(bt_json_get(v, k) == bt_json_at(v, i), "key %zu not found by name", i);
            n += walk(bt_json_at(v, i), depth + 1);
        }
        break;
    default: break;
    }
    return n;
}

static char *print(const bt_profile_t *p, size_t *len)
{
    char *text = NULL;
    FILE *f = open_memstream(&text, len);
    FUZZ_CHECK(f && bt_profile_fprint(p, f) == BT_OK, "cannot print a profile");
    fclose(f);
    return text;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    bt_json_limits_t lim = {
        .max_bytes = 1u << 20, .max_depth = MAX_DEPTH, .max_values = MAX_VALUES};
    bt_json_t *doc = NULL;
    char err[256] = "";
    int st = bt_json_parse((const char *)data, size, &lim, &doc, err, sizeof err);
    if (st == BT_OK) {
        size_t n = walk(bt_json_root(doc), 1);
        FUZZ_CHECK(n <= MAX_VALUES, "%zu values", n);
        bt_json_destroy(doc);
    } else {
        FUZZ_CHECK(doc == NULL && strncmp(err, "line ", 5) == 0, "refused (%d) as '%s'", st, err);
    }

    bt_profile_t p;
    if (bt_profile_parse((const char *)data, size, "fuzz", &p) != BT_OK)
        return 0;
    double t[] = {bt_profile_prefill_ms(&p, 100, 100 * 100), bt_profile_decode_ms(&p, 4096, 8),
                  bt_profile_decode_ms(&p, 1, 1), bt_profile_transfer_ms(&p, 1000)};
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++)
        FUZZ_CHECK(t[i] >= 0 && isfinite(t[i]), "prediction %zu is %g", i, t[i]);
    size_t len1, len2;
    char *a = print(&p, &len1);
    bt_profile_t q;
    FUZZ_CHECK(bt_profile_parse(a, len1, "printed", &q) == BT_OK, "its print does not read: %s", a);
    char *b = print(&q, &len2);
    FUZZ_CHECK(len1 == len2 && memcmp(a, b, len1) == 0, "printed differently:\n%s\n%s", a, b);
    free(a);
    free(b);
    return 0;
}
