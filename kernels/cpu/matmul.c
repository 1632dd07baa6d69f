/* SPDX-License-Identifier: MIT */
/*
 * matmul.c - y[m][rows] = x[m][cols] . W^T for F32, F16 and BF16 weights (Q8_0 is in
 * matmul_q8.c), and the matmul entry point of the ops table.
 *
 * The one thing to know: every output element y[i][j] owns one vector accumulator that runs
 * over the whole of cols in order (one FMA per vector of columns, zero-padded tail), followed
 * by one fixed horizontal sum. The register tile (up to MR tokens x NR weight rows) only
 * decides which accumulators share loads, so y[i][j] is bit-identical whatever m, the row's
 * place in the batch, the tile shape or the thread count (kernels.h determinism contract).
 *
 * Precision: F16 and BF16 weights are widened to f32 exactly (cvtph / a 16-bit shift) and
 * multiplied with the f32 activations, so every type is an f32 dot product of the exactly
 * dequantized weights with f32 accumulation; against a double reference the error is about
 * (cols / VW + log2 VW) * 2^-24 * sum |x * w| at worst, far less in practice. (llama.cpp
 * rounds the activations to f16 first; we do not.)
 *
 * Blocking: threads take chunks of NC weight rows; inside a chunk the tokens are walked in
 * blocks of MB rows sized to keep the activation block in L2 while the NR weight rows of a
 * tile are reused from L1 across the MB / MR tiles of the block. On the Zen 4 development
 * machine the 4 x 4 AVX-512 tile runs at ~107 GFLOP/s per core, over 90% of its FMA peak;
 * decode (m = 1) walks one weight row at a time and reads weights at DRAM speed.
 */
#include <assert.h>

#include "cpu_impl.h"
#include "simd.h"

#define MR 4        /* tokens per register tile */
#define NR 4        /* weight rows per register tile */
#define PF_MAX_M 16 /* up to this many tokens, tiles prefetch the next tile's weight rows */
#define L2_X_BYTES (128 * 1024)

typedef struct {
    float *y;
    const float *x;
    const uint8_t *w;
    int type;
    int64_t m, n, k;
    size_t w_stride; /* bytes per weight row */
    int64_t nc;      /* weight rows per task, a multiple of NR */
    int64_t mb;      /* tokens per cache block, a multiple of MR */
} mm_job_t;

static BT_ALWAYS_INLINE bt_vf load_w(int type, const uint8_t *row, int64_t k)
{
    if (type == BT_TYPE_F32)
        return bt_vf_load((const float *)row + k);
    if (type == BT_TYPE_F16)
        return bt_vf_load_f16((const uint16_t *)row + k);
    return bt_vf_load_bf16((const uint16_t *)row + k);
}

/* The last n < VW columns, widened exactly (the same values load_w gives), zero-padded. */
static BT_ALWAYS_INLINE bt_vf load_w_part(int type, const uint8_t *row, int64_t k, int n)
{
    float t[BT_VW] = {0};
    for (int l = 0; l < n; l++) {
        if (type == BT_TYPE_F32)
            t[l] = ((const float *)row)[k + l];
        else if (type == BT_TYPE_F16)
            t[l] = bt_fp16_to_f32(((const uint16_t *)row)[k + l]);
        else
            t[l] = bt_bf16_to_f32(((const uint16_t *)row)[k + l]);
    }
    return bt_vf_load(t);
}

/* The microkernel: an mr x nr tile of y, each element one accumulator over all K. With pf
 * set it also prefetches the next nr weight rows (into L2), which the next tile will stream:
 * at small m the kernel waits on DRAM, and the hardware prefetcher alone does not keep nr
 * concurrent row streams busy (measured: m = 4 goes from 63 to 89 GFLOP/s). */
