/* Integration: rooms, presence and administration against a real imd (SPEC.md 5.4-5.6, 9).
 *
 * - JOIN (idempotent), LEAVE, MEMBERS and ROOMS paging with CURSOR/MORE;
 * - room messages: online members, the sender's other session, offline members on login,
 *   one order for every member (IMP-DELIV-006/008), NOT_MEMBER;
 * - HISTORY newest first with LIMIT, BEFORE_ID and MORE;
 * - presence: SUBSCRIBE, PRESENCE_EVENT online/away/offline with SESSIONS counted across two
 *   sessions; WHO paging;
 * - STATS and MONITOR: FORBIDDEN for a non-administrator; STATS_REPLY and MONITOR_EVENTs for
 *   an administrator; the HTTP /metrics endpoint (--metrics).
 * Every test ends with a liveness check on the same imd process.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "itest.h"

#define T 5000

/* Send a request and expect OK with its request id. */
static void expect_ok(tc *c, imp_msg *m, const char *what)
{
    uint32_t req = tc_request(c, m);
    IT_CHECK(req != 0, "%s: not sent", what);
    tc_frame *f = tc_wait_reply(c, req, T);
    char d[512];
    IT_CHECK(f != NULL, "%s: no answer: %s", what, tc_describe(c, d, sizeof d));
    IT_CHECK(f->m.type == IMP_OK, "%s: answered %s (code %d), want OK", what,
             imp_type_name(f->m.type), (int)imp_msg_u(&f->m, IMP_T_CODE, 0));
    tc_frame_free(f);
}

/* Send a request and expect ERROR code with its request id; the connection stays usable. */
static void expect_error(tc *c, imp_msg *m, int code, const char *what)
{
    uint32_t req = tc_request(c, m);
    IT_CHECK(req != 0, "%s: not sent", what);
    tc_frame *f = tc_wait_reply(c, req, T);
    char d[512];
    IT_CHECK(f != NULL, "%s: no answer: %s", what, tc_describe(c, d, sizeof d));
    IT_CHECK(f->m.type == IMP_ERROR && (int)imp_msg_u(&f->m, IMP_T_CODE, 0) == code,
             "%s: answered %s (code %d), want ERROR %d", what, imp_type_name(f->m.type),
             (int)imp_msg_u(&f->m, IMP_T_CODE, 0), code);
    tc_frame_free(f);
}

static void room_req(tc *c, uint8_t type, const char *room, const char *what)
{
    imp_msg m;
    imp_msg_init(&m, type, 0);
    imp_msg_set_s(&m, IMP_T_ROOM, room);
    expect_ok(c, &m, what);
}

/* Page through MEMBERS (room != NULL), ROOMS or WHO with a LIMIT; every page must hold at most
 * limit names; the names are collected (comma-separated, ",a,b,") into out. Returns the number
 * of names. */
