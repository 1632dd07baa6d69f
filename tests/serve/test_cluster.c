/* SPDX-License-Identifier: MIT */
/*
 * test_cluster.c - whole clusters as users run them: baton-router and daemons as processes on
 * loopback, driven through the client library. Greedy tokens for 50 prompts of varied lengths
 * equal the engine's own generation on every layout (1 prefill + 1 decode, 2 + 2, colocated);
 * concurrent clients each get their own right answers; a cancel frees the KV everywhere; a
 * daemon killed mid-stream costs its clients a retry that completes with the same tokens,
 * never a hang; SIGTERM on a daemon loses no accepted request.
 */
// ctest-labels: integration
#include "testutil.h"

#include <ctype.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "baton_client.h"
#include "kernels/kernels.h"
#include "servetest.h"

#define N_PROMPTS 50

typedef struct {
    char tiny[512];
    char m15[512];
    bt_test_ref_t *ref_tiny;
} cluster_fixture_t;

static int group_setup(void **state)
{
    cluster_fixture_t *f = calloc(1, sizeof *f);
    if (!f || bt_test_make_model("tiny", f->tiny, sizeof f->tiny) != 0 ||
        bt_test_make_model("15m", f->m15, sizeof f->m15) != 0)
        return -1;
    f->ref_tiny = bt_test_ref_open(f->tiny);
    if (!f->ref_tiny)
        return -1;
    *state = f;
    return 0;
}

static int group_teardown(void **state)
{
    cluster_fixture_t *f = *state;
    bt_test_ref_close(f->ref_tiny);
    remove(f->tiny);
    remove(f->m15);
    free(f);
    return 0;
}

static int prompt_len(int i)
{
    return 1 + (i * 37) % 200;
}

/* The prefill and decode daemons are built only with kvx; tests of layouts that need them
 * skip without. */
static void need_daemons(int n_p, int n_d)
{
    if ((n_p && access(BATON_BINARY_DIR "/bin/baton-prefill", X_OK) != 0) ||
        (n_d && access(BATON_BINARY_DIR "/bin/baton-decode", X_OK) != 0)) {
        fprintf(stderr, "SKIP: baton-prefill/baton-decode are not built (no kvx)\n");
        skip();
    }
}

static bt_client_t *connect_client(const bt_cluster_t *c)
{
    bt_client_params_t cp = {.endpoint = c->client_ep, .timeout_ms = 60000};
    bt_client_t *cl = NULL;
    assert_int_equal(bt_client_connect(&cp, &cl), BT_CLIENT_OK);
    return cl;
}

/* Submits prompts [first, first + n) (greedy, max_tokens each) with request ids 1 + i. */
static void submit_range(bt_client_t *cl, int first, int n, int max_tokens, int ignore_eos,
                         int32_t n_vocab)
{
    int32_t prompt[256];
    for (int i = first; i < first + n; i++) {
        bt_test_prompt((uint32_t)i, prompt_len(i), n_vocab, prompt);
        bt_client_gen_params_t p = {.prompt_ids = prompt,
                                    .n_prompt_ids = (size_t)prompt_len(i),
                                    .max_tokens = (uint32_t)max_tokens,
                                    .ignore_eos = ignore_eos,
                                    .request_id = 1 + (uint64_t)i};
        assert_int_equal(bt_client_submit(cl, &p, NULL), BT_CLIENT_OK);
    }
}

/* Collects n results into res[request_id - 1 - first]. */
static void collect(bt_client_t *cl, int first, int n, bt_client_result_t **res)
{
    for (int got = 0; got < n;) {
        bt_client_next_t ev;
        int st = bt_client_next(cl, 60000, &ev);
        assert_int_equal(st, BT_CLIENT_OK);
        if (ev.kind != BT_CLIENT_NEXT_RESULT)
            continue;
        int i = (int)ev.result->request_id - 1 - first;
        assert_true(i >= 0 && i < n && !res[i]);
        res[i] = ev.result;
        got++;
    }
}

