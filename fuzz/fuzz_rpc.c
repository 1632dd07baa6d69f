/* SPDX-License-Identifier: MIT */
/*
 * fuzz_rpc.c - message headers and bodies as the daemons and the router take them apart.
 *
 * The first input byte picks what the rest is:
 *   0: a Header frame, decoded by common/rpc.c's own coder and by protobuf-c: both must take or
 *      refuse it alike, and agree on every field when they take it;
 *   1: header fields, encoded and decoded again: the same fields back (the error text up to
 *      its first NUL), in the same bytes protobuf-c writes;
 *   2: a body, unpacked as the message of a method the next byte picks, then checked where a
 *      daemon checks it: an Assignment by bt_req_from_assignment for each role (what it admits
 *      must fit the daemon's limits), a GenerateRequest by the router's admission checks, a
 *      Heartbeat by the router's instance table; a GenerateResult and an InfoReply by the
 *      client library, which copies each into one block (every string terminated inside it,
 *      as the sanitizers check).
 */
#include <string.h>

#include "client/client_impl.h"
#include "common/alloc.h"
#include "common/request.h"
#include "common/rpc.h"
#include "common/status.h"
#include "fuzz.h"
#include "router/instances.h"
#include "router/limits.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_quiet_log();
    return 0;
}

static int same_fields(const bt_rpc_header_t *a, const bt_rpc_header_t *b)
{
    return a->version == b->version && a->method == b->method && a->request_id == b->request_id &&
           a->status == b->status && strcmp(a->error, b->error) == 0;
}

static void header_both(const uint8_t *b, size_t n)
{
    Baton__Header *ref = baton__header__unpack(NULL, n, b);
    bt_rpc_header_t got;
    int st = bt_rpc_header_decode(b, n, &got);
    if (!ref) {
        FUZZ_CHECK(st == BT_ERR_FORMAT, "protobuf-c refuses %zu bytes, the coder takes them", n);
        return;
    }
    FUZZ_CHECK(st == BT_OK, "protobuf-c takes %zu bytes, the coder refuses them", n);
    /* what the coder keeps of protobuf-c's error: up to the first NUL, 255 bytes */
    bt_rpc_header_t want = {.version = ref->version,
                            .method = ref->method,
                            .request_id = ref->request_id,
                            .status = ref->status};
    snprintf(want.error, sizeof want.error, "%s", ref->error ? ref->error : "");
    FUZZ_CHECK(same_fields(&got, &want), "fields differ");
    baton__header__free_unpacked(ref, NULL);
}

static void header_roundtrip(fuzz_in_t *in)
{
    bt_rpc_header_t h = {0};
    h.version = fuzz_u32(in);
    h.method = (Baton__Method)(int32_t)fuzz_u32(in);
    h.request_id = fuzz_u64(in);
    h.status = (int32_t)fuzz_u32(in);
    size_t elen = in->n < sizeof h.error - 1 ? in->n : sizeof h.error - 1;
    memcpy(h.error, in->p, elen);
    uint8_t a[BT_RPC_HEADER_ENCODED_MAX], b[BT_RPC_HEADER_ENCODED_MAX + 64];
    size_t n = bt_rpc_header_encode(&h, a);
    FUZZ_CHECK(n <= BT_RPC_HEADER_ENCODED_MAX, "%zu bytes", n);
    Baton__Header ph = BATON__HEADER__INIT;
    ph.version = h.version;
    ph.method = h.method;
    ph.request_id = h.request_id;
    ph.status = h.status;
    ph.error = h.error;
    FUZZ_CHECK(baton__header__get_packed_size(&ph) == n, "protobuf-c packs another size");
    FUZZ_CHECK(baton__header__pack(&ph, b) == n && memcmp(a, b, n) == 0,
               "protobuf-c packs other bytes");
    bt_rpc_header_t back;
    FUZZ_CHECK(bt_rpc_header_decode(a, n, &back) == BT_OK, "its own bytes refused");
    FUZZ_CHECK(same_fields(&back, &h), "fields changed on the way");
}

