/* Payload fields and per-type message codec (SPEC.md sections 3 and 5). */
#include "imp/msg.h"

#include <string.h>

#include "imp/text.h"
#include "msg_internal.h"
#include "wire.h"

struct tag_info {
    uint8_t kind;
    uint8_t width; /* integer kinds: the fixed wire length (1, 2, 4, 8); 0: variable length */
    uint64_t min;  /* integer kinds: smallest value; others: shortest length */
    uint64_t max;  /* integer kinds: largest value; others: longest length */
    const char *name;
};

#define U16(n, lo)                   \
    {                                \
        IMP_K_U16, 2, lo, 0xFFFFu, n \
    }
#define U32(n, lo, hi)          \
    {                           \
        IMP_K_U32, 4, lo, hi, n \
    }
#define U64(n)                         \
    {                                  \
        IMP_K_U64, 8, 0, UINT64_MAX, n \
    }
#define BOOL(n)                \
    {                          \
        IMP_K_BOOL, 1, 0, 1, n \
    }
#define ENUM(n, lo, hi)          \
    {                            \
        IMP_K_ENUM, 1, lo, hi, n \
    }
#define VAR(n, k, lo, hi) \
    {                     \
        k, 0, lo, hi, n   \
    }

/* SPEC.md table 3.1 (IMP-FIELD-006, IMP-FIELD-010); test_msg.c compares it with the spec. */
static const struct tag_info tags[IMP_TAG_MAX + 1] = {
    [IMP_T_VERSION_MIN] = U16("VERSION_MIN", 1),
    [IMP_T_VERSION_MAX] = U16("VERSION_MAX", 1),
    [IMP_T_VERSION] = U16("VERSION", 0),
    [IMP_T_AGENT] = VAR("AGENT", IMP_K_TEXT, 1, 64),
    [IMP_T_CAPS] = VAR("CAPS", IMP_K_NAMES, 0, 1024),
    [IMP_T_MAX_FRAME] = U32("MAX_FRAME", IMP_FRAME_MIN_LIMIT, IMP_FRAME_MAX_HARD),
    [IMP_T_MAX_FRAME_PREAUTH] = U32("MAX_FRAME_PREAUTH", 1024, IMP_FRAME_MAX_HARD),
    [IMP_T_PING_INTERVAL] = U32("PING_INTERVAL", 0, UINT32_MAX),
    [IMP_T_AUTH_TIMEOUT] = U32("AUTH_TIMEOUT", 0, UINT32_MAX),
    [IMP_T_SERVER_TIME] = U64("SERVER_TIME"),
    [IMP_T_USER] = VAR("USER", IMP_K_NAME, 1, 32),
    [IMP_T_PASSWORD] = VAR("PASSWORD", IMP_K_BYTES, 1, 1024),
    [IMP_T_TOKEN] = VAR("TOKEN", IMP_K_BYTES, 16, 64),
    [IMP_T_SESSION_ID] = U64("SESSION_ID"),
    [IMP_T_LAST_SEQ] = U64("LAST_SEQ"),
    [IMP_T_ADMIN] = BOOL("ADMIN"),
    [IMP_T_TARGET_KIND] = ENUM("TARGET_KIND", 1, 3),
    [IMP_T_TARGET] = VAR("TARGET", IMP_K_NAME, 1, 32),
    [IMP_T_CLIENT_MSG_ID] = VAR("CLIENT_MSG_ID", IMP_K_TEXT, 1, 64),
    [IMP_T_CLASS] = ENUM("CLASS", 0, 1),
    [IMP_T_ACK_MODE] = ENUM("ACK_MODE", 0, 2),
    [IMP_T_HEADERS] = VAR("HEADERS", IMP_K_HEADERS, 0, 16384),
    [IMP_T_BODY] = VAR("BODY", IMP_K_BYTES, 0, IMP_FRAME_MAX_HARD),
    [IMP_T_MSG_ID] = U64("MSG_ID"),
    [IMP_T_OUTCOME] = ENUM("OUTCOME", 1, 3),
    [IMP_T_CODE] = U16("CODE", 1),
    [IMP_T_TEXT] = VAR("TEXT", IMP_K_TEXT, 0, 512),
    [IMP_T_DUPLICATE] = BOOL("DUPLICATE"),
    [IMP_T_RETRY_AFTER] = U32("RETRY_AFTER", 0, UINT32_MAX),
    [IMP_T_SEQ] = U64("SEQ"),
    [IMP_T_SENDER] = VAR("SENDER", IMP_K_NAME, 1, 32),
    [IMP_T_TIMESTAMP] = U64("TIMESTAMP"),
    [IMP_T_ROOM] = VAR("ROOM", IMP_K_NAME, 1, 32),
    [IMP_T_NAMES] = VAR("NAMES", IMP_K_NAMES, 0, 65536),
    [IMP_T_LIMIT] = U32("LIMIT", 0, UINT32_MAX),
    [IMP_T_CURSOR] = VAR("CURSOR", IMP_K_BYTES, 0, 64),
    [IMP_T_BEFORE_ID] = U64("BEFORE_ID"),
    [IMP_T_MORE] = BOOL("MORE"),
    [IMP_T_STATUS] = ENUM("STATUS", 0, 3),
    [IMP_T_STATUS_TEXT] = VAR("STATUS_TEXT", IMP_K_TEXT, 0, 256),
    [IMP_T_SESSIONS] = U32("SESSIONS", 0, UINT32_MAX),
    [IMP_T_ENABLE] = BOOL("ENABLE"),
    [IMP_T_STATS] = VAR("STATS", IMP_K_STATS, 0, 65536),
    [IMP_T_EVENT] = VAR("EVENT", IMP_K_TEXT, 1, 64),
    [IMP_T_COUNT] = U32("COUNT", 0, UINT32_MAX),
};

