/* SPDX-License-Identifier: MIT */
/*
 * steplog.h - a daemon's record of every forward it runs: its shape and how long it took, as
 * CSV that baton-profile --refit fits (docs/planner.md, "Profiles from serving").
 *
 * The profiler times each shape alone, on an otherwise idle engine; a serving daemon shares the
 * machine's caches and memory with the other processes of its cluster and does per-step work
 * around each forward (sampling, streaming tokens, shipping KV). The step log is what the
 * daemon's queue actually saw, so a profile fitted from it predicts the served cluster.
 *
 * Format: a header line, then one line per forward:
 *   pstep,SUM_LEN,SUM_LEN2,MS,FORWARD_MS,SEQS,T_MS   a prefill batch: sum of its prompt lengths
 *                                                    (new rows) and of their squares
 *   dstep,SEQS,SUM_CTX,MS,FORWARD_MS,SEQS,T_MS       a decode step: sequences, sum of the
 *                                                    positions each attends (its context and
 *                                                    its new token)
 *   mstep,SEQS,ROWS,MS,FORWARD_MS,SEQS,T_MS          anything else (prompts recomputed next
 *                                                    to decoding sequences); not fitted
 * MS is the whole step (planning, forward, sampling, sending), FORWARD_MS the engine's part,
 * T_MS the step's start on the monotonic clock. Lines reach the file whole, at least once a
 * second while the daemon is busy and as soon as it goes idle, so a log can be read while it
 * grows. Writing stops (with one warning) after
 * BT_STEPLOG_MAX_BYTES, so a forgotten log cannot fill a disk.
 *
 * Threads: one writer (the compute thread); open and close on the main thread.
 */
#ifndef BATON_STEPLOG_H
#define BATON_STEPLOG_H

#define BT_STEPLOG_MAX_BYTES (1024.0 * 1024 * 1024)

typedef struct bt_steplog bt_steplog_t;

typedef enum { BT_STEP_PREFILL = 0, BT_STEP_DECODE, BT_STEP_MIXED } bt_step_kind_t;

/* Creates or truncates path. BT_ERR_IO (logged) when it cannot. */
int bt_steplog_open(const char *path, bt_steplog_t **out);
/* Flushes and closes; NULL-safe. */
void bt_steplog_close(bt_steplog_t *l);
/* Writes out the lines held (NULL-safe): the daemon calls it whenever it goes idle. */
void bt_steplog_flush(bt_steplog_t *l);
/* One line of a step log, or of a profiler's raw file (its first four fields). */
typedef struct {
    char kind[16]; /* pstep, dstep, mstep; a raw file's prefill, decode, transfer */
    double x, y, ms, forward_ms, seqs, t_ms;
} bt_steplog_line_t;

/* Reads line into out; returns the fields read: 7 for a step-log line, 4 for a raw file's,
 * fewer for anything else (a header, a line cut short). */
int bt_steplog_parse(const char *line, bt_steplog_line_t *out);

/* Records one step (NULL-safe: no log, nothing done). x and y as the format above says. */
void bt_steplog_write(bt_steplog_t *l, bt_step_kind_t kind, double x, double y, int seqs,
                      double t0_ms, double forward_ms, double step_ms);

#endif
