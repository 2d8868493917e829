/* Integration: accounts against a real imd over loopback (SPEC.md 5.2, 6, 8; imd's `user`
 * subcommands).
 *
 * - register, login right / wrong / unknown (one code: AUTH_FAILED), duplicate registration,
 *   canonical (folded) names, retry on the same connection after a refusal;
 * - resume tokens: AUTH_OK TOKEN, LOGIN TOKEN, an unknown token;
 * - registration=no: REGISTER refused, existing accounts still log in;
 * - `imd user add / list / del / admin / passwd` on the data directory;
 * - the authentication deadline: ERROR AUTH_TIMEOUT then close, not extended by traffic;
 * - keepalive: a session that never answers PING is closed with PING_TIMEOUT, one that does
 *   stays; LOGOUT answered by OK and the close;
 * - login throttling (IMP-SEC-003): account backoff (AUTH_BACKOFF with RETRY_AFTER, not fatal)
 *   and address bans (BANNED, fatal), both lifted after their time;
 * - WELCOME's defaults; --config FILE with --set over it; an unknown key stops imd at start;
 * - one imd with the server's default Argon2 parameters.
 * Every test ends with a liveness check on the same imd process.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "itest.h"

#define T 5000

static void check_auth_ok(const tc_auth *a, const char *user)
{
    IT_CHECK(strcmp(a->user, user) == 0, "AUTH_OK USER '%s', want '%s'", a->user, user);
    IT_CHECK(a->has_token, "AUTH_OK for %s without TOKEN", user);
    IT_CHECK(a->token_len >= 16 && a->token_len <= 64, "TOKEN length %zu", a->token_len);
}

static void test_register_login(void **state)
{
    (void)state;
    imd_proc *p = it_start_imd(NULL);
    long pid = (long)p->pid;

    /* WELCOME (section 5.1): version 1 and the server's default limits and timers. */
    tc *w = tc_connect(p->port, T);
    IT_CHECK(w != NULL, "connect");
    IT_EQ(imp_msg_u(&w->welcome, IMP_T_VERSION, 0), 1);
    IT_EQ(imp_msg_u(&w->welcome, IMP_T_MAX_FRAME, 0), IMP_DEFAULT_MAX_FRAME);
    IT_EQ(imp_msg_u(&w->welcome, IMP_T_MAX_FRAME_PREAUTH, 0), IMP_DEFAULT_MAX_PREAUTH);
    IT_EQ(imp_msg_u(&w->welcome, IMP_T_AUTH_TIMEOUT, 0), 10000);
    IT_EQ(imp_msg_u(&w->welcome, IMP_T_PING_INTERVAL, 0), 30000);
    tc_close(w);

    /* REGISTER creates the account and logs in: AUTH_OK with the canonical name, a session, a
     * token and LAST_SEQ 0 (IMP-TEXT-003). */
    tc_auth a1, a2, b1;
    tc *c = it_register(p->port, "alice", "correct horse", &a1);
    check_auth_ok(&a1, "alice");
    IT_EQ(a1.last_seq, 0);
    IT_EQ(a1.admin, 0);
    tc_close(c);
    c = it_register(p->port, "Bob.Builder", "bobs password", &b1);
    check_auth_ok(&b1, "bob.builder"); /* folded: IMP-TEXT-003 */
    tc_close(c);

    /* LOGIN with the right password, with the name in another case. */
    c = it_login(p->port, "ALICE", "correct horse", &a2);
    check_auth_ok(&a2, "alice");
    IT_CHECK(a2.session_id != a1.session_id, "two sessions with the same SESSION_ID %llu",
             (unsigned long long)a1.session_id);
    tc_close(c);

    /* Wrong password and unknown user: the same code, AUTH_FAILED (IMP-SEC-003), not fatal:
     * the client may try again on the same connection (IMP-SESS-005). */
    c = tc_connect(p->port, T);
    IT_CHECK(c != NULL, "connect");
    int r = tc_login(c, "alice", "wrong password", UINT64_MAX, NULL, T);
    IT_EQ(r, 400);
    r = tc_login(c, "nosuchuser", "whatever", UINT64_MAX, NULL, T);
    IT_EQ(r, 400);
    r = tc_login(c, "alice", "correct horse", UINT64_MAX, &a2, T);
    IT_EQ(r, 0);
    check_auth_ok(&a2, "alice");
    tc_close(c);

    /* Duplicate registration, also in another case: USER_EXISTS; then a REGISTER of a new name
     * on the same connection succeeds (the refusal is not fatal). */
    c = tc_connect(p->port, T);
    IT_CHECK(c != NULL, "connect");
    r = tc_register(c, "alice", "other password", NULL, T);
    IT_EQ(r, 401);
    r = tc_register(c, "ALICE", "other password", NULL, T);
    IT_EQ(r, 401);
    tc_auth cc;
    r = tc_register(c, "carol", "carols password", &cc, T);
    IT_EQ(r, 0);
    check_auth_ok(&cc, "carol");
    tc_close(c);
    /* The duplicate REGISTER did not change alice's password. */
    tc_close(it_login(p->port, "alice", "correct horse", NULL));

    it_liveness(p, pid, NULL, NULL, NULL, NULL);

    it_finish(p);
}

