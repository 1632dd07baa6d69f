/* SPDX-License-Identifier: MIT */
/*
 * reqtable.c - open-addressing hash table of request ids (see reqtable.h).
 *
 * Request ids are chosen by the router and may be sequential, so keys go through a 64-bit
 * mixer (splitmix64's finalizer) before picking a slot.
 */
#include "reqtable.h"

#include "alloc.h"
#include "status.h"

static size_t slot_of(uint64_t id, size_t cap)
{
    uint64_t z = id + 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return (size_t)(z ^ (z >> 31)) & (cap - 1);
}

void bt_reqtable_init(bt_reqtable_t *t)
{
    t->keys = NULL;
    t->vals = NULL;
    t->cap = 0;
    t->len = 0;
}

void bt_reqtable_fini(bt_reqtable_t *t)
{
    bt_free(t->keys);
    bt_free(t->vals);
    bt_reqtable_init(t);
}

static void put_slot(uint64_t *keys, void **vals, size_t cap, uint64_t id, void *val)
{
    size_t i = slot_of(id, cap);
    while (vals[i])
        i = (i + 1) & (cap - 1);
    keys[i] = id;
    vals[i] = val;
}

static int grow(bt_reqtable_t *t)
{
    size_t cap = t->cap ? t->cap * 2 : 64;
    uint64_t *keys = bt_malloc(cap * sizeof *keys);
    void **vals = bt_calloc(cap, sizeof *vals);
    if (!keys || !vals) {
        bt_free(keys);
        bt_free(vals);
        return BT_ERR_NOMEM;
    }
    for (size_t i = 0; i < t->cap; i++)
        if (t->vals[i])
            put_slot(keys, vals, cap, t->keys[i], t->vals[i]);
    bt_free(t->keys);
    bt_free(t->vals);
    t->keys = keys;
    t->vals = vals;
    t->cap = cap;
    return BT_OK;
}

static size_t find(const bt_reqtable_t *t, uint64_t id)
{
    if (t->cap == 0)
        return SIZE_MAX;
    for (size_t i = slot_of(id, t->cap); t->vals[i]; i = (i + 1) & (t->cap - 1))
        if (t->keys[i] == id)
            return i;
    return SIZE_MAX;
}

int bt_reqtable_put(bt_reqtable_t *t, uint64_t id, void *val)
{
    if (!val || find(t, id) != SIZE_MAX)
        return BT_ERR_INVAL;
    if ((t->len + 1) * 4 > t->cap * 3) {
        int st = grow(t);
        if (st != BT_OK)
            return st;
    }
    put_slot(t->keys, t->vals, t->cap, id, val);
    t->len++;
    return BT_OK;
}

void *bt_reqtable_get(const bt_reqtable_t *t, uint64_t id)
{
    size_t i = find(t, id);
    return i == SIZE_MAX ? NULL : t->vals[i];
}

void *bt_reqtable_set(bt_reqtable_t *t, uint64_t id, void *val)
{
    size_t i = val ? find(t, id) : SIZE_MAX;
    if (i == SIZE_MAX)
        return NULL;
    void *old = t->vals[i];
    t->vals[i] = val;
    return old;
}

/* Backward-shift deletion: later members of the probe run move up into the hole, so no
 * lookup ever has to step over a tombstone. */
void *bt_reqtable_del(bt_reqtable_t *t, uint64_t id)
{
    size_t i = find(t, id), mask = t->cap - 1;
    if (i == SIZE_MAX)
        return NULL;
    void *val = t->vals[i];
    t->vals[i] = NULL;
    for (size_t j = (i + 1) & mask; t->vals[j]; j = (j + 1) & mask) {
        size_t home = slot_of(t->keys[j], t->cap);
        /* Entry j may fill hole i unless its home lies cyclically in (i, j]. */
        int home_between = i <= j ? (home > i && home <= j) : (home > i || home <= j);
        if (home_between)
            continue;
        t->keys[i] = t->keys[j];
        t->vals[i] = t->vals[j];
        t->vals[j] = NULL;
        i = j;
    }
    t->len--;
    return val;
}

size_t bt_reqtable_len(const bt_reqtable_t *t)
{
    return t->len;
}

void *bt_reqtable_next(const bt_reqtable_t *t, size_t *pos, uint64_t *id)
{
    for (; *pos < t->cap; (*pos)++)
        if (t->vals[*pos]) {
            if (id)
                *id = t->keys[*pos];
            return t->vals[(*pos)++];
        }
    return NULL;
}
