/* SPDX-License-Identifier: MIT */
/*
 * test_rpc.c - framing over real ZeroMQ sockets (DEALER -> ROUTER over inproc and tcp):
 * round trips, and malformed, truncated, unknown-version and unknown-method messages that
 * must come back as statuses with the route kept, so the server can answer and go on. And
 * the header's own coder (rpc.c) against protobuf-c's on the same inputs: random headers
 * encode to the same bytes, and random, unusual and damaged byte strings decode to the same
 * fields or are refused by both.
 */
// ctest-labels: unit
#include "testutil.h"

#include <string.h>
#include <zmq.h>

#include "common/rpc.h"
#include "common/status.h"

typedef struct {
    void *ctx, *server, *client;
} pair_t;

static int setup(void **state)
{
    static pair_t p;
    p.ctx = zmq_ctx_new();
    p.server = zmq_socket(p.ctx, ZMQ_ROUTER);
    p.client = zmq_socket(p.ctx, ZMQ_DEALER);
    bt_rpc_socket_setup(p.server);
    bt_rpc_socket_setup(p.client);
    if (zmq_bind(p.server, "inproc://rpc-test") != 0 ||
        zmq_connect(p.client, "inproc://rpc-test") != 0)
        return -1;
    *state = &p;
    return 0;
}

static int teardown(void **state)
{
    pair_t *p = *state;
    zmq_close(p->client);
    zmq_close(p->server);
    zmq_ctx_term(p->ctx);
    return 0;
}

static void test_rpc_round_trip_with_reply(void **state)
{
    pair_t *p = *state;
    Baton__GenerateRequest req = BATON__GENERATE_REQUEST__INIT;
    int32_t ids[3] = {1, 2, 3};
    req.prompt_ids = ids;
    req.n_prompt_ids = 3;
    req.max_tokens = 17;
    bt_rpc_header_t h;
    bt_rpc_header_init(&h, BATON__METHOD__GENERATE, 42);
    assert_int_equal(bt_rpc_send(p->client, NULL, &h, &req.base, 0), BT_OK);

    bt_rpc_msg_t m;
    assert_int_equal(bt_rpc_recv(p->server, &m, 0), BT_OK);
    assert_int_equal(m.route.n, 1);
    assert_int_equal(m.hdr.method, BATON__METHOD__GENERATE);
    assert_int_equal(m.hdr.request_id, 42);
    ProtobufCMessage *body;
    assert_int_equal(bt_rpc_unpack(&m, &body), BT_OK);
    Baton__GenerateRequest *got = (Baton__GenerateRequest *)body;
    assert_int_equal(got->n_prompt_ids, 3);
    assert_int_equal(got->prompt_ids[2], 3);
    assert_int_equal(got->max_tokens, 17);
    protobuf_c_message_free_unpacked(body, NULL);

    assert_int_equal(bt_rpc_reply_error(p->server, &m, BT_ERR_RANGE, "too long: %d", 9), BT_OK);
    bt_rpc_msg_fini(&m);
    bt_rpc_msg_t r;
    assert_int_equal(bt_rpc_recv(p->client, &r, 0), BT_OK);
    assert_int_equal(r.route.n, 0);
    assert_int_equal(r.hdr.request_id, 42);
    assert_int_equal(r.hdr.status, BT_ERR_RANGE);
    assert_string_equal(r.hdr.error, "too long: 9");
    bt_rpc_msg_fini(&r);
}

static void send_raw(void *sock, const void *const *frames, const size_t *lens, int n)
{
    for (int i = 0; i < n; i++)
        assert_true(zmq_send(sock, frames[i], lens[i], i + 1 < n ? ZMQ_SNDMORE : 0) >= 0);
}

static void expect_status(pair_t *p, int status)
{
    bt_rpc_msg_t m;
    assert_int_equal(bt_rpc_recv(p->server, &m, 0), status);
    assert_int_equal(m.route.n, 1); /* the client's identity: a reply is possible */
    bt_rpc_msg_fini(&m);
}

