/* Integration: direct messages, broadcast and delivery semantics against a real imd (SPEC.md
 * 5.3 and 9).
 *
 * - online delivery with every DELIVER field; the server, not the client, fills SENDER,
 *   TIMESTAMP and MSG_ID;
 * - offline delivery in order, redelivery of exactly the unacknowledged tail, DELIVERED, LOGIN
 *   LAST_SEQ, DELIVERED above the sequence;
 * - CLIENT_MSG_ID dedupe (same MSG_ID, DUPLICATE 1, one delivery) and ID_CONFLICT;
 * - refusals: NO_SUCH_USER, QUOTA (and accepted again after the recipient acknowledges);
 * - transient messages: delivered online with SEQ 0, never stored for offline users;
 * - ACK_MODE delivered; broadcast (administrators only); several sessions of one user.
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
#include <time.h>

#include "itest.h"

#define T 5000

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The next DELIVER or fail. */
static tc_frame *deliver(tc *c, const char *who)
{
    tc_frame *f = tc_wait(c, IMP_DELIVER, 0, T);
    char d[512];
    IT_CHECK(f != NULL, "%s: no DELIVER within %d ms: %s", who, T, tc_describe(c, d, sizeof d));
    return f;
}

/* No DELIVER arrives within ms. */
static void no_deliver(tc *c, unsigned ms, const char *who)
{
    tc_frame *f = tc_wait(c, IMP_DELIVER, 0, (int)ms);
    if (f) {
        char body[64];
        tc_str(&f->m, IMP_T_BODY, body, sizeof body);
        unsigned long long seq = (unsigned long long)imp_msg_u(&f->m, IMP_T_SEQ, 0);
        tc_frame_free(f);
        IT_CHECK(0, "%s: unexpected DELIVER seq %llu body '%s'", who, seq, body);
    }
}

static void body_is(const tc_frame *f, const char *body)
{
    char got[128];
    IT_CHECK(tc_field_is(&f->m, IMP_T_BODY, body), "BODY '%s', want '%s'",
             tc_str(&f->m, IMP_T_BODY, got, sizeof got), body);
}

static void send_ok(tc *c, const char *to, const char *cmid, const char *body, tc_ack *ack)
{
    tc_ack tmp;
    if (!ack)
        ack = &tmp;
    int r = tc_send_text(c, to, cmid, body, ack);
    IT_CHECK(r == 0, "SEND to %s: %d", to, r);
    IT_CHECK(ack->outcome == IMP_OUTCOME_STORED, "SEND to %s: OUTCOME %d CODE %d, want stored", to,
             ack->outcome, ack->code);
    IT_CHECK(ack->has_msg_id, "ACK stored without MSG_ID (IMP-MSG-007)");
}

static void send_refused(tc *c, const tc_msg *s, int code)
{
    tc_ack ack;
    int r = tc_send(c, s, &ack, T);
    IT_CHECK(r == 0, "SEND: %d (want an ACK refused)", r);
    IT_CHECK(ack.outcome == IMP_OUTCOME_REFUSED && ack.code == code,
             "ACK OUTCOME %d CODE %d, want refused %d", ack.outcome, ack.code, code);
}

static tc_msg text_msg(int kind, const char *target, const char *cmid, const char *body)
{
    tc_msg s;
    memset(&s, 0, sizeof s);
    s.kind = kind;
    s.target = target;
    s.cmid = cmid;
    s.cls = -1;
    s.ack_mode = -1;
    s.body = body;
    s.body_len = strlen(body);
    return s;
}

