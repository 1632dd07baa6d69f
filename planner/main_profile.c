/* SPDX-License-Identifier: MIT */
/*
 * main_profile.c - baton-profile: runs the engine (any backend) over a grid of batch shapes,
 * fits DistServe's latency models and writes a profile JSON (common/profile.h) that the router's
 * slo-aware policy and baton-plan read. The fit quality (R^2 and worst relative error of each
 * model) is printed on stderr and recorded in the file.
 *
 * The model is a GGUF file (--model) or one of baton's synthetic presets generated into a
 * temporary file for the run (--preset).
 */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/config.h"
#include "common/engine.h"
#include "common/log.h"
#include "common/modelgen.h"
#include "common/modelid.h"
#include "common/status.h"
#include "profiler.h"

typedef struct {
    char *model, *tokenizer, *preset, *type, *backend, *kv_type, *device, *out, *raw, *log_level,
        *refit;
    char *prefill_lens, *prefill_counts, *decode_batches, *decode_ctx, *fit_weight;
    int threads, max_batch_tokens, reps, knee, tp, quiet, median;
    float link_gbps, link_latency_us;
    size_t kv_mem;
} prof_cfg_t;

#define OPT(n, t, d, lo, hi, f, h)                                                                 \
    {                                                                                              \
        n, 0, t, d, lo, hi, offsetof(prof_cfg_t, f), h                                             \
    }
static const bt_cfg_opt_t prof_opts[] = {
    OPT("model", BT_CFG_STRING, NULL, 0, 0, model, "model file (.gguf, or llama2.c .bin)"),
    OPT("tokenizer", BT_CFG_STRING, NULL, 0, 0, tokenizer, "llama2.c tokenizer (.bin models)"),
    OPT("preset", BT_CFG_STRING, NULL, 0, 0, preset,
        "profile a synthetic model instead: tiny, 15m, 110m, 1b"),
    OPT("type", BT_CFG_STRING, "q8_0", 0, 0, type, "weight type of --preset: f32, f16, bf16, q8_0"),
    OPT("backend", BT_CFG_STRING, "cpu", 0, 0, backend, "compute backend"),
    OPT("threads", BT_CFG_INT, "0", 0, 4096, threads, "compute threads; 0: all cores"),
    OPT("kv-type", BT_CFG_STRING, "f32", 0, 0, kv_type, "KV cache type: f32, f16, bf16"),
    OPT("kv-mem", BT_CFG_SIZE, "2G", 0, 0, kv_mem,
        "most KV memory (decode shapes whose KV does not fit are skipped; pass the daemons' "
        "--kv-mem to profile what they can run)"),
    OPT("prefill-lens", BT_CFG_STRING, "16,32,64,128,256,512,1024,2048", 0, 0, prefill_lens,
        "prompt lengths"),
    OPT("prefill-counts", BT_CFG_STRING, "1,2,4,8", 0, 0, prefill_counts,
        "prompts per prefill batch"),
    OPT("max-batch-tokens", BT_CFG_INT, "2048", 16, 1 << 20, max_batch_tokens,
        "largest prefill batch in tokens (count x length above it is skipped)"),
    OPT("decode-batches", BT_CFG_STRING, "1,2,4,8,16,32,64", 0, 0, decode_batches,
        "sequences per decode step"),
    OPT("decode-ctx", BT_CFG_STRING, "16,64,256,1024,2048", 0, 0, decode_ctx,
        "context lengths of decode steps (multiples of 16)"),
    OPT("reps", BT_CFG_INT, "3", 1, 64, reps, "timed runs per shape; the fastest is kept"),
    OPT("median", BT_CFG_BOOL, "0", 0, 0, median, "keep the median run instead of the fastest"),
    OPT("knee", BT_CFG_BOOL, "1", 0, 0, knee, "allow a piecewise decode fit (--no-knee: one line)"),
    OPT("fit-weight", BT_CFG_STRING, "time", 0, 0, fit_weight,
        "how the fits weight each shape's relative error: time (by the shape's time) or "
        "relative (all alike)"),
    OPT("link-gbps", BT_CFG_FLOAT, "0", 0, 1e9, link_gbps,
        "state the KV link's bandwidth (GB/s) instead of measuring memcpy"),
    OPT("link-latency-us", BT_CFG_FLOAT, "0", 0, 1e9, link_latency_us,
        "latency of the stated link, microseconds"),
    OPT("tp", BT_CFG_INT, "1", 1, 1024, tp, "tensor-parallel degree to record"),
    OPT("device", BT_CFG_STRING, NULL, 0, 0, device, "device to record; default: the CPU model"),
    OPT("out", BT_CFG_STRING, NULL, 0, 0, out, "profile file; default stdout"),
    OPT("raw", BT_CFG_STRING, NULL, 0, 0, raw, "also write every measurement here (CSV)"),
    OPT("refit", BT_CFG_STRING, NULL, 0, 0, refit,
        "fit the measurements of earlier --raw files or daemons' --step-log files (comma-"
        "separated) instead of measuring; the model is still loaded for its shape"),
    OPT("quiet", BT_CFG_BOOL, "0", 0, 0, quiet, "no progress lines"),
    OPT("log-level", BT_CFG_STRING, "warn", 0, 0, log_level, "debug, info, warn, error"),
};
static const bt_cfg_table_t prof_table = {
    .prog = "baton-profile",
    .summary = "Measures the engine and writes a latency profile (prefill, decode, transfer).",
    .opts = prof_opts,
    .n_opts = sizeof prof_opts / sizeof prof_opts[0],
};