static void test_rpc_malformed_messages_are_reported(void **state)
{
    pair_t *p = *state;
    uint8_t hbuf[64];
    /* One frame only (after the route): no header/body pair. */
    const void *f1[] = {"x"};
    size_t l1[] = {1};
    send_raw(p->client, f1, l1, 1);
    expect_status(p, BT_ERR_FORMAT);
    /* A header that is not a protobuf. */
    const void *f2[] = {"\xff\xff\xff\xff\xff", ""};
    size_t l2[] = {5, 0};
    send_raw(p->client, f2, l2, 2);
    expect_status(p, BT_ERR_FORMAT);
    /* Unknown version, then unknown method. */
    Baton__Header h = BATON__HEADER__INIT;
    h.version = 99;
    h.method = BATON__METHOD__HEALTH;
    size_t n = baton__header__pack(&h, hbuf);
    const void *f3[] = {hbuf, ""};
    size_t l3[] = {n, 0};
    send_raw(p->client, f3, l3, 2);
    expect_status(p, BT_ERR_UNSUPPORTED);
    h.version = BT_RPC_VERSION;
    h.method = 777;
    n = baton__header__pack(&h, hbuf);
    l3[0] = n;
    send_raw(p->client, f3, l3, 2);
    expect_status(p, BT_ERR_UNSUPPORTED);
    /* Too many frames. */
    const void *f4[] = {"a", "b", "c", "d", "e", "f", "g", "h"};
    size_t l4[] = {1, 1, 1, 1, 1, 1, 1, 1};
    send_raw(p->client, f4, l4, 8);
    bt_rpc_msg_t m;
    assert_int_equal(bt_rpc_recv(p->server, &m, 0), BT_ERR_FORMAT);
    bt_rpc_msg_fini(&m);
    /* A body that does not parse as the method's message. */
    h.method = BATON__METHOD__GENERATE;
    n = baton__header__pack(&h, hbuf);
    const void *f5[] = {hbuf, "\x0a\xff\xff\xff\xff\x0f"};
    size_t l5[] = {n, 6};
    send_raw(p->client, f5, l5, 2);
    assert_int_equal(bt_rpc_recv(p->server, &m, 0), BT_OK);
    ProtobufCMessage *body = NULL;
    assert_int_equal(bt_rpc_unpack(&m, &body), BT_ERR_FORMAT);
    bt_rpc_msg_fini(&m);
    /* The socket is still in step: a good message gets through. */
    bt_rpc_header_t good;
    bt_rpc_header_init(&good, BATON__METHOD__HEALTH, 7);
    assert_int_equal(bt_rpc_send(p->client, NULL, &good, NULL, 0), BT_OK);
    assert_int_equal(bt_rpc_recv(p->server, &m, 0), BT_OK);
    assert_int_equal(m.hdr.request_id, 7);
    bt_rpc_msg_fini(&m);
    assert_int_equal(bt_rpc_recv(p->server, &m, ZMQ_DONTWAIT), BT_AGAIN);
}

/* Bodies small enough for the message's own buffer and larger ones, and a header whose error
 * text (too long for the header's stack arena) is cut to bt_rpc_header_t's size. */
static void test_rpc_small_and_large_bodies_and_long_error(void **state)
{
    pair_t *p = *state;
    static int32_t ids[1000];
    for (int i = 0; i < 1000; i++)
        ids[i] = i;
    const size_t counts[] = {0, 1, 100, 250, 1000};
    for (size_t k = 0; k < sizeof counts / sizeof counts[0]; k++) {
        Baton__TokenChunk tc = BATON__TOKEN_CHUNK__INIT;
        tc.ids = ids;
        tc.n_ids = counts[k];
        tc.index = 5;
        bt_rpc_header_t h;
        bt_rpc_header_init(&h, BATON__METHOD__TOKENS, 100 + k);
        assert_int_equal(bt_rpc_send(p->client, NULL, &h, &tc.base, 0), BT_OK);
        bt_rpc_msg_t m;
        assert_int_equal(bt_rpc_recv(p->server, &m, 0), BT_OK);
        assert_int_equal(m.hdr.request_id, 100 + k);
        ProtobufCMessage *body;
        assert_int_equal(bt_rpc_unpack(&m, &body), BT_OK);
        Baton__TokenChunk *got = (Baton__TokenChunk *)body;
        assert_int_equal(got->n_ids, counts[k]);
        for (size_t i = 0; i < got->n_ids; i++)
            assert_int_equal(got->ids[i], (int32_t)i);
        protobuf_c_message_free_unpacked(body, NULL);
        bt_rpc_msg_fini(&m);
    }
    static char error[3000];
    memset(error, 'e', sizeof error - 1);
    Baton__Header ph = BATON__HEADER__INIT;
    ph.version = BT_RPC_VERSION;
    ph.method = BATON__METHOD__HEALTH;
    ph.request_id = 9;
    ph.status = BT_ERR_RANGE;
    ph.error = error;
    static uint8_t hbuf[4096];
    size_t n = baton__header__pack(&ph, hbuf);
    const void *f[] = {hbuf, ""};
    size_t l[] = {n, 0};
    send_raw(p->client, f, l, 2);
    bt_rpc_msg_t m;
    assert_int_equal(bt_rpc_recv(p->server, &m, 0), BT_OK);
    assert_int_equal(m.hdr.request_id, 9);
    assert_int_equal(m.hdr.status, BT_ERR_RANGE);
    assert_int_equal(strlen(m.hdr.error), sizeof m.hdr.error - 1);
    assert_int_equal(m.hdr.error[0], 'e');
    bt_rpc_msg_fini(&m);
}

