/* SPDX-License-Identifier: MIT */
/*
 * kvx_peer_main.c - baton-kvx-peer: one kvx endpoint in a process of its own, driven line by
 * line over a socket, for the multi-process tests and the transfer benchmark.
 *
 * The one thing to know: it is a puppet. It owns a CPU KV pool filled with a known pattern
 * and a kvx context, does exactly what each command line says, answers "ok ..." or
 * "err <status>", and reports every kvx event as an "ev ..." line the moment it happens, so
 * that the test on the other end can kill it at a chosen point of a transfer.
 *
 *   init <backend> <tls|-> <name> <model> <layers> <heads> <dim> <bsize> <f32|f16> <nblocks> *
 * <seed> <timeout_ms> [map [pool [pack [stream]]]] -> ok <address hex> (map -1: no pool mapping;
 * pool: the backend holding the pool, cpu or cuda; pack, stream: bt_kvx_params_t's) connect <hex>
 * -> ok (then "ev up") recv <req> <ntok> auto|<ids>  -> ok <gen> <ids>  (auto: blocks from the pool
 * allocator) send <req> whole|layer <ntok> <ids> -> ok layers <req> <n> | pace <req> <ms per layer>
 * | finish <req> <token> <meta|-> cancel-send <req> | cancel-recv <req> | drop <req>  (frees a
 * received request's blocks) serve whole|layer <ntok> <ids> -> ok   (every reservation gets a send
 * of these blocks) check <seed> <src ids> <dst ids> -> ok | bad <index> inject <gen> <layer> <idx>
 * <src> <n> | stats | spin 0|1 | quiet 0|1 | pin <cpu> | exit Block lists are comma-separated ids.
 */
#include <errno.h>
#include <poll.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/kvcache.h"
#include "common/log.h"
#include "kvx/kvx.h"
#include "kvx/kvx_debug.h"
#include "kvx/kvx_pattern.h"

#define MAX_XFERS 256
#define LINE_MAX_BYTES (1 << 20)

typedef struct {
    uint64_t req;
    bt_kvx_send_t *send;
    bt_kvx_recv_t *recv;
    int32_t *blocks; /* auto-allocated receive blocks, returned to the pool when done */
    int32_t n_blocks;
    int pace_ms; /* layer-wise send: one more layer every pace_ms */
    int64_t next_ms;
    int32_t layers;
} xfer_t;

typedef struct {
    int fd;
    bt_backend_t *be;
    bt_kv_pool_t *pool;
    bt_kvx_t *kvx;
    bt_kvx_layout_t layout;
    bt_kvx_peer_t *peer;
    xfer_t x[MAX_XFERS];
    int spin;
    int quiet; /* no event lines (the benchmark reads nothing while it measures) */
    int serving;
    int serve_layerwise;
    int32_t serve_tokens;
    int32_t *serve_blocks;
    int32_t serve_n;
    int n_used; /* slots [0, n_used) may be in use */
    char *line;
    size_t line_len;
} peer_t;

