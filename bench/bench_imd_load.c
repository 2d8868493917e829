/* imd load client: a single-threaded epoll client on libimp that drives a running imd over
 * loopback and prints one result line per run, `imd_load scenario=NAME key=value ...`.
 *
 * Design. Every connection is non-blocking, level-triggered in one epoll set. Each one has an
 * imp_conn (client role) that does the handshake (HELLO -> WELCOME), authentication (REGISTER or
 * LOGIN -> AUTH_OK), JOIN, PING and every decode: all received bytes go through imp_conn_feed /
 * imp_conn_next_event, so every DELIVER and ACK is fully validated by the library. Output goes
 * through a per-connection buffer: the library's pending output (HELLO, REGISTER, automatic
 * PONGs, DELIVERED) is moved into it first, then hot-path SEND frames are appended from a
 * template the library encoded once (imp_msg_encode) with the request id and the body (intended
 * send time, sender, sequence, actual send time) patched in place, so sending costs a memcpy.
 * SENDs carry no CLIENT_MSG_ID (no dedupe lookup) unless --cmid (a unique 16-character id per
 * SEND, patched in place like the body: imd then checks and keeps it for dedupe), and ACK_MODE 1
 * (stored). Accounts
 * are prepared up front on the measured connections themselves (REGISTER, or LOGIN when the
 * account exists), at most --auth-inflight (default 32) connections opening at a time so that
 * none hits imd's authentication deadline and the hash queue is not overrun (BUSY is retried).
 *
 * Scenarios (the names of accounts are PREFIX plus s<i>/r<i>, m<i> or u<i>):
 *   direct   --conns N senders s<i> -> N receivers r<i> (sender i to receiver i), each sender
 *            keeps --window SENDs without ACK in flight; --class transient|durable. Receivers
 *            count DELIVERs (durable: DELIVERED(highest SEQ) after each read). Result: delivered
 *            messages/s over --secs after --warmup.
 *   room     --conns M members join one room; the first --senders of them send room messages
 *            (window --window each). Result: deliveries/s counted at all members.
 *   latency  --conns N senders -> N receivers, --rate R messages/s in total, open loop: message
 *            k is due at t0 + k/R (sender k mod N) and carries that intended time (CLOCK_MONOTONIC
 *            ns) in its body; the receiver's latency is arrival - intended, so a late send counts
 *            against the server and the client alike (coordinated omission corrected). The loop
 *            polls when the next send is due within 300 us (so at 10,000/s it spins: its CPU
 *            shows ~100%); send_lag_* reports how late the client itself sent (its own
 *            timing error, which the latencies include); act_* are the same latencies measured
 *            from when the SEND was actually written (without that lag: not corrected for
 *            coordinated omission, for comparison only). Warm-up samples are dropped; messages
 *            still in flight at the end are waited for (1 s) and counted. --dump FILE writes
 *            every sample (intended time, latency, latency from actual send, receiver).
 *   jitter   no imd: spins for --secs reading CLOCK_MONOTONIC and reports the gaps (time the
 *            process did not run: hypervisor or scheduler preemption). A floor for latency.
 *   prepare  register --conns N accounts u<i> and disconnect (setup for idle and login).
 *   idle     --conns N connections log in (or register) and stay idle; imd's VmRSS (--pid) before
 *            the first connection and after all are logged in (+2 s): per_conn_bytes = delta/N;
 *            then closes them all and reports VmRSS 2 s later (rss_after_close_kb).
 *   login    one connection logs in first and PINGs every --ping-us (1000) microseconds (timerfd)
 *            recording every PONG delay (1 s of that without load: idle_pong_*); then N
 *            connections LOGIN to existing accounts u<i> (--auth-inflight at a time, always
 *            LOGIN: a REGISTER of an existing name counts as an address failure in imd).
 *            Result: logins/s, total time, worst and p99 PONG delay (event-loop stall seen from
 *            the client). Bounded by --secs (the result says complete=0 if not all logged in).
 *
 * CPU: imd's (--pid, utime+stime from /proc/PID/stat, all threads) and this process's
 * (getrusage) over the measured interval, in % of one core; cpu0/cpu1_busy_pct from /proc/stat,
 * and other_cpu_pct = their sum minus imd and client: other work on the machine (noise).
 *
 * Source addresses rotate over 127.0.0.1..127.0.0.K (--srcs, default 1) with
 * IP_BIND_ADDRESS_NO_PORT, for runs that would exhaust the ephemeral ports of one address.
 *
 * Run without arguments it prints its usage and exits 0 (so `make bench` stays quick): the imd
 * benchmarks are run by bench/run-imd, which starts imd per scenario and calls this program.
 * Exit status: 0 when the run completed (whatever the numbers), 1 when something failed (imd
 * not reachable, a connection lost, setup not finished in time), 2 on a usage error.
 */
#define _GNU_SOURCE

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include "imp/imp.h"

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

#define BODY_SIZE_MIN 24
#define RECV_CHUNK 262144

enum { SC_DIRECT, SC_ROOM, SC_LATENCY, SC_PREPARE, SC_IDLE, SC_LOGIN, SC_JITTER };
enum { R_SEND = 1, R_RECV = 2, R_PING = 4 };
enum { P_NEW, P_CONNECTING, P_HELLO, P_AUTH, P_JOIN, P_READY, P_DEAD };

typedef struct lconn {
    int fd;
    int idx;
    int role;
    int phase;
    int epout; /* EPOLLOUT registered */
    int registering;
    int retry_busy;
    imp_conn *ic;
    uint8_t *obuf;
    size_t olen, ocap;
    char user[40];
    uint32_t req;
    uint32_t auth_req, join_req;
    uint64_t t_open_ns;
    /* sender */
    int peer; /* receiver index (direct, latency) */
    uint8_t *tmpl;
    size_t tmpl_len, body_off;
    size_t cmid_off; /* --cmid: where the CLIENT_MSG_ID's 16 characters are in tmpl */
    uint32_t seqno;
    long inflight;
    /* receiver */
    uint64_t max_seq, acked_seq;
} lconn;

static struct {
    int scenario;
    const char *host;
    int port;
    long pid;
    int conns;
    int senders;
    int window;
    double secs, warmup;
    double rate;
    int size;
    int durable;
    int cmid; /* SENDs carry a unique CLIENT_MSG_ID */
    const char *prefix;
    const char *password;
    const char *room;
    int auth_login; /* LOGIN instead of REGISTER */
    int auth_inflight;
    int srcs;
    double timeout;
    long ping_us;
    int verbose;
} opt;

