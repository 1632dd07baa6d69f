/* SPDX-License-Identifier: MIT */
/*
 * test_sampler.c - greedy, temperature, top-k, top-p, min-p, repetition penalty and seeding,
 * checked on hand-made logits with known distributions.
 */
// ctest-labels: unit
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/alloc.h"
#include "common/sampler.h"
#include "common/status.h"
#include "kernels/kernels.h"

#define V 8

static bt_sampler_t *make(bt_sampler_params_t p)
{
    bt_sampler_t *s = NULL;
    assert_int_equal(bt_sampler_create(&p, V, &s), BT_OK);
    return s;
}

/* Draws n tokens from fresh copies of logits; counts per id. */
static void histogram(bt_sampler_t *s, const float *logits, int n, int *counts)
{
    float buf[V];
    memset(counts, 0, V * sizeof(int));
    for (int i = 0; i < n; i++) {
        memcpy(buf, logits, sizeof buf);
        int32_t t = bt_sampler_sample(s, buf);
        assert_true(t >= 0 && t < V);
        counts[t]++;
    }
}

static void test_sampler_greedy_picks_lowest_max(void **state)
{
    bt_sampler_t *s = make((bt_sampler_params_t){0});
    float l[V] = {0, 3, 1, 3, -1, 2, 0, 0};
    assert_int_equal(bt_sampler_sample(s, l), 1);
    bt_sampler_destroy(s);
}

/* bt_argmax against the plain definition (first index of the largest non-NaN value; 0 when
 * x[0] is NaN or nothing is larger) on random vocabularies with ties, NaNs and infinities,
 * lengths on and off its 16-lane blocks. */
static int32_t argmax_ref(const float *x, int32_t n)
{
    int32_t best = 0;
    for (int32_t i = 1; i < n; i++)
        if (x[i] > x[best])
            best = i;
    return best;
}

static void test_argmax_matches_definition(void **state)
{
    (void)state;
    enum { N = 4099 };
    float *x = bt_malloc(N * sizeof *x);
    assert_non_null(x);
    uint64_t r = 7;
    for (int trial = 0; trial < 3000; trial++) {
        int32_t n = 1 + (int32_t)(trial * 37 % N);
        for (int32_t i = 0; i < n; i++) {
            r = r * 6364136223846793005ull + 1442695040888963407ull;
            x[i] = (float)((r >> 40) % 64) - 32.0f; /* many ties */
        }
        r = r * 6364136223846793005ull + 1442695040888963407ull;
        int32_t k = (int32_t)((r >> 33) % (uint64_t)n);
        switch (trial % 6) {
        case 1: x[k] = NAN; break;
        case 2: x[0] = NAN; break;
        case 3: x[k] = INFINITY; break;
        case 4:
            for (int32_t i = 0; i < n; i++)
                x[i] = -INFINITY;
            break;
        case 5: x[n - 1] = 1000.0f; break;
        default: break;
        }
        assert_int_equal(bt_argmax(x, n), argmax_ref(x, n));
    }
    bt_free(x);
}

static void test_sampler_temperature_matches_softmax(void **state)
{
    bt_sampler_t *s = make((bt_sampler_params_t){.temperature = 1, .seed = 7});
    float l[V] = {0, 1, 2, 0, 0, 0, 0, 0};
    int c[V];
    const int n = 40000;
    histogram(s, l, n, c);
    double z = 0;
    for (int i = 0; i < V; i++)
        z += exp(l[i]);
    for (int i = 0; i < V; i++) {
        double p = exp(l[i]) / z, sd = sqrt(p * (1 - p) / n);
        assert_true(fabs((double)c[i] / n - p) < 5 * sd + 1e-9);
    }
    bt_sampler_destroy(s);
}

