/* SPDX-License-Identifier: MIT */
/*
 * log.c - leveled logging to stderr; the level comes from BATON_LOG or bt_log_set_level.
 */
#include "log.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static atomic_int log_level = -1; /* -1: not yet read from the environment */

#if defined(__SANITIZE_ADDRESS__)
/* What LeakSanitizer leaves out in sanitizer builds (it asks at exit; every program links this
 * file). UCX 1.13's shared-memory transport can leave an endpoint's small tables behind (about
 * 100 bytes, allocated in uct_mm_ep_t_new under ucp_ep_create) when a peer died shortly before
 * the process exits, although every endpoint was closed and the worker destroyed first: seen
 * in one of four sanitizer runs of the fault-injection test. Without frame pointers in UCX
 * the stack ends in libuct, so the suppression names the library; allocations of baton's own
 * stay checked. */
const char *__lsan_default_suppressions(void);
const char *__lsan_default_suppressions(void)
{
    return "leak:libuct.so\n";
}
#endif

static const char *const level_names[] = {"debug", "info", "warn", "error", "off"};

int bt_log_level_parse(const char *name)
{
    for (int i = 0; i <= BT_LOG_OFF; i++)
        if (strcmp(name, level_names[i]) == 0)
            return i;
    return -1;
}

void bt_log_set_level(bt_log_level_t level)
{
    atomic_store(&log_level, (int)level);
}

bt_log_level_t bt_log_get_level(void)
{
    int level = atomic_load(&log_level);
    if (level < 0) {
        const char *env = getenv("BATON_LOG");
        level = env ? bt_log_level_parse(env) : -1;
        if (level < 0)
            level = BT_LOG_INFO;
        atomic_store(&log_level, level);
    }
    return (bt_log_level_t)level;
}

void bt_log_write(bt_log_level_t level, const char *file, int line, const char *fmt, ...)
{
    if (level < bt_log_get_level())
        return;
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);

    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    const char *base = strrchr(file, '/');
    fprintf(stderr, "%02d:%02d:%02d.%03ld %-5s %s:%d %s\n", tm.tm_hour, tm.tm_min, tm.tm_sec,
            ts.tv_nsec / 1000000, level_names[level], base ? base + 1 : file, line, msg);
}
