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
#include <string.h>

#include "../kernels/kernels.h"
#include "../kernels/window.h"
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
    /* Without top-k, where the window comes from: the row (rows, NULL from candidates), how
     * much of it is at hand (cand[0, n_cand)), whether that is all of it, and its total at
     * total_tau as the candidates came with it. */
    const float *row;
    int32_t n_cand;
    int complete;
    double total;
    float total_tau;
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

int32_t bt_argmax(const float *x, int32_t n)
{
    return bt_argmax_f32(x, n);
}

static int penalty_on(const bt_sampler_params_t *p)
{
    return p->repeat_penalty != 0 && p->repeat_penalty != 1;
}

static void apply_penalty(bt_sampler_t *s, float *logits)
{
    float pen = s->p.repeat_penalty;
    if (!penalty_on(&s->p))
        return;
    /* Each distinct recent token is penalized once, however often it occurred. */
    for (int32_t i = 0; i < s->n_recent; i++) {
        int32_t t = s->recent[i], seen = 0;
        if (t < 0 || t >= s->n_vocab)
            continue;
        for (int32_t j = 0; j < i && !seen; j++)
            seen = s->recent[j] == t;
        if (!seen)
            logits[t] = bt_penalize_logit(logits[t], pen);
    }
}

int32_t bt_sampler_penalty_ids(const bt_sampler_params_t *p, const int32_t *hist, int32_t n_hist,
                               int32_t n_vocab, int32_t *ids)
{
    if (!penalty_on(p))
        return 0;
    int32_t last_n = p->repeat_last_n ? p->repeat_last_n : 64, n = 0;
    /* Seen tokens in an open-addressing set (a daemon asks for every row of every step); a
     * longer look-back, which only whole rows take, compares with each id so far instead. */
    enum { SLOTS = 2 * BT_PENALTY_MAX, BITS = 9 };
    _Static_assert(1 << BITS == SLOTS, "SLOTS is 2^BITS");
    int32_t set[SLOTS];
    const int hashed = last_n <= BT_PENALTY_MAX;
    if (hashed)
        memset(set, 0xff, sizeof set); /* -1: empty */
    for (int32_t i = n_hist > last_n ? n_hist - last_n : 0; i < n_hist; i++) {
        int32_t t = hist[i], seen = 0;
        if (t < 0 || t >= n_vocab)
            continue;
        if (hashed) {
            uint32_t h = ((uint32_t)t * 2654435761u) >> (32 - BITS);
            while (set[h] >= 0 && set[h] != t)
                h = (h + 1) & (SLOTS - 1);
            seen = set[h] == t;
            set[h] = t;
        } else {
            for (int32_t j = 0; j < n && !seen; j++)
                seen = ids[j] == t;
        }
        if (!seen)
            ids[n++] = t;
    }
    return n;
}

static int cand_cmp(const void *a, const void *b)
{
    const cand_t *x = a, *y = b;
    if (x->logit != y->logit)
        return x->logit < y->logit ? 1 : -1;
    return x->id < y->id ? -1 : x->id > y->id;
}

/* Candidates are the logits within BT_CAND_WINDOW of the maximum (window.h): the rest have
 * relative probability below e^-40 (their total stays under 1e-12 even for 128k-token
 * vocabularies), so dropping them changes no draw in practice.
 *
 * A real model's logits put most of a 128k vocabulary within the window, and sorting all of
 * it took 15 ms a token. Candidates are sorted lazily instead: the best CAND_HEAD come sorted
 * (bt_topk_f32, the same order), the rest follow unsorted, and a filter or the draw that walks
 * past the sorted prefix extends it (cand_sort_more). Walks see the same sorted order either
 * way. */
#define CAND_HEAD BT_TOPK_MAX

