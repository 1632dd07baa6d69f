/* SPDX-License-Identifier: MIT */
/*
 * test_colocated.c - baton-colocated as a real process behind a fake router: greedy tokens
 * equal the engine's own generation for prompts of many lengths, in one continuous batch;
 * cancel frees the KV; bad input is answered and the daemon keeps serving; SIGTERM drains
 * without losing an accepted request; a tiny KV pool preempts and still gives the same tokens.
 */
// ctest-labels: integration
#include "testutil.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/status.h"
#include "servetest.h"

#define COLO BATON_BINARY_DIR "/bin/baton-colocated"

typedef struct {
    const char *preset;
    char model[512];
    fake_router_t r;
    bt_proc_t proc;
    char id[64];
} colo_fixture_t;

/* Starts the daemon with the common test flags plus extra (NULL-terminated, may be NULL). */
static int colo_start(colo_fixture_t *f, const char *kv_mem, const char *const *extra)
{
    snprintf(f->id, sizeof f->id, "colo-test-%d", (int)getpid());
    const char *argv[40] = {COLO,          "--model",
                            f->model,      "--router",
                            f->r.endpoint, "--id",
                            f->id,         "--threads",
                            "1",           "--heartbeat-ms",
                            "50",          "--kv-mem",
                            kv_mem,        "--max-batch-tokens",
                            "128",         "--log-level",
                            "debug"};
    int n = 17;
    for (int i = 0; extra && extra[i] && n < 38; i++)
        argv[n++] = extra[i];
    argv[n] = NULL;
    if (bt_proc_start(&f->proc, (char *const *)argv) != 0)
        return -1;
    if (!fake_router_wait_heartbeats(&f->r, f->id, 1, 20000)) {
        bt_proc_dump_log(&f->proc);
        return -1;
    }
    return 0;
}

static int setup_preset(void **state, const char *preset)
{
    colo_fixture_t *f = calloc(1, sizeof *f);
    if (!f)
        return -1;
    f->preset = preset;
    if (bt_test_make_model(preset, f->model, sizeof f->model) != 0 || fake_router_open(&f->r) != 0)
        return -1;
    *state = f;
    return 0;
}

static int setup_tiny(void **state)
{
    return setup_preset(state, "tiny");
}

static int setup_15m(void **state)
{
    return setup_preset(state, "15m");
}

static int teardown(void **state)
{
    colo_fixture_t *f = *state;
    bt_proc_kill(&f->proc);
    fake_router_close(&f->r);
    remove(f->model);
    free(f);
    return 0;
}

static int prompt_len(int i)
{
    return 1 + (i * 37) % 200;
}

/* Assigns n prompts of varied lengths, request i with sampling sp[i] (sp NULL: all greedy), and
 * checks every token against what the engine alone gives with that sampler on whole rows. */
static void expect_reference_tokens(colo_fixture_t *f, int n, uint64_t rid0, int max_tokens,
                                    int (*len_of)(int), const Baton__SamplingParams *sp)
{
    bt_test_ref_t *ref = bt_test_ref_open(f->model);
    assert_non_null(ref);
    int32_t prompt[300], want[64];
    assert_true(max_tokens <= 64);
    for (int i = 0; i < n; i++) {
        f->r.sampling = sp ? &sp[i] : NULL;
        bt_test_prompt((uint32_t)i, len_of(i), 512, prompt);
        assert_int_equal(fake_router_assign(&f->r, f->id, rid0 + (uint64_t)i,
                                            BATON__ROLE__COLOCATED, prompt, len_of(i), max_tokens,
                                            0),
                         0);
    }
    f->r.sampling = NULL;
    for (int i = 0; i < n; i++) {
        uint64_t rid = rid0 + (uint64_t)i;
        if (!fake_router_wait_done(&f->r, rid, 60000))
            bt_proc_dump_log(&f->proc);
        fake_req_t *q = fake_router_req(&f->r, rid);
        assert_int_equal(q->done, 1);
        assert_int_equal(q->done_status, 0);
        bt_test_prompt((uint32_t)i, len_of(i), 512, prompt);
        int nw = bt_test_ref_run_sampled(ref, prompt, len_of(i), max_tokens, sp ? &sp[i] : NULL, 0,
                                         want);
        assert_int_equal(q->n_ids, nw);
        assert_memory_equal(q->ids, want, (size_t)nw * sizeof(int32_t));
        assert_int_equal(q->first_seen, 1);
        assert_false(q->dup_index);
    }
    bt_test_ref_close(ref);
}

