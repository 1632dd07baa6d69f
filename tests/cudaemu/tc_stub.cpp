/* SPDX-License-Identifier: MIT */
/*
 * tc_stub.cpp - the WMMA attention launchers for the emulated backend: attention_mma.cu uses
 * nvcuda::wmma, whose fragments cudaemu does not emulate, so every call is refused as one they
 * do not handle, and the backend takes the SIMT kernel (as it does on a device for such calls).
 * The FlashAttention-2 kernel (attention_fa2.cu, raw PTX) runs emulated (cudaemu_tc.cpp).
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
