/* Runs every vector of tests/vectors/NAME.txt through the library (see tests/vectors/README.md).
 *
 * Each vector is fed (a) whole, (b) byte by byte, (c) split in two at every offset and (d) in
 * random chunk sizes (fixed seed); every chunk is copied to a buffer that ends at a PROT_NONE
 * page. The outcome must be the expected one every time, hence the same for every split
 * (IMP-FRAME-008). For `frame` contexts the runner accumulates chunks like a streaming reader
 * and checks that imp_frame_parse's *need is exact after every chunk (IMP-FRAME-005: the
 * header is judged as soon as its 12 bytes are present). For connection contexts, an error
 * must be sticky afterwards (IMP-ERR-003).
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
#include "vectors.h"

#ifndef IMP_SRCDIR
#define IMP_SRCDIR "."
#endif

#define VEC_DIR IMP_SRCDIR "/tests/vectors"
#define MAX_REPORTS 40 /* failures printed per test; all are counted */

static vec_set vs;

static int setup(void **state)
{
    (void)state;
    char err[300];
    vec_set_init(&vs);
    if (vec_load_dir(&vs, VEC_DIR, err, sizeof err) < 0) {
        fprintf(stderr, "loading vectors: %s\n", err);
        return -1;
    }
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    vec_set_free(&vs);
    return 0;
}

static size_t count_file(const char *file, vec_kind kind, int any_kind)
{
    size_t n = 0;
    for (size_t i = 0; i < vs.n; i++)
        if (strcmp(vs.v[i].file, file) == 0 && (any_kind || vs.v[i].expect == kind))
            n++;
    return n;
}

/* The files are there, parse, and hold what they promise. */
static void test_vector_files(void **state)
{
    (void)state;
    assert_true(vs.nfiles >= 3);
    for (size_t f = 0; f < vs.nfiles; f++) {
        const char *fn = vs.files[f];
        printf("# %-16s %5zu vectors: %4zu ok, %4zu need, %4zu errors\n", fn,
               count_file(fn, VEC_OK, 1), count_file(fn, VEC_OK, 0), count_file(fn, VEC_NEED, 0),
               count_file(fn, VEC_ERR, 0));
    }
    printf("# total            %5zu vectors\n", vs.n);

    /* SPEC.md section 12 has four examples; valid.txt at least 40 frames; malformed.txt at
     * least 300 cases, none of them valid. */
    assert_true(count_file("spec.txt", VEC_OK, 0) >= 4);
    assert_true(count_file("valid.txt", VEC_OK, 0) >= 40);
    assert_true(count_file("malformed.txt", VEC_ERR, 1) >= 300);
    assert_int_equal(count_file("malformed.txt", VEC_OK, 0), 0);
    assert_true(count_file("malformed.txt", VEC_ERR, 0) >= 300);
    assert_int_equal(count_file("valid.txt", VEC_ERR, 0), 0);

    /* valid.txt decodes every frame type at least once, as a bare frame. */
    for (unsigned i = 0; i < IMP_TYPE_COUNT; i++) {
        uint8_t t = imp_type_at(i);
        int seen = 0;
        for (size_t k = 0; k < vs.n && !seen; k++)
            seen = strcmp(vs.v[k].file, "valid.txt") == 0 && vs.v[k].expect == VEC_OK &&
                   vs.v[k].ctx == VEC_CTX_FRAME && vs.v[k].type == t;
        if (!seen)
            fail_msg("valid.txt has no frame of type %s", imp_type_name(t));
    }

    /* Every error name an error vector uses is one of errors.h, and every wire-level decode
     * error (7xx except those only a connection or the application raises) occurs. */
    static const int decode_errors[] = {
        IMP_ERR_BAD_VERSION,       IMP_ERR_UNKNOWN_TYPE,    IMP_ERR_RESERVED_FLAGS,
        IMP_ERR_FRAME_TOO_LARGE,   IMP_ERR_WRONG_ROLE,      IMP_ERR_STATE,
        IMP_ERR_NOT_AUTHENTICATED, IMP_ERR_TRUNCATED,       IMP_ERR_ZERO_TAG,
        IMP_ERR_FIELD_ORDER,       IMP_ERR_DUPLICATE_FIELD, IMP_ERR_UNKNOWN_CRITICAL,
        IMP_ERR_MISSING_FIELD,     IMP_ERR_FIELD_LENGTH,    IMP_ERR_BAD_UTF8,
        IMP_ERR_BAD_NAME,          IMP_ERR_BAD_VALUE,       IMP_ERR_FIELD_CONFLICT,
        IMP_ERR_BAD_LIST,
    };
    for (size_t e = 0; e < sizeof decode_errors / sizeof decode_errors[0]; e++) {
        size_t n = 0;
        for (size_t k = 0; k < vs.n; k++)
            n += vs.v[k].expect == VEC_ERR && vs.v[k].err == decode_errors[e];
        printf("#   %-18s %4zu vectors\n", imp_err_name(decode_errors[e]), n);
        if (n == 0)
            fail_msg("no vector expects %s", imp_err_name(decode_errors[e]));
    }
}

