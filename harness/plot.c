/* SPDX-License-Identifier: MIT */
/*
 * plot.c - gnuplot scripts over baton-bench's CSV files.
 *
 * gnuplot runs as a child through /bin/sh with the folder quoted; its failure only costs the
 * figures, so it is reported and not returned as an error of the benchmark.
 */
#include "plot.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/log.h"
#include "common/status.h"

int bb_plot_breakdown_csv(const char *dir, const bb_summary_t *s)
{
    char path[1100];
    snprintf(path, sizeof path, "%s/breakdown.csv", dir);
    FILE *f = fopen(path, "w");
    if (!f) {
        bt_error("%s: cannot write", path);
        return BT_ERR_IO;
    }
    const char *names[5] = {"prefill_queue", "prefill", "transfer", "decode_queue", "decode"};
    const bb_dist_t *d[5] = {&s->prefill_queue, &s->prefill, &s->transfer, &s->decode_queue,
                             &s->decode};
    fprintf(f, "phase,mean_ms,median_ms,p99_ms\n");
    for (int k = 0; k < 5; k++)
        fprintf(f, "%s,%.6f,%.6f,%.6f\n", names[k], d[k]->mean, d[k]->median, d[k]->p99);
    return fclose(f) == 0 ? BT_OK : BT_ERR_IO;
}

int bb_plot_available(void)
{
    const char *path = getenv("PATH");
    if (!path)
        return 0;
    char buf[4096];
    for (const char *p = path; *p;) {
        size_t len = strcspn(p, ":");
        snprintf(buf, sizeof buf, "%.*s/gnuplot", (int)len, p);
        if (len > 0 && access(buf, X_OK) == 0)
            return 1;
        p += len + (p[len] == ':');
    }
    return 0;
}

static int has(const char *dir, const char *name)
{
    char path[1100];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    return access(path, R_OK) == 0;
}

/* One figure per CSV present; columns as the harness writes them. */
static void script(FILE *f, const char *dir, const bb_slo_t *slo)
{
    fprintf(f, "set terminal pngcairo size 800,500 noenhanced\nset datafile separator ','\n"
               "set key autotitle columnhead\nset grid\n");
    if (has(dir, "search.csv"))
        fprintf(f, "set output 'attainment_vs_rate.png'\nset xlabel 'rate (req/s)'\n"
                   "set ylabel 'SLO attainment (%%)'\nset yrange [0:105]\n"
                   "plot 'search.csv' using 1:($2*100) with linespoints title 'attainment'\n");
    if (has(dir, "slo_scale.csv"))
        fprintf(f, "set output 'attainment_vs_slo_scale.png'\nset xlabel 'SLO scale'\n"
                   "set ylabel 'SLO attainment (%%)'\nset yrange [0:105]\n"
                   "plot 'slo_scale.csv' using 1:($2*100) with linespoints title 'attainment'\n");
    if (has(dir, "requests.csv")) {
        /* Failed requests have negative latencies: left out of the CDFs. */
        fprintf(f,
                "set yrange [0:1]\nset ylabel 'fraction of requests'\n"
                "set output 'ttft_cdf.png'\nset xlabel 'TTFT (ms)'\nset arrow 1 from %g,0 to "
                "%g,1 nohead dt 2\n"
                "plot 'requests.csv' using ($7>=0?$7:1/0):(1) smooth cnormal title 'TTFT'\n",
                slo->slo_ttft_ms, slo->slo_ttft_ms);
        fprintf(f,
                "set output 'tpot_cdf.png'\nset xlabel 'TPOT (ms)'\nset arrow 1 from %g,0 to "
                "%g,1 nohead dt 2\n"
                "plot 'requests.csv' using ($8>=0?$8:1/0):(1) smooth cnormal title 'TPOT'\n"
                "unset arrow 1\n",
                slo->slo_tpot_ms, slo->slo_tpot_ms);
    }
    if (has(dir, "breakdown.csv"))
        fprintf(f, "set output 'breakdown.png'\nset autoscale y\nset ylabel 'mean ms'\n"
                   "set xlabel 'server phase'\nset style fill solid 0.6\nset boxwidth 0.6\n"
                   "plot 'breakdown.csv' using 0:2:xtic(1) with boxes title 'mean'\n");
}

int bb_plot_dir(const char *dir, const bb_slo_t *slo)
{
    char path[1100], cmd[2400];
    snprintf(path, sizeof path, "%s/plots.gp", dir);
    FILE *f = fopen(path, "w");
    if (!f) {
        bt_error("%s: cannot write", path);
        return BT_ERR_IO;
    }
    script(f, dir, slo);
    if (fclose(f) != 0)
        return BT_ERR_IO;
    if (!bb_plot_available()) {
        bt_info("gnuplot not found: no plots (the script is in %s)", path);
        return BT_OK;
    }
    if (strchr(dir, '\'')) {
        bt_warn("%s: a quote in the folder name; plots skipped", dir);
        return BT_OK;
    }
    snprintf(cmd, sizeof cmd, "cd '%s' && gnuplot plots.gp", dir);
    if (system(cmd) != 0)
        bt_warn("gnuplot failed on %s; no plots", path);
    return BT_OK;
}
