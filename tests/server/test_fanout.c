/* Unit tests for the transient room fan-out (deliver.c, issue 3): one IMS_BUS_TRANSIENT_MANY
 * bus event per room message, served a block of members at a time (FANOUT_BLOCK) with the
 * members' memory prefetched ahead. The room here is larger than one block and not a multiple
 * of it, and mixes what the per-member path must tell apart: members with two sessions, the
 * sender's own second session, a member offline, a non-member online, and a slow member (over
 * output_soft) whose copy is dropped and counted. Real store, real hashing, real libimp clients
 * (server_harness.h).
 *
 * And net.c's order of writing in a turn (test_net_writes_answers_first): the connections read
 * in the turn (room senders: their ACKs) are written before the turn's fan-out to the others.
 */
#include "server_harness.h"

#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "net.h"

#define MEMBERS 150 /* > FANOUT_BLOCK (128) and not a multiple of it */
#define OFFLINE 7   /* member u007 joins, then goes offline */
#define SLOW 33     /* member u033 gets a durable message it does not read */

/* The next frame that is not a PRESENCE_EVENT (1), 0 none. */
static int next_non_presence(tc *t, imp_msg *m)
{
    int r;
    while ((r = tc_next(t, m)) == 1 && m->type == IMP_PRESENCE_EVENT)
        ;
    return r;
}

/* Reads everything a client has been sent so far. */
static void drain(tc *t)
{
    imp_msg m;
    while (tc_next(t, &m) == 1)
        ;
}

/* The next non-PRESENCE frame must be u000's transient DELIVER in room "big" with this body;
 * returns its MSG_ID. */
static uint64_t expect_room_transient(tc *t, const char *body)
{
    imp_msg m;
    assert_int_equal(next_non_presence(t, &m), 1);
    assert_int_equal(m.type, IMP_DELIVER);
    assert_int_equal(imp_msg_u(&m, IMP_T_TARGET_KIND, 0), IMP_TARGET_ROOM);
    assert_true(bytes_is(imp_msg_b(&m, IMP_T_TARGET), "big"));
    assert_true(bytes_is(imp_msg_b(&m, IMP_T_SENDER), "u000"));
    assert_int_equal(imp_msg_u(&m, IMP_T_CLASS, 0), IMP_CLASS_TRANSIENT);
    assert_int_equal(imp_msg_u(&m, IMP_T_SEQ, 99), 0); /* IMP-DELIV-002 */
    if (!bytes_is(imp_msg_b(&m, IMP_T_BODY), body))
        fail_msg("DELIVER body is not \"%s\"", body);
    uint64_t id = imp_msg_u(&m, IMP_T_MSG_ID, 0);
    assert_true(id >> 63); /* a transient id */
    return id;
}

