/* Integration tests: a blocking test client on libimp (see client.h). */
#include "client.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_CLIENTS 512

static tc *clients[MAX_CLIENTS];

static void reg_add(tc *c)
{
    for (int i = 0; i < MAX_CLIENTS; i++)
        if (!clients[i]) {
            clients[i] = c;
            return;
        }
}

static void reg_del(tc *c)
{
    for (int i = 0; i < MAX_CLIENTS; i++)
        if (clients[i] == c)
            clients[i] = NULL;
}

void tc_close_all(void)
{
    for (int i = 0; i < MAX_CLIENTS; i++)
        if (clients[i])
            tc_close(clients[i]);
}

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static int remaining(uint64_t deadline)
{
    uint64_t n = now_ms();
    return n >= deadline ? 0 : (int)(deadline - n);
}

/* ---- frames ------------------------------------------------------------------------------ */

void tc_frame_free(tc_frame *f)
{
    if (!f)
        return;
    free(f->buf);
    free(f);
}

/* A frame owning a copy of p[0..n) (one whole, valid frame). NULL on a parse error. */
static tc_frame *frame_from_bytes(const uint8_t *p, size_t n, int *err)
{
    tc_frame *f = calloc(1, sizeof *f);
    if (!f) {
        *err = IMP_ERR_NOMEM;
        return NULL;
    }
    f->buf = malloc(n ? n : 1);
    if (!f->buf) {
        free(f);
        *err = IMP_ERR_NOMEM;
        return NULL;
    }
    memcpy(f->buf, p, n);
    f->len = n;
    imp_frame fr;
    imp_ssize r = imp_frame_parse(f->buf, n, 0, &fr, NULL);
    int e = r > 0 ? imp_msg_decode(&fr, &f->m) : (r == 0 ? IMP_ERR_TRUNCATED : (int)r);
    if (e < 0) {
        *err = e;
        tc_frame_free(f);
        return NULL;
    }
    return f;
}

/* A copy of a decoded message (re-encoded: decoding and encoding are canonical). */
static tc_frame *frame_from_msg(const imp_msg *m, int *err)
{
    imp_ssize n = imp_msg_encoded_size(m);
    if (n < 0) {
        *err = (int)n;
        return NULL;
    }
    uint8_t *tmp = malloc((size_t)n);
    if (!tmp) {
        *err = IMP_ERR_NOMEM;
        return NULL;
    }
    imp_ssize w = imp_msg_encode(m, tmp, (size_t)n);
    tc_frame *f = NULL;
    if (w < 0)
        *err = (int)w;
    else
        f = frame_from_bytes(tmp, (size_t)w, err);
    free(tmp);
    return f;
}

static void enqueue(tc *c, tc_frame *f)
{
    if (f->m.type == IMP_ERROR)
        c->last_error = (int)imp_msg_u(&f->m, IMP_T_CODE, 0);
    if (f->m.type == IMP_WELCOME && !c->has_welcome) {
        c->welcome_buf = malloc(f->len);
        if (c->welcome_buf) {
            memcpy(c->welcome_buf, f->buf, f->len);
            imp_frame fr;
            if (imp_frame_parse(c->welcome_buf, f->len, 0, &fr, NULL) > 0 &&
                imp_msg_decode(&fr, &c->welcome) == 0)
                c->has_welcome = 1;
        }
    }
    f->next = NULL;
    if (c->tail)
        c->tail->next = f;
    else
        c->head = f;
    c->tail = f;
    c->queued++;
}

/* ---- output ------------------------------------------------------------------------------ */

static int write_all(tc *c, const uint8_t *p, size_t n, uint64_t deadline, size_t *written)
{
    size_t done = 0;
    while (done < n) {
        ssize_t w = send(c->fd, p + done, n - done, MSG_NOSIGNAL);
        if (w > 0) {
            done += (size_t)w;
            continue;
        }
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            int left = remaining(deadline);
            if (left <= 0) {
                *written = done;
                return -ETIMEDOUT;
            }
            struct pollfd pf = {c->fd, POLLOUT, 0};
            poll(&pf, 1, left);
            continue;
        }
        c->wr_errno = w < 0 ? errno : EPIPE;
        *written = done;
        return -c->wr_errno;
    }
    *written = done;
    return 0;
}