static void reply(peer_t *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void reply(peer_t *p, const char *fmt, ...)
{
    char buf[8192];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf - 1, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if (n > (int)sizeof buf - 2)
        n = (int)sizeof buf - 2;
    buf[n++] = '\n';
    for (int off = 0; off < n;) {
        ssize_t w = write(p->fd, buf + off, (size_t)(n - off));
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            exit(3); /* the test went away */
        off += (int)w;
    }
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts); /* cheap in a spinning loop; ms are plenty */
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int parse_blocks(const char *s, int32_t **out)
{
    *out = NULL;
    int n = 1;
    for (const char *c = s; *c; c++)
        n += *c == ',';
    int32_t *b = malloc((size_t)n * sizeof *b);
    if (!b)
        return -1;
    n = 0;
    for (char *end; *s; s = *end ? end + 1 : end) {
        b[n++] = (int32_t)strtol(s, &end, 10);
        if (end == s)
            break;
    }
    *out = b;
    return n;
}

static char *hex(const uint8_t *d, size_t n)
{
    char *h = malloc(2 * n + 1);
    for (size_t i = 0; h && i < n; i++)
        sprintf(h + 2 * i, "%02x", d[i]);
    if (h)
        h[2 * n] = '\0';
    return h;
}

static size_t unhex(const char *h, uint8_t *out, size_t cap)
{
    size_t n = 0;
    for (; h[0] && h[1] && n < cap; h += 2) {
        unsigned v;
        if (sscanf(h, "%2x", &v) != 1)
            break;
        out[n++] = (uint8_t)v;
    }
    return n;
}

static xfer_t *xfer_get(peer_t *p, uint64_t req, int create)
{
    for (int i = 0; i < p->n_used; i++)
        if ((p->x[i].send || p->x[i].recv || p->x[i].blocks) && p->x[i].req == req)
            return &p->x[i];
    for (int i = 0; create && i < MAX_XFERS; i++) {
        if (!p->x[i].send && !p->x[i].recv && !p->x[i].blocks) {
            memset(&p->x[i], 0, sizeof p->x[i]);
            p->x[i].req = req;
            if (i >= p->n_used)
                p->n_used = i + 1;
            return &p->x[i];
        }
    }
    return NULL;
}

static int cmd_init(peer_t *p, char **a, int n)
{
    if (n < 13)
        return BT_ERR_INVAL;
    bt_backend_params_t bp = {.n_threads = 1, .max_rows = 1, .max_cols = 1};
    int st = bt_backend_create(n > 14 ? a[14] : "cpu", &bp, &p->be); /* the pool's memory */
    bt_kv_pool_params_t pp = {.n_layers = atoi(a[5]),
                              .n_kv_heads = atoi(a[6]),
                              .head_dim = atoi(a[7]),
                              .block_size = atoi(a[8]),
                              .type = strcmp(a[9], "f16") == 0 ? BT_TYPE_F16 : BT_TYPE_F32,
                              .n_blocks = atoi(a[10])};
    if (st == BT_OK)
        st = bt_kv_pool_create(p->be, &pp, &p->pool);
    if (st != BT_OK)
        return st;
    bt_kvx_layout_from_pool(p->pool, a[4], &p->layout);
    st = bt_kvx_pattern_fill_pool(p->pool, &p->layout, strtoull(a[11], NULL, 10));
    if (st != BT_OK)
        return st;
    bt_kvx_params_t kp = {.backend = a[1],
                          .name = a[3],
                          .layout = p->layout,
                          .base = bt_kv_pool_base(p->pool),
                          .size_bytes = bt_kv_pool_size_bytes(p->pool),
                          .ucx_tls = strcmp(a[2], "-") ? a[2] : NULL,
                          .peer_timeout_ms = atoi(a[12]),
                          .lease_ms = atoi(a[12]),
                          .device_memory = bt_kv_pool_device_memory(p->pool),
                          .map_peers = bt_kv_pool_device_memory(p->pool) ? -1
                                       : n > 13                          ? atoi(a[13])
                                                                         : 0,
                          .pack = n > 15 ? atoi(a[15]) : 0,
                          .stream = n > 16 ? atoi(a[16]) : 0};
    st = bt_kvx_create(&kp, &p->kvx);
    if (st != BT_OK)
        return st;
    uint8_t addr[BT_KVX_ADDRESS_MAX];
    size_t len;
    st = bt_kvx_address(p->kvx, addr, sizeof addr, &len);
    if (st == BT_OK) {
        char *h = hex(addr, len);
        reply(p, "ok %s", h ? h : "");
        free(h);
    }
    return st == BT_OK ? 1 : st;
}

static int cmd_recv(peer_t *p, char **a, int n)
{
    if (n < 4 || !p->peer)
        return BT_ERR_INVAL;
    xfer_t *x = xfer_get(p, strtoull(a[1], NULL, 10), 1);
    int32_t ntok = atoi(a[2]);
    int32_t nb = (ntok + p->layout.block_size - 1) / p->layout.block_size;
    int32_t *ids = NULL;
    if (!x)
        return BT_ERR_NOSPACE;
    if (strcmp(a[3], "auto") == 0) {
        ids = malloc((size_t)nb * sizeof *ids);
        if (!ids || bt_kv_pool_alloc(p->pool, nb, ids) != BT_OK) {
            free(ids);
            return BT_ERR_NOSPACE;
        }
        x->blocks = ids;
        x->n_blocks = nb;
    } else if ((nb = parse_blocks(a[3], &ids)) < 0) {
        return BT_ERR_NOMEM;
    }
    bt_kvx_recv_params_t rp = {.req_id = x->req, .blocks = ids, .n_blocks = nb, .n_tokens = ntok};
    int st = bt_kvx_recv_post(p->peer, &rp, &x->recv);
    if (st == BT_OK) {
        char list[8192];
        int off = 0;
        for (int32_t i = 0; i < nb && off < (int)sizeof list - 16; i++)
            off += snprintf(list + off, sizeof list - (size_t)off, "%s%d", i ? "," : "", ids[i]);
        reply(p, "ok %u %s", bt_kvx_recv_gen(x->recv), list);
    } else if (x->blocks) {
        for (int32_t i = 0; i < nb; i++)
            bt_kv_pool_unref(p->pool, ids[i]);
        x->blocks = NULL;
    }
    if (!x->blocks)
        free(ids);
    return st == BT_OK ? 1 : st;
}

static int start_send(peer_t *p, uint64_t req, int layerwise, int32_t ntok, const int32_t *ids,
                      int32_t nb)
{
    xfer_t *x = xfer_get(p, req, 1);
    if (!x)
        return BT_ERR_NOSPACE;
    bt_kvx_send_params_t sp = {
        .req_id = req, .blocks = ids, .n_blocks = nb, .n_tokens = ntok, .layerwise = layerwise};
    return bt_kvx_send_start(p->peer, &sp, &x->send);
}

static int cmd_send(peer_t *p, char **a, int n)
{
    int32_t *ids = NULL;
    if (n < 5 || !p->peer)
        return BT_ERR_INVAL;
    int nb = parse_blocks(a[4], &ids);
    if (nb < 0)
        return BT_ERR_NOMEM;
    int st =
        start_send(p, strtoull(a[1], NULL, 10), strcmp(a[2], "layer") == 0, atoi(a[3]), ids, nb);
    free(ids);
    return st;
}

static int cmd_finish(peer_t *p, char **a, int n)
{
    xfer_t *x = n >= 4 ? xfer_get(p, strtoull(a[1], NULL, 10), 0) : NULL;
    if (!x || !x->send)
        return BT_ERR_NOT_FOUND;
    uint8_t meta[BT_KVX_META_MAX];
    size_t len = strcmp(a[3], "-") ? unhex(a[3], meta, sizeof meta) : 0;
    return bt_kvx_send_finish(x->send, atoi(a[2]), meta, len);
}

static int cmd_check(peer_t *p, char **a, int n)
{
    int32_t *src = NULL, *dst = NULL;
    if (n < 4)
        return BT_ERR_INVAL;
    int ns = parse_blocks(a[2], &src), nd = parse_blocks(a[3], &dst);
    if (ns < 0 || nd != ns) {
        free(src);
        free(dst);
        return BT_ERR_INVAL;
    }
    int64_t bad =
        bt_kvx_pattern_check_pool(p->pool, &p->layout, strtoull(a[1], NULL, 10), src, dst, ns);
    free(src);
    free(dst);
    if (bad >= 0)
        reply(p, "bad %lld", (long long)bad);
    else
        reply(p, "ok");
    return 1;
}

static int cmd_stats(peer_t *p)
{
    bt_kvx_stats_t s;
    bt_kvx_get_stats(p->kvx, &s);
    reply(p,
          "ok sends=%d recvs=%d quarantined=%d stale=%lld dup=%lld rejected=%lld "
          "msgs_sent=%lld msgs_recv=%lld free=%d path=%s",
          s.n_sends, s.n_recvs, s.n_quarantined, (long long)s.n_stale_dropped,
          (long long)s.n_dup_dropped, (long long)s.n_ctrl_rejected, (long long)s.n_data_msgs_sent,
          (long long)s.n_data_msgs_recv, bt_kv_pool_n_free(p->pool),
          p->peer ? bt_kvx_peer_data_path(p->peer) : "none");
    return 1;
}

static int cmd_serve(peer_t *p, char **a, int n)
{
    if (n < 4)
        return BT_ERR_INVAL;
    free(p->serve_blocks);
    p->serve_n = parse_blocks(a[3], &p->serve_blocks);
    p->serve_layerwise = strcmp(a[1], "layer") == 0;
    p->serve_tokens = atoi(a[2]);
    p->serving = p->serve_n > 0;
    return p->serving ? BT_OK : BT_ERR_INVAL;
}

static int cmd_xfer(peer_t *p, char **a, int n)
{
    xfer_t *x = n >= 2 ? xfer_get(p, strtoull(a[1], NULL, 10), 0) : NULL;
    if (!x)
        return BT_ERR_NOT_FOUND;
    if (strcmp(a[0], "layers") == 0 && n >= 3 && x->send)
        bt_kvx_send_layers_ready(x->send, atoi(a[2]));
    else if (strcmp(a[0], "pace") == 0 && n >= 3 && x->send) {
        x->pace_ms = atoi(a[2]);
        x->next_ms = now_ms() + x->pace_ms;
    } else if (strcmp(a[0], "cancel-send") == 0 && x->send)
        bt_kvx_send_cancel(x->send);
    else if (strcmp(a[0], "cancel-recv") == 0 && x->recv)
        bt_kvx_recv_cancel(x->recv);
    else if (strcmp(a[0], "drop") == 0 && !x->recv && x->blocks) {
        for (int32_t i = 0; i < x->n_blocks; i++)
            bt_kv_pool_unref(p->pool, x->blocks[i]);
        free(x->blocks);
        x->blocks = NULL;
    } else
        return BT_ERR_INVAL;
    return BT_OK;
}

/* Returns BT_OK (answered "ok"), 1 (answered already) or an error (answered "err"). */
static int dispatch(peer_t *p, char **a, int n)
{
    if (strcmp(a[0], "init") == 0)
        return cmd_init(p, a, n);
    if (!p->kvx)
        return BT_ERR_INVAL;
    if (strcmp(a[0], "connect") == 0 && n >= 2) {
        uint8_t addr[BT_KVX_ADDRESS_MAX];
        size_t len = unhex(a[1], addr, sizeof addr);
        return bt_kvx_connect(p->kvx, addr, len, &p->peer);
    }
    if (strcmp(a[0], "recv") == 0)
        return cmd_recv(p, a, n);
    if (strcmp(a[0], "send") == 0)
        return cmd_send(p, a, n);
    if (strcmp(a[0], "finish") == 0)
        return cmd_finish(p, a, n);
    if (strcmp(a[0], "check") == 0)
        return cmd_check(p, a, n);
    if (strcmp(a[0], "stats") == 0)
        return cmd_stats(p);
    if (strcmp(a[0], "serve") == 0)
        return cmd_serve(p, a, n);
    if (strcmp(a[0], "spin") == 0 && n >= 2) {
        p->spin = atoi(a[1]);
        return BT_OK;
    }
    if (strcmp(a[0], "pin") == 0 && n >= 2) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(atoi(a[1]), &set);
        return sched_setaffinity(0, sizeof set, &set) == 0 ? BT_OK : BT_ERR_INVAL;
    }
    if (strcmp(a[0], "quiet") == 0 && n >= 2) {
        p->quiet = atoi(a[1]);
        return BT_OK;
    }
    if (strcmp(a[0], "inject") == 0 && n >= 6 && p->peer)
        return bt_kvx_debug_inject(p->peer, (uint32_t)strtoul(a[1], NULL, 10), atoi(a[2]),
                                   atoi(a[3]), atoi(a[4]), atoi(a[5]));
    return cmd_xfer(p, a, n);
}

