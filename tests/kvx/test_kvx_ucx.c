/* SPDX-License-Identifier: MIT */
/*
 * test_kvx_ucx.c - KV transfer over UCX between this process and a baton-kvx-peer process,
 * on one host with the receiver copying out of the mapped sender pool, over UCX shared memory
 * (UCX_TLS=sm: sysv/posix messages, CMA zero-copy) and over TCP (kvx's own TCP data
 * connection, "tcp", and UCX's TCP transport, "tcp-ucx"): byte-exact
 * random layouts whole and layer-wise in both directions, cancel in the middle then reuse with
 * a late writer of the old generation, kill -9 of either side in the middle of a transfer,
 * layout mismatch and stale generations.
 */
// ctest-labels: integration
#include "testutil.h"

#include "kvx_testlib.h"

#define SEED_LOCAL 101
#define SEED_PEER 202
#define N_BLOCKS 192

static const bt_kv_pool_params_t shape = {.n_layers = 6,
                                          .n_kv_heads = 2,
                                          .head_dim = 32,
                                          .block_size = 8,
                                          .type = BT_TYPE_F16,
                                          .n_blocks = N_BLOCKS}; /* 2 KiB blocks, 2.25 MiB pool */
static const bt_kv_pool_params_t big_shape = {
    .n_layers = 16,
    .n_kv_heads = 8,
    .head_dim = 64,
    .block_size = 16,
    .type = BT_TYPE_F16,
    .n_blocks = 64}; /* 32 KiB blocks, 32 MiB pool: slow enough to stop in the middle */

typedef struct {
    const char *tls;
    int map;
    tl_pool_t pool;
    bt_kvx_t *kvx;
    tl_log_t log;
    bt_kvx_peer_t *peer;
    tl_helper_t h;
} rig_t;

/* The data path a rig's peers must settle on. */
static const char *rig_path(const rig_t *r)
{
    if (strcmp(r->tls, "tcp") == 0)
        return "stream";
    return r->map == 0 ? "mapped" : "ucx";
}

/* This process and a peer process with the same layout, connected. */
/* map 0: a same-host receiver copies out of the mapped sender pool; -1: all data through the
 * transport (UCX shared-memory transports and CMA for "sm"; for "tcp", kvx's own TCP data
 * connection; for "tcp-ucx", UCX's TCP transport). */
static void rig_up(rig_t *r, const char *tls, int map, const bt_kv_pool_params_t *sh,
                   int timeout_ms)
{
    memset(r, 0, sizeof *r);
    r->tls = tls;
    r->map = map;
    int stream = strcmp(tls, "tcp-ucx") == 0 ? -1 : 0;
    if (stream < 0)
        tls = "tcp";
    tl_helper_spawn(&r->h);
    tl_pool_init(&r->pool, sh, "llama-test", SEED_LOCAL);
    bt_kvx_params_t kp = tl_kvx_params(&r->pool, "ucx", "test");
    kp.ucx_tls = tls;
    kp.map_peers = map;
    kp.stream = stream;
    kp.peer_timeout_ms = timeout_ms;
    kp.lease_ms = timeout_ms;
    assert_int_equal(bt_kvx_create(&kp, &r->kvx), BT_OK);
    r->log.kvx = r->kvx;
    char *reply = tl_helper_cmd(
        &r->h, NULL, "init ucx %s peer llama-test %d %d %d %d %s %d %d %d %d cpu 0 %d", tls,
        sh->n_layers, sh->n_kv_heads, sh->head_dim, sh->block_size,
        sh->type == BT_TYPE_F16 ? "f16" : "f32", sh->n_blocks, SEED_PEER, timeout_ms, map, stream);
    assert_true(strncmp(reply, "ok ", 3) == 0);
    uint8_t addr[BT_KVX_ADDRESS_MAX];
    size_t len = tl_unhex(reply + 3, addr, sizeof addr);
    free(reply);
    assert_int_equal(bt_kvx_connect(r->kvx, addr, len, &r->peer), BT_OK);
    free(tl_helper_take(&r->h, &r->log, "ev up", 30000));
    while (tl_log_find(&r->log, BT_KVX_EV_PEER_UP, UINT64_MAX) < 0) {
        bt_kvx_wait(r->kvx, 5);
        tl_log_drain(&r->log);
    }
    assert_string_equal(bt_kvx_peer_name(r->peer), "peer");
    /* kvx's own TCP connection comes up just after the peer: wait for it, so that it is the
     * path under test from the first transfer on. */
    int64_t until = tl_now_ms() + 10000;
    while (strcmp(bt_kvx_peer_data_path(r->peer), rig_path(r)) != 0 && tl_now_ms() < until) {
        bt_kvx_wait(r->kvx, 5);
        tl_log_drain(&r->log);
    }
    assert_string_equal(bt_kvx_peer_data_path(r->peer), rig_path(r));
}

