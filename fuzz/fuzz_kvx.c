/* SPDX-License-Identifier: MIT */
/*
 * fuzz_kvx.c - what a peer's kvx sends to ours: the control messages of kvx_peer.c's
 * core_on_ctrl and the tagged data messages of core_on_data.
 *
 * Each input builds two contexts on the loopback backend, a (prefill, sends) and b (decode,
 * receives), connected as tests/kvx/test_kvx_loop.c connects them, and plays a buggy or
 * malicious peer on top of the real one: messages go out through the sending context's own
 * backend endpoint, under the tag the other side knows it by, so they arrive through the real
 * receive path. Both contexts are driven as a daemon drives them: progress, events drained,
 * receives posted for offers, peers released when they go down.
 *
 * Input: two option bytes, then records. The first option byte: bit 0 mapped receives
 * (map_peers 0, else -1), 1 pack, 2 a legitimate transfer of request 1 first, 3 in pull order,
 * 4 its send layer-wise, 5 its send finished, 6 the second pool shape, 7 offers answered with
 * receives; the second: bit 0 generations start just below the wrap, bits 1-3 how it ends
 * (tear_down). A record starts with op: op & 3 is the kind (0 a control message built from
 * fields, 1 raw control bytes, 2 a data message, 3 a call of the API); for messages, op & 4
 * sends from b to a instead of a to b, op >> 3 & 3 picks a control tag's peer id (the real
 * one, 0: the hello path, or the next two) and op & 0x80 cuts the message short; op & 0x40
 * skips the progress after the record. Generations in fields are relative to a fixed start,
 * so an input names the same ones on every run.
 *
 * Properties, whatever the peer sends: no crash, sanitizer report, leak or hang; b's blocks
 * outside every reservation it posted keep their bytes, and blocks a receive gave back (its
 * final event) are not written again; a's pool is never written; every send and receive ends
 * with exactly one final event once the daemon cancels it, never with BT_ERR_NOMEM (no
 * allocation fails here and the peer never reports it, so that status would hide the real
 * reason), and nothing is left after release.
 */
#include <string.h>

#include "common/kvcache.h"
#include "common/status.h"
#include "fuzz.h"
#include "kvx/kvx_impl.h"
#include "kvx/kvx_pattern.h"

#define SEED_A 11 /* a's pool */
#define SEED_B 22 /* b's pool */
#define SEED_C 33 /* b's blocks that a receive gave back */
#define MAX_XFERS 16
#define MAX_PEERS 6
#define MAX_XFER_BLOCKS 8
#define MAX_POOL_BLOCKS 32
#define MAX_RECORDS 256
#define DATA_MAX (1u << 16)
#define ROUNDS_MAX 64       /* progress rounds after a record, at most */
#define TEARDOWN_ROUNDS 256 /* for the final events of cancelled transfers */

typedef struct {
    bt_backend_t *be;
    bt_kv_pool_t *pool;
    bt_kvx_layout_t layout;
} pool_t;

static const bt_kv_pool_params_t g_shapes[2] = {
    {.n_layers = 2, .n_kv_heads = 1, .head_dim = 4, .block_size = 2, .n_blocks = 16},
    {.n_layers = 3, .n_kv_heads = 2, .head_dim = 4, .block_size = 4, .n_blocks = 24},
};
static pool_t g_pools[2][2];     /* [shape][a, b] */
static uint8_t g_data[DATA_MAX]; /* the bytes injected data messages and notices carry */

typedef struct {
    bt_kvx_recv_t *h;
    uint64_t req;
    int32_t blocks[MAX_XFER_BLOCKS];
    int32_t n_blocks;
    int finals;   /* final events seen */
    int released; /* handle given back */
    int early;    /* given back before its final event: its blocks are never safe again */
} recv_slot_t;

typedef struct {
    bt_kvx_send_t *h;
    uint64_t req;
    int finals;
    int released;
} send_slot_t;

