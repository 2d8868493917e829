/* The connection: buffers, the state machine and timers (SPEC.md sections 7 and 8). No I/O,
 * no clock (IMP-LIB-001): bytes in, frames out, output lent out, time passed in. */
#include "imp/conn.h"

#include <stdlib.h>
#include <string.h>

#include "imp/text.h"
#include "msg_internal.h"
#include "state.h"

#define INPUT_SLACK 65536u /* feed accepts a frame's worth plus this much unread input */
#define KEEP_BUFFER 4096u  /* empty buffers larger than this are released */
/* The output buffer is kept up to this size once written: a busy connection (a room member
 * receiving a burst of DELIVERs each turn) would otherwise free and grow it again, with its
 * copies, page faults and heap trims, for every burst (issue 3: room fan-out). An idle one
 * holds none after imp_conn_trim. */
#define KEEP_OUTPUT 65536u
/* Shared frames (imp_conn_send_shared): the list's first capacity, and the capacity it keeps
 * once written (a room member gets a burst of references each turn); imp_conn_trim frees it. */
#define REFS_FIRST 16u
#define REFS_KEEP 256u

/* The frames a connection shares, v[head..end), queued after the output buffer's bytes. */
struct imp_refq {
    size_t bytes;       /* not yet written, of all of them */
    uint32_t head, end; /* the frames queued */
    uint32_t cap;       /* v's capacity */
    uint32_t off;       /* bytes of v[head] already written */
    imp_prepared *v[];
};

/* A buffer: nothing allocated while empty and trimmed. 32-bit offsets: a buffer holds at
 * most BUF_MAX bytes (input: a frame of at most 16 MiB plus INPUT_SLACK; output beyond that
 * fails as out of memory). Its capacity is a power of two (the first allocation's, doubled, at
 * most BUF_MAX), kept in the connection as its base-2 logarithm (0: no buffer), so that the
 * two buffers cost 16 bytes each without padding (issue 3). The first allocation is small:
 * the handshake's frames fit, and the many connections logging in at once hold (and leave
 * behind in the heap once trimmed) 256 bytes per buffer, not 1 KiB (issue 3). */
#define BUF_MAX 0x80000000u
#define BUF_FIRST_LOG 8u /* the first allocation: 256 bytes */
struct buf {
    uint8_t *p;
    uint32_t pos; /* consumed up to here */
    uint32_t len; /* filled up to here */
};

/* Kept small (issue 3: 10,000 idle logged-in connections, <= 1 KiB of server memory each):
 * 120 bytes on LP64, a 128-byte glibc chunk. The configuration's fields, not a copy of
 * imp_config; the allocator hook by pointer (to the default hook, or to the copy of the
 * caller's kept right after the object); one timer field for the authentication deadline
 * (before READY) and the next PING (after); fields only one role uses share their room. */
struct imp_conn {
    const imp_allocator *alloc; /* &libc_alloc, or the copy at ALLOC_COPY_OFFSET */
    struct buf in, out;
    uint64_t now; /* latest time passed in (IMP-TIME-003) */
    union {
        uint64_t deadline;  /* before authentication: its deadline (IMP-TIME-001), 0 = none */
        uint64_t next_ping; /* once authenticated */
    };
    union {
        const char *agent;     /* for HELLO or WELCOME (both sent before authentication) */
        struct imp_refq *refs; /* F_REFS: the shared frames (only once authenticated) */
    };
    const uint8_t *caps;
    uint32_t max_output; /* 0 = none; a larger cap saturates (a buffer holds < 2^31 bytes) */
    uint32_t max_frame;
    union {
        uint32_t max_frame_preauth; /* server */
        uint32_t peer_max_frame;    /* client: from WELCOME */
    };
    union {
        uint32_t auth_timeout_ms;  /* server: announced in WELCOME (the deadline is above) */
        uint32_t peer_max_preauth; /* client: from WELCOME */
    };
    uint32_t ping_interval_ms, ping_max_missed;
    uint32_t ping_id;
    uint32_t missed;
    uint32_t logout_id;
    int16_t err; /* sticky fatal error (IMP-ERR-003, an IMP_ERR_* code), 0 if none */
    uint16_t caps_len;
    uint8_t role;    /* imp_role */
    uint8_t state;   /* imp_state */
    uint8_t authed;  /* READY was reached */
    uint8_t flags;   /* F_* (one byte: the object stays within its size, issue 3) */
    uint8_t in_capl; /* log2 of in's capacity, 0: no buffer */
    uint8_t out_capl;
};
_Static_assert(sizeof(void *) != 8 || sizeof(struct imp_conn) <= 120,
               "imp_conn outgrew its 128-byte chunk (issue 3)");
