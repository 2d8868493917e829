/* imload --sink: a minimal IMP server for measuring imload itself (its ceiling).
 *
 * One thread, one epoll loop. Each connection has an imp_conn in the server role, which does
 * the handshake (WELCOME), PONGs and every decode. REGISTER and LOGIN are always accepted
 * (AUTH_OK, no password check, no storage). A SEND is answered by an ACK (unless ACK_MODE 0;
 * the outcome is "delivered" for ACK_MODE 2, else "stored") and turned into DELIVER frames
 * right away: to the connection logged in as the target user (the last one to log in under
 * that name), to every connection that JOINed the room, or to every connection (broadcast).
 * Nothing is stored or retried: a message to a user who is not connected is dropped, and so is
 * a DELIVER to a connection with more than 64 MiB of unwritten output (counted). JOIN and
 * everything else that expects an answer get OK. It is not a server: it exists so that the
 * only work on the other side of the socket is parsing and copying.
 */
#include "imload.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "imt_client.h"

#define SINK_OBUF_MAX (64u * 1024u * 1024u)
#define SINK_RBUF (256u * 1024u)
#define USER_SLOTS 65536u

typedef struct sconn {
    int fd;
    imp_conn *ic;
    uint8_t *obuf;
    size_t ohead, olen, ocap; /* pending output is obuf[ohead..olen) */
    int epout;
    int dirty;
    int authed;
    char user[IMP_NAME_MAX + 1];
    char room[IMP_NAME_MAX + 1];
    uint64_t seq;
    struct sconn *next_dirty;
    struct sconn *prev_all, *next_all;
} sconn;

static int s_ep;
static sconn *s_dirty;
static sconn *s_all;
static uint64_t s_msg_id, s_session_id, s_dropped, s_messages;
static volatile sig_atomic_t s_stop;
static struct {
    char name[IMP_NAME_MAX + 1];
    sconn *c;
} s_users[USER_SLOTS];

static void s_on_signal(int sig)
{
    (void)sig;
    s_stop = 1;
}

static uint32_t name_hash(const char *s)
{
    uint32_t h = 2166136261u;
    for (; *s; s++)
        h = (h ^ (uint8_t)*s) * 16777619u;
    return h;
}

static void users_put(const char *name, sconn *c)
{
    uint32_t i = name_hash(name) & (USER_SLOTS - 1);
    for (uint32_t k = 0; k < USER_SLOTS; k++, i = (i + 1) & (USER_SLOTS - 1)) {
        if (!s_users[i].name[0] || !strcmp(s_users[i].name, name)) {
            snprintf(s_users[i].name, sizeof s_users[i].name, "%s", name);
            s_users[i].c = c;
            return;
        }
    }
}

static sconn *users_get(const char *name)
{
    uint32_t i = name_hash(name) & (USER_SLOTS - 1);
    for (uint32_t k = 0; k < USER_SLOTS; k++, i = (i + 1) & (USER_SLOTS - 1)) {
        if (!s_users[i].name[0])
            return NULL;
        if (!strcmp(s_users[i].name, name))
            return s_users[i].c;
    }
    return NULL;
}

static void s_reserve(sconn *c, size_t more)
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
    if (!p) {
        fprintf(stderr, PROG ": out of memory\n");
        exit(2);
    }
    c->obuf = p;
    c->ocap = n;
}

static void mark_dirty(sconn *c)
{
    if (!c->dirty) {
        c->dirty = 1;
        c->next_dirty = s_dirty;
        s_dirty = c;
    }
}

static void s_pull(sconn *c)
{
    const uint8_t *p;
    size_t n;
    while ((n = imp_conn_pending_output(c->ic, &p)) > 0) {
        s_reserve(c, n);
        memcpy(c->obuf + c->olen, p, n);
        c->olen += n;
        imp_conn_consume_output(c->ic, n);
        mark_dirty(c);
    }
}

/* Encode m straight into c's output (after the library's own output). */
static void s_put(sconn *c, const imp_msg *m)
{
    s_pull(c);
    imp_ssize n = imp_msg_encoded_size(m);
    if (n < 0)
        return;
    if (c->olen - c->ohead > SINK_OBUF_MAX) {
        s_dropped++;
        return;
    }
    s_reserve(c, (size_t)n);
    if (imp_msg_encode(m, c->obuf + c->olen, (size_t)n) == n)
        c->olen += (size_t)n;
    mark_dirty(c);
}