static void test_big_room_fanout(void **state)
{
    (void)state;
    th *h = h_new();
    h->cfg.max_connections = 1000;
    h->cfg.max_connections_per_addr = 1000;
    h_start_cfg(h);
    tc *member[MEMBERS]; /* each member's first session */
    tc *second[MEMBERS]; /* a second session (u000 and every tenth member), else NULL */
    char name[16];
    for (int i = 0; i < MEMBERS; i++) {
        snprintf(name, sizeof name, "u%03d", i);
        member[i] = tc_user(h, name, 1);
        tc_join(member[i], "big");
        second[i] = i % 10 == 0 ? tc_user(h, name, 0) : NULL;
    }
    tc *outsider = tc_user(h, "zed", 1); /* online, not a member */
    tc_close(member[OFFLINE]);
    member[OFFLINE] = NULL;
    turn(h);
    /* every session that must get the room's messages: all but the sending one (u000's first)
     * and the offline member's */
    tc *recv[2 * MEMBERS];
    size_t nrecv = 0;
    for (int i = 0; i < MEMBERS; i++) {
        if (i != 0 && member[i])
            recv[nrecv++] = member[i];
        if (second[i])
            recv[nrecv++] = second[i];
    }
    assert_int_equal(nrecv, MEMBERS - 2 + MEMBERS / 10);
    for (int i = 0; i < MEMBERS; i++) {
        if (member[i])
            drain(member[i]);
        if (second[i])
            drain(second[i]);
    }
    drain(outsider);

    tc *a = member[0];
    uint64_t delivered = st_get(h, "transient_delivered");
    uint64_t dropped = st_get(h, "transient_dropped");
    uint32_t r1 = tc_sendmsg(a, IMP_TARGET_ROOM, "big", NULL, "one", IMP_CLASS_TRANSIENT, 2);
    uint32_t r2 = tc_sendmsg(a, IMP_TARGET_ROOM, "BIG", NULL, "two", IMP_CLASS_TRANSIENT, 1);
    tc_sendmsg(a, IMP_TARGET_ROOM, "big", NULL, "three", IMP_CLASS_TRANSIENT, 0);
    /* the sender: its ACKs (ACK_MODE 2: OUTCOME delivered; 1: accepted), none of its messages */
    uint64_t id1 = tc_ack(a, r1, IMP_OUTCOME_DELIVERED, 0);
    uint64_t id2 = tc_ack(a, r2, IMP_OUTCOME_STORED, 0);
    imp_msg m;
    assert_int_equal(next_non_presence(a, &m), 0);
    assert_true(id1 >> 63 && id2 > id1);
    /* every other session: each message exactly once, in order, one id per message */
    uint64_t id3 = 0;
    for (size_t i = 0; i < nrecv; i++) {
        assert_int_equal(expect_room_transient(recv[i], "one"), id1);
        assert_int_equal(expect_room_transient(recv[i], "two"), id2);
        uint64_t id = expect_room_transient(recv[i], "three");
        if (i == 0)
            id3 = id;
        assert_int_equal(id, id3);
        assert_int_equal(next_non_presence(recv[i], &m), 0);
    }
    assert_true(id3 > id2);
    assert_int_equal(next_non_presence(outsider, &m), 0);
    assert_int_equal(st_get(h, "transient_delivered") - delivered, 3 * nrecv);
    assert_int_equal(st_get(h, "transient_dropped") - dropped, 0);

    /* u033 has an unread DELIVER: over a small soft cap it drops the next room message
     * (counted once), every other session still gets it */
    ims_cfg cfg = h->cfg;
    cfg.output_soft = 10;
    ims_server_reload(h->srv, &cfg, NULL, NULL);
    tc_sendmsg(a, IMP_TARGET_USER, "u033", NULL, "fill", -1, 0);
    turn(h);
    delivered = st_get(h, "transient_delivered");
    dropped = st_get(h, "transient_dropped");
    tc_sendmsg(a, IMP_TARGET_ROOM, "big", NULL, "four", IMP_CLASS_TRANSIENT, 0);
    assert_int_equal(st_get(h, "transient_dropped") - dropped, 1);
    assert_int_equal(st_get(h, "transient_delivered") - delivered, nrecv - 1);
    for (size_t i = 0; i < nrecv; i++) {
        if (recv[i] == member[SLOW])
            continue;
        expect_room_transient(recv[i], "four");
        assert_int_equal(next_non_presence(recv[i], &m), 0);
    }
    tc_deliver(member[SLOW], 1, "fill");
    assert_int_equal(next_non_presence(member[SLOW], &m), 0);
    assert_int_equal(next_non_presence(a, &m), 0);

    for (int i = 0; i < MEMBERS; i++) {
        if (member[i])
            tc_close(member[i]);
        if (second[i])
            tc_close(second[i]);
    }
    tc_close(outsider);
    h_free(h);
}

/* A transient room message is queued on the members by reference (one encoded frame, written
 * from one place: imp_conn_send_shared); a transient direct message is copied into its
 * recipient's output (one reference per small frame would make the writes gather many small
 * segments). Seen in the outputs' segments; what each client reads is the same either way. */
