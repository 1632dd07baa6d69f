/* SPDX-License-Identifier: MIT */
/*
 * cmd_up.c - `baton up`: a whole cluster on this machine. Starts baton-router and P prefill + D
 * decode daemons (or K colocated ones) as child processes, splits the CPU threads between them,
 * waits until the router reports the cluster healthy, prints the client endpoint on stdout, and
 * stops everything on Ctrl-C or SIGTERM.
 *
 * Stopping goes in the order that loses nothing: the router first (it refuses new requests and
 * lets the ones in flight finish on the daemons), then the daemons (nothing is left to drain);
 * whatever has not exited after --stop-timeout-ms gets SIGKILL, and a second Ctrl-C kills at
 * once. The children run in their own process group, so a Ctrl-C at the terminal reaches only
 * this supervisor, and they get SIGTERM if it dies (PR_SET_PDEATHSIG): no orphans.
 *
 * Once the cluster serves, a child that exits is started again with the same command line
 * (--restart, on by default), after 0.5 s, doubling up to 10 s while it keeps dying within
 * 10 s of its start: a restarted daemon registers anew, and the clients' library sends the
 * requests a dead router held to the new one, so nothing is lost.
 */
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "baton_client.h"
#include "cli.h"
#include "common/config.h"
#include "common/log.h"
#include "common/modelgen.h"
#include "common/status.h"

typedef struct {
    char *model, *tokenizer, *policy, *bind, *log_dir, *log_level, *kv_stream, *profile;
    char *backend, *kv_type, *cpus;
    size_t kv_mem;
    float slo_ttft_ms, slo_tpot_ms;
    int prefill, decode, colocated, pairs, port, cluster_port, threads;
    int max_batch_tokens, max_batch_seqs, ctx, ready_timeout_ms, stop_timeout_ms, step_logs;
    int metrics_port, restart;
} up_cfg_t;

#define OPT(n, t, d, lo, hi, f, h)                                                                 \
    {                                                                                              \
        n, 0, t, d, lo, hi, offsetof(up_cfg_t, f), h                                               \
    }
