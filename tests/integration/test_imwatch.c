/* Integration: the imwatch tool (tools/imwatch) against a real imd, messages sent with the
 * blocking test client.
 *
 * - live and offline messages printed, in SEQ order, and acknowledged: a second imwatch sees
 *   nothing; --no-ack leaves them queued; messages past -C stay queued;
 * - -g ROOM (joins; --rooms-only drops direct messages), --presence USER;
 * - -F with every escape, --json lines parsed (schema v1, base64 for binary bodies), -0 with
 *   NUL and newline bytes in bodies, byte for byte;
 * - -C, -W (exit 6), --until (0 on a match, 1 on timeout), --ready before any message, --since
 *   (LOGIN LAST_SEQ);
 * - --stats (an administrator, stdout not a terminal: plain lines with rates), FORBIDDEN for
 *   a non-administrator (exit 5), --monitor;
 * - --decode on frames built with libimp, and on corrupted streams (errors at their offset);
 * - exit statuses 2 (usage), 3 (cannot connect), 4 (authentication refused);
 * - --who and --rooms (imd with page_size=2, so every listing takes several pages), their exit
 *   statuses, and the bash completion (dist/bash-completion/imd) that uses them for the user
 *   names of imsend -t and the room names of -g, run in bash against the same imd.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <netinet/in.h>
#include <time.h>
#include <unistd.h>

#include "itest.h"

#define PW "watch password"
#define RUN_MS 15000 /* bound of one imwatch run */

/* ---- imwatch as a child process ------------------------------------------------------------ */

typedef struct iwp {
    pid_t pid;
    int out_fd; /* read end of its stdout */
    char *out;  /* everything read so far (NUL-terminated; may contain NULs) */
    size_t len, cap;
    char errpath[64];
    int status; /* exit status once reaped; -1 before */
} iwp;

/* Start imwatch with args (NULL-terminated); port > 0 adds "-s 127.0.0.1:PORT"; password
 * (may be NULL) goes in IMP_PASSWORD; stdin_path NULL: /dev/null. */
static iwp *iw_spawn(int port, const char *password, const char *stdin_path,
                     const char *const *args)
{
    iwp *p = calloc(1, sizeof *p);
    IT_CHECK(p != NULL, "calloc");
    p->status = -1;
    snprintf(p->errpath, sizeof p->errpath, "/tmp/imwatch-test-%d-XXXXXX", (int)getpid());
    int efd = mkstemp(p->errpath);
    IT_CHECK(efd >= 0, "mkstemp: %s", strerror(errno));
    int pfd[2];
    IT_CHECK(pipe(pfd) == 0, "pipe: %s", strerror(errno));
    const char *argv[64];
    int n = 0;
    argv[n++] = it_tool_path("imwatch");
    char addr[64];
    if (port > 0) {
        snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
        argv[n++] = "-s";
        argv[n++] = addr;
    }
    for (int i = 0; args && args[i] && n < 63; i++)
        argv[n++] = args[i];
    argv[n] = NULL;
    fflush(NULL);
    pid_t pid = fork();
    IT_CHECK(pid >= 0, "fork: %s", strerror(errno));
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        int in = open(stdin_path ? stdin_path : "/dev/null", O_RDONLY);
        if (in >= 0)
            dup2(in, 0);
        dup2(pfd[1], 1);
        dup2(efd, 2);
        close(pfd[0]);
        close(pfd[1]);
        if (password)
            setenv("IMP_PASSWORD", password, 1);
        else
            unsetenv("IMP_PASSWORD");
        unsetenv("IMP_SERVER");
        unsetenv("IMP_USER");
        signal(SIGPIPE, SIG_DFL);
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    close(pfd[1]);
    close(efd);
    p->pid = pid;
    p->out_fd = pfd[0];
    p->cap = 4096;
    p->out = malloc(p->cap);
    IT_CHECK(p->out != NULL, "malloc");
    p->out[0] = '\0';
    return p;
}

/* Read what is available within timeout_ms. Returns 0 at EOF, 1 otherwise. */
static int iw_read(iwp *p, int timeout_ms)
{
    if (p->out_fd < 0)
        return 0;
    struct pollfd pf = {p->out_fd, POLLIN, 0};
    int r = poll(&pf, 1, timeout_ms);
    if (r <= 0)
        return 1;
    if (p->cap - p->len < 4097) {
        p->cap *= 2;
        p->out = realloc(p->out, p->cap);
        IT_CHECK(p->out != NULL, "realloc");
    }
    ssize_t n = read(p->out_fd, p->out + p->len, 4096);
    if (n <= 0) {
        close(p->out_fd);
        p->out_fd = -1;
        return 0;
    }
    p->len += (size_t)n;
    p->out[p->len] = '\0';
    return 1;
}

static void iw_dump(const iwp *p)
{
    fprintf(stderr, "   [imwatch stdout, %zu bytes]\n%.*s\n", p->len, (int)p->len, p->out);
    FILE *f = fopen(p->errpath, "r");
    if (f) {
        char line[512];
        fprintf(stderr, "   [imwatch stderr]\n");
        while (fgets(line, sizeof line, f))
            fprintf(stderr, "   %s", line);
        fclose(f);
    }
}

/* Wait until stdout contains needle; 1 found, 0 on timeout or EOF first. */
static int iw_wait_for(iwp *p, const char *needle, int timeout_ms)
{
    uint64_t end = it_now_ms() + (uint64_t)timeout_ms;
    while (!memmem(p->out, p->len, needle, strlen(needle))) {
        uint64_t now = it_now_ms();
        if (now >= end)
            return 0;
        if (!iw_read(p, (int)(end - now)) && !memmem(p->out, p->len, needle, strlen(needle)))
            return 0;
    }
    return 1;
}

static char *iw_stderr(const iwp *p)
{
    static char buf[8192];
    buf[0] = '\0';
    FILE *f = fopen(p->errpath, "r");
    if (f) {
        size_t n = fread(buf, 1, sizeof buf - 1, f);
        buf[n] = '\0';
        fclose(f);
    }
    return buf;
}

/* Read to EOF and reap within timeout_ms; returns the exit status (128+signal), or -1 when it
 * had to be killed. */
static int iw_finish(iwp *p, int timeout_ms)
{
    uint64_t end = it_now_ms() + (uint64_t)timeout_ms;
    while (p->out_fd >= 0 && it_now_ms() < end)
        iw_read(p, (int)(end - it_now_ms()));
    int st;
    for (;;) {
        pid_t r = waitpid(p->pid, &st, WNOHANG);
        if (r == p->pid)
            break;
        if (it_now_ms() >= end) {
            kill(p->pid, SIGKILL);
            waitpid(p->pid, &st, 0);
            iw_dump(p);
            p->status = -1;
            return -1;
        }
        it_sleep_ms(10);
    }
    p->status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    /* A sanitized build reports on stderr: any report fails the test. */
    const char *err = iw_stderr(p);
    if (strstr(err, "AddressSanitizer") || strstr(err, "LeakSanitizer") ||
        strstr(err, "runtime error:")) {
        iw_dump(p);
        IT_CHECK(0, "imwatch: sanitizer report");
    }
    return p->status;
}

static void iw_free(iwp *p)
{
    if (!p)
        return;
    if (p->status < 0 && p->pid > 0) {
        kill(p->pid, SIGKILL);
        waitpid(p->pid, NULL, 0);
    }
    if (p->out_fd >= 0)
        close(p->out_fd);
    unlink(p->errpath);
    free(p->out);
    free(p);
}

/* Run to completion: the exit status (checked by the caller), output kept in *pp. */
static int iw_run(int port, const char *password, const char *const *args, iwp **pp)
{
    iwp *p = iw_spawn(port, password, NULL, args);
    int st = iw_finish(p, RUN_MS);
    *pp = p;
    return st;
}

#define IW_EXPECT(p, want)                                                                \
    do {                                                                                  \
        if ((p)->status != (want)) {                                                      \
            iw_dump(p);                                                                   \
            IT_CHECK(0, "imwatch exit status %d, expected %d", (p)->status, (int)(want)); \
        }                                                                                 \
    } while (0)

#define IW_HAS(p, needle)                                            \
    do {                                                             \
        if (!memmem((p)->out, (p)->len, (needle), strlen(needle))) { \
            iw_dump(p);                                              \
            IT_CHECK(0, "imwatch output lacks '%s'", (needle));      \
        }                                                            \
    } while (0)

