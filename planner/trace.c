/* SPDX-License-Identifier: MIT */
/*
 * trace.c - the trace readers of trace.h.
 *
 * Both readers walk the text line by line without copying it, append to growable arrays, and
 * stop at the first bad line with its number: a trace that is wrong in one place is wrong, and
 * silently skipping rows would change the workload the plan is sized for.
 */
#include "trace.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/alloc.h"
#include "common/json.h"
#include "common/log.h"
#include "common/status.h"

#define TRACE_MAX_BYTES (1ull << 30)
#define TRACE_MAX_FIELDS 64

typedef struct {
    const char *source;
    size_t line;
    pl_trace_t *t;
    size_t cap;
    int has_time;
} rd_t;

__attribute__((format(printf, 3, 4))) static int bad(rd_t *r, int st, const char *fmt, ...)
{
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    bt_error("trace %s:%zu: %s", r->source, r->line, msg);
    return st;
}

static int push(rd_t *r, double prompt, double output, double t_ms)
{
    pl_trace_t *t = r->t;
    if (t->n == r->cap) {
        size_t cap = r->cap ? r->cap * 2 : 1024;
        int32_t *p = bt_realloc(t->prompt, cap * sizeof *p);
        if (p)
            t->prompt = p;
        int32_t *o = p ? bt_realloc(t->output, cap * sizeof *o) : NULL;
        if (o)
            t->output = o;
        double *a = o ? bt_realloc(t->arrival_ms, cap * sizeof *a) : NULL;
        if (!a)
            return bad(r, BT_ERR_NOMEM, "out of memory");
        t->arrival_ms = a;
        r->cap = cap;
    }
    if (!(prompt >= 0 && prompt < 1e9 && output >= 0 && output < 1e9))
        return bad(r, BT_ERR_RANGE, "lengths must be in [0, 1e9)");
    if (r->has_time && t->n > 0 && t_ms < t->arrival_ms[t->n - 1])
        return bad(r, BT_ERR_RANGE, "arrival time goes backwards");
    t->prompt[t->n] = prompt < 1 ? 1 : (int32_t)prompt;
    t->output[t->n] = output < 1 ? 1 : (int32_t)output;
    t->arrival_ms[t->n] = t_ms;
    t->n++;
    return BT_OK;
}

/* A non-negative integer field (digits only, maybe ".0..." as some exporters write). */
static int parse_count(const char *s, size_t len, double *out)
{
    char buf[64];
    if (len == 0 || len >= sizeof buf)
        return -1;
    memcpy(buf, s, len);
    buf[len] = 0;
    char *end;
    errno = 0;
    double x = strtod(buf, &end);
    if (*end || errno || !(x >= 0) || x != floor(x) || !isdigit((unsigned char)buf[0]))
        return -1;
    *out = x;
    return 0;
}

/* Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's days_from_civil). */
static long days_from_civil(long y, long m, long d)
{
    y -= m <= 2;
    long era = (y >= 0 ? y : y - 399) / 400;
    long yoe = y - era * 400;
    long doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    long doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

/* "YYYY-MM-DD HH:MM:SS[.frac]" (or with a T) in ms since the epoch; else a plain number of
 * seconds (ms when in_ms). */
static int parse_time(const char *s, size_t len, int in_ms, double *out)
{
    char buf[64];
    if (len == 0 || len >= sizeof buf)
        return -1;
    memcpy(buf, s, len);
    buf[len] = 0;
    int y, mo, d, h, mi, n = 0;
    double sec;
    if (sscanf(buf, "%4d-%2d-%2d%*1[ T]%2d:%2d:%lf%n", &y, &mo, &d, &h, &mi, &sec, &n) == 6 &&
        n == (int)len) {
        if (mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || !(sec >= 0 && sec < 61))
            return -1;
        *out = ((days_from_civil(y, mo, d) * 24.0 + h) * 60 + mi) * 60e3 + sec * 1e3;
        return 0;
    }
    char *end;
    errno = 0;
    double x = strtod(buf, &end);
    if (*end || errno || !isfinite(x) || x < 0)
        return -1;
    *out = in_ms ? x : x * 1e3;
    return 0;
}

static int name_in(const char *s, size_t len, const char *const *names)
{
    for (int i = 0; names[i]; i++)
        if (strlen(names[i]) == len && !strncmp(s, names[i], len))
            return 1;
    return 0;
}

typedef struct {
    const char *start[TRACE_MAX_FIELDS];
    size_t len[TRACE_MAX_FIELDS];
    int n;
} fields_t;

static int split_csv(rd_t *r, const char *s, size_t len, fields_t *f)
{
    f->n = 0;
    for (size_t i = 0, b = 0; i <= len; i++) {
        if (i < len && s[i] == '"')
            return bad(r, BT_ERR_FORMAT, "quoted CSV fields are not supported");
        if (i < len && s[i] != ',')
            continue;
        if (f->n == TRACE_MAX_FIELDS)
            return bad(r, BT_ERR_FORMAT, "more than %d fields", TRACE_MAX_FIELDS);
        size_t a = b, e = i;
        while (a < e && (s[a] == ' ' || s[a] == '\t'))
            a++;
        while (e > a && (s[e - 1] == ' ' || s[e - 1] == '\t'))
            e--;
        f->start[f->n] = s + a;
        f->len[f->n++] = e - a;
        b = i + 1;
    }
    return BT_OK;
}

typedef struct {
    int prompt, output, time, time_ms;
} cols_t;

static int csv_header(rd_t *r, const fields_t *f, cols_t *c)
{
    static const char *const prompt[] = {"num_prefill_tokens", "prompt_tokens_with_bos",
                                         "ContextTokens",      "input_length",
                                         "prompt_tokens",      NULL};
    static const char *const output[] = {"num_decode_tokens", "canonical_solution_tokens",
                                         "GeneratedTokens",   "output_length",
                                         "output_tokens",     NULL};
    static const char *const time_s[] = {"TIMESTAMP", "timestamp", NULL};
    static const char *const time_ms[] = {"timestamp_ms", "arrival_ms", NULL};
    *c = (cols_t){-1, -1, -1, 0};
    for (int i = 0; i < f->n; i++) {
        if (c->prompt < 0 && name_in(f->start[i], f->len[i], prompt))
            c->prompt = i;
        else if (c->output < 0 && name_in(f->start[i], f->len[i], output))
            c->output = i;
        else if (c->time < 0 && name_in(f->start[i], f->len[i], time_s))
            c->time = i;
        else if (c->time < 0 && name_in(f->start[i], f->len[i], time_ms))
            c->time = i, c->time_ms = 1;
    }
    if (c->prompt < 0 || c->output < 0)
        return bad(r, BT_ERR_FORMAT, "the header names no prompt-length or output-length column");
    r->has_time = c->time >= 0;
    return BT_OK;
}

static int csv_row(rd_t *r, const fields_t *f, const cols_t *c)
{
    double p, o, t = 0;
    int need = c->prompt > c->output ? c->prompt : c->output;
    need = c->time > need ? c->time : need;
    if (f->n <= need)
        return bad(r, BT_ERR_FORMAT, "%d fields, the header has more", f->n);
    if (parse_count(f->start[c->prompt], f->len[c->prompt], &p) ||
        parse_count(f->start[c->output], f->len[c->output], &o))
        return bad(r, BT_ERR_FORMAT, "a length is not a non-negative integer");
    if (c->time >= 0 && parse_time(f->start[c->time], f->len[c->time], c->time_ms, &t))
        return bad(r, BT_ERR_FORMAT, "bad timestamp \"%.*s\"", (int)f->len[c->time] % 64,
                   f->start[c->time]);
    return push(r, p, o, t);
}

static int jsonl_row(rd_t *r, const char *s, size_t len)
{
    static const bt_json_limits_t lim = {.max_bytes = 1 << 24, .max_depth = 4};
    char err[160];
    bt_json_t *doc;
    if (bt_json_parse(s, len, &lim, &doc, err, sizeof err) != BT_OK)
        return bad(r, BT_ERR_FORMAT, "%s", err);
    const bt_json_value_t *root = bt_json_root(doc);
    double p, o, t = 0;
    int st = BT_OK;
    const bt_json_value_t *ts = bt_json_get(root, "timestamp");
    if (r->t->n == 0)
        r->has_time = ts != NULL;
    if (bt_json_number(bt_json_get(root, "input_length"), &p) != BT_OK ||
        bt_json_number(bt_json_get(root, "output_length"), &o) != BT_OK || p != floor(p) ||
        o != floor(o))
        st = bad(r, BT_ERR_FORMAT, "input_length and output_length must be integers");
    else if (ts && bt_json_number(ts, &t) != BT_OK)
        st = bad(r, BT_ERR_FORMAT, "timestamp must be a number of milliseconds");
    else if ((ts != NULL) != r->has_time)
        st = bad(r, BT_ERR_FORMAT, "timestamp present on some lines only");
    bt_json_destroy(doc);
    return st == BT_OK ? push(r, p, o, t) : st;
}

/* The next line of text at *pos (without its \n or \r\n); 0 at the end. */
static int next_line(const char *text, size_t len, size_t *pos, const char **s, size_t *n)
{
    if (*pos >= len)
        return 0;
    const char *a = text + *pos, *nl = memchr(a, '\n', len - *pos);
    size_t l = nl ? (size_t)(nl - a) : len - *pos;
    *pos += l + (nl != NULL);
    if (l > 0 && a[l - 1] == '\r')
        l--;
    *s = a;
    *n = l;
    return 1;
}

static int blank(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!isspace((unsigned char)s[i]))
            return 0;
    return 1;
}

