/* SPDX-License-Identifier: MIT */
/*
 * cuda_impl.h - what the CUDA backend's files share: the backend context, the device layout of
 * attention tables, and the launchers each .cu file implements. Plain C, so that the host side
 * (cuda_backend.c) is compiled by the C compiler and only kernels go through nvcc.
 *
 * The one thing to know: every launcher takes the backend's one stream, sizes its own grid and
 * checks the launch; all device memory a launcher touches beyond its arguments (block tables,
 * bf16 activation copies, split attention partials) was allocated at create time and its size
 * is in the context, so nothing allocates on the request path.
 */
#ifndef BATON_CUDA_IMPL_H
#define BATON_CUDA_IMPL_H

#include <stddef.h>
#include <stdint.h>

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include "../kernels.h"
#include "../stepgraph.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Aborts with file:line on a CUDA error. Used on the request path, where an error means a bad
 * launch (a programmer error) or a lost device, neither of which an op can recover from. */
#define BT_CUDA_CHECK(expr) bt_cuda_check((int)(expr), #expr, __FILE__, __LINE__)
#define BT_CUBLAS_CHECK(expr) bt_cublas_check((int)(expr), #expr, __FILE__, __LINE__)
void bt_cuda_check(int err, const char *what, const char *file, int line);
void bt_cublas_check(int status, const char *what, const char *file, int line);

/* Attention positions are visited in tiles of this many (one per lane), and each query's
 * softmax state is built per chunk of positions (a multiple of the tile, BT_CUDA_ATTN_CHUNK
 * unless BATON_CUDA_ATTN_CHUNK says otherwise) and then merged chunk by chunk in order. Both
 * are fixed for a context, so a query's arithmetic depends only on its own position: split
 * (parallel chunks + combine) and sequential launches give the same bits. The chunk is also
 * how many blocks a decode row's attention can spread over, and its setting exists to measure
 * that; every daemon of a cluster must run with the same one. */
#define BT_CUDA_ATTN_TILE 32
#define BT_CUDA_ATTN_CHUNK 256
#define BT_CUDA_MAX_GROUP_SEQS 65535 /* sequences per attention launch: the kernels' grid.y */

/* Where and how a launcher launches: the backend's stream, and whether its kernels go as
 * programmatic dependent launches (launch.cuh). Only the GEMV launchers take it: with
 * BATON_CUDA_PDL=1 a GEMV's blocks may start while the kernel before it ends, pull the first
 * prefetch_bytes of the launch's weight rows into L2, and wait for it; the results are the
 * same bits either way. */
typedef struct {
    cudaStream_t stream;
    int pdl;
    int64_t prefetch_bytes; /* with pdl; BATON_CUDA_PDL_PREFETCH_MB, default 16 */
} bt_cuda_launch_t;

/* One sequence of an attention call as the kernels see it (bt_attn_seq_t with its block table
 * moved into the packed device table: blocks are at table + blk). */
typedef struct {
    int32_t row0, n_new, n_past, blk;
} bt_cuda_seq_t;

/* A pinned host buffer and a device buffer of the same capacity for small per-call tables
 * (block tables, gather indices). The last upload is remembered so that the same table sent
 * again (every layer of a forward sends the same one) costs a host memcmp, not a copy. */
typedef struct {
    void *host;         /* pinned, cap bytes; holds what was last uploaded */
    void *dev;          /* cap bytes */
    size_t cap;         /* bytes */
    size_t len;         /* bytes of the last upload; 0: none */
    cudaEvent_t copied; /* recorded after the last upload; host may be rewritten once done */
} bt_cuda_stage_t;

