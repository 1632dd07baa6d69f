/* SPDX-License-Identifier: MIT */
/*
 * baton_client.h - the C client of a baton cluster: connect to a router, generate text with
 * streamed tokens, cancel, ask for health and info.
 *
 * Plain C11; no ZeroMQ or protobuf type appears here. Link libbaton-client (static, or the
 * shared libbaton-client.so).
 *
 * Threads: a bt_client_t is used by one thread at a time (it owns one ZeroMQ socket). Use one
 * client per thread, or serialize the calls; different clients are independent. Callbacks run
 * on the calling thread, inside bt_client_generate.
 *
 * Requests: many may be in flight on one client. Each has a request id, unique among the
 * client's requests in flight: chosen by the caller (bt_client_gen_params_t.request_id) or by
 * the library. Every request the router accepted ends with exactly one result; a refused one
 * ends with a result whose status says why (BT_CLIENT_ERR_OVERLOADED, ..._RANGE, ...).
 * Two ways to run them:
 *  - blocking: bt_client_generate calls on_chunk for each chunk of tokens and returns the
 *    result;
 *  - asynchronous: bt_client_submit any number of requests, then bt_client_next returns the
 *    next chunk or result of any of them, in arrival order.
 * Both may be mixed: events of other requests that arrive during a blocking call are kept for
 * bt_client_next.
 *
 * Errors: functions return 0 (BT_CLIENT_OK) or a negative status below; bt_client_strerror
 * gives its text. A request's own outcome is in its result (status, finish_reason, error).
 */
#ifndef BATON_CLIENT_H
#define BATON_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define BT_CLIENT_API __attribute__((visibility("default")))
#else
#define BT_CLIENT_API
#endif

/* Statuses: the values of baton's status codes. */
#define BT_CLIENT_OK 0
#define BT_CLIENT_ERR_NOMEM (-1)
#define BT_CLIENT_ERR_INVAL (-2)       /* bad argument or request field */
#define BT_CLIENT_ERR_IO (-3)          /* socket failure */
#define BT_CLIENT_ERR_FORMAT (-4)      /* a malformed message */
#define BT_CLIENT_ERR_UNSUPPORTED (-5) /* e.g. a text prompt to a router without a tokenizer */
#define BT_CLIENT_ERR_NOT_FOUND (-7)   /* no such request in flight */
#define BT_CLIENT_ERR_RANGE (-8)       /* over a limit (prompt length, max_tokens) */
#define BT_CLIENT_ERR_TIMEOUT (-11)
#define BT_CLIENT_ERR_INTERNAL (-12)
#define BT_CLIENT_ERR_OVERLOADED (-20)  /* queue full: try again later */
#define BT_CLIENT_ERR_UNAVAILABLE (-21) /* no instance could serve it */
#define BT_CLIENT_ERR_DRAINING (-22)    /* the router is shutting down */

/* Text of a status (any baton status code); never NULL. */
BT_CLIENT_API const char *bt_client_strerror(int status);

typedef struct bt_client bt_client_t;

typedef struct {
    const char *endpoint; /* the router, e.g. "tcp://127.0.0.1:5555"; copied */
    int timeout_ms;       /* blocking calls give up after this long without a reply (for
                           * bt_client_generate: without a chunk); 0: 60000; < 0: never */
    int max_resubmits;    /* when the connection to the router drops (the router died or
                           * restarted), the requests in flight are sent again on a new one
                           * with the tokens already received, and their streams go on with
                           * no gap or repeat (result.retries counts it); at most this many
                           * times per request, then it ends with BT_CLIENT_ERR_UNAVAILABLE
                           * and the tokens and text it has. 0: 3; < 0: never */
} bt_client_params_t;

/* Connects (ZeroMQ connects lazily: a router that is not up yet is waited for by the calls,
 * within their timeouts). */
BT_CLIENT_API int bt_client_connect(const bt_client_params_t *params, bt_client_t **out);
/* Closes the connection; requests still in flight are abandoned (the router cancels them when
 * it finds the client gone). NULL is allowed. */
BT_CLIENT_API void bt_client_close(bt_client_t *c);

