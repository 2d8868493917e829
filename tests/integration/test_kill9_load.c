/* Integration (issue 6): kill -9 under load.
 *
 * 50 senders x 2,000 messages (100,000; $IMP_KILL9_MESSAGES overrides) to 50 recipients, half
 * of them offline until the sending has ended (imload --late-receivers 25), --ack stored, open
 * loop; imd is SIGKILLed 5 times at spread-out moments during the sends and restarted each time
 * on the same data directory and port (imd_keep_port); imload reconnects and resends what was
 * not acknowledged with the same CLIENT_MSG_IDs (--reconnect) and must finish on its own with
 * exit status 0. Then the independent checker over imload's per-message history
 * (imload --check) must find: every message acknowledged (acked = sent = N) and delivered,
 * lost 0, unexpected 0, duplicates 0 (the server's CLIENT_MSG_ID dedupe held across the
 * crashes), reordered 0 (order kept per sender/receiver pair, IMP-DELIV-006); and after a clean
 * stop, SQLite's PRAGMA integrity_check on imd's database says "ok".
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <fcntl.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "itest.h"

#define KILLS 5
#define SENDERS 50
#define RECEIVERS 50
#define LATE 25

static char tmpdir[] = "/tmp/imp_kill9_XXXXXX";

/* The number after "key " in s (-1 when absent). */
static double field(const char *s, const char *key)
{
    char k[64];
    snprintf(k, sizeof k, " %s ", key);
    const char *p = strstr(s, k);
    return p ? strtod(p + strlen(k), NULL) : -1;
}

/* The number after "\"key\":" in a JSON text (-1 when absent). */
static double json_num(const char *s, const char *key)
{
    char k[64];
    snprintf(k, sizeof k, "\"%s\":", key);
    const char *p = strstr(s, k);
    return p ? strtod(p + strlen(k), NULL) : -1;
}

/* Run argv (argv[0] is the program) with stdout and stderr into files; returns the pid. */
static pid_t spawn(const char *const *argv, const char *out, const char *err)
{
    pid_t pid = fork();
    IT_CHECK(pid >= 0, "fork");
    if (pid == 0) {
        int in = open("/dev/null", O_RDONLY);
        int o = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        int e = open(err, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (in < 0 || o < 0 || e < 0)
            _exit(120);
        dup2(in, 0);
        dup2(o, 1);
        dup2(e, 2);
        unsetenv("IMP_SERVER");
        unsetenv("IMLOAD_PASSWORD");
        execv(argv[0], (char *const *)argv);
        _exit(121);
    }
    return pid;
}

/* The last "sent N" of imload's progress lines (-1: none yet). */
static long long progress_sent(const char *errlog)
{
    char *s = it_slurp(errlog, NULL);
    long long v = -1;
    for (const char *p = strstr(s, " sent "); p; p = strstr(p + 1, " sent "))
        v = atoll(p + 6);
    free(s);
    return v;
}

static void integrity_check(const char *db)
{
    sqlite3 *h = NULL;
    int rc = sqlite3_open_v2(db, &h, SQLITE_OPEN_READONLY, NULL);
    IT_CHECK(rc == SQLITE_OK, "open %s: %s", db, h ? sqlite3_errmsg(h) : "?");
    sqlite3_stmt *st = NULL;
    rc = sqlite3_prepare_v2(h, "PRAGMA integrity_check", -1, &st, NULL);
    IT_CHECK(rc == SQLITE_OK, "prepare: %s", sqlite3_errmsg(h));
    char first[200] = "";
    int rows = 0;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (!rows++)
            snprintf(first, sizeof first, "%s", (const char *)sqlite3_column_text(st, 0));
    }
    IT_CHECK(rc == SQLITE_DONE, "integrity_check: %s", sqlite3_errmsg(h));
    sqlite3_finalize(st);
    sqlite3_close(h);
    it_note("PRAGMA integrity_check: %s (%d row%s)", first, rows, rows == 1 ? "" : "s");
    IT_CHECK(rows == 1 && !strcmp(first, "ok"), "integrity_check: %s (%d rows)", first, rows);
}

