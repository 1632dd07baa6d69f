/* SPDX-License-Identifier: MIT */
/*
 * test_client_reconnect.c - the client library when its router is lost: a fake router (a
 * ZeroMQ ROUTER socket on a thread, speaking the real protocol) streams some tokens, then
 * closes and binds again on the same endpoint, as a restarted router would. The library must
 * send each request in flight again with exactly the tokens it received (resume_ids), drop what
 * a resubmission's stream repeats, and hand the caller one gap-free stream and a result that
 * counts the resubmissions; with resubmission off, or past its limit, the requests end at once
 * with BT_CLIENT_ERR_UNAVAILABLE and the tokens they had; a request cancelled before the drop
 * ends cancelled, without being sent again.
 */
#include "testutil.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <zmq.h>

#include "baton_client.h"
#include "common/rpc.h"
#include "common/status.h"
#include "servetest.h"

#define TOKEN0 100 /* token k of the fake's stream is TOKEN0 + k */
#define TEXT_OF(k) ((char)('a' + (k) % 26))

typedef struct {
    char ep[64];
    int drops;   /* connections dropped before the one that finishes */
    int per;     /* tokens sent on each dropped connection */
    int total;   /* tokens in all */
    int overlap; /* a resubmission's first chunk repeats this many tokens the client has */
    /* what the fake saw */
    int generates; /* GENERATE messages */
    int resume_ok; /* each carried a prefix of the stream as resume_ids, and the same prompt */
    int finished;  /* the RESULT went out */
    int send_failed;
} fake_t;

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static void *bind_router(void *ctx, const char *ep)
{
    void *s = zmq_socket(ctx, ZMQ_ROUTER);
    int linger = 2000; /* what was sent reaches the client before the connection drops */
    zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger);
    for (int i = 0; i < 300 && zmq_bind(s, ep) != 0; i++)
        sleep_ms(10); /* the last socket's listener may not be closed yet */
    return s;
}

/* The next GENERATE, waiting up to ms; 0 when none came. */
static int recv_generate(void *s, int ms, bt_rpc_msg_t *m, Baton__GenerateRequest **g)
{
    zmq_pollitem_t it = {s, 0, ZMQ_POLLIN, 0};
    for (uint64_t end = bt_test_now_ms() + (uint64_t)ms; bt_test_now_ms() < end;) {
        if (zmq_poll(&it, 1, 50) <= 0)
            continue;
        if (bt_rpc_recv(s, m, 0) == BT_OK && m->hdr.method == BATON__METHOD__GENERATE &&
            bt_rpc_unpack(m, (ProtobufCMessage **)g) == BT_OK)
            return 1;
        bt_rpc_msg_fini(m);
    }
    return 0;
}

/* Tokens [from, to) of the stream, with their text (token k's is TEXT_OF(k)), or with text
 * when given (a chunk of text alone when from == to, as a router sends held-back text at the
 * end). (The fake runs on its own thread: it records failures for the test to assert.) */
static void send_tokens(fake_t *f, void *s, const bt_rpc_msg_t *m, int from, int to,
                        const char *text)
{
    int32_t ids[256];
    char own[256];
    for (int k = from; k < to; k++) {
        ids[k - from] = TOKEN0 + k;
        own[k - from] = TEXT_OF(k);
    }
    own[to - from] = 0;
    if (!text)
        text = own;
    Baton__TokenChunk tc = BATON__TOKEN_CHUNK__INIT;
    tc.ids = ids;
    tc.n_ids = (size_t)(to - from);
    tc.index = (uint32_t)from;
    if (text)
        tc.text = (ProtobufCBinaryData){strlen(text), (uint8_t *)text};
    bt_rpc_header_t h;
    bt_rpc_header_init(&h, BATON__METHOD__TOKENS, m->hdr.request_id);
    f->send_failed |= bt_rpc_send(s, &m->route, &h, &tc.base, 0) != BT_OK;
}

