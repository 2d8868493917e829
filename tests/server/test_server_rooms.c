/* Unit tests for the server core: rooms (rooms.c, IMP-DELIV-008), broadcast, presence and WHO
 * (presence.c), STATS and MONITOR (server.c). Real store, real hashing, real libimp clients
 * (server_harness.h).
 */
#include "server_harness.h"
#include "core.h" /* IMS_ROOM_CACHE_MS */

static void make_admin(th *h, const char *name)
{
    ims_user u;
    assert_int_equal(ims_store_user_get(h->store, name, &u), 0);
    assert_int_equal(ims_store_begin(h->store), 0);
    assert_int_equal(ims_store_user_set_admin(h->store, u.id, 1), 0);
    assert_int_equal(ims_store_commit(h->store), 0);
}

/* The next frame that is not a PRESENCE_EVENT. */
static int next_non_presence(tc *t, imp_msg *m)
{
    int r;
    while ((r = tc_next(t, m)) == 1 && m->type == IMP_PRESENCE_EVENT)
        ;
    return r;
}

static void test_rooms(void **state)
{
    (void)state;
    th *h = h_new();
    h->cfg.page_size = 2;
    h_start_cfg(h);
    tc *a = tc_user(h, "alice", 1);
    tc *b = tc_user(h, "bob", 1);
    tc *c = tc_user(h, "carol", 1);
    tc *d = tc_user(h, "dave", 1);
    turn(h);
    tc_join(a, "Lobby");
    tc_join(b, "lobby");
    tc_join(c, "lobby");
    tc_join(c, "lobby"); /* twice is not an error */
    tc_join(a, "attic");
    imp_msg m;
    char buf[256];
    /* MEMBERS: pages of page_size, CURSOR and MORE */
    tc_room_req(d, IMP_MEMBERS, "lobby");
    assert_int_equal(next_non_presence(d, &m), 1);
    assert_int_equal(m.type, IMP_MEMBER_LIST);
    assert_string_equal(names_str(imp_msg_b(&m, IMP_T_NAMES), buf, sizeof buf), "alice,bob");
    assert_int_equal(imp_msg_u(&m, IMP_T_MORE, 0), 1);
    imp_bytes cur = imp_msg_b(&m, IMP_T_CURSOR);
    char cursor[65];
    memcpy(cursor, cur.p, cur.len);
    imp_msg q;
    imp_msg_init(&q, IMP_MEMBERS, 50);
    imp_msg_set_s(&q, IMP_T_ROOM, "lobby");
    imp_msg_set_b(&q, IMP_T_CURSOR, cursor, cur.len);
    tc_send(d, &q);
    assert_int_equal(next_non_presence(d, &m), 1);
    assert_string_equal(names_str(imp_msg_b(&m, IMP_T_NAMES), buf, sizeof buf), "carol");
    assert_false(imp_msg_has(&m, IMP_T_MORE));
    /* LIMIT */
    imp_msg_init(&q, IMP_MEMBERS, 51);
    imp_msg_set_s(&q, IMP_T_ROOM, "lobby");
    imp_msg_set_u(&q, IMP_T_LIMIT, 3);
    tc_send(d, &q);
    assert_int_equal(next_non_presence(d, &m), 1);
    assert_string_equal(names_str(imp_msg_b(&m, IMP_T_NAMES), buf, sizeof buf), "alice,bob,carol");
    /* ROOMS */
    imp_msg_init(&q, IMP_ROOMS, 52);
    tc_send(d, &q);
    assert_int_equal(next_non_presence(d, &m), 1);
    assert_int_equal(m.type, IMP_ROOM_LIST);
    assert_string_equal(names_str(imp_msg_b(&m, IMP_T_NAMES), buf, sizeof buf), "attic,lobby");
    /* errors answer the request, the connection stays */
    tc_room_req(d, IMP_MEMBERS, "nowhere");
    assert_int_equal(next_non_presence(d, &m), 1);
    assert_int_equal(imp_msg_u(&m, IMP_T_CODE, 0), 501);
    tc_room_req(d, IMP_LEAVE, "lobby");
    assert_int_equal(next_non_presence(d, &m), 1);
    assert_int_equal(imp_msg_u(&m, IMP_T_CODE, 0), 503);
    uint32_t r = tc_sendmsg(d, IMP_TARGET_ROOM, "lobby", NULL, "let me in", -1, -1);
    uint32_t r2 = tc_sendmsg(d, IMP_TARGET_ROOM, "nowhere", NULL, "x", -1, -1);
    turn(h);
    assert_int_equal(next_non_presence(d, &m), 1);
    assert_int_equal(imp_msg_u(&m, IMP_T_CODE, 0), 503);
    assert_int_equal(m.request_id, r);
    assert_int_equal(next_non_presence(d, &m), 1);
    assert_int_equal(imp_msg_u(&m, IMP_T_CODE, 0), 501);
    assert_int_equal(m.request_id, r2);
    tc_room_req(d, IMP_HISTORY, "lobby");
    assert_int_equal(next_non_presence(d, &m), 1);
    assert_int_equal(imp_msg_u(&m, IMP_T_CODE, 0), 503);

    /* IMP-DELIV-008: carol is offline; the message is queued for her too, and for alice's own
     * user (every session of the sender, the sending one included) */
    tc_close(c);
    while (next_non_presence(a, &m) == 1)
        ;
    while (next_non_presence(b, &m) == 1)
        ;
    r = tc_sendmsg(a, IMP_TARGET_ROOM, "LOBBY", NULL, "hello room", -1, -1);
    turn(h);
    uint64_t id = tc_ack(a, r, IMP_OUTCOME_STORED, 0);
    tc_expect(b, IMP_DELIVER, &m);
    assert_int_equal(imp_msg_u(&m, IMP_T_TARGET_KIND, 0), IMP_TARGET_ROOM);
    assert_true(bytes_is(imp_msg_b(&m, IMP_T_TARGET), "lobby"));
    assert_true(bytes_is(imp_msg_b(&m, IMP_T_SENDER), "alice"));
    assert_int_equal(imp_msg_u(&m, IMP_T_MSG_ID, 0), id);
    assert_int_equal(imp_msg_u(&m, IMP_T_SEQ, 0), 1);
    assert_int_equal(tc_deliver(a, 1, "hello room"), id);
    r = tc_sendmsg(b, IMP_TARGET_ROOM, "lobby", NULL, "second", -1, -1);
    turn(h);
    uint64_t id2 = tc_ack(b, r, IMP_OUTCOME_STORED, 0);
    assert_true(id2 > id); /* IMP-DELIV-006: the room's order */
    c = tc_user(h, "carol", 0);
    assert_int_equal(tc_deliver(c, 1, "hello room"), id);
    assert_int_equal(tc_deliver(c, 2, "second"), id2);
    /* a transient room message: online members, not the sending session, never stored */
    tc_deliver(a, 2, "second");
    tc_deliver(b, 2, "second"); /* the sending session gets its own copy (its seq) */
    tc_sendmsg(b, IMP_TARGET_ROOM, "lobby", NULL, "typing", IMP_CLASS_TRANSIENT, 0);
    assert_int_equal(next_non_presence(b, &m), 0);
    assert_int_equal(next_non_presence(a, &m), 1);
    assert_int_equal(m.type, IMP_DELIVER);
    assert_int_equal(imp_msg_u(&m, IMP_T_SEQ, 99), 0);
    assert_int_equal(next_non_presence(c, &m), 1);
    assert_int_equal(m.type, IMP_DELIVER);
    assert_true(bytes_is(imp_msg_b(&m, IMP_T_BODY), "typing"));
    turn(h);
    /* HISTORY: newest first, then OK with COUNT and MORE */
    imp_msg_init(&q, IMP_HISTORY, 60);
    imp_msg_set_s(&q, IMP_T_ROOM, "lobby");
    imp_msg_set_u(&q, IMP_T_LIMIT, 1);
    tc_send(c, &q);
    assert_int_equal(next_non_presence(c, &m), 1);
    assert_int_equal(m.type, IMP_HISTORY_ITEM);
    assert_int_equal(imp_msg_u(&m, IMP_T_MSG_ID, 0), id2);
    assert_true(bytes_is(imp_msg_b(&m, IMP_T_ROOM), "lobby"));
    assert_true(bytes_is(imp_msg_b(&m, IMP_T_SENDER), "bob"));
    assert_int_equal(next_non_presence(c, &m), 1);
    assert_int_equal(m.type, IMP_OK);
    assert_int_equal(imp_msg_u(&m, IMP_T_COUNT, 0), 1);
    assert_int_equal(imp_msg_u(&m, IMP_T_MORE, 0), 1);
    imp_msg_init(&q, IMP_HISTORY, 61);
    imp_msg_set_s(&q, IMP_T_ROOM, "lobby");
    imp_msg_set_u(&q, IMP_T_BEFORE_ID, id2);
    tc_send(c, &q);
    assert_int_equal(next_non_presence(c, &m), 1);
    assert_int_equal(imp_msg_u(&m, IMP_T_MSG_ID, 0), id);
    assert_true(bytes_is(imp_msg_b(&m, IMP_T_BODY), "hello room"));
    assert_int_equal(next_non_presence(c, &m), 1);
    assert_int_equal(m.type, IMP_OK);
    assert_int_equal(imp_msg_u(&m, IMP_T_COUNT, 0), 1);
    assert_false(imp_msg_has(&m, IMP_T_MORE));
    /* LEAVE: no more messages, sending refused */
    tc_room_req(b, IMP_LEAVE, "lobby");
    turn(h);
    while (next_non_presence(b, &m) == 1 && m.type != IMP_OK)
        ;
    assert_int_equal(m.type, IMP_OK);
    r = tc_sendmsg(b, IMP_TARGET_ROOM, "lobby", NULL, "bye", -1, -1);
    turn(h);
    tc_ack(b, r, IMP_OUTCOME_REFUSED, 503);
    tc_close(a);
    tc_close(b);
    tc_close(c);
    tc_close(d);
    h_free(h);
}

