/* Test harness for the server core (server.h): a real ":memory:" SQLite store, a real hash pool
 * (threads = 0: jobs run inside submit, results wait for ims_server_auth_ready) with the
 * smallest Argon2id parameters, a fake clock and fake io, and clients that are real libimp
 * client-role connections. Bytes move between the two sides only when a test says so:
 * tc_send() hands the client's output to ims_client_input(), tc_next() hands the server's
 * output to the client and returns its next event. turn() is what the event loop does after
 * I/O (auth results, then the group commit and the turn's ACKs and DELIVERs).
 *
 * Everything is static inline so that each test file uses what it needs.
 */
#ifndef IMS_TEST_SERVER_HARNESS_H
#define IMS_TEST_SERVER_HARNESS_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include <imp/imp.h>

#include "auth.h"
#include "config.h"
#include "log.h"
#include "server.h"
#include "store.h"

#define PW "password-1"

typedef struct th {
    ims_cfg cfg;
    ims_store *store;
    ims_auth *auth;
    ims_server *srv;
    uint64_t mono;
    int64_t wall;
    int fail_commit; /* the next commits fail (without committing: see test_commit_failure) */
} th;

typedef struct tc {
    th *h;
    ims_client *sc;
    imp_conn *cc;
    int wakes;
    uint32_t next_req;
    uint8_t token[64];
    size_t token_len;
} tc;

static inline uint64_t h_mono(void *ud)
{
    return ((th *)ud)->mono;
}

static inline int64_t h_wall(void *ud)
{
    return ((th *)ud)->wall;
}

static inline void h_want_write(void *io)
{
    ((tc *)io)->wakes++;
}

static inline int h_commit(void *ud, ims_store *s)
{
    th *h = ud;
    if (h->fail_commit)
        return IMP_ERR_STORAGE;
    return ims_store_commit(s);
}

/* Every setting explicit (tests do not depend on the defaults of config.c). */
static inline void h_cfg(ims_cfg *c)
{
    memset(c, 0, sizeof *c);
    c->registration = 1;
    c->hash_opslimit = crypto_pwhash_OPSLIMIT_MIN;
    c->hash_memlimit = crypto_pwhash_MEMLIMIT_MIN;
    c->hash_queue = 8;
    c->token_ttl_ms = 3600000;
    c->max_sessions_per_user = 4;
    c->addr_max_failures = 100;
    c->addr_window_ms = 60000;
    c->addr_ban_ms = 300000;
    c->user_free_failures = 100;
    c->user_backoff_ms = 1000;
    c->user_backoff_max_ms = 60000;
    c->max_frame = 1048576;
    c->max_frame_preauth = 4096;
    c->auth_timeout_ms = 10000;
    c->ping_interval_ms = 0; /* no PINGs in the way of the tests */
    c->ping_max_missed = 2;
    c->output_soft = 1048576;
    c->output_soft_ms = 10000;
    c->output_hard = 8 * 1048576;
    c->msg_rate = 0;
    c->msg_burst = 20000;
    c->max_connections = 100;
    c->max_connections_per_addr = 100;
    c->offline_quota = 10000;
    c->room_history = 1000;
    c->page_size = 100;
    c->page_max = 1000;
    snprintf(c->log_level, sizeof c->log_level, "error");
    snprintf(c->log_format, sizeof c->log_format, "text");
}

/* Starts the server with h->cfg (call h_cfg and adjust first, or h_start does h_cfg). */
static inline void h_start_cfg(th *h)
{
    char err[256];
    ims_log_setup("error", "text");
    ims_store_options so = {":memory:", 0, NULL, NULL, 0, 0};
    h->store = ims_store_open(&so, err, sizeof err);
    assert_non_null(h->store);
    ims_auth_options ao;
    ims_auth_options_default(&ao);
    ao.threads = 0;
    ao.queue_max = h->cfg.hash_queue;
    ao.opslimit = crypto_pwhash_OPSLIMIT_MIN;
    ao.memlimit = crypto_pwhash_MEMLIMIT_MIN;
    h->auth = ims_auth_new(&ao);
    assert_non_null(h->auth);
    if (!h->mono)
        h->mono = 1000;
    if (!h->wall)
        h->wall = 1764000000000;
    ims_server_options o;
    memset(&o, 0, sizeof o);
    o.cfg = &h->cfg;
    o.store = h->store;
    o.auth = h->auth;
    o.io.want_write = h_want_write;
    o.clock.mono_ms = h_mono;
    o.clock.wall_ms = h_wall;
    o.clock.ud = h;
    o.version = "imd/test";
    o.commit = h_commit;
    o.commit_ud = h;
    h->srv = ims_server_new(&o);
    assert_non_null(h->srv);
}

static inline th *h_new(void)
{
    th *h = calloc(1, sizeof *h);
    assert_non_null(h);
    h_cfg(&h->cfg);
    return h;
}

