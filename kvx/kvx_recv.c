/* SPDX-License-Identifier: MIT */
/*
 * kvx_recv.c - the receiving (decode) side of a transfer: the reservation, the data path into
 * the pool, and completion.
 *
 * The one thing to know: the generation is the fence. Data is written only into the blocks the
 * live reservation of that generation names, each block of each layer at most once; a
 * receive's generation dies the moment it ends, so late data finds nothing and is dropped. A
 * receive reports its end only when no write into its blocks is in flight any more.
 */
#include "kvx_impl.h"

#include <string.h>
#include <unistd.h>

#include "common/alloc.h"
#include "common/log.h"

/* ================= receiving side ================= */

static bt_kvx_recv_t *gen_find(bt_kvx_t *kvx, uint32_t gen)
{
    for (bt_kvx_recv_t *r = kvx->by_gen[gen % KVX_GEN_BUCKETS]; r; r = r->hnext)
        if (r->gen == gen)
            return r;
    return NULL;
}

static void gen_remove(bt_kvx_recv_t *r)
{
    bt_kvx_recv_t **pp = &r->kvx->by_gen[r->gen % KVX_GEN_BUCKETS];
    for (; *pp; pp = &(*pp)->hnext) {
        if (*pp == r) {
            *pp = r->hnext;
            r->hnext = NULL;
            return;
        }
    }
}

void kvx_recv_free(bt_kvx_recv_t *r)
{
    bt_kvx_t *kvx = r->kvx;
    for (bt_kvx_recv_t **pp = &kvx->recvs; *pp; pp = &(*pp)->next) {
        if (*pp == r) {
            *pp = r->next;
            break;
        }
    }
    gen_remove(r);
    kvx_scrub_events(kvx, r);
    bt_kvx_peer_t *peer = r->peer;
    peer->n_xfers--;
    bt_free(r->src);
    bt_free(r->have);
    bt_free(r->dst);
    bt_free(r);
    kvx_peer_unref(peer);
}

void kvx_recv_try_finish(bt_kvx_recv_t *r)
{
    bt_kvx_t *kvx = r->kvx;
    int64_t want = (int64_t)kvx->layout.n_layers * r->n_blocks;
    if (r->state == KVX_X_ACTIVE && r->finish_seen && r->n_have == want && !r->inflight &&
        !r->verify_sent) {
        /* Mapped: everything is copied, but it is ours only if the sender confirms it kept
         * the source intact until now (it answers CONFIRM, or CANCEL if it gave up). */
        if (r->method == KVX_METHOD_MAP)
            r->verify_sent = 1;
        else {
            r->state = KVX_X_ENDING;
            r->status = BT_OK;
            gen_remove(r);
        }
        kvx_buf_t m;
        kvx_buf_init(&m);
        kvx_buf_u8(&m, KVX_MSG_RELEASE);
        kvx_buf_u64(&m, r->req_id);
        kvx_buf_u32(&m, r->gen);
        kvx_buf_i32(&m, BT_OK);
        kvx_peer_send_ctrl(r->peer, &m);
        kvx_buf_fini(&m);
    }
    if (r->state != KVX_X_ENDING || r->inflight)
        return;
    r->state = KVX_X_DONE;
    if (r->released) {
        kvx_recv_free(r);
        return;
    }
    bt_kvx_event_t ev = {.type = BT_KVX_EV_RECV_DONE,
                         .status = r->status,
                         .peer = r->peer,
                         .recv = r,
                         .req_id = r->req_id,
                         .gen = r->gen,
                         .n_tokens = r->status == BT_OK ? r->fin_tokens : r->n_tokens,
                         .n_blocks = r->n_blocks,
                         .first_token = r->first_token,
                         .meta = r->status == BT_OK ? r->meta : NULL,
                         .meta_len = r->status == BT_OK ? r->meta_len : 0,
                         .user = r->user};
    kvx_push_event(kvx, &ev);
}

