/* SPDX-License-Identifier: MIT */
/*
 * servetest.c - processes, ports, a fake router and the engine reference for the serving tests
 * (see servetest.h).
 */
#include "servetest.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "baton_client.h"
#include "common/engine.h"
#include "common/modelgen.h"
#include "common/request.h"
#include "common/sampler.h"
#include "testutil.h"

uint64_t bt_test_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* ---- processes ---------------------------------------------------------------------------- */

int bt_proc_start(bt_proc_t *p, char *const argv[])
{
    const char *base = strrchr(argv[0], '/');
    bt_test_tmp_path(base ? base + 1 : argv[0], p->log, sizeof p->log);
    strncat(p->log, ".log", sizeof p->log - strlen(p->log) - 1);
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(127);
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        int fd = open(p->log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
            close(fd);
        }
        execv(argv[0], argv);
        _exit(127);
    }
    p->pid = pid;
    p->status = 0;
    return 0;
}

int bt_proc_wait(bt_proc_t *p, int timeout_ms)
{
    if (p->pid == 0)
        return 1;
    uint64_t end = bt_test_now_ms() + (uint64_t)timeout_ms;
    for (;;) {
        pid_t r = waitpid(p->pid, &p->status, WNOHANG);
        if (r == p->pid || (r < 0 && errno == ECHILD)) {
            p->pid = 0;
            return 1;
        }
        if (bt_test_now_ms() >= end)
            return 0;
        struct timespec ts = {0, 5 * 1000000L};
        nanosleep(&ts, NULL);
    }
}

void bt_proc_kill(bt_proc_t *p)
{
    if (p->pid == 0)
        return;
    kill(p->pid, SIGKILL);
    waitpid(p->pid, &p->status, 0);
    p->pid = 0;
}

int bt_proc_exit_code(const bt_proc_t *p)
{
    return WIFEXITED(p->status) ? WEXITSTATUS(p->status) : -1;
}

void bt_proc_dump_log(const bt_proc_t *p)
{
    size_t n = 0;
    char *s = bt_test_read_file(p->log, &n);
    if (!s)
        return;
    const char *tail = n > 6000 ? s + n - 6000 : s;
    fprintf(stderr, "---- %s ----\n%s\n----\n", p->log, tail);
    free(s);
}

/* Whether port is free on 127.0.0.1 now (0: any; *port then says which). */
static int port_free(int *port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)*port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    int ok = fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
             getsockname(fd, (struct sockaddr *)&a, &len) == 0;
    if (ok)
        *port = ntohs(a.sin_port);
    if (fd >= 0)
        close(fd);
    return ok;
}

/* Drawn at random below the system's ephemeral ports (32768 and up by default): those are also
 * the source ports of outgoing connections, which tests running beside each other make by the
 * hundred, and one may land on a port chosen here before its listener binds it (tests/support/
 * free_ports.py does the same for the scripts). */
int bt_test_free_port(void)
{
    static uint64_t rng;
    if (!rng)
        rng = ((uint64_t)getpid() << 32 | (uint64_t)time(NULL)) | 1;
    for (int tries = 0; tries < 200; tries++) {
        int port = 20000 + (int)(bt_test_rand(&rng) % 12000);
        if (port_free(&port))
            return port;
    }
    int port = 0;
    return port_free(&port) ? port : -1;
}

int bt_test_make_model(const char *preset, char *buf, size_t cap)
{
    bt_modelgen_params_t mp;
    if (bt_modelgen_preset(preset, &mp) != BT_OK)
        return -1;
    if (strcmp(preset, "tiny")) /* Q8_0: the larger presets run several times faster */
        mp.type = BT_TYPE_Q8_0;
    char stem[64];
    snprintf(stem, sizeof stem, "model-%s", preset);
    bt_test_tmp_path(stem, buf, cap);
    strncat(buf, ".gguf", cap - strlen(buf) - 1);
    return bt_modelgen_write(&mp, buf) == BT_OK ? 0 : -1;
}

