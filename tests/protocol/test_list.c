/* Tests for protocol/list.c: the list iterators and builders of msg.h, and the list rules of
 * IMP-FIELD-009 as imp_msg_decode / imp_msg_validate apply them.
 *
 * Every list handed to an iterator or a decoder is an exact-size heap copy, and every builder
 * buffer is exactly `cap` bytes, so AddressSanitizer reports a read or write one byte past the
 * end.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "imp/imp.h"

#define BIT(t) (UINT64_C(1) << (t))

/* ---- helpers ------------------------------------------------------------------------------- */

static uint8_t *dup_exact(const void *p, size_t n)
{
    uint8_t *c = malloc(n > 0 ? n : 1);
    assert_non_null(c);
    if (n > 0)
        memcpy(c, p, n);
    return c;
}

static void put16(uint8_t *p, uint64_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static void put32(uint8_t *p, uint64_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static void put64(uint8_t *p, uint64_t v)
{
    put32(p, v >> 32);
    put32(p + 4, v & 0xffffffffu);
}

/* A growable byte string for hand-written lists and payloads. */
typedef struct sbuf {
    uint8_t *p;
    size_t n, cap;
} sbuf;

static void s_raw(sbuf *s, const void *p, size_t len)
{
    if (s->n + len > s->cap) {
        size_t cap = (s->n + len) * 2 + 64;
        uint8_t *q = realloc(s->p, cap);
        assert_non_null(q);
        s->p = q;
        s->cap = cap;
    }
    if (len > 0)
        memcpy(s->p + s->n, p, len);
    s->n += len;
}

static void s_u8(sbuf *s, unsigned v)
{
    uint8_t b = (uint8_t)v;
    s_raw(s, &b, 1);
}

static void s_u16(sbuf *s, uint64_t v)
{
    uint8_t b[2];
    put16(b, v);
    s_raw(s, b, 2);
}

static void s_u64(sbuf *s, uint64_t v)
{
    uint8_t b[8];
    put64(b, v);
    s_raw(s, b, 8);
}

static void s_free(sbuf *s)
{
    free(s->p);
    s->p = NULL;
    s->n = s->cap = 0;
}

/* List entries written by hand. */
static void l_name(sbuf *s, const void *name, size_t len)
{
    s_u8(s, (unsigned)len);
    s_raw(s, name, len);
}

static void l_header(sbuf *s, const void *k, size_t klen, const void *v, size_t vlen)
{
    s_u8(s, (unsigned)klen);
    s_raw(s, k, klen);
    s_u16(s, vlen);
    s_raw(s, v, vlen);
}

static void l_stat(sbuf *s, const void *name, size_t len, uint64_t v)
{
    s_u8(s, (unsigned)len);
    s_raw(s, name, len);
    s_u64(s, v);
}

static void p_field(sbuf *s, unsigned tag, const void *v, size_t len)
{
    uint8_t h[6];
    put16(h, tag);
    put32(h + 2, len);
    s_raw(s, h, 6);
    s_raw(s, v, len);
}

/* A frame around payload, parsed and decoded from an exact-size heap copy; *keep (if not NULL)
 * receives the frame bytes so views stay valid. */
static int decode_payload(uint8_t type, const sbuf *payload, imp_msg *m, uint8_t **keep)
{
    size_t total = IMP_HEADER_SIZE + payload->n, need = 0;
    uint8_t *f = malloc(total);
    imp_frame fr;
    int r;
    assert_non_null(f);
    f[0] = 1;
    f[1] = type;
    f[2] = f[3] = 0;
    put32(f + 4, payload->n);
    put32(f + 8, 42);
    if (payload->n > 0)
        memcpy(f + IMP_HEADER_SIZE, payload->p, payload->n);
    assert_int_equal(imp_frame_parse(f, total, 0, &fr, &need), (imp_ssize)total);
    r = imp_msg_decode(&fr, m);
    if (keep != NULL)
        *keep = f;
    else
        free(f);
    return r;
}

/* The list in the one list field of a minimal message of its kind, decoded and validated:
 * SUBSCRIBE NAMES, SEND HEADERS (broadcast, empty BODY), STATS_REPLY STATS. Both results must
 * agree; returns the decode result. */
static int check_list(imp_kind kind, const sbuf *list)
{
    sbuf p = {NULL, 0, 0};
    imp_msg m, v;
    uint8_t type;
    int rd, rv;
    uint8_t *copy = dup_exact(list->p, list->n);
    switch (kind) {
    case IMP_K_NAMES:
        type = IMP_SUBSCRIBE;
        p_field(&p, IMP_T_NAMES, list->p, list->n);
        imp_msg_init(&v, type, 1);
        imp_msg_set_b(&v, IMP_T_NAMES, copy, list->n);
        break;
    case IMP_K_HEADERS:
        type = IMP_SEND;
        p_field(&p, IMP_T_TARGET_KIND, "\x03", 1);
        p_field(&p, IMP_T_HEADERS, list->p, list->n);
        p_field(&p, IMP_T_BODY, "", 0);
        imp_msg_init(&v, type, 1);
        imp_msg_set_u(&v, IMP_T_TARGET_KIND, IMP_TARGET_BROADCAST);
        imp_msg_set_b(&v, IMP_T_HEADERS, copy, list->n);
        imp_msg_set_b(&v, IMP_T_BODY, "", 0);
        break;
    default:
        type = IMP_STATS_REPLY;
        p_field(&p, IMP_T_STATS, list->p, list->n);
        imp_msg_init(&v, type, 1);
        imp_msg_set_b(&v, IMP_T_STATS, copy, list->n);
        break;
    }
    rd = decode_payload(type, &p, &m, NULL);
    rv = imp_msg_validate(&v);
    if (rd != rv)
        fail_msg("list kind %d of %zu bytes: decode %d, validate %d", (int)kind, list->n, rd, rv);
    s_free(&p);
    free(copy);
    return rd;
}

static void expect_list(imp_kind kind, const sbuf *list, int want, const char *what)
{
    int got = check_list(kind, list);
    if (got != want)
        fail_msg("%s: expected %d, got %d", what, want, got);
}

static const char NAME32[] = "abcdefghijklmnopqrstuvwxyz012345";
static const char KEY64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-.";

/* ---- iterators ----------------------------------------------------------------------------- */

/* IMP-FIELD-009 names: entries come back in order as views into the list; then 0, again 0. */
static void test_names_next_valid(void **state)
{
    sbuf s = {NULL, 0, 0};
    uint8_t *c;
    imp_bytes rest, name;
    (void)state;
    l_name(&s, "bob", 3);
    l_name(&s, "Alice", 5);
    l_name(&s, "x", 1);
    l_name(&s, NAME32, 32);
    c = dup_exact(s.p, s.n);
    rest.p = c;
    rest.len = s.n;
    assert_int_equal(imp_names_next(&rest, &name), 1);
    assert_ptr_equal(name.p, c + 1);
    assert_int_equal(name.len, 3);
    assert_ptr_equal(rest.p, c + 4);
    assert_int_equal(rest.len, s.n - 4);
    assert_int_equal(imp_names_next(&rest, &name), 1);
    assert_ptr_equal(name.p, c + 5);
    assert_int_equal(name.len, 5);
    assert_int_equal(imp_names_next(&rest, &name), 1);
    assert_ptr_equal(name.p, c + 11);
    assert_int_equal(name.len, 1);
    assert_int_equal(imp_names_next(&rest, &name), 1);
    assert_ptr_equal(name.p, c + 13);
    assert_int_equal(name.len, 32);
    assert_int_equal(rest.len, 0);
    assert_int_equal(imp_names_next(&rest, &name), 0);
    assert_int_equal(imp_names_next(&rest, &name), 0);
    free(c);
    s_free(&s);
}

static void test_headers_next_valid(void **state)
{
    sbuf s = {NULL, 0, 0};
    uint8_t *c, v300[300], v1024[1024];
    imp_bytes rest, k, v;
    size_t off;
    (void)state;
    memset(v300, 'v', sizeof v300);
    memset(v1024, 'w', sizeof v1024);
    l_header(&s, "Content-Type", 12, "text/plain", 10);
    l_header(&s, "x", 1, "", 0);
    l_header(&s, "k.2_-", 5, "h\xc3\xa9", 3);
    l_header(&s, "long", 4, v300, sizeof v300); /* vlen 0x012c: both bytes matter */
    l_header(&s, KEY64, 64, v1024, sizeof v1024);
    c = dup_exact(s.p, s.n);
    rest.p = c;
    rest.len = s.n;
    assert_int_equal(imp_headers_next(&rest, &k, &v), 1);
    assert_ptr_equal(k.p, c + 1);
    assert_int_equal(k.len, 12);
    assert_ptr_equal(v.p, c + 15);
    assert_int_equal(v.len, 10);
    off = 25;
    assert_ptr_equal(rest.p, c + off);
    assert_int_equal(imp_headers_next(&rest, &k, &v), 1);
    assert_ptr_equal(k.p, c + off + 1);
    assert_int_equal(k.len, 1);
    assert_int_equal(v.len, 0);
    off += 4;
    assert_int_equal(imp_headers_next(&rest, &k, &v), 1);
    assert_ptr_equal(k.p, c + off + 1);
    assert_int_equal(k.len, 5);
    assert_ptr_equal(v.p, c + off + 8);
    assert_int_equal(v.len, 3);
    off += 11;
    assert_int_equal(imp_headers_next(&rest, &k, &v), 1);
    assert_int_equal(k.len, 4);
    assert_ptr_equal(v.p, c + off + 7);
    assert_int_equal(v.len, 300);
    off += 7 + 300;
    assert_int_equal(imp_headers_next(&rest, &k, &v), 1);
    assert_ptr_equal(k.p, c + off + 1);
    assert_int_equal(k.len, 64);
    assert_memory_equal(k.p, KEY64, 64);
    assert_ptr_equal(v.p, c + off + 67);
    assert_int_equal(v.len, 1024);
    assert_int_equal(rest.len, 0);
    assert_int_equal(imp_headers_next(&rest, &k, &v), 0);
    assert_int_equal(imp_headers_next(&rest, &k, &v), 0);
    free(c);
    s_free(&s);
}

static void test_stats_next_valid(void **state)
{
    sbuf s = {NULL, 0, 0};
    uint8_t *c;
    imp_bytes rest, name;
    uint64_t val = 1;
    (void)state;
    l_stat(&s, "sent", 4, 0);
    l_stat(&s, "a.b_c", 5, UINT64_MAX);
    l_stat(&s, "x", 1, UINT64_C(0x0102030405060708));
    c = dup_exact(s.p, s.n);
    rest.p = c;
    rest.len = s.n;
    assert_int_equal(imp_stats_next(&rest, &name, &val), 1);
    assert_ptr_equal(name.p, c + 1);
    assert_int_equal(name.len, 4);
    assert_true(val == 0);
    assert_ptr_equal(rest.p, c + 13);
    assert_int_equal(imp_stats_next(&rest, &name, &val), 1);
    assert_ptr_equal(name.p, c + 14);
    assert_int_equal(name.len, 5);
    assert_true(val == UINT64_MAX);
    assert_int_equal(imp_stats_next(&rest, &name, &val), 1);
    assert_ptr_equal(name.p, c + 28);
    assert_int_equal(name.len, 1);
    assert_true(val == UINT64_C(0x0102030405060708));
    assert_int_equal(rest.len, 0);
    assert_int_equal(imp_stats_next(&rest, &name, &val), 0);
    free(c);
    s_free(&s);
}

/* Empty lists, with and without a pointer (imp_bytes: p may be NULL when len is 0). */
static void test_iterators_empty(void **state)
{
    uint8_t one = 0x7f;
    imp_bytes rest, a, b;
    uint64_t v;
    (void)state;
    rest.p = NULL;
    rest.len = 0;
    assert_int_equal(imp_names_next(&rest, &a), 0);
    assert_int_equal(imp_headers_next(&rest, &a, &b), 0);
    assert_int_equal(imp_stats_next(&rest, &a, &v), 0);
    rest.p = &one;
    rest.len = 0;
    assert_int_equal(imp_names_next(&rest, &a), 0);
    assert_int_equal(imp_headers_next(&rest, &a, &b), 0);
    assert_int_equal(imp_stats_next(&rest, &a, &v), 0);
}

/* Walk a list (exact-size copy of its first `cut` bytes) to the end; returns the number of
 * entries, or the error (< 0). */
static int walk(imp_kind kind, const uint8_t *p, size_t cut)
{
    uint8_t *c = dup_exact(p, cut);
    imp_bytes rest, a, b;
    uint64_t v;
    int r, n = 0;
    rest.p = c;
    rest.len = cut;
    for (;;) {
        size_t before = rest.len;
        if (kind == IMP_K_NAMES)
            r = imp_names_next(&rest, &a);
        else if (kind == IMP_K_HEADERS)
            r = imp_headers_next(&rest, &a, &b);
        else
            r = imp_stats_next(&rest, &a, &v);
        if (r != 1)
            break;
        n++;
        assert_true(rest.len < before); /* progress */
        assert_true(rest.p + rest.len == c + cut);
        assert_true(a.p >= c && a.p + a.len <= c + cut);
        if (kind == IMP_K_HEADERS)
            assert_true(b.p + b.len <= c + cut);
    }
    free(c);
    return r < 0 ? r : n;
}

/* IMP-FIELD-009: a list cut anywhere inside an entry is BAD_LIST; cut at an entry boundary it
 * is a shorter valid list. Never a read past the end (exact-size copies). */
static void test_iterators_truncated(void **state)
{
    sbuf s[3] = {{NULL, 0, 0}, {NULL, 0, 0}, {NULL, 0, 0}};
    size_t bounds[3][8], nb[3] = {0, 0, 0};
    static const imp_kind kinds[3] = {IMP_K_NAMES, IMP_K_HEADERS, IMP_K_STATS};
    unsigned k;
    (void)state;
    bounds[0][nb[0]++] = 0;
    l_name(&s[0], "bob", 3);
    bounds[0][nb[0]++] = s[0].n;
    l_name(&s[0], NAME32, 32);
    bounds[0][nb[0]++] = s[0].n;
    l_name(&s[0], "z", 1);
    bounds[0][nb[0]++] = s[0].n;

    bounds[1][nb[1]++] = 0;
    l_header(&s[1], "key", 3, "value", 5);
    bounds[1][nb[1]++] = s[1].n;
    l_header(&s[1], "e", 1, "", 0);
    bounds[1][nb[1]++] = s[1].n;
    l_header(&s[1], "big", 3, KEY64, 64);
    bounds[1][nb[1]++] = s[1].n;

    bounds[2][nb[2]++] = 0;
    l_stat(&s[2], "a", 1, 5);
    bounds[2][nb[2]++] = s[2].n;
    l_stat(&s[2], "bytes_in", 8, UINT64_MAX);
    bounds[2][nb[2]++] = s[2].n;

    for (k = 0; k < 3; k++) {
        size_t cut, i;
        for (cut = 0; cut <= s[k].n; cut++) {
            int want = IMP_ERR_BAD_LIST, got;
            for (i = 0; i < nb[k]; i++)
                if (bounds[k][i] == cut)
                    want = (int)i;
            got = walk(kinds[k], s[k].p, cut);
            if (got != want)
                fail_msg("list kind %d cut at %zu of %zu: expected %d, got %d", (int)kinds[k], cut,
                         s[k].n, want, got);
        }
        s_free(&s[k]);
    }
}

/* Declared lengths far past the end: BAD_LIST, no over-read (IMP-SEC-002). */
static void test_iterators_overlong_lengths(void **state)
{
    static const uint8_t names[] = {0xff, 'a', 'b'};
    static const uint8_t hdr_k[] = {0x40, 'k'};
    static const uint8_t hdr_v[] = {0x01, 'k', 0xff, 0xff, 'v'};
    static const uint8_t hdr_vlen_cut[] = {0x01, 'k', 0x00};
    static const uint8_t stat_n[] = {0xff, 's'};
    static const uint8_t stat_v[] = {0x01, 's', 0, 0, 0, 0, 0, 0, 0};
    (void)state;
    assert_int_equal(walk(IMP_K_NAMES, names, sizeof names), IMP_ERR_BAD_LIST);
    assert_int_equal(walk(IMP_K_HEADERS, hdr_k, sizeof hdr_k), IMP_ERR_BAD_LIST);
    assert_int_equal(walk(IMP_K_HEADERS, hdr_v, sizeof hdr_v), IMP_ERR_BAD_LIST);
    assert_int_equal(walk(IMP_K_HEADERS, hdr_vlen_cut, sizeof hdr_vlen_cut), IMP_ERR_BAD_LIST);
    assert_int_equal(walk(IMP_K_STATS, stat_n, sizeof stat_n), IMP_ERR_BAD_LIST);
    assert_int_equal(walk(IMP_K_STATS, stat_v, sizeof stat_v), IMP_ERR_BAD_LIST);
}

/* ---- builders ------------------------------------------------------------------------------ */

static void test_builder_init(void **state)
{
    imp_builder b;
    uint8_t buf[8];
    (void)state;
    memset(&b, 0x5a, sizeof b);
    imp_builder_init(&b, buf, sizeof buf);
    assert_ptr_equal(b.buf, buf);
    assert_int_equal(b.cap, sizeof buf);
    assert_int_equal(b.len, 0);
    assert_int_equal(b.count, 0);
    assert_int_equal(b.err, 0);
}

/* Builders write exactly the IMP-FIELD-009 encoding. */
static void test_builders_output_bytes(void **state)
{
    uint8_t *buf = malloc(4096);
    imp_builder b;
    sbuf want = {NULL, 0, 0};
    (void)state;
    assert_non_null(buf);
    imp_builder_init(&b, buf, 4096);
    assert_int_equal(imp_names_add(&b, "bob", 3), 0);
    assert_int_equal(imp_names_add(&b, "Alice.B-2_", 10), 0);
    assert_int_equal(imp_names_add(&b, NAME32, 32), 0);
    assert_int_equal(imp_names_add(&b, "bob", 3), 0); /* duplicates are not forbidden */
    l_name(&want, "bob", 3);
    l_name(&want, "Alice.B-2_", 10);
    l_name(&want, NAME32, 32);
    l_name(&want, "bob", 3);
    assert_int_equal(b.err, 0);
    assert_int_equal(b.len, want.n);
    assert_memory_equal(buf, want.p, want.n);
    s_free(&want);

    imp_builder_init(&b, buf, 4096);
    assert_int_equal(imp_headers_add(&b, "Content-Type", 12, "text/plain", 10), 0);
    assert_int_equal(imp_headers_add(&b, "e", 1, "", 0), 0);
    assert_int_equal(imp_headers_add(&b, KEY64, 64, "\xf0\x9f\x98\x80", 4), 0);
    assert_int_equal(imp_headers_add(&b, "n", 1, NULL, 0), 0);
    l_header(&want, "Content-Type", 12, "text/plain", 10);
    l_header(&want, "e", 1, "", 0);
    l_header(&want, KEY64, 64, "\xf0\x9f\x98\x80", 4);
    l_header(&want, "n", 1, "", 0);
    assert_int_equal(b.len, want.n);
    assert_memory_equal(buf, want.p, want.n);
    s_free(&want);

    imp_builder_init(&b, buf, 4096);
    assert_int_equal(imp_stats_add(&b, "msgs.in", 7, UINT64_C(0x0102030405060708)), 0);
    assert_int_equal(imp_stats_add(&b, "z", 1, 0), 0);
    assert_int_equal(imp_stats_add(&b, "z", 1, UINT64_MAX), 0);
    l_stat(&want, "msgs.in", 7, UINT64_C(0x0102030405060708));
    l_stat(&want, "z", 1, 0);
    l_stat(&want, "z", 1, UINT64_MAX);
    assert_int_equal(b.len, want.n);
    assert_memory_equal(buf, want.p, want.n);
    s_free(&want);
    free(buf);
}

typedef int (*add_fn)(imp_builder *b, int which);

static int add_name(imp_builder *b, int which)
{
    return which ? imp_names_add(b, "alice", 5) : imp_names_add(b, "bob", 3);
}

static int add_header(imp_builder *b, int which)
{
    return which ? imp_headers_add(b, "Key2", 4, "val", 3) : imp_headers_add(b, "k", 1, "", 0);
}

static int add_stat(imp_builder *b, int which)
{
    return which ? imp_stats_add(b, "count", 5, 9) : imp_stats_add(b, "a", 1, 1);
}

/* IMP_ERR_BUFFER for every capacity short of an entry, success at exactly the size; the
 * error is sticky (a later, smaller entry that would fit is refused too) and len stays. No byte
 * past cap is written (exact-size buffers). */
static void test_builders_capacity(void **state)
{
    static const add_fn fns[3] = {add_name, add_header, add_stat};
    static const size_t small[3] = {4, 4, 10}, large[3] = {6, 10, 14};
    unsigned k;
    (void)state;
    for (k = 0; k < 3; k++) {
        size_t total = small[k] + large[k], cap;
        uint8_t ref[64];
        imp_builder rb;
        imp_builder_init(&rb, ref, sizeof ref);
        assert_int_equal(fns[k](&rb, 0), 0);
        assert_int_equal(fns[k](&rb, 1), 0);
        assert_int_equal(rb.len, total);
        for (cap = 0; cap <= total; cap++) {
            uint8_t *buf = malloc(cap > 0 ? cap : 1);
            imp_builder b;
            int r1, r2, r3;
            assert_non_null(buf);
            buf[0] = 0xa5; /* with cap 0, nothing may be written even here */
            imp_builder_init(&b, buf, cap);
            r1 = fns[k](&b, 0);
            if (cap < small[k]) {
                assert_int_equal(r1, IMP_ERR_BUFFER);
                assert_int_equal(b.len, 0);
                assert_int_equal(b.err, IMP_ERR_BUFFER);
                r2 = fns[k](&b, 1);
                assert_int_equal(r2, IMP_ERR_BUFFER);
                assert_int_equal(b.len, 0);
                if (cap == 0)
                    assert_int_equal(buf[0], 0xa5);
                free(buf);
                continue;
            }
            assert_int_equal(r1, 0);
            assert_int_equal(b.len, small[k]);
            r2 = fns[k](&b, 1);
            if (cap < total) {
                assert_int_equal(r2, IMP_ERR_BUFFER);
                assert_int_equal(b.len, small[k]);
                assert_int_equal(b.err, IMP_ERR_BUFFER);
                /* sticky: even the small entry, which would fit in some of these, fails */
                r3 = fns[k](&b, 0);
                assert_int_equal(r3, IMP_ERR_BUFFER);
                assert_int_equal(b.len, small[k]);
                assert_int_equal(b.err, IMP_ERR_BUFFER);
            } else {
                assert_int_equal(r2, 0);
                assert_int_equal(b.len, total);
                assert_int_equal(b.err, 0);
            }
            assert_memory_equal(buf, ref, b.len);
            free(buf);
        }
    }
}

/* Sticky errors after an invalid entry: the first error stays in b->err and is returned by
 * every later add; len does not change. */
static void test_builders_sticky_after_invalid(void **state)
{
    uint8_t buf[256];
    imp_builder b;
    (void)state;
    imp_builder_init(&b, buf, sizeof buf);
    assert_int_equal(imp_names_add(&b, "ok", 2), 0);
    assert_int_equal(imp_names_add(&b, "-bad", 4), IMP_ERR_BAD_NAME);
    assert_int_equal(b.err, IMP_ERR_BAD_NAME);
    assert_int_equal(b.len, 3);
    assert_int_equal(imp_names_add(&b, "fine", 4), IMP_ERR_BAD_NAME);
    assert_int_equal(imp_names_add(&b, "", 0), IMP_ERR_BAD_NAME);
    assert_int_equal(b.len, 3);
    assert_int_equal(b.err, IMP_ERR_BAD_NAME);

    imp_builder_init(&b, buf, sizeof buf);
    assert_int_equal(imp_headers_add(&b, "k", 1, "\xff", 1), IMP_ERR_BAD_UTF8);
    assert_int_equal(b.len, 0);
    assert_int_equal(imp_headers_add(&b, "k", 1, "v", 1), IMP_ERR_BAD_UTF8);
    assert_int_equal(imp_headers_add(&b, "bad key", 7, "v", 1), IMP_ERR_BAD_UTF8);
    assert_int_equal(b.err, IMP_ERR_BAD_UTF8);
    assert_int_equal(b.len, 0);

    imp_builder_init(&b, buf, sizeof buf);
    assert_int_equal(imp_stats_add(&b, "a", 1, 1), 0);
    assert_int_equal(imp_stats_add(&b, "A", 1, 1), IMP_ERR_BAD_LIST);
    assert_int_equal(imp_stats_add(&b, "b", 1, 1), IMP_ERR_BAD_LIST);
    assert_int_equal(b.len, 10);
    assert_int_equal(b.err, IMP_ERR_BAD_LIST);

    /* a builder re-initialised is usable again */
    imp_builder_init(&b, buf, sizeof buf);
    assert_int_equal(b.err, 0);
    assert_int_equal(imp_stats_add(&b, "b", 1, 1), 0);
}

/* IMP-TEXT-002 for names-list entries: invalid names give IMP_ERR_BAD_NAME (msg.h). */
static void test_names_add_invalid(void **state)
{
    static const char *const bad[] = {"-a",  "_a",       ".a",        "a b", "a@b", "a/b",
                                      "a:b", "\xc3\xa9", "a\xc3\xa9", " a",  "a,b"};
    static const char *const good[] = {"a", "Z", "7", "a-", "b_", "c.", "0.-_x"};
    uint8_t buf[128];
    imp_builder b;
    size_t i;
    char name33[34];
    (void)state;
    for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        imp_builder_init(&b, buf, sizeof buf);
        if (imp_names_add(&b, bad[i], strlen(bad[i])) != IMP_ERR_BAD_NAME)
            fail_msg("name \"%s\" accepted or wrong code", bad[i]);
        assert_int_equal(b.len, 0);
    }
    imp_builder_init(&b, buf, sizeof buf);
    assert_int_equal(imp_names_add(&b, "", 0), IMP_ERR_BAD_NAME);
    imp_builder_init(&b, buf, sizeof buf);
    assert_int_equal(imp_names_add(&b, "a\0b", 3), IMP_ERR_BAD_NAME);
    memset(name33, 'n', 33);
    name33[33] = '\0';
    imp_builder_init(&b, buf, sizeof buf);
    assert_int_equal(imp_names_add(&b, name33, 33), IMP_ERR_BAD_NAME);
    assert_int_equal(b.len, 0);
    imp_builder_init(&b, buf, sizeof buf);
    assert_int_equal(imp_names_add(&b, name33, 32), 0);
    for (i = 0; i < sizeof good / sizeof good[0]; i++) {
        imp_builder_init(&b, buf, sizeof buf);
        if (imp_names_add(&b, good[i], strlen(good[i])) != 0)
            fail_msg("valid name \"%s\" refused", good[i]);
    }
}

/* IMP-FIELD-009 headers: key 1-64 bytes of A-Z a-z 0-9 - _ . (else BAD_LIST), value 0-1024
 * bytes (else BAD_LIST) of valid UTF-8 (else BAD_UTF8, msg.h). */
static void test_headers_add_invalid(void **state)
{
    static const char *const bad_keys[] = {"a b", "a:b", "a/b", "k\xc3\xa9", "a=b", "(", "\t"};
    static const char *const bad_values[] = {"\xff",       "\xc0\x80",         "\xed\xa0\x80",
                                             "ab\xe2\x82", "\xf4\x90\x80\x80", "\x80"};
    uint8_t *buf = malloc(4096);
    uint8_t v1025[1025];
    char k65[66];
    imp_builder b;
    size_t i;
    (void)state;
    assert_non_null(buf);
    memset(v1025, 'v', sizeof v1025);
    memset(k65, 'k', 65);
    k65[65] = '\0';
    for (i = 0; i < sizeof bad_keys / sizeof bad_keys[0]; i++) {
        imp_builder_init(&b, buf, 4096);
        if (imp_headers_add(&b, bad_keys[i], strlen(bad_keys[i]), "v", 1) != IMP_ERR_BAD_LIST)
            fail_msg("header key \"%s\" accepted or wrong code", bad_keys[i]);
        assert_int_equal(b.len, 0);
    }
    imp_builder_init(&b, buf, 4096);
    assert_int_equal(imp_headers_add(&b, "", 0, "v", 1), IMP_ERR_BAD_LIST);
    imp_builder_init(&b, buf, 4096);
    assert_int_equal(imp_headers_add(&b, k65, 65, "v", 1), IMP_ERR_BAD_LIST);
    imp_builder_init(&b, buf, 4096);
    assert_int_equal(imp_headers_add(&b, k65, 64, "v", 1), 0);
    imp_builder_init(&b, buf, 4096);
    assert_int_equal(imp_headers_add(&b, "k", 1, v1025, 1025), IMP_ERR_BAD_LIST);
    assert_int_equal(b.len, 0);
    imp_builder_init(&b, buf, 4096);
    assert_int_equal(imp_headers_add(&b, "k", 1, v1025, 1024), 0);
    assert_int_equal(b.len, 1 + 1 + 2 + 1024);
    for (i = 0; i < sizeof bad_values / sizeof bad_values[0]; i++) {
        imp_builder_init(&b, buf, 4096);
        if (imp_headers_add(&b, "k", 1, bad_values[i], strlen(bad_values[i])) != IMP_ERR_BAD_UTF8)
            fail_msg("header value #%zu accepted or wrong code", i);
        assert_int_equal(b.len, 0);
    }
    imp_builder_init(&b, buf, 4096);
    assert_int_equal(imp_headers_add(&b, "k", 1, "a\0b", 3), IMP_ERR_BAD_UTF8); /* no NUL */
    free(buf);
}

/* IMP-FIELD-009: no two header keys equal ignoring ASCII case. */
static void test_headers_add_duplicate_keys(void **state)
{
    uint8_t buf[512];
    imp_builder b;
    size_t len;
    (void)state;
    imp_builder_init(&b, buf, sizeof buf);
    assert_int_equal(imp_headers_add(&b, "Trace-Id", 8, "1", 1), 0);
    assert_int_equal(imp_headers_add(&b, "Trace-Id2", 9, "2", 1), 0); /* a prefix is not equal */
    assert_int_equal(imp_headers_add(&b, "trace_id", 8, "3", 1), 0);  /* '-' and '_' differ */
    assert_int_equal(imp_headers_add(&b, "Trace", 5, "4", 1), 0);
    len = b.len;
    assert_int_equal(imp_headers_add(&b, "tRACE-iD", 8, "5", 1), IMP_ERR_BAD_LIST);
    assert_int_equal(b.len, len);
    assert_int_equal(b.err, IMP_ERR_BAD_LIST);

    imp_builder_init(&b, buf, sizeof buf);
    assert_int_equal(imp_headers_add(&b, "k", 1, "", 0), 0);
    assert_int_equal(imp_headers_add(&b, "k", 1, "", 0), IMP_ERR_BAD_LIST);
    imp_builder_init(&b, buf, sizeof buf);
    assert_int_equal(imp_headers_add(&b, "a", 1, "", 0), 0);
    assert_int_equal(imp_headers_add(&b, "b", 1, "", 0), 0);
    assert_int_equal(imp_headers_add(&b, "A", 1, "", 0), IMP_ERR_BAD_LIST); /* not only last */
}

/* IMP-FIELD-009 stats: name 1-64 bytes of a-z 0-9 _ . (else BAD_LIST). */
static void test_stats_add_invalid(void **state)
{
    static const char *const bad[] = {"A", "msgs-in", "a b", "Bytes", "\xc3\xa9", "a:b", "a/b"};
    static const char *const good[] = {"a", "0", "_", ".", "a.b_c9", "_.9z"};
    uint8_t buf[256];
    char n65[66];
    imp_builder b;
    size_t i;
    (void)state;
    for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        imp_builder_init(&b, buf, sizeof buf);
        if (imp_stats_add(&b, bad[i], strlen(bad[i]), 1) != IMP_ERR_BAD_LIST)
            fail_msg("stat name \"%s\" accepted or wrong code", bad[i]);
        assert_int_equal(b.len, 0);
    }
    imp_builder_init(&b, buf, sizeof buf);
    assert_int_equal(imp_stats_add(&b, "", 0, 1), IMP_ERR_BAD_LIST);
    memset(n65, 'n', 65);
    n65[65] = '\0';
    imp_builder_init(&b, buf, sizeof buf);
    assert_int_equal(imp_stats_add(&b, n65, 65, 1), IMP_ERR_BAD_LIST);
    imp_builder_init(&b, buf, sizeof buf);
    assert_int_equal(imp_stats_add(&b, n65, 64, 1), 0);
    for (i = 0; i < sizeof good / sizeof good[0]; i++) {
        imp_builder_init(&b, buf, sizeof buf);
        if (imp_stats_add(&b, good[i], strlen(good[i]), UINT64_MAX) != 0)
            fail_msg("valid stat name \"%s\" refused", good[i]);
    }
}