#define B(t) (UINT64_C(1) << IMP_T_##t)

struct type_fields {
    uint64_t required;
    uint64_t optional;
};

/* SPEC.md section 5, in the order of the type table in frame.c (imp_type_index). SENDER,
 * TIMESTAMP and MSG_ID appear only in server-to-client types: in a client's frame they are
 * unknown fields, skipped, so a client cannot claim another identity (IMP-SEC-004). */
static const struct type_fields fields[IMP_TYPE_COUNT] = {
    /* HELLO */ {B(VERSION_MIN) | B(VERSION_MAX), B(AGENT) | B(CAPS)},
    /* WELCOME */
    {B(VERSION) | B(MAX_FRAME) | B(MAX_FRAME_PREAUTH) | B(PING_INTERVAL) | B(AUTH_TIMEOUT),
     B(AGENT) | B(CAPS) | B(SERVER_TIME)},
    /* REGISTER */ {B(USER) | B(PASSWORD), 0},
    /* LOGIN */ {B(USER), B(PASSWORD) | B(TOKEN) | B(LAST_SEQ)},
    /* AUTH_OK */ {B(USER) | B(SESSION_ID) | B(LAST_SEQ), B(TOKEN) | B(ADMIN)},
    /* LOGOUT */ {0, 0},
    /* OK */ {0, B(COUNT) | B(MORE)},
    /* ERROR */ {B(CODE), B(TEXT) | B(RETRY_AFTER)},
    /* SEND */
    {B(TARGET_KIND) | B(BODY), B(TARGET) | B(CLIENT_MSG_ID) | B(CLASS) | B(ACK_MODE) | B(HEADERS)},
    /* ACK */ {B(OUTCOME), B(CLIENT_MSG_ID) | B(MSG_ID) | B(CODE) | B(TEXT) | B(DUPLICATE)},
    /* DELIVER */
    {B(TARGET_KIND) | B(BODY) | B(MSG_ID) | B(SEQ) | B(SENDER) | B(TIMESTAMP),
     B(TARGET) | B(CLASS) | B(HEADERS)},
    /* DELIVERED */ {B(SEQ), 0},
    /* JOIN */ {B(ROOM), 0},
    /* LEAVE */ {B(ROOM), 0},
    /* MEMBERS */ {B(ROOM), B(CURSOR) | B(LIMIT)},
    /* MEMBER_LIST */ {B(ROOM) | B(NAMES), B(CURSOR) | B(MORE)},
    /* HISTORY */ {B(ROOM), B(LIMIT) | B(BEFORE_ID)},
    /* HISTORY_ITEM */ {B(BODY) | B(MSG_ID) | B(SENDER) | B(TIMESTAMP) | B(ROOM), B(HEADERS)},
    /* ROOMS */ {0, B(CURSOR) | B(LIMIT)},
    /* ROOM_LIST */ {B(NAMES), B(CURSOR) | B(MORE)},
    /* PRESENCE */ {B(STATUS), B(STATUS_TEXT)},
    /* SUBSCRIBE */ {B(NAMES), B(ENABLE)},
    /* PRESENCE_EVENT */ {B(USER) | B(STATUS), B(TIMESTAMP) | B(STATUS_TEXT) | B(SESSIONS)},
    /* WHO */ {0, B(CURSOR) | B(LIMIT)},
    /* WHO_LIST */ {B(NAMES), B(CURSOR) | B(MORE)},
    /* STATS */ {0, 0},
    /* STATS_REPLY */ {B(STATS), B(SERVER_TIME)},
    /* MONITOR */ {B(ENABLE), 0},
    /* MONITOR_EVENT */ {B(TIMESTAMP) | B(EVENT), B(USER) | B(TEXT)},
    /* PING */ {0, 0},
    /* PONG */ {0, 0},
};

