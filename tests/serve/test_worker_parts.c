/* SPDX-License-Identifier: MIT */
/*
 * test_worker_parts.c - the small pieces under the daemon skeleton: the bounded queue between
 * its threads, the request-id table, validation of assignments into requests, and per-sequence
 * generation (a token appended from elsewhere continues exactly like one sampled here). Each
 * create ladder is also driven through every allocation failure.
 */
// ctest-labels: unit
#include "testutil.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/alloc.h"
#include "common/model.h"
#include "common/modelgen.h"
#include "common/queue.h"
#include "common/reqtable.h"
#include "common/request.h"
#include "common/seqgen.h"
#include "common/status.h"
#include "common/worker.h"

static void test_queue_fifo_bounded(void **state)
{
    bt_queue_t *q;
    assert_int_equal(bt_queue_create(sizeof(int), 3, &q), BT_OK);
    for (int i = 0; i < 3; i++)
        assert_int_equal(bt_queue_push(q, &i, 0), BT_OK);
    int x = 9;
    assert_int_equal(bt_queue_push(q, &x, 0), BT_ERR_NOSPACE);
    assert_int_equal(bt_queue_push(q, &x, 20), BT_ERR_NOSPACE); /* timed wait, still full */
    assert_int_equal(bt_queue_len(q), 3);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(bt_queue_pop(q, &x, 0), BT_OK);
        assert_int_equal(x, i);
    }
    assert_int_equal(bt_queue_pop(q, &x, 0), BT_AGAIN);
    assert_int_equal(bt_queue_pop(q, &x, 20), BT_AGAIN);
    bt_queue_close(q);
    assert_int_equal(bt_queue_push(q, &x, -1), BT_ERR_NOSPACE);
    assert_int_equal(bt_queue_pop(q, &x, -1), BT_AGAIN);
    bt_queue_destroy(q);
    bt_queue_destroy(NULL);
    assert_int_equal(bt_queue_create(0, 3, &q), BT_ERR_INVAL);
}

static void *producer(void *arg)
{
    bt_queue_t *q = arg;
    for (int i = 0; i < 10000; i++)
        bt_queue_push(q, &i, -1);
    return NULL;
}

static void test_queue_threads_keep_order(void **state)
{
    bt_queue_t *q;
    assert_int_equal(bt_queue_create(sizeof(int), 7, &q), BT_OK);
    pthread_t t;
    pthread_create(&t, NULL, producer, q);
    for (int i = 0; i < 10000; i++) {
        int x = -1;
        assert_int_equal(bt_queue_pop(q, &x, -1), BT_OK);
        assert_int_equal(x, i);
    }
    pthread_join(t, NULL);
    bt_queue_destroy(q);
}

static void *waker(void *arg)
{
    bt_queue_wake(arg);
    return NULL;
}

static void test_queue_wake_releases_waiter(void **state)
{
    bt_queue_t *q;
    assert_int_equal(bt_queue_create(sizeof(int), 2, &q), BT_OK);
    pthread_t t;
    pthread_create(&t, NULL, waker, q);
    int x;
    /* Either the wake-up releases the wait, or it came first and the wait times out. */
    assert_int_equal(bt_queue_pop(q, &x, 2000), BT_AGAIN);
    pthread_join(t, NULL);
    bt_queue_destroy(q);
}

static void test_reqtable_put_get_del_grow(void **state)
{
    bt_reqtable_t t;
    bt_reqtable_init(&t);
    static int vals[5000];
    for (uint64_t i = 0; i < 5000; i++)
        assert_int_equal(bt_reqtable_put(&t, i * 7, &vals[i]), BT_OK);
    assert_int_equal(bt_reqtable_put(&t, 7, &vals[0]), BT_ERR_INVAL);
    assert_int_equal(bt_reqtable_put(&t, 1, NULL), BT_ERR_INVAL);
    assert_int_equal(bt_reqtable_len(&t), 5000);
    for (uint64_t i = 0; i < 5000; i += 2)
        assert_ptr_equal(bt_reqtable_del(&t, i * 7), &vals[i]);
    assert_null(bt_reqtable_del(&t, 0));
    for (uint64_t i = 0; i < 5000; i++)
        assert_ptr_equal(bt_reqtable_get(&t, i * 7), i % 2 ? &vals[i] : NULL);
    size_t pos = 0, n = 0;
    uint64_t id;
    while (bt_reqtable_next(&t, &pos, &id)) {
        assert_int_equal(id % 14, 7);
        n++;
    }
    assert_int_equal(n, 2500);
    bt_reqtable_fini(&t);
}

/* A worker marks each request aborted while it walks its table (RESET, drain timeout): a walk
 * that sets values in place sees every id exactly once, however the probe runs lie. */
