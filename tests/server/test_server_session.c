/* Unit tests for the server core: accounts and connections (server.c, session.c) — REGISTER,
 * LOGIN with a password or a resume token, the same AUTH_FAILED for unknown users and wrong
 * passwords (IMP-SEC-003), throttling, session and connection limits, timeouts, close
 * reasons, shutdown. Real store (":memory:"), real hashing (threads = 0, smallest
 * parameters), real libimp clients; see server_harness.h.
 */
#include "server_harness.h"

#include <malloc.h>

#include "core.h"

static void test_register_and_login(void **state)
{
    (void)state;
    th *h = h_new();
    h_start_cfg(h);
    imp_msg m;
    tc *a = tc_open(h);
    tc_auth(a, IMP_REGISTER, "Alice", PW, &m);
    assert_int_equal(m.type, IMP_AUTH_OK);
    assert_true(bytes_is(imp_msg_b(&m, IMP_T_USER), "alice")); /* IMP-TEXT-003 */
    assert_int_equal(imp_msg_b(&m, IMP_T_TOKEN).len, 32);
    assert_true(imp_msg_has(&m, IMP_T_SESSION_ID));
    uint64_t sid1 = imp_msg_u(&m, IMP_T_SESSION_ID, 0);
    assert_int_equal(imp_msg_u(&m, IMP_T_LAST_SEQ, 99), 0);
    assert_false(imp_msg_has(&m, IMP_T_ADMIN));
    assert_int_equal(st_get(h, "registrations"), 1);

    /* the name is taken, whatever its case */
    tc *b = tc_open(h);
    tc_auth(b, IMP_REGISTER, "ALICE", PW, &m);
    assert_int_equal(m.type, IMP_ERROR);
    assert_int_equal(imp_msg_u(&m, IMP_T_CODE, 0), 401);
    /* too short a password */
    tc_auth(b, IMP_REGISTER, "bob", "1234567", &m);
    assert_int_equal(imp_msg_u(&m, IMP_T_CODE, 0), 405);
    /* after non-fatal errors the client may try again (IMP-SESS-005) */
    tc_auth(b, IMP_LOGIN, "alice", PW, &m);
    assert_int_equal(m.type, IMP_AUTH_OK);
    assert_true(imp_msg_u(&m, IMP_T_SESSION_ID, 0) != sid1);
    assert_int_equal(st_get(h, "logins_ok"), 2);
    assert_int_equal(st_get(h, "sessions"), 2);
    assert_int_equal(st_get(h, "users_online"), 1);
    tc_close(a);
    tc_close(b);
    h_free(h);
}

/* IMP-SEC-003: a wrong password and an unknown user fail alike. */
static void test_login_failures_alike(void **state)
{
    (void)state;
    th *h = h_new();
    h_start_cfg(h);
    tc_close(tc_user(h, "alice", 1));
    tc *t = tc_open(h);
    imp_msg m;
    tc_auth(t, IMP_LOGIN, "alice", "wrong-password", &m);
    assert_int_equal(m.type, IMP_ERROR);
    assert_int_equal(imp_msg_u(&m, IMP_T_CODE, 0), 400);
    imp_bytes text1 = imp_msg_b(&m, IMP_T_TEXT);
    char t1[600];
    memcpy(t1, text1.p, text1.len);
    t1[text1.len] = '\0';
    tc_auth(t, IMP_LOGIN, "nobody", "wrong-password", &m);
    assert_int_equal(m.type, IMP_ERROR);
    assert_int_equal(imp_msg_u(&m, IMP_T_CODE, 0), 400);
    assert_true(bytes_is(imp_msg_b(&m, IMP_T_TEXT), t1));
    assert_int_equal(st_get(h, "logins_failed"), 2);
    /* still connected, and a right password works */
    tc_auth(t, IMP_LOGIN, "alice", PW, &m);
    assert_int_equal(m.type, IMP_AUTH_OK);
    tc_close(t);
    h_free(h);
}

