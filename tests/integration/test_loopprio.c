/* Integration: the event loop's scheduling options (loop_priority, busy_poll_us).
 *
 * - loop_priority = realtime: imd logs `loop_priority mode=realtime` and its event-loop thread
 *   (the main thread) is SCHED_FIFO priority 1, the lag probe's thread too (started after it),
 *   while the hash workers stay normal threads at nice +5 and the fsync thread a normal thread;
 *   logins with the default Argon2id parameters and messages still work. Without the privilege
 *   (not root; or as root, imd started through setpriv without CAP_SYS_NICE and prlimit with
 *   RLIMIT_RTPRIO 0) it logs `loop_priority_failed ... fallback=normal` once, every thread stays
 *   normal, and it serves all the same.
 * - loop_priority = high: the main thread's nice value is -10, its policy unchanged.
 * - busy_poll_us: imd serves with the polling loop (a PING-PONG exchange, messages), does not
 *   spin while idle (its CPU time over 2 idle seconds stays under a third of one CPU: a spinning
 *   loop takes all of one), stops cleanly, and its exit log counts the polling windows and the
 *   polls that found I/O (busy_poll_stats polls > 0, hits > 0 with a 100 ms window and a client
 *   that answers at once). The PING round trip with and without is printed, not asserted.
 * - The descriptor table is grown at start, while imd has one thread, to hold max_connections
 *   (within RLIMIT_NOFILE): /proc/PID/status FDSize is above max_connections at once, before
 *   any client (growing it later, with threads, stalls the loop in accept for an RCU grace
 *   period: 6.7 and 13.8 ms measured).
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "itest.h"

/* A thread of imd from /proc/PID/task/TID/stat: its name, policy (field 41), real-time
 * priority (40) and nice value (19). */
typedef struct thr {
    long tid;
    char comm[32];
    int policy, rtprio, nice;
} thr;

#define MAX_THR 64

static int read_threads(long pid, thr *out, int max)
{
    char dir[64];
    snprintf(dir, sizeof dir, "/proc/%ld/task", pid);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "ls %s", dir);
    FILE *ls = popen(cmd, "r");
    IT_CHECK(ls != NULL, "popen ls");
    int n = 0;
    long tid;
    while (n < max && fscanf(ls, "%ld", &tid) == 1) {
        char path[96], buf[1024];
        snprintf(path, sizeof path, "%s/%ld/stat", dir, tid);
        FILE *f = fopen(path, "r");
        if (!f)
            continue;
        size_t k = fread(buf, 1, sizeof buf - 1, f);
        fclose(f);
        buf[k] = 0;
        /* "tid (comm) state f4 ... ": fields after the closing parenthesis start at 3 */
        char *l = strchr(buf, '('), *r = strrchr(buf, ')');
        if (!l || !r)
            continue;
        thr *t = &out[n];
        memset(t, 0, sizeof *t);
        t->tid = tid;
        snprintf(t->comm, sizeof t->comm, "%.*s", (int)(r - l - 1), l + 1);
        char *s = r + 2;
        int field = 3;
        long v[64];
        for (char *tok = strtok(s, " "); tok && field < 64; tok = strtok(NULL, " "), field++)
            v[field] = atol(tok);
        IT_CHECK(field > 41, "short stat line for thread %ld", tid);
        t->nice = (int)v[19];
        t->rtprio = (int)v[40];
        t->policy = (int)v[41];
        n++;
    }
    pclose(ls);
    return n;
}

static void note_threads(const char *what, const thr *t, int n)
{
    char line[1024];
    size_t o = 0;
    for (int i = 0; i < n && o < sizeof line - 64; i++)
        o += (size_t)snprintf(line + o, sizeof line - o, " %ld:policy=%d,rt=%d,nice=%d", t[i].tid,
                              t[i].policy, t[i].rtprio, t[i].nice);
    it_note("%s threads:%s", what, line);
}