static const bt_cfg_opt_t up_opts[] = {
    OPT("prefill", BT_CFG_INT, "-1", -1, 256, prefill,
        "prefill daemons; -1: 1, or 0 with --colocated"),
    OPT("decode", BT_CFG_INT, "-1", -1, 256, decode,
        "decode daemons; -1: 1, or 0 with --colocated"),
    OPT("colocated", BT_CFG_INT, "0", 0, 256, colocated, "colocated daemons (both phases)"),
    OPT("pairs", BT_CFG_INT, "0", 0, 128, pairs,
        "AcceLLM pairs (two baton-pair daemons each, KV replicated between them)"),
    OPT("model", BT_CFG_STRING, NULL, 0, 0, model,
        "model file; default: build/models/baton-110m-q8_0.gguf (generated if absent)"),
    OPT("tokenizer", BT_CFG_STRING, NULL, 0, 0, tokenizer, "llama2.c tokenizer (.bin models)"),
    OPT("port", BT_CFG_INT, "5555", 1, 65535, port, "TCP port for clients"),
    OPT("cluster-port", BT_CFG_INT, "0", 0, 65535, cluster_port,
        "TCP port between router and daemons; 0: --port + 1"),
    OPT("bind", BT_CFG_STRING, "127.0.0.1", 0, 0, bind, "address the router binds"),
    OPT("metrics-port", BT_CFG_INT, "0", 0, 65535, metrics_port,
        "router's HTTP port for /metrics (Prometheus) and /health; 0: none"),
    OPT("policy", BT_CFG_STRING, "least-loaded", 0, 0, policy,
        "placement policy: round-robin, least-loaded, slo-aware"),
    OPT("profile", BT_CFG_STRING, NULL, 0, 0, profile, "latency profile JSON for slo-aware"),
    OPT("slo-ttft-ms", BT_CFG_FLOAT, "0", 0, 1e9, slo_ttft_ms,
        "default TTFT objective of the router; 0: the router's"),
    OPT("slo-tpot-ms", BT_CFG_FLOAT, "0", 0, 1e9, slo_tpot_ms,
        "default TPOT objective of the router; 0: the router's"),
    OPT("threads", BT_CFG_INT, "0", 0, 4096, threads,
        "compute threads split between the daemons; 0: all cores"),
    OPT("cpus", BT_CFG_STRING, NULL, 0, 0, cpus,
        "CPU sets of the daemons in start order (prefill, decode, colocated, pair members), "
        "';'-separated, e.g. 0-3;4-7; the router and daemons past the list run anywhere"),
    OPT("kv-mem", BT_CFG_SIZE, "256M", 1024, 1e15, kv_mem, "KV cache of each daemon (K, M, G)"),
    OPT("kv-type", BT_CFG_STRING, "f32", 0, 0, kv_type,
        "KV element type of the daemons: f32, f16, bf16"),
    OPT("backend", BT_CFG_STRING, "cpu", 0, 0, backend,
        "compute backend of the daemons: cpu, cuda"),
    OPT("max-batch-tokens", BT_CFG_INT, "512", 1, 1 << 20, max_batch_tokens,
        "token budget of one forward, each daemon"),
    OPT("max-batch-seqs", BT_CFG_INT, "64", 1, 4096, max_batch_seqs,
        "sequences of one forward, each daemon"),
    OPT("ctx", BT_CFG_INT, "0", 0, 1 << 20, ctx, "context length; 0: the model's, at most 4096"),
    OPT("kv-stream", BT_CFG_STRING, "whole", 0, 0, kv_stream,
        "prefill KV shipping: whole (after prefill) or layer"),
    OPT("log-dir", BT_CFG_STRING, NULL, 0, 0, log_dir,
        "write each process's log to DIR/NAME.log instead of stderr"),
    OPT("step-logs", BT_CFG_BOOL, "0", 0, 0, step_logs,
        "each daemon records every forward in DIR/NAME.steps.csv (needs --log-dir)"),
    OPT("log-level", BT_CFG_STRING, "warn", 0, 0, log_level, "log level of the children"),
    OPT("ready-timeout-ms", BT_CFG_INT, "120000", 1, 1 << 30, ready_timeout_ms,
        "give up if the cluster is not healthy by then"),
    OPT("stop-timeout-ms", BT_CFG_INT, "30000", 1, 1 << 30, stop_timeout_ms,
        "on stop, SIGKILL what has not exited after this long"),
    OPT("restart", BT_CFG_BOOL, "1", 0, 0, restart,
        "start a router or daemon that exits while serving again (0: a dead router stops all)"),
};
static const bt_cfg_table_t up_table = {
    .prog = "baton up",
    .summary = "Starts a router and prefill/decode (or colocated) daemons on this machine.",
    .opts = up_opts,
    .n_opts = sizeof up_opts / sizeof up_opts[0],
};

#define UP_MAX_PROCS 769 /* the router and 3 x 256 daemons */
#define UP_MAX_ARGS 40

typedef struct {
    char name[32];
    pid_t pid; /* 0 once reaped */
    int is_router;
    int status;  /* waitpid status */
    char **argv; /* its command line, to start it again (one allocation) */
    int pinned;  /* cpus holds where it runs */
    cpu_set_t cpus;
    uint64_t started_ms, restart_at_ms;
    int backoff_ms;
} up_proc_t;

typedef struct {
    const up_cfg_t *c;
    char bindir[PATH_MAX];
    char model[PATH_MAX];
    up_proc_t procs[UP_MAX_PROCS];
    int n_procs;
    int cluster_port;
    cpu_set_t cpus[UP_MAX_PROCS]; /* --cpus: the daemons' sets, in start order */
    int n_cpus;
} up_t;

static uint64_t up_now_ms(void)
{
    return (uint64_t)(cli_now() * 1000.0);
}

/* The directory of this executable: the daemons are built next to it. */
static int find_bindir(up_t *u)
{
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0)
        return -1;
    exe[n] = 0;
    char *slash = strrchr(exe, '/');
    if (!slash)
        return -1;
    *slash = 0;
    snprintf(u->bindir, sizeof u->bindir, "%s", exe);
    return 0;
}