static void test_direct_online(void **state)
{
    (void)state;
    imd_proc *p = it_start_imd(NULL);
    long pid = (long)p->pid;
    tc *alice = it_register(p->port, "alice", "alice password", NULL);
    tc *bob = it_register(p->port, "bob", "bob password", NULL);

    uint8_t hb[256];
    imp_builder b;
    imp_builder_init(&b, hb, sizeof hb);
    IT_EQ(imp_headers_add(&b, "content-type", 12, "text/plain", 10), 0);
    IT_EQ(imp_headers_add(&b, "x-trace", 7, "42", 2), 0);
    tc_msg s = text_msg(IMP_TARGET_USER, "BOB", "c-1", "hello bob");
    s.headers = hb;
    s.headers_len = b.len;
    s.has_headers = 1;
    int64_t t0 = wall_ms();
    tc_ack ack;
    IT_EQ(tc_send(alice, &s, &ack, T), 0);
    IT_EQ(ack.outcome, IMP_OUTCOME_STORED);
    IT_CHECK(ack.has_msg_id, "ACK without MSG_ID (IMP-MSG-007)");
    IT_EQ(ack.duplicate, 0);

    tc_frame *d = deliver(bob, "bob");
    int64_t t1 = wall_ms();
    const imp_msg *m = &d->m;
    IT_EQ(d->m.request_id, 0); /* server-initiated (IMP-FRAME-007) */
    IT_EQ(imp_msg_u(m, IMP_T_TARGET_KIND, 0), IMP_TARGET_USER);
    IT_CHECK(tc_field_is(m, IMP_T_TARGET, "bob"), "TARGET is not the canonical recipient");
    IT_CHECK(tc_field_is(m, IMP_T_SENDER, "alice"), "SENDER is not alice");
    IT_EQ(imp_msg_u(m, IMP_T_SEQ, 0), 1); /* IMP-DELIV-002: the recipient's first */
    IT_EQ(imp_msg_u(m, IMP_T_MSG_ID, 0), ack.msg_id);
    int64_t ts = (int64_t)imp_msg_u(m, IMP_T_TIMESTAMP, 0);
    IT_CHECK(ts >= t0 - 2000 && ts <= t1 + 2000, "TIMESTAMP %lld not within [%lld, %lld]",
             (long long)ts, (long long)t0, (long long)t1);
    IT_EQ(imp_msg_u(m, IMP_T_CLASS, 0), IMP_CLASS_DURABLE);
    body_is(d, "hello bob");
    imp_bytes h = imp_msg_b(m, IMP_T_HEADERS);
    IT_CHECK(h.len == b.len && memcmp(h.p, hb, b.len) == 0, "HEADERS not delivered as sent");
    tc_frame_free(d);

    /* The second message: next SEQ, larger MSG_ID (IMP-DELIV-002, IMP-DELIV-006). */
    tc_ack ack2;
    send_ok(alice, "bob", "c-2", "second", &ack2);
    IT_CHECK(ack2.msg_id > ack.msg_id, "MSG_ID %llu not above %llu",
             (unsigned long long)ack2.msg_id, (unsigned long long)ack.msg_id);
    d = deliver(bob, "bob");
    IT_EQ(imp_msg_u(&d->m, IMP_T_SEQ, 0), 2);
    IT_EQ(imp_msg_u(&d->m, IMP_T_MSG_ID, 0), ack2.msg_id);
    body_is(d, "second");
    tc_frame_free(d);

    /* A client cannot set SENDER, TIMESTAMP or MSG_ID: in SEND they are unknown fields and
     * skipped (IMP-SEC-004). The SEND is encoded, then MSG_ID, SENDER and TIMESTAMP fields are
     * appended after BODY (ascending tags) and the payload length fixed. */
    tc_msg forged = text_msg(IMP_TARGET_USER, "bob", "c-3", "forged");
    imp_msg fm;
    tc_build_send(&forged, &fm);
    fm.request_id = tc_req(alice);
    uint8_t buf[512];
    imp_ssize n = imp_msg_encode(&fm, buf, sizeof buf);
    IT_CHECK(n > 0, "encode");
    size_t len = (size_t)n;
    static const uint8_t extra[] = {0x00, 0x18, 0x00, 0x00, 0x00, 0x08, 0,
                                    0,    0,    0,    0,    0,    0x00, 0x07, /* MSG_ID 7 */
                                    0x00, 0x1f, 0x00, 0x00, 0x00, 0x07, 'm',
                                    'a',  'l',  'l',  'o',  'r',  'y', /* SENDER */
                                    0x00, 0x20, 0x00, 0x00, 0x00, 0x08, 0,
                                    0,    0,    0,    0,    0,    0,    0x01 /* TIMESTAMP 1 */};
    memcpy(buf + len, extra, sizeof extra);
    len += sizeof extra;
    imp_frame_header_write(buf, IMP_SEND, (uint32_t)(len - IMP_HEADER_SIZE), fm.request_id);
    IT_EQ(tc_send_raw(alice, buf, len, T), 0);
    tc_ack ack3;
    IT_EQ(tc_wait_ack(alice, fm.request_id, &ack3, T), 0);
    IT_EQ(ack3.outcome, IMP_OUTCOME_STORED);
    d = deliver(bob, "bob");
    IT_CHECK(tc_field_is(&d->m, IMP_T_SENDER, "alice"), "SENDER forged by the client");
    IT_EQ(imp_msg_u(&d->m, IMP_T_MSG_ID, 0), ack3.msg_id);
    IT_CHECK(ack3.msg_id != 7, "MSG_ID taken from the client");
    IT_CHECK(imp_msg_u(&d->m, IMP_T_TIMESTAMP, 0) > 1000, "TIMESTAMP taken from the client");
    body_is(d, "forged");
    tc_frame_free(d);
    IT_EQ(tc_delivered(bob, 3), 0);
    tc_close(alice);
    tc_close(bob);
    it_liveness(p, pid, NULL, NULL, NULL, NULL);
    it_finish(p);
}

