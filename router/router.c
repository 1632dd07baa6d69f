/* SPDX-License-Identifier: MIT */
/*
 * router.c - the router's life cycle, event loop and client methods (see router.h).
 *
 * The loop sleeps on both sockets' descriptors (zmtp.h: the sockets are served on this thread,
 * with no I/O thread of their own), then drains each without blocking in bounded rounds (so
 * that a flood from one side cannot starve the other, and one wake-up serves many messages
 * when the router is busy), then runs the housekeeping tick when it is due:
 * instance liveness, request deadlines, the placement queue, and the drain. Messages from
 * daemons are served first in each round because they complete work and free capacity. At
 * light load the cost of a message is mostly system calls and thread wake-ups, not the
 * router's own work, so the loop makes as few of them per wake-up as it safely can.
 */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>

#include "common/alloc.h"
#include "common/clock.h"
#include "common/gguf.h"
#include "common/log.h"
#include "common/modelid.h"
#include "common/status.h"
#include "router_impl.h"

#define ROUTER_BATCH 64                   /* messages per socket per round */
#define ROUTER_SCRATCH_BYTES (256u << 10) /* unpacking daemons' messages */

/* --- model, tokenizer, profile -------------------------------------------------------- */

static int load_gguf(router_t *r, const char *path, char *id, size_t cap)
{
    bt_gguf_t *g = NULL;
    bt_model_hparams_t hp;
    int st = bt_gguf_open(path, &g);
    if (st == BT_OK)
        st = bt_model_id_hparams_from_gguf(g, path, &hp);
    if (st == BT_OK)
        st = bt_tokenizer_from_gguf(g, &r->tok);
    if (st == BT_OK && bt_tokenizer_n_vocab(r->tok) != hp.n_vocab) {
        bt_error("model %s: the tokenizer has %d tokens but the model %d", path,
                 bt_tokenizer_n_vocab(r->tok), hp.n_vocab);
        st = BT_ERR_FORMAT;
    }
    uint32_t n_ctx = 0;
    if (st == BT_OK && bt_gguf_get_u32(g, "llama.context_length", &n_ctx) == BT_OK)
        r->n_ctx = n_ctx;
    if (st == BT_OK)
        st = bt_model_id_str(&hp, id, cap);
    r->limits.n_vocab = st == BT_OK ? hp.n_vocab : 0;
    bt_gguf_close(g);
    return st;
}

/* llama2.c checkpoints have no metadata to read apart from the weights: load the model. */
static int load_llama2c(router_t *r, const char *path, char *id, size_t cap)
{
    bt_model_params_t mp = {.path = path, .tokenizer_path = r->p.tokenizer_path};
    int st = bt_model_load(&mp, &r->model);
    if (st != BT_OK)
        return st;
    r->tok = r->model->tok;
    r->n_ctx = (uint32_t)r->model->hp.n_ctx_train;
    r->limits.n_vocab = r->model->hp.n_vocab;
    return bt_model_id_str(&r->model->hp, id, cap);
}

static int load_model(router_t *r, char *id, size_t cap)
{
    const char *path = r->p.model_path;
    char magic[4] = {0};
    FILE *f = fopen(path, "rb");
    if (!f || fread(magic, 1, 4, f) != 4) {
        bt_error("model %s: cannot read", path);
        if (f)
            fclose(f);
        return BT_ERR_IO;
    }
    fclose(f);
    int st = memcmp(magic, "GGUF", 4) == 0 ? load_gguf(r, path, id, cap)
                                           : load_llama2c(r, path, id, cap);
    if (st != BT_OK)
        bt_error("model %s: cannot load its tokenizer and id: %s", path, bt_status_str(st));
    return st;
}

static int make_policy(router_t *r)
{
    int mode = router_mode_parse(r->p.mode);
    if (mode < 0) {
        bt_error("unknown mode '%s' (auto, disagg, colocated)", r->p.mode);
        return BT_ERR_INVAL;
    }
    r->mode = (router_mode_t)mode;
    if (r->p.profile_path) {
        if (bt_profile_load(r->p.profile_path, &r->profile) != BT_OK)
            return BT_ERR_INVAL;
        r->has_profile = 1;
    }
    router_policy_params_t pp = {.profile = r->has_profile ? &r->profile : NULL};
    int st = router_policy_create(r->policy_name, &pp, &r->policy);
    if (st == BT_ERR_NOT_FOUND)
        bt_error("unknown policy '%s' (%s)", r->policy_name, router_policy_list());
    else if (st == BT_ERR_INVAL)
        bt_error("policy %s needs a latency profile (--profile FILE)", r->policy_name);
    return st;
}

