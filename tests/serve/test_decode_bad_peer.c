/* SPDX-License-Identifier: MIT */
/*
 * test_decode_bad_peer.c - a real baton-decode behind a fake router, fed KV by a scripted
 * prefill (baton-kvx-peer) that lies about a request's first token: a token outside the
 * vocabulary in the transfer's completion notice ends that request alone (DONE, FAILED,
 * BT_ERR_FORMAT), while a request already decoding in the same batch keeps streaming to its
 * end and a later request is served as usual.
 *
 * The one thing to know: the peer is not a daemon. It ships whatever blocks of its patterned
 * pool it is told to, so the KV is garbage and the streams are checked for shape (every index
 * once, the right count), not against the engine.
 */
// ctest-labels: integration
#include "testutil.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/model.h"
#include "common/status.h"
#include "kvx/kvx_testlib.h"
#include "servetest.h"

#define N_PROMPT 20
#define LONG_TOKENS 3000 /* the request decoding throughout: long enough to outlive the others */
#define SHORT_TOKENS 8
#define PEER_BLOCKS 16
#define BAD_TOKEN 1000000

typedef struct {
    char model[512];
    fake_router_t r;
    bt_proc_t dec;
    char dec_id[64], peer_id[64];
    tl_helper_t peer;
    uint8_t peer_addr[BT_KVX_ADDRESS_MAX];
    size_t peer_addr_len;
} bp_fixture_t;

static int setup(void **state)
{
    if (access(BATON_BINARY_DIR "/bin/baton-decode", X_OK) != 0 ||
        access(BATON_BINARY_DIR "/bin/baton-kvx-peer", X_OK) != 0) {
        fprintf(stderr, "SKIP: baton-decode/baton-kvx-peer are not built (no kvx)\n");
        return 77;
    }
    bp_fixture_t *f = calloc(1, sizeof *f);
    if (!f || bt_test_make_model("tiny", f->model, sizeof f->model) != 0 ||
        fake_router_open(&f->r) != 0)
        return -1;
    f->peer.fd = -1;
    snprintf(f->dec_id, sizeof f->dec_id, "decode-t%d", (int)getpid());
    snprintf(f->peer_id, sizeof f->peer_id, "prefill-t%d", (int)getpid());
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    bp_fixture_t *f = *state;
    tl_helper_reap(&f->peer);
    bt_proc_kill(&f->dec);
    fake_router_close(&f->r);
    remove(f->model);
    free(f);
    return 0;
}

/* baton-decode with a context long enough for the long request, registered; KV reservations
 * lapse after arrival_ms. */
static void start_decode(bp_fixture_t *f, const char *arrival_ms)
{
    char exe[512];
    snprintf(exe, sizeof exe, "%s/bin/baton-decode", BATON_BINARY_DIR);
    const char *argv[] = {exe,           "--model",        f->model,  "--router",
                          f->r.endpoint, "--id",           f->dec_id, "--threads",
                          "1",           "--kv-mem",       "8M",      "--ctx",
                          "4096",        "--heartbeat-ms", "50",      "--kv-arrival-timeout-ms",
                          arrival_ms,    "--log-level",    "info",    NULL};
    assert_int_equal(bt_proc_start(&f->dec, (char *const *)argv), 0);
    if (!fake_router_wait_heartbeats(&f->r, f->dec_id, 1, 20000))
        bt_proc_dump_log(&f->dec);
    assert_non_null(fake_router_inst(&f->r, f->dec_id));
}

/* The scripted prefill, with a KV layout equal to the decode daemon's: the model id its
 * heartbeat carries, the shape of the model file, the daemon's block size and element type
 * (f32, baton-decode's default). Its pool may have another block count. */
static void start_peer(bp_fixture_t *f)
{
    const Baton__Heartbeat *hb = fake_router_inst(&f->r, f->dec_id)->last;
    assert_non_null(hb);
    bt_model_params_t mp = {.path = f->model};
    bt_model_t *m = NULL;
    assert_int_equal(bt_model_load(&mp, &m), BT_OK);
    tl_helper_spawn(&f->peer);
    /* ... <block size> <type> <blocks> <pattern seed> <peer timeout ms> */
    char *reply = tl_helper_cmd(&f->peer, NULL, "init ucx - %s %s %d %d %d %u f32 %d 7 3000",
                                f->peer_id, hb->model_id, m->hp.n_layers, m->hp.n_kv_heads,
                                m->hp.head_dim, hb->kv_block_size, PEER_BLOCKS);
    bt_model_destroy(m);
    if (strncmp(reply, "ok ", 3) != 0)
        fprintf(stderr, "baton-kvx-peer answered '%s' to init\n", reply);
    assert_true(strncmp(reply, "ok ", 3) == 0);
    f->peer_addr_len = tl_unhex(reply + 3, f->peer_addr, sizeof f->peer_addr);
    free(reply);
    assert_true(f->peer_addr_len > 0);
}

