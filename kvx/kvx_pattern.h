/* SPDX-License-Identifier: MIT */
/*
 * kvx_pattern.h - deterministic KV bytes for the transfer tests and the benchmark.
 *
 * Block b of layer l of a pool filled with seed s holds bytes that depend only on (s, l, b),
 * so a receiver can check a transfer byte for byte without the sender's memory: destination
 * block dst[i] of every layer must hold the pattern of source block src[i].
 */
#ifndef BATON_KVX_PATTERN_H
#define BATON_KVX_PATTERN_H

#include <stddef.h>
#include <stdint.h>

#include "kvx.h"

/* Fills every block of every layer of the pool at base. */
void bt_kvx_pattern_fill(void *base, const bt_kvx_layout_t *layout, uint64_t seed);
/* Fills the given blocks only (every layer). */
void bt_kvx_pattern_fill_blocks(void *base, const bt_kvx_layout_t *layout, uint64_t seed,
                                const int32_t *blocks, int32_t n);
/* Checks that block dst[i] of every layer holds source block src[i]'s pattern under seed.
 * Returns -1 if all match, else layer * n + i of the first mismatch. */
int64_t bt_kvx_pattern_check(const void *base, const bt_kvx_layout_t *layout, uint64_t seed,
                             const int32_t *src, const int32_t *dst, int32_t n);

/* The same on a KV pool in any backend's memory (a pool in device memory goes through a host
 * copy of the whole pool). Fill: BT_OK or BT_ERR_NOMEM. Check: as above, and INT64_MAX (a
 * mismatch) when the host copy cannot be made. */
int bt_kvx_pattern_fill_pool(bt_kv_pool_t *pool, const bt_kvx_layout_t *layout, uint64_t seed);
int64_t bt_kvx_pattern_check_pool(bt_kv_pool_t *pool, const bt_kvx_layout_t *layout, uint64_t seed,
                                  const int32_t *src, const int32_t *dst, int32_t n);

#endif
