/* SPDX-License-Identifier: MIT */
/*
 * test_kvx_loop.c - the KV transfer core through the in-process loopback backend: byte-exact
 * transfers of random fragmented layouts (whole and layer-wise, push and pull order, run
 * by run and packed), coalescing, cancellation with reuse of the blocks, stale and duplicate
 * writes, layout mismatch, peer death, leases, bad arguments and allocation faults.
 */
// ctest-labels: unit
#include "testutil.h"

#include "common/alloc.h"
#include "kvx/kvx_impl.h"
#include "kvx_testlib.h"

#define SEED_A 11
#define SEED_B 22

typedef struct {
    tl_pool_t pa, pb; /* a: prefill (sends), b: decode (receives) */
    bt_kvx_t *a, *b;
    bt_kvx_peer_t *ab, *ba; /* a's handle on b, b's handle on a */
    tl_log_t la, lb;
    int pack; /* the sender packs whole layers into one message */
} pair_t;

static const bt_kv_pool_params_t default_shape = {
    .n_layers = 4, .n_kv_heads = 2, .head_dim = 8, .block_size = 4, .n_blocks = 96};

static void pump(pair_t *p, int rounds)
{
    for (int i = 0; i < rounds; i++) {
        bt_kvx_progress(p->a);
        bt_kvx_progress(p->b);
        tl_log_drain(&p->la);
        tl_log_drain(&p->lb);
    }
}

/* Pumps until the log has an event of that type for req (UINT64_MAX: any); its index. */
static int pump_until(pair_t *p, tl_log_t *log, int type, uint64_t req)
{
    for (int i = 0; i < 100000; i++) {
        int k = tl_log_find(log, type, req);
        if (k >= 0)
            return k;
        pump(p, 1);
    }
    fail_msg("event %d for request %llu never came", type, (unsigned long long)req);
    return -1;
}

/* map 0: the receiver copies straight out of the sender's pool (the mapped method, which the
 * loopback always can); -1: data messages (the method of every network transport); pack 1:
 * the data messages are packed layers. */
static void pair_up_packed(pair_t *p, const bt_kv_pool_params_t *shape_a,
                           const bt_kv_pool_params_t *shape_b, int lease_ms, int map, int pack)
{
    memset(p, 0, sizeof *p);
    p->pack = pack > 0 && map < 0;
    tl_pool_init(&p->pa, shape_a, "m", SEED_A);
    tl_pool_init(&p->pb, shape_b, "m", SEED_B);
    bt_kvx_params_t ka = tl_kvx_params(&p->pa, "loopback", "prefill-0");
    bt_kvx_params_t kb = tl_kvx_params(&p->pb, "loopback", "decode-0");
    ka.lease_ms = kb.lease_ms = lease_ms;
    ka.map_peers = kb.map_peers = map;
    ka.pack = kb.pack = pack;
    assert_int_equal(bt_kvx_create(&ka, &p->a), BT_OK);
    assert_int_equal(bt_kvx_create(&kb, &p->b), BT_OK);
    p->la.kvx = p->a;
    p->lb.kvx = p->b;
    uint8_t addr[BT_KVX_ADDRESS_MAX];
    size_t len;
    assert_int_equal(bt_kvx_address(p->b, addr, sizeof addr, &len), BT_OK);
    assert_int_equal(bt_kvx_connect(p->a, addr, len, &p->ab), BT_OK);
    assert_int_equal(bt_kvx_peer_status(p->ab), BT_AGAIN);
    pump_until(p, &p->la, BT_KVX_EV_PEER_UP, UINT64_MAX);
    int k = pump_until(p, &p->lb, BT_KVX_EV_PEER_UP, UINT64_MAX);
    p->ba = p->lb.ev[k].peer;
    assert_string_equal(bt_kvx_peer_name(p->ba), "prefill-0");
    assert_string_equal(bt_kvx_peer_name(p->ab), "decode-0");
    assert_int_equal(bt_kvx_peer_status(p->ab), BT_OK);
}

static void pair_up(pair_t *p, const bt_kv_pool_params_t *shape_a,
                    const bt_kv_pool_params_t *shape_b, int lease_ms, int map)
{
    pair_up_packed(p, shape_a, shape_b, lease_ms, map, 0);
}

static void pair_down(pair_t *p)
{
    bt_kvx_destroy(p->a);
    bt_kvx_destroy(p->b);
    tl_pool_fini(&p->pa);
    tl_pool_fini(&p->pb);
}