static void test_tokens(void **state)
{
    (void)state;
    imd_proc *p = it_start_imd(NULL);
    long pid = (long)p->pid;
    tc_auth a, t1, t2;
    tc_close(it_register(p->port, "dora", "dora password", &a));
    IT_CHECK(a.has_token, "no TOKEN in AUTH_OK");

    /* LOGIN with TOKEN instead of PASSWORD resumes (section 5.2). */
    tc *c = tc_connect(p->port, T);
    IT_CHECK(c != NULL, "connect");
    int r = tc_login_token(c, "dora", a.token, a.token_len, UINT64_MAX, &t1, T);
    IT_EQ(r, 0);
    IT_CHECK(strcmp(t1.user, "dora") == 0, "USER %s", t1.user);
    IT_CHECK(t1.session_id != a.session_id, "resumed session has the old SESSION_ID");
    tc_close(c);

    /* The token of the latest AUTH_OK works as well. */
    if (t1.has_token) {
        c = tc_connect(p->port, T);
        IT_CHECK(c != NULL, "connect");
        r = tc_login_token(c, "dora", t1.token, t1.token_len, UINT64_MAX, &t2, T);
        IT_EQ(r, 0);
        tc_close(c);
    }

    /* An unknown token: TOKEN_INVALID (403), not fatal: a password login follows on the same
     * connection. */
    uint8_t bogus[32];
    for (size_t i = 0; i < sizeof bogus; i++)
        bogus[i] = (uint8_t)(0xA5 ^ (i * 37));
    c = tc_connect(p->port, T);
    IT_CHECK(c != NULL, "connect");
    r = tc_login_token(c, "dora", bogus, sizeof bogus, UINT64_MAX, NULL, T);
    IT_EQ(r, 403);
    /* A real token altered in its last byte is unknown too. */
    uint8_t altered[64];
    memcpy(altered, a.token, a.token_len);
    altered[a.token_len - 1] ^= 0x01;
    r = tc_login_token(c, "dora", altered, a.token_len, UINT64_MAX, NULL, T);
    IT_EQ(r, 403);
    r = tc_login(c, "dora", "dora password", UINT64_MAX, NULL, T);
    IT_EQ(r, 0);
    tc_close(c);

    it_liveness(p, pid, NULL, NULL, NULL, NULL);

    it_finish(p);
}

static void test_registration_closed(void **state)
{
    (void)state;
    /* Accounts made while registration is open, then a restart with registration=no (the
     * `imd user add` route is covered by test_admin_subcommands). */
    imd_proc *p = it_start_imd(NULL);
    tc_close(it_register(p->port, "erin", "erin password", NULL));
    tc_close(it_register(p->port, "frank", "frank password", NULL));
    IT_EQ(imd_stop(p, 5000), 0);
    static const char *const args[] = {"--set", "registration=no", NULL};
    imd_add_args(p, args);
    it_start(p);
    long pid = (long)p->pid;

    /* REGISTER refused with REGISTRATION_CLOSED (402), not fatal. */
    tc *c = tc_connect(p->port, T);
    IT_CHECK(c != NULL, "connect");
    int r = tc_register(c, "mallory", "mallory password", NULL, T);
    IT_EQ(r, 402);
    r = tc_login(c, "erin", "erin password", UINT64_MAX, NULL, T);
    IT_EQ(r, 0);
    tc_close(c);
    /* The refused name was not created. */
    c = tc_connect(p->port, T);
    IT_CHECK(c != NULL, "connect");
    r = tc_login(c, "mallory", "mallory password", UINT64_MAX, NULL, T);
    IT_EQ(r, 400);
    tc_close(c);

    it_liveness(p, pid, "erin", "erin password", "frank", "frank password");

    it_finish(p);
}

