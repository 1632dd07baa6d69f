/* SPDX-License-Identifier: MIT */
/*
 * status.h - the one status type of the whole tree.
 *
 * 0 is success, negative values are errors, positive values mean "not yet" (try again, in
 * progress). Names and strings come from one X-macro so they can never drift apart. This
 * header is self-contained (no .c) so that every target, the kernels included, can use it.
 */
#ifndef BATON_STATUS_H
#define BATON_STATUS_H

#define BT_STATUS_MAP(X)                                                                           \
    X(BT_OK, 0, "ok")                                                                              \
    X(BT_AGAIN, 1, "not yet, try again")                                                           \
    X(BT_ERR_NOMEM, -1, "out of memory")                                                           \
    X(BT_ERR_INVAL, -2, "invalid argument")                                                        \
    X(BT_ERR_IO, -3, "input/output error")                                                         \
    X(BT_ERR_FORMAT, -4, "malformed or corrupt data")                                              \
    X(BT_ERR_UNSUPPORTED, -5, "unsupported")                                                       \
    X(BT_ERR_NOSPACE, -6, "capacity exhausted")                                                    \
    X(BT_ERR_NOT_FOUND, -7, "not found")                                                           \
    X(BT_ERR_RANGE, -8, "value out of range")                                                      \
    X(BT_ERR_MISMATCH, -9, "incompatible peer or layout")                                          \
    X(BT_ERR_CANCELLED, -10, "cancelled")                                                          \
    X(BT_ERR_TIMEOUT, -11, "timed out")                                                            \
    X(BT_ERR_INTERNAL, -12, "internal error")                                                      \
    X(BT_ERR_OVERLOADED, -20, "overloaded: queue full, try again later")                           \
    X(BT_ERR_UNAVAILABLE, -21, "no instance available to serve")                                   \
    X(BT_ERR_DRAINING, -22, "draining: not accepting new work")                                    \
    X(BT_ERR_PEER, -30, "peer failed, closed or unreachable")

typedef enum {
#define BT_STATUS_ENUM(name, value, text) name = value,
    BT_STATUS_MAP(BT_STATUS_ENUM)
#undef BT_STATUS_ENUM
} bt_status_t;

/* Human-readable text for a status; never NULL. */
static inline const char *bt_status_str(int status)
{
    switch (status) {
#define BT_STATUS_CASE(name, value, text)                                                          \
    case value: return text;
        BT_STATUS_MAP(BT_STATUS_CASE)
#undef BT_STATUS_CASE
    }
    return "unknown status";
}

/* Symbolic name of a status ("BT_ERR_NOMEM"); never NULL. */
static inline const char *bt_status_name(int status)
{
    switch (status) {
#define BT_STATUS_NAME(name, value, text)                                                          \
    case value: return #name;
        BT_STATUS_MAP(BT_STATUS_NAME)
#undef BT_STATUS_NAME
    }
    return "BT_UNKNOWN";
}

#endif
