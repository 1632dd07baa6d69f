/* SPDX-License-Identifier: MIT */
/*
 * profile.c - loading and evaluating latency profiles (see profile.h).
 *
 * Validation is table-driven: each object has a list of known keys, each coefficient must be a
 * finite number >= 0. Unknown keys are errors, not warnings, because a misspelt coefficient
 * would silently become 0 and make the router's predictions wrong without any sign.
 */
#include "profile.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "json.h"
#include "log.h"
#include "status.h"

#define PROFILE_MAX_BYTES (1u << 20)

typedef struct {
    const char *key;
    double *dst;
    int required;
} coef_t;

typedef struct {
    const char *source;
    char msg[256];
} ctx_t;

__attribute__((format(printf, 3, 4))) static int bad(ctx_t *c, int status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->msg, sizeof c->msg, fmt, ap);
    va_end(ap);
    bt_error("profile %s: %s", c->source, c->msg);
    return status;
}

/* Refuses members of obj not listed in known (NULL-terminated). */
static int check_keys(ctx_t *c, const bt_json_value_t *obj, const char *where,
                      const char *const *known)
{
    for (size_t i = 0; i < bt_json_len(obj); i++) {
        const char *k = bt_json_key_at(obj, i);
        int ok = 0;
        for (const char *const *q = known; *q && !ok; q++)
            ok = strcmp(*q, k) == 0;
        if (!ok)
            return bad(c, BT_ERR_FORMAT, "unknown key \"%.60s\" in %s", k, where);
    }
    return BT_OK;
}

static int read_coef(ctx_t *c, const bt_json_value_t *obj, const char *where, const coef_t *k)
{
    const bt_json_value_t *v = bt_json_get(obj, k->key);
    if (!v && !k->required)
        return BT_OK;
    if (!v)
        return bad(c, BT_ERR_FORMAT, "%s.%s is missing", where, k->key);
    if (bt_json_number(v, k->dst) != BT_OK)
        return bad(c, BT_ERR_FORMAT, "%s.%s must be a number", where, k->key);
    if (!(*k->dst >= 0) || !isfinite(*k->dst))
        return bad(c, BT_ERR_RANGE, "%s.%s must be >= 0", where, k->key);
    return BT_OK;
}

/* Reads the coefficients of obj; extra names one more allowed key (or NULL). */
static int get_coefs(ctx_t *c, const bt_json_value_t *obj, const char *where, const coef_t *coefs,
                     int n, const char *extra)
{
    if (bt_json_type(obj) != BT_JSON_OBJECT)
        return bad(c, BT_ERR_FORMAT, "%s must be an object", where);
    const char *known[8];
    for (int i = 0; i < n; i++)
        known[i] = coefs[i].key;
    known[n] = extra;
    known[n + 1] = NULL;
    int st = check_keys(c, obj, where, known);
    for (int i = 0; i < n && st == BT_OK; i++)
        st = read_coef(c, obj, where, &coefs[i]);
    return st;
}

static int get_str(ctx_t *c, const bt_json_value_t *root, const char *key, char *dst, size_t cap)
{
    const bt_json_value_t *v = bt_json_get(root, key);
    const char *s;
    size_t len;
    if (!v)
        return BT_OK;
    if (bt_json_string(v, &s, &len) != BT_OK)
        return bad(c, BT_ERR_FORMAT, "%s must be a string", key);
    if (len >= cap || memchr(s, 0, len))
        return bad(c, BT_ERR_RANGE, "%s must be shorter than %zu bytes, without NUL", key, cap);
    memcpy(dst, s, len + 1);
    return BT_OK;
}

/* An integer field in [lo, hi]; def when absent. */
static int get_int(ctx_t *c, const bt_json_value_t *root, const char *key, int lo, int hi, int def,
                   int *dst)
{
    const bt_json_value_t *v = bt_json_get(root, key);
    double x = def;
    if (v && bt_json_number(v, &x) != BT_OK)
        return bad(c, BT_ERR_FORMAT, "%s must be a number", key);
    if (x != floor(x) || x < lo || x > hi)
        return bad(c, BT_ERR_RANGE, "%s must be an integer in [%d, %d]", key, lo, hi);
    *dst = (int)x;
    return BT_OK;
}