static void test_colocated_matches_engine(void **state)
{
    colo_fixture_t *f = *state;
    assert_int_equal(colo_start(f, "4M", NULL), 0);
    expect_reference_tokens(f, 50, 1000, 24, prompt_len, NULL);
}

/* Requests with every kind of sampling at once, so that forwards mix greedy rows, top-k rows
 * (candidates picked where the logits are) and rows that need the whole vocabulary (no top-k, a
 * repetition penalty): each gets exactly the tokens its own sampler draws from whole rows. */
static void test_colocated_sampling_matches_engine(void **state)
{
    colo_fixture_t *f = *state;
    assert_int_equal(colo_start(f, "4M", NULL), 0);
    enum { N = 25 };
    Baton__SamplingParams sp[N];
    for (int i = 0; i < N; i++) {
        sp[i] = (Baton__SamplingParams)BATON__SAMPLING_PARAMS__INIT;
        sp[i].seed = 100 + (uint64_t)i;
        switch (i % 5) {
        case 0: break; /* greedy */
        case 1: sp[i].temperature = 0.9f, sp[i].top_k = 40; break;
        case 2: sp[i].temperature = 1.3f, sp[i].top_k = 5, sp[i].top_p = 0.8f; break;
        case 3: sp[i].temperature = 0.7f; break; /* whole rows */
        default: sp[i].temperature = 1.0f, sp[i].top_k = 20, sp[i].repeat_penalty = 1.3f;
        }
    }
    expect_reference_tokens(f, N, 3000, 20, prompt_len, sp);
}

/* Sampling without top-k and without a penalty, in every batch: each forward sends each row's
 * best candidates and window total, and a row the candidates cannot decide (a flat
 * distribution, top-p near 1) is read back from the engine. Each request still gets exactly
 * the tokens its own sampler draws from whole rows. */
static void test_colocated_window_sampling_matches_engine(void **state)
{
    colo_fixture_t *f = *state;
    assert_int_equal(colo_start(f, "4M", NULL), 0);
    enum { N = 16 };
    Baton__SamplingParams sp[N];
    for (int i = 0; i < N; i++) {
        sp[i] = (Baton__SamplingParams)BATON__SAMPLING_PARAMS__INIT;
        sp[i].seed = 500 + (uint64_t)i;
        switch (i % 4) {
        case 0: sp[i].temperature = 0.7f; break;
        case 1: sp[i].temperature = 1.0f, sp[i].top_p = 0.9f; break;
        case 2: sp[i].temperature = 0.8f, sp[i].min_p = 0.05f; break;
        default: sp[i].temperature = 1.5f, sp[i].top_p = 0.99f, sp[i].min_p = 0.001f;
        }
    }
    expect_reference_tokens(f, N, 4000, 20, prompt_len, sp);
}

static int short_len(int i)
{
    return 8 + (i * 13) % 50;
}

/* 8 blocks of 16 tokens cannot hold 12 sequences of up to 100 tokens: the batcher must preempt
 * (recompute) and still produce the engine's tokens. */
static void test_colocated_preempts_and_matches(void **state)
{
    colo_fixture_t *f = *state;
    assert_int_equal(colo_start(f, "64K", NULL), 0);
    expect_reference_tokens(f, 12, 2000, 40, short_len, NULL);
    char *log = bt_test_read_file(f->proc.log, NULL);
    assert_non_null(log);
    assert_non_null(strstr(log, "preempted"));
    free(log);
}

typedef struct {
    uint64_t rid0;
    int n;
    int min_tokens;
} progress_t;

static int all_have_tokens(fake_router_t *r, void *arg)
{
    progress_t *p = arg;
    for (int i = 0; i < p->n; i++)
        if (fake_router_req(r, p->rid0 + (uint64_t)i)->n_ids < p->min_tokens)
            return 0;
    return 1;
}