/* Ends a receive: from now on its generation is dead, so nothing more is written into it.
 * The _mark variant leaves the final step (which may free r) to the caller. */
static void recv_end_mark(bt_kvx_recv_t *r, int status, int tell_peer)
{
    if (r->state != KVX_X_ACTIVE)
        return;
    r->state = KVX_X_ENDING;
    r->status = status;
    r->lease_end_ms = kvx_now_ms() + r->kvx->lease_ms;
    gen_remove(r);
    if (tell_peer)
        kvx_send_cancel_msg(r->peer, KVX_CANCEL_TO_SEND, r->req_id, r->gen, status);
}

void kvx_recv_end(bt_kvx_recv_t *r, int status, int tell_peer)
{
    recv_end_mark(r, status, tell_peer);
    kvx_recv_try_finish(r);
}

static int send_reserve(bt_kvx_recv_t *r)
{
    kvx_buf_t m;
    kvx_buf_init(&m);
    kvx_buf_u8(&m, KVX_MSG_RESERVE);
    kvx_buf_u64(&m, r->req_id);
    kvx_buf_u32(&m, r->gen);
    kvx_buf_u8(&m, (uint8_t)r->method);
    kvx_buf_i32(&m, r->n_tokens);
    kvx_buf_i32(&m, r->n_blocks);
    for (int32_t i = 0; i < r->n_blocks; i++)
        kvx_buf_i32(&m, r->dst[i]);
    int st = kvx_peer_send_ctrl(r->peer, &m);
    kvx_buf_fini(&m);
    return st;
}

int bt_kvx_recv_post(bt_kvx_peer_t *peer, const bt_kvx_recv_params_t *params, bt_kvx_recv_t **out)
{
    bt_kvx_t *kvx = peer->kvx;
    int st = kvx_peer_usable(peer);
    if (st == BT_OK)
        st = kvx_blocks_check(kvx, params->blocks, params->n_blocks, params->n_tokens);
    if (st != BT_OK)
        return st;
    bt_kvx_recv_t *r = bt_calloc(1, sizeof *r);
    size_t bits = (size_t)kvx->layout.n_layers * (size_t)params->n_blocks;
    if (!r || !(r->dst = kvx_dup_blocks(params->blocks, params->n_blocks)) ||
        !(r->have = bt_calloc((bits + 63) / 64, sizeof(uint64_t)))) {
        if (r)
            bt_free(r->dst);
        bt_free(r);
        return BT_ERR_NOMEM;
    }
    r->kvx = kvx;
    r->peer = peer;
    r->req_id = params->req_id;
    do
        r->gen = ++kvx->next_gen;
    while (r->gen == 0 || gen_find(kvx, r->gen));
    r->state = KVX_X_ACTIVE;
    r->method = peer->readable ? KVX_METHOD_MAP : KVX_METHOD_DATA;
    r->n_blocks = params->n_blocks;
    r->n_tokens = params->n_tokens;
    r->user = params->user;
    st = send_reserve(r);
    if (st != BT_OK) {
        bt_free(r->have);
        bt_free(r->dst);
        bt_free(r);
        return st;
    }
    r->next = kvx->recvs;
    kvx->recvs = r;
    r->hnext = kvx->by_gen[r->gen % KVX_GEN_BUCKETS];
    kvx->by_gen[r->gen % KVX_GEN_BUCKETS] = r;
    peer->n_xfers++;
    *out = r;
    return BT_OK;
}

void bt_kvx_recv_cancel(bt_kvx_recv_t *recv)
{
    kvx_recv_end(recv, BT_ERR_CANCELLED, 1);
}

void bt_kvx_decline(bt_kvx_peer_t *peer, uint64_t req_id, int status)
{
    /* generation 0: the send that has not seen a reservation (kvx_send_on_cancel) */
    kvx_send_cancel_msg(peer, KVX_CANCEL_TO_SEND, req_id, 0,
                        status < 0 ? status : BT_ERR_CANCELLED);
}