#define F_PING_OUTSTANDING 1u /* a PING of ours is not answered yet (IMP-TIME-002) */
#define F_DEFER_LOGOUT 2u     /* server: LOGOUT's OK is the application's (IMP-SESS-008) */
#define F_REFS 4u             /* the agent's room holds refs (NULL: no list allocated) */

/* now + ms without wrapping: a time past the clock's range saturates at UINT64_MAX
 * (IMP-TIME-001, IMP-TIME-002). */
static uint64_t time_after(uint64_t now, uint32_t ms)
{
    return now > UINT64_MAX - ms ? UINT64_MAX : now + ms;
}

static void *libc_realloc(void *ud, void *ptr, size_t size)
{
    (void)ud;
    if (size == 0) {
        free(ptr);
        return NULL;
    }
    return realloc(ptr, size);
}

static const imp_allocator libc_alloc = {libc_realloc, NULL};

/* A connection made with a caller's hook keeps a copy of it right after the object. */
#define ALLOC_COPY_OFFSET                                                         \
    ((sizeof(imp_conn) + _Alignof(imp_allocator) - 1) / _Alignof(imp_allocator) * \
     _Alignof(imp_allocator))

static void *mem(imp_conn *c, void *ptr, size_t size)
{
    return c->alloc->realloc(c->alloc->ud, ptr, size);
}

static uint8_t *buf_capl(imp_conn *c, const struct buf *b)
{
    return b == &c->in ? &c->in_capl : &c->out_capl;
}

static uint32_t buf_cap(const imp_conn *c, const struct buf *b)
{
    uint8_t l = b == &c->in ? c->in_capl : c->out_capl;
    return l ? (uint32_t)1 << l : 0;
}

static void buf_release(imp_conn *c, struct buf *b)
{
    mem(c, b->p, 0);
    b->p = NULL;
    b->pos = b->len = 0;
    *buf_capl(c, b) = 0;
}

/* Make room for n more bytes after b->len when the tail has none: by compacting (moving the
 * unread bytes to the front), else by growing. 0 or IMP_ERR_NOMEM. */
static int buf_make_room(imp_conn *c, struct buf *b, size_t n)
{
    if (b->pos > 0) {
        memmove(b->p, b->p + b->pos, b->len - b->pos);
        b->len -= b->pos;
        b->pos = 0;
    }
    if (buf_cap(c, b) - b->len >= n)
        return 0;
    if (n > BUF_MAX - b->len)
        return IMP_ERR_NOMEM;
    unsigned l = *buf_capl(c, b) ? *buf_capl(c, b) : BUF_FIRST_LOG;
    while (((size_t)1 << l) - b->len < n)
        l++; /* n <= BUF_MAX - len: stops at 31 (BUF_MAX) at most */
    if (((size_t)1 << l) > BUF_MAX)
        l = 31; /* BUF_MAX (not reached: kept as a guard) */
    uint8_t *p = mem(c, b->p, (size_t)1 << l);
    if (!p)
        return IMP_ERR_NOMEM; /* IMP-LIB-003: the old buffer is untouched */
    b->p = p;
    *buf_capl(c, b) = (uint8_t)l;
    return 0;
}

/* Make room for n more bytes after b->len: at the tail if it has room (the common case, kept
 * inline), else see buf_make_room. Compacting only when the tail is full keeps a partly written
 * output from being moved on every send (issue 3: a room's fan-out queues many frames on each
 * member's output between writes); it grows in exactly the cases it grew when it compacted
 * first. 0 or IMP_ERR_NOMEM. */
static inline int buf_reserve(imp_conn *c, struct buf *b, size_t n)
{
    return buf_cap(c, b) - b->len >= n ? 0 : buf_make_room(c, b, n);
}

void imp_config_default(imp_config *cfg, imp_role role)
{
    memset(cfg, 0, sizeof *cfg);
    if (role == IMP_ROLE_SERVER) {
        cfg->max_frame = IMP_DEFAULT_MAX_FRAME;
        cfg->max_frame_preauth = IMP_DEFAULT_MAX_PREAUTH;
        cfg->ping_interval_ms = 30000; /* IMP-TIME-002 */
    } else {
        cfg->max_frame = IMP_FRAME_MAX_HARD;
        cfg->max_frame_preauth = IMP_DEFAULT_MAX_PREAUTH;
    }
    cfg->ping_max_missed = 2;
    cfg->auth_timeout_ms = 10000; /* IMP-TIME-001 */
}

