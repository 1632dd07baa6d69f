/* SPDX-License-Identifier: MIT */
/*
 * kvx_send.c - the sending (prefill) side of a transfer: binding to the receiver's
 * reservation, segmentation, the window of data messages, layer-wise release and the
 * completion notice.
 *
 * The one thing to know: the completion notice (FINISH) leaves only after every data message
 * has left our memory, so a receiver that acts on it can never read a source block we have
 * already handed back; before that, a send that dies just never completes on the other side.
 */
#include "kvx_debug.h"
#include "kvx_impl.h"

#include <string.h>
#include <unistd.h>

#include "common/alloc.h"
#include "common/log.h"

/* ================= sending side ================= */

void kvx_send_free(bt_kvx_send_t *s)
{
    bt_kvx_t *kvx = s->kvx;
    for (bt_kvx_send_t **pp = &kvx->sends; *pp; pp = &(*pp)->next) {
        if (*pp == s) {
            *pp = s->next;
            break;
        }
    }
    kvx_scrub_events(kvx, s);
    bt_kvx_peer_t *peer = s->peer;
    peer->n_xfers--;
    bt_free(s->seg_idx);
    bt_free(s->seg_len);
    bt_free(s->src);
    bt_free(s);
    kvx_peer_unref(peer);
}

static void send_finish_msg(bt_kvx_send_t *s)
{
    kvx_buf_t m;
    kvx_buf_init(&m);
    kvx_buf_u8(&m, KVX_MSG_FINISH);
    kvx_buf_u64(&m, s->req_id);
    kvx_buf_u32(&m, s->gen);
    kvx_buf_i32(&m, s->first_token);
    kvx_buf_i32(&m, s->n_tokens);
    kvx_buf_u32(&m, s->meta_len);
    kvx_buf_bytes(&m, s->meta, s->meta_len);
    kvx_peer_send_ctrl(s->peer, &m);
    kvx_buf_fini(&m);
}

void kvx_send_try_finish(bt_kvx_send_t *s)
{
    /* The notice goes only once every data message has left our memory: a receiver that acts
     * on it can never read a source block we have already given back. */
    if (s->state == KVX_X_ACTIVE && s->gen && s->next_layer == s->kvx->layout.n_layers &&
        !s->inflight && s->finish_set && !s->finish_sent) {
        s->finish_sent = 1;
        send_finish_msg(s);
    }
    if (s->state != KVX_X_ENDING || s->inflight)
        return;
    s->state = KVX_X_DONE;
    if (s->released) {
        kvx_send_free(s);
        return;
    }
    bt_kvx_event_t ev = {.type = BT_KVX_EV_SEND_DONE,
                         .status = s->status,
                         .peer = s->peer,
                         .send = s,
                         .req_id = s->req_id,
                         .gen = s->gen,
                         .n_tokens = s->n_tokens,
                         .n_blocks = s->n_blocks,
                         .user = s->user};
    kvx_push_event(s->kvx, &ev);
}

/* As for receives, the _mark variant leaves the final step (which may free s) to the caller. */
static void send_end_mark(bt_kvx_send_t *s, int status, int tell_peer)
{
    if (s->state != KVX_X_ACTIVE)
        return;
    s->state = KVX_X_ENDING;
    s->status = status;
    s->lease_end_ms = kvx_now_ms() + s->kvx->lease_ms;
    if (tell_peer)
        kvx_send_cancel_msg(s->peer, KVX_CANCEL_TO_RECV, s->req_id, s->gen, status);
}

void kvx_send_end(bt_kvx_send_t *s, int status, int tell_peer)
{
    send_end_mark(s, status, tell_peer);
    kvx_send_try_finish(s);
}

/* Never finishes s: callers go on to kvx_send_pump, which does. */
void kvx_send_op_end(bt_kvx_send_t *s, size_t len, int status)
{
    s->inflight--;
    if (status == BT_OK) {
        s->kvx->stats.n_data_msgs_sent++;
        s->kvx->stats.bytes_sent += (int64_t)len;
    } else {
        send_end_mark(s, status, 1);
    }
}