static inline void h_free(th *h)
{
    ims_server_free(h->srv);
    ims_auth_free(h->auth);
    ims_store_close(h->store);
    free(h);
}

/* What the event loop does after I/O. */
static inline void turn(th *h)
{
    ims_server_auth_ready(h->srv);
    ims_server_turn_end(h->srv);
}

static inline void h_tick(th *h, uint64_t advance_ms)
{
    h->mono += advance_ms;
    h->wall += (int64_t)advance_ms;
    ims_server_tick(h->srv);
    turn(h);
}

/* The value of a counter or gauge. */
struct stat_find {
    const char *name;
    uint64_t v;
    int found;
};

static inline void stat_cb(void *ud, const char *name, uint64_t v)
{
    struct stat_find *f = ud;
    if (strcmp(f->name, name) == 0) {
        f->v = v;
        f->found = 1;
    }
}

static inline uint64_t st_get(th *h, const char *name)
{
    struct stat_find f = {name, 0, 0};
    ims_server_stats(h->srv, stat_cb, &f);
    if (!f.found)
        fail_msg("no counter %s", name);
    return f.v;
}

static inline int bytes_is(imp_bytes b, const char *s)
{
    return b.len == strlen(s) && memcmp(b.p, s, b.len) == 0;
}

/* ---- clients ------------------------------------------------------------------------------ */

/* Client output -> server input. */
static inline void tc_flush(tc *t)
{
    const uint8_t *p;
    size_t n;
    while (t->sc && (n = imp_conn_pending_output(t->cc, &p)) > 0) {
        ims_client_input(t->sc, p, n);
        imp_conn_consume_output(t->cc, n);
    }
}

/* Server output -> client; the client's next event (1), 0 none, < 0 the client failed. */
static inline int tc_next(tc *t, imp_msg *m)
{
    const uint8_t *p;
    size_t n;
    if (t->sc && (n = ims_client_output(t->sc, &p)) > 0) {
        imp_ssize k = imp_conn_feed(t->cc, p, n);
        if (k > 0)
            ims_client_consumed(t->sc, (size_t)k);
    }
    return imp_conn_next_event(t->cc, m);
}

/* The next event must be of this type. */
static inline void tc_expect(tc *t, uint8_t type, imp_msg *m)
{
    int r = tc_next(t, m);
    if (r != 1)
        fail_msg("expected %s, got r=%d", imp_type_name(type), r);
    if (m->type != type)
        fail_msg("expected %s, got %s (code %llu)", imp_type_name(type), imp_type_name(m->type),
                 (unsigned long long)imp_msg_u(m, IMP_T_CODE, 0));
}

static inline void tc_expect_error(tc *t, int code)
{
    imp_msg m;
    tc_expect(t, IMP_ERROR, &m);
    assert_int_equal(imp_msg_u(&m, IMP_T_CODE, 0), code < 0 ? -code : code);
}

static inline void tc_none(tc *t)
{
    imp_msg m;
    int r = tc_next(t, &m);
    if (r != 0)
        fail_msg("expected nothing, got r=%d type %s seq %llu", r,
                 r == 1 ? imp_type_name(m.type) : "-",
                 (unsigned long long)imp_msg_u(&m, IMP_T_SEQ, 0));
}

static inline tc *tc_open_peer(th *h, const char *peer)
{
    tc *t = calloc(1, sizeof *t);
    assert_non_null(t);
    t->h = h;
    t->next_req = 10;
    t->sc = ims_server_accept(h->srv, peer, t);
    assert_non_null(t->sc);
    t->cc = imp_conn_new(IMP_ROLE_CLIENT, NULL, h->mono);
    assert_non_null(t->cc);
    return t;
}

/* A connection that got WELCOME. */
static inline tc *tc_open(th *h)
{
    tc *t = tc_open_peer(h, "127.0.0.1:40000");
    tc_flush(t);
    imp_msg m;
    tc_expect(t, IMP_WELCOME, &m);
    assert_true(bytes_is(imp_msg_b(&m, IMP_T_AGENT), "imd/test"));
    return t;
}

static inline void tc_close(tc *t)
{
    if (t->sc)
        ims_client_closed(t->sc, 733);
    imp_conn_free(t->cc);
    free(t);
}

static inline int tc_send(tc *t, imp_msg *m)
{
    int r = imp_conn_send(t->cc, m);
    tc_flush(t);
    return r;
}

static inline uint32_t tc_req(tc *t)
{
    return t->next_req++;
}