/* One full transfer a -> b; returns after both final events, checking the bytes. */
static void transfer(pair_t *p, uint64_t req, const int32_t *src, const int32_t *dst,
                     int32_t n_tokens, int layerwise, int pull)
{
    int32_t bs = p->pa.layout.block_size, nb = (n_tokens + bs - 1) / bs;
    bt_kvx_recv_params_t rp = {.req_id = req, .blocks = dst, .n_blocks = nb, .n_tokens = n_tokens};
    bt_kvx_send_params_t sp = {
        .req_id = req, .blocks = src, .n_blocks = nb, .n_tokens = n_tokens, .layerwise = layerwise};
    bt_kvx_recv_t *r = NULL;
    bt_kvx_send_t *s = NULL;
    bt_kvx_stats_t st0;
    bt_kvx_get_stats(p->b, &st0);
    if (!pull)
        assert_int_equal(bt_kvx_recv_post(p->ba, &rp, &r), BT_OK);
    assert_int_equal(bt_kvx_send_start(p->ab, &sp, &s), BT_OK);
    if (pull) {
        /* DistServe order: decode learns of the KV first and reserves when it has room. */
        int k = pump_until(p, &p->lb, BT_KVX_EV_OFFERED, req);
        assert_int_equal(p->lb.ev[k].n_tokens, n_tokens);
        assert_int_equal(p->lb.ev[k].n_blocks, nb);
        pump(p, 5);
        assert_int_equal(tl_log_find(&p->la, BT_KVX_EV_SEND_DONE, req), -1);
        assert_int_equal(bt_kvx_recv_post(p->ba, &rp, &r), BT_OK);
    }
    for (int32_t l = 1; layerwise && l <= p->pa.layout.n_layers; l++) {
        bt_kvx_send_layers_ready(s, l);
        pump(p, 3);
    }
    uint8_t meta[5] = {1, 2, 3, 4, (uint8_t)req};
    assert_int_equal(bt_kvx_send_finish(s, 1000 + (int32_t)req, meta, sizeof meta), BT_OK);
    int kr = pump_until(p, &p->lb, BT_KVX_EV_RECV_DONE, req);
    int ks = pump_until(p, &p->la, BT_KVX_EV_SEND_DONE, req);
    bt_kvx_event_t *ev = &p->lb.ev[kr];
    assert_int_equal(ev->status, BT_OK);
    assert_ptr_equal(ev->recv, r);
    assert_int_equal(ev->first_token, 1000 + (int32_t)req);
    assert_int_equal(ev->n_tokens, n_tokens);
    assert_int_equal(ev->meta_len, sizeof meta);
    assert_memory_equal(ev->meta, meta, sizeof meta);
    assert_int_equal(ev->gen, bt_kvx_recv_gen(r));
    assert_int_equal(p->la.ev[ks].status, BT_OK);
    assert_int_equal(
        bt_kvx_pattern_check(bt_kv_pool_base(p->pb.pool), &p->pb.layout, SEED_A, src, dst, nb), -1);
    /* One message (or, mapped, one copy) per run consecutive on both sides, per layer; packed,
     * one per release of layers (all of them at once, or each as it is ready). */
    int64_t runs = tl_expected_msgs(src, dst, nb, 1), n_layers = p->pa.layout.n_layers;
    int64_t per_msg = (int64_t)(KVX_PACK_MSG_BYTES / ((size_t)nb * p->pa.layout.block_bytes));
    per_msg = per_msg > 0 ? per_msg : 1;
    int64_t packed = layerwise ? n_layers : (n_layers + per_msg - 1) / per_msg;
    bt_kvx_stats_t st1;
    bt_kvx_get_stats(p->b, &st1);
    assert_int_equal(st1.n_data_msgs_recv - st0.n_data_msgs_recv,
                     p->pack && runs * n_layers > 1 ? packed : runs * n_layers);
    bt_kvx_recv_release(r);
    bt_kvx_send_release(s);
}

static void random_layouts(int pack)
{
    uint64_t rng = 0x1234567 + (uint64_t)pack;
    for (int trial = 0; trial < 24; trial++) {
        bt_kv_pool_params_t shape = {.n_layers = 1 + (int32_t)(tl_rand(&rng) % 6),
                                     .n_kv_heads = 1 + (int32_t)(tl_rand(&rng) % 4),
                                     .head_dim = 4 << (tl_rand(&rng) % 4),
                                     .block_size = 1 + (int32_t)(tl_rand(&rng) % 16),
                                     .type = tl_rand(&rng) % 2 ? BT_TYPE_F16 : BT_TYPE_F32,
                                     .n_blocks = 48};
        bt_kv_pool_params_t shape_b = shape;
        shape_b.n_blocks = 40 + (int32_t)(tl_rand(&rng) % 30); /* pools may differ in size */
        pair_t p;
        pair_up_packed(&p, &shape, &shape_b, 0, pack || trial % 2 ? -1 : 0, pack);
        for (int t = 0; t < 4; t++) {
            int32_t n_tokens = 1 + (int32_t)(tl_rand(&rng) % (uint64_t)(shape.block_size * 40));
            int32_t nb = (n_tokens + shape.block_size - 1) / shape.block_size;
            int32_t src[48], dst[70];
            tl_random_blocks(&rng, shape.n_blocks, 1 + (int32_t)(tl_rand(&rng) % 8), src, nb);
            tl_random_blocks(&rng, shape_b.n_blocks, 1 + (int32_t)(tl_rand(&rng) % 8), dst, nb);
            bt_kvx_pattern_fill(bt_kv_pool_base(p.pb.pool), &p.pb.layout, SEED_B + (uint64_t)t);
            transfer(&p, (uint64_t)(trial * 10 + t), src, dst, n_tokens, t % 2, t == 3);
        }
        bt_kvx_stats_t s;
        bt_kvx_get_stats(p.b, &s);
        assert_int_equal(s.n_recvs, 0);
        assert_int_equal(s.n_stale_dropped, 0);
        pair_down(&p);
    }
}

static void test_transfer_random_layouts_byte_exact(void **state)
{
    random_layouts(0);
}

static void test_packed_random_layouts_byte_exact(void **state)
{
    random_layouts(1);
}

/* Packed messages hold as many whole layers as fit KVX_PACK_MSG_BYTES (1 MiB), in order:
 * layers of 384 KiB go two to a message; layers of 1.5 MiB one each. */
static void test_packed_messages_hold_whole_layers_up_to_the_cap(void **state)
{
    const bt_kv_pool_params_t big = {.n_layers = 5,
                                     .n_kv_heads = 8,
                                     .head_dim = 128,
                                     .block_size = 16,
                                     .type = BT_TYPE_F16,
                                     .n_blocks = 60}; /* 64 KiB blocks */
    pair_t p;
    pair_up_packed(&p, &big, &big, 0, -1, 1);
    int32_t src[24], dst[24];
    for (int i = 0; i < 24; i++) {
        src[i] = (i * 7) % 24 + 30; /* a permutation: no two consecutive */
        dst[i] = 59 - i;
    }
    static const struct {
        int32_t n_blocks, msgs;
    } cases[] = {{6, 3}, {24, 5}}; /* 2 + 2 + 1 layers; 1 + 1 + 1 + 1 + 1 */
    for (int c = 0; c < 2; c++) {
        bt_kvx_stats_t s0, s1;
        bt_kvx_get_stats(p.a, &s0);
        transfer(&p, 1 + (uint64_t)c, src, dst, cases[c].n_blocks * 16, 0, 0);
        bt_kvx_get_stats(p.a, &s1);
        assert_int_equal(s1.n_data_msgs_sent - s0.n_data_msgs_sent, cases[c].msgs);
        assert_int_equal(s1.bytes_sent - s0.bytes_sent, 5 * cases[c].n_blocks * 65536);
    }
    pair_down(&p);
}

