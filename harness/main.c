/* SPDX-License-Identifier: MIT */
/*
 * main.c - baton-bench: measures a running cluster's latency, SLO attainment and goodput from
 * the client side, writing DIR/result.json, DIR/requests.csv and a one-screen summary.
 *
 * Modes: one run at --rate (open loop: Poisson, gamma, constant or the trace's own times) or at
 * --concurrency (closed loop); --goodput-search for the largest rate with --attainment percent
 * of requests meeting both objectives; --compare ENDPOINT runs the same workload against a
 * second cluster and reports the goodput ratio. Every run also reports attainment at the
 * --slo-scales multiples of the objectives (DistServe's SLO-scale figures) from the same
 * timelines. The workload is drawn once; every rate sees the same requests.
 */
#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "baton_client.h"
#include "common/alloc.h"
#include "common/config.h"
#include "common/log.h"
#include "common/status.h"
#include "harness/arrival.h"
#include "harness/driver.h"
#include "harness/lengths.h"
#include "harness/plot.h"
#include "harness/report.h"
#include "harness/search.h"

#define MAX_POINTS 64
#define MAX_SCALES 16

typedef struct {
    char *router, *out, *workload, *traces_dir, *arrival, *len_dist, *compare, *slo_scales;
    char *log_level;
    float rate, cv, time_scale, len_sigma, slo_ttft_ms, slo_tpot_ms, attainment;
    float rate_max;
    int goodput_search, num_requests, input_len, output_len, input_max, output_max;
    int concurrency, n_gpus, timeout_s, search_iters, plots;
    int64_t seed;
} bb_cfg_t;

#define OPT(n, t, d, lo, hi, f, h)                                                                 \
    {                                                                                              \
        n, 0, t, d, lo, hi, offsetof(bb_cfg_t, f), h                                               \
    }
