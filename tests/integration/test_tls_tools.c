/* Integration: imsend and imwatch over TLS (issue 6) against imd with a TLS listener
 * (--tls-listen 127.0.0.1:0, a self-signed certificate for 127.0.0.1/::1/localhost from
 * it_make_cert, which is its own CA).
 *
 * - imsend --cafile CERT sends over TLS and imwatch --cafile CERT receives, in both directions,
 *   bodies compared; 6 binary bodies of 900 KB (many TLS records each way, writes that
 *   outrun the socket) byte for byte (-c, -f, -0);
 *   2,000 lines with -l, all received in order; "-s localhost:PORT" (name checked as a DNS
 *   name, SNI sent); --tls-name localhost with the address; IMP_CAFILE as the CA file;
 * - verification: --tls with the system trust store (no --cafile) fails with exit 3 and
 *   "certificate verify failed" on stderr, for imsend and imwatch; --insecure works;
 *   --tls-name wrong.example with --cafile fails (exit 3, "mismatch"); a CA file that did not
 *   sign the certificate fails (exit 3); a missing CA file, and --tls-name without TLS, are
 *   usage errors (exit 2);
 * - wrong pairings: plain imsend to the TLS port fails (non-zero) within a few seconds, imsend
 *   --cafile to the plain port fails with exit 3 within a few seconds;
 * - bash completion: --cafile completes files; imsend -t completes the users online from
 *   imwatch --who run with the command line's TLS options;
 * - the connect timeout covers the TLS handshake: a listener that never answers gives exit 3
 *   ("TLS handshake timed out") after --connect-timeout.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <unistd.h>

#include "itest.h"

#define PW "tls tools password"
#define RUN_MS 20000 /* bound of one tool run */

static char tmpdir[] = "/tmp/tls_tools_test_XXXXXX";
static char cert[300], key[300];

static const char *tmp_path(const char *name)
{
    static char paths[8][300];
    static int next;
    char *p = paths[next++ % 8];
    snprintf(p, 300, "%s/%s", tmpdir, name);
    return p;
}

/* ---- tools as children ------------------------------------------------------------------- */

typedef struct tool {
    pid_t pid;
    char out[300], err[300];
    uint64_t started;
} tool;

/* Start TOOL ARGS (NULL-terminated) with IMP_PASSWORD=PW, stdin from in_path (NULL:
 * /dev/null), stdout and stderr into files; IMP_SERVER, IMP_USER, IMP_CAFILE unset unless
 * cafile_env is not NULL (then IMP_CAFILE=cafile_env). */