static void test_registration_closed(void **state)
{
    (void)state;
    th *h = h_new();
    h->cfg.registration = 0;
    h_start_cfg(h);
    tc *t = tc_open(h);
    imp_msg m;
    tc_auth(t, IMP_REGISTER, "alice", PW, &m);
    assert_int_equal(imp_msg_u(&m, IMP_T_CODE, 0), 402);
    tc_close(t);
    h_free(h);
}

static void test_token_resume(void **state)
{
    (void)state;
    th *h = h_new();
    h_start_cfg(h);
    tc *a = tc_user(h, "alice", 1);
    tc_close(tc_user(h, "bob", 1));
    uint8_t tok[64];
    size_t tl = a->token_len;
    memcpy(tok, a->token, tl);
    tc_close(a);

    imp_msg m, l;
    tc *t = tc_open(h);
    /* the token belongs to alice, not to bob */
    imp_msg_init(&l, IMP_LOGIN, 5);
    imp_msg_set_s(&l, IMP_T_USER, "bob");
    imp_msg_set_b(&l, IMP_T_TOKEN, tok, tl);
    tc_send(t, &l);
    turn(h);
    tc_expect_error(t, 403);
    /* an unknown token */
    uint8_t bad[32];
    memset(bad, 7, sizeof bad);
    imp_msg_init(&l, IMP_LOGIN, 6);
    imp_msg_set_s(&l, IMP_T_USER, "alice");
    imp_msg_set_b(&l, IMP_T_TOKEN, bad, sizeof bad);
    tc_send(t, &l);
    turn(h);
    tc_expect_error(t, 403);
    /* the right one: no hashing needed, AUTH_OK at once */
    imp_msg_init(&l, IMP_LOGIN, 7);
    imp_msg_set_s(&l, IMP_T_USER, "Alice");
    imp_msg_set_b(&l, IMP_T_TOKEN, tok, tl);
    tc_send(t, &l);
    tc_expect(t, IMP_AUTH_OK, &m);
    assert_true(bytes_is(imp_msg_b(&m, IMP_T_USER), "alice"));
    assert_int_equal(imp_msg_b(&m, IMP_T_TOKEN).len, 32);
    /* expired tokens are refused */
    turn(h);
    tc *u = tc_open(h);
    h->wall += (int64_t)h->cfg.token_ttl_ms + 1;
    imp_msg_init(&l, IMP_LOGIN, 8);
    imp_msg_set_s(&l, IMP_T_USER, "alice");
    imp_msg_set_b(&l, IMP_T_TOKEN, tok, tl);
    tc_send(u, &l);
    turn(h);
    tc_expect_error(u, 403);
    tc_close(u);
    tc_close(t);
    h_free(h);
}

/* A client that closes while its password is hashed: the result is dropped. */
static void test_close_while_hashing(void **state)
{
    (void)state;
    th *h = h_new();
    h_start_cfg(h);
    tc *t = tc_open(h);
    imp_msg a;
    imp_msg_init(&a, IMP_REGISTER, 3);
    imp_msg_set_s(&a, IMP_T_USER, "alice");
    imp_msg_set_s(&a, IMP_T_PASSWORD, PW);
    tc_send(t, &a);
    assert_int_equal(st_get(h, "connections"), 1);
    tc_close(t);
    turn(h); /* the result arrives for a client that is gone */
    assert_int_equal(st_get(h, "connections"), 0);
    assert_int_equal(st_get(h, "close.peer"), 1);
    h_free(h);
}

static void test_throttle_ban(void **state)
{
    (void)state;
    th *h = h_new();
    h->cfg.addr_max_failures = 3;
    h_start_cfg(h);
    tc *t = tc_open(h);
    imp_msg m;
    for (int i = 0; i < 3; i++) {
        tc_auth(t, IMP_LOGIN, "nobody", "wrong-password", &m);
        assert_int_equal(imp_msg_u(&m, IMP_T_CODE, 0), 400);
    }
    tc_auth(t, IMP_LOGIN, "nobody", "wrong-password", &m);
    assert_int_equal(m.type, IMP_ERROR);
    assert_int_equal(imp_msg_u(&m, IMP_T_CODE, 0), 302); /* BANNED: fatal */
    assert_true(ims_client_done(t->sc));
    assert_int_equal(st_get(h, "close.banned"), 1);
    tc_close(t);
    h_free(h);
}

