/* SPDX-License-Identifier: MIT */
/*
 * test_zmtp.c - the ZMTP ROUTER socket against real libzmq peers (DEALER, REQ) in the same
 * process, over ipc:// (paths and abstract names), tcp:// and IPv6: handshakes, announced and
 * generated identities, frame sizes around the short/long boundary and up to 1 MiB, long
 * messages, oversized frames, handover of an identity, peers that leave, back-pressure,
 * heartbeats, per-peer order and round-robin, and bind errors. Hand-made peers on raw TCP
 * check the bytes on the wire (input split at every byte), garbage and broken handshakes,
 * mutated streams, a peer gone while output is written to it, and running out of descriptors.
 * Connections made by the socket itself go to libzmq ROUTER and DEALER sockets and to another
 * of these sockets. Over tcp, the kernel's receive stamps are passed on when asked for.
 *
 * The socket does its work only inside bt_zmtp_recv and bt_zmtp_flush, so every wait here
 * serves it: the helpers call bt_zmtp_recv and then sleep on bt_zmtp_fd (and the libzmq peer)
 * with no cap on the sleep, so a descriptor that fails to wake the caller fails the test.
 */
// ctest-labels: unit
#include "testutil.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "common/clock.h"
#include "common/status.h"
#include "common/zmtp.h"

#define WAIT_MS 5000
#define MAX_PEER_FRAMES 16
#define ID(s) (const uint8_t *)(s), strlen(s)

static void *g_ctx;
static char g_dir[256]; /* scratch directory for ipc:// paths */
static const bt_zmtp_params_t g_defaults;

/* What a test made and has not closed yet, closed by the teardown after a failed assertion
 * skipped the test's own cleanup (zmq_ctx_term would wait for the sockets forever). */
static void *g_peers[64];
static bt_zmtp_t *g_zts[8];

static void zt_track(bt_zmtp_t *z)
{
    for (size_t i = 0; i < sizeof g_zts / sizeof g_zts[0]; i++)
        if (!g_zts[i]) {
            g_zts[i] = z;
            return;
        }
    fail_msg("too many sockets open");
}

static void zt_close(bt_zmtp_t *z)
{
    for (size_t i = 0; i < sizeof g_zts / sizeof g_zts[0]; i++)
        if (g_zts[i] == z)
            g_zts[i] = NULL;
    bt_zmtp_close(z);
}

static void peer_close(void *s)
{
    for (size_t i = 0; i < sizeof g_peers / sizeof g_peers[0]; i++)
        if (g_peers[i] == s)
            g_peers[i] = NULL;
    zmq_close(s);
}

static int close_leftovers(void **state)
{
    for (size_t i = 0; i < sizeof g_peers / sizeof g_peers[0]; i++)
        if (g_peers[i])
            peer_close(g_peers[i]);
    for (size_t i = 0; i < sizeof g_zts / sizeof g_zts[0]; i++)
        if (g_zts[i])
            zt_close(g_zts[i]);
    return 0;
}

/* A message as a libzmq peer received it. */
typedef struct {
    int n;
    zmq_msg_t f[MAX_PEER_FRAMES];
} zmsg_t;

static int left_ms(double end)
{
    double left = end - bt_mono_ms();
    return left > 0 ? (int)left + 1 : 0;
}

static void fill(uint8_t *p, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (uint8_t)(i * 131 + (i >> 9) + seed);
}

static bool filled(const uint8_t *p, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] != (uint8_t)(i * 131 + (i >> 9) + seed))
            return false;
    return true;
}

static bt_zmtp_t *bind_ok(const char *endpoint, const bt_zmtp_params_t *params)
{
    bt_zmtp_t *z = NULL;
    assert_int_equal(bt_zmtp_bind(endpoint, params ? params : &g_defaults, &z), BT_OK);
    assert_non_null(z);
    zt_track(z);
    return z;
}

static bt_zmtp_t *bind_tcp(const bt_zmtp_params_t *params)
{
    bt_zmtp_t *z = bind_ok("tcp://127.0.0.1:*", params);
    const char *ep = bt_zmtp_endpoint(z);
    assert_non_null(ep);
    assert_true(strncmp(ep, "tcp://127.0.0.1:", 16) == 0);
    assert_true(ep[strlen(ep) - 1] != '*');
    int port = atoi(ep + 16);
    assert_true(port > 0 && port < 65536);
    return z;
}

/* Serves z until a message arrives: BT_OK, or BT_ERR_TIMEOUT after timeout_ms. */
static int recv_wait(bt_zmtp_t *z, bt_zmtp_msg_t *m, int timeout_ms)
{
    double end = bt_mono_ms() + timeout_ms;
    for (;;) {
        int rc = bt_zmtp_recv(z, m);
        if (rc != BT_AGAIN)
            return rc;
        int left = left_ms(end);
        if (left == 0)
            return BT_ERR_TIMEOUT;
        struct pollfd p = {.fd = bt_zmtp_fd(z), .events = POLLIN};
        poll(&p, 1, left);
    }
}

/* Serves z, which must receive nothing meanwhile, until it counts want peers. */
static void wait_peers(bt_zmtp_t *z, int want)
{
    double end = bt_mono_ms() + WAIT_MS;
    for (;;) {
        bt_zmtp_msg_t m;
        assert_int_equal(bt_zmtp_recv(z, &m), BT_AGAIN);
        if (bt_zmtp_peers(z) == want)
            return;
        int left = left_ms(end);
        if (left == 0)
            fail_msg("%d peers after %d ms, want %d", bt_zmtp_peers(z), WAIT_MS, want);
        struct pollfd p = {.fd = bt_zmtp_fd(z), .events = POLLIN};
        poll(&p, 1, left);
    }
}

/* Serves z, which must receive nothing meanwhile, until libzmq socket s has a message to
 * read: true, or false after timeout_ms. */
static bool peer_wait(bt_zmtp_t *z, void *s, int timeout_ms)
{
    double end = bt_mono_ms() + timeout_ms;
    for (;;) {
        bt_zmtp_msg_t m;
        assert_int_equal(bt_zmtp_recv(z, &m), BT_AGAIN);
        zmq_pollitem_t it[2] = {{.socket = s, .events = ZMQ_POLLIN},
                                {.fd = bt_zmtp_fd(z), .events = ZMQ_POLLIN}};
        int left = left_ms(end);
        assert_true(zmq_poll(it, 2, left) >= 0);
        if (it[0].revents & ZMQ_POLLIN)
            return true;
        if (left == 0)
            return false;
    }
}

/* Serves z until libzmq socket s has a whole message, and reads it into r. */
static void peer_recv(bt_zmtp_t *z, void *s, zmsg_t *r)
{
    if (!peer_wait(z, s, WAIT_MS))
        fail_msg("the peer got nothing in %d ms", WAIT_MS);
    int more = 1;
    for (r->n = 0; more; r->n++) {
        assert_true(r->n < MAX_PEER_FRAMES);
        zmq_msg_init(&r->f[r->n]);
        assert_true(zmq_msg_recv(&r->f[r->n], s, ZMQ_DONTWAIT) >= 0);
        more = zmq_msg_more(&r->f[r->n]);
    }
}

static void zmsg_close(zmsg_t *r)
{
    for (int i = 0; i < r->n; i++)
        zmq_msg_close(&r->f[i]);
    r->n = 0;
}

static bool zframe_is(zmsg_t *r, int i, const void *data, size_t len)
{
    return zmq_msg_size(&r->f[i]) == len &&
           (len == 0 || !memcmp(zmq_msg_data(&r->f[i]), data, len));
}

/* Checks that r holds exactly the strings given (a NULL-terminated list), then closes it. */
static void check_zmsg(zmsg_t *r, ...)
{
    va_list ap;
    va_start(ap, r);
    int n = 0;
    for (const char *s; (s = va_arg(ap, const char *)); n++) {
        assert_true(n < r->n);
        if (!zframe_is(r, n, s, strlen(s)))
            fail_msg("frame %d is not \"%s\"", n, s);
    }
    va_end(ap);
    assert_int_equal(r->n, n);
    zmsg_close(r);
}

/* Checks that m comes from id (NULL: any) and holds exactly the strings given. */
static void check_msg(const bt_zmtp_msg_t *m, const char *id, ...)
{
    if (id) {
        assert_int_equal(m->id_len, strlen(id));
        assert_memory_equal(m->id, id, m->id_len);
    }
    va_list ap;
    va_start(ap, id);
    int n = 0;
    for (const char *s; (s = va_arg(ap, const char *)); n++) {
        assert_true(n < m->n);
        assert_int_equal(m->len[n], strlen(s));
        assert_memory_equal(m->data[n], s, m->len[n]);
    }
    va_end(ap);
    assert_int_equal(m->n, n);
    assert_int_equal(m->n_frames, n);
}

static void *peer_new(int type, const char *id)
{
    void *s = zmq_socket(g_ctx, type);
    assert_non_null(s);
    size_t i = 0;
    while (g_peers[i])
        assert_true(++i < sizeof g_peers / sizeof g_peers[0]);
    g_peers[i] = s;
    int zero = 0;
    assert_int_equal(zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof zero), 0);
    if (id)
        assert_int_equal(zmq_setsockopt(s, ZMQ_ROUTING_ID, id, strlen(id)), 0);
    return s;
}