static int page_all(tc *c, uint8_t type, const char *room, uint32_t limit, char *out, size_t outlen,
                    int *pages)
{
    uint8_t reply = type == IMP_MEMBERS ? IMP_MEMBER_LIST
                    : type == IMP_ROOMS ? IMP_ROOM_LIST
                                        : IMP_WHO_LIST;
    uint8_t cursor[64];
    size_t cursor_len = 0;
    int have_cursor = 0, total = 0;
    snprintf(out, outlen, ",");
    *pages = 0;
    for (;;) {
        IT_CHECK(*pages < 50, "%s: more than 50 pages", imp_type_name(type));
        imp_msg m;
        imp_msg_init(&m, type, 0);
        if (room)
            imp_msg_set_s(&m, IMP_T_ROOM, room);
        if (have_cursor)
            imp_msg_set_b(&m, IMP_T_CURSOR, cursor, cursor_len);
        imp_msg_set_u(&m, IMP_T_LIMIT, limit);
        uint32_t req = tc_request(c, &m);
        IT_CHECK(req != 0, "%s not sent", imp_type_name(type));
        tc_frame *f = tc_wait_reply(c, req, T);
        char d[512];
        IT_CHECK(f != NULL, "%s: no answer: %s", imp_type_name(type), tc_describe(c, d, sizeof d));
        IT_CHECK(f->m.type == reply, "%s answered by %s (code %d)", imp_type_name(type),
                 imp_type_name(f->m.type), (int)imp_msg_u(&f->m, IMP_T_CODE, 0));
        (*pages)++;
        if (room)
            IT_CHECK(tc_field_is(&f->m, IMP_T_ROOM, room), "MEMBER_LIST for another ROOM");
        size_t n = tc_names_count(&f->m, IMP_T_NAMES);
        IT_CHECK(n <= limit, "%s page of %zu names with LIMIT %u", imp_type_name(reply), n,
                 (unsigned)limit);
        imp_bytes rest = imp_msg_b(&f->m, IMP_T_NAMES), name;
        while (imp_names_next(&rest, &name) == 1) {
            size_t l = strlen(out);
            IT_CHECK(l + name.len + 2 < outlen, "names overflow");
            memcpy(out + l, name.p, name.len);
            out[l + name.len] = ',';
            out[l + name.len + 1] = 0;
            total++;
        }
        int more = (int)imp_msg_u(&f->m, IMP_T_MORE, 0);
        if (more) {
            IT_CHECK(imp_msg_has(&f->m, IMP_T_CURSOR), "MORE 1 without CURSOR");
            imp_bytes cur = imp_msg_b(&f->m, IMP_T_CURSOR);
            memcpy(cursor, cur.p, cur.len);
            cursor_len = cur.len;
            have_cursor = 1;
        }
        tc_frame_free(f);
        if (!more)
            break;
    }
    return total;
}

static int listed(const char *list, const char *name)
{
    char pat[48];
    snprintf(pat, sizeof pat, ",%s,", name);
    return strstr(list, pat) != NULL;
}

/* Each name exactly once. */
static void listed_once(const char *list, const char *name, const char *what)
{
    char pat[48];
    snprintf(pat, sizeof pat, ",%s,", name);
    const char *a = strstr(list, pat);
    IT_CHECK(a != NULL, "%s: %s missing from %s", what, name, list);
    IT_CHECK(strstr(a + 1, pat) == NULL, "%s: %s listed twice in %s", what, name, list);
}

static tc_msg room_msg(const char *room, const char *body)
{
    tc_msg s;
    memset(&s, 0, sizeof s);
    s.kind = IMP_TARGET_ROOM;
    s.target = room;
    s.cls = -1;
    s.ack_mode = -1;
    s.body = body;
    s.body_len = strlen(body);
    return s;
}

static uint64_t room_send(tc *c, const char *room, const char *body)
{
    tc_msg s = room_msg(room, body);
    tc_ack a;
    int r = tc_send(c, &s, &a, T);
    IT_CHECK(r == 0, "SEND to room %s: %d", room, r);
    IT_CHECK(a.outcome == IMP_OUTCOME_STORED, "SEND to room %s: OUTCOME %d CODE %d", room,
             a.outcome, a.code);
    return a.msg_id;
}

static tc_frame *room_deliver(tc *c, const char *room, const char *who)
{
    tc_frame *f = tc_wait(c, IMP_DELIVER, 0, T);
    char d[512];
    IT_CHECK(f != NULL, "%s: no DELIVER: %s", who, tc_describe(c, d, sizeof d));
    IT_EQ(imp_msg_u(&f->m, IMP_T_TARGET_KIND, 0), IMP_TARGET_ROOM);
    IT_CHECK(tc_field_is(&f->m, IMP_T_TARGET, room), "%s: room DELIVER with another TARGET", who);
    return f;
}