/* IMP-SEC-003: an account under attack backs off (AUTH_BACKOFF with RETRY_AFTER); its resume
 * token still works. */
static void test_backoff_and_token(void **state)
{
    (void)state;
    th *h = h_new();
    h->cfg.user_free_failures = 1;
    h->cfg.user_backoff_ms = 5000;
    h_start_cfg(h);
    tc *a = tc_user(h, "alice", 1);
    uint8_t tok[64];
    size_t tl = a->token_len;
    memcpy(tok, a->token, tl);
    tc_close(a);
    tc *t = tc_open(h);
    imp_msg m;
    tc_auth(t, IMP_LOGIN, "alice", "wrong-password", &m);
    assert_int_equal(imp_msg_u(&m, IMP_T_CODE, 0), 400);
    tc_auth(t, IMP_LOGIN, "alice", "wrong-password", &m);
    int backoff = 0;
    for (int i = 0; i < 3 && !backoff; i++) {
        if (imp_msg_u(&m, IMP_T_CODE, 0) == 404) {
            backoff = 1;
            assert_true(imp_msg_u(&m, IMP_T_RETRY_AFTER, 0) > 0);
        } else {
            tc_auth(t, IMP_LOGIN, "alice", "wrong-password", &m);
        }
    }
    assert_true(backoff);
    tc_auth(t, IMP_LOGIN, "alice", PW, &m); /* even the right password waits */
    assert_int_equal(imp_msg_u(&m, IMP_T_CODE, 0), 404);
    imp_msg l;
    imp_msg_init(&l, IMP_LOGIN, 99);
    imp_msg_set_s(&l, IMP_T_USER, "alice");
    imp_msg_set_b(&l, IMP_T_TOKEN, tok, tl);
    tc_send(t, &l);
    tc_expect(t, IMP_AUTH_OK, &m);
    tc_close(t);
    h_free(h);
}

static void test_max_sessions(void **state)
{
    (void)state;
    th *h = h_new();
    h->cfg.max_sessions_per_user = 2;
    h_start_cfg(h);
    tc *a = tc_user(h, "alice", 1);
    tc *b = tc_user(h, "alice", 0);
    tc *c = tc_open(h);
    imp_msg m;
    tc_auth(c, IMP_LOGIN, "alice", PW, &m);
    assert_int_equal(m.type, IMP_ERROR);
    assert_int_equal(imp_msg_u(&m, IMP_T_CODE, 0), 502); /* non-fatal: may retry later */
    assert_false(ims_client_done(c->sc));
    tc_close(b);
    tc_auth(c, IMP_LOGIN, "alice", PW, &m);
    assert_int_equal(m.type, IMP_AUTH_OK);
    tc_close(a);
    tc_close(c);
    h_free(h);
}

static void test_connection_limits(void **state)
{
    (void)state;
    th *h = h_new();
    h->cfg.max_connections = 3;
    h->cfg.max_connections_per_addr = 2;
    h_start_cfg(h);
    tc *a = tc_open_peer(h, "10.0.0.1:1000");
    tc *b = tc_open_peer(h, "10.0.0.1:1001");
    tc *c = tc_open_peer(h, "10.0.0.1:1002"); /* third from one address */
    assert_false(ims_client_done(a->sc));
    assert_true(ims_client_done(c->sc));
    tc_expect_error(c, 301);
    tc *d = tc_open_peer(h, "[::1]:1003");
    assert_false(ims_client_done(d->sc));
    tc *e = tc_open_peer(h, "10.0.0.2:1004"); /* fourth in total */
    assert_true(ims_client_done(e->sc));
    tc_expect_error(e, 301);
    assert_int_equal(st_get(h, "close.server_full"), 2);
    assert_int_equal(st_get(h, "connections_total"), 5);
    tc_close(c);
    tc_close(e);
    tc *f = tc_open_peer(h, "10.0.0.3:1");
    assert_true(ims_client_done(f->sc)); /* a, b, d are still open: 3 */
    tc_close(f);
    tc_close(a);
    tc *g = tc_open_peer(h, "10.0.0.3:2");
    assert_false(ims_client_done(g->sc));
    tc_close(b);
    tc_close(d);
    tc_close(g);
    h_free(h);
}

