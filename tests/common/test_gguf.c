/* SPDX-License-Identifier: MIT */
/*
 * test_gguf.c - the GGUF reader and writer: a real file, v1 refusal, a writer-to-reader round
 * trip of every metadata type and tensor layout, and hostile inputs built byte by byte
 * (truncation at every offset, huge counts and lengths, bad tensor records), which must all be
 * refused with an error and never read out of bounds (run under ASan).
 */
// ctest-labels: unit
#include "../support/testutil.h" /* relative: works whatever the include path */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/alloc.h"
#include "common/gguf.h"
#include "common/log.h"
#include "common/status.h"
#include "kernels/fp16.h"
#include "kernels/kernels.h"

/* --- a byte builder for hand-made files --------------------------------------------------- */

typedef struct {
    uint8_t b[16384];
    size_t n;
} bb_t;

static void put(bb_t *bb, const void *p, size_t n)
{
    assert_true(bb->n + n <= sizeof bb->b);
    memcpy(bb->b + bb->n, p, n);
    bb->n += n;
}

static void put_u32(bb_t *bb, uint32_t v)
{
    put(bb, &v, 4);
}

static void put_u64(bb_t *bb, uint64_t v)
{
    put(bb, &v, 8);
}

static void put_str(bb_t *bb, const char *s)
{
    put_u64(bb, strlen(s));
    put(bb, s, strlen(s));
}

static void put_header(bb_t *bb, uint32_t version, uint64_t n_tensors, uint64_t n_kv)
{
    put(bb, "GGUF", 4);
    put_u32(bb, version);
    put_u64(bb, n_tensors);
    put_u64(bb, n_kv);
}

static void pad32(bb_t *bb)
{
    while (bb->n % 32)
        bb->b[bb->n++] = 0;
}

/* Opens a copy of exactly n bytes, so that ASan sees any read past the end. */
static int open_bytes(const void *p, size_t n)
{
    void *copy = malloc(n ? n : 1);
    assert_non_null(copy);
    memcpy(copy, p, n);
    bt_gguf_t *g = NULL;
    int st = bt_gguf_open_memory(copy, n, &g);
    if (st == BT_OK)
        bt_gguf_close(g);
    else
        assert_null(g);
    free(copy);
    return st;
}

typedef struct {
    uint32_t n_dims;
    uint64_t ne[5];
    uint32_t type;
    uint64_t offset;
} tinfo_t;

/* One key, one tensor with the given record, then 64 bytes of data. */
static void build_tensor_file(bb_t *bb, const tinfo_t *t)
{
    bb->n = 0;
    put_header(bb, 3, 1, 1);
    put_str(bb, "general.architecture");
    put_u32(bb, BT_GGUF_STRING);
    put_str(bb, "llama");
    put_str(bb, "w");
    put_u32(bb, t->n_dims);
    for (uint32_t d = 0; d < t->n_dims && d < 5; d++)
        put_u64(bb, t->ne[d]);
    put_u32(bb, t->type);
    put_u64(bb, t->offset);
    pad32(bb);
    for (int i = 0; i < 64; i++)
        bb->b[bb->n++] = (uint8_t)i;
}

static const tinfo_t good_tensor = {2, {4, 4}, BT_TYPE_F32, 0};

/* --- real files --------------------------------------------------------------------------- */

static void test_gguf_stories260k(void **state)
{
    char path[512];
    BT_TEST_NEED_SHARED("models/stories260K.gguf", path);
    bt_gguf_t *g;
    assert_int_equal(bt_gguf_open(path, &g), BT_OK);
    assert_int_equal(bt_gguf_version(g), 3);
    assert_int_equal(bt_gguf_alignment(g), 32);
    assert_int_equal(bt_gguf_n_tensors(g), 48);
    const char *s;
    size_t len;
    assert_int_equal(bt_gguf_get_str(g, "general.architecture", &s, &len), BT_OK);
    assert_int_equal(len, 5);
    assert_memory_equal(s, "llama", 5);
    uint32_t u;
    assert_int_equal(bt_gguf_get_u32(g, "llama.context_length", &u), BT_OK);
    assert_int_equal(u, 512);
    assert_int_equal(bt_gguf_get_u32(g, "llama.attention.head_count_kv", &u), BT_OK);
    assert_int_equal(u, 4);
    float f;
    assert_int_equal(bt_gguf_get_f32(g, "llama.attention.layer_norm_rms_epsilon", &f), BT_OK);
    assert_true(f > 0.9e-5f && f < 1.1e-5f);
    assert_int_equal(bt_gguf_get_u32(g, "llama.attention.layer_norm_rms_epsilon", &u),
                     BT_ERR_FORMAT);
    assert_int_equal(bt_gguf_get_u32(g, "no.such.key", &u), BT_ERR_NOT_FOUND);
    bt_gguf_type_t et;
    uint64_t n;
    assert_int_equal(bt_gguf_get_arr(g, "tokenizer.ggml.tokens", &et, &n, NULL), BT_OK);
    assert_int_equal(et, BT_GGUF_STRING);
    assert_int_equal(n, 512);
    assert_int_equal(bt_gguf_get_arr_str(g, "tokenizer.ggml.tokens", 1, &s, &len), BT_OK);
    assert_int_equal(len, 3);
    assert_memory_equal(s, "<s>", 3);
    assert_int_equal(bt_gguf_get_arr_str(g, "tokenizer.ggml.tokens", 512, &s, &len), BT_ERR_RANGE);
    bt_gguf_tensor_t t;
    assert_int_equal(bt_gguf_find_tensor(g, "token_embd.weight", &t), BT_OK);
    assert_int_equal(t.type, BT_TYPE_F32);
    assert_int_equal(t.n_dims, 2);
    assert_int_equal(t.ne[0], 64);
    assert_int_equal(t.ne[1], 512);
    assert_int_equal(t.size_bytes, 64 * 512 * 4);
    assert_int_equal((uintptr_t)t.data % 32, 0);
    assert_int_equal(bt_gguf_find_tensor(g, "blk.4.attn_k.weight", &t), BT_OK);
    assert_int_equal(t.ne[1], 32);
    assert_int_equal(bt_gguf_find_tensor(g, "nope", &t), BT_ERR_NOT_FOUND);
    bt_gguf_close(g);
}

