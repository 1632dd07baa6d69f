/* SPDX-License-Identifier: MIT */
/*
 * client_impl.h - internals of the client library shared by client.c and client_msg.c.
 */
#ifndef BATON_CLIENT_IMPL_H
#define BATON_CLIENT_IMPL_H

#include <stddef.h>
#include <stdint.h>

#include "baton_client.h"
#include "proto/baton.pb-c.h"

/* Request ids in flight: an open-addressing set (0 is never an id). */
typedef struct {
    uint64_t *v; /* (cap) ids, 0 = empty */
    size_t cap, n;
} client_idset_t;

int client_idset_add(client_idset_t *s, uint64_t id);
int client_idset_has(const client_idset_t *s, uint64_t id);
void client_idset_del(client_idset_t *s, uint64_t id);
void client_idset_fini(client_idset_t *s);

/* One-allocation copies of the router's replies (NULL when out of memory). g may be NULL
 * (an error reply without a body). */
bt_client_result_t *client_result_make(uint64_t id, int status, const char *error,
                                       const Baton__GenerateResult *g);
bt_client_info_t *client_info_make(const Baton__InfoReply *in);

#endif
