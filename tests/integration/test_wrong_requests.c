/* Integration: well-formed but wrong requests, authorization, desynchronisation and chunking
 * against a real imd (issue 6; SPEC.md 5, 6, 7, 9, 10).
 *
 * - test_wrong_requests: a table of well-formed requests (built with libimp; a few with fields
 *   added raw) that are wrong where they are sent: every request frame type in every server
 *   state where the receive table (SPEC.md 7.1) does not allow it, every server-to-client type
 *   in every state (WRONG_ROLE), and wrong values: unknown users and rooms, names at the 32-byte
 *   limit, DELIVERED beyond the end, HISTORY/LEAVE of rooms not joined, administrator frames by
 *   a normal user, forged SENDER/TIMESTAMP/MSG_ID/SEQ/ADMIN fields (IMP-SEC-004: unknown fields
 *   in a client's frame, skipped), REGISTER of an existing name, LOGIN while logged in, resume
 *   with another user's token, LOGIN LAST_SEQ beyond the end, HISTORY with BEFORE_ID 0 (an
 *   empty page: SPEC.md 5.4 selects MSG_ID < BEFORE_ID; imd answered every message until
 *   rooms.c was fixed). KICK is not an IMP/1 frame. Each row gets exactly its
 *   documented answer (ERROR code + close for fatal codes, ERROR or refused ACK and an open
 *   connection for 4xx/5xx) within 1 s; the table runs twice (warm-up, then measured) on one
 *   imd whose pid never changes and whose RSS stays within 4 MiB of its post-warm-up value.
 * - test_authorization: users alice and bob; bob owns a room, has offline messages and queued
 *   room messages, each body carrying a marker. Over 30 attempts by alice to read, ack, send as
 *   or administer what is not hers are refused; everything alice's connections received is
 *   scanned for the marker, and after every attempt bob still has exactly his queue, his room
 *   and its history. (IMP/1 has no private rooms: imd lets anyone list a room's members and
 *   JOIN any room, so MEMBERS and JOIN are not among the refusals; HISTORY and room SENDs need
 *   membership.)
 * - test_desync: endless junk of several kinds is closed within 1 s of the first junk byte.
 * - test_chunking: one scripted session (fixed request ids) against three fresh servers, written
 *   as whole frames, as 1-byte writes and as seeded random chunks ($IMP_ITEST_SEED), gives the
 *   same transcript frame by frame (IMP-FRAME-008) once the fields that legitimately differ
 *   between servers are normalised: WELCOME SERVER_TIME, AUTH_OK TOKEN and SESSION_ID,
 *   DELIVER and HISTORY_ITEM TIMESTAMP. MSG_IDs are compared as they are (fresh servers number
 *   alike).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "itest.h"

#define T 5000
#define ANSWER_MS 1000 /* the bound for every answer and close */

/* imd's RSS may grow by this much over the measured pass. Under AddressSanitizer (this program
 * is built in the same flavour as imd) freed memory sits in ASan's quarantine instead of being
 * reused, so RSS grows with every allocation: the bound is looser there, and leaks are
 * LeakSanitizer's job (it_finish). */
#if defined(__SANITIZE_ADDRESS__)
#define RSS_GROWTH_KB (32 * 1024)
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define RSS_GROWTH_KB (32 * 1024)
#endif
#endif
#ifndef RSS_GROWTH_KB
#define RSS_GROWTH_KB 4096
#endif

/* ---- frames ------------------------------------------------------------------------------ */

static size_t encode(const imp_msg *m, uint8_t *buf, size_t cap)
{
    imp_ssize n = imp_msg_encode(m, buf, cap);
    IT_CHECK(n > 0, "encode %s: %d", imp_type_name(m->type), (int)n);
    return (size_t)n;
}

static uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* Insert a field (tag, value) into an encoded frame at its place in tag order, fixing the
 * header's length: how a client adds a field its frame type does not define (libimp's encoder
 * refuses them). The tag must not be in the frame already. Returns the new length. */
static size_t insert_field(uint8_t *buf, size_t len, size_t cap, unsigned tag, const void *v,
                           size_t vlen)
{
    IT_CHECK(len + 6 + vlen <= cap, "insert_field: no room");
    size_t off = IMP_HEADER_SIZE;
    while (off < len) {
        unsigned t = (unsigned)buf[off] << 8 | buf[off + 1];
        IT_CHECK(t != tag, "insert_field: tag %u already there", tag);
        if (t > tag)
            break;
        off += 6 + be32(buf + off + 2);
    }
    memmove(buf + off + 6 + vlen, buf + off, len - off);
    buf[off] = (uint8_t)(tag >> 8);
    buf[off + 1] = (uint8_t)tag;
    buf[off + 2] = (uint8_t)(vlen >> 24);
    buf[off + 3] = (uint8_t)(vlen >> 16);
    buf[off + 4] = (uint8_t)(vlen >> 8);
    buf[off + 5] = (uint8_t)vlen;
    memcpy(buf + off + 6, v, vlen);
    len += 6 + vlen;
    imp_frame_header_write(buf, buf[1], (uint32_t)(len - IMP_HEADER_SIZE), be32(buf + 8));
    return len;
}

static size_t insert_u64(uint8_t *buf, size_t len, size_t cap, unsigned tag, uint64_t v)
{
    uint8_t b[8];
    for (int i = 0; i < 8; i++)
        b[i] = (uint8_t)(v >> (56 - 8 * i));
    return insert_field(buf, len, cap, tag, b, 8);
}

static size_t insert_str(uint8_t *buf, size_t len, size_t cap, unsigned tag, const char *s)
{
    return insert_field(buf, len, cap, tag, s, strlen(s));
}

static size_t insert_bool1(uint8_t *buf, size_t len, size_t cap, unsigned tag)
{
    static const uint8_t one = 1;
    return insert_field(buf, len, cap, tag, &one, 1);
}

/* A names list of one name in a static buffer per slot. */
static imp_bytes names1(int slot, const char *name)
{
    static uint8_t bufs[4][40];
    imp_builder b;
    imp_builder_init(&b, bufs[slot], sizeof bufs[slot]);
    IT_EQ(imp_names_add(&b, name, strlen(name)), 0);
    imp_bytes r = {bufs[slot], b.len};
    return r;
}

/* Did anything this client received (since tc_record_start) contain the marker? */
static int marker_in(const tc *c, const char *marker)
{
    return tc_recorded_has(c, marker, strlen(marker));
}

/* ---- the world of test_wrong_requests ----------------------------------------------------- */

typedef enum {
    S_PRE_HELLO,      /* connected, no HELLO: AWAIT_HELLO */
    S_AWAIT_AUTH,     /* HELLO answered */
    S_AUTHENTICATING, /* a LOGIN (password, hashed off the loop) sent just before, same write */
    S_USER,           /* logged in as a normal user */
    S_ADMIN,          /* logged in as an administrator */
} wr_state;

static const char *const state_names[] = {"pre-HELLO", "after HELLO", "authenticating", "logged in",
                                          "logged in as admin"};

typedef enum {
    X_CLOSE,   /* fatal: ERROR code (with the frame's request id) and close */
    X_CLOSE_Q, /* the client sent ERROR: the server closes, answering nothing (7.1) */
    X_ERROR,   /* non-fatal ERROR code with the request id; the connection stays usable */
    X_ACK,     /* ACK OUTCOME refused with CODE; the connection stays usable */
    X_CHECK,   /* a row-specific check */
} wr_expect;

typedef struct wr_row wr_row;
struct wr_row {
    const char *name; /* NULL: "<TYPE> <state>" */
    wr_state st;
    uint8_t type;
    void (*fill)(imp_msg *m); /* NULL: the type's required fields with plausible values */
    size_t (*forge)(uint8_t *buf, size_t len, size_t cap); /* raw additions, or NULL */
    wr_expect x;
    int code;
    const char *req; /* the SPEC requirement checked */
    /* X_CHECK: judge the answer to request req sent at t0; returns the answer's latency. */
    uint64_t (*check)(tc *c, uint32_t req, uint64_t t0);
};

static struct {
    int port;
    char a[40], b[40], c[40], adm[40];
    tc_auth a_auth, b_auth, adm_auth;
    char room_b[40];       /* bob's room: alice is not a member */
    char long_name[40];    /* 32 bytes, no such user or room */
    tc *c_conn;            /* carol, online: the recipient of alice's messages */
    const char *forbidden; /* set: no connection of a row may receive these bytes */
    uint64_t b_msg_id;     /* bob's message with CLIENT_MSG_ID "bob-cmid" */
} W;

static const char *const PW_A = "alice password", *const PW_B = "bob password",
                         *const PW_C = "carol password", *const PW_ADM = "root password";

/* Plausible required fields of every type (SPEC.md section 5). */
static void f_min(imp_msg *m)
{
    static uint8_t stats[80];
    imp_builder b;
    switch (m->type) {
    case IMP_HELLO:
        imp_msg_set_u(m, IMP_T_VERSION_MIN, 1);
        imp_msg_set_u(m, IMP_T_VERSION_MAX, 1);
        break;
    case IMP_REGISTER:
    case IMP_LOGIN:
        imp_msg_set_s(m, IMP_T_USER, W.a);
        imp_msg_set_s(m, IMP_T_PASSWORD, PW_A);
        break;
    case IMP_ERROR:
        imp_msg_set_u(m, IMP_T_CODE, 700);
        break;
    case IMP_SEND:
        imp_msg_set_u(m, IMP_T_TARGET_KIND, IMP_TARGET_USER);
        imp_msg_set_s(m, IMP_T_TARGET, W.c);
        imp_msg_set_s(m, IMP_T_BODY, "wrong-request body");
        break;
    case IMP_DELIVERED:
        imp_msg_set_u(m, IMP_T_SEQ, 1);
        break;
    case IMP_JOIN:
    case IMP_LEAVE:
    case IMP_MEMBERS:
    case IMP_HISTORY:
        imp_msg_set_s(m, IMP_T_ROOM, "wrroom");
        break;
    case IMP_PRESENCE:
        imp_msg_set_u(m, IMP_T_STATUS, IMP_STATUS_AWAY);
        break;
    case IMP_SUBSCRIBE: {
        imp_bytes n = names1(0, W.b);
        imp_msg_set_b(m, IMP_T_NAMES, n.p, n.len);
        break;
    }
    case IMP_MONITOR:
        imp_msg_set_u(m, IMP_T_ENABLE, 1);
        break;
    case IMP_WELCOME:
        imp_msg_set_u(m, IMP_T_VERSION, 1);
        imp_msg_set_u(m, IMP_T_MAX_FRAME, 1048576);
        imp_msg_set_u(m, IMP_T_MAX_FRAME_PREAUTH, 4096);
        imp_msg_set_u(m, IMP_T_PING_INTERVAL, 30000);
        imp_msg_set_u(m, IMP_T_AUTH_TIMEOUT, 10000);
        break;
    case IMP_AUTH_OK: /* a client claiming to be authenticated, as an administrator */
        imp_msg_set_s(m, IMP_T_USER, W.a);
        imp_msg_set_u(m, IMP_T_SESSION_ID, 1);
        imp_msg_set_u(m, IMP_T_LAST_SEQ, 0);
        imp_msg_set_u(m, IMP_T_ADMIN, 1);
        break;
    case IMP_ACK:
        imp_msg_set_u(m, IMP_T_MSG_ID, 1);
        imp_msg_set_u(m, IMP_T_OUTCOME, IMP_OUTCOME_STORED);
        break;
    case IMP_DELIVER:
        imp_msg_set_u(m, IMP_T_TARGET_KIND, IMP_TARGET_USER);
        imp_msg_set_s(m, IMP_T_TARGET, W.c);
        imp_msg_set_s(m, IMP_T_BODY, "wrong-request body");
        imp_msg_set_u(m, IMP_T_MSG_ID, 1);
        imp_msg_set_u(m, IMP_T_SEQ, 1);
        imp_msg_set_s(m, IMP_T_SENDER, W.b);
        imp_msg_set_u(m, IMP_T_TIMESTAMP, 1);
        break;
    case IMP_MEMBER_LIST: {
        imp_bytes n = names1(1, W.a);
        imp_msg_set_s(m, IMP_T_ROOM, "wrroom");
        imp_msg_set_b(m, IMP_T_NAMES, n.p, n.len);
        break;
    }
    case IMP_HISTORY_ITEM:
        imp_msg_set_s(m, IMP_T_BODY, "wrong-request body");
        imp_msg_set_u(m, IMP_T_MSG_ID, 1);
        imp_msg_set_s(m, IMP_T_SENDER, W.b);
        imp_msg_set_u(m, IMP_T_TIMESTAMP, 1);
        imp_msg_set_s(m, IMP_T_ROOM, "wrroom");
        break;
    case IMP_ROOM_LIST:
    case IMP_WHO_LIST: {
        imp_bytes n = names1(2, W.a);
        imp_msg_set_b(m, IMP_T_NAMES, n.p, n.len);
        break;
    }
    case IMP_PRESENCE_EVENT:
        imp_msg_set_s(m, IMP_T_USER, W.b);
        imp_msg_set_u(m, IMP_T_STATUS, IMP_STATUS_ONLINE);
        break;
    case IMP_STATS_REPLY:
        imp_builder_init(&b, stats, sizeof stats);
        IT_EQ(imp_stats_add(&b, "sessions", 8, 1), 0);
        imp_msg_set_b(m, IMP_T_STATS, stats, b.len);
        break;
    case IMP_MONITOR_EVENT:
        imp_msg_set_u(m, IMP_T_TIMESTAMP, 1);
        imp_msg_set_s(m, IMP_T_EVENT, "login");
        break;
    default: /* LOGOUT, OK, ROOMS, WHO, STATS, PING, PONG: no required field */
        break;
    }
}