static void test_contiguous_runs_coalesce(void **state)
{
    pair_t p;
    pair_up(&p, &default_shape, &default_shape, 0, -1);
    int32_t src[64], dst[64];
    for (int i = 0; i < 64; i++) {
        src[i] = 10 + i;
        dst[i] = 20 + i;
    }
    transfer(&p, 1, src, dst, 64 * 4 - 3, 0, 0);
    bt_kvx_stats_t s;
    bt_kvx_get_stats(p.a, &s);
    assert_int_equal(s.n_data_msgs_sent, 4); /* one message per layer for 64 blocks */
    pair_down(&p);
}

static void test_layerwise_ships_only_ready_layers(void **state)
{
    pair_t p;
    pair_up(&p, &default_shape, &default_shape, 0, -1);
    int32_t src[3] = {1, 2, 7}, dst[3] = {4, 5, 6};
    bt_kvx_recv_params_t rp = {.req_id = 9, .blocks = dst, .n_blocks = 3, .n_tokens = 12};
    bt_kvx_send_params_t sp = {
        .req_id = 9, .blocks = src, .n_blocks = 3, .n_tokens = 12, .layerwise = 1};
    bt_kvx_recv_t *r;
    bt_kvx_send_t *s;
    assert_int_equal(bt_kvx_recv_post(p.ba, &rp, &r), BT_OK);
    assert_int_equal(bt_kvx_send_start(p.ab, &sp, &s), BT_OK);
    bt_kvx_stats_t st;
    for (int32_t l = 0; l <= 4; l++) {
        if (l)
            bt_kvx_send_layers_ready(s, l);
        pump(&p, 10);
        bt_kvx_get_stats(p.b, &st);
        assert_int_equal(st.n_data_msgs_recv, 2 * l); /* two segments per layer */
    }
    assert_int_equal(tl_log_find(&p.lb, BT_KVX_EV_RECV_DONE, 9), -1); /* no notice yet */
    assert_int_equal(bt_kvx_send_finish(s, 5, NULL, 0), BT_OK);
    pump_until(&p, &p.lb, BT_KVX_EV_RECV_DONE, 9);
    pump_until(&p, &p.la, BT_KVX_EV_SEND_DONE, 9);
    assert_int_equal(
        bt_kvx_pattern_check(bt_kv_pool_base(p.pb.pool), &p.pb.layout, SEED_A, src, dst, 3), -1);
    bt_kvx_recv_release(r);
    bt_kvx_send_release(s);
    pair_down(&p);
}

/* The receiver cancels in the middle; its blocks are reused at once under a new generation;
 * the old generation's writes (still coming, and forged later) never land. */
static void test_cancel_then_reuse_blocks_fences_old_generation(void **state)
{
    pair_t p;
    pair_up(&p, &default_shape, &default_shape, 0, -1);
    int32_t src1[8] = {0, 1, 2, 3, 4, 5, 6, 7}, src2[8] = {30, 31, 32, 33, 40, 41, 42, 43};
    int32_t dst[8] = {50, 51, 52, 53, 54, 55, 56, 57};
    bt_kvx_recv_params_t rp = {.req_id = 3, .blocks = dst, .n_blocks = 8, .n_tokens = 32};
    bt_kvx_send_params_t sp = {
        .req_id = 3, .blocks = src1, .n_blocks = 8, .n_tokens = 32, .layerwise = 1};
    bt_kvx_recv_t *r1, *r2;
    bt_kvx_send_t *s1, *s2;
    assert_int_equal(bt_kvx_recv_post(p.ba, &rp, &r1), BT_OK);
    uint32_t old_gen = bt_kvx_recv_gen(r1);
    assert_int_equal(bt_kvx_send_start(p.ab, &sp, &s1), BT_OK);
    bt_kvx_send_layers_ready(s1, 2);
    pump(&p, 2);
    bt_kvx_send_layers_ready(s1, 3); /* queued toward b, not yet taken */
    bt_kvx_progress(p.a);
    bt_kvx_recv_cancel(r1);
    int k = pump_until(&p, &p.lb, BT_KVX_EV_RECV_DONE, 3);
    assert_int_equal(p.lb.ev[k].status, BT_ERR_CANCELLED);
    k = pump_until(&p, &p.la, BT_KVX_EV_SEND_DONE, 3);
    assert_int_equal(p.la.ev[k].status, BT_ERR_CANCELLED);
    bt_kvx_recv_release(r1);
    bt_kvx_send_release(s1);

    /* Same blocks, same request id, new generation, other source blocks. */
    assert_int_equal(bt_kvx_recv_post(p.ba, &rp, &r2), BT_OK);
    assert_int_not_equal(bt_kvx_recv_gen(r2), old_gen);
    sp.blocks = src2;
    sp.layerwise = 0;
    assert_int_equal(bt_kvx_send_start(p.ab, &sp, &s2), BT_OK);
    /* A late writer of the old generation, before and after the new data. */
    assert_int_equal(bt_kvx_debug_inject(p.ab, old_gen, 3, 0, 0, 8), BT_OK);
    assert_int_equal(bt_kvx_send_finish(s2, 1, NULL, 0), BT_OK);
    pump_until(&p, &p.lb, BT_KVX_EV_RECV_DONE, 3);
    assert_int_equal(bt_kvx_debug_inject(p.ab, old_gen, 0, 0, 0, 8), BT_OK);
    assert_int_equal(bt_kvx_debug_inject(p.ab, old_gen, 1, 4, 4, 4), BT_OK);
    pump(&p, 20);
    assert_int_equal(
        bt_kvx_pattern_check(bt_kv_pool_base(p.pb.pool), &p.pb.layout, SEED_A, src2, dst, 8), -1);
    bt_kvx_stats_t st;
    bt_kvx_get_stats(p.b, &st);
    assert_true(st.n_stale_dropped >= 3);
    assert_int_equal(st.n_quarantined, 0);
    bt_kvx_get_stats(p.a, &st);
    assert_int_equal(st.n_sends, 1); /* s2, still held; injections left nothing behind */
    bt_kvx_recv_release(r2);
    bt_kvx_send_release(s2);
    pair_down(&p);
}

/* The mapped method: cancel in the middle, reuse the blocks, and no byte of the old
 * generation's source lands after the cancel. */
