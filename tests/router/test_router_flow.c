/* SPDX-License-Identifier: MIT */
/*
 * test_router_flow.c - the request path through a real baton-router process, with fake
 * prefill, decode and colocated daemons on real ZeroMQ sockets: the ASSIGN handshake, the
 * first token relayed before decode starts, stream order, exactly one RESULT with the events
 * of every part, colocated placement, cancel, back-pressure, health and info.
 */
// ctest-labels: integration
#include "testutil.h"

#include <string.h>

#include "common/status.h"
#include "routertest.h"

#define WAIT_MS 5000

static int teardown(void **state)
{
    return *state ? rt_stop(*state) : 0;
}

static rt_cluster_t *start(void **state, const char *const *extra)
{
    static rt_cluster_t c;
    assert_int_equal(rt_start(&c, extra), 0);
    *state = &c;
    return &c;
}

/* Receives the ASSIGN a daemon should get; returns its cluster id and (optionally) the body. */
static uint64_t expect_assign(rt_cluster_t *c, rt_daemon_t *d, Baton__Role part,
                              Baton__Assignment **out)
{
    bt_rpc_msg_t m;
    assert_int_equal(rt_expect(c, d->sock, BATON__METHOD__ASSIGN, &m, WAIT_MS, NULL), 0);
    Baton__Assignment *a = rt_body(&m);
    assert_int_equal(a->part, part);
    uint64_t id = m.hdr.request_id;
    bt_rpc_msg_fini(&m);
    if (out)
        *out = a;
    else
        baton__assignment__free_unpacked(a, NULL);
    return id;
}

static Baton__TokenChunk *expect_tokens(rt_cluster_t *c, void *client, uint64_t id)
{
    bt_rpc_msg_t m;
    assert_int_equal(rt_expect(c, client, BATON__METHOD__TOKENS, &m, WAIT_MS, NULL), 0);
    assert_int_equal(m.hdr.request_id, id);
    Baton__TokenChunk *tc = rt_body(&m);
    bt_rpc_msg_fini(&m);
    return tc;
}

static Baton__GenerateResult *expect_result(rt_cluster_t *c, void *client, uint64_t id, int status)
{
    bt_rpc_msg_t m;
    assert_int_equal(rt_expect(c, client, BATON__METHOD__RESULT, &m, WAIT_MS, NULL), 0);
    assert_int_equal(m.hdr.request_id, id);
    assert_int_equal(m.hdr.status, status);
    Baton__GenerateResult *r = rt_body(&m);
    bt_rpc_msg_fini(&m);
    return r;
}

/* Nothing more arrives on sock for a while. */
static void expect_silence(rt_cluster_t *c, void *sock, int ms)
{
    bt_rpc_msg_t m;
    if (rt_recv(c, sock, &m, ms) == 0) {
        int method = m.hdr.method;
        bt_rpc_msg_fini(&m);
        fail_msg("unexpected message, method %d", method);
    }
}

static const int32_t prompt[4] = {5, 6, 7, 8};