/* Conn mode: write the library's pending output. */
static int flush_conn(tc *c, int timeout_ms)
{
    if (!c->conn)
        return 0;
    uint64_t deadline = now_ms() + (uint64_t)timeout_ms;
    const uint8_t *out;
    size_t n;
    while ((n = imp_conn_pending_output(c->conn, &out)) > 0) {
        size_t w = 0;
        int r = write_all(c, out, n, deadline, &w);
        imp_conn_consume_output(c->conn, w);
        if (r < 0)
            return r;
    }
    return 0;
}

int tc_send_raw(tc *c, const void *p, size_t n, int timeout_ms)
{
    size_t w = 0;
    return write_all(c, p, n, now_ms() + (uint64_t)timeout_ms, &w);
}

uint32_t tc_req(tc *c)
{
    if (++c->next_req == 0)
        c->next_req = 1;
    return c->next_req;
}

uint32_t tc_request(tc *c, imp_msg *m)
{
    if (m->request_id == 0)
        m->request_id = tc_req(c);
    if (c->conn) {
        int r = imp_conn_send(c->conn, m);
        if (r < 0) {
            fprintf(stderr, "tc_request: imp_conn_send(%s) refused: %s (state %s)\n",
                    imp_type_name(m->type), imp_strerror(r),
                    imp_state_name(imp_conn_state(c->conn)));
            return 0;
        }
        r = flush_conn(c, TC_TIMEOUT_MS);
        if (r < 0) {
            fprintf(stderr, "tc_request: write: %s\n", strerror(-r));
            return 0;
        }
        return m->request_id;
    }
    imp_ssize n = imp_msg_encoded_size(m);
    if (n < 0) {
        fprintf(stderr, "tc_request: cannot encode %s: %s\n", imp_type_name(m->type),
                imp_strerror((int)n));
        return 0;
    }
    uint8_t *buf = malloc((size_t)n);
    if (!buf)
        return 0;
    imp_ssize w = imp_msg_encode(m, buf, (size_t)n);
    int r = w < 0 ? (int)w : tc_send_raw(c, buf, (size_t)w, TC_TIMEOUT_MS);
    free(buf);
    if (r < 0) {
        fprintf(stderr, "tc_request: %s: %d\n", imp_type_name(m->type), r);
        return 0;
    }
    return m->request_id;
}

/* ---- input ------------------------------------------------------------------------------- */

static void lib_error(tc *c, int err)
{
    if (!c->lib_err) {
        c->lib_err = err;
        fprintf(stderr, "tc: the server's input failed in the client library: %s (%s)\n",
                imp_err_name(err) ? imp_err_name(err) : "?", imp_strerror(err));
    }
}

static void record(tc *c, const uint8_t *p, size_t n)
{
    if (!c->recording || n == 0)
        return;
    if (c->rec_len + n > c->rec_cap) {
        size_t cap = c->rec_cap ? c->rec_cap : 4096;
        while (cap < c->rec_len + n)
            cap *= 2;
        uint8_t *nb = realloc(c->rec, cap);
        if (!nb) {
            lib_error(c, IMP_ERR_NOMEM);
            return;
        }
        c->rec = nb;
        c->rec_cap = cap;
    }
    memcpy(c->rec + c->rec_len, p, n);
    c->rec_len += n;
}

void tc_record_start(tc *c)
{
    c->recording = 1;
}

int tc_recorded_has(const tc *c, const void *needle, size_t n)
{
    if (n == 0 || c->rec_len < n)
        return 0;
    return memmem(c->rec, c->rec_len, needle, n) != NULL;
}