/* Entry limits (IMP-FIELD-009): 1000 names, 32 headers, 1000 stats; one more is BAD_LIST
 * with room to spare. */
static void test_builders_entry_limits(void **state)
{
    const size_t cap = 128 * 1024;
    uint8_t *buf = malloc(cap);
    imp_builder b;
    unsigned i;
    size_t len;
    char name[16], key[16];
    (void)state;
    assert_non_null(buf);
    imp_builder_init(&b, buf, cap);
    for (i = 0; i < IMP_LIST_MAX_NAMES; i++) {
        int n = snprintf(name, sizeof name, "u%u", i);
        assert_int_equal(imp_names_add(&b, name, (size_t)n), 0);
    }
    len = b.len;
    assert_int_equal(imp_names_add(&b, "one-more", 8), IMP_ERR_BAD_LIST);
    assert_int_equal(b.len, len);

    imp_builder_init(&b, buf, cap);
    for (i = 0; i < IMP_LIST_MAX_HEADERS; i++) {
        int n = snprintf(key, sizeof key, "h%u", i);
        assert_int_equal(imp_headers_add(&b, key, (size_t)n, "v", 1), 0);
    }
    len = b.len;
    assert_int_equal(imp_headers_add(&b, "one-more", 8, "v", 1), IMP_ERR_BAD_LIST);
    assert_int_equal(b.len, len);

    imp_builder_init(&b, buf, cap);
    for (i = 0; i < IMP_LIST_MAX_STATS; i++) {
        int n = snprintf(name, sizeof name, "s%u", i);
        assert_int_equal(imp_stats_add(&b, name, (size_t)n, i), 0);
    }
    len = b.len;
    assert_int_equal(imp_stats_add(&b, "more", 4, 1), IMP_ERR_BAD_LIST);
    assert_int_equal(b.len, len);
    free(buf);
}

