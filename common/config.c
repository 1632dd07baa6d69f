/* SPDX-License-Identifier: MIT */
/*
 * config.c - table-driven configuration (see config.h).
 */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "alloc.h"
#include "log.h"
#include "status.h"

static const bt_cfg_opt_t *find_opt(const bt_cfg_table_t *t, const char *name, size_t len)
{
    for (int i = 0; i < t->n_opts; i++)
        if (strlen(t->opts[i].name) == len && strncmp(t->opts[i].name, name, len) == 0)
            return &t->opts[i];
    return NULL;
}

static int parse_number(const bt_cfg_opt_t *o, const char *v, double *out)
{
    char *end;
    errno = 0;
    double x = strtod(v, &end);
    if (end == v || errno)
        return BT_ERR_INVAL;
    if (o->type == BT_CFG_SIZE && *end) {
        double mul = 1;
        switch (toupper((unsigned char)*end)) {
        case 'K': mul = 1024.0; break;
        case 'M': mul = 1024.0 * 1024; break;
        case 'G': mul = 1024.0 * 1024 * 1024; break;
        default: return BT_ERR_INVAL;
        }
        x *= mul;
        end++;
        if (toupper((unsigned char)*end) == 'B' || toupper((unsigned char)*end) == 'I')
            end++;
    }
    if (*end || !isfinite(x))
        return BT_ERR_INVAL;
    if ((o->type == BT_CFG_INT || o->type == BT_CFG_INT64 || o->type == BT_CFG_SIZE) &&
        x != floor(x))
        return BT_ERR_INVAL;
    if (o->min != o->max && (x < o->min || x > o->max))
        return BT_ERR_RANGE;
    *out = x;
    return BT_OK;
}

static int parse_bool(const char *v, int *out)
{
    if (!strcmp(v, "1") || !strcmp(v, "true") || !strcmp(v, "yes") || !strcmp(v, "on"))
        *out = 1;
    else if (!strcmp(v, "0") || !strcmp(v, "false") || !strcmp(v, "no") || !strcmp(v, "off"))
        *out = 0;
    else
        return BT_ERR_INVAL;
    return BT_OK;
}

/* Stores the text value v into the field of o. */
static int set_value(const bt_cfg_opt_t *o, void *cfg, const char *v)
{
    char *field = (char *)cfg + o->offset;
    double x = 0;
    int st = BT_OK, b;
    switch (o->type) {
    case BT_CFG_STRING: {
        char *copy = v ? bt_strdup(v) : NULL;
        if (v && !copy)
            return BT_ERR_NOMEM;
        bt_free(*(char **)field);
        *(char **)field = copy;
        return BT_OK;
    }
    case BT_CFG_BOOL:
        st = v ? parse_bool(v, &b) : (b = 0, BT_OK);
        if (st == BT_OK)
            *(int *)field = b;
        return st;
    default: break;
    }
    if (v && (st = parse_number(o, v, &x)) != BT_OK)
        return st;
    switch (o->type) {
    case BT_CFG_INT: *(int *)field = (int)x; break;
    case BT_CFG_INT64: *(int64_t *)field = (int64_t)x; break;
    case BT_CFG_FLOAT: *(float *)field = (float)x; break;
    case BT_CFG_SIZE: *(size_t *)field = (size_t)x; break;
    default: break;
    }
    return BT_OK;
}

static int report(const bt_cfg_table_t *t, const bt_cfg_opt_t *o, const char *v, const char *src,
                  int st)
{
    if (st == BT_ERR_RANGE)
        fprintf(stderr, "%s: %s value '%s' for --%s is out of range [%.15g, %.15g]\n", t->prog, src,
                v, o->name, o->min, o->max);
    else if (st != BT_OK)
        fprintf(stderr, "%s: %s value '%s' for --%s is not valid\n", t->prog, src, v, o->name);
    return st;
}

