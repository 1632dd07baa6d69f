/* SPDX-License-Identifier: MIT */
/*
 * test_router_faults.c - a real baton-router process under faults, with fake daemons: a decode
 * that stops heartbeating mid-stream (the stream continues on another, retries = 1), failover
 * that finds no instance in time, a daemon restart seen through its incarnation, a prefill that
 * its decode peer cannot reach (avoided by the failover), a pair owner whose connection is gone
 * (avoided without a failover), RESET on registration (a written-off daemon that comes back drops
 * what it holds), requests a daemon holds that the router does not place there (ABORTed), a
 * pair hand-off and hand-offs from members that do not own the request (ABORTed), a stream
 * lost after its DONE (run again), refusals with the contract's error
 * codes, a full queue, malformed and unknown messages from both sides (answered, and the router
 * keeps serving), late messages for finished requests, connections that break the wire
 * protocol itself, and the SIGTERM drain.
 */
// ctest-labels: integration
#include "testutil.h"

#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include <zmq.h>

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

/* The next ASSIGN on d, for part; its cluster id in *id. The caller frees the body. */
static Baton__Assignment *next_assign(rt_cluster_t *c, rt_daemon_t *d, Baton__Role part,
                                      uint64_t *id)
{
    bt_rpc_msg_t m;
    assert_int_equal(rt_expect(c, d->sock, BATON__METHOD__ASSIGN, &m, WAIT_MS, NULL), 0);
    Baton__Assignment *a = rt_body(&m);
    assert_int_equal(a->part, part);
    *id = m.hdr.request_id;
    bt_rpc_msg_fini(&m);
    return a;
}

static uint64_t expect_assign(rt_cluster_t *c, rt_daemon_t *d, Baton__Role part, uint32_t *skip)
{
    uint64_t id;
    Baton__Assignment *a = next_assign(c, d, part, &id);
    if (skip)
        *skip = a->skip_tokens;
    baton__assignment__free_unpacked(a, NULL);
    return id;
}

/* The next TOKENS or RESULT for the client; the caller frees the body. */
static void *expect_client(rt_cluster_t *c, void *cl, Baton__Method method, uint64_t id, int status)
{
    bt_rpc_msg_t m;
    assert_int_equal(rt_recv(c, cl, &m, WAIT_MS), 0);
    assert_int_equal(m.hdr.method, method);
    assert_int_equal(m.hdr.request_id, id);
    assert_int_equal(m.hdr.status, status);
    void *b = rt_body(&m);
    bt_rpc_msg_fini(&m);
    return b;
}

static const int32_t prompt[3] = {5, 6, 7};

/* Places a request on colocated instance x and accepts it; returns the cluster id. */
static uint64_t run_colocated(rt_cluster_t *c, rt_daemon_t *x, void *cl, uint64_t cid)
{
    assert_int_equal(rt_generate(cl, cid, prompt, 3, 6), 0);
    uint64_t id = expect_assign(c, x, BATON__ROLE__COLOCATED, NULL);
    rt_assign_reply(x, id, BATON__ROLE__COLOCATED, 0);
    return id;
}

/* Streams one token of id (client id cid) from colocated x, ends it, and checks the client's
 * TOKENS and RESULT. */
static void finish_colocated(rt_cluster_t *c, rt_daemon_t *x, void *cl, uint64_t id, uint64_t cid)
{
    int32_t t0 = 4;
    rt_chunk(x, BATON__METHOD__FIRST_TOKEN, id, 0, &t0, 1);
    rt_done(x, id, BATON__ROLE__COLOCATED, BATON__FINISH_REASON__FINISH_EOS, 1, NULL, 0);
    baton__token_chunk__free_unpacked(expect_client(c, cl, BATON__METHOD__TOKENS, cid, 0), NULL);
    Baton__GenerateResult *r = expect_client(c, cl, BATON__METHOD__RESULT, cid, 0);
    baton__generate_result__free_unpacked(r, NULL);
}

static void test_faults_decode_dies_mid_stream_and_the_stream_continues(void **state)
{
    rt_cluster_t *c = start(state, (const char *const[]){"--dead-after-ms", "600", NULL});
    rt_daemon_t *p = rt_daemon_add(c, "p0", BATON__ROLE__PREFILL);
    rt_daemon_t *d0 = rt_daemon_add(c, "d0", BATON__ROLE__DECODE);
    void *cl = rt_client(c);
    assert_int_equal(rt_wait_instances(c, 2, WAIT_MS), 0);
    assert_int_equal(rt_generate(cl, 77, prompt, 3, 6), 0);
    uint64_t id = expect_assign(c, d0, BATON__ROLE__DECODE, NULL);
    rt_assign_reply(d0, id, BATON__ROLE__DECODE, 0);
    expect_assign(c, p, BATON__ROLE__PREFILL, NULL);
    int32_t t0 = 20, t12[2] = {21, 22};
    rt_chunk(p, BATON__METHOD__FIRST_TOKEN, id, 0, &t0, 1);
    rt_done(p, id, BATON__ROLE__PREFILL, BATON__FINISH_REASON__FINISH_LENGTH, 1, NULL, 0);
    rt_chunk(d0, BATON__METHOD__STREAM, id, 1, t12, 2);
    /* One or two TOKENS: the decode's chunk may overtake the first token and be held. */
    for (uint32_t have = 0; have < 3;) {
        Baton__TokenChunk *tc = expect_client(c, cl, BATON__METHOD__TOKENS, 77, 0);
        assert_int_equal(tc->index, have);
        have += (uint32_t)tc->n_ids;
        baton__token_chunk__free_unpacked(tc, NULL);
    }

    d0->silent = 1; /* d0 "dies"; d1 joins */
    rt_daemon_t *d1 = rt_daemon_add(c, "d1", BATON__ROLE__DECODE);
    uint32_t skip = 0;
    uint64_t id2 = expect_assign(c, d1, BATON__ROLE__DECODE, &skip);
    assert_true(id2 != id);
    assert_int_equal(skip, 3); /* the three tokens the client already has */
    rt_assign_reply(d1, id2, BATON__ROLE__DECODE, 0);
    assert_int_equal(expect_assign(c, p, BATON__ROLE__PREFILL, &skip), id2);
    assert_int_equal(skip, 3);
    /* The replay: the prefill's first token again (dropped), then d1 from index 3. A late
     * token from the old attempt is ignored. */
    rt_chunk(p, BATON__METHOD__FIRST_TOKEN, id2, 0, &t0, 1);
    rt_chunk(d0, BATON__METHOD__STREAM, id, 3, t12, 1);
    int32_t t345[3] = {23, 24, 25};
    rt_chunk(d1, BATON__METHOD__STREAM, id2, 3, t345, 3);
    Baton__TokenChunk *tc = expect_client(c, cl, BATON__METHOD__TOKENS, 77, 0);
    assert_int_equal(tc->index, 3);
    assert_int_equal(tc->n_ids, 3);
    assert_int_equal(tc->ids[0], 23);
    baton__token_chunk__free_unpacked(tc, NULL);
    rt_done(p, id2, BATON__ROLE__PREFILL, BATON__FINISH_REASON__FINISH_LENGTH, 1, NULL, 0);
    rt_done(d1, id2, BATON__ROLE__DECODE, BATON__FINISH_REASON__FINISH_LENGTH, 6, NULL, 0);
    Baton__GenerateResult *r = expect_client(c, cl, BATON__METHOD__RESULT, 77, 0);
    assert_int_equal(r->finish_reason, BATON__FINISH_REASON__FINISH_LENGTH);
    assert_int_equal(r->retries, 1);
    assert_int_equal(r->n_ids, 6);
    for (int i = 0; i < 6; i++)
        assert_int_equal(r->ids[i], 20 + i);
    assert_string_equal(r->decode_instance, "d1");
    baton__generate_result__free_unpacked(r, NULL);
}

