/* SPDX-License-Identifier: MIT */
/*
 * clock.c - see clock.h.
 */
#include "clock.h"

#include <errno.h>
#include <math.h>
#include <time.h>

double bt_mono_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e3 + (double)t.tv_nsec * 1e-6;
}

void bt_sleep_until_mono_ms(double t_ms)
{
    if (!(t_ms > 0))
        return;
    double sec = floor(t_ms / 1e3);
    struct timespec ts = {.tv_sec = (time_t)sec, .tv_nsec = (long)((t_ms - sec * 1e3) * 1e6)};
    if (ts.tv_nsec > 999999999L)
        ts.tv_nsec = 999999999L;
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
        ;
}
