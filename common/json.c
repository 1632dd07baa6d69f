/* SPDX-License-Identifier: MIT */
/*
 * json.c - strict JSON reader (see json.h).
 *
 * Recursive descent, bounded by max_depth (which is itself capped, so the C stack is safe).
 * Values, decoded strings and child arrays come from one chunked arena owned by the document.
 * Children of an open array or object are collected on one growable stack shared by all levels
 * and copied into the arena when the container closes, so no container is ever reallocated.
 * Duplicate keys are found by sorting the keys of each object (O(n log n), so a hostile object
 * with many keys cannot make the check quadratic).
 */
#include "json.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "alloc.h"
#include "status.h"

#define JSON_DEF_MAX_BYTES (16u << 20)
#define JSON_DEF_MAX_DEPTH 64
#define JSON_CAP_MAX_DEPTH 1000
#define JSON_DEF_MAX_VALUES 1000000u
#define JSON_MAX_NUMBER_CHARS 512
#define JSON_CHUNK_BYTES 65536

struct bt_json_value {
    bt_json_type_t type;
    int b;
    double num;
    char *s;                 /* STRING: decoded bytes, NUL-terminated */
    size_t len;              /* STRING: bytes; ARRAY/OBJECT: elements */
    bt_json_value_t **items; /* (len) */
    const char **keys;       /* OBJECT: (len) member names */
    size_t *key_lens;        /* OBJECT: (len) */
};

typedef struct chunk {
    struct chunk *next;
    size_t used, cap;
    _Alignas(16) unsigned char data[];
} chunk_t;

struct bt_json {
    chunk_t *chunks;
    bt_json_value_t *root;
};

typedef struct {
    bt_json_value_t *v;
    const char *key;
    size_t key_len;
} slot_t;

typedef struct {
    const char *p, *begin, *end;
    bt_json_t *doc;
    int depth, max_depth;
    size_t n_values, max_values;
    slot_t *stack; /* children of open containers */
    size_t n_stack, cap_stack;
    int status;
    const char *err_at;
    char msg[128];
} parser_t;

static void *arena_alloc(bt_json_t *doc, size_t size)
{
    size = (size + 15) & ~(size_t)15;
    chunk_t *c = doc->chunks;
    if (!c || c->cap - c->used < size) {
        size_t cap = size > JSON_CHUNK_BYTES ? size : JSON_CHUNK_BYTES;
        c = bt_malloc(sizeof *c + cap);
        if (!c)
            return NULL;
        c->used = 0;
        c->cap = cap;
        c->next = doc->chunks;
        doc->chunks = c;
    }
    void *p = c->data + c->used;
    c->used += size;
    return p;
}

__attribute__((format(printf, 3, 4))) static int fail(parser_t *ps, int status, const char *fmt,
                                                      ...)
{
    if (ps->status != BT_OK)
        return ps->status;
    ps->status = status;
    ps->err_at = ps->p;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ps->msg, sizeof ps->msg, fmt, ap);
    va_end(ap);
    return status;
}

