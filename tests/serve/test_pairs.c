/* SPDX-License-Identifier: MIT */
/*
 * test_pairs.c - AcceLLM pairs as users run them: baton-router and baton-pair daemons as
 * processes on loopback, driven through the client library. Greedy tokens equal the engine's
 * own generation whichever member decodes (replica consistency: a request handed off after its
 * prefill continues on the partner's replica); roles switch under bursty load with no token
 * dropped or repeated; kill -9 of the member that decodes lets every one of its requests
 * continue on the partner's replica (RESUMED, no new prefill) with the same tokens; a holder
 * stopped until the router wrote it off lets go of every replica when it comes back (RESET); a
 * RESUME the member refuses ends what it held of the request.
 */
// ctest-labels: integration
#include "testutil.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "baton_client.h"
#include "common/status.h"
#include "servetest.h"

typedef struct {
    char m15[512];
    bt_test_ref_t *ref;
} pair_fixture_t;

static int group_setup(void **state)
{
    pair_fixture_t *f = calloc(1, sizeof *f);
    if (!f || bt_test_make_model("15m", f->m15, sizeof f->m15) != 0)
        return -1;
    f->ref = bt_test_ref_open(f->m15);
    if (!f->ref)
        return -1;
    *state = f;
    return 0;
}

static int group_teardown(void **state)
{
    pair_fixture_t *f = *state;
    bt_test_ref_close(f->ref);
    remove(f->m15);
    free(f);
    return 0;
}

static void need_pair(void)
{
    if (access(BATON_BINARY_DIR "/bin/baton-pair", X_OK) != 0) {
        fprintf(stderr, "SKIP: baton-pair is not built (no kvx)\n");
        skip();
    }
}

static int prompt_len(int i)
{
    return 3 + (i * 41) % 90;
}

static bt_client_t *connect_client(const bt_cluster_t *c)
{
    bt_client_params_t cp = {.endpoint = c->client_ep, .timeout_ms = 60000};
    bt_client_t *cl = NULL;
    assert_int_equal(bt_client_connect(&cp, &cl), BT_CLIENT_OK);
    return cl;
}

static void submit(bt_client_t *cl, int i, int max_tokens)
{
    int32_t prompt[128];
    bt_test_prompt((uint32_t)i, prompt_len(i), 32000, prompt);
    bt_client_gen_params_t p = {.prompt_ids = prompt,
                                .n_prompt_ids = (size_t)prompt_len(i),
                                .max_tokens = (uint32_t)max_tokens,
                                .ignore_eos = 1,
                                .request_id = 1 + (uint64_t)i};
    assert_int_equal(bt_client_submit(cl, &p, NULL), BT_CLIENT_OK);
}

/* Collects n results into res[request_id - 1]; checks every streamed chunk continues the
 * stream exactly (no gap, no repeat). */
static void collect(const bt_cluster_t *c, bt_client_t *cl, int n, bt_client_result_t **res,
                    uint32_t *next_index)
{
    for (int got = 0; got < n;) {
        bt_client_next_t ev;
        int st = bt_client_next(cl, 60000, &ev);
        if (st != BT_CLIENT_OK)
            bt_cluster_dump_logs(c);
        assert_int_equal(st, BT_CLIENT_OK);
        if (ev.kind == BT_CLIENT_NEXT_CHUNK) {
            int i = (int)ev.chunk.request_id - 1;
            assert_true(i >= 0 && i < n);
            assert_int_equal(ev.chunk.index, next_index[i]);
            next_index[i] += (uint32_t)ev.chunk.n_ids;
            continue;
        }
        int i = (int)ev.result->request_id - 1;
        assert_true(i >= 0 && i < n && !res[i]);
        res[i] = ev.result;
        got++;
    }
}

static int count_events(const bt_client_result_t *r, int kind)
{
    int n = 0;
    for (size_t e = 0; e < r->n_events; e++)
        n += r->events[e].kind == kind;
    return n;
}

/* Every result equals the engine's own greedy generation; returns how many were resumed from
 * a replica (RESUMED events). */
