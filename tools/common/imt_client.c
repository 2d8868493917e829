/* imt_client — the tools' event-driven IMP client on libevent + libimp (see imt_client.h).
 *
 * The socket is a plain non-blocking descriptor watched by two events (read: persistent; write:
 * added only while libimp holds output the socket did not take). libimp owns the output queue,
 * so no bufferevent is needed. Time limits: the connect timer covers TCP connect, handshake and
 * login; libimp's own auth deadline is disabled so that there is exactly one clock; keepalive is
 * libimp's (imp_conn_tick at imp_conn_next_deadline).
 *
 * Re-entrancy: finish() (the single exit path, which calls on_close) may run from inside an
 * event callback that is still iterating over received frames; every loop checks c->closed
 * after each callback. Errors found inside a tool's call (a failed write during imt_client_send)
 * are reported through a deferred event so that on_close never runs inside imt_client_send.
 *
 * TLS (cfg.tls, issue 6): OpenSSL directly on the same descriptor and the same events, so the
 * plain path is untouched. After the TCP connect, the handshake is driven by SSL_do_handshake
 * from ev_tls (re-armed for reading or writing as OpenSSL asks), still in P_CONNECTING, so the
 * connect timer covers it; then on_connected() as for plain TCP. Reads loop on SSL_read until
 * OpenSSL wants more from the socket (the records it already decrypted are not visible to
 * poll); writes go through SSL_write (partial writes on, the buffer may move: libimp's queue is
 * only consumed after a successful write). SSL_read wanting to write, or SSL_write wanting to
 * read, is remembered and retried from the other event. The socket BIO is our own, on
 * send(MSG_NOSIGNAL)/recv, so that a peer reset never raises SIGPIPE in the tool.
 */
#include "imt_client.h"

#include <errno.h>
#include <stdarg.h>
#include <event2/event.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include "imt_tls.h"

#define LOGOUT_WAIT_MS 2000
#define READ_CHUNK 65536
#define TRACE_HEX_MAX 512
#define TRACE_VALUE_MAX 120

enum phase { P_IDLE, P_CONNECTING, P_HANDSHAKE, P_READY, P_LOGOUT, P_DONE };

struct imt_client {
    struct event_base *base;
    imt_client_config cfg;
    imt_callbacks cb;
    void *ud;

    enum phase phase;
    int started;
    int closed; /* finish() ran */
    int fd;
    imt_addr addr;
    char where[300]; /* "127.0.0.1:7600" or "unix:/path" for messages */
    struct addrinfo *ai_list, *ai_cur;

    struct event *ev_read, *ev_write, *ev_connect, *ev_timer, *ev_tick, *ev_defer;
    imp_conn *conn;
    uint32_t next_req, auth_req, logout_req;
    int in_input;       /* processing received frames */
    int logout_wanted;  /* imt_client_close(c, 0) during input processing */
    int write_blocked;  /* output waited for the socket: on_drain when it empties */
    imt_result pending; /* for the deferred finish */
    int pending_set;

    imt_session sess;
    uint8_t token[64];

    /* TLS (cfg.tls enabled) */
    SSL_CTX *tls_ctx; /* our reference (SSL_CTX_up_ref of cfg.tls_ctx, or our own) */
    SSL *ssl;
    struct event *ev_tls;     /* the handshake: read or write readiness, as OpenSSL asks */
    int tls_fatal;            /* a fatal TLS error: no SSL_shutdown */
    int tls_read_wants_write; /* SSL_read asked for writability */
    int tls_write_wants_read; /* SSL_write asked for readability */
};

static int use_tls(const imt_client *c)
{
    return c->cfg.tls && c->cfg.tls->enabled;
}

/* ---- small helpers ------------------------------------------------------------------------ */

uint64_t imt_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

int imt_exit_status(int code)
{
    if (code == 0)
        return 0;
    return imp_exit_status(code > 0 ? -code : code);
}

const char *imt_code_str(int code, char *buf, size_t len)
{
    int pos = code < 0 ? -code : code;
    const char *name = imp_err_name(pos);
    snprintf(buf, len, "%d %s", pos, name ? name : "unknown");
    return buf;
}

/* snprintf that is allowed to truncate (messages are cut, never overflow). */
#if defined(__GNUC__)
__attribute__((format(printf, 3, 4)))
#endif
static void
textf(char *dst, size_t cap, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(dst, cap, fmt, ap);
    va_end(ap);
}

const char *imt_code_text(int code, const char *text, char *buf, size_t len)
{
    char cs[64];
    imt_code_str(code, cs, sizeof cs);
    const char *name = imp_err_name(code < 0 ? -code : code);
    if (!text || !*text || (name && strcasecmp(text, name) == 0))
        textf(buf, len, "%s", cs);
    else
        textf(buf, len, "%s: %s", cs, text);
    return buf;
}

static void copy_str(char *dst, size_t cap, imp_bytes b)
{
    size_t n = b.len < cap - 1 ? b.len : cap - 1;
    if (n)
        memcpy(dst, b.p, n);
    dst[n] = 0;
}

static const char *prog(const imt_client *c)
{
    return c->cfg.prog ? c->cfg.prog : "imt";
}

#if defined(__GNUC__)
__attribute__((format(printf, 2, 3)))
#endif
static void
verbose(const imt_client *c, const char *fmt, ...)
{
    if (!c->cfg.verbose)
        return;
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    fprintf(stderr, "%s: %s\n", prog(c), line);
}

/* ---- addresses ---------------------------------------------------------------------------- */

static int port_ok(const char *p)
{
    if (!*p || strlen(p) > 5)
        return 0;
    unsigned v = 0;
    for (; *p; p++) {
        if (*p < '0' || *p > '9')
            return 0;
        v = v * 10 + (unsigned)(*p - '0');
    }
    return v >= 1 && v <= 65535;
}

int imt_addr_parse(const char *spec, imt_addr *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    if (!spec || !*spec) {
        const char *env = getenv("IMP_SERVER");
        spec = env && *env ? env : IMT_DEFAULT_SERVER;
    }
    if (strncmp(spec, "unix:", 5) == 0) {
        const char *path = spec + 5;
        if (!*path || strlen(path) >= sizeof out->path) {
            textf(err, errlen, "bad unix socket path in '%s'", spec);
            return -1;
        }
        out->is_unix = 1;
        strcpy(out->path, path);
        return 0;
    }
    const char *host = spec, *port = NULL;
    size_t hlen;
    if (spec[0] == '[') {
        const char *close = strchr(spec, ']');
        if (!close) {
            textf(err, errlen, "missing ']' in '%s'", spec);
            return -1;
        }
        host = spec + 1;
        hlen = (size_t)(close - host);
        if (close[1] == ':')
            port = close + 2;
        else if (close[1] != 0) {
            textf(err, errlen, "unexpected text after ']' in '%s'", spec);
            return -1;
        }
    } else {
        const char *colon = strchr(spec, ':');
        if (colon && strchr(colon + 1, ':')) {
            textf(err, errlen, "bad address '%s' (write IPv6 addresses as [ADDR]:PORT)", spec);
            return -1;
        }
        hlen = colon ? (size_t)(colon - spec) : strlen(spec);
        if (colon)
            port = colon + 1;
    }
    if (hlen >= sizeof out->host) {
        textf(err, errlen, "host name too long in '%s'", spec);
        return -1;
    }
    if (hlen == 0)
        strcpy(out->host, "127.0.0.1");
    else {
        memcpy(out->host, host, hlen);
        out->host[hlen] = 0;
    }
    if (port) {
        if (!port_ok(port)) {
            textf(err, errlen, "bad port '%s' in '%s' (1-65535)", port, spec);
            return -1;
        }
        strcpy(out->port, port);
    } else {
        strcpy(out->port, IMT_DEFAULT_PORT);
    }
    return 0;
}