static int streaming(fake_router_t *r, void *arg)
{
    return fake_router_req(r, *(uint64_t *)arg)->n_chunks > 0;
}

static int kv_all_free(fake_router_t *r, void *arg)
{
    fake_inst_t *in = fake_router_inst(r, arg);
    return in && in->last && in->last->kv_total_blocks > 0 &&
           in->last->kv_free_blocks == in->last->kv_total_blocks && in->last->running == 0 &&
           in->last->queue_len == 0;
}

/* Takes the peer's next line starting with "<what> <rid> " (ids are matched whole). */
static void peer_expect(bp_fixture_t *f, const char *what, uint64_t rid)
{
    char prefix[96];
    snprintf(prefix, sizeof prefix, "%s %llu ", what, (unsigned long long)rid);
    free(tl_helper_take(&f->peer, NULL, prefix, 10000));
}

/* The decode part of a request is assigned with the peer as its prefill, and its reservation
 * comes back. */
static fake_req_t *reserve(bp_fixture_t *f, uint64_t rid, int max_tokens)
{
    int32_t prompt[N_PROMPT];
    bt_test_prompt((uint32_t)rid, N_PROMPT, 512, prompt);
    Baton__SamplingParams sp = BATON__SAMPLING_PARAMS__INIT;
    sp.ignore_eos = 1;
    Baton__Assignment a = BATON__ASSIGNMENT__INIT;
    a.part = BATON__ROLE__DECODE;
    a.prompt_ids = prompt;
    a.n_prompt_ids = N_PROMPT;
    a.max_tokens = (uint32_t)max_tokens;
    a.sampling = &sp;
    a.peer_instance = f->peer_id;
    a.peer_kvx_address.data = f->peer_addr;
    a.peer_kvx_address.len = f->peer_addr_len;
    fake_router_req(&f->r, rid);
    assert_int_equal(fake_router_send(&f->r, f->dec_id, BATON__METHOD__ASSIGN, rid, &a.base), 0);
    assert_true(fake_router_wait_replied(&f->r, rid, 10000));
    fake_req_t *q = fake_router_req(&f->r, rid);
    assert_int_equal(q->reply_status, BT_OK);
    assert_int_equal(q->n_resv_blocks, (N_PROMPT + 15) / 16);
    peer_expect(f, "ev reserved BT_OK", rid);
    return q;
}

/* One request's KV from the peer: reserved, then the peer ships blocks src, src + 1, ... of
 * its pool into it and ends the transfer with first_token. */
static void ship(bp_fixture_t *f, uint64_t rid, int max_tokens, int32_t src, int32_t first_token)
{
    fake_req_t *q = reserve(f, rid, max_tokens);
    char list[64];
    int32_t ids[(N_PROMPT + 15) / 16];
    for (int i = 0; i < q->n_resv_blocks; i++)
        ids[i] = src + i;
    tl_list(list, sizeof list, ids, q->n_resv_blocks);
    tl_helper_ok(&f->peer, NULL, "send %llu whole %d %s", (unsigned long long)rid, N_PROMPT, list);
    tl_helper_ok(&f->peer, NULL, "finish %llu %d -", (unsigned long long)rid, (int)first_token);
    peer_expect(f, "ev send-done BT_OK", rid);
}

/* A stream from decode: every output index past the prefill's first token exactly once. */
static void assert_streamed(const fake_req_t *q, int n)
{
    assert_int_equal(q->n_ids, n);
    assert_false(q->dup_index);
    for (int i = 1; i < n; i++) {
        assert_true(q->seen[i]);
        assert_true(q->ids[i] >= 0 && q->ids[i] < 512);
    }
}

