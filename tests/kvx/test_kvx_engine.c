/* SPDX-License-Identifier: MIT */
/*
 * test_kvx_engine.c - kvx fed by the engine's layer hook, as the prefill daemon does it in
 * layer-wise mode: the forward runs on its own thread and releases each layer from the hook, a
 * second thread drives both kvx contexts (loopback backend), and layer 0's KV must reach the
 * receiver while the forward is still inside it. The hook of layer 0 waits for that (up to a
 * deadline that only a broken path reaches), so the test asserts behaviour, not timing.
 */
// ctest-labels: unit
#include "testutil.h"

#include <pthread.h>
#include <stdatomic.h>

#include "common/engine.h"
#include "common/modelgen.h"
#include "kvx_testlib.h"

#define N_PROMPT 40

typedef struct {
    bt_engine_t *e;
    bt_kvx_send_t *send;
    bt_kv_seq_t kv;
    int32_t prompt[N_PROMPT];
    float *logits;
    int32_t calls[8];
    int n_calls;
    atomic_int arrived;     /* the driver saw layer 0 at the receiver */
    int arrived_in_forward; /* ... while the forward waited in layer 0's hook */
    atomic_int forward_done;
    int forward_status;
} stream_t;

static void on_layer(void *arg, int32_t n_layers_done)
{
    stream_t *s = arg;
    if (s->n_calls < 8)
        s->calls[s->n_calls++] = n_layers_done;
    bt_kvx_send_layers_ready(s->send, n_layers_done);
    if (n_layers_done != 1)
        return;
    int64_t deadline = tl_now_ms() + 20000;
    while (!atomic_load(&s->arrived) && tl_now_ms() < deadline)
        usleep(100);
    s->arrived_in_forward = atomic_load(&s->arrived);
}

static void *compute_main(void *arg)
{
    stream_t *s = arg;
    bt_batch_seq_t b = {
        .kv = &s->kv, .tokens = s->prompt, .n_tokens = N_PROMPT, .logits = BT_LOGITS_LAST};
    s->forward_status = bt_engine_forward(s->e, &b, 1, s->logits);
    atomic_store(&s->forward_done, 1);
    return NULL;
}

