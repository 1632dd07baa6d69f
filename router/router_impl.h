/* SPDX-License-Identifier: MIT */
/*
 * router_impl.h - the router's state, shared by its source files: router.c (lifecycle, event
 * loop, client methods, housekeeping), router_place.c (placement, the request state machine,
 * failover, results) and router_cluster.c (the daemons' messages).
 *
 * A request is in at most one list: the queue (waiting for placement, FIFO) or the timed list
 * (ASSIGNING, CANCELLING, FINISHING: something must happen before its deadline). RUNNING
 * requests are in neither; what ends them is a message or an instance's death.
 */
#ifndef BATON_ROUTER_IMPL_H
#define BATON_ROUTER_IMPL_H

#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>

#include "common/model.h"
#include "common/profile.h"
#include "common/rpc.h"
#include "common/tokenizer.h"
#include "instances.h"
#include "limits.h"
#include "metrics.h"
#include "policy.h"
#include "reqtable.h"
#include "request.h"
#include "router.h"

enum { RQ_LIST_NONE = 0, RQ_LIST_QUEUE, RQ_LIST_TIMED };

typedef struct {
    router_request_t *head, *tail;
    size_t n;
} rq_list_t;

struct router {
    router_params_t p;
    char *policy_name;
    bt_zmtp_t *clients, *cluster; /* the two ROUTER sockets */
    router_instances_t *inst;
    router_policy_t *policy;
    router_mode_t mode;
    router_reqtable_t *table;
    router_limits_t limits;
    bt_tokenizer_t *tok; /* owned (GGUF), or borrowed from model (llama2.c) */
    bt_model_t *model;   /* only for llama2.c checkpoints */
    bt_profile_t profile;
    int has_profile;
    uint32_t n_ctx;

    rq_list_t queue, timed;
    size_t n_state[RQ_FINISHING + 1]; /* requests per state */
    uint64_t next_id;                 /* next cluster id */
    int queue_dirty;                  /* an instance changed: try the queue again */

    atomic_int stop_requested;
    int draining;
    uint64_t drain_deadline_ms;

    router_instance_t **cands; /* (cand_cap) scratch for the candidate lists */
    int cand_cap;
    router_request_t **batch; /* (batch_cap) scratch for requests of a dead instance */
    size_t batch_n, batch_cap;

    uint64_t now_ms;  /* monotonic, read once per round of the loop */
    uint8_t *scratch; /* (scratch_cap) for unpacking daemons' messages */
    size_t scratch_cap, scratch_used;
    int scratch_spilled;

    uint64_t n_accepted, n_rejected, n_finished, n_failed, n_cancelled, n_failovers;
    uint64_t n_orphans; /* ABORTs of what an instance held that the router did not place there */
    router_metrics_t *metrics;             /* --metrics-port; NULL without */
    router_hist_t h_ttft, h_tpot, h_total; /* completed requests, seconds, as relayed (only
                                            * with the endpoint: nothing else reads them) */
    router_hist_t h_wait; /* stamp_input: messages' time in the sockets before being read */
};

/* The cluster's health as HEALTH reports it (router.c). */
void router_health(const router_t *r, Baton__HealthReply *h);
/* A completed request's TTFT, TPOT and duration into the histograms (router_stats.c). */
void router_stats_observe(router_t *r, const router_request_t *rq, uint64_t now_ns);
/* GET handler of the metrics endpoint (router_stats.c). */
int router_stats_render(void *ctx, const char *path, FILE *f);
/* A message the kernel stamped at rx_ns (realtime ns) is being read now (router_stats.c). */
void router_stats_input_wait(router_t *r, uint64_t rx_ns);
/* Sets up the histograms (router_stats.c). */
void router_stats_init(router_t *r);

/* Monotonic milliseconds: the time base of deadlines and liveness. */
uint64_t router_now_ms(void);

/* Lists (router_place.c). */
void rq_list_push(rq_list_t *l, router_request_t *rq, int which, int front);
void rq_list_remove(router_t *r, router_request_t *rq);
void rq_set_state(router_t *r, router_request_t *rq, rq_state_t state);

/* The request life cycle (router_place.c). */
void router_place(router_t *r, router_request_t *rq, int probe);
/* The part no longer holds its instance as a probe (it ends, or moves); returns whether it did. */
int router_probe_drop(rq_part_t *part);
/* The part's ASSIGN was answered: its probe, if it is one, lets the queue go on. */
void router_probe_answered(router_t *r, rq_part_t *part);
void router_dispatch_queue(router_t *r);
void router_failover(router_t *r, router_request_t *rq, int status, const char *why);
void router_finish(router_t *r, router_request_t *rq, Baton__FinishReason reason, int status,
                   const char *why);
void router_cancel(router_t *r, router_request_t *rq);
void router_decode_accepted(router_t *r, router_request_t *rq, const Baton__AssignReply *reply);
void router_refused(router_t *r, router_request_t *rq, router_instance_t *inst, int status,
                    const char *why);
void router_abort_part(router_t *r, router_request_t *rq, rq_part_t *part);
/* A placement inst could not take (its connection gone, no answer in time): inst gets no new
 * work until it heartbeats again, and the request, nothing of it started, goes back to the
 * head of the queue to be placed elsewhere (no retry counted). With unsent set, says that the
 * ASSIGN could not be sent to inst (else the caller has said why). */
void router_place_elsewhere(router_t *r, router_request_t *rq, router_instance_t *inst, int unsent);
/* Sends part's instance its ASSIGN (role; replica: a pair's replica part; peer and resv may be
 * NULL) and counts it on the instance. */
int router_send_assign(router_t *r, router_request_t *rq, rq_part_t *part, Baton__Role role,
                       int replica, const router_instance_t *peer, Baton__KvReservation *resv);
void router_detach_parts(router_request_t *rq);
void router_relay(router_t *r, router_request_t *rq, const rq_relay_t *rel, uint64_t time_ns);
void router_check_finished(router_t *r, router_request_t *rq);
void router_timeouts(router_t *r, uint64_t now_ms);

/* The daemons' messages and liveness (router_cluster.c). */
void router_on_cluster(router_t *r, bt_rpc_msg_t *m);
/* Unpacks a daemon's message into the scratch buffer (NULL if it does not parse); release it
 * before the next one. */
ProtobufCMessage *router_unpack_transient(router_t *r, const bt_rpc_msg_t *m);
void router_release_transient(router_t *r, ProtobufCMessage *msg);
void router_on_instance_lost(router_t *r, router_instance_t *inst);
int router_send_instance(router_t *r, const router_instance_t *inst, Baton__Method method,
                         uint64_t id, const ProtobufCMessage *body);

/* AcceLLM pairs (router_pair.c). */
int router_pairs_present(router_t *r);
void router_pairs_tick(router_t *r);
router_instance_t *router_pair_partner(router_t *r, const router_instance_t *x);
int router_pair_place(router_t *r, router_instance_t **owner, router_instance_t **holder);
int router_pair_start(router_t *r, router_request_t *rq);
void router_pair_holder_replied(router_t *r, router_request_t *rq, int status,
                                const Baton__AssignReply *reply);
void router_pair_on_handoff(router_t *r, router_request_t *rq, uint32_t n_tokens);
int router_pair_owner_lost(router_t *r, router_request_t *rq);

/* Sends to a request's client; marks it gone when the client cannot be reached (router.c). */
int router_send_client(router_t *r, router_request_t *rq, Baton__Method method, int status,
                       const char *error, const ProtobufCMessage *body);

#endif