static void test_sampler_top_k_top_p_min_p(void **state)
{
    float l[V] = {5, 4, 3, 2, 1, 0, -1, -2};
    int c[V];
    bt_sampler_t *s = make((bt_sampler_params_t){.temperature = 1, .top_k = 2, .seed = 1});
    histogram(s, l, 2000, c);
    assert_true(c[0] > 0 && c[1] > 0);
    assert_int_equal(c[0] + c[1], 2000);
    bt_sampler_destroy(s);

    /* p0 = 0.636, p0 + p1 = 0.87: top_p 0.8 keeps two tokens, 0.5 keeps one. */
    s = make((bt_sampler_params_t){.temperature = 1, .top_p = 0.8f, .seed = 2});
    histogram(s, l, 2000, c);
    assert_int_equal(c[0] + c[1], 2000);
    assert_true(c[1] > 0);
    bt_sampler_destroy(s);
    s = make((bt_sampler_params_t){.temperature = 1, .top_p = 0.5f, .seed = 2});
    histogram(s, l, 200, c);
    assert_int_equal(c[0], 200);
    bt_sampler_destroy(s);

    /* min_p 0.3: keeps tokens with p >= 0.3 p_max, i.e. logit >= 5 + ln 0.3 = 3.80. */
    s = make((bt_sampler_params_t){.temperature = 1, .min_p = 0.3f, .seed = 3});
    histogram(s, l, 2000, c);
    assert_int_equal(c[0] + c[1], 2000);
    bt_sampler_destroy(s);
}

static void test_sampler_same_seed_same_tokens(void **state)
{
    float l[V] = {1, 1, 1, 1, 1, 1, 1, 1}, buf[V];
    bt_sampler_params_t p = {.temperature = 1, .seed = 99};
    bt_sampler_t *a = make(p), *b = make(p);
    p.seed = 100;
    bt_sampler_t *c = make(p);
    int differ = 0;
    for (int i = 0; i < 64; i++) {
        memcpy(buf, l, sizeof buf);
        int32_t ta = bt_sampler_sample(a, buf);
        memcpy(buf, l, sizeof buf);
        int32_t tb = bt_sampler_sample(b, buf);
        memcpy(buf, l, sizeof buf);
        differ += bt_sampler_sample(c, buf) != ta;
        assert_int_equal(ta, tb);
    }
    assert_true(differ > 0);
    bt_sampler_destroy(a);
    bt_sampler_destroy(b);
    bt_sampler_destroy(c);
}

static void test_sampler_draw_depends_on_seed_and_position_only(void **state)
{
    float l[V] = {1, 1.5f, 1, 0.5f, 1, 1, 2, 1}, buf[V];
    bt_sampler_params_t p = {.temperature = 1, .seed = 5};
    bt_sampler_t *a = make(p), *b = make(p);
    int32_t seq[6];
    for (int i = 0; i < 6; i++) {
        memcpy(buf, l, sizeof buf);
        seq[i] = bt_sampler_sample(a, buf);
    }
    /* An instance continuing the sequence at position 4 draws what the first one did. */
    bt_sampler_set_position(b, 4);
    for (int i = 4; i < 6; i++) {
        memcpy(buf, l, sizeof buf);
        assert_int_equal(bt_sampler_sample(b, buf), seq[i]);
    }
    bt_sampler_destroy(a);
    bt_sampler_destroy(b);
}

static void test_sampler_repeat_penalty(void **state)
{
    bt_sampler_t *s = make((bt_sampler_params_t){.repeat_penalty = 2, .repeat_last_n = 2});
    float l[V] = {4, 3, -1, 0, 0, 0, 0, 0};
    bt_sampler_accept(s, 0);
    bt_sampler_accept(s, 0); /* penalized once, not twice */
    assert_int_equal(bt_sampler_sample(s, l), 1);
    assert_true(l[0] == 2.0f);
    bt_sampler_accept(s, 1);
    bt_sampler_accept(s, 2); /* window of 2: token 0 fell out */
    float l2[V] = {4, 3, -1, 0, 0, 0, 0, 0};
    assert_int_equal(bt_sampler_sample(s, l2), 0);
    assert_true(l2[2] == -2.0f);
    bt_sampler_destroy(s);
}

static uint32_t lcg(uint32_t *x)
{
    *x = *x * 1664525u + 1013904223u;
    return *x >> 8;
}