/* CPU seconds (user + system, all threads) of a process. */
static double proc_cpu_s(long pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    FILE *f = fopen(path, "r");
    IT_CHECK(f != NULL, "open %s", path);
    size_t k = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[k] = 0;
    char *r = strrchr(buf, ')');
    IT_CHECK(r != NULL, "stat of %ld", pid);
    unsigned long long ut = 0, st = 0;
    int field = 3;
    for (char *tok = strtok(r + 2, " "); tok; tok = strtok(NULL, " "), field++) {
        if (field == 14)
            ut = strtoull(tok, NULL, 10);
        if (field == 15) {
            st = strtoull(tok, NULL, 10);
            break;
        }
    }
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

/* PING round trips on a logged-in connection: n of them, the median and worst in us. */
static void ping_rtt(tc *c, int n, double *p50, double *max)
{
    double *v = calloc((size_t)n, sizeof *v);
    IT_CHECK(v != NULL, "calloc");
    for (int i = 0; i < n; i++) {
        struct timespec a, b;
        clock_gettime(CLOCK_MONOTONIC, &a);
        uint32_t req = tc_simple(c, IMP_PING);
        tc_frame *f = tc_wait(c, IMP_PONG, req, 5000);
        clock_gettime(CLOCK_MONOTONIC, &b);
        IT_CHECK(f != NULL, "no PONG to PING %d", i);
        tc_frame_free(f);
        v[i] = (double)(b.tv_sec - a.tv_sec) * 1e6 + (double)(b.tv_nsec - a.tv_nsec) / 1e3;
    }
    for (int i = 1; i < n; i++) /* insertion sort: n is small */
        for (int j = i; j > 0 && v[j - 1] > v[j]; j--) {
            double t = v[j];
            v[j] = v[j - 1];
            v[j - 1] = t;
        }
    *p50 = v[n / 2];
    *max = v[n - 1];
    free(v);
}

/* The checks of a realtime imd that got its policy. */
static void check_realtime_threads(long pid)
{
    thr t[MAX_THR];
    int n = read_threads(pid, t, MAX_THR);
    note_threads("loop_priority=realtime", t, n);
    int fifo = 0, workers = 0;
    for (int i = 0; i < n; i++) {
        if (t[i].tid == pid) {
            IT_CHECK(t[i].policy == SCHED_FIFO && t[i].rtprio == 1,
                     "main (event-loop) thread: policy %d rtprio %d, want SCHED_FIFO 1",
                     t[i].policy, t[i].rtprio);
            continue;
        }
        if (t[i].policy == SCHED_FIFO) {
            fifo++; /* the probe's thread */
            IT_EQ(t[i].rtprio, 1);
            continue;
        }
        IT_CHECK(t[i].policy == SCHED_OTHER, "thread %ld: policy %d", t[i].tid, t[i].policy);
        workers += t[i].nice == 5;
    }
    IT_CHECK(fifo == 1, "%d real-time threads besides the loop, want 1 (the lag probe)", fifo);
    IT_CHECK(workers == 2, "%d normal threads at nice 5, want the 2 hash workers", workers);
}

static void test_realtime(void **state)
{
    (void)state;
    static const char *const args[] = {"--set", "loop_priority=realtime", "--set", "hash_threads=2",
                                       NULL};
    imd_proc *p = it_start_imd_plain(args); /* default Argon2id: the workers really work */
    long pid = (long)p->pid;
    int ok = it_wait_log(p, 0, "loop_priority mode=realtime", 5000);
    int failed = it_wait_log(p, 0, "loop_priority_failed mode=realtime", 100);
    it_note("as uid %ld: %s", (long)geteuid(), ok ? "SCHED_FIFO applied" : "refused");
    if (geteuid() == 0)
        IT_CHECK(ok || failed, "no loop_priority log line");
    if (ok) {
        IT_CHECK(!failed, "both loop_priority and loop_priority_failed logged");
        check_realtime_threads(pid);
    } else {
        IT_CHECK(failed, "neither loop_priority nor loop_priority_failed logged");
        IT_CHECK(it_wait_log(p, 0, "fallback=normal", 100), "the failure names the fallback");
    }
    /* logins (default Argon2id on the nice +5 workers) and messages with a real-time loop */
    it_liveness(p, pid, NULL, NULL, NULL, NULL);
    it_liveness(p, pid, NULL, NULL, NULL, NULL);
    it_finish(p);
}

/* As root: imd without CAP_SYS_NICE (setpriv) and with RLIMIT_RTPRIO and RLIMIT_NICE 0 (prlimit):
 * the refusal is logged once, nothing changes, imd serves. */
static void test_realtime_refused(void **state)
{
    (void)state;
    if (access("/usr/bin/prlimit", X_OK) != 0 ||
        (geteuid() == 0 && access("/usr/bin/setpriv", X_OK) != 0)) {
        it_note("prlimit or setpriv missing: skipped");
        skip();
    }
    char dir[] = "/tmp/imp-loopprio.XXXXXX";
    IT_CHECK(mkdtemp(dir) != NULL, "mkdtemp");
    char wrapper[96], text[1024];
    snprintf(wrapper, sizeof wrapper, "%s/imd-nocap", dir);
    const char *real = imd_binary();
    snprintf(text, sizeof text,
             "#!/bin/sh\nexec %s/usr/bin/prlimit --rtprio=0:0 --nice=0:0 -- '%s' \"$@\"\n",
             geteuid() == 0 ? "/usr/bin/setpriv --bounding-set=-sys_nice --inh-caps=-sys_nice "
                            : "",
             real);
    char realcopy[1024];
    snprintf(realcopy, sizeof realcopy, "%s", real);
    it_write_text(wrapper, text);
    IT_EQ(chmod(wrapper, 0755), 0);
    IT_EQ(setenv("IMD", wrapper, 1), 0);
    static const char *const args[] = {"--set", "loop_priority=realtime", NULL};
    imd_proc *p = it_start_imd(args);
    IT_EQ(setenv("IMD", realcopy, 1), 0); /* it_liveness's tools and later tests: the real one */
    long pid = (long)p->pid;
    IT_CHECK(it_wait_log(p, 0, "loop_priority_failed mode=realtime", 5000),
             "no loop_priority_failed line");
    IT_CHECK(it_wait_log(p, 0, "Operation not permitted", 100), "the error is not named");
    IT_CHECK(!it_wait_log(p, 0, "loop_priority mode=", 100), "success logged too");
    thr t[MAX_THR];
    int n = read_threads(pid, t, MAX_THR);
    note_threads("refused", t, n);
    IT_CHECK(n >= 4, "%d threads", n);
    for (int i = 0; i < n; i++)
        IT_CHECK(t[i].policy == SCHED_OTHER, "thread %ld: policy %d", t[i].tid, t[i].policy);
    it_liveness(p, pid, NULL, NULL, NULL, NULL);
    it_finish(p);
    unlink(wrapper);
    rmdir(dir);
}

static void test_high(void **state)
{
    (void)state;
    static const char *const args[] = {"--set", "loop_priority=high", NULL};
    imd_proc *p = it_start_imd(args);
    long pid = (long)p->pid;
    int ok = it_wait_log(p, 0, "loop_priority mode=high sched=\"nice -10\"", 5000);
    if (!ok) {
        IT_CHECK(geteuid() != 0, "root, and nice -10 was not applied");
        IT_CHECK(it_wait_log(p, 0, "loop_priority_failed mode=high", 100), "no failure line");
    } else {
        thr t[MAX_THR];
        int n = read_threads(pid, t, MAX_THR);
        note_threads("loop_priority=high", t, n);
        int seen = 0;
        for (int i = 0; i < n; i++) {
            if (t[i].tid != pid)
                continue;
            seen = 1;
            IT_EQ(t[i].nice, -10);
            IT_EQ(t[i].policy, SCHED_OTHER);
        }
        IT_CHECK(seen, "no main thread");
    }
    it_liveness(p, pid, NULL, NULL, NULL, NULL);
    it_finish(p);
}

static void rtt_note(const char *what, int port)
{
    char user[32];
    it_name(user, sizeof user, "rtt");
    tc *c = it_register(port, user, "rtt password", NULL);
    double p50, max;
    ping_rtt(c, 50, &p50, &max); /* warm-up */
    ping_rtt(c, 500, &p50, &max);
    it_note("%s: PING round trip over 500: median %.0f us, max %.0f us", what, p50, max);
    tc_close(c);
}

static void test_busy_poll(void **state)
{
    (void)state;
    static const char *const off_args[] = {NULL};
    imd_proc *q = it_start_imd(off_args);
    long qpid = (long)q->pid;
    rtt_note("busy_poll_us=0", q->port);
    it_liveness(q, qpid, NULL, NULL, NULL, NULL);
    it_finish(q);
    IT_CHECK(it_wait_log(q, 0, "busy_poll_stats", 100) == 0, "busy_poll_stats without polling");

    static const char *const args[] = {"--set", "busy_poll_us=100000", NULL};
    imd_proc *p = it_start_imd(args);
    long pid = (long)p->pid;
    IT_CHECK(it_wait_log(p, 0, "busy_poll us=100000", 5000), "no busy_poll line");
    rtt_note("busy_poll_us=100000", p->port);

    /* idle (the last I/O's window long over): no spinning */
    it_sleep_ms(300);
    double c0 = proc_cpu_s(pid);
    uint64_t t0 = it_now_ms();
    it_sleep_ms(2000);
    double used = proc_cpu_s(pid) - c0;
    double secs = (double)(it_now_ms() - t0) / 1000.0;
    it_note("busy_poll_us=100000 idle: %.2f CPU s in %.2f s", used, secs);
    IT_CHECK(used < secs / 3, "idle imd used %.2f CPU s in %.2f s: spinning?", used, secs);

    it_liveness(p, pid, NULL, NULL, NULL, NULL);
    it_finish(p);
    /* the exit log: windows started and polls that found I/O */
    static char log[1 << 16];
    FILE *f = fopen(p->errlog, "r");
    IT_CHECK(f != NULL, "open %s", p->errlog);
    size_t k = fread(log, 1, sizeof log - 1, f);
    fclose(f);
    log[k] = 0;
    const char *s = strstr(log, "busy_poll_stats us=100000 polls=");
    IT_CHECK(s != NULL, "no busy_poll_stats line");
    unsigned long long polls = 0, hits = 0;
    IT_EQ(sscanf(s, "busy_poll_stats us=100000 polls=%llu hits=%llu", &polls, &hits), 2);
    it_note("busy_poll_stats: polls %llu, hits %llu", polls, hits);
    IT_CHECK(polls > 0, "no polling window started");
    IT_CHECK(hits > 0, "no poll found I/O");
}

/* FDSize of /proc/PID/status: the slots of the process's descriptor table. */
static long fd_table_size(long pid)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%ld/status", pid);
    FILE *f = fopen(path, "r");
    IT_CHECK(f != NULL, "open %s", path);
    long n = -1;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "FDSize: %ld", &n) == 1)
            break;
    fclose(f);
    return n;
}