static void test_flow_first_token_before_decode_then_ordered_stream(void **state)
{
    rt_cluster_t *c = start(state, NULL);
    rt_daemon_t *p = rt_daemon_add(c, "p0", BATON__ROLE__PREFILL);
    rt_daemon_t *d = rt_daemon_add(c, "d0", BATON__ROLE__DECODE);
    void *cl = rt_client(c);
    assert_int_equal(rt_wait_instances(c, 2, WAIT_MS), 0);
    assert_int_equal(rt_generate(cl, 42, prompt, 4, 5), 0);

    Baton__Assignment *a;
    uint64_t id = expect_assign(c, d, BATON__ROLE__DECODE, &a);
    assert_string_equal(a->peer_instance, "p0");
    assert_int_equal(a->n_prompt_ids, 4);
    assert_int_equal(a->max_tokens, 5);
    assert_int_equal(a->skip_tokens, 0);
    baton__assignment__free_unpacked(a, NULL);
    assert_int_equal(rt_assign_reply(d, id, BATON__ROLE__DECODE, 0), 0);

    assert_int_equal(expect_assign(c, p, BATON__ROLE__PREFILL, &a), id);
    assert_string_equal(a->peer_instance, "d0");
    assert_int_equal(a->peer_kvx_address.len, 2);
    assert_non_null(a->reservation);
    assert_int_equal(a->reservation->reservation_id, id ^ 0x5a5a);
    assert_int_equal(a->reservation->n_block_ids, 1);
    baton__assignment__free_unpacked(a, NULL);
    assert_int_equal(rt_assign_reply(p, id, BATON__ROLE__PREFILL, 0), 0);

    /* The first token reaches the client while the decode side has done nothing. */
    int32_t first = 100;
    assert_int_equal(rt_chunk(p, BATON__METHOD__FIRST_TOKEN, id, 0, &first, 1), 0);
    Baton__TokenChunk *tc = expect_tokens(c, cl, 42);
    assert_int_equal(tc->index, 0);
    assert_int_equal(tc->n_ids, 1);
    assert_int_equal(tc->ids[0], 100);
    baton__token_chunk__free_unpacked(tc, NULL);

    int pk[] = {BATON__EVENT_KIND__PREFILL_QUEUED, BATON__EVENT_KIND__PREFILL_BEGIN,
                BATON__EVENT_KIND__PREFILL_END, BATON__EVENT_KIND__TRANSFER_BEGIN,
                BATON__EVENT_KIND__TRANSFER_END};
    assert_int_equal(
        rt_done(p, id, BATON__ROLE__PREFILL, BATON__FINISH_REASON__FINISH_LENGTH, 1, pk, 5), 0);
    int32_t a12[2] = {101, 102}, a34[2] = {103, 104};
    assert_int_equal(rt_chunk(d, BATON__METHOD__STREAM, id, 1, a12, 2), 0);
    assert_int_equal(rt_chunk(d, BATON__METHOD__STREAM, id, 3, a34, 2), 0);
    int dk[] = {BATON__EVENT_KIND__DECODE_QUEUED, BATON__EVENT_KIND__DECODE_BEGIN};
    assert_int_equal(
        rt_done(d, id, BATON__ROLE__DECODE, BATON__FINISH_REASON__FINISH_LENGTH, 5, dk, 2), 0);
    for (uint32_t want = 1; want < 5;) {
        tc = expect_tokens(c, cl, 42);
        assert_int_equal(tc->index, want);
        for (size_t i = 0; i < tc->n_ids; i++)
            assert_int_equal(tc->ids[i], 100 + (int)want + (int)i);
        want += (uint32_t)tc->n_ids;
        baton__token_chunk__free_unpacked(tc, NULL);
    }
    Baton__GenerateResult *r = expect_result(c, cl, 42, 0);
    assert_int_equal(r->finish_reason, BATON__FINISH_REASON__FINISH_LENGTH);
    assert_int_equal(r->n_ids, 5);
    assert_int_equal(r->ids[4], 104);
    assert_int_equal(r->n_prompt_tokens, 4);
    assert_int_equal(r->retries, 0);
    assert_string_equal(r->prefill_instance, "p0");
    assert_string_equal(r->decode_instance, "d0");
    assert_int_equal(r->n_events, 9);
    assert_int_equal(r->events[0]->kind, BATON__EVENT_KIND__ISSUED);
    assert_string_equal(r->events[0]->instance, "router");
    assert_int_equal(r->events[8]->kind, BATON__EVENT_KIND__FINISHED);
    for (size_t i = 1; i < r->n_events; i++)
        assert_true(r->events[i - 1]->time_ns <= r->events[i]->time_ns);
    baton__generate_result__free_unpacked(r, NULL);
    expect_silence(c, cl, 150); /* exactly one RESULT */
}

static void test_flow_holds_decode_chunk_that_beats_the_first_token(void **state)
{
    rt_cluster_t *c = start(state, NULL);
    rt_daemon_t *p = rt_daemon_add(c, "p0", BATON__ROLE__PREFILL);
    rt_daemon_t *d = rt_daemon_add(c, "d0", BATON__ROLE__DECODE);
    void *cl = rt_client(c);
    assert_int_equal(rt_wait_instances(c, 2, WAIT_MS), 0);
    assert_int_equal(rt_generate(cl, 1, prompt, 4, 3), 0);
    uint64_t id = expect_assign(c, d, BATON__ROLE__DECODE, NULL);
    rt_assign_reply(d, id, BATON__ROLE__DECODE, 0);
    expect_assign(c, p, BATON__ROLE__PREFILL, NULL);
    int32_t later[2] = {11, 12}, first = 10;
    rt_chunk(d, BATON__METHOD__STREAM, id, 1, later, 2); /* races ahead of the first token */
    expect_silence(c, cl, 100);
    rt_chunk(p, BATON__METHOD__FIRST_TOKEN, id, 0, &first, 1);
    rt_chunk(p, BATON__METHOD__FIRST_TOKEN, id, 0, &first, 1); /* a duplicate: dropped */
    Baton__TokenChunk *tc = expect_tokens(c, cl, 1);
    assert_int_equal(tc->index, 0);
    assert_int_equal(tc->n_ids, 3); /* the held chunk follows at once, in one message */
    assert_int_equal(tc->ids[2], 12);
    baton__token_chunk__free_unpacked(tc, NULL);
    rt_done(p, id, BATON__ROLE__PREFILL, BATON__FINISH_REASON__FINISH_LENGTH, 1, NULL, 0);
    rt_done(d, id, BATON__ROLE__DECODE, BATON__FINISH_REASON__FINISH_EOS, 3, NULL, 0);
    Baton__GenerateResult *r = expect_result(c, cl, 1, 0);
    assert_int_equal(r->finish_reason, BATON__FINISH_REASON__FINISH_EOS);
    assert_int_equal(r->n_ids, 3);
    baton__generate_result__free_unpacked(r, NULL);
    expect_silence(c, cl, 100);
}