static void *peer(int type, const char *id, const char *endpoint)
{
    void *s = peer_new(type, id);
    assert_int_equal(zmq_connect(s, endpoint), 0);
    return s;
}

static void peer_send(void *s, const void *const *data, const size_t *len, int n)
{
    for (int i = 0; i < n; i++)
        assert_int_equal(zmq_send(s, data[i], len[i], i + 1 < n ? ZMQ_SNDMORE : 0), (int)len[i]);
}

/* Sends the strings given (a NULL-terminated list) as one message from libzmq socket s. */
static void peer_send_strs(void *s, ...)
{
    const void *data[MAX_PEER_FRAMES];
    size_t len[MAX_PEER_FRAMES];
    int n = 0;
    va_list ap;
    va_start(ap, s);
    for (const char *f; (f = va_arg(ap, const char *)); n++) {
        data[n] = f;
        len[n] = strlen(f);
    }
    va_end(ap);
    peer_send(s, data, len, n);
}

/* Queues the strings given (a NULL-terminated list) to identity id as one message. */
static int zt_send_strs(bt_zmtp_t *z, const uint8_t *id, size_t id_len, ...)
{
    struct iovec iov[MAX_PEER_FRAMES];
    int n = 0;
    va_list ap;
    va_start(ap, id_len);
    for (const char *f; (f = va_arg(ap, const char *)); n++)
        iov[n] = (struct iovec){.iov_base = (void *)f, .iov_len = strlen(f)};
    va_end(ap);
    return bt_zmtp_send(z, id, id_len, iov, n);
}

/* One request from the peer and one reply to it, both checked. */
static void exchange(bt_zmtp_t *z, void *s, const char *id)
{
    peer_send_strs(s, "ping", NULL);
    bt_zmtp_msg_t m;
    assert_int_equal(recv_wait(z, &m, WAIT_MS), BT_OK);
    check_msg(&m, id, "ping", NULL);
    assert_int_equal(zt_send_strs(z, ID(id), "pong", NULL), BT_OK);
    zmsg_t r;
    peer_recv(z, s, &r);
    check_zmsg(&r, "pong", NULL);
}

/* Handshake and a two-frame round trip on endpoint; the descriptor is quiet afterwards. */
static void round_trip(const char *endpoint)
{
    bt_zmtp_t *z = bind_ok(endpoint, NULL);
    const char *ep = bt_zmtp_endpoint(z);
    if (strncmp(endpoint, "ipc://", 6) == 0)
        assert_string_equal(ep, endpoint);
    else
        assert_true(ep[strlen(ep) - 1] != '*' && strtol(strrchr(ep, ':') + 1, NULL, 10) > 0);
    assert_int_equal(bt_zmtp_peers(z), 0);
    void *d = peer(ZMQ_DEALER, "alpha", ep);
    wait_peers(z, 1);

    peer_send_strs(d, "hello", "world!", NULL);
    bt_zmtp_msg_t m;
    assert_int_equal(recv_wait(z, &m, WAIT_MS), BT_OK);
    check_msg(&m, "alpha", "hello", "world!", NULL);
    assert_int_equal(zt_send_strs(z, ID("alpha"), "re", "ply", NULL), BT_OK);
    /* A recv that returns BT_AGAIN has written what was queued: no more serving needed. */
    assert_int_equal(bt_zmtp_recv(z, &m), BT_AGAIN);
    zmq_pollitem_t it = {.socket = d, .events = ZMQ_POLLIN};
    assert_int_equal(zmq_poll(&it, 1, WAIT_MS), 1);
    zmsg_t r;
    peer_recv(z, d, &r);
    check_zmsg(&r, "re", "ply", NULL);
    assert_int_equal(bt_zmtp_peers(z), 1);

    /* Nothing left to do: the descriptor must not stay readable (a busy loop for callers). */
    assert_int_equal(bt_zmtp_recv(z, &m), BT_AGAIN);
    struct pollfd p = {.fd = bt_zmtp_fd(z), .events = POLLIN};
    assert_int_equal(poll(&p, 1, 50), 0);
    peer_close(d);
    zt_close(z);
}

static void test_zmtp_round_trip_ipc_tcp_abstract(void **state)
{
    char ep[300];
    snprintf(ep, sizeof ep, "ipc://%s/rt.sock", g_dir);
    round_trip(ep);
    round_trip("tcp://127.0.0.1:*");
    snprintf(ep, sizeof ep, "ipc://@bt-zmtp-test-%d", (int)getpid());
    round_trip(ep);
}

static void test_zmtp_generated_identities(void **state)
{
    bt_zmtp_t *z = bind_tcp(NULL);
    void *a = peer(ZMQ_DEALER, NULL, bt_zmtp_endpoint(z));
    void *b = peer(ZMQ_DEALER, NULL, bt_zmtp_endpoint(z));
    peer_send_strs(a, "from a", NULL);
    peer_send_strs(b, "from b", NULL);
    uint8_t ids[2][5];
    bool seen[2] = {false, false};
    for (int i = 0; i < 2; i++) {
        bt_zmtp_msg_t m;
        assert_int_equal(recv_wait(z, &m, WAIT_MS), BT_OK);
        assert_int_equal(m.id_len, 5);
        assert_int_equal(m.id[0], 0);
        assert_int_equal(m.n, 1);
        assert_int_equal(m.len[0], 6);
        int who = m.data[0][5] == 'b';
        assert_false(seen[who]);
        seen[who] = true;
        memcpy(ids[who], m.id, 5);
    }
    assert_memory_not_equal(ids[0], ids[1], 5);
    assert_int_equal(bt_zmtp_peers(z), 2);
    assert_int_equal(zt_send_strs(z, ids[1], 5, "to b", NULL), BT_OK);
    assert_int_equal(zt_send_strs(z, ids[0], 5, "to a", NULL), BT_OK);
    zmsg_t r;
    peer_recv(z, a, &r);
    check_zmsg(&r, "to a", NULL);
    peer_recv(z, b, &r);
    check_zmsg(&r, "to b", NULL);
    peer_close(a);
    peer_close(b);
    zt_close(z);
}

static void test_zmtp_frame_sizes_both_ways(void **state)
{
    static const size_t sizes[] = {0, 1, 255, 256, 65536, 1 << 20};
    enum { N = sizeof sizes / sizeof sizes[0] };
    bt_zmtp_t *z = bind_tcp(NULL);
    void *d = peer(ZMQ_DEALER, "sizes", bt_zmtp_endpoint(z));
    uint8_t *buf[N];
    const void *data[N];
    struct iovec iov[N];
    for (int i = 0; i < N; i++) {
        buf[i] = malloc(sizes[i] + 1);
        assert_non_null(buf[i]);
        fill(buf[i], sizes[i], (unsigned)i);
        data[i] = buf[i];
        iov[i] = (struct iovec){.iov_base = buf[i], .iov_len = sizes[i]};
    }
    /* Each size alone (the last frame), then all in one message. */
    for (int i = 0; i <= N; i++) {
        int first = i < N ? i : 0, n = i < N ? 1 : N;
        peer_send(d, data + first, sizes + first, n);
        bt_zmtp_msg_t m;
        assert_int_equal(recv_wait(z, &m, WAIT_MS), BT_OK);
        assert_int_equal(m.n_frames, n);
        for (int k = 0; k < n; k++) {
            assert_int_equal(m.len[k], sizes[first + k]);
            assert_true(filled(m.data[k], m.len[k], (unsigned)(first + k)));
        }
        assert_int_equal(bt_zmtp_send(z, ID("sizes"), iov + first, n), BT_OK);
        /* The frames were copied: scribbling on them now must not change what is sent. */
        for (int k = 0; k < n; k++)
            memset(buf[first + k], 0xee, sizes[first + k]);
        zmsg_t r;
        peer_recv(z, d, &r);
        assert_int_equal(r.n, n);
        for (int k = 0; k < n; k++) {
            assert_int_equal(zmq_msg_size(&r.f[k]), sizes[first + k]);
            assert_true(filled(zmq_msg_data(&r.f[k]), sizes[first + k], (unsigned)(first + k)));
            fill(buf[first + k], sizes[first + k], (unsigned)(first + k));
        }
        zmsg_close(&r);
    }
    for (int i = 0; i < N; i++)
        free(buf[i]);
    peer_close(d);
    zt_close(z);
}

