/* SPDX-License-Identifier: MIT */
/*
 * reqtable.h - a hash table from request id (uint64) to a pointer: the in-flight requests of a
 * daemon.
 *
 * Open addressing with linear probing and backward-shift deletion (no tombstones), so lookups
 * stay short however many requests come and go. The table grows by doubling when 3/4 full; a
 * failed growth is reported as BT_ERR_NOMEM and leaves the table as it was.
 *
 * Threads: one thread at a time. Values are borrowed: the table never frees them.
 */
#ifndef BATON_REQTABLE_H
#define BATON_REQTABLE_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint64_t *keys;
    void **vals; /* NULL marks an empty slot, so values must not be NULL */
    size_t cap;  /* slots, a power of two (0 before the first insert) */
    size_t len;
} bt_reqtable_t;

void bt_reqtable_init(bt_reqtable_t *t);
void bt_reqtable_fini(bt_reqtable_t *t);
/* Inserts id -> val (val != NULL). BT_ERR_INVAL if id is already there; BT_ERR_NOMEM. */
int bt_reqtable_put(bt_reqtable_t *t, uint64_t id, void *val);
/* The value for id, or NULL. */
void *bt_reqtable_get(const bt_reqtable_t *t, uint64_t id);
/* Replaces id's value (val != NULL) where it lies, so the table keeps its shape and an
 * iteration may go on; returns the old value, or NULL (and changes nothing) if id is absent. */
void *bt_reqtable_set(bt_reqtable_t *t, uint64_t id, void *val);
/* Removes id; returns its value, or NULL if it was not there. */
void *bt_reqtable_del(bt_reqtable_t *t, uint64_t id);
size_t bt_reqtable_len(const bt_reqtable_t *t);
/* Iteration: *pos starts at 0; returns the next value and its key, NULL at the end. The table
 * must not change during an iteration except through bt_reqtable_set: a deletion moves later
 * entries back into its hole, where the iteration may have passed already. */
void *bt_reqtable_next(const bt_reqtable_t *t, size_t *pos, uint64_t *id);

#endif
