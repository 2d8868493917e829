/* Integration: hostile and malformed input against a real imd (SPEC.md 2, 3, 6, 7, 10).
 *
 * - every vector of tests/vectors/malformed.txt, on a fresh connection in three server states
 *   (no HELLO yet, after HELLO, after login; $IMP_ITEST_READY_STRIDE=n samples every n-th
 *   after login): the reference answer is
 *   computed with libimp's own server connection driven to the same state (vec_conn_at); where
 *   it is a protocol error, imd must close within 1 s, sending before the close an ERROR with
 *   exactly that code (7xx, IMP-ERR-001/002; a missing ERROR is excused only when the
 *   connection was reset while we wrote) carrying, for payload errors, the frame's request id
 *   (IMP-FRAME-007). imd must stay up (same pid);
 * - a length bomb: a header declaring a 16 MiB frame, then 10 MB streamed: closed right after
 *   the header with FRAME_TOO_LARGE (IMP-FRAME-005, IMP-SEC-002), before and after login;
 * - 16 length bombs at once, each streaming up to 100 MB after its header, before and after
 *   login: each closed within 1 s of its header, imd's RSS grows by less than 8 MiB (the bytes
 *   each managed to write and the RSS are printed);
 * - garbage bytes and an HTTP request: BAD_VERSION and close;
 * - the limits: a frame of exactly MAX_FRAME_PREAUTH passes before login (HELLO before HELLO,
 *   PING and LOGIN after it), one byte more is refused; the same with MAX_FRAME after login
 *   (SEND and PING) (IMP-FRAME-005, IMP-SESS-006);
 * - a slow consumer (never reads, small output_hard) is disconnected and gets every message on
 *   reconnect (IMP-DELIV-007);
 * - no common version (ERROR VERSION, IMP-MSG-002), a second LOGIN before the answer (STATE,
 *   IMP-SESS-004), more connections than max_connections (SERVER_FULL);
 * - valid input split into 1-byte writes and coalesced into one write gives the same answers
 *   (IMP-FRAME-008).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "itest.h"
#include "vectors.h"

#ifndef IMP_SRCDIR
#define IMP_SRCDIR "."
#endif

#define T 5000
#define CLOSE_MS 1000 /* the bound for a close after a protocol violation */

/* ---- a connection in a given server state ------------------------------------------------ */

typedef struct session_key {
    char user[33];
    uint8_t token[64];
    size_t token_len;
} session_key;

/* A raw connection in state st: AWAIT_HELLO (fresh), AWAIT_AUTH (HELLO answered) or READY
 * (logged in with the latest token, which is then replaced by the new one). */
static tc *raw_at(int port, imp_state st, session_key *key)
{
    tc *c = tc_connect_raw(port, T, 0);
    IT_CHECK(c != NULL, "connect");
    if (st == IMP_S_AWAIT_HELLO)
        return c;
    IT_EQ(tc_raw_hello(c, T), 0);
    if (st == IMP_S_AWAIT_AUTH)
        return c;
    tc_auth a;
    int r = tc_login_token(c, key->user, key->token, key->token_len, UINT64_MAX, &a, T);
    IT_CHECK(r == 0, "token login: %d", r);
    IT_CHECK(a.has_token, "AUTH_OK without TOKEN");
    memcpy(key->token, a.token, a.token_len);
    key->token_len = a.token_len;
    return c;
}

/* The reference: libimp's server connection in state st fed the bytes. Returns the negative
 * error, or 0 when the bytes are not an error in that state (a frame, or incomplete). */
static int reference(const vec *v, imp_state st)
{
    char why[256];
    imp_conn *c = vec_conn_at(IMP_ROLE_SERVER, st, why, sizeof why);
    IT_CHECK(c != NULL, "vec_conn_at: %s", why);
    int err = 0;
    size_t off = 0;
    while (off < v->len && !err) {
        imp_ssize took = imp_conn_feed(c, v->bytes + off, v->len - off);
        if (took < 0) {
            err = (int)took;
            break;
        }
        off += (size_t)took;
        imp_msg m;
        int r;
        while ((r = imp_conn_next_event(c, &m)) > 0) {
        }
        if (r < 0)
            err = r;
        if (took == 0 && r == 0)
            break;
    }
    imp_conn_free(c);
    return err;
}

static int header_error(int code)
{
    return code >= 701 && code <= 704;
}

typedef struct run_stats {
    int run, skipped, failed, no_error_frame;
} run_stats;