/* ---- fake router --------------------------------------------------------------------------- */

int fake_router_open(fake_router_t *r)
{
    memset(r, 0, sizeof *r);
    r->reqs = calloc(FAKE_MAX_REQS, sizeof *r->reqs);
    r->zctx = zmq_ctx_new();
    r->sock = zmq_socket(r->zctx, ZMQ_ROUTER);
    if (!r->reqs || !r->sock || bt_rpc_socket_setup(r->sock) != BT_OK ||
        zmq_bind(r->sock, "tcp://127.0.0.1:*") != 0)
        return -1;
    size_t len = sizeof r->endpoint;
    zmq_getsockopt(r->sock, ZMQ_LAST_ENDPOINT, r->endpoint, &len);
    return 0;
}

void fake_router_close(fake_router_t *r)
{
    for (int i = 0; i < r->n_inst; i++)
        if (r->inst[i].last)
            baton__heartbeat__free_unpacked(r->inst[i].last, NULL);
    if (r->sock)
        zmq_close(r->sock);
    if (r->zctx)
        zmq_ctx_term(r->zctx);
    free(r->reqs);
    memset(r, 0, sizeof *r);
}

fake_inst_t *fake_router_inst(fake_router_t *r, const char *id)
{
    for (int i = 0; i < r->n_inst; i++)
        if (!strcmp(r->inst[i].id, id))
            return &r->inst[i];
    return NULL;
}

fake_req_t *fake_router_req(fake_router_t *r, uint64_t id)
{
    for (int i = 0; i < r->n_reqs; i++)
        if (r->reqs[i].id == id)
            return &r->reqs[i];
    if (r->n_reqs == FAKE_MAX_REQS)
        return NULL;
    fake_req_t *q = &r->reqs[r->n_reqs++];
    q->id = id;
    return q;
}

static void on_heartbeat(fake_router_t *r, const bt_rpc_msg_t *m)
{
    Baton__Heartbeat *hb = NULL;
    if (bt_rpc_unpack(m, (ProtobufCMessage **)&hb) != BT_OK)
        return;
    fake_inst_t *in = fake_router_inst(r, hb->instance_id);
    if (!in && r->n_inst < FAKE_MAX_INSTANCES) {
        in = &r->inst[r->n_inst++];
        snprintf(in->id, sizeof in->id, "%s", hb->instance_id);
    }
    if (!in) {
        baton__heartbeat__free_unpacked(hb, NULL);
        return;
    }
    if (in->last)
        baton__heartbeat__free_unpacked(in->last, NULL);
    in->last = hb;
    in->n_heartbeats++;
}

static void on_assign_reply(fake_req_t *q, const bt_rpc_msg_t *m)
{
    q->replied++;
    q->reply_status = m->hdr.status;
    Baton__AssignReply *ar = NULL;
    if (bt_rpc_unpack(m, (ProtobufCMessage **)&ar) != BT_OK)
        return;
    if (ar->reservation) {
        q->n_resv_blocks = (int)ar->reservation->n_block_ids;
        for (size_t i = 0; i < ar->reservation->n_block_ids && i < 1024; i++)
            q->resv_blocks[i] = ar->reservation->block_ids[i];
        q->resv_id = ar->reservation->reservation_id;
        q->resv_gen = ar->reservation->generation;
    }
    baton__assign_reply__free_unpacked(ar, NULL);
}

static void on_chunk(fake_req_t *q, const bt_rpc_msg_t *m)
{
    Baton__TokenChunk *c = NULL;
    if (bt_rpc_unpack(m, (ProtobufCMessage **)&c) != BT_OK)
        return;
    if (m->hdr.method == BATON__METHOD__FIRST_TOKEN)
        q->first_seen++;
    q->n_chunks++;
    for (size_t i = 0; i < c->n_ids; i++) {
        uint32_t at = c->index + (uint32_t)i;
        if (at >= FAKE_MAX_TOKENS)
            break;
        if (q->seen[at])
            q->dup_index = 1;
        q->seen[at] = 1;
        q->ids[at] = c->ids[i];
        if ((int)at >= q->n_ids)
            q->n_ids = (int)at + 1;
    }
    size_t n = c->text.data ? c->text.len : 0;
    if (n && q->n_text + n < sizeof q->text) {
        memcpy(q->text + q->n_text, c->text.data, n);
        q->n_text += n;
        q->text[q->n_text] = 0;
    }
    baton__token_chunk__free_unpacked(c, NULL);
}

