/* SPDX-License-Identifier: MIT */
/*
 * attention_tc.cuh - what the two tensor-core prefill attention kernels (attention_mma.cu,
 * attention_fa2.cu) share: their parameters, the shapes they take, and how they are set up and
 * launched.
 *
 * The one thing to know: both kernels take exactly the same calls (so either can stand in for
 * the other, and a refusal sends the caller to the SIMT kernel alike). Each file describes its
 * kernel as a template K<T, D> with a static fn() (the __global__ function for cache type T and
 * head_dim D) and BYTES (its dynamic shared memory), which TC_ENTRY_POINTS writes; tc_init and
 * tc_launch do the rest.
 */
#ifndef BATON_ATTENTION_TC_CUH
#define BATON_ATTENTION_TC_CUH

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "cuda_impl.h"

#define TC_WARPS 4
#define TC_THREADS (TC_WARPS * 32)
#define TC_BQ (TC_WARPS * 16) /* query vectors per block: 16 per warp */
#define TC_MAX_HD 128         /* registers: a lane holds 16 * head_dim / 32 output floats */

/* Every head_dim taken: multiples of 16 (the tensor-core k-step) up to TC_MAX_HD. */
#define TC_HEAD_DIMS(X) X(16) X(32) X(48) X(64) X(80) X(96) X(112) X(128)

typedef struct {
    float *out;
    const float *q;
    bt_kv_layer_t kv;
    const bt_cuda_seq_t *seqs;
    const int32_t *blocks;
    int n_heads, group;
    float scale_log2; /* scale * log2(e): the softmax runs in base 2 */
} tc_params_t;

/* A block's share of a call: blockIdx.x is its tile of TC_BQ query vectors (reversed, so the
 * tiles with the longest contexts start first), y its sequence, z its KV head; len is how many
 * positions the tile's last query sees. False when the tile lies past the sequence's queries. */
typedef struct {
    bt_cuda_seq_t s;
    int kvh;
    int64_t q_first, q_end;
    int32_t len;
} tc_tile_t;

static __device__ __forceinline__ bool tc_block_tile(const tc_params_t &p, tc_tile_t *t)
{
    t->s = p.seqs[blockIdx.y];
    t->kvh = blockIdx.z;
    const int64_t nq = (int64_t)t->s.n_new * p.group;
    t->q_first = (int64_t)(gridDim.x - 1 - blockIdx.x) * TC_BQ;
    t->q_end = t->q_first + TC_BQ < nq ? t->q_first + TC_BQ : nq;
    t->len = t->s.n_past + (int32_t)((t->q_end - 1) / p.group) + 1;
    return t->q_first < nq;
}

/* Raises each instance's dynamic shared memory limit (create time). */
template <template <typename, int> class K> static int tc_init(void)
{
    int ok = 1;
#define TC_INIT(d)                                                                                 \
    ok = ok &&                                                                                     \
         cudaFuncSetAttribute(K<__nv_bfloat16, d>::fn(),                                           \
                              cudaFuncAttributeMaxDynamicSharedMemorySize,                         \
                              (int)K<__nv_bfloat16, d>::BYTES) == cudaSuccess &&                   \
         cudaFuncSetAttribute(K<__half, d>::fn(), cudaFuncAttributeMaxDynamicSharedMemorySize,     \
                              (int)K<__half, d>::BYTES) == cudaSuccess;
    TC_HEAD_DIMS(TC_INIT)
#undef TC_INIT
    return ok ? BT_OK : BT_ERR_UNSUPPORTED;
}

template <template <typename, int> class K, typename T>
static void tc_launch_type(cudaStream_t st, tc_params_t *p, dim3 grid, int head_dim)
{
    void *args[] = {p};
    switch (head_dim) {
#define TC_CASE(d)                                                                                 \
    case d:                                                                                        \
        BT_CUDA_CHECK(                                                                             \
            cudaLaunchKernel(K<T, d>::fn(), grid, dim3(TC_THREADS), args, K<T, d>::BYTES, st));    \
        break;
        TC_HEAD_DIMS(TC_CASE)
#undef TC_CASE
    default: break; /* refused by tc_launch */
    }
}

/* Checks the call against the shapes both kernels take (BT_ERR_UNSUPPORTED otherwise: 16-bit
 * cache, head_dim in TC_HEAD_DIMS, whole GQA groups, 16-byte aligned Q and blocks) and runs
 * kernel K over grid (query tiles of TC_BQ vectors, longest first; sequences; KV heads). */
template <template <typename, int> class K>
static int tc_launch(cudaStream_t st, const bt_cuda_attn_args_t *a)
{
    const bt_kv_layer_t *kv = a->kv;
    const int hd = kv->head_dim, n_kv = kv->n_kv_heads;
    const uintptr_t align = (uintptr_t)a->q | (uintptr_t)kv->data | (uintptr_t)kv->block_bytes;
    if ((kv->type != BT_TYPE_BF16 && kv->type != BT_TYPE_F16) || hd <= 0 || hd % 16 ||
        hd > TC_MAX_HD || n_kv <= 0 || a->n_heads % n_kv || align % 16)
        return BT_ERR_UNSUPPORTED;
    if (a->n_seqs <= 0 || a->max_new <= 0)
        return BT_OK;
    tc_params_t p;
    p.out = a->out;
    p.q = a->q;
    p.kv = *kv;
    p.seqs = a->seqs;
    p.blocks = a->blocks;
    p.n_heads = a->n_heads;
    p.group = a->n_heads / n_kv;
    p.scale_log2 = a->scale * 1.44269504088896341f;
    const int64_t gx = ((int64_t)a->max_new * p.group + TC_BQ - 1) / TC_BQ;
    const dim3 grid((unsigned)gx, (unsigned)a->n_seqs, (unsigned)n_kv);
    if (kv->type == BT_TYPE_BF16)
        tc_launch_type<K, __nv_bfloat16>(st, &p, grid, hd);
    else
        tc_launch_type<K, __half>(st, &p, grid, hd);
    return BT_OK;
}

/* A kernel as cudaLaunchKernel takes it: on the emulated device (tests/cudaemu), where a bare
 * pointer cannot be called, with its parameter types recorded. */
#ifdef BATON_CUDAEMU
#define TC_KERNEL_PTR(...) emu_kernel(__VA_ARGS__)
#else
#define TC_KERNEL_PTR(...) (const void *)__VA_ARGS__
#endif

/* The extern "C" bt_cuda_attention_NAME_init and bt_cuda_attention_NAME_launch of the kernel
 * template KERNEL<T, D> whose shared memory is LAYOUT<D>::BYTES (cuda_impl.h declares them). */
#define TC_ENTRY_POINTS(NAME, KERNEL, LAYOUT)                                                      \
    template <typename T, int D> struct NAME##_kernel {                                            \
        static constexpr size_t BYTES = LAYOUT<D>::BYTES;                                          \
        static const void *fn(void)                                                                \
        {                                                                                          \
            return TC_KERNEL_PTR(KERNEL<T, D>);                                                    \
        }                                                                                          \
    };                                                                                             \
    extern "C" int bt_cuda_attention_##NAME##_init(void)                                           \
    {                                                                                              \
        return tc_init<NAME##_kernel>();                                                           \
    }                                                                                              \
    extern "C" int bt_cuda_attention_##NAME##_launch(cudaStream_t st,                              \
                                                     const bt_cuda_attn_args_t *a)                 \
    {                                                                                              \
        return tc_launch<NAME##_kernel>(st, a);                                                    \
    }

#endif