static void test_rooms(void **state)
{
    (void)state;
    imd_proc *p = it_start_imd(NULL);
    long pid = (long)p->pid;
    tc *alice = it_register(p->port, "alice", "alice password", NULL);
    tc *alice2 = it_login(p->port, "alice", "alice password", NULL);
    tc *bob = it_register(p->port, "bob", "bob password", NULL);
    tc *carol = it_register(p->port, "carol", "carol password", NULL);
    tc *dave = it_register(p->port, "dave", "dave password", NULL);

    /* JOIN creates the room; joining twice is not an error; names are folded. */
    room_req(alice, IMP_JOIN, "Lobby", "alice JOIN Lobby");
    room_req(alice, IMP_JOIN, "lobby", "alice JOIN lobby again");
    room_req(bob, IMP_JOIN, "lobby", "bob JOIN");
    room_req(carol, IMP_JOIN, "LOBBY", "carol JOIN");
    room_req(alice, IMP_JOIN, "kitchen", "alice JOIN kitchen");
    room_req(bob, IMP_JOIN, "garden", "bob JOIN garden");

    /* MEMBERS, one name per page: every member exactly once (section 5.4 paging). */
    char list[2048];
    int pages;
    int n = page_all(dave, IMP_MEMBERS, "lobby", 1, list, sizeof list, &pages);
    IT_EQ(n, 3);
    IT_CHECK(pages >= 3, "3 members in %d pages of 1", pages);
    listed_once(list, "alice", "MEMBERS");
    listed_once(list, "bob", "MEMBERS");
    listed_once(list, "carol", "MEMBERS");
    /* ROOMS, two per page. */
    n = page_all(dave, IMP_ROOMS, NULL, 2, list, sizeof list, &pages);
    IT_EQ(n, 3);
    listed_once(list, "lobby", "ROOMS");
    listed_once(list, "kitchen", "ROOMS");
    listed_once(list, "garden", "ROOMS");

    /* A room message reaches the online members and the sender's other session. */
    uint64_t id1 = room_send(alice, "lobby", "hello room");
    tc *rcpt[3] = {alice2, bob, carol};
    const char *who[3] = {"alice's other session", "bob", "carol"};
    for (int i = 0; i < 3; i++) {
        tc_frame *f = room_deliver(rcpt[i], "lobby", who[i]);
        IT_EQ(imp_msg_u(&f->m, IMP_T_MSG_ID, 0), id1);
        IT_CHECK(tc_field_is(&f->m, IMP_T_SENDER, "alice"), "%s: SENDER", who[i]);
        IT_CHECK(tc_field_is(&f->m, IMP_T_BODY, "hello room"), "%s: BODY", who[i]);
        tc_delivered(rcpt[i], imp_msg_u(&f->m, IMP_T_SEQ, 0));
        tc_frame_free(f);
    }

    /* Not a member: NOT_MEMBER (503), and nothing reaches the members. */
    tc_msg s = room_msg("lobby", "intruder");
    tc_ack a;
    IT_EQ(tc_send(dave, &s, &a, T), 0);
    IT_CHECK(a.outcome == IMP_OUTCOME_REFUSED && a.code == 503,
             "ACK OUTCOME %d CODE %d, want "
             "refused 503",
             a.outcome, a.code);

    /* An offline member gets the room's messages on login, in the room's order. */
    tc_close(carol);
    uint64_t id2 = room_send(alice, "lobby", "while carol is away 1");
    uint64_t id3 = room_send(bob, "lobby", "while carol is away 2");
    IT_CHECK(id3 > id2 && id2 > id1, "room MSG_IDs not ascending");
    carol = it_login(p->port, "carol", "carol password", NULL);
    tc_frame *f = room_deliver(carol, "lobby", "carol after login");
    IT_EQ(imp_msg_u(&f->m, IMP_T_MSG_ID, 0), id2);
    tc_frame_free(f);
    f = room_deliver(carol, "lobby", "carol after login");
    IT_EQ(imp_msg_u(&f->m, IMP_T_MSG_ID, 0), id3);
    tc_delivered(carol, imp_msg_u(&f->m, IMP_T_SEQ, 0));
    tc_frame_free(f);
    f = tc_wait(carol, IMP_DELIVER, 0, 300);
    IT_CHECK(f == NULL, "carol: the intruder's or an extra message was delivered");
    /* alice's other session got both (IMP-DELIV-008); drain bob's copies. */
    for (int k = 0; k < 2; k++) {
        f = room_deliver(alice2, "lobby", "alice2");
        IT_EQ(imp_msg_u(&f->m, IMP_T_MSG_ID, 0), k ? id3 : id2);
        tc_delivered(alice2, imp_msg_u(&f->m, IMP_T_SEQ, 0));
        tc_frame_free(f);
    }
    while ((f = tc_wait(bob, IMP_DELIVER, 0, 300)) != NULL) {
        tc_delivered(bob, imp_msg_u(&f->m, IMP_T_SEQ, 0));
        tc_frame_free(f);
    }

    /* One order for every member (IMP-DELIV-006): alice and bob pipeline ten messages each;
     * alice's other session and carol see the same sequence, MSG_ID ascending. */
    enum { N = 10 };
    uint32_t reqs_a[N], reqs_b[N];
    for (int i = 0; i < N; i++) {
        char body[32];
        imp_msg m;
        snprintf(body, sizeof body, "a%d", i);
        tc_msg sa = room_msg("lobby", body);
        tc_build_send(&sa, &m);
        reqs_a[i] = tc_request(alice, &m);
        snprintf(body, sizeof body, "b%d", i);
        tc_msg sb = room_msg("lobby", body);
        tc_build_send(&sb, &m);
        reqs_b[i] = tc_request(bob, &m);
    }
    for (int i = 0; i < N; i++) {
        tc_ack x;
        IT_EQ(tc_wait_ack(alice, reqs_a[i], &x, T), 0);
        IT_EQ(x.outcome, IMP_OUTCOME_STORED);
        IT_EQ(tc_wait_ack(bob, reqs_b[i], &x, T), 0);
        IT_EQ(x.outcome, IMP_OUTCOME_STORED);
    }
    uint64_t seen[2][2 * N];
    tc *obs[2] = {alice2, carol};
    for (int o = 0; o < 2; o++)
        for (int i = 0; i < 2 * N; i++) {
            tc_frame *g = room_deliver(obs[o], "lobby", o ? "carol" : "alice2");
            seen[o][i] = imp_msg_u(&g->m, IMP_T_MSG_ID, 0);
            if (i > 0)
                IT_CHECK(seen[o][i] > seen[o][i - 1], "room order: MSG_ID %llu after %llu",
                         (unsigned long long)seen[o][i], (unsigned long long)seen[o][i - 1]);
            tc_delivered(obs[o], imp_msg_u(&g->m, IMP_T_SEQ, 0));
            tc_frame_free(g);
        }
    IT_CHECK(memcmp(seen[0], seen[1], sizeof seen[0]) == 0, "members saw different orders");

    /* LEAVE: no more room messages, and sending is NOT_MEMBER. */
    room_req(carol, IMP_LEAVE, "lobby", "carol LEAVE");
    while ((f = tc_wait(bob, IMP_DELIVER, 0, 200)) != NULL) /* bob's copies of the above */
        tc_frame_free(f);
    room_send(bob, "lobby", "after carol left");
    f = tc_wait(carol, IMP_DELIVER, 0, 400);
    IT_CHECK(f == NULL, "carol got a room message after LEAVE");
    s = room_msg("lobby", "carol again");
    IT_EQ(tc_send(carol, &s, &a, T), 0);
    IT_CHECK(a.outcome == IMP_OUTCOME_REFUSED && a.code == 503,
             "after LEAVE: OUTCOME %d CODE "
             "%d, want refused 503",
             a.outcome, a.code);
    n = page_all(dave, IMP_MEMBERS, "lobby", 10, list, sizeof list, &pages);
    IT_EQ(n, 2);
    IT_CHECK(!listed(list, "carol"), "carol still a member after LEAVE: %s", list);

    tc_close(alice);
    tc_close(alice2);
    tc_close(bob);
    tc_close(carol);
    tc_close(dave);
    it_liveness(p, pid, NULL, NULL, NULL, NULL);
    it_finish(p);
}