/* --- sockets -------------------------------------------------------------------------- */

/* Both sockets are served on the loop's thread (zmtp.h): a send to a peer that went away fails
 * instead of vanishing, so the router learns that a client left or a daemon is unreachable, and
 * a daemon or client that reconnects with the same identity takes its identity over. */
static int open_socket(const char *endpoint, int stamp_input, bt_zmtp_t **out)
{
    /* A peer that has 8 MiB unread (hundreds of thousands of tokens) is stuck or gone: the
     * next send to it fails and its requests end, rather than memory growing per such peer.
     * One message always fits an empty queue, however large. */
    bt_zmtp_params_t zp = {.max_frame = BT_RPC_MAX_BODY_BYTES + BT_RPC_MAX_HEADER_BYTES,
                           .max_queued = 8u << 20,
                           .rx_stamps = stamp_input};
    int st = bt_zmtp_bind(endpoint, &zp, out);
    if (st != BT_OK)
        bt_error("router: cannot serve %s", endpoint);
    return st;
}

static int make_tables(router_t *r, const char *model_id)
{
    router_instances_params_t ip = {.max_instances = r->p.max_instances,
                                    .dead_after_ms = r->p.dead_after_ms,
                                    .model_id = model_id};
    int st = router_instances_create(&ip, &r->inst);
    if (st == BT_OK)
        st = router_reqtable_create(&r->table);
    return st;
}

static void set_limits(router_t *r)
{
    r->limits.max_prompt_tokens = r->p.max_prompt_tokens;
    r->limits.max_tokens = r->p.max_tokens;
    r->limits.default_max_tokens = r->p.default_max_tokens;
    r->limits.slo_ttft_ms = r->p.slo_ttft_ms;
    r->limits.slo_tpot_ms = r->p.slo_tpot_ms;
    r->limits.tok = r->tok;
}

int router_create(const router_params_t *params, router_t **out)
{
    router_t *r = bt_calloc(1, sizeof *r);
    if (!r)
        return BT_ERR_NOMEM;
    r->p = *params;
    r->policy_name = bt_strdup(params->policy ? params->policy : "least-loaded");
    /* Ids start from the clock so that a restarted router does not reuse recent ones. */
    r->next_id = bt_rpc_now_ns() / 1000u;
    r->now_ms = router_now_ms();
    r->scratch_cap = ROUTER_SCRATCH_BYTES;
    r->scratch = bt_malloc(r->scratch_cap);
    char id[BT_MODEL_ID_MAX] = "";
    int st = r->policy_name && r->scratch ? BT_OK : BT_ERR_NOMEM;
    if (st == BT_OK && params->model_path)
        st = load_model(r, id, sizeof id);
    if (st == BT_OK && params->model_id && params->model_id[0])
        snprintf(id, sizeof id, "%s", params->model_id);
    if (st == BT_OK)
        st = make_policy(r);
    if (st == BT_OK)
        st = make_tables(r, id);
    set_limits(r);
    r->p.model_path = r->p.tokenizer_path = r->p.model_id = r->p.policy = NULL; /* borrowed */
    r->p.mode = r->p.profile_path = r->p.metrics_addr = NULL;
    router_stats_init(r);
    if (st == BT_OK && params->metrics_port > 0)
        st = router_metrics_open(params->metrics_addr, params->metrics_port, router_stats_render, r,
                                 &r->metrics);
    if (st == BT_OK)
        st = open_socket(params->client_endpoint, params->stamp_input, &r->clients);
    if (st == BT_OK)
        st = open_socket(params->cluster_endpoint, params->stamp_input, &r->cluster);
    if (st != BT_OK) {
        router_destroy(r);
        return st;
    }
    bt_info("router: clients on %s, daemons on %s, policy %s, model %s",
            bt_zmtp_endpoint(r->clients), bt_zmtp_endpoint(r->cluster), r->policy_name,
            id[0] ? id : "(adopted from the first instance)");
    *out = r;
    return BT_OK;
}

static void free_request(void *ctx, router_request_t *rq)
{
    (void)ctx;
    router_request_destroy(rq);
}

