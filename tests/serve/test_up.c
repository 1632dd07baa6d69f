/* SPDX-License-Identifier: MIT */
/*
 * test_up.c - `baton up` as a user runs it: it prints its endpoint once the cluster is healthy,
 * the cluster serves, SIGTERM stops everything with status 0, and no child outlives it, not
 * even when `baton up` itself is killed with SIGKILL; a router or daemon that dies while it
 * serves is started again and no request is lost; --cpus pins the daemons, and a bad
 * --cpus starts nothing; --step-logs has each daemon record its forwards; `baton status`
 * shows the cluster.
 */
// ctest-labels: integration
#include "testutil.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "baton_client.h"
#include "common/json.h"
#include "common/status.h"
#include "servetest.h"

#define BATON BATON_BINARY_DIR "/bin/baton"

typedef struct {
    char model[512];
    char port[16];
    char log_dir[512]; /* "" unless a test sets it: then --log-dir and --step-logs */
    bt_proc_t up;
} up_fixture_t;

static int setup(void **state)
{
    up_fixture_t *f = calloc(1, sizeof *f);
    if (!f || bt_test_make_model("tiny", f->model, sizeof f->model) != 0)
        return -1;
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    up_fixture_t *f = *state;
    bt_proc_kill(&f->up);
    remove(f->model);
    free(f);
    return 0;
}

/* Processes whose command line mentions the test's model file: the cluster's. With kind
 * ("baton-prefill", ...), the pid of the first such process of that kind goes to *pid. */
static int find_cluster_procs(const char *model, const char *kind, int *pid)
{
    DIR *d = opendir("/proc");
    struct dirent *e;
    int n = 0;
    while (d && (e = readdir(d)) != NULL) {
        char path[300], buf[4096];
        if (e->d_name[0] < '0' || e->d_name[0] > '9')
            continue;
        snprintf(path, sizeof path, "/proc/%s/cmdline", e->d_name);
        FILE *fp = fopen(path, "r");
        if (!fp)
            continue;
        size_t len = fread(buf, 1, sizeof buf - 1, fp);
        fclose(fp);
        for (size_t i = 0; i < len; i++)
            buf[i] = buf[i] ? buf[i] : ' ';
        buf[len] = 0;
        int ours = strstr(buf, model) != NULL && !strstr(buf, "baton up") &&
                   (strstr(buf, "baton-router") || strstr(buf, "baton-prefill") ||
                    strstr(buf, "baton-decode") || strstr(buf, "baton-colocated"));
        if (ours && kind && strstr(buf, kind) && pid && !*pid)
            *pid = atoi(e->d_name);
        n += ours;
    }
    if (d)
        closedir(d);
    return n;
}

static int count_cluster_procs(const char *model)
{
    return find_cluster_procs(model, NULL, NULL);
}

/* The Cpus_allowed_list of the cluster's first process of kind, e.g. "0" or "0-1". */
static void cpus_of(const char *model, const char *kind, char *out, size_t cap)
{
    int pid = 0;
    find_cluster_procs(model, kind, &pid);
    assert_true(pid > 0);
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", pid);
    FILE *fp = fopen(path, "r"); /* procfs files have no size to read them by */
    assert_non_null(fp);
    out[0] = 0;
    while (fgets(line, sizeof line, fp))
        if (!strncmp(line, "Cpus_allowed_list:", 18)) {
            const char *v = line + 18 + strspn(line + 18, " \t");
            snprintf(out, cap, "%.*s", (int)strcspn(v, "\n"), v);
        }
    fclose(fp);
    assert_true(out[0] != 0);
}

static int wait_no_cluster(const char *model, int timeout_ms)
{
    uint64_t end = bt_test_now_ms() + (uint64_t)timeout_ms;
    while (count_cluster_procs(model) > 0)
        if (bt_test_now_ms() >= end)
            return 0;
        else
            usleep(20000);
    return 1;
}

