/* imd — the network layer (see net.h). */
#include "net.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/http.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include "log.h"
#include "tls.h"

#define READ_CHUNK 65536
/* Segments per gathering write: the output buffer and the shared frames after it (a room
 * member's DELIVERs of a turn, imp_conn_send_shared); more are written by the next sendmsg. */
#define WRITE_IOV 256
#define ACCEPT_BATCH 64
#define TICK_MS 100
#define EMFILE_PAUSE_MS 100
#define NET_MAX_LISTEN (2 * IMS_MAX_LISTEN) /* listen + tls_listen */
/* TLS connections: the core's output is copied into the bufferevent only while it holds less
 * than TLS_OUT_HIGH bytes, so the core's own output accounting (output_soft/output_hard, slow
 * consumers) sees the backlog; the socket's output draining to TLS_OUT_LOW refills it. */
#define TLS_OUT_HIGH (256 * 1024)
#define TLS_OUT_LOW (64 * 1024)
/* Connections whose input was read in a turn are written first in it (their answers: ACKs,
 * OKs), at most this many per turn; the others follow in the dirty list's order. */
#define ANSWER_FIRST_MAX 64
/* Fan-out output is coalesced across two turns (issue 3: room fan-out): in a turn that read
 * requests (whose answers were just written, so their senders' next requests are on the way), a
 * connection that read nothing and holds between HOLD_MIN and HOLD_MAX bytes (only a large
 * fan-out queues that much in one turn: a light load never waits) is written in the next turn
 * instead, with that turn's output: one write, and one wake-up of its reader, for twice the
 * frames. Never twice in a row, and at most HOLD_US later (a timer runs the next turn). What is
 * queued and every connection's order are unchanged: only when it is written. */
#define HOLD_MIN 4096
#define HOLD_MAX (32 * 1024)
#define HOLD_US 1000
/* netconn.dirty bits */
#define D_LISTED 1 /* on the dirty list (or the held list, with D_HELD) */
#define D_FIRST 2  /* in ims_net.first (written first in the turn) */
#define D_HELD 4   /* on the held list: written in the next turn */
#define D_NOHOLD 8 /* read in this turn, or held in the last one: written in this one */

typedef struct netconn netconn;

/* TLS connections' state (in a netconn's tail). */
struct tls_state {
    struct bufferevent *bev;          /* the OpenSSL filter */
    struct bufferevent *under;        /* the socket bufferevent under it */
    struct evbuffer_cb_entry *out_cb; /* on under's output (drained: flush more) */
    struct event *hs_ev;              /* the handshake deadline */
    int ok;                           /* handshake completed */
    int flushing;                     /* inside tls_flush (libevent may call back) */
    int broken;                       /* closed while flushing: the reason, freed after */
    char peer[64];                    /* for the logs (a TLS connection costs far more anyway) */
};

/* One per connection, in one allocation with what follows it (the tail): a plain connection's
 * one struct event (event_assign: its size is libevent's, event_get_struct_event_size), or a
 * TLS connection's tls_state. An idle logged-in connection costs this, the core's client and
 * libimp's connection object (issue 3: 10,000 idle connections, <= 1 KiB each): a plain
 * connection watches both directions with the one event, re-assigned with EV_WRITE only while
 * output waits for the socket. A plain connection's peer text is the core's only (a TLS one
 * keeps a copy for its logs). */
struct netconn {
    ims_net *net;
    ims_client *cl;
    netconn *dirty_next;  /* dirty list */
    netconn *prev, *next; /* all connections */
    evutil_socket_t fd;
    uint8_t tls;     /* a TLS connection (the tail is a tls_state) */
    uint8_t dirty;   /* D_LISTED, D_FIRST */
    uint8_t reading; /* plain: input is read (not once the connection is closing) */
    uint8_t want;    /* plain: EV_READ | EV_WRITE the event is added with, 0 = not added */
};

/* the tail starts right after the netconn, aligned for anything */
_Static_assert(sizeof(netconn) % _Alignof(max_align_t) == 0, "netconn tail alignment");
#define TAIL(c) ((void *)((char *)(c) + sizeof(netconn)))
#define T(c) ((struct tls_state *)TAIL(c))
#define EV(c) ((struct event *)TAIL(c))

typedef struct listener {
    ims_net *net;
    evutil_socket_t fd;
    struct event *ev;
    char name[160];
    char unix_path[108];
    int tls;
} listener;

struct ims_net {
    struct event_base *base;
    ims_server *srv;
    listener ls[NET_MAX_LISTEN];
    int nls;
    ims_tls *tls;               /* NULL without tls_listen */
    uint32_t tls_hs_timeout_ms; /* tls_handshake_timeout_ms */
    uint64_t tls_handshakes, tls_handshake_failures;
    struct evhttp *http;
    struct event *turn_ev, *tick_ev, *wake_ev, *grace_ev, *resume_ev;
    int wake_pipe[2];
    int reserve_fd; /* closed and reopened to shed a connection on EMFILE */
    netconn *conns;
    int nconns;
    netconn *dirty;
    netconn *held;         /* D_HELD connections (linked by dirty_next) */
    struct event *hold_ev; /* runs a turn HOLD_US after connections were held */
    /* connections read since the last turn, written first in it (a requester's answer does
     * not wait behind a room's fan-out to every member): NULL where one was freed */
    netconn *first[ANSWER_FIRST_MAX];
    int nfirst;
    int shutting_down;
    int in_turn;
    /* where the output goes (/metrics imd_net_*): plain sends, sends that did not take all
     * (EAGAIN or short), recvs, turns */
    uint64_t st_sends, st_sends_short, st_recvs, st_turns, st_held;
};