static int get_decode(ctx_t *c, const bt_json_value_t *obj, const char *where,
                      bt_profile_decode_t *d, const char *extra)
{
    coef_t coefs[] = {{"a_ms", &d->a_ms, 1},
                      {"b_ms_per_ctx_token", &d->b_ms_per_ctx_token, 1},
                      {"c_ms_per_seq", &d->c_ms_per_seq, 1}};
    return get_coefs(c, obj, where, coefs, 3, extra);
}

static int get_knee(ctx_t *c, const bt_json_value_t *root, bt_profile_t *p)
{
    const bt_json_value_t *k = bt_json_get(root, "decode_knee");
    if (!k)
        return BT_OK;
    int st = get_decode(c, k, "decode_knee", &p->decode_above, "batch");
    if (st == BT_OK)
        st = get_int(c, k, "batch", 2, 1 << 20, 0, &p->decode_knee_batch);
    return st;
}

static int get_transfer(ctx_t *c, const bt_json_value_t *root, bt_profile_t *p)
{
    coef_t coefs[] = {{"latency_ms", &p->transfer_latency_ms, 1},
                      {"gb_per_s", &p->transfer_gb_per_s, 1}};
    int st = get_coefs(c, bt_json_get(root, "transfer"), "transfer", coefs, 2, NULL);
    if (st == BT_OK && !(p->transfer_gb_per_s > 0))
        return bad(c, BT_ERR_RANGE, "transfer.gb_per_s must be > 0");
    return st;
}

/* One model's fit quality: {"points": n, "r2": x, "max_rel_err": y}; r2 may be negative. */
static int get_fit_one(ctx_t *c, const bt_json_value_t *fit, const char *key, bt_profile_fit_t *f)
{
    static const char *const known[] = {"points", "r2", "max_rel_err", NULL};
    const bt_json_value_t *v = bt_json_get(fit, key);
    if (!v)
        return BT_OK;
    if (bt_json_type(v) != BT_JSON_OBJECT)
        return bad(c, BT_ERR_FORMAT, "fit.%s must be an object", key);
    int st = check_keys(c, v, "fit", known);
    if (st == BT_OK)
        st = get_int(c, v, "points", 0, 1 << 30, 0, &f->n_points);
    const bt_json_value_t *r2 = bt_json_get(v, "r2");
    if (st == BT_OK && r2 && (bt_json_number(r2, &f->r2) != BT_OK || !isfinite(f->r2)))
        st = bad(c, BT_ERR_FORMAT, "fit.%s.r2 must be a finite number", key);
    coef_t err = {"max_rel_err", &f->max_rel_err, 0};
    return st == BT_OK ? read_coef(c, v, "fit", &err) : st;
}

static int get_fit(ctx_t *c, const bt_json_value_t *root, bt_profile_t *p)
{
    static const char *const known[] = {"prefill", "decode", "transfer", NULL};
    const bt_json_value_t *fit = bt_json_get(root, "fit");
    if (!fit)
        return BT_OK;
    if (bt_json_type(fit) != BT_JSON_OBJECT)
        return bad(c, BT_ERR_FORMAT, "fit must be an object");
    int st = check_keys(c, fit, "fit", known);
    if (st == BT_OK)
        st = get_fit_one(c, fit, "prefill", &p->fit_prefill);
    if (st == BT_OK)
        st = get_fit_one(c, fit, "decode", &p->fit_decode);
    if (st == BT_OK)
        st = get_fit_one(c, fit, "transfer", &p->fit_transfer);
    return st;
}