static void test_admin_subcommands(void **state)
{
    (void)state;
    imd_proc *p = it_create_imd(NULL);
    char out[4096];
    char pwfile[400];
    snprintf(pwfile, sizeof pwfile, "%s/pw.txt", p->dir);
    FILE *f = fopen(pwfile, "w");
    IT_CHECK(f != NULL, "cannot write %s", pwfile);
    fputs("gina password\n", f);
    fclose(f);

    const char *add_h[] = {"user", "add", "hank", NULL};
    const char *add_g[] = {"user", "add", "gina", "--admin", "--password-file", pwfile, NULL};
    const char *add_i[] = {"user", "add", "ivan", NULL};
    const char *list[] = {"user", "list", NULL};
    IT_EQ(it_admin(p, "hank password\n", NULL, 0, add_h), 0);
    IT_EQ(it_admin(p, NULL, NULL, 0, add_g), 0);
    IT_EQ(it_admin(p, "ivan password\n", NULL, 0, add_i), 0);
    /* The same name again (any case) fails. */
    const char *add_h2[] = {"user", "add", "HANK", NULL};
    int rc = it_admin(p, "x password\n", NULL, 0, add_h2);
    IT_CHECK(rc > 0, "`user add HANK` over hank: exit %d, want a failure", rc);

    IT_EQ(it_admin(p, NULL, out, sizeof out, list), 0);
    IT_CHECK(strstr(out, "hank") && strstr(out, "gina") && strstr(out, "ivan"),
             "user list lacks a user:\n%s", out);

    const char *del_i[] = {"user", "del", "ivan", NULL};
    IT_EQ(it_admin(p, NULL, NULL, 0, del_i), 0);
    IT_EQ(it_admin(p, NULL, out, sizeof out, list), 0);
    IT_CHECK(strstr(out, "ivan") == NULL, "ivan still listed after `user del`:\n%s", out);
    IT_CHECK(strstr(out, "hank") != NULL, "hank gone after `user del ivan`:\n%s", out);
    rc = it_admin(p, NULL, NULL, 0, del_i);
    IT_CHECK(rc > 0, "`user del` of a missing user: exit %d, want a failure", rc);

    const char *adm_h[] = {"user", "admin", "hank", "on", NULL};
    const char *adm_g[] = {"user", "admin", "gina", "off", NULL};
    IT_EQ(it_admin(p, NULL, NULL, 0, adm_h), 0);
    IT_EQ(it_admin(p, NULL, NULL, 0, adm_g), 0);
    const char *pw_h[] = {"user", "passwd", "hank", NULL};
    IT_EQ(it_admin(p, "hank new password\n", NULL, 0, pw_h), 0);

    it_start(p);
    long pid = (long)p->pid;
    tc_auth a;
    /* hank: admin now, new password only. */
    tc *c = tc_connect(p->port, T);
    IT_CHECK(c != NULL, "connect");
    IT_EQ(tc_login(c, "hank", "hank password", UINT64_MAX, NULL, T), 400);
    IT_EQ(tc_login(c, "hank", "hank new password", UINT64_MAX, &a, T), 0);
    IT_EQ(a.admin, 1);
    tc_close(c);
    /* gina: made with --admin and --password-file, then admin off. */
    c = it_login(p->port, "gina", "gina password", &a);
    IT_EQ(a.admin, 0);
    tc_close(c);
    /* ivan was deleted. */
    c = tc_connect(p->port, T);
    IT_CHECK(c != NULL, "connect");
    IT_EQ(tc_login(c, "ivan", "ivan password", UINT64_MAX, NULL, T), 400);
    tc_close(c);

    it_liveness(p, pid, "hank", "hank new password", "gina", "gina password");

    it_finish(p);
}

