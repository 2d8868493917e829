/* Unit tests for tools/common/imt_client.c: address parsing, exit statuses, the frame trace,
 * and the client's event flow against a small in-process server built on libimp's server role
 * (same event loop, loopback TCP): login accepted/refused, SEND -> ACK, DELIVER -> auto
 * DELIVERED, graceful LOGOUT, a fatal ERROR, connection refused and the connect timeout. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "imt_client.h"

/* ---- pure functions ------------------------------------------------------------------------ */

static void test_addr_parse(void **state)
{
    (void)state;
    imt_addr a;
    char err[128];
    unsetenv("IMP_SERVER");
    assert_int_equal(imt_addr_parse(NULL, &a, err, sizeof err), 0);
    assert_false(a.is_unix);
    assert_string_equal(a.host, "127.0.0.1");
    assert_string_equal(a.port, "7600");
    assert_int_equal(imt_addr_parse("example.org", &a, err, sizeof err), 0);
    assert_string_equal(a.host, "example.org");
    assert_string_equal(a.port, "7600");
    assert_int_equal(imt_addr_parse("10.1.2.3:9000", &a, err, sizeof err), 0);
    assert_string_equal(a.host, "10.1.2.3");
    assert_string_equal(a.port, "9000");
    assert_int_equal(imt_addr_parse("[::1]:99", &a, err, sizeof err), 0);
    assert_string_equal(a.host, "::1");
    assert_string_equal(a.port, "99");
    assert_int_equal(imt_addr_parse("[::1]", &a, err, sizeof err), 0);
    assert_string_equal(a.host, "::1");
    assert_string_equal(a.port, "7600");
    assert_int_equal(imt_addr_parse(":1234", &a, err, sizeof err), 0);
    assert_string_equal(a.host, "127.0.0.1");
    assert_string_equal(a.port, "1234");
    assert_int_equal(imt_addr_parse("unix:/run/imd.sock", &a, err, sizeof err), 0);
    assert_true(a.is_unix);
    assert_string_equal(a.path, "/run/imd.sock");
    setenv("IMP_SERVER", "envhost:5", 1);
    assert_int_equal(imt_addr_parse("", &a, err, sizeof err), 0);
    assert_string_equal(a.host, "envhost");
    assert_string_equal(a.port, "5");
    unsetenv("IMP_SERVER");
    static const char *bad[] = {"host:x", "host:0", "host:70000", "unix:",    "[::1",
                                "[::1]x", "host:",  "a:b:c",      "host:12ab"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err[0] = 0;
        assert_int_equal(imt_addr_parse(bad[i], &a, err, sizeof err), -1);
        assert_true(err[0] != 0);
    }
}

static void test_exit_status(void **state)
{
    (void)state;
    assert_int_equal(imt_exit_status(0), 0);
    assert_int_equal(imt_exit_status(400), IMT_EXIT_AUTH);
    assert_int_equal(imt_exit_status(IMP_ERR_AUTH_FAILED), IMT_EXIT_AUTH);
    assert_int_equal(imt_exit_status(500), IMT_EXIT_REFUSED);
    assert_int_equal(imt_exit_status(IMP_ERR_TIMEOUT), IMT_EXIT_TIMEOUT);
    assert_int_equal(imt_exit_status(733), IMT_EXIT_LOST);
    assert_int_equal(imt_exit_status(301), IMT_EXIT_CONNECT);
    assert_int_equal(imt_exit_status(IMP_ERR_INVAL), IMT_EXIT_USAGE);
    assert_int_equal(imt_exit_status(999), IMT_EXIT_LOST);
    char buf[64];
    assert_string_equal(imt_code_str(500, buf, sizeof buf), "500 NO_SUCH_USER");
    assert_string_equal(imt_code_str(IMP_ERR_TIMEOUT, buf, sizeof buf), "602 TIMEOUT");
    assert_string_equal(imt_code_str(599, buf, sizeof buf), "599 unknown");
    char t[128];
    assert_string_equal(imt_code_text(500, NULL, t, sizeof t), "500 NO_SUCH_USER");
    assert_string_equal(imt_code_text(500, "NO_SUCH_USER", t, sizeof t), "500 NO_SUCH_USER");
    assert_string_equal(imt_code_text(500, "", t, sizeof t), "500 NO_SUCH_USER");
    assert_string_equal(imt_code_text(IMP_ERR_QUOTA, "bob's queue is full", t, sizeof t),
                        "504 QUOTA: bob's queue is full");
}

