/* SPDX-License-Identifier: MIT */
/*
 * bench_router.c - baton-bench-router: how much the router costs. Starts a real baton-router
 * process, stub daemons that speak the real protocol and answer at once (no engine), and
 * clients, and reports requests per second (each one a placement decision and a relayed
 * stream) and the latency the router adds.
 *
 * Two kinds of load point. Closed loop (--loads): each client keeps N requests in flight and
 * sends a new one as soon as one ends; the highest of these rates is the router's capacity.
 * Open loop (--rates): the clients send at Poisson arrival times at a stated offered rate,
 * whatever the router's pace, as a population of independent users does; latency at a stated
 * rate below capacity is what a user comparing routers asks for (a closed loop at saturation
 * measures mostly the queue in front of a busy router, by Little's law).
 *
 * Added latency is measured on the first token of every request, against a direct path
 * under the very same load: the stub prefill stamps the time, sends FIRST_TOKEN to the router
 * and the same chunk straight to the client (a PUSH socket to the client's PULL socket, same
 * transport, same serialization); the client reads the clock when each arrives. The router's
 * relay minus the direct copy, per request, is what the router adds: its event loop, one more
 * ZeroMQ hop, and any queueing in front of it. All stamps come from one host's clock. The
 * router's own CPU time (from /proc) per request is reported too: unlike rates and latencies
 * it barely depends on what else runs on the machine. So is this program's (stubs and clients
 * together): near one core per pinned CPU, the load generator itself is the limit.
 *
 * Over TCP, the ZMTP generator also takes each copy's arrival from the kernel's receive stamp
 * (SO_TIMESTAMPING, software, taken on loopback in the sender's send call) instead of the
 * time the generator read it. These "socket" figures leave out the generator's own delays in
 * reading (its queue, its CPU not running), which are not the router's; the router's path
 * keeps everything that happens on it: its queue, its CPU's stalls, its sends. Over TCP the
 * router also runs with --stamp-input, and after each point an "input wait" line gives, from
 * its /metrics, how long the messages it read waited in its sockets: the part of the path in
 * front of the router's loop.
 *
 * The stubs: with --mode pd, a decode stub reserves (ASSIGN_REPLY with a reservation) and a
 * prefill stub answers ASSIGN_REPLY, FIRST_TOKEN and DONE at once, after which the decode stub
 * (as if the KV had arrived) streams the remaining tokens in one STREAM and sends DONE. With
 * --mode colocated one stub does all. Both stubs run on one thread.
 */
#include <arpa/inet.h>
#include <math.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "common/clock.h"
#include "common/config.h"
#include "common/rpc.h"
#include "common/status.h"
#include "common/zmtp.h"

typedef struct {
    char *mode, *policy, *router, *loads, *rates, *generator, *transport;
    int clients, seconds, warmup_ms, prompt_len, tokens, router_cpu, bench_cpu, busy_poll, poll_us,
        stall_probe_ms;
} cfg_t;

#define OPT(n, t, d, lo, hi, f, h)                                                                 \
    {                                                                                              \
        n, 0, t, d, lo, hi, offsetof(cfg_t, f), h                                                  \
    }
static const bt_cfg_opt_t opts[] = {
    OPT("mode", BT_CFG_STRING, "pd", 0, 0, mode, "pd (prefill + decode stubs) or colocated"),
    OPT("policy", BT_CFG_STRING, "least-loaded", 0, 0, policy, "router placement policy"),
    OPT("router", BT_CFG_STRING, NULL, 0, 0, router,
        "baton-router executable (default: next to this program)"),
    OPT("loads", BT_CFG_STRING, "1,16,64,256", 0, 0, loads,
        "closed-loop points: requests each client keeps in flight (\"\": none)"),
    OPT("rates", BT_CFG_STRING, "", 0, 0, rates,
        "open-loop points: offered requests/s over all clients, Poisson arrivals"),
    OPT("clients", BT_CFG_INT, "2", 1, 16, clients, "client threads (one connection each)"),
    OPT("seconds", BT_CFG_INT, "3", 1, 600, seconds, "measured seconds per load point"),
    OPT("warmup-ms", BT_CFG_INT, "300", 0, 60000, warmup_ms, "unmeasured start of each point"),
    OPT("prompt-len", BT_CFG_INT, "16", 2, 4096, prompt_len, "prompt tokens per request"),
    OPT("tokens", BT_CFG_INT, "2", 1, 256, tokens, "output tokens per request"),
    OPT("router-cpu", BT_CFG_INT, "-1", -1, 1023, router_cpu,
        "pin the router process to this CPU (-1: no pinning)"),
    OPT("bench-cpu", BT_CFG_INT, "-1", -1, 1023, bench_cpu,
        "pin this program (stubs and clients) to this CPU (-1: no pinning)"),
    OPT("busy-poll", BT_CFG_BOOL, "0", 0, 0, busy_poll,
        "start the router with --busy-poll (its loop never sleeps; give it a CPU of its own)"),
    OPT("poll-us", BT_CFG_INT, "50", 0, 1000000, poll_us,
        "start the router with --poll-us N (it polls N us after each burst before it sleeps)"),
    OPT("transport", BT_CFG_STRING, "ipc", 0, 0, transport,
        "ipc (unix sockets in a fresh directory) or tcp (loopback, free ports)"),
    OPT("generator", BT_CFG_STRING, "libzmq", 0, 0, generator,
        "libzmq (stubs and clients on threads of their own, libzmq sockets) or zmtp (all on one "
        "thread that never sleeps, ZMTP sockets of this project's own)"),
    OPT("stall-probe-ms", BT_CFG_INT, "0", 0, 60000, stall_probe_ms,
        "before each point, spin this long on the router's and the generator's CPUs and report "
        "the gaps over 20 us the machine put between two clock reads (0: off)"),
};
static const bt_cfg_table_t table = {
    .prog = "baton-bench-router",
    .summary = "Router throughput and added latency with stub daemons (no engine).",
    .opts = opts,
    .n_opts = sizeof opts / sizeof opts[0],
};

#define MAX_CLIENTS 16
#define MAX_SAMPLES (1 << 22)
#define OPEN_SLOTS (1u << 16)    /* request slots of an open-loop client */
#define OPEN_MAX_IN_FLIGHT 16384 /* beyond this an open-loop client skips sends (reported) */

/* Every endpoint of a run: the router's two, and where each client takes its direct copies
 * (direct[i] for the libzmq generator's client i; zdirect for the ZMTP generator's one socket). */
static struct {
    char client[128], cluster[128], zdirect[128], direct[MAX_CLIENTS][128];
    int metrics_port;        /* tcp: the router's /metrics, for its input-wait histogram; 0: none */
    void *pull[MAX_CLIENTS]; /* the libzmq generator's: bound once, handed to each point's
                                client thread (a socket may change threads across a join) */
} g_ep;