/* ---- helpers -------------------------------------------------------------------------------- */

static void format_peer(const struct sockaddr *sa, socklen_t len, char *out, size_t cap)
{
    char host[INET6_ADDRSTRLEN] = "?";
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)(const void *)sa;
        inet_ntop(AF_INET, &in->sin_addr, host, sizeof host);
        snprintf(out, cap, "%s:%u", host, ntohs(in->sin_port));
    } else if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)(const void *)sa;
        inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof host);
        snprintf(out, cap, "[%s]:%u", host, ntohs(in6->sin6_port));
    } else {
        (void)len;
        snprintf(out, cap, "unix");
    }
}

static void schedule_turn(ims_net *n)
{
    if (!n->in_turn)
        event_active(n->turn_ev, EV_WRITE, 0);
}

static void mark_dirty(netconn *c)
{
    if (c->dirty & D_LISTED)
        return;
    c->dirty |= D_LISTED;
    c->dirty_next = c->net->dirty;
    c->net->dirty = c;
    schedule_turn(c->net);
}

/* c's input was read: dirty, and written before the rest of the turn's output (when there is
 * room in ims_net.first; else in the dirty list's order like any other). */
static void mark_answer(netconn *c)
{
    ims_net *n = c->net;
    if (!(c->dirty & D_FIRST) && n->nfirst < ANSWER_FIRST_MAX) {
        c->dirty |= D_FIRST;
        n->first[n->nfirst++] = c;
    }
    mark_dirty(c);
    c->dirty |= D_NOHOLD; /* its answers are not held (HOLD_MIN) */
}

static void conn_free(netconn *c, int reason)
{
    ims_net *n = c->net;
    if (c->dirty & D_LISTED) { /* unlink from the dirty (or held) list */
        for (netconn **pp = (c->dirty & D_HELD) ? &n->held : &n->dirty; *pp;
             pp = &(*pp)->dirty_next)
            if (*pp == c) {
                *pp = c->dirty_next;
                break;
            }
    }
    if (c->dirty & D_FIRST)
        for (int i = 0; i < n->nfirst; i++)
            if (n->first[i] == c)
                n->first[i] = NULL;
    if (c->cl)
        ims_client_closed(c->cl, reason);
    if (c->tls) {
        if (T(c)->hs_ev)
            event_free(T(c)->hs_ev);
        evbuffer_remove_cb_entry(bufferevent_get_output(T(c)->under), T(c)->out_cb);
        /* CLOSE_ON_FREE: frees the SSL and the socket bufferevent, which closes the socket */
        bufferevent_free(T(c)->bev);
    } else {
        event_del(EV(c));
        evutil_closesocket(c->fd);
    }
    if (c->prev)
        c->prev->next = c->next;
    else
        n->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    n->nconns--;
    free(c);
    if (n->shutting_down && n->nconns == 0)
        event_base_loopexit(n->base, NULL);
}

static int tls_flush(netconn *c);
static void on_io(evutil_socket_t fd, short what, void *arg);

/* Plain connections: adds the event for want (EV_READ, EV_WRITE, both or none), re-assigned
 * when that changes (only then: the hot path of a connection whose writes complete at once
 * never touches the event). */
static void plain_watch(netconn *c, short want)
{
    if (c->want == want)
        return;
    struct event *ev = EV(c);
    event_del(ev);
    c->want = (uint8_t)want;
    if (!want)
        return;
    event_assign(ev, c->net->base, c->fd, (short)(want | EV_PERSIST), on_io, c);
    event_priority_set(ev, 0);
    event_add(ev, NULL);
}

/* Writes what the core has queued. Returns -1 when the connection was closed (freed). The
 * output is gathered (sendmsg): the core's buffer and the frames it shares with other
 * connections (a room's DELIVERs, queued by reference), so the kernel copies each shared frame
 * from one place, hot in the cache, instead of from a copy in every member's buffer. */
static int conn_flush(netconn *c)
{
    if (c->tls)
        return tls_flush(c);
    static imp_iovec seg[WRITE_IOV];
    static struct iovec iov[WRITE_IOV];
    for (;;) {
        int k = ims_client_output_iov(c->cl, seg, WRITE_IOV);
        if (k == 0)
            break;
        size_t len = 0;
        ssize_t w;
        if (k == 1) { /* one segment (no shared frames): a plain send */
            len = seg[0].len;
            w = send(c->fd, seg[0].base, len, MSG_NOSIGNAL);
        } else {
            for (int i = 0; i < k; i++) {
                iov[i].iov_base = (void *)(uintptr_t)seg[i].base; /* sendmsg only reads it */
                iov[i].iov_len = seg[i].len;
                len += seg[i].len;
            }
            struct msghdr mh;
            memset(&mh, 0, sizeof mh);
            mh.msg_iov = iov;
            mh.msg_iovlen = (size_t)k;
            w = sendmsg(c->fd, &mh, MSG_NOSIGNAL);
        }
        c->net->st_sends++;
        if (w < (ssize_t)len)
            c->net->st_sends_short++;
        if (w < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                plain_watch(c, (short)(c->want | EV_WRITE));
                return 0;
            }
            if (errno == EINTR)
                continue;
            conn_free(c, 733); /* CONNECTION_LOST */
            return -1;
        }
        ims_server_count_bytes(c->net->srv, 0, (uint64_t)w);
        ims_client_consumed(c->cl, (size_t)w); /* may queue more (flow control) */
        if ((size_t)w < len) {
            plain_watch(c, (short)(c->want | EV_WRITE));
            return 0;
        }
    }
    plain_watch(c, c->reading ? EV_READ : 0);
    if (ims_client_done(c->cl)) {
        /* Everything written: a clean close. The core already knows the reason. */
        shutdown(c->fd, SHUT_WR);
        conn_free(c, 0);
        return -1;
    }
    return 0;
}