static int ep = -1;
static lconn *conns;
static int nconns;
static int opened;    /* connections started so far */
static int admit_max; /* connections that may be started (a gate) */
static int opening;   /* started but not yet ready */
static int ready;     /* READY (and joined, for room) */
static int dead;      /* lost connections */
static int sending;   /* senders may send */
static uint64_t deadline_ns;
static uint8_t rbuf[RECV_CHUNK];

/* counters */
static uint64_t c_sent, c_acked, c_refused, c_delivered, c_errors, c_busy, c_auth_fail;
static uint64_t c_transient_unknown;
static uint64_t c_recvs; /* recv() calls that returned data (deliveries per recv: result line) */
/* where the client's time goes (room/direct result line): bytes received, epoll waits (and how
 * many returned nothing) */
static uint64_t c_recv_bytes, c_waits, c_waits_empty;
static int first_refuse_code;
/* latency */
static uint64_t *lat;
static size_t nlat, caplat;
static uint64_t *wlat; /* from the actual send time: without the client's own lag */
static size_t nwlat, capwlat;
static FILE *dump; /* --dump: every latency sample (due_ns latency_ns from_send_ns receiver) */
static uint64_t lag_max, lag_sum;
static uint64_t *lags;
static size_t nlags, caplags;
/* login pings */
static lconn *pinger;
static uint64_t *ping_sent_ns; /* by request id modulo ring */
#define PING_RING 65536
static uint64_t *pong;
static size_t npong, cappong;
static uint64_t pings_sent;

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static uint64_t now_ms(void)
{
    return now_ns() / 1000000u;
}

__attribute__((format(printf, 1, 2), noreturn)) static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "imd_load: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    exit(1);
}
static void push(uint64_t **arr, size_t *n, size_t *cap, uint64_t v)
{
    if (*n == *cap) {
        size_t nc = *cap ? *cap * 2 : 65536;
        uint64_t *p = realloc(*arr, nc * sizeof *p);
        if (!p)
            die("%s", "out of memory");
        *arr = p;
        *cap = nc;
    }
    (*arr)[(*n)++] = v;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* The q-quantile (0..1) of a sorted array: the smallest value with at least q of the samples at
 * or below it. */
static uint64_t quantile(const uint64_t *v, size_t n, double q)
{
    if (n == 0)
        return 0;
    size_t i = (size_t)(q * (double)n);
    if ((double)i < q * (double)n)
        i++;
    if (i > 0)
        i--;
    if (i >= n)
        i = n - 1;
    return v[i];
}

/* ---- CPU and memory ---------------------------------------------------------------------- */

static double proc_cpu_s(long pid)
{
    if (pid <= 0)
        return 0;
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    if (!p)
        return 0;
    /* after ") ": state(3) ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt
     * utime(14) stime(15) */
    unsigned long ut = 0, st = 0;
    if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2)
        return 0;
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

static double self_cpu_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

static long proc_rss_kb(long pid)
{
    if (pid <= 0)
        return -1;
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%ld/status", pid);
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

/* Busy and total jiffies of cpu0 and cpu1 from /proc/stat (busy = all but idle and iowait). */
static void host_cpu(unsigned long long busy[2], unsigned long long total[2])
{
    busy[0] = busy[1] = total[0] = total[1] = 0;
    FILE *f = fopen("/proc/stat", "r");
    if (!f)
        return;
    char line[512];
    while (fgets(line, sizeof line, f)) {
        int cpu;
        unsigned long long v[8] = {0};
        if (sscanf(line, "cpu%d %llu %llu %llu %llu %llu %llu %llu %llu", &cpu, &v[0], &v[1], &v[2],
                   &v[3], &v[4], &v[5], &v[6], &v[7]) == 9 &&
            cpu >= 0 && cpu < 2) {
            unsigned long long t = 0;
            for (int i = 0; i < 8; i++)
                t += v[i];
            total[cpu] = t;
            busy[cpu] = t - v[3] - v[4];
        }
    }
    fclose(f);
}

typedef struct snap {
    uint64_t t_ns;
    unsigned long long busy[2], total[2];
    double imd_cpu, self_cpu;
    uint64_t sent, acked, delivered, refused, recvs;
    uint64_t recv_bytes, waits, waits_empty;
} snap;

static void take_snap(snap *s)
{
    s->t_ns = now_ns();
    s->imd_cpu = proc_cpu_s(opt.pid);
    s->self_cpu = self_cpu_s();
    host_cpu(s->busy, s->total);
    s->sent = c_sent;
    s->acked = c_acked;
    s->delivered = c_delivered;
    s->refused = c_refused;
    s->recvs = c_recvs;
    s->recv_bytes = c_recv_bytes;
    s->waits = c_waits;
    s->waits_empty = c_waits_empty;
}

/* ---- output ------------------------------------------------------------------------------ */

static void obuf_reserve(lconn *c, size_t more)
{
    if (c->olen + more <= c->ocap)
        return;
    size_t nc = c->ocap ? c->ocap : 4096;
    while (nc < c->olen + more)
        nc *= 2;
    uint8_t *p = realloc(c->obuf, nc);
    if (!p)
        die("%s", "out of memory");
    c->obuf = p;
    c->ocap = nc;
}

/* Move the library's pending output (HELLO, requests, automatic PONGs) into our buffer. */
static void pull_lib_output(lconn *c)
{
    const uint8_t *p;
    size_t n;
    while ((n = imp_conn_pending_output(c->ic, &p)) > 0) {
        obuf_reserve(c, n);
        memcpy(c->obuf + c->olen, p, n);
        c->olen += n;
        imp_conn_consume_output(c->ic, n);
    }
}

static void set_epout(lconn *c, int on)
{
    if (c->epout == on || c->fd < 0)
        return;
    struct epoll_event ev;
    ev.events = EPOLLIN | (on ? EPOLLOUT : 0u);
    ev.data.ptr = c;
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
    c->epout = on;
}

static void conn_lost(lconn *c, const char *why);

static void flush_out(lconn *c)
{
    if (c->fd < 0 || c->phase == P_CONNECTING)
        return;
    size_t off = 0;
    while (off < c->olen) {
        ssize_t w = send(c->fd, c->obuf + off, c->olen - off, MSG_NOSIGNAL);
        if (w > 0) {
            off += (size_t)w;
            continue;
        }
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            break;
        conn_lost(c, w < 0 ? strerror(errno) : "write returned 0");
        return;
    }
    if (off > 0) {
        memmove(c->obuf, c->obuf + off, c->olen - off);
        c->olen -= off;
    }
    set_epout(c, c->olen > 0);
}

static uint32_t next_req(lconn *c)
{
    if (++c->req == 0)
        c->req = 1;
    return c->req;
}

static void lib_send(lconn *c, imp_msg *m)
{
    int r = imp_conn_send(c->ic, m);
    if (r < 0) {
        fprintf(stderr, "imd_load: %s: imp_conn_send(%s): %s\n", c->user, imp_type_name(m->type),
                imp_strerror(r));
        conn_lost(c, "send refused");
        return;
    }
    pull_lib_output(c);
}

/* ---- SEND fast path ---------------------------------------------------------------------- */

static void build_template(lconn *c, int kind, const char *target)
{
    uint8_t body[4096];
    memset(body, 'x', sizeof body);
    imp_msg m;
    imp_msg_init(&m, IMP_SEND, 1);
    imp_msg_set_u(&m, IMP_T_TARGET_KIND, (uint64_t)kind);
    imp_msg_set_s(&m, IMP_T_TARGET, target);
    if (!opt.durable)
        imp_msg_set_u(&m, IMP_T_CLASS, IMP_CLASS_TRANSIENT);
    imp_msg_set_u(&m, IMP_T_ACK_MODE, IMP_ACK_STORED);
    static const char cmid_mark[] = "@@cmid@@@@@@@@@@"; /* 16 characters, replaced per SEND */
    if (opt.cmid)
        imp_msg_set_s(&m, IMP_T_CLIENT_MSG_ID, cmid_mark);
    imp_msg_set_b(&m, IMP_T_BODY, body, (size_t)opt.size);
    imp_ssize n = imp_msg_encoded_size(&m);
    if (n < 0)
        die("cannot encode SEND: %s", imp_strerror((int)n));
    c->tmpl = malloc((size_t)n);
    if (!c->tmpl || imp_msg_encode(&m, c->tmpl, (size_t)n) != n)
        die("%s", "cannot encode SEND");
    c->tmpl_len = (size_t)n;
    c->body_off = (size_t)n - (size_t)opt.size; /* BODY (tag 23) is the last field */
    if (opt.cmid) {
        uint8_t *at = memmem(c->tmpl, c->tmpl_len, cmid_mark, 16);
        if (!at)
            die("%s", "cannot find CLIENT_MSG_ID in the SEND template");
        c->cmid_off = (size_t)(at - c->tmpl);
    }
}

static void put_u32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static void put_u64(uint8_t *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--) {
        p[i] = (uint8_t)v;
        v >>= 8;
    }
}

static uint64_t get_u64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | p[i];
    return v;
}