static int from_json(ctx_t *c, const bt_json_value_t *root, bt_profile_t *p)
{
    static const char *const known[] = {
        "version",   "model",  "backend",  "device",      "tp",
        "prefill",   "decode", "transfer", "decode_knee", "kv_bytes_per_token",
        "max_batch", "fit",    "note",     NULL};
    if (bt_json_type(root) != BT_JSON_OBJECT)
        return bad(c, BT_ERR_FORMAT, "the top level must be an object");
    int version = 0, st = check_keys(c, root, "the profile", known);
    coef_t pre[] = {{"a_ms", &p->prefill.a_ms, 1},
                    {"b_ms_per_token", &p->prefill.b_ms_per_token, 1},
                    {"c_ms_per_token2", &p->prefill.c_ms_per_token2, 1}};
    coef_t kv[] = {{"kv_bytes_per_token", &p->kv_bytes_per_token, 1}};
    if (st == BT_OK)
        st = get_int(c, root, "version", 1, BT_PROFILE_VERSION, BT_PROFILE_VERSION, &version);
    if (st == BT_OK)
        st = get_str(c, root, "model", p->model, sizeof p->model);
    if (st == BT_OK)
        st = get_str(c, root, "backend", p->backend, sizeof p->backend);
    if (st == BT_OK)
        st = get_str(c, root, "device", p->device, sizeof p->device);
    if (st == BT_OK)
        st = get_str(c, root, "note", p->note, sizeof p->note);
    if (st == BT_OK)
        st = get_int(c, root, "tp", 1, 1024, 1, &p->tp);
    if (st == BT_OK)
        st = get_int(c, root, "max_batch", 0, 1 << 20, 0, &p->max_batch);
    if (st == BT_OK)
        st = get_coefs(c, bt_json_get(root, "prefill"), "prefill", pre, 3, NULL);
    if (st == BT_OK)
        st = get_decode(c, bt_json_get(root, "decode"), "decode", &p->decode, NULL);
    if (st == BT_OK)
        st = get_knee(c, root, p);
    if (st == BT_OK)
        st = get_transfer(c, root, p);
    if (st == BT_OK)
        st = read_coef(c, root, "the profile", kv);
    if (st == BT_OK && !(p->kv_bytes_per_token > 0))
        st = bad(c, BT_ERR_RANGE, "kv_bytes_per_token must be > 0");
    if (st == BT_OK)
        st = get_fit(c, root, p);
    return st;
}

static int from_doc(ctx_t *c, int st, bt_json_t *doc, bt_profile_t *out)
{
    if (st != BT_OK) {
        bt_error("profile %s: %s", c->source, c->msg);
        return st;
    }
    bt_profile_t p = {0};
    st = from_json(c, bt_json_root(doc), &p);
    bt_json_destroy(doc);
    if (st == BT_OK)
        *out = p;
    return st;
}

static const bt_json_limits_t profile_limits = {
    .max_bytes = PROFILE_MAX_BYTES, .max_depth = 8, .max_values = 4096};

int bt_profile_parse(const char *text, size_t len, const char *source, bt_profile_t *out)
{
    ctx_t c = {.source = source ? source : "(text)"};
    bt_json_t *doc = NULL;
    int st = bt_json_parse(text, len, &profile_limits, &doc, c.msg, sizeof c.msg);
    return from_doc(&c, st, doc, out);
}

int bt_profile_load(const char *path, bt_profile_t *out)
{
    ctx_t c = {.source = path};
    bt_json_t *doc = NULL;
    int st = bt_json_parse_file(path, &profile_limits, &doc, c.msg, sizeof c.msg);
    return from_doc(&c, st, doc, out);
}

/* --- writing ------------------------------------------------------------------------------ */

static void put_decode(FILE *f, const bt_profile_decode_t *d)
{
    fprintf(f, "\"a_ms\": %.17g, \"b_ms_per_ctx_token\": %.17g, \"c_ms_per_seq\": %.17g", d->a_ms,
            d->b_ms_per_ctx_token, d->c_ms_per_seq);
}

static void put_fit(FILE *f, const char *name, const bt_profile_fit_t *q, int *first)
{
    if (q->n_points <= 0)
        return;
    fprintf(f, "%s\n    \"%s\": {\"points\": %d, \"r2\": %.17g, \"max_rel_err\": %.17g}",
            *first ? "" : ",", name, q->n_points, q->r2, q->max_rel_err);
    *first = 0;
}