static void test_reqtable_set_during_iteration(void **state)
{
    enum { N = 90 };
    static int before[N], after;
    for (uint64_t seed = 1; seed <= 200; seed++) {
        bt_reqtable_t t;
        bt_reqtable_init(&t);
        uint64_t x = seed;
        for (int i = 0; i < N; i++) { /* ids as the router makes them: large, scattered */
            x = x * 6364136223846793005ULL + 1442695040888963407ULL;
            assert_int_equal(bt_reqtable_put(&t, x >> 8, &before[i]), BT_OK);
        }
        assert_null(bt_reqtable_set(&t, 1ULL << 60, &after)); /* absent: nothing added */
        assert_null(bt_reqtable_set(&t, x >> 8, NULL));       /* NULL is not a value */
        assert_int_equal(bt_reqtable_len(&t), N);
        size_t pos = 0, seen = 0;
        uint64_t id;
        void *v;
        while ((v = bt_reqtable_next(&t, &pos, &id)) != NULL) {
            assert_ptr_not_equal(v, &after); /* each id once */
            assert_ptr_equal(bt_reqtable_set(&t, id, &after), v);
            seen++;
        }
        assert_int_equal(seen, N);
        pos = 0;
        while ((v = bt_reqtable_next(&t, &pos, NULL)) != NULL)
            assert_ptr_equal(v, &after);
        bt_reqtable_fini(&t);
    }
}

static void test_reqtable_allocation_failure(void **state)
{
    bt_reqtable_t t;
    bt_reqtable_init(&t);
    int v;
    bt_alloc_fail_at(1);
    assert_int_equal(bt_reqtable_put(&t, 1, &v), BT_ERR_NOMEM);
    bt_alloc_fail_at(0);
    assert_null(bt_reqtable_get(&t, 1));
    assert_int_equal(bt_reqtable_put(&t, 1, &v), BT_OK);
    bt_reqtable_fini(&t);
}

static const bt_req_limits_t limits = {
    .role = BATON__ROLE__COLOCATED, .n_vocab = 100, .n_ctx = 64, .block_size = 16, .max_blocks = 8};

/* An assignment with a prompt of n ids 3..; stop strings and ids set. */
typedef struct {
    Baton__Assignment a;
    Baton__SamplingParams sp;
    int32_t ids[128];
    int32_t stop_ids[2];
    char *stops[2];
} asg_t;

static void asg_init(asg_t *g, int n)
{
    baton__assignment__init(&g->a);
    baton__sampling_params__init(&g->sp);
    for (int i = 0; i < n; i++)
        g->ids[i] = 3 + i % 90;
    g->stop_ids[0] = 2;
    g->stop_ids[1] = 5;
    g->stops[0] = "abc";
    g->stops[1] = "de";
    g->sp.stop_ids = g->stop_ids;
    g->sp.n_stop_ids = 2;
    g->sp.stop = g->stops;
    g->sp.n_stop = 2;
    g->sp.seed = 42;
    g->a.part = BATON__ROLE__COLOCATED;
    g->a.prompt_ids = g->ids;
    g->a.n_prompt_ids = (size_t)n;
    g->a.max_tokens = 10;
    g->a.sampling = &g->sp;
    g->a.peer_instance = "peer-1";
}

static void test_request_copies_and_checks(void **state)
{
    asg_t g;
    asg_init(&g, 20);
    bt_req_t *r = NULL;
    char err[160];
    assert_int_equal(bt_req_from_assignment(&g.a, 7, &limits, &r, err, sizeof err), BT_OK);
    assert_int_equal(r->id, 7);
    assert_int_equal(r->n_prompt, 20);
    assert_memory_equal(r->prompt, g.ids, 20 * sizeof(int32_t));
    assert_int_equal(r->max_ctx, 30);
    assert_int_equal(r->max_tokens, 10);
    assert_int_equal(r->stop.n_stop_strs, 2);
    assert_string_equal(r->stop.stop_strs[1], "de");
    assert_int_equal(r->stop.stop_ids[1], 5);
    assert_int_equal(r->sampling.seed, 42);
    assert_string_equal(r->peer, "peer-1");
    g.ids[0] = 99; /* copied, not borrowed */
    assert_int_equal(r->prompt[0], 3);
    bt_req_event(r, BATON__EVENT_KIND__PREFILL_QUEUED, 0);
    assert_int_equal(r->n_events, 1);
    assert_true(r->events[0].time_ns > 0);
    bt_req_destroy(r);

    g.a.max_tokens = 0; /* up to the context */
    assert_int_equal(bt_req_from_assignment(&g.a, 7, &limits, &r, err, sizeof err), BT_OK);
    assert_int_equal(r->max_ctx, 64);
    bt_req_destroy(r);
    bt_req_destroy(NULL);
}