/* ---- configuration ------------------------------------------------------------------------ */

void imt_client_config_init(imt_client_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->connect_timeout_ms = IMT_DEFAULT_CONNECT_TIMEOUT_MS;
    cfg->last_seq = UINT64_MAX;
}

void imt_send_args_init(imt_send_args *a)
{
    memset(a, 0, sizeof *a);
    a->cls = -1;
    a->ack_mode = -1;
}

/* ---- trace -------------------------------------------------------------------------------- */

static void trace_quoted(FILE *out, const uint8_t *p, size_t n)
{
    fputc('"', out);
    size_t lim = n < TRACE_VALUE_MAX ? n : TRACE_VALUE_MAX;
    for (size_t i = 0; i < lim; i++) {
        uint8_t ch = p[i];
        if (ch == '"' || ch == '\\')
            fprintf(out, "\\%c", ch);
        else if (ch >= 0x20 && ch < 0x7f)
            fputc(ch, out);
        else
            fprintf(out, "\\x%02x", ch);
    }
    fputc('"', out);
    if (n > lim)
        fprintf(out, "...(%zu bytes)", n);
}

static int secret_tag(unsigned t)
{
    return t == IMP_T_PASSWORD || t == IMP_T_TOKEN;
}

void imt_trace_frame(FILE *out, const char *pfx, const char *dir, const imp_msg *m)
{
    const char *tn = imp_type_name(m->type);
    fprintf(out, "%s: %s %s req=%u", pfx ? pfx : "imt", dir, tn ? tn : "?",
            (unsigned)m->request_id);
    for (unsigned t = 1; t <= IMP_TAG_MAX; t++) {
        if (!imp_msg_has(m, t))
            continue;
        const char *name = imp_tag_name(t);
        fprintf(out, " %s=", name ? name : "?");
        imp_bytes b = m->v[t].b, rest, k, v;
        uint64_t u;
        int first = 1;
        if (secret_tag(t)) {
            fprintf(out, "<%zu bytes hidden>", b.len);
            continue;
        }
        switch (imp_tag_kind(t)) {
        case IMP_K_U16:
        case IMP_K_U32:
        case IMP_K_U64:
        case IMP_K_BOOL:
        case IMP_K_ENUM:
            fprintf(out, "%llu", (unsigned long long)m->v[t].u);
            break;
        case IMP_K_NAME:
            fprintf(out, "%.*s", (int)b.len, (const char *)b.p);
            break;
        case IMP_K_NAMES:
            rest = b;
            fputc('[', out);
            while (imp_names_next(&rest, &k) == 1) {
                fprintf(out, "%s%.*s", first ? "" : ",", (int)k.len, (const char *)k.p);
                first = 0;
            }
            fputc(']', out);
            break;
        case IMP_K_HEADERS:
            rest = b;
            fputc('{', out);
            while (imp_headers_next(&rest, &k, &v) == 1) {
                fprintf(out, "%s%.*s=", first ? "" : ",", (int)k.len, (const char *)k.p);
                trace_quoted(out, v.p, v.len);
                first = 0;
            }
            fputc('}', out);
            break;
        case IMP_K_STATS:
            rest = b;
            fputc('{', out);
            while (imp_stats_next(&rest, &k, &u) == 1) {
                fprintf(out, "%s%.*s=%llu", first ? "" : ",", (int)k.len, (const char *)k.p,
                        (unsigned long long)u);
                first = 0;
            }
            fputc('}', out);
            break;
        default:
            trace_quoted(out, b.p, b.len);
            break;
        }
    }
    fputc('\n', out);

    /* Hex dump of the canonical encoding, with secrets replaced by '*' bytes of the same
     * length (the frame's shape stays visible). */
    imp_msg copy = *m;
    uint8_t starbuf[1024];
    memset(starbuf, '*', sizeof starbuf);
    for (unsigned t = 1; t <= IMP_TAG_MAX; t++)
        if (secret_tag(t) && imp_msg_has(&copy, t) && copy.v[t].b.len <= sizeof starbuf)
            imp_msg_set_b(&copy, t, starbuf, copy.v[t].b.len);
    imp_ssize size = imp_msg_encoded_size(&copy);
    if (size <= 0) {
        fprintf(out, "%s:    (not encodable: %s)\n", pfx ? pfx : "imt", imp_strerror((int)size));
        return;
    }
    size_t dump = (size_t)size < TRACE_HEX_MAX ? (size_t)size : TRACE_HEX_MAX;
    uint8_t *buf = malloc((size_t)size);
    if (!buf || imp_msg_encode(&copy, buf, (size_t)size) != size) {
        free(buf);
        return;
    }
    for (size_t off = 0; off < dump; off += 16) {
        fprintf(out, "%s:    %04zx:", pfx ? pfx : "imt", off);
        for (size_t i = off; i < off + 16 && i < dump; i++)
            fprintf(out, " %02x", buf[i]);
        fputc('\n', out);
    }
    if ((size_t)size > dump)
        fprintf(out, "%s:    ... %zu more bytes\n", pfx ? pfx : "imt", (size_t)size - dump);
    free(buf);
}

/* ---- lifecycle ---------------------------------------------------------------------------- */

static void finish(imt_client *c, int status, int code, const char *text);
static void flush(imt_client *c);
static void schedule_tick(imt_client *c);

static void defer_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    imt_client *c = arg;
    if (c->pending_set && !c->closed)
        finish(c, c->pending.status, c->pending.code, c->pending.text);
}

/* Report an end from the event loop (not from inside the caller's current call). */
static void defer_finish(imt_client *c, int status, int code, const char *text)
{
    if (c->closed || c->pending_set)
        return;
    c->pending_set = 1;
    c->pending.status = status;
    c->pending.code = code;
    textf(c->pending.text, sizeof c->pending.text, "%s", text ? text : "");
    struct timeval tv = {0, 0};
    evtimer_add(c->ev_defer, &tv);
}

static void teardown_io(imt_client *c)
{
    if (c->ev_read)
        event_del(c->ev_read);
    if (c->ev_write)
        event_del(c->ev_write);
    if (c->ev_connect)
        event_del(c->ev_connect);
    if (c->ev_timer)
        event_del(c->ev_timer);
    if (c->ev_tick)
        event_del(c->ev_tick);
    if (c->ev_tls)
        event_del(c->ev_tls);
    if (c->ssl) {
        SSL_free(c->ssl); /* our BIO does not own the descriptor */
        c->ssl = NULL;
    }
    if (c->fd >= 0) {
        close(c->fd);
        c->fd = -1;
    }
}

