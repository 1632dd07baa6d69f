/* SPDX-License-Identifier: MIT */
/*
 * kvbench_run.c - the measurement of baton-kvbench: a sender process, a receiving context,
 * and for every size a latency pass (one transfer at a time) and a bandwidth pass (a window
 * of transfers in flight, like ucx_perftest's outstanding sends).
 *
 * Geometry: Llama-3-8B by default, 64 KiB per block and layer; a size S is S / 2 MiB blocks of
 * all 32 layers, and below 2 MiB a model of S / 64 KiB layers with one block. Both pools are
 * contiguous, so each layer is one message: the benchmark measures the transport, and the
 * tests cover fragmented layouts. Both processes spin, as ucx_perftest does.
 */
#include "kvbench.h"

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
#include "kvx/kvx.h"
#include "kvx/kvx_pattern.h"

#define SEED 7

typedef struct {
    pid_t pid;
    int fd;
    char buf[1 << 16];
    size_t len;
} child_t;

typedef struct {
    const kvb_opts_t *o;
    const char *transport;
    int layers;
    int blocks_max; /* source blocks the sender holds */
    child_t child;
    bt_backend_t *be;
    bt_kv_pool_t *pool;
    bt_kvx_layout_t layout;
    bt_kvx_t *kvx;
    bt_kvx_peer_t *peer;
    uint64_t next_req;
} bench_t;

static double now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

static size_t block_layer_bytes(const kvb_opts_t *o)
{
    return 2 * (size_t)o->block_size * (size_t)o->kv_heads * (size_t)o->head_dim * (o->f16 ? 2 : 4);
}

static int layers_for(const kvb_opts_t *o, size_t size)
{
    size_t l = size / block_layer_bytes(o);
    return l >= (size_t)o->max_layers ? o->max_layers : (int)(l ? l : 1);
}

static int window_for(const kvb_opts_t *o, size_t size)
{
    /* Shared destinations hold one transfer's blocks whatever the window. */
    if (o->window)
        return o->window;
    return size <= (16u << 20) ? 4 : size <= (256u << 20) ? 2 : 1;
}

static int iters_for(const kvb_opts_t *o, size_t size)
{
    if (o->iters)
        return o->iters;
    size_t n = (1024u << 20) / size;
    return n < 8 ? 8 : n > 2000 ? 2000 : (int)n;
}

/* ---- the sender process ---- */

static int child_spawn(bench_t *b)
{
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
        return -1;
    b->child.pid = fork();
    if (b->child.pid < 0)
        return -1;
    if (b->child.pid == 0) {
        char fdarg[16];
        snprintf(fdarg, sizeof fdarg, "%d", dup(sv[1]));
        execl(b->o->peer_path, "baton-kvx-peer", "--fd", fdarg, (char *)NULL);
        _exit(127);
    }
    close(sv[1]);
    b->child.fd = sv[0];
    b->child.len = 0;
    return 0;
}

static void child_reap(bench_t *b)
{
    if (b->child.pid > 0) {
        if (write(b->child.fd, "exit\n", 5) != 5)
            kill(b->child.pid, SIGKILL);
        waitpid(b->child.pid, NULL, 0);
        close(b->child.fd);
        b->child.pid = 0;
    }
}

/* Sends a command, returns its reply (not an event line) in a static buffer, progressing the
 * local context meanwhile so that handshakes can move. */
static const char *child_cmd(bench_t *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static const char *child_cmd(bench_t *b, const char *fmt, ...)
{
    static char line[1 << 16];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line - 1, fmt, ap);
    va_end(ap);
    line[n++] = '\n';
    if (write(b->child.fd, line, (size_t)n) != n)
        return "err write";
    for (;;) {
        char *nl = memchr(b->child.buf, '\n', b->child.len);
        if (nl) {
            size_t used = (size_t)(nl - b->child.buf) + 1;
            *nl = '\0';
            int is_event = strncmp(b->child.buf, "ev ", 3) == 0;
            if (!is_event)
                memcpy(line, b->child.buf, used);
            memmove(b->child.buf, b->child.buf + used, b->child.len - used);
            b->child.len -= used;
            if (!is_event)
                return line;
            continue;
        }
        if (b->kvx)
            bt_kvx_progress(b->kvx);
        struct pollfd pfd = {.fd = b->child.fd, .events = POLLIN};
        if (poll(&pfd, 1, b->kvx ? 0 : 100) <= 0)
            continue;
        ssize_t r =
            read(b->child.fd, b->child.buf + b->child.len, sizeof b->child.buf - b->child.len - 1);
        if (r <= 0)
            return "err peer process exited";
        b->child.len += (size_t)r;
    }
}

