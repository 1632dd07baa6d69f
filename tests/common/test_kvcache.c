/* SPDX-License-Identifier: MIT */
/*
 * test_kvcache.c - the paged KV pool: layout, all-or-nothing allocation, reference counts,
 * generations, sequence tables, back-pressure and allocation faults.
 */
// ctest-labels: unit
#include "testutil.h"

#include <stdlib.h>
#include <string.h>

#include "common/alloc.h"
#include "common/kvcache.h"

static bt_backend_t *make_backend(void)
{
    bt_backend_params_t bp = {.n_threads = 1, .max_rows = 16, .max_cols = 64};
    bt_backend_t *be = NULL;
    assert_int_equal(bt_backend_create("cpu", &bp, &be), BT_OK);
    return be;
}

static const bt_kv_pool_params_t small = {
    .n_layers = 3, .n_kv_heads = 2, .head_dim = 8, .block_size = 4, .n_blocks = 10};

static void test_pool_layout_is_layer_major(void **state)
{
    bt_backend_t *be = make_backend();
    bt_kv_pool_t *pool;
    assert_int_equal(bt_kv_pool_create(be, &small, &pool), BT_OK);
    size_t bb = 2 * 4 * 2 * 8 * sizeof(float);
    assert_int_equal(bt_kv_pool_block_bytes(pool), bb);
    assert_int_equal(bt_kv_pool_size_bytes(pool), bb * 10 * 3);
    for (int l = 0; l < 3; l++) {
        bt_kv_layer_t v = bt_kv_pool_layer(pool, l);
        assert_ptr_equal(v.data, (char *)bt_kv_pool_base(pool) + (size_t)l * 10 * bb);
        assert_int_equal(v.block_size, 4);
        assert_int_equal(v.block_bytes, bb);
    }
    bt_kv_pool_destroy(pool);
    bt_backend_destroy(be);
}

/* bt_kv_pool_copy_blocks copies every layer of each source block to its destination and
 * touches nothing else. */
static void test_pool_copy_blocks(void **state)
{
    (void)state;
    bt_backend_t *be = make_backend();
    bt_kv_pool_t *pool;
    assert_int_equal(bt_kv_pool_create(be, &small, &pool), BT_OK);
    unsigned char *base = bt_kv_pool_base(pool);
    size_t size = bt_kv_pool_size_bytes(pool), bb = bt_kv_pool_block_bytes(pool);
    for (size_t i = 0; i < size; i++)
        base[i] = (unsigned char)(i * 131 + 7);
    unsigned char *before = bt_malloc(size);
    assert_non_null(before);
    memcpy(before, base, size);
    const int32_t src[3] = {1, 2, 7}, dst[3] = {5, 0, 9};
    assert_int_equal(bt_kv_pool_copy_blocks(pool, src, dst, 3), BT_OK);
    for (int l = 0; l < 3; l++)
        for (int b = 0; b < 10; b++) {
            int from = b;
            for (int i = 0; i < 3; i++)
                if (dst[i] == b)
                    from = src[i];
            assert_memory_equal(base + ((size_t)l * 10 + b) * bb,
                                before + ((size_t)l * 10 + from) * bb, bb);
        }
    bt_free(before);
    bt_kv_pool_destroy(pool);
    bt_backend_destroy(be);
}

static void test_pool_alloc_is_all_or_nothing(void **state)
{
    bt_backend_t *be = make_backend();
    bt_kv_pool_t *pool;
    int32_t ids[16];
    assert_int_equal(bt_kv_pool_create(be, &small, &pool), BT_OK);
    assert_int_equal(bt_kv_pool_alloc(pool, 7, ids), BT_OK);
    assert_int_equal(bt_kv_pool_n_free(pool), 3);
    /* Fresh pool hands out a contiguous run from id 0. */
    for (int i = 0; i < 7; i++)
        assert_int_equal(ids[i], i);
    assert_int_equal(bt_kv_pool_alloc(pool, 4, ids + 7), BT_ERR_NOSPACE);
    assert_int_equal(bt_kv_pool_n_free(pool), 3);
    for (int i = 0; i < 7; i++)
        bt_kv_pool_unref(pool, ids[i]);
    assert_int_equal(bt_kv_pool_n_free(pool), 10);
    bt_kv_pool_destroy(pool);
    bt_backend_destroy(be);
}