static void finish(imt_client *c, int status, int code, const char *text)
{
    if (c->closed)
        return;
    /* Best effort: what libimp still holds (e.g. an ERROR for the peer) goes out first. */
    if (c->fd >= 0 && c->conn && c->phase >= P_HANDSHAKE && c->ssl) {
        const uint8_t *p;
        size_t n;
        while (!c->tls_fatal && (n = imp_conn_pending_output(c->conn, &p)) > 0) {
            int w = SSL_write(c->ssl, p, n > INT32_MAX ? INT32_MAX : (int)n);
            if (w <= 0) {
                int e = SSL_get_error(c->ssl, w);
                if (e == SSL_ERROR_SYSCALL || e == SSL_ERROR_SSL)
                    c->tls_fatal = 1; /* no SSL_shutdown after a fatal error */
                break;
            }
            imp_conn_consume_output(c->conn, (size_t)w);
        }
        if (!c->tls_fatal)
            SSL_shutdown(c->ssl); /* close_notify, once, without waiting for the peer's */
        ERR_clear_error();
    } else if (c->fd >= 0 && c->conn && c->phase >= P_HANDSHAKE) {
        const uint8_t *p;
        size_t n;
        while ((n = imp_conn_pending_output(c->conn, &p)) > 0) {
            ssize_t w = send(c->fd, p, n, MSG_NOSIGNAL | MSG_DONTWAIT);
            if (w <= 0)
                break;
            imp_conn_consume_output(c->conn, (size_t)w);
        }
    }
    c->closed = 1;
    c->phase = P_DONE;
    teardown_io(c);
    imt_result r;
    memset(&r, 0, sizeof r);
    r.status = status;
    r.code = code < 0 ? -code : code;
    textf(r.text, sizeof r.text, "%s", text ? text : "");
    if (c->cfg.verbose)
        fprintf(stderr, "%s: connection closed (status %d%s%s)\n", prog(c), status,
                r.text[0] ? ": " : "", r.text);
    if (c->cb.on_close)
        c->cb.on_close(c, &r, c->ud);
}

imt_client *imt_client_new(struct event_base *base, const imt_client_config *cfg,
                           const imt_callbacks *cb, void *ud)
{
    imt_client *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->base = base;
    c->cfg = *cfg;
    if (cb)
        c->cb = *cb;
    c->ud = ud;
    c->fd = -1;
    c->next_req = 1;
    c->ev_timer = evtimer_new(base, NULL, NULL);
    c->ev_defer = evtimer_new(base, defer_cb, c);
    if (!c->ev_timer || !c->ev_defer) {
        imt_client_free(c);
        return NULL;
    }
    return c;
}

void imt_client_free(imt_client *c)
{
    if (!c)
        return;
    c->closed = 1;
    teardown_io(c);
    struct event **evs[] = {&c->ev_read, &c->ev_write, &c->ev_connect, &c->ev_timer,
                            &c->ev_tick, &c->ev_defer, &c->ev_tls};
    for (size_t i = 0; i < sizeof evs / sizeof evs[0]; i++)
        if (*evs[i]) {
            event_free(*evs[i]);
            *evs[i] = NULL;
        }
    if (c->ai_list)
        freeaddrinfo(c->ai_list);
    imp_conn_free(c->conn);
    if (c->tls_ctx)
        SSL_CTX_free(c->tls_ctx);
    memset(c->token, 0, sizeof c->token);
    free(c);
}

static uint32_t next_req(imt_client *c)
{
    uint32_t r = c->next_req++;
    if (c->next_req == 0)
        c->next_req = 1;
    return r ? r : next_req(c);
}

/* Queue a frame (trace, send, flush). Returns 0 or a negative imp_err. */
static int queue(imt_client *c, imp_msg *m)
{
    if (m->request_id == 0)
        m->request_id = next_req(c);
    int r = imp_conn_send(c->conn, m);
    if (r != 0)
        return r;
    if (c->cfg.trace)
        imt_trace_frame(stderr, prog(c), ">>", m);
    flush(c);
    schedule_tick(c);
    return 0;
}

static void timer_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    imt_client *c = arg;
    char text[400];
    if (c->phase == P_CONNECTING && c->ssl) {
        textf(text, sizeof text, "%s: TLS handshake timed out (connect timeout %u ms)", c->where,
              (unsigned)c->cfg.connect_timeout_ms);
        finish(c, IMT_EXIT_CONNECT, 0, text);
    } else if (c->phase == P_CONNECTING) {
        textf(text, sizeof text, "connect %s: timed out after %u ms", c->where,
              (unsigned)c->cfg.connect_timeout_ms);
        finish(c, IMT_EXIT_CONNECT, 0, text);
    } else if (c->phase == P_HANDSHAKE) {
        textf(text, sizeof text, "%s: no login within %u ms (handshake/login timed out)", c->where,
              (unsigned)c->cfg.connect_timeout_ms);
        finish(c, IMT_EXIT_TIMEOUT, -IMP_ERR_TIMEOUT, text);
    } else if (c->phase == P_LOGOUT) {
        /* the server did not answer LOGOUT in time: everything else is done */
        finish(c, 0, 0, "logout not answered in time");
    }
}

static void tick_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    imt_client *c = arg;
    if (c->closed || !c->conn)
        return;
    int r = imp_conn_tick(c->conn, imt_now_ms());
    flush(c);
    if (r < 0) {
        char text[200];
        textf(text, sizeof text, "%s", imp_strerror(r));
        finish(c, imt_exit_status(r), -r, text);
        return;
    }
    schedule_tick(c);
}

static void schedule_tick(imt_client *c)
{
    if (c->closed || !c->conn || !c->ev_tick)
        return;
    uint64_t d = imp_conn_next_deadline(c->conn);
    if (d == UINT64_MAX) {
        event_del(c->ev_tick);
        return;
    }
    uint64_t now = imt_now_ms();
    uint64_t wait = d > now ? d - now : 0;
    struct timeval tv = {(time_t)(wait / 1000), (suseconds_t)(wait % 1000) * 1000};
    evtimer_add(c->ev_tick, &tv);
}

static void send_logout(imt_client *c)
{
    if (c->closed || c->phase != P_READY)
        return;
    imp_msg m;
    imp_msg_init(&m, IMP_LOGOUT, 0);
    if (queue(c, &m) != 0) {
        defer_finish(c, 0, 0, "");
        return;
    }
    c->logout_req = m.request_id;
    c->phase = P_LOGOUT;
    struct timeval tv = {LOGOUT_WAIT_MS / 1000, (LOGOUT_WAIT_MS % 1000) * 1000};
    event_assign(c->ev_timer, c->base, -1, 0, timer_cb, c);
    evtimer_add(c->ev_timer, &tv);
}

void imt_client_close(imt_client *c, int code, const char *text)
{
    if (!c || c->closed)
        return;
    if (code == 0) {
        if (c->phase == P_LOGOUT)
            return;
        if (c->phase == P_READY) {
            if (c->in_input)
                c->logout_wanted = 1;
            else
                send_logout(c);
            return;
        }
        finish(c, 0, 0, text);
        return;
    }
    char buf[200];
    if (!text) {
        textf(buf, sizeof buf, "%s", imp_strerror(code > 0 ? -code : code));
        text = buf;
    }
    finish(c, imt_exit_status(code), code, text);
}