static void tool_start(tool *t, const char *name, const char *const *args, const char *in_path,
                       const char *cafile_env)
{
    static int seq;
    seq++;
    snprintf(t->out, sizeof t->out, "%s/%s.out.%d", tmpdir, name, seq);
    snprintf(t->err, sizeof t->err, "%s/%s.err.%d", tmpdir, name, seq);
    const char *argv[64];
    int n = 0;
    static char path[1024];
    snprintf(path, sizeof path, "%s", it_tool_path(name));
    argv[n++] = path;
    for (int i = 0; args[i] && n < 63; i++)
        argv[n++] = args[i];
    argv[n] = NULL;
    fflush(NULL);
    t->started = it_now_ms();
    t->pid = fork();
    IT_CHECK(t->pid >= 0, "fork: %s", strerror(errno));
    if (t->pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        int in = open(in_path ? in_path : "/dev/null", O_RDONLY);
        int out = open(t->out, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        int err = open(t->err, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (in < 0 || out < 0 || err < 0)
            _exit(120);
        dup2(in, 0);
        dup2(out, 1);
        dup2(err, 2);
        setenv("IMP_PASSWORD", PW, 1);
        unsetenv("IMP_SERVER");
        unsetenv("IMP_USER");
        if (cafile_env)
            setenv("IMP_CAFILE", cafile_env, 1);
        else
            unsetenv("IMP_CAFILE");
        signal(SIGPIPE, SIG_DFL);
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
}

/* Wait for the exit (bounded); prints stderr when the status is not `want` (want < 0: any
 * status accepted by the caller's own check). Returns the status; *ms (may be NULL) the run
 * time. */
static int tool_wait(tool *t, int timeout_ms, long *ms)
{
    int rc = it_wait_exit(t->pid, timeout_ms);
    if (ms)
        *ms = (long)(it_now_ms() - t->started);
    t->pid = 0;
    return rc;
}

static char *tool_err(const tool *t)
{
    return it_slurp(t->err, NULL);
}

/* Run to completion; returns the exit status (-1: did not exit within RUN_MS). */
static int run(tool *t, const char *name, const char *const *args, const char *in_path, long *ms)
{
    tool_start(t, name, args, in_path, NULL);
    return tool_wait(t, RUN_MS, ms);
}

/* Checks the status, showing the tool's stderr when it differs. */
#define EXPECT_STATUS(t, rc, want)                                                      \
    do {                                                                                \
        int want_ = (want);                                                             \
        if ((rc) != want_) {                                                            \
            char *e_ = tool_err(t);                                                     \
            IT_CHECK((rc) == want_, "exit %d, wanted %d; stderr: %s", (rc), want_, e_); \
            free(e_);                                                                   \
        }                                                                               \
    } while (0)

/* Wait (bounded) until the tool's stdout holds needle. */
static void wait_output(const tool *t, const char *needle)
{
    uint64_t end = it_now_ms() + RUN_MS;
    for (;;) {
        char *s = it_slurp(t->out, NULL);
        int found = strstr(s, needle) != NULL;
        free(s);
        if (found)
            return;
        if (it_now_ms() > end) {
            char *e = tool_err(t);
            IT_CHECK(0, "no '%s' on stdout of %s within %d ms; stderr: %s", needle, t->out, RUN_MS,
                     e);
        }
        it_sleep_ms(20);
    }
}

/* Complete with the completion file in a clean bash (as test_imwatch.c does): envs are
 * NAME=VALUE words for env(1), words the COMP_WORDS (the last one is the word being
 * completed). The words offered, one per line, go into out. */
static void complete(const char *envs, const char *words, char *out, size_t outlen)
{
    char cmd[4096];
    snprintf(cmd, sizeof cmd,
             "env -i PATH=/usr/bin:/bin HOME=/tmp %s bash --norc --noprofile -c '"
             "source \"$0\"; COMP_WORDS=(%s); COMP_CWORD=$((${#COMP_WORDS[@]} - 1)); "
             "_imp_complete; ((${#COMPREPLY[@]} == 0)) || printf \"%%s\\n\" \"${COMPREPLY[@]}\"' "
             "%s/dist/bash-completion/imd </dev/null 2>/dev/null",
             envs, words, IMP_SRCDIR);
    FILE *f = popen(cmd, "r");
    IT_CHECK(f != NULL, "popen: %s", strerror(errno));
    size_t n = fread(out, 1, outlen - 1, f);
    out[n] = '\0';
    int st = pclose(f);
    IT_CHECK(st == 0, "bash completion [%s] [%s]: status %d, output '%s'", envs, words, st, out);
}

/* ---- the server ---------------------------------------------------------------------------- */

static imd_proc *start_tls_imd(void)
{
    if (!cert[0])
        it_make_cert(tmpdir, cert, sizeof cert, key, sizeof key);
    const char *args[] = {"--tls-listen", "127.0.0.1:0", "--tls-cert", cert,
                          "--tls-key",    key,           NULL};
    imd_proc *p = it_start_imd(args);
    IT_CHECK(p->tls_port > 0, "imd announced no TLS listener");
    IT_CHECK(p->port > 0 && p->port != p->tls_port, "plain %d, tls %d", p->port, p->tls_port);
    return p;
}

static const char *addr(int port)
{
    static char bufs[4][64];
    static int next;
    char *b = bufs[next++ % 4];
    snprintf(b, 64, "127.0.0.1:%d", port);
    return b;
}

/* imwatch -u USER --ready -C count -F "%f %b" (plus extra) over TLS; waits for "ready". */
static void watch_start(tool *w, int tls_port, const char *user, const char *count,
                        const char *fmt_or_raw)
{
    const char *raw[] = {"-s", addr(tls_port), "--cafile", cert, "-u", user, "--ready",
                         "-C", count,          "-W",       "30", "-0", NULL};
    const char *fmt[] = {"-s", addr(tls_port), "--cafile", cert, "-u", user,       "--ready",
                         "-C", count,          "-W",       "30", "-F", fmt_or_raw, NULL};
    tool_start(w, "imwatch", fmt_or_raw ? fmt : raw, NULL, NULL);
    wait_output(w, "ready");
}

/* ---- tests ------------------------------------------------------------------------------- */

static void test_send_and_watch(void **state)
{
    (void)state;
    imd_proc *p = start_tls_imd();
    long pid = p->pid;
    char alice[40], bob[40];
    it_name(alice, sizeof alice, "alice");
    it_name(bob, sizeof bob, "bob");
    it_register(p->port, alice, PW, NULL);
    it_register(p->port, bob, PW, NULL);

    /* alice -> bob, then bob -> alice, both tools over TLS */
    const char *users[2][2] = {{alice, bob}, {bob, alice}};
    for (int dir = 0; dir < 2; dir++) {
        const char *from = users[dir][0], *to = users[dir][1];
        tool w, s;
        watch_start(&w, p->tls_port, to, "1", "%f %b");
        char body[100];
        snprintf(body, sizeof body, "over TLS from %s to %s", from, to);
        const char *args[] = {"-s", addr(p->tls_port), "--cafile", cert, "-u", from, "-t", to, body,
                              NULL};
        long ms;
        int rc = run(&s, "imsend", args, NULL, &ms);
        EXPECT_STATUS(&s, rc, 0);
        it_note("imsend over TLS (connect, handshake, login, send, ack): %ld ms", ms);
        rc = tool_wait(&w, RUN_MS, NULL);
        EXPECT_STATUS(&w, rc, 0);
        char *out = it_slurp(w.out, NULL);
        char want[300];
        snprintf(want, sizeof want, "ready\n%s %s\n", from, body);
        IT_CHECK(strcmp(out, want) == 0, "imwatch printed '%s', wanted '%s'", out, want);
        free(out);
    }

    /* 6 x 900 KB binary bodies: many TLS records each way, imsend's writes outrun the
     * socket (SSL_write wants to write again), imwatch reads 5 MB; byte for byte */
    enum { BIG = 900 * 1000, NBIG = 6 };
    uint8_t *big = malloc(BIG);
    IT_CHECK(big != NULL, "malloc");
    uint32_t x = 2463534242u;
    for (size_t i = 0; i < BIG; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        big[i] = (uint8_t)x;
    }
    it_write_file(tmp_path("big.bin"), big, BIG);
    tool w, s;
    watch_start(&w, p->tls_port, bob, "6", NULL);
    const char *bargs[] = {
        "-s", addr(p->tls_port),   "--cafile", cert, "-u", alice, "-t", bob, "-c", "6",
        "-f", tmp_path("big.bin"), NULL};
    long ms;
    int rc = run(&s, "imsend", bargs, NULL, &ms);
    EXPECT_STATUS(&s, rc, 0);
    it_note("imsend of %d x %d bytes over TLS: %ld ms", NBIG, BIG, ms);
    rc = tool_wait(&w, RUN_MS, &ms);
    EXPECT_STATUS(&w, rc, 0);
    it_note("imwatch received them after %ld ms (from its start)", ms);
    size_t len = 0;
    char *out = it_slurp(w.out, &len);
    IT_EQ(len, 6 + (size_t)NBIG * (BIG + 1)); /* "ready" NUL, then each body and a NUL */
    IT_CHECK(memcmp(out, "ready\0", 6) == 0, "no ready record");
    for (size_t k = 0; k < NBIG; k++) {
        const char *b = out + 6 + k * (BIG + 1);
        IT_CHECK(memcmp(b, big, BIG) == 0, "body %zu of %d differs", k + 1, NBIG);
        IT_EQ(b[BIG], 0);
    }
    free(out);
    free(big);

    /* 2,000 lines with -l: all arrive, in order */
    enum { LINES = 2000 };
    FILE *f = fopen(tmp_path("lines.txt"), "w");
    IT_CHECK(f != NULL, "open lines");
    for (int i = 0; i < LINES; i++)
        fprintf(f, "line %d of the TLS stream\n", i);
    fclose(f);
    watch_start(&w, p->tls_port, bob, "2000", "%b");
    const char *largs[] = {"-s", addr(p->tls_port), "--cafile", cert, "-u", alice, "-t", bob, "-l",
                           NULL};
    rc = run(&s, "imsend", largs, tmp_path("lines.txt"), &ms);
    EXPECT_STATUS(&s, rc, 0);
    it_note("imsend -l of %d lines over TLS: %ld ms", LINES, ms);
    rc = tool_wait(&w, RUN_MS, NULL);
    EXPECT_STATUS(&w, rc, 0);
    out = it_slurp(w.out, NULL);
    char *pos = out;
    IT_CHECK(strncmp(pos, "ready\n", 6) == 0, "no ready line");
    pos += 6;
    for (int i = 0; i < LINES; i++) {
        char want[64];
        int n = snprintf(want, sizeof want, "line %d of the TLS stream\n", i);
        IT_CHECK(strncmp(pos, want, (size_t)n) == 0, "line %d: '%.40s'", i, pos);
        pos += n;
    }
    IT_CHECK(*pos == 0, "more output than %d lines: '%.40s'", LINES, pos);
    free(out);

    it_liveness(p, pid, NULL, NULL, NULL, NULL);
    it_finish(p);
}

static void test_names_and_env(void **state)
{
    (void)state;
    imd_proc *p = start_tls_imd();
    long pid = p->pid;
    char alice[40], bob[40];
    it_name(alice, sizeof alice, "alice");
    it_name(bob, sizeof bob, "bob");
    it_register(p->port, alice, PW, NULL);
    it_register(p->port, bob, PW, NULL);
    tool w, s;
    long ms;
    int rc;
    watch_start(&w, p->tls_port, bob, "4", "%b");

    /* localhost: the certificate is checked against the DNS name (and SNI is sent); the
     * name may resolve to ::1 first, where nothing listens: the next address is tried */
    char local[64];
    snprintf(local, sizeof local, "localhost:%d", p->tls_port);
    const char *a1[] = {"-s", local, "--cafile", cert, "-u", alice, "-t", bob, "by name", NULL};
    rc = run(&s, "imsend", a1, NULL, &ms);
    EXPECT_STATUS(&s, rc, 0);

    /* --tls-name with an address */
    const char *a2[] = {
        "-s", addr(p->tls_port),    "--cafile", cert, "--tls-name", "localhost", "-u", alice, "-t",
        bob,  "tls-name localhost", NULL};
    rc = run(&s, "imsend", a2, NULL, &ms);
    EXPECT_STATUS(&s, rc, 0);

    /* IMP_CAFILE instead of --cafile */
    const char *a3[] = {"-s", addr(p->tls_port), "--tls", "-u", alice, "-t",
                        bob,  "env cafile",      NULL};
    tool_start(&s, "imsend", a3, NULL, cert);
    rc = tool_wait(&s, RUN_MS, NULL);
    EXPECT_STATUS(&s, rc, 0);

    /* --insecure: no verification at all (a name that is not in the certificate) */
    const char *a4[] = {
        "-s", addr(p->tls_port), "--insecure", "--tls-name", "wrong.example", "-u", alice, "-t",
        bob,  "insecure",        NULL};
    rc = run(&s, "imsend", a4, NULL, &ms);
    EXPECT_STATUS(&s, rc, 0);

    rc = tool_wait(&w, RUN_MS, NULL);
    EXPECT_STATUS(&w, rc, 0);
    char *out = it_slurp(w.out, NULL);
    const char *want = "ready\nby name\ntls-name localhost\nenv cafile\ninsecure\n";
    IT_CHECK(strcmp(out, want) == 0, "imwatch printed '%s', wanted '%s'", out, want);
    free(out);

    /* bash completion: --cafile completes file names; user names after -t come from
     * imwatch --who run with the command line's TLS options */
    char out2[4096], words[2048], env[512];
    snprintf(words, sizeof words, "\"%s\" --cafile %s/ce", it_tool_path("imsend"), tmpdir);
    complete("", words, out2, sizeof out2);
    char want2[400];
    snprintf(want2, sizeof want2, "%s\n", cert);
    IT_CHECK(strcmp(out2, want2) == 0, "--cafile completed '%s'", out2);
    tc *online = it_login(p->port, alice, PW, NULL); /* WHO lists the users online */
    snprintf(env, sizeof env, "IMP_USER=%s \"IMP_PASSWORD=%s\"", bob, PW);
    snprintf(words, sizeof words, "\"%s\" -s %s --cafile %s --tls-name localhost -t \"\"",
             it_tool_path("imsend"), addr(p->tls_port), cert);
    complete(env, words, out2, sizeof out2);
    char line[64];
    snprintf(line, sizeof line, "%s\n", alice);
    IT_CHECK(strstr(out2, line) != NULL, "imsend -t over TLS completed '%s'", out2);
    /* the same without the TLS options: imwatch --who fails on the TLS port, no names */
    snprintf(words, sizeof words, "\"%s\" -s %s -t \"\"", it_tool_path("imsend"),
             addr(p->tls_port));
    complete(env, words, out2, sizeof out2);
    IT_CHECK(out2[0] == '\0', "completed without TLS: '%s'", out2);
    (void)online;

    it_liveness(p, pid, NULL, NULL, NULL, NULL);
    it_finish(p);
}

static void expect_verify_failure(tool *t, int rc, const char *what, const char *detail)
{
    EXPECT_STATUS(t, rc, 3);
    char *e = tool_err(t);
    IT_CHECK(strstr(e, "certificate verify failed") != NULL, "%s: stderr '%s'", what, e);
    if (detail)
        IT_CHECK(strstr(e, detail) != NULL, "%s: no '%s' in stderr '%s'", what, detail, e);
    free(e);
}

static void test_verification_failures(void **state)
{
    (void)state;
    imd_proc *p = start_tls_imd();
    long pid = p->pid;
    char alice[40], bob[40];
    it_name(alice, sizeof alice, "alice");
    it_name(bob, sizeof bob, "bob");
    it_register(p->port, alice, PW, NULL);
    it_register(p->port, bob, PW, NULL);
    tc *rb = it_login(p->port, bob, PW, NULL);
    tool t;
    long ms;
    int rc;

    /* --tls: the system trust store does not know the self-signed certificate */
    const char *a1[] = {"-s", addr(p->tls_port), "--tls", "-u", alice, "-t", bob, "x", NULL};
    rc = run(&t, "imsend", a1, NULL, &ms);
    expect_verify_failure(&t, rc, "imsend --tls", "self-signed certificate");
    char *e = tool_err(&t);
    char where[80];
    snprintf(where, sizeof where, "imsend: %s: certificate verify failed", addr(p->tls_port));
    IT_CHECK(strstr(e, where) != NULL, "no '%s' in '%s'", where, e);
    free(e);
    const char *w1[] = {"-s", addr(p->tls_port), "--tls", "-u", bob, "-C", "1", "-W", "10", NULL};
    rc = run(&t, "imwatch", w1, NULL, &ms);
    expect_verify_failure(&t, rc, "imwatch --tls", "self-signed certificate");

    /* --tls-name that is not in the certificate */
    const char *a2[] = {"-s",         addr(p->tls_port),
                        "--cafile",   cert,
                        "--tls-name", "wrong.example",
                        "-u",         alice,
                        "-t",         bob,
                        "x",          NULL};
    rc = run(&t, "imsend", a2, NULL, &ms);
    expect_verify_failure(&t, rc, "imsend --tls-name wrong.example", "mismatch");
    const char *w2[] = {"-s",         addr(p->tls_port),
                        "--cafile",   cert,
                        "--tls-name", "wrong.example",
                        "-u",         bob,
                        "-W",         "10",
                        NULL};
    rc = run(&t, "imwatch", w2, NULL, &ms);
    expect_verify_failure(&t, rc, "imwatch --tls-name wrong.example", "mismatch");

    /* a CA file that did not sign the server's certificate */
    char other_cert[300], other_key[300];
    char other_dir[320];
    snprintf(other_dir, sizeof other_dir, "%s/other", tmpdir);
    IT_CHECK(mkdir(other_dir, 0700) == 0 || errno == EEXIST, "mkdir %s", other_dir);
    it_make_cert(other_dir, other_cert, sizeof other_cert, other_key, sizeof other_key);
    const char *a3[] = {
        "-s", addr(p->tls_port), "--cafile", other_cert, "-u", alice, "-t", bob, "x", NULL};
    rc = run(&t, "imsend", a3, NULL, &ms);
    expect_verify_failure(&t, rc, "imsend --cafile (another CA)", NULL);

    /* a missing CA file: usage error, before any connection */
    const char *a4[] = {
        "-s", addr(p->tls_port), "--cafile", tmp_path("missing.pem"), "-u", alice, "-t", bob, "x",
        NULL};
    rc = run(&t, "imsend", a4, NULL, &ms);
    EXPECT_STATUS(&t, rc, 2);
    e = tool_err(&t);
    IT_CHECK(strstr(e, "cannot read CA file") != NULL && strstr(e, "missing.pem") != NULL,
             "stderr '%s'", e);
    free(e);

    /* --tls-name alone (TLS not turned on): usage error */
    const char *a5[] = {
        "-s", addr(p->tls_port), "--tls-name", "localhost", "-u", alice, "-t", bob, "x", NULL};
    rc = run(&t, "imsend", a5, NULL, &ms);
    EXPECT_STATUS(&t, rc, 2);
    e = tool_err(&t);
    IT_CHECK(strstr(e, "--tls-name needs --tls") != NULL, "stderr '%s'", e);
    free(e);

    /* nothing of the above reached bob */
    tc_frame *fr = tc_wait(rb, IMP_DELIVER, 0, 300);
    IT_CHECK(fr == NULL, "a message was delivered");

    it_liveness(p, pid, NULL, NULL, NULL, NULL);
    it_finish(p);
}

static void test_wrong_pairings(void **state)
{
    (void)state;
    imd_proc *p = start_tls_imd();
    long pid = p->pid;
    char alice[40], bob[40];
    it_name(alice, sizeof alice, "alice");
    it_name(bob, sizeof bob, "bob");
    it_register(p->port, alice, PW, NULL);
    it_register(p->port, bob, PW, NULL);
    tool t;
    long ms;
    int rc;

    /* plain imsend to the TLS port: fails (any non-zero status), does not hang until the
     * connect timeout */
    const char *a1[] = {
        "-s", addr(p->tls_port), "--connect-timeout", "30", "-u", alice, "-t", bob, "plain to tls",
        NULL};
    rc = run(&t, "imsend", a1, NULL, &ms);
    char *e = tool_err(&t);
    IT_CHECK(rc > 0 && rc != 6, "plain imsend to the TLS port: exit %d; stderr '%s'", rc, e);
    IT_CHECK(ms < 10000, "plain imsend to the TLS port took %ld ms", ms);
    it_note("plain imsend to the TLS port: exit %d after %ld ms: %s", rc, ms, e);
    free(e);

    /* imsend --cafile to the plain port: exit 3 quickly */
    const char *a2[] = {"-s", addr(p->port), "--cafile", cert, "--connect-timeout", "30",
                        "-u", alice,         "-t",       bob,  "tls to plain",      NULL};
    rc = run(&t, "imsend", a2, NULL, &ms);
    EXPECT_STATUS(&t, rc, 3);
    IT_CHECK(ms < 10000, "imsend --cafile to the plain port took %ld ms", ms);
    e = tool_err(&t);
    it_note("imsend --cafile to the plain port: exit %d after %ld ms: %s", rc, ms, e);
    free(e);

    it_liveness(p, pid, NULL, NULL, NULL, NULL);
    it_finish(p);
}

/* The connect timeout covers the handshake: a TCP listener that never answers (the kernel
 * completes the TCP handshake from the backlog; nobody speaks TLS). */
static void test_handshake_timeout(void **state)
{
    (void)state;
    imd_proc *p = start_tls_imd();
    long pid = p->pid;
    int ls = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    IT_CHECK(ls >= 0, "socket");
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    IT_CHECK(bind(ls, (struct sockaddr *)&sa, sizeof sa) == 0, "bind");
    IT_CHECK(listen(ls, 8) == 0, "listen");
    socklen_t sl = sizeof sa;
    IT_CHECK(getsockname(ls, (struct sockaddr *)&sa, &sl) == 0, "getsockname");
    int port = ntohs(sa.sin_port);

    tool t;
    long ms;
    const char *a1[] = {"-s",  addr(port), "--insecure", "--connect-timeout",
                        "1",   "-u",       "alice",      "-t",
                        "bob", "x",        NULL};
    int rc = run(&t, "imsend", a1, NULL, &ms);
    EXPECT_STATUS(&t, rc, 3);
    char *e = tool_err(&t);
    IT_CHECK(strstr(e, "TLS handshake timed out") != NULL, "stderr '%s'", e);
    free(e);
    IT_CHECK(ms >= 900 && ms < 10000, "took %ld ms with --connect-timeout 1", ms);
    it_note("TLS handshake timeout (--connect-timeout 1): exit 3 after %ld ms", ms);
    const char *w1[] = {"-s", addr(port), "--cafile", cert, "--connect-timeout",
                        "1",  "-u",       "bob",      NULL};
    rc = run(&t, "imwatch", w1, NULL, &ms);
    EXPECT_STATUS(&t, rc, 3);
    close(ls);

    it_liveness(p, pid, NULL, NULL, NULL, NULL);
    it_finish(p);
}

int main(void)
{
    it_main_init(300);
    if (!it_imd_or_skip())
        return 0;
    if (access(it_tool_path("imsend"), X_OK) != 0 || access(it_tool_path("imwatch"), X_OK) != 0) {
        printf("-- imsend or imwatch is not built: skipped\n");
        return 0;
    }
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_send_and_watch, it_teardown),
        cmocka_unit_test_teardown(test_names_and_env, it_teardown),
        cmocka_unit_test_teardown(test_verification_failures, it_teardown),
        cmocka_unit_test_teardown(test_wrong_pairings, it_teardown),
        cmocka_unit_test_teardown(test_handshake_timeout, it_teardown),
    };
    int r =
        cmocka_run_group_tests_name("integration: imsend and imwatch over TLS", tests, NULL, NULL);
    if (!getenv("IMP_ITEST_KEEP")) {
        char cmd[400];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
        if (system(cmd) != 0)
            fprintf(stderr, "could not remove %s\n", tmpdir);
    }
    return r;
}
