/* SPDX-License-Identifier: MIT */
/*
 * test_request.c - a request's stream as the router assembles it: in-order chunks, duplicates
 * and replays dropped, chunks after a gap held until it closes, the max_tokens cap, replay
 * divergence noticed, events sorted by time, and text made from ids with stop strings held
 * back; plus the request table's two indexes.
 */
// ctest-labels: unit
#include "testutil.h"

#include <stdio.h>
#include <string.h>

#include "common/alloc.h"
#include "common/gguf.h"
#include "common/modelgen.h"
#include "common/status.h"
#include "router/reqtable.h"
#include "router/request.h"

static router_request_t *new_request(uint32_t max_tokens, const bt_tokenizer_t *tok, char **stop,
                                     size_t n_stop)
{
    Baton__GenerateRequest *req = bt_calloc(1, sizeof *req);
    Baton__SamplingParams *s = bt_calloc(1, sizeof *s);
    baton__generate_request__init(req);
    baton__sampling_params__init(s);
    /* Build it as a packed message and unpack it: the request owns an unpacked message. */
    req->sampling = s;
    s->stop = stop;
    s->n_stop = n_stop;
    req->return_text = 1;
    req->max_tokens = max_tokens;
    uint8_t buf[512];
    size_t len = baton__generate_request__pack(req, buf);
    bt_free(s);
    bt_free(req);
    Baton__GenerateRequest *u = baton__generate_request__unpack(NULL, len, buf);
    router_request_t *rq = NULL;
    assert_int_equal(router_request_create(u, tok, &rq), BT_OK);
    rq->max_tokens = max_tokens;
    return rq;
}

static void test_request_stream_order_duplicates_and_gaps(void **state)
{
    (void)state;
    router_request_t *rq = new_request(8, NULL, NULL, 0);
    rq_relay_t rel;
    int32_t a[] = {10}, b[] = {11, 12}, c[] = {13, 14}, d[] = {15, 16, 17, 18, 19};
    assert_int_equal(router_request_push(rq, 0, a, 1, "", 0, &rel), BT_OK);
    assert_int_equal(rel.first, 0);
    assert_int_equal(rel.n, 1);
    assert_int_equal(router_request_push(rq, 3, c, 2, "", 0, &rel), BT_OK); /* after a gap */
    assert_int_equal(rel.n, 0);
    assert_int_equal(rq->n_pending, 1);
    assert_int_equal(router_request_push(rq, 0, a, 1, "", 0, &rel), BT_OK); /* duplicate */
    assert_int_equal(rel.n, 0);
    assert_int_equal(router_request_push(rq, 1, b, 2, "", 0, &rel), BT_OK); /* closes the gap */
    assert_int_equal(rel.first, 1);
    assert_int_equal(rel.n, 4);
    assert_int_equal(rq->n_pending, 0);
    /* A replay overlapping what was delivered: only the new part; capped at max_tokens. */
    int32_t replay[] = {13, 14, 15, 16, 17, 18};
    assert_int_equal(router_request_push(rq, 3, replay, 6, "", 0, &rel), BT_OK);
    assert_int_equal(rel.first, 5);
    assert_int_equal(rel.n, 3);
    assert_false(rel.diverged);
    assert_int_equal(rq->n_out, 8);
    assert_int_equal(router_request_push(rq, 8, d, 5, "", 0, &rel), BT_OK);
    assert_int_equal(rq->n_out, 8);
    for (int i = 0; i < 8; i++)
        assert_int_equal(rq->out[i], 10 + i);
    int32_t wrong[] = {99};
    assert_int_equal(router_request_push(rq, 2, wrong, 1, "", 0, &rel), BT_OK);
    assert_true(rel.diverged);
    router_request_destroy(rq);
}

static void test_request_gap_is_bounded(void **state)
{
    (void)state;
    router_request_t *rq = new_request(100000, NULL, NULL, 0);
    rq_relay_t rel;
    int32_t x = 1;
    int st = BT_OK;
    for (uint32_t i = 1; i < 1000 && st == BT_OK; i++)
        st = router_request_push(rq, i, &x, 1, "", 0, &rel);
    assert_int_equal(st, BT_ERR_RANGE);
    router_request_drop_pending(rq);
    assert_int_equal(rq->n_pending, 0);
    router_request_destroy(rq);
}

static void test_request_daemon_text_and_events(void **state)
{
    (void)state;
    router_request_t *rq = new_request(10, NULL, NULL, 0);
    rq_relay_t rel;
    int32_t a[] = {1, 2};
    assert_int_equal(router_request_push(rq, 0, a, 2, "hi", 2, &rel), BT_OK);
    assert_string_equal(rq->text + rel.text_from, "hi");
    router_request_event(rq, BATON__EVENT_KIND__FINISHED, 300, "router", 0);
    router_request_event(rq, BATON__EVENT_KIND__ISSUED, 100, "router", 0);
    router_request_event(rq, BATON__EVENT_KIND__PREFILL_BEGIN, 200,
                         "an-instance-name-longer-than-sixty-four-characters-is-cut-to-fit-xxxxx",
                         0);
    router_request_sort_events(rq);
    assert_int_equal(rq->events[0].kind, BATON__EVENT_KIND__ISSUED);
    assert_int_equal(rq->events[1].kind, BATON__EVENT_KIND__PREFILL_BEGIN);
    assert_int_equal(strlen(rq->events[1].instance), ROUTER_INSTANCE_NAME_MAX - 1);
    assert_int_equal(rq->events[2].kind, BATON__EVENT_KIND__FINISHED);
    router_request_destroy(rq);
}

