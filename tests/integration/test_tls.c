/* Integration: TLS listeners and safe listening defaults (issue 6, IMP-SEC-005; server/tls.c,
 * server/net.c, server/config.c, server/main.c).
 *
 * Each test makes a fresh self-signed certificate (it_make_cert) and starts imd with
 * `--tls-listen 127.0.0.1:0 --tls-cert C --tls-key K` besides the plain listener imd_proc adds.
 * The TLS client is written here on OpenSSL (blocking socket, every wait bounded); frames are
 * encoded and parsed with libimp as client.c's raw mode does.
 *
 * a) a session over TLS (the certificate verified against itself as CA, for IP 127.0.0.1):
 *    HELLO -> WELCOME, REGISTER -> AUTH_OK, SEND to a user on plain TCP -> ACK stored ->
 *    DELIVER there; and a message from the plain user delivered over TLS;
 * b) plain text on the TLS port (an IMP HELLO frame, an HTTP request) is closed at once (within
 *    1 s; the time is printed), and counted in imd_tls_handshake_failures_total;
 * c) incomplete handshakes (nothing sent; the first 20 bytes of a ClientHello) are closed by
 *    tls_handshake_timeout_ms = 1000 within 3 s while a normal TLS client works meanwhile; on
 *    SIGTERM a TLS session gets ERROR SHUTDOWN and a pending handshake does not delay the exit;
 * d) versions: a TLS 1.1 client is refused; with tls_min_version = 1.3 a TLS 1.2 client is
 *    refused and a TLS 1.3 client works;
 * e) bad files: a missing certificate, a key that does not match, garbage PEM: exit 2 with a
 *    message naming the file, at start and with --check-config;
 * f) safe defaults: plain listen / metrics on a non-loopback address is refused (exit 2) unless
 *    allow_insecure_listen; only --check-config is run for those (tests stay on loopback);
 * g) SIGHUP with a new certificate: new connections get it (fingerprints compared), the old
 *    connection keeps working; a broken file keeps the current certificate;
 * h) 200 TLS connections dropped before, during or right after the handshake: imd's descriptor
 *    count returns to its baseline, same pid;
 * i) a TLS client that stops reading is cut as a slow consumer (output caps hold over TLS);
 * and in a): 500 small SENDs pipelined over TLS cost a few group commits, not one each.
 * Every test ends with the liveness check and a clean stop.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "itest.h"

#define T 5000

/* ---- files and logs ----------------------------------------------------------------------- */

static long file_size(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? (long)st.st_size : 0;
}

/* A certificate in a subdirectory of the imd_proc's directory. */
typedef struct certpair {
    char dir[400];
    char cert[500];
    char key[500];
} certpair;

static void make_cert(const imd_proc *p, const char *sub, certpair *cp)
{
    snprintf(cp->dir, sizeof cp->dir, "%s/%s", p->dir, sub);
    IT_CHECK(mkdir(cp->dir, 0700) == 0 || errno == EEXIST, "mkdir %s: %s", cp->dir,
             strerror(errno));
    it_make_cert(cp->dir, cp->cert, sizeof cp->cert, cp->key, sizeof cp->key);
}

/* imd created (not started) with a TLS listener on the certificate "c1" and extra arguments. */
static imd_proc *create_tls_imd(certpair *cp, const char *const *extra)
{
    imd_proc *p = it_create_imd(NULL);
    make_cert(p, "c1", cp);
    const char *args[] = {"--tls-listen", "127.0.0.1:0", "--tls-cert", cp->cert,
                          "--tls-key",    cp->key,       NULL};
    imd_add_args(p, args);
    if (extra)
        imd_add_args(p, extra);
    return p;
}

static imd_proc *start_tls_imd(certpair *cp, const char *const *extra)
{
    imd_proc *p = create_tls_imd(cp, extra);
    it_start(p);
    IT_CHECK(p->tls_port > 0, "no 'imd: listening on 127.0.0.1:PORT (tls)' line");
    IT_CHECK(p->tls_port != p->port, "the TLS port is the plain port");
    return p;
}

/* ---- a TLS client on OpenSSL ---------------------------------------------------------------- */

typedef struct tlsc {
    int fd;
    SSL_CTX *ctx;
    SSL *ssl;
    uint8_t *rbuf;
    size_t rlen, rcap;
    uint32_t req;
    int eof;
} tlsc;

/* A blocking TCP connection to 127.0.0.1:port; reads time out after 50 ms (so that every wait
 * below can check its deadline), writes after 5 s. -1 on failure. */
static int tcp_connect(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    struct timeval rt = {0, 50 * 1000}, wt = {5, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &rt, sizeof rt);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &wt, sizeof wt);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        close(fd);
        return -1;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

/* A client context trusting the certificate at cafile for IP 127.0.0.1. minv/maxv: 0 or
 * TLS1_x_VERSION. Versions below 1.2 need security level 0 in OpenSSL 3, or the client would
 * refuse to offer them itself (and the test would prove nothing about the server). */
static SSL_CTX *client_ctx(const char *cafile, int minv, int maxv)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    IT_CHECK(ctx != NULL, "SSL_CTX_new");
    if (minv)
        SSL_CTX_set_min_proto_version(ctx, minv);
    if (maxv)
        SSL_CTX_set_max_proto_version(ctx, maxv);
    if (maxv && maxv < TLS1_2_VERSION) {
        SSL_CTX_set_security_level(ctx, 0);
        SSL_CTX_set_cipher_list(ctx, "DEFAULT:@SECLEVEL=0");
    }
    IT_CHECK(SSL_CTX_load_verify_locations(ctx, cafile, NULL) == 1, "load CA %s", cafile);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    X509_VERIFY_PARAM_set1_ip_asc(SSL_CTX_get0_param(ctx), "127.0.0.1");
    return ctx;
}

static void tlsc_free(tlsc *c)
{
    if (!c)
        return;
    if (c->ssl)
        SSL_free(c->ssl);
    if (c->ctx)
        SSL_CTX_free(c->ctx);
    if (c->fd >= 0)
        close(c->fd);
    free(c->rbuf);
    free(c);
}