/* Mapped method: tells the receiver which layers it may copy now. */
static void send_ready(bt_kvx_send_t *s, int32_t ready)
{
    kvx_buf_t m;
    kvx_buf_init(&m);
    kvx_buf_u8(&m, KVX_MSG_READY);
    kvx_buf_u64(&m, s->req_id);
    kvx_buf_u32(&m, s->gen);
    kvx_buf_i32(&m, ready);
    if (kvx_peer_send_ctrl(s->peer, &m) == BT_OK)
        s->next_layer = ready;
    kvx_buf_fini(&m);
}

/* Where segment g of a layer lies in our pool, and its bytes. */
static char *seg_src(const bt_kvx_send_t *s, int32_t layer, int32_t g)
{
    return s->kvx->base + kvx_pool_off(s->kvx, layer, s->src[s->seg_idx[g]]);
}

static size_t seg_bytes(const bt_kvx_send_t *s, int32_t g)
{
    return (size_t)s->seg_len[g] * (size_t)s->kvx->layout.block_bytes;
}

/* The pieces of layers [a, b) in the order a packed message holds them (the request's blocks
 * in order, layer after layer), for a gathered send; freed with the op. */
static kvx_iov_t *packed_iov(const bt_kvx_send_t *s, int32_t a, int32_t b, int *n_out)
{
    kvx_iov_t *iov = bt_malloc((size_t)(b - a) * (size_t)s->n_segs * sizeof *iov);
    int n = 0;
    for (int32_t l = a; iov && l < b; l++)
        for (int32_t g = 0; g < s->n_segs; g++)
            iov[n++] = (kvx_iov_t){.base = seg_src(s, l, g), .len = seg_bytes(s, g)};
    *n_out = n;
    return iov;
}

/* Packs the ready layers from next_layer on, as many as fit one message, and sends them as
 * one message: copied into a buffer of the op's, or gathered where they lie. BT_OK; BT_AGAIN
 * if no buffer could be had, in which case s stops packing and its layers go run by run (the
 * receiver takes both); or an error that has ended s. */
static int send_packed(bt_kvx_send_t *s, int32_t ready)
{
    bt_kvx_t *kvx = s->kvx;
    int gather = s->pack == KVX_PACK_GATHER;
    size_t bb = (size_t)kvx->layout.block_bytes, lb = (size_t)s->n_blocks * bb;
    size_t cap = gather ? KVX_GATHER_MSG_BYTES : KVX_PACK_MSG_BYTES;
    int32_t a = s->next_layer, b = a + 1;
    while (b < ready && (size_t)(b + 1 - a) * lb <= cap &&
           (!gather || (int64_t)(b + 1 - a) * s->n_segs <= KVX_GATHER_PIECES))
        b++;
    size_t len = (size_t)(b - a) * lb;
    kvx_op_t *op = kvx_op_get(kvx);
    if (!op) {
        send_end_mark(s, BT_ERR_NOMEM, 1);
        return BT_ERR_NOMEM;
    }
    int n_iov = 0;
    kvx_iov_t *iov = gather ? packed_iov(s, a, b, &n_iov) : NULL;
    uint8_t *buf = gather ? NULL : kvx_op_stage(kvx, op, len);
    if (!iov && !buf) {
        kvx_op_put(kvx, op);
        s->pack = 0;
        return BT_AGAIN;
    }
    for (int32_t l = a; buf && l < b; l++) {
        for (int32_t g = 0; g < s->n_segs; g++) {
            memcpy(buf, seg_src(s, l, g), seg_bytes(s, g));
            buf += seg_bytes(s, g);
        }
    }
    op->send = s;
    op->len = len;
    s->inflight++;
    s->next_layer = b;
    uint64_t tag = kvx_tag_pack(s->gen, a, b - a);
    int st;
    if (gather) {
        op->stage = iov; /* stage_cap 0: freed, not kept */
        st = kvx->ops->send_data_iov(kvx->be, s->peer->ep, tag, iov, n_iov, len, op);
    } else {
        st = kvx->ops->send_data(kvx->be, s->peer->ep, tag, op->stage, len, op);
    }
    if (st != BT_AGAIN) {
        kvx_op_put(kvx, op);
        kvx_send_op_end(s, len, st == BT_OK ? BT_OK : BT_ERR_PEER);
    }
    return BT_OK;
}

static int send_window(const bt_kvx_send_t *s)
{
    if (s->pack)
        return s->pack == KVX_PACK_GATHER ? KVX_GATHER_WINDOW : KVX_PACK_WINDOW;
    return s->kvx->window;
}