static void test_trace(void **state)
{
    (void)state;
    FILE *f = tmpfile();
    assert_non_null(f);
    imp_msg m;
    imp_msg_init(&m, IMP_SEND, 7);
    imp_msg_set_u(&m, IMP_T_TARGET_KIND, IMP_TARGET_USER);
    imp_msg_set_s(&m, IMP_T_TARGET, "bob");
    imp_msg_set_b(&m, IMP_T_BODY, "hi", 2);
    imt_trace_frame(f, "imsend", ">>", &m);
    rewind(f);
    char buf[2048] = {0};
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    assert_true(n > 0);
    assert_non_null(strstr(buf, "imsend: >> SEND req=7"));
    assert_non_null(strstr(buf, "TARGET=bob"));
    assert_non_null(strstr(buf, "BODY=\"hi\""));
    /* the hex dump holds the body bytes "68 69" */
    assert_non_null(strstr(buf, "68 69"));
}

/* ---- in-process server ------------------------------------------------------------------- */

typedef struct fake_server {
    struct event_base *base;
    int lfd, fd;
    struct event *ev_accept, *ev_read;
    imp_conn *conn;
    int accept_conns;      /* 0: never accept (connect-timeout test) */
    int refuse_login;      /* answer LOGIN with ERROR 400 */
    int fatal_after_ready; /* after AUTH_OK send ERROR 730 SHUTDOWN */
    int got_delivered_seq; /* DELIVERED seq received */
    int got_send;          /* SEND frames received */
    char last_target[40];
} fake_server;

typedef struct run_state {
    struct event_base *base;
    fake_server *srv;
    imt_client *c;
    int ready, acks, messages, closed;
    imt_ack ack;
    imt_result result;
    char msg_body[64];
    int do_send, do_logout_after_ack;
} run_state;

static void srv_flush(fake_server *s)
{
    const uint8_t *p;
    size_t n;
    while ((n = imp_conn_pending_output(s->conn, &p)) > 0) {
        ssize_t w = write(s->fd, p, n);
        if (w <= 0)
            break;
        imp_conn_consume_output(s->conn, (size_t)w);
    }
}

