/* SPDX-License-Identifier: MIT */
/*
 * gguf.h - a reader for GGUF v2/v3 files (mmap, no copy) and a writer for new ones.
 *
 * GGUF files come from shared storage and must be treated as hostile: bt_gguf_open validates
 * every length, count, offset, type and tensor extent against the file size before anything is
 * returned, so that later accessors can never read out of bounds. Strings returned by the
 * reader point into the mapping and are NOT NUL-terminated; they live until bt_gguf_close.
 */
#ifndef BATON_GGUF_H
#define BATON_GGUF_H

#include <stddef.h>
#include <stdint.h>

typedef enum {
    BT_GGUF_UINT8 = 0,
    BT_GGUF_INT8 = 1,
    BT_GGUF_UINT16 = 2,
    BT_GGUF_INT16 = 3,
    BT_GGUF_UINT32 = 4,
    BT_GGUF_INT32 = 5,
    BT_GGUF_FLOAT32 = 6,
    BT_GGUF_BOOL = 7,
    BT_GGUF_STRING = 8,
    BT_GGUF_ARRAY = 9,
    BT_GGUF_UINT64 = 10,
    BT_GGUF_INT64 = 11,
    BT_GGUF_FLOAT64 = 12,
} bt_gguf_type_t;

/* Bytes of one value of a numeric type; 0 for BT_GGUF_STRING, BT_GGUF_ARRAY and any number
 * that is no GGUF type. Any thread. */
size_t bt_gguf_type_size(uint32_t type);

typedef struct {
    const char *name; /* not NUL-terminated */
    size_t name_len;
    int type;          /* ggml type id (see kernels.h bt_type_t; others may appear) */
    int n_dims;        /* 1..4 */
    int64_t ne[4];     /* ne[0] is the fastest-varying (columns) dimension; unused dims are 1 */
    const void *data;  /* into the mapping, aligned as the file says */
    size_t size_bytes; /* 0 if the type is not one baton can compute with */
} bt_gguf_tensor_t;

typedef struct bt_gguf bt_gguf_t;

/* Maps and validates a file. Errors: BT_ERR_IO (cannot open/map), BT_ERR_FORMAT (bad magic,
 * truncated, inconsistent), BT_ERR_UNSUPPORTED (version 1 or > 3). Logs the reason once. */
int bt_gguf_open(const char *path, bt_gguf_t **out);
/* Same checks over a caller-owned buffer, which is borrowed and must outlive the object. */
int bt_gguf_open_memory(const void *data, size_t size_bytes, bt_gguf_t **out);
void bt_gguf_close(bt_gguf_t *g);

uint32_t bt_gguf_version(const bt_gguf_t *g);
size_t bt_gguf_alignment(const bt_gguf_t *g);

/* Key-value lookups. BT_ERR_NOT_FOUND if the key is absent, BT_ERR_FORMAT if it has a type
 * that cannot be converted (integers convert between widths when the value fits). */
int bt_gguf_get_u32(const bt_gguf_t *g, const char *key, uint32_t *out);
int bt_gguf_get_i64(const bt_gguf_t *g, const char *key, int64_t *out);
int bt_gguf_get_f32(const bt_gguf_t *g, const char *key, float *out);
int bt_gguf_get_bool(const bt_gguf_t *g, const char *key, int *out);
int bt_gguf_get_str(const bt_gguf_t *g, const char *key, const char **s, size_t *len);
/* Arrays: element type and count. For numeric arrays *data points at the packed elements
 * (little-endian, possibly unaligned: read with memcpy); for string arrays use get_arr_str. */
int bt_gguf_get_arr(const bt_gguf_t *g, const char *key, bt_gguf_type_t *elem_type, uint64_t *n,
                    const void **data);
int bt_gguf_get_arr_str(const bt_gguf_t *g, const char *key, uint64_t i, const char **s,
                        size_t *len);

