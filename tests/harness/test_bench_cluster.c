/* SPDX-License-Identifier: MIT */
/*
 * test_bench_cluster.c - baton-bench for a few seconds against a real tiny cluster (1 prefill,
 * 1 decode): it exits 0, and result.json and requests.csv agree with each other and with what
 * was asked (every request completed with exactly the asked output length, token totals, the
 * vLLM field names present). A goodput search must record its points, and a closed-loop --compare
 * against the same cluster must write both sides and the ratio. A second test replays the Azure
 * 2023 code trace's own timestamps (skipped without ../shared), its long prompts clipped to the
 * tiny model's context.
 */
// ctest-labels: integration
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "servetest.h"

#define N_REQ 24

static double json_num(const char *json, const char *key)
{
    char pat[128];
    snprintf(pat, sizeof pat, "\"%s\": ", key);
    const char *p = strstr(json, pat);
    assert_non_null(p);
    return strtod(p + strlen(pat), NULL);
}

static void run_bench(const char *ep, const char *out, const char *const *extra)
{
    char bin[1024];
    snprintf(bin, sizeof bin, "%s/bin/baton-bench", BATON_BINARY_DIR);
    char *argv[32] = {bin,         "--router",       (char *)ep, "--out",
                      (char *)out, "--num-requests", "24",       "--input-len",
                      "16",        "--output-len",   "6",        "--timeout-s",
                      "60"};
    int n = 13;
    for (int i = 0; extra && extra[i]; i++)
        argv[n++] = (char *)extra[i];
    argv[n] = NULL;
    bt_proc_t p;
    assert_int_equal(bt_proc_start(&p, argv), 0);
    if (!bt_proc_wait(&p, 120000)) {
        bt_proc_kill(&p);
        bt_proc_dump_log(&p);
        fail_msg("baton-bench did not finish");
    }
    if (bt_proc_exit_code(&p) != 0)
        bt_proc_dump_log(&p);
    assert_int_equal(bt_proc_exit_code(&p), 0);
}

/* Every data row completed with 6 output tokens; returns the row count. */
static int check_csv(const char *path)
{
    size_t len;
    char *csv = bt_test_read_file(path, &len);
    assert_non_null(csv);
    int rows = 0;
    char *save = NULL;
    for (char *line = strtok_r(csv, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        if (rows++ == 0) {
            assert_non_null(strstr(line, "request_id,send_ms"));
            continue;
        }
        int id, in, want, got;
        double send, done;
        assert_int_equal(sscanf(line, "%d,%lf,%lf,%d,%d,%d", &id, &send, &done, &in, &want, &got),
                         6);
        assert_int_equal(in, 16);
        assert_int_equal(got, 6);
        assert_true(done >= send);
        assert_non_null(strstr(line, ",OK,"));
    }
    free(csv);
    return rows - 1;
}

static void test_bench_open_loop_and_search(void **state)
{
    (void)state;
    char model[512], dir[512], path[1024];
    assert_int_equal(bt_test_make_model("tiny", model, sizeof model), 0);
    bt_cluster_t c;
    assert_int_equal(bt_cluster_start(&c, model, 1, 1, 0, NULL), 0);
    bt_test_tmp_path("bench", dir, sizeof dir);
    const char *open_loop[] = {"--rate", "20", "--arrival", "gamma", "--cv", "2", NULL};
    run_bench(c.client_ep, dir, open_loop);
    snprintf(path, sizeof path, "%s/requests.csv", dir);
    assert_int_equal(check_csv(path), N_REQ);
    snprintf(path, sizeof path, "%s/result.json", dir);
    char *json = bt_test_read_file(path, NULL);
    assert_non_null(json);
    assert_true(json_num(json, "completed") == N_REQ);
    assert_true(json_num(json, "total_input_tokens") == 16 * N_REQ);
    assert_true(json_num(json, "total_output_tokens") == 6 * N_REQ);
    assert_true(json_num(json, "request_throughput") > 0);
    assert_true(json_num(json, "mean_ttft_ms") > 0);
    assert_true(json_num(json, "p99_ttft_ms") >= json_num(json, "median_ttft_ms"));
    assert_true(json_num(json, "mean_tpot_ms") > 0);
    assert_true(json_num(json, "mean_itl_ms") > 0);
    assert_true(json_num(json, "slo_attainment") >= 0);
    free(json);

    char dir2[512];
    bt_test_tmp_path("bench-search", dir2, sizeof dir2);
    const char *search[] = {
        "--goodput-search", "--rate", "50", "--search-iters", "1", "--slo-ttft-ms", "5000",
        "--slo-tpot-ms",    "1000",   NULL};
    run_bench(c.client_ep, dir2, search);
    snprintf(path, sizeof path, "%s/result.json", dir2);
    json = bt_test_read_file(path, NULL);
    assert_non_null(json);
    assert_non_null(strstr(json, "\"search\": [{\"rate\": 50.0"));
    assert_true(json_num(json, "goodput") >= 50); /* loose objectives: 50 req/s passes */
    free(json);

    /* Closed loop, compared against the same cluster: both sides complete everything. */
    char dir3[512];
    bt_test_tmp_path("bench-compare", dir3, sizeof dir3);
    const char *compare[] = {"--concurrency", "3", "--compare", c.client_ep, "--plots=0", NULL};
    run_bench(c.client_ep, dir3, compare);
    snprintf(path, sizeof path, "%s/b/requests.csv", dir3);
    assert_int_equal(check_csv(path), N_REQ);
    snprintf(path, sizeof path, "%s/a/result.json", dir3);
    json = bt_test_read_file(path, NULL);
    assert_non_null(json);
    assert_non_null(strstr(json, "\"mode\": \"closed-loop\""));
    assert_true(json_num(json, "max_concurrency") == 3);
    free(json);
    snprintf(path, sizeof path, "%s/compare.json", dir3);
    json = bt_test_read_file(path, NULL);
    assert_non_null(json);
    assert_true(json_num(json, "a_value") > 0 && json_num(json, "ratio") > 0);
    free(json);
    assert_int_equal(bt_cluster_stop(&c), 0);
}

static void test_bench_trace_replay(void **state)
{
    (void)state;
    char trace[1024], model[512], dir[512], path[1100];
    BT_TEST_NEED_SHARED("traces/azure2023/AzureLLMInferenceTrace_code.csv", trace);
    assert_int_equal(bt_test_make_model("tiny", model, sizeof model), 0);
    bt_cluster_t c;
    assert_int_equal(bt_cluster_start(&c, model, 1, 1, 0, NULL), 0);
    bt_test_tmp_path("bench-trace", dir, sizeof dir);
    const char *replay[] = {"--workload", trace,           "--arrival", "trace", "--time-scale",
                            "0.5",        "--concurrency", "0",         NULL};
    run_bench(c.client_ep, dir, replay);
    snprintf(path, sizeof path, "%s/result.json", dir);
    char *json = bt_test_read_file(path, NULL);
    assert_non_null(json);
    assert_true(json_num(json, "completed") == N_REQ);
    assert_non_null(strstr(json, "\"arrival\": \"trace\""));
    free(json);
    assert_int_equal(bt_cluster_stop(&c), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bench_open_loop_and_search),
        cmocka_unit_test(test_bench_trace_replay),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
