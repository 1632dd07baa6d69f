/* SPDX-License-Identifier: MIT */
/*
 * kvx_debug.h - hooks for tests that play a misbehaving peer. Not for daemons.
 */
#ifndef BATON_KVX_DEBUG_H
#define BATON_KVX_DEBUG_H

#include <stdint.h>

#include "kvx.h"

/* Sends one data message straight from the local pool (blocks [src_block, src_block + n) of
 * layer) tagged with any generation, layer and first block index, bypassing every check of
 * the sending side: a late, duplicate or forged write as the receiver would see it. */
int bt_kvx_debug_inject(bt_kvx_peer_t *peer, uint32_t gen, int32_t layer, int32_t idx,
                        int32_t src_block, int32_t n_blocks);
/* The same as a packed message: n_layers layers from first_layer (any: the bytes of a layer
 * past the pool's last come from its layer modulo the count), each blocks [src_block,
 * src_block + n_blocks) of the local pool. */
int bt_kvx_debug_inject_packed(bt_kvx_peer_t *peer, uint32_t gen, int32_t first_layer,
                               int32_t n_layers, int32_t src_block, int32_t n_blocks);

#endif
