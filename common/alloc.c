/* SPDX-License-Identifier: MIT */
/*
 * alloc.c - malloc wrappers with a fault hook for tests.
 *
 * The countdown is atomic so that allocations from compute threads do not race with it, but
 * which thread's allocation fails is only deterministic when one thread allocates.
 */
#include "alloc.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

static atomic_long fail_countdown; /* 0: disarmed; k > 0: the kth allocation from now fails */
static atomic_int fault_fired;

static int should_fail(void)
{
    long c = atomic_load(&fail_countdown);
    while (c > 0) {
        if (atomic_compare_exchange_weak(&fail_countdown, &c, c - 1)) {
            if (c == 1) {
                atomic_store(&fault_fired, 1);
                return 1;
            }
            return 0;
        }
    }
    return 0;
}

void bt_alloc_fail_at(long n)
{
    atomic_store(&fault_fired, 0);
    atomic_store(&fail_countdown, n > 0 ? n : 0);
}

int bt_alloc_fault_fired(void)
{
    return atomic_load(&fault_fired);
}

void *bt_malloc(size_t size_bytes)
{
    return should_fail() ? NULL : malloc(size_bytes ? size_bytes : 1);
}

void *bt_calloc(size_t n, size_t size_bytes)
{
    return should_fail() ? NULL : calloc(n ? n : 1, size_bytes ? size_bytes : 1);
}

void *bt_realloc(void *ptr, size_t size_bytes)
{
    return should_fail() ? NULL : realloc(ptr, size_bytes ? size_bytes : 1);
}

void *bt_aligned_alloc(size_t alignment, size_t size_bytes)
{
    void *p = NULL;
    if (should_fail())
        return NULL;
    if (posix_memalign(&p, alignment, size_bytes ? size_bytes : 1) != 0)
        return NULL;
    return p;
}

char *bt_strdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = bt_malloc(n);
    if (d)
        memcpy(d, s, n);
    return d;
}

void bt_free(void *ptr)
{
    free(ptr);
}
