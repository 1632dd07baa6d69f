/* SPDX-License-Identifier: MIT */
/*
 * cudaemu.cpp - the host emulation behind cudaemu.h: fibers for a block's threads, barriers,
 * shuffles and warp exchanges between them, and the part of the CUDA runtime and cuBLAS the
 * backend calls (device memory is host memory, a stream runs its work at once, in call
 * order, cudaLaunchKernel runs the kernels emu_kernel has named, cuBLAS is a plain f32
 * reference GEMM), and stream capture and graphs.
 *
 * The one thing to know: within a block, a thread runs until it has to wait (a barrier, or a
 * shuffle whose warp has not all arrived), then the next one runs; a round in which no thread
 * got further means the block can never finish (a barrier some threads skip), and the launch
 * aborts naming the kernel's block. Blocks run in a shuffled order so that a kernel relying on
 * any order fails here as it could on a device.
 *
 * Capture is a device's: between cudaStreamBeginCapture and cudaStreamEndCapture nothing given
 * to the stream runs. Launches (their arguments copied), copies and memsets (pointers: a copy
 * reads its source when the graph runs) and cuBLAS GEMMs (alpha and beta by value) become the
 * graph's nodes, which each cudaGraphLaunch runs in order. What a device forbids meanwhile
 * fails as there and invalidates the capture: synchronizing the stream, waiting on an event
 * recorded in it, a copy to or from pageable host memory, and from the capturing thread the
 * calls that may synchronize (cudaMalloc, cudaFree, synchronous copies and memsets).
 */
#include "cudaemu.h"

#include <cublas_v2.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>

#include <map>
#include <memory>
#include <set>
#include <vector>

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

#define EMU_MAX_THREADS 1024
#define EMU_STACK (256 * 1024)
#define EMU_MAX_KERNELS 256 /* kernels cudaLaunchKernel can find (emu_kernel) */

/* ---- fibers ---- */

#if defined(__x86_64__)
/* emu_switch(save, to): saves the callee-saved registers and the stack pointer in *save, and
 * resumes the context whose stack pointer is to. */
extern "C" void emu_switch(void **save, void *to);
__asm__(".text\n"
        ".globl emu_switch\n"
        ".type emu_switch,@function\n"
        "emu_switch:\n"
        "  pushq %rbp\n  pushq %rbx\n  pushq %r12\n  pushq %r13\n  pushq %r14\n  pushq %r15\n"
        "  movq %rsp, (%rdi)\n"
        "  movq %rsi, %rsp\n"
        "  popq %r15\n  popq %r14\n  popq %r13\n  popq %r12\n  popq %rbx\n  popq %rbp\n"
        "  ret\n"
        ".size emu_switch,.-emu_switch\n");
#endif

typedef struct {
#if defined(__x86_64__)
    void *sp;
#else
    ucontext_t uc;
#endif
    uint8_t *stack;
    uint3 tid;
    int lane, warp;
    int done;
} emu_fiber_t;

/* A warp's collective operations (shuffles, exchanges): each live lane deposits its operand in
 * the slot of the current generation (lane l's n bytes at l n) and waits for the rest; the
 * last arrival opens the generation, and the lanes read every deposit before any of them can
 * reach the slot again (two generations later). kind is what the generation's first lane does
 * (0: a shuffle, else an exchange's byte count): a lane doing anything else is a kernel whose
 * lanes disagree on which collective they are in, and aborts rather than mixing operands. */
typedef struct {
    unsigned char val[2][32 * EMU_XCHG_BYTES];
    uint32_t mask[2]; /* the lanes that deposited */
    int kind[2];
    int arrived[2];
    uint64_t gen;
    int live;
} emu_warp_t;

static struct {
    emu_fiber_t fib[EMU_MAX_THREADS];
    emu_warp_t warp[EMU_MAX_THREADS / 32];
#if defined(__x86_64__)
    void *sched_sp;
#else
    ucontext_t sched_uc;
#endif
    emu_fiber_t *cur;
    uint3 block_idx;
    dim3 grid, block;
    void *smem;
    size_t smem_bytes;
    uint64_t block_serial; /* counts blocks run, so that per-block state elsewhere can reset */
    void (*body)(void *);
    void *arg;
    int live;
    int bar_arrived;
    uint64_t bar_gen;
    uint64_t progress; /* bumped whenever a thread gets further than a wait */
} E;

static void emu_yield(void)
{
    emu_fiber_t *f = E.cur;
#if defined(__x86_64__)
    emu_switch(&f->sp, E.sched_sp);
#else
    swapcontext(&f->uc, &E.sched_uc);
#endif
}

/* Opens the block's barrier once every live thread waits at it, and warp w's shuffle once
 * every live lane of it has arrived. */