typedef struct {
    int device;
    int nondet;         /* 1: cuBLAS for large matmuls (bf16 activations) */
    int64_t gemv_max_m; /* with nondet, matmuls of more rows than this go to cuBLAS */
    cudaStream_t stream;
    cublasHandle_t blas;
    void *blas_ws; /* cuBLAS workspace, so cuBLAS never allocates after create */
    size_t blas_ws_bytes;
    /* bf16/f16 copy of a matmul's activations, act16_elems elements; or act16_elems / 2 floats
     * of normed rows (cuda_backend.c, the rmsnorm-fused matmuls that run as their composition) */
    void *act16;
    size_t act16_elems;
    float *glu_up; /* with nondet: the up product of a cuBLAS matmul_swiglu, glu_up_floats */
    size_t glu_up_floats;
    float *attn_part; /* split attention partial states, attn_part_floats floats */
    size_t attn_part_floats;
    int32_t *attn_count; /* split attention: chunk blocks done per group, attn_count_n, zeroed */
    size_t attn_count_n;
    bt_cuda_stage_t seqs; /* bt_cuda_seq_t[n_seqs] then the block ids */
    bt_cuda_stage_t rows; /* gather_rows indices */
    int32_t *argmax_out;  /* argmax_rows results, argmax_cap of them */
    int64_t argmax_cap;
    int32_t *topk_ids; /* topk_rows results, argmax_cap rows of BT_TOPK_MAX */
    float *topk_vals;
    bt_cuda_stage_t tau;  /* window_totals temperatures, argmax_cap floats */
    double *win_totals;   /* window_totals results, argmax_cap of them */
    uint8_t *pack;        /* host scratch of seqs.cap bytes to build a table before staging */
    int n_sm;             /* streaming multiprocessors, for grid sizing */
    int attn_chunk;       /* positions per attention softmax chunk (BT_CUDA_ATTN_CHUNK) */
    int pdl;              /* 1: GEMVs as programmatic dependent launches (BATON_CUDA_PDL=1) */
    int64_t pdl_prefetch; /* bytes of a PDL GEMV's weights asked of L2 before its wait */
    /* 1: nondet prefill attention tries attention_fa2.cu first (BATON_CUDA_PREFILL_ATTN=fa2) */
    int prefill_fa2;
    /* penalize_rows tables: ids (argmax_cap rows of BT_PENALTY_MAX int32), their counts
     * (argmax_cap int32) and the penalties (argmax_cap floats) */
    bt_cuda_stage_t pen_ids, pen_n, pen_f;
    /* Decode steps as CUDA graphs (BATON_CUDA_GRAPHS=1, cuda_graph.c); all zero when off. */
    int graphs;          /* 1: step_begin may capture and replay */
    int graph_warned;    /* a replay mismatch was logged */
    int graph_misses;    /* replay mismatches so far */
    int graph_strict;    /* BATON_CUDA_GRAPHS=2: a replay mismatch aborts */
    bt_stepgraph_t sg;   /* recorded steps and the step in progress (sg.mode) */
    uint8_t *arena_host; /* pinned, sg.arena_cap bytes: a graph step's inputs */
    uint8_t *arena_dev;  /* the device side, at the same offsets */
} bt_cuda_ctx_t;

/* cuda_graph.c: decode steps captured once per key and replayed (docs/cuda.md). */
/* Allocates the input arena and the table of graphs (create time). */
int bt_cuda_graph_init(bt_cuda_ctx_t *c);
/* Destroys every graph and frees the arena; safe on a context graph_init never ran on. */
void bt_cuda_graph_fini(bt_cuda_ctx_t *c);
/* The ops table's step_begin and step_end (the device is current). */
int bt_cuda_graph_begin(bt_cuda_ctx_t *c, const bt_step_shape_t *shape);
int bt_cuda_graph_end(bt_cuda_ctx_t *c);
/* In a graph step: traces an op's by-value arguments; 1 if it must launch (capture), 0 if
 * not (replay: the graph launches it). */
int bt_cuda_graph_op(bt_cuda_ctx_t *c, const char *op, const uint64_t *args, size_t n);
/* In a graph step: an upload of host bytes to dst through the arena. */
void bt_cuda_graph_upload(bt_cuda_ctx_t *c, void *dst, const void *src, size_t bytes);
/* In a graph step: the device copy of a host table of bytes (in the arena). */
const void *bt_cuda_graph_input(bt_cuda_ctx_t *c, const void *src, size_t bytes);
/* In a graph step: the device copy of a packed attention table (bt_cuda_seq_t[n_seqs], then
 * the block ids) in a slot sized for any table of the step's key, so that its copy node moves
 * the same bytes on every replay; a table equal to the step's previous one is not copied
 * again. */
const void *bt_cuda_graph_table(bt_cuda_ctx_t *c, const void *src, size_t bytes, int n_seqs,
                                int32_t block_size);
/* In a graph step: a download (device src to host dst), done by step_end after the graph. */
void bt_cuda_graph_download(bt_cuda_ctx_t *c, void *dst, const void *src, size_t bytes);

/* elementwise.cu */
void bt_cuda_get_rows_launch(cudaStream_t st, float *y, const bt_tensor_t *table,
                             const int32_t *ids, int64_t m);
