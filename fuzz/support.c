/* SPDX-License-Identifier: MIT */
/* support.c - helpers of fuzz.h, linked into both forms of every target. */
#include <stdlib.h>

#include "common/log.h"
#include "common/unicode.h"
#include "fuzz.h"

void fuzz_quiet_log(void)
{
    const char *lvl = getenv("BATON_FUZZ_LOG");
    int l = lvl ? bt_log_level_parse(lvl) : -1;
    bt_log_set_level(l >= 0 ? (bt_log_level_t)l : BT_LOG_OFF);
}

int fuzz_utf8_valid(const void *s, size_t n)
{
    const uint8_t *p = s;
    for (size_t i = 0; i < n;) {
        int k = bt_utf8_check(p + i, n - i);
        if (k <= 0)
            return 0;
        i += (size_t)k;
    }
    return 1;
}
