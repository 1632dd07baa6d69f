/* SPDX-License-Identifier: MIT */
/*
 * test_disagg.c - baton-prefill and baton-decode as real processes behind a fake router that
 * plays the router's part of the contract by hand: the decode reservation and the prefill
 * assignment that carries it, the first token from prefill and the stream from decode with
 * their lifetime events, a failover replay (skip_tokens) that streams only what the client
 * lacks, back-pressure (BT_ERR_NOSPACE) while KV waits to arrive, an abort before the KV
 * arrived that frees the reservation, and a prefill whose decode peer never connects; the same
 * with the KV streamed layer by layer (--kv-stream layer), whose first layer leaves during the
 * forward.
 */
// ctest-labels: integration
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/status.h"
#include "servetest.h"

typedef struct {
    char model[512];
    fake_router_t r;
    bt_proc_t pre, dec;
    char pre_id[64], dec_id[64];
} pd_fixture_t;

/* extra: more flags (NULL-terminated), or NULL. */
static int start_with(pd_fixture_t *f, bt_proc_t *p, const char *kind, const char *id,
                      const char *kv_mem, const char *const *extra)
{
    char exe[512];
    snprintf(exe, sizeof exe, "%s/bin/baton-%s", BATON_BINARY_DIR, kind);
    const char *argv[32] = {
        exe,  "--model",           f->model, "--router",    f->r.endpoint, "--id",
        id,   "--threads",         "1",      "--kv-mem",    kv_mem,        "--heartbeat-ms",
        "50", "--kv-peer-wait-ms", "1500",   "--log-level", "debug",       NULL};
    for (int n = 17; extra && *extra && n < 31; n++)
        argv[n] = *extra++;
    if (bt_proc_start(p, (char *const *)argv) != 0)
        return -1;
    if (!fake_router_wait_heartbeats(&f->r, id, 1, 20000)) {
        bt_proc_dump_log(p);
        return -1;
    }
    return 0;
}

static int start(pd_fixture_t *f, bt_proc_t *p, const char *kind, const char *id,
                 const char *kv_mem)
{
    return start_with(f, p, kind, id, kv_mem, NULL);
}

static int setup(void **state)
{
    if (access(BATON_BINARY_DIR "/bin/baton-prefill", X_OK) != 0 ||
        access(BATON_BINARY_DIR "/bin/baton-decode", X_OK) != 0) {
        fprintf(stderr, "SKIP: baton-prefill/baton-decode are not built (no kvx)\n");
        return 77;
    }
    pd_fixture_t *f = calloc(1, sizeof *f);
    if (!f || bt_test_make_model("tiny", f->model, sizeof f->model) != 0 ||
        fake_router_open(&f->r) != 0)
        return -1;
    snprintf(f->pre_id, sizeof f->pre_id, "prefill-t%d", (int)getpid());
    snprintf(f->dec_id, sizeof f->dec_id, "decode-t%d", (int)getpid());
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    pd_fixture_t *f = *state;
    bt_proc_kill(&f->pre);
    bt_proc_kill(&f->dec);
    fake_router_close(&f->r);
    remove(f->model);
    free(f);
    return 0;
}

/* Sends an assignment with a peer and, for prefill, the reservation the decode answered. */
static void assign(pd_fixture_t *f, const char *to, uint64_t rid, Baton__Role part,
                   const int32_t *prompt, int n, int max_tokens, uint32_t skip, const char *peer,
                   const fake_req_t *resv_from)
{
    fake_inst_t *pi = fake_router_inst(&f->r, peer);
    Baton__SamplingParams sp = BATON__SAMPLING_PARAMS__INIT;
    Baton__Assignment a = BATON__ASSIGNMENT__INIT;
    Baton__KvReservation kr = BATON__KV_RESERVATION__INIT;
    a.part = part;
    a.prompt_ids = (int32_t *)prompt;
    a.n_prompt_ids = (size_t)n;
    a.max_tokens = (uint32_t)max_tokens;
    a.sampling = &sp;
    a.skip_tokens = skip;
    a.peer_instance = (char *)peer;
    if (pi && pi->last)
        a.peer_kvx_address = pi->last->kvx_address;
    if (resv_from) {
        kr.reservation_id = resv_from->resv_id;
        kr.generation = resv_from->resv_gen;
        kr.block_ids = (int32_t *)resv_from->resv_blocks;
        kr.n_block_ids = (size_t)resv_from->n_resv_blocks;
        kr.n_tokens = (uint32_t)n;
        a.reservation = &kr;
    }
    fake_router_req(&f->r, rid);
    assert_int_equal(fake_router_send(&f->r, to, BATON__METHOD__ASSIGN, rid, &a.base), 0);
}