static void rig_down(rig_t *r)
{
    if (r->h.pid > 0) {
        char *bye = tl_helper_cmd(&r->h, &r->log, "exit");
        free(bye);
    }
    tl_helper_reap(&r->h);
    bt_kvx_destroy(r->kvx);
    tl_pool_fini(&r->pool);
}

/* Waits (progressing) for this process's event of type for req; returns its index. */
static int wait_local(rig_t *r, int type, uint64_t req, int timeout_ms)
{
    int64_t until = tl_now_ms() + timeout_ms;
    for (;;) {
        int k = tl_log_find(&r->log, type, req);
        if (k >= 0)
            return k;
        if (tl_now_ms() > until)
            fail_msg("no event %d for request %llu in %d ms", type, (unsigned long long)req,
                     timeout_ms);
        bt_kvx_wait(r->kvx, 5);
        tl_log_drain(&r->log);
        tl_helper_read(&r->h, 0);
    }
}

/* The peer process sends its blocks src; we receive into dst and check every byte, and that
 * the transfer took want data messages (-1: one for the whole cache or per released layer
 * over TCP, else one per run and layer). */
static void recv_blocks(rig_t *r, uint64_t req, int layerwise, int32_t n_tokens, const int32_t *src,
                        const int32_t *dst, int32_t nb, int64_t want)
{
    char list[8192];
    bt_kvx_pattern_fill(bt_kv_pool_base(r->pool.pool), &r->pool.layout, SEED_LOCAL + req);
    bt_kvx_recv_params_t rp = {.req_id = req, .blocks = dst, .n_blocks = nb, .n_tokens = n_tokens};
    bt_kvx_recv_t *rv;
    bt_kvx_stats_t st0, st1;
    bt_kvx_get_stats(r->kvx, &st0);
    assert_int_equal(bt_kvx_recv_post(r->peer, &rp, &rv), BT_OK);
    tl_list(list, sizeof list, src, nb);
    tl_helper_ok(&r->h, &r->log, "send %llu %s %d %s", (unsigned long long)req,
                 layerwise ? "layer" : "whole", n_tokens, list);
    for (int32_t l = 1; layerwise && l <= shape.n_layers; l++)
        tl_helper_ok(&r->h, &r->log, "layers %llu %d", (unsigned long long)req, l);
    tl_helper_ok(&r->h, &r->log, "finish %llu %d c0ffee", (unsigned long long)req, 500 + (int)req);
    int k = wait_local(r, BT_KVX_EV_RECV_DONE, req, 30000);
    bt_kvx_event_t *ev = &r->log.ev[k];
    assert_int_equal(ev->status, BT_OK);
    assert_int_equal(ev->first_token, 500 + (int)req);
    assert_int_equal(ev->meta_len, 3);
    assert_memory_equal(ev->meta, "\xc0\xff\xee", 3);
    assert_int_equal(bt_kvx_pattern_check(bt_kv_pool_base(r->pool.pool), &r->pool.layout, SEED_PEER,
                                          src, dst, nb),
                     -1);
    /* Over TCP whole layers travel packed: one message for the whole cache, or one per layer
     * as each is released; otherwise one message (mapped: one copy) per run and layer. */
    int64_t runs = tl_expected_msgs(src, dst, nb, 1);
    if (want < 0)
        want = strncmp(r->tls, "tcp", 3) == 0 ? (layerwise ? shape.n_layers : 1)
                                              : runs * shape.n_layers;
    bt_kvx_get_stats(r->kvx, &st1);
    assert_int_equal(st1.n_data_msgs_recv - st0.n_data_msgs_recv, want);
    bt_kvx_recv_release(rv);
    free(tl_helper_take(&r->h, &r->log, "ev send-done BT_OK", 30000));
}