static const bt_cfg_opt_t opts[] = {
    OPT("router", BT_CFG_STRING, "tcp://127.0.0.1:5555", 0, 0, router, "the cluster's router"),
    OPT("out", BT_CFG_STRING, NULL, 0, 0, out, "output folder (required)"),
    OPT("rate", BT_CFG_FLOAT, "1", 0, 1e6, rate,
        "request rate, req/s (the start of a goodput search); 0 with --arrival trace: as "
        "recorded"),
    OPT("goodput-search", BT_CFG_BOOL, "0", 0, 0, goodput_search,
        "search the largest rate meeting --attainment"),
    OPT("rate-max", BT_CFG_FLOAT, "0", 0, 1e6, rate_max,
        "a rate expected to fail, to bracket the search; 0: found by doubling"),
    OPT("search-iters", BT_CFG_INT, "5", 1, 30, search_iters, "bisection steps"),
    OPT("attainment", BT_CFG_FLOAT, "90", 1, 100, attainment, "goodput target, percent"),
    OPT("num-requests", BT_CFG_INT, "200", 1, 10000000, num_requests, "requests per run"),
    OPT("concurrency", BT_CFG_INT, "0", 0, 1000000, concurrency,
        "closed loop with this many in flight; 0: open loop"),
    OPT("arrival", BT_CFG_STRING, "poisson", 0, 0, arrival,
        "poisson, gamma (--cv), constant, trace (the workload's timestamps)"),
    OPT("cv", BT_CFG_FLOAT, "1", 0.01, 100, cv, "gamma gaps' coefficient of variation"),
    OPT("time-scale", BT_CFG_FLOAT, "1", 0.0001, 10000, time_scale,
        "trace arrivals: multiply the recorded gaps (0.5 twice as fast)"),
    OPT("workload", BT_CFG_STRING, NULL, 0, 0, workload,
        "chatbot, code, summarization (DistServe presets) or a trace file; unset: synthetic"),
    OPT("traces-dir", BT_CFG_STRING, "../shared/traces", 0, 0, traces_dir,
        "where the presets' trace files are"),
    OPT("len-dist", BT_CFG_STRING, "fixed", 0, 0, len_dist,
        "synthetic lengths: fixed, uniform (up to --*-max), lognormal (median --*-len)"),
    OPT("input-len", BT_CFG_INT, "128", 1, 1 << 24, input_len, "prompt tokens"),
    OPT("output-len", BT_CFG_INT, "32", 1, 1 << 24, output_len, "output tokens"),
    OPT("input-max", BT_CFG_INT, "0", 0, 1 << 24, input_max, "uniform: largest prompt"),
    OPT("output-max", BT_CFG_INT, "0", 0, 1 << 24, output_max, "uniform: largest output"),
    OPT("len-sigma", BT_CFG_FLOAT, "0.5", 0.01, 10, len_sigma, "lognormal: log-space std"),
    OPT("slo-ttft-ms", BT_CFG_FLOAT, "0", 0, 1e9, slo_ttft_ms,
        "TTFT objective; 0: the preset's, else 1000"),
    OPT("slo-tpot-ms", BT_CFG_FLOAT, "0", 0, 1e9, slo_tpot_ms,
        "TPOT objective; 0: the preset's, else 100"),
    OPT("slo-scales", BT_CFG_STRING, "0.5,0.75,1,1.5,2,3", 0, 0, slo_scales,
        "objective multiples for the SLO-scale attainment"),
    OPT("n-gpus", BT_CFG_INT, "0", 0, 100000, n_gpus,
        "divide goodput by this; 0: the cluster's instance count"),
    OPT("compare", BT_CFG_STRING, NULL, 0, 0, compare,
        "a second router: same workload, goodput ratio (first / second)"),
    OPT("seed", BT_CFG_INT64, "1", 0, 0, seed, "workload and prompt seed"),
    OPT("timeout-s", BT_CFG_INT, "120", 1, 86400, timeout_s,
        "give up on a run when nothing arrives for this long"),
    OPT("plots", BT_CFG_BOOL, "1", 0, 0, plots, "draw PNG plots with gnuplot when present"),
    OPT("log-level", BT_CFG_STRING, "warn", 0, 0, log_level, "debug, info, warn, error"),
};
static const bt_cfg_table_t table = {
    .prog = "baton-bench",
    .summary = "Measures TTFT/TPOT, SLO attainment and goodput of a running cluster.",
    .opts = opts,
    .n_opts = sizeof opts / sizeof opts[0],
};

/* The workload and what each run needs; shared by every rate and both clusters. */
typedef struct {
    const bb_cfg_t *c;
    bb_request_t *reqs; /* (n) lengths fixed, arrival_ms set per run */
    double *unit_s;     /* (n) arrivals at rate 1; NULL for trace times */
    double *trace_ms;   /* (n) the trace's times, or NULL */
    size_t n;
    int arrival;
    bb_slo_t slo;
    double scales[MAX_SCALES];
    int n_scales;
    char workload[1100];
    /* per cluster */
    const char *endpoint;
    char model[128];
    uint32_t n_vocab, n_ctx, max_prompt;
    int n_gpus;
    const char *dir;
    bb_run_t *best; /* the run kept for requests.csv */
    bb_summary_t best_sum;
    double best_rate;
} bench_t;