static void test_auth_timeout(void **state)
{
    (void)state;
    static const char *const args[] = {"--set", "auth_timeout_ms=300", NULL};
    imd_proc *p = it_start_imd(args);
    long pid = (long)p->pid;

    /* WELCOME announces the deadline (section 5.1). */
    uint64_t t0 = it_now_ms();
    tc *idle = tc_connect(p->port, T);
    IT_CHECK(idle != NULL, "connect");
    IT_CHECK(idle->has_welcome, "no WELCOME kept");
    IT_EQ(imp_msg_u(&idle->welcome, IMP_T_AUTH_TIMEOUT, 0), 300);

    /* A second connection keeps talking (PING, allowed before AUTH_OK): the deadline is
     * absolute, traffic does not extend it (IMP-TIME-001). */
    tc *busy = tc_connect_raw(p->port, T, 0);
    IT_CHECK(busy != NULL, "connect");
    IT_EQ(tc_raw_hello(busy, T), 0);
    int pongs = 0;
    uint64_t tb = it_now_ms();
    while (!busy->eof && it_now_ms() - tb < 3000) {
        uint32_t req = tc_simple(busy, IMP_PING);
        if (!req)
            break;
        tc_frame *f = tc_wait(busy, IMP_PONG, req, 200);
        if (f) {
            pongs++;
            tc_frame_free(f);
        }
        it_sleep_ms(50);
    }
    uint64_t busy_ms = it_now_ms() - tb;
    IT_CHECK(pongs > 0, "no PONG before AUTH_OK");
    int code = it_expect_closed(busy, 1000, 600, "busy unauthenticated connection");
    IT_EQ(code, 600);
    IT_CHECK(busy_ms < 1500, "busy connection lived %llu ms with a 300 ms deadline",
             (unsigned long long)busy_ms);

    /* The idle one: ERROR AUTH_TIMEOUT (600, fatal) and close, not before the deadline. */
    code = it_expect_closed(idle, 3000, 600, "idle unauthenticated connection");
    IT_EQ(code, 600);
    uint64_t lived = it_now_ms() - t0;
    IT_CHECK(lived >= 280, "closed after %llu ms, before the 300 ms deadline",
             (unsigned long long)lived);

    /* A connection that authenticates in time stays open past the deadline. */
    tc *ok = it_register(p->port, "judy", "judy password", NULL);
    it_sleep_ms(700);
    uint32_t req = tc_simple(ok, IMP_PING);
    IT_CHECK(req != 0, "PING");
    tc_frame *f = tc_wait(ok, IMP_PONG, req, T);
    char d[512];
    IT_CHECK(f != NULL, "authenticated connection did not answer PING after the deadline: %s",
             tc_describe(ok, d, sizeof d));
    tc_frame_free(f);
    tc_close(ok);

    it_liveness(p, pid, NULL, NULL, NULL, NULL);

    it_finish(p);
}

static void test_keepalive_and_logout(void **state)
{
    (void)state;
    static const char *const args[] = {"--set", "ping_interval_ms=200", NULL};
    imd_proc *p = it_start_imd(args);
    long pid = (long)p->pid;
    tc_close(it_register(p->port, "mute", "mute password", NULL));

    /* A raw session never answers the server's PINGs: PING_TIMEOUT (601) after N = 2 missed
     * PINGs, i.e. between 2 and 3 intervals (IMP-TIME-002). */
    tc *mute = tc_connect_raw(p->port, T, 0);
    IT_CHECK(mute != NULL, "connect");
    IT_EQ(tc_raw_hello(mute, T), 0);
    IT_EQ(tc_login(mute, "mute", "mute password", UINT64_MAX, NULL, T), 0);
    uint64_t t0 = it_now_ms();
    int code = it_expect_closed(mute, 3000, 601, "session that never answers PING");
    IT_EQ(code, 601);
    uint64_t lived = it_now_ms() - t0;
    size_t pings = tc_queued(mute, IMP_PING);
    IT_CHECK(pings >= 2, "closed after %zu PINGs", pings);
    IT_CHECK(lived >= 300 && lived <= 1500, "PING_TIMEOUT after %llu ms with a 200 ms interval",
             (unsigned long long)lived);
    tc_close(mute);

    /* A session whose library answers PING (auto PONG) stays. */
    tc *live = it_login(p->port, "mute", "mute password", NULL);
    IT_EQ(imp_msg_u(&live->welcome, IMP_T_PING_INTERVAL, 0), 200);
    t0 = it_now_ms();
    while (it_now_ms() - t0 < 1500 && !live->eof)
        tc_pump(live, 100);
    IT_CHECK(!live->eof, "a session answering PING was closed (last ERROR %d)", live->last_error);
    uint32_t req = tc_simple(live, IMP_PING);
    tc_frame *f = tc_wait(live, IMP_PONG, req, T);
    IT_CHECK(f != NULL, "no PONG after 1.5 s of keepalive");
    tc_frame_free(f);

    /* LOGOUT: OK with LOGOUT's request id, then the server closes (IMP-MSG-005). */
    req = tc_simple(live, IMP_LOGOUT);
    IT_CHECK(req != 0, "LOGOUT");
    f = tc_wait_reply(live, req, T);
    char d[512];
    IT_CHECK(f != NULL && f->m.type == IMP_OK, "LOGOUT not answered by OK: %s",
             f ? imp_type_name(f->m.type) : tc_describe(live, d, sizeof d));
    tc_frame_free(f);
    it_expect_closed(live, 2000, 0, "after LOGOUT");
    tc_close(live);

    it_liveness(p, pid, NULL, NULL, NULL, NULL);

    it_finish(p);
}