/* Append one SEND whose intended send time is due_ns. Body: intended send time (u64 ns), sender
 * index (u32), sequence number (u32), actual send time (u64 ns), then 'x' up to --size. */
static void queue_send(lconn *c, uint64_t due_ns)
{
    obuf_reserve(c, c->tmpl_len);
    uint8_t *p = c->obuf + c->olen;
    memcpy(p, c->tmpl, c->tmpl_len);
    put_u32(p + 8, next_req(c));
    uint8_t *b = p + c->body_off;
    put_u64(b, due_ns);
    put_u32(b + 8, (uint32_t)c->idx);
    put_u32(b + 12, ++c->seqno);
    put_u64(b + 16, now_ns()); /* when it was actually sent */
    if (opt.cmid) { /* unique per sender (dedupe keys are per sender): its 64-bit count in hex */
        static const char hex[] = "0123456789abcdef";
        uint64_t v = ((uint64_t)c->idx << 32) | c->seqno;
        for (int i = 15; i >= 0; i--, v >>= 4)
            p[c->cmid_off + (size_t)i] = (uint8_t)hex[v & 15];
    }
    c->olen += c->tmpl_len;
    c->inflight++;
    c_sent++;
}

static void fill_senders(lconn *c)
{
    if (!sending || !(c->role & R_SEND) || c->phase != P_READY || opt.scenario == SC_LATENCY)
        return;
    while (c->inflight < opt.window)
        queue_send(c, now_ns());
}

/* ---- connections ------------------------------------------------------------------------- */

static void conn_lost(lconn *c, const char *why)
{
    if (c->phase == P_DEAD)
        return;
    if (c->phase != P_READY && c->phase != P_NEW)
        opening--;
    else if (c->phase == P_READY)
        ready--;
    fprintf(stderr, "imd_load: connection %s lost: %s (error %d)\n", c->user, why,
            c->ic ? imp_conn_error(c->ic) : 0);
    c->phase = P_DEAD;
    dead++;
    if (c->fd >= 0) {
        epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
        c->fd = -1;
    }
}

/* Close quietly (prepare, BUSY retry). */
static void conn_close(lconn *c)
{
    if (c->fd >= 0) {
        epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
        c->fd = -1;
    }
    if (c->ic) {
        imp_conn_free(c->ic);
        c->ic = NULL;
    }
    c->olen = 0;
    c->epout = 0;
}

static void conn_open(lconn *c)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        die("socket: %s", strerror(errno));
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (opt.srcs > 1) {
        struct sockaddr_in src;
        memset(&src, 0, sizeof src);
        src.sin_family = AF_INET;
        src.sin_addr.s_addr = htonl(0x7f000001u + (uint32_t)(c->idx % opt.srcs));
        setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
        if (bind(fd, (struct sockaddr *)&src, sizeof src) < 0)
            die("bind: %s", strerror(errno));
    }
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)opt.port);
    if (inet_pton(AF_INET, opt.host, &sa.sin_addr) != 1)
        die("bad host %s", opt.host);
    int r = connect(fd, (struct sockaddr *)&sa, sizeof sa);
    if (r < 0 && errno != EINPROGRESS)
        die("connect: %s", strerror(errno));
    c->fd = fd;
    c->phase = r == 0 ? P_HELLO : P_CONNECTING;
    c->t_open_ns = now_ns();
    imp_config cfg;
    imp_config_default(&cfg, IMP_ROLE_CLIENT);
    cfg.agent = "imd_load";
    cfg.auth_timeout_ms = 0;
    c->ic = imp_conn_new(IMP_ROLE_CLIENT, &cfg, now_ms());
    if (!c->ic)
        die("%s", "imp_conn_new failed");
    pull_lib_output(c); /* HELLO */
    struct epoll_event ev;
    ev.events = EPOLLIN | EPOLLOUT;
    ev.data.ptr = c;
    c->epout = 1;
    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0)
        die("epoll_ctl: %s", strerror(errno));
    if (c->phase == P_HELLO)
        flush_out(c);
}