void router_destroy(router_t *r)
{
    if (!r)
        return;
    if (r->table) {
        router_reqtable_each(r->table, free_request, NULL);
        router_reqtable_destroy(r->table);
    }
    bt_zmtp_close(r->clients);
    bt_zmtp_close(r->cluster);
    router_metrics_close(r->metrics);
    router_instances_destroy(r->inst);
    router_policy_destroy(r->policy);
    if (r->model)
        bt_model_destroy(r->model);
    else
        bt_tokenizer_destroy(r->tok);
    bt_free(r->cands);
    bt_free(r->batch);
    bt_free(r->scratch);
    bt_free(r->policy_name);
    bt_free(r);
}

void router_stop(router_t *r)
{
    atomic_store(&r->stop_requested, 1);
}

/* --- client methods ------------------------------------------------------------------- */

int router_send_client(router_t *r, router_request_t *rq, Baton__Method method, int status,
                       const char *error, const ProtobufCMessage *body)
{
    if (rq->client_gone)
        return BT_ERR_IO;
    bt_rpc_route_t route;
    route.n = 1;
    route.len[0] = rq->client_len;
    memcpy(route.id[0], rq->client, rq->client_len);
    bt_rpc_header_t h;
    bt_rpc_header_init(&h, method, rq->client_req_id);
    h.status = status;
    if (error)
        snprintf(h.error, sizeof h.error, "%s", error);
    int st = bt_rpc_zsend(r->clients, &route, &h, body);
    if (st != BT_OK) {
        rq->client_gone = 1;
        bt_info("req %llu (client %llu): client unreachable (%s); cancelling",
                (unsigned long long)rq->id, (unsigned long long)rq->client_req_id,
                bt_status_name(st));
    }
    return st;
}

/* A refused GENERATE: an error RESULT (it was never accepted, so no events). */
static void reject(router_t *r, const bt_rpc_msg_t *m, int status, const char *why)
{
    bt_rpc_header_t h;
    bt_rpc_header_init(&h, BATON__METHOD__RESULT, m->hdr.request_id);
    h.status = status;
    snprintf(h.error, sizeof h.error, "%s", why);
    Baton__GenerateResult res = BATON__GENERATE_RESULT__INIT;
    res.finish_reason = BATON__FINISH_REASON__FINISH_FAILED;
    bt_rpc_zsend(r->clients, &m->route, &h, &res.base);
    r->n_rejected++;
    bt_debug("client request %llu refused: %s: %s", (unsigned long long)m->hdr.request_id,
             bt_status_name(status), why);
}

/* Admission before anything is allocated: draining, capacity. */
static int admit(router_t *r, const bt_rpc_msg_t *m, char *why, size_t cap)
{
    size_t waiting = r->n_state[RQ_QUEUED] + r->n_state[RQ_ASSIGNING];
    if (r->draining) {
        snprintf(why, cap, "the router is draining");
        return BT_ERR_DRAINING;
    }
    if (waiting >= (size_t)r->p.max_queue ||
        router_reqtable_count(r->table) >= (size_t)r->p.max_requests) {
        snprintf(why, cap, "%zu requests waiting, %zu in flight", waiting,
                 router_reqtable_count(r->table));
        return BT_ERR_OVERLOADED;
    }
    return BT_OK;
}

static int accept_request(router_t *r, const bt_rpc_msg_t *m, Baton__GenerateRequest *req,
                          const router_admit_t *a)
{
    router_request_t *rq = NULL;
    int st = router_request_create(req, r->tok, &rq);
    if (st != BT_OK) {
        bt_free(a->prompt_owned);
        return st;
    }
    rq->prompt_owned = a->prompt_owned;
    rq->prompt = a->prompt;
    rq->n_prompt = a->n_prompt;
    rq->max_tokens = a->max_tokens;
    rq->slo_ttft_ms = a->slo_ttft_ms;
    rq->slo_tpot_ms = a->slo_tpot_ms;
    rq->id = r->next_id++;
    rq->client_req_id = m->hdr.request_id;
    rq->client_len = m->route.len[0];
    memcpy(rq->client, m->route.id[0], rq->client_len);
    rq->issued_ns = bt_rpc_now_ns();
    rq->wait_deadline_ms = r->now_ms + (uint64_t)r->p.queue_timeout_ms;
    if (req->n_resume_ids) {
        /* the client has these already: taken as delivered (text made too), placed as a
         * failover is, with skip_tokens past them */
        rq_relay_t had;
        st = router_request_push(rq, 0, req->resume_ids, req->n_resume_ids, NULL, 0, &had);
        if (st != BT_OK) {
            router_request_destroy(rq);
            return st;
        }
        bt_debug("req %llu (client %llu): a resubmission after %zu tokens",
                 (unsigned long long)rq->id, (unsigned long long)rq->client_req_id,
                 req->n_resume_ids);
    }
    if ((st = router_request_event(rq, BATON__EVENT_KIND__ISSUED, rq->issued_ns, "router", 0)) !=
            BT_OK ||
        (st = router_reqtable_insert(r->table, rq)) != BT_OK) {
        router_request_destroy(rq);
        return st;
    }
    r->n_state[RQ_QUEUED]++;
    r->n_accepted++;
    rq_list_push(&r->queue, rq, RQ_LIST_QUEUE, 0);
    if (rq == r->queue.head) /* nothing ahead of it: place it now */
        router_place(r, rq, 0);
    return BT_OK;
}

