/* Shared by the fuzz targets: an independent reference model of the IMP/1 codec, written from
 * protocol/SPEC.md alone (not from the library sources), so that the targets can compare the
 * library with it and abort() on any disagreement. A fuzzer then finds logic bugs, not only memory
 * bugs.
 *
 * Everything here is static inline: each target includes what it needs and no unused-function
 * warnings arise. Nothing allocates except fz_buf.
 *
 * Requirements transcribed here: IMP-FRAME-001..006, IMP-FIELD-001..010 (table 3.1),
 * IMP-TEXT-001..003, IMP-MSG-002..004, 006..009, section 5's field table, section 7's state
 * tables (IMP-SESS-002), IMP-ERR-002 (which codes are fatal).
 */
#ifndef IMP_FUZZ_REF_H
#define IMP_FUZZ_REF_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "imp/imp.h"

/* ---- failing loudly ------------------------------------------------------------------------ */

static inline void fz_fail(const char *file, int line, const char *what)
{
    fprintf(stderr, "%s:%d: invariant violated: %s\n", file, line, what);
    fflush(stderr);
    abort();
}
#define FZ_CHECK(c)                          \
    do {                                     \
        if (!(c))                            \
            fz_fail(__FILE__, __LINE__, #c); \
    } while (0)
/* Like FZ_CHECK, printing two integers (e.g. got and expected) first. */
#define FZ_CHECK_EQ(a, b)                                                    \
    do {                                                                     \
        long long fz_a_ = (long long)(a), fz_b_ = (long long)(b);            \
        if (fz_a_ != fz_b_) {                                                \
            fprintf(stderr, "%s = %lld, %s = %lld\n", #a, fz_a_, #b, fz_b_); \
            fz_fail(__FILE__, __LINE__, #a " == " #b);                       \
        }                                                                    \
    } while (0)

/* ---- big-endian access ------------------------------------------------------------------- */

static inline unsigned fz_be16(const uint8_t *p)
{
    return (unsigned)p[0] << 8 | p[1];
}
static inline uint32_t fz_be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static inline uint64_t fz_be64(const uint8_t *p)
{
    return (uint64_t)fz_be32(p) << 32 | fz_be32(p + 4);
}
static inline void fz_put16(uint8_t *p, unsigned v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}
static inline void fz_put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

/* ---- a byte source for decisions (FuzzedDataProvider-like, but from the front) ------------- */

typedef struct fz_src {
    const uint8_t *p;
    size_t n;
} fz_src;

/* The next byte, or dflt once the source is exhausted (so an empty source means "defaults"). */
static inline unsigned fz_byte(fz_src *s, unsigned dflt)
{
    if (s->n == 0)
        return dflt;
    s->n--;
    return *s->p++;
}
static inline uint32_t fz_u32(fz_src *s)
{
    uint32_t v = 0;
    for (int i = 0; i < 4; i++)
        v = v << 8 | fz_byte(s, 0);
    return v;
}
/* Up to n bytes as a view (fewer when the source runs out). */
static inline size_t fz_take(fz_src *s, size_t n, const uint8_t **out)
{
    if (n > s->n)
        n = s->n;
    *out = s->p;
    s->p += n;
    s->n -= n;
    return n;
}

/* ---- a growable byte buffer (harness only) ------------------------------------------------ */

typedef struct fz_buf {
    uint8_t *p;
    size_t len, cap;
} fz_buf;

static inline void fz_buf_add(fz_buf *b, const void *p, size_t n)
{
    if (n == 0)
        return;
    if (b->cap - b->len < n) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap - b->len < n)
            cap *= 2;
        uint8_t *q = realloc(b->p, cap);
        if (!q)
            abort(); /* the harness itself is out of memory: not a library finding */
        b->p = q;
        b->cap = cap;
    }
    memcpy(b->p + b->len, p, n);
    b->len += n;
}
static inline void fz_buf_drop(fz_buf *b, size_t n)
{
    memmove(b->p, b->p + n, b->len - n);
    b->len -= n;
}
static inline void fz_buf_free(fz_buf *b)
{
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

/* ---- text and names (section 4) ------------------------------------------------------------ */

/* IMP-TEXT-001 by decoding code points (a different method from a byte-range table): each
 * sequence is decoded, then overlong forms, surrogates, values above U+10FFFF and U+0000 are
 * refused. */
static inline int ref_utf8_valid(const uint8_t *p, size_t len)
{
    size_t i = 0;
    while (i < len) {
        uint8_t c = p[i];
        uint32_t cp, min;
        size_t n;
        if (c < 0x80) {
            cp = c;
            n = 1;
            min = 0;
        } else if ((c & 0xE0) == 0xC0) {
            cp = c & 0x1Fu;
            n = 2;
            min = 0x80;
        } else if ((c & 0xF0) == 0xE0) {
            cp = c & 0x0Fu;
            n = 3;
            min = 0x800;
        } else if ((c & 0xF8) == 0xF0) {
            cp = c & 0x07u;
            n = 4;
            min = 0x10000;
        } else {
            return 0; /* stray continuation byte or F8..FF */
        }
        if (n > len - i)
            return 0; /* truncated */
        for (size_t k = 1; k < n; k++) {
            if ((p[i + k] & 0xC0) != 0x80)
                return 0;
            cp = cp << 6 | (p[i + k] & 0x3Fu);
        }
        if (cp < min || cp == 0 || (cp >= 0xD800 && cp <= 0xDFFF) || cp > 0x10FFFF)
            return 0;
        i += n;
    }
    return 1;
}

static inline int ref_is_alnum(uint8_t c)
{
    return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
}

/* IMP-TEXT-002 */
static inline int ref_name_valid(const uint8_t *p, size_t len)
{
    if (len < 1 || len > 32 || !ref_is_alnum(p[0]))
        return 0;
    for (size_t i = 1; i < len; i++)
        if (!ref_is_alnum(p[i]) && p[i] != '_' && p[i] != '-' && p[i] != '.')
            return 0;
    return 1;
}

/* IMP-TEXT-003 */
static inline uint8_t ref_fold(uint8_t c)
{
    return c >= 'A' && c <= 'Z' ? (uint8_t)(c - 'A' + 'a') : c;
}

/* ---- lists (IMP-FIELD-009) ------------------------------------------------------------------ */

static inline int ref_key_valid(const uint8_t *p, size_t len)
{
    if (len < 1 || len > 64)
        return 0;
    for (size_t i = 0; i < len; i++)
        if (!ref_is_alnum(p[i]) && p[i] != '-' && p[i] != '_' && p[i] != '.')
            return 0;
    return 1;
}

static inline int ref_stat_name_valid(const uint8_t *p, size_t len)
{
    if (len < 1 || len > 64)
        return 0;
    for (size_t i = 0; i < len; i++)
        if (!((p[i] >= 'a' && p[i] <= 'z') || (p[i] >= '0' && p[i] <= '9') || p[i] == '_' ||
              p[i] == '.'))
            return 0;
    return 1;
}

static inline int ref_keys_equal(const uint8_t *a, size_t alen, const uint8_t *b, size_t blen)
{
    if (alen != blen)
        return 0;
    for (size_t i = 0; i < alen; i++)
        if (ref_fold(a[i]) != ref_fold(b[i]))
            return 0;
    return 1;
}

/* 1 if p[0..len) is a well-formed list of the kind (IMP_K_NAMES/HEADERS/STATS), else 0.
 * *count receives the number of entries walked (complete ones). */
static inline int ref_list_valid(int kind, const uint8_t *p, size_t len, size_t *count)
{
    size_t off = 0, n = 0;
    int ok = 1;
    while (off < len) {
        size_t rem = len - off;
        if (kind == IMP_K_NAMES) {
            size_t l = p[off];
            if (l + 1 > rem)
                return 0;
            if (!ref_name_valid(p + off + 1, l))
                ok = 0;
            off += 1 + l;
        } else if (kind == IMP_K_HEADERS) {
            size_t kl = p[off];
            if (1 + kl + 2 > rem)
                return 0;
            size_t vl = fz_be16(p + off + 1 + kl);
            if (1 + kl + 2 + vl > rem)
                return 0;
            const uint8_t *k = p + off + 1, *v = p + off + 3 + kl;
            if (!ref_key_valid(k, kl) || vl > 1024 || !ref_utf8_valid(v, vl))
                ok = 0;
            if (n >= 32)
                ok = 0; /* a 33rd entry: invalid, and no need for the quadratic scan */
            /* no two keys equal ignoring ASCII case: compare with every earlier key */
            size_t o2 = 0;
            while (ok && o2 < off) {
                size_t kl2 = p[o2];
                if (ref_keys_equal(p + o2 + 1, kl2, k, kl))
                    ok = 0;
                o2 += 3 + kl2 + fz_be16(p + o2 + 1 + kl2);
            }
            off += 3 + kl + vl;
        } else {
            size_t l = p[off];
            if (1 + l + 8 > rem)
                return 0;
            if (!ref_stat_name_valid(p + off + 1, l))
                ok = 0;
            off += 1 + l + 8;
        }
        n++;
    }
    if (count)
        *count = n;
    if (kind == IMP_K_NAMES && n > 1000)
        ok = 0;
    if (kind == IMP_K_HEADERS && n > 32)
        ok = 0;
    if (kind == IMP_K_STATS && n > 1000)
        ok = 0;
    return ok;
}

/* 1 if p[0..len) splits exactly into entries of the kind (structure only: lengths). */
static inline int ref_list_whole(int kind, const uint8_t *p, size_t len)
{
    size_t off = 0;
    while (off < len) {
        size_t rem = len - off, l = p[off], e;
        if (kind == IMP_K_NAMES)
            e = 1 + l;
        else if (kind == IMP_K_STATS)
            e = 1 + l + 8;
        else if (1 + l + 2 > rem)
            return 0;
        else
            e = 1 + l + 2 + fz_be16(p + off + 1 + l);
        if (e > rem)
            return 0;
        off += e;
    }
    return 1;
}

/* ---- field table 3.1 ------------------------------------------------------------------------ */

typedef struct ref_tag {
    int kind;    /* IMP_K_* */
    uint64_t lo; /* integers: smallest value checked per field; variable kinds: min length */
    uint64_t hi; /* integers: largest value; variable kinds: max length */
} ref_tag;

static inline ref_tag ref_tag_info(unsigned tag)
{
    static const ref_tag t[46] = {
        [1] = {IMP_K_U16, 1, 0xFFFF},         /* VERSION_MIN >= 1 */
        [2] = {IMP_K_U16, 0, 0xFFFF},         /* VERSION_MAX (>= VERSION_MIN: cross-field) */
        [3] = {IMP_K_U16, 0, 0xFFFF},         /* VERSION */
        [4] = {IMP_K_TEXT, 1, 64},            /* AGENT */
        [5] = {IMP_K_NAMES, 0, 1024},         /* CAPS */
        [6] = {IMP_K_U32, 4096, 16777216},    /* MAX_FRAME */
        [7] = {IMP_K_U32, 1024, 0xFFFFFFFFu}, /* MAX_FRAME_PREAUTH (<= MAX_FRAME: cross) */
        [8] = {IMP_K_U32, 0, 0xFFFFFFFFu},    /* PING_INTERVAL */
        [9] = {IMP_K_U32, 0, 0xFFFFFFFFu},    /* AUTH_TIMEOUT */
        [10] = {IMP_K_U64, 0, UINT64_MAX},    /* SERVER_TIME */
        [11] = {IMP_K_NAME, 1, 32},           /* USER */
        [12] = {IMP_K_BYTES, 1, 1024},        /* PASSWORD */
        [13] = {IMP_K_BYTES, 16, 64},         /* TOKEN */
        [14] = {IMP_K_U64, 0, UINT64_MAX},    /* SESSION_ID */
        [15] = {IMP_K_U64, 0, UINT64_MAX},    /* LAST_SEQ */
        [16] = {IMP_K_BOOL, 0, 1},            /* ADMIN */
        [17] = {IMP_K_ENUM, 1, 3},            /* TARGET_KIND */
        [18] = {IMP_K_NAME, 1, 32},           /* TARGET */
        [19] = {IMP_K_TEXT, 1, 64},           /* CLIENT_MSG_ID */
        [20] = {IMP_K_ENUM, 0, 1},            /* CLASS */
        [21] = {IMP_K_ENUM, 0, 2},            /* ACK_MODE */
        [22] = {IMP_K_HEADERS, 0, 16384},     /* HEADERS */
        [23] = {IMP_K_BYTES, 0, 16777216},    /* BODY */
        [24] = {IMP_K_U64, 0, UINT64_MAX},    /* MSG_ID */
        [25] = {IMP_K_ENUM, 1, 3},            /* OUTCOME */
        [26] = {IMP_K_U16, 1, 0xFFFF},        /* CODE >= 1 */
        [27] = {IMP_K_TEXT, 0, 512},          /* TEXT */
        [28] = {IMP_K_BOOL, 0, 1},            /* DUPLICATE */
        [29] = {IMP_K_U32, 0, 0xFFFFFFFFu},   /* RETRY_AFTER */
        [30] = {IMP_K_U64, 0, UINT64_MAX},    /* SEQ */
        [31] = {IMP_K_NAME, 1, 32},           /* SENDER */
        [32] = {IMP_K_U64, 0, UINT64_MAX},    /* TIMESTAMP */
        [33] = {IMP_K_NAME, 1, 32},           /* ROOM */
        [34] = {IMP_K_NAMES, 0, 65536},       /* NAMES */
        [35] = {IMP_K_U32, 0, 0xFFFFFFFFu},   /* LIMIT */
        [36] = {IMP_K_BYTES, 0, 64},          /* CURSOR */
        [37] = {IMP_K_U64, 0, UINT64_MAX},    /* BEFORE_ID */
        [38] = {IMP_K_BOOL, 0, 1},            /* MORE */
        [39] = {IMP_K_ENUM, 0, 3},            /* STATUS */
        [40] = {IMP_K_TEXT, 0, 256},          /* STATUS_TEXT */
        [41] = {IMP_K_U32, 0, 0xFFFFFFFFu},   /* SESSIONS */
        [42] = {IMP_K_BOOL, 0, 1},            /* ENABLE */
        [43] = {IMP_K_STATS, 0, 65536},       /* STATS */
        [44] = {IMP_K_TEXT, 1, 64},           /* EVENT */
        [45] = {IMP_K_U32, 0, 0xFFFFFFFFu},   /* COUNT */
    };
    ref_tag none = {0, 0, 0};
    return tag >= 1 && tag <= 45 ? t[tag] : none;
}

static inline unsigned ref_int_width(int kind)
{
    switch (kind) {
    case IMP_K_U16:
        return 2;
    case IMP_K_U32:
        return 4;
    case IMP_K_U64:
        return 8;
    case IMP_K_BOOL:
    case IMP_K_ENUM:
        return 1;
    default:
        return 0;
    }
}

/* ---- section 5: types, directions, required and optional fields ----------------------------- */

#define FZ_B(t) (UINT64_C(1) << (t))

typedef struct ref_type {
    uint8_t type;
    uint8_t dir; /* IMP_DIR_* */
    uint64_t req, opt;
} ref_type;

/* NULL for a type IMP/1 does not define. */
static inline const ref_type *ref_type_info(unsigned type)
{
    static const ref_type t[] = {
        {0x01, IMP_DIR_C2S, FZ_B(1) | FZ_B(2), FZ_B(4) | FZ_B(5)},
        {0x02, IMP_DIR_S2C, FZ_B(3) | FZ_B(6) | FZ_B(7) | FZ_B(8) | FZ_B(9),
         FZ_B(4) | FZ_B(5) | FZ_B(10)},
        {0x03, IMP_DIR_C2S, FZ_B(11) | FZ_B(12), 0},
        {0x04, IMP_DIR_C2S, FZ_B(11), FZ_B(12) | FZ_B(13) | FZ_B(15)},
        {0x05, IMP_DIR_S2C, FZ_B(11) | FZ_B(14) | FZ_B(15), FZ_B(13) | FZ_B(16)},
        {0x06, IMP_DIR_C2S, 0, 0},
        {0x07, IMP_DIR_S2C, 0, FZ_B(45) | FZ_B(38)},
        {0x08, IMP_DIR_BOTH, FZ_B(26), FZ_B(27) | FZ_B(29)},
        {0x10, IMP_DIR_C2S, FZ_B(17) | FZ_B(23),
         FZ_B(18) | FZ_B(19) | FZ_B(20) | FZ_B(21) | FZ_B(22)},
        {0x11, IMP_DIR_S2C, FZ_B(25), FZ_B(19) | FZ_B(24) | FZ_B(26) | FZ_B(27) | FZ_B(28)},
        {0x12, IMP_DIR_S2C, FZ_B(17) | FZ_B(23) | FZ_B(24) | FZ_B(30) | FZ_B(31) | FZ_B(32),
         FZ_B(18) | FZ_B(20) | FZ_B(22)},
        {0x13, IMP_DIR_C2S, FZ_B(30), 0},
        {0x20, IMP_DIR_C2S, FZ_B(33), 0},
        {0x21, IMP_DIR_C2S, FZ_B(33), 0},
        {0x22, IMP_DIR_C2S, FZ_B(33), FZ_B(36) | FZ_B(35)},
        {0x23, IMP_DIR_S2C, FZ_B(33) | FZ_B(34), FZ_B(36) | FZ_B(38)},
        {0x24, IMP_DIR_C2S, FZ_B(33), FZ_B(35) | FZ_B(37)},
        {0x25, IMP_DIR_S2C, FZ_B(23) | FZ_B(24) | FZ_B(31) | FZ_B(32) | FZ_B(33), FZ_B(22)},
        {0x26, IMP_DIR_C2S, 0, FZ_B(36) | FZ_B(35)},
        {0x27, IMP_DIR_S2C, FZ_B(34), FZ_B(36) | FZ_B(38)},
        {0x30, IMP_DIR_C2S, FZ_B(39), FZ_B(40)},
        {0x31, IMP_DIR_C2S, FZ_B(34), FZ_B(42)},
        {0x32, IMP_DIR_S2C, FZ_B(11) | FZ_B(39), FZ_B(32) | FZ_B(40) | FZ_B(41)},
        {0x33, IMP_DIR_C2S, 0, FZ_B(36) | FZ_B(35)},
        {0x34, IMP_DIR_S2C, FZ_B(34), FZ_B(36) | FZ_B(38)},
        {0x40, IMP_DIR_C2S, 0, 0},
        {0x41, IMP_DIR_S2C, FZ_B(43), FZ_B(10)},
        {0x42, IMP_DIR_C2S, FZ_B(42), 0},
        {0x43, IMP_DIR_S2C, FZ_B(32) | FZ_B(44), FZ_B(11) | FZ_B(27)},
        {0x50, IMP_DIR_BOTH, 0, 0},
        {0x51, IMP_DIR_BOTH, 0, 0},
    };
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++)
        if (t[i].type == type)
            return &t[i];
    return NULL;
}

/* ---- the header (IMP-FRAME-001..006) ------------------------------------------------------ */

/* What imp_frame_parse must return for buf[0..len) with the limit: < 0 an error, 0 incomplete
 * (*need set), > 0 the frame size. */
static inline long long ref_frame(const uint8_t *buf, size_t len, size_t max_frame, size_t *need)
{
    if (max_frame == 0 || max_frame > 16777216u)
        max_frame = 16777216u;
    if (len < 12) {
        *need = 12 - len;
        return 0;
    }
    if (buf[0] != 1)
        return IMP_ERR_BAD_VERSION;
    if (!ref_type_info(buf[1]))
        return IMP_ERR_UNKNOWN_TYPE;
    if (buf[2] || buf[3])
        return IMP_ERR_RESERVED_FLAGS;
    uint64_t size = 12 + (uint64_t)fz_be32(buf + 4);
    if (size > max_frame)
        return IMP_ERR_FRAME_TOO_LARGE;
    if (len < size) {
        *need = (size_t)(size - len);
        return 0;
    }
    return (long long)size;
}

/* ---- the payload (sections 3 and 5) ------------------------------------------------------- */

/* A reference decoding: the fields of the type that are present, as raw value views. */
typedef struct ref_msg {
    uint64_t present;
    const uint8_t *val[46];
    uint32_t len[46];
    uint64_t u[46]; /* integer kinds */
    int unknown;    /* unknown (skipped) fields were seen */
} ref_msg;

/* Per-field checks (IMP-FIELD-006, 007, 010 except the cross-field parts). */
static inline int ref_field_check(unsigned tag, const uint8_t *v, size_t len, uint64_t *u)
{
    ref_tag t = ref_tag_info(tag);
    unsigned w = ref_int_width(t.kind);
    if (w) {
        if (len != w)
            return IMP_ERR_FIELD_LENGTH;
        uint64_t x = w == 1 ? v[0] : w == 2 ? fz_be16(v) : w == 4 ? fz_be32(v) : fz_be64(v);
        *u = x;
        return x < t.lo || x > t.hi ? IMP_ERR_BAD_VALUE : 0;
    }
    if (len < t.lo || len > t.hi)
        return IMP_ERR_FIELD_LENGTH;
    switch (t.kind) {
    case IMP_K_TEXT:
        return ref_utf8_valid(v, len) ? 0 : IMP_ERR_BAD_UTF8;
    case IMP_K_NAME:
        return ref_name_valid(v, len) ? 0 : IMP_ERR_BAD_NAME;
    case IMP_K_NAMES:
    case IMP_K_HEADERS:
    case IMP_K_STATS:
        return ref_list_valid(t.kind, v, len, NULL) ? 0 : IMP_ERR_BAD_LIST;
    default:
        return 0;
    }
}

/* Section 5 rules between fields (IMP-FIELD-005, IMP-MSG-002..004, 006..008). */
static inline int ref_cross_check(unsigned type, const ref_msg *m)
{
    const ref_type *ti = ref_type_info(type);
    if (ti->req & ~m->present)
        return IMP_ERR_MISSING_FIELD;
    switch (type) {
    case IMP_HELLO:
        return m->u[2] < m->u[1] ? IMP_ERR_BAD_VALUE : 0;
    case IMP_WELCOME:
        return m->u[7] > m->u[6] ? IMP_ERR_BAD_VALUE : 0;
    case IMP_LOGIN: {
        int pw = (m->present & FZ_B(12)) != 0, tok = (m->present & FZ_B(13)) != 0;
        return !pw && !tok ? IMP_ERR_MISSING_FIELD : pw && tok ? IMP_ERR_FIELD_CONFLICT : 0;
    }
    case IMP_SEND:
    case IMP_DELIVER: {
        int has = (m->present & FZ_B(18)) != 0;
        if (m->u[17] == 3)
            return has ? IMP_ERR_FIELD_CONFLICT : 0;
        return has ? 0 : IMP_ERR_MISSING_FIELD;
    }
    case IMP_ACK:
        if (m->u[25] == 3)
            return m->present & FZ_B(26) ? 0 : IMP_ERR_MISSING_FIELD;
        return m->present & FZ_B(24) ? 0 : IMP_ERR_MISSING_FIELD;
    case IMP_PRESENCE:
        return m->u[39] == 0 ? IMP_ERR_BAD_VALUE : 0;
    default:
        return 0;
    }
}

/* The expected result of imp_msg_decode on a payload: 0 or the first error, walking fields in
 * order (msg.h documents the order), then required fields, then cross-field rules. *alt gets a
 * second acceptable error for the one case the spec leaves open (see ref_alt_note), else 0. */
static inline int ref_decode(unsigned type, const uint8_t *p, size_t len, ref_msg *m, int *alt)
{
    memset(m, 0, sizeof *m);
    *alt = 0;
    const ref_type *ti = ref_type_info(type);
    if (!ti)
        return IMP_ERR_UNKNOWN_TYPE;
    uint64_t allowed = ti->req | ti->opt;
    size_t off = 0;
    unsigned prev = 0;
    while (off < len) {
        if (len - off < 6)
            return IMP_ERR_TRUNCATED; /* IMP-FIELD-001 */
        unsigned tag = fz_be16(p + off);
        uint32_t flen = fz_be32(p + off + 2);
        if (flen > len - off - 6)
            return IMP_ERR_TRUNCATED;
        if (tag == 0)
            return IMP_ERR_ZERO_TAG; /* IMP-FIELD-002 */
        if (tag < prev)
            return IMP_ERR_FIELD_ORDER; /* IMP-FIELD-003 */
        if (tag == prev)
            return IMP_ERR_DUPLICATE_FIELD;
        prev = tag;
        const uint8_t *v = p + off + 6;
        off += 6 + (size_t)flen;
        if (tag > 45 || !(allowed & FZ_B(tag))) { /* IMP-FIELD-004 */
            if (tag & 0x8000u)
                return IMP_ERR_UNKNOWN_CRITICAL;
            m->unknown = 1;
            continue;
        }
        int e = ref_field_check(tag, v, flen, &m->u[tag]);
        if (e) {
            /* VERSION_MAX = 0 is below any VERSION_MIN (>= 1): reporting it as the field's
             * BAD_VALUE at once, instead of after the walk, is the same rule seen early. */
            return e;
        }
        if (tag == 2 && m->u[2] == 0)
            *alt = IMP_ERR_BAD_VALUE;
        /* MAX_FRAME_PREAUTH above the hard limit can never be <= MAX_FRAME either. */
        if (tag == 7 && m->u[7] > 16777216u)
            *alt = IMP_ERR_BAD_VALUE;
        m->present |= FZ_B(tag);
        m->val[tag] = v;
        m->len[tag] = flen;
    }
    int e = ref_cross_check(type, m);
    if (e == 0)
        *alt = 0;
    return e;
}

/* Fatal wire codes (IMP-ERR-002): 1 fatal, 0 not, -1 not specified (2xx, unknown classes). */
static inline int ref_wire_fatal(unsigned code)
{
    unsigned cls = code / 100;
    if (cls == 3 || cls == 6 || cls == 7)
        return 1;
    if (cls == 4 || cls == 5)
        return 0;
    return -1;
}

/* ---- comparing messages -------------------------------------------------------------------- */

/* 1 if a and b carry the same type, request id, fields and values (views by content). */
static inline int fz_msg_equal(const imp_msg *a, const imp_msg *b)
{
    if (a->type != b->type || a->request_id != b->request_id || a->present != b->present)
        return 0;
    for (unsigned t = 1; t <= 45; t++) {
        if (!(a->present & FZ_B(t)))
            continue;
        if (ref_int_width(ref_tag_info(t).kind)) {
            if (a->v[t].u != b->v[t].u)
                return 0;
        } else {
            if (a->v[t].b.len != b->v[t].b.len)
                return 0;
            if (a->v[t].b.len && memcmp(a->v[t].b.p, b->v[t].b.p, a->v[t].b.len) != 0)
                return 0;
        }
    }
    return 1;
}

/* The library's decoding m must carry exactly the reference fields r of frame f. */
static inline void fz_check_decoded(const imp_frame *f, const imp_msg *m, const ref_msg *r)
{
    FZ_CHECK(m->type == f->type);
    FZ_CHECK(m->request_id == f->request_id);
    FZ_CHECK(m->present == r->present);
    for (unsigned t = 1; t <= 45; t++) {
        if (!(r->present & FZ_B(t)))
            continue;
        if (ref_int_width(ref_tag_info(t).kind)) {
            FZ_CHECK(m->v[t].u == r->u[t]);
        } else {
            /* IMP-LIB-002: a view of exactly the value bytes inside the payload */
            FZ_CHECK(m->v[t].b.len == r->len[t]);
            FZ_CHECK(r->len[t] == 0 || m->v[t].b.p == r->val[t]);
        }
    }
}

/* Decode frame bytes with both the library and the reference and check that they agree
 * (result and fields). Returns the library's result. */
static inline int fz_decode_checked(const imp_frame *f, imp_msg *m)
{
    ref_msg r;
    int alt;
    int want = ref_decode(f->type, f->payload, f->length, &r, &alt);
    int got = imp_msg_decode(f, m);
    if (got != want && !(alt && got == alt)) {
        fprintf(stderr, "decode type 0x%02x len %u: library %d (%s), reference %d (%s)\n", f->type,
                (unsigned)f->length, got, imp_err_name(got) ? imp_err_name(got) : "?", want,
                imp_err_name(want) ? imp_err_name(want) : "ok");
        fz_fail(__FILE__, __LINE__, "imp_msg_decode agrees with the reference decoder");
    }
    if (got == 0) {
        fz_check_decoded(f, m, &r);
        /* a decoded message is a valid message (decode and validate apply the same rules) */
        FZ_CHECK_EQ(imp_msg_validate(m), 0);
    }
    return got;
}

#endif
