/* SPDX-License-Identifier: MIT */
/*
 * bench_cuda.c - `baton-bench-cuda`: the engine on the "cuda" backend against the device's own
 * limits, measured in one run: decode step time at several batch sizes over a fixed context,
 * prefill time of single prompts, the device-to-device copy bandwidth and the weight-read floor
 * it implies for one decode step, and the bf16 cuBLAS matmul rate with the prefill's share of
 * it. Prints a table and, with --json, writes the same figures as one JSON object.
 *
 * The one thing to know: a decode step is timed as the engine serves it (one forward of the
 * whole batch, one token per sequence, logits downloaded to the host), not as a kernel sum;
 * the floor counts every weight byte one step must read once (layer matrices, norms and the
 * output projection) at the measured copy rate, where a copy of N bytes moves 2N (read and
 * write). Each decode step is timed twice: op by op, and on a second engine whose backend
 * runs decode steps as CUDA graphs (BATON_CUDA_GRAPHS=1 at its creation, 0 for the other).
 * Both take BATON_FUSED_OPS from the environment as it is (0: the fused matmuls run as their
 * composition), so that a run with it set measures the unfused forward beside a default one.
 */
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include "common/config.h"
#include "common/engine.h"
#include "common/modelgen.h"

typedef struct {
    char *model;
    char *preset;
    char *type;
    char *batches;
    char *prefills;
    char *json;
    int ctx;
    int steps;
    int reps;
    int deterministic;
} cfg_t;

#define OPT(n, t, d, lo, hi, f, h)                                                                 \
    {                                                                                              \
        n, 0, t, d, lo, hi, offsetof(cfg_t, f), h                                                  \
    }
static const bt_cfg_opt_t opts[] = {
    OPT("model", BT_CFG_STRING, NULL, 0, 0, model, "model file (.gguf)"),
    OPT("preset", BT_CFG_STRING, NULL, 0, 0, preset,
        "if --model does not exist, generate this synthetic preset there (tiny, 15m, 110m, 1b)"),
    OPT("type", BT_CFG_STRING, "bf16", 0, 0, type, "weight type of a generated model"),
    OPT("batches", BT_CFG_STRING, "1,16,64", 0, 0, batches, "decode batch sizes"),
    OPT("prefills", BT_CFG_STRING, "512,2048", 0, 0, prefills, "prefill prompt lengths"),
    OPT("ctx", BT_CFG_INT, "512", 1, 32768, ctx, "context of every decode sequence (tokens)"),
    OPT("steps", BT_CFG_INT, "32", 1, 4096, steps, "timed decode steps per batch size"),
    OPT("reps", BT_CFG_INT, "3", 1, 100, reps, "repetitions of each prefill (median kept)"),
    OPT("deterministic", BT_CFG_BOOL, "0", 0, 0, deterministic,
        "keep batch invariance (GEMV kernels for every matmul, no cuBLAS)"),
    OPT("json", BT_CFG_STRING, NULL, 0, 0, json, "also write the figures to this JSON file"),
};
static const bt_cfg_table_t table = {
    .prog = "baton-bench-cuda",
    .summary = "Engine decode/prefill times on the CUDA backend against the device's limits.",
    .opts = opts,
    .n_opts = sizeof opts / sizeof opts[0],
};

#define MAX_LIST 8
#define MAX_BATCH 256

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int parse_list(const char *s, int *out, int lo, int hi)
{
    int n = 0;
    while (s && *s && n < MAX_LIST) {
        char *end;
        long v = strtol(s, &end, 10);
        if (end == s || v < lo || v > hi)
            return -1;
        out[n++] = (int)v;
        s = *end == ',' ? end + 1 : end;
    }
    return n;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* ---- device limits ---- */

/* Device copy bandwidth in bytes/s, counting read + write. */
static double copy_bandwidth(void)
{
    const size_t bytes = (size_t)1 << 30;
    void *a = NULL, *b = NULL;
    cudaEvent_t e0, e1;
    float ms = 0;
    if (cudaMalloc(&a, bytes) != cudaSuccess || cudaMalloc(&b, bytes) != cudaSuccess)
        return 0;
    cudaEventCreate(&e0);
    cudaEventCreate(&e1);
    cudaMemcpy(b, a, bytes, cudaMemcpyDeviceToDevice); /* warm-up */
    cudaEventRecord(e0, 0);
    for (int i = 0; i < 10; i++)
        cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, 0);
    cudaEventRecord(e1, 0);
    cudaEventSynchronize(e1);
    cudaEventElapsedTime(&ms, e0, e1);
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    cudaFree(a);
    cudaFree(b);
    return ms > 0 ? 2.0 * 10 * (double)bytes / (ms * 1e-3) : 0;
}