static void s_close(sconn *c)
{
    if (c->fd < 0)
        return;
    epoll_ctl(s_ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->fd = -1;
    if (c->authed && users_get(c->user) == c)
        users_put(c->user, NULL);
    if (c->prev_all)
        c->prev_all->next_all = c->next_all;
    else
        s_all = c->next_all;
    if (c->next_all)
        c->next_all->prev_all = c->prev_all;
    /* freed lazily: it may still be on the dirty list */
}

static void s_flush(sconn *c)
{
    size_t off = c->ohead;
    while (c->fd >= 0 && off < c->olen) {
        ssize_t n = send(c->fd, c->obuf + off, c->olen - off, MSG_NOSIGNAL);
        if (n > 0) {
            off += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            break;
        s_close(c);
        return;
    }
    c->ohead = off; /* no memmove here: a large backlog would be copied again and again */
    if (c->ohead == c->olen)
        c->ohead = c->olen = 0;
    int want = c->olen > c->ohead;
    if (c->fd >= 0 && want != c->epout) {
        struct epoll_event ev;
        memset(&ev, 0, sizeof ev);
        ev.events = EPOLLIN | (want ? EPOLLOUT : 0u);
        ev.data.ptr = c;
        epoll_ctl(s_ep, EPOLL_CTL_MOD, c->fd, &ev);
        c->epout = want;
    }
}

/* Hand-written encoders for the hot path (ACK, DELIVER): the fields in ascending tag order,
 * no validation (the SEND they come from was validated by libimp). */
static uint8_t *w_field(uint8_t *p, unsigned tag, const void *v, size_t n)
{
    p[0] = (uint8_t)(tag >> 8);
    p[1] = (uint8_t)tag;
    p[2] = (uint8_t)(n >> 24);
    p[3] = (uint8_t)(n >> 16);
    p[4] = (uint8_t)(n >> 8);
    p[5] = (uint8_t)n;
    if (n)
        memcpy(p + 6, v, n);
    return p + 6 + n;
}

static uint8_t *w_u64(uint8_t *p, unsigned tag, uint64_t v)
{
    uint8_t b[8];
    for (int i = 7; i >= 0; i--) {
        b[i] = (uint8_t)v;
        v >>= 8;
    }
    return w_field(p, tag, b, 8);
}

static uint8_t *w_u8(uint8_t *p, unsigned tag, uint64_t v)
{
    uint8_t b = (uint8_t)v;
    return w_field(p, tag, &b, 1);
}

/* Reserve room for a frame of at most max bytes in c's output; NULL when over the cap. */
static uint8_t *frame_begin(sconn *c, size_t max)
{
    s_pull(c);
    if (c->olen - c->ohead > SINK_OBUF_MAX) {
        s_dropped++;
        return NULL;
    }
    s_reserve(c, max);
    return c->obuf + c->olen;
}

static void frame_end(sconn *c, uint8_t *start, uint8_t *end, uint8_t type, uint32_t req)
{
    imp_frame_header_write(start, type, (uint32_t)(end - start - IMP_HEADER_SIZE), req);
    c->olen += (size_t)(end - start);
    mark_dirty(c);
}

static void s_ack(sconn *c, const imp_msg *send, uint64_t id, uint64_t mode)
{
    imp_bytes k = imp_msg_b(send, IMP_T_CLIENT_MSG_ID);
    uint8_t *b = frame_begin(c, IMP_HEADER_SIZE + 3 * 6 + k.len + 8 + 1);
    if (!b)
        return;
    uint8_t *p = b + IMP_HEADER_SIZE;
    if (imp_msg_has(send, IMP_T_CLIENT_MSG_ID))
        p = w_field(p, IMP_T_CLIENT_MSG_ID, k.p, k.len);
    p = w_u64(p, IMP_T_MSG_ID, id);
    p = w_u8(p, IMP_T_OUTCOME,
             mode == IMP_ACK_DELIVERED ? IMP_OUTCOME_DELIVERED : IMP_OUTCOME_STORED);
    frame_end(c, b, p, IMP_ACK, send->request_id);
}

static void s_deliver(sconn *to, const imp_msg *send, const sconn *from, uint64_t id)
{
    if (!to || to->fd < 0 || !to->authed)
        return;
    int transient = imp_msg_u(send, IMP_T_CLASS, 0) == IMP_CLASS_TRANSIENT;
    uint64_t kind = imp_msg_u(send, IMP_T_TARGET_KIND, IMP_TARGET_USER);
    imp_bytes t = imp_msg_b(send, IMP_T_TARGET), b = imp_msg_b(send, IMP_T_BODY);
    size_t ulen = strlen(from->user);
    uint8_t *f =
        frame_begin(to, IMP_HEADER_SIZE + 8 * 6 + 1 + t.len + 1 + b.len + 8 + 8 + ulen + 8);
    if (!f)
        return;
    uint8_t *p = f + IMP_HEADER_SIZE;
    p = w_u8(p, IMP_T_TARGET_KIND, kind);
    if (kind != IMP_TARGET_BROADCAST)
        p = w_field(p, IMP_T_TARGET, t.p, t.len);
    if (transient)
        p = w_u8(p, IMP_T_CLASS, IMP_CLASS_TRANSIENT);
    p = w_field(p, IMP_T_BODY, b.p, b.len);
    p = w_u64(p, IMP_T_MSG_ID, id);
    p = w_u64(p, IMP_T_SEQ, transient ? 0 : ++to->seq);
    p = w_field(p, IMP_T_SENDER, from->user, ulen);
    p = w_u64(p, IMP_T_TIMESTAMP, 0);
    frame_end(to, f, p, IMP_DELIVER, 0);
}

static void s_copy_name(char *dst, imp_bytes b)
{
    size_t n = b.len < IMP_NAME_MAX ? b.len : IMP_NAME_MAX;
    for (size_t i = 0; i < n; i++) {
        char ch = (char)b.p[i];
        dst[i] = ch >= 'A' && ch <= 'Z' ? (char)(ch - 'A' + 'a') : ch;
    }
    dst[n] = 0;
}

static void s_event(sconn *c, const imp_msg *m)
{
    imp_msg r;
    switch (m->type) {
    case IMP_REGISTER:
    case IMP_LOGIN:
        s_copy_name(c->user, imp_msg_b(m, IMP_T_USER));
        imp_msg_init(&r, IMP_AUTH_OK, m->request_id);
        imp_msg_set_s(&r, IMP_T_USER, c->user);
        imp_msg_set_u(&r, IMP_T_SESSION_ID, ++s_session_id);
        imp_msg_set_u(&r, IMP_T_LAST_SEQ, 0);
        if (imp_conn_send(c->ic, &r) == 0) {
            c->authed = 1;
            users_put(c->user, c);
        }
        s_pull(c);
        break;
    case IMP_SEND: {
        uint64_t id = ++s_msg_id;
        s_messages++;
        uint64_t mode = imp_msg_u(m, IMP_T_ACK_MODE, IMP_ACK_STORED);
        if (mode != IMP_ACK_NONE)
            s_ack(c, m, id, mode);
        uint64_t kind = imp_msg_u(m, IMP_T_TARGET_KIND, IMP_TARGET_USER);
        char name[IMP_NAME_MAX + 1];
        s_copy_name(name, imp_msg_b(m, IMP_T_TARGET));
        if (kind == IMP_TARGET_USER) {
            s_deliver(users_get(name), m, c, id);
        } else {
            for (sconn *x = s_all; x; x = x->next_all)
                if (kind == IMP_TARGET_BROADCAST || !strcmp(x->room, name))
                    s_deliver(x, m, c, id);
        }
        break;
    }
    case IMP_JOIN:
        s_copy_name(c->room, imp_msg_b(m, IMP_T_ROOM));
        imp_msg_init(&r, IMP_OK, m->request_id);
        s_put(c, &r);
        break;
    case IMP_LEAVE:
    case IMP_PRESENCE:
    case IMP_SUBSCRIBE:
    case IMP_MONITOR:
        imp_msg_init(&r, IMP_OK, m->request_id);
        s_put(c, &r);
        break;
    default:
        s_pull(c);
        break;
    }
}

static void s_read(sconn *c, uint8_t *buf)
{
    ssize_t n = recv(c->fd, buf, SINK_RBUF, 0);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR && errno != EWOULDBLOCK)) {
        s_close(c);
        return;
    }
    if (n < 0)
        return;
    const uint8_t *p = buf;
    size_t left = (size_t)n;
    while (left > 0) {
        imp_ssize took = imp_conn_feed(c->ic, p, left);
        if (took < 0)
            break;
        p += took;
        left -= (size_t)took;
        imp_msg m;
        int e = 0;
        while ((e = imp_conn_next_event(c->ic, &m)) > 0)
            s_event(c, &m);
        if (e < 0)
            break;
    }
    s_pull(c);
    if (imp_conn_want_close(c->ic)) {
        s_flush(c);
        s_close(c);
    }
}