/* One request by hand: decode first, then prefill with the reservation; waits for both DONEs.
 * The decode side's record is rid, the prefill's rid + 1000000 (the fake router files replies by
 * request id, and both parts share it: the prefill runs under the same id on another socket,
 * so its messages land in the same record). */
static fake_req_t *run_one(pd_fixture_t *f, uint64_t rid, const int32_t *prompt, int n,
                           int max_tokens, uint32_t skip)
{
    assign(f, f->dec_id, rid, BATON__ROLE__DECODE, prompt, n, max_tokens, skip, f->pre_id, NULL);
    assert_true(fake_router_wait_replied(&f->r, rid, 10000));
    fake_req_t *q = fake_router_req(&f->r, rid);
    assert_int_equal(q->reply_status, 0);
    assert_int_equal(q->n_resv_blocks, (n + 15) / 16);
    assign(f, f->pre_id, rid, BATON__ROLE__PREFILL, prompt, n, max_tokens, skip, f->dec_id, q);
    /* Two DONEs: the prefill's and the decode's. */
    uint64_t end = bt_test_now_ms() + 30000;
    while (q->done < 2 && bt_test_now_ms() < end)
        fake_router_poll(&f->r, 50);
    if (q->done < 2) {
        bt_proc_dump_log(&f->pre);
        bt_proc_dump_log(&f->dec);
    }
    assert_int_equal(q->done, 2);
    return q;
}

static void test_disagg_by_hand_matches_engine_and_replays(void **state)
{
    pd_fixture_t *f = *state;
    assert_int_equal(start(f, &f->pre, "prefill", f->pre_id, "4M"), 0);
    assert_int_equal(start(f, &f->dec, "decode", f->dec_id, "4M"), 0);
    f->r.ignore_eos = 1;
    int32_t prompt[100], want[40];
    bt_test_prompt(3, 40, 512, prompt);
    bt_test_ref_t *ref = bt_test_ref_open(f->model);
    assert_non_null(ref);
    int nw = bt_test_ref_run(ref, prompt, 40, 30, 1, want);
    fake_req_t *q = run_one(f, 1, prompt, 40, 30, 0);
    assert_int_equal(q->done_status, 0);
    assert_int_equal(q->first_seen, 1);
    assert_int_equal(q->n_ids, nw);
    assert_memory_equal(q->ids, want, (size_t)nw * sizeof(int32_t));
    assert_false(q->dup_index);
    assert_int_equal(q->finish, BATON__FINISH_REASON__FINISH_LENGTH);
    assert_int_equal(q->n_output, 30);
    /* Each part reports the events it saw, in order. */
    assert_int_equal(q->n_events, 2);
    assert_int_equal(q->event_kinds[0], BATON__EVENT_KIND__DECODE_QUEUED);
    assert_int_equal(q->event_kinds[1], BATON__EVENT_KIND__DECODE_BEGIN);
    assert_int_equal(q->pre_done, 1);
    assert_int_equal(q->pre_status, 0);
    assert_int_equal(q->pre_n_events, 5);
    for (int i = 0; i < 5; i++)
        assert_int_equal(q->pre_event_kinds[i], BATON__EVENT_KIND__PREFILL_QUEUED + i);

    /* A failover replay with 12 tokens already delivered: no FIRST_TOKEN, nothing below 12. */
    q = run_one(f, 2, prompt, 40, 30, 12);
    assert_int_equal(q->done_status, 0);
    assert_int_equal(q->first_seen, 0);
    assert_int_equal(q->n_ids, nw);
    assert_memory_equal(q->ids + 12, want + 12, (size_t)(nw - 12) * sizeof(int32_t));
    for (int i = 0; i < 12; i++)
        assert_int_equal(q->ids[i], 0); /* never streamed */
    bt_test_ref_close(ref);
}