static void test_mapped_cancel_then_reuse(void **state)
{
    pair_t p;
    pair_up(&p, &default_shape, &default_shape, 0, 0);
    int32_t src1[8] = {0, 1, 2, 3, 4, 5, 6, 7}, src2[8] = {30, 31, 32, 33, 40, 41, 42, 43};
    int32_t dst[8] = {50, 51, 52, 53, 54, 55, 56, 57};
    bt_kvx_recv_params_t rp = {.req_id = 3, .blocks = dst, .n_blocks = 8, .n_tokens = 32};
    bt_kvx_send_params_t sp = {
        .req_id = 3, .blocks = src1, .n_blocks = 8, .n_tokens = 32, .layerwise = 1};
    bt_kvx_recv_t *r;
    bt_kvx_send_t *s;
    assert_int_equal(bt_kvx_recv_post(p.ba, &rp, &r), BT_OK);
    assert_int_equal(bt_kvx_send_start(p.ab, &sp, &s), BT_OK);
    bt_kvx_send_layers_ready(s, 2);
    pump(&p, 5);
    bt_kvx_stats_t st;
    bt_kvx_get_stats(p.b, &st);
    assert_int_equal(st.n_data_msgs_recv, 2); /* two layers copied, one run each */
    bt_kvx_recv_cancel(r);
    bt_kvx_send_layers_ready(s, 4);
    int k = pump_until(&p, &p.lb, BT_KVX_EV_RECV_DONE, 3);
    assert_int_equal(p.lb.ev[k].status, BT_ERR_CANCELLED);
    pump_until(&p, &p.la, BT_KVX_EV_SEND_DONE, 3);
    bt_kvx_recv_release(r);
    bt_kvx_send_release(s);
    /* Layers 2 and 3 of the cancelled generation were never copied. */
    bt_kvx_get_stats(p.b, &st);
    assert_int_equal(st.n_data_msgs_recv, 2);
    bt_kvx_pattern_fill_blocks(bt_kv_pool_base(p.pb.pool), &p.pb.layout, 99, dst, 8);
    p.la.n = p.lb.n = 0;
    assert_int_equal(bt_kvx_recv_post(p.ba, &rp, &r), BT_OK);
    sp.blocks = src2;
    sp.layerwise = 0;
    assert_int_equal(bt_kvx_send_start(p.ab, &sp, &s), BT_OK);
    assert_int_equal(bt_kvx_send_finish(s, 1, NULL, 0), BT_OK);
    k = pump_until(&p, &p.lb, BT_KVX_EV_RECV_DONE, 3);
    assert_int_equal(p.lb.ev[k].status, BT_OK);
    assert_int_equal(
        bt_kvx_pattern_check(bt_kv_pool_base(p.pb.pool), &p.pb.layout, SEED_A, src2, dst, 8), -1);
    bt_kvx_recv_release(r);
    pump_until(&p, &p.la, BT_KVX_EV_SEND_DONE, 3);
    bt_kvx_send_release(s);
    pair_down(&p);
}

/* The mapped method: a receiver that has copied everything completes only if the sender still
 * vouches for its source; a sender that gave up meanwhile (its blocks may be reused) makes the
 * receive fail instead of delivering torn KV. */
static void test_mapped_receive_needs_the_senders_confirmation(void **state)
{
    pair_t p;
    pair_up(&p, &default_shape, &default_shape, 0, 0);
    int32_t src[4] = {0, 1, 2, 3}, dst[4] = {8, 9, 10, 11};
    bt_kvx_recv_params_t rp = {.req_id = 5, .blocks = dst, .n_blocks = 4, .n_tokens = 16};
    bt_kvx_send_params_t sp = {.req_id = 5, .blocks = src, .n_blocks = 4, .n_tokens = 16};
    bt_kvx_recv_t *r;
    bt_kvx_send_t *s;
    assert_int_equal(bt_kvx_recv_post(p.ba, &rp, &r), BT_OK);
    bt_kvx_progress(p.b);
    assert_int_equal(bt_kvx_send_start(p.ab, &sp, &s), BT_OK);
    assert_int_equal(bt_kvx_send_finish(s, 1, NULL, 0), BT_OK);
    bt_kvx_progress(p.a); /* binds: source list, ready, finish */
    bt_kvx_progress(p.b); /* copies everything, asks for the confirmation */
    bt_kvx_progress(p.b);
    bt_kvx_send_cancel(s); /* ... but the sender gives up first */
    tl_log_drain(&p.la);
    int k = pump_until(&p, &p.lb, BT_KVX_EV_RECV_DONE, 5);
    assert_int_equal(p.lb.ev[k].status, BT_ERR_CANCELLED);
    k = pump_until(&p, &p.la, BT_KVX_EV_SEND_DONE, 5);
    assert_int_equal(p.la.ev[k].status, BT_ERR_CANCELLED);
    bt_kvx_recv_release(r);
    bt_kvx_send_release(s);
    pair_down(&p);
}

/* A forged data message: a run (layer, first block index, source block, blocks) or, packed,
 * (first layer, layers, source block, blocks a layer). */
typedef struct {
    int32_t layer, idx_or_layers, src, n;
} forged_t;

static int forge(pair_t *p, int packed, uint32_t gen, forged_t f)
{
    return packed ? bt_kvx_debug_inject_packed(p->ab, gen, f.layer, f.idx_or_layers, f.src, f.n)
                  : bt_kvx_debug_inject(p->ab, gen, f.layer, f.idx_or_layers, f.src, f.n);
}

/* Writes into a finished generation and one that never existed are dropped; on a live
 * reservation a write of blocks already written is dropped, and one that does not fit it (past
 * the end; packed also: overlapping written and unwritten layers, not whole layers) fails it. */