/* ---- running in a mode ------------------------------------------------------------------ */

typedef enum mode { M_WHOLE, M_BYTES, M_SPLIT2, M_RANDOM } mode;

static uint64_t rng_state;
static uint64_t rng(void)
{
    /* xorshift64*: deterministic across platforms */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 2685821657736338717ull;
}

static size_t reports;

static void report(const vec *v, const char *how, const vec_outcome *got, const char *what)
{
    if (reports++ >= MAX_REPORTS)
        return;
    char e[80], g[400];
    printf("# FAIL %s (%s:%u) %s: expected %s, got %s%s\n", v->name, v->file, v->line, how,
           vec_expect_str(v, e, sizeof e), vec_outcome_str(got, g, sizeof g), what);
}

/* Run v with the given chunks; check against the expectation and the whole-input outcome.
 * Returns 1 if all is well. */
static int run_check(const vec *v, const size_t *chunks, size_t n, const vec_outcome *whole,
                     const char *how)
{
    vec_outcome o;
    vec_run(v, chunks, n, &o);
    if (!vec_outcome_matches(v, &o)) {
        report(v, how, &o, "");
        return 0;
    }
    if (whole && !vec_outcome_equal(&o, whole)) {
        report(v, how, &o, " (differs from the whole input: IMP-FRAME-008)");
        return 0;
    }
    return 1;
}

static size_t run_mode(mode md, size_t *runs)
{
    size_t failed_vectors = 0;
    size_t cap = 16;
    size_t *chunks = malloc(cap * sizeof *chunks);
    assert_non_null(chunks);
    reports = 0;
    rng_state = 0x1d2c3b4a59687786ull;
    for (size_t i = 0; i < vs.n; i++) {
        const vec *v = &vs.v[i];
        vec_outcome whole;
        vec_run(v, NULL, 0, &whole);
        int ok = 1;
        char how[64];
        if (v->len + 2 > cap) {
            cap = v->len + 2;
            chunks = realloc(chunks, cap * sizeof *chunks);
            assert_non_null(chunks);
        }
        switch (md) {
        case M_WHOLE:
            (*runs)++;
            if (!vec_outcome_matches(v, &whole)) {
                report(v, "whole", &whole, "");
                ok = 0;
            }
            break;
        case M_BYTES:
            for (size_t k = 0; k < v->len; k++)
                chunks[k] = 1;
            (*runs)++;
            ok = run_check(v, chunks, v->len, &whole, "byte by byte");
            break;
        case M_SPLIT2:
            for (size_t k = 0; k <= v->len && ok; k++) {
                chunks[0] = k;
                chunks[1] = v->len - k;
                snprintf(how, sizeof how, "split at %zu", k);
                (*runs)++;
                ok = run_check(v, chunks, 2, &whole, how);
            }
            break;
        case M_RANDOM:
            for (int round = 0; round < 8 && ok; round++) {
                size_t n = 0, left = v->len;
                /* small chunks mostly, sometimes large ones */
                size_t maxc = round < 4 ? 7 : round < 6 ? 64 : 4096;
                while (left) {
                    size_t c = 1 + (size_t)(rng() % maxc);
                    if (c > left)
                        c = left;
                    chunks[n++] = c;
                    left -= c;
                }
                snprintf(how, sizeof how, "random chunks, round %d", round);
                (*runs)++;
                ok = run_check(v, chunks, n, &whole, how);
            }
            break;
        }
        failed_vectors += !ok;
    }
    free(chunks);
    return failed_vectors;
}

static void check_mode(mode md, const char *name)
{
    size_t runs = 0;
    size_t failed = run_mode(md, &runs);
    printf("# %s: %zu vectors, %zu runs, %zu failing vectors\n", name, vs.n, runs, failed);
    fflush(stdout);
    if (failed)
        fail_msg("%zu of %zu vectors failed %s", failed, vs.n, name);
}

/* IMP-FRAME-001..006, IMP-FIELD-001..010, IMP-TEXT-001/002, IMP-MSG-001..009, IMP-SESS-002,
 * IMP-SESS-004, IMP-SESS-006, IMP-SEC-001: each vector gives exactly its outcome. */
static void test_vectors_whole(void **state)
{
    (void)state;
    check_mode(M_WHOLE, "whole input");
}

/* IMP-FRAME-008: the same outcome byte by byte. */
static void test_vectors_byte_by_byte(void **state)
{
    (void)state;
    check_mode(M_BYTES, "byte by byte");
}

/* IMP-FRAME-008: the same outcome split in two at every offset (0 and len included). */
static void test_vectors_split_everywhere(void **state)
{
    (void)state;
    check_mode(M_SPLIT2, "split in two at every offset");
}

/* IMP-FRAME-008: the same outcome in random chunks. */
static void test_vectors_random_chunks(void **state)
{
    (void)state;
    check_mode(M_RANDOM, "random chunks");
}