/* IMP-TIME-001: not authenticated in time; the close reason is counted. */
static void test_auth_timeout(void **state)
{
    (void)state;
    th *h = h_new();
    h->cfg.auth_timeout_ms = 5000;
    h_start_cfg(h);
    tc *t = tc_open(h);
    h_tick(h, 4999);
    assert_false(ims_client_done(t->sc));
    t->wakes = 0;
    h_tick(h, 1);
    assert_true(ims_client_done(t->sc));
    assert_true(t->wakes > 0); /* decided outside a call on the client: want_write */
    tc_expect_error(t, 600);
    assert_int_equal(st_get(h, "close.auth_timeout"), 1);
    tc_close(t);
    assert_int_equal(st_get(h, "close.peer"), 0); /* counted once, by its first reason */
    h_free(h);
}

/* IMP-TIME-002: a session that stops answering PING is closed, counted as ping_timeout. */
static void test_ping_timeout(void **state)
{
    (void)state;
    th *h = h_new();
    h->cfg.ping_interval_ms = 1000;
    h->cfg.ping_max_missed = 2;
    h_start_cfg(h);
    tc *a = tc_user(h, "alice", 1);
    tc *b = tc_user(h, "bob", 1);
    turn(h);
    imp_msg m;
    for (int i = 0; i < 3; i++) {
        h_tick(h, 1000);
        tc_next(a, &m); /* alice's library answers PING with PONG by itself */
        tc_flush(a);
    }
    assert_false(ims_client_done(a->sc));
    assert_true(ims_client_done(b->sc)); /* bob never read his PINGs */
    assert_int_equal(st_get(h, "close.ping_timeout"), 1);
    assert_int_equal(st_get(h, "users_online"), 1);
    tc_close(a);
    tc_close(b);
    h_free(h);
}

/* IMP-SESS-004, IMP-SEC-001: application frames before AUTH_OK close the connection. */
static void test_app_frame_before_auth(void **state)
{
    (void)state;
    th *h = h_new();
    h_start_cfg(h);
    tc *t = tc_open(h);
    /* the client library refuses to send it, so the raw frame is fed directly */
    uint8_t raw[64];
    imp_msg j;
    imp_msg_init(&j, IMP_JOIN, 9);
    imp_msg_set_s(&j, IMP_T_ROOM, "r");
    imp_ssize n = imp_msg_encode(&j, raw, sizeof raw);
    assert_true(n > 0);
    ims_client_input(t->sc, raw, (size_t)n);
    assert_true(ims_client_done(t->sc));
    assert_int_equal(st_get(h, "close.protocol"), 1);
    tc_close(t);
    /* garbage */
    t = tc_open(h);
    uint8_t junk[16] = {9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9};
    ims_client_input(t->sc, junk, sizeof junk);
    assert_true(ims_client_done(t->sc));
    tc_expect_error(t, 701);
    assert_int_equal(st_get(h, "close.protocol"), 2);
    tc_close(t);
    h_free(h);
}

static void test_logout(void **state)
{
    (void)state;
    th *h = h_new();
    h_start_cfg(h);
    tc *t = tc_user(h, "alice", 1);
    turn(h);
    imp_msg m;
    imp_msg_init(&m, IMP_LOGOUT, 77);
    tc_send(t, &m);
    tc_expect(t, IMP_OK, &m);
    assert_int_equal(m.request_id, 77);
    assert_true(ims_client_done(t->sc));
    assert_int_equal(st_get(h, "close.logout"), 1);
    assert_int_equal(st_get(h, "users_online"), 0);
    tc_close(t);
    h_free(h);
}

