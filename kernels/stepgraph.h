/* SPDX-License-Identifier: MIT */
/*
 * stepgraph.h - bookkeeping for a backend that records a decode step once and replays it (the
 * CUDA backend's graphs): the key a step is recorded under, a table of recorded steps with
 * least-recently-used eviction, the offsets of a step's inputs in a fixed input arena, the
 * copies to the host that wait for the end of the step, and a trace of every op's by-value
 * arguments. Plain C without device types, so that it is built and tested on every machine;
 * the backend keeps its executable steps here as opaque pointers and destroys them through a
 * callback.
 *
 * The one thing to know: a recorded step has every op's by-value arguments (pointers, sizes,
 * launch shapes) and the arena offsets of its inputs baked in. A replay is right only if the
 * same ops run with the same arguments in the same order, and so take the same offsets; the
 * key is chosen to make that so, and the trace checks it op by op.
 *
 * Threads: one thread at a time (the backend's).
 */
#ifndef BATON_STEPGRAPH_H
#define BATON_STEPGRAPH_H

#include <stddef.h>
#include <stdint.h>

#include "kernels.h"

#define BT_STEPGRAPH_SLOTS 64   /* recorded steps kept; the least recently used one makes room */
#define BT_STEPGRAPH_TRACE 2048 /* ops whose arguments are checked one by one; later: as one */
#define BT_STEPGRAPH_COPIES 8   /* copies to the host one step may queue */
#define BT_STEPGRAPH_ALIGN 64   /* arena offsets are multiples of this many bytes */

/* The key a step is recorded under: the shape less what only changes data (the block count,
 * the exact longest context), with the longest context reduced to its attention bucket. */
typedef struct {
    int32_t n_seqs, rows, n_out, out_kind, k, n_layers, block_size;
    int32_t n_chunks; /* ceil(max_len / chunk): attention chunks of the longest context */
} bt_stepgraph_key_t;

typedef enum {
    BT_STEPGRAPH_OFF = 0, /* no step in progress: ops run as usual */
    BT_STEPGRAPH_CAPTURE, /* recording: ops launch, and record their arena inputs */
    BT_STEPGRAPH_REPLAY,  /* replaying: ops launch nothing, they only write their arena inputs */
} bt_stepgraph_mode_t;

typedef struct {
    bt_stepgraph_key_t key;
    void *exec;         /* the backend's recorded step; NULL: the slot is free */
    uint64_t used;      /* tick of the last use */
    int32_t n_ops;      /* ops the capture traced */
    size_t arena_bytes; /* arena the capture took */
    uint64_t tail;      /* hash of the arguments of ops past BT_STEPGRAPH_TRACE */
    uint64_t *trace;    /* (BT_STEPGRAPH_TRACE) hash of each op's name and arguments */
} bt_stepgraph_slot_t;

typedef struct {
    void *dst;       /* host */
    const void *src; /* backend memory */
    size_t bytes;
} bt_stepgraph_copy_t;

/* Destroys an executable step the table lets go of (evicted, dropped, or at fini). */
typedef void (*bt_stepgraph_destroy_fn)(void *arg, void *exec);

typedef struct {
    bt_stepgraph_slot_t slots[BT_STEPGRAPH_SLOTS];
    uint64_t *traces; /* (BT_STEPGRAPH_SLOTS * BT_STEPGRAPH_TRACE), one trace per slot */
    size_t arena_cap; /* bytes */
    uint64_t tick;
    bt_stepgraph_destroy_fn destroy;
    void *destroy_arg;

    /* The step in progress. */
    bt_stepgraph_mode_t mode;
    bt_stepgraph_slot_t *cur;
    size_t arena_used;
    int32_t n_ops;
    uint64_t tail;
    int32_t bad_op;       /* replay: the first op whose arguments differ; -1: none yet */
    const char *bad_name; /* its name */
    size_t table_off;     /* the step's last table in the arena, for tables sent again */
    size_t table_bytes;   /* its bytes; 0: none yet */
    bt_stepgraph_copy_t copies[BT_STEPGRAPH_COPIES];
    int n_copies;
} bt_stepgraph_t;

/* Allocates the traces; nothing is recorded yet. BT_ERR_NOMEM. A zeroed bt_stepgraph_t that
 * init never ran on (or failed on) may be given to fini. destroy and arg are borrowed. */
int bt_stepgraph_init(bt_stepgraph_t *g, size_t arena_bytes, bt_stepgraph_destroy_fn destroy,
                      void *arg);
/* Destroys every recorded step and frees the traces. Not during a step. */
void bt_stepgraph_fini(bt_stepgraph_t *g);
/* Destroys every recorded step; the table stays usable. Not during a step. */
void bt_stepgraph_clear(bt_stepgraph_t *g);

/* The key of a shape; chunk is the attention's chunk length (positions). */
void bt_stepgraph_key_make(const bt_step_shape_t *shape, int32_t chunk, bt_stepgraph_key_t *key);

/* Starts a step: REPLAY if a step of this key was recorded, else CAPTURE into a free slot, or
 * the least recently used one (its executable destroyed first). Never OFF. */
bt_stepgraph_mode_t bt_stepgraph_begin(bt_stepgraph_t *g, const bt_stepgraph_key_t *key);

/* The next bytes of the arena: the offset, or SIZE_MAX when the arena is full. */
size_t bt_stepgraph_take(bt_stepgraph_t *g, size_t bytes);
/* bt_stepgraph_take, then bytes of src copied into arena (the host side, arena_cap bytes) at
 * the offset. SIZE_MAX (nothing copied) when full. */
size_t bt_stepgraph_put(bt_stepgraph_t *g, uint8_t *arena, const void *src, size_t bytes);
/* A table of the step (bytes of src) into a slot of slot_bytes >= bytes, so that the copy of
 * the slot is the same size whatever the table's; a table equal to the step's previous one
 * takes no new slot. *fresh says whether it took one. SIZE_MAX when full. */
size_t bt_stepgraph_put_table(bt_stepgraph_t *g, uint8_t *arena, const void *src, size_t bytes,
                              size_t slot_bytes, int *fresh);

/* Adds one op (name: a string literal, known by its address, so one call site's; its n
 * by-value arguments) to the step's trace; a replay notes the first op whose name or arguments
 * differ from the capture's. */
void bt_stepgraph_trace(bt_stepgraph_t *g, const char *op, const uint64_t *args, size_t n);
/* Queues a copy to the host for the end of the step. BT_ERR_NOSPACE when the queue is full. */
int bt_stepgraph_queue_copy(bt_stepgraph_t *g, void *dst, const void *src, size_t bytes);

/* Replay: BT_OK if the step traced what its capture did, else BT_ERR_MISMATCH. */
int bt_stepgraph_check(const bt_stepgraph_t *g);
/* The step's key and, after a failed check, what differed, as one line into buf. */
void bt_stepgraph_describe(const bt_stepgraph_t *g, char *buf, size_t size);

/* Ends a capture: the slot keeps exec (handed over) with what the capture traced. Not the end
 * of the step: its copies are still queued, and bt_stepgraph_finish ends it. */
void bt_stepgraph_keep(bt_stepgraph_t *g, void *exec);
/* Ends the step, its queued copies done (or dropped with it). */
void bt_stepgraph_finish(bt_stepgraph_t *g);
/* Ends the step and frees its slot (destroying what it held), so the key is captured anew. */
void bt_stepgraph_drop(bt_stepgraph_t *g);

#endif