static void check_assignment(const Baton__Assignment *a, fuzz_in_t *in)
{
    static const Baton__Role roles[] = {BATON__ROLE__PREFILL, BATON__ROLE__DECODE,
                                        BATON__ROLE__COLOCATED, BATON__ROLE__PAIR};
    for (size_t i = 0; i < sizeof roles / sizeof roles[0]; i++) {
        bt_req_limits_t lim = {.role = roles[i],
                               .n_vocab = 1 + (int32_t)(fuzz_u8(in) % 4) * 100,
                               .n_ctx = 1 + fuzz_u8(in) * 4,
                               .block_size = 1 << (fuzz_u8(in) % 6),
                               .max_blocks = fuzz_u8(in)};
        bt_req_t *r = NULL;
        char err[256];
        int st = bt_req_from_assignment(a, 7, &lim, &r, err, sizeof err);
        if (st != BT_OK) {
            FUZZ_CHECK(r == NULL && err[0], "refused (%d) without a reason", st);
            continue;
        }
        FUZZ_CHECK(r->part == lim.role, "admitted part %d", (int)r->part);
        FUZZ_CHECK(r->n_prompt >= 1 && r->n_prompt < lim.n_ctx, "prompt of %d", r->n_prompt);
        for (int32_t k = 0; k < r->n_prompt; k++)
            FUZZ_CHECK(r->prompt[k] >= 0 && r->prompt[k] < lim.n_vocab, "token %d", r->prompt[k]);
        FUZZ_CHECK(r->max_ctx > r->n_prompt && r->max_ctx <= lim.n_ctx, "max_ctx %d", r->max_ctx);
        FUZZ_CHECK(r->max_tokens == r->max_ctx - r->n_prompt, "max_tokens %d", r->max_tokens);
        int32_t need = bt_blocks_for(r->part == BATON__ROLE__PREFILL ? r->n_prompt : r->max_ctx,
                                     lim.block_size);
        FUZZ_CHECK(need <= lim.max_blocks, "needs %d blocks of %d", need, lim.max_blocks);
        if (r->part == BATON__ROLE__PREFILL) {
            FUZZ_CHECK(r->resv.n_tokens == r->n_prompt &&
                           r->resv.n_blocks == bt_blocks_for(r->n_prompt, lim.block_size),
                       "reservation of %d blocks for %d tokens", r->resv.n_blocks,
                       r->resv.n_tokens);
            for (int32_t k = 0; k < r->resv.n_blocks; k++)
                FUZZ_CHECK(r->resv.blocks[k] >= 0, "block id %d", r->resv.blocks[k]);
        }
        FUZZ_CHECK(strlen(r->peer) <= BT_REQ_MAX_PEER, "peer name");
        FUZZ_CHECK(r->peer_kvx_len <= BT_REQ_MAX_KVX_ADDRESS, "peer address");
        for (int32_t k = 0; k < r->stop.n_stop_strs; k++)
            FUZZ_CHECK(strlen(r->stop.stop_strs[k]) >= 1, "empty stop string");
        bt_req_destroy(r);
    }
}

static void check_generate(const Baton__GenerateRequest *req)
{
    static const router_limits_t lim = {.max_prompt_tokens = 100,
                                        .max_tokens = 50,
                                        .default_max_tokens = 20,
                                        .n_vocab = 300,
                                        .slo_ttft_ms = 1000,
                                        .slo_tpot_ms = 100};
    char err[256];
    fuzz_admit(&lim, req, err, sizeof err);
}

static void check_heartbeat(const Baton__Heartbeat *hb)
{
    router_instances_t *set = NULL;
    router_instances_params_t params = {.max_instances = 4};
    FUZZ_CHECK(router_instances_create(&params, &set) == BT_OK, "create");
    router_instance_t *inst = NULL;
    router_hb_event_t ev;
    /* twice: a registration, then a refresh of the same instance */
    for (int i = 0; i < 2; i++) {
        int st = router_instances_heartbeat(set, (const uint8_t *)"peer", 4, hb, 1000 + 500 * i,
                                            &inst, &ev);
        if (st != BT_OK) {
            FUZZ_CHECK(st == BT_ERR_INVAL, "status %d", st);
            break;
        }
        FUZZ_CHECK(ev == (i ? ROUTER_HB_REFRESH : ROUTER_HB_NEW), "event %d", (int)ev);
        router_instance_eligible(inst);
    }
    router_instances_expire(set, 1u << 30, NULL, NULL);
    FUZZ_CHECK(router_instances_count(set) == 0, "a silent instance kept");
    router_instances_destroy(set);
}