/* The loader itself: a line parses into what it says, and bad lines are refused. */
static void test_loader(void **state)
{
    (void)state;
    vec v;
    char err[200];
    assert_int_equal(vec_parse_line("  # comment", &v, err, sizeof err), 0);
    assert_int_equal(vec_parse_line("", &v, err, sizeof err), 0);
    assert_int_equal(
        vec_parse_line("a_1 | frame:100 | 01 50 0000 00000000 00000005 | ok:PING | REQ=5 "
                       "BODY=x: TEXT=absent CODE=7 # trailing comment",
                       &v, err, sizeof err),
        1);
    assert_string_equal(v.name, "a_1");
    assert_int_equal(v.ctx, VEC_CTX_FRAME);
    assert_int_equal(v.limit, 100);
    assert_int_equal(v.len, 12);
    assert_int_equal(v.bytes[1], 0x50);
    assert_int_equal(v.bytes[11], 5);
    assert_int_equal(v.expect, VEC_OK);
    assert_int_equal(v.type, IMP_PING);
    assert_int_equal(v.nfields, 4);
    assert_int_equal(v.fields[0].tag, 0);
    assert_int_equal(v.fields[0].u, 5);
    assert_int_equal(v.fields[1].tag, IMP_T_BODY);
    assert_true(v.fields[1].is_bytes);
    assert_int_equal(v.fields[1].len, 0);
    assert_true(v.fields[2].absent);
    assert_int_equal(v.fields[3].u, 7);
    vec_clear(&v);

    assert_int_equal(
        vec_parse_line("b | server:AWAIT_AUTH | 0102 | FRAME_TOO_LARGE", &v, err, sizeof err), 1);
    assert_int_equal(v.ctx, VEC_CTX_CONN);
    assert_int_equal(v.role, IMP_ROLE_SERVER);
    assert_int_equal(v.state, IMP_S_AWAIT_AUTH);
    assert_int_equal(v.expect, VEC_ERR);
    assert_int_equal(v.err, IMP_ERR_FRAME_TOO_LARGE);
    vec_clear(&v);
    assert_int_equal(vec_parse_line("c | client:LOGOUT_SENT | | need", &v, err, sizeof err), 1);
    assert_int_equal(v.role, IMP_ROLE_CLIENT);
    assert_int_equal(v.state, IMP_S_LOGOUT_SENT);
    assert_int_equal(v.expect, VEC_NEED);
    assert_int_equal(v.len, 0);
    vec_clear(&v);

    static const char *const bad[] = {
        "Upper | frame | 00 | need",           /* name charset */
        "a | frame | 0 | need",                /* odd hex */
        "a | frame | 0 1 | need",              /* space inside a byte pair */
        "a | frame | zz | need",               /* not hex */
        "a | framex | 00 | need",              /* context */
        "a | frame:x | 00 | need",             /* limit */
        "a | server:NOPE | 00 | need",         /* state */
        "a | peer:READY | 00 | need",          /* role */
        "a | frame | 00 | ok:NOPE",            /* type name */
        "a | frame | 00 | NOPE",               /* error name */
        "a | frame | 00 | need | REQ=1",       /* fields without ok: */
        "a | frame | 00 | ok:PING | NOPE=1",   /* field name */
        "a | frame | 00 | ok:PING | BODY=1",   /* bytes field needs x: */
        "a | frame | 00 | ok:PING | SEQ=x:00", /* integer field with x: */
        "a | frame | 00",                      /* too few columns */
        "a | frame | 00 | need | | x",         /* too many columns */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        if (vec_parse_line(bad[i], &v, err, sizeof err) != -1)
            fail_msg("accepted: %s", bad[i]);
    }
}

/* The runner catches a wrong expectation: it is not a test that cannot fail. */
static void test_runner_detects_mismatch(void **state)
{
    (void)state;
    vec v;
    char err[200];
    vec_outcome o;
    assert_int_equal(
        vec_parse_line("x | frame | 01 50 0000 00000000 00000005 | ok:PONG", &v, err, sizeof err),
        1);
    assert_int_equal(vec_run(&v, NULL, 0, &o), 0);
    assert_int_equal(o.kind, VEC_OK);
    assert_int_equal(o.type, IMP_PING);
    assert_false(vec_outcome_matches(&v, &o));
    vec_clear(&v);
    assert_int_equal(vec_parse_line("x | frame | 01 50 0000 00000000 00000005 | ok:PING | REQ=6",
                                    &v, err, sizeof err),
                     1);
    assert_int_equal(vec_run(&v, NULL, 0, &o), 0);
    assert_false(o.fields_ok);
    assert_false(vec_outcome_matches(&v, &o));
    vec_clear(&v);
    assert_int_equal(
        vec_parse_line("x | server:READY | 01 50 0000 00000000 | need", &v, err, sizeof err), 1);
    assert_int_equal(vec_run(&v, NULL, 0, &o), 0);
    assert_int_equal(o.kind, VEC_NEED);
    assert_true(vec_outcome_matches(&v, &o));
    vec_clear(&v);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_loader),
        cmocka_unit_test(test_runner_detects_mismatch),
        cmocka_unit_test(test_vector_files),
        cmocka_unit_test(test_vectors_whole),
        cmocka_unit_test(test_vectors_byte_by_byte),
        cmocka_unit_test(test_vectors_split_everywhere),
        cmocka_unit_test(test_vectors_random_chunks),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