static void test_faults_failover_gives_up_after_its_timeout(void **state)
{
    rt_cluster_t *c = start(state, (const char *const[]){"--dead-after-ms", "600",
                                                         "--failover-timeout-ms", "300", NULL});
    rt_daemon_t *x = rt_daemon_add(c, "c0", BATON__ROLE__COLOCATED);
    void *cl = rt_client(c);
    assert_int_equal(rt_wait_instances(c, 1, WAIT_MS), 0);
    uint64_t id = run_colocated(c, x, cl, 5);
    int32_t t0 = 1;
    rt_chunk(x, BATON__METHOD__FIRST_TOKEN, id, 0, &t0, 1);
    baton__token_chunk__free_unpacked(expect_client(c, cl, BATON__METHOD__TOKENS, 5, 0), NULL);
    x->silent = 1; /* the only instance dies: nowhere to go */
    Baton__GenerateResult *r = expect_client(c, cl, BATON__METHOD__RESULT, 5, BT_ERR_UNAVAILABLE);
    assert_int_equal(r->finish_reason, BATON__FINISH_REASON__FINISH_FAILED);
    assert_int_equal(r->n_ids, 1); /* what was delivered is in the result */
    assert_int_equal(r->events[r->n_events - 1]->kind, BATON__EVENT_KIND__FAILED);
    assert_int_equal(r->events[r->n_events - 1]->code, BT_ERR_UNAVAILABLE);
    baton__generate_result__free_unpacked(r, NULL);
}

static void test_faults_restart_is_seen_through_the_incarnation(void **state)
{
    rt_cluster_t *c = start(state, NULL);
    rt_daemon_t *x = rt_daemon_add(c, "c0", BATON__ROLE__COLOCATED);
    void *cl = rt_client(c);
    assert_int_equal(rt_wait_instances(c, 1, WAIT_MS), 0);
    uint64_t id = run_colocated(c, x, cl, 6);
    x->incarnation = 2; /* it restarted within dead-after: what it had is gone */
    rt_heartbeat(c, x);
    uint32_t skip = 99;
    uint64_t id2 = expect_assign(c, x, BATON__ROLE__COLOCATED, &skip);
    assert_true(id2 != id);
    assert_int_equal(skip, 0);
    /* and before the failover's ASSIGN, a RESET: the new process drops whatever reached it
     * that was meant for the one before */
    assert_int_equal(x->resets, 2);
    rt_assign_reply(x, id2, BATON__ROLE__COLOCATED, 0);
    int32_t t0 = 3;
    rt_chunk(x, BATON__METHOD__FIRST_TOKEN, id2, 0, &t0, 1);
    rt_done(x, id2, BATON__ROLE__COLOCATED, BATON__FINISH_REASON__FINISH_EOS, 1, NULL, 0);
    baton__token_chunk__free_unpacked(expect_client(c, cl, BATON__METHOD__TOKENS, 6, 0), NULL);
    Baton__GenerateResult *r = expect_client(c, cl, BATON__METHOD__RESULT, 6, 0);
    assert_int_equal(r->retries, 1);
    baton__generate_result__free_unpacked(r, NULL);
}

/* The next ASSIGN{DECODE} on d; its cluster id, and the prefill peer it names in peer. */
static uint64_t expect_decode_assign(rt_cluster_t *c, rt_daemon_t *d, char *peer, size_t cap)
{
    uint64_t id;
    Baton__Assignment *a = next_assign(c, d, BATON__ROLE__DECODE, &id);
    assert_non_null(a->peer_instance);
    snprintf(peer, cap, "%s", a->peer_instance);
    baton__assignment__free_unpacked(a, NULL);
    return id;
}

/* A prefill that died is still alive for the router until its dead-after runs out; the decode
 * side cannot reach it and refuses with BT_ERR_PEER. The failover must go to the other prefill
 * instead of spending every retry on the dead one (the request would fail within a
 * millisecond). */
