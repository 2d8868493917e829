/* Unit tests for protocol/frame.c: imp_frame_parse, imp_frame_header_write and the type table
 * (SPEC.md section 2 and the type table of section 5). Every parse input sits at the end of a
 * guard-page buffer, so an over-read crashes the test. */
#define _POSIX_C_SOURCE 200809L

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "guard.h"
#include "imp/imp.h"
#include "wire.h" /* private: imp_low_bit */

#define HARD IMP_FRAME_MAX_HARD

static void put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

/* A raw header, any field values. */
static void raw_header(uint8_t h[12], uint8_t version, uint8_t type, uint16_t flags,
                       uint32_t length, uint32_t req)
{
    h[0] = version;
    h[1] = type;
    h[2] = (uint8_t)(flags >> 8);
    h[3] = (uint8_t)flags;
    put32(h + 4, length);
    put32(h + 8, req);
}

/* Parse data[0..len) placed at a guard page. */
static imp_ssize parse_guarded(const uint8_t *data, size_t len, size_t limit, imp_frame *f,
                               size_t *need, const uint8_t **where)
{
    uint8_t *p = guard_copy(data, len);
    imp_ssize r = imp_frame_parse(p, len, limit, f, need);
    if (where)
        *where = p;
    guard_free(p, len);
    return r;
}

/* IMP-FRAME-001: fields in order, big-endian; the payload is a view (IMP-LIB-002). */
static void test_parse_header_fields(void **state)
{
    (void)state;
    uint8_t buf[12 + 5];
    raw_header(buf, 1, IMP_DELIVER, 0, 5, 0x01020304u);
    memcpy(buf + 12, "abcde", 5);
    uint8_t *p = guard_copy(buf, sizeof buf);
    imp_frame f;
    size_t need = 777;
    assert_int_equal(imp_frame_parse(p, sizeof buf, 0, &f, &need), 17);
    assert_int_equal(f.version, 1);
    assert_int_equal(f.type, IMP_DELIVER);
    assert_int_equal(f.flags, 0);
    assert_int_equal(f.length, 5);
    assert_int_equal(f.request_id, 0x01020304u);
    assert_ptr_equal(f.payload, p + 12);
    assert_memory_equal(f.payload, "abcde", 5);
    guard_free(p, sizeof buf);

    /* big-endian request id and length with every byte distinct */
    uint8_t big[12 + 0x0102];
    memset(big, 0xee, sizeof big);
    raw_header(big, 1, IMP_SEND, 0, 0x0102, 0xa1b2c3d4u);
    p = guard_copy(big, sizeof big);
    assert_int_equal(imp_frame_parse(p, sizeof big, 0, &f, NULL), 12 + 0x0102);
    assert_int_equal(f.length, 0x0102);
    assert_int_equal(f.request_id, 0xa1b2c3d4u);
    assert_ptr_equal(f.payload, p + 12);
    guard_free(p, sizeof big);
}

/* IMP-FRAME-001: the return value is exactly 12 + payload length, for any payload length, and
 * extra bytes after the frame are not part of it. */
static void test_parse_exact_sizes(void **state)
{
    (void)state;
    static const uint32_t lens[] = {0, 1, 2, 5, 6, 11, 12, 13, 255, 256, 4084, 4085, 65536};
    for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++) {
        size_t n = 12 + lens[i];
        uint8_t *buf = calloc(1, n + 7);
        assert_non_null(buf);
        raw_header(buf, 1, IMP_PING, 0, lens[i], 9);
        imp_frame f;
        assert_int_equal(parse_guarded(buf, n, 0, &f, NULL, NULL), (imp_ssize)n);
        assert_int_equal(f.length, lens[i]);
        assert_int_equal(parse_guarded(buf, n + 7, 0, &f, NULL, NULL), (imp_ssize)n);
        free(buf);
    }
}

/* IMP-FRAME-005 / IMP-FRAME-008: a prefix is incomplete, never an error, and *need is exact:
 * the rest of the header, then the rest of the frame. */