static void test_gguf_v1_refused(void **state)
{
    char path[512];
    BT_TEST_NEED_SHARED("models/stories260K.v1.gguf", path);
    bt_gguf_t *g = NULL;
    assert_int_equal(bt_gguf_open(path, &g), BT_ERR_UNSUPPORTED);
    assert_null(g);
}

static void test_gguf_large_vocabulary(void **state)
{
    char path[512];
    BT_TEST_NEED_SHARED("models/llama-2-tiny-random.gguf", path);
    bt_gguf_t *g;
    assert_int_equal(bt_gguf_open(path, &g), BT_OK);
    const char *s;
    size_t len;
    assert_int_equal(bt_gguf_get_arr_str(g, "tokenizer.ggml.tokens", 31999, &s, &len), BT_OK);
    assert_true(len > 0);
    assert_int_equal(bt_gguf_get_arr_str(g, "tokenizer.ggml.tokens", 3, &s, &len), BT_OK);
    assert_memory_equal(s, "<0x00>", 6);
    bt_gguf_tensor_t t;
    assert_int_equal(bt_gguf_find_tensor(g, "output.weight", &t), BT_OK);
    assert_int_equal(t.type, BT_TYPE_F16);
    assert_int_equal(t.size_bytes, 8 * 32000 * 2);
    bt_gguf_close(g);
}

static void test_gguf_missing_file(void **state)
{
    bt_gguf_t *g = NULL;
    assert_int_equal(bt_gguf_open("/nonexistent/x.gguf", &g), BT_ERR_IO);
    assert_null(g);
}

/* --- writer to reader round trip ---------------------------------------------------------- */

typedef struct {
    float base;
    int fail_at_row; /* -1: never */
} fill_state_t;

static int fill_f32(void *ctx, int64_t row0, int64_t n_rows, void *dst)
{
    const fill_state_t *fs = ctx;
    float *out = dst;
    for (int64_t r = 0; r < n_rows; r++) {
        if (row0 + r == fs->fail_at_row)
            return BT_ERR_INTERNAL;
        for (int c = 0; c < 8; c++)
            out[r * 8 + c] = fs->base + (float)(row0 + r) * 8 + (float)c;
    }
    return BT_OK;
}

static const uint8_t v_u8 = 200;
static const int8_t v_i8 = -5;
static const uint16_t v_u16 = 60000;
static const int16_t v_i16 = -3000;
static const uint64_t v_u64 = 1ull << 40;
static const int64_t v_i64 = -(1ll << 40);
static const double v_f64 = 2.25;
static const int32_t arr_i32[] = {-1, 2, -3};
static const double arr_f64[] = {0.5, -1.5};
static const uint8_t arr_u8[] = {1, 2, 3, 4, 5};
static float t_f32[3][5];
static uint16_t t_f16[3][2][4];
static uint16_t t_bf16[2][2][2][2];
static bt_block_q8_0_t t_q8[2][2];
static const fill_state_t fill_ok = {100.0f, -1};