static void test_faults_unreachable_prefill_peer_is_avoided(void **state)
{
    rt_cluster_t *c = start(state, NULL); /* dead-after 3000 ms: longer than this test */
    rt_daemon_t *p[2] = {rt_daemon_add(c, "p0", BATON__ROLE__PREFILL),
                         rt_daemon_add(c, "p1", BATON__ROLE__PREFILL)};
    rt_daemon_t *d = rt_daemon_add(c, "d0", BATON__ROLE__DECODE);
    void *cl = rt_client(c);
    assert_int_equal(rt_wait_instances(c, 3, WAIT_MS), 0);
    assert_int_equal(rt_generate(cl, 8, prompt, 3, 2), 0);
    char dead[64], peer[64];
    uint64_t id = expect_decode_assign(c, d, dead, sizeof dead);
    rt_daemon_t *gone = strcmp(dead, "p0") == 0 ? p[0] : p[1];
    rt_daemon_t *live = gone == p[0] ? p[1] : p[0];
    gone->silent = 1;
    rt_assign_reply(d, id, BATON__ROLE__DECODE, BT_ERR_PEER);
    uint64_t id2 = expect_decode_assign(c, d, peer, sizeof peer);
    assert_true(id2 != id);
    assert_string_equal(peer, live->id);
    rt_assign_reply(d, id2, BATON__ROLE__DECODE, 0);
    assert_int_equal(expect_assign(c, live, BATON__ROLE__PREFILL, NULL), id2);
    int32_t t0 = 40, t1 = 41;
    rt_chunk(live, BATON__METHOD__FIRST_TOKEN, id2, 0, &t0, 1);
    rt_done(live, id2, BATON__ROLE__PREFILL, BATON__FINISH_REASON__FINISH_LENGTH, 1, NULL, 0);
    rt_chunk(d, BATON__METHOD__STREAM, id2, 1, &t1, 1);
    rt_done(d, id2, BATON__ROLE__DECODE, BATON__FINISH_REASON__FINISH_LENGTH, 2, NULL, 0);
    for (uint32_t have = 0; have < 2;) {
        Baton__TokenChunk *tc = expect_client(c, cl, BATON__METHOD__TOKENS, 8, 0);
        have += (uint32_t)tc->n_ids;
        baton__token_chunk__free_unpacked(tc, NULL);
    }
    Baton__GenerateResult *r = expect_client(c, cl, BATON__METHOD__RESULT, 8, 0);
    assert_int_equal(r->finish_reason, BATON__FINISH_REASON__FINISH_LENGTH);
    assert_int_equal(r->retries, 1);
    assert_int_equal(r->n_ids, 2);
    assert_string_equal(r->prefill_instance, live->id);
    baton__generate_result__free_unpacked(r, NULL);
}

/* A pair member that died is still alive for the router until its dead-after runs out, but
 * its connection is gone: the owner's ASSIGN cannot be sent once the holder has reserved. The
 * holder must give its reservation back and the request go to the live member alone, not be
 * placed on the dead owner again and again until its retries run out (which took 14 ms in a
 * fault-injection run). */
static void test_faults_unreachable_pair_owner_is_avoided(void **state)
{
    rt_cluster_t *c = start(state, NULL); /* dead-after 3000 ms: longer than this test */
    rt_daemon_t *a = rt_pair_add(c, "pa", "pb", BATON__ROLE__PREFILL);
    rt_daemon_t *b = rt_pair_add(c, "pb", "pa", BATON__ROLE__DECODE);
    void *cl = rt_client(c);
    assert_int_equal(rt_wait_instances(c, 2, WAIT_MS), 0);
    assert_int_equal(rt_generate(cl, 9, prompt, 3, 1), 0);
    /* The owner is the member serving prefill; the holder is told first. */
    uint64_t id;
    Baton__Assignment *as = next_assign(c, b, BATON__ROLE__PAIR, &id);
    assert_true(as->replica);
    baton__assignment__free_unpacked(as, NULL);
    rt_daemon_close(a); /* pa dies before the holder answers */
    rt_sleep(c, 200);   /* the router sees its connection end */
    rt_assign_reply(b, id, BATON__ROLE__PAIR, 0);

    /* pb's reservation is given back, and pb now owns the request alone. */
    bt_rpc_msg_t m;
    assert_int_equal(rt_expect(c, b->sock, BATON__METHOD__ABORT, &m, WAIT_MS, NULL), 0);
    assert_int_equal(m.hdr.request_id, id);
    bt_rpc_msg_fini(&m);
    uint64_t id2;
    as = next_assign(c, b, BATON__ROLE__PAIR, &id2);
    assert_false(as->replica);
    assert_int_equal(as->skip_tokens, 0);
    baton__assignment__free_unpacked(as, NULL);
    assert_true(id2 != id);
    rt_assign_reply(b, id2, BATON__ROLE__PAIR, 0);
    int32_t t0 = 50;
    rt_chunk(b, BATON__METHOD__FIRST_TOKEN, id2, 0, &t0, 1);
    rt_done(b, id2, BATON__ROLE__PAIR, BATON__FINISH_REASON__FINISH_LENGTH, 1, NULL, 0);
    baton__token_chunk__free_unpacked(expect_client(c, cl, BATON__METHOD__TOKENS, 9, 0), NULL);
    Baton__GenerateResult *r = expect_client(c, cl, BATON__METHOD__RESULT, 9, 0);
    assert_int_equal(r->finish_reason, BATON__FINISH_REASON__FINISH_LENGTH);
    assert_int_equal(r->retries, 0); /* nothing had started on pa: no failover */
    assert_int_equal(r->n_ids, 1);
    assert_int_equal(r->ids[0], 50);
    assert_string_equal(r->decode_instance, "pb");
    baton__generate_result__free_unpacked(r, NULL);
}

/* Waits until d has had n RESETs, with no other message to it meanwhile. */
static void wait_resets(rt_cluster_t *c, rt_daemon_t *d, int n)
{
    for (uint64_t end = bt_test_now_ms() + WAIT_MS; d->resets < n;) {
        assert_true(bt_test_now_ms() < end);
        bt_rpc_msg_t m;
        assert_int_not_equal(rt_recv(c, d->sock, &m, 20), 0);
    }
    assert_int_equal(d->resets, n);
}

/* Every registration starts with RESET: a daemon the router wrote off (silent past
 * dead-after) that heartbeats again as the same process drops what it still holds, since the
 * router failed it over; and then serves again. */
static void test_faults_revived_instance_is_reset(void **state)
{
    rt_cluster_t *c = start(state, (const char *const[]){"--dead-after-ms", "300",
                                                         "--failover-timeout-ms", "300", NULL});
    rt_daemon_t *x = rt_daemon_add(c, "c0", BATON__ROLE__COLOCATED);
    void *cl = rt_client(c);
    assert_int_equal(rt_wait_instances(c, 1, WAIT_MS), 0);
    wait_resets(c, x, 1);
    run_colocated(c, x, cl, 11);
    x->silent = 1;
    Baton__GenerateResult *r = expect_client(c, cl, BATON__METHOD__RESULT, 11, BT_ERR_UNAVAILABLE);
    baton__generate_result__free_unpacked(r, NULL); /* written off: nowhere to fail over to */
    x->silent = 0; /* it was only stopped: back, still holding the request */
    rt_heartbeat(c, x);
    wait_resets(c, x, 2);
    assert_int_equal(rt_wait_instances(c, 1, WAIT_MS), 0);
    uint64_t id = run_colocated(c, x, cl, 12); /* and it serves again */
    finish_colocated(c, x, cl, id, 12);
}