static void expect_ref(bt_test_ref_t *ref, int i, const bt_client_result_t *r, int max_tokens)
{
    int32_t prompt[256], want[64];
    bt_test_prompt((uint32_t)i, prompt_len(i), 512, prompt);
    int nw = bt_test_ref_run(ref, prompt, prompt_len(i), max_tokens, 0, want);
    if (r->status != 0 || (int)r->n_ids != nw)
        fprintf(stderr, "request %d: status %d (%s), %zu ids, want %d\n", i, r->status, r->error,
                r->n_ids, nw);
    assert_int_equal(r->status, 0);
    assert_int_equal((int)r->n_ids, nw);
    assert_memory_equal(r->ids, want, (size_t)nw * sizeof(int32_t));
}

/* 50 prompts of 1..199 tokens, 16 tokens each, all in flight at once, on daemons with KV of
 * kv_type ("f32", "f16", "bf16"); ref is the engine with the same KV type. */
static void run_equivalence_kv(cluster_fixture_t *f, int n_p, int n_d, int n_k, const char *kv_type,
                               bt_test_ref_t *ref)
{
    need_daemons(n_p, n_d);
    bt_cluster_t c;
    const char *extra[] = {"--kv-type", kv_type, NULL};
    assert_int_equal(bt_cluster_start(&c, f->tiny, n_p, n_d, n_k, extra), 0);
    bt_client_t *cl = connect_client(&c);
    bt_client_result_t *res[N_PROMPTS] = {0};
    submit_range(cl, 0, N_PROMPTS, 16, 0, 512);
    collect(cl, 0, N_PROMPTS, res);
    for (int i = 0; i < N_PROMPTS; i++) {
        expect_ref(ref, i, res[i], 16);
        if (n_k == 0) /* the two parts ran where the layout says */
            assert_int_equal(strncmp(res[i]->prefill_instance, "prefill-", 8), 0);
        bt_client_result_free(res[i]);
    }
    bt_client_close(cl);
    if (bt_cluster_stop(&c) != 0)
        bt_cluster_dump_logs(&c);
}

static void run_equivalence(cluster_fixture_t *f, int n_p, int n_d, int n_k)
{
    run_equivalence_kv(f, n_p, n_d, n_k, "f32", f->ref_tiny);
}

static void test_cluster_1p1d_matches_engine(void **state)
{
    run_equivalence(*state, 1, 1, 0);
}

/* Request i's sampling: greedy, whole rows (temperature alone; top-p), and top-k. */
static Baton__SamplingParams sampling_of(int i)
{
    Baton__SamplingParams sp = BATON__SAMPLING_PARAMS__INIT;
    sp.seed = 7 + (uint64_t)i;
    switch (i % 4) {
    case 0: break;
    case 1: sp.temperature = 0.9f; break;
    case 2: sp.temperature = 1.2f, sp.top_p = 0.8f; break;
    default: sp.temperature = 0.8f, sp.top_k = 20;
    }
    return sp;
}

/* Sampled requests all at once through 1 prefill + 1 decode: the prefill daemon samples first
 * tokens of whole-row batches on several threads, the decode daemon continues from the same
 * seeded position; every request gets what its own sampler draws from whole rows alone. */
static void test_cluster_1p1d_sampling_matches_engine(void **state)
{
    cluster_fixture_t *f = *state;
    need_daemons(1, 1);
    bt_cluster_t c;
    assert_int_equal(bt_cluster_start(&c, f->tiny, 1, 1, 0, NULL), 0);
    bt_client_t *cl = connect_client(&c);
    bt_client_result_t *res[N_PROMPTS] = {0};
    int32_t prompt[256], want[64];
    for (int i = 0; i < N_PROMPTS; i++) {
        Baton__SamplingParams sp = sampling_of(i);
        bt_test_prompt((uint32_t)i, prompt_len(i), 512, prompt);
        bt_client_gen_params_t p = {.prompt_ids = prompt,
                                    .n_prompt_ids = (size_t)prompt_len(i),
                                    .max_tokens = 16,
                                    .temperature = sp.temperature,
                                    .top_k = sp.top_k,
                                    .top_p = sp.top_p,
                                    .seed = sp.seed,
                                    .request_id = 1 + (uint64_t)i};
        assert_int_equal(bt_client_submit(cl, &p, NULL), BT_CLIENT_OK);
    }
    collect(cl, 0, N_PROMPTS, res);
    for (int i = 0; i < N_PROMPTS; i++) {
        Baton__SamplingParams sp = sampling_of(i);
        bt_test_prompt((uint32_t)i, prompt_len(i), 512, prompt);
        int nw = bt_test_ref_run_sampled(f->ref_tiny, prompt, prompt_len(i), 16, &sp, 0, want);
        assert_int_equal(res[i]->status, 0);
        assert_int_equal((int)res[i]->n_ids, nw);
        assert_memory_equal(res[i]->ids, want, (size_t)nw * sizeof(int32_t));
        bt_client_result_free(res[i]);
    }
    bt_client_close(cl);
    if (bt_cluster_stop(&c) != 0)
        bt_cluster_dump_logs(&c);
}