/* Log carol in and read the DELIVERs she gets within a short window: their SEQs (and bodies)
 * into seqs/bodies; returns how many. */
static int login_collect(int port, uint64_t last_seq, uint64_t *auth_last, uint64_t *seqs,
                         char bodies[][16], int max, tc **keep)
{
    tc *c = tc_connect(port, T);
    IT_CHECK(c != NULL, "connect");
    tc_auth a;
    int r = tc_login(c, "carol", "carol password", last_seq, &a, T);
    IT_EQ(r, 0);
    if (auth_last)
        *auth_last = a.last_seq;
    int n = 0;
    for (;;) {
        tc_frame *f = tc_wait(c, IMP_DELIVER, 0, 600);
        if (!f)
            break;
        IT_CHECK(n < max, "more DELIVERs than expected");
        seqs[n] = imp_msg_u(&f->m, IMP_T_SEQ, 0);
        tc_str(&f->m, IMP_T_BODY, bodies[n], 16);
        n++;
        tc_frame_free(f);
    }
    if (keep)
        *keep = c;
    else
        tc_close(c);
    return n;
}

static void expect_seqs(const uint64_t *seqs, char bodies[][16], int n, uint64_t from, uint64_t to,
                        const char *what)
{
    IT_CHECK(n == (int)(to - from + 1), "%s: %d DELIVERs, want SEQ %llu..%llu", what, n,
             (unsigned long long)from, (unsigned long long)to);
    for (int i = 0; i < n; i++) {
        char want[16];
        snprintf(want, sizeof want, "m%llu", (unsigned long long)(from + (uint64_t)i));
        IT_CHECK(seqs[i] == from + (uint64_t)i, "%s: DELIVER #%d has SEQ %llu, want %llu", what, i,
                 (unsigned long long)seqs[i], (unsigned long long)(from + (uint64_t)i));
        IT_CHECK(strcmp(bodies[i], want) == 0, "%s: SEQ %llu has body '%s', want '%s'", what,
                 (unsigned long long)seqs[i], bodies[i], want);
    }
}