static void test_shared_frames_only_for_fanout(void **state)
{
    (void)state;
    th *h = h_new();
    h_start_cfg(h);
    tc *a = tc_user(h, "ann", 1), *b = tc_user(h, "bob", 1), *c = tc_user(h, "cid", 1);
    tc_join(a, "r");
    tc_join(b, "r");
    tc_join(c, "r");
    turn(h);
    drain(a);
    drain(b);
    drain(c);
    imp_iovec seg[8];
    for (int i = 0; i < 3; i++)
        tc_sendmsg(a, IMP_TARGET_USER, "bob", NULL, "direct", IMP_CLASS_TRANSIENT, 0);
    turn(h);
    assert_int_equal(ims_client_output_iov(b->sc, seg, 8), 1); /* the buffer: copied */
    for (int i = 0; i < 3; i++)
        tc_sendmsg(a, IMP_TARGET_ROOM, "r", NULL, "room", IMP_CLASS_TRANSIENT, 0);
    turn(h);
    /* bob: his buffer (the direct ones), then the three room frames by reference; cid: the
     * same three frames, the same memory */
    imp_iovec segc[8];
    assert_int_equal(ims_client_output_iov(b->sc, seg, 8), 4);
    assert_int_equal(ims_client_output_iov(c->sc, segc, 8), 3);
    for (int i = 0; i < 3; i++)
        assert_ptr_equal(seg[1 + i].base, segc[i].base);
    imp_msg m;
    for (int i = 0; i < 3; i++) {
        assert_int_equal(next_non_presence(b, &m), 1);
        assert_true(bytes_is(imp_msg_b(&m, IMP_T_BODY), "direct"));
    }
    for (int i = 0; i < 3; i++) {
        assert_int_equal(next_non_presence(b, &m), 1);
        assert_true(bytes_is(imp_msg_b(&m, IMP_T_BODY), "room"));
        assert_int_equal(next_non_presence(c, &m), 1);
        assert_true(bytes_is(imp_msg_b(&m, IMP_T_BODY), "room"));
    }
    assert_int_equal(next_non_presence(b, &m), 0);
    assert_int_equal(next_non_presence(c, &m), 0);
    tc_close(a);
    tc_close(b);
    tc_close(c);
    h_free(h);
}

/* ---- net.c: the connections read in a turn are written first --------------------------------
 *
 * The network layer over real loopback sockets (ims_net, libevent, the server core with an
 * in-memory store and one hash thread), driven by this process's event loop turn by turn, with
 * clients that are plain blocking sockets plus libimp client connections. net.c's send() and
 * sendmsg() calls go to the definitions below (linked into this program), which record which
 * socket each write went to and how many bytes it wrote. */

static int rec_on;
static int rec_fd[4096];
static size_t rec_len[4096];
static size_t rec_n;

static void rec_write(int fd, ssize_t w)
{
    if (rec_on && rec_n < sizeof rec_fd / sizeof rec_fd[0]) {
        rec_fd[rec_n] = fd;
        rec_len[rec_n++] = w > 0 ? (size_t)w : 0;
    }
}

ssize_t send(int fd, const void *buf, size_t len, int flags)
{
    ssize_t w = (ssize_t)syscall(SYS_sendto, fd, buf, len, flags, NULL, 0);
    rec_write(fd, w);
    return w;
}

ssize_t sendmsg(int fd, const struct msghdr *mh, int flags)
{
    ssize_t w = (ssize_t)syscall(SYS_sendmsg, fd, mh, flags);
    rec_write(fd, w);
    return w;
}

typedef struct nc {
    int fd;
    int port; /* the client's local port: the server's socket's peer port */
    imp_conn *ic;
    uint32_t req;
} nc;

static struct event_base *nbase;

static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* Runs imd's loop until nothing is left to do now (every turn included). */
static void nspin(void)
{
    event_base_loop(nbase, EVLOOP_NONBLOCK);
}

static void nc_flush(nc *c)
{
    const uint8_t *p;
    size_t n;
    while ((n = imp_conn_pending_output(c->ic, &p)) > 0) {
        ssize_t w = write(c->fd, p, n);
        assert_true(w > 0);
        imp_conn_consume_output(c->ic, (size_t)w);
    }
}

/* The next frame of type (0: any) for c, running imd's loop meanwhile; fails after 5 s. */
static void nc_wait(nc *c, uint8_t type, imp_msg *m)
{
    static uint8_t buf[65536];
    uint64_t end = mono_ms() + 5000;
    for (;;) {
        int r;
        while ((r = imp_conn_next_event(c->ic, m)) > 0)
            if (type == 0 || m->type == type)
                return;
        assert_int_equal(r, 0);
        nc_flush(c); /* automatic answers (PONG) */
        nspin();
        ssize_t k = recv(c->fd, buf, sizeof buf, MSG_DONTWAIT);
        if (k > 0)
            assert_int_equal(imp_conn_feed(c->ic, buf, (size_t)k), k);
        else if (k == 0 || (errno != EAGAIN && errno != EWOULDBLOCK))
            fail_msg("connection closed");
        else if (mono_ms() > end)
            fail_msg("no frame of type %d within 5 s", type);
        else
            usleep(200);
    }
}