/* ---- connection callbacks ------------------------------------------------------------------ */

/* Returns -1 when the connection was closed (freed). */
static int on_read(netconn *c)
{
    static uint8_t buf[READ_CHUNK];
    ssize_t r = recv(c->fd, buf, sizeof buf, 0);
    c->net->st_recvs++;
    if (r == 0) {
        conn_free(c, 733);
        return -1;
    }
    if (r < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
            return 0;
        conn_free(c, 733);
        return -1;
    }
    ims_server_count_bytes(c->net->srv, (uint64_t)r, 0);
    ims_client_input(c->cl, buf, (size_t)r);
    if (ims_client_done(c->cl)) {
        c->reading = 0; /* nothing more is read from a closing connection */
        plain_watch(c, (short)(c->want & EV_WRITE));
    }
    mark_answer(c);
    return 0;
}

static void on_io(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    netconn *c = arg;
    if ((what & EV_READ) && c->reading && on_read(c) < 0)
        return;
    if ((what & EV_WRITE) && (c->want & EV_WRITE) && conn_flush(c) == 0)
        schedule_turn(c->net); /* output drained: the core may have queued more deliveries */
}

static void io_want_write(void *io_ctx)
{
    mark_dirty(io_ctx);
}

ims_io_ops ims_net_io_ops(void)
{
    ims_io_ops ops = {io_want_write};
    return ops;
}

/* ---- TLS connections (IMP-SEC-005): libevent OpenSSL bufferevents ---------------------------
 *
 * Plain connections keep their raw sockets (above); a TLS connection is an OpenSSL filter
 * bufferevent (BUFFEREVENT_SSL_ACCEPTING) over a socket bufferevent. The filter, not
 * bufferevent_openssl_socket_new: a socket-based one decrypts at most two records per turn of
 * the loop, so a client pipelining many small frames would cost one group commit (an fsync)
 * per frame or two; the filter decrypts all that one read of up to READ_CHUNK bytes brought,
 * like the plain path. The core is the same: it was told about the connection at accept
 * (limits, per-address limits, the auth deadline and PINGs apply as to plain ones), its input
 * is what the filter decrypted, and its output is copied into the filter only while the filter
 * and the socket bufferevent hold less than TLS_OUT_HIGH bytes together (so the core's output
 * caps and slow-consumer checks see the backlog); when the socket's output drains below
 * TLS_OUT_LOW the connection is flushed again. A handshake that fails (plain text on the
 * port, an old version, a bad record) closes at once as a protocol close; one that does not
 * complete within tls_handshake_timeout_ms closes as an auth timeout. */

/* OpenSSL's errors of this bufferevent as one line into buf; 1 when there was one. Without
 * one, the socket error of a BEV_EVENT_ERROR. */
static int tls_error_text(netconn *c, short what, char *buf, size_t len)
{
    size_t n = 0;
    unsigned long e;
    buf[0] = 0;
    while ((e = bufferevent_get_openssl_error(T(c)->bev)) != 0) {
        const char *r = ERR_reason_error_string(e);
        char one[128];
        if (!r) {
            ERR_error_string_n(e, one, sizeof one);
            r = one;
        }
        if (n + 3 < len) {
            int w = snprintf(buf + n, len - n, "%s%s", n ? "; " : "", r);
            if (w > 0)
                n += (size_t)w < len - n ? (size_t)w : len - n - 1;
        }
    }
    if (n > 0)
        return 1;
    int se = EVUTIL_SOCKET_ERROR();
    if ((what & BEV_EVENT_ERROR) && se != 0)
        snprintf(buf, len, "%s", evutil_socket_error_to_string(se));
    return 0;
}

/* Bytes handed to TLS and not yet written to the socket. */
static size_t tls_pending(netconn *c)
{
    return evbuffer_get_length(bufferevent_get_output(T(c)->bev)) +
           evbuffer_get_length(bufferevent_get_output(T(c)->under));
}

static int tls_flush(netconn *c)
{
    struct evbuffer *out = bufferevent_get_output(T(c)->bev);
    for (;;) {
        size_t have = tls_pending(c);
        if (have >= TLS_OUT_HIGH)
            break; /* tls_on_drain continues at TLS_OUT_LOW */
        const uint8_t *p;
        size_t len = ims_client_output(c->cl, &p);
        if (len == 0)
            break;
        size_t k = len < TLS_OUT_HIGH - have ? len : TLS_OUT_HIGH - have;
        /* Adding encrypts at once (the filter's output callback), and an error there runs
         * tls_on_event from inside evbuffer_add: it leaves the free to us. */
        T(c)->flushing = 1;
        int r = evbuffer_add(out, p, k);
        T(c)->flushing = 0;
        if (r != 0 || T(c)->broken) {
            conn_free(c, T(c)->broken ? T(c)->broken : 733);
            return -1;
        }
        ims_server_count_bytes(c->net->srv, 0, (uint64_t)k);
        ims_client_consumed(c->cl, k); /* may queue more (flow control) */
    }
    if (ims_client_done(c->cl)) {
        /* Closing: free once everything went out. A connection still in its handshake has
         * nobody to tell when the server stops. */
        if (tls_pending(c) == 0 || (!T(c)->ok && c->net->shutting_down)) {
            conn_free(c, 0);
            return -1;
        }
        bufferevent_disable(T(c)->bev, EV_READ);
    }
    return 0;
}

