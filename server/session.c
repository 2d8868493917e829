/* imd — accounts and sessions: REGISTER, LOGIN (password or resume token), AUTH_OK, the end of
 * a session. Password hashing runs on the hash pool (auth.h); its results come back through
 * ims_server_auth_ready with the client's id as cookie — a client that closed meanwhile is
 * gone from the id table and its result is dropped.
 *
 * Choices where SPEC.md is silent:
 * - A user with max_sessions_per_user sessions already is refused with the non-fatal ERROR
 *   FORBIDDEN (502) "session limit reached", after the credentials were checked (so it reveals
 *   nothing to who does not know them); the client may log in once another session ended.
 * - LOGIN's LAST_SEQ above the highest sequence number ever assigned is taken as that number
 *   (a client restored from a newer backup must still be able to log in).
 * - A resume token must belong to LOGIN's USER, else TOKEN_INVALID. Tokens are 32 random bytes;
 *   only their crypto_generichash is stored, valid token_ttl_ms; a login with a token gives a
 *   new token and leaves the old one valid until it expires (several devices may share one).
 * - AUTH_OK goes out at once; its writes (the token, the LAST_SEQ acknowledgement) are
 *   committed with the turn. The queued messages follow after the commit (turn_end).
 */
#include <string.h>

#include <sodium.h>

#include <imp/imp.h>

#include "core.h"
#include "log.h"

#define MIN_PASSWORD 8
#define BUSY_RETRY_MS 1000

/* Throttle check before an attempt (IMP-SEC-003). 0 allowed, else the client was answered. */
static int throttled(ims_client *c, uint32_t req, const char *user)
{
    uint32_t retry = 0;
    char addr[64];
    int r = ims_throttle_check(c->srv->throttle, ims_client_addr(c, addr), user,
                               ims_now_mono(c->srv), &retry);
    if (r == 0)
        return 0;
    if (r == IMP_ERR_BANNED)
        ims_client_error(c, req, IMP_ERR_BANNED, "address temporarily banned", retry);
    else
        ims_client_error(c, req, IMP_ERR_AUTH_BACKOFF, "too many failures, retry later",
                         retry ? retry : 1);
    return 1;
}

/* Hands the password to the hash pool; a holds what the result needs (kept in c->auth, a
 * block of its own, until then). */
static int submit(ims_client *c, const ims_authing *a, ims_auth_kind kind, int64_t user_id,
                  imp_bytes pw, const char *hash)
{
    uint32_t req = a->req;
    c->auth = malloc(sizeof *c->auth);
    if (!c->auth) {
        ims_client_error(c, req, IMP_ERR_INTERNAL, NULL, 0);
        return IMP_ERR_NOMEM;
    }
    *c->auth = *a;
    int r = ims_auth_submit(c->srv->auth, kind, c->id, user_id, pw.p, pw.len, hash);
    if (r != 0) {
        free(c->auth);
        c->auth = NULL;
    }
    if (r == IMP_ERR_BUSY) {
        c->srv->st[ST_HASH_BUSY]++;
        ims_client_error(c, req, IMP_ERR_BUSY, "server busy, retry later", BUSY_RETRY_MS);
        return r;
    }
    if (r != 0) {
        ims_client_error(c, req, IMP_ERR_INTERNAL, NULL, 0);
        return r;
    }
    c->phase = CL_HASHING;
    return 0;
}

void ims_session_register(ims_client *c, const imp_msg *m)
{
    ims_server *srv = c->srv;
    uint32_t req = m->request_id;
    char name[33];
    if (ims_fold(imp_msg_b(m, IMP_T_USER), name) != 0) {
        ims_client_error(c, req, IMP_ERR_BAD_NAME, NULL, 0);
        return;
    }
    if (!srv->cfg.registration || srv->shutting_down) {
        ims_client_error(c, req, IMP_ERR_REGISTRATION_CLOSED, "registration is closed", 0);
        return;
    }
    imp_bytes pw = imp_msg_b(m, IMP_T_PASSWORD);
    if (pw.len < MIN_PASSWORD) {
        ims_client_error(c, req, IMP_ERR_WEAK_PASSWORD, "at least 8 bytes", 0);
        return;
    }
    if (throttled(c, req, NULL))
        return;
    ims_user u;
    int r = ims_store_user_get(srv->store, name, &u);
    if (r == 0) {
        /* counted against the address: enumerating names through REGISTER is throttled too */
        char addr[64];
        ims_throttle_record(srv->throttle, ims_client_addr(c, addr), NULL, 0, ims_now_mono(srv));
        ims_client_error(c, req, IMP_ERR_USER_EXISTS, NULL, 0);
        return;
    }
    if (r != IMP_ERR_NO_SUCH_USER) {
        ims_client_error(c, req, IMP_ERR_STORAGE, NULL, 0);
        return;
    }
    ims_authing a;
    memset(&a, 0, sizeof a);
    a.req = req;
    a.reg = 1;
    memcpy(a.user, name, sizeof name);
    submit(c, &a, IMS_AUTH_HASH, 0, pw, NULL);
}

