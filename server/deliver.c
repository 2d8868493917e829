/* imd — messages: SEND, ACK, DELIVER, DELIVERED, per-session delivery cursors and windows,
 * ACK modes, transient messages (SPEC.md sections 5.3 and 9).
 *
 * The turn (IMP-DELIV-001): a durable SEND is stored inside the store's open batch and its ACK
 * is held; ims_server_turn_end commits once, then sends the held ACKs (in the order of the
 * SENDs) and only then lets delivery read the new queue entries. If the commit fails, every
 * held ACK that would have said "accepted" becomes OUTCOME refused, STORAGE (508), and nothing
 * of the batch is delivered. Delivery (ims_deliver_pump) never runs while a batch is open, so a
 * DELIVER never carries an uncommitted message.
 *
 * Choices where SPEC.md is silent:
 * - SEND refusals (bad target, FORBIDDEN, RATE_LIMITED, QUOTA, ID_CONFLICT, STORAGE) are ACKs
 *   with OUTCOME 3 and a CODE, never ERROR frames. ACK has no RETRY_AFTER field: RATE_LIMITED
 *   says in TEXT how long the bucket needs.
 * - The rate limit is a token bucket per connection (msg_rate per second, msg_burst deep) that
 *   every SEND, durable or transient, draws from; it is checked first.
 * - The offline quota bounds direct messages: a recipient with offline_quota unacknowledged
 *   messages refuses more with QUOTA (after the dedupe check, IMP-DELIV-007). Room and
 *   broadcast messages are not refused by the quota (one member's full queue must not silence a
 *   room); rooms are bounded by room_history instead (pruned after each room message).
 * - A room message is queued for the sender's user too (IMP-DELIV-008); every session of the
 *   sender, the sending one included, receives it with its SEQ, so each session sees one
 *   gapless sequence and the queue drains by DELIVERED. Transient room messages go to every
 *   online member session except the sending one.
 * - ACK_MODE 2 (delivered): the recipients are the users with a session on this server when
 *   the message is stored; the ACK (OUTCOME 2) goes out once each of them acknowledged its SEQ.
 *   With no recipient online it is answered at once as stored (OUTCOME 1); when a recipient
 *   goes offline before acknowledging, the ACK says OUTCOME 1 (stored, not known delivered).
 *   A duplicate is answered at once (OUTCOME 1, DUPLICATE 1).
 * - Transient messages (CLASS 1) get a MSG_ID with the top bit set (never a store id), SEQ 0,
 *   and their ACK (ACK_MODE 1: OUTCOME 1 accepted; 2: OUTCOME 2, written to every online
 *   session that could take it) goes out at once. A session whose output is over output_soft
 *   drops them; each drop is counted (transient_dropped).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include <imp/imp.h>

#include "core.h"

/* ---- ACKs --------------------------------------------------------------------------------- */

/* A CLIENT_MSG_ID (at most 64 bytes, NUL-terminated) into an ims_held (snprintf was a measured
 * 4.7 % of imd's time on the transient hot path). */
static void copy_cmid(char dst[65], const char *src)
{
    size_t n = strnlen(src, 64);
    memcpy(dst, src, n);
    dst[n] = '\0';
}

static void send_ack(ims_server *srv, const ims_held *h, int outcome)
{
    ims_client *c = ims_client_by_id(srv, h->client);
    if (!c || c->reason)
        return;
    imp_msg m;
    imp_msg_init(&m, IMP_ACK, h->req);
    if (h->cmid[0])
        imp_msg_set_s(&m, IMP_T_CLIENT_MSG_ID, h->cmid);
    if (outcome != IMP_OUTCOME_REFUSED)
        imp_msg_set_u(&m, IMP_T_MSG_ID, (uint64_t)h->msg_id);
    imp_msg_set_u(&m, IMP_T_OUTCOME, (uint64_t)outcome);
    if (outcome == IMP_OUTCOME_REFUSED) {
        imp_msg_set_u(&m, IMP_T_CODE, (uint64_t)h->code);
        const char *t = imp_err_name(h->code);
        if (t)
            imp_msg_set_s(&m, IMP_T_TEXT, t);
    }
    if (h->duplicate)
        imp_msg_set_u(&m, IMP_T_DUPLICATE, 1);
    ims_client_send(c, &m);
}

static void held_free(ims_held *h)
{
    free(h->wait_user);
    free(h->wait_seq);
    free(h);
}

