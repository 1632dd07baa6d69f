/* SPDX-License-Identifier: MIT */
/*
 * unicode.h - the small amount of Unicode the tokenizers need: UTF-8 decoding and encoding, the
 * code point classes of the BPE pre-tokenizer regexes (\p{L}, \p{N}, \s), and a strict UTF-8
 * checker for streaming output.
 *
 * Two decoders exist on purpose. bt_utf8_decode is lenient in exactly the way llama.cpp is, so
 * that token ids match it on any input; bt_utf8_check is strict (RFC 3629: no overlongs, no
 * surrogates, nothing above U+10FFFF) and decides what text may be shown to a client.
 * All functions are pure and thread-safe.
 */
#ifndef BATON_UNICODE_H
#define BATON_UNICODE_H

#include <stddef.h>
#include <stdint.h>

#define BT_UNI_LETTER 1u /* general category L* */
#define BT_UNI_NUMBER 2u /* general category N* */
#define BT_UNI_SPACE 4u  /* White_Space property */

#define BT_UNI_REPLACEMENT 0xFFFDu

/* Class flags of a code point (0 for anything else, including values above U+10FFFF). */
unsigned bt_unicode_flags(uint32_t cpt);

/* ASCII-only lowercase (the only case folding the contraction rules need). */
uint32_t bt_unicode_tolower_ascii(uint32_t cpt);

/* Length of the character a byte starts, by its high bits alone: 1 for ASCII and for stray
 * continuation bytes, 2, 3 or 4 for lead bytes (llama.cpp's unicode_len_utf8). */
size_t bt_utf8_lead_len(uint8_t b);

/* Decodes the code point at s (len >= 1 bytes) leniently, like llama.cpp: a lead byte with the
 * right number of continuation bytes is accepted without overlong or surrogate checks; anything
 * else yields U+FFFD and consumes one byte. Returns the bytes consumed (1..4). */
size_t bt_utf8_decode(const uint8_t *s, size_t len, uint32_t *cpt);

/* Writes cpt (<= 0x10FFFF) as UTF-8 into out (room for 4 bytes); returns its length. */
size_t bt_utf8_encode(uint32_t cpt, char *out);

/* Strict check of the character at s (len >= 1 bytes). Returns its length when it is complete
 * and valid; 0 when the bytes so far are a valid but incomplete prefix; -n when the first n
 * bytes are invalid and stand for one U+FFFD (Unicode's "maximal subpart" rule). */
int bt_utf8_check(const uint8_t *s, size_t len);

#endif
