/* Integration: durability across restarts and crashes (SPEC.md 9: IMP-DELIV-001..006).
 *
 * - graceful stop (SIGTERM: connected clients get ERROR SHUTDOWN, exit 0 within 5 s) and
 *   restart on the same data directory: accounts, queued messages, the acked mark, dedupe ids,
 *   room membership and history survive;
 * - kill -9 (three times) while a sender pipelines 500 messages with CLIENT_MSG_IDs: after each
 *   restart the sender resends everything it has no ACK for with the same ids; the recipient,
 *   online throughout and resuming with LOGIN LAST_SEQ, deduplicating by MSG_ID, has every
 *   message exactly once, every message ACKed before a crash among them, in the sender's order,
 *   with SEQ increasing on every session.
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

#include "itest.h"

#define T 5000

static void send_ok(tc *c, const char *to, const char *cmid, const char *body, tc_ack *ack)
{
    tc_ack tmp;
    if (!ack)
        ack = &tmp;
    int r = tc_send_text(c, to, cmid, body, ack);
    IT_CHECK(r == 0, "SEND to %s: %d", to, r);
    IT_CHECK(ack->outcome == IMP_OUTCOME_STORED, "SEND to %s: OUTCOME %d CODE %d", to, ack->outcome,
             ack->code);
}

/* fsync_thread (default yes): the group commit's fsyncs run on the syncer, which also
 * checkpoints the log (STATS store_syncs, store_checkpoints, store_log_frames); every SEND is
 * ACKed and delivered, and the messages are there after a restart. With fsync_thread=no the
 * syncer does nothing (the commits sync inline). */
static void run_fsync_mode(int thread)
{
    static const char *const on[] = {NULL};
    static const char *const off[] = {"--set", "fsync_thread=no", NULL};
    imd_proc *p = it_create_imd(thread ? on : off);
    static const char *const add[] = {"user", "add", "boss", "--admin", NULL};
    IT_EQ(it_admin(p, "boss password\n", NULL, 0, add), 0);
    it_start(p);
    tc *boss = it_login(p->port, "boss", "boss password", NULL);
    tc *a = it_register(p->port, "fsa", "fsa password", NULL);
    tc_close(it_register(p->port, "fsb", "fsb password", NULL));
    enum { N = 30 };
    for (int i = 0; i < N; i++) { /* 30 batches over ~900 ms: checkpoints every 200 ms */
        char id[16], body[32];
        snprintf(id, sizeof id, "fs%d", i);
        snprintf(body, sizeof body, "fsync %d", i);
        send_ok(a, "fsb", id, body, NULL);
        it_sleep_ms(30);
    }
    long long syncs = it_stat(boss, "store_syncs");
    long long ckpts = it_stat(boss, "store_checkpoints");
    long long frames = it_stat(boss, "store_log_frames");
    it_note("fsync_thread=%s: %d SENDs ACKed; store_syncs %lld, store_checkpoints %lld, "
            "store_log_frames %lld",
            thread ? "yes" : "no", N, syncs, ckpts, frames);
    if (thread) {
        IT_CHECK(syncs >= N / 2, "store_syncs %lld for %d separate SENDs", syncs, N);
        IT_CHECK(ckpts >= 1, "no checkpoint by the syncer in ~900 ms of commits");
    } else {
        IT_EQ(syncs, 0);
        IT_EQ(ckpts, 0);
    }
    tc_close(a);
    tc_close(boss);
    /* a restart: everything ACKed is there, in order */
    IT_EQ(imd_stop(p, 5000), 0);
    it_start(p);
    tc *b = it_login(p->port, "fsb", "fsb password", NULL);
    for (int i = 0; i < N; i++) {
        char body[32];
        snprintf(body, sizeof body, "fsync %d", i);
        tc_frame *f = tc_wait(b, IMP_DELIVER, 0, 5000);
        IT_CHECK(f != NULL, "DELIVER %d of %d after the restart", i + 1, N);
        IT_EQ(imp_msg_u(&f->m, IMP_T_SEQ, 0), (uint64_t)i + 1);
        IT_CHECK(tc_field_is(&f->m, IMP_T_BODY, body), "DELIVER %d: wrong body", i + 1);
        tc_frame_free(f);
    }
    tc_close(b);
    it_liveness(p, (long)p->pid, NULL, NULL, NULL, NULL);
    it_finish(p);
}

static void test_fsync_thread(void **state)
{
    (void)state;
    run_fsync_mode(1);
    run_fsync_mode(0);
}