static int idle_and_free(fake_router_t *r, void *arg)
{
    fake_inst_t *in = fake_router_inst(r, arg);
    return in && in->last && in->last->running == 0 && in->last->queue_len == 0 &&
           in->last->kv_total_blocks > 0 && in->last->kv_free_blocks == in->last->kv_total_blocks;
}

/* A heartbeat's held list is exactly the ids rid0 .. rid0 + n - 1, in any order. */
static void expect_held(const Baton__Heartbeat *hb, uint64_t rid0, size_t n)
{
    assert_non_null(hb);
    assert_int_equal(hb->n_held, n);
    for (size_t i = 0; i < n; i++) {
        int found = 0;
        for (size_t j = 0; j < hb->n_held; j++)
            found += hb->held[j] == rid0 + i;
        assert_int_equal(found, 1);
    }
}

static void test_colocated_cancel_frees_kv(void **state)
{
    colo_fixture_t *f = *state;
    const char *extra[] = {"--ctx", "2048", NULL};
    assert_int_equal(colo_start(f, "64M", extra), 0);
    f->r.ignore_eos = 1;
    int32_t prompt[16];
    for (int i = 0; i < 3; i++) {
        bt_test_prompt((uint32_t)i, 16, 32000, prompt);
        assert_int_equal(fake_router_assign(&f->r, f->id, 10 + (uint64_t)i, BATON__ROLE__COLOCATED,
                                            prompt, 16, 2000, 0),
                         0);
    }
    progress_t p = {10, 3, 2};
    assert_true(fake_router_wait(&f->r, all_have_tokens, &p, 30000));
    /* The heartbeats list what is held (the router's check against what it placed here). */
    assert_true(fake_router_wait_heartbeats(&f->r, f->id, 1, 10000));
    expect_held(fake_router_inst(&f->r, f->id)->last, 10, 3);
    for (int i = 0; i < 3; i++)
        assert_int_equal(
            fake_router_send(&f->r, f->id, BATON__METHOD__ABORT, 10 + (uint64_t)i, NULL), 0);
    for (int i = 0; i < 3; i++) {
        assert_true(fake_router_wait_done(&f->r, 10 + (uint64_t)i, 30000));
        fake_req_t *q = fake_router_req(&f->r, 10 + (uint64_t)i);
        assert_int_equal(q->finish, BATON__FINISH_REASON__FINISH_CANCELLED);
        assert_true(q->n_ids < 2000);
        assert_int_equal(q->done, 1);
    }
    assert_true(fake_router_wait(&f->r, idle_and_free, f->id, 10000));
    assert_true(fake_router_wait_heartbeats(&f->r, f->id, 1, 10000));
    expect_held(fake_router_inst(&f->r, f->id)->last, 0, 0);
    /* An abort of something already finished is ignored. */
    assert_int_equal(fake_router_send(&f->r, f->id, BATON__METHOD__ABORT, 10, NULL), 0);
    f->r.ignore_eos = 0;
    assert_int_equal(fake_router_assign(&f->r, f->id, 20, BATON__ROLE__COLOCATED, prompt, 16, 4, 0),
                     0);
    assert_true(fake_router_wait_done(&f->r, 20, 30000));
    assert_int_equal(fake_router_req(&f->r, 20)->done_status, 0);
    assert_int_equal(fake_router_req(&f->r, 10)->done, 1);
}

static int draining_seen(fake_router_t *r, void *arg)
{
    fake_inst_t *in = fake_router_inst(r, arg);
    return in && in->last && in->last->draining;
}