static ims_held *held_new(ims_client *c, uint32_t req, const char *cmid, int mode)
{
    ims_held *h = calloc(1, sizeof *h);
    if (!h)
        return NULL;
    h->client = c->id;
    h->req = req;
    copy_cmid(h->cmid, cmid);
    h->mode = mode;
    return h;
}

static void held_queue(ims_server *srv, ims_held *h)
{
    *srv->held_tail = h;
    srv->held_tail = &h->next;
}

/* A refusal of a SEND: held with the turn's other ACKs so that the sender sees its ACKs in the
 * order of its SENDs. */
static void refuse(ims_client *c, uint32_t req, const char *cmid, int code)
{
    c->srv->st[ST_MSGS_REFUSED]++;
    ims_held *h = held_new(c, req, cmid, IMP_ACK_STORED);
    if (!h)
        return;
    h->code = code < 0 ? -code : code;
    held_queue(c->srv, h);
}

/* ---- DELIVER ------------------------------------------------------------------------------ */

static void build_deliver(imp_msg *d, const ims_message *msg, int transient)
{
    imp_msg_init(d, IMP_DELIVER, 0);
    imp_msg_set_u(d, IMP_T_TARGET_KIND, (uint64_t)msg->target_kind);
    if (msg->target_kind != IMP_TARGET_BROADCAST)
        imp_msg_set_s(d, IMP_T_TARGET, msg->target);
    if (transient)
        imp_msg_set_u(d, IMP_T_CLASS, IMP_CLASS_TRANSIENT);
    if (msg->headers && msg->headers_len)
        imp_msg_set_b(d, IMP_T_HEADERS, msg->headers, msg->headers_len);
    imp_msg_set_b(d, IMP_T_BODY, msg->body, msg->body_len);
    imp_msg_set_u(d, IMP_T_MSG_ID, (uint64_t)msg->msg_id);
    imp_msg_set_u(d, IMP_T_SEQ, msg->seq);       /* IMP-DELIV-002: 0 for transient */
    imp_msg_set_s(d, IMP_T_SENDER, msg->sender); /* IMP-SEC-004: from the session */
    imp_msg_set_u(d, IMP_T_TIMESTAMP, (uint64_t)(msg->ts_ms < 0 ? 0 : msg->ts_ms));
}

static int send_deliver(ims_client *c, const ims_message *msg, int transient)
{
    imp_msg d;
    build_deliver(&d, msg, transient);
    if (transient)
        return ims_client_send(c, &d);
    /* A stored message may be bigger than any the current limits admit: stored under a larger
     * max_frame, which a restart or a SIGHUP lowered with output_hard (IMP-DELIV-004: it must
     * still get through; before, its recipient was closed as a slow consumer at every login).
     * Such a frame alone gets the cap raised for it. A frame of an admissible size that does
     * not fit means a slow consumer, as always (IMP-DELIV-007). */
    imp_ssize size = imp_msg_encoded_size(&d);
    size_t hard = c->srv->cfg.output_hard;
    size_t pending = ims_client_pending(c);
    if (size < 0 || pending + (size_t)size <= hard ||
        (size_t)size <= (size_t)c->srv->cfg.max_frame + IMS_DELIVER_GROWTH)
        return ims_client_send(c, &d);
    imp_conn_set_max_output(c->conn, pending + (size_t)size);
    int r = ims_client_send(c, &d);
    imp_conn_set_max_output(c->conn, hard);
    return r;
}

/* The DELIVER of a transient message, the same bytes for every recipient (SEQ 0): built,
 * validated and encoded once per message and queued on each session's output by reference
 * (issue 3: room fan-out; imp_conn_send_shared: the network layer writes the shared bytes, no
 * copy per member; the frame lives until the last member's output wrote it). The server's
 * reference is kept while one message fans out (transient ids are never reused); NULL when
 * it cannot be allocated: then each recipient's DELIVER is encoded on its own. */
static imp_prepared *transient_frame(ims_server *srv, const ims_message *msg)
{
    if (srv->tprep && srv->tprep_id == msg->msg_id)
        return srv->tprep;
    imp_prepared_free(srv->tprep);
    imp_msg d;
    build_deliver(&d, msg, 1);
    srv->tprep = imp_prepared_new(&d, NULL, NULL);
    srv->tprep_id = msg->msg_id;
    return srv->tprep;
}

struct pump_ctx {
    ims_client *c;
    int stop;
};