static void test_parse_need_every_prefix(void **state)
{
    (void)state;
    uint8_t buf[12 + 40];
    raw_header(buf, 1, IMP_SEND, 0, 40, 1);
    for (size_t i = 12; i < sizeof buf; i++)
        buf[i] = (uint8_t)i;
    for (size_t len = 0; len < sizeof buf; len++) {
        imp_frame f;
        size_t need = 0;
        assert_int_equal(parse_guarded(buf, len, 0, &f, &need, NULL), 0);
        assert_int_equal(need, len < 12 ? 12 - len : sizeof buf - len);
        /* need may be NULL */
        assert_int_equal(parse_guarded(buf, len, 0, &f, NULL, NULL), 0);
        /* feeding exactly *need more bytes completes the header or the frame */
        size_t next = len + need;
        size_t need2 = 0;
        imp_ssize r = parse_guarded(buf, next, 0, &f, &need2, NULL);
        if (next == 12)
            assert_true(r == 0 && need2 == 40);
        else
            assert_int_equal(r, (imp_ssize)sizeof buf);
    }
    /* nothing at all, and a NULL buffer of length 0 */
    imp_frame f;
    size_t need = 0;
    assert_int_equal(imp_frame_parse(NULL, 0, 0, &f, &need), 0);
    assert_int_equal(need, 12);
}

/* IMP-FRAME-005: a frame of exactly the limit is accepted; one byte more fails as soon as the
 * header is there (no payload byte needed). */
static void test_parse_limits(void **state)
{
    (void)state;
    static const size_t limits[] = {12, 13, 100, 1024, 4096, 65536, 1048576, HARD};
    for (size_t i = 0; i < sizeof limits / sizeof limits[0]; i++) {
        size_t lim = limits[i];
        uint8_t h[12];
        imp_frame f;
        size_t need = 0;
        raw_header(h, 1, IMP_SEND, 0, (uint32_t)(lim - 12), 1);
        assert_int_equal(parse_guarded(h, 12, lim, &f, &need, NULL), lim == 12 ? 12 : 0);
        if (lim > 12)
            assert_int_equal(need, lim - 12);
        raw_header(h, 1, IMP_SEND, 0, (uint32_t)(lim - 11), 1);
        assert_int_equal(parse_guarded(h, 12, lim, &f, &need, NULL), IMP_ERR_FRAME_TOO_LARGE);
    }
    /* a whole frame of exactly the limit parses */
    uint8_t frame[100] = {0};
    raw_header(frame, 1, IMP_PING, 0, 88, 3);
    imp_frame f;
    assert_int_equal(parse_guarded(frame, 100, 100, &f, NULL, NULL), 100);
    assert_int_equal(parse_guarded(frame, 100, 99, &f, NULL, NULL), IMP_ERR_FRAME_TOO_LARGE);
    /* a limit below the header size: every frame is over it */
    assert_int_equal(parse_guarded(frame, 12, 11, &f, NULL, NULL), IMP_ERR_FRAME_TOO_LARGE);
}

/* IMP-FRAME-005: 0 and anything above 16 MiB mean the hard limit of 16 MiB. */
static void test_parse_hard_limit(void **state)
{
    (void)state;
    static const size_t limits[] = {0, HARD, (size_t)HARD + 1, 0xffffffffu, SIZE_MAX};
    for (size_t i = 0; i < sizeof limits / sizeof limits[0]; i++) {
        uint8_t h[12];
        imp_frame f;
        size_t need = 0;
        raw_header(h, 1, IMP_SEND, 0, HARD - 12, 1);
        assert_int_equal(parse_guarded(h, 12, limits[i], &f, &need, NULL), 0);
        assert_int_equal(need, HARD - 12);
        raw_header(h, 1, IMP_SEND, 0, HARD - 11, 1);
        assert_int_equal(parse_guarded(h, 12, limits[i], &f, &need, NULL), IMP_ERR_FRAME_TOO_LARGE);
        /* absurd lengths, including ones where 12 + length overflows 32 bits */
        static const uint32_t absurd[] = {HARD,        HARD + 1,    0x80000000u,
                                          0xfffffff4u, 0xfffffff5u, 0xffffffffu};
        for (size_t k = 0; k < sizeof absurd / sizeof absurd[0]; k++) {
            raw_header(h, 1, IMP_PING, 0, absurd[k], 1);
            assert_int_equal(parse_guarded(h, 12, limits[i], &f, &need, NULL),
                             IMP_ERR_FRAME_TOO_LARGE);
        }
    }
}

