/* SPDX-License-Identifier: MIT */
/*
 * cli.h - the subcommands of the baton tool, each given argv after its own name.
 * Each returns a process exit status (0 ok, 1 failure, 2 usage error).
 */
#ifndef BATON_CLI_H
#define BATON_CLI_H

int cli_run(int argc, char **argv);
int cli_model(int argc, char **argv);
int cli_bench_engine(int argc, char **argv);
int cli_generate(int argc, char **argv);
int cli_up(int argc, char **argv);
int cli_status(int argc, char **argv);

/* Loads a model given --model and optional --tokenizer; logs and returns NULL on failure. */
#include "common/model.h"
bt_model_t *cli_load_model(const char *path, const char *tokenizer_path);

/* Seconds on a monotonic clock. */
double cli_now(void);

#endif