/* Without --model: the 110m Q8_0 preset under build/models, written once. */
static int default_model(up_t *u)
{
    char dir[PATH_MAX], up[PATH_MAX];
    snprintf(up, sizeof up, "%.*s/..", (int)(sizeof up - 8), u->bindir);
    if (!realpath(up, dir)) /* build/bin/.. is build/ */
        return -1;
    strncat(dir, "/models", sizeof dir - strlen(dir) - 1);
    snprintf(u->model, sizeof u->model, "%.*s/baton-110m-q8_0.gguf", (int)(sizeof dir - 32), dir);
    if (access(u->model, R_OK) == 0)
        return 0;
    mkdir(dir, 0755);
    bt_modelgen_params_t mp;
    if (bt_modelgen_preset("110m", &mp) != BT_OK)
        return -1;
    mp.type = BT_TYPE_Q8_0;
    fprintf(stderr, "baton up: writing the default model %s\n", u->model);
    if (bt_modelgen_write(&mp, u->model) != BT_OK) {
        fprintf(stderr, "baton up: cannot write %s\n", u->model);
        return -1;
    }
    return 0;
}

/* Where a child logs with --log-dir: DIR/NAME.log. */
static void log_path(const up_t *u, const char *name, char *buf, size_t cap)
{
    snprintf(buf, cap, "%.*s/%s.log", PATH_MAX - 64, u->c->log_dir, name);
}

/* In the child: own process group, SIGTERM when the supervisor dies, default signals, log. */
static void child_setup(const up_t *u, const char *name)
{
    setpgid(0, 0);
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    if (u->c->log_dir) {
        char path[PATH_MAX];
        log_path(u, name, path, sizeof path);
        int fd = open(path, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
            close(fd);
        }
    } else {
        dup2(2, 1); /* keep the supervisor's stdout for the endpoint line */
    }
}

/* One CPU set of --cpus ("0-3,8"), checked against the CPUs this process may use. */
static int parse_cpu_set(const char *s, size_t len, const cpu_set_t *allowed, cpu_set_t *set)
{
    CPU_ZERO(set);
    const char *p = s, *end = s + len;
    for (;;) { /* a number or a range at p, then ',' and the next, or the end */
        char *q;
        errno = 0;
        long a = strtol(p, &q, 10), b = a;
        if (q == p || q > end || errno)
            return -1;
        if (q < end && *q == '-') {
            p = q + 1;
            b = strtol(p, &q, 10);
            if (q == p || q > end || errno)
                return -1;
        }
        if (a < 0 || b < a || b >= CPU_SETSIZE)
            return -1;
        for (long c = a; c <= b; c++) {
            if (!CPU_ISSET((int)c, allowed)) {
                fprintf(stderr, "baton up: --cpus: CPU %ld is not available here\n", c);
                return -1;
            }
            CPU_SET((int)c, set);
        }
        if (q == end)
            break;
        if (*q != ',')
            return -1;
        p = q + 1;
    }
    return CPU_COUNT(set) > 0 ? 0 : -1;
}

/* --cpus into u->cpus; 0 when absent. */
static int parse_cpus(up_t *u)
{
    const char *s = u->c->cpus;
    cpu_set_t allowed;
    if (!s || !*s)
        return 0;
    if (sched_getaffinity(0, sizeof allowed, &allowed) != 0)
        return -1;
    while (*s) {
        size_t len = strcspn(s, ";");
        if (u->n_cpus == UP_MAX_PROCS ||
            parse_cpu_set(s, len, &allowed, &u->cpus[u->n_cpus]) != 0) {
            fprintf(stderr, "baton up: bad --cpus '%s': want sets like 0-3,8 separated by ';'\n",
                    u->c->cpus);
            return -1;
        }
        u->n_cpus++;
        s += len + (s[len] == ';');
    }
    return 0;
}

/* A copy of a NULL-terminated argv in one allocation (NULL when out of memory). */
static char **argv_dup(char *const argv[])
{
    size_t n = 0, bytes = 0;
    for (; argv[n]; n++)
        bytes += strlen(argv[n]) + 1;
    char **v = malloc((n + 1) * sizeof *v + bytes);
    if (!v)
        return NULL;
    char *s = (char *)(v + n + 1);
    for (size_t i = 0; i < n; i++) {
        size_t len = strlen(argv[i]) + 1;
        v[i] = memcpy(s, argv[i], len);
        s += len;
    }
    v[n] = NULL;
    return v;
}

/* Starts p's command line as a child, pinned where p says. */
static int launch(up_t *u, up_proc_t *p)
{
    pid_t supervisor = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        fprintf(stderr, "baton up: fork failed: %s\n", strerror(errno));
        return -1;
    }
    if (pid == 0) {
        child_setup(u, p->name);
        if (getppid() != supervisor)
            _exit(127);
        if (p->pinned && sched_setaffinity(0, sizeof p->cpus, &p->cpus) != 0) {
            fprintf(stderr, "baton up: cannot pin %s: %s\n", p->name, strerror(errno));
            _exit(127);
        }
        execv(p->argv[0], p->argv);
        fprintf(stderr, "baton up: cannot run %s: %s\n", p->argv[0], strerror(errno));
        _exit(127);
    }
    p->pid = pid;
    p->started_ms = up_now_ms();
    return 0;
}

