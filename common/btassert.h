/* SPDX-License-Identifier: MIT */
/*
 * btassert.h - BT_ASSERT: checks for programmer errors, on in every build (ggml GGML_ASSERT).
 *
 * Never assert on input from the network or from files: validate it and return a status.
 */
#ifndef BATON_ASSERT_H
#define BATON_ASSERT_H

#include <stdio.h>
#include <stdlib.h>

#define BT_ASSERT(cond)                                                                            \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: assertion failed: %s\n", __FILE__, __LINE__, #cond);           \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

#endif