typedef struct {
    const char *prompt;        /* text, tokenized by the router; or */
    const int32_t *prompt_ids; /* token ids, used as given when n_prompt_ids > 0 */
    size_t n_prompt_ids;
    uint32_t max_tokens;   /* 0: the router's default */
    float temperature;     /* 0: greedy */
    int32_t top_k;         /* 0: off */
    float top_p;           /* 0 or 1: off */
    float min_p;           /* 0: off */
    float repeat_penalty;  /* 0 or 1: off */
    int32_t repeat_last_n; /* 0: 64 */
    uint64_t seed;
    const int32_t *stop_ids; /* end when one of these tokens is generated */
    size_t n_stop_ids;
    const char *const *stop; /* end when one of these strings is generated (not shown) */
    size_t n_stop;
    int ignore_eos;     /* 1: generate exactly max_tokens */
    int no_bos;         /* 1: do not start a text prompt with BOS */
    int return_text;    /* 1: chunks and the result carry text as well as ids */
    double slo_ttft_ms; /* objectives for slo-aware placement; 0: the cluster's */
    double slo_tpot_ms;
    uint64_t request_id; /* 0: chosen by the library */
} bt_client_gen_params_t;

typedef enum {
    BT_CLIENT_FINISH_NONE = 0,
    BT_CLIENT_FINISH_LENGTH = 1, /* max_tokens or the context */
    BT_CLIENT_FINISH_EOS = 2,
    BT_CLIENT_FINISH_STOP_TOKEN = 3,
    BT_CLIENT_FINISH_STOP_STRING = 4,
    BT_CLIENT_FINISH_CANCELLED = 5,
    BT_CLIENT_FINISH_FAILED = 6, /* see status and error */
} bt_client_finish_t;

/* Lifetime event kinds, in the order a request goes through them. */
typedef enum {
    BT_CLIENT_EV_ISSUED = 1,
    BT_CLIENT_EV_PREFILL_QUEUED = 2,
    BT_CLIENT_EV_PREFILL_BEGIN = 3,
    BT_CLIENT_EV_PREFILL_END = 4,
    BT_CLIENT_EV_TRANSFER_BEGIN = 5,
    BT_CLIENT_EV_TRANSFER_END = 6,
    BT_CLIENT_EV_DECODE_QUEUED = 7,
    BT_CLIENT_EV_DECODE_BEGIN = 8,
    BT_CLIENT_EV_FINISHED = 9,
    BT_CLIENT_EV_CANCELLED = 10,
    BT_CLIENT_EV_FAILED = 11,
} bt_client_lifetime_t;

typedef struct {
    int kind;             /* bt_client_lifetime_t */
    uint64_t time_ns;     /* CLOCK_REALTIME of the host that recorded it */
    const char *instance; /* "router" or an instance id */
    int32_t code;         /* status, for FAILED */
} bt_client_event_t;

typedef struct {
    uint64_t request_id;
    int status;        /* 0, or why it failed or was refused */
    const char *error; /* detail; "" when status is 0 */
    bt_client_finish_t finish_reason;
    const int32_t *ids; /* every generated token */
    size_t n_ids;
    const char *text; /* when return_text; NUL-terminated, and text_len long: a model may
                       * generate a NUL byte of its own (a byte token 0x00) */
    size_t text_len;
    uint32_t n_prompt_tokens;
    uint32_t n_output_tokens;
    const bt_client_event_t *events; /* in time order */
    size_t n_events;
    const char *prefill_instance;
    const char *decode_instance;
    uint32_t retries; /* failovers it took */
} bt_client_result_t;

/* Frees a result (one allocation). NULL is allowed. */
BT_CLIENT_API void bt_client_result_free(bt_client_result_t *r);
/* Names: "FINISHED", "LENGTH", ... */
BT_CLIENT_API const char *bt_client_lifetime_name(int kind);
BT_CLIENT_API const char *bt_client_finish_name(bt_client_finish_t reason);

/* Tokens as they are generated. The pointers are valid until the callback returns or the next
 * call on the client. */
