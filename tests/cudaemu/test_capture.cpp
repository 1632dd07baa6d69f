/* SPDX-License-Identifier: MIT */
/*
 * test_capture.cpp - the emulated device's stream capture and graphs, as the backend's graph
 * steps rely on them: nothing given to a capturing stream runs before the graph is launched; a
 * launch's arguments and cuBLAS's alpha and beta are the values at the call, a copy's source
 * is read when the graph runs; every launch of the graph runs its nodes again, in order, and a
 * graph and its executable are destroyed independently; what a device forbids during a capture
 * fails and invalidates it. The engine test (emu_test_cuda_engine) checks the backend's graphs
 * end to end; this one checks the emulation itself, which that test cannot: a step run twice,
 * once at its capture and once by its graph, gives the same results there.
 */
#include "cudaemu.h"

#include <cublas_v2.h>

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
extern "C" {
#include <cmocka.h>
}

#define N 64

/* y += a x, as a kernel of the backend's launch shape. */
static __global__ void axpy_kernel(float *y, const float *x, float a, int n)
{
    const int i = (int)(blockIdx.x * blockDim.x + threadIdx.x);
    if (i < n)
        y[i] += a * x[i];
}

/* The launch host_cu.py makes of axpy_kernel<<<2, 32, 0, st>>>(y, x, a, n). */
static void axpy(cudaStream_t st, float *y, const float *x, float a, int n)
{
    emu_bind(axpy_kernel, dim3(2), dim3(32), 0, st)(y, x, a, n);
}

typedef struct {
    cudaStream_t st;
    float *host;  /* pinned, N */
    float *x, *y; /* device, N each */
} rig_t;

static void rig_open(rig_t *r)
{
    assert_int_equal(cudaStreamCreateWithFlags(&r->st, cudaStreamNonBlocking), cudaSuccess);
    assert_int_equal(cudaMallocHost((void **)&r->host, N * sizeof(float)), cudaSuccess);
    assert_int_equal(cudaMalloc((void **)&r->x, N * sizeof(float)), cudaSuccess);
    assert_int_equal(cudaMalloc((void **)&r->y, N * sizeof(float)), cudaSuccess);
    for (int i = 0; i < N; i++) {
        r->host[i] = (float)i;
        r->x[i] = -1.0f;
        r->y[i] = 0.0f;
    }
}

static void rig_close(rig_t *r)
{
    assert_int_equal(cudaFree(r->y), cudaSuccess);
    assert_int_equal(cudaFree(r->x), cudaSuccess);
    assert_int_equal(cudaFreeHost(r->host), cudaSuccess);
    assert_int_equal(cudaStreamDestroy(r->st), cudaSuccess);
}

/* Upload, axpy, a memset and a GEMM captured; changes to their inputs after the calls; two
 * launches of the graph. */