/* IMP-FRAME-002, -003, -004, -005 and -006: every combination of bad version, unknown type,
 * reserved flags and excessive length gives the first failing check in that order. */
static void test_parse_check_order(void **state)
{
    (void)state;
    for (unsigned mask = 0; mask < 16; mask++) {
        uint8_t h[12];
        raw_header(h, (mask & 1) ? 2 : 1, (mask & 2) ? 0x09 : IMP_PING, (mask & 4) ? 0x0400 : 0,
                   (mask & 8) ? 5000 : 0, 1);
        imp_ssize want = (mask & 1)   ? IMP_ERR_BAD_VERSION
                         : (mask & 2) ? IMP_ERR_UNKNOWN_TYPE
                         : (mask & 4) ? IMP_ERR_RESERVED_FLAGS
                         : (mask & 8) ? IMP_ERR_FRAME_TOO_LARGE
                                      : 12;
        imp_frame f;
        size_t need = 0;
        assert_int_equal(parse_guarded(h, 12, 4096, &f, &need, NULL), want);
        /* with fewer than 12 bytes nothing is judged yet */
        for (size_t len = 0; len < 12; len++) {
            assert_int_equal(parse_guarded(h, len, 4096, &f, &need, NULL), 0);
            assert_int_equal(need, 12 - len);
        }
    }
}

/* IMP-FRAME-002: every version byte but 1 fails. */
static void test_parse_every_version(void **state)
{
    (void)state;
    for (unsigned v = 0; v < 256; v++) {
        uint8_t h[12];
        imp_frame f;
        raw_header(h, (uint8_t)v, IMP_PING, 0, 0, 1);
        assert_int_equal(parse_guarded(h, 12, 0, &f, NULL, NULL),
                         v == 1 ? 12 : IMP_ERR_BAD_VERSION);
    }
}

/* IMP-FRAME-003: every type byte: the 31 defined ones parse, the others fail. */
static void test_parse_every_type(void **state)
{
    (void)state;
    unsigned known = 0;
    for (unsigned t = 0; t < 256; t++) {
        uint8_t h[12];
        imp_frame f;
        raw_header(h, 1, (uint8_t)t, 0, 0, 1);
        imp_ssize r = parse_guarded(h, 12, 0, &f, NULL, NULL);
        if (imp_type_known(t)) {
            known++;
            assert_int_equal(r, 12);
            assert_int_equal(f.type, t);
        } else {
            assert_int_equal(r, IMP_ERR_UNKNOWN_TYPE);
        }
    }
    assert_int_equal(known, IMP_TYPE_COUNT);
}

/* IMP-FRAME-004: each flag bit, and all of them. */
static void test_parse_every_flag(void **state)
{
    (void)state;
    for (unsigned bit = 0; bit <= 16; bit++) {
        uint8_t h[12];
        imp_frame f;
        raw_header(h, 1, IMP_SEND, bit == 16 ? 0xffff : (uint16_t)(1u << bit), 0, 1);
        assert_int_equal(parse_guarded(h, 12, 0, &f, NULL, NULL), IMP_ERR_RESERVED_FLAGS);
    }
}