/* One vector on a fresh connection in state st. Returns 0 or 1 (failure, described). */
static int one_vector(imd_proc *p, const vec *v, imp_state st, session_key *key, int want,
                      run_stats *rs)
{
    tc *c = raw_at(p->port, st, key);
    uint64_t t0 = it_now_ms();
    int wr = tc_send_raw(c, v->bytes, v->len, T);
    int code = 0;
    int closed = tc_expect_close(c, CLOSE_MS, &code);
    uint64_t took = it_now_ms() - t0;
    int fail = 0;
    char d[512];
    if (!closed) {
        fprintf(stderr, "  %s (%s:%u) in %s: not closed within %d ms (want %s); write %d; %s\n",
                v->name, v->file, v->line, imp_state_name(st), CLOSE_MS, imp_err_name(want), wr,
                tc_describe(c, d, sizeof d));
        fail = 1;
    } else if (code == 0) {
        /* Closed without ERROR. IMP-ERR-002: the ERROR is sent "when it can still send"; it can
         * be lost only when imd closed while we were still writing (a reset). */
        rs->no_error_frame++;
        if (wr == 0 && c->rd_errno != ECONNRESET) {
            fprintf(stderr, "  %s (%s:%u) in %s: closed without ERROR %d (%s)\n", v->name, v->file,
                    v->line, imp_state_name(st), -want, imp_err_name(want));
            fail = 1;
        }
    } else if (code != -want) {
        fprintf(stderr, "  %s (%s:%u) in %s: ERROR %d (%s), want %d (%s)\n", v->name, v->file,
                v->line, imp_state_name(st), code, imp_err_name(code) ? imp_err_name(code) : "?",
                -want, imp_err_name(want));
        fail = 1;
    } else if (!header_error(code) && v->len >= IMP_HEADER_SIZE) {
        /* The ERROR answering a frame with a valid header carries its request id. */
        uint32_t req = (uint32_t)v->bytes[8] << 24 | (uint32_t)v->bytes[9] << 16 |
                       (uint32_t)v->bytes[10] << 8 | v->bytes[11];
        tc_frame *e = tc_wait(c, IMP_ERROR, 0, 0);
        if (e && e->m.request_id != req) {
            fprintf(stderr,
                    "  %s in %s: ERROR %d with request id %u, want %u "
                    "(IMP-FRAME-007)\n",
                    v->name, imp_state_name(st), code, (unsigned)e->m.request_id, (unsigned)req);
            fail = 1;
        }
        tc_frame_free(e);
    }
    if (c->lib_err && !fail) {
        fprintf(stderr, "  %s in %s: the server's answer is not valid IMP (%s)\n", v->name,
                imp_state_name(st), imp_err_name(c->lib_err));
        fail = 1;
    }
    (void)took;
    tc_close(c);
    rs->run++;
    rs->failed += fail;
    return fail;
}

static void run_vectors(imd_proc *p, const vec_set *vs, imp_state st, int stride, session_key *key,
                        long pid)
{
    run_stats rs = {0, 0, 0, 0};
    uint64_t t0 = it_now_ms();
    for (size_t i = 0; i < vs->n; i++) {
        const vec *v = &vs->v[i];
        int want = reference(v, st);
        if (want == 0) {
            rs.skipped++;
            continue;
        }
        IT_CHECK(imp_is_fatal(want), "%s: reference error %d is not fatal", v->name, want);
        /* After login only a sample (every stride-th, and every vector written for READY). */
        int for_ready = v->ctx == VEC_CTX_CONN && v->state == IMP_S_READY;
        if (stride > 1 && !for_ready && i % (size_t)stride != 0) {
            rs.skipped++;
            continue;
        }
        one_vector(p, v, st, key, want, &rs);
        if (rs.failed > 25)
            break;
        if ((rs.run % 200) == 0)
            IT_CHECK(imd_alive(p) && (long)p->pid == pid, "imd died after vector %s", v->name);
    }
    it_note("malformed vectors in %s: %d run, %d skipped (no error in this state, or not "
            "sampled), %d failed, %d closed without ERROR (after a reset), %llu ms",
            imp_state_name(st), rs.run, rs.skipped, rs.failed, rs.no_error_frame,
            (unsigned long long)(it_now_ms() - t0));
    IT_CHECK(imd_alive(p), "imd died during the malformed vectors (%s)", imp_state_name(st));
    IT_EQ((long)p->pid, pid);
    IT_CHECK(rs.run > 0, "no vector run in %s", imp_state_name(st));
    IT_CHECK(rs.failed == 0, "%d malformed vectors answered wrongly in %s (listed above)",
             rs.failed, imp_state_name(st));
}

static void test_malformed_vectors(void **state)
{
    (void)state;
    vec_set vs;
    vec_set_init(&vs);
    char err[300];
    long n = vec_load_file(&vs, IMP_SRCDIR "/tests/vectors/malformed.txt", err, sizeof err);
    IT_CHECK(n > 0, "loading malformed.txt: %s", err);

    imd_proc *p = it_start_imd(NULL);
    long pid = (long)p->pid;
    /* The reference connections use libimp's defaults: imd's must be the same. */
    tc *c = tc_connect(p->port, T);
    IT_CHECK(c != NULL, "connect");
    IT_EQ(imp_msg_u(&c->welcome, IMP_T_MAX_FRAME, 0), IMP_DEFAULT_MAX_FRAME);
    IT_EQ(imp_msg_u(&c->welcome, IMP_T_MAX_FRAME_PREAUTH, 0), IMP_DEFAULT_MAX_PREAUTH);
    tc_close(c);

    session_key key;
    memset(&key, 0, sizeof key);
    tc_auth a;
    tc_close(it_register(p->port, "mal", "mal password", &a));
    snprintf(key.user, sizeof key.user, "mal");
    IT_CHECK(a.has_token, "AUTH_OK without TOKEN");
    memcpy(key.token, a.token, a.token_len);
    key.token_len = a.token_len;

    const char *env = getenv("IMP_ITEST_READY_STRIDE");
    int stride = env && atoi(env) > 0 ? atoi(env) : 1;
    run_vectors(p, &vs, IMP_S_AWAIT_HELLO, 1, &key, pid);
    run_vectors(p, &vs, IMP_S_AWAIT_AUTH, 1, &key, pid);
    run_vectors(p, &vs, IMP_S_READY, stride, &key, pid);
    vec_set_free(&vs);
    it_liveness(p, pid, NULL, NULL, NULL, NULL);
    it_finish(p);
}

/* ---- length bomb and garbage ------------------------------------------------------------- */

