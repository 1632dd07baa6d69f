/* SPDX-License-Identifier: MIT */
/*
 * report.c - result.json, requests.csv and the printed summary.
 *
 * JSON is written by hand (no library in the tree) with numbers that are always finite:
 * a distribution without samples reports zeros and its count says so.
 */
#include "report.h"

#include <math.h>
#include <string.h>

#include "common/log.h"
#include "common/status.h"
#include "common/json.h"

static double fin(double x)
{
    return isfinite(x) ? x : 0;
}

/* mean_X_ms, median_X_ms, std_X_ms, p90_X_ms, p99_X_ms as vLLM names them. */
static void json_dist(FILE *f, const char *ind, const char *name, const bb_dist_t *d)
{
    fprintf(f, "%s\"mean_%s_ms\": %.6f,\n", ind, name, fin(d->mean));
    fprintf(f, "%s\"median_%s_ms\": %.6f,\n", ind, name, fin(d->median));
    fprintf(f, "%s\"std_%s_ms\": %.6f,\n", ind, name, fin(d->std));
    fprintf(f, "%s\"p90_%s_ms\": %.6f,\n", ind, name, fin(d->p90));
    fprintf(f, "%s\"p99_%s_ms\": %.6f,\n", ind, name, fin(d->p99));
}

static void json_errors(FILE *f, const bb_summary_t *s, const char *ind)
{
    fprintf(f, "%s\"errors\": {", ind);
    for (int i = 0; i < s->n_error_codes; i++)
        fprintf(f, "%s\"%s\": %zu", i ? ", " : "", bt_status_name(s->error_codes[i]),
                s->error_counts[i]);
    fprintf(f, "},\n");
}

static void json_breakdown(FILE *f, const bb_summary_t *s, const char *ind)
{
    const char *names[5] = {"prefill_queue", "prefill", "transfer", "decode_queue", "decode"};
    const bb_dist_t *d[5] = {&s->prefill_queue, &s->prefill, &s->transfer, &s->decode_queue,
                             &s->decode};
    fprintf(f, "%s\"breakdown_ms\": {", ind);
    for (int k = 0; k < 5; k++)
        fprintf(f, "%s\"%s\": {\"mean\": %.6f, \"median\": %.6f, \"p99\": %.6f, \"n\": %zu}",
                k ? ", " : "", names[k], fin(d[k]->mean), fin(d[k]->median), fin(d[k]->p99),
                d[k]->n);
    fprintf(f, "}");
}

void bb_report_json_summary(FILE *f, const bb_summary_t *s, const char *ind)
{
    fprintf(f, "%s\"num_prompts\": %zu,\n", ind, s->n_requests);
    fprintf(f, "%s\"completed\": %zu,\n", ind, s->completed);
    fprintf(f, "%s\"failed\": %zu,\n", ind, s->failed);
    fprintf(f, "%s\"duration\": %.6f,\n", ind, s->duration_s);
    fprintf(f, "%s\"total_input_tokens\": %llu,\n", ind, (unsigned long long)s->total_input_tokens);
    fprintf(f, "%s\"total_output_tokens\": %llu,\n", ind,
            (unsigned long long)s->total_output_tokens);
    fprintf(f, "%s\"request_throughput\": %.6f,\n", ind, s->request_throughput);
    fprintf(f, "%s\"output_throughput\": %.6f,\n", ind, s->output_throughput);
    fprintf(f, "%s\"total_token_throughput\": %.6f,\n", ind, s->total_token_throughput);
    json_dist(f, ind, "ttft", &s->ttft);
    json_dist(f, ind, "tpot", &s->tpot);
    json_dist(f, ind, "itl", &s->itl);
    json_dist(f, ind, "e2el", &s->e2el);
    fprintf(f, "%s\"slo_attainment\": %.6f,\n", ind, s->slo_attainment);
    fprintf(f, "%s\"ttft_attainment\": %.6f,\n", ind, s->ttft_attainment);
    fprintf(f, "%s\"tpot_attainment\": %.6f,\n", ind, s->tpot_attainment);
    json_errors(f, s, ind);
    json_breakdown(f, s, ind);
}

/* Closes f (written to path); BT_ERR_IO, logged, if any write to it failed. */
static int report_close(FILE *f, const char *path)
{
    int bad = ferror(f);
    bad |= fclose(f) != 0;
    if (bad) {
        bt_error("%s: write failed", path);
        return BT_ERR_IO;
    }
    return BT_OK;
}

static void json_ctx(FILE *f, const bb_report_ctx_t *c)
{
    fprintf(f, "{\n  \"backend\": \"baton\",\n  \"endpoint\": ");
    bt_json_write_str(f, c->endpoint);
    fprintf(f, ",\n  \"model_id\": ");
    bt_json_write_str(f, c->model);
    fprintf(f, ",\n  \"workload\": ");
    bt_json_write_str(f, c->workload);
    fprintf(f, ",\n  \"arrival\": ");
    bt_json_write_str(f, c->arrival);
    fprintf(f, ",\n  \"mode\": ");
    bt_json_write_str(f, c->mode);
    fprintf(f, ",\n  \"request_rate\": %.6f,\n  \"burstiness_cv\": %.6f,\n", c->request_rate,
            c->cv);
    fprintf(f, "  \"time_scale\": %.6f,\n  \"max_concurrency\": %d,\n  \"seed\": %lld,\n",
            c->time_scale, c->concurrency, c->seed);
    fprintf(f, "  \"slo_ttft_ms\": %.6f,\n  \"slo_tpot_ms\": %.6f,\n  \"n_gpus\": %d,\n",
            c->slo.slo_ttft_ms, c->slo.slo_tpot_ms, c->n_gpus);
}