/* IMP-FRAME-001: frames follow each other with nothing between them. */
static void test_parse_back_to_back(void **state)
{
    (void)state;
    uint8_t buf[12 + 3 + 12 + 12];
    raw_header(buf, 1, IMP_ERROR, 0, 3, 7);
    memcpy(buf + 12, "xyz", 3);
    raw_header(buf + 15, 1, IMP_PING, 0, 0, 8);
    raw_header(buf + 27, 1, IMP_PONG, 0, 0, 9);
    uint8_t *p = guard_copy(buf, sizeof buf);
    imp_frame f;
    size_t off = 0;
    static const uint8_t types[] = {IMP_ERROR, IMP_PING, IMP_PONG};
    static const size_t sizes[] = {15, 12, 12};
    for (int i = 0; i < 3; i++) {
        imp_ssize r = imp_frame_parse(p + off, sizeof buf - off, 0, &f, NULL);
        assert_int_equal(r, (imp_ssize)sizes[i]);
        assert_int_equal(f.type, types[i]);
        assert_int_equal(f.request_id, 7u + (unsigned)i);
        off += (size_t)r;
    }
    assert_int_equal(off, sizeof buf);
    size_t need = 0;
    assert_int_equal(imp_frame_parse(p + off, 0, 0, &f, &need), 0);
    assert_int_equal(need, 12);
    guard_free(p, sizeof buf);
}

/* The parser does not judge the payload (imp_msg_decode does): garbage payloads parse. */
static void test_parse_ignores_payload(void **state)
{
    (void)state;
    uint8_t buf[12 + 6];
    raw_header(buf, 1, IMP_PING, 0, 6, 1);
    memset(buf + 12, 0xff, 6);
    imp_frame f;
    assert_int_equal(parse_guarded(buf, sizeof buf, 0, &f, NULL, NULL), 18);
    assert_int_equal(f.length, 6);
}

/* imp_frame_header_write writes version 1, flags 0, big-endian length and id; parse reads
 * back what was written. */
static void test_header_write_round_trip(void **state)
{
    (void)state;
    static const uint32_t lens[] = {0, 1, 0x0102, 0x00abcdef, HARD - 12};
    static const uint32_t ids[] = {0, 1, 0x01020304u, 0xffffffffu};
    for (unsigned i = 0; i < IMP_TYPE_COUNT; i++) {
        for (size_t l = 0; l < sizeof lens / sizeof lens[0]; l++) {
            for (size_t k = 0; k < sizeof ids / sizeof ids[0]; k++) {
                uint8_t h[IMP_HEADER_SIZE + 1];
                h[IMP_HEADER_SIZE] = 0x5a;
                uint8_t type = imp_type_at(i);
                imp_frame_header_write(h, type, lens[l], ids[k]);
                uint8_t want[12];
                raw_header(want, 1, type, 0, lens[l], ids[k]);
                assert_memory_equal(h, want, 12);
                assert_int_equal(h[IMP_HEADER_SIZE], 0x5a); /* writes exactly 12 bytes */
                imp_frame f;
                size_t need = 0;
                imp_ssize r = parse_guarded(h, 12, 0, &f, &need, NULL);
                if (lens[l] == 0) {
                    assert_int_equal(r, 12);
                } else {
                    assert_int_equal(r, 0);
                    assert_int_equal(need, lens[l]);
                }
            }
        }
    }
    /* parse fills every field from a written header */
    uint8_t buf[12 + 2] = {0};
    imp_frame_header_write(buf, IMP_WHO_LIST, 2, 0xdeadbeefu);
    imp_frame f;
    assert_int_equal(parse_guarded(buf, sizeof buf, 0, &f, NULL, NULL), 14);
    assert_int_equal(f.version, 1);
    assert_int_equal(f.type, IMP_WHO_LIST);
    assert_int_equal(f.flags, 0);
    assert_int_equal(f.length, 2);
    assert_int_equal(f.request_id, 0xdeadbeefu);
}