/* ---- output ------------------------------------------------------------------------------- */

static void tls_flush(imt_client *c);

static void flush(imt_client *c)
{
    if (c->closed || c->fd < 0 || !c->conn || c->phase < P_HANDSHAKE)
        return;
    if (c->ssl) {
        tls_flush(c);
        return;
    }
    const uint8_t *p;
    size_t n;
    while ((n = imp_conn_pending_output(c->conn, &p)) > 0) {
        ssize_t w = send(c->fd, p, n, MSG_NOSIGNAL);
        if (w > 0) {
            imp_conn_consume_output(c->conn, (size_t)w);
            continue;
        }
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            c->write_blocked = 1;
            event_add(c->ev_write, NULL);
            return;
        }
        char text[200];
        textf(text, sizeof text, "write to %s: %s", c->where,
              w < 0 ? strerror(errno) : "nothing written");
        event_del(c->ev_read);
        defer_finish(c, c->phase == P_HANDSHAKE ? IMT_EXIT_CONNECT : IMT_EXIT_LOST,
                     -IMP_ERR_CONNECTION_LOST, text);
        return;
    }
}

static void tls_read(imt_client *c);

static void write_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    imt_client *c = arg;
    if (c->ssl && c->tls_read_wants_write) {
        tls_read(c); /* flushes too */
        if (c->closed)
            return;
    }
    flush(c);
    if (c->closed || !c->conn)
        return;
    const uint8_t *p;
    if (imp_conn_pending_output(c->conn, &p) == 0 && c->write_blocked) {
        c->write_blocked = 0;
        if (c->cb.on_drain)
            c->cb.on_drain(c, c->ud);
    }
}

/* ---- input -------------------------------------------------------------------------------- */

static void send_auth(imt_client *c)
{
    imp_msg m;
    imp_msg_init(&m, c->cfg.do_register ? IMP_REGISTER : IMP_LOGIN, 0);
    imp_msg_set_s(&m, IMP_T_USER, c->cfg.user ? c->cfg.user : "");
    imp_msg_set_b(&m, IMP_T_PASSWORD, c->cfg.password, c->cfg.password_len);
    if (!c->cfg.do_register && c->cfg.last_seq != UINT64_MAX)
        imp_msg_set_u(&m, IMP_T_LAST_SEQ, c->cfg.last_seq);
    int r = queue(c, &m);
    if (r != 0) {
        char text[200];
        textf(text, sizeof text, "cannot send %s: %s", c->cfg.do_register ? "REGISTER" : "LOGIN",
              imp_strerror(r));
        /* a bad user name or password length is a usage problem */
        defer_finish(c, IMT_EXIT_USAGE, 0, text);
        return;
    }
    c->auth_req = m.request_id;
    verbose(c, "%s as %s", c->cfg.do_register ? "registering" : "logging in", c->cfg.user);
}

static void handle_error(imt_client *c, const imp_msg *m)
{
    int code = (int)imp_msg_u(m, IMP_T_CODE, 0);
    char text[513], full[700];
    copy_str(text, sizeof text, imp_msg_b(m, IMP_T_TEXT));
    imt_code_text(code, text, full, sizeof full);
    if (imp_is_fatal(code)) {
        finish(c, imt_exit_status(code), code, full);
        return;
    }
    if (c->phase == P_HANDSHAKE && m->request_id == c->auth_req) {
        int st = imt_exit_status(code);
        finish(c, st == IMT_EXIT_REFUSED ? IMT_EXIT_AUTH : st, code, full);
        return;
    }
    if (c->cb.on_error)
        c->cb.on_error(c, m->request_id, code, text, (uint32_t)imp_msg_u(m, IMP_T_RETRY_AFTER, 0),
                       c->ud);
}

static void fill_message(imt_message *d, const imp_msg *m)
{
    memset(d, 0, sizeof *d);
    d->frame_type = m->type;
    d->msg_id = imp_msg_u(m, IMP_T_MSG_ID, 0);
    d->timestamp = imp_msg_u(m, IMP_T_TIMESTAMP, 0);
    copy_str(d->sender, sizeof d->sender, imp_msg_b(m, IMP_T_SENDER));
    d->headers = imp_msg_b(m, IMP_T_HEADERS);
    d->body = imp_msg_b(m, IMP_T_BODY);
    d->m = m;
    if (m->type == IMP_DELIVER) {
        d->seq = imp_msg_u(m, IMP_T_SEQ, 0);
        d->target_kind = (int)imp_msg_u(m, IMP_T_TARGET_KIND, IMP_TARGET_USER);
        copy_str(d->target, sizeof d->target, imp_msg_b(m, IMP_T_TARGET));
        d->cls = (int)imp_msg_u(m, IMP_T_CLASS, IMP_CLASS_DURABLE);
    } else {
        d->request_id = m->request_id;
        d->target_kind = IMP_TARGET_ROOM;
        copy_str(d->target, sizeof d->target, imp_msg_b(m, IMP_T_ROOM));
        d->cls = IMP_CLASS_DURABLE;
    }
}

