/* SPDX-License-Identifier: MIT */
/*
 * testprofile.h - comparing latency profiles in tests (profile tests and profiler tests).
 */
#ifndef BATON_TESTPROFILE_H
#define BATON_TESTPROFILE_H

#include "common/profile.h"

/* Fails the current cmocka test unless a and b hold the same values, field by field (struct
 * padding is not part of a profile, so memcmp would be wrong). */
void bt_test_assert_profile_equal(const bt_profile_t *a, const bt_profile_t *b);

#endif