/* DONEs are filed by part: the prefill's apart, so the decode's (or colocated's) outcome is
 * what the other fields say whichever arrives last. */
static void on_done(fake_req_t *q, const bt_rpc_msg_t *m)
{
    q->done++;
    Baton__Done *d = NULL;
    if (bt_rpc_unpack(m, (ProtobufCMessage **)&d) != BT_OK) {
        q->done_status = m->hdr.status;
        return;
    }
    if (d->part == BATON__ROLE__PREFILL) {
        q->pre_done++;
        q->pre_status = m->hdr.status;
        q->pre_finish = d->finish_reason;
        q->pre_n_events = 0;
        for (size_t i = 0; i < d->n_events && i < 16; i++)
            q->pre_event_kinds[q->pre_n_events++] = d->events[i]->kind;
    } else {
        q->done_status = m->hdr.status;
        q->finish = d->finish_reason;
        q->n_output = d->n_output_tokens;
        q->n_events = 0;
        for (size_t i = 0; i < d->n_events && i < 16; i++)
            q->event_kinds[q->n_events++] = d->events[i]->kind;
    }
    baton__done__free_unpacked(d, NULL);
}

static void on_msg(fake_router_t *r, const bt_rpc_msg_t *m, int st)
{
    if (st == BT_OK && m->hdr.method == BATON__METHOD__HEARTBEAT) {
        on_heartbeat(r, m);
        return;
    }
    fake_req_t *q = m->hdr.request_id ? fake_router_req(r, m->hdr.request_id) : NULL;
    if (st != BT_OK || !q) {
        r->n_bad++;
        return;
    }
    switch (m->hdr.method) {
    case BATON__METHOD__ASSIGN_REPLY: on_assign_reply(q, m); break;
    case BATON__METHOD__FIRST_TOKEN:
    case BATON__METHOD__STREAM: on_chunk(q, m); break;
    case BATON__METHOD__DONE: on_done(q, m); break;
    default: q->errors++; break;
    }
}

void fake_router_poll(fake_router_t *r, int timeout_ms)
{
    zmq_pollitem_t it = {r->sock, 0, ZMQ_POLLIN, 0};
    if (zmq_poll(&it, 1, timeout_ms) <= 0)
        return;
    for (;;) {
        bt_rpc_msg_t m;
        int st = bt_rpc_recv(r->sock, &m, ZMQ_DONTWAIT);
        if (st == BT_AGAIN || st == BT_ERR_IO) {
            bt_rpc_msg_fini(&m);
            return;
        }
        on_msg(r, &m, st);
        bt_rpc_msg_fini(&m);
    }
}

int fake_router_wait(fake_router_t *r, int (*pred)(fake_router_t *, void *), void *arg,
                     int timeout_ms)
{
    uint64_t end = bt_test_now_ms() + (uint64_t)timeout_ms;
    while (!pred(r, arg)) {
        uint64_t now = bt_test_now_ms();
        if (now >= end)
            return 0;
        fake_router_poll(r, (int)(end - now < 50 ? end - now : 50));
    }
    return 1;
}

typedef struct {
    const char *id;
    int target;
} hb_wait_t;

static int hb_reached(fake_router_t *r, void *arg)
{
    hb_wait_t *h = arg;
    fake_inst_t *in = fake_router_inst(r, h->id);
    return in && in->n_heartbeats >= h->target;
}

