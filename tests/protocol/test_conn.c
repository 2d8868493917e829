/* Tests for protocol/conn.c: the connection object of both roles, sans I/O (IMP-LIB-001).
 *
 * Configuration and handshake (IMP-MSG-002, IMP-MSG-003), a whole client-server session wired
 * together in memory whole and byte by byte (IMP-FRAME-008), receive limits (IMP-FRAME-005,
 * IMP-SESS-006, IMP-SEC-001, IMP-SEC-002), sticky errors (IMP-ERR-002, IMP-ERR-003), input flow
 * control, the output queue and its cap, timers (IMP-TIME-001..003), allocation failure
 * (IMP-LIB-003), the lifetime of event views (IMP-LIB-002) and a server's deferred LOGOUT
 * (IMP-SESS-008, IMP-MSG-005). The per-cell behaviour of the state tables is in test_state.c.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "guard.h"
#include "imp/imp.h"

#define KIB 1024u

/* ---- helpers ------------------------------------------------------------------------------ */

static const uint8_t k_names[] = {3, 'b', 'o', 'b'};

/* A valid message of the types the tests use, with every required field. */
static void build(imp_msg *m, uint8_t type, uint32_t id)
{
    imp_msg_init(m, type, id);
    switch (type) {
    case IMP_HELLO:
        imp_msg_set_u(m, IMP_T_VERSION_MIN, 1);
        imp_msg_set_u(m, IMP_T_VERSION_MAX, 1);
        break;
    case IMP_WELCOME:
        imp_msg_set_u(m, IMP_T_VERSION, 1);
        imp_msg_set_u(m, IMP_T_MAX_FRAME, IMP_DEFAULT_MAX_FRAME);
        imp_msg_set_u(m, IMP_T_MAX_FRAME_PREAUTH, IMP_DEFAULT_MAX_PREAUTH);
        imp_msg_set_u(m, IMP_T_PING_INTERVAL, 0);
        imp_msg_set_u(m, IMP_T_AUTH_TIMEOUT, 10000);
        break;
    case IMP_LOGIN:
    case IMP_REGISTER:
        imp_msg_set_s(m, IMP_T_USER, "alice");
        imp_msg_set_s(m, IMP_T_PASSWORD, "secret");
        break;
    case IMP_AUTH_OK:
        imp_msg_set_s(m, IMP_T_USER, "alice");
        imp_msg_set_u(m, IMP_T_SESSION_ID, 42);
        imp_msg_set_u(m, IMP_T_LAST_SEQ, 0);
        break;
    case IMP_ERROR:
        imp_msg_set_u(m, IMP_T_CODE, 510);
        break;
    case IMP_SEND:
        imp_msg_set_u(m, IMP_T_TARGET_KIND, IMP_TARGET_USER);
        imp_msg_set_s(m, IMP_T_TARGET, "bob");
        imp_msg_set_b(m, IMP_T_BODY, "hi", 2);
        break;
    case IMP_ACK:
        imp_msg_set_u(m, IMP_T_MSG_ID, 5);
        imp_msg_set_u(m, IMP_T_OUTCOME, IMP_OUTCOME_STORED);
        break;
    case IMP_DELIVER:
        imp_msg_set_u(m, IMP_T_TARGET_KIND, IMP_TARGET_USER);
        imp_msg_set_s(m, IMP_T_TARGET, "alice");
        imp_msg_set_b(m, IMP_T_BODY, "hi", 2);
        imp_msg_set_u(m, IMP_T_MSG_ID, 5);
        imp_msg_set_u(m, IMP_T_SEQ, 1);
        imp_msg_set_s(m, IMP_T_SENDER, "bob");
        imp_msg_set_u(m, IMP_T_TIMESTAMP, 1700000000000ull);
        break;
    case IMP_DELIVERED:
        imp_msg_set_u(m, IMP_T_SEQ, 1);
        break;
    case IMP_WHO_LIST:
        imp_msg_set_b(m, IMP_T_NAMES, k_names, sizeof k_names);
        break;
    case IMP_LOGOUT:
    case IMP_OK:
    case IMP_PING:
    case IMP_PONG:
    case IMP_STATS:
        break;
    default:
        fail_msg("build: type %#x not used by these tests", type);
    }
    assert_int_equal(imp_msg_validate(m), 0);
}

/* Encode into a malloc'd buffer. */
static uint8_t *encode_alloc(const imp_msg *m, size_t *len)
{
    imp_ssize n = imp_msg_encoded_size(m);
    assert_true(n > 0);
    uint8_t *buf = malloc((size_t)n);
    assert_non_null(buf);
    assert_int_equal(imp_msg_encode(m, buf, (size_t)n), n);
    *len = (size_t)n;
    return buf;
}

/* Feed a whole message; every byte must be taken. */
static void feed_msg(imp_conn *c, const imp_msg *m)
{
    size_t n;
    uint8_t *buf = encode_alloc(m, &n);
    assert_int_equal(imp_conn_feed(c, buf, n), (imp_ssize)n);
    free(buf);
}

static void expect_event(imp_conn *c, uint8_t type, uint32_t id)
{
    imp_msg ev;
    int r = imp_conn_next_event(c, &ev);
    if (r != 1)
        fail_msg("want event %s, next_event returned %d (%s)", imp_type_name(type), r,
                 r < 0 ? imp_err_name(r) : "none");
    assert_int_equal(ev.type, type);
    assert_int_equal(ev.request_id, id);
}

static void rx(imp_conn *c, uint8_t type, uint32_t id)
{
    imp_msg m;
    build(&m, type, id);
    feed_msg(c, &m);
    expect_event(c, type, id);
}

static void tx(imp_conn *c, uint8_t type, uint32_t id)
{
    imp_msg m;
    build(&m, type, id);
    assert_int_equal(imp_conn_send(c, &m), 0);
}

static void drain(imp_conn *c)
{
    const uint8_t *p;
    imp_conn_consume_output(c, imp_conn_pending_output(c, &p));
    assert_int_equal(imp_conn_pending_output(c, &p), 0);
}

/* The frames in the pending output, decoded; views valid until the output changes. */
#define OUT_MAX 64
typedef struct outlist {
    imp_msg m[OUT_MAX];
    int n;
} outlist;

static void out_decode(const imp_conn *c, outlist *o)
{
    const uint8_t *p;
    size_t len = imp_conn_pending_output(c, &p), off = 0;
    o->n = 0;
    while (off < len) {
        imp_frame f;
        imp_ssize r = imp_frame_parse(p + off, len - off, IMP_FRAME_MAX_HARD, &f, NULL);
        if (r <= 0)
            fail_msg("output at %zu of %zu: frame_parse %td", off, len, r);
        assert_true(o->n < OUT_MAX);
        int d = imp_msg_decode(&f, &o->m[o->n]);
        if (d != 0)
            fail_msg("output frame %d (%s) does not decode: %s", o->n, imp_type_name(f.type),
                     imp_err_name(d));
        o->n++;
        off += (size_t)r;
    }
}

/* Exactly one frame pending, an ERROR with this wire code. */
static void expect_output_error(imp_conn *c, int code)
{
    outlist o;
    out_decode(c, &o);
    assert_int_equal(o.n, 1);
    assert_int_equal(o.m[0].type, IMP_ERROR);
    assert_int_equal(imp_msg_u(&o.m[0], IMP_T_CODE, 0), (uint64_t)code);
}

/* A server in `st` (AWAIT_HELLO, AWAIT_AUTH, AUTHENTICATING or READY), output drained. */
static imp_conn *server_at(const imp_config *cfg, imp_state st, uint64_t now)
{
    imp_config def;
    if (!cfg) {
        imp_config_default(&def, IMP_ROLE_SERVER);
        cfg = &def;
    }
    imp_conn *s = imp_conn_new(IMP_ROLE_SERVER, cfg, now);
    assert_non_null(s);
    if (st != IMP_S_AWAIT_HELLO) {
        rx(s, IMP_HELLO, 1);
        drain(s); /* the WELCOME (a small max_output must not refuse the AUTH_OK) */
        if (st != IMP_S_AWAIT_AUTH) {
            rx(s, IMP_LOGIN, 2);
            if (st != IMP_S_AUTHENTICATING)
                tx(s, IMP_AUTH_OK, 2);
        }
    }
    assert_int_equal(imp_conn_state(s), st);
    drain(s);
    return s;
}

/* The request id of the client's HELLO (the first pending frame). */
static uint32_t hello_id(const imp_conn *c)
{
    outlist o;
    out_decode(c, &o);
    assert_true(o.n >= 1);
    assert_int_equal(o.m[0].type, IMP_HELLO);
    return o.m[0].request_id;
}

/* A client in `st` (HELLO_SENT, CONNECTED, AUTH_SENT or READY) that received `welcome` (the
 * default WELCOME when NULL), output drained. */
static imp_conn *client_at(const imp_config *cfg, imp_state st, uint64_t now,
                           const imp_msg *welcome)
{
    imp_config def;
    imp_msg w;
    if (!cfg) {
        imp_config_default(&def, IMP_ROLE_CLIENT);
        cfg = &def;
    }
    imp_conn *c = imp_conn_new(IMP_ROLE_CLIENT, cfg, now);
    assert_non_null(c);
    uint32_t hid = hello_id(c);
    drain(c);
    if (st != IMP_S_HELLO_SENT) {
        if (welcome)
            w = *welcome;
        else
            build(&w, IMP_WELCOME, hid);
        w.request_id = hid;
        feed_msg(c, &w);
        expect_event(c, IMP_WELCOME, hid);
        if (st != IMP_S_CONNECTED) {
            tx(c, IMP_LOGIN, 2);
            if (st != IMP_S_AUTH_SENT)
                rx(c, IMP_AUTH_OK, 2);
        }
    }
    assert_int_equal(imp_conn_state(c), st);
    drain(c);
    return c;
}

/* A frame of `type` whose payload is padded with an unknown non-critical field (skipped by the
 * receiver, IMP-FIELD-004) so that the whole frame is exactly `size` bytes. base must be a valid
 * message without fields above tag 0x7000. */
static uint8_t *padded_frame(const imp_msg *base, size_t size)
{
    size_t n;
    uint8_t *enc = encode_alloc(base, &n);
    assert_true(size >= n + 6);
    uint8_t *buf = malloc(size);
    assert_non_null(buf);
    memcpy(buf, enc, n);
    free(enc);
    size_t pad = size - n - 6;
    uint8_t *f = buf + n;
    f[0] = 0x70; /* tag 0x7000: unknown, critical bit clear */
    f[1] = 0x00;
    f[2] = (uint8_t)(pad >> 24);
    f[3] = (uint8_t)(pad >> 16);
    f[4] = (uint8_t)(pad >> 8);
    f[5] = (uint8_t)pad;
    memset(f + 6, 'x', pad);
    imp_frame_header_write(buf, base->type, (uint32_t)(size - IMP_HEADER_SIZE), base->request_id);
    return buf;
}

/* ---- configuration and handshake ---------------------------------------------------------- */

/* conn.h: server max_frame 1 MiB, preauth 4096, ping 30000 ms, 2 missed, auth timeout 10000 ms
 * (IMP-TIME-001, IMP-TIME-002, IMP-SEC-001); client max_frame 16 MiB, no pings, 10000 ms. */
static void test_config_default(void **state)
{
    (void)state;
    imp_config cfg;
    memset(&cfg, 0xa5, sizeof cfg);
    imp_config_default(&cfg, IMP_ROLE_SERVER);
    assert_null(cfg.alloc);
    assert_int_equal(cfg.max_frame, 1048576);
    assert_int_equal(cfg.max_frame_preauth, 4096);
    assert_int_equal(cfg.ping_interval_ms, 30000);
    assert_int_equal(cfg.ping_max_missed, 2);
    assert_int_equal(cfg.auth_timeout_ms, 10000);
    assert_null(cfg.agent);
    assert_int_equal(cfg.caps.len, 0);

    memset(&cfg, 0xa5, sizeof cfg);
    imp_config_default(&cfg, IMP_ROLE_CLIENT);
    assert_null(cfg.alloc);
    assert_int_equal(cfg.max_frame, 16777216);
    assert_int_equal(cfg.ping_interval_ms, 0);
    assert_int_equal(cfg.auth_timeout_ms, 10000);
    assert_null(cfg.agent);
    assert_int_equal(cfg.caps.len, 0);
}

/* imp_conn_new: NULL for an invalid configuration (limits of table 3.1 / IMP-MSG-003). */
static void test_conn_new_rejects_invalid_config(void **state)
{
    (void)state;
    imp_config cfg;
    imp_conn *c;

    imp_config_default(&cfg, IMP_ROLE_SERVER);
    cfg.max_frame_preauth = cfg.max_frame + 1; /* preauth > max_frame */
    assert_null(imp_conn_new(IMP_ROLE_SERVER, &cfg, 0));

    imp_config_default(&cfg, IMP_ROLE_SERVER);
    cfg.max_frame = IMP_FRAME_MAX_HARD + 1; /* over 16 MiB */
    assert_null(imp_conn_new(IMP_ROLE_SERVER, &cfg, 0));

    imp_config_default(&cfg, IMP_ROLE_SERVER);
    cfg.max_frame = IMP_FRAME_MIN_LIMIT - 1; /* MAX_FRAME below 4096 */
    cfg.max_frame_preauth = 1024;
    assert_null(imp_conn_new(IMP_ROLE_SERVER, &cfg, 0));

    imp_config_default(&cfg, IMP_ROLE_SERVER);
    cfg.max_frame_preauth = 1023; /* MAX_FRAME_PREAUTH below 1024 */
    assert_null(imp_conn_new(IMP_ROLE_SERVER, &cfg, 0));

    imp_config_default(&cfg, IMP_ROLE_SERVER);
    cfg.ping_max_missed = 0; /* N >= 1 */
    assert_null(imp_conn_new(IMP_ROLE_SERVER, &cfg, 0));

    imp_config_default(&cfg, IMP_ROLE_CLIENT);
    cfg.max_frame = IMP_FRAME_MAX_HARD + 1;
    assert_null(imp_conn_new(IMP_ROLE_CLIENT, &cfg, 0));

    imp_config_default(&cfg, IMP_ROLE_SERVER);
    assert_null(imp_conn_new((imp_role)3, &cfg, 0));

    /* the edges are valid */
    imp_config_default(&cfg, IMP_ROLE_SERVER);
    cfg.max_frame = IMP_FRAME_MAX_HARD;
    cfg.max_frame_preauth = IMP_FRAME_MAX_HARD;
    c = imp_conn_new(IMP_ROLE_SERVER, &cfg, 0);
    assert_non_null(c);
    imp_conn_free(c);
    cfg.max_frame = IMP_FRAME_MIN_LIMIT;
    cfg.max_frame_preauth = 1024;
    c = imp_conn_new(IMP_ROLE_SERVER, &cfg, 0);
    assert_non_null(c);
    imp_conn_free(c);
    imp_conn_free(NULL); /* like free(NULL) */
}

/* An AGENT that the HELLO or WELCOME could not carry (text 1-64 bytes, IMP-TEXT-001) and CAPS
 * that are no valid names list make the configuration invalid. */
static void test_conn_new_rejects_bad_agent_and_caps(void **state)
{
    (void)state;
    static const uint8_t bad_caps[] = {3, 'a', '!', 'b'};
    char long_agent[66];
    memset(long_agent, 'a', 65);
    long_agent[65] = '\0';
    for (int role = IMP_ROLE_CLIENT; role <= IMP_ROLE_SERVER; role++) {
        imp_config cfg;
        imp_config_default(&cfg, (imp_role)role);
        cfg.agent = long_agent;
        assert_null(imp_conn_new((imp_role)role, &cfg, 0));
        cfg.agent = "";
        assert_null(imp_conn_new((imp_role)role, &cfg, 0));
        cfg.agent = "bad\xff";
        assert_null(imp_conn_new((imp_role)role, &cfg, 0));
        cfg.agent = NULL;
        cfg.caps.p = bad_caps;
        cfg.caps.len = sizeof bad_caps;
        assert_null(imp_conn_new((imp_role)role, &cfg, 0));
    }
}

/* IMP-SESS-001, IMP-MSG-002: a client queues HELLO at creation, versions 1-1, AGENT and CAPS
 * as configured, a non-zero request id (IMP-FRAME-007). */
static void test_client_hello(void **state)
{
    (void)state;
    uint8_t caps[64];
    imp_builder b;
    imp_builder_init(&b, caps, sizeof caps);
    assert_int_equal(imp_names_add(&b, "history", 7), 0);
    assert_int_equal(imp_names_add(&b, "presence", 8), 0);

    imp_config cfg;
    imp_config_default(&cfg, IMP_ROLE_CLIENT);
    cfg.agent = "imsend/0.1";
    cfg.caps.p = caps;
    cfg.caps.len = b.len;
    imp_conn *c = imp_conn_new(IMP_ROLE_CLIENT, &cfg, 0);
    assert_non_null(c);
    assert_int_equal(imp_conn_state(c), IMP_S_HELLO_SENT);
    outlist o;
    out_decode(c, &o);
    assert_int_equal(o.n, 1);
    const imp_msg *h = &o.m[0];
    assert_int_equal(h->type, IMP_HELLO);
    assert_int_not_equal(h->request_id, 0);
    assert_int_equal(imp_msg_u(h, IMP_T_VERSION_MIN, 0), 1);
    assert_int_equal(imp_msg_u(h, IMP_T_VERSION_MAX, 0), 1);
    imp_bytes agent = imp_msg_b(h, IMP_T_AGENT);
    assert_int_equal(agent.len, strlen("imsend/0.1"));
    assert_memory_equal(agent.p, "imsend/0.1", agent.len);
    imp_bytes cb = imp_msg_b(h, IMP_T_CAPS);
    assert_int_equal(cb.len, b.len);
    assert_memory_equal(cb.p, caps, b.len);
    assert_int_equal(imp_conn_peer_max_frame(c), 0); /* no WELCOME yet */
    assert_int_equal(imp_conn_peer_max_preauth(c), 0);
    imp_conn_free(c);

    /* without agent and caps: neither field */
    imp_config_default(&cfg, IMP_ROLE_CLIENT);
    c = imp_conn_new(IMP_ROLE_CLIENT, &cfg, 0);
    assert_non_null(c);
    out_decode(c, &o);
    assert_int_equal(o.n, 1);
    assert_int_equal(o.m[0].type, IMP_HELLO);
    assert_false(imp_msg_has(&o.m[0], IMP_T_AGENT));
    assert_false(imp_msg_has(&o.m[0], IMP_T_CAPS));
    imp_conn_free(c);
}

