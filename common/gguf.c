/* SPDX-License-Identifier: MIT */
/*
 * gguf.c - the GGUF v2/v3 reader: maps a file and validates all of it before handing it out.
 *
 * The one thing to know: parsing happens once, in bt_gguf_open, through a bounds-checked cursor
 * over the whole file. Every length, count, type and offset is checked there against the bytes
 * that remain, so the accessors below never need to check anything but their own arguments.
 * Keys and tensor names go into small hash indexes (duplicates are refused), and every string
 * array gets an offset table so that element i of a 128k-entry vocabulary is found in O(1).
 */
#include "gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../kernels/kernels.h"
#include "alloc.h"
#include "hash.h"
#include "log.h"
#include "status.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the GGUF reader reads little-endian fields in place and needs a little-endian host"
#endif

#define GGUF_MAGIC "GGUF"
#define GGUF_DEFAULT_ALIGNMENT 32
#define GGUF_MAX_DIMS 4
/* Smallest possible encodings, used to cap counts against the file size before allocating. */
#define GGUF_MIN_KV_BYTES 13 /* key length (8), type (4), a one-byte value */
#define GGUF_MIN_TENSOR_BYTES                                                                      \
    32 /* name length (8), n_dims (4), one dim (8), type (4), offset (8) */

typedef struct {
    bt_gguf_kv_t pub;
    uint64_t *str_off; /* string arrays: file offset of element i's length field */
} gguf_kv_t;

typedef struct {
    bt_gguf_tensor_t pub;
    uint64_t offset; /* from the start of the data section */
} gguf_tensor_t;

/* Open addressing over indices + 1 (0 = empty slot); capacity is a power of two. */
typedef struct {
    uint32_t *slots;
    size_t mask;
} name_index_t;

struct bt_gguf {
    const uint8_t *base;
    size_t size;
    int mapped; /* 1: base is our mmap of a file */
    char *name; /* file path for messages */
    uint32_t version;
    size_t alignment;
    size_t data_start;
    int64_t n_kv;
    gguf_kv_t *kvs;
    name_index_t kv_index;
    int64_t n_tensors;
    gguf_tensor_t *tensors;
    name_index_t tensor_index;
};

/* A bounds-checked read position; every failed read logs what was being read and where. */
typedef struct {
    bt_gguf_t *g; /* being filled in */
    size_t pos;
} cursor_t;

static int cur_take(cursor_t *c, uint64_t n, const char *what, const uint8_t **p)
{
    size_t left = c->g->size - c->pos;
    if (n > left) {
        bt_error("gguf %s: truncated or corrupt: %s at offset %zu needs %llu bytes, %zu left",
                 c->g->name, what, c->pos, (unsigned long long)n, left);
        return BT_ERR_FORMAT;
    }
    if (p)
        *p = c->g->base + c->pos;
    c->pos += (size_t)n;
    return BT_OK;
}

static int cur_u32(cursor_t *c, const char *what, uint32_t *v)
{
    const uint8_t *p = NULL;
    int st = cur_take(c, 4, what, &p);
    if (st == BT_OK)
        memcpy(v, p, 4);
    return st;
}

static int cur_u64(cursor_t *c, const char *what, uint64_t *v)
{
    const uint8_t *p = NULL;
    int st = cur_take(c, 8, what, &p);
    if (st == BT_OK)
        memcpy(v, p, 8);
    return st;
}

/* A GGUF string: u64 length then the bytes (no terminator). */
static int cur_str(cursor_t *c, const char *what, const char **s, size_t *len)
{
    uint64_t n;
    const uint8_t *p = NULL;
    int st = cur_u64(c, what, &n);
    if (st == BT_OK)
        st = cur_take(c, n, what, &p);
    if (st == BT_OK) {
        *s = (const char *)p;
        *len = (size_t)n;
    }
    return st;
}