static int parse_lines(rd_t *r, const char *text, size_t len, int jsonl)
{
    const char *s;
    size_t n, pos = 0;
    int st = BT_OK, header = !jsonl;
    cols_t cols = {-1, -1, -1, 0};
    fields_t *f = jsonl ? NULL : bt_malloc(sizeof *f);
    if (!jsonl && !f)
        return BT_ERR_NOMEM;
    while (st == BT_OK && next_line(text, len, &pos, &s, &n)) {
        r->line++;
        if (blank(s, n))
            continue;
        if (jsonl) {
            st = jsonl_row(r, s, n);
            continue;
        }
        st = split_csv(r, s, n, f);
        if (st == BT_OK)
            st = header ? csv_header(r, f, &cols) : csv_row(r, f, &cols);
        header = 0;
    }
    bt_free(f);
    if (st == BT_OK && r->t->n == 0)
        st = bad(r, BT_ERR_FORMAT, "no requests");
    return st;
}

int pl_trace_parse(const char *text, size_t len, const char *source, pl_trace_t **out)
{
    rd_t r = {.source = source ? source : "(text)"};
    if (len >= 3 && !memcmp(text, "\xef\xbb\xbf", 3)) { /* a UTF-8 byte-order mark */
        text += 3;
        len -= 3;
    }
    size_t i = 0;
    while (i < len && isspace((unsigned char)text[i]))
        i++;
    int jsonl = i < len && text[i] == '{';
    if (!(r.t = bt_calloc(1, sizeof *r.t)))
        return BT_ERR_NOMEM;
    snprintf(r.t->format, sizeof r.t->format, "%s", jsonl ? "jsonl" : "csv");
    int st = parse_lines(&r, text, len, jsonl);
    if (st != BT_OK) {
        pl_trace_destroy(r.t);
        return st;
    }
    double t0 = r.t->arrival_ms[0];
    for (size_t k = 0; k < r.t->n; k++)
        r.t->arrival_ms[k] -= t0;
    if (!r.has_time) {
        bt_free(r.t->arrival_ms);
        r.t->arrival_ms = NULL;
    }
    *out = r.t;
    return BT_OK;
}

int pl_trace_load(const char *path, pl_trace_t **out)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        bt_error("trace %s: cannot open: %s", path, strerror(errno));
        return BT_ERR_IO;
    }
    char *buf = NULL;
    size_t len = 0, cap = 0;
    int st = BT_OK;
    for (;;) {
        if (len == cap) {
            char *nb = cap < TRACE_MAX_BYTES ? bt_realloc(buf, cap ? cap * 2 : 1 << 20) : NULL;
            if (!nb) {
                bt_error("trace %s: too large or out of memory", path);
                st = cap < TRACE_MAX_BYTES ? BT_ERR_NOMEM : BT_ERR_RANGE;
                break;
            }
            buf = nb;
            cap = cap ? cap * 2 : 1 << 20;
        }
        size_t got = fread(buf + len, 1, cap - len, f);
        len += got;
        if (got == 0)
            break;
    }
    if (st == BT_OK && ferror(f)) {
        bt_error("trace %s: read error", path);
        st = BT_ERR_IO;
    }
    fclose(f);
    if (st == BT_OK)
        st = pl_trace_parse(buf, len, path, out);
    bt_free(buf);
    return st;
}

void pl_trace_destroy(pl_trace_t *t)
{
    if (!t)
        return;
    bt_free(t->prompt);
    bt_free(t->output);
    bt_free(t->arrival_ms);
    bt_free(t);
}

void pl_trace_stats(const pl_trace_t *t, double *mean_prompt, double *mean_output,
                    double *rate_per_s)
{
    double p = 0, o = 0;
    for (size_t i = 0; i < t->n; i++) {
        p += t->prompt[i];
        o += t->output[i];
    }
    *mean_prompt = t->n ? p / t->n : 0;
    *mean_output = t->n ? o / t->n : 0;
    double span = t->arrival_ms && t->n > 1 ? t->arrival_ms[t->n - 1] : 0;
    *rate_per_s = span > 0 ? (t->n - 1) / (span / 1e3) : 0;
}
