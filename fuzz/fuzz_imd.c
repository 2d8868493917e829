/* Fuzz target: the whole server core (server.h) — accounts, routing, rooms, presence, delivery,
 * flow control — with four connections fed byte streams, an in-memory SQLite store, a
 * synchronous hash pool with libsodium's minimum Argon2id parameters, and a fake clock. No
 * sockets.
 *
 * Checks, besides the sanitizers:
 *   - every byte the server writes is a sequence of valid IMP/1 frames that decode and validate
 *     (IMP-FRAME-001..008, IMP-FIELD-*, IMP-LIB-002: the server never emits a malformed frame),
 *     in the server-to-client direction (IMP-MSG-001);
 *   - nothing is delivered before AUTH_OK on that connection (IMP-SESS-004, IMP-SEC-001);
 *   - a DELIVER of a durable message carries SEQ > 0 and the SEQs of one connection increase
 *     between two logins (IMP-DELIV-002);
 *   - the server frees everything (LeakSanitizer) and the store stays consistent
 *     (PRAGMA integrity_check at the end).
 *
 * Input: records until the end.
 *   b & 7 in 0..3: feed connection (b & 3) with the next L bytes (L = next byte; 255: a u16 BE
 *                  follows); a closed connection is accepted again first
 *   4: end of the loop turn (group commit) and hash results
 *   5: time passes by (next byte) * 50 ms, then a tick
 *   6: connection (b >> 3) & 3 closes (transport gone)
 *   7: connection (b >> 3) & 3 stops or resumes reading its output (slow consumer)
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include <imp/frame.h>
#include <imp/msg.h>

#include "log.h"
#include "server.h"

#define NCONN 4
#define OUTMAX (4u << 20)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

typedef struct fz_conn {
    ims_client *cl;
    int paused;
    int authed;
    uint64_t last_seq;
    uint8_t *buf; /* output not yet parsed (a partial frame) */
    size_t len;
} fz_conn;

static uint64_t g_now;

static uint64_t fake_mono(void *ud)
{
    (void)ud;
    return g_now;
}

static int64_t fake_wall(void *ud)
{
    (void)ud;
    return 1700000000000 + (int64_t)g_now;
}

static void no_write(void *io)
{
    (void)io;
}

static void check_frames(fz_conn *c)
{
    size_t off = 0;
    for (;;) {
        imp_frame f;
        imp_ssize n = imp_frame_parse(c->buf + off, c->len - off, 0, &f, NULL);
        if (n == 0)
            break;
        if (n < 0)
            abort(); /* the server wrote a malformed frame header */
        imp_msg m;
        if (imp_msg_decode(&f, &m) != 0 || imp_msg_validate(&m) != 0)
            abort(); /* ... or a malformed payload */
        if (imp_type_dir(f.type) == IMP_DIR_C2S)
            abort(); /* a client-only frame type from the server */
        if (f.type == IMP_AUTH_OK) {
            c->authed = 1;
            c->last_seq = 0;
        }
        if (f.type == IMP_DELIVER) {
            if (!c->authed)
                abort(); /* IMP-SESS-004 */
            uint64_t seq = imp_msg_u(&m, IMP_T_SEQ, 0);
            if (imp_msg_u(&m, IMP_T_CLASS, 0) == 0) {
                if (seq == 0 || seq <= c->last_seq)
                    abort(); /* IMP-DELIV-002 */
                c->last_seq = seq;
            }
        }
        off += (size_t)n;
    }
    memmove(c->buf, c->buf + off, c->len - off);
    c->len -= off;
}

static void drain(fz_conn *c)
{
    if (!c->cl || c->paused)
        return;
    for (;;) {
        const uint8_t *p;
        size_t n = ims_client_output(c->cl, &p);
        if (n == 0)
            break;
        size_t room = OUTMAX - c->len;
        if (room == 0)
            abort(); /* more than a whole frame unparsed: a frame header lies about its size */
        if (n > room)
            n = room;
        memcpy(c->buf + c->len, p, n);
        c->len += n;
        ims_client_consumed(c->cl, n);
        check_frames(c);
    }
}

