/* SPDX-License-Identifier: MIT */
/*
 * router.h - baton's router: the one client-facing endpoint of a cluster (docs/serving.md is
 * the contract, docs/router.md the user's guide).
 *
 * One event-loop thread owns everything: a ROUTER socket for clients, a ROUTER socket for the
 * daemons, the instance table, the request table and a housekeeping tick (liveness, timeouts,
 * queued requests). router_run returns after router_stop has been called and the requests in
 * flight have ended (or the drain timeout passed). router_stop may be called from a signal
 * handler; everything else from the thread that created the router.
 */
#ifndef BATON_ROUTER_H
#define BATON_ROUTER_H

#include <stdint.h>

typedef struct {
    const char *client_endpoint;  /* ZeroMQ bind address for clients, e.g. "tcp://0.0.0.0:5555" */
    const char *cluster_endpoint; /* for daemons, e.g. "tcp://0.0.0.0:5556" */
    const char *model_path;       /* GGUF or llama2.c checkpoint: tokenizer and model id; NULL:
                                   * none (prompt_ids only) */
    const char *tokenizer_path;   /* llama2.c tokenizer for a llama2.c checkpoint */
    const char *model_id;         /* overrides the id computed from model_path; NULL: computed,
                                   * or adopted from the first instance without a model */
    const char *policy;           /* placement policy name; NULL: "least-loaded" */
    const char *mode;             /* "auto", "disagg", "colocated"; NULL: auto */
    const char *profile_path;     /* latency profile JSON (slo-aware); NULL: none */
    int dead_after_ms;            /* instance silence that means dead */
    int failover_timeout_ms;      /* how long a failed-over request may wait for an instance */
    int queue_timeout_ms;         /* how long a new request may wait for an instance */
    int drain_timeout_ms;         /* after router_stop, in-flight requests fail after this */
    int finish_grace_ms;          /* wait for a late prefill DONE or chunk after the last DONE */
    int tick_ms;                  /* housekeeping period */
    int pair_idle_ms;   /* AcceLLM pairs: a member serving prefill with no prompt for this long
                         * goes back to decode; 0: 1000 */
    int pair_switch_ms; /* least time between two role switches of one pair; 0: 200 */
    uint32_t max_prompt_tokens, max_tokens, default_max_tokens;
    int max_queue;                   /* requests waiting for placement before BT_ERR_OVERLOADED */
    int max_requests;                /* requests in flight before BT_ERR_OVERLOADED */
    int max_retries;                 /* failovers one request may take */
    int max_instances;               /* instance table size */
    double slo_ttft_ms, slo_tpot_ms; /* default objectives */
    int busy_poll; /* the event loop never sleeps: lower latency for a whole core */
    int poll_us;   /* after work, the loop polls this long before it sleeps (0: sleeps at once) */
    int metrics_port; /* HTTP /metrics and /health (metrics.h); 0: none */
    int stamp_input;  /* tcp: how long each message waited in the sockets before it was read */
    const char *metrics_addr; /* address it binds; NULL or "*": every interface */
} router_params_t;

typedef struct router router_t;

/* Loads the tokenizer/profile, binds both sockets. Errors are logged once. */
int router_create(const router_params_t *params, router_t **out);
/* Serves until stopped and drained. BT_OK, or BT_ERR_IO when a socket fails. */
int router_run(router_t *r);
/* Asks the router to drain and exit: async-signal-safe, any thread. */
void router_stop(router_t *r);
void router_destroy(router_t *r);

#endif