typedef struct {
    pool_t *pa, *pb;
    int32_t bs;     /* tokens per block */
    int32_t n_pool; /* blocks in each pool */
    bt_kvx_t *a, *b;
    void *ep_ab, *ep_ba;   /* the pair's loopback endpoints: live until their context goes */
    uint32_t id_ab, id_ba; /* the tag ids a and b have on the other side */
    bt_kvx_peer_t *peers_a[MAX_PEERS], *peers_b[MAX_PEERS]; /* handles held; [0]: the pair */
    recv_slot_t recv[MAX_XFERS];
    int n_recv;
    send_slot_t send[MAX_XFERS];
    int n_send;
    int live[MAX_POOL_BLOCKS];     /* b's block: reservations that may still write it */
    int returned[MAX_POOL_BLOCKS]; /* b's block: given back, refilled with SEED_C */
    uint32_t gen_base;
    int peer_statuses; /* raw bytes may have reported any status, BT_ERR_NOMEM too */
    int accept_offers;
    int32_t cursor; /* next block b hands to an offer */
} state_t;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_quiet_log();
    bt_backend_params_t bp = {.n_threads = 1, .max_rows = 1, .max_cols = 1};
    for (int s = 0; s < 2; s++) {
        FUZZ_CHECK(g_shapes[s].n_blocks <= MAX_POOL_BLOCKS, "shape %d", s);
        for (int side = 0; side < 2; side++) {
            pool_t *p = &g_pools[s][side];
            FUZZ_CHECK(bt_backend_create("cpu", &bp, &p->be) == BT_OK, "cpu backend");
            FUZZ_CHECK(bt_kv_pool_create(p->be, &g_shapes[s], &p->pool) == BT_OK, "pool");
            bt_kvx_layout_from_pool(p->pool, "m", &p->layout);
        }
    }
    memset(g_data, 0xa5, sizeof g_data);
    return 0;
}

/* ---- reading fields ---- */

static uint64_t pick_req(fuzz_in_t *in)
{
    uint8_t r = fuzz_u8(in);
    return r != 0xff ? r % 8 : fuzz_u64(in);
}

/* 0, a generation near the start b's counter was given (the n-th receive posted has start +
 * n), or any. */
static uint32_t pick_gen(const state_t *st, fuzz_in_t *in)
{
    uint8_t g = fuzz_u8(in);
    if (g == 0)
        return 0;
    return g == 0xff ? fuzz_u32(in) : st->gen_base + g;
}

/* A small signed number, or any. */
static int32_t pick_i32(fuzz_in_t *in)
{
    uint8_t v = fuzz_u8(in);
    return v == 0x80 ? (int32_t)fuzz_u32(in) : (int32_t)(int8_t)v;
}

/* A status a peer reports, which may end our transfer with it; never BT_ERR_NOMEM, which the
 * final events must not show here (on_final). */
static int32_t pick_status(fuzz_in_t *in)
{
    int32_t v = pick_i32(in);
    return v == BT_ERR_NOMEM ? BT_ERR_PEER : v;
}

/* A small non-negative number, or, near the top, one near the field's largest value. */
static int32_t pick_field(fuzz_in_t *in, int32_t small, int32_t max)
{
    uint8_t v = fuzz_u8(in);
    return v < 0xf0 ? v % small : max - (v - 0xf0);
}

/* ---- the daemon's side: events and bookkeeping ---- */

/* Reads every byte an event hands over, so that the sanitizers see each one. */
static void touch(const void *p, size_t n)
{
    volatile uint8_t sink = 0;
    for (size_t i = 0; i < n; i++)
        sink ^= ((const uint8_t *)p)[i];
    (void)sink;
}

static void blocks_reserve(state_t *st, const int32_t *blocks, int32_t n)
{
    for (int32_t i = 0; i < n; i++)
        st->live[blocks[i]]++;
}

/* A receive's final event: its blocks are the daemon's again, which reuses them. */
static void blocks_give_back(state_t *st, const recv_slot_t *r)
{
    for (int32_t i = 0; i < r->n_blocks; i++) {
        int32_t blk = r->blocks[i];
        if (--st->live[blk] == 0) {
            bt_kvx_pattern_fill_blocks(bt_kv_pool_base(st->pb->pool), &st->pb->layout, SEED_C, &blk,
                                       1);
            st->returned[blk] = 1;
        }
    }
}

/* The slot holding p, or with p NULL a free one; -1 if none. */
static int peer_slot(bt_kvx_peer_t **peers, const bt_kvx_peer_t *p)
{
    for (int i = 0; i < MAX_PEERS; i++)
        if (peers[i] == p)
            return i;
    return -1;
}

