/* SPDX-License-Identifier: MIT */
/*
 * test_report.c - result.json carries vLLM bench-serve field names with the summary's values
 * and the search points, and the plot step writes its gnuplot script and succeeds whether or
 * not gnuplot is installed (plots are optional output).
 */
// ctest-labels: unit
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/status.h"
#include "harness/plot.h"
#include "harness/report.h"

static void test_report_json_fields(void **state)
{
    (void)state;
    bb_summary_t s = {.n_requests = 3,
                      .completed = 2,
                      .failed = 1,
                      .total_input_tokens = 10,
                      .total_output_tokens = 6,
                      .duration_s = 1,
                      .request_throughput = 2,
                      .slo_attainment = 0.5,
                      .n_error_codes = 1};
    s.ttft = (bb_dist_t){.mean = 35, .median = 35, .p99 = 49.7, .n = 2};
    s.error_codes[0] = BT_ERR_OVERLOADED;
    s.error_counts[0] = 1;
    bb_report_ctx_t c = {.endpoint = "tcp://x",
                         .model = "m\"q",
                         .workload = "w",
                         .arrival = "poisson",
                         .mode = "goodput-search",
                         .n_gpus = 2};
    bb_point_t pts[2] = {{1, 1}, {2, 0.5}};
    char path[512];
    bt_test_tmp_path("result.json", path, sizeof path);
    assert_int_equal(bb_report_json(path, &c, &s, pts, 2, 1.0), BT_OK);
    char *j = bt_test_read_file(path, NULL);
    assert_non_null(j);
    const char *want[] = {
        "\"completed\": 2,",        "\"total_input_tokens\": 10,",
        "\"mean_ttft_ms\": 35.0",   "\"p99_ttft_ms\": 49.7",
        "\"median_tpot_ms\": 0.0",  "\"mean_itl_ms\"",
        "\"p99_e2el_ms\"",          "\"request_throughput\": 2.0",
        "\"slo_attainment\": 0.5",  "\"BT_ERR_OVERLOADED\": 1",
        "\"model_id\": \"m\\\"q\"", "{\"rate\": 2.000000, \"slo_attainment\": 0.500000}",
        "\"goodput_per_gpu\": 0.5"};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        if (!strstr(j, want[i]))
            fail_msg("missing %s in\n%s", want[i], j);
    free(j);
    assert_int_equal(bb_report_json("/nonexistent/dir/result.json", &c, &s, NULL, 0, 0), BT_ERR_IO);
}

static void test_plot_script_without_failing(void **state)
{
    (void)state;
    char dir[512], path[600];
    bt_test_tmp_path("plots", dir, sizeof dir);
    assert_int_equal(mkdir(dir, 0777), 0);
    bb_summary_t s = {0};
    assert_int_equal(bb_plot_breakdown_csv(dir, &s), BT_OK);
    bb_slo_t slo = {100, 10};
    assert_int_equal(bb_plot_dir(dir, &slo), BT_OK);
    snprintf(path, sizeof path, "%s/plots.gp", dir);
    char *gp = bt_test_read_file(path, NULL);
    assert_non_null(gp);
    assert_non_null(strstr(gp, "breakdown.png"));
    assert_null(strstr(gp, "attainment_vs_rate.png")); /* no search.csv here */
    free(gp);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_report_json_fields),
        cmocka_unit_test(test_plot_script_without_failing),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
