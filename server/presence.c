/* imd — presence (SPEC.md section 5.5): PRESENCE, SUBSCRIBE, PRESENCE_EVENT, WHO.
 *
 * A user's status lives while they have a session on this server: the first session makes
 * them online (status online, no text), PRESENCE changes it for all their sessions, the last
 * session's end makes them offline. PRESENCE_EVENT (with SESSIONS = their number of sessions)
 * goes to every session that subscribed to the user and to every session of a user who shares a
 * room with them — on the first login, on each status change, and when the last session ends.
 *
 * Choices where SPEC.md is silent:
 * - SUBSCRIBE with ENABLE 1 answers OK and then one PRESENCE_EVENT per listed user with their
 *   current status (offline for unknown names too: nothing tells them apart). A session holds at
 *   most 1000 subscriptions; more are refused with TOO_LARGE and change nothing.
 * - Events are best effort: a session whose output is over output_soft does not get them.
 * - WHO lists the users online on this server, in name order; CURSOR is the last name.
 */
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <imp/imp.h>

#include "core.h"

static void event_to(ims_client *c, ims_ouser *u, int64_t now)
{
    if (!ims_client_ready(c) || ims_client_pending(c) > c->srv->cfg.output_soft)
        return;
    imp_msg e;
    imp_msg_init(&e, IMP_PRESENCE_EVENT, 0);
    imp_msg_set_s(&e, IMP_T_USER, u->name);
    imp_msg_set_u(&e, IMP_T_TIMESTAMP, (uint64_t)(now < 0 ? 0 : now));
    imp_msg_set_u(&e, IMP_T_STATUS, (uint64_t)(u->nsessions > 0 ? u->status : IMP_STATUS_OFFLINE));
    if (u->status_text)
        imp_msg_set_s(&e, IMP_T_STATUS_TEXT, u->status_text);
    imp_msg_set_u(&e, IMP_T_SESSIONS, (uint64_t)(u->nsessions > 0 ? u->nsessions : 0));
    ims_client_send(c, &e);
}

/* A new de-duplication mark (ims_client.mark is 16 bits, issue 3): when the marks run out,
 * every client's is cleared and they start again at 1, so an old mark never matches. */
static unsigned next_mark(ims_server *srv)
{
    if (++srv->mark > UINT16_MAX) {
        for (ims_client *c = srv->clients; c; c = c->next)
            c->mark = 0;
        srv->mark = 1;
    }
    return srv->mark;
}

static int subscribed(const ims_client *c, const char *name)
{
    for (int i = 0; i < c->nsubs; i++)
        if (strcmp(c->subs[i], name) == 0)
            return 1;
    return 0;
}

struct ann {
    ims_server *srv;
    ims_ouser *u;
    int64_t now;
};

static int room_cb(void *ud, const char *room)
{
    struct ann *a = ud;
    int64_t *ids = NULL;
    size_t n = 0;
    if (ims_store_room_member_ids(a->srv->store, room, &ids, &n) != 0)
        return 0;
    for (size_t i = 0; i < n; i++) {
        if (ids[i] == a->u->id)
            continue;
        ims_ouser *p = ims_ouser_find(a->srv, ids[i]);
        if (!p)
            continue;
        for (ims_client *c = p->sessions; c; c = c->unext) {
            if (c->mark == a->srv->mark)
                continue;
            c->mark = (uint16_t)a->srv->mark;
            event_to(c, a->u, a->now);
        }
    }
    free(ids);
    return 0;
}

void ims_presence_announce(ims_server *srv, ims_ouser *u)
{
    if (srv->shutting_down)
        return; /* everyone is being told SHUTDOWN */
    struct ann a = {srv, u, ims_now_wall(srv)};
    uint16_t mark = (uint16_t)next_mark(srv);
    for (ims_client *c = u->sessions; c; c = c->unext)
        c->mark = mark; /* not to the user's own sessions */
    for (ims_client *c = srv->subscribers > 0 ? srv->clients : NULL; c; c = c->next) {
        if (c->mark == mark || !c->nsubs || !subscribed(c, u->name))
            continue;
        c->mark = mark;
        event_to(c, u, a.now);
    }
    (void)ims_store_user_rooms(srv->store, u->id, room_cb, &a);
}

void ims_presence_set(ims_client *c, const imp_msg *m)
{
    ims_ouser *u = c->u;
    int status = (int)imp_msg_u(m, IMP_T_STATUS, IMP_STATUS_ONLINE);
    if (status < IMP_STATUS_ONLINE || status > IMP_STATUS_BUSY) {
        ims_client_error(c, m->request_id, IMP_ERR_BAD_REQUEST, NULL, 0); /* IMP-MSG-008 */
        return;
    }
    imp_bytes t = imp_msg_b(m, IMP_T_STATUS_TEXT);
    size_t n = t.len < 256 ? t.len : 256;
    size_t cur = u->status_text ? strlen(u->status_text) : 0;
    int same = u->status == status && cur == n && (n == 0 || memcmp(u->status_text, t.p, n) == 0);
    u->status = status;
    if (!same) {
        /* kept only while set: most users have none, and memory per online user counts */
        ims_ouser_set_status_text(u, t.p, n);
    }
    ims_client_ok(c, m->request_id, 0, 0, 0);
    if (!same)
        ims_presence_announce(c->srv, u);
}