static void bomb(imd_proc *p, imp_state st, session_key *key, uint8_t type, uint32_t len)
{
    tc *c = raw_at(p->port, st, key);
    uint8_t h[IMP_HEADER_SIZE];
    imp_frame_header_write(h, type, len, 77);
    IT_EQ(tc_send_raw(c, h, sizeof h, T), 0);
    /* Judged on the header alone: ERROR FRAME_TOO_LARGE and close (IMP-FRAME-005). */
    int code = it_expect_closed(c, CLOSE_MS, 704, "length bomb header");
    IT_EQ(code, 704);
    /* Streaming the promised payload fails early: the server is gone. */
    static uint8_t chunk[65536];
    memset(chunk, 'A', sizeof chunk);
    size_t sent = 0;
    int r = 0;
    uint64_t t0 = it_now_ms();
    while (sent < 10u * 1000 * 1000 && it_now_ms() - t0 < 3000) {
        r = tc_send_raw(c, chunk, sizeof chunk, 500);
        if (r < 0)
            break;
        sent += sizeof chunk;
    }
    IT_CHECK(r == -EPIPE || r == -ECONNRESET,
             "streaming after the bomb header: %zu bytes accepted, last write %d", sent, r);
    IT_CHECK(sent < 10u * 1000 * 1000, "all 10 MB accepted after the bomb header");
    tc_close(c);
}

static void test_length_bomb_and_garbage(void **state)
{
    (void)state;
    imd_proc *p = it_start_imd(NULL);
    long pid = (long)p->pid;
    session_key key;
    memset(&key, 0, sizeof key);
    tc_auth a;
    tc_close(it_register(p->port, "bomber", "bomber password", &a));
    snprintf(key.user, sizeof key.user, "bomber");
    memcpy(key.token, a.token, a.token_len);
    key.token_len = a.token_len;

    uint32_t max_payload = IMP_FRAME_MAX_HARD - IMP_HEADER_SIZE;
    bomb(p, IMP_S_AWAIT_AUTH, &key, IMP_LOGIN, max_payload);
    bomb(p, IMP_S_AWAIT_AUTH, &key, IMP_LOGIN, 0xFFFFFFFFu);
    bomb(p, IMP_S_READY, &key, IMP_SEND, max_payload);
    bomb(p, IMP_S_READY, &key, IMP_SEND, 0xFFFFFFFFu);

    /* Garbage: pseudo-random bytes (first byte not 1) and an HTTP request: BAD_VERSION. */
    static uint8_t junk[4096];
    uint32_t x = 12345;
    for (size_t i = 0; i < sizeof junk; i++) {
        x = x * 1103515245u + 12345u;
        junk[i] = (uint8_t)(x >> 16);
    }
    junk[0] = 0xC3;
    static const char http[] = "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n";
    for (int st = 0; st < 3; st++) {
        imp_state s = st == 0 ? IMP_S_AWAIT_HELLO : st == 1 ? IMP_S_AWAIT_AUTH : IMP_S_READY;
        tc *c = raw_at(p->port, s, &key);
        tc_send_raw(c, junk, sizeof junk, T);
        int code = it_expect_closed(c, CLOSE_MS, 701, "garbage");
        IT_EQ(code, 701);
        tc_close(c);
        c = raw_at(p->port, s, &key);
        tc_send_raw(c, http, sizeof http - 1, T);
        code = it_expect_closed(c, CLOSE_MS, 701, "HTTP request");
        IT_EQ(code, 701);
        tc_close(c);
    }
    it_liveness(p, pid, NULL, NULL, NULL, NULL);
    it_finish(p);
}

/* ---- 16 length bombs at once ------------------------------------------------------------- */

enum { NBOMBS = 16 };
#define BOMB_STREAM (100u * 1000 * 1000) /* what each bomber tries to send after its header */

typedef struct bomber {
    tc *c;
    uint64_t t_header, t_closed;
    uint64_t sent; /* payload bytes the kernel accepted before the close showed */
    int closed, err;
} bomber;

/* 16 connections in state st each send a header declaring the largest frame IMP allows (16
 * MiB) and then stream up to 100 MB of payload, all at once: every one is closed right after
 * its header (within 1 s; FRAME_TOO_LARGE unless the close reset the connection first), and
 * imd's memory grows by less than 8 MiB (IMP-FRAME-005, IMP-SEC-002: no payload byte is read or
 * buffered). Returns the RSS growth in KiB. */