size_t bt_gguf_type_size(uint32_t type)
{
    switch (type) {
    case BT_GGUF_UINT8:
    case BT_GGUF_INT8:
    case BT_GGUF_BOOL: return 1;
    case BT_GGUF_UINT16:
    case BT_GGUF_INT16: return 2;
    case BT_GGUF_UINT32:
    case BT_GGUF_INT32:
    case BT_GGUF_FLOAT32: return 4;
    case BT_GGUF_UINT64:
    case BT_GGUF_INT64:
    case BT_GGUF_FLOAT64: return 8;
    }
    return 0;
}

static int index_init(name_index_t *ix, int64_t n)
{
    size_t cap = 16;
    while (cap < (size_t)n * 2)
        cap *= 2;
    ix->slots = bt_calloc(cap, sizeof *ix->slots);
    ix->mask = cap - 1;
    return ix->slots ? BT_OK : BT_ERR_NOMEM;
}

static void name_at(const bt_gguf_t *g, const name_index_t *ix, uint32_t i, const char **s,
                    size_t *len)
{
    if (ix == &g->kv_index) {
        *s = g->kvs[i].pub.key;
        *len = g->kvs[i].pub.key_len;
    } else {
        *s = g->tensors[i].pub.name;
        *len = g->tensors[i].pub.name_len;
    }
}

/* Returns the index of the name, or -1; with insert >= 0, adds it there if it is absent. */
static int64_t index_find(const bt_gguf_t *g, const name_index_t *ix, const char *s, size_t len,
                          int64_t insert)
{
    for (size_t h = bt_fnv1a(s, len) & ix->mask;; h = (h + 1) & ix->mask) {
        uint32_t slot = ix->slots[h];
        if (slot == 0) {
            if (insert >= 0)
                ix->slots[h] = (uint32_t)insert + 1;
            return -1;
        }
        const char *t;
        size_t tlen;
        name_at(g, ix, slot - 1, &t, &tlen);
        if (tlen == len && memcmp(t, s, len) == 0)
            return slot - 1;
    }
}

/* Records where each element of a string array starts, validating every length on the way. */
static int parse_str_array(cursor_t *c, gguf_kv_t *kv)
{
    uint64_t n = kv->pub.n;
    if (n > (c->g->size - c->pos) / 8) {
        bt_error("gguf %s: string array of %llu elements at offset %zu exceeds the file",
                 c->g->name, (unsigned long long)n, c->pos);
        return BT_ERR_FORMAT;
    }
    kv->str_off = bt_malloc((size_t)(n ? n : 1) * sizeof *kv->str_off);
    if (!kv->str_off)
        return BT_ERR_NOMEM;
    for (uint64_t i = 0; i < n; i++) {
        const char *s;
        size_t len;
        kv->str_off[i] = c->pos;
        int st = cur_str(c, "string array element", &s, &len);
        if (st != BT_OK)
            return st;
    }
    return BT_OK;
}

static int parse_array(cursor_t *c, gguf_kv_t *kv)
{
    uint32_t et;
    int st = cur_u32(c, "array element type", &et);
    if (st == BT_OK)
        st = cur_u64(c, "array length", &kv->pub.n);
    if (st != BT_OK)
        return st;
    kv->pub.elem_type = (bt_gguf_type_t)et;
    if (et == BT_GGUF_ARRAY) {
        bt_error("gguf %s: nested array at offset %zu is not supported", c->g->name, c->pos);
        return BT_ERR_UNSUPPORTED;
    }
    if (et == BT_GGUF_STRING)
        return parse_str_array(c, kv);
    size_t es = bt_gguf_type_size(et);
    if (es == 0) {
        bt_error("gguf %s: unknown array element type %u at offset %zu", c->g->name, et,
                 c->pos - 12);
        return BT_ERR_FORMAT;
    }
    if (kv->pub.n > (c->g->size - c->pos) / es) {
        bt_error("gguf %s: array of %llu elements at offset %zu exceeds the file", c->g->name,
                 (unsigned long long)kv->pub.n, c->pos);
        return BT_ERR_FORMAT;
    }
    const uint8_t *p = NULL;
    st = cur_take(c, kv->pub.n * es, "array data", &p);
    kv->pub.data = p;
    return st;
}