/* Connect and complete the handshake within timeout_ms. NULL on failure, with OpenSSL's reason
 * in why. */
static tlsc *tlsc_open(int port, const char *cafile, int minv, int maxv, int timeout_ms, char *why,
                       size_t whylen)
{
    tlsc *c = calloc(1, sizeof *c);
    IT_CHECK(c != NULL, "calloc");
    c->fd = tcp_connect(port);
    IT_CHECK(c->fd >= 0, "connect to the TLS port %d: %s", port, strerror(errno));
    c->ctx = client_ctx(cafile, minv, maxv);
    c->ssl = SSL_new(c->ctx);
    IT_CHECK(c->ssl != NULL, "SSL_new");
    SSL_set_fd(c->ssl, c->fd);
    uint64_t end = it_now_ms() + (uint64_t)timeout_ms;
    snprintf(why, whylen, "timeout");
    ERR_clear_error();
    for (;;) {
        int r = SSL_connect(c->ssl);
        if (r == 1)
            return c;
        int e = SSL_get_error(c->ssl, r);
        if ((e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) && it_now_ms() < end)
            continue;
        unsigned long le = ERR_peek_last_error();
        if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE)
            snprintf(why, whylen, "SSL error %d: %s", e,
                     le ? ERR_reason_error_string(le) : "connection closed");
        ERR_clear_error();
        tlsc_free(c);
        return NULL;
    }
}

static void tlsc_send(tlsc *c, imp_msg *m)
{
    if (!m->request_id)
        m->request_id = ++c->req;
    uint8_t buf[8192];
    imp_ssize n = imp_msg_encode(m, buf, sizeof buf);
    IT_CHECK(n > 0, "imp_msg_encode: %d", (int)n);
    IT_CHECK(SSL_write(c->ssl, buf, (int)n) == (int)n, "SSL_write of %d bytes failed", (int)n);
}

/* Reads more into rbuf: 1 bytes came, 0 nothing yet (timeout of one read), -1 closed. */
static int tlsc_read_some(tlsc *c)
{
    uint8_t tmp[16384];
    int r = SSL_read(c->ssl, tmp, sizeof tmp);
    if (r > 0) {
        if (c->rlen + (size_t)r > c->rcap) {
            size_t cap = c->rcap ? c->rcap * 2 : 65536;
            while (cap < c->rlen + (size_t)r)
                cap *= 2;
            uint8_t *nb = realloc(c->rbuf, cap);
            IT_CHECK(nb != NULL, "realloc");
            c->rbuf = nb;
            c->rcap = cap;
        }
        memcpy(c->rbuf + c->rlen, tmp, (size_t)r);
        c->rlen += (size_t)r;
        return 1;
    }
    int e = SSL_get_error(c->ssl, r);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
        return 0;
    ERR_clear_error();
    c->eof = 1;
    return -1;
}

/* The first frame of type (0 any) and request id (0 any) within timeout_ms: its bytes (the
 * caller frees) with *m decoded as views into them; other frames are dropped. NULL on timeout
 * or close. */
static uint8_t *tlsc_wait(tlsc *c, uint8_t type, uint32_t req, imp_msg *m, int timeout_ms)
{
    uint64_t end = it_now_ms() + (uint64_t)timeout_ms;
    for (;;) {
        imp_frame f;
        imp_ssize n = imp_frame_parse(c->rbuf, c->rlen, 0, &f, NULL);
        IT_CHECK(n >= 0, "bad frame from imd over TLS: %d", (int)n);
        if (n > 0) {
            uint8_t *copy = malloc((size_t)n);
            IT_CHECK(copy != NULL, "malloc");
            memcpy(copy, c->rbuf, (size_t)n);
            memmove(c->rbuf, c->rbuf + n, c->rlen - (size_t)n);
            c->rlen -= (size_t)n;
            IT_CHECK(imp_frame_parse(copy, (size_t)n, 0, &f, NULL) == n, "reparse");
            IT_CHECK(imp_msg_decode(&f, m) == 0, "undecodable %s frame over TLS",
                     imp_type_name(f.type) ? imp_type_name(f.type) : "?");
            if ((!type || m->type == type) && (!req || m->request_id == req))
                return copy;
            free(copy);
            continue;
        }
        if (c->eof || it_now_ms() >= end)
            return NULL;
        tlsc_read_some(c);
    }
}

/* HELLO -> WELCOME. */
static void tlsc_hello(tlsc *c)
{
    imp_msg m;
    imp_msg_init(&m, IMP_HELLO, 0);
    imp_msg_set_u(&m, IMP_T_VERSION_MIN, 1);
    imp_msg_set_u(&m, IMP_T_VERSION_MAX, 1);
    imp_msg_set_s(&m, IMP_T_AGENT, "imp-itest-tls");
    tlsc_send(c, &m);
    uint8_t *w = tlsc_wait(c, IMP_WELCOME, 0, &m, T);
    IT_CHECK(w != NULL, "no WELCOME over TLS");
    free(w);
}

/* REGISTER -> AUTH_OK. */
static void tlsc_register(tlsc *c, const char *user, const char *pw)
{
    imp_msg m;
    imp_msg_init(&m, IMP_REGISTER, 0);
    imp_msg_set_s(&m, IMP_T_USER, user);
    imp_msg_set_s(&m, IMP_T_PASSWORD, pw);
    tlsc_send(c, &m);
    uint8_t *r = tlsc_wait(c, 0, m.request_id, &m, T);
    IT_CHECK(r != NULL, "no answer to REGISTER over TLS");
    IT_CHECK(m.type == IMP_AUTH_OK, "REGISTER %s over TLS: %s (code %llu)", user,
             imp_type_name(m.type), (unsigned long long)imp_msg_u(&m, IMP_T_CODE, 0));
    free(r);
}