static int config_valid(imp_role role, const imp_config *cfg)
{
    if (role != IMP_ROLE_CLIENT && role != IMP_ROLE_SERVER)
        return 0;
    if (cfg->max_frame < IMP_FRAME_MIN_LIMIT || cfg->max_frame > IMP_FRAME_MAX_HARD)
        return 0;
    if (role == IMP_ROLE_SERVER &&
        (cfg->max_frame_preauth < 1024 || cfg->max_frame_preauth > cfg->max_frame))
        return 0;
    if (cfg->ping_interval_ms && cfg->ping_max_missed < 1)
        return 0;
    if (cfg->agent) {
        size_t n = strlen(cfg->agent);
        if (n < 1 || n > 64 || !imp_utf8_valid((const uint8_t *)cfg->agent, n))
            return 0;
    }
    if (cfg->caps.len > 1024 || imp_names_check(cfg->caps.p, cfg->caps.len))
        return 0;
    return 1;
}

/* Append an encoded message to the output, bypassing the state table and the output cap:
 * used for frames the library sends by itself. */
static int refs_layout(imp_conn *c);

static int queue(imp_conn *c, const imp_msg *m, size_t size)
{
    int r = refs_layout(c);
    if (r == 0)
        r = buf_reserve(c, &c->out, size);
    if (r)
        return r;
    imp_msg_write(m, c->out.p + c->out.len, size);
    c->out.len += (uint32_t)size; /* buf_reserve: fits */
    return 0;
}

static int queue_auto(imp_conn *c, const imp_msg *m)
{
    imp_ssize size = imp_msg_encoded_size(m);
    return size < 0 ? (int)size : queue(c, m, (size_t)size);
}

static void add_agent_caps(const imp_conn *c, imp_msg *m)
{
    if (c->agent)
        imp_msg_set_s(m, IMP_T_AGENT, c->agent);
    if (c->caps_len)
        imp_msg_set_b(m, IMP_T_CAPS, c->caps, c->caps_len);
}

/* Queue ERROR(code) for the peer when the state allows, then CLOSING (IMP-ERR-002). */
static void send_error_and_close(imp_conn *c, int code, const char *text, uint32_t request_id)
{
    int wire = code < 0 ? -code : code;
    if (c->state != IMP_S_CLOSING && wire >= 300 && wire <= 0xFFFF) {
        imp_msg m;
        imp_msg_init(&m, IMP_ERROR, request_id);
        imp_msg_set_u(&m, IMP_T_CODE, (uint64_t)wire);
        if (text) {
            size_t n = strlen(text);
            if (n <= 512 && imp_utf8_valid((const uint8_t *)text, n))
                imp_msg_set_b(&m, IMP_T_TEXT, text, n);
        }
        (void)queue_auto(c, &m); /* best effort: without memory the peer sees only a close */
    }
    c->state = IMP_S_CLOSING;
}

/* A fatal error caused by the frame with this request id (0: by no frame, or by one whose
 * header was invalid): sticky from now on (IMP-ERR-003), answered with ERROR (IMP-FRAME-007). */
static int fail_req(imp_conn *c, int err, uint32_t request_id)
{
    if (c->err)
        return c->err;
    c->err = (int16_t)err; /* IMP_ERR_* codes are > -1000 */
    send_error_and_close(c, err, imp_strerror(err), request_id);
    return err;
}

static int fail(imp_conn *c, int err)
{
    return fail_req(c, err, 0);
}

