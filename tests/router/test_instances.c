/* SPDX-License-Identifier: MIT */
/*
 * test_instances.c - the router's instance table: registration by heartbeat, liveness (dead
 * after dead_after_ms of silence, alive again on a heartbeat), restarts seen through the
 * incarnation, model-id matching, the router's own load counts, and the table bound.
 */
// ctest-labels: unit
#include "testutil.h"

#include <string.h>

#include "common/status.h"
#include "router/instances.h"

static Baton__Heartbeat hb_of(const char *id, Baton__Role role, const char *model)
{
    Baton__Heartbeat hb = BATON__HEARTBEAT__INIT;
    hb.instance_id = (char *)id;
    hb.role = role;
    hb.model_id = (char *)model;
    hb.queue_len = 2;
    hb.kv_free_blocks = 10;
    hb.incarnation = 1;
    return hb;
}

static router_instance_t *beat(router_instances_t *s, const char *ident, Baton__Heartbeat *hb,
                               uint64_t now, router_hb_event_t *ev)
{
    router_instance_t *x = NULL;
    assert_int_equal(
        router_instances_heartbeat(s, (const uint8_t *)ident, strlen(ident), hb, now, &x, ev),
        BT_OK);
    return x;
}

static int n_dead;
static void on_dead(void *ctx, router_instance_t *inst)
{
    (void)ctx;
    (void)inst;
    n_dead++;
}

static void test_instances_liveness(void **state)
{
    (void)state;
    router_instances_params_t p = {.dead_after_ms = 1000, .model_id = "m"};
    router_instances_t *s;
    assert_int_equal(router_instances_create(&p, &s), BT_OK);
    Baton__Heartbeat hb = hb_of("d0", BATON__ROLE__DECODE, "m");
    router_hb_event_t ev;
    router_instance_t *x = beat(s, "d0", &hb, 10000, &ev);
    assert_int_equal(ev, ROUTER_HB_NEW);
    assert_string_equal(x->name, "d0");
    assert_true(router_instance_eligible(x));
    assert_int_equal(x->queue_len, 2);
    assert_ptr_equal(router_instances_find(s, (const uint8_t *)"d0", 2), x);
    assert_null(router_instances_find(s, (const uint8_t *)"d1", 2));

    n_dead = 0;
    router_instances_expire(s, 10999, on_dead, NULL);
    assert_true(x->alive);
    router_instances_touch(x, 10500); /* any message proves liveness */
    router_instances_expire(s, 11499, on_dead, NULL);
    assert_true(x->alive);
    router_instances_expire(s, 11500, on_dead, NULL);
    assert_false(x->alive);
    assert_int_equal(n_dead, 1);
    assert_false(router_instance_eligible(x));
    router_instances_expire(s, 12000, on_dead, NULL); /* reported once */
    assert_int_equal(n_dead, 1);

    assert_ptr_equal(beat(s, "d0", &hb, 13000, &ev), x); /* back: same record, same process */
    assert_int_equal(ev, ROUTER_HB_REVIVED);
    assert_true(x->alive);
    beat(s, "d0", &hb, 13100, &ev);
    assert_int_equal(ev, ROUTER_HB_REFRESH);
    hb.incarnation = 2;
    beat(s, "d0", &hb, 13200, &ev);
    assert_int_equal(ev, ROUTER_HB_RESTARTED);

    /* A dead record nobody refers to is dropped after 10 x dead_after. */
    router_instances_expire(s, 14300, on_dead, NULL);
    assert_int_equal(router_instances_count(s), 1);
    router_instances_expire(s, 13200 + 10000, on_dead, NULL);
    assert_int_equal(router_instances_count(s), 0);
    router_instances_destroy(s);
}

static void test_instances_model_load_and_bounds(void **state)
{
    (void)state;
    router_instances_params_t p = {.max_instances = 2}; /* model adopted from the first */
    router_instances_t *s;
    assert_int_equal(router_instances_create(&p, &s), BT_OK);
    router_hb_event_t ev;
    Baton__Heartbeat a = hb_of("p0", BATON__ROLE__PREFILL, "llama:1x2x3x4x5");
    Baton__Heartbeat b = hb_of("d0", BATON__ROLE__DECODE, "other:1x2x3x4x5");
    router_instance_t *x = beat(s, "p0", &a, 0, &ev);
    router_instance_t *y = beat(s, "d0", &b, 0, &ev);
    assert_string_equal(router_instances_model_id(s), "llama:1x2x3x4x5");
    assert_true(x->model_ok);
    assert_false(y->model_ok);
    assert_false(router_instance_eligible(y));

    router_instance_note_assign(x, 100);
    router_instance_note_assign(x, 50);
    assert_int_equal(x->pend_reqs, 2);
    assert_int_equal(x->pend_tokens, 150);
    x->full = 1;
    beat(s, "p0", &a, 10, &ev); /* a heartbeat resets what it already accounts for */
    assert_int_equal(x->pend_reqs, 0);
    assert_false(x->full);

    Baton__Heartbeat c = hb_of("x0", BATON__ROLE__COLOCATED, "llama:1x2x3x4x5");
    router_instance_t *z = NULL;
    assert_int_equal(router_instances_heartbeat(s, (const uint8_t *)"x0", 2, &c, 0, &z, &ev),
                     BT_ERR_NOSPACE);
    c.role = BATON__ROLE__ROLE_NONE;
    assert_int_equal(router_instances_heartbeat(s, (const uint8_t *)"p0", 2, &c, 0, &z, &ev),
                     BT_ERR_INVAL);
    router_instances_destroy(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_instances_liveness),
        cmocka_unit_test(test_instances_model_load_and_bounds),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
