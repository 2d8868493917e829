/* Unit tests for protocol/errors.c: the error table of SPEC.md section 6, read from SPEC.md
 * itself and compared with the library (names, classes, fatality, exit status) and with the
 * IMP_ERR_* constants of errors.h (also read from the header file, so that a constant added
 * to one place and not the other is caught). IMP-ERR-001, IMP-ERR-002. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "imp/imp.h"

#ifndef IMP_SRCDIR
#define IMP_SRCDIR "."
#endif

/* Every constant of errors.h, by name. */
#define E(x)            \
    {                   \
        IMP_ERR_##x, #x \
    }
static const struct {
    int code;
    const char *name;
} header_codes[] = {
    E(INVAL),
    E(NOMEM),
    E(BUFFER),
    E(OUTPUT_FULL),
    E(NOT_ALLOWED),
    E(CLOSED),
    E(VERSION),
    E(SERVER_FULL),
    E(BANNED),
    E(AUTH_FAILED),
    E(USER_EXISTS),
    E(REGISTRATION_CLOSED),
    E(TOKEN_INVALID),
    E(AUTH_BACKOFF),
    E(WEAK_PASSWORD),
    E(NO_SUCH_USER),
    E(NO_SUCH_ROOM),
    E(FORBIDDEN),
    E(NOT_MEMBER),
    E(QUOTA),
    E(TOO_LARGE),
    E(RATE_LIMITED),
    E(BUSY),
    E(STORAGE),
    E(INTERNAL),
    E(BAD_REQUEST),
    E(ID_CONFLICT),
    E(AUTH_TIMEOUT),
    E(PING_TIMEOUT),
    E(TIMEOUT),
    E(PROTOCOL),
    E(BAD_VERSION),
    E(UNKNOWN_TYPE),
    E(RESERVED_FLAGS),
    E(FRAME_TOO_LARGE),
    E(WRONG_ROLE),
    E(STATE),
    E(NOT_AUTHENTICATED),
    E(TRUNCATED),
    E(ZERO_TAG),
    E(FIELD_ORDER),
    E(DUPLICATE_FIELD),
    E(UNKNOWN_CRITICAL),
    E(MISSING_FIELD),
    E(FIELD_LENGTH),
    E(BAD_UTF8),
    E(BAD_NAME),
    E(BAD_VALUE),
    E(FIELD_CONFLICT),
    E(BAD_LIST),
    E(SHUTDOWN),
    E(SLOW_CONSUMER),
    E(KICKED),
    E(CONNECTION_LOST),
};
#undef E
#define N_HEADER (sizeof header_codes / sizeof header_codes[0])

/* ---- reading SPEC.md section 6 ---------------------------------------------------------- */

#define MAX_ROWS 128
typedef struct spec_row {
    int code; /* positive wire code */
    char name[48];
} spec_row;
typedef struct spec_class {
    int digit; /* 2..7 */
    int exit;  /* "(exit N)" */
    int fatal; /* third column says "fatal" (not "not fatal") */
} spec_class;

static spec_row rows[MAX_ROWS];
static size_t nrows;
static spec_class classes[10];
static size_t nclasses;

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    size_t cap = 1 << 16, len = 0;
    char *b = malloc(cap + 1);
    size_t r;
    while (b && (r = fread(b + len, 1, cap - len, f)) > 0) {
        len += r;
        if (len == cap) {
            char *nb = realloc(b, cap * 2 + 1);
            if (!nb) {
                free(b);
                b = NULL;
                break;
            }
            b = nb;
            cap *= 2;
        }
    }
    fclose(f);
    if (b)
        b[len] = '\0';
    return b;
}

/* Split "| a | b | c |" into trimmed cells; returns the count. */
static size_t cells(char *line, char *out[], size_t max)
{
    size_t n = 0;
    char *p = strchr(line, '|');
    while (p && n < max) {
        char *q = strchr(p + 1, '|');
        if (!q)
            break;
        char *s = p + 1, *e = q;
        while (s < e && *s == ' ')
            s++;
        while (e > s && e[-1] == ' ')
            e--;
        *e = '\0';
        out[n++] = s;
        p = q;
    }
    return n;
}