typedef struct {
    uint64_t request_id;
    uint32_t index; /* output position of ids[0] (0: the first generated token) */
    const int32_t *ids;
    size_t n_ids;
    const char *text; /* their text when return_text (may be "" while a character or a
                       * possible stop string is held back); NUL-terminated, and text_len
                       * long (it may hold NULs of its own) */
    size_t text_len;
    uint64_t time_ns; /* when the daemon produced them (its CLOCK_REALTIME) */
} bt_client_chunk_t;

/* Returns 0 to go on, non-zero to cancel the request (its result still comes). */
typedef int (*bt_client_chunk_fn)(void *user, const bt_client_chunk_t *chunk);

/* Runs one request to its end. on_chunk may be NULL. BT_CLIENT_OK with *result (free it with
 * bt_client_result_free) whatever the request's outcome; BT_CLIENT_ERR_TIMEOUT when nothing
 * (no chunk, no result) came for the client's timeout (the request is then cancelled and
 * abandoned); other errors for bad parameters or a broken connection. */
BT_CLIENT_API int bt_client_generate(bt_client_t *c, const bt_client_gen_params_t *p,
                                     bt_client_chunk_fn on_chunk, void *user,
                                     bt_client_result_t **result);

/* Sends a request and returns at once; its id in *request_id (may be NULL).
 * BT_CLIENT_ERR_INVAL for a request id already in flight. */
BT_CLIENT_API int bt_client_submit(bt_client_t *c, const bt_client_gen_params_t *p,
                                   uint64_t *request_id);

typedef enum { BT_CLIENT_NEXT_CHUNK = 1, BT_CLIENT_NEXT_RESULT = 2 } bt_client_next_kind_t;

typedef struct {
    bt_client_next_kind_t kind;
    bt_client_chunk_t chunk;    /* CHUNK: valid until the next call on the client */
    bt_client_result_t *result; /* RESULT: the caller's, free with bt_client_result_free */
} bt_client_next_t;

/* The next chunk or result of any request in flight, waiting up to timeout_ms (< 0: forever,
 * 0: do not wait). BT_CLIENT_ERR_TIMEOUT when nothing came, BT_CLIENT_ERR_NOT_FOUND when no
 * request is in flight. */
BT_CLIENT_API int bt_client_next(bt_client_t *c, int timeout_ms, bt_client_next_t *out);

/* Asks the router to cancel a request in flight; its result (FINISH_CANCELLED, with the tokens
 * generated so far) still comes. If the connection to the router drops first, the request is
 * not sent again: the library ends it so, with the tokens and text received.
 * BT_CLIENT_ERR_NOT_FOUND if it is not in flight. */
BT_CLIENT_API int bt_client_cancel(bt_client_t *c, uint64_t request_id);

/* Requests in flight on this client. */
BT_CLIENT_API size_t bt_client_in_flight(const bt_client_t *c);

typedef struct {
    int ok; /* the cluster can serve: a prefill and a decode, or a colocated instance */
    uint32_t n_prefill, n_decode, n_colocated; /* alive instances */
    uint32_t queued, running;                  /* requests at the router */
} bt_client_health_t;

/* timeout_ms: 0 for the client's default. */
BT_CLIENT_API int bt_client_health(bt_client_t *c, int timeout_ms, bt_client_health_t *out);

typedef struct {
    const char *id;
    int role; /* 1 prefill, 2 decode, 3 colocated, 4 pair member */
    int alive;
    uint32_t queue_len, running, kv_free_blocks, kv_total_blocks;
    int serving;         /* pair members: 1 prefill or 2 decode now; else 0 */
    const char *partner; /* pair members: the partner's id; else "" */
    uint32_t replicas;   /* pair members: replicas held */
} bt_client_instance_t;

typedef struct {
    const char *model; /* model id */
    uint32_t n_vocab, n_ctx, max_prompt_tokens, max_tokens, protocol_version;
    const char *policy;
    const bt_client_instance_t *instances;
    size_t n_instances;
} bt_client_info_t;

/* *out is one allocation: free with bt_client_info_free. */
BT_CLIENT_API int bt_client_info(bt_client_t *c, int timeout_ms, bt_client_info_t **out);
BT_CLIENT_API void bt_client_info_free(bt_client_info_t *info);

#ifdef __cplusplus
}
#endif

#endif