int fake_router_wait_heartbeats(fake_router_t *r, const char *id, int n, int timeout_ms)
{
    fake_inst_t *in = fake_router_inst(r, id);
    hb_wait_t h = {id, (in ? in->n_heartbeats : 0) + n};
    return fake_router_wait(r, hb_reached, &h, timeout_ms);
}

static int req_done(fake_router_t *r, void *arg)
{
    fake_req_t *q = fake_router_req(r, *(uint64_t *)arg);
    return q && q->done > 0;
}

int fake_router_wait_done(fake_router_t *r, uint64_t rid, int timeout_ms)
{
    return fake_router_wait(r, req_done, &rid, timeout_ms);
}

static int req_replied(fake_router_t *r, void *arg)
{
    return fake_router_req(r, *(uint64_t *)arg)->replied > 0;
}

int fake_router_wait_replied(fake_router_t *r, uint64_t rid, int timeout_ms)
{
    return fake_router_wait(r, req_replied, &rid, timeout_ms);
}

int fake_router_send_raw(fake_router_t *r, const char *id, const void *const *frames,
                         const size_t *lens, int n)
{
    if (zmq_send(r->sock, id, strlen(id), ZMQ_SNDMORE) < 0)
        return -1;
    for (int i = 0; i < n; i++)
        if (zmq_send(r->sock, frames[i], lens[i], i + 1 < n ? ZMQ_SNDMORE : 0) < 0)
            return -1;
    return 0;
}

int fake_router_send(fake_router_t *r, const char *id, Baton__Method method, uint64_t rid,
                     const ProtobufCMessage *body)
{
    bt_rpc_route_t route = {.n = 1};
    size_t len = strlen(id);
    memcpy(route.id[0], id, len);
    route.len[0] = (uint8_t)len;
    bt_rpc_header_t h;
    bt_rpc_header_init(&h, method, rid);
    return bt_rpc_send(r->sock, &route, &h, body, 0) == BT_OK ? 0 : -1;
}

int fake_router_assign(fake_router_t *r, const char *id, uint64_t rid, Baton__Role part,
                       const int32_t *prompt, int n_prompt, int max_tokens, uint32_t skip)
{
    Baton__SamplingParams sp = BATON__SAMPLING_PARAMS__INIT;
    if (r->sampling)
        sp = *r->sampling;
    Baton__Assignment a = BATON__ASSIGNMENT__INIT;
    a.part = part;
    a.prompt_ids = (int32_t *)prompt;
    a.n_prompt_ids = (size_t)n_prompt;
    a.max_tokens = (uint32_t)max_tokens;
    a.sampling = &sp;
    sp.ignore_eos = r->ignore_eos;
    a.skip_tokens = skip;
    fake_router_req(r, rid);
    return fake_router_send(r, id, BATON__METHOD__ASSIGN, rid, &a.base);
}

/* ---- a real cluster ------------------------------------------------------------------------ */

int bt_cluster_add(bt_cluster_t *c, const char *kind, const char *const *extra)
{
    if (c->n_daemons == CLUSTER_MAX_DAEMONS)
        return -1;
    int i = c->n_daemons;
    char exe[512], router[64];
    snprintf(exe, sizeof exe, "%s/bin/baton-%s", BATON_BINARY_DIR, kind);
    snprintf(c->ids[i], sizeof c->ids[i], "%s-%d", kind, i);
    snprintf(router, sizeof router, "tcp://127.0.0.1:%d", c->cluster_port);
    const char *argv[48] = {exe,    "--model",  c->model,    "--router",    router,
                            "--id", c->ids[i],  "--threads", "1",           "--heartbeat-ms",
                            "100",  "--kv-mem", "16M",       "--log-level", "info"};
    int n = 15;
    for (int k = 0; extra && extra[k] && n < 46; k++)
        argv[n++] = extra[k];
    argv[n] = NULL;
    if (bt_proc_start(&c->daemons[i], (char *const *)argv) != 0)
        return -1;
    c->n_daemons++;
    return i;
}

