/* Unit tests for the event loop's scheduling helpers in server/auth.c (auth.h):
 *
 * - ims_busy_poll, the busy-poll decision of busy_poll_us: which turns start a polling window,
 *   how long it lasts, how I/O seen while polling extends it, and that a window of 0 never
 *   polls. Driven with explicit times and I/O counts: nothing here depends on timing.
 * - ims_loop_prio_parse and ims_loop_set_priority (loop_priority): each runs on a thread of its
 *   own, which must get exactly the policy asked for (SCHED_FIFO priority 1; nice -10) while the
 * other threads keep theirs; without the privilege (a child process that dropped CAP_SYS_NICE, or a
 * test run as a normal user) the call returns EPERM or EACCES and changes nothing.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <linux/capability.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "auth.h"

#define US 1000u /* ns */

/* ---- busy poll ---------------------------------------------------------------------------- */

static void test_busy_poll_off(void **state)
{
    (void)state;
    ims_busy_poll bp;
    ims_busy_poll_init(&bp, 0);
    /* I/O or not, a window of 0 never polls */
    assert_int_equal(ims_busy_poll_start(&bp, 1000, 1), 0);
    assert_int_equal(ims_busy_poll_start(&bp, 2000, 5), 0);
    assert_int_equal(ims_busy_poll_again(&bp, 2001, 9), 0);
    assert_int_equal(bp.polls, 0);
    assert_int_equal(bp.hits, 0);
}

static void test_busy_poll_window(void **state)
{
    (void)state;
    ims_busy_poll bp;
    ims_busy_poll_init(&bp, 50);
    uint64_t t = 1000000;
    /* a blocking turn that did I/O (the counter moved from 0) starts a 50 us window */
    assert_int_equal(ims_busy_poll_start(&bp, t, 10), 1);
    assert_int_equal(bp.polls, 1);
    /* polls without I/O keep going until the window ends, then stop */
    assert_int_equal(ims_busy_poll_again(&bp, t + 1 * US, 10), 1);
    assert_int_equal(ims_busy_poll_again(&bp, t + 49 * US, 10), 1);
    assert_int_equal(ims_busy_poll_again(&bp, t + 50 * US, 10), 0);
    assert_int_equal(bp.hits, 0);

    /* a blocking turn without I/O (a timer, the lag probe) does not poll */
    t += 1000 * US;
    assert_int_equal(ims_busy_poll_start(&bp, t, 10), 0);
    assert_int_equal(bp.polls, 1);

    /* I/O found while polling restarts the window from then */
    t += 1000 * US;
    assert_int_equal(ims_busy_poll_start(&bp, t, 11), 1);
    assert_int_equal(ims_busy_poll_again(&bp, t + 40 * US, 12), 1); /* a hit at +40 */
    assert_int_equal(bp.hits, 1);
    assert_int_equal(ims_busy_poll_again(&bp, t + 60 * US, 12), 1); /* past +50: still on */
    assert_int_equal(ims_busy_poll_again(&bp, t + 89 * US, 12), 1);
    assert_int_equal(ims_busy_poll_again(&bp, t + 90 * US, 12), 0); /* +40 + 50 */
    /* a hit after the window ended (the last non-blocking turn found I/O) polls on */
    assert_int_equal(ims_busy_poll_again(&bp, t + 95 * US, 13), 1);
    assert_int_equal(bp.hits, 2);
    assert_int_equal(ims_busy_poll_again(&bp, t + 145 * US, 13), 0);
    assert_int_equal(bp.polls, 2);

    /* steady I/O keeps it polling for as long as it lasts */
    t += 1000 * US;
    assert_int_equal(ims_busy_poll_start(&bp, t, 20), 1);
    for (uint64_t k = 1; k <= 1000; k++)
        assert_int_equal(ims_busy_poll_again(&bp, t + k * 30 * US, 20 + k), 1);
    assert_int_equal(bp.hits, 1002);
    assert_int_equal(ims_busy_poll_again(&bp, t + 1000 * 30 * US + 50 * US, 1020), 0);
}

