/* SPDX-License-Identifier: MIT */
/*
 * fuzz.h - what the fuzz targets share.
 *
 * Each fuzz/fuzz_<name>.c feeds bytes to one place where baton reads what it did not write
 * (a peer's socket, a model file, a profile, a client's prompt) through the same entry point a
 * daemon calls, and checks what must hold whatever the bytes: no crash, no sanitizer report,
 * no leak, and the target's own properties (FUZZ_CHECK). Built two ways (fuzz/CMakeLists.txt):
 * with libFuzzer for a campaign (BATON_FUZZ=ON, clang), and always with replay.c's main, which
 * runs the corpus checked in under fuzz/corpus/<name>/ as a test.
 */
#ifndef BATON_FUZZ_H
#define BATON_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "router/limits.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

/* A property every input must keep; a failure aborts, which both drivers report. */
#define FUZZ_CHECK(cond, ...)                                                                      \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: property failed: %s: ", __FILE__, __LINE__, #cond);            \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fputc('\n', stderr);                                                                   \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

/* Reads structured input off the front of the bytes; past the end it yields zeros. */
typedef struct {
    const uint8_t *p;
    size_t n;
} fuzz_in_t;

static inline uint8_t fuzz_u8(fuzz_in_t *in)
{
    if (!in->n)
        return 0;
    in->n--;
    return *in->p++;
}

static inline uint32_t fuzz_u32(fuzz_in_t *in)
{
    uint32_t v = 0;
    for (int i = 0; i < 4; i++)
        v |= (uint32_t)fuzz_u8(in) << (8 * i);
    return v;
}

static inline uint64_t fuzz_u64(fuzz_in_t *in)
{
    uint64_t lo = fuzz_u32(in);
    return lo | (uint64_t)fuzz_u32(in) << 32;
}

/* A file in memory that the code under test opens by its path, as it would one on disk. */
typedef struct {
    int fd;
    char path[32]; /* /proc/self/fd/N */
} fuzz_file_t;

void fuzz_file_open(fuzz_file_t *f, const char *name);
/* Makes the file's content data[0..n). */
void fuzz_file_set(const fuzz_file_t *f, const void *data, size_t n);

/* A client's GenerateRequest through the router's admission checks: what is admitted fits the
 * limits (prompt length, output length, token ids, objectives), what is refused says why and
 * holds nothing. Returns router_limits_check's status and leaves its message in err. */
int fuzz_admit(const router_limits_t *lim, const Baton__GenerateRequest *req, char *err,
               size_t cap);

/* 1 when s[0..n) is valid UTF-8 throughout (common/unicode.h's strict check). */
int fuzz_utf8_valid(const void *s, size_t n);

/* Quiets baton's log unless BATON_FUZZ_LOG is set (a level name: "debug" ... "error"). */
void fuzz_quiet_log(void);

#endif