imp_conn *imp_conn_new(imp_role role, const imp_config *cfg, uint64_t now_ms)
{
    imp_config dflt;
    if (!cfg) {
        imp_config_default(&dflt, role);
        cfg = &dflt;
    }
    if (!config_valid(role, cfg))
        return NULL;
    /* the default hook by pointer; a caller's is copied after the object (cfg is copied) */
    imp_conn *c = cfg->alloc ? cfg->alloc->realloc(cfg->alloc->ud, NULL,
                                                   ALLOC_COPY_OFFSET + sizeof(imp_allocator))
                             : libc_realloc(NULL, NULL, sizeof *c);
    if (!c)
        return NULL;
    memset(c, 0, sizeof *c);
    if (cfg->alloc) {
        imp_allocator *copy = (imp_allocator *)(void *)((char *)c + ALLOC_COPY_OFFSET);
        *copy = *cfg->alloc;
        c->alloc = copy;
    } else {
        c->alloc = &libc_alloc;
    }
    c->role = (uint8_t)role;
    c->max_frame = cfg->max_frame;
    c->ping_interval_ms = cfg->ping_interval_ms;
    c->ping_max_missed = cfg->ping_max_missed;
    c->max_output = cfg->max_output > UINT32_MAX ? UINT32_MAX : (uint32_t)cfg->max_output;
    c->agent = cfg->agent;
    c->caps = cfg->caps.p;
    c->caps_len = (uint16_t)cfg->caps.len; /* config_valid: at most 1024 */
    c->now = now_ms;
    if (cfg->auth_timeout_ms)
        c->deadline = time_after(now_ms, cfg->auth_timeout_ms); /* IMP-TIME-001: absolute */
    if (role == IMP_ROLE_SERVER) {
        /* a client's room for these holds WELCOME's limits instead (0 until then) */
        c->max_frame_preauth = cfg->max_frame_preauth;
        c->auth_timeout_ms = cfg->auth_timeout_ms;
        c->state = IMP_S_AWAIT_HELLO; /* IMP-SESS-001 */
        return c;
    }
    c->state = IMP_S_HELLO_SENT;
    imp_msg hello;
    imp_msg_init(&hello, IMP_HELLO, 1); /* IMP-FRAME-007: a non-zero request id */
    imp_msg_set_u(&hello, IMP_T_VERSION_MIN, IMP_PROTOCOL_VERSION);
    imp_msg_set_u(&hello, IMP_T_VERSION_MAX, IMP_PROTOCOL_VERSION);
    add_agent_caps(c, &hello);
    if (queue_auto(c, &hello)) {
        imp_conn_free(c);
        return NULL;
    }
    return c;
}

static void refs_free(imp_conn *c);

void imp_conn_free(imp_conn *c)
{
    if (!c)
        return;
    refs_free(c);
    buf_release(c, &c->in);
    buf_release(c, &c->out);
    mem(c, c, 0);
}

uint32_t imp_conn_recv_limit(const imp_conn *c)
{
    /* IMP-SESS-006, IMP-SEC-001: the small limit until authentication */
    if (c->role == IMP_ROLE_SERVER && !c->authed)
        return c->max_frame_preauth;
    return c->max_frame;
}

/* CLOSING (IMP-SESS-003) and LOGOUT_RCVD (IMP-SESS-008) ignore all input. */
static int input_closed(const imp_conn *c)
{
    return c->state == IMP_S_CLOSING || c->state == IMP_S_LOGOUT_RCVD;
}

imp_ssize imp_conn_feed(imp_conn *c, const uint8_t *buf, size_t len)
{
    if (c->err)
        return c->err;
    if (input_closed(c))
        return (imp_ssize)len; /* IMP-SESS-003, IMP-SESS-008: input is ignored */
    size_t unread = c->in.len - c->in.pos;
    size_t limit = (size_t)imp_conn_recv_limit(c) + INPUT_SLACK;
    size_t take = unread < limit ? limit - unread : 0;
    if (take > len)
        take = len;
    if (take == 0)
        return 0;
    int r = buf_reserve(c, &c->in, take);
    if (r)
        return fail(c, r);
    memcpy(c->in.p + c->in.len, buf, take);
    c->in.len += (uint32_t)take; /* buf_reserve: fits */
    return (imp_ssize)take;
}

static void start_pings(imp_conn *c)
{
    c->authed = 1;
    if (c->ping_interval_ms)
        c->next_ping = time_after(c->now, c->ping_interval_ms);
}

static int send_welcome(imp_conn *c, uint32_t request_id)
{
    imp_msg w;
    imp_msg_init(&w, IMP_WELCOME, request_id); /* IMP-FRAME-007 */
    imp_msg_set_u(&w, IMP_T_VERSION, IMP_PROTOCOL_VERSION);
    add_agent_caps(c, &w);
    imp_msg_set_u(&w, IMP_T_MAX_FRAME, c->max_frame);
    imp_msg_set_u(&w, IMP_T_MAX_FRAME_PREAUTH, c->max_frame_preauth);
    imp_msg_set_u(&w, IMP_T_PING_INTERVAL, c->ping_interval_ms);
    imp_msg_set_u(&w, IMP_T_AUTH_TIMEOUT, c->auth_timeout_ms);
    return queue_auto(c, &w);
}

static int send_empty(imp_conn *c, uint8_t type, uint32_t request_id)
{
    imp_msg m;
    imp_msg_init(&m, type, request_id);
    return queue(c, &m, IMP_HEADER_SIZE);
}

/* What the library does by itself when a frame arrives (the "(auto …)" of section 7), for the
 * frame's cell. */