static int pump_cb(void *ud, const ims_message *m)
{
    struct pump_ctx *p = ud;
    ims_client *c = p->c;
    /* IMP-DELIV-001 with fsync_thread: committed but not yet on disk is not delivered yet (its
     * batch's release wakes this user again) */
    if (m->msg_id > ims_store_durable_msg_id(c->srv->store)) {
        p->stop = 1;
        return 1;
    }
    if (p->stop || c->reason || ims_client_pending(c) > c->srv->cfg.output_soft ||
        m->seq <= c->sent) {
        p->stop = p->stop || m->seq > c->sent;
        return p->stop;
    }
    if (send_deliver(c, m, 0) != 0) {
        p->stop = 1;
        return 1;
    }
    c->sent = m->seq; /* IMP-DELIV-002: in SEQ order */
    c->srv->st[ST_MSGS_DELIVERED]++;
    return 0;
}

void ims_deliver_pump(ims_client *c)
{
    ims_server *srv = c->srv;
    ims_ouser *u = c->u;
    if (!u || !ims_client_ready(c))
        return;
    if (ims_store_in_batch(srv->store))
        return; /* IMP-DELIV-001: only committed messages are delivered */
    if (c->sent < u->acked)
        c->sent = u->acked; /* IMP-DELIV-003 */
    /* IMP-DELIV-004: from the acked mark (or this session's cursor) on, in pages, within the
     * window of unacknowledged messages and while the output is under the soft cap */
    while (!c->reason && c->sent < u->last_seq && c->sent - u->acked < IMS_WINDOW &&
           ims_client_pending(c) <= srv->cfg.output_soft) {
        uint64_t room = IMS_WINDOW - (c->sent - u->acked);
        int limit = room < IMS_READ_PAGE ? (int)room : IMS_READ_PAGE;
        uint64_t before = c->sent;
        struct pump_ctx p = {c, 0};
        int n = ims_store_queue_read(srv->store, u->id, c->sent, limit, pump_cb, &p);
        if (n <= 0 || c->sent == before || p.stop)
            break;
    }
}

/* ---- the turn ----------------------------------------------------------------------------- */

void ims_note_add(ims_server *srv, int64_t uid, uint64_t seq)
{
    if (srv->nnotes == srv->capnotes) {
        size_t cap = srv->capnotes ? srv->capnotes * 2 : 64;
        struct ims_note *n = realloc(srv->notes, cap * sizeof *n);
        if (!n)
            return; /* the user's next login or DELIVERED still reads the queue */
        srv->notes = n;
        srv->capnotes = cap;
    }
    srv->notes[srv->nnotes].user_id = uid;
    srv->notes[srv->nnotes].seq = seq;
    srv->nnotes++;
}

void ims_deliver_flush(ims_server *srv, int commit_ok)
{
    ims_held *list = srv->held;
    srv->held = NULL;
    srv->held_tail = &srv->held;
    while (list) {
        ims_held *h = list;
        list = h->next;
        h->next = NULL;
        if (!commit_ok && !h->code) {
            h->code = -IMP_ERR_STORAGE; /* IMP-DELIV-001: not durable, not acknowledged */
            h->duplicate = 0;
            srv->st[ST_MSGS_REFUSED]++;
        }
        if (h->code) {
            send_ack(srv, h, IMP_OUTCOME_REFUSED);
        } else if (h->mode == IMP_ACK_NONE) {
            /* no ACK on success */
        } else if (h->mode == IMP_ACK_DELIVERED && h->nwait > 0) {
            h->next = srv->waiting;
            srv->waiting = h;
            continue;
        } else {
            send_ack(srv, h, IMP_OUTCOME_STORED);
        }
        held_free(h);
    }
    if (commit_ok) {
        for (size_t i = 0; i < srv->nnotes; i++) {
            ims_bus_event ev = {
                IMS_BUS_QUEUED, srv->notes[i].user_id, srv->notes[i].seq, NULL, 0, 0, NULL, 0};
            ims_bus_publish(srv->bus, &ev);
        }
    }
    srv->nnotes = 0;
    ims_ouser *d = srv->dirty;
    srv->dirty = NULL;
    while (d) {
        ims_ouser *u = d;
        d = u->dnext;
        u->dirty = 0;
        u->dnext = NULL;
        for (ims_client *c = u->sessions; c; c = c->unext)
            ims_deliver_pump(c);
        ims_ouser_release(srv, u);
    }
}

/* A transient message to every ready session of u, except the one that sent it. *frame is the
 * message's encoded DELIVER, looked up on the first session that takes it (NULL: not yet).
 * shared: queued by reference (a room's or a broadcast's fan-out); else copied into the
 * session's output (a direct message: one reference per small frame would make the writes
 * gather many small segments, about 13 % slower for transient direct messages). */