static recv_slot_t *post_recv(state_t *st, bt_kvx_peer_t *peer, uint64_t req, const int32_t *blocks,
                              int32_t n_blocks, int32_t n_tokens)
{
    if (!peer || st->n_recv == MAX_XFERS || n_blocks < 1 || n_blocks > MAX_XFER_BLOCKS)
        return NULL;
    recv_slot_t *r = &st->recv[st->n_recv];
    bt_kvx_recv_params_t rp = {
        .req_id = req, .blocks = blocks, .n_blocks = n_blocks, .n_tokens = n_tokens, .user = r};
    int s = bt_kvx_recv_post(peer, &rp, &r->h);
    int valid = (n_tokens + st->bs - 1) / st->bs == n_blocks && n_tokens > 0;
    for (int32_t i = 0; i < n_blocks; i++)
        valid &= blocks[i] >= 0 && blocks[i] < st->n_pool;
    if (s != BT_OK) {
        FUZZ_CHECK(s != BT_ERR_INVAL || !valid || bt_kvx_peer_status(peer) != BT_OK,
                   "a valid receive refused");
        return NULL;
    }
    FUZZ_CHECK(valid, "a receive of %d blocks for %d tokens taken", n_blocks, n_tokens);
    r->req = req;
    r->n_blocks = n_blocks;
    memcpy(r->blocks, blocks, (size_t)n_blocks * sizeof *blocks);
    blocks_reserve(st, blocks, n_blocks);
    st->n_recv++;
    return r;
}

static send_slot_t *start_send(state_t *st, bt_kvx_peer_t *peer, uint64_t req,
                               const int32_t *blocks, int32_t n_blocks, int32_t n_tokens,
                               int layerwise)
{
    if (!peer || st->n_send == MAX_XFERS)
        return NULL;
    send_slot_t *s = &st->send[st->n_send];
    bt_kvx_send_params_t sp = {.req_id = req,
                               .blocks = blocks,
                               .n_blocks = n_blocks,
                               .n_tokens = n_tokens,
                               .layerwise = layerwise,
                               .user = s};
    if (bt_kvx_send_start(peer, &sp, &s->h) != BT_OK)
        return NULL;
    s->req = req;
    st->n_send++;
    return s;
}

/* b hears of KV it could take: with room (a few blocks), it posts the receive at once. */
static void on_offered(state_t *st, const bt_kvx_event_t *ev)
{
    if (!st->accept_offers || !ev->peer || peer_slot(st->peers_b, ev->peer) < 0 ||
        ev->n_blocks < 1 || ev->n_blocks > MAX_XFER_BLOCKS)
        return;
    int32_t blocks[MAX_XFER_BLOCKS];
    for (int32_t i = 0; i < ev->n_blocks; i++)
        blocks[i] = (st->cursor + i) % st->n_pool;
    st->cursor = (st->cursor + ev->n_blocks) % st->n_pool;
    post_recv(st, ev->peer, ev->req_id, blocks, ev->n_blocks, ev->n_tokens);
}

static void on_final(state_t *st, int is_b, const bt_kvx_event_t *ev)
{
    int k = 0;
    FUZZ_CHECK(ev->status != BT_ERR_NOMEM || st->peer_statuses,
               "request %llu ended for want of memory", (unsigned long long)ev->req_id);
    if (ev->type == BT_KVX_EV_SEND_DONE) {
        while (k < st->n_send && ev->user != &st->send[k])
            k++;
        FUZZ_CHECK(!is_b && k < st->n_send, "a send of nobody's");
        send_slot_t *s = &st->send[k];
        FUZZ_CHECK(s->finals == 0, "a second final event for send %llu",
                   (unsigned long long)s->req);
        FUZZ_CHECK(ev->send == s->h || (!ev->send && s->released), "final event of another send");
        FUZZ_CHECK(ev->req_id == s->req, "request %llu", (unsigned long long)ev->req_id);
        s->finals++;
        return;
    }
    while (k < st->n_recv && ev->user != &st->recv[k])
        k++;
    FUZZ_CHECK(is_b && k < st->n_recv, "a receive of nobody's");
    recv_slot_t *r = &st->recv[k];
    FUZZ_CHECK(r->finals == 0, "a second final event for receive %llu", (unsigned long long)r->req);
    FUZZ_CHECK(ev->recv == r->h || (!ev->recv && r->released), "final event of another receive");
    FUZZ_CHECK(ev->req_id == r->req, "request %llu", (unsigned long long)ev->req_id);
    if (ev->status == BT_OK && ev->meta_len) {
        FUZZ_CHECK(ev->meta_len <= BT_KVX_META_MAX, "%zu bytes of metadata", ev->meta_len);
        touch(ev->meta, ev->meta_len);
    }
    r->finals++;
    if (!r->early)
        blocks_give_back(st, r);
}