static void test_pool_refcount_and_generation(void **state)
{
    bt_backend_t *be = make_backend();
    bt_kv_pool_t *pool;
    int32_t id, id2;
    assert_int_equal(bt_kv_pool_create(be, &small, &pool), BT_OK);
    assert_int_equal(bt_kv_pool_alloc(pool, 1, &id), BT_OK);
    uint32_t g1 = bt_kv_pool_block_gen(pool, id);
    bt_kv_pool_ref(pool, id);
    assert_int_equal(bt_kv_pool_refcount(pool, id), 2);
    bt_kv_pool_unref(pool, id);
    assert_int_equal(bt_kv_pool_n_free(pool), 9); /* still held once */
    bt_kv_pool_unref(pool, id);
    assert_int_equal(bt_kv_pool_n_free(pool), 10);
    assert_int_equal(bt_kv_pool_alloc(pool, 1, &id2), BT_OK);
    assert_int_equal(id2, id); /* LIFO reuse */
    assert_true(bt_kv_pool_block_gen(pool, id2) != g1);
    bt_kv_pool_unref(pool, id2);
    bt_kv_pool_destroy(pool);
    bt_backend_destroy(be);
}

static void test_seq_reserve_truncate_and_backpressure(void **state)
{
    bt_backend_t *be = make_backend();
    bt_kv_pool_t *pool;
    bt_kv_seq_t a, b;
    assert_int_equal(bt_kv_pool_create(be, &small, &pool), BT_OK);
    assert_int_equal(bt_kv_seq_init(&a, pool, 30), BT_OK);
    assert_int_equal(bt_kv_seq_init(&b, pool, 40), BT_OK);
    assert_int_equal(bt_kv_seq_reserve(&a, pool, 9), BT_OK); /* 3 blocks of 4 */
    assert_int_equal(a.n_blocks, 3);
    assert_int_equal(bt_kv_seq_reserve(&a, pool, 12), BT_OK); /* still 3 */
    assert_int_equal(a.n_blocks, 3);
    assert_int_equal(bt_kv_seq_reserve(&a, pool, 31), BT_ERR_RANGE);
    assert_int_equal(bt_kv_seq_reserve(&b, pool, 29), BT_ERR_NOSPACE); /* needs 8, 7 free */
    assert_int_equal(b.n_blocks, 0);
    assert_int_equal(bt_kv_pool_n_free(pool), 7);
    a.n_tokens = 9;
    bt_kv_seq_truncate(&a, pool, 5);
    assert_int_equal(a.n_blocks, 2);
    assert_int_equal(a.n_tokens, 5);
    assert_int_equal(bt_kv_seq_reserve(&b, pool, 29), BT_OK);
    bt_kv_seq_fini(&a, pool);
    bt_kv_seq_fini(&b, pool);
    bt_kv_seq_fini(&b, pool); /* idempotent */
    assert_int_equal(bt_kv_pool_n_free(pool), 10);
    bt_kv_pool_destroy(pool);
    bt_backend_destroy(be);
}

static void test_pool_budget_and_bad_params(void **state)
{
    bt_backend_t *be = make_backend();
    bt_kv_pool_t *pool;
    bt_kv_pool_params_t p = small;
    p.n_blocks = 0;
    p.type = BT_TYPE_F16;
    p.budget_bytes = 3 * 2 * 4 * 2 * 8 * 2 * 5 + 7; /* 5 blocks over 3 layers, plus slack */
    assert_int_equal(bt_kv_pool_create(be, &p, &pool), BT_OK);
    assert_int_equal(bt_kv_pool_n_blocks(pool), 5);
    bt_kv_pool_destroy(pool);
    p.budget_bytes = 10;
    assert_int_equal(bt_kv_pool_create(be, &p, &pool), BT_ERR_INVAL);
    p = small;
    p.type = BT_TYPE_Q8_0;
    assert_int_equal(bt_kv_pool_create(be, &p, &pool), BT_ERR_UNSUPPORTED);
    p = small;
    p.head_dim = 0;
    assert_int_equal(bt_kv_pool_create(be, &p, &pool), BT_ERR_INVAL);
    bt_backend_destroy(be);
}

static void test_pool_create_survives_alloc_faults(void **state)
{
    bt_backend_t *be = make_backend();
    for (long n = 1;; n++) {
        bt_kv_pool_t *pool = NULL;
        bt_alloc_fail_at(n);
        int st = bt_kv_pool_create(be, &small, &pool);
        int fired = bt_alloc_fault_fired();
        bt_alloc_fail_at(0);
        if (!fired) {
            assert_int_equal(st, BT_OK);
            bt_kv_pool_destroy(pool);
            break;
        }
        assert_int_equal(st, BT_ERR_NOMEM);
        assert_null(pool);
    }
    bt_backend_destroy(be);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pool_layout_is_layer_major),
        cmocka_unit_test(test_pool_copy_blocks),
        cmocka_unit_test(test_pool_alloc_is_all_or_nothing),
        cmocka_unit_test(test_pool_refcount_and_generation),
        cmocka_unit_test(test_seq_reserve_truncate_and_backpressure),
        cmocka_unit_test(test_pool_budget_and_bad_params),
        cmocka_unit_test(test_pool_create_survives_alloc_faults),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