static void send_auth(lconn *c)
{
    imp_msg m;
    imp_msg_init(&m, c->registering ? IMP_REGISTER : IMP_LOGIN, next_req(c));
    imp_msg_set_s(&m, IMP_T_USER, c->user);
    imp_msg_set_s(&m, IMP_T_PASSWORD, opt.password);
    c->auth_req = m.request_id;
    c->phase = P_AUTH;
    lib_send(c, &m);
}

static void became_ready(lconn *c)
{
    c->phase = P_READY;
    opening--;
    ready++;
    if (c->role & R_SEND)
        fill_senders(c);
}

static void on_auth_ok(lconn *c)
{
    if (opt.scenario == SC_PREPARE) {
        conn_close(c);
        c->phase = P_READY;
        opening--;
        ready++;
        return;
    }
    if (opt.scenario == SC_ROOM) {
        imp_msg m;
        imp_msg_init(&m, IMP_JOIN, next_req(c));
        imp_msg_set_s(&m, IMP_T_ROOM, opt.room);
        c->join_req = m.request_id;
        c->phase = P_JOIN;
        lib_send(c, &m);
        return;
    }
    became_ready(c);
}

static void on_error(lconn *c, const imp_msg *m)
{
    int code = (int)imp_msg_u(m, IMP_T_CODE, 0);
    if (c->phase == P_AUTH && m->request_id == c->auth_req) {
        if (code == 401 && c->registering) { /* USER_EXISTS: an earlier run made it */
            c->registering = 0;
            send_auth(c);
            return;
        }
        if (code == 507) { /* BUSY: retry this connection later */
            c_busy++;
            c->retry_busy = 1;
            return;
        }
        c_auth_fail++;
        fprintf(stderr, "imd_load: %s: authentication refused: %d %s\n", c->user, code,
                imp_err_name(-code) ? imp_err_name(-code) : "?");
        conn_lost(c, "authentication refused");
        return;
    }
    c_errors++;
    if (c_errors <= 5) {
        imp_bytes t = imp_msg_b(m, IMP_T_TEXT);
        fprintf(stderr, "imd_load: %s: ERROR %d %.*s\n", c->user, code, (int)t.len,
                t.p ? (const char *)t.p : "");
    }
}

static void on_deliver(lconn *c, const imp_msg *m, uint64_t t_ns)
{
    c_delivered++;
    if (opt.scenario == SC_LATENCY) {
        imp_bytes b = imp_msg_b(m, IMP_T_BODY);
        if (b.len >= BODY_SIZE_MIN) {
            uint64_t due = get_u64(b.p), sent = get_u64(b.p + 16);
            push(&lat, &nlat, &caplat, t_ns > due ? t_ns - due : 0);
            push(&wlat, &nwlat, &capwlat, t_ns > sent ? t_ns - sent : 0);
            if (dump)
                fprintf(dump, "%llu %llu %llu %d\n", (unsigned long long)due,
                        (unsigned long long)(t_ns - due), (unsigned long long)(t_ns - sent),
                        c->idx);
        }
    }
    uint64_t seq = imp_msg_u(m, IMP_T_SEQ, 0);
    if (seq == 0 && opt.durable)
        c_transient_unknown++;
    if (seq > c->max_seq)
        c->max_seq = seq;
}

static void on_event(lconn *c, const imp_msg *m, uint64_t t_ns)
{
    switch (m->type) {
    case IMP_WELCOME:
        if (c->phase == P_HELLO || c->phase == P_CONNECTING)
            send_auth(c);
        break;
    case IMP_AUTH_OK:
        on_auth_ok(c);
        break;
    case IMP_OK:
        if (c->phase == P_JOIN && m->request_id == c->join_req)
            became_ready(c);
        break;
    case IMP_ERROR:
        on_error(c, m);
        break;
    case IMP_ACK:
        c->inflight--;
        if (imp_msg_u(m, IMP_T_OUTCOME, 0) == IMP_OUTCOME_REFUSED) {
            c_refused++;
            if (!first_refuse_code)
                first_refuse_code = (int)imp_msg_u(m, IMP_T_CODE, 0);
        } else {
            c_acked++;
        }
        break;
    case IMP_DELIVER:
        on_deliver(c, m, t_ns);
        break;
    case IMP_PONG:
        if (c == pinger && ping_sent_ns) {
            uint64_t s = ping_sent_ns[m->request_id % PING_RING];
            if (s)
                push(&pong, &npong, &cappong, t_ns - s);
        }
        break;
    default:
        break;
    }
}

static void on_readable(lconn *c)
{
    ssize_t r = recv(c->fd, rbuf, sizeof rbuf, 0);
    if (r == 0) {
        conn_lost(c, "closed by imd");
        return;
    }
    if (r < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
            conn_lost(c, strerror(errno));
        return;
    }
    c_recvs++;
    c_recv_bytes += (uint64_t)r;
    uint64_t t = now_ns();
    const uint8_t *p = rbuf;
    size_t n = (size_t)r;
    uint64_t seq_before = c->max_seq;
    while (n > 0 && c->phase != P_DEAD && c->ic) {
        imp_ssize took = imp_conn_feed(c->ic, p, n);
        if (took < 0) {
            conn_lost(c, imp_strerror((int)took));
            return;
        }
        p += took;
        n -= (size_t)took;
        imp_msg m;
        int e;
        while (c->ic && (e = imp_conn_next_event(c->ic, &m)) > 0)
            on_event(c, &m, t);
        if (!c->ic)
            return; /* closed by on_event (prepare) */
        if (e < 0) {
            conn_lost(c, imp_strerror(e));
            return;
        }
    }
    if (c->phase == P_DEAD || !c->ic)
        return;
    if (opt.durable && c->max_seq > seq_before && c->phase == P_READY) {
        imp_msg m; /* IMP-DELIV-003: cumulative acknowledgement of what was read */
        imp_msg_init(&m, IMP_DELIVERED, next_req(c));
        imp_msg_set_u(&m, IMP_T_SEQ, c->max_seq);
        c->acked_seq = c->max_seq;
        lib_send(c, &m);
    }
    if (c->phase == P_DEAD)
        return;
    pull_lib_output(c);
    fill_senders(c);
    if (imp_conn_want_close(c->ic) && c->olen == 0)
        conn_lost(c, "closing");
}

static void on_writable(lconn *c)
{
    if (c->phase == P_CONNECTING) {
        int err = 0;
        socklen_t el = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &el);
        if (err) {
            conn_lost(c, strerror(err));
            return;
        }
        c->phase = P_HELLO;
    }
    flush_out(c);
}

