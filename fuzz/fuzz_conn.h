/* Shared by fuzz_server.c, fuzz_client.c and fuzz_split.c: drives an imp_conn with a byte stream
 * and a fake application, and checks after every library call that the connection behaves as
 * SPEC.md section 7 and 8 say. Any violation calls abort().
 *
 * What is checked, and where the spec says it:
 *   - every event is exactly the next whole frame of the input, decoded as the reference decoder
 *     decodes it (IMP-FRAME-001, IMP-FRAME-008, IMP-LIB-002); a frame over the receive limit is
 *     refused as soon as its header is in (IMP-FRAME-005, IMP-SESS-006);
 *   - the receive and send tables, cell by cell, including NOT_ALLOWED / CLOSED refusals that
 *     change nothing (IMP-SESS-001..007, IMP-MSG-001, IMP-MSG-003: TOO_LARGE);
 *   - errors: a failing call's error is sticky in every later call, the state is CLOSING, and
 *     the peer gets an ERROR frame with that code (IMP-ERR-002, IMP-ERR-003); an error always
 *     has a cause in the input (table, decoder, limit, version, timer, injected NOMEM);
 *   - output: exactly the frames a call is expected to add — WELCOME with the configured limits,
 *     PONG with the PING's id, OK for LOGOUT, the application's frame byte for byte
 *     (IMP-MSG-002, IMP-MSG-005, IMP-FRAME-007, IMP-FIELD-008), nothing after a refusal;
 *   - timers: nothing happens before imp_conn_next_deadline(); the authentication deadline is
 *     absolute (IMP-TIME-001); PING_TIMEOUT never before N*I after the last PONG
 *     (IMP-TIME-002); time running backwards changes nothing (IMP-TIME-003);
 *   - memory: every allocation goes through the hook, a failed one gives a sticky NOMEM, and
 *     imp_conn_free() releases everything (IMP-LIB-003);
 *   - deferred LOGOUT (IMP-SESS-008), server role, when config byte 3 bit 2 turns
 *     imp_conn_set_defer_logout on (extra action 9 toggles it later; a client connection must
 *     refuse it with IMP_ERR_INVAL): LOGOUT in READY is an event with no OK sent, the state is
 *     LOGOUT_RCVD; there every input is dropped (no event, no output, no error), no timer runs
 *     (no PING, no PING_TIMEOUT, next deadline UINT64_MAX), want_close is 0, table 7.2's row
 *     holds cell by cell (APP_S frames, ERROR, OK for other requests stay; PING, PONG,
 *     WELCOME, AUTH_OK and client frames are NOT_ALLOWED) and the OK with LOGOUT's request id,
 *     sent plain or prepared (imp_prepared_new), and only that one, moves it to CLOSING.
 */
#ifndef IMP_FUZZ_CONN_H
#define IMP_FUZZ_CONN_H

#include "fuzz_ref.h"

/* ---- the allocator hook: counts, can fail the n-th allocation -------------------------------- */

typedef struct fz_alloc {
    size_t live;    /* blocks allocated and not freed */
    size_t calls;   /* allocation requests (size > 0) */
    size_t fail_at; /* 0: never fail; else fail request number fail_at */
    int fail_rest;  /* also fail every request after fail_at */
    int failed;     /* a request was failed */
} fz_alloc;

static inline void *fz_realloc(void *ud, void *ptr, size_t size)
{
    fz_alloc *a = ud;
    if (size == 0) {
        if (ptr) {
            FZ_CHECK(a->live > 0);
            a->live--;
            free(ptr);
        }
        return NULL;
    }
    a->calls++;
    if (a->fail_at && (a->calls == a->fail_at || (a->fail_rest && a->calls > a->fail_at))) {
        a->failed = 1;
        return NULL;
    }
    void *q = realloc(ptr, size);
    if (!q)
        abort();
    if (!ptr)
        a->live++;
    return q;
}

/* ---- configuration from 4 input bytes ------------------------------------------------------- */

typedef struct fz_setup {
    imp_config cfg;
    int expect_invalid; /* imp_conn_new must refuse this configuration */
    uint64_t t0;
    size_t fail_at;
    int fail_rest;
    int defer;      /* turn imp_conn_set_defer_logout on after imp_conn_new (IMP-SESS-008) */
    int defer_call; /* call it at all (with defer, which may be 0) */
} fz_setup;

static inline void fz_setup_read(fz_setup *s, imp_role role, const uint8_t c[4], int allow_fail)
{
    static const uint32_t frames[8] = {4096, 8192, 65536, 1048576, 16777216, 5000, 12295, 100000};
    static const uint32_t pings[4] = {0, 50, 1000, 30000};
    static const uint32_t auths[4] = {0, 100, 10000, 1};
    static const size_t outs[4] = {0, 0, 100, 2048};
    /* Start times stay far below 2^64: the library adds timeouts to now without saturating,
     * so a start within AUTH_TIMEOUT of 2^64 wraps the deadline (reported, not fuzzed). */
    static const uint64_t starts[4] = {0, 1000, UINT64_C(1700000000000), UINT64_C(1) << 62};
    static const uint8_t caps[] = {7,   'h', 'i', 's', 't', 'o', 'r', 'y', 8,
                                   'p', 'r', 'e', 's', 'e', 'n', 'c', 'e'};
    memset(s, 0, sizeof *s);
    imp_config_default(&s->cfg, role);
    imp_config *cfg = &s->cfg;
    cfg->max_frame = frames[c[0] & 7];
    switch ((c[0] >> 3) & 7) {
    case 0:
        cfg->max_frame_preauth = 1024;
        break;
    case 1:
        cfg->max_frame_preauth = 2048;
        break;
    case 2:
        cfg->max_frame_preauth = 4096;
        break;
    case 3:
        cfg->max_frame_preauth = cfg->max_frame;
        break;
    case 4:
        cfg->max_frame_preauth = 1500;
        break;
    case 5:
        cfg->max_frame_preauth = 1024 + c[3];
        break;
    case 6:
        cfg->max_frame_preauth = cfg->max_frame + 1; /* invalid */
        break;
    default:
        cfg->max_frame_preauth = 1023; /* invalid */
        break;
    }
    cfg->ping_interval_ms = pings[c[0] >> 6];
    cfg->auth_timeout_ms = auths[c[1] & 3];
    cfg->ping_max_missed = (c[1] >> 2) & 3; /* 0 is invalid when pinging */
    cfg->max_output = outs[(c[1] >> 4) & 3];
    if (c[1] & 0x40)
        cfg->agent = "imp-fuzz/1";
    if (c[1] & 0x80) {
        cfg->caps.p = caps;
        cfg->caps.len = sizeof caps;
    }
    s->t0 = starts[c[3] & 3];
    /* byte 3 bits 2 and 3 (the seeds of make-seeds leave them 0: the option stays off):
     * bit 2 turns the deferred LOGOUT on, bit 3 alone calls imp_conn_set_defer_logout(c, 0) */
    s->defer = (c[3] >> 2) & 1;
    s->defer_call = (c[3] & 0x0C) != 0;
    if (allow_fail && c[2] >= 0xE0) {
        s->fail_at = (size_t)(c[2] & 0x0F) + 1;
        s->fail_rest = (c[2] & 0x10) != 0;
    }
    /* imp_config documents these as invalid: the constructor must refuse them. */
    if (role == IMP_ROLE_SERVER &&
        (cfg->max_frame_preauth < 1024 || cfg->max_frame_preauth > cfg->max_frame))
        s->expect_invalid = 1;
    if (cfg->ping_interval_ms && cfg->ping_max_missed < 1)
        s->expect_invalid = 1;
}

/* ---- the reference state tables (section 7) -------------------------------------------------- */

#define FZ_NEXT_EITHER \
    100 /* ERROR with a code of unspecified class: CLOSING or the non-fatal cell */

static inline int fz_is_server_state(imp_state s)
{
    return s == IMP_S_AWAIT_HELLO || s == IMP_S_AWAIT_AUTH || s == IMP_S_AUTHENTICATING ||
           s == IMP_S_READY || s == IMP_S_LOGOUT_RCVD || s == IMP_S_CLOSING;
}
static inline int fz_is_client_state(imp_state s)
{
    return s == IMP_S_HELLO_SENT || s == IMP_S_CONNECTED || s == IMP_S_AUTH_SENT ||
           s == IMP_S_READY || s == IMP_S_LOGOUT_SENT || s == IMP_S_CLOSING;
}

static inline int fz_is_app_c(unsigned type)
{
    const ref_type *t = ref_type_info(type);
    return t && t->dir == IMP_DIR_C2S && type != IMP_HELLO && type != IMP_REGISTER &&
           type != IMP_LOGIN && type != IMP_LOGOUT;
}
static inline int fz_is_app_s(unsigned type) /* APP_S of the spec, OK included */
{
    const ref_type *t = ref_type_info(type);
    return t && t->dir == IMP_DIR_S2C && type != IMP_WELCOME && type != IMP_AUTH_OK;
}

/* Receive cell for a state other than CLOSING: 0 and *next, or the fatal error. code is the
 * ERROR frame's CODE (ignored for other types); defer: the server defers LOGOUT's OK
 * (IMP-SESS-008). LOGOUT_RCVD ignores everything (0, stays): the caller checks that no event
 * comes out of it. */