/* ---- helpers on the server side ------------------------------------------------------------ */

static tc *reg(imd_proc *d, char *name, size_t len, const char *prefix)
{
    tc_auth a;
    it_name(name, len, prefix);
    return it_register(d->port, name, PW, &a);
}

/* Register a user and disconnect (so that its messages queue offline). */
static void reg_offline(imd_proc *d, char *name, size_t len, const char *prefix)
{
    tc *c = reg(d, name, len, prefix);
    tc_close(c);
}

static uint64_t send_to(tc *c, int kind, const char *to, const void *body, size_t len)
{
    tc_msg s;
    tc_ack a;
    memset(&s, 0, sizeof s);
    s.kind = kind;
    s.target = to;
    s.cls = -1;
    s.ack_mode = -1;
    s.body = body;
    s.body_len = len;
    int r = tc_send(c, &s, &a, 5000);
    IT_CHECK(r == 0 && a.outcome == IMP_OUTCOME_STORED, "SEND to %s: %d outcome %d code %d", to, r,
             a.outcome, a.code);
    return a.msg_id;
}

static uint64_t send_text(tc *c, const char *to, const char *body)
{
    return send_to(c, IMP_TARGET_USER, to, body, strlen(body));
}

static void join(tc *c, const char *room)
{
    imp_msg m;
    imp_msg_init(&m, IMP_JOIN, 0);
    imp_msg_set_s(&m, IMP_T_ROOM, room);
    uint32_t req = tc_request(c, &m);
    IT_CHECK(req != 0, "JOIN %s not sent", room);
    tc_frame *f = tc_wait_reply(c, req, 5000);
    IT_CHECK(f && f->m.type == IMP_OK, "JOIN %s not answered OK", room);
    tc_frame_free(f);
}

static size_t count_lines(const iwp *p)
{
    size_t n = 0;
    for (size_t i = 0; i < p->len; i++)
        n += p->out[i] == '\n';
    return n;
}

/* ---- a minimal JSON checker: validates one object and extracts top-level scalars ---------- */

typedef struct jp {
    const char *s, *end;
    int depth;
    /* top-level key -> raw value (string values unescaped for plain ASCII) */
    char keys[32][32];
    char vals[32][512];
    int n;
} jp;

static void jws(jp *j)
{
    while (j->s < j->end && (*j->s == ' ' || *j->s == '\t' || *j->s == '\r' || *j->s == '\n'))
        j->s++;
}

static int jstr(jp *j, char *out, size_t outlen)
{
    size_t k = 0;
    if (j->s >= j->end || *j->s != '"')
        return -1;
    j->s++;
    while (j->s < j->end && *j->s != '"') {
        unsigned char c = (unsigned char)*j->s++;
        if (c < 0x20)
            return -1;
        if (c == '\\') {
            if (j->s >= j->end)
                return -1;
            c = (unsigned char)*j->s++;
            switch (c) {
            case 'n':
                c = '\n';
                break;
            case 't':
                c = '\t';
                break;
            case 'r':
                c = '\r';
                break;
            case 'b':
                c = '\b';
                break;
            case 'f':
                c = '\f';
                break;
            case '"':
            case '\\':
            case '/':
                break;
            case 'u': {
                unsigned v = 0;
                for (int i = 0; i < 4; i++) {
                    if (j->s >= j->end)
                        return -1;
                    char h = *j->s++;
                    v = v * 16 + (unsigned)(h >= '0' && h <= '9'   ? h - '0'
                                            : h >= 'a' && h <= 'f' ? h - 'a' + 10
                                            : h >= 'A' && h <= 'F' ? h - 'A' + 10
                                                                   : 99);
                    if (v > 0xFFFF)
                        return -1;
                }
                c = v < 0x100 ? (unsigned char)v : '?';
                break;
            }
            default:
                return -1;
            }
        }
        if (out && k + 1 < outlen)
            out[k++] = (char)c;
    }
    if (j->s >= j->end)
        return -1;
    j->s++;
    if (out)
        out[k] = '\0';
    return (int)k;
}

static int jvalue(jp *j, char *out, size_t outlen);

static int jcontainer(jp *j, char open, char close, int top)
{
    j->s++;
    jws(j);
    if (j->s < j->end && *j->s == close) {
        j->s++;
        return 0;
    }
    for (;;) {
        jws(j);
        char key[32] = "";
        if (open == '{') {
            if (jstr(j, key, sizeof key) < 0)
                return -1;
            jws(j);
            if (j->s >= j->end || *j->s != ':')
                return -1;
            j->s++;
            jws(j);
        }
        char *val = NULL;
        size_t vl = 0;
        if (top && open == '{' && j->n < 32) {
            snprintf(j->keys[j->n], sizeof j->keys[j->n], "%s", key);
            val = j->vals[j->n];
            vl = sizeof j->vals[j->n];
            j->n++;
        }
        if (jvalue(j, val, vl) < 0)
            return -1;
        jws(j);
        if (j->s < j->end && *j->s == ',') {
            j->s++;
            continue;
        }
        if (j->s < j->end && *j->s == close) {
            j->s++;
            return 0;
        }
        return -1;
    }
}

static int jvalue(jp *j, char *out, size_t outlen)
{
    jws(j);
    if (j->s >= j->end)
        return -1;
    const char *start = j->s;
    if (*j->s == '"')
        return jstr(j, out, outlen) < 0 ? -1 : 0;
    if (*j->s == '{' || *j->s == '[') {
        if (++j->depth > 16)
            return -1;
        int r = jcontainer(j, *j->s, *j->s == '{' ? '}' : ']', 0);
        j->depth--;
        if (out && outlen)
            snprintf(out, outlen, "%.*s", (int)(j->s - start), start);
        return r;
    }
    if (!strncmp(j->s, "true", 4) || !strncmp(j->s, "null", 4))
        j->s += 4;
    else if (!strncmp(j->s, "false", 5))
        j->s += 5;
    else {
        if (*j->s == '-')
            j->s++;
        if (j->s >= j->end || *j->s < '0' || *j->s > '9')
            return -1;
        while (j->s < j->end && ((*j->s >= '0' && *j->s <= '9') || *j->s == '.' || *j->s == 'e' ||
                                 *j->s == 'E' || *j->s == '+' || *j->s == '-'))
            j->s++;
    }
    if (out && outlen)
        snprintf(out, outlen, "%.*s", (int)(j->s - start), start);
    return 0;
}

/* Parse one line as a JSON object; 0 or -1. */
static int json_parse(jp *j, const char *line, size_t len)
{
    memset(j, 0, sizeof *j);
    j->s = line;
    j->end = line + len;
    jws(j);
    if (j->s >= j->end || *j->s != '{')
        return -1;
    if (jcontainer(j, '{', '}', 1) < 0)
        return -1;
    jws(j);
    return j->s == j->end ? 0 : -1;
}

static const char *jget(const jp *j, const char *key)
{
    for (int i = 0; i < j->n; i++)
        if (strcmp(j->keys[i], key) == 0)
            return j->vals[i];
    return NULL;
}

static void json_is(const jp *j, const char *key, const char *want)
{
    const char *v = jget(j, key);
    IT_CHECK(v != NULL, "JSON lacks \"%s\"", key);
    IT_CHECK(strcmp(v, want) == 0, "JSON \"%s\" is '%s', expected '%s'", key, v, want);
}

/* ---- tests -------------------------------------------------------------------------------- */

/* Offline then live messages, printed in order and acknowledged; a second run sees nothing;
 * --no-ack peeks; the default line format. */