static void *fake_router(void *arg)
{
    fake_t *f = arg;
    void *ctx = zmq_ctx_new();
    int have = 0; /* tokens the client said it has, from the last resubmission */
    f->resume_ok = 1;
    for (int conn = 0;; conn++) {
        void *s = bind_router(ctx, f->ep);
        bt_rpc_msg_t m;
        Baton__GenerateRequest *g = NULL;
        if (!recv_generate(s, 3000, &m, &g)) { /* the client gave up: nothing more */
            zmq_close(s);
            break;
        }
        f->generates++;
        int ok = g->n_prompt_ids == 2 && g->prompt_ids[0] == 7 && g->max_tokens == 64 &&
                 g->n_resume_ids <= (size_t)f->total;
        for (size_t k = 0; ok && k < g->n_resume_ids; k++)
            ok = g->resume_ids[k] == TOKEN0 + (int)k;
        f->resume_ok &= ok && (conn > 0 || g->n_resume_ids == 0);
        have = (int)g->n_resume_ids;
        int from = have > f->overlap ? have - f->overlap : 0;
        if (conn < f->drops) {
            send_tokens(f, s, &m, from, have + f->per, NULL);
        } else {
            send_tokens(f, s, &m, from, f->total, NULL);
            send_tokens(f, s, &m, f->total, f->total, "!");
            int32_t ids[256];
            for (int k = 0; k < f->total; k++)
                ids[k] = TOKEN0 + k;
            Baton__GenerateResult res = BATON__GENERATE_RESULT__INIT;
            res.finish_reason = BATON__FINISH_REASON__FINISH_LENGTH;
            res.ids = ids;
            res.n_ids = (size_t)f->total;
            res.n_output_tokens = (uint32_t)f->total;
            bt_rpc_header_t h;
            bt_rpc_header_init(&h, BATON__METHOD__RESULT, m.hdr.request_id);
            f->send_failed |= bt_rpc_send(s, &m.route, &h, &res.base, 0) != BT_OK;
            f->finished = 1;
        }
        protobuf_c_message_free_unpacked(&g->base, NULL);
        bt_rpc_msg_fini(&m);
        sleep_ms(100); /* the tokens leave; then the connection drops (or the run is over) */
        zmq_close(s);
        if (f->finished)
            break;
    }
    zmq_ctx_term(ctx);
    return NULL;
}

static bt_client_t *connect_to(const fake_t *f, int max_resubmits)
{
    bt_client_params_t p = {.endpoint = f->ep, .timeout_ms = 20000, .max_resubmits = max_resubmits};
    bt_client_t *cl = NULL;
    assert_int_equal(bt_client_connect(&p, &cl), BT_CLIENT_OK);
    return cl;
}

static void start_fake(fake_t *f, pthread_t *t)
{
    snprintf(f->ep, sizeof f->ep, "tcp://127.0.0.1:%d", bt_test_free_port());
    assert_int_equal(pthread_create(t, NULL, fake_router, f), 0);
}

static const int32_t prompt[2] = {7, 8};
static const bt_client_gen_params_t gen = {
    .prompt_ids = prompt, .n_prompt_ids = 2, .max_tokens = 64, .request_id = 5};

/* Every chunk continues the stream: its index is the count so far, its ids the stream's. */
static void check_chunk(const bt_client_chunk_t *ch, uint32_t *next)
{
    assert_int_equal(ch->request_id, 5);
    assert_int_equal(ch->index, *next);
    for (size_t k = 0; k < ch->n_ids; k++)
        assert_int_equal(ch->ids[k], TOKEN0 + (int)(*next + k));
    *next += (uint32_t)ch->n_ids;
}

/* A result the library made itself carries the text streamed for its tokens. */
static void check_text(const bt_client_result_t *r, uint32_t n)
{
    assert_int_equal(r->text_len, n);
    for (uint32_t k = 0; k < n; k++)
        assert_int_equal(r->text[k], TEXT_OF(k));
}

/* The result holds the stream's first n tokens. */
static void check_ids(const bt_client_result_t *r, uint32_t n)
{
    assert_int_equal(r->n_ids, n);
    for (uint32_t k = 0; k < n; k++)
        assert_int_equal(r->ids[k], TOKEN0 + (int)k);
}

static void check_result(const bt_client_result_t *r, int total, uint32_t retries)
{
    assert_int_equal(r->status, 0);
    check_ids(r, (uint32_t)total);
    assert_int_equal(r->retries, retries);
}

/* Submits the request and reads it until its result, each chunk checked to continue the
 * stream (*next: its tokens so far); with cancel, the request is cancelled at every chunk.
 * *last_ms (may be NULL): when the last chunk came. */
static bt_client_result_t *read_stream(bt_client_t *cl, uint32_t *next, int cancel,
                                       uint64_t *last_ms)
{
    uint64_t id = 0;
    assert_int_equal(bt_client_submit(cl, &gen, &id), BT_CLIENT_OK);
    for (;;) {
        bt_client_next_t ev;
        assert_int_equal(bt_client_next(cl, 20000, &ev), BT_CLIENT_OK);
        if (ev.kind == BT_CLIENT_NEXT_RESULT)
            return ev.result;
        check_chunk(&ev.chunk, next);
        if (last_ms)
            *last_ms = bt_test_now_ms();
        if (cancel)
            assert_int_equal(bt_client_cancel(cl, id), BT_CLIENT_OK);
    }
}

