/* Integration: LOGOUT's OK comes after the answers to every earlier request (deferred LOGOUT,
 * IMP-SESS-008, IMP-MSG-005, IMP-SESS-007) against a real imd over loopback.
 *
 * - one write() holding 50 durable SENDs and LOGOUT, after login: every ACK (stored) arrives,
 *   all of them before the OK with LOGOUT's request id, then EOF; the messages are delivered to
 *   the recipient afterwards. With the default fsync_thread=yes (the ACKs wait for the fsync
 *   thread, IMP-DELIV-001) and with fsync_thread=no (the commit's fsync inline), 3 rounds each;
 * - refusals and errors pipelined before LOGOUT (SEND to an unknown user, SEND over the
 *   recipient's offline quota: ACK refused; DELIVERED above the last SEQ, STATS by a
 *   non-administrator: ERROR; JOIN: OK; a room SEND: ACK stored): every answer before the OK;
 * - an ACK_MODE 2 SEND whose recipient never acknowledges does not delay the OK (its ACK is not
 *   sent: IMP-SESS-008's exception), while the ACK_MODE 1 SEND beside it is answered first;
 * - 20 clients that reset the connection right after writing SENDs + LOGOUT (the OK still
 *   pending): imd keeps running, no sanitizer report, no leak (LeakSanitizer at the stop);
 * - SIGTERM right after such a write: the client sees either every ACK and then the OK (the
 *   pending OK is sent after the final sync) or the SHUTDOWN ERROR without any OK, never an OK
 *   before an ACK; imd exits 0; after a restart the recipient gets every message ACKed.
 * Every test ends with a liveness check on the same imd process and a clean stop.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "itest.h"

#define T 5000
#define N 50
#define PW "password-1"

/* ---- helpers ------------------------------------------------------------------------------ */

/* Append m, encoded, to buf at *off. */
static void put(uint8_t *buf, size_t cap, size_t *off, const imp_msg *m)
{
    imp_ssize k = imp_msg_encode(m, buf + *off, cap - *off);
    IT_CHECK(k > 0, "encode %s: %td", imp_type_name(m->type), k);
    *off += (size_t)k;
}

static void put_send(uint8_t *buf, size_t cap, size_t *off, int kind, const char *target,
                     const char *cmid, int ack_mode, const char *body, uint32_t req)
{
    tc_msg s;
    imp_msg m;
    memset(&s, 0, sizeof s);
    s.kind = kind;
    s.target = target;
    s.cmid = cmid;
    s.cls = -1;
    s.ack_mode = ack_mode;
    s.body = body;
    s.body_len = strlen(body);
    tc_build_send(&s, &m);
    m.request_id = req;
    put(buf, cap, off, &m);
}

static void put_simple(uint8_t *buf, size_t cap, size_t *off, uint8_t type, uint32_t req)
{
    imp_msg m;
    imp_msg_init(&m, type, req);
    put(buf, cap, off, &m);
}

/* What a request must be answered with. */
typedef struct want {
    uint32_t req;
    uint8_t type; /* IMP_ACK, IMP_ERROR, IMP_OK */
    int outcome;  /* ACK: OUTCOME */
    int code;     /* ACK refused or ERROR: CODE */
    int never;    /* this request must get no answer at all (ACK_MODE 2, IMP-SESS-008) */
    int answered; /* filled by check_answers */
} want;

/* The frames c received up to the close (c->eof): each request of w[] answered exactly once as
 * it says (or not at all when never), all before the OK with LOGOUT's request id, which is
 * there, and nothing after it. Frames the server sends on its own (request id 0: DELIVER,
 * PRESENCE_EVENT, MONITOR_EVENT) are allowed before the OK. */
