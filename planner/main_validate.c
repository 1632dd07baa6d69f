/* SPDX-License-Identifier: MIT */
/*
 * main_validate.c - baton-validate: runs one workload against a live cluster (an open-loop
 * client: requests are sent at their arrival times whatever the cluster does) and through the
 * simulator with the cluster's shape and profile, at each rate, and prints the two SLO
 * attainments side by side. Both sides see the very same requests: same lengths, same arrival
 * times (workload.h).
 *
 * The real side measures what a client sees: TTFT from sending to receiving the first token,
 * TPOT from the first to the last token received. Prompts are token ids (no tokenizer needed),
 * outputs have fixed lengths (EOS ignored).
 */
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "baton_client.h"
#include "common/alloc.h"
#include "common/clock.h"
#include "common/config.h"
#include "common/log.h"
#include "common/status.h"
#include "common/steplog.h"
#include "plancli.h"
#include "profiler.h"
#include "sim.h"

#define MAX_RATES 32

typedef struct {
    pl_cli_workload_t wl;
    char *endpoint, *profile, *profile_alt, *window_steps, *policy, *rates, *auto_levels, *csv,
        *log_level;
    int prefill, decode, colocated, max_batch_tokens, max_batch_seqs, block_size, timeout_s;
    float quiet_load, speed_bins_ms;
    size_t kv_mem;
    float slo_ttft_ms, slo_tpot_ms, queue_timeout_ms;
} val_cfg_t;

#define OPT(n, t, d, lo, hi, f, h) PL_CLI_OPT(n, t, d, lo, hi, val_cfg_t, f, h)
static const bt_cfg_opt_t val_opts[] = {
    OPT("endpoint", BT_CFG_STRING, "tcp://127.0.0.1:5555", 0, 0, endpoint, "the router"),
    OPT("profile", BT_CFG_STRING, NULL, 0, 0, profile,
        "latency profile of the cluster's instances (required)"),
    OPT("profile-alt", BT_CFG_STRING, NULL, 0, 0, profile_alt,
        "also simulate with this profile (e.g. the one measured alone): two more columns"),
    OPT("window-steps", BT_CFG_STRING, NULL, 0, 0, window_steps,
        "the daemons' step logs (comma-separated): also simulate each rate with a profile fitted "
        "from the steps served during that rate's own run: two more columns"),
    OPT("speed-bins-ms", BT_CFG_FLOAT, "0", 0, 1e6, speed_bins_ms,
        "with --window-steps: also replay the run's speed, bin by bin of this many ms, on that "
        "profile (a diagnostic of the simulator's queueing): two more columns; 0: off"),
    OPT("prefill", BT_CFG_INT, "1", 0, 1024, prefill, "prefill instances of the cluster"),
    OPT("decode", BT_CFG_INT, "1", 0, 1024, decode, "decode instances of the cluster"),
    OPT("colocated", BT_CFG_INT, "0", 0, 1024, colocated, "colocated instances of the cluster"),
    OPT("kv-mem", BT_CFG_SIZE, "256M", 0, 0, kv_mem, "KV cache of each daemon (as baton up)"),
    OPT("max-batch-tokens", BT_CFG_INT, "512", 1, 1 << 24, max_batch_tokens,
        "token budget of each daemon (as baton up)"),
    OPT("max-batch-seqs", BT_CFG_INT, "64", 1, 1 << 20, max_batch_seqs,
        "sequences per forward of each daemon (as baton up)"),
    OPT("block-size", BT_CFG_INT, "16", 1, 4096, block_size, "KV tokens per block"),
    OPT("policy", BT_CFG_STRING, "least-loaded", 0, 0, policy, "the router's policy"),
    OPT("queue-timeout-ms", BT_CFG_FLOAT, "10000", 0, 1e9, queue_timeout_ms,
        "the router's --queue-timeout-ms: the simulator admits as the router does (the decode "
        "side reserves the prompt's KV at placement, the rest when the sequence joins a batch, "
        "as baton-decode --growth-reserve 1; a request without room waits in the router's queue "
        "and fails after this long); 0: DistServe's pull"),
    PL_CLI_WORKLOAD_OPTS(val_cfg_t, wl),
    OPT("rates", BT_CFG_STRING, "1", 0, 0, rates,
        "request rates, req/s, e.g. 0.5,1,2; auto: where the simulator's attainment falls through "
        "--auto-levels"),
    OPT("auto-levels", BT_CFG_STRING, "99,90,75,50,25,10", 0, 0, auto_levels,
        "with --rates auto: the simulated attainments (%) whose rates are run"),
    OPT("slo-ttft-ms", BT_CFG_FLOAT, "1000", 0.001, 1e9, slo_ttft_ms, "TTFT objective"),
    OPT("slo-tpot-ms", BT_CFG_FLOAT, "100", 0.001, 1e9, slo_tpot_ms, "TPOT objective"),
    OPT("timeout-s", BT_CFG_INT, "600", 1, 86400, timeout_s,
        "give up on a rate when nothing arrives for this long"),
    OPT("quiet-load", BT_CFG_FLOAT, "0", 0, 1024, quiet_load,
        "before each rate, wait (up to 30 min) for the 1-minute load average to fall below this; "
        "0: do not wait"),
    OPT("csv", BT_CFG_STRING, NULL, 0, 0, csv, "every request, real and simulated, as CSV"),
    OPT("log-level", BT_CFG_STRING, "warn", 0, 0, log_level, "debug, info, warn, error"),
};
static const bt_cfg_table_t val_table = {
    .prog = "baton-validate",
    .summary = "Runs a workload on a live cluster and in the simulator; compares attainment.",
    .opts = val_opts,
    .n_opts = sizeof val_opts / sizeof val_opts[0],
};