/* Enumerating the metadata in file order (for dump tools and for copying a file with edits). */
typedef struct {
    const char *key; /* not NUL-terminated */
    size_t key_len;
    bt_gguf_type_t type;
    bt_gguf_type_t elem_type; /* arrays only */
    uint64_t n;               /* arrays: element count; strings: byte length; scalars: 1 */
    const void *data;         /* scalars and numeric arrays: the packed little-endian bytes
                               * (possibly unaligned); strings: the bytes; string arrays: NULL
                               * (use bt_gguf_get_arr_str) */
} bt_gguf_kv_t;

int64_t bt_gguf_n_kv(const bt_gguf_t *g);
/* BT_ERR_RANGE if i is not in [0, n_kv). */
int bt_gguf_kv_at(const bt_gguf_t *g, int64_t i, bt_gguf_kv_t *out);

int64_t bt_gguf_n_tensors(const bt_gguf_t *g);
int bt_gguf_tensor_at(const bt_gguf_t *g, int64_t i, bt_gguf_tensor_t *out);
/* BT_ERR_NOT_FOUND if there is no tensor of that name. */
int bt_gguf_find_tensor(const bt_gguf_t *g, const char *name, bt_gguf_tensor_t *out);

/* Writer: collects metadata and tensors (tensor data is borrowed until write) and writes a
 * GGUF v3 file with 32-byte alignment that llama.cpp can load. */
typedef struct bt_gguf_writer bt_gguf_writer_t;

int bt_gguf_writer_create(bt_gguf_writer_t **out);
void bt_gguf_writer_destroy(bt_gguf_writer_t *w);
int bt_gguf_writer_set_u32(bt_gguf_writer_t *w, const char *key, uint32_t v);
int bt_gguf_writer_set_i32(bt_gguf_writer_t *w, const char *key, int32_t v);
int bt_gguf_writer_set_f32(bt_gguf_writer_t *w, const char *key, float v);
int bt_gguf_writer_set_bool(bt_gguf_writer_t *w, const char *key, int v);
int bt_gguf_writer_set_str(bt_gguf_writer_t *w, const char *key, const char *v);
/* Any numeric scalar type (BT_GGUF_UINT8 .. BT_GGUF_FLOAT64 except STRING/ARRAY); v points at
 * one value of that type in host order. Setting a key again replaces its value. */
int bt_gguf_writer_set_scalar(bt_gguf_writer_t *w, const char *key, bt_gguf_type_t type,
                              const void *v);
/* Copies the strings. */
int bt_gguf_writer_set_arr_str(bt_gguf_writer_t *w, const char *key, const char *const *v,
                               uint64_t n);
/* Copies n elements of elem_type (a numeric bt_gguf_type_t). */
int bt_gguf_writer_set_arr(bt_gguf_writer_t *w, const char *key, bt_gguf_type_t elem_type,
                           const void *v, uint64_t n);
/* Adds a tensor of a type bt_type_row_bytes knows; data (size given by type and dims) is
 * borrowed until bt_gguf_writer_write. */
int bt_gguf_writer_add_tensor(bt_gguf_writer_t *w, const char *name, int type, int n_dims,
                              const int64_t *ne, const void *data);
/* Streaming tensors, so that a generator never holds a whole model in memory: at write time
 * fill(ctx, row0, n_rows, dst) is called with consecutive row ranges (a row is ne[0] elements,
 * bt_type_row_bytes bytes) and must write them, as stored, into dst; a non-zero return aborts
 * the write with that status. Only types bt_type_row_bytes knows. ctx is borrowed until write.
 * Tensor names are unique and shorter than 64 bytes (llama.cpp's limit): BT_ERR_INVAL else. */
typedef int (*bt_gguf_fill_fn)(void *ctx, int64_t row0, int64_t n_rows, void *dst);
int bt_gguf_writer_add_tensor_fn(bt_gguf_writer_t *w, const char *name, int type, int n_dims,
                                 const int64_t *ne, bt_gguf_fill_fn fill, void *ctx);
/* Writes path.tmp and renames it over path, so a failed write never leaves a truncated file
 * under the final name. BT_ERR_IO with the reason logged. The writer may be written again. */
int bt_gguf_writer_write(bt_gguf_writer_t *w, const char *path);

#endif