static void srv_handle(fake_server *s, const imp_msg *m)
{
    imp_msg r;
    switch (m->type) {
    case IMP_LOGIN:
        if (s->refuse_login) {
            imp_msg_init(&r, IMP_ERROR, m->request_id);
            imp_msg_set_u(&r, IMP_T_CODE, 400);
            imp_msg_set_s(&r, IMP_T_TEXT, "bad password");
        } else {
            imp_msg_init(&r, IMP_AUTH_OK, m->request_id);
            imp_msg_set_s(&r, IMP_T_USER, "alice");
            imp_msg_set_u(&r, IMP_T_SESSION_ID, 11);
            imp_msg_set_u(&r, IMP_T_LAST_SEQ, 0);
        }
        assert_int_equal(imp_conn_send(s->conn, &r), 0);
        if (!s->refuse_login && s->fatal_after_ready) {
            imp_msg_init(&r, IMP_ERROR, 0);
            imp_msg_set_u(&r, IMP_T_CODE, 730);
            imp_conn_send(s->conn, &r);
        }
        break;
    case IMP_SEND: {
        s->got_send++;
        imp_bytes t = imp_msg_b(m, IMP_T_TARGET);
        if (t.len < sizeof s->last_target) {
            memcpy(s->last_target, t.p, t.len);
            s->last_target[t.len] = 0;
        }
        imp_msg_init(&r, IMP_ACK, m->request_id);
        if (t.len == 6 && memcmp(t.p, "nobody", 6) == 0) {
            imp_msg_set_u(&r, IMP_T_OUTCOME, IMP_OUTCOME_REFUSED);
            imp_msg_set_u(&r, IMP_T_CODE, 500);
        } else {
            if (imp_msg_has(m, IMP_T_CLIENT_MSG_ID)) {
                imp_bytes k = imp_msg_b(m, IMP_T_CLIENT_MSG_ID);
                imp_msg_set_b(&r, IMP_T_CLIENT_MSG_ID, k.p, k.len);
            }
            imp_msg_set_u(&r, IMP_T_MSG_ID, 100);
            imp_msg_set_u(&r, IMP_T_OUTCOME, IMP_OUTCOME_STORED);
        }
        assert_int_equal(imp_conn_send(s->conn, &r), 0);
        /* and deliver it back to the sender */
        imp_bytes body = imp_msg_b(m, IMP_T_BODY);
        imp_msg_init(&r, IMP_DELIVER, 0);
        imp_msg_set_u(&r, IMP_T_TARGET_KIND, IMP_TARGET_USER);
        imp_msg_set_s(&r, IMP_T_TARGET, "alice");
        imp_msg_set_b(&r, IMP_T_BODY, body.p, body.len);
        imp_msg_set_u(&r, IMP_T_MSG_ID, 100);
        imp_msg_set_u(&r, IMP_T_SEQ, 5);
        imp_msg_set_s(&r, IMP_T_SENDER, "alice");
        imp_msg_set_u(&r, IMP_T_TIMESTAMP, 1234);
        assert_int_equal(imp_conn_send(s->conn, &r), 0);
        break;
    }
    case IMP_DELIVERED:
        s->got_delivered_seq = (int)imp_msg_u(m, IMP_T_SEQ, 0);
        break;
    default:
        break;
    }
}

static void srv_read_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    fake_server *s = arg;
    uint8_t buf[4096];
    ssize_t n = read(fd, buf, sizeof buf);
    if (n <= 0) {
        event_del(s->ev_read);
        return;
    }
    imp_conn_feed(s->conn, buf, (size_t)n);
    imp_msg m;
    while (imp_conn_next_event(s->conn, &m) > 0)
        srv_handle(s, &m);
    srv_flush(s);
    if (imp_conn_want_close(s->conn)) {
        event_del(s->ev_read);
        shutdown(s->fd, SHUT_RDWR);
    }
}

static void srv_accept_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    fake_server *s = arg;
    s->fd = accept(fd, NULL, NULL);
    assert_true(s->fd >= 0);
    imp_config cfg;
    imp_config_default(&cfg, IMP_ROLE_SERVER);
    cfg.ping_interval_ms = 0;
    s->conn = imp_conn_new(IMP_ROLE_SERVER, &cfg, 0);
    assert_non_null(s->conn);
    s->ev_read = event_new(s->base, s->fd, EV_READ | EV_PERSIST, srv_read_cb, s);
    event_add(s->ev_read, NULL);
    event_del(s->ev_accept);
}

static int srv_start(fake_server *s, struct event_base *base)
{
    s->base = base;
    s->fd = -1;
    s->lfd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(s->lfd >= 0);
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(s->lfd, (struct sockaddr *)&sa, sizeof sa), 0);
    assert_int_equal(listen(s->lfd, 4), 0);
    socklen_t sl = sizeof sa;
    getsockname(s->lfd, (struct sockaddr *)&sa, &sl);
    if (s->accept_conns) {
        s->ev_accept = event_new(base, s->lfd, EV_READ | EV_PERSIST, srv_accept_cb, s);
        event_add(s->ev_accept, NULL);
    }
    return ntohs(sa.sin_port);
}

static void srv_stop(fake_server *s)
{
    if (s->ev_read)
        event_free(s->ev_read);
    if (s->ev_accept)
        event_free(s->ev_accept);
    if (s->fd >= 0)
        close(s->fd);
    close(s->lfd);
    imp_conn_free(s->conn);
}

/* ---- client callbacks ------------------------------------------------------------------ */