/* Half-width KV caches: shipped between the daemons as they are, same tokens as the engine with
 * the same cache type. */
static void test_cluster_kv_f16_bf16_match_engine(void **state)
{
    cluster_fixture_t *f = *state;
    bt_test_ref_t *ref = bt_test_ref_open_kv(f->tiny, BT_TYPE_F16);
    assert_non_null(ref);
    run_equivalence_kv(f, 1, 1, 0, "f16", ref);
    bt_test_ref_close(ref);
    ref = bt_test_ref_open_kv(f->tiny, BT_TYPE_BF16);
    assert_non_null(ref);
    run_equivalence_kv(f, 0, 0, 1, "bf16", ref);
    bt_test_ref_close(ref);
}

static void test_cluster_2p2d_matches_engine(void **state)
{
    run_equivalence(*state, 2, 2, 0);
}

static void test_cluster_colocated_matches_engine(void **state)
{
    run_equivalence(*state, 0, 0, 1);
}

typedef struct {
    const bt_cluster_t *c;
    int first, n;
    bt_client_result_t *res[16];
} client_job_t;

static void *client_thread(void *arg)
{
    client_job_t *j = arg;
    bt_client_params_t cp = {.endpoint = j->c->client_ep, .timeout_ms = 60000};
    bt_client_t *cl = NULL;
    if (bt_client_connect(&cp, &cl) != BT_CLIENT_OK)
        return NULL;
    int32_t prompt[256];
    /* Blocking calls, one after another, from four clients at once. */
    for (int i = j->first; i < j->first + j->n; i++) {
        bt_test_prompt((uint32_t)i, prompt_len(i), 512, prompt);
        bt_client_gen_params_t p = {
            .prompt_ids = prompt, .n_prompt_ids = (size_t)prompt_len(i), .max_tokens = 12};
        bt_client_generate(cl, &p, NULL, NULL, &j->res[i - j->first]);
    }
    bt_client_close(cl);
    return NULL;
}

static void run_concurrent_clients(cluster_fixture_t *f, int n_p, int n_d, int n_k)
{
    need_daemons(n_p, n_d);
    bt_cluster_t c;
    assert_int_equal(bt_cluster_start(&c, f->tiny, n_p, n_d, n_k, NULL), 0);
    client_job_t jobs[4];
    pthread_t t[4];
    for (int k = 0; k < 4; k++) {
        jobs[k] = (client_job_t){.c = &c, .first = k * 8, .n = 8};
        pthread_create(&t[k], NULL, client_thread, &jobs[k]);
    }
    for (int k = 0; k < 4; k++)
        pthread_join(t[k], NULL);
    for (int k = 0; k < 4; k++)
        for (int i = 0; i < 8; i++) {
            assert_non_null(jobs[k].res[i]);
            expect_ref(f->ref_tiny, k * 8 + i, jobs[k].res[i], 12);
            bt_client_result_free(jobs[k].res[i]);
        }
    assert_int_equal(bt_cluster_stop(&c), 0);
}

static void test_cluster_concurrent_clients_1p1d(void **state)
{
    run_concurrent_clients(*state, 1, 1, 0);
}

static void test_cluster_concurrent_clients_colocated(void **state)
{
    run_concurrent_clients(*state, 0, 0, 2);
}

static Baton__InfoReply *get_info(const bt_cluster_t *c)
{
    Baton__InfoReply *info = NULL;
    if (bt_cluster_call(c, BATON__METHOD__INFO, &baton__info_reply__descriptor,
                        (ProtobufCMessage **)&info) != 0)
        return NULL;
    return info;
}