static void set_all_kv_types(bt_gguf_writer_t *w)
{
    assert_int_equal(bt_gguf_writer_set_scalar(w, "u8", BT_GGUF_UINT8, &v_u8), BT_OK);
    assert_int_equal(bt_gguf_writer_set_scalar(w, "i8", BT_GGUF_INT8, &v_i8), BT_OK);
    assert_int_equal(bt_gguf_writer_set_scalar(w, "u16", BT_GGUF_UINT16, &v_u16), BT_OK);
    assert_int_equal(bt_gguf_writer_set_scalar(w, "i16", BT_GGUF_INT16, &v_i16), BT_OK);
    assert_int_equal(bt_gguf_writer_set_u32(w, "u32", 4000000000u), BT_OK);
    assert_int_equal(bt_gguf_writer_set_i32(w, "i32", -2000000000), BT_OK);
    assert_int_equal(bt_gguf_writer_set_f32(w, "f32", 1.5f), BT_OK);
    assert_int_equal(bt_gguf_writer_set_bool(w, "bool", 1), BT_OK);
    assert_int_equal(bt_gguf_writer_set_str(w, "str", "hello"), BT_OK);
    assert_int_equal(bt_gguf_writer_set_str(w, "empty", ""), BT_OK);
    assert_int_equal(bt_gguf_writer_set_scalar(w, "u64", BT_GGUF_UINT64, &v_u64), BT_OK);
    assert_int_equal(bt_gguf_writer_set_scalar(w, "i64", BT_GGUF_INT64, &v_i64), BT_OK);
    assert_int_equal(bt_gguf_writer_set_scalar(w, "f64", BT_GGUF_FLOAT64, &v_f64), BT_OK);
    assert_int_equal(bt_gguf_writer_set_arr(w, "a.i32", BT_GGUF_INT32, arr_i32, 3), BT_OK);
    assert_int_equal(bt_gguf_writer_set_arr(w, "a.f64", BT_GGUF_FLOAT64, arr_f64, 2), BT_OK);
    assert_int_equal(bt_gguf_writer_set_arr(w, "a.u8", BT_GGUF_UINT8, arr_u8, 5), BT_OK);
    assert_int_equal(bt_gguf_writer_set_arr(w, "a.empty", BT_GGUF_FLOAT32, NULL, 0), BT_OK);
    const char *strs[] = {"a", "", "ccc"};
    assert_int_equal(bt_gguf_writer_set_arr_str(w, "a.str", strs, 3), BT_OK);
    /* Rejected: not a numeric type. */
    assert_int_equal(bt_gguf_writer_set_scalar(w, "bad", BT_GGUF_STRING, "x"), BT_ERR_INVAL);
    assert_int_equal(bt_gguf_writer_set_arr(w, "bad", BT_GGUF_ARRAY, arr_u8, 1), BT_ERR_INVAL);
}

static void add_all_tensors(bt_gguf_writer_t *w)
{
    for (int i = 0; i < 15; i++)
        ((float *)t_f32)[i] = (float)i * 0.25f - 1.0f;
    for (int i = 0; i < 24; i++)
        ((uint16_t *)t_f16)[i] = bt_f32_to_fp16((float)i);
    for (int i = 0; i < 16; i++)
        ((uint16_t *)t_bf16)[i] = bt_f32_to_bf16((float)-i);
    for (int i = 0; i < (int)sizeof t_q8; i++)
        ((uint8_t *)t_q8)[i] = (uint8_t)(i * 7);
    const int64_t ne_f32[] = {5, 3}, ne_f16[] = {4, 2, 3}, ne_bf16[] = {2, 2, 2, 2};
    const int64_t ne_q8[] = {64, 2}, ne_fill[] = {8, 10};
    assert_int_equal(bt_gguf_writer_add_tensor(w, "t.f32", BT_TYPE_F32, 2, ne_f32, t_f32), BT_OK);
    assert_int_equal(bt_gguf_writer_add_tensor(w, "t.f16", BT_TYPE_F16, 3, ne_f16, t_f16), BT_OK);
    assert_int_equal(bt_gguf_writer_add_tensor(w, "t.bf16", BT_TYPE_BF16, 4, ne_bf16, t_bf16),
                     BT_OK);
    assert_int_equal(bt_gguf_writer_add_tensor(w, "t.q8", BT_TYPE_Q8_0, 2, ne_q8, t_q8), BT_OK);
    assert_int_equal(bt_gguf_writer_add_tensor_fn(w, "t.fill", BT_TYPE_F32, 2, ne_fill, fill_f32,
                                                  (void *)&fill_ok),
                     BT_OK);
    /* Rejected: duplicate name, name too long, q8_0 row not a whole block, no dims. */
    assert_int_equal(bt_gguf_writer_add_tensor(w, "t.f32", BT_TYPE_F32, 2, ne_f32, t_f32),
                     BT_ERR_INVAL);
    char long_name[80];
    memset(long_name, 'x', 70);
    long_name[70] = 0;
    assert_int_equal(bt_gguf_writer_add_tensor(w, long_name, BT_TYPE_F32, 2, ne_f32, t_f32),
                     BT_ERR_INVAL);
    const int64_t ne_bad[] = {16, 2};
    assert_int_equal(bt_gguf_writer_add_tensor(w, "bad", BT_TYPE_Q8_0, 2, ne_bad, t_q8),
                     BT_ERR_INVAL);
    assert_int_equal(bt_gguf_writer_add_tensor(w, "bad", BT_TYPE_F32, 0, ne_bad, t_q8),
                     BT_ERR_INVAL);
}