static nc *nc_user(int port, const char *user, const char *room)
{
    nc *c = calloc(1, sizeof *c);
    assert_non_null(c);
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(c->fd >= 0);
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(c->fd, (struct sockaddr *)&sa, sizeof sa), 0);
    socklen_t sl = sizeof sa;
    assert_int_equal(getsockname(c->fd, (struct sockaddr *)&sa, &sl), 0);
    c->port = ntohs(sa.sin_port);
    c->ic = imp_conn_new(IMP_ROLE_CLIENT, NULL, mono_ms());
    assert_non_null(c->ic);
    imp_msg m;
    nc_flush(c); /* HELLO */
    nc_wait(c, IMP_WELCOME, &m);
    imp_msg_init(&m, IMP_REGISTER, ++c->req);
    imp_msg_set_s(&m, IMP_T_USER, user);
    imp_msg_set_s(&m, IMP_T_PASSWORD, PW);
    assert_int_equal(imp_conn_send(c->ic, &m), 0);
    nc_flush(c);
    nc_wait(c, IMP_AUTH_OK, &m);
    imp_msg_init(&m, IMP_JOIN, ++c->req);
    imp_msg_set_s(&m, IMP_T_ROOM, room);
    assert_int_equal(imp_conn_send(c->ic, &m), 0);
    nc_flush(c);
    nc_wait(c, IMP_OK, &m);
    return c;
}

static void nc_free(nc *c)
{
    close(c->fd);
    imp_conn_free(c->ic);
    free(c);
}

/* Which client the server's socket fd talks to (-1: none of them). */
static int nc_of_fd(nc *const *cs, int n, int fd)
{
    struct sockaddr_in sa;
    socklen_t sl = sizeof sa;
    if (getpeername(fd, (struct sockaddr *)&sa, &sl) != 0)
        return -1;
    for (int i = 0; i < n; i++)
        if (cs[i]->port == ntohs(sa.sin_port))
            return i;
    return -1;
}

/* imd's socket of client c (in this process): the fd whose peer is c's local port. */
static int server_fd_of(const nc *c)
{
    for (int fd = 3; fd < 4096; fd++) {
        struct sockaddr_in sa;
        socklen_t sl = sizeof sa;
        if (getpeername(fd, (struct sockaddr *)&sa, &sl) == 0 && sa.sin_family == AF_INET &&
            ntohs(sa.sin_port) == c->port && fd != c->fd)
            return fd;
    }
    fail_msg("no server socket for port %d", c->port);
    return -1;
}

#define NW_MEMBERS 8 /* besides the two senders */

/* Two members send a transient room message each and both SENDs are read in the same turn:
 * whichever is read second was already owed the other's DELIVER (it is a member), and whichever
 * is read first is owed the second's. Both are written (their ACK, and the other's DELIVER)
 * before any other member's DELIVER is, whatever order the dirty list has (LIFO: without the
 * rule, one of the two senders, the room's first member, is marked first and written last). */
/* imd's network layer, core, store and hash thread in this process (nspin runs its loop). */
typedef struct nenv {
    ims_cfg cfg;
    ims_store *store;
    ims_net *net;
    ims_auth *auth;
    ims_server *srv;
    int port;
} nenv;

