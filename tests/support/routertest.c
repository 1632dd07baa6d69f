/* SPDX-License-Identifier: MIT */
/*
 * routertest.c - a real router process and fake daemons for the router tests (see
 * routertest.h). Endpoints are ipc sockets in a private directory under /tmp (short paths:
 * ipc addresses are limited to about 100 bytes), so tests can run in parallel.
 */
#include "routertest.h"

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zmq.h>

#include "common/status.h"
#include "testutil.h"

#define RT_MAX_ARGS 48

static void *dealer(rt_cluster_t *c, const char *identity, const char *endpoint);

/* The router answers HEALTH once both its sockets are bound. */
static int wait_ready(rt_cluster_t *c, int timeout_ms)
{
    void *s = dealer(c, NULL, c->client_ep);
    uint64_t end = bt_test_now_ms() + (uint64_t)timeout_ms;
    int ok = -1;
    for (uint64_t id = 1; ok != 0 && bt_test_now_ms() < end; id++) {
        rt_send(s, BATON__METHOD__HEALTH, id, 0, NULL);
        bt_rpc_msg_t m;
        if (rt_recv(c, s, &m, 100) == 0) {
            ok = 0;
            bt_rpc_msg_fini(&m);
        }
    }
    zmq_close(s);
    return ok;
}

int rt_start(rt_cluster_t *c, const char *const *extra)
{
    memset(c, 0, sizeof *c);
    snprintf(c->dir, sizeof c->dir, "/tmp/baton-rt-XXXXXX");
    if (!mkdtemp(c->dir))
        return -1;
    snprintf(c->client_ep, sizeof c->client_ep, "ipc://%s/client", c->dir);
    snprintf(c->cluster_ep, sizeof c->cluster_ep, "ipc://%s/cluster", c->dir);
    char exe[512];
    const char *bin = getenv("BATON_BINARY_DIR");
    snprintf(exe, sizeof exe, "%s/bin/baton-router", bin ? bin : BATON_BINARY_DIR);
    const char *argv[RT_MAX_ARGS] = {
        exe,           "--client-endpoint", c->client_ep, "--cluster-endpoint",
        c->cluster_ep, "--model-id",        RT_MODEL_ID,  "--log-level",
        "warn"};
    int n = 9;
    for (int i = 0; extra && extra[i] && n < RT_MAX_ARGS - 1; i++)
        argv[n++] = extra[i];
    argv[n] = NULL;
    c->zctx = zmq_ctx_new();
    if (bt_proc_start(&c->proc, (char *const *)argv) != 0)
        return -1;
    return wait_ready(c, 10000);
}

int rt_stop(rt_cluster_t *c)
{
    int rc = 0;
    while (c->n_autos)
        rt_auto_stop(c, c->autos[0]);
    for (int i = 0; i < c->n_d; i++)
        rt_daemon_close(&c->d[i]);
    for (int i = 0; i < c->n_clients; i++)
        zmq_close(c->clients[i]);
    c->n_d = c->n_clients = 0;
    if (c->zctx)
        zmq_ctx_term(c->zctx);
    c->zctx = NULL;
    if (c->proc.pid) {
        /* A router with nothing in flight exits at once on SIGTERM, which lets the sanitizers
         * check it; one still draining is killed. */
        kill(c->proc.pid, SIGTERM);
        if (bt_proc_wait(&c->proc, 500) && bt_proc_exit_code(&c->proc) != 0) {
            fprintf(stderr, "baton-router exited with status %d\n", bt_proc_exit_code(&c->proc));
            bt_proc_dump_log(&c->proc);
            rc = -1;
        } else if (getenv("RT_DUMP_LOG")) {
            bt_proc_dump_log(&c->proc);
        }
        bt_proc_kill(&c->proc);
    }
    char path[160];
    snprintf(path, sizeof path, "%s/client", c->dir);
    unlink(path);
    snprintf(path, sizeof path, "%s/cluster", c->dir);
    unlink(path);
    rmdir(c->dir);
    return rc;
}