static long bomb_round(imd_proc *p, imp_state st, session_key *key, const char *what)
{
    static uint8_t chunk[65536];
    memset(chunk, 'B', sizeof chunk);
    bomber b[NBOMBS];
    memset(b, 0, sizeof b);
    for (int i = 0; i < NBOMBS; i++)
        b[i].c = raw_at(p->port, st, key);
    it_sleep_ms(100);
    long rss0 = it_rss_kb(p->pid);
    uint8_t h[IMP_HEADER_SIZE];
    for (int i = 0; i < NBOMBS; i++) {
        imp_frame_header_write(h, st == IMP_S_READY ? IMP_SEND : IMP_LOGIN,
                               IMP_FRAME_MAX_HARD - IMP_HEADER_SIZE, 100 + (uint32_t)i);
        b[i].t_header = it_now_ms();
        IT_EQ(tc_send_raw(b[i].c, h, sizeof h, T), 0);
    }
    uint64_t t0 = it_now_ms();
    int open = NBOMBS;
    while (open > 0 && it_now_ms() - t0 < 10000) {
        int progress = 0;
        for (int i = 0; i < NBOMBS; i++) {
            bomber *x = &b[i];
            if (x->closed)
                continue;
            if (x->sent < BOMB_STREAM) {
                ssize_t w = send(x->c->fd, chunk, sizeof chunk, MSG_NOSIGNAL | MSG_DONTWAIT);
                if (w > 0) {
                    x->sent += (uint64_t)w;
                    progress = 1;
                } else if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
                    x->err = errno;
                    x->closed = 1;
                }
            }
            if (!x->closed && (tc_pump(x->c, 0) < 0 || x->c->eof))
                x->closed = 1;
            if (x->closed) {
                x->t_closed = it_now_ms();
                open--;
            }
        }
        if (!progress)
            it_sleep_ms(1);
    }
    it_sleep_ms(200); /* imd finishes the closes */
    long rss1 = it_rss_kb(p->pid);
    uint64_t sent[NBOMBS], maxclose = 0;
    int with_error = 0;
    for (int i = 0; i < NBOMBS; i++) {
        bomber *x = &b[i];
        tc_pump(x->c, 50);
        char d[512];
        IT_CHECK(x->closed, "%s, bomber %d: not closed after %llu bytes: %s", what, i,
                 (unsigned long long)x->sent, tc_describe(x->c, d, sizeof d));
        uint64_t dt = x->t_closed - x->t_header;
        if (dt > maxclose)
            maxclose = dt;
        IT_CHECK(dt <= CLOSE_MS, "%s, bomber %d: closed %llu ms after the header", what, i,
                 (unsigned long long)dt);
        if (x->c->last_error) {
            IT_EQ(x->c->last_error, 704);
            with_error++;
        } else {
            IT_CHECK(x->err == ECONNRESET || x->err == EPIPE || x->c->rd_errno == ECONNRESET,
                     "%s, bomber %d: closed without FRAME_TOO_LARGE and without a reset", what, i);
        }
        IT_CHECK(x->sent < BOMB_STREAM, "%s, bomber %d: all %u bytes accepted", what, i,
                 BOMB_STREAM);
        sent[i] = x->sent;
        tc_close(x->c);
    }
    char list[NBOMBS * 12] = "";
    for (int i = 0; i < NBOMBS; i++)
        snprintf(list + strlen(list), sizeof list - strlen(list), "%s%llu", i ? " " : "",
                 (unsigned long long)sent[i]);
    it_note("%s: bytes each bomber wrote before its close: %s", what, list);
    qsort(sent, NBOMBS, sizeof sent[0], it_cmp_u64);
    it_note("%s: %d bombs of 16 MiB, each closed within %llu ms of its header (%d with ERROR "
            "704, the others reset); bytes written before the close: min %llu, median %llu, "
            "max %llu; imd RSS %ld -> %ld KiB (%+ld KiB)",
            what, NBOMBS, (unsigned long long)maxclose, with_error, (unsigned long long)sent[0],
            (unsigned long long)sent[NBOMBS / 2], (unsigned long long)sent[NBOMBS - 1], rss0, rss1,
            rss1 - rss0);
    IT_CHECK(rss0 > 0 && rss1 > 0, "RSS not readable");
    IT_CHECK(rss1 - rss0 < 8192, "%s: imd grew by %ld KiB", what, rss1 - rss0);
    return rss1 - rss0;
}

static void test_length_bombs_concurrent(void **state)
{
    (void)state;
    imd_proc *p = it_start_imd(NULL);
    long pid = (long)p->pid;
    session_key key;
    memset(&key, 0, sizeof key);
    tc_auth a;
    tc_close(it_register(p->port, "bomber", "bomber password", &a));
    snprintf(key.user, sizeof key.user, "bomber");
    memcpy(key.token, a.token, a.token_len);
    key.token_len = a.token_len;
    /* warm-up: connections, logins and one bomb, so that the rounds measure growth only */
    bomb(p, IMP_S_READY, &key, IMP_SEND, IMP_FRAME_MAX_HARD - IMP_HEADER_SIZE);
    bomb_round(p, IMP_S_AWAIT_AUTH, &key, "16 bombs before login");
    bomb_round(p, IMP_S_READY, &key, "16 bombs after login");
    IT_EQ((long)p->pid, pid);
    it_liveness(p, pid, NULL, NULL, NULL, NULL);
    it_finish(p);
}

/* ---- frame limits ------------------------------------------------------------------------ */

/* Append an unknown non-critical field (tag 0x0100, skipped by the receiver, IMP-FIELD-004)
 * to an encoded frame so that the frame is exactly total bytes. */
static size_t pad_to(uint8_t *buf, size_t len, size_t total)
{
    IT_CHECK(total >= len + 6, "cannot pad %zu to %zu", len, total);
    size_t vlen = total - len - 6;
    uint8_t *f = buf + len;
    f[0] = 0x01;
    f[1] = 0x00;
    f[2] = (uint8_t)(vlen >> 24);
    f[3] = (uint8_t)(vlen >> 16);
    f[4] = (uint8_t)(vlen >> 8);
    f[5] = (uint8_t)vlen;
    memset(f + 6, 'p', vlen);
    uint32_t req =
        (uint32_t)buf[8] << 24 | (uint32_t)buf[9] << 16 | (uint32_t)buf[10] << 8 | buf[11];
    imp_frame_header_write(buf, buf[1], (uint32_t)(total - IMP_HEADER_SIZE), req);
    return total;
}

static size_t encode(imp_msg *m, uint8_t *buf, size_t cap)
{
    imp_ssize n = imp_msg_encode(m, buf, cap);
    IT_CHECK(n > 0, "encode %s: %d", imp_type_name(m->type), (int)n);
    return (size_t)n;
}

