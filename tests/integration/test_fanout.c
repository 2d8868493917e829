/* Integration tests: transient room fan-out (issue 3: one bus event per room message, served a
 * block of members at a time; server/deliver.c) over real sockets.
 *
 * A room whose members have several sessions (the sender's user too), a non-member online, and
 * one slow member that stops reading (a small receive buffer): every session but the sending
 * one gets every transient room message exactly once, in order; the slow member's session,
 * once its output is over output_soft, drops messages (counted in transient_dropped) and never
 * gets one twice or out of order; delivered + dropped accounts for every (message, session)
 * exactly, through /metrics.
 *
 * Several senders that are members too, pipelining with ACK_MODE 0, 1 and 2 mixed: ACKs in
 * request order with their mode's outcome, every message once and in each sender's order to
 * every other session, none to its sender, /metrics counting each delivery once.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "itest.h"

#define T 5000
#define BODY 8192  /* bytes per message: some hundreds fill the slow member's socket buffers */
#define N_MAX 4000 /* messages at most before the slow member must have dropped */
#define WINDOW 4   /* SENDs in flight: 32 KiB, well within a reader's socket buffers */
#define DROPS_WANTED 50

/* One counter from GET /metrics ("imd_NAME VALUE"); fails the test when absent. */
static long long metric(const imd_proc *p, const char *name)
{
    static char http[65536];
    int n = it_http_get(p->metrics_port, "/metrics", http, sizeof http);
    IT_CHECK(n > 0, "GET /metrics: no answer");
    char key[96];
    snprintf(key, sizeof key, "\nimd_%s ", name);
    const char *at = strstr(http, key);
    IT_CHECK(at != NULL, "/metrics has no imd_%s", name);
    return strtoll(at + strlen(key), NULL, 10);
}

static void join(tc *c, const char *room)
{
    imp_msg m;
    imp_msg_init(&m, IMP_JOIN, 0);
    imp_msg_set_s(&m, IMP_T_ROOM, room);
    uint32_t req = tc_request(c, &m);
    tc_frame *f = tc_wait_reply(c, req, T);
    IT_CHECK(f && f->m.type == IMP_OK, "JOIN %s", room);
    tc_frame_free(f);
}

/* The index a message's body starts with ("m%05d"), -1 when it does not. */
static int body_index(const tc_frame *f)
{
    imp_bytes b = imp_msg_b(&f->m, IMP_T_BODY);
    if (b.len != BODY || b.p[0] != 'm')
        return -1;
    int v = 0;
    for (int i = 1; i <= 5; i++) {
        if (b.p[i] < '0' || b.p[i] > '9')
            return -1;
        v = v * 10 + (b.p[i] - '0');
    }
    return v;
}

/* Checks that f is the transient room DELIVER of message want from alice in "hall". */
static void expect_message(tc_frame *f, int want, const char *who)
{
    IT_CHECK(f != NULL, "%s: no DELIVER for message %d", who, want);
    IT_EQ(imp_msg_u(&f->m, IMP_T_CLASS, 0), IMP_CLASS_TRANSIENT);
    IT_EQ(imp_msg_u(&f->m, IMP_T_SEQ, 99), 0);
    IT_EQ(imp_msg_u(&f->m, IMP_T_TARGET_KIND, 0), IMP_TARGET_ROOM);
    IT_CHECK(tc_field_is(&f->m, IMP_T_TARGET, "hall"), "%s: not the room", who);
    IT_CHECK(tc_field_is(&f->m, IMP_T_SENDER, "alice"), "%s: not from alice", who);
    int got = body_index(f);
    IT_CHECK(got == want, "%s: message %d where %d was due (lost, repeated or reordered)", who, got,
             want);
}

