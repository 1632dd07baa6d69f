/* SPDX-License-Identifier: MIT */
/*
 * kvx_testlib.h - what the kvx tests share: real KV pools on the CPU backend, random
 * fragmented block lists, an event log per context, and a driver for baton-kvx-peer (the
 * other process of the multi-process tests).
 *
 * Header-only (static functions): the test CMake loop builds each test_*.c on its own.
 */
#ifndef BATON_KVX_TESTLIB_H
#define BATON_KVX_TESTLIB_H

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/kvcache.h"
#include "common/log.h"
#include "kvx/kvx.h"
#include "kvx/kvx_debug.h"
#include "kvx/kvx_pattern.h"

static inline int64_t tl_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Deterministic randomness per test (xorshift). */
static inline uint64_t tl_rand(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* ---- pools ---- */

typedef struct {
    bt_backend_t *be;
    bt_kv_pool_t *pool;
    bt_kvx_layout_t layout;
} tl_pool_t;

static inline void tl_pool_init(tl_pool_t *p, const bt_kv_pool_params_t *pp, const char *model,
                                uint64_t seed)
{
    bt_backend_params_t bp = {.n_threads = 1, .max_rows = 1, .max_cols = 1};
    assert_int_equal(bt_backend_create("cpu", &bp, &p->be), BT_OK);
    assert_int_equal(bt_kv_pool_create(p->be, pp, &p->pool), BT_OK);
    bt_kvx_layout_from_pool(p->pool, model, &p->layout);
    bt_kvx_pattern_fill(bt_kv_pool_base(p->pool), &p->layout, seed);
}

static inline void tl_pool_fini(tl_pool_t *p)
{
    bt_kv_pool_destroy(p->pool);
    bt_backend_destroy(p->be);
}

static inline bt_kvx_params_t tl_kvx_params(const tl_pool_t *p, const char *backend,
                                            const char *name)
{
    bt_kvx_params_t kp = {.backend = backend,
                          .name = name,
                          .layout = p->layout,
                          .base = bt_kv_pool_base(p->pool),
                          .size_bytes = bt_kv_pool_size_bytes(p->pool)};
    return kp;
}

/* n distinct block ids out of [0, n_blocks), in runs of 1..max_run consecutive ids placed in
 * random order: the fragmented block tables a busy engine has. */
static inline void tl_random_blocks(uint64_t *rng, int32_t n_blocks, int32_t max_run, int32_t *out,
                                    int32_t n)
{
    int32_t *starts = malloc((size_t)n_blocks * sizeof *starts);
    int32_t *lens = malloc((size_t)n_blocks * sizeof *lens);
    int32_t n_chunks = 0;
    for (int32_t b = 0; b < n_blocks;) {
        int32_t len = 1 + (int32_t)(tl_rand(rng) % (uint64_t)max_run);
        if (b + len > n_blocks)
            len = n_blocks - b;
        starts[n_chunks] = b;
        lens[n_chunks++] = len;
        b += len;
    }
    for (int32_t i = n_chunks - 1; i > 0; i--) {
        int32_t j = (int32_t)(tl_rand(rng) % (uint64_t)(i + 1));
        int32_t s = starts[i], l = lens[i];
        starts[i] = starts[j];
        lens[i] = lens[j];
        starts[j] = s;
        lens[j] = l;
    }
    int32_t k = 0;
    for (int32_t c = 0; c < n_chunks && k < n; c++)
        for (int32_t i = 0; i < lens[c] && k < n; i++)
            out[k++] = starts[c] + i;
    free(starts);
    free(lens);
}

/* Messages the sender must produce: one per run that is consecutive on both sides, per layer. */
static inline int64_t tl_expected_msgs(const int32_t *src, const int32_t *dst, int32_t n,
                                       int32_t layers)
{
    int64_t segs = n > 0;
    for (int32_t i = 1; i < n; i++)
        segs += src[i] != src[i - 1] + 1 || dst[i] != dst[i - 1] + 1;
    return segs * layers;
}

/* ---- events ---- */

#define TL_MAX_EVENTS 512

typedef struct {
    bt_kvx_t *kvx;
    bt_kvx_event_t ev[TL_MAX_EVENTS];
    uint8_t meta[TL_MAX_EVENTS][64];
    int n;
} tl_log_t;

static inline void tl_log_drain(tl_log_t *log)
{
    bt_kvx_event_t e;
    while (bt_kvx_next_event(log->kvx, &e)) {
        assert_true(log->n < TL_MAX_EVENTS);
        if (e.meta_len && e.meta_len <= sizeof log->meta[0]) {
            memcpy(log->meta[log->n], e.meta, e.meta_len);
            e.meta = log->meta[log->n];
        }
        log->ev[log->n++] = e;
    }
}

/* Index of the first logged event of type (and req_id, unless req is UINT64_MAX); -1. */
static inline int tl_log_find(const tl_log_t *log, int type, uint64_t req)
{
    for (int i = 0; i < log->n; i++)
        if ((int)log->ev[i].type == type && (req == UINT64_MAX || log->ev[i].req_id == req))
            return i;
    return -1;
}

static inline int tl_log_count(const tl_log_t *log, int type)
{
    int c = 0;
    for (int i = 0; i < log->n; i++)
        c += (int)log->ev[i].type == type;
    return c;
}

/* ---- baton-kvx-peer ---- */

typedef struct {
    pid_t pid;
    int fd;
    char buf[1 << 16];
    size_t len;
    char *lines[256]; /* unread lines, events and replies, in order */
    int n_lines;
} tl_helper_t;

static inline void tl_helper_spawn(tl_helper_t *h)
{
    int sv[2];
    char path[4096], fdarg[16];
    const char *bin = getenv("BATON_BINARY_DIR");
    snprintf(path, sizeof path, "%s/bin/baton-kvx-peer", bin ? bin : BATON_BINARY_DIR);
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    memset(h, 0, sizeof *h);
    h->pid = fork();
    assert_true(h->pid >= 0);
    if (h->pid == 0) {
        int fd = dup(sv[1]); /* without CLOEXEC */
        snprintf(fdarg, sizeof fdarg, "%d", fd);
        execl(path, "baton-kvx-peer", "--fd", fdarg, (char *)NULL);
        _exit(127);
    }
    close(sv[1]);
    h->fd = sv[0];
}

static inline void tl_helper_reap(tl_helper_t *h)
{
    if (h->pid > 0) {
        kill(h->pid, SIGKILL);
        waitpid(h->pid, NULL, 0);
        h->pid = 0;
    }
    if (h->fd >= 0)
        close(h->fd);
    h->fd = -1;
    for (int i = 0; i < h->n_lines; i++)
        free(h->lines[i]);
    h->n_lines = 0;
}

/* Reads what is there (waiting up to wait_ms) and splits it into lines. */
static inline void tl_helper_read(tl_helper_t *h, int wait_ms)
{
    struct pollfd pfd = {.fd = h->fd, .events = POLLIN};
    if (h->pid <= 0 || poll(&pfd, 1, wait_ms) <= 0)
        return; /* nothing, or a peer process we killed on purpose */
    ssize_t r = read(h->fd, h->buf + h->len, sizeof h->buf - h->len - 1);
    assert_true(r > 0); /* the helper died unexpectedly */
    h->len += (size_t)r;
    char *nl;
    h->buf[h->len] = '\0';
    while ((nl = memchr(h->buf, '\n', h->len)) != NULL) {
        *nl = '\0';
        if (h->n_lines == 256) {
            /* Full of events nobody waits for: forget the oldest one. */
            int k = 0;
            while (k < 256 && strncmp(h->lines[k], "ev ", 3) != 0)
                k++;
            assert_true(k < 256);
            free(h->lines[k]);
            memmove(&h->lines[k], &h->lines[k + 1], (size_t)(255 - k) * sizeof h->lines[0]);
            h->n_lines--;
        }
        h->lines[h->n_lines++] = strdup(h->buf);
        size_t used = (size_t)(nl - h->buf) + 1;
        memmove(h->buf, h->buf + used, h->len - used);
        h->len -= used;
    }
}

/* Removes and returns the first unread line starting with prefix (caller frees). Meanwhile
 * keeps the local context (if any) progressing, so both ends of a handshake move. */
static inline char *tl_helper_take(tl_helper_t *h, tl_log_t *local, const char *prefix,
                                   int timeout_ms)
{
    int64_t until = tl_now_ms() + timeout_ms;
    for (;;) {
        for (int i = 0; i < h->n_lines; i++) {
            if (strncmp(h->lines[i], prefix, strlen(prefix)) == 0) {
                char *l = h->lines[i];
                memmove(&h->lines[i], &h->lines[i + 1], (size_t)(h->n_lines - i - 1) * sizeof l);
                h->n_lines--;
                return l;
            }
        }
        if (tl_now_ms() > until) {
            fprintf(stderr, "no '%s' from the peer process in %d ms\n", prefix, timeout_ms);
            fail();
        }
        if (local) {
            bt_kvx_wait(local->kvx, 1);
            tl_log_drain(local);
            tl_helper_read(h, 0);
        } else {
            tl_helper_read(h, 10);
        }
    }
}

/* Sends one command and returns its reply line (not an event); caller frees. */
static inline char *tl_helper_cmd(tl_helper_t *h, tl_log_t *local, const char *fmt, ...)
{
    char line[1 << 15];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line - 1, fmt, ap);
    va_end(ap);
    line[n++] = '\n';
    assert_int_equal(write(h->fd, line, (size_t)n), n);
    int64_t until = tl_now_ms() + 30000;
    for (;;) {
        for (int i = 0; i < h->n_lines; i++) {
            if (strncmp(h->lines[i], "ev ", 3) != 0) {
                char *l = h->lines[i];
                memmove(&h->lines[i], &h->lines[i + 1], (size_t)(h->n_lines - i - 1) * sizeof l);
                h->n_lines--;
                return l;
            }
        }
        assert_true(tl_now_ms() < until);
        if (local) {
            bt_kvx_wait(local->kvx, 1);
            tl_log_drain(local);
            tl_helper_read(h, 0);
        } else {
            tl_helper_read(h, 10);
        }
    }
}