static int take_bytes(tc *c, const uint8_t *p, size_t n)
{
    int frames = 0;
    c->bytes_in += n;
    record(c, p, n);
    if (c->conn) {
        while (n > 0 && !c->lib_err) {
            imp_ssize took = imp_conn_feed(c->conn, p, n);
            if (took < 0) {
                lib_error(c, (int)took);
                break;
            }
            p += took;
            n -= (size_t)took;
            imp_msg m;
            int r;
            while ((r = imp_conn_next_event(c->conn, &m)) > 0) {
                int err = 0;
                tc_frame *f = frame_from_msg(&m, &err);
                if (!f) {
                    lib_error(c, err);
                    break;
                }
                enqueue(c, f);
                frames++;
            }
            if (r < 0)
                lib_error(c, r);
            if (took == 0 && r == 0)
                break; /* should not happen: the library took nothing and had no event */
        }
        flush_conn(c, 1000); /* automatic PONGs */
        return frames;
    }
    if (c->lib_err)
        return 0;
    if (c->rlen + n > c->rcap) {
        size_t cap = c->rcap ? c->rcap : 65536;
        while (cap < c->rlen + n)
            cap *= 2;
        uint8_t *nb = realloc(c->rbuf, cap);
        if (!nb) {
            lib_error(c, IMP_ERR_NOMEM);
            return 0;
        }
        c->rbuf = nb;
        c->rcap = cap;
    }
    memcpy(c->rbuf + c->rlen, p, n);
    c->rlen += n;
    size_t off = 0;
    while (off < c->rlen) {
        imp_frame fr;
        imp_ssize r = imp_frame_parse(c->rbuf + off, c->rlen - off, 0, &fr, NULL);
        if (r == 0)
            break;
        if (r < 0) {
            lib_error(c, (int)r);
            break;
        }
        int err = 0;
        tc_frame *f = frame_from_bytes(c->rbuf + off, (size_t)r, &err);
        if (!f) {
            lib_error(c, err);
            break;
        }
        enqueue(c, f);
        frames++;
        off += (size_t)r;
    }
    memmove(c->rbuf, c->rbuf + off, c->rlen - off);
    c->rlen -= off;
    return frames;
}

int tc_pump(tc *c, int timeout_ms)
{
    if (c->eof)
        return -1;
    struct pollfd pf = {c->fd, POLLIN, 0};
    int pr = poll(&pf, 1, timeout_ms < 0 ? 0 : timeout_ms);
    if (pr <= 0)
        return 0;
    int frames = 0;
    static uint8_t buf[262144];
    for (;;) {
        ssize_t r = recv(c->fd, buf, sizeof buf, 0);
        if (r > 0) {
            frames += take_bytes(c, buf, (size_t)r);
            continue;
        }
        if (r == 0) {
            c->eof = 1;
            break;
        }
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            break;
        c->rd_errno = errno;
        c->eof = 1;
        break;
    }
    return frames;
}

static int matches(const tc_frame *f, uint8_t type, uint32_t req)
{
    return (type == 0 || f->m.type == type) && (req == 0 || f->m.request_id == req);
}

static tc_frame *take(tc *c, uint8_t type, uint32_t req)
{
    tc_frame *prev = NULL;
    for (tc_frame *f = c->head; f; prev = f, f = f->next) {
        if (!matches(f, type, req))
            continue;
        if (prev)
            prev->next = f->next;
        else
            c->head = f->next;
        if (c->tail == f)
            c->tail = prev;
        f->next = NULL;
        c->queued--;
        return f;
    }
    return NULL;
}

tc_frame *tc_wait(tc *c, uint8_t type, uint32_t req, int timeout_ms)
{
    uint64_t deadline = now_ms() + (uint64_t)(timeout_ms < 0 ? 0 : timeout_ms);
    for (;;) {
        tc_frame *f = take(c, type, req);
        if (f)
            return f;
        if (c->eof || c->lib_err)
            return NULL; /* closed, or the server's input cannot be parsed any further */
        int left = remaining(deadline);
        if (left <= 0)
            return NULL;
        tc_pump(c, left);
    }
}

tc_frame *tc_wait_reply(tc *c, uint32_t req, int timeout_ms)
{
    return tc_wait(c, 0, req, timeout_ms);
}

size_t tc_queued(const tc *c, uint8_t type)
{
    size_t n = 0;
    for (const tc_frame *f = c->head; f; f = f->next)
        if (type == 0 || f->m.type == type)
            n++;
    return n;
}

const char *tc_describe(const tc *c, char *buf, size_t len)
{
    size_t off = 0;
    buf[0] = 0;
    int shown = 0;
    for (const tc_frame *f = c->head; f && off + 40 < len; f = f->next) {
        if (++shown > 30) {
            snprintf(buf + off, len - off, " ...");
            break;
        }
        const char *tn = imp_type_name(f->m.type);
        int w;
        if (f->m.type == IMP_ERROR)
            w = snprintf(buf + off, len - off, "%sERROR(req %u, code %u)", off ? " " : "",
                         (unsigned)f->m.request_id, (unsigned)imp_msg_u(&f->m, IMP_T_CODE, 0));
        else
            w = snprintf(buf + off, len - off, "%s%s(req %u)", off ? " " : "", tn ? tn : "?",
                         (unsigned)f->m.request_id);
        if (w < 0)
            break;
        off += (size_t)w;
    }
    if (off + 80 < len)
        snprintf(buf + off, len - off, "%s[eof %d, rd_errno %d, lib_err %d, last ERROR %d]",
                 off ? " " : "", c->eof, c->rd_errno, c->lib_err, c->last_error);
    return buf;
}