imp_kind imp_tag_kind(unsigned tag)
{
    return tag >= 1 && tag <= IMP_TAG_MAX ? (imp_kind)tags[tag].kind : (imp_kind)0;
}

const char *imp_tag_name(unsigned tag)
{
    return tag >= 1 && tag <= IMP_TAG_MAX ? tags[tag].name : NULL;
}

uint64_t imp_type_required(unsigned type)
{
    int i = imp_type_index(type);
    return i < 0 ? 0 : fields[i].required;
}

uint64_t imp_type_allowed(unsigned type)
{
    int i = imp_type_index(type);
    return i < 0 ? 0 : fields[i].required | fields[i].optional;
}

void imp_msg_init(imp_msg *m, uint8_t type, uint32_t request_id)
{
    m->type = type;
    m->request_id = request_id;
    m->present = 0;
}

void imp_msg_set_u(imp_msg *m, unsigned tag, uint64_t value)
{
    if (tag > IMP_TAG_MAX)
        return;
    m->v[tag].u = value;
    m->present |= UINT64_C(1) << tag;
}

void imp_msg_set_b(imp_msg *m, unsigned tag, const void *p, size_t len)
{
    if (tag > IMP_TAG_MAX)
        return;
    m->v[tag].b.p = p;
    m->v[tag].b.len = len;
    m->present |= UINT64_C(1) << tag;
}

void imp_msg_set_s(imp_msg *m, unsigned tag, const char *s)
{
    imp_msg_set_b(m, tag, s, strlen(s));
}

void imp_msg_clear(imp_msg *m, unsigned tag)
{
    if (tag <= IMP_TAG_MAX)
        m->present &= ~(UINT64_C(1) << tag);
}

/* IMP-FIELD-006, IMP-FIELD-007: a variable-length value's length and content. */
static inline int check_var(const struct tag_info *ti, const uint8_t *p, size_t len)
{
    if (len < ti->min || len > ti->max)
        return IMP_ERR_FIELD_LENGTH;
    switch (ti->kind) {
    case IMP_K_TEXT:
        return imp_utf8_valid(p, len) ? 0 : IMP_ERR_BAD_UTF8; /* IMP-TEXT-001 */
    case IMP_K_NAME:
        return imp_name_valid(p, len) ? 0 : IMP_ERR_BAD_NAME; /* IMP-TEXT-002 */
    case IMP_K_NAMES:
        return imp_names_check(p, len); /* IMP-FIELD-009 */
    case IMP_K_HEADERS:
        return imp_headers_check(p, len);
    case IMP_K_STATS:
        return imp_stats_check(p, len);
    default:
        return 0; /* bytes: opaque */
    }
}

