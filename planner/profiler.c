/* SPDX-License-Identifier: MIT */
/*
 * profiler.c - timing the engine over the grid of profiler.h and fitting the models.
 *
 * Prompt tokens are drawn from a fixed generator (they do not change the work the engine does,
 * but fixed inputs make runs repeatable). Every sequence is built and torn down per run, so the
 * KV pool is back to empty between shapes.
 */
#include "profiler.h"

#include <stdlib.h>
#include <string.h>

#include "common/alloc.h"
#include "common/clock.h"
#include "common/log.h"
#include "common/sampler.h"
#include "common/status.h"
#include "common/steplog.h"
#include "fit.h"

#define MAX_SEQS 256

typedef struct {
    const pl_profiler_params_t *p;
    bt_engine_t *e;
    bt_kv_pool_t *pool;
    int32_t n_vocab, block;
    int32_t *tokens; /* (max_batch_tokens) prompt tokens */
    float *logits;   /* (MAX_SEQS, n_vocab) */
    bt_kv_seq_t seqs[MAX_SEQS];
    bt_batch_seq_t batch[MAX_SEQS];
    int32_t step_tok[MAX_SEQS];
} prof_t;

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* The minimum or the median of n timings (sorts v). */
static double pick(double *v, int n, int use_median)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    if (!use_median)
        return v[0];
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static void seqs_fini(prof_t *s, int n)
{
    for (int i = 0; i < n; i++)
        bt_kv_seq_fini(&s->seqs[i], s->pool);
}

/* One prefill of k prompts of len tokens; its time in ms, or < 0 on error. */
static double prefill_once(prof_t *s, int k, int len)
{
    int st = BT_OK;
    for (int i = 0; i < k && st == BT_OK; i++) {
        st = bt_kv_seq_init(&s->seqs[i], s->pool, len + 1);
        s->batch[i] = (bt_batch_seq_t){.kv = &s->seqs[i],
                                       .tokens = s->tokens + (size_t)i * len,
                                       .n_tokens = len,
                                       .logits = BT_LOGITS_LAST};
    }
    double t0 = bt_mono_ms();
    if (st == BT_OK)
        st = bt_engine_forward(s->e, s->batch, k, s->logits);
    for (int i = 0; i < k && st == BT_OK; i++) /* each prompt's first token, as served */
        s->step_tok[i] = bt_argmax(s->logits + (size_t)i * s->n_vocab, s->n_vocab);
    double t = bt_mono_ms() - t0;
    seqs_fini(s, k);
    if (st != BT_OK)
        bt_error("profiler: prefill of %d x %d tokens failed: %s", k, len, bt_status_str(st));
    return st == BT_OK ? t : -1;
}

/* Rounds: every shape once per round, reps rounds, so that a burst of load from elsewhere on
 * the machine lands on one run of many shapes rather than on every run of one. */
static int measure_prefill(prof_t *s, pl_prefill_point_t *pts, int *n)
{
    const pl_profiler_params_t *p = s->p;
    int k[PL_PROF_MAX_GRID * PL_PROF_MAX_GRID], len[PL_PROF_MAX_GRID * PL_PROF_MAX_GRID], m = 0;
    for (int a = 0; a < p->n_prefill_counts; a++)
        for (int b = 0; b < p->n_prefill_lens; b++)
            if (p->prefill_counts[a] * p->prefill_lens[b] <= p->max_batch_tokens) {
                k[m] = p->prefill_counts[a];
                len[m++] = p->prefill_lens[b];
            }
    double *t = bt_malloc((size_t)m * p->reps * sizeof *t + 1);
    if (!t)
        return BT_ERR_NOMEM;
    for (int r = 0; r < p->reps; r++) {
        for (int i = 0; i < m; i++)
            if ((t[i * p->reps + r] = prefill_once(s, k[i], len[i])) < 0) {
                bt_free(t);
                return BT_ERR_INTERNAL;
            }
        if (p->verbose)
            fprintf(stderr, "prefill: round %d of %d done\n", r + 1, p->reps);
    }
    for (int i = 0; i < m; i++) {
        double ms = pick(t + i * p->reps, p->reps, p->use_median);
        pts[(*n)++] =
            (pl_prefill_point_t){(double)k[i] * len[i], (double)k[i] * len[i] * len[i], ms};
        if (p->raw)
            fprintf(p->raw, "prefill,%d,%d,%.6f\n", k[i], len[i], ms);
    }
    bt_free(t);
    return BT_OK;
}