static void check_kv_types(const bt_gguf_t *g)
{
    uint32_t u;
    int64_t i;
    float f;
    int b;
    assert_int_equal(bt_gguf_get_u32(g, "u8", &u), BT_OK);
    assert_int_equal(u, 200);
    assert_int_equal(bt_gguf_get_u32(g, "i8", &u), BT_ERR_FORMAT); /* negative */
    assert_int_equal(bt_gguf_get_i64(g, "i8", &i), BT_OK);
    assert_int_equal(i, -5);
    assert_int_equal(bt_gguf_get_u32(g, "u16", &u), BT_OK);
    assert_int_equal(u, 60000);
    assert_int_equal(bt_gguf_get_i64(g, "i16", &i), BT_OK);
    assert_int_equal(i, -3000);
    assert_int_equal(bt_gguf_get_u32(g, "u32", &u), BT_OK);
    assert_int_equal(u, 4000000000u);
    assert_int_equal(bt_gguf_get_i64(g, "i32", &i), BT_OK);
    assert_int_equal(i, -2000000000);
    assert_int_equal(bt_gguf_get_u32(g, "u64", &u), BT_ERR_FORMAT); /* does not fit */
    assert_int_equal(bt_gguf_get_i64(g, "u64", &i), BT_OK);
    assert_int_equal(i, 1ll << 40);
    assert_int_equal(bt_gguf_get_i64(g, "i64", &i), BT_OK);
    assert_int_equal(i, -(1ll << 40));
    assert_int_equal(bt_gguf_get_f32(g, "f32", &f), BT_OK);
    assert_true(f == 1.5f);
    assert_int_equal(bt_gguf_get_f32(g, "f64", &f), BT_OK);
    assert_true(f == 2.25f);
    assert_int_equal(bt_gguf_get_f32(g, "u32", &f), BT_ERR_FORMAT);
    assert_int_equal(bt_gguf_get_bool(g, "bool", &b), BT_OK);
    assert_int_equal(b, 1);
    assert_int_equal(bt_gguf_get_bool(g, "u8", &b), BT_ERR_FORMAT);
    assert_int_equal(bt_gguf_get_i64(g, "bool", &i), BT_ERR_FORMAT);
    const char *s;
    size_t len;
    assert_int_equal(bt_gguf_get_str(g, "str", &s, &len), BT_OK);
    assert_int_equal(len, 5);
    assert_memory_equal(s, "hello", 5);
    assert_int_equal(bt_gguf_get_str(g, "empty", &s, &len), BT_OK);
    assert_int_equal(len, 0);
    assert_int_equal(bt_gguf_get_str(g, "u8", &s, &len), BT_ERR_FORMAT);
}

static void check_arrays(const bt_gguf_t *g)
{
    bt_gguf_type_t et;
    uint64_t n;
    const void *data;
    assert_int_equal(bt_gguf_get_arr(g, "a.i32", &et, &n, &data), BT_OK);
    assert_int_equal(et, BT_GGUF_INT32);
    assert_int_equal(n, 3);
    assert_memory_equal(data, arr_i32, sizeof arr_i32);
    assert_int_equal(bt_gguf_get_arr(g, "a.f64", &et, &n, &data), BT_OK);
    assert_int_equal(et, BT_GGUF_FLOAT64);
    assert_memory_equal(data, arr_f64, sizeof arr_f64);
    assert_int_equal(bt_gguf_get_arr(g, "a.u8", &et, &n, &data), BT_OK);
    assert_int_equal(n, 5);
    assert_memory_equal(data, arr_u8, 5);
    assert_int_equal(bt_gguf_get_arr(g, "a.empty", &et, &n, &data), BT_OK);
    assert_int_equal(n, 0);
    assert_int_equal(bt_gguf_get_arr(g, "str", &et, &n, &data), BT_ERR_FORMAT);
    const char *s;
    size_t len;
    assert_int_equal(bt_gguf_get_arr_str(g, "a.str", 0, &s, &len), BT_OK);
    assert_int_equal(len, 1);
    assert_memory_equal(s, "a", 1);
    assert_int_equal(bt_gguf_get_arr_str(g, "a.str", 1, &s, &len), BT_OK);
    assert_int_equal(len, 0);
    assert_int_equal(bt_gguf_get_arr_str(g, "a.str", 2, &s, &len), BT_OK);
    assert_memory_equal(s, "ccc", 3);
    assert_int_equal(bt_gguf_get_arr_str(g, "a.str", 3, &s, &len), BT_ERR_RANGE);
    assert_int_equal(bt_gguf_get_arr_str(g, "a.i32", 0, &s, &len), BT_ERR_FORMAT);
    bt_gguf_kv_t kv;
    assert_int_equal(bt_gguf_n_kv(g), 18);
    assert_int_equal(bt_gguf_kv_at(g, 0, &kv), BT_OK);
    assert_int_equal(kv.key_len, 2);
    assert_memory_equal(kv.key, "u8", 2);
    assert_int_equal(kv.type, BT_GGUF_UINT8);
    assert_int_equal(bt_gguf_kv_at(g, 17, &kv), BT_OK);
    assert_int_equal(kv.type, BT_GGUF_ARRAY);
    assert_int_equal(kv.elem_type, BT_GGUF_STRING);
    assert_int_equal(kv.n, 3);
    assert_int_equal(bt_gguf_kv_at(g, 18, &kv), BT_ERR_RANGE);
}