static void test_decode_bad_first_token_fails_only_its_request(void **state)
{
    bp_fixture_t *f = *state;
    start_decode(f, "120000");
    start_peer(f);
    uint64_t c = 1, a = 2, b = 3;

    /* C decodes throughout. The first assignment makes decode connect to the peer. */
    ship(f, c, LONG_TOKENS, 0, 5);
    assert_true(fake_router_wait(&f->r, streaming, &c, 10000));

    /* A's first token is outside the vocabulary: A ends alone, having streamed nothing. */
    ship(f, a, SHORT_TOKENS, 2, BAD_TOKEN);
    if (!fake_router_wait_done(&f->r, a, 10000))
        bt_proc_dump_log(&f->dec);
    fake_req_t *qa = fake_router_req(&f->r, a), *qc = fake_router_req(&f->r, c);
    assert_int_equal(qa->done, 1);
    if (qc->done)
        fprintf(stderr, "A (%s) took C down with it: C ended with %s after %u of %d tokens\n",
                bt_status_name(qa->done_status), bt_status_name(qc->done_status), qc->n_output,
                LONG_TOKENS);
    assert_int_equal(qc->done, 0); /* C was in the batch A would have joined, and still is */
    assert_int_equal(qa->done_status, BT_ERR_FORMAT);
    assert_int_equal(qa->finish, BATON__FINISH_REASON__FINISH_FAILED);
    assert_int_equal(qa->n_output, 0);
    assert_int_equal(qa->n_chunks, 0);
    int c_at_a = qc->n_ids;

    /* B, while C still decodes: served as usual. */
    ship(f, b, SHORT_TOKENS, 4, 5);
    assert_true(fake_router_wait_done(&f->r, b, 10000));
    fake_req_t *qb = fake_router_req(&f->r, b);
    assert_int_equal(qb->done_status, BT_OK);
    assert_int_equal(qb->finish, BATON__FINISH_REASON__FINISH_LENGTH);
    assert_int_equal(qb->n_output, SHORT_TOKENS);
    assert_streamed(qb, SHORT_TOKENS);

    /* C streams on past A's end to its full length. */
    if (!fake_router_wait_done(&f->r, c, 20000))
        bt_proc_dump_log(&f->dec);
    assert_int_equal(qc->done, 1);
    assert_int_equal(qc->done_status, BT_OK);
    assert_int_equal(qc->finish, BATON__FINISH_REASON__FINISH_LENGTH);
    assert_int_equal(qc->n_output, LONG_TOKENS);
    assert_true(qc->n_ids > c_at_a);
    assert_streamed(qc, LONG_TOKENS);

    /* Still alive and heartbeating, nothing held; a clean exit on SIGTERM. */
    assert_true(fake_router_wait(&f->r, kv_all_free, f->dec_id, 10000));
    assert_true(fake_router_wait_heartbeats(&f->r, f->dec_id, 2, 5000));
    kill(f->dec.pid, SIGTERM);
    assert_true(bt_proc_wait(&f->dec, 20000));
    if (bt_proc_exit_code(&f->dec) != 0)
        bt_proc_dump_log(&f->dec);
    assert_int_equal(bt_proc_exit_code(&f->dec), 0);
    free(tl_helper_cmd(&f->peer, NULL, "exit"));
}

/* A reservation whose KV never comes (the peer reserved and then sent nothing) lapses after
 * --kv-arrival-timeout-ms: the request ends FAILED with BT_ERR_TIMEOUT, its blocks come back,
 * and the daemon goes on serving. */
static void test_decode_reservation_lapses(void **state)
{
    bp_fixture_t *f = *state;
    start_decode(f, "500");
    start_peer(f);
    uint64_t lost = 1, next = 2;
    reserve(f, lost, SHORT_TOKENS);
    if (!fake_router_wait_done(&f->r, lost, 10000))
        bt_proc_dump_log(&f->dec);
    fake_req_t *q = fake_router_req(&f->r, lost);
    assert_int_equal(q->done, 1);
    assert_int_equal(q->done_status, BT_ERR_TIMEOUT);
    assert_int_equal(q->finish, BATON__FINISH_REASON__FINISH_FAILED);
    assert_true(fake_router_wait(&f->r, kv_all_free, f->dec_id, 10000));

    ship(f, next, SHORT_TOKENS, 0, 5);
    assert_true(fake_router_wait_done(&f->r, next, 10000));
    fake_req_t *qn = fake_router_req(&f->r, next);
    assert_int_equal(qn->done_status, BT_OK);
    assert_streamed(qn, SHORT_TOKENS);
    free(tl_helper_cmd(&f->peer, NULL, "exit"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_decode_bad_first_token_fails_only_its_request, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_decode_reservation_lapses, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