static int parse_kv(cursor_t *c, int64_t i)
{
    bt_gguf_t *g = c->g;
    gguf_kv_t *kv = &g->kvs[i];
    size_t at = c->pos;
    uint32_t type;
    int st = cur_str(c, "key", &kv->pub.key, &kv->pub.key_len);
    if (st == BT_OK)
        st = cur_u32(c, "value type", &type);
    if (st != BT_OK)
        return st;
    if (index_find(g, &g->kv_index, kv->pub.key, kv->pub.key_len, i) >= 0) {
        bt_error("gguf %s: duplicate key '%.*s' at offset %zu", g->name, (int)kv->pub.key_len,
                 kv->pub.key, at);
        return BT_ERR_FORMAT;
    }
    kv->pub.type = (bt_gguf_type_t)type;
    kv->pub.n = 1;
    if (type == BT_GGUF_ARRAY)
        return parse_array(c, kv);
    if (type == BT_GGUF_STRING) {
        size_t len;
        st = cur_str(c, "string value", (const char **)&kv->pub.data, &len);
        kv->pub.n = len;
        return st;
    }
    size_t sz = bt_gguf_type_size(type);
    if (sz == 0) {
        bt_error("gguf %s: key '%.*s' has unknown value type %u (offset %zu)", g->name,
                 (int)kv->pub.key_len, kv->pub.key, type, c->pos - 4);
        return BT_ERR_FORMAT;
    }
    const uint8_t *p = NULL;
    st = cur_take(c, sz, "scalar value", &p);
    kv->pub.data = p;
    return st;
}

/* Checks a tensor's dims and computes its byte size (0 for types baton does not know). */
static int tensor_size(const bt_gguf_t *g, gguf_tensor_t *t, size_t at)
{
    bt_gguf_tensor_t *p = &t->pub;
    int64_t n_elems = 1, n_rows = 1;
    for (int d = 0; d < GGUF_MAX_DIMS; d++) {
        if (p->ne[d] <= 0 || p->ne[d] > INT64_MAX / n_elems) {
            bt_error("gguf %s: tensor '%.*s' (info at offset %zu): dimension %d is %lld, or the "
                     "element count overflows",
                     g->name, (int)p->name_len, p->name, at, d, (long long)p->ne[d]);
            return BT_ERR_FORMAT;
        }
        n_elems *= p->ne[d];
        if (d > 0)
            n_rows *= p->ne[d];
    }
    p->size_bytes = 0;
    if (!bt_type_name(p->type))
        return BT_OK;
    size_t row = bt_type_row_bytes(p->type, p->ne[0]);
    if (row == 0) {
        bt_error("gguf %s: tensor '%.*s' (info at offset %zu): %lld columns are not whole %s "
                 "blocks",
                 g->name, (int)p->name_len, p->name, at, (long long)p->ne[0],
                 bt_type_name(p->type));
        return BT_ERR_FORMAT;
    }
    if ((uint64_t)n_rows > SIZE_MAX / row) {
        bt_error("gguf %s: tensor '%.*s' (info at offset %zu): its byte size overflows", g->name,
                 (int)p->name_len, p->name, at);
        return BT_ERR_FORMAT;
    }
    p->size_bytes = row * (size_t)n_rows;
    return BT_OK;
}