/* IMP-MSG-002, IMP-MSG-003: the server answers HELLO with WELCOME carrying exactly its
 * configured limits, timers, agent and caps, with HELLO's request id; the client adopts the
 * limits. */
static void test_welcome_carries_limits(void **state)
{
    (void)state;
    uint8_t caps[32];
    imp_builder b;
    imp_builder_init(&b, caps, sizeof caps);
    assert_int_equal(imp_names_add(&b, "history", 7), 0);

    imp_config cfg;
    imp_config_default(&cfg, IMP_ROLE_SERVER);
    cfg.max_frame = 65536;
    cfg.max_frame_preauth = 2048;
    cfg.ping_interval_ms = 15000;
    cfg.auth_timeout_ms = 5000;
    cfg.agent = "imd/0.1";
    cfg.caps.p = caps;
    cfg.caps.len = b.len;
    imp_conn *s = imp_conn_new(IMP_ROLE_SERVER, &cfg, 0);
    assert_non_null(s);

    imp_config ccfg;
    imp_config_default(&ccfg, IMP_ROLE_CLIENT);
    imp_conn *c = imp_conn_new(IMP_ROLE_CLIENT, &ccfg, 0);
    assert_non_null(c);
    uint32_t hid = hello_id(c);

    const uint8_t *p;
    size_t n = imp_conn_pending_output(c, &p);
    assert_int_equal(imp_conn_feed(s, p, n), (imp_ssize)n);
    imp_conn_consume_output(c, n);
    expect_event(s, IMP_HELLO, hid);
    assert_int_equal(imp_conn_state(s), IMP_S_AWAIT_AUTH);

    outlist o;
    out_decode(s, &o);
    assert_int_equal(o.n, 1);
    const imp_msg *w = &o.m[0];
    assert_int_equal(w->type, IMP_WELCOME);
    assert_int_equal(w->request_id, hid);
    assert_int_equal(imp_msg_u(w, IMP_T_VERSION, 0), 1);
    assert_int_equal(imp_msg_u(w, IMP_T_MAX_FRAME, 0), 65536);
    assert_int_equal(imp_msg_u(w, IMP_T_MAX_FRAME_PREAUTH, 0), 2048);
    assert_int_equal(imp_msg_u(w, IMP_T_PING_INTERVAL, 0), 15000);
    assert_int_equal(imp_msg_u(w, IMP_T_AUTH_TIMEOUT, 0), 5000);
    imp_bytes agent = imp_msg_b(w, IMP_T_AGENT);
    assert_int_equal(agent.len, 7);
    assert_memory_equal(agent.p, "imd/0.1", 7);
    imp_bytes cb = imp_msg_b(w, IMP_T_CAPS);
    assert_int_equal(cb.len, b.len);
    assert_memory_equal(cb.p, caps, b.len);

    n = imp_conn_pending_output(s, &p);
    assert_int_equal(imp_conn_feed(c, p, n), (imp_ssize)n);
    imp_conn_consume_output(s, n);
    expect_event(c, IMP_WELCOME, hid);
    assert_int_equal(imp_conn_state(c), IMP_S_CONNECTED);
    assert_int_equal(imp_conn_peer_max_frame(c), 65536);
    assert_int_equal(imp_conn_peer_max_preauth(c), 2048);
    /* the client's own receive limit is its own configuration (conn.h) */
    assert_int_equal(imp_conn_recv_limit(c), ccfg.max_frame);
    imp_conn_free(s);
    imp_conn_free(c);
}

/* IMP-MSG-002: a WELCOME whose VERSION is outside the offered range fails with VERSION. */
static void test_client_rejects_welcome_version(void **state)
{
    (void)state;
    imp_config cfg;
    imp_config_default(&cfg, IMP_ROLE_CLIENT);
    imp_conn *c = imp_conn_new(IMP_ROLE_CLIENT, &cfg, 0);
    assert_non_null(c);
    uint32_t hid = hello_id(c);
    drain(c);
    imp_msg w;
    build(&w, IMP_WELCOME, hid);
    imp_msg_set_u(&w, IMP_T_VERSION, 2);
    feed_msg(c, &w);
    imp_msg ev;
    assert_int_equal(imp_conn_next_event(c, &ev), IMP_ERR_VERSION);
    assert_int_equal(imp_conn_state(c), IMP_S_CLOSING);
    expect_output_error(c, 300);
    imp_conn_free(c);
}

/* IMP-MSG-002, IMP-FRAME-007: a server that shares no version with the client answers ERROR
 * VERSION (300) — a response to HELLO, so with HELLO's request id — and closes; no WELCOME. */
static void test_version_mismatch_answers_hello(void **state)
{
    (void)state;
    imp_conn *s = server_at(NULL, IMP_S_AWAIT_HELLO, 0);
    imp_msg m, ev;
    build(&m, IMP_HELLO, 0x01020304u);
    imp_msg_set_u(&m, IMP_T_VERSION_MIN, 2);
    imp_msg_set_u(&m, IMP_T_VERSION_MAX, 3);
    feed_msg(s, &m);
    assert_int_equal(imp_conn_next_event(s, &ev), IMP_ERR_VERSION);
    assert_int_equal(imp_conn_state(s), IMP_S_CLOSING);
    outlist o;
    out_decode(s, &o);
    assert_int_equal(o.n, 1);
    assert_int_equal(o.m[0].type, IMP_ERROR);
    assert_int_equal(imp_msg_u(&o.m[0], IMP_T_CODE, 0), 300);
    assert_int_equal(o.m[0].request_id, 0x01020304u);
    imp_conn_free(s);

    /* a range that includes 1 is answered with WELCOME VERSION 1 */
    s = server_at(NULL, IMP_S_AWAIT_HELLO, 0);
    build(&m, IMP_HELLO, 7);
    imp_msg_set_u(&m, IMP_T_VERSION_MAX, 9);
    feed_msg(s, &m);
    expect_event(s, IMP_HELLO, 7);
    out_decode(s, &o);
    assert_int_equal(o.n, 1);
    assert_int_equal(o.m[0].type, IMP_WELCOME);
    assert_int_equal(imp_msg_u(&o.m[0], IMP_T_VERSION, 0), 1);
    imp_conn_free(s);
}

/* Nothing fed yet, or only part of a frame: next_event returns 0; the output of a new server is
 * empty. */
static void test_no_event_without_input(void **state)
{
    (void)state;
    imp_msg ev;
    const uint8_t *p;
    imp_conn *s = server_at(NULL, IMP_S_AWAIT_HELLO, 0);
    assert_int_equal(imp_conn_next_event(s, &ev), 0);
    assert_int_equal(imp_conn_pending_output(s, &p), 0);
    uint8_t hdr[IMP_HEADER_SIZE];
    imp_frame_header_write(hdr, IMP_HELLO, 12, 1);
    assert_int_equal(imp_conn_feed(s, hdr, sizeof hdr), (imp_ssize)sizeof hdr);
    assert_int_equal(imp_conn_next_event(s, &ev), 0);
    assert_int_equal(imp_conn_next_event(s, &ev), 0);
    assert_int_equal(imp_conn_state(s), IMP_S_AWAIT_HELLO);
    assert_int_equal(imp_conn_error(s), 0);
    assert_int_equal(imp_conn_feed(s, hdr, 0), 0);
    imp_conn_free(s);
}

/* imp_conn_send validates the message (as imp_msg_validate) and refuses unknown types with
 * INVAL; a refused message queues nothing and does not fail the connection. */
static void test_send_validates(void **state)
{
    (void)state;
    imp_conn *s = server_at(NULL, IMP_S_READY, 0);
    imp_msg m;
    const uint8_t *p;
    imp_msg_init(&m, 0x99, 1); /* not a frame type */
    assert_int_equal(imp_conn_send(s, &m), IMP_ERR_INVAL);
    build(&m, IMP_DELIVER, 0);
    imp_msg_clear(&m, IMP_T_SENDER); /* required */
    assert_int_equal(imp_conn_send(s, &m), IMP_ERR_MISSING_FIELD);
    build(&m, IMP_DELIVER, 0);
    imp_msg_set_s(&m, IMP_T_SENDER, "no spaces");
    assert_int_equal(imp_conn_send(s, &m), IMP_ERR_BAD_NAME);
    build(&m, IMP_OK, 1);
    imp_msg_set_u(&m, IMP_T_USER, 1); /* a field OK does not have */
    assert_int_not_equal(imp_conn_send(s, &m), 0);
    assert_int_equal(imp_conn_pending_output(s, &p), 0);
    assert_int_equal(imp_conn_state(s), IMP_S_READY);
    assert_int_equal(imp_conn_error(s), 0);
    build(&m, IMP_OK, 1);
    assert_int_equal(imp_conn_send(s, &m), 0);
    imp_conn_free(s);
}

/* IMP-MSG-003: before AUTH_OK a client refuses to queue a frame over the announced
 * MAX_FRAME_PREAUTH, after it one over MAX_FRAME (TOO_LARGE, nothing queued, not fatal); a
 * frame of exactly the limit is queued. */
static void test_client_send_limits(void **state)
{
    (void)state;
    static uint8_t pw[1024], body[8192];
    memset(pw, 'p', sizeof pw);
    memset(body, 'b', sizeof body);
    imp_msg w, m;
    const uint8_t *p;
    build(&w, IMP_WELCOME, 0);
    imp_msg_set_u(&w, IMP_T_MAX_FRAME, 8192);
    imp_msg_set_u(&w, IMP_T_MAX_FRAME_PREAUTH, 1024);
    imp_conn *c = client_at(NULL, IMP_S_CONNECTED, 0, &w);
    assert_int_equal(imp_conn_peer_max_preauth(c), 1024);
    assert_int_equal(imp_conn_peer_max_frame(c), 8192);

    /* LOGIN: 12 + (6 + 5) USER + (6 + len) PASSWORD = 29 + len bytes */
    imp_msg_init(&m, IMP_LOGIN, 2);
    imp_msg_set_s(&m, IMP_T_USER, "alice");
    imp_msg_set_b(&m, IMP_T_PASSWORD, pw, 1024 - 29 + 1);
    assert_int_equal(imp_msg_encoded_size(&m), 1025);
    assert_int_equal(imp_conn_send(c, &m), IMP_ERR_TOO_LARGE);
    assert_int_equal(imp_conn_pending_output(c, &p), 0);
    assert_int_equal(imp_conn_state(c), IMP_S_CONNECTED);
    assert_int_equal(imp_conn_error(c), 0);
    imp_msg_set_b(&m, IMP_T_PASSWORD, pw, 1024 - 29);
    assert_int_equal(imp_msg_encoded_size(&m), 1024);
    assert_int_equal(imp_conn_send(c, &m), 0);
    assert_int_equal(imp_conn_pending_output(c, &p), 1024);
    assert_int_equal(imp_conn_state(c), IMP_S_AUTH_SENT);
    drain(c);
    rx(c, IMP_AUTH_OK, 2);
    assert_int_equal(imp_conn_state(c), IMP_S_READY);

    /* SEND: 12 + 7 TARGET_KIND + 9 TARGET + (6 + len) BODY = 34 + len bytes */
    build(&m, IMP_SEND, 3);
    imp_msg_set_b(&m, IMP_T_BODY, body, 8192 - 34 + 1);
    assert_int_equal(imp_msg_encoded_size(&m), 8193);
    assert_int_equal(imp_conn_send(c, &m), IMP_ERR_TOO_LARGE);
    assert_int_equal(imp_conn_pending_output(c, &p), 0);
    assert_int_equal(imp_conn_state(c), IMP_S_READY);
    assert_int_equal(imp_conn_error(c), 0);
    imp_msg_set_b(&m, IMP_T_BODY, body, 8192 - 34);
    assert_int_equal(imp_conn_send(c, &m), 0);
    assert_int_equal(imp_conn_pending_output(c, &p), 8192);
    /* the pre-auth limit no longer applies: a 2000-byte frame is fine */
    imp_msg_set_b(&m, IMP_T_BODY, body, 2000);
    assert_int_equal(imp_conn_send(c, &m), 0);
    imp_conn_free(c);
}

/* ---- a whole session in memory ------------------------------------------------------------ */

#define LOG_CAP 4096

typedef struct sess {
    imp_conn *c, *s;
    size_t chunk; /* bytes per feed; 0 = everything pending at once */
    guard_buf gb; /* every chunk is fed from a buffer that ends at a guard page */
    char log[LOG_CAP];
    size_t loglen;
    int nomem;         /* a call returned IMP_ERR_NOMEM */
    imp_conn *failed;  /* on this connection (NULL: in imp_conn_new) */
    uint32_t hello_id; /* the client's HELLO request id */
    uint32_t lib_ping; /* the id of the server's keepalive PING */
    size_t big;        /* body size of the large SEND and DELIVER */
} sess;

static uint32_t fnv1a(const uint8_t *p, size_t n)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 16777619u;
    return h;
}

