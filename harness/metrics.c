/* SPDX-License-Identifier: MIT */
/*
 * metrics.c - latencies, percentiles, attainment and throughput from client timelines.
 *
 * Definitions follow vLLM's bench serve so its tooling reads the numbers the same way: TTFT is
 * submit to first streamed token; TPOT is (last token - first token) / (output tokens - 1), so
 * the first token's queueing and prefill never count; ITL is the gap between consecutive chunks
 * after the first; E2E is submit to result. Failed requests count in attainment as misses.
 */
#include "metrics.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/alloc.h"
#include "common/status.h"

/* Lifetime event kinds: the values of bt_client_lifetime_t, repeated so this file stays free of
 * the client library. */
enum {
    EV_PREFILL_QUEUED = 2,
    EV_PREFILL_BEGIN = 3,
    EV_PREFILL_END = 4,
    EV_TRANSFER_BEGIN = 5,
    EV_TRANSFER_END = 6,
    EV_DECODE_QUEUED = 7,
    EV_DECODE_BEGIN = 8,
    EV_FINISHED = 9,
    EV_MAX = 12,
};

void bb_req_metrics(const bb_timeline_t *t, const bb_slo_t *slo, bb_req_metrics_t *out)
{
    *out = (bb_req_metrics_t){.ttft_ms = -1, .tpot_ms = -1, .e2e_ms = -1};
    for (size_t i = 0; i < t->n_chunks; i++)
        out->n_output += t->chunks[i].n_tokens;
    if (t->n_chunks > 0)
        out->ttft_ms = t->chunks[0].t_ms - t->send_ms;
    if (out->n_output > 1 && t->n_chunks > 0) {
        double span = t->chunks[t->n_chunks - 1].t_ms - t->chunks[0].t_ms;
        out->tpot_ms = span / (double)(out->n_output - 1);
    }
    if (t->done_ms >= 0)
        out->e2e_ms = t->done_ms - t->send_ms;
    out->ok = t->status == 0 && t->done_ms >= 0 && out->n_output > 0;
    int ttft_ok = slo->slo_ttft_ms <= 0 || (out->ttft_ms >= 0 && out->ttft_ms <= slo->slo_ttft_ms);
    /* A one-token output has no TPOT to miss. */
    int tpot_ok = slo->slo_tpot_ms <= 0 || out->tpot_ms < 0 || out->tpot_ms <= slo->slo_tpot_ms;
    out->slo_ok = out->ok && ttft_ok && tpot_ok;
}

