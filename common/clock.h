/* SPDX-License-Identifier: MIT */
/*
 * clock.h - monotonic time in milliseconds, and sleeping until a point of it (for load
 * generators that send at scheduled times and must not spin between them).
 */
#ifndef BATON_CLOCK_H
#define BATON_CLOCK_H

/* CLOCK_MONOTONIC in milliseconds (fractional). */
double bt_mono_ms(void);
/* Sleeps until bt_mono_ms() reaches t_ms; returns at once if it has. */
void bt_sleep_until_mono_ms(double t_ms);

#endif