/* Posts the next messages of the ready layers, up to the window. */
void kvx_send_pump(bt_kvx_send_t *s)
{
    bt_kvx_t *kvx = s->kvx;
    int32_t ready = atomic_load(&s->layers_ready);
    if (s->method == KVX_METHOD_MAP && s->state == KVX_X_ACTIVE && s->gen && s->next_layer < ready)
        send_ready(s, ready);
    while (s->method == KVX_METHOD_DATA && s->state == KVX_X_ACTIVE && s->gen &&
           s->next_layer < ready && s->inflight < send_window(s)) {
        /* One layer of one run goes as it is: packing it would only copy it. */
        if (s->pack && (s->n_segs > 1 || ready - s->next_layer > 1)) {
            int st = send_packed(s, ready);
            if (st == BT_OK || st == BT_AGAIN)
                continue;
            break;
        }
        int32_t l = s->next_layer, g = s->next_seg;
        size_t len = seg_bytes(s, g);
        kvx_op_t *op = kvx_op_get(kvx);
        if (!op) {
            send_end_mark(s, BT_ERR_NOMEM, 1);
            break;
        }
        op->send = s;
        op->len = len;
        s->inflight++;
        if (++s->next_seg == s->n_segs) {
            s->next_seg = 0;
            s->next_layer++;
        }
        int st = kvx->ops->send_data(kvx->be, s->peer->ep, kvx_tag_data(s->gen, l, s->seg_idx[g]),
                                     seg_src(s, l, g), len, op);
        if (st != BT_AGAIN) {
            kvx_op_put(kvx, op);
            kvx_send_op_end(s, len, st == BT_OK ? BT_OK : BT_ERR_PEER);
        }
    }
    kvx_send_try_finish(s);
}

static int segments_build(bt_kvx_send_t *s, const int32_t *dst, size_t max_msg_bytes)
{
    size_t bb = (size_t)s->kvx->layout.block_bytes;
    int64_t max_run = max_msg_bytes ? (int64_t)(max_msg_bytes / bb) : s->n_blocks;
    if (max_run < 1)
        max_run = 1;
    s->seg_idx = bt_malloc((size_t)s->n_blocks * sizeof(int32_t));
    s->seg_len = bt_malloc((size_t)s->n_blocks * sizeof(int32_t));
    if (!s->seg_idx || !s->seg_len)
        return BT_ERR_NOMEM;
    s->n_segs = 0;
    for (int32_t i = 0; i < s->n_blocks;) {
        int32_t j = i + 1;
        while (j < s->n_blocks && j - i < max_run && s->src[j] == s->src[j - 1] + 1 &&
               dst[j] == dst[j - 1] + 1)
            j++;
        s->seg_idx[s->n_segs] = i;
        s->seg_len[s->n_segs] = j - i;
        s->n_segs++;
        i = j;
    }
    return BT_OK;
}

/* Mapped method: the receiver needs our block ids to find the data in our pool. */
static int send_source(bt_kvx_send_t *s)
{
    /* The layers ready now travel with it: a whole-cache send needs no READY at all. */
    int32_t ready = atomic_load(&s->layers_ready);
    kvx_buf_t m;
    kvx_buf_init(&m);
    kvx_buf_u8(&m, KVX_MSG_SOURCE);
    kvx_buf_u64(&m, s->req_id);
    kvx_buf_u32(&m, s->gen);
    kvx_buf_i32(&m, ready);
    kvx_buf_i32(&m, s->n_blocks);
    for (int32_t i = 0; i < s->n_blocks; i++)
        kvx_buf_i32(&m, s->src[i]);
    int st = kvx_peer_send_ctrl(s->peer, &m);
    kvx_buf_fini(&m);
    if (st == BT_OK)
        s->next_layer = ready;
    return st;
}

/* Whether this send's layers go packed: when it saves messages, the peer can take them, the
 * transport is one where that pays (or the caller asks for it), and, unless asked, its runs
 * are small enough for one message each to cost more than copying them. */