static int apply_env(const bt_cfg_table_t *t, void *cfg)
{
    const char *prefix = t->env_prefix ? t->env_prefix : "BATON_";
    for (int i = 0; i < t->n_opts; i++) {
        char name[128];
        int n = snprintf(name, sizeof name, "%s", prefix);
        for (const char *c = t->opts[i].name; *c && n < (int)sizeof name - 1; c++)
            name[n++] = *c == '-' ? '_' : (char)toupper((unsigned char)*c);
        name[n] = 0;
        const char *v = getenv(name);
        if (v && report(t, &t->opts[i], v, name, set_value(&t->opts[i], cfg, v)) != BT_OK)
            return BT_ERR_INVAL;
    }
    return BT_OK;
}

static char *trim(char *s)
{
    while (isspace((unsigned char)*s))
        s++;
    char *e = s + strlen(s);
    while (e > s && isspace((unsigned char)e[-1]))
        *--e = 0;
    return s;
}

static int apply_file(const bt_cfg_table_t *t, void *cfg, const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "%s: cannot open config file %s: %s\n", t->prog, path, strerror(errno));
        return BT_ERR_INVAL;
    }
    char line[1024];
    int lineno = 0, st = BT_OK;
    while (st == BT_OK && fgets(line, sizeof line, f)) {
        lineno++;
        char *hash = strchr(line, '#'), *s;
        if (hash)
            *hash = 0;
        s = trim(line);
        if (!*s)
            continue;
        char *eq = strchr(s, '=');
        const bt_cfg_opt_t *o = NULL;
        if (eq) {
            *eq = 0;
            char *key = trim(s);
            o = find_opt(t, key, strlen(key));
        }
        if (!o) {
            fprintf(stderr, "%s: %s:%d: unknown or malformed setting\n", t->prog, path, lineno);
            st = BT_ERR_INVAL;
            break;
        }
        if (report(t, o, trim(eq + 1), path, set_value(o, cfg, trim(eq + 1))) != BT_OK)
            st = BT_ERR_INVAL;
    }
    fclose(f);
    return st;
}

/* Finds --config FILE (or --config=FILE) among the flags. */
static const char *find_config_flag(int argc, char **argv, int first)
{
    for (int i = first; i < argc; i++) {
        if (!strcmp(argv[i], "--config") && i + 1 < argc)
            return argv[i + 1];
        if (!strncmp(argv[i], "--config=", 9))
            return argv[i] + 9;
    }
    return NULL;
}

/* Applies one flag at argv[*i]; advances *i past a separate value. */
static int apply_flag(const bt_cfg_table_t *t, void *cfg, int argc, char **argv, int *i)
{
    const char *a = argv[*i], *name = a + 2, *eq = strchr(a, '=');
    const bt_cfg_opt_t *o = NULL;
    const char *v = eq ? eq + 1 : NULL;
    int negate = 0;
    if (a[1] != '-') { /* short alias -n */
        for (int k = 0; k < t->n_opts && a[2] == 0; k++)
            if (t->opts[k].short_name == a[1])
                o = &t->opts[k];
    } else {
        o = find_opt(t, name, eq ? (size_t)(eq - name) : strlen(name));
        if (!o && !strncmp(name, "no-", 3) && (o = find_opt(t, name + 3, strlen(name + 3))) &&
            o->type == BT_CFG_BOOL)
            negate = 1;
    }
    if (!o || (negate && o->type != BT_CFG_BOOL)) {
        fprintf(stderr, "%s: unknown option %s\n", t->prog, a);
        return BT_ERR_INVAL;
    }
    if (o->type == BT_CFG_BOOL && !v)
        v = negate ? "0" : "1";
    if (!v) {
        if (*i + 1 >= argc) {
            fprintf(stderr, "%s: option %s needs a value\n", t->prog, a);
            return BT_ERR_INVAL;
        }
        v = argv[++*i];
    }
    return report(t, o, v, "flag", set_value(o, cfg, v)) == BT_OK ? BT_OK : BT_ERR_INVAL;
}