/* A durable direct message; returns the OUTCOME of its ACK. */
static int tlsc_send_text(tlsc *c, const char *to, const char *body)
{
    tc_msg s;
    memset(&s, 0, sizeof s);
    s.kind = IMP_TARGET_USER;
    s.target = to;
    s.cls = -1;
    s.ack_mode = -1;
    s.body = body;
    s.body_len = strlen(body);
    imp_msg m;
    tc_build_send(&s, &m);
    tlsc_send(c, &m);
    uint8_t *a = tlsc_wait(c, IMP_ACK, m.request_id, &m, T);
    IT_CHECK(a != NULL, "no ACK over TLS for a message to %s", to);
    int outcome = (int)imp_msg_u(&m, IMP_T_OUTCOME, 0);
    free(a);
    return outcome;
}

/* Waits for a DELIVER over TLS with that body from that sender. */
static void tlsc_expect_deliver(tlsc *c, const char *from, const char *body)
{
    imp_msg m;
    uint8_t *d = tlsc_wait(c, IMP_DELIVER, 0, &m, T);
    IT_CHECK(d != NULL, "no DELIVER over TLS");
    imp_bytes b = imp_msg_b(&m, IMP_T_BODY);
    IT_CHECK(b.len == strlen(body) && memcmp(b.p, body, b.len) == 0, "DELIVER body %.*s",
             (int)b.len, (const char *)b.p);
    IT_CHECK(tc_field_is(&m, IMP_T_SENDER, from), "DELIVER not from %s", from);
    free(d);
}

/* SHA-256 of a certificate. */
static void cert_fp(X509 *x, unsigned char md[32])
{
    unsigned int len = 0;
    IT_CHECK(X509_digest(x, EVP_sha256(), md, &len) == 1 && len == 32, "X509_digest");
}

static void peer_fp(tlsc *c, unsigned char md[32])
{
#if OPENSSL_VERSION_NUMBER >= 0x30000000L
    X509 *x = SSL_get1_peer_certificate(c->ssl);
#else
    X509 *x = SSL_get_peer_certificate(c->ssl);
#endif
    IT_CHECK(x != NULL, "no peer certificate");
    cert_fp(x, md);
    X509_free(x);
}

static void file_fp(const char *path, unsigned char md[32])
{
    FILE *f = fopen(path, "r");
    IT_CHECK(f != NULL, "open %s", path);
    X509 *x = PEM_read_X509(f, NULL, NULL, NULL);
    fclose(f);
    IT_CHECK(x != NULL, "no certificate in %s", path);
    cert_fp(x, md);
    X509_free(x);
}

/* ---- raw TCP ------------------------------------------------------------------------------ */

/* Reads and drops until the server closes (EOF or reset): the time it took from t0, or -1 when
 * still open at t0 + timeout_ms. */
static long wait_closed(int fd, uint64_t t0, int timeout_ms)
{
    uint64_t end = t0 + (uint64_t)timeout_ms;
    for (;;) {
        char buf[4096];
        ssize_t r = recv(fd, buf, sizeof buf, 0);
        if (r == 0 || (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR))
            return (long)(it_now_ms() - t0);
        if (it_now_ms() >= end)
            return -1;
    }
}

/* The value of a metric line "name value", -1 when absent. */
static long long metric(int port, const char *name)
{
    static char body[65536];
    IT_CHECK(it_http_get(port, "/metrics", body, sizeof body) > 0, "GET /metrics");
    char want[128];
    snprintf(want, sizeof want, "\n%s ", name);
    const char *at = strstr(body, want);
    return at ? strtoll(at + strlen(want), NULL, 10) : -1;
}

/* ---- a) a session over TLS ---------------------------------------------------------------- */

static void test_session_over_tls(void **state)
{
    (void)state;
    certpair cp;
    const char *extra[] = {"--metrics", "127.0.0.1:0", NULL};
    imd_proc *p = start_tls_imd(&cp, extra);
    long pid = (long)p->pid;
    char why[256];
    tlsc *a = tlsc_open(p->tls_port, cp.cert, 0, 0, T, why, sizeof why);
    IT_CHECK(a != NULL, "TLS handshake with imd failed: %s", why);
    IT_EQ(SSL_get_verify_result(a->ssl), X509_V_OK);
    it_note("TLS session: %s, %s", SSL_get_version(a->ssl), SSL_get_cipher_name(a->ssl));
    tlsc_hello(a);
    tlsc_register(a, "tlsalice", "alice password");

    tc *b = it_register(p->port, "plainbob", "bob password", NULL);
    /* TLS -> plain */
    IT_EQ(tlsc_send_text(a, "plainbob", "over TLS to plain"), IMP_OUTCOME_STORED);
    tc_frame *d = tc_wait(b, IMP_DELIVER, 0, T);
    IT_CHECK(d != NULL, "plain user got no DELIVER of the TLS user's message");
    imp_bytes body = imp_msg_b(&d->m, IMP_T_BODY);
    IT_CHECK(body.len == 17 && memcmp(body.p, "over TLS to plain", 17) == 0, "body %.*s",
             (int)body.len, (const char *)body.p);
    IT_CHECK(tc_field_is(&d->m, IMP_T_SENDER, "tlsalice"), "DELIVER not from tlsalice");
    tc_frame_free(d);
    /* plain -> TLS */
    tc_ack ack;
    IT_EQ(tc_send_text(b, "tlsalice", NULL, "from plain to TLS", &ack), 0);
    IT_EQ(ack.outcome, IMP_OUTCOME_STORED);
    tlsc_expect_deliver(a, "plainbob", "from plain to TLS");
    /* a bigger message both ways (several TLS records) */
    static char big[6000];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = 0;
    IT_EQ(tlsc_send_text(a, "plainbob", big), IMP_OUTCOME_STORED);
    d = tc_wait(b, IMP_DELIVER, 0, T);
    IT_CHECK(d != NULL && imp_msg_b(&d->m, IMP_T_BODY).len == sizeof big - 1, "big DELIVER");
    tc_frame_free(d);
    IT_EQ(tc_send_text(b, "tlsalice", NULL, big, &ack), 0);
    tlsc_expect_deliver(a, "plainbob", big);
    tc_close(b);

    /* 500 small SENDs pipelined, one TLS record each, arriving together (corked): imd decrypts
     * what one read brings and commits them in a few group commits, as on a plain connection
     * (a socket-based OpenSSL bufferevent would decrypt two records per loop turn: 250
     * commits) */
    long long commits0 = metric(p->metrics_port, "imd_store_commits");
    int on = 1, off = 0;
    IT_EQ(setsockopt(a->fd, IPPROTO_TCP, TCP_CORK, &on, sizeof on), 0);
    uint64_t t0 = it_now_ms();
    for (int i = 0; i < 500; i++) {
        char text[32];
        snprintf(text, sizeof text, "pipelined %d", i);
        tc_msg s;
        memset(&s, 0, sizeof s);
        s.kind = IMP_TARGET_USER;
        s.target = "plainbob";
        s.cls = -1;
        s.ack_mode = -1;
        s.body = text;
        s.body_len = strlen(text);
        imp_msg m;
        tc_build_send(&s, &m);
        tlsc_send(a, &m);
    }
    IT_EQ(setsockopt(a->fd, IPPROTO_TCP, TCP_CORK, &off, sizeof off), 0);
    for (int i = 0; i < 500; i++) {
        imp_msg m;
        uint8_t *f = tlsc_wait(a, IMP_ACK, 0, &m, T);
        IT_CHECK(f != NULL, "ACK %d of 500 pipelined SENDs missing", i);
        IT_EQ(imp_msg_u(&m, IMP_T_OUTCOME, 0), IMP_OUTCOME_STORED);
        free(f);
    }
    long long commits = metric(p->metrics_port, "imd_store_commits") - commits0;
    it_note("500 pipelined SENDs over TLS (one record each): all ACKed in %llu ms, %lld group "
            "commits",
            (unsigned long long)(it_now_ms() - t0), commits);
    IT_CHECK(commits >= 1 && commits < 100, "%lld commits for 500 pipelined SENDs", commits);
    IT_EQ(metric(p->metrics_port, "imd_tls_handshakes_total"), 1);
    tlsc_free(a);
    it_liveness(p, pid, NULL, NULL, NULL, NULL);
    it_finish(p);
}