/* SPEC.md section 5: number, name and direction of every type. */
static const struct {
    uint8_t type;
    const char *name;
    unsigned dir;
} types[] = {
    {0x01, "HELLO", IMP_DIR_C2S},
    {0x02, "WELCOME", IMP_DIR_S2C},
    {0x03, "REGISTER", IMP_DIR_C2S},
    {0x04, "LOGIN", IMP_DIR_C2S},
    {0x05, "AUTH_OK", IMP_DIR_S2C},
    {0x06, "LOGOUT", IMP_DIR_C2S},
    {0x07, "OK", IMP_DIR_S2C},
    {0x08, "ERROR", IMP_DIR_BOTH},
    {0x10, "SEND", IMP_DIR_C2S},
    {0x11, "ACK", IMP_DIR_S2C},
    {0x12, "DELIVER", IMP_DIR_S2C},
    {0x13, "DELIVERED", IMP_DIR_C2S},
    {0x20, "JOIN", IMP_DIR_C2S},
    {0x21, "LEAVE", IMP_DIR_C2S},
    {0x22, "MEMBERS", IMP_DIR_C2S},
    {0x23, "MEMBER_LIST", IMP_DIR_S2C},
    {0x24, "HISTORY", IMP_DIR_C2S},
    {0x25, "HISTORY_ITEM", IMP_DIR_S2C},
    {0x26, "ROOMS", IMP_DIR_C2S},
    {0x27, "ROOM_LIST", IMP_DIR_S2C},
    {0x30, "PRESENCE", IMP_DIR_C2S},
    {0x31, "SUBSCRIBE", IMP_DIR_C2S},
    {0x32, "PRESENCE_EVENT", IMP_DIR_S2C},
    {0x33, "WHO", IMP_DIR_C2S},
    {0x34, "WHO_LIST", IMP_DIR_S2C},
    {0x40, "STATS", IMP_DIR_C2S},
    {0x41, "STATS_REPLY", IMP_DIR_S2C},
    {0x42, "MONITOR", IMP_DIR_C2S},
    {0x43, "MONITOR_EVENT", IMP_DIR_S2C},
    {0x50, "PING", IMP_DIR_BOTH},
    {0x51, "PONG", IMP_DIR_BOTH},
};

/* IMP-FRAME-003, IMP-MSG-001: the type table. */
static void test_type_table(void **state)
{
    (void)state;
    assert_int_equal(sizeof types / sizeof types[0], IMP_TYPE_COUNT);
    for (unsigned i = 0; i < IMP_TYPE_COUNT; i++) {
        assert_int_equal(imp_type_at(i), types[i].type); /* ascending, all of them */
        assert_int_equal(imp_type_known(types[i].type), 1);
        assert_int_equal(imp_type_dir(types[i].type), types[i].dir);
        assert_non_null(imp_type_name(types[i].type));
        assert_string_equal(imp_type_name(types[i].type), types[i].name);
    }
    for (unsigned t = 0; t < 0x400; t++) {
        int defined = 0;
        for (unsigned i = 0; i < IMP_TYPE_COUNT; i++)
            defined |= types[i].type == t;
        if (defined)
            continue;
        /* includes 0x101, 0x150...: values above a byte must not alias a defined type */
        assert_int_equal(imp_type_known(t), 0);
        assert_int_equal(imp_type_dir(t), 0);
        assert_null(imp_type_name(t));
    }
    assert_int_equal(imp_type_known(0xffffffffu), 0);
    assert_null(imp_type_name(0xffffffffu));
    assert_int_equal(imp_type_dir(0xffffffffu), 0);
}

/* The guard buffers of tests/support/guard.c really trap an over-read (in a child process),
 * and let the bytes up to the end be read. */