uint32_t bt_kvx_recv_gen(const bt_kvx_recv_t *recv)
{
    return recv->gen;
}

void bt_kvx_recv_release(bt_kvx_recv_t *recv)
{
    if (!recv)
        return;
    recv->released = 1;
    if (recv->state == KVX_X_DONE)
        kvx_recv_free(recv);
    else
        kvx_recv_end(recv, BT_ERR_CANCELLED, 1);
}

static void discard(bt_kvx_t *kvx, void *msg)
{
    kvx_op_t *op = kvx_op_get(kvx);
    int st = kvx->ops->recv_data(kvx->be, msg, NULL, 0, op);
    if (op && st != BT_AGAIN)
        kvx_op_put(kvx, op);
}

/* 0 if the run [idx, idx + n) of layer fits the reservation, is consecutive in the pool and
 * is not written yet; 1 if it is a duplicate; -1 if it is malformed. */
static int run_check(const bt_kvx_recv_t *r, int32_t layer, int32_t idx, int64_t n)
{
    if (layer >= r->kvx->layout.n_layers || n <= 0 || idx + n > r->n_blocks)
        return -1;
    for (int64_t k = 1; k < n; k++)
        if (r->dst[idx + k] != r->dst[idx] + k)
            return -1;
    for (int64_t k = 0; k < n; k++) {
        size_t bit = (size_t)layer * (size_t)r->n_blocks + (size_t)(idx + k);
        if (r->have[bit / 64] >> (bit % 64) & 1)
            return 1;
    }
    return 0;
}

void kvx_recv_op_end(bt_kvx_recv_t *r, size_t len, int status)
{
    bt_kvx_t *kvx = r->kvx;
    r->inflight--;
    if (status == BT_OK) {
        kvx->stats.n_data_msgs_recv++;
        kvx->stats.bytes_recv += (int64_t)len;
    } else {
        recv_end_mark(r, status, 1);
    }
    kvx_recv_try_finish(r);
}

static void have_set(bt_kvx_recv_t *r, int32_t layer, int32_t idx, int64_t n)
{
    for (int64_t k = 0; k < n; k++) {
        size_t bit = (size_t)layer * (size_t)r->n_blocks + (size_t)(idx + k);
        r->have[bit / 64] |= 1ull << (bit % 64);
    }
    r->n_have += n;
}

/* 0 if the n_layers layers from first are a fit for the reservation and none of their blocks
 * is written yet; 1 if all are (a duplicate); -1 if it is malformed or partly written. */
static int layers_check(const bt_kvx_recv_t *r, int32_t first, int32_t n_layers, size_t len)
{
    size_t lb = (size_t)r->n_blocks * (size_t)r->kvx->layout.block_bytes;
    if (n_layers < 1 || first + n_layers > r->kvx->layout.n_layers || len != (size_t)n_layers * lb)
        return -1;
    int64_t set = 0, n = (int64_t)n_layers * r->n_blocks;
    for (int64_t k = 0; k < n; k++) {
        size_t bit = (size_t)first * (size_t)r->n_blocks + (size_t)k;
        set += r->have[bit / 64] >> (bit % 64) & 1;
    }
    return set == 0 ? 0 : set == n ? 1 : -1;
}

/* The pieces of the pool that whole layers [first, first + n_layers) of r go to, in the
 * order a packed message holds them, adjacent pieces merged. */
static kvx_iov_t *layers_iov(const bt_kvx_recv_t *r, int32_t first, int32_t n_layers, int *n_iov)
{
    const bt_kvx_t *kvx = r->kvx;
    size_t bb = (size_t)kvx->layout.block_bytes;
    kvx_iov_t *iov = bt_malloc((size_t)n_layers * (size_t)r->n_blocks * sizeof *iov);
    int n = 0;
    for (int32_t l = first; iov && l < first + n_layers; l++) {
        for (int32_t i = 0; i < r->n_blocks; i++) {
            char *p = kvx->base + kvx_pool_off(kvx, l, r->dst[i]);
            if (n && (char *)iov[n - 1].base + iov[n - 1].len == p)
                iov[n - 1].len += bb;
            else
                iov[n++] = (kvx_iov_t){.base = p, .len = bb};
        }
    }
    *n_iov = n;
    return iov;
}