/* ---- the header coder against protobuf-c -------------------------------------------------- */

static uint64_t rand64(uint64_t *rng)
{
    return (uint64_t)bt_test_rand(rng) << 32 | bt_test_rand(rng);
}

/* A value of the kinds that matter for varints: 0, small, at byte boundaries, negative,
 * any. */
static uint64_t some_value(uint64_t *rng)
{
    switch (bt_test_rand(rng) % 6) {
    case 0: return 0;
    case 1: return bt_test_rand(rng) % 300;
    case 2: return (1ull << (bt_test_rand(rng) % 64)) - (bt_test_rand(rng) % 2);
    case 3: return (uint64_t)(int64_t) - (int64_t)(bt_test_rand(rng) % 1000 + 1);
    case 4: return bt_test_rand(rng);
    default: return rand64(rng);
    }
}

static size_t put_varint_n(uint8_t *o, uint64_t v, int extra)
{
    size_t n = 0;
    for (; v >= 0x80 || extra > 0; v >>= 7, extra -= v < 0x80)
        o[n++] = (uint8_t)(v | 0x80);
    o[n++] = (uint8_t)v;
    return n;
}

/* One field: a known one (now and then with a wrong wire type), an unknown one of any wire
 * type, a key of up to 6 bytes, overlong varints, lengths near the end. */
static size_t some_field(uint64_t *rng, uint8_t *o, size_t room)
{
    if (room < 40)
        return 0;
    uint32_t field = bt_test_rand(rng) % 8 ? 1 + bt_test_rand(rng) % 6 : bt_test_rand(rng);
    int wt = field == 5 ? 2 : 0;
    if (field > 5 || bt_test_rand(rng) % 16 == 0)
        wt = (int)(bt_test_rand(rng) % 8);
    size_t n = put_varint_n(o, (uint64_t)field << 3 | (uint64_t)wt,
                            bt_test_rand(rng) % 16 ? 0 : (int)(bt_test_rand(rng) % 3));
    int overlong = bt_test_rand(rng) % 16 ? 0 : (int)(bt_test_rand(rng) % 4);
    switch (wt) {
    case 0: n += put_varint_n(o + n, some_value(rng), overlong); break;
    case 1: n += 8; break; /* whatever bytes are there */
    case 5: n += 4; break;
    case 2: {
        size_t len = bt_test_rand(rng) % 4 ? bt_test_rand(rng) % 24 : bt_test_rand(rng) % 300;
        len = len < room - n - 12 ? len : room - n - 12;
        n += put_varint_n(o + n, len, overlong);
        for (size_t i = 0; i < len; i++)
            o[n + i] = bt_test_rand(rng) % 8 ? (uint8_t)('a' + bt_test_rand(rng) % 26)
                                             : (uint8_t)bt_test_rand(rng);
        n += len;
        break;
    }
    default: break;
    }
    return n;
}