static void test_capture_records_and_replays(void **state)
{
    (void)state;
    rig_t r;
    rig_open(&r);
    cublasHandle_t blas;
    assert_int_equal(cublasCreate(&blas), CUBLAS_STATUS_SUCCESS);
    assert_int_equal(cublasSetStream(blas, r.st), CUBLAS_STATUS_SUCCESS);
    float *c, *z;
    assert_int_equal(cudaMalloc((void **)&c, 4 * sizeof(float)), cudaSuccess);
    assert_int_equal(cudaMalloc((void **)&z, 16), cudaSuccess);
    const float ident[4] = {1.0f, 0.0f, 0.0f, 1.0f};
    memset(c, 0, 4 * sizeof(float));
    memset(z, 0, 16);

    assert_int_equal(cudaStreamBeginCapture(r.st, cudaStreamCaptureModeThreadLocal), cudaSuccess);
    enum cudaStreamCaptureStatus cs;
    assert_int_equal(cudaStreamIsCapturing(r.st, &cs), cudaSuccess);
    assert_int_equal(cs, cudaStreamCaptureStatusActive);
    assert_int_equal(cudaMemcpyAsync(r.x, r.host, N * sizeof(float), cudaMemcpyHostToDevice, r.st),
                     cudaSuccess);
    float a = 2.0f;
    axpy(r.st, r.y, r.x, a, N);
    a = 100.0f; /* the launch took 2 */
    assert_int_equal(cudaMemsetAsync(z, 0x7f, 16, r.st), cudaSuccess);
    /* c (2 x 2) = alpha I I + beta c, alpha 3 and beta 1 at the call. */
    float alpha = 3.0f, beta = 1.0f;
    assert_int_equal(cublasSgemm(blas, CUBLAS_OP_N, CUBLAS_OP_N, 2, 2, 2, &alpha, ident, 2, ident,
                                 2, &beta, c, 2),
                     CUBLAS_STATUS_SUCCESS);
    alpha = beta = 0.0f;
    cudaGraph_t g = NULL;
    assert_int_equal(cudaStreamEndCapture(r.st, &g), cudaSuccess);
    assert_non_null(g);
    assert_int_equal(cudaStreamIsCapturing(r.st, &cs), cudaSuccess);
    assert_int_equal(cs, cudaStreamCaptureStatusNone);

    /* Nothing ran. */
    for (int i = 0; i < N; i++) {
        assert_true(r.x[i] == -1.0f);
        assert_true(r.y[i] == 0.0f);
    }
    assert_true(c[0] == 0.0f && c[3] == 0.0f);
    assert_int_equal(z[0], 0);

    cudaGraphExec_t e = NULL;
    assert_int_equal(cudaGraphInstantiate(&e, g, 0), cudaSuccess);
    assert_int_equal(cudaGraphDestroy(g), cudaSuccess); /* the executable keeps its nodes */
    for (int i = 0; i < N; i++)
        r.host[i] = (float)(10 * i); /* the copy reads this at launch */
    assert_int_equal(cudaGraphLaunch(e, r.st), cudaSuccess);
    assert_int_equal(cudaStreamSynchronize(r.st), cudaSuccess);
    for (int i = 0; i < N; i++) {
        assert_true(r.x[i] == (float)(10 * i));
        assert_true(r.y[i] == 2.0f * (float)(10 * i));
    }
    assert_true(c[0] == 3.0f && c[1] == 0.0f && c[2] == 0.0f && c[3] == 3.0f);
    assert_int_equal(((unsigned char *)z)[15], 0x7f);

    /* A second launch runs every node again, in order: the copy first, then axpy adds. */
    for (int i = 0; i < N; i++)
        r.host[i] = 1.0f;
    assert_int_equal(cudaGraphLaunch(e, r.st), cudaSuccess);
    for (int i = 0; i < N; i++) {
        assert_true(r.x[i] == 1.0f);
        assert_true(r.y[i] == 2.0f * (float)(10 * i) + 2.0f);
    }
    assert_true(c[0] == 6.0f && c[3] == 6.0f);
    assert_int_equal(cudaGraphExecDestroy(e), cudaSuccess);
    assert_int_equal(cudaGraphLaunch(e, r.st), cudaErrorInvalidResourceHandle);
    assert_int_equal(cudaGetLastError(), cudaErrorInvalidResourceHandle);
    assert_int_equal(cudaGetLastError(), cudaSuccess);

    assert_int_equal(cublasDestroy(blas), CUBLAS_STATUS_SUCCESS);
    assert_int_equal(cudaFree(z), cudaSuccess);
    assert_int_equal(cudaFree(c), cudaSuccess);
    rig_close(&r);
}

/* A capture that did err: later work into it is dropped, it ends without a graph, and the
 * stream then runs its work again. */
static void expect_invalidated(rig_t *r)
{
    enum cudaStreamCaptureStatus cs;
    assert_int_equal(cudaStreamIsCapturing(r->st, &cs), cudaSuccess);
    assert_int_equal(cs, cudaStreamCaptureStatusInvalidated);
    axpy(r->st, r->y, r->x, 1.0f, N);
    assert_int_equal(cudaGetLastError(), cudaErrorStreamCaptureInvalidated);
    cudaGraph_t g = (cudaGraph_t)&g;
    assert_int_equal(cudaStreamEndCapture(r->st, &g), cudaErrorStreamCaptureInvalidated);
    assert_null(g);
    assert_int_equal(cudaGetLastError(), cudaErrorStreamCaptureInvalidated);
    assert_true(r->y[0] == 0.0f);
    axpy(r->st, r->y, r->x, 1.0f, N);
    assert_true(r->y[0] == -1.0f);
    r->y[0] = 0.0f;
}

