/* SPDX-License-Identifier: MIT */
/*
 * testutil.h - helpers shared by the cmocka tests: locating ../shared data (tests that need it
 * skip with a clear message when it is absent) and scratch files.
 */
#ifndef BATON_TESTUTIL_H
#define BATON_TESTUTIL_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

/* Path of a file under the shared data folder (BATON_SHARED_DIR, default ../shared next to
 * the source tree), written into buf; returns NULL (after printing why) when it is absent. */
const char *bt_test_shared_path(const char *rel, char *buf, size_t cap);

/* Skips the current cmocka test unless the shared file exists; evaluates to its path. */
#define BT_TEST_NEED_SHARED(rel, buf)                                                              \
    do {                                                                                           \
        if (!bt_test_shared_path((rel), (buf), sizeof(buf))) {                                     \
            skip();                                                                                \
        }                                                                                          \
    } while (0)

/* A fresh scratch file path under the build tree's tests/tmp (unique per process and call). */
const char *bt_test_tmp_path(const char *stem, char *buf, size_t cap);

/* Reads a whole file into a malloc'ed buffer (NUL-terminated); NULL on failure. */
char *bt_test_read_file(const char *path, size_t *len);

/* The next of a seeded pseudo-random sequence (xorshift64; *state must not be 0). */
uint32_t bt_test_rand(uint64_t *state);

/* One random edit of p[0..*n) (capacity cap), as damage in transit would make: a bit flipped,
 * a byte replaced, a byte inserted, a byte removed, or the rest cut off. */
void bt_test_mutate(uint64_t *state, uint8_t *p, size_t *n, size_t cap);

#endif
