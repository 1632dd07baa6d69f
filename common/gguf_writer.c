/* SPDX-License-Identifier: MIT */
/*
 * gguf_writer.c - writes GGUF v3 files that llama.cpp loads (32-byte alignment, little-endian).
 *
 * The one thing to know: each metadata value is encoded into its final on-disk bytes the moment
 * it is set, so writing is a plain concatenation, and tensor data is either borrowed or produced
 * row range by row range by a fill callback at write time. A multi-gigabyte model therefore
 * passes through a few megabytes of memory. The layout follows llama.cpp's gguf writer: header,
 * metadata, tensor infos, padding to the alignment, then each tensor's data padded likewise.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "../kernels/kernels.h"
#include "alloc.h"
#include "gguf.h"
#include "log.h"
#include "status.h"

#define WRITER_ALIGNMENT 32
#define WRITER_MAX_NAME 64            /* llama.cpp's GGML_MAX_NAME, terminator included */
#define WRITER_CHUNK_BYTES (4u << 20) /* data produced per fill call, at least one row */

typedef struct {
    char *key;
    bt_gguf_type_t type;
    uint8_t *val; /* the value exactly as it is stored after the type field */
    size_t val_len;
} wkv_t;

typedef struct {
    char *name;
    int type;
    int n_dims;
    int64_t ne[4];
    const void *data; /* borrowed, or NULL when fill produces the data */
    bt_gguf_fill_fn fill;
    void *fill_ctx;
    size_t row_bytes;
    int64_t n_rows;
    size_t size_bytes;
    uint64_t offset; /* in the data section, assigned at write time */
} wtensor_t;

struct bt_gguf_writer {
    wkv_t *kvs;
    size_t n_kv, cap_kv;
    wtensor_t *tensors;
    size_t n_tensors, cap_tensors;
};

/* A growable byte buffer; the first failed growth is sticky, so callers check once at the end. */
typedef struct {
    uint8_t *p;
    size_t n, cap;
    int failed;
} buf_t;

static void buf_put(buf_t *b, const void *src, size_t n)
{
    if (b->failed)
        return;
    if (n > b->cap - b->n) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap - b->n < n)
            cap *= 2;
        uint8_t *p = bt_realloc(b->p, cap);
        if (!p) {
            b->failed = 1;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, src, n);
    b->n += n;
}

static void buf_u32(buf_t *b, uint32_t v)
{
    buf_put(b, &v, 4);
}

static void buf_u64(buf_t *b, uint64_t v)
{
    buf_put(b, &v, 8);
}

static void buf_str(buf_t *b, const char *s, size_t len)
{
    buf_u64(b, len);
    buf_put(b, s, len);
}

int bt_gguf_writer_create(bt_gguf_writer_t **out)
{
    bt_gguf_writer_t *w = bt_calloc(1, sizeof *w);
    if (!w)
        return BT_ERR_NOMEM;
    *out = w;
    return BT_OK;
}

void bt_gguf_writer_destroy(bt_gguf_writer_t *w)
{
    if (!w)
        return;
    for (size_t i = 0; i < w->n_kv; i++) {
        bt_free(w->kvs[i].key);
        bt_free(w->kvs[i].val);
    }
    for (size_t i = 0; i < w->n_tensors; i++)
        bt_free(w->tensors[i].name);
    bt_free(w->kvs);
    bt_free(w->tensors);
    bt_free(w);
}

/* Grows an array of elements of size elem by doubling; *cap and *arr change only on success. */
static int grow(void **arr, size_t *cap, size_t n, size_t elem)
{
    if (n < *cap)
        return BT_OK;
    size_t new_cap = *cap ? *cap * 2 : 16;
    void *p = bt_realloc(*arr, new_cap * elem);
    if (!p)
        return BT_ERR_NOMEM;
    *arr = p;
    *cap = new_cap;
    return BT_OK;
}