int tc_expect_close(tc *c, int timeout_ms, int *err_code)
{
    uint64_t deadline = now_ms() + (uint64_t)timeout_ms;
    while (!c->eof) {
        int left = remaining(deadline);
        if (left <= 0)
            break;
        tc_pump(c, left);
    }
    if (err_code)
        *err_code = c->last_error;
    return c->eof;
}

/* ---- connecting -------------------------------------------------------------------------- */

static tc *connect_common(int port, int timeout_ms, int rcvbuf, int raw)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        fprintf(stderr, "tc_connect: socket: %s\n", strerror(errno));
        return NULL;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (rcvbuf > 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        if (errno != EINPROGRESS) {
            fprintf(stderr, "tc_connect: connect 127.0.0.1:%d: %s\n", port, strerror(errno));
            close(fd);
            return NULL;
        }
        struct pollfd pf = {fd, POLLOUT, 0};
        if (poll(&pf, 1, timeout_ms) <= 0) {
            fprintf(stderr, "tc_connect: connect 127.0.0.1:%d: timeout\n", port);
            close(fd);
            return NULL;
        }
        int err = 0;
        socklen_t el = sizeof err;
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el);
        if (err) {
            fprintf(stderr, "tc_connect: connect 127.0.0.1:%d: %s\n", port, strerror(err));
            close(fd);
            return NULL;
        }
    }
    tc *c = calloc(1, sizeof *c);
    if (!c) {
        close(fd);
        return NULL;
    }
    c->fd = fd;
    c->raw = raw;
    c->next_req = 100;
    reg_add(c);
    if (raw)
        return c;
    imp_config cfg;
    imp_config_default(&cfg, IMP_ROLE_CLIENT);
    cfg.agent = "imp-itest";
    cfg.auth_timeout_ms = 0; /* the tests bound every wait themselves */
    c->conn = imp_conn_new(IMP_ROLE_CLIENT, &cfg, now_ms());
    if (!c->conn) {
        fprintf(stderr, "tc_connect: imp_conn_new failed\n");
        tc_close(c);
        return NULL;
    }
    if (flush_conn(c, timeout_ms) < 0) {
        fprintf(stderr, "tc_connect: sending HELLO failed\n");
        tc_close(c);
        return NULL;
    }
    tc_frame *w = tc_wait(c, IMP_WELCOME, 0, timeout_ms);
    if (!w) {
        char d[512];
        fprintf(stderr, "tc_connect: no WELCOME within %d ms: %s\n", timeout_ms,
                tc_describe(c, d, sizeof d));
        tc_close(c);
        return NULL;
    }
    tc_frame_free(w);
    return c;
}

tc *tc_connect(int port, int timeout_ms)
{
    return connect_common(port, timeout_ms, 0, 0);
}

tc *tc_connect_raw(int port, int timeout_ms, int rcvbuf)
{
    return connect_common(port, timeout_ms, rcvbuf, 1);
}

int tc_raw_hello(tc *c, int timeout_ms)
{
    imp_msg m;
    imp_msg_init(&m, IMP_HELLO, 0);
    imp_msg_set_u(&m, IMP_T_VERSION_MIN, 1);
    imp_msg_set_u(&m, IMP_T_VERSION_MAX, 1);
    imp_msg_set_s(&m, IMP_T_AGENT, "imp-itest-raw");
    if (!tc_request(c, &m))
        return -1;
    tc_frame *w = tc_wait(c, IMP_WELCOME, 0, timeout_ms);
    if (!w)
        return -1;
    tc_frame_free(w);
    return 0;
}

void tc_close(tc *c)
{
    if (!c)
        return;
    reg_del(c);
    if (c->fd >= 0)
        close(c->fd);
    if (c->conn)
        imp_conn_free(c->conn);
    tc_frame *f = c->head;
    while (f) {
        tc_frame *n = f->next;
        tc_frame_free(f);
        f = n;
    }
    free(c->rbuf);
    free(c->welcome_buf);
    free(c->rec);
    free(c);
}

/* ---- requests ---------------------------------------------------------------------------- */