void bt_cuda_rmsnorm_launch(cudaStream_t st, float *y, const float *x, const float *w, int64_t m,
                            int64_t n, float eps);
void bt_cuda_rope_launch(cudaStream_t st, float *x, const int32_t *pos, int64_t m, int n_heads,
                         int head_dim, const float *inv_freq);
void bt_cuda_swiglu_launch(cudaStream_t st, float *y, const float *gate, const float *up,
                           int64_t n);
void bt_cuda_add_launch(cudaStream_t st, float *y, const float *x, int64_t n);
/* rows is a device array of m indices. */
void bt_cuda_gather_rows_launch(cudaStream_t st, float *y, const float *x, const int32_t *rows,
                                int64_t m, int64_t n);
/* out[i] = bt_argmax_f32 of row i of x ([m][n]); out is a device array of m. */
void bt_cuda_argmax_rows_launch(cudaStream_t st, int32_t *out, const float *x, int64_t m,
                                int64_t n);
/* topk.cu: row i's k best entries of x ([m][n]; bt_topk_f32's order) to ids and vals, device
 * arrays of [m][k]. 1 <= k <= BT_TOPK_MAX, k <= n. */
void bt_cuda_topk_rows_launch(cudaStream_t st, int32_t *ids, float *vals, const float *x, int64_t m,
                              int64_t n, int32_t k);
/* topk.cu: row i's window total at tau[i] (bt_window_total_f32's bits; 0 where tau[i] is not
 * positive) to totals[i]; totals and tau are device arrays of m. */
void bt_cuda_window_totals_launch(cudaStream_t st, double *totals, const float *x, const float *tau,
                                  int64_t m, int64_t n);
/* topk.cu: the repetition penalty in place on rows of x ([m][n]): for row i, the n_ids[i]
 * (<= cap) distinct ids at ids[i * cap] (all < n) get bt_penalize_logit(l, pen[i]), the host's
 * bits. ids ([m][cap]), n_ids and pen ([m]) are device arrays. */
void bt_cuda_penalize_rows_launch(cudaStream_t st, float *x, int64_t m, int64_t n,
                                  const int32_t *ids, const int32_t *n_ids, const float *pen,
                                  int32_t cap);
/* dst[i] = x[i] rounded to nearest even, as bf16 (type BT_TYPE_BF16) or fp16 (BT_TYPE_F16). */
void bt_cuda_convert_launch(cudaStream_t st, void *dst, int type, const float *x, int64_t n);
/* h[i] = silu(gate[i]) * up[i] for n elements of one 16-bit type (BF16 or F16), computed in
 * f32 as the swiglu op and rounded to nearest even (a cuBLAS FFN's products to its down input). */
void bt_cuda_swiglu16_launch(cudaStream_t st, void *h, const void *gate, const void *up, int type,
                             int64_t n);
/* The two above in one pass: dst ([m][n], 16-bit type) = rmsnorm(x, w, eps) converted; the bits
 * of bt_cuda_rmsnorm_launch into an f32 buffer followed by bt_cuda_convert_launch of it. */
void bt_cuda_rms_convert_launch(cudaStream_t st, void *dst, int type, const float *x,
                                const float *w, int64_t m, int64_t n, float eps);

/* matmul.cu: y[m][w->rows] = x . w^T with the batch-invariant GEMV kernels (any m). */
void bt_cuda_gemv_launch(bt_cuda_launch_t ln, float *y, const bt_tensor_t *w, const float *x,
                         int64_t m);
/* The fused forms, each the same bits as the plain launches followed by the element-wise op.
 * y[t] = x . w[t]^T for n_w <= BT_CUDA_GEMV_MAX_W weights of one type and column count, in
 * one launch. */
#define BT_CUDA_GEMV_MAX_W 4
void bt_cuda_gemv_multi_launch(bt_cuda_launch_t ln, int n_w, float *const *y,
                               const bt_tensor_t *const *w, const float *x, int64_t m);
/* y += x . w^T; x must not overlap y. */
void bt_cuda_gemv_add_launch(bt_cuda_launch_t ln, float *y, const bt_tensor_t *w, const float *x,
                             int64_t m);
/* y = silu(x . gate^T) * (x . up^T), gate and up of one type and shape; x must not overlap y. */
void bt_cuda_gemv_swiglu_launch(bt_cuda_launch_t ln, float *y, const bt_tensor_t *gate,
                                const bt_tensor_t *up, const float *x, int64_t m);