static void test_restart_persistence(void **state)
{
    (void)state;
    imd_proc *p = it_start_imd(NULL);
    tc *alice = it_register(p->port, "alice", "alice password", NULL);
    tc *bob = it_register(p->port, "bob", "bob password", NULL);
    imp_msg m;
    imp_msg_init(&m, IMP_JOIN, 0);
    imp_msg_set_s(&m, IMP_T_ROOM, "keep");
    uint32_t req = tc_request(alice, &m);
    tc_frame *f = tc_wait_reply(alice, req, T);
    IT_CHECK(f && f->m.type == IMP_OK, "JOIN keep");
    tc_frame_free(f);
    imp_msg_init(&m, IMP_JOIN, 0);
    imp_msg_set_s(&m, IMP_T_ROOM, "keep");
    req = tc_request(bob, &m);
    f = tc_wait_reply(bob, req, T);
    IT_CHECK(f && f->m.type == IMP_OK, "JOIN keep");
    tc_frame_free(f);
    tc_close(bob);

    /* Ten direct messages and two room messages to offline bob. */
    tc_ack acks[10];
    for (int i = 0; i < 10; i++) {
        char id[16];
        snprintf(id, sizeof id, "p%d", i + 1);
        send_ok(alice, "bob", id, id, &acks[i]);
    }
    for (int i = 0; i < 2; i++) {
        tc_msg s;
        memset(&s, 0, sizeof s);
        s.kind = IMP_TARGET_ROOM;
        s.target = "keep";
        s.cls = -1;
        s.ack_mode = -1;
        s.body = i ? "r2" : "r1";
        s.body_len = 2;
        tc_ack a;
        IT_EQ(tc_send(alice, &s, &a, T), 0);
        IT_EQ(a.outcome, IMP_OUTCOME_STORED);
    }
    /* bob reads all twelve and acknowledges four. */
    bob = it_login(p->port, "bob", "bob password", NULL);
    for (uint64_t i = 1; i <= 12; i++) {
        f = tc_wait(bob, IMP_DELIVER, 0, T);
        IT_CHECK(f != NULL, "bob: DELIVER %llu missing", (unsigned long long)i);
        IT_EQ(imp_msg_u(&f->m, IMP_T_SEQ, 0), i);
        tc_frame_free(f);
    }
    IT_EQ(tc_delivered(bob, 4), 0);
    req = tc_simple(bob, IMP_PING);
    f = tc_wait(bob, IMP_PONG, req, T);
    IT_CHECK(f != NULL, "no PONG");
    tc_frame_free(f);
    tc_close(bob);

    /* SIGTERM: the connected client gets ERROR SHUTDOWN (730) and the close; imd exits 0
     * within 5 s. */
    uint64_t t0 = it_now_ms();
    kill(p->pid, SIGTERM);
    int code = it_expect_closed(alice, 6000, 730, "client connected at SIGTERM");
    IT_EQ(code, 730);
    int rc = imd_wait_exit(p, 5000 - (int)(it_now_ms() - t0));
    IT_EQ(rc, 0);
    it_note("graceful stop in %llu ms", (unsigned long long)(it_now_ms() - t0));
    tc_close(alice);

    it_start(p);
    /* Accounts, the acked mark and the queue survive: SEQ 5..12 in order. */
    tc_auth ba;
    bob = it_login(p->port, "bob", "bob password", &ba);
    IT_EQ(ba.last_seq, 4);
    for (uint64_t i = 5; i <= 12; i++) {
        f = tc_wait(bob, IMP_DELIVER, 0, T);
        IT_CHECK(f != NULL, "bob after restart: DELIVER %llu missing", (unsigned long long)i);
        IT_EQ(imp_msg_u(&f->m, IMP_T_SEQ, 0), i);
        char want[8];
        if (i <= 10)
            snprintf(want, sizeof want, "p%llu", (unsigned long long)i);
        else
            snprintf(want, sizeof want, "r%llu", (unsigned long long)(i - 10));
        IT_CHECK(tc_field_is(&f->m, IMP_T_BODY, want), "SEQ %llu: wrong body, want %s",
                 (unsigned long long)i, want);
        if (i <= 10)
            IT_EQ(imp_msg_u(&f->m, IMP_T_MSG_ID, 0), acks[i - 1].msg_id);
        tc_frame_free(f);
    }
    f = tc_wait(bob, IMP_DELIVER, 0, 300);
    IT_CHECK(f == NULL, "bob: more than the unacknowledged tail after restart");
    IT_EQ(tc_delivered(bob, 12), 0);

    /* Dedupe ids survive: the retry of p10 is a duplicate of the same message. */
    alice = it_login(p->port, "alice", "alice password", NULL);
    tc_ack dup;
    send_ok(alice, "bob", "p10", "p10", &dup);
    IT_EQ(dup.duplicate, 1);
    IT_EQ(dup.msg_id, acks[9].msg_id);
    f = tc_wait(bob, IMP_DELIVER, 0, 300);
    IT_CHECK(f == NULL, "the duplicate was delivered again");

    /* Room membership and history survive. */
    imp_msg_init(&m, IMP_HISTORY, 0);
    imp_msg_set_s(&m, IMP_T_ROOM, "keep");
    req = tc_request(bob, &m);
    int items = 0;
    for (;;) {
        f = tc_wait_reply(bob, req, T);
        IT_CHECK(f != NULL, "HISTORY: no answer");
        uint8_t type = f->m.type;
        tc_frame_free(f);
        if (type == IMP_OK)
            break;
        IT_CHECK(type == IMP_HISTORY_ITEM, "HISTORY answered by %s", imp_type_name(type));
        items++;
    }
    IT_EQ(items, 2);
    tc_close(alice);
    tc_close(bob);
    it_liveness(p, (long)p->pid, NULL, NULL, NULL, NULL);
    /* SIGINT stops gracefully too: exit 0 within 5 s. */
    kill(p->pid, SIGINT);
    IT_EQ(imd_wait_exit(p, 5000), 0);
    it_finish(p);
}

