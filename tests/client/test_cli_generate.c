/* SPDX-License-Identifier: MIT */
/*
 * test_cli_generate.c - `baton generate` against a real router and an automatic fake daemon:
 * the JSON result on stdout, exit statuses for a finished, a refused and a malformed request;
 * Ctrl-C on a request that waits in the router's queue cancels it at once.
 */
// ctest-labels: integration
#include "testutil.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "routertest.h"

static int teardown(void **state)
{
    return *state ? rt_stop(*state) : 0;
}

/* Runs baton generate with args; its stdout in out, its exit status returned. */
static int run_cli(const char *args, char *out, size_t cap)
{
    char cmd[1024];
    const char *bin = getenv("BATON_BINARY_DIR");
    snprintf(cmd, sizeof cmd, "%s/bin/baton generate %s 2>/dev/null", bin ? bin : BATON_BINARY_DIR,
             args);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    size_t n = fread(out, 1, cap - 1, p);
    out[n] = 0;
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void test_cli_generate_json_and_exit_codes(void **state)
{
    static rt_cluster_t c;
    assert_int_equal(rt_start(&c, (const char *const[]){"--max-tokens", "16", NULL}), 0);
    *state = &c;
    assert_non_null(rt_auto_start(&c, "auto0", NULL));
    assert_int_equal(rt_wait_instances(&c, 1, 5000), 0);
    char args[512], out[8192];
    snprintf(args, sizeof args, "--router %s --prompt-ids 3,4 -n 3 --temp 0 --json", c.client_ep);
    assert_int_equal(run_cli(args, out, sizeof out), 0);
    assert_non_null(strstr(out, "\"ids\": [300, 301, 302]"));
    assert_non_null(strstr(out, "\"finish_reason\": \"LENGTH\""));
    assert_non_null(strstr(out, "\"decode_instance\": \"auto0\""));
    assert_non_null(strstr(out, "\"kind\": \"ISSUED\""));

    snprintf(args, sizeof args, "--router %s --prompt-ids 3 -n 17", c.client_ep);
    assert_int_equal(run_cli(args, out, sizeof out), 1); /* over --max-tokens: refused */
    snprintf(args, sizeof args, "--router %s --prompt-ids 3,x", c.client_ep);
    assert_int_equal(run_cli(args, out, sizeof out), 2);
    snprintf(args, sizeof args, "--router %s", c.client_ep);
    assert_int_equal(run_cli(args, out, sizeof out), 2); /* no prompt */
}

/* No daemon: the request waits in the router's queue (10 s by default) and no chunk comes.
 * SIGINT must cancel it then and there: a CANCELLED result, exit status 1, well before the
 * queue would have given up. */
static void test_cli_generate_interrupt_while_queued(void **state)
{
    static rt_cluster_t c;
    assert_int_equal(rt_start(&c, NULL), 0);
    *state = &c;
    int fd[2];
    assert_int_equal(pipe(fd), 0);
    const char *dir = getenv("BATON_BINARY_DIR");
    char bin[512];
    snprintf(bin, sizeof bin, "%s/bin/baton", dir ? dir : BATON_BINARY_DIR);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        dup2(fd[1], 1);
        close(fd[0]);
        execl(bin, bin, "generate", "--router", c.client_ep, "--prompt-ids", "3,4", "-n", "3",
              "--json", (char *)NULL);
        _exit(127);
    }
    close(fd[1]);
    usleep(500 * 1000);
    uint64_t t0 = bt_test_now_ms();
    assert_int_equal(kill(pid, SIGINT), 0);
    int st = 0;
    while (waitpid(pid, &st, WNOHANG) == 0 && bt_test_now_ms() - t0 < 8000)
        usleep(10 * 1000);
    uint64_t took = bt_test_now_ms() - t0;
    if (took >= 8000) {
        kill(pid, SIGKILL);
        waitpid(pid, &st, 0);
    }
    char out[8192];
    ssize_t n = read(fd[0], out, sizeof out - 1);
    close(fd[0]);
    out[n > 0 ? n : 0] = 0;
    assert_true(took < 3000);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 1);
    assert_non_null(strstr(out, "\"finish_reason\": \"CANCELLED\""));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_cli_generate_json_and_exit_codes, teardown),
        cmocka_unit_test_teardown(test_cli_generate_interrupt_while_queued, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