static inline int fz_rx_cell(imp_role role, imp_state s, unsigned type, unsigned code, uint32_t rid,
                             uint32_t logout_rid, int defer, int *next)
{
    unsigned dir = ref_type_info(type)->dir;
    *next = (int)s;
    if (role == IMP_ROLE_SERVER) {
        if (s == IMP_S_LOGOUT_RCVD)
            return 0; /* table 7.1: ignore */
        if (dir == IMP_DIR_S2C)
            return IMP_ERR_WRONG_ROLE; /* IMP-MSG-001 */
        if (type == IMP_ERROR) {
            *next = IMP_S_CLOSING;
            return 0;
        }
        if (s == IMP_S_AWAIT_HELLO) {
            if (type != IMP_HELLO)
                return IMP_ERR_STATE;
            *next = IMP_S_AWAIT_AUTH;
            return 0;
        }
        switch (type) {
        case IMP_HELLO:
            return IMP_ERR_STATE;
        case IMP_REGISTER:
        case IMP_LOGIN:
            if (s != IMP_S_AWAIT_AUTH)
                return IMP_ERR_STATE; /* IMP-SESS-004: one outstanding */
            *next = IMP_S_AUTHENTICATING;
            return 0;
        case IMP_LOGOUT: /* IMP-MSG-005; IMP-SESS-008: deferred only in READY */
            *next = s == IMP_S_READY && defer ? IMP_S_LOGOUT_RCVD : IMP_S_CLOSING;
            return 0;
        case IMP_PING:
        case IMP_PONG:
            return 0;
        default: /* APP_C */
            return s == IMP_S_READY ? 0 : IMP_ERR_NOT_AUTHENTICATED;
        }
    }
    if (dir == IMP_DIR_C2S)
        return IMP_ERR_WRONG_ROLE;
    switch (type) {
    case IMP_WELCOME:
        if (s != IMP_S_HELLO_SENT)
            return IMP_ERR_STATE;
        *next = IMP_S_CONNECTED;
        return 0;
    case IMP_AUTH_OK:
        if (s == IMP_S_AUTH_SENT) {
            *next = IMP_S_READY;
            return 0;
        }
        return s == IMP_S_LOGOUT_SENT ? 0 : IMP_ERR_STATE;
    case IMP_ERROR: {
        int f = ref_wire_fatal(code);
        int nf = s == IMP_S_AUTH_SENT ? IMP_S_CONNECTED : (int)s; /* IMP-SESS-005 */
        *next = f == 1 ? IMP_S_CLOSING : f == 0 ? nf : FZ_NEXT_EITHER;
        return 0;
    }
    case IMP_PING:
    case IMP_PONG:
        return 0;
    case IMP_OK:
        if (s == IMP_S_LOGOUT_SENT) { /* IMP-SESS-007 */
            if (rid == logout_rid)
                *next = IMP_S_CLOSING;
            return 0;
        }
        return s == IMP_S_READY ? 0 : IMP_ERR_STATE;
    default: /* APP_S except OK */
        return s == IMP_S_READY || s == IMP_S_LOGOUT_SENT ? 0 : IMP_ERR_STATE;
    }
}

/* Send cell: 0 and *next, or IMP_ERR_NOT_ALLOWED / IMP_ERR_CLOSED. rid is the frame's request
 * id, logout_rid the LOGOUT's (server: the deferred LOGOUT received). */
static inline int fz_tx_cell(imp_role role, imp_state s, unsigned type, unsigned code, uint32_t rid,
                             uint32_t logout_rid, int *next)
{
    *next = (int)s;
    if (s == IMP_S_CLOSING)
        return IMP_ERR_CLOSED; /* IMP-SESS-003 */
    if (type == IMP_ERROR) {
        if (role == IMP_ROLE_CLIENT || ref_wire_fatal(code) == 1)
            *next = IMP_S_CLOSING;
        else if (ref_wire_fatal(code) == -1)
            *next = FZ_NEXT_EITHER;
        else if (s == IMP_S_AUTHENTICATING)
            *next = IMP_S_AWAIT_AUTH; /* IMP-SESS-005 */
        return 0;
    }
    if (role == IMP_ROLE_SERVER) {
        if (type == IMP_AUTH_OK && s == IMP_S_AUTHENTICATING) {
            *next = IMP_S_READY;
            return 0;
        }
        if (s == IMP_S_READY && (fz_is_app_s(type) || type == IMP_PING))
            return 0;
        if (s == IMP_S_LOGOUT_RCVD && type == IMP_OK) { /* IMP-SESS-008 */
            if (rid == logout_rid)
                *next = IMP_S_CLOSING;
            return 0;
        }
        if (s == IMP_S_LOGOUT_RCVD && fz_is_app_s(type))
            return 0; /* the answers still owed */
        return IMP_ERR_NOT_ALLOWED;
    }
    if ((type == IMP_REGISTER || type == IMP_LOGIN) && s == IMP_S_CONNECTED) {
        *next = IMP_S_AUTH_SENT;
        return 0;
    }
    if (type == IMP_LOGOUT && (s == IMP_S_CONNECTED || s == IMP_S_AUTH_SENT || s == IMP_S_READY)) {
        *next = IMP_S_LOGOUT_SENT;
        return 0;
    }
    if (s == IMP_S_READY && (fz_is_app_c(type) || type == IMP_PING))
        return 0;
    return IMP_ERR_NOT_ALLOWED;
}

/* ---- the driver ------------------------------------------------------------------------------ */

typedef struct fz_drv {
    imp_conn *c;
    imp_role role;
    fz_setup setup;
    imp_allocator hook;
    fz_alloc al;
    fz_src *app;    /* the fake application's decisions */
    fz_src *io;     /* chunking, ticks, extra actions, output consumption */
    int split_mode; /* deterministic: no ticks or extra actions, output drained after each call */
    fz_buf in;      /* shadow: input taken by the connection and not yet returned as events */
    int shadow;     /* the shadow is exact (until an error or CLOSING) */
    fz_buf out_log; /* all output consumed */
    fz_buf ev_log;  /* one record per non-zero imp_conn_next_event result */
    uint64_t now;   /* latest time passed in */
    int err;        /* the sticky error, once reported */
    int reached_ready;
    uint64_t ready_time;
    int ping_out;        /* keepalive model: a library PING is unanswered */
    unsigned missed;     /* keepalive model: the missed counter */
    uint64_t last_ping;  /* time of the last library PING */
    uint32_t logout_rid; /* client: LOGOUT sent; server: the deferred LOGOUT received */
    uint32_t next_rid;
    int defer;        /* server: imp_conn_set_defer_logout is on (IMP-SESS-008) */
    int logout_rcvd;  /* server: LOGOUT_RCVD was reached */
    int logout_later; /* server: the application sends LOGOUT's OK later (extra action, end) */
    fz_alloc pal;     /* prepared frames' allocations (never failed) */
    imp_allocator phook;
    unsigned events;
    int was_closing;
    int deferred_auth; /* server: LOGIN/REGISTER not answered yet */
    uint32_t auth_rid;
    uint8_t user[32];
    size_t user_len;
    uint64_t seq; /* client: highest DELIVER SEQ seen */
    uint8_t scratch[2048];
} fz_drv;

static inline size_t fz_pending(const fz_drv *d, const uint8_t **p)
{
    const uint8_t *q = NULL;
    size_t n = imp_conn_pending_output(d->c, &q);
    if (p)
        *p = q;
    FZ_CHECK(n == 0 || q != NULL);
    return n;
}

/* Bytes added to the output since it held `before` bytes (nothing was consumed in between). */
static inline size_t fz_added(const fz_drv *d, size_t before, const uint8_t **p)
{
    const uint8_t *q;
    size_t n = fz_pending(d, &q);
    FZ_CHECK(n >= before);
    *p = q ? q + before : q;
    return n - before;
}

/* Split the added output into frames; each must be whole, valid (reference decoder) and of a
 * type the connection's role may send. Returns the number of frames, at most max. */
static inline size_t fz_out_frames(const fz_drv *d, const uint8_t *p, size_t n, imp_msg *ms,
                                   size_t max)
{
    size_t k = 0;
    while (n > 0) {
        imp_frame f;
        size_t need = 0;
        long long r = ref_frame(p, n, 0, &need);
        FZ_CHECK(r > 0); /* whole, valid frames only */
        imp_ssize lr = imp_frame_parse(p, n, 0, &f, NULL);
        FZ_CHECK_EQ(lr, r);
        FZ_CHECK(k < max);
        FZ_CHECK_EQ(fz_decode_checked(&f, &ms[k]), 0);
        unsigned dir = ref_type_info(f.type)->dir;
        FZ_CHECK(dir & (d->role == IMP_ROLE_SERVER ? IMP_DIR_S2C : IMP_DIR_C2S));
        k++;
        p += r;
        n -= (size_t)r;
    }
    return k;
}

static inline void fz_expect_nothing_added(const fz_drv *d, size_t before)
{
    const uint8_t *p;
    FZ_CHECK_EQ(fz_added(d, before, &p), 0);
}

/* An ERROR frame with the code, or nothing when memory ran out. rid >= 0: the request id it
 * must carry (IMP-FRAME-007: the offending frame's when its header was valid, else 0). */
static inline void fz_expect_error_added(const fz_drv *d, size_t before, int err, long long rid)
{
    const uint8_t *p;
    size_t n = fz_added(d, before, &p);
    unsigned wire = (unsigned)(err < 0 ? -err : err);
    if (n == 0) {
        /* allowed only when the ERROR could not be queued or is not a wire code */
        FZ_CHECK(d->al.failed || wire < 300);
        return;
    }
    FZ_CHECK(wire >= 300);
    imp_msg m[2];
    FZ_CHECK_EQ(fz_out_frames(d, p, n, m, 1), 1);
    FZ_CHECK_EQ(m[0].type, IMP_ERROR);
    FZ_CHECK_EQ(imp_msg_u(&m[0], IMP_T_CODE, 0), wire);
    if (rid >= 0)
        FZ_CHECK_EQ(m[0].request_id, rid);
}