static void emu_release(int w)
{
    if (E.bar_arrived > 0 && E.bar_arrived == E.live) {
        E.bar_arrived = 0;
        E.bar_gen++;
        E.progress++;
    }
    emu_warp_t *wp = &E.warp[w];
    const int s = (int)(wp->gen & 1);
    if (wp->arrived[s] > 0 && wp->arrived[s] == wp->live) {
        wp->arrived[s] = 0;
        wp->gen++;
        E.progress++;
    }
}

static void emu_entry(void)
{
    E.body(E.arg);
    emu_fiber_t *f = E.cur;
    f->done = 1;
    E.live--;
    E.warp[f->warp].live--;
    E.progress++;
    emu_release(f->warp);
    emu_yield();
    abort(); /* a finished fiber is never resumed */
}

static void emu_fiber_start(emu_fiber_t *f)
{
    if (!f->stack) {
        f->stack = (uint8_t *)mmap(NULL, EMU_STACK, PROT_READ | PROT_WRITE,
                                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (f->stack == MAP_FAILED) {
            fprintf(stderr, "cudaemu: no memory for a thread's stack\n");
            abort();
        }
    }
#if defined(__x86_64__)
    /* As if emu_switch had saved it: six registers, then emu_entry as the return address, then
     * a slot that leaves the stack aligned as at a function's entry. */
    uintptr_t *top = (uintptr_t *)(f->stack + EMU_STACK);
    top[-1] = 0;
    top[-2] = (uintptr_t)emu_entry;
    for (int i = 3; i <= 8; i++)
        top[-i] = 0;
    f->sp = top - 8;
#else
    getcontext(&f->uc);
    f->uc.uc_stack.ss_sp = f->stack;
    f->uc.uc_stack.ss_size = EMU_STACK;
    f->uc.uc_link = NULL;
    makecontext(&f->uc, emu_entry, 0);
#endif
}

static void emu_resume(emu_fiber_t *f)
{
    E.cur = f;
#if defined(__x86_64__)
    emu_switch(&E.sched_sp, f->sp);
#else
    swapcontext(&E.sched_uc, &f->uc);
#endif
    E.cur = NULL;
}

uint3 emu_thread_idx(void)
{
    return E.cur->tid;
}

uint3 emu_block_idx(void)
{
    return E.block_idx;
}

dim3 emu_block_dim(void)
{
    return E.block;
}

dim3 emu_grid_dim(void)
{
    return E.grid;
}

void *emu_dyn_smem(void)
{
    return E.smem;
}

size_t emu_dyn_smem_bytes(void)
{
    return E.smem_bytes;
}

uint64_t emu_block_serial(void)
{
    return E.block_serial;
}

int emu_lane(void)
{
    return E.cur->lane;
}

int emu_thread_rank(void)
{
    return (int)(E.cur - E.fib);
}

void emu_syncthreads(void)
{
    const uint64_t gen = E.bar_gen;
    E.bar_arrived++;
    E.progress++;
    emu_release(E.cur->warp);
    while (E.bar_gen == gen)
        emu_yield();
}

/* Deposits this lane's bytes for a collective of the given kind and waits until every live
 * lane of the warp has; returns the slot that holds the deposits. */
static int emu_warp_arrive(const void *v, int bytes, int kind)
{
    emu_fiber_t *f = E.cur;
    emu_warp_t *w = &E.warp[f->warp];
    const uint64_t gen = w->gen;
    const int s = (int)(gen & 1);
    if (w->arrived[s] == 0) {
        w->kind[s] = kind;
        w->mask[s] = 0;
    } else if (w->kind[s] != kind) {
        fprintf(stderr,
                "cudaemu: block (%u, %u, %u), warp %d: lane %d is in a different warp-collective "
                "operation from its warp's other lanes\n",
                E.block_idx.x, E.block_idx.y, E.block_idx.z, f->warp, f->lane);
        abort();
    }
    memcpy(w->val[s] + f->lane * bytes, v, (size_t)bytes);
    w->mask[s] |= 1u << f->lane;
    w->arrived[s]++;
    E.progress++;
    emu_release(f->warp);
    while (w->gen == gen)
        emu_yield();
    return s;
}

uint32_t emu_shfl(uint32_t v, int src_or_mask, int xor_mode)
{
    emu_fiber_t *f = E.cur;
    const int s = emu_warp_arrive(&v, 4, 0);
    const int src = xor_mode ? (f->lane ^ src_or_mask) : src_or_mask;
    uint32_t u;
    memcpy(&u, E.warp[f->warp].val[s] + 4 * (src & 31), 4);
    return u;
}

uint32_t emu_warp_exchange(const void *mine, void *all, int bytes)
{
    if (bytes <= 0 || bytes > EMU_XCHG_BYTES) {
        fprintf(stderr, "cudaemu: a warp exchange of %d bytes\n", bytes);
        abort();
    }
    emu_fiber_t *f = E.cur;
    const int s = emu_warp_arrive(mine, bytes, bytes);
    const emu_warp_t *w = &E.warp[f->warp];
    memcpy(all, w->val[s], 32 * (size_t)bytes);
    return w->mask[s];
}

static void emu_block(void)
{
    const int n = (int)(E.block.x * E.block.y * E.block.z);
    E.live = n;
    E.bar_arrived = 0;
    for (int w = 0; w < (n + 31) / 32; w++) {
        E.warp[w].arrived[0] = E.warp[w].arrived[1] = 0;
        E.warp[w].live = n - 32 * w < 32 ? n - 32 * w : 32;
    }
    for (int i = 0; i < n; i++) {
        emu_fiber_t *f = &E.fib[i];
        f->tid = make_uint3((unsigned)i % E.block.x, (unsigned)i / E.block.x % E.block.y,
                            (unsigned)i / (E.block.x * E.block.y));
        f->lane = i % 32;
        f->warp = i / 32;
        f->done = 0;
        emu_fiber_start(f);
    }
    int stuck = 0;
    while (E.live > 0) {
        const uint64_t before = E.progress;
        for (int i = 0; i < n; i++)
            if (!E.fib[i].done)
                emu_resume(&E.fib[i]);
        if (E.progress != before) {
            stuck = 0;
        } else if (++stuck > 2) {
            fprintf(stderr,
                    "cudaemu: block (%u, %u, %u) of a %u x %u x %u grid cannot finish: %d "
                    "threads wait at a barrier or shuffle that the other %d never reach\n",
                    E.block_idx.x, E.block_idx.y, E.block_idx.z, E.grid.x, E.grid.y, E.grid.z,
                    E.live, n - E.live);
            abort();
        }
    }
}

static void emu_check_launch(const emu_cfg_t *cfg)
{
    const dim3 g = cfg->grid, b = cfg->block;
    const uint64_t n_blocks = (uint64_t)g.x * g.y * g.z;
    const uint64_t n_threads = (uint64_t)b.x * b.y * b.z;
    if (n_blocks == 0 || n_threads == 0 || n_threads > EMU_MAX_THREADS || cfg->smem > 227 * 1024) {
        fprintf(stderr, "cudaemu: invalid launch (%u x %u x %u blocks of %u x %u x %u, %zu B)\n",
                g.x, g.y, g.z, b.x, b.y, b.z, cfg->smem);
        abort();
    }
}

void emu_run(const emu_cfg_t *cfg, void (*body)(void *), void *arg)
{
    const dim3 g = cfg->grid;
    const uint64_t n_blocks = (uint64_t)g.x * g.y * g.z;
    emu_check_launch(cfg);
    if (E.cur) {
        fprintf(stderr, "cudaemu: a launch from inside a kernel\n");
        abort();
    }
    E.grid = g;
    E.block = cfg->block;
    E.body = body;
    E.arg = arg;
    /* Uninitialised shared memory reads as NaN (0xff bytes), never as zeros by luck. */
    E.smem = cfg->smem ? aligned_alloc(256, (cfg->smem + 255) / 256 * 256) : NULL;
    E.smem_bytes = cfg->smem;
    /* Blocks in an order of their own: i -> (a i + c) mod n with a odd and coprime to n. */
    uint64_t a = 2 * (n_blocks / 3) + 1;
    while (n_blocks > 1) {
        uint64_t x = a, y = n_blocks;
        while (y) {
            const uint64_t t = x % y;
            x = y;
            y = t;
        }
        if (x == 1)
            break;
        a += 2;
    }
    for (uint64_t i = 0; i < n_blocks; i++) {
        const uint64_t j = (a * i + n_blocks / 2) % n_blocks;
        E.block_idx = make_uint3((unsigned)(j % g.x), (unsigned)(j / g.x % g.y),
                                 (unsigned)(j / ((uint64_t)g.x * g.y)));
        if (E.smem)
            memset(E.smem, 0xff, cfg->smem);
        E.block_serial++;
        emu_block();
    }
    free(E.smem);
    E.smem = NULL;
    E.smem_bytes = 0;
}

static struct {
    const void *fn;
    emu_launcher_t launch;
} emu_kernels[EMU_MAX_KERNELS];
static int emu_n_kernels;

const void *emu_register_kernel(const void *fn, emu_launcher_t launch)
{
    for (int i = 0; i < emu_n_kernels; i++)
        if (emu_kernels[i].fn == fn)
            return fn;
    if (emu_n_kernels == EMU_MAX_KERNELS) {
        fprintf(stderr, "cudaemu: more than %d kernels launched by cudaLaunchKernel\n",
                EMU_MAX_KERNELS);
        abort();
    }
    emu_kernels[emu_n_kernels].fn = fn;
    emu_kernels[emu_n_kernels].launch = launch;
    emu_n_kernels++;
    return fn;
}

/* ---- the runtime: one device, host memory, streams that run their work at once ---- */

/* A graph's node: a kernel launch (which owns its heap copy of the launch's arguments), a copy
 * or memset (pointers and sizes only: a copy reads its source when the node runs, as a device's
 * copy out of pinned memory does), or a cuBLAS GEMM (its by-value arguments, alpha and beta as
 * their values at the call: host pointer mode, the only one emulated, captures the values). A
 * graph and its executables share nodes by reference count, so either may be destroyed first. */
typedef struct {
    cublasOperation_t ta, tb;
    int m, n, k;
    float alpha, beta;
    const void *A, *B;
    void *C;
    cudaDataType at, bt, ct;
    int lda, ldb, ldc;
} emu_gemm_t;

struct emu_node_t {
    enum { KERNEL, COPY, SET, GEMM } kind;
    emu_cfg_t cfg;
    void (*body)(void *);
    void *arg;
    void (*drop)(void *);
    void *dst;
    const void *src;
    size_t bytes;
    int value;
    emu_gemm_t gemm;

    ~emu_node_t()
    {
        if (drop)
            drop(arg);
    }
};
typedef std::vector<std::shared_ptr<emu_node_t>> emu_nodes_t;

/* A stream runs its work at once unless it is capturing: then its work goes to nodes, until an
 * operation the capture forbids invalidates it (further work is dropped, and the capture ends
 * without a graph). */
struct CUstream_st {
    cudaStreamCaptureStatus status;
    cudaStreamCaptureMode mode;
    pthread_t thread; /* the capture's */
    emu_nodes_t nodes;
};
struct CUevent_st {
    int captured; /* last recorded in a capturing stream: not to be waited on */
};
struct CUgraph_st {
    emu_nodes_t nodes;
};
struct CUgraphExec_st {
    emu_nodes_t nodes;
};

/* Handles alive, so that a stale one (a graph launched after its destroy) is an error here, as
 * on a device, rather than a read of freed memory that may happen to work. */
static std::set<CUstream_st *> emu_streams;
static std::set<const void *> emu_graphs, emu_execs;
/* cudaMalloc's (false) and cudaMallocHost's (true) blocks by address, to tell pinned host
 * memory from pageable in a captured copy. */
static std::map<uintptr_t, std::pair<size_t, bool>> emu_blocks;
static thread_local cudaError_t emu_last_error = cudaSuccess;

static cudaError_t emu_fail(cudaError_t err)
{
    emu_last_error = err;
    return err;
}

/* Whether p .. p + bytes lies in one block: of cudaMallocHost (pinned) or of cudaMalloc. */
static bool emu_in_block(const void *p, size_t bytes, bool pinned)
{
    auto it = emu_blocks.upper_bound((uintptr_t)p);
    if (it == emu_blocks.begin())
        return false;
    --it;
    return it->second.second == pinned && (uintptr_t)p + bytes <= it->first + it->second.first;
}

/* A captured copy's sides: the host side pinned (a device refuses a pageable one it would
 * have to synchronize for, device to host, and a graph that read a pageable source at every
 * launch would not do what the call did, which copies the source out before it returns), and
 * each side within its allocation (the graph copies the same bytes at every launch). */
static bool emu_copy_capturable(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind)
{
    const bool src_pinned = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyHostToHost;
    const bool dst_pinned = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyHostToHost;
    if (kind == cudaMemcpyDefault)
        return (emu_in_block(src, bytes, true) || emu_in_block(src, bytes, false)) &&
               (emu_in_block(dst, bytes, true) || emu_in_block(dst, bytes, false));
    return emu_in_block(src, bytes, src_pinned) && emu_in_block(dst, bytes, dst_pinned);
}

/* Whether stream s's capture bars this thread from potentially unsafe calls (cudaMalloc,
 * synchronous copies; cuda_runtime_api.h, cudaThreadExchangeStreamCaptureMode), for a thread
 * in the default interaction mode: s is captured by this thread in any mode but relaxed, or by
 * another one in global mode. */
static bool emu_bars(const CUstream_st *s)
{
    if (s->status == cudaStreamCaptureStatusNone)
        return false;
    return pthread_equal(s->thread, pthread_self()) ? s->mode != cudaStreamCaptureModeRelaxed
                                                    : s->mode == cudaStreamCaptureModeGlobal;
}

/* A potentially unsafe call: an error where a capture bars it, and the captures that bar it
 * are invalidated, so that their cudaStreamEndCapture fails too. */
static cudaError_t emu_unsafe(const char *what)
{
    bool barred = false;
    for (CUstream_st *s : emu_streams)
        if (emu_bars(s)) {
            s->status = cudaStreamCaptureStatusInvalidated;
            barred = true;
        }
    if (!barred)
        return cudaSuccess;
    fprintf(stderr, "cudaemu: %s while a stream is captured\n", what);
    return emu_fail(cudaErrorStreamCaptureUnsupported);
}

/* An operation that conflicts with s's capture: it fails, and the capture is invalidated. */
static cudaError_t emu_conflict(CUstream_st *s, const char *what)
{
    fprintf(stderr, "cudaemu: %s on a stream that is being captured\n", what);
    s->status = cudaStreamCaptureStatusInvalidated;
    return emu_fail(cudaErrorStreamCaptureUnsupported);
}

/* Appends a node to s's capture; dropped (and its launch's arguments freed) if the capture was
 * invalidated. */
static cudaError_t emu_record(CUstream_st *s, std::shared_ptr<emu_node_t> n)
{
    if (s->status == cudaStreamCaptureStatusInvalidated)
        return emu_fail(cudaErrorStreamCaptureInvalidated);
    s->nodes.push_back(std::move(n));
    return cudaSuccess;
}

static void emu_gemm_run(const emu_gemm_t *g);

static void emu_node_run(const emu_node_t *n)
{
    switch (n->kind) {
    case emu_node_t::KERNEL: emu_run(&n->cfg, n->body, n->arg); break;
    case emu_node_t::COPY: memmove(n->dst, n->src, n->bytes); break;
    case emu_node_t::SET: memset(n->dst, n->value, n->bytes); break;
    case emu_node_t::GEMM: emu_gemm_run(&n->gemm); break;
    }
}

int emu_capturing(cudaStream_t s)
{
    return s && s->status != cudaStreamCaptureStatusNone;
}

void emu_record_launch(const emu_cfg_t *cfg, void (*body)(void *), void *arg, void (*drop)(void *))
{
    auto n = std::make_shared<emu_node_t>();
    n->kind = emu_node_t::KERNEL;
    n->cfg = *cfg;
    n->body = body;
    n->arg = arg;
    n->drop = drop;
    emu_check_launch(cfg); /* a device refuses a bad launch when it is made, not when it runs */
    emu_record(cfg->stream, std::move(n));
}

extern "C" {

cudaError_t cudaGetDeviceCount(int *count)
{
    *count = 1;
    return cudaSuccess;
}

cudaError_t cudaSetDevice(int device)
{
    return device == 0 ? cudaSuccess : emu_fail(cudaErrorInvalidDevice);
}

cudaError_t cudaGetLastError(void)
{
    const cudaError_t err = emu_last_error;
    emu_last_error = cudaSuccess;
    return err;
}

const char *cudaGetErrorString(cudaError_t err)
{
    switch (err) {
    case cudaSuccess: return "no error";
    case cudaErrorStreamCaptureUnsupported:
        return "operation not permitted when stream is capturing (emulated device)";
    case cudaErrorStreamCaptureInvalidated:
        return "operation failed due to a previous error during capture (emulated device)";
    case cudaErrorStreamCaptureWrongThread:
        return "capture ended in another thread than the one that began it (emulated device)";
    case cudaErrorCapturedEvent:
        return "operation not permitted on an event last recorded in a capturing stream "
               "(emulated device)";
    case cudaErrorIllegalState: return "operation not permitted in this state (emulated device)";
    case cudaErrorInvalidResourceHandle: return "invalid resource handle (emulated device)";
    default: return "error (emulated device)";
    }
}

cudaError_t cudaDeviceGetAttribute(int *value, enum cudaDeviceAttr attr, int device)
{
    (void)device;
    /* A small device, so that the launchers' "too few blocks for the SMs" paths run. */
    *value = attr == cudaDevAttrMultiProcessorCount ? 8 : 0;
    return cudaSuccess;
}

/* A kernel named by its pointer alone: one that emu_kernel has recorded, or an error. */
cudaError_t cudaLaunchKernel(const void *func, dim3 grid, dim3 block, void **args, size_t smem,
                             cudaStream_t s)
{
    for (int i = 0; i < emu_n_kernels; i++)
        if (emu_kernels[i].fn == func) {
            const emu_cfg_t cfg = {grid, block, smem, s};
            emu_kernels[i].launch(func, &cfg, args);
            return cudaSuccess;
        }
    fprintf(stderr, "cudaemu: cudaLaunchKernel of a kernel not named through emu_kernel\n");
    return emu_fail(cudaErrorInvalidDeviceFunction);
}

cudaError_t cudaFuncSetAttribute(const void *func, enum cudaFuncAttribute attr, int value)
{
    (void)func;
    (void)attr;
    return value <= 227 * 1024 ? cudaSuccess : emu_fail(cudaErrorInvalidValue);
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned int flags)
{
    (void)flags;
    *s = new CUstream_st{cudaStreamCaptureStatusNone, cudaStreamCaptureModeGlobal, pthread_t(), {}};
    emu_streams.insert(*s);
    return cudaSuccess;
}

cudaError_t cudaStreamDestroy(cudaStream_t s)
{
    if (!emu_streams.count(s))
        return emu_fail(cudaErrorInvalidResourceHandle);
    if (emu_capturing(s))
        return emu_conflict(s, "cudaStreamDestroy");
    emu_streams.erase(s);
    delete s;
    return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t s)
{
    if (emu_capturing(s))
        return emu_conflict(s, "cudaStreamSynchronize");
    return cudaSuccess;
}

/* cudaMalloc and cudaMallocHost: a tracked block of bytes, pinned host memory or not. */
static cudaError_t emu_alloc(const char *what, void **p, size_t bytes, bool pinned)
{
    if (cudaError_t err = emu_unsafe(what))
        return err;
    *p = aligned_alloc(256, (bytes + 255) / 256 * 256);
    if (!*p)
        return emu_fail(cudaErrorMemoryAllocation);
    emu_blocks[(uintptr_t)*p] = {bytes, pinned};
    return cudaSuccess;
}

/* cudaFree and cudaFreeHost (both synchronize the device). */
static cudaError_t emu_release(const char *what, void *p)
{
    if (cudaError_t err = emu_unsafe(what))
        return err;
    emu_blocks.erase((uintptr_t)p);
    free(p);
    return cudaSuccess;
}

cudaError_t cudaMalloc(void **p, size_t bytes)
{
    return emu_alloc("cudaMalloc", p, bytes, false);
}

cudaError_t cudaFree(void *p)
{
    return emu_release("cudaFree", p);
}

cudaError_t cudaMallocHost(void **p, size_t bytes)
{
    return emu_alloc("cudaMallocHost", p, bytes, true);
}

cudaError_t cudaFreeHost(void *p)
{
    return emu_release("cudaFreeHost", p);
}

cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, enum cudaMemcpyKind kind,
                            cudaStream_t s)
{
    if (!emu_capturing(s)) {
        memmove(dst, src, bytes);
        return cudaSuccess;
    }
    if (!emu_copy_capturable(dst, src, bytes, kind))
        return emu_conflict(s, "a copy to or from pageable host memory (or past its block)");
    auto n = std::make_shared<emu_node_t>();
    n->kind = emu_node_t::COPY;
    n->dst = dst;
    n->src = src;
    n->bytes = bytes;
    return emu_record(s, std::move(n));
}

cudaError_t cudaMemcpy(void *dst, const void *src, size_t bytes, enum cudaMemcpyKind kind)
{
    (void)kind;
    if (cudaError_t err = emu_unsafe("cudaMemcpy"))
        return err;
    memmove(dst, src, bytes);
    return cudaSuccess;
}

cudaError_t cudaMemset(void *p, int v, size_t bytes)
{
    if (cudaError_t err = emu_unsafe("cudaMemset"))
        return err;
    memset(p, v, bytes);
    return cudaSuccess;
}

cudaError_t cudaMemsetAsync(void *p, int v, size_t bytes, cudaStream_t s)
{
    if (!emu_capturing(s)) {
        memset(p, v, bytes);
        return cudaSuccess;
    }
    auto n = std::make_shared<emu_node_t>();
    n->kind = emu_node_t::SET;
    n->dst = p;
    n->value = v;
    n->bytes = bytes;
    return emu_record(s, std::move(n));
}

cudaError_t cudaEventCreateWithFlags(cudaEvent_t *e, unsigned int flags)
{
    (void)flags;
    *e = new CUevent_st{0};
    return cudaSuccess;
}

/* Recorded in a capturing stream, an event marks a point of the capture, not of the stream's
 * work: waiting on it is an error until it is recorded outside a capture again. */
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s)
{
    e->captured = emu_capturing(s);
    if (s && s->status == cudaStreamCaptureStatusInvalidated)
        return emu_fail(cudaErrorStreamCaptureInvalidated);
    return cudaSuccess;
}