static int parse_tensor_info(cursor_t *c, int64_t i)
{
    bt_gguf_t *g = c->g;
    gguf_tensor_t *t = &g->tensors[i];
    size_t at = c->pos;
    uint32_t n_dims, type;
    int st = cur_str(c, "tensor name", &t->pub.name, &t->pub.name_len);
    if (st == BT_OK)
        st = cur_u32(c, "tensor n_dims", &n_dims);
    if (st != BT_OK)
        return st;
    if (n_dims < 1 || n_dims > GGUF_MAX_DIMS) {
        bt_error("gguf %s: tensor '%.*s' (offset %zu) has %u dimensions, must be 1..4", g->name,
                 (int)t->pub.name_len, t->pub.name, at, n_dims);
        return BT_ERR_FORMAT;
    }
    t->pub.n_dims = (int)n_dims;
    for (int d = 0; d < GGUF_MAX_DIMS; d++) {
        uint64_t ne = 1;
        if ((uint32_t)d < n_dims && (st = cur_u64(c, "tensor dimension", &ne)) != BT_OK)
            return st;
        t->pub.ne[d] = ne > INT64_MAX ? -1 : (int64_t)ne;
    }
    if ((st = cur_u32(c, "tensor type", &type)) != BT_OK ||
        (st = cur_u64(c, "tensor offset", &t->offset)) != BT_OK)
        return st;
    t->pub.type = type > INT32_MAX ? -1 : (int)type;
    if (index_find(g, &g->tensor_index, t->pub.name, t->pub.name_len, i) >= 0) {
        bt_error("gguf %s: duplicate tensor name '%.*s' at offset %zu", g->name,
                 (int)t->pub.name_len, t->pub.name, at);
        return BT_ERR_FORMAT;
    }
    return tensor_size(g, t, at);
}

static int read_alignment(bt_gguf_t *g)
{
    uint32_t a = GGUF_DEFAULT_ALIGNMENT;
    int st = bt_gguf_get_u32(g, "general.alignment", &a);
    if (st != BT_OK && st != BT_ERR_NOT_FOUND) {
        bt_error("gguf %s: general.alignment is not an unsigned 32-bit integer", g->name);
        return BT_ERR_FORMAT;
    }
    if (a == 0 || (a & (a - 1)) != 0) {
        bt_error("gguf %s: general.alignment %u is not a power of two", g->name, a);
        return BT_ERR_FORMAT;
    }
    g->alignment = a;
    return BT_OK;
}

/* Places each tensor in the data section: aligned, and wholly inside the file. */
static int place_tensors(bt_gguf_t *g, size_t header_end)
{
    if (g->n_tensors == 0)
        return BT_OK;
    size_t start = (header_end + g->alignment - 1) & ~(g->alignment - 1);
    if (start < header_end || start > g->size) {
        bt_error("gguf %s: truncated: data section would start at offset %zu, file has %zu "
                 "bytes",
                 g->name, start, g->size);
        return BT_ERR_FORMAT;
    }
    g->data_start = start;
    size_t room = g->size - start;
    for (int64_t i = 0; i < g->n_tensors; i++) {
        gguf_tensor_t *t = &g->tensors[i];
        /* A tensor of an unknown type has an unknown size; it must still start in the file. */
        uint64_t need = t->pub.size_bytes ? t->pub.size_bytes : 1;
        if (t->offset % g->alignment != 0) {
            bt_error("gguf %s: tensor '%.*s' data offset %llu is not a multiple of the "
                     "alignment %zu",
                     g->name, (int)t->pub.name_len, t->pub.name, (unsigned long long)t->offset,
                     g->alignment);
            return BT_ERR_FORMAT;
        }
        if (t->offset > room || need > room - t->offset) {
            bt_error("gguf %s: tensor '%.*s' data (%llu bytes at data offset %llu) lies outside "
                     "the data section (%zu bytes at file offset %zu): truncated or corrupt",
                     g->name, (int)t->pub.name_len, t->pub.name, (unsigned long long)need,
                     (unsigned long long)t->offset, room, start);
            return BT_ERR_FORMAT;
        }
        t->pub.data = g->base + start + t->offset;
    }
    return BT_OK;
}

