/* SPDX-License-Identifier: MIT */
/*
 * kvx_pattern.c - deterministic KV bytes: splitmix64 of (seed, layer, block, word), so that
 * a block in the wrong place, a stale generation's bytes or a torn write all show up.
 */
#include "kvx_pattern.h"

#include <stdlib.h>
#include <string.h>

static uint64_t mix(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static uint64_t block_key(uint64_t seed, int32_t layer, int32_t block)
{
    return mix(seed ^ mix(((uint64_t)(uint32_t)layer << 32) | (uint32_t)block));
}

static char *block_at(const void *base, const bt_kvx_layout_t *l, int32_t layer, int32_t block)
{
    return (char *)base +
           ((size_t)layer * (size_t)l->n_blocks + (size_t)block) * (size_t)l->block_bytes;
}

static void fill_one(char *p, size_t bytes, uint64_t key)
{
    size_t words = bytes / 8;
    for (size_t w = 0; w < words; w++) {
        uint64_t v = mix(key + w);
        memcpy(p + w * 8, &v, 8);
    }
    uint64_t tail = mix(key + words);
    memcpy(p + words * 8, &tail, bytes % 8);
}

static int check_one(const char *p, size_t bytes, uint64_t key)
{
    size_t words = bytes / 8;
    for (size_t w = 0; w < words; w++) {
        uint64_t v = mix(key + w), got;
        memcpy(&got, p + w * 8, 8);
        if (got != v)
            return 0;
    }
    uint64_t tail = mix(key + words);
    return memcmp(p + words * 8, &tail, bytes % 8) == 0;
}

void bt_kvx_pattern_fill_blocks(void *base, const bt_kvx_layout_t *layout, uint64_t seed,
                                const int32_t *blocks, int32_t n)
{
    for (int32_t l = 0; l < layout->n_layers; l++)
        for (int32_t i = 0; i < n; i++)
            fill_one(block_at(base, layout, l, blocks[i]), (size_t)layout->block_bytes,
                     block_key(seed, l, blocks[i]));
}

void bt_kvx_pattern_fill(void *base, const bt_kvx_layout_t *layout, uint64_t seed)
{
    for (int32_t l = 0; l < layout->n_layers; l++)
        for (int32_t b = 0; b < layout->n_blocks; b++)
            fill_one(block_at(base, layout, l, b), (size_t)layout->block_bytes,
                     block_key(seed, l, b));
}

int64_t bt_kvx_pattern_check(const void *base, const bt_kvx_layout_t *layout, uint64_t seed,
                             const int32_t *src, const int32_t *dst, int32_t n)
{
    for (int32_t l = 0; l < layout->n_layers; l++)
        for (int32_t i = 0; i < n; i++)
            if (!check_one(block_at(base, layout, l, dst[i]), (size_t)layout->block_bytes,
                           block_key(seed, l, src[i])))
                return (int64_t)l * n + i;
    return -1;
}

int bt_kvx_pattern_fill_pool(bt_kv_pool_t *pool, const bt_kvx_layout_t *layout, uint64_t seed)
{
    if (!bt_kv_pool_device_memory(pool)) {
        bt_kvx_pattern_fill(bt_kv_pool_base(pool), layout, seed);
        return BT_OK;
    }
    void *host = malloc(bt_kv_pool_size_bytes(pool));
    if (!host)
        return BT_ERR_NOMEM;
    bt_kvx_pattern_fill(host, layout, seed);
    bt_kv_pool_upload(pool, host);
    free(host);
    return BT_OK;
}

int64_t bt_kvx_pattern_check_pool(bt_kv_pool_t *pool, const bt_kvx_layout_t *layout, uint64_t seed,
                                  const int32_t *src, const int32_t *dst, int32_t n)
{
    if (!bt_kv_pool_device_memory(pool))
        return bt_kvx_pattern_check(bt_kv_pool_base(pool), layout, seed, src, dst, n);
    void *host = malloc(bt_kv_pool_size_bytes(pool));
    if (!host)
        return INT64_MAX; /* cannot check: a mismatch */
    bt_kv_pool_download(pool, host);
    int64_t bad = bt_kvx_pattern_check(host, layout, seed, src, dst, n);
    free(host);
    return bad;
}