/* Waits until every instance reports all of its KV blocks free and nothing running. */
static int all_kv_free(const bt_cluster_t *c, int n_instances, int timeout_ms)
{
    uint64_t end = bt_test_now_ms() + (uint64_t)timeout_ms;
    while (bt_test_now_ms() < end) {
        Baton__InfoReply *info = get_info(c);
        int ok = 0;
        if (info) {
            ok = (int)info->n_instances == n_instances;
            for (size_t i = 0; ok && i < info->n_instances; i++) {
                const Baton__InstanceInfo *x = info->instances[i];
                ok = x->alive && x->running == 0 && x->kv_total_blocks > 0 &&
                     x->kv_free_blocks == x->kv_total_blocks;
            }
            baton__info_reply__free_unpacked(info, NULL);
        }
        if (ok)
            return 1;
        struct timespec ts = {0, 50 * 1000000L};
        nanosleep(&ts, NULL);
    }
    return 0;
}

/* Waits until each of n requests [first, first + n) has streamed at least min_tokens. */
static void wait_streaming(bt_client_t *cl, int first, int n, int min_tokens)
{
    int seen[16] = {0}, ready = 0;
    while (ready < n) {
        bt_client_next_t ev;
        assert_int_equal(bt_client_next(cl, 60000, &ev), BT_CLIENT_OK);
        assert_int_equal(ev.kind, BT_CLIENT_NEXT_CHUNK); /* nothing may finish yet */
        int i = (int)ev.chunk.request_id - 1 - first;
        assert_true(i >= 0 && i < n);
        int before = seen[i];
        seen[i] = (int)(ev.chunk.index + ev.chunk.n_ids);
        ready += before < min_tokens && seen[i] >= min_tokens;
    }
}

static void run_cancel_frees_kv(cluster_fixture_t *f, int n_p, int n_d, int n_k)
{
    need_daemons(n_p, n_d);
    bt_cluster_t c;
    const char *extra[] = {"--ctx", "2048", "--kv-mem", "128M", NULL};
    assert_int_equal(bt_cluster_start(&c, f->m15, n_p, n_d, n_k, extra), 0);
    bt_client_t *cl = connect_client(&c);
    submit_range(cl, 0, 3, 1900, 1, 32000);
    wait_streaming(cl, 0, 3, 2);
    for (int i = 0; i < 3; i++)
        assert_int_equal(bt_client_cancel(cl, 1 + (uint64_t)i), BT_CLIENT_OK);
    bt_client_result_t *res[3] = {0};
    collect(cl, 0, 3, res);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(res[i]->finish_reason, BT_CLIENT_FINISH_CANCELLED);
        assert_true(res[i]->n_ids < 1900);
        bt_client_result_free(res[i]);
    }
    assert_true(all_kv_free(&c, n_p + n_d + n_k, 20000));
    bt_client_close(cl);
    assert_int_equal(bt_cluster_stop(&c), 0);
}

static void test_cluster_cancel_frees_kv_1p1d(void **state)
{
    run_cancel_frees_kv(*state, 1, 1, 0);
}

static void test_cluster_cancel_frees_kv_colocated(void **state)
{
    run_cancel_frees_kv(*state, 0, 0, 2);
}

/* A daemon whose id starts with prefix and that runs requests (heartbeats say so within a few
 * intervals); else the first with that prefix. */
static int pick_victim(const bt_cluster_t *c, const char *prefix)
{
    uint64_t end = bt_test_now_ms() + 5000;
    while (bt_test_now_ms() < end) {
        Baton__InfoReply *info = get_info(c);
        int victim = -1;
        for (size_t i = 0; info && i < info->n_instances && victim < 0; i++)
            for (int d = 0; d < c->n_daemons; d++)
                if (!strcmp(info->instances[i]->id, c->ids[d]) && info->instances[i]->running > 0 &&
                    !strncmp(c->ids[d], prefix, strlen(prefix)))
                    victim = d;
        if (info)
            baton__info_reply__free_unpacked(info, NULL);
        if (victim >= 0)
            return victim;
        struct timespec ts = {0, 50 * 1000000L};
        nanosleep(&ts, NULL);
    }
    for (int d = 0; d < c->n_daemons; d++)
        if (!strncmp(c->ids[d], prefix, strlen(prefix)))
            return d;
    return -1;
}

/* Four long greedy requests; once they stream, one serving daemon is SIGKILLed. Every
 * request must end: the router replays it elsewhere (skip_tokens) and the client sees the
 * same tokens it would have seen, or an explicit error, within the client's timeout. */
