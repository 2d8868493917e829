/* Fuzz target: split invariance (IMP-FRAME-008). The same byte stream goes through two fresh
 * connections with the same configuration and the same deterministic application: once whole,
 * once in chunks whose sizes come from the input (byte by byte when none are given). The
 * sequence of (next_event result, frame type, request id), the output bytes, and the final
 * state and error must be identical; abort() otherwise.
 *
 * Requirements checked:
 *   IMP-FRAME-008  the frames, events and errors do not depend on how the stream is split
 *   IMP-FRAME-005  the limit check happens on the header whenever it is complete, so a chunk
 *                  boundary cannot change which frames are refused
 *   IMP-ERR-003    an error stops the same frames in both runs
 * plus every check of fuzz_conn.h in both runs (role, tables, output, stickiness).
 *
 * Input: 4 config bytes (as fuzz_server.c, byte 3 bit 2 the deferred LOGOUT included; byte 2
 * bit 0 picks the client role instead of the server; no allocation failures, no time) | A | A bytes
 * of application decisions | L | L chunk sizes (0 means 1; cycled) | the byte stream.
 */
#include "fuzz_conn.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

typedef struct run_result {
    fz_buf ev, out;
    imp_state state;
    int err;
    unsigned events;
} run_result;

static void run(const uint8_t cfg[4], imp_role role, const fz_src *app0, const uint8_t *split,
                size_t nsplit, int whole, const uint8_t *p, size_t n, run_result *res)
{
    fz_src app = *app0, io = {NULL, 0};
    fz_drv d;
    memset(res, 0, sizeof *res);
    if (fz_open(&d, role, cfg, 0, &app, &io)) {
        res->err = 1; /* refused configuration: the same for both runs */
        return;
    }
    d.split_mode = 1;
    fz_flush(&d); /* a client's HELLO */
    size_t i = 0;
    while (n > 0 && !d.err) {
        size_t chunk = n;
        if (!whole) {
            chunk = nsplit ? split[i++ % nsplit] : 1;
            if (chunk == 0)
                chunk = 1;
            if (chunk > n)
                chunk = n;
        }
        fz_feed(&d, p, chunk);
        p += chunk;
        n -= chunk;
    }
    fz_drain(&d);
    fz_flush(&d);
    res->state = imp_conn_state(d.c);
    res->err = imp_conn_error(d.c);
    res->events = d.events;
    res->ev = d.ev_log;
    res->out = d.out_log;
    d.ev_log.p = d.out_log.p = NULL;
    d.ev_log.len = d.out_log.len = d.ev_log.cap = d.out_log.cap = 0;
    fz_close_all(&d);
}

static void dump(const char *what, const fz_buf *a, const fz_buf *b)
{
    size_t i = 0;
    while (i < a->len && i < b->len && a->p[i] == b->p[i])
        i++;
    fprintf(stderr, "split: %s differ at byte %zu (whole %zu bytes, split %zu bytes)\n", what, i,
            a->len, b->len);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 4)
        return 0;
    fz_src all = {data + 4, size - 4};
    fz_src app;
    const uint8_t *split;
    app.n = fz_take(&all, fz_byte(&all, 0), &app.p);
    size_t nsplit = fz_take(&all, fz_byte(&all, 0), &split);
    imp_role role = (data[2] & 1) ? IMP_ROLE_CLIENT : IMP_ROLE_SERVER;

    run_result a, b;
    run(data, role, &app, split, nsplit, 1, all.p, all.n, &a);
    run(data, role, &app, split, nsplit, 0, all.p, all.n, &b);
    int same = a.ev.len == b.ev.len && (a.ev.len == 0 || memcmp(a.ev.p, b.ev.p, a.ev.len) == 0);
    if (!same)
        dump("event logs", &a.ev, &b.ev);
    int same_out =
        a.out.len == b.out.len && (a.out.len == 0 || memcmp(a.out.p, b.out.p, a.out.len) == 0);
    if (!same_out)
        dump("outputs", &a.out, &b.out);
    FZ_CHECK(same);
    FZ_CHECK(same_out);
    FZ_CHECK_EQ(a.state, b.state);
    FZ_CHECK_EQ(a.err, b.err);
    FZ_CHECK_EQ(a.events, b.events);
    fz_buf_free(&a.ev);
    fz_buf_free(&a.out);
    fz_buf_free(&b.ev);
    fz_buf_free(&b.out);
    return 0;
}