static void on_event(state_t *st, int is_b, const bt_kvx_event_t *ev)
{
    bt_kvx_peer_t **peers = is_b ? st->peers_b : st->peers_a;
    switch (ev->type) {
    case BT_KVX_EV_PEER_UP:
        FUZZ_CHECK(ev->peer, "a peer up without its handle");
        if (peer_slot(peers, ev->peer) < 0) {
            int k = peer_slot(peers, NULL);
            if (k >= 0)
                peers[k] = ev->peer;
            else
                bt_kvx_peer_release(ev->peer); /* no room for another peer */
        }
        break;
    case BT_KVX_EV_PEER_DOWN: {
        int k = ev->peer ? peer_slot(peers, ev->peer) : -1;
        if (k >= 0) {
            bt_kvx_peer_release(peers[k]);
            peers[k] = NULL;
        }
        break;
    }
    case BT_KVX_EV_OFFERED: /* a peer may offer to a prefill daemon too, which ignores it */
        if (is_b)
            on_offered(st, ev);
        break;
    case BT_KVX_EV_RESERVED: break;
    case BT_KVX_EV_SEND_DONE:
    case BT_KVX_EV_RECV_DONE: on_final(st, is_b, ev); break;
    case BT_KVX_EV_MESSAGE: touch(ev->meta, ev->meta_len); break;
    default: FUZZ_CHECK(0, "event type %d", (int)ev->type);
    }
}

static void drain(state_t *st)
{
    bt_kvx_event_t ev;
    while (st->a && bt_kvx_next_event(st->a, &ev))
        on_event(st, 0, &ev);
    while (st->b && bt_kvx_next_event(st->b, &ev))
        on_event(st, 1, &ev);
}

/* Progress on both sides (those still alive) until neither has anything pending, for at most
 * max_rounds. */
static void pump(state_t *st, int max_rounds)
{
    for (int i = 0; i < max_rounds; i++) {
        if (st->a)
            bt_kvx_progress(st->a);
        if (st->b)
            bt_kvx_progress(st->b);
        drain(st);
        if ((!st->a || bt_kvx_arm(st->a) == BT_OK) && (!st->b || bt_kvx_arm(st->b) == BT_OK))
            return;
    }
}

/* ---- the peer's side: what goes on the wire ---- */

static void inject_ctrl(state_t *st, int to_b, uint32_t id, const kvx_buf_t *m)
{
    bt_kvx_t *from = to_b ? st->a : st->b;
    /* An empty message is one too (a peer's transport delivers it), but with bytes somewhere. */
    if (!m->err)
        from->ops->send_ctrl(from->be, to_b ? st->ep_ab : st->ep_ba, kvx_tag_ctrl(id),
                             m->data ? m->data : g_data, m->len);
}

static void inject_data(state_t *st, int to_b, uint64_t tag, size_t len)
{
    bt_kvx_t *from = to_b ? st->a : st->b;
    kvx_op_t *op = kvx_op_get(from); /* neither send nor receive: its end just frees it */
    if (!op)
        return;
    int s = from->ops->send_data(from->be, to_b ? st->ep_ab : st->ep_ba, tag, g_data, len, op);
    if (s != BT_AGAIN)
        kvx_op_put(from, op);
}

/* n block ids (small, possibly negative or past the pool), of which at most cap are written:
 * a count that promises more than follows. */
static void put_ids(kvx_buf_t *m, fuzz_in_t *in, int32_t n, int32_t cap)
{
    for (int32_t i = 0; i < n && i < cap; i++)
        kvx_buf_i32(m, (int32_t)(int8_t)fuzz_u8(in));
}

/* HELLO: the sender's own address blob with a few bytes flipped, under any initiator id. */
static void put_hello(state_t *st, int to_b, kvx_buf_t *m, fuzz_in_t *in)
{
    uint8_t addr[BT_KVX_ADDRESS_MAX];
    size_t len = 0;
    if (bt_kvx_address(to_b ? st->a : st->b, addr, sizeof addr, &len) != BT_OK || !len)
        return;
    kvx_buf_u32(m, fuzz_u8(in));
    int n_flips = fuzz_u8(in) % 4;
    for (int i = 0; i < n_flips; i++) {
        size_t off = fuzz_u8(in) % len;
        addr[off] ^= fuzz_u8(in);
    }
    kvx_buf_bytes(m, addr, len);
    uint32_t ext = fuzz_u8(in) % 8;
    kvx_buf_u32(m, ext == 7 ? fuzz_u32(in) : ext);
    kvx_buf_bytes(m, g_data, ext == 7 ? 0 : ext);
}