/* ---- b) plain text on the TLS port ---------------------------------------------------------- */

static void test_plain_text_on_tls_port(void **state)
{
    (void)state;
    certpair cp;
    const char *extra[] = {"--metrics", "127.0.0.1:0", NULL};
    imd_proc *p = start_tls_imd(&cp, extra);
    long pid = (long)p->pid;
    IT_CHECK(p->metrics_port > 0, "no metrics port");
    long long fail0 = metric(p->metrics_port, "imd_tls_handshake_failures_total");
    IT_EQ(fail0, 0);

    uint8_t hello[256];
    imp_msg m;
    imp_msg_init(&m, IMP_HELLO, 1);
    imp_msg_set_u(&m, IMP_T_VERSION_MIN, 1);
    imp_msg_set_u(&m, IMP_T_VERSION_MAX, 1);
    imp_ssize hn = imp_msg_encode(&m, hello, sizeof hello);
    IT_CHECK(hn > 0, "encode HELLO");
    static const char http[] = "GET / HTTP/1.0\r\n\r\n";
    const struct {
        const char *what;
        const void *p;
        size_t n;
    } cases[] = {{"an IMP HELLO frame", hello, (size_t)hn},
                 {"an HTTP request", http, sizeof http - 1}};
    for (size_t i = 0; i < 2; i++) {
        int fd = tcp_connect(p->tls_port);
        IT_CHECK(fd >= 0, "connect");
        uint64_t t0 = it_now_ms();
        IT_EQ(send(fd, cases[i].p, cases[i].n, MSG_NOSIGNAL), (long)cases[i].n);
        long ms = wait_closed(fd, t0, 1000);
        close(fd);
        IT_CHECK(ms >= 0, "%s on the TLS port: still open after 1 s", cases[i].what);
        it_note("%s on the TLS port: closed after %ld ms", cases[i].what, ms);
    }
    /* both counted as failed handshakes; the plain port still speaks IMP */
    uint64_t end = it_now_ms() + T;
    long long fails;
    while ((fails = metric(p->metrics_port, "imd_tls_handshake_failures_total")) < 2 &&
           it_now_ms() < end)
        it_sleep_ms(20);
    IT_EQ(fails, 2);
    IT_EQ(metric(p->metrics_port, "imd_tls_handshakes_total"), 0);
    char why[256];
    tlsc *c = tlsc_open(p->tls_port, cp.cert, 0, 0, T, why, sizeof why);
    IT_CHECK(c != NULL, "TLS client after the plain ones: %s", why);
    tlsc_hello(c);
    tlsc_free(c);
    IT_EQ(metric(p->metrics_port, "imd_tls_handshakes_total"), 1);
    it_liveness(p, pid, NULL, NULL, NULL, NULL);
    it_finish(p);
}

/* ---- c) incomplete handshakes ------------------------------------------------------------- */