static void handle(imt_client *c, const imp_msg *m)
{
    if (c->cfg.trace)
        imt_trace_frame(stderr, prog(c), "<<", m);
    if (c->cb.on_frame) {
        c->cb.on_frame(c, m, c->ud);
        if (c->closed)
            return;
    }
    switch (m->type) {
    case IMP_WELCOME:
        verbose(c, "connected to %s", c->where);
        send_auth(c);
        break;
    case IMP_AUTH_OK: {
        memset(&c->sess, 0, sizeof c->sess);
        copy_str(c->sess.user, sizeof c->sess.user, imp_msg_b(m, IMP_T_USER));
        c->sess.session_id = imp_msg_u(m, IMP_T_SESSION_ID, 0);
        c->sess.last_seq = imp_msg_u(m, IMP_T_LAST_SEQ, 0);
        c->sess.admin = (int)imp_msg_u(m, IMP_T_ADMIN, 0);
        imp_bytes t = imp_msg_b(m, IMP_T_TOKEN);
        if (t.len && t.len <= sizeof c->token) {
            memcpy(c->token, t.p, t.len);
            c->sess.token = c->token;
            c->sess.token_len = t.len;
        }
        c->phase = P_READY;
        event_del(c->ev_timer);
        verbose(c, "logged in as %s%s", c->sess.user, c->sess.admin ? " (admin)" : "");
        if (c->cb.on_ready)
            c->cb.on_ready(c, &c->sess, c->ud);
        break;
    }
    case IMP_ERROR:
        handle_error(c, m);
        break;
    case IMP_OK:
        if (c->phase == P_LOGOUT && m->request_id == c->logout_req) {
            finish(c, 0, 0, "");
            break;
        }
        if (c->cb.on_ok)
            c->cb.on_ok(c, m->request_id, m, c->ud);
        break;
    case IMP_ACK: {
        imt_ack a;
        memset(&a, 0, sizeof a);
        a.request_id = m->request_id;
        a.outcome = (int)imp_msg_u(m, IMP_T_OUTCOME, 0);
        a.has_msg_id = imp_msg_has(m, IMP_T_MSG_ID);
        a.msg_id = imp_msg_u(m, IMP_T_MSG_ID, 0);
        a.code = (int)imp_msg_u(m, IMP_T_CODE, 0);
        a.duplicate = (int)imp_msg_u(m, IMP_T_DUPLICATE, 0);
        copy_str(a.client_msg_id, sizeof a.client_msg_id, imp_msg_b(m, IMP_T_CLIENT_MSG_ID));
        copy_str(a.text, sizeof a.text, imp_msg_b(m, IMP_T_TEXT));
        if (c->cb.on_ack)
            c->cb.on_ack(c, &a, c->ud);
        break;
    }
    case IMP_DELIVER:
    case IMP_HISTORY_ITEM: {
        imt_message d;
        fill_message(&d, m);
        if (c->cb.on_message)
            c->cb.on_message(c, &d, c->ud);
        if (!c->closed && m->type == IMP_DELIVER && c->cfg.auto_delivered && d.seq > 0 &&
            c->phase == P_READY)
            imt_client_delivered(c, d.seq);
        break;
    }
    case IMP_PRESENCE_EVENT: {
        imt_presence p;
        memset(&p, 0, sizeof p);
        copy_str(p.user, sizeof p.user, imp_msg_b(m, IMP_T_USER));
        p.status = (int)imp_msg_u(m, IMP_T_STATUS, 0);
        copy_str(p.status_text, sizeof p.status_text, imp_msg_b(m, IMP_T_STATUS_TEXT));
        p.has_sessions = imp_msg_has(m, IMP_T_SESSIONS);
        p.sessions = (uint32_t)imp_msg_u(m, IMP_T_SESSIONS, 0);
        p.timestamp = imp_msg_u(m, IMP_T_TIMESTAMP, 0);
        if (c->cb.on_presence)
            c->cb.on_presence(c, &p, c->ud);
        break;
    }
    case IMP_MONITOR_EVENT: {
        imt_monitor_event e;
        memset(&e, 0, sizeof e);
        copy_str(e.event, sizeof e.event, imp_msg_b(m, IMP_T_EVENT));
        copy_str(e.user, sizeof e.user, imp_msg_b(m, IMP_T_USER));
        copy_str(e.text, sizeof e.text, imp_msg_b(m, IMP_T_TEXT));
        e.timestamp = imp_msg_u(m, IMP_T_TIMESTAMP, 0);
        if (c->cb.on_monitor)
            c->cb.on_monitor(c, &e, c->ud);
        break;
    }
    case IMP_STATS_REPLY:
        if (c->cb.on_stats)
            c->cb.on_stats(c, m->request_id, m, c->ud);
        break;
    case IMP_MEMBER_LIST:
    case IMP_ROOM_LIST:
    case IMP_WHO_LIST:
        if (c->cb.on_list)
            c->cb.on_list(c, m->request_id, m, c->ud);
        break;
    default:
        break;
    }
}

static void process_events(imt_client *c)
{
    imp_msg m;
    int r = 0;
    c->in_input = 1;
    while (!c->closed && (r = imp_conn_next_event(c->conn, &m)) > 0)
        handle(c, &m);
    c->in_input = 0;
    if (c->closed)
        return;
    if (r < 0) {
        char text[200];
        textf(text, sizeof text, "bad input from %s: %s", c->where, imp_strerror(r));
        finish(c, imt_exit_status(r), -r, text);
        return;
    }
    if (c->logout_wanted) {
        c->logout_wanted = 0;
        send_logout(c);
    }
}

static void handle_eof(imt_client *c, int err)
{
    char text[400];
    if (c->phase == P_LOGOUT) {
        finish(c, 0, 0, "");
        return;
    }
    if (err)
        textf(text, sizeof text, "connection to %s lost: %s", c->where, strerror(err));
    else
        textf(text, sizeof text, "connection closed by %s", c->where);
    if (c->phase == P_HANDSHAKE)
        finish(c, IMT_EXIT_CONNECT, 0, text);
    else
        finish(c, IMT_EXIT_LOST, -IMP_ERR_CONNECTION_LOST, text);
}

/* Received bytes into libimp, events processed. 0, or -1 when the connection ended. */
static int feed(imt_client *c, const uint8_t *buf, size_t n)
{
    size_t off = 0;
    while (off < n && !c->closed) {
        imp_ssize taken = imp_conn_feed(c->conn, buf + off, n - off);
        if (taken < 0) {
            process_events(c); /* frames before the failure still count */
            if (!c->closed) {
                char text[200];
                textf(text, sizeof text, "bad input from %s: %s", c->where,
                      imp_strerror((int)taken));
                finish(c, imt_exit_status((int)taken), (int)-taken, text);
            }
            return -1;
        }
        off += (size_t)taken;
        process_events(c);
    }
    return c->closed ? -1 : 0;
}

/* ---- TLS ---------------------------------------------------------------------------------- */

/* The socket BIO: like OpenSSL's, on send(MSG_NOSIGNAL) and recv (no SIGPIPE on a reset). */
static int sbio_write(BIO *b, const char *buf, int len)
{
    BIO_clear_retry_flags(b);
    ssize_t n = send((int)(intptr_t)BIO_get_data(b), buf, (size_t)len, MSG_NOSIGNAL);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        BIO_set_retry_write(b);
    return (int)n;
}

static int sbio_read(BIO *b, char *buf, int len)
{
    BIO_clear_retry_flags(b);
    ssize_t n = recv((int)(intptr_t)BIO_get_data(b), buf, (size_t)len, 0);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        BIO_set_retry_read(b);
    return (int)n;
}

static long sbio_ctrl(BIO *b, int cmd, long num, void *ptr)
{
    (void)b;
    (void)num;
    (void)ptr;
    return cmd == BIO_CTRL_FLUSH ? 1 : 0;
}

static BIO *sbio_new(int fd)
{
    static BIO_METHOD *meth; /* made once, kept for the life of the process */
    if (!meth) {
        meth = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "imt socket");
        if (!meth)
            return NULL;
        BIO_meth_set_write(meth, sbio_write);
        BIO_meth_set_read(meth, sbio_read);
        BIO_meth_set_ctrl(meth, sbio_ctrl);
    }
    BIO *b = BIO_new(meth);
    if (b) {
        BIO_set_data(b, (void *)(intptr_t)fd);
        BIO_set_init(b, 1);
    }
    return b;
}

/* A TLS failure as text ("certificate verify failed: ...", "TLS error: ...", or the system
 * error) for what OpenSSL returned. Clears the error queue. */
static void tls_failure(imt_client *c, int sslerr, int sys_errno, char *buf, size_t len)
{
    if (sslerr == SSL_ERROR_SYSCALL && ERR_peek_error() == 0) {
        ERR_clear_error();
        if (sys_errno)
            textf(buf, len, "%s", strerror(sys_errno));
        else
            textf(buf, len, "connection closed by the peer");
        return;
    }
    imt_tls_error(c->ssl, buf, len);
}

