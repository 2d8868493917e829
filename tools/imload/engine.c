/* imload — the workers: one epoll loop per thread, each owning every T-th connection.
 *
 * Connections are non-blocking, level-triggered. Each has an imp_conn (client role) that does
 * the handshake, authentication, JOIN, PING and every decode: all received bytes go through
 * imp_conn_feed / imp_conn_next_event, so every ACK and DELIVER is validated by libimp. Output
 * goes through a per-connection buffer: the library's pending output (HELLO, LOGIN, PONG,
 * DELIVERED, ...) is moved into it first, then SEND frames are appended from a template
 * encoded once by imp_msg_encode, with the request id, CLIENT_MSG_ID and body header patched
 * in place, so a SEND costs a memcpy.
 *
 * The body of every message starts with a header (BODY_HDR bytes): magic, sender index,
 * the sender's sequence number (1, 2, 3, ... per sender), the intended send time (CLOCK_MONOTONIC
 * ns) and 8 reserved bytes (0: a message resent after a reconnect has the same CLIENT_MSG_ID and
 * must have the same body, or the server refuses it with ID_CONFLICT). In open loop (--rate)
 * message k of a sender is intended at t0 + offset + k / (rate per sender) whatever happens: a
 * message that could not be written on time (server not reading, connection down) is written late
 * but keeps its intended time, so latency is measured from the schedule (coordinated omission
 * corrected, as wrk2 does).
 *
 * TLS (--tls): after the TCP connect, a non-blocking handshake (SSL_do_handshake; WANT_READ or
 * WANT_WRITE switch the epoll interest) bounded by --connect-timeout, then SSL_read / SSL_write
 * instead of recv / send; after a read, OpenSSL may hold decrypted bytes that epoll cannot see,
 * so reading goes on while SSL_has_pending. The plain path is the same code as before, behind
 * one test of c->ssl.
 *
 * --history: each worker appends one text line per SEND (first written or resent), ACK and
 * DELIVER to a buffer of its own and writes it whole (O_APPEND) when it is nearly full and at the
 * end; imload --check (check.c) reads the files.
 *
 * Correctness: each sender keeps the set of its sequence numbers that were acknowledged (a
 * bitmap) and the intended times of the unacknowledged ones (a ring, for ACK latency and for
 * resending after a reconnect, with the same CLIENT_MSG_ID); each receiver keeps, per sender it
 * hears from, the set of sequence numbers delivered (duplicates are those already in the set;
 * reordered ones arrive below the highest seen). After the run, lost = the acknowledged (with
 * --ack none: sent) messages missing from an expected receiver's set.
 */
#include "imload.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

#define RBUF_SIZE (256u * 1024u)
#define OBUF_MAX (8u * 1024u * 1024u) /* a sender stops writing above this (messages go late) */
#define CTRL_REQ 0x80000000u          /* request ids of control requests; SENDs use seq & ~it */
#define RETRY_NS 200000000ull         /* reconnect / BUSY retry delay */
#define CMID_LEN 20                   /* CLIENT_MSG_ID: 8 hex digits sender, 12 hex seq */

enum { P_IDLE, P_CONNECTING, P_TLS, P_HELLO, P_AUTH, P_JOIN, P_READY, P_WAIT, P_DONE, P_DEAD };

typedef struct bitmap {
    uint64_t *w;
    size_t nw;
} bitmap;

typedef struct pair {
    bitmap got;
    uint64_t last;
    uint64_t dup, reord;
} pair;

typedef struct lc {
    int fd;
    int idx;
    int role;
    int phase;
    int epout;
    worker *w;
    imp_conn *ic;
    SSL *ssl;            /* --tls */
    int tls_wr_wants_rd; /* SSL_write wanted to read: flush again when readable */
    int tls_rd_wants_wr; /* SSL_read wanted to write: read again when writable */
    int late;            /* --late-receivers: connects once sending has ended */
    uint8_t *obuf;
    size_t ohead, olen, ocap; /* pending output is obuf[ohead..olen) */
    char user[48];
    uint32_t req;
    uint32_t auth_req, join_req;
    int registered; /* the account exists (prepared, or REGISTER/USER_EXISTS seen) */
    int reg_tried;  /* REGISTER was sent once */
    int was_ready;
    int counted_dead;
    uint64_t t_open_ns, retry_at_ns;
    /* sender */
    int sidx;
    char target[48];
    uint8_t *tmpl;
    size_t tmpl_len, body_off, cmid_off;
    uint64_t next_seq; /* next sequence number to assign (from 1) */
    uint64_t quota;    /* messages left (UINT64_MAX: unbounded) */
    uint64_t next_due, interval_ns;
    double interval_f;        /* the exact interval, ns */
    uint64_t sched_base;      /* --ramp: t0 + this sender's offset */
    uint64_t sched_k;         /* --ramp: messages scheduled so far */
    double ramp_prev;         /* --ramp: the previous square root (Newton's start) */
    int ord;                  /* ordinal among this process's connections (--ramp) */
    uint64_t unflushed_since; /* due time of the oldest SEND not yet written (0: none) */
    uint64_t inflight;
    uint64_t *ring; /* intended ns of seq in [ring_lo, next_seq), index seq & ring_mask */
    size_t ring_mask;
    uint64_t ring_lo;
    bitmap acked;   /* acknowledged as stored/delivered */
    bitmap refused; /* answered by a refusal */
    /* receiver */
    int ridx;
    pair *pairs;
    int npairs;
    uint64_t max_seq, acked_seq;
    /* idle */
    uint64_t next_ping_ns, ping_sent_ns;
} lc;

struct worker {
    shared *sh;
    const config *cfg;
    int id;
    int ep;
    lc **mine;
    int nmine;
    lc **senders; /* the sending connections among mine */
    int nsenders;
    uint64_t next_open_scan, next_ping_scan;
    counters c;
    counters pub;
    int ready, dead, done;
    int pub_ready, pub_dead, pub_done;
    int opening;
    int auth_cap;
    hist ack, e2e;
    uint64_t last_pub_ns;
    uint64_t next_tmo_scan;
    uint8_t *rbuf;
    char *hbuf; /* --history: whole lines not yet written */
    size_t hlen;
};

static lc *g_conns;
static int g_nconns;
static int g_prepare;
/* Do the load accounts exist? One connection (the probe) asks first, so that a second run
 * does not collect one USER_EXISTS per account: imd counts every refused REGISTER or LOGIN
 * against the source address and bans it after a few. */
enum { ACCT_UNKNOWN, ACCT_NEW, ACCT_EXIST };
static int g_acct = ACCT_UNKNOWN;
static int g_probe = -1;

static void acct_decide(const lc *c, int v)
{
    int unknown = ACCT_UNKNOWN;
    if (c->idx == g_probe) /* the first answer decides */
        __atomic_compare_exchange_n(&g_acct, &unknown, v, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
}
static int g_errors_printed;

uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int phase_get(const shared *sh)
{
    return __atomic_load_n(&sh->phase, __ATOMIC_ACQUIRE);
}

static void die_oom(void)
{
    fprintf(stderr, PROG ": out of memory\n");
    exit(2); /* IMT_EXIT_USAGE */
}

/* ---- bitmaps -------------------------------------------------------------------------------- */

static void bm_set(bitmap *b, uint64_t i)
{
    size_t wi = (size_t)(i >> 6);
    if (wi >= b->nw) {
        size_t n = b->nw ? b->nw : 64;
        while (n <= wi)
            n *= 2;
        uint64_t *p = realloc(b->w, n * sizeof *p);
        if (!p)
            die_oom();
        memset(p + b->nw, 0, (n - b->nw) * sizeof *p);
        b->w = p;
        b->nw = n;
    }
    b->w[wi] |= 1ull << (i & 63);
}

static int bm_test(const bitmap *b, uint64_t i)
{
    size_t wi = (size_t)(i >> 6);
    return wi < b->nw && (b->w[wi] >> (i & 63) & 1u);
}

/* ---- byte helpers ---------------------------------------------------------------------------- */

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

static uint32_t get_u32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static uint64_t get_u64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | p[i];
    return v;
}

static void put_hex(uint8_t *p, uint64_t v, int digits)
{
    static const char hx[] = "0123456789abcdef";
    for (int i = digits - 1; i >= 0; i--) {
        p[i] = (uint8_t)hx[v & 15];
        v >>= 4;
    }
}

/* ---- --history ------------------------------------------------------------------------------ */

#define HBUF_SIZE (64u * 1024u)
#define HLINE_MAX 256u

