/* imd — rooms (SPEC.md section 5.4): JOIN, LEAVE, MEMBERS, ROOMS, HISTORY.
 *
 * Choices where SPEC.md is silent:
 * - Paging: CURSOR is the last name of the previous page (opaque to clients); LIMIT absent or
 *   0 is page_size, larger values are capped at page_max (and at the 1000 names a list holds).
 * - Rooms are public: anyone authenticated may list rooms and a room's members. HISTORY needs
 *   membership (NOT_MEMBER otherwise) — it carries message bodies.
 * - HISTORY stops early (MORE = 1) when the session's output reaches output_soft, so that a
 *   large page never makes the reader a slow consumer; the client continues with BEFORE_ID =
 *   the last MSG_ID it got.
 * - Room history is pruned to room_history messages after every room message (deliver.c).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <imp/imp.h>

#include "core.h"

int ims_page_limit(ims_server *srv, const imp_msg *m, int cap)
{
    uint64_t l = imp_msg_u(m, IMP_T_LIMIT, 0);
    if (l == 0)
        l = srv->cfg.page_size > 0 ? (uint64_t)srv->cfg.page_size : 100;
    if (srv->cfg.page_max > 0 && l > (uint64_t)srv->cfg.page_max)
        l = (uint64_t)srv->cfg.page_max;
    if (l > (uint64_t)cap)
        l = (uint64_t)cap;
    return (int)l;
}

static int room_arg(ims_client *c, const imp_msg *m, char room[33])
{
    if (ims_fold(imp_msg_b(m, IMP_T_ROOM), room) != 0) {
        ims_client_error(c, m->request_id, IMP_ERR_BAD_REQUEST, NULL, 0);
        return -1;
    }
    return 0;
}

static void storage_error(ims_client *c, uint32_t req, int r)
{
    ims_client_error(c, req,
                     r == IMP_ERR_NO_SUCH_ROOM || r == IMP_ERR_NOT_MEMBER ? r : IMP_ERR_STORAGE,
                     NULL, 0);
}

/* ---- the member cache (transient fan-out) -------------------------------------------------- */

static struct ims_room_cache *rc_slot(ims_server *srv, const char *room)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (const char *p = room; *p; p++)
        h = (h ^ (uint8_t)*p) * 16777619u;
    return &srv->rcache[h % IMS_ROOM_CACHE];
}

