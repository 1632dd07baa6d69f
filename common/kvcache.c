/* SPDX-License-Identifier: MIT */
/*
 * kvcache.c - paged KV cache: block pool with reference counts and generations, and
 * per-sequence block tables.
 *
 * The free list is a LIFO stack of block ids, so a freshly freed block is the next one handed
 * out (warm in cache). Allocation is all-or-nothing: a request for n blocks either gets all n or
 * none, so a caller never has to undo a partial reservation.
 */
#include "kvcache.h"

#include <string.h>

#include "alloc.h"
#include "btassert.h"
#include "log.h"

struct bt_kv_pool {
    bt_backend_t *be;   /* borrowed */
    void *base;         /* backend memory: n_layers * n_blocks * block_bytes */
    size_t block_bytes; /* one block of one layer (K and V) */
    int32_t n_layers;
    int32_t n_kv_heads;
    int32_t head_dim;
    int32_t block_size;
    bt_type_t type;
    int32_t n_blocks;
    int32_t n_free;
    int32_t *free_ids; /* (n_blocks) stack; the first n_free entries are free */
    int32_t *refcount; /* (n_blocks) */
    uint32_t *gen;     /* (n_blocks) bumped every time the block is handed out */
};

static size_t kv_elem_size(bt_type_t type)
{
    return type == BT_TYPE_F16 || type == BT_TYPE_BF16 ? 2 : 4;
}

static int kv_params_check(const bt_kv_pool_params_t *p, int32_t block_size, size_t block_bytes)
{
    if (p->n_layers <= 0 || p->n_kv_heads <= 0 || p->head_dim <= 0 || block_size <= 0 ||
        block_size > 4096) {
        bt_error("kv pool: invalid shape (layers %d, kv heads %d, head dim %d, block size %d)",
                 p->n_layers, p->n_kv_heads, p->head_dim, block_size);
        return BT_ERR_INVAL;
    }
    if (p->type != BT_TYPE_F32 && p->type != BT_TYPE_F16 && p->type != BT_TYPE_BF16) {
        bt_error("kv pool: unsupported KV type %d (f32, f16 or bf16)", (int)p->type);
        return BT_ERR_UNSUPPORTED;
    }
    if (p->n_blocks <= 0 && p->budget_bytes < block_bytes * (size_t)p->n_layers) {
        bt_error("kv pool: budget of %zu bytes holds no block (%zu bytes each)", p->budget_bytes,
                 block_bytes * (size_t)p->n_layers);
        return BT_ERR_INVAL;
    }
    return BT_OK;
}

int bt_kv_pool_create(bt_backend_t *be, const bt_kv_pool_params_t *params, bt_kv_pool_t **out)
{
    int32_t block_size = params->block_size ? params->block_size : 16;
    size_t block_bytes = 2 * (size_t)block_size * (size_t)params->n_kv_heads *
                         (size_t)params->head_dim * kv_elem_size(params->type);
    int st = kv_params_check(params, block_size, block_bytes);
    if (st != BT_OK)
        return st;
    size_t per_block_all_layers = block_bytes * (size_t)params->n_layers;
    size_t n_blocks = params->n_blocks > 0 ? (size_t)params->n_blocks
                                           : params->budget_bytes / per_block_all_layers;
    if (n_blocks > INT32_MAX / 2)
        n_blocks = INT32_MAX / 2;

    st = BT_ERR_NOMEM;
    bt_kv_pool_t *pool = bt_calloc(1, sizeof *pool);
    if (!pool)
        goto err;
    pool->free_ids = bt_malloc(n_blocks * sizeof(int32_t));
    pool->refcount = bt_calloc(n_blocks, sizeof(int32_t));
    pool->gen = bt_calloc(n_blocks, sizeof(uint32_t));
    if (!pool->free_ids || !pool->refcount || !pool->gen)
        goto err_tables;
    pool->base = bt_backend_alloc(be, n_blocks * per_block_all_layers);
    if (!pool->base) {
        bt_error("kv pool: cannot allocate %zu bytes for %zu blocks",
                 n_blocks * per_block_all_layers, n_blocks);
        goto err_tables;
    }
    pool->be = be;
    pool->block_bytes = block_bytes;
    pool->n_layers = params->n_layers;
    pool->n_kv_heads = params->n_kv_heads;
    pool->head_dim = params->head_dim;
    pool->block_size = block_size;
    pool->type = params->type;
    pool->n_blocks = (int32_t)n_blocks;
    pool->n_free = (int32_t)n_blocks;
    /* Lowest ids on top of the stack: early requests get contiguous runs from 0 upwards. */
    for (int32_t i = 0; i < pool->n_blocks; i++)
        pool->free_ids[i] = pool->n_blocks - 1 - i;
    *out = pool;
    return BT_OK;

err_tables:
    bt_free(pool->gen);
    bt_free(pool->refcount);
    bt_free(pool->free_ids);
    bt_free(pool);
err:
    return st;
}