static void close_conn(fz_conn *c)
{
    if (!c->cl)
        return;
    ims_client_closed(c->cl, 733);
    c->cl = NULL;
    c->len = 0;
    c->authed = 0;
    c->paused = 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int inited;
    if (!inited) {
        if (sodium_init() < 0 || ims_log_setup("error", "text") != 0)
            abort();
        inited = 1;
    }
    g_now = 1000;
    ims_cfg cfg;
    ims_cfg_default(&cfg);
    cfg.offline_quota = 4;
    cfg.room_history = 8;
    cfg.page_size = 2;
    cfg.page_max = 4;
    cfg.max_sessions_per_user = 3;
    cfg.output_soft = 8192;
    cfg.output_soft_ms = 500;
    cfg.output_hard = 65536;
    cfg.msg_rate = 50;
    cfg.msg_burst = 20;
    cfg.auth_timeout_ms = 5000;
    cfg.ping_interval_ms = 1000;
    cfg.sync_full = 0;
    char err[256];
    ims_store_options so = {":memory:", 0, NULL, NULL, 0, 0};
    ims_store *store = ims_store_open(&so, err, sizeof err);
    if (!store)
        abort();
    ims_auth_options ao;
    ims_auth_options_default(&ao);
    ao.threads = 0;
    ao.queue_max = 8;
    ao.opslimit = crypto_pwhash_OPSLIMIT_MIN;
    ao.memlimit = crypto_pwhash_MEMLIMIT_MIN;
    ims_auth *auth = ims_auth_new(&ao);
    if (!auth)
        abort();
    ims_server_options o;
    memset(&o, 0, sizeof o);
    o.cfg = &cfg;
    o.store = store;
    o.auth = auth;
    o.io.want_write = no_write;
    o.clock.mono_ms = fake_mono;
    o.clock.wall_ms = fake_wall;
    o.version = "imd/fuzz";
    ims_server *srv = ims_server_new(&o);
    if (!srv)
        abort();

    fz_conn conns[NCONN];
    memset(conns, 0, sizeof conns);
    static uint8_t bufs[NCONN][OUTMAX]; /* reused: allocating them per input costs the most */
    for (int i = 0; i < NCONN; i++)
        conns[i].buf = bufs[i];
    size_t off = 0;
    while (off < size) {
        uint8_t b = data[off++];
        int op = b & 7;
        fz_conn *c = &conns[(b >> 3) & 3];
        if (op < 4) {
            c = &conns[b & 3];
            size_t len = off < size ? data[off++] : 0;
            if (len == 255 && off + 2 <= size) {
                len = (size_t)data[off] << 8 | data[off + 1];
                off += 2;
            }
            if (len > size - off)
                len = size - off;
            if (!c->cl)
                c->cl = ims_server_accept(srv, "127.0.0.1:5555", c);
            if (c->cl)
                ims_client_input(c->cl, data + off, len);
            off += len;
        } else if (op == 4) {
            ims_server_auth_ready(srv);
            ims_server_turn_end(srv);
        } else if (op == 5) {
            g_now += (uint64_t)(off < size ? data[off++] : 1) * 50;
            ims_server_tick(srv);
        } else if (op == 6) {
            close_conn(c);
        } else {
            c->paused = !c->paused;
        }
        for (int i = 0; i < NCONN; i++) {
            drain(&conns[i]);
            if (conns[i].cl && ims_client_done(conns[i].cl) && !conns[i].paused)
                close_conn(&conns[i]);
        }
    }
    ims_server_auth_ready(srv);
    ims_server_turn_end(srv);
    for (int i = 0; i < NCONN; i++) {
        drain(&conns[i]);
        close_conn(&conns[i]);
    }
    ims_server_free(srv);
    ims_auth_free(auth);
    if (ims_store_integrity_check(store, err, sizeof err) != 0)
        abort();
    ims_store_close(store);
    return 0;
}