static void test_shutdown(void **state)
{
    (void)state;
    th *h = h_new();
    h_start_cfg(h);
    tc *a = tc_user(h, "alice", 1);
    tc *b = tc_user(h, "bob", 1);
    turn(h);
    uint32_t req = tc_sendmsg(a, IMP_TARGET_USER, "bob", NULL, "last words", -1, -1);
    a->wakes = b->wakes = 0;
    ims_server_shutdown(h->srv);
    /* the turn's message is committed and ACKed before the SHUTDOWN */
    tc_ack(a, req, IMP_OUTCOME_STORED, 0);
    tc_expect_error(a, 730);
    assert_true(ims_client_done(a->sc));
    assert_true(ims_client_done(b->sc));
    assert_true(a->wakes > 0 && b->wakes > 0);
    tc *c = tc_open_peer(h, "127.0.0.1:9");
    assert_true(ims_client_done(c->sc));
    tc_expect_error(c, 730);
    assert_int_equal(st_get(h, "close.shutdown"), 3);
    tc_close(a);
    tc_close(b);
    tc_close(c);
    /* the message survived: a fresh server on the same store delivers it */
    ims_server_free(h->srv);
    h->srv = NULL;
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
    h->srv = ims_server_new(&o);
    assert_non_null(h->srv);
    b = tc_user(h, "bob", 0);
    turn(h);
    tc_deliver(b, 1, "last words");
    tc_close(b);
    h_free(h);
}

struct changes {
    int n;
    char keys[256];
};

static void on_changed(void *ud, const char *key, const char *from, const char *to)
{
    struct changes *c = ud;
    (void)from;
    (void)to;
    c->n++;
    strncat(c->keys, key, sizeof c->keys - strlen(c->keys) - 2);
    strcat(c->keys, " ");
}

static void test_reload(void **state)
{
    (void)state;
    th *h = h_new();
    h_start_cfg(h);
    ims_cfg c = h->cfg;
    c.registration = 0;
    c.offline_quota = 5;
    struct changes ch = {0, ""};
    ims_server_reload(h->srv, &c, on_changed, &ch);
    assert_int_equal(ch.n, 2);
    assert_non_null(strstr(ch.keys, "registration"));
    assert_non_null(strstr(ch.keys, "offline_quota"));
    tc *t = tc_open(h);
    imp_msg m;
    tc_auth(t, IMP_REGISTER, "alice", PW, &m);
    assert_int_equal(imp_msg_u(&m, IMP_T_CODE, 0), 402);
    tc_close(t);
    h_free(h);
}

/* Issue 3 (10,000 idle logged-in connections, <= 1 KiB of server memory each): an idle
 * logged-in client keeps only the core's client object and libimp's connection object (no
 * I/O buffers, no login-time state), at most 304 bytes of heap together, whatever its
 * peer's address (the longest one here). The network layer's netconn with its one embedded
 * event (net.c) and the user's ims_ouser come on top. The client works as before. */
static void test_idle_client_memory(void **state)
{
    (void)state;
    th *h = h_new();
    h_start_cfg(h);
    tc *a = tc_open_peer(h, "[ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255]:65535");
    tc_flush(a);
    imp_msg m;
    tc_expect(a, IMP_WELCOME, &m);
    tc_auth(a, IMP_REGISTER, "alice", PW, &m);
    assert_int_equal(m.type, IMP_AUTH_OK);
    h_tick(h, 100); /* active in this tick */
    h_tick(h, 100); /* idle for a whole tick: buffers released */
    ims_client *c = a->sc;
    const uint8_t *p;
    assert_int_equal(imp_conn_pending_output(c->conn, &p), 0);
    assert_null(c->subs);
    size_t bytes = malloc_usable_size(c) + malloc_usable_size(c->conn);
    print_message("idle logged-in client: %zu bytes (ims_client %zu, imp_conn %zu)\n", bytes,
                  malloc_usable_size(c), malloc_usable_size(c->conn));
    assert_true(bytes <= 304);
    /* still a working session, both ways */
    tc *b = tc_user(h, "bob", 1);
    uint32_t req = tc_sendmsg(a, IMP_TARGET_USER, "bob", "c1", "hello", -1, -1);
    turn(h);
    tc_ack(a, req, IMP_OUTCOME_STORED, 0);
    tc_deliver(b, 1, "hello");
    req = tc_sendmsg(b, IMP_TARGET_USER, "alice", "c2", "hi", -1, -1);
    turn(h);
    tc_ack(b, req, IMP_OUTCOME_STORED, 0);
    tc_deliver(a, 1, "hi");
    tc_close(b);
    tc_close(a);
    h_free(h);
}