static void test_flow_colocated_only_cluster(void **state)
{
    rt_cluster_t *c = start(state, NULL);
    rt_daemon_t *x = rt_daemon_add(c, "c0", BATON__ROLE__COLOCATED);
    void *cl = rt_client(c);
    assert_int_equal(rt_wait_instances(c, 1, WAIT_MS), 0);
    assert_int_equal(rt_generate(cl, 9, prompt, 4, 2), 0);
    Baton__Assignment *a;
    uint64_t id = expect_assign(c, x, BATON__ROLE__COLOCATED, &a);
    assert_string_equal(a->peer_instance, "");
    baton__assignment__free_unpacked(a, NULL);
    rt_assign_reply(x, id, BATON__ROLE__COLOCATED, 0);
    int32_t t0 = 1, t1 = 2;
    rt_chunk(x, BATON__METHOD__FIRST_TOKEN, id, 0, &t0, 1);
    rt_chunk(x, BATON__METHOD__STREAM, id, 1, &t1, 1);
    rt_done(x, id, BATON__ROLE__COLOCATED, BATON__FINISH_REASON__FINISH_LENGTH, 2, NULL, 0);
    Baton__GenerateResult *r = expect_result(c, cl, 9, 0);
    assert_int_equal(r->n_ids, 2);
    assert_string_equal(r->prefill_instance, "c0");
    assert_string_equal(r->decode_instance, "c0");
    baton__generate_result__free_unpacked(r, NULL);
}

/* A chunk of ids with text (len bytes, which may hold NULs). */
static void chunk_with_text(rt_daemon_t *d, Baton__Method method, uint64_t id, uint32_t index,
                            int32_t tok, const char *text, size_t len)
{
    Baton__TokenChunk tc = BATON__TOKEN_CHUNK__INIT;
    tc.ids = &tok;
    tc.n_ids = 1;
    tc.index = index;
    tc.text = (ProtobufCBinaryData){len, (uint8_t *)text};
    assert_int_equal(rt_send(d->sock, method, id, 0, &tc.base), 0);
}

/* Text is bytes: a NUL the model generated (a byte token 0x00) reaches the client in the
 * stream and in the result, with what follows it. */
static void test_flow_text_with_nul_bytes_is_relayed_whole(void **state)
{
    rt_cluster_t *c = start(state, NULL);
    rt_daemon_t *x = rt_daemon_add(c, "c0", BATON__ROLE__COLOCATED);
    void *cl = rt_client(c);
    assert_int_equal(rt_wait_instances(c, 1, WAIT_MS), 0);
    Baton__GenerateRequest g = BATON__GENERATE_REQUEST__INIT;
    Baton__SamplingParams sp = BATON__SAMPLING_PARAMS__INIT;
    g.prompt_ids = (int32_t *)prompt;
    g.n_prompt_ids = 4;
    g.max_tokens = 2;
    g.sampling = &sp;
    g.return_text = 1;
    assert_int_equal(rt_send(cl, BATON__METHOD__GENERATE, 12, 0, &g.base), 0);
    uint64_t id = expect_assign(c, x, BATON__ROLE__COLOCATED, NULL);
    rt_assign_reply(x, id, BATON__ROLE__COLOCATED, 0);
    chunk_with_text(x, BATON__METHOD__FIRST_TOKEN, id, 0, 3, "a\0b", 3);
    chunk_with_text(x, BATON__METHOD__STREAM, id, 1, 3, "\0", 1);
    rt_done(x, id, BATON__ROLE__COLOCATED, BATON__FINISH_REASON__FINISH_LENGTH, 2, NULL, 0);
    char streamed[16];
    size_t n = 0;
    for (uint32_t have = 0; have < 2;) {
        Baton__TokenChunk *tc = expect_tokens(c, cl, 12);
        have += (uint32_t)tc->n_ids;
        assert_true(n + tc->text.len <= sizeof streamed);
        if (tc->text.len)
            memcpy(streamed + n, tc->text.data, tc->text.len);
        n += tc->text.len;
        baton__token_chunk__free_unpacked(tc, NULL);
    }
    assert_int_equal(n, 4);
    assert_memory_equal(streamed, "a\0b\0", 4);
    Baton__GenerateResult *r = expect_result(c, cl, 12, 0);
    assert_int_equal(r->text.len, 4);
    assert_memory_equal(r->text.data, "a\0b\0", 4);
    baton__generate_result__free_unpacked(r, NULL);
}