/* ---- the loop ---------------------------------------------------------------------------- */

static int ping_tfd = -1;
static int tfd_tag; /* address used as epoll data for the timer */

static void send_ping(void)
{
    if (!pinger || pinger->phase != P_READY)
        return;
    imp_msg m;
    imp_msg_init(&m, IMP_PING, next_req(pinger));
    ping_sent_ns[m.request_id % PING_RING] = now_ns();
    pings_sent++;
    lib_send(pinger, &m);
    flush_out(pinger);
}

/* Open more connections while fewer than auth_inflight are opening. */
static void admit(void)
{
    while (opened < nconns && opened < admit_max && opening < opt.auth_inflight) {
        lconn *c = &conns[opened++];
        opening++;
        conn_open(c);
    }
}

/* Retry connections refused with BUSY: close and reopen them. */
static void retry_busy(void)
{
    for (int i = 0; i < opened; i++) {
        lconn *c = &conns[i];
        if (c->retry_busy) {
            c->retry_busy = 0;
            conn_close(c);
            conn_open(c);
        }
    }
}

static uint64_t lat_next_due, lat_k, lat_t0, lat_period_ns;
static int lat_active;

static void latency_sends(void)
{
    if (!lat_active)
        return;
    uint64_t t = now_ns();
    while (lat_next_due <= t) {
        lconn *c = &conns[(lat_k % (uint64_t)opt.conns) * 2];
        if (c->phase == P_READY) {
            queue_send(c, lat_next_due);
            uint64_t lag = t - lat_next_due;
            lag_sum += lag;
            if (lag > lag_max)
                lag_max = lag;
            push(&lags, &nlags, &caplags, lag);
            flush_out(c);
        }
        lat_k++;
        lat_next_due = lat_t0 + lat_k * lat_period_ns;
    }
}

/* Runs the loop until done() says so or until_ns passes. busy (latency): wake up exactly when
 * the next send is due. Returns 1 when done() returned 1. */
static int loop(int (*done)(void), uint64_t until_ns, int busy)
{
    struct epoll_event evs[256];
    uint64_t last_retry = now_ns();
    for (;;) {
        if (done && done())
            return 1;
        uint64_t t = now_ns();
        if (t >= until_ns)
            return 0;
        if (t >= deadline_ns)
            die("%s", "hard time limit (--timeout) reached");
        admit();
        if (c_busy && t - last_retry > 200000000u) {
            retry_busy();
            last_retry = t;
        }
        latency_sends();
        /* latency: a timed wake-up costs about 75 us on this kind of VM, more than the 100 us
         * between sends at 10,000/s, so the loop polls (timeout 0) when the next send is due
         * within 300 us and sleeps (nanosecond timeout, epoll_pwait2) only until 200 us before
         * it otherwise */
        struct timespec to = {0, 5000000};
        if (busy) {
            uint64_t now = now_ns();
            uint64_t wait = lat_active && lat_next_due > now ? lat_next_due - now : 0;
            if (!lat_active)
                wait = 1000000;
            wait = wait < 300000u ? 0 : wait - 200000u;
            to.tv_nsec = (long)(wait > 5000000u ? 5000000u : wait);
        }
        int n = epoll_pwait2(ep, evs, 256, &to, NULL);
        if (n < 0 && errno != EINTR)
            die("epoll_wait: %s", strerror(errno));
        c_waits++;
        c_waits_empty += n == 0;
        for (int i = 0; i < n; i++) {
            if (evs[i].data.ptr == &tfd_tag) {
                uint64_t exp;
                if (read(ping_tfd, &exp, sizeof exp) > 0)
                    send_ping();
                continue;
            }
            lconn *c = evs[i].data.ptr;
            if (c->fd < 0)
                continue;
            if (evs[i].events & (EPOLLOUT | EPOLLERR | EPOLLHUP))
                on_writable(c);
            if (c->fd >= 0 && (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP)))
                on_readable(c);
            if (c->fd >= 0 && c->olen > 0)
                flush_out(c);
        }
    }
}

static int all_ready(void)
{
    return ready + dead >= nconns;
}

static void setup_phase(const char *what)
{
    uint64_t t0 = now_ns();
    loop(all_ready, deadline_ns, 0);
    if (dead)
        die("%s: connections lost during setup", what);
    if (opt.verbose)
        fprintf(stderr, "imd_load: %s: %d connections ready in %.2f s\n", what, ready,
                (double)(now_ns() - t0) / 1e9);
}

static int ready_count_target;
static int reached_target(void)
{
    return ready + dead >= ready_count_target;
}

static void name_conns(const char *fmt_kind, int n, int role, int offset)
{
    for (int i = 0; i < n; i++) {
        lconn *c = &conns[offset + i];
        c->fd = -1;
        c->idx = offset + i;
        c->role = role;
        c->registering = !opt.auth_login;
        snprintf(c->user, sizeof c->user, "%s%s%d", opt.prefix, fmt_kind, i);
    }
}

static void alloc_conns(int n)
{
    conns = calloc((size_t)n, sizeof *conns);
    if (!conns)
        die("%s", "out of memory");
    nconns = n;
    admit_max = n;
}

static void print_cpu(const snap *a, const snap *b)
{
    double el = (double)(b->t_ns - a->t_ns) / 1e9;
    if (el <= 0)
        el = 1e-9;
    double imd = 100.0 * (b->imd_cpu - a->imd_cpu) / el;
    double self = 100.0 * (b->self_cpu - a->self_cpu) / el;
    double busy[2];
    for (int i = 0; i < 2; i++) {
        unsigned long long t = b->total[i] - a->total[i];
        busy[i] = t ? 100.0 * (double)(b->busy[i] - a->busy[i]) / (double)t : 0.0;
    }
    /* other = what the rest of the machine used on the two CPUs (noise from other work) */
    double other = busy[0] + busy[1] - imd - self;
    printf(" imd_cpu_pct=%.0f client_cpu_pct=%.0f cpu0_busy_pct=%.0f cpu1_busy_pct=%.0f "
           "other_cpu_pct=%.0f",
           imd, self, busy[0], busy[1], other < 0 ? 0.0 : other);
}

/* ---- scenarios --------------------------------------------------------------------------- */