int bt_profile_fprint(const bt_profile_t *p, FILE *f)
{
    fprintf(f, "{\n  \"version\": %d,\n  \"model\": ", BT_PROFILE_VERSION);
    bt_json_write_str(f, p->model);
    fputs(",\n  \"backend\": ", f);
    bt_json_write_str(f, p->backend);
    fputs(",\n  \"device\": ", f);
    bt_json_write_str(f, p->device);
    fprintf(f,
            ",\n  \"tp\": %d,\n  \"prefill\": {\"a_ms\": %.17g, \"b_ms_per_token\": %.17g, "
            "\"c_ms_per_token2\": %.17g},\n  \"decode\": {",
            p->tp > 0 ? p->tp : 1, p->prefill.a_ms, p->prefill.b_ms_per_token,
            p->prefill.c_ms_per_token2);
    put_decode(f, &p->decode);
    fputs("},\n", f);
    if (p->decode_knee_batch > 0) {
        fprintf(f, "  \"decode_knee\": {\"batch\": %d, ", p->decode_knee_batch);
        put_decode(f, &p->decode_above);
        fputs("},\n", f);
    }
    fprintf(f,
            "  \"transfer\": {\"latency_ms\": %.17g, \"gb_per_s\": %.17g},\n"
            "  \"kv_bytes_per_token\": %.17g,\n  \"max_batch\": %d",
            p->transfer_latency_ms, p->transfer_gb_per_s, p->kv_bytes_per_token, p->max_batch);
    if (p->fit_prefill.n_points > 0 || p->fit_decode.n_points > 0 || p->fit_transfer.n_points > 0) {
        int first = 1;
        fputs(",\n  \"fit\": {", f);
        put_fit(f, "prefill", &p->fit_prefill, &first);
        put_fit(f, "decode", &p->fit_decode, &first);
        put_fit(f, "transfer", &p->fit_transfer, &first);
        fputs("\n  }", f);
    }
    if (p->note[0]) {
        fputs(",\n  \"note\": ", f);
        bt_json_write_str(f, p->note);
    }
    fputs("\n}\n", f);
    return ferror(f) ? BT_ERR_IO : BT_OK;
}

int bt_profile_write(const bt_profile_t *p, const char *path)
{
    char tmp[4096];
    if ((size_t)snprintf(tmp, sizeof tmp, "%s.tmp", path) >= sizeof tmp) {
        bt_error("profile %s: path too long", path);
        return BT_ERR_INVAL;
    }
    FILE *f = fopen(tmp, "w");
    if (!f) {
        bt_error("profile %s: cannot create: %s", tmp, strerror(errno));
        return BT_ERR_IO;
    }
    int st = bt_profile_fprint(p, f);
    if (fclose(f) != 0)
        st = BT_ERR_IO;
    if (st == BT_OK && rename(tmp, path) != 0)
        st = BT_ERR_IO;
    if (st != BT_OK) {
        bt_error("profile %s: cannot write: %s", path, strerror(errno));
        remove(tmp);
    }
    return st;
}

double bt_profile_prefill_ms(const bt_profile_t *p, double sum_len, double sum_len2)
{
    if (sum_len <= 0)
        return 0;
    return p->prefill.a_ms + p->prefill.b_ms_per_token * sum_len +
           p->prefill.c_ms_per_token2 * sum_len2;
}

double bt_profile_decode_ms(const bt_profile_t *p, double sum_ctx, double batch)
{
    if (batch <= 0)
        return 0;
    const bt_profile_decode_t *d =
        p->decode_knee_batch > 0 && batch >= p->decode_knee_batch ? &p->decode_above : &p->decode;
    return d->a_ms + d->b_ms_per_ctx_token * sum_ctx + d->c_ms_per_seq * batch;
}

double bt_profile_transfer_ms(const bt_profile_t *p, double n_tokens)
{
    if (n_tokens <= 0)
        return 0;
    return p->transfer_latency_ms +
           n_tokens * p->kv_bytes_per_token / (p->transfer_gb_per_s * 1e9) * 1e3;
}
