/* SPDX-License-Identifier: MIT */
/*
 * stepgraph.c - bookkeeping of recorded decode steps: keys, the table of recorded steps, the
 * input arena's offsets and the argument trace (see stepgraph.h).
 */
#include "stepgraph.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* FNV-1a over 64-bit words. Each step (xor a word, multiply by an odd number) is a bijection,
 * so two lists that differ in one word always hash apart; a word at a time keeps the trace of
 * a few hundred ops to a few microseconds per step. */
#define FNV_OFFSET 0xcbf29ce484222325ull
#define FNV_PRIME 0x100000001b3ull

static uint64_t fnv_words(uint64_t h, const uint64_t *w, size_t n)
{
    for (size_t i = 0; i < n; i++)
        h = (h ^ w[i]) * FNV_PRIME;
    return h;
}

int bt_stepgraph_init(bt_stepgraph_t *g, size_t arena_bytes, bt_stepgraph_destroy_fn destroy,
                      void *arg)
{
    memset(g, 0, sizeof *g);
    g->traces = malloc((size_t)BT_STEPGRAPH_SLOTS * BT_STEPGRAPH_TRACE * sizeof(uint64_t));
    if (!g->traces)
        return BT_ERR_NOMEM;
    for (int i = 0; i < BT_STEPGRAPH_SLOTS; i++)
        g->slots[i].trace = g->traces + (size_t)i * BT_STEPGRAPH_TRACE;
    g->arena_cap = arena_bytes;
    g->destroy = destroy;
    g->destroy_arg = arg;
    return BT_OK;
}

static void slot_clear(bt_stepgraph_t *g, bt_stepgraph_slot_t *s)
{
    if (s->exec)
        g->destroy(g->destroy_arg, s->exec);
    uint64_t *trace = s->trace;
    memset(s, 0, sizeof *s);
    s->trace = trace;
}

void bt_stepgraph_clear(bt_stepgraph_t *g)
{
    for (int i = 0; i < BT_STEPGRAPH_SLOTS; i++)
        slot_clear(g, &g->slots[i]);
}

void bt_stepgraph_fini(bt_stepgraph_t *g)
{
    bt_stepgraph_clear(g);
    free(g->traces);
    memset(g, 0, sizeof *g);
}

void bt_stepgraph_key_make(const bt_step_shape_t *shape, int32_t chunk, bt_stepgraph_key_t *key)
{
    memset(key, 0, sizeof *key);
    key->n_seqs = shape->n_seqs;
    key->rows = shape->rows;
    key->n_out = shape->n_out;
    key->out_kind = shape->out_kind;
    key->k = shape->k;
    key->n_layers = shape->n_layers;
    key->block_size = shape->block_size;
    key->n_chunks = (shape->max_len + chunk - 1) / chunk;
}

static int key_equal(const bt_stepgraph_key_t *a, const bt_stepgraph_key_t *b)
{
    return a->n_seqs == b->n_seqs && a->rows == b->rows && a->n_out == b->n_out &&
           a->out_kind == b->out_kind && a->k == b->k && a->n_layers == b->n_layers &&
           a->block_size == b->block_size && a->n_chunks == b->n_chunks;
}

/* A free slot, or the least recently used one emptied. */
static bt_stepgraph_slot_t *slot_for_capture(bt_stepgraph_t *g)
{
    bt_stepgraph_slot_t *lru = &g->slots[0];
    for (int i = 0; i < BT_STEPGRAPH_SLOTS; i++) {
        bt_stepgraph_slot_t *s = &g->slots[i];
        if (!s->exec)
            return s;
        if (s->used < lru->used)
            lru = s;
    }
    slot_clear(g, lru);
    return lru;
}

bt_stepgraph_mode_t bt_stepgraph_begin(bt_stepgraph_t *g, const bt_stepgraph_key_t *key)
{
    g->tick++;
    g->cur = NULL;
    for (int i = 0; i < BT_STEPGRAPH_SLOTS && !g->cur; i++)
        if (g->slots[i].exec && key_equal(&g->slots[i].key, key))
            g->cur = &g->slots[i];
    g->mode = g->cur ? BT_STEPGRAPH_REPLAY : BT_STEPGRAPH_CAPTURE;
    if (!g->cur) {
        g->cur = slot_for_capture(g);
        g->cur->key = *key;
    }
    g->cur->used = g->tick;
    g->arena_used = 0;
    g->n_ops = 0;
    g->tail = FNV_OFFSET;
    g->bad_op = -1;
    g->bad_name = NULL;
    g->table_off = g->table_bytes = 0;
    g->n_copies = 0;
    return g->mode;
}