static int32_t cand_collect(bt_sampler_t *s, const float *logits)
{
    const int32_t nv = s->n_vocab;
    const float max_l = bt_max_f32(logits, nv);
    int32_t n = 0;
    s->n_sorted = 0;
    if (nv <= 2 * CAND_HEAD) {
        for (int32_t i = 0; i < nv; i++)
            if (logits[i] >= max_l - BT_CAND_WINDOW)
                s->cand[n++] = (cand_t){i, logits[i]};
        qsort(s->cand, (size_t)n, sizeof(cand_t), cand_cmp);
        s->n_sorted = n;
        return n;
    }
    bt_topk_f32(logits, nv, CAND_HEAD, s->head_ids, s->head_vals);
    while (n < CAND_HEAD && s->head_vals[n] >= max_l - BT_CAND_WINDOW) {
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
        if (logits[i] >= max_l - BT_CAND_WINDOW && cand_cmp(&c, &last) > 0)
            s->cand[n++] = c;
    }
    return n;
}

/* Candidate i's weight relative to the best at a temperature: the weight the window total
 * sums (bt_window_weight), so that walks and totals agree to the bit on any backend. */
static double cand_weight(const bt_sampler_t *s, int32_t i, float temp)
{
    return (double)bt_window_weight(s->cand[i].logit, s->cand[0].logit, temp);
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
 * tail, as many as are sorted already (at least CAND_HEAD), selected and sorted, with their
 * weights at temp (temp 0: none, for the window's walks, which weigh as they go). Doubling
 * keeps a walk that goes far linear. */
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
    for (int32_t i = from; temp > 0 && i < from + k; i++)
        s->w[i] = cand_weight(s, i, temp);
}

/* ---- with top-k: the filters and the draw see only the top_k best, all at hand ---- */

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

/* ---- without top-k: the window, whose total comes from the row or with the candidates ---- */

/* Makes candidate i sorted and at hand: 1; 0 past the window's end; NEED_MORE past the
 * candidates a device gave when the window goes on beyond them. */
#define NEED_MORE (-1)

static int cand_get(bt_sampler_t *s, int32_t i)
{
    if (i < s->n_sorted)
        return 1;
    if (i >= s->n_cand)
        return s->complete ? 0 : NEED_MORE;
    cand_sort_more(s, s->n_cand, 0); /* from the row: n_cand is the whole window */
    return 1;
}

/* The window total at tau: from the row, or the one given with the candidates (NAN when that
 * is at another temperature). */
static double window_total(const bt_sampler_t *s, float tau)
{
    if (s->row)
        return bt_window_total_f32(s->row, s->n_vocab, tau);
    return s->total_tau == tau ? s->total : NAN;
}

/* top-p, min-p and the draw over the window, walking it in sorted order; the same steps and
 * bits from the row or from its best candidates and total, or BT_SAMPLER_NEED_ROW when the
 * candidates end before the walk does (the draw is not counted then). */
static int32_t window_sample(bt_sampler_t *s)
{
    const int32_t all = INT32_MAX; /* no filter cut: the whole window */
    int32_t keep = all;
    int g;
    if (s->n_cand == 0) { /* NaN logits leave no candidate: nothing sensible to draw */
        s->n_drawn++;
        return 0;
    }
    if (s->p.top_p > 0 && s->p.top_p < 1) {
        const double total = window_total(s, 1.0f);
        double cum = 0;
        if (total != total)
            return BT_SAMPLER_NEED_ROW;
        for (int32_t i = 0; keep == all; i++) {
            if ((g = cand_get(s, i)) <= 0) {
                if (g == NEED_MORE)
                    return BT_SAMPLER_NEED_ROW;
                break;
            }
            cum += cand_weight(s, i, 1.0f) / total;
            if (cum >= s->p.top_p)
                keep = i + 1;
        }
        if (s->complete && keep >= s->n_cand)
            keep = all; /* the mass reached p only with the window's last candidate */
    }
    if (s->p.min_p > 0) {
        for (int32_t i = 1; i < keep; i++) {
            if ((g = cand_get(s, i)) <= 0) {
                if (g == NEED_MORE)
                    return BT_SAMPLER_NEED_ROW;
                break;
            }
            if (cand_weight(s, i, 1.0f) < s->p.min_p)
                keep = i;
        }
    }
    const float temp = s->p.temperature;
    double sum = 0;
    if (keep == all) {
        sum = window_total(s, temp);
        if (sum != sum)
            return BT_SAMPLER_NEED_ROW;
    } else {
        for (int32_t i = 0; i < keep; i++) /* walked above: sorted and at hand */
            sum += cand_weight(s, i, temp);
    }
    double r = rng_uniform(s) * sum;
    int32_t pick = -1;
    for (int32_t i = 0; i < keep && pick < 0; i++) {
        if ((g = cand_get(s, i)) <= 0) {
            if (g == NEED_MORE)
                return BT_SAMPLER_NEED_ROW;
            pick = i - 1; /* rounding walked past the window's last */
            break;
        }
        const double w = cand_weight(s, i, temp);
        if (r < w)
            pick = i;
        else
            r -= w;
    }
    s->n_drawn++;
    return s->cand[pick >= 0 ? pick : keep - 1].id;
}

void bt_sampler_set_position(bt_sampler_t *s, uint64_t n_drawn)
{
    s->n_drawn = n_drawn;
}

int32_t bt_sampler_sample(bt_sampler_t *s, float *logits)
{
    apply_penalty(s, logits);
    return bt_sampler_sample_penalized(s, logits);
}

int32_t bt_sampler_sample_penalized(bt_sampler_t *s, float *logits)
{
    if (s->p.temperature == 0) {
        s->n_drawn++;
        return bt_argmax(logits, s->n_vocab);
    }
    const int32_t n = cand_collect(s, logits);
    if (s->p.top_k > 0)
        return cand_draw(s, cand_filter(s, n));
    s->row = logits;
    s->n_cand = n;
    s->complete = 1;
    const int32_t token = window_sample(s);
    s->row = NULL;
    return token;
}

int32_t bt_sampler_params_cands(const bt_sampler_params_t *p)
{
    if (penalty_on(p) && (p->repeat_last_n ? p->repeat_last_n : 64) > BT_PENALTY_MAX)
        return 0; /* more recent tokens than a backend penalizes where the logits are */
    if (p->temperature == 0)
        return 1;
    if (p->top_k == 0)
        return BT_TOPK_MAX; /* the window's best, with its total */
    return p->top_k <= BT_TOPK_MAX ? p->top_k : 0;
}

float bt_sampler_params_tau(const bt_sampler_params_t *p)
{
    if (bt_sampler_params_cands(p) != BT_TOPK_MAX || p->top_k != 0)
        return 0;
    if (p->top_p > 0 && p->top_p < 1)
        return 1.0f;                          /* top-p's mass */
    return p->min_p > 0 ? 0 : p->temperature; /* min-p cuts in the best, or the draw's total */
}

int32_t bt_sampler_cands_merge(int32_t k, const bt_sampler_params_t *p)
{
    int32_t need = bt_sampler_params_cands(p);
    return k == 0 || need == 0 ? 0 : need > k ? need : k;
}

/* The candidates are the row's best, in the order cand_collect sorts them in. With top-k the
 * filters look at no more than the first top_k of them: the same steps as on the whole row.
 * Without it, the walks go as far as they go on the whole row, and the window's total comes
 * with the candidates: the same steps again, until a walk would go past the candidates. */
int32_t bt_sampler_sample_top(bt_sampler_t *s, const int32_t *ids, const float *vals, int32_t n,
                              double total)
{
    if (s->p.temperature == 0 || n == 1) {
        s->n_drawn++;
        return n > 0 ? ids[0] : 0;
    }
    int32_t m = 0;
    for (; m < n && vals[m] >= vals[0] - BT_CAND_WINDOW; m++)
        s->cand[m] = (cand_t){ids[m], vals[m]};
    s->n_sorted = m;
    if (s->p.top_k > 0)
        return cand_draw(s, cand_filter(s, m));
    s->n_cand = m;
    s->complete = m < n || n >= s->n_vocab; /* the window ends inside the candidates */
    s->total = total;
    s->total_tau = bt_sampler_params_tau(&s->p);
    return window_sample(s);
}