/* An ABORT of id reaches d: the next message to d, or with others_first, the next ABORT after
 * any other messages. */
static void expect_abort(rt_cluster_t *c, rt_daemon_t *d, uint64_t id, int others_first)
{
    bt_rpc_msg_t m;
    int skipped = 0;
    assert_int_equal(rt_expect(c, d->sock, BATON__METHOD__ABORT, &m, WAIT_MS, &skipped), 0);
    if (!others_first)
        assert_int_equal(skipped, 0);
    assert_int_equal(m.hdr.request_id, id);
    bt_rpc_msg_fini(&m);
}

/* A daemon's heartbeats list what it holds. What the router placed there is left alone; what
 * it does not place there (an id it never gave out, or a request that is over) gets an ABORT,
 * so nothing a daemon holds by mistake holds its memory forever. */
static void test_faults_held_requests_the_router_does_not_know_are_aborted(void **state)
{
    rt_cluster_t *c = start(state, NULL);
    rt_daemon_t *x = rt_daemon_add(c, "c0", BATON__ROLE__COLOCATED);
    void *cl = rt_client(c);
    assert_int_equal(rt_wait_instances(c, 1, WAIT_MS), 0);
    wait_resets(c, x, 1);
    uint64_t id = run_colocated(c, x, cl, 31);
    uint64_t held[2] = {id, id + 1000}; /* the second was never given out */
    x->held = held;
    x->n_held = 1;
    bt_rpc_msg_t m;
    assert_int_not_equal(rt_recv(c, x->sock, &m, 10 * RT_HEARTBEAT_MS), 0); /* placed here */
    x->n_held = 2;
    expect_abort(c, x, id + 1000, 0);
    x->n_held = 1;
    finish_colocated(c, x, cl, id, 31);
    expect_abort(c, x, id, 0); /* over, yet still listed */
    x->n_held = 0;
    assert_int_not_equal(rt_recv(c, x->sock, &m, 10 * RT_HEARTBEAT_MS), 0);

    /* Two heartbeats listing far more than any daemon holds: the router looks at a bounded
     * number of them, aborts those, and goes on serving. */
    size_t n_big = 200000;
    uint64_t *big = malloc(n_big * sizeof *big);
    assert_non_null(big);
    for (size_t i = 0; i < n_big; i++)
        big[i] = id + 5000 + i;
    x->held = big;
    x->n_held = n_big;
    rt_heartbeat(c, x);
    rt_heartbeat(c, x);
    x->n_held = 0;
    assert_int_equal(rt_expect(c, x->sock, BATON__METHOD__ABORT, &m, WAIT_MS, NULL), 0);
    bt_rpc_msg_fini(&m);
    assert_int_equal(rt_generate(cl, 32, prompt, 3, 6), 0);
    int aborts = 0; /* the rest of them, those sent before the ASSIGN */
    assert_int_equal(rt_expect(c, x->sock, BATON__METHOD__ASSIGN, &m, WAIT_MS, &aborts), 0);
    uint64_t id2 = m.hdr.request_id;
    bt_rpc_msg_fini(&m);
    assert_true(aborts < 65536);
    rt_assign_reply(x, id2, BATON__ROLE__COLOCATED, 0);
    finish_colocated(c, x, cl, id2, 32);
    free(big);
}

static void send_handoff(rt_daemon_t *d, uint64_t id, uint32_t n_tokens)
{
    Baton__Handoff h = BATON__HANDOFF__INIT;
    h.n_output_tokens = n_tokens;
    assert_int_equal(rt_send(d->sock, BATON__METHOD__HANDOFF, id, 0, &h.base), 0);
}

/* A pair owner that hands off keeps the KV as the replica, and the holder resumes. A hand-off
 * from a member the router does not hold as the owner (the request is over, or was never
 * there) would leave a replica nothing ever ends: it is ABORTed at once. */
static void test_faults_handoff_from_a_non_owner_is_aborted(void **state)
{
    rt_cluster_t *c = start(state, NULL);
    rt_daemon_t *a = rt_pair_add(c, "pa", "pb", BATON__ROLE__PREFILL);
    rt_daemon_t *b = rt_pair_add(c, "pb", "pa", BATON__ROLE__DECODE);
    void *cl = rt_client(c);
    assert_int_equal(rt_wait_instances(c, 2, WAIT_MS), 0);
    assert_int_equal(rt_generate(cl, 41, prompt, 3, 3), 0);
    uint64_t id, id_owner;
    Baton__Assignment *as = next_assign(c, b, BATON__ROLE__PAIR, &id);
    assert_true(as->replica);
    baton__assignment__free_unpacked(as, NULL);
    rt_assign_reply(b, id, BATON__ROLE__PAIR, 0);
    as = next_assign(c, a, BATON__ROLE__PAIR, &id_owner);
    assert_false(as->replica);
    baton__assignment__free_unpacked(as, NULL);
    assert_int_equal(id_owner, id);
    rt_assign_reply(a, id, BATON__ROLE__PAIR, 0);
    int32_t t[3] = {4, 5, 6};
    rt_chunk(a, BATON__METHOD__FIRST_TOKEN, id, 0, t, 1);
    baton__token_chunk__free_unpacked(expect_client(c, cl, BATON__METHOD__TOKENS, 41, 0), NULL);

    /* The owner hands off: the holder is told to resume after the one token. */
    send_handoff(a, id, 1);
    bt_rpc_msg_t m;
    assert_int_equal(rt_expect(c, b->sock, BATON__METHOD__RESUME, &m, WAIT_MS, NULL), 0);
    assert_int_equal(m.hdr.request_id, id);
    Baton__Resume *res = rt_body(&m);
    assert_int_equal(res->n_output_ids, 1);
    baton__resume__free_unpacked(res, NULL);
    bt_rpc_msg_fini(&m);
    rt_assign_reply(b, id, BATON__ROLE__PAIR, 0);
    rt_chunk(b, BATON__METHOD__STREAM, id, 1, t + 1, 2);
    rt_done(b, id, BATON__ROLE__PAIR, BATON__FINISH_REASON__FINISH_LENGTH, 3, NULL, 0);
    expect_abort(c, a, id, 1); /* pa's replica is not needed any more */
    baton__token_chunk__free_unpacked(expect_client(c, cl, BATON__METHOD__TOKENS, 41, 0), NULL);
    Baton__GenerateResult *r = expect_client(c, cl, BATON__METHOD__RESULT, 41, 0);
    assert_int_equal(r->n_ids, 3);
    assert_string_equal(r->decode_instance, "pb");
    baton__generate_result__free_unpacked(r, NULL);

    /* A late hand-off of the finished request, and one of an id never given out. */
    send_handoff(a, id, 2);
    expect_abort(c, a, id, 1);
    send_handoff(b, id + 777, 1);
    expect_abort(c, b, id + 777, 1);
}