static int on_receive(imp_conn *c, const imp_msg *m, struct imp_cell cell)
{
    switch (m->type) {
    case IMP_HELLO: /* IMP-MSG-002: version 1 must be in the client's range */
        if (m->v[IMP_T_VERSION_MIN].u > IMP_PROTOCOL_VERSION)
            return IMP_ERR_VERSION;
        return send_welcome(c, m->request_id);
    case IMP_WELCOME: /* the server must choose a version we offered */
        if (m->v[IMP_T_VERSION].u != IMP_PROTOCOL_VERSION)
            return IMP_ERR_VERSION;
        c->peer_max_frame = (uint32_t)m->v[IMP_T_MAX_FRAME].u;
        c->peer_max_preauth = (uint32_t)m->v[IMP_T_MAX_FRAME_PREAUTH].u;
        return 0;
    case IMP_PING:
        return send_empty(c, IMP_PONG, m->request_id);
    case IMP_PONG: /* IMP-TIME-002: any PONG resets the missed counter */
        c->flags &= (uint8_t)~F_PING_OUTSTANDING;
        c->missed = 0;
        return 0;
    case IMP_LOGOUT: /* IMP-MSG-005 */
        if (cell.action == CELL_LOGOUT_IN && (c->flags & F_DEFER_LOGOUT)) {
            c->logout_id = m->request_id; /* IMP-SESS-008: the application's OK closes */
            return 0;
        }
        return send_empty(c, IMP_OK, m->request_id);
    default:
        return 0;
    }
}

/* A frame's effect on the state: the cell, the frame's request id and, for ERROR, its CODE
 * (what a prepared frame keeps of its message). */
static void apply_to(imp_conn *c, struct imp_cell cell, uint32_t request_id, uint64_t code)
{
    switch (cell.action) {
    case CELL_GO:
        c->state = (uint8_t)cell.arg;
        if (c->state == IMP_S_READY)
            start_pings(c);
        break;
    case CELL_ERRF:
        if (imp_is_fatal(code > 0 ? (int)code : 700))
            c->state = IMP_S_CLOSING;
        else if (cell.arg >= 0)
            c->state = (uint8_t)cell.arg;
        break;
    case CELL_LOGOUT_OK: /* IMP-SESS-007; IMP-SESS-008 (server: the OK for LOGOUT sent) */
        if (request_id == c->logout_id)
            c->state = IMP_S_CLOSING;
        break;
    case CELL_LOGOUT_IN: /* IMP-MSG-005; IMP-SESS-008 */
        c->state = (c->flags & F_DEFER_LOGOUT) ? IMP_S_LOGOUT_RCVD : (uint8_t)cell.arg;
        break;
    default:
        break;
    }
}

static void apply(imp_conn *c, struct imp_cell cell, const imp_msg *m)
{
    apply_to(c, cell, m->request_id, cell.action == CELL_ERRF ? m->v[IMP_T_CODE].u : 0);
}

int imp_conn_next_event(imp_conn *c, imp_msg *m)
{
    if (c->err)
        return c->err;
    if (input_closed(c)) { /* IMP-SESS-003, IMP-SESS-008 */
        c->in.pos = c->in.len;
        return 0;
    }
    /* IMP-FRAME-008: frames are parsed only here, from all bytes buffered so far, so how the
     * input was split into feeds cannot change the frames, events or errors. */
    imp_frame f;
    size_t avail = c->in.len - c->in.pos;
    const uint8_t *start = c->in.p ? c->in.p + c->in.pos : NULL; /* no buffer yet: NULL + 0 */
    imp_ssize n = imp_frame_parse(start, avail, imp_conn_recv_limit(c), &f, NULL);
    if (n == 0) {
        if (avail == 0 && buf_cap(c, &c->in) > KEEP_BUFFER)
            buf_release(c, &c->in); /* idle connections keep no large buffer */
        return 0;
    }
    if (n < 0)
        return fail(c, (int)n);
    c->in.pos += (uint32_t)n;
    /* IMP-SESS-002: the table is consulted on the header, before the payload is decoded. */
    struct imp_cell cell = imp_state_cell((imp_role)c->role, 0, (imp_state)c->state, f.type);
    if (cell.action == CELL_FAIL)
        return fail_req(c, cell.arg, f.request_id); /* IMP-MSG-001, IMP-SESS-004 */
    int r = imp_msg_decode(&f, m);
    if (r == 0)
        r = on_receive(c, m, cell);
    if (r)
        return fail_req(c, r, f.request_id); /* IMP-ERR-003: the frame has no effect */
    apply(c, cell, m);
    return 1;
}