enum { NMSG = 500, WINDOW = 16, KILL_AFTER = 200 };

typedef struct rx {
    uint64_t seq, msg_id;
    int idx; /* body index */
    int session;
} rx;

typedef struct kstate {
    uint64_t ack_id[NMSG]; /* MSG_ID from the ACK, 0 none */
    int acked_before_crash[NMSG];
    rx *got;
    size_t ngot, capgot;
    uint64_t processed; /* highest SEQ processed by the recipient */
    uint64_t last_seq_session;
    int session;
    int duplicates; /* ACKs with DUPLICATE 1 (stored before the crash, ACK lost) */
} kstate;

/* Recipient: take every queued DELIVER; SEQ must increase on the session; acknowledge every
 * 37th and remember the highest processed SEQ (IMP-DELIV-005 style). */
static void drain_rita(tc *rita, kstate *k, int timeout_ms)
{
    tc_pump(rita, timeout_ms);
    tc_frame *f;
    while ((f = tc_wait(rita, IMP_DELIVER, 0, 0)) != NULL) {
        uint64_t seq = imp_msg_u(&f->m, IMP_T_SEQ, 0);
        char body[16];
        tc_str(&f->m, IMP_T_BODY, body, sizeof body);
        int idx = -1;
        if (body[0] == 'k')
            idx = atoi(body + 1);
        IT_CHECK(idx >= 0 && idx < NMSG, "unexpected body '%s'", body);
        IT_CHECK(seq > k->last_seq_session, "SEQ %llu after %llu on one session (IMP-DELIV-002)",
                 (unsigned long long)seq, (unsigned long long)k->last_seq_session);
        k->last_seq_session = seq;
        if (k->ngot == k->capgot) {
            k->capgot = k->capgot ? 2 * k->capgot : 1024;
            k->got = realloc(k->got, k->capgot * sizeof *k->got);
            IT_CHECK(k->got != NULL, "oom");
        }
        rx r = {seq, imp_msg_u(&f->m, IMP_T_MSG_ID, 0), idx, k->session};
        k->got[k->ngot++] = r;
        if (seq > k->processed)
            k->processed = seq;
        if (k->ngot % 37 == 0 && !rita->eof)
            tc_delivered(rita, k->processed);
        tc_frame_free(f);
    }
}

static int count_acked(const kstate *k)
{
    int n = 0;
    for (int i = 0; i < NMSG; i++)
        n += k->ack_id[i] != 0;
    return n;
}

/* Take the ACKs queued on the sender (reading for up to timeout_ms). reqs[i]: request id of
 * message i's latest SEND. Returns the number taken. */
