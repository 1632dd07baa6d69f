/* SPDX-License-Identifier: MIT */
/*
 * sampler.c - logits to token. The pipeline order follows llama.cpp's common sampler so that
 * users' settings mean the same here: penalty, top-k, top-p, min-p, temperature, draw.
 *
 * Candidates are kept as (id, logit) pairs sorted by logit (descending, then by id); each
 * filter only shrinks the candidate count.
 */
#include "sampler.h"

#include <math.h>
#include <stdlib.h>

#include "../kernels/kernels.h"
#include "alloc.h"
#include "log.h"
#include "status.h"

typedef struct {
    int32_t id;
    float logit;
} cand_t;

struct bt_sampler {
    bt_sampler_params_t p;
    int32_t n_vocab;
    cand_t *cand;    /* (n_vocab) */
    double *w;       /* (n_vocab) candidate weights */
    int32_t *recent; /* (repeat_last_n) ring of recent tokens */
    int32_t n_recent;
    int32_t recent_head;
    uint64_t n_drawn; /* draws so far: the position of the next sampled token */
    int32_t n_sorted; /* cand[0, n_sorted) is in cand_cmp order (the rest: not yet) */
    int32_t head_ids[BT_TOPK_MAX];
    float head_vals[BT_TOPK_MAX];
};

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Uniform double in [0, 1) for the next draw. Each draw's random number depends only on the
 * seed and the draw's position, so a sequence continued elsewhere (prefill on one instance,
 * decode on another, or a failover that replays the request) draws exactly the same tokens
 * once its position is set (bt_sampler_set_position). */
static double rng_uniform(bt_sampler_t *s)
{
    uint64_t x = s->p.seed ^ (0x9e3779b97f4a7c15ull * (s->n_drawn + 1));
    uint64_t r = splitmix64(&x);
    r = splitmix64(&r);
    return (double)(r >> 11) * 0x1.0p-53;
}

int bt_sampler_params_check(const bt_sampler_params_t *p)
{
    if (!(p->temperature >= 0) || p->temperature > 100 || p->top_k < 0 || !(p->top_p >= 0) ||
        p->top_p > 1 || !(p->min_p >= 0) || p->min_p > 1 || !(p->repeat_penalty >= 0) ||
        p->repeat_penalty > 100 || p->repeat_last_n < 0 || p->repeat_last_n > 65536)
        return BT_ERR_INVAL;
    return BT_OK;
}

int bt_sampler_create(const bt_sampler_params_t *params, int32_t n_vocab, bt_sampler_t **out)
{
    if (n_vocab <= 0 || bt_sampler_params_check(params) != BT_OK)
        return BT_ERR_INVAL;
    bt_sampler_t *s = bt_calloc(1, sizeof *s);
    if (!s)
        return BT_ERR_NOMEM;
    s->p = *params;
    if (s->p.repeat_last_n == 0)
        s->p.repeat_last_n = 64;
    s->n_vocab = n_vocab;
    s->cand = bt_malloc((size_t)n_vocab * sizeof(cand_t));
    s->w = bt_malloc((size_t)n_vocab * sizeof(double));
    s->recent = bt_malloc((size_t)s->p.repeat_last_n * sizeof(int32_t));
    if (!s->cand || !s->w || !s->recent) {
        bt_sampler_destroy(s);
        return BT_ERR_NOMEM;
    }
    *out = s;
    return BT_OK;
}

void bt_sampler_destroy(bt_sampler_t *s)
{
    if (!s)
        return;
    bt_free(s->cand);
    bt_free(s->w);
    bt_free(s->recent);
    bt_free(s);
}

void bt_sampler_accept(bt_sampler_t *s, int32_t token)
{
    s->recent[s->recent_head] = token;
    s->recent_head = (s->recent_head + 1) % s->p.repeat_last_n;
    if (s->n_recent < s->p.repeat_last_n)
        s->n_recent++;
}

int bt_sampler_params_greedy(const bt_sampler_params_t *params)
{
    return params->temperature == 0 && (params->repeat_penalty == 0 || params->repeat_penalty == 1);
}

int32_t bt_argmax(const float *x, int32_t n)
{
    return bt_argmax_f32(x, n);
}

static void apply_penalty(bt_sampler_t *s, float *logits)
{
    float pen = s->p.repeat_penalty;
    if (pen == 0 || pen == 1)
        return;
    /* Each distinct recent token is penalized once, however often it occurred. */
    for (int32_t i = 0; i < s->n_recent; i++) {
        int32_t t = s->recent[i], seen = 0;
        if (t < 0 || t >= s->n_vocab)
            continue;
        for (int32_t j = 0; j < i && !seen; j++)
            seen = s->recent[j] == t;
        if (!seen)
            logits[t] = logits[t] > 0 ? logits[t] / pen : logits[t] * pen;
    }
}