static void logf_(sess *x, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
static void logf_(sess *x, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(x->log + x->loglen, LOG_CAP - x->loglen, fmt, ap);
    va_end(ap);
    assert_true(n >= 0 && (size_t)n < LOG_CAP - x->loglen);
    x->loglen += (size_t)n;
}

/* Handle a result: 0 if fine, 1 if NOMEM was hit (recorded), fails the test otherwise. */
static int result_ok(sess *x, imp_conn *c, long r, const char *what)
{
    if (r >= 0)
        return 0;
    if (r == IMP_ERR_NOMEM) {
        x->nomem = 1;
        x->failed = c;
        return 1;
    }
    fail_msg("%s: unexpected %ld (%s)", what, r, imp_err_name((int)r));
    return 1;
}

/* Take every event of c and log it. Returns 1 on NOMEM. */
static int take_events(sess *x, imp_conn *c)
{
    imp_msg ev;
    int r;
    char side = c == x->c ? 'C' : 'S';
    while ((r = imp_conn_next_event(c, &ev)) == 1) {
        logf_(x, "%c:%s#%u", side, imp_type_name(ev.type), ev.request_id);
        if (imp_msg_has(&ev, IMP_T_BODY)) {
            imp_bytes body = imp_msg_b(&ev, IMP_T_BODY);
            logf_(x, "[%zu:%08x]", body.len, fnv1a(body.p, body.len));
        }
        logf_(x, " ");
    }
    return result_ok(x, c, r, "next_event");
}

/* Move all pending output of `from` into `to`, chunk by chunk, taking the events of `to`
 * after every chunk. Returns 1 on NOMEM. */
static int pump(sess *x, imp_conn *from, imp_conn *to)
{
    const uint8_t *p;
    size_t n;
    while ((n = imp_conn_pending_output(from, &p)) > 0) {
        size_t k = x->chunk && x->chunk < n ? x->chunk : n;
        const uint8_t *q = guard_buf_place(&x->gb, p, k);
        imp_ssize r = imp_conn_feed(to, q, k);
        if (result_ok(x, to, (long)r, "feed"))
            return 1;
        if (r == 0 && imp_conn_state(to) != IMP_S_CLOSING)
            fail_msg("feed took nothing from %zu bytes", k);
        imp_conn_consume_output(from, (size_t)r);
        if (take_events(x, to))
            return 1;
    }
    return 0;
}

static int send_msg(sess *x, imp_conn *c, const imp_msg *m)
{
    return result_ok(x, c, imp_conn_send(c, m), "send");
}

/* The scripted session: HELLO, WELCOME, LOGIN, AUTH_OK, SEND (large), ACK, DELIVER (large),
 * DELIVERED, PING/PONG both ways, a keepalive PING, LOGOUT, OK. Returns 0 when it ran to the
 * end, 1 when an allocation failed (x->nomem). */
static int run_session(sess *x, const imp_allocator *alloc)
{
    imp_config ccfg, scfg;
    imp_msg m;
    uint8_t *body = malloc(x->big ? x->big : 1);
    assert_non_null(body);
    for (size_t i = 0; i < x->big; i++)
        body[i] = (uint8_t)(i * 7 + 3);
    int ret = 1;

    imp_config_default(&ccfg, IMP_ROLE_CLIENT);
    imp_config_default(&scfg, IMP_ROLE_SERVER);
    ccfg.alloc = scfg.alloc = alloc;
    ccfg.agent = "test-client";
    scfg.agent = "test-server";
    x->c = imp_conn_new(IMP_ROLE_CLIENT, &ccfg, 0);
    if (!x->c) {
        assert_non_null(alloc);
        x->nomem = 1;
        goto out;
    }
    x->s = imp_conn_new(IMP_ROLE_SERVER, &scfg, 0);
    if (!x->s) {
        assert_non_null(alloc);
        x->nomem = 1;
        goto out;
    }
    x->hello_id = hello_id(x->c);
    if (pump(x, x->c, x->s) || pump(x, x->s, x->c))
        goto out;
    assert_int_equal(imp_conn_state(x->s), IMP_S_AWAIT_AUTH);
    assert_int_equal(imp_conn_state(x->c), IMP_S_CONNECTED);

    build(&m, IMP_LOGIN, 2);
    if (send_msg(x, x->c, &m) || pump(x, x->c, x->s))
        goto out;
    assert_int_equal(imp_conn_state(x->s), IMP_S_AUTHENTICATING);
    build(&m, IMP_AUTH_OK, 2);
    if (send_msg(x, x->s, &m) || pump(x, x->s, x->c))
        goto out;
    assert_int_equal(imp_conn_state(x->s), IMP_S_READY);
    assert_int_equal(imp_conn_state(x->c), IMP_S_READY);

    build(&m, IMP_SEND, 3);
    imp_msg_set_b(&m, IMP_T_BODY, body, x->big);
    if (send_msg(x, x->c, &m) || pump(x, x->c, x->s))
        goto out;
    build(&m, IMP_ACK, 3);
    if (send_msg(x, x->s, &m) || pump(x, x->s, x->c))
        goto out;
    build(&m, IMP_DELIVER, 0);
    imp_msg_set_b(&m, IMP_T_BODY, body, x->big > 1000 ? x->big - 1000 : x->big);
    if (send_msg(x, x->s, &m) || pump(x, x->s, x->c))
        goto out;
    build(&m, IMP_DELIVERED, 4);
    if (send_msg(x, x->c, &m) || pump(x, x->c, x->s))
        goto out;

    build(&m, IMP_PING, 5);
    if (send_msg(x, x->c, &m) || pump(x, x->c, x->s) || pump(x, x->s, x->c))
        goto out;
    build(&m, IMP_PING, 6);
    if (send_msg(x, x->s, &m) || pump(x, x->s, x->c) || pump(x, x->c, x->s))
        goto out;

    /* the server's keepalive (30000 ms by default) */
    if (result_ok(x, x->c, imp_conn_tick(x->c, 30000), "tick") ||
        result_ok(x, x->s, imp_conn_tick(x->s, 30000), "tick"))
        goto out;
    {
        outlist o;
        out_decode(x->s, &o);
        assert_int_equal(o.n, 1);
        assert_int_equal(o.m[0].type, IMP_PING);
        x->lib_ping = o.m[0].request_id;
    }
    if (pump(x, x->s, x->c) || pump(x, x->c, x->s))
        goto out;

    build(&m, IMP_LOGOUT, 7);
    if (send_msg(x, x->c, &m))
        goto out;
    assert_int_equal(imp_conn_state(x->c), IMP_S_LOGOUT_SENT);
    if (pump(x, x->c, x->s) || pump(x, x->s, x->c))
        goto out;
    assert_int_equal(imp_conn_state(x->s), IMP_S_CLOSING);
    assert_int_equal(imp_conn_state(x->c), IMP_S_CLOSING);
    assert_true(imp_conn_want_close(x->s));
    assert_true(imp_conn_want_close(x->c));
    assert_int_equal(imp_conn_error(x->s), 0);
    assert_int_equal(imp_conn_error(x->c), 0);
    ret = 0;
out:
    free(body);
    return ret;
}

static void sess_init(sess *x, size_t chunk, size_t big)
{
    memset(x, 0, sizeof *x);
    x->chunk = chunk;
    x->big = big;
    guard_buf_init(&x->gb);
}

static void sess_free(sess *x)
{
    imp_conn_free(x->c);
    imp_conn_free(x->s);
    guard_buf_free(&x->gb);
}

static void expected_log(const sess *x, char *buf, size_t cap)
{
    uint8_t *body = malloc(x->big ? x->big : 1);
    assert_non_null(body);
    for (size_t i = 0; i < x->big; i++)
        body[i] = (uint8_t)(i * 7 + 3);
    size_t dlen = x->big > 1000 ? x->big - 1000 : x->big;
    snprintf(buf, cap,
             "S:HELLO#%u C:WELCOME#%u S:LOGIN#2 C:AUTH_OK#2 S:SEND#3[%zu:%08x] C:ACK#3 "
             "C:DELIVER#0[%zu:%08x] S:DELIVERED#4 S:PING#5 C:PONG#5 C:PING#6 S:PONG#6 "
             "C:PING#%u S:PONG#%u S:LOGOUT#7 C:OK#7 ",
             x->hello_id, x->hello_id, x->big, fnv1a(body, x->big), dlen, fnv1a(body, dlen),
             x->lib_ping, x->lib_ping);
    free(body);
}

/* A full session between a client and a server connection wired together in memory; every
 * response carries its request's id (IMP-FRAME-007), the library answers HELLO, PING and LOGOUT
 * by itself (IMP-MSG-005), both end in CLOSING. */
static void test_session_in_memory(void **state)
{
    (void)state;
    sess x;
    char want[LOG_CAP];
    sess_init(&x, 0, 3000);
    assert_int_equal(run_session(&x, NULL), 0);
    expected_log(&x, want, sizeof want);
    assert_string_equal(x.log, want);
    assert_int_not_equal(x.lib_ping, 0);
    sess_free(&x);
}

/* IMP-FRAME-008: the same events whatever the split: every byte fed separately, and other
 * chunk sizes, with bodies large enough to span many chunks. */
static void test_session_split_invariance(void **state)
{
    (void)state;
    static const size_t chunks[] = {1, 2, 3, 5, 11, 12, 13, 4096, 0};
    sess ref;
    sess_init(&ref, 0, 20000);
    assert_int_equal(run_session(&ref, NULL), 0);
    for (size_t i = 0; i < sizeof chunks / sizeof chunks[0]; i++) {
        sess x;
        sess_init(&x, chunks[i], 20000);
        assert_int_equal(run_session(&x, NULL), 0);
        if (strcmp(x.log, ref.log) != 0)
            fail_msg("chunk %zu:\n got  %s\n want %s", chunks[i], x.log, ref.log);
        sess_free(&x);
    }
    sess_free(&ref);
}

/* ---- receive limits ----------------------------------------------------------------------- */

/* IMP-SESS-006, IMP-SEC-001, IMP-FRAME-005: a server's limit is MAX_FRAME_PREAUTH (4096 by
 * default) before AUTH_OK — also for LOGIN — and MAX_FRAME after; a frame of exactly the limit is
 * accepted; one byte more fails with FRAME_TOO_LARGE as soon as the 12 header bytes are in,
 * before any payload byte. */
static void test_server_recv_limits(void **state)
{
    (void)state;
    imp_msg m, ev;
    imp_config cfg;
    imp_config_default(&cfg, IMP_ROLE_SERVER);
    cfg.max_frame = 65536;

    /* AWAIT_HELLO: a HELLO of exactly 4096 bytes */
    imp_conn *s = server_at(&cfg, IMP_S_AWAIT_HELLO, 0);
    assert_int_equal(imp_conn_recv_limit(s), 4096);
    build(&m, IMP_HELLO, 1);
    uint8_t *f = padded_frame(&m, 4096);
    assert_int_equal(imp_conn_feed(s, f, 4096), 4096);
    free(f);
    expect_event(s, IMP_HELLO, 1);
    assert_int_equal(imp_conn_recv_limit(s), 4096); /* AWAIT_AUTH */
    /* LOGIN of exactly 4096 bytes is bound by the pre-auth limit and passes */
    build(&m, IMP_LOGIN, 2);
    f = padded_frame(&m, 4096);
    assert_int_equal(imp_conn_feed(s, f, 4096), 4096);
    free(f);
    expect_event(s, IMP_LOGIN, 2);
    assert_int_equal(imp_conn_recv_limit(s), 4096); /* AUTHENTICATING: not yet AUTH_OK */
    tx(s, IMP_AUTH_OK, 2);
    assert_int_equal(imp_conn_recv_limit(s), 65536); /* READY */
    drain(s);
    build(&m, IMP_SEND, 3);
    f = padded_frame(&m, 65536);
    assert_int_equal(imp_conn_feed(s, f, 65536), 65536);
    free(f);
    expect_event(s, IMP_SEND, 3);
    /* 65537: the header alone fails */
    f = padded_frame(&m, 65537);
    assert_int_equal(imp_conn_feed(s, f, IMP_HEADER_SIZE), IMP_HEADER_SIZE);
    assert_int_equal(imp_conn_next_event(s, &ev), IMP_ERR_FRAME_TOO_LARGE);
    free(f);
    assert_int_equal(imp_conn_state(s), IMP_S_CLOSING);
    expect_output_error(s, 704);
    imp_conn_free(s);

    /* 4097 before authentication, for HELLO in AWAIT_HELLO and LOGIN in AWAIT_AUTH */
    for (int k = 0; k < 2; k++) {
        s = server_at(&cfg, k == 0 ? IMP_S_AWAIT_HELLO : IMP_S_AWAIT_AUTH, 0);
        build(&m, k == 0 ? IMP_HELLO : IMP_LOGIN, 1);
        f = padded_frame(&m, 4097);
        for (size_t i = 0; i < IMP_HEADER_SIZE - 1; i++) {
            assert_int_equal(imp_conn_feed(s, f + i, 1), 1);
            assert_int_equal(imp_conn_next_event(s, &ev), 0);
        }
        assert_int_equal(imp_conn_feed(s, f + IMP_HEADER_SIZE - 1, 1), 1);
        assert_int_equal(imp_conn_next_event(s, &ev), IMP_ERR_FRAME_TOO_LARGE);
        free(f);
        assert_int_equal(imp_conn_state(s), IMP_S_CLOSING);
        assert_int_equal(imp_conn_error(s), IMP_ERR_FRAME_TOO_LARGE);
        expect_output_error(s, 704);
        imp_conn_free(s);
    }
}

/* The client's receive limit is its own max_frame; the hard limit is 16 MiB (IMP-FRAME-005). */
static void test_client_recv_limits(void **state)
{
    (void)state;
    imp_msg m, ev;
    imp_config cfg;
    imp_config_default(&cfg, IMP_ROLE_CLIENT);
    cfg.max_frame = 8192;
    imp_conn *c = client_at(&cfg, IMP_S_READY, 0, NULL);
    assert_int_equal(imp_conn_recv_limit(c), 8192);
    build(&m, IMP_DELIVER, 0);
    uint8_t *f = padded_frame(&m, 8192);
    assert_int_equal(imp_conn_feed(c, f, 8192), 8192);
    free(f);
    expect_event(c, IMP_DELIVER, 0);
    f = padded_frame(&m, 8193);
    assert_int_equal(imp_conn_feed(c, f, IMP_HEADER_SIZE), IMP_HEADER_SIZE);
    free(f);
    assert_int_equal(imp_conn_next_event(c, &ev), IMP_ERR_FRAME_TOO_LARGE);
    expect_output_error(c, 704);
    imp_conn_free(c);

    /* default client: 16 MiB; a header declaring 16 MiB + 1 fails at once */
    c = client_at(NULL, IMP_S_READY, 0, NULL);
    assert_int_equal(imp_conn_recv_limit(c), IMP_FRAME_MAX_HARD);
    uint8_t hdr[IMP_HEADER_SIZE];
    imp_frame_header_write(hdr, IMP_DELIVER, IMP_FRAME_MAX_HARD - IMP_HEADER_SIZE + 1, 0);
    assert_int_equal(imp_conn_feed(c, hdr, sizeof hdr), (imp_ssize)sizeof hdr);
    assert_int_equal(imp_conn_next_event(c, &ev), IMP_ERR_FRAME_TOO_LARGE);
    imp_conn_free(c);
}

/* ---- sticky errors ------------------------------------------------------------------------ */

/* IMP-ERR-002, IMP-ERR-003: after a fatal protocol violation the connection reports the same
 * error from next_event, tick and feed, is CLOSING and wants to close, never returns the frames
 * after the offending one (even those fed in the same call), and refuses sends with CLOSED. */
static void test_sticky_error(void **state)
{
    (void)state;
    imp_conn *s = server_at(NULL, IMP_S_AWAIT_AUTH, 0);
    imp_msg m, ev;
    uint8_t buf[256];
    size_t n = 0;
    imp_ssize k;
    build(&m, IMP_PING, 5);
    k = imp_msg_encode(&m, buf + n, sizeof buf - n);
    assert_true(k > 0);
    n += (size_t)k;
    build(&m, IMP_WELCOME, 6); /* a server receiving WELCOME: WRONG_ROLE (IMP-MSG-001) */
    k = imp_msg_encode(&m, buf + n, sizeof buf - n);
    assert_true(k > 0);
    n += (size_t)k;
    build(&m, IMP_PING, 7);
    k = imp_msg_encode(&m, buf + n, sizeof buf - n);
    assert_true(k > 0);
    n += (size_t)k;
    build(&m, IMP_LOGIN, 8);
    k = imp_msg_encode(&m, buf + n, sizeof buf - n);
    assert_true(k > 0);
    n += (size_t)k;
    assert_int_equal(imp_conn_feed(s, buf, n), (imp_ssize)n);

    expect_event(s, IMP_PING, 5);
    assert_int_equal(imp_conn_next_event(s, &ev), IMP_ERR_WRONG_ROLE);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(imp_conn_next_event(s, &ev), IMP_ERR_WRONG_ROLE);
        assert_int_equal(imp_conn_tick(s, 100 + (uint64_t)i), IMP_ERR_WRONG_ROLE);
        assert_int_equal(imp_conn_feed(s, buf, 12), IMP_ERR_WRONG_ROLE);
    }
    assert_int_equal(imp_conn_error(s), IMP_ERR_WRONG_ROLE);
    assert_int_equal(imp_conn_state(s), IMP_S_CLOSING);
    assert_true(imp_conn_want_close(s));
    /* output: the PONG for 5, the ERROR; nothing for PING 7 */
    outlist o;
    out_decode(s, &o);
    assert_int_equal(o.n, 2);
    assert_int_equal(o.m[0].type, IMP_PONG);
    assert_int_equal(o.m[0].request_id, 5);
    assert_int_equal(o.m[1].type, IMP_ERROR);
    assert_int_equal(imp_msg_u(&o.m[1], IMP_T_CODE, 0), 705);
    /* sends refused, nothing queued (IMP-SESS-003) */
    const uint8_t *p;
    size_t before = imp_conn_pending_output(s, &p);
    build(&m, IMP_ERROR, 0);
    assert_int_equal(imp_conn_send(s, &m), IMP_ERR_CLOSED);
    build(&m, IMP_OK, 8);
    assert_int_equal(imp_conn_send(s, &m), IMP_ERR_CLOSED);
    assert_int_equal(imp_conn_pending_output(s, &p), before);
    assert_int_equal(imp_conn_next_event(s, &ev), IMP_ERR_WRONG_ROLE);
    imp_conn_free(s);

    /* a bad payload in an allowed frame: the state does not change because of it (LOGIN does
     * not make the server AUTHENTICATING) */
    s = server_at(NULL, IMP_S_AWAIT_AUTH, 0);
    imp_frame_header_write(buf, IMP_LOGIN, 6, 9);
    memset(buf + IMP_HEADER_SIZE, 0, 6); /* tag 0: ZERO_TAG */
    assert_int_equal(imp_conn_feed(s, buf, IMP_HEADER_SIZE + 6), IMP_HEADER_SIZE + 6);
    assert_int_equal(imp_conn_next_event(s, &ev), IMP_ERR_ZERO_TAG);
    assert_int_equal(imp_conn_state(s), IMP_S_CLOSING);
    expect_output_error(s, 711);
    imp_conn_free(s);
}

/* Encode messages back to back into buf; returns the total size. */
static size_t encode_seq(uint8_t *buf, size_t cap, const imp_msg *ms, size_t n)
{
    size_t off = 0;
    for (size_t i = 0; i < n; i++) {
        imp_ssize k = imp_msg_encode(&ms[i], buf + off, cap - off);
        assert_true(k > 0);
        off += (size_t)k;
    }
    return off;
}

/* IMP-SESS-003, IMP-MSG-005, IMP-SESS-007: frames already buffered behind the one that moved
 * the connection to CLOSING are ignored: no event, no automatic answer. */
static void test_closing_ignores_buffered_input(void **state)
{
    (void)state;
    imp_msg ms[3], ev;
    uint8_t buf[256];
    imp_conn *s = server_at(NULL, IMP_S_READY, 0);
    build(&ms[0], IMP_LOGOUT, 7);
    build(&ms[1], IMP_PING, 8);
    build(&ms[2], IMP_SEND, 9);
    size_t n = encode_seq(buf, sizeof buf, ms, 3);
    assert_int_equal(imp_conn_feed(s, buf, n), (imp_ssize)n);
    expect_event(s, IMP_LOGOUT, 7);
    assert_int_equal(imp_conn_state(s), IMP_S_CLOSING);
    assert_int_equal(imp_conn_next_event(s, &ev), 0);
    assert_int_equal(imp_conn_next_event(s, &ev), 0);
    outlist o;
    out_decode(s, &o);
    assert_int_equal(o.n, 1); /* the OK for LOGOUT, no PONG */
    assert_int_equal(o.m[0].type, IMP_OK);
    assert_int_equal(o.m[0].request_id, 7);
    assert_int_equal(imp_conn_error(s), 0);
    /* more input is taken and dropped */
    assert_int_equal(imp_conn_feed(s, buf, n), (imp_ssize)n);
    assert_int_equal(imp_conn_next_event(s, &ev), 0);
    imp_conn_free(s);

    imp_conn *c = client_at(NULL, IMP_S_READY, 0, NULL);
    tx(c, IMP_LOGOUT, 7);
    drain(c);
    build(&ms[0], IMP_OK, 7);
    build(&ms[1], IMP_PING, 8);
    build(&ms[2], IMP_DELIVER, 0);
    n = encode_seq(buf, sizeof buf, ms, 3);
    assert_int_equal(imp_conn_feed(c, buf, n), (imp_ssize)n);
    expect_event(c, IMP_OK, 7);
    assert_int_equal(imp_conn_state(c), IMP_S_CLOSING);
    assert_int_equal(imp_conn_next_event(c, &ev), 0);
    const uint8_t *p;
    assert_int_equal(imp_conn_pending_output(c, &p), 0);
    imp_conn_free(c);
}

/* imp_conn_close queues ERROR(code, text) and enters CLOSING; a negative imp_err is accepted. */
static void test_close(void **state)
{
    (void)state;
    imp_conn *s = server_at(NULL, IMP_S_READY, 0);
    imp_conn_close(s, 730, "going down");
    assert_int_equal(imp_conn_state(s), IMP_S_CLOSING);
    assert_true(imp_conn_want_close(s));
    outlist o;
    out_decode(s, &o);
    assert_int_equal(o.n, 1);
    assert_int_equal(o.m[0].type, IMP_ERROR);
    assert_int_equal(imp_msg_u(&o.m[0], IMP_T_CODE, 0), 730);
    imp_bytes t = imp_msg_b(&o.m[0], IMP_T_TEXT);
    assert_int_equal(t.len, 10);
    assert_memory_equal(t.p, "going down", 10);
    imp_msg m;
    build(&m, IMP_PING, 3);
    assert_int_equal(imp_conn_send(s, &m), IMP_ERR_CLOSED);
    imp_conn_free(s);

    imp_conn *c = client_at(NULL, IMP_S_READY, 0, NULL);
    imp_conn_close(c, IMP_ERR_TIMEOUT, NULL);
    assert_int_equal(imp_conn_state(c), IMP_S_CLOSING);
    out_decode(c, &o);
    assert_int_equal(o.n, 1);
    assert_int_equal(imp_msg_u(&o.m[0], IMP_T_CODE, 0), 602);
    assert_false(imp_msg_has(&o.m[0], IMP_T_TEXT));
    imp_conn_free(c);
}