/* ---- fills -------------------------------------------------------------------------------- */

static void send_to(imp_msg *m, int kind, const char *target, const char *body)
{
    imp_msg_set_u(m, IMP_T_TARGET_KIND, (uint64_t)kind);
    if (target)
        imp_msg_set_s(m, IMP_T_TARGET, target);
    imp_msg_set_s(m, IMP_T_BODY, body);
}

static void f_send_unknown_user(imp_msg *m)
{
    send_to(m, IMP_TARGET_USER, "nosuchuser", "to nobody");
}
static void f_send_unknown_long(imp_msg *m)
{
    send_to(m, IMP_TARGET_USER, W.long_name, "to nobody");
}
static void f_send_unknown_caps(imp_msg *m)
{
    send_to(m, IMP_TARGET_USER, "NoSuchUser", "to nobody");
}
static void f_send_unknown_transient(imp_msg *m)
{
    f_send_unknown_user(m);
    imp_msg_set_u(m, IMP_T_CLASS, IMP_CLASS_TRANSIENT);
}
static void f_send_unknown_acknone(imp_msg *m)
{
    f_send_unknown_user(m);
    imp_msg_set_u(m, IMP_T_ACK_MODE, IMP_ACK_NONE);
}
static void f_send_unknown_ackdelivered(imp_msg *m)
{
    f_send_unknown_user(m);
    imp_msg_set_u(m, IMP_T_ACK_MODE, IMP_ACK_DELIVERED);
}
static void f_send_unknown_room(imp_msg *m)
{
    send_to(m, IMP_TARGET_ROOM, "nosuchroom", "to no room");
}
static void f_send_unknown_room_long(imp_msg *m)
{
    send_to(m, IMP_TARGET_ROOM, W.long_name, "to no room");
}
static void f_send_room_not_member(imp_msg *m)
{
    send_to(m, IMP_TARGET_ROOM, W.room_b, "into bob's room");
}
static void f_send_room_not_member_transient(imp_msg *m)
{
    f_send_room_not_member(m);
    imp_msg_set_u(m, IMP_T_CLASS, IMP_CLASS_TRANSIENT);
}
static void f_send_broadcast(imp_msg *m)
{
    send_to(m, IMP_TARGET_BROADCAST, NULL, "to everyone");
}
static void f_send_broadcast_transient(imp_msg *m)
{
    f_send_broadcast(m);
    imp_msg_set_u(m, IMP_T_CLASS, IMP_CLASS_TRANSIENT);
}
static void f_send_id_conflict_body(imp_msg *m)
{
    send_to(m, IMP_TARGET_USER, W.c, "a different body");
    imp_msg_set_s(m, IMP_T_CLIENT_MSG_ID, "wr-used");
}
static void f_send_id_conflict_target(imp_msg *m)
{
    send_to(m, IMP_TARGET_USER, W.b, "the first body");
    imp_msg_set_s(m, IMP_T_CLIENT_MSG_ID, "wr-used");
}
static void f_send_forged(imp_msg *m)
{
    send_to(m, IMP_TARGET_USER, W.c, "forged identity");
}
static void f_delivered_beyond(imp_msg *m)
{
    imp_msg_set_u(m, IMP_T_SEQ, 1000000);
}
static void f_delivered_max(imp_msg *m)
{
    imp_msg_set_u(m, IMP_T_SEQ, UINT64_MAX);
}
static void f_delivered_bobs(imp_msg *m)
{
    imp_msg_set_u(m, IMP_T_SEQ, 3); /* bob has 3 queued messages, alice none */
}
static void f_room_b(imp_msg *m)
{
    imp_msg_set_s(m, IMP_T_ROOM, W.room_b);
}
static void f_room_unknown(imp_msg *m)
{
    imp_msg_set_s(m, IMP_T_ROOM, "nosuchroom");
}
static void f_room_unknown_long(imp_msg *m)
{
    imp_msg_set_s(m, IMP_T_ROOM, W.long_name);
}
static void f_history_before0(imp_msg *m)
{
    imp_msg_set_s(m, IMP_T_ROOM, "admroom");
    imp_msg_set_u(m, IMP_T_BEFORE_ID, 0);
}
static void f_monitor_off(imp_msg *m)
{
    imp_msg_set_u(m, IMP_T_ENABLE, 0);
}
static void f_presence_offline(imp_msg *m)
{
    imp_msg_set_u(m, IMP_T_STATUS, IMP_STATUS_AWAY); /* made 0 by forge_status_offline */
}
static void f_error_510(imp_msg *m)
{
    imp_msg_set_u(m, IMP_T_CODE, 510); /* 7.1: a client's ERROR closes, whatever its class */
}
static void f_register_existing(imp_msg *m)
{
    imp_msg_set_s(m, IMP_T_USER, W.b);
    imp_msg_set_s(m, IMP_T_PASSWORD, "another password");
}
static void f_register_existing_caps(imp_msg *m)
{
    static char up[40];
    snprintf(up, sizeof up, "%s", W.b);
    for (char *p = up; *p; p++)
        if (*p >= 'a' && *p <= 'z')
            *p = (char)(*p - 'a' + 'A');
    imp_msg_set_s(m, IMP_T_USER, up);
    imp_msg_set_s(m, IMP_T_PASSWORD, "another password");
}
static void f_register_weak(imp_msg *m)
{
    static char name[40];
    imp_msg_set_s(m, IMP_T_USER, it_name(name, sizeof name, "weak"));
    imp_msg_set_s(m, IMP_T_PASSWORD, "short");
}
static void f_register_fresh(imp_msg *m)
{
    static char name[40];
    imp_msg_set_s(m, IMP_T_USER, it_name(name, sizeof name, "fresh"));
    imp_msg_set_s(m, IMP_T_PASSWORD, "fresh password");
}
static void f_login_unknown(imp_msg *m)
{
    imp_msg_set_s(m, IMP_T_USER, "nosuchuser");
    imp_msg_set_s(m, IMP_T_PASSWORD, "some password");
}
static void f_login_unknown_long(imp_msg *m)
{
    imp_msg_set_s(m, IMP_T_USER, W.long_name);
    imp_msg_set_s(m, IMP_T_PASSWORD, "some password");
}
static void f_login_wrong_pw(imp_msg *m)
{
    imp_msg_set_s(m, IMP_T_USER, W.b);
    imp_msg_set_s(m, IMP_T_PASSWORD, "not bob's password");
}
static void f_login_bob(imp_msg *m)
{
    imp_msg_set_s(m, IMP_T_USER, W.b);
    imp_msg_set_s(m, IMP_T_PASSWORD, PW_B);
}
static void f_login_other_token(imp_msg *m)
{
    imp_msg_set_s(m, IMP_T_USER, W.a); /* alice with bob's token */
    imp_msg_set_b(m, IMP_T_TOKEN, W.b_auth.token, W.b_auth.token_len);
}
static void f_login_random_token(imp_msg *m)
{
    static uint8_t tok[32];
    for (size_t i = 0; i < sizeof tok; i++)
        tok[i] = (uint8_t)(i * 37 + 11);
    imp_msg_set_s(m, IMP_T_USER, W.a);
    imp_msg_set_b(m, IMP_T_TOKEN, tok, sizeof tok);
}
static void f_login_token_unknown_user(imp_msg *m)
{
    imp_msg_set_s(m, IMP_T_USER, "nosuchuser");
    imp_msg_set_b(m, IMP_T_TOKEN, W.a_auth.token, W.a_auth.token_len);
}
static void f_login_last_seq_beyond(imp_msg *m)
{
    imp_msg_set_s(m, IMP_T_USER, W.a);
    imp_msg_set_s(m, IMP_T_PASSWORD, PW_A);
    imp_msg_set_u(m, IMP_T_LAST_SEQ, 1000000);
}
static void f_subscribe_1000(imp_msg *m)
{
    static uint8_t buf[IMP_LIST_MAX_NAMES * 12];
    imp_builder b;
    imp_builder_init(&b, buf, sizeof buf);
    for (int i = 0; i < IMP_LIST_MAX_NAMES; i++) {
        char n[16];
        snprintf(n, sizeof n, "sub%d", i);
        IT_EQ(imp_names_add(&b, n, strlen(n)), 0);
    }
    imp_msg_set_b(m, IMP_T_NAMES, buf, b.len);
}

/* ---- forges (IMP-SEC-004: fields only server frames define, in a client's frame) ---------- */

static size_t forge_identity(uint8_t *buf, size_t len, size_t cap)
{
    len = insert_u64(buf, len, cap, IMP_T_MSG_ID, 4242);
    len = insert_u64(buf, len, cap, IMP_T_SEQ, 4242);
    len = insert_str(buf, len, cap, IMP_T_SENDER, W.b);
    return insert_u64(buf, len, cap, IMP_T_TIMESTAMP, 86400000); /* 1970-01-02 */
}
static size_t forge_admin(uint8_t *buf, size_t len, size_t cap)
{
    return insert_bool1(buf, len, cap, IMP_T_ADMIN);
}
static size_t forge_user_b(uint8_t *buf, size_t len, size_t cap)
{
    return insert_str(buf, len, cap, IMP_T_USER, W.b);
}
static size_t forge_status_offline(uint8_t *buf, size_t len, size_t cap)
{
    (void)cap;
    /* PRESENCE's only field is STATUS (tag 39, 1 byte): its value is the last byte */
    IT_EQ(buf[len - 7 + 1], IMP_T_STATUS);
    buf[len - 1] = IMP_STATUS_OFFLINE;
    return len;
}

/* ---- row-specific checks ------------------------------------------------------------------ */

static tc_frame *reply(tc *c, uint32_t req, const char *what)
{
    tc_frame *f = tc_wait_reply(c, req, ANSWER_MS);
    char d[512];
    IT_CHECK(f != NULL, "%s: no answer to request %u within %d ms: %s", what, (unsigned)req,
             ANSWER_MS, tc_describe(c, d, sizeof d));
    return f;
}

/* SEND with forged MSG_ID, SEQ, SENDER and TIMESTAMP: stored; carol's DELIVER carries the
 * server's values. */
static uint64_t ck_forged_send(tc *c, uint32_t req, uint64_t t0)
{
    tc_frame *f = reply(c, req, "forged SEND");
    uint64_t lat = it_now_ms() - t0;
    IT_EQ(f->m.type, IMP_ACK);
    IT_EQ(imp_msg_u(&f->m, IMP_T_OUTCOME, 0), IMP_OUTCOME_STORED);
    uint64_t id = imp_msg_u(&f->m, IMP_T_MSG_ID, 0);
    IT_CHECK(id != 0 && id != 4242, "ACK MSG_ID %llu", (unsigned long long)id);
    tc_frame_free(f);
    for (;;) {
        tc_frame *d = tc_wait(W.c_conn, IMP_DELIVER, 0, T);
        IT_CHECK(d != NULL, "carol: no DELIVER of the forged message");
        uint64_t got = imp_msg_u(&d->m, IMP_T_MSG_ID, 0);
        tc_delivered(W.c_conn, imp_msg_u(&d->m, IMP_T_SEQ, 0));
        if (got != id) {
            tc_frame_free(d);
            continue;
        }
        IT_CHECK(tc_field_is(&d->m, IMP_T_SENDER, W.a), "forged SENDER reached carol");
        IT_CHECK(tc_field_is(&d->m, IMP_T_TARGET, W.c), "DELIVER TARGET is not carol");
        IT_CHECK(imp_msg_u(&d->m, IMP_T_SEQ, 0) != 4242, "forged SEQ reached carol");
        uint64_t ts = imp_msg_u(&d->m, IMP_T_TIMESTAMP, 0);
        IT_CHECK(ts > (uint64_t)time(NULL) * 1000 - 3600000, "forged TIMESTAMP reached carol: %llu",
                 (unsigned long long)ts);
        tc_frame_free(d);
        return lat;
    }
}

/* REGISTER / LOGIN with a forged ADMIN field: AUTH_OK without ADMIN, and STATS refused. */
static uint64_t ck_not_admin(tc *c, uint32_t req, uint64_t t0)
{
    tc_frame *f = reply(c, req, "REGISTER/LOGIN with ADMIN");
    uint64_t lat = it_now_ms() - t0;
    IT_CHECK(f->m.type == IMP_AUTH_OK, "answer %s", imp_type_name(f->m.type));
    IT_CHECK(!imp_msg_has(&f->m, IMP_T_ADMIN), "forged ADMIN made an administrator");
    tc_frame_free(f);
    uint32_t r = tc_simple(c, IMP_STATS);
    f = reply(c, r, "STATS after a forged ADMIN");
    IT_CHECK(f->m.type == IMP_ERROR && imp_msg_u(&f->m, IMP_T_CODE, 0) == 502,
             "STATS after a forged ADMIN: %s", imp_type_name(f->m.type));
    tc_frame_free(f);
    return lat;
}

/* LOGIN with LAST_SEQ beyond the end: AUTH_OK; the acked mark is not moved beyond the end, so
 * the next message to alice is delivered (session.c: taken as the highest assigned). */