/* ---- setup ---- */

/* shm maps the peer's pool; cma, tcp and cuda move every byte through UCX. */
static int map_of(const bench_t *b)
{
    return strcmp(b->transport, "shm") == 0 ? 0 : -1;
}

/* Where both pools live: GPU memory (device 0) for cuda, else host memory. */
static const char *pool_backend(const bench_t *b)
{
    return strcmp(b->transport, "cuda") == 0 ? "cuda" : "cpu";
}

/* UCX transports: the GPU's own (IPC between processes, copies) with shared memory for the
 * messages; shared memory; TCP. */
static const char *tls_of(const bench_t *b)
{
    return strcmp(b->transport, "cuda") == 0  ? "sm,cuda_ipc,cuda_copy"
           : strcmp(b->transport, "tcp") == 0 ? "tcp"
                                              : "sm";
}

/* Starts the sender process; its address goes into addr. */
static int setup_child(bench_t *b, const char *tls, uint8_t *addr, size_t *len)
{
    const kvb_opts_t *o = b->o;
    if (child_spawn(b) != 0)
        return -1;
    const char *r =
        child_cmd(b, "init ucx %s prefill llama %d %d %d %d %s %d %d 10000 %d %s %d %d", tls,
                  b->layers, o->kv_heads, o->head_dim, o->block_size, o->f16 ? "f16" : "f32",
                  b->blocks_max, SEED, map_of(b), pool_backend(b), o->pack, o->stream);
    if (strncmp(r, "ok ", 3) != 0) {
        fprintf(stderr, "kvbench: sender process: %s\n", r);
        return -1;
    }
    *len = 0;
    for (const char *h = r + 3; h[0] && h[1] && *len < BT_KVX_ADDRESS_MAX; h += 2) {
        unsigned v;
        sscanf(h, "%2x", &v);
        addr[(*len)++] = (uint8_t)v;
    }
    return 0;
}

static int setup(bench_t *b, int blocks_recv)
{
    const kvb_opts_t *o = b->o;
    const char *tls = tls_of(b);
    uint8_t addr[BT_KVX_ADDRESS_MAX];
    size_t len;
    if (setup_child(b, tls, addr, &len) != 0)
        return -1;
    bt_backend_params_t bp = {.n_threads = 1, .max_rows = 1, .max_cols = 1};
    bt_kv_pool_params_t pp = {.n_layers = b->layers,
                              .n_kv_heads = o->kv_heads,
                              .head_dim = o->head_dim,
                              .block_size = o->block_size,
                              .type = o->f16 ? BT_TYPE_F16 : BT_TYPE_F32,
                              .n_blocks = blocks_recv};
    if (bt_backend_create(pool_backend(b), &bp, &b->be) != BT_OK ||
        bt_kv_pool_create(b->be, &pp, &b->pool) != BT_OK) {
        fprintf(stderr, "kvbench: cannot make a %s pool\n", pool_backend(b));
        return -1;
    }
    /* Touch every page now, so no first-touch fault is timed. */
    if (bt_kv_pool_device_memory(b->pool)) {
        void *zero = calloc(1, bt_kv_pool_size_bytes(b->pool));
        if (!zero)
            return -1;
        bt_kv_pool_upload(b->pool, zero);
        free(zero);
    } else {
        memset(bt_kv_pool_base(b->pool), 0, bt_kv_pool_size_bytes(b->pool));
    }
    bt_kvx_layout_from_pool(b->pool, "llama", &b->layout);
    bt_kvx_params_t kp = {.name = "decode",
                          .layout = b->layout,
                          .base = bt_kv_pool_base(b->pool),
                          .size_bytes = bt_kv_pool_size_bytes(b->pool),
                          .ucx_tls = tls,
                          .peer_timeout_ms = 10000,
                          .lease_ms = 10000,
                          .map_peers = map_of(b),
                          .pack = b->o->pack,
                          .stream = b->o->stream,
                          .device_memory = bt_kv_pool_device_memory(b->pool)};
    if (bt_kvx_create(&kp, &b->kvx) != BT_OK ||
        bt_kvx_connect(b->kvx, addr, len, &b->peer) != BT_OK)
        return -1;
    bt_kvx_event_t ev;
    while (bt_kvx_peer_status(b->peer) == BT_AGAIN)
        if (bt_kvx_progress(b->kvx))
            while (bt_kvx_next_event(b->kvx, &ev))
                ;
    if (bt_kvx_peer_status(b->peer) != BT_OK)
        return -1;
    const char *r = child_cmd(b, "spin 1");
    if (strncmp(r, "ok", 2) == 0)
        r = child_cmd(b, "quiet 1");
    if (strncmp(r, "ok", 2) == 0 && o->pin)
        r = child_cmd(b, "pin 1");
    return strncmp(r, "ok", 2) == 0 ? 0 : -1;
}