int imp_conn_send(imp_conn *c, const imp_msg *m)
{
    if (!imp_type_known(m->type))
        return IMP_ERR_INVAL;
    struct imp_cell cell = imp_state_cell((imp_role)c->role, 1, (imp_state)c->state, m->type);
    if (cell.action == CELL_REFUSE)
        return cell.arg;
    imp_ssize size = imp_msg_encoded_size(m);
    if (size < 0)
        return (int)size;
    if (c->role == IMP_ROLE_CLIENT) { /* IMP-MSG-003 */
        uint32_t limit = c->authed ? c->peer_max_frame : c->peer_max_preauth;
        if (limit && (size_t)size > limit)
            return IMP_ERR_TOO_LARGE;
    }
    if (c->max_output && imp_conn_output_size(c) + (size_t)size > c->max_output)
        return IMP_ERR_OUTPUT_FULL;
    int r = queue(c, m, (size_t)size);
    if (r)
        return fail(c, r);
    if (m->type == IMP_LOGOUT)
        c->logout_id = m->request_id;
    apply(c, cell, m);
    return 0;
}

/* ---- prepared frames (a room's fan-out) ------------------------------------------------ */

/* What imp_conn_send_prepared needs of the message besides its bytes: the type, the request
 * id and an ERROR's CODE (the state table's effects). The message is not decoded back from the
 * bytes: imp_msg_write of a validated message is the canonical encoding of it (IMP-FIELD-008,
 * test_msg.c), and its integers are within range, so these are the values the frame carries. */
struct imp_prepared {
    imp_allocator alloc;
    size_t refs; /* the creator's (until imp_prepared_free) and one per queued reference */
    size_t len;
    uint64_t code; /* ERROR: CODE; otherwise 0 */
    uint32_t request_id;
    uint8_t type;
    uint8_t bytes[]; /* the whole frame */
};

imp_prepared *imp_prepared_new(const imp_msg *m, const imp_allocator *alloc, int *err)
{
    int dummy;
    if (!err)
        err = &dummy;
    if (!imp_type_known(m->type)) {
        *err = IMP_ERR_INVAL; /* as imp_conn_send */
        return NULL;
    }
    imp_ssize size = imp_msg_encoded_size(m); /* validates */
    if (size < 0) {
        *err = (int)size;
        return NULL;
    }
    imp_allocator a = {libc_realloc, NULL};
    if (alloc)
        a = *alloc;
    imp_prepared *p = a.realloc(a.ud, NULL, sizeof *p + (size_t)size);
    if (!p) {
        *err = IMP_ERR_NOMEM;
        return NULL;
    }
    p->alloc = a;
    p->refs = 1;
    p->len = (size_t)size;
    p->type = m->type;
    p->request_id = m->request_id;
    p->code = m->type == IMP_ERROR ? m->v[IMP_T_CODE].u : 0; /* ERROR requires CODE */
    imp_msg_write(m, p->bytes, p->len);
    *err = 0;
    return p;
}

void imp_prepared_free(imp_prepared *p)
{
    if (p && --p->refs == 0)
        p->alloc.realloc(p->alloc.ud, p, 0);
}

size_t imp_prepared_size(const imp_prepared *p)
{
    return p->len;
}

/* The checks imp_conn_send makes (IMP-SESS-002, IMP-MSG-003, max_output) for a prepared
 * frame: 0 when it may be queued, else the refusal; *cell: the state table's. */
static int prepared_check(const imp_conn *c, const imp_prepared *p, struct imp_cell *cell)
{
    *cell = imp_state_cell((imp_role)c->role, 1, (imp_state)c->state, p->type);
    if (cell->action == CELL_REFUSE)
        return cell->arg;
    if (c->role == IMP_ROLE_CLIENT) { /* IMP-MSG-003 */
        uint32_t limit = c->authed ? c->peer_max_frame : c->peer_max_preauth;
        if (limit && p->len > limit)
            return IMP_ERR_TOO_LARGE;
    }
    if (c->max_output && imp_conn_output_size(c) + p->len > c->max_output)
        return IMP_ERR_OUTPUT_FULL;
    return 0;
}

/* The effects of sending p (as imp_conn_send's of its message). */
static void prepared_sent(imp_conn *c, const imp_prepared *p, struct imp_cell cell)
{
    if (p->type == IMP_LOGOUT)
        c->logout_id = p->request_id;
    apply_to(c, cell, p->request_id, p->code);
}

int imp_conn_send_prepared(imp_conn *c, const imp_prepared *p)
{
    struct imp_cell cell;
    int r = prepared_check(c, p, &cell);
    if (r)
        return r;
    r = refs_layout(c);
    if (r == 0)
        r = buf_reserve(c, &c->out, p->len);
    if (r)
        return fail(c, r);
    memcpy(c->out.p + c->out.len, p->bytes, p->len);
    c->out.len += (uint32_t)p->len; /* buf_reserve: fits */
    prepared_sent(c, p, cell);
    return 0;
}