/* HISTORY: collect the HISTORY_ITEMs answering req, then the OK. */
static int history(tc *c, const char *room, uint32_t limit, uint64_t before, uint64_t *ids,
                   char bodies[][16], int max, int *more, int *count)
{
    imp_msg m;
    imp_msg_init(&m, IMP_HISTORY, 0);
    imp_msg_set_s(&m, IMP_T_ROOM, room);
    if (limit)
        imp_msg_set_u(&m, IMP_T_LIMIT, limit);
    if (before)
        imp_msg_set_u(&m, IMP_T_BEFORE_ID, before);
    uint32_t req = tc_request(c, &m);
    IT_CHECK(req != 0, "HISTORY not sent");
    int n = 0;
    for (;;) {
        tc_frame *f = tc_wait_reply(c, req, T);
        char d[512];
        IT_CHECK(f != NULL, "HISTORY: no answer: %s", tc_describe(c, d, sizeof d));
        if (f->m.type == IMP_OK) {
            *more = (int)imp_msg_u(&f->m, IMP_T_MORE, 0);
            *count = (int)imp_msg_u(&f->m, IMP_T_COUNT, 9999);
            tc_frame_free(f);
            return n;
        }
        IT_CHECK(f->m.type == IMP_HISTORY_ITEM, "HISTORY answered by %s (code %d)",
                 imp_type_name(f->m.type), (int)imp_msg_u(&f->m, IMP_T_CODE, 0));
        IT_CHECK(n < max, "too many HISTORY_ITEMs");
        IT_CHECK(tc_field_is(&f->m, IMP_T_ROOM, room), "HISTORY_ITEM of another ROOM");
        IT_CHECK(tc_field_is(&f->m, IMP_T_SENDER, "alice"), "HISTORY_ITEM SENDER");
        IT_CHECK(imp_msg_u(&f->m, IMP_T_TIMESTAMP, 0) > 0, "HISTORY_ITEM TIMESTAMP 0");
        ids[n] = imp_msg_u(&f->m, IMP_T_MSG_ID, 0);
        tc_str(&f->m, IMP_T_BODY, bodies[n], 16);
        n++;
        tc_frame_free(f);
    }
}