/* The transfer a message is about: its request and generation. */
static void put_ref(const state_t *st, kvx_buf_t *m, fuzz_in_t *in)
{
    kvx_buf_u64(m, pick_req(in));
    kvx_buf_u32(m, pick_gen(st, in));
}

static void put_fields(state_t *st, int to_b, int type, kvx_buf_t *m, fuzz_in_t *in)
{
    switch (type) {
    case KVX_MSG_HELLO: put_hello(st, to_b, m, in); break;
    case KVX_MSG_HELLO_ACK: {
        kvx_buf_i32(m, pick_status(in));
        kvx_buf_u32(m, fuzz_u8(in));
        uint32_t n = fuzz_u8(in);
        kvx_buf_u32(m, n);
        kvx_buf_bytes(m, g_data, n % 200);
        break;
    }
    case KVX_MSG_RESERVE: {
        put_ref(st, m, in);
        kvx_buf_u8(m, fuzz_u8(in) % 3);
        kvx_buf_i32(m, pick_i32(in));
        int32_t n = pick_i32(in);
        kvx_buf_i32(m, n);
        put_ids(m, in, n, 64);
        break;
    }
    case KVX_MSG_OFFER:
        kvx_buf_u64(m, pick_req(in));
        kvx_buf_i32(m, pick_i32(in));
        kvx_buf_i32(m, pick_i32(in));
        break;
    case KVX_MSG_FINISH: {
        put_ref(st, m, in);
        kvx_buf_i32(m, pick_i32(in));
        kvx_buf_i32(m, pick_i32(in));
        uint8_t v = fuzz_u8(in);
        uint32_t meta = v == 0xff ? fuzz_u32(in) : v == 0xfe ? BT_KVX_META_MAX + 1u : v;
        kvx_buf_u32(m, meta);
        kvx_buf_bytes(m, g_data, meta < 2048 ? meta : 2048);
        break;
    }
    case KVX_MSG_CANCEL:
        kvx_buf_u8(m, fuzz_u8(in) % 4);
        put_ref(st, m, in);
        kvx_buf_i32(m, pick_status(in));
        break;
    case KVX_MSG_RELEASE:
        put_ref(st, m, in);
        kvx_buf_i32(m, pick_status(in));
        break;
    case KVX_MSG_SOURCE: {
        put_ref(st, m, in);
        kvx_buf_i32(m, pick_i32(in));
        int32_t n = pick_i32(in);
        kvx_buf_i32(m, n);
        put_ids(m, in, n, 64);
        break;
    }
    case KVX_MSG_READY:
        put_ref(st, m, in);
        kvx_buf_i32(m, pick_i32(in));
        break;
    case KVX_MSG_CONFIRM: put_ref(st, m, in); break;
    case KVX_MSG_APP: kvx_buf_bytes(m, g_data, (size_t)fuzz_u8(in) * 16); break;
    default: break; /* PING, BYE, and a type nobody knows: nothing more */
    }
}

static void record_ctrl(state_t *st, int op, int raw, fuzz_in_t *in)
{
    int to_b = !(op & 4);
    uint32_t real = to_b ? st->id_ab : st->id_ba;
    static const uint32_t add[4] = {0, 0, 1, 2};
    uint32_t id = (op >> 3 & 3) == 1 ? 0 : real + add[op >> 3 & 3];
    size_t cut = op & 0x80 ? fuzz_u8(in) % 16 : 0;
    kvx_buf_t m;
    kvx_buf_init(&m);
    if (raw) {
        size_t n = fuzz_u8(in);
        n = n < in->n ? n : in->n;
        kvx_buf_bytes(&m, in->p, n);
        st->peer_statuses |= n && (in->p[0] == KVX_MSG_HELLO_ACK || in->p[0] == KVX_MSG_CANCEL ||
                                   in->p[0] == KVX_MSG_RELEASE);
        in->p += n;
        in->n -= n;
    } else {
        int type = fuzz_u8(in) % 14;
        kvx_buf_u8(&m, (uint8_t)type);
        put_fields(st, to_b, type, &m, in);
        if (type == KVX_MSG_HELLO)
            id = 0;
    }
    m.len -= cut < m.len ? cut : m.len;
    inject_ctrl(st, to_b, id, &m);
    kvx_buf_fini(&m);
}