/* What parse_header keeps of protobuf-c's unpacked error: up to the first NUL, 255 bytes. */
static void expect_same(const uint8_t *b, size_t n, uint64_t seed)
{
    Baton__Header *ref = baton__header__unpack(NULL, n, b);
    bt_rpc_header_t got;
    int st = bt_rpc_header_decode(b, n, &got);
    if (!ref) {
        if (st != BT_ERR_FORMAT)
            fail_msg("case %llu: protobuf-c refuses %zu bytes, the coder takes them",
                     (unsigned long long)seed, n);
        return;
    }
    if (st != BT_OK)
        fail_msg("case %llu: protobuf-c takes %zu bytes, the coder refuses them",
                 (unsigned long long)seed, n);
    char err[256];
    snprintf(err, sizeof err, "%s", ref->error ? ref->error : "");
    if (got.version != ref->version || got.method != ref->method ||
        got.request_id != ref->request_id || got.status != ref->status ||
        strcmp(got.error, err) != 0)
        fail_msg("case %llu: fields differ (version %u/%u method %d/%d id %llu/%llu status "
                 "%d/%d)",
                 (unsigned long long)seed, got.version, ref->version, (int)got.method,
                 (int)ref->method, (unsigned long long)got.request_id,
                 (unsigned long long)ref->request_id, got.status, ref->status);
    baton__header__free_unpacked(ref, NULL);
}

static void test_rpc_header_coder_matches_protobuf_c(void **state)
{
    (void)state;
    uint64_t rng = 0x9e3779b97f4a7c15ull;
    static uint8_t a[BT_RPC_HEADER_ENCODED_MAX], b[4096];
    size_t accepted = 0, refused = 0;
    for (uint64_t k = 0; k < 20000; k++) {
        /* Encoding: the same bytes as protobuf-c, and back to the same fields. */
        bt_rpc_header_t h = {.version = (uint32_t)some_value(&rng),
                             .method = (Baton__Method)(int32_t)some_value(&rng),
                             .request_id = some_value(&rng),
                             .status = (int32_t)some_value(&rng)};
        size_t elen = bt_test_rand(&rng) % 3 ? 0 : bt_test_rand(&rng) % 256;
        for (size_t i = 0; i < elen; i++)
            h.error[i] = (char)(1 + bt_test_rand(&rng) % 255);
        Baton__Header ph = BATON__HEADER__INIT;
        ph.version = h.version;
        ph.method = h.method;
        ph.request_id = h.request_id;
        ph.status = h.status;
        ph.error = h.error;
        size_t n = bt_rpc_header_encode(&h, a);
        assert_true(n <= BT_RPC_HEADER_ENCODED_MAX);
        if (k == 0) { /* the longest header there is: each field at its longest */
            bt_rpc_header_t big = {
                .version = UINT32_MAX, .method = -1, .request_id = UINT64_MAX, .status = -1};
            memset(big.error, 'e', sizeof big.error - 1);
            assert_int_equal(bt_rpc_header_encode(&big, b), BT_RPC_HEADER_ENCODED_MAX);
        }
        assert_int_equal(n, baton__header__get_packed_size(&ph));
        assert_int_equal(baton__header__pack(&ph, b), n);
        assert_memory_equal(a, b, n);
        expect_same(a, n, k);

        /* Decoding: random fields, then damaged. */
        n = 0;
        for (int f = (int)(bt_test_rand(&rng) % 8); f > 0; f--)
            n += some_field(&rng, b + n, sizeof b - n);
        if (n > sizeof b - 64)
            n = sizeof b - 64;
        uint64_t seed = rng;
        expect_same(b, n, seed);
        for (int m = (int)(bt_test_rand(&rng) % 4); m > 0; m--) {
            bt_test_mutate(&rng, b, &n, sizeof b);
            expect_same(b, n, seed);
        }
        bt_rpc_header_t tmp;
        if (bt_rpc_header_decode(b, n, &tmp) == BT_OK)
            accepted++;
        else
            refused++;
    }
    /* Both outcomes were exercised in earnest. */
    assert_true(accepted > 2000 && refused > 2000);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rpc_round_trip_with_reply),
        cmocka_unit_test(test_rpc_malformed_messages_are_reported),
        cmocka_unit_test(test_rpc_small_and_large_bodies_and_long_error),
        cmocka_unit_test(test_rpc_header_coder_matches_protobuf_c),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