static void test_zmtp_many_frames_are_counted(void **state)
{
    enum { N = 12, BIG = 100000 };
    bt_zmtp_t *z = bind_tcp(NULL);
    void *d = peer(ZMQ_DEALER, "many", bt_zmtp_endpoint(z));
    static uint8_t big[BIG];
    fill(big, BIG, 9);
    char names[N][8];
    const void *data[N];
    size_t len[N];
    struct iovec iov[N];
    for (int i = 0; i < N; i++) {
        snprintf(names[i], sizeof names[i], "f%d", i);
        data[i] = i == 9 ? (const void *)big : names[i]; /* a long frame past the kept ones */
        len[i] = i == 9 ? BIG : strlen(names[i]);
        iov[i] = (struct iovec){.iov_base = (void *)data[i], .iov_len = len[i]};
    }
    peer_send(d, data, len, N);
    peer_send_strs(d, "next", "message", NULL);
    bt_zmtp_msg_t m;
    assert_int_equal(recv_wait(z, &m, WAIT_MS), BT_OK);
    assert_int_equal(m.n, BT_ZMTP_MAX_FRAMES);
    assert_int_equal(m.n_frames, N);
    for (int i = 0; i < BT_ZMTP_MAX_FRAMES; i++) {
        assert_int_equal(m.len[i], len[i]);
        assert_memory_equal(m.data[i], data[i], len[i]);
    }
    assert_int_equal(recv_wait(z, &m, WAIT_MS), BT_OK);
    check_msg(&m, "many", "next", "message", NULL);

    /* Sending has no such limit. */
    assert_int_equal(bt_zmtp_send(z, ID("many"), iov, N), BT_OK);
    zmsg_t r;
    peer_recv(z, d, &r);
    assert_int_equal(r.n, N);
    for (int i = 0; i < N; i++)
        assert_true(zframe_is(&r, i, data[i], len[i]));
    zmsg_close(&r);
    peer_close(d);
    zt_close(z);
}

static void test_zmtp_oversized_frames(void **state)
{
    bt_zmtp_params_t params = {.max_frame = 1000};
    bt_zmtp_t *z = bind_tcp(&params);
    void *big = peer_new(ZMQ_DEALER, "big");
    int never = -1;
    assert_int_equal(zmq_setsockopt(big, ZMQ_RECONNECT_IVL, &never, sizeof never), 0);
    assert_int_equal(zmq_connect(big, bt_zmtp_endpoint(z)), 0);
    void *ok = peer(ZMQ_DEALER, "ok", bt_zmtp_endpoint(z));
    wait_peers(z, 2);

    static uint8_t buf[2000];
    fill(buf, sizeof buf, 5);
    const void *data[2] = {buf, buf};
    size_t at_limit = 1000, over = 2000;
    peer_send(big, data, &at_limit, 1);
    bt_zmtp_msg_t m;
    assert_int_equal(recv_wait(z, &m, WAIT_MS), BT_OK);
    assert_int_equal(m.len[0], 1000);
    assert_true(filled(m.data[0], 1000, 5));
    peer_send(big, data, &over, 1);
    wait_peers(z, 1);
    assert_int_equal(zt_send_strs(z, ID("big"), "gone?", NULL), BT_ERR_NOT_FOUND);
    exchange(z, ok, "ok");

    struct iovec iov[2] = {{.iov_base = "small", .iov_len = 5}, {.iov_base = buf, .iov_len = 1001}};
    assert_int_equal(bt_zmtp_send(z, ID("ok"), iov + 1, 1), BT_ERR_RANGE);
    assert_int_equal(bt_zmtp_send(z, ID("ok"), iov, 2), BT_ERR_RANGE);
    iov[1].iov_len = 1000;
    assert_int_equal(bt_zmtp_send(z, ID("ok"), iov, 2), BT_OK);
    zmsg_t r;
    peer_recv(z, ok, &r); /* nothing of the refused messages came first */
    assert_int_equal(r.n, 2);
    assert_true(zframe_is(&r, 0, "small", 5));
    assert_true(zframe_is(&r, 1, buf, 1000));
    zmsg_close(&r);
    peer_close(big);
    peer_close(ok);
    zt_close(z);
}

static void test_zmtp_unknown_identity(void **state)
{
    bt_zmtp_t *z = bind_tcp(NULL);
    assert_int_equal(zt_send_strs(z, ID("nobody"), "x", NULL), BT_ERR_NOT_FOUND);
    void *d = peer(ZMQ_DEALER, "known", bt_zmtp_endpoint(z));
    wait_peers(z, 1);
    assert_int_equal(zt_send_strs(z, ID("nobody"), "x", NULL), BT_ERR_NOT_FOUND);
    assert_int_equal(zt_send_strs(z, ID("know"), "x", NULL), BT_ERR_NOT_FOUND);
    assert_int_equal(zt_send_strs(z, ID("known!"), "x", NULL), BT_ERR_NOT_FOUND);
    exchange(z, d, "known");
    peer_close(d);
    zt_close(z);
}

static void test_zmtp_identity_handover(void **state)
{
    bt_zmtp_t *z = bind_tcp(NULL);
    void *a = peer(ZMQ_DEALER, "dup", bt_zmtp_endpoint(z));
    wait_peers(z, 1);
    exchange(z, a, "dup");
    void *b = peer(ZMQ_DEALER, "dup", bt_zmtp_endpoint(z));
    wait_peers(z, 2);

    assert_int_equal(zt_send_strs(z, ID("dup"), "to b", NULL), BT_OK);
    zmsg_t r;
    peer_recv(z, b, &r);
    check_zmsg(&r, "to b", NULL);
    assert_false(peer_wait(z, a, 100));

    peer_send_strs(a, "from a", NULL);
    bt_zmtp_msg_t m;
    assert_int_equal(recv_wait(z, &m, WAIT_MS), BT_OK);
    check_msg(&m, NULL, "from a", NULL);
    assert_int_equal(m.id_len, 5);
    assert_int_equal(m.id[0], 0);
    uint8_t id_a[5];
    memcpy(id_a, m.id, 5);
    assert_int_equal(zt_send_strs(z, id_a, 5, "to a", NULL), BT_OK);
    peer_recv(z, a, &r);
    check_zmsg(&r, "to a", NULL);

    peer_send_strs(b, "from b", NULL);
    assert_int_equal(recv_wait(z, &m, WAIT_MS), BT_OK);
    check_msg(&m, "dup", "from b", NULL);
    peer_close(a);
    peer_close(b);
    zt_close(z);
}

static void test_zmtp_backpressure(void **state)
{
    enum { PAYLOAD = 16 << 10, MAX_SENDS = 10000 };
    bt_zmtp_params_t params = {.max_queued = 64 << 10};
    bt_zmtp_t *z = bind_tcp(&params);
    void *d = peer_new(ZMQ_DEALER, "slow");
    int one = 1, small = 4096;
    assert_int_equal(zmq_setsockopt(d, ZMQ_RCVHWM, &one, sizeof one), 0);
    assert_int_equal(zmq_setsockopt(d, ZMQ_RCVBUF, &small, sizeof small), 0);
    assert_int_equal(zmq_connect(d, bt_zmtp_endpoint(z)), 0);
    wait_peers(z, 1);

    static uint8_t payload[PAYLOAD];
    uint32_t seq = 0;
    struct iovec iov[2] = {{.iov_base = &seq, .iov_len = sizeof seq},
                           {.iov_base = payload, .iov_len = PAYLOAD}};
    int rc = BT_OK;
    for (; seq < MAX_SENDS; seq++) {
        fill(payload, PAYLOAD, seq);
        rc = bt_zmtp_send(z, ID("slow"), iov, 2);
        if (rc == BT_AGAIN)
            break;
        assert_int_equal(rc, BT_OK);
        bt_zmtp_flush(z);
    }
    assert_int_equal(rc, BT_AGAIN);
    uint32_t sent = seq;
    assert_true(sent >= 4); /* at least max_queued went out before the refusal */

    /* The peer reads everything; the refused message must not be among it. */
    zmsg_t r;
    for (uint32_t i = 0; i < sent; i++) {
        peer_recv(z, d, &r);
        assert_int_equal(r.n, 2);
        assert_int_equal(zmq_msg_size(&r.f[0]), sizeof i);
        uint32_t got;
        memcpy(&got, zmq_msg_data(&r.f[0]), sizeof got);
        assert_int_equal(got, i);
        assert_int_equal(zmq_msg_size(&r.f[1]), PAYLOAD);
        assert_true(filled(zmq_msg_data(&r.f[1]), PAYLOAD, i));
        zmsg_close(&r);
    }
    assert_false(peer_wait(z, d, 50));
    assert_int_equal(bt_zmtp_send(z, ID("slow"), iov, 2), BT_OK);
    peer_recv(z, d, &r);
    assert_int_equal(r.n, 2);
    assert_true(zframe_is(&r, 0, &seq, sizeof seq));
    assert_true(filled(zmq_msg_data(&r.f[1]), PAYLOAD, seq));
    zmsg_close(&r);
    assert_false(peer_wait(z, d, 50));
    peer_close(d);
    zt_close(z);
}

/* A TCP connection to the socket's endpoint, or -1 (no assertion: see the descriptor test). */
static int raw_try_connect(const char *endpoint)
{
    struct sockaddr_in sa = {.sin_family = AF_INET};
    sa.sin_port = htons((uint16_t)atoi(strrchr(endpoint, ':') + 1));
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        close(fd);
        fd = -1;
    }
    return fd;
}

static int raw_connect(const char *endpoint)
{
    int fd = raw_try_connect(endpoint);
    assert_true(fd >= 0);
    return fd;
}