static void forged_writes(int packed)
{
    static const forged_t stale = {0, 0, 40, 4}, stale_packed = {0, 4, 40, 4};
    static const forged_t first[2] = {{2, 0, 0, 4}, {0, 2, 0, 4}};
    static const forged_t again[2] = {{2, 1, 1, 2}, {0, 2, 0, 4}};
    static const forged_t bad[2][3] = {{{1, 3, 0, 2}}, {{1, 2, 0, 4}, {2, 1, 0, 3}, {3, 2, 0, 4}}};
    pair_t p;
    pair_up_packed(&p, &default_shape, &default_shape, 0, -1, packed);
    int32_t src[4] = {0, 1, 2, 3}, dst[4] = {8, 9, 10, 11};
    transfer(&p, 1, src, dst, 16, 0, 0);
    uint32_t done_gen = p.lb.ev[tl_log_find(&p.lb, BT_KVX_EV_RECV_DONE, 1)].gen;
    forged_t st_f = packed ? stale_packed : stale;
    assert_int_equal(forge(&p, packed, done_gen, st_f), BT_OK);
    assert_int_equal(forge(&p, packed, done_gen + 1000, st_f), BT_OK);
    pump(&p, 10);
    bt_kvx_stats_t st;
    bt_kvx_get_stats(p.b, &st);
    assert_int_equal(st.n_stale_dropped, 2);
    assert_int_equal(
        bt_kvx_pattern_check(bt_kv_pool_base(p.pb.pool), &p.pb.layout, SEED_A, src, dst, 4), -1);
    for (int i = 0; i < (packed ? 3 : 1); i++) {
        uint64_t req = 2 + (uint64_t)i;
        bt_kvx_recv_params_t rp = {.req_id = req, .blocks = dst, .n_blocks = 4, .n_tokens = 16};
        bt_kvx_recv_t *r;
        assert_int_equal(bt_kvx_recv_post(p.ba, &rp, &r), BT_OK);
        uint32_t gen = bt_kvx_recv_gen(r);
        assert_int_equal(forge(&p, packed, gen, first[packed]), BT_OK);
        assert_int_equal(forge(&p, packed, gen, again[packed]), BT_OK);
        pump(&p, 10);
        bt_kvx_get_stats(p.b, &st);
        assert_int_equal(st.n_dup_dropped, i + 1);
        assert_int_equal(forge(&p, packed, gen, bad[packed][i]), BT_OK);
        int k = pump_until(&p, &p.lb, BT_KVX_EV_RECV_DONE, req);
        assert_int_equal(p.lb.ev[k].status, BT_ERR_FORMAT);
        bt_kvx_recv_release(r);
    }
    pair_down(&p);
}

static void test_stale_duplicate_and_forged_writes_rejected(void **state)
{
    forged_writes(0);
}

static void test_packed_stale_duplicate_and_forged_writes_rejected(void **state)
{
    forged_writes(1);
}

/* A packing buffer that cannot be had: the send goes on run by run and the bytes arrive exact.
 * One allocation fault, swept over everything send_start allocates (the send, its lists, the
 * packing buffer, control messages): each refuses the send at once, ends it on both sides
 * with an error, or lets it complete exactly; and at least one is the fallback. */
static void test_packing_without_memory_falls_back_to_runs(void **state)
{
    int fell_back = 0;
    for (long k = 1; k <= 8; k++) {
        pair_t p;
        pair_up_packed(&p, &default_shape, &default_shape, 0, -1, 1);
        int32_t src[6] = {0, 2, 4, 6, 8, 10}, dst[6] = {50, 52, 54, 56, 58, 60};
        bt_kvx_recv_params_t rp = {.req_id = 7, .blocks = dst, .n_blocks = 6, .n_tokens = 24};
        bt_kvx_send_params_t sp = {.req_id = 7, .blocks = src, .n_blocks = 6, .n_tokens = 24};
        bt_kvx_recv_t *r;
        bt_kvx_send_t *s = NULL;
        assert_int_equal(bt_kvx_recv_post(p.ba, &rp, &r), BT_OK);
        pump(&p, 5); /* the sender knows the reservation: send_start binds and pumps at once */
        bt_alloc_fail_at(k);
        int st = bt_kvx_send_start(p.ab, &sp, &s);
        int fired = bt_alloc_fault_fired();
        bt_alloc_fail_at(0);
        if (st == BT_OK) {
            bt_kvx_send_finish(s, 1, NULL, 0); /* an ended send answers with its status */
            int kr = pump_until(&p, &p.lb, BT_KVX_EV_RECV_DONE, 7);
            int ks = pump_until(&p, &p.la, BT_KVX_EV_SEND_DONE, 7);
            int ok = p.lb.ev[kr].status == BT_OK;
            assert_int_equal(p.la.ev[ks].status == BT_OK, ok);
            bt_kvx_stats_t stb;
            bt_kvx_get_stats(p.b, &stb);
            if (ok) {
                assert_int_equal(bt_kvx_pattern_check(bt_kv_pool_base(p.pb.pool), &p.pb.layout,
                                                      SEED_A, src, dst, 6),
                                 -1);
                /* Packed: one message; run by run: 6 runs x 4 layers. */
                assert_true(stb.n_data_msgs_recv == 1 || stb.n_data_msgs_recv == 24);
                fell_back += fired && stb.n_data_msgs_recv == 24;
            }
            bt_kvx_send_release(s);
        } else {
            assert_int_equal(st, BT_ERR_NOMEM);
        }
        bt_kvx_recv_release(r);
        pair_down(&p);
    }
    assert_true(fell_back > 0);
}

