/* Integration tests: common helpers (see itest.h). */
#include <dirent.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "itest.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <unistd.h>

static unsigned alarm_seconds;

void it_failed(const char *file, int line, const char *expr, const char *fmt, ...)
{
    va_list ap;
    fflush(stdout);
    fprintf(stderr, "%s:%d: check failed: %s\n    ", file, line, expr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\n");
    imd_dump_all();
    _fail(file, line);
    abort(); /* not reached: _fail jumps back into cmocka */
}

void it_note(const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "   [itest] ");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\n");
}

static void on_alarm(int sig)
{
    (void)sig;
    static const char msg[] = "\n[itest] SAFETY NET: the test program ran longer than its "
                              "alarm() bound; killing imd children and exiting\n";
    ssize_t w = write(2, msg, sizeof msg - 1);
    (void)w;
    imd_dump_all();
    imd_kill_all();
    _exit(3);
}

void it_main_init(unsigned seconds)
{
    const char *env = getenv("IMP_ITEST_TIMEOUT");
    if (env && atoi(env) > 0)
        seconds = (unsigned)atoi(env);
    alarm_seconds = seconds;
    signal(SIGPIPE, SIG_IGN);
    signal(SIGALRM, on_alarm);
    setvbuf(stderr, NULL, _IONBF, 0);
    alarm(seconds);
}

int it_teardown(void **state)
{
    (void)state;
    tc_close_all();
    imd_destroy_all();
    return 0;
}

int it_imd_or_skip(void)
{
    if (imd_available())
        return 1;
    fprintf(stderr, "imd not found at %s\n", imd_binary());
    return 0;
}

const char *it_tool_path(const char *name)
{
    static char path[1024];
    const char *bd = getenv("IMP_BUILD_DIR");
    if (!bd || !*bd)
        bd = "build";
    if (bd[0] == '/')
        snprintf(path, sizeof path, "%s/%s", bd, name);
    else
        snprintf(path, sizeof path, "%s/%s/%s", IMP_SRCDIR, bd, name);
    return path;
}

char *it_slurp(const char *path, size_t *len)
{
    size_t n = 0, cap = 4096, r;
    FILE *f = fopen(path, "rb");
    char *b = f ? malloc(cap) : NULL;
    while (b && (r = fread(b + n, 1, cap - n - 1, f)) > 0) {
        n += r;
        if (cap - n < 2) {
            char *nb = realloc(b, cap *= 2);
            if (!nb)
                free(b);
            b = nb;
        }
    }
    if (f)
        fclose(f);
    if (!b) {
        n = 0;
        b = strdup("");
        IT_CHECK(b != NULL, "out of memory");
    }
    b[n] = 0;
    if (len)
        *len = n;
    return b;
}

int it_wait_exit(pid_t pid, int timeout_ms)
{
    uint64_t end = it_now_ms() + (uint64_t)timeout_ms;
    for (;;) {
        int st;
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid)
            return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        if (it_now_ms() >= end) {
            kill(pid, SIGKILL);
            waitpid(pid, &st, 0);
            return -1;
        }
        it_sleep_ms(5);
    }
}

uint64_t it_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

void it_sleep_ms(unsigned ms)
{
    struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
    }
}

static imd_proc *start_with(const char *const *pre, const char *const *extra, int start)
{
    const char *args[IMD_MAX_ARGS + 1];
    int n = 0;
    for (int i = 0; pre && pre[i] && n < IMD_MAX_ARGS; i++)
        args[n++] = pre[i];
    for (int i = 0; extra && extra[i] && n < IMD_MAX_ARGS; i++)
        args[n++] = extra[i];
    args[n] = NULL;
    imd_proc *p = start ? imd_new(args) : imd_create(args);
    IT_CHECK(p != NULL, "imd did not start (%s)", imd_binary());
    return p;
}

static const char *const fast_args[] = {
    "--set", "hash_opslimit=1", "--set", "hash_memlimit=8m", "--log-level", "debug", NULL};

imd_proc *it_create_imd(const char *const *extra)
{
    return start_with(fast_args, extra, 0);
}

void it_start(imd_proc *p)
{
    IT_CHECK(imd_start(p) == 0, "imd did not (re)start on %s", p->data);
}

int it_admin(imd_proc *p, const char *stdin_text, char *out, size_t outlen, const char *const *args)
{
    char dummy[16];
    if (!out) {
        out = dummy;
        outlen = sizeof dummy;
    }
    return imd_admin(p, stdin_text, out, outlen, args, 30000);
}

imd_proc *it_start_imd(const char *const *extra)
{
    return start_with(fast_args, extra, 1);
}

imd_proc *it_start_imd_plain(const char *const *extra)
{
    static const char *const dbg[] = {"--log-level", "debug", NULL};
    return start_with(dbg, extra, 1);
}

