/* SPDX-License-Identifier: MIT */
/*
 * simd.h - the vector type the CPU kernels are written against: 16 f32 lanes with AVX-512,
 * 8 with AVX2+FMA+F16C, and 8 emulated lanes in plain C otherwise.
 *
 * The one thing to know: every helper here is a fixed instruction sequence, so a reduction
 * written with them has one evaluation order per build. Horizontal sums always use the same
 * pairwise tree, and the plain-C fallback never fuses multiply-add (the tree is built with
 * -std=c11, where GCC does not contract), so it is deterministic too. Results differ between
 * builds (AVX-512 vs AVX2 vs plain), never between calls of one build.
 */
#ifndef BATON_CPU_SIMD_H
#define BATON_CPU_SIMD_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "../fp16.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__FMA__) &&  \
    defined(__F16C__)
#define BT_CPU_AVX512 1
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define BT_CPU_AVX2 1
#endif

#if defined(BT_CPU_AVX512) || defined(BT_CPU_AVX2)
#include <immintrin.h>
#endif

#define BT_ALWAYS_INLINE inline __attribute__((always_inline))

#if defined(BT_CPU_AVX512)
#define BT_VW 16
typedef __m512 bt_vf;
static BT_ALWAYS_INLINE bt_vf bt_vf_zero(void)
{
    return _mm512_setzero_ps();
}
static BT_ALWAYS_INLINE bt_vf bt_vf_set1(float a)
{
    return _mm512_set1_ps(a);
}
static BT_ALWAYS_INLINE bt_vf bt_vf_load(const float *p)
{
    return _mm512_loadu_ps(p);
}
static BT_ALWAYS_INLINE void bt_vf_store(float *p, bt_vf a)
{
    _mm512_storeu_ps(p, a);
}
static BT_ALWAYS_INLINE bt_vf bt_vf_add(bt_vf a, bt_vf b)
{
    return _mm512_add_ps(a, b);
}
static BT_ALWAYS_INLINE bt_vf bt_vf_mul(bt_vf a, bt_vf b)
{
    return _mm512_mul_ps(a, b);
}
static BT_ALWAYS_INLINE bt_vf bt_vf_sub(bt_vf a, bt_vf b)
{
    return _mm512_sub_ps(a, b);
}
static BT_ALWAYS_INLINE bt_vf bt_vf_div(bt_vf a, bt_vf b)
{
    return _mm512_div_ps(a, b);
}
static BT_ALWAYS_INLINE bt_vf bt_vf_max(bt_vf a, bt_vf b)
{
    return _mm512_max_ps(a, b);
}
static BT_ALWAYS_INLINE bt_vf bt_vf_fma(bt_vf a, bt_vf b, bt_vf c)
{
    return _mm512_fmadd_ps(a, b, c);
}
static BT_ALWAYS_INLINE bt_vf bt_vf_load_f16(const uint16_t *p)
{
    return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
}
static BT_ALWAYS_INLINE bt_vf bt_vf_load_bf16(const uint16_t *p)
{
    __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
}
static BT_ALWAYS_INLINE void bt_vf_store_f16(uint16_t *p, bt_vf a)
{
    _mm256_storeu_si256((__m256i *)p, _mm512_cvtps_ph(a, _MM_FROUND_TO_NEAREST_INT));
}
static BT_ALWAYS_INLINE float bt_vf_hsum(bt_vf a)
{
    __m256 lo = _mm512_castps512_ps256(a);
    __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a), 1));
    __m256 s8 = _mm256_add_ps(lo, hi);
    __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
    __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    __m128 s1 = _mm_add_ss(s2, _mm_movehdup_ps(s2));
    return _mm_cvtss_f32(s1);
}
static BT_ALWAYS_INLINE float bt_vf_hmax(bt_vf a)
{
    return _mm512_reduce_max_ps(a);
}
/* exp(x) per lane, Cephes polynomial; about 1 ulp, 0 below -103, +inf above 88.7. */
static BT_ALWAYS_INLINE bt_vf bt_vf_exp(bt_vf x)
{
    x = _mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(88.72f)), _mm512_set1_ps(-103.9f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(p, n);
}