/* The KV of one prompt of c tokens, prefilled in chunks the engine accepts. */
static int base_prefill(prof_t *s, bt_kv_seq_t *base, int c)
{
    int st = bt_kv_seq_init(base, s->pool, c + 1);
    for (int done = 0; done < c && st == BT_OK;) {
        int n = c - done < s->p->max_batch_tokens ? c - done : s->p->max_batch_tokens;
        bt_batch_seq_t b = {
            .kv = base, .tokens = s->tokens, .n_tokens = n, .logits = BT_LOGITS_NONE};
        st = bt_engine_forward(s->e, &b, 1, s->logits);
        done += n;
    }
    return st;
}

/* b sequences, each with a copy of base's KV in blocks of its own (c is a multiple of the block
 * size), as served sequences have: shared blocks would keep one context's KV in cache for the
 * whole batch and make large batches look cheaper than they are. */
static int fill(prof_t *s, const bt_kv_seq_t *base, int b, int c)
{
    for (int i = 0; i < b; i++) {
        bt_kv_seq_t *q = &s->seqs[i];
        int st = bt_kv_seq_init(q, s->pool, c + s->p->reps + 2);
        if (st == BT_OK)
            st = bt_kv_seq_reserve(q, s->pool, q->max_tokens); /* the steps' tokens too */
        if (st == BT_OK)
            st = bt_kv_pool_copy_blocks(s->pool, base->blocks, q->blocks, base->n_blocks);
        if (st != BT_OK)
            return st;
        q->n_tokens = c;
        s->step_tok[i] = 1 + i % (s->n_vocab - 1);
    }
    return BT_OK;
}

#define SKIPPED (-2.0) /* a decode shape whose KV does not fit the pool */

/* One step of b sequences at context c after an untimed one (which touches the new tokens'
 * block); its time in ms, SKIPPED, or -1 on error. */
static double decode_once(prof_t *s, const bt_kv_seq_t *base, int b, int c)
{
    double t = 0;
    int st = fill(s, base, b, c);
    if (st == BT_ERR_NOSPACE) {
        seqs_fini(s, b);
        return SKIPPED;
    }
    for (int r = 0; r < 2 && st == BT_OK; r++) {
        for (int i = 0; i < b; i++)
            s->batch[i] = (bt_batch_seq_t){.kv = &s->seqs[i],
                                           .tokens = &s->step_tok[i],
                                           .n_tokens = 1,
                                           .logits = BT_LOGITS_LAST};
        double t0 = bt_mono_ms();
        /* A served step also picks every sequence's next token: greedy, as the daemons' batcher
         * does it, where the logits are (the engine reads the tokens before it writes ids). */
        st = bt_engine_forward_argmax(s->e, s->batch, b, s->step_tok);
        t = bt_mono_ms() - t0;
    }
    seqs_fini(s, b);
    if (st != BT_OK)
        bt_error("profiler: decode of %d x %d failed: %s", b, c, bt_status_str(st));
    return st == BT_OK ? t : -1;
}

/* Rounds over every (context, batch), as for prefill; one base prompt per context, kept. */
static int decode_rounds(prof_t *s, bt_kv_seq_t *bases, double *t)
{
    const pl_profiler_params_t *p = s->p;
    int nb = p->n_decode_batches;
    for (int r = 0; r < p->reps; r++) {
        for (int a = 0; a < p->n_decode_ctx; a++)
            for (int k = 0; k < nb; k++) {
                double ms = decode_once(s, &bases[a], p->decode_batches[k], p->decode_ctx[a]);
                if (ms < 0 && ms != SKIPPED)
                    return BT_ERR_INTERNAL;
                t[(a * nb + k) * p->reps + r] = ms;
            }
        if (p->verbose)
            fprintf(stderr, "decode: round %d of %d done\n", r + 1, p->reps);
    }
    return BT_OK;
}

