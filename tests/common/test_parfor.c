/* SPDX-License-Identifier: MIT */
/*
 * test_parfor.c - the small thread pool: every item runs exactly once per run, over many runs
 * back to back (a helper still finishing one run must not take the next run's items), with
 * more helpers than items and with none.
 */
// ctest-labels: unit
#include "testutil.h"

#include <stdatomic.h>
#include <stdlib.h>

#include "common/parfor.h"
#include "common/status.h"

typedef struct {
    atomic_int hits[257];
} tally_t;

static void count(void *arg, int i)
{
    tally_t *t = arg;
    atomic_fetch_add(&t->hits[i], 1);
}

static void runs(bt_parfor_t *p)
{
    tally_t *t = calloc(1, sizeof *t);
    for (int r = 0; r < 2000; r++) {
        int n = 1 + (r * 37) % 257;
        for (int i = 0; i < 257; i++)
            atomic_store(&t->hits[i], 0);
        bt_parfor_run(p, n, count, t);
        for (int i = 0; i < 257; i++)
            assert_int_equal(atomic_load(&t->hits[i]), i < n ? 1 : 0);
    }
    bt_parfor_run(p, 0, count, t); /* nothing to do */
    free(t);
}

static void test_parfor_every_item_once(void **state)
{
    (void)state;
    for (int threads = 1; threads <= 6; threads += 5) {
        bt_parfor_t *p = NULL;
        assert_int_equal(bt_parfor_create(threads, &p), BT_OK);
        assert_non_null(p);
        assert_int_equal(bt_parfor_threads(p), threads);
        runs(p);
        bt_parfor_destroy(p);
    }
    runs(NULL); /* no pool: all in the caller */
    bt_parfor_t *dflt = NULL;
    assert_int_equal(bt_parfor_create(0, &dflt), BT_OK);
    runs(dflt);
    bt_parfor_destroy(dflt);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parfor_every_item_once),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
