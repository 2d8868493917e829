/* Unit tests for protocol/text.c: UTF-8 validation (IMP-TEXT-001), names (IMP-TEXT-002) and
 * their comparison (IMP-TEXT-003). UTF-8 is checked exhaustively for every 1-, 2- and 3-byte
 * string, for every code point's encoding, and against a reference decoder on random input;
 * inputs are placed at a guard page so that over-reads crash. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "guard.h"
#include "imp/imp.h"

/* ---- a reference decoder, written from RFC 3629's definition ---------------------------- */

/* Decode code points one by one: the lead byte gives the length (2 to 4) and the value bits;
 * continuation bytes are 10xxxxxx; the value must need that length (no overlong form), must
 * not be a surrogate, must be <= U+10FFFF; U+0000 is refused (IMP-TEXT-001). */
static int ref_utf8_valid(const uint8_t *p, size_t n)
{
    size_t i = 0;
    while (i < n) {
        uint32_t c = p[i];
        size_t len;
        uint32_t min;
        if (c == 0)
            return 0;
        if (c < 0x80) {
            i++;
            continue;
        }
        if ((c & 0xe0) == 0xc0) {
            len = 2;
            min = 0x80;
            c &= 0x1f;
        } else if ((c & 0xf0) == 0xe0) {
            len = 3;
            min = 0x800;
            c &= 0x0f;
        } else if ((c & 0xf8) == 0xf0) {
            len = 4;
            min = 0x10000;
            c &= 0x07;
        } else {
            return 0; /* continuation byte or 0xf8..0xff */
        }
        if (n - i < len)
            return 0;
        for (size_t k = 1; k < len; k++) {
            if ((p[i + k] & 0xc0) != 0x80)
                return 0;
            c = c << 6 | (p[i + k] & 0x3fu);
        }
        if (c < min || c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff))
            return 0;
        i += len;
    }
    return 1;
}

/* Encode a code point (any value up to 0x1fffff, surrogates included) in its shortest form,
 * or in `force` bytes (overlong) when force > 0. Returns the length. */
static size_t encode(uint32_t cp, size_t force, uint8_t out[4])
{
    size_t len = force ? force : cp < 0x80 ? 1 : cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4;
    if (len == 1) {
        out[0] = (uint8_t)cp;
        return 1;
    }
    static const uint8_t lead[5] = {0, 0, 0xc0, 0xe0, 0xf0};
    for (size_t k = len - 1; k > 0; k--) {
        out[k] = (uint8_t)(0x80 | (cp & 0x3f));
        cp >>= 6;
    }
    out[0] = (uint8_t)(lead[len] | cp);
    return len;
}

/* One guard-page buffer reused for every input (fewer mmap calls). */
static guard_buf gbuf;

/* imp_utf8_valid on a copy that ends at a guard page. */
static int valid_guarded(const uint8_t *p, size_t n)
{
    return imp_utf8_valid(guard_buf_place(&gbuf, p, n), n);
}

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint64_t rng(void)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 2685821657736338717ull;
}

/* The reference decoder agrees with the RFC on known cases (so that comparing with it means
 * something). */
static void test_reference_decoder(void **state)
{
    (void)state;
    assert_true(ref_utf8_valid((const uint8_t *)"\xc2\x80", 2));
    assert_true(ref_utf8_valid((const uint8_t *)"\xf4\x8f\xbf\xbf", 4));
    assert_false(ref_utf8_valid((const uint8_t *)"\xc0\x80", 2));
    assert_false(ref_utf8_valid((const uint8_t *)"\xed\xa0\x80", 3));
    assert_false(ref_utf8_valid((const uint8_t *)"\xf4\x90\x80\x80", 4));
    assert_false(ref_utf8_valid((const uint8_t *)"\x00", 1));
    assert_true(ref_utf8_valid((const uint8_t *)"", 0));
}

/* IMP-TEXT-001: every single byte: only U+0001..U+007F. */
static void test_utf8_one_byte(void **state)
{
    (void)state;
    for (unsigned b = 0; b < 256; b++) {
        uint8_t c = (uint8_t)b;
        assert_int_equal(valid_guarded(&c, 1), b >= 1 && b <= 0x7f);
    }
    assert_int_equal(imp_utf8_valid((const uint8_t *)"", 0), 1);
}

