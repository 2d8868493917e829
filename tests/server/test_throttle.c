/* Unit tests for server/throttle.c: per-address bans after too many failures within a sliding
 * window, per-account exponential backoff after the free failures, and the memory bound
 * (least recently used entries are evicted). Time is passed in, so every test is exact.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth.h"
#include "imp/errors.h"

#define SEC 1000u

/* Small, round numbers: 5 failures within 10 s ban for 60 s; 3 free failures, then 1 s
 * doubling up to 8 s. */
static void small_options(ims_throttle_options *o)
{
    ims_throttle_options_default(o);
    o->addr_max_failures = 5;
    o->addr_window_ms = 10 * SEC;
    o->addr_ban_ms = 60 * SEC;
    o->user_free_failures = 3;
    o->user_backoff_ms = 1 * SEC;
    o->user_backoff_max_ms = 8 * SEC;
    o->max_entries = 1000;
}

static ims_throttle *new_small(void)
{
    ims_throttle_options o;
    small_options(&o);
    ims_throttle *t = ims_throttle_new(&o);
    assert_non_null(t);
    return t;
}

/* check() with retry_after; the retry value is poisoned first so a stale value shows. */
static int check(ims_throttle *t, const char *addr, const char *user, uint64_t now, uint32_t *retry)
{
    *retry = 0xdeadbeef;
    return ims_throttle_check(t, addr, user, now, retry);
}

static void test_options_default(void **state)
{
    (void)state;
    ims_throttle_options o;
    memset(&o, 0x5a, sizeof o);
    ims_throttle_options_default(&o);
    assert_int_equal(o.addr_max_failures, 10);
    assert_int_equal(o.addr_window_ms, 60 * SEC);
    assert_int_equal(o.addr_ban_ms, 300 * SEC);
    assert_int_equal(o.user_free_failures, 3);
    assert_int_equal(o.user_backoff_ms, 1 * SEC);
    assert_int_equal(o.user_backoff_max_ms, 60 * SEC);
    assert_int_equal(o.max_entries, 100000);

    ims_throttle *t = ims_throttle_new(&o);
    assert_non_null(t);
    ims_throttle_free(t);
    t = ims_throttle_new(NULL); /* NULL: the defaults */
    assert_non_null(t);
    ims_throttle_free(t);
    ims_throttle_free(NULL);
}

static void test_new_rejects_bad_options(void **state)
{
    (void)state;
    ims_throttle_options o;
    small_options(&o);
    o.max_entries = 0;
    assert_null(ims_throttle_new(&o));
    small_options(&o);
    o.addr_max_failures = -1;
    assert_null(ims_throttle_new(&o));
    small_options(&o);
    o.addr_max_failures = 1000000; /* the per-address window would be huge */
    assert_null(ims_throttle_new(&o));
    small_options(&o);
    o.addr_window_ms = 0;
    assert_null(ims_throttle_new(&o));
    small_options(&o);
    o.user_free_failures = -1;
    assert_null(ims_throttle_new(&o));
}

static void test_bad_arguments(void **state)
{
    (void)state;
    ims_throttle *t = new_small();
    uint32_t retry;
    assert_int_equal(ims_throttle_check(NULL, "1.2.3.4", "bob", 0, &retry), IMP_ERR_INVAL);
    assert_int_equal(ims_throttle_check(t, NULL, "bob", 0, &retry), IMP_ERR_INVAL);
    assert_int_equal(ims_throttle_check(t, "1.2.3.4", "bob", 0, NULL), 0); /* retry optional */
    ims_throttle_record(NULL, "1.2.3.4", "bob", 0, 0);
    ims_throttle_record(t, NULL, "bob", 0, 0); /* ignored */
    assert_int_equal(ims_throttle_entries(t), 0);
    assert_int_equal(ims_throttle_entries(NULL), 0);
    ims_throttle_free(t);
}

static void test_fresh_is_allowed(void **state)
{
    (void)state;
    ims_throttle *t = new_small();
    uint32_t retry;
    assert_int_equal(check(t, "10.0.0.1", "alice", 12345, &retry), 0);
    assert_int_equal(retry, 0);
    assert_int_equal(check(t, "10.0.0.1", NULL, 12345, &retry), 0);
    /* check alone does not create entries */
    assert_int_equal(ims_throttle_entries(t), 0);
    ims_throttle_free(t);
}

