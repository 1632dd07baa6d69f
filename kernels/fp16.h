/* SPDX-License-Identifier: MIT */
/*
 * fp16.h - scalar conversions between f32 and IEEE half / bfloat16, header-only.
 *
 * Conversions round to nearest even and keep NaN and infinities, so weights written by the
 * model generator and read back by the engine (or by llama.cpp) agree bit for bit.
 */
#ifndef BATON_FP16_H
#define BATON_FP16_H

#include <stdint.h>
#include <string.h>

static inline float bt_f32_from_bits(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline uint32_t bt_bits_from_f32(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static inline float bt_fp16_to_f32(uint16_t h)
{
    /* Branch-free method from Maratyszcza's FP16 library (as used by ggml). */
    const uint32_t w = (uint32_t)h << 16;
    const uint32_t sign = w & 0x80000000u;
    const uint32_t two_w = w + w;
    const uint32_t exp_offset = 0xE0u << 23;
    const float exp_scale = 0x1.0p-112f;
    const float normalized = bt_f32_from_bits((two_w >> 4) + exp_offset) * exp_scale;
    const uint32_t magic_mask = 126u << 23;
    const float magic_bias = 0.5f;
    const float denormalized = bt_f32_from_bits((two_w >> 17) | magic_mask) - magic_bias;
    const uint32_t denormalized_cutoff = 1u << 27;
    const uint32_t result = sign | (two_w < denormalized_cutoff ? bt_bits_from_f32(denormalized)
                                                                : bt_bits_from_f32(normalized));
    return bt_f32_from_bits(result);
}

static inline uint16_t bt_f32_to_fp16(float f)
{
    const float scale_to_inf = 0x1.0p+112f;
    const float scale_to_zero = 0x1.0p-110f;
    float base = (f < 0 ? -f : f) * scale_to_inf * scale_to_zero;
    const uint32_t w = bt_bits_from_f32(f);
    const uint32_t shl1_w = w + w;
    const uint32_t sign = w & 0x80000000u;
    uint32_t bias = shl1_w & 0xFF000000u;
    if (bias < 0x71000000u)
        bias = 0x71000000u;
    base = bt_f32_from_bits((bias >> 1) + 0x07800000u) + base;
    const uint32_t bits = bt_bits_from_f32(base);
    const uint32_t exp_bits = (bits >> 13) & 0x00007C00u;
    const uint32_t mantissa_bits = bits & 0x00000FFFu;
    const uint32_t nonsign = exp_bits + mantissa_bits;
    return (uint16_t)((sign >> 16) | (shl1_w > 0xFF000000u ? 0x7E00u : nonsign));
}

static inline float bt_bf16_to_f32(uint16_t h)
{
    return bt_f32_from_bits((uint32_t)h << 16);
}

static inline uint16_t bt_f32_to_bf16(float f)
{
    uint32_t u = bt_bits_from_f32(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) /* NaN: keep it a quiet NaN */
        return (uint16_t)((u >> 16) | 64);
    return (uint16_t)((u + (0x7fffu + ((u >> 16) & 1))) >> 16);
}

#endif