static void test_live_offline_ack(void **state)
{
    (void)state;
    imd_proc *d = it_start_imd(NULL);
    char alice[40], bob[40];
    tc *a = reg(d, alice, sizeof alice, "alice");
    reg_offline(d, bob, sizeof bob, "bob");
    send_text(a, bob, "offline one");
    send_text(a, bob, "offline two");

    const char *args[] = {"-u", bob, "--ready", "-C", "3", "-W", "10", "-F", "%n %f %b", NULL};
    iwp *p = iw_spawn(d->port, PW, NULL, args);
    IT_CHECK(iw_wait_for(p, "ready\n", RUN_MS), "no ready line");
    send_text(a, bob, "live three");
    IT_EQ(iw_finish(p, RUN_MS), 0);
    char want[256];
    snprintf(want, sizeof want, "ready\n1 %s offline one\n2 %s offline two\n3 %s live three\n",
             alice, alice, alice);
    if (strcmp(p->out, want) != 0) {
        iw_dump(p);
        IT_CHECK(0, "output differs, expected:\n%s", want);
    }
    iw_free(p);

    /* Acknowledged: nothing left. -W ends the run with 6. */
    const char *again[] = {"-u", bob, "-W", "0.5", NULL};
    iw_run(d->port, PW, again, &p);
    IW_EXPECT(p, 6);
    IT_EQ(p->len, 0);
    iw_free(p);

    /* --no-ack twice sees the same message; the default line format. */
    send_text(a, bob, "peek\tme");
    const char *peek[] = {"-u", bob, "--no-ack", "-C", "1", NULL};
    for (int i = 0; i < 2; i++) {
        iw_run(d->port, PW, peek, &p);
        IW_EXPECT(p, 0);
        char line[128];
        snprintf(line, sizeof line, " user:%s <%s> peek\\tme\n", bob, alice);
        IW_HAS(p, line);
        IT_CHECK(p->len > 24 && p->out[4] == '-' && p->out[10] == 'T' && p->out[23] == 'Z',
                 "no ISO time first: %s", p->out);
        iw_free(p);
    }
    /* Messages past -C stay queued: two queued, -C 1 takes one, the next run the other. */
    send_text(a, bob, "second");
    const char *one[] = {"-u", bob, "-C", "1", "-F", "%b", NULL};
    iw_run(d->port, PW, one, &p);
    IW_EXPECT(p, 0);
    IT_CHECK(strcmp(p->out, "peek\tme\n") == 0, "got '%s'", p->out);
    iw_free(p);
    iw_run(d->port, PW, one, &p);
    IW_EXPECT(p, 0);
    IT_CHECK(strcmp(p->out, "second\n") == 0, "got '%s'", p->out);
    iw_free(p);

    /* And the test client sees an empty queue too. */
    tc_auth au;
    tc *b = it_login(d->port, bob, PW, &au);
    tc_frame *f = tc_wait(b, IMP_DELIVER, 0, 500);
    IT_CHECK(f == NULL, "a DELIVER after imwatch acknowledged everything");
    tc_close(b);
    tc_close(a);
    it_liveness(d, 0, NULL, NULL, NULL, NULL);
    it_finish(d);
}

/* Many messages: the batched, cumulative DELIVERED drains the whole queue; --until with -C
 * bounds the messages examined. */
static void test_many_acked(void **state)
{
    (void)state;
    imd_proc *d = it_start_imd(NULL);
    char alice[40], bob[40], body[32];
    tc *a = reg(d, alice, sizeof alice, "alice");
    reg_offline(d, bob, sizeof bob, "bob");
    for (int i = 1; i <= 150; i++) {
        snprintf(body, sizeof body, "m%d", i);
        send_text(a, bob, body);
    }
    iwp *p;
    const char *until[] = {"-u", bob, "--until", "^m200$", "-C", "10", "-F", "%b", NULL};
    iw_run(d->port, PW, until, &p);
    IW_EXPECT(p, 1); /* ten examined, none matched */
    IT_EQ(count_lines(p), 10);
    iw_free(p);
    const char *all[] = {"-u", bob, "-C", "140", "-F", "%n", NULL};
    iw_run(d->port, PW, all, &p);
    IW_EXPECT(p, 0);
    IT_EQ(count_lines(p), 140);
    IT_CHECK(strncmp(p->out, "11\n", 3) == 0, "starts at '%.8s'", p->out);
    IT_CHECK(strstr(p->out, "\n150\n") != NULL, "ends at 150");
    iw_free(p);
    const char *none[] = {"-u", bob, "-W", "0.5", NULL};
    iw_run(d->port, PW, none, &p);
    IW_EXPECT(p, 6);
    IT_EQ(p->len, 0);
    iw_free(p);
    tc_close(a);
    it_finish(d);
}

/* The server goes away: 7 (connection lost); with --until: 1 (the stream ended first). */
static void test_connection_lost(void **state)
{
    (void)state;
    imd_proc *d = it_start_imd(NULL);
    char bob[40];
    reg_offline(d, bob, sizeof bob, "bob");
    const char *args[] = {"-u", bob, "--ready", NULL};
    iwp *p = iw_spawn(d->port, PW, NULL, args);
    IT_CHECK(iw_wait_for(p, "ready\n", RUN_MS), "no ready line");
    IT_EQ(imd_stop(d, 5000), 0);
    IT_EQ(iw_finish(p, RUN_MS), 7);
    IT_CHECK(strstr(iw_stderr(p), "730") != NULL, "no SHUTDOWN code: %s", iw_stderr(p));
    iw_free(p);

    it_start(d);
    const char *until[] = {"-u", bob, "--ready", "--until", "x", NULL};
    p = iw_spawn(d->port, PW, NULL, until);
    IT_CHECK(iw_wait_for(p, "ready\n", RUN_MS), "no ready line");
    IT_EQ(imd_stop(d, 5000), 0);
    IT_EQ(iw_finish(p, RUN_MS), 1);
    iw_free(p);
    it_start(d);
    it_finish(d);
}

/* -g joins and filters; --rooms-only drops direct messages. */
static void test_rooms(void **state)
{
    (void)state;
    imd_proc *d = it_start_imd(NULL);
    char alice[40], bob[40], room[40], other[40];
    tc *a = reg(d, alice, sizeof alice, "alice");
    reg_offline(d, bob, sizeof bob, "bob");
    it_name(room, sizeof room, "room");
    it_name(other, sizeof other, "other");
    join(a, room);
    join(a, other);

    const char *args[] = {"-u", bob,  "-g",          room, "--rooms-only", "--ready", "-C",
                          "1",  "-F", "%k %t %f %b", NULL};
    iwp *p = iw_spawn(d->port, PW, NULL, args);
    IT_CHECK(iw_wait_for(p, "ready\n", RUN_MS), "no ready line");
    send_text(a, bob, "direct");
    send_to(a, IMP_TARGET_ROOM, room, "in the room", 11);
    IT_EQ(iw_finish(p, RUN_MS), 0);
    char want[160];
    snprintf(want, sizeof want, "ready\nroom %s %s in the room\n", room, alice);
    IT_CHECK(strcmp(p->out, want) == 0, "got '%s', expected '%s'", p->out, want);
    iw_free(p);

    /* Without --rooms-only: direct messages too. bob is a member of room now (joined by
     * imwatch) but not of other: messages to other never reach him anyway. */
    const char *args2[] = {"-u", bob, "-g", room, "--ready", "-C", "2", "-F", "%k:%t %b", NULL};
    p = iw_spawn(d->port, PW, NULL, args2);
    IT_CHECK(iw_wait_for(p, "ready\n", RUN_MS), "no ready line");
    send_to(a, IMP_TARGET_ROOM, other, "elsewhere", 9);
    send_text(a, bob, "direct two");
    send_to(a, IMP_TARGET_ROOM, room, "room two", 8);
    IT_EQ(iw_finish(p, RUN_MS), 0);
    snprintf(want, sizeof want, "ready\nuser:%s direct two\nroom:%s room two\n", bob, room);
    IT_CHECK(strcmp(p->out, want) == 0, "got '%s', expected '%s'", p->out, want);
    iw_free(p);

    /* A room name that is not valid is a usage error. */
    const char *bad[] = {"-u", bob, "-g", "-bad-", NULL};
    iw_run(d->port, PW, bad, &p);
    IW_EXPECT(p, 2);
    iw_free(p);
    tc_close(a);
    it_finish(d);
}

