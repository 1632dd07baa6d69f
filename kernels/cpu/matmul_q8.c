/* SPDX-License-Identifier: MIT */
/*
 * matmul_q8.c - y[m][rows] = x[m][cols] . W^T for Q8_0 weights, with int8 dot products.
 *
 * As in llama.cpp, the activation rows are first quantized to Q8_0-style blocks (32 int8
 * values and one scale per block; ours keeps the scale in f32 and rounds half to even) into
 * scratch sized at create time, and each 32-element block product is an exact integer dot
 * product, scaled by d_x * d_w and accumulated in f32.
 *
 * The one thing to know: as in matmul.c, each output element owns one accumulator that walks
 * all blocks in order with a fixed instruction sequence, whatever the tile shape, m or thread
 * count, so results are batch invariant. The AVX-512 VNNI path feeds vpdpbusd (u8 x s8) by
 * storing x as q + 128 and starting each block's integer sum at -128 * sum(w), computed once
 * per weight block and shared by the tile's tokens; the AVX2 path uses the sign trick with
 * maddubs; the plain-C path sums each block exactly in int32. Error against the f32 product is
 * dominated by activation rounding: |err| <= sum over blocks of (amax_b / 254) * sum_b |w|.
 */
#include <assert.h>
#include <stdlib.h>

#include "cpu_impl.h"
#include "simd.h"

#if defined(BT_CPU_AVX512) && defined(__AVX512VNNI__)
#define Q8_VNNI 1
#define NR 4
#elif defined(BT_CPU_AVX512) || defined(BT_CPU_AVX2)
#define Q8_AVX2 1
#define NR 2
#else
#define NR 4
#endif
#define MR 4
#define PF_MAX_M 16
#define L2_X_BYTES (256 * 1024)

typedef struct {
    float *y;
    const int8_t *xq; /* [m][k] quantized activations */
    const float *xd;  /* [m][k / 32] their scales */
    const bt_block_q8_0_t *w;
    int64_t m, n, k;
    int64_t nc, mb;
} q8_job_t;

#if defined(Q8_VNNI) || defined(Q8_AVX2)
static BT_ALWAYS_INLINE float hsum256(__m256 a)
{
    __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    __m128 s1 = _mm_add_ss(s2, _mm_movehdup_ps(s2));
    return _mm_cvtss_f32(s1);
}

/* Keeps a loaded vector in a register instead of letting GCC fold the load into every use. */
static BT_ALWAYS_INLINE __m256i q8_in_reg(__m256i a)
{
    __asm__("" : "+v"(a));
    return a;
}

/* The microkernel: an mr x nr tile of y over nb blocks, one 8-lane accumulator each; with pf
 * set it prefetches the next tile's weight rows into L2 (see matmul.c). */
static BT_ALWAYS_INLINE void q8_tile(const int mr, const int nr, const int pf, const int8_t *xq,
                                     const float *xd, int64_t k, const bt_block_q8_0_t *w, float *y,
                                     int64_t ldy)
{
    const int64_t nb = k / BT_QK8_0;
    __m256 acc[MR][NR];
    for (int i = 0; i < mr; i++)
        for (int j = 0; j < nr; j++)
            acc[i][j] = _mm256_setzero_ps();
#if defined(Q8_VNNI)
    const __m256i c80 = _mm256_set1_epi8((char)0x80);
#else
    const __m256i ones = _mm256_set1_epi16(1);
#endif
    for (int64_t b = 0; b < nb; b++) {
        __m256i wq[NR], wc[NR];
        __m256 dw[NR];
        for (int j = 0; j < nr; j++) {
            const bt_block_q8_0_t *blk = w + j * nb + b;
            if (pf)
                _mm_prefetch((const char *)(blk + nr * nb), _MM_HINT_T1);
            wq[j] = q8_in_reg(_mm256_loadu_si256((const __m256i *)blk->qs));
#if defined(Q8_VNNI)
            wc[j] = _mm256_sub_epi32(_mm256_setzero_si256(),
                                     _mm256_dpbusd_epi32(_mm256_setzero_si256(), c80, wq[j]));
#else
            wc[j] = _mm256_sign_epi8(wq[j], wq[j]);
#endif
            dw[j] = _mm256_set1_ps(_cvtsh_ss(blk->d));
        }
        for (int i = 0; i < mr; i++) {
            __m256i xv =
                q8_in_reg(_mm256_loadu_si256((const __m256i *)(xq + i * k + b * BT_QK8_0)));
            __m256 dx = _mm256_set1_ps(xd[i * nb + b]);
            for (int j = 0; j < nr; j++) {
#if defined(Q8_VNNI)
                __m256i s = _mm256_dpbusd_epi32(wc[j], xv, wq[j]);
#else
                __m256i p = _mm256_maddubs_epi16(wc[j], _mm256_sign_epi8(xv, wq[j]));
                __m256i s = _mm256_madd_epi16(p, ones);
#endif
                acc[i][j] =
                    _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_mul_ps(dx, dw[j]), acc[i][j]);
            }
        }
    }
    for (int i = 0; i < mr; i++)
        for (int j = 0; j < nr; j++)
            y[i * ldy + j] = hsum256(acc[i][j]);
}
#else
static BT_ALWAYS_INLINE void q8_tile(const int mr, const int nr, const int pf, const int8_t *xq,
                                     const float *xd, int64_t k, const bt_block_q8_0_t *w, float *y,
                                     int64_t ldy)
{
    const int64_t nb = k / BT_QK8_0;
    for (int i = 0; i < mr; i++) {
        for (int j = 0; j < nr; j++) {
            float acc = 0.0f;
            for (int64_t b = 0; b < nb; b++) {
                const bt_block_q8_0_t *blk = w + j * nb + b;
                const int8_t *xb = xq + i * k + b * BT_QK8_0;
                int32_t s = 0;
                for (int l = 0; l < BT_QK8_0; l++)
                    s += (int32_t)xb[l] * blk->qs[l];
                acc += xd[i * nb + b] * bt_fp16_to_f32(blk->d) * (float)s;
            }
            y[i * ldy + j] = acc;
        }
    }
}
#endif

