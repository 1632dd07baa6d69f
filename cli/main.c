/* SPDX-License-Identifier: MIT */
/*
 * main.c - the baton tool: dispatches to a subcommand (llama2.c run.c keeps main small; so
 * do we: each subcommand parses its own option table and owns its objects).
 */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "cli.h"
#include "common/log.h"

typedef struct {
    const char *name;
    int (*fn)(int argc, char **argv);
    const char *help;
} command_t;

static const command_t commands[] = {
    {"run", cli_run, "generate text from a prompt with a model (offline, one sequence)"},
    {"model", cli_model,
     "model tools: 'model gen' writes a synthetic GGUF, 'model info' shows one"},
    {"bench-engine", cli_bench_engine, "measure engine prefill and decode throughput"},
    {"generate", cli_generate, "send a prompt to a running cluster's router; print the text"},
    {"up", cli_up, "start a router and prefill/decode daemons on this machine"},
    {"status", cli_status, "show a running cluster as its router sees it (exit 0: it can serve)"},
};

static void usage(FILE *out)
{
    fprintf(out, "usage: baton COMMAND [options]   (baton COMMAND --help for its options)\n\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(out, "  %-14s %s\n", commands[i].name, commands[i].help);
}

double cli_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

bt_model_t *cli_load_model(const char *path, const char *tokenizer_path)
{
    if (!path) {
        bt_error("no model given (--model FILE; 'baton model gen' writes one)");
        return NULL;
    }
    bt_model_params_t mp = {.path = path, .tokenizer_path = tokenizer_path};
    bt_model_t *m = NULL;
    int st = bt_model_load(&mp, &m);
    if (st != BT_OK) {
        bt_error("cannot load model %s: %s", path, bt_status_str(st));
        return NULL;
    }
    return m;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return 0;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (!strcmp(argv[1], commands[i].name))
            return commands[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "baton: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