static void test_engine_hook_ships_layer_0_during_the_forward(void **state)
{
    (void)state;
    char path[512];
    bt_modelgen_params_t mg;
    assert_int_equal(bt_modelgen_preset("tiny", &mg), BT_OK);
    bt_test_tmp_path("kvx-engine-tiny.gguf", path, sizeof path);
    assert_int_equal(bt_modelgen_write(&mg, path), BT_OK);
    bt_model_params_t mp = {.path = path};
    bt_model_t *m = NULL;
    assert_int_equal(bt_model_load(&mp, &m), BT_OK);
    const bt_model_hparams_t *hp = &m->hp;
    assert_true(hp->n_layers >= 2 && hp->n_layers <= 8);

    /* Sender: the engine's own pool. Receiver: a pool of the same geometry. */
    stream_t s;
    memset(&s, 0, sizeof s);
    bt_engine_params_t ep = {.n_threads = 1, .max_batch_tokens = 64, .max_seqs = 2};
    assert_int_equal(bt_engine_create(m, &ep, &s.e), BT_OK);
    bt_kv_pool_t *pool = bt_engine_kv_pool(s.e);
    bt_kv_pool_params_t shape = {.n_layers = hp->n_layers,
                                 .n_kv_heads = hp->n_kv_heads,
                                 .head_dim = hp->head_dim,
                                 .block_size = bt_kv_pool_block_size(pool),
                                 .n_blocks = 16};
    tl_pool_t pb;
    tl_pool_init(&pb, &shape, "tiny", 5);
    bt_kvx_params_t ka = {.backend = "loopback",
                          .name = "prefill-0",
                          .base = bt_kv_pool_base(pool),
                          .size_bytes = bt_kv_pool_size_bytes(pool),
                          .map_peers = -1};
    bt_kvx_layout_from_pool(pool, "tiny", &ka.layout);
    bt_kvx_params_t kb = tl_kvx_params(&pb, "loopback", "decode-0");
    kb.map_peers = -1;
    bt_kvx_t *a, *b;
    assert_int_equal(bt_kvx_create(&ka, &a), BT_OK);
    assert_int_equal(bt_kvx_create(&kb, &b), BT_OK);
    tl_log_t la = {.kvx = a}, lb = {.kvx = b};
    uint8_t addr[BT_KVX_ADDRESS_MAX];
    size_t len;
    bt_kvx_peer_t *ab;
    assert_int_equal(bt_kvx_address(b, addr, sizeof addr, &len), BT_OK);
    assert_int_equal(bt_kvx_connect(a, addr, len, &ab), BT_OK);
    int k = -1;
    for (int i = 0; i < 100000 && (k < 0 || tl_log_find(&la, BT_KVX_EV_PEER_UP, UINT64_MAX) < 0);
         i++) {
        bt_kvx_progress(a);
        bt_kvx_progress(b);
        tl_log_drain(&la);
        tl_log_drain(&lb);
        k = tl_log_find(&lb, BT_KVX_EV_PEER_UP, UINT64_MAX);
    }
    assert_true(k >= 0);
    bt_kvx_peer_t *ba = lb.ev[k].peer;

    /* The decode side reserves first (push); the send starts before the forward. */
    int32_t n_blocks = (N_PROMPT + shape.block_size - 1) / shape.block_size, dst[8];
    for (int32_t i = 0; i < n_blocks; i++)
        dst[i] = 3 + 2 * i;
    bt_kvx_recv_params_t rp = {
        .req_id = 1, .blocks = dst, .n_blocks = n_blocks, .n_tokens = N_PROMPT};
    bt_kvx_recv_t *recv;
    assert_int_equal(bt_kvx_recv_post(ba, &rp, &recv), BT_OK);
    assert_int_equal(bt_kv_seq_init(&s.kv, pool, N_PROMPT), BT_OK);
    assert_int_equal(bt_kv_seq_reserve(&s.kv, pool, N_PROMPT), BT_OK);
    bt_kvx_send_params_t sp = {.req_id = 1,
                               .blocks = s.kv.blocks,
                               .n_blocks = s.kv.n_blocks,
                               .n_tokens = N_PROMPT,
                               .layerwise = 1};
    assert_int_equal(bt_kvx_send_start(ab, &sp, &s.send), BT_OK);

    for (int i = 0; i < N_PROMPT; i++)
        s.prompt[i] = 3 + (i * 37) % (hp->n_vocab - 3);
    s.logits = malloc((size_t)hp->n_vocab * sizeof(float));
    bt_engine_set_layer_hook(s.e, on_layer, &s);
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, compute_main, &s), 0);
    /* The driver: the daemon's loop thread. */
    const int64_t layer_bytes = (int64_t)n_blocks * (int64_t)bt_kv_pool_block_bytes(pool);
    while (!atomic_load(&s.forward_done)) {
        bt_kvx_progress(a);
        bt_kvx_progress(b);
        tl_log_drain(&la);
        tl_log_drain(&lb);
        bt_kvx_stats_t st;
        bt_kvx_get_stats(b, &st);
        if (st.bytes_recv >= layer_bytes)
            atomic_store(&s.arrived, 1);
    }
    pthread_join(t, NULL);
    assert_int_equal(s.forward_status, BT_OK);
    assert_true(s.arrived_in_forward);
    assert_int_equal(s.n_calls, hp->n_layers);
    for (int i = 0; i < s.n_calls; i++)
        assert_int_equal(s.calls[i], i + 1);

    /* The rest of the transfer, and every byte where it belongs. */
    assert_int_equal(bt_kvx_send_finish(s.send, 7, NULL, 0), BT_OK);
    for (int i = 0; i < 100000 && (tl_log_find(&lb, BT_KVX_EV_RECV_DONE, 1) < 0 ||
                                   tl_log_find(&la, BT_KVX_EV_SEND_DONE, 1) < 0);
         i++) {
        bt_kvx_progress(a);
        bt_kvx_progress(b);
        tl_log_drain(&la);
        tl_log_drain(&lb);
    }
    int rd = tl_log_find(&lb, BT_KVX_EV_RECV_DONE, 1);
    assert_true(rd >= 0);
    assert_int_equal(lb.ev[rd].status, BT_OK);
    assert_int_equal(lb.ev[rd].first_token, 7);
    size_t bb = bt_kv_pool_block_bytes(pool);
    const uint8_t *src_base = bt_kv_pool_base(pool), *dst_base = bt_kv_pool_base(pb.pool);
    for (int32_t l = 0; l < hp->n_layers; l++)
        for (int32_t i = 0; i < n_blocks; i++)
            assert_memory_equal(
                dst_base + ((size_t)l * (size_t)shape.n_blocks + (size_t)dst[i]) * bb,
                src_base +
                    ((size_t)l * (size_t)bt_kv_pool_n_blocks(pool) + (size_t)s.kv.blocks[i]) * bb,
                bb);

    bt_kvx_recv_release(recv);
    bt_kvx_send_release(s.send);
    bt_kvx_destroy(a);
    bt_kvx_destroy(b);
    tl_pool_fini(&pb);
    bt_kv_seq_fini(&s.kv, pool);
    bt_engine_destroy(s.e);
    bt_model_destroy(m);
    free(s.logits);
    remove(path);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_engine_hook_ships_layer_0_during_the_forward),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