static void test_request_refuses_bad_input(void **state)
{
    asg_t g;
    bt_req_t *r = NULL;
    char err[160];
    asg_init(&g, 20);
    g.ids[5] = 100;
    assert_int_equal(bt_req_from_assignment(&g.a, 1, &limits, &r, err, sizeof err), BT_ERR_RANGE);
    asg_init(&g, 64);
    assert_int_equal(bt_req_from_assignment(&g.a, 1, &limits, &r, err, sizeof err), BT_ERR_RANGE);
    asg_init(&g, 0);
    assert_int_equal(bt_req_from_assignment(&g.a, 1, &limits, &r, err, sizeof err), BT_ERR_INVAL);
    asg_init(&g, 20);
    g.sp.temperature = -1;
    assert_int_equal(bt_req_from_assignment(&g.a, 1, &limits, &r, err, sizeof err), BT_ERR_INVAL);
    asg_init(&g, 20);
    g.stops[0] = "";
    assert_int_equal(bt_req_from_assignment(&g.a, 1, &limits, &r, err, sizeof err), BT_ERR_INVAL);
    asg_init(&g, 20);
    g.a.part = BATON__ROLE__DECODE;
    assert_int_equal(bt_req_from_assignment(&g.a, 1, &limits, &r, err, sizeof err), BT_ERR_INVAL);
    /* 8 blocks of 16 tokens hold 128 tokens; a context of 200 could outgrow the pool. */
    bt_req_limits_t big_ctx = limits;
    big_ctx.n_ctx = 200;
    asg_init(&g, 100);
    g.a.max_tokens = 100;
    assert_int_equal(bt_req_from_assignment(&g.a, 1, &big_ctx, &r, err, sizeof err), BT_ERR_RANGE);
    assert_non_null(strstr(err, "KV blocks"));
    /* A prefill part needs a reservation matching its prompt. */
    bt_req_limits_t pre = limits;
    pre.role = BATON__ROLE__PREFILL;
    asg_init(&g, 20);
    g.a.part = BATON__ROLE__PREFILL;
    assert_int_equal(bt_req_from_assignment(&g.a, 1, &pre, &r, err, sizeof err), BT_ERR_INVAL);
    Baton__KvReservation kr = BATON__KV_RESERVATION__INIT;
    int32_t blocks[2] = {4, 7};
    kr.block_ids = blocks;
    kr.n_block_ids = 2;
    kr.n_tokens = 20;
    g.a.reservation = &kr;
    assert_int_equal(bt_req_from_assignment(&g.a, 1, &pre, &r, err, sizeof err), BT_OK);
    assert_int_equal(r->resv.n_blocks, 2);
    assert_int_equal(r->resv.blocks[1], 7);
    bt_req_destroy(r);
    kr.n_block_ids = 1;
    assert_int_equal(bt_req_from_assignment(&g.a, 1, &pre, &r, err, sizeof err), BT_ERR_INVAL);
}

static bt_model_t *load_tiny(char *path, size_t cap)
{
    bt_modelgen_params_t mp;
    assert_int_equal(bt_modelgen_preset("tiny", &mp), BT_OK);
    bt_test_tmp_path("seqgen-tiny", path, cap);
    assert_int_equal(bt_modelgen_write(&mp, path), BT_OK);
    bt_model_params_t lp = {.path = path};
    bt_model_t *m = NULL;
    assert_int_equal(bt_model_load(&lp, &m), BT_OK);
    return m;
}

static void fake_logits(float *l, int n, int step)
{
    for (int i = 0; i < n; i++)
        l[i] = (float)((i * 7919 + step * 104729) % 1000) / 100.0f;
}