/* ---- shared frames ------------------------------------------------------------------------ */

static struct imp_refq *refs_of(const imp_conn *c)
{
    return (c->flags & F_REFS) ? c->refs : NULL;
}

/* Drops the references from head on; the list stays (empty). */
static void refs_drop(struct imp_refq *q)
{
    for (uint32_t i = q->head; i < q->end; i++)
        imp_prepared_free(q->v[i]);
    q->head = q->end = q->off = 0;
    q->bytes = 0;
}

static void refs_free(imp_conn *c)
{
    struct imp_refq *q = refs_of(c);
    if (q) {
        refs_drop(q);
        mem(c, q, 0);
        c->refs = NULL;
    }
}

/* Copies the shared frames into the output buffer (in order, after its bytes) and drops them:
 * done before anything else is queued, so the output keeps its order. 0 or IMP_ERR_NOMEM
 * (nothing changed). */
static int refs_layout(imp_conn *c)
{
    struct imp_refq *q = refs_of(c);
    if (!q || q->head == q->end)
        return 0;
    int r = buf_reserve(c, &c->out, q->bytes); /* over BUF_MAX: NOMEM */
    if (r)
        return r;
    uint8_t *w = c->out.p + c->out.len;
    for (uint32_t i = q->head; i < q->end; i++) {
        uint32_t from = i == q->head ? q->off : 0;
        memcpy(w, q->v[i]->bytes + from, q->v[i]->len - from);
        w += q->v[i]->len - from;
    }
    c->out.len += (uint32_t)q->bytes; /* buf_reserve: fits */
    refs_drop(q);
    return 0;
}

/* Appends a reference to p: 0 or IMP_ERR_NOMEM (nothing queued). */
static int refs_push(imp_conn *c, imp_prepared *p)
{
    if (!(c->flags & F_REFS)) {
        c->flags |= F_REFS; /* authenticated: the agent's room is free (HELLO, WELCOME sent) */
        c->refs = NULL;
    }
    struct imp_refq *q = c->refs;
    if (q && q->end == q->cap && q->head > 0) { /* room at the front: move down */
        memmove(q->v, q->v + q->head, (q->end - q->head) * sizeof q->v[0]);
        q->end -= q->head;
        q->head = 0;
    }
    if (!q || q->end == q->cap) {
        uint32_t cap = q ? 2 * q->cap : REFS_FIRST;
        struct imp_refq *n = mem(c, q, sizeof *q + (size_t)cap * sizeof q->v[0]);
        if (!n)
            return IMP_ERR_NOMEM;
        if (!q)
            memset(n, 0, sizeof *n);
        n->cap = cap;
        c->refs = q = n;
    }
    q->v[q->end++] = p;
    q->bytes += p->len;
    p->refs++;
    return 0;
}

int imp_conn_send_shared(imp_conn *c, imp_prepared *p)
{
    if (!c->authed)
        return imp_conn_send_prepared(c, p); /* the agent's room is still the agent's */
    struct imp_cell cell;
    int r = prepared_check(c, p, &cell);
    if (r)
        return r;
    r = refs_push(c, p);
    if (r)
        return fail(c, r);
    prepared_sent(c, p, cell);
    return 0;
}

size_t imp_conn_output_size(const imp_conn *c)
{
    const struct imp_refq *q = refs_of(c);
    return c->out.len - c->out.pos + (q ? q->bytes : 0);
}

int imp_conn_output_iov(const imp_conn *c, imp_iovec *v, int max)
{
    int n = 0;
    if (n < max && c->out.len > c->out.pos) {
        v[n].base = c->out.p + c->out.pos;
        v[n++].len = c->out.len - c->out.pos;
    }
    const struct imp_refq *q = refs_of(c);
    for (uint32_t i = q ? q->head : 0; q && i < q->end && n < max; i++) {
        uint32_t from = i == q->head ? q->off : 0;
        v[n].base = q->v[i]->bytes + from;
        v[n++].len = q->v[i]->len - from;
    }
    return n;
}

void imp_conn_close(imp_conn *c, int code, const char *text)
{
    send_error_and_close(c, code, text, 0);
}

size_t imp_conn_pending_output(const imp_conn *c, const uint8_t **out)
{
    /* the connection itself is never const (imp_conn_new); laying out changes no byte of the
     * output, only where its shared part is */
    (void)refs_layout((imp_conn *)(uintptr_t)c);
    *out = c->out.p ? c->out.p + c->out.pos : NULL; /* no buffer yet: NULL + 0 is undefined */
    return c->out.len - c->out.pos;
}