static int parse_header(bt_gguf_t *g, cursor_t *c, uint64_t *n_kv, uint64_t *n_tensors)
{
    const uint8_t *magic;
    int st = cur_take(c, 4, "magic", &magic);
    if (st != BT_OK)
        return st;
    if (memcmp(magic, GGUF_MAGIC, 4) != 0) {
        bt_error("gguf %s: bad magic at offset 0 (not a GGUF file)", g->name);
        return BT_ERR_FORMAT;
    }
    if ((st = cur_u32(c, "version", &g->version)) != BT_OK)
        return st;
    if (g->version == 1) {
        bt_error("gguf %s: GGUF v1 is not supported (convert it to v3)", g->name);
        return BT_ERR_UNSUPPORTED;
    }
    if (g->version < 2 || g->version > 3) {
        bt_error("gguf %s: GGUF version %u at offset 4 is not supported%s", g->name, g->version,
                 (g->version & 0xffff) == 0 ? " (a big-endian file?)" : "");
        return BT_ERR_UNSUPPORTED;
    }
    if ((st = cur_u64(c, "tensor count", n_tensors)) != BT_OK ||
        (st = cur_u64(c, "metadata count", n_kv)) != BT_OK)
        return st;
    size_t left = g->size - c->pos;
    /* Indexes hold 32-bit entries; real files have hundreds of keys and tensors. */
    if (*n_kv > INT32_MAX || *n_tensors > INT32_MAX || *n_kv > left / GGUF_MIN_KV_BYTES ||
        *n_tensors > left / GGUF_MIN_TENSOR_BYTES ||
        *n_kv * GGUF_MIN_KV_BYTES + *n_tensors * GGUF_MIN_TENSOR_BYTES > left) {
        bt_error("gguf %s: %llu tensors and %llu keys (offset 8) cannot fit in %zu bytes", g->name,
                 (unsigned long long)*n_tensors, (unsigned long long)*n_kv, g->size);
        return BT_ERR_FORMAT;
    }
    return BT_OK;
}

static int parse(bt_gguf_t *g)
{
    cursor_t c = {g, 0};
    uint64_t n_kv, n_tensors;
    int st = parse_header(g, &c, &n_kv, &n_tensors);
    if (st != BT_OK)
        return st;
    g->kvs = bt_calloc(n_kv ? n_kv : 1, sizeof *g->kvs);
    g->tensors = bt_calloc(n_tensors ? n_tensors : 1, sizeof *g->tensors);
    if (!g->kvs || !g->tensors)
        return BT_ERR_NOMEM;
    if ((st = index_init(&g->kv_index, (int64_t)n_kv)) != BT_OK ||
        (st = index_init(&g->tensor_index, (int64_t)n_tensors)) != BT_OK)
        return st;
    /* Counts grow as entries are parsed (a failed entry included, as it may own its string
     * offsets), so that close frees exactly what was made. */
    while (g->n_kv < (int64_t)n_kv) {
        st = parse_kv(&c, g->n_kv++);
        if (st != BT_OK)
            return st;
    }
    if ((st = read_alignment(g)) != BT_OK)
        return st;
    while (g->n_tensors < (int64_t)n_tensors) {
        st = parse_tensor_info(&c, g->n_tensors++);
        if (st != BT_OK)
            return st;
    }
    return place_tensors(g, c.pos);
}

static int open_common(bt_gguf_t *g, bt_gguf_t **out)
{
    int st = parse(g);
    if (st != BT_OK) {
        bt_gguf_close(g);
        return st;
    }
    *out = g;
    return BT_OK;
}

int bt_gguf_open_memory(const void *data, size_t size_bytes, bt_gguf_t **out)
{
    bt_gguf_t *g = bt_calloc(1, sizeof *g);
    if (!g)
        return BT_ERR_NOMEM;
    g->name = bt_strdup("<memory>");
    if (!g->name) {
        bt_free(g);
        return BT_ERR_NOMEM;
    }
    g->base = data;
    g->size = data ? size_bytes : 0;
    return open_common(g, out);
}

/* Maps the whole file read-only; errno is turned into a status here, once. */
static int map_file(bt_gguf_t *g, const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        bt_error("gguf %s: cannot open: %s", path, strerror(errno));
        return BT_ERR_IO;
    }
    struct stat sb;
    int st = BT_OK;
    if (fstat(fd, &sb) != 0) {
        bt_error("gguf %s: cannot stat: %s", path, strerror(errno));
        st = BT_ERR_IO;
    } else if (sb.st_size == 0) {
        bt_error("gguf %s: the file is empty", path);
        st = BT_ERR_FORMAT;
    } else {
        void *p = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (p == MAP_FAILED) {
            bt_error("gguf %s: cannot map %lld bytes: %s", path, (long long)sb.st_size,
                     strerror(errno));
            st = BT_ERR_IO;
        } else {
            g->base = p;
            g->size = (size_t)sb.st_size;
            g->mapped = 1;
        }
    }
    close(fd);
    return st;
}