static void run_line(peer_t *p, char *line)
{
    char *a[32];
    int n = 0;
    for (char *tok = strtok(line, " \t\r"); tok && n < 32; tok = strtok(NULL, " \t\r"))
        a[n++] = tok;
    if (!n)
        return;
    if (strcmp(a[0], "exit") == 0) {
        reply(p, "ok");
        exit(0);
    }
    int st = dispatch(p, a, n);
    if (st == BT_OK)
        reply(p, "ok");
    else if (st < 0)
        reply(p, "err %s", bt_status_name(st));
}

static void read_commands(peer_t *p)
{
    char buf[65536];
    ssize_t r = read(p->fd, buf, sizeof buf);
    if (r == 0)
        exit(0); /* the test closed its end */
    if (r < 0)
        return;
    for (ssize_t i = 0; i < r; i++) {
        if (buf[i] == '\n') {
            p->line[p->line_len] = '\0';
            run_line(p, p->line);
            p->line_len = 0;
        } else if (p->line_len < LINE_MAX_BYTES - 1) {
            p->line[p->line_len++] = buf[i];
        }
    }
}

static void on_event(peer_t *p, const bt_kvx_event_t *ev)
{
    static const char *names[] = {"",         "up",        "down",     "offered",
                                  "reserved", "send-done", "recv-done"};
    if (!p->quiet || ev->status != BT_OK) {
        char *meta = ev->meta_len ? hex(ev->meta, ev->meta_len) : NULL;
        reply(p, "ev %s %s %llu %u %d %d %s", names[ev->type], bt_status_name(ev->status),
              (unsigned long long)ev->req_id, ev->gen, ev->n_tokens, ev->first_token,
              meta ? meta : "-");
        free(meta);
    }
    if (ev->type == BT_KVX_EV_PEER_UP && !p->peer)
        p->peer = ev->peer;
    if (ev->type == BT_KVX_EV_RESERVED && p->serving)
        start_send(p, ev->req_id, p->serve_layerwise, p->serve_tokens, p->serve_blocks, p->serve_n);
    xfer_t *x = xfer_get(p, ev->req_id, 0);
    if (ev->type == BT_KVX_EV_RESERVED && p->serving && x && x->send)
        bt_kvx_send_finish(x->send, 7, NULL, 0);
    if (ev->type == BT_KVX_EV_SEND_DONE && x && x->send == ev->send) {
        bt_kvx_send_release(x->send);
        x->send = NULL;
    }
    if (ev->type == BT_KVX_EV_RECV_DONE && x && x->recv == ev->recv) {
        bt_kvx_recv_release(x->recv);
        x->recv = NULL;
        if (ev->status != BT_OK && x->blocks) {
            for (int32_t i = 0; i < x->n_blocks; i++)
                bt_kv_pool_unref(p->pool, x->blocks[i]);
            free(x->blocks);
            x->blocks = NULL;
        }
    }
}