static void test_kill9_load(void **state)
{
    (void)state;
    long long n = 100000;
    const char *env = getenv("IMP_KILL9_MESSAGES");
    if (env && *env) {
        n = atoll(env);
        IT_CHECK(n >= SENDERS, "IMP_KILL9_MESSAGES=%s: at least %d", env, SENDERS);
    }
    /* open loop: the sends take about 20 s whatever the size, so that the kills fall inside */
    long long rate = n / 20 > 100 ? n / 20 : 100;
    char quota[64];
    snprintf(quota, sizeof quota, "offline_quota=%lld", n / RECEIVERS * 2 + 1000);
    const char *extra[] = {
        "--set", "msg_rate=1000000", "--set", "msg_burst=1000000", "--set", quota, NULL};
    imd_proc *p = it_start_imd(extra);
    imd_keep_port(p);

    char server[64], count[32], rates[32], hist[300], json[300], out[300], err[300];
    snprintf(server, sizeof server, "127.0.0.1:%d", p->port);
    snprintf(count, sizeof count, "%lld", n);
    snprintf(rates, sizeof rates, "%lld", rate);
    snprintf(hist, sizeof hist, "%s/history", tmpdir);
    snprintf(json, sizeof json, "%s/result.json", tmpdir);
    snprintf(out, sizeof out, "%s/imload.out", tmpdir);
    snprintf(err, sizeof err, "%s/imload.err", tmpdir);
    char imload[400];
    snprintf(imload, sizeof imload, "%s", it_tool_path("imload"));
    const char *argv[] = {imload,        "-s",        server,
                          "direct",      "--senders", "50",
                          "--receivers", "50",        "--late-receivers",
                          "25",          "-n",        count,
                          "-r",          rates,       "--warmup",
                          "0",           "--ack",     "stored",
                          "--reconnect", "--history", hist,
                          "--drain",     "60s",       "--setup-timeout",
                          "60s",         "--prefix",  "k9",
                          "--json",      json,        NULL};
    uint64_t t0 = it_now_ms();
    pid_t ip = spawn(argv, out, err);
    it_note("imload: %lld messages at %lld/s, %d senders -> %d receivers (%d offline)", n, rate,
            SENDERS, RECEIVERS, LATE);

    /* the kills: spread over the ~20 s of sending, at 1/6, 2/6, ... 5/6 of it, each followed by
     * a restart on the same data and port. The run starts about 1 s before imload's first
     * progress line. */
    uint64_t bound = it_now_ms() + 90000;
    while (progress_sent(err) < 0 && it_now_ms() < bound) {
        IT_CHECK(waitpid(ip, NULL, WNOHANG) == 0, "imload ended early: %s", it_slurp(err, NULL));
        it_sleep_ms(20);
    }
    IT_CHECK(progress_sent(err) >= 0, "imload made no progress: %s", it_slurp(err, NULL));
    uint64_t t_run = it_now_ms() - 1000;
    it_note("imload set up in %.1f s", (double)(t_run - t0) / 1000.0);
    for (int k = 0; k < KILLS; k++) {
        uint64_t at = t_run + (uint64_t)(k + 1) * 20000u / (KILLS + 1);
        if (it_now_ms() < at)
            it_sleep_ms((unsigned)(at - it_now_ms()));
        long long sent = progress_sent(err);
        IT_CHECK(sent < n, "kill %d during the sends (imload had sent %lld of %lld)", k + 1, sent,
                 n);
        uint64_t tk = it_now_ms();
        imd_kill9(p);
        it_sleep_ms(200);
        IT_CHECK(imd_start(p) == 0, "restart %d", k + 1);
        uint64_t tr = it_now_ms();
        it_note("kill %d at %.1f s of the run (imload had sent about %lld): restarted in %llu ms",
                k + 1, (double)(tk - t_run) / 1000.0, sent, (unsigned long long)(tr - tk));
    }
    /* imload finishes on its own: the rest of the sends, resends, the late receivers' queues */
    int st = it_wait_exit(ip, 150000);
    uint64_t t_end = it_now_ms();
    char *e = it_slurp(err, NULL), *o = it_slurp(out, NULL), *j = it_slurp(json, NULL);
    IT_CHECK(st == 0, "imload exit %d; stderr: %s; stdout: %s", st, e, o);
    it_note("imload done in %.1f s: sent %.0f acked %.0f delivered %.0f reconnects %.0f "
            "connection errors %.0f",
            (double)(t_end - t0) / 1000.0, json_num(j, "sent"), json_num(j, "acked"),
            json_num(j, "delivered"), json_num(j, "reconnects"), json_num(j, "connection"));
    IT_CHECK(json_num(j, "reconnects") > 0, "imload reconnected: %s", j);
    free(e);
    free(o);
    free(j);

    /* the independent checker */
    char cout[300], cerr[300];
    snprintf(cout, sizeof cout, "%s/check.out", tmpdir);
    snprintf(cerr, sizeof cerr, "%s/check.err", tmpdir);
    const char *cargv[] = {imload, "--check", hist, NULL};
    uint64_t tc0 = it_now_ms();
    int cst = it_wait_exit(spawn(cargv, cout, cerr), 60000);
    char *co = it_slurp(cout, NULL), *ce = it_slurp(cerr, NULL);
    it_note("%.*s(%llu ms)", (int)strcspn(co, "\n") + 1, co,
            (unsigned long long)(it_now_ms() - tc0));
    IT_CHECK(cst == 0, "imload --check exit %d: %s%s", cst, co, ce);
    IT_CHECK(!strncmp(co, "check: ", 7), "summary: %s", co);
    IT_EQ(field(co, "sent"), n);
    IT_EQ(field(co, "acked"), n);
    IT_EQ(field(co, "refused"), 0);
    IT_EQ(field(co, "delivered"), n);
    IT_EQ(field(co, "lost"), 0);
    IT_EQ(field(co, "duplicates"), 0);
    IT_EQ(field(co, "reordered"), 0);
    IT_EQ(field(co, "unexpected"), 0);
    it_note("resent %.0f, redelivered %.0f", field(co, "resent"), field(co, "redelivered"));
    IT_CHECK(field(co, "resent") >= 0, "resent: %s", co);
    free(co);
    free(ce);

    /* a clean stop, the database's integrity, then the usual end */
    IT_EQ(imd_stop(p, 10000), 0);
    char db[400];
    snprintf(db, sizeof db, "%s/imd.db", p->data);
    integrity_check(db);
    IT_CHECK(imd_start(p) == 0, "start after the integrity check");
    it_liveness(p, (long)p->pid, NULL, NULL, NULL, NULL);
    it_finish(p);
}

int main(void)
{
    it_main_init(300);
    if (!it_imd_or_skip())
        return 0;
    if (access(it_tool_path("imload"), X_OK) != 0) {
        fprintf(stderr, "imload not found at %s\n", it_tool_path("imload"));
        return 1;
    }
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_kill9_load, it_teardown),
    };
    int r = cmocka_run_group_tests(tests, NULL, NULL);
    if (!getenv("IMP_ITEST_KEEP")) {
        char cmd[300];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
        if (system(cmd) != 0)
            fprintf(stderr, "cannot remove %s\n", tmpdir);
    }
    return r;
}
