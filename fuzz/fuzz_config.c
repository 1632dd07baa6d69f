/* SPDX-License-Identifier: MIT */
/*
 * fuzz_config.c - a daemon's settings from outside: a config file (--config FILE) and
 * command-line flags, through bt_cfg_parse with a table of every option type.
 *
 * Input: the config file's text up to the first NUL byte, then flags separated by NUL bytes
 * (at most 16). Properties: a parse that succeeds leaves every number inside its bounds and
 * every boolean 0 or 1; one that fails leaves nothing to free (LeakSanitizer checks both).
 * bt_cfg_parse prints errors to stderr and --help to stdout, both silenced around the call.
 */
#include <fcntl.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#include "common/config.h"
#include "common/status.h"
#include "fuzz.h"

typedef struct {
    int n;
    int64_t big;
    float f;
    int flag;
    size_t mem;
    char *name;
    char *other;
} cfg_t;

static const bt_cfg_opt_t g_opts[] = {
    {"count", 'n', BT_CFG_INT, "4", 1, 64, offsetof(cfg_t, n), "an int"},
    {"big", 0, BT_CFG_INT64, "0", -1e12, 1e12, offsetof(cfg_t, big), "an int64"},
    {"ratio", 'r', BT_CFG_FLOAT, "0.5", 0, 1, offsetof(cfg_t, f), "a float"},
    {"flag", 0, BT_CFG_BOOL, "0", 0, 0, offsetof(cfg_t, flag), "a bool"},
    {"mem", 'm', BT_CFG_SIZE, "1M", 1024, 1e12, offsetof(cfg_t, mem), "a size"},
    {"name", 0, BT_CFG_STRING, "x", 0, 0, offsetof(cfg_t, name), "a string"},
    {"other", 'o', BT_CFG_STRING, NULL, 0, 0, offsetof(cfg_t, other), "a string, unset"},
};
static const bt_cfg_table_t g_table = {"fuzz", "the fuzz target's options", g_opts,
                                       sizeof g_opts / sizeof g_opts[0], "BATON_FUZZ_CFG_"};
static fuzz_file_t g_file;
static int g_null = -1;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_quiet_log();
    fuzz_file_open(&g_file, "baton-fuzz-config");
    g_null = open("/dev/null", O_WRONLY | O_CLOEXEC);
    FUZZ_CHECK(g_null >= 0, "/dev/null");
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *nul = memchr(data, 0, size);
    size_t file_len = nul ? (size_t)(nul - data) : size;
    fuzz_file_set(&g_file, data, file_len);
    /* argv: the program, --config FILE, then the flags (copied: the parser may keep none) */
    char *copy = malloc(size - file_len + 1);
    memcpy(copy, data + file_len, size - file_len);
    copy[size - file_len] = 0;
    char *argv[20] = {"fuzz", "--config", g_file.path};
    int argc = 3;
    for (size_t i = nul ? 1 : size - file_len; i < size - file_len && argc < 19;) {
        argv[argc++] = copy + i;
        i += strlen(copy + i) + 1;
    }
    argv[argc] = NULL;

    cfg_t cfg;
    memset(&cfg, 0, sizeof cfg);
    char *pos[2];
    int n_pos = 0;
    fflush(stdout);
    fflush(stderr);
    int out = dup(1), err = dup(2);
    dup2(g_null, 1);
    dup2(g_null, 2);
    int st = bt_cfg_parse(&g_table, &cfg, argc, argv, 1, pos, 2, &n_pos);
    fflush(stdout);
    fflush(stderr);
    dup2(out, 1);
    dup2(err, 2);
    close(out);
    close(err);
    if (st == BT_OK) {
        FUZZ_CHECK(cfg.n >= 1 && cfg.n <= 64, "count %d", cfg.n);
        FUZZ_CHECK(cfg.big >= -1000000000000 && cfg.big <= 1000000000000, "big %lld",
                   (long long)cfg.big);
        FUZZ_CHECK(cfg.f >= 0 && cfg.f <= 1, "ratio %g", (double)cfg.f);
        FUZZ_CHECK(cfg.flag == 0 || cfg.flag == 1, "flag %d", cfg.flag);
        FUZZ_CHECK(cfg.mem >= 1024 && cfg.mem <= (size_t)1e12, "mem %zu", cfg.mem);
        FUZZ_CHECK(cfg.name != NULL, "a string with a default left unset");
        FUZZ_CHECK(n_pos >= 0 && n_pos <= 2, "%d positional", n_pos);
        bt_cfg_free(&g_table, &cfg);
    } else {
        FUZZ_CHECK(st == BT_ERR_INVAL || st == BT_AGAIN, "status %d", st);
        FUZZ_CHECK(cfg.name == NULL && cfg.other == NULL, "strings left after a failure");
    }
    free(copy);
    return 0;
}