static void test_offline_and_redelivery(void **state)
{
    (void)state;
    imd_proc *p = it_start_imd(NULL);
    long pid = (long)p->pid;
    tc *alice = it_register(p->port, "alice", "alice password", NULL);
    tc_close(it_register(p->port, "carol", "carol password", NULL));

    /* Five messages to offline carol, delivered on login in order (IMP-DELIV-004/006). */
    for (int i = 1; i <= 5; i++) {
        char body[16];
        snprintf(body, sizeof body, "m%d", i);
        send_ok(alice, "carol", NULL, body, NULL);
    }
    uint64_t seqs[32], last;
    char bodies[32][16];
    int n = login_collect(p->port, UINT64_MAX, &last, seqs, bodies, 32, NULL);
    IT_EQ(last, 0);
    expect_seqs(seqs, bodies, n, 1, 5, "first login");

    /* Nothing was acknowledged: all five again (IMP-DELIV-004, at least once). */
    n = login_collect(p->port, UINT64_MAX, &last, seqs, bodies, 32, NULL);
    expect_seqs(seqs, bodies, n, 1, 5, "second login without DELIVERED");

    /* DELIVERED(3): the next login gets exactly 4 and 5 (IMP-DELIV-003). */
    tc *c;
    n = login_collect(p->port, UINT64_MAX, &last, seqs, bodies, 32, &c);
    expect_seqs(seqs, bodies, n, 1, 5, "third login");
    IT_EQ(tc_delivered(c, 3), 0);
    /* A DELIVERED at or below the acked mark changes nothing and is not an error. */
    IT_EQ(tc_delivered(c, 2), 0);
    uint32_t preq = tc_simple(c, IMP_PING); /* a round trip, so the DELIVEREDs were read */
    tc_frame *f = tc_wait(c, IMP_PONG, preq, T);
    IT_CHECK(f != NULL, "no PONG");
    tc_frame_free(f);
    IT_EQ(tc_queued(c, IMP_ERROR), 0);
    tc_close(c);
    n = login_collect(p->port, UINT64_MAX, &last, seqs, bodies, 32, &c);
    IT_EQ(last, 3); /* AUTH_OK LAST_SEQ: the acked mark */
    expect_seqs(seqs, bodies, n, 4, 5, "after DELIVERED(3)");
    IT_EQ(tc_delivered(c, 5), 0);
    preq = tc_simple(c, IMP_PING);
    f = tc_wait(c, IMP_PONG, preq, T);
    IT_CHECK(f != NULL, "no PONG");
    tc_frame_free(f);
    tc_close(c);

    /* LOGOUT leaves what was delivered but not acknowledged queued (IMP-MSG-005). */
    send_ok(alice, "carol", NULL, "m6", NULL);
    n = login_collect(p->port, UINT64_MAX, &last, seqs, bodies, 32, &c);
    expect_seqs(seqs, bodies, n, 6, 6, "before LOGOUT");
    uint32_t lreq = tc_simple(c, IMP_LOGOUT);
    f = tc_wait_reply(c, lreq, T);
    IT_CHECK(f != NULL && f->m.type == IMP_OK, "LOGOUT not answered by OK");
    tc_frame_free(f);
    it_expect_closed(c, 2000, 0, "after LOGOUT");
    tc_close(c);
    n = login_collect(p->port, UINT64_MAX, &last, seqs, bodies, 32, &c);
    expect_seqs(seqs, bodies, n, 6, 6, "after LOGOUT");
    IT_EQ(tc_delivered(c, 6), 0);
    preq = tc_simple(c, IMP_PING);
    f = tc_wait(c, IMP_PONG, preq, T);
    IT_CHECK(f != NULL, "no PONG");
    tc_frame_free(f);
    tc_close(c);

    /* All acknowledged: no redelivery. */
    n = login_collect(p->port, UINT64_MAX, &last, seqs, bodies, 32, NULL);
    IT_EQ(last, 6);
    IT_EQ(n, 0);

    /* LOGIN LAST_SEQ acknowledges first (resume, section 5.2 and IMP-DELIV-004). */
    for (int i = 7; i <= 9; i++) {
        char body[16];
        snprintf(body, sizeof body, "m%d", i);
        send_ok(alice, "carol", NULL, body, NULL);
    }
    n = login_collect(p->port, 8, &last, seqs, bodies, 32, &c);
    IT_EQ(last, 8);
    expect_seqs(seqs, bodies, n, 9, 9, "LOGIN LAST_SEQ=8");

    /* DELIVERED above the highest sequence number assigned: BAD_REQUEST (5xx, not fatal),
     * answering the DELIVERED's request id (IMP-DELIV-003, IMP-FRAME-007). */
    imp_msg dm;
    imp_msg_init(&dm, IMP_DELIVERED, 0);
    imp_msg_set_u(&dm, IMP_T_SEQ, 1000);
    uint32_t dreq = tc_request(c, &dm);
    IT_CHECK(dreq != 0, "DELIVERED");
    f = tc_wait_reply(c, dreq, T);
    char d[512];
    IT_CHECK(f != NULL, "no answer to DELIVERED(1000): %s", tc_describe(c, d, sizeof d));
    IT_EQ(f->m.type, IMP_ERROR);
    IT_EQ(imp_msg_u(&f->m, IMP_T_CODE, 0), 510);
    tc_frame_free(f);
    /* ... and it acknowledged nothing: 9 is still queued. */
    tc_close(c);
    n = login_collect(p->port, UINT64_MAX, &last, seqs, bodies, 32, NULL);
    IT_EQ(last, 8);
    expect_seqs(seqs, bodies, n, 9, 9, "after the bad DELIVERED");

    tc_close(alice);
    it_liveness(p, pid, NULL, NULL, NULL, NULL);
    it_finish(p);
}

