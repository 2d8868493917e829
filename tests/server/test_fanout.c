/* Unit tests for the transient room fan-out (deliver.c, issue 3): one IMS_BUS_TRANSIENT_MANY
 * bus event per room message, served a block of members at a time (FANOUT_BLOCK) with the
 * members' memory prefetched ahead. The room here is larger than one block and not a multiple
 * of it, and mixes what the per-member path must tell apart: members with two sessions, the
 * sender's own second session, a member offline, a non-member online, and a slow member (over
 * output_soft) whose copy is dropped and counted. Real store, real hashing, real libimp clients
 * (server_harness.h).
 */
#include "server_harness.h"

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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_big_room_fanout),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