/* The RETRY_AFTER of the ERROR answering the last LOGIN on c is not kept by tc_login: read it
 * from a LOGIN sent by hand. Returns the ERROR code (0 for AUTH_OK) and *retry. */
static int login_retry(tc *c, const char *user, const char *pw, uint32_t *retry)
{
    imp_msg m;
    imp_msg_init(&m, IMP_LOGIN, 0);
    imp_msg_set_s(&m, IMP_T_USER, user);
    imp_msg_set_s(&m, IMP_T_PASSWORD, pw);
    uint32_t req = tc_request(c, &m);
    IT_CHECK(req != 0, "LOGIN not sent");
    tc_frame *f = tc_wait_reply(c, req, T);
    char d[512];
    IT_CHECK(f != NULL, "LOGIN: no answer: %s", tc_describe(c, d, sizeof d));
    int code = f->m.type == IMP_AUTH_OK ? 0 : (int)imp_msg_u(&f->m, IMP_T_CODE, 0);
    IT_CHECK(f->m.type == IMP_AUTH_OK || f->m.type == IMP_ERROR, "LOGIN answered by %s",
             imp_type_name(f->m.type));
    *retry = (uint32_t)imp_msg_u(&f->m, IMP_T_RETRY_AFTER, 0);
    tc_frame_free(f);
    return code;
}

static void test_throttling(void **state)
{
    (void)state;
    /* Account backoff: after 1 free failure, the next attempt must wait 500 ms. */
    static const char *const a_args[] = {
        "--set", "user_free_failures=1",   "--set", "user_backoff_ms=500",
        "--set", "addr_max_failures=1000", NULL};
    imd_proc *p = it_start_imd(a_args);
    long pid = (long)p->pid;
    tc_close(it_register(p->port, "lena", "lena password", NULL));
    tc *c = tc_connect(p->port, T);
    IT_CHECK(c != NULL, "connect");
    uint32_t retry = 0;
    IT_EQ(login_retry(c, "lena", "wrong password", &retry), 400);
    /* At once, even with the right password: AUTH_BACKOFF (404) with RETRY_AFTER, not
     * fatal. */
    IT_EQ(login_retry(c, "lena", "lena password", &retry), 404);
    IT_CHECK(retry > 0 && retry <= 500, "AUTH_BACKOFF RETRY_AFTER %u, want 1..500",
             (unsigned)retry);
    it_sleep_ms(retry + 100);
    IT_EQ(login_retry(c, "lena", "lena password", &retry), 0);
    tc_close(c);
    it_liveness(p, pid, NULL, NULL, NULL, NULL);
    it_finish(p);

    /* Address ban: 3 failures within 10 s ban the address for 1 s: BANNED (302, fatal). */
    static const char *const b_args[] = {
        "--set", "addr_max_failures=3", "--set", "addr_window_ms=10s",
        "--set", "addr_ban_ms=1s",      NULL};
    p = it_start_imd(b_args);
    pid = (long)p->pid;
    tc_close(it_register(p->port, "mona", "mona password", NULL));
    c = tc_connect(p->port, T);
    IT_CHECK(c != NULL, "connect");
    IT_EQ(login_retry(c, "nobody1", "x password", &retry), 400);
    IT_EQ(login_retry(c, "nobody2", "x password", &retry), 400);
    IT_EQ(login_retry(c, "nobody3", "x password", &retry), 400);
    int code = login_retry(c, "mona", "mona password", &retry);
    IT_EQ(code, 302);
    IT_CHECK(retry > 0 && retry <= 1000, "BANNED RETRY_AFTER %u, want 1..1000", (unsigned)retry);
    it_expect_closed(c, 2000, 302, "banned address");
    tc_close(c);
    it_sleep_ms(retry + 100);
    tc_close(it_login(p->port, "mona", "mona password", NULL));
    it_liveness(p, pid, NULL, NULL, NULL, NULL);
    it_finish(p);
}