/* One HEALTH or INFO round trip on a fresh DEALER socket, the reply unpacked with its own
 * descriptor (the request's body is Empty, the reply's is not). 0 on success. */
int bt_cluster_call(const bt_cluster_t *c, Baton__Method method,
                    const ProtobufCMessageDescriptor *reply, ProtobufCMessage **out)
{
    void *zctx = zmq_ctx_new(), *sock = zmq_socket(zctx, ZMQ_DEALER);
    int rc = -1;
    bt_rpc_header_t h;
    bt_rpc_header_init(&h, method, 1);
    zmq_pollitem_t it = {sock, 0, ZMQ_POLLIN, 0};
    if (bt_rpc_socket_setup(sock) == BT_OK && zmq_connect(sock, c->client_ep) == 0 &&
        bt_rpc_send(sock, NULL, &h, NULL, 0) == BT_OK && zmq_poll(&it, 1, 2000) > 0) {
        bt_rpc_msg_t m;
        if (bt_rpc_recv(sock, &m, 0) == BT_OK && m.hdr.method == method) {
            *out = protobuf_c_message_unpack(reply, NULL, m.body_len,
                                             m.body ? m.body : (const uint8_t *)"");
            rc = *out ? 0 : -1;
        }
        bt_rpc_msg_fini(&m);
    }
    zmq_close(sock);
    zmq_ctx_term(zctx);
    return rc;
}

int bt_cluster_wait_instances(bt_cluster_t *c, int n, int timeout_ms)
{
    uint64_t end = bt_test_now_ms() + (uint64_t)timeout_ms;
    int ok = 0;
    while (!ok && bt_test_now_ms() < end) {
        Baton__HealthReply *h = NULL;
        if (bt_cluster_call(c, BATON__METHOD__HEALTH, &baton__health_reply__descriptor,
                            (ProtobufCMessage **)&h) == 0) {
            ok = h->ok && (int)(h->n_prefill + h->n_decode + h->n_colocated) == n;
            baton__health_reply__free_unpacked(h, NULL);
        }
        if (!ok) {
            struct timespec ts = {0, 20 * 1000000L};
            nanosleep(&ts, NULL);
        }
    }
    return ok;
}

/* Starts the router on c's ports; 0 once it answers. -1 when it exited first (most likely a
 * port was taken) or did not answer in 10 s: then its log is printed and it is stopped. */
static int spawn_router(bt_cluster_t *c)
{
    char exe[512], port[16], cport[16];
    snprintf(exe, sizeof exe, "%s/bin/baton-router", BATON_BINARY_DIR);
    snprintf(port, sizeof port, "%d", c->port);
    snprintf(cport, sizeof cport, "%d", c->cluster_port);
    const char *argv[] = {
        exe,         "--port",  port,     "--cluster-port",  cport,  "--bind",
        "127.0.0.1", "--model", c->model, "--dead-after-ms", "1000", "--log-level",
        "info",      NULL};
    if (bt_proc_start(&c->router, (char *const *)argv) != 0)
        return -1;
    uint64_t end = bt_test_now_ms() + 10000;
    while (bt_test_now_ms() < end) {
        Baton__HealthReply *h = NULL;
        if (bt_cluster_call(c, BATON__METHOD__HEALTH, &baton__health_reply__descriptor,
                            (ProtobufCMessage **)&h) == 0) {
            baton__health_reply__free_unpacked(h, NULL);
            return 0;
        }
        if (bt_proc_wait(&c->router, 0))
            break;
    }
    fprintf(stderr, "router on ports %d/%d did not come up\n", c->port, c->cluster_port);
    bt_proc_dump_log(&c->router);
    bt_proc_kill(&c->router);
    bt_proc_wait(&c->router, 5000);
    return -1;
}

/* Starts the router on two free ports and waits until it answers. A free port can be taken
 * by another process before the router binds it (the router then exits): new ports, up to
 * three times. */