static void test_layout_mismatch_refused(void **state)
{
    static const struct {
        bt_kv_pool_params_t shape;
        const char *model;
    } cases[] = {
        {{.n_layers = 4, .n_kv_heads = 2, .head_dim = 16, .block_size = 4, .n_blocks = 8}, "m"},
        {{.n_layers = 5, .n_kv_heads = 2, .head_dim = 8, .block_size = 4, .n_blocks = 8}, "m"},
        {{.n_layers = 4, .n_kv_heads = 1, .head_dim = 8, .block_size = 4, .n_blocks = 8}, "m"},
        {{.n_layers = 4, .n_kv_heads = 2, .head_dim = 8, .block_size = 8, .n_blocks = 8}, "m"},
        {{.n_layers = 4,
          .n_kv_heads = 2,
          .head_dim = 8,
          .block_size = 4,
          .type = BT_TYPE_F16,
          .n_blocks = 8},
         "m"},
        {{.n_layers = 4, .n_kv_heads = 2, .head_dim = 8, .block_size = 4, .n_blocks = 8}, "m2"},
    };
    tl_pool_t pa;
    tl_pool_init(&pa, &default_shape, "m", 1);
    bt_kvx_params_t ka = tl_kvx_params(&pa, "loopback", "a");
    bt_kvx_t *a;
    assert_int_equal(bt_kvx_create(&ka, &a), BT_OK);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        tl_pool_t pb;
        tl_pool_init(&pb, &cases[i].shape, cases[i].model, 2);
        bt_kvx_params_t kb = tl_kvx_params(&pb, "loopback", "b");
        bt_kvx_t *b;
        assert_int_equal(bt_kvx_create(&kb, &b), BT_OK);
        uint8_t addr[BT_KVX_ADDRESS_MAX];
        size_t len;
        bt_kvx_peer_t *peer = NULL;
        assert_int_equal(bt_kvx_address(b, addr, sizeof addr, &len), BT_OK);
        assert_int_equal(bt_kvx_connect(a, addr, len, &peer), BT_ERR_MISMATCH);
        assert_null(peer);
        /* The layout version is checked too; and garbage is not an address. */
        kb.layout.layout_version = BT_KVX_LAYOUT_VERSION + 1;
        bt_kvx_destroy(b);
        assert_int_equal(bt_kvx_create(&kb, &b), BT_OK);
        assert_int_equal(bt_kvx_address(b, addr, sizeof addr, &len), BT_OK);
        assert_int_equal(bt_kvx_connect(a, addr, len, &peer), BT_ERR_MISMATCH);
        addr[0] ^= 0xff;
        assert_int_equal(bt_kvx_connect(a, addr, len, &peer), BT_ERR_FORMAT);
        assert_int_equal(bt_kvx_connect(a, addr, 3, &peer), BT_ERR_FORMAT);
        bt_kvx_destroy(b);
        tl_pool_fini(&pb);
    }
    bt_kvx_destroy(a);
    tl_pool_fini(&pa);
}

/* A context that goes away mid-transfer (the in-process kill -9): the survivor reports an
 * explicit error on every transfer and gets all its blocks back. */
static void test_peer_death_mid_transfer(void **state)
{
    for (int victim = 0; victim < 2; victim++) {
        pair_t p;
        pair_up(&p, &default_shape, &default_shape, 0, -1);
        int32_t src[6] = {0, 1, 2, 10, 11, 12}, dst[6];
        assert_int_equal(bt_kv_pool_alloc(p.pb.pool, 6, dst), BT_OK);
        bt_kvx_recv_params_t rp = {.req_id = 4, .blocks = dst, .n_blocks = 6, .n_tokens = 24};
        bt_kvx_send_params_t sp = {
            .req_id = 4, .blocks = src, .n_blocks = 6, .n_tokens = 24, .layerwise = 1};
        bt_kvx_recv_t *r;
        bt_kvx_send_t *s;
        assert_int_equal(bt_kvx_recv_post(p.ba, &rp, &r), BT_OK);
        assert_int_equal(bt_kvx_send_start(p.ab, &sp, &s), BT_OK);
        bt_kvx_send_layers_ready(s, 2);
        pump(&p, 5);
        bt_kvx_send_layers_ready(s, 3);
        bt_kvx_progress(p.a); /* a layer in flight */
        tl_log_t *survivor = victim ? &p.la : &p.lb;
        if (victim) {
            bt_kvx_destroy(p.b);
            p.b = NULL;
        } else {
            bt_kvx_destroy(p.a);
            p.a = NULL;
        }
        int type = victim ? BT_KVX_EV_SEND_DONE : BT_KVX_EV_RECV_DONE;
        int k = -1;
        for (int i = 0; i < 1000 && k < 0; i++) {
            bt_kvx_progress(survivor->kvx);
            tl_log_drain(survivor);
            k = tl_log_find(survivor, type, 4);
        }
        assert_true(k >= 0);
        assert_int_equal(survivor->ev[k].status, BT_ERR_PEER);
        k = tl_log_find(survivor, BT_KVX_EV_PEER_DOWN, UINT64_MAX);
        assert_true(k >= 0);
        assert_int_equal(survivor->ev[k].status, BT_ERR_PEER);
        bt_kvx_stats_t st;
        bt_kvx_get_stats(survivor->kvx, &st);
        assert_int_equal(st.n_peers_up, 0);
        if (victim) {
            bt_kvx_send_release(s);
        } else {
            bt_kvx_recv_release(r);
            for (int i = 0; i < 6; i++)
                bt_kv_pool_unref(p.pb.pool, dst[i]);
            assert_int_equal(bt_kv_pool_n_free(p.pb.pool), default_shape.n_blocks);
        }
        bt_kvx_peer_release(victim ? p.ab : p.ba);
        bt_kvx_get_stats(survivor->kvx, &st);
        assert_int_equal(st.n_sends + st.n_recvs, 0);
        pair_down(&p);
    }
}

static void test_sender_cancel_and_mismatched_reservation(void **state)
{
    pair_t p;
    pair_up(&p, &default_shape, &default_shape, 0, -1);
    int32_t src[2] = {0, 1}, dst[3] = {5, 6, 7};
    bt_kvx_recv_params_t rp = {.req_id = 1, .blocks = dst, .n_blocks = 2, .n_tokens = 8};
    bt_kvx_send_params_t sp = {
        .req_id = 1, .blocks = src, .n_blocks = 2, .n_tokens = 8, .layerwise = 1};
    bt_kvx_recv_t *r;
    bt_kvx_send_t *s;
    assert_int_equal(bt_kvx_recv_post(p.ba, &rp, &r), BT_OK);
    assert_int_equal(bt_kvx_send_start(p.ab, &sp, &s), BT_OK);
    pump(&p, 3);
    bt_kvx_send_cancel(s);
    assert_int_equal(bt_kvx_send_finish(s, 1, NULL, 0), BT_ERR_CANCELLED);
    int k = pump_until(&p, &p.lb, BT_KVX_EV_RECV_DONE, 1);
    assert_int_equal(p.lb.ev[k].status, BT_ERR_CANCELLED);
    k = pump_until(&p, &p.la, BT_KVX_EV_SEND_DONE, 1);
    assert_int_equal(p.la.ev[k].status, BT_ERR_CANCELLED);
    bt_kvx_recv_release(r);
    bt_kvx_send_release(s);

    /* The two sides disagree on the request's length: both fail, nothing is written. */
    rp = (bt_kvx_recv_params_t){.req_id = 2, .blocks = dst, .n_blocks = 3, .n_tokens = 9};
    sp.req_id = 2;
    sp.layerwise = 0;
    assert_int_equal(bt_kvx_recv_post(p.ba, &rp, &r), BT_OK);
    assert_int_equal(bt_kvx_send_start(p.ab, &sp, &s), BT_OK);
    k = pump_until(&p, &p.lb, BT_KVX_EV_RECV_DONE, 2);
    assert_int_equal(p.lb.ev[k].status, BT_ERR_MISMATCH);
    k = pump_until(&p, &p.la, BT_KVX_EV_SEND_DONE, 2);
    assert_int_equal(p.la.ev[k].status, BT_ERR_MISMATCH);
    bt_kvx_recv_release(r);
    bt_kvx_send_release(s);
    pair_down(&p);
}