/* The online-user record is sized to its name (issue 3, idle memory): names of 1 and of 32
 * bytes (the longest) are whole in SENDER, in AUTH_OK's USER and in presence events, for an
 * online and an offline user; the record of a short name is smaller than a 32-byte one's. */
static void test_user_record_sized_to_name(void **state)
{
    (void)state;
    const char *longname = "abcdefghijklmnopqrstuvwxyz012345"; /* 32 bytes */
    assert_int_equal(strlen(longname), 32);
    th *h = h_new();
    h_start_cfg(h);
    tc *a = tc_user(h, "a", 1);
    tc *l = tc_user(h, longname, 1);
    turn(h);
    size_t small = malloc_usable_size(a->sc->u), big = malloc_usable_size(l->sc->u);
    print_message("online-user record: %zu bytes (1-byte name), %zu (32 bytes)\n", small, big);
    assert_true(small < big);
    assert_string_equal(l->sc->u->name, longname);
    uint32_t req = tc_sendmsg(l, IMP_TARGET_USER, "a", NULL, "hi", -1, -1);
    turn(h);
    tc_ack(l, req, IMP_OUTCOME_STORED, 0);
    imp_msg m;
    tc_expect(a, IMP_DELIVER, &m);
    assert_true(bytes_is(imp_msg_b(&m, IMP_T_SENDER), longname));
    req = tc_sendmsg(a, IMP_TARGET_USER, longname, NULL, "yo", -1, -1);
    turn(h);
    tc_ack(a, req, IMP_OUTCOME_STORED, 0);
    tc_expect(l, IMP_DELIVER, &m);
    assert_true(bytes_is(imp_msg_b(&m, IMP_T_SENDER), "a"));
    /* presence of an offline user with the longest name, then online */
    tc_close(l);
    turn(h);
    uint8_t names[64];
    imp_builder nb;
    imp_builder_init(&nb, names, sizeof names);
    imp_names_add(&nb, longname, 32);
    imp_msg s;
    imp_msg_init(&s, IMP_SUBSCRIBE, tc_req(a));
    imp_msg_set_b(&s, IMP_T_NAMES, names, nb.len);
    tc_send(a, &s);
    tc_expect(a, IMP_OK, &m);
    tc_expect(a, IMP_PRESENCE_EVENT, &m);
    assert_true(bytes_is(imp_msg_b(&m, IMP_T_USER), longname));
    assert_int_equal(imp_msg_u(&m, IMP_T_STATUS, 99), IMP_STATUS_OFFLINE);
    l = tc_user(h, longname, 0);
    tc_expect(a, IMP_PRESENCE_EVENT, &m);
    assert_true(bytes_is(imp_msg_b(&m, IMP_T_USER), longname));
    assert_int_equal(imp_msg_u(&m, IMP_T_STATUS, 99), IMP_STATUS_ONLINE);
    tc_close(l);
    tc_close(a);
    h_free(h);
}

/* Deferred LOGOUT in the core (IMP-SESS-008), deterministic: the harness commits inline and
 * ACKs are held until turn(). */
