/* SPDX-License-Identifier: MIT */
/*
 * test_client.c - the client library against a real baton-router process and an automatic
 * fake colocated daemon: blocking generate with a chunk callback, many requests in flight on
 * one connection with bt_client_next, cancel (from a callback and asynchronously), health and
 * info while requests stream (nothing lost), refusals as results, timeouts, id rules.
 */
// ctest-labels: integration
#include "testutil.h"

#include <string.h>

#include "baton_client.h"
#include "routertest.h"

#define WAIT_MS 5000

static int teardown(void **state)
{
    return *state ? rt_stop(*state) : 0;
}

typedef struct {
    rt_cluster_t c;
    bt_client_t *cl;
} fixture_t;

static fixture_t fx;

static int teardown_fx(void **state)
{
    (void)state;
    bt_client_close(fx.cl);
    fx.cl = NULL;
    return rt_stop(&fx.c);
}

/* A router with one automatic daemon, and a connected client. */
static fixture_t *setup_cluster(const char *const *extra, const rt_auto_params_t *ap)
{
    assert_int_equal(rt_start(&fx.c, extra), 0);
    assert_non_null(rt_auto_start(&fx.c, "auto0", ap));
    assert_int_equal(rt_wait_instances(&fx.c, 1, WAIT_MS), 0);
    bt_client_params_t p = {.endpoint = fx.c.client_ep, .timeout_ms = WAIT_MS};
    assert_int_equal(bt_client_connect(&p, &fx.cl), BT_CLIENT_OK);
    return &fx;
}

typedef struct {
    uint32_t next_index;
    int n_chunks;
    int cancel_at; /* cancel when this many chunks came (0: never) */
} chunks_t;

static int on_chunk(void *user, const bt_client_chunk_t *ch)
{
    chunks_t *k = user;
    assert_int_equal(ch->index, k->next_index);
    k->next_index += (uint32_t)ch->n_ids;
    k->n_chunks++;
    return k->cancel_at && k->n_chunks >= k->cancel_at;
}

static void test_client_blocking_generate(void **state)
{
    (void)state;
    fixture_t *f = setup_cluster(NULL, NULL);
    int32_t prompt[2] = {7, 8};
    bt_client_gen_params_t p = {.prompt_ids = prompt, .n_prompt_ids = 2, .max_tokens = 5};
    chunks_t k = {0};
    bt_client_result_t *r = NULL;
    assert_int_equal(bt_client_generate(f->cl, &p, on_chunk, &k, &r), BT_CLIENT_OK);
    assert_int_equal(r->status, 0);
    assert_string_equal(r->error, "");
    assert_int_equal(r->finish_reason, BT_CLIENT_FINISH_LENGTH);
    assert_int_equal(r->n_ids, 5);
    for (int i = 0; i < 5; i++)
        assert_int_equal(r->ids[i], 700 + i);
    assert_int_equal(k.next_index, 5);
    assert_int_equal(r->n_prompt_tokens, 2);
    assert_string_equal(r->decode_instance, "auto0");
    assert_int_equal(r->events[0].kind, BT_CLIENT_EV_ISSUED);
    assert_int_equal(r->events[r->n_events - 1].kind, BT_CLIENT_EV_FINISHED);
    assert_string_equal(bt_client_lifetime_name(r->events[0].kind), "ISSUED");
    assert_string_equal(bt_client_finish_name(r->finish_reason), "LENGTH");
    assert_true(r->n_events >= 6);
    bt_client_result_free(r);
    assert_int_equal(bt_client_in_flight(f->cl), 0);
}