/* bf16 x bf16 -> f32 GEMM rate in FLOP/s (f32 accumulation, as the engine's prefill). */
static double gemm_rate(int m, int n, int k)
{
    void *a = NULL, *b = NULL, *c = NULL;
    cublasHandle_t h;
    cudaEvent_t e0, e1;
    float ms = 0;
    const float alpha = 1, beta = 0;
    if (cublasCreate(&h) != CUBLAS_STATUS_SUCCESS)
        return 0;
    if (cudaMalloc(&a, (size_t)n * k * 2) != cudaSuccess ||
        cudaMalloc(&b, (size_t)m * k * 2) != cudaSuccess ||
        cudaMalloc(&c, (size_t)m * n * 4) != cudaSuccess)
        return 0;
    cudaMemset(a, 0, (size_t)n * k * 2);
    cudaMemset(b, 0, (size_t)m * k * 2);
    cudaEventCreate(&e0);
    cudaEventCreate(&e1);
    const int reps = 20;
    for (int i = -3; i < reps; i++) {
        if (i == 0)
            cudaEventRecord(e0, 0);
        cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, n, m, k, &alpha, a, CUDA_R_16BF, k, b,
                     CUDA_R_16BF, k, &beta, c, CUDA_R_32F, n, CUBLAS_COMPUTE_32F,
                     CUBLAS_GEMM_DEFAULT);
    }
    cudaEventRecord(e1, 0);
    cudaEventSynchronize(e1);
    cudaEventElapsedTime(&ms, e0, e1);
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    cudaFree(a);
    cudaFree(b);
    cudaFree(c);
    cublasDestroy(h);
    return ms > 0 ? 2.0 * m * n * (double)k * reps / (ms * 1e-3) : 0;
}

/* ---- the model's bytes and FLOPs ---- */

static size_t tensor_bytes(const bt_tensor_t *t)
{
    return bt_type_row_bytes(t->type, t->cols) * (size_t)t->rows;
}

/* Bytes one decode step reads at least once: every layer matrix and norm, the output
 * projection and the final norm (the embedding contributes one row per token). */
static double step_weight_bytes(const bt_model_t *m)
{
    const bt_model_hparams_t *hp = &m->hp;
    double b = tensor_bytes(&m->output) + 4.0 * hp->dim;
    for (int l = 0; l < hp->n_layers; l++) {
        const bt_layer_weights_t *w = &m->layers[l];
        b += tensor_bytes(&w->wq) + tensor_bytes(&w->wk) + tensor_bytes(&w->wv) +
             tensor_bytes(&w->wo) + tensor_bytes(&w->w_gate) + tensor_bytes(&w->w_up) +
             tensor_bytes(&w->w_down) + 8.0 * hp->dim;
    }
    return b;
}

/* Matmul FLOPs of a prefill of t tokens (the logits of the last token only) plus attention. */
static double prefill_flops(const bt_model_t *m, int t)
{
    const bt_model_hparams_t *hp = &m->hp;
    double per_tok = 0;
    for (int l = 0; l < hp->n_layers; l++) {
        const bt_layer_weights_t *w = &m->layers[l];
        const bt_tensor_t *ts[] = {&w->wq,     &w->wk,   &w->wv,    &w->wo,
                                   &w->w_gate, &w->w_up, &w->w_down};
        for (int i = 0; i < 7; i++)
            per_tok += 2.0 * ts[i]->rows * ts[i]->cols;
    }
    double attn = 2.0 * 2.0 * hp->n_layers * (double)hp->n_heads * hp->head_dim * t * (t + 1) / 2;
    return per_tok * t + attn + 2.0 * m->output.rows * m->output.cols;
}

/* ---- engine runs ---- */