int rt_signal_wait(rt_cluster_t *c, int sig, int timeout_ms)
{
    if (!c->proc.pid)
        return -1;
    kill(c->proc.pid, sig);
    if (!bt_proc_wait(&c->proc, timeout_ms))
        return -1;
    return bt_proc_exit_code(&c->proc);
}

static void *dealer(rt_cluster_t *c, const char *identity, const char *endpoint)
{
    void *s = zmq_socket(c->zctx, ZMQ_DEALER);
    bt_rpc_socket_setup(s);
    if (identity)
        zmq_setsockopt(s, ZMQ_ROUTING_ID, identity, strlen(identity));
    zmq_connect(s, endpoint);
    return s;
}

static rt_daemon_t *daemon_add(rt_cluster_t *c, const char *id, Baton__Role role,
                               const char *partner, Baton__Role serving)
{
    if (c->n_d == RT_MAX_DAEMONS)
        return NULL;
    rt_daemon_t *d = &c->d[c->n_d++];
    memset(d, 0, sizeof *d);
    snprintf(d->id, sizeof d->id, "%s", id);
    d->role = role;
    d->version = 1;
    d->incarnation = 1;
    d->kv_free_blocks = 1000;
    d->kv_total_blocks = 1000;
    snprintf(d->partner, sizeof d->partner, "%s", partner ? partner : "");
    d->serving = serving;
    d->sock = dealer(c, id, c->cluster_ep);
    rt_heartbeat(c, d);
    return d;
}

rt_daemon_t *rt_daemon_add(rt_cluster_t *c, const char *id, Baton__Role role)
{
    return daemon_add(c, id, role, NULL, BATON__ROLE__ROLE_NONE);
}

rt_daemon_t *rt_pair_add(rt_cluster_t *c, const char *id, const char *partner, Baton__Role serving)
{
    return daemon_add(c, id, BATON__ROLE__PAIR, partner, serving);
}

void rt_daemon_close(rt_daemon_t *d)
{
    if (d->sock)
        zmq_close(d->sock);
    d->sock = NULL;
    d->silent = 1;
}

void *rt_client(rt_cluster_t *c)
{
    if (c->n_clients == RT_MAX_DAEMONS)
        return NULL;
    return c->clients[c->n_clients++] = dealer(c, NULL, c->client_ep);
}

int rt_send(void *sock, Baton__Method method, uint64_t id, int status, const ProtobufCMessage *body)
{
    bt_rpc_header_t h;
    bt_rpc_header_init(&h, method, id);
    h.status = status;
    return bt_rpc_send(sock, NULL, &h, body, 0);
}

int rt_wait_instances(rt_cluster_t *c, int n, int timeout_ms)
{
    void *s = dealer(c, NULL, c->client_ep);
    uint64_t end = bt_test_now_ms() + (uint64_t)timeout_ms;
    int ok = -1;
    for (uint64_t id = 1; ok != 0 && bt_test_now_ms() < end; id++) {
        rt_send(s, BATON__METHOD__INFO, id, 0, NULL);
        bt_rpc_msg_t m;
        if (rt_recv(c, s, &m, 100) != 0)
            continue;
        ProtobufCMessage *b = NULL;
        if (m.hdr.method == BATON__METHOD__INFO)
            b = rt_body_as(&m, &baton__info_reply__descriptor);
        if (!b) {
            fprintf(stderr, "rt_wait_instances: unexpected reply, method %d status %d\n",
                    (int)m.hdr.method, m.hdr.status);
            bt_rpc_msg_fini(&m);
            continue;
        }
        Baton__InfoReply *info = (Baton__InfoReply *)b;
        int alive = 0;
        for (size_t i = 0; i < info->n_instances; i++)
            alive += info->instances[i]->alive;
        ok = alive == n ? 0 : -1;
        baton__info_reply__free_unpacked(info, NULL);
        bt_rpc_msg_fini(&m);
        if (ok != 0)
            rt_sleep(c, 10);
    }
    zmq_close(s);
    return ok;
}