static void run_kill_mid_stream(cluster_fixture_t *f, int n_p, int n_d, int n_k,
                                const char *victim_prefix)
{
    need_daemons(n_p, n_d);
    bt_cluster_t c;
    const char *extra[] = {"--ctx", "1024", "--kv-mem", "128M", NULL};
    assert_int_equal(bt_cluster_start(&c, f->m15, n_p, n_d, n_k, extra), 0);
    bt_client_t *cl = connect_client(&c);
    submit_range(cl, 0, 4, 300, 1, 32000);
    wait_streaming(cl, 0, 4, 3);
    int victim = pick_victim(&c, victim_prefix);
    assert_true(victim >= 0);
    bt_proc_kill(&c.daemons[victim]);
    bt_client_result_t *res[4] = {0};
    collect(cl, 0, 4, res);
    bt_test_ref_t *ref = bt_test_ref_open(f->m15);
    assert_non_null(ref);
    int32_t prompt[256], *want = malloc(300 * sizeof(int32_t));
    uint32_t retries = 0;
    for (int i = 0; i < 4; i++) {
        if (res[i]->status != 0) { /* allowed: an explicit error, never a hang */
            fprintf(stderr, "request %d failed explicitly: %s\n", i, res[i]->error);
            assert_int_equal(res[i]->finish_reason, BT_CLIENT_FINISH_FAILED);
        } else {
            bt_test_prompt((uint32_t)i, prompt_len(i), 32000, prompt);
            int nw = bt_test_ref_run(ref, prompt, prompt_len(i), 300, 1, want);
            assert_int_equal((int)res[i]->n_ids, nw);
            assert_memory_equal(res[i]->ids, want, (size_t)nw * sizeof(int32_t));
        }
        retries += res[i]->retries;
        bt_client_result_free(res[i]);
    }
    assert_true(retries >= 1);
    free(want);
    bt_test_ref_close(ref);
    bt_client_close(cl);
    bt_cluster_stop(&c);
}

static void test_cluster_kill_decode_mid_stream(void **state)
{
    run_kill_mid_stream(*state, 1, 2, 0, "decode");
}

static void test_cluster_kill_colocated_mid_stream(void **state)
{
    run_kill_mid_stream(*state, 0, 0, 2, "colocated");
}

/* The router is killed mid-stream and a new one started on the same ports: the client library
 * sees its connection drop and sends its requests again with the tokens they have (the new
 * router knows nothing of them), the daemons re-register and drop what the old router had
 * placed there (RESET). Every stream goes on with no gap and no repeat, greedy and seeded
 * requests end with exactly the engine's tokens, the text streamed is the result's text, which
 * is the tokens' text, and no KV is left held. */