static void *socket_at(void *ctx, int type, const char *identity, const char *endpoint, int bind)
{
    void *s = zmq_socket(ctx, type);
    bt_rpc_socket_setup(s);
    if (identity)
        zmq_setsockopt(s, ZMQ_ROUTING_ID, identity, strlen(identity));
    if (bind)
        zmq_bind(s, endpoint);
    else
        zmq_connect(s, endpoint);
    return s;
}

/* Where a message goes: a libzmq socket, or a connection of a ZMTP socket (--generator zmtp),
 * by its name. */
typedef struct {
    void *sock;
    bt_zmtp_t *z;
    bt_rpc_route_t route;
} port_t;

static port_t zmq_port(void *sock)
{
    return (port_t){.sock = sock};
}

static void send_msg(const port_t *p, Baton__Method method, uint64_t id,
                     const ProtobufCMessage *body)
{
    bt_rpc_header_t h;
    bt_rpc_header_init(&h, method, id);
    if (p->z)
        bt_rpc_zsend(p->z, &p->route, &h, body);
    else
        bt_rpc_send(p->sock, NULL, &h, body, 0);
}

/* ---- stub daemons --------------------------------------------------------------------- */

/* The stub daemons (decode and prefill, or one colocated) on one thread: on a small machine a
 * thread each only adds wake-ups that the load generator pays for, not the router. */
typedef struct {
    void *ctx;
    int n; /* 2: [0] decode, [1] prefill; 1: [0] colocated */
    char id[2][32];
    Baton__Role role[2];
    port_t port[2];
    port_t direct[MAX_CLIENTS]; /* the prefill's (or colocated's) direct path to each client */
    int tokens, n_clients;
    atomic_int *stop;
    pthread_t thread;
} stubs_t;

static void heartbeat(const port_t *sock, const char *id, Baton__Role role)
{
    Baton__Heartbeat hb = BATON__HEARTBEAT__INIT;
    hb.instance_id = (char *)id;
    hb.role = role;
    hb.model_id = "bench";
    hb.kv_free_blocks = hb.kv_total_blocks = 1 << 20;
    hb.kv_block_size = 16;
    hb.time_ns = bt_rpc_now_ns();
    send_msg(sock, BATON__METHOD__HEARTBEAT, 0, &hb.base);
}

static void send_chunk(const port_t *sock, Baton__Method method, uint64_t id, uint32_t index, int n,
                       uint64_t stamp)
{
    int32_t ids[256];
    for (int i = 0; i < n; i++)
        ids[i] = 100 + (int32_t)index + i;
    Baton__TokenChunk tc = BATON__TOKEN_CHUNK__INIT;
    tc.ids = ids;
    tc.n_ids = (size_t)n;
    tc.index = index;
    tc.time_ns = stamp;
    send_msg(sock, method, id, &tc.base);
}

static void send_done(const port_t *sock, uint64_t id, Baton__Role part, uint32_t n_out)
{
    Baton__Done d = BATON__DONE__INIT;
    d.part = part;
    d.finish_reason = BATON__FINISH_REASON__FINISH_LENGTH;
    d.n_output_tokens = n_out;
    send_msg(sock, BATON__METHOD__DONE, id, &d.base);
}

static void reply_assign(const port_t *sock, uint64_t id, Baton__Role part)
{
    Baton__AssignReply r = BATON__ASSIGN_REPLY__INIT;
    Baton__KvReservation kv = BATON__KV_RESERVATION__INIT;
    int32_t block = 1;
    r.part = part;
    if (part == BATON__ROLE__DECODE) {
        kv.reservation_id = id;
        kv.block_ids = &block;
        kv.n_block_ids = 1;
        r.reservation = &kv;
    }
    send_msg(sock, BATON__METHOD__ASSIGN_REPLY, id, &r.base);
}

/* The first token, to the router and (the direct path) to the client the prompt names:
 * prompt[0] is the client's index, prompt[1] its request id. */
static void first_token(const stubs_t *s, const port_t *sock, const bt_rpc_msg_t *m)
{
    ProtobufCMessage *b = NULL;
    if (bt_rpc_unpack(m, &b) != BT_OK)
        return;
    Baton__Assignment *a = (Baton__Assignment *)b;
    int32_t client = a->n_prompt_ids >= 2 ? a->prompt_ids[0] : -1;
    uint64_t stamp = bt_rpc_now_ns();
    /* The direct copy goes first, so its head start counts against the router, not for it. */
    if (client >= 0 && client < s->n_clients)
        send_chunk(&s->direct[client], BATON__METHOD__TOKENS, (uint64_t)a->prompt_ids[1], 0, 1,
                   stamp);
    send_chunk(sock, BATON__METHOD__FIRST_TOKEN, m->hdr.request_id, 0, 1, stamp);
    protobuf_c_message_free_unpacked(b, NULL);
}

/* What stub i does with one ASSIGN. The decode stub waits for the prefill's; the prefill stub
 * answers, sends the first token and DONE, and the decode stub (standing in for the KV
 * transfer's completion notice) then streams the remaining tokens in one STREAM and sends
 * DONE. A colocated stub does all of it. */
static void stub_assign(const stubs_t *s, int i, const bt_rpc_msg_t *m)
{
    uint64_t id = m->hdr.request_id;
    reply_assign(&s->port[i], id, s->role[i]);
    if (s->role[i] == BATON__ROLE__DECODE)
        return;
    first_token(s, &s->port[i], m);
    if (s->role[i] == BATON__ROLE__PREFILL)
        send_done(&s->port[i], id, BATON__ROLE__PREFILL, 1);
    const port_t *out = &s->port[0]; /* the decode stub, or the colocated one itself */
    if (s->tokens > 1)
        send_chunk(out, BATON__METHOD__STREAM, id, 1, s->tokens - 1, bt_rpc_now_ns());
    send_done(out, id, s->role[0], (uint32_t)s->tokens);
}

static void *stubs_main(void *arg)
{
    stubs_t *s = arg;
    zmq_pollitem_t items[2];
    for (int i = 0; i < s->n; i++) {
        s->port[i] = zmq_port(socket_at(s->ctx, ZMQ_DEALER, s->id[i], g_ep.cluster, 0));
        items[i] = (zmq_pollitem_t){s->port[i].sock, 0, ZMQ_POLLIN, 0};
    }
    for (int i = 0; i < s->n_clients; i++)
        s->direct[i] = zmq_port(socket_at(s->ctx, ZMQ_PUSH, NULL, g_ep.direct[i], 0));
    uint64_t next_hb = 0;
    while (!atomic_load(s->stop)) {
        if (bt_rpc_now_ns() >= next_hb) {
            for (int i = 0; i < s->n; i++)
                heartbeat(&s->port[i], s->id[i], s->role[i]);
            next_hb = bt_rpc_now_ns() + 200000000ull;
        }
        zmq_poll(items, s->n, 10);
        for (int i = 0; i < s->n; i++) {
            bt_rpc_msg_t m;
            while (bt_rpc_recv(s->port[i].sock, &m, ZMQ_DONTWAIT) == BT_OK) {
                if (m.hdr.method == BATON__METHOD__ASSIGN)
                    stub_assign(s, i, &m);
                bt_rpc_msg_fini(&m);
            }
            bt_rpc_msg_fini(&m);
        }
    }
    for (int i = 0; i < s->n_clients; i++)
        zmq_close(s->direct[i].sock);
    for (int i = 0; i < s->n; i++)
        zmq_close(s->port[i].sock);
    return NULL;
}

