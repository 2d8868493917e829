/* A strict JSON syntax check (RFC 8259) for tests that validate --json output. */
#ifndef IMP_TEST_JSON_CHECK_H
#define IMP_TEST_JSON_CHECK_H

/* Skips blanks (space, tab, CR, LF). */
const char *json_check_ws(const char *s);
/* One JSON value at s (after blanks): the first byte after it, or NULL if not valid JSON. */
const char *json_check_value(const char *s);
/* 1 if s is exactly one JSON value (blanks around it allowed). */
int json_check(const char *s);

#endif
