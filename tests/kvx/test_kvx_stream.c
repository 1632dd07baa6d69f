/* SPDX-License-Identifier: MIT */
/*
 * test_kvx_stream.c - kvx's TCP data connection on its own, two listeners in this process over
 * real loopback sockets: pairing by key, a wrong key refused, a garbage hello cut off, the next
 * address tried after one that leads nowhere, gathered sends and scattered receives of more pieces
 * than one system call takes (with the whole message already waiting in the socket, so that one
 * read could run past a piece list), back-to-back messages, drops bigger than the drop buffer
 * followed by an exact message, and the peer closing in the middle of a message.
 */
#include "testutil.h"

#include "kvx_testlib.h"

#include <stdlib.h>
#include <arpa/inet.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "kvx/kvx_stream.h"

#define PIECES 600
#define PIECE 1000

typedef struct {
    kvx_streams_t *ss;
    int epfd;
    kvx_stream_t *s;
    /* where a message of tag t (< 8) is received: iov[t], n[t] pieces (0: dropped) */
    const kvx_iov_t *iov[8];
    int n[8];
    kvx_op_t rx_op;
    /* what happened */
    int n_data;
    uint64_t tag;
    size_t len;
    kvx_op_t *ended[8];
    int status[8];
    int n_ended;
    int n_failed;
} side_t;

static void on_data(void *arg, kvx_stream_t *s, uint64_t tag, size_t len)
{
    side_t *d = arg;
    d->n_data++;
    d->tag = tag;
    d->len = len;
    int n = tag < 8 ? d->n[tag] : 0;
    /* Drops get an op too, as kvx's core passes one. */
    int st = kvx_stream_recv(s, n ? d->iov[tag] : NULL, n, &d->rx_op);
    if (st == BT_OK && d->n_ended < 8) { /* nothing to read: ended already */
        d->ended[d->n_ended] = &d->rx_op;
        d->status[d->n_ended++] = BT_OK;
    }
}

static void op_end(void *arg, kvx_op_t *op, int status)
{
    side_t *d = arg;
    if (d->n_ended < 8) {
        d->ended[d->n_ended] = op;
        d->status[d->n_ended++] = status;
    }
}

static void failed(void *arg, void *user, int status)
{
    ((side_t *)arg)->n_failed++;
}

static void side_init(side_t *d)
{
    memset(d, 0, sizeof *d);
    d->epfd = epoll_create1(0);
    assert_true(d->epfd >= 0);
    kvx_stream_cbs_t cbs = {.arg = d, .on_data = on_data, .op_end = op_end, .failed = failed};
    assert_int_equal(kvx_streams_create(&cbs, d->epfd, &d->ss), BT_OK);
}

static void side_fini(side_t *d)
{
    kvx_streams_destroy(d->ss);
    close(d->epfd);
}

static kvx_stream_addr_t side_addr(const side_t *d)
{
    kvx_buf_t b;
    kvx_buf_init(&b);
    kvx_streams_address(d->ss, &b);
    kvx_rd_t rd;
    kvx_rd_init(&rd, b.data, b.len);
    kvx_stream_addr_t a;
    assert_int_equal(kvx_stream_addr_read(&rd, &a), BT_OK);
    kvx_buf_fini(&b);
    return a;
}

static void progress_both(side_t *a, side_t *b, int ms)
{
    int64_t until = tl_now_ms() + ms;
    while (tl_now_ms() < until) {
        kvx_streams_progress(a->ss);
        kvx_streams_progress(b->ss);
        usleep(200);
    }
}

/* a connects to b at the addresses ba (loopback first if same_host), b expects a: both end up
 * paired within ms. */
