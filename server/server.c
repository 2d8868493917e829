/* imd — the server object: clients, frame dispatch, closes and their reasons, the turn (group
 * commit), timers, counters, monitor events, shutdown and reload. Accounts are in session.c,
 * messages in deliver.c, rooms in rooms.c, presence in presence.c.
 */
#include "server.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <imp/imp.h>
#include <imp/text.h>

#include "core.h"
#include "log.h"
#include "syncer.h"

const char *const ims_stat_names[ST_COUNT] = {
    "connections",
    "connections_total",
    "sessions",
    "users_online",
    "logins_ok",
    "logins_failed",
    "registrations",
    "msgs_in",
    "msgs_stored",
    "msgs_delivered",
    "msgs_refused",
    "msgs_duplicate",
    "transient_in",
    "transient_delivered",
    "transient_dropped",
    "bytes_in",
    "bytes_out",
    "hash_pending",
    "hash_busy",
    "store_commits",
    "store_commit_failures",
    "store_commit_ms_total",
    "store_commit_ms_max",
    "accept_errors",
    "monitor_dropped",
    "close.peer",
    "close.logout",
    "close.protocol",
    "close.auth_timeout",
    "close.ping_timeout",
    "close.slow_consumer",
    "close.server_full",
    "close.banned",
    "close.shutdown",
    "close.kicked",
    "close.other",
    "hash_running_max",
    "store_syncs",
    "store_sync_failures",
    "store_checkpoints",
    "store_log_frames",
    "loop_lag_probes",
    "loop_lag_us_total",
    "loop_lag_us_max",
    "loop_probe_wake_us_max",
    "loop_serve_us_max",
    "loop_lag_over_1ms",
    "loop_lag_over_10ms",
    "loop_lag_over_50ms",
};

/* ---- clock -------------------------------------------------------------------------------- */