static uint64_t ck_last_seq_beyond(tc *c, uint32_t req, uint64_t t0)
{
    tc_frame *f = reply(c, req, "LOGIN with LAST_SEQ beyond the end");
    uint64_t lat = it_now_ms() - t0;
    IT_CHECK(f->m.type == IMP_AUTH_OK, "answer %s (code %d)", imp_type_name(f->m.type),
             (int)imp_msg_u(&f->m, IMP_T_CODE, 0));
    uint64_t last = imp_msg_u(&f->m, IMP_T_LAST_SEQ, 0);
    IT_CHECK(last < 1000000, "AUTH_OK LAST_SEQ %llu: beyond the end", (unsigned long long)last);
    tc_frame_free(f);
    tc_ack ack;
    IT_EQ(tc_send_text(W.c_conn, W.a, NULL, "after a LAST_SEQ beyond the end", &ack), 0);
    IT_EQ(ack.outcome, IMP_OUTCOME_STORED);
    tc_frame *d = tc_wait(c, IMP_DELIVER, 0, T);
    IT_CHECK(d != NULL, "no DELIVER after LOGIN with LAST_SEQ beyond the end");
    IT_EQ(imp_msg_u(&d->m, IMP_T_SEQ, 0), last + 1);
    tc_delivered(c, last + 1);
    tc_frame_free(d);
    return lat;
}

/* SUBSCRIBE 1000 names is fine; one more name is TOO_LARGE and changes nothing. */
static uint64_t ck_subscribe_over(tc *c, uint32_t req, uint64_t t0)
{
    (void)t0;
    tc_frame *f = reply(c, req, "SUBSCRIBE of 1000 names");
    IT_CHECK(f->m.type == IMP_OK, "SUBSCRIBE 1000: %s", imp_type_name(f->m.type));
    tc_frame_free(f);
    imp_msg m;
    imp_msg_init(&m, IMP_SUBSCRIBE, 0);
    imp_bytes n = names1(3, "onemore");
    imp_msg_set_b(&m, IMP_T_NAMES, n.p, n.len);
    uint64_t t1 = it_now_ms();
    uint32_t r = tc_request(c, &m);
    IT_CHECK(r != 0, "SUBSCRIBE");
    /* skip the 1000 PRESENCE_EVENTs of the first SUBSCRIBE */
    f = reply(c, r, "SUBSCRIBE beyond 1000");
    uint64_t lat = it_now_ms() - t1;
    IT_CHECK(f->m.type == IMP_ERROR && imp_msg_u(&f->m, IMP_T_CODE, 0) == 505,
             "SUBSCRIBE beyond the limit: %s code %d", imp_type_name(f->m.type),
             (int)imp_msg_u(&f->m, IMP_T_CODE, 0));
    tc_frame_free(f);
    return lat;
}

/* HISTORY with BEFORE_ID 0: no MSG_ID is below 0, so no item; OK with COUNT 0 (SPEC.md 5.4:
 * "MSG_ID < BEFORE_ID (all when absent)"). */
static uint64_t ck_history_empty(tc *c, uint32_t req, uint64_t t0)
{
    tc_frame *f = reply(c, req, "HISTORY with BEFORE_ID 0");
    uint64_t lat = it_now_ms() - t0;
    IT_CHECK(f->m.type == IMP_OK, "HISTORY with BEFORE_ID 0 answered %s(MSG_ID %llu)",
             imp_type_name(f->m.type), (unsigned long long)imp_msg_u(&f->m, IMP_T_MSG_ID, 0));
    IT_EQ(imp_msg_u(&f->m, IMP_T_COUNT, 99), 0);
    IT_EQ(imp_msg_u(&f->m, IMP_T_MORE, 0), 0);
    tc_frame_free(f);
    return lat;
}

/* ---- the table ---------------------------------------------------------------------------- */

#define STR(st, ty, x, code, req)                    \
    {                                                \
        NULL, st, ty, NULL, NULL, x, code, req, NULL \
    }
#define ROW(name, st, ty, fill, forge, x, code, req)  \
    {                                                 \
        name, st, ty, fill, forge, x, code, req, NULL \
    }
#define CHK(name, st, ty, fill, forge, check, req)        \
    {                                                     \
        name, st, ty, fill, forge, X_CHECK, 0, req, check \
    }