static void test_history(void **state)
{
    (void)state;
    imd_proc *p = it_start_imd(NULL);
    long pid = (long)p->pid;
    tc *alice = it_register(p->port, "alice", "alice password", NULL);
    room_req(alice, IMP_JOIN, "hist", "JOIN hist");
    uint64_t id[6];
    for (int i = 1; i <= 5; i++) {
        char body[16];
        snprintf(body, sizeof body, "h%d", i);
        id[i] = room_send(alice, "hist", body);
    }
    /* Newest first, LIMIT 2, MORE 1 (section 5.4). */
    uint64_t ids[16];
    char bodies[16][16];
    int more, count;
    int n = history(alice, "hist", 2, 0, ids, bodies, 16, &more, &count);
    IT_EQ(n, 2);
    IT_EQ(count, 2);
    IT_EQ(more, 1);
    IT_EQ(ids[0], id[5]);
    IT_EQ(ids[1], id[4]);
    IT_CHECK(strcmp(bodies[0], "h5") == 0 && strcmp(bodies[1], "h4") == 0, "bodies %s %s",
             bodies[0], bodies[1]);
    /* BEFORE_ID continues below the oldest seen; the rest, no MORE. */
    n = history(alice, "hist", 10, ids[1], ids, bodies, 16, &more, &count);
    IT_EQ(n, 3);
    IT_EQ(count, 3);
    IT_EQ(more, 0);
    IT_EQ(ids[0], id[3]);
    IT_EQ(ids[1], id[2]);
    IT_EQ(ids[2], id[1]);
    IT_CHECK(strcmp(bodies[2], "h1") == 0, "oldest body %s", bodies[2]);
    /* Without LIMIT: all five. */
    n = history(alice, "hist", 0, 0, ids, bodies, 16, &more, &count);
    IT_EQ(n, 5);
    IT_EQ(more, 0);
    /* Not a member: no history (NOT_MEMBER: imd's documented choice in server/rooms.c, as
     * HISTORY carries bodies; SPEC.md 5.4 is silent). */
    tc *eve = it_register(p->port, "eve", "eve password", NULL);
    imp_msg m;
    imp_msg_init(&m, IMP_HISTORY, 0);
    imp_msg_set_s(&m, IMP_T_ROOM, "hist");
    uint32_t req = tc_request(eve, &m);
    tc_frame *f = tc_wait_reply(eve, req, T);
    IT_CHECK(f != NULL && f->m.type == IMP_ERROR && imp_msg_u(&f->m, IMP_T_CODE, 0) == 503,
             "HISTORY by a non-member: %s (code %d), want ERROR NOT_MEMBER",
             f ? imp_type_name(f->m.type) : "nothing",
             f ? (int)imp_msg_u(&f->m, IMP_T_CODE, 0) : 0);
    tc_frame_free(f);
    tc_close(eve);
    tc_close(alice);
    it_liveness(p, pid, NULL, NULL, NULL, NULL);
    it_finish(p);

    /* room_history keeps the newest messages only (section 9, IMP-DELIV-008). */
    static const char *const args[] = {"--set", "room_history=3", NULL};
    p = it_start_imd(args);
    pid = (long)p->pid;
    alice = it_register(p->port, "alice", "alice password", NULL);
    room_req(alice, IMP_JOIN, "short", "JOIN short");
    for (int i = 1; i <= 5; i++) {
        char body[16];
        snprintf(body, sizeof body, "h%d", i);
        id[i] = room_send(alice, "short", body);
    }
    n = history(alice, "short", 0, 0, ids, bodies, 16, &more, &count);
    IT_EQ(n, 3);
    IT_EQ(more, 0);
    IT_EQ(ids[0], id[5]);
    IT_EQ(ids[2], id[3]);
    tc_close(alice);
    it_liveness(p, pid, NULL, NULL, NULL, NULL);
    it_finish(p);
}