/* Builder output goes into a frame and comes back through imp_msg_decode, entry for entry,
 * including lists at their entry limits. */
static void test_builder_output_decodes(void **state)
{
    const size_t cap = 70000;
    uint8_t *buf = malloc(cap), *frame;
    imp_builder b;
    sbuf p = {NULL, 0, 0};
    imp_msg m;
    imp_bytes rest, a, v;
    uint64_t val;
    unsigned i;
    char name[64], key[16], value[401];
    (void)state;
    assert_non_null(buf);

    /* 1000 names of 32 bytes in MEMBER_LIST */
    imp_builder_init(&b, buf, cap);
    for (i = 0; i < IMP_LIST_MAX_NAMES; i++) {
        snprintf(name, sizeof name, "member%026u", i);
        assert_int_equal(imp_names_add(&b, name, 32), 0);
    }
    assert_int_equal(b.len, 33000);
    p_field(&p, IMP_T_ROOM, "lobby", 5);
    p_field(&p, IMP_T_NAMES, buf, b.len);
    assert_int_equal(decode_payload(IMP_MEMBER_LIST, &p, &m, &frame), 0);
    rest = imp_msg_b(&m, IMP_T_NAMES);
    assert_int_equal(rest.len, 33000);
    for (i = 0; i < IMP_LIST_MAX_NAMES; i++) {
        snprintf(name, sizeof name, "member%026u", i);
        assert_int_equal(imp_names_next(&rest, &a), 1);
        assert_int_equal(a.len, 32);
        assert_memory_equal(a.p, name, 32);
    }
    assert_int_equal(imp_names_next(&rest, &a), 0);
    free(frame);
    s_free(&p);

    /* CAPS in HELLO */
    imp_builder_init(&b, buf, 1024);
    assert_int_equal(imp_names_add(&b, "history", 7), 0);
    assert_int_equal(imp_names_add(&b, "presence", 8), 0);
    p_field(&p, IMP_T_VERSION_MIN, "\x00\x01", 2);
    p_field(&p, IMP_T_VERSION_MAX, "\x00\x01", 2);
    p_field(&p, IMP_T_CAPS, buf, b.len);
    assert_int_equal(decode_payload(IMP_HELLO, &p, &m, &frame), 0);
    rest = imp_msg_b(&m, IMP_T_CAPS);
    assert_int_equal(imp_names_next(&rest, &a), 1);
    assert_memory_equal(a.p, "history", 7);
    assert_int_equal(imp_names_next(&rest, &a), 1);
    assert_int_equal(a.len, 8);
    assert_memory_equal(a.p, "presence", 8);
    assert_int_equal(imp_names_next(&rest, &a), 0);
    free(frame);
    s_free(&p);

    /* 32 headers in SEND, within HEADERS' 16384 bytes */
    imp_builder_init(&b, buf, cap);
    memset(value, 'x', 400);
    for (i = 0; i < IMP_LIST_MAX_HEADERS; i++) {
        snprintf(key, sizeof key, "X-H%02u", i);
        value[0] = (char)('a' + i % 26);
        assert_int_equal(imp_headers_add(&b, key, 5, value, 400), 0);
    }
    assert_true(b.len <= 16384);
    p_field(&p, IMP_T_TARGET_KIND, "\x02", 1);
    p_field(&p, IMP_T_TARGET, "room", 4);
    p_field(&p, IMP_T_HEADERS, buf, b.len);
    p_field(&p, IMP_T_BODY, "body", 4);
    assert_int_equal(decode_payload(IMP_SEND, &p, &m, &frame), 0);
    rest = imp_msg_b(&m, IMP_T_HEADERS);
    assert_ptr_equal(rest.p, frame + IMP_HEADER_SIZE + 7 + 10 + 6);
    for (i = 0; i < IMP_LIST_MAX_HEADERS; i++) {
        snprintf(key, sizeof key, "X-H%02u", i);
        value[0] = (char)('a' + i % 26);
        assert_int_equal(imp_headers_next(&rest, &a, &v), 1);
        assert_int_equal(a.len, 5);
        assert_memory_equal(a.p, key, 5);
        assert_int_equal(v.len, 400);
        assert_memory_equal(v.p, value, 400);
    }
    assert_int_equal(imp_headers_next(&rest, &a, &v), 0);
    free(frame);
    s_free(&p);

    /* 1000 stats in STATS_REPLY, 65000 bytes (limit 65536) */
    imp_builder_init(&b, buf, cap);
    for (i = 0; i < IMP_LIST_MAX_STATS; i++) {
        snprintf(name, sizeof name, "counter.%048u", i);
        assert_int_equal(imp_stats_add(&b, name, 56, UINT64_MAX - i), 0);
    }
    assert_int_equal(b.len, 65000);
    p_field(&p, IMP_T_SERVER_TIME, "\x00\x00\x00\x00\x00\x00\x00\x01", 8);
    p_field(&p, IMP_T_STATS, buf, b.len);
    assert_int_equal(decode_payload(IMP_STATS_REPLY, &p, &m, &frame), 0);
    rest = imp_msg_b(&m, IMP_T_STATS);
    for (i = 0; i < IMP_LIST_MAX_STATS; i++) {
        snprintf(name, sizeof name, "counter.%048u", i);
        assert_int_equal(imp_stats_next(&rest, &a, &val), 1);
        assert_int_equal(a.len, 56);
        assert_memory_equal(a.p, name, 56);
        assert_true(val == UINT64_MAX - i);
    }
    assert_int_equal(imp_stats_next(&rest, &a, &val), 0);
    free(frame);
    s_free(&p);
    free(buf);
}