void rt_heartbeat(rt_cluster_t *c, rt_daemon_t *d)
{
    (void)c;
    Baton__Heartbeat hb = BATON__HEARTBEAT__INIT;
    hb.instance_id = d->id;
    hb.role = d->role;
    hb.model_id = RT_MODEL_ID;
    hb.version = d->version;
    hb.kvx_address.data = (uint8_t *)d->id;
    hb.kvx_address.len = strlen(d->id);
    hb.queue_len = d->queue_len;
    hb.running = d->running;
    hb.kv_free_blocks = d->kv_free_blocks;
    hb.kv_total_blocks = d->kv_total_blocks;
    hb.kv_block_size = 16;
    hb.queued_tokens = d->queued_tokens;
    hb.draining = d->draining;
    hb.time_ns = bt_rpc_now_ns();
    hb.incarnation = d->incarnation;
    hb.held = (uint64_t *)d->held;
    hb.n_held = d->n_held;
    if (d->role == BATON__ROLE__PAIR) {
        hb.partner = d->partner;
        hb.serving = d->serving;
    }
    rt_send(d->sock, BATON__METHOD__HEARTBEAT, 0, 0, &hb.base);
}

void rt_pump(rt_cluster_t *c)
{
    uint64_t now = bt_test_now_ms();
    if (now < c->next_hb_ms)
        return;
    for (int i = 0; i < c->n_d; i++)
        if (!c->d[i].silent)
            rt_heartbeat(c, &c->d[i]);
    c->next_hb_ms = now + RT_HEARTBEAT_MS;
}

void rt_sleep(rt_cluster_t *c, int ms)
{
    uint64_t end = bt_test_now_ms() + (uint64_t)ms;
    while (bt_test_now_ms() < end) {
        rt_pump(c);
        usleep(5000);
    }
}

int rt_recv(rt_cluster_t *c, void *sock, bt_rpc_msg_t *m, int timeout_ms)
{
    uint64_t end = bt_test_now_ms() + (uint64_t)timeout_ms;
    zmq_pollitem_t it = {sock, 0, ZMQ_POLLIN, 0};
    for (;;) {
        rt_pump(c);
        int st = bt_rpc_recv(sock, m, ZMQ_DONTWAIT);
        rt_daemon_t *d = NULL;
        for (int i = 0; st == BT_OK && m->hdr.method == BATON__METHOD__RESET && i < c->n_d; i++)
            if (c->d[i].sock == sock)
                d = &c->d[i];
        if (d) {
            d->resets++;
            bt_rpc_msg_fini(m);
            continue;
        }
        if (st != BT_AGAIN)
            return st == BT_OK ? 0 : -1;
        bt_rpc_msg_fini(m);
        uint64_t now = bt_test_now_ms();
        if (now >= end)
            return -1;
        zmq_poll(&it, 1, (long)(end - now < 20 ? end - now : 20));
    }
}

int rt_expect(rt_cluster_t *c, void *sock, Baton__Method method, bt_rpc_msg_t *m, int timeout_ms,
              int *skipped)
{
    uint64_t end = bt_test_now_ms() + (uint64_t)timeout_ms;
    for (;;) {
        uint64_t now = bt_test_now_ms();
        if (now >= end || rt_recv(c, sock, m, (int)(end - now)) != 0)
            return -1;
        if (m->hdr.method == method)
            return 0;
        if (skipped)
            (*skipped)++;
        bt_rpc_msg_fini(m);
    }
}

void *rt_body_as(const bt_rpc_msg_t *m, const ProtobufCMessageDescriptor *d)
{
    return protobuf_c_message_unpack(d, NULL, m->body_len, m->body ? m->body : (const uint8_t *)"");
}

void *rt_body(const bt_rpc_msg_t *m)
{
    ProtobufCMessage *b = NULL;
    assert_int_equal(bt_rpc_unpack(m, &b), BT_OK);
    return b;
}