static int measure_decode(prof_t *s, pl_decode_point_t *pts, int *n)
{
    const pl_profiler_params_t *p = s->p;
    int nc = p->n_decode_ctx, nb = p->n_decode_batches, st = BT_OK, made = 0;
    bt_kv_seq_t bases[PL_PROF_MAX_GRID];
    double *t = bt_malloc((size_t)nc * nb * p->reps * sizeof *t);
    if (!t)
        return BT_ERR_NOMEM;
    for (; made < nc && st == BT_OK; made++)
        st = base_prefill(s, &bases[made], p->decode_ctx[made]);
    if (st == BT_OK)
        st = decode_rounds(s, bases, t);
    for (int a = 0; a < nc && st == BT_OK; a++)
        for (int k = 0; k < nb; k++) {
            int b = p->decode_batches[k], c = p->decode_ctx[a];
            if (t[(a * nb + k) * p->reps] == SKIPPED) {
                bt_warn("profiler: decode of %d x %d skipped: its KV does not fit the pool", b, c);
                continue;
            }
            double ms = pick(t + (a * nb + k) * p->reps, p->reps, p->use_median);
            /* The timed step attends the context, the untimed step's token and its own. */
            pts[(*n)++] = (pl_decode_point_t){b, (double)b * (c + 2), ms};
            if (p->raw)
                fprintf(p->raw, "decode,%d,%d,%.6f\n", b, c, ms);
        }
    for (int a = 0; a < made; a++)
        bt_kv_seq_fini(&bases[a], s->pool);
    bt_free(t);
    return st;
}

/* memcpy of KV-sized buffers (up to the largest decode context's KV). Each copy reads and
 * writes memory no earlier copy touched, walking through buffers well past the caches: KV
 * shipped after a prefill is not cache-resident either, and warm copies would flatter the
 * bandwidth of small transfers. */
static int measure_transfer(prof_t *s, double kv_bytes, pl_transfer_point_t *pts, int *n)
{
    const pl_profiler_params_t *p = s->p;
    int max_ctx = 16, reps = p->reps < 5 ? 5 : p->reps;
    for (int i = 0; i < p->n_decode_ctx; i++)
        max_ctx = p->decode_ctx[i] > max_ctx ? p->decode_ctx[i] : max_ctx;
    size_t big = (size_t)(kv_bytes * max_ctx), cap = big > (128u << 20) ? big : 128u << 20;
    char *src = bt_malloc(cap), *dst = bt_malloc(cap);
    double t[64];
    if (!src || !dst) {
        bt_free(src);
        bt_free(dst);
        return BT_ERR_NOMEM;
    }
    memset(src, 1, cap);
    memset(dst, 2, cap);
    size_t off = 0;
    for (int tokens = 16; tokens <= max_ctx; tokens *= 2) {
        size_t bytes = (size_t)(kv_bytes * tokens);
        for (int r = 0; r < reps; r++) {
            if (off + bytes > cap)
                off = 0;
            double t0 = bt_mono_ms();
            memcpy(dst + off, src + off, bytes);
            t[r] = bt_mono_ms() - t0;
            off += bytes;
        }
        double ms = pick(t, reps, p->use_median);
        pts[(*n)++] = (pl_transfer_point_t){(double)bytes, ms > 1e-6 ? ms : 1e-6};
        if (p->raw)
            fprintf(p->raw, "transfer,%zu,%d,%.6f\n", bytes, tokens, ms);
    }
    bt_free(src);
    bt_free(dst);
    return BT_OK;
}

static const char *check(const pl_profiler_params_t *p, const prof_t *s)
{
    if (p->reps < 1 || p->reps > 64)
        return "reps must be in [1, 64]";
    if (p->n_prefill_lens < 1 || p->n_prefill_counts < 1 || p->n_decode_batches < 1 ||
        p->n_decode_ctx < 1)
        return "every grid needs at least one value";
    if (p->max_batch_tokens > bt_engine_max_batch_tokens(s->e))
        return "the prefill token budget exceeds the engine's max_batch_tokens";
    for (int i = 0; i < p->n_decode_ctx; i++)
        if (p->decode_ctx[i] < s->block || p->decode_ctx[i] % s->block)
            return "decode contexts must be multiples of the KV block size";
    for (int i = 0; i < p->n_decode_batches; i++)
        if (p->decode_batches[i] < 1 || p->decode_batches[i] > MAX_SEQS)
            return "decode batches must be in [1, 256]";
    for (int i = 0; i < p->n_prefill_counts; i++)
        if (p->prefill_counts[i] < 1 || p->prefill_counts[i] > MAX_SEQS)
            return "prompts per prefill batch must be in [1, 256]";
    return NULL;
}

static int fit_all(const pl_profiler_params_t *p, const pl_prefill_point_t *pp, int n_pp,
                   const pl_decode_point_t *dp, int n_dp, const pl_transfer_point_t *tp, int n_tp,
                   bt_profile_t *out)
{
    int st = pl_fit_prefill(pp, n_pp, p->fit_weight, &out->prefill, &out->fit_prefill);
    if (st == BT_OK)
        st = pl_fit_decode(dp, n_dp, p->allow_knee, p->fit_weight, &out->decode, &out->decode_above,
                           &out->decode_knee_batch, &out->fit_decode);
    if (st == BT_OK && n_tp > 0)
        st = pl_fit_transfer(tp, n_tp, &out->transfer_latency_ms, &out->transfer_gb_per_s,
                             &out->fit_transfer);
    if (st != BT_OK)
        bt_error("profiler: fitting failed: %s (too few points?)", bt_status_str(st));
    return st;
}