/* Invariants after every library call. */
static inline void fz_after(fz_drv *d)
{
    imp_state s = imp_conn_state(d->c);
    FZ_CHECK_EQ(imp_conn_role(d->c), d->role);
    FZ_CHECK(d->role == IMP_ROLE_SERVER ? fz_is_server_state(s) : fz_is_client_state(s));
    FZ_CHECK(imp_state_name(s) != NULL);
    int e = imp_conn_error(d->c);
    if (d->err)
        FZ_CHECK_EQ(e, d->err); /* IMP-ERR-003: sticky */
    else
        FZ_CHECK_EQ(e, 0); /* errors are reported by the call that causes them */
    if (e)
        FZ_CHECK(s == IMP_S_CLOSING);
    if (d->was_closing)
        FZ_CHECK(s == IMP_S_CLOSING); /* there is no way out of CLOSING */
    if (s == IMP_S_CLOSING) {
        d->was_closing = 1;
        d->shadow = 0;
    }
    FZ_CHECK_EQ(imp_conn_want_close(d->c), s == IMP_S_CLOSING);
    if (s == IMP_S_READY && !d->reached_ready) {
        d->reached_ready = 1;
        d->ready_time = d->now;
    }
    if (d->reached_ready && d->role == IMP_ROLE_SERVER)
        FZ_CHECK(s == IMP_S_READY || s == IMP_S_LOGOUT_RCVD || s == IMP_S_CLOSING);
    if (s == IMP_S_LOGOUT_RCVD) { /* IMP-SESS-008: only from READY, input dropped, no timer */
        FZ_CHECK(d->reached_ready);
        d->logout_rcvd = 1;
        d->shadow = 0;
        FZ_CHECK_EQ(imp_conn_next_deadline(d->c), UINT64_MAX);
    }
    if (d->logout_rcvd) /* no way back to READY */
        FZ_CHECK(s == IMP_S_LOGOUT_RCVD || s == IMP_S_CLOSING);
    /* IMP-SESS-006 */
    uint32_t lim = imp_conn_recv_limit(d->c);
    if (d->role == IMP_ROLE_SERVER)
        FZ_CHECK_EQ(lim,
                    d->reached_ready ? d->setup.cfg.max_frame : d->setup.cfg.max_frame_preauth);
    else
        FZ_CHECK_EQ(lim, d->setup.cfg.max_frame);
}

/* A call returned err < 0 for the first time: record it and check that it sticks. */
static inline void fz_sticky(fz_drv *d, int err)
{
    FZ_CHECK(err < 0);
    FZ_CHECK(imp_is_fatal(err));
    d->err = err;
    d->shadow = 0;
    fz_after(d);
    size_t before = fz_pending(d, NULL);
    imp_msg m;
    uint8_t b = 1;
    FZ_CHECK_EQ(imp_conn_next_event(d->c, &m), err);
    FZ_CHECK_EQ(imp_conn_tick(d->c, d->now + 1000), err);
    FZ_CHECK_EQ(imp_conn_feed(d->c, &b, 1), err);
    FZ_CHECK_EQ(imp_conn_next_deadline(d->c), UINT64_MAX);
    imp_msg ping;
    imp_msg_init(&ping, IMP_PING, 1);
    FZ_CHECK_EQ(imp_conn_send(d->c, &ping), IMP_ERR_CLOSED);
    fz_expect_nothing_added(d, before);
    fz_after(d);
}

/* Drain all pending output into out_log. */
static inline void fz_flush(fz_drv *d)
{
    const uint8_t *p;
    size_t n = fz_pending(d, &p);
    fz_buf_add(&d->out_log, p, n);
    imp_conn_consume_output(d->c, n);
    FZ_CHECK_EQ(fz_pending(d, NULL), 0);
}

/* Consume part of the output; the rest must stay as it was. */
static inline void fz_consume(fz_drv *d, size_t want)
{
    const uint8_t *p;
    size_t n = fz_pending(d, &p);
    if (n == 0)
        return;
    if (want > n)
        want = n;
    fz_buf rest = {0, 0, 0};
    fz_buf_add(&rest, p + want, n - want);
    fz_buf_add(&d->out_log, p, want);
    imp_conn_consume_output(d->c, want);
    const uint8_t *q;
    size_t m = fz_pending(d, &q);
    FZ_CHECK_EQ(m, n - want);
    FZ_CHECK(m == 0 || memcmp(q, rest.p, m) == 0);
    fz_buf_free(&rest);
}

/* Queue an application frame, checking the send table and everything send documents;
 * prepared: through imp_prepared_new and imp_conn_send_prepared, which must behave the same
 * (except that an invalid message is refused by imp_prepared_new, before the table). */
static inline int fz_send_how(fz_drv *d, const imp_msg *m, int prepared)
{
    imp_state s = imp_conn_state(d->c);
    size_t before = fz_pending(d, NULL);
    size_t calls = d->al.calls;
    int next;
    int cell = fz_tx_cell(d->role, s, m->type, (unsigned)imp_msg_u(m, IMP_T_CODE, 0), m->request_id,
                          d->logout_rid, &next);
    int v = imp_msg_validate(m);
    imp_ssize size = imp_msg_encoded_size(m);
    int r;
    if (prepared) {
        int perr = 1;
        imp_prepared *pp = imp_prepared_new(m, &d->phook, &perr);
        if (size < 0) { /* nothing was prepared, nothing was sent */
            FZ_CHECK(pp == NULL);
            FZ_CHECK_EQ(perr, (int)size);
            FZ_CHECK_EQ(d->pal.live, 0);
            fz_expect_nothing_added(d, before);
            FZ_CHECK_EQ(imp_conn_state(d->c), s);
            fz_after(d);
            return perr;
        }
        FZ_CHECK(pp != NULL);
        FZ_CHECK_EQ(perr, 0);
        FZ_CHECK_EQ(imp_prepared_size(pp), (size_t)size);
        r = imp_conn_send_prepared(d->c, pp);
        imp_prepared_free(pp);
        FZ_CHECK_EQ(d->pal.live, 0); /* IMP-LIB-003: through its allocator */
    } else {
        r = imp_conn_send(d->c, m);
    }
    if (cell) {
        FZ_CHECK_EQ(r, cell); /* refused by the table, nothing changes */
    } else if (v) {
        FZ_CHECK_EQ(r, v);
        FZ_CHECK_EQ(size, v);
    } else {
        FZ_CHECK(size > 0);
        uint32_t limit = 0;
        if (d->role == IMP_ROLE_CLIENT) /* IMP-MSG-003 */
            limit =
                d->reached_ready ? imp_conn_peer_max_frame(d->c) : imp_conn_peer_max_preauth(d->c);
        if (limit && (size_t)size > limit)
            FZ_CHECK_EQ(r, IMP_ERR_TOO_LARGE);
        else if (d->setup.cfg.max_output && before + (size_t)size > d->setup.cfg.max_output)
            FZ_CHECK_EQ(r, IMP_ERR_OUTPUT_FULL);
        else if (r == IMP_ERR_NOMEM)
            FZ_CHECK(d->al.failed && d->al.calls > calls);
        else
            FZ_CHECK_EQ(r, 0);
    }
    if (r == IMP_ERR_NOMEM) {
        fz_expect_nothing_added(d, before);
        fz_sticky(d, r);
        return r;
    }
    if (r == 0) {
        const uint8_t *p;
        size_t n = fz_added(d, before, &p);
        FZ_CHECK_EQ(n, (size_t)size);
        uint8_t *want = malloc((size_t)size);
        if (!want)
            abort();
        FZ_CHECK_EQ(imp_msg_encode(m, want, (size_t)size), size);
        FZ_CHECK(memcmp(p, want, (size_t)size) == 0); /* exactly the frame, canonical */
        free(want);
        imp_state ns = imp_conn_state(d->c);
        if (next == FZ_NEXT_EITHER)
            FZ_CHECK(ns == s || ns == IMP_S_CLOSING);
        else
            FZ_CHECK_EQ(ns, next);
        if (m->type == IMP_LOGOUT)
            d->logout_rid = m->request_id;
    } else {
        fz_expect_nothing_added(d, before);
        FZ_CHECK_EQ(imp_conn_state(d->c), s);
    }
    fz_after(d);
    if (d->split_mode)
        fz_flush(d);
    return r;
}

static inline int fz_send(fz_drv *d, const imp_msg *m)
{
    return fz_send_how(d, m, 0);
}

/* imp_conn_close: CLOSING, with ERROR(code), request id 0, for the peer unless already closing. */
static inline void fz_close(fz_drv *d, int code)
{
    imp_state s = imp_conn_state(d->c);
    size_t before = fz_pending(d, NULL);
    imp_conn_close(d->c, code, "closing");
    FZ_CHECK_EQ(imp_conn_state(d->c), IMP_S_CLOSING);
    if (s == IMP_S_CLOSING)
        fz_expect_nothing_added(d, before);
    else
        fz_expect_error_added(d, before, code, 0);
    fz_after(d);
}

/* ---- the fake applications ---------------------------------------------------------------- */

static inline uint32_t fz_rid(fz_drv *d)
{
    return ++d->next_rid;
}

/* A names list for the replies (built with the library's builder, which must accept it). */
static inline imp_bytes fz_names(fz_drv *d, unsigned n)
{
    static const char *const pool[] = {"alice", "bob", "Carol", "dave.x", "e-1", "f_2"};
    imp_builder b;
    imp_builder_init(&b, d->scratch, 512);
    if (d->user_len)
        FZ_CHECK_EQ(imp_names_add(&b, d->user, d->user_len), 0);
    for (unsigned i = 0; i < n % 7; i++)
        FZ_CHECK_EQ(imp_names_add(&b, pool[i % 6], strlen(pool[i % 6])), 0);
    FZ_CHECK_EQ(b.err, 0);
    imp_bytes v = {d->scratch, b.len};
    return v;
}