static void run_throughput(void)
{
    int room = opt.scenario == SC_ROOM;
    if (room) {
        alloc_conns(opt.conns);
        name_conns("m", opt.conns, R_RECV, 0);
        for (int i = 0; i < opt.senders && i < opt.conns; i++) {
            conns[i].role |= R_SEND;
            build_template(&conns[i], IMP_TARGET_ROOM, opt.room);
        }
    } else {
        alloc_conns(2 * opt.conns);
        for (int i = 0; i < opt.conns; i++) {
            lconn *s = &conns[2 * i], *r = &conns[2 * i + 1];
            s->fd = r->fd = -1;
            s->idx = 2 * i;
            r->idx = 2 * i + 1;
            s->role = R_SEND;
            r->role = R_RECV;
            s->registering = r->registering = !opt.auth_login;
            snprintf(s->user, sizeof s->user, "%ss%d", opt.prefix, i);
            snprintf(r->user, sizeof r->user, "%sr%d", opt.prefix, i);
            build_template(s, IMP_TARGET_USER, r->user);
        }
    }
    uint64_t t0 = now_ns();
    setup_phase(room ? "room setup" : "direct setup");
    double setup_s = (double)(now_ns() - t0) / 1e9;
    sending = 1;
    for (int i = 0; i < nconns; i++)
        if (conns[i].role & R_SEND) {
            fill_senders(&conns[i]);
            flush_out(&conns[i]);
        }
    loop(NULL, now_ns() + (uint64_t)(opt.warmup * 1e9), 0);
    snap a, b;
    take_snap(&a);
    loop(NULL, now_ns() + (uint64_t)(opt.secs * 1e9), 0);
    take_snap(&b);
    sending = 0;
    /* drain what is in flight (bounded) so the server is idle before we exit */
    loop(NULL, now_ns() + 300000000u, 0);
    double el = (double)(b.t_ns - a.t_ns) / 1e9;
    uint64_t dl = b.delivered - a.delivered, ak = b.acked - a.acked;
    int fanout = room ? opt.conns - 1 : 1;
    printf("imd_load scenario=%s class=%s%s conns=%d senders=%d receivers=%d size=%d window=%d "
           "setup_s=%.1f secs=%.2f sent=%llu acked=%llu refused=%llu refuse_code=%d "
           "delivered=%llu delivered_per_s=%.0f acked_per_s=%.0f fanout=%d expected_ratio=%.4f "
           "errors=%llu lost_conns=%d recvs=%llu deliveries_per_recv=%.1f",
           room ? "room" : "direct", opt.durable ? "durable" : "transient",
           opt.cmid ? " cmid=1" : "", nconns, room ? opt.senders : opt.conns,
           room ? opt.conns : opt.conns, opt.size, opt.window, setup_s, el,
           (unsigned long long)(b.sent - a.sent), (unsigned long long)ak,
           (unsigned long long)(b.refused - a.refused), first_refuse_code, (unsigned long long)dl,
           (double)dl / el, (double)ak / el, fanout, ak ? (double)dl / ((double)ak * fanout) : 0.0,
           (unsigned long long)c_errors, dead, (unsigned long long)(b.recvs - a.recvs),
           b.recvs > a.recvs ? (double)dl / (double)(b.recvs - a.recvs) : 0.0);
    uint64_t nr = b.recvs - a.recvs, nw = b.waits - a.waits;
    int nsend = room ? opt.senders : opt.conns;
    /* the mean time from a SEND to its ACK (Little's law: what is in flight over the rate) */
    printf(" bytes_per_recv=%.0f waits_per_s=%.0f recvs_per_wait=%.1f empty_waits=%llu "
           "ack_rtt_ms=%.2f",
           nr ? (double)(b.recv_bytes - a.recv_bytes) / (double)nr : 0.0, (double)nw / el,
           nw ? (double)nr / (double)nw : 0.0, (unsigned long long)(b.waits_empty - a.waits_empty),
           ak ? 1e3 * (double)nsend * opt.window / ((double)ak / el) : 0.0);
    print_cpu(&a, &b);
    printf("\n");
}

static void run_latency(void)
{
    alloc_conns(2 * opt.conns);
    for (int i = 0; i < opt.conns; i++) {
        lconn *s = &conns[2 * i], *r = &conns[2 * i + 1];
        s->fd = r->fd = -1;
        s->idx = 2 * i;
        r->idx = 2 * i + 1;
        s->role = R_SEND;
        r->role = R_RECV;
        s->registering = r->registering = !opt.auth_login;
        snprintf(s->user, sizeof s->user, "%ss%d", opt.prefix, i);
        snprintf(r->user, sizeof r->user, "%sr%d", opt.prefix, i);
        build_template(s, IMP_TARGET_USER, r->user);
    }
    setup_phase("latency setup");
    lat_period_ns = (uint64_t)(1e9 / opt.rate);
    /* warm-up at the same rate; its samples are dropped */
    lat_t0 = now_ns() + 1000000u;
    lat_next_due = lat_t0;
    lat_k = 0;
    lat_active = 1;
    loop(NULL, lat_t0 + (uint64_t)(opt.warmup * 1e9), 1);
    nlat = 0;
    nwlat = 0;
    nlags = 0;
    lag_max = lag_sum = 0;
    snap a, b;
    take_snap(&a);
    uint64_t sent0 = c_sent, del0 = c_delivered;
    loop(NULL, now_ns() + (uint64_t)(opt.secs * 1e9), 1);
    take_snap(&b);
    uint64_t sent = c_sent - sent0;
    lat_active = 0;
    loop(NULL, now_ns() + 1000000000u, 0); /* stragglers (their samples count) */
    uint64_t got = c_delivered - del0;
    qsort(lat, nlat, sizeof *lat, cmp_u64);
    qsort(lags, nlags, sizeof *lags, cmp_u64);
    qsort(wlat, nwlat, sizeof *wlat, cmp_u64);
    double el = (double)(b.t_ns - a.t_ns) / 1e9;
    printf("imd_load scenario=latency class=%s senders=%d receivers=%d size=%d rate=%.0f "
           "secs=%.2f sent=%llu received=%llu refused=%llu samples=%zu p50_us=%.1f p90_us=%.1f "
           "p99_us=%.1f p999_us=%.1f max_us=%.1f send_lag_p99_us=%.1f send_lag_max_us=%.1f "
           "act_p50_us=%.1f act_p99_us=%.1f act_p999_us=%.1f act_max_us=%.1f "
           "errors=%llu lost_conns=%d",
           opt.durable ? "durable" : "transient", opt.conns, opt.conns, opt.size, opt.rate, el,
           (unsigned long long)sent, (unsigned long long)got, (unsigned long long)c_refused, nlat,
           (double)quantile(lat, nlat, 0.50) / 1e3, (double)quantile(lat, nlat, 0.90) / 1e3,
           (double)quantile(lat, nlat, 0.99) / 1e3, (double)quantile(lat, nlat, 0.999) / 1e3,
           nlat ? (double)lat[nlat - 1] / 1e3 : 0.0, (double)quantile(lags, nlags, 0.99) / 1e3,
           (double)lag_max / 1e3, (double)quantile(wlat, nwlat, 0.50) / 1e3,
           (double)quantile(wlat, nwlat, 0.99) / 1e3, (double)quantile(wlat, nwlat, 0.999) / 1e3,
           nwlat ? (double)wlat[nwlat - 1] / 1e3 : 0.0, (unsigned long long)c_errors, dead);
    print_cpu(&a, &b);
    printf("\n");
}