static void transient_to_user(ims_server *srv, ims_ouser *u, ims_bus_event *ev,
                              imp_prepared **frame, int shared)
{
    for (ims_client *c = u->sessions; c; c = c->unext) {
        if (c->id == ev->origin || !ims_client_ready(c))
            continue;
        if (ims_client_pending(c) > srv->cfg.output_soft) {
            srv->st[ST_TRANSIENT_DROPPED]++; /* IMP-DELIV-007: counted and dropped */
            continue;
        }
        if (!*frame)
            *frame = transient_frame(srv, ev->msg);
        imp_prepared *p = *frame;
        int r = !p       ? send_deliver(c, ev->msg, 1)
                : shared ? ims_client_send_shared(c, p)
                         : ims_client_send_prepared(c, p);
        if (r == 0) {
            srv->st[ST_TRANSIENT_DELIVERED]++;
            ev->ack_count++;
        } else {
            srv->st[ST_TRANSIENT_DROPPED]++;
        }
    }
}

/* Room fan-out (issue 3): a transient message to every session of n users. The per-member work
 * is small; what costs is fetching each member's cold memory (its ims_ouser, its session, the
 * session's libimp connection (with its list of shared frames) and the network layer's connection),
 * one dependent load after another. So the members are taken a block at a time: their users are
 * looked up first (the next ones' hash chains prefetched), then, while member i is served, the
 * memory of the members a few places further on is prefetched, stage by stage, so that those
 * loads overlap. Prefetches are hints only: what is served and in which order is exactly the
 * loop over ids, one user after another. (Software prefetching of a pointer-chasing loop: the
 * idea is the textbook one, e.g. "group prefetching" of hash joins, Chen et al., ICDE 2004.) */
#define FANOUT_BLOCK 128
#define FANOUT_AHEAD_USER 8   /* users' hash chain heads */
#define FANOUT_AHEAD_CLIENT 8 /* a user's first session */
#define FANOUT_AHEAD_CONN 4   /* that session's connection objects */

#if defined(__GNUC__) || defined(__clang__)
#define PREFETCH(p) __builtin_prefetch(p)
#else
#define PREFETCH(p) ((void)(p))
#endif

static void prefetch_lines(const void *p, size_t bytes)
{
    for (size_t off = 0; off < bytes; off += 64)
        PREFETCH((const char *)p + off);
}

static void transient_to_users(ims_server *srv, const int64_t *ids, size_t n, ims_bus_event *ev)
{
    imp_prepared *frame = NULL;
    ims_ouser *us[FANOUT_BLOCK];
    for (size_t base = 0; base < n; base += FANOUT_BLOCK) {
        size_t k = n - base < FANOUT_BLOCK ? n - base : FANOUT_BLOCK;
        const int64_t *bid = ids + base;
        for (size_t i = 0; i < k; i++) {
            if (i + FANOUT_AHEAD_USER < k) /* the bucket of ims_ouser_find (server.c) */
                PREFETCH(srv->ubucket[(uint64_t)bid[i + FANOUT_AHEAD_USER] % IMS_USER_BUCKETS]);
            us[i] = ims_ouser_find(srv, bid[i]);
        }
        for (size_t i = 0; i < k; i++) {
            ims_ouser *a;
            if (i + FANOUT_AHEAD_CLIENT < k && (a = us[i + FANOUT_AHEAD_CLIENT]) && a->sessions)
                prefetch_lines(a->sessions, 192); /* the fields used: its first 3 lines */
            if (i + FANOUT_AHEAD_CONN < k && (a = us[i + FANOUT_AHEAD_CONN]) && a->sessions) {
                prefetch_lines(a->sessions->conn, 192); /* libimp's imp_conn: ~3 lines */
                PREFETCH(a->sessions->io);
            }
            if (us[i])
                transient_to_user(srv, us[i], ev, &frame, 1);
        }
    }
}

void ims_deliver_bus_event(void *ud, ims_bus_event *ev)
{
    ims_server *srv = ud;
    if (ev->kind == IMS_BUS_QUEUED) {
        ims_ouser *u = ims_ouser_find(srv, ev->user_id);
        if (!u || u->nsessions == 0)
            return;
        if (ev->seq > u->last_seq)
            u->last_seq = ev->seq;
        ims_ouser_dirty(srv, u);
        return;
    }
    imp_prepared *frame = NULL;
    if (ev->kind == IMS_BUS_TRANSIENT_MANY) {
        transient_to_users(srv, ev->user_ids, ev->n_users, ev);
        return;
    }
    /* transient: every session of the user online now (user_id 0: every online user) */
    if (ev->user_id != 0) {
        ims_ouser *u = ims_ouser_find(srv, ev->user_id);
        if (u)
            transient_to_user(srv, u, ev, &frame, 0);
        return;
    }
    for (size_t i = 0; i < IMS_USER_BUCKETS; i++)
        for (ims_ouser *u = srv->ubucket[i]; u; u = u->hnext)
            transient_to_user(srv, u, ev, &frame, 1);
}

