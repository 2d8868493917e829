/* Integration: the imsend tool ($IMP_BUILD_DIR/imsend) against a real imd.
 *
 * - round trip to an online recipient (received with the test client): arguments joined by
 *   spaces, -f FILE (binary, NUL bytes), --stdin, -H headers, --password-file;
 * - offline delivery; rooms (-g, NOT_MEMBER without --join);
 * - -l with 10,000 lines streamed through a pipe: all arrive, in order; -l from a regular file;
 * - --id retry does not duplicate (DUPLICATE in the JSON ACK, one delivery); --count ids;
 * - --json lines parsed by a JSON syntax checker and their fields checked (schema v1);
 * - every exit status: 2 usage, 3 nothing listening, 4 wrong password, 5 unknown recipient,
 *   6 --ack delivered to a recipient that never acknowledges, 7 imd killed mid-run;
 * - the REPL (-i) on a pseudo-terminal: a typed message arrives, tab completion of a user name,
 *   and an incoming message while a line is half typed leaves that line intact.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pty.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <time.h>
#include <unistd.h>

#include "itest.h"
#include "json_check.h"

#define T 5000
#define PW_ALICE "alice-password"
#define PW_BOB "bob-password"

/* ---- running imsend ------------------------------------------------------------------------ */

static char tmpdir[] = "/tmp/imsend_test_XXXXXX";

static const char *tmp_path(const char *name)
{
    static char paths[8][300];
    static int next;
    char *p = paths[next++ % 8];
    snprintf(p, 300, "%s/%s", tmpdir, name);
    return p;
}

typedef struct proc {
    pid_t pid;
    int in_fd; /* write end of stdin (pipe mode), else -1 */
    char out[300], err[300];
} proc;

enum { IN_NULL, IN_PIPE, IN_FILE };