/* "1,2,4" into at most PL_PROF_MAX_GRID positive integers; -1 on error. */
static int int_list(const char *name, const char *s, int *out)
{
    int n = 0;
    for (const char *p = s; *p;) {
        char *end;
        long v = strtol(p, &end, 10);
        if (end == p || v < 1 || v > (1 << 24) || n == PL_PROF_MAX_GRID || (*end && *end != ',')) {
            fprintf(stderr, "baton-profile: --%s wants up to %d positive integers like 1,2,4\n",
                    name, PL_PROF_MAX_GRID);
            return -1;
        }
        out[n++] = (int)v;
        p = *end ? end + 1 : end;
    }
    return n;
}

static int type_of(const char *s, int kv)
{
    int t = bt_type_parse(s);
    return kv && t == BT_TYPE_Q8_0 ? -1 : t;
}

/* "Model name (N threads)" from /proc/cpuinfo. */
static void cpu_name(char *buf, size_t cap, int threads)
{
    char line[512], name[256] = "unknown CPU";
    FILE *f = fopen("/proc/cpuinfo", "r");
    while (f && fgets(line, sizeof line, f)) {
        char *c = strchr(line, ':');
        if (!strncmp(line, "model name", 10) && c) {
            snprintf(name, sizeof name, "%s", c + 2);
            name[strcspn(name, "\n")] = 0;
            break;
        }
    }
    if (f)
        fclose(f);
    long n = threads > 0 ? threads : sysconf(_SC_NPROCESSORS_ONLN);
    snprintf(buf, cap, "%s (%ld threads)", name, n);
}

static int grids(const prof_cfg_t *c, pl_profiler_params_t *p)
{
    if ((p->n_prefill_lens = int_list("prefill-lens", c->prefill_lens, p->prefill_lens)) < 1 ||
        (p->n_prefill_counts = int_list("prefill-counts", c->prefill_counts, p->prefill_counts)) <
            1 ||
        (p->n_decode_batches = int_list("decode-batches", c->decode_batches, p->decode_batches)) <
            1 ||
        (p->n_decode_ctx = int_list("decode-ctx", c->decode_ctx, p->decode_ctx)) < 1)
        return -1;
    p->max_batch_tokens = c->max_batch_tokens;
    p->reps = c->reps;
    p->use_median = c->median;
    p->allow_knee = c->knee;
    if (strcmp(c->fit_weight, "time") != 0 && strcmp(c->fit_weight, "relative") != 0) {
        fprintf(stderr, "baton-profile: --fit-weight must be time or relative\n");
        return -1;
    }
    p->fit_weight = strcmp(c->fit_weight, "time") == 0 ? PL_FIT_TIME : PL_FIT_RELATIVE;
    p->link_gb_per_s = c->link_gbps;
    p->link_latency_ms = c->link_latency_us / 1e3;
    p->verbose = !c->quiet;
    return 0;
}