static void test_busy_poll_counter_wraps(void **state)
{
    (void)state;
    /* only a change of the counter matters, not its direction (it may be any sum of counts) */
    ims_busy_poll bp;
    ims_busy_poll_init(&bp, 100);
    assert_int_equal(ims_busy_poll_start(&bp, 0, UINT64_MAX), 1);
    assert_int_equal(ims_busy_poll_again(&bp, 200 * US, 0), 1);
    assert_int_equal(bp.hits, 1);
    assert_int_equal(ims_busy_poll_again(&bp, 300 * US, 0), 0);
}

/* ---- loop priority ------------------------------------------------------------------------ */

static void test_prio_parse(void **state)
{
    (void)state;
    assert_int_equal(ims_loop_prio_parse("normal"), IMS_LOOP_PRIO_NORMAL);
    assert_int_equal(ims_loop_prio_parse("high"), IMS_LOOP_PRIO_HIGH);
    assert_int_equal(ims_loop_prio_parse("realtime"), IMS_LOOP_PRIO_REALTIME);
    assert_int_equal(ims_loop_prio_parse("Realtime"), -1); /* config.c stores lower case */
    assert_int_equal(ims_loop_prio_parse("fifo"), -1);
    assert_int_equal(ims_loop_prio_parse(""), -1);
    assert_int_equal(ims_loop_prio_parse(NULL), -1);
}

static pid_t gettid_(void)
{
    return (pid_t)syscall(SYS_gettid);
}

/* 1 if the process has CAP_SYS_NICE in its effective set. */
static int have_cap_sys_nice(void)
{
    struct __user_cap_header_struct h = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct d[2];
    memset(d, 0, sizeof d);
    if (syscall(SYS_capget, &h, d) != 0)
        return 0;
    return (d[CAP_SYS_NICE / 32].effective >> (CAP_SYS_NICE % 32)) & 1;
}

/* Drops CAP_SYS_NICE from the effective and permitted sets (this process only). */
static int drop_cap_sys_nice(void)
{
    struct __user_cap_header_struct h = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct d[2];
    memset(d, 0, sizeof d);
    if (syscall(SYS_capget, &h, d) != 0)
        return -1;
    d[CAP_SYS_NICE / 32].effective &= ~(1u << (CAP_SYS_NICE % 32));
    d[CAP_SYS_NICE / 32].permitted &= ~(1u << (CAP_SYS_NICE % 32));
    d[CAP_SYS_NICE / 32].inheritable &= ~(1u << (CAP_SYS_NICE % 32));
    return (int)syscall(SYS_capset, &h, d);
}

typedef struct prio_run {
    ims_loop_prio prio;
    int rc;
    char what[64];
    pid_t tid;
    int policy_before, policy_after; /* sched_getscheduler of the thread itself */
    int rtprio_after;
    int nice_before, nice_after;
} prio_run;

static void *prio_thread(void *arg)
{
    prio_run *r = arg;
    r->tid = gettid_();
    r->policy_before = sched_getscheduler(0); /* Linux: 0 is the calling thread */
    r->nice_before = getpriority(PRIO_PROCESS, (id_t)r->tid);
    r->rc = ims_loop_set_priority(r->prio, r->what, sizeof r->what);
    r->policy_after = sched_getscheduler(0);
    struct sched_param sp;
    r->rtprio_after = sched_getparam(0, &sp) == 0 ? sp.sched_priority : -1;
    r->nice_after = getpriority(PRIO_PROCESS, (id_t)r->tid);
    return NULL;
}

/* Runs ims_loop_set_priority(prio) on a new thread; checks the other threads are untouched. */
static prio_run run_on_thread(ims_loop_prio prio)
{
    prio_run r;
    memset(&r, 0, sizeof r);
    r.prio = prio;
    int mine_policy = sched_getscheduler(0);
    int mine_nice = getpriority(PRIO_PROCESS, (id_t)gettid_());
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, prio_thread, &r), 0);
    assert_int_equal(pthread_join(th, NULL), 0);
    assert_int_equal(sched_getscheduler(0), mine_policy);
    assert_int_equal(getpriority(PRIO_PROCESS, (id_t)gettid_()), mine_nice);
    return r;
}