/* The next non-PRESENCE frame must be a transient room DELIVER from alice in "den" with this
 * body; returns its MSG_ID. */
static uint64_t expect_transient(tc *t, const char *kind_target, int kind, const char *body)
{
    imp_msg m;
    assert_int_equal(next_non_presence(t, &m), 1);
    assert_int_equal(m.type, IMP_DELIVER);
    assert_int_equal(m.request_id, 0);
    assert_int_equal(imp_msg_u(&m, IMP_T_TARGET_KIND, 0), kind);
    assert_true(bytes_is(imp_msg_b(&m, IMP_T_TARGET), kind_target));
    assert_true(bytes_is(imp_msg_b(&m, IMP_T_SENDER), "alice"));
    assert_int_equal(imp_msg_u(&m, IMP_T_CLASS, 0), IMP_CLASS_TRANSIENT);
    assert_int_equal(imp_msg_u(&m, IMP_T_SEQ, 99), 0); /* IMP-DELIV-002 */
    if (!bytes_is(imp_msg_b(&m, IMP_T_BODY), body))
        fail_msg("DELIVER body is not \"%s\"", body);
    uint64_t id = imp_msg_u(&m, IMP_T_MSG_ID, 0);
    assert_true(id >> 63); /* a transient id */
    return id;
}