static void complete_login(ims_client *c, ims_user *su, const ims_authing *a);

void ims_session_login(ims_client *c, const imp_msg *m)
{
    ims_server *srv = c->srv;
    uint32_t req = m->request_id;
    char name[33];
    if (ims_fold(imp_msg_b(m, IMP_T_USER), name) != 0) {
        ims_client_error(c, req, IMP_ERR_AUTH_FAILED, NULL, 0);
        return;
    }
    if (srv->shutting_down) {
        ims_client_error(c, req, IMP_ERR_SHUTDOWN, "server shutting down", 0);
        return;
    }
    /* A resume token cannot be guessed: only the address ban applies to it, so that an account
     * under a password-guessing attack (backoff) stays reachable for its own devices. */
    if (throttled(c, req, imp_msg_has(m, IMP_T_TOKEN) ? NULL : name))
        return;
    ims_authing a;
    memset(&a, 0, sizeof a);
    a.req = req;
    memcpy(a.user, name, sizeof name);
    a.has_last_seq = imp_msg_has(m, IMP_T_LAST_SEQ) != 0;
    a.last_seq = imp_msg_u(m, IMP_T_LAST_SEQ, 0);
    ims_user u;
    if (imp_msg_has(m, IMP_T_TOKEN)) {
        /* a resume token: no hashing on the pool, a one-way hash to look it up */
        imp_bytes tok = imp_msg_b(m, IMP_T_TOKEN);
        uint8_t h[32];
        int64_t uid = 0;
        crypto_generichash(h, sizeof h, tok.p, tok.len, NULL, 0);
        int r = ims_store_token_check(srv->store, h, ims_now_wall(srv), &uid);
        if (r == 0)
            r = ims_store_user_get_id(srv->store, uid, &u);
        if (r == 0 && strcmp(u.name, name) != 0)
            r = IMP_ERR_TOKEN_INVALID;
        if (r != 0) {
            char addr[64];
            ims_throttle_record(srv->throttle, ims_client_addr(c, addr), NULL, 0,
                                ims_now_mono(srv));
            srv->st[ST_LOGINS_FAILED]++;
            ims_client_error(c, req, r == IMP_ERR_STORAGE ? IMP_ERR_STORAGE : IMP_ERR_TOKEN_INVALID,
                             NULL, 0);
            return;
        }
        complete_login(c, &u, &a);
        return;
    }
    /* IMP-SEC-003: an unknown user is verified against the dummy hash, so that both fail
     * alike, in the same time, with AUTH_FAILED */
    int r = ims_store_user_get(srv->store, name, &u);
    if (r != 0 && r != IMP_ERR_NO_SUCH_USER) {
        ims_client_error(c, req, IMP_ERR_STORAGE, NULL, 0);
        return;
    }
    submit(c, &a, IMS_AUTH_VERIFY, r == 0 ? u.id : 0, imp_msg_b(m, IMP_T_PASSWORD),
           r == 0 ? u.hash : "");
}

static void auth_failed(ims_client *c, const ims_authing *a)
{
    ims_server *srv = c->srv;
    char addr[64];
    ims_throttle_record(srv->throttle, ims_client_addr(c, addr), a->user, 0, ims_now_mono(srv));
    srv->st[ST_LOGINS_FAILED]++;
    ims_monitor(srv, "login_failed", NULL, c->peer);
    ims_client_error(c, a->req, IMP_ERR_AUTH_FAILED, "authentication failed", 0);
}

void ims_session_auth_result(void *ud, const ims_auth_result *r)
{
    ims_server *srv = ud;
    ims_client *c = ims_client_by_id(srv, r->cookie);
    if (!c || c->reason || c->phase != CL_HASHING || !c->auth)
        return; /* the client went away while its hash was computed */
    c->phase = CL_PREAUTH;
    /* the login-time state is not kept past this */
    ims_authing a = *c->auth;
    free(c->auth);
    c->auth = NULL;
    ims_user u;
    if (a.reg) {
        if (!r->ok || r->kind != IMS_AUTH_HASH) {
            ims_client_error(c, a.req, IMP_ERR_INTERNAL, NULL, 0);
            return;
        }
        int64_t id = 0;
        int e = ims_store_begin(srv->store);
        if (e == 0) /* USER_EXISTS is checked again here: a race with another REGISTER */
            e = ims_store_user_create(srv->store, a.user, r->hash, 0, ims_now_wall(srv), &id);
        if (e == 0)
            e = ims_store_user_get_id(srv->store, id, &u);
        if (e != 0) {
            ims_client_error(c, a.req,
                             e == IMP_ERR_USER_EXISTS ? IMP_ERR_USER_EXISTS : IMP_ERR_STORAGE, NULL,
                             0);
            return;
        }
        srv->st[ST_REGISTRATIONS]++;
        ims_monitor(srv, "register", u.name, c->peer);
        complete_login(c, &u, &a);
        return;
    }
    if (!r->ok || r->user_id == 0 || ims_store_user_get_id(srv->store, r->user_id, &u) != 0) {
        auth_failed(c, &a);
        return;
    }
    if (r->needs_rehash && r->hash[0] && ims_store_begin(srv->store) == 0)
        (void)ims_store_user_set_hash(srv->store, u.id, r->hash);
    char addr[64];
    ims_throttle_record(srv->throttle, ims_client_addr(c, addr), u.name, 1, ims_now_mono(srv));
    complete_login(c, &u, &a);
}