/* ---- input flow control ------------------------------------------------------------------- */

/* imp_conn_feed takes less than len once a whole frame's worth (the receive limit) plus 64 KiB
 * is buffered unread; taking events makes room; every frame arrives, in order. */
static void test_feed_flow_control(void **state)
{
    (void)state;
    enum { NPING = 12000 };
    size_t len = NPING * IMP_HEADER_SIZE;
    uint8_t *buf = malloc(len);
    assert_non_null(buf);
    for (uint32_t i = 0; i < NPING; i++)
        imp_frame_header_write(buf + i * IMP_HEADER_SIZE, IMP_PING, 0, i + 1);

    imp_conn *s = server_at(NULL, IMP_S_AWAIT_AUTH, 0); /* limit 4096 */
    uint32_t limit = imp_conn_recv_limit(s);
    assert_int_equal(limit, 4096);
    size_t off = 0, rounds = 0;
    uint32_t next_id = 1, next_pong = 1;
    imp_msg ev;
    int r;
    while (off < len) {
        imp_ssize k = imp_conn_feed(s, buf + off, len - off);
        assert_true(k >= 0);
        if (rounds == 0) {
            /* an empty buffer takes at least 64 KiB, at most limit + 64 KiB */
            assert_true((size_t)k < len);
            assert_true((size_t)k >= 64 * KIB);
            assert_true((size_t)k <= limit + 64 * KIB);
            /* full: nothing more until events are taken */
            assert_int_equal(imp_conn_feed(s, buf + off + (size_t)k, len - off - (size_t)k), 0);
        }
        off += (size_t)k;
        while ((r = imp_conn_next_event(s, &ev)) == 1) {
            assert_int_equal(ev.type, IMP_PING);
            assert_int_equal(ev.request_id, next_id);
            next_id++;
        }
        assert_int_equal(r, 0);
        /* the automatic PONGs, one per PING, in order */
        const uint8_t *p;
        size_t pn = imp_conn_pending_output(s, &p), po = 0;
        while (po < pn) {
            imp_frame f;
            assert_int_equal(imp_frame_parse(p + po, pn - po, 0, &f, NULL), IMP_HEADER_SIZE);
            assert_int_equal(f.type, IMP_PONG);
            assert_int_equal(f.request_id, next_pong);
            next_pong++;
            po += IMP_HEADER_SIZE;
        }
        imp_conn_consume_output(s, pn);
        rounds++;
        assert_true(rounds < 100);
    }
    assert_true(rounds > 1);
    assert_int_equal(next_id, NPING + 1);
    assert_int_equal(next_pong, NPING + 1);
    assert_int_equal(imp_conn_state(s), IMP_S_AWAIT_AUTH);
    imp_conn_free(s);
    free(buf);
}

/* ---- output ------------------------------------------------------------------------------- */

/* pending_output / consume_output: partial consumption leaves exactly the rest. */
static void test_output_partial_consume(void **state)
{
    (void)state;
    imp_conn *s = server_at(NULL, IMP_S_READY, 0);
    uint8_t want[1024];
    size_t wlen = 0;
    for (uint32_t i = 0; i < 5; i++) {
        imp_msg m;
        build(&m, i % 2 ? IMP_DELIVER : IMP_OK, i);
        imp_ssize k = imp_msg_encode(&m, want + wlen, sizeof want - wlen);
        assert_true(k > 0);
        wlen += (size_t)k;
        assert_int_equal(imp_conn_send(s, &m), 0);
    }
    const uint8_t *p;
    uint8_t got[1024];
    size_t glen = 0;
    assert_int_equal(imp_conn_pending_output(s, &p), wlen);
    static const size_t steps[] = {1, 5, 11, 12, 13, 40, 100};
    size_t i = 0;
    while (glen < wlen) {
        size_t n = imp_conn_pending_output(s, &p);
        assert_int_equal(n, wlen - glen);
        assert_memory_equal(p, want + glen, n);
        size_t k = steps[i++ % (sizeof steps / sizeof steps[0])];
        if (k > n)
            k = n;
        memcpy(got + glen, p, k);
        glen += k;
        imp_conn_consume_output(s, k);
        if (i == 3) {
            /* a frame queued in the middle goes after the rest */
            imp_msg m;
            build(&m, IMP_PING, 99);
            imp_ssize e = imp_msg_encode(&m, want + wlen, sizeof want - wlen);
            assert_true(e > 0);
            wlen += (size_t)e;
            assert_int_equal(imp_conn_send(s, &m), 0);
        }
    }
    assert_int_equal(glen, wlen);
    assert_memory_equal(got, want, wlen);
    assert_int_equal(imp_conn_pending_output(s, &p), 0);
    imp_conn_consume_output(s, 0);
    assert_int_equal(imp_conn_pending_output(s, &p), 0);
    imp_conn_free(s);
}

/* imp_conn_set_max_output: a live connection's cap changes for later sends; queued output stays
 * (a server's reloaded output_hard reaches the connections already open). */
static void test_set_max_output(void **state)
{
    (void)state;
    imp_config cfg;
    imp_config_default(&cfg, IMP_ROLE_SERVER);
    cfg.max_output = 100;
    imp_conn *s = server_at(&cfg, IMP_S_READY, 0);
    imp_msg m;
    const uint8_t *p;
    build(&m, IMP_OK, 1);
    for (int i = 0; i < 4; i++) /* 4 x 12 = 48 bytes */
        assert_int_equal(imp_conn_send(s, &m), 0);
    imp_conn_set_max_output(s, 50); /* lowered under what the next send needs */
    assert_int_equal(imp_conn_send(s, &m), IMP_ERR_OUTPUT_FULL);
    assert_int_equal(imp_conn_pending_output(s, &p), 48); /* nothing dropped */
    imp_conn_set_max_output(s, 1000);                     /* raised over the old cap */
    for (int i = 0; i < 12; i++)                          /* 16 x 12 = 192 > 100 */
        assert_int_equal(imp_conn_send(s, &m), 0);
    assert_int_equal(imp_conn_pending_output(s, &p), 192);
    imp_conn_set_max_output(s, 0); /* no cap */
    for (int i = 0; i < 100; i++)
        assert_int_equal(imp_conn_send(s, &m), 0);
    assert_int_equal(imp_conn_pending_output(s, &p), 1392);
    assert_int_equal(imp_conn_error(s), 0);
    imp_conn_free(s);
}

/* max_output: an application send that would exceed the cap fails with OUTPUT_FULL, queues
 * nothing and is not fatal; frames the library generates (PONG) are still queued past the cap. */
static void test_output_cap(void **state)
{
    (void)state;
    imp_config cfg;
    imp_config_default(&cfg, IMP_ROLE_SERVER);
    cfg.max_output = 100;
    imp_conn *s = server_at(&cfg, IMP_S_READY, 0);
    imp_msg m;
    const uint8_t *p;
    build(&m, IMP_OK, 1);
    for (int i = 0; i < 8; i++) /* 8 x 12 = 96 bytes */
        assert_int_equal(imp_conn_send(s, &m), 0);
    assert_int_equal(imp_conn_send(s, &m), IMP_ERR_OUTPUT_FULL); /* 108 > 100 */
    assert_int_equal(imp_conn_pending_output(s, &p), 96);
    assert_int_equal(imp_conn_state(s), IMP_S_READY);
    assert_int_equal(imp_conn_error(s), 0);
    imp_conn_consume_output(s, 12);
    assert_int_equal(imp_conn_send(s, &m), 0); /* 96 again */
    drain(s);

    /* 20 PINGs: 20 PONGs = 240 bytes, over the cap, all queued */
    for (uint32_t i = 0; i < 20; i++) {
        imp_msg ping;
        build(&ping, IMP_PING, 1000 + i);
        feed_msg(s, &ping);
    }
    imp_msg ev;
    for (uint32_t i = 0; i < 20; i++)
        expect_event(s, IMP_PING, 1000 + i);
    outlist o;
    out_decode(s, &o);
    assert_int_equal(o.n, 20);
    for (int i = 0; i < 20; i++) {
        assert_int_equal(o.m[i].type, IMP_PONG);
        assert_int_equal(o.m[i].request_id, 1000 + (uint32_t)i);
    }
    assert_int_equal(imp_conn_pending_output(s, &p), 240);
    assert_int_equal(imp_conn_send(s, &m), IMP_ERR_OUTPUT_FULL);
    assert_int_equal(imp_conn_pending_output(s, &p), 240);
    assert_int_equal(imp_conn_next_event(s, &ev), 0);
    assert_int_equal(imp_conn_error(s), 0);
    drain(s);
    assert_int_equal(imp_conn_send(s, &m), 0);
    imp_conn_free(s);
}

/* ---- timers ------------------------------------------------------------------------------- */

/* IMP-TIME-001: the authentication deadline is absolute from creation; received bytes do not
 * extend it; at deadline - 1 all is well, at the deadline AUTH_TIMEOUT with ERROR 600 queued. */
static void test_auth_deadline_server(void **state)
{
    (void)state;
    imp_config cfg;
    imp_config_default(&cfg, IMP_ROLE_SERVER);
    imp_conn *s = imp_conn_new(IMP_ROLE_SERVER, &cfg, 1000);
    assert_non_null(s);
    assert_int_equal(imp_conn_next_deadline(s), 11000);
    assert_int_equal(imp_conn_tick(s, 5000), 0);
    rx(s, IMP_HELLO, 1);
    assert_int_equal(imp_conn_next_deadline(s), 11000);
    drain(s);
    assert_int_equal(imp_conn_tick(s, 10999), 0);
    rx(s, IMP_LOGIN, 2); /* AUTHENTICATING is not READY */
    assert_int_equal(imp_conn_next_deadline(s), 11000);
    assert_int_equal(imp_conn_tick(s, 10999), 0);
    const uint8_t *p;
    assert_int_equal(imp_conn_pending_output(s, &p), 0);
    assert_int_equal(imp_conn_tick(s, 11000), IMP_ERR_AUTH_TIMEOUT);
    assert_int_equal(imp_conn_state(s), IMP_S_CLOSING);
    assert_int_equal(imp_conn_error(s), IMP_ERR_AUTH_TIMEOUT);
    assert_true(imp_conn_want_close(s));
    expect_output_error(s, 600);
    imp_msg ev;
    assert_int_equal(imp_conn_next_event(s, &ev), IMP_ERR_AUTH_TIMEOUT);
    assert_int_equal(imp_conn_tick(s, 12000), IMP_ERR_AUTH_TIMEOUT);
    imp_conn_free(s);

    /* a deadline passed by far is still AUTH_TIMEOUT */
    s = imp_conn_new(IMP_ROLE_SERVER, &cfg, 0);
    assert_non_null(s);
    assert_int_equal(imp_conn_tick(s, 1000000), IMP_ERR_AUTH_TIMEOUT);
    expect_output_error(s, 600);
    imp_conn_free(s);
}

/* IMP-TIME-001: a client applies its own deadline the same way. */
static void test_auth_deadline_client(void **state)
{
    (void)state;
    imp_config cfg;
    imp_config_default(&cfg, IMP_ROLE_CLIENT);
    cfg.auth_timeout_ms = 3000;
    imp_conn *c = client_at(&cfg, IMP_S_CONNECTED, 100, NULL);
    assert_int_equal(imp_conn_next_deadline(c), 3100);
    assert_int_equal(imp_conn_tick(c, 3099), 0);
    assert_int_equal(imp_conn_tick(c, 3100), IMP_ERR_AUTH_TIMEOUT);
    assert_int_equal(imp_conn_state(c), IMP_S_CLOSING);
    expect_output_error(c, 600);
    imp_conn_free(c);

    /* reaching READY in time stops it */
    c = client_at(&cfg, IMP_S_READY, 100, NULL);
    assert_int_equal(imp_conn_next_deadline(c), UINT64_MAX);
    assert_int_equal(imp_conn_tick(c, 3100), 0);
    assert_int_equal(imp_conn_tick(c, 1000000), 0);
    assert_int_equal(imp_conn_state(c), IMP_S_READY);
    imp_conn_free(c);
}

/* IMP-TIME-001: not applied once READY; auth_timeout 0 disables it. */
static void test_auth_deadline_ready_and_disabled(void **state)
{
    (void)state;
    imp_config cfg;
    const uint8_t *p;
    imp_config_default(&cfg, IMP_ROLE_SERVER);
    cfg.ping_interval_ms = 0;
    imp_conn *s = imp_conn_new(IMP_ROLE_SERVER, &cfg, 0);
    assert_non_null(s);
    assert_int_equal(imp_conn_tick(s, 5000), 0);
    rx(s, IMP_HELLO, 1);
    rx(s, IMP_LOGIN, 2);
    tx(s, IMP_AUTH_OK, 2);
    drain(s);
    assert_int_equal(imp_conn_state(s), IMP_S_READY);
    assert_int_equal(imp_conn_next_deadline(s), UINT64_MAX);
    assert_int_equal(imp_conn_tick(s, 10000), 0);
    assert_int_equal(imp_conn_tick(s, 1000000), 0);
    assert_int_equal(imp_conn_state(s), IMP_S_READY);
    assert_int_equal(imp_conn_pending_output(s, &p), 0);
    imp_conn_free(s);

    cfg.auth_timeout_ms = 0;
    s = imp_conn_new(IMP_ROLE_SERVER, &cfg, 0);
    assert_non_null(s);
    assert_int_equal(imp_conn_next_deadline(s), UINT64_MAX);
    assert_int_equal(imp_conn_tick(s, 100000000), 0);
    assert_int_equal(imp_conn_state(s), IMP_S_AWAIT_HELLO);
    assert_int_equal(imp_conn_pending_output(s, &p), 0);
    imp_conn_free(s);
}

/* IMP-TIME-002: PINGs keep their schedule (every I ms from READY) when ticks come late: a late
 * tick does not push the later PINGs back; a tick more than an interval late restarts the
 * schedule from that tick. */
static uint32_t take_ping(imp_conn *c);

static void test_keepalive_late_ticks(void **state)
{
    (void)state;
    imp_config cfg;
    imp_config_default(&cfg, IMP_ROLE_SERVER);
    cfg.ping_interval_ms = 1000;
    cfg.ping_max_missed = 100;
    cfg.auth_timeout_ms = 0;
    imp_conn *s = imp_conn_new(IMP_ROLE_SERVER, &cfg, 0);
    assert_non_null(s);
    rx(s, IMP_HELLO, 1);
    rx(s, IMP_LOGIN, 2);
    tx(s, IMP_AUTH_OK, 2);
    drain(s);
    assert_int_equal(imp_conn_next_deadline(s), 1000);
    assert_int_equal(imp_conn_tick(s, 1090), 0); /* 90 ms late */
    (void)take_ping(s);
    assert_int_equal(imp_conn_next_deadline(s), 2000);
    assert_int_equal(imp_conn_tick(s, 2099), 0);
    (void)take_ping(s);
    assert_int_equal(imp_conn_next_deadline(s), 3000);
    assert_int_equal(imp_conn_tick(s, 5500), 0); /* more than an interval late */
    (void)take_ping(s);
    assert_int_equal(imp_conn_next_deadline(s), 6500);
    imp_conn_free(s);
}

/* IMP-TIME-001, IMP-TIME-002: times near the end of the clock's range saturate instead of
 * wrapping: a deadline or PING time past UINT64_MAX is UINT64_MAX, so nothing fires early. */
static void test_timer_saturation(void **state)
{
    (void)state;
    imp_config cfg;
    imp_config_default(&cfg, IMP_ROLE_SERVER);
    cfg.ping_interval_ms = 1000;
    imp_conn *s = imp_conn_new(IMP_ROLE_SERVER, &cfg, UINT64_MAX - 5);
    assert_non_null(s);
    assert_int_equal(imp_conn_next_deadline(s), UINT64_MAX);
    assert_int_equal(imp_conn_tick(s, UINT64_MAX - 1), 0);
    assert_int_equal(imp_conn_state(s), IMP_S_AWAIT_HELLO);
    rx(s, IMP_HELLO, 1);
    rx(s, IMP_LOGIN, 2);
    tx(s, IMP_AUTH_OK, 2);
    drain(s);
    assert_int_equal(imp_conn_state(s), IMP_S_READY);
    assert_int_equal(imp_conn_next_deadline(s), UINT64_MAX);
    assert_int_equal(imp_conn_tick(s, UINT64_MAX - 1), 0);
    const uint8_t *p;
    assert_int_equal(imp_conn_pending_output(s, &p), 0);
    assert_int_equal(imp_conn_state(s), IMP_S_READY);
    imp_conn_free(s);
}

/* A connection of the role in READY at time t with keepalive I = 1000 ms, N = 2, no deadline. */
static imp_conn *ready_with_keepalive(imp_role role, uint64_t t)
{
    imp_config cfg;
    imp_config_default(&cfg, role);
    cfg.ping_interval_ms = 1000;
    cfg.ping_max_missed = 2;
    cfg.auth_timeout_ms = 0;
    imp_conn *c;
    if (role == IMP_ROLE_SERVER) {
        c = imp_conn_new(IMP_ROLE_SERVER, &cfg, 0);
        assert_non_null(c);
        assert_int_equal(imp_conn_tick(c, t), 0);
        rx(c, IMP_HELLO, 1);
        rx(c, IMP_LOGIN, 2);
        tx(c, IMP_AUTH_OK, 2);
    } else {
        c = client_at(&cfg, IMP_S_AUTH_SENT, 0, NULL);
        assert_int_equal(imp_conn_tick(c, t), 0);
        rx(c, IMP_AUTH_OK, 2);
    }
    assert_int_equal(imp_conn_state(c), IMP_S_READY);
    drain(c);
    return c;
}

/* The single PING queued, its request id; drains the output. */
static uint32_t take_ping(imp_conn *c)
{
    outlist o;
    out_decode(c, &o);
    assert_int_equal(o.n, 1);
    assert_int_equal(o.m[0].type, IMP_PING);
    uint32_t id = o.m[0].request_id;
    drain(c);
    return id;
}

/* IMP-TIME-002: PING every I ms while READY (distinct request ids); a PONG resets the missed
 * counter; without PONG the connection fails with PING_TIMEOUT between N*I and (N+1)*I after
 * the last PONG, with ERROR 601 queued. Both roles. */