/* ---- ACK_MODE 2 --------------------------------------------------------------------------- */

/* Removes u's waits that are done (acked >= seq, or all when offline), then answers what is
 * done. The answers go out after the list walk: sending can close a client, which can come back
 * here (its user going offline). */
static void waits_update(ims_server *srv, ims_ouser *u, int offline)
{
    ims_held **pp = &srv->waiting, *done = NULL, **tail = &done;
    while (*pp) {
        ims_held *h = *pp;
        for (int i = 0; i < h->nwait;) {
            if (h->wait_user[i] == u->id && (offline || u->acked >= h->wait_seq[i])) {
                if (offline)
                    h->lost = 1;
                h->nwait--;
                h->wait_user[i] = h->wait_user[h->nwait];
                h->wait_seq[i] = h->wait_seq[h->nwait];
            } else {
                i++;
            }
        }
        if (h->nwait == 0) {
            *pp = h->next;
            h->next = NULL;
            *tail = h;
            tail = &h->next;
        } else {
            pp = &h->next;
        }
    }
    while (done) {
        ims_held *h = done;
        done = h->next;
        send_ack(srv, h, h->lost ? IMP_OUTCOME_STORED : IMP_OUTCOME_DELIVERED);
        held_free(h);
    }
}

void ims_deliver_acked(ims_server *srv, ims_ouser *u)
{
    /* IMP-DELIV-003: every session's delivery position moves past the acked mark */
    for (ims_client *c = u->sessions; c; c = c->unext)
        if (c->sent < u->acked)
            c->sent = u->acked;
    waits_update(srv, u, 0);
    ims_ouser_dirty(srv, u); /* the window has room again */
}

void ims_deliver_user_offline(ims_server *srv, ims_ouser *u)
{
    waits_update(srv, u, 1);
}

void ims_deliver_forget_client(ims_server *srv, ims_client *c)
{
    ims_held **pp = &srv->waiting;
    while (*pp) {
        ims_held *h = *pp;
        if (h->client == c->id) {
            *pp = h->next;
            held_free(h);
        } else {
            pp = &h->next;
        }
    }
}

void ims_deliver_free(ims_server *srv)
{
    ims_held *lists[2] = {srv->held, srv->waiting};
    for (int i = 0; i < 2; i++) {
        while (lists[i]) {
            ims_held *h = lists[i];
            lists[i] = h->next;
            held_free(h);
        }
    }
    srv->held = srv->waiting = NULL;
    srv->held_tail = &srv->held;
    while (srv->batches) { /* fsync_thread: batches never released (imd stopping) */
        struct ims_batch *b = srv->batches;
        srv->batches = b->next;
        while (b->held) {
            ims_held *h = b->held;
            b->held = h->next;
            held_free(h);
        }
        free(b->notes);
        free(b);
    }
    srv->batches_tail = &srv->batches;
    ims_room_forget(srv, NULL);
    imp_prepared_free(srv->tprep);
    srv->tprep = NULL;
    free(srv->notes);
    srv->notes = NULL;
    srv->nnotes = srv->capnotes = 0;
}

/* ---- SEND --------------------------------------------------------------------------------- */

/* The digest that tells a retry from a different message under the same CLIENT_MSG_ID
 * (IMP-DELIV-005): target kind, target, headers and body, each length-prefixed. */
static void msg_digest(uint8_t out[32], int kind, const char *target, imp_bytes headers,
                       imp_bytes body)
{
    crypto_generichash_state st;
    uint8_t pre[6];
    size_t tl = strlen(target);
    crypto_generichash_init(&st, NULL, 0, 32);
    pre[0] = (uint8_t)kind;
    pre[1] = (uint8_t)tl;
    crypto_generichash_update(&st, pre, 2);
    crypto_generichash_update(&st, (const uint8_t *)target, tl);
    pre[0] = (uint8_t)(headers.len >> 24);
    pre[1] = (uint8_t)(headers.len >> 16);
    pre[2] = (uint8_t)(headers.len >> 8);
    pre[3] = (uint8_t)headers.len;
    crypto_generichash_update(&st, pre, 4);
    if (headers.len)
        crypto_generichash_update(&st, headers.p, headers.len);
    if (body.len)
        crypto_generichash_update(&st, body.p, body.len);
    crypto_generichash_final(&st, out, 32);
}

