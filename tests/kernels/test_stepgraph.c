/* SPDX-License-Identifier: MIT */
/*
 * test_stepgraph.c - the bookkeeping behind recorded decode steps (kernels/stepgraph.h), which
 * the CUDA backend's graphs rely on and which needs no device: keys that bucket the longest
 * context by attention chunk and ignore the block count, capture then replay taking the same
 * arena offsets, tables sent again within a step sharing one slot, a replay with other
 * arguments or another op count caught and named, least-recently-used eviction, and the
 * arena and copy queue refusing what does not fit.
 */
// ctest-labels: unit
#include "../support/testutil.h" /* relative: works whatever the include path */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/stepgraph.h"

#define CHUNK 256
#define ARENA 4096

typedef struct {
    int destroyed;
    void *last;
} destroy_log_t;

static void on_destroy(void *arg, void *exec)
{
    destroy_log_t *d = arg;
    d->destroyed++;
    d->last = exec;
}

static bt_step_shape_t shape(int32_t n_seqs, int32_t max_len)
{
    return (bt_step_shape_t){.n_seqs = n_seqs,
                             .rows = n_seqs,
                             .n_out = n_seqs,
                             .out_kind = BT_STEP_OUT_ARGMAX,
                             .k = 1,
                             .n_layers = 2,
                             .block_size = 16,
                             .n_kv_blocks = n_seqs * ((max_len + 15) / 16),
                             .max_len = max_len};
}

static void key_of(int32_t n_seqs, int32_t max_len, bt_stepgraph_key_t *k)
{
    bt_step_shape_t s = shape(n_seqs, max_len);
    bt_stepgraph_key_make(&s, CHUNK, k);
}

/* The ops of a small step: an upload, a table per layer (the same one), a traced op each. */
static void run_step(bt_stepgraph_t *g, uint8_t *arena, uint64_t arg, size_t *offs)
{
    int32_t ids[4] = {1, 2, 3, (int32_t)arg};
    int32_t table[6] = {7, 8, 9, 10, 11, 12};
    offs[0] = bt_stepgraph_put(g, arena, ids, sizeof ids);
    const uint64_t a[] = {arg, 42};
    bt_stepgraph_trace(g, "upload", a, 2);
    for (int l = 0; l < 2; l++) {
        int fresh;
        offs[1 + l] = bt_stepgraph_put_table(g, arena, table, sizeof table, 100, &fresh);
        assert_int_equal(fresh, l == 0);
        const uint64_t b[] = {offs[1 + l], 5};
        bt_stepgraph_trace(g, "attention", b, 2);
    }
}

static void test_stepgraph_key_buckets_context(void **state)
{
    bt_stepgraph_key_t a, b;
    key_of(4, 1, &a);
    key_of(4, 256, &b);
    assert_memory_equal(&a, &b, sizeof a);
    assert_int_equal(a.n_chunks, 1);
    key_of(4, 257, &b);
    assert_int_equal(b.n_chunks, 2);
    assert_memory_not_equal(&a, &b, sizeof a);
    key_of(5, 1, &b);
    assert_memory_not_equal(&a, &b, sizeof a);
    /* The block count is data: two steps differing only in it share a key. */
    bt_step_shape_t s = shape(4, 100), t = s;
    t.n_kv_blocks += 3;
    bt_stepgraph_key_make(&s, CHUNK, &a);
    bt_stepgraph_key_make(&t, CHUNK, &b);
    assert_memory_equal(&a, &b, sizeof a);
    t = s;
    t.k = 40;
    t.out_kind = BT_STEP_OUT_TOPK;
    bt_stepgraph_key_make(&t, CHUNK, &b);
    assert_memory_not_equal(&a, &b, sizeof a);
}

