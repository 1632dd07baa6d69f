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
 * time), and the kernels' own code, unchanged, is what runs. A kernel written in inline PTX
 * gives its asm wrappers other bodies under #ifdef BATON_CUDAEMU (defined for the emulated
 * build only), which call the instructions' emulations declared at the end (cudaemu_tc.cpp).
 * A launch into a stream that is being captured runs nothing: its arguments are copied and the
 * launch becomes a node of the graph (cudaemu.cpp), which runs it at each cudaGraphLaunch.
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
#include <utility>

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
/* The warp-collective operations' common step: every live lane of the warp gives bytes (at most
 * EMU_XCHG_BYTES, the same count in every lane) from mine and gets every lane's in all, lane by
 * lane (32 x bytes; a lane that has exited leaves stale bytes). Returns the mask of the lanes
 * that took part. */
#define EMU_XCHG_BYTES 64
uint32_t emu_warp_exchange(const void *mine, void *all, int bytes);
size_t emu_dyn_smem_bytes(void);
uint64_t emu_block_serial(void); /* changes with every block run */
int emu_lane(void);
int emu_thread_rank(void); /* the thread's linear index in its block */

#define threadIdx (emu_thread_idx())
#define blockIdx (emu_block_idx())
#define blockDim (emu_block_dim())
#define gridDim (emu_grid_dim())

typedef struct {
    dim3 grid, block;
    size_t smem;
    cudaStream_t stream;
} emu_cfg_t;

/* Runs body on every thread of every block of the launch, and returns when all have ended. */
void emu_run(const emu_cfg_t *cfg, void (*body)(void *), void *arg);

/* Whether a launch into stream is recorded instead of run: the stream is capturing (or its
 * capture was invalidated, which drops the launch). */
int emu_capturing(cudaStream_t stream);
/* Records a launch into its stream's capture: arg is the launch's own heap copy of its
 * arguments, which the graph's node owns from here on (drop frees it). */
void emu_record_launch(const emu_cfg_t *cfg, void (*body)(void *), void *arg, void (*drop)(void *));

template <typename... P> struct emu_bound {
    void (*kernel)(P...);
    emu_cfg_t cfg;

    template <typename... A> void operator()(const A &...a) const
    {
        struct call {
            void (*kernel)(P...);
            std::tuple<std::decay_t<P>...> args;

            static void body(void *p)
            {
                call *cp = (call *)p;
                std::apply(cp->kernel, cp->args); /* each thread gets its own parameter copies */
            }
            static void drop(void *p)
            {
                delete (call *)p;
            }
        };
        /* A captured launch takes its arguments' values now, as a kernel node does: the caller's
         * variables may change or die before the graph runs. */
        if (emu_capturing(cfg.stream)) {
            emu_record_launch(&cfg, call::body,
                              new call{kernel, std::tuple<std::decay_t<P>...>(a...)}, call::drop);
            return;
        }
        call c{kernel, std::tuple<std::decay_t<P>...>(a...)};
        emu_run(&cfg, call::body, &c);
    }
};

/* cudaLaunchKernel names a kernel by an untyped pointer and its arguments by pointers to them:
 * emu_kernel(k) is k as that pointer, with a launcher for its parameter types recorded, which
 * cudaemu.cpp's cudaLaunchKernel finds by the pointer. */
typedef void (*emu_launcher_t)(const void *kernel, const emu_cfg_t *cfg, void **args);
const void *emu_register_kernel(const void *kernel, emu_launcher_t launch);

template <typename... P, size_t... I>
static inline void emu_launch_args(void (*kernel)(P...), const emu_cfg_t *cfg, void **args,
                                   std::index_sequence<I...>)
{
    emu_bound<P...>{kernel, *cfg}(*(const std::decay_t<P> *)args[I]...);
}

template <typename... P> static inline const void *emu_kernel(void (*kernel)(P...))
{
    return emu_register_kernel(
        (const void *)kernel, [](const void *k, const emu_cfg_t *cfg, void **args) {
            emu_launch_args((void (*)(P...))k, cfg, args, std::index_sequence_for<P...>{});
        });
}

template <typename... P>
static inline emu_bound<P...> emu_bind(void (*kernel)(P...), dim3 grid, dim3 block, size_t smem = 0,
                                       cudaStream_t stream = 0)
{
    /* Every stream runs its work at once, in call order, unless it is capturing. */
    return emu_bound<P...>{kernel, {grid, block, smem, stream}};
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
static inline double __dadd_rn(double a, double b)
{
    return a + b;
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

/* ---- inline PTX of the tensor-core kernels (cudaemu_tc.cpp) ----
 *
 * Semantics as the PTX ISA gives them. A shared-memory address is an offset into the block's
 * dynamic shared memory (what __cvta_generic_to_shared returns here), which the instructions
 * check (alignment, bounds) and translate back. A 32-bit register holding two 16-bit elements
 * has the lower-indexed one in its low half. The .sync.aligned instructions exchange their
 * operands across the warp (emu_warp_exchange) and abort unless all 32 lanes take part. */

/* __cvta_generic_to_shared, for the dynamic shared array only (static __shared__ variables
 * are host statics here, outside the block's shared memory). */
size_t __cvta_generic_to_shared(const void *p);

/* mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}.{bf16,f16}.f32 with d as both C and D: A
 * 16x16 row-major in a[4] (g = lane / 4, c = lane % 4: a[0] row g, k 2c, 2c+1; a[1] row g+8;
 * a[2] row g, k 2c+8, 2c+9; a[3] row g+8, k 2c+8, 2c+9), B 16x8 column-major in b0 (k 2c, 2c+1;
 * column g) and b1 (k 2c+8, 2c+9), C/D f32 in d[4] (row g, columns 2c, 2c+1; then row g+8).
 * Each element is C plus the 16 exact products summed in double, rounded once to f32. */
void emu_mma_m16n8k16_bf16(float *d, const uint32_t *a, uint32_t b0, uint32_t b1);
void emu_mma_m16n8k16_f16(float *d, const uint32_t *a, uint32_t b0, uint32_t b1);

/* ldmatrix.sync.aligned.m8n8.x4[.trans].shared.b16: lanes 8i..8i+7 give the shared addresses of
 * rows 0..7 of matrix i (16 bytes each, 16-byte aligned); lane t gets in r[i] matrix i's
 * (row t / 4, elements 2 (t % 4) and 2 (t % 4) + 1), or with trans (rows 2 (t % 4) and
 * 2 (t % 4) + 1, element t / 4). */
void emu_ldmatrix_x4(uint32_t addr, uint32_t *r, int trans);

/* cp.async.cg.shared.global [dst], [src], 16, src_bytes: src_bytes of src, then zeros to 16
 * (src not read at 0). The copy is this thread's until a wait_group lands it: its 16 bytes
 * read as NaN meanwhile, and an ldmatrix of them aborts, as does a second copy to them. */
void emu_cp_async_cg16(uint32_t dst, const void *src, int src_bytes);
void emu_cp_async_commit_group(void); /* cp.async.commit_group */
void emu_cp_async_wait_group(int n);  /* cp.async.wait_group n: all but the newest n groups */

/* ex2.approx.ftz.f32: 2^x, subnormal inputs and results flushed to zero (exp2f's precision). */
static inline float emu_ex2_approx_ftz(float x)
{
    if (fabsf(x) < 1.17549435e-38f)
        x = 0.0f;
    const float y = exp2f(x);
    return y < 1.17549435e-38f ? 0.0f : y;
}

#endif
