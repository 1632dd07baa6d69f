/* SPDX-License-Identifier: MIT */
/*
 * bench_matmul.c - baton-bench-matmul: GFLOP/s and weight GB/s of the CPU backend's matmul
 * for the shapes of 110M..1.2B Llama models, per weight type, token count and thread count.
 *
 * The one thing to know: decode (small m) is bound by memory bandwidth, so each case cycles
 * through enough copies of the weight matrix (>= 96 MiB) that it is read from DRAM, not from
 * the last-level cache, as it would be in a real forward pass over all layers.
 *
 * Each figure is the best of 5 timed batches, so that other load on the machine shows less.
 *
 * Usage: baton-bench-matmul [--type f32|f16|bf16|q8_0] [--threads N] [--m N] [--min-ms MS]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels/fp16.h"
#include "kernels/kernels.h"

#define WORKING_SET_BYTES (96u << 20)
#define BATCHES 5

typedef struct {
    int type;    /* -1: all */
    int threads; /* 0: 1 and 2 */
    int m;       /* 0: 1, 4, 16, 512 */
    double min_ms;
} bench_opts_t;

static const int64_t shapes[][2] = {{768, 768}, {2048, 768}, {2048, 2048}, {8192, 2048}};
static const int ms[] = {1, 4, 16, 512};
static const bt_type_t types[] = {BT_TYPE_F32, BT_TYPE_F16, BT_TYPE_BF16, BT_TYPE_Q8_0};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static uint32_t rnd(void)
{
    static uint64_t s = 0x2545f4914f6cdd1dull;
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    return (uint32_t)(s >> 16);
}

/* Random weights: small normal values for float types, random int8 with sane scales. */
static void fill_weights(uint8_t *p, bt_type_t type, int64_t rows, int64_t cols)
{
    const int64_t n = rows * cols;
    for (int64_t i = 0; i < n; i++) {
        float v = ((float)(rnd() % 2001) - 1000.0f) * 1e-4f;
        if (type == BT_TYPE_F32)
            ((float *)p)[i] = v;
        else if (type == BT_TYPE_F16)
            ((uint16_t *)p)[i] = bt_f32_to_fp16(v);
        else if (type == BT_TYPE_BF16)
            ((uint16_t *)p)[i] = bt_f32_to_bf16(v);
    }
    if (type != BT_TYPE_Q8_0)
        return;
    bt_block_q8_0_t *b = (bt_block_q8_0_t *)p;
    for (int64_t i = 0; i < n / BT_QK8_0; i++) {
        b[i].d = bt_f32_to_fp16(1e-3f * (float)(1 + rnd() % 100));
        for (int l = 0; l < BT_QK8_0; l++)
            b[i].qs[l] = (int8_t)(rnd() % 255 - 127);
    }
}

static void bench_case(bt_backend_t *be, int threads, bt_type_t type, int64_t rows, int64_t cols,
                       int m, double min_ms)
{
    const size_t bytes = bt_type_row_bytes(type, cols) * (size_t)rows;
    const int copies = (int)((WORKING_SET_BYTES + bytes - 1) / bytes);
    uint8_t *w = malloc(bytes * (size_t)copies);
    float *x = malloc(sizeof(float) * (size_t)(m * cols));
    float *y = malloc(sizeof(float) * (size_t)(m * rows));
    if (!w || !x || !y) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    for (int c = 0; c < copies; c++)
        fill_weights(w + (size_t)c * bytes, type, rows, cols);
    for (int64_t i = 0; i < m * cols; i++)
        x[i] = ((float)(rnd() % 2001) - 1000.0f) * 1e-3f;
    bt_tensor_t t = {.type = type, .rows = rows, .cols = cols};
    /* Best of BATCHES timed batches: the figure a quiet machine would give. */
    long iters = 0;
    double per = 1e30;
    for (int b = 0; b < BATCHES; b++) {
        long n = 0;
        double t0 = now_s(), el;
        do {
            t.data = w + (size_t)(iters++ % copies) * bytes;
            bt_matmul(be, y, &t, x, m);
            n++;
            el = now_s() - t0;
        } while (el * 1e3 < min_ms / BATCHES || n < 2);
        per = el / (double)n < per ? el / (double)n : per;
    }
    printf("%-5s %5lld x %-5lld %4d %3d %10.3f %9.1f %8.2f\n", bt_type_name(type), (long long)rows,
           (long long)cols, m, threads, per * 1e3,
           2.0 * (double)m * (double)rows * (double)cols / per * 1e-9, (double)bytes / per * 1e-9);
    fflush(stdout);
    free(w);
    free(x);
    free(y);
}

static int parse_args(int argc, char **argv, bench_opts_t *o)
{
    for (int i = 1; i < argc; i++) {
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v)
            return -1;
        if (strcmp(argv[i], "--type") == 0) {
            o->type = -2;
            for (int t = 0; t < 4; t++)
                if (strcmp(v, bt_type_name(types[t])) == 0)
                    o->type = (int)types[t];
            if (o->type == -2)
                return -1;
        } else if (strcmp(argv[i], "--threads") == 0) {
            o->threads = atoi(v);
        } else if (strcmp(argv[i], "--m") == 0) {
            o->m = atoi(v);
        } else if (strcmp(argv[i], "--min-ms") == 0) {
            o->min_ms = atof(v);
        } else {
            return -1;
        }
        i++;
    }
    return 0;
}

int main(int argc, char **argv)
{
    bench_opts_t o = {.type = -1, .threads = 0, .m = 0, .min_ms = 300};
    if (parse_args(argc, argv, &o) != 0) {
        fprintf(stderr,
                "usage: %s [--type f32|f16|bf16|q8_0] [--threads N] [--m N] "
                "[--min-ms MS (default 300)]\n",
                argv[0]);
        return 2;
    }
    printf("%-5s %13s %4s %3s %10s %9s %8s\n", "type", "rows x cols", "m", "thr", "ms/call",
           "GFLOP/s", "GB/s(w)");
    for (int th = 1; th <= 2; th++) {
        int threads = o.threads > 0 ? o.threads : th;
        if (o.threads > 0 && th == 2)
            break;
        bt_backend_params_t p = {.n_threads = threads, .max_rows = 512, .max_cols = 8192};
        bt_backend_t *be = NULL;
        if (bt_backend_create("cpu", &p, &be) != BT_OK) {
            fprintf(stderr, "cannot create the cpu backend\n");
            return 1;
        }
        for (int t = 0; t < 4; t++) {
            if (o.type >= 0 && (int)types[t] != o.type)
                continue;
            for (int s = 0; s < 4; s++)
                for (int mi = 0; mi < 4; mi++)
                    if (o.m <= 0 || ms[mi] == o.m)
                        bench_case(be, threads, types[t], shapes[s][0], shapes[s][1], ms[mi],
                                   o.min_ms);
        }
        bt_backend_destroy(be);
    }
    return 0;
}