int bt_cfg_parse(const bt_cfg_table_t *t, void *cfg, int argc, char **argv, int first,
                 char **positional, int max_positional, int *n_positional)
{
    int n_pos = 0;
    for (int i = 0; i < t->n_opts; i++)
        if (set_value(&t->opts[i], cfg, t->opts[i].def) != BT_OK) {
            bt_cfg_free(t, cfg);
            return BT_ERR_INVAL; /* a table bug; its tests catch it */
        }
    const char *file = find_config_flag(argc, argv, first);
    if ((file && apply_file(t, cfg, file) != BT_OK) || apply_env(t, cfg) != BT_OK)
        goto usage;
    for (int i = first; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            bt_cfg_usage(t, stdout);
            bt_cfg_free(t, cfg);
            return BT_AGAIN;
        }
        if (!strcmp(a, "--config") || !strncmp(a, "--config=", 9)) {
            i += a[8] == 0;
            continue;
        }
        if (a[0] == '-' && a[1] != 0) {
            if (apply_flag(t, cfg, argc, argv, &i) != BT_OK)
                goto usage;
        } else if (n_pos < max_positional) {
            positional[n_pos++] = argv[i];
        } else {
            fprintf(stderr, "%s: unexpected argument '%s'\n", t->prog, a);
            goto usage;
        }
    }
    if (n_positional)
        *n_positional = n_pos;
    return BT_OK;
usage:
    bt_cfg_usage(t, stderr);
    bt_cfg_free(t, cfg);
    return BT_ERR_INVAL;
}

void bt_cfg_usage(const bt_cfg_table_t *t, FILE *out)
{
    fprintf(out, "usage: %s [options]\n%s\n\noptions (env %s<NAME>, or --config FILE):\n", t->prog,
            t->summary ? t->summary : "", t->env_prefix ? t->env_prefix : "BATON_");
    for (int i = 0; i < t->n_opts; i++) {
        const bt_cfg_opt_t *o = &t->opts[i];
        char flag[64];
        if (o->short_name)
            snprintf(flag, sizeof flag, "-%c, --%s", o->short_name, o->name);
        else
            snprintf(flag, sizeof flag, "    --%s", o->name);
        fprintf(out, "  %-26s %s", flag, o->help);
        if (o->def && *o->def)
            fprintf(out, " (default %s)", o->def);
        if (o->min != o->max && o->type != BT_CFG_BOOL && o->type != BT_CFG_STRING)
            fprintf(out, " [%.15g..%.15g]", o->min, o->max);
        fputc('\n', out);
    }
    fprintf(out, "  %-26s %s\n", "    --config FILE", "read settings from FILE (name = value)");
}

void bt_cfg_free(const bt_cfg_table_t *t, void *cfg)
{
    for (int i = 0; i < t->n_opts; i++)
        if (t->opts[i].type == BT_CFG_STRING) {
            char **field = (char **)((char *)cfg + t->opts[i].offset);
            bt_free(*field);
            *field = NULL;
        }
}

int bt_cfg_run(const bt_cfg_table_t *t, void *cfg, size_t log_level_offset, int argc, char **argv,
               bt_cfg_main_fn main_fn)
{
    int st = bt_cfg_parse(t, cfg, argc, argv, 1, NULL, 0, NULL);
    if (st != BT_OK)
        return st == BT_AGAIN ? 0 : 2; /* the parse freed what it set */
    const char *name = *(char *const *)((const char *)cfg + log_level_offset);
    int level = bt_log_level_parse(name), rc = 2;
    if (level < 0) {
        fprintf(stderr, "%s: unknown --log-level %s\n", t->prog, name);
    } else {
        bt_log_set_level((bt_log_level_t)level);
        rc = main_fn(cfg);
    }
    bt_cfg_free(t, cfg);
    return rc;
}