static void test_flow_health_and_info(void **state)
{
    rt_cluster_t *c = start(state, (const char *const[]){"--policy", "round-robin", NULL});
    void *cl = rt_client(c);
    rt_send(cl, BATON__METHOD__HEALTH, 5, 0, NULL);
    bt_rpc_msg_t m;
    assert_int_equal(rt_expect(c, cl, BATON__METHOD__HEALTH, &m, WAIT_MS, NULL), 0);
    Baton__HealthReply *h = rt_body_as(&m, &baton__health_reply__descriptor);
    bt_rpc_msg_fini(&m);
    assert_false(h->ok);
    baton__health_reply__free_unpacked(h, NULL);

    rt_daemon_add(c, "p0", BATON__ROLE__PREFILL);
    rt_daemon_add(c, "d0", BATON__ROLE__DECODE);
    assert_int_equal(rt_wait_instances(c, 2, WAIT_MS), 0);
    rt_send(cl, BATON__METHOD__HEALTH, 6, 0, NULL);
    assert_int_equal(rt_expect(c, cl, BATON__METHOD__HEALTH, &m, WAIT_MS, NULL), 0);
    assert_int_equal(m.hdr.request_id, 6);
    h = rt_body_as(&m, &baton__health_reply__descriptor);
    bt_rpc_msg_fini(&m);
    assert_true(h->ok);
    assert_int_equal(h->n_prefill, 1);
    assert_int_equal(h->n_decode, 1);
    baton__health_reply__free_unpacked(h, NULL);

    rt_send(cl, BATON__METHOD__INFO, 7, 0, NULL);
    assert_int_equal(rt_expect(c, cl, BATON__METHOD__INFO, &m, WAIT_MS, NULL), 0);
    Baton__InfoReply *info = rt_body_as(&m, &baton__info_reply__descriptor);
    bt_rpc_msg_fini(&m);
    assert_string_equal(info->model, RT_MODEL_ID);
    assert_string_equal(info->policy, "round-robin");
    assert_int_equal(info->protocol_version, 1);
    assert_int_equal(info->n_instances, 2);
    assert_true(info->instances[0]->alive);
    baton__info_reply__free_unpacked(info, NULL);
}

static void test_flow_cancel_aborts_parts_and_ends_cancelled(void **state)
{
    rt_cluster_t *c = start(state, NULL);
    rt_daemon_t *p = rt_daemon_add(c, "p0", BATON__ROLE__PREFILL);
    rt_daemon_t *d = rt_daemon_add(c, "d0", BATON__ROLE__DECODE);
    void *cl = rt_client(c);
    assert_int_equal(rt_wait_instances(c, 2, WAIT_MS), 0);
    rt_generate(cl, 3, prompt, 4, 100);
    uint64_t id = expect_assign(c, d, BATON__ROLE__DECODE, NULL);
    rt_assign_reply(d, id, BATON__ROLE__DECODE, 0);
    expect_assign(c, p, BATON__ROLE__PREFILL, NULL);
    rt_assign_reply(p, id, BATON__ROLE__PREFILL, 0);
    int32_t t0 = 50;
    rt_chunk(p, BATON__METHOD__FIRST_TOKEN, id, 0, &t0, 1);
    baton__token_chunk__free_unpacked(expect_tokens(c, cl, 3), NULL);

    rt_send(cl, BATON__METHOD__CANCEL, 3, 0, NULL);
    bt_rpc_msg_t m;
    assert_int_equal(rt_expect(c, d->sock, BATON__METHOD__ABORT, &m, WAIT_MS, NULL), 0);
    assert_int_equal(m.hdr.request_id, id);
    bt_rpc_msg_fini(&m);
    assert_int_equal(rt_expect(c, p->sock, BATON__METHOD__ABORT, &m, WAIT_MS, NULL), 0);
    bt_rpc_msg_fini(&m);
    rt_done(p, id, BATON__ROLE__PREFILL, BATON__FINISH_REASON__FINISH_CANCELLED, 1, NULL, 0);
    expect_silence(c, cl, 100); /* the decode part has not ended yet */
    rt_done(d, id, BATON__ROLE__DECODE, BATON__FINISH_REASON__FINISH_CANCELLED, 1, NULL, 0);
    Baton__GenerateResult *r = expect_result(c, cl, 3, 0);
    assert_int_equal(r->finish_reason, BATON__FINISH_REASON__FINISH_CANCELLED);
    assert_int_equal(r->n_ids, 1);
    assert_int_equal(r->events[r->n_events - 1]->kind, BATON__EVENT_KIND__CANCELLED);
    baton__generate_result__free_unpacked(r, NULL);
    rt_send(cl, BATON__METHOD__CANCEL, 3, 0, NULL); /* no longer in flight */
    assert_int_equal(rt_expect(c, cl, BATON__METHOD__CANCEL, &m, WAIT_MS, NULL), 0);
    assert_int_equal(m.hdr.status, BT_ERR_NOT_FOUND);
    bt_rpc_msg_fini(&m);
}

static void test_flow_cancel_does_not_wait_for_a_silent_daemon(void **state)
{
    rt_cluster_t *c = start(state, (const char *const[]){"--dead-after-ms", "600", NULL});
    rt_daemon_t *x = rt_daemon_add(c, "c0", BATON__ROLE__COLOCATED);
    void *cl = rt_client(c);
    assert_int_equal(rt_wait_instances(c, 1, WAIT_MS), 0);
    rt_generate(cl, 4, prompt, 4, 100);
    uint64_t id = expect_assign(c, x, BATON__ROLE__COLOCATED, NULL);
    rt_assign_reply(x, id, BATON__ROLE__COLOCATED, 0);
    rt_send(cl, BATON__METHOD__CANCEL, 4, 0, NULL);
    /* The daemon never sends DONE; the router ends the request by its own deadline. */
    Baton__GenerateResult *r = expect_result(c, cl, 4, 0);
    assert_int_equal(r->finish_reason, BATON__FINISH_REASON__FINISH_CANCELLED);
    baton__generate_result__free_unpacked(r, NULL);
}

