/* echo_bot — a small IMP/1 client on the installed libimp and libevent.
 *
 * Bot mode (default): log in and answer every direct message with "echo: <body>". The echo is
 * sent with CLIENT_MSG_ID "echo-<seq>" and the DELIVER is acknowledged (DELIVERED) only once
 * the server has ACKed the echo: a bot that dies in between gets the message again after it
 * logs back in, sends the echo again with the same CLIENT_MSG_ID, and the server stores it once
 * (SPEC.md IMP-DELIV-005). Room and broadcast messages are acknowledged and not answered.
 *
 * Send mode (--send-to USER TEXT): log in, send TEXT to USER, wait for the server's ACK; with
 * --expect-reply also wait for the direct message "echo: TEXT" from USER and print it. Exits 0
 * on success, 1 on a timeout or an error.
 *
 *   echo_bot [--host H] [--port P] [--user U] [--password PW] [--register] [--timeout S]
 *            [--send-to USER TEXT [--expect-reply]]
 *
 * The environment gives the defaults: IMP_HOST (127.0.0.1), IMP_PORT (7600), IMP_USER,
 * IMP_PASSWORD. --register creates the account (REGISTER) and logs in with LOGIN when it
 * already exists. SIGTERM or SIGINT: LOGOUT, then exit 0.
 *
 * Build: examples/Makefile (pkg-config --cflags --libs libimp, and -levent).
 */
#define _POSIX_C_SOURCE 200809L
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/util.h>

#include <imp/imp.h>

#define MAX_PENDING 256 /* echoes sent and not yet ACKed */

typedef struct bot {
    struct event_base *base;
    struct bufferevent *bev;
    struct event *tick;    /* imp_conn_tick at imp_conn_next_deadline */
    struct event *timeout; /* --timeout */
    imp_conn *conn;
    const char *user, *password, *send_to, *text;
    int do_register, expect_reply, registering;
    uint32_t next_req;
    /* bot mode */
    uint64_t processed; /* highest durable SEQ answered (IMP-DELIV-005) */
    struct pending {
        uint32_t req; /* the echo's SEND (0: nothing to wait for) */
        uint64_t seq; /* the DELIVER it answers */
        int acked;
    } pending[MAX_PENDING];
    int npending;
    /* send mode */
    uint32_t send_req;
    int sent_acked, got_reply;
    int status; /* exit status */
    int closing;
} bot;