static void check_answers(tc *c, want *w, size_t n, uint32_t logout_req, const char *what)
{
    char d[1024];
    IT_CHECK(c->eof, "%s: connection not closed: %s", what, tc_describe(c, d, sizeof d));
    IT_CHECK(c->lib_err == 0, "%s: the client library refused the server's input: %d", what,
             c->lib_err);
    int ok_seen = 0, idx = 0;
    for (tc_frame *f = c->head; f; f = f->next, idx++) {
        const imp_msg *m = &f->m;
        IT_CHECK(!ok_seen, "%s: frame %d (%s id %u) after the OK to LOGOUT", what, idx,
                 imp_type_name(m->type), m->request_id);
        if (m->request_id == logout_req) {
            IT_CHECK(m->type == IMP_OK, "%s: LOGOUT answered by %s", what, imp_type_name(m->type));
            ok_seen = 1;
            continue;
        }
        if (m->request_id == 0 && (m->type == IMP_DELIVER || m->type == IMP_PRESENCE_EVENT ||
                                   m->type == IMP_MONITOR_EVENT))
            continue;
        size_t i = 0;
        while (i < n && w[i].req != m->request_id)
            i++;
        IT_CHECK(i < n, "%s: frame %d: unexpected %s id %u", what, idx, imp_type_name(m->type),
                 m->request_id);
        IT_CHECK(!w[i].never, "%s: request %u answered (%s), want no answer", what, w[i].req,
                 imp_type_name(m->type));
        IT_CHECK(!w[i].answered, "%s: request %u answered twice", what, w[i].req);
        w[i].answered = 1;
        IT_CHECK(m->type == w[i].type, "%s: request %u answered by %s, want %s", what, w[i].req,
                 imp_type_name(m->type), imp_type_name(w[i].type));
        if (m->type == IMP_ACK) {
            tc_ack a;
            tc_ack_from(m, &a);
            IT_CHECK(a.outcome == w[i].outcome, "%s: ACK %u OUTCOME %d, want %d", what, w[i].req,
                     a.outcome, w[i].outcome);
            IT_CHECK(a.code == w[i].code, "%s: ACK %u CODE %d, want %d", what, w[i].req, a.code,
                     w[i].code);
            IT_CHECK(a.outcome == IMP_OUTCOME_REFUSED || a.has_msg_id, "%s: ACK %u without MSG_ID",
                     what, w[i].req);
        } else if (m->type == IMP_ERROR) {
            IT_EQ(imp_msg_u(m, IMP_T_CODE, 0), w[i].code);
        }
    }
    IT_CHECK(ok_seen, "%s: no OK to LOGOUT %u before the close: %s", what, logout_req,
             tc_describe(c, d, sizeof d));
    for (size_t i = 0; i < n; i++)
        IT_CHECK(w[i].never || w[i].answered, "%s: request %u (want %s) not answered before the OK",
                 what, w[i].req, imp_type_name(w[i].type));
}

/* Wait for the close, the OK's deadline included; returns the milliseconds from t0. */
static uint64_t read_to_eof(tc *c, uint64_t t0, const char *what)
{
    char d[1024];
    int closed = tc_expect_close(c, 3 * T, NULL);
    IT_CHECK(closed, "%s: not closed within %d ms: %s", what, 3 * T, tc_describe(c, d, sizeof d));
    return it_now_ms() - t0;
}

/* The recipient logs in and gets exactly these bodies, in order (IMP-DELIV-002), and
 * acknowledges them. */
static void expect_bodies(int port, const char *user, char bodies[][32], size_t n)
{
    tc_auth a;
    tc *c = it_login(port, user, PW, &a);
    uint64_t last = 0;
    for (size_t i = 0; i < n; i++) {
        tc_frame *f = tc_wait(c, IMP_DELIVER, 0, T);
        char d[512], b[64];
        IT_CHECK(f != NULL, "%s: DELIVER %zu of %zu missing: %s", user, i + 1, n,
                 tc_describe(c, d, sizeof d));
        tc_str(&f->m, IMP_T_BODY, b, sizeof b);
        IT_CHECK(strcmp(b, bodies[i]) == 0, "%s: DELIVER %zu body '%s', want '%s'", user, i + 1, b,
                 bodies[i]);
        last = imp_msg_u(&f->m, IMP_T_SEQ, 0);
        tc_frame_free(f);
    }
    IT_EQ(tc_delivered(c, last), 0);
    it_sleep_ms(100);
    IT_EQ(tc_queued(c, IMP_DELIVER), 0);
    tc_close(c);
}