static void pace_layers(peer_t *p)
{
    int64_t now = now_ms();
    for (int i = 0; i < p->n_used; i++) {
        xfer_t *x = &p->x[i];
        if (x->send && x->pace_ms > 0 && now >= x->next_ms) {
            bt_kvx_send_layers_ready(x->send, ++x->layers);
            x->next_ms = now + x->pace_ms;
        }
        if (x->send && p->serving && p->serve_layerwise && x->layers < p->layout.n_layers)
            bt_kvx_send_layers_ready(x->send, ++x->layers);
    }
}

int main(int argc, char **argv)
{
    static peer_t p;
    if (argc != 3 || strcmp(argv[1], "--fd") != 0) {
        fprintf(stderr, "usage: baton-kvx-peer --fd N  (driven by the kvx tests and kvbench)\n");
        return 2;
    }
    p.fd = atoi(argv[2]);
    p.line = malloc(LINE_MAX_BYTES);
    if (!p.line)
        return 1;
    bt_log_set_level(getenv("BATON_KVX_PEER_DEBUG") ? BT_LOG_DEBUG : BT_LOG_WARN);
    int64_t next_ctl = 0;
    for (;;) {
        int64_t now = now_ms();
        if (!p.spin || now >= next_ctl) {
            /* Spinning (the benchmark) looks at the command socket once a millisecond. */
            struct pollfd fds[2] = {{.fd = p.fd, .events = POLLIN},
                                    {.fd = p.kvx ? bt_kvx_fd(p.kvx) : -1, .events = POLLIN}};
            int wait = p.spin || (p.kvx && bt_kvx_arm(p.kvx) != BT_OK) ? 0 : 10;
            if (poll(fds, 2, wait) > 0 && (fds[0].revents & (POLLIN | POLLHUP)))
                read_commands(&p);
            next_ctl = now + 1;
        }
        if (!p.kvx)
            continue;
        bt_kvx_progress(p.kvx);
        bt_kvx_event_t ev;
        while (bt_kvx_next_event(p.kvx, &ev))
            on_event(&p, &ev);
        pace_layers(&p);
    }
}