enum { PREAUTH = 2048, MAXF = 65536 };

static void test_frame_limits(void **state)
{
    (void)state;
    static const char *const args[] = {"--set", "max_frame=64k", "--set", "max_frame_preauth=2k",
                                       NULL};
    imd_proc *p = it_start_imd(args);
    long pid = (long)p->pid;
    tc_close(it_register(p->port, "lim", "lim password", NULL));
    tc *bob = it_register(p->port, "bob", "bob password", NULL);
    static uint8_t buf[MAXF + 64];
    imp_msg m;

    /* WELCOME announces the configured limits. */
    tc *c = tc_connect(p->port, T);
    IT_CHECK(c != NULL, "connect");
    IT_EQ(imp_msg_u(&c->welcome, IMP_T_MAX_FRAME, 0), MAXF);
    IT_EQ(imp_msg_u(&c->welcome, IMP_T_MAX_FRAME_PREAUTH, 0), PREAUTH);
    tc_close(c);

    /* Before HELLO the limit is MAX_FRAME_PREAUTH too: a HELLO of exactly that size is
     * answered, one byte more is FRAME_TOO_LARGE (IMP-FRAME-005, IMP-SEC-001). */
    session_key key;
    memset(&key, 0, sizeof key);
    char d[512];
    for (int over = 0; over < 2; over++) {
        c = raw_at(p->port, IMP_S_AWAIT_HELLO, &key);
        imp_msg_init(&m, IMP_HELLO, 900);
        imp_msg_set_u(&m, IMP_T_VERSION_MIN, 1);
        imp_msg_set_u(&m, IMP_T_VERSION_MAX, 1);
        size_t hn = pad_to(buf, encode(&m, buf, sizeof buf), PREAUTH + (size_t)over);
        IT_EQ(tc_send_raw(c, buf, hn, T), 0);
        if (over) {
            IT_EQ(it_expect_closed(c, CLOSE_MS, 704, "HELLO of MAX_FRAME_PREAUTH + 1"), 704);
        } else {
            tc_frame *w = tc_wait(c, IMP_WELCOME, 900, T);
            IT_CHECK(w != NULL, "HELLO of exactly %d bytes: no WELCOME: %s", PREAUTH,
                     tc_describe(c, d, sizeof d));
            tc_frame_free(w);
        }
        tc_close(c);
    }

    /* Before login: a PING of exactly MAX_FRAME_PREAUTH is answered... */
    c = raw_at(p->port, IMP_S_AWAIT_AUTH, &key);
    imp_msg_init(&m, IMP_PING, 901);
    size_t n = pad_to(buf, encode(&m, buf, sizeof buf), PREAUTH);
    IT_EQ(tc_send_raw(c, buf, n, T), 0);
    tc_frame *f = tc_wait(c, IMP_PONG, 901, T);
    IT_CHECK(f != NULL, "PING of exactly %d bytes before login: no PONG: %s", PREAUTH,
             tc_describe(c, d, sizeof d));
    tc_frame_free(f);
    /* ... and so is a LOGIN of exactly that size (IMP-SESS-006: LOGIN is bound by it). */
    imp_msg_init(&m, IMP_LOGIN, 902);
    imp_msg_set_s(&m, IMP_T_USER, "lim");
    imp_msg_set_s(&m, IMP_T_PASSWORD, "lim password");
    n = pad_to(buf, encode(&m, buf, sizeof buf), PREAUTH);
    IT_EQ(tc_send_raw(c, buf, n, T), 0);
    f = tc_wait_reply(c, 902, T);
    IT_CHECK(f != NULL && f->m.type == IMP_AUTH_OK, "LOGIN of exactly %d bytes: %s", PREAUTH,
             f ? imp_type_name(f->m.type) : tc_describe(c, d, sizeof d));
    tc_frame_free(f);
    /* After login the limit is MAX_FRAME: a PING bigger than the pre-auth limit passes, and
     * so does one of exactly MAX_FRAME; one byte more is FRAME_TOO_LARGE. */
    imp_msg_init(&m, IMP_PING, 903);
    n = pad_to(buf, encode(&m, buf, sizeof buf), PREAUTH + 1);
    IT_EQ(tc_send_raw(c, buf, n, T), 0);
    f = tc_wait(c, IMP_PONG, 903, T);
    IT_CHECK(f != NULL, "PING of %d bytes after login: no PONG", PREAUTH + 1);
    tc_frame_free(f);
    imp_msg_init(&m, IMP_PING, 906);
    n = pad_to(buf, encode(&m, buf, sizeof buf), MAXF);
    IT_EQ(tc_send_raw(c, buf, n, T), 0);
    f = tc_wait(c, IMP_PONG, 906, T);
    IT_CHECK(f != NULL, "PING of exactly MAX_FRAME (%d bytes) after login: no PONG: %s", MAXF,
             tc_describe(c, d, sizeof d));
    tc_frame_free(f);
    imp_msg_init(&m, IMP_PING, 907);
    n = pad_to(buf, encode(&m, buf, sizeof buf), MAXF + 1);
    tc_send_raw(c, buf, n, T);
    IT_EQ(it_expect_closed(c, CLOSE_MS, 704, "PING of MAX_FRAME + 1 after login"), 704);
    tc_close(c);

    /* One byte over before login: FRAME_TOO_LARGE and close, for a PING and a LOGIN. */
    c = raw_at(p->port, IMP_S_AWAIT_AUTH, &key);
    imp_msg_init(&m, IMP_PING, 904);
    n = pad_to(buf, encode(&m, buf, sizeof buf), PREAUTH + 1);
    tc_send_raw(c, buf, n, T);
    IT_EQ(it_expect_closed(c, CLOSE_MS, 704, "PING of MAX_FRAME_PREAUTH + 1"), 704);
    tc_close(c);
    c = raw_at(p->port, IMP_S_AWAIT_AUTH, &key);
    imp_msg_init(&m, IMP_LOGIN, 905);
    imp_msg_set_s(&m, IMP_T_USER, "lim");
    imp_msg_set_s(&m, IMP_T_PASSWORD, "lim password");
    n = pad_to(buf, encode(&m, buf, sizeof buf), PREAUTH + 1);
    tc_send_raw(c, buf, n, T);
    IT_EQ(it_expect_closed(c, CLOSE_MS, 704, "LOGIN of MAX_FRAME_PREAUTH + 1"), 704);
    tc_close(c);

    /* After login: a SEND of exactly MAX_FRAME is stored and delivered whole... */
    c = it_login(p->port, "lim", "lim password", NULL);
    tc_msg s;
    memset(&s, 0, sizeof s);
    s.kind = IMP_TARGET_USER;
    s.target = "bob";
    s.cls = -1;
    s.ack_mode = -1;
    static uint8_t body[MAXF];
    for (size_t i = 0; i < sizeof body; i++)
        body[i] = (uint8_t)(i * 7);
    s.body = body;
    s.body_len = 0;
    tc_build_send(&s, &m);
    s.body_len = MAXF - (size_t)imp_msg_encoded_size(&m);
    tc_build_send(&s, &m);
    IT_EQ(imp_msg_encoded_size(&m), MAXF);
    tc_ack ack;
    IT_EQ(tc_send(c, &s, &ack, T), 0);
    IT_CHECK(ack.outcome == IMP_OUTCOME_STORED, "SEND of exactly MAX_FRAME: OUTCOME %d CODE %d",
             ack.outcome, ack.code);
    f = tc_wait(bob, IMP_DELIVER, 0, T);
    IT_CHECK(f != NULL, "bob: no DELIVER of the large message");
    imp_bytes b = imp_msg_b(&f->m, IMP_T_BODY);
    IT_CHECK(b.len == s.body_len && memcmp(b.p, body, b.len) == 0, "large body altered");
    tc_frame_free(f);
    /* ... one byte more is FRAME_TOO_LARGE (sent raw: the library would refuse it). */
    s.body_len++;
    tc_build_send(&s, &m);
    m.request_id = tc_req(c);
    n = encode(&m, buf, sizeof buf);
    IT_EQ(n, MAXF + 1);
    tc_send_raw(c, buf, n, T);
    IT_EQ(it_expect_closed(c, CLOSE_MS, 704, "SEND of MAX_FRAME + 1"), 704);
    tc_close(c);
    tc_close(bob);
    it_liveness(p, pid, NULL, NULL, NULL, NULL);
    it_finish(p);
}

