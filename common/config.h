/* SPDX-License-Identifier: MIT */
/*
 * config.h - one option table per program drives its config file, environment variables,
 * command-line flags, --help and validation (redis createIntConfig, nginx ngx_command_t).
 *
 * Precedence, lowest first: the table's defaults, a config file (--config FILE: "name = value"
 * lines, '#' comments), environment variables (BATON_<NAME>, dashes as underscores, upper
 * case), then flags (--name VALUE, --name=VALUE, a short alias, --flag / --no-flag for
 * booleans). Everything is validated (type, min/max) before the program builds anything; a bad
 * value is reported with the option's name and where it came from.
 */
#ifndef BATON_CONFIG_H
#define BATON_CONFIG_H

#include <stddef.h>
#include <stdio.h>

typedef enum {
    BT_CFG_INT,    /* int */
    BT_CFG_INT64,  /* int64_t */
    BT_CFG_FLOAT,  /* float */
    BT_CFG_BOOL,   /* int, 0 or 1 */
    BT_CFG_SIZE,   /* size_t bytes; accepts K, M, G suffixes (powers of 1024) */
    BT_CFG_STRING, /* char *, owned by the config (bt_cfg_free releases it); NULL if unset */
} bt_cfg_type_t;

typedef struct {
    const char *name; /* long flag name, e.g. "max-tokens" */
    char short_name;  /* one-letter alias ('n' for -n), or 0 */
    bt_cfg_type_t type;
    const char *def; /* default as text; NULL: unset (strings) or 0 */
    double min, max; /* bounds for numeric types (ignored when min == max) */
    size_t offset;   /* offsetof(config struct, field) */
    const char *help;
} bt_cfg_opt_t;

typedef struct {
    const char *prog;    /* program name for usage */
    const char *summary; /* one line under the usage line */
    const bt_cfg_opt_t *opts;
    int n_opts;
    const char *env_prefix; /* "BATON_" if NULL */
} bt_cfg_table_t;

/*
 * Fills cfg (which must start zeroed) from defaults, file, environment and argv[first..argc).
 * Non-flag arguments are collected in order into positional (capacity max_positional; NULL/0 to
 * refuse them), their count in *n_positional. Returns BT_OK; BT_AGAIN when --help was asked (usage
 * printed to stdout); BT_ERR_INVAL after printing the error and the usage to stderr. Unless it
 * returns BT_OK, the strings it set are freed again (bt_cfg_free) and nothing is left to free.
 */
int bt_cfg_parse(const bt_cfg_table_t *t, void *cfg, int argc, char **argv, int first,
                 char **positional, int max_positional, int *n_positional);
/* Prints usage with every option, its default and bounds. */
void bt_cfg_usage(const bt_cfg_table_t *t, FILE *out);
/* Frees the strings the config owns. */
void bt_cfg_free(const bt_cfg_table_t *t, void *cfg);

/* A tool's work on its parsed config (borrowed); returns the process's exit status. */
typedef int (*bt_cfg_main_fn)(const void *cfg);
/*
 * The whole main() of a command-line tool: parses argv[1..argc) with table t into cfg (zeroed),
 * sets the log level from the string option at log_level_offset, runs main_fn(cfg) and frees the
 * config. Returns the exit status: 0 after --help, 2 for a bad option or an unknown log level
 * ("<prog>: unknown --log-level NAME" on stderr), else main_fn's.
 */
int bt_cfg_run(const bt_cfg_table_t *t, void *cfg, size_t log_level_offset, int argc, char **argv,
               bt_cfg_main_fn main_fn);

#endif