/* The same with a random request: fragmented blocks on both sides. */
static void recv_from_peer(rig_t *r, uint64_t *rng, uint64_t req, int layerwise)
{
    int32_t bs = shape.block_size;
    int32_t n_tokens = 1 + (int32_t)(tl_rand(rng) % (uint64_t)(bs * 60));
    int32_t nb = (n_tokens + bs - 1) / bs;
    int32_t src[N_BLOCKS], dst[N_BLOCKS];
    /* Source blocks from the top of the peer's pool: its allocator hands out the bottom ones
     * to the transfers in the other direction, which overwrite their pattern. */
    tl_random_blocks(rng, N_BLOCKS - 100, 1 + (int32_t)(tl_rand(rng) % 12), src, nb);
    for (int32_t i = 0; i < nb; i++)
        src[i] += 100;
    tl_random_blocks(rng, N_BLOCKS, 1 + (int32_t)(tl_rand(rng) % 12), dst, nb);
    recv_blocks(r, req, layerwise, n_tokens, src, dst, nb, -1);
}

/* We send our blocks src; the peer process receives into blocks from its allocator and checks
 * them. */
static void send_blocks(rig_t *r, uint64_t req, int layerwise, int32_t n_tokens, const int32_t *src,
                        int32_t nb)
{
    char slist[8192];
    bt_kvx_pattern_fill(bt_kv_pool_base(r->pool.pool), &r->pool.layout, SEED_LOCAL);
    char *reply =
        tl_helper_cmd(&r->h, &r->log, "recv %llu %d auto", (unsigned long long)req, n_tokens);
    assert_true(strncmp(reply, "ok ", 3) == 0);
    char *dlist = strchr(reply + 3, ' ') + 1;
    bt_kvx_send_params_t sp = {
        .req_id = req, .blocks = src, .n_blocks = nb, .n_tokens = n_tokens, .layerwise = layerwise};
    bt_kvx_send_t *s;
    assert_int_equal(bt_kvx_send_start(r->peer, &sp, &s), BT_OK);
    for (int32_t l = 1; layerwise && l <= shape.n_layers; l++) {
        bt_kvx_send_layers_ready(s, l);
        bt_kvx_wait(r->kvx, 1);
    }
    assert_int_equal(bt_kvx_send_finish(s, 1, NULL, 0), BT_OK);
    int k = wait_local(r, BT_KVX_EV_SEND_DONE, req, 30000);
    assert_int_equal(r->log.ev[k].status, BT_OK);
    bt_kvx_send_release(s);
    free(tl_helper_take(&r->h, &r->log, "ev recv-done BT_OK", 30000));
    tl_list(slist, sizeof slist, src, nb);
    tl_helper_ok(&r->h, &r->log, "check %d %s %s", SEED_LOCAL, slist, dlist);
    tl_helper_ok(&r->h, &r->log, "drop %llu", (unsigned long long)req);
    free(reply);
}

static void send_to_peer(rig_t *r, uint64_t *rng, uint64_t req, int layerwise)
{
    int32_t bs = shape.block_size;
    int32_t n_tokens = 1 + (int32_t)(tl_rand(rng) % (uint64_t)(bs * 60));
    int32_t nb = (n_tokens + bs - 1) / bs;
    int32_t src[N_BLOCKS];
    tl_random_blocks(rng, N_BLOCKS, 1 + (int32_t)(tl_rand(rng) % 12), src, nb);
    send_blocks(r, req, layerwise, n_tokens, src, nb);
}