/* ---- list rules in decode and validate (IMP-FIELD-009: any deviation is BAD_LIST) ---------- */

static void test_decode_names_rules(void **state)
{
    static const char *const bad[] = {"-a", "_a", ".a", "a b", "a@b", "\xc3\xa9", "a\0b"};
    sbuf s = {NULL, 0, 0};
    size_t i;
    unsigned n;
    char name[40];
    (void)state;
    for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        s.n = 0;
        l_name(&s, "good", 4);
        l_name(&s, bad[i], i == 6 ? 3 : strlen(bad[i]));
        expect_list(IMP_K_NAMES, &s, IMP_ERR_BAD_LIST, bad[i]);
    }
    s.n = 0;
    l_name(&s, "", 0); /* an empty name */
    expect_list(IMP_K_NAMES, &s, IMP_ERR_BAD_LIST, "empty name");
    memset(name, 'n', 33);
    s.n = 0;
    l_name(&s, name, 33);
    expect_list(IMP_K_NAMES, &s, IMP_ERR_BAD_LIST, "33-byte name");
    s.n = 0;
    l_name(&s, name, 32);
    l_name(&s, "dup", 3);
    l_name(&s, "DUP", 3);
    l_name(&s, "dup", 3);
    expect_list(IMP_K_NAMES, &s, 0, "32-byte name and duplicates");
    s.n = 0;
    expect_list(IMP_K_NAMES, &s, 0, "empty list");
    /* every cut inside an entry: the field is complete, the list is not */
    s.n = 0;
    l_name(&s, "alpha", 5);
    l_name(&s, "beta", 4);
    {
        sbuf full = s, cut = {NULL, 0, 0};
        size_t k;
        for (k = 1; k < full.n; k++) {
            if (k == 6)
                continue;
            cut.n = 0;
            s_raw(&cut, full.p, k);
            expect_list(IMP_K_NAMES, &cut, IMP_ERR_BAD_LIST, "cut names list");
        }
        s_free(&cut);
    }
    /* 1000 entries are fine, 1001 are not */
    s.n = 0;
    for (n = 0; n < IMP_LIST_MAX_NAMES; n++) {
        int len = snprintf(name, sizeof name, "n%u", n);
        l_name(&s, name, (size_t)len);
    }
    expect_list(IMP_K_NAMES, &s, 0, "1000 names");
    l_name(&s, "x", 1);
    expect_list(IMP_K_NAMES, &s, IMP_ERR_BAD_LIST, "1001 names");
    s_free(&s);
}