static void q8_tiles(int mr, int nr, int pf, const int8_t *xq, const float *xd, int64_t k,
                     const bt_block_q8_0_t *w, float *y, int64_t ldy)
{
    if (nr == NR && pf) {
        switch (mr) {
        case 4: q8_tile(4, NR, 1, xq, xd, k, w, y, ldy); return;
        case 3: q8_tile(3, NR, 1, xq, xd, k, w, y, ldy); return;
        case 2: q8_tile(2, NR, 1, xq, xd, k, w, y, ldy); return;
        default: q8_tile(1, NR, 1, xq, xd, k, w, y, ldy); return;
        }
    }
    if (nr == NR) {
        switch (mr) {
        case 4: q8_tile(4, NR, 0, xq, xd, k, w, y, ldy); return;
        case 3: q8_tile(3, NR, 0, xq, xd, k, w, y, ldy); return;
        case 2: q8_tile(2, NR, 0, xq, xd, k, w, y, ldy); return;
        default: q8_tile(1, NR, 0, xq, xd, k, w, y, ldy); return;
        }
    }
    for (int j = 0; j < nr; j++) {
        const bt_block_q8_0_t *wj = w + j * (k / BT_QK8_0);
        switch (mr) {
        case 4: q8_tile(4, 1, 0, xq, xd, k, wj, y + j, ldy); break;
        case 3: q8_tile(3, 1, 0, xq, xd, k, wj, y + j, ldy); break;
        case 2: q8_tile(2, 1, 0, xq, xd, k, wj, y + j, ldy); break;
        default: q8_tile(1, 1, 0, xq, xd, k, wj, y + j, ldy); break;
        }
    }
}

static void q8_task(void *arg, int64_t task, int thread)
{
    const q8_job_t *jb = arg;
    const int64_t nb = jb->k / BT_QK8_0;
    int64_t j0 = task * jb->nc;
    int64_t j1 = j0 + jb->nc < jb->n ? j0 + jb->nc : jb->n;
    /* One token: one weight row at a time, a single DRAM stream, is fastest (measured). */
    const int nr_max = jb->m == 1 ? 1 : NR;
    const int pf = jb->m <= PF_MAX_M;
    for (int64_t m0 = 0; m0 < jb->m; m0 += jb->mb) {
        int64_t m1 = m0 + jb->mb < jb->m ? m0 + jb->mb : jb->m;
        for (int64_t j = j0; j < j1; j += nr_max) {
            int nr = j1 - j < nr_max ? (int)(j1 - j) : nr_max;
            for (int64_t i = m0; i < m1; i += MR) {
                int mr = m1 - i < MR ? (int)(m1 - i) : MR;
                q8_tiles(mr, nr, pf, jb->xq + i * jb->k, jb->xd + i * nb, jb->k, jb->w + j * nb,
                         jb->y + i * jb->n + j, jb->n);
            }
        }
    }
}

void bt_cpu_quantize_row_q8(const float *x, int8_t *qs, float *d, int64_t n)
{
    for (int64_t b = 0; b < n / BT_QK8_0; b++) {
        const float *xb = x + b * BT_QK8_0;
        int8_t *qb = qs + b * BT_QK8_0;
#if defined(BT_CPU_AVX512)
        __m512 v0 = _mm512_loadu_ps(xb), v1 = _mm512_loadu_ps(xb + 16);
        float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
        float dd = amax / 127.0f;
        __m512 id = _mm512_set1_ps(dd != 0.0f ? 1.0f / dd : 0.0f);
        __m512i q0 = _mm512_cvtps_epi32(_mm512_mul_ps(v0, id)); /* rounds half to even */
        __m512i q1 = _mm512_cvtps_epi32(_mm512_mul_ps(v1, id));
        _mm_storeu_si128((__m128i *)qb, _mm512_cvtsepi32_epi8(q0));
        _mm_storeu_si128((__m128i *)(qb + 16), _mm512_cvtsepi32_epi8(q1));
#else
        float amax = 0.0f;
        for (int l = 0; l < BT_QK8_0; l++)
            amax = fabsf(xb[l]) > amax ? fabsf(xb[l]) : amax;
        float dd = amax / 127.0f;
        float id = dd != 0.0f ? 1.0f / dd : 0.0f;
        /* The clamp changes nothing for finite rows (|x * id| <= 127 up to rounding); a NaN or
         * an infinity, which a corrupt model's weights can make, would convert out of range. */
        for (int l = 0; l < BT_QK8_0; l++)
            qb[l] = (int8_t)nearbyintf(fminf(fmaxf(xb[l] * id, -127.0f), 127.0f));
#endif
        d[b] = dd;
    }
}