/* Takes the encoded value b (freed on every path); replaces the value of an existing key. */
static int set_kv(bt_gguf_writer_t *w, const char *key, bt_gguf_type_t type, buf_t *b)
{
    if (b->failed) {
        bt_free(b->p);
        return BT_ERR_NOMEM;
    }
    for (size_t i = 0; i < w->n_kv; i++) {
        if (strcmp(w->kvs[i].key, key) == 0) {
            bt_free(w->kvs[i].val);
            w->kvs[i] = (wkv_t){w->kvs[i].key, type, b->p, b->n};
            return BT_OK;
        }
    }
    char *k = bt_strdup(key);
    if (!k || grow((void **)&w->kvs, &w->cap_kv, w->n_kv, sizeof *w->kvs) != BT_OK) {
        bt_free(k);
        bt_free(b->p);
        return BT_ERR_NOMEM;
    }
    w->kvs[w->n_kv++] = (wkv_t){k, type, b->p, b->n};
    return BT_OK;
}

int bt_gguf_writer_set_scalar(bt_gguf_writer_t *w, const char *key, bt_gguf_type_t type,
                              const void *v)
{
    size_t sz = bt_gguf_type_size(type);
    if (!key || !v || sz == 0)
        return BT_ERR_INVAL;
    buf_t b = {0};
    buf_put(&b, v, sz);
    return set_kv(w, key, type, &b);
}

int bt_gguf_writer_set_u32(bt_gguf_writer_t *w, const char *key, uint32_t v)
{
    return bt_gguf_writer_set_scalar(w, key, BT_GGUF_UINT32, &v);
}

int bt_gguf_writer_set_i32(bt_gguf_writer_t *w, const char *key, int32_t v)
{
    return bt_gguf_writer_set_scalar(w, key, BT_GGUF_INT32, &v);
}

int bt_gguf_writer_set_f32(bt_gguf_writer_t *w, const char *key, float v)
{
    return bt_gguf_writer_set_scalar(w, key, BT_GGUF_FLOAT32, &v);
}

int bt_gguf_writer_set_bool(bt_gguf_writer_t *w, const char *key, int v)
{
    uint8_t b = v != 0;
    return bt_gguf_writer_set_scalar(w, key, BT_GGUF_BOOL, &b);
}

int bt_gguf_writer_set_str(bt_gguf_writer_t *w, const char *key, const char *v)
{
    if (!key || !v)
        return BT_ERR_INVAL;
    buf_t b = {0};
    buf_str(&b, v, strlen(v));
    return set_kv(w, key, BT_GGUF_STRING, &b);
}

int bt_gguf_writer_set_arr_str(bt_gguf_writer_t *w, const char *key, const char *const *v,
                               uint64_t n)
{
    if (!key || (!v && n > 0))
        return BT_ERR_INVAL;
    buf_t b = {0};
    buf_u32(&b, BT_GGUF_STRING);
    buf_u64(&b, n);
    for (uint64_t i = 0; i < n; i++)
        buf_str(&b, v[i], strlen(v[i]));
    return set_kv(w, key, BT_GGUF_ARRAY, &b);
}

int bt_gguf_writer_set_arr(bt_gguf_writer_t *w, const char *key, bt_gguf_type_t elem_type,
                           const void *v, uint64_t n)
{
    size_t es = bt_gguf_type_size(elem_type);
    if (!key || es == 0 || (!v && n > 0) || n > SIZE_MAX / es)
        return BT_ERR_INVAL;
    buf_t b = {0};
    buf_u32(&b, elem_type);
    buf_u64(&b, n);
    if (n > 0)
        buf_put(&b, v, (size_t)n * es);
    return set_kv(w, key, BT_GGUF_ARRAY, &b);
}