static int kv_all_free(fake_router_t *r, void *arg)
{
    fake_inst_t *in = fake_router_inst(r, arg);
    return in && in->last && in->last->kv_total_blocks > 0 &&
           in->last->kv_free_blocks == in->last->kv_total_blocks && in->last->queue_len == 0;
}

static int done_seen(fake_router_t *r, void *arg)
{
    return fake_router_req(r, *(uint64_t *)arg)->done > 0;
}

/* 4 blocks of 16 tokens. A reservation waiting for its KV holds 3; the next prompt needs 2:
 * BT_ERR_NOSPACE. Aborting the first frees its blocks (after kvx ends the receive). */
static void test_disagg_decode_nospace_and_abort_frees(void **state)
{
    pd_fixture_t *f = *state;
    assert_int_equal(start(f, &f->pre, "prefill", f->pre_id, "4M"), 0);
    assert_int_equal(start(f, &f->dec, "decode", f->dec_id, "32K"), 0);
    fake_inst_t *di = fake_router_inst(&f->r, f->dec_id);
    assert_int_equal(di->last->kv_total_blocks, 4);
    int32_t prompt[64];
    bt_test_prompt(5, 40, 512, prompt);
    uint64_t a = 10, b = 11;
    assign(f, f->dec_id, a, BATON__ROLE__DECODE, prompt, 40, 8, 0, f->pre_id, NULL);
    assert_true(fake_router_wait_replied(&f->r, a, 10000));
    assert_int_equal(fake_router_req(&f->r, a)->reply_status, 0);
    assign(f, f->dec_id, b, BATON__ROLE__DECODE, prompt, 20, 8, 0, f->pre_id, NULL);
    assert_true(fake_router_wait_replied(&f->r, b, 10000));
    assert_int_equal(fake_router_req(&f->r, b)->reply_status, BT_ERR_NOSPACE);
    assert_int_equal(fake_router_req(&f->r, b)->done, 0); /* refused: nothing owed */
    assert_int_equal(fake_router_send(&f->r, f->dec_id, BATON__METHOD__ABORT, a, NULL), 0);
    assert_true(fake_router_wait(&f->r, done_seen, &a, 10000));
    assert_int_equal(fake_router_req(&f->r, a)->finish, BATON__FINISH_REASON__FINISH_CANCELLED);
    assert_true(fake_router_wait(&f->r, kv_all_free, f->dec_id, 10000));
    /* And it serves again. */
    fake_req_t *q = run_one(f, 12, prompt, 20, 4, 0);
    assert_int_equal(q->done_status, 0);
    assert_int_equal(q->n_ids, 4);
}

/* A prefill part whose decode peer never connects computes, sends its first token, and fails
 * after --kv-peer-wait-ms with its KV freed: nothing is stranded. */
