/* Unit tests for server/bus_local.c: the in-process delivery bus (bus.h), the seam through
 * which the core learns that a user's queue grew (after the commit, IMP-DELIV-001) or that a
 * transient message is for a user.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
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
    ims_bus_event ev = {IMS_BUS_QUEUED, 42, 7, NULL, 0, 0};
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
    ims_bus_event ev = {IMS_BUS_TRANSIENT, 1, 0, NULL, 0, 0};
    assert_int_equal(ims_bus_publish(b, &ev), 0);
    assert_int_equal(s.calls, ok);
    ims_bus_free(b);
    ims_bus_free(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_publish_reaches_every_subscriber),
        cmocka_unit_test(test_subscribe_limits),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