static void test_flow_nospace_tries_another_decode(void **state)
{
    rt_cluster_t *c = start(state, (const char *const[]){"--policy", "round-robin", NULL});
    rt_daemon_t *p = rt_daemon_add(c, "p0", BATON__ROLE__PREFILL);
    rt_daemon_t *d0 = rt_daemon_add(c, "d0", BATON__ROLE__DECODE);
    rt_daemon_t *d1 = rt_daemon_add(c, "d1", BATON__ROLE__DECODE);
    void *cl = rt_client(c);
    assert_int_equal(rt_wait_instances(c, 3, WAIT_MS), 0);
    rt_generate(cl, 8, prompt, 4, 1);
    /* Whichever decode gets it first (registration order is a race) refuses it. */
    bt_rpc_msg_t m;
    rt_daemon_t *full = d0, *other = d1;
    while (rt_recv(c, full->sock, &m, 20) != 0) {
        rt_daemon_t *t = full;
        full = other;
        other = t;
    }
    assert_int_equal(m.hdr.method, BATON__METHOD__ASSIGN);
    uint64_t id0 = m.hdr.request_id;
    bt_rpc_msg_fini(&m);
    rt_assign_reply(full, id0, BATON__ROLE__DECODE, BT_ERR_NOSPACE);
    uint64_t id1 = expect_assign(c, other, BATON__ROLE__DECODE, NULL);
    assert_true(id1 != id0); /* a new attempt */
    rt_assign_reply(other, id1, BATON__ROLE__DECODE, 0);
    assert_int_equal(expect_assign(c, p, BATON__ROLE__PREFILL, NULL), id1);
    int32_t t = 9;
    rt_chunk(p, BATON__METHOD__FIRST_TOKEN, id1, 0, &t, 1);
    rt_done(p, id1, BATON__ROLE__PREFILL, BATON__FINISH_REASON__FINISH_LENGTH, 1, NULL, 0);
    rt_done(other, id1, BATON__ROLE__DECODE, BATON__FINISH_REASON__FINISH_LENGTH, 1, NULL, 0);
    Baton__GenerateResult *r = expect_result(c, cl, 8, 0);
    assert_string_equal(r->decode_instance, other->id);
    assert_int_equal(r->retries, 0);
    baton__generate_result__free_unpacked(r, NULL);
}

/* A cluster of one colocated instance, c0, whose heartbeats the test sends by hand. */
static rt_daemon_t *start_one_colocated(void **state, rt_cluster_t **c, void **cl)
{
    *c = start(state, NULL);
    rt_daemon_t *x = rt_daemon_add(*c, "c0", BATON__ROLE__COLOCATED);
    *cl = rt_client(*c);
    assert_int_equal(rt_wait_instances(*c, 1, WAIT_MS), 0);
    x->silent = 1;
    return x;
}

static void test_flow_nospace_waits_for_the_next_heartbeat(void **state)
{
    rt_cluster_t *c;
    void *cl;
    rt_daemon_t *x = start_one_colocated(state, &c, &cl);
    rt_generate(cl, 2, prompt, 4, 1);
    uint64_t id0 = expect_assign(c, x, BATON__ROLE__COLOCATED, NULL);
    rt_assign_reply(x, id0, BATON__ROLE__COLOCATED, BT_ERR_NOSPACE);
    expect_silence(c, x->sock, 150); /* queued: no retry on the full instance */
    rt_heartbeat(c, x);              /* it says it has room again */
    x->silent = 0;
    uint64_t id1 = expect_assign(c, x, BATON__ROLE__COLOCATED, NULL);
    rt_assign_reply(x, id1, BATON__ROLE__COLOCATED, 0);
    int32_t t = 4;
    rt_chunk(x, BATON__METHOD__FIRST_TOKEN, id1, 0, &t, 1);
    rt_done(x, id1, BATON__ROLE__COLOCATED, BATON__FINISH_REASON__FINISH_LENGTH, 1, NULL, 0);
    Baton__GenerateResult *r = expect_result(c, cl, 2, 0);
    assert_int_equal(r->n_ids, 1);
    baton__generate_result__free_unpacked(r, NULL);
}

/* Asks HEALTH until the router has n requests in its queue. */
static void wait_queued(rt_cluster_t *c, void *cl, uint32_t n)
{
    uint64_t deadline = bt_test_now_ms() + WAIT_MS;
    for (uint64_t id = 9000;; id++) {
        bt_rpc_msg_t m;
        assert_int_equal(rt_send(cl, BATON__METHOD__HEALTH, id, 0, NULL), 0);
        assert_int_equal(rt_expect(c, cl, BATON__METHOD__HEALTH, &m, WAIT_MS, NULL), 0);
        Baton__HealthReply *h = rt_body_as(&m, &baton__health_reply__descriptor);
        bt_rpc_msg_fini(&m);
        uint32_t queued = h->queued;
        baton__health_reply__free_unpacked(h, NULL);
        if (queued == n)
            return;
        assert_true(bt_test_now_ms() < deadline);
        rt_sleep(c, 5);
    }
}