/* Ends r over a data message it cannot take: 1 duplicate (dropped, r goes on), -1 malformed,
 * or 0 with no op to receive it with. */
static void data_refused(bt_kvx_recv_t *r, int chk, uint64_t tag, size_t len, void *msg)
{
    bt_kvx_t *kvx = r->kvx;
    if (chk > 0)
        kvx->stats.n_dup_dropped++;
    else
        bt_warn("kvx %s: bad data message from '%s' (%s, layer %d, %d, %zu bytes)", kvx->name,
                r->peer->name, (tag & KVX_TAG_CLASS_MASK) == KVX_TAG_PACK ? "packed" : "run",
                kvx_tag_layer(tag), kvx_tag_idx(tag), len);
    discard(kvx, msg);
    if (chk <= 0)
        kvx_recv_end(r, chk < 0 ? BT_ERR_FORMAT : BT_ERR_NOMEM, 1);
}

/* The data message is r's: receives it with op into dst (len bytes) or scattered over iov. */
static void data_take(bt_kvx_recv_t *r, kvx_op_t *op, void *msg, void *dst, size_t len,
                      kvx_iov_t *iov, int n_iov)
{
    bt_kvx_t *kvx = r->kvx;
    r->inflight++;
    r->peer->last_rx_ms = kvx_now_ms();
    op->recv = r;
    op->len = len;
    op->stage = iov;
    int st = iov ? kvx->ops->recv_data_iov(kvx->be, msg, iov, n_iov, op)
                 : kvx->ops->recv_data(kvx->be, msg, dst, len, op);
    if (st != BT_AGAIN) {
        kvx_op_put(kvx, op);
        kvx_recv_op_end(r, len, st == BT_OK ? BT_OK : BT_ERR_PEER);
    }
}

/* A packed message: whole layers, each the reservation's blocks in order. */
static void packed_on_data(bt_kvx_recv_t *r, uint64_t tag, size_t len, void *msg)
{
    bt_kvx_t *kvx = r->kvx;
    int32_t first = kvx_tag_layer(tag), n_layers = kvx_tag_idx(tag);
    int chk = kvx->ops->recv_data_iov ? layers_check(r, first, n_layers, len) : -1;
    int n_iov = 0;
    kvx_iov_t *iov = chk == 0 ? layers_iov(r, first, n_layers, &n_iov) : NULL;
    kvx_op_t *op = iov ? kvx_op_get(kvx) : NULL;
    if (!op) {
        bt_free(iov);
        data_refused(r, chk, tag, len, msg);
        return;
    }
    for (int32_t l = first; l < first + n_layers; l++)
        have_set(r, l, 0, r->n_blocks);
    data_take(r, op, msg, NULL, len, iov, n_iov);
}

void kvx_xfer_on_data(bt_kvx_t *kvx, uint64_t tag, size_t len, void *msg)
{
    bt_kvx_recv_t *r = gen_find(kvx, kvx_tag_gen(tag));
    if (!r || r->state != KVX_X_ACTIVE) {
        kvx->stats.n_stale_dropped++;
        discard(kvx, msg);
        return;
    }
    if (r->method == KVX_METHOD_MAP) {
        bt_warn("kvx %s: data message from '%s' for a mapped transfer", kvx->name, r->peer->name);
        discard(kvx, msg);
        kvx_recv_end(r, BT_ERR_FORMAT, 1);
        return;
    }
    if ((tag & KVX_TAG_CLASS_MASK) == KVX_TAG_PACK) {
        packed_on_data(r, tag, len, msg);
        return;
    }
    int32_t layer = kvx_tag_layer(tag), idx = kvx_tag_idx(tag);
    size_t bb = (size_t)kvx->layout.block_bytes;
    int64_t n = len % bb ? -1 : (int64_t)(len / bb);
    int chk = run_check(r, layer, idx, n);
    kvx_op_t *op = chk == 0 ? kvx_op_get(kvx) : NULL;
    if (!op) {
        data_refused(r, chk, tag, len, msg);
        return;
    }
    have_set(r, layer, idx, n);
    data_take(r, op, msg, kvx->base + kvx_pool_off(kvx, layer, r->dst[idx]), len, NULL, 0);
}