const char *it_name(char *buf, size_t len, const char *prefix)
{
    static unsigned counter;
    snprintf(buf, len, "%s%u", prefix, ++counter);
    return buf;
}

tc *it_register(int port, const char *user, const char *password, tc_auth *auth)
{
    tc *c = tc_connect(port, TC_TIMEOUT_MS);
    IT_CHECK(c != NULL, "connect to port %d", port);
    int r = tc_register(c, user, password, auth, 10000);
    IT_CHECK(r == 0, "REGISTER %s: %d (%s)", user, r, r > 0 ? imp_strerror(r) : "no answer");
    return c;
}

tc *it_login(int port, const char *user, const char *password, tc_auth *auth)
{
    tc *c = tc_connect(port, TC_TIMEOUT_MS);
    IT_CHECK(c != NULL, "connect to port %d", port);
    int r = tc_login(c, user, password, UINT64_MAX, auth, 10000);
    IT_CHECK(r == 0, "LOGIN %s: %d (%s)", user, r, r > 0 ? imp_strerror(r) : "no answer");
    return c;
}

void it_liveness(imd_proc *p, long pid, const char *user_a, const char *pw_a, const char *user_b,
                 const char *pw_b)
{
    IT_CHECK(imd_alive(p), "imd is not running at the end of the test");
    if (pid > 0)
        IT_EQ((long)p->pid, pid);
    char na[40], nb[40];
    tc *a, *b;
    tc_auth aa, ab;
    if (user_a) {
        a = it_login(p->port, user_a, pw_a, &aa);
        b = it_login(p->port, user_b, pw_b, &ab);
    } else {
        user_a = it_name(na, sizeof na, "livea");
        user_b = it_name(nb, sizeof nb, "liveb");
        a = it_register(p->port, user_a, "live-password-a", &aa);
        b = it_register(p->port, user_b, "live-password-b", &ab);
    }
    char body[64];
    snprintf(body, sizeof body, "liveness %llu", (unsigned long long)it_now_ms());
    tc_ack ack;
    int r = tc_send_text(a, user_b, NULL, body, &ack);
    IT_CHECK(r == 0, "liveness SEND: %d", r);
    IT_EQ(ack.outcome, IMP_OUTCOME_STORED);
    IT_CHECK(ack.has_msg_id, "liveness ACK without MSG_ID");
    /* b may have older queued messages: read until ours. */
    uint64_t deadline = it_now_ms() + 5000;
    int found = 0;
    while (!found && it_now_ms() < deadline) {
        tc_frame *d = tc_wait(b, IMP_DELIVER, 0, 1000);
        if (!d)
            continue;
        if (imp_msg_u(&d->m, IMP_T_MSG_ID, 0) == ack.msg_id) {
            IT_CHECK(tc_field_is(&d->m, IMP_T_BODY, body), "liveness body differs");
            found = 1;
        }
        uint64_t seq = imp_msg_u(&d->m, IMP_T_SEQ, 0);
        if (seq)
            tc_delivered(b, seq);
        tc_frame_free(d);
    }
    char desc[512];
    IT_CHECK(found, "liveness: message %llu not delivered within 5 s: %s",
             (unsigned long long)ack.msg_id, tc_describe(b, desc, sizeof desc));
    tc_close(a);
    tc_close(b);
    IT_CHECK(imd_alive(p), "imd died during the liveness check");
}

long it_rss_kb(pid_t pid)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%ld/status", (long)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    long kb = -1;
    while (fgets(line, sizeof line, f))
        if (strncmp(line, "VmRSS:", 6) == 0) {
            kb = strtol(line + 6, NULL, 10);
            break;
        }
    fclose(f);
    return kb;
}

int it_fd_count(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%ld/fd", (long)pid);
    DIR *d = opendir(path);
    if (!d)
        return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n;
}

void it_make_cert(const char *dir, char *cert, size_t certlen, char *key, size_t keylen)
{
    snprintf(cert, certlen, "%s/cert.pem", dir);
    snprintf(key, keylen, "%s/key.pem", dir);
    pid_t pid = fork();
    IT_CHECK(pid >= 0, "fork: %s", strerror(errno));
    if (pid == 0) {
        int null = open("/dev/null", O_WRONLY);
        if (null >= 0) {
            dup2(null, 1);
            dup2(null, 2);
        }
        execlp("openssl", "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
               "ec_paramgen_curve:P-256", "-nodes", "-days", "1", "-subj", "/CN=localhost",
               "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1", "-keyout", key,
               "-out", cert, (char *)NULL);
        _exit(127);
    }
    int rc = it_wait_exit(pid, 30000);
    IT_CHECK(rc == 0, "openssl req -x509 (certificate for the TLS tests) exited %d%s", rc,
             rc == 127 ? ": openssl is not installed (ci/deps installs it)" : "");
}