static void test_disagg_prefill_without_peer_fails_cleanly(void **state)
{
    pd_fixture_t *f = *state;
    assert_int_equal(start(f, &f->pre, "prefill", f->pre_id, "4M"), 0);
    int32_t prompt[64];
    bt_test_prompt(6, 30, 512, prompt);
    fake_req_t resv = {.resv_id = 20, .n_resv_blocks = 2, .resv_blocks = {0, 1}};
    uint64_t rid = 20;
    assign(f, f->pre_id, rid, BATON__ROLE__PREFILL, prompt, 30, 8, 0, "decode-nobody", &resv);
    assert_true(fake_router_wait(&f->r, done_seen, &rid, 20000));
    fake_req_t *q = fake_router_req(&f->r, rid);
    assert_int_equal(q->reply_status, 0);
    assert_int_equal(q->first_seen, 1);
    assert_int_equal(q->pre_finish, BATON__FINISH_REASON__FINISH_FAILED);
    assert_int_equal(q->pre_status, BT_ERR_UNAVAILABLE);
    assert_true(fake_router_wait(&f->r, kv_all_free, f->pre_id, 10000));
    /* A prefill assignment without a reservation is refused. */
    uint64_t bad = 21;
    assign(f, f->pre_id, bad, BATON__ROLE__PREFILL, prompt, 30, 8, 0, "decode-nobody", NULL);
    assert_true(fake_router_wait_replied(&f->r, bad, 10000));
    assert_int_equal(fake_router_req(&f->r, bad)->reply_status, BT_ERR_INVAL);
}

/* Request rid: a prompt of n tokens (seed rid), 12 greedy tokens, checked against the engine
 * alone. */
static fake_req_t *run_checked(pd_fixture_t *f, bt_test_ref_t *ref, uint64_t rid, int n)
{
    int32_t prompt[160], want[16];
    assert_true(n <= 160);
    bt_test_prompt((uint32_t)rid, n, 512, prompt);
    int nw = bt_test_ref_run(ref, prompt, n, 12, 1, want);
    fake_req_t *q = run_one(f, rid, prompt, n, 12, 0);
    assert_int_equal(q->done_status, 0);
    assert_int_equal(q->pre_status, 0);
    assert_int_equal(q->n_ids, nw);
    assert_memory_equal(q->ids, want, (size_t)nw * sizeof(int32_t));
    return q;
}

/* Layer-wise streaming: the same tokens as the engine alone, and each prompt's first layer is
 * handed to kvx inside its forward (TRANSFER_BEGIN before PREFILL_END), for a prompt computed in
 * one forward and for one computed in three chunks (whose last chunk releases the layers). */
static void test_disagg_layerwise_streams_during_the_forward(void **state)
{
    pd_fixture_t *f = *state;
    const char *layer[] = {"--kv-stream", "layer", "--max-batch-tokens", "64", NULL};
    assert_int_equal(start_with(f, &f->pre, "prefill", f->pre_id, "4M", layer), 0);
    assert_int_equal(start(f, &f->dec, "decode", f->dec_id, "4M"), 0);
    f->r.ignore_eos = 1;
    bt_test_ref_t *ref = bt_test_ref_open(f->model);
    assert_non_null(ref);
    const int n_prompt[] = {40, 150};
    for (int i = 0; i < 2; i++) {
        fake_req_t *q = run_checked(f, ref, 40 + (uint64_t)i, n_prompt[i]);
        const int32_t order[] = {BATON__EVENT_KIND__PREFILL_QUEUED,
                                 BATON__EVENT_KIND__PREFILL_BEGIN,
                                 BATON__EVENT_KIND__TRANSFER_BEGIN, BATON__EVENT_KIND__PREFILL_END,
                                 BATON__EVENT_KIND__TRANSFER_END};
        assert_int_equal(q->pre_n_events, 5);
        assert_memory_equal(q->pre_event_kinds, order, sizeof order);
    }
    bt_test_ref_close(ref);
    assert_true(fake_router_wait(&f->r, kv_all_free, f->pre_id, 10000));
}

/* KV through the transport instead of the mapped pool, over TCP, as daemons on two hosts ship
 * it (--kv-tls tcp --no-kv-map), on kvx's own TCP connection (--kv-tcp auto, the default) or
 * through UCX's TCP transport (--kv-tcp off): the tiny model's blocks are small, so the layers
 * go packed into one message (kvx's "auto"); whole and layer-wise in chunks, the same tokens as
 * the engine alone, and nothing left reserved. */