static inline void fz_server_auth_ok(fz_drv *d, unsigned a)
{
    imp_msg r;
    static const uint8_t token[20] = "0123456789abcdefghij";
    imp_msg_init(&r, IMP_AUTH_OK, d->auth_rid);
    imp_msg_set_b(&r, IMP_T_USER, d->user, d->user_len);
    imp_msg_set_u(&r, IMP_T_SESSION_ID, d->events + 1);
    imp_msg_set_u(&r, IMP_T_LAST_SEQ, a & 0x40 ? 17 : 0);
    if (a & 0x10)
        imp_msg_set_b(&r, IMP_T_TOKEN, token, 16 + (a & 3));
    if (a & 0x20)
        imp_msg_set_u(&r, IMP_T_ADMIN, 1);
    d->deferred_auth = 0;
    (void)fz_send(d, &r);
}

static inline int fz_drain(fz_drv *d);

/* After a deferred LOGOUT (IMP-SESS-008): one frame the application may still send (an answer
 * owed for an earlier request: APP_S, ERROR, OK with another id) or one table 7.2 refuses in
 * LOGOUT_RCVD. fz_send_how checks the cell, the state and the output. b & 8: prepared. */
static inline void fz_server_owed(fz_drv *d, unsigned b)
{
    imp_msg r;
    uint32_t other = d->logout_rid + 1 + (b >> 4); /* never LOGOUT's id */
    int prep = (b & 8) != 0;
    switch (b & 7) {
    case 0:
        imp_msg_init(&r, IMP_ACK, other);
        imp_msg_set_u(&r, IMP_T_MSG_ID, 1000 + d->events);
        imp_msg_set_u(&r, IMP_T_OUTCOME, IMP_OUTCOME_STORED);
        break;
    case 1: /* OK for another request: stays in LOGOUT_RCVD */
        imp_msg_init(&r, IMP_OK, other);
        if (b & 0x10)
            imp_msg_set_u(&r, IMP_T_COUNT, b);
        break;
    case 2: /* non-fatal ERROR: stays */
        imp_msg_init(&r, IMP_ERROR, other);
        imp_msg_set_u(&r, IMP_T_CODE, 506);
        imp_msg_set_u(&r, IMP_T_RETRY_AFTER, 250);
        break;
    case 3:
        if (b & 0x10) {
            imp_msg_init(&r, IMP_HISTORY_ITEM, other);
            imp_msg_set_s(&r, IMP_T_BODY, "old message");
            imp_msg_set_u(&r, IMP_T_MSG_ID, 9);
            imp_msg_set_s(&r, IMP_T_SENDER, "bob");
            imp_msg_set_u(&r, IMP_T_TIMESTAMP, 1234);
            imp_msg_set_s(&r, IMP_T_ROOM, "lobby");
        } else {
            imp_msg_init(&r, IMP_DELIVER, 0);
            imp_msg_set_u(&r, IMP_T_TARGET_KIND, IMP_TARGET_BROADCAST);
            imp_msg_set_s(&r, IMP_T_BODY, "late");
            imp_msg_set_u(&r, IMP_T_MSG_ID, 5);
            imp_msg_set_u(&r, IMP_T_SEQ, 5);
            imp_msg_set_s(&r, IMP_T_SENDER, "eve");
            imp_msg_set_u(&r, IMP_T_TIMESTAMP, d->now);
        }
        break;
    case 4: /* PING or PONG: NOT_ALLOWED after LOGOUT */
        imp_msg_init(&r, b & 0x10 ? IMP_PONG : IMP_PING, other);
        break;
    case 5: /* AUTH_OK, or a client frame: NOT_ALLOWED */
        if (b & 0x10) {
            imp_msg_init(&r, IMP_AUTH_OK, d->logout_rid);
            imp_msg_set_s(&r, IMP_T_USER, "bob");
            imp_msg_set_u(&r, IMP_T_SESSION_ID, 1);
            imp_msg_set_u(&r, IMP_T_LAST_SEQ, 0);
        } else {
            imp_msg_init(&r, IMP_LOGOUT, d->logout_rid);
        }
        break;
    case 6: /* fatal ERROR: CLOSING, the OK can no longer be sent */
        imp_msg_init(&r, IMP_ERROR, b & 0x10 ? d->logout_rid : other);
        imp_msg_set_u(&r, IMP_T_CODE, b & 0x20 ? 302 : 730);
        break;
    default: /* an invalid ACK (no OUTCOME): refused, nothing changes */
        imp_msg_init(&r, IMP_ACK, other);
        imp_msg_set_u(&r, IMP_T_MSG_ID, 1);
        break;
    }
    (void)fz_send_how(d, &r, prep);
}

/* The OK that answers the deferred LOGOUT (IMP-SESS-008): CLOSING from LOGOUT_RCVD. */
static inline void fz_server_logout_ok(fz_drv *d, unsigned a)
{
    imp_msg r;
    imp_state s = imp_conn_state(d->c);
    imp_msg_init(&r, IMP_OK, d->logout_rid);
    if (a & 0x10)
        imp_msg_set_u(&r, IMP_T_COUNT, 0);
    d->logout_later = 0;
    int e = fz_send_how(d, &r, (a & 1) != 0);
    if (s == IMP_S_LOGOUT_RCVD && e == 0)
        FZ_CHECK_EQ(imp_conn_state(d->c), IMP_S_CLOSING);
}

