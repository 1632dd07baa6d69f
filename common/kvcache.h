/* SPDX-License-Identifier: MIT */
/*
 * kvcache.h - the paged KV cache: a pool of fixed-size blocks, reference counts, generations,
 * and per-sequence block tables.
 *
 * Memory: one backend allocation for the whole pool, laid out layer-major: layer l's block b
 * lives at base + (l * n_blocks + b) * block_bytes and holds K then V for block_size tokens
 * (see bt_kv_layer_t). A run of consecutive block ids is therefore one contiguous range per
 * layer, which is what the transfer library registers once and ships run by run.
 *
 * Capacity: the pool is sized once at creation from a byte budget. Running out is reported as
 * BT_ERR_NOSPACE (all-or-nothing: a failed reservation takes no block) so that callers can
 * apply back-pressure; it is never an abort.
 *
 * Generations: every time a block is handed out its generation increases, so a writer holding
 * (block, generation) from an earlier owner can be fenced off (bt_kv_pool_block_gen).
 *
 * Threads: a pool is used by one thread at a time (the engine's compute thread).
 */
#ifndef BATON_KVCACHE_H
#define BATON_KVCACHE_H

#include <stddef.h>
#include <stdint.h>

#include "../kernels/kernels.h"

typedef struct bt_kv_pool bt_kv_pool_t;

typedef struct {
    int32_t n_layers;
    int32_t n_kv_heads;
    int32_t head_dim;
    int32_t block_size;  /* tokens per block; 0: 16 */
    bt_type_t type;      /* BT_TYPE_F32 (default, 0), BT_TYPE_F16 or BT_TYPE_BF16 */
    size_t budget_bytes; /* memory for the pool; the block count is budget / bytes per block */
    int32_t n_blocks;    /* if > 0, exactly this many blocks (budget_bytes ignored) */
} bt_kv_pool_params_t;

int bt_kv_pool_create(bt_backend_t *be, const bt_kv_pool_params_t *params, bt_kv_pool_t **out);
void bt_kv_pool_destroy(bt_kv_pool_t *pool);

int32_t bt_kv_pool_n_blocks(const bt_kv_pool_t *pool);
int32_t bt_kv_pool_n_free(const bt_kv_pool_t *pool);
int32_t bt_kv_pool_block_size(const bt_kv_pool_t *pool);
/* Bytes of one block in one layer (K and V). */
size_t bt_kv_pool_block_bytes(const bt_kv_pool_t *pool);
/* The whole pool's memory, for registration with a transfer backend. */
void *bt_kv_pool_base(const bt_kv_pool_t *pool);
/* Whether the pool lives in device memory (the host cannot read or map it). */
int bt_kv_pool_device_memory(const bt_kv_pool_t *pool);
/* Copies the whole pool (bt_kv_pool_size_bytes) to or from host memory, through the backend. */
void bt_kv_pool_download(const bt_kv_pool_t *pool, void *host);
void bt_kv_pool_upload(bt_kv_pool_t *pool, const void *host);
size_t bt_kv_pool_size_bytes(const bt_kv_pool_t *pool);
/* View of one layer for the attention kernels. */
bt_kv_layer_t bt_kv_pool_layer(const bt_kv_pool_t *pool, int32_t layer);

/* Takes n free blocks (reference count 1, generation bumped) into ids[], or none at all and
 * BT_ERR_NOSPACE. */
int bt_kv_pool_alloc(bt_kv_pool_t *pool, int32_t n, int32_t *ids);
/* Adds a reference (sharing a block between sequences, e.g. a common prefix). */
void bt_kv_pool_ref(bt_kv_pool_t *pool, int32_t id);
/* Drops a reference; the block returns to the free list at zero. */
void bt_kv_pool_unref(bt_kv_pool_t *pool, int32_t id);
int32_t bt_kv_pool_refcount(const bt_kv_pool_t *pool, int32_t id);
/* Copies the K/V of blocks src[i] into dst[i] (i < n), every layer, through the backend (device
 * memory goes through a host buffer of one block). For tools and tests, not the request path:
 * a device-memory pool allocates. BT_ERR_NOMEM if that fails. */
int bt_kv_pool_copy_blocks(bt_kv_pool_t *pool, const int32_t *src, const int32_t *dst, int32_t n);
uint32_t bt_kv_pool_block_gen(const bt_kv_pool_t *pool, int32_t id);

/* A sequence's block table (caller-owned storage; init/fini). */
typedef struct {
    int32_t *blocks; /* (max_blocks) block ids; the first n_blocks are valid */
    int32_t n_blocks;
    int32_t max_blocks;
    int32_t n_tokens; /* tokens whose K/V are in the cache */
    int32_t max_tokens;
} bt_kv_seq_t;

/* max_tokens: the most tokens the sequence may ever hold (prompt + generated). */
int bt_kv_seq_init(bt_kv_seq_t *seq, const bt_kv_pool_t *pool, int32_t max_tokens);
/* Returns all blocks to the pool and frees the table. NULL-safe, idempotent. */
void bt_kv_seq_fini(bt_kv_seq_t *seq, bt_kv_pool_t *pool);
/* Ensures blocks cover n_tokens positions; all-or-nothing. BT_ERR_RANGE past max_tokens,
 * BT_ERR_NOSPACE when the pool is short. Does not change seq->n_tokens. */
int bt_kv_seq_reserve(bt_kv_seq_t *seq, bt_kv_pool_t *pool, int32_t n_tokens);
/* Drops tokens from the end down to n_tokens, releasing blocks no longer needed. */
void bt_kv_seq_truncate(bt_kv_seq_t *seq, bt_kv_pool_t *pool, int32_t n_tokens);

#endif