static int max_of(const int *v, int n)
{
    int m = 0;
    for (int i = 0; i < n; i++)
        m = v[i] > m ? v[i] : m;
    return m;
}

static bt_engine_params_t engine_params(const prof_cfg_t *c, const pl_profiler_params_t *p,
                                        const bt_model_t *m, int kv_type)
{
    int max_b = max_of(p->decode_batches, p->n_decode_batches);
    int max_k = max_of(p->prefill_counts, p->n_prefill_counts);
    /* The larger of a prefill batch (each prompt rounded up to a block) and the decode shapes
     * (one prompt per context, kept, and the largest batch's copies of the longest context,
     * plus a few new tokens each), within --kv-mem. */
    size_t pre = (size_t)p->max_batch_tokens + (size_t)max_k * 32;
    size_t max_c = (size_t)max_of(p->decode_ctx, p->n_decode_ctx);
    size_t dec = (size_t)max_b * (max_c + (size_t)p->reps + 2 + 32);
    for (int i = 0; i < p->n_decode_ctx; i++) /* every context's prompt is kept at once */
        dec += (size_t)p->decode_ctx[i] + 16;
    size_t tokens = (pre > dec ? pre : dec) + 64;
    size_t per_token = bt_model_kv_bytes_per_token(&m->hp, (bt_type_t)kv_type);
    if (c->kv_mem > 0 && tokens * per_token > c->kv_mem)
        tokens = c->kv_mem / per_token > pre + 64 ? c->kv_mem / per_token : pre + 64;
    return (bt_engine_params_t){.backend = c->backend,
                                .n_threads = c->threads,
                                .max_batch_tokens =
                                    p->max_batch_tokens > max_b ? p->max_batch_tokens : max_b,
                                .max_seqs = max_b > max_k ? max_b : max_k,
                                .kv_type = (bt_type_t)kv_type,
                                .kv_budget_bytes = tokens * per_token};
}

static void report(const bt_profile_t *p)
{
    fprintf(stderr,
            "prefill:  a %.4g ms, b %.4g ms/token, c %.4g ms/token^2; %d points, R^2 %.5f, "
            "worst error %.1f%%\n",
            p->prefill.a_ms, p->prefill.b_ms_per_token, p->prefill.c_ms_per_token2,
            p->fit_prefill.n_points, p->fit_prefill.r2, 100 * p->fit_prefill.max_rel_err);
    fprintf(stderr, "decode:   a %.4g ms, b %.4g ms/ctx token, c %.4g ms/seq", p->decode.a_ms,
            p->decode.b_ms_per_ctx_token, p->decode.c_ms_per_seq);
    if (p->decode_knee_batch)
        fprintf(stderr, "; from batch %d: a %.4g, b %.4g, c %.4g", p->decode_knee_batch,
                p->decode_above.a_ms, p->decode_above.b_ms_per_ctx_token,
                p->decode_above.c_ms_per_seq);
    fprintf(stderr, "; %d points, R^2 %.5f, worst error %.1f%%\n", p->fit_decode.n_points,
            p->fit_decode.r2, 100 * p->fit_decode.max_rel_err);
    fprintf(stderr, "transfer: latency %.4g ms, %.4g GB/s", p->transfer_latency_ms,
            p->transfer_gb_per_s);
    if (p->fit_transfer.n_points)
        fprintf(stderr, "; %d points, R^2 %.5f, worst error %.1f%%", p->fit_transfer.n_points,
                p->fit_transfer.r2, 100 * p->fit_transfer.max_rel_err);
    fprintf(stderr, "\n");
}