static void nenv_up(nenv *e)
{
    ims_cfg cfg;
    h_cfg(&cfg);
    cfg.n_listen = 1;
    snprintf(cfg.listen[0], sizeof cfg.listen[0], "127.0.0.1:0");
    char err[256];
    ims_log_setup("error", "text");
    ims_store_options so = {":memory:", 0, NULL, NULL, 0, 0};
    ims_store *store = ims_store_open(&so, err, sizeof err);
    assert_non_null(store);
    nbase = event_base_new();
    assert_non_null(nbase);
    ims_net *net = ims_net_new(nbase);
    assert_non_null(net);
    ims_auth_options ao;
    ims_auth_options_default(&ao);
    ao.threads = 1;
    ao.opslimit = crypto_pwhash_OPSLIMIT_MIN;
    ao.memlimit = crypto_pwhash_MEMLIMIT_MIN;
    ao.wake = ims_net_auth_wake;
    ao.wake_ud = net;
    ims_auth *auth = ims_auth_new(&ao);
    assert_non_null(auth);
    ims_server_options o;
    memset(&o, 0, sizeof o);
    o.cfg = &cfg;
    o.store = store;
    o.auth = auth;
    o.io = ims_net_io_ops();
    o.version = "imd/test";
    ims_server *srv = ims_server_new(&o);
    assert_non_null(srv);
    ims_net_set_server(net, srv);
    FILE *out = tmpfile();
    assert_non_null(out);
    assert_int_equal(ims_net_listen(net, &cfg, out, err, sizeof err), 0);
    rewind(out);
    int port = 0;
    assert_int_equal(fscanf(out, "imd: listening on 127.0.0.1:%d", &port), 1);
    fclose(out);
    e->cfg = cfg;
    e->store = store;
    e->net = net;
    e->auth = auth;
    e->srv = srv;
    e->port = port;
}

static void nenv_down(nenv *e)
{
    for (int i = 0; i < 50 && ims_net_connections(e->net) > 0; i++) {
        nspin();
        usleep(2000);
    }
    ims_net_free(e->net);
    ims_server_free(e->srv);
    ims_auth_free(e->auth);
    ims_store_close(e->store);
    event_base_free(nbase);
}

static void test_net_writes_answers_first(void **state)
{
    (void)state;
    nenv e;
    nenv_up(&e);
    int port = e.port;

    /* s0 first: the lowest user id, the first member a fan-out marks */
    enum { N = 2 + NW_MEMBERS };
    nc *cs[N];
    char name[16];
    for (int i = 0; i < N; i++) {
        snprintf(name, sizeof name, i < 2 ? "s%d" : "m%d", i);
        cs[i] = nc_user(port, name, "hall");
    }
    /* settle: nothing owed to anyone (presence events read) */
    nspin();
    int sfd[2] = {server_fd_of(cs[0]), server_fd_of(cs[1])};
    for (int round = 0; round < 3; round++) {
        imp_msg m;
        uint32_t req[2];
        for (int s = 1; s >= 0; s--) { /* s1 written first, s0 second; one turn reads both */
            imp_msg_init(&m, IMP_SEND, ++cs[s]->req);
            imp_msg_set_u(&m, IMP_T_TARGET_KIND, IMP_TARGET_ROOM);
            imp_msg_set_s(&m, IMP_T_TARGET, "hall");
            imp_msg_set_u(&m, IMP_T_CLASS, IMP_CLASS_TRANSIENT);
            imp_msg_set_u(&m, IMP_T_ACK_MODE, round == 2 ? IMP_ACK_DELIVERED : IMP_ACK_STORED);
            imp_msg_set_b(&m, IMP_T_BODY, "hi", 2);
            req[s] = m.request_id;
            assert_int_equal(imp_conn_send(cs[s]->ic, &m), 0);
            nc_flush(cs[s]);
        }
        /* both SENDs are in imd's sockets before its loop looks: one turn reads both */
        for (int s = 0; s < 2; s++) {
            struct pollfd pf = {sfd[s], POLLIN, 0};
            assert_int_equal(poll(&pf, 1, 5000), 1);
        }
        rec_n = 0;
        rec_on = 1;
        nspin();
        rec_on = 0;
        /* every write: the two senders' come before every other member's */
        int first_member = -1, last_sender = -1;
        int seen[N] = {0};
        for (size_t i = 0; i < rec_n; i++) {
            int k = nc_of_fd(cs, N, rec_fd[i]);
            if (k < 0 || k >= N) {
                fail_msg("a write to a socket of no client");
                continue;
            }
            seen[k] = 1;
            if (k < 2)
                last_sender = (int)i;
            else if (first_member < 0)
                first_member = (int)i;
        }
        for (int k = 0; k < N; k++)
            if (!seen[k])
                fail_msg("round %d: nothing written to client %d in the turn", round, k);
        if (last_sender > first_member)
            fail_msg("round %d: a sender written (write %d) after a member (write %d)", round,
                     last_sender, first_member);
        /* and what was written is right: each sender its ACK and the other's DELIVER, each
         * member both DELIVERs */
        for (int s = 0; s < 2; s++) {
            int acks = 0, delivers = 0; /* in either order: which SEND was read first */
            while (acks + delivers < 2) {
                nc_wait(cs[s], 0, &m);
                if (m.type == IMP_ACK) {
                    acks++;
                    assert_int_equal(m.request_id, req[s]);
                    assert_int_equal(imp_msg_u(&m, IMP_T_OUTCOME, 0),
                                     round == 2 ? IMP_OUTCOME_DELIVERED : IMP_OUTCOME_STORED);
                } else if (m.type == IMP_DELIVER) {
                    delivers++;
                    assert_true(bytes_is(imp_msg_b(&m, IMP_T_SENDER), s ? "s0" : "s1"));
                }
            }
            assert_int_equal(acks, 1);
        }
        for (int k = 2; k < N; k++) {
            nc_wait(cs[k], IMP_DELIVER, &m);
            assert_true(bytes_is(imp_msg_b(&m, IMP_T_SENDER), "s1"));
            nc_wait(cs[k], IMP_DELIVER, &m);
            assert_true(bytes_is(imp_msg_b(&m, IMP_T_SENDER), "s0"));
        }
    }
    for (int i = 0; i < N; i++)
        nc_free(cs[i]);
    nenv_down(&e);
}