static void test_seqgen_append_continues_like_sampling(void **state)
{
    char path[512];
    bt_model_t *m = load_tiny(path, sizeof path);
    int32_t n_vocab = m->hp.n_vocab;
    asg_t g;
    asg_init(&g, 12);
    g.sp.temperature = 0.9f;
    g.sp.repeat_penalty = 1.3f;
    g.sp.n_stop = 0;
    g.a.max_tokens = 8;
    g.a.return_text = 1;
    bt_req_limits_t lim = limits;
    lim.n_vocab = n_vocab;
    bt_req_t *r = NULL;
    char err[160];
    assert_int_equal(bt_req_from_assignment(&g.a, 1, &lim, &r, err, sizeof err), BT_OK);
    bt_seqgen_t *a, *b;
    assert_int_equal(bt_seqgen_create(r, m->tok, n_vocab, &a), BT_OK);
    assert_int_equal(bt_seqgen_create(r, m->tok, n_vocab, &b), BT_OK);
    float *la = malloc((size_t)n_vocab * sizeof(float)), *lb = malloc((size_t)n_vocab * 4);
    bt_seqgen_step_t sa, sb;
    fake_logits(la, n_vocab, 0);
    bt_seqgen_sample(a, la, &sa);       /* "prefill" samples the first token */
    bt_seqgen_append(b, sa.token, &sb); /* "decode" takes it over */
    assert_int_equal(sb.index, 0);
    for (int step = 1; sa.finish == BATON__FINISH_REASON__FINISH_NONE; step++) {
        fake_logits(la, n_vocab, step);
        fake_logits(lb, n_vocab, step);
        bt_seqgen_sample(a, la, &sa);
        bt_seqgen_sample(b, lb, &sb);
        assert_int_equal(sa.token, sb.token);
        assert_int_equal(sa.index, (uint32_t)step);
        assert_int_equal(sa.finish, sb.finish);
    }
    assert_int_equal(sa.finish, BATON__FINISH_REASON__FINISH_LENGTH);
    assert_int_equal(bt_seqgen_n_generated(a), 8);
    assert_int_equal(bt_seqgen_len(b), 20);
    assert_memory_equal(bt_seqgen_generated(a), bt_seqgen_generated(b), 8 * sizeof(int32_t));
    free(la);
    free(lb);
    bt_seqgen_destroy(a);
    bt_seqgen_destroy(b);
    bt_req_destroy(r);
    bt_model_destroy(m);
    remove(path);
}

static void test_create_ladders_survive_allocation_failures(void **state)
{
    char path[512];
    bt_model_t *m = load_tiny(path, sizeof path);
    asg_t g;
    asg_init(&g, 12);
    bt_req_limits_t lim = limits;
    lim.n_vocab = m->hp.n_vocab;
    char err[160];
    for (long n = 1;; n++) {
        bt_req_t *r = NULL;
        bt_seqgen_t *sg = NULL;
        bt_queue_t *q = NULL;
        bt_alloc_fail_at(n);
        int st = bt_req_from_assignment(&g.a, 1, &lim, &r, err, sizeof err);
        if (st == BT_OK)
            st = bt_seqgen_create(r, m->tok, m->hp.n_vocab, &sg);
        if (st == BT_OK)
            st = bt_queue_create(8, 4, &q);
        int fired = bt_alloc_fault_fired();
        bt_alloc_fail_at(0);
        assert_int_equal(st == BT_OK, !fired);
        bt_queue_destroy(q);
        bt_seqgen_destroy(sg);
        bt_req_destroy(r);
        if (!fired)
            break;
    }
    bt_model_destroy(m);
    remove(path);
}

static bt_out_t *tok(uint64_t rid, int32_t id, uint32_t index, const char *text)
{
    return bt_out_chunk(BT_OUT_STREAM, rid, &id, 1, text, strlen(text), index);
}

static void test_out_coalesce_joins_ready_tokens(void **state)
{
    bt_req_t req = {.id = 2, .part = BATON__ROLE__DECODE};
    bt_out_t *o[7] = {
        tok(1, 10, 1, "a"), tok(2, 20, 1, "x"),
        tok(1, 11, 2, "b"), bt_out_done(&req, BATON__FINISH_REASON__FINISH_EOS, 2, 0, NULL),
        tok(1, 12, 3, "c"), tok(2, 21, 2, "y"),
        tok(1, 14, 5, "e")};
    bt_out_coalesce(o, 7);
    /* Request 1's tokens 1..3 become one chunk in the first slot. */
    assert_int_equal(o[0]->n_ids, 3);
    assert_int_equal(o[0]->index, 1);
    assert_int_equal(o[0]->ids[2], 12);
    assert_string_equal(o[0]->text, "abc");
    assert_null(o[2]);
    assert_null(o[4]);
    /* Request 2's chunk after its DONE stays apart; a gap (index 5 after 3) is not joined. */
    assert_int_equal(o[1]->n_ids, 1);
    assert_int_equal(o[3]->kind, BT_OUT_DONE);
    assert_non_null(o[5]);
    assert_non_null(o[6]);
    assert_int_equal(o[6]->index, 5);
    for (int i = 0; i < 7; i++)
        bt_out_free(o[i]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_queue_fifo_bounded),
        cmocka_unit_test(test_queue_threads_keep_order),
        cmocka_unit_test(test_queue_wake_releases_waiter),
        cmocka_unit_test(test_reqtable_put_get_del_grow),
        cmocka_unit_test(test_reqtable_set_during_iteration),
        cmocka_unit_test(test_reqtable_allocation_failure),
        cmocka_unit_test(test_request_copies_and_checks),
        cmocka_unit_test(test_request_refuses_bad_input),
        cmocka_unit_test(test_seqgen_append_continues_like_sampling),
        cmocka_unit_test(test_create_ladders_survive_allocation_failures),
        cmocka_unit_test(test_out_coalesce_joins_ready_tokens),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