static bt_kvx_recv_t *recv_match(bt_kvx_peer_t *peer, uint64_t req, uint32_t gen)
{
    bt_kvx_recv_t *r = gen ? gen_find(peer->kvx, gen) : NULL;
    if (r && r->peer == peer && r->req_id == req && r->state == KVX_X_ACTIVE)
        return r;
    return NULL;
}

void kvx_xfer_on_finish(bt_kvx_peer_t *peer, kvx_rd_t *rd)
{
    uint64_t req = kvx_rd_u64(rd);
    uint32_t gen = kvx_rd_u32(rd);
    int32_t token = kvx_rd_i32(rd), n_tokens = kvx_rd_i32(rd);
    uint32_t meta_len = kvx_rd_u32(rd);
    const void *meta = meta_len <= BT_KVX_META_MAX ? kvx_rd_bytes(rd, meta_len) : NULL;
    bt_kvx_recv_t *r = recv_match(peer, req, gen);
    if (!r || r->finish_seen) {
        peer->kvx->stats.n_ctrl_rejected++;
        return;
    }
    if (!meta || rd->err || n_tokens != r->n_tokens) {
        bt_warn("kvx %s: malformed completion notice from '%s'", peer->kvx->name, peer->name);
        kvx_recv_end(r, BT_ERR_FORMAT, 1);
        return;
    }
    r->finish_seen = 1;
    r->first_token = token;
    r->fin_tokens = n_tokens;
    r->meta_len = meta_len;
    memcpy(r->meta, meta, meta_len);
    kvx_recv_try_finish(r);
}

void kvx_xfer_on_offer(bt_kvx_peer_t *peer, kvx_rd_t *rd)
{
    bt_kvx_event_t ev = {.type = BT_KVX_EV_OFFERED, .peer = peer};
    ev.req_id = kvx_rd_u64(rd);
    ev.n_tokens = kvx_rd_i32(rd);
    ev.n_blocks = kvx_rd_i32(rd);
    if (!rd->err)
        kvx_push_event(peer->kvx, &ev);
}

void kvx_recv_on_cancel(bt_kvx_peer_t *peer, uint64_t req, uint32_t gen, int status)
{
    /* The sender gave up; gen 0: before it ever saw our reservation. */
    for (bt_kvx_recv_t *r = peer->kvx->recvs, *next; r; r = next) {
        next = r->next;
        if (r->peer == peer && r->req_id == req && r->state == KVX_X_ACTIVE &&
            (gen == 0 || r->gen == gen))
            kvx_recv_end(r, status, 0);
    }
}

/* ---- the mapped method: the receiver copies out of the sender's pool ---- */

void kvx_recv_on_source(bt_kvx_peer_t *peer, kvx_rd_t *rd)
{
    uint64_t req = kvx_rd_u64(rd);
    uint32_t gen = kvx_rd_u32(rd);
    int32_t ready = kvx_rd_i32(rd);
    int32_t n = kvx_rd_i32(rd);
    bt_kvx_recv_t *r = recv_match(peer, req, gen);
    if (!r || r->method != KVX_METHOD_MAP || r->src) {
        peer->kvx->stats.n_ctrl_rejected++;
        return;
    }
    int32_t *src = n == r->n_blocks ? bt_malloc((size_t)n * sizeof *src) : NULL;
    int st = n != r->n_blocks ? BT_ERR_FORMAT : src ? BT_OK : BT_ERR_NOMEM;
    for (int32_t i = 0; src && i < n; i++) {
        src[i] = kvx_rd_i32(rd);
        if (src[i] < 0 || src[i] >= peer->layout.n_blocks)
            st = BT_ERR_FORMAT;
    }
    if (st == BT_OK && rd->err)
        st = BT_ERR_FORMAT;
    if (st != BT_OK) {
        bt_warn("kvx %s: bad source list from '%s'", peer->kvx->name, peer->name);
        bt_free(src);
        kvx_recv_end(r, st, 1);
        return;
    }
    r->src = src;
    if (ready > 0)
        r->layers_avail = ready < peer->kvx->layout.n_layers ? ready : peer->kvx->layout.n_layers;
}