static int load_spec(void **state)
{
    (void)state;
    char *text = slurp(IMP_SRCDIR "/protocol/SPEC.md");
    if (!text) {
        fprintf(stderr, "cannot read %s\n", IMP_SRCDIR "/protocol/SPEC.md");
        return -1;
    }
    char *sec = strstr(text, "\n## 6. Error codes");
    char *end = sec ? strstr(sec + 1, "\n## 7.") : NULL;
    if (!sec || !end) {
        fprintf(stderr, "SPEC.md: section 6 not found\n");
        free(text);
        return -1;
    }
    *end = '\0';
    for (char *line = sec; line && *line;) {
        char *nl = strchr(line, '\n');
        if (nl)
            *nl = '\0';
        char *c[6];
        size_t n = line[0] == '|' ? cells(line, c, 6) : 0;
        if (n == 3 && strncmp(c[0], "**", 2) == 0) {
            /* | **3xx** | *cannot connect (exit 3)* | fatal | */
            const char *ex = strstr(c[1], "(exit ");
            if (nclasses < 10 && ex) {
                spec_class *k = &classes[nclasses++];
                k->digit = c[0][2] - '0';
                k->exit = ex[6] - '0';
                k->fatal = strcmp(c[2], "fatal") == 0;
            }
        } else if (n == 3 && c[0][0] >= '0' && c[0][0] <= '9' && nrows < MAX_ROWS) {
            rows[nrows].code = atoi(c[0]);
            snprintf(rows[nrows].name, sizeof rows[nrows].name, "%s", c[1]);
            nrows++;
        }
        line = nl ? nl + 1 : NULL;
    }
    free(text);
    if (nrows < 40 || nclasses != 6) {
        fprintf(stderr, "SPEC.md section 6: parsed %zu rows, %zu classes\n", nrows, nclasses);
        return -1;
    }
    return 0;
}

static const spec_row *spec_find(int code)
{
    for (size_t i = 0; i < nrows; i++)
        if (rows[i].code == code)
            return &rows[i];
    return NULL;
}

static const spec_class *class_of(int code)
{
    for (size_t i = 0; i < nclasses; i++)
        if (classes[i].digit == code / 100)
            return &classes[i];
    return NULL;
}

/* ---- tests ------------------------------------------------------------------------------ */

/* The spec table parsed as expected: six classes 2xx..7xx, codes inside their class. */
static void test_spec_table_shape(void **state)
{
    (void)state;
    printf("# SPEC.md section 6: %zu codes in %zu classes\n", nrows, nclasses);
    for (size_t i = 0; i < nclasses; i++) {
        assert_int_equal(classes[i].digit, (int)i + 2);
        assert_int_equal(classes[i].exit, classes[i].digit);
    }
    /* "fatal" classes: 3xx, 6xx, 7xx (IMP-ERR-002) */
    assert_false(classes[0].fatal);
    assert_true(classes[1].fatal);
    assert_false(classes[2].fatal);
    assert_false(classes[3].fatal);
    assert_true(classes[4].fatal);
    assert_true(classes[5].fatal);
    for (size_t i = 0; i < nrows; i++) {
        assert_in_range(rows[i].code, 200, 799);
        for (size_t k = 0; k < i; k++) {
            if (rows[k].code == rows[i].code || strcmp(rows[k].name, rows[i].name) == 0)
                fail_msg("SPEC.md table: %d %s appears twice", rows[i].code, rows[i].name);
        }
    }
}

/* IMP-ERR-001: every constant of errors.h is in the spec table, same code and name, and every
 * row of the spec table has its constant. */
static void test_header_matches_spec(void **state)
{
    (void)state;
    for (size_t i = 0; i < N_HEADER; i++) {
        const spec_row *r = spec_find(-header_codes[i].code);
        if (!r)
            fail_msg("IMP_ERR_%s (%d) is not in SPEC.md section 6", header_codes[i].name,
                     header_codes[i].code);
        assert_string_equal(r->name, header_codes[i].name);
    }
    for (size_t i = 0; i < nrows; i++) {
        int found = 0;
        for (size_t k = 0; k < N_HEADER; k++)
            found |= header_codes[k].code == -rows[i].code;
        if (!found)
            fail_msg("SPEC.md code %d %s has no IMP_ERR_ constant", rows[i].code, rows[i].name);
    }
    assert_int_equal(N_HEADER, nrows);
}

/* The list above is the whole of errors.h: count the IMP_ERR_ enumerators in the file. */
static void test_header_list_complete(void **state)
{
    (void)state;
    char *text = slurp(IMP_SRCDIR "/protocol/include/imp/errors.h");
    assert_non_null(text);
    size_t n = 0;
    for (char *p = text; (p = strstr(p, "IMP_ERR_")) != NULL; p += 8) {
        /* an enumerator definition: "IMP_ERR_NAME = -" */
        char *q = p + 8;
        while ((*q >= 'A' && *q <= 'Z') || (*q >= '0' && *q <= '9') || *q == '_')
            q++;
        if (strncmp(q, " = -", 4) != 0)
            continue;
        char name[48];
        size_t len = (size_t)(q - (p + 8));
        assert_true(len < sizeof name);
        memcpy(name, p + 8, len);
        name[len] = '\0';
        int code = -atoi(q + 4);
        int found = 0;
        for (size_t k = 0; k < N_HEADER; k++)
            found |= header_codes[k].code == code && strcmp(header_codes[k].name, name) == 0;
        if (!found)
            fail_msg("errors.h defines IMP_ERR_%s = %d, unknown to this test", name, code);
        n++;
    }
    free(text);
    assert_int_equal(n, N_HEADER);
}

