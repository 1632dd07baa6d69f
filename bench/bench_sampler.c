/* SPDX-License-Identifier: MIT */
/*
 * bench_sampler.c - host sampling cost per token on a large vocabulary: the sampler on the whole
 * row of logits (what a daemon does when a batch's sampling needs the rows) against the sampler
 * on the row's top-k candidates (what it does when the engine hands back candidates), with the
 * tokens of both compared; then a batch of whole rows on one core and across the cores.
 *
 *   baton-bench-sampler [--vocab N] [--tokens N] [--sd X]
 *
 * Logits are model-like: a Gaussian bulk (standard deviation --sd) over the whole vocabulary,
 * which puts nearly all of it within the sampler's window, plus 20 planted favourites. A fixed
 * generator, so runs are comparable.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/alloc.h"
#include "common/clock.h"
#include "common/parfor.h"
#include "common/sampler.h"
#include "common/status.h"
#include "kernels/kernels.h"

static float uniform(uint32_t *x)
{
    *x = *x * 1664525u + 1013904223u;
    return ((float)(*x >> 8) + 1.0f) / 16777217.0f;
}

static void fill(float *l, int32_t n, float sd, uint32_t *x)
{
    for (int32_t i = 0; i < n; i++)
        l[i] = sd * sqrtf(-2.0f * logf(uniform(x))) * cosf(6.2831853f * uniform(x));
    for (int k = 0; k < 20; k++)
        l[(int32_t)(uniform(x) * (float)(n - 1))] = 4.8f * sd + 0.3f * (float)k;
}

/* Times n_tok draws of p on fresh rows: whole row, and top-k candidates when p asks for them. */
static int run(const char *what, bt_sampler_params_t p, int32_t nv, int n_tok, float sd)
{
    float *l = bt_malloc((size_t)nv * sizeof(float)), *row = bt_malloc((size_t)nv * sizeof(float));
    int32_t ids[BT_TOPK_MAX];
    float vals[BT_TOPK_MAX];
    bt_sampler_t *a = NULL, *b = NULL;
    if (!l || !row || bt_sampler_create(&p, nv, &a) != BT_OK ||
        bt_sampler_create(&p, nv, &b) != BT_OK) {
        fprintf(stderr, "baton-bench-sampler: out of memory\n");
        return 1;
    }
    int32_t k = bt_sampler_params_cands(&p);
    double t_row = 0, t_top = 0;
    int same = 0, rows = 0;
    uint32_t x = 1;
    for (int t = 0; t < n_tok; t++) {
        fill(l, nv, sd, &x);
        bt_sampler_set_position(a, (uint64_t)t);
        bt_sampler_set_position(b, (uint64_t)t);
        double t0 = bt_mono_ms();
        memcpy(row, l, (size_t)nv * sizeof(float)); /* a daemon's row comes as a copy too */
        int32_t ta = bt_sampler_sample(a, row);
        double t1 = bt_mono_ms();
        t_row += t1 - t0;
        if (k > 0) { /* as the CPU backend gives them: candidates, the total, the row if need be */
            bt_topk_f32(l, nv, k, ids, vals);
            float tau = bt_sampler_params_tau(&p);
            double total = tau > 0 ? bt_window_total_f32(l, nv, tau) : NAN;
            int32_t tb = bt_sampler_sample_top(b, ids, vals, k, total);
            if (tb == BT_SAMPLER_NEED_ROW) {
                memcpy(row, l, (size_t)nv * sizeof(float));
                tb = bt_sampler_sample(b, row);
                rows++;
            }
            same += tb == ta;
            t_top += bt_mono_ms() - t1;
        }
    }
    printf("%-34s whole row %8.1f us/token", what, 1e3 * t_row / n_tok);
    if (k > 0)
        printf("   top-%d candidates %7.1f us/token (same token %d/%d, row needed %d)", k,
               1e3 * t_top / n_tok, same, n_tok, rows);
    printf("\n");
    bt_sampler_destroy(a);
    bt_sampler_destroy(b);
    bt_free(l);
    bt_free(row);
    return 0;
}