static void test_room_fanout_sessions_and_slow_member(void **state)
{
    (void)state;
    /* output_soft small (the slow member crosses it soon), its deadline and the PING interval
     * far beyond the test (the slow member neither reads nor answers PINGs) */
    static const char *const args[] = {"--metrics", "127.0.0.1:0",
                                       "--set",     "output_soft=64k",
                                       "--set",     "output_soft_ms=600000",
                                       "--set",     "ping_interval_ms=600000",
                                       "--set",     "msg_rate=0",
                                       NULL};
    imd_proc *p = it_start_imd(args);
    long pid = (long)p->pid;
    IT_CHECK(p->metrics_port > 0, "no metrics listener");
    tc *a1 = it_register(p->port, "alice", "alice password", NULL);
    tc *b1 = it_register(p->port, "bob", "bob password", NULL);
    tc *c1 = it_register(p->port, "carol", "carol password", NULL);
    tc *s0 = it_register(p->port, "sloth", "sloth password", NULL);
    tc *dave = it_register(p->port, "dave", "dave password", NULL); /* not a member */
    join(a1, "hall");
    join(b1, "hall");
    join(c1, "hall");
    join(s0, "hall");
    tc_close(s0);
    tc *a2 = it_login(p->port, "alice", "alice password", NULL);
    tc *b2 = it_login(p->port, "bob", "bob password", NULL);
    /* the slow member: a small receive buffer, logged in, then never reads */
    tc *sloth = tc_connect_raw(p->port, T, 4096);
    IT_CHECK(sloth != NULL, "connect");
    IT_EQ(tc_raw_hello(sloth, T), 0);
    IT_EQ(tc_login(sloth, "sloth", "sloth password", UINT64_MAX, NULL, T), 0);

    tc *readers[] = {a2, b1, b2, c1}; /* every session but the sender's and sloth's */
    const char *names[] = {"alice#2", "bob#1", "bob#2", "carol"};
    enum { NR = 4 };
    long long delivered0 = metric(p, "transient_delivered");
    long long dropped0 = metric(p, "transient_dropped");

    static uint8_t body[BODY];
    uint32_t reqs[WINDOW];
    int n = 0;
    uint64_t t0 = it_now_ms();
    /* rounds of WINDOW pipelined SENDs, their ACKs, then the readers' DELIVERs; every 64
     * messages, a look whether the slow member has dropped enough */
    while (n % 64 != 0 || n == 0 || metric(p, "transient_dropped") - dropped0 < DROPS_WANTED) {
        IT_CHECK(n < N_MAX, "the slow member dropped too little in %d messages", N_MAX);
        IT_CHECK(it_now_ms() - t0 < 40000, "too slow: %d messages in 40 s", n);
        for (int j = 0; j < WINDOW; j++) {
            char tag[16];
            snprintf(tag, sizeof tag, "m%05d", n + j);
            memset(body, 'a' + (n + j) % 26, sizeof body);
            memcpy(body, tag, 6);
            tc_msg s;
            memset(&s, 0, sizeof s);
            s.kind = IMP_TARGET_ROOM;
            s.target = "hall";
            s.cls = IMP_CLASS_TRANSIENT;
            s.ack_mode = IMP_ACK_STORED;
            s.body = body;
            s.body_len = sizeof body;
            imp_msg m;
            tc_build_send(&s, &m);
            reqs[j] = tc_request(a1, &m);
            IT_CHECK(reqs[j] != 0, "SEND %d", n + j);
        }
        for (int j = 0; j < WINDOW; j++) {
            tc_frame *f = tc_wait(a1, IMP_ACK, reqs[j], T);
            char d[512];
            IT_CHECK(f != NULL, "no ACK for message %d: %s", n + j, tc_describe(a1, d, sizeof d));
            IT_EQ(imp_msg_u(&f->m, IMP_T_OUTCOME, 0), IMP_OUTCOME_STORED);
            tc_frame_free(f);
        }
        /* the readers keep up: each message, in order, once each */
        for (int r = 0; r < NR; r++)
            for (int j = 0; j < WINDOW; j++) {
                tc_frame *f = tc_wait(readers[r], IMP_DELIVER, 0, T);
                expect_message(f, n + j, names[r]);
                tc_frame_free(f);
            }
        n += WINDOW;
    }
    it_note("%d messages of %d bytes in %llu ms", n, BODY, (unsigned long long)(it_now_ms() - t0));

    /* nothing more for the readers, nothing at all for the sender and the non-member */
    for (int r = 0; r < NR; r++) {
        tc_frame *f = tc_wait(readers[r], IMP_DELIVER, 0, 200);
        IT_CHECK(f == NULL, "%s: a DELIVER after the last message (%d)", names[r],
                 f ? body_index(f) : -1);
    }
    IT_CHECK(tc_wait(a1, IMP_DELIVER, 0, 200) == NULL, "the sending session got its own message");
    IT_CHECK(tc_wait(dave, IMP_DELIVER, 0, 200) == NULL, "a non-member got a room message");

    /* the slow member reads now: what it got is in order, never twice, and delivered + dropped
     * is every message for it */
    int got = 0, last = -1;
    uint64_t t1 = it_now_ms();
    for (;;) {
        tc_frame *f = tc_wait(sloth, IMP_DELIVER, 0, 1000);
        if (!f)
            break;
        int i = body_index(f);
        IT_CHECK(i > last && i < n, "sloth: message %d after %d", i, last);
        expect_message(f, i, "sloth");
        tc_frame_free(f);
        last = i;
        got++;
        IT_CHECK(it_now_ms() - t1 < 30000, "sloth: still reading after 30 s");
    }
    long long delivered = metric(p, "transient_delivered") - delivered0;
    long long dropped = metric(p, "transient_dropped") - dropped0;
    it_note("slow member: %d of %d delivered, %lld dropped", got, n, dropped);
    IT_CHECK(dropped >= DROPS_WANTED, "dropped %lld", dropped);
    IT_EQ(got + dropped, n);
    IT_EQ(delivered, (long long)NR * n + got);
    IT_CHECK(sloth->lib_err == 0 && !sloth->eof, "sloth: connection failed or closed");

    tc_close(sloth);
    tc *all[] = {a1, a2, b1, b2, c1, dave};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        tc_close(all[i]);
    it_liveness(p, pid, NULL, NULL, NULL, NULL);
    it_finish(p);
}