static const wr_row rows[] = {
    /* SPEC.md 7.1, AWAIT_HELLO: only HELLO; anything else a client may send is STATE, a server
     * frame WRONG_ROLE, an ERROR closes. */
    STR(S_PRE_HELLO, IMP_REGISTER, X_CLOSE, 706, "IMP-SESS-002"),
    STR(S_PRE_HELLO, IMP_LOGIN, X_CLOSE, 706, "IMP-SESS-002"),
    STR(S_PRE_HELLO, IMP_LOGOUT, X_CLOSE, 706, "IMP-SESS-002"),
    STR(S_PRE_HELLO, IMP_PING, X_CLOSE, 706, "IMP-SESS-002"),
    STR(S_PRE_HELLO, IMP_PONG, X_CLOSE, 706, "IMP-SESS-002"),
    STR(S_PRE_HELLO, IMP_SEND, X_CLOSE, 706, "IMP-SESS-002"),
    STR(S_PRE_HELLO, IMP_DELIVERED, X_CLOSE, 706, "IMP-SESS-002"),
    STR(S_PRE_HELLO, IMP_JOIN, X_CLOSE, 706, "IMP-SESS-002"),
    STR(S_PRE_HELLO, IMP_LEAVE, X_CLOSE, 706, "IMP-SESS-002"),
    STR(S_PRE_HELLO, IMP_MEMBERS, X_CLOSE, 706, "IMP-SESS-002"),
    STR(S_PRE_HELLO, IMP_HISTORY, X_CLOSE, 706, "IMP-SESS-002"),
    STR(S_PRE_HELLO, IMP_ROOMS, X_CLOSE, 706, "IMP-SESS-002"),
    STR(S_PRE_HELLO, IMP_PRESENCE, X_CLOSE, 706, "IMP-SESS-002"),
    STR(S_PRE_HELLO, IMP_SUBSCRIBE, X_CLOSE, 706, "IMP-SESS-002"),
    STR(S_PRE_HELLO, IMP_WHO, X_CLOSE, 706, "IMP-SESS-002"),
    STR(S_PRE_HELLO, IMP_STATS, X_CLOSE, 706, "IMP-SESS-002"),
    STR(S_PRE_HELLO, IMP_MONITOR, X_CLOSE, 706, "IMP-SESS-002"),
    STR(S_PRE_HELLO, IMP_WELCOME, X_CLOSE, 705, "IMP-MSG-001"),
    STR(S_PRE_HELLO, IMP_AUTH_OK, X_CLOSE, 705, "IMP-MSG-001"),
    STR(S_PRE_HELLO, IMP_OK, X_CLOSE, 705, "IMP-MSG-001"),
    STR(S_PRE_HELLO, IMP_ACK, X_CLOSE, 705, "IMP-MSG-001"),
    STR(S_PRE_HELLO, IMP_DELIVER, X_CLOSE, 705, "IMP-MSG-001"),
    STR(S_PRE_HELLO, IMP_MEMBER_LIST, X_CLOSE, 705, "IMP-MSG-001"),
    STR(S_PRE_HELLO, IMP_HISTORY_ITEM, X_CLOSE, 705, "IMP-MSG-001"),
    STR(S_PRE_HELLO, IMP_ROOM_LIST, X_CLOSE, 705, "IMP-MSG-001"),
    STR(S_PRE_HELLO, IMP_PRESENCE_EVENT, X_CLOSE, 705, "IMP-MSG-001"),
    STR(S_PRE_HELLO, IMP_WHO_LIST, X_CLOSE, 705, "IMP-MSG-001"),
    STR(S_PRE_HELLO, IMP_STATS_REPLY, X_CLOSE, 705, "IMP-MSG-001"),
    STR(S_PRE_HELLO, IMP_MONITOR_EVENT, X_CLOSE, 705, "IMP-MSG-001"),
    STR(S_PRE_HELLO, IMP_ERROR, X_CLOSE_Q, 0, "IMP-SESS-002"),
    /* AWAIT_AUTH: a second HELLO is STATE; application requests NOT_AUTHENTICATED (IMP-SESS-004,
     * IMP-SEC-003: nothing naming a user or room is accepted before AUTH_OK). */
    STR(S_AWAIT_AUTH, IMP_HELLO, X_CLOSE, 706, "IMP-SESS-002"),
    STR(S_AWAIT_AUTH, IMP_SEND, X_CLOSE, 707, "IMP-SESS-004"),
    STR(S_AWAIT_AUTH, IMP_DELIVERED, X_CLOSE, 707, "IMP-SESS-004"),
    STR(S_AWAIT_AUTH, IMP_JOIN, X_CLOSE, 707, "IMP-SESS-004"),
    STR(S_AWAIT_AUTH, IMP_LEAVE, X_CLOSE, 707, "IMP-SESS-004"),
    STR(S_AWAIT_AUTH, IMP_MEMBERS, X_CLOSE, 707, "IMP-SEC-003"),
    STR(S_AWAIT_AUTH, IMP_HISTORY, X_CLOSE, 707, "IMP-SEC-003"),
    STR(S_AWAIT_AUTH, IMP_ROOMS, X_CLOSE, 707, "IMP-SEC-003"),
    STR(S_AWAIT_AUTH, IMP_PRESENCE, X_CLOSE, 707, "IMP-SESS-004"),
    STR(S_AWAIT_AUTH, IMP_SUBSCRIBE, X_CLOSE, 707, "IMP-SEC-003"),
    STR(S_AWAIT_AUTH, IMP_WHO, X_CLOSE, 707, "IMP-SEC-003"),
    STR(S_AWAIT_AUTH, IMP_STATS, X_CLOSE, 707, "IMP-SEC-001"),
    STR(S_AWAIT_AUTH, IMP_MONITOR, X_CLOSE, 707, "IMP-SEC-001"),
    STR(S_AWAIT_AUTH, IMP_WELCOME, X_CLOSE, 705, "IMP-MSG-001"),
    STR(S_AWAIT_AUTH, IMP_AUTH_OK, X_CLOSE, 705, "IMP-MSG-001"),
    STR(S_AWAIT_AUTH, IMP_OK, X_CLOSE, 705, "IMP-MSG-001"),
    STR(S_AWAIT_AUTH, IMP_ACK, X_CLOSE, 705, "IMP-MSG-001"),
    STR(S_AWAIT_AUTH, IMP_DELIVER, X_CLOSE, 705, "IMP-MSG-001"),
    STR(S_AWAIT_AUTH, IMP_MEMBER_LIST, X_CLOSE, 705, "IMP-MSG-001"),
    STR(S_AWAIT_AUTH, IMP_HISTORY_ITEM, X_CLOSE, 705, "IMP-MSG-001"),
    STR(S_AWAIT_AUTH, IMP_ROOM_LIST, X_CLOSE, 705, "IMP-MSG-001"),
    STR(S_AWAIT_AUTH, IMP_PRESENCE_EVENT, X_CLOSE, 705, "IMP-MSG-001"),
    STR(S_AWAIT_AUTH, IMP_WHO_LIST, X_CLOSE, 705, "IMP-MSG-001"),
    STR(S_AWAIT_AUTH, IMP_STATS_REPLY, X_CLOSE, 705, "IMP-MSG-001"),
    STR(S_AWAIT_AUTH, IMP_MONITOR_EVENT, X_CLOSE, 705, "IMP-MSG-001"),
    STR(S_AWAIT_AUTH, IMP_ERROR, X_CLOSE_Q, 0, "IMP-SESS-002"),
    /* AUTHENTICATING: one REGISTER or LOGIN outstanding (IMP-SESS-004). */
    STR(S_AUTHENTICATING, IMP_HELLO, X_CLOSE, 706, "IMP-SESS-002"),
    STR(S_AUTHENTICATING, IMP_LOGIN, X_CLOSE, 706, "IMP-SESS-004"),
    ROW("second REGISTER while authenticating", S_AUTHENTICATING, IMP_REGISTER, f_register_fresh,
        NULL, X_CLOSE, 706, "IMP-SESS-004"),
    STR(S_AUTHENTICATING, IMP_SEND, X_CLOSE, 707, "IMP-SESS-004"),
    STR(S_AUTHENTICATING, IMP_DELIVERED, X_CLOSE, 707, "IMP-SESS-004"),
    STR(S_AUTHENTICATING, IMP_JOIN, X_CLOSE, 707, "IMP-SESS-004"),
    STR(S_AUTHENTICATING, IMP_HISTORY, X_CLOSE, 707, "IMP-SESS-004"),
    STR(S_AUTHENTICATING, IMP_STATS, X_CLOSE, 707, "IMP-SESS-004"),
    STR(S_AUTHENTICATING, IMP_AUTH_OK, X_CLOSE, 705, "IMP-MSG-001"),
    STR(S_AUTHENTICATING, IMP_DELIVER, X_CLOSE, 705, "IMP-MSG-001"),
    /* READY: HELLO, REGISTER and LOGIN are STATE; server frames WRONG_ROLE. */
    STR(S_USER, IMP_HELLO, X_CLOSE, 706, "IMP-SESS-002"),
    ROW("REGISTER while logged in", S_USER, IMP_REGISTER, f_register_fresh, NULL, X_CLOSE, 706,
        "IMP-SESS-002"),
    ROW("LOGIN while logged in", S_USER, IMP_LOGIN, NULL, NULL, X_CLOSE, 706, "IMP-SESS-002"),
    ROW("LOGIN as another user while logged in", S_USER, IMP_LOGIN, f_login_bob, NULL, X_CLOSE, 706,
        "IMP-SESS-002"),
    STR(S_USER, IMP_WELCOME, X_CLOSE, 705, "IMP-MSG-001"),
    STR(S_USER, IMP_AUTH_OK, X_CLOSE, 705, "IMP-MSG-001"),
    STR(S_USER, IMP_OK, X_CLOSE, 705, "IMP-MSG-001"),
    STR(S_USER, IMP_ACK, X_CLOSE, 705, "IMP-MSG-001"),
    STR(S_USER, IMP_DELIVER, X_CLOSE, 705, "IMP-MSG-001"),
    STR(S_USER, IMP_MEMBER_LIST, X_CLOSE, 705, "IMP-MSG-001"),
    STR(S_USER, IMP_HISTORY_ITEM, X_CLOSE, 705, "IMP-MSG-001"),
    STR(S_USER, IMP_ROOM_LIST, X_CLOSE, 705, "IMP-MSG-001"),
    STR(S_USER, IMP_PRESENCE_EVENT, X_CLOSE, 705, "IMP-MSG-001"),
    STR(S_USER, IMP_WHO_LIST, X_CLOSE, 705, "IMP-MSG-001"),
    STR(S_USER, IMP_STATS_REPLY, X_CLOSE, 705, "IMP-MSG-001"),
    STR(S_USER, IMP_MONITOR_EVENT, X_CLOSE, 705, "IMP-MSG-001"),
    STR(S_USER, IMP_ERROR, X_CLOSE_Q, 0, "IMP-SESS-002"),
    ROW("ERROR with a non-fatal code, logged in", S_USER, IMP_ERROR, f_error_510, NULL, X_CLOSE_Q,
        0, "IMP-SESS-002"),
    ROW("ERROR with a non-fatal code, after HELLO", S_AWAIT_AUTH, IMP_ERROR, f_error_510, NULL,
        X_CLOSE_Q, 0, "IMP-SESS-002"),
    STR(S_ADMIN, IMP_HELLO, X_CLOSE, 706, "IMP-SESS-002"),
    ROW("admin: LOGIN while logged in", S_ADMIN, IMP_LOGIN, NULL, NULL, X_CLOSE, 706,
        "IMP-SESS-002"),
    STR(S_ADMIN, IMP_WELCOME, X_CLOSE, 705, "IMP-MSG-001"),
    STR(S_ADMIN, IMP_STATS_REPLY, X_CLOSE, 705, "IMP-MSG-001"),
    STR(S_ADMIN, IMP_MONITOR_EVENT, X_CLOSE, 705, "IMP-MSG-001"),
    /* Wrong values in well-formed requests: section 6 codes, the connection stays usable. */
    ROW("SEND to an unknown user", S_USER, IMP_SEND, f_send_unknown_user, NULL, X_ACK, 500,
        "IMP-ERR-001"),
    ROW("SEND to an unknown 32-byte name", S_USER, IMP_SEND, f_send_unknown_long, NULL, X_ACK, 500,
        "IMP-TEXT-002"),
    ROW("SEND to an unknown name in capitals", S_USER, IMP_SEND, f_send_unknown_caps, NULL, X_ACK,
        500, "IMP-TEXT-003"),
    ROW("transient SEND to an unknown user", S_USER, IMP_SEND, f_send_unknown_transient, NULL,
        X_ACK, 500, "IMP-ERR-001"),
    ROW("SEND ACK_MODE none to an unknown user (refusals are ACKed)", S_USER, IMP_SEND,
        f_send_unknown_acknone, NULL, X_ACK, 500, "IMP-ERR-002"),
    ROW("SEND ACK_MODE delivered to an unknown user", S_USER, IMP_SEND, f_send_unknown_ackdelivered,
        NULL, X_ACK, 500, "IMP-ERR-002"),
    ROW("SEND to an unknown room", S_USER, IMP_SEND, f_send_unknown_room, NULL, X_ACK, 501,
        "IMP-ERR-001"),
    ROW("SEND to an unknown 32-byte room", S_USER, IMP_SEND, f_send_unknown_room_long, NULL, X_ACK,
        501, "IMP-TEXT-002"),
    ROW("SEND to a room not joined", S_USER, IMP_SEND, f_send_room_not_member, NULL, X_ACK, 503,
        "IMP-DELIV-008"),
    ROW("transient SEND to a room not joined", S_USER, IMP_SEND, f_send_room_not_member_transient,
        NULL, X_ACK, 503, "IMP-DELIV-008"),
    ROW("broadcast by a normal user", S_USER, IMP_SEND, f_send_broadcast, NULL, X_ACK, 502,
        "IMP-ERR-001"),
    ROW("transient broadcast by a normal user", S_USER, IMP_SEND, f_send_broadcast_transient, NULL,
        X_ACK, 502, "IMP-ERR-001"),
    ROW("broadcast with a forged ADMIN field", S_USER, IMP_SEND, f_send_broadcast, forge_admin,
        X_ACK, 502, "IMP-SEC-004"),
    ROW("CLIENT_MSG_ID reused with another body", S_USER, IMP_SEND, f_send_id_conflict_body, NULL,
        X_ACK, 511, "IMP-DELIV-005"),
    ROW("CLIENT_MSG_ID reused with another target", S_USER, IMP_SEND, f_send_id_conflict_target,
        NULL, X_ACK, 511, "IMP-DELIV-005"),
    ROW("DELIVERED beyond the last SEQ", S_USER, IMP_DELIVERED, f_delivered_beyond, NULL, X_ERROR,
        510, "IMP-DELIV-003"),
    ROW("DELIVERED of SEQ 2^64-1", S_USER, IMP_DELIVERED, f_delivered_max, NULL, X_ERROR, 510,
        "IMP-DELIV-003"),
    ROW("DELIVERED of a SEQ only another user's queue has", S_USER, IMP_DELIVERED, f_delivered_bobs,
        NULL, X_ERROR, 510, "IMP-DELIV-003"),
    ROW("DELIVERED with a forged USER of another user", S_USER, IMP_DELIVERED, f_delivered_bobs,
        forge_user_b, X_ERROR, 510, "IMP-SEC-004"),
    ROW("HISTORY of a room not joined", S_USER, IMP_HISTORY, f_room_b, NULL, X_ERROR, 503,
        "IMP-ERR-001"),
    ROW("HISTORY of a room not joined, forged USER", S_USER, IMP_HISTORY, f_room_b, forge_user_b,
        X_ERROR, 503, "IMP-SEC-004"),
    ROW("HISTORY of an unknown room", S_USER, IMP_HISTORY, f_room_unknown, NULL, X_ERROR, 501,
        "IMP-ERR-001"),
    ROW("HISTORY of an unknown 32-byte room", S_USER, IMP_HISTORY, f_room_unknown_long, NULL,
        X_ERROR, 501, "IMP-TEXT-002"),
    ROW("LEAVE a room not joined", S_USER, IMP_LEAVE, f_room_b, NULL, X_ERROR, 503, "IMP-ERR-001"),
    ROW("LEAVE an unknown room", S_USER, IMP_LEAVE, f_room_unknown, NULL, X_ERROR, 501,
        "IMP-ERR-001"),
    ROW("MEMBERS of an unknown room", S_USER, IMP_MEMBERS, f_room_unknown, NULL, X_ERROR, 501,
        "IMP-ERR-001"),
    STR(S_USER, IMP_STATS, X_ERROR, 502, "IMP-ERR-001"),
    ROW("STATS with a forged ADMIN field", S_USER, IMP_STATS, NULL, forge_admin, X_ERROR, 502,
        "IMP-SEC-004"),
    STR(S_USER, IMP_MONITOR, X_ERROR, 502, "IMP-ERR-001"),
    ROW("MONITOR off by a normal user", S_USER, IMP_MONITOR, f_monitor_off, NULL, X_ERROR, 502,
        "IMP-ERR-001"),
    ROW("MONITOR with a forged ADMIN field", S_USER, IMP_MONITOR, NULL, forge_admin, X_ERROR, 502,
        "IMP-SEC-004"),
    ROW("PRESENCE offline", S_USER, IMP_PRESENCE, f_presence_offline, forge_status_offline, X_CLOSE,
        719, "IMP-MSG-008"),
    CHK("SUBSCRIBE beyond 1000 subscriptions", S_USER, IMP_SUBSCRIBE, f_subscribe_1000, NULL,
        ck_subscribe_over, "IMP-ERR-001"),
    CHK("SEND with forged MSG_ID, SEQ, SENDER, TIMESTAMP", S_USER, IMP_SEND, f_send_forged,
        forge_identity, ck_forged_send, "IMP-SEC-004"),
    ROW("admin: SEND to an unknown user", S_ADMIN, IMP_SEND, f_send_unknown_user, NULL, X_ACK, 500,
        "IMP-ERR-001"),
    ROW("admin: SEND to an unknown room", S_ADMIN, IMP_SEND, f_send_unknown_room, NULL, X_ACK, 501,
        "IMP-ERR-001"),
    ROW("admin: DELIVERED beyond the last SEQ", S_ADMIN, IMP_DELIVERED, f_delivered_beyond, NULL,
        X_ERROR, 510, "IMP-DELIV-003"),
    ROW("admin: HISTORY of an unknown room", S_ADMIN, IMP_HISTORY, f_room_unknown, NULL, X_ERROR,
        501, "IMP-ERR-001"),
    ROW("admin: LEAVE a room not joined", S_ADMIN, IMP_LEAVE, f_room_b, NULL, X_ERROR, 503,
        "IMP-ERR-001"),
    CHK("admin: HISTORY with BEFORE_ID 0 of a room joined", S_ADMIN, IMP_HISTORY, f_history_before0,
        NULL, ck_history_empty, "SPEC.md 5.4"),
    ROW("admin: MEMBERS of an unknown room", S_ADMIN, IMP_MEMBERS, f_room_unknown, NULL, X_ERROR,
        501, "IMP-ERR-001"),
    /* Accounts (section 5.2, 6): 4xx, and the client may try again (IMP-SESS-005). */
    ROW("REGISTER of an existing name", S_AWAIT_AUTH, IMP_REGISTER, f_register_existing, NULL,
        X_ERROR, 401, "IMP-SESS-005"),
    ROW("REGISTER of an existing name in capitals", S_AWAIT_AUTH, IMP_REGISTER,
        f_register_existing_caps, NULL, X_ERROR, 401, "IMP-TEXT-003"),
    ROW("REGISTER with a weak password", S_AWAIT_AUTH, IMP_REGISTER, f_register_weak, NULL, X_ERROR,
        405, "IMP-SESS-005"),
    ROW("LOGIN of an unknown user", S_AWAIT_AUTH, IMP_LOGIN, f_login_unknown, NULL, X_ERROR, 400,
        "IMP-SEC-003"),
    ROW("LOGIN of an unknown 32-byte user", S_AWAIT_AUTH, IMP_LOGIN, f_login_unknown_long, NULL,
        X_ERROR, 400, "IMP-SEC-003"),
    ROW("LOGIN with a wrong password", S_AWAIT_AUTH, IMP_LOGIN, f_login_wrong_pw, NULL, X_ERROR,
        400, "IMP-SEC-003"),
    ROW("resume with another user's token", S_AWAIT_AUTH, IMP_LOGIN, f_login_other_token, NULL,
        X_ERROR, 403, "IMP-ERR-001"),
    ROW("resume with a made-up token", S_AWAIT_AUTH, IMP_LOGIN, f_login_random_token, NULL, X_ERROR,
        403, "IMP-ERR-001"),
    ROW("resume of an unknown user with a valid token", S_AWAIT_AUTH, IMP_LOGIN,
        f_login_token_unknown_user, NULL, X_ERROR, 403, "IMP-ERR-001"),
    CHK("REGISTER with a forged ADMIN field", S_AWAIT_AUTH, IMP_REGISTER, f_register_fresh,
        forge_admin, ck_not_admin, "IMP-SEC-004"),
    CHK("LOGIN with a forged ADMIN field", S_AWAIT_AUTH, IMP_LOGIN, NULL, forge_admin, ck_not_admin,
        "IMP-SEC-004"),
    CHK("LOGIN with LAST_SEQ beyond the end", S_AWAIT_AUTH, IMP_LOGIN, f_login_last_seq_beyond,
        NULL, ck_last_seq_beyond, "IMP-DELIV-004"),
};

#define NROWS (sizeof rows / sizeof rows[0])

/* ---- running a row ------------------------------------------------------------------------ */

/* A raw connection in a state (S_AUTHENTICATING: after HELLO; the LOGIN goes with the row). */
static tc *conn_in(wr_state st)
{
    tc *c = tc_connect_raw(W.port, T, 0);
    IT_CHECK(c != NULL, "connect");
    tc_record_start(c);
    if (st == S_PRE_HELLO)
        return c;
    IT_EQ(tc_raw_hello(c, T), 0);
    if (st == S_AWAIT_AUTH || st == S_AUTHENTICATING)
        return c;
    const tc_auth *a = st == S_ADMIN ? &W.adm_auth : &W.a_auth;
    int r = tc_login_token(c, a->user, a->token, a->token_len, UINT64_MAX, NULL, T);
    IT_CHECK(r == 0, "token login of %s: %d", a->user, r);
    return c;
}

static const char *row_name(const wr_row *r, char *buf, size_t len)
{
    if (r->name)
        return r->name;
    snprintf(buf, len, "%s %s", imp_type_name(r->type), state_names[r->st]);
    return buf;
}