/* Wait for a PRESENCE_EVENT about user with status (-1: any) and sessions (-1: any). */
static void wait_presence(tc *c, const char *user, int status, int sessions, const char *what)
{
    uint64_t deadline = it_now_ms() + T;
    char seen[1024] = "";
    while (it_now_ms() < deadline) {
        tc_frame *f = tc_wait(c, IMP_PRESENCE_EVENT, 0, 200);
        if (!f)
            continue;
        int st = (int)imp_msg_u(&f->m, IMP_T_STATUS, 99);
        int se = (int)imp_msg_u(&f->m, IMP_T_SESSIONS, 0);
        int has_se = imp_msg_has(&f->m, IMP_T_SESSIONS);
        char u[40];
        tc_str(&f->m, IMP_T_USER, u, sizeof u);
        size_t l = strlen(seen);
        snprintf(seen + l, sizeof seen - l, " [%s status %d sessions %d%s]", u, st, se,
                 has_se ? "" : "(absent)");
        int ok = strcmp(u, user) == 0 && (status < 0 || st == status) &&
                 (sessions < 0 || (se == sessions && (has_se || sessions == 0)));
        tc_frame_free(f);
        if (ok)
            return;
    }
    IT_CHECK(0, "%s: no PRESENCE_EVENT %s status %d sessions %d; seen:%s", what, user, status,
             sessions, seen);
}