int bb_report_json(const char *path, const bb_report_ctx_t *c, const bb_summary_t *s,
                   const bb_point_t *points, int n_points, double goodput)
{
    FILE *f = fopen(path, "w");
    if (!f) {
        bt_error("%s: cannot write", path);
        return BT_ERR_IO;
    }
    json_ctx(f, c);
    bb_report_json_summary(f, s, "  ");
    if (n_points > 0) {
        fprintf(f, ",\n  \"search\": [");
        for (int i = 0; i < n_points; i++)
            fprintf(f, "%s{\"rate\": %.6f, \"slo_attainment\": %.6f}", i ? ", " : "",
                    points[i].rate, points[i].attainment);
        fprintf(f, "],\n  \"goodput\": %.6f,\n  \"goodput_per_gpu\": %.6f", fin(goodput),
                c->n_gpus > 0 ? fin(goodput) / c->n_gpus : 0);
    }
    fprintf(f, "\n}\n");
    return report_close(f, path);
}

static void csv_row(FILE *f, const bb_run_t *run, size_t i, const bb_slo_t *slo)
{
    const bb_timeline_t *t = &run->tl[i];
    bb_req_metrics_t m;
    bb_req_metrics(t, slo, &m);
    const bb_phases_t *p = &t->phases;
    fprintf(f, "%zu,%.3f,%.3f,%d,%d,%u,%.3f,%.3f,%.3f,%d,%s,%.3f,%.3f,%.3f,%.3f,%.3f,%s,%s\n",
            i + 1, t->send_ms, t->done_ms, t->n_prompt, t->n_expected, m.n_output, m.ttft_ms,
            m.tpot_ms, m.e2e_ms, m.slo_ok, m.ok ? "OK" : bt_status_name(t->status),
            p->prefill_queue_ms, p->prefill_ms, p->transfer_ms, p->decode_queue_ms, p->decode_ms,
            run->prefill_instance[i] ? run->prefill_instance[i] : "",
            run->decode_instance[i] ? run->decode_instance[i] : "");
}

int bb_report_csv(const char *path, const bb_run_t *run, const bb_slo_t *slo)
{
    FILE *f = fopen(path, "w");
    if (!f) {
        bt_error("%s: cannot write", path);
        return BT_ERR_IO;
    }
    fprintf(f, "request_id,send_ms,done_ms,input_tokens,expected_output_tokens,output_tokens,"
               "ttft_ms,tpot_ms,e2e_ms,slo_ok,status,prefill_queue_ms,prefill_ms,transfer_ms,"
               "decode_queue_ms,decode_ms,prefill_instance,decode_instance\n");
    for (size_t i = 0; i < run->n; i++)
        csv_row(f, run, i, slo);
    return report_close(f, path);
}

static void print_dist(FILE *f, const char *name, const bb_dist_t *d)
{
    fprintf(f, "  %-6s mean %9.2f  median %9.2f  p90 %9.2f  p99 %9.2f  (n %zu)\n", name, d->mean,
            d->median, d->p90, d->p99, d->n);
}

void bb_report_print(FILE *f, const bb_report_ctx_t *c, const bb_summary_t *s)
{
    fprintf(f, "==== baton-bench: %s, %s", c->workload ? c->workload : "?", c->mode);
    if (c->request_rate > 0)
        fprintf(f, " at %.3f req/s", c->request_rate);
    fprintf(f, " ====\n");
    fprintf(f, "  requests %zu: completed %zu, failed %zu, duration %.2f s\n", s->n_requests,
            s->completed, s->failed, s->duration_s);
    fprintf(f, "  throughput %.3f req/s, %.1f output tok/s, %.1f total tok/s\n",
            s->request_throughput, s->output_throughput, s->total_token_throughput);
    fprintf(f, "  latency (ms):\n");
    print_dist(f, "TTFT", &s->ttft);
    print_dist(f, "TPOT", &s->tpot);
    print_dist(f, "ITL", &s->itl);
    print_dist(f, "E2E", &s->e2el);
    fprintf(f,
            "  SLO (TTFT <= %.1f ms, TPOT <= %.1f ms): attainment %.1f%% (TTFT %.1f%%, TPOT "
            "%.1f%%)\n",
            c->slo.slo_ttft_ms, c->slo.slo_tpot_ms, 100 * s->slo_attainment,
            100 * s->ttft_attainment, 100 * s->tpot_attainment);
    fprintf(f,
            "  server phases, mean ms: prefill queue %.2f, prefill %.2f, transfer %.2f, "
            "decode queue %.2f, decode %.2f\n",
            s->prefill_queue.mean, s->prefill.mean, s->transfer.mean, s->decode_queue.mean,
            s->decode.mean);
    for (int i = 0; i < s->n_error_codes; i++)
        fprintf(f, "  errors %s: %zu\n", bt_status_name(s->error_codes[i]), s->error_counts[i]);
}