/* One start on a fresh port; 1 once it serves, else 0 with its log in *log. */
static int up_try(up_fixture_t *f, int colocated, const char *cpus, char **log)
{
    snprintf(f->port, sizeof f->port, "%d", bt_test_free_port());
    const char *argv[20] = {BATON,
                            "up",
                            "--model",
                            f->model,
                            "--port",
                            f->port,
                            "--threads",
                            "2",
                            "--kv-mem",
                            "8M",
                            colocated ? "--colocated" : "--prefill",
                            "1"};
    int n = 12;
    if (cpus) {
        argv[n++] = "--cpus";
        argv[n++] = cpus;
    }
    if (f->log_dir[0]) {
        argv[n++] = "--log-dir";
        argv[n++] = f->log_dir;
        argv[n++] = "--step-logs";
    }
    argv[n] = NULL;
    assert_int_equal(bt_proc_start(&f->up, (char *const *)argv), 0);
    uint64_t end = bt_test_now_ms() + 60000;
    for (;;) {
        *log = bt_test_read_file(f->up.log, NULL);
        if (*log && strstr(*log, "serving on"))
            return 1;
        if (bt_test_now_ms() >= end || bt_proc_wait(&f->up, 0))
            return 0;
        free(*log);
        *log = NULL;
        usleep(20000);
    }
}

/* Starts baton up (1 prefill + 1 decode, or 1 colocated) and waits for its endpoint line. The
 * port was free when picked, but another test's outgoing connection may take it as its local
 * port before the router binds: then the cluster starts again on another. */
static void up_start(up_fixture_t *f, int colocated, const char *cpus)
{
    for (int attempt = 1;; attempt++) {
        char *log = NULL;
        if (up_try(f, colocated, cpus, &log)) {
            free(log);
            return;
        }
        int taken = log && strstr(log, "Address already in use");
        free(log);
        if (!taken || attempt == 3) {
            bt_proc_dump_log(&f->up);
            fail_msg("baton up did not come up");
        }
        bt_proc_kill(&f->up);
    }
}

static void expect_serves(up_fixture_t *f)
{
    char ep[64];
    snprintf(ep, sizeof ep, "tcp://127.0.0.1:%s", f->port);
    bt_client_params_t cp = {.endpoint = ep, .timeout_ms = 30000};
    bt_client_t *cl = NULL;
    assert_int_equal(bt_client_connect(&cp, &cl), BT_CLIENT_OK);
    int32_t prompt[8] = {1, 40, 41, 42, 43, 44, 45, 46};
    bt_client_gen_params_t p = {
        .prompt_ids = prompt, .n_prompt_ids = 8, .max_tokens = 8, .ignore_eos = 1};
    bt_client_result_t *r = NULL;
    assert_int_equal(bt_client_generate(cl, &p, NULL, NULL, &r), BT_CLIENT_OK);
    assert_int_equal(r->status, 0);
    assert_int_equal((int)r->n_ids, 8);
    bt_client_result_free(r);
    bt_client_close(cl);
}

static void test_up_serves_and_stops_cleanly(void **state)
{
    up_fixture_t *f = *state;
    up_start(f, 0, NULL);
    assert_int_equal(count_cluster_procs(f->model), 3);
    expect_serves(f);
    kill(f->up.pid, SIGTERM);
    assert_true(bt_proc_wait(&f->up, 60000));
    assert_int_equal(bt_proc_exit_code(&f->up), 0);
    assert_true(wait_no_cluster(f->model, 5000));
}

static void test_up_killed_leaves_no_orphans(void **state)
{
    up_fixture_t *f = *state;
    up_start(f, 1, NULL);
    assert_int_equal(count_cluster_procs(f->model), 2);
    expect_serves(f);
    bt_proc_kill(&f->up); /* SIGKILL: the children get SIGTERM from the kernel */
    assert_true(wait_no_cluster(f->model, 30000));
}

/* Whatever dies while the cluster serves is started again: the router, killed mid-stream (the
 * client's request goes on, sent again to the new router, and ends whole), then a daemon; the
 * cluster serves again with all three processes, and stops cleanly. */