static void test_addr_ban_after_failures_in_window(void **state)
{
    (void)state;
    ims_throttle *t = new_small();
    uint32_t retry;
    uint64_t now = 1000 * SEC;
    /* Four failures (different accounts, so no account backoff) are allowed... */
    const char *users[] = {"u1", "u2", "u3", "u4", "u5"};
    for (int i = 0; i < 4; i++) {
        assert_int_equal(check(t, "10.0.0.1", users[i], now, &retry), 0);
        ims_throttle_record(t, "10.0.0.1", users[i], 0, now);
        now += 2 * SEC;
    }
    /* ...the fifth within 10 s of the first bans the address for 60 s. */
    now = 1000 * SEC + 9999; /* 9.999 s after the first */
    assert_int_equal(check(t, "10.0.0.1", users[4], now, &retry), 0);
    ims_throttle_record(t, "10.0.0.1", users[4], 0, now);
    assert_int_equal(check(t, "10.0.0.1", "someone", now, &retry), IMP_ERR_BANNED);
    assert_int_equal(retry, 60 * SEC);
    assert_int_equal(check(t, "10.0.0.1", NULL, now + 1, &retry), IMP_ERR_BANNED);
    assert_int_equal(retry, 60 * SEC - 1);
    /* Another address is not affected. */
    assert_int_equal(check(t, "10.0.0.2", "someone", now, &retry), 0);
    ims_throttle_free(t);
}

static void test_addr_no_ban_when_spread_out(void **state)
{
    (void)state;
    ims_throttle *t = new_small();
    uint32_t retry;
    /* Five failures spanning exactly the window (10 s) are not "within" it: no ban. */
    uint64_t now = 5000;
    for (int i = 0; i < 5; i++) {
        ims_throttle_record(t, "10.0.0.1", NULL, 0, now + (uint64_t)i * 2500);
    }
    assert_int_equal(check(t, "10.0.0.1", NULL, now + 10 * SEC, &retry), 0);

    /* A steady failure every 2.5 s forever: any five span 10 s, never a ban (sliding). */
    for (int i = 5; i < 200; i++) {
        uint64_t at = now + (uint64_t)i * 2500;
        assert_int_equal(check(t, "10.0.0.1", NULL, at, &retry), 0);
        ims_throttle_record(t, "10.0.0.1", NULL, 0, at);
    }
    /* One more failure 2.499 s later makes five within 9.999 s: banned. */
    uint64_t at = now + 199 * 2500 + 2499;
    ims_throttle_record(t, "10.0.0.1", NULL, 0, at);
    assert_int_equal(check(t, "10.0.0.1", NULL, at, &retry), IMP_ERR_BANNED);

    /* A burst right after an old failure: the window slides, the old one drops out. */
    ims_throttle_record(t, "10.0.0.9", NULL, 0, 0);
    ims_throttle_record(t, "10.0.0.9", NULL, 0, 1);
    for (int i = 0; i < 3; i++)
        ims_throttle_record(t, "10.0.0.9", NULL, 0, 20 * SEC + (uint64_t)i);
    assert_int_equal(check(t, "10.0.0.9", NULL, 20 * SEC + 3, &retry), 0);
    ims_throttle_record(t, "10.0.0.9", NULL, 0, 20 * SEC + 3);
    ims_throttle_record(t, "10.0.0.9", NULL, 0, 25 * SEC);
    assert_int_equal(check(t, "10.0.0.9", NULL, 25 * SEC, &retry), IMP_ERR_BANNED);
    ims_throttle_free(t);
}

static void test_addr_ban_expires(void **state)
{
    (void)state;
    ims_throttle *t = new_small();
    uint32_t retry;
    uint64_t now = 77;
    for (int i = 0; i < 5; i++)
        ims_throttle_record(t, "::1", NULL, 0, now);
    assert_int_equal(check(t, "::1", NULL, now, &retry), IMP_ERR_BANNED);
    assert_int_equal(retry, 60 * SEC);
    assert_int_equal(check(t, "::1", NULL, now + 60 * SEC - 1, &retry), IMP_ERR_BANNED);
    assert_int_equal(retry, 1);
    assert_int_equal(check(t, "::1", NULL, now + 60 * SEC, &retry), 0);
    assert_int_equal(retry, 0);

    /* After the ban the count starts again: four more failures are allowed. */
    now += 60 * SEC;
    for (int i = 0; i < 4; i++) {
        ims_throttle_record(t, "::1", NULL, 0, now);
        assert_int_equal(check(t, "::1", NULL, now, &retry), 0);
    }
    ims_throttle_record(t, "::1", NULL, 0, now);
    assert_int_equal(check(t, "::1", NULL, now, &retry), IMP_ERR_BANNED);
    ims_throttle_free(t);
}