static void teardown(bench_t *b)
{
    child_reap(b);
    bt_kvx_destroy(b->kvx);
    bt_kv_pool_destroy(b->pool);
    bt_backend_destroy(b->be);
    b->kvx = NULL;
    b->pool = NULL;
    b->be = NULL;
}

/* ---- measurement ---- */

typedef struct {
    bt_kvx_recv_t *recv;
    double t0;
    int busy;
} slot_t;

static int post(bench_t *b, slot_t *s, const int32_t *dst, int32_t nb)
{
    bt_kvx_recv_params_t rp = {.req_id = ++b->next_req,
                               .blocks = dst,
                               .n_blocks = nb,
                               .n_tokens = nb * b->o->block_size,
                               .user = s};
    s->t0 = now_us();
    s->busy = 1;
    return bt_kvx_recv_post(b->peer, &rp, &s->recv);
}

/* Spins until one transfer ends; returns its slot (its latency in *us), or NULL on error. */
static slot_t *wait_one(bench_t *b, double *us)
{
    for (;;) {
        bt_kvx_progress(b->kvx);
        bt_kvx_event_t ev;
        while (bt_kvx_next_event(b->kvx, &ev)) {
            if (ev.type == BT_KVX_EV_PEER_DOWN) {
                fprintf(stderr, "kvbench: sender lost: %s\n", bt_status_str(ev.status));
                return NULL;
            }
            if (ev.type != BT_KVX_EV_RECV_DONE)
                continue;
            slot_t *s = ev.user;
            *us = now_us() - s->t0;
            bt_kvx_recv_release(ev.recv);
            s->busy = 0;
            if (ev.status != BT_OK) {
                fprintf(stderr, "kvbench: transfer failed: %s\n", bt_status_str(ev.status));
                return NULL;
            }
            return s;
        }
    }
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static int latency_pass(bench_t *b, const int32_t *dst, int32_t nb, int iters, kvb_result_t *r)
{
    double *lat = malloc((size_t)iters * sizeof *lat);
    slot_t s = {0};
    bt_kvx_stats_t st0, st1;
    bt_kvx_get_stats(b->kvx, &st0);
    for (int i = -2; lat && i < iters; i++) { /* two warm-up transfers */
        double us;
        if (post(b, &s, dst, nb) != BT_OK || !wait_one(b, &us)) {
            free(lat);
            return -1;
        }
        if (i >= 0)
            lat[i] = us;
    }
    if (!lat)
        return -1;
    bt_kvx_get_stats(b->kvx, &st1);
    r->msgs = (int)((st1.n_data_msgs_recv - st0.n_data_msgs_recv + (iters + 2) / 2) / (iters + 2));
    r->path = bt_kvx_peer_data_path(b->peer);
    qsort(lat, (size_t)iters, sizeof *lat, cmp_double);
    r->p50_us = lat[iters / 2];
    r->p99_us = lat[(iters * 99) / 100 < iters ? (iters * 99) / 100 : iters - 1];
    free(lat);
    return 0;
}

static int bandwidth_pass(bench_t *b, const int32_t *dst, int32_t nb, int window, int iters,
                          kvb_result_t *r)
{
    slot_t slots[16] = {{0}};
    double t0 = now_us(), us;
    int posted = 0, done = 0;
    size_t stride = b->o->distinct_dst ? (size_t)nb : 0;
    for (int w = 0; w < window && posted < iters; w++, posted++)
        if (post(b, &slots[w], dst + (size_t)w * stride, nb) != BT_OK)
            return -1;
    while (done < iters) {
        slot_t *s = wait_one(b, &us);
        if (!s)
            return -1;
        done++;
        if (posted < iters) {
            int w = (int)(s - slots);
            if (post(b, s, dst + (size_t)w * stride, nb) != BT_OK)
                return -1;
            posted++;
        }
    }
    double secs = (now_us() - t0) / 1e6;
    r->gb_per_s = (double)r->size_bytes * iters / secs / 1e9;
    return 0;
}

static int measure(bench_t *b, size_t size, int mode, kvb_result_t *r)
{
    int32_t nb = (int32_t)(size / (block_layer_bytes(b->o) * (size_t)b->layers));
    int window = window_for(b->o, size), iters = iters_for(b->o, size);
    int32_t *src = malloc((size_t)nb * sizeof *src);
    int32_t *dst = malloc((size_t)nb * (size_t)window * sizeof *dst);
    char *list = malloc((size_t)nb * 12 + 16);
    if (!src || !dst || !list)
        return -1;
    size_t off = 0;
    for (int32_t i = 0; i < nb; i++) {
        src[i] = i;
        off += (size_t)sprintf(list + off, "%s%d", i ? "," : "", i);
    }
    for (int32_t i = 0; i < nb * window; i++)
        dst[i] = i;
    *r = (kvb_result_t){.transport = b->transport,
                        .mode = mode ? "layer" : "whole",
                        .size_bytes = (size_t)nb * block_layer_bytes(b->o) * (size_t)b->layers,
                        .layers = b->layers,
                        .blocks = nb,
                        .window = window,
                        .iters = iters};
    int st = strncmp(child_cmd(b, "serve %s %d %s", mode ? "layer" : "whole", nb * b->o->block_size,
                               list),
                     "ok", 2) == 0
                 ? 0
                 : -1;
    if (st == 0)
        st = latency_pass(b, dst, nb, iters, r);
    if (st == 0 && bt_kvx_pattern_check_pool(b->pool, &b->layout, SEED, src, dst, nb) != -1) {
        fprintf(stderr, "kvbench: received bytes differ from the source\n");
        st = -1;
    }
    if (st == 0)
        st = bandwidth_pass(b, dst, nb, window, iters, r);
    free(src);
    free(dst);
    free(list);
    return st;
}

int kvb_run_transport(const kvb_opts_t *o, const char *transport,
                      void (*out)(const kvb_opts_t *o, const kvb_result_t *r))
{
    /* One sender process and one receiving pool per layer count. */
    for (int i = 0; i < o->n_sizes; i++) {
        int layers = layers_for(o, o->sizes[i]);
        int seen = 0;
        for (int j = 0; j < i; j++)
            seen |= layers_for(o, o->sizes[j]) == layers;
        if (seen)
            continue;
        bench_t b = {.o = o, .transport = transport, .layers = layers};
        int recv_blocks = 0;
        for (int j = 0; j < o->n_sizes; j++) {
            if (layers_for(o, o->sizes[j]) != layers)
                continue;
            int nb = (int)(o->sizes[j] / (block_layer_bytes(o) * (size_t)layers));
            b.blocks_max = nb > b.blocks_max ? nb : b.blocks_max;
            int need = nb * (o->distinct_dst ? window_for(o, o->sizes[j]) : 1);
            recv_blocks = need > recv_blocks ? need : recv_blocks;
        }
        int st = setup(&b, recv_blocks);
        for (int j = 0; st == 0 && j < o->n_sizes; j++) {
            if (layers_for(o, o->sizes[j]) != layers)
                continue;
            for (int m = 0; st == 0 && m < o->n_modes; m++) {
                kvb_result_t r;
                st = measure(&b, o->sizes[j], o->modes[m], &r);
                if (st == 0)
                    out(o, &r);
            }
        }
        teardown(&b);
        if (st != 0) {
            fprintf(stderr, "kvbench: %s: measurement failed\n", transport);
            return -1;
        }
    }
    return 0;
}