/* Starts argv[0] as a child; cpus (NULL: any CPU) is where it and its threads may run. */
static int spawn(up_t *u, const char *name, int is_router, const cpu_set_t *cpus,
                 char *const argv[])
{
    if (u->n_procs == UP_MAX_PROCS)
        return -1;
    up_proc_t *p = &u->procs[u->n_procs];
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "%s", name);
    p->is_router = is_router;
    p->pinned = cpus != NULL;
    if (cpus)
        p->cpus = *cpus;
    if (!(p->argv = argv_dup(argv)) || launch(u, p) != 0) {
        free(p->argv);
        return -1;
    }
    u->n_procs++;
    return 0;
}

typedef struct {
    char *v[UP_MAX_ARGS + 1];
    int n;
    char buf[4096]; /* values formatted for v */
    size_t used;
} argv_t;

static void arg(argv_t *a, const char *s)
{
    if (a->n < UP_MAX_ARGS)
        a->v[a->n++] = (char *)s;
    a->v[a->n] = NULL;
}

/* flag, then a value formatted into a's buffer. */
static void __attribute__((format(printf, 3, 4)))
arg_fmt(argv_t *a, const char *flag, const char *fmt, ...)
{
    char *dst = a->buf + a->used;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(dst, sizeof a->buf - a->used, fmt, ap);
    va_end(ap);
    a->used += (size_t)n + 1;
    arg(a, flag);
    arg(a, dst);
}

static void arg_int(argv_t *a, const char *flag, long x)
{
    arg_fmt(a, flag, "%ld", x);
}

static void arg_num(argv_t *a, const char *flag, double x)
{
    arg_fmt(a, flag, "%.9g", x);
}

static int start_router(up_t *u)
{
    const up_cfg_t *c = u->c;
    argv_t a = {.n = 0};
    char exe[PATH_MAX + 32];
    snprintf(exe, sizeof exe, "%s/baton-router", u->bindir);
    arg(&a, exe);
    arg_int(&a, "--port", c->port);
    arg_int(&a, "--cluster-port", u->cluster_port);
    arg(&a, "--bind");
    arg(&a, c->bind);
    arg(&a, "--model");
    arg(&a, u->model);
    if (c->tokenizer) {
        arg(&a, "--tokenizer");
        arg(&a, c->tokenizer);
    }
    arg(&a, "--policy");
    arg(&a, c->policy);
    if (c->profile) {
        arg(&a, "--profile");
        arg(&a, c->profile);
    }
    if (c->slo_ttft_ms > 0)
        arg_num(&a, "--slo-ttft-ms", c->slo_ttft_ms);
    if (c->slo_tpot_ms > 0)
        arg_num(&a, "--slo-tpot-ms", c->slo_tpot_ms);
    if (c->metrics_port > 0)
        arg_int(&a, "--metrics-port", c->metrics_port);
    arg(&a, "--log-level");
    arg(&a, c->log_level);
    return spawn(u, "router", 1, NULL, a.v);
}

/* Starts one daemon of kind ("prefill", "decode", "colocated", "pair") with threads compute
 * threads, on the CPUs of cpus (NULL: any). */