static void test_keepalive(void **state)
{
    (void)state;
    for (int role = IMP_ROLE_CLIENT; role <= IMP_ROLE_SERVER; role++) {
        imp_conn *c = ready_with_keepalive((imp_role)role, 500);
        const uint8_t *p;
        imp_msg pong;
        uint32_t ids[16];
        assert_int_equal(imp_conn_next_deadline(c), 1500);
        assert_int_equal(imp_conn_tick(c, 1499), 0);
        assert_int_equal(imp_conn_pending_output(c, &p), 0);
        /* answered PINGs for a while: never fails */
        uint64_t t = 1500;
        for (int i = 0; i < 10; i++, t += 1000) {
            assert_int_equal(imp_conn_tick(c, t), 0);
            ids[i] = take_ping(c);
            for (int j = 0; j < i; j++)
                assert_int_not_equal(ids[i], ids[j]);
            assert_int_equal(imp_conn_next_deadline(c), t + 1000);
            build(&pong, IMP_PONG, ids[i]);
            feed_msg(c, &pong);
            expect_event(c, IMP_PONG, ids[i]);
        }
        /* last PONG at about t - 1000 + epsilon = 10500: now no more answers */
        uint64_t last_pong = t - 1000;
        assert_int_equal(imp_conn_tick(c, t), 0); /* 11500: PING, previous answered */
        ids[10] = take_ping(c);
        t += 1000;
        assert_int_equal(imp_conn_tick(c, t), 0); /* 12500: missed 1, PING */
        ids[11] = take_ping(c);
        assert_int_not_equal(ids[10], ids[11]);
        assert_int_equal(imp_conn_state(c), IMP_S_READY);
        t += 1000;
        assert_int_equal(imp_conn_tick(c, t), IMP_ERR_PING_TIMEOUT); /* 13500: missed 2 */
        assert_true(t - last_pong >= 2 * 1000 && t - last_pong <= 3 * 1000);
        assert_int_equal(imp_conn_state(c), IMP_S_CLOSING);
        assert_int_equal(imp_conn_error(c), IMP_ERR_PING_TIMEOUT);
        expect_output_error(c, 601);
        imp_conn_free(c);
    }
}

/* IMP-TIME-002: a PONG that arrives late, but before the limit, still resets the counter. */
static void test_keepalive_late_pong_resets(void **state)
{
    (void)state;
    imp_conn *c = ready_with_keepalive(IMP_ROLE_SERVER, 0);
    imp_msg pong;
    assert_int_equal(imp_conn_tick(c, 1000), 0);
    uint32_t id1 = take_ping(c);
    assert_int_equal(imp_conn_tick(c, 2000), 0); /* missed 1 */
    (void)take_ping(c);
    build(&pong, IMP_PONG, id1); /* any PONG resets */
    feed_msg(c, &pong);
    expect_event(c, IMP_PONG, id1);
    assert_int_equal(imp_conn_tick(c, 3000), 0);
    (void)take_ping(c);
    assert_int_equal(imp_conn_tick(c, 4000), 0); /* missed 1 again, not 2 */
    assert_int_equal(imp_conn_state(c), IMP_S_READY);
    (void)take_ping(c);
    assert_int_equal(imp_conn_tick(c, 5000), IMP_ERR_PING_TIMEOUT);
    imp_conn_free(c);
}

/* A received PING is answered by a PONG with the same request id, in both roles (5.6). */
static void test_ping_answered(void **state)
{
    (void)state;
    imp_conn *conns[2] = {server_at(NULL, IMP_S_READY, 0), client_at(NULL, IMP_S_READY, 0, NULL)};
    for (int i = 0; i < 2; i++) {
        rx(conns[i], IMP_PING, 0xdeadbeefu);
        outlist o;
        out_decode(conns[i], &o);
        assert_int_equal(o.n, 1);
        assert_int_equal(o.m[0].type, IMP_PONG);
        assert_int_equal(o.m[0].request_id, 0xdeadbeefu);
        imp_conn_free(conns[i]);
    }
}

/* IMP-TIME-003: a time earlier than one already seen counts as the one already seen. */
static void test_time_backwards(void **state)
{
    (void)state;
    const uint8_t *p;
    imp_config cfg;
    imp_config_default(&cfg, IMP_ROLE_SERVER);
    imp_conn *s = imp_conn_new(IMP_ROLE_SERVER, &cfg, 5000); /* deadline 15000 */
    assert_non_null(s);
    assert_int_equal(imp_conn_tick(s, 0), 0);
    assert_int_equal(imp_conn_next_deadline(s), 15000);
    assert_int_equal(imp_conn_tick(s, 14000), 0);
    assert_int_equal(imp_conn_tick(s, 100), 0);
    assert_int_equal(imp_conn_next_deadline(s), 15000);
    assert_int_equal(imp_conn_tick(s, 14999), 0);
    assert_int_equal(imp_conn_tick(s, 15000), IMP_ERR_AUTH_TIMEOUT);
    imp_conn_free(s);

    /* keepalive: going back neither sends a PING nor moves the schedule */
    imp_conn *c = ready_with_keepalive(IMP_ROLE_SERVER, 500);
    assert_int_equal(imp_conn_tick(c, 1500), 0);
    (void)take_ping(c);
    assert_int_equal(imp_conn_tick(c, 10), 0);
    assert_int_equal(imp_conn_pending_output(c, &p), 0);
    assert_int_equal(imp_conn_next_deadline(c), 2500);
    assert_int_equal(imp_conn_tick(c, 2499), 0);
    assert_int_equal(imp_conn_pending_output(c, &p), 0);
    assert_int_equal(imp_conn_tick(c, 2500), 0);
    (void)take_ping(c);
    imp_conn_free(c);

    /* the keepalive schedule starts from the latest time seen, not from a time that went back:
     * READY reached after tick(5000) then tick(100) sends its first PING at 5000 + I */
    imp_config cfg2;
    imp_config_default(&cfg2, IMP_ROLE_SERVER);
    cfg2.ping_interval_ms = 1000;
    cfg2.auth_timeout_ms = 0;
    s = imp_conn_new(IMP_ROLE_SERVER, &cfg2, 0);
    assert_non_null(s);
    assert_int_equal(imp_conn_tick(s, 5000), 0);
    assert_int_equal(imp_conn_tick(s, 100), 0);
    rx(s, IMP_HELLO, 1);
    rx(s, IMP_LOGIN, 2);
    tx(s, IMP_AUTH_OK, 2);
    drain(s);
    assert_int_equal(imp_conn_next_deadline(s), 6000);
    assert_int_equal(imp_conn_tick(s, 5999), 0);
    assert_int_equal(imp_conn_pending_output(s, &p), 0);
    assert_int_equal(imp_conn_tick(s, 6000), 0);
    (void)take_ping(s);
    imp_conn_free(s);
}

/* ---- allocation ----------------------------------------------------------------------------- */

typedef struct counting {
    imp_allocator a;
    size_t live;     /* blocks allocated and not freed */
    size_t calls;    /* allocation requests (size > 0) */
    size_t fail_at;  /* fail this request (1-based); 0 = never */
    size_t failures; /* requests failed */
    size_t largest;  /* largest size requested */
} counting;

static void *counting_realloc(void *ud, void *ptr, size_t size)
{
    counting *k = ud;
    if (size == 0) {
        if (ptr) {
            assert_true(k->live > 0);
            k->live--;
            free(ptr);
        }
        return NULL;
    }
    k->calls++;
    if (size > k->largest)
        k->largest = size;
    if (k->fail_at && k->calls == k->fail_at) {
        k->failures++;
        return NULL;
    }
    void *p = realloc(ptr, size);
    if (p && !ptr)
        k->live++;
    return p;
}

static void counting_init(counting *k)
{
    memset(k, 0, sizeof *k);
    k->a.realloc = counting_realloc;
    k->a.ud = k;
}

/* IMP-LIB-003: every allocation goes through the hook: blocks are live while connections
 * exist and none is left after imp_conn_free. */
static void test_allocations_through_hook(void **state)
{
    (void)state;
    counting k;
    sess x;
    counting_init(&k);
    sess_init(&x, 0, 300 * KIB);
    assert_int_equal(run_session(&x, &k.a), 0);
    assert_true(k.live > 0);
    assert_true(k.calls > 0);
    assert_true(k.largest >= 300 * KIB); /* the large frames grew buffers through the hook */
    sess_free(&x);
    assert_int_equal(k.live, 0);

    imp_config cfg;
    imp_config_default(&cfg, IMP_ROLE_CLIENT);
    cfg.alloc = &k.a;
    imp_conn *c = imp_conn_new(IMP_ROLE_CLIENT, &cfg, 0);
    assert_non_null(c);
    assert_true(k.live > 0);
    imp_conn_free(c);
    assert_int_equal(k.live, 0);
}

/* Issue 3 (10,000 idle logged-in connections, <= 1 KiB of server memory each): a connection
 * holds one block of at most 136 bytes (the connection object: 120 bytes, a 128-byte glibc
 * chunk, plus the copy of a custom allocator hook, 16) when it has no buffered input or
 * output, before and after authentication and trimming. */
static void test_idle_object_small(void **state)
{
    (void)state;
    counting k;
    counting_init(&k);
    imp_config cfg;
    imp_config_default(&cfg, IMP_ROLE_SERVER);
    cfg.alloc = &k.a;
    cfg.agent = "imd/test";
    imp_conn *s = imp_conn_new(IMP_ROLE_SERVER, &cfg, 0);
    assert_non_null(s);
    assert_int_equal(k.live, 1);
    print_message("imp_conn object: %zu bytes\n", k.largest);
    assert_true(k.largest <= 136);
    rx(s, IMP_HELLO, 1);
    drain(s);
    /* the client-only limits from WELCOME read 0 on a server, whatever it shares room with */
    assert_int_equal(imp_conn_peer_max_frame(s), 0);
    assert_int_equal(imp_conn_peer_max_preauth(s), 0);
    imp_conn_trim(s);
    assert_int_equal(k.live, 1);
    imp_conn_free(s);
    assert_int_equal(k.live, 0);
}

static void *poison_realloc(void *ud, void *ptr, size_t size)
{
    (void)ud;
    (void)ptr;
    (void)size;
    fail_msg("the connection used a hook that was changed after imp_conn_new");
    return NULL;
}

/* IMP-LIB-003, "cfg is copied": the allocator hook is copied by imp_conn_new (kept after the
 * object, issue 3), so the caller's imp_allocator may change or go away afterwards; every
 * buffer of a whole session, grown, trimmed and grown again, goes through the copy, and the
 * last block is freed through it too. */
static void test_allocator_copied(void **state)
{
    (void)state;
    counting k;
    counting_init(&k);
    imp_allocator hook = k.a;
    imp_config cfg;
    imp_config_default(&cfg, IMP_ROLE_SERVER);
    cfg.alloc = &hook;
    cfg.auth_timeout_ms = 0;
    imp_conn *s = imp_conn_new(IMP_ROLE_SERVER, &cfg, 0);
    assert_non_null(s);
    hook.realloc = poison_realloc; /* the caller's struct changes: not used any more */
    hook.ud = NULL;
    assert_int_equal(k.live, 1);
    rx(s, IMP_HELLO, 1); /* input and output buffers */
    assert_int_equal(k.live, 3);
    drain(s);
    imp_conn_trim(s);
    assert_int_equal(k.live, 1);
    imp_msg m;
    build(&m, IMP_LOGIN, 2);
    imp_msg_set_s(&m, IMP_T_USER, "alice");
    imp_msg_set_s(&m, IMP_T_PASSWORD, "secret");
    size_t flen;
    uint8_t *f = encode_alloc(&m, &flen);
    assert_int_equal(imp_conn_feed(s, f, flen), (imp_ssize)flen);
    assert_int_equal(k.live, 2);
    free(f);
    imp_conn_free(s);
    assert_int_equal(k.live, 0);
}

/* Issue 3: a connection's first buffers are small (256 bytes: the handshake's frames fit), so
 * the many connections logging in at once hold little until their buffers are trimmed; a
 * larger frame grows them as before. */
static void test_first_buffers_small(void **state)
{
    (void)state;
    counting k;
    counting_init(&k);
    imp_config cfg;
    imp_config_default(&cfg, IMP_ROLE_SERVER);
    cfg.alloc = &k.a;
    cfg.agent = "imd/0.1.0";
    imp_conn *s = imp_conn_new(IMP_ROLE_SERVER, &cfg, 0);
    assert_non_null(s);
    rx(s, IMP_HELLO, 1); /* input buffered, WELCOME queued */
    assert_int_equal(k.live, 3);
    print_message("largest block after HELLO/WELCOME: %zu bytes\n", k.largest);
    assert_true(k.largest <= 256);
    drain(s);
    imp_msg m;
    build(&m, IMP_LOGIN, 2);
    imp_msg_set_s(&m, IMP_T_USER, "alice");
    imp_msg_set_s(&m, IMP_T_PASSWORD, "a password of some length");
    size_t flen;
    uint8_t *f = encode_alloc(&m, &flen);
    assert_int_equal(imp_conn_feed(s, f, flen), (imp_ssize)flen);
    free(f);
    imp_msg ev;
    assert_int_equal(imp_conn_next_event(s, &ev), 1);
    assert_int_equal(ev.type, IMP_LOGIN);
    assert_true(k.largest <= 256);
    /* three frames of over 1000 bytes in one feed grow the input buffer to fit them */
    uint8_t big[1000];
    memset(big, 'x', sizeof big);
    build(&m, IMP_LOGIN, 3);
    imp_msg_set_s(&m, IMP_T_USER, "alice");
    imp_msg_set_b(&m, IMP_T_PASSWORD, big, 1000);
    f = encode_alloc(&m, &flen);
    uint8_t *two = malloc(flen * 3);
    memcpy(two, f, flen);
    memcpy(two + flen, f, flen);
    memcpy(two + 2 * flen, f, flen);
    assert_int_equal(imp_conn_feed(s, two, flen * 3), (imp_ssize)(flen * 3));
    assert_true(k.largest >= flen * 3);
    free(two);
    free(f);
    imp_conn_free(s);
    assert_int_equal(k.live, 0);
}

/* IMP-LIB-003: imp_conn_trim releases empty buffers, so an idle connection holds only the
 * connection object itself; buffers with unread input or unwritten output are kept; the
 * connection works as before afterwards. */
static void test_trim(void **state)
{
    (void)state;
    counting k;
    counting_init(&k);
    imp_config cfg;
    imp_config_default(&cfg, IMP_ROLE_SERVER);
    cfg.alloc = &k.a;
    cfg.auth_timeout_ms = 0;
    imp_conn *s = imp_conn_new(IMP_ROLE_SERVER, &cfg, 0);
    assert_non_null(s);
    size_t base = k.live; /* the connection object */
    rx(s, IMP_HELLO, 1);  /* input buffered, WELCOME queued */
    assert_true(k.live > base);
    const uint8_t *p;
    assert_true(imp_conn_pending_output(s, &p) > 0);
    imp_conn_trim(s); /* output pending: kept */
    size_t n = imp_conn_pending_output(s, &p);
    assert_true(n > 0);
    drain(s);
    imp_conn_trim(s);
    assert_int_equal(k.live, base);
    assert_int_equal(imp_conn_pending_output(s, &p), 0);
    /* unread input survives a trim */
    uint8_t *f;
    size_t flen;
    imp_msg m;
    build(&m, IMP_LOGIN, 2);
    imp_msg_set_s(&m, IMP_T_USER, "alice");
    imp_msg_set_s(&m, IMP_T_PASSWORD, "secret");
    f = encode_alloc(&m, &flen);
    assert_int_equal(imp_conn_feed(s, f, flen), (imp_ssize)flen);
    imp_conn_trim(s);
    imp_msg ev;
    assert_int_equal(imp_conn_next_event(s, &ev), 1);
    assert_int_equal(ev.type, IMP_LOGIN);
    assert_int_equal(imp_conn_next_event(s, &ev), 0);
    imp_conn_trim(s);
    assert_int_equal(k.live, base);
    free(f);
    imp_conn_free(s);
    assert_int_equal(k.live, 0);
}

/* After NOMEM the failed connection is CLOSING with the sticky error, sent no ERROR 201 (2xx
 * never travel), and refuses sends. */
static void check_failed_conn(imp_conn *c)
{
    imp_msg m, ev;
    uint8_t byte = 0;
    assert_int_equal(imp_conn_error(c), IMP_ERR_NOMEM);
    assert_int_equal(imp_conn_state(c), IMP_S_CLOSING);
    assert_true(imp_conn_want_close(c));
    assert_int_equal(imp_conn_next_event(c, &ev), IMP_ERR_NOMEM);
    assert_int_equal(imp_conn_feed(c, &byte, 1), IMP_ERR_NOMEM);
    assert_int_equal(imp_conn_tick(c, 1u << 30), IMP_ERR_NOMEM);
    const uint8_t *p;
    size_t before = imp_conn_pending_output(c, &p);
    build(&m, IMP_PING, 1);
    assert_int_equal(imp_conn_send(c, &m), IMP_ERR_CLOSED);
    assert_int_equal(imp_conn_pending_output(c, &p), before);
    outlist o;
    out_decode(c, &o);
    for (int i = 0; i < o.n; i++)
        if (o.m[i].type == IMP_ERROR)
            assert_int_not_equal(imp_msg_u(&o.m[i], IMP_T_CODE, 0), 201);
}

/* IMP-LIB-003: the scripted session once to count allocations, then again failing the n-th
 * allocation for every n: the call fails with NOMEM (or imp_conn_new returns NULL), the
 * connection stays failed, nothing crashes and nothing leaks. */