/* Logits like a model's: a few clear favourites over a long tail, with ties, -0 beside +0 and
 * values far below the others (outside the sampler's window). */
static void model_like(float *l, int32_t n, uint32_t seed)
{
    uint32_t x = seed;
    for (int32_t i = 0; i < n; i++)
        l[i] = (float)(lcg(&x) % 2000) / 100.0f - 10.0f;
    for (int k = 0; k < 12; k++)
        l[lcg(&x) % (uint32_t)n] = 14.0f + (float)(lcg(&x) % 6); /* ties at the top */
    l[lcg(&x) % (uint32_t)n] = -0.0f;
    l[lcg(&x) % (uint32_t)n] = 0.0f;
    l[lcg(&x) % (uint32_t)n] = -1e30f;
}

/* bt_sampler_sample_top with the window total a backend sends with the candidates
 * (bt_window_totals: bt_window_total_f32 of the row at bt_sampler_params_tau). */
static int32_t sample_top(bt_sampler_t *s, const bt_sampler_params_t *p, const float *row,
                          int32_t nv, const int32_t *ids, const float *vals, int32_t k)
{
    float tau = bt_sampler_params_tau(p);
    return bt_sampler_sample_top(s, ids, vals, k,
                                 tau > 0 ? bt_window_total_f32(row, nv, tau) : NAN);
}

/* Sampling from a row's best candidates (what a device sends back) draws exactly what sampling
 * the whole row draws, for every setting that asks for candidates, whatever larger k the rest of
 * the batch asked for; without top-k, it does or says that it needs the row. */
static void test_sampler_top_candidates_draw_the_same(void **state)
{
    enum { NV = 5000 };
    float *l = bt_malloc(NV * sizeof(float)), *row = bt_malloc(NV * sizeof(float));
    float vals[BT_TOPK_MAX];
    int32_t ids[BT_TOPK_MAX];
    const bt_sampler_params_t ps[] = {
        {.temperature = 0},
        {.temperature = 0.8f, .top_k = 1, .seed = 5},
        {.temperature = 0.8f, .top_k = 40, .seed = 6},
        {.temperature = 1.5f, .top_k = 5, .top_p = 0.9f, .seed = 7},
        {.temperature = 1.0f, .top_k = 256, .top_p = 0.95f, .min_p = 0.02f, .seed = 8},
        {.temperature = 3.0f, .top_k = 100, .seed = 9},
        {.temperature = 0.7f, .top_k = 12, .repeat_penalty = 1.0f, .seed = 10},
        /* without top-k: the best BT_TOPK_MAX and the window's total */
        {.temperature = 0.8f, .seed = 11},
        {.temperature = 1.0f, .top_p = 0.9f, .seed = 12},
        {.temperature = 0.7f, .min_p = 0.05f, .seed = 13},
        {.temperature = 1.3f, .top_p = 0.95f, .min_p = 0.01f, .seed = 14},
        {.temperature = 4.0f, .seed = 15},
        {.temperature = 0.9f, .top_p = 0.9999f, .seed = 16},
        /* a repetition penalty, applied where the logits are (bt_penalize_rows) */
        {.temperature = 0, .repeat_penalty = 1.5f, .repeat_last_n = 32},
        {.temperature = 0.9f, .top_k = 30, .repeat_penalty = 1.3f, .repeat_last_n = 16},
        {.temperature = 0.8f, .top_p = 0.95f, .repeat_penalty = 0.7f, .seed = 17},
    };
    enum { NP = sizeof ps / sizeof ps[0] };
    int draws = 0, from_row = 0;
    float *pl = bt_malloc(NV * sizeof(float));
    int32_t hist[64];
    for (size_t pi = 0; pi < sizeof ps / sizeof ps[0]; pi++) {
        int32_t need = bt_sampler_params_cands(&ps[pi]);
        assert_true(need >= 1 && need <= BT_TOPK_MAX);
        bt_sampler_t *a = NULL, *b = NULL;
        assert_int_equal(bt_sampler_create(&ps[pi], NV, &a), BT_OK);
        assert_int_equal(bt_sampler_create(&ps[pi], NV, &b), BT_OK);
        const int32_t ks[] = {need, need + 3 < BT_TOPK_MAX ? need + 3 : BT_TOPK_MAX, BT_TOPK_MAX};
        int32_t n_hist = 0;
        for (uint32_t step = 0; step < 60; step++) {
            int32_t k = ks[step % 3];
            model_like(l, NV, 1000u * (uint32_t)pi + step);
            /* History: the last few steps' best tokens (so the penalty hits favourites). */
            int32_t pids[BT_PENALTY_MAX];
            int32_t np = bt_sampler_penalty_ids(&ps[pi], hist, n_hist, NV, pids);
            memcpy(pl, l, NV * sizeof(float));
            for (int32_t j = 0; j < np; j++)
                pl[pids[j]] = bt_penalize_logit(pl[pids[j]], ps[pi].repeat_penalty);
            bt_topk_f32(pl, NV, k, ids, vals);
            bt_sampler_set_position(a, step);
            bt_sampler_set_position(b, step);
            int32_t tb = sample_top(b, &ps[pi], pl, NV, ids, vals, k);
            if (tb == BT_SAMPLER_NEED_ROW) { /* as a daemon does: the row, read back */
                memcpy(row, pl, NV * sizeof(float));
                tb = bt_sampler_sample_penalized(b, row);
                from_row++;
            }
            memcpy(row, l, NV * sizeof(float));
            int32_t ta = bt_sampler_sample(a, row);
            assert_int_equal(tb, ta);
            hist[n_hist++] = ta;
            bt_sampler_accept(a, ta);
            bt_sampler_accept(b, ta);
            draws++;
        }
        bt_sampler_destroy(a);
        bt_sampler_destroy(b);
    }
    assert_int_equal(draws, NP * 60);
    /* Most draws without top-k were decided by the candidates; a flat temperature (4.0) and
     * top-p 0.9999 walk past them and read the row back. */
    assert_true(from_row > 0 && from_row < 3 * 60);
    bt_free(pl);
    bt_free(l);
    bt_free(row);
}