static void test_handshake_timeout(void **state)
{
    (void)state;
    certpair cp;
    const char *extra[] = {"--set", "tls_handshake_timeout_ms=1000", NULL};
    imd_proc *p = start_tls_imd(&cp, extra);
    long pid = (long)p->pid;

    /* silent: connected, nothing sent */
    int silent = tcp_connect(p->tls_port);
    uint64_t t_silent = it_now_ms();
    IT_CHECK(silent >= 0, "connect");
    /* the first 20 bytes of a ClientHello: a handshake record announcing 512 bytes, then the
     * start of the ClientHello (type 1, length 508, version 3.3, 12 bytes of "random") */
    static const uint8_t partial[20] = {0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03,
                                        0x03, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99};
    int part = tcp_connect(p->tls_port);
    IT_CHECK(part >= 0, "connect");
    uint64_t t_part = it_now_ms();
    IT_EQ(send(part, partial, sizeof partial, MSG_NOSIGNAL), (long)sizeof partial);

    /* meanwhile a normal TLS client works */
    char why[256];
    tlsc *c = tlsc_open(p->tls_port, cp.cert, 0, 0, T, why, sizeof why);
    IT_CHECK(c != NULL, "TLS client next to stalled handshakes: %s", why);
    tlsc_hello(c);
    tlsc_register(c, "tlscarol", "carol password");
    IT_CHECK(it_now_ms() - t_silent < 1000, "the normal client took too long to check this");

    long ms_silent = wait_closed(silent, t_silent, 3000);
    long ms_part = wait_closed(part, t_part, 3000);
    close(silent);
    close(part);
    IT_CHECK(ms_silent >= 0, "a silent TLS connection is still open after 3 s");
    IT_CHECK(ms_part >= 0, "a half ClientHello is still open after 3 s");
    it_note("handshake deadline 1000 ms: silent connection closed after %ld ms, half ClientHello "
            "after %ld ms",
            ms_silent, ms_part);
    /* the established session outlived the deadline */
    IT_EQ(tlsc_send_text(c, "tlscarol", "note to self"), IMP_OUTCOME_STORED);
    tlsc_expect_deliver(c, "tlscarol", "note to self");
    it_liveness(p, pid, NULL, NULL, NULL, NULL);
    /* SIGTERM with a TLS session and a connection in its handshake open: the session is told
     * (ERROR 730 SHUTDOWN over TLS), the handshake is dropped, imd exits 0 in time */
    silent = tcp_connect(p->tls_port);
    IT_CHECK(silent >= 0, "connect");
    it_sleep_ms(50);
    it_finish(p);
    imp_msg m;
    uint8_t *e = tlsc_wait(c, IMP_ERROR, 0, &m, T);
    IT_CHECK(e != NULL, "no ERROR SHUTDOWN over TLS on SIGTERM");
    IT_EQ(imp_msg_u(&m, IMP_T_CODE, 0), 730);
    free(e);
    IT_CHECK(wait_closed(silent, it_now_ms(), 1000) >= 0, "handshake connection left open");
    close(silent);
    tlsc_free(c);
}

/* ---- d) versions -------------------------------------------------------------------------- */

static void test_versions(void **state)
{
    (void)state;
    certpair cp;
    imd_proc *p = start_tls_imd(&cp, NULL);
    long pid = (long)p->pid;
    char why[256];
    long off = file_size(p->errlog);
    tlsc *c = tlsc_open(p->tls_port, cp.cert, TLS1_VERSION, TLS1_1_VERSION, T, why, sizeof why);
    IT_CHECK(c == NULL, "a TLS 1.1 client was accepted (%s)", c ? SSL_get_version(c->ssl) : "");
    it_note("TLS 1.1 client refused: %s", why);
    IT_CHECK(strstr(why, "protocol version") != NULL, "not refused for its version: %s", why);
    /* refused by the server: it saw the ClientHello and logged why */
    IT_CHECK(it_wait_log(p, off, "tls_handshake_failed", T), "imd did not log the refusal");
    /* 1.2 is the default minimum */
    c = tlsc_open(p->tls_port, cp.cert, 0, TLS1_2_VERSION, T, why, sizeof why);
    IT_CHECK(c != NULL, "TLS 1.2 client refused by default: %s", why);
    IT_EQ(SSL_version(c->ssl), TLS1_2_VERSION);
    tlsc_hello(c);
    tlsc_free(c);
    it_liveness(p, pid, NULL, NULL, NULL, NULL);
    it_finish(p);

    /* tls_min_version = 1.3 */
    const char *extra[] = {"--set", "tls_min_version=1.3", NULL};
    p = start_tls_imd(&cp, extra);
    pid = (long)p->pid;
    off = file_size(p->errlog);
    c = tlsc_open(p->tls_port, cp.cert, 0, TLS1_2_VERSION, T, why, sizeof why);
    IT_CHECK(c == NULL, "tls_min_version = 1.3 accepted a TLS 1.2 client");
    it_note("TLS 1.2 client refused by tls_min_version = 1.3: %s", why);
    IT_CHECK(strstr(why, "protocol version") != NULL, "not refused for its version: %s", why);
    IT_CHECK(it_wait_log(p, off, "tls_handshake_failed", T), "imd did not log the refusal");
    c = tlsc_open(p->tls_port, cp.cert, TLS1_3_VERSION, 0, T, why, sizeof why);
    IT_CHECK(c != NULL, "TLS 1.3 client refused: %s", why);
    IT_EQ(SSL_version(c->ssl), TLS1_3_VERSION);
    tlsc_hello(c);
    tlsc_register(c, "tlsdave", "dave password");
    tlsc_free(c);
    it_liveness(p, pid, NULL, NULL, NULL, NULL);
    it_finish(p);
}

/* ---- e) bad certificate and key files ------------------------------------------------------ */

/* imd with args (at start, or with --check-config added) exits 2 and its stderr names needle. */
static void expect_refused(imd_proc *p, const char *const *args, const char *needle,
                           const char *what)
{
    for (int check = 0; check < 2; check++) {
        const char *argv[24];
        int n = 0;
        for (; args[n] && n < 20; n++)
            argv[n] = args[n];
        if (check)
            argv[n++] = "--check-config";
        argv[n] = NULL;
        long off = file_size(p->errlog);
        char out[4096];
        int rc = it_admin(p, NULL, out, sizeof out, argv);
        char *err = it_slurp_from(p->errlog, off);
        IT_CHECK(rc == 2, "%s%s: exit %d, want 2; stderr: %s", what,
                 check ? " (--check-config)" : "", rc, err);
        IT_CHECK(strstr(err, needle) != NULL, "%s: stderr does not name %s: %s", what, needle, err);
        IT_CHECK(strstr(out, "imd: ready") == NULL, "%s: imd started", what);
        const char *line = strstr(err, "imd: ");
        if (!check && line)
            it_note("%s -> %.*s", what, (int)strcspn(line, "\n"), line);
        free(err);
    }
}