/* After a non-fatal answer the connection is still usable: PING answered. */
static void still_open(tc *c, const char *what)
{
    uint32_t r = tc_simple(c, IMP_PING);
    tc_frame *f = tc_wait(c, IMP_PONG, r, T);
    char d[512];
    IT_CHECK(f != NULL, "%s: no PONG after the refusal (connection not usable): %s", what,
             tc_describe(c, d, sizeof d));
    tc_frame_free(f);
}

static uint64_t run_row(const wr_row *r, uint32_t req)
{
    char nb[96];
    const char *what = row_name(r, nb, sizeof nb);
    static uint8_t buf[32768];
    size_t n = 0;
    tc *c = conn_in(r->st);
    if (r->st == S_AUTHENTICATING) {
        /* the password LOGIN is hashed off the event loop: the row's frame, in the same write,
         * is read while it is outstanding */
        imp_msg l;
        imp_msg_init(&l, IMP_LOGIN, req - 1);
        imp_msg_set_s(&l, IMP_T_USER, W.a);
        imp_msg_set_s(&l, IMP_T_PASSWORD, PW_A);
        n = encode(&l, buf, sizeof buf);
    }
    imp_msg m;
    imp_msg_init(&m, r->type, req);
    if (r->fill)
        r->fill(&m);
    else
        f_min(&m);
    size_t fl = encode(&m, buf + n, sizeof buf - n);
    if (r->forge)
        fl = r->forge(buf + n, fl, sizeof buf - n);
    n += fl;
    uint64_t t0 = it_now_ms();
    int wr = tc_send_raw(c, buf, n, T);
    IT_CHECK(wr == 0, "%s: write %d", what, wr);
    uint64_t lat = 0;
    char d[512];
    switch (r->x) {
    case X_CLOSE:
    case X_CLOSE_Q: {
        int code = 0;
        int closed = tc_expect_close(c, ANSWER_MS, &code);
        lat = it_now_ms() - t0;
        IT_CHECK(closed, "%s: not closed within %d ms: %s", what, ANSWER_MS,
                 tc_describe(c, d, sizeof d));
        IT_CHECK(code == r->code, "%s: ERROR %d before the close, want %d: %s", what, code, r->code,
                 tc_describe(c, d, sizeof d));
        if (r->code) { /* IMP-FRAME-007: the ERROR carries the offending frame's request id */
            tc_frame *e = tc_wait(c, IMP_ERROR, 0, 0);
            IT_CHECK(e != NULL && e->m.request_id == req, "%s: ERROR request id %u, want %u", what,
                     e ? (unsigned)e->m.request_id : 0u, (unsigned)req);
            tc_frame_free(e);
        }
        /* IMP-ERR-003: a LOGIN outstanding when the violation came is never completed */
        IT_CHECK(tc_queued(c, IMP_AUTH_OK) == 0, "%s: AUTH_OK after the violation", what);
        /* IMP-ERR-003: nothing but the ERROR answered the offending frame */
        for (tc_frame *f = c->head; f; f = f->next)
            IT_CHECK(f->m.request_id != req, "%s: %s answered the offending frame", what,
                     imp_type_name(f->m.type));
        break;
    }
    case X_ERROR:
    case X_ACK: {
        tc_frame *f = reply(c, req, what);
        lat = it_now_ms() - t0;
        uint8_t want = r->x == X_ERROR ? IMP_ERROR : IMP_ACK;
        IT_CHECK(f->m.type == want, "%s: answered %s, want %s", what, imp_type_name(f->m.type),
                 imp_type_name(want));
        IT_CHECK((int)imp_msg_u(&f->m, IMP_T_CODE, 0) == r->code, "%s: CODE %d, want %d", what,
                 (int)imp_msg_u(&f->m, IMP_T_CODE, 0), r->code);
        if (r->x == X_ACK) {
            IT_EQ(imp_msg_u(&f->m, IMP_T_OUTCOME, 0), IMP_OUTCOME_REFUSED);
            IT_CHECK(!imp_msg_has(&f->m, IMP_T_MSG_ID), "%s: a refused ACK with a MSG_ID", what);
        }
        tc_frame_free(f);
        still_open(c, what);
        if (r->st == S_AWAIT_AUTH) { /* IMP-SESS-005: back to AWAIT_AUTH, try again */
            int l = tc_login_token(c, W.a, W.a_auth.token, W.a_auth.token_len, UINT64_MAX, NULL, T);
            IT_CHECK(l == 0, "%s: LOGIN after the refusal: %d", what, l);
        }
        break;
    }
    case X_CHECK:
        lat = r->check(c, req, t0);
        break;
    }
    IT_CHECK(!c->lib_err, "%s: the server's answer is not valid IMP: %d", what, c->lib_err);
    IT_CHECK(lat <= ANSWER_MS, "%s: answered after %llu ms", what, (unsigned long long)lat);
    if (W.forbidden) {
        tc_pump(c, 50);
        IT_CHECK(!marker_in(c, W.forbidden), "%s: the connection received \"%s\" (%llu bytes)",
                 what, W.forbidden, (unsigned long long)c->rec_len);
    }
    tc_close(c);
    return lat;
}

static void run_table(imd_proc *p, long pid, const char *pass, const wr_row *tab, size_t n,
                      void (*after)(const char *what), uint64_t *max_lat, const char **max_name)
{
    uint64_t t0 = it_now_ms();
    for (size_t i = 0; i < n; i++) {
        uint64_t lat = run_row(&tab[i], (uint32_t)(1000 + 2 * i));
        if (lat > *max_lat) {
            *max_lat = lat;
            *max_name = tab[i].name ? tab[i].name : imp_type_name(tab[i].type);
        }
        IT_CHECK(imd_alive(p) && (long)p->pid == pid, "imd died or changed after row %zu", i);
        if (after) {
            char nb[96];
            after(row_name(&tab[i], nb, sizeof nb));
        }
    }
    it_note("%s: %zu requests answered in %llu ms", pass, n,
            (unsigned long long)(it_now_ms() - t0));
}

static void join(tc *c, const char *room);

static void make_admin(imd_proc *p, const char *name, const char *pw)
{
    static const char *args[6];
    args[0] = "user";
    args[1] = "add";
    args[2] = name;
    args[3] = "--admin";
    args[4] = NULL;
    char in[64];
    snprintf(in, sizeof in, "%s\n", pw);
    IT_EQ(it_admin(p, in, NULL, 0, args), 0);
}

/* No login throttling in the way of a table of failed logins from one address. */
static const char *const no_throttle[] = {"--set", "addr_max_failures=1000", "--set",
                                          "user_free_failures=1000000", NULL};

static void test_wrong_requests(void **state)
{
    (void)state;
    memset(&W, 0, sizeof W);
    snprintf(W.a, sizeof W.a, "alice");
    snprintf(W.b, sizeof W.b, "bob");
    snprintf(W.c, sizeof W.c, "carol");
    snprintf(W.adm, sizeof W.adm, "root");
    snprintf(W.room_b, sizeof W.room_b, "bobroom");
    snprintf(W.long_name, sizeof W.long_name, "n0123456789abcdef0123456789abcde");
    IT_EQ(strlen(W.long_name), 32);

    imd_proc *p = it_create_imd(no_throttle);
    make_admin(p, W.adm, PW_ADM);
    it_start(p);
    long pid = (long)p->pid;
    W.port = p->port;

    tc_close(it_register(p->port, W.a, PW_A, &W.a_auth));
    tc *b = it_register(p->port, W.b, PW_B, &W.b_auth);
    tc *adm = it_login(p->port, W.adm, PW_ADM, &W.adm_auth);
    IT_CHECK(W.adm_auth.admin == 1, "root is not an administrator");
    join(adm, "admroom"); /* with one message, for HISTORY BEFORE_ID 0 */
    tc_msg rm;
    memset(&rm, 0, sizeof rm);
    rm.kind = IMP_TARGET_ROOM;
    rm.target = "admroom";
    rm.cls = rm.ack_mode = -1;
    rm.body = "in the admin's room";
    rm.body_len = strlen(rm.body);
    tc_ack rack;
    IT_EQ(tc_send(adm, &rm, &rack, T), 0);
    IT_EQ(rack.outcome, IMP_OUTCOME_STORED);
    tc_close(adm);
    W.c_conn = it_register(p->port, W.c, PW_C, NULL);
    tc_record_start(W.c_conn);
    /* bob's room, with bob's messages (queued for bob: SEQ 1..3; alice has none) */
    imp_msg m;
    imp_msg_init(&m, IMP_JOIN, 0);
    imp_msg_set_s(&m, IMP_T_ROOM, W.room_b);
    uint32_t r = tc_request(b, &m);
    tc_frame *f = tc_wait_reply(b, r, T);
    IT_CHECK(f && f->m.type == IMP_OK, "bob: JOIN");
    tc_frame_free(f);
    for (int i = 0; i < 3; i++) {
        tc_msg s;
        memset(&s, 0, sizeof s);
        s.kind = IMP_TARGET_ROOM;
        s.target = W.room_b;
        s.cls = s.ack_mode = -1;
        s.body = "bob's room message";
        s.body_len = strlen(s.body);
        tc_ack ack;
        IT_EQ(tc_send(b, &s, &ack, T), 0);
        IT_EQ(ack.outcome, IMP_OUTCOME_STORED);
    }
    tc_close(b);
    /* alice's first use of the CLIENT_MSG_ID the ID_CONFLICT rows reuse */
    tc *a = it_login(p->port, W.a, PW_A, NULL);
    tc_ack ack;
    IT_EQ(tc_send_text(a, W.c, "wr-used", "the first body", &ack), 0);
    IT_EQ(ack.outcome, IMP_OUTCOME_STORED);
    tc_close(a);
    f = tc_wait(W.c_conn, IMP_DELIVER, 0, T);
    IT_CHECK(f != NULL, "carol: the first message");
    tc_delivered(W.c_conn, imp_msg_u(&f->m, IMP_T_SEQ, 0));
    tc_frame_free(f);

    uint64_t max_lat = 0;
    const char *max_name = "";
    run_table(p, pid, "warm-up pass", rows, NROWS, NULL, &max_lat, &max_name);
    it_sleep_ms(300); /* the closes of the last rows are processed */
    long rss0 = it_rss_kb(p->pid);
    max_lat = 0;
    max_name = "";
    run_table(p, pid, "measured pass", rows, NROWS, NULL, &max_lat, &max_name);
    it_sleep_ms(300);
    long rss1 = it_rss_kb(p->pid);
    it_note("wrong requests: %zu rows (x2 passes), slowest answer %llu ms (%s)", NROWS,
            (unsigned long long)max_lat, max_name);
    it_note("imd RSS: %ld KiB after the warm-up pass, %ld KiB after the measured pass (%+ld KiB)",
            rss0, rss1, rss1 - rss0);
    IT_CHECK(NROWS >= 100, "only %zu rows", NROWS);
    IT_CHECK(rss0 > 0 && rss1 > 0, "RSS not readable");
    IT_CHECK(rss1 - rss0 < RSS_GROWTH_KB, "imd grew by %ld KiB over %zu wrong requests (bound %d)",
             rss1 - rss0, NROWS, RSS_GROWTH_KB);

    /* IMP-ERR-003: no refused frame changed anything: the pre-auth SENDs to carol were never
     * delivered, the pre-auth JOINs created no room. */
    tc_pump(W.c_conn, 200);
    IT_CHECK(!marker_in(W.c_conn, "wrong-request"), "a refused SEND reached carol");
    a = it_login(p->port, W.a, PW_A, NULL);
    imp_msg_init(&m, IMP_MEMBERS, 0);
    imp_msg_set_s(&m, IMP_T_ROOM, "wrroom");
    r = tc_request(a, &m);
    f = tc_wait_reply(a, r, T);
    IT_CHECK(f && f->m.type == IMP_ERROR && imp_msg_u(&f->m, IMP_T_CODE, 0) == 501,
             "a JOIN refused before login created the room");
    tc_frame_free(f);
    tc_close(a);
    tc_close(W.c_conn);
    W.c_conn = NULL;
    it_liveness(p, pid, NULL, NULL, NULL, NULL);
    it_finish(p);
}

/* ---- authorization ------------------------------------------------------------------------ */

#define MARK "MARK-B" /* in every body of bob's messages */

