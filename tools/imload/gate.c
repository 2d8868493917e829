/* imload — parsing of option values and of --assert gates (see gate.h). */
#include "gate.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

int parse_rate(const char *s, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || v < 0)
        return -1;
    if (*end == 'k' || *end == 'K')
        v *= 1e3, end++;
    else if (*end == 'M')
        v *= 1e6, end++;
    else if (*end == 'G')
        v *= 1e9, end++;
    if (strcmp(end, "/s") == 0 || *end == 0)
        ;
    else if (strcmp(end, "/m") == 0)
        v /= 60.0;
    else
        return -1;
    *out = v;
    return 0;
}

int parse_ns(const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || v < 0)
        return -1;
    if (!strcmp(end, "ns"))
        ;
    else if (!*end || !strcmp(end, "us"))
        v *= 1e3;
    else if (!strcmp(end, "ms"))
        v *= 1e6;
    else if (!strcmp(end, "s"))
        v *= 1e9;
    else
        return -1;
    *out = (uint64_t)v;
    return 0;
}

int parse_count(const char *s, uint64_t min, uint64_t max, uint64_t *out)
{
    double v;
    if (parse_rate(s, &v) != 0 || strchr(s, '/') || v < (double)min || v > (double)max ||
        v != (double)(uint64_t)v)
        return -1;
    *out = (uint64_t)v;
    return 0;
}

int is_latency(const char *m)
{
    const char *d = strchr(m, '.');
    if (d)
        m = d + 1;
    return !strcmp(m, "p50") || !strcmp(m, "p90") || !strcmp(m, "p99") || !strcmp(m, "p999") ||
           !strcmp(m, "p9999") || !strcmp(m, "max") || !strcmp(m, "mean") || !strcmp(m, "min");
}

static int known_metric(const char *m)
{
    static const char *const names[] = {"rate",    "sent",        "acked",     "delivered",
                                        "lost",    "duplicated",  "reordered", "errors",
                                        "refused", "unconfirmed", "unsent"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (!strcmp(m, names[i]))
            return 1;
    if (strchr(m, '.') && strncmp(m, "ack.", 4) && strncmp(m, "delivery.", 9) &&
        strncmp(m, "e2e.", 4))
        return 0;
    return is_latency(m);
}

int parse_gate(const char *s, gate *g)
{
    memset(g, 0, sizeof *g);
    g->text = s;
    size_t i = 0;
    while (s[i] == ' ')
        i++;
    size_t k = 0;
    while (s[i] && !strchr("<>=! ", s[i]) && k < sizeof g->metric - 1)
        g->metric[k++] = s[i++];
    while (s[i] == ' ')
        i++;
    k = 0;
    while (s[i] && strchr("<>=!", s[i]) && k < 2)
        g->op[k++] = s[i++];
    static const char *const ops[] = {"<", "<=", ">", ">=", "=", "==", "!="};
    int okop = 0;
    for (size_t j = 0; j < sizeof ops / sizeof ops[0]; j++)
        if (!strcmp(g->op, ops[j]))
            okop = 1;
    if (!known_metric(g->metric) || !okop)
        return -1;
    while (s[i] == ' ')
        i++;
    char *end;
    errno = 0;
    double v = strtod(s + i, &end);
    if (errno || end == s + i)
        return -1;
    while (*end == ' ')
        end++;
    if (is_latency(g->metric)) {
        if (!*end || !strcmp(end, "us"))
            v *= 1e3;
        else if (!strcmp(end, "ms"))
            v *= 1e6;
        else if (!strcmp(end, "s"))
            v *= 1e9;
        else if (strcmp(end, "ns"))
            return -1;
    } else {
        if (!strcmp(end, "k") || !strcmp(end, "K"))
            v *= 1e3;
        else if (!strcmp(end, "M"))
            v *= 1e6;
        else if (!strcmp(end, "G"))
            v *= 1e9;
        else if (*end && strcmp(end, "/s"))
            return -1;
    }
    g->value = v;
    return 0;
}
int gate_holds(const gate *g, double v)
{
    if (!strcmp(g->op, "<"))
        return v < g->value;
    if (!strcmp(g->op, "<="))
        return v <= g->value;
    if (!strcmp(g->op, ">"))
        return v > g->value;
    if (!strcmp(g->op, ">="))
        return v >= g->value;
    if (!strcmp(g->op, "!="))
        return v != g->value;
    return v == g->value;
}