static void test_prio_normal(void **state)
{
    (void)state;
    prio_run r = run_on_thread(IMS_LOOP_PRIO_NORMAL);
    assert_int_equal(r.rc, 0);
    assert_int_equal(r.policy_after, r.policy_before);
    assert_int_equal(r.nice_after, r.nice_before);
    assert_string_equal(r.what, "unchanged");
}

static void test_prio_realtime(void **state)
{
    (void)state;
    prio_run r = run_on_thread(IMS_LOOP_PRIO_REALTIME);
    assert_string_equal(r.what, "SCHED_FIFO priority 1");
    if (!have_cap_sys_nice()) {
        print_message("no CAP_SYS_NICE: expecting a refusal\n");
        assert_true(r.rc == EPERM || r.rc == EACCES);
        assert_int_equal(r.policy_after, r.policy_before);
        return;
    }
    if (r.rc == EPERM) {
        /* e.g. real-time group scheduling without a runtime for this cgroup */
        print_message("SCHED_FIFO refused despite CAP_SYS_NICE: %s\n", strerror(r.rc));
        assert_int_equal(r.policy_after, r.policy_before);
        skip();
    }
    assert_int_equal(r.rc, 0);
    assert_int_equal(r.policy_before, SCHED_OTHER);
    assert_int_equal(r.policy_after, SCHED_FIFO);
    assert_int_equal(r.rtprio_after, 1);
}

static void test_prio_high(void **state)
{
    (void)state;
    prio_run r = run_on_thread(IMS_LOOP_PRIO_HIGH);
    assert_string_equal(r.what, "nice -10");
    assert_int_equal(r.policy_after, r.policy_before);
    if (r.rc == 0) {
        assert_int_equal(r.nice_after, IMS_LOOP_HIGH_NICE);
        return;
    }
    /* refused: only without the privilege (RLIMIT_NICE below 30 allows no nice -10) */
    assert_false(have_cap_sys_nice());
    assert_true(r.rc == EPERM || r.rc == EACCES);
    assert_int_equal(r.nice_after, r.nice_before);
}

/* Without CAP_SYS_NICE (dropped in a child process): both refused, nothing changed. */
static void test_prio_refused_without_cap(void **state)
{
    (void)state;
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        struct rlimit rl = {0, 0};
        if (drop_cap_sys_nice() != 0 || have_cap_sys_nice())
            _exit(10);
        (void)setrlimit(RLIMIT_NICE, &rl); /* no unprivileged nice below 20 - 0 */
        (void)setrlimit(RLIMIT_RTPRIO, &rl);
        int nice0 = getpriority(PRIO_PROCESS, 0);
        int rc = ims_loop_set_priority(IMS_LOOP_PRIO_REALTIME, NULL, 0);
        if (rc != EPERM && rc != EACCES)
            _exit(11);
        if (sched_getscheduler(0) != SCHED_OTHER)
            _exit(12);
        rc = ims_loop_set_priority(IMS_LOOP_PRIO_HIGH, NULL, 0);
        if (rc != EPERM && rc != EACCES)
            _exit(13);
        if (getpriority(PRIO_PROCESS, 0) != nice0)
            _exit(14);
        _exit(0);
    }
    int st = 0;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFEXITED(st));
    if (WEXITSTATUS(st) != 0)
        fail_msg("child: check %d failed", WEXITSTATUS(st));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_busy_poll_off),
        cmocka_unit_test(test_busy_poll_window),
        cmocka_unit_test(test_busy_poll_counter_wraps),
        cmocka_unit_test(test_prio_parse),
        cmocka_unit_test(test_prio_normal),
        cmocka_unit_test(test_prio_realtime),
        cmocka_unit_test(test_prio_high),
        cmocka_unit_test(test_prio_refused_without_cap),
    };
    return cmocka_run_group_tests_name("imd event-loop scheduling (auth.c)", tests, NULL, NULL);
}