void bt_kv_pool_destroy(bt_kv_pool_t *pool)
{
    if (!pool)
        return;
    bt_backend_free(pool->be, pool->base);
    bt_free(pool->gen);
    bt_free(pool->refcount);
    bt_free(pool->free_ids);
    bt_free(pool);
}

int32_t bt_kv_pool_n_blocks(const bt_kv_pool_t *pool)
{
    return pool->n_blocks;
}

int32_t bt_kv_pool_n_free(const bt_kv_pool_t *pool)
{
    return pool->n_free;
}

int32_t bt_kv_pool_block_size(const bt_kv_pool_t *pool)
{
    return pool->block_size;
}

size_t bt_kv_pool_block_bytes(const bt_kv_pool_t *pool)
{
    return pool->block_bytes;
}

void *bt_kv_pool_base(const bt_kv_pool_t *pool)
{
    return pool->base;
}

int bt_kv_pool_device_memory(const bt_kv_pool_t *pool)
{
    return bt_backend_device_memory(pool->be);
}

void bt_kv_pool_download(const bt_kv_pool_t *pool, void *host)
{
    bt_backend_download(pool->be, host, pool->base, bt_kv_pool_size_bytes(pool));
}

void bt_kv_pool_upload(bt_kv_pool_t *pool, const void *host)
{
    bt_backend_upload(pool->be, pool->base, host, bt_kv_pool_size_bytes(pool));
}

size_t bt_kv_pool_size_bytes(const bt_kv_pool_t *pool)
{
    return pool->block_bytes * (size_t)pool->n_blocks * (size_t)pool->n_layers;
}

bt_kv_layer_t bt_kv_pool_layer(const bt_kv_pool_t *pool, int32_t layer)
{
    BT_ASSERT(layer >= 0 && layer < pool->n_layers);
    bt_kv_layer_t v = {
        .data = (char *)pool->base + (size_t)layer * (size_t)pool->n_blocks * pool->block_bytes,
        .type = pool->type,
        .block_size = pool->block_size,
        .n_kv_heads = pool->n_kv_heads,
        .head_dim = pool->head_dim,
        .block_bytes = pool->block_bytes,
    };
    return v;
}

int bt_kv_pool_copy_blocks(bt_kv_pool_t *pool, const int32_t *src, const int32_t *dst, int32_t n)
{
    const int device = bt_backend_device_memory(pool->be);
    void *bounce = device ? bt_malloc(pool->block_bytes) : NULL;
    if (device && !bounce)
        return BT_ERR_NOMEM;
    for (int32_t l = 0; l < pool->n_layers; l++) {
        char *base = bt_kv_pool_layer(pool, l).data;
        for (int32_t i = 0; i < n; i++) {
            BT_ASSERT(src[i] >= 0 && src[i] < pool->n_blocks && dst[i] >= 0 &&
                      dst[i] < pool->n_blocks);
            char *from = base + (size_t)src[i] * pool->block_bytes;
            char *to = base + (size_t)dst[i] * pool->block_bytes;
            if (!device) {
                memmove(to, from, pool->block_bytes);
                continue;
            }
            bt_backend_download(pool->be, bounce, from, pool->block_bytes);
            bt_backend_upload(pool->be, to, bounce, pool->block_bytes);
        }
    }
    bt_free(bounce);
    return BT_OK;
}