int bt_gguf_open(const char *path, bt_gguf_t **out)
{
    bt_gguf_t *g = bt_calloc(1, sizeof *g);
    if (!g)
        return BT_ERR_NOMEM;
    g->name = bt_strdup(path);
    if (!g->name) {
        bt_free(g);
        return BT_ERR_NOMEM;
    }
    int st = map_file(g, path);
    if (st != BT_OK) {
        bt_gguf_close(g);
        return st;
    }
    return open_common(g, out);
}

void bt_gguf_close(bt_gguf_t *g)
{
    if (!g)
        return;
    for (int64_t i = 0; g->kvs && i < g->n_kv; i++)
        bt_free(g->kvs[i].str_off);
    bt_free(g->kvs);
    bt_free(g->tensors);
    bt_free(g->kv_index.slots);
    bt_free(g->tensor_index.slots);
    if (g->mapped)
        munmap((void *)g->base, g->size);
    bt_free(g->name);
    bt_free(g);
}

uint32_t bt_gguf_version(const bt_gguf_t *g)
{
    return g->version;
}

size_t bt_gguf_alignment(const bt_gguf_t *g)
{
    return g->alignment;
}

static const gguf_kv_t *find_kv(const bt_gguf_t *g, const char *key)
{
    int64_t i = index_find(g, &g->kv_index, key, strlen(key), -1);
    return i < 0 ? NULL : &g->kvs[i];
}

/* Reads any integer-typed value widened to 64 bits; *is_signed says how to interpret it. */
static int get_int(const bt_gguf_t *g, const char *key, uint64_t *u, int *is_signed)
{
    const gguf_kv_t *kv = find_kv(g, key);
    if (!kv)
        return BT_ERR_NOT_FOUND;
    const uint8_t *p = kv->pub.data;
    int8_t i8;
    int16_t i16;
    int32_t i32;
    uint16_t u16;
    uint32_t u32;
    *is_signed = kv->pub.type == BT_GGUF_INT8 || kv->pub.type == BT_GGUF_INT16 ||
                 kv->pub.type == BT_GGUF_INT32 || kv->pub.type == BT_GGUF_INT64;
    switch (kv->pub.type) {
    case BT_GGUF_UINT8: *u = p[0]; return BT_OK;
    case BT_GGUF_INT8:
        memcpy(&i8, p, 1);
        *u = (uint64_t)(int64_t)i8;
        return BT_OK;
    case BT_GGUF_UINT16:
        memcpy(&u16, p, 2);
        *u = u16;
        return BT_OK;
    case BT_GGUF_INT16:
        memcpy(&i16, p, 2);
        *u = (uint64_t)(int64_t)i16;
        return BT_OK;
    case BT_GGUF_UINT32:
        memcpy(&u32, p, 4);
        *u = u32;
        return BT_OK;
    case BT_GGUF_INT32:
        memcpy(&i32, p, 4);
        *u = (uint64_t)(int64_t)i32;
        return BT_OK;
    case BT_GGUF_UINT64:
    case BT_GGUF_INT64:
        memcpy(u, p, 8); /* two's complement: the bits of an int64 are its uint64 cast */
        return BT_OK;
    default: return BT_ERR_FORMAT;
    }
}

int bt_gguf_get_u32(const bt_gguf_t *g, const char *key, uint32_t *out)
{
    uint64_t u;
    int is_signed;
    int st = get_int(g, key, &u, &is_signed);
    if (st != BT_OK)
        return st;
    if ((is_signed && (int64_t)u < 0) || u > UINT32_MAX)
        return BT_ERR_FORMAT;
    *out = (uint32_t)u;
    return BT_OK;
}