static int start_daemon(up_t *u, const char *kind, int index, int threads, const cpu_set_t *cpus)
{
    const up_cfg_t *c = u->c;
    argv_t a = {.n = 0};
    char exe[PATH_MAX + 32], name[32], router[128];
    char partner[32];
    snprintf(exe, sizeof exe, "%s/baton-%s", u->bindir, kind);
    snprintf(name, sizeof name, "%s-%d", kind, index);
    if (!strcmp(kind, "pair")) { /* members a (serving prefill at start) and b (decode) */
        snprintf(name, sizeof name, "pair-%d%c", index / 2, index % 2 ? 'b' : 'a');
        snprintf(partner, sizeof partner, "pair-%d%c", index / 2, index % 2 ? 'a' : 'b');
    }
    snprintf(router, sizeof router, "tcp://127.0.0.1:%d", u->cluster_port);
    arg(&a, exe);
    arg(&a, "--id");
    arg(&a, name);
    arg(&a, "--router");
    arg(&a, router);
    arg(&a, "--model");
    arg(&a, u->model);
    if (c->tokenizer) {
        arg(&a, "--tokenizer");
        arg(&a, c->tokenizer);
    }
    arg_int(&a, "--threads", threads);
    arg_int(&a, "--kv-mem", (long)c->kv_mem);
    arg(&a, "--kv-type");
    arg(&a, c->kv_type);
    arg(&a, "--backend");
    arg(&a, c->backend);
    arg_int(&a, "--max-batch-tokens", c->max_batch_tokens);
    arg_int(&a, "--max-batch-seqs", c->max_batch_seqs);
    arg_int(&a, "--ctx", c->ctx);
    arg(&a, "--log-level");
    arg(&a, c->log_level);
    if (c->step_logs)
        arg_fmt(&a, "--step-log", "%.3000s/%s.steps.csv", c->log_dir, name);
    if (!strcmp(kind, "prefill")) {
        arg(&a, "--kv-stream");
        arg(&a, c->kv_stream);
    }
    if (!strcmp(kind, "pair")) {
        arg(&a, "--partner");
        arg(&a, partner);
        arg(&a, "--serving");
        arg(&a, index % 2 ? "decode" : "prefill");
    }
    return spawn(u, name, 0, cpus, a.v);
}

/* Splits the threads evenly; the remainder goes to the prefill daemons, which are the most
 * compute-bound. Every daemon gets at least one. */
static int start_daemons(up_t *u, int n_p, int n_d, int n_k)
{
    int total = u->c->threads > 0 ? u->c->threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
    int n_pair = 2 * u->c->pairs;
    int n = n_p + n_d + n_k + n_pair, per = total / n, extra = total % n;
    if (per < 1)
        per = 1, extra = 0;
    const char *kinds[4] = {"prefill", "decode", "colocated", "pair"};
    int counts[4] = {n_p, n_d, n_k, n_pair}, d = 0;
    for (int k = 0; k < 4; k++)
        for (int i = 0; i < counts[k]; i++, d++) {
            int t = per + (extra > 0 ? 1 : 0);
            extra -= extra > 0;
            if (start_daemon(u, kinds[k], i, t, d < u->n_cpus ? &u->cpus[d] : NULL) != 0)
                return -1;
        }
    return 0;
}

/* With --log-dir, a child's output is in its file rather than on our stderr: when it exits,
 * the end of that file says why (e.g. its port was taken). */
static void log_tail(const up_t *u, const char *name)
{
    if (!u->c->log_dir)
        return;
    char path[PATH_MAX], buf[1024];
    log_path(u, name, path, sizeof path);
    FILE *f = fopen(path, "r");
    if (!f)
        return;
    long at = fseek(f, 0, SEEK_END) == 0 ? ftell(f) : 0;
    fseek(f, at > (long)sizeof buf - 1 ? at - (long)sizeof buf + 1 : 0, SEEK_SET);
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    const char *from = buf;
    if (at > (long)sizeof buf - 1 && strchr(buf, '\n'))
        from = strchr(buf, '\n') + 1; /* a whole first line */
    if (*from)
        fprintf(stderr, "baton up: the end of %s:\n%s%s", path, from,
                from[strlen(from) - 1] == '\n' ? "" : "\n");
}

/* Reaps exited children; returns how many of them were still expected to run. */
static int reap(up_t *u, int report)
{
    int lost = 0;
    for (int i = 0; i < u->n_procs; i++) {
        up_proc_t *p = &u->procs[i];
        if (p->pid == 0 || waitpid(p->pid, &p->status, WNOHANG) != p->pid)
            continue;
        p->pid = 0;
        lost++;
        if (report) {
            fprintf(stderr, "baton up: %s exited (%s %d)\n", p->name,
                    WIFEXITED(p->status) ? "status" : "signal",
                    WIFEXITED(p->status) ? WEXITSTATUS(p->status) : WTERMSIG(p->status));
            log_tail(u, p->name);
        }
    }
    return lost;
}

static int router_alive(const up_t *u)
{
    for (int i = 0; i < u->n_procs; i++)
        if (u->procs[i].is_router && u->procs[i].pid)
            return 1;
    return 0;
}