void kvx_recv_on_ready(bt_kvx_peer_t *peer, kvx_rd_t *rd)
{
    uint64_t req = kvx_rd_u64(rd);
    uint32_t gen = kvx_rd_u32(rd);
    int32_t n = kvx_rd_i32(rd);
    bt_kvx_recv_t *r = recv_match(peer, req, gen);
    if (!r || r->method != KVX_METHOD_MAP || rd->err || n < 0) {
        peer->kvx->stats.n_ctrl_rejected++;
        return;
    }
    if (n > peer->kvx->layout.n_layers)
        n = peer->kvx->layout.n_layers;
    if (n > r->layers_avail)
        r->layers_avail = n;
}

void kvx_recv_on_confirm(bt_kvx_peer_t *peer, kvx_rd_t *rd)
{
    uint64_t req = kvx_rd_u64(rd);
    uint32_t gen = kvx_rd_u32(rd);
    bt_kvx_recv_t *r = recv_match(peer, req, gen);
    if (!r || !r->verify_sent || rd->err) {
        peer->kvx->stats.n_ctrl_rejected++;
        return;
    }
    r->state = KVX_X_ENDING;
    r->status = BT_OK;
    gen_remove(r);
    kvx_recv_try_finish(r);
}

/* Copies one run of blocks (consecutive on both sides) of the current layer; its bytes. */
static size_t copy_run(bt_kvx_recv_t *r)
{
    bt_kvx_t *kvx = r->kvx;
    const bt_kvx_layout_t *pl = &r->peer->layout;
    int32_t l = r->copy_layer, i = r->copy_idx, j = i + 1;
    while (j < r->n_blocks && r->src[j] == r->src[j - 1] + 1 && r->dst[j] == r->dst[j - 1] + 1)
        j++;
    size_t bytes = (size_t)(j - i) * (size_t)kvx->layout.block_bytes;
    size_t from = ((size_t)l * (size_t)pl->n_blocks + (size_t)r->src[i]) * pl->block_bytes;
    if (kvx->ops->ep_peer_read(kvx->be, r->peer->ep, from,
                               kvx->base + kvx_pool_off(kvx, l, r->dst[i]), bytes) != BT_OK) {
        kvx_recv_end(r, BT_ERR_PEER, 1);
        return bytes;
    }
    r->n_have += j - i;
    kvx->stats.n_data_msgs_recv++;
    kvx->stats.bytes_recv += (int64_t)bytes;
    r->copy_idx = j;
    if (j == r->n_blocks) {
        r->copy_idx = 0;
        r->copy_layer++;
    }
    return bytes;
}

size_t kvx_recv_copy(bt_kvx_t *kvx, size_t budget)
{
    size_t done = 0;
    for (bt_kvx_recv_t *r = kvx->recvs, *next; r && done < budget; r = next) {
        next = r->next;
        if (r->state != KVX_X_ACTIVE || r->method != KVX_METHOD_MAP || !r->src ||
            !r->peer->readable || r->copy_layer >= r->layers_avail)
            continue;
        while (done < budget && r->state == KVX_X_ACTIVE && r->copy_layer < r->layers_avail)
            done += copy_run(r);
        kvx_recv_try_finish(r);
    }
    return done;
}