static void test_config(void **state)
{
    (void)state;
    /* A configuration file, and --set over it (the later source wins). */
    static const char *const args[] = {"--set", "ping_interval_ms=9s", NULL};
    imd_proc *p = it_create_imd(args);
    char path[400];
    snprintf(path, sizeof path, "%s/imd.conf", p->dir);
    FILE *f = fopen(path, "w");
    IT_CHECK(f != NULL, "cannot write %s", path);
    fputs("# test configuration\n[limits]\nauth_timeout_ms = 4s\nping_interval_ms = 7s\n"
          "max_frame = 128k\n",
          f);
    fclose(f);
    const char *const cfg[] = {"--config", path, NULL};
    imd_add_args(p, cfg);
    it_start(p);
    long pid = (long)p->pid;
    tc *c = tc_connect(p->port, T);
    IT_CHECK(c != NULL, "connect");
    IT_EQ(imp_msg_u(&c->welcome, IMP_T_AUTH_TIMEOUT, 0), 4000);
    IT_EQ(imp_msg_u(&c->welcome, IMP_T_PING_INTERVAL, 0), 9000);
    IT_EQ(imp_msg_u(&c->welcome, IMP_T_MAX_FRAME, 0), 131072);
    tc_close(c);
    it_liveness(p, pid, NULL, NULL, NULL, NULL);
    it_finish(p);

    /* An unknown key: imd refuses to start (non-zero exit, no 'ready'). */
    static const char *const bad[] = {"--set", "no_such_key=1", NULL};
    imd_proc *q = imd_create(bad);
    IT_CHECK(q != NULL, "imd_create");
    fprintf(stderr, "   [itest] (an imd that must not start:)\n");
    IT_CHECK(imd_start(q) != 0, "imd started with --set no_such_key=1");
    IT_CHECK(q->last_status >= 0 && WIFEXITED(q->last_status) && WEXITSTATUS(q->last_status) != 0,
             "imd with an unknown key: wait status %d", q->last_status);
    imd_destroy(q);
}

static void test_default_hash_parameters(void **state)
{
    (void)state;
    /* The server's default Argon2id parameters (no hash_* overrides). */
    imd_proc *p = it_start_imd_plain(NULL);
    long pid = (long)p->pid;
    uint64_t t0 = it_now_ms();
    tc_close(it_register(p->port, "kate", "kate password", NULL));
    tc_close(it_login(p->port, "kate", "kate password", NULL));
    tc *c = tc_connect(p->port, T);
    IT_CHECK(c != NULL, "connect");
    IT_EQ(tc_login(c, "kate", "not kate's password", UINT64_MAX, NULL, T), 400);
    IT_EQ(tc_login(c, "nobody", "kate password", UINT64_MAX, NULL, T), 400);
    tc_close(c);
    it_note("default hashing: register + 3 logins in %llu ms",
            (unsigned long long)(it_now_ms() - t0));
    it_liveness(p, pid, NULL, NULL, NULL, NULL);
    it_finish(p);
}

int main(void)
{
    it_main_init(120);
    if (!it_imd_or_skip())
        return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_register_login, it_teardown),
        cmocka_unit_test_teardown(test_tokens, it_teardown),
        cmocka_unit_test_teardown(test_registration_closed, it_teardown),
        cmocka_unit_test_teardown(test_admin_subcommands, it_teardown),
        cmocka_unit_test_teardown(test_auth_timeout, it_teardown),
        cmocka_unit_test_teardown(test_keepalive_and_logout, it_teardown),
        cmocka_unit_test_teardown(test_throttling, it_teardown),
        cmocka_unit_test_teardown(test_config, it_teardown),
        cmocka_unit_test_teardown(test_default_hash_parameters, it_teardown),
    };
    return cmocka_run_group_tests_name("integration: accounts", tests, NULL, NULL);
}