/* ---- several senders that are members too, every ACK_MODE ------------------------------ */

#define MS_SENDERS 3
#define MS_WINDOW 8 /* SENDs in flight per sender: one imd turn reads several senders' SENDs */
#define MS_ROUNDS 40

/* The sender and index a member-senders body carries ("s%d:%05d"); 0, or -1 when it does not. */
static int ms_parse(const tc_frame *f, int *sender, int *idx)
{
    imp_bytes b = imp_msg_b(&f->m, IMP_T_BODY);
    char t[16];
    if (b.len != 8 || b.p[0] != 's')
        return -1;
    memcpy(t, b.p, 8);
    t[8] = 0;
    return sscanf(t, "s%1d:%5d", sender, idx) == 2 ? 0 : -1;
}

/* The ACK_MODE of message i of a sender: every mode, mixed within each pipelined window. */
static int ms_mode(int i)
{
    return i % 3; /* 0 none, 1 stored, 2 delivered */
}

/* Room messages from several senders that are members themselves (net.c writes a connection
 * read in a turn before the turn's other output: each sender is written its answers and the
 * other senders' DELIVERs in the same turns), pipelined, with ACK_MODE 0, 1 and 2 mixed within
 * each window: on every sender's connection the ACKs come in request order with the outcome of
 * their mode (DELIVERED for 2, STORED for 1, none for 0); every session but the sending one
 * gets every message once, each sender's in order; a sender never gets its own; /metrics counts
 * each delivery once. */
