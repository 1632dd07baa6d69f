/* SPDX-License-Identifier: MIT */
/* * kvx_xfer.c - what the two halves of a transfer (kvx_send.c, kvx_recv.c) share: helpers,
 * CANCEL dispatch, completion of data operations, a peer going down, leases and the per-call
 * poll.
 *
 * The one thing to know: a receive's generation is the fence. Data carries (generation, layer,
 * first block index) and the receiver writes it only into the blocks its own live reservation
 * of that generation names, each block of each layer at most once. Anything else (a cancelled,
 * finished or unknown generation, a duplicate, a run that does not fit) is received into
 * nothing and dropped. An ended transfer reports its final event only once no operation of it
 * is in flight: for a receive, once no write can land in its blocks any more.
 *
 * Segments: the blocks of a request are cut wherever the source or the destination block ids
 * stop being consecutive; each segment of each layer is one message (one contiguous range on
 * both sides, since the pool is layer-major). The sender computes them from both block lists;
 * the receiver needs none of it, the tag says where a message goes.
 */
#include "kvx_impl.h"

#include <string.h>
#include <unistd.h>

#include "common/alloc.h"
#include "common/log.h"

size_t kvx_pool_off(const bt_kvx_t *kvx, int32_t layer, int32_t block)
{
    return ((size_t)layer * (size_t)kvx->layout.n_blocks + (size_t)block) *
           (size_t)kvx->layout.block_bytes;
}

int kvx_blocks_check(const bt_kvx_t *kvx, const int32_t *blocks, int32_t n, int32_t n_tokens)
{
    int32_t bs = kvx->layout.block_size;
    if (n <= 0 || n > BT_KVX_MAX_BLOCKS || n_tokens <= 0 || (n_tokens + bs - 1) / bs != n) {
        bt_error("kvx %s: %d blocks cannot hold %d tokens of %d per block", kvx->name, n, n_tokens,
                 bs);
        return BT_ERR_INVAL;
    }
    for (int32_t i = 0; i < n; i++) {
        if (blocks[i] < 0 || blocks[i] >= kvx->layout.n_blocks) {
            bt_error("kvx %s: block id %d outside the pool", kvx->name, blocks[i]);
            return BT_ERR_INVAL;
        }
    }
    return BT_OK;
}

int kvx_peer_usable(const bt_kvx_peer_t *peer)
{
    if (peer->state == KVX_PEER_UP)
        return BT_OK;
    return peer->state == KVX_PEER_CONNECTING ? BT_AGAIN : peer->status;
}

int32_t *kvx_dup_blocks(const int32_t *b, int32_t n)
{
    int32_t *d = bt_malloc((size_t)n * sizeof *d);
    if (d)
        memcpy(d, b, (size_t)n * sizeof *d);
    return d;
}

/* Removes queued events that point at a handle about to be freed. */
void kvx_scrub_events(bt_kvx_t *kvx, const void *handle)
{
    for (int i = 0; i < kvx->ev_count; i++) {
        bt_kvx_event_t *e = &kvx->events[(kvx->ev_head + i) % kvx->ev_cap];
        if (e->send == handle)
            e->send = NULL;
        if (e->recv == handle)
            e->recv = NULL;
    }
}

void kvx_send_cancel_msg(bt_kvx_peer_t *peer, int target, uint64_t req, uint32_t gen, int status)
{
    if (peer->state != KVX_PEER_UP)
        return;
    kvx_buf_t m;
    kvx_buf_init(&m);
    kvx_buf_u8(&m, KVX_MSG_CANCEL);
    kvx_buf_u8(&m, (uint8_t)target);
    kvx_buf_u64(&m, req);
    kvx_buf_u32(&m, gen);
    kvx_buf_i32(&m, status);
    kvx_peer_send_ctrl(peer, &m);
    kvx_buf_fini(&m);
}

void kvx_xfer_on_cancel(bt_kvx_peer_t *peer, kvx_rd_t *rd)
{
    int target = kvx_rd_u8(rd);
    uint64_t req = kvx_rd_u64(rd);
    uint32_t gen = kvx_rd_u32(rd);
    int status = kvx_rd_i32(rd);
    if (rd->err || status >= 0)
        status = BT_ERR_CANCELLED;
    if (target == KVX_CANCEL_TO_RECV)
        kvx_recv_on_cancel(peer, req, gen, status);
    else if (target == KVX_CANCEL_TO_SEND)
        kvx_send_on_cancel(peer, req, gen, status);
    else
        peer->kvx->stats.n_ctrl_rejected++;
}

