/* SPDX-License-Identifier: MIT */
/*
 * cudaemu_tc.cpp - the inline PTX of the tensor-core kernels on the emulated device: mma.sync
 * m16n8k16 with f32 accumulators, ldmatrix .x4 (plain and .trans), cp.async with its groups, and
 * __cvta_generic_to_shared. cudaemu.h states each one's semantics.
 *
 * The one thing to know: the warp-collective instructions are built on emu_warp_exchange, so
 * each lane sees every lane's operands as the hardware's would, and then computes only its own
 * result registers from the PTX ISA's fragment tables; no lane trusts the kernel's idea of the
 * layout. cp.async copies are pending per thread until a wait_group lands them, their bytes
 * poisoned meanwhile, so a tile read before its copies are waited for (and the block has met at
 * a barrier) reads NaN or aborts, where on a device it would read whatever was there.
 */
#include "cudaemu.h"

#include <stdio.h>
#include <stdlib.h>

#include <vector>

static void emu_tc_fail(const char *what)
{
    const uint3 b = blockIdx, t = threadIdx;
    fprintf(stderr, "cudaemu: block (%u, %u, %u), thread (%u, %u, %u): %s\n", b.x, b.y, b.z, t.x,
            t.y, t.z, what);
    abort();
}

/* ---- shared memory and cp.async ---- */

typedef struct {
    uint32_t dst;
    int group; /* the commit_group that will close it: the thread's commits so far */
    unsigned char data[16];
} emu_copy_t;

/* This block's copies in flight: each thread's, in issue order, and which thread has one in
 * flight to each 16-byte piece of shared memory (-1: none). Reset when a new block runs. */
static struct {
    uint64_t block;
    std::vector<emu_copy_t> pending[1024];
    int committed[1024];
    std::vector<int> owner;
} C;

static void emu_cp_block(void)
{
    if (C.block == emu_block_serial())
        return;
    C.block = emu_block_serial();
    for (int i = 0; i < 1024; i++) {
        C.pending[i].clear();
        C.committed[i] = 0;
    }
    C.owner.assign(emu_dyn_smem_bytes() / 16, -1);
}

size_t __cvta_generic_to_shared(const void *p)
{
    const unsigned char *base = (const unsigned char *)emu_dyn_smem();
    const unsigned char *q = (const unsigned char *)p;
    if (!base || q < base || q > base + emu_dyn_smem_bytes())
        emu_tc_fail("__cvta_generic_to_shared of an address outside dynamic shared memory");
    return (size_t)(q - base);
}

/* The host address of n bytes at shared address addr, which must be aligned to align. */
static unsigned char *emu_smem_at(uint32_t addr, uint32_t n, uint32_t align, const char *what)
{
    if (addr % align || (uint64_t)addr + n > emu_dyn_smem_bytes())
        emu_tc_fail(what);
    return (unsigned char *)emu_dyn_smem() + addr;
}

void emu_cp_async_cg16(uint32_t dst, const void *src, int src_bytes)
{
    emu_cp_block();
    unsigned char *d = emu_smem_at(dst, 16, 16, "cp.async to a misaligned or out-of-range address");
    if (src_bytes < 0 || src_bytes > 16 || (uintptr_t)src % 16)
        emu_tc_fail("cp.async from a misaligned source, or with src-size outside 0..16");
    const int me = emu_thread_rank();
    int *own = &C.owner[dst / 16];
    if (*own >= 0)
        emu_tc_fail("cp.async to 16 bytes that a cp.async still has in flight");
    *own = me;
    emu_copy_t c;
    c.dst = dst;
    c.group = C.committed[me];
    memset(c.data, 0, 16);
    if (src_bytes)
        memcpy(c.data, src, (size_t)src_bytes);
    C.pending[me].push_back(c);
    memset(d, 0xff, 16); /* undefined until it lands: NaN in either 16-bit type and in f32 */
}

void emu_cp_async_commit_group(void)
{
    emu_cp_block();
    C.committed[emu_thread_rank()]++;
}