static void test_presence(void **state)
{
    (void)state;
    imd_proc *p = it_create_imd(NULL);
    static const char *const add_root[] = {"user", "add", "root", "--admin", NULL};
    IT_EQ(it_admin(p, "root password\n", NULL, 0, add_root), 0);
    it_start(p);
    long pid = (long)p->pid;

    tc_close(it_register(p->port, "alice", "alice password", NULL));
    tc *bob = it_register(p->port, "bob", "bob password", NULL);

    /* bob subscribes to alice (offline). */
    uint8_t nb[64];
    imp_builder b;
    imp_builder_init(&b, nb, sizeof nb);
    IT_EQ(imp_names_add(&b, "alice", 5), 0);
    imp_msg m;
    imp_msg_init(&m, IMP_SUBSCRIBE, 0);
    imp_msg_set_b(&m, IMP_T_NAMES, nb, b.len);
    expect_ok(bob, &m, "SUBSCRIBE alice");

    /* alice's first session: online, 1 session. */
    tc *a1 = it_login(p->port, "alice", "alice password", NULL);
    wait_presence(bob, "alice", IMP_STATUS_ONLINE, 1, "first session");
    /* A second session (SPEC.md 5.5 does not say whether the count change alone is an event:
     * the count is checked on the next status change). */
    tc *a2 = it_login(p->port, "alice", "alice password", NULL);

    /* PRESENCE away with a text, from one session: SESSIONS counts both. */
    imp_msg_init(&m, IMP_PRESENCE, 0);
    imp_msg_set_u(&m, IMP_T_STATUS, IMP_STATUS_AWAY);
    imp_msg_set_s(&m, IMP_T_STATUS_TEXT, "lunch");
    expect_ok(a1, &m, "PRESENCE away");
    wait_presence(bob, "alice", IMP_STATUS_AWAY, 2, "away with two sessions");

    /* WHO, one per page: the online users bob and alice, once each (alice has 2 sessions). */
    char list[1024];
    int pages;
    int n = page_all(bob, IMP_WHO, NULL, 1, list, sizeof list, &pages);
    listed_once(list, "alice", "WHO");
    listed_once(list, "bob", "WHO");
    IT_EQ(n, 2);

    /* One session ends: the next status change counts 1; the last one ends: offline. */
    tc_close(a2);
    it_sleep_ms(200); /* let imd see the close before the next PRESENCE */
    imp_msg_init(&m, IMP_PRESENCE, 0);
    imp_msg_set_u(&m, IMP_T_STATUS, IMP_STATUS_BUSY);
    expect_ok(a1, &m, "PRESENCE busy");
    wait_presence(bob, "alice", IMP_STATUS_BUSY, 1, "busy with one session left");
    tc_close(a1);
    wait_presence(bob, "alice", IMP_STATUS_OFFLINE, 0, "last session closed");
    n = page_all(bob, IMP_WHO, NULL, 10, list, sizeof list, &pages);
    IT_CHECK(!listed(list, "alice"), "WHO lists offline alice: %s", list);
    IT_EQ(n, 1);

    /* SUBSCRIBE ENABLE 0 stops the events. */
    imp_msg_init(&m, IMP_SUBSCRIBE, 0);
    imp_msg_set_b(&m, IMP_T_NAMES, nb, b.len);
    imp_msg_set_u(&m, IMP_T_ENABLE, 0);
    expect_ok(bob, &m, "SUBSCRIBE ENABLE 0");
    a1 = it_login(p->port, "alice", "alice password", NULL);
    tc_frame *f = tc_wait(bob, IMP_PRESENCE_EVENT, 0, 500);
    IT_CHECK(f == NULL, "PRESENCE_EVENT after unsubscribing");

    /* STATS: FORBIDDEN (502, not fatal) for alice; STATS_REPLY for root. */
    imp_msg_init(&m, IMP_STATS, 0);
    expect_error(a1, &m, 502, "STATS by a non-administrator");
    uint32_t req = tc_simple(a1, IMP_PING);
    f = tc_wait(a1, IMP_PONG, req, T);
    IT_CHECK(f != NULL, "connection unusable after FORBIDDEN");
    tc_frame_free(f);
    tc *root = it_login(p->port, "root", "root password", NULL);
    req = tc_simple(root, IMP_STATS);
    f = tc_wait_reply(root, req, T);
    char d[512];
    IT_CHECK(f != NULL, "STATS: no answer: %s", tc_describe(root, d, sizeof d));
    IT_CHECK(f->m.type == IMP_STATS_REPLY, "STATS answered by %s (code %d)",
             imp_type_name(f->m.type), (int)imp_msg_u(&f->m, IMP_T_CODE, 0));
    imp_bytes rest = imp_msg_b(&f->m, IMP_T_STATS), name;
    uint64_t v;
    int entries = 0;
    while (imp_stats_next(&rest, &name, &v) == 1)
        entries++;
    IT_CHECK(entries > 0, "STATS_REPLY with no counters");
    it_note("STATS_REPLY: %d counters", entries);
    tc_frame_free(f);

    /* MONITOR: FORBIDDEN for alice; root gets MONITOR_EVENTs (server-initiated, request id
     * 0) for what happens, e.g. a login. */
    imp_msg_init(&m, IMP_MONITOR, 0);
    imp_msg_set_u(&m, IMP_T_ENABLE, 1);
    expect_error(a1, &m, 502, "MONITOR by a non-administrator");
    imp_msg_init(&m, IMP_MONITOR, 0);
    imp_msg_set_u(&m, IMP_T_ENABLE, 1);
    expect_ok(root, &m, "MONITOR ENABLE 1");
    tc_close(it_login(p->port, "alice", "alice password", NULL));
    f = tc_wait(root, IMP_MONITOR_EVENT, 0, T);
    IT_CHECK(f != NULL, "no MONITOR_EVENT after a login: %s", tc_describe(root, d, sizeof d));
    IT_EQ(f->m.request_id, 0);
    IT_CHECK(imp_msg_u(&f->m, IMP_T_TIMESTAMP, 0) > 0, "MONITOR_EVENT TIMESTAMP");
    tc_frame_free(f);

    tc_close(root);
    tc_close(a1);
    tc_close(bob);
    it_liveness(p, pid, NULL, NULL, NULL, NULL);
    it_finish(p);
}