/* -F with every escape. */
static void test_format(void **state)
{
    (void)state;
    imd_proc *d = it_start_imd(NULL);
    char alice[40], bob[40];
    tc *a = reg(d, alice, sizeof alice, "alice");
    reg_offline(d, bob, sizeof bob, "bob");
    int64_t before = (int64_t)time(NULL) * 1000 - 2000;
    uint64_t id = send_text(a, bob, "a\tb\\c");
    const char *args[] = {
        "-u", bob, "-C", "1", "-N", "-F", "%b|%B|%f|%t|%k|%c|%n|%i|%T|%u|%%|%j\\t\\n<\\0>\\\\",
        NULL};
    iwp *p;
    iw_run(d->port, PW, args, &p);
    IW_EXPECT(p, 0);
    /* Split at '|' (none of the values but %j contains one). */
    char *f[12];
    char *s = p->out;
    for (int i = 0; i < 11; i++) {
        f[i] = s;
        s = strchr(s, '|');
        IT_CHECK(s != NULL, "field %d missing in '%s'", i, p->out);
        *s++ = '\0';
    }
    f[11] = s;
    IT_CHECK(strcmp(f[0], "a\tb\\c") == 0, "%%b '%s'", f[0]);
    IT_CHECK(strcmp(f[1], "a\\tb\\\\c") == 0, "%%B '%s'", f[1]);
    IT_CHECK(strcmp(f[2], alice) == 0, "%%f '%s'", f[2]);
    IT_CHECK(strcmp(f[3], bob) == 0, "%%t '%s'", f[3]);
    IT_CHECK(strcmp(f[4], "user") == 0, "%%k '%s'", f[4]);
    IT_CHECK(strcmp(f[5], "durable") == 0, "%%c '%s'", f[5]);
    IT_CHECK(strcmp(f[6], "1") == 0, "%%n '%s'", f[6]);
    char ids[32];
    snprintf(ids, sizeof ids, "%" PRIu64, id);
    IT_CHECK(strcmp(f[7], ids) == 0, "%%i '%s', expected %s", f[7], ids);
    IT_CHECK(strlen(f[8]) == 24 && f[8][4] == '-' && f[8][10] == 'T' && f[8][19] == '.' &&
                 f[8][23] == 'Z',
             "%%T '%s'", f[8]);
    long long ms = atoll(f[9]);
    IT_CHECK(ms >= before && ms <= before + 60000, "%%u %lld", ms);
    /* The ISO time is the same instant as %u. */
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&t, &tm);
    char iso[96];
    snprintf(iso, sizeof iso, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(ms % 1000));
    IT_CHECK(strcmp(f[8], iso) == 0, "%%T '%s' vs %%u '%s'", f[8], iso);
    IT_CHECK(strcmp(f[10], "%") == 0, "%%%% '%s'", f[10]);
    /* f[11]: JSON, then "\t\n<" NUL ">\\" and no newline (-N). */
    char *tab = strchr(f[11], '\t');
    IT_CHECK(tab != NULL, "no tab after %%j");
    jp j;
    IT_CHECK(json_parse(&j, f[11], (size_t)(tab - f[11])) == 0, "%%j not JSON: %.*s",
             (int)(tab - f[11]), f[11]);
    json_is(&j, "type", "message");
    json_is(&j, "body", "a\tb\\c");
    json_is(&j, "id", ids);
    size_t tail_off = (size_t)(tab - p->out);
    static const char tail[] = "\t\n<\0>\\";
    IT_EQ(p->len - tail_off, sizeof tail - 1);
    IT_CHECK(memcmp(p->out + tail_off, tail, sizeof tail - 1) == 0, "escapes \\t \\n \\0 \\\\");
    iw_free(p);

    /* An unknown escape is a usage error. */
    const char *bad[] = {"-u", bob, "-F", "%x", NULL};
    iw_run(d->port, PW, bad, &p);
    IW_EXPECT(p, 2);
    IT_CHECK(strstr(iw_stderr(p), "%x") != NULL, "stderr: %s", iw_stderr(p));
    iw_free(p);
    tc_close(a);
    it_finish(d);
}

/* --json: one schema v1 object per line; binary bodies in base64. */
static void test_json(void **state)
{
    (void)state;
    imd_proc *d = it_start_imd(NULL);
    char alice[40], bob[40];
    tc *a = reg(d, alice, sizeof alice, "alice");
    reg_offline(d, bob, sizeof bob, "bob");
    send_text(a, bob, "h\xc3\xa9llo \"q\"\n");
    static const uint8_t bin[] = {0xff, 0x00, 0x01, 'x'};
    send_to(a, IMP_TARGET_USER, bob, bin, sizeof bin);
    const char *args[] = {"-u", bob, "--json", "--ready", "-C", "2", NULL};
    iwp *p;
    iw_run(d->port, PW, args, &p);
    IW_EXPECT(p, 0);
    IT_EQ(count_lines(p), 3);
    char *line = p->out;
    jp j;
    for (int i = 0; i < 3; i++) {
        char *nl = strchr(line, '\n');
        IT_CHECK(json_parse(&j, line, (size_t)(nl - line)) == 0, "line %d not a JSON object: %.*s",
                 i, (int)(nl - line), line);
        json_is(&j, "v", "1");
        if (i == 0) {
            json_is(&j, "type", "ready");
            json_is(&j, "user", bob);
        } else {
            json_is(&j, "type", "message");
            json_is(&j, "from", alice);
            json_is(&j, "to", bob);
            json_is(&j, "kind", "user");
            json_is(&j, "class", "durable");
            json_is(&j, "seq", i == 1 ? "1" : "2");
            IT_CHECK(jget(&j, "id") && jget(&j, "ts"), "id and ts");
        }
        if (i == 1) {
            json_is(&j, "body", "h\xc3\xa9llo \"q\"\n");
            json_is(&j, "body_enc", "utf8");
        }
        if (i == 2) {
            json_is(&j, "body", "/wABeA==");
            json_is(&j, "body_enc", "base64");
        }
        line = nl + 1;
    }
    iw_free(p);

    /* A refusal with --json: the error object on stdout. */
    const char *st[] = {"-u", bob, "--json", "--stats", NULL};
    iw_run(d->port, PW, st, &p);
    IW_EXPECT(p, 5);
    IT_CHECK(json_parse(&j, p->out, strcspn(p->out, "\n")) == 0, "not JSON: %s", p->out);
    json_is(&j, "type", "error");
    json_is(&j, "status", "5");
    json_is(&j, "code", "502");
    iw_free(p);
    tc_close(a);
    it_finish(d);
}

/* -0: raw bodies with NUL and newline bytes, byte for byte. */
static void test_nul_binary(void **state)
{
    (void)state;
    imd_proc *d = it_start_imd(NULL);
    char alice[40], bob[40];
    tc *a = reg(d, alice, sizeof alice, "alice");
    reg_offline(d, bob, sizeof bob, "bob");
    static const uint8_t b1[] = {'a', 0, 'b', '\n', 'c', 0xff, 0xfe};
    static const uint8_t b2[] = {'\n', 0, 0, '\r', '\n'};
    uint8_t b3[3000];
    for (size_t i = 0; i < sizeof b3; i++)
        b3[i] = (uint8_t)(i * 7);
    send_to(a, IMP_TARGET_USER, bob, b1, sizeof b1);
    send_to(a, IMP_TARGET_USER, bob, b2, sizeof b2);
    send_to(a, IMP_TARGET_USER, bob, "", 0);
    send_to(a, IMP_TARGET_USER, bob, b3, sizeof b3);
    const char *args[] = {"-u", bob, "-0", "-C", "4", NULL};
    iwp *p;
    iw_run(d->port, PW, args, &p);
    IW_EXPECT(p, 0);
    size_t want_len = sizeof b1 + 1 + sizeof b2 + 1 + 1 + sizeof b3 + 1;
    IT_EQ(p->len, want_len);
    size_t off = 0;
    IT_CHECK(memcmp(p->out + off, b1, sizeof b1) == 0 && p->out[off + sizeof b1] == 0, "body 1");
    off += sizeof b1 + 1;
    IT_CHECK(memcmp(p->out + off, b2, sizeof b2) == 0 && p->out[off + sizeof b2] == 0, "body 2");
    off += sizeof b2 + 1;
    IT_CHECK(p->out[off] == 0, "empty body 3");
    off += 1;
    IT_CHECK(memcmp(p->out + off, b3, sizeof b3) == 0 && p->out[off + sizeof b3] == 0, "body 4");
    iw_free(p);
    /* -0 excludes -F and --json. */
    const char *bad[] = {"-u", bob, "-0", "--json", NULL};
    iw_run(d->port, PW, bad, &p);
    IW_EXPECT(p, 2);
    iw_free(p);
    tc_close(a);
    it_finish(d);
}