/* Lifetime events a breakdown is made of, in order. */
static const int stage_ev[] = {BT_CLIENT_EV_ISSUED,         BT_CLIENT_EV_PREFILL_QUEUED,
                               BT_CLIENT_EV_PREFILL_BEGIN,  BT_CLIENT_EV_PREFILL_END,
                               BT_CLIENT_EV_TRANSFER_BEGIN, BT_CLIENT_EV_TRANSFER_END,
                               BT_CLIENT_EV_DECODE_BEGIN,   BT_CLIENT_EV_FINISHED};
#define N_STAGE_EV 8

typedef struct {
    double send_ms, first_ms, last_ms; /* client clock; first/last < 0 until seen */
    uint32_t n_tokens;
    int status, done;
    uint64_t ev_ns[N_STAGE_EV]; /* the result's lifetime events (0: absent) */
} real_req_t;

static int submit(bt_client_t *cl, const pl_req_t *r, size_t i, int32_t *ids, uint32_t n_vocab)
{
    uint64_t x = 0x9e3779b97f4a7c15ull * (i + 1);
    for (int32_t k = 0; k < r->prompt; k++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        ids[k] = 3 + (int32_t)((x >> 33) % (n_vocab - 3)); /* no control tokens */
    }
    bt_client_gen_params_t g = {.prompt_ids = ids,
                                .n_prompt_ids = (size_t)r->prompt,
                                .max_tokens = (uint32_t)r->output,
                                .ignore_eos = 1,
                                .request_id = i + 1};
    return bt_client_submit(cl, &g, NULL);
}

static void on_event(const bt_client_next_t *ev, real_req_t *out, size_t n, double t, size_t *done)
{
    uint64_t id = ev->kind == BT_CLIENT_NEXT_CHUNK ? ev->chunk.request_id : ev->result->request_id;
    if (id < 1 || id > n)
        return;
    real_req_t *q = &out[id - 1];
    if (ev->kind == BT_CLIENT_NEXT_CHUNK) {
        if (q->first_ms < 0)
            q->first_ms = t;
        q->last_ms = t;
        q->n_tokens += (uint32_t)ev->chunk.n_ids;
        return;
    }
    q->status = ev->result->status;
    q->done = 1;
    (*done)++;
    for (size_t e = 0; e < ev->result->n_events; e++)
        for (int k = 0; k < N_STAGE_EV; k++)
            if (ev->result->events[e].kind == stage_ev[k] && !q->ev_ns[k])
                q->ev_ns[k] = ev->result->events[e].time_ns;
}

/* Sends every request at its time and collects the outcomes. BT_ERR_TIMEOUT when nothing came
 * for timeout_s. */