static void test_bad_files(void **state)
{
    (void)state;
    imd_proc *p = it_create_imd(NULL);
    certpair a, b;
    make_cert(p, "a", &a);
    make_cert(p, "b", &b);
    char missing[600], garbage[600];
    snprintf(missing, sizeof missing, "%s/no-such-cert.pem", p->dir);
    snprintf(garbage, sizeof garbage, "%s/garbage.pem", p->dir);
    it_write_text(garbage, "-----BEGIN CERTIFICATE-----\nnot base64 at all!\n"
                           "-----END CERTIFICATE-----\n");

    const char *m1[] = {"--tls-listen", "127.0.0.1:0", "--tls-cert", missing,
                        "--tls-key",    a.key,         NULL};
    expect_refused(p, m1, "no-such-cert.pem", "a missing certificate");
    const char *m2[] = {"--tls-listen", "127.0.0.1:0", "--tls-cert", a.cert,
                        "--tls-key",    b.key,         NULL};
    expect_refused(p, m2, b.key, "a key of another certificate");
    const char *m3[] = {"--tls-listen", "127.0.0.1:0", "--tls-cert", garbage,
                        "--tls-key",    a.key,         NULL};
    expect_refused(p, m3, "garbage.pem", "garbage PEM as the certificate");
    const char *m4[] = {"--tls-listen", "127.0.0.1:0", "--tls-cert", a.cert,
                        "--tls-key",    garbage,       NULL};
    expect_refused(p, m4, "garbage.pem", "garbage PEM as the key");
    const char *m5[] = {"--tls-listen", "127.0.0.1:0", "--tls-cert", a.key,
                        "--tls-key",    a.key,         NULL};
    expect_refused(p, m5, a.key, "a key file as the certificate");
    const char *m6[] = {"--tls-listen", "127.0.0.1:0", NULL};
    expect_refused(p, m6, "tls_cert", "tls_listen without a certificate");
    const char *m7[] = {
        "--tls-listen", "unix:/tmp/imd-tls.sock", "--tls-cert", a.cert, "--tls-key", a.key, NULL};
    expect_refused(p, m7, "Unix", "tls_listen on a Unix socket");
    /* the good pair passes --check-config */
    const char *ok[] = {"--tls-listen", "127.0.0.1:0", "--tls-cert",     a.cert,
                        "--tls-key",    a.key,         "--check-config", NULL};
    char out[8192];
    IT_EQ(it_admin(p, NULL, out, sizeof out, ok), 0);
    IT_CHECK(strstr(out, "tls_listen = 127.0.0.1:0\n") != NULL, "--check-config: %s", out);
    it_start(p);
    it_liveness(p, (long)p->pid, NULL, NULL, NULL, NULL);
    it_finish(p);
}

/* ---- f) safe listening defaults ----------------------------------------------------------- */

static void test_safe_defaults(void **state)
{
    (void)state;
    imd_proc *p = it_create_imd(NULL);
    /* no configuration at all: 127.0.0.1:7600 only, no TLS */
    char out[8192];
    const char *none[] = {"--check-config", NULL};
    IT_EQ(it_admin(p, NULL, out, sizeof out, none), 0);
    IT_CHECK(strstr(out, "listen = 127.0.0.1:7600\n") == out, "default listen: %s", out);
    IT_CHECK(strstr(out, "\nlisten =") == NULL, "more than one default listen: %s", out);
    IT_CHECK(strstr(out, "\ntls_listen =\n") != NULL, "a default TLS listener: %s", out);
    IT_CHECK(strstr(out, "\nallow_insecure_listen = no\n") != NULL, "default allow: %s", out);

    /* a plain listener on 0.0.0.0 at start: refused before it binds anything */
    const char *any[] = {"--listen", "0.0.0.0:0", NULL};
    long off = file_size(p->errlog);
    IT_EQ(it_admin(p, NULL, out, sizeof out, any), 2);
    char *err = it_slurp_from(p->errlog, off);
    IT_CHECK(strstr(err, "imd: listen 0.0.0.0:0: not a loopback address and not TLS: use "
                         "tls_listen, or set allow_insecure_listen = yes") != NULL,
             "stderr: %s", err);
    IT_CHECK(strstr(out, "listening") == NULL, "it listened: %s", out);
    free(err);
    /* in a file, with --check-config */
    char conf[400];
    snprintf(conf, sizeof conf, "%s/any.conf", p->dir);
    it_write_text(conf, "listen = 0.0.0.0:7600\n");
    const char *file[] = {"--config", conf, "--check-config", NULL};
    off = file_size(p->errlog);
    IT_EQ(it_admin(p, NULL, out, sizeof out, file), 2);
    err = it_slurp_from(p->errlog, off);
    IT_CHECK(strstr(err, "listen 0.0.0.0:7600: not a loopback address") != NULL, "stderr: %s", err);
    free(err);
    const char *v6[] = {"--listen", "[::]:0", "--check-config", NULL};
    IT_EQ(it_admin(p, NULL, out, sizeof out, v6), 2);
    const char *other[] = {"--listen",   "127.0.0.1:0",    "--listen",
                           "10.1.2.3:0", "--check-config", NULL};
    IT_EQ(it_admin(p, NULL, out, sizeof out, other), 2);
    /* allowed explicitly: --check-config passes with a warning */
    const char *allow[] = {"--config", conf, "--allow-insecure-listen", "--check-config", NULL};
    off = file_size(p->errlog);
    IT_EQ(it_admin(p, NULL, out, sizeof out, allow), 0);
    IT_CHECK(strstr(out, "allow_insecure_listen = yes\n") != NULL, "%s", out);
    err = it_slurp_from(p->errlog, off);
    IT_CHECK(strstr(err, "insecure_listen") != NULL && strstr(err, "0.0.0.0:7600") != NULL,
             "no warning about the insecure listener: %s", err);
    free(err);
    const char *allow_set[] = {"--config",       conf, "--set", "allow_insecure_listen=yes",
                               "--check-config", NULL};
    IT_EQ(it_admin(p, NULL, out, sizeof out, allow_set), 0);
    /* metrics likewise (the flag is --metrics) */
    const char *met[] = {"--metrics", "0.0.0.0:0", "--check-config", NULL};
    off = file_size(p->errlog);
    IT_EQ(it_admin(p, NULL, out, sizeof out, met), 2);
    err = it_slurp_from(p->errlog, off);
    IT_CHECK(strstr(err, "metrics_listen 0.0.0.0:0: not a loopback address") != NULL, "%s", err);
    free(err);
    const char *met_ok[] = {"--metrics", "0.0.0.0:0", "--allow-insecure-listen", "--check-config",
                            NULL};
    IT_EQ(it_admin(p, NULL, out, sizeof out, met_ok), 0);
    const char *met_lo[] = {"--metrics",      "[::1]:0", "--listen", "unix:/tmp/imd-x.sock",
                            "--check-config", NULL};
    IT_EQ(it_admin(p, NULL, out, sizeof out, met_lo), 0);
    /* TLS may listen anywhere */
    certpair cp;
    make_cert(p, "c1", &cp);
    const char *tls_any[] = {"--tls-listen",   "0.0.0.0:0", "--tls-listen", "[::]:0",
                             "--tls-cert",     cp.cert,     "--tls-key",    cp.key,
                             "--check-config", NULL};
    IT_EQ(it_admin(p, NULL, out, sizeof out, tls_any), 0);
    /* admin subcommands listen on nothing: not refused */
    const char *user[] = {"--listen", "0.0.0.0:0", "user", "list", NULL};
    IT_EQ(it_admin(p, NULL, out, sizeof out, user), 0);
    it_start(p);
    it_liveness(p, (long)p->pid, NULL, NULL, NULL, NULL);
    it_finish(p);
}

