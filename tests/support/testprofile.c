/* SPDX-License-Identifier: MIT */
/*
 * testprofile.c - comparing latency profiles in tests (see testprofile.h).
 */
#include "testprofile.h"

#include "testutil.h"

/* Field by field: struct padding is not part of a profile. */
void bt_test_assert_profile_equal(const bt_profile_t *a, const bt_profile_t *b)
{
    assert_string_equal(a->model, b->model);
    assert_string_equal(a->backend, b->backend);
    assert_string_equal(a->device, b->device);
    assert_string_equal(a->note, b->note);
    assert_int_equal(a->tp, b->tp);
    assert_int_equal(a->max_batch, b->max_batch);
    assert_int_equal(a->decode_knee_batch, b->decode_knee_batch);
    const double x[] = {a->prefill.a_ms,
                        a->prefill.b_ms_per_token,
                        a->prefill.c_ms_per_token2,
                        a->decode.a_ms,
                        a->decode.b_ms_per_ctx_token,
                        a->decode.c_ms_per_seq,
                        a->decode_above.a_ms,
                        a->decode_above.b_ms_per_ctx_token,
                        a->decode_above.c_ms_per_seq,
                        a->transfer_latency_ms,
                        a->transfer_gb_per_s,
                        a->kv_bytes_per_token};
    const double y[] = {b->prefill.a_ms,
                        b->prefill.b_ms_per_token,
                        b->prefill.c_ms_per_token2,
                        b->decode.a_ms,
                        b->decode.b_ms_per_ctx_token,
                        b->decode.c_ms_per_seq,
                        b->decode_above.a_ms,
                        b->decode_above.b_ms_per_ctx_token,
                        b->decode_above.c_ms_per_seq,
                        b->transfer_latency_ms,
                        b->transfer_gb_per_s,
                        b->kv_bytes_per_token};
    for (size_t i = 0; i < sizeof x / sizeof x[0]; i++)
        assert_true(x[i] == y[i]);
    const bt_profile_fit_t *fa[] = {&a->fit_prefill, &a->fit_decode, &a->fit_transfer};
    const bt_profile_fit_t *fb[] = {&b->fit_prefill, &b->fit_decode, &b->fit_transfer};
    for (int i = 0; i < 3; i++) {
        assert_int_equal(fa[i]->n_points, fb[i]->n_points);
        assert_true(fa[i]->r2 == fb[i]->r2 && fa[i]->max_rel_err == fb[i]->max_rel_err);
    }
}