static void test_room_member_senders_ack_modes(void **state)
{
    (void)state;
    static const char *const args[] = {"--metrics",  "127.0.0.1:0", "--set",
                                       "msg_rate=0", "--set",       "ping_interval_ms=600000",
                                       NULL};
    imd_proc *p = it_start_imd(args);
    long pid = (long)p->pid;
    IT_CHECK(p->metrics_port > 0, "no metrics listener");
    static const char *const names[] = {"s0", "s1", "s2", "m0", "m1", "m1"};
    enum { NS = 6 }; /* sessions: the 3 senders, m0, and m1 twice */
    tc *ss[NS];
    for (int i = 0; i < NS; i++) {
        ss[i] = i == 5 ? it_login(p->port, names[i], "member password", NULL)
                       : it_register(p->port, names[i], "member password", NULL);
        IT_CHECK(ss[i] != NULL, "session %d", i);
        if (i != 5)
            join(ss[i], "atrium");
    }
    long long delivered0 = metric(p, "transient_delivered");

    int next[NS][MS_SENDERS];    /* the index due next from each sender, per session */
    int acked[MS_SENDERS] = {0}; /* messages of each sender answered or not expecting one */
    uint32_t reqs[MS_SENDERS][MS_WINDOW];
    memset(next, 0, sizeof next);
    uint64_t t0 = it_now_ms();
    for (int round = 0; round < MS_ROUNDS; round++) {
        /* every sender's whole window first, then the answers */
        for (int s = 0; s < MS_SENDERS; s++)
            for (int j = 0; j < MS_WINDOW; j++) {
                int i = round * MS_WINDOW + j;
                char body[32];
                IT_EQ(snprintf(body, sizeof body, "s%d:%05d", s, i), 8);
                tc_msg m;
                memset(&m, 0, sizeof m);
                m.kind = IMP_TARGET_ROOM;
                m.target = "atrium";
                m.cls = IMP_CLASS_TRANSIENT;
                m.ack_mode = ms_mode(i);
                m.body = body;
                m.body_len = 8;
                imp_msg msg;
                tc_build_send(&m, &msg);
                reqs[s][j] = tc_request(ss[s], &msg);
                IT_CHECK(reqs[s][j] != 0, "sender %d: SEND %d", s, i);
            }
        int want = (round + 1) * MS_WINDOW; /* messages each sender has sent */
        /* every session reads until it has every message due to it and every answer */
        for (int k = 0; k < NS; k++) {
            tc *c = ss[k];
            for (;;) {
                int done = 1;
                for (int s = 0; s < MS_SENDERS; s++)
                    if (s != k && next[k][s] < want)
                        done = 0;
                if (k < MS_SENDERS) {
                    while (acked[k] < want && ms_mode(acked[k]) == 0)
                        acked[k]++; /* no ACK for mode 0 */
                    if (acked[k] < want)
                        done = 0;
                }
                if (done)
                    break;
                tc_frame *f = tc_wait(c, 0, 0, T);
                char d[512];
                IT_CHECK(f != NULL, "session %d (%s), round %d: nothing more: %s", k, names[k],
                         round, tc_describe(c, d, sizeof d));
                if (f->m.type == IMP_ACK) {
                    IT_CHECK(k < MS_SENDERS, "session %d (%s): an ACK it did not ask for", k,
                             names[k]);
                    int i = acked[k];
                    IT_CHECK(i < want, "%s: an ACK more", names[k]);
                    /* in request order, with the outcome its mode asked for */
                    IT_EQ(f->m.request_id, reqs[k][i % MS_WINDOW]);
                    IT_EQ(imp_msg_u(&f->m, IMP_T_OUTCOME, 0),
                          ms_mode(i) == 2 ? IMP_OUTCOME_DELIVERED : IMP_OUTCOME_STORED);
                    acked[k]++;
                } else if (f->m.type == IMP_DELIVER) {
                    int s, i;
                    IT_EQ(ms_parse(f, &s, &i), 0);
                    IT_CHECK(s >= 0 && s < MS_SENDERS, "a DELIVER from sender %d", s);
                    IT_CHECK(s != k, "%s got its own message %d", names[k], i);
                    IT_EQ(imp_msg_u(&f->m, IMP_T_CLASS, 0), IMP_CLASS_TRANSIENT);
                    IT_EQ(imp_msg_u(&f->m, IMP_T_SEQ, 99), 0);
                    IT_CHECK(tc_field_is(&f->m, IMP_T_TARGET, "atrium"), "not the room");
                    IT_CHECK(tc_field_is(&f->m, IMP_T_SENDER, names[s]), "wrong SENDER");
                    IT_CHECK(i == next[k][s], "session %d (%s): message %d of %s where %d was due",
                             k, names[k], i, names[s], next[k][s]);
                    next[k][s]++;
                }
                /* anything else (PRESENCE...) is not this test's */
                tc_frame_free(f);
            }
        }
    }
    int total = MS_ROUNDS * MS_WINDOW * MS_SENDERS;
    it_note("%d room messages from %d member senders in %llu ms", total, MS_SENDERS,
            (unsigned long long)(it_now_ms() - t0));
    /* nothing after the last: no repeat, nothing of one's own */
    for (int k = 0; k < NS; k++) {
        tc_frame *f;
        while ((f = tc_wait(ss[k], IMP_DELIVER, 0, 100)) != NULL) {
            int s = -1, i = -1;
            ms_parse(f, &s, &i);
            tc_frame_free(f);
            IT_CHECK(0, "session %d (%s): a DELIVER too many (sender %d, message %d)", k, names[k],
                     s, i);
        }
    }
    /* each message: every session but its sender's (m1's two sessions both) */
    IT_EQ(metric(p, "transient_delivered") - delivered0, (long long)total * (NS - 1));
    for (int k = 0; k < NS; k++)
        tc_close(ss[k]);
    it_liveness(p, pid, NULL, NULL, NULL, NULL);
    it_finish(p);
}

int main(void)
{
    it_main_init(120);
    if (!it_imd_or_skip())
        return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_room_fanout_sessions_and_slow_member, it_teardown),
        cmocka_unit_test_teardown(test_room_member_senders_ack_modes, it_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