typedef struct {
    bt_engine_t *e;
    bt_kv_seq_t kv[MAX_BATCH];
    bt_batch_seq_t b[MAX_BATCH];
    int32_t *toks; /* (max(ctx, prefill)) prompt tokens */
    float *logits; /* (MAX_BATCH, n_vocab) */
} run_t;

static void seqs_reset(run_t *r, int n, int32_t max_tokens)
{
    bt_kv_pool_t *pool = bt_engine_kv_pool(r->e);
    for (int i = 0; i < n; i++) {
        bt_kv_seq_fini(&r->kv[i], pool);
        bt_kv_seq_init(&r->kv[i], pool, max_tokens);
    }
}

static double run_prefill(run_t *r, int t)
{
    seqs_reset(r, 1, t + 1);
    r->b[0] = (bt_batch_seq_t){
        .kv = &r->kv[0], .tokens = r->toks, .n_tokens = t, .logits = BT_LOGITS_LAST};
    double t0 = now_s();
    int st = bt_engine_forward(r->e, r->b, 1, r->logits);
    return st == BT_OK ? now_s() - t0 : -1;
}

/* What a decode step sends to the host. */
enum { OUT_LOGITS, OUT_ARGMAX, OUT_TOPP };

/* One forward of r's batch of n into o as `out` says: the logits rows, each row's greedy
 * token, or what top-p sampling without top-k takes (the best BT_TOPK_MAX and the window
 * total at temperature 1, docs/cuda.md). */
static int forward_as(run_t *r, int n, int out, bt_engine_out_t *o)
{
    o->k = out == OUT_LOGITS ? 0 : out == OUT_ARGMAX ? 1 : BT_TOPK_MAX;
    for (int i = 0; i < n; i++)
        o->tau[i] = out == OUT_TOPP ? 1.0f : 0;
    return bt_engine_forward_out(r->e, r->b, n, o);
}

/* Seconds per decode step of n sequences that each hold ctx tokens, sending `out`. */
static double run_decode(run_t *r, int n, int ctx, int steps, int32_t max_batch, int out,
                         bt_engine_out_t *o)
{
    seqs_reset(r, n, ctx + steps + 2);
    /* Fill the contexts, as many whole prompts per forward as fit. */
    for (int s0 = 0; s0 < n;) {
        int k = 0;
        while (s0 + k < n && (k + 1) * ctx <= max_batch) {
            r->b[k] = (bt_batch_seq_t){
                .kv = &r->kv[s0 + k], .tokens = r->toks, .n_tokens = ctx, .logits = BT_LOGITS_NONE};
            k++;
        }
        if (k == 0 || bt_engine_forward(r->e, r->b, k, r->logits) != BT_OK)
            return -1;
        s0 += k;
    }
    static const int32_t tok = 100;
    for (int i = 0; i < n; i++)
        r->b[i] = (bt_batch_seq_t){
            .kv = &r->kv[i], .tokens = &tok, .n_tokens = 1, .logits = BT_LOGITS_LAST};
    if (forward_as(r, n, out, o) != BT_OK) /* warm-up step */
        return -1;
    double t0 = now_s();
    for (int step = 0; step < steps; step++)
        if (forward_as(r, n, out, o) != BT_OK)
            return -1;
    return (now_s() - t0) / steps;
}