static int make_dir(const char *path)
{
    if (mkdir(path, 0777) != 0 && errno != EEXIST) {
        bt_error("%s: cannot create: %s", path, strerror(errno));
        return BT_ERR_IO;
    }
    return BT_OK;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* INFO from the router: the vocabulary prompts are drawn from, the limits lengths are clipped
 * to, and the instance count goodput is divided by. */
static int cluster_info(bench_t *b)
{
    bt_client_params_t cp = {.endpoint = b->endpoint, .timeout_ms = 10000};
    bt_client_t *cl = NULL;
    bt_client_info_t *info = NULL;
    int st = bt_client_connect(&cp, &cl);
    if (st == BT_CLIENT_OK)
        st = bt_client_info(cl, 10000, &info);
    if (st != BT_CLIENT_OK) {
        bt_error("cannot reach the router at %s: %s", b->endpoint, bt_client_strerror(st));
        bt_client_close(cl);
        return st;
    }
    b->n_vocab = info->n_vocab;
    b->n_ctx = info->n_ctx;
    b->max_prompt = info->max_prompt_tokens;
    snprintf(b->model, sizeof b->model, "%s", info->model ? info->model : "");
    int alive = 0;
    for (size_t i = 0; i < info->n_instances; i++)
        alive += info->instances[i].alive != 0;
    b->n_gpus = b->c->n_gpus > 0 ? b->c->n_gpus : alive;
    bt_client_info_free(info);
    bt_client_close(cl);
    return b->n_vocab > 3 ? BT_OK : BT_ERR_FORMAT;
}

/* Waits (up to 60 s) until the router holds no request: the previous run's tail has drained
 * and does not load the next one. */
static void settle(const char *endpoint)
{
    bt_client_params_t cp = {.endpoint = endpoint, .timeout_ms = 2000};
    bt_client_t *cl = NULL;
    if (bt_client_connect(&cp, &cl) != BT_CLIENT_OK)
        return;
    for (int i = 0; i < 600; i++) {
        bt_client_health_t h;
        if (bt_client_health(cl, 2000, &h) == BT_CLIENT_OK && h.queued == 0 && h.running == 0)
            break;
        sleep_ms(100);
    }
    bt_client_close(cl);
}

static int load_lengths(bench_t *b, pl_trace_t **trace)
{
    const bb_cfg_t *c = b->c;
    bb_lengths_params_t lp = {.input_len = c->input_len,
                              .output_len = c->output_len,
                              .input_max = c->input_max > 0 ? c->input_max : c->input_len,
                              .output_max = c->output_max > 0 ? c->output_max : c->output_len,
                              .sigma = c->len_sigma,
                              .seed = (uint64_t)c->seed};
    const bb_preset_t *pre = bb_preset_find(c->workload);
    char path[1024];
    if (c->workload) {
        if (pre)
            snprintf(path, sizeof path, "%s/%s", c->traces_dir, pre->trace);
        else
            snprintf(path, sizeof path, "%s", c->workload);
        if (pl_trace_load(path, trace) != BT_OK)
            return BT_ERR_FORMAT;
        lp.kind = BB_LEN_TRACE;
        lp.trace = *trace;
        lp.in_order = b->arrival == BB_ARRIVAL_TRACE;
        snprintf(b->workload, sizeof b->workload, "%s", pre ? pre->name : path);
    } else {
        int k = strcmp(c->len_dist, "fixed") == 0       ? BB_LEN_FIXED
                : strcmp(c->len_dist, "uniform") == 0   ? BB_LEN_UNIFORM
                : strcmp(c->len_dist, "lognormal") == 0 ? BB_LEN_LOGNORMAL
                                                        : -1;
        if (k < 0) {
            bt_error("unknown --len-dist %s", c->len_dist);
            return BT_ERR_INVAL;
        }
        lp.kind = (bb_len_kind_t)k;
        snprintf(b->workload, sizeof b->workload, "synthetic %s %d/%d", c->len_dist, c->input_len,
                 c->output_len);
    }
    b->slo.slo_ttft_ms = c->slo_ttft_ms > 0 ? c->slo_ttft_ms : pre ? pre->slo_ttft_ms : 1000;
    b->slo.slo_tpot_ms = c->slo_tpot_ms > 0 ? c->slo_tpot_ms : pre ? pre->slo_tpot_ms : 100;
    return bb_lengths_make(&lp, b->n, b->reqs);
}

/* Lengths and arrivals, drawn once for every run. */
static int make_workload(bench_t *b)
{
    const bb_cfg_t *c = b->c;
    b->n = (size_t)c->num_requests;
    b->reqs = bt_calloc(b->n, sizeof *b->reqs);
    b->unit_s = bt_calloc(b->n, sizeof *b->unit_s);
    if (!b->reqs || !b->unit_s)
        return BT_ERR_NOMEM;
    pl_trace_t *trace = NULL;
    int st = load_lengths(b, &trace);
    if (st == BT_OK && b->arrival == BB_ARRIVAL_TRACE) {
        if (!trace || !trace->arrival_ms) {
            bt_error("--arrival trace needs a --workload trace with timestamps");
            st = BT_ERR_INVAL;
        } else if ((b->trace_ms = bt_malloc(b->n * sizeof *b->trace_ms)) == NULL) {
            st = BT_ERR_NOMEM;
        } else {
            bb_arrival_trace(trace->arrival_ms, b->n, c->time_scale, b->trace_ms);
        }
    } else if (st == BT_OK) {
        st = bb_arrival_unit((bb_arrival_t)b->arrival, c->cv, b->n, (uint64_t)c->seed, b->unit_s);
    }
    pl_trace_destroy(trace);
    return st;
}

/* One run at rate (ignored in closed loop and with trace times unless > 0). */
static int run_at(bench_t *b, double rate, bb_run_t **run, bb_summary_t *sum)
{
    const bb_cfg_t *c = b->c;
    for (size_t i = 0; i < b->n; i++)
        b->reqs[i].arrival_ms = 0;
    if (b->trace_ms) {
        /* A search compresses the recorded times to the asked rate. */
        double span = b->trace_ms[b->n - 1], scale = 1;
        if (rate > 0 && span > 0)
            scale = (double)(b->n - 1) / (rate * span / 1e3);
        for (size_t i = 0; i < b->n; i++)
            b->reqs[i].arrival_ms = b->trace_ms[i] * scale;
    } else if (c->concurrency == 0) {
        double *ms = bt_malloc(b->n * sizeof *ms);
        if (!ms)
            return BT_ERR_NOMEM;
        bb_arrival_at_rate(b->unit_s, b->n, rate, ms);
        for (size_t i = 0; i < b->n; i++)
            b->reqs[i].arrival_ms = ms[i];
        bt_free(ms);
    }
    char label[64];
    snprintf(label, sizeof label, "%.3g req/s", rate);
    bb_driver_params_t dp = {.endpoint = b->endpoint,
                             .n_vocab = b->n_vocab,
                             .seed = (uint64_t)c->seed,
                             .concurrency = c->concurrency,
                             .timeout_s = c->timeout_s,
                             .progress = isatty(2),
                             .label = c->concurrency ? "closed loop" : label};
    settle(b->endpoint);
    int st = bb_drive(&dp, b->reqs, b->n, run);
    if (st == BT_OK)
        st = bb_summarize((*run)->tl, (*run)->n, &b->slo, sum);
    return st;
}

/* Keeps run as the one reported when it is the first, or passes at a higher rate. */
static void keep(bench_t *b, bb_run_t *run, const bb_summary_t *s, double rate, int passes)
{
    int better =
        !b->best ||
        (passes && (b->best_sum.slo_attainment < b->c->attainment / 100 || rate > b->best_rate));
    if (!better) {
        bb_run_destroy(run);
        return;
    }
    bb_run_destroy(b->best);
    b->best = run;
    b->best_sum = *s;
    b->best_rate = rate;
}

static int measure(void *user, double rate, double *attainment)
{
    bench_t *b = user;
    bb_run_t *run = NULL;
    bb_summary_t s;
    int st = run_at(b, rate, &run, &s);
    if (st != BT_OK) {
        bb_run_destroy(run);
        return st;
    }
    *attainment = s.slo_attainment;
    if (b->c->concurrency > 0)
        fprintf(stderr, "  closed loop, %d in flight:", b->c->concurrency);
    else
        fprintf(stderr, "  rate %8.3f req/s:", rate);
    fprintf(stderr, " attainment %5.1f%%, TTFT p90 %.1f ms, TPOT p90 %.1f ms\n",
            100 * s.slo_attainment, s.ttft.p90, s.tpot.p90);
    keep(b, run, &s, rate, s.slo_attainment >= b->c->attainment / 100);
    return BT_OK;
}

static int write_points(const char *dir, const char *name, const char *head, const double *x,
                        const double *y, int n)
{
    char path[1100];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    if (!f) {
        bt_error("%s: cannot write", path);
        return BT_ERR_IO;
    }
    fprintf(f, "%s\n", head);
    for (int i = 0; i < n; i++)
        fprintf(f, "%.6f,%.6f\n", x[i], y[i]);
    return fclose(f) == 0 ? BT_OK : BT_ERR_IO;
}

/* SLO-scale attainment of the kept run, printed and written to slo_scale.csv. */
static int write_scales(bench_t *b)
{
    double att[MAX_SCALES];
    fprintf(stdout, "  attainment by SLO scale:");
    for (int i = 0; i < b->n_scales; i++) {
        att[i] = bb_attainment(b->best->tl, b->best->n, &b->slo, b->scales[i]);
        fprintf(stdout, " %gx %.1f%%", b->scales[i], 100 * att[i]);
    }
    fprintf(stdout, "\n");
    return write_points(b->dir, "slo_scale.csv", "slo_scale,slo_attainment", b->scales, att,
                        b->n_scales);
}

static int write_outputs(bench_t *b, const bb_point_t *pts, int n_pts, double goodput)
{
    const bb_cfg_t *c = b->c;
    bb_report_ctx_t ctx = {.endpoint = b->endpoint,
                           .model = b->model,
                           .workload = b->workload,
                           .arrival = c->concurrency ? "closed" : bb_arrival_name(b->arrival),
                           .mode = c->goodput_search ? "goodput-search"
                                   : c->concurrency  ? "closed-loop"
                                                     : "open-loop",
                           .request_rate = c->concurrency ? 0 : b->best_rate,
                           .cv = b->arrival == BB_ARRIVAL_GAMMA ? c->cv : 1,
                           .time_scale = c->time_scale,
                           .concurrency = c->concurrency,
                           .seed = (long long)c->seed,
                           .slo = b->slo,
                           .n_gpus = b->n_gpus};
    char path[1100];
    snprintf(path, sizeof path, "%s/result.json", b->dir);
    int st = bb_report_json(path, &ctx, &b->best_sum, pts, n_pts, goodput);
    snprintf(path, sizeof path, "%s/requests.csv", b->dir);
    if (st == BT_OK)
        st = bb_report_csv(path, b->best, &b->slo);
    bb_report_print(stdout, &ctx, &b->best_sum);
    if (st == BT_OK)
        st = write_scales(b);
    if (st == BT_OK && n_pts > 0) {
        double x[MAX_POINTS], y[MAX_POINTS];
        /* In rate order, so the plotted curve does not zig-zag in measuring order. */
        for (int i = 0; i < n_pts; i++) {
            int k = i;
            for (; k > 0 && x[k - 1] > pts[i].rate; k--)
                x[k] = x[k - 1], y[k] = y[k - 1];
            x[k] = pts[i].rate, y[k] = pts[i].attainment;
        }
        st = write_points(b->dir, "search.csv", "rate,slo_attainment", x, y, n_pts);
        printf("  goodput: %.3f req/s (%.3f per GPU over %d) at >= %.0f%% attainment\n", goodput,
               b->n_gpus > 0 ? goodput / b->n_gpus : 0, b->n_gpus, c->attainment);
    }
    if (st == BT_OK)
        st = bb_plot_breakdown_csv(b->dir, &b->best_sum);
    if (st == BT_OK && c->plots)
        st = bb_plot_dir(b->dir, &b->slo);
    return st;
}

/* Everything against one cluster, into dir; its goodput (search) or attainment in *figure. */
static int bench_cluster(bench_t *b, const char *endpoint, const char *dir, double *figure)
{
    const bb_cfg_t *c = b->c;
    b->endpoint = endpoint;
    b->dir = dir;
    int st = make_dir(dir);
    if (st == BT_OK)
        st = cluster_info(b);
    if (st != BT_OK)
        return st;
    size_t clipped = bb_lengths_clip(b->reqs, b->n, (int32_t)b->max_prompt, (int32_t)b->n_ctx);
    if (clipped)
        bt_warn("%zu requests clipped to the cluster's limits (prompt %u, context %u)", clipped,
                b->max_prompt, b->n_ctx);
    bb_point_t pts[MAX_POINTS];
    int n_pts = 0;
    double goodput = 0, att = 0;
    if (c->goodput_search) {
        bb_search_params_t sp = {.target = c->attainment / 100,
                                 .rate_lo = c->rate > 0 ? c->rate : 1,
                                 .rate_hi = c->rate_max,
                                 .iterations = c->search_iters};
        st = bb_goodput_search(&sp, measure, b, pts, MAX_POINTS, &n_pts, &goodput);
        *figure = goodput;
    } else {
        st = measure(b, b->trace_ms ? 0 : c->rate, &att);
        *figure = att;
    }
    if (st == BT_OK && b->best)
        st = write_outputs(b, pts, n_pts, goodput);
    bb_run_destroy(b->best);
    b->best = NULL;
    return st;
}

static int write_compare(const char *dir, const bb_cfg_t *c, double a, double b)
{
    char path[1100];
    snprintf(path, sizeof path, "%s/compare.json", dir);
    FILE *f = fopen(path, "w");
    if (!f) {
        bt_error("%s: cannot write", path);
        return BT_ERR_IO;
    }
    const char *what = c->goodput_search ? "goodput" : "slo_attainment";
    fprintf(f, "{\n  \"a\": \"%s\",\n  \"b\": \"%s\",\n  \"metric\": \"%s\",\n", c->router,
            c->compare, what);
    fprintf(f, "  \"a_value\": %.6f,\n  \"b_value\": %.6f,\n  \"ratio\": %.6f\n}\n", a, b,
            b > 0 ? a / b : 0);
    printf("==== compare: %s %.3f (a: %s) vs %.3f (b: %s), ratio a/b %.2f ====\n", what, a,
           c->router, b, c->compare, b > 0 ? a / b : 0);
    return fclose(f) == 0 ? BT_OK : BT_ERR_IO;
}

static int bench_main(const void *cfg)
{
    const bb_cfg_t *c = cfg;
    bench_t b = {.c = c, .arrival = bb_arrival_parse(c->arrival)};
    if (!c->out || b.arrival < 0) {
        fprintf(stderr, "baton-bench: need --out DIR and a known --arrival\n");
        return 2;
    }
    for (const char *s = c->slo_scales; s && *s && b.n_scales < MAX_SCALES;) {
        char *end;
        double v = strtod(s, &end);
        if (end == s || !(v > 0)) {
            fprintf(stderr, "baton-bench: bad --slo-scales %s\n", c->slo_scales);
            return 2;
        }
        b.scales[b.n_scales++] = v;
        s = *end == ',' ? end + 1 : end;
    }
    int st = make_workload(&b);
    if (st == BT_OK)
        st = make_dir(c->out);
    double fa = 0, fb = 0;
    if (st == BT_OK && !c->compare) {
        st = bench_cluster(&b, c->router, c->out, &fa);
    } else if (st == BT_OK) {
        char da[1024], db[1024];
        snprintf(da, sizeof da, "%s/a", c->out);
        snprintf(db, sizeof db, "%s/b", c->out);
        st = bench_cluster(&b, c->router, da, &fa);
        if (st == BT_OK)
            st = bench_cluster(&b, c->compare, db, &fb);
        if (st == BT_OK)
            st = write_compare(c->out, c, fa, fb);
    }
    bt_free(b.reqs);
    bt_free(b.unit_s);
    bt_free(b.trace_ms);
    return st == BT_OK ? 0 : 1;
}

int main(int argc, char **argv)
{
    bb_cfg_t c = {0};
    return bt_cfg_run(&table, &c, offsetof(bb_cfg_t, log_level), argc, argv, bench_main);
}
