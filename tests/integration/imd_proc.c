/* Integration tests: imd as a child process (see imd_proc.h). */
#include "imd_proc.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef IMP_SRCDIR
#define IMP_SRCDIR "."
#endif

#define MAX_PROCS 16

static imd_proc *registry[MAX_PROCS];

static void reg_add(imd_proc *p)
{
    for (int i = 0; i < MAX_PROCS; i++)
        if (!registry[i]) {
            registry[i] = p;
            return;
        }
}

static void reg_del(imd_proc *p)
{
    for (int i = 0; i < MAX_PROCS; i++)
        if (registry[i] == p)
            registry[i] = NULL;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
    }
}

static long long mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

const char *imd_binary(void)
{
    static char path[1024];
    const char *env = getenv("IMD");
    if (env && *env)
        return env;
    const char *bd = getenv("IMP_BUILD_DIR");
    if (!bd || !*bd)
        bd = "build";
    if (bd[0] == '/')
        snprintf(path, sizeof path, "%s/imd", bd);
    else
        snprintf(path, sizeof path, "%s/%s/imd", IMP_SRCDIR, bd);
    return path;
}

int imd_available(void)
{
    return access(imd_binary(), X_OK) == 0;
}

/* Write a whole string to a file descriptor (async-signal-safe). */
static void put_fd(int fd, const char *s)
{
    size_t n = strlen(s);
    while (n > 0) {
        ssize_t w = write(fd, s, n);
        if (w <= 0) {
            if (w < 0 && errno == EINTR)
                continue;
            return;
        }
        s += w;
        n -= (size_t)w;
    }
}

void imd_dump_log(const imd_proc *p, size_t maxbytes)
{
    int fd = open(p->errlog, O_RDONLY);
    if (fd < 0)
        return;
    off_t size = lseek(fd, 0, SEEK_END);
    off_t from = 0;
    if (size > 0 && (size_t)size > maxbytes)
        from = size - (off_t)maxbytes;
    lseek(fd, from, SEEK_SET);
    put_fd(2, "---- imd stderr (");
    put_fd(2, p->errlog);
    put_fd(2, from > 0 ? ", tail) ----\n" : ") ----\n");
    char buf[4096];
    ssize_t r;
    while ((r = read(fd, buf, sizeof buf)) > 0) {
        ssize_t off = 0;
        while (off < r) {
            ssize_t w = write(2, buf + off, (size_t)(r - off));
            if (w <= 0)
                break;
            off += w;
        }
    }
    put_fd(2, "---- end of imd stderr ----\n");
    close(fd);
}

void imd_dump_all(void)
{
    for (int i = 0; i < MAX_PROCS; i++)
        if (registry[i])
            imd_dump_log(registry[i], 16384);
}

void imd_kill_all(void)
{
    for (int i = 0; i < MAX_PROCS; i++)
        if (registry[i] && registry[i]->pid > 0)
            kill(registry[i]->pid, SIGKILL);
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)ftw;
    if (flag == FTW_DP)
        rmdir(path);
    else
        unlink(path);
    return 0;
}