static void test_stepgraph_replay_takes_the_capture_offsets(void **state)
{
    destroy_log_t d = {0};
    bt_stepgraph_t g;
    uint8_t *arena = malloc(ARENA);
    assert_int_equal(bt_stepgraph_init(&g, ARENA, on_destroy, &d), BT_OK);
    bt_stepgraph_key_t k;
    key_of(4, 300, &k);
    size_t cap[3], rep[3];
    int exec;
    assert_int_equal(bt_stepgraph_begin(&g, &k), BT_STEPGRAPH_CAPTURE);
    run_step(&g, arena, 7, cap);
    assert_int_equal(cap[1], cap[2]); /* the same table again shares its slot */
    assert_int_equal(cap[0] % BT_STEPGRAPH_ALIGN, 0);
    assert_int_equal(cap[1] % BT_STEPGRAPH_ALIGN, 0);
    bt_stepgraph_keep(&g, &exec);
    bt_stepgraph_finish(&g);
    assert_int_equal(g.mode, BT_STEPGRAPH_OFF);

    key_of(4, 400, &k); /* same bucket */
    assert_int_equal(bt_stepgraph_begin(&g, &k), BT_STEPGRAPH_REPLAY);
    assert_ptr_equal(g.cur->exec, &exec);
    run_step(&g, arena, 7, rep);
    assert_memory_equal(rep, cap, sizeof cap);
    assert_int_equal(bt_stepgraph_check(&g), BT_OK);
    bt_stepgraph_finish(&g);

    bt_stepgraph_fini(&g);
    assert_int_equal(d.destroyed, 1);
    assert_ptr_equal(d.last, &exec);
    free(arena);
}

static void test_stepgraph_mismatch_is_named_and_dropped(void **state)
{
    destroy_log_t d = {0};
    bt_stepgraph_t g;
    uint8_t *arena = malloc(ARENA);
    assert_int_equal(bt_stepgraph_init(&g, ARENA, on_destroy, &d), BT_OK);
    bt_stepgraph_key_t k;
    key_of(2, 10, &k);
    size_t offs[3];
    int exec;
    assert_int_equal(bt_stepgraph_begin(&g, &k), BT_STEPGRAPH_CAPTURE);
    run_step(&g, arena, 1, offs);
    bt_stepgraph_keep(&g, &exec);
    bt_stepgraph_finish(&g);

    /* Other arguments to the first op. */
    assert_int_equal(bt_stepgraph_begin(&g, &k), BT_STEPGRAPH_REPLAY);
    run_step(&g, arena, 2, offs);
    assert_int_equal(bt_stepgraph_check(&g), BT_ERR_MISMATCH);
    char why[256];
    bt_stepgraph_describe(&g, why, sizeof why);
    assert_non_null(strstr(why, "op 0 (upload)"));
    bt_stepgraph_drop(&g);
    assert_int_equal(d.destroyed, 1);
    assert_int_equal(g.mode, BT_STEPGRAPH_OFF);

    /* Dropped: the key is captured anew. Then a replay with one op more is caught too. */
    assert_int_equal(bt_stepgraph_begin(&g, &k), BT_STEPGRAPH_CAPTURE);
    run_step(&g, arena, 1, offs);
    bt_stepgraph_keep(&g, &exec);
    bt_stepgraph_finish(&g);
    assert_int_equal(bt_stepgraph_begin(&g, &k), BT_STEPGRAPH_REPLAY);
    run_step(&g, arena, 1, offs);
    const uint64_t extra = 9;
    bt_stepgraph_trace(&g, "add", &extra, 1);
    assert_int_equal(bt_stepgraph_check(&g), BT_ERR_MISMATCH);
    bt_stepgraph_describe(&g, why, sizeof why);
    assert_non_null(strstr(why, "op 3 (add)"));
    bt_stepgraph_drop(&g);
    bt_stepgraph_fini(&g);
    assert_int_equal(d.destroyed, 2);
    free(arena);
}