static int rate_ok(ims_client *c, uint32_t *wait_ms)
{
    ims_server *srv = c->srv;
    if (srv->cfg.msg_rate == 0)
        return 1;
    uint64_t now = ims_now_mono(srv);
    if (now > c->tokens_ms) {
        c->tokens += (double)(now - c->tokens_ms) * srv->cfg.msg_rate / 1000.0;
        if (c->tokens > srv->cfg.msg_burst)
            c->tokens = srv->cfg.msg_burst;
        c->tokens_ms = now;
    }
    if (c->tokens >= 1.0) {
        c->tokens -= 1.0;
        return 1;
    }
    *wait_ms = (uint32_t)((1.0 - c->tokens) * 1000.0 / srv->cfg.msg_rate) + 1;
    return 0;
}

static void send_transient(ims_client *c, const imp_msg *m, ims_message *msg, const int64_t *ids,
                           size_t n, const char *cmid, int mode)
{
    ims_server *srv = c->srv;
    srv->st[ST_TRANSIENT_IN]++;
    msg->msg_id = (int64_t)(IMS_TRANSIENT_ID_BIT | srv->next_transient_id++);
    msg->seq = 0; /* IMP-DELIV-002: transient messages are not in the sequence */
    if (n > 1) {  /* a room: one event for all its members (bus.h) */
        ims_bus_event ev = {IMS_BUS_TRANSIENT_MANY, 0, 0, msg, c->id, 0, ids, n};
        ims_bus_publish(srv->bus, &ev);
    } else if (n == 1) {
        ims_bus_event ev = {IMS_BUS_TRANSIENT, ids[0], 0, msg, c->id, 0, NULL, 0};
        ims_bus_publish(srv->bus, &ev);
    }
    imp_prepared_free(srv->tprep); /* the fan-out is over */
    srv->tprep = NULL;
    if (mode == IMP_ACK_NONE)
        return;
    ims_held h;
    memset(&h, 0, sizeof h);
    h.client = c->id;
    h.req = m->request_id;
    copy_cmid(h.cmid, cmid);
    h.msg_id = msg->msg_id;
    send_ack(srv, &h, mode == IMP_ACK_DELIVERED ? IMP_OUTCOME_DELIVERED : IMP_OUTCOME_STORED);
}

/* IMP-DELIV-005, IMP-DELIV-007: a SEND whose CLIENT_MSG_ID its sender used before is a duplicate
 * (ACKed again with the first msg_id) when its content is the same, else ID_CONFLICT, whatever
 * else would refuse it now: a retry after the sender left the room, or once the recipient's
 * queue is full, is still a duplicate. ims_deliver_send asks only when it would refuse (or when
 * the store's insert of the dedupe row found the id): new ids, nearly every SEND, cost no
 * lookup. 1 when c was answered here, 0 when the id is new. */
static int dup_answer(ims_client *c, uint32_t req, const char *cmid, const uint8_t dg[32], int mode)
{
    ims_server *srv = c->srv;
    int64_t first = 0;
    uint8_t old[32];
    int dr = ims_store_dedupe_get(srv->store, c->u->id, cmid, &first, old);
    if (dr == 0)
        return 0;
    if (dr < 0) {
        refuse(c, req, cmid, IMP_ERR_STORAGE);
        return 1;
    }
    if (sodium_memcmp(old, dg, 32) != 0) {
        refuse(c, req, cmid, IMP_ERR_ID_CONFLICT);
        return 1;
    }
    srv->st[ST_MSGS_DUPLICATE]++;
    ims_held *h = held_new(c, req, cmid, mode == IMP_ACK_NONE ? IMP_ACK_NONE : 1);
    if (h) {
        h->msg_id = first;
        h->duplicate = 1;
        held_queue(srv, h);
    }
    return 1;
}