/* Every block of a request apart from its neighbours on one side: 90 blocks of 6 layers are
 * 540 pieces in one gathered message, more than one system call takes (both directions, whole
 * and layer-wise). */
static void test_tcp_scattered_blocks_byte_exact(void **state)
{
    rig_t r;
    int32_t src[90], dst[90];
    for (int32_t i = 0; i < 90; i++) {
        src[i] = 100 + i; /* the peer's: contiguous */
        dst[i] = 2 * i;   /* ours: every other block */
    }
    rig_up(&r, "tcp", -1, &shape, 10000);
    for (int layerwise = 0; layerwise < 2; layerwise++) {
        recv_blocks(&r, 1 + (uint64_t)layerwise, layerwise, 90 * shape.block_size, src, dst, 90,
                    -1);
        send_blocks(&r, 100 + (uint64_t)layerwise, layerwise, 90 * shape.block_size, dst, 90);
    }
    rig_down(&r);
}

static void byte_exact(const char *tls, int map)
{
    rig_t r;
    uint64_t rng = 0xfeed ^ (uint64_t)strlen(tls) ^ (uint64_t)(map + 7);
    rig_up(&r, tls, map, &shape, 10000);
    for (uint64_t req = 1; req <= 6; req++) {
        recv_from_peer(&r, &rng, req, (int)(req % 2));
        send_to_peer(&r, &rng, 100 + req, (int)(req % 2));
    }
    char *st = tl_helper_cmd(&r.h, &r.log, "stats");
    assert_non_null(strstr(st, "sends=0 recvs=0 quarantined=0 stale=0"));
    assert_non_null(strstr(st, "free=192"));
    char path[64];
    snprintf(path, sizeof path, "path=%s", rig_path(&r));
    assert_non_null(strstr(st, path)); /* the peer's side took the same path */
    free(st);
    rig_down(&r);
}

static void test_shm_mapped_byte_exact(void **state)
{
    byte_exact("sm", 0);
}

static void test_shm_cma_byte_exact(void **state)
{
    byte_exact("sm", -1);
}

static void test_tcp_byte_exact(void **state)
{
    byte_exact("tcp", -1);
}

static void test_tcp_ucx_byte_exact(void **state)
{
    byte_exact("tcp-ucx", -1);
}

/* Big layer-wise transfer from the peer, paced; cancel once part of it is here; reuse the
 * same blocks under a new generation; then have the peer write the old generation again. */
/* Through UCX: the late writes are data messages. (Mapped receives copy only what their live
 * reservation names; the loopback tests cover their cancel and reuse.) */