static void run_failmalloc(size_t chunk)
{
    counting k;
    sess x;
    counting_init(&k);
    sess_init(&x, chunk, 200 * KIB);
    assert_int_equal(run_session(&x, &k.a), 0);
    sess_free(&x);
    assert_int_equal(k.live, 0);
    size_t total = k.calls;
    assert_true(total > 2);
    size_t hit_new = 0, hit_call = 0;
    for (size_t n = 1; n <= total; n++) {
        counting_init(&k);
        k.fail_at = n;
        sess_init(&x, chunk, 200 * KIB);
        int r = run_session(&x, &k.a);
        if (k.failures == 0) {
            /* the allocation pattern depends on nothing but the script: it must be reached */
            fail_msg("chunk %zu: allocation %zu of %zu never requested", chunk, n, total);
        }
        if (r != 1 || !x.nomem)
            fail_msg("chunk %zu: allocation %zu of %zu failed, yet the session went on", chunk, n,
                     total);
        if (x.failed) {
            hit_call++;
            check_failed_conn(x.failed);
        } else {
            hit_new++;
        }
        sess_free(&x);
        if (k.live != 0)
            fail_msg("chunk %zu: failing allocation %zu leaks %zu blocks", chunk, n, k.live);
    }
    assert_true(hit_new > 0);
    assert_true(hit_call > 0);
    print_message("failmalloc (chunk %zu): %zu allocations, each failed in turn (%zu in "
                  "imp_conn_new, %zu in later calls)\n",
                  chunk, total, hit_new, hit_call);
}

static void test_allocation_failure_whole(void **state)
{
    (void)state;
    run_failmalloc(0);
}

static void test_allocation_failure_chunked(void **state)
{
    (void)state;
    run_failmalloc(1000);
}

/* IMP-SEC-002: a declared length over the limit is refused before anything is allocated for
 * it: feeding such a header requests no block anywhere near the declared size. */
static void test_no_allocation_before_size_check(void **state)
{
    (void)state;
    counting k;
    imp_config cfg;
    imp_msg ev;
    uint8_t hdr[IMP_HEADER_SIZE];
    for (int st = 0; st < 2; st++) {
        counting_init(&k);
        imp_config_default(&cfg, IMP_ROLE_SERVER);
        cfg.alloc = &k.a;
        imp_conn *s = server_at(&cfg, st == 0 ? IMP_S_AWAIT_HELLO : IMP_S_READY, 0);
        k.largest = 0;
        imp_frame_header_write(hdr, st == 0 ? IMP_HELLO : IMP_SEND,
                               IMP_FRAME_MAX_HARD - IMP_HEADER_SIZE, 1);
        assert_int_equal(imp_conn_feed(s, hdr, sizeof hdr), (imp_ssize)sizeof hdr);
        assert_int_equal(imp_conn_next_event(s, &ev), IMP_ERR_FRAME_TOO_LARGE);
        assert_true(k.largest < 1024 * KIB);
        imp_conn_free(s);
        assert_int_equal(k.live, 0);
    }
}

/* ---- event views ---------------------------------------------------------------------------- */

/* IMP-LIB-002: the views of an event point into the connection's buffer (the fed bytes were
 * copied: the caller's buffer can be reused at once) and hold the frame's bytes until the next
 * call. */
static void test_event_views(void **state)
{
    (void)state;
    imp_conn *s = server_at(NULL, IMP_S_READY, 0);
    static const char *const bodies[] = {"first body", "", "the third and longest body"};
    uint8_t buf[1024];
    size_t n = 0;
    for (uint32_t i = 0; i < 3; i++) {
        imp_msg m;
        build(&m, IMP_SEND, 10 + i);
        imp_msg_set_s(&m, IMP_T_TARGET, i == 1 ? "carol" : "bob");
        imp_msg_set_b(&m, IMP_T_BODY, bodies[i], strlen(bodies[i]));
        imp_ssize k = imp_msg_encode(&m, buf + n, sizeof buf - n);
        assert_true(k > 0);
        n += (size_t)k;
    }
    assert_int_equal(imp_conn_feed(s, buf, n), (imp_ssize)n);
    memset(buf, 0xee, sizeof buf); /* the connection copied what it took */
    for (uint32_t i = 0; i < 3; i++) {
        imp_msg ev;
        assert_int_equal(imp_conn_next_event(s, &ev), 1);
        assert_int_equal(ev.request_id, 10 + i);
        imp_bytes body = imp_msg_b(&ev, IMP_T_BODY);
        imp_bytes target = imp_msg_b(&ev, IMP_T_TARGET);
        assert_true(imp_msg_has(&ev, IMP_T_BODY));
        assert_int_equal(body.len, strlen(bodies[i]));
        if (body.len)
            assert_memory_equal(body.p, bodies[i], body.len);
        const char *tg = i == 1 ? "carol" : "bob";
        assert_int_equal(target.len, strlen(tg));
        assert_memory_equal(target.p, tg, target.len);
        /* not a view into the caller's buffer */
        uintptr_t tp = (uintptr_t)target.p, b0 = (uintptr_t)buf;
        assert_true(tp < b0 || tp >= b0 + sizeof buf);
    }
    imp_conn_free(s);
}

/* A busy connection's output buffer of up to 64 KiB is kept when its output has been written
 * (issue 3: a room's fan-out queues a burst of DELIVERs on every member each turn; releasing
 * and growing the buffer again for each burst cost more than the copy); a larger one is
 * released; imp_conn_trim still releases a kept one (an idle connection holds no buffer). */
static void test_output_buffer_kept_while_busy(void **state)
{
    (void)state;
    counting k;
    counting_init(&k);
    imp_config cfg;
    imp_config_default(&cfg, IMP_ROLE_SERVER);
    cfg.alloc = &k.a;
    imp_conn *s = server_at(&cfg, IMP_S_READY, 0);
    imp_conn_trim(s);
    size_t base = k.live; /* the connection object */
    imp_msg m;
    build(&m, IMP_DELIVER, 0);
    static uint8_t body[200 * 1024];
    imp_msg_set_b(&m, IMP_T_BODY, body, 1000);
    for (int burst = 0; burst < 3; burst++) {
        for (int i = 0; i < 40; i++) /* ~40 KiB */
            assert_int_equal(imp_conn_send(s, &m), 0);
        if (burst == 0)
            assert_int_equal(k.live, base + 1);
        size_t calls = k.calls;
        drain(s);
        assert_int_equal(k.live, base + 1); /* kept */
        if (burst > 0)
            assert_int_equal(k.calls, calls); /* the burst needed no allocation */
    }
    size_t calls = k.calls;
    for (int i = 0; i < 40; i++)
        assert_int_equal(imp_conn_send(s, &m), 0);
    assert_int_equal(k.calls, calls);
    drain(s);
    imp_conn_trim(s);
    assert_int_equal(k.live, base);
    /* over 64 KiB: released once written */
    imp_msg_set_b(&m, IMP_T_BODY, body, sizeof body);
    assert_int_equal(imp_conn_send(s, &m), 0);
    assert_int_equal(k.live, base + 1);
    drain(s);
    assert_int_equal(k.live, base);
    imp_conn_free(s);
    assert_int_equal(k.live, 0);
}

/* ---- prepared frames ----------------------------------------------------------------------- */

/* The pending output bytes of c, copied. */
static uint8_t *out_copy(const imp_conn *c, size_t *len)
{
    const uint8_t *p;
    *len = imp_conn_pending_output(c, &p);
    uint8_t *b = malloc(*len ? *len : 1);
    assert_non_null(b);
    if (*len)
        memcpy(b, p, *len);
    return b;
}

/* imp_conn_send_prepared queues exactly the bytes imp_conn_send queues for the same message,
 * on as many connections as it is sent to; the prepared frame does not depend on the message
 * or the buffers it viewed once made. */
static void test_prepared_same_bytes(void **state)
{
    (void)state;
    imp_msg m;
    build(&m, IMP_DELIVER, 0);
    char body[] = "hello, room";
    imp_msg_set_b(&m, IMP_T_BODY, body, strlen(body));
    imp_msg_set_u(&m, IMP_T_CLASS, IMP_CLASS_TRANSIENT);
    imp_msg_set_u(&m, IMP_T_SEQ, 0);
    int err = 1;
    imp_prepared *p = imp_prepared_new(&m, NULL, &err);
    assert_non_null(p);
    assert_int_equal(err, 0);
    assert_int_equal(imp_prepared_size(p), (size_t)imp_msg_encoded_size(&m));

    imp_conn *a = server_at(NULL, IMP_S_READY, 0);
    assert_int_equal(imp_conn_send(a, &m), 0);
    assert_int_equal(imp_conn_send(a, &m), 0);
    size_t na;
    uint8_t *ba = out_copy(a, &na);
    memset(body, 'x', strlen(body)); /* the prepared frame holds its own bytes */
    build(&m, IMP_OK, 9);
    for (int i = 0; i < 3; i++) {
        imp_conn *b = server_at(NULL, IMP_S_READY, 0);
        assert_int_equal(imp_conn_send_prepared(b, p), 0);
        assert_int_equal(imp_conn_send_prepared(b, p), 0);
        size_t nb;
        uint8_t *bb = out_copy(b, &nb);
        assert_int_equal(nb, na);
        assert_memory_equal(bb, ba, na);
        outlist o;
        out_decode(b, &o);
        assert_int_equal(o.n, 2);
        assert_int_equal(o.m[1].type, IMP_DELIVER);
        imp_bytes got = imp_msg_b(&o.m[1], IMP_T_BODY);
        assert_int_equal(got.len, strlen("hello, room"));
        assert_memory_equal(got.p, "hello, room", got.len);
        assert_int_equal(imp_conn_state(b), IMP_S_READY);
        free(bb);
        imp_conn_free(b);
    }
    free(ba);
    imp_conn_free(a);
    imp_prepared_free(p);
    imp_prepared_free(NULL);
}

/* imp_prepared_new validates as imp_conn_send does: nothing is made from an invalid message. */
static void test_prepared_validates(void **state)
{
    (void)state;
    imp_msg m;
    int err = 0;
    imp_msg_init(&m, 0x99, 1); /* not a frame type */
    assert_null(imp_prepared_new(&m, NULL, &err));
    assert_int_equal(err, IMP_ERR_INVAL);
    build(&m, IMP_DELIVER, 0);
    imp_msg_clear(&m, IMP_T_SENDER); /* required */
    assert_null(imp_prepared_new(&m, NULL, &err));
    assert_int_equal(err, IMP_ERR_MISSING_FIELD);
    build(&m, IMP_DELIVER, 0);
    imp_msg_set_s(&m, IMP_T_SENDER, "no spaces");
    assert_null(imp_prepared_new(&m, NULL, NULL));
    assert_null(imp_prepared_new(&m, NULL, &err));
    assert_int_equal(err, IMP_ERR_BAD_NAME);
    build(&m, IMP_OK, 1);
    imp_msg_set_u(&m, IMP_T_USER, 1); /* a field OK does not have */
    assert_null(imp_prepared_new(&m, NULL, &err));
    assert_int_not_equal(err, 0);
}

/* The send table (SPEC 7.2/7.4) and the output cap still apply to every connection a prepared
 * frame is queued on; a refusal queues nothing and is not fatal; a fatal ERROR closes. */
static void test_prepared_state_and_cap(void **state)
{
    (void)state;
    imp_msg m;
    const uint8_t *out;
    build(&m, IMP_DELIVER, 0);
    imp_prepared *p = imp_prepared_new(&m, NULL, NULL);
    assert_non_null(p);
    size_t size = imp_prepared_size(p);

    /* DELIVER before READY: refused as imp_conn_send refuses it */
    imp_state early[] = {IMP_S_AWAIT_HELLO, IMP_S_AWAIT_AUTH, IMP_S_AUTHENTICATING};
    for (size_t i = 0; i < sizeof early / sizeof early[0]; i++) {
        imp_conn *s = server_at(NULL, early[i], 0);
        int want = imp_conn_send(s, &m);
        assert_true(want < 0);
        assert_int_equal(imp_conn_send_prepared(s, p), want);
        assert_int_equal(imp_conn_pending_output(s, &out), 0);
        assert_int_equal(imp_conn_state(s), early[i]);
        assert_int_equal(imp_conn_error(s), 0);
        imp_conn_free(s);
    }
    /* a client never sends DELIVER */
    imp_conn *cl = client_at(NULL, IMP_S_READY, 0, NULL);
    assert_int_equal(imp_conn_send_prepared(cl, p), IMP_ERR_NOT_ALLOWED);
    assert_int_equal(imp_conn_pending_output(cl, &out), 0);
    imp_conn_free(cl);

    /* the output cap: two fit, the third is refused (not fatal) until output is consumed */
    imp_config cfg;
    imp_config_default(&cfg, IMP_ROLE_SERVER);
    cfg.max_output = 2 * size + 1;
    imp_conn *s = server_at(&cfg, IMP_S_READY, 0);
    assert_int_equal(imp_conn_send_prepared(s, p), 0);
    assert_int_equal(imp_conn_send_prepared(s, p), 0);
    assert_int_equal(imp_conn_send_prepared(s, p), IMP_ERR_OUTPUT_FULL);
    assert_int_equal(imp_conn_pending_output(s, &out), 2 * size);
    assert_int_equal(imp_conn_state(s), IMP_S_READY);
    assert_int_equal(imp_conn_error(s), 0);
    imp_conn_consume_output(s, size);
    assert_int_equal(imp_conn_send_prepared(s, p), 0);
    assert_int_equal(imp_conn_pending_output(s, &out), 2 * size);
    imp_conn_free(s);

    /* a fatal ERROR sent prepared moves to CLOSING; after it, CLOSED */
    imp_msg e;
    build(&e, IMP_ERROR, 0);
    imp_msg_set_u(&e, IMP_T_CODE, 731);
    imp_prepared *pe = imp_prepared_new(&e, NULL, NULL);
    assert_non_null(pe);
    s = server_at(NULL, IMP_S_READY, 0);
    assert_int_equal(imp_conn_send_prepared(s, pe), 0);
    assert_int_equal(imp_conn_state(s), IMP_S_CLOSING);
    expect_output_error(s, 731);
    assert_int_equal(imp_conn_send_prepared(s, p), IMP_ERR_CLOSED);
    imp_conn_free(s);
    imp_prepared_free(pe);
    imp_prepared_free(p);
}

/* IMP-LIB-003: the prepared frame is allocated through the hook (one block, freed by
 * imp_prepared_free); allocation failure gives NULL and NOMEM with nothing leaked; a
 * connection whose output buffer cannot grow fails with NOMEM (fatal), as imp_conn_send. */
static void test_prepared_allocation(void **state)
{
    (void)state;
    counting k;
    counting_init(&k);
    imp_msg m;
    build(&m, IMP_DELIVER, 0);
    imp_prepared *p = imp_prepared_new(&m, &k.a, NULL);
    assert_non_null(p);
    assert_int_equal(k.live, 1);
    assert_true(k.largest >= imp_prepared_size(p));
    imp_prepared_free(p);
    assert_int_equal(k.live, 0);

    int err = 0;
    k.fail_at = k.calls + 1;
    assert_null(imp_prepared_new(&m, &k.a, &err));
    assert_int_equal(err, IMP_ERR_NOMEM);
    assert_int_equal(k.failures, 1);
    assert_int_equal(k.live, 0);

    p = imp_prepared_new(&m, NULL, NULL);
    assert_non_null(p);
    counting kc;
    counting_init(&kc);
    imp_config cfg;
    imp_config_default(&cfg, IMP_ROLE_SERVER);
    cfg.alloc = &kc.a;
    imp_conn *s = server_at(&cfg, IMP_S_READY, 0);
    imp_conn_trim(s); /* no output buffer: the next send allocates one */
    kc.fail_at = kc.calls + 1;
    assert_int_equal(imp_conn_send_prepared(s, p), IMP_ERR_NOMEM);
    assert_int_equal(kc.failures, 1);
    assert_int_equal(imp_conn_error(s), IMP_ERR_NOMEM);
    assert_int_equal(imp_conn_send_prepared(s, p), IMP_ERR_CLOSED);
    imp_conn_free(s);
    assert_int_equal(kc.live, 0);
    imp_prepared_free(p);
}

/* A prepared frame has the effects imp_conn_send has for the message it was prepared from, on
 * the state (a non-fatal ERROR answering LOGIN returns to AWAIT_AUTH, IMP-SESS-005; AUTH_OK
 * reaches READY and starts the PING timer; a client's LOGOUT waits for the OK with its own
 * request id, IMP-SESS-007) and on the bytes: checked on twin connections, one sent the
 * message, the other its prepared frame. */
static void expect_twins(imp_conn *a, imp_conn *b)
{
    size_t na, nb;
    uint8_t *ba = out_copy(a, &na), *bb = out_copy(b, &nb);
    assert_int_equal(na, nb);
    assert_memory_equal(ba, bb, na);
    assert_int_equal(imp_conn_state(a), imp_conn_state(b));
    assert_int_equal(imp_conn_error(a), imp_conn_error(b));
    assert_int_equal(imp_conn_next_deadline(a), imp_conn_next_deadline(b));
    free(ba);
    free(bb);
}

static void send_both(imp_conn *a, imp_conn *b, const imp_msg *m)
{
    int err = 1;
    imp_prepared *p = imp_prepared_new(m, NULL, &err);
    assert_non_null(p);
    assert_int_equal(err, 0);
    assert_int_equal(imp_conn_send(a, m), 0);
    assert_int_equal(imp_conn_send_prepared(b, p), 0);
    imp_prepared_free(p);
    expect_twins(a, b);
}