static int send_packs(const bt_kvx_send_t *s)
{
    const bt_kvx_t *kvx = s->kvx;
    size_t lb = (size_t)s->n_blocks * (size_t)kvx->layout.block_bytes;
    if (kvx->pack < 0 || !kvx->ops->ep_pack || !kvx->ops->recv_data_iov ||
        (kvx->ops->max_msg_bytes && lb > kvx->ops->max_msg_bytes) ||
        (int64_t)kvx->layout.n_layers * s->n_segs < 2)
        return 0;
    int mode = kvx->ops->ep_pack(kvx->be, s->peer->ep);
    if (mode == KVX_PACK_GATHER) /* nothing is copied: fewer messages always pay */
        return kvx->ops->send_data_iov ? mode : 0;
    if (lb > KVX_PACK_LAYER_MAX ||
        (kvx->pack == 0 && lb / (size_t)s->n_segs >= BT_KVX_PACK_RUN_BYTES))
        return 0;
    return mode;
}

static void send_bind(bt_kvx_send_t *s, uint32_t gen, int method, int32_t n_tokens,
                      int32_t n_blocks, const int32_t *dst)
{
    bt_kvx_t *kvx = s->kvx;
    if (n_tokens != s->n_tokens || n_blocks != s->n_blocks) {
        bt_error("kvx %s: request %llu: peer '%s' reserved %d tokens, we have %d", kvx->name,
                 (unsigned long long)s->req_id, s->peer->name, n_tokens, s->n_tokens);
        kvx_send_cancel_msg(s->peer, KVX_CANCEL_TO_RECV, s->req_id, gen, BT_ERR_MISMATCH);
        kvx_send_end(s, BT_ERR_MISMATCH, 0);
        return;
    }
    s->gen = gen;
    s->method = method == KVX_METHOD_MAP ? KVX_METHOD_MAP : KVX_METHOD_DATA;
    int st = s->method == KVX_METHOD_MAP ? send_source(s)
                                         : segments_build(s, dst, kvx->ops->max_msg_bytes);
    if (st == BT_OK && s->method == KVX_METHOD_DATA)
        s->pack = send_packs(s);
    if (st != BT_OK) {
        kvx_send_end(s, st, 1);
        return;
    }
    kvx_send_pump(s);
}

static bt_kvx_send_t *send_find(bt_kvx_peer_t *peer, uint64_t req, uint32_t gen)
{
    for (bt_kvx_send_t *s = peer->kvx->sends; s; s = s->next)
        if (s->peer == peer && s->req_id == req && s->gen == gen && s->state == KVX_X_ACTIVE)
            return s;
    return NULL;
}

static void send_offer(bt_kvx_send_t *s)
{
    kvx_buf_t m;
    kvx_buf_init(&m);
    kvx_buf_u8(&m, KVX_MSG_OFFER);
    kvx_buf_u64(&m, s->req_id);
    kvx_buf_i32(&m, s->n_tokens);
    kvx_buf_i32(&m, s->n_blocks);
    kvx_peer_send_ctrl(s->peer, &m);
    kvx_buf_fini(&m);
}

int bt_kvx_send_start(bt_kvx_peer_t *peer, const bt_kvx_send_params_t *params, bt_kvx_send_t **out)
{
    bt_kvx_t *kvx = peer->kvx;
    int st = kvx_peer_usable(peer);
    if (st == BT_OK)
        st = kvx_blocks_check(kvx, params->blocks, params->n_blocks, params->n_tokens);
    if (st != BT_OK)
        return st;
    bt_kvx_send_t *s = bt_calloc(1, sizeof *s);
    if (!s || !(s->src = kvx_dup_blocks(params->blocks, params->n_blocks))) {
        bt_free(s);
        return BT_ERR_NOMEM;
    }
    s->kvx = kvx;
    s->peer = peer;
    s->req_id = params->req_id;
    s->state = KVX_X_ACTIVE;
    s->n_blocks = params->n_blocks;
    s->n_tokens = params->n_tokens;
    s->user = params->user;
    atomic_init(&s->layers_ready, params->layerwise ? 0 : kvx->layout.n_layers);
    s->next = kvx->sends;
    kvx->sends = s;
    peer->n_xfers++;
    for (kvx_resv_t **pp = &peer->resv; *pp; pp = &(*pp)->next) {
        kvx_resv_t *r = *pp;
        if (r->req_id == s->req_id) {
            *pp = r->next;
            send_bind(s, r->gen, r->method, r->n_tokens, r->n_blocks, r->dst);
            bt_free(r->dst);
            bt_free(r);
            break;
        }
    }
    /* Only a receiver that has not reserved yet (pull order) needs to hear of the KV. */
    if (!s->gen && s->state == KVX_X_ACTIVE)
        send_offer(s);
    *out = s;
    return BT_OK;
}