static void test_decode_headers_rules(void **state)
{
    static const char *const bad_keys[] = {"a b", "a:b", "k\xc3\xa9", "=", "a\0"};
    static const char *const bad_values[] = {"\xff", "\xc0\x80", "\xed\xa0\x80", "a\0b",
                                             "ab\xe2\x82"};
    static const size_t bad_vlens[] = {1, 2, 3, 3, 4};
    sbuf s = {NULL, 0, 0};
    uint8_t big[1025];
    char key[16];
    size_t i;
    unsigned n;
    (void)state;
    memset(big, 'v', sizeof big);
    for (i = 0; i < sizeof bad_keys / sizeof bad_keys[0]; i++) {
        s.n = 0;
        l_header(&s, bad_keys[i], i == 4 ? 2 : strlen(bad_keys[i]), "v", 1);
        expect_list(IMP_K_HEADERS, &s, IMP_ERR_BAD_LIST, bad_keys[i]);
    }
    for (i = 0; i < sizeof bad_values / sizeof bad_values[0]; i++) {
        s.n = 0;
        l_header(&s, "ok", 2, "fine", 4);
        l_header(&s, "k", 1, bad_values[i], bad_vlens[i]);
        expect_list(IMP_K_HEADERS, &s, IMP_ERR_BAD_LIST, "bad header value");
    }
    s.n = 0;
    l_header(&s, "", 0, "v", 1);
    expect_list(IMP_K_HEADERS, &s, IMP_ERR_BAD_LIST, "empty key");
    s.n = 0;
    memset(big, 'k', 65);
    l_header(&s, big, 65, "v", 1); /* 65 bytes of 'k' */
    memset(big, 'v', sizeof big);
    expect_list(IMP_K_HEADERS, &s, IMP_ERR_BAD_LIST, "65-byte key");
    s.n = 0;
    l_header(&s, "k", 1, big, 1025);
    expect_list(IMP_K_HEADERS, &s, IMP_ERR_BAD_LIST, "1025-byte value");
    s.n = 0;
    l_header(&s, KEY64, 64, big, 1024);
    l_header(&s, "e", 1, "", 0);
    expect_list(IMP_K_HEADERS, &s, 0, "64-byte key, 1024-byte value, empty value");
    s.n = 0;
    l_header(&s, "Key", 3, "1", 1);
    l_header(&s, "other", 5, "2", 1);
    l_header(&s, "kEY", 3, "3", 1);
    expect_list(IMP_K_HEADERS, &s, IMP_ERR_BAD_LIST, "keys equal ignoring case");
    s.n = 0;
    l_header(&s, "Key", 3, "1", 1);
    l_header(&s, "Key", 3, "1", 1);
    expect_list(IMP_K_HEADERS, &s, IMP_ERR_BAD_LIST, "same key twice");
    s.n = 0;
    l_header(&s, "a-b", 3, "1", 1);
    l_header(&s, "a_b", 3, "1", 1);
    l_header(&s, "a.b", 3, "1", 1);
    l_header(&s, "ab", 2, "1", 1);
    expect_list(IMP_K_HEADERS, &s, 0, "distinct keys");
    /* cuts inside entries */
    {
        sbuf full = {NULL, 0, 0}, cut = {NULL, 0, 0};
        size_t k;
        l_header(&full, "key", 3, "value", 5);
        l_header(&full, "k2", 2, "", 0);
        for (k = 1; k < full.n; k++) {
            if (k == 11)
                continue;
            cut.n = 0;
            s_raw(&cut, full.p, k);
            expect_list(IMP_K_HEADERS, &cut, IMP_ERR_BAD_LIST, "cut headers list");
        }
        s_free(&full);
        s_free(&cut);
    }
    s.n = 0;
    for (n = 0; n < IMP_LIST_MAX_HEADERS; n++) {
        int len = snprintf(key, sizeof key, "h%u", n);
        l_header(&s, key, (size_t)len, "v", 1);
    }
    expect_list(IMP_K_HEADERS, &s, 0, "32 headers");
    l_header(&s, "extra", 5, "v", 1);
    expect_list(IMP_K_HEADERS, &s, IMP_ERR_BAD_LIST, "33 headers");
    s_free(&s);
}