static void tls_on_read(struct bufferevent *bev, void *arg)
{
    netconn *c = arg;
    static uint8_t buf[READ_CHUNK];
    struct evbuffer *in = bufferevent_get_input(bev);
    int r;
    while ((r = evbuffer_remove(in, buf, sizeof buf)) > 0) {
        ims_server_count_bytes(c->net->srv, (uint64_t)r, 0);
        ims_client_input(c->cl, buf, (size_t)r);
        if (ims_client_done(c->cl)) {
            /* nothing more is read from a closing connection */
            evbuffer_drain(in, evbuffer_get_length(in));
            bufferevent_disable(bev, EV_READ);
            break;
        }
    }
    mark_answer(c);
}

/* The socket bufferevent wrote some output: below TLS_OUT_LOW, flush more (in the turn: this
 * runs inside libevent's write path, where c must not be freed). */
static void tls_on_drain(struct evbuffer *b, const struct evbuffer_cb_info *info, void *arg)
{
    netconn *c = arg;
    if (info->n_deleted && evbuffer_get_length(b) <= TLS_OUT_LOW)
        mark_dirty(c);
}

/* Frees c now, or after tls_flush when libevent called back from inside it. */
static void tls_close(netconn *c, int reason)
{
    if (T(c)->flushing)
        T(c)->broken = reason;
    else
        conn_free(c, reason);
}

static void tls_on_event(struct bufferevent *bev, short what, void *arg)
{
    netconn *c = arg;
    ims_net *n = c->net;
    if (what & BEV_EVENT_CONNECTED) {
        T(c)->ok = 1;
        n->tls_handshakes++;
        event_del(T(c)->hs_ev);
        if (ims_log_enabled(IMS_LOG_DEBUG)) {
            SSL *ssl = bufferevent_openssl_get_ssl(bev);
            ims_log(IMS_LOG_DEBUG, "tls_handshake", "peer=%s version=%s cipher=%s", T(c)->peer,
                    SSL_get_version(ssl), SSL_get_cipher_name(ssl));
        }
        mark_dirty(c); /* what the core queued meanwhile is on its way; look again */
        return;
    }
    if (!(what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)))
        return;
    char why[256];
    int ssl_err = tls_error_text(c, what, why, sizeof why);
    if (!T(c)->ok) {
        /* OpenSSL's alert (protocol version, ...) tells the peer why: one best-effort
         * non-blocking write of it before the socket closes */
        struct evbuffer_iovec v[2]; /* (peek: the socket bufferevent's output is frozen) */
        int nv = evbuffer_peek(bufferevent_get_output(T(c)->under), 512, NULL, v, 2);
        for (int i = 0; i < nv && i < 2; i++)
            if (send(bufferevent_getfd(T(c)->under), v[i].iov_base, v[i].iov_len, MSG_NOSIGNAL) < 0)
                break;
        n->tls_handshake_failures++;
        ims_log(IMS_LOG_INFO, "tls_handshake_failed", "peer=%s reason=\"%s\"", T(c)->peer,
                why[0] ? why : "closed by the peer");
        /* a failed handshake is a protocol close; a peer that just went away is not */
        tls_close(c, ssl_err ? 700 : 733);
        return;
    }
    if ((what & BEV_EVENT_ERROR) && ims_log_enabled(IMS_LOG_DEBUG))
        ims_log(IMS_LOG_DEBUG, "tls_error", "peer=%s reason=\"%s\"", T(c)->peer, why);
    tls_close(c, 733); /* CONNECTION_LOST */
}

static void tls_on_handshake_timeout(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    netconn *c = arg;
    c->net->tls_handshake_failures++;
    ims_log(IMS_LOG_INFO, "tls_handshake_failed", "peer=%s reason=\"timeout after %u ms\"",
            T(c)->peer, (unsigned)c->net->tls_hs_timeout_ms);
    conn_free(c, 600); /* counted as close.auth_timeout */
}

/* Makes c a TLS connection on fd. 0, or -1 (out of memory: fd closed, or in an unknown state
 * inside libevent, which is not worth a double free). */
