/* SPDX-License-Identifier: MIT */
/*
 * launch.cuh - programmatic dependent launch (PDL, Hopper and later): a kernel launched with it
 * may start while the kernel before it in the stream still runs, and does the part of its work
 * that needs nothing from that kernel (here: pulling its weight rows into L2) before it waits.
 *
 * The one thing to know: a PDL launch is only correct if every block of the kernel passes
 * bt_cuda_pdl_wait() before it reads anything an earlier kernel writes, and before it writes
 * anything at all. The wait returns once the whole previous grid has finished and its writes
 * are visible; a kernel that runs the wait in every block also finishes after that grid, so
 * the kernels after it see every earlier write, as with ordinary launches. The earlier kernel
 * lets its dependents start by calling bt_cuda_pdl_trigger() (once all its blocks have called
 * it, or exited); a kernel that never calls it lets them start when it ends. Without the launch
 * attribute the wait returns at once and the trigger does nothing, so a kernel may call both
 * whichever way it is launched. Neither changes any arithmetic: results are the same bits.
 *
 * On the emulated device (BATON_CUDAEMU) launches run one after the other, so the wait, the
 * trigger and the prefetch have nothing to do.
 */
#ifndef BATON_CUDA_LAUNCH_CUH
#define BATON_CUDA_LAUNCH_CUH

#include <utility>

#include "cuda_impl.h"

/* Waits for the previous kernel of the stream to finish (PDL launches; else returns). */
static __device__ __forceinline__ void bt_cuda_pdl_wait(void)
{
#if !defined(BATON_CUDAEMU) && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

/* Lets the next kernel of the stream start, if it was launched with PDL. */
static __device__ __forceinline__ void bt_cuda_pdl_trigger(void)
{
#if !defined(BATON_CUDAEMU) && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

/* Asks L2 for the 128-byte line holding p; no value is read, nothing waits. */
static __device__ __forceinline__ void bt_cuda_prefetch_l2(const void *p)
{
#if !defined(BATON_CUDAEMU) && defined(__CUDA_ARCH__)
    asm volatile("prefetch.L2 [%0];" ::"l"(p)); /* generic address */
#else
    (void)p;
#endif
}

/* Launches k on ln's stream, as a programmatic dependent launch when ln.pdl is set. The caller
 * checks the launch (cudaGetLastError), as after k<<<...>>>. */
template <typename... KArgs, typename... Args>
static void bt_cuda_launch(const bt_cuda_launch_t &ln, void (*k)(KArgs...), dim3 grid, dim3 block,
                           size_t smem, Args &&...args)
{
#ifdef BATON_CUDAEMU
    emu_bind(k, grid, block, smem, ln.stream)(std::forward<Args>(args)...);
#else
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = smem;
    cfg.stream = ln.stream;
    cfg.attrs = attr;
    cfg.numAttrs = ln.pdl ? 1 : 0;
    (void)cudaLaunchKernelEx(&cfg, k, std::forward<Args>(args)...);
#endif
}

#endif