static void on_connected(imt_client *c);

static void tls_wait(imt_client *c, short what);

static void tls_step(imt_client *c)
{
    ERR_clear_error();
    errno = 0;
    int r = SSL_do_handshake(c->ssl);
    if (r == 1) {
        event_del(c->ev_tls);
        verbose(c, "TLS established with %s (%s, %s)", c->where, SSL_get_version(c->ssl),
                SSL_get_cipher_name(c->ssl));
        on_connected(c);
        return;
    }
    int saved = errno;
    int e = SSL_get_error(c->ssl, r);
    if (e == SSL_ERROR_WANT_READ) {
        tls_wait(c, EV_READ);
        return;
    }
    if (e == SSL_ERROR_WANT_WRITE) {
        tls_wait(c, EV_WRITE);
        return;
    }
    char why[300], text[400];
    tls_failure(c, e, saved, why, sizeof why);
    c->tls_fatal = 1;
    textf(text, sizeof text, "%s: %s", c->where, why);
    finish(c, IMT_EXIT_CONNECT, 0, text);
}

static void tls_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    imt_client *c = arg;
    if (!c->closed && c->ssl)
        tls_step(c);
}

static void tls_wait(imt_client *c, short what)
{
    event_del(c->ev_tls);
    event_assign(c->ev_tls, c->base, c->fd, what, tls_cb, c);
    event_add(c->ev_tls, NULL);
}

/* TCP is connected: set up the TLS connection; the handshake starts from the event loop. */
static void start_tls(imt_client *c)
{
    char err[300], text[400];
    event_del(c->ev_connect);
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->ssl = imt_tls_new(c->tls_ctx, c->cfg.tls, c->addr.host, err, sizeof err);
    BIO *b = c->ssl ? sbio_new(c->fd) : NULL;
    if (!c->ev_tls)
        c->ev_tls = event_new(c->base, c->fd, EV_WRITE, tls_cb, c);
    if (!c->ssl || !b || !c->ev_tls) {
        if (!c->ssl)
            textf(text, sizeof text, "%s: %s", c->where, err);
        else
            textf(text, sizeof text, "%s: cannot set up TLS: out of memory", c->where);
        BIO_free(b);
        c->tls_fatal = 1;
        defer_finish(c, IMT_EXIT_CONNECT, 0, text);
        return;
    }
    SSL_set_bio(c->ssl, b, b);
    SSL_set_connect_state(c->ssl);
    verbose(c, "TCP connected to %s, TLS handshake", c->where);
    tls_wait(c, EV_WRITE); /* writable now: the ClientHello goes out from the loop */
}

static void tls_fail_io(imt_client *c, int e, int saved, const char *what)
{
    char why[300], text[400];
    c->tls_fatal = 1;
    unsigned long top = ERR_peek_error();
    if ((e == SSL_ERROR_SYSCALL && top == 0) ||
        (e == SSL_ERROR_SSL && ERR_GET_LIB(top) == ERR_LIB_SSL &&
         ERR_GET_REASON(top) == SSL_R_UNEXPECTED_EOF_WHILE_READING)) {
        ERR_clear_error();
        handle_eof(c, saved); /* the peer closed (without close_notify) or reset */
        return;
    }
    tls_failure(c, e, saved, why, sizeof why);
    textf(text, sizeof text, "%s %s: %s", what, c->where, why);
    finish(c, c->phase == P_HANDSHAKE ? IMT_EXIT_CONNECT : IMT_EXIT_LOST, -IMP_ERR_CONNECTION_LOST,
           text);
}

#define TLS_READS_PER_EVENT 16

static void tls_read(imt_client *c)
{
    static uint8_t buf[READ_CHUNK];
    int write_waited = c->tls_write_wants_read;
    c->tls_read_wants_write = 0;
    c->tls_write_wants_read = 0; /* the flush below retries the write */
    for (int i = 0; !c->closed; i++) {
        if (i == TLS_READS_PER_EVENT) {
            /* fairness: come back for what OpenSSL already holds */
            if (SSL_pending(c->ssl) > 0)
                event_active(c->ev_read, EV_READ, 1);
            break;
        }
        ERR_clear_error();
        errno = 0;
        int n = SSL_read(c->ssl, buf, sizeof buf);
        if (n > 0) {
            if (feed(c, buf, (size_t)n) != 0)
                return;
            continue;
        }
        int saved = errno;
        int e = SSL_get_error(c->ssl, n);
        if (e == SSL_ERROR_WANT_READ)
            break;
        if (e == SSL_ERROR_WANT_WRITE) {
            c->tls_read_wants_write = 1;
            event_add(c->ev_write, NULL);
            break;
        }
        if (e == SSL_ERROR_ZERO_RETURN) { /* close_notify */
            handle_eof(c, 0);
            return;
        }
        tls_fail_io(c, e, saved, "read from");
        return;
    }
    if (c->closed)
        return;
    flush(c);
    const uint8_t *p;
    if (write_waited && !c->closed && !c->tls_write_wants_read && c->write_blocked &&
        !event_pending(c->ev_write, EV_WRITE, NULL) && imp_conn_pending_output(c->conn, &p) == 0) {
        /* the write that waited for input went out here, not from write_cb: on_drain here */
        c->write_blocked = 0;
        if (c->cb.on_drain)
            c->cb.on_drain(c, c->ud);
    }
    if (!c->closed)
        schedule_tick(c);
}

static void tls_flush(imt_client *c)
{
    const uint8_t *p;
    size_t n;
    while (!c->closed && (n = imp_conn_pending_output(c->conn, &p)) > 0) {
        ERR_clear_error();
        errno = 0;
        int w = SSL_write(c->ssl, p, n > INT32_MAX ? INT32_MAX : (int)n);
        if (w > 0) {
            imp_conn_consume_output(c->conn, (size_t)w);
            continue;
        }
        int saved = errno;
        int e = SSL_get_error(c->ssl, w);
        if (e == SSL_ERROR_WANT_WRITE) {
            c->write_blocked = 1;
            event_add(c->ev_write, NULL);
            return;
        }
        if (e == SSL_ERROR_WANT_READ) {
            /* ev_read is persistent: tls_read retries the write */
            c->write_blocked = 1;
            c->tls_write_wants_read = 1;
            return;
        }
        char why[300], text[400];
        c->tls_fatal = 1;
        tls_failure(c, e, saved, why, sizeof why);
        textf(text, sizeof text, "write to %s: %s", c->where, why);
        event_del(c->ev_read);
        defer_finish(c, c->phase == P_HANDSHAKE ? IMT_EXIT_CONNECT : IMT_EXIT_LOST,
                     -IMP_ERR_CONNECTION_LOST, text);
        return;
    }
}

/* ---- reading ------------------------------------------------------------------------------ */

static void read_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    imt_client *c = arg;
    if (c->ssl) {
        tls_read(c);
        return;
    }
    static uint8_t buf[READ_CHUNK];
    ssize_t n = recv(fd, buf, sizeof buf, 0);
    if (n == 0) {
        /* frames already buffered are processed by earlier calls; the peer is gone */
        handle_eof(c, 0);
        return;
    }
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
            return;
        handle_eof(c, errno);
        return;
    }
    if (feed(c, buf, (size_t)n) != 0)
        return;
    if (!c->closed) {
        flush(c);
        schedule_tick(c);
    }
}