static void raw_write(int fd, const void *p, size_t n)
{
    assert_int_equal(send(fd, p, n, MSG_NOSIGNAL), (ssize_t)n);
}

/* Appends a frame (long form past 255 bytes); returns its length on the wire. */
static size_t put_frame(uint8_t *p, int flags, const void *data, size_t len)
{
    size_t hdr = 2;
    p[0] = (uint8_t)flags;
    if (len > 255) {
        p[0] |= 0x02;
        for (int i = 0; i < 8; i++)
            p[1 + i] = (uint8_t)((uint64_t)len >> (56 - 8 * i));
        hdr = 9;
    } else {
        p[1] = (uint8_t)len;
    }
    memcpy(p + hdr, data, len);
    return hdr + len;
}

/* Serves z (NULL: does not), which must receive nothing meanwhile, until n bytes are read
 * from raw fd. */
static void raw_read(bt_zmtp_t *z, int fd, uint8_t *buf, size_t n)
{
    double end = bt_mono_ms() + WAIT_MS;
    for (size_t got = 0; got < n;) {
        bt_zmtp_msg_t m;
        if (z)
            assert_int_equal(bt_zmtp_recv(z, &m), BT_AGAIN);
        struct pollfd p[2] = {{.fd = fd, .events = POLLIN},
                              {.fd = z ? bt_zmtp_fd(z) : -1, .events = POLLIN}};
        int left = left_ms(end);
        if (left == 0)
            fail_msg("%zu of %zu bytes came in %d ms", got, n, WAIT_MS);
        poll(p, 2, left);
        ssize_t r = p[0].revents ? recv(fd, buf + got, n - got, MSG_DONTWAIT) : -1;
        assert_true(r != 0);
        got += r > 0 ? (size_t)r : 0;
    }
}

/* One bt_zmtp_recv once z's descriptor says there is something to do. */
static int recv_once(bt_zmtp_t *z, bt_zmtp_msg_t *m)
{
    struct pollfd p = {.fd = bt_zmtp_fd(z), .events = POLLIN};
    poll(&p, 1, WAIT_MS);
    return bt_zmtp_recv(z, m);
}

/* Serves z until the server closes raw connection fd (a read gives 0 or an error), reading
 * and dropping what the server wrote before (its greeting): true, or false after timeout_ms. */
static bool raw_wait_closed(bt_zmtp_t *z, int fd, int timeout_ms)
{
    double end = bt_mono_ms() + timeout_ms;
    for (;;) {
        bt_zmtp_msg_t m;
        assert_int_equal(bt_zmtp_recv(z, &m), BT_AGAIN);
        struct pollfd p[2] = {{.fd = fd, .events = POLLIN},
                              {.fd = bt_zmtp_fd(z), .events = POLLIN}};
        int left = left_ms(end);
        poll(p, 2, left);
        if (p[0].revents) {
            char buf[256];
            ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
            if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR))
                return true;
        } else if (left == 0) {
            return false;
        }
    }
}

static int count_fds(void)
{
    DIR *dir = opendir("/proc/self/fd");
    assert_non_null(dir);
    int n = 0;
    while (readdir(dir))
        n++;
    closedir(dir);
    return n;
}

/* Serves z until the process has no more descriptors than baseline. */
static void wait_fds(bt_zmtp_t *z, int baseline)
{
    double end = bt_mono_ms() + WAIT_MS;
    while (count_fds() > baseline) {
        bt_zmtp_msg_t m;
        assert_int_equal(bt_zmtp_recv(z, &m), BT_AGAIN);
        int left = left_ms(end);
        if (left == 0)
            fail_msg("%d descriptors left open, want %d", count_fds(), baseline);
        struct pollfd p = {.fd = bt_zmtp_fd(z), .events = POLLIN};
        poll(&p, 1, left < 20 ? left : 20); /* closing our end wakes nothing to wait on */
    }
}

/* A ZMTP 3.0 greeting (64 bytes). */
static void greeting(uint8_t g[64], int major, const char *mechanism)
{
    memset(g, 0, 64);
    g[0] = 0xff;
    g[9] = 0x7f;
    g[10] = (uint8_t)major;
    memcpy(g + 12, mechanism, strlen(mechanism));
}

#define READY_DEALER                                                                               \
    "\x05READY\x0bSocket-Type\x00\x00\x00\x06"                                                     \
    "DEALER"
#define B(lit) lit, sizeof lit - 1

/* A greeting and READY announcing a DEALER with identity id; returns the bytes. */
static size_t handshake(uint8_t *p, const char *id)
{
    uint8_t body[300];
    size_t n = sizeof READY_DEALER - 1;
    memcpy(body, READY_DEALER, n);
    if (id) {
        memcpy(body + n, "\x08Identity\x00\x00\x00", 12);
        body[n + 12] = (uint8_t)strlen(id);
        memcpy(body + n + 13, id, strlen(id));
        n += 13 + strlen(id);
    }
    greeting(p, 3, "NULL");
    return 64 + put_frame(p + 64, 0x04, body, n);
}

static void test_zmtp_garbage_closes_the_connection(void **state)
{
    /* What follows a good greeting. */
    static const struct {
        int flags;
        const char *body;
        size_t len;
    } after[] = {
        /* READY as a message, not a command */
        {0x00, B(READY_DEALER)},
        /* another command */
        {0x04, B("\x05HELLO\x0bSocket-Type\x00\x00\x00\x06"
                 "DEALER")},
        /* a property name past the end */
        {0x04, B(READY_DEALER "\xc8Identity")},
        /* a property value past the end */
        {0x04, B(READY_DEALER "\x08Identity\x00\x00\x00\x40"
                              "ab")},
        /* no socket type */
        {0x04, B("\x05READY\x08Identity\x00\x00\x00\x01x")},
        /* a socket type that cannot talk to a ROUTER */
        {0x04, B("\x05READY\x0bSocket-Type\x00\x00\x00\x03PUB")},
    };
    enum { N_GREETINGS = 4, N_AFTER = sizeof after / sizeof after[0] };
    bt_zmtp_t *z = bind_tcp(NULL);
    const char *ep = bt_zmtp_endpoint(z);
    int baseline = count_fds();
    uint8_t buf[512];

    for (int c = 0; c < N_GREETINGS + N_AFTER; c++) {
        int fd = raw_connect(ep);
        greeting(buf, c == 2 ? 2 : 3, c == 3 ? "CURVE" : "NULL");
        size_t n = 64;
        if (c == 0)
            fill(buf, 64, 11); /* first byte 0x0b, not the signature's 0xff */
        else if (c == 1)
            buf[9] = 0x7e; /* the signature's last byte */
        else if (c >= N_GREETINGS)
            n += put_frame(buf + 64, after[c - N_GREETINGS].flags, after[c - N_GREETINGS].body,
                           after[c - N_GREETINGS].len);
        raw_write(fd, buf, n);
        if (!raw_wait_closed(z, fd, WAIT_MS))
            fail_msg("case %d: the connection stayed open", c);
        close(fd);
        assert_int_equal(bt_zmtp_peers(z), 0);
        assert_int_equal(bt_zmtp_refused(z), c + 1); /* each counted as refused */
    }

    /* Gone at once, half a greeting, and a frame cut short after a good handshake. */
    close(raw_connect(ep));
    int fd = raw_connect(ep);
    raw_write(fd, buf, handshake(buf, NULL) / 2);
    close(fd);
    fd = raw_connect(ep);
    size_t n = handshake(buf, NULL);
    raw_write(fd, buf, n);
    wait_peers(z, 1);
    raw_write(fd, B("\x00\x64"
                    "0123456789")); /* announces 100 bytes, has 10 */
    close(fd);
    wait_peers(z, 0);
    wait_fds(z, baseline);
    /* Peers that left are not refusals. */
    assert_int_equal(bt_zmtp_refused(z), N_GREETINGS + N_AFTER);

    void *d = peer(ZMQ_DEALER, "after", ep);
    wait_peers(z, 1);
    exchange(z, d, "after");
    peer_close(d);
    zt_close(z);
}

/* Takes everything z has; every message must be whole and within the limits, and none may
 * claim the good peer's identity. */
static int fz_drain(bt_zmtp_t *z, size_t max_frame)
{
    bt_zmtp_msg_t m;
    int n = 0;
    for (; bt_zmtp_recv(z, &m) == BT_OK; n++) {
        assert_true(m.n_frames >= 1 && m.n_frames <= 1024);
        assert_int_equal(m.n, m.n_frames < BT_ZMTP_MAX_FRAMES ? m.n_frames : BT_ZMTP_MAX_FRAMES);
        for (int i = 0; i < m.n; i++)
            assert_true(m.len[i] <= max_frame);
        assert_false(m.id_len == 4 && !memcmp(m.id, "good", 4));
    }
    return n;
}

/* Mutated wire bytes: a valid stream (greeting, READY with an identity, messages of one to
 * three frames, short and long, a PING) with a few bytes changed, inserted or removed, or cut
 * short, sent in random pieces by raw peers while a libzmq peer exchanges messages. Each bad
 * connection is served or closed; the good peer is served throughout; no message is delivered
 * torn or over the frame limit (and under ASan, no byte is read out of bounds). */
