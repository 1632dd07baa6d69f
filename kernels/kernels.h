/* SPDX-License-Identifier: MIT */
/*
 * kernels.h - the compute backend interface: one ops table, chosen by name at run time.
 *
 * The engine runs a Llama forward pass only through these wrappers, so the same code drives the
 * CPU backend (always built) and the CUDA backend (built when CUDA is found). All activation,
 * weight and KV pointers passed to an op live in the backend's memory space (host memory for
 * "cpu"); bt_backend_alloc/upload/download move data in and out of it.
 *
 * Determinism contract (every backend): each output element of every op is computed with a
 * reduction order that depends only on that element's own inputs, never on how many rows are in
 * the batch or where a row sits in it. A request therefore yields bit-identical logits whether
 * it runs alone or inside any batch (batch invariance); the engine's equivalence tests rely on it.
 *
 * Threads: a backend object is driven by one thread at a time (the engine's compute thread);
 * the backend may use worker threads of its own inside an op.
 */
#ifndef BATON_KERNELS_H
#define BATON_KERNELS_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "../common/status.h"

#ifdef __cplusplus
extern "C" { /* the CUDA backend's .cu files include this header */
#endif

/* Element types; the numeric ids are GGUF/ggml's, so tensor records map directly. */
typedef enum {
    BT_TYPE_F32 = 0,
    BT_TYPE_F16 = 1,
    BT_TYPE_Q8_0 = 8,
    BT_TYPE_BF16 = 30,
} bt_type_t;

#define BT_QK8_0 32 /* elements per Q8_0 block: one fp16 scale then 32 int8 */

/* Limits every backend supports; the engine refuses models beyond them at creation (a model
 * file is input, so it gets an error, never an assert inside a kernel). */
#define BT_MAX_HEAD_DIM 256 /* attention head width; must also be even (RoPE pairs) */
#define BT_MAX_GQA_GROUP 32 /* query heads per KV head */

typedef struct {
    uint16_t d; /* fp16 scale */
    int8_t qs[BT_QK8_0];
} bt_block_q8_0_t;

/* Name of a type ("f32", "q8_0"); NULL for an id this tree does not support. */
const char *bt_type_name(int type);
/* The type named name ("f32", "f16", "bf16", "q8_0"), or -1. */
int bt_type_parse(const char *name);
/* Bytes used by one row of n elements of the type; 0 if n is not a multiple of the type's
 * block size or the type is unsupported. */
size_t bt_type_row_bytes(int type, int64_t n);

/*
 * A 2-D weight matrix, row-major: rows = output features, cols = input features (ggml's ne[1],
 * ne[0]). Rows are contiguous and each is bt_type_row_bytes(type, cols) bytes. The data is
 * borrowed (e.g. from an mmap'ed model file).
 */
typedef struct {
    bt_type_t type;
    int64_t rows;
    int64_t cols;
    const void *data;
} bt_tensor_t;

/*
 * One layer of the paged KV cache. Block b of the layer starts at data + b * block_bytes and
 * holds K[block_size][n_kv_heads][head_dim] followed by V of the same shape, so that a run of
 * consecutive block ids is one contiguous range of memory (one transfer per run per layer).
 */
typedef struct {
    void *data;
    bt_type_t type;     /* BT_TYPE_F32, BT_TYPE_F16 or BT_TYPE_BF16 */
    int32_t block_size; /* tokens per block */
    int32_t n_kv_heads;
    int32_t head_dim;
    size_t block_bytes; /* 2 * block_size * n_kv_heads * head_dim * element size */
} bt_kv_layer_t;

/* One sequence's share of a batch, as seen by the attention ops. */
typedef struct {
    int32_t row0;          /* first row of this sequence's new tokens in q/k/v/out */
    int32_t n_new;         /* number of new tokens (rows) of the sequence in this batch */
    int32_t n_past;        /* tokens already cached; new token i sits at position n_past + i */
    const int32_t *blocks; /* block table, covering positions [0, n_past + n_new) */
} bt_attn_seq_t;

/* What leaves the device at the end of a step (bt_step_shape_t.out_kind). */
typedef enum {
    BT_STEP_OUT_LOGITS = 0,      /* the logits rows (download) */
    BT_STEP_OUT_ARGMAX = 1,      /* each row's greedy token (argmax_rows) */
    BT_STEP_OUT_TOPK = 2,        /* each row's k best logits (topk_rows) */
    BT_STEP_OUT_TOPK_TOTALS = 3, /* the same and the rows' window totals (window_totals) */
} bt_step_out_t;

/* A pure decode step as the engine knows it before running it: one new token and its logits
 * per sequence, no per-layer hook. Everything that decides the step's ops, their by-value
 * arguments and their launch shapes follows from these numbers and the engine's fixed buffers;
 * what varies between steps of one shape (token ids, positions, block tables, each sequence's
 * context length) is data the ops upload. */
typedef struct {
    int32_t n_seqs;   /* sequences of the batch */
    int32_t rows;     /* new tokens (rows) of the batch */
    int32_t n_out;    /* rows whose logits are wanted, all in one piece */
    int32_t out_kind; /* bt_step_out_t */
    /* candidates per row: 1 for ARGMAX, 2..BT_TOPK_MAX for TOPK and TOPK_TOTALS, else 0 */
    int32_t k;
    int32_t n_layers;    /* layers of the model */
    int32_t block_size;  /* KV tokens per block */
    int32_t n_kv_blocks; /* KV blocks in all the batch's block tables together */
    int32_t max_len;     /* largest context of the batch after the step (n_past + 1), tokens */
} bt_step_shape_t;

typedef struct {
    int n_threads;              /* worker threads, including the caller; 0: all online cores */
    int64_t max_rows;           /* most rows (tokens) any op will see in one call; sizes scratch */
    int64_t max_cols;           /* widest matmul input (columns) any op will see */
    int device;                 /* device ordinal for GPU backends */
    int allow_nondeterministic; /* 1: may use faster batch-variant paths (e.g. BLAS for large
                                 * f32 GEMMs); 0 (default): the determinism contract holds */
} bt_backend_params_t;

typedef struct bt_backend_ops {
    const char *name;
    int device_memory; /* 1: the backend's memory is not host-addressable, so weights and
                        * tables must be uploaded (bt_backend_device_memory); 0: host memory */
    void (*destroy)(void *ctx);

    void *(*alloc)(void *ctx, size_t size_bytes); /* NULL on failure */
    void (*free)(void *ctx, void *ptr);           /* NULL allowed */
    void (*upload)(void *ctx, void *dst, const void *src_host, size_t size_bytes);
    void (*download)(void *ctx, void *dst_host, const void *src, size_t size_bytes);
    void (*sync)(void *ctx); /* optional */

    /* y[m][w.rows] = x[m][w.cols] . w^T (f32 activations, any weight type). */
    void (*matmul)(void *ctx, float *y, const bt_tensor_t *w, const float *x, int64_t m);
    /* y[i] = row ids[i] of the table, converted to f32; ids are in range (checked by caller). */
    void (*get_rows)(void *ctx, float *y, const bt_tensor_t *table, const int32_t *ids, int64_t m);
    /* y[i] = x[i] * w / sqrt(mean(x[i]^2) + eps) for m rows of n. y may alias x. */
    void (*rmsnorm)(void *ctx, float *y, const float *x, const float *w, int64_t m, int64_t n,
                    float eps);
    /* In-place rotary embedding of adjacent pairs (x[2i], x[2i+1]) of each head, angle
     * pos[row] * inv_freq[i]; x is [m][n_heads * head_dim]. */
    void (*rope)(void *ctx, float *x, const int32_t *pos, int64_t m, int n_heads, int head_dim,
                 const float *inv_freq);
    /* y[i] = silu(gate[i]) * up[i] for n elements. y may alias gate. */
    void (*swiglu)(void *ctx, float *y, const float *gate, const float *up, int64_t n);
    /* y[i] += x[i] for n elements. */
    void (*add)(void *ctx, float *y, const float *x, int64_t n);
    /* y[i] = x[rows[i]] for m rows of n floats (rows[] in host memory). */
    void (*gather_rows)(void *ctx, float *y, const float *x, const int32_t *rows, int64_t m,
                        int64_t n);
    /* Write each sequence's new k/v rows ([rows][n_kv_heads * head_dim]) into its blocks. */
    void (*kv_store)(void *ctx, const bt_kv_layer_t *kv, const float *k, const float *v,
                     const bt_attn_seq_t *seqs, int n_seqs);
    /* Causal attention of every new row over its sequence's cached positions [0, pos]; q and
     * out are [rows][n_heads * head_dim]; heads map to KV heads by n_heads / n_kv_heads (GQA). */
    void (*attention)(void *ctx, float *out, const float *q, const bt_kv_layer_t *kv,
                      const bt_attn_seq_t *seqs, int n_seqs, int n_heads, float scale);
    /* Optional fused forms of the ops above (NULL: the wrappers compose them from matmul, add
     * and swiglu). Each row of each result is computed exactly as the composition computes it,
     * so in the deterministic mode a backend's fused and composed forms agree bit for bit.
     * matmul_multi: y[t][m][w[t].rows] = x . w[t]^T for n_w (<= 4) weights of one type and
     * column count, all reading the same input x (a layer's q, k and v); the wrapper composes
     * weights that differ. In every fused op x must not overlap any output. */
    void (*matmul_multi)(void *ctx, int n_w, float *const *y, const bt_tensor_t *const *w,
                         const float *x, int64_t m);
    /* y[m][w.rows] += x . w^T (an output projection and its residual add); x must not
     * overlap y, here and in matmul_swiglu. */
    void (*matmul_add)(void *ctx, float *y, const bt_tensor_t *w, const float *x, int64_t m);
    /* y[m][gate.rows] = silu(x . gate^T) * (x . up^T), gate and up of one type and shape (the
     * wrapper composes others). */
    void (*matmul_swiglu)(void *ctx, float *y, const bt_tensor_t *gate, const bt_tensor_t *up,
                          const float *x, int64_t m);
    /* Optional: matmul_multi and matmul_swiglu of rmsnorm(x, norm, eps) (x: m rows of the
     * weights' columns), without writing the normed rows anywhere. Each normed element is
     * computed exactly as the backend's rmsnorm computes it, so the bits are those of rmsnorm
     * followed by the op (a pre-norm layer's input and its projections in one go). */
    void (*rms_matmul_multi)(void *ctx, int n_w, float *const *y, const bt_tensor_t *const *w,
                             const float *x, const float *norm, float eps, int64_t m);
    void (*rms_matmul_swiglu)(void *ctx, float *y, const bt_tensor_t *gate, const bt_tensor_t *up,
                              const float *x, const float *norm, float eps, int64_t m);
    /* Optional: a pre-norm layer's whole FFN in place, x += silu(n . gate^T) * (n . up^T) .
     * down^T with n = rmsnorm(x, norm, eps): rms_matmul_swiglu into h ([m][gate.rows] floats,
     * the backend's to use or not), then matmul_add of down. In the deterministic mode it
     * gives exactly that composition's bits; otherwise the backend may keep the intermediate
     * products in lower precision (within the same tolerance as its other nondeterministic
     * matmuls), and h need not be written. */
    void (*rms_ffn)(void *ctx, float *x, const bt_tensor_t *gate, const bt_tensor_t *up,
                    const bt_tensor_t *down, const float *norm, float eps, int64_t m, float *h);
    /* Optional: rope of q (n_heads heads) and of k (kv's n_kv_heads) in place, then kv_store of
     * k and v: the three ops of a layer's attention input in one, with their bits. Every row
     * of q, k and v belongs to one of the sequences (rows 0 .. m - 1 are theirs). */
    void (*rope_kv_store)(void *ctx, float *q, float *k, const float *v, const int32_t *pos,
                          int64_t m, int n_heads, const float *inv_freq, const bt_kv_layer_t *kv,
                          const bt_attn_seq_t *seqs, int n_seqs);
    /* Optional (a host-memory backend may leave it NULL): out_host[i] = bt_argmax_f32 of row i
     * of x ([m][n]), so that greedy decoding moves m ids to the host instead of m x n logits. */
    void (*argmax_rows)(void *ctx, int32_t *out_host, const float *x, int64_t m, int64_t n);
    /* Optional: each row's k best entries (bt_topk_f32), ids and values to [m][k] host arrays,
     * so that top-k sampling moves m x k candidates to the host instead of m x n logits. */
    void (*topk_rows)(void *ctx, int32_t *ids_host, float *vals_host, const float *x, int64_t m,
                      int64_t n, int32_t k);
    /* Optional: the repetition penalty on rows of x ([m][n]) in place, before their argmax,
     * candidates or totals: for row i, each of the n_ids_host[i] (<= cap) distinct ids in
     * ids_host[i * cap ...] (all < n) has its logit l replaced by l / pen_host[i] if l > 0,
     * else by l * pen_host[i] (bt_penalize_logit). */
    void (*penalize_rows)(void *ctx, float *x, int64_t m, int64_t n, const int32_t *ids_host,
                          const int32_t *n_ids_host, const float *pen_host, int32_t cap);
    /* Optional: for each row i of x ([m][n]) with tau_host[i] > 0, its window total at that
     * temperature (bt_window_total_f32, the same bits) to totals_host[i]; 0 for the others. So
     * that sampling at a temperature without top-k can draw from the row's best candidates. */
    void (*window_totals)(void *ctx, double *totals_host, const float *x, const float *tau_host,
                          int64_t m, int64_t n);
    /* Optional, both or neither (NULL: every step runs op by op). step_begin: the ops up to
     * step_end are a pure decode step of this shape (read during the call, not kept); returns
     * 1 if the backend takes it as one recorded step (recorded on the first step of its kind,
     * replayed on later ones; outputs reach the host only in step_end), 0 to run it op by op.
     * step_end: runs the recorded step, copies its outputs to the host and waits for them;
     * BT_OK, or BT_AGAIN when nothing ran (the replay did not fit the step) and the caller
     * must run the step op by op again. */
    int (*step_begin)(void *ctx, const bt_step_shape_t *shape);
    int (*step_end)(void *ctx);
} bt_backend_ops_t;

typedef struct bt_backend bt_backend_t;

/* Creates a backend by registry name ("cpu", "cuda"). Returns BT_ERR_NOT_FOUND for a name
 * that is not built in, BT_ERR_UNSUPPORTED when it is built but unusable (no device). */
int bt_backend_create(const char *name, const bt_backend_params_t *params, bt_backend_t **out);
void bt_backend_destroy(bt_backend_t *be);
const char *bt_backend_name(const bt_backend_t *be);
/* 1 if pointers given to this backend's ops must be its own allocations (a GPU's memory), 0 if
 * host memory will do (weights can then stay where the model file was mapped). */
int bt_backend_device_memory(const bt_backend_t *be);
/* Comma-separated names of the backends built into this binary. */
const char *bt_backend_list(void);

void *bt_backend_alloc(bt_backend_t *be, size_t size_bytes);
void bt_backend_free(bt_backend_t *be, void *ptr);
void bt_backend_upload(bt_backend_t *be, void *dst, const void *src_host, size_t size_bytes);
void bt_backend_download(bt_backend_t *be, void *dst_host, const void *src, size_t size_bytes);
void bt_backend_sync(bt_backend_t *be);

void bt_matmul(bt_backend_t *be, float *y, const bt_tensor_t *w, const float *x, int64_t m);
/* The fused forms (ops table, matmul_multi, matmul_add, matmul_swiglu). Where the backend has
 * no fused op, or BATON_FUSED_OPS=0 was in the environment when it was created, they run as
 * the composition, using tmp ([m][w.rows] floats of backend memory) for the intermediate; the
 * results are the same bit for bit in the deterministic mode. */
void bt_matmul_multi(bt_backend_t *be, int n_w, float *const *y, const bt_tensor_t *const *w,
                     const float *x, int64_t m);
void bt_matmul_add(bt_backend_t *be, float *y, const bt_tensor_t *w, const float *x, int64_t m,
                   float *tmp);
void bt_matmul_swiglu(bt_backend_t *be, float *y, const bt_tensor_t *gate, const bt_tensor_t *up,
                      const float *x, int64_t m, float *tmp);
/* The same with the input first normed: rmsnorm(x, norm, eps) into xn ([m][cols] floats of
 * backend memory) and the op on xn, or the backend's rms_ op (xn then left as it was). */
void bt_rms_matmul_multi(bt_backend_t *be, int n_w, float *const *y, const bt_tensor_t *const *w,
                         const float *x, const float *norm, float eps, int64_t m, float *xn);
void bt_rms_matmul_swiglu(bt_backend_t *be, float *y, const bt_tensor_t *gate,
                          const bt_tensor_t *up, const float *x, const float *norm, float eps,
                          int64_t m, float *xn, float *tmp);
/* The pre-norm FFN in place (ops table, rms_ffn): x += swiglu of rmsnorm(x) through gate and
 * up, then down; h holds the swiglu rows ([m][gate.rows]) where it is composed, xn and tmp are
 * bt_rms_matmul_swiglu's, and xn is also matmul_add's tmp. */
void bt_rms_ffn(bt_backend_t *be, float *x, const bt_tensor_t *gate, const bt_tensor_t *up,
                const bt_tensor_t *down, const float *norm, float eps, int64_t m, float *h,
                float *xn, float *tmp);
/* rope of q and k (head_dim: kv's), then kv_store (ops table, rope_kv_store). */
void bt_rope_kv_store(bt_backend_t *be, float *q, float *k, const float *v, const int32_t *pos,
                      int64_t m, int n_heads, const float *inv_freq, const bt_kv_layer_t *kv,
                      const bt_attn_seq_t *seqs, int n_seqs);
void bt_get_rows(bt_backend_t *be, float *y, const bt_tensor_t *table, const int32_t *ids,
                 int64_t m);
void bt_rmsnorm(bt_backend_t *be, float *y, const float *x, const float *w, int64_t m, int64_t n,
                float eps);
void bt_rope(bt_backend_t *be, float *x, const int32_t *pos, int64_t m, int n_heads, int head_dim,
             const float *inv_freq);
void bt_swiglu(bt_backend_t *be, float *y, const float *gate, const float *up, int64_t n);
void bt_add(bt_backend_t *be, float *y, const float *x, int64_t n);
void bt_gather_rows(bt_backend_t *be, float *y, const float *x, const int32_t *rows, int64_t m,
                    int64_t n);
void bt_kv_store(bt_backend_t *be, const bt_kv_layer_t *kv, const float *k, const float *v,
                 const bt_attn_seq_t *seqs, int n_seqs);
void bt_attention(bt_backend_t *be, float *out, const float *q, const bt_kv_layer_t *kv,
                  const bt_attn_seq_t *seqs, int n_seqs, int n_heads, float scale);
/* Brackets a pure decode step (ops table: step_begin, step_end). bt_backend_step_begin returns
 * 1 if the backend records or replays the step, 0 (always, for a backend without the ops) if
 * it runs op by op as usual; only after a 1 is bt_backend_step_end called, which returns BT_OK
 * or BT_AGAIN: nothing ran, run the step's ops again (they then run op by op). */
int bt_backend_step_begin(bt_backend_t *be, const bt_step_shape_t *shape);
int bt_backend_step_end(bt_backend_t *be);

/* out_host[i] = the greedy token of row i of x ([m][n] in backend memory). */
void bt_argmax_rows(bt_backend_t *be, int32_t *out_host, const float *x, int64_t m, int64_t n);

/* The first index of the largest of x[0, n): NaNs never win, and 0 when x[0] is NaN or nothing
 * is larger than it (so 0 for n <= 0). Host memory. */
int32_t bt_argmax_f32(const float *x, int64_t n);

/* Most candidates bt_topk_rows returns per row. */
#define BT_TOPK_MAX 256
/* The k (1 <= k <= min(n, BT_TOPK_MAX)) best entries of each row of x ([m][n] in backend
 * memory): ids and values into [m][k] host arrays. */
void bt_topk_rows(bt_backend_t *be, int32_t *ids_host, float *vals_host, const float *x, int64_t m,
                  int64_t n, int32_t k);
/* The k best entries of x[0, n) (1 <= k <= n), best first: larger values first, equal values
 * (-0 equals +0) by lower index, NaNs after every number. The order the sampler sorts its
 * candidates in, so its first k candidates are these. Host memory. */
void bt_topk_f32(const float *x, int64_t n, int32_t k, int32_t *ids, float *vals);
/* Most distinct recent tokens a row's repetition penalty names when it is applied where the
 * logits are (bt_penalize_rows); a sampler that looks further back takes whole rows. */
#define BT_PENALTY_MAX 256
/* The repetition penalty of one logit (llama.cpp's rule): the sampler's and every backend's. */
static inline float bt_penalize_logit(float l, float pen)
{
    return l > 0 ? l / pen : l * pen;
}
/* The penalize_rows op (rows [m][n] in backend memory), or in place on host memory. */
void bt_penalize_rows(bt_backend_t *be, float *x, int64_t m, int64_t n, const int32_t *ids_host,
                      const int32_t *n_ids_host, const float *pen_host, int32_t cap);
/* The largest number of x[0, n) (NaNs ignored): the value bt_topk_f32 puts first; -inf when
 * there is none. Host memory. */
float bt_max_f32(const float *x, int64_t n);
/* The window total of x[0, n) at temperature tau > 0 (window.h): the sum of the weights
 * bt_window_weight(x[i], max, tau) in window.h's fixed order, max the largest number of x; 0
 * when that is not finite. Host memory. */
double bt_window_total_f32(const float *x, int64_t n, float tau);
/* Each row's window total at tau_host[i] to totals_host[i] (0 where tau_host[i] is not
 * positive), rows [m][n] in backend memory. */
void bt_window_totals(bt_backend_t *be, double *totals_host, const float *x, const float *tau_host,
                      int64_t m, int64_t n);
/* The order bt_topk_f32 ranks values by, as an unsigned key (larger is better): NaN lowest,
 * -0 and +0 equal. */
static inline uint32_t bt_topk_key(float v)
{
    uint32_t u;
    memcpy(&u, &v, sizeof u);
    if (v != v)
        return 0;
    if (v == 0)
        u = 0;
    return (u & 0x80000000u) ? ~u : u | 0x80000000u;
}

/* Backend constructors, listed in the registry (kernels.c). Each returns a status and writes
 * *ops and *ctx only on success. */
typedef int (*bt_backend_create_fn)(const bt_backend_params_t *params, const bt_backend_ops_t **ops,
                                    void **ctx);
int bt_cpu_backend_create(const bt_backend_params_t *params, const bt_backend_ops_t **ops,
                          void **ctx);
/* Built only with CUDA (kernels/cuda); BT_ERR_UNSUPPORTED when no device is present. */
int bt_cuda_backend_create(const bt_backend_params_t *params, const bt_backend_ops_t **ops,
                           void **ctx);

#ifdef __cplusplus
}
#endif

#endif
