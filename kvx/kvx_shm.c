/* SPDX-License-Identifier: MIT */
/*
 * kvx_shm.c - pool memory that a peer process on the same host can map: the receiver of a
 * transfer then copies the KV straight out of the sender's pool with memcpy.
 *
 * The one thing to know: the engine allocates its pool as private anonymous memory, which no
 * other process can map. kvx_shm_share moves the whole pages inside the pool onto a memfd in
 * place (same addresses, same contents, MAP_SHARED|MAP_FIXED), so the engine never notices; a
 * peer takes the fd with pidfd_getfd (the permission CMA needs too) and maps it read-only.
 * The pool's partial first and last pages are shared with other allocations and are never
 * touched; a peer reads those few bytes with a CMA read instead. This is what UCX does with
 * xpmem where the kernel has it: CMA copies at 6-7 GB/s here, a mapping at memcpy speed
 * (docs/kvx.md).
 */
#include "kvx_shm.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/pidfd.h>
#include <sys/uio.h>
#include <unistd.h>

#include "common/log.h"

#define SHM_PAGE 4096u
#define SHM_CHUNK (64u << 20) /* moved at a time: bounds the extra memory used meanwhile */

static int page_is_zero(const char *p)
{
    static const char zero[SHM_PAGE];
    return memcmp(p, zero, SHM_PAGE) == 0;
}

/* Copies pages into the memfd view, skipping pages of zeros (a memfd reads as zeros, and a
 * pool nobody touched yet should stay untouched). */
static void copy_nonzero(char *view, const char *from, size_t n)
{
    for (size_t off = 0; off < n; off += SHM_PAGE)
        if (!page_is_zero(from + off))
            memcpy(view + off, from + off, SHM_PAGE);
}

static int move_pages(int fd, char *p0, size_t len)
{
    char *view = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (view == MAP_FAILED)
        return BT_ERR_IO;
    int st = BT_OK;
    for (size_t off = 0; off < len && st == BT_OK; off += SHM_CHUNK) {
        size_t n = len - off < SHM_CHUNK ? len - off : SHM_CHUNK;
        copy_nonzero(view + off, p0 + off, n);
        /* On failure, the chunks moved so far hold the right bytes and the rest never moved:
         * the pool is intact, it just cannot be shared. */
        if (mmap(p0 + off, n, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, (off_t)off) !=
            p0 + off)
            st = BT_ERR_IO;
    }
    munmap(view, len);
    return st;
}

/* Whether [p0, p1) is ordinary private read-write memory (what the engine's CPU backend
 * allocates), and so safe to move: not a device allocation, a file mapping or a guard. */
static int range_is_private_rw(uintptr_t p0, uintptr_t p1)
{
    FILE *f = fopen("/proc/self/maps", "r");
    if (!f)
        return 0;
    char line[512];
    uintptr_t covered = p0;
    while (covered < p1 && fgets(line, sizeof line, f)) {
        unsigned long lo, hi, inode = 0;
        char perms[8] = "";
        if (sscanf(line, "%lx-%lx %7s %*s %*s %lu", &lo, &hi, perms, &inode) != 4)
            continue;
        if (lo <= covered && covered < hi) {
            if (strcmp(perms, "rw-p") != 0 || inode != 0)
                break;
            covered = hi;
        }
    }
    fclose(f);
    return covered >= p1;
}

int kvx_shm_share(void *base, size_t size, kvx_shm_t *out)
{
    uintptr_t b = (uintptr_t)base;
    uintptr_t p0 = (b + SHM_PAGE - 1) & ~(uintptr_t)(SHM_PAGE - 1);
    uintptr_t p1 = (b + size) & ~(uintptr_t)(SHM_PAGE - 1);
    if (p1 <= p0 || !range_is_private_rw(p0, p1))
        return BT_ERR_UNSUPPORTED;
    size_t len = p1 - p0;
    int fd = memfd_create("baton-kv-pool", MFD_CLOEXEC);
    int st =
        fd >= 0 && ftruncate(fd, (off_t)len) == 0 ? move_pages(fd, (char *)p0, len) : BT_ERR_IO;
    if (st != BT_OK) {
        bt_warn("kvx: cannot share the KV pool with local peers: %s", strerror(errno));
        if (fd >= 0)
            close(fd);
        return st;
    }
    *out = (kvx_shm_t){.fd = fd,
                       .map = (char *)p0,
                       .len = len,
                       .off = p0 - b,
                       .pool_va = b,
                       .pool_len = size,
                       .pid = getpid()};
    return BT_OK;
}

int kvx_shm_map(int pidfd, int remote_fd, const kvx_shm_t *remote, kvx_shm_t *out)
{
    int fd = pidfd_getfd(pidfd, remote_fd, 0);
    if (fd < 0) {
        bt_info("kvx: cannot take a local peer's pool (%s); its data goes through the "
                "transport",
                strerror(errno));
        return BT_ERR_UNSUPPORTED;
    }
    char *map = mmap(NULL, remote->len, PROT_READ, MAP_SHARED, fd, 0);
    close(fd);
    if (map == MAP_FAILED) {
        bt_info("kvx: cannot map a local peer's pool (%s)", strerror(errno));
        return BT_ERR_UNSUPPORTED;
    }
    *out = *remote;
    out->fd = -1;
    out->map = map;
    out->owned = 1;
    return BT_OK;
}

/* The bytes outside the shared interior: straight from the owner's memory. */
static int read_edge(const kvx_shm_t *peer, size_t off, char *dst, size_t len)
{
    struct iovec local = {.iov_base = dst, .iov_len = len};
    struct iovec remote = {.iov_base = (void *)(uintptr_t)(peer->pool_va + off), .iov_len = len};
    return process_vm_readv(peer->pid, &local, 1, &remote, 1, 0) == (ssize_t)len ? BT_OK
                                                                                 : BT_ERR_PEER;
}

int kvx_shm_read(const kvx_shm_t *peer, size_t off, void *dst, size_t len)
{
    if (off > peer->pool_len || len > peer->pool_len - off)
        return BT_ERR_RANGE;
    char *d = dst;
    size_t lo = peer->off, hi = peer->off + peer->len; /* the interior, in pool offsets */
    if (off < lo) {
        size_t n = lo - off < len ? lo - off : len;
        if (read_edge(peer, off, d, n) != BT_OK)
            return BT_ERR_PEER;
        off += n, d += n, len -= n;
    }
    if (len && off < hi) {
        size_t n = hi - off < len ? hi - off : len;
        memcpy(d, peer->map + (off - lo), n);
        off += n, d += n, len -= n;
    }
    return len ? read_edge(peer, off, d, len) : BT_OK;
}

void kvx_shm_release(kvx_shm_t *s)
{
    if (s->owned && s->map)
        munmap(s->map, s->len);
    if (s->fd >= 0)
        close(s->fd);
    *s = (kvx_shm_t){.fd = -1};
}