static uint64_t sys_mono(void *ud)
{
    (void)ud;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static int64_t sys_wall(void *ud)
{
    (void)ud;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

uint64_t ims_now_mono(ims_server *srv)
{
    return srv->clock.mono_ms(srv->clock.ud);
}

int64_t ims_now_wall(ims_server *srv)
{
    /* one clock read per chunk of a client's input (every frame in it is stamped with the
     * same millisecond): clock_gettime was 3.6 % of imd's time on the transient hot path */
    if (srv->cur) {
        if (!srv->wall_cached) {
            srv->wall_cache = srv->clock.wall_ms(srv->clock.ud);
            srv->wall_cached = 1;
        }
        return srv->wall_cache;
    }
    return srv->clock.wall_ms(srv->clock.ud);
}

static int default_commit(void *ud, ims_store *s)
{
    (void)ud;
    return ims_store_commit(s);
}

/* ---- lookup tables ------------------------------------------------------------------------ */

ims_client *ims_client_by_id(ims_server *srv, uint64_t id)
{
    for (ims_client *c = srv->cbucket[id % IMS_CLIENT_BUCKETS]; c; c = c->hnext)
        if (c->id == id)
            return c;
    return NULL;
}

const char *ims_client_addr(const ims_client *c, char buf[64])
{
    memcpy(buf, c->peer + (c->peer[0] == '['), c->addr_len);
    buf[c->addr_len] = '\0';
    return buf;
}

ims_ouser *ims_ouser_find(ims_server *srv, int64_t id)
{
    for (ims_ouser *u = srv->ubucket[(uint64_t)id % IMS_USER_BUCKETS]; u; u = u->hnext)
        if (u->id == id)
            return u;
    return NULL;
}

static size_t name_bucket(const char *name)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (const unsigned char *p = (const unsigned char *)name; *p; p++)
        h = (h ^ *p) * 16777619u;
    return h % IMS_USER_BUCKETS;
}

ims_ouser *ims_ouser_find_name(ims_server *srv, const char *name)
{
    for (ims_ouser *u = srv->nbucket[name_bucket(name)]; u; u = u->nnext)
        if (strcmp(u->name, name) == 0)
            return u;
    return NULL;
}

ims_ouser *ims_ouser_get(ims_server *srv, const ims_user *su)
{
    ims_ouser *u = ims_ouser_find(srv, su->id);
    if (u)
        return u;
    size_t nlen = strnlen(su->name, sizeof su->name - 1);
    u = calloc(1, offsetof(ims_ouser, name) + nlen + 1);
    if (!u)
        return NULL;
    u->id = su->id;
    memcpy(u->name, su->name, nlen); /* NUL: calloc */
    u->admin = su->admin;
    u->last_seq = su->last_seq;
    u->acked = su->acked_seq;
    u->status = IMP_STATUS_ONLINE;
    ims_ouser **b = &srv->ubucket[(uint64_t)su->id % IMS_USER_BUCKETS];
    u->hnext = *b;
    *b = u;
    b = &srv->nbucket[name_bucket(u->name)];
    u->nnext = *b;
    *b = u;
    return u;
}

void ims_ouser_set_status_text(ims_ouser *u, const uint8_t *p, size_t n)
{
    free(u->status_text);
    u->status_text = NULL;
    if (n == 0 || !(u->status_text = malloc(n + 1)))
        return; /* out of memory: the text is dropped, the status kept */
    memcpy(u->status_text, p, n);
    u->status_text[n] = '\0';
}

void ims_ouser_release(ims_server *srv, ims_ouser *u)
{
    if (u->nsessions > 0 || u->dirty)
        return;
    ims_ouser **pp = &srv->ubucket[(uint64_t)u->id % IMS_USER_BUCKETS];
    while (*pp && *pp != u)
        pp = &(*pp)->hnext;
    if (*pp)
        *pp = u->hnext;
    pp = &srv->nbucket[name_bucket(u->name)];
    while (*pp && *pp != u)
        pp = &(*pp)->nnext;
    if (*pp)
        *pp = u->nnext;
    free(u->status_text);
    free(u);
}

void ims_ouser_dirty(ims_server *srv, ims_ouser *u)
{
    if (u->dirty)
        return;
    u->dirty = 1;
    u->dnext = srv->dirty;
    srv->dirty = u;
}

int ims_fold(imp_bytes b, char out[33])
{
    if (b.len < 1 || b.len > 32 || !imp_name_valid(b.p, b.len))
        return IMP_ERR_BAD_NAME;
    imp_name_fold(b.p, b.len, (uint8_t *)out);
    out[b.len] = '\0';
    return 0;
}

/* ---- output ------------------------------------------------------------------------------- */

size_t ims_client_pending(const ims_client *c)
{
    return imp_conn_output_size(c->conn); /* shared frames included, not laid out */
}

void ims_client_wake(ims_client *c)
{
    if (c->srv->cur != c && c->srv->io.want_write)
        c->srv->io.want_write(c->io);
}

int ims_client_ready(const ims_client *c)
{
    return c->phase == CL_READY && !c->reason && imp_conn_state(c->conn) == IMP_S_READY;
}

static void flow_check(ims_client *c)
{
    if (ims_client_pending(c) > c->srv->cfg.output_soft) {
        if (!c->soft_since)
            c->soft_since = ims_now_mono(c->srv) | 1u; /* 0 means "under" */
    } else {
        c->soft_since = 0;
    }
}

static int client_sent(ims_client *c, int r);

int ims_client_send(ims_client *c, const imp_msg *m)
{
    if (c->reason)
        return IMP_ERR_CLOSED;
    return client_sent(c, imp_conn_send(c->conn, m));
}

int ims_client_send_prepared(ims_client *c, const imp_prepared *p)
{
    if (c->reason)
        return IMP_ERR_CLOSED;
    return client_sent(c, imp_conn_send_prepared(c->conn, p));
}

int ims_client_send_shared(ims_client *c, imp_prepared *p)
{
    if (c->reason)
        return IMP_ERR_CLOSED;
    return client_sent(c, imp_conn_send_shared(c->conn, p)); /* by reference (deliver.c) */
}

/* What follows a send's result r: the hard cap closes, success wakes the writer. */
static int client_sent(ims_client *c, int r)
{
    if (r == IMP_ERR_OUTPUT_FULL) {
        /* IMP-DELIV-007: over the hard cap, the consumer is too slow; what it has not
         * acknowledged stays queued. */
        ims_client_close(c, -IMP_ERR_SLOW_CONSUMER, "output over the hard limit");
        return r;
    }
    if (r == 0) {
        flow_check(c);
        ims_client_wake(c);
    } else if (imp_conn_state(c->conn) == IMP_S_CLOSING && !c->reason) {
        ims_client_close(c, -IMP_ERR_INTERNAL, NULL);
    }
    return r;
}

int ims_client_error(ims_client *c, uint32_t req, int code, const char *text,
                     uint32_t retry_after_ms)
{
    int wire = code < 0 ? -code : code;
    imp_msg m;
    imp_msg_init(&m, IMP_ERROR, req);
    imp_msg_set_u(&m, IMP_T_CODE, (uint64_t)wire);
    if (text)
        imp_msg_set_s(&m, IMP_T_TEXT, text);
    if (retry_after_ms)
        imp_msg_set_u(&m, IMP_T_RETRY_AFTER, retry_after_ms);
    if (imp_is_fatal(wire)) {
        /* a fatal answer closes: sent through ims_client_close so the reason is counted */
        if (!c->reason) {
            int r = imp_conn_send(c->conn, &m);
            (void)r;
            ims_client_close(c, wire, text);
        }
        return 0;
    }
    return ims_client_send(c, &m);
}

int ims_client_ok(ims_client *c, uint32_t req, int has_count, uint32_t count, int more)
{
    imp_msg m;
    imp_msg_init(&m, IMP_OK, req);
    if (has_count)
        imp_msg_set_u(&m, IMP_T_COUNT, count);
    if (more)
        imp_msg_set_u(&m, IMP_T_MORE, 1);
    return ims_client_send(c, &m);
}

/* ---- closes ------------------------------------------------------------------------------- */

static int reason_stat(int code)
{
    switch (code) {
    case 733:
        return ST_CLOSE_PEER;
    case 0:
        return ST_CLOSE_LOGOUT;
    case 600:
        return ST_CLOSE_AUTH_TIMEOUT;
    case 601:
        return ST_CLOSE_PING_TIMEOUT;
    case 731:
        return ST_CLOSE_SLOW_CONSUMER;
    case 301:
        return ST_CLOSE_SERVER_FULL;
    case 302:
        return ST_CLOSE_BANNED;
    case 730:
        return ST_CLOSE_SHUTDOWN;
    case 732:
        return ST_CLOSE_KICKED;
    default:
        return code >= 700 && code < 800 ? ST_CLOSE_PROTOCOL : ST_CLOSE_OTHER;
    }
}

static const char *reason_name(int code)
{
    return ims_stat_names[reason_stat(code)] + 6; /* after "close." */
}

/* Records why c closes (once) and ends its session. code: wire code, 0 = logout. */
static void mark_closed(ims_client *c, int code)
{
    if (c->reason)
        return;
    c->reason = code > 0 && code < 0xFFFF ? (uint16_t)code : 0xFFFF; /* 0xFFFF: logout */
    c->srv->n_open--;
    c->srv->st[reason_stat(code)]++;
    if (c->phase == CL_READY)
        ims_monitor(c->srv, "close", c->u ? c->u->name : NULL, reason_name(code));
    if (ims_log_enabled(IMS_LOG_DEBUG))
        ims_log(IMS_LOG_DEBUG, "close", "peer=%s reason=%s", c->peer, reason_name(code));
    ims_session_end(c);
}

void ims_client_close(ims_client *c, int code, const char *text)
{
    if (c->reason)
        return;
    int wire = code < 0 ? -code : code;
    imp_conn_close(c->conn, wire, text);
    mark_closed(c, wire);
    ims_client_wake(c);
}

/* ---- monitor ------------------------------------------------------------------------------ */

void ims_monitor(ims_server *srv, const char *event, const char *user, const char *text)
{
    if (srv->monitors <= 0)
        return;
    int64_t now = ims_now_wall(srv);
    for (ims_client *c = srv->clients; c; c = c->next) {
        if (!c->monitor || !ims_client_ready(c))
            continue;
        if (ims_client_pending(c) > srv->cfg.output_soft) {
            srv->st[ST_MONITOR_DROPPED]++; /* a monitor never makes itself a slow consumer */
            continue;
        }
        imp_msg m;
        imp_msg_init(&m, IMP_MONITOR_EVENT, 0);
        if (user && *user)
            imp_msg_set_s(&m, IMP_T_USER, user);
        if (text)
            imp_msg_set_b(&m, IMP_T_TEXT, text, strnlen(text, 512));
        imp_msg_set_u(&m, IMP_T_TIMESTAMP, (uint64_t)(now < 0 ? 0 : now));
        imp_msg_set_s(&m, IMP_T_EVENT, event);
        ims_client_send(c, &m);
    }
}

/* ---- server ------------------------------------------------------------------------------- */

static void make_caps(ims_server *srv)
{
    static const char *const caps[] = {"history", "presence", "monitor"};
    imp_builder b;
    imp_builder_init(&b, srv->caps, sizeof srv->caps);
    for (size_t i = 0; i < sizeof caps / sizeof caps[0]; i++)
        imp_names_add(&b, caps[i], strlen(caps[i]));
    srv->caps_len = b.err ? 0 : b.len;
}

static ims_throttle *make_throttle(const ims_cfg *cfg)
{
    ims_throttle_options o;
    ims_throttle_options_default(&o);
    o.addr_max_failures = cfg->addr_max_failures;
    o.addr_window_ms = cfg->addr_window_ms;
    o.addr_ban_ms = cfg->addr_ban_ms;
    o.user_free_failures = cfg->user_free_failures;
    o.user_backoff_ms = cfg->user_backoff_ms;
    o.user_backoff_max_ms = cfg->user_backoff_max_ms;
    return ims_throttle_new(&o);
}

ims_server *ims_server_new(const ims_server_options *o)
{
    if (!o || !o->cfg || !o->store || !o->auth)
        return NULL;
    ims_server *srv = calloc(1, sizeof *srv);
    if (!srv)
        return NULL;
    srv->cfg = *o->cfg;
    srv->store = o->store;
    srv->auth = o->auth;
    srv->io = o->io;
    srv->clock = o->clock;
    if (!srv->clock.mono_ms)
        srv->clock.mono_ms = sys_mono;
    if (!srv->clock.wall_ms)
        srv->clock.wall_ms = sys_wall;
    snprintf(srv->version, sizeof srv->version, "%s", o->version ? o->version : "imd/0.1.0");
    srv->commit = o->commit ? o->commit : default_commit;
    srv->commit_ud = o->commit_ud;
    srv->syncer = o->syncer;
    srv->batches_tail = &srv->batches;
    srv->held_tail = &srv->held;
    make_caps(srv);
    srv->throttle = make_throttle(&srv->cfg);
    srv->bus = ims_bus_local_new();
    if (!srv->throttle || !srv->bus ||
        ims_bus_subscribe(srv->bus, ims_deliver_bus_event, srv) != 0) {
        ims_throttle_free(srv->throttle);
        ims_bus_free(srv->bus);
        free(srv);
        return NULL;
    }
    int64_t wall = ims_now_wall(srv);
    srv->next_client_id = 1;
    /* session ids: unique across restarts (wall-clock based) and within the process */
    srv->next_session_id = ((uint64_t)(wall < 0 ? 0 : wall) << 16) + 1;
    srv->next_transient_id = 1;
    srv->last_expire_ms = ims_now_mono(srv);
    /* the event loop's lag probe (auth.h); without a wake hook (unit tests, fuzzer) it is off */
    (void)ims_auth_loop_probe(srv->auth, srv->cfg.loop_probe_ms);
    return srv;
}

static void client_free(ims_client *c)
{
    ims_server *srv = c->srv;
    if (c->prev)
        c->prev->next = c->next;
    else
        srv->clients = c->next;
    if (c->next)
        c->next->prev = c->prev;
    if (!c->reason)
        srv->n_open--;
    ims_client **pp = &srv->cbucket[c->id % IMS_CLIENT_BUCKETS];
    while (*pp && *pp != c)
        pp = &(*pp)->hnext;
    if (*pp)
        *pp = c->hnext;
    ims_deliver_forget_client(srv, c);
    if (c->nsubs > 0)
        srv->subscribers--;
    if (c->monitor)
        srv->monitors--;
    if (srv->cur == c)
        srv->cur = NULL;
    imp_conn_free(c->conn);
    free(c->auth); /* or c->subs: they share their room (core.h) */
    free(c);
}

void ims_server_free(ims_server *srv)
{
    if (!srv)
        return;
    while (srv->clients) {
        ims_client *c = srv->clients;
        mark_closed(c, 730);
        client_free(c);
    }
    ims_deliver_free(srv);
    free(srv->logouts);
    for (size_t i = 0; i < IMS_USER_BUCKETS; i++) {
        while (srv->ubucket[i]) {
            ims_ouser *u = srv->ubucket[i];
            srv->ubucket[i] = u->hnext;
            free(u->status_text);
            free(u);
        }
    }
    ims_throttle_free(srv->throttle);
    ims_bus_free(srv->bus);
    free(srv);
}

/* Where the address is in a peer: "1.2.3.4:5" -> "1.2.3.4", "[::1]:5" -> "::1", "unix:/p" ->
 * "unix". */
static void peer_addr(const ims_client *c, size_t *off, size_t *len)
{
    const char *peer = c->peer;
    if (strncmp(peer, "unix", 4) == 0) {
        *off = 0;
        *len = 4;
        return;
    }
    const char *start = peer, *end = strrchr(peer, ':');
    if (*peer == '[') {
        start = peer + 1;
        end = strchr(peer, ']');
    }
    *off = (size_t)(start - peer);
    *len = end && end > start ? (size_t)(end - start) : strlen(start);
}

ims_client *ims_server_accept(ims_server *srv, const char *peer, void *io_ctx)
{
    if (!peer)
        peer = "?";
    size_t plen = strnlen(peer, 63); /* at most 63 bytes kept, as ever */
    ims_client *c = calloc(1, offsetof(ims_client, peer) + plen + 1); /* issue 3 */
    if (!c)
        return NULL;
    c->srv = srv;
    c->io = io_ctx;
    memcpy(c->peer, peer, plen);
    c->peer[plen] = '\0';
    size_t aoff, alen;
    peer_addr(c, &aoff, &alen);
    (void)aoff; /* 1 for "[v6]:port", else 0: ims_client_addr */
    c->addr_len = (uint8_t)alen;
    imp_config ic;
    imp_config_default(&ic, IMP_ROLE_SERVER);
    ic.max_frame = srv->cfg.max_frame;
    ic.max_frame_preauth = srv->cfg.max_frame_preauth;
    ic.ping_interval_ms = srv->cfg.ping_interval_ms;
    ic.ping_max_missed = srv->cfg.ping_max_missed;
    ic.auth_timeout_ms = srv->cfg.auth_timeout_ms;
    ic.max_output = srv->cfg.output_hard;
    ic.agent = srv->version;
    ic.caps.p = srv->caps;
    ic.caps.len = srv->caps_len;
    c->conn = imp_conn_new(IMP_ROLE_SERVER, &ic, ims_now_mono(srv));
    if (!c->conn) {
        free(c);
        return NULL;
    }
    /* IMP-SESS-008: LOGOUT's OK is sent by logout_received/logouts_check, after the ACKs */
    (void)imp_conn_set_defer_logout(c->conn, 1);
    /* count the clients open now, in total (kept: the walk over 10,000 clients per accept
     * stalled the loop for up to 100 ms in bench/run-imd login) and from this address (walked
     * only when that many are open at all: same <= total) */
    int total = srv->n_open, same = 0;
    int walk = total >= srv->cfg.max_connections_per_addr && total < srv->cfg.max_connections;
    for (ims_client *o = walk ? srv->clients : NULL; o; o = o->next) {
        if (o->reason)
            continue;
        if (o->addr_len == c->addr_len &&
            memcmp(o->peer + (o->peer[0] == '['), c->peer + (c->peer[0] == '['), c->addr_len) == 0)
            same++;
    }
    c->id = srv->next_client_id++;
    c->tokens = srv->cfg.msg_burst;
    c->tokens_ms = ims_now_mono(srv);
    c->next = srv->clients;
    if (srv->clients)
        srv->clients->prev = c;
    srv->clients = c;
    srv->n_open++;
    ims_client **b = &srv->cbucket[c->id % IMS_CLIENT_BUCKETS];
    c->hnext = *b;
    *b = c;
    srv->st[ST_CONNECTIONS_TOTAL]++;
    srv->cur = c; /* the network layer looks at a new client's output itself */
    if (srv->shutting_down)
        ims_client_close(c, -IMP_ERR_SHUTDOWN, "server shutting down");
    else if (total >= srv->cfg.max_connections)
        ims_client_close(c, -IMP_ERR_SERVER_FULL, "too many connections");
    else if (same >= srv->cfg.max_connections_per_addr)
        ims_client_close(c, -IMP_ERR_SERVER_FULL, "too many connections from this address");
    else
        ims_monitor(srv, "connect", NULL, c->peer);
    srv->cur = NULL;
    return c;
}

/* ---- LOGOUT (IMP-SESS-008) ---------------------------------------------------------------- */

/* Deferred LOGOUT: the OK to LOGOUT follows the answers to every request read before it. The
 * synchronous answers (ERROR, OK, replies) went out while those requests were handled; the ACKs
 * of durable SENDs are held until the turn's commit (srv->held) and, with the fsync thread,
 * until its fsync (srv->batches), then sent in order by ims_deliver_flush. So the OK goes out
 * once no ACK of the client is held any more: at once when none is, else by logouts_check after
 * the flush that sent the last one. The lists are walked only for clients with a LOGOUT pending
 * (LOGOUT is rare); the send path is untouched.
 *
 * ACK_MODE 2 ACKs that wait for recipients' DELIVERED (srv->waiting, moved there by the flush)
 * do not delay the OK: they may wait forever. As on any close, they are never sent: the client's
 * entries are dropped by ims_deliver_forget_client when it is freed (the messages are stored and
 * delivered; only the "delivered" answer is lost, and SPEC.md IMP-SESS-008 says so).
 *
 * While the OK is pending the connection is in LOGOUT_RCVD: libimp drops its input, it is not
 * ims_client_ready (no DELIVERs, transients, presence or monitor events), and the session stays
 * until the OK (then mark_closed: counted as close.logout, the session ends). A client that
 * goes away meanwhile is counted as close.peer; its entry in srv->logouts names a client id
 * that is never reused, and is dropped by the next logouts_check, as its held ACKs are by
 * send_ack (no such client). */

/* 1 when an ACK of client id is held for a commit or an fsync. */
static int has_held(const ims_server *srv, uint64_t id)
{
    for (const ims_held *h = srv->held; h; h = h->next)
        if (h->client == id)
            return 1;
    for (const struct ims_batch *b = srv->batches; b; b = b->next)
        for (const ims_held *h = b->held; h; h = h->next)
            if (h->client == id)
                return 1;
    return 0;
}

/* The OK to LOGOUT (libimp moves the connection to CLOSING) and the close. */
static void logout_finish(ims_client *c, uint32_t req)
{
    ims_client_ok(c, req, 0, 0, 0); /* a failure closes c with its own reason */
    if (!c->reason)
        mark_closed(c, 0); /* close.logout */
    ims_client_wake(c);
}

static void logout_received(ims_client *c, uint32_t req)
{
    ims_server *srv = c->srv;
    if (c->reason || imp_conn_state(c->conn) != IMP_S_LOGOUT_RCVD)
        return; /* before READY libimp answered it and closed (conn_closed counts it) */
    if (!has_held(srv, c->id)) {
        logout_finish(c, req);
        return;
    }
    if (srv->nlogouts == srv->caplogouts) {
        size_t cap = srv->caplogouts ? 2 * srv->caplogouts : 8;
        struct ims_logout *l = realloc(srv->logouts, cap * sizeof *l);
        if (!l) {
            /* out of memory: the OK at once, as without deferral (the held ACKs are lost) */
            logout_finish(c, req);
            return;
        }
        srv->logouts = l;
        srv->caplogouts = cap;
    }
    srv->logouts[srv->nlogouts].client = c->id;
    srv->logouts[srv->nlogouts].req = req;
    srv->nlogouts++;
}

/* After a flush: the pending LOGOUTs whose ACKs are all out get their OK; entries of clients
 * gone or closed meanwhile are dropped. */
static void logouts_check(ims_server *srv)
{
    size_t keep = 0;
    for (size_t i = 0; i < srv->nlogouts; i++) {
        struct ims_logout l = srv->logouts[i];
        ims_client *c = ims_client_by_id(srv, l.client);
        if (c && !c->reason && has_held(srv, l.client)) {
            srv->logouts[keep++] = l;
            continue;
        }
        if (c && !c->reason)
            logout_finish(c, l.req); /* never adds to srv->logouts (only input does) */
    }
    srv->nlogouts = keep;
    if (keep == 0) { /* LOGOUT is rare: no memory held for it meanwhile */
        free(srv->logouts);
        srv->logouts = NULL;
        srv->caplogouts = 0;
    }
}

/* ---- input -------------------------------------------------------------------------------- */

static void stats_reply(ims_client *c, const imp_msg *m);

static void monitor_req(ims_client *c, const imp_msg *m)
{
    if (!c->u->admin) {
        ims_client_error(c, m->request_id, IMP_ERR_FORBIDDEN, "administrators only", 0);
        return;
    }
    int on = (int)imp_msg_u(m, IMP_T_ENABLE, 0);
    c->srv->monitors += on - c->monitor;
    c->monitor = (uint8_t)on;
    ims_client_ok(c, m->request_id, 0, 0, 0);
}

static void handle(ims_client *c, const imp_msg *m)
{
    switch (m->type) {
    case IMP_REGISTER:
        ims_session_register(c, m);
        return;
    case IMP_LOGIN:
        ims_session_login(c, m);
        return;
    case IMP_LOGOUT:
        logout_received(c, m->request_id);
        return;
    default:
        break;
    }
    /* IMP-SEC-001, IMP-SESS-004: libimp refuses application frames before AUTH_OK; the core
     * never acts on one for a client that is not authenticated either. */
    if (c->phase != CL_READY || c->reason)
        return;
    switch (m->type) {
    case IMP_SEND:
        ims_deliver_send(c, m);
        break;
    case IMP_DELIVERED:
        ims_deliver_delivered(c, m);
        break;
    case IMP_JOIN:
        ims_rooms_join(c, m);
        break;
    case IMP_LEAVE:
        ims_rooms_leave(c, m);
        break;
    case IMP_MEMBERS:
        ims_rooms_members(c, m);
        break;
    case IMP_HISTORY:
        ims_rooms_history(c, m);
        break;
    case IMP_ROOMS:
        ims_rooms_list(c, m);
        break;
    case IMP_PRESENCE:
        ims_presence_set(c, m);
        break;
    case IMP_SUBSCRIBE:
        ims_presence_subscribe(c, m);
        break;
    case IMP_WHO:
        ims_presence_who(c, m);
        break;
    case IMP_STATS:
        stats_reply(c, m);
        break;
    case IMP_MONITOR:
        monitor_req(c, m);
        break;
    default:
        break; /* HELLO, PING, PONG, ERROR: libimp did what there is to do */
    }
}

/* The imp_conn closed by itself: a protocol error (sticky), LOGOUT or an ERROR from the peer. */
static void conn_closed(ims_client *c, int err, int last_type)
{
    if (c->reason)
        return;
    if (err < 0)
        mark_closed(c, -err);
    else if (last_type == IMP_LOGOUT)
        mark_closed(c, 0);
    else
        mark_closed(c, 733); /* the peer sent a fatal ERROR: the peer closed */
}

void ims_client_input(ims_client *c, const uint8_t *p, size_t n)
{
    ims_server *srv = c->srv;
    if (c->reason)
        return; /* closing: input is ignored (IMP-SESS-003) */
    c->active = 1;
    srv->cur = c;
    srv->wall_cached = 0;
    int last_type = 0;
    for (;;) {
        imp_ssize k = imp_conn_feed(c->conn, p, n);
        if (k < 0) {
            conn_closed(c, (int)k, 0);
            break;
        }
        p += k;
        n -= (size_t)k;
        imp_msg m;
        int r = 0, events = 0;
        while (!c->reason && (r = imp_conn_next_event(c->conn, &m)) > 0) {
            last_type = m.type;
            events++;
            handle(c, &m);
        }
        if (c->reason)
            break;
        if (r < 0) {
            conn_closed(c, r, last_type);
            break;
        }
        if (imp_conn_want_close(c->conn)) {
            conn_closed(c, 0, last_type);
            break;
        }
        if (n == 0 || (k == 0 && events == 0))
            break;
    }
    flow_check(c);
    srv->cur = NULL;
    srv->wall_cached = 0;
}

size_t ims_client_output(ims_client *c, const uint8_t **p)
{
    return imp_conn_pending_output(c->conn, p);
}

int ims_client_output_iov(ims_client *c, imp_iovec *v, int max)
{
    return imp_conn_output_iov(c->conn, v, max);
}

void ims_client_consumed(ims_client *c, size_t n)
{
    imp_conn_consume_output(c->conn, n);
    c->active = 1;
    flow_check(c);
    /* output drained: continue filling the window (outside a batch only, IMP-DELIV-001) */
    if (c->u && ims_client_ready(c) && ims_client_pending(c) < c->srv->cfg.output_soft) {
        ims_server *srv = c->srv;
        ims_client *cur = srv->cur;
        srv->cur = c;
        ims_deliver_pump(c);
        srv->cur = cur;
    }
}

int ims_client_done(const ims_client *c)
{
    return c->reason != 0 || imp_conn_want_close(c->conn);
}

void ims_client_closed(ims_client *c, int reason)
{
    if (!c->reason)
        mark_closed(c, reason ? (reason < 0 ? -reason : reason) : 733);
    client_free(c);
}

void *ims_client_io(const ims_client *c)
{
    return c->io;
}

/* ---- turn, timers, hash results ----------------------------------------------------------- */

/* After a failed commit the store rolled back: reload what the core mirrors. */
static void reload_users(ims_server *srv)
{
    for (size_t i = 0; i < IMS_USER_BUCKETS; i++) {
        for (ims_ouser *u = srv->ubucket[i]; u; u = u->hnext) {
            ims_user su;
            if (ims_store_user_get_id(srv->store, u->id, &su) == 0) {
                u->last_seq = su.last_seq;
                u->acked = su.acked_seq;
            }
        }
    }
}

/* fsync_thread: the turn's held ACKs and notes wait for the fsync of batch gen. */
static void batch_stash(ims_server *srv, uint64_t gen, int ok)
{
    if (!srv->held && srv->nnotes == 0)
        return;
    struct ims_batch *b = calloc(1, sizeof *b);
    if (!b) {
        /* cannot wait: sync here, on the loop (slow, same guarantee) */
        int r = ims_store_sync(srv->store);
        ims_deliver_flush(srv, ok && r == 0);
        return;
    }
    b->gen = gen;
    b->ok = ok;
    b->held = srv->held;
    b->notes = srv->notes;
    b->nnotes = srv->nnotes;
    srv->held = NULL;
    srv->held_tail = &srv->held;
    srv->notes = NULL;
    srv->nnotes = srv->capnotes = 0;
    *srv->batches_tail = b;
    srv->batches_tail = &b->next;
}

/* Sends what the batches up to gen held (ok == 0: refused, the fsync failed), oldest first. */
static void batch_release(ims_server *srv, uint64_t gen, int ok)
{
    while (srv->batches && srv->batches->gen <= gen) {
        struct ims_batch *b = srv->batches;
        srv->batches = b->next;
        if (!srv->batches)
            srv->batches_tail = &srv->batches;
        /* this turn's own held ACKs and notes, if any, wait aside */
        ims_held *held = srv->held, **tail = srv->held_tail;
        struct ims_note *notes = srv->notes;
        size_t nnotes = srv->nnotes, capnotes = srv->capnotes;
        srv->held = b->held;
        srv->held_tail = &srv->held; /* flush takes the whole list */
        srv->notes = b->notes;
        srv->nnotes = srv->capnotes = b->nnotes;
        ims_deliver_flush(srv, b->ok && ok);
        /* what the flush itself queued joins this turn's */
        ims_held *more = srv->held;
        ims_held **more_tail = srv->held_tail;
        struct ims_note *mnotes = srv->notes;
        size_t nmore = srv->nnotes;
        srv->held = held;
        srv->held_tail = held ? tail : &srv->held;
        if (more) {
            *srv->held_tail = more;
            srv->held_tail = more_tail;
        }
        srv->notes = notes;
        srv->nnotes = nnotes;
        srv->capnotes = capnotes;
        for (size_t i = 0; i < nmore; i++)
            ims_note_add(srv, mnotes[i].user_id, mnotes[i].seq);
        free(mnotes);
        free(b);
    }
    if (srv->nlogouts)
        logouts_check(srv); /* IMP-SESS-008: the OKs after the ACKs just sent */
}

/* fsync_thread: what the syncer finished since the last look. */
static void sync_poll(ims_server *srv)
{
    uint64_t done = 0;
    int failed = ims_syncer_poll(srv->syncer, &done);
    if (failed) {
        /* IMP-DELIV-001: not known to be on disk, not acknowledged (refused: retried) */
        srv->st[ST_STORE_SYNC_FAILURES] += (uint64_t)failed;
        batch_release(srv, done, 0);
        return;
    }
    if (done > ims_store_synced_gen(srv->store)) {
        srv->st[ST_STORE_SYNCS]++;
        ims_store_synced(srv->store, done);
    }
    batch_release(srv, ims_store_synced_gen(srv->store), 1);
}

void ims_server_turn_end(ims_server *srv)
{
    int ok = 1;
    if (ims_store_in_batch(srv->store)) {
        /* IMP-DELIV-001: one commit (fsync) for every write of the turn, then its ACKs */
        uint64_t t0 = ims_now_mono(srv);
        int r = srv->commit(srv->commit_ud, srv->store);
        uint64_t dt = ims_now_mono(srv) - t0;
        srv->st[ST_STORE_COMMITS]++;
        srv->st[ST_STORE_COMMIT_MS_TOTAL] += dt;
        if (dt > srv->st[ST_STORE_COMMIT_MS_MAX])
            srv->st[ST_STORE_COMMIT_MS_MAX] = dt;
        if (r != 0) {
            ok = 0;
            srv->st[ST_STORE_COMMIT_FAILURES]++;
            ims_log(IMS_LOG_ERROR, "commit_failed", "code=%d", -r);
            reload_users(srv);
            ims_room_forget(srv, NULL); /* it may hold a JOIN that was rolled back */
        }
    }
    if (!srv->syncer) {
        /* the commit was the fsync (or, with a store that does not sync its commits and no
         * syncer, e.g. after ims_server_detach_syncer: sync here) */
        if (ok && ims_store_sync(srv->store) != 0) {
            ok = 0;
            srv->st[ST_STORE_SYNC_FAILURES]++;
        }
        ims_deliver_flush(srv, ok);
        if (srv->nlogouts)
            logouts_check(srv); /* IMP-SESS-008: the OKs after the ACKs just sent */
        return;
    }
    /* IMP-DELIV-001 with the fsync off the loop: the turn's ACKs and deliveries wait for the
     * fsync of the batch just committed (or of the last one: a turn that wrote nothing still
     * answers in order after the turns before it); the loop goes on meanwhile. */
    uint64_t gen = ims_store_commit_gen(srv->store);
    batch_stash(srv, gen, ok);
    if (gen > srv->sync_asked && gen > ims_store_synced_gen(srv->store)) {
        srv->sync_asked = gen;
        ims_syncer_request(srv->syncer, gen);
    }
    sync_poll(srv);
    ims_deliver_flush(srv, 1); /* nothing held here: the users whose queues moved */
    if (srv->nlogouts)
        logouts_check(srv); /* batch_stash's fallback flushed without batch_release */
}

static void sync_wait(ims_server *srv)
{
    if (!srv->syncer || !srv->batches)
        return;
    int r = ims_store_sync(srv->store);
    if (r != 0)
        srv->st[ST_STORE_SYNC_FAILURES]++;
    batch_release(srv, ims_store_commit_gen(srv->store), r == 0);
}

void ims_server_detach_syncer(ims_server *srv)
{
    sync_wait(srv);
    srv->syncer = NULL;
}

void ims_server_tick(ims_server *srv)
{
    uint64_t now = ims_now_mono(srv);
    for (ims_client *c = srv->clients; c; c = c->next) {
        if (c->reason)
            continue;
        size_t before = ims_client_pending(c);
        int r = imp_conn_tick(c->conn, now); /* IMP-TIME-001, IMP-TIME-002 */
        if (r < 0) {
            mark_closed(c, -r);
            ims_client_wake(c);
            continue;
        }
        if (ims_client_pending(c) != before)
            ims_client_wake(c);
        flow_check(c);
        /* a connection idle for a whole tick keeps no I/O buffers (~2 KiB each) */
        if (!c->active)
            imp_conn_trim(c->conn);
        c->active = 0;
        /* IMP-DELIV-007: over the soft cap for too long is a slow consumer too */
        if (c->soft_since && now - c->soft_since >= srv->cfg.output_soft_ms)
            ims_client_close(c, -IMP_ERR_SLOW_CONSUMER, "output over the soft limit too long");
    }
    if (now - srv->last_expire_ms >= 60000) {
        srv->last_expire_ms = now;
        if (ims_store_begin(srv->store) == 0)
            (void)ims_store_token_expire(srv->store, ims_now_wall(srv));
    }
    /* IMP-DELIV-005 within dedupe_window_ms: forgotten CLIENT_MSG_IDs are removed a bounded
     * batch per tick while there are any, else once a second */
    if (srv->cfg.dedupe_window_ms && now >= srv->dedupe_next_ms) {
        int n = -1;
        if (ims_store_begin(srv->store) == 0)
            n = ims_store_dedupe_expire(srv->store, (int64_t)ims_now_wall(srv) -
                                                        (int64_t)srv->cfg.dedupe_window_ms);
        srv->dedupe_next_ms = now + (n > 0 ? 0 : 1000);
    }
}

void ims_server_auth_ready(ims_server *srv)
{
    ims_auth_poll(srv->auth, ims_session_auth_result, srv);
}

/* ---- shutdown, reload --------------------------------------------------------------------- */

void ims_server_shutdown(ims_server *srv)
{
    srv->shutting_down = 1;
    /* The turn's messages are committed and ACKed first. A LOGOUT pending (IMP-SESS-008) gets
     * its OK here, after the final sync has released its ACKs (logouts_check): that client sees
     * every answer and the OK, not SHUTDOWN; the others get ERROR SHUTDOWN below. */
    ims_server_turn_end(srv);
    sync_wait(srv);
    for (ims_client *c = srv->clients; c; c = c->next)
        ims_client_close(c, -IMP_ERR_SHUTDOWN, "server shutting down");
}

typedef void (*changed_fn)(void *ud, const char *key, const char *from, const char *to);

static void reload_u64(const char *key, uint64_t *cur, uint64_t v, changed_fn changed, void *ud)
{
    if (*cur == v)
        return;
    char a[32], b[32];
    snprintf(a, sizeof a, "%llu", (unsigned long long)*cur);
    snprintf(b, sizeof b, "%llu", (unsigned long long)v);
    *cur = v;
    if (changed)
        changed(ud, key, a, b);
}

#define RELOAD_NUM(field)                                             \
    do {                                                              \
        uint64_t cur_ = (uint64_t)srv->cfg.field;                     \
        reload_u64(#field, &cur_, (uint64_t)cfg->field, changed, ud); \
        srv->cfg.field = cfg->field;                                  \
    } while (0)

void ims_server_reload(ims_server *srv, const ims_cfg *cfg,
                       void (*changed)(void *ud, const char *key, const char *from, const char *to),
                       void *ud)
{
    /* Limits and timers apply to new connections (timers) or at once (the rest); listen
     * addresses, data_dir and the hash pool need a restart. */
    RELOAD_NUM(registration);
    RELOAD_NUM(token_ttl_ms);
    RELOAD_NUM(max_sessions_per_user);
    RELOAD_NUM(max_frame);
    RELOAD_NUM(max_frame_preauth);
    RELOAD_NUM(auth_timeout_ms);
    RELOAD_NUM(ping_interval_ms);
    RELOAD_NUM(ping_max_missed);
    RELOAD_NUM(output_soft);
    RELOAD_NUM(output_soft_ms);
    uint64_t hard_was = srv->cfg.output_hard;
    RELOAD_NUM(output_hard);
    if (srv->cfg.output_hard != hard_was) /* the open connections' cap too, not only new ones */
        for (ims_client *c = srv->clients; c; c = c->next)
            imp_conn_set_max_output(c->conn, srv->cfg.output_hard);
    RELOAD_NUM(msg_rate);
    RELOAD_NUM(msg_burst);
    RELOAD_NUM(max_connections);
    RELOAD_NUM(max_connections_per_addr);
    RELOAD_NUM(offline_quota);
    RELOAD_NUM(room_history);
    RELOAD_NUM(page_size);
    RELOAD_NUM(page_max);
    if (strcmp(srv->cfg.log_level, cfg->log_level) != 0) {
        if (ims_log_setup(cfg->log_level, cfg->log_format) == 0) {
            if (changed)
                changed(ud, "log_level", srv->cfg.log_level, cfg->log_level);
            memcpy(srv->cfg.log_level, cfg->log_level, sizeof srv->cfg.log_level);
        }
    }
}

/* ---- counters ----------------------------------------------------------------------------- */

static void update_gauges(ims_server *srv)
{
    uint64_t conns = 0, sessions = 0, users = 0;
    for (ims_client *c = srv->clients; c; c = c->next) {
        conns++;
        if (c->phase == CL_READY && !c->ended)
            sessions++;
    }
    for (size_t i = 0; i < IMS_USER_BUCKETS; i++)
        for (ims_ouser *u = srv->ubucket[i]; u; u = u->hnext)
            if (u->nsessions > 0)
                users++;
    srv->st[ST_CONNECTIONS] = conns;
    srv->st[ST_SESSIONS] = sessions;
    srv->st[ST_USERS_ONLINE] = users;
    int pending = ims_auth_pending(srv->auth);
    srv->st[ST_HASH_PENDING] = pending > 0 ? (uint64_t)pending : 0;
    srv->st[ST_HASH_RUNNING_MAX] = (uint64_t)ims_auth_running_max(srv->auth);
    if (srv->syncer) {
        uint64_t syncs = 0;
        ims_syncer_stats(srv->syncer, &syncs, &srv->st[ST_STORE_CHECKPOINTS],
                         &srv->st[ST_STORE_LOG_FRAMES]);
    }
    ims_loop_lag lag;
    ims_auth_loop_lag(srv->auth, &lag);
    srv->st[ST_LOOP_LAG_PROBES] = lag.probes;
    srv->st[ST_LOOP_LAG_US_TOTAL] = lag.total_us;
    srv->st[ST_LOOP_LAG_US_MAX] = lag.max_us;
    srv->st[ST_LOOP_PROBE_WAKE_US_MAX] = lag.wake_max_us;
    srv->st[ST_LOOP_SERVE_US_MAX] = lag.serve_max_us;
    srv->st[ST_LOOP_LAG_OVER_1MS] = lag.over_1ms;
    srv->st[ST_LOOP_LAG_OVER_10MS] = lag.over_10ms;
    srv->st[ST_LOOP_LAG_OVER_50MS] = lag.over_50ms;
}

void ims_server_stats(ims_server *srv, void (*cb)(void *ud, const char *name, uint64_t v), void *ud)
{
    update_gauges(srv);
    for (int i = 0; i < ST_COUNT; i++)
        cb(ud, ims_stat_names[i], srv->st[i]);
}

void ims_server_count_bytes(ims_server *srv, uint64_t in, uint64_t out)
{
    srv->st[ST_BYTES_IN] += in;
    srv->st[ST_BYTES_OUT] += out;
}

uint64_t ims_server_io_count(const ims_server *srv)
{
    return srv->st[ST_BYTES_IN] + srv->st[ST_BYTES_OUT] + srv->st[ST_CONNECTIONS_TOTAL];
}

void ims_server_count_accept_error(ims_server *srv)
{
    srv->st[ST_ACCEPT_ERRORS]++;
}

static void stats_reply(ims_client *c, const imp_msg *m)
{
    ims_server *srv = c->srv;
    if (!c->u->admin) {
        ims_client_error(c, m->request_id, IMP_ERR_FORBIDDEN, "administrators only", 0);
        return;
    }
    update_gauges(srv);
    uint8_t buf[ST_COUNT * (1 + IMP_STAT_NAME_MAX + 8)];
    imp_builder b;
    imp_builder_init(&b, buf, sizeof buf);
    for (int i = 0; i < ST_COUNT; i++)
        imp_stats_add(&b, ims_stat_names[i], strlen(ims_stat_names[i]), srv->st[i]);
    imp_msg r;
    imp_msg_init(&r, IMP_STATS_REPLY, m->request_id);
    int64_t now = ims_now_wall(srv);
    imp_msg_set_u(&r, IMP_T_SERVER_TIME, (uint64_t)(now < 0 ? 0 : now));
    imp_msg_set_b(&r, IMP_T_STATS, buf, b.len);
    ims_client_send(c, &r);
}