static int check_all(pair_fixture_t *f, bt_client_result_t **res, const uint32_t *next_index, int n,
                     int max_tokens)
{
    int32_t prompt[128], *want = malloc((size_t)max_tokens * sizeof(int32_t));
    int resumed = 0;
    for (int i = 0; i < n; i++) {
        if (res[i]->status != 0)
            fprintf(stderr, "request %d: %s\n", i, res[i]->error);
        assert_int_equal(res[i]->status, 0);
        bt_test_prompt((uint32_t)i, prompt_len(i), 32000, prompt);
        int nw = bt_test_ref_run(f->ref, prompt, prompt_len(i), max_tokens, 1, want);
        assert_int_equal((int)res[i]->n_ids, nw);
        assert_memory_equal(res[i]->ids, want, (size_t)nw * sizeof(int32_t));
        assert_int_equal((int)next_index[i], nw); /* the stream carried each token once */
        resumed += count_events(res[i], BATON__EVENT_KIND__RESUMED) > 0;
        bt_client_result_free(res[i]);
    }
    free(want);
    return resumed;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* One pair, prompts of varied lengths: the member serving prefill hands each request off after
 * its first token and the partner decodes it from the replica: same tokens as the engine. */
static void test_pairs_replica_consistency(void **state)
{
    need_pair();
    pair_fixture_t *f = *state;
    bt_cluster_t c;
    const char *extra[] = {"--ctx", "512", "--kv-mem", "64M", NULL};
    assert_int_equal(bt_cluster_start_pairs(&c, f->m15, 1, extra), 0);
    bt_client_t *cl = connect_client(&c);
    enum { N = 10, T = 24 };
    bt_client_result_t *res[N] = {0};
    uint32_t next[N] = {0};
    for (int i = 0; i < N; i++) /* a burst: one member serves prefill and hands off */
        submit(cl, i, T);
    collect(&c, cl, N, res, next);
    int resumed = check_all(f, res, next, N, T);
    fprintf(stderr, "%d of %d requests continued on the partner's replica\n", resumed, N);
    assert_true(resumed >= 1);
    bt_client_close(cl);
    assert_int_equal(bt_cluster_stop(&c), 0);
}

/* What the router's INFO says of the two members (from their heartbeats): 0 on success. */
typedef struct {
    int alive, serving;
    uint32_t running, replicas, kv_free, kv_total;
} member_t;

static int members(const bt_cluster_t *c, member_t m[2])
{
    Baton__InfoReply *info = NULL;
    memset(m, 0, 2 * sizeof *m);
    if (bt_cluster_call(c, BATON__METHOD__INFO, &baton__info_reply__descriptor,
                        (ProtobufCMessage **)&info) != 0)
        return -1;
    for (size_t i = 0; i < info->n_instances; i++) {
        const Baton__InstanceInfo *in = info->instances[i];
        int k = !strcmp(in->id, "pair-0") ? 0 : !strcmp(in->id, "pair-1") ? 1 : -1;
        if (k >= 0)
            m[k] = (member_t){in->alive,    in->serving,        in->running,
                              in->replicas, in->kv_free_blocks, in->kv_total_blocks};
    }
    baton__info_reply__free_unpacked(info, NULL);
    return 0;
}

/* What the router says pair-k serves now (ROLE_NONE if unknown). */
static int serving_of(const bt_cluster_t *c, int k)
{
    member_t m[2];
    return members(c, m) == 0 ? m[k].serving : BATON__ROLE__ROLE_NONE;
}

/* Waits up to ms for either member to serve role; 1 if one does. */
static int wait_serving(const bt_cluster_t *c, int role, int ms)
{
    for (uint64_t end = bt_test_now_ms() + (uint64_t)ms; bt_test_now_ms() < end; sleep_ms(20))
        if (serving_of(c, 0) == role || serving_of(c, 1) == role)
            return 1;
    return 0;
}

/* Bursts with idle gaps between them: the prefill member goes back to decode when idle and is
 * switched to prefill again by the next burst, handing its decodes to the partner. Nothing is
 * dropped or repeated. */
static void test_pairs_role_switch_under_load(void **state)
{
    need_pair();
    pair_fixture_t *f = *state;
    bt_cluster_t c;
    const char *extra[] = {"--ctx", "512", "--kv-mem", "64M", NULL};
    assert_int_equal(bt_cluster_start_pairs(&c, f->m15, 1, extra), 0);
    bt_client_t *cl = connect_client(&c);
    enum { N = 12, T = 60 };
    bt_client_result_t *res[N] = {0};
    uint32_t next[N] = {0};
    int to_decode = 0, to_prefill = 0;
    for (int b = 0; b < 3; b++) {
        /* Past the router's guard between two switches of a pair (--pair-switch-ms, 200): the
         * switch back to decode just seen must not hold off the one this burst calls for,
         * or a burst absorbed within 200 ms would call for none. */
        if (b > 0)
            sleep_ms(300);
        for (int i = 4 * b; i < 4 * b + 4; i++)
            submit(cl, i, T);
        if (b > 0) /* the burst switches a member to prefill (if none serves it) */
            to_prefill += wait_serving(&c, BATON__ROLE__PREFILL, 3000);
        /* idle: the prefill member goes back to decode (both decode then) */
        sleep_ms(200);
        for (uint64_t end = bt_test_now_ms() + 6000; bt_test_now_ms() < end; sleep_ms(20))
            if (serving_of(&c, 0) == BATON__ROLE__DECODE &&
                serving_of(&c, 1) == BATON__ROLE__DECODE) {
                to_decode++;
                break;
            }
    }
    fprintf(stderr, "%d switches to decode and %d to prefill seen\n", to_decode, to_prefill);
    assert_true(to_decode >= 2);
    assert_true(to_prefill >= 1);
    collect(&c, cl, N, res, next);
    int resumed = check_all(f, res, next, N, T);
    fprintf(stderr, "%d of %d requests moved between members\n", resumed, N);
    assert_true(resumed >= 1);
    bt_client_close(cl);
    int stopped = bt_cluster_stop(&c);
    if (stopped != 0)
        bt_cluster_dump_logs(&c);
    assert_int_equal(stopped, 0);
}

/* Submits requests 0 .. n - 1 of max_tokens and reads their streams (checking each chunk
 * continues its stream) until every one has delivered at least `at` tokens. */
static void submit_until_streaming(bt_client_t *cl, int n, int max_tokens, uint32_t at,
                                   uint32_t *next)
{
    for (int i = 0; i < n; i++)
        submit(cl, i, max_tokens);
    for (int streaming = 0; streaming < n;) {
        bt_client_next_t ev;
        assert_int_equal(bt_client_next(cl, 60000, &ev), BT_CLIENT_OK);
        assert_int_equal(ev.kind, BT_CLIENT_NEXT_CHUNK);
        int i = (int)ev.chunk.request_id - 1;
        assert_true(i >= 0 && i < n);
        assert_int_equal(ev.chunk.index, next[i]);
        if (next[i] < at && next[i] + ev.chunk.n_ids >= at)
            streaming++;
        next[i] += (uint32_t)ev.chunk.n_ids;
    }
}

/* The daemon index (0 or 1) of the member running the most requests, its partner holding
 * replicas; waits up to 5 s for a heartbeat that shows one, then says pair-1. */
static int owner_of(const bt_cluster_t *c)
{
    for (uint64_t end = bt_test_now_ms() + 5000; bt_test_now_ms() < end; sleep_ms(20)) {
        member_t m[2];
        if (members(c, m) != 0)
            continue;
        int k = m[1].running >= m[0].running ? 1 : 0;
        if (m[k].alive && m[k].running > 0 && m[1 - k].replicas > 0)
            return k;
    }
    return 1;
}

/* One pair (context 1024), n requests of t tokens streaming at least `at` tokens each: returns
 * the daemon index of the member decoding them (owner_of). */
static int pair_streaming(pair_fixture_t *f, bt_cluster_t *c, bt_client_t **cl, int n, int t,
                          uint32_t at, uint32_t *next)
{
    need_pair();
    const char *extra[] = {"--ctx", "1024", "--kv-mem", "96M", NULL};
    assert_int_equal(bt_cluster_start_pairs(c, f->m15, 1, extra), 0);
    *cl = connect_client(c);
    submit_until_streaming(*cl, n, t, at, next);
    return owner_of(c);
}

/* The member decoding the requests is killed with SIGKILL mid-stream: the router resumes each
 * request on the partner's replica (a RESUMED event, no second prefill) and the client gets
 * the undisturbed greedy stream. */
static void test_pairs_kill_owner_mid_stream(void **state)
{
    pair_fixture_t *f = *state;
    bt_cluster_t c;
    bt_client_t *cl;
    enum { N = 4, T = 300 };
    bt_client_result_t *res[N] = {0};
    uint32_t next[N] = {0};
    /* Once every request streams, the member that decodes them is killed. Which member that
     * is, the router's INFO says (running, from the heartbeats). Most often pair-1: pair-0
     * serves prefill and hands each request off. On a slow machine the router may have
     * switched pair-0 back to decode before the prompts came, and then it owns some. */
    int victim = pair_streaming(f, &c, &cl, N, T, 20, next);
    fprintf(stderr, "killing pair-%d\n", victim);
    bt_proc_kill(&c.daemons[victim]);
    collect(&c, cl, N, res, next);
    int32_t prompt[128];
    uint32_t retries = 0;
    int resumed = 0, prefills = 0;
    for (int i = 0; i < N; i++) {
        retries += res[i]->retries;
        resumed += count_events(res[i], BATON__EVENT_KIND__RESUMED) > 0;
        prefills += count_events(res[i], BATON__EVENT_KIND__PREFILL_BEGIN);
        (void)prompt;
    }
    fprintf(stderr, "%u failovers, %d resumed from replicas, %d prefills for %d requests\n",
            retries, resumed, prefills, N);
    check_all(f, res, next, N, T);
    assert_true(retries >= 1);
    assert_true(resumed >= 1);
    bt_client_close(cl);
    bt_cluster_stop(&c);
}

/* Whether both members are alive with all their KV blocks free and no replica (printed when
 * verbose). */
static int all_free(const bt_cluster_t *c, int verbose)
{
    member_t m[2];
    if (members(c, m) != 0)
        return 0;
    int ok = 1;
    for (int k = 0; k < 2; k++) {
        ok = ok && m[k].alive && m[k].kv_total && m[k].kv_free == m[k].kv_total && !m[k].replicas;
        if (verbose)
            fprintf(stderr, "pair-%d: alive %d, %u of %u blocks free, %u replicas, %u running\n", k,
                    m[k].alive, m[k].kv_free, m[k].kv_total, m[k].replicas, m[k].running);
    }
    return ok;
}

/* The member holding the replicas stops (SIGSTOP) past the router's dead-after, the requests
 * end on the owner meanwhile (the router cannot tell a dead holder to let go), and the holder
 * comes back: the router tells it to drop what it held (RESET), or its replicas' blocks would
 * stay taken for good. Every one of them must go. */
static void test_pairs_revived_holder_lets_go_of_its_replicas(void **state)
{
    pair_fixture_t *f = *state;
    bt_cluster_t c;
    bt_client_t *cl;
    enum { N = 4, T = 900 };
    bt_client_result_t *res[N] = {0};
    uint32_t next[N] = {0};
    /* every request streaming on one member (pair-1, handed off); the other holds replicas */
    int holder = 1 - pair_streaming(f, &c, &cl, N, T, 10, next);
    assert_int_equal(kill(c.daemons[holder].pid, SIGSTOP), 0);
    member_t m[2] = {{.alive = 1}, {.alive = 1}};
    for (uint64_t end = bt_test_now_ms() + 5000; m[holder].alive && bt_test_now_ms() < end;
         sleep_ms(20))
        members(&c, m);
    assert_int_equal(m[holder].alive, 0); /* written off (dead-after 1 s), requests running */
    collect(&c, cl, N, res, next);
    for (int i = 0; i < N; i++)
        assert_int_equal(res[i]->n_ids, T); /* they ended after the holder was written off */
    assert_int_equal(kill(c.daemons[holder].pid, SIGCONT), 0);
    check_all(f, res, next, N, T);
    /* A receive the RESET cancelled ends once nothing can still write into its blocks (its
     * quarantine, bounded by kvx's 3 s lease), which a loaded machine stretches. */
    int freed = 0;
    for (uint64_t end = bt_test_now_ms() + 15000; !freed && bt_test_now_ms() < end; sleep_ms(50))
        freed = all_free(&c, 0);
    if (!freed) {
        all_free(&c, 1);
        bt_cluster_dump_logs(&c);
    }
    assert_true(freed);
    bt_client_close(cl);
    int stopped = bt_cluster_stop(&c);
    if (stopped != 0)
        bt_cluster_dump_logs(&c);
    assert_int_equal(stopped, 0);
}

typedef struct {
    uint64_t rid;
    int n;
} replies_t;

/* Request rid has had n ASSIGN_REPLYs (the assignment's, then one per RESUME). */
static int replied_n(fake_router_t *r, void *arg)
{
    const replies_t *p = arg;
    return fake_router_req(r, p->rid)->replied >= p->n;
}

static int holds_nothing(fake_router_t *r, void *arg)
{
    fake_inst_t *in = fake_router_inst(r, arg);
    return in && in->last && in->last->n_held == 0 && in->last->running == 0 &&
           in->last->kv_total_blocks > 0 && in->last->kv_free_blocks == in->last->kv_total_blocks;
}

/* A RESUME of a request the member already runs is answered ok and changes nothing (an error
 * would make the worker forget the id, and the router's ABORT would then find nothing). A
 * RESUME the daemon refuses (here: no tokens in it) is an error reply, which the router takes
 * as "nothing of the request here" and fails it over: the member must not go on holding the
 * request, or nothing would ever end it. A pair member alone under a fake router, its partner
 * never there. */
static void test_pairs_refused_resume_ends_what_is_held(void **state)
{
    pair_fixture_t *f = *state;
    need_pair();
    fake_router_t r;
    assert_int_equal(fake_router_open(&r), 0);
    char id[64];
    snprintf(id, sizeof id, "pair-alone-%d", (int)getpid());
    const char *argv[] = {BATON_BINARY_DIR "/bin/baton-pair",
                          "--model",
                          f->m15,
                          "--router",
                          r.endpoint,
                          "--id",
                          id,
                          "--partner",
                          "pair-nobody",
                          "--threads",
                          "1",
                          "--heartbeat-ms",
                          "50",
                          "--kv-mem",
                          "64M",
                          "--ctx",
                          "2048",
                          "--log-level",
                          "debug",
                          NULL};
    bt_proc_t proc;
    assert_int_equal(bt_proc_start(&proc, (char *const *)argv), 0);
    int up = fake_router_wait_heartbeats(&r, id, 1, 20000);
    if (!up)
        bt_proc_dump_log(&proc);
    assert_true(up);
    r.ignore_eos = 1;
    int32_t prompt[16];
    bt_test_prompt(3, 16, 32000, prompt);
    uint64_t rid = 7;
    assert_int_equal(fake_router_assign(&r, id, rid, BATON__ROLE__PAIR, prompt, 16, 2000, 0), 0);
    for (uint64_t end = bt_test_now_ms() + 30000;
         fake_router_req(&r, rid)->n_ids < 2 && bt_test_now_ms() < end;)
        fake_router_poll(&r, 50);
    assert_true(fake_router_req(&r, rid)->n_ids >= 2);
    /* A RESUME of the request it runs: answered ok, and the request goes on, still its own. */
    Baton__Resume res = BATON__RESUME__INIT;
    int32_t first = fake_router_req(&r, rid)->ids[0];
    res.output_ids = &first;
    res.n_output_ids = 1;
    assert_int_equal(fake_router_send(&r, id, BATON__METHOD__RESUME, rid, &res.base), 0);
    assert_true(fake_router_wait(&r, replied_n, &(replies_t){rid, 2}, 10000));
    fake_req_t *q = fake_router_req(&r, rid);
    assert_int_equal(q->reply_status, 0);
    assert_int_equal(q->done, 0);
    /* One with no tokens: refused, and the request ends. */
    res.n_output_ids = 0;
    assert_int_equal(fake_router_send(&r, id, BATON__METHOD__RESUME, rid, &res.base), 0);
    assert_true(fake_router_wait(&r, replied_n, &(replies_t){rid, 3}, 10000));
    assert_int_equal(q->reply_status, BT_ERR_RANGE);
    assert_true(fake_router_wait_done(&r, rid, 10000));
    assert_int_equal(q->finish, BATON__FINISH_REASON__FINISH_CANCELLED);
    assert_true(q->n_ids < 2000);
    int ok = fake_router_wait(&r, holds_nothing, id, 10000);
    if (!ok)
        bt_proc_dump_log(&proc);
    assert_true(ok);
    bt_proc_kill(&proc);
    fake_router_close(&r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pairs_replica_consistency),
        cmocka_unit_test(test_pairs_role_switch_under_load),
        cmocka_unit_test(test_pairs_kill_owner_mid_stream),
        cmocka_unit_test(test_pairs_revived_holder_lets_go_of_its_replicas),
        cmocka_unit_test(test_pairs_refused_resume_ends_what_is_held),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