/* The ASSIGN to the instance comes; its prompt has n tokens (which tells the requests apart). */
static uint64_t expect_assign_of(rt_cluster_t *c, rt_daemon_t *d, size_t n)
{
    Baton__Assignment *a;
    uint64_t id = expect_assign(c, d, BATON__ROLE__COLOCATED, &a);
    assert_int_equal(a->n_prompt_ids, n);
    baton__assignment__free_unpacked(a, NULL);
    return id;
}

/* While requests queue, an instance gets one of them at a time, oldest first: a request that
 * fits must not overtake an older one that the instance refused for want of room (it would be
 * refused again at every try, behind every newer one that fits, until its queue timeout). */
static void test_flow_queue_is_first_come_first_served(void **state)
{
    rt_cluster_t *c;
    void *cl;
    rt_daemon_t *x = start_one_colocated(state, &c, &cl);
    rt_generate(cl, 1, prompt, 4, 1); /* the old, big one */
    rt_assign_reply(x, expect_assign_of(c, x, 4), BATON__ROLE__COLOCATED, BT_ERR_NOSPACE);
    wait_queued(c, cl, 1); /* the refusal is in: what comes now queues behind it */
    rt_generate(cl, 2, prompt, 3, 1);
    rt_generate(cl, 3, prompt, 2, 1);
    expect_silence(c, x->sock, 100); /* all three queue behind the full instance */

    rt_heartbeat(c, x); /* room again: the oldest alone is tried */
    uint64_t id = expect_assign_of(c, x, 4);
    expect_silence(c, x->sock, 150);
    rt_assign_reply(x, id, BATON__ROLE__COLOCATED, BT_ERR_NOSPACE); /* still too big */
    expect_silence(c, x->sock, 150);

    rt_heartbeat(c, x);
    uint64_t ids[3];
    ids[0] = expect_assign_of(c, x, 4);
    expect_silence(c, x->sock, 100);
    rt_assign_reply(x, ids[0], BATON__ROLE__COLOCATED, 0); /* taken: the next one comes */
    ids[1] = expect_assign_of(c, x, 3);
    expect_silence(c, x->sock, 100);
    rt_assign_reply(x, ids[1], BATON__ROLE__COLOCATED, 0);
    ids[2] = expect_assign_of(c, x, 2);
    rt_assign_reply(x, ids[2], BATON__ROLE__COLOCATED, 0);
    for (int i = 0; i < 3; i++) {
        int32_t t = 9;
        rt_chunk(x, BATON__METHOD__FIRST_TOKEN, ids[i], 0, &t, 1);
        rt_done(x, ids[i], BATON__ROLE__COLOCATED, BATON__FINISH_REASON__FINISH_LENGTH, 1, NULL, 0);
        Baton__TokenChunk *tc = expect_tokens(c, cl, (uint64_t)i + 1);
        baton__token_chunk__free_unpacked(tc, NULL);
        Baton__GenerateResult *r = expect_result(c, cl, (uint64_t)i + 1, 0);
        assert_int_equal(r->n_ids, 1);
        baton__generate_result__free_unpacked(r, NULL);
    }
    /* The queue is empty: a new request goes out at once, without waiting for any answer. */
    rt_generate(cl, 4, prompt, 1, 1);
    rt_generate(cl, 5, prompt, 2, 1);
    expect_assign_of(c, x, 1);
    expect_assign_of(c, x, 2);
}

/* The next ASSIGN on the pair member d: a replica (the holder's) or not (the owner's), for a
 * prompt of n tokens. Returns its cluster id. */
static uint64_t expect_pair_assign(rt_cluster_t *c, rt_daemon_t *d, int replica, size_t n)
{
    Baton__Assignment *a;
    uint64_t id = expect_assign(c, d, BATON__ROLE__PAIR, &a);
    assert_int_equal(a->replica, replica);
    assert_int_equal(a->n_prompt_ids, n);
    baton__assignment__free_unpacked(a, NULL);
    return id;
}

/* The same on an AcceLLM pair, whose owner holds the probe for both members: while the owner
 * has not answered, its partner does not take the next request alone (as it does while the
 * owner is full), or that one could overtake the probe. */