static void record_data(state_t *st, int op, fuzz_in_t *in)
{
    int to_b = !(op & 4);
    uint8_t c = fuzz_u8(in);
    uint32_t gen = pick_gen(st, in);
    int32_t layer = pick_field(in, 4, 0x3ff);
    int32_t idx = pick_field(in, 16, 0xfffff);
    uint64_t tag;
    switch (c & 3) {
    case 0: tag = kvx_tag_data(gen, layer, idx); break;
    case 1: tag = kvx_tag_pack(gen, layer, idx); break;
    case 2: tag = fuzz_u64(in); break;
    default: /* a data tag under another class's bits */
        tag = (kvx_tag_data(gen, layer, idx) & ~KVX_TAG_CLASS_MASK) | (uint64_t)(c >> 2 & 1) << 62;
        break;
    }
    size_t bb = (size_t)st->pb->layout.block_bytes;
    uint8_t v = fuzz_u8(in);
    size_t len = v < 0x80 ? v * bb : (size_t)fuzz_u8(in) | (size_t)fuzz_u8(in) << 8;
    if (op & 0x80)
        len -= len ? 1 + fuzz_u8(in) % (len < 16 ? len : 16) : 0;
    inject_data(st, to_b, tag, len < DATA_MAX ? len : DATA_MAX);
}

/* ---- the daemon's calls ---- */

static void pick_blocks(const state_t *st, fuzz_in_t *in, int32_t *blocks, int32_t n)
{
    uint8_t mode = fuzz_u8(in);
    int32_t start = fuzz_u8(in) % st->n_pool;
    for (int32_t i = 0; i < n; i++)
        blocks[i] = mode & 1 ? fuzz_u8(in) % (st->n_pool + 2) : (start + i) % st->n_pool;
}

static void record_call(state_t *st, fuzz_in_t *in)
{
    uint8_t what = fuzz_u8(in), k = fuzz_u8(in);
    recv_slot_t *r = st->n_recv ? &st->recv[k % st->n_recv] : NULL;
    send_slot_t *s = st->n_send ? &st->send[k % st->n_send] : NULL;
    switch (what % 11) {
    case 0:
    case 1: {
        int32_t blocks[MAX_XFER_BLOCKS];
        int32_t n = 1 + fuzz_u8(in) % MAX_XFER_BLOCKS;
        int32_t n_tokens = n * st->bs - fuzz_u8(in) % (st->bs + 1);
        uint64_t req = pick_req(in);
        pick_blocks(st, in, blocks, n);
        if (what % 11 == 0)
            post_recv(st, st->peers_b[k % MAX_PEERS], req, blocks, n, n_tokens);
        else
            start_send(st, st->peers_a[k % MAX_PEERS], req, blocks, n, n_tokens, fuzz_u8(in) & 1);
        break;
    }
    case 2:
        if (s && !s->released)
            bt_kvx_send_layers_ready(s->h, pick_i32(in));
        break;
    case 3:
        if (s && !s->released)
            bt_kvx_send_finish(s->h, pick_i32(in), g_data, fuzz_u8(in) % 64);
        break;
    case 4:
        if (r && !r->released)
            bt_kvx_recv_cancel(r->h);
        break;
    case 5:
        if (s && !s->released)
            bt_kvx_send_cancel(s->h);
        break;
    case 6:
        if (r && !r->released) {
            r->early = r->finals == 0;
            r->released = 1;
            bt_kvx_recv_release(r->h);
        }
        break;
    case 7:
        if (s && !s->released) {
            s->released = 1;
            bt_kvx_send_release(s->h);
        }
        break;
    case 8: {
        bt_kvx_peer_t *p = (k & 1 ? st->peers_b : st->peers_a)[k / 2 % MAX_PEERS];
        if (p)
            bt_kvx_peer_close(p);
        break;
    }
    case 9: /* housekeeping now, as if its period had passed */
        st->a->next_tick_ms = 0;
        st->b->next_tick_ms = 0;
        break;
    default: { /* another connection, from either side */
        uint8_t addr[BT_KVX_ADDRESS_MAX];
        size_t len;
        bt_kvx_t *from = k & 1 ? st->b : st->a;
        bt_kvx_peer_t **peers = k & 1 ? st->peers_b : st->peers_a;
        int slot = peer_slot(peers, NULL);
        if (slot >= 0 && bt_kvx_address(k & 1 ? st->a : st->b, addr, sizeof addr, &len) == BT_OK)
            FUZZ_CHECK(bt_kvx_connect(from, addr, len, &peers[slot]) == BT_OK, "connect");
        break;
    }
    }
}