static void test_zmtp_mutated_streams(void **state)
{
    const bt_zmtp_params_t params = {.max_frame = 2048};
    bt_zmtp_t *z = bind_tcp(&params);
    const char *ep = bt_zmtp_endpoint(z);
    void *good = peer(ZMQ_DEALER, "good", ep);
    wait_peers(z, 1);
    uint64_t rng = 0x2545f4914f6cdd1dull;
    static uint8_t s[16384], data[3000];
    fill(data, sizeof data, 3);
    int open_fds[8], n_open = 0, delivered = 0;
    for (int round = 0; round < 400; round++) {
        char id[32];
        snprintf(id, sizeof id, "fuzz-peer-%d", round);
        size_t n = handshake(s, id);
        for (int k = 1 + (int)(bt_test_rand(&rng) % 4); k > 0; k--) {
            int frames = 1 + (int)(bt_test_rand(&rng) % 3);
            for (int f = 0; f < frames; f++) {
                size_t len = bt_test_rand(&rng) % 4 == 0 ? 256 + bt_test_rand(&rng) % 2200
                                                         : bt_test_rand(&rng) % 40;
                n += put_frame(s + n, f + 1 < frames ? 0x01 : 0x00, data, len);
            }
            if (bt_test_rand(&rng) % 3 == 0)
                n += put_frame(s + n, 0x04,
                               "\x04PING\x00\x0a"
                               "ctx",
                               10);
        }
        for (int k = 1 + (int)(bt_test_rand(&rng) % 4); k > 0; k--)
            bt_test_mutate(&rng, s, &n, sizeof s);
        int fd = raw_connect(ep);
        for (size_t at = 0; at < n;) {
            size_t piece = 1 + bt_test_rand(&rng) % 700;
            piece = piece < n - at ? piece : n - at;
            if (send(fd, s + at, piece, MSG_NOSIGNAL) < 0)
                break; /* closed by the socket: what it has refused */
            at += piece;
            delivered += fz_drain(z, params.max_frame);
        }
        delivered += fz_drain(z, params.max_frame);
        if (n_open == 8 ||
            bt_test_rand(&rng) % 2) { /* some peers stay a while, some leave at once */
            close(fd);
        } else {
            open_fds[n_open++] = fd;
        }
        if (n_open == 8 || round % 25 == 24) {
            while (n_open > 0)
                close(open_fds[--n_open]);
            exchange(z, good, "good");
        }
    }
    while (n_open > 0)
        close(open_fds[--n_open]);
    wait_peers(z, 1);
    exchange(z, good, "good");
    /* Not degenerate: many mutated streams still carried whole messages, many were refused. */
    fprintf(stderr, "mutated streams: %d messages delivered, %llu connections refused\n", delivered,
            (unsigned long long)bt_zmtp_refused(z));
    assert_true(delivered > 100);
    assert_true(bt_zmtp_refused(z) > 50);
    peer_close(good);
    zt_close(z);
}

static void test_zmtp_order_per_peer_interleaved(void **state)
{
    enum { PEERS = 3, MSGS = 1000 };
    bt_zmtp_t *z = bind_tcp(NULL);
    void *d[PEERS];
    static const char *const names[PEERS] = {"d0", "d1", "d2"};
    for (int i = 0; i < PEERS; i++)
        d[i] = peer(ZMQ_DEALER, names[i], bt_zmtp_endpoint(z));
    wait_peers(z, PEERS);
    static char pad[50];
    memset(pad, 'x', sizeof pad);
    for (uint32_t k = 0; k < MSGS; k++)
        for (int i = 0; i < PEERS; i++) {
            const void *data[2] = {&k, pad};
            size_t len[2] = {sizeof k, k % 50};
            peer_send(d[i], data, len, 2);
        }

    /* Each message is echoed at once, so output to a peer builds up between flushes. */
    uint32_t next[PEERS] = {0};
    for (int got = 0; got < PEERS * MSGS; got++) {
        bt_zmtp_msg_t m;
        assert_int_equal(recv_wait(z, &m, WAIT_MS), BT_OK);
        assert_int_equal(m.id_len, 2);
        int i = m.id[1] - '0';
        assert_true(m.id[0] == 'd' && i >= 0 && i < PEERS);
        assert_int_equal(m.n, 2);
        assert_true(m.len[0] == 4 && !memcmp(m.data[0], &next[i], 4));
        assert_int_equal(m.len[1], next[i] % 50);
        next[i]++;
        struct iovec iov = {.iov_base = (void *)m.data[0], .iov_len = 4};
        assert_int_equal(bt_zmtp_send(z, m.id, m.id_len, &iov, 1), BT_OK);
    }
    for (int i = 0; i < PEERS; i++) {
        for (uint32_t k = 0; k < MSGS; k++) {
            zmsg_t r;
            peer_recv(z, d[i], &r);
            assert_int_equal(r.n, 1);
            assert_true(zframe_is(&r, 0, &k, sizeof k));
            zmsg_close(&r);
        }
        peer_close(d[i]);
    }
    zt_close(z);
}

static void test_zmtp_bind_errors_and_ipc_files(void **state)
{
    char long_path[300] = "ipc://";
    memset(long_path + 6, 'a', 200);
    long_path[206] = 0;
    const char *const bad[] = {"tcp://", "tcp://127.0.0.1", "bogus://x", "tcp://127.0.0.1:99999",
                               "ipc://", long_path};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        bt_zmtp_t *z = NULL;
        int rc = bt_zmtp_bind(bad[i], &g_defaults, &z);
        if (rc != BT_ERR_INVAL)
            fail_msg("%s: %s, want BT_ERR_INVAL", bad[i], bt_status_name(rc));
        assert_null(z);
    }
    bt_zmtp_t *z = bind_tcp(NULL), *z2 = NULL;
    assert_int_equal(bt_zmtp_bind(bt_zmtp_endpoint(z), &g_defaults, &z2), BT_ERR_IO);
    assert_null(z2);
    zt_close(z);
    z = bind_ok("tcp://*:*", NULL);
    const char *ep = bt_zmtp_endpoint(z);
    assert_true(ep[strlen(ep) - 1] != '*');
    char local[64];
    snprintf(local, sizeof local, "tcp://127.0.0.1:%s", strrchr(ep, ':') + 1);
    void *d = peer(ZMQ_DEALER, "any", local);
    wait_peers(z, 1);
    exchange(z, d, "any");
    peer_close(d);
    zt_close(z);

    /* A stale file is replaced, and the socket file is gone after close. */
    char path[300], ipc[310];
    snprintf(path, sizeof path, "%s/stale.sock", g_dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs("stale", f);
    fclose(f);
    snprintf(ipc, sizeof ipc, "ipc://%s", path);
    z = bind_ok(ipc, NULL);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_true(S_ISSOCK(st.st_mode));
    d = peer(ZMQ_DEALER, "ipc", ipc);
    wait_peers(z, 1);
    exchange(z, d, "ipc");
    peer_close(d);
    zt_close(z);
    assert_int_equal(access(path, F_OK), -1);
    assert_int_equal(errno, ENOENT);
}

static void test_zmtp_req_peer(void **state)
{
    bt_zmtp_t *z = bind_tcp(NULL);
    void *q = peer(ZMQ_REQ, "req", bt_zmtp_endpoint(z));
    for (int round = 0; round < 2; round++) {
        assert_int_equal(zmq_send(q, "question", 8, 0), 8);
        bt_zmtp_msg_t m;
        assert_int_equal(recv_wait(z, &m, WAIT_MS), BT_OK);
        check_msg(&m, "req", "", "question", NULL);
        assert_int_equal(zt_send_strs(z, ID("req"), "", "answer", NULL), BT_OK);
        zmsg_t r;
        peer_recv(z, q, &r);
        check_zmsg(&r, "answer", NULL);
    }
    peer_close(q);
    zt_close(z);
}

static void test_zmtp_heartbeats_are_answered(void **state)
{
    bt_zmtp_t *z = bind_tcp(NULL);
    void *d = peer_new(ZMQ_DEALER, "hb");
    int ivl = 30, timeout = 250, never = -1;
    assert_int_equal(zmq_setsockopt(d, ZMQ_HEARTBEAT_IVL, &ivl, sizeof ivl), 0);
    assert_int_equal(zmq_setsockopt(d, ZMQ_HEARTBEAT_TIMEOUT, &timeout, sizeof timeout), 0);
    assert_int_equal(zmq_setsockopt(d, ZMQ_RECONNECT_IVL, &never, sizeof never), 0);
    assert_int_equal(zmq_connect(d, bt_zmtp_endpoint(z)), 0);
    wait_peers(z, 1);
    /* Over twice the timeout: libzmq drops a connection whose PINGs go unanswered. */
    assert_false(peer_wait(z, d, 600));
    assert_int_equal(bt_zmtp_peers(z), 1);
    exchange(z, d, "hb");
    peer_close(d);
    zt_close(z);
}