/* -W, --until (match and timeout), --since. */
static void test_stop_conditions(void **state)
{
    (void)state;
    imd_proc *d = it_start_imd(NULL);
    char alice[40], bob[40];
    tc *a = reg(d, alice, sizeof alice, "alice");
    reg_offline(d, bob, sizeof bob, "bob");
    iwp *p;

    /* -W with nothing to read: 6, after about the time given. */
    uint64_t t0 = it_now_ms();
    const char *w[] = {"-u", bob, "-W", "700ms", NULL};
    iw_run(d->port, PW, w, &p);
    IW_EXPECT(p, 6);
    uint64_t took = it_now_ms() - t0;
    IT_CHECK(took >= 650 && took < 5000, "-W 700ms took %llu ms", (unsigned long long)took);
    iw_free(p);

    /* --until matches the second of four: printed up to it, exit 0; the rest stays queued. */
    send_text(a, bob, "build started");
    send_text(a, bob, "build ok in 12s");
    send_text(a, bob, "after one");
    send_text(a, bob, "after two");
    const char *u[] = {"-u", bob, "--until", "^build (ok|failed)", "-W", "10", "-F", "%b", NULL};
    iw_run(d->port, PW, u, &p);
    IW_EXPECT(p, 0);
    IT_CHECK(strcmp(p->out, "build started\nbuild ok in 12s\n") == 0, "got '%s'", p->out);
    iw_free(p);

    /* --until without a match before -W: 1 (and what was printed is acknowledged). */
    const char *nu[] = {"-u", bob, "--until", "never", "-W", "1", "-F", "%b", NULL};
    iw_run(d->port, PW, nu, &p);
    IW_EXPECT(p, 1);
    IT_CHECK(strcmp(p->out, "after one\nafter two\n") == 0, "got '%s'", p->out);
    iw_free(p);

    /* --since: the user's sequence is now 4; three more, resume after 6: only the 7th. */
    send_text(a, bob, "five");
    send_text(a, bob, "six");
    send_text(a, bob, "seven");
    const char *si[] = {"-u", bob, "--since", "6", "-C", "1", "-W", "10", "-F", "%n %b", NULL};
    iw_run(d->port, PW, si, &p);
    IW_EXPECT(p, 0);
    IT_CHECK(strcmp(p->out, "7 seven\n") == 0, "got '%s'", p->out);
    iw_free(p);

    /* A bad regex and a bad -W value are usage errors. */
    const char *br[] = {"-u", bob, "--until", "(", NULL};
    iw_run(d->port, PW, br, &p);
    IW_EXPECT(p, 2);
    iw_free(p);
    const char *bw[] = {"-u", bob, "-W", "soon", NULL};
    iw_run(d->port, PW, bw, &p);
    IW_EXPECT(p, 2);
    iw_free(p);
    tc_close(a);
    it_finish(d);
}

/* --presence USER: the user's status changes are printed. */
static void test_presence(void **state)
{
    (void)state;
    imd_proc *d = it_start_imd(NULL);
    char carol[40], bob[40];
    reg_offline(d, carol, sizeof carol, "carol");
    reg_offline(d, bob, sizeof bob, "bob");
    const char *args[] = {"-u", bob, "--presence", carol, "--ready", "-W", "10", NULL};
    iwp *p = iw_spawn(d->port, PW, NULL, args);
    IT_CHECK(iw_wait_for(p, "ready\n", RUN_MS), "no ready line");
    tc_auth au;
    tc *c = it_login(d->port, carol, PW, &au);
    char want[80];
    snprintf(want, sizeof want, " presence %s online", carol);
    if (!iw_wait_for(p, want, 5000)) {
        iw_dump(p);
        IT_CHECK(0, "no presence line '%s'", want);
    }
    kill(p->pid, SIGTERM); /* a signal stops it gracefully: 0 */
    IT_EQ(iw_finish(p, RUN_MS), 0);
    iw_free(p);

    /* A bare --presence with -g: the room's members (MEMBERS), here carol; JSON lines. */
    char room[40];
    it_name(room, sizeof room, "room");
    join(c, room);
    tc_close(c);
    const char *args2[] = {"-u", bob, "-g", room, "--presence", "--json", "--ready", NULL};
    p = iw_spawn(d->port, PW, NULL, args2);
    IT_CHECK(iw_wait_for(p, "\"type\":\"ready\"", RUN_MS), "no ready object");
    c = it_login(d->port, carol, PW, &au);
    snprintf(want, sizeof want, "\"user\":\"%s\",\"status\":\"online\"", carol);
    if (!iw_wait_for(p, want, 5000)) {
        iw_dump(p);
        IT_CHECK(0, "no presence object '%s'", want);
    }
    kill(p->pid, SIGINT);
    IT_EQ(iw_finish(p, RUN_MS), 0);
    iw_free(p);
    /* Without a list and without -g: a usage error. */
    const char *bad[] = {"-u", bob, "--presence", NULL};
    iw_run(d->port, PW, bad, &p);
    IW_EXPECT(p, 2);
    iw_free(p);
    tc_close(c);
    it_finish(d);
}

static imd_proc *imd_with_admin(void)
{
    imd_proc *d = it_create_imd(NULL);
    static const char *const add_root[] = {"user", "add", "root", "--admin", NULL};
    IT_EQ(it_admin(d, PW "\n", NULL, 0, add_root), 0);
    it_start(d);
    return d;
}

/* --stats: plain lines when stdout is not a terminal, rates from the second sample on;
 * FORBIDDEN for a non-administrator. --monitor: the event stream. */
static void test_stats_monitor(void **state)
{
    (void)state;
    imd_proc *d = imd_with_admin();
    char bob[40];
    reg_offline(d, bob, sizeof bob, "bob");
    iwp *p;
    const char *st[] = {"-u", "root", "--stats", "--interval", "200ms", "-C", "3", NULL};
    iw_run(d->port, PW, st, &p);
    IW_EXPECT(p, 0);
    IW_HAS(p, " connections ");
    IW_HAS(p, " logins_ok ");
    IW_HAS(p, "/s\n");
    IT_CHECK(strstr(p->out, "\033[") == NULL, "terminal escapes on a pipe");
    /* Three samples of the same counters. */
    size_t n = 0;
    for (const char *s = p->out; (s = strstr(s, " msgs_in ")) != NULL; s++)
        n++;
    IT_EQ(n, 3);
    /* Gauges get no rate: every "connections" line ends with its value. */
    for (const char *s = p->out; (s = strstr(s, " connections ")) != NULL; s++) {
        const char *e = strchr(s, '\n');
        IT_CHECK(e && !memmem(s, (size_t)(e - s), "/s", 2), "a rate for a gauge: %.*s",
                 (int)(e - s), s);
    }
    iw_free(p);

    /* --stats --json: stats objects. */
    const char *sj[] = {"-u", "root", "--stats", "--json", "--interval", "0.1", "-C", "2", NULL};
    iw_run(d->port, PW, sj, &p);
    IW_EXPECT(p, 0);
    IT_EQ(count_lines(p), 2);
    jp j;
    IT_CHECK(json_parse(&j, p->out, strcspn(p->out, "\n")) == 0, "not JSON: %s", p->out);
    json_is(&j, "type", "stats");
    IT_CHECK(jget(&j, "counters") && strstr(jget(&j, "counters"), "\"msgs_in\":"), "counters: %s",
             jget(&j, "counters") ? jget(&j, "counters") : "(none)");
    iw_free(p);

    /* Not an administrator: the server's FORBIDDEN, exit 5, the code on stderr. */
    const char *nb[] = {"-u", bob, "--stats", NULL};
    iw_run(d->port, PW, nb, &p);
    IW_EXPECT(p, 5);
    IT_CHECK(strstr(iw_stderr(p), "502") && strstr(iw_stderr(p), "FORBIDDEN"), "stderr: %s",
             iw_stderr(p));
    iw_free(p);
    const char *nm[] = {"-u", bob, "--monitor", NULL};
    iw_run(d->port, PW, nm, &p);
    IW_EXPECT(p, 5);
    iw_free(p);

    /* --monitor: a login of bob shows up. */
    const char *mo[] = {"-u", "root", "--monitor", "--ready", "-W", "10", NULL};
    p = iw_spawn(d->port, PW, NULL, mo);
    IT_CHECK(iw_wait_for(p, "ready\n", RUN_MS), "no ready line");
    tc_auth au;
    tc *b = it_login(d->port, bob, PW, &au);
    char want[64];
    snprintf(want, sizeof want, " login user=%s", bob);
    if (!iw_wait_for(p, want, 5000)) {
        iw_dump(p);
        IT_CHECK(0, "no monitor line '%s'", want);
    }
    IW_HAS(p, " connect ");
    kill(p->pid, SIGINT);
    IT_EQ(iw_finish(p, RUN_MS), 0);
    iw_free(p);
    tc_close(b);
    it_finish(d);
}