/* REGISTER or LOGIN with a password; returns the answer's type (AUTH_OK or ERROR) in *m. */
static inline void tc_auth(tc *t, uint8_t type, const char *user, const char *pw, imp_msg *m)
{
    imp_msg a;
    imp_msg_init(&a, type, tc_req(t));
    imp_msg_set_s(&a, IMP_T_USER, user);
    imp_msg_set_s(&a, IMP_T_PASSWORD, pw);
    assert_int_equal(tc_send(t, &a), 0);
    turn(t->h);
    assert_int_equal(tc_next(t, m), 1);
    if (m->type == IMP_AUTH_OK && imp_msg_has(m, IMP_T_TOKEN)) {
        imp_bytes tk = imp_msg_b(m, IMP_T_TOKEN);
        memcpy(t->token, tk.p, tk.len);
        t->token_len = tk.len;
    }
}

static inline tc *tc_user(th *h, const char *user, int do_register)
{
    tc *t = tc_open(h);
    imp_msg m;
    tc_auth(t, do_register ? IMP_REGISTER : IMP_LOGIN, user, PW, &m);
    if (m.type != IMP_AUTH_OK)
        fail_msg("%s %s: %s code %llu", do_register ? "register" : "login", user,
                 imp_type_name(m.type), (unsigned long long)imp_msg_u(&m, IMP_T_CODE, 0));
    return t;
}

/* SEND a direct, room or broadcast message (target NULL for broadcast). */
static inline uint32_t tc_sendmsg(tc *t, int kind, const char *target, const char *cmid,
                                  const char *body, int cls, int mode)
{
    imp_msg m;
    uint32_t req = tc_req(t);
    imp_msg_init(&m, IMP_SEND, req);
    imp_msg_set_u(&m, IMP_T_TARGET_KIND, (uint64_t)kind);
    if (target)
        imp_msg_set_s(&m, IMP_T_TARGET, target);
    if (cmid)
        imp_msg_set_s(&m, IMP_T_CLIENT_MSG_ID, cmid);
    if (cls >= 0)
        imp_msg_set_u(&m, IMP_T_CLASS, (uint64_t)cls);
    if (mode >= 0)
        imp_msg_set_u(&m, IMP_T_ACK_MODE, (uint64_t)mode);
    imp_msg_set_s(&m, IMP_T_BODY, body);
    assert_int_equal(tc_send(t, &m), 0);
    return req;
}

/* Expects an ACK for req with this outcome; returns its MSG_ID (0 when refused). */
static inline uint64_t tc_ack(tc *t, uint32_t req, int outcome, int code)
{
    imp_msg m;
    tc_expect(t, IMP_ACK, &m);
    assert_int_equal(m.request_id, req);
    assert_int_equal(imp_msg_u(&m, IMP_T_OUTCOME, 0), outcome);
    if (outcome == IMP_OUTCOME_REFUSED)
        assert_int_equal(imp_msg_u(&m, IMP_T_CODE, 0), code < 0 ? -code : code);
    return imp_msg_u(&m, IMP_T_MSG_ID, 0);
}

/* Expects a DELIVER with this seq and body; returns its MSG_ID. */
static inline uint64_t tc_deliver(tc *t, uint64_t seq, const char *body)
{
    imp_msg m;
    tc_expect(t, IMP_DELIVER, &m);
    assert_int_equal(imp_msg_u(&m, IMP_T_SEQ, 99999), seq);
    if (!bytes_is(imp_msg_b(&m, IMP_T_BODY), body))
        fail_msg("DELIVER body is not \"%s\"", body);
    return imp_msg_u(&m, IMP_T_MSG_ID, 0);
}

static inline void tc_delivered(tc *t, uint64_t seq)
{
    imp_msg m;
    imp_msg_init(&m, IMP_DELIVERED, tc_req(t));
    imp_msg_set_u(&m, IMP_T_SEQ, seq);
    assert_int_equal(tc_send(t, &m), 0);
}

/* A request with one ROOM field (JOIN, LEAVE, ...), answered by the next frame. */
static inline uint32_t tc_room_req(tc *t, uint8_t type, const char *room)
{
    imp_msg m;
    uint32_t req = tc_req(t);
    imp_msg_init(&m, type, req);
    imp_msg_set_s(&m, IMP_T_ROOM, room);
    assert_int_equal(tc_send(t, &m), 0);
    return req;
}

static inline void tc_join(tc *t, const char *room)
{
    tc_room_req(t, IMP_JOIN, room);
    turn(t->h);
    imp_msg m;
    tc_expect(t, IMP_OK, &m);
}

/* The names of a names list joined with ',' into out. */
static inline const char *names_str(imp_bytes list, char *out, size_t cap)
{
    imp_bytes n;
    size_t len = 0;
    out[0] = '\0';
    while (imp_names_next(&list, &n) == 1) {
        if (len + n.len + 2 > cap)
            break;
        if (len)
            out[len++] = ',';
        memcpy(out + len, n.p, n.len);
        len += n.len;
        out[len] = '\0';
    }
    return out;
}

#endif