/* ---- net.c: fan-out output coalesced over two turns (HOLD_MIN .. HOLD_MAX) ---------------- */

#define H_MEMBERS 3
#define H_BODY 1000 /* 8 messages: ~8.8 KB per member, between HOLD_MIN and HOLD_MAX */

/* s sends n transient room messages to "hall" (bodies "b<index>" padded to H_BODY) in one
 * write, and waits until imd's socket has them. */
static void send_burst(nc *s, int sfd, int first, int n)
{
    static char body[H_BODY];
    for (int i = 0; i < n; i++) {
        imp_msg m;
        imp_msg_init(&m, IMP_SEND, ++s->req);
        imp_msg_set_u(&m, IMP_T_TARGET_KIND, IMP_TARGET_ROOM);
        imp_msg_set_s(&m, IMP_T_TARGET, "hall");
        imp_msg_set_u(&m, IMP_T_CLASS, IMP_CLASS_TRANSIENT);
        imp_msg_set_u(&m, IMP_T_ACK_MODE, IMP_ACK_STORED);
        memset(body, 'x', sizeof body);
        snprintf(body, sizeof body, "b%06d", first + i);
        imp_msg_set_b(&m, IMP_T_BODY, body, sizeof body);
        assert_int_equal(imp_conn_send(s->ic, &m), 0);
    }
    nc_flush(s);
    struct pollfd pf = {sfd, POLLIN, 0};
    assert_int_equal(poll(&pf, 1, 5000), 1);
}

/* Bytes written to fd among the recorded writes (-1: no write to it). */
static long long written_to(int fd)
{
    long long n = -1;
    for (size_t i = 0; i < rec_n; i++)
        if (rec_fd[i] == fd)
            n = (n < 0 ? 0 : n) + (long long)rec_len[i];
    return n;
}

/* Reads n DELIVERs at c: the messages first .. first+n-1 in order, then its ACKs are not
 * expected (a member). */
static void expect_burst(nc *c, int first, int n)
{
    for (int i = 0; i < n; i++) {
        imp_msg m;
        nc_wait(c, IMP_DELIVER, &m);
        imp_bytes b = imp_msg_b(&m, IMP_T_BODY);
        char want[16];
        snprintf(want, sizeof want, "b%06d", first + i);
        assert_int_equal(b.len, H_BODY);
        if (memcmp(b.p, want, strlen(want)) != 0)
            fail_msg("DELIVER %d: not message %s", i, want);
    }
}

static void expect_acks(nc *c, int n)
{
    for (int i = 0; i < n; i++) {
        imp_msg m;
        nc_wait(c, IMP_ACK, &m);
        assert_int_equal(imp_msg_u(&m, IMP_T_OUTCOME, 0), IMP_OUTCOME_STORED);
    }
}

