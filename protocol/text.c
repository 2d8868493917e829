/* UTF-8 text and names (SPEC.md section 4). */
#include "imp/text.h"

int imp_utf8_valid(const uint8_t *p, size_t len)
{
    /* IMP-TEXT-001: RFC 3629 well-formedness (the table of its section 4) without U+0000. */
    size_t i = 0;
    while (i < len) {
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

static int is_alnum(uint8_t c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

int imp_name_valid(const uint8_t *p, size_t len)
{
    /* IMP-TEXT-002 */
    if (len < 1 || len > 32 || !is_alnum(p[0]))
        return 0;
    for (size_t i = 1; i < len; i++)
        if (!is_alnum(p[i]) && p[i] != '_' && p[i] != '-' && p[i] != '.')
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
