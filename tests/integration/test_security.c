/* Integration: security properties of a live imd (issue 6, "Security").
 *
 * 1. storage: the database holds only Argon2id hash strings; none of 100 random passwords is
 *    anywhere in the data directory (database, -wal, -shm), while imd runs and after it
 *    stopped, nor in its logs; two equal passwords give two different hashes;
 * 2. no user enumeration (IMP-SEC-003): with the default Argon2id parameters, unknown-user
 *    and wrong-password logins take the same time (medians within 10 %) and are answered by
 *    byte-identical ERROR frames;
 * 3. brute force (IMP-SEC-003): an address is banned after repeated failures (BANNED, fatal,
 *    also for the right password, a token and REGISTER) while other addresses are not; the
 *    ban lifts after addr_ban_ms; the account backoff grows with each failure and applies
 *    across addresses (but not to resume tokens);
 * 4. hash flood: 500 concurrent logins with 2 hash workers and a queue of 8: the rest get BUSY
 *    with RETRY_AFTER at once, never more hashes run at once than workers (STATS
 *    hash_running_max, auth.c), PINGs of a logged-in client stay fast;
 * 5. slowloris (IMP-SEC-001, IMP-TIME-001): 1,000 connections trickling a HELLO/LOGIN one
 *    byte every 200 ms are all closed with AUTH_TIMEOUT at the 2 s login deadline; a normal
 *    client's message round trips stay fast; imd's descriptors come back to their baseline;
 * 6. connection caps per address and in total (SERVER_FULL), 20 rounds of close-some/refill
 *    with four ways of closing: the same number admitted each round, no leaked slot or
 *    descriptor;
 * 7. EMFILE (what test_ops.c test_emfile does not cover): two exhaustion cycles (the reserve
 *    descriptor must work again), CPU per second over 2 s of exhaustion each, the connections
 *    left waiting in the backlog are all served or shed once descriptors free up, and new
 *    registrations, logins and messages work.
 *
 * "Other addresses" are 127.0.0.2, 127.0.0.3, ...: Linux routes all of 127/8 to loopback, and
 * imd keys its limits and throttling on the peer's address. Numbers are printed with it_note.
 * Every test ends with a liveness check on the same imd process and a clean stop.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <sqlite3.h>

#include "itest.h"

#define T 5000

/* ---- small helpers --------------------------------------------------------------------------- */

static uint64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/* The p-quantile (0..1) of v[0..n) (sorts v in place); 0 for n == 0. */
static uint64_t pct(uint64_t *v, size_t n, double p)
{
    if (n == 0)
        return 0;
    qsort(v, n, sizeof *v, it_cmp_u64);
    size_t i = (size_t)(p * (double)(n - 1) + 0.5);
    return v[i < n ? i : n - 1];
}

/* The soft RLIMIT_NOFILE raised to the hard limit; returns the new soft limit. */
static long raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return -1;
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    getrlimit(RLIMIT_NOFILE, &rl);
    return (long)rl.rlim_cur;
}

/* utime + stime of pid in seconds (/proc/PID/stat fields 14 and 15), -1 on failure. */
static double cpu_seconds(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%ld/stat", (long)pid);
    char *s = it_slurp(path, NULL);
    const char *rp = strrchr(s, ')');
    double r = -1;
    unsigned long long ut = 0, st = 0;
    if (rp &&
        sscanf(rp + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) == 2)
        r = (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
    free(s);
    return r;
}

/* Waits until imd's descriptor count is want (bounded); returns the last count seen. */
static int wait_fds(pid_t pid, int want, int timeout_ms)
{
    uint64_t end = it_now_ms() + (uint64_t)timeout_ms;
    int n = it_fd_count(pid);
    while (n != want && it_now_ms() < end) {
        it_sleep_ms(20);
        n = it_fd_count(pid);
    }
    return n;
}

/* A random printable password of len characters (len < cap). */
static void random_password(char *out, size_t len)
{
    static const char set[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    uint8_t rnd[64];
    FILE *f = fopen("/dev/urandom", "rb");
    IT_CHECK(f != NULL && fread(rnd, 1, len, f) == len, "cannot read /dev/urandom");
    fclose(f);
    for (size_t i = 0; i < len; i++)
        out[i] = set[rnd[i] % (sizeof set - 1)];
    out[len] = 0;
}

/* A non-blocking TCP socket from src (NULL: any) to 127.0.0.1:port, connected within
 * timeout_ms; -1 on failure (message on stderr). */
static int sock_from(const char *src, int port, int timeout_ms)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        fprintf(stderr, "sock_from: socket: %s\n", strerror(errno));
        return -1;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    if (src) {
        sa.sin_addr.s_addr = inet_addr(src);
        if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
            fprintf(stderr, "sock_from: bind %s: %s\n", src, strerror(errno));
            close(fd);
            return -1;
        }
    }
    sa.sin_port = htons((uint16_t)port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        if (errno != EINPROGRESS) {
            fprintf(stderr, "sock_from: connect from %s: %s\n", src ? src : "*", strerror(errno));
            close(fd);
            return -1;
        }
        struct pollfd pf = {fd, POLLOUT, 0};
        int err = 0;
        socklen_t el = sizeof err;
        if (poll(&pf, 1, timeout_ms) <= 0 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el) < 0 ||
            err) {
            fprintf(stderr, "sock_from: connect from %s: %s\n", src ? src : "*",
                    err ? strerror(err) : "timeout");
            close(fd);
            return -1;
        }
    }
    return fd;
}

/* ---- test clients from any source address --------------------------------------------------
 * tc_connect only connects from 127.0.0.1: these are tc objects on sockets of our own, closed
 * by sec_teardown (client.c's registry does not know them). */

#define OWN_MAX 256
static tc *own[OWN_MAX];

static void own_close(tc *c)
{
    if (!c)
        return;
    for (int i = 0; i < OWN_MAX; i++)
        if (own[i] == c)
            own[i] = NULL;
    tc_close(c);
}

/* A client on a socket from src. raw: nothing sent; conn mode: HELLO sent, WELCOME waited for.
 * NULL on failure (message on stderr). */
static tc *tc_from(const char *src, int port, int raw)
{
    int fd = sock_from(src, port, T);
    if (fd < 0)
        return NULL;
    tc *c = calloc(1, sizeof *c);
    IT_CHECK(c != NULL, "calloc");
    c->fd = fd;
    c->raw = raw;
    c->next_req = 100;
    int slot = 0;
    for (int i = 0; i < OWN_MAX && !slot; i++)
        if (!own[i]) {
            own[i] = c;
            slot = 1;
        }
    IT_CHECK(slot, "more than %d own clients", OWN_MAX);
    if (raw)
        return c;
    imp_config cfg;
    imp_config_default(&cfg, IMP_ROLE_CLIENT);
    cfg.agent = "imp-itest-security";
    cfg.auth_timeout_ms = 0;
    c->conn = imp_conn_new(IMP_ROLE_CLIENT, &cfg, it_now_ms());
    IT_CHECK(c->conn != NULL, "imp_conn_new");
    const uint8_t *out;
    size_t n;
    while ((n = imp_conn_pending_output(c->conn, &out)) > 0) {
        int r = tc_send_raw(c, out, n, T);
        if (r < 0) {
            fprintf(stderr, "tc_from: HELLO not written: %s\n", strerror(-r));
            own_close(c);
            return NULL;
        }
        imp_conn_consume_output(c->conn, n);
    }
    tc_frame *w = tc_wait(c, IMP_WELCOME, 0, T);
    if (!w) {
        char d[512];
        fprintf(stderr, "tc_from %s: no WELCOME: %s\n", src ? src : "*",
                tc_describe(c, d, sizeof d));
        own_close(c);
        return NULL;
    }
    tc_frame_free(w);
    return c;
}

static tc *must_from(const char *src, int port)
{
    tc *c = tc_from(src, port, 0);
    IT_CHECK(c != NULL, "connect from %s", src);
    return c;
}

/* LOGIN (password, or token when tok has one) or REGISTER on c. Returns 0 on AUTH_OK (*out
 * filled when not NULL), else the ERROR code; *retry is RETRY_AFTER (0 when absent). */
static int auth_try(tc *c, uint8_t type, const char *user, const char *pw, const tc_auth *tok,
                    uint32_t *retry, tc_auth *out)
{
    imp_msg m;
    imp_msg_init(&m, type, 0);
    imp_msg_set_s(&m, IMP_T_USER, user);
    if (tok && tok->has_token)
        imp_msg_set_b(&m, IMP_T_TOKEN, tok->token, tok->token_len);
    else
        imp_msg_set_s(&m, IMP_T_PASSWORD, pw);
    uint32_t req = tc_request(c, &m);
    IT_CHECK(req != 0, "%s %s not sent", imp_type_name(type), user);
    tc_frame *f = tc_wait_reply(c, req, 10000);
    char d[512];
    IT_CHECK(f != NULL, "%s %s: no answer: %s", imp_type_name(type), user,
             tc_describe(c, d, sizeof d));
    IT_CHECK(f->m.type == IMP_AUTH_OK || f->m.type == IMP_ERROR, "%s answered by %s",
             imp_type_name(type), imp_type_name(f->m.type));
    int code = f->m.type == IMP_AUTH_OK ? 0 : (int)imp_msg_u(&f->m, IMP_T_CODE, 0);
    if (retry)
        *retry = (uint32_t)imp_msg_u(&f->m, IMP_T_RETRY_AFTER, 0);
    if (out && code == 0) {
        memset(out, 0, sizeof *out);
        tc_str(&f->m, IMP_T_USER, out->user, sizeof out->user);
        imp_bytes t = imp_msg_b(&f->m, IMP_T_TOKEN);
        if (imp_msg_has(&f->m, IMP_T_TOKEN) && t.len <= sizeof out->token) {
            memcpy(out->token, t.p, t.len);
            out->token_len = t.len;
            out->has_token = 1;
        }
    }
    tc_frame_free(f);
    return code;
}

