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

/* One-allocation copies of the router's replies (NULL when out of memory). g may be NULL
 * (an error reply without a body). */
bt_client_result_t *client_result_make(uint64_t id, int status, const char *error,
                                       const Baton__GenerateResult *g);
bt_client_info_t *client_info_make(const Baton__InfoReply *in);

#endif