/* ---- slow consumer ----------------------------------------------------------------------- */

enum { SLOW_N = 600, SLOW_BODY = 32768 }; /* 19.7 MB: more than the kernel's buffers */

static void test_slow_consumer(void **state)
{
    (void)state;
    /* Small caps: output_hard (at once) and output_soft for output_soft_ms (over time; imd
     * paces DELIVERs at output_soft, so this is what cuts a reader that stopped). 1 s, not
     * less: the reconnecting reader below must not be cut by a scheduling hiccup. */
    static const char *const args[] = {"--set", "max_frame=64k",   "--set", "output_hard=128k",
                                       "--set", "output_soft=64k", "--set", "output_soft_ms=1000",
                                       NULL};
    imd_proc *p = it_start_imd(args);
    long pid = (long)p->pid;
    tc *alice = it_register(p->port, "alice", "alice password", NULL);
    tc_close(it_register(p->port, "sloth", "sloth password", NULL));

    /* The slow consumer: a small receive buffer, logged in, then never reads. */
    tc *sloth = tc_connect_raw(p->port, T, 4096);
    IT_CHECK(sloth != NULL, "connect");
    IT_EQ(tc_raw_hello(sloth, T), 0);
    IT_EQ(tc_login(sloth, "sloth", "sloth password", UINT64_MAX, NULL, T), 0);

    static uint8_t body[SLOW_BODY];
    static uint32_t reqs[SLOW_N];
    int next = 0, acked = 0;
    uint64_t t0 = it_now_ms();
    while (acked < SLOW_N) {
        IT_CHECK(it_now_ms() - t0 < 40000, "sending too slow: %d ACKs", acked);
        while (next < SLOW_N && next - acked < 16) {
            char id[16];
            snprintf(id, sizeof id, "s%03d", next);
            memset(body, 'a' + next % 26, sizeof body);
            memcpy(body, id, 4);
            tc_msg s;
            memset(&s, 0, sizeof s);
            s.kind = IMP_TARGET_USER;
            s.target = "sloth";
            s.cmid = id;
            s.cls = -1;
            s.ack_mode = -1;
            s.body = body;
            s.body_len = sizeof body;
            imp_msg m;
            tc_build_send(&s, &m);
            reqs[next] = tc_request(alice, &m);
            IT_CHECK(reqs[next] != 0, "SEND %d", next);
            next++;
        }
        tc_frame *f = tc_wait(alice, IMP_ACK, reqs[acked], T);
        char d[512];
        IT_CHECK(f != NULL, "no ACK for message %d: %s", acked, tc_describe(alice, d, sizeof d));
        IT_EQ(imp_msg_u(&f->m, IMP_T_OUTCOME, 0), IMP_OUTCOME_STORED);
        tc_frame_free(f);
        acked++;
    }
    it_note("%d x %d bytes stored in %llu ms", SLOW_N, SLOW_BODY,
            (unsigned long long)(it_now_ms() - t0));

    /* Still not reading for a while, then read: the connection must have been cut (SLOW_CONSUMER,
     * IMP-DELIV-007) before all of it was delivered. */
    it_sleep_ms(2500);
    int closed = tc_expect_close(sloth, 10000, NULL);
    size_t got = tc_queued(sloth, IMP_DELIVER);
    it_note("slow consumer: closed %d, %zu DELIVERs read, last ERROR %d, %llu bytes", closed, got,
            sloth->last_error, (unsigned long long)sloth->bytes_in);
    IT_CHECK(closed, "the slow consumer was not disconnected (%zu DELIVERs read)", got);
    IT_CHECK(got < SLOW_N, "the slow consumer got all %d messages on the slow connection", SLOW_N);
    if (sloth->last_error)
        IT_EQ(sloth->last_error, 731);
    tc_close(sloth);

    /* Nothing lost: on reconnect every message, in order. */
    tc *again = it_login(p->port, "sloth", "sloth password", NULL);
    for (int i = 0; i < SLOW_N; i++) {
        tc_frame *f = tc_wait(again, IMP_DELIVER, 0, T);
        char d[512];
        IT_CHECK(f != NULL, "after reconnect: message %d missing: %s", i,
                 tc_describe(again, d, sizeof d));
        IT_EQ(imp_msg_u(&f->m, IMP_T_SEQ, 0), i + 1);
        imp_bytes b = imp_msg_b(&f->m, IMP_T_BODY);
        char id[16];
        snprintf(id, sizeof id, "s%03d", i);
        IT_CHECK(b.len == SLOW_BODY && memcmp(b.p, id, 4) == 0, "message %d: wrong body", i);
        tc_frame_free(f);
        if ((i + 1) % 50 == 0)
            tc_delivered(again, (uint64_t)i + 1);
    }
    tc_delivered(again, SLOW_N);
    tc_close(again);
    tc_close(alice);
    it_liveness(p, pid, NULL, NULL, NULL, NULL);
    it_finish(p);
}