static void stubs_init(const cfg_t *c, void *ctx, atomic_int *stop, stubs_t *s)
{
    int pd = strcmp(c->mode, "colocated") != 0;
    *s =
        (stubs_t){.ctx = ctx,
                  .n = pd ? 2 : 1,
                  .role = {pd ? BATON__ROLE__DECODE : BATON__ROLE__COLOCATED, BATON__ROLE__PREFILL},
                  .tokens = c->tokens,
                  .n_clients = c->clients,
                  .stop = stop};
    for (int i = 0; i < s->n; i++)
        snprintf(s->id[i], sizeof s->id[i], "stub-%d", i);
}

/* ---- clients --------------------------------------------------------------------------- */

typedef struct {
    uint64_t id;
    uint64_t t_router, t_direct; /* arrival of the first token by each path, as read */
    uint64_t k_router, k_direct; /* the same from the kernel's receive stamps (0: none yet) */
} slot_t;

/* The latency samples a client keeps, per request (ns). */
enum {
    ADDED,    /* relayed minus direct arrival, as read */
    DIRECT,   /* the direct path alone: arrival, as read, minus the stub's stamp */
    K_ADDED,  /* ADDED from the kernel's receive stamps */
    K_DIRECT, /* DIRECT from the kernel's receive stamp */
    N_SERIES
};

typedef struct {
    void *ctx;
    int index, outstanding, prompt_len, tokens;
    double rate;         /* open loop: requests/s this client offers; 0: closed loop */
    atomic_int *stop;    /* stop sending */
    atomic_int *measure; /* count and sample now */
    uint64_t completed;  /* results while measuring */
    uint64_t errors;
    uint64_t skipped;          /* open loop: sends not made because OPEN_MAX_IN_FLIGHT were out */
    int64_t *series[N_SERIES]; /* samples, cap each */
    size_t n[N_SERIES], cap;
    slot_t *slots; /* (mask + 1), by request id */
    uint64_t mask;
    pthread_t thread;
    /* --generator zmtp: the client's state in the one generator thread */
    port_t up;
    int in_flight;
    uint64_t next_id, rng, next_send;
} client_t;

static void send_generate(client_t *c, const port_t *sock, uint64_t id)
{
    int32_t prompt[4096];
    prompt[0] = c->index;
    prompt[1] = (int32_t)id;
    for (int i = 2; i < c->prompt_len; i++)
        prompt[i] = 1 + i;
    Baton__GenerateRequest g = BATON__GENERATE_REQUEST__INIT;
    Baton__SamplingParams sp = BATON__SAMPLING_PARAMS__INIT;
    g.prompt_ids = prompt;
    g.n_prompt_ids = (size_t)c->prompt_len;
    g.max_tokens = (uint32_t)c->tokens;
    g.sampling = &sp;
    slot_t *s = &c->slots[id & c->mask];
    *s = (slot_t){.id = id};
    send_msg(sock, BATON__METHOD__GENERATE, id, &g.base);
}

static void sample(client_t *c, int series, int64_t v)
{
    if (atomic_load(c->measure) && c->n[series] < c->cap)
        c->series[series][c->n[series]++] = v;
}

/* A first token arrived by one path at t (read) and tk (kernel stamp; 0: none); a sample
 * once both have. */
static void first_arrival(client_t *c, uint64_t id, uint64_t t, uint64_t tk, int direct)
{
    slot_t *s = &c->slots[id & c->mask];
    if (s->id != id)
        return;
    *(direct ? &s->t_direct : &s->t_router) = t;
    *(direct ? &s->k_direct : &s->k_router) = tk;
    if (s->t_direct && s->t_router)
        sample(c, ADDED, (int64_t)(s->t_router - s->t_direct));
    if (s->k_direct && s->k_router) /* set with t_direct and t_router */
        sample(c, K_ADDED, (int64_t)(s->k_router - s->k_direct));
}

/* Handles one message from the router, read at t; returns 1 when a request ended. */
static int client_take(client_t *c, const bt_rpc_msg_t *m, uint64_t t)
{
    if (m->hdr.method == BATON__METHOD__TOKENS) {
        ProtobufCMessage *b = NULL;
        if (bt_rpc_unpack(m, &b) == BT_OK && ((Baton__TokenChunk *)b)->index == 0)
            first_arrival(c, m->hdr.request_id, t, m->rx_ns, 0);
        if (b)
            protobuf_c_message_free_unpacked(b, NULL);
        return 0;
    }
    if (m->hdr.method != BATON__METHOD__RESULT)
        return 0;
    if (atomic_load(c->measure)) {
        c->completed++;
        c->errors += m->hdr.status != BT_OK;
    }
    return 1;
}

/* The direct copy of a first token, read at t. */
static void direct_arrival(client_t *c, const bt_rpc_msg_t *m, uint64_t t)
{
    first_arrival(c, m->hdr.request_id, t, m->rx_ns, 1);
    ProtobufCMessage *b = NULL;
    if (atomic_load(c->measure) && bt_rpc_unpack(m, &b) == BT_OK) {
        uint64_t stamp = ((Baton__TokenChunk *)b)->time_ns;
        sample(c, DIRECT, (int64_t)(t - stamp));
        if (m->rx_ns)
            sample(c, K_DIRECT, (int64_t)(m->rx_ns - stamp));
    }
    if (b)
        protobuf_c_message_free_unpacked(b, NULL);
}

static void client_direct(client_t *c, void *pull)
{
    bt_rpc_msg_t m;
    while (bt_rpc_recv(pull, &m, ZMQ_DONTWAIT) == BT_OK) {
        direct_arrival(c, &m, bt_rpc_now_ns());
        bt_rpc_msg_fini(&m);
    }
    bt_rpc_msg_fini(&m);
}

/* Takes what the router sent; returns how many requests ended. */
static int client_results(client_t *c, void *sock)
{
    int ended = 0;
    bt_rpc_msg_t m;
    while (bt_rpc_recv(sock, &m, ZMQ_DONTWAIT) == BT_OK) {
        ended += client_take(c, &m, bt_rpc_now_ns());
        bt_rpc_msg_fini(&m);
    }
    bt_rpc_msg_fini(&m);
    return ended;
}

/* Closed loop: `outstanding` requests in flight, a new one as soon as one ends. */
static void client_closed(client_t *c, void *sock, void *pull)
{
    port_t up = zmq_port(sock);
    uint64_t next_id = 1;
    int in_flight = 0;
    for (; in_flight < c->outstanding; in_flight++)
        send_generate(c, &up, next_id++);
    zmq_pollitem_t it[2] = {{sock, 0, ZMQ_POLLIN, 0}, {pull, 0, ZMQ_POLLIN, 0}};
    while (in_flight > 0) {
        zmq_poll(it, 2, 100);
        client_direct(c, pull);
        for (int ended = client_results(c, sock); ended > 0; ended--) {
            in_flight--;
            if (!atomic_load(c->stop)) {
                send_generate(c, &up, next_id++);
                in_flight++;
            }
        }
    }
}