static int tls_attach(ims_net *n, netconn *c, int fd)
{
    SSL *ssl = ims_tls_ssl_new(n->tls);
    if (!ssl) {
        close(fd);
        return -1;
    }
    T(c)->under = bufferevent_socket_new(n->base, fd, BEV_OPT_CLOSE_ON_FREE);
    if (!T(c)->under) {
        SSL_free(ssl);
        close(fd);
        return -1;
    }
    bufferevent_priority_set(T(c)->under, 0);
    T(c)->bev = bufferevent_openssl_filter_new(n->base, T(c)->under, ssl, BUFFEREVENT_SSL_ACCEPTING,
                                               BEV_OPT_CLOSE_ON_FREE);
    if (!T(c)->bev)
        return -1;
    T(c)->hs_ev = evtimer_new(n->base, tls_on_handshake_timeout, c);
    T(c)->out_cb = evbuffer_add_cb(bufferevent_get_output(T(c)->under), tls_on_drain, c);
    if (!T(c)->hs_ev || !T(c)->out_cb) {
        if (T(c)->out_cb)
            evbuffer_remove_cb_entry(bufferevent_get_output(T(c)->under), T(c)->out_cb);
        if (T(c)->hs_ev)
            event_free(T(c)->hs_ev);
        bufferevent_free(T(c)->bev);
        T(c)->bev = NULL;
        return -1;
    }
    event_priority_set(T(c)->hs_ev, 0);
    bufferevent_priority_set(T(c)->bev, 0);
    bufferevent_set_max_single_read(T(c)->under, READ_CHUNK);
    /* the filter encrypts into the socket's output up to TLS_OUT_HIGH, no further */
    bufferevent_setwatermark(T(c)->under, EV_WRITE, 0, TLS_OUT_HIGH);
    /* a peer that closes without close_notify has just gone away (CONNECTION_LOST) */
    bufferevent_openssl_set_allow_dirty_shutdown(T(c)->bev, 1);
    bufferevent_setcb(T(c)->bev, tls_on_read, NULL, tls_on_event, c);
    uint32_t ms = n->tls_hs_timeout_ms ? n->tls_hs_timeout_ms : 5000;
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000};
    event_add(T(c)->hs_ev, &tv);
    return 0;
}

/* ---- the turn: group commit, then output ------------------------------------------------ */

/* c may be held (HOLD_MIN): a plain open connection with a fan-out's worth of output. */
static int conn_holds(netconn *c)
{
    if (c->tls || ims_client_done(c->cl))
        return 0;
    size_t len = ims_client_pending(c->cl);
    return len >= HOLD_MIN && len < HOLD_MAX;
}

static void on_turn(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    ims_net *n = arg;
    n->in_turn = 1;
    n->st_turns++;
    ims_server_turn_end(n->srv);
    int answered = n->nfirst > 0; /* requests were read: more are on the way (HOLD_MIN) */
    /* (a connection read is D_NOHOLD: mark_answer) */
    if (n->held) { /* held in the last turn: written in this one (still D_LISTED) */
        event_del(n->hold_ev);
        while (n->held) {
            netconn *c = n->held;
            n->held = c->dirty_next;
            c->dirty = (uint8_t)((c->dirty & ~D_HELD) | D_NOHOLD);
            c->dirty_next = n->dirty;
            n->dirty = c;
        }
    }
    /* The connections read in this turn first: their answers (a sender's ACKs) reach them
     * before the turn's fan-out to the other connections is written, so a client that keeps a
     * window of requests in flight sends its next ones while that is written, and they are read
     * in the next turn (issue 3: more messages per turn, so more of them per write). What is
     * queued, and the order of every connection's own output, is the same in any order of
     * writing. They stay on the dirty list: a second flush there finds little or nothing. */
    for (int i = 0; i < n->nfirst; i++) {
        netconn *c = n->first[i];
        if (c) {
            c->dirty = (uint8_t)((c->dirty & ~D_FIRST) | D_NOHOLD);
            n->first[i] = NULL;
            conn_flush(c);
        }
    }
    n->nfirst = 0;
    /* Flushing may make the core queue more (deliveries continue as output drains) and even
     * commit again; bounded so that one turn cannot starve the sockets. */
    for (int round = 0; round < 8 && n->dirty; round++) {
        netconn *list = n->dirty;
        n->dirty = NULL;
        while (list) {
            netconn *c = list;
            list = c->dirty_next;
            if (round == 0 && answered && !(c->dirty & D_NOHOLD) && conn_holds(c)) {
                c->dirty |= D_HELD; /* stays D_LISTED */
                c->dirty_next = n->held;
                n->held = c;
                n->st_held++;
                continue;
            }
            c->dirty &= (uint8_t) ~(D_LISTED | D_NOHOLD);
            c->dirty_next = NULL;
            conn_flush(c);
        }
        ims_server_turn_end(n->srv);
    }
    if (n->held) {
        struct timeval tv = {0, HOLD_US};
        event_add(n->hold_ev, &tv);
    }
    n->in_turn = 0;
    if (n->dirty)
        event_active(n->turn_ev, EV_WRITE, 0);
}

static void on_hold(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    schedule_turn(arg);
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    ims_net *n = arg;
    ims_server_tick(n->srv);
    schedule_turn(n);
}

static void on_wake(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    ims_net *n = arg;
    char buf[256];
    while (read(fd, buf, sizeof buf) > 0)
        ;
    ims_server_auth_ready(n->srv);
    schedule_turn(n);
}

void ims_net_auth_wake(void *net)
{
    ims_net *n = net;
    char b = 1;
    ssize_t r = write(n->wake_pipe[1], &b, 1); /* a full pipe already wakes the loop */
    (void)r;
}

/* ---- accepting ------------------------------------------------------------------------------ */

static void on_resume_accept(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    ims_net *n = arg;
    if (n->shutting_down)
        return;
    for (int i = 0; i < n->nls; i++)
        event_add(n->ls[i].ev, NULL);
}

