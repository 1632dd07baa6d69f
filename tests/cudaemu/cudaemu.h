/* SPDX-License-Identifier: MIT */
/*
 * cudaemu.h - what a CUDA kernel source needs to compile and run on the host, for testing the
 * CUDA backend's SIMT kernels on machines without a device: the execution model (grid, blocks,
 * threads, warps), __syncthreads, warp shuffles, shared memory, and the arithmetic intrinsics.
 *
 * The one thing to know: host_cu.py rewrites a .cu file (launches `k<<<g, b, s, st>>>(args)`
 * become `emu_bind(k, g, b, s, st)(args)`, `extern __shared__ T x[];` becomes a pointer to the
 * launch's dynamic shared memory) and the result is compiled by the host C++ compiler with this
 * header first. cudaemu.cpp runs a launch's blocks one at a time, in a shuffled order, each
 * thread of a block as a fiber on one OS thread: a thread runs until it waits at a barrier or a
 * shuffle, and the waits are checked (a barrier no thread can pass aborts as a deadlock rather
 * than hanging). So static __shared__ variables are ordinary statics (one block lives at a
 * time), and the kernels' own code, unchanged, is what runs. Tensor-core kernels (inline PTX)
 * are not emulated.
 */
#ifndef BATON_CUDAEMU_H
#define BATON_CUDAEMU_H

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>
#include <vector_functions.h>
#include <vector_types.h>

#include <math.h>
#include <stdint.h>
#include <string.h>

#include <tuple>
#include <type_traits>

#undef __global__
#undef __device__
#undef __host__
#undef __forceinline__
#undef __shared__
#undef __launch_bounds__
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static /* one block at a time: a static is the block's shared variable */

/* ---- the execution model (cudaemu.cpp) ---- */

uint3 emu_thread_idx(void);
uint3 emu_block_idx(void);
dim3 emu_block_dim(void);
dim3 emu_grid_dim(void);
void *emu_dyn_smem(void);
void emu_syncthreads(void);
uint32_t emu_shfl(uint32_t v, int src_lane_or_mask, int xor_mode);

#define threadIdx (emu_thread_idx())
#define blockIdx (emu_block_idx())
#define blockDim (emu_block_dim())
#define gridDim (emu_grid_dim())

typedef struct {
    dim3 grid, block;
    size_t smem;
} emu_cfg_t;

/* Runs body on every thread of every block of the launch, and returns when all have ended. */
void emu_run(const emu_cfg_t *cfg, void (*body)(void *), void *arg);

template <typename... P> struct emu_bound {
    void (*kernel)(P...);
    emu_cfg_t cfg;

    template <typename... A> void operator()(const A &...a) const
    {
        struct call {
            void (*kernel)(P...);
            std::tuple<std::decay_t<P>...> args;
        } c{kernel, std::tuple<std::decay_t<P>...>(a...)};
        emu_run(
            &cfg,
            [](void *p) {
                call *cp = (call *)p;
                std::apply(cp->kernel, cp->args); /* each thread gets its own parameter copies */
            },
            &c);
    }
};

template <typename... P>
static inline emu_bound<P...> emu_bind(void (*kernel)(P...), dim3 grid, dim3 block, size_t smem = 0,
                                       cudaStream_t stream = 0)
{
    (void)stream; /* one stream: everything runs in order, at once */
    return emu_bound<P...>{kernel, {grid, block, smem}};
}

/* As cuda_runtime.h's overload, for a kernel named by its function. */
template <typename F>
static inline cudaError_t cudaFuncSetAttribute(F *kernel, enum cudaFuncAttribute attr, int value)
{
    return cudaFuncSetAttribute(reinterpret_cast<const void *>(kernel), attr, value);
}

/* ---- intrinsics ---- */

static inline void __syncthreads(void)
{
    emu_syncthreads();
}

template <typename T> static inline uint32_t emu_bits(T v)
{
    static_assert(sizeof(T) == 4, "32-bit shuffles only");
    uint32_t u;
    memcpy(&u, &v, 4);
    return u;
}

template <typename T> static inline T emu_from_bits(uint32_t u)
{
    T v;
    memcpy(&v, &u, 4);
    return v;
}

template <typename T> static inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int w = 32)
{
    (void)mask;
    (void)w;
    return emu_from_bits<T>(emu_shfl(emu_bits(v), lane_mask, 1));
}

template <typename T> static inline T __shfl_sync(unsigned mask, T v, int src, int w = 32)
{
    (void)mask;
    (void)w;
    return emu_from_bits<T>(emu_shfl(emu_bits(v), src, 0));
}

template <typename T> static inline T __ldg(const T *p)
{
    return *p;
}

template <typename T> static inline T __ldcg(const T *p)
{
    return *p;
}

static inline void __threadfence(void) {}

template <typename T> static inline T atomicAdd(T *p, T v)
{
    const T old = *p; /* threads interleave only at barriers and shuffles */
    *p = old + v;
    return old;
}

static inline float __fmaf_rn(float a, float b, float c)
{
    return fmaf(a, b, c);
}
static inline float __fadd_rn(float a, float b)
{
    return a + b;
}
static inline float __fsub_rn(float a, float b)
{
    return a - b;
}
static inline float __fmul_rn(float a, float b)
{
    return a * b;
}
static inline float __fdiv_rn(float a, float b)
{
    return a / b;
}
static inline float __fsqrt_rn(float a)
{
    return sqrtf(a);
}
static inline float __uint_as_float(uint32_t u)
{
    return emu_from_bits<float>(u);
}
static inline uint32_t __float_as_uint(float f)
{
    return emu_bits(f);
}
static inline float __int_as_float(int32_t u)
{
    return emu_from_bits<float>((uint32_t)u);
}
static inline int32_t __float_as_int(float f)
{
    return (int32_t)emu_bits(f);
}

#endif