/* ---- 50 SENDs and LOGOUT in one write ----------------------------------------------------- */

static void pipelined_rounds(imd_proc *p, const char *mode)
{
    long pid = p->pid;
    char alice[40], bob[40];
    it_name(alice, sizeof alice, "alice");
    it_name(bob, sizeof bob, "bob");
    tc_auth a;
    tc_close(it_register(p->port, bob, PW, &a));
    tc_close(it_register(p->port, alice, PW, &a));
    static char bodies[3 * N][32];
    size_t nb = 0;
    for (int round = 0; round < 3; round++) {
        tc *c = it_login(p->port, alice, PW, &a);
        static uint8_t buf[N * 128 + 64];
        size_t off = 0;
        want w[N];
        memset(w, 0, sizeof w);
        for (int i = 0; i < N; i++) {
            char cmid[32];
            snprintf(cmid, sizeof cmid, "r%d-m%d", round, i);
            snprintf(bodies[nb], sizeof bodies[nb], "r%d-body-%d", round, i);
            w[i].req = 1000u + (uint32_t)i;
            w[i].type = IMP_ACK;
            w[i].outcome = IMP_OUTCOME_STORED;
            put_send(buf, sizeof buf, &off, IMP_TARGET_USER, bob, cmid, -1, bodies[nb], w[i].req);
            nb++;
        }
        put_simple(buf, sizeof buf, &off, IMP_LOGOUT, 2000);
        uint64_t t0 = it_now_ms();
        IT_EQ(tc_send_raw(c, buf, off, T), 0); /* one write: N SENDs then LOGOUT */
        uint64_t ms = read_to_eof(c, t0, mode);
        check_answers(c, w, N, 2000, mode);
        it_note("%s round %d: %d ACKs then the OK to LOGOUT, EOF after %llu ms", mode, round + 1, N,
                (unsigned long long)ms);
        tc_close(c);
    }
    /* they were stored: the recipient gets all of them, in order */
    expect_bodies(p->port, bob, bodies, nb);
    it_liveness(p, pid, NULL, NULL, NULL, NULL);
    it_finish(p);
}

/* IMP-SESS-008 with the fsync thread (the default): the ACKs wait for the fsync, the OK after
 * them. */
static void test_pipelined_fsync_thread(void **state)
{
    (void)state;
    imd_proc *p = it_start_imd(NULL);
    pipelined_rounds(p, "fsync_thread=yes");
}

/* IMP-SESS-008 with the fsync inline in the commit. */
static void test_pipelined_inline_fsync(void **state)
{
    (void)state;
    static const char *const args[] = {"--set", "fsync_thread=no", NULL};
    imd_proc *p = it_start_imd(args);
    pipelined_rounds(p, "fsync_thread=no");
}

/* ---- refusals and errors before LOGOUT ---------------------------------------------------- */