static void complete_login(ims_client *c, ims_user *su, const ims_authing *a)
{
    ims_server *srv = c->srv;
    uint32_t req = a->req;
    ims_ouser *ou = ims_ouser_find(srv, su->id);
    if (ou && ou->nsessions >= srv->cfg.max_sessions_per_user) {
        ims_client_error(c, req, IMP_ERR_FORBIDDEN, "session limit reached", 0);
        return;
    }
    if (ims_store_begin(srv->store) != 0) {
        ims_client_error(c, req, IMP_ERR_STORAGE, NULL, 0);
        return;
    }
    if (a->has_last_seq) {
        /* IMP-DELIV-004: LOGIN's LAST_SEQ is a DELIVERED(LAST_SEQ) first */
        uint64_t upto = a->last_seq < su->last_seq ? a->last_seq : su->last_seq;
        uint64_t acked = su->acked_seq;
        if (ims_store_queue_ack(srv->store, su->id, upto, &acked) == 0)
            su->acked_seq = acked;
    }
    uint8_t token[32], th[32];
    randombytes_buf(token, sizeof token);
    crypto_generichash(th, sizeof th, token, sizeof token, NULL, 0);
    int have_token = ims_store_token_add(srv->store, su->id, th,
                                         ims_now_wall(srv) + (int64_t)srv->cfg.token_ttl_ms) == 0;
    ou = ims_ouser_get(srv, su);
    if (!ou) {
        ims_client_error(c, req, IMP_ERR_INTERNAL, NULL, 0);
        return;
    }
    if (su->last_seq > ou->last_seq)
        ou->last_seq = su->last_seq;
    ou->admin = su->admin;
    if (su->acked_seq > ou->acked) {
        ou->acked = su->acked_seq;
        ims_deliver_acked(srv, ou);
    }
    imp_msg m;
    imp_msg_init(&m, IMP_AUTH_OK, req);
    imp_msg_set_s(&m, IMP_T_USER, ou->name); /* IMP-TEXT-003: the canonical name */
    if (have_token)
        imp_msg_set_b(&m, IMP_T_TOKEN, token, sizeof token);
    uint64_t sid = srv->next_session_id++;
    imp_msg_set_u(&m, IMP_T_SESSION_ID, sid);
    imp_msg_set_u(&m, IMP_T_LAST_SEQ, ou->acked);
    if (ou->admin)
        imp_msg_set_u(&m, IMP_T_ADMIN, 1);
    int sent = ims_client_send(c, &m);
    sodium_memzero(token, sizeof token); /* after the send: m views it */
    if (sent != 0) {
        ims_ouser_release(srv, ou);
        return;
    }
    c->phase = CL_READY;
    c->u = ou;
    c->unext = ou->sessions;
    ou->sessions = c;
    ou->nsessions++;
    /* IMP-DELIV-004: delivery starts after the acked mark; it is sent once the turn's writes
     * are committed (ims_server_turn_end) */
    c->sent = ou->acked;
    ims_ouser_dirty(srv, ou);
    srv->st[ST_LOGINS_OK]++;
    ims_monitor(srv, "login", ou->name, c->peer);
    if (ims_log_enabled(IMS_LOG_INFO))
        ims_log(IMS_LOG_INFO, "login", "user=%s addr=%s sessions=%d", ou->name, c->peer,
                ou->nsessions);
    if (ou->nsessions == 1) {
        ou->status = IMP_STATUS_ONLINE;
        ims_ouser_set_status_text(ou, NULL, 0);
        ims_presence_announce(srv, ou);
    }
}

void ims_session_end(ims_client *c)
{
    if (c->ended)
        return;
    c->ended = 1;
    ims_server *srv = c->srv;
    ims_ouser *ou = c->u;
    if (c->phase != CL_READY || !ou)
        return;
    ims_client **pp = &ou->sessions;
    while (*pp && *pp != c)
        pp = &(*pp)->unext;
    if (*pp)
        *pp = c->unext;
    ou->nsessions--;
    c->u = NULL;
    if (c->monitor)
        srv->monitors--;
    c->monitor = 0;
    if (ou->nsessions == 0) {
        ou->status = IMP_STATUS_OFFLINE;
        ims_ouser_set_status_text(ou, NULL, 0);
        ims_presence_announce(srv, ou);
        ims_deliver_user_offline(srv, ou);
        ims_monitor(srv, "offline", ou->name, NULL);
        /* freed at the end of the turn, never under a caller that iterates the user */
        ims_ouser_dirty(srv, ou);
    }
}