int rt_generate(void *client, uint64_t id, const int32_t *prompt, size_t n, uint32_t max_tokens)
{
    Baton__GenerateRequest g = BATON__GENERATE_REQUEST__INIT;
    Baton__SamplingParams s = BATON__SAMPLING_PARAMS__INIT;
    g.prompt_ids = (int32_t *)prompt;
    g.n_prompt_ids = n;
    g.max_tokens = max_tokens;
    g.sampling = &s;
    return rt_send(client, BATON__METHOD__GENERATE, id, 0, &g.base);
}

int rt_assign_reply(rt_daemon_t *d, uint64_t id, Baton__Role part, int status)
{
    Baton__AssignReply r = BATON__ASSIGN_REPLY__INIT;
    Baton__KvReservation kv = BATON__KV_RESERVATION__INIT;
    int32_t blocks[1] = {7};
    r.part = part;
    if ((part == BATON__ROLE__DECODE || part == BATON__ROLE__PAIR) && status == 0) {
        kv.reservation_id = id ^ 0x5a5a;
        kv.generation = 3;
        kv.block_ids = blocks;
        kv.n_block_ids = 1;
        kv.n_tokens = 4;
        r.reservation = &kv;
    }
    return rt_send(d->sock, BATON__METHOD__ASSIGN_REPLY, id, status, &r.base);
}

int rt_chunk(rt_daemon_t *d, Baton__Method method, uint64_t id, uint32_t index, const int32_t *ids,
             size_t n)
{
    Baton__TokenChunk tc = BATON__TOKEN_CHUNK__INIT;
    tc.ids = (int32_t *)ids;
    tc.n_ids = n;
    tc.index = index;
    tc.time_ns = bt_rpc_now_ns();
    return rt_send(d->sock, method, id, 0, &tc.base);
}

int rt_done(rt_daemon_t *d, uint64_t id, Baton__Role part, Baton__FinishReason reason,
            uint32_t n_out, const int *event_kinds, size_t n_events)
{
    Baton__Done done = BATON__DONE__INIT;
    Baton__LifetimeEvent ev[16], *evp[16];
    uint64_t t = bt_rpc_now_ns();
    for (size_t i = 0; i < n_events && i < 16; i++) {
        baton__lifetime_event__init(&ev[i]);
        ev[i].kind = event_kinds[i];
        ev[i].time_ns = t - 1000 * (n_events - i); /* just before now, in order */
        ev[i].instance = d->id;
        evp[i] = &ev[i];
    }
    done.part = part;
    done.finish_reason = reason;
    done.n_output_tokens = n_out;
    done.events = evp;
    done.n_events = n_events < 16 ? n_events : 16;
    return rt_send(d->sock, BATON__METHOD__DONE, id, 0, &done.base);
}

/* ---- the automatic daemon -------------------------------------------------------------- */

#define RT_AUTO_MAX 256

typedef struct {
    uint64_t id;
    int32_t base;
    uint32_t next, max;
    uint64_t due_ms;
} auto_req_t;

struct rt_auto {
    rt_daemon_t d;
    rt_auto_params_t p;
    pthread_t thread;
    atomic_int stop;
    auto_req_t reqs[RT_AUTO_MAX];
    int n;
};

static void auto_assign(rt_auto_t *a, const bt_rpc_msg_t *m)
{
    ProtobufCMessage *b = NULL;
    if (bt_rpc_unpack(m, &b) != BT_OK)
        return;
    Baton__Assignment *as = (Baton__Assignment *)b;
    if (a->n < RT_AUTO_MAX && as->n_prompt_ids > 0) {
        auto_req_t *r = &a->reqs[a->n++];
        *r = (auto_req_t){m->hdr.request_id, as->prompt_ids[0] * 100, as->skip_tokens,
                          as->max_tokens, bt_test_now_ms()};
        rt_assign_reply(&a->d, r->id, BATON__ROLE__COLOCATED, 0);
    } else {
        rt_assign_reply(&a->d, m->hdr.request_id, BATON__ROLE__COLOCATED, BT_ERR_NOSPACE);
    }
    baton__assignment__free_unpacked(as, NULL);
}