static void f_room_b_caps(imp_msg *m)
{
    imp_msg_set_s(m, IMP_T_ROOM, "BOBROOM");
}
static void f_history_b_all(imp_msg *m)
{
    imp_msg_set_s(m, IMP_T_ROOM, W.room_b);
    imp_msg_set_u(m, IMP_T_LIMIT, 1000);
    imp_msg_set_u(m, IMP_T_BEFORE_ID, INT64_MAX);
}
static void f_send_room_b_ackdelivered(imp_msg *m)
{
    f_send_room_not_member(m);
    imp_msg_set_u(m, IMP_T_ACK_MODE, IMP_ACK_DELIVERED);
}
static void f_delivered_6(imp_msg *m)
{
    imp_msg_set_u(m, IMP_T_SEQ, 6); /* bob's last SEQ; alice has at most 3 */
}
static void f_delivered_2(imp_msg *m)
{
    imp_msg_set_u(m, IMP_T_SEQ, 2); /* alice's own two messages */
}
static void f_login_b_with_a_token(imp_msg *m)
{
    imp_msg_set_s(m, IMP_T_USER, W.b);
    imp_msg_set_b(m, IMP_T_TOKEN, W.a_auth.token, W.a_auth.token_len);
}
static void f_login_b_wrong_last(imp_msg *m)
{
    f_login_wrong_pw(m);
    imp_msg_set_u(m, IMP_T_LAST_SEQ, 6);
}
static void f_login_b_random_token_last(imp_msg *m)
{
    f_login_random_token(m);
    imp_msg_set_s(m, IMP_T_USER, W.b);
    imp_msg_set_u(m, IMP_T_LAST_SEQ, 6);
}
static void f_login_a_last_6(imp_msg *m)
{
    imp_msg_set_s(m, IMP_T_USER, W.a);
    imp_msg_set_s(m, IMP_T_PASSWORD, PW_A);
    imp_msg_set_u(m, IMP_T_LAST_SEQ, 6);
}
static void f_send_to_b(imp_msg *m)
{
    send_to(m, IMP_TARGET_USER, W.b, "to bob before login");
}
static void f_send_bob_cmid(imp_msg *m)
{
    send_to(m, IMP_TARGET_USER, W.c, MARK " to carol");
    imp_msg_set_s(m, IMP_T_CLIENT_MSG_ID, "bob-cmid");
}
static void f_send_shared_forged(imp_msg *m)
{
    send_to(m, IMP_TARGET_ROOM, "shared", "in the shared room");
}
static void f_presence_away(imp_msg *m)
{
    imp_msg_set_u(m, IMP_T_STATUS, IMP_STATUS_AWAY);
    imp_msg_set_s(m, IMP_T_STATUS_TEXT, "bob is away");
}

/* A reply that is not an ERROR: the connection is still usable and nothing was refused. */
static uint64_t ck_no_answer(tc *c, uint32_t req, uint64_t t0)
{
    uint32_t r = tc_simple(c, IMP_PING);
    tc_frame *f = tc_wait(c, IMP_PONG, r, ANSWER_MS);
    uint64_t lat = it_now_ms() - t0;
    char d[512];
    IT_CHECK(f != NULL, "no PONG: %s", tc_describe(c, d, sizeof d));
    tc_frame_free(f);
    for (tc_frame *q = c->head; q; q = q->next)
        IT_CHECK(q->m.request_id != req, "DELIVERED answered by %s", imp_type_name(q->m.type));
    return lat;
}

/* MONITOR refused; bob's login afterwards gives alice no MONITOR_EVENT. */
static uint64_t ck_monitor_refused(tc *c, uint32_t req, uint64_t t0)
{
    tc_frame *f = reply(c, req, "MONITOR");
    uint64_t lat = it_now_ms() - t0;
    IT_CHECK(f->m.type == IMP_ERROR && imp_msg_u(&f->m, IMP_T_CODE, 0) == 502,
             "MONITOR by alice: %s", imp_type_name(f->m.type));
    tc_frame_free(f);
    tc *b = tc_connect(W.port, T);
    IT_CHECK(b != NULL, "connect");
    IT_EQ(tc_login_token(b, W.b, W.b_auth.token, W.b_auth.token_len, UINT64_MAX, NULL, T), 0);
    tc_close(b);
    tc_pump(c, 200);
    IT_EQ(tc_queued(c, IMP_MONITOR_EVENT), 0);
    return lat;
}

/* Same CLIENT_MSG_ID and body as bob's message to carol: deduplication is per sender, so
 * alice's message is stored as her own (no DUPLICATE, not bob's MSG_ID). */
static uint64_t ck_cmid_not_shared(tc *c, uint32_t req, uint64_t t0)
{
    tc_frame *f = reply(c, req, "SEND with bob's CLIENT_MSG_ID");
    uint64_t lat = it_now_ms() - t0;
    IT_EQ(f->m.type, IMP_ACK);
    IT_EQ(imp_msg_u(&f->m, IMP_T_OUTCOME, 0), IMP_OUTCOME_STORED);
    IT_CHECK(!imp_msg_u(&f->m, IMP_T_DUPLICATE, 0), "alice's SEND deduplicated against bob's");
    uint64_t id = imp_msg_u(&f->m, IMP_T_MSG_ID, 0);
    IT_CHECK(id != W.b_msg_id, "alice's ACK carries bob's MSG_ID %llu",
             (unsigned long long)W.b_msg_id);
    tc_frame_free(f);
    for (;;) { /* carol gets it from alice */
        tc_frame *d = tc_wait(W.c_conn, IMP_DELIVER, 0, T);
        IT_CHECK(d != NULL, "carol: no DELIVER of alice's message");
        tc_delivered(W.c_conn, imp_msg_u(&d->m, IMP_T_SEQ, 0));
        int mine = imp_msg_u(&d->m, IMP_T_MSG_ID, 0) == id;
        if (mine)
            IT_CHECK(tc_field_is(&d->m, IMP_T_SENDER, W.a), "not from alice");
        tc_frame_free(d);
        if (mine)
            return lat;
    }
}

/* A room message with a forged SENDER: carol's DELIVER and the room's history say alice. */
static uint64_t ck_room_forged(tc *c, uint32_t req, uint64_t t0)
{
    tc_frame *f = reply(c, req, "room SEND with a forged SENDER");
    uint64_t lat = it_now_ms() - t0;
    IT_EQ(f->m.type, IMP_ACK);
    IT_EQ(imp_msg_u(&f->m, IMP_T_OUTCOME, 0), IMP_OUTCOME_STORED);
    uint64_t id = imp_msg_u(&f->m, IMP_T_MSG_ID, 0);
    tc_frame_free(f);
    for (;;) {
        tc_frame *d = tc_wait(W.c_conn, IMP_DELIVER, 0, T);
        IT_CHECK(d != NULL, "carol: no DELIVER of the room message");
        tc_delivered(W.c_conn, imp_msg_u(&d->m, IMP_T_SEQ, 0));
        int mine = imp_msg_u(&d->m, IMP_T_MSG_ID, 0) == id;
        if (mine)
            IT_CHECK(tc_field_is(&d->m, IMP_T_SENDER, W.a), "forged SENDER reached carol");
        tc_frame_free(d);
        if (mine)
            break;
    }
    imp_msg m;
    imp_msg_init(&m, IMP_HISTORY, 0);
    imp_msg_set_s(&m, IMP_T_ROOM, "shared");
    imp_msg_set_u(&m, IMP_T_LIMIT, 1);
    uint32_t r = tc_request(c, &m);
    f = tc_wait(c, IMP_HISTORY_ITEM, r, T);
    IT_CHECK(f != NULL, "no HISTORY_ITEM of the shared room");
    IT_EQ(imp_msg_u(&f->m, IMP_T_MSG_ID, 0), id);
    IT_CHECK(tc_field_is(&f->m, IMP_T_SENDER, W.a), "forged SENDER in the history");
    tc_frame_free(f);
    return lat;
}

/* PRESENCE with a forged USER of bob: alice's own status changes, bob's does not. */
static uint64_t ck_presence_self(tc *c, uint32_t req, uint64_t t0)
{
    tc_frame *f = reply(c, req, "PRESENCE with a forged USER");
    uint64_t lat = it_now_ms() - t0;
    IT_EQ(f->m.type, IMP_OK);
    tc_frame_free(f);
    imp_msg m;
    imp_msg_init(&m, IMP_SUBSCRIBE, 0);
    imp_bytes n = names1(3, W.b);
    imp_msg_set_b(&m, IMP_T_NAMES, n.p, n.len);
    uint32_t r = tc_request(W.c_conn, &m);
    f = tc_wait_reply(W.c_conn, r, T);
    IT_CHECK(f && f->m.type == IMP_OK, "carol: SUBSCRIBE bob");
    tc_frame_free(f);
    /* carol shares a room with alice: alice's own events come too; bob's is the one */
    while ((f = tc_wait(W.c_conn, IMP_PRESENCE_EVENT, 0, T)) != NULL &&
           !tc_field_is(&f->m, IMP_T_USER, W.b))
        tc_frame_free(f);
    IT_CHECK(f != NULL, "carol: no event for bob");
    IT_EQ(imp_msg_u(&f->m, IMP_T_STATUS, 9), IMP_STATUS_OFFLINE);
    IT_CHECK(!imp_msg_has(&f->m, IMP_T_STATUS_TEXT), "bob's status text was set by alice");
    tc_frame_free(f);
    imp_msg_set_u(&m, IMP_T_ENABLE, 0);
    m.request_id = 0;
    r = tc_request(W.c_conn, &m);
    f = tc_wait_reply(W.c_conn, r, T);
    tc_frame_free(f);
    return lat;
}

static uint64_t ck_auth_ok_own(tc *c, uint32_t req, uint64_t t0)
{
    tc_frame *f = reply(c, req, "LOGIN of alice with LAST_SEQ 6");
    uint64_t lat = it_now_ms() - t0;
    IT_CHECK(f->m.type == IMP_AUTH_OK, "answer %s", imp_type_name(f->m.type));
    IT_CHECK(tc_field_is(&f->m, IMP_T_USER, W.a), "AUTH_OK for another user");
    IT_CHECK(imp_msg_u(&f->m, IMP_T_LAST_SEQ, 0) <= 3, "alice's LAST_SEQ %llu",
             (unsigned long long)imp_msg_u(&f->m, IMP_T_LAST_SEQ, 0));
    tc_frame_free(f);
    return lat;
}

static const wr_row auth_rows[] = {
    /* bob's room and its history without membership */
    ROW("HISTORY of bob's room", S_USER, IMP_HISTORY, f_room_b, NULL, X_ERROR, 503, "IMP-ERR-001"),
    ROW("HISTORY of bob's room in capitals", S_USER, IMP_HISTORY, f_room_b_caps, NULL, X_ERROR, 503,
        "IMP-TEXT-003"),
    ROW("HISTORY of bob's room, LIMIT 1000, BEFORE_ID max", S_USER, IMP_HISTORY, f_history_b_all,
        NULL, X_ERROR, 503, "IMP-ERR-001"),
    ROW("HISTORY of bob's room with a forged USER bob", S_USER, IMP_HISTORY, f_room_b, forge_user_b,
        X_ERROR, 503, "IMP-SEC-004"),
    ROW("SEND into bob's room", S_USER, IMP_SEND, f_send_room_not_member, NULL, X_ACK, 503,
        "IMP-DELIV-008"),
    ROW("transient SEND into bob's room", S_USER, IMP_SEND, f_send_room_not_member_transient, NULL,
        X_ACK, 503, "IMP-DELIV-008"),
    ROW("SEND ACK_MODE delivered into bob's room", S_USER, IMP_SEND, f_send_room_b_ackdelivered,
        NULL, X_ACK, 503, "IMP-DELIV-008"),
    ROW("SEND into bob's room as bob (forged SENDER)", S_USER, IMP_SEND, f_send_room_not_member,
        forge_identity, X_ACK, 503, "IMP-SEC-004"),
    ROW("LEAVE of bob's room", S_USER, IMP_LEAVE, f_room_b, NULL, X_ERROR, 503, "IMP-ERR-001"),
    /* bob's queue */
    ROW("DELIVERED of bob's last SEQ", S_USER, IMP_DELIVERED, f_delivered_6, NULL, X_ERROR, 510,
        "IMP-DELIV-003"),
    ROW("DELIVERED of bob's last SEQ with a forged USER bob", S_USER, IMP_DELIVERED, f_delivered_6,
        forge_user_b, X_ERROR, 510, "IMP-SEC-004"),
    CHK("DELIVERED of alice's own SEQs with a forged USER bob", S_USER, IMP_DELIVERED,
        f_delivered_2, forge_user_b, ck_no_answer, "IMP-SEC-004"),
    ROW("LOGIN as bob with alice's token", S_AWAIT_AUTH, IMP_LOGIN, f_login_b_with_a_token, NULL,
        X_ERROR, 403, "IMP-ERR-001"),
    ROW("LOGIN as bob with a wrong password", S_AWAIT_AUTH, IMP_LOGIN, f_login_wrong_pw, NULL,
        X_ERROR, 400, "IMP-SEC-003"),
    ROW("LOGIN as bob, wrong password, LAST_SEQ 6", S_AWAIT_AUTH, IMP_LOGIN, f_login_b_wrong_last,
        NULL, X_ERROR, 400, "IMP-SEC-003"),
    ROW("LOGIN as bob, made-up token, LAST_SEQ 6", S_AWAIT_AUTH, IMP_LOGIN,
        f_login_b_random_token_last, NULL, X_ERROR, 403, "IMP-ERR-001"),
    ROW("REGISTER bob", S_AWAIT_AUTH, IMP_REGISTER, f_register_existing, NULL, X_ERROR, 401,
        "IMP-ERR-001"),
    ROW("REGISTER BOB", S_AWAIT_AUTH, IMP_REGISTER, f_register_existing_caps, NULL, X_ERROR, 401,
        "IMP-TEXT-003"),
    CHK("LOGIN of alice with bob's LAST_SEQ", S_AWAIT_AUTH, IMP_LOGIN, f_login_a_last_6, NULL,
        ck_auth_ok_own, "IMP-DELIV-004"),
    /* administrator frames */
    STR(S_USER, IMP_STATS, X_ERROR, 502, "IMP-ERR-001"),
    ROW("STATS with a forged ADMIN", S_USER, IMP_STATS, NULL, forge_admin, X_ERROR, 502,
        "IMP-SEC-004"),
    CHK("MONITOR, then bob logs in", S_USER, IMP_MONITOR, NULL, NULL, ck_monitor_refused,
        "IMP-ERR-001"),
    ROW("MONITOR with a forged ADMIN", S_USER, IMP_MONITOR, NULL, forge_admin, X_ERROR, 502,
        "IMP-SEC-004"),
    ROW("broadcast (would reach bob's queue)", S_USER, IMP_SEND, f_send_broadcast, NULL, X_ACK, 502,
        "IMP-ERR-001"),
    ROW("transient broadcast", S_USER, IMP_SEND, f_send_broadcast_transient, NULL, X_ACK, 502,
        "IMP-ERR-001"),
    ROW("broadcast with a forged ADMIN", S_USER, IMP_SEND, f_send_broadcast, forge_admin, X_ACK,
        502, "IMP-SEC-004"),
    /* sending as bob */
    CHK("SEND to carol as bob (forged SENDER, MSG_ID, TIMESTAMP)", S_USER, IMP_SEND, f_send_forged,
        forge_identity, ck_forged_send, "IMP-SEC-004"),
    CHK("SEND with bob's CLIENT_MSG_ID and body", S_USER, IMP_SEND, f_send_bob_cmid, NULL,
        ck_cmid_not_shared, "IMP-DELIV-005"),
    CHK("room SEND as bob (forged SENDER)", S_USER, IMP_SEND, f_send_shared_forged, forge_identity,
        ck_room_forged, "IMP-SEC-004"),
    CHK("PRESENCE with a forged USER bob", S_USER, IMP_PRESENCE, f_presence_away, forge_user_b,
        ck_presence_self, "IMP-SEC-004"),
    /* before authentication nothing names bob or his room (IMP-SEC-003) */
    ROW("HISTORY of bob's room before login", S_AWAIT_AUTH, IMP_HISTORY, f_room_b, NULL, X_CLOSE,
        707, "IMP-SEC-003"),
    ROW("MEMBERS of bob's room before login", S_AWAIT_AUTH, IMP_MEMBERS, f_room_b, NULL, X_CLOSE,
        707, "IMP-SEC-003"),
    ROW("SEND to bob before login", S_AWAIT_AUTH, IMP_SEND, f_send_to_b, NULL, X_CLOSE, 707,
        "IMP-SEC-003"),
    ROW("DELIVERED of bob's SEQ before login", S_AWAIT_AUTH, IMP_DELIVERED, f_delivered_6, NULL,
        X_CLOSE, 707, "IMP-SEC-003"),
    ROW("SEND to bob while authenticating", S_AUTHENTICATING, IMP_SEND, f_send_to_b, NULL, X_CLOSE,
        707, "IMP-SESS-004"),
    ROW("HISTORY of bob's room before HELLO", S_PRE_HELLO, IMP_HISTORY, f_room_b, NULL, X_CLOSE,
        706, "IMP-SESS-002"),
};