static inline void fz_server_on_event(fz_drv *d, const imp_msg *m)
{
    unsigned a = fz_byte(d->app, 0);
    imp_msg r;
    switch (m->type) {
    case IMP_REGISTER:
    case IMP_LOGIN: {
        imp_bytes u = imp_msg_b(m, IMP_T_USER);
        d->user_len = u.len;
        imp_name_fold(u.p, u.len, d->user); /* IMP-TEXT-003: the canonical form */
        d->auth_rid = m->request_id;
        d->deferred_auth = 1;
        switch (a & 7) {
        case 4: /* refused, not fatal: back to AWAIT_AUTH (IMP-SESS-005) */
            imp_msg_init(&r, IMP_ERROR, m->request_id);
            imp_msg_set_u(&r, IMP_T_CODE, m->type == IMP_REGISTER ? 401 : 400);
            if (a & 8)
                imp_msg_set_u(&r, IMP_T_RETRY_AFTER, 1000);
            d->deferred_auth = 0;
            (void)fz_send(d, &r);
            break;
        case 5: /* answered later (an extra action) */
            break;
        case 6: /* refused, fatal */
            imp_msg_init(&r, IMP_ERROR, m->request_id);
            imp_msg_set_u(&r, IMP_T_CODE, 302);
            imp_msg_set_s(&r, IMP_T_TEXT, "banned");
            d->deferred_auth = 0;
            (void)fz_send(d, &r);
            break;
        case 7: /* an invalid AUTH_OK first (no SESSION_ID): refused, nothing changes */
            imp_msg_init(&r, IMP_AUTH_OK, m->request_id);
            imp_msg_set_b(&r, IMP_T_USER, d->user, d->user_len);
            imp_msg_set_u(&r, IMP_T_LAST_SEQ, 0);
            FZ_CHECK(fz_send(d, &r) < 0); /* fz_send checks which error */
            fz_server_auth_ok(d, a);
            break;
        default:
            fz_server_auth_ok(d, a);
        }
        break;
    }
    case IMP_SEND: {
        unsigned mode = (unsigned)imp_msg_u(m, IMP_T_ACK_MODE, IMP_ACK_STORED);
        switch ((a >> 4) & 7) {
        case 1: /* refused */
            imp_msg_init(&r, IMP_ACK, m->request_id);
            imp_msg_set_u(&r, IMP_T_OUTCOME, IMP_OUTCOME_REFUSED);
            imp_msg_set_u(&r, IMP_T_CODE, 504);
            imp_msg_set_s(&r, IMP_T_TEXT, "quota");
            (void)fz_send(d, &r);
            break;
        case 2:
            imp_msg_init(&r, IMP_ERROR, m->request_id);
            imp_msg_set_u(&r, IMP_T_CODE, 506);
            imp_msg_set_u(&r, IMP_T_RETRY_AFTER, 250);
            (void)fz_send(d, &r);
            break;
        case 3: /* echo to the sender's other session: a DELIVER */
            imp_msg_init(&r, IMP_DELIVER, 0);
            imp_msg_set_u(&r, IMP_T_TARGET_KIND, imp_msg_u(m, IMP_T_TARGET_KIND, 1));
            if (imp_msg_has(m, IMP_T_TARGET))
                r.v[IMP_T_TARGET] = m->v[IMP_T_TARGET], r.present |= FZ_B(IMP_T_TARGET);
            if (imp_msg_has(m, IMP_T_HEADERS))
                r.v[IMP_T_HEADERS] = m->v[IMP_T_HEADERS], r.present |= FZ_B(IMP_T_HEADERS);
            if (imp_msg_has(m, IMP_T_CLASS))
                imp_msg_set_u(&r, IMP_T_CLASS, m->v[IMP_T_CLASS].u);
            r.v[IMP_T_BODY] = m->v[IMP_T_BODY];
            r.present |= FZ_B(IMP_T_BODY);
            imp_msg_set_u(&r, IMP_T_MSG_ID, 1000 + d->events);
            imp_msg_set_u(&r, IMP_T_SEQ, d->events);
            imp_msg_set_b(&r, IMP_T_SENDER, d->user, d->user_len ? d->user_len : 1);
            imp_msg_set_u(&r, IMP_T_TIMESTAMP, d->now);
            (void)fz_send(d, &r);
            /* fall through: and acknowledge it */
            /* FALLTHROUGH */
        default:
            if (mode == IMP_ACK_NONE && !(a & 0x80))
                break;
            imp_msg_init(&r, IMP_ACK, m->request_id);
            if (imp_msg_has(m, IMP_T_CLIENT_MSG_ID)) {
                r.v[IMP_T_CLIENT_MSG_ID] = m->v[IMP_T_CLIENT_MSG_ID];
                r.present |= FZ_B(IMP_T_CLIENT_MSG_ID);
                if (a & 1)
                    imp_msg_set_u(&r, IMP_T_DUPLICATE, 1);
            }
            imp_msg_set_u(&r, IMP_T_MSG_ID, 1000 + d->events);
            imp_msg_set_u(&r, IMP_T_OUTCOME,
                          mode == IMP_ACK_DELIVERED ? IMP_OUTCOME_DELIVERED : IMP_OUTCOME_STORED);
            (void)fz_send(d, &r);
        }
        break;
    }
    case IMP_MEMBERS:
    case IMP_ROOMS:
    case IMP_WHO: {
        uint8_t type = m->type == IMP_MEMBERS ? IMP_MEMBER_LIST
                       : m->type == IMP_ROOMS ? IMP_ROOM_LIST
                                              : IMP_WHO_LIST;
        imp_msg_init(&r, type, m->request_id);
        if (type == IMP_MEMBER_LIST)
            r.v[IMP_T_ROOM] = m->v[IMP_T_ROOM], r.present |= FZ_B(IMP_T_ROOM);
        imp_bytes names = fz_names(d, a);
        imp_msg_set_b(&r, IMP_T_NAMES, names.p, names.len);
        if (a & 0x40) {
            imp_msg_set_s(&r, IMP_T_CURSOR, "next");
            imp_msg_set_u(&r, IMP_T_MORE, 1);
        }
        (void)fz_send(d, &r);
        break;
    }
    case IMP_HISTORY: {
        unsigned k = a % 3;
        for (unsigned i = 0; i < k; i++) {
            imp_msg_init(&r, IMP_HISTORY_ITEM, m->request_id);
            imp_msg_set_s(&r, IMP_T_BODY, "old message");
            imp_msg_set_u(&r, IMP_T_MSG_ID, 10 - i);
            imp_msg_set_s(&r, IMP_T_SENDER, "bob");
            imp_msg_set_u(&r, IMP_T_TIMESTAMP, 1234 + i);
            r.v[IMP_T_ROOM] = m->v[IMP_T_ROOM];
            r.present |= FZ_B(IMP_T_ROOM);
            (void)fz_send(d, &r);
        }
        imp_msg_init(&r, IMP_OK, m->request_id);
        imp_msg_set_u(&r, IMP_T_COUNT, k);
        imp_msg_set_u(&r, IMP_T_MORE, (a >> 2) & 1);
        (void)fz_send(d, &r);
        break;
    }
    case IMP_STATS: {
        imp_builder b;
        imp_builder_init(&b, d->scratch, sizeof d->scratch);
        FZ_CHECK_EQ(imp_stats_add(&b, "connections", 11, 3), 0);
        FZ_CHECK_EQ(imp_stats_add(&b, "frames.in", 9, d->events), 0);
        imp_msg_init(&r, IMP_STATS_REPLY, m->request_id);
        imp_msg_set_b(&r, IMP_T_STATS, d->scratch, b.len);
        if (a & 1)
            imp_msg_set_u(&r, IMP_T_SERVER_TIME, d->now);
        (void)fz_send(d, &r);
        break;
    }
    case IMP_DELIVERED:
    case IMP_JOIN:
    case IMP_LEAVE:
    case IMP_PRESENCE:
    case IMP_SUBSCRIBE:
    case IMP_MONITOR:
        if ((a & 7) == 6) {
            imp_msg_init(&r, IMP_ERROR, m->request_id);
            imp_msg_set_u(&r, IMP_T_CODE, m->type == IMP_LEAVE ? 503 : 510);
        } else {
            imp_msg_init(&r, IMP_OK, m->request_id);
            if (a & 8)
                imp_msg_set_u(&r, IMP_T_COUNT, a);
        }
        (void)fz_send(d, &r);
        break;
    case IMP_LOGOUT:
        if (imp_conn_state(d->c) != IMP_S_LOGOUT_RCVD)
            break; /* answered by the library */
        /* IMP-SESS-008: the server reads on while it answers; what the client sent after
         * LOGOUT (buffered already, or not) gives no event, no output and no error */
        FZ_CHECK_EQ(fz_drain(d), 0);
        /* and READY's PING is no longer allowed (table 7.2); the refusal changes nothing */
        imp_msg_init(&r, IMP_PING, d->logout_rid);
        FZ_CHECK_EQ(fz_send(d, &r), IMP_ERR_NOT_ALLOWED);
        /* a & 3 owed frames first, then LOGOUT's OK now (plain or prepared), later (an extra
         * action, or when the input ends), or never */
        for (unsigned i = 0; i < (a & 3); i++)
            fz_server_owed(d, fz_byte(d->app, 0));
        if (((a >> 2) & 3) < 2)
            fz_server_logout_ok(d, (a & 0x10) | ((a >> 2) & 1));
        else if (((a >> 2) & 3) == 2)
            d->logout_later = 1;
        break;
    default: /* HELLO, PING, PONG, ERROR: the library answers or nothing is due */
        break;
    }
    imp_state ns = imp_conn_state(d->c);
    if ((a & 0x80) && ns != IMP_S_READY && ns != IMP_S_LOGOUT_RCVD) {
        /* "no DELIVER or ACK before READY": both must be refused, leaving everything as is */
        imp_msg_init(&r, IMP_ACK, m->request_id);
        imp_msg_set_u(&r, IMP_T_OUTCOME, IMP_OUTCOME_STORED);
        imp_msg_set_u(&r, IMP_T_MSG_ID, 1);
        int e = fz_send(d, &r);
        FZ_CHECK(e == IMP_ERR_NOT_ALLOWED || e == IMP_ERR_CLOSED);
        imp_msg_init(&r, IMP_DELIVER, 0);
        imp_msg_set_u(&r, IMP_T_TARGET_KIND, IMP_TARGET_BROADCAST);
        imp_msg_set_s(&r, IMP_T_BODY, "x");
        imp_msg_set_u(&r, IMP_T_MSG_ID, 1);
        imp_msg_set_u(&r, IMP_T_SEQ, 1);
        imp_msg_set_s(&r, IMP_T_SENDER, "eve");
        imp_msg_set_u(&r, IMP_T_TIMESTAMP, 1);
        e = fz_send(d, &r);
        FZ_CHECK(e == IMP_ERR_NOT_ALLOWED || e == IMP_ERR_CLOSED);
    }
}

static inline void fz_client_login(fz_drv *d, unsigned a)
{
    static const uint8_t token[24] = "resume-token-0123456789";
    static uint8_t big[1024];
    imp_msg r;
    imp_msg_init(&r, (a & 7) == 3 ? IMP_REGISTER : IMP_LOGIN, fz_rid(d));
    imp_msg_set_s(&r, IMP_T_USER, (a & 8) ? "Alice" : "bob");
    if ((a & 7) == 4 && r.type == IMP_LOGIN) {
        imp_msg_set_b(&r, IMP_T_TOKEN, token, sizeof token);
    } else if (a & 0x40) { /* the largest password: over a 1024-byte pre-auth limit */
        memset(big, 'p', sizeof big);
        imp_msg_set_b(&r, IMP_T_PASSWORD, big, sizeof big);
    } else {
        imp_msg_set_s(&r, IMP_T_PASSWORD, "secret");
    }
    if ((a & 7) == 5 && r.type == IMP_LOGIN) /* both: FIELD_CONFLICT (IMP-MSG-004) */
        imp_msg_set_b(&r, IMP_T_TOKEN, token, sizeof token);
    if ((a & 0x20) && r.type == IMP_LOGIN)
        imp_msg_set_u(&r, IMP_T_LAST_SEQ, d->seq);
    (void)fz_send(d, &r);
}

static inline void fz_client_request(fz_drv *d, unsigned a)
{
    imp_msg r;
    static uint8_t body[5000];
    switch (a & 7) {
    case 0:
    case 1: {
        imp_msg_init(&r, IMP_SEND, fz_rid(d));
        imp_msg_set_u(&r, IMP_T_TARGET_KIND, a & 1 ? IMP_TARGET_ROOM : IMP_TARGET_USER);
        imp_msg_set_s(&r, IMP_T_TARGET, a & 1 ? "lobby" : "bob");
        if (a & 8)
            imp_msg_set_s(&r, IMP_T_CLIENT_MSG_ID, "m-1");
        if (a & 0x10)
            imp_msg_set_u(&r, IMP_T_ACK_MODE, (a >> 5) % 3);
        if (a & 0x80) { /* big enough to pass small limits: TOO_LARGE (IMP-MSG-003) */
            memset(body, 'b', sizeof body);
            imp_msg_set_b(&r, IMP_T_BODY, body, sizeof body);
        } else {
            imp_msg_set_s(&r, IMP_T_BODY, "hello");
        }
        break;
    }
    case 2: {
        imp_builder b;
        imp_builder_init(&b, d->scratch, sizeof d->scratch);
        FZ_CHECK_EQ(imp_headers_add(&b, "Content-Type", 12, "text/plain", 10), 0);
        FZ_CHECK_EQ(imp_headers_add(&b, "x-id", 4, "", 0), 0);
        imp_msg_init(&r, IMP_SEND, fz_rid(d));
        imp_msg_set_u(&r, IMP_T_TARGET_KIND, IMP_TARGET_BROADCAST);
        imp_msg_set_u(&r, IMP_T_CLASS, IMP_CLASS_TRANSIENT);
        imp_msg_set_b(&r, IMP_T_HEADERS, d->scratch, b.len);
        imp_msg_set_b(&r, IMP_T_BODY, "", 0);
        break;
    }
    case 3:
        imp_msg_init(&r, a & 8 ? IMP_LEAVE : IMP_JOIN, fz_rid(d));
        imp_msg_set_s(&r, IMP_T_ROOM, "lobby");
        break;
    case 4:
        imp_msg_init(&r, IMP_HISTORY, fz_rid(d));
        imp_msg_set_s(&r, IMP_T_ROOM, "lobby");
        imp_msg_set_u(&r, IMP_T_LIMIT, a >> 3);
        break;
    case 5:
        imp_msg_init(&r, a & 8 ? IMP_STATS : IMP_WHO, fz_rid(d));
        break;
    case 6:
        imp_msg_init(&r, IMP_PRESENCE, fz_rid(d));
        imp_msg_set_u(&r, IMP_T_STATUS, 1 + (a >> 3) % 3);
        imp_msg_set_s(&r, IMP_T_STATUS_TEXT, "here");
        break;
    default: {
        imp_builder b;
        imp_builder_init(&b, d->scratch, sizeof d->scratch);
        FZ_CHECK_EQ(imp_names_add(&b, "bob", 3), 0);
        imp_msg_init(&r, IMP_SUBSCRIBE, fz_rid(d));
        imp_msg_set_b(&r, IMP_T_NAMES, d->scratch, b.len);
        imp_msg_set_u(&r, IMP_T_ENABLE, (a >> 3) & 1);
        break;
    }
    }
    (void)fz_send(d, &r);
}