static void rm_rf(const char *dir)
{
    nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* Status as an exit code: code, or 128 + signal. */
static int status_code(int st)
{
    if (WIFEXITED(st))
        return WEXITSTATUS(st);
    if (WIFSIGNALED(st))
        return 128 + WTERMSIG(st);
    return -1;
}

/* Wait for pid up to timeout_ms; 1 reaped (*st set), 0 still running. */
static int wait_bounded(pid_t pid, int timeout_ms, int *st)
{
    long long end = mono_ms() + timeout_ms;
    for (;;) {
        pid_t r = waitpid(pid, st, WNOHANG);
        if (r == pid)
            return 1;
        if (r < 0 && errno != EINTR) {
            *st = -1;
            return 1; /* not our child any more */
        }
        if (mono_ms() >= end)
            return 0;
        sleep_ms(5);
    }
}

int imd_alive(imd_proc *p)
{
    if (p->pid <= 0)
        return 0;
    int st;
    pid_t r = waitpid(p->pid, &st, WNOHANG);
    if (r == 0)
        return 1;
    if (r == p->pid) {
        p->last_status = st;
        fprintf(stderr, "imd (pid %ld) has exited: status %d\n", (long)p->pid, status_code(st));
    }
    p->pid = 0;
    return 0;
}

/* Read the whole stdout log (NUL-terminated) into buf. */
static size_t read_file(const char *path, char *buf, size_t cap)
{
    size_t n = 0;
    int fd = open(path, O_RDONLY);
    if (fd < 0) {
        buf[0] = 0;
        return 0;
    }
    while (n + 1 < cap) {
        ssize_t r = read(fd, buf + n, cap - 1 - n);
        if (r <= 0)
            break;
        n += (size_t)r;
    }
    close(fd);
    buf[n] = 0;
    return n;
}

/* Port of the last line starting with prefix ("imd: listening on "), or 0. tls: only lines
 * that end with " (tls)"; otherwise only lines that do not. */
static int parse_port_kind(const char *text, const char *prefix, int tls)
{
    int port = 0;
    const char *s = text;
    size_t pl = strlen(prefix);
    static const char suffix[] = " (tls)";
    size_t sl = sizeof suffix - 1;
    while ((s = strstr(s, prefix)) != NULL) {
        if (s == text || s[-1] == '\n') {
            const char *e = strchr(s, '\n');
            if (!e)
                break; /* incomplete line */
            int is_tls = (size_t)(e - s) > pl + sl && memcmp(e - sl, suffix, sl) == 0;
            const char *colon = NULL;
            for (const char *q = s + pl; q < (is_tls ? e - sl : e); q++)
                if (*q == ':')
                    colon = q;
            if (colon && strncmp(s + pl, "unix:", 5) != 0 && is_tls == tls)
                port = atoi(colon + 1);
        }
        s += pl;
    }
    return port;
}

static int parse_port(const char *text, const char *prefix)
{
    return parse_port_kind(text, prefix, 0);
}

void imd_keep_port(imd_proc *p)
{
    p->keep_port = p->port;
}

int imd_start(imd_proc *p)
{
    if (p->pid > 0) {
        fprintf(stderr, "imd_start: already running (pid %ld)\n", (long)p->pid);
        return -1;
    }
    const char *bin = imd_binary();
    const char *argv[IMD_MAX_ARGS + 8];
    int n = 0;
    argv[n++] = bin;
    argv[n++] = "--data";
    argv[n++] = p->data;
    char listen[32] = "127.0.0.1:0";
    if (p->keep_port > 0)
        snprintf(listen, sizeof listen, "127.0.0.1:%d", p->keep_port);
    argv[n++] = "--listen";
    argv[n++] = listen;
    for (int i = 0; i < p->nargs; i++)
        argv[n++] = p->args[i];
    argv[n] = NULL;

    int out = open(p->outlog, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    int err = open(p->errlog, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (out < 0 || err < 0) {
        fprintf(stderr, "imd_start: cannot open logs in %s: %s\n", p->dir, strerror(errno));
        if (out >= 0)
            close(out);
        if (err >= 0)
            close(err);
        return -1;
    }
    char banner[160];
    snprintf(banner, sizeof banner, "==== imd start #%d ====\n", p->starts + 1);
    put_fd(err, banner);
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        fprintf(stderr, "imd_start: fork: %s\n", strerror(errno));
        close(out);
        close(err);
        return -1;
    }
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        int in = open("/dev/null", O_RDONLY);
        if (in < 0 || dup2(in, 0) < 0 || dup2(out, 1) < 0 || dup2(err, 2) < 0)
            _exit(126);
        signal(SIGPIPE, SIG_DFL);
        execv(bin, (char *const *)argv);
        put_fd(2, "imd_start: exec failed\n");
        _exit(127);
    }
    close(out);
    close(err);
    p->pid = pid;
    p->port = 0;
    p->metrics_port = 0;
    p->tls_port = 0;

    long long end = mono_ms() + IMD_START_TIMEOUT_MS;
    static char text[65536];
    for (;;) {
        read_file(p->outlog, text, sizeof text);
        if (strstr(text, "imd: ready\n")) {
            p->port = parse_port(text, "imd: listening on ");
            p->metrics_port = parse_port(text, "imd: metrics on ");
            p->tls_port = parse_port_kind(text, "imd: listening on ", 1);
            if (p->port <= 0) {
                fprintf(stderr, "imd_start: 'ready' without a TCP listening line:\n%s", text);
                imd_kill9(p);
                imd_dump_log(p, 16384);
                return -1;
            }
            p->starts++;
            return 0;
        }
        int st;
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid) {
            p->pid = 0;
            p->last_status = st;
            fprintf(stderr, "imd_start: imd exited before 'ready' (status %d); stdout:\n%s\n",
                    status_code(st), text);
            imd_dump_log(p, 16384);
            return -1;
        }
        if (mono_ms() >= end) {
            fprintf(stderr, "imd_start: no 'imd: ready' within %d ms; stdout:\n%s\n",
                    IMD_START_TIMEOUT_MS, text);
            imd_kill9(p);
            imd_dump_log(p, 16384);
            return -1;
        }
        sleep_ms(5);
    }
}

imd_proc *imd_create(const char *const *args)
{
    imd_proc *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    p->last_status = -1;
    const char *tmp = getenv("TMPDIR");
    if (!tmp || !*tmp)
        tmp = "/tmp";
    snprintf(p->dir, sizeof p->dir, "%s/imd-itest-XXXXXX", tmp);
    if (!mkdtemp(p->dir)) {
        fprintf(stderr, "imd_create: mkdtemp %s: %s\n", p->dir, strerror(errno));
        free(p);
        return NULL;
    }
    snprintf(p->data, sizeof p->data, "%s/data", p->dir);
    snprintf(p->errlog, sizeof p->errlog, "%s/stderr.log", p->dir);
    snprintf(p->outlog, sizeof p->outlog, "%s/stdout.log", p->dir);
    if (mkdir(p->data, 0700) < 0) {
        fprintf(stderr, "imd_create: mkdir %s: %s\n", p->data, strerror(errno));
        rm_rf(p->dir);
        free(p);
        return NULL;
    }
    for (int i = 0; args && args[i]; i++) {
        if (p->nargs >= IMD_MAX_ARGS) {
            fprintf(stderr, "imd_create: too many arguments\n");
            break;
        }
        p->args[p->nargs++] = strdup(args[i]);
    }
    reg_add(p);
    if (!imd_available()) {
        fprintf(stderr, "imd_create: %s is not an executable\n", imd_binary());
        imd_destroy(p);
        return NULL;
    }
    return p;
}