static void check_tensor(const bt_gguf_t *g, const char *name, int type, int n_dims,
                         const int64_t *ne, const void *data, size_t size)
{
    bt_gguf_tensor_t t;
    assert_int_equal(bt_gguf_find_tensor(g, name, &t), BT_OK);
    assert_int_equal(t.type, type);
    assert_int_equal(t.n_dims, n_dims);
    for (int d = 0; d < 4; d++)
        assert_int_equal(t.ne[d], d < n_dims ? ne[d] : 1);
    assert_int_equal(t.size_bytes, size);
    assert_int_equal((uintptr_t)t.data % 32, 0);
    if (data)
        assert_memory_equal(t.data, data, size);
}

static void check_tensors(const bt_gguf_t *g)
{
    assert_int_equal(bt_gguf_n_tensors(g), 5);
    check_tensor(g, "t.f32", BT_TYPE_F32, 2, (int64_t[]){5, 3}, t_f32, sizeof t_f32);
    check_tensor(g, "t.f16", BT_TYPE_F16, 3, (int64_t[]){4, 2, 3}, t_f16, sizeof t_f16);
    check_tensor(g, "t.bf16", BT_TYPE_BF16, 4, (int64_t[]){2, 2, 2, 2}, t_bf16, sizeof t_bf16);
    check_tensor(g, "t.q8", BT_TYPE_Q8_0, 2, (int64_t[]){64, 2}, t_q8, sizeof t_q8);
    check_tensor(g, "t.fill", BT_TYPE_F32, 2, (int64_t[]){8, 10}, NULL, 320);
    bt_gguf_tensor_t t;
    assert_int_equal(bt_gguf_find_tensor(g, "t.fill", &t), BT_OK);
    for (int i = 0; i < 80; i++)
        assert_true(((const float *)t.data)[i] == 100.0f + (float)i);
    assert_int_equal(bt_gguf_tensor_at(g, 0, &t), BT_OK);
    assert_memory_equal(t.name, "t.f32", 5);
    assert_int_equal(bt_gguf_tensor_at(g, 5, &t), BT_ERR_RANGE);
    assert_int_equal(bt_gguf_tensor_at(g, -1, &t), BT_ERR_RANGE);
}

static void write_round_trip_file(const char *path)
{
    bt_gguf_writer_t *w;
    assert_int_equal(bt_gguf_writer_create(&w), BT_OK);
    set_all_kv_types(w);
    add_all_tensors(w);
    assert_int_equal(bt_gguf_writer_write(w, path), BT_OK);
    bt_gguf_writer_destroy(w);
}

static void test_gguf_round_trip(void **state)
{
    char path[512];
    bt_test_tmp_path("roundtrip.gguf", path, sizeof path);
    write_round_trip_file(path);
    bt_gguf_t *g;
    assert_int_equal(bt_gguf_open(path, &g), BT_OK);
    assert_int_equal(bt_gguf_version(g), 3);
    assert_int_equal(bt_gguf_alignment(g), 32);
    check_kv_types(g);
    check_arrays(g);
    check_tensors(g);
    bt_gguf_close(g);
    unlink(path);
}

static void test_gguf_writer_replaces_key(void **state)
{
    char path[512];
    bt_test_tmp_path("replace.gguf", path, sizeof path);
    bt_gguf_writer_t *w;
    assert_int_equal(bt_gguf_writer_create(&w), BT_OK);
    assert_int_equal(bt_gguf_writer_set_u32(w, "k", 1), BT_OK);
    assert_int_equal(bt_gguf_writer_set_str(w, "k", "two"), BT_OK);
    assert_int_equal(bt_gguf_writer_write(w, path), BT_OK);
    bt_gguf_writer_destroy(w);
    bt_gguf_t *g;
    assert_int_equal(bt_gguf_open(path, &g), BT_OK);
    assert_int_equal(bt_gguf_n_kv(g), 1);
    assert_int_equal(bt_gguf_n_tensors(g), 0);
    const char *s;
    size_t len;
    assert_int_equal(bt_gguf_get_str(g, "k", &s, &len), BT_OK);
    assert_memory_equal(s, "two", 3);
    bt_gguf_close(g);
    unlink(path);
}

static void test_gguf_writer_errors_leave_no_file(void **state)
{
    char path[512], tmp[600];
    bt_test_tmp_path("fail.gguf", path, sizeof path);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    bt_gguf_writer_t *w;
    assert_int_equal(bt_gguf_writer_create(&w), BT_OK);
    const fill_state_t failing = {0.0f, 7};
    const int64_t ne[] = {8, 10};
    assert_int_equal(
        bt_gguf_writer_add_tensor_fn(w, "t", BT_TYPE_F32, 2, ne, fill_f32, (void *)&failing),
        BT_OK);
    assert_int_equal(bt_gguf_writer_write(w, path), BT_ERR_INTERNAL);
    assert_int_not_equal(access(path, F_OK), 0);
    assert_int_not_equal(access(tmp, F_OK), 0);
    assert_int_equal(bt_gguf_writer_write(w, "/nonexistent/dir/x.gguf"), BT_ERR_IO);
    bt_gguf_writer_destroy(w);
}