static void on_ready(imt_client *c, const imt_session *sess, void *ud)
{
    run_state *rs = ud;
    rs->ready++;
    assert_string_equal(sess->user, "alice");
    assert_int_equal(sess->session_id, 11);
    if (rs->do_send) {
        imt_send_args a;
        imt_send_args_init(&a);
        a.target_kind = IMP_TARGET_USER;
        a.target = rs->do_send == 2 ? "nobody" : "bob";
        a.client_msg_id = "key-1";
        a.body = "hello";
        a.body_len = 5;
        uint32_t req = 0;
        assert_int_equal(imt_client_send(c, &a, &req), 0);
        assert_true(req != 0);
    }
}

static void on_ack(imt_client *c, const imt_ack *a, void *ud)
{
    run_state *rs = ud;
    rs->acks++;
    rs->ack = *a;
    if (rs->do_logout_after_ack)
        imt_client_close(c, 0, NULL);
}

static void on_message(imt_client *c, const imt_message *m, void *ud)
{
    (void)c;
    run_state *rs = ud;
    rs->messages++;
    snprintf(rs->msg_body, sizeof rs->msg_body, "%.*s", (int)m->body.len, (const char *)m->body.p);
    assert_int_equal(m->seq, 5);
    assert_string_equal(m->sender, "alice");
}

static void on_close(imt_client *c, const imt_result *r, void *ud)
{
    run_state *rs = ud;
    rs->closed++;
    rs->result = *r;
    (void)c;
    event_base_loopexit(rs->base, NULL);
}

/* Run one client against a fake server (or against port when srv is NULL); bounded to 10 s. */
static void run_client(run_state *rs, fake_server *srv, int port, uint32_t connect_timeout_ms)
{
    struct event_base *base = event_base_new();
    assert_non_null(base);
    rs->base = base;
    rs->srv = srv;
    if (srv)
        port = srv_start(srv, base);
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
    imt_client_config cfg;
    imt_client_config_init(&cfg);
    cfg.server = addr;
    cfg.user = "alice";
    cfg.password = "pw";
    cfg.password_len = 2;
    cfg.connect_timeout_ms = connect_timeout_ms;
    cfg.auto_delivered = 1;
    cfg.prog = "test";
    imt_callbacks cb;
    memset(&cb, 0, sizeof cb);
    cb.on_ready = on_ready;
    cb.on_ack = on_ack;
    cb.on_message = on_message;
    cb.on_close = on_close;
    rs->c = imt_client_new(base, &cfg, &cb, rs);
    assert_non_null(rs->c);
    assert_int_equal(imt_client_start(rs->c), 0);
    struct timeval tv = {10, 0};
    event_base_loopexit(base, &tv);
    event_base_dispatch(base);
    /* let the server read what the client wrote last (DELIVERED, LOGOUT) */
    if (srv) {
        struct timeval tv2 = {0, 100000};
        event_base_loopexit(base, &tv2);
        event_base_dispatch(base);
    }
    imt_client_free(rs->c);
    if (srv)
        srv_stop(srv);
    event_base_free(base);
}

static void test_send_ack_deliver_logout(void **state)
{
    (void)state;
    fake_server srv = {0};
    srv.accept_conns = 1;
    run_state rs = {0};
    rs.do_send = 1;
    rs.do_logout_after_ack = 1;
    run_client(&rs, &srv, 0, 2000);
    assert_int_equal(rs.ready, 1);
    assert_int_equal(rs.acks, 1);
    assert_int_equal(rs.ack.outcome, IMP_OUTCOME_STORED);
    assert_int_equal(rs.ack.msg_id, 100);
    assert_string_equal(rs.ack.client_msg_id, "key-1");
    assert_int_equal(srv.got_send, 1);
    assert_string_equal(srv.last_target, "bob");
    assert_int_equal(rs.closed, 1);
    assert_int_equal(rs.result.status, 0);
    /* the DELIVER arrived in the same read as the ACK, before LOGOUT was answered */
    assert_int_equal(rs.messages, 1);
    assert_string_equal(rs.msg_body, "hello");
    assert_int_equal(srv.got_delivered_seq, 5);
}