static int n_alive(const up_t *u, int routers)
{
    int n = 0;
    for (int i = 0; i < u->n_procs; i++)
        n += u->procs[i].pid && u->procs[i].is_router == routers;
    return n;
}

static void signal_all(up_t *u, int routers, int sig)
{
    for (int i = 0; i < u->n_procs; i++)
        if (u->procs[i].pid && u->procs[i].is_router == routers)
            kill(u->procs[i].pid, sig);
}

/* Waits up to timeout_ms for SIGINT, SIGTERM or SIGCHLD (blocked, taken synchronously);
 * returns it, or 0. */
static int wait_signal(int timeout_ms)
{
    struct timespec ts = {timeout_ms / 1000, (long)(timeout_ms % 1000) * 1000000L};
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGCHLD);
    int sig = sigtimedwait(&set, NULL, &ts);
    return sig > 0 ? sig : 0;
}

/* SIGTERM to one group (router or daemons), wait for it, SIGKILL what is left. Returns 1 when
 * a second interrupt asked to stop at once. */
static int stop_group(up_t *u, int routers, uint64_t deadline_ms)
{
    signal_all(u, routers, SIGTERM);
    while (n_alive(u, routers) > 0 && up_now_ms() < deadline_ms) {
        int sig = wait_signal(100);
        reap(u, 0);
        if (sig == SIGINT || sig == SIGTERM) {
            fprintf(stderr, "baton up: second interrupt, killing everything\n");
            return 1;
        }
    }
    return 0;
}

/* Stops the router, then the daemons; no process is left behind. */
static void stop_all(up_t *u)
{
    int now = stop_group(u, 1, up_now_ms() + (uint64_t)u->c->stop_timeout_ms);
    if (!now)
        now = stop_group(u, 0, up_now_ms() + (uint64_t)u->c->stop_timeout_ms);
    for (int i = 0; i < u->n_procs; i++)
        if (u->procs[i].pid) {
            fprintf(stderr, "baton up: %s did not stop in time; killing it\n", u->procs[i].name);
            kill(u->procs[i].pid, SIGKILL);
            waitpid(u->procs[i].pid, &u->procs[i].status, 0);
            u->procs[i].pid = 0;
        }
}

/* Polls the router's HEALTH until the cluster can serve with every daemon registered. 0 when
 * healthy, 1 on an interrupt, -1 when a process died or the deadline passed. */
static int wait_healthy(up_t *u, int n_daemons)
{
    char ep[128];
    snprintf(ep, sizeof ep, "tcp://127.0.0.1:%d", u->c->port);
    bt_client_params_t cp = {.endpoint = ep, .timeout_ms = 1000};
    bt_client_t *cl = NULL;
    if (bt_client_connect(&cp, &cl) != BT_CLIENT_OK)
        return -1;
    uint64_t deadline = up_now_ms() + (uint64_t)u->c->ready_timeout_ms;
    int rc = -1;
    while (up_now_ms() < deadline) {
        bt_client_health_t h;
        if (bt_client_health(cl, 500, &h) == BT_CLIENT_OK && h.ok &&
            h.n_prefill + h.n_decode + h.n_colocated >= (uint32_t)n_daemons) {
            rc = 0;
            break;
        }
        int sig = wait_signal(200);
        if (sig == SIGINT || sig == SIGTERM) {
            rc = 1;
            break;
        }
        if (reap(u, 1) > 0)
            break;
    }
    bt_client_close(cl);
    if (rc < 0)
        fprintf(stderr, "baton up: the cluster did not become healthy\n");
    return rc;
}

/* Children that exited: each is started again after its back-off (--restart). Returns how
 * many wait for their time. */
static int restart_exited(up_t *u)
{
    uint64_t now = up_now_ms();
    int waiting = 0;
    for (int i = 0; i < u->n_procs; i++) {
        up_proc_t *p = &u->procs[i];
        if (p->pid)
            continue;
        if (!p->restart_at_ms) { /* just exited: quick deaths double the wait, a long run
                                  * resets it */
            p->backoff_ms = now - p->started_ms >= 10000 || !p->backoff_ms ? 500
                            : p->backoff_ms >= 5000                        ? 10000
                                                                           : 2 * p->backoff_ms;
            p->restart_at_ms = now + (uint64_t)p->backoff_ms;
            fprintf(stderr, "baton up: starting %s again in %d ms\n", p->name, p->backoff_ms);
        }
        if (now < p->restart_at_ms || launch(u, p) != 0) {
            waiting++;
            continue;
        }
        p->restart_at_ms = 0;
        fprintf(stderr, "baton up: %s started again (pid %d)\n", p->name, (int)p->pid);
    }
    return waiting;
}