/* Start imsend -s 127.0.0.1:port ARGS with IMP_PASSWORD=password (NULL: unset). */
static void spawn(proc *p, int port, const char *password, const char *const *args, int in_mode,
                  const char *in_file)
{
    static int seq;
    seq++;
    snprintf(p->out, sizeof p->out, "%s/out.%d", tmpdir, seq);
    snprintf(p->err, sizeof p->err, "%s/err.%d", tmpdir, seq);
    int pfd[2] = {-1, -1};
    if (in_mode == IN_PIPE)
        IT_CHECK(pipe(pfd) == 0, "pipe");
    char server[64];
    snprintf(server, sizeof server, "127.0.0.1:%d", port);
    p->pid = fork();
    IT_CHECK(p->pid >= 0, "fork");
    if (p->pid == 0) {
        int in = -1;
        if (in_mode == IN_PIPE) {
            in = pfd[0];
            close(pfd[1]);
        } else if (in_mode == IN_FILE) {
            in = open(in_file, O_RDONLY);
        } else {
            in = open("/dev/null", O_RDONLY);
        }
        int out = open(p->out, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        int err = open(p->err, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (in < 0 || out < 0 || err < 0)
            _exit(120);
        dup2(in, 0);
        dup2(out, 1);
        dup2(err, 2);
        unsetenv("IMP_SERVER");
        unsetenv("IMP_USER");
        if (password)
            setenv("IMP_PASSWORD", password, 1);
        else
            unsetenv("IMP_PASSWORD");
        const char *argv[64];
        int n = 0;
        argv[n++] = it_tool_path("imsend");
        if (port > 0) {
            argv[n++] = "-s";
            argv[n++] = server;
        }
        for (size_t i = 0; args[i] && n < 62; i++)
            argv[n++] = args[i];
        argv[n] = NULL;
        execv(argv[0], (char *const *)argv);
        _exit(121);
    }
    p->in_fd = -1;
    if (in_mode == IN_PIPE) {
        close(pfd[0]);
        p->in_fd = pfd[1];
    }
}

typedef struct result {
    int status;
    char *out, *err;
    size_t out_len;
} result;

static void result_free(result *r)
{
    free(r->out);
    free(r->err);
}

static result run(int port, const char *password, const char *const *args, int in_mode,
                  const char *in_file, int timeout_ms)
{
    proc p;
    spawn(&p, port, password, args, in_mode, in_file);
    result r;
    r.status = it_wait_exit(p.pid, timeout_ms);
    r.out = it_slurp(p.out, &r.out_len);
    r.err = it_slurp(p.err, NULL);
    if (r.status < 0)
        it_note("imsend timed out; stderr: %s", r.err);
    return r;
}

#define EXPECT_STATUS(r, want)                                                                    \
    IT_CHECK((r).status == (want), "imsend exit %d, want %d; stderr: %s; stdout: %s", (r).status, \
             (want), (r).err, (r).out)

/* ---- a JSON syntax checker (RFC 8259), enough to validate --json output ------------------ */

/* Each line of out is one valid JSON object; returns the number of lines. */
static int json_lines_valid(const char *out)
{
    int n = 0;
    const char *line = out;
    while (*line) {
        const char *nl = strchr(line, '\n');
        IT_CHECK(nl != NULL, "JSON output does not end with a newline: %s", line);
        char *one = strndup(line, (size_t)(nl - line));
        IT_CHECK(one[0] == '{', "JSON line is not an object: %s", one);
        const char *end = json_check_value(one);
        IT_CHECK(end && *json_check_ws(end) == 0, "invalid JSON line: %s", one);
        free(one);
        n++;
        line = nl + 1;
    }
    return n;
}

/* The n-th line (0-based) of out, in buf. */
static const char *line_at(const char *out, int n, char *buf, size_t len)
{
    const char *p = out;
    for (int i = 0; i < n && p; i++) {
        p = strchr(p, '\n');
        if (p)
            p++;
    }
    IT_CHECK(p && *p, "no line %d in output: %s", n, out);
    const char *nl = strchr(p, '\n');
    size_t k = nl ? (size_t)(nl - p) : strlen(p);
    if (k >= len)
        k = len - 1;
    memcpy(buf, p, k);
    buf[k] = 0;
    return buf;
}

/* Integer value of "key": in a JSON line (-1 when absent). */
static long long json_int(const char *line, const char *key)
{
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\":", key);
    const char *p = strstr(line, pat);
    return p ? strtoll(p + strlen(pat), NULL, 10) : -1;
}

/* ---- fixtures ------------------------------------------------------------------------------ */

/* imd with alice and bob registered; bob stays connected when keep_bob (returned), else NULL. */
static imd_proc *setup_users(const char *const *extra, tc **bob_out)
{
    imd_proc *p = it_start_imd(extra);
    tc_auth a;
    tc *alice = it_register(p->port, "alice", PW_ALICE, &a);
    tc_close(alice);
    tc *bob = it_register(p->port, "bob", PW_BOB, &a);
    if (bob_out)
        *bob_out = bob;
    else
        tc_close(bob);
    return p;
}

static tc_frame *deliver(tc *c)
{
    tc_frame *f = tc_wait(c, IMP_DELIVER, 0, T);
    char d[512];
    IT_CHECK(f != NULL, "no DELIVER within %d ms: %s", T, tc_describe(c, d, sizeof d));
    return f;
}

static void body_is(const tc_frame *f, const void *body, size_t len)
{
    imp_bytes b = imp_msg_b(&f->m, IMP_T_BODY);
    char got[200];
    IT_CHECK(b.len == len && memcmp(b.p, body, len) == 0, "BODY '%s' (%zu bytes), want %zu bytes",
             tc_str(&f->m, IMP_T_BODY, got, sizeof got), b.len, len);
}

/* ---- tests ----------------------------------------------------------------------------------- */

static void test_roundtrip(void **state)
{
    (void)state;
    tc *bob;
    imd_proc *p = setup_users(NULL, &bob);

    /* arguments joined by spaces as one message; nothing on stdout */
    const char *a1[] = {"-u", "alice", "-t", "bob", "hello", "world", NULL};
    result r = run(p->port, PW_ALICE, a1, IN_NULL, NULL, 15000);
    EXPECT_STATUS(r, 0);
    IT_EQ(r.out_len, 0);
    result_free(&r);
    tc_frame *f = deliver(bob);
    body_is(f, "hello world", 11);
    IT_CHECK(tc_field_is(&f->m, IMP_T_SENDER, "alice"), "SENDER");
    IT_CHECK(tc_field_is(&f->m, IMP_T_TARGET, "bob"), "TARGET");
    IT_EQ(imp_msg_u(&f->m, IMP_T_TARGET_KIND, 0), IMP_TARGET_USER);
    tc_delivered(bob, imp_msg_u(&f->m, IMP_T_SEQ, 0));
    tc_frame_free(f);

    /* -f FILE: binary-safe (NUL, 0xff, no trailing newline), password from a file, headers */
    const uint8_t bin[] = {'a', 0, 0xff, 0xfe, '\n', 'z'};
    const char *bf = tmp_path("body.bin");
    it_write_file(bf, bin, sizeof bin);
    const char *pwf = tmp_path("pw");
    it_write_file(pwf, PW_ALICE "\n", strlen(PW_ALICE) + 1);
    const char *a2[] = {"-u",        "alice", "--password-file", pwf, "-t", "bob", "-f", bf, "-H",
                        "prio=high", "-H",    "trace-id=abc=1",  NULL};
    r = run(p->port, NULL, a2, IN_NULL, NULL, 15000);
    EXPECT_STATUS(r, 0);
    result_free(&r);
    f = deliver(bob);
    body_is(f, bin, sizeof bin);
    imp_bytes h = imp_msg_b(&f->m, IMP_T_HEADERS), k, v;
    int found = 0;
    while (imp_headers_next(&h, &k, &v) == 1) {
        if (k.len == 4 && memcmp(k.p, "prio", 4) == 0 && v.len == 4 && !memcmp(v.p, "high", 4))
            found++;
        if (k.len == 8 && memcmp(k.p, "trace-id", 8) == 0 && v.len == 5 && !memcmp(v.p, "abc=1", 5))
            found++;
    }
    IT_EQ(found, 2);
    tc_delivered(bob, imp_msg_u(&f->m, IMP_T_SEQ, 0));
    tc_frame_free(f);

    /* --stdin: all of stdin as one message, newline kept */
    const char *sf = tmp_path("stdin.txt");
    it_write_file(sf, "line 1\nline 2\n", 14);
    const char *a3[] = {"-u", "alice", "-t", "bob", "--stdin", "--transient", NULL};
    r = run(p->port, PW_ALICE, a3, IN_FILE, sf, 15000);
    EXPECT_STATUS(r, 0);
    result_free(&r);
    f = deliver(bob);
    body_is(f, "line 1\nline 2\n", 14);
    IT_EQ(imp_msg_u(&f->m, IMP_T_CLASS, 0), IMP_CLASS_TRANSIENT);
    tc_frame_free(f);
    it_finish(p);
}

static void test_offline(void **state)
{
    (void)state;
    imd_proc *p = setup_users(NULL, NULL);
    const char *a[] = {"-u", "alice", "-t", "bob", "while you were out", NULL};
    result r = run(p->port, PW_ALICE, a, IN_NULL, NULL, 15000);
    EXPECT_STATUS(r, 0);
    result_free(&r);
    /* -d: each frame decoded and dumped on stderr; the password never appears */
    const char *d[] = {"-u", "alice", "-d", "-t", "bob", "traced", NULL};
    r = run(p->port, PW_ALICE, d, IN_NULL, NULL, 15000);
    EXPECT_STATUS(r, 0);
    IT_EQ(r.out_len, 0);
    IT_CHECK(strstr(r.err, "imsend: >> HELLO") && strstr(r.err, "imsend: << WELCOME") &&
                 strstr(r.err, ">> LOGIN") && strstr(r.err, "PASSWORD=<14 bytes hidden>") &&
                 strstr(r.err, ">> SEND req=") && strstr(r.err, "BODY=\"traced\"") &&
                 strstr(r.err, "<< ACK") && strstr(r.err, "0000: 01"),
             "trace: %s", r.err);
    IT_CHECK(!strstr(r.err, PW_ALICE), "the password is in the trace");
    /* the password's bytes are not in the hex dump either ("alice-" = 61 6c 69 63 65 2d) */
    IT_CHECK(!strstr(r.err, "61 6c 69 63 65 2d"), "the password is in the hex dump");
    result_free(&r);

    tc_auth au;
    tc *bob = it_login(p->port, "bob", PW_BOB, &au);
    tc_frame *f = deliver(bob);
    body_is(f, "while you were out", 18);
    IT_CHECK(tc_field_is(&f->m, IMP_T_SENDER, "alice"), "SENDER");
    tc_frame_free(f);
    f = deliver(bob);
    body_is(f, "traced", 6);
    tc_frame_free(f);
    it_finish(p);
}

static void test_room(void **state)
{
    (void)state;
    tc *bob;
    imd_proc *p = setup_users(NULL, &bob);
    imp_msg m;
    imp_msg_init(&m, IMP_JOIN, 0);
    imp_msg_set_s(&m, IMP_T_ROOM, "ops");
    uint32_t req = tc_request(bob, &m);
    tc_frame *ok = tc_wait_reply(bob, req, T);
    IT_CHECK(ok && ok->m.type == IMP_OK, "JOIN ops");
    tc_frame_free(ok);

    /* not a member: refused (5), the hint names --join */
    const char *a1[] = {"-u", "alice", "-g", "ops", "deploy started", NULL};
    result r = run(p->port, PW_ALICE, a1, IN_NULL, NULL, 15000);
    EXPECT_STATUS(r, 5);
    IT_CHECK(strstr(r.err, "503 NOT_MEMBER") && strstr(r.err, "--join"), "stderr: %s", r.err);
    result_free(&r);

    const char *a2[] = {"-u", "alice", "-g", "ops", "--join", "deploy started", NULL};
    r = run(p->port, PW_ALICE, a2, IN_NULL, NULL, 15000);
    EXPECT_STATUS(r, 0);
    result_free(&r);
    tc_frame *f = deliver(bob);
    body_is(f, "deploy started", 14);
    IT_EQ(imp_msg_u(&f->m, IMP_T_TARGET_KIND, 0), IMP_TARGET_ROOM);
    IT_CHECK(tc_field_is(&f->m, IMP_T_TARGET, "ops"), "TARGET ops");
    tc_frame_free(f);
    it_finish(p);
}

#define NLINES 10000

static void read_lines_in_order(tc *bob, int n)
{
    uint64_t last_seq = 0;
    for (int i = 1; i <= n; i++) {
        tc_frame *f = tc_wait(bob, IMP_DELIVER, 0, 20000);
        IT_CHECK(f != NULL, "line %d of %d did not arrive", i, n);
        char want[64], got[64];
        snprintf(want, sizeof want, "line %05d", i);
        IT_CHECK(tc_field_is(&f->m, IMP_T_BODY, want), "message %d is '%s', want '%s'", i,
                 tc_str(&f->m, IMP_T_BODY, got, sizeof got), want);
        uint64_t seq = imp_msg_u(&f->m, IMP_T_SEQ, 0);
        IT_CHECK(seq > last_seq, "SEQ %llu after %llu", (unsigned long long)seq,
                 (unsigned long long)last_seq);
        last_seq = seq;
        if (i % 500 == 0 || i == n)
            tc_delivered(bob, seq);
        tc_frame_free(f);
    }
    tc_frame *extra = tc_wait(bob, IMP_DELIVER, 0, 300);
    IT_CHECK(extra == NULL, "more than %d messages arrived", n);
}

static void test_lines_10000(void **state)
{
    (void)state;
    const char *extra[] = {"--set", "offline_quota=100000", NULL};
    imd_proc *p = setup_users(extra, NULL);
    uint64_t t0 = it_now_ms();
    proc pr;
    const char *a[] = {"-u", "alice", "-t", "bob", "-l", NULL};
    spawn(&pr, p->port, PW_ALICE, a, IN_PIPE, NULL);
    /* stream the lines through the pipe in small writes, as `tail -f` would */
    char chunk[4096];
    size_t n = 0;
    for (int i = 1; i <= NLINES; i++) {
        n += (size_t)snprintf(chunk + n, sizeof chunk - n, "line %05d\n", i);
        if (n > sizeof chunk - 32 || i == NLINES) {
            IT_CHECK(write(pr.in_fd, chunk, n) == (ssize_t)n, "write to imsend: %s",
                     strerror(errno));
            n = 0;
        }
    }
    close(pr.in_fd);
    int st = it_wait_exit(pr.pid, 60000);
    char *err = it_slurp(pr.err, NULL);
    IT_CHECK(st == 0, "imsend -l exit %d; stderr: %s", st, err);
    free(err);
    it_note("imsend -l: %d lines sent and acknowledged in %llu ms", NLINES,
            (unsigned long long)(it_now_ms() - t0));
    tc_auth au;
    tc *bob = it_login(p->port, "bob", PW_BOB, &au);
    read_lines_in_order(bob, NLINES);
    tc_close(bob);

    /* -l from a regular file (not pollable), last line without a newline */
    const char *lf = tmp_path("lines.txt");
    it_write_file(lf, "r1\nr2\n\nr4", 9);
    const char *a2[] = {"-u", "alice", "-t", "bob", "-l", NULL};
    result r = run(p->port, PW_ALICE, a2, IN_FILE, lf, 15000);
    EXPECT_STATUS(r, 0);
    result_free(&r);
    bob = it_login(p->port, "bob", PW_BOB, &au);
    const char *want[] = {"r1", "r2", "", "r4"};
    for (int i = 0; i < 4; i++) {
        tc_frame *f = deliver(bob);
        body_is(f, want[i], strlen(want[i]));
        tc_delivered(bob, imp_msg_u(&f->m, IMP_T_SEQ, 0));
        tc_frame_free(f);
    }
    it_finish(p);
}

static void test_id_dedupe_and_json(void **state)
{
    (void)state;
    tc *bob;
    imd_proc *p = setup_users(NULL, &bob);
    const char *a[] = {"-u", "alice", "-t", "bob", "--id", "order-17", "--json", "once", NULL};
    result r1 = run(p->port, PW_ALICE, a, IN_NULL, NULL, 15000);
    EXPECT_STATUS(r1, 0);
    IT_EQ(json_lines_valid(r1.out), 1);
    char l1[512], l2[512];
    line_at(r1.out, 0, l1, sizeof l1);
    IT_CHECK(strstr(l1, "\"v\":1") && strstr(l1, "\"type\":\"ack\"") &&
                 strstr(l1, "\"outcome\":\"stored\"") && strstr(l1, "\"duplicate\":false") &&
                 strstr(l1, "\"client_msg_id\":\"order-17\"") && strstr(l1, "\"code\":0"),
             "first ACK line: %s", l1);
    long long id1 = json_int(l1, "id");
    IT_CHECK(id1 > 0, "id in %s", l1);

    /* the retry: same id, DUPLICATE, same message id, exit 0 */
    result r2 = run(p->port, PW_ALICE, a, IN_NULL, NULL, 15000);
    EXPECT_STATUS(r2, 0);
    IT_EQ(json_lines_valid(r2.out), 1);
    line_at(r2.out, 0, l2, sizeof l2);
    IT_CHECK(strstr(l2, "\"duplicate\":true"), "retry ACK line: %s", l2);
    IT_EQ(json_int(l2, "id"), id1);
    result_free(&r1);
    result_free(&r2);

    tc_frame *f = deliver(bob);
    body_is(f, "once", 4);
    tc_frame_free(f);
    f = tc_wait(bob, IMP_DELIVER, 0, 500);
    IT_CHECK(f == NULL, "the retry was delivered a second time");

    /* --count 3 with --id: KEY-1..KEY-3, one JSON line each; a rerun is all duplicates */
    const char *a3[] = {"-u",      "alice", "-t",     "bob", "--id", "batch",
                        "--count", "3",     "--json", "n",   NULL};
    for (int round = 0; round < 2; round++) {
        result r = run(p->port, PW_ALICE, a3, IN_NULL, NULL, 15000);
        EXPECT_STATUS(r, 0);
        IT_EQ(json_lines_valid(r.out), 3);
        for (int i = 0; i < 3; i++) {
            char l[512], want[64];
            line_at(r.out, i, l, sizeof l);
            snprintf(want, sizeof want, "\"client_msg_id\":\"batch-%d\"", i + 1);
            IT_CHECK(strstr(l, want), "line %d: %s (want %s)", i, l, want);
            IT_CHECK(strstr(l, round ? "\"duplicate\":true" : "\"duplicate\":false"),
                     "round %d line %d: %s", round, i, l);
        }
        result_free(&r);
    }
    for (int i = 0; i < 3; i++) {
        f = deliver(bob);
        tc_frame_free(f);
    }
    f = tc_wait(bob, IMP_DELIVER, 0, 500);
    IT_CHECK(f == NULL, "a --count retry was delivered again");

    /* a refusal in JSON: outcome refused, code 500, code_name, exit 5 */
    const char *a4[] = {"-u", "alice", "-t", "nobody", "--json", "x", NULL};
    result r4 = run(p->port, PW_ALICE, a4, IN_NULL, NULL, 15000);
    EXPECT_STATUS(r4, 5);
    IT_EQ(json_lines_valid(r4.out), 1);
    IT_CHECK(strstr(r4.out, "\"outcome\":\"refused\"") && strstr(r4.out, "\"code\":500") &&
                 strstr(r4.out, "\"code_name\":\"NO_SUCH_USER\"") && !strstr(r4.out, "\"id\":"),
             "refused ACK line: %s", r4.out);
    result_free(&r4);
    it_finish(p);
}

static void test_exit_usage(void **state)
{
    (void)state;
    static const char *const cases[][8] = {
        {NULL},                                             /* nothing at all */
        {"-u", "alice", "-t", "bob", NULL},                 /* no body */
        {"-u", "alice", "hello", NULL},                     /* no target */
        {"-u", "alice", "-t", "bob", "-g", "r", "x", NULL}, /* two targets */
        {"-u", "alice", "-t", "bob", "--ack", "maybe", "x", NULL},
        {"-u", "alice", "-t", "bad name!", "x", NULL},
        {"-u", "alice", "-t", "bob", "-H", "no-equals", "x", NULL},
        {"-u", "alice", "-t", "bob", "--count", "0", "x", NULL},
        {"-u", "alice", "-t", "bob", "--rate", "fast", "x", NULL},
        {"-u", "alice", "-t", "bob", "-f", "/nonexistent/file", NULL},
        {"-u", "alice", "-t", "bob", "--bogus-option", "x", NULL},
        {"-u", "alice", "-t", "bob", "--password", "secret", "x", NULL},
        {"-t", "bob", "x", NULL}, /* no user */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        result r = run(1, "pw", cases[i], IN_NULL, NULL, 5000);
        IT_CHECK(r.status == 2, "case %zu: exit %d, want 2; stderr: %s", i, r.status, r.err);
        IT_CHECK(strncmp(r.err, "imsend: ", 8) == 0, "case %zu: stderr: %s", i, r.err);
        IT_EQ(r.out_len, 0);
        result_free(&r);
    }
    const char *h[] = {"--help", NULL};
    result r = run(0, NULL, h, IN_NULL, NULL, 5000);
    EXPECT_STATUS(r, 0);
    IT_CHECK(strstr(r.out, "EXIT STATUS") && strstr(r.out, "--password-file") &&
                 strstr(r.out, "--interactive"),
             "help: %s", r.out);
    result_free(&r);
    const char *v[] = {"--version", NULL};
    r = run(0, NULL, v, IN_NULL, NULL, 5000);
    EXPECT_STATUS(r, 0);
    IT_CHECK(strstr(r.out, IMP_LIB_VERSION), "version: %s", r.out);
    result_free(&r);
}

static void test_exit_connect(void **state)
{
    (void)state;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    IT_CHECK(bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0, "bind");
    socklen_t sl = sizeof sa;
    getsockname(fd, (struct sockaddr *)&sa, &sl);
    close(fd); /* nothing listens there now */
    const char *a[] = {"-u", "alice", "-t", "bob", "x", NULL};
    result r = run(ntohs(sa.sin_port), "pw", a, IN_NULL, NULL, 10000);
    EXPECT_STATUS(r, 3);
    IT_CHECK(strstr(r.err, "imsend: ") && strstr(r.err, "refused"), "stderr: %s", r.err);
    result_free(&r);
    /* --json: the error object on stdout too */
    const char *a2[] = {"-u", "alice", "-t", "bob", "--json", "x", NULL};
    r = run(ntohs(sa.sin_port), "pw", a2, IN_NULL, NULL, 10000);
    EXPECT_STATUS(r, 3);
    IT_EQ(json_lines_valid(r.out), 1);
    IT_CHECK(strstr(r.out, "\"type\":\"error\"") && strstr(r.out, "\"status\":3"), "out: %s",
             r.out);
    result_free(&r);
}

static void test_exit_auth_and_refused(void **state)
{
    (void)state;
    imd_proc *p = setup_users(NULL, NULL);
    const char *a[] = {"-u", "alice", "-t", "bob", "x", NULL};
    result r = run(p->port, "wrong password", a, IN_NULL, NULL, 15000);
    EXPECT_STATUS(r, 4);
    IT_CHECK(strstr(r.err, "400 AUTH_FAILED"), "stderr: %s", r.err);
    result_free(&r);

    const char *b[] = {"-u", "alice", "-t", "nobody", "x", NULL};
    r = run(p->port, PW_ALICE, b, IN_NULL, NULL, 15000);
    EXPECT_STATUS(r, 5);
    IT_CHECK(strstr(r.err, "imsend: refused: 500 NO_SUCH_USER"), "stderr: %s", r.err);
    result_free(&r);

    /* broadcast needs an administrator */
    const char *c[] = {"-u", "alice", "-b", "all hands", NULL};
    r = run(p->port, PW_ALICE, c, IN_NULL, NULL, 15000);
    EXPECT_STATUS(r, 5);
    IT_CHECK(strstr(r.err, "502 FORBIDDEN"), "stderr: %s", r.err);
    result_free(&r);
    it_finish(p);
}

static void test_exit_timeout(void **state)
{
    (void)state;
    tc *bob;
    imd_proc *p = setup_users(NULL, &bob);
    /* bob is online and never acknowledges: ACK_MODE delivered is never answered */
    const char *a[] = {"-u",        "alice",     "-t", "bob",     "--ack",
                       "delivered", "--timeout", "1",  "waiting", NULL};
    uint64_t t0 = it_now_ms();
    result r = run(p->port, PW_ALICE, a, IN_NULL, NULL, 15000);
    uint64_t ms = it_now_ms() - t0;
    EXPECT_STATUS(r, 6);
    IT_CHECK(strstr(r.err, "602 TIMEOUT") || strstr(r.err, "timeout"), "stderr: %s", r.err);
    IT_CHECK(ms >= 900 && ms < 8000, "took %llu ms", (unsigned long long)ms);
    result_free(&r);
    tc_frame *f = deliver(bob);
    body_is(f, "waiting", 7);
    /* once bob acknowledges, --ack delivered succeeds */
    tc_delivered(bob, imp_msg_u(&f->m, IMP_T_SEQ, 0));
    tc_frame_free(f);
    const char *b[] = {"-u", "alice", "-t", "bob", "--ack", "delivered", "--json", "got it", NULL};
    proc pr;
    spawn(&pr, p->port, PW_ALICE, b, IN_NULL, NULL);
    f = deliver(bob);
    tc_delivered(bob, imp_msg_u(&f->m, IMP_T_SEQ, 0));
    tc_frame_free(f);
    int st = it_wait_exit(pr.pid, 15000);
    char *out = it_slurp(pr.out, NULL);
    IT_CHECK(st == 0 && strstr(out, "\"outcome\":\"delivered\""), "exit %d out %s", st, out);
    free(out);
    it_finish(p);
}

static void test_exit_lost(void **state)
{
    (void)state;
    imd_proc *p = setup_users(NULL, NULL);
    proc pr;
    const char *a[] = {"-u", "alice", "-t", "bob", "-l", "--json", NULL};
    spawn(&pr, p->port, PW_ALICE, a, IN_PIPE, NULL);
    IT_CHECK(write(pr.in_fd, "first\n", 6) == 6, "write");
    /* wait for the first ACK on stdout, then kill the server under it */
    uint64_t end = it_now_ms() + 10000;
    for (;;) {
        char *out = it_slurp(pr.out, NULL);
        int got = strstr(out, "\"type\":\"ack\"") != NULL;
        free(out);
        if (got)
            break;
        IT_CHECK(it_now_ms() < end, "no ACK from imsend -l");
        it_sleep_ms(10);
    }
    imd_kill9(p);
    int st = it_wait_exit(pr.pid, 10000);
    close(pr.in_fd);
    char *err = it_slurp(pr.err, NULL);
    IT_CHECK(st == 7, "exit %d, want 7; stderr: %s", st, err);
    IT_CHECK(strstr(err, "imsend: ") && strstr(err, "connection"), "stderr: %s", err);
    free(err);
}

static void test_ack_none_rate_unix(void **state)
{
    (void)state;
    char sock[300];
    snprintf(sock, sizeof sock, "unix:%s/imd.sock", tmpdir);
    const char *extra[] = {"--listen", sock, NULL};
    tc *bob;
    imd_proc *p = setup_users(extra, &bob);

    /* --ack none: 200 lines, no ACK awaited, all delivered in order */
    const char *lf = tmp_path("none.txt");
    FILE *f = fopen(lf, "w");
    IT_CHECK(f != NULL, "open %s", lf);
    for (int i = 1; i <= 200; i++)
        fprintf(f, "line %05d\n", i);
    fclose(f);
    const char *a1[] = {"-u", "alice", "-t", "bob", "-l", "--ack", "none", "--json", NULL};
    result r = run(p->port, PW_ALICE, a1, IN_FILE, lf, 15000);
    EXPECT_STATUS(r, 0);
    IT_EQ(r.out_len, 0); /* no ACK, no JSON line */
    result_free(&r);
    read_lines_in_order(bob, 200);

    /* --count 5 --rate 20: four 50 ms gaps at least */
    const char *a2[] = {"-u", "alice", "-t", "bob", "--count", "5", "--rate", "20/s", "tick", NULL};
    uint64_t t0 = it_now_ms();
    r = run(p->port, PW_ALICE, a2, IN_NULL, NULL, 15000);
    uint64_t ms = it_now_ms() - t0;
    EXPECT_STATUS(r, 0);
    result_free(&r);
    IT_CHECK(ms >= 200, "--count 5 --rate 20 took %llu ms, want >= 200", (unsigned long long)ms);
    for (int i = 0; i < 5; i++) {
        tc_frame *d = deliver(bob);
        body_is(d, "tick", 4);
        tc_delivered(bob, imp_msg_u(&d->m, IMP_T_SEQ, 0));
        tc_frame_free(d);
    }

    /* over a unix socket, server given with -s unix:PATH */
    const char *a3[] = {"-s", sock, "-u", "alice", "-t", "bob", "via unix socket", NULL};
    r = run(0, PW_ALICE, a3, IN_NULL, NULL, 15000);
    EXPECT_STATUS(r, 0);
    result_free(&r);
    tc_frame *d = deliver(bob);
    body_is(d, "via unix socket", 15);
    tc_frame_free(d);
    it_finish(p);
}

static void test_broadcast_admin(void **state)
{
    (void)state;
    imd_proc *p = it_create_imd(NULL);
    static const char *const add_root[] = {"user", "add", "root", "--admin", NULL};
    IT_EQ(it_admin(p, "root password\n", NULL, 0, add_root), 0);
    it_start(p);
    tc_auth au;
    tc *bob = it_register(p->port, "bob", PW_BOB, &au);
    tc *carol = it_register(p->port, "carol", "carol-password", &au);
    const char *a[] = {"-u", "root", "-b", "maintenance", "at", "18:00", NULL};
    result r = run(p->port, "root password", a, IN_NULL, NULL, 15000);
    EXPECT_STATUS(r, 0);
    result_free(&r);
    tc *who[] = {bob, carol};
    for (int i = 0; i < 2; i++) {
        tc_frame *f = deliver(who[i]);
        body_is(f, "maintenance at 18:00", 20);
        IT_EQ(imp_msg_u(&f->m, IMP_T_TARGET_KIND, 0), IMP_TARGET_BROADCAST);
        IT_CHECK(tc_field_is(&f->m, IMP_T_SENDER, "root"), "SENDER root");
        tc_frame_free(f);
    }
    it_finish(p);
}

/* -l pipelines: several SENDs are in flight at once, never more than --window (read from
 * the -d trace, whose lines are in the order imsend sent and received the frames). */
static void test_window(void **state)
{
    (void)state;
    imd_proc *p = setup_users(NULL, NULL);
    const char *lf = tmp_path("window.txt");
    FILE *f = fopen(lf, "w");
    IT_CHECK(f != NULL, "open %s", lf);
    for (int i = 1; i <= 300; i++)
        fprintf(f, "w%d\n", i);
    fclose(f);
    const char *a[] = {"-u", "alice", "-t", "bob", "-l", "--window", "7", "-d", NULL};
    result r = run(p->port, PW_ALICE, a, IN_FILE, lf, 30000);
    EXPECT_STATUS(r, 0);
    int inflight = 0, max = 0, sends = 0, acks = 0;
    for (const char *l = r.err; l && *l;) {
        if (strncmp(l, "imsend: >> SEND ", 16) == 0) {
            sends++;
            if (++inflight > max)
                max = inflight;
        } else if (strncmp(l, "imsend: << ACK ", 15) == 0) {
            acks++;
            inflight--;
        }
        l = strchr(l, '\n');
        if (l)
            l++;
    }
    result_free(&r);
    IT_EQ(sends, 300);
    IT_EQ(acks, 300);
    IT_CHECK(max <= 7, "%d SENDs in flight, --window 7", max);
    IT_CHECK(max > 1, "no pipelining: at most %d SEND in flight", max);
    it_finish(p);
}

/* ---- the REPL on a pseudo-terminal --------------------------------------------------------- */

typedef struct pty_proc {
    pid_t pid;
    int fd;
    char *buf; /* everything read so far */
    size_t len, cap;
} pty_proc;

static void pty_read(pty_proc *t, int ms)
{
    struct pollfd pfd = {t->fd, POLLIN, 0};
    if (poll(&pfd, 1, ms) <= 0)
        return;
    char tmp[4096];
    ssize_t n = read(t->fd, tmp, sizeof tmp);
    if (n <= 0)
        return;
    if (t->len + (size_t)n + 1 > t->cap) {
        t->cap = (t->len + (size_t)n + 1) * 2;
        t->buf = realloc(t->buf, t->cap);
    }
    memcpy(t->buf + t->len, tmp, (size_t)n);
    t->len += (size_t)n;
    t->buf[t->len] = 0;
}

/* Wait until s appears in the output after offset from; returns the offset after it. */
static size_t pty_expect(pty_proc *t, size_t from, const char *s, int ms)
{
    uint64_t end = it_now_ms() + (uint64_t)ms;
    for (;;) {
        if (t->buf && t->len > from) {
            char *hit = strstr(t->buf + from, s);
            if (hit)
                return (size_t)(hit - t->buf) + strlen(s);
        }
        IT_CHECK(it_now_ms() < end, "'%s' not seen on the terminal; output so far:\n%s", s,
                 t->buf ? t->buf + from : "");
        pty_read(t, 20);
    }
}

static void pty_type(pty_proc *t, const char *s)
{
    size_t n = strlen(s);
    IT_CHECK(write(t->fd, s, n) == (ssize_t)n, "write to the terminal");
}

/* imsend -s SERVER -u alice -i on a new pseudo-terminal, history in hist. */
static void pty_start(pty_proc *t, int port, const char *hist)
{
    char server[64];
    snprintf(server, sizeof server, "127.0.0.1:%d", port);
    struct winsize ws = {24, 100, 0, 0};
    memset(t, 0, sizeof *t);
    t->pid = forkpty(&t->fd, NULL, NULL, &ws);
    IT_CHECK(t->pid >= 0, "forkpty: %s", strerror(errno));
    if (t->pid == 0) {
        setenv("IMP_PASSWORD", PW_ALICE, 1);
        setenv("IMSEND_HISTORY", hist, 1);
        setenv("TERM", "xterm", 1);
        setenv("INPUTRC", "/dev/null", 1);
        unsetenv("IMP_SERVER");
        unsetenv("IMP_USER");
        execl(it_tool_path("imsend"), it_tool_path("imsend"), "-s", server, "-u", "alice", "-i",
              (char *)NULL);
        _exit(121);
    }
}

/* Wait for the REPL to exit; its status (-1 when killed after 10 s). */
static int pty_wait(pty_proc *t)
{
    int st = -1;
    uint64_t end = it_now_ms() + 10000;
    for (;;) {
        pty_read(t, 20);
        int ws_;
        if (waitpid(t->pid, &ws_, WNOHANG) == t->pid) {
            st = WIFEXITED(ws_) ? WEXITSTATUS(ws_) : 128 + WTERMSIG(ws_);
            break;
        }
        if (it_now_ms() > end) {
            kill(t->pid, SIGKILL);
            waitpid(t->pid, &ws_, 0);
            break;
        }
    }
    close(t->fd);
    return st;
}

static void test_repl(void **state)
{
    (void)state;
    tc *bob;
    imd_proc *p = setup_users(NULL, &bob);
    const char *hist = tmp_path("history");
    unlink(hist);
    pty_proc t;
    pty_start(&t, p->port, hist);
    size_t at = pty_expect(&t, 0, "> ", 10000); /* the prompt */

    /* tab completion of an online user's name: "/to b<TAB>" becomes "/to bob " */
    pty_type(&t, "/to b\t");
    at = pty_expect(&t, at, "/to bob", 5000);
    pty_type(&t, "\r");
    at = pty_expect(&t, at, "bob>", 5000); /* the prompt names the recipient */

    /* a typed message arrives */
    pty_type(&t, "hello from the terminal\r");
    tc_frame *f = deliver(bob);
    body_is(f, "hello from the terminal", 23);
    IT_CHECK(tc_field_is(&f->m, IMP_T_SENDER, "alice"), "SENDER");
    tc_delivered(bob, imp_msg_u(&f->m, IMP_T_SEQ, 0));
    tc_frame_free(f);

    /* a message arrives while a line is half typed: it is printed, the line survives */
    pty_type(&t, "half typ");
    at = pty_expect(&t, at, "half typ", 5000);
    tc_ack ack;
    IT_EQ(tc_send_text(bob, "alice", NULL, "interrupting cow", &ack), 0);
    at = pty_expect(&t, at, "interrupting cow", 5000);
    at = pty_expect(&t, at, "half typ", 5000); /* redrawn after the message */
    pty_type(&t, "ed\r");
    f = deliver(bob);
    body_is(f, "half typed", 10);
    tc_delivered(bob, imp_msg_u(&f->m, IMP_T_SEQ, 0));
    tc_frame_free(f);

    /* /who lists bob; /quit ends with status 0 and saves the history */
    pty_type(&t, "/who\r");
    at = pty_expect(&t, at, "bob", 5000);
    pty_type(&t, "/quit\r");
    int st = pty_wait(&t);
    IT_CHECK(st == 0, "imsend -i exit %d; terminal:\n%s", st, t.buf ? t.buf : "");
    char *h = it_slurp(hist, NULL);
    IT_CHECK(strstr(h, "hello from the terminal") && strstr(h, "/to bob"), "history: %s", h);
    free(h);
    free(t.buf);
    it_finish(p);
}

static void test_repl_rooms(void **state)
{
    (void)state;
    tc *bob;
    imd_proc *p = setup_users(NULL, &bob);
    imp_msg m;
    imp_msg_init(&m, IMP_JOIN, 0);
    imp_msg_set_s(&m, IMP_T_ROOM, "ops");
    tc_frame *ok = tc_wait_reply(bob, tc_request(bob, &m), T);
    IT_CHECK(ok && ok->m.type == IMP_OK, "JOIN ops");
    tc_frame_free(ok);
    const char *names[] = {"alice"};
    uint8_t nb[64];
    imp_builder b;
    imp_builder_init(&b, nb, sizeof nb);
    imp_names_add(&b, names[0], 5);
    imp_msg_init(&m, IMP_SUBSCRIBE, 0);
    imp_msg_set_b(&m, IMP_T_NAMES, nb, b.len);
    ok = tc_wait_reply(bob, tc_request(bob, &m), T);
    IT_CHECK(ok && ok->m.type == IMP_OK, "SUBSCRIBE alice");
    tc_frame_free(ok);

    const char *hist = tmp_path("history2");
    pty_proc t;
    pty_start(&t, p->port, hist);
    size_t at = pty_expect(&t, 0, "imsend> ", 10000);

    /* room name completion after /join, then a message to the room */
    /* The completion is proven by the prompt: "/join o" + Tab + Enter must join "ops" (the echo
     * of the completed line is not checked: a notice printed meanwhile may split it). */
    pty_type(&t, "/join o\t");
    pty_read(&t, 200);
    pty_type(&t, "\r");
    at = pty_expect(&t, at, "#ops>", 5000);
    pty_type(&t, "hello room\r");
    tc_frame *f = deliver(bob);
    body_is(f, "hello room", 10);
    IT_EQ(imp_msg_u(&f->m, IMP_T_TARGET_KIND, 0), IMP_TARGET_ROOM);
    IT_CHECK(tc_field_is(&f->m, IMP_T_TARGET, "ops"), "TARGET ops");
    tc_delivered(bob, imp_msg_u(&f->m, IMP_T_SEQ, 0));
    tc_frame_free(f);

    /* a room message from bob is shown with the room and the sender */
    tc_msg rm = {IMP_TARGET_ROOM, "ops", NULL, -1, -1, NULL, 0, 0, "from bob", 8};
    tc_ack ack;
    IT_EQ(tc_send(bob, &rm, &ack, T), 0);
    at = pty_expect(&t, at, "#ops bob: from bob", 5000);

    /* /history: both messages, oldest first */
    pty_type(&t, "/history 5\r");
    size_t h1 = pty_expect(&t, at, "alice: hello room", 5000);
    at = pty_expect(&t, h1, "bob: from bob", 5000);

    /* /status away "lunch": bob (subscribed) sees it */
    pty_type(&t, "/status away \"gone to lunch\"\r");
    uint64_t end = it_now_ms() + T;
    int seen = 0;
    while (!seen && it_now_ms() < end) {
        tc_frame *pe = tc_wait(bob, IMP_PRESENCE_EVENT, 0, 500);
        if (!pe)
            continue;
        seen = tc_field_is(&pe->m, IMP_T_USER, "alice") &&
               imp_msg_u(&pe->m, IMP_T_STATUS, 0) == IMP_STATUS_AWAY &&
               tc_field_is(&pe->m, IMP_T_STATUS_TEXT, "gone to lunch");
        tc_frame_free(pe);
    }
    IT_CHECK(seen, "no PRESENCE_EVENT away 'gone to lunch' for alice");

    /* an unknown command is reported; Ctrl-D ends with status 0 */
    pty_type(&t, "/frobnicate\r");
    at = pty_expect(&t, at, "unknown command", 5000);
    pty_type(&t, "\x04");
    int st = pty_wait(&t);
    IT_CHECK(st == 0, "imsend -i exit %d after Ctrl-D; terminal:\n%s", st, t.buf ? t.buf : "");
    free(t.buf);
    it_finish(p);
}

/* No password anywhere: imsend asks on the terminal, without echo. */
static void test_password_prompt(void **state)
{
    (void)state;
    tc *bob;
    imd_proc *p = setup_users(NULL, &bob);
    char server[64];
    snprintf(server, sizeof server, "127.0.0.1:%d", p->port);
    pty_proc t;
    memset(&t, 0, sizeof t);
    t.pid = forkpty(&t.fd, NULL, NULL, NULL);
    IT_CHECK(t.pid >= 0, "forkpty");
    if (t.pid == 0) {
        unsetenv("IMP_PASSWORD");
        execl(it_tool_path("imsend"), it_tool_path("imsend"), "-s", server, "-u", "alice", "-t",
              "bob", "asked", (char *)NULL);
        _exit(121);
    }
    size_t at = pty_expect(&t, 0, "password for alice: ", 10000);
    pty_type(&t, PW_ALICE "\r");
    int st = pty_wait(&t);
    IT_CHECK(st == 0, "exit %d; terminal: %s", st, t.buf);
    IT_CHECK(!strstr(t.buf + at, PW_ALICE), "the password was echoed: %s", t.buf);
    free(t.buf);
    tc_frame *f = deliver(bob);
    body_is(f, "asked", 5);
    tc_frame_free(f);
    it_finish(p);
}

int main(void)
{
    it_main_init(300);
    if (!it_imd_or_skip())
        return 0;
    if (access(it_tool_path("imsend"), X_OK) != 0) {
        fprintf(stderr, "imsend not found at %s\n", it_tool_path("imsend"));
        return 1;
    }
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_roundtrip, it_teardown),
        cmocka_unit_test_teardown(test_offline, it_teardown),
        cmocka_unit_test_teardown(test_room, it_teardown),
        cmocka_unit_test_teardown(test_lines_10000, it_teardown),
        cmocka_unit_test_teardown(test_id_dedupe_and_json, it_teardown),
        cmocka_unit_test_teardown(test_exit_usage, it_teardown),
        cmocka_unit_test_teardown(test_exit_connect, it_teardown),
        cmocka_unit_test_teardown(test_exit_auth_and_refused, it_teardown),
        cmocka_unit_test_teardown(test_exit_timeout, it_teardown),
        cmocka_unit_test_teardown(test_exit_lost, it_teardown),
        cmocka_unit_test_teardown(test_ack_none_rate_unix, it_teardown),
        cmocka_unit_test_teardown(test_broadcast_admin, it_teardown),
        cmocka_unit_test_teardown(test_window, it_teardown),
        cmocka_unit_test_teardown(test_repl, it_teardown),
        cmocka_unit_test_teardown(test_repl_rooms, it_teardown),
        cmocka_unit_test_teardown(test_password_prompt, it_teardown),
    };
    int r = cmocka_run_group_tests(tests, NULL, NULL);
    if (!getenv("IMP_ITEST_KEEP")) {
        char cmd[300];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
        if (system(cmd) != 0)
            fprintf(stderr, "could not remove %s\n", tmpdir);
    }
    return r;
}