#define NAUTH (sizeof auth_rows / sizeof auth_rows[0])

/* bob's state is what the setup made it: six queued messages (SEQ 1-6, none acknowledged, all
 * with the marker), a member of his room, whose history holds his three messages. */
static void check_bob(const char *after)
{
    tc *b = tc_connect(W.port, T);
    IT_CHECK(b != NULL, "connect");
    tc_auth a;
    IT_EQ(tc_login_token(b, W.b, W.b_auth.token, W.b_auth.token_len, UINT64_MAX, &a, T), 0);
    IT_CHECK(a.last_seq == 0, "after \"%s\": bob's acked mark is %llu", after,
             (unsigned long long)a.last_seq);
    for (uint64_t s = 1; s <= 6; s++) {
        tc_frame *f = tc_wait(b, IMP_DELIVER, 0, T);
        IT_CHECK(f != NULL, "after \"%s\": bob's message %llu is missing", after,
                 (unsigned long long)s);
        IT_EQ(imp_msg_u(&f->m, IMP_T_SEQ, 0), s);
        imp_bytes body = imp_msg_b(&f->m, IMP_T_BODY);
        IT_CHECK(body.len >= 6 && memcmp(body.p, MARK, 6) == 0, "after \"%s\": bob's %llu: body",
                 after, (unsigned long long)s);
        tc_frame_free(f);
    }
    imp_msg m;
    imp_msg_init(&m, IMP_HISTORY, 0);
    imp_msg_set_s(&m, IMP_T_ROOM, W.room_b);
    uint32_t r = tc_request(b, &m);
    tc_frame *ok = tc_wait(b, IMP_OK, r, T);
    IT_CHECK(ok != NULL && imp_msg_u(&ok->m, IMP_T_COUNT, 0) == 3,
             "after \"%s\": bob's room history changed", after);
    tc_frame_free(ok);
    imp_msg_init(&m, IMP_MEMBERS, 0);
    imp_msg_set_s(&m, IMP_T_ROOM, W.room_b);
    r = tc_request(b, &m);
    tc_frame *ml = tc_wait(b, IMP_MEMBER_LIST, r, T);
    IT_CHECK(ml != NULL && tc_names_count(&ml->m, IMP_T_NAMES) == 1 &&
                 tc_names_has(&ml->m, IMP_T_NAMES, W.b),
             "after \"%s\": the members of bob's room changed", after);
    tc_frame_free(ml);
    IT_EQ(tc_queued(b, IMP_DELIVER), 0); /* nothing new in bob's queue */
    tc_close(b);
}

static void join(tc *c, const char *room)
{
    imp_msg m;
    imp_msg_init(&m, IMP_JOIN, 0);
    imp_msg_set_s(&m, IMP_T_ROOM, room);
    uint32_t r = tc_request(c, &m);
    tc_frame *f = tc_wait_reply(c, r, T);
    IT_CHECK(f && f->m.type == IMP_OK, "JOIN %s", room);
    tc_frame_free(f);
}

static void test_authorization(void **state)
{
    (void)state;
    memset(&W, 0, sizeof W);
    snprintf(W.a, sizeof W.a, "alice");
    snprintf(W.b, sizeof W.b, "bob");
    snprintf(W.c, sizeof W.c, "carol");
    snprintf(W.room_b, sizeof W.room_b, "bobroom");
    imd_proc *p = it_start_imd(no_throttle);
    long pid = (long)p->pid;
    W.port = p->port;

    /* bob: his room with three messages (his SEQ 1-3), one message to carol */
    tc *b = it_register(p->port, W.b, PW_B, &W.b_auth);
    W.c_conn = it_register(p->port, W.c, PW_C, NULL);
    tc *a = it_register(p->port, W.a, PW_A, &W.a_auth);
    join(b, W.room_b);
    for (int i = 1; i <= 3; i++) {
        char body[64];
        snprintf(body, sizeof body, MARK " room message %d", i);
        tc_msg s;
        memset(&s, 0, sizeof s);
        s.kind = IMP_TARGET_ROOM;
        s.target = W.room_b;
        s.cls = s.ack_mode = -1;
        s.body = body;
        s.body_len = strlen(body);
        tc_ack ack;
        IT_EQ(tc_send(b, &s, &ack, T), 0);
        IT_EQ(ack.outcome, IMP_OUTCOME_STORED);
    }
    tc_ack ack;
    IT_EQ(tc_send_text(b, W.c, "bob-cmid", MARK " to carol", &ack), 0);
    IT_EQ(ack.outcome, IMP_OUTCOME_STORED);
    W.b_msg_id = ack.msg_id;
    tc_close(b);
    tc_frame *f = tc_wait(W.c_conn, IMP_DELIVER, 0, T);
    IT_CHECK(f != NULL, "carol: bob's message");
    tc_delivered(W.c_conn, imp_msg_u(&f->m, IMP_T_SEQ, 0));
    tc_frame_free(f);
    /* bob offline: three direct messages from carol (his SEQ 4-6); two for alice (her 1-2) */
    for (int i = 1; i <= 3; i++) {
        char body[64];
        snprintf(body, sizeof body, MARK " offline message %d", i);
        IT_EQ(tc_send_text(W.c_conn, W.b, NULL, body, &ack), 0);
        IT_EQ(ack.outcome, IMP_OUTCOME_STORED);
    }
    for (int i = 1; i <= 2; i++) {
        IT_EQ(tc_send_text(W.c_conn, W.a, NULL, "for alice", &ack), 0);
        IT_EQ(ack.outcome, IMP_OUTCOME_STORED);
    }
    join(a, "shared");
    join(W.c_conn, "shared");
    tc_close(a);
    check_bob("the setup");

    W.forbidden = MARK;
    uint64_t max_lat = 0;
    const char *max_name = "";
    run_table(p, pid, "authorization", auth_rows, NAUTH, check_bob, &max_lat, &max_name);
    W.forbidden = NULL;
    it_note("authorization: %zu negative cases, nothing of bob's leaked, bob unchanged after "
            "each; slowest answer %llu ms (%s)",
            NAUTH, (unsigned long long)max_lat, max_name);
    IT_CHECK(NAUTH >= 30, "only %zu cases", NAUTH);
    tc_close(W.c_conn);
    W.c_conn = NULL;
    it_liveness(p, pid, NULL, NULL, NULL, NULL);
    it_finish(p);
}

/* ---- desynchronisation: endless junk ------------------------------------------------------ */

typedef enum { J_RANDOM, J_FF, J_01, J_00 } junk_kind;

static void junk_fill(uint8_t *buf, size_t n, junk_kind k, uint32_t *x)
{
    for (size_t i = 0; i < n; i++) {
        switch (k) {
        case J_RANDOM:
            *x = *x * 1103515245u + 12345u;
            buf[i] = (uint8_t)(*x >> 16);
            break;
        case J_FF:
            buf[i] = 0xFF;
            break;
        case J_01:
            buf[i] = 0x01;
            break;
        case J_00:
            buf[i] = 0x00;
            break;
        }
    }
}

/* In state st, write prefix (valid frames, answered first when wait_type is set; or the
 * header that the junk continues), then stream junk until imd closes. The close must come
 * within 1 s of the first junk byte, with ERROR want (0: any 7xx, or none after a reset). */
static void junk_case(imd_proc *p, wr_state st, const uint8_t *prefix, size_t plen,
                      uint8_t wait_type, int nwait, junk_kind k, int want, const char *what)
{
    tc *c = conn_in(st);
    if (plen && nwait) {
        IT_EQ(tc_send_raw(c, prefix, plen, T), 0);
        for (int i = 0; i < nwait; i++) {
            tc_frame *f = tc_wait(c, wait_type, 0, T);
            IT_CHECK(f != NULL, "%s: the valid frames before the junk were not answered", what);
            tc_frame_free(f);
        }
        plen = 0;
    }
    static uint8_t chunk[4096];
    uint32_t x = 0x9e3779b9u;
    uint64_t sent = 0;
    int closed = 0, err = 0;
    uint64_t t0 = it_now_ms(), t1 = t0;
    while (!closed && it_now_ms() - t0 < 5000) {
        size_t n = sizeof chunk, off = 0;
        if (plen) { /* the header the junk continues goes in the same first write */
            memcpy(chunk, prefix, plen);
            off = plen;
            plen = 0;
        }
        junk_fill(chunk + off, n - off, k, &x);
        if (sent == 0 && k == J_RANDOM && off == 0 && chunk[0] == 1)
            chunk[0] = 0xC3; /* the first junk byte is not a version byte */
        ssize_t w = send(c->fd, chunk, n, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w > 0) {
            sent += (uint64_t)w;
        } else if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
            err = errno;
            closed = 1;
        } else {
            struct pollfd pf = {c->fd, POLLIN | POLLOUT, 0};
            poll(&pf, 1, 5);
        }
        if (tc_pump(c, 0) < 0 || c->eof)
            closed = 1;
        t1 = it_now_ms();
    }
    tc_pump(c, 100); /* the ERROR, if it is still to be read */
    uint64_t took = t1 - t0;
    it_note("junk (%s): closed %d after %llu ms and %llu bytes written (%s), ERROR %d", what,
            closed, (unsigned long long)took, (unsigned long long)sent, err ? strerror(err) : "EOF",
            c->last_error);
    IT_CHECK(closed, "%s: still open after 5 s of junk (%llu bytes)", what,
             (unsigned long long)sent);
    IT_CHECK(took <= ANSWER_MS, "%s: closed only after %llu ms", what, (unsigned long long)took);
    if (c->last_error) {
        if (want)
            IT_EQ(c->last_error, want);
        else
            IT_CHECK(c->last_error >= 700 && c->last_error < 800, "%s: ERROR %d", what,
                     c->last_error);
    } else {
        /* IMP-ERR-002: the ERROR may only be missing when the close reset the connection */
        IT_CHECK(err != 0 || c->rd_errno != 0, "%s: closed without ERROR", what);
    }
    IT_CHECK(imd_alive(p), "imd died on junk (%s)", what);
    tc_close(c);
}