static void test_refused_ack(void **state)
{
    (void)state;
    fake_server srv = {0};
    srv.accept_conns = 1;
    run_state rs = {0};
    rs.do_send = 2;
    rs.do_logout_after_ack = 1;
    run_client(&rs, &srv, 0, 2000);
    assert_int_equal(rs.acks, 1);
    assert_int_equal(rs.ack.outcome, IMP_OUTCOME_REFUSED);
    assert_int_equal(rs.ack.code, 500);
    assert_int_equal(rs.ack.has_msg_id, 0);
}

static void test_login_refused(void **state)
{
    (void)state;
    fake_server srv = {0};
    srv.accept_conns = 1;
    srv.refuse_login = 1;
    run_state rs = {0};
    run_client(&rs, &srv, 0, 2000);
    assert_int_equal(rs.ready, 0);
    assert_int_equal(rs.closed, 1);
    assert_int_equal(rs.result.status, IMT_EXIT_AUTH);
    assert_int_equal(rs.result.code, 400);
}

static void test_fatal_error(void **state)
{
    (void)state;
    fake_server srv = {0};
    srv.accept_conns = 1;
    srv.fatal_after_ready = 1;
    run_state rs = {0};
    run_client(&rs, &srv, 0, 2000);
    assert_int_equal(rs.ready, 1);
    assert_int_equal(rs.closed, 1);
    assert_int_equal(rs.result.status, IMT_EXIT_LOST);
    assert_int_equal(rs.result.code, 730);
}

static void test_connection_refused(void **state)
{
    (void)state;
    /* a port that was just free: bind, read it, close */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    socklen_t sl = sizeof sa;
    getsockname(fd, (struct sockaddr *)&sa, &sl);
    close(fd);
    run_state rs = {0};
    run_client(&rs, NULL, ntohs(sa.sin_port), 2000);
    assert_int_equal(rs.closed, 1);
    assert_int_equal(rs.result.status, IMT_EXIT_CONNECT);
    assert_non_null(strstr(rs.result.text, "refused"));
}

static void test_connect_timeout(void **state)
{
    (void)state;
    /* the kernel completes the TCP handshake (backlog) but no one ever answers HELLO */
    fake_server srv = {0};
    srv.accept_conns = 0;
    run_state rs = {0};
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    run_client(&rs, &srv, 0, 300);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    long ms = (t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000;
    assert_int_equal(rs.closed, 1);
    assert_int_equal(rs.result.status, IMT_EXIT_TIMEOUT);
    assert_int_equal(rs.result.code, 602);
    assert_true(ms >= 250 && ms < 3000);
}

static void test_bad_address(void **state)
{
    (void)state;
    struct event_base *base = event_base_new();
    run_state rs = {0};
    rs.base = base;
    imt_client_config cfg;
    imt_client_config_init(&cfg);
    cfg.server = "host:notaport";
    cfg.user = "alice";
    cfg.password = "pw";
    cfg.password_len = 2;
    imt_callbacks cb;
    memset(&cb, 0, sizeof cb);
    cb.on_close = on_close;
    imt_client *c = imt_client_new(base, &cfg, &cb, &rs);
    assert_int_equal(imt_client_start(c), 0);
    assert_int_equal(rs.closed, 0); /* reported from the loop, not from start */
    struct timeval tv = {5, 0};
    event_base_loopexit(base, &tv);
    event_base_dispatch(base);
    assert_int_equal(rs.closed, 1);
    assert_int_equal(rs.result.status, IMT_EXIT_USAGE);
    /* requests before ready are refused */
    imt_send_args a;
    imt_send_args_init(&a);
    a.target_kind = IMP_TARGET_USER;
    a.target = "bob";
    a.body = "x";
    a.body_len = 1;
    assert_true(imt_client_send(c, &a, NULL) < 0);
    imt_client_free(c);
    event_base_free(base);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_addr_parse),      cmocka_unit_test(test_exit_status),
        cmocka_unit_test(test_trace),           cmocka_unit_test(test_send_ack_deliver_logout),
        cmocka_unit_test(test_refused_ack),     cmocka_unit_test(test_login_refused),
        cmocka_unit_test(test_fatal_error),     cmocka_unit_test(test_connection_refused),
        cmocka_unit_test(test_connect_timeout), cmocka_unit_test(test_bad_address),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