static void on_accept(evutil_socket_t lfd, short what, void *arg)
{
    (void)what;
    listener *l = arg;
    ims_net *n = l->net;
    for (int i = 0; i < ACCEPT_BATCH; i++) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof ss;
        int fd = accept4(lfd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return;
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            ims_server_count_accept_error(n->srv);
            if (errno == EMFILE || errno == ENFILE) {
                /* Out of descriptors: shed the waiting connection with the reserve descriptor
                 * so the listener does not spin, then pause accepting briefly. (The reserve-fd
                 * idea is libev's and nginx's; REFERENCE.md: evconnlistener spins on EMFILE.) */
                if (n->reserve_fd >= 0) {
                    close(n->reserve_fd);
                    int s = accept(lfd, NULL, NULL);
                    if (s >= 0)
                        close(s);
                    n->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
                }
                ims_log(IMS_LOG_WARN, "accept_paused", "reason=%s", strerror(errno));
                for (int k = 0; k < n->nls; k++)
                    event_del(n->ls[k].ev);
                struct timeval tv = {0, EMFILE_PAUSE_MS * 1000};
                event_add(n->resume_ev, &tv);
                return;
            }
            ims_log(IMS_LOG_WARN, "accept_error", "reason=%s", strerror(errno));
            return;
        }
        size_t tail = l->tls ? sizeof(struct tls_state) : event_get_struct_event_size();
        netconn *c = calloc(1, sizeof *c + tail);
        if (!c) {
            close(fd);
            ims_server_count_accept_error(n->srv);
            return;
        }
        if (ss.ss_family != AF_UNIX) {
            int one = 1;
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        }
        c->net = n;
        c->fd = fd;
        char peer[64];
        format_peer((struct sockaddr *)&ss, sl, peer, sizeof peer);
        if (l->tls) {
            c->tls = 1;
            memcpy(T(c)->peer, peer, sizeof peer);
            if (tls_attach(n, c, fd) != 0) {
                free(c);
                ims_server_count_accept_error(n->srv);
                return;
            }
            c->next = n->conns;
            if (n->conns)
                n->conns->prev = c;
            n->conns = c;
            n->nconns++;
            c->cl = ims_server_accept(n->srv, peer, c);
            if (!c->cl) {
                conn_free(c, 201);
                continue;
            }
            bufferevent_enable(T(c)->bev, EV_READ | EV_WRITE);
            mark_dirty(c); /* a connection over a limit is born closing with output */
            continue;
        }
        /* assigned now (not added): conn_free may event_del it */
        event_assign(EV(c), n->base, fd, EV_READ | EV_PERSIST, on_io, c);
        c->next = n->conns;
        if (n->conns)
            n->conns->prev = c;
        n->conns = c;
        n->nconns++;
        c->cl = ims_server_accept(n->srv, peer, c);
        if (!c->cl) {
            conn_free(c, 201);
            continue;
        }
        c->reading = 1;
        plain_watch(c, EV_READ);
        mark_dirty(c); /* a connection over a limit is born closing with output */
    }
}

static int listen_tcp(ims_net *n, const ims_addr_spec *a, int tls, FILE *out, char *err,
                      size_t errlen)
{
    char port[16];
    snprintf(port, sizeof port, "%d", a->port);
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    int gr = getaddrinfo(a->host[0] ? a->host : NULL, port, &hints, &res);
    if (gr != 0) {
        snprintf(err, errlen, "%s: %s", a->host, gai_strerror(gr));
        return -1;
    }
    int rc = -1;
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        if (n->nls >= NET_MAX_LISTEN) {
            snprintf(err, errlen, "too many listeners");
            break;
        }
        int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0)
            continue;
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (ai->ai_family == AF_INET6)
            setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, 1024) < 0) {
            snprintf(err, errlen, "%s:%d: %s", a->host, a->port, strerror(errno));
            close(fd);
            continue;
        }
        struct sockaddr_storage ss;
        socklen_t sl = sizeof ss;
        getsockname(fd, (struct sockaddr *)&ss, &sl);
        listener *l = &n->ls[n->nls++];
        l->net = n;
        l->fd = fd;
        l->tls = tls;
        format_peer((struct sockaddr *)&ss, sl, l->name, sizeof l->name);
        l->ev = event_new(n->base, fd, EV_READ | EV_PERSIST, on_accept, l);
        event_priority_set(l->ev, 0);
        event_add(l->ev, NULL);
        fprintf(out, "imd: listening on %s%s\n", l->name, tls ? " (tls)" : "");
        ims_log(IMS_LOG_INFO, "listening", "addr=%s%s", l->name, tls ? " tls=yes" : "");
        rc = 0;
        if (a->host[0] == 0)
            continue; /* wildcard: every family */
        break;
    }
    freeaddrinfo(res);
    return rc;
}

static int listen_unix(ims_net *n, const ims_addr_spec *a, FILE *out, char *err, size_t errlen)
{
    if (n->nls >= NET_MAX_LISTEN) {
        snprintf(err, errlen, "too many listeners");
        return -1;
    }
    struct sockaddr_un sun;
    memset(&sun, 0, sizeof sun);
    sun.sun_family = AF_UNIX;
    if (strlen(a->path) >= sizeof sun.sun_path) {
        snprintf(err, errlen, "unix:%s: path too long", a->path);
        return -1;
    }
    strcpy(sun.sun_path, a->path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(err, errlen, "unix socket: %s", strerror(errno));
        return -1;
    }
    /* A stale socket file from an earlier run is replaced; any other file is not. */
    struct stat st;
    if (lstat(a->path, &st) == 0 && S_ISSOCK(st.st_mode))
        unlink(a->path);
    if (bind(fd, (struct sockaddr *)&sun, sizeof sun) < 0 || listen(fd, 1024) < 0) {
        snprintf(err, errlen, "unix:%s: %s", a->path, strerror(errno));
        close(fd);
        return -1;
    }
    listener *l = &n->ls[n->nls++];
    l->net = n;
    l->fd = fd;
    snprintf(l->name, sizeof l->name, "unix:%s", a->path);
    snprintf(l->unix_path, sizeof l->unix_path, "%s", a->path);
    l->ev = event_new(n->base, fd, EV_READ | EV_PERSIST, on_accept, l);
    event_priority_set(l->ev, 0);
    event_add(l->ev, NULL);
    fprintf(out, "imd: listening on %s\n", l->name);
    ims_log(IMS_LOG_INFO, "listening", "addr=%s", l->name);
    return 0;
}