static void test_cluster_router_restart_mid_stream(void **state)
{
    cluster_fixture_t *f = *state;
    need_daemons(1, 1);
    bt_cluster_t c;
    const char *extra[] = {"--ctx", "1024", "--kv-mem", "128M", NULL};
    assert_int_equal(bt_cluster_start(&c, f->m15, 1, 1, 0, extra), 0);
    bt_client_t *cl = connect_client(&c);
    enum { N = 4, T = 200 };
    int32_t prompt[256];
    for (int i = 0; i < N; i++) { /* 0, 2 greedy; 1, 3 seeded sampling */
        Baton__SamplingParams sp = sampling_of(i);
        bt_test_prompt((uint32_t)i, prompt_len(i), 32000, prompt);
        bt_client_gen_params_t p = {.prompt_ids = prompt,
                                    .n_prompt_ids = (size_t)prompt_len(i),
                                    .max_tokens = T,
                                    .ignore_eos = 1,
                                    .temperature = sp.temperature,
                                    .top_k = sp.top_k,
                                    .top_p = sp.top_p,
                                    .seed = sp.seed,
                                    .return_text = 1,
                                    .request_id = 1 + (uint64_t)i};
        assert_int_equal(bt_client_submit(cl, &p, NULL), BT_CLIENT_OK);
    }
    enum { TEXT_CAP = 64 * T };
    char *text = calloc(N, TEXT_CAP), *want_text = malloc(TEXT_CAP);
    size_t text_len[N] = {0};
    uint32_t next[N] = {0};
    bt_client_result_t *res[N] = {0};
    int restarted = 0;
    for (int got = 0, streaming = 0; got < N;) {
        bt_client_next_t ev;
        int st = bt_client_next(cl, 60000, &ev);
        if (st != BT_CLIENT_OK)
            bt_cluster_dump_logs(&c);
        assert_int_equal(st, BT_CLIENT_OK);
        if (ev.kind == BT_CLIENT_NEXT_RESULT) {
            int i = (int)ev.result->request_id - 1;
            assert_true(i >= 0 && i < N && !res[i]);
            res[i] = ev.result;
            got++;
            continue;
        }
        int i = (int)ev.chunk.request_id - 1;
        assert_true(i >= 0 && i < N);
        assert_int_equal(ev.chunk.index, next[i]); /* no gap, no repeat, across the restart */
        streaming += next[i] < 5 && next[i] + ev.chunk.n_ids >= 5;
        next[i] += (uint32_t)ev.chunk.n_ids;
        assert_true(text_len[i] + ev.chunk.text_len < TEXT_CAP);
        memcpy(text + (size_t)i * TEXT_CAP + text_len[i], ev.chunk.text, ev.chunk.text_len);
        text_len[i] += ev.chunk.text_len;
        if (!restarted && streaming == N) { /* all stream, none near its end */
            assert_int_equal(bt_cluster_restart_router(&c), 0);
            restarted = 1;
        }
    }
    assert_true(restarted);
    bt_test_ref_t *ref = bt_test_ref_open(f->m15);
    assert_non_null(ref);
    int32_t *want = malloc(T * sizeof(int32_t));
    for (int i = 0; i < N; i++) {
        Baton__SamplingParams sp = sampling_of(i);
        bt_test_prompt((uint32_t)i, prompt_len(i), 32000, prompt);
        int nw = bt_test_ref_run_sampled(ref, prompt, prompt_len(i), T, &sp, 1, want);
        if (res[i]->status != 0)
            fprintf(stderr, "request %d: %s\n", i, res[i]->error);
        assert_int_equal(res[i]->status, 0);
        assert_int_equal((int)res[i]->n_ids, nw);
        assert_memory_equal(res[i]->ids, want, (size_t)nw * sizeof(int32_t));
        assert_int_equal((int)next[i], nw); /* the stream carried each token once */
        assert_true(res[i]->retries >= 1);  /* it was sent again */
        bt_test_ref_text(ref, prompt[prompt_len(i) - 1], want, nw, want_text, TEXT_CAP);
        assert_int_equal(res[i]->text_len, strlen(want_text));
        assert_memory_equal(res[i]->text, want_text, res[i]->text_len);
        assert_int_equal(text_len[i], res[i]->text_len); /* streamed text: the same, once */
        assert_memory_equal(text + (size_t)i * TEXT_CAP, res[i]->text, text_len[i]);
        bt_client_result_free(res[i]);
    }
    free(want);
    free(text);
    free(want_text);
    bt_test_ref_close(ref);
    assert_true(all_kv_free(&c, 2, 20000)); /* the old router's requests were dropped */
    bt_client_close(cl);
    if (bt_cluster_stop(&c) != 0)
        bt_cluster_dump_logs(&c);
}

/* Text through the cluster: the streamed chunks and the result carry the detokenized text of
 * exactly the ids; a stop string taken from that text ends the same request right before it,
 * across the prefill/decode boundary (held-back text included). */