static void test_stepgraph_evicts_least_recently_used(void **state)
{
    destroy_log_t d = {0};
    bt_stepgraph_t g;
    static int execs[BT_STEPGRAPH_SLOTS + 1];
    assert_int_equal(bt_stepgraph_init(&g, ARENA, on_destroy, &d), BT_OK);
    bt_stepgraph_key_t k;
    for (int i = 0; i < BT_STEPGRAPH_SLOTS; i++) {
        key_of(i + 1, 10, &k);
        assert_int_equal(bt_stepgraph_begin(&g, &k), BT_STEPGRAPH_CAPTURE);
        bt_stepgraph_keep(&g, &execs[i]);
        bt_stepgraph_finish(&g);
    }
    key_of(1, 10, &k); /* the oldest, used again: now key 2 is the least recent */
    assert_int_equal(bt_stepgraph_begin(&g, &k), BT_STEPGRAPH_REPLAY);
    bt_stepgraph_finish(&g);
    key_of(BT_STEPGRAPH_SLOTS + 1, 10, &k);
    assert_int_equal(bt_stepgraph_begin(&g, &k), BT_STEPGRAPH_CAPTURE);
    assert_int_equal(d.destroyed, 1);
    assert_ptr_equal(d.last, &execs[1]);
    bt_stepgraph_keep(&g, &execs[BT_STEPGRAPH_SLOTS]);
    bt_stepgraph_finish(&g);
    key_of(2, 10, &k);
    assert_int_equal(bt_stepgraph_begin(&g, &k), BT_STEPGRAPH_CAPTURE);
    bt_stepgraph_drop(&g); /* a capture that failed to start: the slot is free again */
    key_of(1, 10, &k);
    assert_int_equal(bt_stepgraph_begin(&g, &k), BT_STEPGRAPH_REPLAY);
    bt_stepgraph_finish(&g);
    bt_stepgraph_clear(&g); /* every slot's graph goes, and the table still records */
    assert_int_equal(d.destroyed, 1 + 1 + BT_STEPGRAPH_SLOTS - 1);
    assert_int_equal(bt_stepgraph_begin(&g, &k), BT_STEPGRAPH_CAPTURE);
    bt_stepgraph_keep(&g, &execs[0]);
    bt_stepgraph_finish(&g);
    bt_stepgraph_fini(&g);
    assert_int_equal(d.destroyed, 1 + 1 + BT_STEPGRAPH_SLOTS);
}

static void test_stepgraph_refuses_what_does_not_fit(void **state)
{
    destroy_log_t d = {0};
    bt_stepgraph_t g;
    uint8_t *arena = malloc(ARENA);
    assert_int_equal(bt_stepgraph_init(&g, ARENA, on_destroy, &d), BT_OK);
    bt_stepgraph_key_t k;
    key_of(1, 1, &k);
    assert_int_equal(bt_stepgraph_begin(&g, &k), BT_STEPGRAPH_CAPTURE);
    assert_int_equal(bt_stepgraph_take(&g, 1), 0);
    assert_int_equal(bt_stepgraph_take(&g, ARENA - 2 * BT_STEPGRAPH_ALIGN), BT_STEPGRAPH_ALIGN);
    assert_int_equal(bt_stepgraph_take(&g, BT_STEPGRAPH_ALIGN + 1), SIZE_MAX);
    assert_int_equal(bt_stepgraph_take(&g, SIZE_MAX - 3), SIZE_MAX);
    assert_int_equal(bt_stepgraph_take(&g, BT_STEPGRAPH_ALIGN), ARENA - BT_STEPGRAPH_ALIGN);
    assert_int_equal(bt_stepgraph_take(&g, 1), SIZE_MAX);
    int fresh = 1;
    int32_t t[8] = {0};
    assert_int_equal(bt_stepgraph_put_table(&g, arena, t, sizeof t, sizeof t - 4, &fresh),
                     SIZE_MAX);
    assert_int_equal(fresh, 0);
    char host[1];
    for (int i = 0; i < BT_STEPGRAPH_COPIES; i++)
        assert_int_equal(bt_stepgraph_queue_copy(&g, host, NULL, 1), BT_OK);
    assert_int_equal(bt_stepgraph_queue_copy(&g, host, NULL, 1), BT_ERR_NOSPACE);
    bt_stepgraph_drop(&g);
    bt_stepgraph_fini(&g);
    assert_int_equal(d.destroyed, 0);
    free(arena);
}

static void test_stepgraph_fini_of_a_zeroed_table(void **state)
{
    bt_stepgraph_t g;
    memset(&g, 0, sizeof g);
    bt_stepgraph_fini(&g);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stepgraph_key_buckets_context),
        cmocka_unit_test(test_stepgraph_replay_takes_the_capture_offsets),
        cmocka_unit_test(test_stepgraph_mismatch_is_named_and_dropped),
        cmocka_unit_test(test_stepgraph_evicts_least_recently_used),
        cmocka_unit_test(test_stepgraph_refuses_what_does_not_fit),
        cmocka_unit_test(test_stepgraph_fini_of_a_zeroed_table),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