/* A command whose reply must begin with "ok". */
static inline void tl_helper_ok(tl_helper_t *h, tl_log_t *local, const char *fmt, ...)
{
    char line[1 << 15];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    char *r = tl_helper_cmd(h, local, "%s", line);
    if (strncmp(r, "ok", 2) != 0)
        fprintf(stderr, "peer process answered '%s' to '%s'\n", r, line);
    assert_true(strncmp(r, "ok", 2) == 0);
    free(r);
}

static inline char *tl_hex(const uint8_t *d, size_t n)
{
    char *h = malloc(2 * n + 1);
    for (size_t i = 0; i < n; i++)
        sprintf(h + 2 * i, "%02x", d[i]);
    h[2 * n] = '\0';
    return h;
}

static inline size_t tl_unhex(const char *h, uint8_t *out, size_t cap)
{
    size_t n = 0;
    unsigned v;
    for (; h[0] && h[1] && n < cap && sscanf(h, "%2x", &v) == 1; h += 2)
        out[n++] = (uint8_t)v;
    return n;
}

static inline void tl_list(char *buf, size_t cap, const int32_t *ids, int32_t n)
{
    size_t off = 0;
    buf[0] = '\0';
    for (int32_t i = 0; i < n && off + 16 < cap; i++)
        off += (size_t)snprintf(buf + off, cap - off, "%s%d", i ? "," : "", ids[i]);
}

#endif