void bb_phases_from_events(const int *kinds, const uint64_t *time_ns, size_t n, bb_phases_t *out)
{
    double at[EV_MAX];
    for (int k = 0; k < EV_MAX; k++)
        at[k] = -1;
    for (size_t i = 0; i < n; i++)
        if (kinds[i] > 0 && kinds[i] < EV_MAX && at[kinds[i]] < 0)
            at[kinds[i]] = (double)time_ns[i] * 1e-6;
#define SPAN(a, b) (at[a] >= 0 && at[b] >= at[a] ? at[b] - at[a] : -1)
    out->prefill_queue_ms = SPAN(EV_PREFILL_QUEUED, EV_PREFILL_BEGIN);
    out->prefill_ms = SPAN(EV_PREFILL_BEGIN, EV_PREFILL_END);
    out->transfer_ms = SPAN(EV_TRANSFER_BEGIN, EV_TRANSFER_END);
    out->decode_queue_ms = SPAN(EV_DECODE_QUEUED, EV_DECODE_BEGIN);
    out->decode_ms = SPAN(EV_DECODE_BEGIN, EV_FINISHED);
#undef SPAN
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

double bb_percentile(double *v, size_t n, double q)
{
    if (n == 0)
        return 0;
    qsort(v, n, sizeof *v, cmp_double);
    double pos = q / 100.0 * (double)(n - 1);
    size_t lo = (size_t)floor(pos);
    if (lo >= n - 1)
        return v[n - 1];
    double frac = pos - (double)lo;
    return v[lo] + (v[lo + 1] - v[lo]) * frac;
}

void bb_dist(double *v, size_t n, bb_dist_t *d)
{
    *d = (bb_dist_t){.n = n};
    if (n == 0)
        return;
    double sum = 0, sq = 0;
    for (size_t i = 0; i < n; i++)
        sum += v[i];
    d->mean = sum / (double)n;
    for (size_t i = 0; i < n; i++)
        sq += (v[i] - d->mean) * (v[i] - d->mean);
    d->std = sqrt(sq / (double)n); /* population, as numpy.std */
    d->median = bb_percentile(v, n, 50);
    d->p90 = bb_percentile(v, n, 90);
    d->p99 = bb_percentile(v, n, 99);
    d->max = v[n - 1];
}

static void count_error(bb_summary_t *s, int code)
{
    for (int i = 0; i < s->n_error_codes; i++)
        if (s->error_codes[i] == code) {
            s->error_counts[i]++;
            return;
        }
    if (s->n_error_codes < BB_MAX_ERROR_CODES) {
        s->error_codes[s->n_error_codes] = code;
        s->error_counts[s->n_error_codes++] = 1;
    }
}

/* Scratch columns, one value per request (or per chunk gap for ITL). */
typedef struct {
    double *ttft, *tpot, *e2e, *itl, *ph[5];
    size_t n_ttft, n_tpot, n_e2e, n_itl, n_ph[5];
} cols_t;

static void add_phases(cols_t *c, const bb_phases_t *p)
{
    const double v[5] = {p->prefill_queue_ms, p->prefill_ms, p->transfer_ms, p->decode_queue_ms,
                         p->decode_ms};
    for (int k = 0; k < 5; k++)
        if (v[k] >= 0)
            c->ph[k][c->n_ph[k]++] = v[k];
}

/* One request into the summary counters and the columns. */
static void add_request(const bb_timeline_t *t, const bb_slo_t *slo, bb_summary_t *s, cols_t *c,
                        double *t_first, double *t_last)
{
    bb_req_metrics_t m;
    bb_req_metrics(t, slo, &m);
    *t_first = fmin(*t_first, t->send_ms);
    if (t->done_ms >= 0)
        *t_last = fmax(*t_last, t->done_ms);
    s->slo_attainment += m.slo_ok;
    s->ttft_attainment += m.ok && (slo->slo_ttft_ms <= 0 || m.ttft_ms <= slo->slo_ttft_ms);
    s->tpot_attainment += m.ok && (slo->slo_tpot_ms <= 0 || m.tpot_ms <= slo->slo_tpot_ms);
    if (!m.ok) {
        s->failed++;
        count_error(s, t->status != 0 ? t->status : BT_ERR_INTERNAL);
        return;
    }
    s->completed++;
    s->total_input_tokens += (uint64_t)t->n_prompt;
    s->total_output_tokens += m.n_output;
    c->ttft[c->n_ttft++] = m.ttft_ms;
    c->e2e[c->n_e2e++] = m.e2e_ms;
    if (m.tpot_ms >= 0)
        c->tpot[c->n_tpot++] = m.tpot_ms;
    for (size_t k = 1; k < t->n_chunks; k++)
        c->itl[c->n_itl++] = t->chunks[k].t_ms - t->chunks[k - 1].t_ms;
    add_phases(c, &t->phases);
}

int bb_summarize(const bb_timeline_t *t, size_t n, const bb_slo_t *slo, bb_summary_t *out)
{
    size_t n_gaps = 0;
    for (size_t i = 0; i < n; i++)
        n_gaps += t[i].n_chunks;
    size_t cap = 8 * (n + 1) + n_gaps + 1;
    double *buf = bt_malloc(cap * sizeof *buf);
    if (!buf)
        return BT_ERR_NOMEM;
    cols_t c = {.ttft = buf, .tpot = buf + (n + 1), .e2e = buf + 2 * (n + 1)};
    for (int k = 0; k < 5; k++)
        c.ph[k] = buf + (size_t)(3 + k) * (n + 1);
    c.itl = buf + 8 * (n + 1);
    bb_summary_t s = {.n_requests = n};
    double t_first = INFINITY, t_last = -INFINITY;
    for (size_t i = 0; i < n; i++)
        add_request(&t[i], slo, &s, &c, &t_first, &t_last);
    s.duration_s = t_last > t_first ? (t_last - t_first) / 1e3 : 0;
    if (s.duration_s > 0) {
        s.request_throughput = (double)s.completed / s.duration_s;
        s.output_throughput = (double)s.total_output_tokens / s.duration_s;
        s.total_token_throughput =
            (double)(s.total_input_tokens + s.total_output_tokens) / s.duration_s;
    }
    if (n > 0) {
        s.slo_attainment /= (double)n;
        s.ttft_attainment /= (double)n;
        s.tpot_attainment /= (double)n;
    }
    bb_dist(c.ttft, c.n_ttft, &s.ttft);
    bb_dist(c.tpot, c.n_tpot, &s.tpot);
    bb_dist(c.itl, c.n_itl, &s.itl);
    bb_dist(c.e2e, c.n_e2e, &s.e2el);
    bb_dist_t *ph[5] = {&s.prefill_queue, &s.prefill, &s.transfer, &s.decode_queue, &s.decode};
    for (int k = 0; k < 5; k++)
        bb_dist(c.ph[k], c.n_ph[k], ph[k]);
    bt_free(buf);
    *out = s;
    return BT_OK;
}

double bb_attainment(const bb_timeline_t *t, size_t n, const bb_slo_t *slo, double scale)
{
    if (n == 0)
        return 0;
    bb_slo_t s = {slo->slo_ttft_ms * scale, slo->slo_tpot_ms * scale};
    size_t ok = 0;
    for (size_t i = 0; i < n; i++) {
        bb_req_metrics_t m;
        bb_req_metrics(&t[i], &s, &m);
        ok += (size_t)m.slo_ok;
    }
    return (double)ok / (double)n;
}
