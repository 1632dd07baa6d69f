/* SPDX-License-Identifier: MIT */
/*
 * steplog.c - the step log of steplog.h: a buffered stdio file, flushed at least once a second
 * so that a running daemon's log can be read as it grows.
 */
#include "steplog.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "alloc.h"
#include "log.h"
#include "status.h"

struct bt_steplog {
    FILE *f;
    double written, last_flush_ms;
    int full; /* BT_STEPLOG_MAX_BYTES reached */
};

int bt_steplog_open(const char *path, bt_steplog_t **out)
{
    bt_steplog_t *l = bt_calloc(1, sizeof *l);
    if (!l)
        return BT_ERR_NOMEM;
    l->f = fopen(path, "w");
    if (!l->f) {
        bt_error("step log %s: %s", path, strerror(errno));
        bt_free(l);
        return BT_ERR_IO;
    }
    fputs("kind,n,len_or_ctx,ms,forward_ms,seqs,t_ms\n", l->f);
    *out = l;
    return BT_OK;
}

void bt_steplog_close(bt_steplog_t *l)
{
    if (!l)
        return;
    fclose(l->f);
    bt_free(l);
}

void bt_steplog_write(bt_steplog_t *l, bt_step_kind_t kind, double x, double y, int seqs,
                      double t0_ms, double forward_ms, double step_ms)
{
    static const char *const names[] = {"pstep", "dstep", "mstep"};
    if (!l || l->full)
        return;
    int n = fprintf(l->f, "%s,%.17g,%.17g,%.4f,%.4f,%d,%.3f\n", names[kind], x, y, step_ms,
                    forward_ms, seqs, t0_ms);
    l->written += n > 0 ? n : 0;
    if (l->written >= BT_STEPLOG_MAX_BYTES) {
        bt_warn("step log: %.0f bytes written, no more steps recorded", l->written);
        l->full = 1;
    }
    if (t0_ms - l->last_flush_ms >= 1000) {
        fflush(l->f);
        l->last_flush_ms = t0_ms;
    }
}