static void test_handshake_and_limits(void **state)
{
    (void)state;
    static const char *const args[] = {"--set", "max_connections=3", NULL};
    imd_proc *p = it_start_imd(args);
    long pid = (long)p->pid;
    tc_close(it_register(p->port, "twice", "twice password", NULL));
    uint8_t buf[512];
    imp_msg m;

    /* HELLO offering only versions 2-3: ERROR VERSION (300) and close (IMP-MSG-002). */
    tc *c = tc_connect_raw(p->port, T, 0);
    IT_CHECK(c != NULL, "connect");
    imp_msg_init(&m, IMP_HELLO, 5);
    imp_msg_set_u(&m, IMP_T_VERSION_MIN, 2);
    imp_msg_set_u(&m, IMP_T_VERSION_MAX, 3);
    size_t n = encode(&m, buf, sizeof buf);
    IT_EQ(tc_send_raw(c, buf, n, T), 0);
    IT_EQ(it_expect_closed(c, CLOSE_MS, 300, "HELLO with versions 2-3"), 300);
    IT_EQ(tc_queued(c, IMP_WELCOME), 0);
    tc_close(c);

    /* Two LOGINs in one write: the second arrives before the answer to the first (or after
     * it, in READY): STATE (706) either way (IMP-SESS-004, section 7.1). */
    c = tc_connect_raw(p->port, T, 0);
    IT_CHECK(c != NULL, "connect");
    IT_EQ(tc_raw_hello(c, T), 0);
    imp_msg_init(&m, IMP_LOGIN, 6);
    imp_msg_set_s(&m, IMP_T_USER, "twice");
    imp_msg_set_s(&m, IMP_T_PASSWORD, "twice password");
    n = encode(&m, buf, sizeof buf);
    m.request_id = 7;
    n += encode(&m, buf + n, sizeof buf - n);
    IT_EQ(tc_send_raw(c, buf, n, T), 0);
    IT_EQ(it_expect_closed(c, 2000, 706, "second LOGIN"), 706);
    tc_close(c);

    /* max_connections=3: a fourth connection is refused with SERVER_FULL (301) and closed;
     * once one closes there is room again. */
    tc *held[3];
    for (int i = 0; i < 3; i++) {
        held[i] = tc_connect(p->port, T);
        IT_CHECK(held[i] != NULL, "connection %d of 3", i + 1);
    }
    c = tc_connect_raw(p->port, T, 0);
    IT_CHECK(c != NULL, "connect");
    IT_EQ(it_expect_closed(c, CLOSE_MS, 301, "fourth connection"), 301);
    tc_close(c);
    tc_close(held[0]);
    it_sleep_ms(200);
    c = tc_connect(p->port, T);
    IT_CHECK(c != NULL, "no room after a connection closed");
    tc_close(c);
    tc_close(held[1]);
    tc_close(held[2]);
    it_sleep_ms(200);
    it_liveness(p, pid, NULL, NULL, NULL, NULL);
    it_finish(p);
}

/* Write bytes one per send() with a pause, so that imd reads them in many pieces. */
static void trickle(tc *c, const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        IT_EQ(tc_send_raw(c, p + i, 1, T), 0);
        if (i % 4 == 3)
            it_sleep_ms(1);
    }
}

