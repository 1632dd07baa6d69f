/* SPDX-License-Identifier: MIT */
/*
 * json.h - a strict JSON (RFC 8259) reader for baton's own files: latency profiles, plans,
 * benchmark configs.
 *
 * Such files come from other programs and from people, so input is hostile: the parser takes
 * a length (no NUL needed), bounds the input size, the nesting depth and the number of values,
 * refuses everything RFC 8259 does not allow (comments, trailing commas, leading zeros, NaN,
 * control characters in strings, invalid UTF-8, lone surrogates, duplicate object keys,
 * anything after the top-level value), and reports the first error with its line and column.
 * A parsed document is immutable: every value, string and array lives in the document and is
 * released by one bt_json_destroy. Accessors are NULL-safe, so a lookup chain on a document of
 * the wrong shape yields NULL rather than a crash; callers check the types they need.
 */
#ifndef BATON_JSON_H
#define BATON_JSON_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

typedef enum {
    BT_JSON_NULL = 0,
    BT_JSON_BOOL,
    BT_JSON_NUMBER,
    BT_JSON_STRING,
    BT_JSON_ARRAY,
    BT_JSON_OBJECT,
} bt_json_type_t;

typedef struct bt_json_value bt_json_value_t;
typedef struct bt_json bt_json_t;

typedef struct {
    size_t max_bytes;  /* input size limit; 0: 16 MiB */
    int max_depth;     /* nesting of arrays and objects; 0: 64 */
    size_t max_values; /* values in the document; 0: 1,000,000 */
} bt_json_limits_t;

/* Parses len bytes of text. limits may be NULL (defaults). On error returns BT_ERR_FORMAT (bad
 * syntax), BT_ERR_RANGE (a limit exceeded) or BT_ERR_NOMEM, and writes "line L column C: what"
 * into err (cap bytes; err may be NULL). Nothing is logged: the caller knows what the text is.
 * The text is copied where needed and may be freed afterwards. */
int bt_json_parse(const char *text, size_t len, const bt_json_limits_t *limits, bt_json_t **out,
                  char *err, size_t err_cap);
/* Reads a whole file (at most limits->max_bytes) and parses it; BT_ERR_IO when it cannot be
 * read. err says which. */
int bt_json_parse_file(const char *path, const bt_json_limits_t *limits, bt_json_t **out, char *err,
                       size_t err_cap);
/* NULL is allowed. */
void bt_json_destroy(bt_json_t *doc);

/* The top-level value (never NULL for a parsed document). */
const bt_json_value_t *bt_json_root(const bt_json_t *doc);

/* Type of v; BT_JSON_NULL for a NULL v. */
bt_json_type_t bt_json_type(const bt_json_value_t *v);
const char *bt_json_type_name(bt_json_type_t t);
/* The member named key of an object; NULL when v is not an object or has no such member. */
const bt_json_value_t *bt_json_get(const bt_json_value_t *v, const char *key);
/* Elements of an array or members of an object (0 for other types). */
size_t bt_json_len(const bt_json_value_t *v);
/* Element i of an array or the value of member i of an object (NULL when out of range). */
const bt_json_value_t *bt_json_at(const bt_json_value_t *v, size_t i);
/* Name of member i of an object (NUL-terminated; NULL when out of range or not an object). */
const char *bt_json_key_at(const bt_json_value_t *v, size_t i);

/* Scalars: BT_OK, or BT_ERR_INVAL when v has another type. Strings are NUL-terminated, may
 * contain NUL bytes (their length is in *len, which may be NULL) and live in the document. */
int bt_json_number(const bt_json_value_t *v, double *out);
int bt_json_bool(const bt_json_value_t *v, int *out);
int bt_json_string(const bt_json_value_t *v, const char **s, size_t *len);

/* Writes s (NULL: "") to f as a JSON string: quotes, backslashes and control characters
 * escaped, other bytes as they are (UTF-8 passes through). */
void bt_json_write_str(FILE *f, const char *s);
/* The same for the len bytes at s, which may include NUL bytes (written as \u0000). */
void bt_json_write_strn(FILE *f, const char *s, size_t len);

#endif