static bt_tokenizer_t *tiny_tokenizer(void)
{
    char path[512];
    bt_test_tmp_path("request.gguf", path, sizeof path);
    bt_modelgen_params_t mp;
    assert_int_equal(bt_modelgen_preset("tiny", &mp), BT_OK);
    assert_int_equal(bt_modelgen_write(&mp, path), BT_OK);
    bt_gguf_t *g = NULL;
    bt_tokenizer_t *tok = NULL;
    assert_int_equal(bt_gguf_open(path, &g), BT_OK);
    assert_int_equal(bt_tokenizer_from_gguf(g, &tok), BT_OK);
    bt_gguf_close(g);
    remove(path);
    return tok;
}

static void test_request_router_makes_text_with_stop_strings(void **state)
{
    (void)state;
    bt_tokenizer_t *tok = tiny_tokenizer();
    int32_t ids[64];
    int32_t n = 0;
    const char *text = "hello world, and more";
    assert_int_equal(bt_tokenizer_encode(tok, text, strlen(text), 0, 0, ids, 64, &n), BT_OK);

    rq_relay_t rel;
    router_request_t *rq = new_request(64, tok, NULL, 0);
    for (int32_t i = 0; i < n; i++) /* one token per chunk; the daemon's text is not used */
        router_request_push(rq, (uint32_t)i, &ids[i], 1, "junk", 4, &rel);
    rq->finish = BATON__FINISH_REASON__FINISH_LENGTH;
    router_request_flush_text(rq);
    char full[128];
    snprintf(full, sizeof full, "%s", rq->text);
    const char *at = strstr(full, text); /* SentencePiece may add a leading space */
    assert_non_null(at);
    router_request_destroy(rq);

    char *stop[] = {"d, and"};
    rq = new_request(64, tok, stop, 1);
    assert_true(rq->make_text);
    for (int32_t i = 0; i < n; i++)
        assert_int_equal(router_request_push(rq, (uint32_t)i, &ids[i], 1, "junk", 4, &rel), BT_OK);
    rq->finish = BATON__FINISH_REASON__FINISH_STOP_STRING;
    router_request_flush_text(rq);
    /* Everything before the stop string, which (and what follows) is never shown. */
    assert_int_equal(strlen(rq->text), (size_t)(at - full) + strlen("hello worl"));
    assert_memory_equal(rq->text, full, strlen(rq->text));
    router_request_destroy(rq);
    bt_tokenizer_destroy(tok);
}

static void test_request_table_indexes(void **state)
{
    (void)state;
    router_reqtable_t *t;
    assert_int_equal(router_reqtable_create(&t), BT_OK);
    enum { N = 5000 };
    static router_request_t rqs[N];
    memset(rqs, 0, sizeof rqs);
    for (int i = 0; i < N; i++) {
        rqs[i].id = 1000 + (uint64_t)i;
        rqs[i].client_req_id = (uint64_t)(i % 7);
        rqs[i].client_len = 2;
        rqs[i].client[0] = (uint8_t)(i / 7);
        rqs[i].client[1] = (uint8_t)(i / 7 >> 8);
        assert_int_equal(router_reqtable_insert(t, &rqs[i]), BT_OK);
    }
    assert_int_equal(router_reqtable_count(t), N);
    assert_ptr_equal(router_reqtable_by_id(t, 1000 + 4321), &rqs[4321]);
    uint8_t who[2] = {(uint8_t)(4321 / 7), (uint8_t)(4321 / 7 >> 8)};
    assert_ptr_equal(router_reqtable_by_client(t, who, 2, 4321 % 7), &rqs[4321]);
    assert_null(router_reqtable_by_client(t, who, 1, 4321 % 7));
    router_reqtable_rekey(t, &rqs[4321], 99);
    assert_null(router_reqtable_by_id(t, 1000 + 4321));
    assert_ptr_equal(router_reqtable_by_id(t, 99), &rqs[4321]);
    router_reqtable_remove(t, &rqs[4321]);
    assert_null(router_reqtable_by_id(t, 99));
    assert_null(router_reqtable_by_client(t, who, 2, 4321 % 7));
    assert_int_equal(router_reqtable_count(t), N - 1);
    router_reqtable_destroy(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_request_stream_order_duplicates_and_gaps),
        cmocka_unit_test(test_request_gap_is_bounded),
        cmocka_unit_test(test_request_daemon_text_and_events),
        cmocka_unit_test(test_request_router_makes_text_with_stop_strings),
        cmocka_unit_test(test_request_table_indexes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