/* Writes in[from, to) to fd one byte at a time, serving z after each: no byte completes a
 * message but the last when completes says so (into m), and z counts peers from the byte at
 * ready_end on. */
static void write_bytewise(bt_zmtp_t *z, int fd, const uint8_t *in, size_t from, size_t to,
                           size_t ready_end, bool completes, bt_zmtp_msg_t *m)
{
    for (size_t i = from; i < to; i++) {
        raw_write(fd, in + i, 1);
        if (completes && i + 1 == to)
            assert_int_equal(recv_wait(z, m, WAIT_MS), BT_OK);
        else
            assert_int_equal(recv_once(z, m), BT_AGAIN);
        assert_int_equal(bt_zmtp_peers(z), i + 1 >= ready_end);
    }
}

/* A hand-made ZMTP 3.1 peer: everything it sends arrives one byte at a time (every header
 * and body split at every point), and what the socket writes back is checked on the wire. */
static void test_zmtp_wire_format_byte_by_byte(void **state)
{
    static const char ping[] = "\x04PING\x00\x0a"
                               "ctx";
    static uint8_t in[2048], out[1024], big[300];
    fill(big, sizeof big, 3);
    size_t n = handshake(in, "raw"), ready_end = n;
    in[11] = 1; /* ZMTP 3.1, which has PING */
    n += put_frame(in + n, 0x04, ping, sizeof ping - 1);
    size_t ping_end = n;
    n += put_frame(in + n, 0x01, "abc", 3);
    n += put_frame(in + n, 0x01, big, 300);
    n += put_frame(in + n, 0x00, "", 0);
    size_t first = n;
    n += put_frame(in + n, 0x00, "second", 6);
    size_t split = n + 4;
    n += put_frame(in + n, 0x01, "third", 5);
    n += put_frame(in + n, 0x00, big, 256);

    bt_zmtp_t *z = bind_tcp(NULL);
    int fd = raw_connect(bt_zmtp_endpoint(z));
    bt_zmtp_msg_t m;
    write_bytewise(z, fd, in, 0, ready_end, ready_end, false, &m);
    /* The socket's greeting and a READY naming a ROUTER. */
    raw_read(z, fd, out, 66);
    assert_true(out[0] == 0xff && out[9] == 0x7f && out[10] == 3);
    assert_memory_equal(out + 12, "NULL\0", 5);
    assert_int_equal(out[64], 0x04);
    size_t ready_len = out[65];
    raw_read(z, fd, out, ready_len);
    assert_memory_equal(out, "\x05READY", 6);
    assert_non_null(memmem(out, ready_len, "\x0bSocket-Type\x00\x00\x00\x06ROUTER", 22));

    /* The PONG is out once bt_zmtp_recv says BT_AGAIN, with no more serving. */
    write_bytewise(z, fd, in, ready_end, ping_end, 0, false, &m);
    raw_read(NULL, fd, out, 10);
    assert_memory_equal(out, "\x04\x08\x04PONGctx", 10);

    write_bytewise(z, fd, in, ping_end, first, 0, true, &m);
    assert_int_equal(m.id_len, 3);
    assert_memory_equal(m.id, "raw", 3);
    assert_int_equal(m.n_frames, 3);
    assert_true(m.len[0] == 3 && !memcmp(m.data[0], "abc", 3));
    assert_true(m.len[1] == 300 && filled(m.data[1], 300, 3));
    assert_int_equal(m.len[2], 0);

    raw_write(fd, in + first, split - first); /* the second message and part of the third */
    assert_int_equal(recv_wait(z, &m, WAIT_MS), BT_OK);
    check_msg(&m, "raw", "second", NULL);
    assert_int_equal(bt_zmtp_recv(z, &m), BT_AGAIN);
    raw_write(fd, in + split, n - split);
    assert_int_equal(recv_wait(z, &m, WAIT_MS), BT_OK);
    assert_int_equal(m.n_frames, 2);
    assert_true(m.len[0] == 5 && !memcmp(m.data[0], "third", 5));
    assert_true(m.len[1] == 256 && filled(m.data[1], 256, 3));

    struct iovec iov[3] = {{.iov_base = "abc", .iov_len = 3},
                           {.iov_base = big, .iov_len = 300},
                           {.iov_base = "", .iov_len = 0}};
    assert_int_equal(bt_zmtp_send(z, ID("raw"), iov, 3), BT_OK);
    uint8_t want[400];
    size_t wn = put_frame(want, 0x01, "abc", 3);
    wn += put_frame(want + wn, 0x01, big, 300);
    wn += put_frame(want + wn, 0x00, "", 0);
    raw_read(z, fd, out, wn);
    assert_memory_equal(out, want, wn);
    close(fd);
    wait_peers(z, 0);
    zt_close(z);
}

/* Raw peers, so that all their input is there before the first bt_zmtp_recv. */
static void test_zmtp_round_robin_across_peers(void **state)
{
    enum { PEERS = 3, MSGS = 20 };
    bt_zmtp_t *z = bind_tcp(NULL);
    int fd[PEERS];
    uint8_t buf[1024];
    for (int i = 0; i < PEERS; i++) {
        char id[4];
        snprintf(id, sizeof id, "r%d", i);
        fd[i] = raw_connect(bt_zmtp_endpoint(z));
        raw_write(fd[i], buf, handshake(buf, id));
    }
    wait_peers(z, PEERS);
    for (int i = 0; i < PEERS; i++) {
        size_t n = 0;
        for (uint8_t k = 0; k < MSGS; k++)
            n += put_frame(buf + n, 0x00, &k, 1);
        raw_write(fd[i], buf, n);
    }
    int next[PEERS] = {0}, last = -1, run = 0;
    for (int got = 0; got < PEERS * MSGS; got++) {
        bt_zmtp_msg_t m;
        assert_int_equal(recv_wait(z, &m, WAIT_MS), BT_OK);
        int i = m.id[1] - '0';
        assert_true(m.id_len == 2 && i >= 0 && i < PEERS);
        assert_true(m.n == 1 && m.len[0] == 1 && m.data[0][0] == next[i]);
        next[i]++;
        run = i == last ? run + 1 : 1;
        last = i;
        if (run > 2)
            fail_msg("peer %d served %d times in a row while others wait", i, run);
    }
    for (int i = 0; i < PEERS; i++)
        close(fd[i]);
    wait_peers(z, 0);
    zt_close(z);
}

/* With no descriptor left for accept, the socket must neither wake its caller in a loop nor
 * leave the waiting connection behind once descriptors are back: the caller sleeps on the
 * descriptor alone, as a loop with no timers would. */
static void test_zmtp_out_of_descriptors_pauses_accepting(void **state)
{
    bt_zmtp_t *z = bind_tcp(NULL);
    int lowest = open("/dev/null", O_RDONLY);
    assert_true(lowest >= 0);
    close(lowest);
    struct rlimit old, low;
    assert_int_equal(getrlimit(RLIMIT_NOFILE, &old), 0);
    low = (struct rlimit){.rlim_cur = (rlim_t)lowest + 1, .rlim_max = old.rlim_max};
    assert_int_equal(setrlimit(RLIMIT_NOFILE, &low), 0);
    /* Nothing may fail before the limit is restored: the tests after this one need it. */
    int fd = raw_try_connect(bt_zmtp_endpoint(z)); /* takes the one descriptor left */
    bt_zmtp_msg_t m;
    int rc = fd >= 0 ? bt_zmtp_recv(z, &m) : BT_ERR_IO; /* accept fails here */
    struct pollfd p = {.fd = bt_zmtp_fd(z), .events = POLLIN};
    int woken = rc == BT_AGAIN ? poll(&p, 1, 50) : -1; /* 0: quiet while paused */
    assert_int_equal(setrlimit(RLIMIT_NOFILE, &old), 0);
    assert_true(fd >= 0);
    assert_int_equal(rc, BT_AGAIN);
    assert_int_equal(woken, 0);

    uint8_t buf[128];
    raw_write(fd, buf, handshake(buf, "late"));
    double t0 = bt_mono_ms();
    wait_peers(z, 1);
    double waited = bt_mono_ms() - t0;
    if (waited > 1000) /* the pause is 100 ms */
        fail_msg("the connection got in after %.0f ms: no wake-up when the pause ended", waited);
    close(fd);
    wait_peers(z, 0);
    zt_close(z);
}