static void history_flush(worker *w)
{
    const config *cfg = w->cfg;
    size_t off = 0;
    while (off < w->hlen) {
        ssize_t n = write(cfg->history_fd, w->hbuf + off, w->hlen - off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            static int told;
            if (!__atomic_exchange_n(&told, 1, __ATOMIC_RELAXED))
                fprintf(stderr, PROG ": cannot write the history: %s\n",
                        n < 0 ? strerror(errno) : "short write");
            break;
        }
        off += (size_t)n;
    }
    w->hlen = 0;
}

/* A line is built in place (no printf: a few ns per field), at most HLINE_MAX bytes. */
static char *hl_begin(worker *w)
{
    if (w->hlen + HLINE_MAX > HBUF_SIZE)
        history_flush(w);
    return w->hbuf + w->hlen;
}

static char *hl_u64(char *p, uint64_t v)
{
    char t[20];
    int n = 0;
    do {
        t[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    *p++ = ' ';
    while (n)
        *p++ = t[--n];
    return p;
}

static char *hl_str(char *p, const char *s)
{
    *p++ = ' ';
    for (int i = 0; s[i] && i < 64; i++)
        *p++ = s[i];
    return p;
}

static void hl_end(worker *w, char *p)
{
    *p++ = '\n';
    w->hlen = (size_t)(p - w->hbuf);
}

static const char *outcome_name(uint64_t o)
{
    return o == IMP_OUTCOME_REFUSED     ? "refused"
           : o == IMP_OUTCOME_DELIVERED ? "delivered"
                                        : "stored";
}

/* A SEND line: S (first write) or R (written again after a reconnect):
 * "S <sender> <seq> <cmid or -> <target>". */
static void history_send(lc *c, char kind, uint64_t seq)
{
    if (c->w->cfg->history_fd < 0)
        return;
    char *p = hl_begin(c->w);
    *p++ = kind;
    p = hl_u64(p, (uint64_t)c->sidx);
    p = hl_u64(p, seq);
    *p++ = ' ';
    if (c->w->cfg->reconnect) { /* the CLIENT_MSG_ID, as put_send writes it */
        put_hex((uint8_t *)p, (uint64_t)c->sidx, 8);
        put_hex((uint8_t *)p + 8, seq, 12);
        p += CMID_LEN;
    } else {
        *p++ = '-';
    }
    p = hl_str(p, c->target);
    hl_end(c->w, p);
}

/* "A <sender> <seq> <outcome> <code> <msg_id> <dup>" */
static void history_ack(lc *c, uint64_t seq, uint64_t outcome, uint64_t code, uint64_t msg_id,
                        int dup)
{
    char *p = hl_begin(c->w);
    *p++ = 'A';
    p = hl_u64(p, (uint64_t)c->sidx);
    p = hl_u64(p, seq);
    p = hl_str(p, outcome_name(outcome));
    p = hl_u64(p, code);
    p = hl_u64(p, msg_id);
    p = hl_u64(p, dup ? 1u : 0u);
    hl_end(c->w, p);
}

/* "D <receiver> <sender> <seq> <msg_id> <dseq>" */
static void history_deliver(lc *c, uint32_t sidx, uint64_t seq, uint64_t msg_id, uint64_t dseq)
{
    char *p = hl_begin(c->w);
    *p++ = 'D';
    p = hl_str(p, c->user);
    p = hl_u64(p, sidx);
    p = hl_u64(p, seq);
    p = hl_u64(p, msg_id);
    p = hl_u64(p, dseq);
    hl_end(c->w, p);
}

/* ---- output ---------------------------------------------------------------------------------- */

static void obuf_reserve(lc *c, size_t more)
{
    if (c->ohead && c->olen + more > c->ocap) { /* compact only when room is needed */
        memmove(c->obuf, c->obuf + c->ohead, c->olen - c->ohead);
        c->olen -= c->ohead;
        c->ohead = 0;
    }
    if (c->olen + more <= c->ocap)
        return;
    size_t n = c->ocap ? c->ocap : 4096;
    while (n < c->olen + more)
        n *= 2;
    uint8_t *p = realloc(c->obuf, n);
    if (!p)
        die_oom();
    c->obuf = p;
    c->ocap = n;
}

static void pull_lib_output(lc *c)
{
    const uint8_t *p;
    size_t n;
    while (c->ic && (n = imp_conn_pending_output(c->ic, &p)) > 0) {
        obuf_reserve(c, n);
        memcpy(c->obuf + c->olen, p, n);
        c->olen += n;
        imp_conn_consume_output(c->ic, n);
    }
}

static void set_epout(lc *c, int on)
{
    if (c->epout == on || c->fd < 0)
        return;
    struct epoll_event ev;
    memset(&ev, 0, sizeof ev);
    ev.events = EPOLLIN | (on ? EPOLLOUT : 0u);
    ev.data.ptr = c;
    epoll_ctl(c->w->ep, EPOLL_CTL_MOD, c->fd, &ev);
    c->epout = on;
}

static void conn_lost(lc *c, const char *why, int is_error);

static void flush_out_tls(lc *c);

static void flush_out(lc *c)
{
    if (c->fd < 0 || c->phase == P_CONNECTING || c->phase == P_TLS)
        return;
    if (c->ssl) {
        flush_out_tls(c);
        return;
    }
    size_t off = c->ohead;
    while (off < c->olen) {
        ssize_t n = send(c->fd, c->obuf + off, c->olen - off, MSG_NOSIGNAL);
        if (n > 0) {
            off += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            break;
        conn_lost(c, n < 0 ? strerror(errno) : "write returned 0", 1);
        return;
    }
    c->ohead = off; /* no memmove here: a large backlog would be copied again and again */
    if (c->ohead == c->olen)
        c->ohead = c->olen = 0;
    set_epout(c, c->olen > c->ohead);
}

/* The same over TLS: SSL_write (partial writes and a moving buffer are allowed by the
 * context); WANT_WRITE waits for EPOLLOUT, WANT_READ for EPOLLIN (then on_readable flushes). */
static void flush_out_tls(lc *c)
{
    size_t off = c->ohead;
    int want_read = 0;
    while (off < c->olen) {
        size_t len = c->olen - off;
        int n = SSL_write(c->ssl, c->obuf + off, len > 0x40000000u ? 0x40000000 : (int)len);
        if (n > 0) {
            off += (size_t)n;
            continue;
        }
        int e = SSL_get_error(c->ssl, n);
        if (e == SSL_ERROR_WANT_WRITE)
            break;
        if (e == SSL_ERROR_WANT_READ) {
            want_read = 1;
            break;
        }
        char buf[200];
        conn_lost(c, imt_tls_error(c->ssl, buf, sizeof buf), 1);
        return;
    }
    c->ohead = off;
    if (c->ohead == c->olen)
        c->ohead = c->olen = 0;
    c->tls_wr_wants_rd = want_read;
    set_epout(c, !want_read && c->olen > c->ohead);
}

static uint32_t ctrl_req(lc *c)
{
    c->req = (c->req + 1) & ~CTRL_REQ;
    return c->req | CTRL_REQ;
}

static int lib_send(lc *c, const imp_msg *m)
{
    int r = imp_conn_send(c->ic, m);
    if (r < 0) {
        c->w->c.proto_errors++;
        conn_lost(c, imp_strerror(r), 1);
        return -1;
    }
    pull_lib_output(c);
    return 0;
}

/* ---- SEND template --------------------------------------------------------------------------- */

static void build_template(lc *c)
{
    const config *cfg = c->w->cfg;
    uint8_t *body = calloc(1, cfg->size ? cfg->size : 1);
    if (!body)
        die_oom();
    memset(body, 'x', cfg->size);
    imp_msg m;
    imp_msg_init(&m, IMP_SEND, 1);
    if (cfg->scenario == SC_ROOM) {
        imp_msg_set_u(&m, IMP_T_TARGET_KIND, IMP_TARGET_ROOM);
        imp_msg_set_s(&m, IMP_T_TARGET, cfg->room);
    } else if (cfg->scenario == SC_BROADCAST) {
        imp_msg_set_u(&m, IMP_T_TARGET_KIND, IMP_TARGET_BROADCAST);
    } else {
        imp_msg_set_u(&m, IMP_T_TARGET_KIND, IMP_TARGET_USER);
        imp_msg_set_s(&m, IMP_T_TARGET, c->target);
    }
    char cmid[CMID_LEN + 1];
    memset(cmid, 'X', CMID_LEN);
    cmid[CMID_LEN] = 0;
    if (cfg->reconnect)
        imp_msg_set_s(&m, IMP_T_CLIENT_MSG_ID, cmid);
    if (cfg->transient)
        imp_msg_set_u(&m, IMP_T_CLASS, IMP_CLASS_TRANSIENT);
    imp_msg_set_u(&m, IMP_T_ACK_MODE, (uint64_t)cfg->ack);
    imp_msg_set_b(&m, IMP_T_BODY, body, cfg->size);
    imp_ssize n = imp_msg_encoded_size(&m);
    if (n < 0) {
        fprintf(stderr, PROG ": cannot encode SEND: %s\n", imp_strerror((int)n));
        exit(2);
    }
    c->tmpl = malloc((size_t)n);
    if (!c->tmpl || imp_msg_encode(&m, c->tmpl, (size_t)n) != n)
        die_oom();
    c->tmpl_len = (size_t)n;
    c->body_off = (size_t)n - cfg->size; /* BODY (tag 23) is the last field of SEND */
    c->cmid_off = 0;
    if (cfg->reconnect) {
        uint8_t *p = memmem(c->tmpl, c->tmpl_len, cmid, CMID_LEN);
        c->cmid_off = p ? (size_t)(p - c->tmpl) : 0;
    }
    free(body);
}

static void ring_put(lc *c, uint64_t seq, uint64_t due)
{
    size_t cap = c->ring ? c->ring_mask + 1 : 0;
    if (seq - c->ring_lo >= cap) {
        size_t ncap = cap ? cap * 2 : 1024;
        while (seq - c->ring_lo >= ncap)
            ncap *= 2;
        uint64_t *nr = malloc(ncap * sizeof *nr);
        if (!nr)
            die_oom();
        for (uint64_t s = c->ring_lo; s < seq; s++)
            nr[s & (ncap - 1)] = c->ring[s & c->ring_mask];
        free(c->ring);
        c->ring = nr;
        c->ring_mask = ncap - 1;
    }
    c->ring[seq & c->ring_mask] = due;
}

/* Append the SEND of sequence number seq intended at due. */
static void put_send(lc *c, uint64_t seq, uint64_t due)
{
    obuf_reserve(c, c->tmpl_len);
    uint8_t *p = c->obuf + c->olen;
    memcpy(p, c->tmpl, c->tmpl_len);
    put_u32(p + 8, (uint32_t)(seq & ~(uint64_t)CTRL_REQ));
    if (c->cmid_off) {
        put_hex(p + c->cmid_off, (uint64_t)c->sidx, 8);
        put_hex(p + c->cmid_off + 8, seq, 12);
    }
    uint8_t *b = p + c->body_off;
    if (c->w->cfg->size >= BODY_HDR) {
        put_u32(b, BODY_MAGIC);
        put_u32(b + 4, (uint32_t)c->sidx);
        put_u64(b + 8, seq);
        put_u64(b + 16, due);
        put_u64(b + 24, 0); /* reserved: a resent message must have the very same body */
    }
    c->olen += c->tmpl_len;
}

static void queue_send(lc *c, uint64_t due)
{
    uint64_t seq = c->next_seq++;
    if (c->w->cfg->ack != IMP_ACK_NONE) {
        ring_put(c, seq, due);
        c->inflight++;
        c->w->c.ack_outstanding++;
    }
    put_send(c, seq, due);
    history_send(c, 'S', seq);
    if (c->quota != UINT64_MAX)
        c->quota--;
    c->w->c.sent++;
}

/* After a reconnect: send again every message not acknowledged, same CLIENT_MSG_ID. */
static void resend_unacked(lc *c)
{
    if (c->w->cfg->ack == IMP_ACK_NONE)
        return;
    for (uint64_t s = c->ring_lo; s < c->next_seq; s++)
        if (!bm_test(&c->acked, s) && !bm_test(&c->refused, s)) {
            put_send(c, s, c->ring[s & c->ring_mask]);
            history_send(c, 'R', s);
        }
}

/* ---- connections ----------------------------------------------------------------------------- */

static void report_error(lc *c, const char *what)
{
    if (c->w->cfg->quiet)
        return;
    int n = __atomic_add_fetch(&g_errors_printed, 1, __ATOMIC_RELAXED);
    if (n <= 10)
        fprintf(stderr, PROG ": %s: %s\n", c->user, what);
    else if (n == 11)
        fprintf(stderr, PROG ": (further connection errors are only counted)\n");
}

static void conn_close_fd(lc *c)
{
    if (c->ssl) {
        SSL_free(c->ssl);
        c->ssl = NULL;
        ERR_clear_error();
    }
    c->tls_wr_wants_rd = c->tls_rd_wants_wr = 0;
    if (c->fd >= 0) {
        epoll_ctl(c->w->ep, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
        c->fd = -1;
    }
    if (c->ic) {
        imp_conn_free(c->ic);
        c->ic = NULL;
    }
    if (c->phase >= P_CONNECTING && c->phase <= P_JOIN)
        c->w->opening--;
    c->olen = c->ohead = 0;
    c->unflushed_since = 0; /* what was not written is resent after the reconnect */
    c->epout = 0;
}

/* A connection ended: is_error 1 for a failure (counted), 0 for an intentional close. */
static void conn_lost(lc *c, const char *why, int is_error)
{
    if (c->phase == P_DEAD || c->phase == P_DONE || c->phase == P_WAIT || c->phase == P_IDLE)
        return;
    worker *w = c->w;
    if (is_error) {
        w->c.conn_errors++;
        report_error(c, why);
        if (!c->registered)
            acct_decide(c, ACCT_NEW);
    }
    conn_close_fd(c);
    int ph = phase_get(w->sh);
    if (ph < PH_STOP && (!is_error || w->cfg->reconnect)) {
        c->phase = P_WAIT;
        c->retry_at_ns = now_ns() + (is_error ? RETRY_NS : 0);
        if (is_error)
            w->c.reconnects++;
    } else {
        c->phase = P_DEAD;
        if (!c->counted_dead) {
            c->counted_dead = 1;
            w->dead++;
        }
    }
}

/* May this connection be opened now? */
static int may_open(lc *c, int ph)
{
    const config *cfg = c->w->cfg;
    if (ph >= PH_STOP)
        return 0;
    if (!(c->role & R_ADMIN) && c->idx != g_probe &&
        __atomic_load_n(&g_acct, __ATOMIC_ACQUIRE) == ACCT_UNKNOWN)
        return 0;
    if (g_prepare)
        return 1;
    if (cfg->ramp_ns && ph == PH_SETUP && c->w->sh->nconns > 0 &&
        now_ns() <
            c->w->sh->setup_start_ns + cfg->ramp_ns * (uint64_t)c->ord / (uint64_t)c->w->sh->nconns)
        return 0;
    if (c->late && ph < PH_DRAIN)
        return 0; /* --late-receivers: offline until sending has ended */
    if (cfg->scenario == SC_LOGIN || (cfg->scenario == SC_CHURN && (c->role & R_SEND)))
        return ph == PH_RUN && now_ns() < c->w->sh->send_until_ns &&
               (c->quota > 0 || cfg->scenario == SC_LOGIN);
    return 1;
}

/* Connecting (TCP or TLS) failed: with --reconnect (or while preparing, or for a connection
 * that was up before) retry later; otherwise the connection is dead (the setup fails, exit 3).
 * fatal: dead in any case (a certificate that does not verify will not verify next time). */
static void setup_failed(lc *c, const char *msg, int fatal)
{
    worker *w = c->w;
    if (fatal || (!w->cfg->reconnect && !g_prepare && !c->was_ready)) {
        w->c.conn_errors++;
        report_error(c, msg);
        acct_decide(c, ACCT_NEW);
        conn_close_fd(c);
        c->phase = P_DEAD;
        if (!c->counted_dead) {
            c->counted_dead = 1;
            w->dead++;
        }
        return;
    }
    conn_lost(c, msg, 1);
}

/* Drive the TLS handshake (non-blocking): done -> P_HELLO and the HELLO goes out. */
static void tls_handshake(lc *c)
{
    ERR_clear_error();
    int r = SSL_do_handshake(c->ssl);
    if (r == 1) {
        c->phase = P_HELLO;
        flush_out(c);
        return;
    }
    int e = SSL_get_error(c->ssl, r);
    if (e == SSL_ERROR_WANT_READ) {
        set_epout(c, 0);
        return;
    }
    if (e == SSL_ERROR_WANT_WRITE) {
        set_epout(c, 1);
        return;
    }
    char buf[200], msg[240];
    imt_tls_error(c->ssl, buf, sizeof buf);
    int verify_failed = SSL_get_verify_result(c->ssl) != X509_V_OK;
    if (e == SSL_ERROR_SYSCALL && !strcmp(buf, "TLS handshake failed"))
        snprintf(buf, sizeof buf, "TLS handshake failed: %s",
                 errno ? strerror(errno) : "connection closed by the server");
    snprintf(msg, sizeof msg, "%s%s", strncmp(buf, "TLS", 3) ? "TLS: " : "", buf);
    setup_failed(c, msg, verify_failed);
}

/* The TCP connection is up: start TLS (--tls) or say HELLO. */
static void conn_connected(lc *c)
{
    const config *cfg = c->w->cfg;
    if (!cfg->tls_ctx) {
        c->phase = P_HELLO;
        flush_out(c);
        return;
    }
    char err[300];
    c->ssl = imt_tls_new(cfg->tls_ctx, &cfg->tls, cfg->host, err, sizeof err);
    if (!c->ssl || SSL_set_fd(c->ssl, c->fd) != 1) {
        char msg[340];
        snprintf(msg, sizeof msg, "TLS: %s", c->ssl ? "SSL_set_fd failed" : err);
        setup_failed(c, msg, 1);
        return;
    }
    SSL_set_connect_state(c->ssl);
    c->phase = P_TLS;
    tls_handshake(c);
}

static void conn_open(lc *c)
{
    worker *w = c->w;
    const config *cfg = w->cfg;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        w->c.conn_errors++;
        report_error(c, strerror(errno));
        c->phase = P_WAIT;
        c->retry_at_ns = now_ns() + RETRY_NS;
        return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (cfg->source_addrs > 1) {
        struct sockaddr_in src;
        memset(&src, 0, sizeof src);
        src.sin_family = AF_INET;
        src.sin_addr.s_addr = htonl(0x7f000001u + (uint32_t)(c->idx % cfg->source_addrs));
        setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
        if (bind(fd, (const struct sockaddr *)&src, sizeof src) < 0) {
            close(fd);
            w->c.conn_errors++;
            report_error(c, "bind to the source address failed");
            c->phase = P_WAIT;
            c->retry_at_ns = now_ns() + RETRY_NS;
            return;
        }
    }
    c->t_open_ns = now_ns();
    int r = connect(fd, (const struct sockaddr *)&cfg->server, sizeof cfg->server);
    if (r < 0 && errno != EINPROGRESS) {
        char buf[160];
        snprintf(buf, sizeof buf, "connect: %s", strerror(errno));
        close(fd);
        w->c.conn_errors++;
        report_error(c, buf);
        acct_decide(c, ACCT_NEW);
        if (cfg->reconnect || g_prepare) {
            c->phase = P_WAIT;
            c->retry_at_ns = now_ns() + RETRY_NS;
        } else {
            c->phase = P_DEAD;
            c->counted_dead = 1;
            w->dead++;
        }
        return;
    }
    w->c.connects++;
    c->fd = fd;
    c->phase = r == 0 ? P_HELLO : P_CONNECTING;
    w->opening++;
    imp_config icfg;
    imp_config_default(&icfg, IMP_ROLE_CLIENT);
    icfg.agent = "imload";
    icfg.auth_timeout_ms = 0;
    c->ic = imp_conn_new(IMP_ROLE_CLIENT, &icfg, c->t_open_ns / 1000000u);
    if (!c->ic)
        die_oom();
    c->olen = c->ohead = 0;
    pull_lib_output(c); /* HELLO */
    struct epoll_event ev;
    memset(&ev, 0, sizeof ev);
    ev.events = EPOLLIN | EPOLLOUT;
    ev.data.ptr = c;
    c->epout = 1;
    if (epoll_ctl(w->ep, EPOLL_CTL_ADD, fd, &ev) < 0) {
        conn_lost(c, strerror(errno), 1);
        return;
    }
    if (c->phase == P_HELLO)
        conn_connected(c);
}

static void send_auth(lc *c)
{
    const config *cfg = c->w->cfg;
    int admin = (c->role & R_ADMIN) != 0;
    imp_msg m;
    int reg = !admin && !c->registered &&
              (__atomic_load_n(&g_acct, __ATOMIC_ACQUIRE) != ACCT_EXIST || c->reg_tried);
    if (reg)
        c->reg_tried = 1;
    imp_msg_init(&m, reg ? IMP_REGISTER : IMP_LOGIN, ctrl_req(c));
    imp_msg_set_s(&m, IMP_T_USER, c->user);
    if (admin)
        imp_msg_set_b(&m, IMP_T_PASSWORD, cfg->admin_password, cfg->admin_password_len);
    else
        imp_msg_set_b(&m, IMP_T_PASSWORD, cfg->password, cfg->password_len);
    if (!reg && c->max_seq > 0)
        imp_msg_set_u(&m, IMP_T_LAST_SEQ, c->max_seq); /* resume after a reconnect */
    c->auth_req = m.request_id;
    c->phase = P_AUTH;
    lib_send(c, &m);
}

static void became_ready(lc *c)
{
    worker *w = c->w;
    const config *cfg = w->cfg;
    w->opening--;
    c->phase = P_READY;
    if (!c->was_ready) {
        c->was_ready = 1;
        w->ready++;
    }
    if (c->role & R_SEND) {
        resend_unacked(c);
        if (cfg->scenario == SC_CHURN && phase_get(w->sh) == PH_RUN && c->quota > 0)
            queue_send(c, now_ns());
    }
    flush_out(c);
}

static void on_welcome(lc *c, const imp_msg *m)
{
    shared *sh = c->w->sh;
    if (!__atomic_exchange_n(&sh->agent_set, 1, __ATOMIC_ACQ_REL)) {
        imp_bytes a = imp_msg_b(m, IMP_T_AGENT);
        size_t n = a.len < sizeof sh->agent - 1 ? a.len : sizeof sh->agent - 1;
        if (n)
            memcpy(sh->agent, a.p, n);
        sh->agent[n] = 0;
    }
    send_auth(c);
}

static void on_auth_ok(lc *c, const imp_msg *m)
{
    worker *w = c->w;
    const config *cfg = w->cfg;
    c->registered = 1;
    acct_decide(c, ACCT_NEW);
    w->c.logins++;
    if (g_prepare) {
        conn_close_fd(c);
        c->phase = P_DONE;
        w->done++;
        return;
    }
    if (cfg->scenario == SC_LOGIN) {
        uint64_t t = now_ns();
        if (t >= w->sh->measure_from_ns)
            hist_record(&w->ack, t - c->t_open_ns);
        w->c.cycles++;
        conn_close_fd(c);
        c->phase = P_WAIT;
        c->retry_at_ns = t;
        return;
    }
    uint64_t last = imp_msg_u(m, IMP_T_LAST_SEQ, 0);
    if (c->max_seq > last) {
        imp_msg d;
        imp_msg_init(&d, IMP_DELIVERED, ctrl_req(c));
        imp_msg_set_u(&d, IMP_T_SEQ, c->max_seq);
        if (lib_send(c, &d) < 0)
            return;
        c->acked_seq = c->max_seq;
    }
    if (cfg->scenario == SC_ROOM) {
        imp_msg j;
        imp_msg_init(&j, IMP_JOIN, ctrl_req(c));
        imp_msg_set_s(&j, IMP_T_ROOM, cfg->room);
        c->join_req = j.request_id;
        c->phase = P_JOIN;
        lib_send(c, &j);
        return;
    }
    became_ready(c);
}

static void on_error(lc *c, const imp_msg *m)
{
    worker *w = c->w;
    int code = (int)imp_msg_u(m, IMP_T_CODE, 0);
    char buf[200];
    imp_bytes t = imp_msg_b(m, IMP_T_TEXT);
    const char *name = imp_err_name(-code);
    snprintf(buf, sizeof buf, "ERROR %d %s%s%.*s", code, name ? name : "", t.len ? ": " : "",
             (int)t.len, t.p ? (const char *)t.p : "");
    if (c->phase == P_AUTH && m->request_id == c->auth_req) {
        if (w->cfg->verbose)
            fprintf(stderr, PROG ": %s: %s answered %s\n", c->user,
                    c->reg_tried && !c->registered ? "REGISTER" : "LOGIN", buf);
        if (code == 401) { /* USER_EXISTS: made by an earlier run */
            c->registered = 1;
            acct_decide(c, ACCT_EXIST);
            if (g_prepare) {
                conn_close_fd(c);
                c->phase = P_DONE;
                w->done++;
                return;
            }
            send_auth(c);
            return;
        }
        if (code == 400 && !c->reg_tried && !(c->role & R_ADMIN)) {
            send_auth(c); /* LOGIN refused: the account may not exist yet */
            return;
        }
        if (code == 507 || code == 404 || code == 506) { /* BUSY, AUTH_BACKOFF: retry */
            uint64_t ra = imp_msg_u(m, IMP_T_RETRY_AFTER, 200);
            conn_close_fd(c);
            c->phase = P_WAIT;
            c->retry_at_ns = now_ns() + ra * 1000000u;
            return;
        }
        w->c.auth_errors++;
        report_error(c, buf);
        acct_decide(c, ACCT_NEW);
        conn_close_fd(c);
        c->phase = P_DEAD;
        if (!c->counted_dead) {
            c->counted_dead = 1;
            w->dead++;
        }
        return;
    }
    if (c->phase == P_JOIN && m->request_id == c->join_req) {
        w->c.proto_errors++;
        report_error(c, buf);
        conn_close_fd(c);
        c->phase = P_DEAD;
        if (!c->counted_dead) {
            c->counted_dead = 1;
            w->dead++;
        }
        return;
    }
    if (code >= 300 && code < 400) {
        w->c.conn_errors++;
        report_error(c, buf);
        return;
    }
    if (code == 730 || code == 731 || code == 732)
        report_error(c, buf); /* counted as a connection error when it closes */
    else {
        w->c.proto_errors++;
        report_error(c, buf);
    }
}

static void on_ack(lc *c, const imp_msg *m)
{
    worker *w = c->w;
    if (!(c->role & R_SEND) || w->cfg->ack == IMP_ACK_NONE) {
        if (imp_msg_u(m, IMP_T_OUTCOME, 0) == IMP_OUTCOME_REFUSED)
            w->c.refused++;
        return;
    }
    uint32_t rid = m->request_id & ~CTRL_REQ;
    uint64_t seq = c->ring_lo + ((rid - (uint32_t)c->ring_lo) & ~CTRL_REQ);
    if (w->cfg->history_fd >= 0) {
        /* every ACK, also the second one of a resent message (whose seq may be below ring_lo:
         * the CLIENT_MSG_ID names it) */
        uint64_t hseq = seq;
        imp_bytes id = imp_msg_b(m, IMP_T_CLIENT_MSG_ID);
        if (id.len == CMID_LEN) {
            uint64_t v = 0;
            for (size_t i = 8; i < CMID_LEN; i++) {
                uint8_t d = id.p[i];
                v = v << 4 | (uint64_t)(d <= '9' ? d - '0' : d - 'a' + 10);
            }
            hseq = v;
        }
        history_ack(c, hseq, imp_msg_u(m, IMP_T_OUTCOME, 0), imp_msg_u(m, IMP_T_CODE, 0),
                    imp_msg_u(m, IMP_T_MSG_ID, 0), imp_msg_u(m, IMP_T_DUPLICATE, 0) != 0);
    }
    if (seq >= c->next_seq || seq < c->ring_lo || bm_test(&c->acked, seq) ||
        bm_test(&c->refused, seq))
        return; /* a second ACK (resend after reconnect) */
    if (imp_msg_u(m, IMP_T_OUTCOME, 0) == IMP_OUTCOME_REFUSED) {
        w->c.refused++;
        if (w->c.refused <= 3) {
            char buf[120];
            int code = (int)imp_msg_u(m, IMP_T_CODE, 0);
            const char *name = imp_err_name(-code);
            snprintf(buf, sizeof buf, "SEND refused: %d %s", code, name ? name : "");
            report_error(c, buf);
        }
        bm_set(&c->refused, seq);
    } else {
        bm_set(&c->acked, seq);
        w->c.acked++;
    }
    uint64_t due = c->ring[seq & c->ring_mask];
    uint64_t t = now_ns();
    if (due >= w->sh->measure_from_ns)
        hist_record(&w->ack, t > due ? t - due : 0);
    c->inflight--;
    w->c.ack_outstanding--;
    while (c->ring_lo < c->next_seq &&
           (bm_test(&c->acked, c->ring_lo) || bm_test(&c->refused, c->ring_lo)))
        c->ring_lo++;
    if (w->cfg->scenario == SC_CHURN) {
        w->c.cycles++;
        conn_close_fd(c);
        c->phase = P_WAIT;
        c->retry_at_ns = t;
    }
}

static pair *find_pair(lc *c, uint32_t sidx)
{
    const shared *sh = c->w->sh;
    int p;
    switch (c->w->cfg->scenario) {
    case SC_ROOM:
        p = (int)sidx;
        break;
    case SC_BROADCAST:
        p = 0;
        break;
    default:
        if (sidx % (uint32_t)sh->nreceivers != (uint32_t)c->ridx)
            return NULL;
        p = (int)(sidx / (uint32_t)sh->nreceivers);
        break;
    }
    return p >= 0 && p < c->npairs ? &c->pairs[p] : NULL;
}

static void on_deliver(lc *c, const imp_msg *m, uint64_t t)
{
    worker *w = c->w;
    uint64_t sseq = imp_msg_u(m, IMP_T_SEQ, 0);
    if (sseq > c->max_seq)
        c->max_seq = sseq;
    if (!(c->role & R_RECV))
        return; /* the broadcast sender hears its own messages: only acknowledged */
    imp_bytes b = imp_msg_b(m, IMP_T_BODY);
    if (b.len < BODY_HDR || get_u32(b.p) != BODY_MAGIC)
        return;
    uint32_t sidx = get_u32(b.p + 4);
    uint64_t seq = get_u64(b.p + 8), due = get_u64(b.p + 16);
    if (w->cfg->history_fd >= 0)
        history_deliver(c, sidx, seq, imp_msg_u(m, IMP_T_MSG_ID, 0), sseq);
    pair *p = find_pair(c, sidx);
    if (!p) {
        w->c.proto_errors++;
        report_error(c, "a message from an unexpected sender");
        return;
    }
    if (bm_test(&p->got, seq)) {
        w->c.duplicated++;
        p->dup++;
        return;
    }
    bm_set(&p->got, seq);
    if (seq < p->last)
        w->c.reordered++, p->reord++;
    else
        p->last = seq;
    w->c.delivered++;
    if (due >= w->sh->measure_from_ns) {
        w->c.delivered_measured++;
        hist_record(&w->e2e, t > due ? t - due : 0);
    }
}

static void on_event(lc *c, const imp_msg *m, uint64_t t)
{
    switch (m->type) {
    case IMP_WELCOME:
        if (c->phase == P_HELLO || c->phase == P_CONNECTING)
            on_welcome(c, m);
        break;
    case IMP_AUTH_OK:
        on_auth_ok(c, m);
        break;
    case IMP_OK:
        if (c->phase == P_JOIN && m->request_id == c->join_req)
            became_ready(c);
        break;
    case IMP_ERROR:
        on_error(c, m);
        break;
    case IMP_ACK:
        on_ack(c, m);
        break;
    case IMP_DELIVER:
        on_deliver(c, m, t);
        break;
    case IMP_PONG:
        if (c->ping_sent_ns && m->request_id & CTRL_REQ) {
            c->w->c.pongs++;
            if (c->ping_sent_ns >= c->w->sh->measure_from_ns)
                hist_record(&c->w->ack, t - c->ping_sent_ns);
            c->ping_sent_ns = 0;
        }
        break;
    default:
        break;
    }
}

/* Feed received bytes to libimp and handle the events. 0, or -1 when the connection was closed
 * from a handler or the library failed (the caller stops reading). */
static int feed(lc *c, const uint8_t *p, size_t n, uint64_t t)
{
    while (n > 0 && c->ic) {
        imp_ssize took = imp_conn_feed(c->ic, p, n);
        if (took < 0)
            break;
        p += took;
        n -= (size_t)took;
        imp_msg m;
        int e = 0;
        while (c->ic && (e = imp_conn_next_event(c->ic, &m)) > 0)
            on_event(c, &m, t);
        if (!c->ic)
            return -1; /* closed from a handler */
        if (e < 0)
            return -1;
    }
    return c->ic ? 0 : -1;
}

/* TLS: read records until OpenSSL has nothing buffered (epoll cannot see what it holds). 0 to
 * go on, -1 when the connection is gone or failed. */
static int read_tls(lc *c)
{
    worker *w = c->w;
    uint64_t t = now_ns();
    for (;;) {
        ERR_clear_error();
        int r = SSL_read(c->ssl, w->rbuf, (int)RBUF_SIZE);
        if (r <= 0) {
            int e = SSL_get_error(c->ssl, r);
            if (e == SSL_ERROR_WANT_READ)
                return 0;
            if (e == SSL_ERROR_WANT_WRITE) {
                c->tls_rd_wants_wr = 1;
                set_epout(c, 1);
                return 0;
            }
            char buf[200];
            if (e == SSL_ERROR_ZERO_RETURN || (e == SSL_ERROR_SYSCALL && ERR_peek_error() == 0))
                snprintf(buf, sizeof buf, "connection closed by the server");
            else
                imt_tls_error(c->ssl, buf, sizeof buf);
            conn_lost(c, buf, 1);
            return -1;
        }
        if (feed(c, w->rbuf, (size_t)r, t) != 0)
            return -1;
        if (!SSL_has_pending(c->ssl))
            return 0; /* the rest, if any, is in the socket: epoll says when */
    }
}

static void on_readable(lc *c)
{
    worker *w = c->w;
    if (c->phase == P_TLS) {
        tls_handshake(c);
        return;
    }
    if (c->ssl) {
        if (c->tls_wr_wants_rd) {
            flush_out(c);
            if (!c->ssl)
                return;
        }
        read_tls(c); /* -1: closed (c->ic is gone), or a library error (handled below) */
        if (!c->ic)
            return;
        goto after_read;
    }
    ssize_t r = recv(c->fd, w->rbuf, RBUF_SIZE, 0);
    if (r == 0) {
        conn_lost(c, "connection closed by the server", 1);
        return;
    }
    if (r < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
            conn_lost(c, strerror(errno), 1);
        return;
    }
    uint64_t t = now_ns();
    const uint8_t *p = w->rbuf;
    size_t n = (size_t)r;
    while (n > 0 && c->ic) {
        imp_ssize took = imp_conn_feed(c->ic, p, n);
        if (took < 0)
            break;
        p += took;
        n -= (size_t)took;
        imp_msg m;
        int e = 0;
        while (c->ic && (e = imp_conn_next_event(c->ic, &m)) > 0)
            on_event(c, &m, t);
        if (!c->ic)
            return; /* closed from a handler */
        if (e < 0)
            break;
    }
    if (!c->ic)
        return;
after_read:;
    int err = imp_conn_error(c->ic);
    if (err) {
        char buf[120];
        snprintf(buf, sizeof buf, "protocol error: %s", imp_strerror(err));
        c->w->c.proto_errors++;
        pull_lib_output(c);
        flush_out(c);
        conn_lost(c, buf, 1);
        return;
    }
    if (c->max_seq > c->acked_seq && c->phase == P_READY) {
        imp_msg d;
        imp_msg_init(&d, IMP_DELIVERED, ctrl_req(c));
        imp_msg_set_u(&d, IMP_T_SEQ, c->max_seq);
        if (lib_send(c, &d) < 0)
            return;
        c->acked_seq = c->max_seq;
    }
    pull_lib_output(c);
    if (imp_conn_want_close(c->ic)) {
        flush_out(c);
        conn_lost(c, "closed by the server", 1);
        return;
    }
    if (c->olen > c->ohead)
        flush_out(c);
}

static void on_writable(lc *c)
{
    if (c->phase == P_CONNECTING) {
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err) {
            char buf[160];
            snprintf(buf, sizeof buf, "connect: %s", strerror(err));
            setup_failed(c, buf, 0);
            return;
        }
        conn_connected(c);
        return;
    }
    if (c->phase == P_TLS) {
        tls_handshake(c);
        return;
    }
    if (c->tls_rd_wants_wr) {
        c->tls_rd_wants_wr = 0;
        on_readable(c);
        if (c->fd < 0)
            return;
    }
    flush_out(c);
}

/* ---- the loop -------------------------------------------------------------------------------- */

static void publish(worker *w)
{
    const uint64_t *src = (const uint64_t *)&w->c;
    uint64_t *dst = (uint64_t *)&w->pub;
    for (size_t i = 0; i < sizeof w->c / sizeof(uint64_t); i++)
        __atomic_store_n(&dst[i], src[i], __ATOMIC_RELAXED);
    __atomic_store_n(&w->pub_ready, w->ready, __ATOMIC_RELAXED);
    __atomic_store_n(&w->pub_dead, w->dead, __ATOMIC_RELAXED);
    __atomic_store_n(&w->pub_done, w->done, __ATOMIC_RELAXED);
}

void worker_snapshot(worker *w, counters *out, int *ready, int *dead)
{
    const uint64_t *src = (const uint64_t *)&w->pub;
    uint64_t *dst = (uint64_t *)out;
    for (size_t i = 0; i < sizeof *out / sizeof(uint64_t); i++)
        dst[i] = __atomic_load_n(&src[i], __ATOMIC_RELAXED);
    *ready = __atomic_load_n(g_prepare ? &w->pub_done : &w->pub_ready, __ATOMIC_RELAXED);
    *dead = __atomic_load_n(&w->pub_dead, __ATOMIC_RELAXED);
}

static void send_pings(worker *w, uint64_t t)
{
    for (int i = 0; i < w->nmine; i++) {
        lc *c = w->mine[i];
        if (c->phase != P_READY || t < c->next_ping_ns)
            continue;
        c->next_ping_ns = t + (uint64_t)w->cfg->ping_ms * 1000000u;
        if (c->ping_sent_ns)
            continue; /* the previous one is unanswered */
        imp_msg m;
        imp_msg_init(&m, IMP_PING, ctrl_req(c));
        c->ping_sent_ns = t;
        w->c.pings++;
        if (lib_send(c, &m) == 0)
            flush_out(c);
    }
}

/* --ramp T, open loop: the rate grows linearly from 0 to the full rate r over T, so that
 * n(t) = r t^2 / 2T messages are due by t < T: message k is due at sqrt(2 T k / r) =
 * sqrt(2 T k I) ns for an interval I = 1/r, and after the ramp every I. The square root is by
 * Newton's method from the previous one (no libm). */
static uint64_t ramp_due(lc *c, uint64_t k, uint64_t T)
{
    uint64_t I = c->interval_ns, K = T / (2 * I);
    if (k >= K)
        return c->sched_base + T + (k - K) * I;
    double v = 2.0 * (double)T * (double)k * (double)I;
    double x = c->ramp_prev > 0 ? c->ramp_prev : (v > 1 ? v / 2 : 1);
    for (int i = 0; i < 100; i++) {
        double nx = (x + v / x) / 2;
        double d = nx - x;
        x = nx;
        if (d < 0.5 && d > -0.5)
            break;
    }
    c->ramp_prev = x;
    return c->sched_base + (uint64_t)x;
}

/* Returns the earliest time a sender is due (UINT64_MAX: none). */
static uint64_t schedule(worker *w, uint64_t t)
{
    const config *cfg = w->cfg;
    const shared *sh = w->sh;
    uint64_t until = sh->send_until_ns, next = UINT64_MAX;
    for (int i = 0; i < w->nsenders; i++) {
        lc *c = w->senders[i];
        if (cfg->scenario == SC_CHURN || (!c->quota && !c->unflushed_since))
            continue; /* (the last messages may still wait for --coalesce) */
        if (cfg->rate > 0) {
            if (c->phase == P_READY) {
                while (c->next_due <= t && c->next_due < until && c->quota &&
                       c->olen - c->ohead < OBUF_MAX) {
                    if (!c->unflushed_since)
                        c->unflushed_since = c->next_due;
                    queue_send(c, c->next_due);
                    if (cfg->ramp_ns)
                        c->next_due = ramp_due(c, ++c->sched_k, cfg->ramp_ns);
                    else /* exact: no rounding error accumulates */
                        c->next_due =
                            c->sched_base + (uint64_t)((double)++c->sched_k * c->interval_f);
                }
                /* coalesce: write when the oldest unwritten message has waited --coalesce,
                 * or 64 KiB are pending */
                if (c->unflushed_since &&
                    (t - c->unflushed_since >= cfg->coalesce_ns || c->olen - c->ohead >= 65536)) {
                    c->unflushed_since = 0;
                    flush_out(c);
                }
                if (c->unflushed_since && c->unflushed_since + cfg->coalesce_ns < next)
                    next = c->unflushed_since + cfg->coalesce_ns;
            }
            if (c->next_due < until && c->quota && c->next_due < next)
                next = c->next_due;
        } else if (c->phase == P_READY && t < until) {
            uint64_t before = c->next_seq;
            while (c->inflight < cfg->inflight && c->quota && c->olen - c->ohead < OBUF_MAX)
                queue_send(c, now_ns());
            if (c->next_seq != before)
                flush_out(c);
        }
    }
    return next;
}

static uint64_t splitmix(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

void *worker_main(void *arg)
{
    worker *w = arg;
    shared *sh = w->sh;
    const config *cfg = w->cfg;
    struct epoll_event evs[256];
    int last_phase = -1;
    for (;;) {
        int ph = phase_get(sh);
        if (ph == PH_STOP)
            break;
        uint64_t t = now_ns();
        if (ph != last_phase) {
            last_phase = ph;
            if (ph >= PH_DRAIN) /* open loop: nothing waits for --coalesce any more */
                for (int i = 0; i < w->nsenders; i++) {
                    lc *c = w->senders[i];
                    if (c->unflushed_since) {
                        c->unflushed_since = 0;
                        flush_out(c);
                    }
                }
            if (ph == PH_RUN && !g_prepare) {
                for (int i = 0; i < w->nmine; i++) {
                    lc *c = w->mine[i];
                    if ((c->role & R_SEND) && cfg->seed) {
                        uint64_t x = cfg->seed ^ ((uint64_t)c->sidx << 20);
                        c->next_due = sh->t0_ns + splitmix(&x) % c->interval_ns;
                    } else if (c->role & R_SEND) {
                        c->next_due =
                            sh->t0_ns + (uint64_t)c->sidx * c->interval_ns / (uint64_t)sh->nsenders;
                    }
                    c->sched_base = c->next_due;
                    c->sched_k = 0;
                    c->ramp_prev = 0;
                    c->next_ping_ns =
                        sh->t0_ns + (uint64_t)c->idx * 7919u % (cfg->ping_ms + 1u) * 1000000u;
                }
            }
        }
        /* open connections (bounded number authenticating at once); with many connections
         * the scan runs at most every millisecond (but every time for churn and login,
         * whose connections reopen all the time) */
        int scan = cfg->scenario == SC_CHURN || cfg->scenario == SC_LOGIN || w->nmine < 256 ||
                   t >= w->next_open_scan;
        if (scan)
            w->next_open_scan = t + 1000000u;
        for (int i = 0; scan && i < w->nmine && w->opening < w->auth_cap; i++) {
            lc *c = w->mine[i];
            if ((c->phase == P_IDLE || (c->phase == P_WAIT && t >= c->retry_at_ns)) &&
                may_open(c, ph))
                conn_open(c);
        }
        /* --tls: the TCP connect and the handshake are bounded by --connect-timeout */
        if (cfg->tls_ctx && cfg->connect_timeout_ms && t >= w->next_tmo_scan) {
            w->next_tmo_scan = t + 50000000u;
            uint64_t bound = (uint64_t)cfg->connect_timeout_ms * 1000000u;
            for (int i = 0; i < w->nmine; i++) {
                lc *c = w->mine[i];
                if ((c->phase == P_CONNECTING || c->phase == P_TLS) && t > c->t_open_ns + bound)
                    setup_failed(
                        c, c->phase == P_TLS ? "TLS: handshake timed out" : "connect: timed out",
                        0);
            }
        }
        uint64_t next = UINT64_MAX;
        if (ph == PH_RUN && !g_prepare) {
            next = schedule(w, t);
            if (cfg->scenario == SC_IDLE && t >= w->next_ping_scan) {
                w->next_ping_scan = t + 1000000u;
                send_pings(w, t);
            }
        }
        if (t - w->last_pub_ns >= 10000000u) {
            w->last_pub_ns = t;
            publish(w);
        }
        /* wait: until the next message is due, at most 20 ms */
        uint64_t wait_ns = 20000000u;
        t = now_ns();
        if (next != UINT64_MAX)
            wait_ns = next > t ? (next - t < wait_ns ? next - t : wait_ns) : 0;
        struct timespec ts = {(time_t)(wait_ns / 1000000000u), (long)(wait_ns % 1000000000u)};
        int n = epoll_pwait2(w->ep, evs, 256, &ts, NULL);
        if (n < 0 && errno != EINTR)
            break;
        for (int i = 0; i < n; i++) {
            lc *c = evs[i].data.ptr;
            if (c->fd < 0)
                continue;
            if (evs[i].events & (EPOLLOUT | EPOLLERR | EPOLLHUP))
                on_writable(c);
            if (c->fd >= 0 && (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP)))
                on_readable(c);
        }
    }
    for (int i = 0; i < w->nmine; i++) {
        lc *c = w->mine[i];
        if (c->fd >= 0) {
            conn_close_fd(c);
            if (c->phase != P_DONE)
                c->phase = P_DONE;
        }
    }
    if (w->hlen)
        history_flush(w);
    publish(w);
    return NULL;
}

/* ---- setup ------------------------------------------------------------------------------------
 */

worker *worker_new(shared *sh, int id)
{
    worker *w = calloc(1, sizeof *w);
    if (!w)
        die_oom();
    w->sh = sh;
    w->cfg = sh->cfg;
    w->id = id;
    w->ep = epoll_create1(EPOLL_CLOEXEC);
    w->rbuf = malloc(RBUF_SIZE);
    if (w->ep < 0 || !w->rbuf)
        die_oom();
    if (sh->cfg->history_fd >= 0 && !(w->hbuf = malloc(HBUF_SIZE)))
        die_oom();
    hist_init(&w->ack);
    hist_init(&w->e2e);
    int cap = sh->cfg->auth_inflight / sh->nworkers;
    w->auth_cap = cap > 0 ? cap : 1;
    if (sh->cfg->scenario == SC_CHURN || sh->cfg->scenario == SC_LOGIN)
        w->auth_cap = 1 << 30; /* these measure connection setup: no gate */
    return w;
}

void worker_free(worker *w)
{
    if (!w)
        return;
    close(w->ep);
    free(w->mine);
    free(w->senders);
    free(w->rbuf);
    free(w->hbuf);
    free(w);
}

const counters *worker_counters(const worker *w)
{
    return &w->c;
}
const hist *worker_hist_ack(const worker *w)
{
    return &w->ack;
}
const hist *worker_hist_e2e(const worker *w)
{
    return &w->e2e;
}

void engine_set_prepare(shared *sh, int on)
{
    (void)sh;
    g_prepare = on;
}

/* Lay out the connections of the scenario and give each worker its share. */
int engine_setup(shared *sh)
{
    const config *cfg = sh->cfg;
    int S = 0, R = 0, N = 0;
    switch (cfg->scenario) {
    case SC_DIRECT:
        S = cfg->senders;
        R = cfg->receivers;
        N = S + R;
        sh->fanout = 1;
        break;
    case SC_CHURN:
        S = cfg->senders;
        R = cfg->receivers;
        N = S + R;
        sh->fanout = 1;
        break;
    case SC_ROOM:
        N = cfg->conns;
        S = cfg->senders;
        R = N;
        sh->fanout = cfg->transient ? N - 1 : N; /* see engine_lost */
        break;
    case SC_BROADCAST:
        S = 1;
        R = cfg->receivers;
        N = 1 + R;
        sh->fanout = R;
        break;
    default:
        N = cfg->conns;
        sh->fanout = 0;
        break;
    }
    sh->nconns = N;
    sh->nsenders = S;
    sh->nreceivers = R;
    g_nconns = N;
    g_conns = calloc((size_t)N, sizeof *g_conns);
    if (!g_conns)
        die_oom();
    uint64_t per = 0, extra = 0;
    int owned = 0;
    sh->local_count = 0;
    sh->setup_want = 0;
    if (S > 0 && cfg->count) {
        per = cfg->count / (uint64_t)S;
        extra = cfg->count % (uint64_t)S;
    }
    for (int i = 0; i < N; i++) {
        lc *c = &g_conns[i];
        c->fd = -1;
        c->idx = i;
        c->sidx = -1;
        c->ridx = -1;
        c->next_seq = 1;
        c->ring_lo = 1;
        c->quota = UINT64_MAX;
        c->w = sh->workers[i % sh->nworkers];
        switch (cfg->scenario) {
        case SC_DIRECT:
        case SC_CHURN:
            if (i < S) {
                c->role = R_SEND;
                c->sidx = i;
                snprintf(c->user, sizeof c->user, "%s%s%d", cfg->prefix,
                         cfg->scenario == SC_CHURN ? "c" : "s", i);
                snprintf(c->target, sizeof c->target, "%sr%d", cfg->prefix, i % R);
            } else {
                c->role = R_RECV;
                c->ridx = i - S;
                snprintf(c->user, sizeof c->user, "%sr%d", cfg->prefix, i - S);
                c->npairs = (S + R - 1) / R;
                c->late = cfg->scenario == SC_DIRECT && c->ridx >= R - cfg->late_receivers;
            }
            break;
        case SC_ROOM:
            c->role = R_RECV | (i < S ? R_SEND : 0);
            c->sidx = i < S ? i : -1;
            c->ridx = i;
            c->npairs = S;
            snprintf(c->user, sizeof c->user, "%sm%d", cfg->prefix, i);
            break;
        case SC_BROADCAST:
            if (i == 0) {
                c->role = R_SEND | R_ADMIN;
                c->sidx = 0;
                snprintf(c->user, sizeof c->user, "%s", cfg->admin_user);
            } else {
                c->role = R_RECV;
                c->ridx = i - 1;
                c->npairs = 1;
                snprintf(c->user, sizeof c->user, "%sr%d", cfg->prefix, i - 1);
            }
            break;
        default:
            c->role = 0;
            snprintf(c->user, sizeof c->user, "%su%d", cfg->prefix, i);
            break;
        }
        if (c->npairs) {
            c->pairs = calloc((size_t)c->npairs, sizeof *c->pairs);
            if (!c->pairs)
                die_oom();
        }
        if (c->role & R_SEND) {
            build_template(c);
            if (cfg->count)
                c->quota = per + ((uint64_t)c->sidx < extra ? 1 : 0);
            if (cfg->rate > 0) {
                c->interval_f = (double)S * 1e9 / cfg->rate;
                c->interval_ns = (uint64_t)c->interval_f;
            }
            if (c->interval_ns == 0)
                c->interval_ns = 1;
        }
        if (cfg->scenario == SC_CHURN && !(c->role & R_SEND))
            c->quota = 0;
        /* --procs: a receiver and the senders that send to it live in the same process */
        int owner = i % cfg->procs;
        if (cfg->scenario == SC_DIRECT || cfg->scenario == SC_CHURN)
            owner = (c->role & R_SEND) ? (i % R) % cfg->procs : (i - S) % cfg->procs;
        if (cfg->procs > 1 && owner != cfg->proc_index) {
            c->w = NULL;
            continue;
        }
        c->w = sh->workers[owned % sh->nworkers];
        c->ord = owned;
        owned++;
        if (cfg->scenario != SC_LOGIN && !(cfg->scenario == SC_CHURN && (c->role & R_SEND)) &&
            !c->late)
            sh->setup_want++;
        if (g_probe < 0 && !(c->role & R_ADMIN) && !c->late &&
            !(cfg->scenario == SC_CHURN && (c->role & R_SEND)))
            g_probe = i;
        if ((c->role & R_SEND) && cfg->count)
            sh->local_count += c->quota;
        worker *w = c->w;
        lc **nm = realloc(w->mine, (size_t)(w->nmine + 1) * sizeof *nm);
        if (!nm)
            die_oom();
        w->mine = nm;
        w->mine[w->nmine++] = c;
        if (c->role & R_SEND) {
            lc **ns = realloc(w->senders, (size_t)(w->nsenders + 1) * sizeof *ns);
            if (!ns)
                die_oom();
            w->senders = ns;
            w->senders[w->nsenders++] = c;
        }
    }
    sh->nconns = owned;
    return 0;
}

/* Before a second run on the same layout (after --prepare): every connection idle again. */
void engine_reset(shared *sh)
{
    for (int i = 0; i < g_nconns; i++) {
        lc *c = &g_conns[i];
        if (!c->w)
            continue;
        c->phase = P_IDLE;
        c->counted_dead = 0;
        c->was_ready = 0;
    }
    for (int i = 0; i < sh->nworkers; i++) {
        worker *w = sh->workers[i];
        memset(&w->c, 0, sizeof w->c);
        w->ready = w->dead = w->done = w->opening = 0;
        publish(w);
    }
}

static uint64_t popcount_range_missing(const bitmap *want, uint64_t lo, uint64_t hi,
                                       const bitmap *got, int use_want)
{
    /* count i in [lo, hi) that are in want (or all, when !use_want) and not in got */
    uint64_t n = 0;
    for (uint64_t i = lo; i < hi;) {
        size_t wi = (size_t)(i >> 6);
        if ((i & 63) == 0 && i + 64 <= hi) {
            uint64_t a = use_want ? (wi < want->nw ? want->w[wi] : 0) : ~0ull;
            uint64_t g = wi < got->nw ? got->w[wi] : 0;
            n += (uint64_t)__builtin_popcountll(a & ~g);
            i += 64;
            continue;
        }
        if ((!use_want || bm_test(want, i)) && !bm_test(got, i))
            n++;
        i++;
    }
    return n;
}

uint64_t engine_lost(shared *sh, uint64_t *unconfirmed)
{
    const config *cfg = sh->cfg;
    uint64_t lost = 0, unconf = 0;
    if (cfg->scenario != SC_DIRECT && cfg->scenario != SC_ROOM && cfg->scenario != SC_BROADCAST &&
        cfg->scenario != SC_CHURN) {
        *unconfirmed = 0;
        return 0;
    }
    int R = sh->nreceivers;
    for (int i = 0; i < g_nconns; i++) {
        lc *r = &g_conns[i];
        if (!(r->role & R_RECV) || !r->w)
            continue;
        for (int p = 0; p < r->npairs; p++) {
            int sidx;
            if (cfg->scenario == SC_ROOM)
                sidx = p;
            else if (cfg->scenario == SC_BROADCAST)
                sidx = 0;
            else
                sidx = p * R + r->ridx;
            if (sidx >= sh->nsenders)
                continue;
            lc *s = cfg->scenario == SC_BROADCAST ? &g_conns[0] : &g_conns[sidx];
            /* imd does not echo a transient message to the connection that sent it (durable
             * room messages do come back to it, with the sender's own sequence number) */
            if (s == r && cfg->transient)
                continue;
            uint64_t pl;
            if (cfg->ack == IMP_ACK_NONE) {
                pl = popcount_range_missing(NULL, 1, s->next_seq, &r->pairs[p].got, 0);
            } else {
                pl = popcount_range_missing(&s->acked, 1, s->next_seq, &r->pairs[p].got, 1);
                /* sent, neither acknowledged nor refused nor delivered */
                for (uint64_t q = s->ring_lo; q < s->next_seq; q++)
                    if (!bm_test(&s->acked, q) && !bm_test(&s->refused, q) &&
                        !bm_test(&r->pairs[p].got, q))
                        unconf++;
            }
            lost += pl;
            const pair *pp = &r->pairs[p];
            if ((pl || pp->dup || pp->reord) && sh->nanomalies < ANOMALY_MAX) {
                anomaly *a = &sh->anomalies[sh->nanomalies++];
                snprintf(a->sender, sizeof a->sender, "%s", s->user);
                snprintf(a->receiver, sizeof a->receiver, "%s", r->user);
                a->lost = pl;
                a->duplicated = pp->dup;
                a->reordered = pp->reord;
            }
        }
    }
    *unconfirmed = unconf;
    return lost;
}

uint64_t engine_unsent(shared *sh, uint64_t send_end_ns)
{
    const config *cfg = sh->cfg;
    if (cfg->rate <= 0)
        return 0;
    uint64_t end = send_end_ns < sh->send_until_ns ? send_end_ns : sh->send_until_ns;
    uint64_t n = 0;
    for (int i = 0; i < g_nconns; i++) {
        const lc *c = &g_conns[i];
        if (!(c->role & R_SEND) || !c->w || cfg->scenario == SC_CHURN || !c->quota ||
            c->next_due >= end)
            continue;
        uint64_t k = (end - c->next_due - 1) / c->interval_ns + 1;
        n += k < c->quota ? k : c->quota;
    }
    return n;
}

void engine_teardown(void)
{
    for (int i = 0; i < g_nconns; i++) {
        lc *c = &g_conns[i];
        free(c->obuf);
        free(c->tmpl);
        free(c->ring);
        free(c->acked.w);
        free(c->refused.w);
        for (int p = 0; p < c->npairs; p++)
            free(c->pairs[p].got.w);
        free(c->pairs);
        if (c->ic)
            imp_conn_free(c->ic);
    }
    free(g_conns);
    g_conns = NULL;
    g_nconns = 0;
}