static void test_up_restarts_what_dies(void **state)
{
    up_fixture_t *f = *state;
    up_start(f, 0, NULL);
    char ep[64];
    snprintf(ep, sizeof ep, "tcp://127.0.0.1:%s", f->port);
    bt_client_params_t cp = {.endpoint = ep, .timeout_ms = 30000};
    bt_client_t *cl = NULL;
    assert_int_equal(bt_client_connect(&cp, &cl), BT_CLIENT_OK);
    int32_t prompt[4] = {1, 40, 41, 42};
    enum { T = 400 };
    bt_client_gen_params_t p = {
        .prompt_ids = prompt, .n_prompt_ids = 4, .max_tokens = T, .ignore_eos = 1};
    assert_int_equal(bt_client_submit(cl, &p, NULL), BT_CLIENT_OK);
    uint32_t next = 0;
    bt_client_result_t *r = NULL;
    int killed = 0;
    while (!r) {
        bt_client_next_t ev;
        assert_int_equal(bt_client_next(cl, 30000, &ev), BT_CLIENT_OK);
        if (ev.kind == BT_CLIENT_NEXT_RESULT) {
            r = ev.result;
            break;
        }
        assert_int_equal(ev.chunk.index, next); /* no gap, no repeat */
        next += (uint32_t)ev.chunk.n_ids;
        if (!killed && next >= 4) {
            int router = 0;
            find_cluster_procs(f->model, "baton-router", &router);
            assert_true(router > 0);
            kill(router, SIGKILL);
            killed = 1;
        }
    }
    assert_int_equal(r->status, 0);
    assert_int_equal((int)r->n_ids, T);
    assert_int_equal(next, T);
    assert_true(r->retries >= 1);
    bt_client_result_free(r);
    bt_client_close(cl);
    int decode = 0, again = 0;
    find_cluster_procs(f->model, "baton-decode", &decode);
    assert_true(decode > 0);
    kill(decode, SIGKILL);
    for (uint64_t end = bt_test_now_ms() + 20000; bt_test_now_ms() < end; usleep(50000)) {
        again = 0;
        find_cluster_procs(f->model, "baton-decode", &again);
        if (again > 0 && again != decode)
            break;
    }
    assert_true(again > 0 && again != decode);
    expect_serves(f);
    assert_int_equal(count_cluster_procs(f->model), 3);
    kill(f->up.pid, SIGTERM);
    assert_true(bt_proc_wait(&f->up, 60000));
    assert_int_equal(bt_proc_exit_code(&f->up), 0);
    assert_true(wait_no_cluster(f->model, 5000));
}

/* --cpus "C;C" puts the prefill and the decode daemon (all their threads) on CPU C, the first
 * this test may use, and leaves the router where it was; the cluster serves. */
static void test_up_pins_daemons(void **state)
{
    up_fixture_t *f = *state;
    cpu_set_t mine;
    assert_int_equal(sched_getaffinity(0, sizeof mine, &mine), 0);
    int c = 0;
    while (!CPU_ISSET(c, &mine))
        c++;
    char cpus[32], want[16], got[64];
    snprintf(cpus, sizeof cpus, "%d;%d", c, c);
    snprintf(want, sizeof want, "%d", c);
    up_start(f, 0, cpus);
    cpus_of(f->model, "baton-prefill", got, sizeof got);
    assert_string_equal(got, want);
    cpus_of(f->model, "baton-decode", got, sizeof got);
    assert_string_equal(got, want);
    if (CPU_COUNT(&mine) > 1) {
        cpus_of(f->model, "baton-router", got, sizeof got);
        assert_string_not_equal(got, want);
    }
    expect_serves(f);
    kill(f->up.pid, SIGTERM);
    assert_true(bt_proc_wait(&f->up, 60000));
    assert_int_equal(bt_proc_exit_code(&f->up), 0);
}