/* Validates a tensor's name, type and shape and fills everything but its data source. */
static int tensor_init(const bt_gguf_writer_t *w, wtensor_t *t, const char *name, int type,
                       int n_dims, const int64_t *ne)
{
    if (!name || strlen(name) >= WRITER_MAX_NAME || n_dims < 1 || n_dims > 4 || !ne) {
        bt_error("gguf writer: tensor '%s': bad name or dimension count %d", name ? name : "(null)",
                 n_dims);
        return BT_ERR_INVAL;
    }
    for (size_t i = 0; i < w->n_tensors; i++) {
        if (strcmp(w->tensors[i].name, name) == 0) {
            bt_error("gguf writer: duplicate tensor '%s'", name);
            return BT_ERR_INVAL;
        }
    }
    *t = (wtensor_t){.type = type, .n_dims = n_dims, .ne = {1, 1, 1, 1}, .n_rows = 1};
    for (int d = 0; d < n_dims; d++) {
        if (ne[d] <= 0 || (d > 0 && ne[d] > INT64_MAX / t->n_rows)) {
            bt_error("gguf writer: tensor '%s': bad dimension %d (%lld)", name, d,
                     (long long)ne[d]);
            return BT_ERR_INVAL;
        }
        t->ne[d] = ne[d];
        if (d > 0)
            t->n_rows *= ne[d];
    }
    t->row_bytes = bt_type_row_bytes(type, ne[0]);
    if (t->row_bytes == 0 || (uint64_t)t->n_rows > SIZE_MAX / t->row_bytes) {
        bt_error("gguf writer: tensor '%s': type %d cannot hold rows of %lld elements", name, type,
                 (long long)ne[0]);
        return BT_ERR_INVAL;
    }
    t->size_bytes = t->row_bytes * (size_t)t->n_rows;
    return BT_OK;
}

static int add_tensor(bt_gguf_writer_t *w, wtensor_t *t, const char *name)
{
    t->name = bt_strdup(name);
    if (!t->name ||
        grow((void **)&w->tensors, &w->cap_tensors, w->n_tensors, sizeof *w->tensors) != BT_OK) {
        bt_free(t->name);
        return BT_ERR_NOMEM;
    }
    w->tensors[w->n_tensors++] = *t;
    return BT_OK;
}

int bt_gguf_writer_add_tensor(bt_gguf_writer_t *w, const char *name, int type, int n_dims,
                              const int64_t *ne, const void *data)
{
    wtensor_t t;
    int st = tensor_init(w, &t, name, type, n_dims, ne);
    if (st != BT_OK)
        return st;
    if (!data)
        return BT_ERR_INVAL;
    t.data = data;
    return add_tensor(w, &t, name);
}

int bt_gguf_writer_add_tensor_fn(bt_gguf_writer_t *w, const char *name, int type, int n_dims,
                                 const int64_t *ne, bt_gguf_fill_fn fill, void *ctx)
{
    wtensor_t t;
    int st = tensor_init(w, &t, name, type, n_dims, ne);
    if (st != BT_OK)
        return st;
    if (!fill)
        return BT_ERR_INVAL;
    t.fill = fill;
    t.fill_ctx = ctx;
    return add_tensor(w, &t, name);
}

static size_t pad_to(size_t n)
{
    return (WRITER_ALIGNMENT - n % WRITER_ALIGNMENT) % WRITER_ALIGNMENT;
}

/* Everything before the data section, padded; assigns tensor offsets. */
static int encode_header(bt_gguf_writer_t *w, buf_t *b)
{
    static const uint8_t zeros[WRITER_ALIGNMENT];
    buf_put(b, "GGUF", 4);
    buf_u32(b, 3);
    buf_u64(b, w->n_tensors);
    buf_u64(b, w->n_kv);
    for (size_t i = 0; i < w->n_kv; i++) {
        buf_str(b, w->kvs[i].key, strlen(w->kvs[i].key));
        buf_u32(b, w->kvs[i].type);
        buf_put(b, w->kvs[i].val, w->kvs[i].val_len);
    }
    uint64_t offset = 0;
    for (size_t i = 0; i < w->n_tensors; i++) {
        wtensor_t *t = &w->tensors[i];
        buf_str(b, t->name, strlen(t->name));
        buf_u32(b, (uint32_t)t->n_dims);
        for (int d = 0; d < t->n_dims; d++)
            buf_u64(b, (uint64_t)t->ne[d]);
        buf_u32(b, (uint32_t)t->type);
        buf_u64(b, offset);
        t->offset = offset;
        offset += t->size_bytes + pad_to(t->size_bytes);
    }
    buf_put(b, zeros, pad_to(b->n));
    return b->failed ? BT_ERR_NOMEM : BT_OK;
}

