/* SPDX-License-Identifier: MIT */
/*
 * fuzz_zmtp.c - bytes that peers send to the router's client socket.
 *
 * A ZMTP socket (common/zmtp.c) listens on an abstract unix endpoint, as the router's does;
 * up to three raw connections write the input to it in pieces, interleaved and hung up as the
 * input says. Every message that comes out goes where the router sends it: bt_rpc_zrecv's
 * checks of frames and header, the body unpacked as its method's message, a GenerateRequest
 * through the router's admission checks, and an error reply sent back to the peer. Input:
 * records [op][len][len bytes]; op & 3 picks the connection (3 is taken as 0), op & 0x80 hangs
 * it up instead (no len follows). At the end every connection hangs up.
 *
 * Properties: whatever the bytes, the socket ends with no peer left (a peer that hung up
 * leaves nothing behind), every message it delivers has an identity and at most
 * BT_ZMTP_MAX_FRAMES frames kept, and sanitizers see nothing.
 */
#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "common/rpc.h"
#include "common/status.h"
#include "fuzz.h"
#include "router/limits.h"

#define N_CONN 3

static bt_zmtp_t *g_z;
static struct sockaddr_un g_addr;
static socklen_t g_addr_len;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_quiet_log();
    char ep[96];
    snprintf(ep, sizeof ep, "ipc://@baton-fuzz-zmtp-%d", (int)getpid());
    /* Small frames, so that the size limits are within the fuzzer's reach. */
    bt_zmtp_params_t params = {.max_frame = 4096, .max_queued = 1u << 20};
    if (bt_zmtp_bind(ep, &params, &g_z) != BT_OK) {
        fprintf(stderr, "cannot bind %s\n", ep);
        exit(1);
    }
    memset(&g_addr, 0, sizeof g_addr);
    g_addr.sun_family = AF_UNIX;
    const char *name = ep + strlen("ipc://@");
    memcpy(g_addr.sun_path + 1, name, strlen(name));
    g_addr_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + strlen(name));
    return 0;
}

/* What the router does with one message from a client (router.c: on_client). */
static void handle(bt_rpc_msg_t *m, int st)
{
    static const router_limits_t lim = {.max_prompt_tokens = 64,
                                        .max_tokens = 64,
                                        .default_max_tokens = 16,
                                        .n_vocab = 512,
                                        .slo_ttft_ms = 1000,
                                        .slo_tpot_ms = 100};
    FUZZ_CHECK(m->route.n == 1 && m->route.len[0] > 0, "a message without its peer's identity");
    if (st != BT_OK) {
        bt_rpc_zreply_error(g_z, m, st, "malformed message");
        return;
    }
    ProtobufCMessage *body = NULL;
    if (bt_rpc_unpack(m, &body) != BT_OK) {
        bt_rpc_zreply_error(g_z, m, BT_ERR_FORMAT, "malformed body");
        return;
    }
    char err[256] = "";
    int reply = BT_ERR_UNSUPPORTED;
    if (m->hdr.method == BATON__METHOD__GENERATE &&
        (reply = fuzz_admit(&lim, (const Baton__GenerateRequest *)body, err, sizeof err)) == BT_OK)
        reply = BT_ERR_UNAVAILABLE; /* admitted; no instance to place it on here */
    if (body)
        protobuf_c_message_free_unpacked(body, NULL);
    bt_rpc_zreply_error(g_z, m, reply, "%s", err[0] ? err : "no instance");
}

/* Serves whatever the socket has, as the router's loop does, and empties the peers' side. */
static void pump(const int *fds)
{
    for (int idle = 0; idle < 2;) {
        bt_rpc_msg_t m;
        int st = bt_rpc_zrecv(g_z, &m);
        if (st == BT_AGAIN) {
            idle++;
        } else {
            idle = 0;
            handle(&m, st);
        }
        bt_rpc_msg_fini(&m);
    }
    bt_zmtp_flush(g_z);
    for (int i = 0; i < N_CONN; i++) {
        char sink[4096];
        while (fds[i] >= 0 && read(fds[i], sink, sizeof sink) > 0) {
        }
    }
}

static int dial(void)
{
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    FUZZ_CHECK(fd >= 0, "socket: %s", strerror(errno));
    FUZZ_CHECK(connect(fd, (struct sockaddr *)&g_addr, g_addr_len) == 0, "connect: %s",
               strerror(errno));
    return fd;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int fds[N_CONN] = {-1, -1, -1};
    fuzz_in_t in = {data, size};
    while (in.n) {
        uint8_t op = fuzz_u8(&in);
        int k = (op & 3) % N_CONN;
        if (op & 0x80) {
            if (fds[k] >= 0)
                close(fds[k]);
            fds[k] = -1;
        } else {
            size_t len = fuzz_u8(&in);
            len = len < in.n ? len : in.n;
            if (fds[k] < 0)
                fds[k] = dial();
            /* Unix stream sockets take this much at once; the socket reads it all. */
            ssize_t w = send(fds[k], in.p, len, MSG_NOSIGNAL);
            FUZZ_CHECK(w == (ssize_t)len ||
                           (w < 0 && (errno == EPIPE || errno == EAGAIN || errno == ECONNRESET)),
                       "send: %zd of %zu (%s)", w, len, strerror(errno));
            in.p += len;
            in.n -= len;
        }
        pump(fds);
    }
    for (int i = 0; i < N_CONN; i++)
        if (fds[i] >= 0)
            close(fds[i]);
    int none[N_CONN] = {-1, -1, -1};
    for (int round = 0; round < 100 && bt_zmtp_peers(g_z) > 0; round++)
        pump(none);
    FUZZ_CHECK(bt_zmtp_peers(g_z) == 0, "%d peers left after every peer hung up",
               bt_zmtp_peers(g_z));
    return 0;
}
