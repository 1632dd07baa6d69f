/* SPDX-License-Identifier: MIT */
/*
 * request.h - one request's part as a daemon holds it: what the router assigned (copied out of
 * the protobuf Assignment and validated), and the lifetime events recorded here.
 *
 * Everything a request carries lives in one allocation made when the Assignment is accepted and
 * released in one bt_req_destroy call (nginx's per-request pool): prompt, stop conditions, peer
 * address and reservation are carved out of it. The assignment arrives from the network, so
 * bt_req_from_assignment checks every field against the daemon's limits and answers a
 * status and a message instead of trusting it.
 *
 * Threads: a request is handed from the event-loop thread to the compute thread and back with
 * its DONE; one thread owns it at a time.
 */
#ifndef BATON_REQUEST_H
#define BATON_REQUEST_H

#include <stddef.h>
#include <stdint.h>

#include "proto/baton.pb-c.h"
#include "sampler.h"
#include "stopcond.h"

#define BT_REQ_MAX_EVENTS 16
#define BT_REQ_MAX_KVX_ADDRESS (64u << 10) /* bytes of a peer's kvx address blob */
#define BT_REQ_MAX_PEER 255                /* bytes of a peer instance id */

typedef struct {
    int32_t kind;     /* Baton__EventKind */
    uint64_t time_ns; /* CLOCK_REALTIME */
    int32_t code;     /* status for FAILED */
} bt_event_t;

/* Blocks on the decode side that the prefill's KV is written into. */
typedef struct {
    uint64_t id;
    uint32_t generation;
    int32_t *blocks; /* (n_blocks) decode-side block ids, in sequence order */
    int32_t n_blocks;
    int32_t n_tokens; /* tokens the reservation covers (the prompt) */
} bt_reservation_t;

typedef struct bt_req {
    uint64_t id;           /* cluster-wide request id (the router's) */
    Baton__Role part;      /* PREFILL, DECODE, COLOCATED or PAIR */
    int replica;           /* PAIR: hold the prompt's KV as a replica (the partner prefills) */
    const int32_t *prompt; /* (n_prompt) token ids, each < n_vocab */
    int32_t n_prompt;      /* >= 1 */
    int32_t max_tokens;    /* most generated tokens; 0: up to the context */
    int32_t max_ctx;       /* most tokens the sequence may hold (prompt + generated) */
    bt_sampler_params_t sampling;
    bt_stop_params_t stop; /* points into this request */
    int return_text;
    uint32_t skip_tokens; /* failover: output tokens [0, skip) are not streamed again */
    uint64_t issued_ns;
    char peer[BT_REQ_MAX_PEER + 1];
    const uint8_t *peer_kvx; /* (peer_kvx_len) bytes; NULL when empty */
    size_t peer_kvx_len;
    bt_reservation_t resv; /* prefill part: where the KV goes */
    bt_event_t events[BT_REQ_MAX_EVENTS];
    int n_events;
    void *priv; /* the role's per-request state (compute thread) */
} bt_req_t;

/* What a daemon accepts. */
typedef struct {
    Baton__Role role; /* the part this daemon serves */
    int32_t n_vocab;
    int32_t n_ctx;      /* context length: prompt + generated tokens at most */
    int32_t block_size; /* KV tokens per block */
    int32_t max_blocks; /* the KV pool's size in blocks: a request that can never fit is refused */
} bt_req_limits_t;

/*
 * Copies and validates an Assignment. On success *out is a new request (events empty) and
 * BT_OK is returned; otherwise a status (BT_ERR_INVAL for a wrong part or bad parameters,
 * BT_ERR_RANGE for token ids outside the vocabulary or a request too large for the context or
 * the KV pool, BT_ERR_NOMEM) and a one-line reason in err.
 */
/* The sampler settings of a SamplingParams message (not checked: bt_sampler_params_check). */
bt_sampler_params_t bt_sampling_from_proto(const Baton__SamplingParams *s);

int bt_req_from_assignment(const Baton__Assignment *a, uint64_t id, const bt_req_limits_t *lim,
                           bt_req_t **out, char *err, size_t err_cap);
/* NULL-safe. Does not touch priv: the role releases its state first. */
void bt_req_destroy(bt_req_t *r);

/* Records a lifetime event now (CLOCK_REALTIME); events past BT_REQ_MAX_EVENTS are dropped
 * (each part records at most a handful). */
void bt_req_event(bt_req_t *r, Baton__EventKind kind, int32_t code);
/* The same with the time given (CLOCK_REALTIME ns), for what another thread saw happen. */
void bt_req_event_at(bt_req_t *r, Baton__EventKind kind, int32_t code, uint64_t time_ns);

/* Blocks needed for n_tokens with block_size tokens per block. */
static inline int32_t bt_blocks_for(int32_t n_tokens, int32_t block_size)
{
    return (n_tokens + block_size - 1) / block_size;
}

#endif