static void cancel_reuse(const char *tls)
{
    rig_t r;
    rig_up(&r, tls, -1, &big_shape, 10000);
    int32_t src[48], src2[48], dst[48];
    char slist[1024], s2list[1024];
    for (int i = 0; i < 48; i++) {
        src[i] = i;
        src2[i] = 63 - i;
    }
    assert_int_equal(bt_kv_pool_alloc(r.pool.pool, 48, dst), BT_OK);
    tl_list(slist, sizeof slist, src, 48);
    tl_list(s2list, sizeof s2list, src2, 48);
    bt_kvx_recv_params_t rp = {.req_id = 7, .blocks = dst, .n_blocks = 48, .n_tokens = 48 * 16};
    bt_kvx_recv_t *rv;
    assert_int_equal(bt_kvx_recv_post(r.peer, &rp, &rv), BT_OK);
    uint32_t old_gen = bt_kvx_recv_gen(rv);
    tl_helper_ok(&r.h, &r.log, "send 7 layer %d %s", 48 * 16, slist);
    tl_helper_ok(&r.h, &r.log, "pace 7 40");
    bt_kvx_stats_t st;
    do {
        bt_kvx_wait(r.kvx, 5);
        tl_log_drain(&r.log);
        bt_kvx_get_stats(r.kvx, &st);
    } while (st.n_data_msgs_recv < 3);
    bt_kvx_recv_cancel(rv);
    int k = wait_local(&r, BT_KVX_EV_RECV_DONE, 7, 30000);
    assert_int_equal(r.log.ev[k].status, BT_ERR_CANCELLED);
    bt_kvx_get_stats(r.kvx, &st);
    assert_true(st.n_data_msgs_recv < big_shape.n_layers);
    free(tl_helper_take(&r.h, &r.log, "ev send-done BT_ERR_CANCELLED", 30000));
    bt_kvx_recv_release(rv);

    /* Same blocks, same request, new generation; the peer sends other blocks. */
    r.log.n = 0;
    assert_int_equal(bt_kvx_recv_post(r.peer, &rp, &rv), BT_OK);
    assert_int_not_equal(bt_kvx_recv_gen(rv), old_gen);
    tl_helper_ok(&r.h, &r.log, "inject %u 5 0 0 48", old_gen); /* late, before the new data */
    tl_helper_ok(&r.h, &r.log, "send 7 whole %d %s", 48 * 16, s2list);
    tl_helper_ok(&r.h, &r.log, "finish 7 9 -");
    k = wait_local(&r, BT_KVX_EV_RECV_DONE, 7, 30000);
    assert_int_equal(r.log.ev[k].status, BT_OK);
    for (int32_t l = 0; l < big_shape.n_layers; l += 3)
        tl_helper_ok(&r.h, &r.log, "inject %u %d 0 0 48", old_gen, l); /* and after it */
    int64_t until = tl_now_ms() + 20000;
    do {
        bt_kvx_wait(r.kvx, 5);
        bt_kvx_get_stats(r.kvx, &st);
    } while (st.n_stale_dropped < 7 && tl_now_ms() < until);
    assert_true(st.n_stale_dropped >= 7);
    assert_int_equal(bt_kvx_pattern_check(bt_kv_pool_base(r.pool.pool), &r.pool.layout, SEED_PEER,
                                          src2, dst, 48),
                     -1);
    bt_kvx_recv_release(rv);
    for (int i = 0; i < 48; i++)
        bt_kv_pool_unref(r.pool.pool, dst[i]);
    rig_down(&r);
}

static void test_shm_cancel_midway_then_reuse(void **state)
{
    cancel_reuse("sm");
}

static void test_tcp_cancel_midway_then_reuse(void **state)
{
    cancel_reuse("tcp");
}

static void test_tcp_ucx_cancel_midway_then_reuse(void **state)
{
    cancel_reuse("tcp-ucx");
}

/* kill -9 of the peer process in the middle of a transfer, with it as sender or receiver:
 * an explicit error here within a few seconds, no hang, every block back. */