static void test_decode_stats_rules(void **state)
{
    static const char *const bad[] = {"A", "msgs-in", "a b", "\xc3\xa9", "a\0"};
    sbuf s = {NULL, 0, 0};
    char name[80];
    size_t i;
    unsigned n;
    (void)state;
    for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        s.n = 0;
        l_stat(&s, "ok", 2, 1);
        l_stat(&s, bad[i], i == 4 ? 2 : strlen(bad[i]), 1);
        expect_list(IMP_K_STATS, &s, IMP_ERR_BAD_LIST, bad[i]);
    }
    s.n = 0;
    l_stat(&s, "", 0, 1);
    expect_list(IMP_K_STATS, &s, IMP_ERR_BAD_LIST, "empty stat name");
    memset(name, 's', 65);
    s.n = 0;
    l_stat(&s, name, 65, 1);
    expect_list(IMP_K_STATS, &s, IMP_ERR_BAD_LIST, "65-byte stat name");
    s.n = 0;
    l_stat(&s, name, 64, UINT64_MAX);
    l_stat(&s, "_.09az", 6, 0);
    l_stat(&s, "_.09az", 6, 1); /* duplicate names are not forbidden */
    expect_list(IMP_K_STATS, &s, 0, "64-byte name, duplicates");
    {
        sbuf full = {NULL, 0, 0}, cut = {NULL, 0, 0};
        size_t k;
        l_stat(&full, "abc", 3, 7);
        l_stat(&full, "d", 1, 8);
        for (k = 1; k < full.n; k++) {
            if (k == 12)
                continue;
            cut.n = 0;
            s_raw(&cut, full.p, k);
            expect_list(IMP_K_STATS, &cut, IMP_ERR_BAD_LIST, "cut stats list");
        }
        s_free(&full);
        s_free(&cut);
    }
    s.n = 0;
    for (n = 0; n < IMP_LIST_MAX_STATS; n++) {
        int len = snprintf(name, sizeof name, "s%u", n);
        l_stat(&s, name, (size_t)len, n);
    }
    expect_list(IMP_K_STATS, &s, 0, "1000 stats");
    l_stat(&s, "x", 1, 0);
    expect_list(IMP_K_STATS, &s, IMP_ERR_BAD_LIST, "1001 stats");
    s_free(&s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_names_next_valid),
        cmocka_unit_test(test_headers_next_valid),
        cmocka_unit_test(test_stats_next_valid),
        cmocka_unit_test(test_iterators_empty),
        cmocka_unit_test(test_iterators_truncated),
        cmocka_unit_test(test_iterators_overlong_lengths),
        cmocka_unit_test(test_builder_init),
        cmocka_unit_test(test_builders_output_bytes),
        cmocka_unit_test(test_builders_capacity),
        cmocka_unit_test(test_builders_sticky_after_invalid),
        cmocka_unit_test(test_names_add_invalid),
        cmocka_unit_test(test_headers_add_invalid),
        cmocka_unit_test(test_headers_add_duplicate_keys),
        cmocka_unit_test(test_stats_add_invalid),
        cmocka_unit_test(test_builders_entry_limits),
        cmocka_unit_test(test_builder_output_decodes),
        cmocka_unit_test(test_decode_names_rules),
        cmocka_unit_test(test_decode_headers_rules),
        cmocka_unit_test(test_decode_stats_rules),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