/* IMP-FIELD-007, IMP-FIELD-010: an integer value's range. */
static int check_int(const struct tag_info *ti, uint64_t v)
{
    return v < ti->min || v > ti->max ? IMP_ERR_BAD_VALUE : 0;
}

/* Rules between fields and required fields (section 5), shared by decode and validate. */
static int check_message(const imp_msg *m, int ti)
{
    uint64_t missing = fields[ti].required & ~m->present;
    if (missing)
        return IMP_ERR_MISSING_FIELD; /* IMP-FIELD-005 */
    switch (m->type) {
    case IMP_HELLO: /* IMP-MSG-002 */
        if (m->v[IMP_T_VERSION_MAX].u < m->v[IMP_T_VERSION_MIN].u)
            return IMP_ERR_BAD_VALUE;
        break;
    case IMP_WELCOME: /* IMP-MSG-003 */
        if (m->v[IMP_T_MAX_FRAME_PREAUTH].u > m->v[IMP_T_MAX_FRAME].u)
            return IMP_ERR_BAD_VALUE;
        break;
    case IMP_LOGIN: { /* IMP-MSG-004 */
        int pw = imp_msg_has(m, IMP_T_PASSWORD), tok = imp_msg_has(m, IMP_T_TOKEN);
        if (!pw && !tok)
            return IMP_ERR_MISSING_FIELD;
        if (pw && tok)
            return IMP_ERR_FIELD_CONFLICT;
        break;
    }
    case IMP_SEND:
    case IMP_DELIVER: { /* IMP-MSG-006 */
        int named = m->v[IMP_T_TARGET_KIND].u != IMP_TARGET_BROADCAST;
        int has = imp_msg_has(m, IMP_T_TARGET);
        if (named && !has)
            return IMP_ERR_MISSING_FIELD;
        if (!named && has)
            return IMP_ERR_FIELD_CONFLICT;
        break;
    }
    case IMP_ACK: /* IMP-MSG-007 */
        if (m->v[IMP_T_OUTCOME].u == IMP_OUTCOME_REFUSED ? !imp_msg_has(m, IMP_T_CODE)
                                                         : !imp_msg_has(m, IMP_T_MSG_ID))
            return IMP_ERR_MISSING_FIELD;
        break;
    case IMP_PRESENCE: /* IMP-MSG-008 */
        if (m->v[IMP_T_STATUS].u == IMP_STATUS_OFFLINE)
            return IMP_ERR_BAD_VALUE;
        break;
    default:
        break;
    }
    return 0;
}

int imp_msg_decode(const imp_frame *f, imp_msg *m)
{
    int ti = imp_type_index(f->type);
    if (ti < 0)
        return IMP_ERR_UNKNOWN_TYPE;
    imp_msg_init(m, f->type, f->request_id);
    uint64_t allowed = fields[ti].required | fields[ti].optional;
    const uint8_t *p = f->payload;
    size_t left = f->length;
    unsigned prev = 0;
    while (left > 0) {
        /* IMP-FIELD-001, IMP-SEC-002: lengths are checked against what remains first. */
        if (left < 6)
            return IMP_ERR_TRUNCATED;
        unsigned tag = imp_get16(p);
        uint32_t len = imp_get32(p + 2);
        p += 6;
        left -= 6;
        if (len > left)
            return IMP_ERR_TRUNCATED;
        if (tag == 0)
            return IMP_ERR_ZERO_TAG; /* IMP-FIELD-002 */
        if (tag <= prev)             /* IMP-FIELD-003 */
            return tag == prev ? IMP_ERR_DUPLICATE_FIELD : IMP_ERR_FIELD_ORDER;
        prev = tag;
        if (tag > IMP_TAG_MAX || !((allowed >> tag) & 1u)) {
            if (tag & IMP_TAG_CRITICAL) /* IMP-FIELD-004 */
                return IMP_ERR_UNKNOWN_CRITICAL;
        } else {
            const struct tag_info *info = &tags[tag];
            unsigned w = info->width;
            int r;
            if (w) {
                if (len != w)
                    return IMP_ERR_FIELD_LENGTH; /* IMP-FIELD-006 */
                uint64_t v = w == 1   ? p[0]
                             : w == 2 ? imp_get16(p)
                             : w == 4 ? imp_get32(p)
                                      : imp_get64(p);
                r = check_int(info, v);
                m->v[tag].u = v;
            } else {
                r = check_var(info, p, len);
                m->v[tag].b.p = p; /* IMP-LIB-002: a view into the payload */
                m->v[tag].b.len = len;
            }
            if (r)
                return r;
            m->present |= UINT64_C(1) << tag;
        }
        p += len;
        left -= len;
    }
    return check_message(m, ti);
}