int bt_gguf_get_i64(const bt_gguf_t *g, const char *key, int64_t *out)
{
    uint64_t u;
    int is_signed;
    int st = get_int(g, key, &u, &is_signed);
    if (st != BT_OK)
        return st;
    if (!is_signed && u > INT64_MAX)
        return BT_ERR_FORMAT;
    *out = (int64_t)u;
    return BT_OK;
}

int bt_gguf_get_f32(const bt_gguf_t *g, const char *key, float *out)
{
    const gguf_kv_t *kv = find_kv(g, key);
    if (!kv)
        return BT_ERR_NOT_FOUND;
    if (kv->pub.type == BT_GGUF_FLOAT32) {
        memcpy(out, kv->pub.data, 4);
    } else if (kv->pub.type == BT_GGUF_FLOAT64) {
        double d;
        memcpy(&d, kv->pub.data, 8);
        *out = (float)d;
    } else {
        return BT_ERR_FORMAT;
    }
    return BT_OK;
}

int bt_gguf_get_bool(const bt_gguf_t *g, const char *key, int *out)
{
    const gguf_kv_t *kv = find_kv(g, key);
    if (!kv)
        return BT_ERR_NOT_FOUND;
    if (kv->pub.type != BT_GGUF_BOOL)
        return BT_ERR_FORMAT;
    *out = *(const uint8_t *)kv->pub.data != 0;
    return BT_OK;
}

int bt_gguf_get_str(const bt_gguf_t *g, const char *key, const char **s, size_t *len)
{
    const gguf_kv_t *kv = find_kv(g, key);
    if (!kv)
        return BT_ERR_NOT_FOUND;
    if (kv->pub.type != BT_GGUF_STRING)
        return BT_ERR_FORMAT;
    *s = kv->pub.data;
    *len = (size_t)kv->pub.n;
    return BT_OK;
}

int bt_gguf_get_arr(const bt_gguf_t *g, const char *key, bt_gguf_type_t *elem_type, uint64_t *n,
                    const void **data)
{
    const gguf_kv_t *kv = find_kv(g, key);
    if (!kv)
        return BT_ERR_NOT_FOUND;
    if (kv->pub.type != BT_GGUF_ARRAY)
        return BT_ERR_FORMAT;
    *elem_type = kv->pub.elem_type;
    *n = kv->pub.n;
    if (data)
        *data = kv->pub.data;
    return BT_OK;
}

int bt_gguf_get_arr_str(const bt_gguf_t *g, const char *key, uint64_t i, const char **s,
                        size_t *len)
{
    const gguf_kv_t *kv = find_kv(g, key);
    if (!kv)
        return BT_ERR_NOT_FOUND;
    if (kv->pub.type != BT_GGUF_ARRAY || kv->pub.elem_type != BT_GGUF_STRING)
        return BT_ERR_FORMAT;
    if (i >= kv->pub.n)
        return BT_ERR_RANGE;
    uint64_t n;
    memcpy(&n, g->base + kv->str_off[i], 8);
    *s = (const char *)g->base + kv->str_off[i] + 8;
    *len = (size_t)n;
    return BT_OK;
}

int64_t bt_gguf_n_kv(const bt_gguf_t *g)
{
    return g->n_kv;
}

int bt_gguf_kv_at(const bt_gguf_t *g, int64_t i, bt_gguf_kv_t *out)
{
    if (i < 0 || i >= g->n_kv)
        return BT_ERR_RANGE;
    *out = g->kvs[i].pub;
    return BT_OK;
}

int64_t bt_gguf_n_tensors(const bt_gguf_t *g)
{
    return g->n_tensors;
}

int bt_gguf_tensor_at(const bt_gguf_t *g, int64_t i, bt_gguf_tensor_t *out)
{
    if (i < 0 || i >= g->n_tensors)
        return BT_ERR_RANGE;
    *out = g->tensors[i].pub;
    return BT_OK;
}

int bt_gguf_find_tensor(const bt_gguf_t *g, const char *name, bt_gguf_tensor_t *out)
{
    int64_t i = index_find(g, &g->tensor_index, name, strlen(name), -1);
    if (i < 0)
        return BT_ERR_NOT_FOUND;
    *out = g->tensors[i].pub;
    return BT_OK;
}