void ims_deliver_send(ims_client *c, const imp_msg *m)
{
    ims_server *srv = c->srv;
    ims_store *st = srv->store;
    uint32_t req = m->request_id;
    srv->st[ST_MSGS_IN]++;
    int kind = (int)imp_msg_u(m, IMP_T_TARGET_KIND, 0);
    int transient = imp_msg_u(m, IMP_T_CLASS, IMP_CLASS_DURABLE) == IMP_CLASS_TRANSIENT;
    int mode = (int)imp_msg_u(m, IMP_T_ACK_MODE, IMP_ACK_STORED);
    imp_bytes headers = imp_msg_b(m, IMP_T_HEADERS);
    imp_bytes body = imp_msg_b(m, IMP_T_BODY);
    char cmid[65] = "";
    imp_bytes cb = imp_msg_b(m, IMP_T_CLIENT_MSG_ID);
    if (cb.len > 64)
        cb.len = 64;
    memcpy(cmid, cb.p ? (const void *)cb.p : "", cb.len);
    cmid[cb.len] = '\0';
    char target[33] = "";
    if (kind != IMP_TARGET_BROADCAST && ims_fold(imp_msg_b(m, IMP_T_TARGET), target) != 0) {
        refuse(c, req, cmid, IMP_ERR_BAD_REQUEST);
        return;
    }
    uint32_t wait = 0;
    if (!rate_ok(c, &wait)) {
        if (transient) {
            srv->st[ST_MSGS_REFUSED]++;
            ims_held h;
            memset(&h, 0, sizeof h);
            h.client = c->id;
            h.req = req;
            copy_cmid(h.cmid, cmid);
            h.code = -IMP_ERR_RATE_LIMITED;
            send_ack(srv, &h, IMP_OUTCOME_REFUSED);
        } else {
            refuse(c, req, cmid, IMP_ERR_RATE_LIMITED);
        }
        return;
    }
    /* The turn's batch is opened before the lookups: reads inside the write transaction skip
     * SQLite's per-statement read-lock round trips (most of a SEND's cost otherwise). A
     * transient message writes nothing: it opens no batch (its rare store reads run alone). */
    if (!transient)
        (void)ims_store_begin(st);
    /* the content's digest: only the dedupe check and row need it (about 5 % of a durable
     * SEND's cost), so only with a CLIENT_MSG_ID */
    uint8_t dg[32];
    int dup = !transient && cmid[0]; /* a refusal below asks dup_answer first */
    if (dup)
        msg_digest(dg, kind, target, headers, body);
    /* targets */
    int64_t rid = 0;
    int64_t *ids = NULL;
    size_t n = 0;
    int r = 0, cached = 0;
    if (kind == IMP_TARGET_USER) {
        /* a user in memory (online) needs no store lookup: the hot path of direct messages */
        ims_ouser *ou = ims_ouser_find_name(srv, target);
        ims_user ru;
        if (ou)
            rid = ou->id;
        else if ((r = ims_store_user_get(st, target, &ru)) == 0)
            rid = ru.id;
        if (r == 0) {
            ids = &rid;
            n = 1;
        }
    } else if (kind == IMP_TARGET_ROOM && transient) {
        /* issue 3 (room fan-out): the members from the room cache, not 1,000 rows a message */
        const int64_t *cids = NULL;
        r = ims_room_members(srv, target, c->u->id, &cids, &n);
        ids = (int64_t *)cids; /* not freed: the cache's (see below) */
        cached = 1;
    } else if (kind == IMP_TARGET_ROOM) {
        r = ims_store_room_is_member(st, target, c->u->id);
        if (r == 0)
            r = IMP_ERR_NOT_MEMBER;
        else if (r == 1)
            r = ims_store_room_member_ids(st, target, &ids, &n);
    } else if (!c->u->admin) {
        r = IMP_ERR_FORBIDDEN; /* broadcast: administrators only */
    } else if (!transient) {
        r = ims_store_all_user_ids(st, &ids, &n);
    }
    if (r < 0) {
        if (transient) {
            srv->st[ST_MSGS_REFUSED]++;
            ims_held h;
            memset(&h, 0, sizeof h);
            h.client = c->id;
            h.req = req;
            copy_cmid(h.cmid, cmid);
            h.code = -r;
            send_ack(srv, &h, IMP_OUTCOME_REFUSED);
        } else if (!dup || !dup_answer(c, req, cmid, dg, mode)) {
            refuse(c, req, cmid, r);
        }
        return;
    }
    ims_message msg;
    memset(&msg, 0, sizeof msg);
    msg.sender_id = c->u->id;
    memcpy(msg.sender, c->u->name, strlen(c->u->name) + 1); /* <= 32 bytes, sized to fit */
    msg.target_kind = kind;
    memcpy(msg.target, target, sizeof msg.target);
    msg.ts_ms = ims_now_wall(srv);
    msg.headers = headers.len ? headers.p : NULL;
    msg.headers_len = headers.len;
    msg.body = body.p ? body.p : (const uint8_t *)"";
    msg.body_len = body.len;
    if (srv->monitors > 0) { /* formatted only when someone watches */
        char mon[96];
        static const char *const kinds[] = {"?", "user:", "room:", "broadcast"};
        snprintf(mon, sizeof mon, "target=%s%s size=%zu%s",
                 kinds[kind >= 1 && kind <= 3 ? kind : 0], target, body.len,
                 transient ? " transient" : "");
        ims_monitor(srv, "send", c->u->name, mon); /* never the body */
    }
    if (transient) {
        int64_t all = 0;
        if (kind == IMP_TARGET_BROADCAST) {
            ids = &all; /* 0: every online user */
            n = 1;
        }
        send_transient(c, m, &msg, ids, n, cmid, mode);
        if (ids != &rid && ids != &all && !cached)
            free(ids);
        return;
    }
    if (kind == IMP_TARGET_USER) {
        /* IMP-DELIV-007: a full offline queue refuses before anything is stored */
        int64_t count = 0;
        r = ims_store_queue_count(st, rid, &count);
        if (r != 0 || count >= srv->cfg.offline_quota) {
            if (!dup || !dup_answer(c, req, cmid, dg, mode))
                refuse(c, req, cmid, r != 0 ? IMP_ERR_STORAGE : IMP_ERR_QUOTA);
            return;
        }
    }
    uint64_t *seqs = calloc(n ? n : 1, sizeof *seqs);
    int64_t msg_id = 0;
    r = seqs ? ims_store_begin(st) : IMP_ERR_NOMEM;
    /* IMP-DELIV-002, IMP-DELIV-008: stored once, queued for every recipient under their next
     * seq, room members (the sender's own user included) in the same batch as the message */
    if (r == 0)
        r = ims_store_message_put(st, &msg, cmid[0] ? cmid : NULL, dg, ids, n, &msg_id, seqs);
    if (r != 0) {
        free(seqs);
        if (ids != &rid)
            free(ids);
        /* ID_CONFLICT: the dedupe row is there (the store refused before writing anything) */
        if (!dup || !dup_answer(c, req, cmid, dg, mode))
            refuse(c, req, cmid, IMP_ERR_STORAGE);
        return;
    }
    if (kind == IMP_TARGET_ROOM && srv->cfg.room_history > 0)
        (void)ims_store_room_prune(st, target, srv->cfg.room_history);
    srv->st[ST_MSGS_STORED]++;
    ims_held *h = held_new(c, req, cmid, mode);
    if (h)
        h->msg_id = msg_id;
    for (size_t i = 0; i < n; i++) {
        ims_note_add(srv, ids[i], seqs[i]);
        ims_ouser *u = ims_ouser_find(srv, ids[i]);
        if (h && mode == IMP_ACK_DELIVERED && u && u->nsessions > 0) {
            int64_t *wu = realloc(h->wait_user, (size_t)(h->nwait + 1) * sizeof *wu);
            if (wu)
                h->wait_user = wu;
            uint64_t *ws = wu ? realloc(h->wait_seq, (size_t)(h->nwait + 1) * sizeof *ws) : NULL;
            if (ws) {
                h->wait_seq = ws;
                h->wait_user[h->nwait] = ids[i];
                h->wait_seq[h->nwait] = seqs[i];
                h->nwait++;
            }
        }
    }
    if (h)
        held_queue(srv, h); /* IMP-DELIV-001: answered after the commit */
    free(seqs);
    if (ids != &rid)
        free(ids);
}

void ims_deliver_delivered(ims_client *c, const imp_msg *m)
{
    ims_server *srv = c->srv;
    ims_ouser *u = c->u;
    uint64_t upto = imp_msg_u(m, IMP_T_SEQ, 0);
    uint64_t acked = u->acked;
    int r = ims_store_begin(srv->store);
    /* IMP-DELIV-003: cumulative, durable with the turn's commit; above last_seq: BAD_REQUEST */
    if (r == 0)
        r = ims_store_queue_ack(srv->store, u->id, upto, &acked);
    if (r == IMP_ERR_BAD_REQUEST) {
        ims_client_error(c, m->request_id, IMP_ERR_BAD_REQUEST, "SEQ above the last assigned", 0);
        return;
    }
    if (r != 0) {
        ims_client_error(c, m->request_id, IMP_ERR_STORAGE, NULL, 0);
        return;
    }
    if (acked > u->acked) {
        u->acked = acked;
        ims_deliver_acked(srv, u);
    }
}
