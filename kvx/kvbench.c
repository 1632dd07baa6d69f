/* SPDX-License-Identifier: MIT */
/*
 * kvbench.c - baton-kvbench: KV transfer bandwidth and per-transfer latency over UCX shared
 * memory and UCX TCP, for request KV sizes from 64 KiB to 1 GiB, whole and layer-wise.
 *
 * Prints a table, or with --json one JSON object per measurement. kvx/kvbench_compare.py runs
 * it side by side with ucx_perftest at the same sizes (docs/PERFORMANCE.md).
 */
#include <limits.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/log.h"
#include "kvbench.h"
#include "kvx/kvx.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: baton-kvbench [options]\n"
            "  --transport shm|cma|tcp|cuda|all\n"
            "                            shm: one host, UCX shared memory for messages and the\n"
            "                            data copied out of the mapped sender pool; cma: one\n"
            "                            host, data through UCX rendezvous (CMA); tcp: UCX over\n"
            "                            TCP (data over kvx's own TCP connection, see --stream);\n"
            "                            cuda: both pools in GPU memory (device 0), UCX\n"
            "                            cuda_ipc (default all: shm, cma, tcp)\n"
            "  --mode whole|layer|all    whole cache or layer-wise (default all)\n"
            "  --sizes LIST              request KV sizes, e.g. 64K,1M,1G (default 64K..1G, x4)\n"
            "  --iters N                 transfers per pass (default: ~1 GiB, 8..2000)\n"
            "  --pack auto|on|off        the sender packs whole layers into one message: auto\n"
            "                            (default) over TCP up to 64 MiB, on: always, off: never\n"
            "  --stream auto|on|off      data over a TCP connection of kvx's own: auto (default)\n"
            "                            where UCX would use TCP, off: through UCX\n"
            "  --window N                transfers in flight in the bandwidth pass (default\n"
            "                            4 up to 16 MiB, 2 up to 256 MiB, then 1)\n"
            "  --layers N --kv-heads N --head-dim N --block-size N --dtype f16|f32\n"
            "                            model geometry (default Llama-3-8B: 32 8 128 16 f16)\n"
            "  --json                    one JSON object per measurement\n"
            "  --pin                     this process on CPU 0, the sender on CPU 1 (as\n"
            "                            ucx_perftest -c 0 / -c 1)\n"
            "  --distinct-dst            transfers in flight get blocks of their own (default:\n"
            "                            they share one set, as ucx_perftest's receives share\n"
            "                            one buffer)\n"
            "Bandwidth counts a window of transfers in flight; latency is one transfer at a\n"
            "time, from the reservation to the completion notice.\n");
}

static int parse_size(const char *s, size_t *out)
{
    char *end;
    double v = strtod(s, &end);
    size_t mul = 1;
    if (*end == 'K' || *end == 'k')
        mul = 1024;
    else if (*end == 'M' || *end == 'm')
        mul = 1024 * 1024;
    else if (*end == 'G' || *end == 'g')
        mul = 1024ull * 1024 * 1024;
    if (end == s || v <= 0)
        return -1;
    *out = (size_t)(v * (double)mul);
    return 0;
}

static int parse_sizes(const char *s, kvb_opts_t *o)
{
    char buf[1024];
    snprintf(buf, sizeof buf, "%s", s);
    o->n_sizes = 0;
    for (char *tok = strtok(buf, ","); tok; tok = strtok(NULL, ",")) {
        if (o->n_sizes == KVB_MAX_SIZES || parse_size(tok, &o->sizes[o->n_sizes]) != 0)
            return -1;
        o->n_sizes++;
    }
    return o->n_sizes ? 0 : -1;
}

static int parse_int(const char *s, int lo, int hi, int *out)
{
    char *end;
    long v = strtol(s, &end, 10);
    if (*end || end == s || v < lo || v > hi)
        return -1;
    *out = (int)v;
    return 0;
}

static int parse_transports(const char *v, kvb_opts_t *o)
{
    static const char *const all[] = {"shm", "cma", "tcp", "cuda"};
    o->n_transports = 0;
    for (int i = 0; i < 4; i++) /* "all" is the host transports */
        if ((strcmp(v, "all") == 0 && i < 3) || strcmp(v, all[i]) == 0)
            o->transports[o->n_transports++] = all[i];
    return o->n_transports ? 0 : -1;
}

static int parse_choice(const char *v, const char *a, const char *b, const char **out, int *n)
{
    if (strcmp(v, "all") == 0) {
        out[0] = a;
        out[1] = b;
        *n = 2;
    } else if (strcmp(v, a) == 0 || strcmp(v, b) == 0) {
        out[0] = strcmp(v, a) == 0 ? a : b;
        *n = 1;
    } else {
        return -1;
    }
    return 0;
}