static int real_run(const val_cfg_t *c, bt_client_t *cl, const pl_req_t *r, size_t n,
                    uint32_t n_vocab, int32_t *ids, real_req_t *out)
{
    size_t next = 0, done = 0;
    double t0 = bt_mono_ms(), last_event = t0;
    for (size_t i = 0; i < n; i++)
        out[i] = (real_req_t){.first_ms = -1, .last_ms = -1};
    /* the lifetime events are zeroed by the initializer */
    while (done < n) {
        double t = bt_mono_ms() - t0;
        for (; next < n && r[next].arrival_ms <= t; next++) {
            out[next].send_ms = bt_mono_ms() - t0;
            int st = submit(cl, &r[next], next, ids, n_vocab);
            if (st != BT_CLIENT_OK) {
                out[next].status = st;
                out[next].done = 1;
                done++;
            }
        }
        int wait = next < n ? (int)ceil(r[next].arrival_ms - t) : 200;
        bt_client_next_t ev;
        int st = bt_client_next(cl, wait > 0 ? wait : 0, &ev);
        if (st == BT_CLIENT_OK) {
            on_event(&ev, out, n, bt_mono_ms() - t0, &done);
            if (ev.kind == BT_CLIENT_NEXT_RESULT)
                bt_client_result_free(ev.result);
            last_event = bt_mono_ms();
        } else if (st != BT_CLIENT_ERR_TIMEOUT && st != BT_CLIENT_ERR_NOT_FOUND) {
            bt_error("client: %s", bt_client_strerror(st));
            return st;
        } else if (st == BT_CLIENT_ERR_NOT_FOUND && next < n) {
            /* Nothing in flight, so the client did not wait: sleep to the next arrival here
             * (spinning would take a core from the cluster it measures). */
            bt_sleep_until_mono_ms(t0 + r[next].arrival_ms);
            last_event = bt_mono_ms();
        }
        if (bt_mono_ms() - last_event > c->timeout_s * 1e3)
            return BT_ERR_TIMEOUT;
    }
    return BT_OK;
}

typedef struct {
    double attain, ttft_p50, ttft_p90, tpot_p50, tpot_p90;
    size_t n_failed; /* requests that did not complete */
} stats_t;

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double pct(double *v, size_t n, double q)
{
    if (n == 0)
        return 0;
    qsort(v, n, sizeof *v, cmp_double);
    size_t k = (size_t)ceil(q * (double)n);
    return v[k ? k - 1 : 0];
}

/* ttft[i] < 0: the request never completed. */
static void stats(const double *ttft, const double *tpot, size_t n, const val_cfg_t *c,
                  double *scratch, stats_t *s)
{
    size_t ok = 0, m = 0;
    *s = (stats_t){0};
    for (size_t i = 0; i < n; i++) {
        if (ttft[i] < 0) {
            s->n_failed++;
            continue;
        }
        ok += ttft[i] <= c->slo_ttft_ms && tpot[i] <= c->slo_tpot_ms;
        scratch[m] = ttft[i];
        scratch[n + m++] = tpot[i];
    }
    s->attain = (double)ok / (double)n;
    s->ttft_p50 = pct(scratch, m, 0.5);
    s->ttft_p90 = pct(scratch, m, 0.9);
    s->tpot_p50 = pct(scratch + n, m, 0.5);
    s->tpot_p90 = pct(scratch + n, m, 0.9);
}

typedef struct {
    const val_cfg_t *c;
    const pl_workload_t *w;
    const pl_sim_params_t *sp, *sp_alt; /* sp_alt: --profile-alt, or NULL */
    pl_inst_spec_t *inst_win;           /* --window-steps: the cluster on each rate's own fit */
    const bt_profile_t *prof;
    bt_client_t *cl;
    uint32_t n_vocab;
    pl_req_t *reqs;
    real_req_t *real;
    pl_sim_req_t *sim, *sim_alt, *sim_win;
    int32_t *ids;
    double *buf; /* (5n): real ttft, real tpot, scratch (2n), prefill over profile */
    FILE *csv;
    int n_done, n_within[4]; /* rates run, and those within 2 points (sim, alt, window, replay) */
    double sum_abs[4], worst_abs[4]; /* |sim - real| over the rates run, points */
    int n_win, n_rep;                /* rates whose window could be fitted, and replayed */
} val_t;

/* One more comparison of a simulated attainment with the real one, into the summary. */
static void tally(val_t *v, int k, double sim, double real)
{
    double d = fabs(100 * (sim - real));
    v->n_within[k] += d <= 2.0 + 1e-9;
    v->sum_abs[k] += d;
    v->worst_abs[k] = d > v->worst_abs[k] ? d : v->worst_abs[k];
}

/* The machine's 1-minute load average: the real side shares the CPUs with whatever else runs,
 * and the table says how busy they were. */
static double loadavg(void)
{
    double l = -1;
    FILE *f = fopen("/proc/loadavg", "r");
    if (f && fscanf(f, "%lf", &l) != 1)
        l = -1;
    if (f)
        fclose(f);
    return l;
}

typedef struct {
    uint64_t begin, end; /* PREFILL_BEGIN, PREFILL_END, ns */
    double prompt;
} pf_span_t;

static int span_cmp(const void *a, const void *b)
{
    const pf_span_t *x = a, *y = b;
    return x->begin < y->begin ? -1 : x->begin > y->begin;
}