static BT_ALWAYS_INLINE void mm_tile(const int mr, const int nr, const int pf, const int type,
                                     const float *x, int64_t ldx, const uint8_t *w, size_t ldw,
                                     int64_t K, float *y, int64_t ldy)
{
    bt_vf acc[MR][NR];
    for (int i = 0; i < mr; i++)
        for (int j = 0; j < nr; j++)
            acc[i][j] = bt_vf_zero();
    int64_t k = 0;
    for (; k + BT_VW <= K; k += BT_VW) {
        bt_vf wv[NR];
        for (int j = 0; j < nr; j++) {
            if (pf)
                __builtin_prefetch(w + (j + nr) * ldw + k * (type == BT_TYPE_F32 ? 4 : 2), 0, 2);
            wv[j] = bt_vf_in_reg(load_w(type, w + j * ldw, k));
        }
        bt_vf xv[MR];
        for (int i = 0; i < mr; i++)
            xv[i] = bt_vf_in_reg(bt_vf_load(x + i * ldx + k));
        for (int i = 0; i < mr; i++)
            for (int j = 0; j < nr; j++)
                acc[i][j] = bt_vf_fma(xv[i], wv[j], acc[i][j]);
    }
    if (k < K) {
        int rem = (int)(K - k);
        bt_vf wv[NR];
        for (int j = 0; j < nr; j++)
            wv[j] = load_w_part(type, w + j * ldw, k, rem);
        for (int i = 0; i < mr; i++) {
            bt_vf xv = bt_vf_load_part(x + i * ldx + k, rem);
            for (int j = 0; j < nr; j++)
                acc[i][j] = bt_vf_fma(xv, wv[j], acc[i][j]);
        }
    }
    for (int i = 0; i < mr; i++)
        for (int j = 0; j < nr; j++)
            y[i * ldy + j] = bt_vf_hsum(acc[i][j]);
}

/* One function per weight type with mr and nr turned into constants. */
#define MM_TILES(NAME, TYPE)                                                                       \
    static void NAME(int mr, int nr, int pf, const float *x, int64_t ldx, const uint8_t *w,        \
                     size_t ldw, int64_t K, float *y, int64_t ldy)                                 \
    {                                                                                              \
        if (nr == NR && pf) {                                                                      \
            switch (mr) {                                                                          \
            case 4: mm_tile(4, NR, 1, TYPE, x, ldx, w, ldw, K, y, ldy); return;                    \
            case 3: mm_tile(3, NR, 1, TYPE, x, ldx, w, ldw, K, y, ldy); return;                    \
            case 2: mm_tile(2, NR, 1, TYPE, x, ldx, w, ldw, K, y, ldy); return;                    \
            default: mm_tile(1, NR, 1, TYPE, x, ldx, w, ldw, K, y, ldy); return;                   \
            }                                                                                      \
        }                                                                                          \
        if (nr == NR) {                                                                            \
            switch (mr) {                                                                          \
            case 4: mm_tile(4, NR, 0, TYPE, x, ldx, w, ldw, K, y, ldy); return;                    \
            case 3: mm_tile(3, NR, 0, TYPE, x, ldx, w, ldw, K, y, ldy); return;                    \
            case 2: mm_tile(2, NR, 0, TYPE, x, ldx, w, ldw, K, y, ldy); return;                    \
            default: mm_tile(1, NR, 0, TYPE, x, ldx, w, ldw, K, y, ldy); return;                   \
            }                                                                                      \
        }                                                                                          \
        for (int j = 0; j < nr; j++) {                                                             \
            const uint8_t *wj = w + (size_t)j * ldw;                                               \
            switch (mr) {                                                                          \
            case 4: mm_tile(4, 1, 0, TYPE, x, ldx, wj, ldw, K, y + j, ldy); break;                 \
            case 3: mm_tile(3, 1, 0, TYPE, x, ldx, wj, ldw, K, y + j, ldy); break;                 \
            case 2: mm_tile(2, 1, 0, TYPE, x, ldx, wj, ldw, K, y + j, ldy); break;                 \
            default: mm_tile(1, 1, 0, TYPE, x, ldx, wj, ldw, K, y + j, ldy); break;                \
            }                                                                                      \
        }                                                                                          \
    }

MM_TILES(mm_tiles_f32, BT_TYPE_F32)
MM_TILES(mm_tiles_f16, BT_TYPE_F16)
MM_TILES(mm_tiles_bf16, BT_TYPE_BF16)

typedef void (*mm_tiles_fn)(int mr, int nr, int pf, const float *x, int64_t ldx, const uint8_t *w,
                            size_t ldw, int64_t K, float *y, int64_t ldy);