/* IMP-TEXT-001: all 65,536 two-byte strings, against the reference. */
static void test_utf8_two_bytes(void **state)
{
    (void)state;
    uint8_t *g = guard_copy("\0\0", 2);
    unsigned valid = 0;
    for (unsigned v = 0; v < 65536; v++) {
        g[0] = (uint8_t)(v >> 8);
        g[1] = (uint8_t)v;
        int want = ref_utf8_valid(g, 2);
        if (imp_utf8_valid(g, 2) != want)
            fail_msg("%02x %02x: expected %d", g[0], g[1], want);
        valid += (unsigned)want;
    }
    /* 127*127 ASCII pairs + 1920 two-byte code points (U+0080..U+07FF) */
    assert_int_equal(valid, 127 * 127 + 1920);
    guard_free(g, 2);
}

/* IMP-TEXT-001: all 16,777,216 three-byte strings, against the reference. */
static void test_utf8_three_bytes(void **state)
{
    (void)state;
    uint8_t *g = guard_copy("\0\0\0", 3);
    unsigned long valid = 0;
    for (uint32_t v = 0; v < (1u << 24); v++) {
        g[0] = (uint8_t)(v >> 16);
        g[1] = (uint8_t)(v >> 8);
        g[2] = (uint8_t)v;
        int want = ref_utf8_valid(g, 3);
        if (imp_utf8_valid(g, 3) != want)
            fail_msg("%02x %02x %02x: expected %d", g[0], g[1], g[2], want);
        valid += (unsigned long)want;
    }
    /* ASCII^3 + 2 * ASCII x 2-byte + the 3-byte code points minus surrogates */
    assert_int_equal(valid, 127ul * 127 * 127 + 2ul * 127 * 1920 + (0x10000ul - 0x800 - 0x800));
    guard_free(g, 3);
}

/* IMP-TEXT-001: four-byte strings: every lead byte 0xf0..0xff with every second byte and
 * boundary values for the last two. */
static void test_utf8_four_bytes(void **state)
{
    (void)state;
    static const uint8_t tail[] = {0x00, 0x41, 0x7f, 0x80, 0x81, 0x8f, 0x90, 0x9f,
                                   0xa0, 0xbf, 0xc0, 0xc2, 0xe0, 0xf0, 0xf4, 0xff};
    uint8_t *g = guard_copy("\0\0\0\0", 4);
    for (unsigned lead = 0xe0; lead < 256; lead++) {
        for (unsigned b1 = 0; b1 < 256; b1++) {
            for (size_t i = 0; i < sizeof tail; i++) {
                for (size_t k = 0; k < sizeof tail; k++) {
                    g[0] = (uint8_t)lead;
                    g[1] = (uint8_t)b1;
                    g[2] = tail[i];
                    g[3] = tail[k];
                    int want = ref_utf8_valid(g, 4);
                    if (imp_utf8_valid(g, 4) != want)
                        fail_msg("%02x %02x %02x %02x: expected %d", g[0], g[1], g[2], g[3], want);
                }
            }
        }
    }
    guard_free(g, 4);
}

/* IMP-TEXT-001: every code point's shortest encoding is valid except surrogates and U+0000;
 * every overlong encoding is invalid; values above U+10FFFF are invalid. */
static void test_utf8_every_code_point(void **state)
{
    (void)state;
    uint8_t b[4];
    for (uint32_t cp = 0; cp <= 0x10ffff; cp++) {
        size_t n = encode(cp, 0, b);
        int want = cp != 0 && !(cp >= 0xd800 && cp <= 0xdfff);
        if (imp_utf8_valid(b, n) != want)
            fail_msg("U+%04X: expected %d", cp, want);
        /* every longer (overlong) form is invalid */
        for (size_t f = n + 1; f <= 4; f++) {
            if (f == 1)
                continue;
            size_t m = encode(cp, f, b);
            if (imp_utf8_valid(b, m))
                fail_msg("overlong U+%04X in %zu bytes accepted", cp, f);
        }
        /* every proper prefix of a multi-byte form is invalid (truncated) */
        n = encode(cp, 0, b);
        for (size_t k = 1; k < n; k++)
            if (imp_utf8_valid(b, k))
                fail_msg("U+%04X cut to %zu bytes accepted", cp, k);
    }
    for (uint32_t cp = 0x110000; cp < 0x200000; cp += 0x111) {
        size_t n = encode(cp, 4, b);
        assert_int_equal(imp_utf8_valid(b, n), 0);
    }
}