static void run_text_and_stop(cluster_fixture_t *f, int n_p, int n_d, int n_k)
{
    need_daemons(n_p, n_d);
    bt_cluster_t c;
    assert_int_equal(bt_cluster_start(&c, f->tiny, n_p, n_d, n_k, NULL), 0);
    bt_client_t *cl = connect_client(&c);
    int32_t prompt[32];
    bt_test_prompt(99, 20, 512, prompt);
    bt_client_gen_params_t p = {.prompt_ids = prompt,
                                .n_prompt_ids = 20,
                                .max_tokens = 40,
                                .ignore_eos = 1,
                                .return_text = 1};
    bt_client_result_t *r = NULL;
    assert_int_equal(bt_client_generate(cl, &p, NULL, NULL, &r), BT_CLIENT_OK);
    assert_int_equal(r->status, 0);
    char want[4096];
    bt_test_ref_text(f->ref_tiny, prompt[19], r->ids, (int)r->n_ids, want, sizeof want);
    assert_string_equal(r->text, want);
    /* Three ASCII letters from the middle of the text, first occurrence. */
    size_t len = strlen(want), at = len / 2;
    while (at + 3 < len &&
           !(isalpha((unsigned char)want[at]) && isalpha((unsigned char)want[at + 1]) &&
             isalpha((unsigned char)want[at + 2])))
        at++;
    assert_true(at + 3 < len);
    char stop[4] = {want[at], want[at + 1], want[at + 2], 0};
    size_t first = (size_t)(strstr(want, stop) - want);
    const char *stops[1] = {stop};
    p.stop = stops;
    p.n_stop = 1;
    bt_client_result_t *r2 = NULL;
    assert_int_equal(bt_client_generate(cl, &p, NULL, NULL, &r2), BT_CLIENT_OK);
    assert_int_equal(r2->status, 0);
    assert_int_equal(r2->finish_reason, BT_CLIENT_FINISH_STOP_STRING);
    assert_int_equal(r2->text_len, first);
    assert_memory_equal(r2->text, want, first);
    bt_client_result_free(r);
    bt_client_result_free(r2);
    bt_client_close(cl);
    assert_int_equal(bt_cluster_stop(&c), 0);
}

static void test_cluster_text_and_stop_1p1d(void **state)
{
    run_text_and_stop(*state, 1, 1, 0);
}

static void test_cluster_text_and_stop_colocated(void **state)
{
    run_text_and_stop(*state, 0, 0, 1);
}

/* SIGTERM to every daemon while four requests stream: each finishes in full, then the daemons
 * exit 0. Nothing accepted is lost. */
static void run_sigterm_drains(cluster_fixture_t *f, int n_p, int n_d, int n_k)
{
    need_daemons(n_p, n_d);
    bt_cluster_t c;
    const char *extra[] = {"--ctx", "1024", "--kv-mem", "128M", NULL};
    assert_int_equal(bt_cluster_start(&c, f->m15, n_p, n_d, n_k, extra), 0);
    bt_client_t *cl = connect_client(&c);
    submit_range(cl, 0, 4, 300, 1, 32000);
    wait_streaming(cl, 0, 4, 2);
    for (int d = 0; d < c.n_daemons; d++)
        kill(c.daemons[d].pid, SIGTERM);
    bt_client_result_t *res[4] = {0};
    collect(cl, 0, 4, res);
    for (int i = 0; i < 4; i++) {
        assert_int_equal(res[i]->status, 0);
        assert_int_equal(res[i]->finish_reason, BT_CLIENT_FINISH_LENGTH);
        assert_int_equal((int)res[i]->n_ids, 300);
        assert_int_equal(res[i]->retries, 0);
        bt_client_result_free(res[i]);
    }
    for (int d = 0; d < c.n_daemons; d++) {
        assert_true(bt_proc_wait(&c.daemons[d], 30000));
        assert_int_equal(bt_proc_exit_code(&c.daemons[d]), 0);
    }
    bt_client_close(cl);
    bt_cluster_stop(&c);
}

static void test_cluster_sigterm_drains_1p1d(void **state)
{
    run_sigterm_drains(*state, 1, 1, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cluster_1p1d_matches_engine),
        cmocka_unit_test(test_cluster_1p1d_sampling_matches_engine),
        cmocka_unit_test(test_cluster_kv_f16_bf16_match_engine),
        cmocka_unit_test(test_cluster_2p2d_matches_engine),
        cmocka_unit_test(test_cluster_colocated_matches_engine),
        cmocka_unit_test(test_cluster_concurrent_clients_1p1d),
        cmocka_unit_test(test_cluster_concurrent_clients_colocated),
        cmocka_unit_test(test_cluster_cancel_frees_kv_1p1d),
        cmocka_unit_test(test_cluster_cancel_frees_kv_colocated),
        cmocka_unit_test(test_cluster_kill_decode_mid_stream),
        cmocka_unit_test(test_cluster_kill_colocated_mid_stream),
        cmocka_unit_test(test_cluster_router_restart_mid_stream),
        cmocka_unit_test(test_cluster_sigterm_drains_1p1d),
        cmocka_unit_test(test_cluster_text_and_stop_1p1d),
        cmocka_unit_test(test_cluster_text_and_stop_colocated),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