static void test_flow_pair_queue_is_first_come_first_served(void **state)
{
    rt_cluster_t *c = start(state, (const char *const[]){"--pair-idle-ms", "3600000", NULL});
    rt_daemon_t *a = rt_pair_add(c, "pa", "pb", BATON__ROLE__PREFILL); /* the owner */
    rt_daemon_t *b = rt_pair_add(c, "pb", "pa", BATON__ROLE__DECODE);  /* the holder */
    void *cl = rt_client(c);
    assert_int_equal(rt_wait_instances(c, 2, WAIT_MS), 0);
    a->silent = b->silent = 1;
    bt_rpc_msg_t m; /* each member is introduced to its partner first */
    assert_int_equal(rt_expect(c, a->sock, BATON__METHOD__SET_ROLE, &m, WAIT_MS, NULL), 0);
    bt_rpc_msg_fini(&m);
    assert_int_equal(rt_expect(c, b->sock, BATON__METHOD__SET_ROLE, &m, WAIT_MS, NULL), 0);
    bt_rpc_msg_fini(&m);

    rt_generate(cl, 1, prompt, 4, 1);
    rt_assign_reply(b, expect_pair_assign(c, b, 1, 4), BATON__ROLE__PAIR, 0);
    uint64_t id = expect_pair_assign(c, a, 0, 4);
    rt_assign_reply(a, id, BATON__ROLE__PAIR, BT_ERR_NOSPACE); /* the owner is full */
    assert_int_equal(rt_expect(c, b->sock, BATON__METHOD__ABORT, &m, WAIT_MS, NULL), 0);
    assert_int_equal(m.hdr.request_id, id); /* the replica's reservation given back */
    bt_rpc_msg_fini(&m);
    uint64_t alone = expect_pair_assign(c, b, 0, 4); /* pb takes it alone, from the queue */
    rt_generate(cl, 2, prompt, 3, 1);
    rt_generate(cl, 3, prompt, 2, 1);
    rt_heartbeat(c, a); /* pa has room again, but pb's answer is owed first */
    expect_silence(c, a->sock, 150);
    expect_silence(c, b->sock, 50);

    rt_assign_reply(b, alone, BATON__ROLE__PAIR, 0); /* taken: the next one, on the pair */
    uint64_t ids[2];
    rt_assign_reply(b, expect_pair_assign(c, b, 1, 3), BATON__ROLE__PAIR, 0);
    ids[0] = expect_pair_assign(c, a, 0, 3);
    expect_silence(c, b->sock, 100);
    rt_assign_reply(a, ids[0], BATON__ROLE__PAIR, 0);
    rt_assign_reply(b, expect_pair_assign(c, b, 1, 2), BATON__ROLE__PAIR, 0);
    ids[1] = expect_pair_assign(c, a, 0, 2);
    rt_assign_reply(a, ids[1], BATON__ROLE__PAIR, 0);

    int32_t t = 9;
    rt_chunk(b, BATON__METHOD__FIRST_TOKEN, alone, 0, &t, 1);
    rt_done(b, alone, BATON__ROLE__PAIR, BATON__FINISH_REASON__FINISH_LENGTH, 1, NULL, 0);
    for (int i = 0; i < 2; i++) {
        rt_chunk(a, BATON__METHOD__FIRST_TOKEN, ids[i], 0, &t, 1);
        rt_done(a, ids[i], BATON__ROLE__PAIR, BATON__FINISH_REASON__FINISH_LENGTH, 1, NULL, 0);
    }
    int tokens[4] = {0}, results[4] = {0}; /* a pair's RESULT also waits for its replica */
    for (int k = 0; k < 6; k++) {
        assert_int_equal(rt_recv(c, cl, &m, WAIT_MS), 0);
        assert_true(m.hdr.request_id >= 1 && m.hdr.request_id <= 3);
        assert_int_equal(m.hdr.status, 0);
        if (m.hdr.method == BATON__METHOD__TOKENS)
            tokens[m.hdr.request_id]++;
        else if (m.hdr.method == BATON__METHOD__RESULT)
            results[m.hdr.request_id]++;
        bt_rpc_msg_fini(&m);
    }
    for (int i = 1; i <= 3; i++) {
        assert_int_equal(tokens[i], 1);
        assert_int_equal(results[i], 1);
    }
}

/* A request that waits out --queue-timeout-ms behind instances that are there but full was
 * refused for want of room (BT_ERR_OVERLOADED), not for want of instances (UNAVAILABLE). */
static void test_flow_nospace_until_the_queue_timeout_is_overloaded(void **state)
{
    rt_cluster_t *c = start(state, (const char *const[]){"--queue-timeout-ms", "300", NULL});
    rt_daemon_t *p = rt_daemon_add(c, "p0", BATON__ROLE__PREFILL);
    rt_daemon_t *d = rt_daemon_add(c, "d0", BATON__ROLE__DECODE);
    void *cl = rt_client(c);
    assert_int_equal(rt_wait_instances(c, 2, WAIT_MS), 0);
    d->silent = 1; /* no heartbeat to say it has room again */
    rt_generate(cl, 3, prompt, 4, 1);
    uint64_t id = expect_assign(c, d, BATON__ROLE__DECODE, NULL);
    rt_assign_reply(d, id, BATON__ROLE__DECODE, BT_ERR_NOSPACE);
    Baton__GenerateResult *r = expect_result(c, cl, 3, BT_ERR_OVERLOADED);
    assert_int_equal(r->finish_reason, BATON__FINISH_REASON__FINISH_FAILED);
    baton__generate_result__free_unpacked(r, NULL);
    expect_silence(c, p->sock, 50); /* the prefill side was never asked */
}