static void auto_remove(rt_auto_t *a, int i)
{
    a->reqs[i] = a->reqs[--a->n];
}

static void auto_abort(rt_auto_t *a, uint64_t id)
{
    for (int i = 0; i < a->n; i++)
        if (a->reqs[i].id == id) {
            rt_done(&a->d, id, BATON__ROLE__COLOCATED, BATON__FINISH_REASON__FINISH_CANCELLED,
                    a->reqs[i].next, NULL, 0);
            auto_remove(a, i);
            return;
        }
}

/* Emits what is due: one token per request per step. */
static void auto_step(rt_auto_t *a, uint64_t now)
{
    static const int kinds[] = {BATON__EVENT_KIND__PREFILL_QUEUED, BATON__EVENT_KIND__PREFILL_BEGIN,
                                BATON__EVENT_KIND__PREFILL_END, BATON__EVENT_KIND__DECODE_BEGIN};
    for (int i = 0; i < a->n; i++) {
        auto_req_t *r = &a->reqs[i];
        if (r->due_ms > now || (a->p.hold && r->next > 0))
            continue;
        int32_t tok = r->base + (int32_t)r->next;
        rt_chunk(&a->d, r->next ? BATON__METHOD__STREAM : BATON__METHOD__FIRST_TOKEN, r->id,
                 r->next, &tok, 1);
        r->next++;
        r->due_ms = now + (uint64_t)a->p.step_ms;
        if (r->next >= r->max) {
            rt_done(&a->d, r->id, BATON__ROLE__COLOCATED, BATON__FINISH_REASON__FINISH_LENGTH,
                    r->max, kinds, 4);
            auto_remove(a, i--);
        }
    }
}

static void *auto_main(void *arg)
{
    rt_auto_t *a = arg;
    uint64_t next_hb = 0;
    zmq_pollitem_t it = {a->d.sock, 0, ZMQ_POLLIN, 0};
    while (!atomic_load(&a->stop)) {
        uint64_t now = bt_test_now_ms();
        if (now >= next_hb) {
            rt_heartbeat(NULL, &a->d);
            next_hb = now + RT_HEARTBEAT_MS;
        }
        zmq_poll(&it, 1, a->n ? 1 : 10);
        bt_rpc_msg_t m;
        while (bt_rpc_recv(a->d.sock, &m, ZMQ_DONTWAIT) == BT_OK) {
            if (m.hdr.method == BATON__METHOD__ASSIGN)
                auto_assign(a, &m);
            else if (m.hdr.method == BATON__METHOD__ABORT)
                auto_abort(a, m.hdr.request_id);
            bt_rpc_msg_fini(&m);
        }
        bt_rpc_msg_fini(&m);
        auto_step(a, bt_test_now_ms());
    }
    return NULL;
}

rt_auto_t *rt_auto_start(rt_cluster_t *c, const char *id, const rt_auto_params_t *params)
{
    rt_auto_t *a = calloc(1, sizeof *a);
    if (!a)
        return NULL;
    a->p = params ? *params : (rt_auto_params_t){0};
    snprintf(a->d.id, sizeof a->d.id, "%s", id);
    a->d.role = BATON__ROLE__COLOCATED;
    a->d.version = 1;
    a->d.incarnation = 1;
    a->d.kv_free_blocks = a->d.kv_total_blocks = 1000;
    a->d.sock = dealer(c, id, c->cluster_ep);
    if (c->n_autos == RT_MAX_DAEMONS || pthread_create(&a->thread, NULL, auto_main, a) != 0) {
        zmq_close(a->d.sock);
        free(a);
        return NULL;
    }
    c->autos[c->n_autos++] = a;
    return a;
}

void rt_auto_stop(rt_cluster_t *c, rt_auto_t *a)
{
    for (int i = 0; i < c->n_autos; i++)
        if (c->autos[i] == a)
            c->autos[i] = c->autos[--c->n_autos];
    atomic_store(&a->stop, 1);
    pthread_join(a->thread, NULL);
    zmq_close(a->d.sock);
    free(a);
}