static const float *sort_ref_l;

static int sort_ref_cmp(const void *a, const void *b)
{
    int32_t i = *(const int32_t *)a, j = *(const int32_t *)b;
    float x = sort_ref_l[i], y = sort_ref_l[j];
    if (x != y)
        return x < y ? 1 : -1;
    return i < j ? -1 : i > j;
}

/* A 20,000-token vocabulary whose logits all sit within the sampler's window, so its
 * candidates are sorted lazily (a sorted head, the tail sorted only when a walk reaches it):
 * every setting draws what the same sampler draws from the whole list sorted up front,
 * including settings that walk deep into the tail (top-p 0.99, top-k 1000, no filter). */
static void test_sampler_lazy_sort_draws_the_same(void **state)
{
    enum { NV = 20000 };
    float *l = bt_malloc(NV * sizeof(float)), *row = bt_malloc(NV * sizeof(float)),
          *vals = bt_malloc(NV * sizeof(float));
    int32_t *ids = bt_malloc(NV * sizeof(int32_t));
    const bt_sampler_params_t ps[] = {
        {.temperature = 0.8f, .seed = 1},
        {.temperature = 1.0f, .top_p = 0.9f, .seed = 2},
        {.temperature = 1.5f, .top_p = 0.99f, .seed = 3},
        {.temperature = 1.0f, .top_p = 0.5f, .min_p = 0.05f, .seed = 4},
        {.temperature = 1.2f, .top_k = 1000, .seed = 5},
        {.temperature = 0.7f, .min_p = 0.001f, .seed = 6},
    };
    uint32_t x = 99;
    for (size_t pi = 0; pi < sizeof ps / sizeof ps[0]; pi++) {
        bt_sampler_t *a = NULL, *b = NULL;
        assert_int_equal(bt_sampler_create(&ps[pi], NV, &a), BT_OK);
        assert_int_equal(bt_sampler_create(&ps[pi], NV, &b), BT_OK);
        for (uint32_t step = 0; step < 40; step++) {
            for (int32_t i = 0; i < NV; i++) /* a spread of 8 logits: all within the window */
                l[i] = (float)(lcg(&x) % 8000) / 1000.0f;
            for (int k = 0; k < 5; k++)
                l[lcg(&x) % NV] = 9.0f + (float)k * 0.25f;
            memcpy(row, l, NV * sizeof(float));
            for (int32_t i = 0; i < NV; i++)
                ids[i] = i;
            sort_ref_l = l;
            qsort(ids, NV, sizeof(int32_t), sort_ref_cmp);
            for (int32_t i = 0; i < NV; i++)
                vals[i] = l[ids[i]];
            bt_sampler_set_position(a, step);
            bt_sampler_set_position(b, step);
            float tau = bt_sampler_params_tau(&ps[pi]);
            double total = tau > 0 ? bt_window_total_f32(l, NV, tau) : NAN;
            assert_int_equal(bt_sampler_sample(a, row),
                             bt_sampler_sample_top(b, ids, vals, NV, total));
        }
        bt_sampler_destroy(a);
        bt_sampler_destroy(b);
    }
    bt_free(l);
    bt_free(row);
    bt_free(vals);
    bt_free(ids);
}