/* Every allocation of the writer and the reader fails once; each must fail cleanly. */
static void test_gguf_alloc_faults(void **state)
{
    char path[512];
    bt_test_tmp_path("faults.gguf", path, sizeof path);
    write_round_trip_file(path);
    bt_log_set_level(BT_LOG_OFF);
    for (long n = 1;; n++) {
        bt_gguf_t *g = NULL;
        bt_alloc_fail_at(n);
        int st = bt_gguf_open(path, &g);
        int fired = bt_alloc_fault_fired();
        bt_alloc_fail_at(0);
        if (!fired) {
            assert_int_equal(st, BT_OK);
            bt_gguf_close(g);
            break;
        }
        assert_int_equal(st, BT_ERR_NOMEM);
        assert_null(g);
    }
    for (long n = 1;; n++) {
        bt_gguf_writer_t *w = NULL;
        bt_alloc_fail_at(n);
        int st = bt_gguf_writer_create(&w);
        if (st == BT_OK) {
            int st1 = bt_gguf_writer_set_str(w, "a", "b");
            int st2 = bt_gguf_writer_set_arr_str(w, "c", (const char *[]){"d", "e"}, 2);
            const int64_t ne[] = {8, 10};
            int st3 = bt_gguf_writer_add_tensor_fn(w, "t", BT_TYPE_F32, 2, ne, fill_f32,
                                                   (void *)&fill_ok);
            st = st1 ? st1 : st2 ? st2 : st3 ? st3 : bt_gguf_writer_write(w, path);
        }
        int fired = bt_alloc_fault_fired();
        bt_alloc_fail_at(0);
        bt_gguf_writer_destroy(w);
        if (!fired) {
            assert_int_equal(st, BT_OK);
            break;
        }
        assert_int_equal(st, BT_ERR_NOMEM);
    }
    bt_log_set_level(BT_LOG_WARN);
    unlink(path);
}

/* --- hostile inputs ----------------------------------------------------------------------- */

static void test_gguf_truncated_at_every_offset(void **state)
{
    char path[512];
    bt_test_tmp_path("trunc.gguf", path, sizeof path);
    write_round_trip_file(path);
    size_t len;
    char *file = bt_test_read_file(path, &len);
    assert_non_null(file);
    assert_int_equal(open_bytes(file, len), BT_OK);
    /* The last tensor (t.fill, 320 bytes) ends the file: no trailing padding to forgive. */
    bt_log_set_level(BT_LOG_OFF);
    for (size_t n = 0; n < len; n++) {
        int st = open_bytes(file, n);
        if (st != BT_ERR_FORMAT)
            fail_msg("truncation to %zu of %zu bytes gave %s", n, len, bt_status_name(st));
    }
    bt_log_set_level(BT_LOG_WARN);
    bt_gguf_t *g = NULL;
    assert_int_equal(bt_gguf_open_memory(NULL, 0, &g), BT_ERR_FORMAT);
    free(file);
    unlink(path);
}

static void test_gguf_bad_magic_and_version(void **state)
{
    bb_t bb = {.n = 0};
    put(&bb, "GGUX", 4);
    put_u32(&bb, 3);
    put_u64(&bb, 0);
    put_u64(&bb, 0);
    assert_int_equal(open_bytes(bb.b, bb.n), BT_ERR_FORMAT);
    const uint32_t versions[] = {0, 1, 4, 0x03000000u};
    for (int i = 0; i < 4; i++) {
        bb.n = 0;
        put_header(&bb, versions[i], 0, 0);
        assert_int_equal(open_bytes(bb.b, bb.n), BT_ERR_UNSUPPORTED);
    }
    bb.n = 0;
    put_header(&bb, 2, 0, 0); /* v2 has v3's layout */
    assert_int_equal(open_bytes(bb.b, bb.n), BT_OK);
}

static void test_gguf_huge_counts(void **state)
{
    const uint64_t huge[] = {1ull << 62, UINT64_MAX, 1000000};
    for (int i = 0; i < 3; i++) {
        bb_t bb = {.n = 0};
        put_header(&bb, 3, huge[i], 0);
        assert_int_equal(open_bytes(bb.b, bb.n), BT_ERR_FORMAT);
        bb.n = 0;
        put_header(&bb, 3, 0, huge[i]);
        assert_int_equal(open_bytes(bb.b, bb.n), BT_ERR_FORMAT);
    }
}