static int write_bytes(FILE *f, const char *path, const void *p, size_t n)
{
    if (n > 0 && fwrite(p, 1, n, f) != n) {
        bt_error("gguf writer %s: write failed: %s", path, strerror(errno));
        return BT_ERR_IO;
    }
    return BT_OK;
}

/* Produces a streamed tensor chunk by chunk through the shared scratch buffer. */
static int write_filled(FILE *f, const char *path, const wtensor_t *t, uint8_t *scratch,
                        size_t scratch_bytes)
{
    int64_t chunk_rows = (int64_t)(scratch_bytes / t->row_bytes);
    for (int64_t r = 0; r < t->n_rows; r += chunk_rows) {
        int64_t n = t->n_rows - r < chunk_rows ? t->n_rows - r : chunk_rows;
        int st = t->fill(t->fill_ctx, r, n, scratch);
        if (st != BT_OK) {
            bt_error("gguf writer %s: producing tensor '%s' failed: %s", path, t->name,
                     bt_status_str(st));
            return st;
        }
        if ((st = write_bytes(f, path, scratch, (size_t)n * t->row_bytes)) != BT_OK)
            return st;
    }
    return BT_OK;
}

static int write_data(bt_gguf_writer_t *w, FILE *f, const char *path)
{
    static const uint8_t zeros[WRITER_ALIGNMENT];
    size_t scratch_bytes = 0;
    for (size_t i = 0; i < w->n_tensors; i++) {
        const wtensor_t *t = &w->tensors[i];
        size_t rows = WRITER_CHUNK_BYTES / t->row_bytes ? WRITER_CHUNK_BYTES / t->row_bytes : 1;
        size_t bytes = rows * t->row_bytes < t->size_bytes ? rows * t->row_bytes : t->size_bytes;
        if (t->fill && bytes > scratch_bytes)
            scratch_bytes = bytes;
    }
    uint8_t *scratch = NULL;
    if (scratch_bytes && !(scratch = bt_malloc(scratch_bytes)))
        return BT_ERR_NOMEM;
    int st = BT_OK;
    for (size_t i = 0; i < w->n_tensors && st == BT_OK; i++) {
        const wtensor_t *t = &w->tensors[i];
        if (t->fill)
            st = write_filled(f, path, t, scratch, scratch_bytes);
        else
            st = write_bytes(f, path, t->data, t->size_bytes);
        if (st == BT_OK)
            st = write_bytes(f, path, zeros, pad_to(t->size_bytes));
    }
    bt_free(scratch);
    return st;
}

int bt_gguf_writer_write(bt_gguf_writer_t *w, const char *path)
{
    buf_t hdr = {0};
    char *tmp = bt_malloc(strlen(path) + 5);
    int st = tmp ? encode_header(w, &hdr) : BT_ERR_NOMEM;
    if (st != BT_OK)
        goto err_free;
    sprintf(tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "wb");
    if (!f) {
        bt_error("gguf writer %s: cannot create: %s", tmp, strerror(errno));
        st = BT_ERR_IO;
        goto err_free;
    }
    st = write_bytes(f, tmp, hdr.p, hdr.n);
    if (st == BT_OK)
        st = write_data(w, f, tmp);
    if (fclose(f) != 0 && st == BT_OK) {
        bt_error("gguf writer %s: close failed: %s", tmp, strerror(errno));
        st = BT_ERR_IO;
    }
    if (st == BT_OK && rename(tmp, path) != 0) {
        bt_error("gguf writer: cannot rename %s to %s: %s", tmp, path, strerror(errno));
        st = BT_ERR_IO;
    }
    if (st != BT_OK)
        remove(tmp);
err_free:
    bt_free(hdr.p);
    bt_free(tmp);
    return st;
}