/* Issue 3 (room fan-out, each transient DELIVER encoded once per message and copied to every
 * recipient): every online session of every member but the sending one gets each message once,
 * in order, with that message's own body and id (consecutive messages, a direct message in
 * between, and a second session of the sender); a non-member gets nothing; a session over the
 * soft cap drops it (counted) while the others still get it. */
static void test_transient_room_fanout(void **state)
{
    (void)state;
    th *h = h_new();
    h_start_cfg(h);
    tc *a = tc_user(h, "alice", 1);
    tc *a2 = tc_user(h, "alice", 0);
    tc *b1 = tc_user(h, "bob", 1);
    tc *b2 = tc_user(h, "bob", 0);
    tc *c = tc_user(h, "carol", 1);
    tc *d = tc_user(h, "dave", 1);
    tc *e = tc_user(h, "eve", 1); /* online, not a member */
    tc *members[] = {a, b1, c, d};
    for (size_t i = 0; i < 4; i++)
        tc_join(members[i], "den");
    turn(h);
    tc *recv[] = {a2, b1, b2, c, d};
    imp_msg m;
    for (size_t i = 0; i < 5; i++)
        assert_int_equal(next_non_presence(recv[i], &m), 0);
    uint64_t before = st_get(h, "transient_delivered");

    tc_sendmsg(a, IMP_TARGET_ROOM, "Den", NULL, "one", IMP_CLASS_TRANSIENT, 0);
    tc_sendmsg(a, IMP_TARGET_ROOM, "den", NULL, "two, longer", IMP_CLASS_TRANSIENT, 0);
    tc_sendmsg(a, IMP_TARGET_USER, "bob", NULL, "direct", IMP_CLASS_TRANSIENT, 0);
    tc_sendmsg(a, IMP_TARGET_ROOM, "den", NULL, "3", IMP_CLASS_TRANSIENT, 0);
    uint64_t ids[5][3];
    for (size_t i = 0; i < 5; i++) {
        tc *t = recv[i];
        ids[i][0] = expect_transient(t, "den", IMP_TARGET_ROOM, "one");
        ids[i][1] = expect_transient(t, "den", IMP_TARGET_ROOM, "two, longer");
        if (t == b1 || t == b2)
            expect_transient(t, "bob", IMP_TARGET_USER, "direct");
        ids[i][2] = expect_transient(t, "den", IMP_TARGET_ROOM, "3");
        assert_int_equal(next_non_presence(t, &m), 0);
        assert_true(ids[i][0] < ids[i][1] && ids[i][1] < ids[i][2]);
        for (int k = 0; k < 3; k++)
            assert_int_equal(ids[i][k], ids[0][k]); /* one message, one id */
    }
    assert_int_equal(next_non_presence(a, &m), 0); /* not the sending session */
    assert_int_equal(next_non_presence(e, &m), 0);
    assert_int_equal(st_get(h, "transient_delivered") - before, 3 * 5 + 2);

    /* dave's output holds an unread DELIVER: over a small soft cap, he drops the next one */
    ims_cfg cfg = h->cfg;
    cfg.output_soft = 10;
    ims_server_reload(h->srv, &cfg, NULL, NULL);
    tc_sendmsg(a, IMP_TARGET_USER, "dave", NULL, "fill", -1, 0);
    turn(h);
    uint64_t dropped = st_get(h, "transient_dropped");
    tc_sendmsg(a, IMP_TARGET_ROOM, "den", NULL, "four", IMP_CLASS_TRANSIENT, 0);
    assert_int_equal(st_get(h, "transient_dropped") - dropped, 1);
    for (size_t i = 0; i < 4; i++) {
        expect_transient(recv[i], "den", IMP_TARGET_ROOM, "four");
        assert_int_equal(next_non_presence(recv[i], &m), 0);
    }
    tc_deliver(d, 1, "fill");
    assert_int_equal(next_non_presence(d, &m), 0);
    tc *all[] = {a, a2, b1, b2, c, d, e};
    for (size_t i = 0; i < 7; i++)
        tc_close(all[i]);
    h_free(h);
}

