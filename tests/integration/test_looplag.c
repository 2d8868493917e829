/* Integration: imd's event-loop lag probe (loop_probe_ms; STATS and /metrics loop_lag_*).
 *
 * - An idle imd probed every 10 ms: the probes are served (about 100 a second) and their lag is
 *   small (generous bounds, a shared 2-CPU machine: mean under 10 ms, worst since the start
 *   under 500 ms).
 * - The same imd SIGSTOPped for 1 s by the test: a probe fell due while it was stopped, so the
 *   worst lag is at least 950 ms (1 s less one period and slack: a lower bound, never a timing
 *   assumption), over_10ms and over_50ms count it, and STATS says the same as /metrics.
 * - loop_probe_ms = 0: no probe is served.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "itest.h"

#define STOP_MS 1000
#define PERIOD_MS 10

/* Value of the sample "imd_<name> value" in a /metrics body; fails the test when absent. */
static long long metric(const char *text, const char *name)
{
    char want[96];
    snprintf(want, sizeof want, "imd_%s ", name);
    size_t l = strlen(want);
    for (const char *s = text; s && *s;) {
        if (strncmp(s, want, l) == 0)
            return atoll(s + l);
        s = strchr(s, '\n');
        if (s)
            s++;
    }
    IT_CHECK(0, "/metrics has no %s", want);
    return -1;
}

typedef struct lag {
    long long probes, total_us, max_us, wake_max_us, serve_max_us, over_1ms, over_10ms, over_50ms;
} lag;

static lag scrape(const imd_proc *p)
{
    static char http[1 << 16];
    int n = it_http_get(p->metrics_port, "/metrics", http, sizeof http);
    IT_CHECK(n > 0 && strstr(http, " 200 ") != NULL, "GET /metrics failed: %.80s", http);
    lag l;
    l.probes = metric(http, "loop_lag_probes");
    l.total_us = metric(http, "loop_lag_us_total");
    l.max_us = metric(http, "loop_lag_us_max");
    l.wake_max_us = metric(http, "loop_probe_wake_us_max");
    l.serve_max_us = metric(http, "loop_serve_us_max");
    l.over_1ms = metric(http, "loop_lag_over_1ms");
    l.over_10ms = metric(http, "loop_lag_over_10ms");
    l.over_50ms = metric(http, "loop_lag_over_50ms");
    /* maxima are gauges, counts are counters (Prometheus TYPE lines) */
    IT_CHECK(strstr(http, "# TYPE imd_loop_lag_us_max gauge") != NULL &&
                 strstr(http, "# TYPE imd_loop_probe_wake_us_max gauge") != NULL &&
                 strstr(http, "# TYPE imd_loop_serve_us_max gauge") != NULL &&
                 strstr(http, "# TYPE imd_loop_lag_probes counter") != NULL,
             "/metrics TYPE lines of the loop_* values");
    return l;
}

static void note_lag(const char *when, const lag *l)
{
    it_note("%s: probes %lld, mean %.0f us, max %lld us (probe thread's part %lld us), loop's "
            "part max %lld us, over 1 ms %lld, over 10 ms %lld, over 50 ms %lld",
            when, l->probes, l->probes ? (double)l->total_us / (double)l->probes : 0.0, l->max_us,
            l->wake_max_us, l->serve_max_us, l->over_1ms, l->over_10ms, l->over_50ms);
}