static void test_reconnect_resubmits_with_tokens(void **state)
{
    (void)state;
    fake_t f = {.drops = 2, .per = 3, .total = 10, .overlap = 1};
    pthread_t t;
    start_fake(&f, &t);
    bt_client_t *cl = connect_to(&f, 0);
    uint32_t next = 0;
    bt_client_result_t *r = read_stream(cl, &next, 0, NULL);
    pthread_join(t, NULL);
    assert_int_equal(next, 10); /* the repeated token of each resubmission was dropped */
    check_result(r, 10, 2);
    assert_int_equal(f.generates, 3);
    assert_true(f.resume_ok);
    assert_false(f.send_failed);
    assert_int_equal(bt_client_in_flight(cl), 0);
    bt_client_result_free(r);
    bt_client_close(cl);
}

static int on_chunk(void *user, const bt_client_chunk_t *ch)
{
    check_chunk(ch, user);
    return 0;
}

static void test_reconnect_blocking_generate(void **state)
{
    (void)state;
    fake_t f = {.drops = 1, .per = 4, .total = 9, .overlap = 2};
    pthread_t t;
    start_fake(&f, &t);
    bt_client_t *cl = connect_to(&f, 0);
    uint32_t next = 0;
    bt_client_result_t *r = NULL;
    assert_int_equal(bt_client_generate(cl, &gen, on_chunk, &next, &r), BT_CLIENT_OK);
    pthread_join(t, NULL);
    assert_int_equal(next, 9);
    check_result(r, 9, 1);
    assert_true(f.resume_ok);
    bt_client_result_free(r);
    bt_client_close(cl);
}

/* Resubmission off (< 0), or past its limit: the request ends when the connection drops, long
 * before the client's timeout, failed as unavailable, with the tokens it had. */
static void run_lost_for_good(int max_resubmits, int drops, uint32_t retries)
{
    fake_t f = {.drops = drops, .per = 3, .total = 64};
    pthread_t t;
    start_fake(&f, &t);
    bt_client_t *cl = connect_to(&f, max_resubmits);
    uint32_t next = 0;
    uint64_t t0 = 0;
    bt_client_result_t *r = read_stream(cl, &next, 0, &t0);
    assert_true(bt_test_now_ms() - t0 < 10000); /* the drop, not the 20 s timeout */
    assert_int_equal(r->status, BT_CLIENT_ERR_UNAVAILABLE);
    assert_int_equal(r->finish_reason, BT_CLIENT_FINISH_FAILED);
    assert_non_null(strstr(r->error, "connection to the router was lost"));
    assert_int_equal(next, 3 * (retries + 1)); /* every token received, once */
    check_ids(r, next);
    check_text(r, next);
    assert_int_equal(r->retries, retries);
    assert_int_equal(bt_client_in_flight(cl), 0);
    bt_client_result_free(r);
    pthread_join(t, NULL); /* it waited for a resubmission that never came */
    assert_int_equal(f.generates, (int)retries + 1);
    bt_client_close(cl);
}

static void test_reconnect_off_ends_at_once(void **state)
{
    (void)state;
    run_lost_for_good(-1, 1, 0);
}

static void test_reconnect_limit_ends_the_request(void **state)
{
    (void)state;
    run_lost_for_good(1, 2, 1);
}

/* A request cancelled before the connection drops, its cancel never answered: it is not sent
 * again, and ends cancelled with the tokens it had. */
static void test_reconnect_cancelled_is_not_resubmitted(void **state)
{
    (void)state;
    fake_t f = {.drops = 1, .per = 3, .total = 64};
    pthread_t t;
    start_fake(&f, &t);
    bt_client_t *cl = connect_to(&f, 0);
    uint32_t next = 0;
    bt_client_result_t *r = read_stream(cl, &next, 1, NULL);
    assert_int_equal(r->status, 0);
    assert_int_equal(r->finish_reason, BT_CLIENT_FINISH_CANCELLED);
    check_ids(r, 3);
    check_text(r, 3);
    assert_int_equal(r->retries, 0);
    assert_int_equal(bt_client_in_flight(cl), 0);
    bt_client_result_free(r);
    pthread_join(t, NULL); /* it waited for a resubmission that never came */
    assert_int_equal(f.generates, 1);
    bt_client_close(cl);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reconnect_resubmits_with_tokens),
        cmocka_unit_test(test_reconnect_blocking_generate),
        cmocka_unit_test(test_reconnect_off_ends_at_once),
        cmocka_unit_test(test_reconnect_limit_ends_the_request),
        cmocka_unit_test(test_reconnect_cancelled_is_not_resubmitted),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