static void on_generate(router_t *r, const bt_rpc_msg_t *m)
{
    char why[256];
    if (router_reqtable_by_client(r->table, m->route.id[0], m->route.len[0], m->hdr.request_id)) {
        /* Not a RESULT: that would read as the end of the request already in flight. */
        bt_rpc_zreply_error(r->clients, m, BT_ERR_INVAL,
                            "request id %llu is already in flight on this connection",
                            (unsigned long long)m->hdr.request_id);
        return;
    }
    int st = admit(r, m, why, sizeof why);
    if (st != BT_OK) {
        reject(r, m, st, why);
        return;
    }
    ProtobufCMessage *body = NULL;
    if (bt_rpc_unpack(m, &body) != BT_OK) {
        reject(r, m, BT_ERR_FORMAT, "GenerateRequest does not parse");
        return;
    }
    Baton__GenerateRequest *req = (Baton__GenerateRequest *)body;
    router_admit_t a;
    st = router_limits_check(&r->limits, req, &a, why, sizeof why);
    if (st != BT_OK) {
        protobuf_c_message_free_unpacked(body, NULL);
        reject(r, m, st, why);
        return;
    }
    st = accept_request(r, m, req, &a);
    if (st != BT_OK)
        reject(r, m, st, "cannot accept the request");
}

static void on_cancel(router_t *r, const bt_rpc_msg_t *m)
{
    router_request_t *rq =
        router_reqtable_by_client(r->table, m->route.id[0], m->route.len[0], m->hdr.request_id);
    if (!rq) {
        bt_rpc_zreply_error(r->clients, m, BT_ERR_NOT_FOUND, "no request %llu in flight",
                            (unsigned long long)m->hdr.request_id);
        return;
    }
    bt_debug("req %llu (client %llu): cancel", (unsigned long long)rq->id,
             (unsigned long long)rq->client_req_id);
    router_cancel(r, rq);
}

void router_health(const router_t *r, Baton__HealthReply *out)
{
    Baton__HealthReply h = BATON__HEALTH_REPLY__INIT;
    for (int i = 0; i < router_instances_count(r->inst); i++) {
        const router_instance_t *x = router_instances_at(r->inst, i);
        if (!x->alive || x->draining || !x->model_ok)
            continue;
        h.n_prefill += x->role == BATON__ROLE__PREFILL;
        h.n_decode += x->role == BATON__ROLE__DECODE;
        h.n_colocated += x->role == BATON__ROLE__COLOCATED || x->role == BATON__ROLE__PAIR;
    }
    h.ok = !r->draining && ((h.n_prefill && h.n_decode) || h.n_colocated);
    h.queued = (uint32_t)(r->n_state[RQ_QUEUED] + r->n_state[RQ_ASSIGNING]);
    h.running =
        (uint32_t)(r->n_state[RQ_RUNNING] + r->n_state[RQ_CANCELLING] + r->n_state[RQ_FINISHING]);
    *out = h;
}

static void on_health(router_t *r, const bt_rpc_msg_t *m)
{
    Baton__HealthReply h;
    router_health(r, &h);
    bt_rpc_header_t hdr;
    bt_rpc_header_init(&hdr, BATON__METHOD__HEALTH, m->hdr.request_id);
    bt_rpc_zsend(r->clients, &m->route, &hdr, &h.base);
}