/* Prefill forwards and their times against the profile: the requests of one forward record
 * their PREFILL_BEGIN and PREFILL_END within a millisecond of each other, so requests sorted by
 * begin are grouped while both stay that close to the group's first; each group's time is
 * compared with the profile's prediction for the whole batch (sum of lengths, sum of squares).
 * Writes the ratios to out and returns how many; *busy is the daemon's busy time over the
 * profile's for the same forwards, the ratio its queue sees (a median hides slow forwards). */
static size_t forward_ratios(const bt_profile_t *prof, pf_span_t *sp, size_t n, double *out,
                             double *busy)
{
    double real_ms = 0, model_ms = 0;
    const uint64_t close_ns = 1000000;
    qsort(sp, n, sizeof *sp, span_cmp);
    size_t n_out = 0;
    for (size_t i = 0; i < n;) {
        double sum = 0, sum2 = 0;
        size_t j = i;
        while (j < n && sp[j].begin - sp[i].begin < close_ns &&
               (sp[j].end > sp[i].end ? sp[j].end - sp[i].end : sp[i].end - sp[j].end) < close_ns) {
            sum += sp[j].prompt;
            sum2 += sp[j].prompt * sp[j].prompt;
            j++;
        }
        double model = bt_profile_prefill_ms(prof, sum, sum2);
        if (model > 0) {
            out[n_out++] = (double)(sp[i].end - sp[i].begin) / 1e6 / model;
            real_ms += (double)(sp[i].end - sp[i].begin) / 1e6;
            model_ms += model;
        }
        i = j;
    }
    *busy = model_ms > 0 ? real_ms / model_ms : 0;
    return n_out;
}

/* The simulator's instances of the cluster c describes, timed by prof (prefill first, then
 * decode, then colocated, as baton up starts them). */
static void cluster_of(const val_cfg_t *c, const bt_profile_t *prof, pl_inst_spec_t *inst)
{
    for (int i = 0; i < c->prefill + c->decode + c->colocated; i++)
        inst[i] =
            (pl_inst_spec_t){.role = i < c->prefill               ? PL_ROLE_PREFILL
                                     : i < c->prefill + c->decode ? PL_ROLE_DECODE
                                                                  : PL_ROLE_COLOCATED,
                             .profile = prof,
                             .kv_tokens = (int64_t)((double)c->kv_mem / prof->kv_bytes_per_token),
                             .max_batch_tokens = c->max_batch_tokens,
                             .max_batch_seqs = c->max_batch_seqs};
}

#define MAX_BINS 4096

/* The speed of the run between t0 and t1, bin by bin: each bin's served prefill (decode) steps
 * over prof's times for the same shapes, from the step logs in f (read from its start). A bin
 * without steps of a kind keeps the previous bin's factor (1 at first). */
static void speed_bins(const val_t *v, FILE *f, const bt_profile_t *prof, double t0, double t1,
                       double *f0, double *f1, pl_speed_t *out)
{
    double bin = v->c->speed_bins_ms, real[2][MAX_BINS] = {{0}}, model[2][MAX_BINS] = {{0}};
    int n = (int)ceil((t1 - t0) / bin);
    n = n < 1 ? 1 : n > MAX_BINS ? MAX_BINS : n;
    char line[256];
    bt_steplog_line_t l;
    rewind(f);
    while (fgets(line, sizeof line, f)) {
        if (bt_steplog_parse(line, &l) != 7 || l.t_ms < t0 || l.t_ms > t1)
            continue;
        int k = !strcmp(l.kind, "pstep") ? 0 : !strcmp(l.kind, "dstep") ? 1 : -1;
        int b = (int)((l.t_ms - t0) / bin);
        if (k < 0 || b >= n)
            continue;
        real[k][b] += l.ms;
        model[k][b] +=
            k == 0 ? bt_profile_prefill_ms(prof, l.x, l.y) : bt_profile_decode_ms(prof, l.y, l.x);
    }
    for (int b = 0; b < n; b++) {
        f0[b] = model[0][b] > 0 ? real[0][b] / model[0][b] : b ? f0[b - 1] : 1.0;
        f1[b] = model[1][b] > 0 ? real[1][b] / model[1][b] : b ? f1[b - 1] : 1.0;
    }
    *out = (pl_speed_t){.bin_ms = bin, .n_bins = n, .factor = {f0, f1}};
}

/* The rate just run, simulated on a profile fitted from the steps the daemons served between
 * t0 and t1 (monotonic ms): the simulator given the service times of that very run, so what it
 * misses is its queueing and batching, not the machine's speed drifting from a profile measured
 * at another time. With --speed-bins-ms, *replay is the same with the run's speed replayed bin
 * by bin (*has_replay set). 1 and *out filled; 0 when the window has too few steps to fit. */
