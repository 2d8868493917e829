/* Unit tests for presence fan-out de-duplication (presence.c) across the wrap of its 16-bit
 * marks (ims_client.mark, kept small for issue 3: 10,000 idle logged-in connections, <= 1 KiB
 * of server memory each). Real store, real hashing, real libimp clients (server_harness.h).
 */
#include "server_harness.h"
#include "core.h" /* ims_server.mark */

static void expect_presence(tc *t, const char *user, int status, int sessions)
{
    imp_msg m;
    tc_expect(t, IMP_PRESENCE_EVENT, &m);
    assert_true(bytes_is(imp_msg_b(&m, IMP_T_USER), user));
    assert_int_equal(imp_msg_u(&m, IMP_T_STATUS, 99), status);
    assert_int_equal(imp_msg_u(&m, IMP_T_SESSIONS, 99), sessions);
}

static void subscribe(tc *t, const char *name)
{
    uint8_t names[64];
    imp_builder nb;
    imp_builder_init(&nb, names, sizeof names);
    imp_names_add(&nb, name, strlen(name));
    imp_msg s, m;
    imp_msg_init(&s, IMP_SUBSCRIBE, tc_req(t));
    imp_msg_set_b(&s, IMP_T_NAMES, names, nb.len);
    tc_send(t, &s);
    tc_expect(t, IMP_OK, &m);
}

static void set_status(tc *t, int status)
{
    imp_msg p, m;
    imp_msg_init(&p, IMP_PRESENCE, tc_req(t));
    imp_msg_set_u(&p, IMP_T_STATUS, (uint64_t)status);
    tc_send(t, &p);
    tc_expect(t, IMP_OK, &m);
}

/* Every status change of bob reaches each other session exactly once, whether it subscribed,
 * shares a room with bob, or both (carol), and never bob's own sessions; before, across and
 * after the wrap of the marks, and for a session opened just before the wrap (dave: its mark
 * is still the initial 0). */
static void test_marks_wrap(void **state)
{
    (void)state;
    th *h = h_new();
    h_start_cfg(h);
    tc *b1 = tc_user(h, "bob", 1);
    tc *b2 = tc_user(h, "bob", 0);
    tc *a = tc_user(h, "alice", 1); /* subscribed only */
    tc *c = tc_user(h, "carol", 1); /* subscribed and in bob's room */
    turn(h);
    subscribe(a, "bob");
    expect_presence(a, "bob", IMP_STATUS_ONLINE, 2);
    subscribe(c, "bob");
    expect_presence(c, "bob", IMP_STATUS_ONLINE, 2);
    tc_join(b1, "r");
    tc_join(c, "r");
    tc_none(a);
    tc_none(c);
    tc_none(b1);
    tc_none(b2);
    h->srv->mark = UINT16_MAX - 3;
    tc *d = NULL; /* in bob's room only, from the third change on */
    for (int i = 0; i < 8; i++) {
        if (i == 2) {
            d = tc_user(h, "dave", 1);
            turn(h);
            tc_join(d, "r");
            tc_none(d);
        }
        int status = i % 2 ? IMP_STATUS_ONLINE : IMP_STATUS_AWAY;
        set_status(b2, status);
        expect_presence(a, "bob", status, 2);
        tc_none(a);
        expect_presence(c, "bob", status, 2);
        tc_none(c); /* once, not once per reason */
        if (d) {
            expect_presence(d, "bob", status, 2);
            tc_none(d);
        }
        tc_none(b1);
        tc_none(b2);
        assert_true(h->srv->mark >= 1 && h->srv->mark <= UINT16_MAX);
    }
    assert_true(h->srv->mark < 10); /* it wrapped */
    tc_close(d);
    tc_close(c);
    tc_close(a);
    tc_close(b2);
    tc_close(b1);
    h_free(h);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_marks_wrap),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