/* ---- many raw connections (floods) ----------------------------------------------------------- */

typedef struct rconn {
    int fd;           /* -1 once closed */
    uint64_t t_conn;  /* ms: connected */
    uint64_t t_req;   /* us: the request was written */
    uint64_t t_reply; /* us: its answer arrived; 0 none yet */
    uint64_t t_close; /* ms: EOF, reset or a failed write seen; 0 open */
    int welcome;
    uint8_t reply;  /* type of the frame answering request rid (0: none yet) */
    int code;       /* its CODE when it is an ERROR */
    uint32_t retry; /* its RETRY_AFTER */
    int last_error; /* CODE of the last ERROR frame seen */
    int bad;        /* the server's bytes did not parse */
    size_t sent;    /* slowloris: bytes of the script written */
    size_t inlen;
    uint8_t in[2048];
} rconn;

static rconn *g_rc;
static int g_nrc;

static void rc_free_all(void)
{
    for (int i = 0; i < g_nrc; i++)
        if (g_rc[i].fd >= 0)
            close(g_rc[i].fd);
    free(g_rc);
    g_rc = NULL;
    g_nrc = 0;
}

static rconn *rc_alloc(int n)
{
    rc_free_all();
    g_rc = calloc((size_t)n, sizeof *g_rc);
    IT_CHECK(g_rc != NULL, "calloc %d connections", n);
    for (int i = 0; i < n; i++)
        g_rc[i].fd = -1;
    g_nrc = n;
    return g_rc;
}

static int sec_teardown(void **state)
{
    for (int i = 0; i < OWN_MAX; i++)
        if (own[i]) {
            tc_close(own[i]);
            own[i] = NULL;
        }
    rc_free_all();
    return it_teardown(state);
}

static void rc_closed(rconn *r)
{
    if (!r->t_close)
        r->t_close = it_now_ms();
    if (r->fd >= 0)
        close(r->fd);
    r->fd = -1;
}

static void rc_frame(rconn *r, const imp_msg *m, uint32_t rid)
{
    if (m->type == IMP_WELCOME)
        r->welcome = 1;
    if (m->type == IMP_ERROR)
        r->last_error = (int)imp_msg_u(m, IMP_T_CODE, 0);
    if (rid && m->request_id == rid && !r->reply &&
        (m->type == IMP_AUTH_OK || m->type == IMP_ERROR)) {
        r->reply = m->type;
        r->t_reply = now_us();
        r->code = m->type == IMP_ERROR ? (int)imp_msg_u(m, IMP_T_CODE, 0) : 0;
        r->retry = (uint32_t)imp_msg_u(m, IMP_T_RETRY_AFTER, 0);
    }
}

/* Reads what is there (non-blocking), parses whole frames; rid: the request id whose answer is
 * recorded. */
static void rc_read(rconn *r, uint32_t rid)
{
    while (r->fd >= 0) {
        ssize_t n = recv(r->fd, r->in + r->inlen, sizeof r->in - r->inlen, 0);
        if (n > 0) {
            r->inlen += (size_t)n;
            size_t off = 0;
            while (off < r->inlen) {
                imp_frame fr;
                imp_ssize k = imp_frame_parse(r->in + off, r->inlen - off, 0, &fr, NULL);
                if (k == 0)
                    break;
                imp_msg m;
                if (k < 0 || imp_msg_decode(&fr, &m) != 0) {
                    r->bad = 1;
                    off = r->inlen;
                    break;
                }
                rc_frame(r, &m, rid);
                off += (size_t)k;
            }
            memmove(r->in, r->in + off, r->inlen - off);
            r->inlen -= off;
            if (r->inlen == sizeof r->in) {
                r->bad = 1; /* a frame larger than we expect from these tests */
                r->inlen = 0;
            }
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        rc_closed(r); /* EOF or reset */
    }
}

/* Polls every open connection of rs[0..n) for up to timeout_ms and reads what arrived. */
static void rc_pump(rconn *rs, int n, int timeout_ms, uint32_t rid)
{
    static struct pollfd pf[2048];
    static int idx[2048];
    int k = 0;
    for (int i = 0; i < n && k < 2048; i++)
        if (rs[i].fd >= 0) {
            pf[k].fd = rs[i].fd;
            pf[k].events = POLLIN;
            pf[k].revents = 0;
            idx[k++] = i;
        }
    if (k == 0) {
        if (timeout_ms > 0)
            it_sleep_ms((unsigned)timeout_ms);
        return;
    }
    int pr = poll(pf, (nfds_t)k, timeout_ms);
    if (pr <= 0)
        return;
    for (int j = 0; j < k; j++)
        if (pf[j].revents)
            rc_read(&rs[idx[j]], rid);
}

/* Writes all of p (small) on r; a failed write marks r closed. 0 or -1. */
static int rc_write(rconn *r, const void *p, size_t len)
{
    size_t done = 0;
    uint64_t end = it_now_ms() + T;
    while (r->fd >= 0 && done < len) {
        ssize_t w = send(r->fd, (const uint8_t *)p + done, len - done, MSG_NOSIGNAL);
        if (w > 0) {
            done += (size_t)w;
            continue;
        }
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) && it_now_ms() < end) {
            struct pollfd pf = {r->fd, POLLOUT, 0};
            poll(&pf, 1, 10);
            continue;
        }
        rc_closed(r);
        return -1;
    }
    return done == len ? 0 : -1;
}

static size_t encode(const imp_msg *m, uint8_t *out, size_t cap)
{
    imp_ssize n = imp_msg_encode(m, out, cap);
    IT_CHECK(n > 0, "encode %s: %d", imp_type_name(m->type), (int)n);
    return (size_t)n;
}

static size_t encode_hello(uint8_t *out, size_t cap)
{
    imp_msg m;
    imp_msg_init(&m, IMP_HELLO, 1);
    imp_msg_set_u(&m, IMP_T_VERSION_MIN, 1);
    imp_msg_set_u(&m, IMP_T_VERSION_MAX, 1);
    imp_msg_set_s(&m, IMP_T_AGENT, "imp-itest-security");
    return encode(&m, out, cap);
}

static size_t encode_login(uint8_t *out, size_t cap, uint32_t rid, const char *user, const char *pw)
{
    imp_msg m;
    imp_msg_init(&m, IMP_LOGIN, rid);
    imp_msg_set_s(&m, IMP_T_USER, user);
    imp_msg_set_s(&m, IMP_T_PASSWORD, pw);
    return encode(&m, out, cap);
}

/* ---- a prober thread: PINGs or message round trips while the main thread floods -------------
 * It uses only its own tc objects, and the main thread calls no tc_* function while it runs
 * (client.c's tc_pump has a static buffer). */

#define PROBE_MAX 20000

typedef struct prober {
    tc *a, *b;       /* a PINGs, or a sends to b */
    const char *to;  /* b's user name; NULL: PING mode */
    unsigned gap_ms; /* pause between two probes */
    atomic_int stop;
    uint64_t lat_us[PROBE_MAX];
    size_t n;
    int failed;
    char why[256];
    pthread_t th;
} prober;

static prober g_probe;

static void *probe_main(void *arg)
{
    prober *p = arg;
    unsigned k = 0;
    while (!atomic_load(&p->stop) && p->n < PROBE_MAX && !p->failed) {
        uint64_t t0 = now_us();
        if (!p->to) {
            uint32_t req = tc_simple(p->a, IMP_PING);
            tc_frame *f = req ? tc_wait(p->a, IMP_PONG, req, T) : NULL;
            if (!f) {
                p->failed = 1;
                snprintf(p->why, sizeof p->why, "PING %u: no PONG within %d ms", k, T);
                break;
            }
            tc_frame_free(f);
        } else {
            char body[64];
            snprintf(body, sizeof body, "probe %u", k);
            tc_ack ack;
            int r = tc_send_text(p->a, p->to, NULL, body, &ack);
            if (r != 0 || !ack.has_msg_id) {
                p->failed = 1;
                snprintf(p->why, sizeof p->why, "probe SEND %u: %d", k, r);
                break;
            }
            int got = 0;
            uint64_t end = it_now_ms() + T;
            while (!got && it_now_ms() < end) {
                tc_frame *d = tc_wait(p->b, IMP_DELIVER, 0, 200);
                if (!d)
                    continue;
                got = imp_msg_u(&d->m, IMP_T_MSG_ID, 0) == ack.msg_id;
                uint64_t seq = imp_msg_u(&d->m, IMP_T_SEQ, 0);
                if (seq)
                    tc_delivered(p->b, seq);
                tc_frame_free(d);
            }
            if (!got) {
                p->failed = 1;
                snprintf(p->why, sizeof p->why, "probe message %u not delivered within %d ms", k,
                         T);
                break;
            }
        }
        p->lat_us[p->n++] = now_us() - t0;
        k++;
        if (p->gap_ms)
            it_sleep_ms(p->gap_ms);
    }
    return NULL;
}