#elif defined(BT_CPU_AVX2)
#define BT_VW 8
typedef __m256 bt_vf;
static BT_ALWAYS_INLINE bt_vf bt_vf_zero(void)
{
    return _mm256_setzero_ps();
}
static BT_ALWAYS_INLINE bt_vf bt_vf_set1(float a)
{
    return _mm256_set1_ps(a);
}
static BT_ALWAYS_INLINE bt_vf bt_vf_load(const float *p)
{
    return _mm256_loadu_ps(p);
}
static BT_ALWAYS_INLINE void bt_vf_store(float *p, bt_vf a)
{
    _mm256_storeu_ps(p, a);
}
static BT_ALWAYS_INLINE bt_vf bt_vf_add(bt_vf a, bt_vf b)
{
    return _mm256_add_ps(a, b);
}
static BT_ALWAYS_INLINE bt_vf bt_vf_mul(bt_vf a, bt_vf b)
{
    return _mm256_mul_ps(a, b);
}
static BT_ALWAYS_INLINE bt_vf bt_vf_sub(bt_vf a, bt_vf b)
{
    return _mm256_sub_ps(a, b);
}
static BT_ALWAYS_INLINE bt_vf bt_vf_div(bt_vf a, bt_vf b)
{
    return _mm256_div_ps(a, b);
}
static BT_ALWAYS_INLINE bt_vf bt_vf_max(bt_vf a, bt_vf b)
{
    return _mm256_max_ps(a, b);
}
static BT_ALWAYS_INLINE bt_vf bt_vf_fma(bt_vf a, bt_vf b, bt_vf c)
{
    return _mm256_fmadd_ps(a, b, c);
}
static BT_ALWAYS_INLINE bt_vf bt_vf_load_f16(const uint16_t *p)
{
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
}
static BT_ALWAYS_INLINE bt_vf bt_vf_load_bf16(const uint16_t *p)
{
    __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
}
static BT_ALWAYS_INLINE void bt_vf_store_f16(uint16_t *p, bt_vf a)
{
    _mm_storeu_si128((__m128i *)p, _mm256_cvtps_ph(a, _MM_FROUND_TO_NEAREST_INT));
}
static BT_ALWAYS_INLINE float bt_vf_hsum(bt_vf a)
{
    __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    __m128 s1 = _mm_add_ss(s2, _mm_movehdup_ps(s2));
    return _mm_cvtss_f32(s1);
}
static BT_ALWAYS_INLINE float bt_vf_hmax(bt_vf a)
{
    __m128 s4 = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    __m128 s2 = _mm_max_ps(s4, _mm_movehl_ps(s4, s4));
    __m128 s1 = _mm_max_ss(s2, _mm_movehdup_ps(s2));
    return _mm_cvtss_f32(s1);
}
/* exp(x) per lane, Cephes polynomial; about 1 ulp for x in [-87.3, 88.7], 0 below. */
static BT_ALWAYS_INLINE bt_vf bt_vf_exp(bt_vf x)
{
    __m256 under = _mm256_cmp_ps(x, _mm256_set1_ps(-87.33f), _CMP_LT_OQ);
    x = _mm256_max_ps(_mm256_min_ps(x, _mm256_set1_ps(88.37f)), _mm256_set1_ps(-87.33f));
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    __m256i e =
        _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    __m256 y = _mm256_mul_ps(p, _mm256_castsi256_ps(e));
    return _mm256_andnot_ps(under, y);
}

#else /* plain C: 8 emulated lanes */
#define BT_VW 8
typedef struct {
    float v[8];
} bt_vf;
static BT_ALWAYS_INLINE bt_vf bt_vf_zero(void)
{
    bt_vf r = {{0}};
    return r;
}
static BT_ALWAYS_INLINE bt_vf bt_vf_set1(float a)
{
    bt_vf r;
    for (int l = 0; l < 8; l++)
        r.v[l] = a;
    return r;
}
static BT_ALWAYS_INLINE bt_vf bt_vf_load(const float *p)
{
    bt_vf r;
    memcpy(r.v, p, sizeof r.v);
    return r;
}
static BT_ALWAYS_INLINE void bt_vf_store(float *p, bt_vf a)
{
    memcpy(p, a.v, sizeof a.v);
}
#define BT_VF_LANEWISE(name, expr)                                                                 \
    static BT_ALWAYS_INLINE bt_vf name(bt_vf a, bt_vf b)                                           \
    {                                                                                              \
        bt_vf r;                                                                                   \
        for (int l = 0; l < 8; l++)                                                                \
            r.v[l] = (expr);                                                                       \
        return r;                                                                                  \
    }