/* Transient room messages take their members from the server's room cache: a LEAVE or JOIN
 * through the server shows at once (the leaver gets nothing and is refused NOT_MEMBER, the
 * joiner gets the next one), a change made behind the server's back (another process on the
 * same store) within IMS_ROOM_CACHE_MS, an unknown room is NO_SUCH_ROOM. */
static void test_transient_room_members_cached(void **state)
{
    (void)state;
    th *h = h_new();
    h_start_cfg(h);
    tc *a = tc_user(h, "alice", 1);
    tc *b = tc_user(h, "bob", 1);
    tc *c = tc_user(h, "carol", 1);
    tc_join(a, "den");
    tc_join(b, "den");
    turn(h);
    imp_msg m;
    while (next_non_presence(a, &m) != 0 || next_non_presence(b, &m) != 0)
        ;
    tc_sendmsg(a, IMP_TARGET_ROOM, "den", NULL, "one", IMP_CLASS_TRANSIENT, 0);
    expect_transient(b, "den", IMP_TARGET_ROOM, "one");
    /* bob leaves: nothing more for him, and his own transient message is refused */
    tc_room_req(b, IMP_LEAVE, "den");
    turn(h);
    tc_expect(b, IMP_OK, &m);
    tc_sendmsg(a, IMP_TARGET_ROOM, "den", NULL, "two", IMP_CLASS_TRANSIENT, 0);
    uint32_t r = tc_sendmsg(b, IMP_TARGET_ROOM, "den", NULL, "me?", IMP_CLASS_TRANSIENT, -1);
    tc_ack(b, r, IMP_OUTCOME_REFUSED, IMP_ERR_NOT_MEMBER);
    assert_int_equal(next_non_presence(b, &m), 0);
    /* carol joins: she gets the next one at once */
    tc_join(c, "den");
    turn(h);
    tc_sendmsg(a, IMP_TARGET_ROOM, "den", NULL, "three", IMP_CLASS_TRANSIENT, 0);
    expect_transient(c, "den", IMP_TARGET_ROOM, "three");
    /* carol's membership goes behind the server's back: still served from the cache until
     * IMS_ROOM_CACHE_MS have passed, then read again */
    ims_user cu;
    assert_int_equal(ims_store_user_get(h->store, "carol", &cu), 0);
    assert_int_equal(ims_store_room_leave(h->store, "den", cu.id), 0);
    tc_sendmsg(a, IMP_TARGET_ROOM, "den", NULL, "four", IMP_CLASS_TRANSIENT, 0);
    expect_transient(c, "den", IMP_TARGET_ROOM, "four");
    h_tick(h, IMS_ROOM_CACHE_MS);
    while (next_non_presence(c, &m) != 0)
        ;
    tc_sendmsg(a, IMP_TARGET_ROOM, "den", NULL, "five", IMP_CLASS_TRANSIENT, 0);
    assert_int_equal(next_non_presence(c, &m), 0);
    /* a room that does not exist */
    r = tc_sendmsg(a, IMP_TARGET_ROOM, "nowhere", NULL, "x", IMP_CLASS_TRANSIENT, -1);
    tc_ack(a, r, IMP_OUTCOME_REFUSED, IMP_ERR_NO_SUCH_ROOM);
    tc_close(a);
    tc_close(b);
    tc_close(c);
    h_free(h);
}