static void fill_auth(const imp_msg *m, tc_auth *a)
{
    memset(a, 0, sizeof *a);
    tc_str(m, IMP_T_USER, a->user, sizeof a->user);
    imp_bytes t = imp_msg_b(m, IMP_T_TOKEN);
    if (imp_msg_has(m, IMP_T_TOKEN) && t.len <= sizeof a->token) {
        memcpy(a->token, t.p, t.len);
        a->token_len = t.len;
        a->has_token = 1;
    }
    a->session_id = imp_msg_u(m, IMP_T_SESSION_ID, 0);
    a->last_seq = imp_msg_u(m, IMP_T_LAST_SEQ, 0);
    a->admin = (int)imp_msg_u(m, IMP_T_ADMIN, 0);
}

static int auth_reply(tc *c, uint32_t req, tc_auth *auth, int timeout_ms)
{
    if (!req)
        return -1;
    tc_frame *f = tc_wait_reply(c, req, timeout_ms);
    if (!f) {
        char d[512];
        fprintf(stderr, "tc: no answer to REGISTER/LOGIN (req %u) within %d ms: %s\n",
                (unsigned)req, timeout_ms, tc_describe(c, d, sizeof d));
        return -1;
    }
    int rc;
    if (f->m.type == IMP_AUTH_OK) {
        tc_auth tmp;
        fill_auth(&f->m, auth ? auth : &tmp);
        rc = 0;
    } else if (f->m.type == IMP_ERROR) {
        rc = (int)imp_msg_u(&f->m, IMP_T_CODE, 0);
        if (rc <= 0)
            rc = -1;
    } else {
        fprintf(stderr, "tc: unexpected %s answering REGISTER/LOGIN\n", imp_type_name(f->m.type));
        rc = -1;
    }
    tc_frame_free(f);
    return rc;
}

int tc_register(tc *c, const char *user, const char *password, tc_auth *auth, int timeout_ms)
{
    imp_msg m;
    imp_msg_init(&m, IMP_REGISTER, 0);
    imp_msg_set_s(&m, IMP_T_USER, user);
    imp_msg_set_s(&m, IMP_T_PASSWORD, password);
    return auth_reply(c, tc_request(c, &m), auth, timeout_ms);
}

int tc_login(tc *c, const char *user, const char *password, uint64_t last_seq, tc_auth *auth,
             int timeout_ms)
{
    imp_msg m;
    imp_msg_init(&m, IMP_LOGIN, 0);
    imp_msg_set_s(&m, IMP_T_USER, user);
    imp_msg_set_s(&m, IMP_T_PASSWORD, password);
    if (last_seq != UINT64_MAX)
        imp_msg_set_u(&m, IMP_T_LAST_SEQ, last_seq);
    return auth_reply(c, tc_request(c, &m), auth, timeout_ms);
}

int tc_login_token(tc *c, const char *user, const uint8_t *token, size_t token_len,
                   uint64_t last_seq, tc_auth *auth, int timeout_ms)
{
    imp_msg m;
    imp_msg_init(&m, IMP_LOGIN, 0);
    imp_msg_set_s(&m, IMP_T_USER, user);
    imp_msg_set_b(&m, IMP_T_TOKEN, token, token_len);
    if (last_seq != UINT64_MAX)
        imp_msg_set_u(&m, IMP_T_LAST_SEQ, last_seq);
    return auth_reply(c, tc_request(c, &m), auth, timeout_ms);
}

void tc_build_send(const tc_msg *s, imp_msg *m)
{
    imp_msg_init(m, IMP_SEND, 0);
    imp_msg_set_u(m, IMP_T_TARGET_KIND, (uint64_t)s->kind);
    if (s->target)
        imp_msg_set_s(m, IMP_T_TARGET, s->target);
    if (s->cmid)
        imp_msg_set_s(m, IMP_T_CLIENT_MSG_ID, s->cmid);
    if (s->cls >= 0)
        imp_msg_set_u(m, IMP_T_CLASS, (uint64_t)s->cls);
    if (s->ack_mode >= 0)
        imp_msg_set_u(m, IMP_T_ACK_MODE, (uint64_t)s->ack_mode);
    if (s->has_headers)
        imp_msg_set_b(m, IMP_T_HEADERS, s->headers, s->headers_len);
    imp_msg_set_b(m, IMP_T_BODY, s->body, s->body_len);
}