static void test_prepared_effects_match_send(void **state)
{
    (void)state;
    imp_msg m;
    imp_config cfg;
    imp_config_default(&cfg, IMP_ROLE_SERVER);
    cfg.ping_interval_ms = 5000;

    /* server, AUTHENTICATING: a non-fatal ERROR returns to AWAIT_AUTH (code 510 is 5xx) */
    imp_conn *a = server_at(&cfg, IMP_S_AUTHENTICATING, 100);
    imp_conn *b = server_at(&cfg, IMP_S_AUTHENTICATING, 100);
    build(&m, IMP_ERROR, 2);
    imp_msg_set_u(&m, IMP_T_CODE, 510);
    imp_msg_set_s(&m, IMP_T_TEXT, "try again");
    imp_msg_set_u(&m, IMP_T_RETRY_AFTER, 250);
    send_both(a, b, &m);
    assert_int_equal(imp_conn_state(b), IMP_S_AWAIT_AUTH);
    drain(a);
    drain(b);
    /* LOGIN again, then AUTH_OK: READY, and the PING timer runs */
    rx(a, IMP_LOGIN, 3);
    rx(b, IMP_LOGIN, 3);
    build(&m, IMP_AUTH_OK, 3);
    imp_msg_set_b(&m, IMP_T_TOKEN, "0123456789abcdef", 16);
    imp_msg_set_u(&m, IMP_T_ADMIN, 1);
    send_both(a, b, &m);
    assert_int_equal(imp_conn_state(b), IMP_S_READY);
    assert_int_equal(imp_conn_next_deadline(b), 100 + 5000);
    imp_conn_free(a);
    imp_conn_free(b);

    /* client, READY: LOGOUT with request id 77; an OK for another request changes nothing, the
     * OK for 77 closes */
    a = client_at(NULL, IMP_S_READY, 0, NULL);
    b = client_at(NULL, IMP_S_READY, 0, NULL);
    build(&m, IMP_LOGOUT, 77);
    send_both(a, b, &m);
    assert_int_equal(imp_conn_state(b), IMP_S_LOGOUT_SENT);
    rx(a, IMP_OK, 76);
    rx(b, IMP_OK, 76);
    assert_int_equal(imp_conn_state(b), IMP_S_LOGOUT_SENT);
    rx(a, IMP_OK, 77);
    rx(b, IMP_OK, 77);
    assert_int_equal(imp_conn_state(a), IMP_S_CLOSING);
    assert_int_equal(imp_conn_state(b), IMP_S_CLOSING);
    imp_conn_free(a);
    imp_conn_free(b);

    /* client, READY: a SEND with every field; a fatal ERROR (code 731) closes both */
    a = client_at(NULL, IMP_S_READY, 0, NULL);
    b = client_at(NULL, IMP_S_READY, 0, NULL);
    build(&m, IMP_SEND, 9);
    imp_msg_set_s(&m, IMP_T_CLIENT_MSG_ID, "c-1");
    imp_msg_set_u(&m, IMP_T_CLASS, IMP_CLASS_TRANSIENT);
    imp_msg_set_u(&m, IMP_T_ACK_MODE, IMP_ACK_DELIVERED);
    imp_msg_set_b(&m, IMP_T_HEADERS, "\x01k\x00\x01v", 5);
    send_both(a, b, &m);
    build(&m, IMP_ERROR, 10);
    imp_msg_set_u(&m, IMP_T_CODE, 731);
    send_both(a, b, &m);
    assert_int_equal(imp_conn_state(b), IMP_S_CLOSING);
    imp_conn_free(a);
    imp_conn_free(b);
}

/* ---- shared frames (queued by reference) --------------------------------------------------- */

/* The pending output as imp_conn_output_iov lists it, concatenated (the buffer is not laid out:
 * shared frames stay references); *nseg: the number of segments. */
static uint8_t *iov_copy(const imp_conn *c, size_t *len, int *nseg)
{
    imp_iovec v[64];
    int k = imp_conn_output_iov(c, v, 64);
    assert_true(k >= 0 && k < 64);
    size_t n = 0;
    for (int i = 0; i < k; i++) {
        assert_true(v[i].len > 0);
        n += v[i].len;
    }
    assert_int_equal(n, imp_conn_output_size(c));
    uint8_t *b = malloc(n ? n : 1), *w = b;
    assert_non_null(b);
    for (int i = 0; i < k; i++) {
        memcpy(w, v[i].base, v[i].len);
        w += v[i].len;
    }
    *len = n;
    *nseg = k;
    return b;
}

static imp_prepared *deliver_frame(const char *body, const imp_allocator *alloc)
{
    imp_msg m;
    build(&m, IMP_DELIVER, 0);
    imp_msg_set_b(&m, IMP_T_BODY, body, strlen(body));
    imp_msg_set_u(&m, IMP_T_CLASS, IMP_CLASS_TRANSIENT);
    imp_msg_set_u(&m, IMP_T_SEQ, 0);
    imp_prepared *p = imp_prepared_new(&m, alloc, NULL);
    assert_non_null(p);
    return p;
}

/* b's output, as listed and as laid out, is a's (a twin sent the same frames by copy). */
static void expect_same_output(imp_conn *a, imp_conn *b)
{
    size_t na, nb;
    int seg;
    uint8_t *ba = out_copy(a, &na), *bb = iov_copy(b, &nb, &seg);
    assert_int_equal(nb, na);
    assert_memory_equal(bb, ba, na);
    free(bb);
    free(ba);
}

/* imp_conn_send_shared queues the frame's bytes by reference, in order with everything else the
 * connection sends: the output (imp_conn_output_iov: the buffer, then the shared frames) is
 * byte for byte what sending copies gives; a frame queued after shared ones lays them out in
 * the buffer first (the order holds); imp_conn_pending_output lays everything out. Consuming
 * any number of bytes (inside the buffer, inside a frame, across both) leaves exactly the rest. */
static void test_shared_same_bytes_and_order(void **state)
{
    (void)state;
    imp_prepared *p1 = deliver_frame("one", NULL), *p2 = deliver_frame("second frame", NULL);
    imp_conn *a = server_at(NULL, IMP_S_READY, 0), *b = server_at(NULL, IMP_S_READY, 0);
    size_t n;
    int seg;
    uint8_t *t = iov_copy(b, &n, &seg);
    assert_int_equal(n, 0);
    assert_int_equal(seg, 0);
    free(t);
    for (int round = 0; round < 3; round++) {
        tx(a, IMP_OK, 5);
        tx(b, IMP_OK, 5);
        const imp_prepared *seq[] = {p1, p1, p2};
        for (int i = 0; i < 3; i++) {
            assert_int_equal(imp_conn_send_prepared(a, seq[i]), 0);
            assert_int_equal(imp_conn_send_shared(b, (imp_prepared *)seq[i]), 0);
        }
        t = iov_copy(b, &n, &seg);
        free(t);
        assert_int_equal(seg, 4); /* the OK in the buffer, three references */
        expect_same_output(a, b);
        tx(a, IMP_OK, 6); /* after the shared frames: they are laid out first */
        tx(b, IMP_OK, 6);
        t = iov_copy(b, &n, &seg);
        free(t);
        assert_int_equal(seg, 1);
        expect_same_output(a, b);
        assert_int_equal(imp_conn_send_prepared(a, p2), 0);
        assert_int_equal(imp_conn_send_shared(b, p2), 0);
        assert_int_equal(imp_conn_send_prepared(a, p1), 0);
        assert_int_equal(imp_conn_send_shared(b, p1), 0);
        expect_same_output(a, b);
        /* consumed a few bytes at a time, in steps that cut frames anywhere */
        size_t step = 7 + 10 * (size_t)round;
        int added = 0;
        while (imp_conn_output_size(b) > 0) {
            size_t left = imp_conn_output_size(b), k = step < left ? step : left;
            imp_conn_consume_output(a, k);
            imp_conn_consume_output(b, k);
            expect_same_output(a, b);
            if (round == 1 && !added && left > 100 && left < 200) { /* queued mid-way */
                added = 1;
                assert_int_equal(imp_conn_send_prepared(a, p1), 0);
                assert_int_equal(imp_conn_send_shared(b, p1), 0);
                expect_same_output(a, b);
            }
        }
        const uint8_t *o;
        assert_int_equal(imp_conn_pending_output(a, &o), 0);
    }
    /* laid out by imp_conn_pending_output: the same bytes, then one segment */
    assert_int_equal(imp_conn_send_prepared(a, p1), 0);
    assert_int_equal(imp_conn_send_shared(b, p1), 0);
    assert_int_equal(imp_conn_send_prepared(a, p2), 0);
    assert_int_equal(imp_conn_send_shared(b, p2), 0);
    imp_conn_consume_output(a, 3);
    imp_conn_consume_output(b, 3); /* inside the first reference */
    size_t na, nb;
    uint8_t *ba = out_copy(a, &na), *bb = out_copy(b, &nb);
    assert_int_equal(nb, na);
    assert_memory_equal(bb, ba, na);
    free(ba);
    free(bb);
    t = iov_copy(b, &n, &seg);
    free(t);
    assert_int_equal(seg, 1);
    imp_conn_consume_output(b, imp_prepared_size(p1) - 3);
    outlist o;
    out_decode(b, &o);
    assert_int_equal(o.n, 1); /* the second */
    assert_int_equal(o.m[0].type, IMP_DELIVER);
    imp_conn_free(a);
    imp_conn_free(b);
    imp_prepared_free(p1);
    imp_prepared_free(p2);
}

/* imp_conn_output_iov lists at most max segments, from the first. */
static void test_shared_iov_max(void **state)
{
    (void)state;
    imp_prepared *p = deliver_frame("x", NULL);
    imp_conn *s = server_at(NULL, IMP_S_READY, 0);
    tx(s, IMP_OK, 5);
    for (int i = 0; i < 5; i++)
        assert_int_equal(imp_conn_send_shared(s, p), 0);
    imp_iovec v[8];
    assert_int_equal(imp_conn_output_iov(s, v, 0), 0);
    assert_int_equal(imp_conn_output_iov(s, v, 2), 2);
    size_t ok_len = v[0].len;
    assert_int_equal(v[1].len, imp_prepared_size(p));
    assert_int_equal(imp_conn_output_iov(s, v, 8), 6);
    const uint8_t *o;
    assert_int_equal(imp_conn_pending_output(s, &o), ok_len + 5 * imp_prepared_size(p));
    assert_int_equal(imp_conn_output_iov(s, v, 8), 1); /* laid out now */
    assert_ptr_equal(v[0].base, o);
    imp_conn_free(s);
    imp_prepared_free(p);
}

/* A shared frame lives while any connection holds it: imp_prepared_free drops the caller's
 * reference, writing it out or freeing the connection drops the connection's (IMP-LIB-003: all
 * through the frame's allocator, nothing left). */
static void test_shared_lifetime(void **state)
{
    (void)state;
    counting k;
    counting_init(&k);
    imp_prepared *p = deliver_frame("kept while queued", &k.a);
    size_t size = imp_prepared_size(p);
    imp_conn *a = server_at(NULL, IMP_S_READY, 0), *b = server_at(NULL, IMP_S_READY, 0);
    assert_int_equal(imp_conn_send_shared(a, p), 0);
    assert_int_equal(imp_conn_send_shared(a, p), 0);
    assert_int_equal(imp_conn_send_shared(b, p), 0);
    imp_prepared_free(p);
    assert_int_equal(k.live, 1);
    imp_conn_consume_output(a, size + 1); /* one written, one started */
    assert_int_equal(k.live, 1);
    imp_conn_consume_output(a, size - 1);
    assert_int_equal(imp_conn_output_size(a), 0);
    assert_int_equal(k.live, 1); /* b still holds it */
    imp_conn_free(b);
    assert_int_equal(k.live, 0);
    imp_conn_free(a);
}

/* The send table, the client's limits and the output cap apply as to imp_conn_send_prepared
 * (the shared bytes count against max_output); a frame sent before authentication is copied,
 * with the same effects; a fatal ERROR closes. */
static void test_shared_state_and_cap(void **state)
{
    (void)state;
    imp_prepared *p = deliver_frame("capped", NULL);
    size_t size = imp_prepared_size(p);
    imp_conn *s = server_at(NULL, IMP_S_AWAIT_AUTH, 0);
    assert_true(imp_conn_send_shared(s, p) < 0);
    assert_int_equal(imp_conn_output_size(s), 0);
    imp_conn_free(s);
    imp_conn *cl = client_at(NULL, IMP_S_READY, 0, NULL);
    assert_int_equal(imp_conn_send_shared(cl, p), IMP_ERR_NOT_ALLOWED);
    imp_conn_free(cl);
    /* a client's frame over the server's announced limit (IMP-MSG-003): TOO_LARGE */
    imp_msg w, big;
    build(&w, IMP_WELCOME, 0);
    imp_msg_set_u(&w, IMP_T_MAX_FRAME, 8192);
    cl = client_at(NULL, IMP_S_READY, 0, &w);
    static uint8_t body[8192];
    build(&big, IMP_SEND, 4);
    imp_msg_set_b(&big, IMP_T_BODY, body, sizeof body);
    imp_prepared *pb = imp_prepared_new(&big, NULL, NULL);
    assert_non_null(pb);
    assert_int_equal(imp_conn_send_shared(cl, pb), IMP_ERR_TOO_LARGE);
    assert_int_equal(imp_conn_send_prepared(cl, pb), IMP_ERR_TOO_LARGE);
    assert_int_equal(imp_conn_output_size(cl), 0);
    assert_int_equal(imp_conn_error(cl), 0);
    imp_prepared_free(pb);
    imp_conn_free(cl);

    imp_config cfg;
    imp_config_default(&cfg, IMP_ROLE_SERVER);
    cfg.max_output = 2 * size + 1;
    s = server_at(&cfg, IMP_S_READY, 0);
    assert_int_equal(imp_conn_send_shared(s, p), 0);
    assert_int_equal(imp_conn_send_shared(s, p), 0);
    assert_int_equal(imp_conn_send_shared(s, p), IMP_ERR_OUTPUT_FULL);
    assert_int_equal(imp_conn_send_prepared(s, p), IMP_ERR_OUTPUT_FULL);
    imp_msg m;
    build(&m, IMP_DELIVER, 0);
    imp_msg_set_b(&m, IMP_T_BODY, "capped", 6);
    imp_msg_set_u(&m, IMP_T_CLASS, IMP_CLASS_TRANSIENT);
    imp_msg_set_u(&m, IMP_T_SEQ, 0);
    assert_int_equal(imp_conn_send(s, &m), IMP_ERR_OUTPUT_FULL);
    assert_int_equal(imp_conn_output_size(s), 2 * size);
    assert_int_equal(imp_conn_error(s), 0);
    imp_conn_consume_output(s, size);
    assert_int_equal(imp_conn_send_shared(s, p), 0);
    assert_int_equal(imp_conn_output_size(s), 2 * size);
    imp_conn_free(s);

    /* AUTH_OK shared in AUTHENTICATING: copied (before authentication), READY as sent */
    imp_msg ok;
    build(&ok, IMP_AUTH_OK, 2);
    imp_msg_set_b(&ok, IMP_T_TOKEN, "0123456789abcdef", 16);
    imp_prepared *pa = imp_prepared_new(&ok, NULL, NULL);
    assert_non_null(pa);
    imp_conn *x = server_at(NULL, IMP_S_AUTHENTICATING, 0);
    imp_conn *y = server_at(NULL, IMP_S_AUTHENTICATING, 0);
    assert_int_equal(imp_conn_send(x, &ok), 0);
    assert_int_equal(imp_conn_send_shared(y, pa), 0);
    expect_twins(x, y);
    assert_int_equal(imp_conn_state(y), IMP_S_READY);
    imp_conn_free(x);
    imp_conn_free(y);
    imp_prepared_free(pa);

    /* a fatal ERROR shared: CLOSING, then CLOSED */
    imp_msg e;
    build(&e, IMP_ERROR, 0);
    imp_msg_set_u(&e, IMP_T_CODE, 731);
    imp_prepared *pe = imp_prepared_new(&e, NULL, NULL);
    assert_non_null(pe);
    s = server_at(NULL, IMP_S_READY, 0);
    assert_int_equal(imp_conn_send_shared(s, pe), 0);
    assert_int_equal(imp_conn_state(s), IMP_S_CLOSING);
    expect_output_error(s, 731);
    assert_int_equal(imp_conn_send_shared(s, p), IMP_ERR_CLOSED);
    imp_conn_free(s);
    imp_prepared_free(pe);
    imp_prepared_free(p);
}

/* IMP-LIB-003: the list of shared frames is allocated through the connection's hook: it grows
 * (failure: NOMEM, fatal, nothing queued), is reused once written, released by imp_conn_trim
 * and imp_conn_free; laying the frames out into a buffer that cannot grow leaves them listed
 * (imp_conn_pending_output returns the bytes before them) until it can. */
static void test_shared_allocation(void **state)
{
    (void)state;
    imp_prepared *p = deliver_frame("alloc", NULL);
    size_t size = imp_prepared_size(p);
    counting k;
    counting_init(&k);
    imp_config cfg;
    imp_config_default(&cfg, IMP_ROLE_SERVER);
    cfg.alloc = &k.a;
    imp_conn *s = server_at(&cfg, IMP_S_READY, 0);
    imp_conn_trim(s);
    size_t base = k.live;
    k.fail_at = k.calls + 1; /* the list's first allocation */
    assert_int_equal(imp_conn_send_shared(s, p), IMP_ERR_NOMEM);
    assert_int_equal(imp_conn_error(s), IMP_ERR_NOMEM);
    assert_int_equal(imp_conn_send_shared(s, p), IMP_ERR_CLOSED);
    imp_conn_free(s);
    assert_int_equal(k.live, 0);

    counting_init(&k);
    s = server_at(&cfg, IMP_S_READY, 0);
    imp_conn_trim(s);
    base = k.live;
    int queued = 0;
    while (k.calls == 0 || k.live == base) { /* up to the first list */
        assert_int_equal(imp_conn_send_shared(s, p), 0);
        queued++;
    }
    size_t calls = k.calls;
    while (k.calls == calls) { /* fill it: the next one grows it */
        assert_int_equal(imp_conn_send_shared(s, p), 0);
        queued++;
    }
    assert_int_equal(imp_conn_output_size(s), (size_t)queued * size);
    /* one written: the list makes room at its front before it grows again */
    imp_conn_consume_output(s, size);
    calls = k.calls;
    int more = 0;
    while (k.calls == calls) {
        assert_int_equal(imp_conn_send_shared(s, p), 0);
        more++;
    }
    assert_int_equal(imp_conn_output_size(s), (size_t)(queued - 1 + more) * size);
    /* all written: reused, no allocation */
    imp_conn_consume_output(s, imp_conn_output_size(s));
    calls = k.calls;
    for (int i = 0; i < queued; i++)
        assert_int_equal(imp_conn_send_shared(s, p), 0);
    assert_int_equal(k.calls, calls);
    /* a list grown past what is kept (256 frames) is freed once written */
    imp_conn_consume_output(s, imp_conn_output_size(s));
    for (int i = 0; i < 300; i++)
        assert_int_equal(imp_conn_send_shared(s, p), 0);
    assert_int_equal(k.live, base + 1);
    imp_conn_consume_output(s, imp_conn_output_size(s));
    assert_int_equal(k.live, base);
    assert_int_equal(imp_conn_send_shared(s, p), 0);
    assert_int_equal(k.live, base + 1);
    /* growing fails: NOMEM, fatal, the frames queued before are still there */
    k.fail_at = k.calls + 1;
    size_t before = imp_conn_output_size(s);
    while (imp_conn_error(s) == 0)
        (void)imp_conn_send_shared(s, p);
    assert_int_equal(imp_conn_error(s), IMP_ERR_NOMEM);
    assert_true(imp_conn_output_size(s) >= before);
    imp_conn_free(s);
    assert_int_equal(k.live, 0);

    /* laying out fails: pending_output gives what precedes the frames, then all of it */
    counting_init(&k);
    s = server_at(&cfg, IMP_S_READY, 0);
    tx(s, IMP_OK, 3);
    const uint8_t *o;
    size_t ok_len = imp_conn_pending_output(s, &o);
    for (int i = 0; i < 100; i++)
        assert_int_equal(imp_conn_send_shared(s, p), 0);
    k.fail_at = k.calls + 1; /* the buffer's growth */
    assert_int_equal(imp_conn_pending_output(s, &o), ok_len);
    assert_int_equal(imp_conn_output_size(s), ok_len + 100 * size);
    imp_conn_consume_output(s, ok_len);
    assert_int_equal(imp_conn_pending_output(s, &o), 100 * size);
    drain(s);
    imp_conn_trim(s); /* the list too */
    imp_conn *fresh = server_at(&cfg, IMP_S_READY, 0);
    imp_conn_trim(fresh);
    assert_int_equal(k.live, 2 * base);
    imp_conn_free(fresh);
    imp_conn_free(s);
    assert_int_equal(k.live, 0);
    imp_prepared_free(p);
}

