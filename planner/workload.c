/* SPDX-License-Identifier: MIT */
/*
 * workload.c - drawing workloads at unit rate and placing them at a rate (workload.h).
 *
 * Unit rate means a mean gap of 1 (in arbitrary units): at rate R the gaps are 1000/R ms.
 * Trace timestamps are normalized the same way (divided by their own mean gap), so "the trace
 * at R requests/s" keeps its burst pattern and has mean rate R.
 */
#include "workload.h"

#include <string.h>

#include "common/alloc.h"
#include "common/log.h"
#include "common/status.h"
#include "rng.h"

struct pl_workload {
    size_t n;
    double *t_unit;      /* (n) arrival at unit rate */
    double trace_gap_ms; /* trace arrivals: the recorded mean gap; 0 otherwise */
    int32_t *prompt;     /* (n) */
    int32_t *output;     /* (n) */
};

int pl_arrival_parse(const char *s)
{
    if (!s || !strcmp(s, "poisson"))
        return PL_ARRIVAL_POISSON;
    if (!strcmp(s, "gamma"))
        return PL_ARRIVAL_GAMMA;
    if (!strcmp(s, "trace"))
        return PL_ARRIVAL_TRACE;
    return -1;
}

static int check(const pl_workload_params_t *p)
{
    const char *why = NULL;
    if (p->n_requests == 0)
        why = "no requests";
    else if (p->arrival == PL_ARRIVAL_GAMMA && !(p->cv > 0))
        why = "gamma arrivals need cv > 0";
    else if ((p->arrival == PL_ARRIVAL_TRACE || p->lengths == PL_LEN_TRACE) && !p->trace)
        why = "trace arrivals or lengths need a trace";
    else if (p->arrival == PL_ARRIVAL_TRACE && !p->trace->arrival_ms)
        why = "the trace has no timestamps";
    else if (p->lengths != PL_LEN_TRACE && (p->prompt_min < 1 || p->output_min < 1))
        why = "lengths must be >= 1";
    else if (p->lengths == PL_LEN_UNIFORM &&
             (p->prompt_max < p->prompt_min || p->output_max < p->output_min))
        why = "uniform lengths need max >= min";
    if (why)
        bt_error("workload: %s", why);
    return why ? BT_ERR_INVAL : BT_OK;
}

static int32_t clip(int32_t x, int32_t hi)
{
    return hi > 0 && x > hi ? hi : x;
}

/* Lengths of request i; j is the trace row used (in order for trace arrivals). */
static void draw_lengths(const pl_workload_params_t *p, pl_rng_t *r, size_t i, int32_t *prompt,
                         int32_t *output)
{
    if (p->lengths == PL_LEN_TRACE) {
        size_t j = p->arrival == PL_ARRIVAL_TRACE ? i % p->trace->n : pl_rng_below(r, p->trace->n);
        *prompt = clip(p->trace->prompt[j], p->max_prompt);
        *output = clip(p->trace->output[j], p->max_output);
    } else if (p->lengths == PL_LEN_UNIFORM) {
        *prompt = p->prompt_min + (int32_t)pl_rng_below(r, p->prompt_max - p->prompt_min + 1u);
        *output = p->output_min + (int32_t)pl_rng_below(r, p->output_max - p->output_min + 1u);
    } else {
        *prompt = p->prompt_min;
        *output = p->output_min;
    }
}

/* Unit-rate arrivals from the trace, repeated end to end when more requests are asked for. */
static void trace_arrivals(const pl_trace_t *t, size_t n, double *unit, double *gap_ms)
{
    double span = t->arrival_ms[t->n - 1];
    double gap = t->n > 1 && span > 0 ? span / (t->n - 1) : 1;
    for (size_t i = 0; i < n; i++) {
        size_t lap = i / t->n;
        unit[i] = (lap * (span + gap) + t->arrival_ms[i % t->n]) / gap;
    }
    *gap_ms = gap;
}

int pl_workload_create(const pl_workload_params_t *p, pl_workload_t **out)
{
    int st = check(p);
    if (st != BT_OK)
        return st;
    pl_workload_t *w = bt_calloc(1, sizeof *w);
    if (!w)
        return BT_ERR_NOMEM;
    w->n = p->n_requests;
    w->t_unit = bt_malloc(w->n * sizeof *w->t_unit);
    w->prompt = bt_malloc(w->n * sizeof *w->prompt);
    w->output = bt_malloc(w->n * sizeof *w->output);
    if (!w->t_unit || !w->prompt || !w->output) {
        pl_workload_destroy(w);
        return BT_ERR_NOMEM;
    }
    /* Separate streams for gaps and lengths, so that changing the arrival process leaves the
     * lengths as they were (and the other way round). */
    pl_rng_t ra, rl;
    pl_rng_seed(&ra, p->seed * 2 + 1);
    pl_rng_seed(&rl, p->seed * 2 + 2);
    if (p->arrival == PL_ARRIVAL_TRACE)
        trace_arrivals(p->trace, w->n, w->t_unit, &w->trace_gap_ms);
    double t = 0, k = p->arrival == PL_ARRIVAL_GAMMA ? 1 / (p->cv * p->cv) : 1;
    for (size_t i = 0; i < w->n; i++) {
        if (p->arrival == PL_ARRIVAL_POISSON)
            t += pl_rng_exp(&ra, 1);
        else if (p->arrival == PL_ARRIVAL_GAMMA)
            t += pl_rng_gamma(&ra, k, 1 / k);
        if (p->arrival != PL_ARRIVAL_TRACE)
            w->t_unit[i] = t;
        draw_lengths(p, &rl, i, &w->prompt[i], &w->output[i]);
    }
    *out = w;
    return BT_OK;
}

void pl_workload_destroy(pl_workload_t *w)
{
    if (!w)
        return;
    bt_free(w->t_unit);
    bt_free(w->prompt);
    bt_free(w->output);
    bt_free(w);
}

size_t pl_workload_n(const pl_workload_t *w)
{
    return w->n;
}

void pl_workload_at_rate(const pl_workload_t *w, double rate_per_s, pl_req_t *out)
{
    double gap_ms = rate_per_s > 0 ? 1e3 / rate_per_s : w->trace_gap_ms;
    double t0 = w->t_unit[0];
    for (size_t i = 0; i < w->n; i++)
        out[i] = (pl_req_t){(w->t_unit[i] - t0) * gap_ms, w->prompt[i], w->output[i]};
}

void pl_workload_lengths(const pl_workload_t *w, double *mean_prompt, double *mean_output,
                         int32_t *max_total)
{
    double p = 0, o = 0;
    int32_t m = 0;
    for (size_t i = 0; i < w->n; i++) {
        p += w->prompt[i];
        o += w->output[i];
        m = w->prompt[i] + w->output[i] > m ? w->prompt[i] + w->output[i] : m;
    }
    *mean_prompt = p / w->n;
    *mean_output = o / w->n;
    *max_total = m;
}