static void mm_task(void *arg, int64_t task, int thread)
{
    const mm_job_t *jb = arg;
    mm_tiles_fn tiles = jb->type == BT_TYPE_F32   ? mm_tiles_f32
                        : jb->type == BT_TYPE_F16 ? mm_tiles_f16
                                                  : mm_tiles_bf16;
    int64_t j0 = task * jb->nc;
    int64_t j1 = j0 + jb->nc < jb->n ? j0 + jb->nc : jb->n;
    /* One token: one weight row at a time, a single DRAM stream, is fastest. */
    const int nr_max = jb->m == 1 ? 1 : NR;
    const int pf = jb->m <= PF_MAX_M;
    for (int64_t m0 = 0; m0 < jb->m; m0 += jb->mb) {
        int64_t m1 = m0 + jb->mb < jb->m ? m0 + jb->mb : jb->m;
        for (int64_t j = j0; j < j1; j += nr_max) {
            int nr = j1 - j < nr_max ? (int)(j1 - j) : nr_max;
            const uint8_t *wj = jb->w + (size_t)j * jb->w_stride;
            for (int64_t i = m0; i < m1; i += MR) {
                int mr = m1 - i < MR ? (int)(m1 - i) : MR;
                tiles(mr, nr, pf, jb->x + i * jb->k, jb->k, wj, jb->w_stride, jb->k,
                      jb->y + i * jb->n + j, jb->n);
            }
        }
    }
}

/* Rows per task: enough tasks for dynamic balancing, at most 16 tiles each. */
static int64_t mm_chunk_rows(int64_t n, int n_threads)
{
    int64_t tiles = (n + NR - 1) / NR;
    int64_t per = tiles / ((int64_t)n_threads * 8);
    per = per < 1 ? 1 : per > 16 ? 16 : per;
    return per * NR;
}

static int64_t mm_block_tokens(int64_t k)
{
    if (k <= 0)
        return 512;
    int64_t mb = L2_X_BYTES / (k * (int64_t)sizeof(float));
    mb = mb / MR * MR;
    return mb < MR ? MR : mb;
}

void bt_cpu_multi_task(void *arg, int64_t task, int thread)
{
    const bt_cpu_multi_t *mu = arg;
    int t = 0;
    while (task >= mu->first[t + 1])
        t++;
    mu->fn(mu->arg[t], task - mu->first[t], thread);
}

void bt_cpu_matmul_multi(void *ctx, int n_w, float *const *y, const bt_tensor_t *const *w,
                         const float *x, int64_t m)
{
    bt_cpu_ctx_t *c = ctx;
    assert(n_w >= 1 && n_w <= BT_CPU_MULTI_MAX);
    if (m <= 0)
        return;
    if (w[0]->type == BT_TYPE_Q8_0) {
        bt_cpu_matmul_q8(c, n_w, y, w, x, m);
        return;
    }
    mm_job_t jobs[BT_CPU_MULTI_MAX];
    bt_cpu_multi_t mu = {.fn = mm_task};
    for (int t = 0; t < n_w; t++) {
        assert(w[t]->type == BT_TYPE_F32 || w[t]->type == BT_TYPE_F16 ||
               w[t]->type == BT_TYPE_BF16);
        jobs[t] = (mm_job_t){
            .y = y[t],
            .x = x,
            .w = w[t]->data,
            .type = w[t]->type,
            .m = m,
            .n = w[t]->rows,
            .k = w[t]->cols,
            .w_stride = bt_type_row_bytes(w[t]->type, w[t]->cols),
            .nc = mm_chunk_rows(w[t]->rows, c->n_threads),
            .mb = mm_block_tokens(w[t]->cols),
        };
        mu.arg[t] = &jobs[t];
        mu.first[t + 1] = mu.first[t] + (w[t]->rows + jobs[t].nc - 1) / jobs[t].nc;
    }
    bt_cpu_pool_run(c->pool, bt_cpu_multi_task, &mu, mu.first[n_w]);
}

void bt_cpu_matmul(void *ctx, float *y, const bt_tensor_t *w, const float *x, int64_t m)
{
    if (w->rows > 0)
        bt_cpu_matmul_multi(ctx, 1, &y, &w, x, m);
}