static void test_idle_then_stopped(void **state)
{
    (void)state;
    static const char *const args[] = {"--metrics", "127.0.0.1:0", "--set", "loop_probe_ms=10ms",
                                       NULL};
    imd_proc *p = it_create_imd(args);
    static const char *const add_root[] = {"user", "add", "root", "--admin", NULL};
    IT_EQ(it_admin(p, "root password\n", NULL, 0, add_root), 0);
    it_start(p);
    long pid = (long)p->pid;
    IT_CHECK(p->metrics_port > 0, "no metrics port");

    /* idle: one second of probes */
    lag a = scrape(p);
    uint64_t t0 = it_now_ms();
    it_sleep_ms(1000);
    lag b = scrape(p);
    uint64_t idle_ms = it_now_ms() - t0;
    note_lag("idle imd, 1 s", &b);
    long long served = b.probes - a.probes;
    IT_CHECK(served >= 20 && served <= (long long)idle_ms / PERIOD_MS + 2,
             "%lld probes served in %llu ms at one per %d ms", served, (unsigned long long)idle_ms,
             PERIOD_MS);
    double mean_us = (double)(b.total_us - a.total_us) / (double)served;
    IT_CHECK(mean_us < 10000, "idle: mean lag %.0f us", mean_us);
    IT_CHECK(b.max_us < 500000, "idle: worst lag %lld us", b.max_us);
    IT_CHECK(b.over_50ms <= b.over_10ms && b.over_10ms <= b.over_1ms && b.over_1ms <= b.probes,
             "over counters out of order");
    IT_CHECK(b.wake_max_us <= b.max_us, "wake part %lld > max %lld", b.wake_max_us, b.max_us);
    IT_CHECK(b.serve_max_us <= b.max_us, "loop part %lld > max %lld", b.serve_max_us, b.max_us);

    /* stopped for STOP_MS: the loop (the whole process) serves nothing meanwhile */
    IT_EQ(kill(p->pid, SIGSTOP), 0);
    it_sleep_ms(STOP_MS);
    IT_EQ(kill(p->pid, SIGCONT), 0);
    /* the late probe is served at once after SIGCONT; wait (bounded) until it shows */
    lag c = scrape(p);
    for (uint64_t until = it_now_ms() + 5000; c.probes < b.probes + 2 && it_now_ms() < until;) {
        it_sleep_ms(20);
        c = scrape(p);
    }
    note_lag("after a 1 s SIGSTOP", &c);
    IT_CHECK(c.max_us >= (STOP_MS - 50) * 1000LL, "worst lag %lld us after a %d ms stop", c.max_us,
             STOP_MS);
    IT_CHECK(c.over_50ms >= b.over_50ms + 1 && c.over_10ms >= b.over_10ms + 1,
             "over_50ms %lld -> %lld, over_10ms %lld -> %lld", b.over_50ms, c.over_50ms,
             b.over_10ms, c.over_10ms);
    IT_CHECK(c.wake_max_us <= c.max_us, "wake part %lld > max %lld", c.wake_max_us, c.max_us);

    /* STATS (an administrator's session) reports the same counters */
    tc *root = it_login(p->port, "root", "root password", NULL);
    long long smax = it_stat(root, "loop_lag_us_max");
    long long sprobes = it_stat(root, "loop_lag_probes");
    IT_CHECK(smax >= c.max_us, "STATS loop_lag_us_max %lld < /metrics %lld", smax, c.max_us);
    IT_CHECK(sprobes >= c.probes, "STATS loop_lag_probes %lld < %lld", sprobes, c.probes);
    IT_CHECK(it_stat(root, "loop_lag_over_50ms") >= c.over_50ms, "STATS loop_lag_over_50ms");
    IT_CHECK(it_stat(root, "loop_lag_over_10ms") >= c.over_10ms, "STATS loop_lag_over_10ms");
    IT_CHECK(it_stat(root, "loop_lag_over_1ms") >= c.over_1ms, "STATS loop_lag_over_1ms");
    IT_CHECK(it_stat(root, "loop_lag_us_total") >= c.total_us, "STATS loop_lag_us_total");
    IT_CHECK(it_stat(root, "loop_probe_wake_us_max") >= 0, "STATS loop_probe_wake_us_max");
    tc_close(root);

    it_liveness(p, pid, NULL, NULL, NULL, NULL);
    it_finish(p);
}

static void test_probe_off(void **state)
{
    (void)state;
    static const char *const args[] = {"--metrics", "127.0.0.1:0", "--set", "loop_probe_ms=0",
                                       NULL};
    imd_proc *p = it_start_imd(args);
    long pid = (long)p->pid;
    IT_CHECK(p->metrics_port > 0, "no metrics port");
    it_sleep_ms(300);
    lag a = scrape(p);
    IT_EQ(a.probes, 0);
    IT_EQ(a.max_us, 0);
    IT_EQ(a.over_1ms, 0);
    it_liveness(p, pid, NULL, NULL, NULL, NULL);
    it_finish(p);
}

int main(void)
{
    it_main_init(120);
    if (!it_imd_or_skip())
        return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_idle_then_stopped, it_teardown),
        cmocka_unit_test_teardown(test_probe_off, it_teardown),
    };
    return cmocka_run_group_tests_name("integration: event-loop lag probe", tests, NULL, NULL);
}
