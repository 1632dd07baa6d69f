/* SPDX-License-Identifier: MIT */
/*
 * instances.h - the router's live view of the cluster: one record per daemon, refreshed by its
 * heartbeats, declared dead when it has not been heard from for dead_after_ms.
 *
 * A daemon is known by the ZeroMQ identity of its DEALER socket (its instance id by contract);
 * the first heartbeat registers it. Besides what the heartbeat says (role, model id, queue,
 * running batch, free KV), each record counts what the router itself sent it since that
 * heartbeat, so that a burst of requests between two heartbeats is not all placed on the
 * instance that looked emptiest. Records are never freed while a request refers to them
 * (n_active > 0); dead ones are dropped later, so a pointer held by a request stays valid.
 * Times are CLOCK_MONOTONIC milliseconds. Used by the router's event-loop thread only.
 */
#ifndef BATON_ROUTER_INSTANCES_H
#define BATON_ROUTER_INSTANCES_H

#include <stddef.h>
#include <stdint.h>

#include "common/modelid.h"
#include "proto/baton.pb-c.h"

#define ROUTER_IDENT_MAX 255
#define ROUTER_INSTANCE_NAME_MAX 64

typedef struct router_instance {
    uint8_t ident[ROUTER_IDENT_MAX]; /* ZeroMQ identity: the route to this daemon */
    uint8_t ident_len;
    char name[ROUTER_INSTANCE_NAME_MAX]; /* Heartbeat.instance_id, truncated, for logs/events */
    Baton__Role role;
    char model_id[BT_MODEL_ID_MAX];
    int model_ok; /* model_id equals the cluster's */
    uint32_t version;
    uint64_t incarnation; /* Heartbeat.incarnation; 0: the daemon does not say */
    uint8_t *kvx_address; /* owned; kvx_len bytes */
    size_t kvx_len;

    /* As of the last heartbeat. */
    uint32_t queue_len; /* requests waiting */
    uint32_t running;   /* requests in the running batch */
    uint32_t kv_free_blocks, kv_total_blocks, kv_block_size;
    uint64_t queued_tokens; /* prefill: prompt tokens waiting; decode: context tokens running */
    uint64_t unshipped_blocks;
    int draining;
    /* PAIR instances */
    char partner[ROUTER_INSTANCE_NAME_MAX]; /* the partner's id ("" for other roles) */
    Baton__Role serving;                    /* PREFILL or DECODE */
    uint32_t replicas, decoding;
    uint64_t told_partner;   /* partner incarnation last sent to it in SET_ROLE (+1) */
    uint64_t last_switch_ms; /* when its role was last switched */
    uint64_t last_assign_ms; /* when it was last given a prompt */

    /* The router's own bookkeeping. */
    uint64_t last_seen_ms; /* monotonic time of the last message from it */
    int alive;
    int full; /* no new work until its next heartbeat: it refused an ASSIGN with BT_ERR_NOSPACE,
               * did not answer one, or a decode instance could not reach it for the KV */
    /* An ASSIGN placed from the router's queue is unanswered: no other until it is, so that
     * what fits cannot overtake what came first (router_place). */
    int probe_out;
    uint32_t pend_reqs;    /* ASSIGNs sent since its last heartbeat */
    uint64_t pend_tokens;  /* their prompt tokens */
    uint32_t pend_prompts; /* pairs: prompts (not replicas) assigned since its last heartbeat */
    uint32_t n_active;     /* requests with a part on it now */
    uint64_t n_assigned;   /* ASSIGNs sent over its lifetime */
    uint64_t seq;          /* registration order (stable order for round-robin) */
    uint64_t *suspects;    /* ids it held at its last heartbeat that the router does not place
                            * there (owned; n_suspects of them): ABORTed if held at the next */
    uint32_t n_suspects;
} router_instance_t;

typedef struct router_instances router_instances_t;

typedef struct {
    int max_instances;    /* table capacity; 0: 1024 */
    int dead_after_ms;    /* silence after which an instance is dead; 0: 3000 */
    const char *model_id; /* the cluster's model id (copied); NULL or "": adopt the first
                           * registered instance's */
} router_instances_params_t;

int router_instances_create(const router_instances_params_t *params, router_instances_t **out);
void router_instances_destroy(router_instances_t *set);

typedef enum {
    ROUTER_HB_REFRESH = 0, /* a known, alive instance */
    ROUTER_HB_NEW,         /* first heard of, or back after being declared dead by another
                              process (a new incarnation) */
    ROUTER_HB_REVIVED,     /* back after being declared dead, the same process: it may still
                              hold what was failed over meanwhile */
    ROUTER_HB_RESTARTED,   /* alive, but its incarnation changed: what it had is lost, and
                              what was sent to its id meanwhile may have reached the new one */
} router_hb_event_t;

/* Registers or refreshes the sender of a heartbeat. BT_ERR_NOSPACE when the table is full,
 * BT_ERR_INVAL for a heartbeat without a role; the record otherwise (*out) and what happened
 * (*ev). An instance that comes back after being declared dead is alive again; the requests it
 * had were failed over already, so nothing it sends about them is used. On RESTARTED the
 * caller fails over the requests it had, as for a dead instance. On every event but REFRESH the
 * caller tells the instance to drop whatever it holds (RESET). */
int router_instances_heartbeat(router_instances_t *set, const uint8_t *ident, size_t ident_len,
                               const Baton__Heartbeat *hb, uint64_t now_ms, router_instance_t **out,
                               router_hb_event_t *ev);
/* The record of an identity, or NULL. */
router_instance_t *router_instances_find(router_instances_t *set, const uint8_t *ident,
                                         size_t ident_len);
/* Refreshes last_seen_ms for any message from a known instance. */
void router_instances_touch(router_instance_t *inst, uint64_t now_ms);

/* Declares dead every alive instance not heard from for dead_after_ms, calling on_dead for
 * each (before it is counted dead nowhere else); drops dead records that no request refers to
 * and that have been silent for 10 x dead_after_ms. */
typedef void (*router_instance_dead_fn)(void *ctx, router_instance_t *inst);
void router_instances_expire(router_instances_t *set, uint64_t now_ms,
                             router_instance_dead_fn on_dead, void *ctx);

/* Counts an ASSIGN the router sent (reset by the next heartbeat). */
void router_instance_note_assign(router_instance_t *inst, uint32_t n_prompt_tokens);
/* Whether it serves requests at all: alive, not draining, same model (full or not). */
int router_instance_serving(const router_instance_t *inst);
/* Whether a request may be placed on it now: serving, not full, no probe unanswered. */
int router_instance_eligible(const router_instance_t *inst);

int router_instances_count(const router_instances_t *set);
router_instance_t *router_instances_at(router_instances_t *set, int i);
/* The cluster's model id ("" until known). */
const char *router_instances_model_id(const router_instances_t *set);

#endif