void kvx_xfer_op_done(bt_kvx_t *kvx, kvx_op_t *op, int status)
{
    bt_kvx_send_t *s = op->send;
    bt_kvx_recv_t *r = op->recv;
    size_t len = op->len;
    kvx_op_put(kvx, op);
    int st = status == BT_OK ? BT_OK : BT_ERR_PEER;
    if (s) {
        kvx_send_op_end(s, len, st);
        kvx_send_pump(s);
    } else if (r) {
        kvx_recv_op_end(r, len, st);
    }
}

void kvx_xfer_peer_down(bt_kvx_peer_t *peer)
{
    bt_kvx_t *kvx = peer->kvx;
    int status = peer->status < 0 ? peer->status : BT_ERR_PEER;
    for (bt_kvx_send_t *s = kvx->sends, *next; s; s = next) {
        next = s->next;
        if (s->peer == peer)
            kvx_send_end(s, status, 0);
    }
    for (bt_kvx_recv_t *r = kvx->recvs, *next; r; r = next) {
        next = r->next;
        if (r->peer == peer)
            kvx_recv_end(r, status, 0);
    }
    while (peer->resv) {
        kvx_resv_t *r = peer->resv;
        peer->resv = r->next;
        bt_free(r->dst);
        bt_free(r);
    }
}

/* The lease of an ended transfer ran out with operations still in flight. Cut the connection,
 * which ends them on transports that can (UCX with peer error handling); operations that a
 * transport cannot cut are forgotten. On shared memory those are receives whose source
 * process is gone (CMA reads done by our own thread, which cannot resume), or sends whose data
 * the receiver may still read but will never be told is complete (no FINISH was sent). */
static void lease_expired(bt_kvx_t *kvx, bt_kvx_peer_t *peer, const void *owner)
{
    if (peer->state != KVX_PEER_DOWN) {
        bt_warn("kvx %s: peer '%s' did not finish an aborted transfer within %d ms", kvx->name,
                peer->name, kvx->lease_ms);
        kvx_peer_fail(peer, BT_ERR_TIMEOUT);
    }
    for (kvx_op_t *op = kvx->inflight; op; op = op->next) {
        if ((const void *)op->send == owner || (const void *)op->recv == owner) {
            op->send = NULL;
            op->recv = NULL;
        }
    }
}

/* Handles one expired lease; returns 1 if it did (the lists may have changed). */
static int lease_check(bt_kvx_t *kvx, int64_t now_ms)
{
    for (bt_kvx_send_t *s = kvx->sends; s; s = s->next) {
        if (s->state == KVX_X_ENDING && s->inflight && now_ms > s->lease_end_ms) {
            bt_kvx_peer_t *peer = s->peer;
            kvx_peer_hold(peer);
            lease_expired(kvx, peer, s);
            s->inflight = 0;
            kvx_send_try_finish(s);
            kvx_peer_unhold(peer);
            return 1;
        }
    }
    for (bt_kvx_recv_t *r = kvx->recvs; r; r = r->next) {
        if (r->state == KVX_X_ENDING && r->inflight && now_ms > r->lease_end_ms) {
            bt_kvx_peer_t *peer = r->peer;
            kvx_peer_hold(peer);
            lease_expired(kvx, peer, r);
            r->inflight = 0;
            kvx_recv_try_finish(r);
            kvx_peer_unhold(peer);
            return 1;
        }
    }
    return 0;
}

void kvx_xfer_poll(bt_kvx_t *kvx, int64_t now_ms)
{
    for (bt_kvx_send_t *s = kvx->sends, *next; s; s = next) {
        next = s->next;
        if (s->state == KVX_X_ACTIVE && s->gen && s->next_layer < atomic_load(&s->layers_ready))
            kvx_send_pump(s);
    }
    while (lease_check(kvx, now_ms))
        ;
}

void kvx_xfer_free_all(bt_kvx_t *kvx)
{
    while (kvx->sends)
        kvx_send_free(kvx->sends);
    while (kvx->recvs)
        kvx_recv_free(kvx->recvs);
}