static void probe_start(tc *a, tc *b, const char *to, unsigned gap_ms)
{
    prober *p = &g_probe;
    p->a = a;
    p->b = b;
    p->to = to;
    p->gap_ms = gap_ms;
    atomic_store(&p->stop, 0);
    p->n = 0;
    p->failed = 0;
    p->why[0] = 0;
    IT_CHECK(pthread_create(&p->th, NULL, probe_main, p) == 0, "pthread_create");
}

static void probe_stop(void)
{
    atomic_store(&g_probe.stop, 1);
    pthread_join(g_probe.th, NULL);
}

/* ---- 1. password storage --------------------------------------------------------------------- */

#define STORE_USERS 100
#define PW_LEN 24

/* Fails when any password appears in any file directly in dir (every byte of it: the
 * database, its -wal and -shm). Returns the number of files and bytes scanned. */
static int scan_dir(const char *dir, char pw[][PW_LEN + 1], int npw, size_t *bytes,
                    const char *when)
{
    DIR *d = opendir(dir);
    IT_CHECK(d != NULL, "cannot open %s", dir);
    struct dirent *e;
    int files = 0;
    *bytes = 0;
    while ((e = readdir(d)) != NULL) {
        char path[1024];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        struct stat st;
        if (stat(path, &st) != 0 || !S_ISREG(st.st_mode))
            continue;
        size_t len = 0;
        char *b = it_slurp(path, &len);
        files++;
        *bytes += len;
        for (int i = 0; i < npw; i++)
            IT_CHECK(memmem(b, len, pw[i], PW_LEN) == NULL, "%s: password %d found in %s", when, i,
                     path);
        free(b);
    }
    closedir(d);
    return files;
}

static void scan_file(const char *path, char pw[][PW_LEN + 1], int npw, const char *what)
{
    size_t len = 0;
    char *b = it_slurp(path, &len);
    for (int i = 0; i < npw; i++)
        IT_CHECK(memmem(b, len, pw[i], PW_LEN) == NULL, "password %d found in %s (%s)", i, what,
                 path);
    free(b);
}