static int start_router(bt_cluster_t *c, const char *model)
{
    memset(c, 0, sizeof *c);
    c->model = model;
    for (int attempt = 1; attempt <= 3; attempt++) {
        c->port = bt_test_free_port();
        do
            c->cluster_port = bt_test_free_port();
        while (c->cluster_port == c->port);
        snprintf(c->client_ep, sizeof c->client_ep, "tcp://127.0.0.1:%d", c->port);
        if (spawn_router(c) == 0)
            return 0;
    }
    return -1;
}

int bt_cluster_restart_router(bt_cluster_t *c)
{
    bt_proc_kill(&c->router);
    bt_proc_wait(&c->router, 5000);
    for (int attempt = 1; attempt <= 3; attempt++)
        if (spawn_router(c) == 0)
            return 0;
    return -1;
}

int bt_cluster_start(bt_cluster_t *c, const char *model, int n_p, int n_d, int n_k,
                     const char *const *extra)
{
    if (start_router(c, model) != 0)
        return -1;
    int ok = 1;
    for (int i = 0; ok && i < n_p; i++)
        ok = bt_cluster_add(c, "prefill", extra) >= 0;
    for (int i = 0; ok && i < n_d; i++)
        ok = bt_cluster_add(c, "decode", extra) >= 0;
    for (int i = 0; ok && i < n_k; i++)
        ok = bt_cluster_add(c, "colocated", extra) >= 0;
    if (ok && bt_cluster_wait_instances(c, n_p + n_d + n_k, 30000))
        return 0;
    bt_cluster_dump_logs(c);
    bt_cluster_stop(c);
    return -1;
}

int bt_cluster_start_pairs(bt_cluster_t *c, const char *model, int n_pairs,
                           const char *const *extra)
{
    if (start_router(c, model) != 0)
        return -1;
    int ok = 1;
    for (int i = 0; ok && i < 2 * n_pairs; i++) {
        char partner[32];
        const char *argv[40] = {"--partner", partner, "--serving", i % 2 ? "decode" : "prefill"};
        int n = 4;
        for (int k = 0; extra && extra[k] && n < 38; k++)
            argv[n++] = extra[k];
        argv[n] = NULL;
        snprintf(partner, sizeof partner, "pair-%d", i % 2 ? i - 1 : i + 1);
        ok = bt_cluster_add(c, "pair", argv) >= 0;
    }
    if (ok && bt_cluster_wait_instances(c, 2 * n_pairs, 30000))
        return 0;
    bt_cluster_dump_logs(c);
    bt_cluster_stop(c);
    return -1;
}

static int stop_one(bt_proc_t *p, int timeout_ms)
{
    if (p->pid == 0)
        return 0;
    kill(p->pid, SIGTERM);
    if (!bt_proc_wait(p, timeout_ms)) {
        bt_proc_kill(p);
        return -1;
    }
    return bt_proc_exit_code(p) == 0 ? 0 : -1;
}

int bt_cluster_stop(bt_cluster_t *c)
{
    int rc = stop_one(&c->router, 20000);
    for (int i = 0; i < c->n_daemons; i++)
        if (stop_one(&c->daemons[i], 20000) != 0)
            rc = -1;
    return rc;
}

void bt_cluster_dump_logs(const bt_cluster_t *c)
{
    bt_proc_dump_log(&c->router);
    for (int i = 0; i < c->n_daemons; i++)
        bt_proc_dump_log(&c->daemons[i]);
}

/* ---- reference ---------------------------------------------------------------------------- */

struct bt_test_ref {
    bt_model_t *model;
    bt_engine_t *engine;
    float *logits;
};

bt_test_ref_t *bt_test_ref_open(const char *model_path)
{
    return bt_test_ref_open_kv(model_path, BT_TYPE_F32);
}