static void run_accounts(void)
{
    int sc = opt.scenario;
    int extra = sc == SC_LOGIN ? 1 : 0;  /* the pinger */
    uint64_t base_p99 = 0, base_max = 0; /* PONG delays before the logins start */
    uint64_t pings0 = 0;
    if (sc == SC_LOGIN)
        opt.auth_login = 1; /* never REGISTER: USER_EXISTS counts as a failure (address ban) */
    alloc_conns(opt.conns + extra);
    name_conns("u", opt.conns, 0, extra);
    long rss0 = proc_rss_kb(opt.pid);
    snap a, b;
    if (sc == SC_LOGIN) {
        lconn *p = &conns[0];
        p->fd = -1;
        p->idx = 0;
        p->role = R_PING;
        p->registering = 0;
        snprintf(p->user, sizeof p->user, "%su0", opt.prefix);
        pinger = p;
        ping_sent_ns = calloc(PING_RING, sizeof *ping_sent_ns);
        ready_count_target = 1;
        admit_max = 1;
        loop(reached_target, deadline_ns, 0);
        if (dead)
            die("%s", "the PING connection could not log in");
        ping_tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
        struct itimerspec its;
        its.it_interval.tv_sec = 0;
        its.it_interval.tv_nsec = opt.ping_us * 1000;
        its.it_value = its.it_interval;
        timerfd_settime(ping_tfd, 0, &its, NULL);
        struct epoll_event ev;
        ev.events = EPOLLIN;
        ev.data.ptr = &tfd_tag;
        epoll_ctl(ep, EPOLL_CTL_ADD, ping_tfd, &ev);
        /* a second of pings with no login load: the baseline */
        loop(NULL, now_ns() + 1000000000u, 0);
        qsort(pong, npong, sizeof *pong, cmp_u64);
        base_p99 = quantile(pong, npong, 0.99);
        base_max = npong ? pong[npong - 1] : 0;
        npong = 0;
        pings0 = pings_sent;
        admit_max = nconns;
    }
    take_snap(&a);
    uint64_t until = sc == SC_LOGIN ? now_ns() + (uint64_t)(opt.secs * 1e9) : deadline_ns;
    int complete = loop(all_ready, until, 0);
    take_snap(&b);
    double el = (double)(b.t_ns - a.t_ns) / 1e9;
    int done_n = ready - extra;
    if (sc == SC_PREPARE) {
        printf("imd_load scenario=prepare accounts=%d secs=%.2f per_s=%.0f busy_retries=%llu "
               "lost_conns=%d",
               done_n, el, done_n / el, (unsigned long long)c_busy, dead);
        print_cpu(&a, &b);
        printf("\n");
        return;
    }
    if (sc == SC_IDLE) {
        loop(NULL, now_ns() + 2000000000u, 0); /* settle */
        long rss1 = proc_rss_kb(opt.pid);
        /* what imd keeps after the connections are gone (caches, allocator) */
        for (int i = 0; i < nconns; i++)
            conn_close(&conns[i]);
        loop(NULL, now_ns() + 2000000000u, 0);
        long rss2 = proc_rss_kb(opt.pid);
        printf("imd_load scenario=idle conns=%d logged_in=%d auth=%s secs=%.2f rss_before_kb=%ld "
               "rss_after_kb=%ld per_conn_bytes=%.0f rss_after_close_kb=%ld busy_retries=%llu "
               "lost_conns=%d",
               opt.conns, done_n, opt.auth_login ? "login" : "register", el, rss0, rss1,
               done_n > 0 ? (double)(rss1 - rss0) * 1024.0 / done_n : 0.0, rss2,
               (unsigned long long)c_busy, dead);
        print_cpu(&a, &b);
        printf("\n");
        return;
    }
    /* login */
    uint64_t pings_at_end = pings_sent - pings0;
    qsort(pong, npong, sizeof *pong, cmp_u64);
    printf("imd_load scenario=login conns=%d logged_in=%d complete=%d secs=%.2f logins_per_s=%.1f "
           "projected_10k_s=%.1f busy_retries=%llu auth_failed=%llu pings=%llu pongs=%zu "
           "pong_p50_us=%.0f pong_p99_us=%.0f pong_p999_us=%.0f pong_max_us=%.0f "
           "idle_pong_p99_us=%.0f idle_pong_max_us=%.0f lost_conns=%d",
           opt.conns, done_n, complete, el, done_n / el, done_n > 0 ? 10000.0 * el / done_n : 0.0,
           (unsigned long long)c_busy, (unsigned long long)c_auth_fail,
           (unsigned long long)pings_at_end, npong, (double)quantile(pong, npong, 0.5) / 1e3,
           (double)quantile(pong, npong, 0.99) / 1e3, (double)quantile(pong, npong, 0.999) / 1e3,
           npong ? (double)pong[npong - 1] / 1e3 : 0.0, (double)base_p99 / 1e3,
           (double)base_max / 1e3, dead);
    print_cpu(&a, &b);
    printf("\n");
}

static void run_jitter(void)
{
    uint64_t t0 = now_ns(), end = t0 + (uint64_t)(opt.secs * 1e9), last = t0;
    uint64_t n100 = 0, n500 = 0, n1000 = 0;
    uint64_t *gaps = NULL;
    size_t ngaps = 0, capgaps = 0;
    for (;;) {
        uint64_t t = now_ns();
        uint64_t g = t - last;
        last = t;
        if (g > 10000u) /* keep gaps over 10 us only */
            push(&gaps, &ngaps, &capgaps, g);
        n100 += g > 100000u;
        n500 += g > 500000u;
        n1000 += g > 1000000u;
        if (t >= end)
            break;
    }
    qsort(gaps, ngaps, sizeof *gaps, cmp_u64);
    double el = (double)(last - t0) / 1e9;
    uint64_t total = 0;
    for (size_t i = 0; i < ngaps; i++)
        total += gaps[i];
    printf("imd_load scenario=jitter secs=%.2f gaps_over_10us=%zu over_100us=%llu over_500us=%llu "
           "over_1ms=%llu max_gap_us=%.0f lost_time_pct=%.3f\n",
           el, ngaps, (unsigned long long)n100, (unsigned long long)n500, (unsigned long long)n1000,
           ngaps ? (double)gaps[ngaps - 1] / 1e3 : 0.0, 100.0 * (double)total / 1e9 / el);
    free(gaps);
}

