/* SPDX-License-Identifier: MIT */
/*
 * test_rpc.c - framing over real ZeroMQ sockets (DEALER -> ROUTER over inproc and tcp):
 * round trips, and malformed, truncated, unknown-version and unknown-method messages that
 * must come back as statuses with the route kept, so the server can answer and go on.
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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rpc_round_trip_with_reply),
        cmocka_unit_test(test_rpc_malformed_messages_are_reported),
        cmocka_unit_test(test_rpc_small_and_large_bodies_and_long_error),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