typedef struct {
    bt_sampler_t **smp;
    float *rows;
    int32_t nv;
} batch_t;

static void sample_row(void *arg, int i)
{
    batch_t *b = arg;
    bt_sampler_sample(b->smp[i], b->rows + (size_t)i * b->nv);
}

/* A batch of whole rows sampled one after another, then across the cores (bt_parfor, as the
 * daemons' batcher does). */
static int run_batch(int32_t nv, int batch, int n_steps, float sd)
{
    float *src = bt_malloc((size_t)batch * nv * sizeof(float)),
          *rows = bt_malloc((size_t)batch * nv * sizeof(float));
    bt_sampler_t **smp = bt_calloc((size_t)batch, sizeof *smp);
    bt_parfor_t *par = NULL;
    if (!src || !rows || !smp || bt_parfor_create(0, &par) != BT_OK)
        return 1;
    bt_sampler_params_t p = {.temperature = 0.8f, .seed = 5};
    for (int i = 0; i < batch; i++)
        if (bt_sampler_create(&p, nv, &smp[i]) != BT_OK)
            return 1;
    uint32_t x = 3;
    for (int i = 0; i < batch; i++)
        fill(src + (size_t)i * nv, nv, sd, &x);
    batch_t b = {smp, rows, nv};
    double t_seq = 0, t_par = 0;
    for (int s = 0; s < n_steps; s++) {
        memcpy(rows, src, (size_t)batch * nv * sizeof(float));
        double t0 = bt_mono_ms();
        for (int i = 0; i < batch; i++)
            sample_row(&b, i);
        double t1 = bt_mono_ms();
        memcpy(rows, src, (size_t)batch * nv * sizeof(float));
        double t2 = bt_mono_ms();
        bt_parfor_run(par, batch, sample_row, &b);
        t_seq += t1 - t0;
        t_par += bt_mono_ms() - t2;
    }
    printf("batch of %d whole rows, temp 0.8: %.2f ms a step on one core, %.2f ms on %d\n", batch,
           t_seq / n_steps, t_par / n_steps, 1 + bt_parfor_threads(par));
    for (int i = 0; i < batch; i++)
        bt_sampler_destroy(smp[i]);
    bt_parfor_destroy(par);
    bt_free(smp);
    bt_free(src);
    bt_free(rows);
    return 0;
}

int main(int argc, char **argv)
{
    int32_t nv = 128256;
    int n_tok = 200;
    float sd = 2.5f;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--vocab") == 0)
            nv = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--tokens") == 0)
            n_tok = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--sd") == 0)
            sd = (float)atof(argv[i + 1]);
        else {
            fprintf(stderr, "usage: baton-bench-sampler [--vocab N] [--tokens N] [--sd X]\n");
            return 2;
        }
    }
    if (nv < 2 * BT_TOPK_MAX || n_tok < 1 || !(sd > 0)) {
        fprintf(stderr, "baton-bench-sampler: need --vocab >= %d, --tokens >= 1, --sd > 0\n",
                2 * BT_TOPK_MAX);
        return 2;
    }
    printf("vocabulary %d, logits N(0, %.1f) plus 20 favourites, %d tokens each\n", nv, sd, n_tok);
    int rc = 0;
    rc |= run("greedy", (bt_sampler_params_t){.temperature = 0}, nv, n_tok, sd);
    rc |= run("temperature 0.8", (bt_sampler_params_t){.temperature = 0.8f, .seed = 1}, nv, n_tok,
              sd);
    rc |= run("temperature 0.7, top-p 0.9",
              (bt_sampler_params_t){.temperature = 0.7f, .top_p = 0.9f, .seed = 2}, nv, n_tok, sd);
    rc |= run("top-k 40, top-p 0.95, temp 0.8",
              (bt_sampler_params_t){.temperature = 0.8f, .top_k = 40, .top_p = 0.95f, .seed = 3},
              nv, n_tok, sd);
    rc |= run("top-k 256, temp 1.0",
              (bt_sampler_params_t){.temperature = 1.0f, .top_k = 256, .seed = 4}, nv, n_tok, sd);
    rc |= run_batch(nv, 16, 10, sd);
    return rc;
}