/* An offer the receiver will never post for (in pairs: the replica's receive ended first) is
 * declined: the send, which would wait for a reservation forever, ends with the status given;
 * the same request id then goes through when a receive is posted. */
static void test_declined_offer_ends_the_send(void **state)
{
    (void)state;
    pair_t p;
    pair_up(&p, &default_shape, &default_shape, 0, -1);
    int32_t src[2] = {0, 1}, dst[2] = {2, 3};
    bt_kvx_send_params_t sp = {.req_id = 3, .blocks = src, .n_blocks = 1, .n_tokens = 4};
    bt_kvx_send_t *s;
    assert_int_equal(bt_kvx_send_start(p.ab, &sp, &s), BT_OK);
    assert_int_equal(bt_kvx_send_finish(s, 1, NULL, 0), BT_OK);
    pump_until(&p, &p.lb, BT_KVX_EV_OFFERED, 3);
    pump(&p, 20);
    assert_int_equal(tl_log_find(&p.la, BT_KVX_EV_SEND_DONE, 3), -1); /* it waits */
    bt_kvx_decline(p.ba, 3, BT_ERR_NOT_FOUND);
    int k = pump_until(&p, &p.la, BT_KVX_EV_SEND_DONE, 3);
    assert_int_equal(p.la.ev[k].status, BT_ERR_NOT_FOUND);
    bt_kvx_send_release(s);
    bt_kvx_decline(p.ba, 99, BT_ERR_NOT_FOUND); /* no such send: nothing happens */
    pump(&p, 5);
    p.la.n = p.lb.n = 0;
    transfer(&p, 3, src, dst, 4, 0, 0);
    pair_down(&p);
}

/* The sender cancels while its data sits unread at a receiver that stopped running: after
 * the lease the connection is cut, and the send ends anyway. */
static void test_lease_bounds_a_stuck_peer(void **state)
{
    pair_t p;
    pair_up(&p, &default_shape, &default_shape, 150, -1);
    int32_t src[2] = {0, 1}, dst[2] = {5, 6};
    bt_kvx_recv_params_t rp = {.req_id = 1, .blocks = dst, .n_blocks = 2, .n_tokens = 8};
    bt_kvx_send_params_t sp = {.req_id = 1, .blocks = src, .n_blocks = 2, .n_tokens = 8};
    bt_kvx_recv_t *r;
    bt_kvx_send_t *s;
    assert_int_equal(bt_kvx_recv_post(p.ba, &rp, &r), BT_OK);
    bt_kvx_progress(p.b);
    assert_int_equal(bt_kvx_send_start(p.ab, &sp, &s), BT_OK);
    bt_kvx_progress(p.a); /* binds and posts all data; b never runs again */
    bt_kvx_send_cancel(s);
    int64_t t0 = tl_now_ms();
    int k = -1;
    while (k < 0 && tl_now_ms() - t0 < 5000) {
        bt_kvx_wait(p.a, 20);
        tl_log_drain(&p.la);
        k = tl_log_find(&p.la, BT_KVX_EV_SEND_DONE, 1);
    }
    assert_true(k >= 0);
    assert_int_equal(p.la.ev[k].status, BT_ERR_CANCELLED);
    assert_true(tl_now_ms() - t0 >= 150);
    assert_true(tl_log_find(&p.la, BT_KVX_EV_PEER_DOWN, UINT64_MAX) >= 0);
    bt_kvx_send_release(s);
    bt_kvx_recv_release(r);
    pair_down(&p);
}

static void test_close_and_reconnect(void **state)
{
    pair_t p;
    pair_up(&p, &default_shape, &default_shape, 0, -1);
    bt_kvx_peer_close(p.ab);
    assert_int_equal(bt_kvx_peer_status(p.ab), BT_ERR_CANCELLED);
    int k = pump_until(&p, &p.lb, BT_KVX_EV_PEER_DOWN, UINT64_MAX);
    assert_int_equal(p.lb.ev[k].status, BT_ERR_PEER);
    bt_kvx_peer_release(p.ab);
    bt_kvx_peer_release(p.ba);
    p.la.n = p.lb.n = 0;
    uint8_t addr[BT_KVX_ADDRESS_MAX];
    size_t len;
    assert_int_equal(bt_kvx_address(p.b, addr, sizeof addr, &len), BT_OK);
    assert_int_equal(bt_kvx_connect(p.a, addr, len, &p.ab), BT_OK);
    pump_until(&p, &p.la, BT_KVX_EV_PEER_UP, UINT64_MAX);
    p.ba = p.lb.ev[pump_until(&p, &p.lb, BT_KVX_EV_PEER_UP, UINT64_MAX)].peer;
    int32_t src[1] = {3}, dst[1] = {4};
    transfer(&p, 1, src, dst, 2, 0, 0);
    pair_down(&p);
}