/* A member owed a fan-out of HOLD_MIN .. HOLD_MAX bytes by a turn that read requests is written
 * in the next turn (the senders' next requests bring it) or HOLD_US later, never in the same
 * one, and never held twice in a row; its frames are all there, in order. A smaller fan-out (a
 * light load) and a larger one are written in the turn itself, and the sender's ACKs always
 * are. */
static void test_net_holds_fanout(void **state)
{
    (void)state;
    nenv e;
    nenv_up(&e);
    nc *s = nc_user(e.port, "s0", "hall");
    nc *m[H_MEMBERS];
    int mfd[H_MEMBERS];
    char name[16];
    for (int i = 0; i < H_MEMBERS; i++) {
        snprintf(name, sizeof name, "m%d", i);
        m[i] = nc_user(e.port, name, "hall");
    }
    nspin();
    int sfd = server_fd_of(s);
    for (int i = 0; i < H_MEMBERS; i++)
        mfd[i] = server_fd_of(m[i]);
    int next = 0;

    /* light: one message, written to every member in the turn that read it */
    send_burst(s, sfd, next, 1);
    rec_n = 0;
    rec_on = 1;
    nspin();
    rec_on = 0;
    assert_true(written_to(sfd) > 0);
    for (int i = 0; i < H_MEMBERS; i++)
        assert_true(written_to(mfd[i]) > H_BODY);
    for (int i = 0; i < H_MEMBERS; i++)
        expect_burst(m[i], next, 1);
    expect_acks(s, 1);
    next += 1;

    /* 8 messages in one turn: the ACKs are written, the members are held; the timer writes them
     * (HOLD_US: 1 ms; generously bounded here) */
    send_burst(s, sfd, next, 8);
    rec_n = 0;
    rec_on = 1;
    nspin();
    assert_true(written_to(sfd) > 0);
    for (int i = 0; i < H_MEMBERS; i++)
        assert_int_equal(written_to(mfd[i]), -1);
    uint64_t t0 = mono_ms();
    int all = 0;
    while (!all && mono_ms() - t0 < 2000) {
        usleep(200);
        nspin();
        all = 1;
        for (int i = 0; i < H_MEMBERS; i++)
            all = all && written_to(mfd[i]) >= 8 * H_BODY;
    }
    rec_on = 0;
    assert_true(all);
    assert_true(mono_ms() - t0 < 500);
    for (int i = 0; i < H_MEMBERS; i++)
        expect_burst(m[i], next, 8);
    expect_acks(s, 8);
    next += 8;

    /* held, then the next turn reads the sender's next 8: both written in that turn, the second
     * fan-out (as large) not held again */
    send_burst(s, sfd, next, 8);
    rec_n = 0;
    rec_on = 1;
    nspin();
    for (int i = 0; i < H_MEMBERS; i++)
        assert_int_equal(written_to(mfd[i]), -1);
    send_burst(s, sfd, next + 8, 8);
    rec_n = 0;
    nspin();
    rec_on = 0;
    for (int i = 0; i < H_MEMBERS; i++)
        assert_true(written_to(mfd[i]) >= 16 * H_BODY);
    for (int i = 0; i < H_MEMBERS; i++)
        expect_burst(m[i], next, 16);
    expect_acks(s, 16);
    next += 16;

    /* over HOLD_MAX in one turn: written in it */
    send_burst(s, sfd, next, 40);
    rec_n = 0;
    rec_on = 1;
    nspin();
    rec_on = 0;
    for (int i = 0; i < H_MEMBERS; i++)
        assert_true(written_to(mfd[i]) > 32 * 1024);
    for (int i = 0; i < H_MEMBERS; i++)
        expect_burst(m[i], next, 40);
    expect_acks(s, 40);

    nc_free(s);
    for (int i = 0; i < H_MEMBERS; i++)
        nc_free(m[i]);
    nenv_down(&e);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_big_room_fanout),
        cmocka_unit_test(test_shared_frames_only_for_fanout),
        cmocka_unit_test(test_net_writes_answers_first),
        cmocka_unit_test(test_net_holds_fanout),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