/* ---- one input ---- */

static void pair_up(state_t *st, int map, int pack)
{
    bt_kvx_params_t ka = {.backend = "loopback",
                          .name = "prefill-0",
                          .layout = st->pa->layout,
                          .base = bt_kv_pool_base(st->pa->pool),
                          .size_bytes = bt_kv_pool_size_bytes(st->pa->pool),
                          .map_peers = map,
                          .pack = pack};
    bt_kvx_params_t kb = ka;
    kb.name = "decode-0";
    kb.layout = st->pb->layout;
    kb.base = bt_kv_pool_base(st->pb->pool);
    kb.size_bytes = bt_kv_pool_size_bytes(st->pb->pool);
    FUZZ_CHECK(bt_kvx_create(&ka, &st->a) == BT_OK, "create a");
    FUZZ_CHECK(bt_kvx_create(&kb, &st->b) == BT_OK, "create b");
    st->b->next_gen = st->gen_base; /* any start will do; a fixed one names the same ones */
    uint8_t addr[BT_KVX_ADDRESS_MAX];
    size_t len;
    FUZZ_CHECK(bt_kvx_address(st->b, addr, sizeof addr, &len) == BT_OK, "address");
    FUZZ_CHECK(bt_kvx_connect(st->a, addr, len, &st->peers_a[0]) == BT_OK, "connect");
    pump(st, ROUNDS_MAX);
    bt_kvx_peer_t *ab = st->peers_a[0], *ba = st->peers_b[0];
    FUZZ_CHECK(ba && bt_kvx_peer_status(ab) == BT_OK, "the pair is not up");
    st->ep_ab = ab->ep;
    st->ep_ba = ba->ep;
    st->id_ab = ab->remote_id;
    st->id_ba = ba->remote_id;
}

/* Request 1, as the daemons would move it, up to where the input says. */
static void legit_transfer(state_t *st, int pull, int layerwise, int finish)
{
    static const int32_t src[3] = {1, 2, 5}, dst[3] = {4, 5, 9};
    int32_t n_tokens = 3 * st->bs - 1;
    if (!pull)
        post_recv(st, st->peers_b[0], 1, dst, 3, n_tokens);
    send_slot_t *s = start_send(st, st->peers_a[0], 1, src, 3, n_tokens, layerwise);
    pump(st, ROUNDS_MAX);
    if (pull && !st->accept_offers) {
        post_recv(st, st->peers_b[0], 1, dst, 3, n_tokens);
        pump(st, ROUNDS_MAX);
    }
    if (s && finish) {
        uint8_t meta[3] = {1, 2, 3};
        bt_kvx_send_finish(s->h, 42, meta, sizeof meta);
        pump(st, ROUNDS_MAX);
    }
}

static int all_final(const state_t *st)
{
    for (int i = 0; i < st->n_recv; i++)
        if (!st->recv[i].released && !st->recv[i].finals)
            return 0;
    for (int i = 0; i < st->n_send; i++)
        if (!st->send[i].released && !st->send[i].finals)
            return 0;
    return 1;
}

/* One side's process dies: its context goes without a word, and the other has to notice. */
static void kill_side(state_t *st, int b)
{
    bt_kvx_destroy(b ? st->b : st->a);
    if (b) {
        st->b = NULL;
        memset(st->peers_b, 0, sizeof st->peers_b);
        for (int i = 0; i < st->n_recv; i++) {
            st->recv[i].early |= !st->recv[i].finals && !st->recv[i].released;
            st->recv[i].released = 1;
        }
    } else {
        st->a = NULL;
        memset(st->peers_a, 0, sizeof st->peers_a);
        for (int i = 0; i < st->n_send; i++)
            st->send[i].released = 1;
    }
}

/* Gives back every handle still held, which must leave nothing behind. */
static void release_all(state_t *st)
{
    for (int i = 0; i < st->n_recv; i++)
        if (!st->recv[i].released)
            bt_kvx_recv_release(st->recv[i].h);
    for (int i = 0; i < st->n_send; i++)
        if (!st->send[i].released)
            bt_kvx_send_release(st->send[i].h);
    pump(st, ROUNDS_MAX);
    bt_kvx_t *sides[2] = {st->a, st->b};
    for (int i = 0; i < 2; i++) {
        bt_kvx_stats_t s;
        if (!sides[i])
            continue;
        bt_kvx_get_stats(sides[i], &s);
        FUZZ_CHECK(s.n_sends == 0 && s.n_recvs == 0, "%c keeps %d sends, %d receives", "ab"[i],
                   s.n_sends, s.n_recvs);
    }
    for (int i = 0; i < MAX_PEERS; i++) {
        bt_kvx_peer_release(st->peers_a[i]);
        bt_kvx_peer_release(st->peers_b[i]);
    }
}