/* Waits up to timeout_ns for either socket to have a message: zmq_poll's own method (check
 * ZMQ_EVENTS, then poll the notification descriptors), with a timeout in nanoseconds rather
 * than milliseconds so that an open-loop client sends on schedule. */
static void wait_readable(void *sock, void *pull, uint64_t timeout_ns)
{
    void *socks[2] = {sock, pull};
    struct pollfd fds[2];
    for (int i = 0; i < 2; i++) {
        int ev = 0, fd = -1;
        size_t sz = sizeof ev;
        zmq_getsockopt(socks[i], ZMQ_EVENTS, &ev, &sz);
        if (ev & ZMQ_POLLIN)
            return;
        sz = sizeof fd;
        zmq_getsockopt(socks[i], ZMQ_FD, &fd, &sz);
        fds[i] = (struct pollfd){.fd = fd, .events = POLLIN};
    }
    struct timespec ts = {(time_t)(timeout_ns / 1000000000u), (long)(timeout_ns % 1000000000u)};
    ppoll(fds, 2, &ts, NULL);
}

/* Exponential gap (ns) between arrivals at `rate` per second: a Poisson process. */
static uint64_t arrival_gap_ns(uint64_t *rng, double rate)
{
    *rng ^= *rng << 13;
    *rng ^= *rng >> 7;
    *rng ^= *rng << 17;
    double u = (double)(*rng >> 11) * 0x1.0p-53; /* [0, 1) */
    return (uint64_t)(-log1p(-u) / rate * 1e9);
}

/* Open loop: requests go out at Poisson arrival times whatever the router's pace, as a
 * population of independent users would send them. */
static void client_open(client_t *c, void *sock, void *pull)
{
    port_t up = zmq_port(sock);
    uint64_t rng = 0x9e3779b97f4a7c15ull * (uint64_t)(c->index + 1), next_id = 1;
    uint64_t next_send = bt_rpc_now_ns() + arrival_gap_ns(&rng, c->rate);
    int in_flight = 0;
    prctl(PR_SET_TIMERSLACK, 1UL); /* wake on schedule, not up to 50 us late */
    for (;;) {
        int stopping = atomic_load(c->stop);
        if (stopping && in_flight == 0)
            break;
        uint64_t now = bt_rpc_now_ns();
        for (; !stopping && next_send <= now; next_send += arrival_gap_ns(&rng, c->rate)) {
            if (in_flight >= OPEN_MAX_IN_FLIGHT) {
                c->skipped++;
                continue;
            }
            send_generate(c, &up, next_id++);
            in_flight++;
        }
        wait_readable(sock, pull, stopping ? 100000000u : next_send - now);
        client_direct(c, pull);
        in_flight -= client_results(c, sock);
    }
}

static void *client_main(void *arg)
{
    client_t *c = arg;
    void *sock = socket_at(c->ctx, ZMQ_DEALER, NULL, g_ep.client, 0);
    void *pull = g_ep.pull[c->index];
    if (c->rate > 0)
        client_open(c, sock, pull);
    else
        client_closed(c, sock, pull);
    zmq_close(sock);
    return NULL;
}

/* ---- endpoints --------------------------------------------------------------------------- */

/* A loopback TCP port that nobody listens on now. */
static int free_port(void)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t sl = sizeof sa;
    int fd = socket(AF_INET, SOCK_STREAM, 0), port = -1;
    if (fd >= 0 && bind(fd, (struct sockaddr *)&sa, sl) == 0 &&
        getsockname(fd, (struct sockaddr *)&sa, &sl) == 0)
        port = ntohs(sa.sin_port);
    if (fd >= 0)
        close(fd);
    return port;
}

/* Whether something listens at an ipc:// or tcp://127.0.0.1:PORT endpoint. */
static int endpoint_listens(const char *ep)
{
    if (!strncmp(ep, "ipc://", 6))
        return access(ep + 6, F_OK) == 0;
    const char *colon = strrchr(ep, ':');
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    sa.sin_port = htons((uint16_t)atoi(colon ? colon + 1 : "0"));
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    int ok = fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0;
    if (fd >= 0)
        close(fd);
    return ok;
}

static int set_endpoints(const cfg_t *c, const char *dir)
{
    int tcp = !strcmp(c->transport, "tcp");
    if (!tcp && strcmp(c->transport, "ipc")) {
        fprintf(stderr, "baton-bench-router: --transport is ipc or tcp\n");
        return -1;
    }
    const char *names[3] = {"client", "cluster", "direct"};
    char *eps[3] = {g_ep.client, g_ep.cluster, g_ep.zdirect};
    for (int i = 0; i < 3; i++) {
        if (tcp && i == 2)
            snprintf(eps[i], sizeof g_ep.client, "tcp://127.0.0.1:*");
        else if (tcp)
            snprintf(eps[i], sizeof g_ep.client, "tcp://127.0.0.1:%d", free_port());
        else
            snprintf(eps[i], sizeof g_ep.client, "ipc://%s/%s", dir, names[i]);
    }
    g_ep.metrics_port = tcp ? free_port() : 0;
    for (int i = 0; i < c->clients; i++) {
        if (tcp) /* the port is chosen when bound (bind_direct) */
            snprintf(g_ep.direct[i], sizeof g_ep.direct[i], "tcp://127.0.0.1:*");
        else
            snprintf(g_ep.direct[i], sizeof g_ep.direct[i], "ipc://%s/direct-%d", dir, i);
    }
    return 0;
}

/* The libzmq generator's direct paths: each client's PULL socket, bound before the stubs
 * connect to it, on a port the system picks (no other process can take it meanwhile). */
static int bind_direct(void *cctx, int n)
{
    for (int i = 0; i < n; i++) {
        g_ep.pull[i] = zmq_socket(cctx, ZMQ_PULL);
        bt_rpc_socket_setup(g_ep.pull[i]);
        size_t len = sizeof g_ep.direct[i];
        if (zmq_bind(g_ep.pull[i], g_ep.direct[i]) != 0 ||
            zmq_getsockopt(g_ep.pull[i], ZMQ_LAST_ENDPOINT, g_ep.direct[i], &len) != 0) {
            fprintf(stderr, "baton-bench-router: cannot bind %s: %s\n", g_ep.direct[i],
                    zmq_strerror(zmq_errno()));
            return -1;
        }
    }
    return 0;
}

/* ---- the one-thread load generator (--generator zmtp) ------------------------------------ */

/*
 * The stubs and every client on one thread that never sleeps, over this project's ZMTP socket
 * (common/zmtp.c) rather than libzmq: no I/O threads, no mailboxes, one system call per burst
 * per connection, so that the load generator's own cost and wake-ups stay small beside the
 * router's and its queue does not set the tails. `up` holds every connection the generator
 * makes: the stubs' to the cluster endpoint (as stub-0, stub-1; named {'s', i} here), client
 * i's to the client endpoint ({'c', i}) and the direct paths ({'d', i}) to `direct`, where
 * client i's direct copies arrive from "direct-i".
 */