static void test_colocated_sigterm_drains(void **state)
{
    colo_fixture_t *f = *state;
    const char *extra[] = {"--ctx", "2048", NULL};
    assert_int_equal(colo_start(f, "64M", extra), 0);
    f->r.ignore_eos = 1;
    int32_t prompt[16];
    bt_test_prompt(7, 16, 32000, prompt);
    for (uint64_t rid = 30; rid < 34; rid++) {
        assert_int_equal(
            fake_router_assign(&f->r, f->id, rid, BATON__ROLE__COLOCATED, prompt, 16, 800, 0), 0);
        assert_true(fake_router_wait_replied(&f->r, rid, 10000));
    }
    kill(f->proc.pid, SIGTERM);
    assert_true(fake_router_wait(&f->r, draining_seen, f->id, 10000));
    uint64_t late = 40;
    assert_int_equal(
        fake_router_assign(&f->r, f->id, late, BATON__ROLE__COLOCATED, prompt, 16, 4, 0), 0);
    assert_true(fake_router_wait_replied(&f->r, late, 10000));
    assert_int_equal(fake_router_req(&f->r, late)->reply_status, BT_ERR_DRAINING);
    for (uint64_t rid = 30; rid < 34; rid++) {
        assert_true(fake_router_wait_done(&f->r, rid, 60000));
        fake_req_t *q = fake_router_req(&f->r, rid);
        assert_int_equal(q->done_status, 0);
        assert_int_equal(q->finish, BATON__FINISH_REASON__FINISH_LENGTH);
        assert_int_equal(q->n_ids, 800);
    }
    assert_true(bt_proc_wait(&f->proc, 20000));
    assert_int_equal(bt_proc_exit_code(&f->proc), 0);
}

/* Sends header + body frames with a hand-made header. */
static void send_with_header(colo_fixture_t *f, uint32_t version, int method, uint64_t rid,
                             const void *body, size_t body_len)
{
    Baton__Header h = BATON__HEADER__INIT;
    h.version = version;
    h.method = (Baton__Method)method;
    h.request_id = rid;
    uint8_t hbuf[256];
    size_t hlen = baton__header__pack(&h, hbuf);
    const void *frames[2] = {hbuf, body};
    size_t lens[2] = {hlen, body_len};
    assert_int_equal(fake_router_send_raw(&f->r, f->id, frames, lens, 2), 0);
}

static void expect_reply(colo_fixture_t *f, uint64_t rid, int32_t status)
{
    assert_true(fake_router_wait_replied(&f->r, rid, 10000));
    fake_req_t *q = fake_router_req(&f->r, rid);
    assert_int_equal(q->reply_status, status);
    assert_int_equal(q->done, 0);
}

static int errors_seen(fake_router_t *r, void *arg)
{
    uint64_t rid = *(uint64_t *)arg;
    return fake_router_req(r, rid)->errors > 0;
}

static int bad_count(fake_router_t *r, void *arg)
{
    return r->n_bad >= *(int *)arg;
}

static int log_has_reconnected(fake_router_t *r, void *arg)
{
    char *log = bt_test_read_file(((bt_proc_t *)arg)->log, NULL);
    int found = log && strstr(log, "reconnecting");
    free(log);
    return found;
}