static void kill_midway(const char *tls, int map, int peer_sends)
{
    rig_t r;
    rig_up(&r, tls, map, &big_shape, 2000);
    int32_t ids[48];
    char list[1024];
    assert_int_equal(bt_kv_pool_alloc(r.pool.pool, 48, ids), BT_OK);
    tl_list(list, sizeof list, ids, 48);
    bt_kvx_recv_t *rv = NULL;
    bt_kvx_send_t *s = NULL;
    bt_kvx_stats_t st;
    if (peer_sends) {
        bt_kvx_recv_params_t rp = {.req_id = 1, .blocks = ids, .n_blocks = 48, .n_tokens = 768};
        assert_int_equal(bt_kvx_recv_post(r.peer, &rp, &rv), BT_OK);
        tl_helper_ok(&r.h, &r.log, "send 1 layer 768 %s", list);
        tl_helper_ok(&r.h, &r.log, "pace 1 50");
    } else {
        char *reply = tl_helper_cmd(&r.h, &r.log, "recv 1 768 auto");
        free(reply);
        bt_kvx_send_params_t sp = {
            .req_id = 1, .blocks = ids, .n_blocks = 48, .n_tokens = 768, .layerwise = 1};
        assert_int_equal(bt_kvx_send_start(r.peer, &sp, &s), BT_OK);
        bt_kvx_send_layers_ready(s, 4);
    } /* Until the receiving side has some of it (the peer's count, when it receives). */
    int64_t until = tl_now_ms() + 20000;
    long long got = 0;
    while (got < 2) {
        assert_true(tl_now_ms() < until);
        bt_kvx_wait(r.kvx, 5);
        tl_log_drain(&r.log);
        bt_kvx_get_stats(r.kvx, &st);
        got = st.n_data_msgs_recv;
        if (!peer_sends) {
            char *stats = tl_helper_cmd(&r.h, &r.log, "stats");
            const char *m = strstr(stats, "msgs_recv=");
            got = m ? atoll(m + 10) : 0;
            free(stats);
        }
    }
    kill(r.h.pid, SIGKILL);
    waitpid(r.h.pid, NULL, 0);
    r.h.pid = 0;
    int64_t t0 = tl_now_ms();
    if (s)
        bt_kvx_send_layers_ready(s, 16); /* the rest goes nowhere */
    int k = wait_local(&r, peer_sends ? BT_KVX_EV_RECV_DONE : BT_KVX_EV_SEND_DONE, 1, 10000);
    int64_t took = tl_now_ms() - t0;
    assert_int_equal(r.log.ev[k].status, BT_ERR_PEER);
    assert_true(took < 5000);
    k = wait_local(&r, BT_KVX_EV_PEER_DOWN, UINT64_MAX, 10000);
    assert_int_equal(r.log.ev[k].status, BT_ERR_PEER);
    bt_kvx_recv_release(rv);
    bt_kvx_send_release(s);
    bt_kvx_peer_release(r.peer);
    for (int i = 0; i < 48; i++)
        bt_kv_pool_unref(r.pool.pool, ids[i]);
    assert_int_equal(bt_kv_pool_n_free(r.pool.pool), big_shape.n_blocks);
    bt_kvx_get_stats(r.kvx, &st);
    assert_int_equal(st.n_sends + st.n_recvs + st.n_peers_up, 0);
    rig_down(&r);
}

static void test_shm_kill_sender_midway(void **state)
{
    kill_midway("sm", 0, 1);
    kill_midway("sm", -1, 1);
}

static void test_shm_kill_receiver_midway(void **state)
{
    kill_midway("sm", 0, 0);
    kill_midway("sm", -1, 0);
}

static void test_tcp_kill_sender_midway(void **state)
{
    kill_midway("tcp", -1, 1);
    kill_midway("tcp-ucx", -1, 1);
}

static void test_tcp_kill_receiver_midway(void **state)
{
    kill_midway("tcp", -1, 0);
    kill_midway("tcp-ucx", -1, 0);
}

static void test_layout_mismatch_refused(void **state)
{
    tl_pool_t pool;
    bt_kvx_t *kvx;
    tl_pool_init(&pool, &shape, "llama-test", 1);
    bt_kvx_params_t kp = tl_kvx_params(&pool, "ucx", "test");
    kp.ucx_tls = "sm";
    assert_int_equal(bt_kvx_create(&kp, &kvx), BT_OK);
    tl_helper_t h;
    tl_helper_spawn(&h);
    static const char *const others[] = {
        "llama-test 6 2 64 8 f16",  /* head dim */
        "llama-test 6 4 32 8 f16",  /* KV heads */
        "llama-test 7 2 32 8 f16",  /* layers */
        "llama-test 6 2 32 16 f16", /* block size */
        "llama-test 6 2 32 8 f32",  /* dtype */
        "other-model 6 2 32 8 f16",
    };
    for (size_t i = 0; i < sizeof others / sizeof others[0]; i++) {
        char *reply = tl_helper_cmd(&h, NULL, "init ucx sm peer%zu %s 16 1 5000", i, others[i]);
        assert_true(strncmp(reply, "ok ", 3) == 0);
        uint8_t addr[BT_KVX_ADDRESS_MAX];
        size_t len = tl_unhex(reply + 3, addr, sizeof addr);
        free(reply);
        bt_kvx_peer_t *peer = NULL;
        assert_int_equal(bt_kvx_connect(kvx, addr, len, &peer), BT_ERR_MISMATCH);
        assert_null(peer);
        tl_helper_reap(&h);
        tl_helper_spawn(&h);
    }
    tl_helper_reap(&h);
    bt_kvx_destroy(kvx);
    tl_pool_fini(&pool);
}