typedef struct {
    bt_zmtp_t *up, *direct;
    stubs_t stubs;
    uint64_t next_hb;
    /* one load point */
    client_t *cl;
    int n_clients;
    atomic_int *stop, *measure;
    uint64_t busy_ns; /* time in loop rounds that did something, while measuring */
    uint64_t lost;    /* requests still in flight when the point gave up on them */
} gen_t;

static port_t gen_port(bt_zmtp_t *z, char kind, int i)
{
    port_t p = {.z = z};
    p.route.n = 1;
    p.route.id[0][0] = (uint8_t)kind;
    p.route.id[0][1] = (uint8_t)i;
    p.route.len[0] = 2;
    return p;
}

static void gen_heartbeats(gen_t *g)
{
    uint64_t now = bt_rpc_now_ns();
    if (now < g->next_hb)
        return;
    for (int i = 0; i < g->stubs.n; i++)
        heartbeat(&g->stubs.port[i], g->stubs.id[i], g->stubs.role[i]);
    g->next_hb = now + 200000000ull;
}

/* A request of c ended: in closed loop the next one goes out at once. */
static void gen_ended(gen_t *g, client_t *c)
{
    c->in_flight--;
    if (c->rate <= 0 && !atomic_load(g->stop)) {
        send_generate(c, &c->up, c->next_id++);
        c->in_flight++;
    }
}

/* The client a direct copy is for, from its connection's identity "direct-N" (-1: none). The
 * route's bytes are not NUL-terminated. */
static int direct_index(const bt_rpc_route_t *r)
{
    int len = r->n ? r->len[0] : 0, i = 0;
    if (len <= 7 || memcmp(r->id[0], "direct-", 7) != 0)
        return -1;
    for (int k = 7; k < len; k++) {
        if (r->id[0][k] < '0' || r->id[0][k] > '9' || i > MAX_CLIENTS)
            return -1;
        i = i * 10 + (r->id[0][k] - '0');
    }
    return i;
}

/* Takes the direct copies that have arrived; returns how many. */
static int gen_drain_direct(gen_t *g)
{
    int n = 0, rc;
    bt_rpc_msg_t m;
    while ((rc = bt_rpc_zrecv(g->direct, &m)) != BT_AGAIN) {
        int i = direct_index(&m.route);
        if (rc == BT_OK && i >= 0 && i < g->n_clients)
            direct_arrival(&g->cl[i], &m, bt_rpc_now_ns());
        bt_rpc_msg_fini(&m);
        n++;
    }
    return n;
}

/* Takes everything both sockets have; returns how many messages that was. Before a relayed
 * chunk is stamped, the direct copies already there are taken: a direct copy that came first
 * is always stamped first (its head start counts against the router, never for it). */
static int gen_serve(gen_t *g)
{
    int n = gen_drain_direct(g), rc;
    bt_rpc_msg_t m;
    while ((rc = bt_rpc_zrecv(g->up, &m)) != BT_AGAIN) {
        int kind = m.route.id[0][0], i = m.route.id[0][1];
        if (rc == BT_OK && kind == 's' && i < g->stubs.n && m.hdr.method == BATON__METHOD__ASSIGN)
            stub_assign(&g->stubs, i, &m);
        if (rc == BT_OK && kind == 'c' && m.hdr.method == BATON__METHOD__TOKENS)
            n += gen_drain_direct(g);
        if (rc == BT_OK && kind == 'c' && i < g->n_clients &&
            client_take(&g->cl[i], &m, bt_rpc_now_ns()))
            gen_ended(g, &g->cl[i]);
        bt_rpc_msg_fini(&m);
        n++;
    }
    return n + gen_drain_direct(g);
}

/* Open loop: the sends whose arrival time has come. */
static int gen_send_due(gen_t *g, uint64_t now)
{
    int n = 0;
    for (int i = 0; i < g->n_clients; i++) {
        client_t *c = &g->cl[i];
        for (; c->rate > 0 && c->next_send <= now;
             c->next_send += arrival_gap_ns(&c->rng, c->rate)) {
            if (c->in_flight >= OPEN_MAX_IN_FLIGHT) {
                c->skipped++;
                continue;
            }
            send_generate(c, &c->up, c->next_id++);
            c->in_flight++;
            n++;
        }
    }
    return n;
}

/* One load point's thread: serves until told to stop and every request has ended. */
static void *gen_main(void *arg)
{
    gen_t *g = arg;
    uint64_t start = bt_rpc_now_ns(), stop_at = 0;
    for (int i = 0; i < g->n_clients; i++) {
        client_t *c = &g->cl[i];
        c->up = gen_port(g->up, 'c', i);
        c->next_id = 1;
        c->rng = 0x9e3779b97f4a7c15ull * (uint64_t)(i + 1);
        c->next_send = start + (c->rate > 0 ? arrival_gap_ns(&c->rng, c->rate) : 0);
        for (; c->rate <= 0 && c->in_flight < c->outstanding; c->in_flight++)
            send_generate(c, &c->up, c->next_id++);
    }
    for (;;) {
        uint64_t t0 = bt_rpc_now_ns();
        int in_flight = 0;
        for (int i = 0; i < g->n_clients; i++)
            in_flight += g->cl[i].in_flight;
        if (atomic_load(g->stop)) {
            stop_at = stop_at ? stop_at : t0;
            if (in_flight == 0 || t0 - stop_at > 10000000000ull) {
                g->lost += (uint64_t)in_flight;
                break;
            }
        }
        gen_heartbeats(g);
        int work = atomic_load(g->stop) ? 0 : gen_send_due(g, t0);
        work += gen_serve(g);
        bt_zmtp_flush(g->up);
        if (work && atomic_load(g->measure))
            g->busy_ns += bt_rpc_now_ns() - t0;
    }
    return NULL;
}

static void gen_close(gen_t *g)
{
    bt_zmtp_close(g->up);
    bt_zmtp_close(g->direct);
}

/* Connects the stubs, the clients and the direct paths, and serves until all are connected
 * and the stubs have been heard (half a second). */