cudaError_t cudaEventSynchronize(cudaEvent_t e)
{
    if (e->captured) {
        fprintf(stderr, "cudaemu: cudaEventSynchronize of an event recorded in a capture\n");
        return emu_fail(cudaErrorCapturedEvent);
    }
    return cudaSuccess;
}

cudaError_t cudaEventDestroy(cudaEvent_t e)
{
    delete e;
    return cudaSuccess;
}

/* ---- capture and graphs ---- */

cudaError_t cudaStreamBeginCapture(cudaStream_t s, enum cudaStreamCaptureMode mode)
{
    if (!s) /* the legacy stream cannot be captured */
        return emu_fail(cudaErrorStreamCaptureUnsupported);
    if (!emu_streams.count(s))
        return emu_fail(cudaErrorInvalidResourceHandle);
    if (s->status != cudaStreamCaptureStatusNone)
        return emu_fail(cudaErrorIllegalState);
    if (mode != cudaStreamCaptureModeGlobal && mode != cudaStreamCaptureModeThreadLocal &&
        mode != cudaStreamCaptureModeRelaxed)
        return emu_fail(cudaErrorInvalidValue);
    s->status = cudaStreamCaptureStatusActive;
    s->mode = mode;
    s->thread = pthread_self();
    s->nodes.clear();
    return cudaSuccess;
}