void bt_kvx_send_layers_ready(bt_kvx_send_t *send, int32_t n_layers_ready)
{
    int32_t cur = atomic_load(&send->layers_ready);
    if (n_layers_ready > send->kvx->layout.n_layers)
        n_layers_ready = send->kvx->layout.n_layers;
    while (cur < n_layers_ready &&
           !atomic_compare_exchange_weak(&send->layers_ready, &cur, n_layers_ready))
        ;
    uint64_t one = 1;
    /* Wakes a loop that may be asleep on bt_kvx_fd (one that is awake ships the layers at its
     * next progress; no system call per layer then). A full counter means it is awake. */
    if (atomic_load(&send->kvx->armed) && write(send->kvx->wakefd, &one, sizeof one) < 0)
        return;
}

int bt_kvx_send_finish(bt_kvx_send_t *send, int32_t first_token, const void *meta, size_t meta_len)
{
    if (meta_len > BT_KVX_META_MAX || (meta_len && !meta) || send->finish_set)
        return BT_ERR_INVAL;
    if (send->state != KVX_X_ACTIVE)
        return send->status;
    send->first_token = first_token;
    send->meta_len = (uint32_t)meta_len;
    if (meta_len)
        memcpy(send->meta, meta, meta_len);
    send->finish_set = 1;
    kvx_send_pump(send);
    return BT_OK;
}

void bt_kvx_send_cancel(bt_kvx_send_t *send)
{
    kvx_send_end(send, BT_ERR_CANCELLED, 1);
}

void bt_kvx_send_release(bt_kvx_send_t *send)
{
    if (!send)
        return;
    send->released = 1;
    if (send->state == KVX_X_DONE)
        kvx_send_free(send);
    else
        kvx_send_end(send, BT_ERR_CANCELLED, 1);
}

void kvx_xfer_on_reserve(bt_kvx_peer_t *peer, kvx_rd_t *rd)
{
    bt_kvx_t *kvx = peer->kvx;
    uint64_t req = kvx_rd_u64(rd);
    uint32_t gen = kvx_rd_u32(rd);
    int method = kvx_rd_u8(rd);
    int32_t n_tokens = kvx_rd_i32(rd), n = kvx_rd_i32(rd);
    const void *raw = n > 0 && n <= BT_KVX_MAX_BLOCKS ? kvx_rd_bytes(rd, (size_t)n * 4) : NULL;
    if (!raw || rd->err || gen == 0) {
        kvx->stats.n_ctrl_rejected++;
        return;
    }
    kvx_resv_t *r = bt_calloc(1, sizeof *r);
    int32_t *dst = bt_malloc((size_t)n * sizeof *dst);
    if (!r || !dst) {
        bt_free(r);
        bt_free(dst);
        kvx_send_cancel_msg(peer, KVX_CANCEL_TO_RECV, req, gen, BT_ERR_NOMEM);
        return;
    }
    kvx_rd_t br;
    kvx_rd_init(&br, raw, (size_t)n * 4);
    for (int32_t i = 0; i < n; i++)
        dst[i] = kvx_rd_i32(&br);
    bt_kvx_event_t ev = {.type = BT_KVX_EV_RESERVED,
                         .peer = peer,
                         .req_id = req,
                         .gen = gen,
                         .n_tokens = n_tokens,
                         .n_blocks = n};
    kvx_push_event(kvx, &ev);
    bt_kvx_send_t *s = send_find(peer, req, 0);
    if (s) {
        send_bind(s, gen, method, n_tokens, n, dst);
        bt_free(dst);
        bt_free(r);
        return;
    }
    *r = (kvx_resv_t){.next = peer->resv,
                      .req_id = req,
                      .gen = gen,
                      .method = method,
                      .n_tokens = n_tokens,
                      .n_blocks = n,
                      .dst = dst};
    peer->resv = r;
}