static void test_addr_ban_shorter_than_window(void **state)
{
    (void)state;
    ims_throttle_options o;
    small_options(&o);
    o.addr_ban_ms = 1 * SEC; /* shorter than the 10 s window */
    ims_throttle *t = ims_throttle_new(&o);
    assert_non_null(t);
    uint32_t retry;
    for (int i = 0; i < 5; i++)
        ims_throttle_record(t, "::1", NULL, 0, 0);
    assert_int_equal(check(t, "::1", NULL, 999, &retry), IMP_ERR_BANNED);
    assert_int_equal(retry, 1);
    /* The failures that caused the ban are used up by it: four new ones are allowed. */
    for (int i = 0; i < 4; i++) {
        ims_throttle_record(t, "::1", NULL, 0, 1 * SEC);
        assert_int_equal(check(t, "::1", NULL, 1 * SEC, &retry), 0);
    }
    ims_throttle_record(t, "::1", NULL, 0, 1 * SEC);
    assert_int_equal(check(t, "::1", NULL, 1 * SEC, &retry), IMP_ERR_BANNED);
    ims_throttle_free(t);
}

static void test_success_does_not_clear_address(void **state)
{
    (void)state;
    ims_throttle *t = new_small();
    uint32_t retry;
    /* A valid account of one's own must not reset the address count. */
    for (int i = 0; i < 4; i++)
        ims_throttle_record(t, "10.0.0.1", "victim", 0, 100);
    ims_throttle_record(t, "10.0.0.1", "mine", 1, 100);
    ims_throttle_record(t, "10.0.0.1", "other", 0, 100);
    assert_int_equal(check(t, "10.0.0.1", "x", 100, &retry), IMP_ERR_BANNED);
    ims_throttle_free(t);
}

static void test_user_backoff_doubles_and_caps(void **state)
{
    (void)state;
    ims_throttle_options o;
    small_options(&o);
    o.addr_max_failures = 1000; /* keep the address out of the way */
    ims_throttle *t = ims_throttle_new(&o);
    assert_non_null(t);
    uint32_t retry;
    uint64_t now = 50 * SEC;

    /* Three free failures, without any wait. */
    for (int i = 0; i < 3; i++) {
        assert_int_equal(check(t, "10.0.0.1", "bob", now, &retry), 0);
        ims_throttle_record(t, "10.0.0.1", "bob", 0, now);
    }
    /* Then 1 s, 2 s, 4 s, 8 s, 8 s, ... after each failure. */
    const uint32_t waits[] = {1, 2, 4, 8, 8, 8};
    for (size_t i = 0; i < sizeof waits / sizeof waits[0]; i++) {
        uint32_t w = waits[i] * SEC;
        assert_int_equal(check(t, "10.0.0.1", "bob", now, &retry), IMP_ERR_AUTH_BACKOFF);
        assert_int_equal(retry, w);
        assert_int_equal(check(t, "10.0.0.2", "bob", now + w - 1, &retry),
                         IMP_ERR_AUTH_BACKOFF); /* per account, from any address */
        assert_int_equal(retry, 1);
        now += w;
        assert_int_equal(check(t, "10.0.0.1", "bob", now, &retry), 0);
        assert_int_equal(retry, 0);
        ims_throttle_record(t, "10.0.0.1", "bob", 0, now);
    }
    /* Other accounts are unaffected; REGISTER (no account) is not held back either. */
    assert_int_equal(check(t, "10.0.0.1", "carol", now, &retry), 0);
    assert_int_equal(check(t, "10.0.0.1", NULL, now, &retry), 0);

    /* A success clears the account: three free failures again. */
    now += 8 * SEC;
    ims_throttle_record(t, "10.0.0.1", "bob", 1, now);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(check(t, "10.0.0.1", "bob", now, &retry), 0);
        ims_throttle_record(t, "10.0.0.1", "bob", 0, now);
    }
    assert_int_equal(check(t, "10.0.0.1", "bob", now, &retry), IMP_ERR_AUTH_BACKOFF);
    assert_int_equal(retry, 1 * SEC);
    ims_throttle_free(t);
}