static int id_cmp(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

int ims_room_members(ims_server *srv, const char *room, int64_t user_id, const int64_t **ids,
                     size_t *n)
{
    struct ims_room_cache *e = rc_slot(srv, room);
    uint64_t now = ims_now_mono(srv);
    if (strcmp(e->name, room) != 0 || now - e->loaded_ms >= IMS_ROOM_CACHE_MS) {
        int64_t *v = NULL;
        size_t k = 0;
        int r = ims_store_room_member_ids(srv->store, room, &v, &k);
        if (r != 0)
            return r; /* a room that is not there is not cached */
        qsort(v, k, sizeof *v, id_cmp);
        free(e->ids);
        e->ids = v;
        e->n = k;
        e->loaded_ms = now;
        snprintf(e->name, sizeof e->name, "%s", room);
    }
    if (e->n == 0 || !bsearch(&user_id, e->ids, e->n, sizeof *e->ids, id_cmp))
        return IMP_ERR_NOT_MEMBER;
    *ids = e->ids;
    *n = e->n;
    return 0;
}

static void rc_clear(struct ims_room_cache *e)
{
    free(e->ids);
    memset(e, 0, sizeof *e);
}

void ims_room_forget(ims_server *srv, const char *room)
{
    if (room) {
        struct ims_room_cache *e = rc_slot(srv, room);
        if (strcmp(e->name, room) == 0)
            rc_clear(e);
        return;
    }
    for (size_t i = 0; i < IMS_ROOM_CACHE; i++)
        rc_clear(&srv->rcache[i]);
}

void ims_rooms_join(ims_client *c, const imp_msg *m)
{
    char room[33];
    if (room_arg(c, m, room))
        return;
    int created = 0;
    int r = ims_store_begin(c->srv->store);
    if (r == 0)
        r = ims_store_room_join(c->srv->store, room, c->u->id, ims_now_wall(c->srv), &created);
    ims_room_forget(c->srv, room);
    if (r != 0) {
        storage_error(c, m->request_id, r);
        return;
    }
    ims_monitor(c->srv, created ? "room_create" : "join", c->u->name, room);
    ims_client_ok(c, m->request_id, 0, 0, 0);
}

void ims_rooms_leave(ims_client *c, const imp_msg *m)
{
    char room[33];
    if (room_arg(c, m, room))
        return;
    int r = ims_store_begin(c->srv->store);
    if (r == 0)
        r = ims_store_room_leave(c->srv->store, room, c->u->id);
    ims_room_forget(c->srv, room);
    if (r != 0) {
        storage_error(c, m->request_id, r);
        return;
    }
    ims_monitor(c->srv, "leave", c->u->name, room);
    ims_client_ok(c, m->request_id, 0, 0, 0);
}

/* A page of names: up to limit names, one more read to know whether there are more. */
struct page {
    imp_builder b;
    uint8_t buf[IMP_LIST_MAX_NAMES * (IMP_NAME_MAX + 1)];
    int limit, count, more;
    char last[33];
};

static int page_cb(void *ud, const char *name)
{
    struct page *p = ud;
    if (p->count == p->limit) {
        p->more = 1;
        return 1;
    }
    size_t n = strlen(name);
    if (imp_names_add(&p->b, name, n) != 0)
        return 1;
    p->count++;
    memcpy(p->last, name, n + 1);
    return 0;
}

static void page_init(struct page *p, int limit)
{
    memset(p, 0, sizeof *p);
    imp_builder_init(&p->b, p->buf, sizeof p->buf);
    p->limit = limit;
}

/* "after" from CURSOR: the last name of the previous page ("" from the start). */
static void cursor_arg(const imp_msg *m, char after[65])
{
    imp_bytes cb = imp_msg_b(m, IMP_T_CURSOR);
    size_t n = cb.len < 64 ? cb.len : 64;
    if (n)
        memcpy(after, cb.p, n);
    after[n] = '\0';
    for (size_t i = 0; i < n; i++)
        if (after[i] == '\0')
            after[i] = '_'; /* no NUL inside; the store compares bytes */
}

static void send_page(ims_client *c, uint8_t type, uint32_t req, const char *room, struct page *p)
{
    imp_msg r;
    imp_msg_init(&r, type, req);
    if (room)
        imp_msg_set_s(&r, IMP_T_ROOM, room);
    imp_msg_set_b(&r, IMP_T_NAMES, p->buf, p->b.len);
    if (p->more) {
        imp_msg_set_s(&r, IMP_T_CURSOR, p->last);
        imp_msg_set_u(&r, IMP_T_MORE, 1);
    }
    ims_client_send(c, &r);
}

static struct page *page_new(int limit)
{
    static struct page pg; /* one event-loop thread: a reusable page buffer */
    page_init(&pg, limit);
    return &pg;
}

void ims_rooms_members(ims_client *c, const imp_msg *m)
{
    char room[33], after[65];
    if (room_arg(c, m, room))
        return;
    cursor_arg(m, after);
    struct page *p = page_new(ims_page_limit(c->srv, m, IMP_LIST_MAX_NAMES));
    int r = ims_store_room_members(c->srv->store, room, after, p->limit + 1, page_cb, p);
    if (r < 0) {
        storage_error(c, m->request_id, r);
        return;
    }
    if (r == 0 && !after[0]) {
        /* an empty first page: tell a room that does not exist from an empty one */
        int e = ims_store_room_is_member(c->srv->store, room, c->u->id);
        if (e == IMP_ERR_NO_SUCH_ROOM) {
            storage_error(c, m->request_id, e);
            return;
        }
    }
    send_page(c, IMP_MEMBER_LIST, m->request_id, room, p);
}

void ims_rooms_list(ims_client *c, const imp_msg *m)
{
    char after[65];
    cursor_arg(m, after);
    struct page *p = page_new(ims_page_limit(c->srv, m, IMP_LIST_MAX_NAMES));
    int r = ims_store_room_list(c->srv->store, after, p->limit + 1, page_cb, p);
    if (r < 0) {
        storage_error(c, m->request_id, r);
        return;
    }
    send_page(c, IMP_ROOM_LIST, m->request_id, NULL, p);
}

struct hist {
    ims_client *c;
    uint32_t req;
    const char *room;
    int count, cut;
};

static int hist_cb(void *ud, const ims_message *msg)
{
    struct hist *h = ud;
    if (ims_client_pending(h->c) > h->c->srv->cfg.output_soft) {
        h->cut = 1;
        return 1;
    }
    imp_msg r;
    imp_msg_init(&r, IMP_HISTORY_ITEM, h->req);
    if (msg->headers && msg->headers_len)
        imp_msg_set_b(&r, IMP_T_HEADERS, msg->headers, msg->headers_len);
    imp_msg_set_b(&r, IMP_T_BODY, msg->body, msg->body_len);
    imp_msg_set_u(&r, IMP_T_MSG_ID, (uint64_t)msg->msg_id);
    imp_msg_set_s(&r, IMP_T_SENDER, msg->sender);
    imp_msg_set_u(&r, IMP_T_TIMESTAMP, (uint64_t)(msg->ts_ms < 0 ? 0 : msg->ts_ms));
    imp_msg_set_s(&r, IMP_T_ROOM, h->room);
    if (ims_client_send(h->c, &r) != 0) {
        h->cut = 1;
        return 1;
    }
    h->count++;
    return 0;
}

void ims_rooms_history(ims_client *c, const imp_msg *m)
{
    char room[33];
    if (room_arg(c, m, room))
        return;
    int r = ims_store_room_is_member(c->srv->store, room, c->u->id);
    if (r == 0 && !c->u->admin)
        r = IMP_ERR_NOT_MEMBER;
    if (r < 0) {
        storage_error(c, m->request_id, r);
        return;
    }
    int limit = ims_page_limit(c->srv, m, 1 << 20);
    /* MSG_ID < BEFORE_ID (SPEC.md 5.4): BEFORE_ID 0 selects nothing (it is not "absent"), and
     * one above every possible MSG_ID selects all, as an absent one does (0 for the store) */
    uint64_t bu = imp_msg_u(m, IMP_T_BEFORE_ID, 0);
    if (imp_msg_has(m, IMP_T_BEFORE_ID) && bu == 0) {
        ims_client_ok(c, m->request_id, 1, 0, 0);
        return;
    }
    int64_t before = bu > (uint64_t)INT64_MAX ? 0 : (int64_t)bu;
    struct hist h = {c, m->request_id, room, 0, 0};
    int more = 0;
    r = ims_store_room_history(c->srv->store, room, before, limit, hist_cb, &h, &more);
    if (c->reason)
        return;
    if (r < 0) {
        storage_error(c, m->request_id, r);
        return;
    }
    ims_client_ok(c, m->request_id, 1, (uint32_t)h.count, more || h.cut);
}
