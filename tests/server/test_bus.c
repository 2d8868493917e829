/* Unit tests for server/bus_local.c: the in-process delivery bus (bus.h), the seam through
 * which the core learns that a user's queue grew (after the commit, IMP-DELIV-001) or that a
 * transient message is for a user.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <setjmp.h>
#include <cmocka.h>

#include <imp/errors.h>

#include "bus.h"

struct seen {
    int calls;
    int64_t user;
    uint64_t seq;
};

static void on_event(void *ud, ims_bus_event *ev)
{
    struct seen *s = ud;
    s->calls++;
    s->user = ev->user_id;
    s->seq = ev->seq;
    ev->ack_count++;
}

static void test_publish_reaches_every_subscriber(void **state)
{
    (void)state;
    ims_bus *b = ims_bus_local_new();
    assert_non_null(b);
    struct seen s1 = {0, 0, 0}, s2 = {0, 0, 0};
    ims_bus_event ev = {IMS_BUS_QUEUED, 42, 7, NULL, 0, 0, NULL, 0};
    assert_int_equal(ims_bus_publish(b, &ev), 0); /* nobody listens: fine */
    assert_int_equal(ims_bus_subscribe(b, on_event, &s1), 0);
    assert_int_equal(ims_bus_subscribe(b, on_event, &s2), 0);
    assert_int_equal(ims_bus_publish(b, &ev), 0);
    assert_int_equal(s1.calls, 1);
    assert_int_equal(s2.calls, 1);
    assert_int_equal(s1.user, 42);
    assert_int_equal(s2.seq, 7);
    assert_int_equal(ev.ack_count, 2); /* subscribers report back synchronously */
    ims_bus_free(b);
}

static void test_subscribe_limits(void **state)
{
    (void)state;
    ims_bus *b = ims_bus_local_new();
    assert_non_null(b);
    struct seen s = {0, 0, 0};
    assert_int_equal(ims_bus_subscribe(b, NULL, &s), IMP_ERR_INVAL);
    int ok = 0;
    while (ims_bus_subscribe(b, on_event, &s) == 0 && ok < 100)
        ok++;
    assert_true(ok >= 1 && ok < 100); /* bounded */
    ims_bus_event ev = {IMS_BUS_TRANSIENT, 1, 0, NULL, 0, 0, NULL, 0};
    assert_int_equal(ims_bus_publish(b, &ev), 0);
    assert_int_equal(s.calls, ok);
    ims_bus_free(b);
    ims_bus_free(NULL);
}

/* What a subscriber saw of an IMS_BUS_TRANSIENT_MANY event (during its callback). */
struct seen_many {
    int calls;
    int64_t ids[8];
    size_t n;
    uint64_t origin;
    const ims_message *msg;
};

static void on_many(void *ud, ims_bus_event *ev)
{
    struct seen_many *s = ud;
    s->calls++;
    assert_int_equal(ev->kind, IMS_BUS_TRANSIENT_MANY);
    assert_true(ev->n_users <= 8);
    for (size_t i = 0; i < ev->n_users; i++)
        s->ids[i] = ev->user_ids[i];
    s->n = ev->n_users;
    s->origin = ev->origin;
    s->msg = ev->msg;
    ev->ack_count += (int)ev->n_users; /* "wrote to one session of each" */
}

/* bus.h's contract for IMS_BUS_TRANSIENT_MANY: one publish reaches every subscriber once with
 * the whole id list (in order), the message and the origin, and the subscribers' ack counts add
 * up; a list without its ids is refused and reaches nobody. */
static void test_transient_many(void **state)
{
    (void)state;
    ims_bus *b = ims_bus_local_new();
    assert_non_null(b);
    struct seen_many s1, s2;
    memset(&s1, 0, sizeof s1);
    memset(&s2, 0, sizeof s2);
    assert_int_equal(ims_bus_subscribe(b, on_many, &s1), 0);
    assert_int_equal(ims_bus_subscribe(b, on_many, &s2), 0);
    ims_message msg;
    memset(&msg, 0, sizeof msg);
    const int64_t ids[] = {7, 3, 11, 5};
    ims_bus_event ev = {IMS_BUS_TRANSIENT_MANY, 0, 0, &msg, 99, 0, ids, 4};
    assert_int_equal(ims_bus_publish(b, &ev), 0);
    struct seen_many *ss[] = {&s1, &s2};
    for (int k = 0; k < 2; k++) {
        assert_int_equal(ss[k]->calls, 1);
        assert_int_equal(ss[k]->n, 4);
        for (size_t i = 0; i < 4; i++)
            assert_int_equal(ss[k]->ids[i], ids[i]);
        assert_int_equal(ss[k]->origin, 99);
        assert_ptr_equal(ss[k]->msg, &msg);
    }
    assert_int_equal(ev.ack_count, 8);

    ims_bus_event bad = {IMS_BUS_TRANSIENT_MANY, 0, 0, &msg, 99, 0, NULL, 3};
    assert_int_equal(ims_bus_publish(b, &bad), IMP_ERR_INVAL);
    assert_int_equal(s1.calls, 1);
    assert_int_equal(s2.calls, 1);
    assert_int_equal(bad.ack_count, 0);
    ims_bus_free(b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_publish_reaches_every_subscriber),
        cmocka_unit_test(test_subscribe_limits),
        cmocka_unit_test(test_transient_many),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