static void skip_ws(parser_t *ps)
{
    while (ps->p < ps->end && (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' || *ps->p == '\r'))
        ps->p++;
}

static bt_json_value_t *new_value(parser_t *ps, bt_json_type_t type)
{
    if (++ps->n_values > ps->max_values) {
        fail(ps, BT_ERR_RANGE, "more than %zu values", ps->max_values);
        return NULL;
    }
    bt_json_value_t *v = arena_alloc(ps->doc, sizeof *v);
    if (!v) {
        fail(ps, BT_ERR_NOMEM, "out of memory");
        return NULL;
    }
    memset(v, 0, sizeof *v);
    v->type = type;
    return v;
}

static int literal(parser_t *ps, const char *word, bt_json_type_t type, int b,
                   bt_json_value_t **out)
{
    size_t n = strlen(word);
    if ((size_t)(ps->end - ps->p) < n || memcmp(ps->p, word, n) != 0)
        return fail(ps, BT_ERR_FORMAT, "unexpected character");
    ps->p += n;
    if (!(*out = new_value(ps, type)))
        return ps->status;
    (*out)->b = b;
    return BT_OK;
}

static int is_digit(const char *p, const char *end)
{
    return p < end && *p >= '0' && *p <= '9';
}

/* The RFC 8259 number grammar, then strtod on a bounded copy. */
static int number(parser_t *ps, bt_json_value_t **out)
{
    const char *s = ps->p, *p = s, *e = ps->end;
    if (p < e && *p == '-')
        p++;
    if (!is_digit(p, e))
        return fail(ps, BT_ERR_FORMAT, "invalid number");
    if (*p == '0' && is_digit(p + 1, e))
        return fail(ps, BT_ERR_FORMAT, "leading zero in a number");
    while (is_digit(p, e))
        p++;
    if (p < e && *p == '.') {
        if (!is_digit(++p, e))
            return fail(ps, BT_ERR_FORMAT, "digits expected after '.'");
        while (is_digit(p, e))
            p++;
    }
    if (p < e && (*p == 'e' || *p == 'E')) {
        p++;
        if (p < e && (*p == '+' || *p == '-'))
            p++;
        if (!is_digit(p, e))
            return fail(ps, BT_ERR_FORMAT, "digits expected in the exponent");
        while (is_digit(p, e))
            p++;
    }
    if (p - s > JSON_MAX_NUMBER_CHARS)
        return fail(ps, BT_ERR_RANGE, "number longer than %d characters", JSON_MAX_NUMBER_CHARS);
    char buf[JSON_MAX_NUMBER_CHARS + 1];
    memcpy(buf, s, (size_t)(p - s));
    buf[p - s] = 0;
    double x = strtod(buf, NULL);
    if (!isfinite(x))
        return fail(ps, BT_ERR_RANGE, "number out of range");
    if (!(*out = new_value(ps, BT_JSON_NUMBER)))
        return ps->status;
    (*out)->num = x;
    ps->p = p;
    return BT_OK;
}

static int hex4(const char *p, const char *end, unsigned *out)
{
    unsigned v = 0;
    if (end - p < 4)
        return -1;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        unsigned d = c >= '0' && c <= '9'   ? (unsigned)(c - '0')
                     : c >= 'a' && c <= 'f' ? (unsigned)(c - 'a' + 10)
                     : c >= 'A' && c <= 'F' ? (unsigned)(c - 'A' + 10)
                                            : 16u;
        if (d == 16)
            return -1;
        v = v * 16 + d;
    }
    *out = v;
    return 0;
}

static size_t put_utf8(unsigned cp, char *o)
{
    if (cp < 0x80) {
        o[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (char)(0xC0 | (cp >> 6));
        o[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (char)(0xE0 | (cp >> 12));
        o[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (char)(0xF0 | (cp >> 18));
    o[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    o[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* \uXXXX, with a surrogate pair when the first is a high surrogate; p is after the 'u'. */
static int unicode_escape(parser_t *ps, char **o)
{
    unsigned cp, lo;
    if (hex4(ps->p, ps->end, &cp) != 0)
        return fail(ps, BT_ERR_FORMAT, "invalid \\u escape");
    ps->p += 4;
    if (cp >= 0xDC00 && cp <= 0xDFFF)
        return fail(ps, BT_ERR_FORMAT, "lone low surrogate in \\u escape");
    if (cp >= 0xD800 && cp <= 0xDBFF) {
        if (ps->end - ps->p < 6 || ps->p[0] != '\\' || ps->p[1] != 'u' ||
            hex4(ps->p + 2, ps->end, &lo) != 0 || lo < 0xDC00 || lo > 0xDFFF)
            return fail(ps, BT_ERR_FORMAT, "high surrogate without a low surrogate");
        ps->p += 6;
        cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
    }
    *o += put_utf8(cp, *o);
    return BT_OK;
}

static int escape(parser_t *ps, char **o)
{
    char c = *ps->p++;
    static const char from[] = "\"\\/bfnrt", to[] = "\"\\/\b\f\n\r\t";
    const char *k = c ? strchr(from, c) : NULL;
    if (k) {
        *(*o)++ = to[k - from];
        return BT_OK;
    }
    if (c == 'u')
        return unicode_escape(ps, o);
    ps->p--;
    return fail(ps, BT_ERR_FORMAT, "invalid escape");
}

/* Length of the valid UTF-8 sequence at p (no overlongs, surrogates or > U+10FFFF); 0 if bad. */
static size_t utf8_len(const unsigned char *p, const unsigned char *e)
{
    unsigned c = p[0];
    size_t n = c < 0x80                 ? 1
               : c >= 0xC2 && c <= 0xDF ? 2
               : c >= 0xE0 && c <= 0xEF ? 3
               : c >= 0xF0 && c <= 0xF4 ? 4
                                        : 0;
    if (n == 0 || (size_t)(e - p) < n)
        return 0;
    for (size_t i = 1; i < n; i++)
        if ((p[i] & 0xC0) != 0x80)
            return 0;
    if ((c == 0xE0 && p[1] < 0xA0) || (c == 0xED && p[1] > 0x9F) || (c == 0xF0 && p[1] < 0x90) ||
        (c == 0xF4 && p[1] > 0x8F))
        return 0;
    return n;
}

/* A string; p is at the opening quote. The decoded form is never longer than the source. */
static int string(parser_t *ps, char **out, size_t *out_len)
{
    const char *s = ++ps->p;
    const char *q = s;
    while (q < ps->end && *q != '"')
        q += *q == '\\' && q + 1 < ps->end ? 2 : 1;
    char *buf = arena_alloc(ps->doc, (size_t)(q - s) + 1), *o = buf;
    if (!buf)
        return fail(ps, BT_ERR_NOMEM, "out of memory");
    for (;;) {
        if (ps->p >= ps->end)
            return fail(ps, BT_ERR_FORMAT, "unterminated string");
        unsigned char c = (unsigned char)*ps->p;
        if (c == '"')
            break;
        if (c < 0x20)
            return fail(ps, BT_ERR_FORMAT, "control character in a string");
        if (c == '\\') {
            ps->p++;
            if (ps->p >= ps->end || escape(ps, &o) != BT_OK)
                return fail(ps, BT_ERR_FORMAT, "invalid escape");
            continue;
        }
        size_t n = utf8_len((const unsigned char *)ps->p, (const unsigned char *)ps->end);
        if (n == 0)
            return fail(ps, BT_ERR_FORMAT, "invalid UTF-8 in a string");
        memcpy(o, ps->p, n);
        o += n;
        ps->p += n;
    }
    ps->p++;
    *o = 0;
    *out = buf;
    *out_len = (size_t)(o - buf);
    return BT_OK;
}

static int push_slot(parser_t *ps, bt_json_value_t *v, const char *key, size_t key_len)
{
    if (ps->n_stack == ps->cap_stack) {
        size_t cap = ps->cap_stack ? ps->cap_stack * 2 : 64;
        slot_t *s = bt_realloc(ps->stack, cap * sizeof *s);
        if (!s)
            return fail(ps, BT_ERR_NOMEM, "out of memory");
        ps->stack = s;
        ps->cap_stack = cap;
    }
    ps->stack[ps->n_stack++] = (slot_t){v, key, key_len};
    return BT_OK;
}

static int cmp_slot_key(const void *a, const void *b)
{
    const slot_t *x = a, *y = b;
    size_t n = x->key_len < y->key_len ? x->key_len : y->key_len;
    int c = memcmp(x->key, y->key, n);
    return c ? c : (x->key_len > y->key_len) - (x->key_len < y->key_len);
}

static int check_duplicates(parser_t *ps, const slot_t *slots, size_t n)
{
    if (n < 2)
        return BT_OK;
    slot_t *tmp = bt_malloc(n * sizeof *tmp);
    if (!tmp)
        return fail(ps, BT_ERR_NOMEM, "out of memory");
    memcpy(tmp, slots, n * sizeof *tmp);
    qsort(tmp, n, sizeof *tmp, cmp_slot_key);
    const char *dup = NULL;
    for (size_t i = 1; i < n && !dup; i++)
        if (cmp_slot_key(&tmp[i - 1], &tmp[i]) == 0)
            dup = tmp[i].key;
    bt_free(tmp);
    if (dup)
        return fail(ps, BT_ERR_FORMAT, "duplicate key \"%.40s\"", dup);
    return BT_OK;
}

/* Moves the children pushed since base into the container's own arrays. */
static int close_container(parser_t *ps, bt_json_value_t *v, size_t base)
{
    size_t n = ps->n_stack - base;
    const slot_t *slots = ps->stack + base;
    if (v->type == BT_JSON_OBJECT && check_duplicates(ps, slots, n) != BT_OK)
        return ps->status;
    v->len = n;
    if (n) {
        v->items = arena_alloc(ps->doc, n * sizeof *v->items);
        if (v->type == BT_JSON_OBJECT) {
            v->keys = arena_alloc(ps->doc, n * sizeof *v->keys);
            v->key_lens = arena_alloc(ps->doc, n * sizeof *v->key_lens);
        }
        if (!v->items || (v->type == BT_JSON_OBJECT && (!v->keys || !v->key_lens)))
            return fail(ps, BT_ERR_NOMEM, "out of memory");
        for (size_t i = 0; i < n; i++) {
            v->items[i] = slots[i].v;
            if (v->keys) {
                v->keys[i] = slots[i].key;
                v->key_lens[i] = slots[i].key_len;
            }
        }
    }
    ps->n_stack = base;
    return BT_OK;
}

static int value(parser_t *ps, bt_json_value_t **out);

/* An array or object; p is at '[' or '{'. */
static int container(parser_t *ps, bt_json_value_t **out)
{
    int is_obj = *ps->p == '{';
    char close = is_obj ? '}' : ']';
    if (++ps->depth > ps->max_depth)
        return fail(ps, BT_ERR_RANGE, "nesting deeper than %d", ps->max_depth);
    bt_json_value_t *v = new_value(ps, is_obj ? BT_JSON_OBJECT : BT_JSON_ARRAY);
    if (!v)
        return ps->status;
    size_t base = ps->n_stack;
    ps->p++;
    skip_ws(ps);
    if (ps->p < ps->end && *ps->p == close) {
        ps->p++;
        ps->depth--;
        *out = v;
        return BT_OK;
    }
    for (;;) {
        char *key = NULL;
        size_t key_len = 0;
        bt_json_value_t *child;
        skip_ws(ps);
        if (is_obj) {
            if (ps->p >= ps->end || *ps->p != '"')
                return fail(ps, BT_ERR_FORMAT, "object key (a string) expected");
            if (string(ps, &key, &key_len) != BT_OK)
                return ps->status;
            skip_ws(ps);
            if (ps->p >= ps->end || *ps->p != ':')
                return fail(ps, BT_ERR_FORMAT, "':' expected after an object key");
            ps->p++;
        }
        if (value(ps, &child) != BT_OK || push_slot(ps, child, key, key_len) != BT_OK)
            return ps->status;
        skip_ws(ps);
        if (ps->p < ps->end && *ps->p == ',') {
            ps->p++;
            continue;
        }
        if (ps->p < ps->end && *ps->p == close)
            break;
        return fail(ps, BT_ERR_FORMAT, is_obj ? "',' or '}' expected" : "',' or ']' expected");
    }
    ps->p++;
    ps->depth--;
    if (close_container(ps, v, base) != BT_OK)
        return ps->status;
    *out = v;
    return BT_OK;
}

static int value(parser_t *ps, bt_json_value_t **out)
{
    skip_ws(ps);
    if (ps->p >= ps->end)
        return fail(ps, BT_ERR_FORMAT, "value expected, end of input found");
    switch (*ps->p) {
    case '{':
    case '[': return container(ps, out);
    case 't': return literal(ps, "true", BT_JSON_BOOL, 1, out);
    case 'f': return literal(ps, "false", BT_JSON_BOOL, 0, out);
    case 'n': return literal(ps, "null", BT_JSON_NULL, 0, out);
    case '"': {
        char *s;
        size_t len;
        if (string(ps, &s, &len) != BT_OK || !(*out = new_value(ps, BT_JSON_STRING)))
            return ps->status;
        (*out)->s = s;
        (*out)->len = len;
        return BT_OK;
    }
    default:
        if (*ps->p == '-' || (*ps->p >= '0' && *ps->p <= '9'))
            return number(ps, out);
        return fail(ps, BT_ERR_FORMAT, "unexpected character");
    }
}

static void describe_error(const parser_t *ps, char *err, size_t cap)
{
    if (!err || cap == 0)
        return;
    int line = 1, col = 1;
    const char *at = ps->err_at ? ps->err_at : ps->p;
    for (const char *q = ps->begin; q < at && q < ps->end; q++) {
        if (*q == '\n') {
            line++;
            col = 1;
        } else {
            col++;
        }
    }
    snprintf(err, cap, "line %d column %d: %s", line, col, ps->msg);
}

int bt_json_parse(const char *text, size_t len, const bt_json_limits_t *limits, bt_json_t **out,
                  char *err, size_t err_cap)
{
    bt_json_limits_t lim = limits ? *limits : (bt_json_limits_t){0};
    parser_t ps = {.p = text, .begin = text, .end = text + len};
    ps.max_depth = lim.max_depth > 0 ? lim.max_depth : JSON_DEF_MAX_DEPTH;
    if (ps.max_depth > JSON_CAP_MAX_DEPTH)
        ps.max_depth = JSON_CAP_MAX_DEPTH;
    ps.max_values = lim.max_values ? lim.max_values : JSON_DEF_MAX_VALUES;
    if (err && err_cap)
        err[0] = 0;
    if (!out || (!text && len))
        return BT_ERR_INVAL;
    if (len > (lim.max_bytes ? lim.max_bytes : JSON_DEF_MAX_BYTES)) {
        fail(&ps, BT_ERR_RANGE, "input of %zu bytes is over the limit", len);
        describe_error(&ps, err, err_cap);
        return BT_ERR_RANGE;
    }
    ps.doc = bt_calloc(1, sizeof *ps.doc);
    if (!ps.doc)
        return BT_ERR_NOMEM;
    if (value(&ps, &ps.doc->root) == BT_OK) {
        skip_ws(&ps);
        if (ps.p != ps.end)
            fail(&ps, BT_ERR_FORMAT, "unexpected text after the value");
    }
    bt_free(ps.stack);
    if (ps.status != BT_OK) {
        describe_error(&ps, err, err_cap);
        bt_json_destroy(ps.doc);
        return ps.status;
    }
    *out = ps.doc;
    return BT_OK;
}

int bt_json_parse_file(const char *path, const bt_json_limits_t *limits, bt_json_t **out, char *err,
                       size_t err_cap)
{
    size_t max = limits && limits->max_bytes ? limits->max_bytes : JSON_DEF_MAX_BYTES;
    FILE *f = fopen(path, "rb");
    if (!f) {
        if (err && err_cap)
            snprintf(err, err_cap, "cannot open: %s", strerror(errno));
        return BT_ERR_IO;
    }
    char *buf = bt_malloc(max + 1);
    size_t n = buf ? fread(buf, 1, max + 1, f) : 0;
    int bad = !buf || ferror(f);
    fclose(f);
    int st;
    if (bad) {
        if (err && err_cap)
            snprintf(err, err_cap, buf ? "read error" : "out of memory");
        st = buf ? BT_ERR_IO : BT_ERR_NOMEM;
    } else if (n > max) {
        if (err && err_cap)
            snprintf(err, err_cap, "file larger than %zu bytes", max);
        st = BT_ERR_RANGE;
    } else {
        st = bt_json_parse(buf, n, limits, out, err, err_cap);
    }
    bt_free(buf);
    return st;
}

void bt_json_destroy(bt_json_t *doc)
{
    if (!doc)
        return;
    chunk_t *c = doc->chunks;
    while (c) {
        chunk_t *next = c->next;
        bt_free(c);
        c = next;
    }
    bt_free(doc);
}

const bt_json_value_t *bt_json_root(const bt_json_t *doc)
{
    return doc ? doc->root : NULL;
}

bt_json_type_t bt_json_type(const bt_json_value_t *v)
{
    return v ? v->type : BT_JSON_NULL;
}

const char *bt_json_type_name(bt_json_type_t t)
{
    static const char *const names[] = {"null", "boolean", "number", "string", "array", "object"};
    return (unsigned)t < sizeof names / sizeof names[0] ? names[t] : "unknown";
}

const bt_json_value_t *bt_json_get(const bt_json_value_t *v, const char *key)
{
    if (!v || v->type != BT_JSON_OBJECT || !key)
        return NULL;
    size_t n = strlen(key);
    for (size_t i = 0; i < v->len; i++)
        if (v->key_lens[i] == n && memcmp(v->keys[i], key, n) == 0)
            return v->items[i];
    return NULL;
}

size_t bt_json_len(const bt_json_value_t *v)
{
    return v && (v->type == BT_JSON_ARRAY || v->type == BT_JSON_OBJECT) ? v->len : 0;
}

const bt_json_value_t *bt_json_at(const bt_json_value_t *v, size_t i)
{
    return i < bt_json_len(v) ? v->items[i] : NULL;
}

const char *bt_json_key_at(const bt_json_value_t *v, size_t i)
{
    return v && v->type == BT_JSON_OBJECT && i < v->len ? v->keys[i] : NULL;
}

int bt_json_number(const bt_json_value_t *v, double *out)
{
    if (!v || v->type != BT_JSON_NUMBER)
        return BT_ERR_INVAL;
    *out = v->num;
    return BT_OK;
}

int bt_json_bool(const bt_json_value_t *v, int *out)
{
    if (!v || v->type != BT_JSON_BOOL)
        return BT_ERR_INVAL;
    *out = v->b;
    return BT_OK;
}

int bt_json_string(const bt_json_value_t *v, const char **s, size_t *len)
{
    if (!v || v->type != BT_JSON_STRING)
        return BT_ERR_INVAL;
    *s = v->s;
    if (len)
        *len = v->len;
    return BT_OK;
}

void bt_json_write_strn(FILE *f, const char *s, size_t len)
{
    fputc('"', f);
    const unsigned char *q = (const unsigned char *)s;
    for (size_t i = 0; i < len; i++) {
        if (q[i] == '"' || q[i] == '\\')
            fprintf(f, "\\%c", q[i]);
        else if (q[i] < 0x20)
            fprintf(f, "\\u%04x", q[i]);
        else
            fputc(q[i], f);
    }
    fputc('"', f);
}

void bt_json_write_str(FILE *f, const char *s)
{
    bt_json_write_strn(f, s ? s : "", s ? strlen(s) : 0);
}
