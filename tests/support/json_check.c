/* A strict JSON syntax check (RFC 8259) for tests; see json_check.h. */
#include "json_check.h"

#include <string.h>

#define MAX_DEPTH 64

const char *json_check_ws(const char *s)
{
    while (*s == ' ' || *s == '\t' || *s == '\n' || *s == '\r')
        s++;
    return s;
}

static const char *string(const char *s)
{
    if (*s != '"')
        return NULL;
    for (s++; *s != '"'; s++) {
        if (*s == 0 || (unsigned char)*s < 0x20)
            return NULL;
        if (*s != '\\')
            continue;
        s++;
        if (*s == 'u') {
            for (int i = 1; i <= 4; i++)
                if (!s[i] || !strchr("0123456789abcdefABCDEF", s[i]))
                    return NULL;
            s += 4;
        } else if (!*s || !strchr("\"\\/bfnrt", *s)) {
            return NULL;
        }
    }
    return s + 1;
}

static const char *digits(const char *s)
{
    if (!(*s >= '0' && *s <= '9'))
        return NULL;
    while (*s >= '0' && *s <= '9')
        s++;
    return s;
}

static const char *number(const char *s)
{
    if (*s == '-')
        s++;
    if (*s == '0')
        s++;
    else if (!(s = digits(s)))
        return NULL;
    if (*s == '.' && !(s = digits(s + 1)))
        return NULL;
    if (*s == 'e' || *s == 'E') {
        s++;
        if (*s == '+' || *s == '-')
            s++;
        s = digits(s);
    }
    return s;
}

static const char *value(const char *s, int depth)
{
    if (depth > MAX_DEPTH)
        return NULL;
    s = json_check_ws(s);
    if (*s == '{' || *s == '[') {
        char close = *s == '{' ? '}' : ']';
        int obj = *s == '{';
        s = json_check_ws(s + 1);
        if (*s == close)
            return s + 1;
        for (;;) {
            if (obj) {
                s = string(json_check_ws(s));
                if (!s)
                    return NULL;
                s = json_check_ws(s);
                if (*s++ != ':')
                    return NULL;
            }
            s = value(s, depth + 1);
            if (!s)
                return NULL;
            s = json_check_ws(s);
            if (*s != ',')
                return *s == close ? s + 1 : NULL;
            s++;
        }
    }
    if (*s == '"')
        return string(s);
    if (strncmp(s, "true", 4) == 0)
        return s + 4;
    if (strncmp(s, "false", 5) == 0)
        return s + 5;
    if (strncmp(s, "null", 4) == 0)
        return s + 4;
    return number(s);
}

const char *json_check_value(const char *s)
{
    return value(s, 0);
}

int json_check(const char *s)
{
    const char *e = json_check_value(s);
    return e != NULL && *json_check_ws(e) == 0;
}
