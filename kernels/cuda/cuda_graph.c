/* SPDX-License-Identifier: MIT */
/*
 * cuda_graph.c - decode steps as CUDA graphs (BATON_CUDA_GRAPHS=1): a pure decode step is
 * captured once per key and replayed on later steps, so that its few hundred launches cost
 * one graph launch.
 *
 * The one thing to know: between step_begin and step_end every op runs in one of two modes.
 * Capturing, ops launch as usual into the captured stream, their host inputs (token ids,
 * positions, block tables, sampling temperatures) go through fixed offsets of the input arena
 * as pinned-host to device copies that the graph records, and their downloads wait for
 * step_end. Replaying, ops launch nothing: they write their host inputs at the same offsets,
 * which the graph's copy nodes then move, and queue the same downloads. Each op traces its
 * by-value arguments, so a replay whose arguments differ from its capture's (a key that missed
 * something) is caught before the graph runs instead of computing wrong results.
 *
 * Nothing here allocates after create except a key's capture (cudaStreamEndCapture's graph and
 * cudaGraphInstantiate), once per key, and again after a replay mismatch dropped it (at most
 * four times: then graphs are off).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_impl.h"

/* Inputs of one graph step. A step of 64 sequences over 4096-token contexts (16-token blocks)
 * takes about 66 KiB; steps that would need more run op by op. */
#define ARENA_BYTES ((size_t)16 << 20)

static size_t align_up(size_t n)
{
    return (n + BT_STEPGRAPH_ALIGN - 1) / BT_STEPGRAPH_ALIGN * BT_STEPGRAPH_ALIGN;
}

static void exec_destroy(void *arg, void *exec)
{
    (void)arg;
    cudaGraphExecDestroy((cudaGraphExec_t)exec);
}

int bt_cuda_graph_init(bt_cuda_ctx_t *c)
{
    void *host = NULL, *dev = NULL;
    if (cudaMallocHost(&host, ARENA_BYTES) != cudaSuccess)
        return BT_ERR_NOMEM;
    c->arena_host = host;
    if (cudaMalloc(&dev, ARENA_BYTES) != cudaSuccess)
        return BT_ERR_NOMEM;
    c->arena_dev = dev;
    int st = bt_stepgraph_init(&c->sg, ARENA_BYTES, exec_destroy, c);
    if (st != BT_OK)
        return st;
    c->graphs = 1;
    return BT_OK;
}

void bt_cuda_graph_fini(bt_cuda_ctx_t *c)
{
    bt_stepgraph_fini(&c->sg);
    cudaFree(c->arena_dev);
    cudaFreeHost(c->arena_host);
    c->arena_dev = c->arena_host = NULL;
    c->graphs = 0;
}

/* Bytes of an attention table slot: the descriptors and, for every sequence, the blocks of
 * the longest context the key's attention bucket allows. Any table of the key fits, so the
 * graph's copy of the slot is the same size on every replay. */
static size_t table_slot_bytes(int n_seqs, int32_t n_chunks, int32_t chunk, int32_t block_size)
{
    size_t blocks =
        ((size_t)n_chunks * (size_t)chunk + (size_t)block_size - 1) / (size_t)block_size;
    return (size_t)n_seqs * (sizeof(bt_cuda_seq_t) + blocks * sizeof(int32_t));
}

static int out_valid(const bt_step_shape_t *s)
{
    switch (s->out_kind) {
    case BT_STEP_OUT_LOGITS: return s->k == 0;
    case BT_STEP_OUT_ARGMAX: return s->k == 1;
    case BT_STEP_OUT_TOPK:
    case BT_STEP_OUT_TOPK_TOTALS: return s->k >= 2 && s->k <= BT_TOPK_MAX;
    }
    return 0;
}

/* Whether the step can be one graph. Its outputs must come out of one launch each (argmax,
 * top-k and window totals write one scratch buffer each that a later piece would overwrite
 * before step_end downloads it; three downloads at most, well within the queue), its attention
 * table must go out in one group (one slot, one launch per layer), and its inputs must fit the
 * arena: ids and positions, the table (all layers send the same one), two gathers of the
 * output rows, which a decode step whose every row is an output never needs but which keep the
 * bound true for any step, and with window totals the output rows' temperatures. */