/* Appends one point of a raw file, growing the array by doubling. */
static int grow(void **v, int n, int *cap, size_t size)
{
    if (n < *cap)
        return BT_OK;
    int c = *cap ? *cap * 2 : 64;
    void *nv = bt_realloc(*v, (size_t)c * size);
    if (!nv)
        return BT_ERR_NOMEM;
    *v = nv;
    *cap = c;
    return BT_OK;
}

/* The files of --refit (comma-separated) as one stream: the file itself, or a temporary file
 * holding them one after the other. NULL (logged) when one cannot be read. */
FILE *pl_refit_open(const char *list)
{
    FILE *all = strchr(list, ',') ? tmpfile() : fopen(list, "r");
    if (!all)
        bt_error("cannot read %s", list);
    if (!all || !strchr(list, ','))
        return all;
    char name[4096];
    for (const char *s = list; all && *s;) {
        size_t n = strcspn(s, ",");
        snprintf(name, sizeof name, "%.*s", (int)(n < sizeof name ? n : sizeof name - 1), s);
        s += n + (s[n] == ',');
        FILE *f = fopen(name, "r");
        if (!f) {
            bt_error("cannot read %s", name);
            fclose(all);
            return NULL;
        }
        char buf[8192];
        size_t got;
        while ((got = fread(buf, 1, sizeof buf, f)) > 0)
            fwrite(buf, 1, got, all);
        fclose(f);
    }
    if (all)
        rewind(all);
    return all;
}

/* Fits the measurements of a raw file (pl_profiler_params_t.raw's format) instead of measuring:
 * the same points the run that wrote it fitted. The daemons' step logs (common/steplog.h) read
 * the same way: pstep and dstep lines are single served batches (sums given), mstep lines are
 * skipped, and header lines may recur (files concatenated). BT_ERR_INVAL for a line it cannot
 * read. */
/* A step-log line outside the window of p (its 7th field, T_MS) is not fitted; raw files'
 * lines have no time and always are. */
static int in_window(const pl_profiler_params_t *p, int n_fields, double t_ms)
{
    if (!(p->window_to_ms > 0) || n_fields < 7)
        return 1;
    return t_ms >= p->window_from_ms && t_ms <= p->window_to_ms;
}

int pl_profiler_refit(const pl_profiler_params_t *p, bt_profile_t *out)
{
    pl_prefill_point_t *pp = NULL;
    pl_decode_point_t *dp = NULL;
    pl_transfer_point_t tp[32];
    int n_pp = 0, n_dp = 0, n_tp = 0, cap_pp = 0, cap_dp = 0, line = 0, st = BT_OK;
    char buf[256];
    while (st == BT_OK && fgets(buf, sizeof buf, p->refit)) {
        line++;
        if (strncmp(buf, "kind,", 5) == 0 || strncmp(buf, "mstep,", 6) == 0)
            continue;
        bt_steplog_line_t l;
        int got = bt_steplog_parse(buf, &l);
        const char *kind = l.kind;
        double n = l.x, x = l.y, ms = l.ms;
        if (got < 4 || !(n > 0) || !(x >= 0) || !(ms > 0)) {
            if (!strchr(buf, '\n') && feof(p->refit)) { /* cut short: a log being written */
                bt_warn("profiler: raw line %d is incomplete; ignored", line);
                break;
            }
            bt_error("profiler: raw line %d is not kind,n,len_or_ctx,ms", line);
            st = BT_ERR_INVAL;
        } else if (!in_window(p, got, l.t_ms)) {
            continue;
        } else if (strcmp(kind, "prefill") == 0) {
            st = grow((void **)&pp, n_pp, &cap_pp, sizeof *pp);
            if (st == BT_OK)
                pp[n_pp++] = (pl_prefill_point_t){n * x, n * x * x, ms};
        } else if (strcmp(kind, "decode") == 0) {
            st = grow((void **)&dp, n_dp, &cap_dp, sizeof *dp);
            if (st == BT_OK) /* as measure_decode counts the attended context */
                dp[n_dp++] = (pl_decode_point_t){n, n * (x + 2), ms};
        } else if (strcmp(kind, "pstep") == 0) { /* sum of lengths, sum of their squares */
            st = grow((void **)&pp, n_pp, &cap_pp, sizeof *pp);
            if (st == BT_OK)
                pp[n_pp++] = (pl_prefill_point_t){n, x, ms};
        } else if (strcmp(kind, "dstep") == 0) { /* sequences, positions attended */
            st = grow((void **)&dp, n_dp, &cap_dp, sizeof *dp);
            if (st == BT_OK)
                dp[n_dp++] = (pl_decode_point_t){n, x, ms};
        } else if (strcmp(kind, "transfer") == 0) {
            if (n_tp < (int)(sizeof tp / sizeof tp[0]) && !(p->link_gb_per_s > 0))
                tp[n_tp++] = (pl_transfer_point_t){n, ms};
        } else {
            bt_error("profiler: raw line %d: unknown kind %s", line, kind);
            st = BT_ERR_INVAL;
        }
    }
    if (st == BT_OK)
        st = fit_all(p, pp, n_pp, dp, n_dp, tp, n_tp, out);
    bt_free(pp);
    bt_free(dp);
    return st;
}

