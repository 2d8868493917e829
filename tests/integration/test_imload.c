/* Integration: the imload tool ($IMP_BUILD_DIR/imload) against a real imd, in short and small
 * configurations (a few seconds each, loopback only).
 *
 * - direct with --ack stored: lost 0, duplicated 0, sent = acked = delivered; the --json file
 *   is valid JSON and has the documented keys; a room run: delivered = acked x members;
 * - --assert: passing -> 0, failing -> 1, malformed -> 2; other exit statuses: 2 usage,
 *   3 nothing listening;
 * - --ack none and imd SIGKILLed mid-run (not restarted): imload ends in bounded time and
 *   reports lost > 0 or errors > 0;
 * - durable acks with --reconnect and imd killed -9 then restarted on the same data directory
 *   and port: every acknowledged message is delivered (lost 0), none twice;
 * - --procs 2 --threads 2 merged into one report; three runs in a row on the same accounts (no
 *   address ban: one probe, not one refused REGISTER per account);
 * - churn (exact counts), login, broadcast by an administrator (fan-out), idle with --ramp;
 * - the built-in sink (--sink): counts consistent with --ack stored and a closed loop;
 * - TLS (issue 6): --cafile (counts exact), --insecure, verification failures (no CA: the
 *   system store; a wrong --tls-name; TLS to a plain listener) exit 3 with the reason, bad
 *   options exit 2; imd's throughput plain vs TLS measured (it_note);
 * - --history with --late-receivers: the late receivers get their messages only after the
 *   sending ended, every one of them; imload --check on the history agrees (exit 0, exact
 *   counts), and a history with a line removed makes it exit 1.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "itest.h"
#include "json_check.h"

static char tmpdir[] = "/tmp/imload_test_XXXXXX";

typedef struct proc {
    pid_t pid;
    char out[300], err[300], json[300];
} proc;

/* Start imload ARGS (argv[0] added) with its output in files; -s 127.0.0.1:port when port > 0,
 * --json FILE added. */