static void test_metrics(void **state)
{
    (void)state;
    /* --metrics with port 0, like --listen: imd prints "imd: metrics on HOST:PORT". */
    static const char *const args[] = {"--metrics", "127.0.0.1:0", NULL};
    imd_proc *p = it_start_imd(args);
    long pid = (long)p->pid;
    IT_CHECK(p->metrics_port > 0, "no 'imd: metrics on' line");
    IT_CHECK(p->metrics_port != p->port, "metrics on the client port");
    tc_close(it_register(p->port, "meter", "meter password", NULL));
    /* GET /metrics answers 200 with a non-empty body (Prometheus text format). */
    static char http[65536];
    int hn = it_http_get(p->metrics_port, "/metrics", http, sizeof http);
    IT_CHECK(hn > 0, "GET /metrics: no answer");
    IT_CHECK(strncmp(http, "HTTP/1.", 7) == 0 && strncmp(http + 8, " 200", 4) == 0,
             "GET /metrics: %.60s", http);
    const char *body = strstr(http, "\r\n\r\n");
    IT_CHECK(body && strlen(body + 4) > 0, "GET /metrics: empty body");
    it_liveness(p, pid, NULL, NULL, NULL, NULL);
    it_finish(p);
}

int main(void)
{
    it_main_init(120);
    if (!it_imd_or_skip())
        return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_rooms, it_teardown),
        cmocka_unit_test_teardown(test_history, it_teardown),
        cmocka_unit_test_teardown(test_presence, it_teardown),
        cmocka_unit_test_teardown(test_metrics, it_teardown),
    };
    return cmocka_run_group_tests_name("integration: rooms and presence", tests, NULL, NULL);
}