static int take_acks(tc *sam, const uint32_t *reqs, kstate *k, int timeout_ms, int *inflight)
{
    tc_pump(sam, timeout_ms);
    int n = 0;
    tc_frame *f;
    while ((f = tc_wait(sam, IMP_ACK, 0, 0)) != NULL) {
        int idx = -1;
        for (int i = 0; i < NMSG; i++)
            if (reqs[i] == f->m.request_id) {
                idx = i;
                break;
            }
        IT_CHECK(idx >= 0, "ACK for unknown request %u", (unsigned)f->m.request_id);
        tc_ack a;
        tc_ack_from(&f->m, &a);
        IT_CHECK(a.outcome == IMP_OUTCOME_STORED, "message %d: OUTCOME %d CODE %d", idx, a.outcome,
                 a.code);
        IT_CHECK(a.has_msg_id, "ACK without MSG_ID");
        if (k->ack_id[idx])
            IT_EQ(a.msg_id, k->ack_id[idx]);
        if (a.duplicate)
            k->duplicates++;
        k->ack_id[idx] = a.msg_id;
        (*inflight)--;
        n++;
        tc_frame_free(f);
    }
    return n;
}

static uint32_t send_k(tc *sam, int i)
{
    char id[16];
    snprintf(id, sizeof id, "k%03d", i);
    tc_msg s;
    memset(&s, 0, sizeof s);
    s.kind = IMP_TARGET_USER;
    s.target = "rita";
    s.cmid = id;
    s.cls = -1;
    s.ack_mode = -1;
    s.body = id;
    s.body_len = strlen(id);
    imp_msg m;
    tc_build_send(&s, &m);
    return tc_request(sam, &m);
}

