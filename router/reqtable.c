/* SPDX-License-Identifier: MIT */
/*
 * reqtable.c - two intrusive hash indexes over the live requests (see reqtable.h).
 *
 * Both bucket arrays double when the table holds more requests than buckets, so chains stay
 * short; cluster ids are sequential and hashed with a multiplicative mix so that they spread.
 */
#include "reqtable.h"

#include <string.h>

#include "common/alloc.h"
#include "common/status.h"

struct router_reqtable {
    router_request_t **by_id;     /* (n_buckets) chains through next_by_id */
    router_request_t **by_client; /* (n_buckets) chains through next_by_client */
    size_t n_buckets;             /* a power of two */
    size_t count;
};

static size_t mix64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    return (size_t)x;
}

static size_t client_hash(const uint8_t *client, size_t len, uint64_t id)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < len; i++)
        h = (h ^ client[i]) * 1099511628211ull;
    return mix64(h ^ id);
}

int router_reqtable_create(router_reqtable_t **out)
{
    router_reqtable_t *t = bt_calloc(1, sizeof *t);
    if (!t)
        return BT_ERR_NOMEM;
    t->n_buckets = 1024;
    t->by_id = bt_calloc(t->n_buckets, sizeof *t->by_id);
    t->by_client = bt_calloc(t->n_buckets, sizeof *t->by_client);
    if (!t->by_id || !t->by_client) {
        router_reqtable_destroy(t);
        return BT_ERR_NOMEM;
    }
    *out = t;
    return BT_OK;
}

void router_reqtable_destroy(router_reqtable_t *t)
{
    if (!t)
        return;
    bt_free(t->by_id);
    bt_free(t->by_client);
    bt_free(t);
}

static void link_id(router_request_t **b, size_t mask, router_request_t *rq)
{
    size_t i = mix64(rq->id) & mask;
    rq->next_by_id = b[i];
    b[i] = rq;
}

static void link_client(router_request_t **b, size_t mask, router_request_t *rq)
{
    size_t i = client_hash(rq->client, rq->client_len, rq->client_req_id) & mask;
    rq->next_by_client = b[i];
    b[i] = rq;
}

static int grow(router_reqtable_t *t)
{
    size_t n = t->n_buckets * 2;
    router_request_t **by_id = bt_calloc(n, sizeof *by_id);
    router_request_t **by_client = bt_calloc(n, sizeof *by_client);
    if (!by_id || !by_client) {
        bt_free(by_id);
        bt_free(by_client);
        return BT_ERR_NOMEM;
    }
    for (size_t i = 0; i < t->n_buckets; i++) {
        for (router_request_t *rq = t->by_id[i], *next; rq; rq = next) {
            next = rq->next_by_id;
            link_id(by_id, n - 1, rq);
        }
        for (router_request_t *rq = t->by_client[i], *next; rq; rq = next) {
            next = rq->next_by_client;
            link_client(by_client, n - 1, rq);
        }
    }
    bt_free(t->by_id);
    bt_free(t->by_client);
    t->by_id = by_id;
    t->by_client = by_client;
    t->n_buckets = n;
    return BT_OK;
}

int router_reqtable_insert(router_reqtable_t *t, router_request_t *rq)
{
    if (t->count >= t->n_buckets && grow(t) != BT_OK && t->count >= 4 * t->n_buckets)
        return BT_ERR_NOMEM; /* keep working with longer chains until it is absurd */
    link_id(t->by_id, t->n_buckets - 1, rq);
    link_client(t->by_client, t->n_buckets - 1, rq);
    t->count++;
    return BT_OK;
}

static void unlink_id(router_reqtable_t *t, router_request_t *rq)
{
    router_request_t **p = &t->by_id[mix64(rq->id) & (t->n_buckets - 1)];
    while (*p && *p != rq)
        p = &(*p)->next_by_id;
    if (*p)
        *p = rq->next_by_id;
    rq->next_by_id = NULL;
}

void router_reqtable_remove(router_reqtable_t *t, router_request_t *rq)
{
    unlink_id(t, rq);
    size_t i = client_hash(rq->client, rq->client_len, rq->client_req_id) & (t->n_buckets - 1);
    router_request_t **p = &t->by_client[i];
    while (*p && *p != rq)
        p = &(*p)->next_by_client;
    if (*p)
        *p = rq->next_by_client;
    rq->next_by_client = NULL;
    t->count--;
}

void router_reqtable_rekey(router_reqtable_t *t, router_request_t *rq, uint64_t new_id)
{
    unlink_id(t, rq);
    rq->id = new_id;
    link_id(t->by_id, t->n_buckets - 1, rq);
}

router_request_t *router_reqtable_by_id(const router_reqtable_t *t, uint64_t id)
{
    router_request_t *rq = t->by_id[mix64(id) & (t->n_buckets - 1)];
    while (rq && rq->id != id)
        rq = rq->next_by_id;
    return rq;
}

router_request_t *router_reqtable_by_client(const router_reqtable_t *t, const uint8_t *client,
                                            size_t client_len, uint64_t client_req_id)
{
    size_t i = client_hash(client, client_len, client_req_id) & (t->n_buckets - 1);
    router_request_t *rq = t->by_client[i];
    while (rq && !(rq->client_req_id == client_req_id && rq->client_len == client_len &&
                   memcmp(rq->client, client, client_len) == 0))
        rq = rq->next_by_client;
    return rq;
}

size_t router_reqtable_count(const router_reqtable_t *t)
{
    return t->count;
}

void router_reqtable_each(router_reqtable_t *t, void (*fn)(void *ctx, router_request_t *rq),
                          void *ctx)
{
    for (size_t i = 0; i < t->n_buckets; i++)
        for (router_request_t *rq = t->by_id[i], *next; rq; rq = next) {
            next = rq->next_by_id;
            fn(ctx, rq);
        }
}