static int cand_cmp(const void *a, const void *b)
{
    const cand_t *x = a, *y = b;
    if (x->logit != y->logit)
        return x->logit < y->logit ? 1 : -1;
    return x->id < y->id ? -1 : x->id > y->id;
}

/* Keeps candidates whose logit is within CAND_WINDOW of the maximum: the rest have relative
 * probability below e^-40 (their total stays under 1e-12 even for 128k-token vocabularies),
 * so dropping them changes no draw in practice. */
#define CAND_WINDOW 40.0f

/* A real model's logits put most of a 128k vocabulary within the window, and sorting all of
 * it took 15 ms a token. Candidates are sorted lazily instead: the best CAND_HEAD come sorted
 * (bt_topk_f32, the same order), the rest follow unsorted, and a filter or the draw that walks
 * past the sorted prefix extends it (cand_sort_more). Walks see the same sorted order either
 * way; only the order in which a total over the unsorted tail is summed differs (rounding in
 * the last place of a double). */
#define CAND_HEAD BT_TOPK_MAX

static int32_t cand_collect(bt_sampler_t *s, const float *logits)
{
    const int32_t nv = s->n_vocab;
    float max_l = logits[bt_argmax(logits, nv)];
    int32_t n = 0;
    s->n_sorted = 0;
    if (nv <= 2 * CAND_HEAD) {
        for (int32_t i = 0; i < nv; i++)
            if (logits[i] >= max_l - CAND_WINDOW)
                s->cand[n++] = (cand_t){i, logits[i]};
        qsort(s->cand, (size_t)n, sizeof(cand_t), cand_cmp);
        s->n_sorted = n;
        return n;
    }
    bt_topk_f32(logits, nv, CAND_HEAD, s->head_ids, s->head_vals);
    while (n < CAND_HEAD && s->head_vals[n] >= max_l - CAND_WINDOW) {
        s->cand[n] = (cand_t){s->head_ids[n], s->head_vals[n]};
        n++;
    }
    s->n_sorted = n;
    if (n < CAND_HEAD || (s->p.top_k > 0 && s->p.top_k <= n))
        return n; /* the window ends inside the head, or top-k does */
    /* The tail: the window's candidates that rank after the head's last. */
    const cand_t last = s->cand[CAND_HEAD - 1];
    for (int32_t i = 0; i < nv; i++) {
        cand_t c = {i, logits[i]};
        if (logits[i] >= max_l - CAND_WINDOW && cand_cmp(&c, &last) > 0)
            s->cand[n++] = c;
    }
    return n;
}

/* Candidate i's weight relative to the best at a temperature: exp((logit - max) / temp), in
 * float (a whole vocabulary of them is summed for every draw without top-k). */
static double cand_weight(const bt_sampler_t *s, int32_t i, float temp)
{
    return (double)expf((s->cand[i].logit - s->cand[0].logit) / temp);
}

static void cand_swap(cand_t *c, int32_t i, int32_t j)
{
    cand_t t = c[i];
    c[i] = c[j];
    c[j] = t;
}

/* Moves the k best of c[0, n) (cand_cmp order, a strict total order) to c[0, k), unordered:
 * quickselect with a median-of-three pivot. */
static void cand_select(cand_t *c, int32_t n, int32_t k)
{
    int32_t lo = 0, hi = n - 1, t = k - 1;
    while (lo < hi) {
        int32_t mid = lo + (hi - lo) / 2;
        if (cand_cmp(&c[mid], &c[lo]) < 0)
            cand_swap(c, lo, mid);
        if (cand_cmp(&c[hi], &c[lo]) < 0)
            cand_swap(c, lo, hi);
        if (cand_cmp(&c[hi], &c[mid]) < 0)
            cand_swap(c, mid, hi);
        const cand_t pivot = c[mid];
        int32_t i = lo, j = hi;
        while (i <= j) {
            while (cand_cmp(&c[i], &pivot) < 0)
                i++;
            while (cand_cmp(&c[j], &pivot) > 0)
                j--;
            if (i <= j)
                cand_swap(c, i++, j--);
        }
        if (t <= j)
            hi = j;
        else if (t >= i)
            lo = i;
        else
            break;
    }
}

/* Extends the sorted prefix of cand[0, n) once a walk reaches its end: the next best of the
 * tail, as many as are sorted already (at least CAND_HEAD), selected, sorted and given their
 * weights (cand_weight). Doubling keeps a walk that goes far linear. */