static void test_refusals_then_logout(void **state)
{
    (void)state;
    static const char *const args[] = {"--set", "offline_quota=2", NULL};
    imd_proc *p = it_start_imd(args);
    long pid = p->pid;
    char alice[40], bob[40], room[40], nobody[40];
    it_name(alice, sizeof alice, "alice");
    it_name(bob, sizeof bob, "bob");
    it_name(room, sizeof room, "room");
    it_name(nobody, sizeof nobody, "nobody");
    tc_auth a;
    tc_close(it_register(p->port, bob, PW, &a));
    tc *c = it_register(p->port, alice, PW, &a);
    /* bob (offline) gets 2 messages: his quota is full */
    for (int i = 0; i < 2; i++) {
        tc_ack ack;
        IT_EQ(tc_send_text(c, bob, NULL, "fill", &ack), 0);
        IT_EQ(ack.outcome, IMP_OUTCOME_STORED);
    }
    static uint8_t buf[4096];
    size_t off = 0;
    want w[] = {
        {11, IMP_ACK, IMP_OUTCOME_REFUSED, 500, 0, 0}, /* NO_SUCH_USER */
        {12, IMP_ACK, IMP_OUTCOME_REFUSED, 504, 0, 0}, /* QUOTA */
        {13, IMP_ERROR, 0, 510, 0, 0},                 /* DELIVERED above the last SEQ */
        {14, IMP_ERROR, 0, 502, 0, 0},                 /* STATS: administrators only */
        {15, IMP_OK, 0, 0, 0, 0},                      /* JOIN */
        {16, IMP_ACK, IMP_OUTCOME_STORED, 0, 0, 0},    /* a room message (stored) */
        {17, IMP_ACK, IMP_OUTCOME_REFUSED, 504, 0, 0}, /* QUOTA again, after the others */
    };
    put_send(buf, sizeof buf, &off, IMP_TARGET_USER, nobody, NULL, -1, "lost", 11);
    put_send(buf, sizeof buf, &off, IMP_TARGET_USER, bob, "q1", -1, "over quota", 12);
    imp_msg m;
    imp_msg_init(&m, IMP_DELIVERED, 13);
    imp_msg_set_u(&m, IMP_T_SEQ, 999999);
    put(buf, sizeof buf, &off, &m);
    put_simple(buf, sizeof buf, &off, IMP_STATS, 14);
    imp_msg_init(&m, IMP_JOIN, 15);
    imp_msg_set_s(&m, IMP_T_ROOM, room);
    put(buf, sizeof buf, &off, &m);
    put_send(buf, sizeof buf, &off, IMP_TARGET_ROOM, room, "r1", -1, "to the room", 16);
    put_send(buf, sizeof buf, &off, IMP_TARGET_USER, bob, "q2", -1, "over quota", 17);
    put_simple(buf, sizeof buf, &off, IMP_LOGOUT, 18);
    uint64_t t0 = it_now_ms();
    IT_EQ(tc_send_raw(c, buf, off, T), 0);
    uint64_t ms = read_to_eof(c, t0, "refusals");
    check_answers(c, w, sizeof w / sizeof w[0], 18, "refusals");
    it_note("refusals: 7 answers (4 ACK, 2 ERROR, 1 OK) then the OK to LOGOUT, EOF after %llu ms",
            (unsigned long long)ms);
    tc_close(c);
    it_liveness(p, pid, NULL, NULL, NULL, NULL);
    it_finish(p);
}

/* ---- ACK_MODE 2 does not delay the OK ----------------------------------------------------- */

static void test_ack_mode_delivered_not_waited(void **state)
{
    (void)state;
    imd_proc *p = it_start_imd(NULL);
    long pid = p->pid;
    char alice[40], bob[40];
    it_name(alice, sizeof alice, "alice");
    it_name(bob, sizeof bob, "bob");
    tc_auth a;
    tc *b = it_register(p->port, bob, PW, &a); /* online, never acknowledges (for now) */
    tc *c = it_register(p->port, alice, PW, &a);
    static uint8_t buf[1024];
    size_t off = 0;
    want w[] = {
        {21, IMP_ACK, IMP_OUTCOME_DELIVERED, 0, 1, 0}, /* waits for bob: never answered */
        {22, IMP_ACK, IMP_OUTCOME_STORED, 0, 0, 0},
    };
    put_send(buf, sizeof buf, &off, IMP_TARGET_USER, bob, "d1", IMP_ACK_DELIVERED, "wait", 21);
    put_send(buf, sizeof buf, &off, IMP_TARGET_USER, bob, "s1", IMP_ACK_STORED, "stored", 22);
    put_simple(buf, sizeof buf, &off, IMP_LOGOUT, 23);
    uint64_t t0 = it_now_ms();
    IT_EQ(tc_send_raw(c, buf, off, T), 0);
    uint64_t ms = read_to_eof(c, t0, "ACK_MODE 2");
    check_answers(c, w, 2, 23, "ACK_MODE 2");
    it_note("ACK_MODE 2 pending: OK to LOGOUT and EOF after %llu ms (bound %d ms)",
            (unsigned long long)ms, 3 * T);
    tc_close(c);
    /* bob has both; his DELIVERED now changes nothing for the closed sender */
    uint64_t last = 0;
    for (int i = 0; i < 2; i++) {
        tc_frame *f = tc_wait(b, IMP_DELIVER, 0, T);
        char d[512];
        IT_CHECK(f != NULL, "bob: DELIVER %d missing: %s", i + 1, tc_describe(b, d, sizeof d));
        last = imp_msg_u(&f->m, IMP_T_SEQ, 0);
        tc_frame_free(f);
    }
    IT_EQ(last, 2);
    IT_EQ(tc_delivered(b, last), 0);
    tc_close(b);
    it_liveness(p, pid, NULL, NULL, NULL, NULL);
    it_finish(p);
}