static void test_colocated_bad_input_answered(void **state)
{
    colo_fixture_t *f = *state;
    assert_int_equal(colo_start(f, "4M", NULL), 0);
    const char junk[] = "not a protobuf at all \xff\xff\xff";
    const void *one[1] = {junk};
    size_t one_len[1] = {sizeof junk};
    assert_int_equal(fake_router_send_raw(&f->r, f->id, one, one_len, 1), 0);
    const void *five[5] = {junk, junk, junk, junk, junk};
    size_t five_len[5] = {4, 4, 4, 4, 4};
    assert_int_equal(fake_router_send_raw(&f->r, f->id, five, five_len, 5), 0);
    const void *two[2] = {junk, junk};
    size_t two_len[2] = {sizeof junk, 3};
    assert_int_equal(fake_router_send_raw(&f->r, f->id, two, two_len, 2), 0);
    int want_bad = 3;
    assert_true(fake_router_wait(&f->r, bad_count, &want_bad, 10000));

    uint64_t rid = 77;
    send_with_header(f, 99, BATON__METHOD__ASSIGN, rid, NULL, 0); /* unknown version */
    assert_true(fake_router_wait(&f->r, errors_seen, &rid, 10000));
    rid = 78;
    send_with_header(f, 1, 999, rid, NULL, 0); /* unknown method */
    assert_true(fake_router_wait(&f->r, errors_seen, &rid, 10000));
    rid = 79;
    send_with_header(f, 1, BATON__METHOD__GENERATE, rid, NULL, 0); /* not for a daemon */
    assert_true(fake_router_wait(&f->r, errors_seen, &rid, 10000));
    send_with_header(f, 1, BATON__METHOD__ASSIGN, 80, junk, sizeof junk); /* body garbage */
    expect_reply(f, 80, BT_ERR_FORMAT);

    int32_t prompt[600];
    bt_test_prompt(1, 600, 512, prompt);
    prompt[3] = 512; /* outside the vocabulary */
    fake_router_assign(&f->r, f->id, 81, BATON__ROLE__COLOCATED, prompt, 10, 4, 0);
    expect_reply(f, 81, BT_ERR_RANGE);
    prompt[3] = -5;
    fake_router_assign(&f->r, f->id, 82, BATON__ROLE__COLOCATED, prompt, 10, 4, 0);
    expect_reply(f, 82, BT_ERR_RANGE);
    bt_test_prompt(1, 600, 512, prompt);
    fake_router_assign(&f->r, f->id, 83, BATON__ROLE__COLOCATED, prompt, 600, 4, 0);
    expect_reply(f, 83, BT_ERR_RANGE); /* longer than the context */
    fake_router_assign(&f->r, f->id, 84, BATON__ROLE__COLOCATED, prompt, 0, 4, 0);
    expect_reply(f, 84, BT_ERR_INVAL); /* empty */
    fake_router_assign(&f->r, f->id, 85, BATON__ROLE__PREFILL, prompt, 10, 4, 0);
    expect_reply(f, 85, BT_ERR_INVAL); /* a part this daemon does not serve */

    /* A body over the protocol's limit is answered; one so large that ZeroMQ drops the
     * connection makes the daemon reconnect, and it keeps serving. */
    size_t big = (17u << 20), huge_len = (70u << 20);
    char *huge = calloc(1, huge_len);
    assert_non_null(huge);
    send_with_header(f, 1, BATON__METHOD__ASSIGN, 86, huge, big);
    expect_reply(f, 86, BT_ERR_RANGE);
    const void *hf[2] = {huge, huge};
    size_t hl[2] = {16, huge_len};
    assert_int_equal(fake_router_send_raw(&f->r, f->id, hf, hl, 2), 0);
    free(huge);
    /* Heartbeats that arrive after the daemon logged its reconnection can only have come over
     * the new connection: from then on assignments reach it. */
    assert_true(fake_router_wait(&f->r, log_has_reconnected, &f->proc, 20000));
    assert_true(fake_router_wait_heartbeats(&f->r, f->id, 2, 20000));

    for (uint64_t i = 0; i < 3; i++) {
        fake_router_assign(&f->r, f->id, 90 + i, BATON__ROLE__COLOCATED, prompt, 20, 8, 0);
        assert_true(fake_router_wait_done(&f->r, 90 + i, 20000));
        assert_int_equal(fake_router_req(&f->r, 90 + i)->done_status, 0);
        assert_true(fake_router_req(&f->r, 90 + i)->n_ids > 0);
    }
    /* A duplicate of an id in flight is refused without disturbing the first. */
    f->r.ignore_eos = 1;
    fake_router_assign(&f->r, f->id, 95, BATON__ROLE__COLOCATED, prompt, 20, 400, 0);
    fake_router_assign(&f->r, f->id, 95, BATON__ROLE__COLOCATED, prompt, 20, 400, 0);
    assert_true(fake_router_wait_done(&f->r, 95, 20000));
    fake_req_t *q = fake_router_req(&f->r, 95);
    assert_int_equal(q->n_ids, 400);
    assert_int_equal(q->done, 1);
    assert_int_equal(q->done_status, 0);
    assert_true(q->replied >= 1);
    assert_true(bt_proc_wait(&f->proc, 0) == 0); /* still running */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_colocated_matches_engine, setup_tiny, teardown),
        cmocka_unit_test_setup_teardown(test_colocated_preempts_and_matches, setup_tiny, teardown),
        cmocka_unit_test_setup_teardown(test_colocated_window_sampling_matches_engine, setup_tiny,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_colocated_sampling_matches_engine, setup_tiny,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_colocated_bad_input_answered, setup_tiny, teardown),
        cmocka_unit_test_setup_teardown(test_colocated_cancel_frees_kv, setup_15m, teardown),
        cmocka_unit_test_setup_teardown(test_colocated_sigterm_drains, setup_15m, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