void kvx_send_on_cancel(bt_kvx_peer_t *peer, uint64_t req, uint32_t gen, int status)
{
    for (kvx_resv_t **pp = &peer->resv; *pp;) {
        kvx_resv_t *r = *pp;
        if (r->req_id == req && r->gen == gen) {
            *pp = r->next;
            bt_free(r->dst);
            bt_free(r);
        } else {
            pp = &r->next;
        }
    }
    /* gen 0: the receiver declined our offer (bt_kvx_decline) */
    bt_kvx_send_t *s = send_find(peer, req, gen);
    if (s)
        kvx_send_end(s, status, 0);
}

void kvx_xfer_on_release(bt_kvx_peer_t *peer, kvx_rd_t *rd)
{
    uint64_t req = kvx_rd_u64(rd);
    uint32_t gen = kvx_rd_u32(rd);
    int status = kvx_rd_i32(rd);
    bt_kvx_send_t *s = rd->err || !gen ? NULL : send_find(peer, req, gen);
    if (!s || !s->finish_sent) {
        /* We no longer vouch for the source (a mapped receiver is waiting to hear it). */
        peer->kvx->stats.n_ctrl_rejected++;
        if (!rd->err)
            kvx_send_cancel_msg(peer, KVX_CANCEL_TO_RECV, req, gen, BT_ERR_CANCELLED);
        return;
    }
    if (s->method == KVX_METHOD_MAP) {
        kvx_buf_t m;
        kvx_buf_init(&m);
        kvx_buf_u8(&m, KVX_MSG_CONFIRM);
        kvx_buf_u64(&m, req);
        kvx_buf_u32(&m, gen);
        kvx_peer_send_ctrl(peer, &m);
        kvx_buf_fini(&m);
    }
    kvx_send_end(s, status > 0 ? BT_ERR_INTERNAL : status, 0);
}

int bt_kvx_debug_inject(bt_kvx_peer_t *peer, uint32_t gen, int32_t layer, int32_t idx,
                        int32_t src_block, int32_t n_blocks)
{
    bt_kvx_t *kvx = peer->kvx;
    if (peer->state != KVX_PEER_UP || layer < 0 || layer >= kvx->layout.n_layers || src_block < 0 ||
        n_blocks <= 0 || src_block + n_blocks > kvx->layout.n_blocks)
        return BT_ERR_INVAL;
    kvx_op_t *op = kvx_op_get(kvx);
    if (!op)
        return BT_ERR_NOMEM;
    size_t len = (size_t)n_blocks * (size_t)kvx->layout.block_bytes;
    int st = kvx->ops->send_data(kvx->be, peer->ep, kvx_tag_data(gen, layer, idx),
                                 kvx->base + kvx_pool_off(kvx, layer, src_block), len, op);
    if (st != BT_AGAIN)
        kvx_op_put(kvx, op);
    return st == BT_AGAIN ? BT_OK : st;
}

int bt_kvx_debug_inject_packed(bt_kvx_peer_t *peer, uint32_t gen, int32_t first_layer,
                               int32_t n_layers, int32_t src_block, int32_t n_blocks)
{
    bt_kvx_t *kvx = peer->kvx;
    if (peer->state != KVX_PEER_UP || first_layer < 0 || first_layer > 0x3ff || n_layers <= 0 ||
        n_layers > 0x3ff || src_block < 0 || n_blocks <= 0 ||
        src_block + n_blocks > kvx->layout.n_blocks)
        return BT_ERR_INVAL;
    size_t lb = (size_t)n_blocks * (size_t)kvx->layout.block_bytes;
    kvx_op_t *op = kvx_op_get(kvx);
    uint8_t *buf = op ? kvx_op_stage(kvx, op, (size_t)n_layers * lb) : NULL;
    if (!buf) {
        if (op)
            kvx_op_put(kvx, op);
        return BT_ERR_NOMEM;
    }
    for (int32_t l = 0; l < n_layers; l++)
        memcpy(buf + (size_t)l * lb,
               kvx->base + kvx_pool_off(kvx, (first_layer + l) % kvx->layout.n_layers, src_block),
               lb);
    int st = kvx->ops->send_data(kvx->be, peer->ep, kvx_tag_pack(gen, first_layer, n_layers), buf,
                                 (size_t)n_layers * lb, op);
    if (st != BT_AGAIN)
        kvx_op_put(kvx, op);
    return st == BT_AGAIN ? BT_OK : st;
}