/* Check every field present (in ascending tag order: the first error by tag wins, as in
 * decode) and the message rules; returns the frame size (> IMP_FRAME_MAX_HARD if too large) or
 * an error. One pass over the fields present, not over every tag (issue 3). */
static int64_t check_and_size(const imp_msg *m)
{
    int ti = imp_type_index(m->type);
    if (ti < 0)
        return IMP_ERR_UNKNOWN_TYPE;
    uint64_t allowed = fields[ti].required | fields[ti].optional;
    if (m->present & ~allowed)
        return IMP_ERR_INVAL; /* also any bit outside 1..IMP_TAG_MAX: never allowed */
    uint64_t size = IMP_HEADER_SIZE;
    for (uint64_t rest = m->present; rest; rest &= rest - 1) {
        unsigned tag = imp_low_bit(rest);
        const struct tag_info *info = &tags[tag];
        const imp_value *v = &m->v[tag];
        int r;
        if (info->width) {
            r = check_int(info, v->u);
            size += 6u + info->width;
        } else {
            r = check_var(info, v->b.p, v->b.len);
            size += 6u + v->b.len; /* checked: at most IMP_FRAME_MAX_HARD each */
        }
        if (r)
            return r;
    }
    int r = check_message(m, ti);
    return r ? r : (int64_t)size;
}

int imp_msg_validate(const imp_msg *m)
{
    int64_t r = check_and_size(m);
    return r < 0 ? (int)r : 0;
}

imp_ssize imp_msg_encoded_size(const imp_msg *m)
{
    int64_t size = check_and_size(m);
    if (size < 0)
        return (imp_ssize)size;
    if (size > IMP_FRAME_MAX_HARD)
        return IMP_ERR_TOO_LARGE;
    return (imp_ssize)size;
}

size_t imp_msg_write(const imp_msg *m, uint8_t *buf, size_t size)
{
    /* IMP-FIELD-008: ascending tags, fixed-width integers, absent fields omitted. Only the
     * fields present are visited (validated: every bit is a defined tag). */
    imp_frame_header_write(buf, m->type, (uint32_t)(size - IMP_HEADER_SIZE), m->request_id);
    uint8_t *p = buf + IMP_HEADER_SIZE;
    for (uint64_t rest = m->present; rest; rest &= rest - 1) {
        unsigned tag = imp_low_bit(rest);
        unsigned w = tags[tag].width;
        uint64_t v = m->v[tag].u;
        imp_put16(p, (uint16_t)tag);
        switch (w) {
        case 1:
            imp_put32(p + 2, 1);
            p[6] = (uint8_t)v;
            p += 7;
            break;
        case 2:
            imp_put32(p + 2, 2);
            imp_put16(p + 6, (uint16_t)v);
            p += 8;
            break;
        case 4:
            imp_put32(p + 2, 4);
            imp_put32(p + 6, (uint32_t)v);
            p += 10;
            break;
        case 8:
            imp_put32(p + 2, 8);
            imp_put64(p + 6, v);
            p += 14;
            break;
        default: {
            size_t len = m->v[tag].b.len;
            imp_put32(p + 2, (uint32_t)len);
            if (len)
                memcpy(p + 6, m->v[tag].b.p, len);
            p += 6 + len;
        }
        }
    }
    return (size_t)(p - buf);
}

imp_ssize imp_msg_encode(const imp_msg *m, uint8_t *buf, size_t cap)
{
    imp_ssize size = imp_msg_encoded_size(m);
    if (size < 0)
        return size;
    if ((size_t)size > cap)
        return IMP_ERR_BUFFER;
    imp_msg_write(m, buf, (size_t)size);
    return size;
}