/* ---- g) SIGHUP with a new certificate ---------------------------------------------------------
 */

static void test_sighup_new_cert(void **state)
{
    (void)state;
    imd_proc *p = it_create_imd(NULL);
    certpair c1, c2;
    make_cert(p, "c1", &c1);
    make_cert(p, "c2", &c2);
    char conf[400], text[2048];
    snprintf(conf, sizeof conf, "%s/imd.conf", p->dir);
    snprintf(text, sizeof text, "tls_listen = 127.0.0.1:0\ntls_cert = %s\ntls_key = %s\n", c1.cert,
             c1.key);
    it_write_text(conf, text);
    const char *args[] = {"--config", conf, NULL};
    imd_add_args(p, args);
    it_start(p);
    long pid = (long)p->pid;
    IT_CHECK(p->tls_port > 0, "no TLS listener from the config file");
    unsigned char f1[32], f2[32], got[32];
    file_fp(c1.cert, f1);
    file_fp(c2.cert, f2);
    IT_CHECK(memcmp(f1, f2, 32) != 0, "two certificates with one fingerprint");

    /* the old connection: certificate 1, logged in */
    char why[256];
    tlsc *old = tlsc_open(p->tls_port, c1.cert, 0, 0, T, why, sizeof why);
    IT_CHECK(old != NULL, "TLS with certificate 1: %s", why);
    peer_fp(old, got);
    IT_CHECK(memcmp(got, f1, 32) == 0, "not certificate 1 before the reload");
    tlsc_hello(old);
    tlsc_register(old, "tlserin", "erin password");

    /* certificate 2 by SIGHUP */
    snprintf(text, sizeof text, "tls_listen = 127.0.0.1:0\ntls_cert = %s\ntls_key = %s\n", c2.cert,
             c2.key);
    it_write_text(conf, text);
    long off = file_size(p->errlog);
    IT_EQ(kill((pid_t)pid, SIGHUP), 0);
    IT_CHECK(it_wait_log(p, off, "tls_reloaded", T), "no tls_reloaded log line after SIGHUP");
    tlsc *fresh = tlsc_open(p->tls_port, c2.cert, 0, 0, T, why, sizeof why);
    IT_CHECK(fresh != NULL, "TLS with certificate 2 after the reload: %s", why);
    peer_fp(fresh, got);
    IT_CHECK(memcmp(got, f2, 32) == 0, "a new connection does not get certificate 2");
    tlsc_hello(fresh);
    tlsc_free(fresh);
    /* the old connection still works (its certificate was 1) */
    IT_EQ(tlsc_send_text(old, "tlserin", "still here"), IMP_OUTCOME_STORED);
    tlsc_expect_deliver(old, "tlserin", "still here");

    /* a broken key on reload: an error is logged, certificate 2 stays */
    char garbage[600];
    snprintf(garbage, sizeof garbage, "%s/garbage.pem", p->dir);
    it_write_text(garbage, "garbage\n");
    snprintf(text, sizeof text, "tls_listen = 127.0.0.1:0\ntls_cert = %s\ntls_key = %s\n", c1.cert,
             garbage);
    it_write_text(conf, text);
    off = file_size(p->errlog);
    IT_EQ(kill((pid_t)pid, SIGHUP), 0);
    IT_CHECK(it_wait_log(p, off, "tls_reload_failed", T), "no tls_reload_failed log line");
    IT_CHECK(it_wait_log(p, off, "garbage.pem", 0), "the reload error does not name the file");
    fresh = tlsc_open(p->tls_port, c2.cert, 0, 0, T, why, sizeof why);
    IT_CHECK(fresh != NULL, "TLS after a failed reload: %s", why);
    peer_fp(fresh, got);
    IT_CHECK(memcmp(got, f2, 32) == 0, "a failed reload changed the certificate");
    tlsc_free(fresh);
    IT_EQ(tlsc_send_text(old, "tlserin", "and still"), IMP_OUTCOME_STORED);
    tlsc_free(old);
    IT_CHECK(imd_alive(p), "imd died");
    IT_EQ((long)p->pid, pid);
    it_liveness(p, pid, NULL, NULL, NULL, NULL);
    it_finish(p);
}

