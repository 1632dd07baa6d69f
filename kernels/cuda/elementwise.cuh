/* SPDX-License-Identifier: MIT */
/*
 * elementwise.cuh - the per-element arithmetic of the add, swiglu and rmsnorm ops, shared by
 * their kernels (elementwise.cu) and by the fused matmuls (matmul.cu): the epilogues that add
 * or apply swiglu, and the pre-norm GEMV kernels and the norm + 16-bit conversion kernel that
 * read rmsnorm(x) without it being written anywhere.
 *
 * The one thing to know: a fused op must give the bits of the ops it fuses (kernels.h), so
 * every kernel calls these functions rather than spelling a formula twice; every operation is
 * an explicitly rounded intrinsic (or expf, compiled with the same flags in both files), so
 * nvcc cannot contract them differently. The rmsnorm scale is a block-wide reduction in a fixed
 * order over BT_CUDA_NORM_THREADS threads: a kernel that calls it must run blocks of exactly
 * that many threads (one dimension), all of them reaching the call.
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

/* The rope op on one pair (p[0], p[1]) at position pos with inverse frequency inv. */
static __device__ __forceinline__ void bt_cuda_rope_pair(float *p, int32_t pos, float inv)
{
    float sn, cs;
    sincosf(__fmul_rn((float)pos, inv), &sn, &cs);
    const float x0 = p[0], x1 = p[1];
    p[0] = __fsub_rn(__fmul_rn(x0, cs), __fmul_rn(x1, sn));
    p[1] = __fadd_rn(__fmul_rn(x0, sn), __fmul_rn(x1, cs));
}

/* The block size of every kernel that computes an rmsnorm scale. */
#define BT_CUDA_NORM_THREADS 256

/* Sum over the block of one value per thread, in a fixed order (a shuffle tree per warp, then
 * one over the warps' sums); every thread gets the sum. red: 32 floats of shared memory. */
static __device__ __forceinline__ float bt_cuda_block_sum(float v, float *red)
{
    for (int o = 16; o > 0; o >>= 1)
        v = __fadd_rn(v, __shfl_xor_sync(0xffffffffu, v, o));
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (lane == 0)
        red[warp] = v;
    __syncthreads();
    v = lane < BT_CUDA_NORM_THREADS / 32 ? red[lane] : 0.0f;
    for (int o = 16; o > 0; o >>= 1)
        v = __fadd_rn(v, __shfl_xor_sync(0xffffffffu, v, o));
    __syncthreads(); /* red may be reused by the caller's next call */
    return v;
}

/* rmsnorm's scale of the row x of n floats, 1 / sqrt(mean(x^2) + eps): thread t sums the
 * squares of elements t, t + 256, ... in order, then the block sums the partials. Every thread
 * of the block must call it (it has barriers) and every one gets the scale. sqrt.rn is what
 * sqrtf compiles to under the build's --prec-sqrt=true; spelled out so no flag can change it. */
static __device__ __forceinline__ float bt_cuda_rms_scale(const float *x, int64_t n, float eps,
                                                          float *red)
{
    float acc = 0.0f;
    for (int64_t i = threadIdx.x; i < n; i += BT_CUDA_NORM_THREADS)
        acc = __fmaf_rn(x[i], x[i], acc);
    const float ss = bt_cuda_block_sum(acc, red);
    return __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(__fdiv_rn(ss, (float)n), eps)));
}

/* The rmsnorm op's output element: x * scale * w, rounded after each product. */
static __device__ __forceinline__ float bt_cuda_rms_elem(float x, float scale, float w)
{
    return __fmul_rn(__fmul_rn(x, scale), w);
}

#endif