cudaError_t cudaStreamIsCapturing(cudaStream_t s, enum cudaStreamCaptureStatus *status)
{
    *status = s ? s->status : cudaStreamCaptureStatusNone;
    return cudaSuccess;
}

cudaError_t cudaStreamEndCapture(cudaStream_t s, cudaGraph_t *g)
{
    if (!s || !emu_streams.count(s) || s->status == cudaStreamCaptureStatusNone)
        return emu_fail(cudaErrorIllegalState);
    if (s->mode != cudaStreamCaptureModeRelaxed && !pthread_equal(s->thread, pthread_self()))
        return emu_fail(cudaErrorStreamCaptureWrongThread);
    const bool invalid = s->status == cudaStreamCaptureStatusInvalidated;
    s->status = cudaStreamCaptureStatusNone;
    if (invalid) {
        s->nodes.clear();
        *g = NULL;
        return emu_fail(cudaErrorStreamCaptureInvalidated);
    }
    *g = new CUgraph_st{std::move(s->nodes)};
    s->nodes.clear();
    emu_graphs.insert(*g);
    return cudaSuccess;
}

cudaError_t cudaGraphInstantiate(cudaGraphExec_t *e, cudaGraph_t g, unsigned long long flags)
{
    const unsigned long long known =
        cudaGraphInstantiateFlagAutoFreeOnLaunch | cudaGraphInstantiateFlagUpload |
        cudaGraphInstantiateFlagDeviceLaunch | cudaGraphInstantiateFlagUseNodePriority;
    if (!emu_graphs.count(g))
        return emu_fail(cudaErrorInvalidResourceHandle);
    if (flags & ~known)
        return emu_fail(cudaErrorInvalidValue);
    *e = new CUgraphExec_st{g->nodes};
    emu_execs.insert(*e);
    return cudaSuccess;
}

