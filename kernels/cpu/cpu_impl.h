/* SPDX-License-Identifier: MIT */
/*
 * cpu_impl.h - what the CPU backend's source files share: the backend context and the op
 * entry points each file implements for the ops table in cpu_backend.c.
 *
 * The one thing to know: all scratch memory (quantized activations, attention tiles) is sized
 * once at create time from bt_backend_params_t, and every op splits its work only over output
 * elements, never over a reduction, so results do not depend on the thread count.
 */
#ifndef BATON_CPU_IMPL_H
#define BATON_CPU_IMPL_H

#include <stddef.h>
#include <stdint.h>

#include "../kernels.h"
#include "threadpool.h"

/* Attention work is done in tiles of this many cached positions (a multiple of every
 * vector width), and supports head_dim up to BT_CPU_ATTN_MAX_HEAD_DIM. */
#define BT_CPU_ATTN_TILE 64
#define BT_CPU_ATTN_MAX_HEAD_DIM BT_MAX_HEAD_DIM
/* Most query vectors (rows x heads sharing a KV head) one attention work item carries. */
#define BT_CPU_ATTN_MAX_QUERIES BT_MAX_GQA_GROUP

typedef struct {
    bt_cpu_pool_t *pool;
    int n_threads;

    /* Q8_0 activations of the current matmul: q8_cap elements of int8 (grown if a call
     * exceeds max_rows x max_cols) and q8_cap / 32 block scales. */
    int8_t *q8_qs;
    float *q8_d;
    size_t q8_cap;

    /* Per-thread attention scratch: K and V tiles converted to f32 plus query state;
     * attn_floats floats per thread. */
    float *attn;
    size_t attn_floats;
} bt_cpu_ctx_t;

/* Cache-line aligned allocation (64 bytes); free with free(). NULL on failure. */
void *bt_cpu_aligned_alloc(size_t size_bytes);

/* Several jobs of one task function as one pool run (one dispatch, one barrier): tasks
 * [first[t], first[t + 1]) are job t's, renumbered from 0. */
#define BT_CPU_MULTI_MAX 4
typedef struct {
    bt_cpu_task_fn fn;
    void *arg[BT_CPU_MULTI_MAX];
    int64_t first[BT_CPU_MULTI_MAX + 1];
} bt_cpu_multi_t;
void bt_cpu_multi_task(void *arg, int64_t task, int thread);

/* matmul.c */
void bt_cpu_matmul(void *ctx, float *y, const bt_tensor_t *w, const float *x, int64_t m);
/* The ops table's matmul_multi: n_w <= BT_CPU_MULTI_MAX weights of one type and column count
 * in one pool run (Q8_0: the input quantized once). */
void bt_cpu_matmul_multi(void *ctx, int n_w, float *const *y, const bt_tensor_t *const *w,
                         const float *x, int64_t m);

/* matmul_q8.c: y[t][m][w[t]->rows] for n_w Q8_0 weights of one column count. */
void bt_cpu_matmul_q8(bt_cpu_ctx_t *c, int n_w, float *const *y, const bt_tensor_t *const *w,
                      const float *x, int64_t m);
/* Quantizes one row of n floats (n % 32 == 0) to int8 values and per-32 scales, the way the
 * Q8_0 matmul does (round half to even; d = amax / 127). */
void bt_cpu_quantize_row_q8(const float *x, int8_t *qs, float *d, int64_t n);

/* elementwise.c */
void bt_cpu_get_rows(void *ctx, float *y, const bt_tensor_t *table, const int32_t *ids, int64_t m);
void bt_cpu_rmsnorm(void *ctx, float *y, const float *x, const float *w, int64_t m, int64_t n,
                    float eps);
void bt_cpu_rope(void *ctx, float *x, const int32_t *pos, int64_t m, int n_heads, int head_dim,
                 const float *inv_freq);
void bt_cpu_swiglu(void *ctx, float *y, const float *gate, const float *up, int64_t n);
void bt_cpu_add(void *ctx, float *y, const float *x, int64_t n);
void bt_cpu_gather_rows(void *ctx, float *y, const float *x, const int32_t *rows, int64_t m,
                        int64_t n);

/* attention.c */
void bt_cpu_kv_store(void *ctx, const bt_kv_layer_t *kv, const float *k, const float *v,
                     const bt_attn_seq_t *seqs, int n_seqs);
void bt_cpu_attention(void *ctx, float *out, const float *q, const bt_kv_layer_t *kv,
                      const bt_attn_seq_t *seqs, int n_seqs, int n_heads, float scale);
/* Floats of per-thread scratch bt_cpu_attention needs. */
size_t bt_cpu_attention_scratch_floats(void);

#endif