static void test_dedupe(void **state)
{
    (void)state;
    imd_proc *p = it_start_imd(NULL);
    long pid = (long)p->pid;
    tc *alice = it_register(p->port, "alice", "alice password", NULL);
    tc *bob = it_register(p->port, "bob", "bob password", NULL);
    tc_close(it_register(p->port, "dan", "dan password", NULL));

    tc_ack a1, a2, a3;
    send_ok(alice, "bob", "same-id", "once", &a1);
    IT_EQ(a1.duplicate, 0);
    /* The retry: same MSG_ID, DUPLICATE 1, nothing stored twice (IMP-DELIV-005). */
    send_ok(alice, "bob", "same-id", "once", &a2);
    IT_EQ(a2.msg_id, a1.msg_id);
    IT_EQ(a2.duplicate, 1);
    /* Also from a new connection of the same sender. */
    tc_close(alice);
    alice = it_login(p->port, "alice", "alice password", NULL);
    send_ok(alice, "bob", "same-id", "once", &a3);
    IT_EQ(a3.msg_id, a1.msg_id);
    IT_EQ(a3.duplicate, 1);

    tc_frame *d = deliver(bob, "bob");
    IT_EQ(imp_msg_u(&d->m, IMP_T_MSG_ID, 0), a1.msg_id);
    IT_EQ(imp_msg_u(&d->m, IMP_T_SEQ, 0), 1);
    tc_frame_free(d);
    no_deliver(bob, 500, "bob after the duplicates");

    /* The same id with another body or another target: ID_CONFLICT (511). */
    tc_msg s = text_msg(IMP_TARGET_USER, "bob", "same-id", "different");
    send_refused(alice, &s, 511);
    s = text_msg(IMP_TARGET_USER, "dan", "same-id", "once");
    send_refused(alice, &s, 511);
    no_deliver(bob, 300, "bob after the conflicts");

    /* Another sender may use the same CLIENT_MSG_ID: ids are per sender. */
    tc *dan = it_login(p->port, "dan", "dan password", NULL);
    tc_ack a4;
    send_ok(dan, "bob", "same-id", "from dan", &a4);
    IT_EQ(a4.duplicate, 0);
    IT_CHECK(a4.msg_id != a1.msg_id, "dan's message got alice's MSG_ID");
    d = deliver(bob, "bob");
    body_is(d, "from dan");
    tc_frame_free(d);

    /* Unknown recipient: refused with NO_SUCH_USER (500). */
    s = text_msg(IMP_TARGET_USER, "nobody", NULL, "hello?");
    send_refused(alice, &s, 500);

    /* A retry is answered from the dedupe record before the target is looked up again
     * (IMP-DELIV-005): after alice left the room she sent to, the retry of her stored room
     * message is still a duplicate with the first MSG_ID, not NOT_MEMBER. */
    imp_msg j;
    imp_msg_init(&j, IMP_JOIN, 0);
    imp_msg_set_s(&j, IMP_T_ROOM, "dedupe-room");
    tc_frame *f = tc_wait_reply(alice, tc_request(alice, &j), 5000);
    IT_CHECK(f && f->m.type == IMP_OK, "JOIN dedupe-room");
    tc_frame_free(f);
    tc_msg rm = text_msg(IMP_TARGET_ROOM, "dedupe-room", "room-id", "room once");
    tc_ack r1, r2;
    IT_EQ(tc_send(alice, &rm, &r1, 5000), 0);
    IT_EQ(r1.outcome, IMP_OUTCOME_STORED);
    imp_msg_init(&j, IMP_LEAVE, 0);
    imp_msg_set_s(&j, IMP_T_ROOM, "dedupe-room");
    f = tc_wait_reply(alice, tc_request(alice, &j), 5000);
    IT_CHECK(f && f->m.type == IMP_OK, "LEAVE dedupe-room");
    tc_frame_free(f);
    IT_EQ(tc_send(alice, &rm, &r2, 5000), 0);
    IT_CHECK(r2.outcome == IMP_OUTCOME_STORED && r2.duplicate == 1 && r2.msg_id == r1.msg_id,
             "retry after LEAVE: outcome %d code %d duplicate %d msg_id %llu (first %llu)",
             r2.outcome, r2.code, r2.duplicate, (unsigned long long)r2.msg_id,
             (unsigned long long)r1.msg_id);

    tc_close(alice);
    tc_close(bob);
    tc_close(dan);
    it_liveness(p, pid, NULL, NULL, NULL, NULL);
    it_finish(p);
}

/* The dedupe window (dedupe_window_ms): a retry within it is a duplicate (IMP-DELIV-005); the
 * server forgets a CLIENT_MSG_ID once the window has passed (its dedupe table does not grow
 * forever), and a retry after that is stored as a new message. */
static void test_dedupe_window(void **state)
{
    (void)state;
    static const char *const args[] = {"--set", "dedupe_window_ms=1500", NULL};
    imd_proc *p = it_start_imd(args);
    long pid = (long)p->pid;
    tc *alice = it_register(p->port, "alice", "alice password", NULL);
    tc *bob = it_register(p->port, "bob", "bob password", NULL);
    tc_ack a1, a2, a3;
    send_ok(alice, "bob", "win-id", "once", &a1);
    IT_EQ(a1.duplicate, 0);
    send_ok(alice, "bob", "win-id", "once", &a2);
    IT_EQ(a2.duplicate, 1);
    IT_EQ(a2.msg_id, a1.msg_id);
    /* past the window (and a few expiry passes of the server's tick) */
    it_sleep_ms(4000);
    send_ok(alice, "bob", "win-id", "once", &a3);
    IT_CHECK(a3.duplicate == 0 && a3.msg_id != a1.msg_id,
             "retry after the window: duplicate %d msg_id %llu (first %llu)", a3.duplicate,
             (unsigned long long)a3.msg_id, (unsigned long long)a1.msg_id);
    tc_frame *d = deliver(bob, "bob");
    IT_EQ(imp_msg_u(&d->m, IMP_T_MSG_ID, 0), a1.msg_id);
    tc_frame_free(d);
    d = deliver(bob, "bob");
    IT_EQ(imp_msg_u(&d->m, IMP_T_MSG_ID, 0), a3.msg_id);
    tc_frame_free(d);
    tc_close(alice);
    tc_close(bob);
    it_liveness(p, pid, NULL, NULL, NULL, NULL);
    it_finish(p);
}

