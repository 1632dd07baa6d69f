/* SPDX-License-Identifier: MIT */
/*
 * steplog.c - the step log of steplog.h. Lines are gathered in a buffer of whole lines and
 * written with one write(2) when it fills or a second has passed, so that a reader of a live
 * log (baton-profile --refit while the daemon serves) only ever sees whole lines.
 */
#include "steplog.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "alloc.h"
#include "log.h"
#include "status.h"

#define STEPLOG_BUF 65536

struct bt_steplog {
    int fd;
    double written, last_flush_ms;
    int full; /* BT_STEPLOG_MAX_BYTES reached, or a write failed */
    size_t len;
    char buf[STEPLOG_BUF];
};

static void flush(bt_steplog_t *l)
{
    size_t off = 0;
    while (off < l->len) {
        ssize_t n = write(l->fd, l->buf + off, l->len - off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            bt_warn("step log: write failed (%s); no more steps recorded", strerror(errno));
            l->full = 1;
            break;
        }
        off += (size_t)n;
    }
    l->len = 0;
}

int bt_steplog_open(const char *path, bt_steplog_t **out)
{
    bt_steplog_t *l = bt_calloc(1, sizeof *l);
    if (!l)
        return BT_ERR_NOMEM;
    l->fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (l->fd < 0) {
        bt_error("step log %s: %s", path, strerror(errno));
        bt_free(l);
        return BT_ERR_IO;
    }
    static const char head[] = "kind,n,len_or_ctx,ms,forward_ms,seqs,t_ms\n";
    memcpy(l->buf, head, sizeof head - 1);
    l->len = sizeof head - 1;
    flush(l);
    *out = l;
    return BT_OK;
}

void bt_steplog_flush(bt_steplog_t *l)
{
    if (l && !l->full && l->len)
        flush(l);
}

void bt_steplog_close(bt_steplog_t *l)
{
    if (!l)
        return;
    if (!l->full)
        flush(l);
    close(l->fd);
    bt_free(l);
}

int bt_steplog_parse(const char *line, bt_steplog_line_t *out)
{
    memset(out, 0, sizeof *out);
    return sscanf(line, "%15[a-z],%lf,%lf,%lf,%lf,%lf,%lf", out->kind, &out->x, &out->y, &out->ms,
                  &out->forward_ms, &out->seqs, &out->t_ms);
}

void bt_steplog_write(bt_steplog_t *l, bt_step_kind_t kind, double x, double y, int seqs,
                      double t0_ms, double forward_ms, double step_ms)
{
    static const char *const names[] = {"pstep", "dstep", "mstep"};
    char line[256];
    if (!l || l->full)
        return;
    int n = snprintf(line, sizeof line, "%s,%.17g,%.17g,%.4f,%.4f,%d,%.3f\n", names[kind], x, y,
                     step_ms, forward_ms, seqs, t0_ms);
    if (n <= 0 || (size_t)n >= sizeof line)
        return;
    if (l->len + (size_t)n > sizeof l->buf)
        flush(l);
    memcpy(l->buf + l->len, line, (size_t)n);
    l->len += (size_t)n;
    l->written += n;
    if (l->written >= BT_STEPLOG_MAX_BYTES) {
        bt_warn("step log: %.0f bytes written, no more steps recorded", l->written);
        flush(l);
        l->full = 1;
    } else if (t0_ms - l->last_flush_ms >= 1000) {
        flush(l);
        l->last_flush_ms = t0_ms;
    }
}
