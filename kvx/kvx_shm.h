/* SPDX-License-Identifier: MIT */
/*
 * kvx_shm.h - sharing a KV pool with peer processes on the same host (see kvx_shm.c).
 */
#ifndef BATON_KVX_SHM_H
#define BATON_KVX_SHM_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "common/status.h"

typedef struct {
    int fd;            /* ours: the memfd under the pool's interior, kept open for peers; -1 */
    char *map;         /* the interior's mapping (ours in place, a peer's read-only) or NULL */
    size_t len;        /* bytes of the interior */
    size_t off;        /* where the interior starts in the pool (0..4095) */
    uint64_t pool_va;  /* the pool's address in its owner process */
    uint64_t pool_len; /* the pool's bytes */
    pid_t pid;         /* the owner process (for the edges outside the interior) */
    int owned;         /* 1: a peer's mapping, unmapped on release */
} kvx_shm_t;

/* Moves the whole pages inside [base, base + size) onto a memfd, in place (same addresses,
 * same contents). Call before the pool is in use: a write racing the move would be lost.
 * BT_ERR_UNSUPPORTED when the pool holds no whole page. */
int kvx_shm_share(void *base, size_t size, kvx_shm_t *out);
/* Maps read-only the interior a peer shared (its memfd remote_fd), taking the fd through a
 * pidfd of the peer. BT_ERR_UNSUPPORTED when the kernel or permissions do not allow it. */
int kvx_shm_map(int pidfd, int remote_fd, const kvx_shm_t *remote, kvx_shm_t *out);
/* Copies [off, off + len) of a mapped peer pool into dst: memcpy from the mapping, a CMA
 * read for the bytes on the pool's partial first and last pages. */
int kvx_shm_read(const kvx_shm_t *peer, size_t off, void *dst, size_t len);
void kvx_shm_release(kvx_shm_t *s);

#endif