static void test_room_history_pruned(void **state)
{
    (void)state;
    th *h = h_new();
    h->cfg.room_history = 3;
    h_start_cfg(h);
    tc *a = tc_user(h, "alice", 1);
    turn(h);
    tc_join(a, "r");
    for (int i = 0; i < 5; i++)
        tc_sendmsg(a, IMP_TARGET_ROOM, "r", NULL, "m", -1, IMP_ACK_NONE);
    turn(h);
    imp_msg m;
    while (tc_next(a, &m) == 1)
        ;
    tc_room_req(a, IMP_HISTORY, "r");
    int items = 0;
    while (tc_next(a, &m) == 1 && m.type == IMP_HISTORY_ITEM)
        items++;
    assert_int_equal(m.type, IMP_OK);
    assert_int_equal(items, 3);
    assert_int_equal(imp_msg_u(&m, IMP_T_COUNT, 0), 3);
    tc_close(a);
    h_free(h);
}

static void test_broadcast(void **state)
{
    (void)state;
    th *h = h_new();
    h_start_cfg(h);
    tc_close(tc_user(h, "root", 1));
    make_admin(h, "root");
    tc *b = tc_user(h, "bob", 1);
    tc_close(tc_user(h, "carol", 1));
    turn(h);
    uint32_t r = tc_sendmsg(b, IMP_TARGET_BROADCAST, NULL, NULL, "hi all", -1, -1);
    turn(h);
    tc_ack(b, r, IMP_OUTCOME_REFUSED, 502);
    tc *a = tc_open(h);
    imp_msg m;
    tc_auth(a, IMP_LOGIN, "root", PW, &m);
    assert_int_equal(m.type, IMP_AUTH_OK);
    assert_int_equal(imp_msg_u(&m, IMP_T_ADMIN, 0), 1);
    turn(h);
    r = tc_sendmsg(a, IMP_TARGET_BROADCAST, NULL, NULL, "maintenance", -1, -1);
    turn(h);
    tc_ack(a, r, IMP_OUTCOME_STORED, 0);
    tc_expect(b, IMP_DELIVER, &m);
    assert_int_equal(imp_msg_u(&m, IMP_T_TARGET_KIND, 0), IMP_TARGET_BROADCAST);
    assert_false(imp_msg_has(&m, IMP_T_TARGET));
    tc *c = tc_user(h, "carol", 0);
    tc_deliver(c, 1, "maintenance");
    /* transient broadcast: every online session but the sender's, nothing stored */
    tc_sendmsg(a, IMP_TARGET_BROADCAST, NULL, NULL, "blink", IMP_CLASS_TRANSIENT, 0);
    tc_expect(b, IMP_DELIVER, &m);
    assert_int_equal(imp_msg_u(&m, IMP_T_SEQ, 99), 0);
    assert_true(bytes_is(imp_msg_b(&m, IMP_T_BODY), "blink"));
    tc_expect(c, IMP_DELIVER, &m);
    assert_int_equal(imp_msg_u(&m, IMP_T_CLASS, 0), IMP_CLASS_TRANSIENT);
    turn(h);
    tc_deliver(a, 1, "maintenance"); /* root's own copy of the durable broadcast */
    tc_none(a);
    tc_close(a);
    tc_close(b);
    tc_close(c);
    h_free(h);
}

