/* SPDX-License-Identifier: MIT */
/*
 * alloc.h - the allocator every create/destroy ladder goes through.
 *
 * Tests arm a fault hook that makes the Nth allocation from now fail, so that each cleanup
 * ladder can be driven through every failure point (sqlite's malloc fault tests). The hook is
 * a process-wide counter; arm it only from a test's main thread.
 */
#ifndef BATON_ALLOC_H
#define BATON_ALLOC_H

#include <stddef.h>

void *bt_malloc(size_t size_bytes);
void *bt_calloc(size_t n, size_t size_bytes);
void *bt_realloc(void *ptr, size_t size_bytes);
/* Aligned allocation (alignment a power of two >= sizeof(void *)); free with bt_free. */
void *bt_aligned_alloc(size_t alignment, size_t size_bytes);
char *bt_strdup(const char *s);
/* Freeing NULL is allowed. */
void bt_free(void *ptr);

/* Make the nth allocation from now fail (n = 1: the next one); n <= 0 disarms. */
void bt_alloc_fail_at(long n);
/* Whether an armed fault has fired since the last bt_alloc_fail_at call. */
int bt_alloc_fault_fired(void);

#endif