/* The daemon says DONE but its tokens never come (lost on the way): past the finish grace the
 * request runs again from what the client has, instead of failing. */
static void test_faults_lost_stream_runs_again(void **state)
{
    rt_cluster_t *c = start(state, (const char *const[]){"--finish-grace-ms", "200", NULL});
    rt_daemon_t *x = rt_daemon_add(c, "c0", BATON__ROLE__COLOCATED);
    void *cl = rt_client(c);
    assert_int_equal(rt_wait_instances(c, 1, WAIT_MS), 0);
    uint64_t id = run_colocated(c, x, cl, 13);
    int32_t t0 = 30;
    rt_chunk(x, BATON__METHOD__FIRST_TOKEN, id, 0, &t0, 1);
    baton__token_chunk__free_unpacked(expect_client(c, cl, BATON__METHOD__TOKENS, 13, 0), NULL);
    rt_done(x, id, BATON__ROLE__COLOCATED, BATON__FINISH_REASON__FINISH_LENGTH, 3, NULL, 0);
    uint32_t skip = 0;
    uint64_t id2 = expect_assign(c, x, BATON__ROLE__COLOCATED, &skip); /* tokens 1, 2 lost */
    assert_true(id2 != id);
    assert_int_equal(skip, 1);
    rt_assign_reply(x, id2, BATON__ROLE__COLOCATED, 0);
    int32_t t012[3] = {30, 31, 32};
    rt_chunk(x, BATON__METHOD__FIRST_TOKEN, id2, 0, t012, 1);
    rt_chunk(x, BATON__METHOD__STREAM, id2, 1, t012 + 1, 2);
    rt_done(x, id2, BATON__ROLE__COLOCATED, BATON__FINISH_REASON__FINISH_LENGTH, 3, NULL, 0);
    Baton__TokenChunk *tc = expect_client(c, cl, BATON__METHOD__TOKENS, 13, 0);
    assert_int_equal(tc->index, 1);
    assert_int_equal(tc->n_ids, 2);
    baton__token_chunk__free_unpacked(tc, NULL);
    Baton__GenerateResult *r = expect_client(c, cl, BATON__METHOD__RESULT, 13, 0);
    assert_int_equal(r->finish_reason, BATON__FINISH_REASON__FINISH_LENGTH);
    assert_int_equal(r->retries, 1);
    assert_int_equal(r->n_ids, 3);
    assert_int_equal(r->ids[2], 32);
    baton__generate_result__free_unpacked(r, NULL);
}

/* Sends GENERATE and expects an error RESULT with status (no events: never accepted). */
static void expect_refused(rt_cluster_t *c, void *cl, const Baton__GenerateRequest *g, uint64_t id,
                           int status)
{
    assert_int_equal(rt_send(cl, BATON__METHOD__GENERATE, id, 0, &g->base), 0);
    Baton__GenerateResult *r = expect_client(c, cl, BATON__METHOD__RESULT, id, status);
    assert_int_equal(r->finish_reason, BATON__FINISH_REASON__FINISH_FAILED);
    baton__generate_result__free_unpacked(r, NULL);
}

static void test_faults_limits_answer_with_error_codes(void **state)
{
    rt_cluster_t *c =
        start(state, (const char *const[]){"--max-prompt-tokens", "4", "--max-tokens", "10", NULL});
    void *cl = rt_client(c);
    int32_t ids[5] = {1, 2, 3, 4, 5};
    Baton__GenerateRequest g = BATON__GENERATE_REQUEST__INIT;
    Baton__SamplingParams s = BATON__SAMPLING_PARAMS__INIT;
    g.sampling = &s;
    g.prompt_ids = ids;
    g.n_prompt_ids = 5;
    expect_refused(c, cl, &g, 1, BT_ERR_RANGE);
    g.n_prompt_ids = 4;
    g.max_tokens = 11;
    expect_refused(c, cl, &g, 2, BT_ERR_RANGE);
    g.max_tokens = 10;
    s.temperature = -1;
    expect_refused(c, cl, &g, 3, BT_ERR_INVAL);
    s.temperature = 0;
    g.n_prompt_ids = 0;
    g.prompt = "text needs a tokenizer";
    expect_refused(c, cl, &g, 4, BT_ERR_UNSUPPORTED);
    g.prompt = "";
    expect_refused(c, cl, &g, 5, BT_ERR_INVAL);
}

static void test_faults_queue_bound_and_queue_timeout(void **state)
{
    rt_cluster_t *c =
        start(state, (const char *const[]){"--max-queue", "1", "--queue-timeout-ms", "1500", NULL});
    void *cl = rt_client(c);
    /* No instance: the first waits in the queue, the second finds it full. */
    assert_int_equal(rt_generate(cl, 1, prompt, 3, 4), 0);
    Baton__GenerateRequest g = BATON__GENERATE_REQUEST__INIT;
    g.prompt_ids = (int32_t *)prompt;
    g.n_prompt_ids = 3;
    expect_refused(c, cl, &g, 2, BT_ERR_OVERLOADED);
    /* An id already in flight on this connection is refused. */
    assert_int_equal(rt_send(cl, BATON__METHOD__GENERATE, 1, 0, &g.base), 0);
    bt_rpc_msg_t m;
    assert_int_equal(rt_recv(c, cl, &m, WAIT_MS), 0);
    assert_int_equal(m.hdr.request_id, 1);
    assert_int_equal(m.hdr.status, BT_ERR_INVAL);
    bt_rpc_msg_fini(&m);
    /* The first one gives up when no instance comes. */
    Baton__GenerateResult *r = expect_client(c, cl, BATON__METHOD__RESULT, 1, BT_ERR_UNAVAILABLE);
    assert_int_equal(r->n_events, 2); /* ISSUED, FAILED */
    baton__generate_result__free_unpacked(r, NULL);
}