/* ---- i) a slow consumer over TLS ------------------------------------------------------------ */

/* The output caps hold over TLS: a TLS client that stops reading is cut (SLOW_CONSUMER), the
 * core's backlog is not hidden in the TLS buffers. */
static void test_slow_consumer_tls(void **state)
{
    (void)state;
    certpair cp;
    const char *extra[] = {"--metrics", "127.0.0.1:0",         "--set", "max_frame=64k",
                           "--set",     "output_hard=128k",    "--set", "output_soft=64k",
                           "--set",     "output_soft_ms=1000", NULL};
    imd_proc *p = start_tls_imd(&cp, extra);
    long pid = (long)p->pid;
    tc *alice = it_register(p->port, "alice", "alice password", NULL);
    /* the sloth: TLS with a 4 KiB receive buffer, logged in, then never reads */
    char why[256];
    tlsc *sloth = tlsc_open(p->tls_port, cp.cert, 0, 0, T, why, sizeof why);
    IT_CHECK(sloth != NULL, "TLS: %s", why);
    int small = 4096;
    setsockopt(sloth->fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
    tlsc_hello(sloth);
    tlsc_register(sloth, "sloth", "sloth password");
    const char *key = "imd_closes_total{reason=\"slow_consumer\"}";
    long long slow0 = metric(p->metrics_port, key);
    static char body[32768];
    uint64_t t0 = it_now_ms();
    long long slow = slow0;
    int sent = 0;
    for (; sent < 300 && slow <= slow0; sent++) {
        memset(body, 'a' + sent % 26, sizeof body - 1);
        tc_ack ack;
        IT_EQ(tc_send_text(alice, "sloth", NULL, body, &ack), 0);
        IT_EQ(ack.outcome, IMP_OUTCOME_STORED);
        if (sent % 20 == 19)
            slow = metric(p->metrics_port, key);
    }
    uint64_t end = it_now_ms() + 10000;
    while ((slow = metric(p->metrics_port, key)) <= slow0 && it_now_ms() < end)
        it_sleep_ms(50);
    it_note("TLS slow consumer: %d x 32 KiB sent, cut after %llu ms", sent,
            (unsigned long long)(it_now_ms() - t0));
    IT_CHECK(slow > slow0, "a TLS client that does not read was not cut as a slow consumer");
    tlsc_free(sloth);
    tc_close(alice);
    it_liveness(p, pid, NULL, NULL, NULL, NULL);
    it_finish(p);
}

/* ---- h) many dropped TLS connections --------------------------------------------------------- */

static void test_dropped_connections(void **state)
{
    (void)state;
    certpair cp;
    imd_proc *p = start_tls_imd(&cp, NULL);
    long pid = (long)p->pid;
    it_sleep_ms(200);
    int base = it_fd_count((pid_t)pid);
    IT_CHECK(base > 0, "cannot count imd's descriptors");
    uint64_t t0 = it_now_ms();
    static const uint8_t partial[20] = {0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03,
                                        0x03, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99};
    /* 4 kinds x 50, 25 open at once: closed at once, closed mid-ClientHello, closed right after
     * the handshake, closed after HELLO */
    int done = 0, peak = 0;
    for (int kind = 0; kind < 4; kind++) {
        for (int batch = 0; batch < 2; batch++) {
            int fds[25];
            tlsc *cs[25];
            memset(cs, 0, sizeof cs);
            for (int i = 0; i < 25; i++) {
                fds[i] = -1;
                if (kind < 2) {
                    fds[i] = tcp_connect(p->tls_port);
                    IT_CHECK(fds[i] >= 0, "connect %d", done);
                    if (kind == 1)
                        IT_EQ(send(fds[i], partial, sizeof partial, MSG_NOSIGNAL),
                              (long)sizeof partial);
                } else {
                    char why[256];
                    cs[i] = tlsc_open(p->tls_port, cp.cert, 0, 0, T, why, sizeof why);
                    IT_CHECK(cs[i] != NULL, "handshake %d: %s", done, why);
                    if (kind == 3)
                        tlsc_hello(cs[i]);
                }
                done++;
            }
            int now = it_fd_count((pid_t)pid);
            if (now > peak)
                peak = now;
            for (int i = 0; i < 25; i++) {
                if (fds[i] >= 0)
                    close(fds[i]);
                tlsc_free(cs[i]);
            }
        }
    }
    IT_EQ(done, 200);
    uint64_t end = it_now_ms() + 10000;
    int n;
    while ((n = it_fd_count((pid_t)pid)) > base && it_now_ms() < end)
        it_sleep_ms(20);
    it_note("200 dropped TLS connections in %llu ms: imd's descriptors %d at start, %d at the "
            "peak, %d after",
            (unsigned long long)(it_now_ms() - t0), base, peak, n);
    IT_CHECK(n <= base, "imd holds %d descriptors, %d before the 200 connections", n, base);
    IT_CHECK(peak > base, "the connections were never seen open (peak %d)", peak);
    IT_CHECK(imd_alive(p), "imd died");
    IT_EQ((long)p->pid, pid);
    it_liveness(p, pid, NULL, NULL, NULL, NULL);
    it_finish(p);
}

int main(void)
{
    it_main_init(240);
    if (!it_imd_or_skip())
        return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_session_over_tls, it_teardown),
        cmocka_unit_test_teardown(test_plain_text_on_tls_port, it_teardown),
        cmocka_unit_test_teardown(test_handshake_timeout, it_teardown),
        cmocka_unit_test_teardown(test_versions, it_teardown),
        cmocka_unit_test_teardown(test_bad_files, it_teardown),
        cmocka_unit_test_teardown(test_safe_defaults, it_teardown),
        cmocka_unit_test_teardown(test_sighup_new_cert, it_teardown),
        cmocka_unit_test_teardown(test_dropped_connections, it_teardown),
        cmocka_unit_test_teardown(test_slow_consumer_tls, it_teardown),
    };
    return cmocka_run_group_tests_name("integration: TLS", tests, NULL, NULL);
}
