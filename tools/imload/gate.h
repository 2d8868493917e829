/* imload — parsing of option values and of --assert gates (kept apart from main.c so that the
 * unit test tests/tools/test_imload_gate.c can compile it in). */
#ifndef IMLOAD_GATE_H
#define IMLOAD_GATE_H

#include <stdint.h>

/* "1000", "1000/s", "10k", "2.5M", "600/m": per second. 0 or -1. */
int parse_rate(const char *s, double *out);
/* "20us", "1ms", "500ns", "0.5s"; a bare number is microseconds. 0 or -1. */
int parse_ns(const char *s, uint64_t *out);
/* An integer in [min, max], with the suffixes k, M, G ("10k"). 0 or -1. */
int parse_count(const char *s, uint64_t min, uint64_t max, uint64_t *out);

/* --assert METRIC OP VALUE */
typedef struct gate {
    char metric[32]; /* "p99", "ack.p99", "lost", "rate", ... */
    char op[3];      /* < <= > >= = == != */
    double value;    /* latencies in ns */
    const char *text;
} gate;

/* 1 for a latency metric (p50 ... max, mean, min, optionally ack. or delivery. or e2e.). */
int is_latency(const char *m);
/* Parse s into g (g->text = s). 0, or -1 for an unknown metric, operator or value. */
int parse_gate(const char *s, gate *g);
/* 1 when the metric's value v satisfies the gate. */
int gate_holds(const gate *g, double v);

#endif