/* The multi and swiglu launches on rmsnorm(x, norm, eps) (norm: w's cols floats), which is not
 * written anywhere: the bits of bt_cuda_rmsnorm_launch into a 16-byte aligned buffer followed
 * by the plain launch on it, for every weight with bt_cuda_gemv_rms_exact. A weight without
 * (x or norm not 16-byte aligned, the weight fit for the 16-byte path) takes the scalar path:
 * right values, other bits. */
void bt_cuda_gemv_rms_multi_launch(bt_cuda_launch_t ln, int n_w, float *const *y,
                                   const bt_tensor_t *const *w, const float *x, const float *norm,
                                   float eps, int64_t m);
void bt_cuda_gemv_rms_swiglu_launch(bt_cuda_launch_t ln, float *y, const bt_tensor_t *gate,
                                    const bt_tensor_t *up, const float *x, const float *norm,
                                    float eps, int64_t m);
/* 1 if w takes the same dot path in the pre-norm launches on x and norm as in the plain ones on
 * an aligned buffer (the alignment of x and norm only matters on the 16-byte path). */
int bt_cuda_gemv_rms_exact(const bt_tensor_t *w, const float *x, const float *norm);

/* attention.cu. seqs and blocks are device tables; max_new is the largest n_new of the call. */
void bt_cuda_kv_store_launch(cudaStream_t st, const bt_kv_layer_t *kv, const float *k,
                             const float *v, const bt_cuda_seq_t *seqs, const int32_t *blocks,
                             int n_seqs, int32_t max_new);
typedef struct {
    float *out;
    const float *q;
    const bt_kv_layer_t *kv;
    const bt_cuda_seq_t *seqs; /* device */
    const int32_t *blocks;     /* device */
    int n_seqs;
    int n_heads;
    float scale;
    int32_t max_new; /* largest n_new */
    int32_t max_len; /* largest n_past + n_new */
    int32_t n_rows;  /* rows of q/out covered by the call (max of row0 + n_new) */
    int32_t chunk;   /* positions per softmax chunk (the context's) */
} bt_cuda_attn_args_t;
/* rope of q (n_heads) and k (kv->n_kv_heads) in place, then their rows' kv_store: one block per
 * row of each sequence of the staged table (max_new: the largest n_new). */
void bt_cuda_rope_kv_store_launch(cudaStream_t st, float *q, float *k, const float *v,
                                  const int32_t *pos, int n_heads, const float *inv_freq,
                                  const bt_kv_layer_t *kv, const bt_cuda_seq_t *seqs,
                                  const int32_t *blocks, int n_seqs, int32_t max_new);
/* Chooses split or sequential chunks (same bits either way); part is the split scratch, count
 * count_n zeroed counters (the kernels leave them zeroed), at least 4 x n_sm of them. */
void bt_cuda_attention_launch(cudaStream_t st, const bt_cuda_attn_args_t *a, float *part,
                              size_t part_floats, int32_t *count, size_t count_n, int n_sm);
/* Bytes of dynamic shared memory the attention kernel needs for head_dim; 0 if unsupported. */
size_t bt_cuda_attention_smem_bytes(int head_dim);
/* Raises the kernels' shared memory limit for head dims up to BT_MAX_HEAD_DIM (create time). */
int bt_cuda_attention_init(void);

/* attention_mma.cu: the same attention on tensor cores, for nondeterministic prefill only (Q
 * and softmax weights rounded to the cache's 16-bit type; a row's bits depend on its batch).
 * Returns BT_ERR_UNSUPPORTED without launching anything for a call it does not handle (cache
 * not BF16/F16, head_dim not a multiple of 16 up to 128, pointers not 16-byte aligned), so the
 * caller falls back to bt_cuda_attention_launch. */
int bt_cuda_attention_mma_launch(cudaStream_t st, const bt_cuda_attn_args_t *a);
/* Raises the tensor-core kernels' shared memory limits (create time). */
int bt_cuda_attention_mma_init(void);

/* attention_fa2.cu: the same attention and contract as attention_mma.cu (same arguments, same
 * calls refused with BT_ERR_UNSUPPORTED), FlashAttention-2 style on raw mma.sync: scores and
 * weights stay in registers and K/V tiles are double-buffered with cp.async. */
int bt_cuda_attention_fa2_launch(cudaStream_t st, const bt_cuda_attn_args_t *a);
/* Raises its kernels' shared memory limits (create time). */
int bt_cuda_attention_fa2_init(void);

#ifdef __cplusplus
}
#endif

#endif