/* Runs the graph's nodes in capture order, or into a capturing stream adds them to its capture
 * (a device adds the graph as one child node: the same work in the same order). */
cudaError_t cudaGraphLaunch(cudaGraphExec_t e, cudaStream_t s)
{
    if (!emu_execs.count(e)) {
        fprintf(stderr, "cudaemu: cudaGraphLaunch of a graph that is not instantiated\n");
        return emu_fail(cudaErrorInvalidResourceHandle);
    }
    if (emu_capturing(s)) {
        for (const auto &n : e->nodes)
            if (cudaError_t err = emu_record(s, n))
                return err;
        return cudaSuccess;
    }
    for (const auto &n : e->nodes)
        emu_node_run(n.get());
    return cudaSuccess;
}

cudaError_t cudaGraphExecDestroy(cudaGraphExec_t e)
{
    if (!emu_execs.erase(e))
        return emu_fail(cudaErrorInvalidResourceHandle);
    delete e;
    return cudaSuccess;
}

cudaError_t cudaGraphDestroy(cudaGraph_t g)
{
    if (!emu_graphs.erase(g))
        return emu_fail(cudaErrorInvalidResourceHandle);
    delete g;
    return cudaSuccess;
}

/* ---- cuBLAS: a reference GEMM, f32 accumulation ---- */