static void cand_sort_more(bt_sampler_t *s, int32_t n, float temp)
{
    int32_t from = s->n_sorted, k = from > CAND_HEAD ? from : CAND_HEAD;
    if (from >= n)
        return;
    if (k >= n - from)
        k = n - from;
    else
        cand_select(s->cand + from, n - from, k);
    qsort(s->cand + from, (size_t)k, sizeof(cand_t), cand_cmp);
    s->n_sorted = from + k;
    for (int32_t i = from; i < from + k; i++)
        s->w[i] = cand_weight(s, i, temp);
}

/* Probabilities at temperature 1 (top-p and min-p see them before temperature, as in
 * llama.cpp), relative to the most likely candidate. */
static int32_t cand_filter(bt_sampler_t *s, int32_t n)
{
    double total = 0;
    if (s->p.top_k > 0 && s->p.top_k < n) {
        while (s->n_sorted < s->p.top_k) /* the best top_k of all n, in order */
            cand_sort_more(s, n, 1.0f);
        n = s->p.top_k;
    }
    if (!(s->p.top_p > 0 && s->p.top_p < 1) && !(s->p.min_p > 0))
        return n; /* no filter needs the weights at temperature 1 */
    for (int32_t i = 0; i < n; i++) {
        s->w[i] = cand_weight(s, i, 1.0f);
        total += s->w[i];
    }
    if (s->p.top_p > 0 && s->p.top_p < 1) {
        double cum = 0;
        int32_t keep = 0;
        while (keep < n) {
            if (keep == s->n_sorted)
                cand_sort_more(s, n, 1.0f);
            cum += s->w[keep++] / total;
            if (cum >= s->p.top_p)
                break;
        }
        n = keep;
    }
    if (s->p.min_p > 0) {
        int32_t keep = 1;
        while (keep < n) {
            if (keep == s->n_sorted)
                cand_sort_more(s, n, 1.0f);
            if (s->w[keep] < s->p.min_p)
                break;
            keep++;
        }
        n = keep;
    }
    return n;
}

void bt_sampler_set_position(bt_sampler_t *s, uint64_t n_drawn)
{
    s->n_drawn = n_drawn;
}

/* The seeded draw among the first n candidates at the temperature, walking them in sorted
 * order. */
static int32_t cand_draw(bt_sampler_t *s, int32_t n)
{
    double sum = 0;
    for (int32_t i = 0; i < n; i++) {
        s->w[i] = cand_weight(s, i, s->p.temperature);
        sum += s->w[i];
    }
    double r = rng_uniform(s) * sum;
    s->n_drawn++;
    if (n <= 0) /* NaN logits leave no candidate: nothing sensible to draw */
        return 0;
    for (int32_t i = 0; i < n; i++) {
        if (i == s->n_sorted)
            cand_sort_more(s, n, s->p.temperature);
        if (r < s->w[i])
            return s->cand[i].id;
        r -= s->w[i];
    }
    return s->cand[n - 1].id;
}

int32_t bt_sampler_sample(bt_sampler_t *s, float *logits)
{
    apply_penalty(s, logits);
    if (s->p.temperature == 0) {
        s->n_drawn++;
        return bt_argmax(logits, s->n_vocab);
    }
    return cand_draw(s, cand_filter(s, cand_collect(s, logits)));
}

int32_t bt_sampler_params_cands(const bt_sampler_params_t *p)
{
    if (bt_sampler_params_greedy(p))
        return 1;
    if (p->repeat_penalty != 0 && p->repeat_penalty != 1)
        return 0; /* the penalty may lift any recent token into the top k */
    return p->top_k > 0 && p->top_k <= BT_TOPK_MAX ? p->top_k : 0;
}

int32_t bt_sampler_cands_merge(int32_t k, const bt_sampler_params_t *p)
{
    int32_t need = bt_sampler_params_cands(p);
    return k == 0 || need == 0 ? 0 : need > k ? need : k;
}

/* The candidates are the row's best, in the order cand_collect sorts them in, and the filters
 * look at no more than the first top_k of them: the same steps as on the whole row. */
int32_t bt_sampler_sample_top(bt_sampler_t *s, const int32_t *ids, const float *vals, int32_t n)
{
    if (s->p.temperature == 0 || n == 1) {
        s->n_drawn++;
        return n > 0 ? ids[0] : 0;
    }
    int32_t m = 0;
    for (; m < n && vals[m] >= vals[0] - CAND_WINDOW; m++)
        s->cand[m] = (cand_t){ids[m], vals[m]};
    s->n_sorted = m;
    return cand_draw(s, cand_filter(s, m));
}