static void on_info(router_t *r, const bt_rpc_msg_t *m)
{
    int n = router_instances_count(r->inst);
    Baton__InstanceInfo *ii = bt_calloc((size_t)n + 1, sizeof *ii);
    Baton__InstanceInfo **iip = bt_calloc((size_t)n + 1, sizeof *iip);
    Baton__InfoReply info = BATON__INFO_REPLY__INIT;
    info.model = (char *)router_instances_model_id(r->inst);
    info.n_vocab = r->limits.n_vocab > 0 ? (uint32_t)r->limits.n_vocab : 0;
    info.n_ctx = r->n_ctx;
    info.max_prompt_tokens = r->p.max_prompt_tokens;
    info.max_tokens = r->p.max_tokens;
    info.policy = r->policy_name;
    info.protocol_version = BT_RPC_VERSION;
    for (int i = 0; ii && iip && i < n; i++) {
        router_instance_t *x = router_instances_at(r->inst, i);
        baton__instance_info__init(&ii[i]);
        ii[i].id = x->name;
        ii[i].role = x->role;
        ii[i].alive = x->alive;
        ii[i].queue_len = x->queue_len;
        ii[i].running = x->running;
        ii[i].kv_free_blocks = x->kv_free_blocks;
        ii[i].kv_total_blocks = x->kv_total_blocks;
        ii[i].serving = x->serving;
        ii[i].partner = x->partner;
        ii[i].replicas = x->replicas;
        iip[i] = &ii[i];
        info.n_instances = (size_t)i + 1;
    }
    info.instances = iip;
    bt_rpc_header_t hdr;
    bt_rpc_header_init(&hdr, BATON__METHOD__INFO, m->hdr.request_id);
    bt_rpc_zsend(r->clients, &m->route, &hdr, &info.base);
    bt_free(ii);
    bt_free(iip);
}

static void on_client(router_t *r, const bt_rpc_msg_t *m)
{
    switch (m->hdr.method) {
    case BATON__METHOD__GENERATE: on_generate(r, m); break;
    case BATON__METHOD__CANCEL: on_cancel(r, m); break;
    case BATON__METHOD__HEALTH: on_health(r, m); break;
    case BATON__METHOD__INFO: on_info(r, m); break;
    default:
        if (m->hdr.status == BT_OK)
            bt_rpc_zreply_error(r->clients, m, BT_ERR_UNSUPPORTED,
                                "method %d is not a client method", (int)m->hdr.method);
        break;
    }
}

/* --- the loop ------------------------------------------------------------------------- */

static int serve_socket(router_t *r, bt_zmtp_t *sock, int budget)
{
    int n = 0;
    for (; n < budget; n++) {
        bt_rpc_msg_t m;
        int st = bt_rpc_zrecv(sock, &m);
        if (st == BT_AGAIN) {
            bt_rpc_msg_fini(&m);
            break;
        }
        if (m.rx_ns)
            router_stats_input_wait(r, m.rx_ns);
        if (st != BT_OK) {
            if (m.hdr.status == BT_OK)
                bt_rpc_zreply_error(sock, &m, st, "%s",
                                    st == BT_ERR_FORMAT ? "malformed message"
                                                        : "unsupported version or method");
        } else if (sock == r->clients) {
            on_client(r, &m);
        } else {
            router_on_cluster(r, &m);
        }
        bt_rpc_msg_fini(&m);
    }
    /* Messages handled here may have queued output on either socket: write it now rather than
     * after the next look for input. */
    bt_zmtp_flush(r->clients);
    bt_zmtp_flush(r->cluster);
    return n;
}

static void fail_all(void *ctx, router_request_t *rq)
{
    router_t *r = ctx;
    r->batch[r->batch_n++] = rq;
}

static void drain_tick(router_t *r, uint64_t now)
{
    if (!r->draining && atomic_load(&r->stop_requested)) {
        r->draining = 1;
        r->drain_deadline_ms = now + (uint64_t)r->p.drain_timeout_ms;
        bt_info("draining: %zu requests in flight", router_reqtable_count(r->table));
    }
    if (!r->draining || now < r->drain_deadline_ms || router_reqtable_count(r->table) == 0)
        return;
    size_t n = router_reqtable_count(r->table);
    if (r->batch_cap < n) {
        router_request_t **b = bt_realloc(r->batch, n * sizeof *b);
        if (!b)
            return;
        r->batch = b;
        r->batch_cap = n;
    }
    r->batch_n = 0;
    router_reqtable_each(r->table, fail_all, r);
    for (size_t i = 0; i < r->batch_n; i++)
        router_finish(r, r->batch[i], BATON__FINISH_REASON__FINISH_FAILED, BT_ERR_DRAINING,
                      "the router shut down before the request finished");
}