/* A handle's stream decides whether its calls run or are captured. Host pointer mode only
 * (cublasSetPointerMode is not emulated): alpha and beta are host values. */
struct cublasContext {
    cudaStream_t stream;
};

cublasStatus_t cublasCreate(cublasHandle_t *h)
{
    *h = new cublasContext{NULL};
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasDestroy(cublasHandle_t h)
{
    delete h;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetStream(cublasHandle_t h, cudaStream_t s)
{
    h->stream = s;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetWorkspace(cublasHandle_t h, void *ws, size_t bytes)
{
    (void)h;
    (void)ws;
    (void)bytes;
    return CUBLAS_STATUS_SUCCESS;
}

} /* extern "C" */

static float emu_elem(const void *p, cudaDataType t, size_t i)
{
    if (t == CUDA_R_32F)
        return ((const float *)p)[i];
    if (t == CUDA_R_16BF)
        return __bfloat162float(((const __nv_bfloat16 *)p)[i]);
    return __half2float(((const __half *)p)[i]);
}

/* Column-major C (m x n) = alpha op(A) op(B) + beta C, each product summed in k order. The
 * operands are widened first into rows of k floats: a[i] is op(A)'s row i, b[j] op(B)'s
 * column j. */
static void emu_gemm_run(const emu_gemm_t *g)
{
    const int m = g->m, n = g->n, k = g->k;
    float *a = (float *)malloc((size_t)m * k * sizeof(float));
    float *b = (float *)malloc((size_t)n * k * sizeof(float));
    if (!a || !b) {
        fprintf(stderr, "cudaemu: no memory for a GEMM's operands\n");
        abort();
    }
    for (int i = 0; i < m; i++)
        for (int l = 0; l < k; l++)
            a[(size_t)i * k + l] =
                emu_elem(g->A, g->at,
                         g->ta == CUBLAS_OP_N ? (size_t)l * g->lda + i : (size_t)i * g->lda + l);
    for (int j = 0; j < n; j++)
        for (int l = 0; l < k; l++)
            b[(size_t)j * k + l] =
                emu_elem(g->B, g->bt,
                         g->tb == CUBLAS_OP_N ? (size_t)j * g->ldb + l : (size_t)l * g->ldb + j);
    for (int j = 0; j < n; j++)
        for (int i = 0; i < m; i++) {
            const float *ai = a + (size_t)i * k, *bj = b + (size_t)j * k;
            float s = 0.0f;
            for (int l = 0; l < k; l++)
                s = fmaf(ai[l], bj[l], s);
            const size_t ci = (size_t)j * g->ldc + i;
            const float v =
                g->alpha * s + (g->beta != 0.0f ? g->beta * emu_elem(g->C, g->ct, ci) : 0.0f);
            if (g->ct == CUDA_R_32F)
                ((float *)g->C)[ci] = v;
            else if (g->ct == CUDA_R_16BF)
                ((__nv_bfloat16 *)g->C)[ci] = __float2bfloat16_rn(v);
            else
                ((__half *)g->C)[ci] = __float2half_rn(v);
        }
    free(a);
    free(b);
}

/* Runs the GEMM, or records it where the handle's stream is capturing. */
static cublasStatus_t emu_gemm(cublasHandle_t h, const emu_gemm_t *g)
{
    if (g->ct != CUDA_R_32F && g->ct != CUDA_R_16BF && g->ct != CUDA_R_16F)
        return CUBLAS_STATUS_NOT_SUPPORTED;
    if (!emu_capturing(h->stream)) {
        emu_gemm_run(g);
        return CUBLAS_STATUS_SUCCESS;
    }
    auto n = std::make_shared<emu_node_t>();
    n->kind = emu_node_t::GEMM;
    n->gemm = *g;
    return emu_record(h->stream, std::move(n)) == cudaSuccess ? CUBLAS_STATUS_SUCCESS
                                                              : CUBLAS_STATUS_EXECUTION_FAILED;
}

extern "C" {

cublasStatus_t cublasGemmEx(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m,
                            int n, int k, const void *alpha, const void *A, cudaDataType at,
                            int lda, const void *B, cudaDataType bt, int ldb, const void *beta,
                            void *C, cudaDataType ct, int ldc, cublasComputeType_t compute,
                            cublasGemmAlgo_t algo)
{
    (void)algo;
    if (compute != CUBLAS_COMPUTE_32F)
        return CUBLAS_STATUS_NOT_SUPPORTED;
    const emu_gemm_t g = {
        ta, tb, m,   n,   k,  *(const float *)alpha, *(const float *)beta, A, B, C, at,
        bt, ct, lda, ldb, ldc};
    return emu_gemm(h, &g);
}

cublasStatus_t cublasSgemm(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m,
                           int n, int k, const float *alpha, const float *A, int lda,
                           const float *B, int ldb, const float *beta, float *C, int ldc)
{
    const emu_gemm_t g = {ta, tb, m,          n,          k,          *alpha, *beta, A,
                          B,  C,  CUDA_R_32F, CUDA_R_32F, CUDA_R_32F, lda,    ldb,   ldc};
    return emu_gemm(h, &g);
}

} /* extern "C" */