static void test_client_many_in_flight_with_next(void **state)
{
    (void)state;
    rt_auto_params_t ap = {.step_ms = 1};
    fixture_t *f = setup_cluster(NULL, &ap);
    enum { N = 40 };
    uint32_t next[N] = {0};
    int results = 0;
    for (int i = 0; i < N; i++) {
        int32_t prompt[1] = {i + 1};
        bt_client_gen_params_t p = {.prompt_ids = prompt,
                                    .n_prompt_ids = 1,
                                    .max_tokens = (uint32_t)(1 + i % 7),
                                    .request_id = 1000 + (uint64_t)i};
        uint64_t id = 0;
        assert_int_equal(bt_client_submit(f->cl, &p, &id), BT_CLIENT_OK);
        assert_int_equal(id, 1000 + (uint64_t)i);
    }
    assert_int_equal(bt_client_in_flight(f->cl), N);
    /* Health in the middle: replies to other requests that arrive meanwhile are kept. */
    bt_client_health_t h;
    assert_int_equal(bt_client_health(f->cl, 0, &h), BT_CLIENT_OK);
    assert_true(h.ok);
    assert_int_equal(h.n_colocated, 1);
    while (results < N) {
        bt_client_next_t ev;
        assert_int_equal(bt_client_next(f->cl, WAIT_MS, &ev), BT_CLIENT_OK);
        int i =
            (int)(ev.kind == BT_CLIENT_NEXT_CHUNK ? ev.chunk.request_id : ev.result->request_id) -
            1000;
        assert_true(i >= 0 && i < N);
        if (ev.kind == BT_CLIENT_NEXT_CHUNK) {
            assert_int_equal(ev.chunk.index, next[i]);
            for (size_t j = 0; j < ev.chunk.n_ids; j++)
                assert_int_equal(ev.chunk.ids[j], (i + 1) * 100 + (int)next[i] + (int)j);
            next[i] += (uint32_t)ev.chunk.n_ids;
            continue;
        }
        assert_int_equal(ev.result->status, 0);
        assert_int_equal(ev.result->n_ids, 1 + i % 7);
        assert_int_equal(next[i], 1 + i % 7); /* every chunk came before the result */
        bt_client_result_free(ev.result);
        results++;
    }
    bt_client_next_t ev;
    assert_int_equal(bt_client_next(f->cl, 0, &ev), BT_CLIENT_ERR_NOT_FOUND);
}

static void test_client_cancel_from_callback_and_async(void **state)
{
    (void)state;
    rt_auto_params_t ap = {.hold = 1};
    fixture_t *f = setup_cluster(NULL, &ap);
    int32_t prompt[1] = {3};
    bt_client_gen_params_t p = {.prompt_ids = prompt, .n_prompt_ids = 1, .max_tokens = 50};
    chunks_t k = {.cancel_at = 1};
    bt_client_result_t *r = NULL;
    assert_int_equal(bt_client_generate(f->cl, &p, on_chunk, &k, &r), BT_CLIENT_OK);
    assert_int_equal(r->finish_reason, BT_CLIENT_FINISH_CANCELLED);
    assert_int_equal(r->status, 0);
    assert_int_equal(r->n_ids, 1);
    bt_client_result_free(r);

    uint64_t id;
    assert_int_equal(bt_client_submit(f->cl, &p, &id), BT_CLIENT_OK);
    bt_client_next_t ev;
    assert_int_equal(bt_client_next(f->cl, WAIT_MS, &ev), BT_CLIENT_OK);
    assert_int_equal(ev.kind, BT_CLIENT_NEXT_CHUNK);
    assert_int_equal(bt_client_cancel(f->cl, id), BT_CLIENT_OK);
    assert_int_equal(bt_client_next(f->cl, WAIT_MS, &ev), BT_CLIENT_OK);
    assert_int_equal(ev.kind, BT_CLIENT_NEXT_RESULT);
    assert_int_equal(ev.result->finish_reason, BT_CLIENT_FINISH_CANCELLED);
    bt_client_result_free(ev.result);
    assert_int_equal(bt_client_cancel(f->cl, id), BT_CLIENT_ERR_NOT_FOUND);
}