/* What a batch asks the engine for: 1 while every sequence is greedy, the largest top_k,
 * BT_TOPK_MAX with top-k off, and 0 (whole rows) once one needs them: top-k over BT_TOPK_MAX,
 * or a penalty looking back further than a backend applies one. */
static void test_sampler_cands_merge(void **state)
{
    bt_sampler_params_t greedy = {0}, k40 = {.temperature = 1, .top_k = 40},
                        k7 = {.temperature = 1, .top_k = 7}, all = {.temperature = 1},
                        pen = {.temperature = 1, .top_k = 7, .repeat_penalty = 1.1f},
                        big = {.temperature = 1, .top_k = BT_TOPK_MAX + 1},
                        gpen = {.repeat_penalty = 1.2f};
    assert_int_equal(bt_sampler_params_cands(&greedy), 1);
    assert_int_equal(bt_sampler_params_cands(&k40), 40);
    assert_int_equal(bt_sampler_params_cands(&all), BT_TOPK_MAX); /* with the window total */
    assert_int_equal(bt_sampler_params_cands(&pen), 7);           /* from the penalized row */
    assert_int_equal(bt_sampler_params_cands(&big), 0);
    assert_int_equal(bt_sampler_params_cands(&gpen), 1);
    bt_sampler_params_t far = pen;
    far.repeat_last_n = BT_PENALTY_MAX + 1; /* more recent tokens than a backend penalizes */
    assert_int_equal(bt_sampler_params_cands(&far), 0);
    int32_t k = bt_sampler_cands_merge(1, &greedy);
    assert_int_equal(k, 1);
    k = bt_sampler_cands_merge(k, &k40);
    k = bt_sampler_cands_merge(k, &k7);
    assert_int_equal(k, 40);
    assert_int_equal(bt_sampler_cands_merge(k, &all), BT_TOPK_MAX);
    assert_int_equal(bt_sampler_cands_merge(k, &far), 0);
    assert_int_equal(bt_sampler_cands_merge(0, &k7), 0);
    /* The window total's temperature: top-p's mass at 1, the draw's at the temperature, none
     * when min-p cuts first or top-k or greed decide the candidates. */
    bt_sampler_params_t t07 = {.temperature = 0.7f}, p09 = {.temperature = 0.7f, .top_p = 0.9f},
                        mp = {.temperature = 0.7f, .min_p = 0.1f},
                        pmp = {.temperature = 0.7f, .top_p = 0.9f, .min_p = 0.1f},
                        wpen = {.temperature = 0.7f, .repeat_penalty = 1.1f};
    assert_true(bt_sampler_params_tau(&t07) == 0.7f);
    assert_true(bt_sampler_params_tau(&p09) == 1.0f);
    assert_true(bt_sampler_params_tau(&pmp) == 1.0f);
    assert_true(bt_sampler_params_tau(&mp) == 0);
    assert_true(bt_sampler_params_tau(&k40) == 0);
    assert_true(bt_sampler_params_tau(&greedy) == 0);
    assert_true(bt_sampler_params_tau(&wpen) == 0.7f);
}

