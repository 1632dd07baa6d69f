/* SPDX-License-Identifier: MIT */
/*
 * hash.h - FNV-1a over bytes: the one hash of the project's hash tables and keys (GGUF names,
 * ZMTP identities, NCCL ids, addresses). Not for anything an adversary may choose to collide.
 */
#ifndef BATON_HASH_H
#define BATON_HASH_H

#include <stddef.h>
#include <stdint.h>

static inline uint64_t bt_fnv1a(const void *p, size_t n)
{
    const uint8_t *b = p;
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ b[i]) * 1099511628211ull;
    return h;
}

#endif