static void test_user_backoff_long_run_no_overflow(void **state)
{
    (void)state;
    ims_throttle_options o;
    small_options(&o);
    o.addr_max_failures = 0; /* no address bans */
    o.user_free_failures = 0;
    o.user_backoff_ms = 3;
    o.user_backoff_max_ms = UINT32_MAX;
    ims_throttle *t = ims_throttle_new(&o);
    assert_non_null(t);
    uint32_t retry;
    uint64_t now = 0;
    uint64_t expect = 3;
    for (int i = 0; i < 100; i++) {
        ims_throttle_record(t, "a", "bob", 0, now);
        assert_int_equal(check(t, "a", "bob", now, &retry), IMP_ERR_AUTH_BACKOFF);
        assert_int_equal(retry, expect);
        expect = expect * 2 > UINT32_MAX ? UINT32_MAX : expect * 2;
        now += retry;
    }
    assert_int_equal(retry, UINT32_MAX);
    /* addr_max_failures = 0 disables address bans */
    for (int i = 0; i < 100; i++)
        ims_throttle_record(t, "a", NULL, 0, now);
    assert_int_equal(check(t, "a", NULL, now, &retry), 0);
    ims_throttle_free(t);
}

static void test_ban_reported_before_backoff(void **state)
{
    (void)state;
    ims_throttle *t = new_small();
    uint32_t retry;
    for (int i = 0; i < 5; i++)
        ims_throttle_record(t, "10.0.0.1", "bob", 0, 0);
    assert_int_equal(check(t, "10.0.0.1", "bob", 0, &retry), IMP_ERR_BANNED);
    assert_int_equal(retry, 60 * SEC);
    assert_int_equal(check(t, "10.0.0.2", "bob", 0, &retry), IMP_ERR_AUTH_BACKOFF);
    assert_int_equal(retry, 4 * SEC); /* five failures: 3 free, then 1 s, 2 s, 4 s */
    ims_throttle_free(t);
}

static void test_register_path_without_user(void **state)
{
    (void)state;
    ims_throttle *t = new_small();
    uint32_t retry;
    for (int i = 0; i < 4; i++) {
        assert_int_equal(check(t, "192.0.2.1", NULL, 10, &retry), 0);
        ims_throttle_record(t, "192.0.2.1", NULL, 0, 10);
    }
    assert_int_equal(ims_throttle_entries(t), 1);     /* the address only */
    ims_throttle_record(t, "192.0.2.1", NULL, 1, 10); /* a success changes nothing */
    assert_int_equal(check(t, "192.0.2.1", NULL, 10, &retry), 0);
    ims_throttle_record(t, "192.0.2.1", NULL, 0, 10);
    assert_int_equal(check(t, "192.0.2.1", NULL, 10, &retry), IMP_ERR_BANNED);
    assert_int_equal(check(t, "192.0.2.1", "anyone", 10, &retry), IMP_ERR_BANNED);
    ims_throttle_free(t);
}

static void test_address_and_user_keys_are_separate(void **state)
{
    (void)state;
    ims_throttle *t = new_small();
    uint32_t retry;
    /* An account named like an address does not share its counters. */
    for (int i = 0; i < 5; i++)
        ims_throttle_record(t, "addr-x", "10.0.0.7", 0, 0);
    assert_int_equal(check(t, "10.0.0.7", NULL, 0, &retry), 0);
    assert_int_equal(check(t, "other", "addr-x", 0, &retry), 0);
    assert_int_equal(ims_throttle_entries(t), 2);
    ims_throttle_free(t);
}

static void test_long_keys(void **state)
{
    (void)state;
    ims_throttle *t = new_small();
    uint32_t retry;
    char key[2000];
    memset(key, 'k', sizeof key - 1);
    key[sizeof key - 1] = '\0';
    for (int i = 0; i < 5; i++)
        ims_throttle_record(t, key, key, 0, 0);
    assert_int_equal(check(t, key, NULL, 0, &retry), IMP_ERR_BANNED);
    assert_int_equal(check(t, "k", key, 0, &retry), IMP_ERR_AUTH_BACKOFF);
    assert_int_equal(check(t, "", "", 0, &retry), 0);
    ims_throttle_free(t);
}