int sink_main(const char *listen_addr, int quiet)
{
    char host[64];
    const char *colon = strrchr(listen_addr, ':');
    char *end = NULL;
    long port = colon ? strtol(colon + 1, &end, 10) : -1;
    if (!colon || (size_t)(colon - listen_addr) >= sizeof host || !end || *end || port < 0 ||
        port > 65535) {
        fprintf(stderr, PROG ": bad --listen '%s' (IPV4:PORT)\n", listen_addr);
        return 2;
    }
    memcpy(host, listen_addr, (size_t)(colon - listen_addr));
    host[colon - listen_addr] = 0;
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) {
        fprintf(stderr, PROG ": --listen needs an IPv4 address\n");
        return 2;
    }
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (lfd < 0 || bind(lfd, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(lfd, 4096) != 0) {
        fprintf(stderr, PROG ": cannot listen on %s: %s\n", listen_addr, strerror(errno));
        return 3;
    }
    socklen_t sl = sizeof sa;
    getsockname(lfd, (struct sockaddr *)&sa, &sl);
    fprintf(stderr, PROG ": sink listening on %s:%u\n", host, (unsigned)ntohs(sa.sin_port));
    fflush(stderr);
    struct sigaction sig;
    memset(&sig, 0, sizeof sig);
    sig.sa_handler = s_on_signal;
    sigaction(SIGINT, &sig, NULL);
    sigaction(SIGTERM, &sig, NULL);
    s_ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev;
    memset(&ev, 0, sizeof ev);
    ev.events = EPOLLIN;
    ev.data.ptr = NULL;
    epoll_ctl(s_ep, EPOLL_CTL_ADD, lfd, &ev);
    uint8_t *buf = malloc(SINK_RBUF);
    sconn **closed = NULL;
    size_t nclosed = 0;
    struct epoll_event evs[256];
    while (!s_stop && buf) {
        int n = epoll_wait(s_ep, evs, 256, 200);
        if (n < 0 && errno != EINTR)
            break;
        for (int i = 0; i < n; i++) {
            sconn *c = evs[i].data.ptr;
            if (!c) {
                for (;;) {
                    int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                    if (fd < 0)
                        break;
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    sconn *nc = calloc(1, sizeof *nc);
                    imp_config cfg;
                    imp_config_default(&cfg, IMP_ROLE_SERVER);
                    cfg.agent = "imload-sink";
                    cfg.ping_interval_ms = 0;
                    cfg.auth_timeout_ms = 0;
                    cfg.max_frame = IMP_FRAME_MAX_HARD;
                    if (!nc || !(nc->ic = imp_conn_new(IMP_ROLE_SERVER, &cfg, 0))) {
                        close(fd);
                        free(nc);
                        continue;
                    }
                    nc->fd = fd;
                    nc->next_all = s_all;
                    if (s_all)
                        s_all->prev_all = nc;
                    s_all = nc;
                    struct epoll_event e2;
                    memset(&e2, 0, sizeof e2);
                    e2.events = EPOLLIN;
                    e2.data.ptr = nc;
                    epoll_ctl(s_ep, EPOLL_CTL_ADD, fd, &e2);
                }
                continue;
            }
            if (c->fd < 0)
                continue;
            if (evs[i].events & EPOLLOUT)
                s_flush(c);
            if (c->fd >= 0 && (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP)))
                s_read(c, buf);
            if (c->fd < 0) {
                sconn **nl = realloc(closed, (nclosed + 1) * sizeof *nl);
                if (nl) {
                    closed = nl;
                    closed[nclosed++] = c;
                }
            }
        }
        while (s_dirty) {
            sconn *c = s_dirty;
            s_dirty = c->next_dirty;
            c->dirty = 0;
            if (c->fd >= 0)
                s_flush(c);
        }
        for (size_t i = 0; i < nclosed; i++) {
            /* not on the dirty list any more: free */
            imp_conn_free(closed[i]->ic);
            free(closed[i]->obuf);
            free(closed[i]);
        }
        nclosed = 0;
    }
    if (!quiet)
        fprintf(stderr, PROG ": sink: %llu messages, %llu deliveries dropped\n",
                (unsigned long long)s_messages, (unsigned long long)s_dropped);
    free(buf);
    free(closed);
    close(lfd);
    return 0;
}