void imd_add_args(imd_proc *p, const char *const *args)
{
    for (int i = 0; args && args[i]; i++) {
        if (p->nargs >= IMD_MAX_ARGS) {
            fprintf(stderr, "imd_add_args: too many arguments\n");
            break;
        }
        p->args[p->nargs++] = strdup(args[i]);
    }
}

imd_proc *imd_new(const char *const *args)
{
    imd_proc *p = imd_create(args);
    if (p && imd_start(p) < 0) {
        imd_destroy(p);
        return NULL;
    }
    return p;
}

int imd_stop(imd_proc *p, int timeout_ms)
{
    if (p->pid <= 0)
        return p->last_status >= 0 ? status_code(p->last_status) : -1;
    kill(p->pid, SIGTERM);
    int st;
    if (wait_bounded(p->pid, timeout_ms, &st)) {
        p->pid = 0;
        p->last_status = st;
        return st < 0 ? -1 : status_code(st);
    }
    fprintf(stderr, "imd_stop: pid %ld did not exit within %d ms of SIGTERM: SIGKILL\n",
            (long)p->pid, timeout_ms);
    imd_kill9(p);
    return -1;
}

int imd_wait_exit(imd_proc *p, int timeout_ms)
{
    if (p->pid <= 0)
        return p->last_status >= 0 ? status_code(p->last_status) : -1;
    int st;
    if (!wait_bounded(p->pid, timeout_ms, &st))
        return -1;
    p->pid = 0;
    p->last_status = st;
    return st < 0 ? -1 : status_code(st);
}

void imd_kill9(imd_proc *p)
{
    if (p->pid <= 0)
        return;
    kill(p->pid, SIGKILL);
    int st;
    if (!wait_bounded(p->pid, 10000, &st))
        st = -1;
    p->last_status = st;
    p->pid = 0;
}

void imd_destroy(imd_proc *p)
{
    if (!p)
        return;
    if (p->pid > 0)
        imd_stop(p, 5000);
    const char *keep = getenv("IMP_ITEST_KEEP");
    if (keep && *keep)
        fprintf(stderr, "imd_destroy: keeping %s\n", p->dir);
    else
        rm_rf(p->dir);
    for (int i = 0; i < p->nargs; i++)
        free(p->args[i]);
    reg_del(p);
    free(p);
}

void imd_destroy_all(void)
{
    for (int i = 0; i < MAX_PROCS; i++)
        if (registry[i])
            imd_destroy(registry[i]);
}

int imd_admin(imd_proc *p, const char *stdin_text, char *out, size_t outlen,
              const char *const *argv, int timeout_ms)
{
    char inpath[320], outpath[320];
    snprintf(inpath, sizeof inpath, "%s/admin.in", p->dir);
    snprintf(outpath, sizeof outpath, "%s/admin.out", p->dir);
    int in = open(inpath, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (in < 0)
        return -1;
    if (stdin_text)
        put_fd(in, stdin_text);
    lseek(in, 0, SEEK_SET);
    int o = open(outpath, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    int e = open(p->errlog, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (o < 0 || e < 0) {
        close(in);
        if (o >= 0)
            close(o);
        if (e >= 0)
            close(e);
        return -1;
    }
    const char *av[64];
    int n = 0;
    av[n++] = imd_binary();
    av[n++] = "--data";
    av[n++] = p->data;
    char banner[600];
    int bl = snprintf(banner, sizeof banner, "==== admin: imd --data %s", p->data);
    for (int i = 0; argv[i] && n < 63; i++) {
        av[n++] = argv[i];
        if (bl > 0 && (size_t)bl < sizeof banner)
            bl += snprintf(banner + bl, sizeof banner - (size_t)bl, " %s", argv[i]);
    }
    av[n] = NULL;
    put_fd(e, banner);
    put_fd(e, "\n");
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        close(in);
        close(o);
        close(e);
        return -1;
    }
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (dup2(in, 0) < 0 || dup2(o, 1) < 0 || dup2(e, 2) < 0)
            _exit(126);
        execv(av[0], (char *const *)av);
        _exit(127);
    }
    close(in);
    close(o);
    close(e);
    int st;
    int rc;
    if (!wait_bounded(pid, timeout_ms, &st)) {
        fprintf(stderr, "imd_admin: timed out after %d ms: killed\n", timeout_ms);
        kill(pid, SIGKILL);
        wait_bounded(pid, 5000, &st);
        rc = -1;
    } else {
        rc = st < 0 ? -1 : status_code(st);
    }
    if (out && outlen)
        read_file(outpath, out, outlen);
    return rc;
}