/* ---- /metrics (Prometheus text format 0.0.4) ----------------------------------------------- */

typedef struct metrics_out {
    struct evbuffer *b;
    int close_typed;
} metrics_out;

/* Values that go up and down; every other counter only grows. */
static int is_gauge(const char *name)
{
    static const char *const gauges[] = {
        "connections",      "sessions",         "users_online",
        "hash_pending",     "hash_running_max", "store_commit_ms_max",
        "store_log_frames", "loop_lag_us_max",  "loop_probe_wake_us_max",
        "loop_serve_us_max"};
    for (size_t i = 0; i < sizeof gauges / sizeof gauges[0]; i++)
        if (strcmp(name, gauges[i]) == 0)
            return 1;
    return 0;
}

static void metric_line(void *ud, const char *name, uint64_t v)
{
    metrics_out *m = ud;
    char clean[96];
    size_t i = 0;
    if (strncmp(name, "close.", 6) == 0) {
        if (!m->close_typed++)
            evbuffer_add_printf(m->b, "# TYPE imd_closes_total counter\n");
        evbuffer_add_printf(m->b, "imd_closes_total{reason=\"%s\"} %llu\n", name + 6,
                            (unsigned long long)v);
        return;
    }
    for (; name[i] && i + 1 < sizeof clean; i++)
        clean[i] = (name[i] == '.' || name[i] == '-') ? '_' : name[i];
    clean[i] = 0;
    evbuffer_add_printf(m->b, "# TYPE imd_%s %s\nimd_%s %llu\n", clean,
                        is_gauge(name) ? "gauge" : "counter", clean, (unsigned long long)v);
}

static void on_metrics(struct evhttp_request *req, void *arg)
{
    ims_net *n = arg;
    if (evhttp_request_get_command(req) != EVHTTP_REQ_GET) {
        evhttp_send_error(req, 405, "Method Not Allowed");
        return;
    }
    metrics_out m = {evbuffer_new(), 0};
    if (!m.b) {
        evhttp_send_error(req, 500, "Internal Server Error");
        return;
    }
    ims_server_stats(n->srv, metric_line, &m);
    evbuffer_add_printf(m.b, "# TYPE imd_net_connections gauge\nimd_net_connections %d\n",
                        n->nconns);
    evbuffer_add_printf(m.b,
                        "# TYPE imd_tls_handshakes_total counter\nimd_tls_handshakes_total %llu\n"
                        "# TYPE imd_tls_handshake_failures_total counter\n"
                        "imd_tls_handshake_failures_total %llu\n",
                        (unsigned long long)n->tls_handshakes,
                        (unsigned long long)n->tls_handshake_failures);
    evbuffer_add_printf(m.b,
                        "# TYPE imd_net_sends_total counter\nimd_net_sends_total %llu\n"
                        "# TYPE imd_net_sends_short_total counter\nimd_net_sends_short_total %llu\n"
                        "# TYPE imd_net_recvs_total counter\nimd_net_recvs_total %llu\n"
                        "# TYPE imd_net_turns_total counter\nimd_net_turns_total %llu\n"
                        "# TYPE imd_net_held_total counter\nimd_net_held_total %llu\n",
                        (unsigned long long)n->st_sends, (unsigned long long)n->st_sends_short,
                        (unsigned long long)n->st_recvs, (unsigned long long)n->st_turns,
                        (unsigned long long)n->st_held);
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
                      "text/plain; version=0.0.4");
    evhttp_send_reply(req, 200, "OK", m.b);
    evbuffer_free(m.b);
}

static int listen_metrics(ims_net *n, const char *spec, FILE *out, char *err, size_t errlen)
{
    ims_addr_spec a;
    if (ims_cfg_parse_addr(spec, &a) != 0 || a.is_unix) {
        snprintf(err, errlen, "metrics_listen: not HOST:PORT: %s", spec);
        return -1;
    }
    n->http = evhttp_new(n->base);
    if (!n->http) {
        snprintf(err, errlen, "evhttp_new failed");
        return -1;
    }
    evhttp_set_cb(n->http, "/metrics", on_metrics, n);
    evhttp_set_allowed_methods(n->http, EVHTTP_REQ_GET);
    struct evhttp_bound_socket *bs =
        evhttp_bind_socket_with_handle(n->http, a.host, (ev_uint16_t)a.port);
    if (!bs) {
        snprintf(err, errlen, "metrics %s: cannot listen", spec);
        return -1;
    }
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    char name[160];
    getsockname(evhttp_bound_socket_get_fd(bs), (struct sockaddr *)&ss, &sl);
    format_peer((struct sockaddr *)&ss, sl, name, sizeof name);
    fprintf(out, "imd: metrics on %s\n", name);
    ims_log(IMS_LOG_INFO, "metrics_listening", "addr=%s", name);
    return 0;
}