static void test_password_storage(void **state)
{
    (void)state;
    /* the fast hashing parameters (it_start_imd) and debug logging */
    imd_proc *p = it_start_imd(NULL);
    static char pw[STORE_USERS + 2][PW_LEN + 1];
    char names[STORE_USERS + 2][16];
    for (int i = 0; i < STORE_USERS; i++) {
        random_password(pw[i], PW_LEN);
        snprintf(names[i], sizeof names[i], "stor%d", i);
    }
    /* two users with one password */
    random_password(pw[STORE_USERS], PW_LEN);
    memcpy(pw[STORE_USERS + 1], pw[STORE_USERS], sizeof pw[0]);
    snprintf(names[STORE_USERS], sizeof names[0], "twin1");
    snprintf(names[STORE_USERS + 1], sizeof names[0], "twin2");
    const int n = STORE_USERS + 2;
    uint64_t t0 = it_now_ms();
    for (int i = 0; i < n; i++)
        tc_close(it_register(p->port, names[i], pw[i], NULL));
    /* and each logs in once (the verify path must not write the password anywhere either) */
    for (int i = 0; i < n; i += 7)
        tc_close(it_login(p->port, names[i], pw[i], NULL));
    it_note("storage: %d users registered in %llu ms", n, (unsigned long long)(it_now_ms() - t0));

    /* while imd runs, before any checkpoint: every file of the data directory */
    size_t bytes = 0;
    int files = scan_dir(p->data, pw, n, &bytes, "while running");
    char wal[400];
    snprintf(wal, sizeof wal, "%s/imd.db-wal", p->data);
    struct stat st;
    IT_CHECK(stat(wal, &st) == 0, "no %s while imd runs", wal);
    it_note("storage: running: %d files, %zu bytes scanned (WAL %lld bytes): no password", files,
            bytes, (long long)st.st_size);

    IT_EQ(imd_stop(p, 5000), 0);
    files = scan_dir(p->data, pw, n, &bytes, "after stop");
    it_note("storage: stopped: %d files, %zu bytes scanned: no password", files, bytes);
    scan_file(p->errlog, pw, n, "imd's stderr (debug log)");
    scan_file(p->outlog, pw, n, "imd's stdout");

    /* the database: only Argon2id hash strings, the same parameters, two different hashes for
     * the twins */
    char dbpath[400];
    snprintf(dbpath, sizeof dbpath, "%s/imd.db", p->data);
    sqlite3 *db = NULL;
    IT_EQ(sqlite3_open_v2(dbpath, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    sqlite3_stmt *q = NULL;
    IT_EQ(sqlite3_prepare_v2(db, "SELECT name, hash FROM users ORDER BY id", -1, &q, NULL),
          SQLITE_OK);
    int rows = 0;
    char twin[2][160] = {"", ""};
    char params[64] = "";
    while (sqlite3_step(q) == SQLITE_ROW) {
        const char *name = (const char *)sqlite3_column_text(q, 0);
        const char *hash = (const char *)sqlite3_column_text(q, 1);
        IT_CHECK(name && hash, "NULL name or hash in users");
        IT_CHECK(strncmp(hash, "$argon2id$", 10) == 0, "%s: hash '%.40s' is not Argon2id", name,
                 hash);
        /* $argon2id$v=19$m=...,t=...,p=...$salt$hash: the same parameters for all */
        const char *ps = strchr(hash + 10, '$');
        const char *pe = ps ? strchr(ps + 1, '$') : NULL;
        IT_CHECK(pe != NULL, "%s: hash '%s' has no parameter part", name, hash);
        char cur[64];
        snprintf(cur, sizeof cur, "%.*s", (int)(pe - hash), hash);
        if (!params[0])
            snprintf(params, sizeof params, "%s", cur);
        IT_CHECK(strcmp(cur, params) == 0, "%s: parameters %s, others %s", name, cur, params);
        for (int i = 0; i < n; i++)
            IT_CHECK(strstr(hash, pw[i]) == NULL, "%s: the hash contains a password", name);
        if (strcmp(name, "twin1") == 0)
            snprintf(twin[0], sizeof twin[0], "%s", hash);
        if (strcmp(name, "twin2") == 0)
            snprintf(twin[1], sizeof twin[1], "%s", hash);
        rows++;
    }
    sqlite3_finalize(q);
    sqlite3_close(db);
    IT_EQ(rows, n);
    IT_CHECK(twin[0][0] && twin[1][0], "twin1 or twin2 missing from the database");
    IT_CHECK(strcmp(twin[0], twin[1]) != 0, "equal passwords gave equal hashes: %s", twin[0]);
    it_note("storage: %d rows, all %s$...; twin hashes differ", rows, params);

    /* the stored hashes work after a restart */
    it_start(p);
    long pid = (long)p->pid;
    tc_close(it_login(p->port, names[3], pw[3], NULL));
    tc_close(it_login(p->port, "twin2", pw[STORE_USERS + 1], NULL));
    it_liveness(p, pid, NULL, NULL, NULL, NULL);
    it_finish(p);
}

/* ---- 2. no user enumeration by time or answer ------------------------------------------------ */

#define ENUM_N 80

/* A pair of LOGINs, one of each kind, each on a fresh connection (connecting not timed), sent
 * back to back (unknown first when unknown_first) so that both hash at the same time on the
 * two workers: whatever else the shared machine does slows both alike. The time of each from
 * its write to its answer in us, and the answers (raw ERROR frames; request id 101 on every
 * fresh connection) into f[0] (wrong password) and f[1] (unknown user). */
static void timed_pair(int port, const char *unknown_user, const char *pw, int unknown_first,
                       uint64_t dt[2], tc_frame *f[2])
{
    tc *c[2];
    imp_msg m[2];
    uint32_t req[2];
    uint64_t t0[2];
    for (int k = 0; k < 2; k++) {
        c[k] = tc_connect(port, T);
        IT_CHECK(c[k] != NULL, "connect");
        imp_msg_init(&m[k], IMP_LOGIN, 0);
        imp_msg_set_s(&m[k], IMP_T_USER, k ? unknown_user : "enumvictim");
        imp_msg_set_s(&m[k], IMP_T_PASSWORD, pw);
        f[k] = NULL;
    }
    for (int j = 0; j < 2; j++) {
        int k = j ^ !unknown_first;
        t0[k] = now_us();
        req[k] = tc_request(c[k], &m[k]);
        IT_CHECK(req[k] == 101, "request id %u", (unsigned)req[k]);
    }
    uint64_t end = it_now_ms() + 10000;
    while ((!f[0] || !f[1]) && it_now_ms() < end) {
        struct pollfd pf[2] = {{c[0]->fd, POLLIN, 0}, {c[1]->fd, POLLIN, 0}};
        poll(pf, 2, 100);
        for (int k = 0; k < 2; k++) {
            if (f[k])
                continue;
            tc_pump(c[k], 0);
            f[k] = tc_wait_reply(c[k], req[k], 0);
            if (f[k])
                dt[k] = now_us() - t0[k];
        }
    }
    char d[512];
    for (int k = 0; k < 2; k++) {
        IT_CHECK(f[k] != NULL, "LOGIN %s: no answer: %s", k ? unknown_user : "enumvictim",
                 tc_describe(c[k], d, sizeof d));
        tc_close(c[k]);
    }
}

/* One measurement: ENUM_N pairs (timed_pair; which kind goes first alternates). Checks that
 * every answer is the same ERROR AUTH_FAILED frame, byte for byte; prints the medians and
 * p90s; returns |mu - mw| / mw, the medians into *mw and *mu. */
static double enum_measure(int port, int attempt, uint64_t *mw, uint64_t *mu)
{
    static uint64_t wrong[ENUM_N], unknown[ENUM_N];
    tc_frame *ref = NULL;
    char user[40], pwd[40];
    for (int i = 0; i < ENUM_N; i++) {
        snprintf(pwd, sizeof pwd, "wrong password %d.%d", attempt, i);
        snprintf(user, sizeof user, "nosuchuser%d_%d", attempt, i);
        uint64_t dt[2] = {0, 0};
        tc_frame *f[2];
        timed_pair(port, user, pwd, i % 2, dt, f);
        wrong[i] = dt[0];
        unknown[i] = dt[1];
        for (int k = 0; k < 2; k++) {
            IT_CHECK(f[k]->m.type == IMP_ERROR, "LOGIN %d answered %s", i,
                     imp_type_name(f[k]->m.type));
            IT_EQ(imp_msg_u(&f[k]->m, IMP_T_CODE, 0), 400); /* AUTH_FAILED */
            if (!ref) {
                ref = f[k];
                continue;
            }
            /* the same code, text and fields, byte for byte */
            IT_CHECK(f[k]->len == ref->len && memcmp(f[k]->buf, ref->buf, ref->len) == 0,
                     "LOGIN %d (%s) answered differently from the first (%zu vs %zu bytes)", i,
                     k ? "unknown user" : "wrong password", f[k]->len, ref->len);
            tc_frame_free(f[k]);
        }
    }
    char text[128];
    tc_str(&ref->m, IMP_T_TEXT, text, sizeof text);
    it_note("enumeration: both kinds answered ERROR %llu \"%s\"%s, %zu identical bytes",
            (unsigned long long)imp_msg_u(&ref->m, IMP_T_CODE, 0), text,
            imp_msg_has(&ref->m, IMP_T_RETRY_AFTER) ? " with RETRY_AFTER" : "", ref->len);
    tc_frame_free(ref);
    *mw = pct(wrong, ENUM_N, 0.5);
    *mu = pct(unknown, ENUM_N, 0.5);
    uint64_t pw90 = pct(wrong, ENUM_N, 0.9), pu90 = pct(unknown, ENUM_N, 0.9);
    double diff = (double)(*mu > *mw ? *mu - *mw : *mw - *mu) / (double)(*mw ? *mw : 1);
    it_note("enumeration (default Argon2id, %d pairs, concurrent): wrong password median %.1f "
            "ms p90 %.1f ms; unknown user median %.1f ms p90 %.1f ms; medians differ by %.1f %%",
            ENUM_N, (double)*mw / 1000.0, (double)pw90 / 1000.0, (double)*mu / 1000.0,
            (double)pu90 / 1000.0, diff * 100.0);
    return diff;
}

/* How far apart the two medians may be. 10 % in the build that ships. Under AddressSanitizer
 * imd's hash arena is compiled out (hash_arena.c): every Argon2id call maps and faults in its
 * 19 MiB afresh, and that cost differs between the two workers by up to ~20 % for a whole run
 * (measured on 4f6930d, before this bound: wrong password 23.8 ms, unknown user 19.1 ms, and
 * the reverse in other runs). The defect this test exists for, no dummy hash for unknown users,
 * shows as ~99 % in every build. */
#if defined(__SANITIZE_ADDRESS__)
#define ENUM_MAX_DIFF 0.30
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define ENUM_MAX_DIFF 0.30
#endif
#endif
#ifndef ENUM_MAX_DIFF
#define ENUM_MAX_DIFF 0.10
#endif

static void test_no_enumeration(void **state)
{
    (void)state;
    /* The server's default Argon2id parameters. The address ban and the account backoff would
     * answer BANNED / AUTH_BACKOFF long before 320 failures from one address: their thresholds
     * are raised so that every attempt is really verified (this test is about the answer and
     * the time of a verification, test_brute_force about the throttling). */
    static const char *const args[] = {"--set",       "addr_max_failures=1000",
                                       "--set",       "user_free_failures=1000000",
                                       "--log-level", "info",
                                       NULL};
    imd_proc *p = it_start_imd_plain(args);
    long pid = (long)p->pid;
    tc_close(it_register(p->port, "enumvictim", "the real password", NULL));

    /* warm-up (first allocations of the hash memory), not counted */
    for (int i = 0; i < 2; i++) {
        uint64_t dt[2];
        tc_frame *f[2];
        timed_pair(p->port, "warmup", "warm-up password", i, dt, f);
        tc_frame_free(f[0]);
        tc_frame_free(f[1]);
    }
    /* The medians are steady, but this machine is shared: a measurement over ENUM_MAX_DIFF is
     * repeated once, and the second one decides (a real difference, e.g. no dummy hash for
     * unknown users: 99 %, fails both). */
    double diff = 1;
    for (int attempt = 1; attempt <= 2 && diff > ENUM_MAX_DIFF; attempt++) {
        uint64_t mw, mu;
        diff = enum_measure(p->port, attempt, &mw, &mu);
        if (diff > ENUM_MAX_DIFF && attempt == 1)
            it_note("enumeration: medians %.1f %% apart, measuring again", diff * 100.0);
        IT_CHECK(diff <= ENUM_MAX_DIFF || attempt == 1,
                 "unknown-user and wrong-password medians differ by %.1f %% (%.1f vs %.1f ms)",
                 diff * 100.0, (double)mu / 1000.0, (double)mw / 1000.0);
    }
    it_liveness(p, pid, NULL, NULL, NULL, NULL);
    it_finish(p);
}

/* ---- 3. brute force: address ban, account backoff -------------------------------------------- */

static void test_brute_force(void **state)
{
    (void)state;
    /* ban: 3 failures within 10 s -> 1.5 s; backoff: 2 free failures, then 300 ms doubling */
    enum { BAN_MS = 1500, BACKOFF_MS = 300 };
    static const char *const args[] = {
        "--set", "addr_max_failures=3", "--set", "addr_window_ms=10s",
        "--set", "addr_ban_ms=1500",    "--set", "user_free_failures=2",
        "--set", "user_backoff_ms=300", "--set", "user_backoff_max_ms=5s",
        NULL};
    imd_proc *p = it_start_imd(args);
    long pid = (long)p->pid;
    tc_auth by, vi;
    tc_close(it_register(p->port, "bystander", "bystander password", &by));
    tc_close(it_register(p->port, "victim", "victim password", &vi));
    IT_CHECK(by.has_token && vi.has_token, "no resume tokens");
    uint32_t retry = 0;

    /* -- the address ban: 3 failures from 127.0.0.2 (unknown names: no account backoff) */
    tc *a = must_from("127.0.0.2", p->port);
    IT_EQ(auth_try(a, IMP_LOGIN, "ghost1", "guess one", NULL, &retry, NULL), 400);
    IT_EQ(auth_try(a, IMP_LOGIN, "ghost2", "guess two", NULL, &retry, NULL), 400);
    IT_EQ(auth_try(a, IMP_LOGIN, "ghost3", "guess three", NULL, &retry, NULL), 400);
    uint64_t t_ban = it_now_ms();
    /* the right password of another account from the banned address: BANNED (302), fatal */
    IT_EQ(auth_try(a, IMP_LOGIN, "bystander", "bystander password", NULL, &retry, NULL), 302);
    IT_CHECK(retry > 0 && retry <= BAN_MS, "BANNED RETRY_AFTER %u, want 1..%d", (unsigned)retry,
             BAN_MS);
    uint32_t ban_retry = retry;
    IT_EQ(it_expect_closed(a, T, 302, "banned address"), 302);
    own_close(a);
    /* a new connection from the banned address is welcomed (the ban is checked at the login),
     * and a correct password, a valid resume token and a REGISTER are all refused alike */
    a = must_from("127.0.0.2", p->port);
    IT_EQ(auth_try(a, IMP_LOGIN, "bystander", "bystander password", NULL, &retry, NULL), 302);
    IT_EQ(it_expect_closed(a, T, 302, "banned address, correct password"), 302);
    own_close(a);
    a = must_from("127.0.0.2", p->port);
    IT_EQ(auth_try(a, IMP_LOGIN, "bystander", NULL, &by, &retry, NULL), 302);
    IT_EQ(it_expect_closed(a, T, 302, "banned address, resume token"), 302);
    own_close(a);
    a = must_from("127.0.0.2", p->port);
    IT_EQ(auth_try(a, IMP_REGISTER, "newcomer", "newcomer password", NULL, &retry, NULL), 302);
    IT_EQ(it_expect_closed(a, T, 302, "banned address, REGISTER"), 302);
    own_close(a);
    /* other addresses are not affected: 127.0.0.3 logs in, and fails on its own count */
    tc *b = must_from("127.0.0.3", p->port);
    IT_EQ(auth_try(b, IMP_LOGIN, "ghost4", "guess four", NULL, &retry, NULL), 400);
    IT_EQ(auth_try(b, IMP_LOGIN, "bystander", "bystander password", NULL, &retry, NULL), 0);
    own_close(b);
    tc_close(it_login(p->port, "bystander", "bystander password", NULL)); /* 127.0.0.1 */
    /* the ban lifts after addr_ban_ms */
    uint64_t lift = t_ban + BAN_MS + 100;
    while (it_now_ms() < lift)
        it_sleep_ms(20);
    a = must_from("127.0.0.2", p->port);
    IT_EQ(auth_try(a, IMP_LOGIN, "bystander", "bystander password", NULL, &retry, NULL), 0);
    uint64_t banned_for = it_now_ms() - t_ban;
    own_close(a);
    it_note("brute force: 3 failures ban 127.0.0.2: BANNED (302, fatal, RETRY_AFTER %u ms) for "
            "the right password, a token and REGISTER; 127.0.0.3 unaffected; login works again "
            "%llu ms after the ban (addr_ban_ms %d)",
            (unsigned)ban_retry, (unsigned long long)banned_for, BAN_MS);

    /* -- the account backoff, across addresses: each failure from another address (none gets
     * near its ban), each check from yet another one */
    const char *const ad[] = {"127.0.0.4", "127.0.0.5", "127.0.0.6", "127.0.0.7", "127.0.0.8"};
    tc *c[5];
    for (int i = 0; i < 5; i++)
        c[i] = must_from(ad[i], p->port);
    IT_EQ(auth_try(c[0], IMP_LOGIN, "victim", "bad guess 1", NULL, &retry, NULL), 400);
    IT_EQ(auth_try(c[1], IMP_LOGIN, "victim", "bad guess 2", NULL, &retry, NULL), 400);
    /* 2 free failures used: the right password from a third address must wait */
    uint32_t r[3];
    IT_EQ(auth_try(c[2], IMP_LOGIN, "victim", "victim password", NULL, &r[0], NULL), 404);
    IT_CHECK(r[0] > 0 && r[0] <= BACKOFF_MS, "AUTH_BACKOFF RETRY_AFTER %u, want 1..%d",
             (unsigned)r[0], BACKOFF_MS);
    /* resume tokens are not subject to the account backoff (server/session.c: only the address
     * ban applies to them, so the account's own devices stay connected during an attack) */
    tc_auth tok_ok;
    IT_EQ(auth_try(c[4], IMP_LOGIN, "victim", NULL, &vi, &retry, &tok_ok), 0);
    IT_CHECK(strcmp(tok_ok.user, "victim") == 0, "token login as '%s'", tok_ok.user);
    own_close(c[4]);
    c[4] = must_from(ad[4], p->port);
    it_sleep_ms(r[0] + 60);
    IT_EQ(auth_try(c[2], IMP_LOGIN, "victim", "bad guess 3", NULL, &retry, NULL), 400);
    IT_EQ(auth_try(c[3], IMP_LOGIN, "victim", "victim password", NULL, &r[1], NULL), 404);
    IT_CHECK(r[1] > BACKOFF_MS && r[1] <= 2 * BACKOFF_MS,
             "second AUTH_BACKOFF RETRY_AFTER %u, want %d..%d (doubled)", (unsigned)r[1],
             BACKOFF_MS + 1, 2 * BACKOFF_MS);
    it_sleep_ms(r[1] + 60);
    IT_EQ(auth_try(c[3], IMP_LOGIN, "victim", "bad guess 4", NULL, &retry, NULL), 400);
    IT_EQ(auth_try(c[4], IMP_LOGIN, "victim", "victim password", NULL, &r[2], NULL), 404);
    IT_CHECK(r[2] > 2 * BACKOFF_MS && r[2] <= 4 * BACKOFF_MS,
             "third AUTH_BACKOFF RETRY_AFTER %u, want %d..%d (doubled)", (unsigned)r[2],
             2 * BACKOFF_MS + 1, 4 * BACKOFF_MS);
    /* the backoff is the account's: another account logs in from the same address at once */
    tc *d = must_from(ad[4], p->port);
    IT_EQ(auth_try(d, IMP_LOGIN, "bystander", "bystander password", NULL, &retry, NULL), 0);
    own_close(d);
    /* after the wait the right password works and clears the count: one failure is free
     * again */
    it_sleep_ms(r[2] + 60);
    IT_EQ(auth_try(c[4], IMP_LOGIN, "victim", "victim password", NULL, &retry, NULL), 0);
    d = must_from(ad[4], p->port);
    IT_EQ(auth_try(d, IMP_LOGIN, "victim", "bad guess 5", NULL, &retry, NULL), 400);
    IT_EQ(auth_try(d, IMP_LOGIN, "victim", "victim password", NULL, &retry, NULL), 0);
    own_close(d);
    for (int i = 0; i < 5; i++)
        own_close(c[i]);
    it_note("brute force: account backoff across 5 addresses: RETRY_AFTER %u, %u, %u ms after "
            "failures 2, 3, 4 (user_backoff_ms %d, doubling); tokens and other accounts not "
            "affected; cleared by a success",
            (unsigned)r[0], (unsigned)r[1], (unsigned)r[2], BACKOFF_MS);
    it_liveness(p, pid, NULL, NULL, NULL, NULL);
    it_finish(p);
}

/* ---- 4. hash flood --------------------------------------------------------------------------- */

#define FLOOD_N 500
#define FLOOD_WORKERS 2
#define FLOOD_QUEUE 8
#define FLOOD_ADDRS 5

static void test_hash_flood(void **state)
{
    (void)state;
    raise_nofile();
    /* the default Argon2id parameters; an administrator (for STATS) made before the start */
    static const char *const args[] = {
        "--set",        "hash_threads=2", "--set",
        "hash_queue=8", "--set",          "max_sessions_per_user=1000",
        "--log-level",  "info",           NULL};
    imd_proc *p = imd_create(args);
    IT_CHECK(p != NULL, "imd_create");
    static const char *const add[] = {"user", "add", "boss", "--admin", NULL};
    IT_EQ(it_admin(p, "boss password\n", NULL, 0, add), 0);
    it_start(p);
    long pid = (long)p->pid;
    tc *boss = it_login(p->port, "boss", "boss password", NULL);
    tc_close(it_register(p->port, "flood", "flood password", NULL));
    tc *pinger = it_register(p->port, "pinger", "pinger password", NULL);
    long long busy0 = it_stat(boss, "hash_busy");
    long long rmax0 = it_stat(boss, "hash_running_max");
    IT_CHECK(busy0 >= 0 && rmax0 >= 0, "STATS lacks hash_busy (%lld) or hash_running_max (%lld)",
             busy0, rmax0);

    /* 500 connections over 5 addresses, all welcomed first */
    rconn *rc = rc_alloc(FLOOD_N);
    uint8_t hello[128], login[256];
    size_t hl = encode_hello(hello, sizeof hello);
    const uint32_t rid = 7;
    size_t ll = encode_login(login, sizeof login, rid, "flood", "flood password");
    char src[32];
    for (int i = 0; i < FLOOD_N; i++) {
        snprintf(src, sizeof src, "127.0.0.%d", 2 + i % FLOOD_ADDRS);
        rc[i].fd = sock_from(src, p->port, T);
        IT_CHECK(rc[i].fd >= 0, "connection %d from %s", i, src);
        rc[i].t_conn = it_now_ms();
        IT_EQ(rc_write(&rc[i], hello, hl), 0);
    }
    uint64_t end = it_now_ms() + 20000;
    int welcomed = 0;
    while (welcomed < FLOOD_N && it_now_ms() < end) {
        rc_pump(rc, FLOOD_N, 50, 0);
        welcomed = 0;
        for (int i = 0; i < FLOOD_N; i++)
            welcomed += rc[i].welcome;
    }
    IT_EQ(welcomed, FLOOD_N);

    /* a logged-in client PINGs every 10 ms meanwhile (its own thread) */
    probe_start(pinger, NULL, NULL, 10);
    it_sleep_ms(100);
    uint64_t t0 = it_now_ms();
    for (int i = 0; i < FLOOD_N; i++) {
        rc[i].t_req = now_us();
        IT_EQ(rc_write(&rc[i], login, ll), 0);
    }
    uint64_t t_sent = it_now_ms() - t0;
    int answered = 0;
    end = it_now_ms() + 60000;
    while (answered < FLOOD_N && it_now_ms() < end) {
        rc_pump(rc, FLOOD_N, 50, rid);
        answered = 0;
        for (int i = 0; i < FLOOD_N; i++)
            answered += rc[i].reply != 0 || rc[i].fd < 0;
    }
    uint64_t t_all = it_now_ms() - t0;
    it_sleep_ms(100);
    probe_stop();
    IT_CHECK(!g_probe.failed, "pinger: %s", g_probe.why);

    int ok = 0, busy = 0, other = 0, closed = 0, busy_no_retry = 0;
    uint32_t busy_retry = 0;
    static uint64_t busy_lat[FLOOD_N], ok_lat[FLOOD_N];
    size_t nb = 0, no = 0;
    for (int i = 0; i < FLOOD_N; i++) {
        if (rc[i].reply == IMP_AUTH_OK) {
            ok++;
            ok_lat[no++] = rc[i].t_reply - rc[i].t_req;
        } else if (rc[i].reply == IMP_ERROR && rc[i].code == 507) {
            busy++;
            busy_lat[nb++] = rc[i].t_reply - rc[i].t_req;
            if (rc[i].retry == 0)
                busy_no_retry++;
            busy_retry = rc[i].retry;
        } else if (rc[i].reply) {
            other++;
        } else {
            closed++;
        }
    }
    long long busy1 = it_stat(boss, "hash_busy");
    long long rmax = it_stat(boss, "hash_running_max");
    size_t np = g_probe.n;
    uint64_t pong50 = pct(g_probe.lat_us, np, 0.5), pong99 = pct(g_probe.lat_us, np, 0.99),
             pongmax = np ? g_probe.lat_us[np - 1] : 0;
    uint64_t b50 = pct(busy_lat, nb, 0.5), b99 = pct(busy_lat, nb, 0.99),
             bmax = nb ? busy_lat[nb - 1] : 0;
    uint64_t o50 = pct(ok_lat, no, 0.5), omax = no ? ok_lat[no - 1] : 0;
    it_note("hash flood: %d LOGINs (written in %llu ms, all answered in %llu ms), %d hash "
            "workers, queue %d: %d AUTH_OK, %d BUSY, %d other, %d unanswered",
            FLOOD_N, (unsigned long long)t_sent, (unsigned long long)t_all, FLOOD_WORKERS,
            FLOOD_QUEUE, ok, busy, other, closed);
    it_note("hash flood: BUSY after p50 %.2f ms, p99 %.2f ms, max %.2f ms (RETRY_AFTER %u ms); "
            "AUTH_OK after p50 %.1f ms, max %.1f ms",
            (double)b50 / 1000.0, (double)b99 / 1000.0, (double)bmax / 1000.0, (unsigned)busy_retry,
            (double)o50 / 1000.0, (double)omax / 1000.0);
    it_note("hash flood: STATS hash_running_max %lld (workers %d), hash_busy +%lld; %zu PINGs "
            "every 10 ms: PONG p50 %.2f ms, p99 %.2f ms, max %.2f ms",
            rmax, FLOOD_WORKERS, busy1 - busy0, np, (double)pong50 / 1000.0,
            (double)pong99 / 1000.0, (double)pongmax / 1000.0);
    IT_EQ(other, 0);
    IT_EQ(closed, 0);
    IT_EQ(ok + busy, FLOOD_N);
    IT_CHECK(ok >= FLOOD_QUEUE, "only %d AUTH_OK: the first %d jobs fit the queue", ok,
             FLOOD_QUEUE);
    IT_CHECK(busy > 0, "no BUSY with %d logins and a queue of %d", FLOOD_N, FLOOD_QUEUE);
    IT_EQ(busy_no_retry, 0);
    IT_EQ(busy1 - busy0, busy);
    IT_CHECK(rmax >= 1 && rmax <= FLOOD_WORKERS, "hash_running_max %lld with %d workers", rmax,
             FLOOD_WORKERS);
    IT_CHECK(bmax < 1000000, "a BUSY answer took %.1f ms (want at once, < 1 s)",
             (double)bmax / 1000.0);
    IT_CHECK(np >= 10, "only %zu PINGs during the flood", np);
    IT_CHECK(pongmax < 500000, "a PONG took %.1f ms during the flood (want < 500 ms)",
             (double)pongmax / 1000.0);
    rc_free_all();
    tc_close(pinger);
    tc_close(boss);
    it_liveness(p, pid, NULL, NULL, NULL, NULL);
    it_finish(p);
}

/* ---- 5. slowloris ---------------------------------------------------------------------------- */

#define SLOW_N 1000
#define SLOW_ADDRS 10
#define SLOW_DEADLINE_MS 2000
#define SLOW_TRICKLE_MS 200

static void test_slowloris(void **state)
{
    (void)state;
    long nofile = raise_nofile();
    IT_CHECK(nofile > SLOW_N + 100, "RLIMIT_NOFILE %ld is too low for %d connections", nofile,
             SLOW_N);
    static const char *const args[] = {"--set", "auth_timeout_ms=2000", "--log-level", "info",
                                       NULL};
    imd_proc *p = it_start_imd(args);
    long pid = (long)p->pid;
    tc_auth aa;
    tc *a = it_register(p->port, "loris_a", "loris_a password", &aa);
    tc *b = it_register(p->port, "loris_b", "loris_b password", NULL);
    it_sleep_ms(100);
    int base = it_fd_count((pid_t)pid);
    IT_CHECK(base > 0, "cannot count imd's descriptors");

    /* the script each connection trickles: HELLO then LOGIN, one byte every 200 ms (the HELLO
     * alone is more than 10 bytes, so nothing completes before the deadline) */
    uint8_t script[512];
    size_t sl = encode_hello(script, sizeof script);
    sl += encode_login(script + sl, sizeof script - sl, 1, "loris_a", "loris_a password");
    IT_CHECK(sl * SLOW_TRICKLE_MS > SLOW_DEADLINE_MS + 1500, "script of %zu bytes too short", sl);

    probe_start(a, b, "loris_b", 5);
    rconn *rc = rc_alloc(SLOW_N);
    char src[32];
    uint64_t t_start = it_now_ms();
    for (int i = 0; i < SLOW_N; i++) {
        snprintf(src, sizeof src, "127.0.0.%d", 2 + i % SLOW_ADDRS);
        rc[i].fd = sock_from(src, p->port, T);
        IT_CHECK(rc[i].fd >= 0, "connection %d from %s", i, src);
        rc[i].t_conn = it_now_ms();
        rc_write(&rc[i], script, 1);
        rc[i].sent = 1;
    }
    uint64_t t_opened = it_now_ms() - t_start;
    int peak = it_fd_count((pid_t)pid);
    /* trickle until every connection is closed (bounded) */
    uint64_t end = it_now_ms() + SLOW_DEADLINE_MS + 1500 + 3000 + t_opened;
    uint64_t next = it_now_ms() + SLOW_TRICKLE_MS;
    int open_n = SLOW_N;
    while (open_n > 0 && it_now_ms() < end) {
        uint64_t now = it_now_ms();
        if (now >= next) {
            for (int i = 0; i < SLOW_N; i++)
                if (rc[i].fd >= 0 && rc[i].sent < sl) {
                    rc_write(&rc[i], script + rc[i].sent, 1);
                    rc[i].sent++;
                }
            next += SLOW_TRICKLE_MS;
            int f = it_fd_count((pid_t)pid);
            if (f > peak)
                peak = f;
            continue;
        }
        rc_pump(rc, SLOW_N, (int)(next - now), 0);
        open_n = 0;
        for (int i = 0; i < SLOW_N; i++)
            open_n += rc[i].fd >= 0;
    }
    probe_stop();
    IT_CHECK(!g_probe.failed, "normal client: %s", g_probe.why);

    static uint64_t lived[SLOW_N];
    int got600 = 0, late = 0, early = 0, worst = 0;
    size_t maxbytes = 0;
    for (int i = 0; i < SLOW_N; i++) {
        lived[i] = rc[i].t_close ? rc[i].t_close - rc[i].t_conn : UINT64_MAX;
        if (lived[i] > SLOW_DEADLINE_MS + 1500)
            late++;
        if (lived[i] < SLOW_DEADLINE_MS - 50)
            early++;
        if (lived[i] > lived[worst])
            worst = i;
        got600 += rc[i].last_error == 600;
        if (rc[i].sent > maxbytes)
            maxbytes = rc[i].sent;
    }
    uint64_t worst_lived = lived[worst];
    uint64_t l0 = pct(lived, SLOW_N, 0.0), l50 = pct(lived, SLOW_N, 0.5),
             l90 = pct(lived, SLOW_N, 0.9), l99 = pct(lived, SLOW_N, 0.99);
    size_t np = g_probe.n;
    uint64_t r50 = pct(g_probe.lat_us, np, 0.5), r99 = pct(g_probe.lat_us, np, 0.99),
             rmax = np ? g_probe.lat_us[np - 1] : 0;
    int after = wait_fds((pid_t)pid, base, 5000);
    it_note("slowloris: %d connections from %d addresses opened in %llu ms, 1 byte every %d ms "
            "(at most %zu of %zu bytes sent); imd descriptors %d -> peak %d -> %d",
            SLOW_N, SLOW_ADDRS, (unsigned long long)t_opened, SLOW_TRICKLE_MS, maxbytes, sl, base,
            peak, after);
    it_note("slowloris: closed after (ms from connect) min %llu, p50 %llu, p90 %llu, p99 %llu, "
            "max %llu (deadline %d ms); %d with ERROR AUTH_TIMEOUT first",
            (unsigned long long)l0, (unsigned long long)l50, (unsigned long long)l90,
            (unsigned long long)l99, (unsigned long long)worst_lived, SLOW_DEADLINE_MS, got600);
    it_note("slowloris: normal client meanwhile: %zu message round trips (SEND -> DELIVER): "
            "p50 %.2f ms, p99 %.2f ms, max %.2f ms",
            np, (double)r50 / 1000.0, (double)r99 / 1000.0, (double)rmax / 1000.0);
    IT_CHECK(late == 0, "%d connections lived longer than %d ms (worst: %d, %llu ms, open %d)",
             late, SLOW_DEADLINE_MS + 1500, worst, (unsigned long long)worst_lived,
             rc[worst].fd >= 0);
    IT_CHECK(early == 0, "%d connections closed before the %d ms deadline", early,
             SLOW_DEADLINE_MS);
    /* IMP-TIME-001: they failed with AUTH_TIMEOUT, bytes received did not extend the deadline */
    IT_EQ(got600, SLOW_N);
    IT_CHECK(np >= 10, "only %zu round trips", np);
    IT_CHECK(r99 < 250000, "round trip p99 %.1f ms during the slowloris (want < 250 ms)",
             (double)r99 / 1000.0);
    IT_EQ(after, base);
    /* the normal sessions are still there */
    IT_CHECK(!a->eof && !b->eof, "a normal session was closed");
    rc_free_all();
    tc_close(a);
    tc_close(b);
    it_liveness(p, pid, NULL, NULL, NULL, NULL);
    it_finish(p);
}

/* ---- 6. connection caps ---------------------------------------------------------------------- */

#define CAP_TOTAL 50
#define CAP_PER_ADDR 10
#define CAP_ADDRS 6 /* 5 fill the total, the 6th only meets the total cap */
#define CAP_ROUNDS 20
#define CAP_SLOTS (CAP_ADDRS * (CAP_PER_ADDR + 2))

typedef struct capslot {
    tc *c;
    int addr;
    int session; /* logged in */
} capslot;

/* Opens one raw connection from address ai and sends HELLO: 1 welcomed (kept in h), 0 refused
 * with ERROR SERVER_FULL then closed (*text: its TEXT). */
static int cap_open(int port, int ai, capslot *h, char *text, size_t tl)
{
    char src[32];
    snprintf(src, sizeof src, "127.0.0.%d", 1 + ai);
    tc *c = tc_from(src, port, 1);
    IT_CHECK(c != NULL, "connect from %s", src);
    imp_msg m;
    imp_msg_init(&m, IMP_HELLO, 0);
    imp_msg_set_u(&m, IMP_T_VERSION_MIN, 1);
    imp_msg_set_u(&m, IMP_T_VERSION_MAX, 1);
    IT_CHECK(tc_request(c, &m) != 0, "HELLO");
    tc_frame *f = tc_wait(c, 0, 0, T);
    char d[512];
    IT_CHECK(f != NULL, "from %s: neither WELCOME nor ERROR: %s", src, tc_describe(c, d, sizeof d));
    if (f->m.type == IMP_WELCOME) {
        tc_frame_free(f);
        h->c = c;
        h->addr = ai;
        h->session = 0;
        return 1;
    }
    IT_CHECK(f->m.type == IMP_ERROR, "from %s: %s before WELCOME", src, imp_type_name(f->m.type));
    IT_EQ(imp_msg_u(&f->m, IMP_T_CODE, 0), 301);
    tc_str(&f->m, IMP_T_TEXT, text, tl);
    tc_frame_free(f);
    IT_EQ(it_expect_closed(c, T, 0, "refused connection"), 301);
    own_close(c);
    return 0;
}

/* Frees h's slot, in one of four ways; returns after the server has closed its end, except for
 * the abrupt close (the caller waits for the descriptor count). */
static void cap_free(capslot *h, int how)
{
    tc *c = h->c;
    if (how == 1 && !h->session)
        how = 0;
    switch (how) {
    case 0: /* half-close: the server reads EOF and closes */
        shutdown(c->fd, SHUT_WR);
        IT_CHECK(tc_expect_close(c, T, NULL), "no close after our FIN");
        break;
    case 1: { /* LOGOUT: OK, then the server closes */
        uint32_t req = tc_simple(c, IMP_LOGOUT);
        IT_CHECK(req != 0, "LOGOUT");
        tc_frame *f = tc_wait_reply(c, req, T);
        IT_CHECK(f != NULL && f->m.type == IMP_OK, "LOGOUT not answered by OK");
        tc_frame_free(f);
        IT_CHECK(tc_expect_close(c, T, NULL), "no close after LOGOUT");
        break;
    }
    case 2: { /* abrupt: RST */
        struct linger lg = {1, 0};
        setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
        break;
    }
    default: { /* garbage: the server closes with a protocol error */
        static const uint8_t junk[16] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                                         0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
        tc_send_raw(c, junk, sizeof junk, T);
        int code = 0;
        IT_CHECK(tc_expect_close(c, T, &code), "no close after garbage");
        IT_CHECK(code >= 700 && code < 800, "garbage closed with ERROR %d, want 7xx", code);
        break;
    }
    }
    own_close(c);
    h->c = NULL;
    h->session = 0;
}

static void test_connection_caps(void **state)
{
    (void)state;
    static const char *const args[] = {
        "--set", "max_connections=50",         "--set", "max_connections_per_addr=10",
        "--set", "max_sessions_per_user=1000", NULL};
    imd_proc *p = it_start_imd(args);
    long pid = (long)p->pid;
    tc_close(it_register(p->port, "capper", "capper password", NULL));
    it_sleep_ms(100);
    int base = it_fd_count((pid_t)pid);
    static capslot h[CAP_SLOTS];
    memset(h, 0, sizeof h);
    int nh = 0;
    char text[128], text_addr[128] = "", text_total[128] = "";

    /* fill: 10 from each of 127.0.0.1-5; the 11th from each refused (per address); then
     * 127.0.0.6 refused (total) */
    int admitted[CAP_ADDRS] = {0};
    for (int ai = 0; ai < CAP_ADDRS; ai++) {
        for (int k = 0; k < CAP_PER_ADDR + 2; k++) {
            if (!cap_open(p->port, ai, &h[nh], text, sizeof text)) {
                if (ai == 0) /* 127.0.0.1 full, 10 of 50 in total */
                    snprintf(text_addr, sizeof text_addr, "%s", text);
                if (ai == CAP_ADDRS - 1) /* 127.0.0.6 empty, 50 of 50 in total */
                    snprintf(text_total, sizeof text_total, "%s", text);
                break;
            }
            nh++;
            admitted[ai]++;
        }
    }
    for (int ai = 0; ai < CAP_ADDRS - 1; ai++)
        IT_EQ(admitted[ai], CAP_PER_ADDR);
    IT_EQ(admitted[CAP_ADDRS - 1], 0);
    IT_EQ(nh, CAP_TOTAL);
    it_note("caps: SERVER_FULL (301) \"%s\" from a full address, \"%s\" when all %d are taken",
            text_addr, text_total, CAP_TOTAL);
    IT_EQ(wait_fds((pid_t)pid, base + CAP_TOTAL, T), base + CAP_TOTAL);
    /* two sessions per address */
    for (int i = 0; i < nh; i++)
        if (i % CAP_PER_ADDR < 2) {
            IT_EQ(tc_login(h[i].c, "capper", "capper password", UINT64_MAX, NULL, T), 0);
            h[i].session = 1;
        }

    /* rounds: free k slots (four ways), refill address by address until refused */
    unsigned seed = 12345;
    int total_freed = 0, refusals = 0;
    for (int round = 0; round < CAP_ROUNDS; round++) {
        int k = 1 + (round * 7) % 9;
        int freed[CAP_ADDRS] = {0};
        for (int j = 0; j < k; j++) {
            int i;
            do {
                seed = seed * 1103515245u + 12345u;
                i = (int)((seed >> 8) % (unsigned)nh);
            } while (!h[i].c);
            freed[h[i].addr]++;
            cap_free(&h[i], (round + j) % 4);
        }
        total_freed += k;
        /* the server has closed them all (the abrupt ones asynchronously) */
        int fds = wait_fds((pid_t)pid, base + CAP_TOTAL - k, T);
        IT_CHECK(fds == base + CAP_TOTAL - k, "round %d: %d descriptors after freeing %d, want %d",
                 round, fds, k, base + CAP_TOTAL - k);
        int got = 0;
        for (int ai = 0; ai < CAP_ADDRS; ai++) {
            int n_ai = 0;
            for (int t = 0; t < CAP_PER_ADDR + 2; t++) {
                int slot = 0;
                while (slot < nh && h[slot].c)
                    slot++;
                if (slot == nh) {
                    IT_CHECK(nh < CAP_SLOTS, "too many slots");
                    nh++;
                }
                if (!cap_open(p->port, ai, &h[slot], text, sizeof text)) {
                    refusals++;
                    break;
                }
                n_ai++;
                if (t == 0 && round % 3 == 0) {
                    IT_EQ(tc_login(h[slot].c, "capper", "capper password", UINT64_MAX, NULL, T), 0);
                    h[slot].session = 1;
                }
            }
            IT_CHECK(n_ai == freed[ai], "round %d: address %d regained %d slots, %d were freed",
                     round, ai + 1, n_ai, freed[ai]);
            got += n_ai;
        }
        IT_EQ(got, k);
    }
    int fds = wait_fds((pid_t)pid, base + CAP_TOTAL, T);
    IT_EQ(fds, base + CAP_TOTAL);

    /* everything closed: the descriptors come back to the baseline; a full refill admits 50 */
    for (int i = 0; i < nh; i++)
        if (h[i].c)
            cap_free(&h[i], 2);
    int after = wait_fds((pid_t)pid, base, T);
    IT_EQ(after, base);
    int refill = 0;
    nh = 0;
    for (int ai = 0; ai < CAP_ADDRS; ai++)
        for (int k = 0; k < CAP_PER_ADDR + 2; k++) {
            if (!cap_open(p->port, ai, &h[nh], text, sizeof text))
                break;
            nh++;
            refill++;
        }
    IT_EQ(refill, CAP_TOTAL);
    for (int i = 0; i < nh; i++)
        cap_free(&h[i], 0);
    int last = wait_fds((pid_t)pid, base, T);
    it_note("caps: %d rounds, %d slots freed (half-close, LOGOUT, RST, garbage) and exactly as "
            "many regained, %d refusals; full refill %d of %d; imd descriptors %d at rest, %d "
            "full, %d at the end",
            CAP_ROUNDS, total_freed, refusals, refill, CAP_TOTAL, base, base + CAP_TOTAL, last);
    IT_EQ(last, base);
    it_liveness(p, pid, NULL, NULL, NULL, NULL);
    it_finish(p);
}

/* ---- 7. EMFILE: repeated exhaustion and recovery --------------------------------------------- */

#define EM_LIMIT 64
#define EM_CONNS 100
#define EM_CYCLES 2

static void round_trip(tc *from, tc *to, const char *to_name, const char *what)
{
    char body[64];
    snprintf(body, sizeof body, "%s %llu", what, (unsigned long long)it_now_ms());
    tc_ack ack;
    IT_EQ(tc_send_text(from, to_name, NULL, body, &ack), 0);
    IT_EQ(ack.outcome, IMP_OUTCOME_STORED);
    uint64_t end = it_now_ms() + T;
    int got = 0;
    while (!got && it_now_ms() < end) {
        tc_frame *d = tc_wait(to, IMP_DELIVER, 0, 200);
        if (!d)
            continue;
        got = imp_msg_u(&d->m, IMP_T_MSG_ID, 0) == ack.msg_id;
        uint64_t seq = imp_msg_u(&d->m, IMP_T_SEQ, 0);
        if (seq)
            tc_delivered(to, seq);
        tc_frame_free(d);
    }
    IT_CHECK(got, "%s: message not delivered", what);
}

static void test_emfile_recovery(void **state)
{
    (void)state;
    /* imd under `ulimit -n 64`, through a wrapper that execs it (the same PID) */
    char bin[1024];
    snprintf(bin, sizeof bin, "%s", imd_binary());
    const char *old_env = getenv("IMD");
    char old_imd[1024] = "";
    if (old_env)
        snprintf(old_imd, sizeof old_imd, "%s", old_env);
    const char *tmpdir = getenv("TMPDIR");
    char wrap[512];
    snprintf(wrap, sizeof wrap, "%s/imd-sec-wrap-%ld.sh", tmpdir && *tmpdir ? tmpdir : "/tmp",
             (long)getpid());
    FILE *f = fopen(wrap, "w");
    IT_CHECK(f != NULL, "cannot write %s", wrap);
    fprintf(f, "#!/bin/sh\nulimit -n %d || exit 126\nexec '%s' \"$@\"\n", EM_LIMIT, bin);
    fclose(f);
    chmod(wrap, 0700);
    setenv("IMD", wrap, 1);
    static const char *const args[] = {"--set", "hash_opslimit=1", "--set", "hash_memlimit=8m",
                                       NULL};
    imd_proc *p = imd_new(args);
    if (old_env)
        setenv("IMD", old_imd, 1);
    else
        unsetenv("IMD");
    unlink(wrap);
    IT_CHECK(p != NULL, "imd did not start under ulimit -n %d", EM_LIMIT);
    long pid = (long)p->pid;

    /* two sessions opened before the descriptors run out */
    tc *held = it_register(p->port, "emholder", "emholder password", NULL);
    tc *mate = it_register(p->port, "emmate", "emmate password", NULL);
    it_sleep_ms(100);
    int base = it_fd_count((pid_t)pid);

    static tc *conns[EM_CONNS];
    uint8_t hello[128];
    size_t hl = encode_hello(hello, sizeof hello);
    for (int cycle = 0; cycle < EM_CYCLES; cycle++) {
        for (int i = 0; i < EM_CONNS; i++) {
            conns[i] = tc_connect_raw(p->port, T, 0);
            IT_CHECK(conns[i] != NULL, "cycle %d: connect %d (the backlog takes it)", cycle, i);
            tc_send_raw(conns[i], hello, hl, 100);
        }
        uint64_t end = it_now_ms() + 1000;
        while (it_now_ms() < end) {
            for (int i = 0; i < EM_CONNS; i++)
                tc_pump(conns[i], 0);
            it_sleep_ms(20);
        }
        int welcomed = 0;
        for (int i = 0; i < EM_CONNS; i++)
            welcomed += tc_queued(conns[i], IMP_WELCOME) > 0;
        IT_CHECK(welcomed < EM_CONNS, "cycle %d: all %d accepted under ulimit -n %d", cycle,
                 EM_CONNS, EM_LIMIT);
        int fds_full = it_fd_count((pid_t)pid);

        /* exhausted for 2 s: the CPU imd uses; the sessions it has still exchange messages */
        double c0 = cpu_seconds((pid_t)pid);
        uint64_t t0 = it_now_ms();
        int trips = 0;
        while (it_now_ms() - t0 < 2000) {
            round_trip(held, mate, "emmate", "exhausted");
            trips++;
            it_sleep_ms(100);
        }
        double c1 = cpu_seconds((pid_t)pid);
        double secs = (double)(it_now_ms() - t0) / 1000.0;
        IT_CHECK(c0 >= 0 && c1 >= 0, "cannot read /proc/%ld/stat", pid);
        double rate = (c1 - c0) / secs;

        /* free the accepted ones; those still waiting in the backlog must all be served
         * (WELCOME) or shed (closed), none left hanging */
        int waiting = 0, shed = 0;
        for (int i = 0; i < EM_CONNS; i++) {
            tc_pump(conns[i], 0);
            if (tc_queued(conns[i], IMP_WELCOME)) {
                tc_close(conns[i]);
                conns[i] = NULL;
            } else if (conns[i]->eof) {
                shed++;
            } else {
                waiting++;
            }
        }
        int served_late = 0, shed_late = 0, hanging = 0;
        end = it_now_ms() + T;
        for (;;) {
            served_late = shed_late = hanging = 0;
            for (int i = 0; i < EM_CONNS; i++) {
                if (!conns[i])
                    continue;
                tc_pump(conns[i], 0);
                if (tc_queued(conns[i], IMP_WELCOME))
                    served_late++;
                else if (conns[i]->eof)
                    shed_late++;
                else
                    hanging++;
            }
            if (hanging == 0 || it_now_ms() >= end)
                break;
            it_sleep_ms(20);
        }
        /* new registrations, logins and messages work */
        char name[40];
        it_name(name, sizeof name, "emnew");
        tc *n1 = it_register(p->port, name, "emnew password", NULL);
        tc *n2 = it_login(p->port, "emholder", "emholder password", NULL);
        round_trip(n1, mate, "emmate", "recovered");
        round_trip(held, mate, "emmate", "held");
        tc_close(n1);
        tc_close(n2);
        for (int i = 0; i < EM_CONNS; i++)
            if (conns[i]) {
                tc_close(conns[i]);
                conns[i] = NULL;
            }
        int fds_after = wait_fds((pid_t)pid, base, T);
        it_note("EMFILE cycle %d (ulimit -n %d, %d connections): %d accepted (imd at %d "
                "descriptors), %d shed, %d waiting; CPU %.3f s in %.2f s exhausted (%.3f s/s), "
                "%d message round trips meanwhile",
                cycle + 1, EM_LIMIT, EM_CONNS, welcomed, fds_full, shed, waiting, c1 - c0, secs,
                rate, trips);
        it_note("EMFILE cycle %d: after freeing: of %d waiting %d served, %d shed, %d hanging; "
                "register + login + messages work; descriptors back to %d (baseline %d)",
                cycle + 1, waiting, served_late, shed_late - shed, hanging, fds_after, base);
        IT_CHECK(rate < 0.3, "cycle %d: imd used %.2f s CPU per second with descriptors exhausted",
                 cycle + 1, rate);
        IT_EQ(hanging, 0);
        IT_EQ(fds_after, base);
    }
    tc_close(held);
    tc_close(mate);
    it_liveness(p, pid, NULL, NULL, NULL, NULL);
    it_finish(p);
}

int main(void)
{
    it_main_init(240);
    if (!it_imd_or_skip())
        return 1;
    /* IMP_ITEST_ONLY=pattern runs only the matching tests (cmocka's filter, e.g. "*flood*") */
    const char *only = getenv("IMP_ITEST_ONLY");
    if (only && *only)
        cmocka_set_test_filter(only);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_password_storage, sec_teardown),
        cmocka_unit_test_teardown(test_no_enumeration, sec_teardown),
        cmocka_unit_test_teardown(test_brute_force, sec_teardown),
        cmocka_unit_test_teardown(test_hash_flood, sec_teardown),
        cmocka_unit_test_teardown(test_slowloris, sec_teardown),
        cmocka_unit_test_teardown(test_connection_caps, sec_teardown),
        cmocka_unit_test_teardown(test_emfile_recovery, sec_teardown),
    };
    return cmocka_run_group_tests_name("integration: security", tests, NULL, NULL);
}