void tc_ack_from(const imp_msg *m, tc_ack *ack)
{
    memset(ack, 0, sizeof *ack);
    ack->outcome = (int)imp_msg_u(m, IMP_T_OUTCOME, 0);
    ack->has_msg_id = imp_msg_has(m, IMP_T_MSG_ID);
    ack->msg_id = imp_msg_u(m, IMP_T_MSG_ID, 0);
    ack->code = (int)imp_msg_u(m, IMP_T_CODE, 0);
    ack->duplicate = (int)imp_msg_u(m, IMP_T_DUPLICATE, 0);
    tc_str(m, IMP_T_CLIENT_MSG_ID, ack->cmid, sizeof ack->cmid);
}

int tc_wait_ack(tc *c, uint32_t req, tc_ack *ack, int timeout_ms)
{
    tc_frame *f = tc_wait_reply(c, req, timeout_ms);
    if (!f) {
        char d[512];
        fprintf(stderr, "tc: no ACK for req %u within %d ms: %s\n", (unsigned)req, timeout_ms,
                tc_describe(c, d, sizeof d));
        return -1;
    }
    int rc;
    if (f->m.type == IMP_ACK) {
        tc_ack_from(&f->m, ack);
        rc = 0;
    } else if (f->m.type == IMP_ERROR) {
        rc = (int)imp_msg_u(&f->m, IMP_T_CODE, 0);
        if (rc <= 0)
            rc = -1;
    } else {
        fprintf(stderr, "tc: unexpected %s answering SEND req %u\n", imp_type_name(f->m.type),
                (unsigned)req);
        rc = -1;
    }
    tc_frame_free(f);
    return rc;
}

int tc_send(tc *c, const tc_msg *s, tc_ack *ack, int timeout_ms)
{
    imp_msg m;
    tc_build_send(s, &m);
    uint32_t req = tc_request(c, &m);
    if (!req)
        return -1;
    tc_ack tmp;
    if (!ack)
        ack = &tmp;
    memset(ack, 0, sizeof *ack);
    if (s->ack_mode == IMP_ACK_NONE)
        return 0;
    return tc_wait_ack(c, req, ack, timeout_ms);
}

int tc_send_text(tc *c, const char *to, const char *cmid, const char *body, tc_ack *ack)
{
    tc_msg s;
    memset(&s, 0, sizeof s);
    s.kind = IMP_TARGET_USER;
    s.target = to;
    s.cmid = cmid;
    s.cls = -1;
    s.ack_mode = -1;
    s.body = body;
    s.body_len = strlen(body);
    return tc_send(c, &s, ack, TC_TIMEOUT_MS);
}

int tc_delivered(tc *c, uint64_t seq)
{
    imp_msg m;
    imp_msg_init(&m, IMP_DELIVERED, 0);
    imp_msg_set_u(&m, IMP_T_SEQ, seq);
    return tc_request(c, &m) ? 0 : -1;
}

uint32_t tc_simple(tc *c, uint8_t type)
{
    imp_msg m;
    imp_msg_init(&m, type, 0);
    return tc_request(c, &m);
}

/* ---- fields ------------------------------------------------------------------------------ */

const char *tc_str(const imp_msg *m, unsigned tag, char *buf, size_t len)
{
    imp_bytes b = imp_msg_b(m, tag);
    size_t n = b.len < len - 1 ? b.len : len - 1;
    if (n)
        memcpy(buf, b.p, n);
    buf[n] = 0;
    return buf;
}

int tc_field_is(const imp_msg *m, unsigned tag, const char *s)
{
    if (!imp_msg_has(m, tag))
        return 0;
    imp_bytes b = imp_msg_b(m, tag);
    return b.len == strlen(s) && (b.len == 0 || memcmp(b.p, s, b.len) == 0);
}

size_t tc_names_count(const imp_msg *m, unsigned tag)
{
    imp_bytes rest = imp_msg_b(m, tag), name;
    size_t n = 0;
    while (imp_names_next(&rest, &name) == 1)
        n++;
    return n;
}

int tc_names_has(const imp_msg *m, unsigned tag, const char *s)
{
    imp_bytes rest = imp_msg_b(m, tag), name;
    size_t l = strlen(s);
    while (imp_names_next(&rest, &name) == 1)
        if (name.len == l && memcmp(name.p, s, l) == 0)
            return 1;
    return 0;
}

long long tc_stat(const imp_msg *m, const char *s)
{
    imp_bytes rest = imp_msg_b(m, IMP_T_STATS), name;
    uint64_t v;
    size_t l = strlen(s);
    while (imp_stats_next(&rest, &name, &v) == 1)
        if (name.len == l && memcmp(name.p, s, l) == 0)
            return (long long)v;
    return -1;
}