static void test_quota(void **state)
{
    (void)state;
    static const char *const args[] = {"--set", "offline_quota=3", NULL};
    imd_proc *p = it_start_imd(args);
    long pid = (long)p->pid;
    tc *alice = it_register(p->port, "alice", "alice password", NULL);
    tc_close(it_register(p->port, "dave", "dave password", NULL));

    tc_ack a[4];
    send_ok(alice, "dave", "q1", "q1", &a[0]);
    send_ok(alice, "dave", "q2", "q2", &a[1]);
    send_ok(alice, "dave", "q3", "q3", &a[2]);
    /* Full: refused with QUOTA before anything is stored (IMP-DELIV-007). */
    tc_msg s = text_msg(IMP_TARGET_USER, "dave", "q4", "q4");
    send_refused(alice, &s, 504);
    /* The duplicate check comes first: a retry of q3 is a duplicate, not QUOTA. */
    tc_ack dup;
    send_ok(alice, "dave", "q3", "q3", &dup);
    IT_EQ(dup.duplicate, 1);
    IT_EQ(dup.msg_id, a[2].msg_id);

    /* dave reads and acknowledges: room again. */
    tc *dave = it_login(p->port, "dave", "dave password", NULL);
    for (uint64_t i = 1; i <= 3; i++) {
        tc_frame *d = deliver(dave, "dave");
        IT_EQ(imp_msg_u(&d->m, IMP_T_SEQ, 0), i);
        tc_frame_free(d);
    }
    no_deliver(dave, 300, "dave: the refused q4 was stored");
    IT_EQ(tc_delivered(dave, 3), 0);
    uint32_t preq = tc_simple(dave, IMP_PING);
    tc_frame *f = tc_wait(dave, IMP_PONG, preq, T);
    IT_CHECK(f != NULL, "no PONG");
    tc_frame_free(f);

    /* The retried q4 is accepted now and is stored after the others (IMP-DELIV-006). */
    send_ok(alice, "dave", "q4", "q4", &a[3]);
    IT_EQ(a[3].duplicate, 0);
    IT_CHECK(a[3].msg_id > a[2].msg_id, "q4 not stored after q3");
    tc_frame *d = deliver(dave, "dave");
    IT_EQ(imp_msg_u(&d->m, IMP_T_SEQ, 0), 4);
    body_is(d, "q4");
    tc_frame_free(d);
    IT_EQ(tc_delivered(dave, 4), 0);
    tc_close(dave);
    tc_close(alice);
    it_liveness(p, pid, NULL, NULL, NULL, NULL);
    it_finish(p);
}

static void test_transient_and_ack_modes(void **state)
{
    (void)state;
    imd_proc *p = it_start_imd(NULL);
    long pid = (long)p->pid;
    tc *alice = it_register(p->port, "alice", "alice password", NULL);
    tc_close(it_register(p->port, "eve", "eve password", NULL));

    /* Transient to an offline user: never stored (section 5.3). ACK_MODE none: no ACK on
     * success; a durable message follows so that eve has something to log in to. */
    tc_msg s = text_msg(IMP_TARGET_USER, "eve", NULL, "transient-offline");
    s.cls = IMP_CLASS_TRANSIENT;
    s.ack_mode = IMP_ACK_NONE;
    IT_EQ(tc_send(alice, &s, NULL, T), 0);
    tc_ack ad;
    send_ok(alice, "eve", NULL, "durable", &ad);
    IT_EQ(tc_queued(alice, IMP_ACK), 0); /* no ACK for the ACK_MODE none SEND */
    tc *eve = it_login(p->port, "eve", "eve password", NULL);
    tc_frame *d = deliver(eve, "eve");
    body_is(d, "durable");
    IT_EQ(imp_msg_u(&d->m, IMP_T_SEQ, 0), 1);
    tc_frame_free(d);
    no_deliver(eve, 400, "eve: transient message stored for an offline user");

    /* Transient to an online user: delivered with SEQ 0 and CLASS 1, outside the sequence
     * (IMP-DELIV-002). */
    s = text_msg(IMP_TARGET_USER, "eve", NULL, "transient-online");
    s.cls = IMP_CLASS_TRANSIENT;
    s.ack_mode = IMP_ACK_NONE;
    IT_EQ(tc_send(alice, &s, NULL, T), 0);
    d = deliver(eve, "eve");
    body_is(d, "transient-online");
    IT_EQ(imp_msg_u(&d->m, IMP_T_SEQ, 99), 0);
    IT_EQ(imp_msg_u(&d->m, IMP_T_CLASS, 0), IMP_CLASS_TRANSIENT);
    tc_frame_free(d);
    send_ok(alice, "eve", NULL, "durable2", NULL);
    d = deliver(eve, "eve");
    IT_EQ(imp_msg_u(&d->m, IMP_T_SEQ, 0), 2); /* the transient one took no number */
    tc_frame_free(d);
    IT_EQ(tc_delivered(eve, 2), 0);

    /* ACK_MODE delivered: the ACK (OUTCOME delivered) comes only once eve acknowledged. */
    s = text_msg(IMP_TARGET_USER, "eve", "ackd-1", "ack me");
    s.ack_mode = IMP_ACK_DELIVERED;
    imp_msg m;
    tc_build_send(&s, &m);
    uint32_t req = tc_request(alice, &m);
    IT_CHECK(req != 0, "SEND");
    d = deliver(eve, "eve");
    uint64_t seq = imp_msg_u(&d->m, IMP_T_SEQ, 0);
    IT_EQ(seq, 3);
    tc_frame_free(d);
    tc_frame *early = tc_wait_reply(alice, req, 500);
    IT_CHECK(early == NULL, "ACK (OUTCOME %d) before the recipient acknowledged",
             early ? (int)imp_msg_u(&early->m, IMP_T_OUTCOME, 0) : 0);
    IT_EQ(tc_delivered(eve, seq), 0);
    tc_ack ack;
    IT_EQ(tc_wait_ack(alice, req, &ack, T), 0);
    IT_EQ(ack.outcome, IMP_OUTCOME_DELIVERED);
    IT_CHECK(ack.has_msg_id, "ACK delivered without MSG_ID (IMP-MSG-007)");

    tc_close(eve);
    tc_close(alice);
    it_liveness(p, pid, NULL, NULL, NULL, NULL);
    it_finish(p);
}