void ims_presence_subscribe(ims_client *c, const imp_msg *m)
{
    ims_server *srv = c->srv;
    int enable = (int)imp_msg_u(m, IMP_T_ENABLE, 1);
    imp_bytes rest = imp_msg_b(m, IMP_T_NAMES), nm;
    char names[IMP_LIST_MAX_NAMES][33];
    int n = 0, before = c->nsubs;
    while (n < IMP_LIST_MAX_NAMES && imp_names_next(&rest, &nm) == 1)
        if (ims_fold(nm, names[n]) == 0)
            n++;
    if (enable) {
        int add = 0;
        for (int i = 0; i < n; i++)
            add += !subscribed(c, names[i]);
        if (c->nsubs + add > IMS_SUBS_MAX) {
            ims_client_error(c, m->request_id, IMP_ERR_TOO_LARGE, "too many subscriptions", 0);
            return;
        }
        if (!c->subs) {
            c->subs = calloc(IMS_SUBS_MAX, sizeof *c->subs);
            if (!c->subs) {
                ims_client_error(c, m->request_id, IMP_ERR_INTERNAL, NULL, 0);
                return;
            }
        }
        for (int i = 0; i < n; i++)
            if (!subscribed(c, names[i]))
                memcpy(c->subs[c->nsubs++], names[i], 33);
    } else {
        for (int i = 0; i < n; i++) {
            for (int j = 0; j < c->nsubs; j++) {
                if (strcmp(c->subs[j], names[i]) == 0) {
                    memmove(c->subs[j], c->subs[--c->nsubs], 33);
                    break;
                }
            }
        }
    }
    if (c->nsubs > 0 && before == 0)
        srv->subscribers++;
    else if (c->nsubs == 0 && before > 0)
        srv->subscribers--;
    ims_client_ok(c, m->request_id, 0, 0, 0);
    if (!enable)
        return;
    int64_t now = ims_now_wall(srv);
    for (int i = 0; i < n && !c->reason; i++) {
        ims_user su;
        ims_ouser *u = NULL;
        if (ims_store_user_get(srv->store, names[i], &su) == 0)
            u = ims_ouser_find(srv, su.id);
        if (u && u->nsessions > 0) {
            event_to(c, u, now);
        } else {
            /* an offline user: a record of its own (the name is sized to fit, core.h) */
            ims_ouser *off = calloc(1, offsetof(ims_ouser, name) + 33);
            if (!off)
                continue;
            memcpy(off->name, names[i], 33);
            event_to(c, off, now);
            free(off);
        }
    }
}

static int name_cmp(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

void ims_presence_who(ims_client *c, const imp_msg *m)
{
    ims_server *srv = c->srv;
    char after[65];
    imp_bytes cb = imp_msg_b(m, IMP_T_CURSOR);
    size_t cl = cb.len < 64 ? cb.len : 64;
    if (cl)
        memcpy(after, cb.p, cl);
    after[cl] = '\0';
    size_t cap = 0, n = 0;
    for (size_t i = 0; i < IMS_USER_BUCKETS; i++)
        for (ims_ouser *u = srv->ubucket[i]; u; u = u->hnext)
            cap++;
    const char **names = calloc(cap ? cap : 1, sizeof *names);
    if (!names) {
        ims_client_error(c, m->request_id, IMP_ERR_INTERNAL, NULL, 0);
        return;
    }
    for (size_t i = 0; i < IMS_USER_BUCKETS; i++)
        for (ims_ouser *u = srv->ubucket[i]; u; u = u->hnext)
            if (u->nsessions > 0 && strcmp(u->name, after) > 0)
                names[n++] = u->name;
    qsort(names, n, sizeof *names, name_cmp);
    int limit = ims_page_limit(srv, m, IMP_LIST_MAX_NAMES);
    static uint8_t buf[IMP_LIST_MAX_NAMES * (IMP_NAME_MAX + 1)];
    imp_builder b;
    imp_builder_init(&b, buf, sizeof buf);
    size_t take = n < (size_t)limit ? n : (size_t)limit;
    for (size_t i = 0; i < take; i++)
        imp_names_add(&b, names[i], strlen(names[i]));
    imp_msg r;
    imp_msg_init(&r, IMP_WHO_LIST, m->request_id);
    imp_msg_set_b(&r, IMP_T_NAMES, buf, b.len);
    if (take < n) {
        imp_msg_set_s(&r, IMP_T_CURSOR, names[take - 1]);
        imp_msg_set_u(&r, IMP_T_MORE, 1);
    }
    ims_client_send(c, &r);
    free(names);
}
