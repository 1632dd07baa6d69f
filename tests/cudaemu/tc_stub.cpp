/* SPDX-License-Identifier: MIT */
/*
 * tc_stub.cpp - the tensor-core attention launchers for the emulated backend: their kernels are
 * inline PTX, which cudaemu does not run, so every call is refused as one they do not handle,
 * and the backend takes the SIMT kernel (as it does on a device for such calls).
 */
#include "cudaemu.h"

#include "cuda_impl.h"

extern "C" int bt_cuda_attention_mma_launch(cudaStream_t st, const bt_cuda_attn_args_t *a)
{
    (void)st;
    (void)a;
    return BT_ERR_UNSUPPORTED;
}

extern "C" int bt_cuda_attention_mma_init(void)
{
    return BT_OK;
}

extern "C" int bt_cuda_attention_fa2_launch(cudaStream_t st, const bt_cuda_attn_args_t *a)
{
    (void)st;
    (void)a;
    return BT_ERR_UNSUPPORTED;
}

extern "C" int bt_cuda_attention_fa2_init(void)
{
    return BT_OK;
}