static void spawn(proc *p, int port, const char *const *args)
{
    static int seq;
    seq++;
    snprintf(p->out, sizeof p->out, "%s/out.%d", tmpdir, seq);
    snprintf(p->err, sizeof p->err, "%s/err.%d", tmpdir, seq);
    snprintf(p->json, sizeof p->json, "%s/result.%d.json", tmpdir, seq);
    char server[64];
    snprintf(server, sizeof server, "127.0.0.1:%d", port);
    p->pid = fork();
    IT_CHECK(p->pid >= 0, "fork");
    if (p->pid == 0) {
        int in = open("/dev/null", O_RDONLY);
        int out = open(p->out, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        int err = open(p->err, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (in < 0 || out < 0 || err < 0)
            _exit(120);
        dup2(in, 0);
        dup2(out, 1);
        dup2(err, 2);
        unsetenv("IMP_SERVER");
        unsetenv("IMLOAD_PASSWORD");
        const char *argv[80];
        int n = 0;
        argv[n++] = it_tool_path("imload");
        if (port > 0) {
            argv[n++] = "-s";
            argv[n++] = server;
        }
        argv[n++] = "--json";
        argv[n++] = p->json;
        for (size_t i = 0; args[i] && n < 78; i++)
            argv[n++] = args[i];
        argv[n] = NULL;
        execv(argv[0], (char *const *)argv);
        _exit(121);
    }
}

typedef struct result {
    int status;
    char *out, *err, *json;
} result;

static void result_free(result *r)
{
    free(r->out);
    free(r->err);
    free(r->json);
}

static result collect(proc *p, int timeout_ms)
{
    result r;
    r.status = it_wait_exit(p->pid, timeout_ms);
    r.out = it_slurp(p->out, NULL);
    r.err = it_slurp(p->err, NULL);
    r.json = it_slurp(p->json, NULL);
    return r;
}

static result run(int port, const char *const *args, int timeout_ms)
{
    proc p;
    spawn(&p, port, args);
    return collect(&p, timeout_ms);
}

#define EXPECT_STATUS(r, want)                                                                    \
    IT_CHECK((r).status == (want), "imload exit %d, want %d; stderr: %s; stdout: %s", (r).status, \
             (want), (r).err, (r).out)

/* ---- JSON key lookup (the syntax check is tests/support/json_check.c)
 * ---------------------------------------------------- */

/* The number after the first "key": at or after `from` (NULL: from the start); -1 if absent. */
static double json_num(const char *s, const char *key)
{
    char k[80];
    snprintf(k, sizeof k, "\"%s\":", key);
    const char *p = strstr(s, k);
    if (!p)
        return -1;
    return strtod(p + strlen(k), NULL);
}

/* The measured rate (the top-level "rate", after "elapsed_s"; config.rate comes first). */
static double json_rate(const char *s)
{
    const char *p = strstr(s, "\"elapsed_s\":");
    return p ? json_num(p, "rate") : -1;
}

static const char *json_obj(const char *s, const char *key)
{
    char k[80];
    snprintf(k, sizeof k, "\"%s\":{", key);
    const char *p = strstr(s, k);
    return p ? p + strlen(k) - 1 : NULL;
}

static const char *const fast_imd[] = {"--set", "msg_rate=100000", "--set", "msg_burst=100000",
                                       NULL};

/* ---- tests --------------------------------------------------------------------------------- */

static void test_direct_stored_json(void **state)
{
    (void)state;
    imd_proc *p = it_start_imd(fast_imd);
    static const char *const args[] = {"-q",       "direct", "-c",       "4",     "-r",    "2000",
                                       "-t",       "1s",     "--warmup", "200ms", "--ack", "stored",
                                       "--prefix", "jd",     "--csv",    NULL,    NULL};
    char csv[300];
    snprintf(csv, sizeof csv, "%s/r.csv", tmpdir);
    const char *a[20];
    memcpy(a, args, sizeof args);
    a[15] = csv;
    uint64_t t = it_now_ms();
    result r = run(p->port, a, 30000);
    it_note("direct --ack stored: %llu ms", (unsigned long long)(it_now_ms() - t));
    EXPECT_STATUS(r, 0);
    IT_CHECK(json_check(r.json), "invalid JSON: %s", r.json);
    static const char *const keys[] = {"rate", "sent",       "acked",     "delivered",
                                       "lost", "duplicated", "reordered", "errors"};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
        IT_CHECK(json_num(r.json, keys[i]) >= 0, "key %s missing: %s", keys[i], r.json);
    const char *lat = json_obj(r.json, "latency");
    IT_CHECK(lat != NULL, "no latency object");
    const char *ack = json_obj(lat, "ack"), *del = json_obj(lat, "delivery");
    IT_CHECK(ack && del, "no latency.ack / latency.delivery");
    static const char *const lk[] = {"p50", "p90", "p99", "p999", "max"};
    for (size_t i = 0; i < 5; i++) {
        IT_CHECK(json_num(ack, lk[i]) > 0, "latency.ack.%s", lk[i]);
        IT_CHECK(json_num(del, lk[i]) > 0, "latency.delivery.%s", lk[i]);
    }
    IT_CHECK(json_num(ack, "p50") <= json_num(ack, "p99"), "p50 <= p99");
    IT_CHECK(json_num(ack, "p99") <= json_num(ack, "max"), "p99 <= max");
    double sent = json_num(r.json, "sent");
    IT_CHECK(sent >= 2000, "sent %.0f", sent);
    IT_EQ(json_num(r.json, "acked"), sent);
    IT_EQ(json_num(r.json, "delivered"), sent);
    IT_EQ(json_num(r.json, "lost"), 0);
    IT_EQ(json_num(r.json, "duplicated"), 0);
    IT_EQ(json_num(r.json, "reordered"), 0);
    IT_EQ(json_num(r.json, "errors"), 0);
    double rate = json_rate(r.json);
    IT_CHECK(rate > 500 && rate < 2500, "rate %.1f (target 2000)", rate);
    IT_CHECK(strstr(r.json, "\"agent\":\"imd/") != NULL, "server agent: %s", r.json);
    IT_CHECK(strstr(r.json, "\"pairs\":[]") != NULL, "no anomalous pair: %s", r.json);
    IT_CHECK(strstr(r.out, "lost") && strstr(r.out, "p99.9"), "report table: %s", r.out);
    char *c = it_slurp(csv, NULL);
    IT_CHECK(strncmp(c, "scenario,", 9) == 0 && strstr(c, "\ndirect,4,2,2,"), "csv: %s", c);
    free(c);
    result_free(&r);
    it_finish(p);
}

static void test_room_and_closed_loop(void **state)
{
    (void)state;
    imd_proc *p = it_start_imd(fast_imd);
    static const char *const room[] = {"-q",       "room", "-c",        "3",  "--senders",
                                       "2",        "-n",   "300",       "-w", "8",
                                       "--prefix", "rm",   "--prepare", NULL};
    result r = run(p->port, room, 30000);
    EXPECT_STATUS(r, 0);
    double acked = json_num(r.json, "acked");
    IT_EQ(acked, 300);
    IT_EQ(json_num(r.json, "sent"), 300);
    IT_EQ(json_num(r.json, "delivered"), 3 * 300);
    IT_EQ(json_num(r.json, "lost"), 0);
    IT_EQ(json_num(r.json, "duplicated"), 0);
    result_free(&r);
    it_finish(p);
}

static void test_assert_and_usage(void **state)
{
    (void)state;
    imd_proc *p = it_start_imd(fast_imd);
    static const char *const pass[] = {"-q",       "direct",    "-r",       "500",      "-t",
                                       "500ms",    "--warmup",  "100ms",    "--assert", "lost=0",
                                       "--assert", "rate>=100", "--assert", "p99<30s",  "--assert",
                                       "sent>0",   NULL};
    result r = run(p->port, pass, 30000);
    EXPECT_STATUS(r, 0);
    result_free(&r);
    static const char *const fail[] = {"-q",       "direct",   "-r",    "500",      "-t",
                                       "500ms",    "--warmup", "100ms", "--assert", "lost=0",
                                       "--assert", "p99<1ns",  NULL};
    r = run(p->port, fail, 30000);
    EXPECT_STATUS(r, 1);
    IT_CHECK(strstr(r.err, "p99<1ns") && strstr(r.err, "FAILED"), "message: %s", r.err);
    IT_CHECK(json_check(r.json), "JSON written even when an assert fails");
    result_free(&r);
    static const char *const rate_fail[] = {"-q",       "direct",       "-r",       "200",
                                            "-t",       "300ms",        "--warmup", "0",
                                            "--assert", "rate>=100000", NULL};
    r = run(p->port, rate_fail, 30000);
    EXPECT_STATUS(r, 1);
    result_free(&r);
    /* usage errors: 2 */
    static const char *const bad[][6] = {
        {"direct", "--assert", "p99<<2ms", NULL},
        {"direct", "--assert", "bogus=1", NULL},
        {"nosuchscenario", NULL},
        {"-r", "100", NULL},
        {"direct", "-r", "100", "-w", "5", NULL},
        {"direct", "--ack", "sometimes", NULL},
        {"direct", "-r", "0", NULL},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        r = run(p->port, bad[i], 10000);
        EXPECT_STATUS(r, 2);
        result_free(&r);
    }
    /* nothing listening: 3 */
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t sl = sizeof sa;
    IT_CHECK(bind(s, (struct sockaddr *)&sa, sizeof sa) == 0, "bind");
    getsockname(s, (struct sockaddr *)&sa, &sl);
    int free_port = ntohs(sa.sin_port);
    close(s);
    static const char *const conn[] = {"-q", "direct", "-t", "1s", NULL};
    r = run(free_port, conn, 20000);
    EXPECT_STATUS(r, 3);
    result_free(&r);
    it_finish(p);
}

/* --ack none, imd killed and not restarted: the messages after the kill are lost or the
 * connections errored, and imload ends on its own. */
static void test_kill_ack_none(void **state)
{
    (void)state;
    imd_proc *p = it_start_imd(fast_imd);
    static const char *const args[] = {"-q",      "direct", "-c",       "2",  "-r",    "2000",
                                       "-t",      "3s",     "--warmup", "0",  "--ack", "none",
                                       "--drain", "1s",     "--prefix", "kn", NULL};
    proc ip;
    spawn(&ip, p->port, args);
    it_sleep_ms(1500);
    imd_kill9(p);
    uint64_t t = it_now_ms();
    result r = collect(&ip, 20000);
    it_note("imload ended %llu ms after the kill, status %d", (unsigned long long)(it_now_ms() - t),
            r.status);
    IT_CHECK(r.status >= 0, "imload hung after imd was killed");
    IT_CHECK(r.status == 7 || r.status == 0, "status %d; stderr %s", r.status, r.err);
    IT_CHECK(json_check(r.json), "JSON: %s", r.json);
    double lost = json_num(r.json, "lost"), errors = json_num(r.json, "errors");
    IT_CHECK(lost > 0 || errors > 0, "lost %.0f errors %.0f", lost, errors);
    if (lost > 0)
        IT_CHECK(strstr(r.json, "\"pairs\":[{\"sender\":\"kns") != NULL, "pairs: %s", r.json);
    IT_CHECK(json_num(r.json, "sent") > 0, "sent");
    result_free(&r);
}

static int free_tcp_port(void)
{
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t sl = sizeof sa;
    if (bind(s, (struct sockaddr *)&sa, sizeof sa) != 0)
        return -1;
    getsockname(s, (struct sockaddr *)&sa, &sl);
    close(s);
    return ntohs(sa.sin_port);
}

/* Durable acks, imd kill -9 and restart on the same data and port, imload reconnecting and
 * resending what was not acknowledged with the same CLIENT_MSG_ID: nothing lost, nothing twice. */
static void test_restart_durable(void **state)
{
    (void)state;
    int port = free_tcp_port();
    IT_CHECK(port > 0, "a free port");
    char listen[64];
    snprintf(listen, sizeof listen, "127.0.0.1:%d", port);
    const char *extra[] = {
        "--set", "msg_rate=100000", "--set", "msg_burst=100000", "--listen", listen, NULL};
    imd_proc *p = it_start_imd(extra);
    static const char *const args[] = {
        "direct", "-c",     "4",           "-r",      "400", "-t",       "3s", "--warmup", "0",
        "--ack",  "stored", "--reconnect", "--drain", "10s", "--prefix", "rs", NULL};
    proc ip;
    spawn(&ip, port, args);
    it_sleep_ms(1500);
    imd_kill9(p);
    it_sleep_ms(300);
    it_start(p);
    result r = collect(&ip, 40000);
    EXPECT_STATUS(r, 0);
    IT_CHECK(json_check(r.json), "JSON: %s", r.json);
    double sent = json_num(r.json, "sent"), acked = json_num(r.json, "acked");
    it_note("restart: sent %.0f acked %.0f delivered %.0f reconnects %.0f errors %.0f", sent, acked,
            json_num(r.json, "delivered"), json_num(r.json, "reconnects"),
            json_num(r.json, "errors"));
    IT_CHECK(json_num(r.json, "reconnects") > 0, "reconnected: %s", r.err);
    IT_EQ(json_num(r.json, "lost"), 0);
    IT_EQ(json_num(r.json, "duplicated"), 0);
    IT_EQ(acked, sent);
    IT_EQ(json_num(r.json, "delivered"), sent);
    result_free(&r);
    it_finish(p);
}

/* --procs and --threads: results merged; the same accounts used twice (the second run must
 * log in, not collect a refused REGISTER per account, which would get the address banned). */
static void test_procs_threads_rerun(void **state)
{
    (void)state;
    imd_proc *p = it_start_imd(fast_imd);
    static const char *const direct[] = {"-q", "direct",    "-c",       "8",  "--procs",
                                         "2",  "--threads", "2",        "-n", "2000",
                                         "-w", "8",         "--prefix", "pt", NULL};
    for (int round = 0; round < 2; round++) {
        result r = run(p->port, direct, 30000);
        EXPECT_STATUS(r, 0);
        IT_EQ(json_num(r.json, "sent"), 2000);
        IT_EQ(json_num(r.json, "acked"), 2000);
        IT_EQ(json_num(r.json, "delivered"), 2000);
        IT_EQ(json_num(r.json, "lost"), 0);
        IT_EQ(json_num(r.json, "duplicated"), 0);
        IT_EQ(json_num(r.json, "procs"), 2);
        result_free(&r);
    }
    /* 24 accounts on two threads, three times: a run that let every connection try REGISTER
     * first would collect over 10 refusals per run and get the address banned */
    static const char *const idle[] = {
        "-q",       "idle",  "-c",       "24", "--threads",       "2",
        "-t",       "500ms", "--warmup", "0",  "--ping-interval", "100ms",
        "--prefix", "id",    NULL};
    for (int round = 0; round < 3; round++) {
        result r = run(p->port, idle, 30000);
        EXPECT_STATUS(r, 0);
        IT_EQ(json_num(r.json, "errors"), 0);
        IT_CHECK(json_num(r.json, "pongs") >= 24, "pongs: %s", r.json);
        result_free(&r);
    }
    it_finish(p);
}

/* The other scenarios, small: churn (counts exact), login, broadcast by an administrator
 * (every receiver gets every message), idle with --ramp. */
static void test_churn_login_broadcast(void **state)
{
    (void)state;
    imd_proc *p = it_create_imd(fast_imd);
    static const char *const add_root[] = {"user", "add", "root", "--admin", NULL};
    IT_EQ(it_admin(p, "root-password\n", NULL, 0, add_root), 0);
    it_start(p);
    static const char *const churn[] = {"-q", "churn", "--senders", "3",  "--receivers", "2",
                                        "-n", "30",    "--prefix",  "ch", NULL};
    result r = run(p->port, churn, 30000);
    EXPECT_STATUS(r, 0);
    IT_EQ(json_num(r.json, "sent"), 30);
    IT_EQ(json_num(r.json, "acked"), 30);
    IT_EQ(json_num(r.json, "delivered"), 30);
    IT_EQ(json_num(r.json, "lost"), 0);
    IT_EQ(json_num(r.json, "cycles"), 30);
    result_free(&r);
    static const char *const login[] = {"-q",       "login", "-c",       "2",  "-t", "500ms",
                                        "--warmup", "0",     "--prefix", "lg", NULL};
    r = run(p->port, login, 30000);
    EXPECT_STATUS(r, 0);
    IT_EQ(json_num(r.json, "errors"), 0);
    IT_CHECK(json_num(r.json, "cycles") >= 2 && json_rate(r.json) > 0, "logins: %s", r.json);
    result_free(&r);
    char pwfile[300];
    snprintf(pwfile, sizeof pwfile, "%s/root.pw", tmpdir);
    FILE *f = fopen(pwfile, "w");
    IT_CHECK(f != NULL, "write %s", pwfile);
    fputs("root-password\n", f);
    fclose(f);
    const char *bc[] = {"-q", "-u", "root", "--password-file", pwfile, "broadcast", "-c", "3", "-n",
                        "50", "-w", "4",    "--prefix",        "bc",   NULL};
    r = run(p->port, bc, 30000);
    EXPECT_STATUS(r, 0);
    IT_EQ(json_num(r.json, "acked"), 50);
    IT_EQ(json_num(r.json, "delivered"), 150);
    IT_EQ(json_num(r.json, "lost"), 0);
    result_free(&r);
    static const char *const ramp[] = {
        "-q",    "idle",     "-c", "10", "--ramp", "300ms", "-t", "600ms", "--ping-interval",
        "100ms", "--prefix", "rp", NULL};
    r = run(p->port, ramp, 30000);
    EXPECT_STATUS(r, 0);
    IT_EQ(json_num(r.json, "errors"), 0);
    result_free(&r);
    it_finish(p);
}

/* The sink: a closed loop with --ack stored, counts consistent. */
static void test_sink(void **state)
{
    (void)state;
    char log[300];
    snprintf(log, sizeof log, "%s/sink.log", tmpdir);
    pid_t sp = fork();
    IT_CHECK(sp >= 0, "fork");
    if (sp == 0) {
        int err = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        dup2(err, 2);
        execl(it_tool_path("imload"), it_tool_path("imload"), "--sink", "--listen", "127.0.0.1:0",
              (char *)NULL);
        _exit(121);
    }
    int port = 0;
    for (int i = 0; i < 200 && !port; i++) {
        it_sleep_ms(10);
        char *s = it_slurp(log, NULL);
        const char *q = strstr(s, "127.0.0.1:");
        if (q)
            port = atoi(q + 10);
        free(s);
    }
    IT_CHECK(port > 0, "sink port");
    static const char *const args[] = {"-q", "direct", "-c", "4", "-n", "50000", "-w", "64", NULL};
    result r = run(port, args, 30000);
    kill(sp, SIGTERM);
    int st;
    waitpid(sp, &st, 0);
    EXPECT_STATUS(r, 0);
    IT_EQ(json_num(r.json, "sent"), 50000);
    IT_EQ(json_num(r.json, "acked"), 50000);
    IT_EQ(json_num(r.json, "delivered"), 50000);
    IT_EQ(json_num(r.json, "lost"), 0);
    IT_CHECK(strstr(r.json, "imload-sink") != NULL, "agent");
    result_free(&r);
}

/* The plain closed-loop throughput of one port (delivered msg/s), for the notes. */
static double closed_loop_rate(int port, const char *prefix, const char *tls_opt,
                               const char *tls_arg)
{
    const char *a[20];
    int n = 0;
    a[n++] = "-q";
    if (tls_opt) {
        a[n++] = tls_opt;
        if (tls_arg)
            a[n++] = tls_arg;
    }
    static const char *const rest[] = {"direct", "-c", "20", "-r",       "0",     "-w",
                                       "50",     "-t", "2s", "--warmup", "500ms", "--prefix"};
    for (size_t i = 0; i < sizeof rest / sizeof rest[0]; i++)
        a[n++] = rest[i];
    a[n++] = prefix;
    a[n] = NULL;
    result r = run(port, a, 60000);
    EXPECT_STATUS(r, 0);
    IT_EQ(json_num(r.json, "lost"), 0);
    IT_EQ(json_num(r.json, "errors"), 0);
    double rate = json_rate(r.json);
    result_free(&r);
    return rate;
}

static void test_tls(void **state)
{
    (void)state;
    char cert[300], key[300];
    it_make_cert(tmpdir, cert, sizeof cert, key, sizeof key);
    const char *extra[] = {
        "--set",       "msg_rate=1000000", "--set", "msg_burst=1000000", "--tls-listen",
        "127.0.0.1:0", "--tls-cert",       cert,    "--tls-key",         key,
        NULL};
    imd_proc *p = it_start_imd(extra);
    IT_CHECK(p->tls_port > 0, "imd announced a TLS listener");
    /* verified against the certificate as CA: exact counts, JSON says tls */
    const char *ok[] = {"-q",   "--cafile", cert, "direct",   "-c", "4", "-n",
                        "3000", "-w",       "16", "--prefix", "tl", NULL};
    result r = run(p->tls_port, ok, 30000);
    EXPECT_STATUS(r, 0);
    IT_EQ(json_num(r.json, "sent"), 3000);
    IT_EQ(json_num(r.json, "acked"), 3000);
    IT_EQ(json_num(r.json, "delivered"), 3000);
    IT_EQ(json_num(r.json, "lost"), 0);
    IT_EQ(json_num(r.json, "errors"), 0);
    IT_CHECK(strstr(r.json, "\"tls\":true") != NULL, "tls in the JSON config: %s", r.json);
    result_free(&r);
    /* open loop, several threads, --insecure */
    static const char *const insecure[] = {"-q", "--insecure", "direct", "-c", "6",  "--threads",
                                           "2",  "-r",         "3000",   "-t", "1s", "--warmup",
                                           "0",  "--prefix",   "ti",     NULL};
    r = run(p->tls_port, insecure, 30000);
    EXPECT_STATUS(r, 0);
    IT_CHECK(json_num(r.json, "sent") >= 2500, "sent %.0f", json_num(r.json, "sent"));
    IT_EQ(json_num(r.json, "delivered"), json_num(r.json, "sent"));
    IT_EQ(json_num(r.json, "lost"), 0);
    result_free(&r);
    /* the system's trust store does not know this certificate: exit 3, with the reason */
    static const char *const untrusted[] = {"--tls", "direct", "-c", "2", "-n", "10", NULL};
    r = run(p->tls_port, untrusted, 30000);
    EXPECT_STATUS(r, 3);
    IT_CHECK(strstr(r.err, "certificate verify failed"), "reason: %s", r.err);
    result_free(&r);
    /* the name does not match the certificate (even with --reconnect: not retried) */
    const char *wrong_name[] = {"--cafile",    cert,     "--tls-name", "wrong.example",
                                "--reconnect", "direct", "-c",         "2",
                                "-n",          "10",     NULL};
    uint64_t t = it_now_ms();
    r = run(p->tls_port, wrong_name, 30000);
    EXPECT_STATUS(r, 3);
    IT_CHECK(strstr(r.err, "certificate verify failed"), "reason: %s", r.err);
    IT_CHECK(it_now_ms() - t < 20000, "a verification failure is not retried");
    result_free(&r);
    /* the right name given explicitly */
    const char *right_name[] = {"-q",     "--cafile", cert,       "--tls-name", "localhost",
                                "direct", "-c",       "2",        "-n",         "10",
                                "-w",     "2",        "--prefix", "tn",         NULL};
    r = run(p->tls_port, right_name, 30000);
    EXPECT_STATUS(r, 0);
    IT_EQ(json_num(r.json, "delivered"), 10);
    result_free(&r);
    /* TLS to the plain listener: a handshake failure, exit 3 */
    const char *plain[] = {"--cafile", cert, "direct", "-c", "2", "-n", "10", NULL};
    r = run(p->port, plain, 30000);
    EXPECT_STATUS(r, 3);
    IT_CHECK(strstr(r.err, "TLS"), "reason: %s", r.err);
    result_free(&r);
    /* bad options: exit 2 */
    static const char *const no_ca[] = {"--cafile", "/nonexistent/ca.pem", "direct", "-n", "1",
                                        NULL};
    r = run(p->tls_port, no_ca, 10000);
    EXPECT_STATUS(r, 2);
    IT_CHECK(strstr(r.err, "/nonexistent/ca.pem"), "message: %s", r.err);
    result_free(&r);
    static const char *const name_only[] = {"--tls-name", "x", "direct", "-n", "1", NULL};
    r = run(p->tls_port, name_only, 10000);
    EXPECT_STATUS(r, 2);
    result_free(&r);
    /* imd's throughput, plain and TLS, closed loop (measured, not asserted) */
    double rp = closed_loop_rate(p->port, "tp", NULL, NULL);
    double rt = closed_loop_rate(p->tls_port, "tt", "--cafile", cert);
    it_note("imd throughput, direct -c 20 -w 50: plain %.0f msg/s, TLS %.0f msg/s (%.0f %%)", rp,
            rt, rp > 0 ? 100.0 * rt / rp : 0);
    it_liveness(p, (long)p->pid, NULL, NULL, NULL, NULL);
    it_finish(p);
}

/* --history and --late-receivers: the late receivers log in only after the sending has ended
 * and then get every message; imload --check agrees with the run. */
static void test_history_late(void **state)
{
    (void)state;
    imd_proc *p = it_start_imd(fast_imd);
    char hist[300];
    snprintf(hist, sizeof hist, "%s/history", tmpdir);
    const char *args[] = {
        "-q",        "direct", "--senders", "4",  "--receivers", "4",     "--late-receivers",
        "2",         "-n",     "2000",      "-r", "2000",        "--ack", "stored",
        "--history", hist,     "--prefix",  "lt", NULL};
    result r = run(p->port, args, 30000);
    EXPECT_STATUS(r, 0);
    IT_EQ(json_num(r.json, "sent"), 2000);
    IT_EQ(json_num(r.json, "acked"), 2000);
    IT_EQ(json_num(r.json, "delivered"), 2000);
    IT_EQ(json_num(r.json, "lost"), 0);
    IT_EQ(json_num(r.json, "late_receivers"), 2);
    result_free(&r);
    /* one thread: the file is in event order. Every DELIVER to the late receivers (ltr2, ltr3)
     * comes after the last SEND; the others got theirs during the sending. */
    size_t len;
    char *h = it_slurp(hist, &len);
    IT_CHECK(!strncmp(h, "H imload-history 1 direct stored\n", 33), "header: %.60s", h);
    long line = 0, last_s = 0, first_late = 0, first_early = 0, late = 0, early = 0, sends = 0,
         acks = 0;
    for (char *q = h; *q; q = strchr(q, '\n') ? strchr(q, '\n') + 1 : q + strlen(q)) {
        line++;
        if (*q == 'S') {
            last_s = line;
            sends++;
        } else if (*q == 'A') {
            acks++;
        } else if (!strncmp(q, "D ltr2 ", 7) || !strncmp(q, "D ltr3 ", 7)) {
            late++;
            if (!first_late)
                first_late = line;
        } else if (*q == 'D') {
            early++;
            if (!first_early)
                first_early = line;
        }
    }
    free(h);
    it_note("history: %ld lines, last SEND line %ld, first late DELIVER line %ld", line, last_s,
            first_late);
    IT_EQ(sends, 2000);
    IT_EQ(acks, 2000);
    IT_EQ(late, 1000);
    IT_EQ(early, 1000);
    IT_CHECK(first_late > last_s,
             "late receivers got a message (line %ld) before the sending "
             "ended (line %ld)",
             first_late, last_s);
    IT_CHECK(first_early < last_s, "the other receivers got theirs during the sending");
    /* the checker */
    static const char *check_args[] = {"--check", NULL, NULL};
    check_args[1] = hist;
    r = run(0, check_args, 30000);
    EXPECT_STATUS(r, 0);
    IT_CHECK(strstr(r.out, "check: sent 2000 acked 2000 refused 0 delivered 2000 lost 0 "
                           "duplicates 0 reordered 0 unexpected 0"),
             "summary: %s", r.out);
    result_free(&r);
    /* the same history without one DELIVER: lost 1, exit 1 */
    char cut[300];
    snprintf(cut, sizeof cut, "%s/history.cut", tmpdir);
    h = it_slurp(hist, &len);
    char *d = strstr(h, "\nD ltr3 ");
    IT_CHECK(d != NULL, "a DELIVER to ltr3");
    char *e = strchr(d + 1, '\n');
    FILE *f = fopen(cut, "w");
    IT_CHECK(f != NULL, "write %s", cut);
    fwrite(h, 1, (size_t)(d - h), f);
    fputs(e ? e : "\n", f);
    fclose(f);
    free(h);
    check_args[1] = cut;
    r = run(0, check_args, 30000);
    EXPECT_STATUS(r, 1);
    IT_CHECK(strstr(r.out, " lost 1 ") && strstr(r.err, "lost: sender"), "summary: %s / %s", r.out,
             r.err);
    result_free(&r);
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
        cmocka_unit_test_teardown(test_direct_stored_json, it_teardown),
        cmocka_unit_test_teardown(test_room_and_closed_loop, it_teardown),
        cmocka_unit_test_teardown(test_assert_and_usage, it_teardown),
        cmocka_unit_test_teardown(test_kill_ack_none, it_teardown),
        cmocka_unit_test_teardown(test_restart_durable, it_teardown),
        cmocka_unit_test_teardown(test_procs_threads_rerun, it_teardown),
        cmocka_unit_test_teardown(test_churn_login_broadcast, it_teardown),
        cmocka_unit_test_teardown(test_sink, it_teardown),
        cmocka_unit_test_teardown(test_tls, it_teardown),
        cmocka_unit_test_teardown(test_history_late, it_teardown),
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