/* The tokens a penalty names: the distinct in-vocabulary ones among the last repeat_last_n, in
 * order of first appearance; none without a penalty. */
static void test_sampler_penalty_ids(void **state)
{
    (void)state;
    int32_t hist[600], ids[600], want[600];
    uint32_t x = 5;
    for (int i = 0; i < 600; i++)
        hist[i] = (int32_t)(lcg(&x) % 300) - 10; /* repeats, and ids below 0 */
    const int32_t lasts[] = {1, 16, 64, 256, 600};
    for (size_t li = 0; li < sizeof lasts / sizeof lasts[0]; li++) {
        bt_sampler_params_t p = {
            .temperature = 1, .repeat_penalty = 1.2f, .repeat_last_n = lasts[li]};
        int32_t nw = 0;
        for (int i = 600 - lasts[li]; i < 600; i++) {
            int seen = hist[i] < 0 || hist[i] >= 250; /* a vocabulary of 250 */
            for (int j = 0; j < nw && !seen; j++)
                seen = want[j] == hist[i];
            if (!seen)
                want[nw++] = hist[i];
        }
        int32_t n = bt_sampler_penalty_ids(&p, hist, 600, 250, ids);
        assert_int_equal(n, nw);
        assert_memory_equal(ids, want, (size_t)n * sizeof(int32_t));
    }
    bt_sampler_params_t off = {.temperature = 1, .repeat_penalty = 1.0f};
    assert_int_equal(bt_sampler_penalty_ids(&off, hist, 600, 250, ids), 0);
}

/* NaN logits (a broken model) leave no candidate; the sampler answers a token id, not garbage. */
static void test_sampler_nan_row_gives_a_valid_token(void **state)
{
    bt_sampler_t *s = make((bt_sampler_params_t){.temperature = 1, .seed = 1});
    float l[V];
    for (int i = 0; i < V; i++)
        l[i] = NAN;
    int32_t t = bt_sampler_sample(s, l);
    assert_true(t >= 0 && t < V);
    bt_sampler_destroy(s);
}

static void test_sampler_rejects_bad_params(void **state)
{
    bt_sampler_t *s = NULL;
    bt_sampler_params_t bad[] = {{.temperature = -1},
                                 {.top_p = 1.5f},
                                 {.top_k = -3},
                                 {.min_p = -0.1f},
                                 {.temperature = NAN}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_int_equal(bt_sampler_create(&bad[i], V, &s), BT_ERR_INVAL);
    assert_null(s);
    for (long n = 1;; n++) {
        bt_alloc_fail_at(n);
        int st = bt_sampler_create(&(bt_sampler_params_t){0}, V, &s);
        int fired = bt_alloc_fault_fired();
        bt_alloc_fail_at(0);
        if (!fired) {
            assert_int_equal(st, BT_OK);
            bt_sampler_destroy(s);
            break;
        }
        assert_int_equal(st, BT_ERR_NOMEM);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sampler_greedy_picks_lowest_max),
        cmocka_unit_test(test_argmax_matches_definition),
        cmocka_unit_test(test_sampler_temperature_matches_softmax),
        cmocka_unit_test(test_sampler_top_k_top_p_min_p),
        cmocka_unit_test(test_sampler_same_seed_same_tokens),
        cmocka_unit_test(test_sampler_draw_depends_on_seed_and_position_only),
        cmocka_unit_test(test_sampler_repeat_penalty),
        cmocka_unit_test(test_sampler_rejects_bad_params),
        cmocka_unit_test(test_sampler_top_candidates_draw_the_same),
        cmocka_unit_test(test_sampler_cands_merge),
        cmocka_unit_test(test_sampler_penalty_ids),
        cmocka_unit_test(test_sampler_lazy_sort_draws_the_same),
        cmocka_unit_test(test_sampler_nan_row_gives_a_valid_token),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