void imp_conn_consume_output(imp_conn *c, size_t n)
{
    size_t pending = c->out.len - c->out.pos, k = n < pending ? n : pending;
    c->out.pos += (uint32_t)k;
    n -= k;
    if (c->out.pos == c->out.len) {
        c->out.pos = c->out.len = 0;
        if (buf_cap(c, &c->out) > KEEP_OUTPUT)
            buf_release(c, &c->out);
    }
    struct imp_refq *q = refs_of(c);
    while (q && n > 0 && q->head < q->end) { /* then the shared frames, in order */
        imp_prepared *p = q->v[q->head];
        size_t left = p->len - q->off;
        if (n < left) {
            q->off += (uint32_t)n;
            q->bytes -= n;
            break;
        }
        n -= left;
        q->bytes -= left;
        q->off = 0;
        q->head++;
        imp_prepared_free(p);
    }
    if (q && q->head == q->end) {
        q->head = q->end = 0;
        if (q->cap > REFS_KEEP)
            refs_free(c);
    }
}

void imp_conn_set_max_output(imp_conn *c, size_t max_output)
{
    c->max_output = max_output > UINT32_MAX ? UINT32_MAX : (uint32_t)max_output;
}

int imp_conn_set_defer_logout(imp_conn *c, int on)
{
    if (c->role != IMP_ROLE_SERVER)
        return IMP_ERR_INVAL;
    if (on) /* IMP-SESS-008 */
        c->flags |= F_DEFER_LOGOUT;
    else
        c->flags &= (uint8_t)~F_DEFER_LOGOUT;
    return 0;
}

void imp_conn_trim(imp_conn *c)
{
    /* IMP-LIB-003: what is released goes back through the allocator hook */
    if (c->in.p && c->in.pos == c->in.len)
        buf_release(c, &c->in);
    if (c->out.p && c->out.pos == c->out.len)
        buf_release(c, &c->out);
    const struct imp_refq *q = refs_of(c);
    if (q && q->head == q->end)
        refs_free(c);
}

int imp_conn_tick(imp_conn *c, uint64_t now_ms)
{
    if (c->err)
        return c->err;
    if (now_ms > c->now)
        c->now = now_ms; /* IMP-TIME-003 */
    if (c->state == IMP_S_CLOSING)
        return 0;
    if (!c->authed && c->deadline && c->now >= c->deadline)
        return fail(c, IMP_ERR_AUTH_TIMEOUT); /* IMP-TIME-001 */
    if (c->state == IMP_S_READY && c->ping_interval_ms && c->now >= c->next_ping) {
        if ((c->flags & F_PING_OUTSTANDING) && ++c->missed >= c->ping_max_missed)
            return fail(c, IMP_ERR_PING_TIMEOUT); /* IMP-TIME-002 */
        int r = send_empty(c, IMP_PING, ++c->ping_id);
        if (r)
            return fail(c, r);
        c->flags |= F_PING_OUTSTANDING;
        /* IMP-TIME-002: every I ms on the original schedule, so that a tick that comes late
         * does not push every later PING back; more than one interval late restarts it. */
        c->next_ping = time_after(c->next_ping, c->ping_interval_ms);
        if (c->next_ping <= c->now)
            c->next_ping = time_after(c->now, c->ping_interval_ms);
    }
    return 0;
}

uint64_t imp_conn_next_deadline(const imp_conn *c)
{
    uint64_t t = UINT64_MAX;
    if (c->err || c->state == IMP_S_CLOSING)
        return t;
    if (!c->authed && c->deadline)
        t = c->deadline;
    if (c->state == IMP_S_READY && c->ping_interval_ms && c->next_ping < t)
        t = c->next_ping;
    return t;
}

imp_state imp_conn_state(const imp_conn *c)
{
    return (imp_state)c->state;
}

imp_role imp_conn_role(const imp_conn *c)
{
    return (imp_role)c->role;
}

int imp_conn_error(const imp_conn *c)
{
    return c->err;
}

int imp_conn_want_close(const imp_conn *c)
{
    return c->state == IMP_S_CLOSING;
}

uint32_t imp_conn_peer_max_frame(const imp_conn *c)
{
    return c->role == IMP_ROLE_CLIENT ? c->peer_max_frame : 0; /* shares max_frame_preauth */
}

uint32_t imp_conn_peer_max_preauth(const imp_conn *c)
{
    return c->role == IMP_ROLE_CLIENT ? c->peer_max_preauth : 0; /* shares auth_timeout_ms */
}