static void test_kill9_during_sends(void **state)
{
    (void)state;
    imd_proc *p = it_start_imd(NULL);
    tc_close(it_register(p->port, "sam", "sam password", NULL));
    tc_close(it_register(p->port, "rita", "rita password", NULL));
    static kstate k;
    memset(&k, 0, sizeof k);
    static uint32_t reqs[NMSG];
    /* Three crashes, each once this many messages are ACKed; the fourth round finishes. */
    static const int crash_at[] = {KILL_AFTER / 2, KILL_AFTER, KILL_AFTER + 150};
    enum { CRASHES = sizeof crash_at / sizeof crash_at[0] };
    tc *sam = NULL, *rita = NULL;
    for (int round = 0;; round++) {
        /* (Re)connect: the sender logs in; the recipient resumes with LOGIN LAST_SEQ = the
         * highest SEQ it processed (IMP-DELIV-004/005). */
        sam = it_login(p->port, "sam", "sam password", NULL);
        rita = tc_connect(p->port, T);
        IT_CHECK(rita != NULL, "connect");
        tc_auth ra;
        IT_EQ(tc_login(rita, "rita", "rita password", k.processed, &ra, T), 0);
        IT_EQ(ra.last_seq, k.processed);
        k.last_seq_session = k.processed;
        memset(reqs, 0, sizeof reqs); /* request ids start again on a new connection */

        /* Send in order with a window, first resending (same ids) what has no ACK. */
        int i = 0, inflight = 0;
        int target = round < CRASHES ? crash_at[round] : NMSG;
        uint64_t t0 = it_now_ms();
        while (count_acked(&k) < target) {
            IT_CHECK(it_now_ms() - t0 < 30000, "round %d too slow: %d ACKs", round,
                     count_acked(&k));
            IT_CHECK(!sam->eof, "sender disconnected in round %d", round);
            while (i < NMSG && inflight < WINDOW) {
                if (!k.ack_id[i]) {
                    reqs[i] = send_k(sam, i);
                    IT_CHECK(reqs[i] != 0, "SEND k%03d", i);
                    inflight++;
                }
                i++;
            }
            take_acks(sam, reqs, &k, 20, &inflight);
            drain_rita(rita, &k, 0);
        }
        if (round == CRASHES)
            break;
        /* A burst without waiting, then SIGKILL at once: the crash hits SENDs in every stage
         * (unread, stored without ACK, ACK on the way). */
        int burst_end = i + 3 * WINDOW;
        for (; i < NMSG && i < burst_end; i++)
            if (!k.ack_id[i]) {
                reqs[i] = send_k(sam, i);
                IT_CHECK(reqs[i] != 0, "SEND k%03d", i);
                inflight++;
            }
        imd_kill9(p);
        uint64_t t_kill = it_now_ms();
        /* Whatever ACKs were already on the way count as ACKed: read until EOF. */
        while (!sam->eof && it_now_ms() - t_kill < 3000)
            take_acks(sam, reqs, &k, 100, &inflight);
        IT_CHECK(sam->eof, "sender's connection still open after SIGKILL");
        while (!rita->eof && it_now_ms() - t_kill < 3000)
            drain_rita(rita, &k, 100);
        for (int x = 0; x < NMSG; x++)
            if (k.ack_id[x])
                k.acked_before_crash[x] = 1;
        it_note("crash %d: after %d SENDs, %d ACKed, recipient processed SEQ %llu", round + 1, i,
                count_acked(&k), (unsigned long long)k.processed);
        tc_close(sam);
        tc_close(rita);
        k.session++;
        it_start(p);
    }
    long pid = (long)p->pid;

    /* The recipient reads until it has every message (deduplicated by MSG_ID). */
    uint64_t t0 = it_now_ms();
    for (;;) {
        drain_rita(rita, &k, 300);
        size_t distinct = 0;
        static uint64_t seen_ids[NMSG * 4];
        for (size_t j = 0; j < k.ngot; j++) {
            int dup = 0;
            for (size_t q = 0; q < distinct; q++)
                if (seen_ids[q] == k.got[j].msg_id) {
                    dup = 1;
                    break;
                }
            if (!dup && distinct < NMSG * 4)
                seen_ids[distinct++] = k.got[j].msg_id;
        }
        if (distinct >= NMSG && tc_queued(rita, IMP_DELIVER) == 0) {
            drain_rita(rita, &k, 300);
            break;
        }
        IT_CHECK(it_now_ms() - t0 < 15000, "recipient has %zu distinct of %d messages", distinct,
                 NMSG);
    }
    tc_delivered(rita, k.processed);

    /* Checks: dedupe by MSG_ID; each body index exactly once; same MSG_ID -> same SEQ and
     * same index; MSG_ID agrees with the sender's ACK; in the sender's order. */
    static uint64_t id_of[NMSG], seq_of[NMSG];
    memset(id_of, 0, sizeof id_of);
    memset(seq_of, 0, sizeof seq_of);
    for (size_t j = 0; j < k.ngot; j++) {
        rx *r = &k.got[j];
        if (id_of[r->idx]) {
            IT_CHECK(id_of[r->idx] == r->msg_id,
                     "k%03d delivered under two MSG_IDs %llu and %llu: stored twice", r->idx,
                     (unsigned long long)id_of[r->idx], (unsigned long long)r->msg_id);
            IT_CHECK(seq_of[r->idx] == r->seq, "k%03d delivered with SEQ %llu and %llu", r->idx,
                     (unsigned long long)seq_of[r->idx], (unsigned long long)r->seq);
        }
        id_of[r->idx] = r->msg_id;
        seq_of[r->idx] = r->seq;
    }
    int lost_acked = 0, missing = 0;
    for (int x = 0; x < NMSG; x++) {
        if (!id_of[x]) {
            missing++;
            if (k.acked_before_crash[x])
                lost_acked++;
            continue;
        }
        IT_CHECK(id_of[x] == k.ack_id[x], "k%03d: delivered MSG_ID %llu, ACKed %llu", x,
                 (unsigned long long)id_of[x], (unsigned long long)k.ack_id[x]);
        if (x > 0 && id_of[x - 1])
            IT_CHECK(seq_of[x] > seq_of[x - 1] && id_of[x] > id_of[x - 1],
                     "order: k%03d has SEQ %llu MSG_ID %llu, k%03d SEQ %llu MSG_ID %llu", x,
                     (unsigned long long)seq_of[x], (unsigned long long)id_of[x], x - 1,
                     (unsigned long long)seq_of[x - 1], (unsigned long long)id_of[x - 1]);
    }
    IT_CHECK(lost_acked == 0,
             "%d messages ACKed before the crash were never delivered "
             "(IMP-DELIV-001)",
             lost_acked);
    IT_CHECK(missing == 0, "%d messages never delivered", missing);
    IT_EQ(seq_of[NMSG - 1], NMSG); /* one SEQ per stored message: nothing stored twice */
    it_note("recipient: %zu DELIVERs for %d messages over %d sessions; %d resends were "
            "duplicates (stored before a crash, ACK lost)",
            k.ngot, NMSG, k.session + 1, k.duplicates);
    free(k.got);
    k.got = NULL;
    tc_close(sam);
    tc_close(rita);
    it_liveness(p, pid, NULL, NULL, NULL, NULL);
    it_finish(p);
}

int main(void)
{
    it_main_init(120);
    if (!it_imd_or_skip())
        return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_restart_persistence, it_teardown),
        cmocka_unit_test_teardown(test_kill9_during_sends, it_teardown),
        cmocka_unit_test_teardown(test_fsync_thread, it_teardown),
    };
    return cmocka_run_group_tests_name("integration: durability", tests, NULL, NULL);
}