static void test_broadcast_and_sessions(void **state)
{
    (void)state;
    imd_proc *p = it_create_imd(NULL);
    static const char *const add_root[] = {"user", "add", "root", "--admin", NULL};
    IT_EQ(it_admin(p, "root password\n", NULL, 0, add_root), 0);
    it_start(p);
    long pid = (long)p->pid;

    tc_auth ra;
    tc *root = it_login(p->port, "root", "root password", &ra);
    IT_EQ(ra.admin, 1);
    tc *alice = it_register(p->port, "alice", "alice password", NULL);
    tc *bob1 = it_register(p->port, "bob", "bob password", NULL);
    tc *bob2 = it_login(p->port, "bob", "bob password", NULL);
    tc_close(it_register(p->port, "frank", "frank password", NULL));

    /* Several sessions of one user each receive a direct message, same MSG_ID and SEQ. */
    tc_ack a;
    send_ok(alice, "bob", NULL, "to both", &a);
    tc_frame *d1 = deliver(bob1, "bob session 1");
    tc_frame *d2 = deliver(bob2, "bob session 2");
    IT_EQ(imp_msg_u(&d1->m, IMP_T_MSG_ID, 0), a.msg_id);
    IT_EQ(imp_msg_u(&d2->m, IMP_T_MSG_ID, 0), a.msg_id);
    IT_EQ(imp_msg_u(&d1->m, IMP_T_SEQ, 0), imp_msg_u(&d2->m, IMP_T_SEQ, 0));
    tc_frame_free(d1);
    tc_frame_free(d2);

    /* Broadcast is for administrators: FORBIDDEN (502) for alice. */
    tc_msg s = text_msg(IMP_TARGET_BROADCAST, NULL, NULL, "from alice to all");
    send_refused(alice, &s, 502);
    no_deliver(bob1, 300, "bob after a refused broadcast");

    /* root's broadcast reaches every user: online sessions now (TARGET absent,
     * IMP-MSG-006), offline users at login. */
    s = text_msg(IMP_TARGET_BROADCAST, NULL, "bc-1", "to everyone");
    tc_ack ab;
    IT_EQ(tc_send(root, &s, &ab, T), 0);
    IT_EQ(ab.outcome, IMP_OUTCOME_STORED);
    tc *rcpt[3] = {alice, bob1, bob2};
    const char *names[3] = {"alice", "bob session 1", "bob session 2"};
    for (int i = 0; i < 3; i++) {
        tc_frame *d = deliver(rcpt[i], names[i]);
        IT_EQ(imp_msg_u(&d->m, IMP_T_TARGET_KIND, 0), IMP_TARGET_BROADCAST);
        IT_CHECK(!imp_msg_has(&d->m, IMP_T_TARGET), "broadcast DELIVER with TARGET");
        IT_CHECK(tc_field_is(&d->m, IMP_T_SENDER, "root"), "broadcast SENDER is not root");
        IT_EQ(imp_msg_u(&d->m, IMP_T_MSG_ID, 0), ab.msg_id);
        body_is(d, "to everyone");
        tc_frame_free(d);
    }
    tc *frank = it_login(p->port, "frank", "frank password", NULL);
    tc_frame *d = deliver(frank, "frank (offline during the broadcast)");
    IT_EQ(imp_msg_u(&d->m, IMP_T_MSG_ID, 0), ab.msg_id);
    tc_frame_free(d);

    tc_close(frank);
    tc_close(root);
    tc_close(alice);
    tc_close(bob1);
    tc_close(bob2);
    it_liveness(p, pid, NULL, NULL, NULL, NULL);
    it_finish(p);
}