static void test_guard_traps_overread(void **state)
{
    (void)state;
    static const size_t lens[] = {0, 1, 12, 4095, 4096, 4097};
    for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++) {
        uint8_t *data = calloc(1, lens[i] + 1);
        assert_non_null(data);
        memset(data, 0x42, lens[i]);
        uint8_t *p = guard_copy(data, lens[i]);
        for (size_t k = 0; k < lens[i]; k++)
            assert_int_equal(p[k], 0x42);
        fflush(NULL);
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
            volatile const uint8_t *vp = p;
            signal(SIGSEGV, SIG_DFL);
            signal(SIGBUS, SIG_DFL);
            uint8_t x = vp[lens[i]];
            _exit(x == 0x77 ? 1 : 0); /* not reached */
        }
        int status = 0;
        assert_int_equal(waitpid(pid, &status, 0), pid);
        /* killed by the signal, or (under AddressSanitizer, which catches SIGSEGV itself)
         * exited with a failure status */
        if (WIFSIGNALED(status))
            assert_true(WTERMSIG(status) == SIGSEGV || WTERMSIG(status) == SIGBUS);
        else
            assert_true(WIFEXITED(status) && WEXITSTATUS(status) != 0);
        guard_free(p, lens[i]);
        free(data);
    }
    /* a reused guard_buf: the data always ends at a page boundary, intact */
    static uint8_t big[9000];
    for (size_t k = 0; k < sizeof big; k++)
        big[k] = (uint8_t)(k * 7);
    guard_buf g;
    guard_buf_init(&g);
    for (size_t len = 0; len < sizeof big; len += 1499) {
        uint8_t *p = guard_buf_place(&g, big, len);
        assert_true((uintptr_t)(p + len) % guard_page_size() == 0);
        assert_memory_equal(p, big, len);
    }
    guard_buf_free(&g);
}

/* The codec's lowest-set-bit helper (wire.h) and its portable fallback: every single bit, every
 * bit with everything above it set, and pseudo-random masks, against a bit-by-bit scan. */
static unsigned scan_low_bit(uint64_t x)
{
    unsigned n = 0;
    while (!((x >> n) & 1u))
        n++;
    return n;
}

static void test_low_bit(void **state)
{
    (void)state;
    for (unsigned b = 0; b < 64; b++) {
        uint64_t one = UINT64_C(1) << b, above = ~(one - 1);
        assert_int_equal(imp_low_bit(one), b);
        assert_int_equal(imp_low_bit_portable(one), b);
        assert_int_equal(imp_low_bit(above), b);
        assert_int_equal(imp_low_bit_portable(above), b);
    }
    uint64_t x = UINT64_C(0x9e3779b97f4a7c15);
    for (int i = 0; i < 100000; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        uint64_t m = x >> (i % 64); /* masks with 0..63 leading zero bits */
        if (m == 0)
            continue;
        unsigned want = scan_low_bit(m);
        assert_int_equal(imp_low_bit(m), want);
        assert_int_equal(imp_low_bit_portable(m), want);
        /* the loop the codec runs: each set bit once, in ascending order */
        unsigned prev = 0, count = 0;
        for (uint64_t rest = m; rest; rest &= rest - 1) {
            unsigned t = imp_low_bit(rest);
            assert_true(count == 0 || t > prev);
            assert_true((m >> t) & 1u);
            prev = t;
            count++;
        }
        unsigned pop = 0;
        for (unsigned b = 0; b < 64; b++)
            pop += (unsigned)((m >> b) & 1u);
        assert_int_equal(count, pop);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_header_fields),
        cmocka_unit_test(test_parse_exact_sizes),
        cmocka_unit_test(test_parse_need_every_prefix),
        cmocka_unit_test(test_parse_limits),
        cmocka_unit_test(test_parse_hard_limit),
        cmocka_unit_test(test_parse_check_order),
        cmocka_unit_test(test_parse_every_version),
        cmocka_unit_test(test_parse_every_type),
        cmocka_unit_test(test_parse_every_flag),
        cmocka_unit_test(test_parse_back_to_back),
        cmocka_unit_test(test_parse_ignores_payload),
        cmocka_unit_test(test_header_write_round_trip),
        cmocka_unit_test(test_type_table),
        cmocka_unit_test(test_guard_traps_overread),
        cmocka_unit_test(test_low_bit),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