/* ---- --decode ------------------------------------------------------------------------------ */

static size_t put(uint8_t *buf, size_t off, imp_msg *m)
{
    imp_ssize n = imp_msg_encode(m, buf + off, 65536 - off);
    IT_CHECK(n > 0, "encode %s: %d", imp_type_name(m->type), (int)n);
    return off + (size_t)n;
}

static void test_decode(void **state)
{
    (void)state;
    static uint8_t buf[65536];
    uint8_t list[256], hdr[256], stats[256];
    imp_msg m;
    size_t off = 0;

    imp_msg_init(&m, IMP_HELLO, 1);
    imp_msg_set_u(&m, IMP_T_VERSION_MIN, 1);
    imp_msg_set_u(&m, IMP_T_VERSION_MAX, 1);
    imp_msg_set_s(&m, IMP_T_AGENT, "imsend");
    off = put(buf, off, &m); /* 40 bytes: the spec's example */
    IT_EQ(off, 40);

    imp_builder b;
    imp_builder_init(&b, hdr, sizeof hdr);
    imp_headers_add(&b, "Content-Type", 12, "text/plain", 10);
    size_t hdr_len = b.len;
    imp_msg_init(&m, IMP_DELIVER, 0);
    imp_msg_set_u(&m, IMP_T_TARGET_KIND, IMP_TARGET_ROOM);
    imp_msg_set_s(&m, IMP_T_TARGET, "ops");
    imp_msg_set_b(&m, IMP_T_HEADERS, hdr, hdr_len);
    imp_msg_set_b(&m, IMP_T_BODY, "hi\n\x01", 4);
    imp_msg_set_u(&m, IMP_T_MSG_ID, 77);
    imp_msg_set_u(&m, IMP_T_SEQ, 5);
    imp_msg_set_s(&m, IMP_T_SENDER, "alice");
    imp_msg_set_u(&m, IMP_T_TIMESTAMP, UINT64_C(1700000000000));
    off = put(buf, off, &m);

    imp_builder_init(&b, list, sizeof list);
    imp_names_add(&b, "alice", 5);
    imp_names_add(&b, "bob", 3);
    imp_msg_init(&m, IMP_MEMBER_LIST, 9);
    imp_msg_set_s(&m, IMP_T_ROOM, "ops");
    imp_msg_set_b(&m, IMP_T_NAMES, list, b.len);
    off = put(buf, off, &m);

    imp_builder_init(&b, stats, sizeof stats);
    imp_stats_add(&b, "msgs_in", 7, 42);
    imp_msg_init(&m, IMP_STATS_REPLY, 3);
    imp_msg_set_b(&m, IMP_T_STATS, stats, b.len);
    off = put(buf, off, &m);

    imp_msg_init(&m, IMP_ERROR, 0);
    imp_msg_set_u(&m, IMP_T_CODE, 704);
    off = put(buf, off, &m);

    imp_msg_init(&m, IMP_LOGIN, 2);
    imp_msg_set_s(&m, IMP_T_USER, "bob");
    imp_msg_set_s(&m, IMP_T_PASSWORD, "sekrit");
    off = put(buf, off, &m);
    size_t good_len = off;

    char path[64], bad[64], hdrbad[64];
    snprintf(path, sizeof path, "/tmp/imwatch-decode-%d.bin", (int)getpid());
    snprintf(bad, sizeof bad, "/tmp/imwatch-decode-%d-bad.bin", (int)getpid());
    snprintf(hdrbad, sizeof hdrbad, "/tmp/imwatch-decode-%d-hdr.bin", (int)getpid());
    it_write_file(path, buf, good_len);

    const char *args[] = {"--decode", path, NULL};
    iwp *p;
    iw_run(0, NULL, args, &p);
    IW_EXPECT(p, 0);
    IW_HAS(p, "offset 0: HELLO (0x01) request 1, 28 bytes payload\n");
    IW_HAS(p, "  VERSION_MIN = 1\n  VERSION_MAX = 1\n  AGENT = \"imsend\"\n");
    IW_HAS(p, "offset 40: DELIVER (0x12) request 0");
    IW_HAS(p, "  TARGET_KIND = 2 (room)\n");
    IW_HAS(p, "  HEADERS = 1 header\n      Content-Type: \"text/plain\"\n");
    IW_HAS(p, "  BODY = (4 bytes) \"hi\\n\\x01\"\n");
    IW_HAS(p, "  TIMESTAMP = 1700000000000 (2023-11-14T22:13:20.000Z)\n");
    IW_HAS(p, "MEMBER_LIST (0x23) request 9");
    IW_HAS(p, "  NAMES = 2 names\n      alice\n      bob\n");
    IW_HAS(p, "  STATS = 1 counter\n      msgs_in = 42\n");
    IW_HAS(p, "  CODE = 704 (FRAME_TOO_LARGE)\n");
    IW_HAS(p, "  PASSWORD = (6 bytes, hidden");
    IT_CHECK(!memmem(p->out, p->len, "sekrit", 6), "the password was printed");
    iw_free(p);

    /* From stdin too (--decode without FILE, and "-"). */
    const char *a2[] = {"--decode", NULL};
    p = iw_spawn(0, NULL, path, a2);
    IT_EQ(iw_finish(p, RUN_MS), 0);
    IW_HAS(p, "offset 0: HELLO");
    iw_free(p);
    const char *a3[] = {"--decode", "-", NULL};
    p = iw_spawn(0, NULL, path, a3);
    IT_EQ(iw_finish(p, RUN_MS), 0);
    IW_HAS(p, "MEMBER_LIST");
    iw_free(p);

    /* Corrupted: a SEND whose TARGET comes after BODY (tags 17, 23, 18), after the HELLO:
     * FIELD_ORDER at the TARGET field's offset; the next frame is still decoded; then a
     * stream that ends inside a frame. */
    off = 40;
    static const uint8_t send_bad[] = {0x01, 0x10, 0,   0, 0,    0, 0, 0x18, 0,    0,   0,   7,
                                       0,    0x11, 0,   0, 0,    1, 1, 0,    0x17, 0,   0,   0,
                                       2,    'h',  'i', 0, 0x12, 0, 0, 0,    3,    'b', 'o', 'b'};
    memcpy(buf + off, send_bad, sizeof send_bad);
    off += sizeof send_bad;
    imp_msg_init(&m, IMP_PING, 5);
    off = put(buf, off, &m);
    memcpy(buf + off, buf, 7); /* 7 bytes of a HELLO header */
    off += 7;
    it_write_file(bad, buf, off);
    const char *a4[] = {"--decode", bad, NULL};
    iw_run(0, NULL, a4, &p);
    IW_EXPECT(p, 7);
    /* The SEND starts at 40; its payload at 52; TARGET_KIND 7 bytes, BODY 8: TARGET at 67. */
    IW_HAS(p, "offset 40: SEND (0x10) request 7, 24 bytes payload\n");
    IW_HAS(p, "! offset 67: FIELD_ORDER (712)");
    IT_CHECK(strstr(iw_stderr(p), "offset 67: FIELD_ORDER (712)") != NULL, "stderr: %s",
             iw_stderr(p));
    IW_HAS(p, "offset 76: PING (0x50) request 5, 0 bytes payload\n");
    IW_HAS(p, "offset 88: incomplete frame");
    iw_free(p);

    /* A bad header: cannot resynchronise, stops there (the frame after it is not shown). */
    off = 40;
    imp_msg_init(&m, IMP_PING, 6);
    off = put(buf, off, &m);
    buf[40 + 2] = 0x80; /* reserved flag bit in the PING at 40 */
    off = put(buf, off, &m);
    it_write_file(hdrbad, buf, off);
    const char *a5[] = {"--decode", hdrbad, NULL};
    iw_run(0, NULL, a5, &p);
    IW_EXPECT(p, 7);
    IW_HAS(p, "offset 0: HELLO");
    IW_HAS(p, "! offset 42: RESERVED_FLAGS (703)");
    IT_CHECK(!memmem(p->out, p->len, "offset 52", 9), "decoded past a bad header: %s", p->out);
    iw_free(p);

    /* --json: one object per frame; the error with its offset. */
    const char *aj[] = {"--decode", bad, "--json", NULL};
    iw_run(0, NULL, aj, &p);
    IW_EXPECT(p, 7);
    IT_EQ(count_lines(p), 4);
    jp j;
    const char *line = p->out;
    for (int i = 0; i < 4; i++) {
        size_t n = strcspn(line, "\n");
        IT_CHECK(json_parse(&j, line, n) == 0, "line %d not JSON: %.*s", i, (int)n, line);
        json_is(&j, "type", "frame");
        json_is(&j, "offset", i == 0 ? "0" : i == 1 ? "40" : i == 2 ? "76" : "88");
        if (i == 1) {
            json_is(&j, "frame", "SEND");
            json_is(&j, "req", "7");
            IT_CHECK(jget(&j, "error") &&
                         strstr(jget(&j, "error"), "\"offset\":67,\"code\":712,"
                                                   "\"code_name\":\"FIELD_ORDER\""),
                     "error: %s", jget(&j, "error") ? jget(&j, "error") : "(none)");
            IT_CHECK(strstr(jget(&j, "fields"), "\"name\":\"BODY\",\"len\":2,\"value\":\"hi\""),
                     "fields: %s", jget(&j, "fields"));
        }
        if (i == 3)
            json_is(&j, "incomplete", "true");
        line += n + 1;
    }
    iw_free(p);
    iw_run(0, NULL, (const char *const[]){"--decode", path, "--json", NULL}, &p);
    IW_EXPECT(p, 0);
    IW_HAS(p, "\"name\":\"NAMES\",\"len\":10,\"value\":[\"alice\",\"bob\"]");
    IW_HAS(p, "\"name\":\"STATS\",\"len\":16,\"value\":{\"msgs_in\":42}");
    IW_HAS(p, "\"name\":\"CODE\",\"len\":2,\"value\":704,\"label\":\"FRAME_TOO_LARGE\"");
    IW_HAS(p, "\"name\":\"PASSWORD\",\"len\":6,\"hidden\":true");
    IW_HAS(p, "\"value\":\"hi\\n\\u0001\",\"enc\":\"utf8\"");
    iw_free(p);

    /* --hex: SPEC.md section 12's examples as text, with a comment. */
    static const char spec_hex[] =
        "# HELLO\n01 01 0000 0000001c 00000001\n  0001 00000002 0001  0002 00000002 0001\n"
        "  0004 00000006 696d73656e64\n"
        "01 10 0000 00000018 00000007 0011 00000001 01 0012 00000003 626f62 0017 00000002 6869\n"
        "01 50 0000 00000000 00000005   # PING\n"
        "01 08 0000 00000008 00000000 001a 00000002 02c0\n";
    it_write_file(path, (const uint8_t *)spec_hex, sizeof spec_hex - 1);
    const char *ah[] = {"--decode", path, "--hex", NULL};
    iw_run(0, NULL, ah, &p);
    IW_EXPECT(p, 0);
    IW_HAS(p, "offset 0: HELLO (0x01) request 1, 28 bytes payload\n");
    IW_HAS(p, "offset 40: SEND (0x10) request 7, 24 bytes payload\n  TARGET_KIND = 1 (user)\n"
              "  TARGET = \"bob\"\n  BODY = (2 bytes) \"hi\"\n");
    IW_HAS(p, "offset 76: PING (0x50) request 5, 0 bytes payload\n");
    IW_HAS(p,
           "offset 88: ERROR (0x08) request 0, 8 bytes payload\n  CODE = 704 (FRAME_TOO_LARGE)\n");
    iw_free(p);
    it_write_file(path, (const uint8_t *)"01 5", 4);
    iw_run(0, NULL, ah, &p);
    IW_EXPECT(p, 2); /* an odd number of digits */
    iw_free(p);

    /* A missing file is a usage error. */
    const char *a6[] = {"--decode", "/nonexistent/imwatch.bin", NULL};
    iw_run(0, NULL, a6, &p);
    IW_EXPECT(p, 2);
    iw_free(p);
    unlink(path);
    unlink(bad);
    unlink(hdrbad);
}