static void test_eviction_bounds_memory(void **state)
{
    (void)state;
    ims_throttle_options o;
    small_options(&o);
    o.max_entries = 64;
    ims_throttle *t = ims_throttle_new(&o);
    assert_non_null(t);
    uint32_t retry;
    char addr[32];
    char user[32];

    /* "keep" fails 4 times; it is touched again and again while 3 * max_entries others come. */
    for (int i = 0; i < 4; i++)
        ims_throttle_record(t, "keep", NULL, 0, 0);
    for (int i = 0; i < 3 * 64; i++) {
        snprintf(addr, sizeof addr, "10.1.%d.%d", i / 256, i % 256);
        snprintf(user, sizeof user, "user%d", i);
        ims_throttle_record(t, addr, user, 0, 100);
        assert_true(ims_throttle_entries(t) <= 64);
        if (i % 16 == 0)
            assert_int_equal(check(t, "keep", NULL, 100, &retry), 0); /* touch */
    }
    assert_int_equal(ims_throttle_entries(t), 64);

    /* Recently used entries still count: "keep" is banned by one more failure. */
    ims_throttle_record(t, "keep", NULL, 0, 200);
    assert_int_equal(check(t, "keep", NULL, 200, &retry), IMP_ERR_BANNED);

    /* The newest address has one failure: four more ban it. */
    for (int i = 0; i < 4; i++)
        ims_throttle_record(t, addr, NULL, 0, 300);
    assert_int_equal(check(t, addr, NULL, 300, &retry), IMP_ERR_BANNED);

    /* The oldest were evicted: 10.1.0.0 starts from zero, four failures do not ban it. */
    for (int i = 0; i < 4; i++)
        ims_throttle_record(t, "10.1.0.0", NULL, 0, 400);
    assert_int_equal(check(t, "10.1.0.0", NULL, 400, &retry), 0);
    ims_throttle_record(t, "10.1.0.0", NULL, 0, 400);
    assert_int_equal(check(t, "10.1.0.0", NULL, 400, &retry), IMP_ERR_BANNED);
    assert_int_equal(ims_throttle_entries(t), 64);

    /* Accounts are evicted the same way. */
    for (int i = 0; i < 3; i++)
        ims_throttle_record(t, "z", "fresh", 0, 500);
    ims_throttle_record(t, "z", "fresh", 0, 500);
    assert_int_equal(check(t, "y", "fresh", 500, &retry), IMP_ERR_AUTH_BACKOFF);
    ims_throttle_free(t);
}

static void test_eviction_with_one_entry(void **state)
{
    (void)state;
    ims_throttle_options o;
    small_options(&o);
    o.max_entries = 1;
    ims_throttle *t = ims_throttle_new(&o);
    assert_non_null(t);
    uint32_t retry;
    /* Address and account compete for the single slot; nothing breaks. */
    for (int i = 0; i < 10; i++)
        ims_throttle_record(t, "a", "u", 0, (uint64_t)i);
    assert_int_equal(ims_throttle_entries(t), 1);
    /* Each key was evicted by the other every time: one failure each, nothing held back. */
    assert_int_equal(check(t, "a", "u", 10, &retry), 0);
    ims_throttle_free(t);
}

static void test_many_entries_default_size(void **state)
{
    (void)state;
    ims_throttle_options o;
    ims_throttle_options_default(&o);
    o.max_entries = 5000;
    ims_throttle *t = ims_throttle_new(&o);
    assert_non_null(t);
    uint32_t retry;
    char addr[32];
    for (int i = 0; i < 15000; i++) {
        snprintf(addr, sizeof addr, "2001:db8::%x", i);
        ims_throttle_record(t, addr, NULL, 0, (uint64_t)i);
    }
    assert_int_equal(ims_throttle_entries(t), 5000);
    /* Every surviving entry is one of the last 5000 and counts its failure. */
    for (int i = 10000; i < 15000; i++) {
        snprintf(addr, sizeof addr, "2001:db8::%x", i);
        for (int k = 0; k < 9; k++)
            ims_throttle_record(t, addr, NULL, 0, 20000);
        assert_int_equal(check(t, addr, NULL, 20000, &retry), IMP_ERR_BANNED);
    }
    ims_throttle_free(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_options_default),
        cmocka_unit_test(test_new_rejects_bad_options),
        cmocka_unit_test(test_bad_arguments),
        cmocka_unit_test(test_fresh_is_allowed),
        cmocka_unit_test(test_addr_ban_after_failures_in_window),
        cmocka_unit_test(test_addr_no_ban_when_spread_out),
        cmocka_unit_test(test_addr_ban_expires),
        cmocka_unit_test(test_addr_ban_shorter_than_window),
        cmocka_unit_test(test_success_does_not_clear_address),
        cmocka_unit_test(test_user_backoff_doubles_and_caps),
        cmocka_unit_test(test_user_backoff_long_run_no_overflow),
        cmocka_unit_test(test_ban_reported_before_backoff),
        cmocka_unit_test(test_register_path_without_user),
        cmocka_unit_test(test_address_and_user_keys_are_separate),
        cmocka_unit_test(test_long_keys),
        cmocka_unit_test(test_eviction_bounds_memory),
        cmocka_unit_test(test_eviction_with_one_entry),
        cmocka_unit_test(test_many_entries_default_size),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