/* A file with one key whose value is given raw (type then bytes). */
static int open_one_kv(uint32_t type, const void *value, size_t value_len)
{
    bb_t bb = {.n = 0};
    put_header(&bb, 3, 0, 1);
    put_str(&bb, "key");
    put_u32(&bb, type);
    put(&bb, value, value_len);
    for (int i = 0; i < 64; i++) /* slack, so that lengths are checked, not the file end */
        bb.b[bb.n++] = 'x';
    return open_bytes(bb.b, bb.n);
}

static void test_gguf_length_overflows(void **state)
{
    /* Key length beyond the file. */
    bb_t bb = {.n = 0};
    put_header(&bb, 3, 0, 1);
    put_u64(&bb, UINT64_MAX);
    put_u32(&bb, BT_GGUF_UINT8);
    put_u64(&bb, 0);
    assert_int_equal(open_bytes(bb.b, bb.n), BT_ERR_FORMAT);
    /* String value lengths that overflow pos + len. */
    const uint64_t lens[] = {UINT64_MAX, UINT64_MAX - 7, 1ull << 63, 100};
    for (int i = 0; i < 4; i++)
        assert_int_equal(open_one_kv(BT_GGUF_STRING, &lens[i], 8), BT_ERR_FORMAT);
    /* Arrays: element counts whose byte size overflows or exceeds the file. */
    struct {
        uint32_t et;
        uint64_t n;
    } __attribute__((packed)) arrs[] = {
        {BT_GGUF_UINT32, 1ull << 62},
        {BT_GGUF_UINT64, UINT64_MAX / 4},
        {BT_GGUF_STRING, 1ull << 61},
        {BT_GGUF_UINT8, 100},
    };
    for (int i = 0; i < 4; i++)
        assert_int_equal(open_one_kv(BT_GGUF_ARRAY, &arrs[i], 12), BT_ERR_FORMAT);
    /* A string array whose third element's length runs past the end. */
    bb.n = 0;
    put_u32(&bb, BT_GGUF_STRING);
    put_u64(&bb, 3);
    put_str(&bb, "a");
    put_str(&bb, "b");
    put_u64(&bb, 1000);
    assert_int_equal(open_one_kv(BT_GGUF_ARRAY, bb.b, bb.n), BT_ERR_FORMAT);
}

static void test_gguf_bad_types(void **state)
{
    uint32_t v = 0;
    assert_int_equal(open_one_kv(13, &v, 4), BT_ERR_FORMAT);
    assert_int_equal(open_one_kv(0xffffffffu, &v, 4), BT_ERR_FORMAT);
    struct {
        uint32_t et;
        uint64_t n;
    } __attribute__((packed)) nested = {BT_GGUF_ARRAY, 1}, unknown = {99, 1};
    assert_int_equal(open_one_kv(BT_GGUF_ARRAY, &nested, 12), BT_ERR_UNSUPPORTED);
    assert_int_equal(open_one_kv(BT_GGUF_ARRAY, &unknown, 12), BT_ERR_FORMAT);
}

static void test_gguf_duplicates_and_alignment(void **state)
{
    bb_t bb = {.n = 0};
    put_header(&bb, 3, 0, 2);
    for (int i = 0; i < 2; i++) {
        put_str(&bb, "dup");
        put_u32(&bb, BT_GGUF_UINT8);
        bb.b[bb.n++] = 1;
    }
    assert_int_equal(open_bytes(bb.b, bb.n), BT_ERR_FORMAT);
    const uint32_t aligns[] = {0, 48, 3};
    for (int i = 0; i < 3; i++) {
        bb.n = 0;
        put_header(&bb, 3, 0, 1);
        put_str(&bb, "general.alignment");
        put_u32(&bb, BT_GGUF_UINT32);
        put_u32(&bb, aligns[i]);
        assert_int_equal(open_bytes(bb.b, bb.n), BT_ERR_FORMAT);
    }
    bb.n = 0; /* an alignment of the wrong type */
    put_header(&bb, 3, 0, 1);
    put_str(&bb, "general.alignment");
    put_u32(&bb, BT_GGUF_STRING);
    put_str(&bb, "32");
    assert_int_equal(open_bytes(bb.b, bb.n), BT_ERR_FORMAT);
    bb.n = 0; /* two tensors of one name */
    put_header(&bb, 3, 2, 0);
    for (int i = 0; i < 2; i++) {
        put_str(&bb, "t");
        put_u32(&bb, 1);
        put_u64(&bb, 8);
        put_u32(&bb, BT_TYPE_F32);
        put_u64(&bb, 0);
    }
    pad32(&bb);
    bb.n += 32;
    assert_int_equal(open_bytes(bb.b, bb.n), BT_ERR_FORMAT);
}