/* Exit statuses 2 (usage), 3 (cannot connect), 4 (authentication refused); --help. */
static void test_exit_statuses(void **state)
{
    (void)state;
    iwp *p;
    const char *h[] = {"--help", NULL};
    iw_run(0, NULL, h, &p);
    IW_EXPECT(p, 0);
    IW_HAS(p, "Exit status:");
    IW_HAS(p, "  6  timeout");
    iw_free(p);
    const char *bad[] = {"--no-such-option", NULL};
    iw_run(0, NULL, bad, &p);
    IW_EXPECT(p, 2);
    iw_free(p);
    const char *nouser[] = {"-W", "1", NULL};
    iw_run(0, PW, nouser, &p);
    IW_EXPECT(p, 2);
    iw_free(p);
    const char *excl[] = {"-u", "bob", "--stats", "--monitor", NULL};
    iw_run(0, PW, excl, &p);
    IW_EXPECT(p, 2);
    iw_free(p);

    /* 3: nothing listens on the port (a port that was just free). */
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t sl = sizeof sa;
    IT_CHECK(bind(s, (struct sockaddr *)&sa, sizeof sa) == 0, "bind");
    IT_CHECK(getsockname(s, (struct sockaddr *)&sa, &sl) == 0, "getsockname");
    int port = ntohs(sa.sin_port);
    close(s);
    const char *u[] = {"-u", "bob", "-W", "5", NULL};
    iw_run(port, PW, u, &p);
    IW_EXPECT(p, 3);
    iw_free(p);

    /* 6: a server that accepts (the kernel's backlog) but never answers HELLO. */
    s = socket(AF_INET, SOCK_STREAM, 0);
    sa.sin_port = 0;
    IT_CHECK(bind(s, (struct sockaddr *)&sa, sizeof sa) == 0, "bind");
    IT_CHECK(listen(s, 4) == 0, "listen");
    sl = sizeof sa;
    IT_CHECK(getsockname(s, (struct sockaddr *)&sa, &sl) == 0, "getsockname");
    const char *ct[] = {"-u", "bob", "--connect-timeout", "300ms", NULL};
    iw_run(ntohs(sa.sin_port), PW, ct, &p);
    IW_EXPECT(p, 6);
    iw_free(p);
    const char *wt[] = {"-u", "bob", "-W", "300ms", NULL}; /* -W while logging in */
    iw_run(ntohs(sa.sin_port), PW, wt, &p);
    IW_EXPECT(p, 6);
    iw_free(p);
    close(s);

    /* 4: a wrong password. */
    imd_proc *d = it_start_imd(NULL);
    char bob[40];
    reg_offline(d, bob, sizeof bob, "bob");
    const char *w[] = {"-u", bob, "-W", "5", NULL};
    iw_run(d->port, "wrong password", w, &p);
    IW_EXPECT(p, 4);
    IT_CHECK(strstr(iw_stderr(p), "400") != NULL, "stderr: %s", iw_stderr(p));
    iw_free(p);
    it_finish(d);
}

/* ---- --who, --rooms and the completion that uses them ---------------------------------------- */

/* 1 when text (NUL-terminated) has a line that is exactly name. */
static int has_line(const char *text, const char *name)
{
    size_t n = strlen(name);
    for (const char *p = text; (p = strstr(p, name)) != NULL; p++)
        if ((p == text || p[-1] == '\n') && (p[n] == '\n' || p[n] == '\0'))
            return 1;
    return 0;
}

static size_t count_str(const char *text, const char *needle)
{
    size_t n = 0;
    for (const char *p = text; (p = strstr(p, needle)) != NULL; p += strlen(needle))
        n++;
    return n;
}

/* Complete with the completion file in a clean bash: envs are NAME=VALUE words for env(1),
 * words the COMP_WORDS (shell words, the last one is the word being completed). The names
 * offered, one per line, go into out. */