static inline void fz_client_on_event(fz_drv *d, const imp_msg *m)
{
    unsigned a = fz_byte(d->app, 0);
    imp_msg r;
    imp_state s = imp_conn_state(d->c);
    switch (m->type) {
    case IMP_WELCOME:
        /* IMP-MSG-003: the limits WELCOME announced bind the client */
        FZ_CHECK_EQ(imp_conn_peer_max_frame(d->c), m->v[IMP_T_MAX_FRAME].u);
        FZ_CHECK_EQ(imp_conn_peer_max_preauth(d->c), m->v[IMP_T_MAX_FRAME_PREAUTH].u);
        if ((a & 0x87) == 0x86)
            break; /* wait */
        if ((a & 0x87) == 0x87) {
            imp_msg_init(&r, IMP_LOGOUT, fz_rid(d));
            (void)fz_send(d, &r);
            break;
        }
        fz_client_login(d, a);
        if ((a & 7) == 5 && s == IMP_S_CONNECTED)
            fz_client_login(d, 0); /* after the refused one, a good one */
        break;
    case IMP_ERROR:
        if (s == IMP_S_CONNECTED && (a & 1)) /* IMP-SESS-005: try again */
            fz_client_login(d, a >> 1);
        break;
    case IMP_AUTH_OK:
        if ((a & 0xF0) == 0xF0) {
            imp_msg_init(&r, IMP_LOGOUT, fz_rid(d));
            (void)fz_send(d, &r);
        } else if (!(a & 0x80)) {
            fz_client_request(d, a);
        }
        break;
    case IMP_DELIVER: {
        uint64_t seq = m->v[IMP_T_SEQ].u;
        if (seq > d->seq)
            d->seq = seq;
        if (seq && !(a & 1)) {
            imp_msg_init(&r, IMP_DELIVERED, fz_rid(d));
            imp_msg_set_u(&r, IMP_T_SEQ, seq);
            (void)fz_send(d, &r);
        }
        break;
    }
    default:
        if ((a & 0xC0) == 0xC0)
            fz_client_request(d, a);
        break;
    }
    if ((a & 0x0F) == 0x0A && imp_conn_state(d->c) != IMP_S_READY) {
        /* application requests before READY are refused and change nothing */
        imp_msg_init(&r, IMP_JOIN, fz_rid(d));
        imp_msg_set_s(&r, IMP_T_ROOM, "lobby");
        int e = fz_send(d, &r);
        FZ_CHECK(e == IMP_ERR_NOT_ALLOWED || e == IMP_ERR_CLOSED);
    }
}

/* ---- events ------------------------------------------------------------------------------- */

/* The cause of an error returned by next_event, from the shadow input; aborts if none.
 * Returns the request id the ERROR for the peer must carry, -1 if none is due. */
static inline long long fz_check_rx_error(fz_drv *d, imp_state s, uint32_t limit, int got)
{
    if (got == IMP_ERR_NOMEM) {
        FZ_CHECK(d->al.failed);
        return -1;
    }
    FZ_CHECK(d->shadow);
    size_t need;
    long long fr = ref_frame(d->in.p, d->in.len, limit, &need);
    if (fr < 0) {
        FZ_CHECK_EQ(got, fr); /* IMP-FRAME-002..006 */
        return 0;
    }
    FZ_CHECK(fr > 0); /* an error needs a header at least */
    const uint8_t *p = d->in.p;
    unsigned type = p[1];
    ref_msg rm;
    int alt;
    int de = ref_decode(type, p + 12, (size_t)fr - 12, &rm, &alt);
    int next;
    int te = fz_rx_cell(d->role, s, type, (unsigned)rm.u[IMP_T_CODE], fz_be32(p + 8), d->logout_rid,
                        d->defer, &next);
    int ve = 0; /* IMP-MSG-002: no version in common */
    if (!de && !te && type == IMP_HELLO && rm.u[IMP_T_VERSION_MIN] > 1)
        ve = IMP_ERR_VERSION;
    if (!de && !te && type == IMP_WELCOME && rm.u[IMP_T_VERSION] != 1)
        ve = IMP_ERR_VERSION;
    if (got != te && got != de && !(alt && got == alt) && got != ve) {
        fprintf(stderr, "next_event error %d; table %d, decode %d (alt %d), version %d\n", got, te,
                de, alt, ve);
        fz_fail(__FILE__, __LINE__, "an error has a cause");
    }
    FZ_CHECK(got != 0);
    return fz_be32(p + 8);
}

/* next_event returned an event: it must be the next frame of the input, allowed in state s. */
static inline void fz_check_event(fz_drv *d, imp_state s, uint32_t limit, const imp_msg *m,
                                  size_t before)
{
    FZ_CHECK(s != IMP_S_CLOSING);     /* IMP-SESS-003: CLOSING ignores input */
    FZ_CHECK(s != IMP_S_LOGOUT_RCVD); /* IMP-SESS-008: so does LOGOUT_RCVD */
    const ref_type *ti = ref_type_info(m->type);
    FZ_CHECK(ti != NULL);
    if (d->shadow) {
        size_t need;
        long long fr = ref_frame(d->in.p, d->in.len, limit, &need);
        FZ_CHECK(fr > 0);
        ref_msg rm;
        int alt;
        FZ_CHECK_EQ(ref_decode(d->in.p[1], d->in.p + 12, (size_t)fr - 12, &rm, &alt), 0);
        FZ_CHECK_EQ(m->type, d->in.p[1]);
        FZ_CHECK_EQ(m->request_id, fz_be32(d->in.p + 8));
        FZ_CHECK(m->present == rm.present);
        for (unsigned t = 1; t <= 45; t++) {
            if (!(rm.present & FZ_B(t)))
                continue;
            if (ref_int_width(ref_tag_info(t).kind)) {
                FZ_CHECK(m->v[t].u == rm.u[t]);
            } else {
                FZ_CHECK(m->v[t].b.len == rm.len[t]);
                FZ_CHECK(rm.len[t] == 0 || memcmp(m->v[t].b.p, rm.val[t], rm.len[t]) == 0);
            }
        }
        fz_buf_drop(&d->in, (size_t)fr);
    }
    FZ_CHECK_EQ(imp_msg_validate(m), 0);
    unsigned code = (unsigned)imp_msg_u(m, IMP_T_CODE, 0);
    int next;
    FZ_CHECK_EQ(
        fz_rx_cell(d->role, s, m->type, code, m->request_id, d->logout_rid, d->defer, &next), 0);
    imp_state ns = imp_conn_state(d->c);
    if (next == FZ_NEXT_EITHER)
        FZ_CHECK(ns == IMP_S_CLOSING || ns == s || (s == IMP_S_AUTH_SENT && ns == IMP_S_CONNECTED));
    else
        FZ_CHECK_EQ(ns, next);
    if (m->type == IMP_ERROR && imp_is_fatal((int)code))
        FZ_CHECK_EQ(ns, IMP_S_CLOSING);

    /* what the library answers by itself */
    const uint8_t *p;
    size_t n = fz_added(d, before, &p);
    imp_msg out[2];
    size_t k = fz_out_frames(d, p, n, out, 2);
    if (m->type == IMP_HELLO) { /* IMP-MSG-002: WELCOME with this server's limits */
        FZ_CHECK(imp_msg_u(m, IMP_T_VERSION_MIN, 0) <= 1 &&
                 imp_msg_u(m, IMP_T_VERSION_MAX, 0) >= 1);
        const imp_config *cfg = &d->setup.cfg;
        FZ_CHECK_EQ(k, 1);
        FZ_CHECK_EQ(out[0].type, IMP_WELCOME);
        FZ_CHECK_EQ(out[0].request_id, m->request_id); /* IMP-FRAME-007 */
        FZ_CHECK_EQ(imp_msg_u(&out[0], IMP_T_VERSION, 0), 1);
        FZ_CHECK_EQ(imp_msg_u(&out[0], IMP_T_MAX_FRAME, 0), cfg->max_frame);
        FZ_CHECK_EQ(imp_msg_u(&out[0], IMP_T_MAX_FRAME_PREAUTH, 0), cfg->max_frame_preauth);
        FZ_CHECK_EQ(imp_msg_u(&out[0], IMP_T_PING_INTERVAL, 1), cfg->ping_interval_ms);
        FZ_CHECK_EQ(imp_msg_u(&out[0], IMP_T_AUTH_TIMEOUT, 1), cfg->auth_timeout_ms);
        imp_bytes agent = imp_msg_b(&out[0], IMP_T_AGENT);
        FZ_CHECK(cfg->agent ? agent.len == strlen(cfg->agent) &&
                                  memcmp(agent.p, cfg->agent, agent.len) == 0
                            : !imp_msg_has(&out[0], IMP_T_AGENT));
        imp_bytes caps = imp_msg_b(&out[0], IMP_T_CAPS);
        FZ_CHECK(caps.len == cfg->caps.len &&
                 (caps.len == 0 || memcmp(caps.p, cfg->caps.p, caps.len) == 0));
    } else if (m->type == IMP_PING) { /* PONG with the same id, in every state */
        FZ_CHECK_EQ(k, 1);
        FZ_CHECK_EQ(out[0].type, IMP_PONG);
        FZ_CHECK_EQ(out[0].request_id, m->request_id);
    } else if (m->type == IMP_LOGOUT && next == IMP_S_LOGOUT_RCVD) { /* IMP-SESS-008 */
        FZ_CHECK_EQ(k, 0); /* no OK: the application sends it */
        d->logout_rid = m->request_id;
    } else if (m->type == IMP_LOGOUT) { /* IMP-MSG-005 */
        FZ_CHECK_EQ(k, 1);
        FZ_CHECK_EQ(out[0].type, IMP_OK);
        FZ_CHECK_EQ(out[0].request_id, m->request_id);
        FZ_CHECK(out[0].present == 0);
    } else {
        FZ_CHECK_EQ(k, 0);
    }
    if (m->type == IMP_PONG) { /* IMP-TIME-002: any PONG resets the counter */
        d->ping_out = 0;
        d->missed = 0;
    }
}