size_t bt_stepgraph_take(bt_stepgraph_t *g, size_t bytes)
{
    size_t off = g->arena_used;
    size_t end = bytes + (BT_STEPGRAPH_ALIGN - 1);
    if (end < bytes || end / BT_STEPGRAPH_ALIGN * BT_STEPGRAPH_ALIGN > g->arena_cap - off)
        return SIZE_MAX;
    g->arena_used = off + end / BT_STEPGRAPH_ALIGN * BT_STEPGRAPH_ALIGN;
    return off;
}

size_t bt_stepgraph_put(bt_stepgraph_t *g, uint8_t *arena, const void *src, size_t bytes)
{
    size_t off = bt_stepgraph_take(g, bytes);
    if (off != SIZE_MAX)
        memcpy(arena + off, src, bytes);
    return off;
}

size_t bt_stepgraph_put_table(bt_stepgraph_t *g, uint8_t *arena, const void *src, size_t bytes,
                              size_t slot_bytes, int *fresh)
{
    *fresh = 0;
    if (bytes > slot_bytes)
        return SIZE_MAX;
    if (g->table_bytes == bytes && memcmp(arena + g->table_off, src, bytes) == 0)
        return g->table_off;
    size_t off = bt_stepgraph_take(g, slot_bytes);
    if (off == SIZE_MAX)
        return off;
    memcpy(arena + off, src, bytes);
    g->table_off = off;
    g->table_bytes = bytes;
    *fresh = 1;
    return off;
}

void bt_stepgraph_trace(bt_stepgraph_t *g, const char *op, const uint64_t *args, size_t n)
{
    /* The name's address stands for the name: capture and replay run in one process, and
     * each call site passes its own literal. */
    const uint64_t name = (uint64_t)(uintptr_t)op;
    uint64_t h = fnv_words(fnv_words(FNV_OFFSET, &name, 1), args, n);
    int32_t i = g->n_ops++;
    if (i >= BT_STEPGRAPH_TRACE) {
        g->tail = fnv_words(g->tail, &h, 1);
        return;
    }
    if (g->mode == BT_STEPGRAPH_CAPTURE) {
        g->cur->trace[i] = h;
        return;
    }
    if (g->bad_op < 0 && (i >= g->cur->n_ops || g->cur->trace[i] != h)) {
        g->bad_op = i;
        g->bad_name = op;
    }
}

int bt_stepgraph_queue_copy(bt_stepgraph_t *g, void *dst, const void *src, size_t bytes)
{
    if (g->n_copies == BT_STEPGRAPH_COPIES)
        return BT_ERR_NOSPACE;
    g->copies[g->n_copies++] = (bt_stepgraph_copy_t){.dst = dst, .src = src, .bytes = bytes};
    return BT_OK;
}

int bt_stepgraph_check(const bt_stepgraph_t *g)
{
    const bt_stepgraph_slot_t *s = g->cur;
    if (g->bad_op >= 0 || g->n_ops != s->n_ops || g->arena_used != s->arena_bytes ||
        g->tail != s->tail)
        return BT_ERR_MISMATCH;
    return BT_OK;
}

void bt_stepgraph_describe(const bt_stepgraph_t *g, char *buf, size_t size)
{
    const bt_stepgraph_slot_t *s = g->cur;
    const bt_stepgraph_key_t *k = &s->key;
    int n = snprintf(buf, size,
                     "step of %d sequences, %d rows, %d outputs (kind %d, k %d), %d layers, "
                     "block size %d, %d attention chunks",
                     k->n_seqs, k->rows, k->n_out, k->out_kind, k->k, k->n_layers, k->block_size,
                     k->n_chunks);
    if (n < 0 || (size_t)n >= size || g->mode != BT_STEPGRAPH_REPLAY)
        return;
    buf += n;
    size -= (size_t)n;
    if (g->bad_op >= 0)
        snprintf(buf, size, ": op %d (%s) differs from the capture's", g->bad_op, g->bad_name);
    else if (g->n_ops != s->n_ops)
        snprintf(buf, size, ": %d ops, the capture had %d", g->n_ops, s->n_ops);
    else if (g->arena_used != s->arena_bytes)
        snprintf(buf, size, ": %zu arena bytes, the capture took %zu", g->arena_used,
                 s->arena_bytes);
    else if (g->tail != s->tail)
        snprintf(buf, size, ": an op past the first %d differs from the capture's",
                 BT_STEPGRAPH_TRACE);
}

void bt_stepgraph_keep(bt_stepgraph_t *g, void *exec)
{
    bt_stepgraph_slot_t *s = g->cur;
    s->exec = exec;
    s->n_ops = g->n_ops;
    s->arena_bytes = g->arena_used;
    s->tail = g->tail;
}

void bt_stepgraph_finish(bt_stepgraph_t *g)
{
    g->mode = BT_STEPGRAPH_OFF;
    g->cur = NULL;
    g->n_copies = 0;
}

void bt_stepgraph_drop(bt_stepgraph_t *g)
{
    if (g->cur)
        slot_clear(g, g->cur);
    bt_stepgraph_finish(g);
}