bt_test_ref_t *bt_test_ref_open_kv(const char *model_path, int kv_type)
{
    bt_test_ref_t *ref = calloc(1, sizeof *ref);
    bt_model_params_t mp = {.path = model_path};
    if (!ref || bt_model_load(&mp, &ref->model) != BT_OK)
        goto err;
    bt_engine_params_t ep = {.n_threads = 1,
                             .max_batch_tokens = 512,
                             .max_seqs = 1,
                             .kv_type = (bt_type_t)kv_type,
                             .kv_budget_bytes = 64u << 20};
    if (bt_engine_create(ref->model, &ep, &ref->engine) != BT_OK)
        goto err;
    ref->logits = malloc((size_t)ref->model->hp.n_vocab * sizeof(float));
    if (!ref->logits)
        goto err;
    return ref;
err:
    bt_test_ref_close(ref);
    return NULL;
}

void bt_test_ref_close(bt_test_ref_t *ref)
{
    if (!ref)
        return;
    free(ref->logits);
    bt_engine_destroy(ref->engine);
    bt_model_destroy(ref->model);
    free(ref);
}

int bt_test_ref_run(bt_test_ref_t *ref, const int32_t *prompt, int n_prompt, int max_tokens,
                    int ignore_eos, int32_t *out)
{
    return bt_test_ref_run_sampled(ref, prompt, n_prompt, max_tokens, NULL, ignore_eos, out);
}

int bt_test_ref_run_sampled(bt_test_ref_t *ref, const int32_t *prompt, int n_prompt, int max_tokens,
                            const Baton__SamplingParams *sp, int ignore_eos, int32_t *out)
{
    Baton__SamplingParams greedy = BATON__SAMPLING_PARAMS__INIT;
    bt_sampler_params_t p = bt_sampling_from_proto(sp ? sp : &greedy);
    bt_sampler_t *smp = NULL;
    if (bt_sampler_create(&p, ref->model->hp.n_vocab, &smp) != BT_OK)
        return -1;
    for (int i = 0; i < n_prompt; i++)
        bt_sampler_accept(smp, prompt[i]);
    bt_kv_seq_t kv;
    bt_kv_pool_t *pool = bt_engine_kv_pool(ref->engine);
    if (bt_kv_seq_init(&kv, pool, n_prompt + max_tokens) != BT_OK) {
        bt_sampler_destroy(smp);
        return -1;
    }
    int n = 0;
    bt_batch_seq_t b = {
        .kv = &kv, .tokens = prompt, .n_tokens = n_prompt, .logits = BT_LOGITS_LAST};
    while (n < max_tokens && bt_engine_forward(ref->engine, &b, 1, ref->logits) == BT_OK) {
        bt_sampler_set_position(smp, (uint64_t)n);
        int32_t t = bt_sampler_sample(smp, ref->logits);
        bt_sampler_accept(smp, t);
        out[n++] = t;
        if (!ignore_eos && bt_tokenizer_is_eog(ref->model->tok, t))
            break;
        b = (bt_batch_seq_t){
            .kv = &kv, .tokens = &out[n - 1], .n_tokens = 1, .logits = BT_LOGITS_LAST};
    }
    bt_kv_seq_fini(&kv, pool);
    bt_sampler_destroy(smp);
    return n;
}

void bt_test_ref_text(bt_test_ref_t *ref, int32_t last_prompt_id, const int32_t *ids, int n,
                      char *out, size_t cap)
{
    bt_detok_t d;
    bt_detok_init(&d, ref->model->tok);
    d.prev_id = last_prompt_id;
    size_t len = 0, max = bt_detok_max_bytes(ref->model->tok);
    for (int i = 0; i < n && len + max + 8 < cap; i++)
        len += bt_detok_push(&d, ids[i], out + len, cap - len);
    len += bt_detok_flush(&d, out + len, cap - len);
    out[len] = 0;
}

void bt_test_prompt(uint32_t seed, int n, int32_t n_vocab, int32_t *out)
{
    uint32_t x = seed * 2654435761u + 12345u;
    for (int i = 0; i < n; i++) {
        x = x * 1664525u + 1013904223u;
        out[i] = 3 + (int32_t)((x >> 8) % (uint32_t)(n_vocab - 3));
    }
}