static int window_sim(val_t *v, double t0, double t1, size_t n, pl_sim_result_t *out,
                      pl_sim_result_t *replay, int *has_replay)
{
    struct timespec ts = {1, 200000000}; /* the logs reach their files at least once a second */
    nanosleep(&ts, NULL);
    bt_profile_t prof = *v->prof;
    pl_profiler_params_t pp = {.allow_knee = 1,
                               .fit_weight = PL_FIT_TIME, /* as baton-profile --refit */
                               .window_from_ms = t0,
                               .window_to_ms = t1};
    pp.refit = pl_refit_open(v->c->window_steps); /* read once for the fit and the bins */
    if (!pp.refit)
        return 0;
    int ok = pl_profiler_refit(&pp, &prof) == BT_OK;
    cluster_of(v->c, &prof, v->inst_win);
    pl_sim_params_t sp = *v->sp;
    sp.inst = v->inst_win;
    ok = ok && pl_sim_run(&sp, v->reqs, n, out, v->sim_win) == BT_OK;
    static double f0[MAX_BINS], f1[MAX_BINS];
    pl_speed_t speed;
    *has_replay = ok && v->c->speed_bins_ms > 0;
    if (*has_replay) {
        speed_bins(v, pp.refit, &prof, t0, t1, f0, f1, &speed);
        for (int i = 0; i < sp.n_inst; i++)
            v->inst_win[i].speed = &speed;
        *has_replay = pl_sim_run(&sp, v->reqs, n, replay, v->sim_win) == BT_OK;
    }
    fclose(pp.refit);
    return ok;
}

static int one_rate(val_t *v, double rate)
{
    size_t n = pl_workload_n(v->w);
    pl_workload_at_rate(v->w, rate, v->reqs);
    pl_sim_result_t res, alt = {0};
    int st = pl_sim_run(v->sp, v->reqs, n, &res, v->sim);
    if (st == BT_OK && v->sp_alt)
        st = pl_sim_run(v->sp_alt, v->reqs, n, &alt, v->sim_alt);
    double t0 = bt_mono_ms();
    if (st == BT_OK)
        st = real_run(v->c, v->cl, v->reqs, n, v->n_vocab, v->ids, v->real);
    double t1 = bt_mono_ms();
    if (st != BT_OK)
        return st;
    pl_sim_result_t win = {0}, rep = {0};
    int has_rep = 0, has_win = v->c->window_steps && window_sim(v, t0, t1, n, &win, &rep, &has_rep);
    double *tt = v->buf, *tp = v->buf + n, *scratch = v->buf + 2 * n, *pf = v->buf + 4 * n;
    pf_span_t *spans = bt_malloc(n * sizeof *spans);
    if (!spans)
        return BT_ERR_NOMEM;
    size_t n_pf = 0;
    for (size_t i = 0; i < n; i++) {
        const real_req_t *q = &v->real[i];
        int ok = q->done && q->status == 0 && q->first_ms >= 0;
        tt[i] = ok ? q->first_ms - q->send_ms : -1;
        tp[i] = ok && q->n_tokens > 1 ? (q->last_ms - q->first_ms) / (q->n_tokens - 1) : 0;
        /* stage_ev[2], [3]: PREFILL_BEGIN, PREFILL_END */
        if (ok && q->ev_ns[2] && q->ev_ns[3] > q->ev_ns[2])
            spans[n_pf++] = (pf_span_t){q->ev_ns[2], q->ev_ns[3], v->reqs[i].prompt};
        if (v->csv) {
            fprintf(v->csv, "%g,%zu,%.3f,%d,%d,%.3f,%.4f,%u,%d,%.3f,%.4f", rate, i,
                    v->reqs[i].arrival_ms, v->reqs[i].prompt, v->reqs[i].output, tt[i], tp[i],
                    q->n_tokens, q->status, v->sim[i].ttft_ms, v->sim[i].tpot_ms);
            /* Time between consecutive lifetime events, ms (-1 when one is missing). */
            for (int k = 1; k < N_STAGE_EV; k++)
                fprintf(v->csv, ",%.3f",
                        q->ev_ns[k] && q->ev_ns[k - 1]
                            ? (double)(int64_t)(q->ev_ns[k] - q->ev_ns[k - 1]) / 1e6
                            : -1.0);
            fputc('\n', v->csv);
        }
    }
    double busy;
    n_pf = forward_ratios(v->prof, spans, n_pf, pf, &busy);
    bt_free(spans);
    stats_t real;
    stats(tt, tp, n, v->c, scratch, &real);
    printf("| %g | %.1f%% | %.1f%% | %+.1f | %.0f / %.0f | %.0f / %.0f | %.1f / %.1f | "
           "%.1f / %.1f | %zu | %.2f / %.2f | %.1f |",
           rate, 100 * real.attain, 100 * res.attainment, 100 * (res.attainment - real.attain),
           real.ttft_p50, real.ttft_p90, res.ttft_p50_ms, res.ttft_p90_ms, real.tpot_p50,
           real.tpot_p90, res.tpot_p50_ms, res.tpot_p90_ms, real.n_failed, pct(pf, n_pf, 0.5), busy,
           loadavg());
    if (v->sp_alt)
        printf(" %.1f%% | %+.1f |", 100 * alt.attainment, 100 * (alt.attainment - real.attain));
    if (has_win)
        printf(" %.1f%% | %+.1f |", 100 * win.attainment, 100 * (win.attainment - real.attain));
    else if (v->c->window_steps)
        printf(" (too few steps) | |");
    if (has_rep)
        printf(" %.1f%% | %+.1f |", 100 * rep.attainment, 100 * (rep.attainment - real.attain));
    else if (v->c->speed_bins_ms > 0)
        printf(" - | |");
    printf("\n");
    fflush(stdout);
    v->n_done++;
    tally(v, 0, res.attainment, real.attain);
    if (v->sp_alt)
        tally(v, 1, alt.attainment, real.attain);
    if (has_win) {
        tally(v, 2, win.attainment, real.attain);
        v->n_win++;
    }
    if (has_rep) {
        tally(v, 3, rep.attainment, real.attain);
        v->n_rep++;
    }
    return BT_OK;
}