static int step_fits(const bt_cuda_ctx_t *c, const bt_step_shape_t *s,
                     const bt_stepgraph_key_t *key)
{
    if (s->n_seqs < 1 || s->n_seqs > BT_CUDA_MAX_GROUP_SEQS || s->rows < 1 || s->n_out < 1 ||
        s->rows > c->argmax_cap || s->n_out > c->argmax_cap || s->n_layers < 1 ||
        s->block_size < 1 || s->max_len < 1 || s->n_kv_blocks < 0 || !out_valid(s))
        return 0;
    size_t slot = table_slot_bytes(s->n_seqs, key->n_chunks, c->attn_chunk, s->block_size);
    size_t table = (size_t)s->n_seqs * sizeof(bt_cuda_seq_t) + (size_t)s->n_kv_blocks * 4;
    if (slot > c->seqs.cap || table > slot)
        return 0;
    size_t need = 2 * align_up((size_t)s->rows * sizeof(int32_t)) + align_up(slot) +
                  2 * align_up((size_t)s->n_out * sizeof(int32_t));
    if (s->out_kind == BT_STEP_OUT_TOPK_TOTALS)
        need += align_up((size_t)s->n_out * sizeof(float));
    return need <= c->sg.arena_cap;
}

int bt_cuda_graph_begin(bt_cuda_ctx_t *c, const bt_step_shape_t *shape)
{
    if (!c->graphs)
        return 0;
    if (c->sg.mode != BT_STEPGRAPH_OFF) {
        fprintf(stderr, "cuda: step_begin inside a graph step\n");
        abort();
    }
    bt_stepgraph_key_t key;
    bt_stepgraph_key_make(shape, c->attn_chunk, &key);
    if (!step_fits(c, shape, &key))
        return 0;
    if (bt_stepgraph_begin(&c->sg, &key) == BT_STEPGRAPH_REPLAY)
        return 1;
    cudaError_t err = cudaStreamBeginCapture(c->stream, cudaStreamCaptureModeThreadLocal);
    if (err != cudaSuccess) {
        cudaGetLastError();
        bt_stepgraph_drop(&c->sg);
        c->graphs = 0;
        fprintf(stderr, "cuda: cannot capture a decode step (%s): CUDA graphs off\n",
                cudaGetErrorString(err));
        return 0;
    }
    return 1;
}

/* A replay traced other arguments than its capture: the key missed something the step's ops
 * depend on, so the graph would compute another step. Nothing ran yet; the graph is dropped
 * (the key is captured anew next time) and the caller runs the step op by op, so a serving
 * daemon loses only that graph's speed. It is still a programmer error: it is logged once, and
 * with BATON_CUDA_GRAPHS=2 (the tests) it stops the process. */
static void replay_mismatch(bt_cuda_ctx_t *c)
{
    char why[320];
    bt_stepgraph_describe(&c->sg, why, sizeof why);
    if (!c->graph_warned || c->graph_strict)
        fprintf(stderr, "cuda: a replayed decode-step graph does not match its step: %s\n", why);
    c->graph_warned = 1;
    if (c->graph_strict)
        abort();
    bt_stepgraph_drop(&c->sg);
    /* A key that keeps missing would be captured and instantiated anew every other step, on
     * the request path: after a few misses the daemon stops using graphs. */
    if (++c->graph_misses >= 4) {
        c->graphs = 0;
        bt_stepgraph_clear(&c->sg); /* their device memory back, now rather than at destroy */
        fprintf(stderr, "cuda: decode-step graphs keep missing their steps: CUDA graphs off\n");
    }
}