/* IMP-ERR-001: imp_err_name gives the spec's name for the library value and the wire code. */
static void test_err_name(void **state)
{
    (void)state;
    for (size_t i = 0; i < nrows; i++) {
        const char *neg = imp_err_name(-rows[i].code);
        const char *pos = imp_err_name(rows[i].code);
        if (!neg || strcmp(neg, rows[i].name) != 0)
            fail_msg("imp_err_name(%d) = %s, SPEC.md says %s", -rows[i].code, neg ? neg : "NULL",
                     rows[i].name);
        if (!pos || strcmp(pos, rows[i].name) != 0)
            fail_msg("imp_err_name(%d) = %s, SPEC.md says %s", rows[i].code, pos ? pos : "NULL",
                     rows[i].name);
    }
    /* NULL for every other code */
    for (int c = -1000; c <= 1000; c++) {
        if (c == 0 || spec_find(c < 0 ? -c : c))
            continue;
        if (imp_err_name(c) != NULL)
            fail_msg("imp_err_name(%d) = %s, expected NULL", c, imp_err_name(c));
    }
    assert_null(imp_err_name(INT_MIN));
    assert_null(imp_err_name(INT_MAX));
    assert_null(imp_err_name(INT_MIN + 1));
}

/* imp_strerror is never NULL nor empty, for any int; known codes have their own description,
 * the same for the library value and the wire code; IMP_ERR_NONE (0) gives "ok". */
static void test_strerror(void **state)
{
    (void)state;
    for (int c = -1000; c <= 1000; c++) {
        const char *s = imp_strerror(c);
        if (!s || !*s)
            fail_msg("imp_strerror(%d) is NULL or empty", c);
    }
    static const int extremes[] = {INT_MIN, INT_MIN + 1, -100000, 100000, INT_MAX};
    for (size_t i = 0; i < sizeof extremes / sizeof extremes[0]; i++) {
        const char *s = imp_strerror(extremes[i]);
        assert_non_null(s);
        assert_true(*s != '\0');
    }
    assert_string_equal(imp_strerror(IMP_ERR_NONE), "ok");
    const char *unknown = imp_strerror(-299);
    for (size_t i = 0; i < nrows; i++) {
        const char *a = imp_strerror(-rows[i].code);
        const char *b = imp_strerror(rows[i].code);
        assert_string_equal(a, b);
        if (strcmp(a, unknown) == 0)
            fail_msg("code %d %s has no description of its own", rows[i].code, rows[i].name);
        for (size_t k = 0; k < i; k++)
            if (strcmp(a, imp_strerror(-rows[k].code)) == 0)
                fail_msg("codes %d and %d share the description \"%s\"", rows[k].code, rows[i].code,
                         a);
    }
}

/* IMP-ERR-002: fatal are the classes 3xx, 6xx, 7xx, and NOMEM of 2xx; codes not in the table
 * are treated by their class (IMP-MSG-009). Both signs. */
static void test_is_fatal(void **state)
{
    (void)state;
    for (size_t i = 0; i < nrows; i++) {
        int code = rows[i].code;
        const spec_class *k = class_of(code);
        assert_non_null(k);
        int want = k->fatal || code == 201;
        if (imp_is_fatal(code) != want || imp_is_fatal(-code) != want)
            fail_msg("imp_is_fatal(%d %s) should be %d", code, rows[i].name, want);
    }
    assert_int_equal(imp_is_fatal(IMP_ERR_NOMEM), 1);
    assert_int_equal(imp_is_fatal(IMP_ERR_INVAL), 0);
    assert_int_equal(imp_is_fatal(IMP_ERR_NONE), 0);
    for (int code = 300; code <= 799; code++) {
        if (spec_find(code))
            continue;
        int want = class_of(code)->fatal;
        if (imp_is_fatal(code) != want || imp_is_fatal(-code) != want)
            fail_msg("unknown code %d: imp_is_fatal should follow its class (%d)", code, want);
    }
}

/* IMP-ERR-001: the exit status is the hundreds digit, 0 for IMP_ERR_NONE, 7 outside 200..799. */
static void test_exit_status(void **state)
{
    (void)state;
    assert_int_equal(imp_exit_status(IMP_ERR_NONE), 0);
    for (int c = -1000; c <= 1000; c++) {
        if (c == 0)
            continue;
        int a = c < 0 ? -c : c;
        int want = (a >= 200 && a <= 799) ? a / 100 : 7;
        if (imp_exit_status(c) != want)
            fail_msg("imp_exit_status(%d) = %d, expected %d", c, imp_exit_status(c), want);
    }
    for (size_t i = 0; i < nrows; i++)
        assert_int_equal(imp_exit_status(-rows[i].code), class_of(rows[i].code)->exit);
    assert_int_equal(imp_exit_status(INT_MIN), 7);
    assert_int_equal(imp_exit_status(INT_MAX), 7);
    assert_int_equal(imp_exit_status(INT_MIN + 1), 7);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_spec_table_shape),
        cmocka_unit_test(test_header_matches_spec),
        cmocka_unit_test(test_header_list_complete),
        cmocka_unit_test(test_err_name),
        cmocka_unit_test(test_strerror),
        cmocka_unit_test(test_is_fatal),
        cmocka_unit_test(test_exit_status),
    };
    return cmocka_run_group_tests(tests, load_spec, NULL);
}
