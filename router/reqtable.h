/* SPDX-License-Identifier: MIT */
/*
 * reqtable.h - the router's index of live requests: by cluster id (messages from daemons) and
 * by (client identity, client request id) (CANCEL, duplicate detection).
 *
 * Chaining is intrusive (the links live in the request), so inserting never allocates except
 * when the bucket arrays grow. The table does not own the requests. Event-loop thread only.
 */
#ifndef BATON_ROUTER_REQTABLE_H
#define BATON_ROUTER_REQTABLE_H

#include <stddef.h>
#include <stdint.h>

#include "request.h"

typedef struct router_reqtable router_reqtable_t;

int router_reqtable_create(router_reqtable_t **out);
void router_reqtable_destroy(router_reqtable_t *t);

/* Adds rq under rq->id and its client key; BT_ERR_NOMEM when the buckets cannot grow. */
int router_reqtable_insert(router_reqtable_t *t, router_request_t *rq);
void router_reqtable_remove(router_reqtable_t *t, router_request_t *rq);
/* Re-files rq under a new cluster id (a new placement attempt). */
void router_reqtable_rekey(router_reqtable_t *t, router_request_t *rq, uint64_t new_id);

router_request_t *router_reqtable_by_id(const router_reqtable_t *t, uint64_t id);
router_request_t *router_reqtable_by_client(const router_reqtable_t *t, const uint8_t *client,
                                            size_t client_len, uint64_t client_req_id);
size_t router_reqtable_count(const router_reqtable_t *t);

/* Calls fn for every request; fn may not insert or remove. */
void router_reqtable_each(router_reqtable_t *t, void (*fn)(void *ctx, router_request_t *rq),
                          void *ctx);

#endif