void emu_cp_async_wait_group(int n)
{
    emu_cp_block();
    const int me = emu_thread_rank();
    std::vector<emu_copy_t> &p = C.pending[me];
    size_t kept = 0;
    for (size_t i = 0; i < p.size(); i++)
        if (p[i].group < C.committed[me] - n) {
            memcpy((unsigned char *)emu_dyn_smem() + p[i].dst, p[i].data, 16);
            C.owner[p[i].dst / 16] = -1;
        } else {
            p[kept++] = p[i];
        }
    p.resize(kept);
}

/* ---- warp-collective instructions ---- */

static void emu_need_warp(uint32_t mask, const char *what)
{
    if (mask != 0xffffffffu)
        emu_tc_fail(what);
}

void emu_ldmatrix_x4(uint32_t addr, uint32_t *r, int trans)
{
    emu_cp_block();
    uint32_t rows[32]; /* rows[8 i + j]: row j of matrix i */
    emu_need_warp(emu_warp_exchange(&addr, rows, 4), "ldmatrix without all 32 lanes");
    for (int l = 0; l < 32; l++) {
        emu_smem_at(rows[l], 16, 16, "ldmatrix of a misaligned or out-of-range row");
        if (C.owner[rows[l] / 16] >= 0)
            emu_tc_fail("ldmatrix of shared memory that a cp.async still has in flight");
    }
    const unsigned char *sm = (const unsigned char *)emu_dyn_smem();
    const int t = emu_lane();
    for (int i = 0; i < 4; i++) {
        uint16_t e[2];
        for (int h = 0; h < 2; h++) {
            /* element (row, col) of matrix i is 2 bytes at col * 2 of its row's address */
            const int row = trans ? 2 * (t % 4) + h : t / 4;
            const int col = trans ? t / 4 : 2 * (t % 4) + h;
            memcpy(&e[h], sm + rows[8 * i + row] + 2 * col, 2);
        }
        r[i] = (uint32_t)e[0] | (uint32_t)e[1] << 16;
    }
}

/* A 16-bit element as a double (exactly). */
static inline double emu_elem(uint16_t u, __nv_bfloat16 *)
{
    return __uint_as_float((uint32_t)u << 16);
}

static inline double emu_elem(uint16_t u, __half *)
{
    __half_raw r;
    r.x = u;
    return __half2float(__half(r));
}

/* The 16-bit element in half (k & 1) of a register. */
static uint16_t emu_half(uint32_t r, int k)
{
    return (uint16_t)(r >> (16 * (k & 1)));
}

template <typename T> static void emu_mma(float *d, const uint32_t *a, uint32_t b0, uint32_t b1)
{
    struct {
        uint32_t a[4], b[2];
    } mine = {{a[0], a[1], a[2], a[3]}, {b0, b1}}, all[32];
    emu_need_warp(emu_warp_exchange(&mine, all, (int)sizeof mine), "mma.sync without all 32 lanes");
    const int g = emu_lane() / 4, c = emu_lane() % 4;
    for (int e = 0; e < 4; e++) {
        const int row = g + 8 * (e >> 1), col = 2 * c + (e & 1); /* C/D: this lane's element */
        double s = d[e];
        for (int k = 0; k < 16; k++) {
            /* A (row, k): lane (row % 8) * 4 + (k % 8) / 2, register row / 8 + 2 (k / 8);
             * B (k, col): lane col * 4 + (k % 8) / 2, register k / 8. */
            const uint32_t ra = all[(row % 8) * 4 + (k % 8) / 2].a[row / 8 + 2 * (k / 8)];
            const uint32_t rb = all[col * 4 + (k % 8) / 2].b[k / 8];
            s += emu_elem(emu_half(ra, k), (T *)0) * emu_elem(emu_half(rb, k), (T *)0);
        }
        d[e] = (float)s;
    }
}

void emu_mma_m16n8k16_bf16(float *d, const uint32_t *a, uint32_t b0, uint32_t b1)
{
    emu_mma<__nv_bfloat16>(d, a, b0, b1);
}

void emu_mma_m16n8k16_f16(float *d, const uint32_t *a, uint32_t b0, uint32_t b1)
{
    emu_mma<__half>(d, a, b0, b1);
}
