/* UTF-8 text and names (SPEC.md section 4). */
#include "imp/text.h"

#include <string.h>

#define ONES UINT64_C(0x0101010101010101)
#define HIGHS UINT64_C(0x8080808080808080)

int imp_utf8_valid(const uint8_t *p, size_t len)
{
    /* IMP-TEXT-001: RFC 3629 well-formedness (the table of its section 4) without U+0000. */
    size_t i = 0;
    while (i < len) {
        if (len - i >= 8) {
            /* eight bytes at once while they are ASCII without NUL (issue 3): no byte has its
             * high bit set, and none is zero ((x - 1) & ~x has the high bit of the lowest zero
             * byte set, and of no byte when there is none) */
            uint64_t x;
            memcpy(&x, p + i, 8);
            if (!((x | ((x - ONES) & ~x)) & HIGHS)) {
                i += 8;
                continue;
            }
        }
        uint8_t c = p[i];
        if (c < 0x80) {
            if (c == 0)
                return 0;
            i++;
            continue;
        }
        size_t n;
        uint8_t lo = 0x80, hi = 0xBF; /* allowed range of the second byte */
        if (c >= 0xC2 && c <= 0xDF) {
            n = 2;
        } else if (c >= 0xE0 && c <= 0xEF) {
            n = 3;
            if (c == 0xE0)
                lo = 0xA0; /* overlong */
            else if (c == 0xED)
                hi = 0x9F; /* surrogates */
        } else if (c >= 0xF0 && c <= 0xF4) {
            n = 4;
            if (c == 0xF0)
                lo = 0x90; /* overlong */
            else if (c == 0xF4)
                hi = 0x8F; /* above U+10FFFF */
        } else {
            return 0; /* continuation byte, C0, C1, F5..FF */
        }
        if (len - i < n)
            return 0;
        if (p[i + 1] < lo || p[i + 1] > hi)
            return 0;
        for (size_t k = 2; k < n; k++)
            if ((p[i + k] & 0xC0) != 0x80)
                return 0;
        i += n;
    }
    return 1;
}

/* IMP-TEXT-002 byte classes: 1 = may start a name (ASCII letters and digits), 2 = may
 * follow (those and '-', '_', '.'). One load per byte (issue 3: names are checked in every
 * SEND, DELIVER and ACK). */
/* clang-format off */
static const uint8_t name_class[256] = {
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* 0x00 */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* 0x10 */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 2, 0, /* 0x20 */
    3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 0, 0, 0, 0, 0, 0, /* 0x30 */
    0, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, /* 0x40 */
    3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 0, 0, 0, 0, 2, /* 0x50 */
    0, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, /* 0x60 */
    3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 0, 0, 0, 0, 0, /* 0x70 */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* 0x80 */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* 0x90 */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* 0xA0 */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* 0xB0 */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* 0xC0 */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* 0xD0 */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* 0xE0 */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* 0xF0 */
};
/* clang-format on */

int imp_name_valid(const uint8_t *p, size_t len)
{
    /* IMP-TEXT-002 */
    if (len < 1 || len > 32 || !(name_class[p[0]] & 1u))
        return 0;
    for (size_t i = 1; i < len; i++)
        if (!(name_class[p[i]] & 2u))
            return 0;
    return 1;
}

static uint8_t fold(uint8_t c)
{
    return c >= 'A' && c <= 'Z' ? (uint8_t)(c + ('a' - 'A')) : c;
}

void imp_name_fold(const uint8_t *p, size_t len, uint8_t *out)
{
    /* IMP-TEXT-003 */
    for (size_t i = 0; i < len; i++)
        out[i] = fold(p[i]);
}

int imp_name_equal(const uint8_t *a, size_t alen, const uint8_t *b, size_t blen)
{
    if (alen != blen)
        return 0;
    for (size_t i = 0; i < alen; i++)
        if (fold(a[i]) != fold(b[i]))
            return 0;
    return 1;
}