static void test_zmtp_peer_gone(void **state)
{
    bt_zmtp_t *z = bind_tcp(NULL);
    void *d = peer(ZMQ_DEALER, "gone", bt_zmtp_endpoint(z));
    int linger = 1000;
    assert_int_equal(zmq_setsockopt(d, ZMQ_LINGER, &linger, sizeof linger), 0);
    wait_peers(z, 1);
    exchange(z, d, "gone");
    peer_send_strs(d, "last", "words", NULL);
    peer_close(d);
    bt_zmtp_msg_t m;
    assert_int_equal(recv_wait(z, &m, WAIT_MS), BT_OK);
    check_msg(&m, "gone", "last", "words", NULL);
    wait_peers(z, 0);
    assert_int_equal(zt_send_strs(z, ID("gone"), "x", NULL), BT_ERR_NOT_FOUND);

    /* A peer that closed (FIN seen, not yet read) while output is written to it: the kernel
     * answers the first write with a reset and the next with EPIPE, which must be an error on
     * that connection, not a SIGPIPE for the process. */
    int fd = raw_connect(bt_zmtp_endpoint(z));
    uint8_t hello[128];
    raw_write(fd, hello, handshake(hello, "gone2"));
    wait_peers(z, 1);
    raw_read(z, fd, hello, 66); /* read all, so that close sends FIN and not a reset */
    raw_read(z, fd, hello, hello[65]);
    raw_write(fd, B("\x00\x03"
                    "bye"));
    close(fd);
    assert_int_equal(recv_wait(z, &m, WAIT_MS), BT_OK);
    struct pollfd p = {.fd = bt_zmtp_fd(z), .events = POLLIN};
    assert_int_equal(poll(&p, 1, WAIT_MS), 1);
    static uint8_t buf[256 << 10]; /* past the size that is written at once */
    struct iovec iov = {.iov_base = buf, .iov_len = sizeof buf};
    int rc, sends = 0;
    while ((rc = bt_zmtp_send(z, ID("gone2"), &iov, 1)) != BT_ERR_NOT_FOUND && ++sends < 100)
        assert_true(rc == BT_OK || rc == BT_AGAIN);
    check_msg(&m, "gone2", "bye", NULL); /* still valid: no bt_zmtp_recv since */
    wait_peers(z, 0);
    assert_int_equal(bt_zmtp_send(z, ID("gone2"), &iov, 1), BT_ERR_NOT_FOUND);
    zt_close(z);
}

static void test_zmtp_ipv6_loopback(void **state)
{
    bt_zmtp_t *z = NULL;
    int rc = bt_zmtp_bind("tcp://[::1]:*", &g_defaults, &z);
    if (rc != BT_OK) {
        fprintf(stderr, "SKIP: no IPv6 loopback here (%s)\n", bt_status_name(rc));
        skip();
    }
    zt_track(z);
    const char *ep = bt_zmtp_endpoint(z);
    assert_true(strncmp(ep, "tcp://[::1]:", 12) == 0 && ep[strlen(ep) - 1] != '*');
    void *d = peer_new(ZMQ_DEALER, "v6");
    int one = 1;
    assert_int_equal(zmq_setsockopt(d, ZMQ_IPV6, &one, sizeof one), 0);
    assert_int_equal(zmq_connect(d, ep), 0);
    wait_peers(z, 1);
    exchange(z, d, "v6");
    peer_close(d);
    zt_close(z);
}

static bt_zmtp_t *new_ok(void)
{
    bt_zmtp_t *z = NULL;
    assert_int_equal(bt_zmtp_new(&g_defaults, &z), BT_OK);
    zt_track(z);
    assert_string_equal(bt_zmtp_endpoint(z), "");
    return z;
}

/* Serves both sockets until a receives a message (b must receive none meanwhile). */
static void recv_pair(bt_zmtp_t *a, bt_zmtp_t *b, bt_zmtp_msg_t *m)
{
    double end = bt_mono_ms() + WAIT_MS;
    for (;;) {
        bt_zmtp_msg_t other;
        assert_int_equal(bt_zmtp_recv(b, &other), BT_AGAIN);
        int rc = bt_zmtp_recv(a, m);
        if (rc == BT_OK)
            return;
        assert_int_equal(rc, BT_AGAIN);
        int left = left_ms(end);
        if (left == 0)
            fail_msg("nothing arrived in %d ms", WAIT_MS);
        struct pollfd p[2] = {{.fd = bt_zmtp_fd(a), .events = POLLIN},
                              {.fd = bt_zmtp_fd(b), .events = POLLIN}};
        poll(p, 2, left);
    }
}

/* Serves z until no peer holds name any more (its connection failed or closed). */
static void wait_gone(bt_zmtp_t *z, const char *name)
{
    double end = bt_mono_ms() + WAIT_MS;
    while (zt_send_strs(z, ID(name), "x", NULL) != BT_ERR_NOT_FOUND) {
        bt_zmtp_msg_t m;
        assert_int_equal(bt_zmtp_recv(z, &m), BT_AGAIN);
        int left = left_ms(end);
        if (left == 0)
            fail_msg("%s still connected after %d ms", name, WAIT_MS);
        struct pollfd p = {.fd = bt_zmtp_fd(z), .events = POLLIN};
        poll(&p, 1, left < 20 ? left : 20);
    }
}

/* Connecting to libzmq sockets bound on ipc:// and tcp://: a ROUTER sees the identity
 * announced (or one it generates when none is), a DEALER sees bare messages; the messages
 * queued before the handshake arrive first, and replies come back under the caller's name. */
static void test_zmtp_connect_to_libzmq(void **state)
{
    char ipc[300];
    snprintf(ipc, sizeof ipc, "ipc://%s/up.sock", g_dir);
    const char *eps[2] = {ipc, "tcp://127.0.0.1:*"};
    for (int e = 0; e < 2; e++) {
        void *r = peer_new(ZMQ_ROUTER, NULL), *d = peer_new(ZMQ_DEALER, NULL);
        char ep_r[300], ep_d[300];
        size_t sz = sizeof ep_r;
        assert_int_equal(zmq_bind(r, eps[e]), 0);
        assert_int_equal(zmq_getsockopt(r, ZMQ_LAST_ENDPOINT, ep_r, &sz), 0);
        if (e == 0)
            snprintf(ipc, sizeof ipc, "ipc://%s/up2.sock", g_dir);
        sz = sizeof ep_d;
        assert_int_equal(zmq_bind(d, eps[e]), 0);
        assert_int_equal(zmq_getsockopt(d, ZMQ_LAST_ENDPOINT, ep_d, &sz), 0);

        bt_zmtp_t *z = new_ok();
        assert_int_equal(bt_zmtp_connect(z, ep_r, ID("me"), ID("router")), BT_OK);
        assert_int_equal(bt_zmtp_connect(z, ep_r, NULL, 0, ID("anon")), BT_OK);
        assert_int_equal(bt_zmtp_connect(z, ep_d, ID("me"), ID("dealer")), BT_OK);
        assert_int_equal(bt_zmtp_connect(z, ep_d, NULL, 0, ID("dealer")), BT_ERR_INVAL);
        assert_int_equal(zt_send_strs(z, ID("router"), "early", "bird", NULL), BT_OK);
        assert_int_equal(zt_send_strs(z, ID("dealer"), "early", NULL), BT_OK);
        wait_peers(z, 3);
        assert_int_equal(zt_send_strs(z, ID("router"), "later", NULL), BT_OK);
        assert_int_equal(zt_send_strs(z, ID("anon"), "who", NULL), BT_OK);

        /* The ROUTER takes its two connections' messages in turn: per connection in order. */
        zmsg_t m;
        int from_me = 0;
        for (int i = 0; i < 3; i++) {
            peer_recv(z, r, &m);
            if (zframe_is(&m, 0, "me", 2) && from_me++ == 0) {
                check_zmsg(&m, "me", "early", "bird", NULL);
            } else if (zframe_is(&m, 0, "me", 2)) {
                check_zmsg(&m, "me", "later", NULL);
            } else {
                assert_int_equal(m.n, 2);
                assert_int_equal(zmq_msg_size(&m.f[0]), 5); /* generated: a zero byte, 4 more */
                assert_int_equal(((uint8_t *)zmq_msg_data(&m.f[0]))[0], 0);
                assert_true(zframe_is(&m, 1, "who", 3));
                zmsg_close(&m);
            }
        }
        assert_int_equal(from_me, 2);
        peer_recv(z, d, &m);
        check_zmsg(&m, "early", NULL);

        peer_send_strs(r, "me", "back", NULL);
        bt_zmtp_msg_t got;
        assert_int_equal(recv_wait(z, &got, WAIT_MS), BT_OK);
        check_msg(&got, "router", "back", NULL);
        peer_send_strs(d, "from", "dealer", NULL);
        assert_int_equal(recv_wait(z, &got, WAIT_MS), BT_OK);
        check_msg(&got, "dealer", "from", "dealer", NULL);

        /* The peer goes: the name is released, and can be connected again. */
        peer_close(d);
        wait_gone(z, "dealer");
        assert_int_equal(bt_zmtp_peers(z), 2);
        d = peer_new(ZMQ_DEALER, NULL);
        assert_int_equal(zmq_bind(d, ep_d), 0);
        assert_int_equal(bt_zmtp_connect(z, ep_d, NULL, 0, ID("dealer")), BT_OK);
        assert_int_equal(zt_send_strs(z, ID("dealer"), "again", NULL), BT_OK);
        peer_recv(z, d, &m);
        check_zmsg(&m, "again", NULL);
        zt_close(z);
        peer_close(d);
        peer_close(r);
    }
    for (int i = 0; i < 2; i++) { /* what libzmq's listeners may leave behind */
        snprintf(ipc, sizeof ipc, "%s/up%s.sock", g_dir, i ? "2" : "");
        unlink(ipc);
    }
}