static void complete(const char *envs, const char *words, char *out, size_t outlen)
{
    char cmd[2048];
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

static void test_who_rooms(void **state)
{
    (void)state;
    const char *extra[] = {"--set", "page_size=2", NULL};
    imd_proc *d = it_start_imd(extra);
    char alice[40], bob[40], carol[40], dave[40], rooms[5][40];
    tc *a = reg(d, alice, sizeof alice, "alice");
    tc *c = reg(d, carol, sizeof carol, "carol");
    reg_offline(d, bob, sizeof bob, "bob");
    reg_offline(d, dave, sizeof dave, "dave");
    for (int i = 0; i < 5; i++) {
        it_name(rooms[i], sizeof rooms[i], "room");
        join(a, rooms[i]);
    }
    send_text(a, bob, "still queued");

    /* --who: alice, carol and bob himself (3 names: 2 pages); dave is offline. */
    iwp *p;
    const char *who[] = {"-u", bob, "--who", "-W", "10", "-d", NULL};
    iw_run(d->port, PW, who, &p);
    IW_EXPECT(p, 0);
    IT_EQ(count_lines(p), 3);
    IT_CHECK(has_line(p->out, alice) && has_line(p->out, carol) && has_line(p->out, bob),
             "--who printed '%s'", p->out);
    IT_EQ(count_str(iw_stderr(p), ">> WHO "), 2);
    iw_free(p);

    /* --rooms: the 5 rooms, 3 pages. */
    const char *rl[] = {"-u", bob, "--rooms", "-d", NULL};
    iw_run(d->port, PW, rl, &p);
    IW_EXPECT(p, 0);
    IT_EQ(count_lines(p), 5);
    for (int i = 0; i < 5; i++)
        IT_CHECK(has_line(p->out, rooms[i]), "--rooms lacks %s: '%s'", rooms[i], p->out);
    IT_EQ(count_str(iw_stderr(p), ">> ROOMS "), 3);
    iw_free(p);

    /* The listings left bob's queue alone. */
    const char *rd[] = {"-u", bob, "-C", "1", "-F", "%b", "-W", "10", NULL};
    iw_run(d->port, PW, rd, &p);
    IW_EXPECT(p, 0);
    IT_CHECK(strcmp(p->out, "still queued\n") == 0, "got '%s'", p->out);
    iw_free(p);

    /* Usage errors: two modes, or an option of the message mode. */
    const char *both[] = {"-u", bob, "--who", "--rooms", NULL};
    iw_run(d->port, PW, both, &p);
    IW_EXPECT(p, 2);
    iw_free(p);
    const char *withg[] = {"-u", bob, "--rooms", "-g", rooms[0], NULL};
    iw_run(d->port, PW, withg, &p);
    IW_EXPECT(p, 2);
    iw_free(p);

    /* The bash completion: user names after imsend -t, with -s and $IMP_USER/$IMP_PASSWORD. */
    char dir[1024], env[512], words[2048], out[4096];
    snprintf(dir, sizeof dir, "%s", it_tool_path("imwatch"));
    *strrchr(dir, '/') = '\0';
    char imsend[1100], imwatch[1100], addr[64];
    snprintf(imsend, sizeof imsend, "%s/imsend", dir);
    snprintf(imwatch, sizeof imwatch, "%s/imwatch", dir);
    snprintf(addr, sizeof addr, "127.0.0.1:%d", d->port);
    if (access(imsend, X_OK) == 0) {
        snprintf(env, sizeof env, "IMP_USER=%s \"IMP_PASSWORD=%s\"", bob, PW);
        snprintf(words, sizeof words, "\"%s\" -s %s -t \"\"", imsend, addr);
        complete(env, words, out, sizeof out);
        IT_CHECK(has_line(out, alice) && has_line(out, carol) && !has_line(out, dave),
                 "imsend -t completed '%s'", out);
        snprintf(words, sizeof words, "\"%s\" -s %s --to car", imsend, addr);
        complete(env, words, out, sizeof out);
        char want[64];
        snprintf(want, sizeof want, "%s\n", carol);
        IT_CHECK(strcmp(out, want) == 0, "imsend --to car completed '%s'", out);
        /* No password anywhere: imwatch is not run (it could prompt): no names. */
        snprintf(env, sizeof env, "IMP_USER=%s", bob);
        snprintf(words, sizeof words, "\"%s\" -s %s -t \"\"", imsend, addr);
        complete(env, words, out, sizeof out);
        IT_CHECK(out[0] == '\0', "completed without a password: '%s'", out);
    } else {
        printf("-- %s is not built: imsend completion not checked\n", imsend);
    }

    /* Room names after imwatch -g: -u and --password-file from the command line, the server
     * from $IMP_SERVER. */
    char pwfile[64];
    snprintf(pwfile, sizeof pwfile, "/tmp/imwatch-test-pw-%d", (int)getpid());
    FILE *f = fopen(pwfile, "w");
    IT_CHECK(f != NULL, "%s: %s", pwfile, strerror(errno));
    fprintf(f, "%s\n", PW);
    fclose(f);
    snprintf(env, sizeof env, "IMP_SERVER=%s", addr);
    snprintf(words, sizeof words, "\"%s\" -u %s --password-file %s -g \"\"", imwatch, bob, pwfile);
    complete(env, words, out, sizeof out);
    IT_EQ(count_str(out, "\n"), 5);
    for (int i = 0; i < 5; i++)
        IT_CHECK(has_line(out, rooms[i]), "imwatch -g completion lacks %s: '%s'", rooms[i], out);
    /* A wrong password, or no server: no names, and soon. */
    uint64_t t0 = it_now_ms();
    snprintf(env, sizeof env, "IMP_SERVER=127.0.0.1:1 IMP_PASSWORD=x");
    snprintf(words, sizeof words, "\"%s\" -u %s --room \"\"", imwatch, bob);
    complete(env, words, out, sizeof out);
    IT_CHECK(out[0] == '\0', "completed with no server: '%s'", out);
    IT_CHECK(it_now_ms() - t0 < 5000, "completion took %" PRIu64 " ms", it_now_ms() - t0);
    unlink(pwfile);

    /* Exit statuses of a listing: 4 wrong password, 3 nothing listening. */
    char eve[40];
    reg_offline(d, eve, sizeof eve, "eve");
    const char *bad[] = {"-u", eve, "--who", "-W", "5", NULL};
    iw_run(d->port, "wrong password", bad, &p);
    IW_EXPECT(p, 4);
    iw_free(p);
    tc_close(a);
    tc_close(c);
    it_finish(d);
    const char *refused[] = {"-u", bob, "--rooms", "-W", "5", NULL};
    iw_run(d->port, PW, refused, &p); /* imd has stopped: nothing listens on its port */
    IW_EXPECT(p, 3);
    iw_free(p);

    /* 6: a listener that never answers HELLO, -W. */
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t sl = sizeof sa;
    IT_CHECK(bind(s, (struct sockaddr *)&sa, sizeof sa) == 0, "bind");
    IT_CHECK(listen(s, 4) == 0, "listen");
    IT_CHECK(getsockname(s, (struct sockaddr *)&sa, &sl) == 0, "getsockname");
    const char *slow[] = {"-u", bob, "--who", "-W", "300ms", NULL};
    iw_run(ntohs(sa.sin_port), PW, slow, &p);
    IW_EXPECT(p, 6);
    iw_free(p);
    close(s);
}

int main(void)
{
    it_main_init(300);
    if (!it_imd_or_skip())
        return 0;
    if (access(it_tool_path("imwatch"), X_OK) != 0) {
        printf("-- %s is not built: skipped\n", it_tool_path("imwatch"));
        return 0;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_live_offline_ack, it_teardown),
        cmocka_unit_test_teardown(test_many_acked, it_teardown),
        cmocka_unit_test_teardown(test_connection_lost, it_teardown),
        cmocka_unit_test_teardown(test_rooms, it_teardown),
        cmocka_unit_test_teardown(test_format, it_teardown),
        cmocka_unit_test_teardown(test_json, it_teardown),
        cmocka_unit_test_teardown(test_nul_binary, it_teardown),
        cmocka_unit_test_teardown(test_stop_conditions, it_teardown),
        cmocka_unit_test_teardown(test_presence, it_teardown),
        cmocka_unit_test_teardown(test_stats_monitor, it_teardown),
        cmocka_unit_test_teardown(test_decode, it_teardown),
        cmocka_unit_test_teardown(test_exit_statuses, it_teardown),
        cmocka_unit_test_teardown(test_who_rooms, it_teardown),
    };
    return cmocka_run_group_tests_name("integration: imwatch", tests, NULL, NULL);
}