static int gen_open(const cfg_t *c, gen_t *g)
{
    char id[32];
    *g = (gen_t){0};
    stubs_init(c, NULL, NULL, &g->stubs);
    bt_zmtp_params_t zp = {.rx_stamps = !strcmp(c->transport, "tcp")};
    if (bt_zmtp_new(&zp, &g->up) != BT_OK || bt_zmtp_bind(g_ep.zdirect, &zp, &g->direct) != BT_OK)
        return -1;
    const char *direct = bt_zmtp_endpoint(g->direct); /* with the port chosen for tcp */
    int st = BT_OK;
    for (int i = 0; i < g->stubs.n; i++) {
        g->stubs.port[i] = gen_port(g->up, 's', i);
        st |= bt_zmtp_connect(g->up, g_ep.cluster, (const uint8_t *)g->stubs.id[i],
                              strlen(g->stubs.id[i]), g->stubs.port[i].route.id[0], 2);
    }
    for (int i = 0; i < c->clients; i++) {
        port_t p = gen_port(g->up, 'c', i);
        st |= bt_zmtp_connect(g->up, g_ep.client, NULL, 0, p.route.id[0], 2);
        g->stubs.direct[i] = gen_port(g->up, 'd', i);
        snprintf(id, sizeof id, "direct-%d", i);
        st |= bt_zmtp_connect(g->up, direct, (const uint8_t *)id, strlen(id),
                              g->stubs.direct[i].route.id[0], 2);
    }
    atomic_int no = 0;
    g->stop = g->measure = &no;
    for (uint64_t end = bt_rpc_now_ns() + 500000000ull; st == BT_OK && bt_rpc_now_ns() < end;) {
        gen_heartbeats(g);
        gen_serve(g);
        bt_zmtp_flush(g->up);
        usleep(1000);
    }
    g->stop = g->measure = NULL;
    if (st != BT_OK || bt_zmtp_peers(g->up) != g->stubs.n + 2 * c->clients ||
        bt_zmtp_peers(g->direct) != c->clients) {
        fprintf(stderr, "baton-bench-router: the generator could not connect (%d of %d)\n",
                bt_zmtp_peers(g->up), g->stubs.n + 2 * c->clients);
        return -1;
    }
    return 0;
}

/* ---- the run --------------------------------------------------------------------------- */

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static double pct_us(const int64_t *v, size_t n, double p)
{
    return n ? (double)v[(size_t)(p * (double)(n - 1))] / 1e3 : 0;
}

/* CPU seconds a process has used (user + system), from /proc. */
static double cpu_seconds(pid_t pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    size_t n = f ? fread(buf, 1, sizeof buf - 1, f) : 0;
    if (f)
        fclose(f);
    buf[n] = 0;
    const char *p = strrchr(buf, ')'); /* fields after the command name */
    unsigned long ut = 0, st = 0;
    if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2)
        return 0;
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

static void pin(int cpu)
{
    if (cpu < 0)
        return;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (sched_setaffinity(0, sizeof set, &set) != 0)
        perror("sched_setaffinity");
}

/* ---- the machine's own stalls ---------------------------------------------------------- */

/* What a thread that never sleeps loses on one CPU: the gaps between two consecutive clock
 * reads longer than STALL_NS. On a virtual machine these are mostly its virtual CPU not
 * running (the host's business); a message that arrives in such a gap waits for its end,
 * and the work that piled up behind it, whatever the router does. Both CPUs are probed at
 * once, as both carry the benchmark. */
#define STALL_NS 20000

typedef struct {
    int cpu, ms;
    uint64_t n, n100, lost_ns, max_ns;
    pthread_t thread;
} probe_t;

static void *probe_main(void *arg)
{
    probe_t *p = arg;
    pin(p->cpu);
    double prev = bt_mono_ms(), end = prev + p->ms;
    while (prev < end) {
        double t = bt_mono_ms();
        uint64_t d = (uint64_t)((t - prev) * 1e6);
        prev = t;
        if (d > STALL_NS) {
            p->n++;
            p->n100 += d > 100000;
            p->lost_ns += d;
            p->max_ns = d > p->max_ns ? d : p->max_ns;
        }
    }
    return NULL;
}

static void stall_probe(const cfg_t *c)
{
    int cpus[2] = {c->router_cpu, c->bench_cpu};
    probe_t p[2];
    if (cpus[0] < 0 || cpus[1] < 0 || cpus[0] == cpus[1]) {
        printf("%12s not probed: needs --router-cpu and --bench-cpu, two different CPUs\n",
               "stalls");
        return;
    }
    for (int i = 0; i < 2; i++) {
        p[i] = (probe_t){.cpu = cpus[i], .ms = c->stall_probe_ms};
        pthread_create(&p[i].thread, NULL, probe_main, &p[i]);
    }
    printf("%12s", "stalls");
    for (int i = 0; i < 2; i++) {
        pthread_join(p[i].thread, NULL);
        printf("%s CPU %d: %.2f%% of %d ms lost in %llu gaps > 20 us (%llu > 100 us, max %.0f us)",
               i ? ";" : "", p[i].cpu, (double)p[i].lost_ns / 1e4 / c->stall_probe_ms,
               c->stall_probe_ms, (unsigned long long)p[i].n, (unsigned long long)p[i].n100,
               (double)p[i].max_ns / 1e3);
    }
    printf("\n");
}

static pid_t start_router(const cfg_t *c, const char *exe)
{
    char poll_us[16], mport[16];
    snprintf(poll_us, sizeof poll_us, "%d", c->poll_us);
    snprintf(mport, sizeof mport, "%d", g_ep.metrics_port);
    const char *argv[32] = {exe,          "--client-endpoint", g_ep.client, "--cluster-endpoint",
                            g_ep.cluster, "--model-id",        "bench",     "--policy",
                            c->policy,    "--max-queue",       "1000000",   "--max-requests",
                            "1000000",    "--log-level",       "warn",      "--poll-us",
                            poll_us};
    int n = 0;
    while (argv[n])
        n++;
    if (c->busy_poll)
        argv[n++] = "--busy-poll";
    if (g_ep.metrics_port) { /* over tcp: how long messages wait in the router's sockets */
        argv[n++] = "--stamp-input";
        argv[n++] = "--metrics-port";
        argv[n++] = mport;
        argv[n++] = "--bind";
        argv[n++] = "127.0.0.1";
    }
    pid_t pid = fork();
    if (pid == 0) {
        pin(c->router_cpu);
        execv(exe, (char *const *)argv);
        _exit(127);
    }
    return pid;
}

/* ---- the router's own view: how long messages waited in its sockets -------------------- */

#define WAIT_BUCKETS 16

/* The router's baton_router_input_wait_seconds histogram (cumulative counts per bound). */
typedef struct {
    int n;
    double le[WAIT_BUCKETS]; /* seconds; the last one read may be +Inf (HUGE_VAL) */
    double cum[WAIT_BUCKETS];
} wait_hist_t;

/* GET /metrics from the router and its input-wait histogram; 0 when read. */
static int scrape_wait(wait_hist_t *h)
{
    *h = (wait_hist_t){0};
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t)g_ep.metrics_port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int fd = g_ep.metrics_port ? socket(AF_INET, SOCK_STREAM, 0) : -1;
    struct timeval tv = {.tv_sec = 2};
    static char buf[1 << 16];
    size_t len = 0;
    if (fd >= 0 && setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) == 0 &&
        connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0) {
        static const char req[] = "GET /metrics HTTP/1.1\r\nHost: bench\r\n\r\n";
        ssize_t k = write(fd, req, sizeof req - 1);
        while (k > 0 && len < sizeof buf - 1 && (k = read(fd, buf + len, sizeof buf - 1 - len)) > 0)
            len += (size_t)k;
    }
    if (fd >= 0)
        close(fd);
    buf[len] = 0;
    static const char key[] = "baton_router_input_wait_seconds_bucket{le=\"";
    for (const char *p = strstr(buf, key); p && h->n < WAIT_BUCKETS; p = strstr(p, key)) {
        p += sizeof key - 1;
        h->le[h->n] = strncmp(p, "+Inf", 4) ? strtod(p, NULL) : HUGE_VAL;
        const char *v = strstr(p, "} ");
        if (!v)
            break;
        h->cum[h->n++] = strtod(v + 2, NULL);
    }
    return h->n > 0 && h->le[h->n - 1] == HUGE_VAL ? 0 : -1;
}