/* Take every available event, answering each as the application. 1 if anything happened. */
static inline int fz_drain(fz_drv *d)
{
    int progress = 0;
    for (;;) {
        if (d->err)
            return progress;
        imp_msg m;
        imp_state s = imp_conn_state(d->c);
        uint32_t limit = imp_conn_recv_limit(d->c);
        size_t before = fz_pending(d, NULL);
        int r = imp_conn_next_event(d->c, &m);
        if (r == 0) {
            fz_expect_nothing_added(d, before);
            FZ_CHECK_EQ(imp_conn_state(d->c), s);
            if (d->shadow) { /* no whole frame and no bad header buffered */
                size_t need;
                FZ_CHECK_EQ(ref_frame(d->in.p, d->in.len, limit, &need), 0);
            }
            fz_after(d);
            return progress;
        }
        progress = 1;
        uint8_t rec[9] = {0};
        fz_put32(rec, (uint32_t)r);
        if (r == 1) {
            rec[4] = m.type;
            fz_put32(rec + 5, m.request_id);
        }
        fz_buf_add(&d->ev_log, rec, sizeof rec);
        if (r < 0) {
            FZ_CHECK(s != IMP_S_CLOSING && s != IMP_S_LOGOUT_RCVD);
            long long rid = fz_check_rx_error(d, s, limit, r);
            fz_expect_error_added(d, before, r, rid);
            fz_sticky(d, r);
            if (d->split_mode)
                fz_flush(d);
            return progress;
        }
        FZ_CHECK_EQ(r, 1);
        d->events++;
        fz_check_event(d, s, limit, &m, before);
        fz_after(d);
        if (d->role == IMP_ROLE_SERVER)
            fz_server_on_event(d, &m);
        else
            fz_client_on_event(d, &m);
        if (d->split_mode)
            fz_flush(d);
    }
}

/* Feed bytes, taking events whenever the connection stops accepting them. */
static inline void fz_feed(fz_drv *d, const uint8_t *p, size_t n)
{
    while (n > 0) {
        if (d->err) {
            FZ_CHECK_EQ(imp_conn_feed(d->c, p, n), d->err);
            return;
        }
        imp_state s = imp_conn_state(d->c);
        size_t before = fz_pending(d, NULL);
        size_t calls = d->al.calls;
        imp_ssize r = imp_conn_feed(d->c, p, n);
        if (r < 0) { /* only memory can fail here: frames are checked when taken */
            FZ_CHECK_EQ(r, IMP_ERR_NOMEM);
            FZ_CHECK(d->al.failed && d->al.calls > calls);
            fz_expect_nothing_added(d, before);
            fz_sticky(d, (int)r);
            return;
        }
        fz_expect_nothing_added(d, before);
        FZ_CHECK((size_t)r <= n);
        if (s == IMP_S_CLOSING || s == IMP_S_LOGOUT_RCVD)
            FZ_CHECK_EQ((size_t)r, n); /* IMP-SESS-003, IMP-SESS-008: taken and dropped */
        else if (d->shadow)
            fz_buf_add(&d->in, p, (size_t)r);
        /* conn.h: fewer bytes only when a frame's worth plus 64 KiB is unread */
        if ((size_t)r < n && d->shadow)
            FZ_CHECK(d->in.len >= 65536);
        fz_after(d);
        p += r;
        n -= (size_t)r;
        int progress = fz_drain(d);
        if (r == 0 && !progress && !d->err)
            fz_fail(__FILE__, __LINE__, "feed takes nothing and no event is ready (stuck)");
    }
}

/* ---- time ------------------------------------------------------------------------------------ */

static inline void fz_tick(fz_drv *d, uint64_t t)
{
    imp_state s = imp_conn_state(d->c);
    size_t before = fz_pending(d, NULL);
    uint64_t deadline = imp_conn_next_deadline(d->c);
    uint64_t eff = t > d->now ? t : d->now; /* IMP-TIME-003 */
    const imp_config *cfg = &d->setup.cfg;
    int auth_applies = !d->reached_ready && cfg->auth_timeout_ms && s != IMP_S_CLOSING;
    uint64_t auth_dl = d->setup.t0 + cfg->auth_timeout_ms;
    if (auth_applies)
        FZ_CHECK(deadline <= auth_dl); /* the application is told to come back in time */
    int keepalive = s == IMP_S_READY && cfg->ping_interval_ms && !d->err;
    if (keepalive) { /* the next PING time is at most I after READY or the last PING */
        uint64_t last = d->last_ping > d->ready_time ? d->last_ping : d->ready_time;
        FZ_CHECK(deadline <= last + cfg->ping_interval_ms);
    }
    int r = imp_conn_tick(d->c, t);
    if (d->err) {
        FZ_CHECK_EQ(r, d->err);
        fz_expect_nothing_added(d, before);
        return;
    }
    d->now = eff;
    if (s == IMP_S_LOGOUT_RCVD) /* IMP-SESS-008: no timer runs */
        FZ_CHECK_EQ(deadline, UINT64_MAX);
    if (s == IMP_S_CLOSING || s == IMP_S_LOGOUT_RCVD || eff < deadline) { /* nothing is due */
        FZ_CHECK_EQ(r, 0);
        fz_expect_nothing_added(d, before);
        FZ_CHECK_EQ(imp_conn_state(d->c), s);
        fz_after(d);
        return;
    }
    if (auth_applies) { /* IMP-TIME-001: absolute deadline */
        if (eff < auth_dl)
            FZ_CHECK(r != IMP_ERR_AUTH_TIMEOUT);
        if (eff > auth_dl)
            FZ_CHECK(r == IMP_ERR_AUTH_TIMEOUT || (r == IMP_ERR_NOMEM && d->al.failed));
    } else {
        FZ_CHECK(r != IMP_ERR_AUTH_TIMEOUT);
    }
    if (keepalive) {
        /* A PING time (IMP-TIME-002): if the previous PING is unanswered the missed counter
         * increases and at N the connection fails; otherwise a PING goes out. */
        int want_fail = d->ping_out && d->missed + 1 >= cfg->ping_max_missed;
        if (r != IMP_ERR_NOMEM || !d->al.failed)
            FZ_CHECK_EQ(r, want_fail ? IMP_ERR_PING_TIMEOUT : 0);
        if (d->ping_out)
            d->missed++;
    } else {
        FZ_CHECK(r != IMP_ERR_PING_TIMEOUT);
    }
    if (r < 0) {
        FZ_CHECK(r == IMP_ERR_AUTH_TIMEOUT || r == IMP_ERR_PING_TIMEOUT ||
                 (r == IMP_ERR_NOMEM && d->al.failed));
        fz_expect_error_added(d, before, r, 0);
        fz_sticky(d, r);
        return;
    }
    FZ_CHECK_EQ(r, 0);
    const uint8_t *p;
    size_t n = fz_added(d, before, &p);
    imp_msg out[2];
    size_t k = fz_out_frames(d, p, n, out, 1);
    FZ_CHECK_EQ(k, keepalive ? 1 : 0); /* keepalive: only while READY, when configured */
    if (k) {
        FZ_CHECK_EQ(out[0].type, IMP_PING);
        d->ping_out = 1;
        d->last_ping = eff;
        uint64_t next = imp_conn_next_deadline(d->c);
        FZ_CHECK(next > eff && next <= eff + cfg->ping_interval_ms);
    }
    FZ_CHECK_EQ(imp_conn_state(d->c), s);
    fz_after(d);
}

/* ---- extra actions between chunks ------------------------------------------------------------ */