/* One of these sockets connecting to another: identities both ways, before and after the
 * handshake, over ipc:// and tcp://. */
static void test_zmtp_connect_to_zmtp(void **state)
{
    char ipc[300];
    snprintf(ipc, sizeof ipc, "ipc://%s/zz.sock", g_dir);
    const char *eps[2] = {ipc, "tcp://127.0.0.1:*"};
    for (int e = 0; e < 2; e++) {
        bt_zmtp_t *srv = bind_ok(eps[e], NULL), *cli = new_ok();
        assert_int_equal(bt_zmtp_connect(cli, bt_zmtp_endpoint(srv), ID("down"), ID("up")), BT_OK);
        assert_int_equal(zt_send_strs(cli, ID("up"), "a", "bc", NULL), BT_OK);
        bt_zmtp_msg_t m;
        recv_pair(srv, cli, &m);
        check_msg(&m, "down", "a", "bc", NULL);
        assert_int_equal(bt_zmtp_peers(srv), 1);
        assert_int_equal(zt_send_strs(srv, ID("down"), "reply", NULL), BT_OK);
        recv_pair(cli, srv, &m);
        check_msg(&m, "up", "reply", NULL);
        assert_int_equal(bt_zmtp_peers(cli), 1);
        static uint8_t big[300 << 10];
        fill(big, sizeof big, 7);
        struct iovec iov = {.iov_base = big, .iov_len = sizeof big};
        assert_int_equal(bt_zmtp_send(cli, ID("up"), &iov, 1), BT_OK);
        recv_pair(srv, cli, &m);
        assert_int_equal(m.n, 1);
        assert_int_equal(m.len[0], sizeof big);
        assert_true(filled(m.data[0], m.len[0], 7));

        /* The server goes: the client's name for it is released. */
        zt_close(srv);
        wait_gone(cli, "up");
        assert_int_equal(bt_zmtp_peers(cli), 0);
        zt_close(cli);
    }
}

static uint64_t real_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Sends "x" from one socket to the other and waits 30 ms before reading it: the message's
 * stamp, with [*t0, *t1] the times before the send and before the read. */
static uint64_t stamp_of_a_wait(bt_zmtp_t *from, bt_zmtp_t *to, int way, uint64_t *t0, uint64_t *t1)
{
    const char *name = way ? "down" : "up"; /* from's name for the other */
    *t0 = real_ns();
    assert_int_equal(zt_send_strs(from, ID(name), "x", NULL), BT_OK);
    bt_zmtp_flush(from);
    usleep(30000);
    *t1 = real_ns();
    bt_zmtp_msg_t m;
    recv_pair(to, from, &m);
    check_msg(&m, way ? "up" : "down", "x", NULL);
    return m.rx_ns;
}

/* With rx_stamps, a message over tcp carries when it reached the socket (taken by the kernel
 * as the peer sent it), not when it was read: both ways, on an accepted connection and on one
 * the socket made. Without them, or over ipc, it carries 0. */
static void test_zmtp_receive_stamps(void **state)
{
    const bt_zmtp_params_t stamped = {.rx_stamps = 1};
    char ipc[300];
    snprintf(ipc, sizeof ipc, "ipc://%s/st.sock", g_dir);
    const char *eps[3] = {"tcp://127.0.0.1:*", "tcp://127.0.0.1:*", ipc};
    for (int e = 0; e < 3; e++) {
        const bt_zmtp_params_t *p = e == 1 ? &g_defaults : &stamped;
        bt_zmtp_t *srv = bind_ok(eps[e], p), *cli = NULL;
        assert_int_equal(bt_zmtp_new(p, &cli), BT_OK);
        zt_track(cli);
        assert_int_equal(bt_zmtp_connect(cli, bt_zmtp_endpoint(srv), ID("down"), ID("up")), BT_OK);
        assert_int_equal(zt_send_strs(cli, ID("up"), "hello", NULL), BT_OK);
        bt_zmtp_msg_t m;
        recv_pair(srv, cli, &m); /* both handshakes are done */
        uint64_t t0, t1;
        /* The kernel turns stamping on a moment after a socket first asks for it. */
        for (int tries = 0; e == 0 && tries < 100 && !stamp_of_a_wait(cli, srv, 0, &t0, &t1);)
            tries++;
        for (int way = 0; way < 2; way++) {
            uint64_t rx = stamp_of_a_wait(way ? srv : cli, way ? cli : srv, way, &t0, &t1);
            if (e == 0) {
                assert_true(rx >= t0);
                assert_true(rx + 20000000ull <= t1);
            } else {
                assert_int_equal(rx, 0);
            }
        }
        zt_close(cli);
        zt_close(srv);
    }
}

static void test_zmtp_connect_errors(void **state)
{
    bt_zmtp_t *z = new_ok();
    char ep[300];
    snprintf(ep, sizeof ep, "ipc://%s/nobody.sock", g_dir);
    assert_int_equal(bt_zmtp_connect(z, ep, NULL, 0, ID("x")), BT_ERR_IO);
    assert_int_equal(bt_zmtp_connect(z, "tcp://127.0.0.1:*", NULL, 0, ID("x")), BT_ERR_INVAL);
    assert_int_equal(bt_zmtp_connect(z, "tcp://*:5555", NULL, 0, ID("x")), BT_ERR_INVAL);
    assert_int_equal(bt_zmtp_connect(z, "udp://127.0.0.1:5555", NULL, 0, ID("x")), BT_ERR_INVAL);
    assert_int_equal(bt_zmtp_connect(z, "ipc://x", NULL, 0, NULL, 0), BT_ERR_INVAL);
    assert_int_equal(zt_send_strs(z, ID("x"), "y", NULL), BT_ERR_NOT_FOUND);

    /* A tcp port nobody listens on: the connect fails later, inside recv, and the name goes. */
    bt_zmtp_t *closed = bind_tcp(NULL);
    snprintf(ep, sizeof ep, "%s", bt_zmtp_endpoint(closed));
    zt_close(closed);
    assert_int_equal(bt_zmtp_connect(z, ep, NULL, 0, ID("x")), BT_OK);
    assert_int_equal(zt_send_strs(z, ID("x"), "queued", NULL), BT_OK);
    wait_gone(z, "x");
    assert_int_equal(bt_zmtp_peers(z), 0);

    /* Something that is not ZMTP answering: the handshake fails and the name goes. */
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t sl = sizeof sa;
    assert_int_equal(bind(lfd, (struct sockaddr *)&sa, sl), 0);
    assert_int_equal(listen(lfd, 4), 0);
    assert_int_equal(getsockname(lfd, (struct sockaddr *)&sa, &sl), 0);
    snprintf(ep, sizeof ep, "tcp://127.0.0.1:%d", ntohs(sa.sin_port));
    assert_int_equal(bt_zmtp_connect(z, ep, NULL, 0, ID("http")), BT_OK);
    bt_zmtp_msg_t m;
    assert_int_equal(bt_zmtp_recv(z, &m), BT_AGAIN);
    int fd = accept(lfd, NULL, NULL);
    assert_true(fd >= 0);
    const char *junk = "HTTP/1.1 400 Bad Request\r\n\r\n................................"
                       "................................";
    assert_true(write(fd, junk, strlen(junk)) > 0);
    uint64_t refused = bt_zmtp_refused(z);
    wait_gone(z, "http");
    assert_int_equal(bt_zmtp_refused(z), refused + 1);
    close(fd);
    close(lfd);
    zt_close(z);
}

static int setup(void **state)
{
    const char *tmp = getenv("TMPDIR");
    snprintf(g_dir, sizeof g_dir, "%s/bt-zmtp-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(g_dir))
        return -1;
    g_ctx = zmq_ctx_new();
    return g_ctx ? 0 : -1;
}

static int teardown(void **state)
{
    zmq_ctx_term(g_ctx);
    return rmdir(g_dir);
}

#define T(f) cmocka_unit_test_teardown(f, close_leftovers)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_zmtp_round_trip_ipc_tcp_abstract),
        T(test_zmtp_generated_identities),
        T(test_zmtp_frame_sizes_both_ways),
        T(test_zmtp_many_frames_are_counted),
        T(test_zmtp_oversized_frames),
        T(test_zmtp_unknown_identity),
        T(test_zmtp_identity_handover),
        T(test_zmtp_peer_gone),
        T(test_zmtp_backpressure),
        T(test_zmtp_garbage_closes_the_connection),
        T(test_zmtp_mutated_streams),
        T(test_zmtp_order_per_peer_interleaved),
        T(test_zmtp_round_robin_across_peers),
        T(test_zmtp_out_of_descriptors_pauses_accepting),
        T(test_zmtp_bind_errors_and_ipc_files),
        T(test_zmtp_req_peer),
        T(test_zmtp_heartbeats_are_answered),
        T(test_zmtp_wire_format_byte_by_byte),
        T(test_zmtp_ipv6_loopback),
        T(test_zmtp_connect_to_libzmq),
        T(test_zmtp_connect_to_zmtp),
        T(test_zmtp_connect_errors),
        T(test_zmtp_receive_stamps),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