/* A stored message larger than what the limits allow now (max_frame and output_hard lowered
 * after it was stored, by a restart or a SIGHUP) is still delivered: the connection's output
 * cap is raised for that one frame. Before, the recipient was closed as a slow consumer at every
 * login and everything queued behind the message was stranded. IMP-DELIV-004, IMP-DELIV-007. */
static void test_big_message_after_limits_lowered(void **state)
{
    (void)state;
    const char *big[] = {"--set", "max_frame=1m",   "--set", "output_soft=256k",
                         "--set", "output_hard=2m", NULL};
    imd_proc *p = it_start_imd(big);
    tc *alice = it_register(p->port, "alice", "alice password", NULL);
    tc_close(it_register(p->port, "bob", "bob password", NULL));
    size_t n = 900 * 1024;
    uint8_t *body = malloc(n);
    IT_CHECK(body != NULL, "malloc");
    for (size_t i = 0; i < n; i++)
        body[i] = (uint8_t)(i * 7 + 3);
    tc_msg s = {IMP_TARGET_USER, "bob", NULL, -1, -1, NULL, 0, 0, body, n};
    tc_ack ack;
    IT_EQ(tc_send(alice, &s, &ack, T), 0);
    IT_EQ(ack.outcome, IMP_OUTCOME_STORED);
    send_ok(alice, "bob", NULL, "after the big one", NULL);
    tc_close(alice);
    IT_EQ(imd_stop(p, 5000), 0);
    const char *small[] = {"--set", "max_frame=64k",    "--set", "output_soft=64k",
                           "--set", "output_hard=192k", NULL};
    imd_add_args(p, small);
    IT_EQ(imd_start(p), 0);
    long pid = (long)p->pid;
    for (int round = 0; round < 2; round++) { /* again without DELIVERED: redelivered */
        tc *bob = it_login(p->port, "bob", "bob password", NULL);
        tc_frame *f = tc_wait(bob, IMP_DELIVER, 0, T);
        char d[512];
        IT_CHECK(f != NULL, "round %d: no DELIVER of the big message: %s", round,
                 tc_describe(bob, d, sizeof d));
        imp_bytes b = imp_msg_b(&f->m, IMP_T_BODY);
        IT_EQ(b.len, n);
        IT_CHECK(memcmp(b.p, body, n) == 0, "round %d: the big body differs", round);
        tc_frame_free(f);
        f = tc_wait(bob, IMP_DELIVER, 0, T);
        IT_CHECK(f != NULL && tc_field_is(&f->m, IMP_T_BODY, "after the big one"),
                 "round %d: the message behind the big one: %s", round,
                 tc_describe(bob, d, sizeof d));
        tc_frame_free(f);
        if (round == 1)
            IT_EQ(tc_delivered(bob, 2), 0);
        uint32_t preq = tc_simple(bob, IMP_PING);
        f = tc_wait(bob, IMP_PONG, preq, T);
        IT_CHECK(f != NULL, "round %d: no PONG (closed?)", round);
        tc_frame_free(f);
        tc_close(bob);
    }
    free(body);
    it_liveness(p, pid, NULL, NULL, NULL, NULL);
    it_finish(p);
}

int main(void)
{
    it_main_init(120);
    if (!it_imd_or_skip())
        return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_direct_online, it_teardown),
        cmocka_unit_test_teardown(test_offline_and_redelivery, it_teardown),
        cmocka_unit_test_teardown(test_dedupe, it_teardown),
        cmocka_unit_test_teardown(test_dedupe_window, it_teardown),
        cmocka_unit_test_teardown(test_quota, it_teardown),
        cmocka_unit_test_teardown(test_transient_and_ack_modes, it_teardown),
        cmocka_unit_test_teardown(test_broadcast_and_sessions, it_teardown),
        cmocka_unit_test_teardown(test_big_message_after_limits_lowered, it_teardown),
    };
    return cmocka_run_group_tests_name("integration: messaging", tests, NULL, NULL);
}