static int run(prof_t *s, bt_profile_t *out)
{
    if (s->p->refit)
        return pl_profiler_refit(s->p, out);
    const pl_profiler_params_t *p = s->p;
    int np = p->n_prefill_lens * p->n_prefill_counts, nd = p->n_decode_batches * p->n_decode_ctx;
    pl_prefill_point_t *pp = bt_malloc((size_t)np * sizeof *pp);
    pl_decode_point_t *dp = bt_malloc((size_t)nd * sizeof *dp);
    pl_transfer_point_t tp[32];
    int n_pp = 0, n_dp = 0, n_tp = 0, st = pp && dp ? BT_OK : BT_ERR_NOMEM;
    /* Warm-up: caches, page faults and thread wake-ups belong to no measurement. */
    if (st == BT_OK && prefill_once(s, 1, p->prefill_lens[0]) < 0)
        st = BT_ERR_INTERNAL;
    if (st == BT_OK)
        st = measure_prefill(s, pp, &n_pp);
    if (st == BT_OK)
        st = measure_decode(s, dp, &n_dp);
    if (st == BT_OK && !(p->link_gb_per_s > 0))
        st = measure_transfer(s, out->kv_bytes_per_token, tp, &n_tp);
    if (st == BT_OK)
        st = fit_all(p, pp, n_pp, dp, n_dp, tp, n_tp, out);
    bt_free(pp);
    bt_free(dp);
    return st;
}

int pl_profiler_run(const pl_profiler_params_t *p, bt_profile_t *out)
{
    prof_t *s = bt_calloc(1, sizeof *s);
    if (!s)
        return BT_ERR_NOMEM;
    const bt_model_t *m = bt_engine_model(p->engine);
    s->p = p;
    s->e = p->engine;
    s->pool = bt_engine_kv_pool(p->engine);
    s->n_vocab = m->hp.n_vocab;
    s->block = bt_kv_pool_block_size(s->pool);
    const char *why = check(p, s);
    int st = why ? BT_ERR_INVAL : BT_OK;
    if (why)
        bt_error("profiler: %s", why);
    s->tokens = st == BT_OK ? bt_malloc((size_t)p->max_batch_tokens * sizeof *s->tokens) : NULL;
    s->logits = st == BT_OK ? bt_malloc((size_t)MAX_SEQS * m->hp.n_vocab * sizeof(float)) : NULL;
    if (st == BT_OK && (!s->tokens || !s->logits))
        st = BT_ERR_NOMEM;
    bt_profile_t prof = *out;
    if (st == BT_OK) {
        uint64_t x = 12345;
        for (int i = 0; i < p->max_batch_tokens; i++) {
            x = x * 6364136223846793005ull + 1442695040888963407ull;
            s->tokens[i] = (int32_t)((x >> 33) % (uint64_t)s->n_vocab);
        }
        prof.kv_bytes_per_token =
            (double)bt_kv_pool_block_bytes(s->pool) / s->block * m->hp.n_layers;
        prof.transfer_gb_per_s = p->link_gb_per_s;
        prof.transfer_latency_ms = p->link_latency_ms;
        prof.max_batch = 0;
        for (int i = 0; i < p->n_decode_batches; i++)
            prof.max_batch =
                p->decode_batches[i] > prof.max_batch ? p->decode_batches[i] : prof.max_batch;
        st = run(s, &prof);
    }
    bt_free(s->tokens);
    bt_free(s->logits);
    bt_free(s);
    if (st == BT_OK)
        *out = prof;
    return st;
}