static void fail(bot *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("echo_bot: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    b->status = 1;
    event_base_loopexit(b->base, NULL);
}

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static uint32_t req(bot *b)
{
    if (++b->next_req == 0)
        b->next_req = 1;
    return b->next_req;
}

/* Hand the library's pending output to libevent and re-arm the protocol timer. */
static void flush(bot *b)
{
    const uint8_t *out;
    size_t n = imp_conn_pending_output(b->conn, &out);
    if (n > 0) {
        if (bufferevent_write(b->bev, out, n) != 0) {
            fail(b, "cannot queue output");
            return;
        }
        imp_conn_consume_output(b->conn, n);
    }
    uint64_t dl = imp_conn_next_deadline(b->conn), now = now_ms();
    if (dl != UINT64_MAX) {
        uint64_t wait = dl > now ? dl - now : 0;
        struct timeval tv = {(time_t)(wait / 1000u), (suseconds_t)(wait % 1000u) * 1000};
        evtimer_add(b->tick, &tv);
    }
}

static int send_msg(bot *b, const imp_msg *m)
{
    int r = imp_conn_send(b->conn, m);
    if (r < 0)
        fail(b, "cannot send %s: %s", imp_type_name(m->type), imp_strerror(r));
    return r;
}

static void authenticate(bot *b)
{
    imp_msg m;
    imp_msg_init(&m, b->registering ? IMP_REGISTER : IMP_LOGIN, req(b));
    imp_msg_set_s(&m, IMP_T_USER, b->user);
    imp_msg_set_s(&m, IMP_T_PASSWORD, b->password);
    send_msg(b, &m);
}

static void send_text(bot *b, const char *to, const void *body, size_t len, const char *cmid,
                      uint32_t request_id)
{
    imp_msg m;
    imp_msg_init(&m, IMP_SEND, request_id);
    imp_msg_set_u(&m, IMP_T_TARGET_KIND, IMP_TARGET_USER);
    imp_msg_set_s(&m, IMP_T_TARGET, to);
    imp_msg_set_b(&m, IMP_T_BODY, body, len);
    if (cmid)
        imp_msg_set_s(&m, IMP_T_CLIENT_MSG_ID, cmid);
    send_msg(b, &m);
}

static void delivered(bot *b, uint64_t seq)
{
    imp_msg m;
    imp_msg_init(&m, IMP_DELIVERED, req(b));
    imp_msg_set_u(&m, IMP_T_SEQ, seq);
    send_msg(b, &m);
}

static void logout(bot *b)
{
    imp_msg m;
    imp_msg_init(&m, IMP_LOGOUT, req(b));
    if (send_msg(b, &m) == 0)
        b->closing = 1;
}

/* Acknowledge, in order, every DELIVER whose echo the server has ACKed (DELIVERED is
 * cumulative, so an echo ACKed early waits for the ones before it). */
static void ack_done(bot *b)
{
    int k = 0;
    uint64_t upto = 0;
    while (k < b->npending && b->pending[k].acked)
        upto = b->pending[k++].seq;
    if (k == 0)
        return;
    memmove(b->pending, b->pending + k, (size_t)(b->npending - k) * sizeof b->pending[0]);
    b->npending -= k;
    if (upto > 0)
        delivered(b, upto);
}

static void on_deliver(bot *b, const imp_msg *m)
{
    uint64_t seq = imp_msg_u(m, IMP_T_SEQ, 0);
    imp_bytes sender = imp_msg_b(m, IMP_T_SENDER), body = imp_msg_b(m, IMP_T_BODY);
    int direct = imp_msg_u(m, IMP_T_TARGET_KIND, 0) == IMP_TARGET_USER;
    char from[IMP_NAME_MAX + 1];
    snprintf(from, sizeof from, "%.*s", (int)sender.len, (const char *)sender.p);

    if (b->send_to) { /* send mode: is this the reply we wait for? */
        size_t tl = strlen(b->text);
        if (direct &&
            imp_name_equal(sender.p, sender.len, (const uint8_t *)b->send_to, strlen(b->send_to)) &&
            body.len == 6 + tl && memcmp(body.p, "echo: ", 6) == 0 &&
            memcmp(body.p + 6, b->text, tl) == 0) {
            printf("reply from %s: %.*s\n", from, (int)body.len, (const char *)body.p);
            fflush(stdout);
            b->got_reply = 1;
        }
        if (seq > 0)
            delivered(b, seq);
        return;
    }

    /* bot mode */
    if (!direct || (seq > 0 && seq <= b->processed)) { /* not for us, or a duplicate */
        if (seq > 0 && b->npending == 0)
            delivered(b, seq);
        else if (seq > 0 && b->npending < MAX_PENDING)
            b->pending[b->npending++] = (struct pending){0, seq, 1};
        return;
    }
    if (b->npending >= MAX_PENDING) {
        fail(b, "too many echoes waiting for their ACK");
        return;
    }
    char *echo = malloc(body.len + 6);
    if (!echo) {
        fail(b, "out of memory");
        return;
    }
    memcpy(echo, "echo: ", 6);
    if (body.len)
        memcpy(echo + 6, body.p, body.len);
    char cmid[32];
    snprintf(cmid, sizeof cmid, "echo-%llu", (unsigned long long)seq);
    uint32_t r = req(b);
    /* A transient message (SEQ 0) has nothing to acknowledge: send the echo without an id. */
    send_text(b, from, echo, body.len + 6, seq > 0 ? cmid : NULL, r);
    free(echo);
    printf("echo to %s (seq %llu, %zu bytes)\n", from, (unsigned long long)seq, body.len);
    fflush(stdout);
    if (seq > 0) {
        b->processed = seq;
        b->pending[b->npending++] = (struct pending){r, seq, 0};
    }
}

static void on_event(bot *b, const imp_msg *m)
{
    switch (m->type) {
    case IMP_WELCOME:
        authenticate(b);
        break;
    case IMP_AUTH_OK: {
        imp_bytes u = imp_msg_b(m, IMP_T_USER);
        printf("logged in as %.*s\n", (int)u.len, (const char *)u.p);
        fflush(stdout);
        if (b->send_to) {
            b->send_req = req(b);
            send_text(b, b->send_to, b->text, strlen(b->text), NULL, b->send_req);
        }
        break;
    }
    case IMP_ERROR: {
        int code = (int)imp_msg_u(m, IMP_T_CODE, 0);
        if (b->registering && code == -IMP_ERR_USER_EXISTS) {
            b->registering = 0; /* the account exists: log in instead */
            authenticate(b);
        } else {
            imp_bytes t = imp_msg_b(m, IMP_T_TEXT);
            fail(b, "server error %d %s: %.*s", code, imp_err_name(code) ? imp_err_name(code) : "",
                 (int)t.len, (const char *)t.p);
        }
        break;
    }
    case IMP_DELIVER:
        on_deliver(b, m);
        break;
    case IMP_ACK: {
        uint64_t outcome = imp_msg_u(m, IMP_T_OUTCOME, 0);
        if (outcome == IMP_OUTCOME_REFUSED) {
            int code = (int)imp_msg_u(m, IMP_T_CODE, 0);
            if (b->send_to) {
                fail(b, "message refused: %d %s", code, imp_strerror(code));
                break;
            }
            /* The bot goes on: the message it answered is acknowledged all the same, or it
             * would come back at every login. */
            fprintf(stderr, "echo_bot: echo refused: %d %s\n", code, imp_strerror(code));
        }
        if (b->send_to && m->request_id == b->send_req)
            b->sent_acked = 1;
        for (int i = 0; i < b->npending; i++)
            if (b->pending[i].req == m->request_id)
                b->pending[i].acked = 1;
        ack_done(b);
        break;
    }
    default: /* PING, OK (after LOGOUT), ...: the library does what the protocol requires */
        break;
    }
    if (b->send_to && !b->closing && b->sent_acked && (b->got_reply || !b->expect_reply))
        logout(b);
}

static void pump(bot *b)
{
    struct evbuffer *in = bufferevent_get_input(b->bev);
    for (;;) {
        size_t avail = evbuffer_get_length(in);
        imp_ssize taken = 0;
        if (avail > 0) {
            size_t chunk = avail < 65536 ? avail : 65536;
            taken = imp_conn_feed(b->conn, evbuffer_pullup(in, (ev_ssize_t)chunk), chunk);
            if (taken < 0) {
                fail(b, "connection failed: %s", imp_strerror((int)taken));
                break;
            }
            evbuffer_drain(in, (size_t)taken);
        }
        imp_msg m;
        int r, events = 0;
        while (b->status == 0 && (r = imp_conn_next_event(b->conn, &m)) > 0) {
            on_event(b, &m);
            events++;
        }
        if (b->status == 0 && r < 0)
            fail(b, "connection failed: %s", imp_strerror(r));
        if (b->status != 0 || (taken == 0 && events == 0))
            break;
    }
    flush(b);
}

static void on_read(struct bufferevent *bev, void *arg)
{
    (void)bev;
    pump(arg);
}

static void on_write(struct bufferevent *bev, void *arg)
{
    bot *b = arg;
    (void)bev;
    if (imp_conn_want_close(b->conn)) /* everything written: done */
        event_base_loopexit(b->base, NULL);
}

static void on_bev_event(struct bufferevent *bev, short what, void *arg)
{
    bot *b = arg;
    (void)bev;
    if (what & BEV_EVENT_CONNECTED) {
        flush(b); /* HELLO, queued by imp_conn_new */
        return;
    }
    if (b->closing || imp_conn_want_close(b->conn)) {
        event_base_loopexit(b->base, NULL);
        return;
    }
    if (what & BEV_EVENT_EOF)
        fail(b, "connection closed by the server");
    else
        fail(b, "connection failed: %s", evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    bot *b = arg;
    (void)fd;
    (void)what;
    int r = imp_conn_tick(b->conn, now_ms());
    if (r < 0)
        fail(b, "connection failed: %s", imp_strerror(r));
    flush(b);
}

static void on_signal(evutil_socket_t fd, short what, void *arg)
{
    bot *b = arg;
    (void)fd;
    (void)what;
    if (b->closing || imp_conn_state(b->conn) != IMP_S_READY) {
        event_base_loopexit(b->base, NULL);
        return;
    }
    logout(b); /* the server answers OK and closes: the loop ends */
    flush(b);
}

static void on_timeout(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    fail(arg, "timed out");
}

static void usage(void)
{
    fputs("usage: echo_bot [--host H] [--port P] [--user U] [--password PW] [--register]\n"
          "                [--timeout SECONDS] [--send-to USER TEXT [--expect-reply]]\n"
          "Defaults from IMP_HOST, IMP_PORT, IMP_USER, IMP_PASSWORD.\n",
          stderr);
    exit(2);
}

int main(int argc, char **argv)
{
    static bot b;
    const char *host = getenv("IMP_HOST"), *port = getenv("IMP_PORT");
    long timeout_s = 0;
    b.user = getenv("IMP_USER");
    b.password = getenv("IMP_PASSWORD");
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int more = i + 1 < argc;
        if (strcmp(a, "--host") == 0 && more)
            host = argv[++i];
        else if (strcmp(a, "--port") == 0 && more)
            port = argv[++i];
        else if (strcmp(a, "--user") == 0 && more)
            b.user = argv[++i];
        else if (strcmp(a, "--password") == 0 && more)
            b.password = argv[++i];
        else if (strcmp(a, "--register") == 0)
            b.do_register = 1;
        else if (strcmp(a, "--timeout") == 0 && more)
            timeout_s = strtol(argv[++i], NULL, 10);
        else if (strcmp(a, "--send-to") == 0 && i + 2 < argc) {
            b.send_to = argv[++i];
            b.text = argv[++i];
        } else if (strcmp(a, "--expect-reply") == 0)
            b.expect_reply = 1;
        else
            usage();
    }
    if (!b.user || !b.password || (b.expect_reply && !b.send_to))
        usage();
    b.registering = b.do_register;

    struct evutil_addrinfo hints, *ai = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    int gai = evutil_getaddrinfo(host ? host : "127.0.0.1", port ? port : "7600", &hints, &ai);
    if (gai != 0) {
        fprintf(stderr, "echo_bot: %s: %s\n", host ? host : "127.0.0.1", evutil_gai_strerror(gai));
        return 1;
    }
    b.base = event_base_new();
    b.conn = imp_conn_new(IMP_ROLE_CLIENT, NULL, now_ms());
    b.bev = b.base ? bufferevent_socket_new(b.base, -1, BEV_OPT_CLOSE_ON_FREE) : NULL;
    b.tick = b.base ? evtimer_new(b.base, on_tick, &b) : NULL;
    b.timeout = b.base ? evtimer_new(b.base, on_timeout, &b) : NULL;
    struct event *sigterm = b.base ? evsignal_new(b.base, SIGTERM, on_signal, &b) : NULL;
    struct event *sigint = b.base ? evsignal_new(b.base, SIGINT, on_signal, &b) : NULL;
    if (!b.conn || !b.bev || !b.tick || !b.timeout || !sigterm || !sigint ||
        event_add(sigterm, NULL) != 0 || event_add(sigint, NULL) != 0) {
        fprintf(stderr, "echo_bot: out of memory\n");
        return 1;
    }
    bufferevent_setcb(b.bev, on_read, on_write, on_bev_event, &b);
    bufferevent_enable(b.bev, EV_READ | EV_WRITE);
    if (bufferevent_socket_connect(b.bev, ai->ai_addr, (int)ai->ai_addrlen) != 0) {
        fprintf(stderr, "echo_bot: cannot connect\n");
        return 1;
    }
    evutil_freeaddrinfo(ai);
    if (timeout_s > 0) {
        struct timeval tv = {(time_t)timeout_s, 0};
        evtimer_add(b.timeout, &tv);
    }
    event_base_dispatch(b.base);
    if (b.status == 0 && b.send_to && !(b.sent_acked && (b.got_reply || !b.expect_reply))) {
        fprintf(stderr, "echo_bot: connection ended before the %s\n",
                b.sent_acked ? "reply" : "ACK");
        b.status = 1;
    }

    event_free(sigint);
    event_free(sigterm);
    event_free(b.timeout);
    event_free(b.tick);
    bufferevent_free(b.bev);
    imp_conn_free(b.conn);
    event_base_free(b.base);
    return b.status;
}