static inline void fz_extra(fz_drv *d, unsigned x)
{
    imp_msg r;
    imp_state s = imp_conn_state(d->c);
    switch (x) {
    case 1:
        if (d->role == IMP_ROLE_SERVER && d->deferred_auth) {
            fz_server_auth_ok(d, x);
        } else if (d->role == IMP_ROLE_SERVER) {
            imp_msg_init(&r, IMP_DELIVER, 0);
            imp_msg_set_u(&r, IMP_T_TARGET_KIND, IMP_TARGET_USER);
            imp_msg_set_b(&r, IMP_T_TARGET, d->user, d->user_len ? d->user_len : 1);
            imp_msg_set_s(&r, IMP_T_BODY, "unsolicited");
            imp_msg_set_u(&r, IMP_T_MSG_ID, 77);
            imp_msg_set_u(&r, IMP_T_SEQ, d->events);
            imp_msg_set_s(&r, IMP_T_SENDER, "carol");
            imp_msg_set_u(&r, IMP_T_TIMESTAMP, d->now);
            (void)fz_send(d, &r);
        } else {
            fz_client_request(d, fz_byte(d->app, 0));
        }
        break;
    case 2: /* an application PING (allowed only while READY) */
        imp_msg_init(&r, IMP_PING, fz_rid(d));
        (void)fz_send(d, &r);
        break;
    case 3:
        if (d->role == IMP_ROLE_SERVER) {
            imp_msg_init(&r, IMP_PRESENCE_EVENT, 0);
            imp_msg_set_s(&r, IMP_T_USER, "bob");
            imp_msg_set_u(&r, IMP_T_STATUS, IMP_STATUS_AWAY);
            imp_msg_set_u(&r, IMP_T_SESSIONS, 2);
        } else {
            imp_msg_init(&r, IMP_LOGOUT, fz_rid(d));
        }
        (void)fz_send(d, &r);
        break;
    case 4:
        if (d->role == IMP_ROLE_SERVER) {
            imp_msg_init(&r, IMP_MONITOR_EVENT, 0);
            imp_msg_set_u(&r, IMP_T_TIMESTAMP, d->now);
            imp_msg_set_s(&r, IMP_T_EVENT, "login");
            imp_msg_set_s(&r, IMP_T_USER, "bob");
            (void)fz_send(d, &r);
        } else if (s == IMP_S_CONNECTED) {
            fz_client_login(d, fz_byte(d->app, 0));
        }
        break;
    case 5: /* a non-fatal ERROR (server) / any ERROR (client: closes) */
        imp_msg_init(&r, IMP_ERROR, 0);
        imp_msg_set_u(&r, IMP_T_CODE, 507);
        imp_msg_set_u(&r, IMP_T_RETRY_AFTER, 100);
        (void)fz_send(d, &r);
        break;
    case 6:
        fz_close(d, IMP_ERR_SHUTDOWN);
        break;
    case 7: /* frames the library alone sends: never accepted from the application */
        imp_msg_init(&r, d->role == IMP_ROLE_SERVER ? IMP_WELCOME : IMP_HELLO, 1);
        if (d->role == IMP_ROLE_SERVER) {
            imp_msg_set_u(&r, IMP_T_VERSION, 1);
            imp_msg_set_u(&r, IMP_T_MAX_FRAME, 4096);
            imp_msg_set_u(&r, IMP_T_MAX_FRAME_PREAUTH, 1024);
            imp_msg_set_u(&r, IMP_T_PING_INTERVAL, 0);
            imp_msg_set_u(&r, IMP_T_AUTH_TIMEOUT, 0);
        } else {
            imp_msg_set_u(&r, IMP_T_VERSION_MIN, 1);
            imp_msg_set_u(&r, IMP_T_VERSION_MAX, 1);
        }
        FZ_CHECK(fz_send(d, &r) < 0);
        imp_msg_init(&r, IMP_PONG, 1);
        FZ_CHECK(fz_send(d, &r) < 0);
        break;
    case 8: /* a fatal close with a 7xx code */
        fz_close(d, 700);
        break;
    case 9: { /* IMP-SESS-008: toggle the deferred LOGOUT (for the LOGOUTs received later) */
        imp_state before_s = imp_conn_state(d->c);
        size_t before = fz_pending(d, NULL);
        int e = imp_conn_set_defer_logout(d->c, !d->defer);
        if (d->role == IMP_ROLE_SERVER) {
            FZ_CHECK_EQ(e, 0);
            d->defer = !d->defer;
        } else {
            FZ_CHECK_EQ(e, IMP_ERR_INVAL);
        }
        fz_expect_nothing_added(d, before);
        FZ_CHECK_EQ(imp_conn_state(d->c), before_s);
        fz_after(d);
        break;
    }
    case 10: /* the OK with LOGOUT's id, late: CLOSING only from LOGOUT_RCVD */
        if (d->role == IMP_ROLE_SERVER)
            fz_server_logout_ok(d, fz_byte(d->app, 0));
        break;
    case 11: /* a frame owed after LOGOUT, or one refused there */
        if (d->role == IMP_ROLE_SERVER)
            fz_server_owed(d, fz_byte(d->app, 0));
        break;
    default:
        break;
    }
}

/* One round of io decisions after a chunk: time, an extra action, output consumption. */
static inline void fz_io_step(fz_drv *d)
{
    unsigned t = fz_byte(d->io, 0);
    if (t == 255) { /* backwards: must be treated as the latest time (IMP-TIME-003) */
        fz_tick(d, d->now > 5000 ? d->now - 5000 : 0);
    } else if (t == 254) { /* exactly at the deadline */
        uint64_t dl = imp_conn_next_deadline(d->c);
        if (dl != UINT64_MAX && !d->err)
            fz_tick(d, dl);
    } else if (t) {
        uint64_t delta = t < 64    ? t
                         : t < 128 ? (t - 63) * 100u
                         : t < 192 ? (t - 127) * 1000u
                                   : (t - 191) * 60000u;
        fz_tick(d, d->now + delta);
    }
    unsigned x = fz_byte(d->io, 0);
    if (x && !d->err)
        fz_extra(d, x % 12);
    unsigned o = fz_byte(d->io, 0);
    if (o == 0)
        fz_flush(d);
    else
        fz_consume(d, (size_t)o * 8);
}

/* ---- set up, run, tear down ----------------------------------------------------------------- */

/* 0 if the connection was created (d->c), else 1 (a refused configuration or allocation). */
static inline int fz_open(fz_drv *d, imp_role role, const uint8_t cfgbytes[4], int allow_fail,
                          fz_src *app, fz_src *io)
{
    memset(d, 0, sizeof *d);
    d->role = role;
    fz_setup_read(&d->setup, role, cfgbytes, allow_fail);
    d->al.fail_at = d->setup.fail_at;
    d->al.fail_rest = d->setup.fail_rest;
    d->hook.realloc = fz_realloc;
    d->hook.ud = &d->al;
    d->setup.cfg.alloc = &d->hook;
    d->app = app;
    d->io = io;
    d->now = d->setup.t0;
    d->shadow = 1;
    d->phook.realloc = fz_realloc;
    d->phook.ud = &d->pal;
    d->c = imp_conn_new(role, &d->setup.cfg, d->setup.t0);
    if (d->setup.expect_invalid)
        FZ_CHECK(d->c == NULL);
    if (!d->c) {
        FZ_CHECK(d->setup.expect_invalid || d->al.failed);
        FZ_CHECK_EQ(d->al.live, 0); /* IMP-LIB-003: no leak on failure */
        return 1;
    }
    FZ_CHECK_EQ(imp_conn_state(d->c),
                role == IMP_ROLE_SERVER ? IMP_S_AWAIT_HELLO : IMP_S_HELLO_SENT); /* SESS-001 */
    const uint8_t *p;
    size_t n = fz_pending(d, &p);
    imp_msg out[2];
    size_t k = fz_out_frames(d, p, n, out, 1);
    if (role == IMP_ROLE_SERVER) {
        FZ_CHECK_EQ(k, 0);
    } else { /* a client starts by sending HELLO */
        FZ_CHECK_EQ(k, 1);
        FZ_CHECK_EQ(out[0].type, IMP_HELLO);
        FZ_CHECK(out[0].v[IMP_T_VERSION_MIN].u <= 1 && out[0].v[IMP_T_VERSION_MAX].u >= 1);
    }
    if (d->setup.defer_call) { /* IMP-SESS-008: a server option; nothing else changes */
        int e = imp_conn_set_defer_logout(d->c, d->setup.defer);
        if (role == IMP_ROLE_SERVER) {
            FZ_CHECK_EQ(e, 0);
            d->defer = d->setup.defer;
        } else {
            FZ_CHECK_EQ(e, IMP_ERR_INVAL);
        }
        FZ_CHECK_EQ(fz_pending(d, NULL), n);
        FZ_CHECK_EQ(imp_conn_state(d->c),
                    role == IMP_ROLE_SERVER ? IMP_S_AWAIT_HELLO : IMP_S_HELLO_SENT);
    }
    fz_after(d);
    return 0;
}

static inline void fz_close_all(fz_drv *d)
{
    if (d->c) {
        fz_flush(d);
        imp_conn_free(d->c);
        d->c = NULL;
        FZ_CHECK_EQ(d->al.live, 0); /* IMP-LIB-003: everything released */
        FZ_CHECK_EQ(d->pal.live, 0);
    }
    fz_buf_free(&d->in);
    fz_buf_free(&d->out_log);
    fz_buf_free(&d->ev_log);
}

/* The whole run for the server and client targets: chunks of the stream with io decisions in
 * between, then the remaining io decisions (time passing after the input ended). */
static inline void fz_run(fz_drv *d, const uint8_t *p, size_t n)
{
    while (n > 0 && !d->err) {
        unsigned cb = fz_byte(d->io, 0);
        size_t chunk = cb == 0 ? n : cb < 128 ? cb : (size_t)(cb - 127) * 64;
        if (chunk > n)
            chunk = n;
        fz_feed(d, p, chunk);
        p += chunk;
        n -= chunk;
        if (!d->split_mode)
            fz_io_step(d);
    }
    fz_drain(d);
    for (int i = 0; i < 64 && d->io->n > 0 && !d->split_mode; i++)
        fz_io_step(d);
    if (d->logout_later && !d->err) /* IMP-SESS-008: the answers are done, LOGOUT's OK */
        fz_server_logout_ok(d, fz_byte(d->app, 0));
}

/* One input of the server and client targets: 4 config bytes | A | A bytes of application
 * decisions | L | L bytes of io decisions | the byte stream. */
static inline int fz_one_input(imp_role role, const uint8_t *data, size_t size)
{
    if (size < 4)
        return 0;
    fz_src all = {data + 4, size - 4};
    fz_src app, io;
    app.n = fz_take(&all, fz_byte(&all, 0), &app.p);
    io.n = fz_take(&all, fz_byte(&all, 0), &io.p);
    fz_drv d;
    if (fz_open(&d, role, data, 1, &app, &io) == 0) {
        fz_run(&d, all.p, all.n);
        fz_close_all(&d);
    }
    return 0;
}

#endif