/* Output written a little at a time while frames keep being queued (a slow reader of a room's
 * fan-out): the pending output is always exactly the frames queued minus the bytes consumed,
 * and the buffer grows only when the unwritten bytes no longer fit it (no allocation while the
 * unwritten output plus the next frame fit the buffer). */
static void test_output_partly_written(void **state)
{
    (void)state;
    counting k;
    counting_init(&k);
    imp_config cfg;
    imp_config_default(&cfg, IMP_ROLE_SERVER);
    cfg.alloc = &k.a;
    imp_conn *s = server_at(&cfg, IMP_S_READY, 0);
    imp_msg m;
    build(&m, IMP_DELIVER, 0);
    size_t fsize;
    uint8_t *frame = encode_alloc(&m, &fsize);
    size_t queued = 0, consumed = 0, grows = 0;
    imp_conn_trim(s); /* no output buffer yet */
    for (int i = 0; i < 2000; i++) {
        size_t calls = k.calls;
        const uint8_t *out;
        size_t before = imp_conn_pending_output(s, &out);
        assert_int_equal(imp_conn_send(s, &m), 0);
        queued++;
        if (k.calls != calls)
            grows++;
        size_t pending = imp_conn_pending_output(s, &out);
        assert_int_equal(pending, before + fsize);
        /* every pending byte is where it belongs in the stream of identical frames */
        size_t off = consumed % fsize;
        for (size_t j = 0; j < pending; j++)
            if (out[j] != frame[(off + j) % fsize])
                fail_msg("send %d: pending byte %zu of %zu differs", i, j, pending);
        assert_int_equal(consumed + pending, queued * fsize);
        /* write a little less than was queued on most turns, everything now and then */
        size_t n = i % 97 == 96 ? pending : (size_t)(i % 7) * fsize / 3;
        imp_conn_consume_output(s, n);
        consumed += n < pending ? n : pending;
    }
    /* the unwritten output stays small (at most ~5 frames a turn more than written), so the
     * buffer needed only a few allocations */
    assert_true(grows <= 8);
    assert_true(grows >= 1);
    free(frame);
    imp_conn_free(s);
    assert_int_equal(k.live, 0);
}

/* ---- deferred LOGOUT (IMP-SESS-008) ------------------------------------------------------- */

/* Send a built message of this type and id; imp_conn_send must return want. */
static void tx_expect(imp_conn *c, uint8_t type, uint32_t id, int want)
{
    imp_msg m;
    build(&m, type, id);
    assert_int_equal(imp_conn_send(c, &m), want);
}

/* SEND 5, SEND 6, LOGOUT 7, PING 8, SEND 9 in one piece of input. */
static size_t pipelined_logout(uint8_t *buf, size_t cap)
{
    imp_msg ms[5];
    build(&ms[0], IMP_SEND, 5);
    build(&ms[1], IMP_SEND, 6);
    build(&ms[2], IMP_LOGOUT, 7);
    build(&ms[3], IMP_PING, 8);
    build(&ms[4], IMP_SEND, 9);
    return encode_seq(buf, cap, ms, 5);
}

/* Option off (the default, and set back to off): LOGOUT is answered by the library at once and
 * closes, byte for byte as before (IMP-MSG-005, IMP-SESS-003); the option is the server's. */
static void test_defer_logout_off(void **state)
{
    (void)state;
    uint8_t buf[512];
    imp_msg ev;
    size_t n = pipelined_logout(buf, sizeof buf);
    imp_conn *a = server_at(NULL, IMP_S_READY, 0);
    imp_conn *b = server_at(NULL, IMP_S_READY, 0);
    assert_int_equal(imp_conn_set_defer_logout(b, 1), 0);
    assert_int_equal(imp_conn_set_defer_logout(b, 0), 0);
    assert_int_equal(imp_conn_feed(a, buf, n), (imp_ssize)n);
    assert_int_equal(imp_conn_feed(b, buf, n), (imp_ssize)n);
    imp_conn *both[2] = {a, b};
    for (int i = 0; i < 2; i++) {
        expect_event(both[i], IMP_SEND, 5);
        expect_event(both[i], IMP_SEND, 6);
        expect_event(both[i], IMP_LOGOUT, 7);
        assert_int_equal(imp_conn_next_event(both[i], &ev), 0);
        assert_int_equal(imp_conn_state(both[i]), IMP_S_CLOSING);
        assert_true(imp_conn_want_close(both[i]));
        outlist o;
        out_decode(both[i], &o);
        assert_int_equal(o.n, 1); /* the OK, nothing for PING 8 */
        assert_int_equal(o.m[0].type, IMP_OK);
        assert_int_equal(o.m[0].request_id, 7);
        /* the answers to SEND 5 and 6 can no longer be sent */
        tx_expect(both[i], IMP_ACK, 5, IMP_ERR_CLOSED);
    }
    expect_twins(a, b);
    imp_conn_free(a);
    imp_conn_free(b);
    /* a client has no such option */
    imp_conn *c = client_at(NULL, IMP_S_READY, 0, NULL);
    assert_int_equal(imp_conn_set_defer_logout(c, 1), IMP_ERR_INVAL);
    tx(c, IMP_LOGOUT, 7);
    assert_int_equal(imp_conn_state(c), IMP_S_LOGOUT_SENT);
    imp_conn_free(c);
}

/* Option on: LOGOUT is an event like before but nothing is sent by itself; the connection is in
 * LOGOUT_RCVD, where input after LOGOUT is ignored (no event, no PONG, taken and dropped), no
 * timer runs, and the application still sends what it owes (ACK, ERROR, OK for other requests,
 * other APP_S frames) in the order it wants; the OK with LOGOUT's request id comes last and
 * closes; later sends are refused with CLOSED. */
static void test_defer_logout_on(void **state)
{
    (void)state;
    uint8_t buf[512];
    imp_msg ev, m;
    imp_config cfg;
    imp_config_default(&cfg, IMP_ROLE_SERVER);
    cfg.ping_interval_ms = 1000;
    size_t n = pipelined_logout(buf, sizeof buf);
    imp_conn *s = server_at(&cfg, IMP_S_READY, 0);
    assert_int_equal(imp_conn_set_defer_logout(s, 1), 0);
    assert_int_equal(imp_conn_feed(s, buf, n), (imp_ssize)n);
    expect_event(s, IMP_SEND, 5);
    expect_event(s, IMP_SEND, 6);
    expect_event(s, IMP_LOGOUT, 7);
    assert_int_equal(imp_conn_state(s), IMP_S_LOGOUT_RCVD);
    assert_int_equal(imp_conn_next_event(s, &ev), 0); /* PING 8 and SEND 9: ignored */
    assert_int_equal(imp_conn_next_event(s, &ev), 0);
    assert_false(imp_conn_want_close(s));
    assert_int_equal(imp_conn_error(s), 0);
    const uint8_t *p;
    assert_int_equal(imp_conn_pending_output(s, &p), 0); /* no OK, no PONG */
    /* more input, even garbage, is taken and dropped */
    assert_int_equal(imp_conn_feed(s, buf, n), (imp_ssize)n);
    assert_int_equal(imp_conn_feed(s, (const uint8_t *)"\xff\xff\xff\xff", 4), 4);
    assert_int_equal(imp_conn_next_event(s, &ev), 0);
    assert_int_equal(imp_conn_error(s), 0);
    /* no keepalive while the answers are owed */
    assert_int_equal(imp_conn_next_deadline(s), UINT64_MAX);
    assert_int_equal(imp_conn_tick(s, 10000), 0);
    assert_int_equal(imp_conn_pending_output(s, &p), 0);
    /* what the application owes, and what it may not send */
    tx(s, IMP_ACK, 5);
    build(&m, IMP_ERROR, 6);
    imp_msg_set_u(&m, IMP_T_CODE, 504); /* QUOTA: not fatal */
    assert_int_equal(imp_conn_send(s, &m), 0);
    assert_int_equal(imp_conn_state(s), IMP_S_LOGOUT_RCVD);
    tx(s, IMP_OK, 99); /* an OK for another request does not close */
    assert_int_equal(imp_conn_state(s), IMP_S_LOGOUT_RCVD);
    tx(s, IMP_DELIVER, 0);
    tx_expect(s, IMP_PING, 3, IMP_ERR_NOT_ALLOWED);
    tx_expect(s, IMP_PONG, 8, IMP_ERR_NOT_ALLOWED);
    tx_expect(s, IMP_AUTH_OK, 2, IMP_ERR_NOT_ALLOWED);
    assert_int_equal(imp_conn_state(s), IMP_S_LOGOUT_RCVD);
    assert_false(imp_conn_want_close(s));
    tx(s, IMP_OK, 7);
    assert_int_equal(imp_conn_state(s), IMP_S_CLOSING);
    assert_true(imp_conn_want_close(s));
    tx_expect(s, IMP_ACK, 9, IMP_ERR_CLOSED);
    tx_expect(s, IMP_OK, 7, IMP_ERR_CLOSED);
    outlist o;
    out_decode(s, &o);
    static const uint8_t types[] = {IMP_ACK, IMP_ERROR, IMP_OK, IMP_DELIVER, IMP_OK};
    static const uint32_t ids[] = {5, 6, 99, 0, 7};
    assert_int_equal(o.n, 5);
    for (int i = 0; i < 5; i++) {
        assert_int_equal(o.m[i].type, types[i]);
        assert_int_equal(o.m[i].request_id, ids[i]);
    }
    assert_int_equal(imp_conn_error(s), 0);
    imp_conn_free(s);
}

/* Option on: the OK that closes may be a prepared frame too; a fatal ERROR or imp_conn_close
 * (a server shutting down) in LOGOUT_RCVD closes with the ERROR and no OK; the OK for a LOGOUT
 * with request id 0 is OK 0. */
static void test_defer_logout_other_ends(void **state)
{
    (void)state;
    imp_msg m;
    outlist o;
    /* prepared OK */
    imp_conn *s = server_at(NULL, IMP_S_READY, 0);
    assert_int_equal(imp_conn_set_defer_logout(s, 1), 0);
    rx(s, IMP_LOGOUT, 0);
    assert_int_equal(imp_conn_state(s), IMP_S_LOGOUT_RCVD);
    build(&m, IMP_OK, 1);
    imp_prepared *p1 = imp_prepared_new(&m, NULL, NULL);
    build(&m, IMP_OK, 0);
    imp_prepared *p0 = imp_prepared_new(&m, NULL, NULL);
    assert_non_null(p1);
    assert_non_null(p0);
    assert_int_equal(imp_conn_send_prepared(s, p1), 0);
    assert_int_equal(imp_conn_state(s), IMP_S_LOGOUT_RCVD);
    assert_int_equal(imp_conn_send_prepared(s, p0), 0);
    assert_int_equal(imp_conn_state(s), IMP_S_CLOSING);
    assert_int_equal(imp_conn_send_prepared(s, p0), IMP_ERR_CLOSED);
    imp_prepared_free(p0);
    imp_prepared_free(p1);
    imp_conn_free(s);
    /* fatal ERROR sent by the application */
    s = server_at(NULL, IMP_S_READY, 0);
    assert_int_equal(imp_conn_set_defer_logout(s, 1), 0);
    rx(s, IMP_LOGOUT, 7);
    build(&m, IMP_ERROR, 0);
    imp_msg_set_u(&m, IMP_T_CODE, 731);
    assert_int_equal(imp_conn_send(s, &m), 0);
    assert_int_equal(imp_conn_state(s), IMP_S_CLOSING);
    imp_conn_free(s);
    /* imp_conn_close */
    s = server_at(NULL, IMP_S_READY, 0);
    assert_int_equal(imp_conn_set_defer_logout(s, 1), 0);
    rx(s, IMP_LOGOUT, 7);
    imp_conn_close(s, 730, "shutting down");
    assert_int_equal(imp_conn_state(s), IMP_S_CLOSING);
    assert_true(imp_conn_want_close(s));
    out_decode(s, &o);
    assert_int_equal(o.n, 1);
    assert_int_equal(o.m[0].type, IMP_ERROR);
    assert_int_equal(imp_msg_u(&o.m[0], IMP_T_CODE, 0), 730);
    assert_int_equal(imp_conn_error(s), 0);
    imp_conn_free(s);
}

/* Option on, before READY: nothing but the authentication can be owed, and LOGOUT abandons it;
 * the OK is sent at once and the connection closes, as with the option off (IMP-SESS-008). The
 * option may be set at any time before the LOGOUT. */
static void test_defer_logout_before_ready(void **state)
{
    (void)state;
    imp_state sts[2] = {IMP_S_AWAIT_AUTH, IMP_S_AUTHENTICATING};
    for (int i = 0; i < 2; i++) {
        imp_conn *s = server_at(NULL, sts[i], 0);
        assert_int_equal(imp_conn_set_defer_logout(s, 1), 0);
        rx(s, IMP_LOGOUT, 7);
        assert_int_equal(imp_conn_state(s), IMP_S_CLOSING);
        outlist o;
        out_decode(s, &o);
        assert_int_equal(o.n, 1);
        assert_int_equal(o.m[0].type, IMP_OK);
        assert_int_equal(o.m[0].request_id, 7);
        tx_expect(s, IMP_AUTH_OK, 2, IMP_ERR_CLOSED);
        imp_conn_free(s);
    }
    /* set before HELLO: the LOGOUT in READY is deferred */
    imp_conn *s = imp_conn_new(IMP_ROLE_SERVER, NULL, 0);
    assert_non_null(s);
    assert_int_equal(imp_conn_set_defer_logout(s, 1), 0);
    rx(s, IMP_HELLO, 1);
    rx(s, IMP_LOGIN, 2);
    tx(s, IMP_AUTH_OK, 2);
    drain(s);
    rx(s, IMP_LOGOUT, 3);
    assert_int_equal(imp_conn_state(s), IMP_S_LOGOUT_RCVD);
    const uint8_t *p;
    assert_int_equal(imp_conn_pending_output(s, &p), 0);
    imp_conn_free(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_config_default),
        cmocka_unit_test(test_conn_new_rejects_invalid_config),
        cmocka_unit_test(test_conn_new_rejects_bad_agent_and_caps),
        cmocka_unit_test(test_client_hello),
        cmocka_unit_test(test_welcome_carries_limits),
        cmocka_unit_test(test_client_rejects_welcome_version),
        cmocka_unit_test(test_version_mismatch_answers_hello),
        cmocka_unit_test(test_no_event_without_input),
        cmocka_unit_test(test_send_validates),
        cmocka_unit_test(test_client_send_limits),
        cmocka_unit_test(test_session_in_memory),
        cmocka_unit_test(test_session_split_invariance),
        cmocka_unit_test(test_server_recv_limits),
        cmocka_unit_test(test_client_recv_limits),
        cmocka_unit_test(test_sticky_error),
        cmocka_unit_test(test_closing_ignores_buffered_input),
        cmocka_unit_test(test_close),
        cmocka_unit_test(test_feed_flow_control),
        cmocka_unit_test(test_output_partial_consume),
        cmocka_unit_test(test_output_cap),
        cmocka_unit_test(test_auth_deadline_server),
        cmocka_unit_test(test_auth_deadline_client),
        cmocka_unit_test(test_auth_deadline_ready_and_disabled),
        cmocka_unit_test(test_timer_saturation),
        cmocka_unit_test(test_keepalive_late_ticks),
        cmocka_unit_test(test_keepalive),
        cmocka_unit_test(test_keepalive_late_pong_resets),
        cmocka_unit_test(test_ping_answered),
        cmocka_unit_test(test_time_backwards),
        cmocka_unit_test(test_allocations_through_hook),
        cmocka_unit_test(test_trim),
        cmocka_unit_test(test_set_max_output),
        cmocka_unit_test(test_idle_object_small),
        cmocka_unit_test(test_allocator_copied),
        cmocka_unit_test(test_first_buffers_small),
        cmocka_unit_test(test_allocation_failure_whole),
        cmocka_unit_test(test_allocation_failure_chunked),
        cmocka_unit_test(test_no_allocation_before_size_check),
        cmocka_unit_test(test_event_views),
        cmocka_unit_test(test_output_buffer_kept_while_busy),
        cmocka_unit_test(test_prepared_same_bytes),
        cmocka_unit_test(test_prepared_validates),
        cmocka_unit_test(test_prepared_state_and_cap),
        cmocka_unit_test(test_prepared_allocation),
        cmocka_unit_test(test_prepared_effects_match_send),
        cmocka_unit_test(test_shared_same_bytes_and_order),
        cmocka_unit_test(test_shared_iov_max),
        cmocka_unit_test(test_shared_lifetime),
        cmocka_unit_test(test_shared_state_and_cap),
        cmocka_unit_test(test_shared_allocation),
        cmocka_unit_test(test_defer_logout_off),
        cmocka_unit_test(test_defer_logout_on),
        cmocka_unit_test(test_defer_logout_other_ends),
        cmocka_unit_test(test_defer_logout_before_ready),
        cmocka_unit_test(test_output_partly_written),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