static void send_frames(void *sock, const char *const *frames, const size_t *lens, int n)
{
    for (int i = 0; i < n; i++)
        zmq_send(sock, frames[i], lens[i], i + 1 < n ? ZMQ_SNDMORE : 0);
}

static void expect_error(rt_cluster_t *c, void *sock, int status)
{
    bt_rpc_msg_t m;
    assert_int_equal(rt_recv(c, sock, &m, WAIT_MS), 0);
    assert_int_equal(m.hdr.status, status);
    bt_rpc_msg_fini(&m);
}

static void test_faults_malformed_and_unknown_messages(void **state)
{
    rt_cluster_t *c = start(state, NULL);
    void *cl = rt_client(c);
    rt_daemon_t *x = rt_daemon_add(c, "c0", BATON__ROLE__COLOCATED);
    assert_int_equal(rt_wait_instances(c, 1, WAIT_MS), 0);
    const char *garbage[] = {"\xff\xfe\x01", ""};
    size_t glen[] = {3, 0};
    send_frames(cl, garbage, glen, 2); /* a header that does not parse */
    expect_error(c, cl, BT_ERR_FORMAT);
    send_frames(cl, garbage, glen, 1); /* one frame only */
    expect_error(c, cl, BT_ERR_FORMAT);
    bt_rpc_header_t h;
    bt_rpc_header_init(&h, (Baton__Method)99, 7); /* unknown method */
    bt_rpc_send(cl, NULL, &h, NULL, 0);
    expect_error(c, cl, BT_ERR_UNSUPPORTED);
    bt_rpc_header_init(&h, BATON__METHOD__HEALTH, 8);
    h.version = 2;
    bt_rpc_send(cl, NULL, &h, NULL, 0);
    expect_error(c, cl, BT_ERR_UNSUPPORTED);
    rt_send(cl, BATON__METHOD__HEARTBEAT, 9, 0, NULL); /* a daemon method from a client */
    expect_error(c, cl, BT_ERR_UNSUPPORTED);
    const char *bad_body[] = {NULL, "\x0a\xff\xff"};
    Baton__Header ph = BATON__HEADER__INIT;
    ph.version = 1;
    ph.method = BATON__METHOD__GENERATE;
    ph.request_id = 10;
    uint8_t hbuf[64];
    size_t hlen = baton__header__pack(&ph, hbuf);
    bad_body[0] = (const char *)hbuf;
    size_t blen[] = {hlen, 3};
    send_frames(cl, bad_body, blen, 2); /* a GenerateRequest that does not parse */
    expect_error(c, cl, BT_ERR_FORMAT);

    send_frames(x->sock, garbage, glen, 2); /* daemons get answers too */
    expect_error(c, x->sock, BT_ERR_FORMAT);
    int32_t t = 1;
    rt_chunk(x, BATON__METHOD__STREAM, 123456, 0, &t, 1); /* tokens for nobody: ABORT */
    bt_rpc_msg_t m;
    assert_int_equal(rt_expect(c, x->sock, BATON__METHOD__ABORT, &m, WAIT_MS, NULL), 0);
    assert_int_equal(m.hdr.request_id, 123456);
    bt_rpc_msg_fini(&m);
    rt_done(x, 123456, BATON__ROLE__COLOCATED, BATON__FINISH_REASON__FINISH_LENGTH, 1, NULL, 0);

    /* Still serving, and a request still runs end to end; late messages after it are
     * dropped without a second RESULT. */
    uint64_t id = run_colocated(c, x, cl, 11);
    rt_chunk(x, BATON__METHOD__FIRST_TOKEN, id, 0, &t, 1);
    rt_done(x, id, BATON__ROLE__COLOCATED, BATON__FINISH_REASON__FINISH_LENGTH, 1, NULL, 0);
    rt_done(x, id, BATON__ROLE__COLOCATED, BATON__FINISH_REASON__FINISH_LENGTH, 1, NULL, 0);
    baton__token_chunk__free_unpacked(expect_client(c, cl, BATON__METHOD__TOKENS, 11, 0), NULL);
    baton__generate_result__free_unpacked(expect_client(c, cl, BATON__METHOD__RESULT, 11, 0), NULL);
    rt_send(cl, BATON__METHOD__HEALTH, 12, 0, NULL);
    assert_int_equal(rt_recv(c, cl, &m, WAIT_MS), 0);
    assert_int_equal(m.hdr.method, BATON__METHOD__HEALTH); /* nothing else came in between */
    assert_int_equal(m.hdr.request_id, 12);
    bt_rpc_msg_fini(&m);
}

/* A valid message of one of the kinds a client (side 0) or a daemon (side 1) sends, packed
 * into hbuf and bbuf. */
static void fz_template(uint64_t *rng, int side, uint8_t *hbuf, size_t *hlen, uint8_t *bbuf,
                        size_t *blen)
{
    static int32_t ids[8] = {5, 6, 7, 8, 9, 10, 11, 12};
    static char *stops[2] = {"ab", "\n\n"};
    Baton__Header h = BATON__HEADER__INIT;
    h.version = 1;
    h.request_id = 1 + bt_test_rand(rng) % 64;
    ProtobufCMessage *body = NULL;
    Baton__GenerateRequest g = BATON__GENERATE_REQUEST__INIT;
    Baton__SamplingParams sp = BATON__SAMPLING_PARAMS__INIT;
    Baton__Slo slo = BATON__SLO__INIT;
    Baton__Heartbeat hb = BATON__HEARTBEAT__INIT;
    Baton__AssignReply ar = BATON__ASSIGN_REPLY__INIT;
    Baton__TokenChunk tc = BATON__TOKEN_CHUNK__INIT;
    Baton__Done dn = BATON__DONE__INIT;
    int kind = (int)(bt_test_rand(rng) % 4);
    if (side == 0 && kind < 2) {
        h.method = BATON__METHOD__GENERATE;
        g.prompt_ids = ids;
        g.n_prompt_ids = 1 + bt_test_rand(rng) % 8;
        g.max_tokens = 1 + bt_test_rand(rng) % 8;
        sp.temperature = 0.7f;
        sp.top_k = 40;
        sp.seed = bt_test_rand(rng);
        sp.stop = stops;
        sp.n_stop = bt_test_rand(rng) % 3;
        g.sampling = &sp;
        slo.ttft_ms = 500;
        slo.tpot_ms = 50;
        g.slo = &slo;
        g.return_text = kind;
        body = &g.base;
    } else if (side == 0) {
        h.method = kind == 2 ? BATON__METHOD__CANCEL : BATON__METHOD__INFO;
    } else if (kind == 0) {
        h.method = BATON__METHOD__HEARTBEAT;
        hb.instance_id = "fz";
        hb.role = BATON__ROLE__COLOCATED;
        hb.model_id = RT_MODEL_ID;
        hb.kv_free_blocks = hb.kv_total_blocks = 64;
        hb.kv_block_size = 16;
        body = &hb.base;
    } else if (kind == 1) {
        h.method = BATON__METHOD__ASSIGN_REPLY;
        ar.part = BATON__ROLE__COLOCATED;
        body = &ar.base;
    } else if (kind == 2) {
        h.method = bt_test_rand(rng) % 2 ? BATON__METHOD__FIRST_TOKEN : BATON__METHOD__STREAM;
        tc.ids = ids;
        tc.n_ids = 1 + bt_test_rand(rng) % 8;
        tc.index = bt_test_rand(rng) % 4;
        tc.text = (ProtobufCBinaryData){3, (uint8_t *)"a\0b"};
        body = &tc.base;
    } else {
        h.method = BATON__METHOD__DONE;
        dn.part = BATON__ROLE__COLOCATED;
        dn.finish_reason = BATON__FINISH_REASON__FINISH_LENGTH;
        dn.n_output_tokens = bt_test_rand(rng) % 8;
        body = &dn.base;
    }
    *hlen = baton__header__pack(&h, hbuf);
    *blen = body ? protobuf_c_message_pack(body, bbuf) : 0;
}