static void expect_presence(tc *t, const char *user, int status, int sessions)
{
    imp_msg m;
    tc_expect(t, IMP_PRESENCE_EVENT, &m);
    assert_true(bytes_is(imp_msg_b(&m, IMP_T_USER), user));
    assert_int_equal(imp_msg_u(&m, IMP_T_STATUS, 99), status);
    assert_int_equal(imp_msg_u(&m, IMP_T_SESSIONS, 99), sessions);
}

static void test_presence_and_who(void **state)
{
    (void)state;
    th *h = h_new();
    h_start_cfg(h);
    tc_close(tc_user(h, "bob", 1));
    tc *a = tc_user(h, "alice", 1);
    turn(h);
    imp_msg s, m;
    uint8_t names[64];
    imp_builder nb;
    imp_builder_init(&nb, names, sizeof names);
    imp_names_add(&nb, "Bob", 3);
    imp_msg_init(&s, IMP_SUBSCRIBE, 20);
    imp_msg_set_b(&s, IMP_T_NAMES, names, nb.len);
    tc_send(a, &s);
    tc_expect(a, IMP_OK, &m);
    expect_presence(a, "bob", IMP_STATUS_OFFLINE, 0);
    tc *b1 = tc_user(h, "bob", 0);
    expect_presence(a, "bob", IMP_STATUS_ONLINE, 1);
    tc *b2 = tc_user(h, "bob", 0);
    tc_none(a); /* a second session is not news */
    imp_msg p;
    imp_msg_init(&p, IMP_PRESENCE, 21);
    imp_msg_set_u(&p, IMP_T_STATUS, IMP_STATUS_AWAY);
    imp_msg_set_s(&p, IMP_T_STATUS_TEXT, "lunch");
    tc_send(b2, &p);
    tc_expect(b2, IMP_OK, &m);
    tc_expect(a, IMP_PRESENCE_EVENT, &m);
    assert_int_equal(imp_msg_u(&m, IMP_T_STATUS, 0), IMP_STATUS_AWAY);
    assert_true(bytes_is(imp_msg_b(&m, IMP_T_STATUS_TEXT), "lunch"));
    assert_int_equal(imp_msg_u(&m, IMP_T_SESSIONS, 0), 2);
    /* WHO: online users in name order, paged */
    imp_msg w;
    imp_msg_init(&w, IMP_WHO, 22);
    imp_msg_set_u(&w, IMP_T_LIMIT, 1);
    tc_send(b1, &w);
    tc_expect(b1, IMP_WHO_LIST, &m);
    char buf[128];
    assert_string_equal(names_str(imp_msg_b(&m, IMP_T_NAMES), buf, sizeof buf), "alice");
    assert_int_equal(imp_msg_u(&m, IMP_T_MORE, 0), 1);
    imp_bytes cur = imp_msg_b(&m, IMP_T_CURSOR);
    char cb[65];
    memcpy(cb, cur.p, cur.len);
    imp_msg_init(&w, IMP_WHO, 23);
    imp_msg_set_b(&w, IMP_T_CURSOR, cb, cur.len);
    tc_send(b1, &w);
    tc_expect(b1, IMP_WHO_LIST, &m);
    assert_string_equal(names_str(imp_msg_b(&m, IMP_T_NAMES), buf, sizeof buf), "bob");
    assert_false(imp_msg_has(&m, IMP_T_MORE));
    /* one session goes: still online; the last goes: offline */
    tc_close(b1);
    tc_none(a);
    tc_close(b2);
    expect_presence(a, "bob", IMP_STATUS_OFFLINE, 0);
    /* unsubscribe */
    imp_msg_set_u(&s, IMP_T_ENABLE, 0);
    tc_send(a, &s);
    tc_expect(a, IMP_OK, &m);
    b1 = tc_user(h, "bob", 0);
    tc_none(a);
    /* room peers get events without subscribing */
    tc_join(a, "r");
    tc_join(b1, "r");
    tc *b3 = tc_user(h, "carol", 1);
    tc_join(b3, "r");
    tc_close(b1);
    expect_presence(a, "bob", IMP_STATUS_OFFLINE, 0);
    expect_presence(b3, "bob", IMP_STATUS_OFFLINE, 0);
    tc_close(b3);
    tc_close(a);
    h_free(h);
}