static int bench(const cfg_t *c, const bt_model_t *m, const int *batches, int nb,
                 const int *prefills, int np)
{
    int max_b = 1, max_p = c->ctx;
    for (int i = 0; i < nb; i++)
        max_b = batches[i] > max_b ? batches[i] : max_b;
    for (int i = 0; i < np; i++)
        max_p = prefills[i] > max_p ? prefills[i] : max_p;
    const int32_t max_batch = max_p > 2048 ? max_p : 2048;
    bt_engine_params_t ep = {
        .backend = "cuda",
        .max_batch_tokens = max_batch,
        .max_seqs = max_b,
        .kv_type = BT_TYPE_BF16,
        .kv_budget_bytes = ((size_t)max_b * (c->ctx + c->steps + 2 + 32) + max_p + 32) *
                           bt_model_kv_bytes_per_token(&m->hp, BT_TYPE_BF16),
        .nondeterministic = !c->deterministic,
    };
    run_t r, rg; /* rg: the same engine with decode steps as CUDA graphs */
    memset(&r, 0, sizeof r);
    memset(&rg, 0, sizeof rg);
    const char *graphs_env = getenv("BATON_CUDA_GRAPHS");
    char *graphs_was = graphs_env ? strdup(graphs_env) : NULL;
    setenv("BATON_CUDA_GRAPHS", "0", 1);
    if (bt_engine_create(m, &ep, &r.e) != BT_OK)
        return 1;
    setenv("BATON_CUDA_GRAPHS", "1", 1);
    int st = bt_engine_create(m, &ep, &rg.e);
    if (graphs_was)
        setenv("BATON_CUDA_GRAPHS", graphs_was, 1);
    else
        unsetenv("BATON_CUDA_GRAPHS");
    free(graphs_was);
    if (st != BT_OK) {
        bt_engine_destroy(r.e);
        return 1;
    }
    r.toks = rg.toks = malloc((size_t)max_p * sizeof(int32_t));
    r.logits = rg.logits = malloc((size_t)max_b * m->hp.n_vocab * sizeof(float));
    for (int i = 0; i < max_p; i++)
        r.toks[i] = 3 + (int32_t)((i * 7919u) % (uint32_t)(m->hp.n_vocab - 3));

    struct cudaDeviceProp prop;
    cudaGetDeviceProperties(&prop, 0);
    const double bw = copy_bandwidth(), rate = gemm_rate(4096, 8192, 8192);
    const double wbytes = step_weight_bytes(m), floor_s = bw > 0 ? wbytes / bw : 0;
    const char *fused_env = getenv("BATON_FUSED_OPS"); /* read as bt_backend_create reads it */
    const int fused = !(fused_env && !strcmp(fused_env, "0"));
    printf("device              %s\n", prop.name);
    printf("model               %s (%s weights, bf16 KV, %s)\n", m->hp.name,
           bt_type_name(m->hp.weight_type), c->deterministic ? "deterministic" : "fast paths");
    printf("fused matmuls       %s\n", fused ? "on" : "off (BATON_FUSED_OPS=0)");
    printf("device copy         %.0f GB/s (read + write)\n", bw / 1e9);
    printf("weight bytes/step   %.3f GB -> read floor %.3f ms\n", wbytes / 1e9, floor_s * 1e3);
    printf("bf16 cuBLAS matmul  %.1f TFLOP/s (4096 x 8192 x 8192)\n", rate / 1e12);

    FILE *js = c->json ? fopen(c->json, "w") : NULL;
    if (js)
        fprintf(js,
                "{\"device\": \"%s\", \"model\": \"%s\", \"deterministic\": %d, "
                "\"fused_ops\": %d, \"copy_gbps\": %.1f, \"weight_bytes\": %.0f, "
                "\"read_floor_ms\": %.4f, \"gemm_tflops\": %.2f, \"decode\": [",
                prop.name, m->hp.name, c->deterministic, fused, bw / 1e9, wbytes, floor_s * 1e3,
                rate / 1e12);
    bt_engine_out_t o;
    if (bt_engine_out_init(&o, max_b, m->hp.n_vocab) != BT_OK)
        return 1;
    for (int i = 0; i < nb; i++) {
        const int b = batches[i];
        double s = run_decode(&r, b, c->ctx, c->steps, max_batch, OUT_LOGITS, &o);
        double sg = run_decode(&rg, b, c->ctx, c->steps, max_batch, OUT_LOGITS, &o);
        double sa = run_decode(&rg, b, c->ctx, c->steps, max_batch, OUT_ARGMAX, &o);
        double sp = run_decode(&rg, b, c->ctx, c->steps, max_batch, OUT_TOPP, &o);
        printf("decode  batch %-4d  ctx %d: %8.3f ms/step  (%.2fx floor, %.0f tok/s; logits to "
               "the host)\n",
               b, c->ctx, s * 1e3, floor_s > 0 ? s / floor_s : 0, b / s);
        printf("  with CUDA graphs          %8.3f ms/step  (%.2fx floor, %.0f tok/s)\n", sg * 1e3,
               floor_s > 0 ? sg / floor_s : 0, b / sg);
        printf("  graphs, greedy ids        %8.3f ms/step  (%.2fx floor, %.0f tok/s)\n", sa * 1e3,
               floor_s > 0 ? sa / floor_s : 0, b / sa);
        printf("  graphs, top-p candidates  %8.3f ms/step  (%.2fx floor, %.0f tok/s)\n", sp * 1e3,
               floor_s > 0 ? sp / floor_s : 0, b / sp);
        if (js)
            fprintf(js,
                    "%s{\"batch\": %d, \"ctx\": %d, \"step_ms\": %.4f, \"graph_step_ms\": %.4f, "
                    "\"graph_argmax_step_ms\": %.4f, \"graph_topp_step_ms\": %.4f}",
                    i ? ", " : "", b, c->ctx, s * 1e3, sg * 1e3, sa * 1e3, sp * 1e3);
    }
    bt_engine_out_fini(&o);
    if (js)
        fprintf(js, "], \"prefill\": [");
    seqs_reset(&r, max_b, 1);
    for (int i = 0; i < np; i++) {
        double t[100];
        run_prefill(&r, prefills[i]); /* warm-up */
        for (int k = 0; k < c->reps; k++)
            t[k] = run_prefill(&r, prefills[i]);
        qsort(t, (size_t)c->reps, sizeof t[0], cmp_double);
        double s = t[c->reps / 2], fl = prefill_flops(m, prefills[i]);
        printf("prefill %5d tokens:   %8.3f ms  (%.1f TFLOP/s, %.0f%% of the cuBLAS rate)\n",
               prefills[i], s * 1e3, fl / s / 1e12, rate > 0 ? 100 * fl / s / rate : 0);
        if (js)
            fprintf(js, "%s{\"tokens\": %d, \"ms\": %.4f, \"tflops\": %.2f}", i ? ", " : "",
                    prefills[i], s * 1e3, fl / s / 1e12);
    }
    if (js) {
        fprintf(js, "]}\n");
        fclose(js);
    }
    for (int i = 0; i < max_b; i++) {
        bt_kv_seq_fini(&r.kv[i], bt_engine_kv_pool(r.e));
        bt_kv_seq_fini(&rg.kv[i], bt_engine_kv_pool(rg.e));
    }
    free(r.toks);
    free(r.logits);
    bt_engine_destroy(rg.e);
    bt_engine_destroy(r.e);
    return 0;
}

