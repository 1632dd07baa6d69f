/* SPDX-License-Identifier: MIT */
/*
 * kvbench.h - baton-kvbench: what its two halves (options and output in kvbench.c, the
 * measurement in kvbench_run.c) share.
 *
 * The one thing to know: a "size" is the whole KV of one request, all layers together, and one
 * measurement moves it from a baton-kvx-peer process (the prefill side, serving every
 * reservation from the same source blocks) into this process's pool (the decode side).
 */
#ifndef BATON_KVBENCH_H
#define BATON_KVBENCH_H

#include <stddef.h>
#include <stdint.h>

#define KVB_MAX_SIZES 32

typedef struct {
    const char *transports[4]; /* "shm" (one host: messages over UCX shared memory, data
                                * copied out of the mapped peer pool), "cma" (one host, data
                                * through UCX's rendezvous: CMA), "tcp" (UCX over TCP), "cuda"
                                * (both pools in GPU memory, UCX cuda_ipc; not in "all") */
    int n_transports;
    int modes[2]; /* 0 whole, 1 layer-wise */
    int n_modes;
    size_t sizes[KVB_MAX_SIZES];
    int n_sizes;
    int max_layers; /* the model's layer count (32) */
    int kv_heads;
    int head_dim;
    int block_size;
    int f16;
    int iters;  /* 0: by size */
    int window; /* 0: by size */
    int json;
    int pack;         /* bt_kvx_params_t.pack, for both sides */
    int stream;       /* bt_kvx_params_t.stream, for both sides */
    int pin;          /* 1: this process on CPU 0, the sender on CPU 1 */
    int distinct_dst; /* 1: each transfer in flight has blocks of its own; 0: they share them,
                       * as ucx_perftest's outstanding receives share one buffer */
    const char *peer_path;
} kvb_opts_t;

typedef struct {
    const char *transport;
    const char *mode;
    size_t size_bytes;
    int layers;
    int blocks;       /* per layer */
    int msgs;         /* data messages per transfer, as received (mapped: copies) */
    const char *path; /* how the data moved (bt_kvx_peer_data_path) at the end */
    int window;
    int iters;
    double gb_per_s; /* 1e9 bytes per second, window transfers in flight */
    double p50_us;   /* one transfer at a time: reservation to completion */
    double p99_us;
} kvb_result_t;

/* Runs every size and mode over one transport, calling out() for each measurement.
 * Returns 0, or an error status (after printing why). */
int kvb_run_transport(const kvb_opts_t *o, const char *transport,
                      void (*out)(const kvb_opts_t *o, const kvb_result_t *r));

#endif