static int parse_opt(kvb_opts_t *o, const char *k, const char *v)
{
    const char *m[2];
    if (strcmp(k, "--transport") == 0)
        return parse_transports(v, o);
    if (strcmp(k, "--mode") == 0) {
        if (parse_choice(v, "whole", "layer", m, &o->n_modes) != 0)
            return -1;
        for (int i = 0; i < o->n_modes; i++)
            o->modes[i] = strcmp(m[i], "layer") == 0;
        return 0;
    }
    if (strcmp(k, "--sizes") == 0)
        return parse_sizes(v, o);
    if (strcmp(k, "--pack") == 0)
        return bt_kvx_auto_on_off(v, &o->pack) == BT_OK ? 0 : -1;
    if (strcmp(k, "--stream") == 0)
        return bt_kvx_auto_on_off(v, &o->stream) == BT_OK ? 0 : -1;
    if (strcmp(k, "--iters") == 0)
        return parse_int(v, 1, 1000000, &o->iters);
    if (strcmp(k, "--window") == 0)
        return parse_int(v, 1, 16, &o->window);
    if (strcmp(k, "--layers") == 0)
        return parse_int(v, 1, 1024, &o->max_layers);
    if (strcmp(k, "--kv-heads") == 0)
        return parse_int(v, 1, 1024, &o->kv_heads);
    if (strcmp(k, "--head-dim") == 0)
        return parse_int(v, 1, 4096, &o->head_dim);
    if (strcmp(k, "--block-size") == 0)
        return parse_int(v, 1, 4096, &o->block_size);
    if (strcmp(k, "--dtype") == 0) {
        o->f16 = strcmp(v, "f16") == 0;
        return o->f16 || strcmp(v, "f32") == 0 ? 0 : -1;
    }
    return -1;
}

static void print_result(const kvb_opts_t *o, const kvb_result_t *r)
{
    if (o->json) {
        printf("{\"program\":\"baton-kvbench\",\"transport\":\"%s\",\"mode\":\"%s\","
               "\"size_bytes\":%zu,\"gb_per_s\":%.3f,\"p50_us\":%.1f,\"p99_us\":%.1f,"
               "\"layers\":%d,\"blocks\":%d,\"msgs_per_transfer\":%d,\"window\":%d,"
               "\"iters\":%d,\"path\":\"%s\"}\n",
               r->transport, r->mode, r->size_bytes, r->gb_per_s, r->p50_us, r->p99_us, r->layers,
               r->blocks, r->msgs, r->window, r->iters, r->path);
    } else {
        printf("%-4s %-6s %10zu %7.2f %10.1f %10.1f %6d %6d %4d %4d %s\n", r->transport, r->mode,
               r->size_bytes, r->gb_per_s, r->p50_us, r->p99_us, r->layers, r->blocks, r->msgs,
               r->window, r->path);
    }
    fflush(stdout);
}

static void peer_path(kvb_opts_t *o, char *buf, size_t cap)
{
    ssize_t n = readlink("/proc/self/exe", buf, cap - 32);
    if (n <= 0) {
        snprintf(buf, cap, "baton-kvx-peer");
    } else {
        buf[n] = '\0';
        char *slash = strrchr(buf, '/');
        snprintf(slash ? slash + 1 : buf, 32, "baton-kvx-peer");
    }
    o->peer_path = buf;
}

int main(int argc, char **argv)
{
    static char path[PATH_MAX];
    kvb_opts_t o = {.transports = {"shm", "cma", "tcp"},
                    .n_transports = 3,
                    .modes = {0, 1},
                    .n_modes = 2,
                    .max_layers = 32,
                    .kv_heads = 8,
                    .head_dim = 128,
                    .block_size = 16,
                    .f16 = 1};
    parse_sizes("64K,256K,1M,4M,16M,64M,256M,1G", &o);
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            return 0;
        }
        if (strcmp(argv[i], "--json") == 0) {
            o.json = 1;
        } else if (strcmp(argv[i], "--pin") == 0) {
            o.pin = 1;
        } else if (strcmp(argv[i], "--distinct-dst") == 0) {
            o.distinct_dst = 1;
        } else if (i + 1 >= argc || parse_opt(&o, argv[i], argv[i + 1]) != 0) {
            fprintf(stderr, "baton-kvbench: bad option '%s'\n", argv[i]);
            usage(stderr);
            return 2;
        } else {
            i++;
        }
    }
    bt_log_set_level(BT_LOG_ERROR);
    peer_path(&o, path, sizeof path);
    if (o.pin) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(0, &set);
        if (sched_setaffinity(0, sizeof set, &set) != 0)
            fprintf(stderr, "baton-kvbench: cannot pin to CPU 0\n");
    }
    if (!o.json)
        printf("%-4s %-6s %10s %7s %10s %10s %6s %6s %4s %4s %s\n", "tr", "mode", "bytes", "GB/s",
               "p50_us", "p99_us", "layers", "blocks", "msgs", "win", "path");
    for (int t = 0; t < o.n_transports; t++)
        if (kvb_run_transport(&o, o.transports[t], print_result) != 0)
            return 1;
    return 0;
}
