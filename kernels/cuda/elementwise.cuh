/* SPDX-License-Identifier: MIT */
/*
 * elementwise.cuh - the per-element arithmetic of the add and swiglu ops, shared by their
 * kernels (elementwise.cu) and by the fused matmul epilogues (matmul.cu).
 *
 * The one thing to know: a fused matmul_add or matmul_swiglu must give the bits of the matmul
 * followed by the element-wise op (kernels.h), so both call these functions rather than
 * spelling the formula twice; every operation is an explicitly rounded intrinsic (or expf,
 * compiled with the same flags in both files), so nvcc cannot contract them differently.
 */
#ifndef BATON_CUDA_ELEMENTWISE_CUH
#define BATON_CUDA_ELEMENTWISE_CUH

/* The add op: y + x. */
static __device__ __forceinline__ float bt_cuda_add_f32(float y, float x)
{
    return __fadd_rn(y, x);
}

/* The swiglu op: silu(gate) * up. */
static __device__ __forceinline__ float bt_cuda_silu_mul(float gate, float up)
{
    const float s = __fdiv_rn(gate, __fadd_rn(1.0f, expf(-gate)));
    return __fmul_rn(s, up);
}

#endif