static void open_paired(side_t *a, side_t *b, const kvx_stream_addr_t *ba, int same_host, int ms)
{
    kvx_stream_addr_t aa = side_addr(a);
    a->s = kvx_stream_open(a->ss, ba, same_host, a);
    b->s = kvx_stream_expect(b->ss, aa.key, b);
    assert_non_null(a->s);
    assert_non_null(b->s);
    int64_t until = tl_now_ms() + ms;
    while (!(kvx_stream_ready(a->s) && kvx_stream_ready(b->s)) && tl_now_ms() < until)
        progress_both(a, b, 1);
    assert_true(kvx_stream_ready(a->s));
    assert_true(kvx_stream_ready(b->s));
}

static void pair_up(side_t *a, side_t *b)
{
    side_init(a);
    side_init(b);
    kvx_stream_addr_t ba = side_addr(b);
    open_paired(a, b, &ba, 1, 5000);
}

static void pair_down(side_t *a, side_t *b)
{
    kvx_stream_close(a->s);
    kvx_stream_close(b->s);
    side_fini(a);
    side_fini(b);
}

/* Sends one message from a (pieces iov) and waits until all of it is in the kernel. */
static void send_all(side_t *a, uint64_t tag, const kvx_iov_t *iov, int n, size_t len)
{
    static kvx_op_t op;
    int base = a->n_ended;
    int st = kvx_stream_send(a->s, tag, iov, n, len, &op);
    if (st == BT_AGAIN) {
        int64_t until = tl_now_ms() + 5000;
        while (a->n_ended == base && tl_now_ms() < until)
            kvx_streams_progress(a->ss);
        assert_int_equal(a->n_ended, base + 1);
        assert_ptr_equal(a->ended[base], &op);
        st = a->status[base];
    }
    assert_int_equal(st, BT_OK);
}

/* Progresses b until it has ended want operations. */
static void recv_until(side_t *b, int want)
{
    int64_t until = tl_now_ms() + 5000;
    while (b->n_ended < want && tl_now_ms() < until)
        kvx_streams_progress(b->ss);
    assert_int_equal(b->n_ended, want);
}

static void fill(uint8_t *p, size_t n, uint32_t seed)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (uint8_t)((i * 2654435761u + seed) >> 13);
}

static void test_pairs_by_key_and_refuses_a_wrong_one(void **state)
{
    side_t a, b;
    pair_up(&a, &b);
    pair_down(&a, &b);
    /* An initiator that names a key the listener does not have is refused. */
    side_init(&a);
    side_init(&b);
    kvx_stream_addr_t ba = side_addr(&b), aa = side_addr(&a);
    ba.key ^= 0x100;
    a.s = kvx_stream_open(a.ss, &ba, 1, &a);
    b.s = kvx_stream_expect(b.ss, aa.key, &b);
    progress_both(&a, &b, 300);
    assert_false(kvx_stream_ready(a.s));
    assert_false(kvx_stream_ready(b.s));
    assert_int_equal(kvx_stream_send(a.s, 1, &(kvx_iov_t){.base = &ba, .len = 1}, 1, 1, NULL),
                     BT_ERR_PEER);
    pair_down(&a, &b);
}

/* Whatever connects to the listener and does not say the right hello is cut off, and the
 * listener goes on pairing. */