/* What the router read during a point (after minus before): its message count, the bounds
 * its median and 99th percentile lie under, and the share that waited over 100 µs. */
static void print_wait(const wait_hist_t *a, const wait_hist_t *b)
{
    if (a->n != b->n || a->n == 0) {
        printf("%12s not read (the router's /metrics did not answer)\n", "input wait");
        return;
    }
    double total = b->cum[a->n - 1] - a->cum[a->n - 1], p50 = HUGE_VAL, p99 = HUGE_VAL, le100 = 0;
    for (int i = a->n - 1; i >= 0; i--) {
        double d = b->cum[i] - a->cum[i];
        p50 = d >= 0.50 * total ? b->le[i] : p50;
        p99 = d >= 0.99 * total ? b->le[i] : p99;
        le100 = fabs(b->le[i] - 1e-4) < 1e-12 ? d : le100; /* the 100 us bound's count */
    }
    printf("%12s the router read %.0f messages; p50 <= %g us, p99 <= %g us; %.2f%% waited "
           "over 100 us in its sockets\n",
           "input wait", total, p50 * 1e6, p99 * 1e6, total > 0 ? 100 * (1 - le100 / total) : 0);
}

/* Starts the router and waits until it serves both endpoints. Its TCP ports were free when
 * chosen, but another process may take one before the router binds it (a listener there then
 * proves nothing): the router exits, and is started again on other ports. Returns its pid, or
 * -1. */
static pid_t launch_router(const cfg_t *c, const char *exe, const char *dir)
{
    for (int attempt = 1; attempt <= 5; attempt++) {
        if (attempt > 1 && set_endpoints(c, dir) != 0)
            return -1;
        pid_t pid = start_router(c, exe);
        int up = 0, gone = 0;
        for (int tries = 0; tries < 500 && !up && !gone; tries++) {
            up = endpoint_listens(g_ep.client) && endpoint_listens(g_ep.cluster);
            gone = waitpid(pid, NULL, WNOHANG) == pid;
            if (!up && !gone)
                usleep(10000);
        }
        if (!gone)
            usleep(100000); /* a router that cannot bind exits at once */
        if (!gone && up && waitpid(pid, NULL, WNOHANG) == 0)
            return pid;
        if (!gone) {
            kill(pid, SIGKILL);
            waitpid(pid, NULL, 0);
        }
        fprintf(stderr, "baton-bench-router: the router did not start on %s and %s (attempt %d)\n",
                g_ep.client, g_ep.cluster, attempt);
    }
    return -1;
}

typedef struct {
    double rps, router_cpu, bench_cpu, p50[N_SERIES], p99[N_SERIES];
    size_t n[N_SERIES];
    uint64_t errors, skipped;
    wait_hist_t wait0, wait1; /* the router's input-wait histogram before and after (tcp) */
} point_t;

/* Gathers the clients' samples, series by series, at samples + series * MAX_SAMPLES (where
 * the clients' own shares already lie). */
static void collect_clients(client_t *cl, int n, int64_t *samples, point_t *pt, uint64_t *done)
{
    for (int i = 0; i < n; i++) {
        *done += cl[i].completed;
        pt->errors += cl[i].errors;
        pt->skipped += cl[i].skipped;
        for (int k = 0; k < N_SERIES; k++) {
            memmove(samples + (size_t)k * MAX_SAMPLES + pt->n[k], cl[i].series[k],
                    cl[i].n[k] * sizeof *samples);
            pt->n[k] += cl[i].n[k];
        }
        free(cl[i].slots);
    }
    for (int k = 0; k < N_SERIES; k++) {
        int64_t *v = samples + (size_t)k * MAX_SAMPLES;
        qsort(v, pt->n[k], sizeof *v, cmp_i64);
        pt->p50[k] = pct_us(v, pt->n[k], 0.50);
        pt->p99[k] = pct_us(v, pt->n[k], 0.99);
    }
}

/* One load point: clients keep `outstanding` requests each in flight (closed loop), or offer
 * `rate` requests/s in all (open loop, when rate > 0); probe the machine's stalls if asked,
 * warm up, measure. */
static point_t run_point(const cfg_t *c, void *ctx, gen_t *g, pid_t router, int outstanding,
                         double rate, int64_t *samples)
{
    if (c->stall_probe_ms)
        stall_probe(c);
    atomic_int stop = 0, measure = 0;
    client_t cl[MAX_CLIENTS];
    size_t per = MAX_SAMPLES / (size_t)c->clients;
    uint64_t mask = 1;
    while (mask < 4ull * (uint64_t)outstanding)
        mask <<= 1;
    if (rate > 0)
        mask = OPEN_SLOTS;
    for (int i = 0; i < c->clients; i++) {
        cl[i] = (client_t){.ctx = ctx,
                           .index = i,
                           .outstanding = outstanding,
                           .prompt_len = c->prompt_len,
                           .tokens = c->tokens,
                           .rate = rate / c->clients,
                           .stop = &stop,
                           .measure = &measure,
                           .cap = per,
                           .mask = mask - 1};
        for (int k = 0; k < N_SERIES; k++)
            cl[i].series[k] = samples + (size_t)k * MAX_SAMPLES + (size_t)i * per;
        cl[i].slots = calloc(mask, sizeof *cl[i].slots);
        if (!g)
            pthread_create(&cl[i].thread, NULL, client_main, &cl[i]);
    }
    pthread_t gen_thread;
    if (g) {
        g->cl = cl;
        g->n_clients = c->clients;
        g->stop = &stop;
        g->measure = &measure;
        g->busy_ns = g->lost = 0;
        pthread_create(&gen_thread, NULL, gen_main, g);
    }
    usleep((useconds_t)c->warmup_ms * 1000);
    wait_hist_t w0 = {0}, w1 = {0};
    int waits = g_ep.metrics_port && scrape_wait(&w0) == 0;
    double cpu0 = cpu_seconds(router), self0 = cpu_seconds(getpid());
    atomic_store(&measure, 1);
    uint64_t t0 = bt_rpc_now_ns();
    usleep((useconds_t)c->seconds * 1000000);
    atomic_store(&measure, 0);
    if (waits && scrape_wait(&w1) != 0)
        w1 = (wait_hist_t){0};
    double secs = (double)(bt_rpc_now_ns() - t0) / 1e9;
    point_t pt = {.router_cpu = (cpu_seconds(router) - cpu0) / secs,
                  .bench_cpu = (cpu_seconds(getpid()) - self0) / secs,
                  .wait0 = w0,
                  .wait1 = w1};
    atomic_store(&stop, 1);
    for (int i = 0; i < c->clients && !g; i++)
        pthread_join(cl[i].thread, NULL);
    if (g) {
        pthread_join(gen_thread, NULL);
        pt.bench_cpu = (double)g->busy_ns / 1e9 / secs; /* it never sleeps: its busy share */
        pt.errors += g->lost;
    }
    uint64_t done = 0;
    collect_clients(cl, c->clients, samples, &pt, &done);
    pt.rps = (double)done / secs;
    return pt;
}