BT_VF_LANEWISE(bt_vf_add, a.v[l] + b.v[l])
BT_VF_LANEWISE(bt_vf_mul, a.v[l] * b.v[l])
BT_VF_LANEWISE(bt_vf_sub, a.v[l] - b.v[l])
BT_VF_LANEWISE(bt_vf_div, a.v[l] / b.v[l])
BT_VF_LANEWISE(bt_vf_max, a.v[l] > b.v[l] ? a.v[l] : b.v[l])
static BT_ALWAYS_INLINE bt_vf bt_vf_fma(bt_vf a, bt_vf b, bt_vf c)
{
    bt_vf r;
    for (int l = 0; l < 8; l++)
        r.v[l] = a.v[l] * b.v[l] + c.v[l]; /* not fused: -std=c11 disables contraction */
    return r;
}
static BT_ALWAYS_INLINE bt_vf bt_vf_load_f16(const uint16_t *p)
{
    bt_vf r;
    for (int l = 0; l < 8; l++)
        r.v[l] = bt_fp16_to_f32(p[l]);
    return r;
}
static BT_ALWAYS_INLINE bt_vf bt_vf_load_bf16(const uint16_t *p)
{
    bt_vf r;
    for (int l = 0; l < 8; l++)
        r.v[l] = bt_bf16_to_f32(p[l]);
    return r;
}
static BT_ALWAYS_INLINE void bt_vf_store_f16(uint16_t *p, bt_vf a)
{
    for (int l = 0; l < 8; l++)
        p[l] = bt_f32_to_fp16(a.v[l]);
}
static BT_ALWAYS_INLINE float bt_vf_hsum(bt_vf a)
{
    float s4[4], s2[2];
    for (int l = 0; l < 4; l++)
        s4[l] = a.v[l] + a.v[l + 4];
    s2[0] = s4[0] + s4[2];
    s2[1] = s4[1] + s4[3];
    return s2[0] + s2[1];
}
static BT_ALWAYS_INLINE float bt_vf_hmax(bt_vf a)
{
    float m = a.v[0];
    for (int l = 1; l < 8; l++)
        m = a.v[l] > m ? a.v[l] : m;
    return m;
}
static BT_ALWAYS_INLINE bt_vf bt_vf_exp(bt_vf x)
{
    bt_vf r;
    for (int l = 0; l < 8; l++)
        r.v[l] = expf(x.v[l]);
    return r;
}
#endif

/* Pins a loaded vector in a register: without it GCC folds the load into each FMA that uses
 * it, turning one load per tile row into one per FMA and making the microkernels load-bound. */
#if defined(BT_CPU_AVX512) || defined(BT_CPU_AVX2)
static BT_ALWAYS_INLINE bt_vf bt_vf_in_reg(bt_vf a)
{
    __asm__("" : "+v"(a));
    return a;
}
#else
static BT_ALWAYS_INLINE bt_vf bt_vf_in_reg(bt_vf a)
{
    return a;
}
#endif

/* Loads n < BT_VW floats, zero-filling the remaining lanes. */
static BT_ALWAYS_INLINE bt_vf bt_vf_load_part(const float *p, int n)
{
    float t[BT_VW] = {0};
    memcpy(t, p, (size_t)n * sizeof(float));
    return bt_vf_load(t);
}

static BT_ALWAYS_INLINE void bt_vf_store_part(float *p, bt_vf a, int n)
{
    float t[BT_VW];
    bt_vf_store(t, a);
    memcpy(p, t, (size_t)n * sizeof(float));
}

#endif