/* Writes the synthetic preset to the --model path. */
static int generate(const cfg_t *c)
{
    bt_modelgen_params_t mp;
    if (bt_modelgen_preset(c->preset, &mp) != BT_OK) {
        fprintf(stderr, "baton-bench-cuda: no preset '%s' (%s)\n", c->preset,
                bt_modelgen_preset_list());
        return -1;
    }
    static const int types[] = {BT_TYPE_F32, BT_TYPE_F16, BT_TYPE_BF16, BT_TYPE_Q8_0};
    mp.type = BT_TYPE_BF16;
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
        if (!strcmp(c->type, bt_type_name(types[i])))
            mp.type = types[i];
    printf("generating %s (%s) into %s\n", c->preset, bt_type_name(mp.type), c->model);
    return bt_modelgen_write(&mp, c->model) == BT_OK ? 0 : -1;
}

int main(int argc, char **argv)
{
    cfg_t c = {0};
    int batches[MAX_LIST], prefills[MAX_LIST], nb, np, rc = 2;
    int st = bt_cfg_parse(&table, &c, argc, argv, 1, NULL, 0, NULL);
    if (st != BT_OK) {
        rc = st == BT_AGAIN ? 0 : 2;
        goto out;
    }
    if (!c.model || (nb = parse_list(c.batches, batches, 1, MAX_BATCH)) <= 0 ||
        (np = parse_list(c.prefills, prefills, 1, 65536)) <= 0) {
        fprintf(stderr, "baton-bench-cuda: --model FILE, --batches 1..%d, --prefills 1..65536\n",
                MAX_BATCH);
        goto out;
    }
    if (access(c.model, R_OK) != 0 && c.preset && generate(&c) != 0) {
        rc = 1;
        goto out;
    }
    bt_model_params_t mp = {.path = c.model};
    bt_model_t *m = NULL;
    if (bt_model_load(&mp, &m) != BT_OK) {
        rc = 1;
        goto out;
    }
    rc = bench(&c, m, batches, nb, prefills, np);
    bt_model_destroy(m);
out:
    bt_cfg_free(&table, &c);
    return rc;
}