/* Flips, replaces, inserts or removes a byte, or cuts the buffer short. */
/* Mutated messages from a client and from a daemon: valid protocol messages of every kind
 * each side sends, with a few bytes of the header or the body changed, inserted or removed,
 * sometimes as one frame or three. The router answers what it can, and afterwards still
 * serves a request end to end and answers HEALTH. */
static void test_faults_mutated_messages(void **state)
{
    rt_cluster_t *c = start(state, (const char *const[]){"--dead-after-ms", "500", NULL});
    rt_auto_start(c, "auto0", NULL);
    rt_daemon_t *fz = rt_daemon_add(c, "fz", BATON__ROLE__COLOCATED);
    void *cl = rt_client(c);
    assert_int_equal(rt_wait_instances(c, 2, WAIT_MS), 0);
    uint64_t rng = 0x9e3779b97f4a7c15ull;
    uint8_t hbuf[256], bbuf[1024];
    for (int i = 0; i < 3000; i++) {
        int side = (int)(bt_test_rand(&rng) % 2);
        size_t hlen, blen;
        fz_template(&rng, side, hbuf, &hlen, bbuf, &blen);
        for (int k = 1 + (int)(bt_test_rand(&rng) % 3); k > 0; k--) {
            if (bt_test_rand(&rng) % 2)
                bt_test_mutate(&rng, hbuf, &hlen, sizeof hbuf);
            else
                bt_test_mutate(&rng, bbuf, &blen, sizeof bbuf);
        }
        const char *frames[3] = {(const char *)hbuf, (const char *)bbuf, "x"};
        size_t lens[3] = {hlen, blen, 1};
        int nf = bt_test_rand(&rng) % 8 == 0 ? 1 + 2 * (int)(bt_test_rand(&rng) % 2) : 2;
        send_frames(side ? fz->sock : cl, frames, lens, nf);
        if (i % 100 == 99) { /* take what came back, so that no queue fills */
            bt_rpc_msg_t m;
            while (rt_recv(c, cl, &m, 0) == 0)
                bt_rpc_msg_fini(&m);
            while (rt_recv(c, fz->sock, &m, 0) == 0)
                bt_rpc_msg_fini(&m);
        }
    }
    /* The fuzzing daemon (and any instance its mutated heartbeats made up) goes quiet and is
     * dropped; a fresh client's request then runs on the automatic daemon. */
    fz->silent = 1;
    usleep(1500 * 1000);
    void *cl2 = rt_client(c);
    assert_int_equal(rt_generate(cl2, 77, prompt, 3, 4), 0);
    for (;;) {
        bt_rpc_msg_t m;
        assert_int_equal(rt_recv(c, cl2, &m, WAIT_MS), 0);
        int done = m.hdr.method == BATON__METHOD__RESULT;
        if (done) {
            assert_int_equal(m.hdr.request_id, 77);
            assert_int_equal(m.hdr.status, 0);
            Baton__GenerateResult *r = rt_body(&m);
            assert_int_equal(r->n_ids, 4);
            assert_int_equal(r->ids[0], prompt[0] * 100);
            baton__generate_result__free_unpacked(r, NULL);
        }
        bt_rpc_msg_fini(&m);
        if (done)
            break;
    }
    rt_send(cl2, BATON__METHOD__HEALTH, 78, 0, NULL);
    bt_rpc_msg_t m;
    assert_int_equal(rt_recv(c, cl2, &m, WAIT_MS), 0);
    assert_int_equal(m.hdr.method, BATON__METHOD__HEALTH);
    assert_int_equal(m.hdr.request_id, 78);
    assert_int_equal(m.hdr.status, 0);
    bt_rpc_msg_fini(&m);
}

/* A raw connection to an ipc endpoint ("ipc://PATH"), with bytes written to it at once. */
static int raw_connect(const char *endpoint, const void *bytes, size_t n)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", endpoint + strlen("ipc://"));
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    if (n)
        assert_int_equal(write(fd, bytes, n), (ssize_t)n);
    return fd;
}

/* Reads fd until the router closes it; 0, or -1 at the deadline. */
static int closed_by_router(rt_cluster_t *c, int fd)
{
    char buf[256];
    for (int waited = 0; waited < WAIT_MS; waited += 20) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 20) == 1 && read(fd, buf, sizeof buf) <= 0)
            return 0;
        rt_pump(c);
    }
    return -1;
}

/* Connections that break ZeroMQ's wire protocol on either endpoint are closed by the router
 * alone: garbage, a greeting with another security mechanism, a frame claiming a terabyte, a
 * connection that stops halfway through its greeting. A request in flight meanwhile completes
 * and the router keeps answering. */
