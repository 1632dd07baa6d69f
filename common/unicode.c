/* SPDX-License-Identifier: MIT */
/*
 * unicode.c - UTF-8 decoding/encoding and code point classes for the tokenizers.
 *
 * The class table is generated (unicode_tables.h, from common/gen_unicode.py) as sorted ranges
 * and searched by bisection; ASCII, which is most of most prompts, takes a direct path.
 */
#include "unicode.h"

struct bt_uni_range {
    uint32_t first;
    uint32_t last;
    uint32_t flags;
};

#include "unicode_tables.h"

static unsigned ascii_flags(uint32_t c)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) {
        return BT_UNI_LETTER;
    }
    if (c >= '0' && c <= '9') {
        return BT_UNI_NUMBER;
    }
    if (c == ' ' || (c >= 0x09 && c <= 0x0D)) {
        return BT_UNI_SPACE;
    }
    return 0;
}

unsigned bt_unicode_flags(uint32_t cpt)
{
    if (cpt < 0x80) {
        return ascii_flags(cpt);
    }
    size_t lo = 0;
    size_t hi = sizeof(bt_uni_ranges) / sizeof(bt_uni_ranges[0]);
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (cpt < bt_uni_ranges[mid].first) {
            hi = mid;
        } else if (cpt > bt_uni_ranges[mid].last) {
            lo = mid + 1;
        } else {
            return bt_uni_ranges[mid].flags;
        }
    }
    return 0;
}

uint32_t bt_unicode_tolower_ascii(uint32_t cpt)
{
    return (cpt >= 'A' && cpt <= 'Z') ? cpt + ('a' - 'A') : cpt;
}

size_t bt_utf8_lead_len(uint8_t b)
{
    static const uint8_t len_by_high_bits[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
    return len_by_high_bits[b >> 4];
}

static int is_cont(uint8_t b)
{
    return (b & 0xC0) == 0x80;
}

size_t bt_utf8_decode(const uint8_t *s, size_t len, uint32_t *cpt)
{
    uint8_t b = s[0];
    size_t n;
    uint32_t c;
    if (b < 0x80) {
        *cpt = b;
        return 1;
    }
    if ((b & 0xE0) == 0xC0) {
        n = 2;
        c = b & 0x1F;
    } else if ((b & 0xF0) == 0xE0) {
        n = 3;
        c = b & 0x0F;
    } else if ((b & 0xF8) == 0xF0) {
        n = 4;
        c = b & 0x07;
    } else {
        *cpt = BT_UNI_REPLACEMENT; /* stray continuation byte or 0xF8..0xFF */
        return 1;
    }
    if (len < n) {
        *cpt = BT_UNI_REPLACEMENT;
        return 1;
    }
    for (size_t i = 1; i < n; i++) {
        if (!is_cont(s[i])) {
            *cpt = BT_UNI_REPLACEMENT;
            return 1;
        }
        c = (c << 6) | (s[i] & 0x3F);
    }
    /* Above U+10FFFF cannot be re-encoded (llama.cpp throws there); treat it as invalid. */
    if (c > 0x10FFFF) {
        *cpt = BT_UNI_REPLACEMENT;
        return 1;
    }
    *cpt = c;
    return n;
}

size_t bt_utf8_encode(uint32_t cpt, char *out)
{
    uint8_t *o = (uint8_t *)out;
    if (cpt < 0x80) {
        o[0] = (uint8_t)cpt;
        return 1;
    }
    if (cpt < 0x800) {
        o[0] = (uint8_t)(0xC0 | (cpt >> 6));
        o[1] = (uint8_t)(0x80 | (cpt & 0x3F));
        return 2;
    }
    if (cpt < 0x10000) {
        o[0] = (uint8_t)(0xE0 | (cpt >> 12));
        o[1] = (uint8_t)(0x80 | ((cpt >> 6) & 0x3F));
        o[2] = (uint8_t)(0x80 | (cpt & 0x3F));
        return 3;
    }
    o[0] = (uint8_t)(0xF0 | (cpt >> 18));
    o[1] = (uint8_t)(0x80 | ((cpt >> 12) & 0x3F));
    o[2] = (uint8_t)(0x80 | ((cpt >> 6) & 0x3F));
    o[3] = (uint8_t)(0x80 | (cpt & 0x3F));
    return 4;
}

/* Range allowed for the second byte after a lead byte (RFC 3629 table). */
static void second_byte_range(uint8_t lead, uint8_t *lo, uint8_t *hi)
{
    *lo = 0x80;
    *hi = 0xBF;
    if (lead == 0xE0) {
        *lo = 0xA0; /* no overlongs */
    } else if (lead == 0xED) {
        *hi = 0x9F; /* no surrogates */
    } else if (lead == 0xF0) {
        *lo = 0x90; /* no overlongs */
    } else if (lead == 0xF4) {
        *hi = 0x8F; /* nothing above U+10FFFF */
    }
}

int bt_utf8_check(const uint8_t *s, size_t len)
{
    uint8_t b = s[0];
    int n;
    if (b < 0x80) {
        return 1;
    }
    if (b >= 0xC2 && b <= 0xDF) {
        n = 2;
    } else if (b >= 0xE0 && b <= 0xEF) {
        n = 3;
    } else if (b >= 0xF0 && b <= 0xF4) {
        n = 4;
    } else {
        return -1;
    }
    uint8_t lo, hi;
    second_byte_range(b, &lo, &hi);
    for (int i = 1; i < n; i++) {
        if ((size_t)i >= len) {
            return 0;
        }
        if (s[i] < lo || s[i] > hi) {
            return -i;
        }
        lo = 0x80;
        hi = 0xBF;
    }
    return n;
}