static void test_garbage_hello_cut_off(void **state)
{
    side_t a, b;
    side_init(&a);
    side_init(&b);
    kvx_stream_addr_t ba = side_addr(&b);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(ba.port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    char junk[24];
    memset(junk, 'x', sizeof junk);
    assert_int_equal(write(fd, junk, sizeof junk), (ssize_t)sizeof junk);
    int64_t until = tl_now_ms() + 3000;
    ssize_t n = 1;
    while (n != 0 && tl_now_ms() < until) {
        kvx_streams_progress(b.ss);
        char c;
        n = recv(fd, &c, 1, MSG_DONTWAIT);
    }
    assert_int_equal(n, 0); /* closed by the listener */
    close(fd);
    open_paired(&a, &b, &ba, 1, 5000);
    pair_down(&a, &b);
}

/* A peer elsewhere: its first address leads nowhere (TEST-NET-1, RFC 5737: no answer, or no
 * route), the next one reaches it; the initiator moves on and pairs. */
static void test_next_address_after_a_dead_one(void **state)
{
    side_t a, b;
    side_init(&a);
    side_init(&b);
    kvx_stream_addr_t ba = side_addr(&b);
    ba.n = 2;
    ba.addr[0].family = 4;
    memcpy(ba.addr[0].bytes, (uint8_t[]){192, 0, 2, 1}, 4);
    ba.addr[1].family = 4;
    memcpy(ba.addr[1].bytes, (uint8_t[]){127, 0, 0, 1}, 4);
    open_paired(&a, &b, &ba, 0, 8000); /* 3 s per address at most */
    pair_down(&a, &b);
}

/* 600 pieces each way, the whole message waiting in the socket before the receiver reads. */
static void test_scattered_gathered_message_exact(void **state)
{
    side_t a, b;
    pair_up(&a, &b);
    size_t len = (size_t)PIECES * PIECE;
    uint8_t *src = malloc(2 * len), *dst = calloc(1, 2 * len), *want = calloc(1, 2 * len);
    kvx_iov_t *siov = malloc(PIECES * sizeof *siov), *diov = malloc(PIECES * sizeof *diov);
    fill(src, 2 * len, 7);
    for (int i = 0; i < PIECES; i++) {
        siov[i] = (kvx_iov_t){.base = src + (size_t)(PIECES - 1 - i) * 2 * PIECE, .len = PIECE};
        diov[i] = (kvx_iov_t){.base = dst + (size_t)i * 2 * PIECE + 3, .len = PIECE};
        memcpy(want + (size_t)i * 2 * PIECE + 3, siov[i].base, PIECE);
    }
    b.iov[1] = diov;
    b.n[1] = PIECES;
    send_all(&a, 1, siov, PIECES, len);
    usleep(20000);
    recv_until(&b, 1);
    assert_int_equal(b.n_data, 1);
    assert_int_equal(b.tag, 1);
    assert_int_equal(b.len, len);
    assert_ptr_equal(b.ended[0], &b.rx_op);
    assert_int_equal(b.status[0], BT_OK);
    assert_memory_equal(dst, want, 2 * len);
    free(src);
    free(dst);
    free(want);
    free(siov);
    free(diov);
    pair_down(&a, &b);
}

/* Two messages back to back (the second's header is read with the first's body), a drop of
 * 200 KiB (more than the drop buffer), an empty message dropped and one received, then a
 * message that must land exact; every receive ends exactly once. */
static void test_back_to_back_drops_and_empty(void **state)
{
    side_t a, b;
    pair_up(&a, &b);
    size_t big = 200 << 10;
    uint8_t *src = malloc(big), *dst = calloc(1, big);
    fill(src, big, 11);
    uint8_t *dst1 = calloc(1, 4096);
    kvx_iov_t one = {.base = src, .len = 4096}, whole = {.base = src, .len = big};
    kvx_iov_t none = {.base = src, .len = 0};
    kvx_iov_t d1 = {.base = dst1, .len = 4096};
    kvx_iov_t d4[2] = {{.base = dst + 100, .len = big - 100}, {.base = dst, .len = 100}};
    b.iov[1] = &d1;
    b.n[1] = 1;
    b.iov[4] = d4; /* tags 2 and 3 are dropped */
    b.n[4] = 2;
    b.iov[7] = &none;
    b.n[7] = 1;
    send_all(&a, 1, &one, 1, 4096);
    send_all(&a, 2, &whole, 1, big);
    send_all(&a, 3, &none, 1, 0);
    send_all(&a, 7, &none, 1, 0);
    send_all(&a, 4, &whole, 1, big);
    usleep(20000);
    recv_until(&b, 5);
    for (int i = 0; i < 100; i++) /* anything that would end twice has time to */
        kvx_streams_progress(b.ss);
    assert_int_equal(b.n_ended, 5);
    for (int i = 0; i < 5; i++)
        assert_int_equal(b.status[i], BT_OK);
    assert_int_equal(b.n_data, 5);
    assert_int_equal(b.tag, 4);
    assert_memory_equal(dst1, src, 4096);
    assert_memory_equal(dst + 100, src, big - 100);
    assert_memory_equal(dst, src + big - 100, 100);
    free(dst1);
    assert_int_equal(b.n_failed, 0);
    free(src);
    free(dst);
    pair_down(&a, &b);
}

/* A receive whose pieces do not add up to the message is refused, and the message dropped. */
static void test_wrong_size_receive_refused(void **state)
{
    side_t a, b;
    pair_up(&a, &b);
    uint8_t src[64] = {1}, dst[64];
    kvx_iov_t one = {.base = src, .len = 64}, d = {.base = dst, .len = 32};
    b.iov[5] = &d;
    b.n[5] = 1;
    send_all(&a, 5, &one, 1, 64);
    send_all(&a, 6, &one, 1, 64);
    /* on_data's receive returns BT_ERR_FORMAT: nothing ends, the bytes are dropped. */
    int64_t until = tl_now_ms() + 5000;
    while (b.n_data < 2 && tl_now_ms() < until)
        kvx_streams_progress(b.ss);
    assert_int_equal(b.n_data, 2);
    assert_int_equal(b.tag, 6); /* the stream stayed in step */
    recv_until(&b, 1);          /* only the drop of the second ends */
    assert_int_equal(b.status[0], BT_OK);
    /* A send whose pieces do not add up to its length is refused at once. */
    assert_int_equal(kvx_stream_send(a.s, 7, &one, 1, 65, NULL), BT_ERR_INVAL);
    pair_down(&a, &b);
}

/* The sender goes away in the middle of a message bigger than the sockets hold: its send and
 * the receive end with errors, and the receiver's owner hears of it. */
static void test_peer_gone_mid_message(void **state)
{
    side_t a, b;
    pair_up(&a, &b);
    size_t len = 64 << 20;
    uint8_t *src = calloc(1, len), *sink = malloc(len);
    kvx_iov_t one = {.base = src, .len = len}, d = {.base = sink, .len = len};
    static kvx_op_t op;
    b.iov[1] = &d;
    b.n[1] = 1;
    assert_int_equal(kvx_stream_send(a.s, 1, &one, 1, len, &op), BT_AGAIN);
    int64_t until = tl_now_ms() + 2000;
    while (b.n_data < 1 && tl_now_ms() < until)
        kvx_streams_progress(b.ss);
    assert_int_equal(b.n_data, 1);
    kvx_stream_close(a.s); /* its send ends now, with an error */
    assert_int_equal(a.n_ended, 1);
    assert_ptr_equal(a.ended[0], &op);
    assert_int_equal(a.status[0], BT_ERR_PEER);
    kvx_streams_progress(a.ss); /* frees it */
    a.s = NULL;
    recv_until(&b, 1);
    assert_int_equal(b.status[0], BT_ERR_PEER);
    assert_int_equal(b.n_failed, 1);
    assert_false(kvx_stream_ready(b.s));
    free(src);
    free(sink);
    pair_down(&a, &b);
}

int main(void)
{
    bt_log_set_level(BT_LOG_ERROR);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pairs_by_key_and_refuses_a_wrong_one),
        cmocka_unit_test(test_garbage_hello_cut_off),
        cmocka_unit_test(test_next_address_after_a_dead_one),
        cmocka_unit_test(test_scattered_gathered_message_exact),
        cmocka_unit_test(test_back_to_back_drops_and_empty),
        cmocka_unit_test(test_wrong_size_receive_refused),
        cmocka_unit_test(test_peer_gone_mid_message),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