/* ---- connecting --------------------------------------------------------------------------- */

static void on_connected(imt_client *c)
{
    event_del(c->ev_connect);
    if (!c->addr.is_unix) {
        int one = 1;
        setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    imp_config icfg;
    imp_config_default(&icfg, IMP_ROLE_CLIENT);
    icfg.auth_timeout_ms = 0; /* our connect timer is the one deadline */
    icfg.ping_interval_ms = c->cfg.ping_interval_ms;
    icfg.max_output = c->cfg.max_output;
    icfg.agent = c->cfg.agent ? c->cfg.agent : "imt/" IMP_LIB_VERSION;
    c->conn = imp_conn_new(IMP_ROLE_CLIENT, &icfg, imt_now_ms());
    c->ev_read = event_new(c->base, c->fd, EV_READ | EV_PERSIST, read_cb, c);
    c->ev_write = event_new(c->base, c->fd, EV_WRITE, write_cb, c);
    c->ev_tick = evtimer_new(c->base, tick_cb, c);
    if (!c->conn || !c->ev_read || !c->ev_write || !c->ev_tick) {
        finish(c, IMT_EXIT_USAGE, -IMP_ERR_NOMEM, "out of memory");
        return;
    }
    c->phase = P_HANDSHAKE;
    if (!c->ssl)
        verbose(c, "TCP connected to %s", c->where);
    if (c->cfg.trace) {
        /* HELLO was queued by imp_conn_new: decode it from the output for the trace */
        const uint8_t *p;
        size_t n = imp_conn_pending_output(c->conn, &p);
        imp_frame f;
        size_t need;
        imp_msg hm;
        if (imp_frame_parse(p, n, n, &f, &need) > 0 && imp_msg_decode(&f, &hm) == 0)
            imt_trace_frame(stderr, prog(c), ">>", &hm);
    }
    event_add(c->ev_read, NULL);
    flush(c);
    schedule_tick(c);
}

static void try_next(imt_client *c, int err);

static void connect_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    imt_client *c = arg;
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0)
        err = errno;
    if (err == 0) {
        if (use_tls(c))
            start_tls(c);
        else
            on_connected(c);
        return;
    }
    try_next(c, err);
}

/* Start a connection attempt on c->ai_cur (or the unix path). 0: in progress or connected;
 * otherwise an errno value. */
static int attempt(imt_client *c)
{
    const struct sockaddr *sa;
    socklen_t salen;
    struct sockaddr_un un;
    int family;
    if (c->addr.is_unix) {
        memset(&un, 0, sizeof un);
        un.sun_family = AF_UNIX;
        strcpy(un.sun_path, c->addr.path);
        sa = (const struct sockaddr *)&un;
        salen = sizeof un;
        family = AF_UNIX;
    } else {
        sa = c->ai_cur->ai_addr;
        salen = c->ai_cur->ai_addrlen;
        family = c->ai_cur->ai_family;
    }
    c->fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0)
        return errno;
    if (c->ev_connect)
        event_free(c->ev_connect);
    c->ev_connect = event_new(c->base, c->fd, EV_WRITE, connect_cb, c);
    if (!c->ev_connect)
        return ENOMEM;
    if (connect(c->fd, sa, salen) == 0) {
        if (use_tls(c))
            start_tls(c);
        else
            on_connected(c);
        return 0;
    }
    if (errno == EINPROGRESS || errno == EAGAIN) {
        event_add(c->ev_connect, NULL);
        return 0;
    }
    return errno;
}

static void try_next(imt_client *c, int err)
{
    for (;;) {
        if (c->fd >= 0) {
            event_del(c->ev_connect);
            close(c->fd);
            c->fd = -1;
        }
        if (err == 0)
            err = attempt(c);
        if (err == 0)
            return;
        if (!c->addr.is_unix && c->ai_cur && c->ai_cur->ai_next) {
            c->ai_cur = c->ai_cur->ai_next;
            err = 0;
            continue;
        }
        char text[400];
        textf(text, sizeof text, "connect %s: %s", c->where, strerror(err));
        finish(c, IMT_EXIT_CONNECT, 0, text);
        return;
    }
}

int imt_client_start(imt_client *c)
{
    if (!c || c->started)
        return -1;
    c->started = 1;
    char err[300];
    if (imt_addr_parse(c->cfg.server, &c->addr, err, sizeof err) != 0) {
        textf(c->where, sizeof c->where, "%s", c->cfg.server ? c->cfg.server : "");
        defer_finish(c, IMT_EXIT_USAGE, 0, err);
        return 0;
    }
    if (c->addr.is_unix)
        textf(c->where, sizeof c->where, "unix:%s", c->addr.path);
    else if (strchr(c->addr.host, ':'))
        textf(c->where, sizeof c->where, "[%s]:%s", c->addr.host, c->addr.port);
    else
        textf(c->where, sizeof c->where, "%s:%s", c->addr.host, c->addr.port);
    if (use_tls(c)) {
        if (c->addr.is_unix) {
            textf(err, sizeof err, "TLS needs a TCP server address, not %s", c->where);
            defer_finish(c, IMT_EXIT_USAGE, 0, err);
            return 0;
        }
        if (c->cfg.tls_ctx) {
            c->tls_ctx = c->cfg.tls_ctx;
            SSL_CTX_up_ref(c->tls_ctx);
        } else {
            c->tls_ctx = imt_tls_ctx_new(c->cfg.tls, err, sizeof err);
            if (!c->tls_ctx) {
                char text[400];
                textf(text, sizeof text, "%s: %s", c->where, err);
                defer_finish(c, IMT_EXIT_CONNECT, 0, text);
                return 0;
            }
        }
    }
    c->phase = P_CONNECTING;
    event_assign(c->ev_timer, c->base, -1, 0, timer_cb, c);
    if (c->cfg.connect_timeout_ms > 0) {
        struct timeval tv = {(time_t)(c->cfg.connect_timeout_ms / 1000),
                             (suseconds_t)(c->cfg.connect_timeout_ms % 1000) * 1000};
        evtimer_add(c->ev_timer, &tv);
    }
    if (!c->addr.is_unix) {
        struct addrinfo hints;
        memset(&hints, 0, sizeof hints);
        hints.ai_family = AF_UNSPEC;
        hints.ai_socktype = SOCK_STREAM;
        int r = getaddrinfo(c->addr.host, c->addr.port, &hints, &c->ai_list);
        if (r != 0) {
            textf(err, sizeof err, "cannot resolve %s: %s", c->addr.host, gai_strerror(r));
            defer_finish(c, IMT_EXIT_CONNECT, 0, err);
            return 0;
        }
        c->ai_cur = c->ai_list;
    }
    verbose(c, "connecting to %s", c->where);
    int e = attempt(c);
    if (e != 0) {
        /* try_next reports through finish(); keep on_close out of this call */
        if (c->fd >= 0) {
            close(c->fd);
            c->fd = -1;
        }
        if (!c->addr.is_unix && c->ai_cur && c->ai_cur->ai_next) {
            c->ai_cur = c->ai_cur->ai_next;
            try_next(c, 0);
        } else {
            textf(err, sizeof err, "connect %s: %s", c->where, strerror(e));
            defer_finish(c, IMT_EXIT_CONNECT, 0, err);
        }
    }
    return 0;
}