/* Expect frames of these types with these request ids: each once; ACKs in the order given
 * (IMP-DELIV-006: stored in order, ACKed in that order). Replies of different kinds may
 * interleave (a PONG needs no commit; request ids correlate, IMP-FRAME-007). */
static void expect_set(tc *c, const uint8_t *types, const uint32_t *reqs, int n, const char *what)
{
    int seen[8] = {0};
    uint32_t last_ack = 0;
    for (int i = 0; i < n; i++) {
        tc_frame *f = tc_wait(c, 0, 0, T);
        char d[512];
        IT_CHECK(f != NULL, "%s: %d of %d answers missing: %s", what, n - i, n,
                 tc_describe(c, d, sizeof d));
        int k = 0;
        while (k < n && !(types[k] == f->m.type && reqs[k] == f->m.request_id))
            k++;
        IT_CHECK(k < n && !seen[k], "%s: unexpected %s(req %u)", what, imp_type_name(f->m.type),
                 (unsigned)f->m.request_id);
        seen[k] = 1;
        if (f->m.type == IMP_ACK) {
            IT_EQ(imp_msg_u(&f->m, IMP_T_OUTCOME, 0), IMP_OUTCOME_STORED);
            IT_CHECK(f->m.request_id > last_ack, "%s: ACK %u after ACK %u", what,
                     (unsigned)f->m.request_id, (unsigned)last_ack);
            last_ack = f->m.request_id;
        }
        tc_frame_free(f);
    }
}

static void test_split_and_coalesced(void **state)
{
    (void)state;
    imd_proc *p = it_start_imd(NULL);
    long pid = (long)p->pid;
    tc_close(it_register(p->port, "split", "split password", NULL));
    tc *bob = it_register(p->port, "bob", "bob password", NULL);
    static uint8_t buf[4096];
    imp_msg m;

    for (int mode = 0; mode < 2; mode++) {
        const char *what = mode ? "one write" : "1-byte writes";
        tc *c = tc_connect_raw(p->port, T, 0);
        IT_CHECK(c != NULL, "connect");
        /* HELLO and LOGIN. */
        size_t n = 0;
        imp_msg_init(&m, IMP_HELLO, 1);
        imp_msg_set_u(&m, IMP_T_VERSION_MIN, 1);
        imp_msg_set_u(&m, IMP_T_VERSION_MAX, 1);
        n += encode(&m, buf + n, sizeof buf - n);
        imp_msg_init(&m, IMP_LOGIN, 2);
        imp_msg_set_s(&m, IMP_T_USER, "split");
        imp_msg_set_s(&m, IMP_T_PASSWORD, "split password");
        n += encode(&m, buf + n, sizeof buf - n);
        if (mode)
            IT_EQ(tc_send_raw(c, buf, n, T), 0);
        else
            trickle(c, buf, n);
        static const uint8_t t1[] = {IMP_WELCOME, IMP_AUTH_OK};
        static const uint32_t r1[] = {1, 2};
        expect_set(c, t1, r1, 2, what);
        /* SEND, PING, SEND, PING: each answered. */
        n = 0;
        for (uint32_t k = 0; k < 2; k++) {
            char body[32];
            snprintf(body, sizeof body, "%s %u", what, (unsigned)k);
            imp_msg_init(&m, IMP_SEND, 10 + 2 * k);
            imp_msg_set_u(&m, IMP_T_TARGET_KIND, IMP_TARGET_USER);
            imp_msg_set_s(&m, IMP_T_TARGET, "bob");
            imp_msg_set_s(&m, IMP_T_BODY, body);
            n += encode(&m, buf + n, sizeof buf - n);
            imp_msg_init(&m, IMP_PING, 11 + 2 * k);
            n += encode(&m, buf + n, sizeof buf - n);
        }
        if (mode)
            IT_EQ(tc_send_raw(c, buf, n, T), 0);
        else
            trickle(c, buf, n);
        static const uint8_t t2[] = {IMP_ACK, IMP_PONG, IMP_ACK, IMP_PONG};
        static const uint32_t r2[] = {10, 11, 12, 13};
        expect_set(c, t2, r2, 4, what);
        for (int k = 0; k < 2; k++) {
            tc_frame *f = tc_wait(bob, IMP_DELIVER, 0, T);
            IT_CHECK(f != NULL, "%s: bob's DELIVER %d missing", what, k);
            char body[32];
            snprintf(body, sizeof body, "%s %d", what, k);
            IT_CHECK(tc_field_is(&f->m, IMP_T_BODY, body), "%s: DELIVER %d body", what, k);
            tc_delivered(bob, imp_msg_u(&f->m, IMP_T_SEQ, 0));
            tc_frame_free(f);
        }
        IT_CHECK(!c->eof && c->lib_err == 0, "%s: connection failed", what);
        tc_close(c);
    }
    tc_close(bob);
    it_liveness(p, pid, NULL, NULL, NULL, NULL);
    it_finish(p);
}

int main(void)
{
    it_main_init(120);
    if (!it_imd_or_skip())
        return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_malformed_vectors, it_teardown),
        cmocka_unit_test_teardown(test_length_bomb_and_garbage, it_teardown),
        cmocka_unit_test_teardown(test_length_bombs_concurrent, it_teardown),
        cmocka_unit_test_teardown(test_frame_limits, it_teardown),
        cmocka_unit_test_teardown(test_slow_consumer, it_teardown),
        cmocka_unit_test_teardown(test_handshake_and_limits, it_teardown),
        cmocka_unit_test_teardown(test_split_and_coalesced, it_teardown),
    };
    return cmocka_run_group_tests_name("integration: bad input", tests, NULL, NULL);
}