static void print_point(const char *load, const point_t *r, int stamps)
{
    printf("%12s %11.0f %9.0f%% %10.1f %9.0f%% %13.1f %13.1f %13.1f %13.1f", load, r->rps,
           r->router_cpu * 100, r->rps > 0 ? r->router_cpu / r->rps * 1e6 : 0, r->bench_cpu * 100,
           r->p50[DIRECT], r->p99[DIRECT], r->p50[ADDED], r->p99[ADDED]);
    if (stamps)
        printf(" %13.1f %13.1f %13.1f %13.1f", r->p50[K_DIRECT], r->p99[K_DIRECT], r->p50[K_ADDED],
               r->p99[K_ADDED]);
    printf("%s%s\n", r->errors ? "  (errors!)" : "",
           r->skipped ? "  (could not send on schedule)" : "");
    if (g_ep.metrics_port)
        print_wait(&r->wait0, &r->wait1);
    fflush(stdout);
}

static void cleanup_dir(const char *dir, int n_clients)
{
    char path[160];
    snprintf(path, sizeof path, "%s/client", dir);
    unlink(path);
    snprintf(path, sizeof path, "%s/cluster", dir);
    unlink(path);
    snprintf(path, sizeof path, "%s/direct", dir);
    unlink(path);
    for (int i = 0; i < n_clients; i++) {
        snprintf(path, sizeof path, "%s/direct-%d", dir, i);
        unlink(path);
    }
    rmdir(dir);
}

static int run(const cfg_t *c, const char *exe)
{
    char dir[64] = "/tmp/baton-bench-XXXXXX";
    if (!mkdtemp(dir))
        return -1;
    pid_t router = set_endpoints(c, dir) == 0 ? launch_router(c, exe, dir) : -1;
    if (router < 0) {
        cleanup_dir(dir, c->clients);
        return -1;
    }
    pin(c->bench_cpu); /* after the fork: threads made from here on inherit it */
    /* The stubs and the clients stand for separate processes: each side has its own ZeroMQ
     * context, so its own I/O thread, as it would in a deployment. */
    void *ctx = NULL, *cctx = NULL;
    atomic_int stop = 0;
    stubs_t stubs;
    gen_t gen, *g = strcmp(c->generator, "zmtp") ? NULL : &gen;
    int failed = g ? gen_open(c, g) != 0 : bind_direct(cctx = zmq_ctx_new(), c->clients) != 0;
    if (failed) {
        if (g)
            gen_close(g);
        for (int i = 0; i < c->clients && !g; i++)
            if (g_ep.pull[i])
                zmq_close(g_ep.pull[i]);
        if (cctx)
            zmq_ctx_term(cctx);
        kill(router, SIGTERM);
        waitpid(router, NULL, 0);
        cleanup_dir(dir, c->clients);
        return -1;
    }
    if (!g) {
        ctx = zmq_ctx_new();
        stubs_init(c, ctx, &stop, &stubs);
        pthread_create(&stubs.thread, NULL, stubs_main, &stubs);
        usleep(500000); /* stubs registered */
    }
    int64_t *samples = malloc(N_SERIES * MAX_SAMPLES * sizeof *samples);
    int stamps = g && !strcmp(c->transport, "tcp"); /* the kernel's receive stamps */
    printf("router overhead: mode %s, policy %s, %d clients, prompt %d tokens, %d output tokens,"
           " %d s per point, %s endpoints, router on CPU %d%s, stubs and clients (%s) on CPU %d"
           " (-1: any)\n",
           c->mode, c->policy, c->clients, c->prompt_len, c->tokens, c->seconds, c->transport,
           c->router_cpu, c->busy_poll ? " (busy-polling)" : "",
           g ? "one busy-polling thread, ZMTP" : "threads, libzmq", c->bench_cpu);
    printf("%12s %11s %10s %10s %10s %13s %13s %13s %13s", "load", "requests/s", "router CPU",
           "CPU us/req", "bench CPU", "direct p50 us", "direct p99 us", "added p50 us",
           "added p99 us");
    if (stamps)
        printf(" %13s %13s %13s %13s", "sock dir p50", "sock dir p99", "sock add p50",
               "sock add p99");
    printf("\n");
    char label[32];
    for (const char *p = c->loads ? c->loads : ""; samples && *p;) {
        int load = atoi(p) > 0 ? atoi(p) : 1;
        point_t r = run_point(c, cctx, g, router, load, 0, samples);
        snprintf(label, sizeof label, "%d in flight", load * c->clients);
        print_point(label, &r, stamps);
        p = strchr(p, ',');
        p = p ? p + 1 : "";
    }
    for (const char *p = c->rates ? c->rates : ""; samples && *p;) {
        double rate = atof(p);
        if (rate > 0) {
            point_t r = run_point(c, cctx, g, router, 1, rate, samples);
            snprintf(label, sizeof label, "%.0f/s", rate);
            print_point(label, &r, stamps);
        }
        p = strchr(p, ',');
        p = p ? p + 1 : "";
    }
    atomic_store(&stop, 1);
    if (g) {
        gen_close(g);
    } else {
        pthread_join(stubs.thread, NULL);
        for (int i = 0; i < c->clients; i++)
            zmq_close(g_ep.pull[i]);
        zmq_ctx_term(cctx);
        zmq_ctx_term(ctx);
    }
    kill(router, SIGTERM);
    waitpid(router, NULL, 0);
    int st = samples ? 0 : -1;
    free(samples);
    cleanup_dir(dir, c->clients);
    return st;
}

int main(int argc, char **argv)
{
    cfg_t c = {0};
    int st = bt_cfg_parse(&table, &c, argc, argv, 1, NULL, 0, NULL);
    if (st != BT_OK)
        return st == BT_AGAIN ? 0 : 2;
    char exe[4096];
    if (c.router) {
        snprintf(exe, sizeof exe, "%s", c.router);
    } else {
        ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 32);
        exe[n > 0 ? n : 0] = 0;
        char *slash = strrchr(exe, '/');
        snprintf(slash ? slash + 1 : exe, 32, "baton-router");
    }
    if (access(exe, X_OK) != 0) {
        fprintf(stderr, "baton-bench-router: no router at %s (--router)\n", exe);
        bt_cfg_free(&table, &c);
        return 1;
    }
    st = run(&c, exe);
    bt_cfg_free(&table, &c);
    return st == 0 ? 0 : 1;
}