static void test_fd_table_presized(void **state)
{
    (void)state;
    struct rlimit rl;
    IT_EQ(getrlimit(RLIMIT_NOFILE, &rl), 0);
    rlim_t old = rl.rlim_cur;
    rl.rlim_cur = rl.rlim_max; /* imd inherits it */
    IT_EQ(setrlimit(RLIMIT_NOFILE, &rl), 0);
    long mc = rl.rlim_max == RLIM_INFINITY || rl.rlim_max > 10200 ? 10000 : (long)rl.rlim_max - 200;
    if (mc < 500) {
        it_note("RLIMIT_NOFILE hard limit %ld: skipped", (long)rl.rlim_max);
        skip();
    }
    char set[64];
    snprintf(set, sizeof set, "max_connections=%ld", mc);
    const char *const args[] = {"--set", set, NULL};
    imd_proc *p = it_start_imd(args);
    rl.rlim_cur = old;
    IT_EQ(setrlimit(RLIMIT_NOFILE, &rl), 0);
    long pid = (long)p->pid;
    long slots = fd_table_size(pid);
    it_note("max_connections %ld: FDSize %ld before any client, %d descriptors open", mc, slots,
            it_fd_count(p->pid));
    IT_CHECK(slots > mc, "descriptor table of %ld slots for max_connections %ld", slots, mc);
    it_liveness(p, pid, NULL, NULL, NULL, NULL);
    it_finish(p);
}

int main(void)
{
    it_main_init(120);
    if (!it_imd_or_skip())
        return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_realtime, it_teardown),
        cmocka_unit_test_teardown(test_realtime_refused, it_teardown),
        cmocka_unit_test_teardown(test_high, it_teardown),
        cmocka_unit_test_teardown(test_busy_poll, it_teardown),
        cmocka_unit_test_teardown(test_fd_table_presized, it_teardown),
    };
    return cmocka_run_group_tests_name("integration: event-loop scheduling", tests, NULL, NULL);
}