static void kv_over_tcp(pd_fixture_t *f, const char *tcp)
{
    const char *pre[] = {"--kv-tls",    "tcp",   "--no-kv-map",        "--kv-tcp", tcp,
                         "--kv-stream", "whole", "--max-batch-tokens", "64",       NULL};
    const char *dec[] = {"--kv-tls", "tcp", "--no-kv-map", "--kv-tcp", tcp, NULL};
    assert_int_equal(start_with(f, &f->pre, "prefill", f->pre_id, "4M", pre), 0);
    assert_int_equal(start_with(f, &f->dec, "decode", f->dec_id, "4M", dec), 0);
    f->r.ignore_eos = 1;
    bt_test_ref_t *ref = bt_test_ref_open(f->model);
    assert_non_null(ref);
    const int n_prompt[] = {3, 40, 150};
    for (int i = 0; i < 3; i++)
        run_checked(f, ref, 60 + (uint64_t)i, n_prompt[i]);
    bt_test_ref_close(ref);
    assert_true(fake_router_wait(&f->r, kv_all_free, f->pre_id, 10000));
    assert_true(fake_router_wait(&f->r, kv_all_free, f->dec_id, 10000));
}

static void test_disagg_kv_over_tcp_matches_engine(void **state)
{
    kv_over_tcp(*state, "auto");
}

static void test_disagg_kv_over_ucx_tcp_matches_engine(void **state)
{
    kv_over_tcp(*state, "off");
}

/* A streamed ship whose decode peer never connects: it waits --kv-peer-wait-ms from the end of
 * the prefill, fails, and its KV is freed. */
static void test_disagg_layerwise_without_peer_fails_cleanly(void **state)
{
    pd_fixture_t *f = *state;
    const char *layer[] = {"--kv-stream", "layer", NULL};
    assert_int_equal(start_with(f, &f->pre, "prefill", f->pre_id, "4M", layer), 0);
    int32_t prompt[64];
    bt_test_prompt(8, 30, 512, prompt);
    fake_req_t resv = {.resv_id = 50, .n_resv_blocks = 2, .resv_blocks = {0, 1}};
    uint64_t rid = 50;
    assign(f, f->pre_id, rid, BATON__ROLE__PREFILL, prompt, 30, 8, 0, "decode-nobody", &resv);
    assert_true(fake_router_wait(&f->r, done_seen, &rid, 20000));
    fake_req_t *q = fake_router_req(&f->r, rid);
    assert_int_equal(q->first_seen, 1);
    assert_int_equal(q->pre_finish, BATON__FINISH_REASON__FINISH_FAILED);
    assert_int_equal(q->pre_status, BT_ERR_UNAVAILABLE);
    assert_true(fake_router_wait(&f->r, kv_all_free, f->pre_id, 10000));
}

static void test_disagg_decode_refuses_unreachable_peer(void **state)
{
    pd_fixture_t *f = *state;
    assert_int_equal(start(f, &f->dec, "decode", f->dec_id, "4M"), 0);
    int32_t prompt[64];
    bt_test_prompt(7, 30, 512, prompt);
    uint64_t rid = 30; /* no address for the peer at all */
    assign(f, f->dec_id, rid, BATON__ROLE__DECODE, prompt, 30, 8, 0, "prefill-nobody", NULL);
    assert_true(fake_router_wait_replied(&f->r, rid, 10000));
    assert_int_equal(fake_router_req(&f->r, rid)->reply_status, BT_ERR_INVAL);
    assert_true(fake_router_wait(&f->r, kv_all_free, f->dec_id, 10000));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_disagg_by_hand_matches_engine_and_replays, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_disagg_decode_nospace_and_abort_frees, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_disagg_prefill_without_peer_fails_cleanly, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_disagg_decode_refuses_unreachable_peer, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_disagg_kv_over_tcp_matches_engine, setup, teardown),
        cmocka_unit_test_setup_teardown(test_disagg_kv_over_ucx_tcp_matches_engine, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_disagg_layerwise_streams_during_the_forward, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_disagg_layerwise_without_peer_fails_cleanly, setup,
                                        teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