/* SEND then LOGOUT in one input: no OK before the turn's commit; then the ACK, then the OK. */
static void test_logout_after_held_ack(void **state)
{
    (void)state;
    th *h = h_new();
    h_start_cfg(h);
    tc *a = tc_user(h, "alice", 1);
    tc *b = tc_user(h, "bob", 1);
    turn(h);
    uint32_t req = tc_sendmsg(a, IMP_TARGET_USER, "bob", "c1", "hi", -1, -1);
    imp_msg m;
    imp_msg_init(&m, IMP_LOGOUT, 77);
    tc_send(a, &m);
    tc_none(a); /* the ACK is held for the commit: so is the OK */
    assert_false(ims_client_done(a->sc));
    assert_int_equal(st_get(h, "close.logout"), 0);
    turn(h);
    tc_ack(a, req, IMP_OUTCOME_STORED, 0);
    tc_expect(a, IMP_OK, &m);
    assert_int_equal(m.request_id, 77);
    assert_true(ims_client_done(a->sc));
    assert_int_equal(st_get(h, "close.logout"), 1);
    tc_deliver(b, 1, "hi");
    tc_close(a);
    tc_close(b);
    h_free(h);
}

/* SIGTERM while the OK is pending: the ACK and the OK, no SHUTDOWN for that client. */
static void test_logout_pending_at_shutdown(void **state)
{
    (void)state;
    th *h = h_new();
    h_start_cfg(h);
    tc *a = tc_user(h, "alice", 1);
    tc *b = tc_user(h, "bob", 1);
    turn(h);
    uint32_t req = tc_sendmsg(a, IMP_TARGET_USER, "bob", "c1", "hi", -1, -1);
    imp_msg m;
    imp_msg_init(&m, IMP_LOGOUT, 77);
    tc_send(a, &m);
    ims_server_shutdown(h->srv);
    tc_ack(a, req, IMP_OUTCOME_STORED, 0);
    tc_expect(a, IMP_OK, &m);
    assert_int_equal(m.request_id, 77);
    tc_none(a);
    assert_int_equal(st_get(h, "close.logout"), 1);
    tc_deliver(b, 1, "hi"); /* the turn's delivery, then the SHUTDOWN */
    tc_expect_error(b, 730);
    tc_close(a);
    tc_close(b);
    h_free(h);
}

/* The client goes away with its OK pending: counted as peer, nothing sent to it, no leak. */
static void test_logout_pending_peer_gone(void **state)
{
    (void)state;
    th *h = h_new();
    h_start_cfg(h);
    tc *a = tc_user(h, "alice", 1);
    tc *b = tc_user(h, "bob", 1);
    turn(h);
    (void)tc_sendmsg(a, IMP_TARGET_USER, "bob", "c1", "hi", -1, -1);
    imp_msg m;
    imp_msg_init(&m, IMP_LOGOUT, 77);
    tc_send(a, &m);
    tc_close(a);
    turn(h);
    assert_int_equal(st_get(h, "close.logout"), 0);
    assert_int_equal(st_get(h, "close.peer"), 1);
    tc_deliver(b, 1, "hi"); /* stored all the same */
    tc_close(b);
    h_free(h);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_register_and_login),
        cmocka_unit_test(test_login_failures_alike),
        cmocka_unit_test(test_registration_closed),
        cmocka_unit_test(test_token_resume),
        cmocka_unit_test(test_close_while_hashing),
        cmocka_unit_test(test_throttle_ban),
        cmocka_unit_test(test_backoff_and_token),
        cmocka_unit_test(test_max_sessions),
        cmocka_unit_test(test_connection_limits),
        cmocka_unit_test(test_auth_timeout),
        cmocka_unit_test(test_ping_timeout),
        cmocka_unit_test(test_app_frame_before_auth),
        cmocka_unit_test(test_logout),
        cmocka_unit_test(test_logout_after_held_ack),
        cmocka_unit_test(test_logout_pending_at_shutdown),
        cmocka_unit_test(test_logout_pending_peer_gone),
        cmocka_unit_test(test_shutdown),
        cmocka_unit_test(test_reload),
        cmocka_unit_test(test_idle_client_memory),
        cmocka_unit_test(test_user_record_sized_to_name),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