/* Messages are served as they come, not at the next housekeeping tick: with a tick of a second,
 * every step of many requests (each with a HEALTH sent right behind its GENERATE, so that the
 * router sends on a socket that has more waiting) is answered well within it. The router
 * sleeps on its sockets' descriptors; a wake-up consumed by a send and not looked for again
 * would leave a message waiting for the tick. */
static void served_between_ticks(void **state, const char *const *extra)
{
    rt_cluster_t *c = start(state, extra);
    rt_daemon_t *p = rt_daemon_add(c, "p0", BATON__ROLE__PREFILL);
    rt_daemon_t *d = rt_daemon_add(c, "d0", BATON__ROLE__DECODE);
    void *cl = rt_client(c);
    assert_int_equal(rt_wait_instances(c, 2, WAIT_MS), 0);
    p->silent = d->silent = 1; /* no heartbeats to wake the router by chance */
    const int fast_ms = 400;
    bt_rpc_msg_t m;
    for (uint64_t i = 1; i <= 40; i++) {
        assert_int_equal(rt_generate(cl, i, prompt, 4, 2), 0);
        assert_int_equal(rt_send(cl, BATON__METHOD__HEALTH, 1000 + i, 0, NULL), 0);
        assert_int_equal(rt_expect(c, d->sock, BATON__METHOD__ASSIGN, &m, fast_ms, NULL), 0);
        uint64_t id = m.hdr.request_id;
        bt_rpc_msg_fini(&m);
        assert_int_equal(rt_assign_reply(d, id, BATON__ROLE__DECODE, 0), 0);
        assert_int_equal(rt_expect(c, p->sock, BATON__METHOD__ASSIGN, &m, fast_ms, NULL), 0);
        bt_rpc_msg_fini(&m);
        assert_int_equal(rt_assign_reply(p, id, BATON__ROLE__PREFILL, 0), 0);
        int32_t t[2] = {7, 8};
        assert_int_equal(rt_chunk(p, BATON__METHOD__FIRST_TOKEN, id, 0, t, 1), 0);
        assert_int_equal(rt_expect(c, cl, BATON__METHOD__TOKENS, &m, fast_ms, NULL), 0);
        bt_rpc_msg_fini(&m);
        assert_int_equal(
            rt_done(p, id, BATON__ROLE__PREFILL, BATON__FINISH_REASON__FINISH_LENGTH, 1, NULL, 0),
            0);
        assert_int_equal(rt_chunk(d, BATON__METHOD__STREAM, id, 1, t + 1, 1), 0);
        assert_int_equal(
            rt_done(d, id, BATON__ROLE__DECODE, BATON__FINISH_REASON__FINISH_LENGTH, 2, NULL, 0),
            0);
        /* The HEALTH reply and the second TOKENS come before it. */
        assert_int_equal(rt_expect(c, cl, BATON__METHOD__RESULT, &m, fast_ms, NULL), 0);
        assert_int_equal(m.hdr.request_id, i);
        bt_rpc_msg_fini(&m);
    }
}

static void test_flow_messages_are_served_between_ticks(void **state)
{
    const char *const extra[] = {"--tick-ms", "1000", "--dead-after-ms", "60000", NULL};
    served_between_ticks(state, extra);
}

/* The same with the event loop polling instead of sleeping. */
static void test_flow_busy_poll_serves_the_same(void **state)
{
    const char *const extra[] = {"--tick-ms", "1000",        "--dead-after-ms",
                                 "60000",     "--busy-poll", NULL};
    served_between_ticks(state, extra);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_flow_first_token_before_decode_then_ordered_stream,
                                  teardown),
        cmocka_unit_test_teardown(test_flow_holds_decode_chunk_that_beats_the_first_token,
                                  teardown),
        cmocka_unit_test_teardown(test_flow_colocated_only_cluster, teardown),
        cmocka_unit_test_teardown(test_flow_text_with_nul_bytes_is_relayed_whole, teardown),
        cmocka_unit_test_teardown(test_flow_health_and_info, teardown),
        cmocka_unit_test_teardown(test_flow_cancel_aborts_parts_and_ends_cancelled, teardown),
        cmocka_unit_test_teardown(test_flow_cancel_does_not_wait_for_a_silent_daemon, teardown),
        cmocka_unit_test_teardown(test_flow_nospace_tries_another_decode, teardown),
        cmocka_unit_test_teardown(test_flow_nospace_waits_for_the_next_heartbeat, teardown),
        cmocka_unit_test_teardown(test_flow_nospace_until_the_queue_timeout_is_overloaded,
                                  teardown),
        cmocka_unit_test_teardown(test_flow_queue_is_first_come_first_served, teardown),
        cmocka_unit_test_teardown(test_flow_pair_queue_is_first_come_first_served, teardown),
        cmocka_unit_test_teardown(test_flow_messages_are_served_between_ticks, teardown),
        cmocka_unit_test_teardown(test_flow_busy_poll_serves_the_same, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
