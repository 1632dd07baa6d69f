/* SPDX-License-Identifier: MIT */
/*
 * test_kvx_nccl.c - the NCCL backend where there is no GPU: creating a context fails cleanly
 * with BT_ERR_UNSUPPORTED ("no CUDA device"), leaking nothing. Skipped where NCCL is not built
 * in, or where a GPU is present (test_kvx_gpu.c covers that machine).
 */
// ctest-labels: unit
#include "testutil.h"

#include "kvx_testlib.h"

static void test_nccl_create_without_device_fails_cleanly(void **state)
{
    if (!strstr(bt_kvx_backend_list(), "nccl"))
        skip();
    static const bt_kv_pool_params_t shape = {
        .n_layers = 2, .n_kv_heads = 1, .head_dim = 8, .block_size = 4, .n_blocks = 4};
    tl_pool_t pool;
    tl_pool_init(&pool, &shape, "m", 1);
    bt_kvx_params_t kp = tl_kvx_params(&pool, "nccl", "gpu-0");
    bt_kvx_t *kvx = NULL;
    int st = bt_kvx_create(&kp, &kvx);
    tl_pool_fini(&pool);
    if (st == BT_OK) {
        bt_kvx_destroy(kvx);
        skip(); /* a GPU is here */
    }
    assert_int_equal(st, BT_ERR_UNSUPPORTED);
    assert_null(kvx);
}

int main(void)
{
    bt_log_set_level(BT_LOG_OFF);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_nccl_create_without_device_fails_cleanly),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
