/* SPDX-License-Identifier: MIT */
/*
 * request.h - one client request as the router tracks it: its parts on instances, the token
 * stream relayed so far, its lifetime events, and how it ends.
 *
 * Everything a request owns (the unpacked GenerateRequest, the tokenized prompt, the output
 * ids and text, held-back chunks, events) is released by one router_request_destroy. The
 * stream logic is here, apart from any socket: chunks arrive from a prefill (the first token),
 * a decode (the rest) or, after a failover, a replaying instance; whatever extends the
 * delivered stream is appended and relayed, tokens already delivered are dropped, and chunks
 * after a gap wait until the gap is filled. Text is made here from the ids when the router has
 * the tokenizer (so it stays right across a failover, where a replaying daemon would start its
 * detokenizer mid-character), with stop strings held back as the daemons do.
 * Used by the router's event-loop thread only.
 */
#ifndef BATON_ROUTER_REQUEST_H
#define BATON_ROUTER_REQUEST_H

#include <stddef.h>
#include <stdint.h>

#include "common/stopcond.h"
#include "common/tokenizer.h"
#include "instances.h"
#include "proto/baton.pb-c.h"

typedef enum {
    RQ_QUEUED = 0, /* waiting for a placement (new, refused, or failing over) */
    RQ_ASSIGNING,  /* ASSIGN sent, waiting for the instances to accept */
    RQ_RUNNING,    /* accepted; tokens flow */
    RQ_CANCELLING, /* ABORT sent, waiting for the parts' DONE */
    RQ_FINISHING,  /* the last part is done; waiting briefly for a late prefill DONE or chunk */
} rq_state_t;

typedef struct {
    router_instance_t *inst; /* NULL: this part is not placed */
    int sent;                /* its ASSIGN went out */
    int accepted;            /* ASSIGN_REPLY ok (or a token seen) */
    int done;                /* DONE received (or nothing more is expected from it) */
    int streamed;            /* it sent a token */
    int probe;               /* its ASSIGN is its instance's probe (router_instance_t.probe_out) */
} rq_part_t;

typedef struct {
    int32_t kind; /* Baton__EventKind */
    int32_t code;
    uint64_t time_ns;
    char instance[ROUTER_INSTANCE_NAME_MAX];
} rq_event_t;

typedef struct rq_chunk rq_chunk_t;

typedef struct router_request {
    /* Links owned by the request table and the router's lists. */
    struct router_request *next_by_id, *next_by_client;
    struct router_request *prev, *next;
    int list; /* which router list holds it (router.c), 0: none */

    uint64_t id;            /* cluster id of the current attempt (a new one per placement) */
    uint64_t client_req_id; /* the client's id for it */
    uint8_t client[ROUTER_IDENT_MAX]; /* the client's ZeroMQ identity */
    uint8_t client_len;
    rq_state_t state;
    uint64_t deadline_ms;       /* monotonic; for the timed list (ASSIGNING, CANCELLING, ...) */
    uint64_t wait_deadline_ms;  /* monotonic; when QUEUED: fail if not placed by then */
    uint64_t issued_ns;         /* wall clock of ISSUED */
    uint64_t first_ns, last_ns; /* wall clock of the first and the last token relayed (with
                                 * --metrics-port only); 0: none */

    Baton__GenerateRequest *req; /* owned: sampling and stop settings are sent from here */
    const int32_t *prompt;       /* req->prompt_ids or prompt_owned */
    int32_t *prompt_owned;
    uint32_t n_prompt;
    uint32_t max_tokens;
    double slo_ttft_ms, slo_tpot_ms;
    int return_text;

    rq_part_t prefill, decode; /* decode is the colocated instance when colocated */
    int colocated;
    int pair; /* AcceLLM pair: decode is the owner (prefills, decodes), prefill the replica's
               * holder (router_pair.c) */

    int32_t *out; /* (n_out) ids delivered to the client, in order */
    uint32_t n_out, cap_out;
    char *text; /* (text_len) text delivered, when return_text */
    size_t text_len, text_cap;
    rq_chunk_t *pending; /* chunks after a gap, by index */
    int n_pending;
    int make_text; /* text made here from ids (the router has the tokenizer) */
    bt_detok_t detok;
    bt_stop_t *stop;  /* stop strings, when any and make_text */
    int text_stopped; /* a stop string matched: no more text, whatever tokens follow */

    rq_event_t *events;
    int n_events, cap_events;
    uint32_t retries;
    int cancel_requested;
    int client_gone;
    Baton__FinishReason finish; /* set when the last part is done */
    uint32_t n_expected;        /* tokens the last part said it produced */
    int32_t status;             /* status of a FAILED end */
    char error[160];
    char prefill_name[ROUTER_INSTANCE_NAME_MAX], decode_name[ROUTER_INSTANCE_NAME_MAX];
} router_request_t;

/* Takes ownership of req (freed with the request, also on failure). The prompt is req's ids;
 * set prompt_owned/prompt/n_prompt afterwards for a tokenized one. tok may be NULL (then text
 * is relayed from the daemons). */
int router_request_create(Baton__GenerateRequest *req, const bt_tokenizer_t *tok,
                          router_request_t **out);
void router_request_destroy(router_request_t *rq);

/* Appends a lifetime event (instance copied, truncated). */
int router_request_event(router_request_t *rq, int32_t kind, uint64_t time_ns, const char *instance,
                         int32_t code);
/* Appends the events of a daemon's DONE. */
int router_request_events_from(router_request_t *rq, Baton__LifetimeEvent *const *ev, size_t n);
/* Sorts the events by time (stable). */
void router_request_sort_events(router_request_t *rq);

/* What a chunk added: ids out[first .. first + n) and text[text_from .. text_len). */
typedef struct {
    uint32_t first, n;
    size_t text_from;
    int diverged; /* a replayed token differed from the one delivered (logged by the caller) */
} rq_relay_t;

/* Feeds a chunk (ids at output positions index..). BT_OK; BT_ERR_NOMEM; BT_ERR_RANGE when
 * too many chunks wait behind a gap (the request should fail). Ids past max_tokens are
 * dropped. text/text_len: the daemon's text for the chunk (used only when !make_text). */
int router_request_push(router_request_t *rq, uint32_t index, const int32_t *ids, size_t n,
                        const char *text, size_t text_len, rq_relay_t *out);
/* Drops held-back chunks (a failover starts the stream again from n_out). */
void router_request_drop_pending(router_request_t *rq);
/* At the end: releases text held back for stop strings (unless the end was a stop string)
 * and incomplete UTF-8; appends it and returns where it starts in text. */
size_t router_request_flush_text(router_request_t *rq);

#endif