int bt_kv_pool_alloc(bt_kv_pool_t *pool, int32_t n, int32_t *ids)
{
    BT_ASSERT(n >= 0);
    if (n > pool->n_free)
        return BT_ERR_NOSPACE;
    for (int32_t i = 0; i < n; i++) {
        int32_t id = pool->free_ids[--pool->n_free];
        BT_ASSERT(pool->refcount[id] == 0);
        pool->refcount[id] = 1;
        pool->gen[id]++;
        ids[i] = id;
    }
    return BT_OK;
}

void bt_kv_pool_ref(bt_kv_pool_t *pool, int32_t id)
{
    BT_ASSERT(id >= 0 && id < pool->n_blocks && pool->refcount[id] > 0);
    pool->refcount[id]++;
}

void bt_kv_pool_unref(bt_kv_pool_t *pool, int32_t id)
{
    BT_ASSERT(id >= 0 && id < pool->n_blocks && pool->refcount[id] > 0);
    if (--pool->refcount[id] == 0)
        pool->free_ids[pool->n_free++] = id;
}

int32_t bt_kv_pool_refcount(const bt_kv_pool_t *pool, int32_t id)
{
    BT_ASSERT(id >= 0 && id < pool->n_blocks);
    return pool->refcount[id];
}

uint32_t bt_kv_pool_block_gen(const bt_kv_pool_t *pool, int32_t id)
{
    BT_ASSERT(id >= 0 && id < pool->n_blocks);
    return pool->gen[id];
}

int bt_kv_seq_init(bt_kv_seq_t *seq, const bt_kv_pool_t *pool, int32_t max_tokens)
{
    memset(seq, 0, sizeof *seq);
    if (max_tokens <= 0)
        return BT_ERR_INVAL;
    int32_t max_blocks = (max_tokens + pool->block_size - 1) / pool->block_size;
    seq->blocks = bt_malloc((size_t)max_blocks * sizeof(int32_t));
    if (!seq->blocks)
        return BT_ERR_NOMEM;
    seq->max_blocks = max_blocks;
    seq->max_tokens = max_tokens;
    return BT_OK;
}

void bt_kv_seq_fini(bt_kv_seq_t *seq, bt_kv_pool_t *pool)
{
    if (!seq)
        return;
    if (seq->blocks) {
        for (int32_t i = 0; i < seq->n_blocks; i++)
            bt_kv_pool_unref(pool, seq->blocks[i]);
        bt_free(seq->blocks);
    }
    memset(seq, 0, sizeof *seq);
}

int bt_kv_seq_reserve(bt_kv_seq_t *seq, bt_kv_pool_t *pool, int32_t n_tokens)
{
    if (n_tokens > seq->max_tokens || n_tokens < 0)
        return BT_ERR_RANGE;
    int32_t need = (n_tokens + pool->block_size - 1) / pool->block_size;
    if (need <= seq->n_blocks)
        return BT_OK;
    int st = bt_kv_pool_alloc(pool, need - seq->n_blocks, seq->blocks + seq->n_blocks);
    if (st == BT_OK)
        seq->n_blocks = need;
    return st;
}

void bt_kv_seq_truncate(bt_kv_seq_t *seq, bt_kv_pool_t *pool, int32_t n_tokens)
{
    if (n_tokens < 0)
        n_tokens = 0;
    if (n_tokens < seq->n_tokens)
        seq->n_tokens = n_tokens;
    int32_t keep = (n_tokens + pool->block_size - 1) / pool->block_size;
    while (seq->n_blocks > keep)
        bt_kv_pool_unref(pool, seq->blocks[--seq->n_blocks]);
}