/* ---- lifecycle ---------------------------------------------------------------------------- */

ims_net *ims_net_new(struct event_base *base)
{
    ims_net *n = calloc(1, sizeof *n);
    if (!n)
        return NULL;
    n->base = base;
    n->wake_pipe[0] = n->wake_pipe[1] = -1;
    if (event_base_priority_init(base, 2) != 0 || pipe2(n->wake_pipe, O_NONBLOCK | O_CLOEXEC) != 0)
        goto fail;
    n->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    n->turn_ev = event_new(base, -1, 0, on_turn, n);
    n->tick_ev = event_new(base, -1, EV_PERSIST, on_tick, n);
    n->wake_ev = event_new(base, n->wake_pipe[0], EV_READ | EV_PERSIST, on_wake, n);
    n->resume_ev = event_new(base, -1, 0, on_resume_accept, n);
    n->hold_ev = event_new(base, -1, 0, on_hold, n);
    if (!n->turn_ev || !n->tick_ev || !n->wake_ev || !n->resume_ev || !n->hold_ev)
        goto fail;
    event_priority_set(n->hold_ev, 0);
    event_priority_set(n->turn_ev, 1);
    event_priority_set(n->tick_ev, 0);
    event_priority_set(n->wake_ev, 0);
    struct timeval tv = {0, TICK_MS * 1000};
    event_add(n->tick_ev, &tv);
    event_add(n->wake_ev, NULL);
    return n;
fail:
    ims_net_free(n);
    return NULL;
}

void ims_net_set_server(ims_net *n, ims_server *srv)
{
    n->srv = srv;
}

void ims_net_set_tls(ims_net *n, ims_tls *tls, uint32_t handshake_timeout_ms)
{
    n->tls = tls;
    n->tls_hs_timeout_ms = handshake_timeout_ms;
}

int ims_net_listen(ims_net *n, const ims_cfg *cfg, FILE *out, char *err, size_t errlen)
{
    for (int i = 0; i < cfg->n_listen; i++) {
        ims_addr_spec a;
        if (ims_cfg_parse_addr(cfg->listen[i], &a) != 0) {
            snprintf(err, errlen, "listen: bad address: %s", cfg->listen[i]);
            return -1;
        }
        int r = a.is_unix ? listen_unix(n, &a, out, err, errlen)
                          : listen_tcp(n, &a, 0, out, err, errlen);
        if (r != 0)
            return -1;
    }
    for (int i = 0; i < cfg->n_tls_listen; i++) {
        ims_addr_spec a;
        if (ims_cfg_parse_addr(cfg->tls_listen[i], &a) != 0 || a.is_unix) {
            snprintf(err, errlen, "tls_listen: bad address: %s", cfg->tls_listen[i]);
            return -1;
        }
        if (!n->tls) {
            snprintf(err, errlen, "tls_listen %s: no TLS certificate loaded", cfg->tls_listen[i]);
            return -1;
        }
        if (listen_tcp(n, &a, 1, out, err, errlen) != 0)
            return -1;
    }
    if (cfg->metrics_listen[0] && listen_metrics(n, cfg->metrics_listen, out, err, errlen) != 0)
        return -1;
    fflush(out);
    return 0;
}

static void on_grace(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    ims_net *n = arg;
    ims_log(IMS_LOG_WARN, "shutdown_grace_expired", "connections=%d", n->nconns);
    event_base_loopexit(n->base, NULL);
}

void ims_net_shutdown(ims_net *n, unsigned grace_ms)
{
    if (n->shutting_down)
        return;
    n->shutting_down = 1;
    for (int i = 0; i < n->nls; i++)
        event_del(n->ls[i].ev);
    event_del(n->resume_ev);
    ims_server_shutdown(n->srv);
    for (netconn *c = n->conns; c; c = c->next)
        mark_dirty(c);
    if (n->nconns == 0) {
        /* still run one turn: the final group commit */
        ims_server_turn_end(n->srv);
        event_base_loopexit(n->base, NULL);
        return;
    }
    n->grace_ev = event_new(n->base, -1, 0, on_grace, n);
    struct timeval tv = {grace_ms / 1000, (grace_ms % 1000) * 1000};
    if (n->grace_ev)
        event_add(n->grace_ev, &tv);
}

void ims_net_free(ims_net *n)
{
    if (!n)
        return;
    while (n->conns)
        conn_free(n->conns, 730);
    for (int i = 0; i < n->nls; i++) {
        event_free(n->ls[i].ev);
        close(n->ls[i].fd);
        if (n->ls[i].unix_path[0])
            unlink(n->ls[i].unix_path);
    }
    if (n->http)
        evhttp_free(n->http);
    struct event *evs[] = {n->turn_ev,  n->tick_ev,   n->wake_ev,
                           n->grace_ev, n->resume_ev, n->hold_ev};
    for (size_t i = 0; i < sizeof evs / sizeof evs[0]; i++)
        if (evs[i])
            event_free(evs[i]);
    if (n->wake_pipe[0] >= 0)
        close(n->wake_pipe[0]);
    if (n->wake_pipe[1] >= 0)
        close(n->wake_pipe[1]);
    if (n->reserve_fd >= 0)
        close(n->reserve_fd);
    free(n);
}

int ims_net_connections(const ims_net *n)
{
    return n->nconns;
}