static void test_gguf_alignment_64(void **state)
{
    bb_t bb = {.n = 0};
    put_header(&bb, 3, 1, 1);
    put_str(&bb, "general.alignment");
    put_u32(&bb, BT_GGUF_UINT32);
    put_u32(&bb, 64);
    put_str(&bb, "t");
    put_u32(&bb, 1);
    put_u64(&bb, 16);
    put_u32(&bb, BT_TYPE_F32);
    put_u64(&bb, 0);
    while (bb.n % 64)
        bb.b[bb.n++] = 0;
    size_t data_at = bb.n;
    for (int i = 0; i < 64; i++)
        bb.b[bb.n++] = (uint8_t)i;
    bt_gguf_t *g;
    assert_int_equal(bt_gguf_open_memory(bb.b, bb.n, &g), BT_OK);
    assert_int_equal(bt_gguf_alignment(g), 64);
    bt_gguf_tensor_t t;
    assert_int_equal(bt_gguf_find_tensor(g, "t", &t), BT_OK);
    assert_ptr_equal(t.data, bb.b + data_at);
    bt_gguf_close(g);
}

static int open_tensor(const tinfo_t *t)
{
    bb_t bb;
    build_tensor_file(&bb, t);
    return open_bytes(bb.b, bb.n);
}

static void test_gguf_bad_tensor_records(void **state)
{
    assert_int_equal(open_tensor(&good_tensor), BT_OK);
    tinfo_t t = good_tensor;
    t.n_dims = 0;
    assert_int_equal(open_tensor(&t), BT_ERR_FORMAT);
    t.n_dims = 5;
    t.ne[2] = t.ne[3] = t.ne[4] = 1;
    assert_int_equal(open_tensor(&t), BT_ERR_FORMAT);
    t = good_tensor;
    t.ne[1] = 0; /* zero dimension */
    assert_int_equal(open_tensor(&t), BT_ERR_FORMAT);
    t = (tinfo_t){4, {1ull << 32, 1ull << 32, 1ull << 32, 1}, BT_TYPE_F32, 0}; /* overflow */
    assert_int_equal(open_tensor(&t), BT_ERR_FORMAT);
    t = (tinfo_t){2, {1ull << 63, 1}, BT_TYPE_F32, 0};
    assert_int_equal(open_tensor(&t), BT_ERR_FORMAT);
    t = (tinfo_t){2, {1ull << 31, 1ull << 31}, BT_TYPE_F32, 0}; /* fits in counts, not file */
    assert_int_equal(open_tensor(&t), BT_ERR_FORMAT);
    t = good_tensor;
    t.offset = 4; /* misaligned */
    assert_int_equal(open_tensor(&t), BT_ERR_FORMAT);
    t.offset = 32; /* aligned, but 64 bytes do not fit after it */
    assert_int_equal(open_tensor(&t), BT_ERR_FORMAT);
    t.offset = 1ull << 62;
    assert_int_equal(open_tensor(&t), BT_ERR_FORMAT);
    t.offset = UINT64_MAX - 31;
    assert_int_equal(open_tensor(&t), BT_ERR_FORMAT);
    t = (tinfo_t){2, {16, 2}, BT_TYPE_Q8_0, 0}; /* q8_0 rows must be whole blocks */
    assert_int_equal(open_tensor(&t), BT_ERR_FORMAT);
    t = (tinfo_t){1, {32}, BT_TYPE_Q8_0, 0};
    assert_int_equal(open_tensor(&t), BT_OK);
}

/* Types baton cannot compute with are allowed in a file, with no size. */
static void test_gguf_unknown_tensor_type(void **state)
{
    const uint32_t types[] = {2 /* q4_0 */, 12 /* q4_k */, 1000, 0xffffffffu};
    for (int i = 0; i < 4; i++) {
        tinfo_t t = {2, {32, 2}, types[i], 0};
        bb_t bb;
        build_tensor_file(&bb, &t);
        bt_gguf_t *g;
        assert_int_equal(bt_gguf_open_memory(bb.b, bb.n, &g), BT_OK);
        bt_gguf_tensor_t info;
        assert_int_equal(bt_gguf_find_tensor(g, "w", &info), BT_OK);
        assert_int_equal(info.size_bytes, 0);
        assert_non_null(info.data);
        bt_gguf_close(g);
        t.offset = 64; /* but it must still start inside the file */
        assert_int_equal(open_tensor(&t), BT_ERR_FORMAT);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gguf_stories260k),
        cmocka_unit_test(test_gguf_v1_refused),
        cmocka_unit_test(test_gguf_large_vocabulary),
        cmocka_unit_test(test_gguf_missing_file),
        cmocka_unit_test(test_gguf_round_trip),
        cmocka_unit_test(test_gguf_writer_replaces_key),
        cmocka_unit_test(test_gguf_writer_errors_leave_no_file),
        cmocka_unit_test(test_gguf_alloc_faults),
        cmocka_unit_test(test_gguf_truncated_at_every_offset),
        cmocka_unit_test(test_gguf_bad_magic_and_version),
        cmocka_unit_test(test_gguf_huge_counts),
        cmocka_unit_test(test_gguf_length_overflows),
        cmocka_unit_test(test_gguf_bad_types),
        cmocka_unit_test(test_gguf_duplicates_and_alignment),
        cmocka_unit_test(test_gguf_alignment_64),
        cmocka_unit_test(test_gguf_bad_tensor_records),
        cmocka_unit_test(test_gguf_unknown_tensor_type),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