static void test_bad_arguments(void **state)
{
    pair_t p;
    pair_up(&p, &default_shape, &default_shape, 0, -1);
    int32_t ok[2] = {0, 1}, bad[2] = {0, 96};
    bt_kvx_recv_t *r = NULL;
    bt_kvx_send_t *s = NULL;
    bt_kvx_recv_params_t rp = {.req_id = 1, .blocks = bad, .n_blocks = 2, .n_tokens = 8};
    assert_int_equal(bt_kvx_recv_post(p.ba, &rp, &r), BT_ERR_INVAL);
    rp.blocks = ok;
    rp.n_tokens = 9; /* needs 3 blocks */
    assert_int_equal(bt_kvx_recv_post(p.ba, &rp, &r), BT_ERR_INVAL);
    rp.n_tokens = 0;
    assert_int_equal(bt_kvx_recv_post(p.ba, &rp, &r), BT_ERR_INVAL);
    bt_kvx_send_params_t sp = {.req_id = 1, .blocks = bad, .n_blocks = 2, .n_tokens = 8};
    assert_int_equal(bt_kvx_send_start(p.ab, &sp, &s), BT_ERR_INVAL);
    sp.blocks = ok;
    assert_int_equal(bt_kvx_send_start(p.ab, &sp, &s), BT_OK);
    uint8_t big[BT_KVX_META_MAX + 1] = {0};
    assert_int_equal(bt_kvx_send_finish(s, 1, big, sizeof big), BT_ERR_INVAL);
    assert_int_equal(bt_kvx_send_finish(s, 1, NULL, 3), BT_ERR_INVAL);
    bt_kvx_send_release(s); /* before its end: cancels, freed once ended */
    pump(&p, 10);
    bt_kvx_stats_t st;
    bt_kvx_get_stats(p.a, &st);
    assert_int_equal(st.n_sends, 0);
    bt_kvx_params_t kp = tl_kvx_params(&p.pa, "nonesuch", "x");
    bt_kvx_t *x;
    assert_int_equal(bt_kvx_create(&kp, &x), BT_ERR_NOT_FOUND);
    kp = tl_kvx_params(&p.pa, "loopback", "x");
    kp.size_bytes /= 2;
    assert_int_equal(bt_kvx_create(&kp, &x), BT_ERR_INVAL);
    uint8_t addr[8];
    size_t len;
    assert_int_equal(bt_kvx_address(p.a, addr, sizeof addr, &len), BT_ERR_RANGE);
    pair_down(&p);
}

static void test_fd_wakes_a_sleeping_loop(void **state)
{
    pair_t p;
    pair_up(&p, &default_shape, &default_shape, 0, -1);
    int armed = BT_AGAIN;
    for (int i = 0; i < 1000 && armed != BT_OK; i++) {
        pump(&p, 1);
        armed = bt_kvx_arm(p.b); /* BT_AGAIN while a housekeeping tick is due */
    }
    assert_int_equal(armed, BT_OK);
    struct pollfd pfd = {.fd = bt_kvx_fd(p.b), .events = POLLIN};
    int32_t src[1] = {0};
    bt_kvx_send_params_t sp = {.req_id = 1, .blocks = src, .n_blocks = 1, .n_tokens = 1};
    bt_kvx_send_t *s;
    assert_int_equal(bt_kvx_send_start(p.ab, &sp, &s), BT_OK); /* an offer toward b */
    assert_int_equal(poll(&pfd, 1, 1000), 1);
    assert_true(bt_kvx_wait(p.b, 0) >= 1);
    tl_log_drain(&p.lb);
    assert_true(tl_log_find(&p.lb, BT_KVX_EV_OFFERED, 1) >= 0);
    bt_kvx_send_release(s);
    pair_down(&p);
}

static void test_create_and_connect_survive_allocation_faults(void **state)
{
    tl_pool_t pa, pb;
    tl_pool_init(&pa, &default_shape, "m", 1);
    tl_pool_init(&pb, &default_shape, "m", 2);
    bt_kvx_params_t ka = tl_kvx_params(&pa, "loopback", "a");
    bt_kvx_params_t kb = tl_kvx_params(&pb, "loopback", "b");
    bt_kvx_t *b;
    assert_int_equal(bt_kvx_create(&kb, &b), BT_OK);
    uint8_t addr[BT_KVX_ADDRESS_MAX];
    size_t len;
    assert_int_equal(bt_kvx_address(b, addr, sizeof addr, &len), BT_OK);
    for (long n = 1; n < 40; n++) {
        bt_kvx_t *a = NULL;
        bt_kvx_peer_t *peer = NULL;
        bt_alloc_fail_at(n);
        int st = bt_kvx_create(&ka, &a);
        if (st == BT_OK)
            st = bt_kvx_connect(a, addr, len, &peer);
        int fired = bt_alloc_fault_fired();
        bt_alloc_fail_at(0);
        if (fired)
            assert_int_equal(st, BT_ERR_NOMEM);
        else
            assert_int_equal(st, BT_OK);
        for (int i = 0; a && i < 10; i++) {
            bt_kvx_progress(a);
            bt_kvx_progress(b);
        }
        bt_kvx_event_t ev;
        while (bt_kvx_next_event(b, &ev))
            if (ev.type == BT_KVX_EV_PEER_UP)
                bt_kvx_peer_release(ev.peer);
        bt_kvx_destroy(a);
        for (int i = 0; i < 3; i++)
            bt_kvx_progress(b);
        while (bt_kvx_next_event(b, &ev))
            ;
    }
    bt_kvx_destroy(b);
    tl_pool_fini(&pa);
    tl_pool_fini(&pb);
}

int main(void)
{
    bt_log_set_level(BT_LOG_OFF);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_transfer_random_layouts_byte_exact),
        cmocka_unit_test(test_packed_random_layouts_byte_exact),
        cmocka_unit_test(test_packed_messages_hold_whole_layers_up_to_the_cap),
        cmocka_unit_test(test_packed_stale_duplicate_and_forged_writes_rejected),
        cmocka_unit_test(test_packing_without_memory_falls_back_to_runs),
        cmocka_unit_test(test_contiguous_runs_coalesce),
        cmocka_unit_test(test_layerwise_ships_only_ready_layers),
        cmocka_unit_test(test_cancel_then_reuse_blocks_fences_old_generation),
        cmocka_unit_test(test_mapped_cancel_then_reuse),
        cmocka_unit_test(test_mapped_receive_needs_the_senders_confirmation),
        cmocka_unit_test(test_stale_duplicate_and_forged_writes_rejected),
        cmocka_unit_test(test_layout_mismatch_refused),
        cmocka_unit_test(test_peer_death_mid_transfer),
        cmocka_unit_test(test_sender_cancel_and_mismatched_reservation),
        cmocka_unit_test(test_declined_offer_ends_the_send),
        cmocka_unit_test(test_lease_bounds_a_stuck_peer),
        cmocka_unit_test(test_close_and_reconnect),
        cmocka_unit_test(test_bad_arguments),
        cmocka_unit_test(test_fd_wakes_a_sleeping_loop),
        cmocka_unit_test(test_create_and_connect_survive_allocation_faults),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