/* ---- the client goes away while its LOGOUT is pending ------------------------------------- */

static int count_in(const char *text, const char *needle)
{
    int n = 0;
    for (const char *q = strstr(text, needle); q; q = strstr(q + 1, needle))
        n++;
    return n;
}

static void reset_close(tc *c)
{
    struct linger lg = {1, 0};
    setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    tc_close(c);
}

static void test_peer_gone_while_pending(void **state)
{
    (void)state;
    static const char *const args[] = {"--set", "log_level=debug", NULL};
    imd_proc *p = it_start_imd(args);
    long pid = p->pid;
    char alice[40], bob[40];
    it_name(alice, sizeof alice, "alice");
    it_name(bob, sizeof bob, "bob");
    tc_auth a;
    tc_close(it_register(p->port, bob, PW, &a));
    tc_close(it_register(p->port, alice, PW, &a));
    static uint8_t buf[N * 128 + 64];
    for (int round = 0; round < 20; round++) {
        tc *c = it_login(p->port, alice, PW, &a);
        size_t off = 0;
        for (int i = 0; i < N; i++) {
            char cmid[32];
            snprintf(cmid, sizeof cmid, "g%d-%d", round, i);
            put_send(buf, sizeof buf, &off, IMP_TARGET_USER, bob, cmid, -1, "gone", 100u + i);
        }
        put_simple(buf, sizeof buf, &off, IMP_LOGOUT, 500);
        IT_EQ(tc_send_raw(c, buf, off, T), 0);
        if (round % 2)
            reset_close(c); /* RST at once */
        else {
            shutdown(c->fd, SHUT_RDWR); /* FIN, and nothing read */
            tc_close(c);
        }
    }
    it_sleep_ms(500);
    IT_CHECK(imd_alive(p), "imd died");
    char *log = it_slurp(p->errlog, NULL);
    it_note("20 clients gone after SENDs + LOGOUT: %d closes counted as logout, %d as peer",
            count_in(log, "reason=logout"), count_in(log, "reason=peer"));
    free(log);
    it_liveness(p, pid, NULL, NULL, NULL, NULL);
    it_finish(p); /* LeakSanitizer: nothing of the pending LOGOUTs leaked */
}

/* ---- SIGTERM while LOGOUT is pending ------------------------------------------------------ */

