/* SPDX-License-Identifier: MIT */
/*
 * testutil.c - shared test helpers (see testutil.h).
 */
#include "testutil.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

const char *bt_test_shared_path(const char *rel, char *buf, size_t cap)
{
    const char *dir = getenv("BATON_SHARED_DIR");
    if (!dir)
        dir = BATON_SOURCE_DIR "/../shared";
    snprintf(buf, cap, "%s/%s", dir, rel);
    if (access(buf, R_OK) != 0) {
        fprintf(stderr, "SKIP: shared data %s is absent (set BATON_SHARED_DIR)\n", buf);
        return NULL;
    }
    return buf;
}

const char *bt_test_tmp_path(const char *stem, char *buf, size_t cap)
{
    static int counter;
    char dir[512];
    snprintf(dir, sizeof dir, "%s/tests/tmp", BATON_BINARY_DIR);
    if (mkdir(dir, 0755) != 0 && errno != EEXIST) { /* test binaries run away from their build */
        const char *t = getenv("TMPDIR");
        snprintf(dir, sizeof dir, "%s", t && *t ? t : "/tmp");
    }
    snprintf(buf, cap, "%s/%s.%d.%d", dir, stem, (int)getpid(), counter++);
    return buf;
}

char *bt_test_read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    if (buf) {
        buf[n] = 0;
        if (len)
            *len = (size_t)n;
    }
    return buf;
}

uint32_t bt_test_rand(uint64_t *state)
{
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    return (uint32_t)(*state >> 32);
}

void bt_test_mutate(uint64_t *state, uint8_t *p, size_t *n, size_t cap)
{
    size_t at = *n ? bt_test_rand(state) % *n : 0;
    switch (bt_test_rand(state) % 5) {
    case 0:
        if (*n)
            p[at] ^= (uint8_t)(1u << (bt_test_rand(state) % 8));
        break;
    case 1:
        if (*n)
            p[at] = (uint8_t)bt_test_rand(state);
        break;
    case 2:
        if (*n < cap) {
            memmove(p + at + 1, p + at, *n - at);
            p[at] = (uint8_t)bt_test_rand(state);
            (*n)++;
        }
        break;
    case 3:
        if (*n) {
            memmove(p + at, p + at + 1, *n - at - 1);
            (*n)--;
        }
        break;
    default: *n = at;
    }
}