static void test_client_info_refusals_and_ids(void **state)
{
    (void)state;
    fixture_t *f = setup_cluster((const char *const[]){"--max-tokens", "8", NULL}, NULL);
    bt_client_info_t *info = NULL;
    assert_int_equal(bt_client_info(f->cl, 0, &info), BT_CLIENT_OK);
    assert_string_equal(info->model, RT_MODEL_ID);
    assert_int_equal(info->max_tokens, 8);
    assert_int_equal(info->n_instances, 1);
    assert_string_equal(info->instances[0].id, "auto0");
    assert_int_equal(info->instances[0].role, 3);
    bt_client_info_free(info);

    int32_t prompt[1] = {2};
    bt_client_gen_params_t p = {.prompt_ids = prompt, .n_prompt_ids = 1, .max_tokens = 9};
    bt_client_result_t *r = NULL;
    assert_int_equal(bt_client_generate(f->cl, &p, NULL, NULL, &r), BT_CLIENT_OK);
    assert_int_equal(r->status, BT_CLIENT_ERR_RANGE);
    assert_int_equal(r->finish_reason, BT_CLIENT_FINISH_FAILED);
    assert_non_null(strstr(r->error, "max_tokens"));
    assert_string_equal(bt_client_strerror(r->status), "value out of range");
    bt_client_result_free(r);
    bt_client_gen_params_t text = {.prompt = "no tokenizer at this router", .max_tokens = 2};
    assert_int_equal(bt_client_generate(f->cl, &text, NULL, NULL, &r), BT_CLIENT_OK);
    assert_int_equal(r->status, BT_CLIENT_ERR_UNSUPPORTED);
    bt_client_result_free(r);

    p.max_tokens = 3;
    p.request_id = 5;
    assert_int_equal(bt_client_submit(f->cl, &p, NULL), BT_CLIENT_OK);
    assert_int_equal(bt_client_submit(f->cl, &p, NULL), BT_CLIENT_ERR_INVAL); /* in flight */
    bt_client_next_t ev;
    do {
        assert_int_equal(bt_client_next(f->cl, WAIT_MS, &ev), BT_CLIENT_OK);
    } while (ev.kind != BT_CLIENT_NEXT_RESULT);
    bt_client_result_free(ev.result);
    assert_int_equal(bt_client_submit(f->cl, &p, NULL), BT_CLIENT_OK); /* free again */
    do {
        assert_int_equal(bt_client_next(f->cl, WAIT_MS, &ev), BT_CLIENT_OK);
    } while (ev.kind != BT_CLIENT_NEXT_RESULT);
    bt_client_result_free(ev.result);
}

static void test_client_timeout_and_bad_endpoint(void **state)
{
    static rt_cluster_t c;
    assert_int_equal(rt_start(&c, NULL), 0); /* no daemon: requests wait in the queue */
    *state = &c;
    bt_client_params_t p = {.endpoint = c.client_ep, .timeout_ms = 200};
    bt_client_t *cl = NULL;
    assert_int_equal(bt_client_connect(&p, &cl), BT_CLIENT_OK);
    int32_t prompt[1] = {1};
    bt_client_gen_params_t g = {.prompt_ids = prompt, .n_prompt_ids = 1, .max_tokens = 2};
    bt_client_result_t *r = NULL;
    assert_int_equal(bt_client_generate(cl, &g, NULL, NULL, &r), BT_CLIENT_ERR_TIMEOUT);
    assert_null(r);
    assert_int_equal(bt_client_in_flight(cl), 0); /* abandoned, and cancelled at the router */
    bt_client_health_t h;
    assert_int_equal(bt_client_health(cl, 0, &h), BT_CLIENT_OK);
    assert_false(h.ok);
    bt_client_close(cl);

    bt_client_params_t bad = {.endpoint = "nonsense://x"};
    assert_true(bt_client_connect(&bad, &cl) < 0);
    assert_int_equal(bt_client_connect(NULL, &cl), BT_CLIENT_ERR_INVAL);
    bt_client_close(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_client_blocking_generate, teardown_fx),
        cmocka_unit_test_teardown(test_client_many_in_flight_with_next, teardown_fx),
        cmocka_unit_test_teardown(test_client_cancel_from_callback_and_async, teardown_fx),
        cmocka_unit_test_teardown(test_client_info_refusals_and_ids, teardown_fx),
        cmocka_unit_test_teardown(test_client_timeout_and_bad_endpoint, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