int bt_cuda_graph_end(bt_cuda_ctx_t *c)
{
    bt_stepgraph_t *g = &c->sg;
    if (g->mode == BT_STEPGRAPH_OFF) {
        fprintf(stderr, "cuda: step_end outside a graph step\n");
        abort();
    }
    cudaGraphExec_t exec;
    if (g->mode == BT_STEPGRAPH_CAPTURE) {
        cudaGraph_t graph = NULL;
        BT_CUDA_CHECK(cudaStreamEndCapture(c->stream, &graph));
        BT_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
        BT_CUDA_CHECK(cudaGraphDestroy(graph));
        bt_stepgraph_keep(g, exec);
    } else if (bt_stepgraph_check(g) != BT_OK) {
        replay_mismatch(c);
        return BT_AGAIN;
    } else {
        exec = g->cur->exec;
    }
    BT_CUDA_CHECK(cudaGraphLaunch(exec, c->stream));
    for (int i = 0; i < g->n_copies; i++)
        BT_CUDA_CHECK(cudaMemcpyAsync(g->copies[i].dst, g->copies[i].src, g->copies[i].bytes,
                                      cudaMemcpyDeviceToHost, c->stream));
    /* Also what lets the next step rewrite the arena's pinned side. */
    BT_CUDA_CHECK(cudaStreamSynchronize(c->stream));
    bt_stepgraph_finish(g);
    return BT_OK;
}

int bt_cuda_graph_op(bt_cuda_ctx_t *c, const char *op, const uint64_t *args, size_t n)
{
    bt_stepgraph_trace(&c->sg, op, args, n);
    return c->sg.mode == BT_STEPGRAPH_CAPTURE;
}

/* step_begin checked the step's inputs against the arena, so running out is a step that does
 * more than its shape said: a programmer error. */
static size_t arena_checked(size_t off)
{
    if (off == SIZE_MAX) {
        fprintf(stderr, "cuda: a graph step's inputs do not fit the input arena\n");
        abort();
    }
    return off;
}

void bt_cuda_graph_upload(bt_cuda_ctx_t *c, void *dst, const void *src, size_t bytes)
{
    size_t off = arena_checked(bt_stepgraph_put(&c->sg, c->arena_host, src, bytes));
    const uint64_t a[] = {(uintptr_t)dst, bytes, off};
    if (bt_cuda_graph_op(c, "upload", a, 3))
        BT_CUDA_CHECK(
            cudaMemcpyAsync(dst, c->arena_host + off, bytes, cudaMemcpyHostToDevice, c->stream));
}

const void *bt_cuda_graph_input(bt_cuda_ctx_t *c, const void *src, size_t bytes)
{
    size_t off = arena_checked(bt_stepgraph_put(&c->sg, c->arena_host, src, bytes));
    const uint64_t a[] = {bytes, off};
    if (bt_cuda_graph_op(c, "input", a, 2))
        BT_CUDA_CHECK(cudaMemcpyAsync(c->arena_dev + off, c->arena_host + off, bytes,
                                      cudaMemcpyHostToDevice, c->stream));
    return c->arena_dev + off;
}

const void *bt_cuda_graph_table(bt_cuda_ctx_t *c, const void *src, size_t bytes, int n_seqs,
                                int32_t block_size)
{
    size_t slot = table_slot_bytes(n_seqs, c->sg.cur->key.n_chunks, c->attn_chunk, block_size);
    int fresh;
    size_t off =
        arena_checked(bt_stepgraph_put_table(&c->sg, c->arena_host, src, bytes, slot, &fresh));
    /* Not bytes: the table's length changes with the block count within one key. */
    const uint64_t a[] = {slot, off, (uint64_t)fresh};
    if (bt_cuda_graph_op(c, "table", a, 3) && fresh)
        BT_CUDA_CHECK(cudaMemcpyAsync(c->arena_dev + off, c->arena_host + off, slot,
                                      cudaMemcpyHostToDevice, c->stream));
    return c->arena_dev + off;
}

void bt_cuda_graph_download(bt_cuda_ctx_t *c, void *dst, const void *src, size_t bytes)
{
    const uint64_t a[] = {(uintptr_t)src, bytes};
    bt_cuda_graph_op(c, "download", a, 2);
    if (bt_stepgraph_queue_copy(&c->sg, dst, src, bytes) != BT_OK) {
        fprintf(stderr, "cuda: a graph step queued more than %d downloads\n", BT_STEPGRAPH_COPIES);
        abort();
    }
}