/* Lines of a step log (steplog.h) of one kind, parsed: x, y and the step's time. */
static int step_lines(const char *path, const char *kind, double *x, double *y, int cap)
{
    char *text = bt_test_read_file(path, NULL), *save = NULL;
    assert_non_null(text);
    assert_true(strncmp(text, "kind,n,len_or_ctx,ms,", 21) == 0);
    int n = 0;
    for (char *l = strtok_r(text, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
        char k[16];
        double a, b, ms, fwd;
        if (sscanf(l, "%15[a-z],%lf,%lf,%lf,%lf", k, &a, &b, &ms, &fwd) == 5 && !strcmp(k, kind) &&
            n < cap) {
            assert_true(ms > 0 && fwd > 0 && fwd <= ms);
            x[n] = a;
            y[n++] = b;
        }
    }
    free(text);
    return n;
}

/* --step-logs: each daemon records its forwards. One request of an 8-token prompt and 8 output
 * tokens is one prefill batch (8 tokens, 64 squared) on the prefill daemon and 7 decode steps
 * of one sequence on the decode daemon, attending 9, 10, ..., 15 positions. */
static void test_up_step_logs(void **state)
{
    up_fixture_t *f = *state;
    bt_test_tmp_path("up-steps", f->log_dir, sizeof f->log_dir);
    up_start(f, 0, NULL);
    expect_serves(f);
    kill(f->up.pid, SIGTERM);
    assert_true(bt_proc_wait(&f->up, 60000));
    assert_int_equal(bt_proc_exit_code(&f->up), 0);
    char path[600];
    double x[16], y[16];
    snprintf(path, sizeof path, "%s/prefill-0.steps.csv", f->log_dir);
    assert_int_equal(step_lines(path, "pstep", x, y, 16), 1);
    assert_true(x[0] == 8 && y[0] == 64);
    remove(path);
    snprintf(path, sizeof path, "%s/decode-0.steps.csv", f->log_dir);
    assert_int_equal(step_lines(path, "dstep", x, y, 16), 7);
    for (int i = 0; i < 7; i++)
        assert_true(x[i] == 1 && y[i] == 9 + i);
    remove(path);
    static const char *const logs[] = {"router", "prefill-0", "decode-0"};
    for (int i = 0; i < 3; i++) {
        snprintf(path, sizeof path, "%s/%s.log", f->log_dir, logs[i]);
        remove(path);
    }
    rmdir(f->log_dir);
}

/* Runs `baton status` against the fixture's cluster; its exit status, its output in *out. */
static int run_status(up_fixture_t *f, const char *mode, char **out)
{
    char ep[64];
    snprintf(ep, sizeof ep, "tcp://127.0.0.1:%s", f->port);
    const char *argv[] = {BATON, "status", "--router", ep, "--timeout-ms", "2000", mode, NULL};
    bt_proc_t p;
    assert_int_equal(bt_proc_start(&p, (char *const *)argv), 0);
    assert_true(bt_proc_wait(&p, 20000));
    *out = bt_test_read_file(p.log, NULL);
    assert_non_null(*out);
    int rc = bt_proc_exit_code(&p);
    remove(p.log);
    return rc;
}

/* `baton status` shows a serving cluster (exit 0): both instances up with their roles and KV
 * pools, as text and as JSON; once the cluster is gone it says the router does not answer and
 * exits 1. */
static void test_status(void **state)
{
    up_fixture_t *f = *state;
    up_start(f, 0, NULL);
    expect_serves(f);
    char *out = NULL;
    assert_int_equal(run_status(f, "--no-json", &out), 0);
    assert_non_null(strstr(out, ": can serve"));
    assert_non_null(strstr(out, "prefill-0"));
    assert_non_null(strstr(out, "decode-0"));
    free(out);
    assert_int_equal(run_status(f, "--json", &out), 0);
    bt_json_t *doc = NULL;
    assert_int_equal(bt_json_parse(out, strlen(out), NULL, &doc, NULL, 0), BT_OK);
    const bt_json_value_t *root = bt_json_root(doc), *inst = bt_json_get(root, "instances");
    int ok = 0;
    assert_int_equal(bt_json_bool(bt_json_get(root, "ok"), &ok), BT_OK);
    assert_true(ok);
    assert_int_equal(bt_json_len(inst), 2);
    int seen = 0;
    for (size_t i = 0; i < 2; i++) {
        const char *role, *id;
        size_t n;
        double total = 0;
        assert_int_equal(bt_json_string(bt_json_get(bt_json_at(inst, i), "role"), &role, &n),
                         BT_OK);
        assert_int_equal(bt_json_string(bt_json_get(bt_json_at(inst, i), "id"), &id, &n), BT_OK);
        assert_int_equal(bt_json_bool(bt_json_get(bt_json_at(inst, i), "alive"), &ok), BT_OK);
        assert_int_equal(
            bt_json_number(bt_json_get(bt_json_at(inst, i), "kv_total_blocks"), &total), BT_OK);
        assert_true(ok && total > 0);
        seen |= !strcmp(role, "prefill") && !strcmp(id, "prefill-0") ? 1 : 0;
        seen |= !strcmp(role, "decode") && !strcmp(id, "decode-0") ? 2 : 0;
    }
    assert_int_equal(seen, 3);
    bt_json_destroy(doc);
    free(out);
    kill(f->up.pid, SIGTERM);
    assert_true(bt_proc_wait(&f->up, 60000));
    assert_int_equal(run_status(f, "--json", &out), 1);
    assert_non_null(strstr(out, "baton status: router tcp://127.0.0.1:"));
    free(out);
}

/* Runs argv (in the fixture's process slot), which must end within timeout_ms with exit status
 * code and needle in what it printed. */
static void expect_exit(up_fixture_t *f, const char *const *argv, int timeout_ms, int code,
                        const char *needle)
{
    assert_int_equal(bt_proc_start(&f->up, (char *const *)argv), 0);
    assert_true(bt_proc_wait(&f->up, timeout_ms));
    assert_int_equal(bt_proc_exit_code(&f->up), code);
    char *log = bt_test_read_file(f->up.log, NULL);
    assert_non_null(log);
    assert_non_null(strstr(log, needle));
    free(log);
}

/* --step-logs without --log-dir is refused before anything starts (status 2), and a daemon
 * whose step log cannot be created says so and exits 1 instead of serving without it. */
static void test_step_log_errors(void **state)
{
    up_fixture_t *f = *state;
    const char *up[] = {BATON, "up", "--model", f->model, "--step-logs", NULL};
    expect_exit(f, up, 10000, 2, "--step-logs needs --log-dir");
    assert_int_equal(count_cluster_procs(f->model), 0);

    const char *daemon[] = {BATON_BINARY_DIR "/bin/baton-colocated",
                            "--model",
                            f->model,
                            "--step-log",
                            "/nonexistent-dir/steps.csv",
                            NULL};
    expect_exit(f, daemon, 30000, 1, "step log /nonexistent-dir/steps.csv");
}

/* With --log-dir a daemon's output goes to its file; when one exits during start, baton up
 * shows the end of that file, so that the reason is on the terminal (here: the port taken). */
static void test_up_shows_why_a_daemon_exited(void **state)
{
    up_fixture_t *f = *state;
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET};
    socklen_t sl = sizeof sa;
    assert_int_equal(bind(lfd, (struct sockaddr *)&sa, sl), 0);
    assert_int_equal(listen(lfd, 1), 0);
    assert_int_equal(getsockname(lfd, (struct sockaddr *)&sa, &sl), 0);
    snprintf(f->port, sizeof f->port, "%d", ntohs(sa.sin_port));
    bt_test_tmp_path("up-taken", f->log_dir, sizeof f->log_dir);
    const char *argv[] = {BATON,       "up",       "--model",  f->model, "--port", f->port,
                          "--log-dir", f->log_dir, "--kv-mem", "8M",     NULL};
    expect_exit(f, argv, 60000, 1, "Address already in use");
    close(lfd);
    assert_int_equal(count_cluster_procs(f->model), 0);
    static const char *const logs[] = {"router", "prefill-0", "decode-0"};
    char path[600];
    for (int i = 0; i < 3; i++) {
        snprintf(path, sizeof path, "%s/%s.log", f->log_dir, logs[i]);
        remove(path);
    }
    rmdir(f->log_dir);
}

/* A --cpus that does not parse, or names a CPU this process cannot use, is refused before
 * anything starts (exit status 2). */
static void test_up_refuses_bad_cpus(void **state)
{
    up_fixture_t *f = *state;
    static const char *bad[] = {"0;x", "1-0", "0,", ";", "100000"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        const char *argv[] = {BATON, "up", "--model", f->model, "--cpus", bad[i], NULL};
        expect_exit(f, argv, 10000, 2, "--cpus");
        assert_int_equal(count_cluster_procs(f->model), 0);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_up_serves_and_stops_cleanly, setup, teardown),
        cmocka_unit_test_setup_teardown(test_up_killed_leaves_no_orphans, setup, teardown),
        cmocka_unit_test_setup_teardown(test_up_restarts_what_dies, setup, teardown),
        cmocka_unit_test_setup_teardown(test_up_pins_daemons, setup, teardown),
        cmocka_unit_test_setup_teardown(test_up_step_logs, setup, teardown),
        cmocka_unit_test_setup_teardown(test_step_log_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_status, setup, teardown),
        cmocka_unit_test_setup_teardown(test_up_refuses_bad_cpus, setup, teardown),
        cmocka_unit_test_setup_teardown(test_up_shows_why_a_daemon_exited, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