static void test_shutdown_while_pending(void **state)
{
    (void)state;
    imd_proc *p = it_start_imd(NULL);
    char alice[40], bob[40];
    it_name(alice, sizeof alice, "alice");
    it_name(bob, sizeof bob, "bob");
    tc_auth a;
    tc_close(it_register(p->port, bob, PW, &a));
    tc_close(it_register(p->port, alice, PW, &a));
    static char bodies[3 * N][32];
    size_t nb = 0;
    int with_ok = 0, with_shutdown = 0;
    for (int round = 0; round < 3; round++) {
        if (round > 0)
            IT_EQ(imd_start(p), 0);
        tc *c = it_login(p->port, alice, PW, &a);
        static uint8_t buf[N * 128 + 64];
        size_t off = 0;
        char sent[N][32];
        for (int i = 0; i < N; i++) {
            char cmid[32];
            snprintf(cmid, sizeof cmid, "t%d-%d", round, i);
            snprintf(sent[i], sizeof sent[i], "t%d-body-%d", round, i);
            put_send(buf, sizeof buf, &off, IMP_TARGET_USER, bob, cmid, -1, sent[i], 100u + i);
        }
        put_simple(buf, sizeof buf, &off, IMP_LOGOUT, 500);
        IT_EQ(tc_send_raw(c, buf, off, T), 0);
        IT_EQ(kill(p->pid, SIGTERM), 0);
        read_to_eof(c, it_now_ms(), "SIGTERM");
        /* what arrived: ACKs (stored) for a prefix of the SENDs, then either the OK to LOGOUT
         * (then every ACK came first) or ERROR SHUTDOWN (then no OK) */
        int acks = 0, ok = 0, shut = 0;
        for (tc_frame *f = c->head; f; f = f->next) {
            const imp_msg *m = &f->m;
            IT_CHECK(!ok && !shut, "SIGTERM: %s id %u after the end (OK %d, SHUTDOWN %d)",
                     imp_type_name(m->type), m->request_id, ok, shut);
            if (m->type == IMP_ACK) {
                IT_EQ(m->request_id, 100u + (uint32_t)acks);
                IT_EQ(imp_msg_u(m, IMP_T_OUTCOME, 0), IMP_OUTCOME_STORED);
                memcpy(bodies[nb++], sent[acks], sizeof sent[acks]); /* ACKed: must be kept */
                acks++;
            } else if (m->type == IMP_OK) {
                IT_EQ(m->request_id, 500);
                IT_CHECK(acks == N, "SIGTERM: OK to LOGOUT after %d of %d ACKs", acks, N);
                ok = 1;
            } else {
                IT_CHECK(m->type == IMP_ERROR && imp_msg_u(m, IMP_T_CODE, 0) == 730,
                         "SIGTERM: unexpected %s id %u", imp_type_name(m->type), m->request_id);
                shut = 1;
            }
        }
        IT_CHECK(ok || shut, "SIGTERM: neither the OK to LOGOUT nor ERROR SHUTDOWN (%d ACKs)",
                 acks);
        with_ok += ok;
        with_shutdown += shut;
        it_note("SIGTERM round %d: %d ACKs, then %s", round + 1, acks,
                ok ? "the OK to LOGOUT" : "ERROR SHUTDOWN");
        tc_close(c);
        int rc = imd_wait_exit(p, T);
        IT_CHECK(rc == 0, "imd did not exit 0 after SIGTERM: %d", rc);
    }
    it_note("SIGTERM right after SENDs + LOGOUT: %d rounds ended with the OK, %d with SHUTDOWN",
            with_ok, with_shutdown);
    IT_EQ(imd_start(p), 0);
    long pid = p->pid;
    /* IMP-DELIV-001: every ACKed message survived the stop; more may follow (stored, not yet
     * ACKed when imd stopped): only the ACKed prefix of each round is checked, in order */
    tc *b = it_login(p->port, bob, PW, &a);
    size_t k = 0;
    uint64_t last = 0;
    while (k < nb) {
        tc_frame *f = tc_wait(b, IMP_DELIVER, 0, T);
        char d[512], body[64];
        IT_CHECK(f != NULL, "after restart: DELIVER missing (%zu of %zu ACKed seen): %s", k, nb,
                 tc_describe(b, d, sizeof d));
        tc_str(&f->m, IMP_T_BODY, body, sizeof body);
        last = imp_msg_u(&f->m, IMP_T_SEQ, 0);
        if (strcmp(body, bodies[k]) == 0)
            k++;
        tc_frame_free(f);
    }
    IT_EQ(tc_delivered(b, last), 0);
    tc_close(b);
    it_liveness(p, pid, NULL, NULL, NULL, NULL);
    it_finish(p);
}

int main(void)
{
    it_main_init(120);
    if (!it_imd_or_skip())
        return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_pipelined_fsync_thread, it_teardown),
        cmocka_unit_test_teardown(test_pipelined_inline_fsync, it_teardown),
        cmocka_unit_test_teardown(test_refusals_then_logout, it_teardown),
        cmocka_unit_test_teardown(test_ack_mode_delivered_not_waited, it_teardown),
        cmocka_unit_test_teardown(test_peer_gone_while_pending, it_teardown),
        cmocka_unit_test_teardown(test_shutdown_while_pending, it_teardown),
    };
    return cmocka_run_group_tests_name("integration: deferred LOGOUT", tests, NULL, NULL);
}
