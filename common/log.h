/* SPDX-License-Identifier: MIT */
/*
 * log.h - leveled logging to stderr.
 *
 * Log an error once, where it is detected. Lines carry a wall-clock timestamp, the level and
 * the source location; stdout is never used, so that tools can print their results there.
 * Safe to call from any thread (each line is written with one fprintf).
 */
#ifndef BATON_LOG_H
#define BATON_LOG_H

typedef enum {
    BT_LOG_DEBUG = 0,
    BT_LOG_INFO,
    BT_LOG_WARN,
    BT_LOG_ERROR,
    BT_LOG_OFF
} bt_log_level_t;

void bt_log_set_level(bt_log_level_t level);
bt_log_level_t bt_log_get_level(void);
/* Parses "debug", "info", "warn", "error", "off"; returns -1 on an unknown name. */
int bt_log_level_parse(const char *name);

void bt_log_write(bt_log_level_t level, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#define bt_debug(...) bt_log_write(BT_LOG_DEBUG, __FILE__, __LINE__, __VA_ARGS__)
#define bt_info(...) bt_log_write(BT_LOG_INFO, __FILE__, __LINE__, __VA_ARGS__)
#define bt_warn(...) bt_log_write(BT_LOG_WARN, __FILE__, __LINE__, __VA_ARGS__)
#define bt_error(...) bt_log_write(BT_LOG_ERROR, __FILE__, __LINE__, __VA_ARGS__)

#endif