typedef struct {
    const float *x;
    int8_t *xq;
    float *xd;
    int64_t m, k;
} quant_job_t;

#define QUANT_ROWS 4

/* Quantizes up to QUANT_ROWS rows; the VNNI kernel wants u8 = q + 128 (q is never -128). */
static void quant_task(void *arg, int64_t task, int thread)
{
    const quant_job_t *jb = arg;
    int64_t r1 = (task + 1) * QUANT_ROWS < jb->m ? (task + 1) * QUANT_ROWS : jb->m;
    for (int64_t r = task * QUANT_ROWS; r < r1; r++) {
        int8_t *q = jb->xq + r * jb->k;
        bt_cpu_quantize_row_q8(jb->x + r * jb->k, q, jb->xd + r * (jb->k / BT_QK8_0), jb->k);
#if defined(Q8_VNNI)
        for (int64_t l = 0; l < jb->k; l++)
            q[l] = (int8_t)((uint8_t)q[l] ^ 0x80);
#endif
    }
}

/* Rows per task: enough tasks for dynamic balancing, at most 16 tiles each. */
static int64_t q8_chunk_rows(int64_t n, int n_threads)
{
    int64_t tiles = (n + NR - 1) / NR;
    int64_t per = tiles / ((int64_t)n_threads * 8);
    per = per < 1 ? 1 : per > 16 ? 16 : per;
    return per * NR;
}

/* Makes room for at least one row of k quantized values. Only a caller that broke the
 * max_cols promise of bt_backend_params_t gets here; running out of memory then is fatal. */
static void q8_reserve_row(bt_cpu_ctx_t *c, int64_t k)
{
    if ((size_t)k <= c->q8_cap)
        return;
    free(c->q8_qs);
    free(c->q8_d);
    c->q8_cap = (size_t)k;
    c->q8_qs = bt_cpu_aligned_alloc(c->q8_cap);
    c->q8_d = bt_cpu_aligned_alloc(c->q8_cap / BT_QK8_0 * sizeof(float));
    assert(c->q8_qs && c->q8_d);
}

void bt_cpu_matmul_q8(bt_cpu_ctx_t *c, int n_w, float *const *y, const bt_tensor_t *const *w,
                      const float *x, int64_t m)
{
    const int64_t k = w[0]->cols;
    assert(k % BT_QK8_0 == 0 && n_w <= BT_CPU_MULTI_MAX);
    q8_reserve_row(c, k);
    const int64_t per_pass = k > 0 ? (int64_t)(c->q8_cap / (size_t)k) : m;
    q8_job_t jobs[BT_CPU_MULTI_MAX];
    bt_cpu_multi_t mu = {.fn = q8_task};
    for (int t = 0; t < n_w; t++) {
        assert(w[t]->type == BT_TYPE_Q8_0 && w[t]->cols == k);
        jobs[t] = (q8_job_t){
            .xq = c->q8_qs,
            .xd = c->q8_d,
            .w = w[t]->data,
            .n = w[t]->rows,
            .k = k,
            .nc = q8_chunk_rows(w[t]->rows, c->n_threads),
            .mb = k > 0 ? (L2_X_BYTES / k) / MR * MR : 512,
        };
        if (jobs[t].mb < MR)
            jobs[t].mb = MR;
        mu.arg[t] = &jobs[t];
        mu.first[t + 1] = mu.first[t] + (w[t]->rows + jobs[t].nc - 1) / jobs[t].nc;
    }
    /* Rows beyond the scratch go in passes; each output element is computed the same way
     * whichever pass holds its row. The input is quantized once for all the weights. */
    for (int64_t m0 = 0; m0 < m; m0 += per_pass) {
        int64_t mm = m - m0 < per_pass ? m - m0 : per_pass;
        quant_job_t qj = {.x = x + m0 * k, .xq = c->q8_qs, .xd = c->q8_d, .m = mm, .k = k};
        bt_cpu_pool_run(c->pool, quant_task, &qj, (mm + QUANT_ROWS - 1) / QUANT_ROWS);
        for (int t = 0; t < n_w; t++) {
            jobs[t].y = y[t] + m0 * w[t]->rows;
            jobs[t].m = mm;
        }
        bt_cpu_pool_run(c->pool, bt_cpu_multi_task, &mu, mu.first[n_w]);
    }
}