static int profile_model(const prof_cfg_t *c, pl_profiler_params_t *p, const bt_model_t *m)
{
    int kv_type = type_of(c->kv_type, 1);
    if (kv_type < 0) {
        fprintf(stderr, "baton-profile: --kv-type wants f32, f16 or bf16\n");
        return 2;
    }
    bt_engine_params_t ep = engine_params(c, p, m, kv_type);
    bt_engine_t *e = NULL;
    int st = bt_engine_create(m, &ep, &e);
    if (st != BT_OK) {
        bt_error("cannot create the engine: %s", bt_status_str(st));
        return 1;
    }
    bt_profile_t prof = {.tp = c->tp};
    bt_model_id_str(&m->hp, prof.model, sizeof prof.model);
    snprintf(prof.backend, sizeof prof.backend, "%s", c->backend);
    if (c->device)
        snprintf(prof.device, sizeof prof.device, "%s", c->device);
    else
        cpu_name(prof.device, sizeof prof.device, c->threads);
    if (c->refit)
        snprintf(prof.note, sizeof prof.note,
                 "baton-profile --refit: %s weights, %s KV, fitted from %.900s; fits weighted by "
                 "%s; transfer %s",
                 bt_type_name(m->hp.weight_type), c->kv_type, c->refit, c->fit_weight,
                 p->link_gb_per_s > 0 ? "as stated" : "from the files");
    else
        snprintf(prof.note, sizeof prof.note,
                 "baton-profile: %s weights, %s KV, %s of %d runs per shape, prefill up to %d "
                 "tokens, decode batch up to %d and context up to %d; fits weighted by %s; "
                 "transfer %s",
                 bt_type_name(m->hp.weight_type), c->kv_type, c->median ? "median" : "fastest",
                 p->reps, p->max_batch_tokens, max_of(p->decode_batches, p->n_decode_batches),
                 max_of(p->decode_ctx, p->n_decode_ctx), c->fit_weight,
                 p->link_gb_per_s > 0 ? "as stated" : "measured with memcpy");
    p->engine = e;
    st = pl_profiler_run(p, &prof);
    bt_engine_destroy(e);
    if (st != BT_OK)
        return 1;
    report(&prof);
    st = c->out ? bt_profile_write(&prof, c->out) : bt_profile_fprint(&prof, stdout);
    return st == BT_OK ? 0 : 1;
}

/* Generates the preset into a temporary file; path receives its name. */
static int gen_preset(const prof_cfg_t *c, char *path, size_t cap)
{
    bt_modelgen_params_t g;
    int type = type_of(c->type, 0);
    if (bt_modelgen_preset(c->preset, &g) != BT_OK || type < 0) {
        fprintf(stderr, "baton-profile: unknown --preset %s or --type %s\n", c->preset, c->type);
        return -1;
    }
    g.type = (bt_type_t)type;
    const char *dir = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    snprintf(path, cap, "%s/baton-profile-%s-%ld.gguf", dir, c->preset, (long)getpid());
    if (!c->quiet)
        fprintf(stderr, "generating the %s preset (%s) into %s\n", c->preset, c->type, path);
    return bt_modelgen_write(&g, path) == BT_OK ? 0 : -1;
}

static int prof_main(const void *cfg)
{
    const prof_cfg_t *c = cfg;
    pl_profiler_params_t p = {0};
    char gen[1024] = "";
    if (grids(c, &p) != 0)
        return 2;
    if (!c->model == !c->preset) {
        fprintf(stderr, "baton-profile: give --model FILE or --preset NAME\n");
        return 2;
    }
    if (c->preset && gen_preset(c, gen, sizeof gen) != 0)
        return 1;
    p.refit = c->refit ? pl_refit_open(c->refit) : NULL;
    if (c->refit && !p.refit) {
        if (gen[0])
            remove(gen);
        return 1;
    }
    FILE *raw = c->raw && !c->refit ? fopen(c->raw, "w") : NULL;
    if (c->raw && !raw)
        bt_error("cannot write %s", c->raw);
    if (raw)
        fputs("kind,n,len_or_ctx,ms\n", raw);
    p.raw = raw;
    bt_model_params_t mp = {.path = c->preset ? gen : c->model, .tokenizer_path = c->tokenizer};
    bt_model_t *m = NULL;
    int rc = 1;
    if (bt_model_load(&mp, &m) == BT_OK)
        rc = profile_model(c, &p, m);
    else
        bt_error("cannot load model %s", mp.path);
    bt_model_destroy(m);
    if (raw)
        fclose(raw);
    if (p.refit)
        fclose(p.refit);
    if (gen[0])
        remove(gen);
    return rc;
}

int main(int argc, char **argv)
{
    prof_cfg_t c = {0};
    return bt_cfg_run(&prof_table, &c, offsetof(prof_cfg_t, log_level), argc, argv, prof_main);
}