/* Serves until an interrupt, or (without --restart) until the router is gone. Returns the
 * exit status. */
static int supervise(up_t *u)
{
    int waiting = 0;
    for (;;) {
        int sig = wait_signal(waiting ? 50 : 1000);
        if (sig == SIGINT || sig == SIGTERM) {
            fprintf(stderr, "baton up: stopping\n");
            return 0;
        }
        reap(u, 1);
        if (u->c->restart) {
            waiting = restart_exited(u);
            continue;
        }
        if (!router_alive(u)) {
            fprintf(stderr, "baton up: the router is gone; stopping the daemons\n");
            return 1;
        }
        if (n_alive(u, 0) == 0) {
            fprintf(stderr, "baton up: no daemon is left; stopping\n");
            return 1;
        }
    }
}

static int counts_of(const up_cfg_t *c, int *p, int *d, int *k)
{
    *k = c->colocated;
    *p = c->prefill >= 0 ? c->prefill : (*k > 0 || c->pairs > 0 ? 0 : 1);
    *d = c->decode >= 0 ? c->decode : (*k > 0 || c->pairs > 0 ? 0 : 1);
    if (c->pairs > 0 && *p + *d + *k > 0) {
        fprintf(stderr, "baton up: --pairs runs alone (no prefill, decode or colocated daemons)\n");
        return -1;
    }
    if ((*p > 0) != (*d > 0) || *p + *d + *k + c->pairs == 0) {
        fprintf(stderr, "baton up: need prefill and decode daemons together, or colocated ones\n");
        return -1;
    }
    return 0;
}

static int up_run(up_t *u)
{
    int n_p, n_d, n_k;
    if (counts_of(u->c, &n_p, &n_d, &n_k) != 0)
        return 2;
    if (strcmp(u->c->kv_stream, "whole") && strcmp(u->c->kv_stream, "layer")) {
        fprintf(stderr, "baton up: --kv-stream must be whole or layer\n");
        return 2;
    }
    if (parse_cpus(u) != 0)
        return 2;
    if (u->c->step_logs && !u->c->log_dir) {
        fprintf(stderr, "baton up: --step-logs needs --log-dir\n");
        return 2;
    }
    if (find_bindir(u) != 0 || (u->c->model ? 0 : default_model(u)) != 0)
        return 1;
    if (u->c->model)
        snprintf(u->model, sizeof u->model, "%s", u->c->model);
    if (u->c->log_dir)
        mkdir(u->c->log_dir, 0755);
    u->cluster_port = u->c->cluster_port ? u->c->cluster_port : u->c->port + 1;
    int rc = 1;
    if (start_router(u) != 0 || start_daemons(u, n_p, n_d, n_k) != 0)
        goto out;
    int h = wait_healthy(u, n_p + n_d + n_k + 2 * u->c->pairs);
    if (h != 0) {
        rc = h > 0 ? 0 : 1;
        goto out;
    }
    printf("baton up: serving on tcp://%s:%d (%d prefill, %d decode, %d colocated, %d pairs; "
           "model %s)\n",
           strcmp(u->c->bind, "*") && strcmp(u->c->bind, "0.0.0.0") ? u->c->bind : "127.0.0.1",
           u->c->port, n_p, n_d, n_k, u->c->pairs, u->model);
    fflush(stdout);
    rc = supervise(u);
out:
    stop_all(u);
    return rc;
}

int cli_up(int argc, char **argv)
{
    up_cfg_t c = {0};
    int st = bt_cfg_parse(&up_table, &c, argc, argv, 1, NULL, 0, NULL);
    if (st != BT_OK) {
        bt_cfg_free(&up_table, &c);
        return st == BT_AGAIN ? 0 : 2;
    }
    /* Signals are taken synchronously (sigtimedwait), and the children start unblocked. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGCHLD);
    sigprocmask(SIG_BLOCK, &set, NULL);
    up_t *u = calloc(1, sizeof *u);
    int rc = 1;
    if (u) {
        u->c = &c;
        rc = up_run(u);
        for (int i = 0; i < u->n_procs; i++)
            free(u->procs[i].argv);
        free(u);
    }
    bt_cfg_free(&up_table, &c);
    return rc;
}