/* As a daemon stops (the second option byte: bit 1 b goes first, bit 2 the first one dies
 * instead, bit 3 the contexts are destroyed with every handle still held): cancels what is
 * open, waits for the final events, gives everything back and destroys the contexts. */
static void tear_down(state_t *st, uint8_t how)
{
    int b_first = how >> 1 & 1;
    if (how & 4)
        kill_side(st, b_first);
    for (int i = 0; i < st->n_recv; i++)
        if (!st->recv[i].released && !st->recv[i].finals)
            bt_kvx_recv_cancel(st->recv[i].h);
    for (int i = 0; i < st->n_send; i++)
        if (!st->send[i].released && !st->send[i].finals)
            bt_kvx_send_cancel(st->send[i].h);
    for (int i = 0; i < TEARDOWN_ROUNDS && !all_final(st); i++)
        pump(st, 1);
    for (int i = 0; i < st->n_recv; i++)
        FUZZ_CHECK(st->recv[i].released || st->recv[i].finals == 1,
                   "receive %d (request %llu) has no final event after its cancel", i,
                   (unsigned long long)st->recv[i].req);
    for (int i = 0; i < st->n_send; i++)
        FUZZ_CHECK(st->send[i].released || st->send[i].finals == 1,
                   "send %d (request %llu) has no final event after its cancel", i,
                   (unsigned long long)st->send[i].req);
    if (!(how & 8))
        release_all(st);
    bt_kvx_destroy(b_first ? st->b : st->a);
    bt_kvx_destroy(b_first ? st->a : st->b);
}

static void check_pools(const state_t *st)
{
    const void *base_a = bt_kv_pool_base(st->pa->pool), *base_b = bt_kv_pool_base(st->pb->pool);
    for (int32_t blk = 0; blk < st->n_pool; blk++) {
        FUZZ_CHECK(bt_kvx_pattern_check(base_a, &st->pa->layout, SEED_A, &blk, &blk, 1) == -1,
                   "the sender's block %d was written", blk);
        if (st->live[blk])
            continue;
        uint64_t seed = st->returned[blk] ? SEED_C : SEED_B;
        FUZZ_CHECK(bt_kvx_pattern_check(base_b, &st->pb->layout, seed, &blk, &blk, 1) == -1,
                   "the receiver's block %d was written %s", blk,
                   st->returned[blk] ? "after its receive ended" : "outside every reservation");
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_in_t in = {data, size};
    uint8_t o = fuzz_u8(&in), o2 = fuzz_u8(&in);
    static state_t st;
    memset(&st, 0, sizeof st);
    int shape = o >> 6 & 1;
    st.pa = &g_pools[shape][0];
    st.pb = &g_pools[shape][1];
    st.bs = g_shapes[shape].block_size;
    st.n_pool = g_shapes[shape].n_blocks;
    st.gen_base = o2 & 1 ? 0xfffffff0u : 0x1000u;
    st.accept_offers = o >> 7 & 1;
    st.cursor = 8;
    bt_kvx_pattern_fill(bt_kv_pool_base(st.pa->pool), &st.pa->layout, SEED_A);
    bt_kvx_pattern_fill(bt_kv_pool_base(st.pb->pool), &st.pb->layout, SEED_B);
    pair_up(&st, o & 1 ? 0 : -1, o >> 1 & 1);
    if (o & 4)
        legit_transfer(&st, o >> 3 & 1, o >> 4 & 1, o >> 5 & 1);
    for (int n = 0; in.n && n < MAX_RECORDS; n++) {
        uint8_t op = fuzz_u8(&in);
        switch (op & 3) {
        case 0:
        case 1: record_ctrl(&st, op, op & 1, &in); break;
        case 2: record_data(&st, op, &in); break;
        default: record_call(&st, &in); break;
        }
        if (!(op & 0x40))
            pump(&st, ROUNDS_MAX);
    }
    pump(&st, ROUNDS_MAX);
    tear_down(&st, o2);
    check_pools(&st);
    return 0;
}
