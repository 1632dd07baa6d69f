/* SPDX-License-Identifier: MIT */
/*
 * plot.h - PNG plots of a benchmark's output folder with gnuplot: attainment vs rate (a goodput
 * search), attainment vs SLO scale, TTFT and TPOT CDFs, and the server-phase breakdown.
 *
 * Plots are optional output: without gnuplot on PATH nothing is drawn and the run still
 * succeeds. The script is left in the folder (plots.gp) so the figures can be redrawn or
 * restyled without rerunning the benchmark.
 */
#ifndef BATON_HARNESS_PLOT_H
#define BATON_HARNESS_PLOT_H

#include "metrics.h"

/* Writes DIR/breakdown.csv from s: phase,mean_ms,median_ms,p99_ms. */
int bb_plot_breakdown_csv(const char *dir, const bb_summary_t *s);
/* 1 when an executable gnuplot is on PATH. */
int bb_plot_available(void);
/* Writes DIR/plots.gp for the CSV files present in dir and runs gnuplot on it when available.
 * BT_OK also when gnuplot is absent (skipped, said once at info level). */
int bb_plot_dir(const char *dir, const bb_slo_t *slo);

#endif