/* ---- main -------------------------------------------------------------------------------- */

static void usage(FILE *f)
{
    fprintf(f,
            "usage: bench_imd_load SCENARIO --port PORT [options]\n"
            "  SCENARIO: direct | room | latency | prepare | idle | login | jitter\n"
            "  --host ADDR (127.0.0.1)  --port PORT  --pid PID (imd, for CPU and VmRSS)\n"
            "  --conns N (100)  --senders S (room: 10)  --window W (64)  --secs S (5)\n"
            "  --warmup S (1)  --rate R (latency: 10000)  --size B (64)\n"
            "  --class transient|durable (transient)  --cmid (unique CLIENT_MSG_IDs)\n"
            "  --prefix P (b)  --password PW\n"
            "  --room NAME (bench)  --login (LOGIN existing accounts instead of REGISTER)\n"
            "  --auth-inflight K (32)  --srcs K (1)  --timeout S (120)  --ping-us US (1000)\n"
            "  --dump FILE (latency: every sample)  -v (progress on stderr)\n"
            "The imd benchmarks are run by bench/run-imd, which starts imd for each scenario.\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stdout);
        return 0;
    }
    opt.host = "127.0.0.1";
    opt.conns = 100;
    opt.senders = 10;
    opt.window = 64;
    opt.secs = 5;
    opt.warmup = 1;
    opt.rate = 10000;
    opt.size = 64;
    opt.prefix = "b";
    opt.password = "bench-password-1";
    opt.room = "bench";
    opt.auth_inflight = 32;
    opt.srcs = 1;
    opt.timeout = 120;
    opt.ping_us = 1000;
    static const struct option lo[] = {{"host", 1, 0, 'H'},
                                       {"port", 1, 0, 'p'},
                                       {"pid", 1, 0, 'P'},
                                       {"conns", 1, 0, 'n'},
                                       {"senders", 1, 0, 'S'},
                                       {"window", 1, 0, 'w'},
                                       {"secs", 1, 0, 's'},
                                       {"warmup", 1, 0, 'W'},
                                       {"rate", 1, 0, 'r'},
                                       {"size", 1, 0, 'z'},
                                       {"class", 1, 0, 'c'},
                                       {"prefix", 1, 0, 'x'},
                                       {"password", 1, 0, 'k'},
                                       {"room", 1, 0, 'R'},
                                       {"login", 0, 0, 'L'},
                                       {"auth-inflight", 1, 0, 'a'},
                                       {"srcs", 1, 0, 'A'},
                                       {"timeout", 1, 0, 't'},
                                       {"ping-us", 1, 0, 'i'},
                                       {"dump", 1, 0, 'D'},
                                       {"help", 0, 0, 'h'},
                                       {"cmid", 0, 0, 'C'},
                                       {0, 0, 0, 0}};
    int ch;
    while ((ch = getopt_long(argc, argv, "vh", lo, NULL)) != -1) {
        switch (ch) {
        case 'H':
            opt.host = optarg;
            break;
        case 'p':
            opt.port = atoi(optarg);
            break;
        case 'P':
            opt.pid = atol(optarg);
            break;
        case 'n':
            opt.conns = atoi(optarg);
            break;
        case 'S':
            opt.senders = atoi(optarg);
            break;
        case 'w':
            opt.window = atoi(optarg);
            break;
        case 's':
            opt.secs = atof(optarg);
            break;
        case 'W':
            opt.warmup = atof(optarg);
            break;
        case 'r':
            opt.rate = atof(optarg);
            break;
        case 'z':
            opt.size = atoi(optarg);
            break;
        case 'C':
            opt.cmid = 1;
            break;
        case 'c':
            opt.durable = strcmp(optarg, "durable") == 0;
            break;
        case 'x':
            opt.prefix = optarg;
            break;
        case 'k':
            opt.password = optarg;
            break;
        case 'R':
            opt.room = optarg;
            break;
        case 'L':
            opt.auth_login = 1;
            break;
        case 'a':
            opt.auth_inflight = atoi(optarg);
            break;
        case 'A':
            opt.srcs = atoi(optarg);
            break;
        case 't':
            opt.timeout = atof(optarg);
            break;
        case 'i':
            opt.ping_us = atol(optarg);
            break;
        case 'D':
            dump = fopen(optarg, "w");
            if (!dump)
                die("%s: %s", optarg, strerror(errno));
            break;
        case 'v':
            opt.verbose = 1;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind != argc - 1) {
        usage(stderr);
        return 2;
    }
    const char *sc = argv[optind];
    static const char *const names[] = {"direct", "room",  "latency", "prepare",
                                        "idle",   "login", "jitter"};
    opt.scenario = -1;
    for (int i = 0; i < 7; i++)
        if (strcmp(sc, names[i]) == 0)
            opt.scenario = i;
    if (opt.scenario < 0 || (opt.scenario != SC_JITTER && opt.port <= 0) || opt.port > 65535 ||
        opt.conns < 1 || opt.window < 1 || opt.size < BODY_SIZE_MIN || opt.size > 4096 ||
        opt.secs <= 0 || opt.rate <= 0 || opt.auth_inflight < 1 || opt.srcs < 1 || opt.srcs > 250 ||
        opt.ping_us < 10 || opt.ping_us >= 1000000) {
        usage(stderr);
        return 2;
    }
    if (opt.scenario == SC_ROOM && opt.conns < 2) {
        usage(stderr);
        return 2;
    }
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0)
        die("epoll_create1: %s", strerror(errno));
    deadline_ns = now_ns() + (uint64_t)(opt.timeout * 1e9);
    setvbuf(stdout, NULL, _IOLBF, 0);
    switch (opt.scenario) {
    case SC_DIRECT:
    case SC_ROOM:
        run_throughput();
        break;
    case SC_LATENCY:
        run_latency();
        break;
    case SC_JITTER:
        run_jitter();
        break;
    default:
        run_accounts();
        break;
    }
    if (dump)
        fclose(dump);
    if (dead)
        return 1;
    return 0;
}