static void test_faults_broken_connections_do_not_disturb_serving(void **state)
{
    rt_cluster_t *c = start(state, NULL);
    void *cl = rt_client(c);
    rt_daemon_t *x = rt_daemon_add(c, "c0", BATON__ROLE__COLOCATED);
    assert_int_equal(rt_wait_instances(c, 1, WAIT_MS), 0);
    uint64_t id = run_colocated(c, x, cl, 21);

    uint8_t greeting[64] = {0xff, 0, 0, 0, 0, 0, 0, 0, 1, 0x7f, 3, 0};
    memcpy(greeting + 12, "NULL", 4);
    uint8_t curve[64];
    memcpy(curve, greeting, sizeof curve);
    memcpy(curve + 12, "CURVE", 5);
    uint8_t huge[64 + 9 + 27];
    memcpy(huge, greeting, 64);
    huge[64] = 0x04; /* READY */
    huge[65] = 25;
    memcpy(huge + 66,
           "\x05READY\x0bSocket-Type\x00\x00\x00\x06"
           "DEALER",
           25);
    const uint8_t big[9] = {0x02, 0, 0, 1, 0, 0, 0, 0, 0}; /* a frame of 2^40 bytes */
    memcpy(huge + 91, big, 9);
    char garbage[64];
    memset(garbage, 'G', sizeof garbage);
    const char *eps[2] = {c->client_ep, c->cluster_ep};
    int fds[2][4];
    for (int e = 0; e < 2; e++) {
        fds[e][0] = raw_connect(eps[e], garbage, sizeof garbage);
        fds[e][1] = raw_connect(eps[e], curve, sizeof curve);
        fds[e][2] = raw_connect(eps[e], huge, sizeof huge);
        fds[e][3] = raw_connect(eps[e], greeting, 30); /* then nothing */
    }
    for (int e = 0; e < 2; e++)
        for (int k = 0; k < 3; k++)
            assert_int_equal(closed_by_router(c, fds[e][k]), 0);

    int32_t t = 1;
    rt_chunk(x, BATON__METHOD__FIRST_TOKEN, id, 0, &t, 1);
    rt_done(x, id, BATON__ROLE__COLOCATED, BATON__FINISH_REASON__FINISH_LENGTH, 1, NULL, 0);
    baton__token_chunk__free_unpacked(expect_client(c, cl, BATON__METHOD__TOKENS, 21, 0), NULL);
    baton__generate_result__free_unpacked(expect_client(c, cl, BATON__METHOD__RESULT, 21, 0), NULL);
    bt_rpc_msg_t m;
    rt_send(cl, BATON__METHOD__HEALTH, 22, 0, NULL);
    assert_int_equal(rt_recv(c, cl, &m, WAIT_MS), 0);
    assert_int_equal(m.hdr.method, BATON__METHOD__HEALTH);
    bt_rpc_msg_fini(&m);
    for (int e = 0; e < 2; e++)
        for (int k = 0; k < 4; k++)
            close(fds[e][k]);
}

static void test_faults_sigterm_drains_then_exits_zero(void **state)
{
    rt_cluster_t *c = start(state, NULL);
    rt_daemon_t *x = rt_daemon_add(c, "c0", BATON__ROLE__COLOCATED);
    void *cl = rt_client(c);
    assert_int_equal(rt_wait_instances(c, 1, WAIT_MS), 0);
    uint64_t id = run_colocated(c, x, cl, 1);
    kill(c->proc.pid, SIGTERM);
    int ok = 1; /* HEALTH turns not ok once it drains: load balancers stop sending */
    for (uint64_t hid = 100; ok && hid < 200; hid++) {
        rt_send(cl, BATON__METHOD__HEALTH, hid, 0, NULL);
        bt_rpc_msg_t m;
        assert_int_equal(rt_expect(c, cl, BATON__METHOD__HEALTH, &m, WAIT_MS, NULL), 0);
        Baton__HealthReply *h = rt_body_as(&m, &baton__health_reply__descriptor);
        bt_rpc_msg_fini(&m);
        ok = h->ok;
        baton__health_reply__free_unpacked(h, NULL);
        if (ok)
            rt_sleep(c, 20);
    }
    assert_false(ok);
    Baton__GenerateRequest g = BATON__GENERATE_REQUEST__INIT;
    g.prompt_ids = (int32_t *)prompt;
    g.n_prompt_ids = 3;
    expect_refused(c, cl, &g, 2, BT_ERR_DRAINING);
    assert_int_equal(c->proc.pid != 0 && !bt_proc_wait(&c->proc, 100), 1); /* still serving */
    int32_t t = 4;
    rt_chunk(x, BATON__METHOD__FIRST_TOKEN, id, 0, &t, 1);
    rt_done(x, id, BATON__ROLE__COLOCATED, BATON__FINISH_REASON__FINISH_LENGTH, 1, NULL, 0);
    baton__token_chunk__free_unpacked(expect_client(c, cl, BATON__METHOD__TOKENS, 1, 0), NULL);
    baton__generate_result__free_unpacked(expect_client(c, cl, BATON__METHOD__RESULT, 1, 0), NULL);
    assert_true(bt_proc_wait(&c->proc, WAIT_MS));
    assert_int_equal(bt_proc_exit_code(&c->proc), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_faults_decode_dies_mid_stream_and_the_stream_continues,
                                  teardown),
        cmocka_unit_test_teardown(test_faults_failover_gives_up_after_its_timeout, teardown),
        cmocka_unit_test_teardown(test_faults_restart_is_seen_through_the_incarnation, teardown),
        cmocka_unit_test_teardown(test_faults_unreachable_prefill_peer_is_avoided, teardown),
        cmocka_unit_test_teardown(test_faults_unreachable_pair_owner_is_avoided, teardown),
        cmocka_unit_test_teardown(test_faults_revived_instance_is_reset, teardown),
        cmocka_unit_test_teardown(test_faults_held_requests_the_router_does_not_know_are_aborted,
                                  teardown),
        cmocka_unit_test_teardown(test_faults_handoff_from_a_non_owner_is_aborted, teardown),
        cmocka_unit_test_teardown(test_faults_lost_stream_runs_again, teardown),
        cmocka_unit_test_teardown(test_faults_limits_answer_with_error_codes, teardown),
        cmocka_unit_test_teardown(test_faults_queue_bound_and_queue_timeout, teardown),
        cmocka_unit_test_teardown(test_faults_malformed_and_unknown_messages, teardown),
        cmocka_unit_test_teardown(test_faults_mutated_messages, teardown),
        cmocka_unit_test_teardown(test_faults_broken_connections_do_not_disturb_serving, teardown),
        cmocka_unit_test_teardown(test_faults_sigterm_drains_then_exits_zero, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