/* ---- state -------------------------------------------------------------------------------- */

int imt_client_ready(const imt_client *c)
{
    return c && !c->closed && c->phase == P_READY;
}

const imt_session *imt_client_session(const imt_client *c)
{
    return c && c->phase >= P_READY && c->sess.user[0] ? &c->sess : NULL;
}

size_t imt_client_output_pending(const imt_client *c)
{
    const uint8_t *p;
    return c && c->conn && !c->closed ? imp_conn_pending_output(c->conn, &p) : 0;
}

imp_conn *imt_client_conn(imt_client *c)
{
    return c ? c->conn : NULL;
}

void *imt_client_ud(const imt_client *c)
{
    return c ? c->ud : NULL;
}

/* ---- requests ----------------------------------------------------------------------------- */

static int can_send(const imt_client *c)
{
    if (!c || c->closed || c->phase == P_DONE)
        return IMP_ERR_CLOSED;
    if (c->phase != P_READY)
        return IMP_ERR_NOT_ALLOWED;
    return 0;
}

static int request(imt_client *c, imp_msg *m, uint32_t *req)
{
    int r = can_send(c);
    if (r == 0)
        r = queue(c, m);
    if (r == 0 && req)
        *req = m->request_id;
    return r;
}

int imt_client_request(imt_client *c, imp_msg *m, uint32_t *req)
{
    return request(c, m, req);
}

int imt_client_send(imt_client *c, const imt_send_args *a, uint32_t *req)
{
    imp_msg m;
    imp_msg_init(&m, IMP_SEND, 0);
    imp_msg_set_u(&m, IMP_T_TARGET_KIND, (uint64_t)a->target_kind);
    if (a->target)
        imp_msg_set_s(&m, IMP_T_TARGET, a->target);
    if (a->client_msg_id)
        imp_msg_set_s(&m, IMP_T_CLIENT_MSG_ID, a->client_msg_id);
    if (a->cls >= 0)
        imp_msg_set_u(&m, IMP_T_CLASS, (uint64_t)a->cls);
    if (a->ack_mode >= 0)
        imp_msg_set_u(&m, IMP_T_ACK_MODE, (uint64_t)a->ack_mode);
    if (a->headers)
        imp_msg_set_b(&m, IMP_T_HEADERS, a->headers, a->headers_len);
    imp_msg_set_b(&m, IMP_T_BODY, a->body, a->body_len);
    return request(c, &m, req);
}

int imt_client_delivered(imt_client *c, uint64_t seq)
{
    imp_msg m;
    imp_msg_init(&m, IMP_DELIVERED, 0);
    imp_msg_set_u(&m, IMP_T_SEQ, seq);
    return request(c, &m, NULL);
}

static int room_req(imt_client *c, uint8_t type, const char *room, uint32_t *req)
{
    imp_msg m;
    imp_msg_init(&m, type, 0);
    imp_msg_set_s(&m, IMP_T_ROOM, room ? room : "");
    return request(c, &m, req);
}

int imt_client_join(imt_client *c, const char *room, uint32_t *req)
{
    return room_req(c, IMP_JOIN, room, req);
}

int imt_client_leave(imt_client *c, const char *room, uint32_t *req)
{
    return room_req(c, IMP_LEAVE, room, req);
}

int imt_client_presence(imt_client *c, int status, const char *text, uint32_t *req)
{
    imp_msg m;
    imp_msg_init(&m, IMP_PRESENCE, 0);
    imp_msg_set_u(&m, IMP_T_STATUS, (uint64_t)status);
    if (text)
        imp_msg_set_s(&m, IMP_T_STATUS_TEXT, text);
    return request(c, &m, req);
}

int imt_client_subscribe(imt_client *c, const char *const *names, int enable, uint32_t *req)
{
    size_t cap = 0;
    for (size_t i = 0; names && names[i]; i++)
        cap += strlen(names[i]) + 1;
    uint8_t *buf = malloc(cap ? cap : 1);
    if (!buf)
        return IMP_ERR_NOMEM;
    imp_builder b;
    imp_builder_init(&b, buf, cap ? cap : 1);
    for (size_t i = 0; names && names[i]; i++)
        imp_names_add(&b, names[i], strlen(names[i]));
    int r = b.err;
    if (r == 0) {
        imp_msg m;
        imp_msg_init(&m, IMP_SUBSCRIBE, 0);
        imp_msg_set_b(&m, IMP_T_NAMES, buf, b.len);
        imp_msg_set_u(&m, IMP_T_ENABLE, enable ? 1 : 0);
        r = request(c, &m, req);
    }
    free(buf);
    return r;
}

static int page_req(imt_client *c, uint8_t type, const char *room, const void *cursor,
                    size_t cursor_len, uint32_t limit, uint32_t *req)
{
    imp_msg m;
    imp_msg_init(&m, type, 0);
    if (room)
        imp_msg_set_s(&m, IMP_T_ROOM, room);
    if (cursor)
        imp_msg_set_b(&m, IMP_T_CURSOR, cursor, cursor_len);
    if (limit)
        imp_msg_set_u(&m, IMP_T_LIMIT, limit);
    return request(c, &m, req);
}

int imt_client_who(imt_client *c, const void *cursor, size_t cursor_len, uint32_t limit,
                   uint32_t *req)
{
    return page_req(c, IMP_WHO, NULL, cursor, cursor_len, limit, req);
}

int imt_client_rooms(imt_client *c, const void *cursor, size_t cursor_len, uint32_t limit,
                     uint32_t *req)
{
    return page_req(c, IMP_ROOMS, NULL, cursor, cursor_len, limit, req);
}

int imt_client_members(imt_client *c, const char *room, const void *cursor, size_t cursor_len,
                       uint32_t limit, uint32_t *req)
{
    return page_req(c, IMP_MEMBERS, room ? room : "", cursor, cursor_len, limit, req);
}

int imt_client_history(imt_client *c, const char *room, uint32_t limit, uint64_t before_id,
                       uint32_t *req)
{
    imp_msg m;
    imp_msg_init(&m, IMP_HISTORY, 0);
    imp_msg_set_s(&m, IMP_T_ROOM, room ? room : "");
    if (limit)
        imp_msg_set_u(&m, IMP_T_LIMIT, limit);
    if (before_id)
        imp_msg_set_u(&m, IMP_T_BEFORE_ID, before_id);
    return request(c, &m, req);
}

int imt_client_stats(imt_client *c, uint32_t *req)
{
    imp_msg m;
    imp_msg_init(&m, IMP_STATS, 0);
    return request(c, &m, req);
}

int imt_client_monitor(imt_client *c, int enable, uint32_t *req)
{
    imp_msg m;
    imp_msg_init(&m, IMP_MONITOR, 0);
    imp_msg_set_u(&m, IMP_T_ENABLE, enable ? 1 : 0);
    return request(c, &m, req);
}