void it_write_file(const char *path, const void *data, size_t len)
{
    char tmp[600];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "wb");
    IT_CHECK(f != NULL, "cannot write %s: %s", tmp, strerror(errno));
    IT_CHECK(fwrite(data, 1, len, f) == len, "write %s", tmp);
    IT_CHECK(fclose(f) == 0, "write %s", tmp);
    IT_CHECK(rename(tmp, path) == 0, "rename %s: %s", tmp, strerror(errno));
}

void it_write_text(const char *path, const char *text)
{
    it_write_file(path, text, strlen(text));
}

char *it_slurp_from(const char *path, long from)
{
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    size_t n = 0, cap = 0;
    if (f) {
        if (from > 0)
            fseek(f, from, SEEK_SET);
        for (;;) {
            if (cap - n < 4096) {
                cap = cap ? cap * 2 : 65536;
                char *nb = realloc(buf, cap);
                IT_CHECK(nb != NULL, "realloc");
                buf = nb;
            }
            size_t r = fread(buf + n, 1, cap - n - 1, f);
            if (r == 0)
                break;
            n += r;
        }
        fclose(f);
    }
    if (!buf) {
        buf = malloc(1);
        IT_CHECK(buf != NULL, "malloc");
    }
    buf[n] = 0;
    return buf;
}

int it_wait_log(const imd_proc *p, long from, const char *needle, int timeout_ms)
{
    uint64_t end = it_now_ms() + (uint64_t)timeout_ms;
    for (;;) {
        char *s = it_slurp_from(p->errlog, from);
        int found = strstr(s, needle) != NULL;
        free(s);
        if (found)
            return 1;
        if (it_now_ms() >= end)
            return 0;
        it_sleep_ms(20);
    }
}

int it_cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* 1 if the file contains the string. */
static int file_has(const char *path, const char *needle)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    char line[4096];
    int found = 0;
    while (!found && fgets(line, sizeof line, f))
        found = strstr(line, needle) != NULL;
    fclose(f);
    return found;
}

void it_finish(imd_proc *p)
{
    tc_close_all();
    uint64_t t0 = it_now_ms();
    int rc = imd_stop(p, 5000);
    IT_CHECK(rc == 0, "imd did not stop cleanly on SIGTERM: exit %d after %llu ms", rc,
             (unsigned long long)(it_now_ms() - t0));
    static const char *const reports[] = {"AddressSanitizer", "LeakSanitizer",
                                          "runtime error:", "ThreadSanitizer"};
    for (size_t i = 0; i < sizeof reports / sizeof reports[0]; i++)
        IT_CHECK(!file_has(p->errlog, reports[i]), "imd's stderr has a sanitizer report (%s)",
                 reports[i]);
}

int it_expect_closed(tc *c, int timeout_ms, int want, const char *what)
{
    int code = 0;
    int closed = tc_expect_close(c, timeout_ms, &code);
    char d[512];
    IT_CHECK(closed, "%s: connection not closed within %d ms: %s", what, timeout_ms,
             tc_describe(c, d, sizeof d));
    if (want)
        IT_CHECK(code == want, "%s: ERROR %d (%s) before the close, want %d (%s)", what, code,
                 imp_err_name(code) ? imp_err_name(code) : "?", want,
                 imp_err_name(want) ? imp_err_name(want) : "?");
    return code;
}

int it_http_get(int port, const char *path, char *buf, size_t cap)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    struct timeval tv = {3, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        close(fd);
        return -1;
    }
    char req[256];
    int rl = snprintf(req, sizeof req, "GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n", path);
    if (send(fd, req, (size_t)rl, MSG_NOSIGNAL) != rl) {
        close(fd);
        return -1;
    }
    size_t n = 0;
    uint64_t deadline = it_now_ms() + 3000;
    while (n + 1 < cap && it_now_ms() < deadline) {
        ssize_t r = recv(fd, buf + n, cap - 1 - n, 0);
        if (r == 0)
            break;
        if (r < 0) {
            if (errno == EINTR)
                continue;
            break; /* includes the 3 s receive timeout */
        }
        n += (size_t)r;
    }
    buf[n] = 0;
    close(fd);
    return (int)n;
}

long long it_stat(tc *c, const char *name)
{
    uint32_t req = tc_simple(c, IMP_STATS);
    IT_CHECK(req != 0, "STATS not sent");
    tc_frame *f = tc_wait_reply(c, req, 5000);
    IT_CHECK(f != NULL && f->m.type == IMP_STATS_REPLY, "STATS not answered by STATS_REPLY");
    long long v = tc_stat(&f->m, name);
    tc_frame_free(f);
    return v;
}