/* IMP-TEXT-001: the boundaries, spelled out. */
static void test_utf8_boundaries(void **state)
{
    (void)state;
    static const struct {
        const char *s;
        size_t n;
        int ok;
    } cases[] = {
        {"\x7f", 1, 1},
        {"\xc2\x80", 2, 1}, /* U+007F / U+0080 */
        {"\xc1\xbf", 2, 0},
        {"\xc0\x80", 2, 0}, /* overlong U+007F, NUL */
        {"\xdf\xbf", 2, 1},
        {"\xe0\xa0\x80", 3, 1}, /* U+07FF / U+0800 */
        {"\xe0\x9f\xbf", 3, 0}, /* overlong U+07FF */
        {"\xed\x9f\xbf", 3, 1},
        {"\xed\xa0\x80", 3, 0}, /* U+D7FF / U+D800 */
        {"\xed\xbf\xbf", 3, 0},
        {"\xee\x80\x80", 3, 1}, /* U+DFFF / U+E000 */
        {"\xef\xbf\xbf", 3, 1},
        {"\xf0\x90\x80\x80", 4, 1}, /* U+FFFF / U+10000 */
        {"\xf0\x8f\xbf\xbf", 4, 0}, /* overlong U+FFFF */
        {"\xf4\x8f\xbf\xbf", 4, 1},
        {"\xf4\x90\x80\x80", 4, 0}, /* U+10FFFF / U+110000 */
        {"\xf5\x80\x80\x80", 4, 0},
        {"\xf7\xbf\xbf\xbf", 4, 0}, /* leads F5..F7 */
        {"\xf8\x88\x80\x80\x80", 5, 0},
        {"\xfc\x84\x80\x80\x80\x80", 6, 0},
        {"\xfe", 1, 0},
        {"\xff", 1, 0},
        {"\x80", 1, 0},
        {"\xbf", 1, 0}, /* lone continuations */
        {"a\x80", 2, 0},
        {"\xc3\xa9\xa9", 3, 0}, /* stray continuation */
        {"\xc3", 1, 0},
        {"ab\xe2\x82", 4, 0}, /* truncated at the end */
        {"\xf0\x9f\x98", 3, 0},
        {"\xc3(", 2, 0}, /* bad continuation */
        {"a\0b", 3, 0},
        {"\0", 1, 0}, /* NUL */
        {"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80", 14, 1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const uint8_t *p = (const uint8_t *)cases[i].s;
        if (valid_guarded(p, cases[i].n) != cases[i].ok)
            fail_msg("case %zu: expected %d", i, cases[i].ok);
        assert_int_equal(ref_utf8_valid(p, cases[i].n), cases[i].ok);
    }
    /* the length is honoured: a valid sequence whose last byte is outside len is truncated */
    assert_int_equal(valid_guarded((const uint8_t *)"\xe2\x82\xac", 2), 0);
    assert_int_equal(imp_utf8_valid((const uint8_t *)"ab\0", 2), 1);
}

/* IMP-TEXT-001: random valid strings (random code points, encoded) are valid; random byte
 * strings agree with the reference decoder. */
static void test_utf8_random(void **state)
{
    (void)state;
    uint8_t buf[4 * 64];
    for (int round = 0; round < 20000; round++) {
        size_t n = 0, cps = (size_t)(rng() % 64);
        for (size_t k = 0; k < cps; k++) {
            uint32_t cp;
            do {
                uint64_t r = rng();
                /* favour each length class equally */
                static const uint32_t span[4][2] = {
                    {1, 0x7f}, {0x80, 0x7ff}, {0x800, 0xffff}, {0x10000, 0x10ffff}};
                unsigned cls = (unsigned)(r % 4);
                cp = span[cls][0] + (uint32_t)((r >> 8) % (span[cls][1] - span[cls][0] + 1));
            } while (cp >= 0xd800 && cp <= 0xdfff);
            n += encode(cp, 0, buf + n);
        }
        if (!valid_guarded(buf, n))
            fail_msg("round %d: a valid string of %zu bytes refused", round, n);
        /* flip one byte: the result must agree with the reference either way */
        if (n) {
            size_t at = (size_t)(rng() % n);
            buf[at] = (uint8_t)rng();
            assert_int_equal(valid_guarded(buf, n), ref_utf8_valid(buf, n));
        }
    }
    /* random bytes drawn from an alphabet rich in lead and continuation bytes */
    static const uint8_t alpha[] = {0x00, 0x01, 0x41, 0x7f, 0x80, 0x8f, 0x90, 0x9f, 0xa0, 0xbf,
                                    0xc0, 0xc1, 0xc2, 0xdf, 0xe0, 0xe1, 0xec, 0xed, 0xee, 0xef,
                                    0xf0, 0xf1, 0xf3, 0xf4, 0xf5, 0xf8, 0xfe, 0xff};
    unsigned agreed_valid = 0;
    for (int round = 0; round < 300000; round++) {
        size_t n = (size_t)(rng() % 12);
        for (size_t k = 0; k < n; k++)
            buf[k] = (rng() & 3) ? alpha[rng() % sizeof alpha] : (uint8_t)rng();
        int want = ref_utf8_valid(buf, n);
        if (valid_guarded(buf, n) != want)
            fail_msg("random round %d (%zu bytes): expected %d", round, n, want);
        agreed_valid += (unsigned)want;
    }
    assert_true(agreed_valid > 1000); /* the alphabet does produce valid strings too */
}

/* IMP-TEXT-001 on long strings (the validator takes ASCII eight bytes at a time): ASCII runs of
 * 0 to 80 bytes with one NUL, one stray continuation byte, one bad lead byte, one truncated or
 * one valid multi-byte sequence at every position, against the reference decoder. */
static void test_utf8_long_runs(void **state)
{
    (void)state;
    static const struct {
        const char *s;
        size_t n;
    } inserts[] = {
        {"\x00", 1},         {"\x80", 1},
        {"\xbf", 1},         {"\xff", 1},
        {"\xc0\x80", 2},     {"\xc3", 1},
        {"\xc3\xa9", 2},     {"\xe2\x82\xac", 3},
        {"\xed\xa0\x80", 3}, {"\xf0\x9f\x98\x80", 4},
        {"\x7f", 1},         {"\x01", 1},
    };
    uint8_t buf[96];
    unsigned valid = 0, invalid = 0;
    for (size_t n = 0; n <= 80; n++) {
        for (size_t k = 0; k < n; k++)
            buf[k] = (uint8_t)(0x20 + (k * 7) % 0x5f);
        assert_true(valid_guarded(buf, n));
        for (size_t w = 0; w < sizeof inserts / sizeof inserts[0]; w++) {
            size_t len = inserts[w].n;
            for (size_t at = 0; at + len <= n; at++) {
                uint8_t t[96];
                memcpy(t, buf, n);
                memcpy(t + at, inserts[w].s, len);
                int want = ref_utf8_valid(t, n);
                if (valid_guarded(t, n) != want)
                    fail_msg("%zu bytes, insert %zu at %zu: expected %d", n, w, at, want);
                if (want)
                    valid++;
                else
                    invalid++;
            }
        }
    }
    assert_true(valid > 1000 && invalid > 1000);
}

/* ---- names ------------------------------------------------------------------------------ */

static int is_alnum(unsigned c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

static int name_guarded(const char *s, size_t n)
{
    return imp_name_valid(guard_buf_place(&gbuf, s, n), n);
}

/* IMP-TEXT-002: every byte value as the first byte, as a later byte, as the last byte of 32. */
static void test_name_every_byte(void **state)
{
    (void)state;
    for (unsigned b = 0; b < 256; b++) {
        int later = is_alnum(b) || b == '-' || b == '_' || b == '.';
        char s[32];
        s[0] = (char)b;
        if (name_guarded(s, 1) != is_alnum(b))
            fail_msg("first byte 0x%02x", b);
        s[0] = 'a';
        s[1] = (char)b;
        if (name_guarded(s, 2) != later)
            fail_msg("second byte 0x%02x", b);
        memset(s, 'Z', 32);
        s[31] = (char)b;
        if (name_guarded(s, 32) != later)
            fail_msg("32nd byte 0x%02x", b);
        s[31] = 'z';
        s[15] = (char)b;
        if (name_guarded(s, 32) != later)
            fail_msg("middle byte 0x%02x", b);
    }
}

/* IMP-TEXT-002: lengths 1 to 32; 0 and 33 are refused. */
static void test_name_lengths(void **state)
{
    (void)state;
    char s[40];
    memset(s, 'n', sizeof s);
    assert_int_equal(imp_name_valid((const uint8_t *)s, 0), 0);
    for (size_t n = 1; n <= 32; n++)
        assert_int_equal(name_guarded(s, n), 1);
    assert_int_equal(name_guarded(s, 33), 0);
    assert_int_equal(name_guarded(s, 40), 0);
    assert_int_equal(name_guarded("9lives", 6), 1);
    assert_int_equal(name_guarded("A.b-C_d", 7), 1);
    assert_int_equal(name_guarded("a..", 3), 1);
    assert_int_equal(name_guarded("-a", 2), 0);
    assert_int_equal(name_guarded("_a", 2), 0);
    assert_int_equal(name_guarded(".a", 2), 0);
    assert_int_equal(name_guarded("a b", 3), 0);
    assert_int_equal(name_guarded("al\xc3\xa9", 4), 0);
    assert_int_equal(name_guarded("a@b", 3), 0);
    /* the length is honoured: a bad byte just past it does not matter */
    assert_int_equal(imp_name_valid((const uint8_t *)"ab cd", 2), 1);
}

/* IMP-TEXT-003: folding maps A-Z to a-z and leaves every other byte alone, in place too. */
static void test_name_fold(void **state)
{
    (void)state;
    uint8_t in[256], out[256];
    for (unsigned b = 0; b < 256; b++)
        in[b] = (uint8_t)b;
    memset(out, 0xaa, sizeof out);
    imp_name_fold(in, 256, out);
    for (unsigned b = 0; b < 256; b++) {
        unsigned want = (b >= 'A' && b <= 'Z') ? b + 32 : b;
        if (out[b] != want)
            fail_msg("fold(0x%02x) = 0x%02x", b, out[b]);
        assert_int_equal(in[b], b); /* input untouched */
    }
    uint8_t s[] = "Alice.Bob-42_Z";
    imp_name_fold(s, sizeof s - 1, s);
    assert_memory_equal(s, "alice.bob-42_z", sizeof s - 1);
    uint8_t one = 'Q';
    imp_name_fold(&one, 0, &one); /* zero length writes nothing */
    assert_int_equal(one, 'Q');
}

/* IMP-TEXT-003: equality ignores ASCII case only: every pair of bytes. */
static void test_name_equal(void **state)
{
    (void)state;
    for (unsigned a = 0; a < 256; a++) {
        for (unsigned b = 0; b < 256; b++) {
            uint8_t x[3] = {'k', (uint8_t)a, 'z'}, y[3] = {'K', (uint8_t)b, 'Z'};
            unsigned fa = (a >= 'A' && a <= 'Z') ? a + 32 : a;
            unsigned fb = (b >= 'A' && b <= 'Z') ? b + 32 : b;
            if (imp_name_equal(x, 3, y, 3) != (fa == fb))
                fail_msg("bytes 0x%02x 0x%02x", a, b);
        }
    }
    assert_int_equal(imp_name_equal((const uint8_t *)"Alice", 5, (const uint8_t *)"aLICE", 5), 1);
    assert_int_equal(imp_name_equal((const uint8_t *)"alice", 5, (const uint8_t *)"alic", 4), 0);
    assert_int_equal(imp_name_equal((const uint8_t *)"alic", 4, (const uint8_t *)"alice", 5), 0);
    assert_int_equal(imp_name_equal((const uint8_t *)"a", 1, (const uint8_t *)"b", 1), 0);
    assert_int_equal(imp_name_equal((const uint8_t *)"x", 0, (const uint8_t *)"y", 0), 1);
    /* '@' (0x40) and '`' (0x60), '[' and '{' differ by 0x20 but are not letters */
    assert_int_equal(imp_name_equal((const uint8_t *)"@", 1, (const uint8_t *)"`", 1), 0);
    assert_int_equal(imp_name_equal((const uint8_t *)"[", 1, (const uint8_t *)"{", 1), 0);
    /* lengths are honoured (guarded copies) */
    uint8_t *g1 = guard_copy("Bob", 3), *g2 = guard_copy("bOB", 3);
    assert_int_equal(imp_name_equal(g1, 3, g2, 3), 1);
    guard_free(g1, 3);
    guard_free(g2, 3);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reference_decoder), cmocka_unit_test(test_utf8_one_byte),
        cmocka_unit_test(test_utf8_two_bytes),    cmocka_unit_test(test_utf8_three_bytes),
        cmocka_unit_test(test_utf8_four_bytes),   cmocka_unit_test(test_utf8_every_code_point),
        cmocka_unit_test(test_utf8_boundaries),   cmocka_unit_test(test_utf8_random),
        cmocka_unit_test(test_utf8_long_runs),    cmocka_unit_test(test_name_every_byte),
        cmocka_unit_test(test_name_lengths),      cmocka_unit_test(test_name_fold),
        cmocka_unit_test(test_name_equal),
    };
    int r = cmocka_run_group_tests(tests, NULL, NULL);
    guard_buf_free(&gbuf);
    return r;
}