static void test_stats_and_monitor(void **state)
{
    (void)state;
    th *h = h_new();
    h_start_cfg(h);
    tc_close(tc_user(h, "root", 1));
    make_admin(h, "root");
    tc *a = tc_user(h, "root", 0);
    tc *b = tc_user(h, "bob", 1);
    turn(h);
    imp_msg q, m;
    imp_msg_init(&q, IMP_STATS, 30);
    tc_send(b, &q);
    tc_expect_error(b, 502);
    imp_msg_init(&q, IMP_MONITOR, 31);
    imp_msg_set_u(&q, IMP_T_ENABLE, 1);
    tc_send(b, &q);
    tc_expect_error(b, 502);
    assert_false(ims_client_done(b->sc));

    imp_msg_init(&q, IMP_STATS, 32);
    tc_send(a, &q);
    tc_expect(a, IMP_STATS_REPLY, &m);
    imp_bytes list = imp_msg_b(&m, IMP_T_STATS), name;
    uint64_t v, logins = 0;
    int seen = 0;
    while (imp_stats_next(&list, &name, &v) == 1) {
        if (bytes_is(name, "logins_ok")) {
            logins = v;
            seen = 1;
        }
    }
    assert_true(seen);
    assert_int_equal(logins, 3);
    assert_true(imp_msg_has(&m, IMP_T_SERVER_TIME));

    imp_msg_init(&q, IMP_MONITOR, 33);
    imp_msg_set_u(&q, IMP_T_ENABLE, 1);
    tc_send(a, &q);
    tc_expect(a, IMP_OK, &m);
    tc_sendmsg(b, IMP_TARGET_USER, "root", NULL, "secret body", -1, IMP_ACK_NONE);
    tc_expect(a, IMP_MONITOR_EVENT, &m);
    assert_true(bytes_is(imp_msg_b(&m, IMP_T_EVENT), "send"));
    assert_true(bytes_is(imp_msg_b(&m, IMP_T_USER), "bob"));
    imp_bytes text = imp_msg_b(&m, IMP_T_TEXT);
    char t[600];
    memcpy(t, text.p, text.len);
    t[text.len] = '\0';
    assert_non_null(strstr(t, "root"));
    assert_null(strstr(t, "secret")); /* never bodies */
    tc *c = tc_open(h);
    tc_expect(a, IMP_MONITOR_EVENT, &m);
    assert_true(bytes_is(imp_msg_b(&m, IMP_T_EVENT), "connect"));
    tc_close(c);
    tc_close(b);
    tc_expect(a, IMP_MONITOR_EVENT, &m);
    assert_true(bytes_is(imp_msg_b(&m, IMP_T_EVENT), "close"));
    assert_true(bytes_is(imp_msg_b(&m, IMP_T_TEXT), "peer"));
    tc_close(a);
    h_free(h);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rooms),
        cmocka_unit_test(test_room_history_pruned),
        cmocka_unit_test(test_transient_room_fanout),
        cmocka_unit_test(test_transient_room_members_cached),
        cmocka_unit_test(test_broadcast),
        cmocka_unit_test(test_presence_and_who),
        cmocka_unit_test(test_stats_and_monitor),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