/* A pool said to be in GPU memory with a UCX that cannot move CUDA memory (Debian's has no
 * CUDA transports) is refused at create, by name, instead of faulting on the first transfer. */
static void test_device_pool_needs_cuda_ucx(void **state)
{
    tl_pool_t pool;
    bt_kvx_t *kvx = NULL;
    tl_pool_init(&pool, &shape, "llama-test", 1);
    bt_kvx_params_t kp = tl_kvx_params(&pool, "ucx", "test");
    kp.map_peers = -1;
    kp.device_memory = 1;
    bt_log_level_t old = bt_log_get_level();
    bt_log_set_level(BT_LOG_OFF);
    int st = bt_kvx_create(&kp, &kvx);
    bt_log_set_level(old);
    if (st == BT_OK) { /* a UCX with CUDA support: nothing to refuse here */
        bt_kvx_destroy(kvx);
        tl_pool_fini(&pool);
        skip();
    }
    assert_int_equal(st, BT_ERR_UNSUPPORTED);
    assert_null(kvx);
    tl_pool_fini(&pool);
}

static void test_stale_generation_rejected(void **state)
{
    rig_t r;
    uint64_t rng = 77;
    rig_up(&r, "tcp", -1, &shape, 10000);
    recv_from_peer(&r, &rng, 1, 0);
    uint32_t gen = r.log.ev[tl_log_find(&r.log, BT_KVX_EV_RECV_DONE, 1)].gen;
    bt_kvx_pattern_fill(bt_kv_pool_base(r.pool.pool), &r.pool.layout, SEED_LOCAL);
    tl_helper_ok(&r.h, &r.log, "inject %u 0 0 0 16", gen);
    tl_helper_ok(&r.h, &r.log, "inject %u 1 0 0 100", gen + 12345); /* more than a drop buffer */
    bt_kvx_stats_t st;
    int64_t until = tl_now_ms() + 10000;
    do {
        bt_kvx_wait(r.kvx, 5);
        bt_kvx_get_stats(r.kvx, &st);
    } while (st.n_stale_dropped < 2 && tl_now_ms() < until);
    assert_int_equal(st.n_stale_dropped, 2);
    int32_t all[N_BLOCKS];
    for (int i = 0; i < N_BLOCKS; i++)
        all[i] = i;
    assert_int_equal(bt_kvx_pattern_check(bt_kv_pool_base(r.pool.pool), &r.pool.layout, SEED_LOCAL,
                                          all, all, N_BLOCKS),
                     -1);
    recv_from_peer(&r, &rng, 2, 0); /* what follows the dropped bytes still lands exact */
    rig_down(&r);
}

int main(void)
{
    bt_log_set_level(BT_LOG_ERROR);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_shm_mapped_byte_exact),
        cmocka_unit_test(test_shm_cma_byte_exact),
        cmocka_unit_test(test_tcp_byte_exact),
        cmocka_unit_test(test_tcp_ucx_byte_exact),
        cmocka_unit_test(test_tcp_scattered_blocks_byte_exact),
        cmocka_unit_test(test_shm_cancel_midway_then_reuse),
        cmocka_unit_test(test_tcp_cancel_midway_then_reuse),
        cmocka_unit_test(test_tcp_ucx_cancel_midway_then_reuse),
        cmocka_unit_test(test_shm_kill_sender_midway),
        cmocka_unit_test(test_shm_kill_receiver_midway),
        cmocka_unit_test(test_tcp_kill_sender_midway),
        cmocka_unit_test(test_tcp_kill_receiver_midway),
        cmocka_unit_test(test_layout_mismatch_refused),
        cmocka_unit_test(test_device_pool_needs_cuda_ucx),
        cmocka_unit_test(test_stale_generation_rejected),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