static void test_desync(void **state)
{
    (void)state;
    memset(&W, 0, sizeof W);
    snprintf(W.a, sizeof W.a, "junky");
    imd_proc *p = it_start_imd(NULL);
    long pid = (long)p->pid;
    W.port = p->port;
    tc_close(it_register(p->port, W.a, PW_A, &W.a_auth));

    uint8_t pre[256];
    size_t n = 0;
    junk_case(p, S_PRE_HELLO, NULL, 0, 0, 0, J_RANDOM, 701, "random bytes before HELLO");
    junk_case(p, S_PRE_HELLO, NULL, 0, 0, 0, J_FF, 701, "0xFF repeated before HELLO");
    junk_case(p, S_AWAIT_AUTH, NULL, 0, 0, 0, J_01, 703, "0x01 repeated after HELLO");
    junk_case(p, S_USER, NULL, 0, 0, 0, J_00, 701, "0x00 repeated after login");
    junk_case(p, S_USER, NULL, 0, 0, 0, J_RANDOM, 701, "random bytes after login");
    /* a valid header, its payload junk (and junk after it) */
    imp_frame_header_write(pre, IMP_PING, 64, 7);
    junk_case(p, S_AWAIT_AUTH, pre, IMP_HEADER_SIZE, 0, 0, J_RANDOM, 0,
              "a PING header of 64 bytes, then random bytes");
    imp_frame_header_write(pre, IMP_SEND, 1000, 8);
    junk_case(p, S_USER, pre, IMP_HEADER_SIZE, 0, 0, J_RANDOM, 0,
              "a SEND header of 1000 bytes after login, then random bytes");
    imp_frame_header_write(pre, IMP_PING, 64, 9);
    junk_case(p, S_USER, pre, IMP_HEADER_SIZE, 0, 0, J_FF, 0,
              "a PING header of 64 bytes after login, then 0xFF");
    /* valid frames, answered, then junk */
    n = 0;
    for (uint32_t i = 0; i < 3; i++) {
        imp_msg m;
        imp_msg_init(&m, IMP_PING, 20 + i);
        n += encode(&m, pre + n, sizeof pre - n);
    }
    junk_case(p, S_USER, pre, n, IMP_PONG, 3, J_RANDOM, 701,
              "three PINGs after login (answered), then random bytes");
    junk_case(p, S_AWAIT_AUTH, pre, n, IMP_PONG, 3, J_FF, 701,
              "three PINGs after HELLO (answered), then 0xFF");
    it_liveness(p, pid, NULL, NULL, NULL, NULL);
    it_finish(p);
}

/* ---- chunking: one session, three ways of writing it ------------------------------------- */

enum { STEPS = 5 };

/* The frames of one step of the script (fixed request ids) and the number of answers. The
 * steps group frames whose answers come in the same order however imd reads them: replies sent
 * at once first, a SEND (answered after its commit) last. */
static size_t script_step(int step, uint8_t *buf, size_t cap, int *answers)
{
    imp_msg m;
    size_t n = 0;
    switch (step) {
    case 0:
        imp_msg_init(&m, IMP_HELLO, 1);
        imp_msg_set_u(&m, IMP_T_VERSION_MIN, 1);
        imp_msg_set_u(&m, IMP_T_VERSION_MAX, 1);
        imp_msg_set_s(&m, IMP_T_AGENT, "chunk-script");
        n += encode(&m, buf + n, cap - n);
        imp_msg_init(&m, IMP_REGISTER, 2);
        imp_msg_set_s(&m, IMP_T_USER, "chunky");
        imp_msg_set_s(&m, IMP_T_PASSWORD, "chunky password");
        n += encode(&m, buf + n, cap - n);
        *answers = 2; /* WELCOME, AUTH_OK */
        break;
    case 1:
        imp_msg_init(&m, IMP_JOIN, 3);
        imp_msg_set_s(&m, IMP_T_ROOM, "lobby");
        n += encode(&m, buf + n, cap - n);
        imp_msg_init(&m, IMP_SEND, 4);
        send_to(&m, IMP_TARGET_USER, "target", "direct hello");
        imp_msg_set_s(&m, IMP_T_CLIENT_MSG_ID, "d1");
        n += encode(&m, buf + n, cap - n);
        *answers = 2; /* OK, ACK */
        break;
    case 2: {
        static uint8_t hdr[64];
        imp_builder b;
        imp_builder_init(&b, hdr, sizeof hdr);
        IT_EQ(imp_headers_add(&b, "Content-Type", 12, "text/plain", 10), 0);
        imp_msg_init(&m, IMP_SEND, 5);
        send_to(&m, IMP_TARGET_ROOM, "lobby", "room hello");
        imp_msg_set_s(&m, IMP_T_CLIENT_MSG_ID, "r1");
        imp_msg_set_b(&m, IMP_T_HEADERS, hdr, b.len);
        n += encode(&m, buf + n, cap - n);
        *answers = 2; /* ACK, DELIVER (IMP-DELIV-008: the sender's session too) */
        break;
    }
    case 3:
        imp_msg_init(&m, IMP_HISTORY, 6);
        imp_msg_set_s(&m, IMP_T_ROOM, "lobby");
        n += encode(&m, buf + n, cap - n);
        imp_msg_init(&m, IMP_MEMBERS, 7);
        imp_msg_set_s(&m, IMP_T_ROOM, "lobby");
        n += encode(&m, buf + n, cap - n);
        imp_msg_init(&m, IMP_WHO, 8);
        n += encode(&m, buf + n, cap - n);
        imp_msg_init(&m, IMP_ROOMS, 9);
        n += encode(&m, buf + n, cap - n);
        imp_msg_init(&m, IMP_PRESENCE, 10);
        imp_msg_set_u(&m, IMP_T_STATUS, IMP_STATUS_AWAY);
        imp_msg_set_s(&m, IMP_T_STATUS_TEXT, "brb");
        n += encode(&m, buf + n, cap - n);
        imp_msg_init(&m, IMP_PING, 11);
        n += encode(&m, buf + n, cap - n);
        *answers = 7; /* HISTORY_ITEM, OK, MEMBER_LIST, WHO_LIST, ROOM_LIST, OK, PONG */
        break;
    default:
        imp_msg_init(&m, IMP_DELIVERED, 12);
        imp_msg_set_u(&m, IMP_T_SEQ, 1);
        n += encode(&m, buf + n, cap - n);
        imp_msg_init(&m, IMP_LOGOUT, 13);
        n += encode(&m, buf + n, cap - n);
        *answers = 1; /* OK, then the close */
        break;
    }
    return n;
}

/* The expected transcript: types and request ids. */
static const uint8_t want_types[] = {IMP_WELCOME,     IMP_AUTH_OK,  IMP_OK,           IMP_ACK,
                                     IMP_ACK,         IMP_DELIVER,  IMP_HISTORY_ITEM, IMP_OK,
                                     IMP_MEMBER_LIST, IMP_WHO_LIST, IMP_ROOM_LIST,    IMP_OK,
                                     IMP_PONG,        IMP_OK};
static const uint32_t want_reqs[] = {1, 2, 3, 4, 5, 0, 6, 6, 7, 8, 9, 10, 11, 13};
#define NWANT (sizeof want_types / sizeof want_types[0])

typedef struct transcript {
    int n;
    uint8_t *frame[32];
    size_t len[32];
    uint8_t type[32];
    uint32_t req[32];
} transcript;

/* The recorded bytes as frames, each decoded, normalised and encoded again. Normalised (differ
 * between servers and runs): WELCOME SERVER_TIME, AUTH_OK TOKEN (random) and SESSION_ID (from
 * the wall clock), DELIVER and HISTORY_ITEM TIMESTAMP. */
static void transcript_of(const tc *c, transcript *t)
{
    memset(t, 0, sizeof *t);
    size_t off = 0;
    static const uint8_t fixed_token[32] = {0};
    while (off < c->rec_len) {
        imp_frame fr;
        imp_ssize r = imp_frame_parse(c->rec + off, c->rec_len - off, 0, &fr, NULL);
        IT_CHECK(r > 0, "transcript: cannot parse at %zu of %zu: %d", off, c->rec_len, (int)r);
        imp_msg m;
        IT_EQ(imp_msg_decode(&fr, &m), 0);
        if (imp_msg_has(&m, IMP_T_SERVER_TIME))
            imp_msg_set_u(&m, IMP_T_SERVER_TIME, 0);
        if (m.type == IMP_AUTH_OK) {
            if (imp_msg_has(&m, IMP_T_TOKEN))
                imp_msg_set_b(&m, IMP_T_TOKEN, fixed_token, sizeof fixed_token);
            imp_msg_set_u(&m, IMP_T_SESSION_ID, 0);
        }
        if (imp_msg_has(&m, IMP_T_TIMESTAMP))
            imp_msg_set_u(&m, IMP_T_TIMESTAMP, 0);
        IT_CHECK(t->n < 32, "transcript: too many frames");
        imp_ssize sz = imp_msg_encoded_size(&m);
        IT_CHECK(sz > 0, "transcript: re-encode");
        t->frame[t->n] = malloc((size_t)sz);
        IT_CHECK(t->frame[t->n] != NULL, "out of memory");
        t->len[t->n] = encode(&m, t->frame[t->n], (size_t)sz);
        t->type[t->n] = m.type;
        t->req[t->n] = m.request_id;
        t->n++;
        off += (size_t)r;
    }
}

static void transcript_free(transcript *t)
{
    for (int i = 0; i < t->n; i++)
        free(t->frame[i]);
    t->n = 0;
}

static uint32_t rnd(uint32_t *x)
{
    *x = *x * 1103515245u + 12345u;
    return *x >> 16;
}

/* Write bytes: mode 0 one frame per write, 1 one byte per write, 2 random chunks (1-48 bytes,
 * crossing frame boundaries), with a pause between writes so that imd reads them apart. */
static void write_mode(tc *c, const uint8_t *p, size_t n, int mode, uint32_t *seed)
{
    size_t off = 0;
    while (off < n) {
        size_t k;
        if (mode == 0)
            k = IMP_HEADER_SIZE + be32(p + off + 4);
        else if (mode == 1)
            k = 1;
        else
            k = 1 + rnd(seed) % 48;
        if (k > n - off)
            k = n - off;
        IT_EQ(tc_send_raw(c, p + off, k, T), 0);
        off += k;
        if (mode != 0)
            it_sleep_ms(1);
    }
}

static void run_script(int mode, uint32_t seed, transcript *t)
{
    /* the recipient of the direct message exists but never logs in: WHO lists only chunky */
    imd_proc *p = it_create_imd(NULL);
    static const char *const add_target[] = {"user", "add", "target", NULL};
    IT_EQ(it_admin(p, "target password\n", NULL, 0, add_target), 0);
    it_start(p);
    long pid = (long)p->pid;
    tc *c = tc_connect_raw(p->port, T, 0);
    IT_CHECK(c != NULL, "connect");
    tc_record_start(c);
    static uint8_t buf[4096];
    int got = 0;
    uint64_t t0 = it_now_ms();
    for (int s = 0; s < STEPS; s++) {
        int answers = 0;
        size_t n = script_step(s, buf, sizeof buf, &answers);
        write_mode(c, buf, n, mode, &seed);
        for (int i = 0; i < answers; i++) {
            tc_frame *f = tc_wait(c, 0, 0, T);
            char d[512];
            IT_CHECK(f != NULL, "mode %d step %d: answer %d of %d missing: %s", mode, s, i + 1,
                     answers, tc_describe(c, d, sizeof d));
            tc_frame_free(f);
            got++;
        }
    }
    IT_EQ(it_expect_closed(c, T, 0, "LOGOUT"), 0);
    IT_EQ(tc_queued(c, 0), 0);
    transcript_of(c, t);
    it_note("chunking mode %d: %d frames in %llu ms, %zu bytes received", mode, t->n,
            (unsigned long long)(it_now_ms() - t0), c->rec_len);
    tc_close(c);
    it_liveness(p, pid, NULL, NULL, NULL, NULL);
    it_finish(p);
    imd_destroy(p);
}

static void test_chunking(void **state)
{
    (void)state;
    const char *env = getenv("IMP_ITEST_SEED");
    uint32_t seed = env && *env ? (uint32_t)strtoul(env, NULL, 0)
                                : (uint32_t)time(NULL) ^ ((uint32_t)it_now_ms() << 8);
    it_note("chunking: random chunk seed %u (IMP_ITEST_SEED=%u repeats it)", seed, seed);
    static const char *const modes[] = {"whole frames", "1-byte writes", "random chunks"};
    transcript t[3];
    for (int mode = 0; mode < 3; mode++)
        run_script(mode, seed, &t[mode]);
    /* the reference is what the protocol says should come back */
    IT_EQ(t[0].n, NWANT);
    for (size_t i = 0; i < NWANT; i++)
        IT_CHECK(t[0].type[i] == want_types[i] && t[0].req[i] == want_reqs[i],
                 "whole frames: frame %zu is %s(req %u), want %s(req %u)", i,
                 imp_type_name(t[0].type[i]), (unsigned)t[0].req[i], imp_type_name(want_types[i]),
                 (unsigned)want_reqs[i]);
    for (int mode = 1; mode < 3; mode++) {
        IT_CHECK(t[mode].n == t[0].n, "%s: %d frames, whole frames %d", modes[mode], t[mode].n,
                 t[0].n);
        for (int i = 0; i < t[0].n; i++)
            IT_CHECK(t[mode].len[i] == t[0].len[i] &&
                         memcmp(t[mode].frame[i], t[0].frame[i], t[0].len[i]) == 0,
                     "%s: frame %d (%s req %u) differs from whole frames' (%s req %u)", modes[mode],
                     i, imp_type_name(t[mode].type[i]), (unsigned)t[mode].req[i],
                     imp_type_name(t[0].type[i]), (unsigned)t[0].req[i]);
    }
    it_note("chunking: %d frames identical (after normalisation) in all three modes", t[0].n);
    for (int mode = 0; mode < 3; mode++)
        transcript_free(&t[mode]);
}

int main(void)
{
    it_main_init(120);
    if (!it_imd_or_skip())
        return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_wrong_requests, it_teardown),
        cmocka_unit_test_teardown(test_authorization, it_teardown),
        cmocka_unit_test_teardown(test_desync, it_teardown),
        cmocka_unit_test_teardown(test_chunking, it_teardown),
    };
    return cmocka_run_group_tests_name("integration: wrong requests", tests, NULL, NULL);
}