static void test_capture_forbids(void **state)
{
    (void)state;
    rig_t r;
    rig_open(&r);
    void *p = NULL, *pageable = malloc(N * sizeof(float));
    assert_non_null(pageable);

    /* Synchronizing the capturing stream. */
    assert_int_equal(cudaStreamBeginCapture(r.st, cudaStreamCaptureModeThreadLocal), cudaSuccess);
    assert_int_equal(cudaStreamSynchronize(r.st), cudaErrorStreamCaptureUnsupported);
    expect_invalidated(&r);

    /* cudaMalloc from the capturing thread, unless the capture is relaxed. */
    assert_int_equal(cudaStreamBeginCapture(r.st, cudaStreamCaptureModeThreadLocal), cudaSuccess);
    assert_int_equal(cudaMalloc(&p, 64), cudaErrorStreamCaptureUnsupported);
    expect_invalidated(&r);
    assert_int_equal(cudaStreamBeginCapture(r.st, cudaStreamCaptureModeRelaxed), cudaSuccess);
    assert_int_equal(cudaMalloc(&p, 64), cudaSuccess);
    cudaGraph_t g = NULL;
    assert_int_equal(cudaStreamEndCapture(r.st, &g), cudaSuccess);
    assert_int_equal(cudaGraphDestroy(g), cudaSuccess);
    assert_int_equal(cudaFree(p), cudaSuccess);

    /* A synchronous copy, and asynchronous ones to or from pageable memory. */
    assert_int_equal(cudaStreamBeginCapture(r.st, cudaStreamCaptureModeGlobal), cudaSuccess);
    assert_int_equal(cudaMemcpy(r.x, r.host, 4, cudaMemcpyHostToDevice),
                     cudaErrorStreamCaptureUnsupported);
    expect_invalidated(&r);
    assert_int_equal(cudaStreamBeginCapture(r.st, cudaStreamCaptureModeThreadLocal), cudaSuccess);
    assert_int_equal(cudaMemcpyAsync(r.x, pageable, 4, cudaMemcpyHostToDevice, r.st),
                     cudaErrorStreamCaptureUnsupported);
    expect_invalidated(&r);
    assert_int_equal(cudaStreamBeginCapture(r.st, cudaStreamCaptureModeThreadLocal), cudaSuccess);
    assert_int_equal(cudaMemcpyAsync(pageable, r.y, 4, cudaMemcpyDeviceToHost, r.st),
                     cudaErrorStreamCaptureUnsupported);
    expect_invalidated(&r);
    /* A copy past its pinned block: the graph would read past it at every launch. */
    assert_int_equal(cudaStreamBeginCapture(r.st, cudaStreamCaptureModeThreadLocal), cudaSuccess);
    assert_int_equal(
        cudaMemcpyAsync(r.x, r.host, (N + 1) * sizeof(float), cudaMemcpyHostToDevice, r.st),
        cudaErrorStreamCaptureUnsupported);
    expect_invalidated(&r);

    /* Waiting on an event recorded in the capture: refused, without invalidating it. */
    cudaEvent_t ev;
    assert_int_equal(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming), cudaSuccess);
    assert_int_equal(cudaStreamBeginCapture(r.st, cudaStreamCaptureModeThreadLocal), cudaSuccess);
    assert_int_equal(cudaEventRecord(ev, r.st), cudaSuccess);
    assert_int_equal(cudaEventSynchronize(ev), cudaErrorCapturedEvent);
    assert_int_equal(cudaStreamEndCapture(r.st, &g), cudaSuccess);
    assert_int_equal(cudaGraphDestroy(g), cudaSuccess);
    assert_int_equal(cudaEventSynchronize(ev), cudaErrorCapturedEvent);
    assert_int_equal(cudaEventRecord(ev, r.st), cudaSuccess);
    assert_int_equal(cudaEventSynchronize(ev), cudaSuccess);
    assert_int_equal(cudaEventDestroy(ev), cudaSuccess);
    cudaGetLastError();

    /* Capture begun twice, or ended where it was not begun. */
    assert_int_equal(cudaStreamBeginCapture(r.st, cudaStreamCaptureModeThreadLocal), cudaSuccess);
    assert_int_equal(cudaStreamBeginCapture(r.st, cudaStreamCaptureModeThreadLocal),
                     cudaErrorIllegalState);
    assert_int_equal(cudaStreamEndCapture(r.st, &g), cudaSuccess);
    assert_int_equal(cudaStreamEndCapture(r.st, &g), cudaErrorIllegalState);
    assert_int_equal(cudaGraphDestroy(g), cudaSuccess);
    cudaGetLastError();

    free(pageable);
    rig_close(&r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_capture_records_and_replays),
        cmocka_unit_test(test_capture_forbids),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