static void on_dead(void *ctx, router_instance_t *inst)
{
    router_on_instance_lost(ctx, inst);
}

static void housekeeping(router_t *r, uint64_t now)
{
    router_instances_expire(r->inst, now, on_dead, r);
    router_timeouts(r, now);
    router_pairs_tick(r);
    if (r->queue.n)
        router_dispatch_queue(r);
    drain_tick(r, now);
    router_metrics_poll(r->metrics, now);
}

/* Serves both sockets in bounded rounds until a round finds nothing. Returns 1 when the sockets
 * were left empty with nothing sent since they were found so, which lets the caller sleep on
 * their descriptors alone (see wait_sockets). first: the sockets to read in the first round
 * (bit 0 the cluster, bit 1 the clients); it may leave out a socket that was left empty and
 * whose descriptor has not fired since, as it has nothing new. */
static int serve_rounds(router_t *r, int first)
{
    for (int round = 0, which = first; round < 16; round++, which = 3) {
        int got = 0;
        if (which & 1)
            got += serve_socket(r, r->cluster, ROUTER_BATCH);
        if (which & 2)
            got += serve_socket(r, r->clients, ROUTER_BATCH);
        if (r->queue_dirty && r->queue.n) {
            router_dispatch_queue(r);
            continue; /* it may have sent: look again before sleeping */
        }
        if (!got)
            return 1; /* what it read is empty; what it did not read had no signal */
    }
    return 0;
}

/* Sleeps until a socket's descriptor fires or timeout_ms pass; returns which fired (as in
 * serve_rounds). Each socket's descriptor is its epoll set, readable while any of its
 * connections has input, a peer to accept, or room for output it queued; serve_rounds has read
 * both sockets empty (and written what they queued) before the loop sleeps here. */
static int wait_sockets(const int fd[2], long timeout_ms)
{
    struct pollfd p[2] = {{.fd = fd[0], .events = POLLIN}, {.fd = fd[1], .events = POLLIN}};
    int n = poll(p, 2, (int)timeout_ms);
    if (n <= 0)
        return n < 0 && errno != EINTR ? -1 : 0;
    return (p[0].revents ? 1 : 0) | (p[1].revents ? 2 : 0);
}

int router_run(router_t *r)
{
    const int fd[2] = {bt_zmtp_fd(r->cluster), bt_zmtp_fd(r->clients)};
    uint64_t next_tick = router_now_ms();
    double spin_until = 0; /* ms: poll without sleeping until then (--poll-us) */
    int idle = 0;
    for (;;) {
        uint64_t now = r->now_ms = router_now_ms();
        if (now >= next_tick) {
            housekeeping(r, now);
            next_tick = now + (uint64_t)r->p.tick_ms;
            idle = 0; /* it may have sent */
            if (r->draining && router_reqtable_count(r->table) == 0)
                break;
        }
        int which = 3;
        if (idle) {
            int spin = r->p.busy_poll || (spin_until > 0 && bt_mono_ms() < spin_until);
            long wait_ms = spin ? 0 : (long)(next_tick > now ? next_tick - now : 0);
            which = wait_sockets(fd, wait_ms);
            if (which < 0) {
                bt_error("poll: %s", strerror(errno));
                return BT_ERR_IO;
            }
            r->now_ms = router_now_ms();
            if (which && r->p.poll_us)
                spin_until = bt_mono_ms() + r->p.poll_us / 1000.0;
        }
        idle = which ? serve_rounds(r, which) : 1;
        if (atomic_load(&r->stop_requested) && !r->draining)
            next_tick = 0; /* start draining now */
    }
    bt_info("router: %llu accepted, %llu refused, %llu finished (%llu failed, %llu cancelled), "
            "%llu failovers",
            (unsigned long long)r->n_accepted, (unsigned long long)r->n_rejected,
            (unsigned long long)r->n_finished, (unsigned long long)r->n_failed,
            (unsigned long long)r->n_cancelled, (unsigned long long)r->n_failovers);
    bt_zmtp_flush(r->clients); /* the last results */
    bt_zmtp_flush(r->cluster);
    return BT_OK;
}