/* Waits until the router holds no request (the previous rate's tail has drained). */
static void settle(bt_client_t *cl)
{
    for (int i = 0; i < 600; i++) {
        bt_client_health_t h;
        if (bt_client_health(cl, 2000, &h) == BT_CLIENT_OK && h.ok && h.queued == 0 &&
            h.running == 0)
            return;
        struct timespec ts = {0, 100 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}

static int connect_cluster(const val_cfg_t *c, bt_client_t **cl, uint32_t *n_vocab)
{
    bt_client_params_t cp = {.endpoint = c->endpoint, .timeout_ms = 10000};
    bt_client_info_t *info = NULL;
    int st = bt_client_connect(&cp, cl);
    if (st == BT_CLIENT_OK)
        st = bt_client_info(*cl, 10000, &info);
    if (st != BT_CLIENT_OK) {
        bt_error("cannot reach the router at %s: %s", c->endpoint, bt_client_strerror(st));
        return st;
    }
    *n_vocab = info->n_vocab;
    bt_client_info_free(info);
    return *n_vocab > 3 ? BT_OK : BT_ERR_FORMAT;
}

static int validate(val_t *v, const double *rates, int n_rates)
{
    size_t n = pl_workload_n(v->w);
    int32_t max_prompt = 0;
    double mp, mo;
    pl_workload_lengths(v->w, &mp, &mo, &max_prompt);
    v->reqs = bt_malloc(n * sizeof *v->reqs);
    v->real = bt_malloc(n * sizeof *v->real);
    v->sim = bt_malloc(n * sizeof *v->sim);
    v->sim_alt = v->sp_alt ? bt_malloc(n * sizeof *v->sim_alt) : NULL;
    v->sim_win = v->c->window_steps ? bt_malloc(n * sizeof *v->sim_win) : NULL;
    v->ids = bt_malloc((size_t)max_prompt * sizeof *v->ids);
    v->buf = bt_malloc(5 * n * sizeof *v->buf);
    int st = v->reqs && v->real && v->sim && v->ids && v->buf && (v->sim_alt || !v->sp_alt) &&
                     (v->sim_win || !v->c->window_steps)
                 ? BT_OK
                 : BT_ERR_NOMEM;
    int replay = v->c->window_steps && v->c->speed_bins_ms > 0;
    printf("| rate/s | real | sim | sim - real (pp) | real TTFT p50 / p90 ms | "
           "sim TTFT p50 / p90 | real TPOT p50 / p90 ms | sim TPOT p50 / p90 | real failed | "
           "prefill / profile (median / busy) | load |%s%s%s\n"
           "|---|---|---|---|---|---|---|---|---|---|---|%s%s%s\n",
           v->sp_alt ? " sim, --profile-alt | alt - real (pp) |" : "",
           v->c->window_steps ? " sim, same-window steps | window - real (pp) |" : "",
           replay ? " sim, speed replayed | replay - real (pp) |" : "", v->sp_alt ? "---|---|" : "",
           v->c->window_steps ? "---|---|" : "", replay ? "---|---|" : "");
    for (int i = 0; i < n_rates && st == BT_OK; i++) {
        settle(v->cl);
        /* On a shared machine, other work slows the real side only: wait for a quiet spell. */
        for (int k = 0; k < 360 && v->c->quiet_load > 0 && loadavg() > v->c->quiet_load; k++) {
            struct timespec ts = {5, 0};
            nanosleep(&ts, NULL);
        }
        st = one_rate(v, rates[i]);
    }
    if (v->n_done)
        printf("\nwithin 2 points at %d of %d rates; mean |sim - real| %.1f points, worst %.1f\n",
               v->n_within[0], v->n_done, v->sum_abs[0] / v->n_done, v->worst_abs[0]);
    if (v->n_done && v->sp_alt)
        printf("--profile-alt: within 2 points at %d of %d rates; mean |alt - real| %.1f points, "
               "worst %.1f\n",
               v->n_within[1], v->n_done, v->sum_abs[1] / v->n_done, v->worst_abs[1]);
    if (v->n_win)
        printf("same-window steps: within 2 points at %d of %d rates; mean |window - real| %.1f "
               "points, worst %.1f\n",
               v->n_within[2], v->n_win, v->sum_abs[2] / v->n_win, v->worst_abs[2]);
    if (v->n_rep)
        printf("speed replayed: within 2 points at %d of %d rates; mean |replay - real| %.1f "
               "points, worst %.1f\n",
               v->n_within[3], v->n_rep, v->sum_abs[3] / v->n_rep, v->worst_abs[3]);
    bt_free(v->reqs);
    bt_free(v->real);
    bt_free(v->sim);
    bt_free(v->sim_alt);
    bt_free(v->sim_win);
    bt_free(v->ids);
    bt_free(v->buf);
    return st;
}

/* Simulated attainment of the workload at rate, or < 0 on error. */
static double sim_attain(const pl_sim_params_t *sp, const pl_workload_t *w, double rate,
                         pl_req_t *reqs, pl_sim_req_t *out)
{
    pl_sim_result_t res;
    pl_workload_at_rate(w, rate, reqs);
    return pl_sim_run(sp, reqs, pl_workload_n(w), &res, out) == BT_OK ? res.attainment : -1;
}

/* --rates auto: for each level (a fraction), the rate at which the simulator's attainment falls
 * to it, found by bisection on a log scale (attainment is nearly monotone in the rate, as
 * workload.h arranges). The real run then lands on the curve's knee whatever the machine, where
 * the comparison is hardest, and not on rates where both sides are trivially 100% or 0%.
 * Returns how many rates, ascending, or < 0 on error. */
static int auto_rates(const pl_sim_params_t *sp, const pl_workload_t *w, const double *levels,
                      int n_levels, double *rates)
{
    size_t n = pl_workload_n(w);
    pl_req_t *reqs = bt_malloc(n * sizeof *reqs);
    pl_sim_req_t *out = bt_malloc(n * sizeof *out);
    int n_rates = reqs && out ? 0 : -1;
    double hi = 1e-3;
    /* The first rate at which attainment is below every level. */
    double lowest = 1;
    for (int i = 0; i < n_levels; i++)
        lowest = levels[i] < lowest ? levels[i] : lowest;
    while (n_rates == 0 && hi < 1e9) {
        double a = sim_attain(sp, w, hi, reqs, out);
        if (a < 0)
            n_rates = -1;
        else if (a < lowest)
            break;
        hi *= 2;
    }
    for (int i = 0; i < n_levels && n_rates >= 0 && hi < 1e9; i++) {
        double lo_r = hi / 1e6, hi_r = hi, a0 = sim_attain(sp, w, lo_r, reqs, out);
        if (a0 >= 0 && a0 < levels[i]) {
            fprintf(stderr, "baton-validate: %g%% is not attained at any rate; skipped\n",
                    100 * levels[i]);
            continue;
        }
        for (int k = 0; k < 40 && n_rates >= 0; k++) {
            double mid = sqrt(lo_r * hi_r), a = sim_attain(sp, w, mid, reqs, out);
            if (a < 0)
                n_rates = -1;
            else if (a >= levels[i])
                lo_r = mid;
            else
                hi_r = mid;
        }
        if (n_rates >= 0) { /* a rate it still attains, cut to 4 significant digits */
            double unit = pow(10, floor(log10(lo_r)) - 3);
            rates[n_rates++] = floor(lo_r / unit) * unit;
        }
    }
    if (n_rates >= 0 && hi >= 1e9) {
        fprintf(stderr, "baton-validate: simulated attainment stays above the lowest level at "
                        "every rate: tighten the objectives or send more requests\n");
        n_rates = -1;
    }
    qsort(rates, (size_t)(n_rates > 0 ? n_rates : 0), sizeof *rates, cmp_double);
    bt_free(reqs);
    bt_free(out);
    return n_rates;
}

static int val_main(const void *cfg)
{
    const val_cfg_t *c = cfg;
    double rates[MAX_RATES], levels[MAX_RATES];
    int is_auto = !strcmp(c->rates, "auto"), n_levels = 0;
    int n_rates = is_auto ? 0 : pl_cli_numbers(c->rates, rates, MAX_RATES);
    int pol = pl_policy_parse(c->policy);
    if (is_auto) {
        n_levels = pl_cli_numbers(c->auto_levels, levels, MAX_RATES);
        for (int i = 0; i < n_levels; i++)
            if (!(levels[i] > 0 && levels[i] < 100))
                n_levels = -1;
        for (int i = 0; i < n_levels; i++)
            levels[i] /= 100;
        if (n_levels <= 0) {
            fprintf(stderr, "baton-validate: --auto-levels wants percentages in (0, 100)\n");
            return 2;
        }
    }
    bt_profile_t prof;
    if (n_rates < 0 || pol < 0 || !c->profile) {
        fprintf(stderr, "baton-validate: need --profile, a known --policy and --rates 1,2\n");
        return 2;
    }
    bt_profile_t prof_alt;
    if (bt_profile_load(c->profile, &prof) != BT_OK ||
        (c->profile_alt && bt_profile_load(c->profile_alt, &prof_alt) != BT_OK))
        return 2;
    int n_inst = c->prefill + c->decode + c->colocated;
    static pl_inst_spec_t inst[3 * 1024], inst_alt[3 * 1024], inst_win[3 * 1024];
    cluster_of(c, &prof, inst);
    pl_sim_params_t sp = {.inst = inst,
                          .n_inst = n_inst,
                          .policy = (pl_policy_t)pol,
                          .slo_ttft_ms = c->slo_ttft_ms,
                          .slo_tpot_ms = c->slo_tpot_ms,
                          .block_size = c->block_size,
                          .queue_timeout_ms = c->queue_timeout_ms};
    pl_sim_params_t sp_alt = sp; /* the same cluster on the other profile */
    if (c->profile_alt) {
        cluster_of(c, &prof_alt, inst_alt);
        sp_alt.inst = inst_alt;
    }
    pl_trace_t *trace = NULL;
    char desc[512];
    val_t v = {.c = c,
               .sp = &sp,
               .sp_alt = c->profile_alt ? &sp_alt : NULL,
               .inst_win = inst_win,
               .prof = &prof};
    pl_workload_t *w = NULL;
    if (pl_cli_workload(&c->wl, &trace, &w, desc, sizeof desc) != BT_OK)
        return 1;
    v.w = w;
    if (is_auto) {
        n_rates = auto_rates(&sp, w, levels, n_levels, rates);
        if (n_rates <= 0) {
            fprintf(stderr, "baton-validate: no rate found for --auto-levels\n");
            pl_workload_destroy(w);
            pl_trace_destroy(trace);
            return 1;
        }
        printf("rates from the simulator's attainment (%s%%):", c->auto_levels);
        for (int i = 0; i < n_rates; i++)
            printf(" %g", rates[i]);
        printf("\n");
    }
    int st = connect_cluster(c, &v.cl, &v.n_vocab);
    v.csv = st == BT_OK && c->csv ? fopen(c->csv, "w") : NULL;
    if (v.csv)
        fputs("rate,request,arrival_ms,prompt,output,real_ttft_ms,real_tpot_ms,real_tokens,"
              "real_status,sim_ttft_ms,sim_tpot_ms,router_wait_ms,prefill_wait_ms,prefill_ms,"
              "to_transfer_ms,transfer_ms,decode_wait_ms,decode_ms\n",
              v.csv);
    printf("cluster: %d prefill + %d decode + %d colocated, policy %s, profile %s; workload: %s; "
           "SLO TTFT %g ms, TPOT %g ms\n\n",
           c->prefill, c->decode, c->colocated, c->policy, c->profile, desc, c->slo_ttft_ms,
           c->slo_tpot_ms);
    if (st == BT_OK)
        st = validate(&v, rates, n_rates);
    if (v.csv)
        fclose(v.csv);
    bt_client_close(v.cl);
    pl_workload_destroy(w);
    pl_trace_destroy(trace);
    return st == BT_OK ? 0 : 1;
}

int main(int argc, char **argv)
{
    val_cfg_t c = {0};
    return bt_cfg_run(&val_table, &c, offsetof(val_cfg_t, log_level), argc, argv, val_main);
}