/* Every string of a copy reads to its NUL; the text to its length. */
static size_t str_sum(const char *s)
{
    FUZZ_CHECK(s != NULL, "a NULL string in a copy");
    return strlen(s);
}

static void check_result(const Baton__GenerateResult *g, const bt_rpc_header_t *h)
{
    bt_client_result_t *r = client_result_make(h->request_id, h->status, h->error, g);
    FUZZ_CHECK(r != NULL, "no copy");
    size_t n = str_sum(r->error) + str_sum(r->prefill_instance) + str_sum(r->decode_instance);
    for (size_t i = 0; i < r->n_events; i++)
        n += str_sum(r->events[i].instance);
    FUZZ_CHECK(r->n_ids == g->n_ids &&
                   (r->n_ids == 0 || r->ids[r->n_ids - 1] == g->ids[g->n_ids - 1]),
               "ids");
    FUZZ_CHECK(r->text[r->text_len] == 0, "text not terminated at its length (%zu)", n);
    bt_client_result_free(r);
}

static void check_info(const Baton__InfoReply *in)
{
    bt_client_info_t *info = client_info_make(in);
    FUZZ_CHECK(info != NULL, "no copy");
    size_t n = str_sum(info->model) + str_sum(info->policy);
    for (size_t i = 0; i < info->n_instances; i++)
        n += str_sum(info->instances[i].id) + str_sum(info->instances[i].partner);
    FUZZ_CHECK(info->n_instances == in->n_instances, "%zu instances of %zu (%zu)",
               info->n_instances, in->n_instances, n);
    bt_client_info_free(info);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_in_t in = {data, size};
    switch (fuzz_u8(&in) % 3) {
    case 0: header_both(in.p, in.n); return 0;
    case 1: header_roundtrip(&in); return 0;
    default: break;
    }
    static const Baton__Method methods[] = {
        BATON__METHOD__GENERATE,  BATON__METHOD__TOKENS,      BATON__METHOD__RESULT,
        BATON__METHOD__HEARTBEAT, BATON__METHOD__ASSIGN,      BATON__METHOD__ASSIGN_REPLY,
        BATON__METHOD__DONE,      BATON__METHOD__HANDOFF,     BATON__METHOD__RESUME,
        BATON__METHOD__SET_ROLE,  BATON__METHOD__FIRST_TOKEN, BATON__METHOD__HEALTH,
        BATON__METHOD__INFO,      BATON__METHOD__RESET,
    };
    Baton__Method method = methods[fuzz_u8(&in) % (sizeof methods / sizeof methods[0])];
    /* The first two bytes of the rest size the body; what follows it feeds the checks. */
    size_t blen = fuzz_u8(&in);
    blen |= (size_t)fuzz_u8(&in) << 8;
    blen = blen < in.n ? blen : in.n;
    bt_rpc_msg_t m = {.hdr = {.version = BT_RPC_VERSION, .method = method, .request_id = 1}};
    m.body = blen ? bt_malloc(blen) : NULL;
    if (blen)
        memcpy(m.body, in.p, blen);
    m.body_len = blen;
    in.p += blen;
    in.n -= blen;
    ProtobufCMessage *body = NULL;
    if (bt_rpc_unpack(&m, &body) == BT_OK && body) {
        FUZZ_CHECK(body->descriptor == bt_rpc_body_type(method), "unpacked as another type");
        switch (method) {
        case BATON__METHOD__ASSIGN: check_assignment((Baton__Assignment *)body, &in); break;
        case BATON__METHOD__GENERATE: check_generate((Baton__GenerateRequest *)body); break;
        case BATON__METHOD__HEARTBEAT: check_heartbeat((Baton__Heartbeat *)body); break;
        case BATON__METHOD__RESULT: check_result((Baton__GenerateResult *)body, &m.hdr); break;
        default: break;
        }
    }
    if (body)
        protobuf_c_message_free_unpacked(body, NULL);
    if (method == BATON__METHOD__INFO) { /* the router's reply: an InfoReply (client.c: call) */
        Baton__InfoReply *info = baton__info_reply__unpack(NULL, m.body_len, m.body);
        if (info) {
            check_info(info);
            baton__info_reply__free_unpacked(info, NULL);
        }
    }
    bt_free(m.body);
    return 0;
}
