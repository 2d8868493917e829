/* Tests for protocol/msg.c: the field codec and the per-type message rules (SPEC.md sections 3,
 * 4, 5 and 12).
 *
 * The static tables are not transcribed here: SPEC.md itself is parsed (table 3.1 and the frame
 * type table of section 5) and every row and every R/O mark is compared with the library, so a
 * change to the spec that the code does not follow fails a test. The same parsed tables drive
 * the data-driven checks (every type x every required field, every field's length limits, every
 * bool/enum value) on both sides: imp_msg_validate/imp_msg_encode, and imp_msg_decode of frames
 * written byte by byte by this file's own little encoder (never the library's).
 *
 * Decoded inputs are exact-size heap copies so that AddressSanitizer reports any over-read.
 * The random round trip prints its seed; set IMP_TEST_SEED to replay one.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <ctype.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "imp/imp.h"

#ifndef IMP_SRCDIR
#define IMP_SRCDIR "."
#endif
#define SPEC_PATH IMP_SRCDIR "/protocol/SPEC.md"

#define BIT(t) (UINT64_C(1) << (t))
#define HARD IMP_FRAME_MAX_HARD

/* UTF-8 spellings used by SPEC.md's tables. */
#define EN_DASH "\xe2\x80\x93"
#define GEQ "\xe2\x89\xa5"
#define ARROW "\xe2\x86\x92"

/* ---- SPEC.md, parsed ------------------------------------------------------------------------ */

typedef struct spec_field {
    unsigned tag;
    char name[40];
    imp_kind kind;
    uint64_t min_len, max_len; /* integer kinds: both the fixed length */
    uint64_t vmin, vmax;       /* integer kinds: the value range the table gives (or the kind's) */
    unsigned nenum;            /* enum kind: the listed values */
    uint64_t enums[16];
} spec_field;

typedef struct spec_type {
    unsigned type;
    char name[40];
    unsigned dir;
    uint64_t req, allowed;
} spec_type;

static spec_field g_field[128];
static size_t g_nfield;
static spec_type g_type[64];
static size_t g_ntype;
static char g_spec_err[256]; /* empty when SPEC.md was parsed */

static const struct {
    const char *s;
    imp_kind k;
} kind_names[] = {{"u16", IMP_K_U16},         {"u32", IMP_K_U32},     {"u64", IMP_K_U64},
                  {"bool", IMP_K_BOOL},       {"enum", IMP_K_ENUM},   {"text", IMP_K_TEXT},
                  {"name", IMP_K_NAME},       {"bytes", IMP_K_BYTES}, {"names", IMP_K_NAMES},
                  {"headers", IMP_K_HEADERS}, {"stats", IMP_K_STATS}};

static int is_int_kind(imp_kind k)
{
    return k == IMP_K_U16 || k == IMP_K_U32 || k == IMP_K_U64 || k == IMP_K_BOOL || k == IMP_K_ENUM;
}

static int is_list_kind(imp_kind k)
{
    return k == IMP_K_NAMES || k == IMP_K_HEADERS || k == IMP_K_STATS;
}

static size_t int_width(imp_kind k)
{
    switch (k) {
    case IMP_K_U16:
        return 2;
    case IMP_K_U32:
        return 4;
    case IMP_K_U64:
        return 8;
    default:
        return 1;
    }
}

static uint64_t kind_max(imp_kind k)
{
    switch (k) {
    case IMP_K_U16:
        return 0xffffu;
    case IMP_K_U32:
        return 0xffffffffu;
    case IMP_K_U64:
        return UINT64_MAX;
    case IMP_K_BOOL:
        return 1;
    default:
        return 0xff;
    }
}

static char *trim(char *s)
{
    size_t n;
    while (*s == ' ' || *s == '\t')
        s++;
    n = strlen(s);
    while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\r' || s[n - 1] == '\t'))
        s[--n] = '\0';
    return s;
}

/* "| a | b |" -> cells "a", "b" (in place). */
static int split_row(char *line, char **cells, int max)
{
    int n = 0;
    char *p = line + 1;
    char *bar;
    if (line[0] != '|')
        return 0;
    while ((bar = strchr(p, '|')) != NULL) {
        *bar = '\0';
        if (n < max)
            cells[n++] = trim(p);
        p = bar + 1;
    }
    return n;
}

/* A decimal number, possibly with thousands commas ("16,777,216"). */
static int parse_num(const char **sp, uint64_t *out)
{
    const char *s = *sp;
    uint64_t v = 0;
    int digits = 0;
    for (;;) {
        if (isdigit((unsigned char)*s)) {
            v = v * 10 + (uint64_t)(*s - '0');
            digits++;
            s++;
        } else if (*s == ',' && digits > 0 && isdigit((unsigned char)s[1])) {
            s++;
        } else {
            break;
        }
    }
    if (digits == 0)
        return 0;
    *sp = s;
    *out = v;
    return 1;
}

static int starts(const char *s, const char *prefix)
{
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

/* The "length or range" column of table 3.1. */
static int parse_length_col(spec_field *f, const char *s)
{
    uint64_t a, b;
    if (!parse_num(&s, &a))
        return 0;
    if (!is_int_kind(f->kind)) {
        if (!starts(s, EN_DASH))
            return 0;
        s += strlen(EN_DASH);
        if (!parse_num(&s, &b))
            return 0;
        f->min_len = a;
        f->max_len = b;
        return 1;
    }
    f->min_len = f->max_len = a;
    f->vmin = 0;
    f->vmax = kind_max(f->kind);
    if (starts(s, "; ")) {
        s += 2;
        if (f->kind == IMP_K_ENUM) {
            uint64_t v;
            while (parse_num(&s, &v) && starts(s, " = ")) {
                if (f->nenum < sizeof f->enums / sizeof f->enums[0])
                    f->enums[f->nenum++] = v;
                s = strchr(s, ',');
                if (s == NULL)
                    break;
                s++;
                while (*s == ' ')
                    s++;
            }
        } else if (starts(s, "value " GEQ " ")) {
            s += strlen("value " GEQ " ");
            if (parse_num(&s, &b))
                f->vmin = b;
        } else if (parse_num(&s, &a)) {
            f->vmin = a;
            if (starts(s, EN_DASH)) {
                s += strlen(EN_DASH);
                if (parse_num(&s, &b))
                    f->vmax = b;
            }
        }
    }
    if (f->kind == IMP_K_ENUM) {
        unsigned i;
        if (f->nenum == 0)
            return 0;
        f->vmin = f->vmax = f->enums[0];
        for (i = 1; i < f->nenum; i++) {
            if (f->enums[i] < f->vmin)
                f->vmin = f->enums[i];
            if (f->enums[i] > f->vmax)
                f->vmax = f->enums[i];
        }
    }
    return 1;
}

static const spec_field *sfield_by_name(const char *name)
{
    size_t i;
    for (i = 0; i < g_nfield; i++)
        if (strcmp(g_field[i].name, name) == 0)
            return &g_field[i];
    return NULL;
}

static const spec_field *sfield(unsigned tag)
{
    size_t i;
    for (i = 0; i < g_nfield; i++)
        if (g_field[i].tag == tag)
            return &g_field[i];
    return NULL;
}

static const spec_type *stype(unsigned type)
{
    size_t i;
    for (i = 0; i < g_ntype; i++)
        if (g_type[i].type == type)
            return &g_type[i];
    return NULL;
}

static int parse_field_row(char **c, int n)
{
    spec_field *f;
    size_t k;
    const char *s = c[0];
    uint64_t tag;
    if (n < 4 || !parse_num(&s, &tag) || *s != '\0' || tag == 0 || tag > 63)
        return 0;
    if (g_nfield >= sizeof g_field / sizeof g_field[0])
        return 0;
    f = &g_field[g_nfield];
    memset(f, 0, sizeof *f);
    f->tag = (unsigned)tag;
    snprintf(f->name, sizeof f->name, "%s", c[1]);
    for (k = 0; k < sizeof kind_names / sizeof kind_names[0]; k++)
        if (strcmp(c[2], kind_names[k].s) == 0)
            f->kind = kind_names[k].k;
    if (f->kind == 0 || !parse_length_col(f, c[3]))
        return 0;
    g_nfield++;
    return 1;
}

static int parse_type_row(char **c, int n)
{
    spec_type *t;
    char *p, *item, *comma;
    char *end;
    unsigned long v;
    if (n < 4 || g_ntype >= sizeof g_type / sizeof g_type[0])
        return 0;
    v = strtoul(c[0], &end, 16);
    if (*end != '\0' || v > 255)
        return 0;
    t = &g_type[g_ntype];
    memset(t, 0, sizeof *t);
    t->type = (unsigned)v;
    snprintf(t->name, sizeof t->name, "%s", c[1]);
    if (strcmp(c[2], "C" ARROW "S") == 0)
        t->dir = IMP_DIR_C2S;
    else if (strcmp(c[2], "S" ARROW "C") == 0)
        t->dir = IMP_DIR_S2C;
    else if (strcmp(c[2], "both") == 0)
        t->dir = IMP_DIR_BOTH;
    else
        return 0;
    if (strcmp(c[3], "(none)") != 0) {
        for (p = c[3]; p != NULL; p = comma != NULL ? comma + 1 : NULL) {
            char *sp;
            const spec_field *f;
            comma = strchr(p, ',');
            if (comma != NULL)
                *comma = '\0';
            item = trim(p);
            sp = strrchr(item, ' ');
            if (sp == NULL)
                return 0;
            *sp = '\0';
            f = sfield_by_name(item);
            if (f == NULL)
                return 0;
            if (strcmp(sp + 1, "R") == 0)
                t->req |= BIT(f->tag);
            else if (strcmp(sp + 1, "O") != 0)
                return 0;
            t->allowed |= BIT(f->tag);
        }
    }
    g_ntype++;
    return 1;
}

static int load_spec(void **state)
{
    FILE *fp = fopen(SPEC_PATH, "r");
    char line[2048];
    int section = 0; /* 1: in table 3.1, 2: in section 5 */
    (void)state;
    g_nfield = g_ntype = 0;
    g_spec_err[0] = '\0';
    if (fp == NULL) {
        snprintf(g_spec_err, sizeof g_spec_err, "cannot open %s", SPEC_PATH);
        return 0; /* tests then fail with the message; the group still runs */
    }
    while (fgets(line, sizeof line, fp) != NULL) {
        char copy[2048];
        char *cells[8];
        int n;
        line[strcspn(line, "\n")] = '\0';
        if (starts(line, "### 3.1 Field table")) {
            section = 1;
            continue;
        }
        if (starts(line, "## 5. Frame types")) {
            section = 2;
            continue;
        }
        if (starts(line, "## ") || (section == 1 && starts(line, "**"))) {
            section = 0;
            continue;
        }
        if (section == 0 || line[0] != '|')
            continue;
        memcpy(copy, line, sizeof copy);
        n = split_row(copy, cells, 8);
        if (section == 1 && n > 0 && isdigit((unsigned char)cells[0][0])) {
            if (!parse_field_row(cells, n)) {
                snprintf(g_spec_err, sizeof g_spec_err, "bad field row: %.200s", line);
                break;
            }
        } else if (section == 2 && n > 0 && starts(cells[0], "0x")) {
            if (!parse_type_row(cells, n)) {
                snprintf(g_spec_err, sizeof g_spec_err, "bad type row: %.200s", line);
                break;
            }
        }
    }
    fclose(fp);
    if (g_spec_err[0] == '\0' && (g_nfield == 0 || g_ntype == 0))
        snprintf(g_spec_err, sizeof g_spec_err, "no tables found in %s", SPEC_PATH);
    return 0;
}

static void need_spec(void)
{
    if (g_spec_err[0] != '\0')
        fail_msg("SPEC.md: %s", g_spec_err);
}

/* ---- small helpers ------------------------------------------------------------------------- */

static const char *ename(int e)
{
    const char *n;
    if (e == 0)
        return "OK";
    n = imp_err_name(e);
    return n != NULL ? n : "?";
}

static const char *tname(unsigned type)
{
    const spec_type *t = stype(type);
    return t != NULL ? t->name : "?";
}

static const char *fname(unsigned tag)
{
    const spec_field *f = sfield(tag);
    return f != NULL ? f->name : "?";
}

static void put16(uint8_t *p, uint64_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static void put32(uint8_t *p, uint64_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static void put_be(uint8_t *p, uint64_t v, size_t width)
{
    size_t i;
    for (i = 0; i < width; i++)
        p[i] = (uint8_t)(v >> (8 * (width - 1 - i)));
}

static void *xmalloc(size_t n)
{
    void *p = malloc(n > 0 ? n : 1);
    assert_non_null(p);
    return p;
}

/* A hand-built payload: fields in whatever order the test writes them. */
typedef struct wbuf {
    uint8_t b[8192];
    size_t n;
} wbuf;

static void w_raw(wbuf *w, const void *p, size_t len)
{
    assert_true(w->n + len <= sizeof w->b);
    if (len > 0)
        memcpy(w->b + w->n, p, len);
    w->n += len;
}

static void w_hdr(wbuf *w, unsigned tag, uint32_t len)
{
    uint8_t h[6];
    put16(h, tag);
    put32(h + 2, len);
    w_raw(w, h, 6);
}

static void w_field(wbuf *w, unsigned tag, const void *p, size_t len)
{
    w_hdr(w, tag, (uint32_t)len);
    w_raw(w, p, len);
}

static void w_str(wbuf *w, unsigned tag, const char *s)
{
    w_field(w, tag, s, strlen(s));
}

static void w_uint(wbuf *w, unsigned tag, uint64_t v, size_t width)
{
    uint8_t b[8];
    put_be(b, v, width);
    w_field(w, tag, b, width);
}

/* An exact-size heap frame around payload[0..plen): header written by hand. */
static uint8_t *make_frame(uint8_t type, uint32_t rid, const uint8_t *payload, size_t plen)
{
    uint8_t *f = xmalloc(IMP_HEADER_SIZE + plen);
    f[0] = 1;
    f[1] = type;
    f[2] = f[3] = 0;
    put32(f + 4, plen);
    put32(f + 8, rid);
    if (plen > 0)
        memcpy(f + IMP_HEADER_SIZE, payload, plen);
    return f;
}

/* Parse (when the frame fits the hard limit) and decode; *frame_out keeps the bytes alive for
 * view checks (free it), else they are freed here. */
static int decode_frame_bytes(uint8_t *fb, size_t total, imp_msg *m)
{
    imp_frame f;
    memset(m, 0xa5, sizeof *m); /* decode must not depend on prior contents */
    if (total <= HARD) {
        size_t need = 12345;
        imp_ssize r = imp_frame_parse(fb, total, 0, &f, &need);
        assert_int_equal(r, (imp_ssize)total);
        assert_ptr_equal(f.payload, fb + IMP_HEADER_SIZE);
    } else {
        /* Beyond the hard frame limit imp_frame_parse refuses the frame; imp_msg_decode is
         * still defined on any imp_frame, so hand it one. */
        f.version = fb[0];
        f.type = fb[1];
        f.flags = 0;
        f.length = (uint32_t)(total - IMP_HEADER_SIZE);
        f.request_id =
            ((uint32_t)fb[8] << 24) | ((uint32_t)fb[9] << 16) | ((uint32_t)fb[10] << 8) | fb[11];
        f.payload = fb + IMP_HEADER_SIZE;
    }
    return imp_msg_decode(&f, m);
}

static int decode_keep(uint8_t type, uint32_t rid, const uint8_t *payload, size_t plen, imp_msg *m,
                       uint8_t **frame_out)
{
    uint8_t *fb = make_frame(type, rid, payload, plen);
    int r = decode_frame_bytes(fb, IMP_HEADER_SIZE + plen, m);
    if (frame_out != NULL)
        *frame_out = fb;
    else
        free(fb);
    return r;
}

static int decode_w(uint8_t type, const wbuf *w, imp_msg *m)
{
    return decode_keep(type, 0, w->b, w->n, m, NULL);
}

/* ---- field sets: one message described once, written both as an imp_msg and as wire bytes -- */

typedef struct fval {
    int set;
    int raw; /* wire only: write p/len even for an integer kind (wrong lengths) */
    uint64_t u;
    const uint8_t *p;
    size_t len;
} fval;

typedef struct xfield { /* extra wire-only fields, e.g. unknown tags */
    unsigned tag;
    const uint8_t *p;
    size_t len;
} xfield;

typedef struct fset {
    uint8_t type;
    uint32_t rid;
    fval f[IMP_TAG_MAX + 1];
    xfield x[8];
    size_t nx;
} fset;

static const uint8_t GOOD_TEXT[] = "t\xc3\xa9st"; /* 5 bytes, U+00E9 inside */
static const uint8_t GOOD_NAME[] = "alice";
static const uint8_t GOOD_BYTES[] = "0123456789abcdefghijKLMNOPQRSTUVWXYZ";
static const uint8_t GOOD_NAMES[] = "\x03"
                                    "bob"
                                    "\x05"
                                    "carol";
static const uint8_t GOOD_HEADERS[] = "\x01"
                                      "k"
                                      "\x00\x02"
                                      "v1";
static const uint8_t GOOD_STATS[] = "\x04"
                                    "sent"
                                    "\x00\x00\x00\x00\x00\x00\x01\x05";

/* A valid value for tag as a lone field (per-field rules of table 3.1). */
static uint64_t good_u(unsigned tag)
{
    const spec_field *f = sfield(tag);
    assert_non_null(f);
    if (tag == IMP_T_STATUS)
        return IMP_STATUS_ONLINE; /* offline is refused in PRESENCE: IMP-MSG-008 */
    if (f->kind == IMP_K_ENUM)
        return f->enums[0];
    if (f->kind == IMP_K_BOOL)
        return 1;
    if (f->vmin > 0)
        return f->vmin;
    return 42 < f->vmax ? 42 : f->vmax;
}

static void fs_set_u(fset *s, unsigned tag, uint64_t v)
{
    s->f[tag].set = 1;
    s->f[tag].raw = 0;
    s->f[tag].u = v;
}

static void fs_set_b(fset *s, unsigned tag, const void *p, size_t len)
{
    s->f[tag].set = 1;
    s->f[tag].raw = 0;
    s->f[tag].p = p;
    s->f[tag].len = len;
}

static void fs_set_raw(fset *s, unsigned tag, const void *p, size_t len)
{
    fs_set_b(s, tag, p, len);
    s->f[tag].raw = 1;
}

static void fs_clear(fset *s, unsigned tag)
{
    s->f[tag].set = 0;
}

static void fs_good(fset *s, unsigned tag)
{
    const spec_field *f = sfield(tag);
    size_t len;
    assert_non_null(f);
    switch (f->kind) {
    case IMP_K_TEXT:
        fs_set_b(s, tag, GOOD_TEXT, sizeof GOOD_TEXT - 1);
        break;
    case IMP_K_NAME:
        fs_set_b(s, tag, GOOD_NAME, sizeof GOOD_NAME - 1);
        break;
    case IMP_K_BYTES:
        len = f->min_len > 3 ? (size_t)f->min_len : 3;
        assert_true(len < sizeof GOOD_BYTES);
        fs_set_b(s, tag, GOOD_BYTES, len);
        break;
    case IMP_K_NAMES:
        fs_set_b(s, tag, GOOD_NAMES, sizeof GOOD_NAMES - 1);
        break;
    case IMP_K_HEADERS:
        fs_set_b(s, tag, GOOD_HEADERS, sizeof GOOD_HEADERS - 1);
        break;
    case IMP_K_STATS:
        fs_set_b(s, tag, GOOD_STATS, sizeof GOOD_STATS - 1);
        break;
    default:
        fs_set_u(s, tag, good_u(tag));
        break;
    }
}

/* Required fields plus what the cross-field rules need with the good values:
 * SEND/DELIVER TARGET_KIND user needs TARGET (IMP-MSG-006), LOGIN needs PASSWORD or TOKEN
 * (IMP-MSG-004), ACK OUTCOME stored needs MSG_ID (IMP-MSG-007). */
static uint64_t base_mask(const spec_type *t)
{
    uint64_t m = t->req;
    switch (t->type) {
    case IMP_SEND:
    case IMP_DELIVER:
        m |= BIT(IMP_T_TARGET);
        break;
    case IMP_LOGIN:
        m |= BIT(IMP_T_PASSWORD);
        break;
    case IMP_ACK:
        m |= BIT(IMP_T_MSG_ID);
        break;
    default:
        break;
    }
    return m & t->allowed;
}

static void fs_init(fset *s, uint8_t type)
{
    memset(s, 0, sizeof *s);
    s->type = type;
    s->rid = 0x01020304u;
}

static void fs_base(fset *s, const spec_type *t)
{
    unsigned tag;
    uint64_t mask = base_mask(t);
    fs_init(s, (uint8_t)t->type);
    for (tag = 1; tag <= IMP_TAG_MAX; tag++)
        if (mask & BIT(tag))
            fs_good(s, tag);
}

static void fs_add_x(fset *s, unsigned tag, const void *p, size_t len)
{
    assert_true(s->nx < sizeof s->x / sizeof s->x[0]);
    s->x[s->nx].tag = tag;
    s->x[s->nx].p = p;
    s->x[s->nx].len = len;
    s->nx++;
}

/* The message, fields set in descending tag order (the encoder must sort them). */
static void fs_msg(const fset *s, imp_msg *m)
{
    unsigned tag;
    imp_msg_init(m, s->type, s->rid);
    for (tag = IMP_TAG_MAX; tag >= 1; tag--) {
        const fval *v = &s->f[tag];
        if (!v->set)
            continue;
        if (is_int_kind(sfield(tag)->kind))
            imp_msg_set_u(m, tag, v->u);
        else
            imp_msg_set_b(m, tag, v->p, v->len);
    }
}

static size_t fs_payload_size(const fset *s)
{
    size_t n = 0, i;
    unsigned tag;
    for (tag = 1; tag <= IMP_TAG_MAX; tag++) {
        const fval *v = &s->f[tag];
        if (!v->set)
            continue;
        n +=
            6 + (is_int_kind(sfield(tag)->kind) && !v->raw ? int_width(sfield(tag)->kind) : v->len);
    }
    for (i = 0; i < s->nx; i++)
        n += 6 + s->x[i].len;
    return n;
}

/* The whole frame, written by hand in ascending tag order (extras merged by tag). */
static uint8_t *fs_wire(const fset *s, size_t *total)
{
    struct {
        unsigned tag;
        int integer;
        uint64_t u;
        size_t width;
        const uint8_t *p;
        size_t len;
    } it[IMP_TAG_MAX + 1 + 8], tmp;
    size_t n = 0, i, j, plen = fs_payload_size(s);
    uint8_t *fb = xmalloc(IMP_HEADER_SIZE + plen);
    uint8_t *o = fb + IMP_HEADER_SIZE;
    unsigned t;
    for (t = 1; t <= IMP_TAG_MAX; t++) {
        const fval *v = &s->f[t];
        imp_kind k;
        if (!v->set)
            continue;
        k = sfield(t)->kind;
        it[n].tag = t;
        it[n].integer = is_int_kind(k) && !v->raw;
        it[n].u = v->u;
        it[n].width = int_width(k);
        it[n].p = v->p;
        it[n].len = v->len;
        n++;
    }
    for (i = 0; i < s->nx; i++) {
        it[n].tag = s->x[i].tag;
        it[n].integer = 0;
        it[n].p = s->x[i].p;
        it[n].len = s->x[i].len;
        n++;
    }
    for (i = 1; i < n; i++) /* stable insertion sort by tag */
        for (j = i; j > 0 && it[j - 1].tag > it[j].tag; j--) {
            tmp = it[j];
            it[j] = it[j - 1];
            it[j - 1] = tmp;
        }
    fb[0] = 1;
    fb[1] = s->type;
    fb[2] = fb[3] = 0;
    put32(fb + 4, plen);
    put32(fb + 8, s->rid);
    for (i = 0; i < n; i++) {
        put16(o, it[i].tag);
        if (it[i].integer) {
            put32(o + 2, it[i].width);
            put_be(o + 6, it[i].u, it[i].width);
            o += 6 + it[i].width;
        } else {
            put32(o + 2, it[i].len);
            if (it[i].len > 0)
                memcpy(o + 6, it[i].p, it[i].len);
            o += 6 + it[i].len;
        }
    }
    assert_int_equal((size_t)(o - fb), IMP_HEADER_SIZE + plen);
    *total = IMP_HEADER_SIZE + plen;
    return fb;
}

/* imp_msg_validate of the set; imp_msg_encoded_size and imp_msg_encode must agree with it. */
static int enc_result(const fset *s)
{
    imp_msg m;
    int v;
    size_t wsize = IMP_HEADER_SIZE + fs_payload_size(s);
    fs_msg(s, &m);
    v = imp_msg_validate(&m);
    if (wsize > HARD + 64)
        return v; /* too big to be a frame at all; which of the two errors wins is unspecified */
    {
        imp_ssize sz = imp_msg_encoded_size(&m);
        uint8_t *buf = xmalloc(wsize);
        imp_ssize n = imp_msg_encode(&m, buf, wsize);
        if (v < 0) {
            if (sz != v || n != v)
                fail_msg("%s: validate %s but encoded_size %s, encode %s", tname(s->type), ename(v),
                         ename((int)sz), ename((int)n));
        } else if (wsize <= HARD) {
            if (sz != (imp_ssize)wsize || n != (imp_ssize)wsize)
                fail_msg("%s: expected %zu bytes, encoded_size %td, encode %td", tname(s->type),
                         wsize, sz, n);
        }
        free(buf);
    }
    return v;
}

static int dec_result(const fset *s)
{
    size_t total;
    imp_msg m;
    uint8_t *fb = fs_wire(s, &total);
    int r = decode_frame_bytes(fb, total, &m);
    free(fb);
    return r;
}

static void expect_enc(const fset *s, int want, const char *what)
{
    int got = enc_result(s);
    if (got != want)
        fail_msg("encode %s %s: expected %s, got %s", tname(s->type), what, ename(want),
                 ename(got));
}

static void expect_dec(const fset *s, int want, const char *what)
{
    int got = dec_result(s);
    if (got != want)
        fail_msg("decode %s %s: expected %s, got %s", tname(s->type), what, ename(want),
                 ename(got));
}

static void expect_both(const fset *s, int want, const char *what)
{
    expect_enc(s, want, what);
    expect_dec(s, want, what);
}

/* Exact-length valid values of a kind; returns 0 when no valid value of that length exists
 * (out then holds a value that is well formed except for its entry count). */
static int exact_value(imp_kind k, uint8_t *out, size_t len)
{
    size_t i, n, off = 0;
    switch (k) {
    case IMP_K_TEXT:
        for (i = 0; i < len; i++)
            out[i] = (uint8_t)('a' + i % 26);
        return 1;
    case IMP_K_NAME:
        for (i = 0; i < len; i++)
            out[i] = (uint8_t)('a' + i % 26);
        return len >= 1 && len <= IMP_NAME_MAX;
    case IMP_K_BYTES:
        for (i = 0; i < len; i++)
            out[i] = (uint8_t)(i * 7);
        return 1;
    case IMP_K_NAMES: /* entries of 2..33 bytes */
        if (len == 1)
            return 0;
        n = (len + 32) / 33;
        for (i = 0; i < n; i++) {
            size_t e = len / n + (i < len % n ? 1 : 0), j;
            out[off] = (uint8_t)(e - 1);
            for (j = 1; j < e; j++)
                out[off + j] = (uint8_t)('a' + (i + j) % 26);
            off += e;
        }
        return n <= IMP_LIST_MAX_NAMES;
    case IMP_K_HEADERS: /* entries klen=4 "kNNN", value 0..1024: 7..1031 bytes */
        if (len > 0 && len < 7)
            return 0;
        n = (len + 1030) / 1031;
        for (i = 0; i < n; i++) {
            size_t e = len / n + (i < len % n ? 1 : 0), vl = e - 7, j;
            out[off] = 4;
            out[off + 1] = 'k';
            out[off + 2] = (uint8_t)('0' + i / 100 % 10);
            out[off + 3] = (uint8_t)('0' + i / 10 % 10);
            out[off + 4] = (uint8_t)('0' + i % 10);
            put16(out + off + 5, vl);
            for (j = 0; j < vl; j++)
                out[off + 7 + j] = (uint8_t)('A' + j % 26);
            off += e;
        }
        return n <= IMP_LIST_MAX_HEADERS;
    case IMP_K_STATS: /* entries nlen 1..64 + 8: 10..73 bytes */
        if (len > 0 && len < 10)
            return 0;
        n = (len + 72) / 73;
        for (i = 0; i < n; i++) {
            size_t e = len / n + (i < len % n ? 1 : 0), nl = e - 9, j;
            out[off] = (uint8_t)nl;
            for (j = 0; j < nl; j++)
                out[off + 1 + j] = (uint8_t)('a' + (i + j) % 26);
            put_be(out + off + 1 + nl, i, 8);
            off += e;
        }
        return n <= IMP_LIST_MAX_STATS;
    default:
        return 0;
    }
}

/* ---- imp_msg_init / set / clear / has ------------------------------------------------------ */

static void test_msg_init_is_empty(void **state)
{
    imp_msg m;
    unsigned tag;
    imp_bytes b;
    (void)state;
    memset(&m, 0x5a, sizeof m);
    imp_msg_init(&m, IMP_SEND, 0xfedcba98u);
    assert_int_equal(m.type, IMP_SEND);
    assert_int_equal(m.request_id, 0xfedcba98u);
    assert_int_equal(m.present, 0);
    for (tag = 0; tag <= IMP_TAG_MAX; tag++) {
        assert_false(imp_msg_has(&m, tag));
        assert_int_equal(imp_msg_u(&m, tag, 77), 77);
        b = imp_msg_b(&m, tag);
        assert_null(b.p);
        assert_int_equal(b.len, 0);
    }
}

static void test_msg_set_u_overwrite_clear(void **state)
{
    imp_msg m;
    (void)state;
    imp_msg_init(&m, IMP_WELCOME, 1);
    imp_msg_set_u(&m, IMP_T_MAX_FRAME, 4096);
    imp_msg_set_u(&m, IMP_T_SERVER_TIME, UINT64_MAX);
    assert_int_equal(m.present, BIT(IMP_T_MAX_FRAME) | BIT(IMP_T_SERVER_TIME));
    assert_true(imp_msg_has(&m, IMP_T_MAX_FRAME));
    assert_int_equal(imp_msg_u(&m, IMP_T_MAX_FRAME, 0), 4096);
    assert_true(imp_msg_u(&m, IMP_T_SERVER_TIME, 0) == UINT64_MAX);
    imp_msg_set_u(&m, IMP_T_MAX_FRAME, 8192); /* a second set replaces the value */
    assert_int_equal(imp_msg_u(&m, IMP_T_MAX_FRAME, 0), 8192);
    assert_int_equal(m.present, BIT(IMP_T_MAX_FRAME) | BIT(IMP_T_SERVER_TIME));
    imp_msg_set_u(&m, IMP_T_PING_INTERVAL, 0); /* zero is a value, not absence */
    assert_true(imp_msg_has(&m, IMP_T_PING_INTERVAL));
    assert_int_equal(imp_msg_u(&m, IMP_T_PING_INTERVAL, 99), 0);
    imp_msg_clear(&m, IMP_T_MAX_FRAME);
    assert_false(imp_msg_has(&m, IMP_T_MAX_FRAME));
    assert_int_equal(imp_msg_u(&m, IMP_T_MAX_FRAME, 5), 5);
    assert_int_equal(m.present, BIT(IMP_T_SERVER_TIME) | BIT(IMP_T_PING_INTERVAL));
    imp_msg_clear(&m, IMP_T_MAX_FRAME); /* clearing an absent field changes nothing */
    imp_msg_clear(&m, IMP_T_BODY);
    assert_int_equal(m.present, BIT(IMP_T_SERVER_TIME) | BIT(IMP_T_PING_INTERVAL));
    assert_true(imp_msg_u(&m, IMP_T_SERVER_TIME, 0) == UINT64_MAX);
    imp_msg_set_u(&m, IMP_T_MAX_FRAME, 1); /* set again after clear */
    assert_int_equal(imp_msg_u(&m, IMP_T_MAX_FRAME, 0), 1);
    assert_int_equal(m.type, IMP_WELCOME);
    assert_int_equal(m.request_id, 1);
}

static void test_msg_set_b_and_s_are_views(void **state)
{
    imp_msg m;
    static const char body[] = "hello\0world"; /* 11 bytes with a NUL: bytes are opaque */
    char user[] = "bob";
    imp_bytes b;
    (void)state;
    imp_msg_init(&m, IMP_SEND, 2);
    imp_msg_set_b(&m, IMP_T_BODY, body, 11);
    b = imp_msg_b(&m, IMP_T_BODY);
    assert_ptr_equal(b.p, (const uint8_t *)body); /* not copied */
    assert_int_equal(b.len, 11);
    imp_msg_set_s(&m, IMP_T_TARGET, user);
    b = imp_msg_b(&m, IMP_T_TARGET);
    assert_ptr_equal(b.p, (const uint8_t *)user);
    assert_int_equal(b.len, 3); /* the NUL is not part of the value */
    user[0] = 'B';              /* a view: later changes are seen */
    assert_int_equal(imp_msg_b(&m, IMP_T_TARGET).p[0], 'B');
    imp_msg_set_b(&m, IMP_T_HEADERS, NULL, 0); /* empty value: present, length 0 */
    assert_true(imp_msg_has(&m, IMP_T_HEADERS));
    assert_int_equal(imp_msg_b(&m, IMP_T_HEADERS).len, 0);
    imp_msg_set_s(&m, IMP_T_CLIENT_MSG_ID, "");
    assert_true(imp_msg_has(&m, IMP_T_CLIENT_MSG_ID));
    assert_int_equal(imp_msg_b(&m, IMP_T_CLIENT_MSG_ID).len, 0);
    assert_int_equal(m.present, BIT(IMP_T_BODY) | BIT(IMP_T_TARGET) | BIT(IMP_T_HEADERS) |
                                    BIT(IMP_T_CLIENT_MSG_ID));
    imp_msg_clear(&m, IMP_T_BODY);
    b = imp_msg_b(&m, IMP_T_BODY);
    assert_null(b.p);
    assert_int_equal(b.len, 0);
}

/* msg.h: the setters ignore tags above IMP_TAG_MAX (and never write outside *m: the message
 * is an exact-size heap object). */
static void test_msg_setters_ignore_big_tags(void **state)
{
    static const unsigned big[] = {IMP_TAG_MAX + 1, 63, 64, 100, 0x8001, 0xffff, 0x10000};
    imp_msg *m = malloc(sizeof *m);
    size_t i;
    (void)state;
    assert_non_null(m);
    imp_msg_init(m, IMP_ERROR, 1);
    imp_msg_set_u(m, IMP_T_CODE, 500);
    for (i = 0; i < sizeof big / sizeof big[0]; i++) {
        imp_msg_set_u(m, big[i], 7);
        imp_msg_set_b(m, big[i], "x", 1);
        imp_msg_set_s(m, big[i], "y");
        imp_msg_clear(m, big[i]);
        assert_false(imp_msg_has(m, big[i]));
    }
    assert_int_equal(m->present, BIT(IMP_T_CODE));
    assert_int_equal(imp_msg_u(m, IMP_T_CODE, 0), 500);
    assert_int_equal(imp_msg_validate(m), 0);
    free(m);
}

/* ---- static tables against SPEC.md --------------------------------------------------------- */

/* Table 3.1 (IMP-FIELD-006): every tag, name and kind; integer lengths are the kinds' widths. */
static void test_spec_field_table_matches_library(void **state)
{
    size_t i;
    unsigned tag;
    static const unsigned undefined[] = {0,      IMP_TAG_MAX + 1,     63,    64, 100, 0x7fff,
                                         0x8000, 0x8000 | IMP_T_BODY, 0xffff};
    (void)state;
    need_spec();
    assert_int_equal(g_nfield, IMP_TAG_MAX);
    for (i = 0; i < g_nfield; i++) {
        const spec_field *f = &g_field[i];
        const char *n = imp_tag_name(f->tag);
        if (n == NULL || strcmp(n, f->name) != 0)
            fail_msg("tag %u: spec name %s, library %s", f->tag, f->name, n ? n : "NULL");
        if (imp_tag_kind(f->tag) != f->kind)
            fail_msg("tag %u %s: spec kind %d, library %d", f->tag, f->name, (int)f->kind,
                     (int)imp_tag_kind(f->tag));
        if (is_int_kind(f->kind) && f->min_len != int_width(f->kind))
            fail_msg("tag %u %s: table length %" PRIu64 " is not the kind's width", f->tag, f->name,
                     f->min_len);
        if (!is_int_kind(f->kind) && f->min_len > f->max_len)
            fail_msg("tag %u %s: empty length range", f->tag, f->name);
    }
    for (tag = 1; tag <= IMP_TAG_MAX; tag++)
        if (sfield(tag) == NULL)
            fail_msg("library tag %u (%s) is not in table 3.1", tag, imp_tag_name(tag));
    for (i = 0; i < sizeof undefined / sizeof undefined[0]; i++) {
        assert_int_equal(imp_tag_kind(undefined[i]), 0);
        assert_null(imp_tag_name(undefined[i]));
    }
}

/* The enumerations of msg.h are those of table 3.1. */
static void test_spec_enum_values_match_header(void **state)
{
    static const struct {
        unsigned tag;
        unsigned n;
        uint64_t v[4];
    } want[] = {
        {IMP_T_TARGET_KIND, 3, {IMP_TARGET_USER, IMP_TARGET_ROOM, IMP_TARGET_BROADCAST}},
        {IMP_T_CLASS, 2, {IMP_CLASS_DURABLE, IMP_CLASS_TRANSIENT}},
        {IMP_T_ACK_MODE, 3, {IMP_ACK_NONE, IMP_ACK_STORED, IMP_ACK_DELIVERED}},
        {IMP_T_OUTCOME, 3, {IMP_OUTCOME_STORED, IMP_OUTCOME_DELIVERED, IMP_OUTCOME_REFUSED}},
        {IMP_T_STATUS,
         4,
         {IMP_STATUS_OFFLINE, IMP_STATUS_ONLINE, IMP_STATUS_AWAY, IMP_STATUS_BUSY}},
    };
    size_t i, nenum = 0;
    unsigned j;
    (void)state;
    need_spec();
    for (i = 0; i < g_nfield; i++)
        if (g_field[i].kind == IMP_K_ENUM)
            nenum++;
    assert_int_equal(nenum, sizeof want / sizeof want[0]);
    for (i = 0; i < sizeof want / sizeof want[0]; i++) {
        const spec_field *f = sfield(want[i].tag);
        assert_non_null(f);
        assert_int_equal(f->kind, IMP_K_ENUM);
        assert_int_equal(f->nenum, want[i].n);
        for (j = 0; j < want[i].n; j++)
            assert_int_equal(f->enums[j], want[i].v[j]);
    }
}

/* Section 5: every type, its direction (IMP-MSG-001), its R/O marks (IMP-FIELD-004,
 * IMP-FIELD-005); IMP-FRAME-003 for the set of types itself. */
static void test_spec_type_table_matches_library(void **state)
{
    size_t i;
    unsigned t;
    (void)state;
    need_spec();
    assert_int_equal(g_ntype, IMP_TYPE_COUNT);
    for (i = 0; i < g_ntype; i++) {
        const spec_type *st = &g_type[i];
        const char *n = imp_type_name(st->type);
        if (i > 0)
            assert_true(g_type[i - 1].type < st->type);
        if (imp_type_at((unsigned)i) != st->type)
            fail_msg("imp_type_at(%zu) = 0x%02x, spec row 0x%02x", i, imp_type_at((unsigned)i),
                     st->type);
        assert_int_equal(imp_type_known(st->type), 1);
        if (n == NULL || strcmp(n, st->name) != 0)
            fail_msg("type 0x%02x: spec name %s, library %s", st->type, st->name, n ? n : "NULL");
        if (imp_type_dir(st->type) != st->dir)
            fail_msg("%s: spec direction %u, library %u", st->name, st->dir,
                     imp_type_dir(st->type));
        if (imp_type_required(st->type) != st->req)
            fail_msg("%s: spec required 0x%016" PRIx64 ", library 0x%016" PRIx64, st->name, st->req,
                     imp_type_required(st->type));
        if (imp_type_allowed(st->type) != st->allowed)
            fail_msg("%s: spec allowed 0x%016" PRIx64 ", library 0x%016" PRIx64, st->name,
                     st->allowed, imp_type_allowed(st->type));
        assert_int_equal(st->req & ~st->allowed, 0);
        assert_int_equal(st->allowed & ~(BIT(IMP_TAG_MAX + 1) - 2), 0);
    }
    for (t = 0; t < 256 + 8; t++) {
        if (stype(t) != NULL)
            continue;
        if (imp_type_known(t) || imp_type_dir(t) != 0 || imp_type_name(t) != NULL ||
            imp_type_required(t) != 0 || imp_type_allowed(t) != 0)
            fail_msg("type 0x%02x is not in SPEC.md section 5 but the library knows it", t);
    }
}

/* ---- encoding ------------------------------------------------------------------------------ */

static void expect_encoding(const imp_msg *m, const uint8_t *want, size_t wlen)
{
    uint8_t *buf = xmalloc(wlen);
    imp_ssize n;
    assert_int_equal(imp_msg_validate(m), 0);
    assert_int_equal(imp_msg_encoded_size(m), (imp_ssize)wlen);
    n = imp_msg_encode(m, buf, wlen);
    assert_int_equal(n, (imp_ssize)wlen);
    assert_memory_equal(buf, want, wlen);
    free(buf);
}

/* SPEC.md section 12, byte for byte; fields set in an order other than ascending
 * (IMP-FIELD-008, IMP-FRAME-001). */
static void test_encode_spec_example_hello(void **state)
{
    static const uint8_t want[] = {0x01, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x1c, 0x00, 0x00,
                                   0x00, 0x01, 0x00, 0x01, 0x00, 0x00, 0x00, 0x02, 0x00, 0x01,
                                   0x00, 0x02, 0x00, 0x00, 0x00, 0x02, 0x00, 0x01, 0x00, 0x04,
                                   0x00, 0x00, 0x00, 0x06, 'i',  'm',  's',  'e',  'n',  'd'};
    imp_msg m;
    (void)state;
    imp_msg_init(&m, IMP_HELLO, 1);
    imp_msg_set_s(&m, IMP_T_AGENT, "imsend");
    imp_msg_set_u(&m, IMP_T_VERSION_MAX, 1);
    imp_msg_set_u(&m, IMP_T_VERSION_MIN, 1);
    expect_encoding(&m, want, sizeof want);
}

static void test_encode_spec_example_send(void **state)
{
    static const uint8_t want[] = {0x01, 0x10, 0x00, 0x00, 0x00, 0x00, 0x00, 0x18, 0x00,
                                   0x00, 0x00, 0x07, 0x00, 0x11, 0x00, 0x00, 0x00, 0x01,
                                   0x01, 0x00, 0x12, 0x00, 0x00, 0x00, 0x03, 'b',  'o',
                                   'b',  0x00, 0x17, 0x00, 0x00, 0x00, 0x02, 'h',  'i'};
    imp_msg m;
    (void)state;
    imp_msg_init(&m, IMP_SEND, 7);
    imp_msg_set_b(&m, IMP_T_BODY, "hi", 2);
    imp_msg_set_s(&m, IMP_T_TARGET, "bob");
    imp_msg_set_u(&m, IMP_T_TARGET_KIND, IMP_TARGET_USER);
    expect_encoding(&m, want, sizeof want);
    assert_int_equal(sizeof want, 36); /* as msg.h's example says */
}

static void test_encode_spec_example_ping_and_error(void **state)
{
    static const uint8_t ping[] = {0x01, 0x50, 0x00, 0x00, 0x00, 0x00,
                                   0x00, 0x00, 0x00, 0x00, 0x00, 0x05};
    static const uint8_t error[] = {0x01, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x08, 0x00, 0x00,
                                    0x00, 0x00, 0x00, 0x1a, 0x00, 0x00, 0x00, 0x02, 0x02, 0xc0};
    imp_msg m;
    (void)state;
    imp_msg_init(&m, IMP_PING, 5);
    expect_encoding(&m, ping, sizeof ping);
    imp_msg_init(&m, IMP_ERROR, 0);
    imp_msg_set_u(&m, IMP_T_CODE, 704);
    expect_encoding(&m, error, sizeof error);
}

/* Every order of setting the fields gives the same canonical bytes (IMP-FIELD-008). */
static void test_encode_field_order_independent(void **state)
{
    static const unsigned tags[4] = {IMP_T_VERSION_MIN, IMP_T_VERSION_MAX, IMP_T_AGENT, IMP_T_CAPS};
    uint8_t first[128], buf[128];
    imp_ssize n0 = 0;
    unsigned perm;
    (void)state;
    for (perm = 0; perm < 24; perm++) {
        unsigned order[4] = {0, 1, 2, 3}, i, p = perm;
        imp_msg m;
        imp_ssize n;
        for (i = 0; i < 4; i++) { /* the perm-th permutation (factorial number system) */
            unsigned j = i + p % (4 - i), tmp;
            p /= 4 - i;
            tmp = order[i];
            order[i] = order[j];
            order[j] = tmp;
        }
        imp_msg_init(&m, IMP_HELLO, 9);
        for (i = 0; i < 4; i++) {
            switch (tags[order[i]]) {
            case IMP_T_VERSION_MIN:
                imp_msg_set_u(&m, IMP_T_VERSION_MIN, 1);
                break;
            case IMP_T_VERSION_MAX:
                imp_msg_set_u(&m, IMP_T_VERSION_MAX, 3);
                break;
            case IMP_T_AGENT:
                imp_msg_set_s(&m, IMP_T_AGENT, "x");
                break;
            default:
                imp_msg_set_b(&m, IMP_T_CAPS, GOOD_NAMES, sizeof GOOD_NAMES - 1);
                break;
            }
        }
        n = imp_msg_encode(&m, buf, sizeof buf);
        assert_true(n > 0);
        if (perm == 0) {
            n0 = n;
            memcpy(first, buf, (size_t)n);
        } else {
            assert_int_equal(n, n0);
            assert_memory_equal(buf, first, (size_t)n);
        }
    }
    /* ascending tags on the wire */
    assert_int_equal(first[12 + 1], IMP_T_VERSION_MIN);
    assert_int_equal(first[12 + 8 + 1], IMP_T_VERSION_MAX);
    assert_int_equal(first[12 + 16 + 1], IMP_T_AGENT);
    assert_int_equal(first[12 + 16 + 7 + 1], IMP_T_CAPS);
}

/* Integers in their fixed big-endian widths, extremes included; an empty text that is present
 * is encoded (IMP-FIELD-008, section 1). */
static void test_encode_integers_big_endian(void **state)
{
    static const uint8_t welcome[] = {
        0x01, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x3e, 0xca, 0xfe, 0xba, 0xbe, /* header */
        0x00, 0x03, 0x00, 0x00, 0x00, 0x02, 0xff, 0xff,                         /* VERSION */
        0x00, 0x06, 0x00, 0x00, 0x00, 0x04, 0x01, 0x00, 0x00, 0x00,             /* MAX_FRAME */
        0x00, 0x07, 0x00, 0x00, 0x00, 0x04, 0x00, 0x00, 0x04, 0x00,             /* PREAUTH */
        0x00, 0x08, 0x00, 0x00, 0x00, 0x04, 0x00, 0x00, 0x00, 0x00,             /* PING_INT. */
        0x00, 0x09, 0x00, 0x00, 0x00, 0x04, 0xfe, 0xdc, 0xba, 0x98,             /* AUTH_TO. */
        0x00, 0x0a, 0x00, 0x00, 0x00, 0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff}; /* SERVER_TIME */
    static const uint8_t auth_ok[] = {0x01, 0x05, 0x00, 0x00, 0x00, 0x00, 0x00, 0x2b,
                                      0xff, 0xff, 0xff, 0xff,                        /* header */
                                      0x00, 0x0b, 0x00, 0x00, 0x00, 0x02, 'a',  'l', /* USER */
                                      0x00, 0x0e, 0x00, 0x00, 0x00, 0x08, 0x01, 0x02,
                                      0x03, 0x04, 0x05, 0x06, 0x07, 0x08, /* SESSION_ID */
                                      0x00, 0x0f, 0x00, 0x00, 0x00, 0x08, 0x00, 0x00,
                                      0x00, 0x00, 0x00, 0x00, 0x00, 0x00,        /* LAST_SEQ */
                                      0x00, 0x10, 0x00, 0x00, 0x00, 0x01, 0x00}; /* ADMIN */
    static const uint8_t error[] = {
        0x01, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x18, 0x00, 0x00, 0x00, 0x00, /* header */
        0x00, 0x1a, 0x00, 0x00, 0x00, 0x02, 0xff, 0xff,                         /* CODE */
        0x00, 0x1b, 0x00, 0x00, 0x00, 0x00,                                     /* TEXT "" */
        0x00, 0x1d, 0x00, 0x00, 0x00, 0x04, 0xff, 0xff, 0xff, 0xff};            /* RETRY */
    imp_msg m;
    (void)state;
    imp_msg_init(&m, IMP_WELCOME, 0xcafebabeu);
    imp_msg_set_u(&m, IMP_T_SERVER_TIME, UINT64_MAX);
    imp_msg_set_u(&m, IMP_T_AUTH_TIMEOUT, 0xfedcba98u);
    imp_msg_set_u(&m, IMP_T_PING_INTERVAL, 0);
    imp_msg_set_u(&m, IMP_T_MAX_FRAME_PREAUTH, 1024);
    imp_msg_set_u(&m, IMP_T_MAX_FRAME, 16777216);
    imp_msg_set_u(&m, IMP_T_VERSION, 0xffff);
    expect_encoding(&m, welcome, sizeof welcome);

    imp_msg_init(&m, IMP_AUTH_OK, 0xffffffffu);
    imp_msg_set_u(&m, IMP_T_ADMIN, 0);
    imp_msg_set_u(&m, IMP_T_LAST_SEQ, 0);
    imp_msg_set_u(&m, IMP_T_SESSION_ID, UINT64_C(0x0102030405060708));
    imp_msg_set_s(&m, IMP_T_USER, "al");
    expect_encoding(&m, auth_ok, sizeof auth_ok);

    imp_msg_init(&m, IMP_ERROR, 0);
    imp_msg_set_u(&m, IMP_T_RETRY_AFTER, 0xffffffffu);
    imp_msg_set_s(&m, IMP_T_TEXT, "");
    imp_msg_set_u(&m, IMP_T_CODE, 0xffff);
    expect_encoding(&m, error, sizeof error);
}

/* IMP_ERR_BUFFER for every capacity below the frame size, success at exactly the size; the
 * encoder never writes past cap (exact-size heap buffers). */
static void test_encode_buffer_caps(void **state)
{
    imp_msg m[3];
    unsigned i;
    (void)state;
    imp_msg_init(&m[0], IMP_HELLO, 1);
    imp_msg_set_u(&m[0], IMP_T_VERSION_MIN, 1);
    imp_msg_set_u(&m[0], IMP_T_VERSION_MAX, 1);
    imp_msg_set_s(&m[0], IMP_T_AGENT, "imsend");
    imp_msg_set_b(&m[0], IMP_T_CAPS, GOOD_NAMES, sizeof GOOD_NAMES - 1);
    imp_msg_init(&m[1], IMP_PONG, 3);
    imp_msg_init(&m[2], IMP_SEND, 4);
    imp_msg_set_u(&m[2], IMP_T_TARGET_KIND, IMP_TARGET_BROADCAST);
    imp_msg_set_b(&m[2], IMP_T_HEADERS, GOOD_HEADERS, sizeof GOOD_HEADERS - 1);
    imp_msg_set_b(&m[2], IMP_T_BODY, GOOD_BYTES, 30);
    for (i = 0; i < 3; i++) {
        imp_ssize size = imp_msg_encoded_size(&m[i]);
        uint8_t *ref = xmalloc((size_t)size + 16);
        size_t cap;
        assert_true(size >= (imp_ssize)IMP_HEADER_SIZE);
        assert_int_equal(imp_msg_encode(&m[i], ref, (size_t)size + 16), size);
        for (cap = 0; cap < (size_t)size; cap++) {
            uint8_t *b = xmalloc(cap);
            assert_int_equal(imp_msg_encode(&m[i], b, cap), IMP_ERR_BUFFER);
            free(b);
        }
        {
            uint8_t *b = xmalloc((size_t)size);
            assert_int_equal(imp_msg_encode(&m[i], b, (size_t)size), size);
            assert_memory_equal(b, ref, (size_t)size);
            free(b);
        }
        free(ref);
    }
}

/* IMP-FIELD-005: every type x every required field, on both sides. The base message of every
 * type is itself valid. */
static void test_missing_required_every_type(void **state)
{
    size_t i;
    unsigned tag;
    (void)state;
    need_spec();
    for (i = 0; i < g_ntype; i++) {
        fset s;
        fs_base(&s, &g_type[i]);
        expect_both(&s, 0, "base message");
        for (tag = 1; tag <= IMP_TAG_MAX; tag++) {
            char what[64];
            if (!(g_type[i].req & BIT(tag)))
                continue;
            fs_base(&s, &g_type[i]);
            fs_clear(&s, tag);
            snprintf(what, sizeof what, "without %s", fname(tag));
            expect_both(&s, IMP_ERR_MISSING_FIELD, what);
        }
        /* and with nothing at all */
        fs_init(&s, (uint8_t)g_type[i].type);
        expect_both(&s, g_type[i].req ? IMP_ERR_MISSING_FIELD : 0, "empty");
    }
}

/* A field the type does not define: the encoder refuses it (IMP_ERR_INVAL, msg.h), the decoder
 * skips it as unknown (IMP-FIELD-004) whatever its length and content. */
static void test_field_not_defined_for_type(void **state)
{
    static const uint8_t junk[3] = {0xff, 0x00, 0xc0};
    size_t i;
    unsigned tag;
    (void)state;
    need_spec();
    for (i = 0; i < g_ntype; i++) {
        for (tag = 1; tag <= IMP_TAG_MAX; tag++) {
            fset s;
            char what[64];
            imp_msg m;
            uint8_t *fb;
            size_t total;
            int r;
            if (g_type[i].allowed & BIT(tag))
                continue;
            snprintf(what, sizeof what, "with undefined %s", fname(tag));
            fs_base(&s, &g_type[i]);
            fs_good(&s, tag);
            expect_enc(&s, IMP_ERR_INVAL, what);
            fs_base(&s, &g_type[i]);
            fs_add_x(&s, tag, junk, sizeof junk);
            fb = fs_wire(&s, &total);
            r = decode_frame_bytes(fb, total, &m);
            if (r != 0)
                fail_msg("decode %s %s: %s", g_type[i].name, what, ename(r));
            assert_int_equal(m.present, base_mask(&g_type[i]));
            free(fb);
        }
    }
}

/* IMP-FIELD-006: variable kinds at min-1 and max+1 give FIELD_LENGTH, at min and max they are
 * accepted, for every field of every type, on both sides. (Integer kinds have no length in an
 * imp_msg; their wire lengths are tested in test_decode_integer_lengths.) */
static void test_variable_length_limits(void **state)
{
    size_t i;
    unsigned tag;
    uint8_t *big;
    (void)state;
    need_spec();
    big = xmalloc((size_t)HARD + 2);
    for (i = 0; i < g_ntype; i++) {
        const spec_type *t = &g_type[i];
        for (tag = 1; tag <= IMP_TAG_MAX; tag++) {
            const spec_field *f = sfield(tag);
            fset s;
            char what[96];
            uint64_t lens[4];
            unsigned j;
            if (!(t->allowed & BIT(tag)) || is_int_kind(f->kind))
                continue;
            lens[0] = f->min_len; /* ok */
            lens[1] = f->max_len; /* ok (or BAD_LIST when no valid list has that length) */
            lens[2] = f->max_len + 1;
            lens[3] = f->min_len > 0 ? f->min_len - 1 : f->max_len + 1;
            for (j = 0; j < 4; j++) {
                size_t len = (size_t)lens[j];
                int valid = exact_value(f->kind, big, len);
                int want = j >= 2 ? IMP_ERR_FIELD_LENGTH : valid ? 0 : IMP_ERR_BAD_LIST;
                fs_base(&s, t);
                if (t->type == IMP_LOGIN && tag == IMP_T_TOKEN)
                    fs_clear(&s, IMP_T_PASSWORD); /* exactly one of them: IMP-MSG-004 */
                fs_set_b(&s, tag, big, len);
                snprintf(what, sizeof what, "%s of %zu bytes", f->name, len);
                if (j < 2 && !valid && !is_list_kind(f->kind))
                    fail_msg("no valid %s value of %zu bytes", f->name, len);
                if (IMP_HEADER_SIZE + fs_payload_size(&s) > HARD && want == 0) {
                    /* a valid field in a frame over 16 MiB: valid, but no frame (msg.h) */
                    imp_msg m;
                    fs_msg(&s, &m);
                    if (imp_msg_validate(&m) != 0)
                        fail_msg("validate %s %s: %s", t->name, what, ename(imp_msg_validate(&m)));
                    if (imp_msg_encoded_size(&m) != IMP_ERR_TOO_LARGE)
                        fail_msg("encoded_size %s %s: %s", t->name, what,
                                 ename((int)imp_msg_encoded_size(&m)));
                    continue;
                }
                expect_both(&s, want, what);
            }
        }
    }
    free(big);
}

/* IMP-FIELD-006 on the wire: an integer kind with any other length than its width. */
static void test_decode_integer_lengths(void **state)
{
    static const uint8_t zeros[16] = {0};
    static const uint8_t ones[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1};
    size_t i;
    unsigned tag;
    (void)state;
    need_spec();
    for (i = 0; i < g_ntype; i++) {
        for (tag = 1; tag <= IMP_TAG_MAX; tag++) {
            const spec_field *f = sfield(tag);
            size_t w, len;
            if (!(g_type[i].allowed & BIT(tag)) || !is_int_kind(f->kind))
                continue;
            w = int_width(f->kind);
            for (len = 0; len <= 9; len++) {
                fset s;
                char what[64];
                if (len == w)
                    continue;
                fs_base(&s, &g_type[i]);
                fs_set_raw(&s, tag, len % 2 ? ones : zeros, len);
                snprintf(what, sizeof what, "%s of %zu bytes", f->name, len);
                expect_dec(&s, IMP_ERR_FIELD_LENGTH, what);
            }
        }
    }
}

/* Make s satisfy the cross-field rules given the value just put in `tag` (for the value
 * sweeps below). */
static void fs_fix_cross(fset *s, unsigned tag)
{
    uint64_t v = s->f[tag].u;
    if ((s->type == IMP_SEND || s->type == IMP_DELIVER) && tag == IMP_T_TARGET_KIND) {
        if (v == IMP_TARGET_BROADCAST)
            fs_clear(s, IMP_T_TARGET);
    }
    if (s->type == IMP_ACK && tag == IMP_T_OUTCOME && v == IMP_OUTCOME_REFUSED)
        fs_good(s, IMP_T_CODE);
}

/* IMP-FIELD-007: every bool and enum field of every type with every one-byte value; the
 * encoder also refuses values that do not fit a byte. */
static void test_bool_enum_values(void **state)
{
    size_t i;
    unsigned tag, v;
    (void)state;
    need_spec();
    for (i = 0; i < g_ntype; i++) {
        for (tag = 1; tag <= IMP_TAG_MAX; tag++) {
            const spec_field *f = sfield(tag);
            fset s;
            char what[64];
            if (!(g_type[i].allowed & BIT(tag)) || (f->kind != IMP_K_BOOL && f->kind != IMP_K_ENUM))
                continue;
            for (v = 0; v <= 256; v++) {
                int ok, want;
                unsigned k;
                if (f->kind == IMP_K_BOOL) {
                    ok = v <= 1;
                } else {
                    ok = 0;
                    for (k = 0; k < f->nenum; k++)
                        ok |= f->enums[k] == v;
                }
                want = ok ? 0 : IMP_ERR_BAD_VALUE;
                if (g_type[i].type == IMP_PRESENCE && tag == IMP_T_STATUS &&
                    v == IMP_STATUS_OFFLINE)
                    want = IMP_ERR_BAD_VALUE; /* IMP-MSG-008 */
                fs_base(&s, &g_type[i]);
                fs_set_u(&s, tag, v);
                fs_fix_cross(&s, tag);
                snprintf(what, sizeof what, "%s = %u", f->name, v);
                if (v < 256)
                    expect_both(&s, want, what);
                else
                    expect_enc(&s, want, what);
            }
            fs_base(&s, &g_type[i]);
            fs_set_u(&s, tag, UINT64_MAX);
            expect_enc(&s, IMP_ERR_BAD_VALUE, "value 2^64-1 in a one-byte field");
            fs_set_u(&s, tag, 0x101); /* low byte 1 would be valid: no silent truncation */
            expect_enc(&s, IMP_ERR_BAD_VALUE, "value 0x101 in a one-byte field");
        }
    }
}

/* IMP-FIELD-010 and table 3.1: the numeric ranges of integer fields (VERSION_MIN >= 1,
 * MAX_FRAME 4096..16 MiB, MAX_FRAME_PREAUTH >= 1024, CODE >= 1), from the parsed table; values
 * that do not fit the kind's width are refused by the encoder. */
static void test_integer_value_ranges(void **state)
{
    size_t i;
    unsigned tag;
    size_t checked = 0;
    (void)state;
    need_spec();
    for (i = 0; i < g_ntype; i++) {
        for (tag = 1; tag <= IMP_TAG_MAX; tag++) {
            const spec_field *f = sfield(tag);
            fset s;
            char what[80];
            uint64_t lo, hi;
            if (!(g_type[i].allowed & BIT(tag)) || !is_int_kind(f->kind) || f->kind == IMP_K_BOOL ||
                f->kind == IMP_K_ENUM)
                continue;
            fs_base(&s, &g_type[i]);
            if (tag == IMP_T_VERSION_MIN)
                fs_set_u(&s, IMP_T_VERSION_MAX, 0xffff); /* keep VERSION_MAX >= VERSION_MIN */
            if (tag == IMP_T_MAX_FRAME_PREAUTH)
                fs_set_u(&s, IMP_T_MAX_FRAME, HARD); /* keep PREAUTH <= MAX_FRAME */
            lo = f->vmin;
            hi = f->vmax;
            if (tag == IMP_T_VERSION_MAX)
                lo = s.f[IMP_T_VERSION_MIN].u; /* "value >= VERSION_MIN" (IMP-MSG-002) */
            if (tag == IMP_T_MAX_FRAME_PREAUTH)
                hi = s.f[IMP_T_MAX_FRAME].u; /* "1024-MAX_FRAME" (IMP-MSG-003) */
            fs_set_u(&s, tag, lo);
            snprintf(what, sizeof what, "%s = %" PRIu64 " (minimum)", f->name, lo);
            expect_both(&s, 0, what);
            fs_set_u(&s, tag, hi);
            snprintf(what, sizeof what, "%s = %" PRIu64 " (maximum)", f->name, hi);
            expect_both(&s, 0, what);
            if (lo > 0) {
                fs_set_u(&s, tag, lo - 1);
                snprintf(what, sizeof what, "%s = %" PRIu64, f->name, lo - 1);
                expect_both(&s, IMP_ERR_BAD_VALUE, what);
                checked++;
            }
            if (hi < kind_max(f->kind)) {
                fs_set_u(&s, tag, hi + 1);
                snprintf(what, sizeof what, "%s = %" PRIu64, f->name, hi + 1);
                expect_both(&s, IMP_ERR_BAD_VALUE, what);
                checked++;
            }
            if (f->kind != IMP_K_U64) {
                fs_set_u(&s, tag, kind_max(f->kind) + 1);
                snprintf(what, sizeof what, "%s = %" PRIu64 " (does not fit)", f->name,
                         kind_max(f->kind) + 1);
                expect_enc(&s, IMP_ERR_BAD_VALUE, what);
                fs_set_u(&s, tag, UINT64_MAX);
                expect_enc(&s, IMP_ERR_BAD_VALUE, what);
            }
        }
    }
    /* VERSION_MIN (HELLO), MAX_FRAME x2, MAX_FRAME_PREAUTH (WELCOME), CODE (ERROR, ACK) */
    assert_true(checked >= 6);
}

enum { OP_SET, OP_GOOD, OP_CLEAR };
#define U(t, v)              \
    {                        \
        IMP_T_##t, OP_SET, v \
    }
#define G(t)                  \
    {                         \
        IMP_T_##t, OP_GOOD, 0 \
    }
#define C(t)                   \
    {                          \
        IMP_T_##t, OP_CLEAR, 0 \
    }

#define BAD_VALUE IMP_ERR_BAD_VALUE
#define MISSING IMP_ERR_MISSING_FIELD
#define CONFLICT IMP_ERR_FIELD_CONFLICT

typedef struct xcase {
    uint8_t type;
    int want;
    struct {
        unsigned tag;
        int op; /* OP_SET: set_u, OP_GOOD: a valid value, OP_CLEAR: remove */
        uint64_t u;
    } f[4]; /* up to the first entry with tag 0 */
    const char *what;
} xcase;

/* Cross-field rules: IMP-MSG-002, IMP-MSG-003, IMP-MSG-004, IMP-MSG-006, IMP-MSG-007,
 * IMP-MSG-008, IMP-MSG-009 (and IMP-FIELD-010's VERSION_MAX >= VERSION_MIN). */
static void test_cross_field_rules(void **state)
{
    /* clang-format off */
    static const xcase cases[] = {
        /* IMP-MSG-002 */
        {IMP_HELLO, 0, {U(VERSION_MIN, 1), U(VERSION_MAX, 1)}, "MIN 1 MAX 1"},
        {IMP_HELLO, 0, {U(VERSION_MIN, 5), U(VERSION_MAX, 5)}, "MIN 5 MAX 5"},
        {IMP_HELLO, 0, {U(VERSION_MIN, 1), U(VERSION_MAX, 65535)}, "MIN 1 MAX 65535"},
        {IMP_HELLO, BAD_VALUE, {U(VERSION_MIN, 2), U(VERSION_MAX, 1)}, "MIN 2 MAX 1"},
        {IMP_HELLO, BAD_VALUE, {U(VERSION_MIN, 65535), U(VERSION_MAX, 1)}, "MIN 65535 MAX 1"},
        {IMP_HELLO, BAD_VALUE, {U(VERSION_MIN, 0), U(VERSION_MAX, 0)}, "MIN 0 MAX 0"},
        /* IMP-MSG-003, IMP-FIELD-010 */
        {IMP_WELCOME, 0, {U(MAX_FRAME, 4096), U(MAX_FRAME_PREAUTH, 4096)}, "PREAUTH = MAX"},
        {IMP_WELCOME, 0, {U(MAX_FRAME, HARD), U(MAX_FRAME_PREAUTH, HARD)}, "both 16 MiB"},
        {IMP_WELCOME, BAD_VALUE, {U(MAX_FRAME, 4096), U(MAX_FRAME_PREAUTH, 4097)}, "PREAUTH>MAX"},
        {IMP_WELCOME, BAD_VALUE, {U(MAX_FRAME, 4096), U(MAX_FRAME_PREAUTH, 1023)}, "PRE 1023"},
        {IMP_WELCOME, BAD_VALUE, {U(MAX_FRAME, 4095), U(MAX_FRAME_PREAUTH, 1024)}, "MAX 4095"},
        {IMP_WELCOME, BAD_VALUE, {U(MAX_FRAME, HARD + 1), U(MAX_FRAME_PREAUTH, 1024)}, "MAX>16M"},
        /* IMP-MSG-004 */
        {IMP_LOGIN, MISSING, {C(PASSWORD)}, "neither PASSWORD nor TOKEN"},
        {IMP_LOGIN, CONFLICT, {G(TOKEN)}, "PASSWORD and TOKEN"},
        {IMP_LOGIN, 0, {C(PASSWORD), G(TOKEN)}, "TOKEN only"},
        {IMP_LOGIN, 0, {C(PASSWORD), G(TOKEN), U(LAST_SEQ, 77)}, "TOKEN and LAST_SEQ"},
        /* IMP-MSG-006 */
        {IMP_SEND, MISSING, {U(TARGET_KIND, 1), C(TARGET)}, "user without TARGET"},
        {IMP_SEND, MISSING, {U(TARGET_KIND, 2), C(TARGET)}, "room without TARGET"},
        {IMP_SEND, 0, {U(TARGET_KIND, 2), G(TARGET)}, "room with TARGET"},
        {IMP_SEND, CONFLICT, {U(TARGET_KIND, 3), G(TARGET)}, "broadcast with TARGET"},
        {IMP_SEND, 0, {U(TARGET_KIND, 3), C(TARGET)}, "broadcast without TARGET"},
        {IMP_DELIVER, MISSING, {U(TARGET_KIND, 1), C(TARGET)}, "user without TARGET"},
        {IMP_DELIVER, MISSING, {U(TARGET_KIND, 2), C(TARGET)}, "room without TARGET"},
        {IMP_DELIVER, CONFLICT, {U(TARGET_KIND, 3), G(TARGET)}, "broadcast with TARGET"},
        {IMP_DELIVER, 0, {U(TARGET_KIND, 3), C(TARGET)}, "broadcast without TARGET"},
        /* IMP-MSG-007 */
        {IMP_ACK, MISSING, {U(OUTCOME, 3), C(CODE)}, "refused without CODE"},
        {IMP_ACK, 0, {U(OUTCOME, 3), U(CODE, 504), C(MSG_ID)}, "refused with CODE"},
        {IMP_ACK, 0, {U(OUTCOME, 3), U(CODE, 511)}, "refused with CODE and MSG_ID"},
        {IMP_ACK, MISSING, {U(OUTCOME, 1), C(MSG_ID)}, "stored without MSG_ID"},
        {IMP_ACK, MISSING, {U(OUTCOME, 2), C(MSG_ID)}, "delivered without MSG_ID"},
        {IMP_ACK, 0, {U(OUTCOME, 2), U(MSG_ID, 0)}, "delivered with MSG_ID"},
        {IMP_ACK, BAD_VALUE, {U(OUTCOME, 3), U(CODE, 0)}, "CODE 0"},
        /* IMP-MSG-008 */
        {IMP_PRESENCE, BAD_VALUE, {U(STATUS, 0)}, "STATUS offline"},
        {IMP_PRESENCE, 0, {U(STATUS, 3)}, "STATUS busy"},
        {IMP_PRESENCE_EVENT, 0, {U(STATUS, 0)}, "STATUS offline"},
        /* IMP-MSG-009 */
        {IMP_ERROR, BAD_VALUE, {U(CODE, 0)}, "CODE 0"},
        {IMP_ERROR, 0, {U(CODE, 999)}, "unknown CODE 999"},
        {IMP_ERROR, 0, {U(CODE, 65535)}, "unknown CODE 65535"},
    };
    /* clang-format on */
    size_t i;
    unsigned j;
    (void)state;
    need_spec();
    for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const xcase *c = &cases[i];
        fset s;
        assert_non_null(stype(c->type));
        fs_base(&s, stype(c->type));
        for (j = 0; j < 4 && c->f[j].tag != 0; j++) {
            if (c->f[j].op == OP_SET)
                fs_set_u(&s, c->f[j].tag, c->f[j].u);
            else if (c->f[j].op == OP_GOOD)
                fs_good(&s, c->f[j].tag);
            else
                fs_clear(&s, c->f[j].tag);
        }
        expect_both(&s, c->want, c->what);
    }
}

/* Frames over 16 MiB are never encoded (IMP-FRAME-005; msg.h: IMP_ERR_TOO_LARGE); a frame of
 * exactly 16 MiB is, and decodes back. */
static void test_encode_too_large(void **state)
{
    const size_t body_max = HARD - IMP_HEADER_SIZE - (6 + 1) - 6;
    uint8_t *body = xmalloc(body_max + 1);
    uint8_t *buf = xmalloc(HARD + 64);
    imp_msg m, d;
    imp_frame f;
    size_t need = 0;
    (void)state;
    memset(body, 'b', body_max + 1);
    body[0] = 'F';
    body[body_max - 1] = 'L';
    imp_msg_init(&m, IMP_SEND, 1);
    imp_msg_set_u(&m, IMP_T_TARGET_KIND, IMP_TARGET_BROADCAST);
    imp_msg_set_b(&m, IMP_T_BODY, body, body_max);
    assert_int_equal(imp_msg_encoded_size(&m), (imp_ssize)HARD);
    assert_int_equal(imp_msg_encode(&m, buf, HARD), (imp_ssize)HARD);
    assert_int_equal(imp_frame_parse(buf, HARD, 0, &f, &need), (imp_ssize)HARD);
    assert_int_equal(imp_msg_decode(&f, &d), 0);
    assert_int_equal(imp_msg_b(&d, IMP_T_BODY).len, body_max);
    assert_ptr_equal(imp_msg_b(&d, IMP_T_BODY).p, buf + HARD - body_max);
    assert_int_equal(imp_msg_b(&d, IMP_T_BODY).p[0], 'F');
    assert_int_equal(imp_msg_b(&d, IMP_T_BODY).p[body_max - 1], 'L');

    imp_msg_set_b(&m, IMP_T_BODY, body, body_max + 1); /* one byte over */
    assert_int_equal(imp_msg_validate(&m), 0);         /* the field itself is fine */
    assert_int_equal(imp_msg_encoded_size(&m), IMP_ERR_TOO_LARGE);
    assert_int_equal(imp_msg_encode(&m, buf, HARD + 64), IMP_ERR_TOO_LARGE);
    imp_msg_set_s(&m, IMP_T_CLIENT_MSG_ID, "x"); /* more fields: still too large */
    imp_msg_set_b(&m, IMP_T_BODY, body, body_max);
    assert_int_equal(imp_msg_encoded_size(&m), IMP_ERR_TOO_LARGE);
    assert_int_equal(imp_msg_encode(&m, buf, HARD + 64), IMP_ERR_TOO_LARGE);
    free(body);
    free(buf);
}

/* IMP-TEXT-001 / IMP-FIELD-007 applied to text fields; IMP-TEXT-002 to name fields: every text
 * and name field of every type, and a catalogue of sequences on one field of each. */
static const char *const bad_utf8[] = {
    "\x80",             /* stray continuation */
    "a\xbf",            /* stray continuation after ASCII */
    "\xc0\xaf",         /* overlong '/' */
    "\xc1\xbf",         /* overlong */
    "\xe0\x80\xaf",     /* overlong 3-byte */
    "\xe0\x9f\xbf",     /* overlong 3-byte (U+07FF) */
    "\xf0\x80\x80\xaf", /* overlong 4-byte */
    "\xf0\x8f\xbf\xbf", /* overlong 4-byte (U+FFFF) */
    "\xed\xa0\x80",     /* U+D800 */
    "\xed\xbf\xbf",     /* U+DFFF */
    "\xf4\x90\x80\x80", /* U+110000 */
    "\xf5\x80\x80\x80", /* lead byte F5 */
    "\xfe",             /* never in UTF-8 */
    "\xff",
    "\xc3",             /* truncated 2-byte */
    "ab\xe2\x82",       /* truncated 3-byte at the end */
    "\xf0\x9f\x98",     /* truncated 4-byte */
    "\xc3\x28",         /* bad continuation */
    "\xe2\x28\xa1",     /* bad continuation */
    "\xf0\x9f\x28\x80", /* bad continuation */
};

static const char *const good_utf8[] = {
    "\x7f",
    "\xc2\x80",
    "\xdf\xbf",
    "\xe0\xa0\x80",
    "\xed\x9f\xbf",
    "\xee\x80\x80",
    "\xef\xbf\xbf",
    "\xf0\x90\x80\x80",
    "\xf4\x8f\xbf\xbf",
    "h\xc3\xa9llo \xe2\x82\xac \xf0\x9f\x98\x80",
};

static void test_text_fields_utf8(void **state)
{
    static const uint8_t with_nul[3] = {'a', 0, 'b'};
    size_t i, k;
    unsigned tag;
    (void)state;
    need_spec();
    for (i = 0; i < g_ntype; i++) {
        for (tag = 1; tag <= IMP_TAG_MAX; tag++) {
            fset s;
            char what[64];
            if (!(g_type[i].allowed & BIT(tag)) || sfield(tag)->kind != IMP_K_TEXT)
                continue;
            fs_base(&s, &g_type[i]);
            fs_set_b(&s, tag, "\xed\xa0\x80", 3);
            snprintf(what, sizeof what, "%s with a surrogate", fname(tag));
            expect_both(&s, IMP_ERR_BAD_UTF8, what);
            fs_set_b(&s, tag, with_nul, 3); /* IMP-TEXT-001: no U+0000 */
            snprintf(what, sizeof what, "%s with NUL", fname(tag));
            expect_both(&s, IMP_ERR_BAD_UTF8, what);
            for (k = 0; k < sizeof good_utf8 / sizeof good_utf8[0]; k++) {
                fs_set_b(&s, tag, good_utf8[k], strlen(good_utf8[k]));
                snprintf(what, sizeof what, "%s valid #%zu", fname(tag), k);
                expect_both(&s, 0, what);
            }
        }
    }
    for (k = 0; k < sizeof bad_utf8 / sizeof bad_utf8[0]; k++) {
        fset s;
        char what[64];
        fs_base(&s, stype(IMP_ERROR));
        fs_set_b(&s, IMP_T_TEXT, bad_utf8[k], strlen(bad_utf8[k]));
        snprintf(what, sizeof what, "TEXT invalid #%zu", k);
        expect_both(&s, IMP_ERR_BAD_UTF8, what);
    }
}

static void test_name_fields_rules(void **state)
{
    static const char *const bad[] = {
        "-bob",        "_bob", ".bob", "bo b", "bob!", "b@b", "b/b", "\xc3\xa9t\xc3\xa9",
        "bob\xc3\xa9", " bob", "bob ", "b\tb", "b:b",  "b+b"};
    static const char *const good[] = {
        "A", "9", "a-b_c.d", "0-", "Z.", "x_", "abcdefghijklmnopqrstuvwxyz012345"};
    static const uint8_t with_nul[3] = {'a', 0, 'b'};
    size_t i, k;
    unsigned tag;
    (void)state;
    need_spec();
    for (i = 0; i < g_ntype; i++) {
        for (tag = 1; tag <= IMP_TAG_MAX; tag++) {
            fset s;
            char what[64];
            if (!(g_type[i].allowed & BIT(tag)) || sfield(tag)->kind != IMP_K_NAME)
                continue;
            fs_base(&s, &g_type[i]);
            if (g_type[i].type == IMP_SEND || g_type[i].type == IMP_DELIVER)
                fs_set_u(&s, IMP_T_TARGET_KIND, IMP_TARGET_ROOM);
            for (k = 0; k < sizeof bad / sizeof bad[0]; k++) {
                fs_set_b(&s, tag, bad[k], strlen(bad[k]));
                snprintf(what, sizeof what, "%s = \"%s\"", fname(tag), bad[k]);
                expect_both(&s, IMP_ERR_BAD_NAME, what);
            }
            fs_set_b(&s, tag, with_nul, 3);
            expect_both(&s, IMP_ERR_BAD_NAME, "name with NUL");
            for (k = 0; k < sizeof good / sizeof good[0]; k++) {
                fs_set_b(&s, tag, good[k], strlen(good[k]));
                snprintf(what, sizeof what, "%s = \"%s\"", fname(tag), good[k]);
                expect_both(&s, 0, what);
            }
        }
    }
}

/* ---- decoding frames built by hand --------------------------------------------------------- */

/* Section 12 examples decoded; every view points into the payload (IMP-LIB-002). */
static void test_decode_spec_examples(void **state)
{
    static const uint8_t hello[] = {0x01, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x1c, 0x00, 0x00,
                                    0x00, 0x01, 0x00, 0x01, 0x00, 0x00, 0x00, 0x02, 0x00, 0x01,
                                    0x00, 0x02, 0x00, 0x00, 0x00, 0x02, 0x00, 0x01, 0x00, 0x04,
                                    0x00, 0x00, 0x00, 0x06, 'i',  'm',  's',  'e',  'n',  'd'};
    static const uint8_t send[] = {0x01, 0x10, 0x00, 0x00, 0x00, 0x00, 0x00, 0x18, 0x00,
                                   0x00, 0x00, 0x07, 0x00, 0x11, 0x00, 0x00, 0x00, 0x01,
                                   0x01, 0x00, 0x12, 0x00, 0x00, 0x00, 0x03, 'b',  'o',
                                   'b',  0x00, 0x17, 0x00, 0x00, 0x00, 0x02, 'h',  'i'};
    static const uint8_t ping[] = {0x01, 0x50, 0x00, 0x00, 0x00, 0x00,
                                   0x00, 0x00, 0x00, 0x00, 0x00, 0x05};
    static const uint8_t error[] = {0x01, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x08, 0x00, 0x00,
                                    0x00, 0x00, 0x00, 0x1a, 0x00, 0x00, 0x00, 0x02, 0x02, 0xc0};
    uint8_t *fb;
    imp_msg m;
    imp_bytes b;
    (void)state;

    fb = xmalloc(sizeof hello);
    memcpy(fb, hello, sizeof hello);
    assert_int_equal(decode_frame_bytes(fb, sizeof hello, &m), 0);
    assert_int_equal(m.type, IMP_HELLO);
    assert_int_equal(m.request_id, 1);
    assert_int_equal(m.present, BIT(IMP_T_VERSION_MIN) | BIT(IMP_T_VERSION_MAX) | BIT(IMP_T_AGENT));
    assert_int_equal(imp_msg_u(&m, IMP_T_VERSION_MIN, 0), 1);
    assert_int_equal(imp_msg_u(&m, IMP_T_VERSION_MAX, 0), 1);
    b = imp_msg_b(&m, IMP_T_AGENT);
    assert_ptr_equal(b.p, fb + 34);
    assert_int_equal(b.len, 6);
    assert_false(imp_msg_has(&m, IMP_T_CAPS)); /* absent optional */
    assert_null(imp_msg_b(&m, IMP_T_CAPS).p);
    free(fb);

    fb = xmalloc(sizeof send);
    memcpy(fb, send, sizeof send);
    assert_int_equal(decode_frame_bytes(fb, sizeof send, &m), 0);
    assert_int_equal(m.type, IMP_SEND);
    assert_int_equal(m.request_id, 7);
    assert_int_equal(m.present, BIT(IMP_T_TARGET_KIND) | BIT(IMP_T_TARGET) | BIT(IMP_T_BODY));
    assert_int_equal(imp_msg_u(&m, IMP_T_TARGET_KIND, 0), IMP_TARGET_USER);
    assert_ptr_equal(imp_msg_b(&m, IMP_T_TARGET).p, fb + 25);
    assert_int_equal(imp_msg_b(&m, IMP_T_TARGET).len, 3);
    assert_ptr_equal(imp_msg_b(&m, IMP_T_BODY).p, fb + 34);
    assert_int_equal(imp_msg_b(&m, IMP_T_BODY).len, 2);
    assert_int_equal(imp_msg_u(&m, IMP_T_CLASS, 99), 99);
    free(fb);

    fb = xmalloc(sizeof ping);
    memcpy(fb, ping, sizeof ping);
    assert_int_equal(decode_frame_bytes(fb, sizeof ping, &m), 0);
    assert_int_equal(m.type, IMP_PING);
    assert_int_equal(m.request_id, 5);
    assert_int_equal(m.present, 0);
    free(fb);

    fb = xmalloc(sizeof error);
    memcpy(fb, error, sizeof error);
    assert_int_equal(decode_frame_bytes(fb, sizeof error, &m), 0);
    assert_int_equal(m.type, IMP_ERROR);
    assert_int_equal(m.request_id, 0);
    assert_int_equal(m.present, BIT(IMP_T_CODE));
    assert_int_equal(imp_msg_u(&m, IMP_T_CODE, 0), 704);
    free(fb);
}

/* Values of every kind decoded from hand-written bytes: integers big-endian, views at the
 * right offsets, empty values present with length 0 (IMP-FIELD-001, IMP-LIB-002). */
static void test_decode_values_and_views(void **state)
{
    wbuf w = {{0}, 0};
    uint8_t *fb;
    imp_msg m;
    static const uint8_t sid[8] = {0x80, 0, 0, 0, 0, 0, 0, 1};
    (void)state;
    /* AUTH_OK: USER, TOKEN, SESSION_ID, LAST_SEQ, ADMIN */
    w_str(&w, IMP_T_USER, "Al.ice");
    w_field(&w, IMP_T_TOKEN, GOOD_BYTES, 16);
    w_field(&w, IMP_T_SESSION_ID, sid, 8);
    w_uint(&w, IMP_T_LAST_SEQ, UINT64_MAX, 8);
    w_uint(&w, IMP_T_ADMIN, 1, 1);
    assert_int_equal(decode_keep(IMP_AUTH_OK, 0xa1b2c3d4u, w.b, w.n, &m, &fb), 0);
    assert_int_equal(m.type, IMP_AUTH_OK);
    assert_int_equal(m.request_id, 0xa1b2c3d4u);
    assert_ptr_equal(imp_msg_b(&m, IMP_T_USER).p, fb + 12 + 6);
    assert_int_equal(imp_msg_b(&m, IMP_T_USER).len, 6);
    assert_ptr_equal(imp_msg_b(&m, IMP_T_TOKEN).p, fb + 12 + 12 + 6);
    assert_int_equal(imp_msg_b(&m, IMP_T_TOKEN).len, 16);
    assert_true(imp_msg_u(&m, IMP_T_SESSION_ID, 0) == UINT64_C(0x8000000000000001));
    assert_true(imp_msg_u(&m, IMP_T_LAST_SEQ, 0) == UINT64_MAX);
    assert_int_equal(imp_msg_u(&m, IMP_T_ADMIN, 7), 1);
    free(fb);

    /* SEND with empty HEADERS and BODY: present, length 0 */
    w.n = 0;
    w_uint(&w, IMP_T_TARGET_KIND, IMP_TARGET_BROADCAST, 1);
    w_uint(&w, IMP_T_CLASS, IMP_CLASS_TRANSIENT, 1);
    w_uint(&w, IMP_T_ACK_MODE, IMP_ACK_DELIVERED, 1);
    w_field(&w, IMP_T_HEADERS, "", 0);
    w_field(&w, IMP_T_BODY, "", 0);
    assert_int_equal(decode_keep(IMP_SEND, 0, w.b, w.n, &m, &fb), 0);
    assert_int_equal(m.present, BIT(IMP_T_TARGET_KIND) | BIT(IMP_T_CLASS) | BIT(IMP_T_ACK_MODE) |
                                    BIT(IMP_T_HEADERS) | BIT(IMP_T_BODY));
    assert_int_equal(imp_msg_b(&m, IMP_T_HEADERS).len, 0);
    assert_int_equal(imp_msg_b(&m, IMP_T_BODY).len, 0);
    assert_int_equal(imp_msg_u(&m, IMP_T_CLASS, 9), IMP_CLASS_TRANSIENT);
    assert_int_equal(imp_msg_u(&m, IMP_T_ACK_MODE, 9), IMP_ACK_DELIVERED);
    free(fb);

    /* WELCOME: u16, u32 values big-endian */
    w.n = 0;
    w_uint(&w, IMP_T_VERSION, 0x0102, 2);
    w_uint(&w, IMP_T_MAX_FRAME, 0x00ff0000, 4);
    w_uint(&w, IMP_T_MAX_FRAME_PREAUTH, 0x00001234, 4);
    w_uint(&w, IMP_T_PING_INTERVAL, 0, 4);
    w_uint(&w, IMP_T_AUTH_TIMEOUT, 0xffffffffu, 4);
    assert_int_equal(decode_keep(IMP_WELCOME, 0, w.b, w.n, &m, NULL), 0);
    assert_int_equal(imp_msg_u(&m, IMP_T_VERSION, 0), 0x0102);
    assert_int_equal(imp_msg_u(&m, IMP_T_MAX_FRAME, 0), 0x00ff0000);
    assert_int_equal(imp_msg_u(&m, IMP_T_MAX_FRAME_PREAUTH, 0), 0x1234);
    assert_true(imp_msg_has(&m, IMP_T_PING_INTERVAL));
    assert_int_equal(imp_msg_u(&m, IMP_T_PING_INTERVAL, 9), 0);
    assert_int_equal(imp_msg_u(&m, IMP_T_AUTH_TIMEOUT, 0), 0xffffffffu);
    assert_false(imp_msg_has(&m, IMP_T_SERVER_TIME));
    assert_false(imp_msg_has(&m, IMP_T_AGENT));
    assert_int_equal(m.present & ~(BIT(3) | BIT(6) | BIT(7) | BIT(8) | BIT(9)), 0);
}

/* IMP-FIELD-001, IMP-SEC-002: every cut of a valid payload inside a field is TRUNCATED; cuts at
 * field boundaries are well formed (then the required-field check applies). */
static void test_decode_truncated(void **state)
{
    wbuf w = {{0}, 0};
    size_t cut;
    imp_msg m;
    (void)state;
    w_uint(&w, IMP_T_VERSION_MIN, 1, 2); /* 0..8 */
    w_uint(&w, IMP_T_VERSION_MAX, 1, 2); /* 8..16 */
    w_str(&w, IMP_T_AGENT, "imsend");    /* 16..28 */
    w_field(&w, IMP_T_CAPS, "", 0);      /* 28..34 */
    for (cut = 0; cut <= w.n; cut++) {
        int r = decode_keep(IMP_HELLO, 1, w.b, cut, &m, NULL);
        int want;
        if (cut == 0 || cut == 8)
            want = IMP_ERR_MISSING_FIELD;
        else if (cut == 16 || cut == 28 || cut == 34)
            want = 0;
        else
            want = IMP_ERR_TRUNCATED;
        if (r != want)
            fail_msg("HELLO payload cut at %zu: expected %s, got %s", cut, ename(want), ename(r));
    }
    /* lengths that point far past the end, up to 2^32-1 (no overflow) */
    {
        static const uint32_t lens[] = {3, 0x7fffffffu, 0x80000000u, 0xfffffffau, 0xffffffffu};
        size_t i;
        for (i = 0; i < sizeof lens / sizeof lens[0]; i++) {
            w.n = 0;
            w_uint(&w, IMP_T_VERSION_MIN, 1, 2);
            w_hdr(&w, IMP_T_VERSION_MAX, lens[i]);
            w_raw(&w, "\x00\x01", 2);
            assert_int_equal(decode_w(IMP_HELLO, &w, &m), IMP_ERR_TRUNCATED);
        }
    }
    /* a trailing partial header after a complete message; the same on a type with no
     * fields */
    w.n = 0;
    w_uint(&w, IMP_T_CODE, 1, 2);
    w_raw(&w, "\x00\x1b\x00", 3);
    assert_int_equal(decode_w(IMP_ERROR, &w, &m), IMP_ERR_TRUNCATED);
    w.n = 0;
    w_raw(&w, "\x00", 1);
    assert_int_equal(decode_w(IMP_PING, &w, &m), IMP_ERR_TRUNCATED);
}

/* IMP-FIELD-002. */
static void test_decode_zero_tag(void **state)
{
    wbuf w = {{0}, 0};
    imp_msg m;
    (void)state;
    w_field(&w, 0, "", 0);
    assert_int_equal(decode_w(IMP_PING, &w, &m), IMP_ERR_ZERO_TAG);
    w.n = 0;
    w_field(&w, 0, "\x00\x01", 2);
    w_uint(&w, IMP_T_VERSION_MIN, 1, 2);
    w_uint(&w, IMP_T_VERSION_MAX, 1, 2);
    assert_int_equal(decode_w(IMP_HELLO, &w, &m), IMP_ERR_ZERO_TAG);
    /* after other fields: ZERO_TAG is checked before FIELD_ORDER (msg.h order) */
    w.n = 0;
    w_uint(&w, IMP_T_VERSION_MIN, 1, 2);
    w_uint(&w, IMP_T_VERSION_MAX, 1, 2);
    w_field(&w, 0, "", 0);
    assert_int_equal(decode_w(IMP_HELLO, &w, &m), IMP_ERR_ZERO_TAG);
}

/* IMP-FIELD-003: order and duplicates, for known and unknown tags alike. */
static void test_decode_order_and_duplicates(void **state)
{
    wbuf w = {{0}, 0};
    imp_msg m;
    (void)state;
    w_uint(&w, IMP_T_VERSION_MAX, 1, 2);
    w_uint(&w, IMP_T_VERSION_MIN, 1, 2);
    assert_int_equal(decode_w(IMP_HELLO, &w, &m), IMP_ERR_FIELD_ORDER);
    w.n = 0;
    w_uint(&w, IMP_T_VERSION_MIN, 1, 2);
    w_uint(&w, IMP_T_VERSION_MIN, 1, 2);
    w_uint(&w, IMP_T_VERSION_MAX, 1, 2);
    assert_int_equal(decode_w(IMP_HELLO, &w, &m), IMP_ERR_DUPLICATE_FIELD);
    w.n = 0;
    w_uint(&w, IMP_T_VERSION_MIN, 1, 2);
    w_uint(&w, IMP_T_VERSION_MAX, 1, 2);
    w_str(&w, IMP_T_AGENT, "a");
    w_str(&w, IMP_T_AGENT, "a");
    assert_int_equal(decode_w(IMP_HELLO, &w, &m), IMP_ERR_DUPLICATE_FIELD);
    /* unknown (non-critical) tags take part in the order */
    w.n = 0;
    w_uint(&w, IMP_T_VERSION_MIN, 1, 2);
    w_uint(&w, IMP_T_VERSION_MAX, 1, 2);
    w_field(&w, 100, "x", 1);
    w_field(&w, 100, "x", 1);
    assert_int_equal(decode_w(IMP_HELLO, &w, &m), IMP_ERR_DUPLICATE_FIELD);
    w.n = 0;
    w_uint(&w, IMP_T_VERSION_MIN, 1, 2);
    w_uint(&w, IMP_T_VERSION_MAX, 1, 2);
    w_field(&w, 100, "x", 1);
    w_field(&w, 99, "x", 1);
    assert_int_equal(decode_w(IMP_HELLO, &w, &m), IMP_ERR_FIELD_ORDER);
    w.n = 0;
    w_uint(&w, IMP_T_VERSION_MIN, 1, 2);
    w_field(&w, IMP_T_VERSION, "\x00\x01", 2); /* unknown for HELLO */
    w_uint(&w, IMP_T_VERSION_MAX, 1, 2);
    assert_int_equal(decode_w(IMP_HELLO, &w, &m), IMP_ERR_FIELD_ORDER);
    w.n = 0;
    w_field(&w, 0x7fff, "", 0);
    w_uint(&w, IMP_T_CODE, 1, 2);
    assert_int_equal(decode_w(IMP_ERROR, &w, &m), IMP_ERR_FIELD_ORDER);
    w.n = 0;
    w_uint(&w, IMP_T_CODE, 1, 2);
    w_field(&w, 0x0100, "", 0);
    w_field(&w, 0x00ff, "", 0); /* 0x0100 > 0x00ff: tags compare as whole u16 values */
    assert_int_equal(decode_w(IMP_ERROR, &w, &m), IMP_ERR_FIELD_ORDER);
}

/* IMP-FIELD-004: unknown non-critical fields are skipped first, between known fields and last;
 * they are not present afterwards and their content is not checked. */
static void test_decode_unknown_noncritical_skipped(void **state)
{
    wbuf w = {{0}, 0};
    imp_msg m;
    uint8_t *fb;
    (void)state;
    /* SEND: VERSION_MIN (defined, but not for SEND) first, junk in it */
    w_field(&w, IMP_T_VERSION_MIN, "\xff\xfe\xfd", 3);
    w_uint(&w, IMP_T_TARGET_KIND, IMP_TARGET_ROOM, 1);
    w_str(&w, IMP_T_TARGET, "lobby");
    w_field(&w, IMP_T_BODY, "hey", 3);
    w_field(&w, IMP_T_MSG_ID, "\x01", 1); /* defined, not for SEND, wrong length: skipped */
    w_field(&w, IMP_T_SENDER, "-bad", 4); /* would be BAD_NAME in DELIVER */
    w_field(&w, 46, "", 0);
    w_field(&w, 0x1234, "\x00\x00", 2);
    w_field(&w, 0x7fff, "\xc0", 1);
    assert_int_equal(decode_keep(IMP_SEND, 3, w.b, w.n, &m, &fb), 0);
    assert_int_equal(m.present, BIT(IMP_T_TARGET_KIND) | BIT(IMP_T_TARGET) | BIT(IMP_T_BODY));
    assert_int_equal(imp_msg_u(&m, IMP_T_TARGET_KIND, 0), IMP_TARGET_ROOM);
    assert_ptr_equal(imp_msg_b(&m, IMP_T_TARGET).p, fb + 12 + 9 + 7 + 6);
    assert_ptr_equal(imp_msg_b(&m, IMP_T_BODY).p, fb + 12 + 9 + 7 + 11 + 6);
    assert_int_equal(imp_msg_b(&m, IMP_T_BODY).len, 3);
    free(fb);

    /* HELLO: VERSION (unknown for HELLO, bad length) between VERSION_MAX and AGENT */
    w.n = 0;
    w_uint(&w, IMP_T_VERSION_MIN, 1, 2);
    w_uint(&w, IMP_T_VERSION_MAX, 2, 2);
    w_field(&w, IMP_T_VERSION, "\x00\x01\x02\x03\x04\x05\x06", 7);
    w_str(&w, IMP_T_AGENT, "x");
    w_field(&w, IMP_T_MAX_FRAME, "", 0);
    w_field(&w, IMP_TAG_MAX + 1, "abc", 3);
    assert_int_equal(decode_keep(IMP_HELLO, 3, w.b, w.n, &m, &fb), 0);
    assert_int_equal(m.present, BIT(IMP_T_VERSION_MIN) | BIT(IMP_T_VERSION_MAX) | BIT(IMP_T_AGENT));
    assert_int_equal(imp_msg_u(&m, IMP_T_VERSION_MAX, 0), 2);
    assert_ptr_equal(imp_msg_b(&m, IMP_T_AGENT).p, fb + 12 + 8 + 8 + 13 + 6);
    free(fb);

    /* a frame type with no fields at all */
    w.n = 0;
    w_field(&w, IMP_T_BODY, "x", 1);
    w_field(&w, 0x4000, "", 0);
    assert_int_equal(decode_w(IMP_PONG, &w, &m), 0);
    assert_int_equal(m.present, 0);
}

/* IMP-FIELD-004: an unknown field with the critical bit fails, wherever it is. */
static void test_decode_unknown_critical(void **state)
{
    static const unsigned crit[] = {0x8000 | IMP_T_VERSION_MIN, 0x8000 | IMP_T_AGENT,
                                    0x8000 | (IMP_TAG_MAX + 1), 0xabcd, 0xffff};
    wbuf w = {{0}, 0};
    imp_msg m;
    size_t i;
    (void)state;
    need_spec();
    for (i = 0; i < sizeof crit / sizeof crit[0]; i++) {
        w.n = 0;
        w_uint(&w, IMP_T_VERSION_MIN, 1, 2);
        w_uint(&w, IMP_T_VERSION_MAX, 1, 2);
        w_field(&w, crit[i], "", 0);
        assert_int_equal(decode_w(IMP_HELLO, &w, &m), IMP_ERR_UNKNOWN_CRITICAL);
    }
    /* on every type, after a complete valid message */
    for (i = 0; i < g_ntype; i++) {
        fset s;
        fs_base(&s, &g_type[i]);
        fs_add_x(&s, 0xffff, "z", 1);
        expect_dec(&s, IMP_ERR_UNKNOWN_CRITICAL, "with field 0xffff");
        fs_base(&s, &g_type[i]);
        fs_add_x(&s, 0x8000 | IMP_T_BODY, "", 0);
        expect_dec(&s, IMP_ERR_UNKNOWN_CRITICAL, "with field 0x8017");
    }
}

/* msg.h: the first error met wins, walking fields in order, per field in the documented order;
 * then MISSING_FIELD; then the cross-field rules. */
static void test_decode_first_error_wins(void **state)
{
    wbuf w = {{0}, 0};
    imp_msg m;
    (void)state;

    /* BAD_UTF8 in AGENT, then a duplicate AGENT */
    w_uint(&w, IMP_T_VERSION_MIN, 1, 2);
    w_uint(&w, IMP_T_VERSION_MAX, 1, 2);
    w_str(&w, IMP_T_AGENT, "\xff");
    w_str(&w, IMP_T_AGENT, "ok");
    assert_int_equal(decode_w(IMP_HELLO, &w, &m), IMP_ERR_BAD_UTF8);

    /* BAD_VALUE (VERSION_MIN 0), then a truncated field */
    w.n = 0;
    w_uint(&w, IMP_T_VERSION_MIN, 0, 2);
    w_uint(&w, IMP_T_VERSION_MAX, 1, 2);
    w_raw(&w, "\x00\x04\x00\x00", 4);
    assert_int_equal(decode_w(IMP_HELLO, &w, &m), IMP_ERR_BAD_VALUE);

    /* FIELD_LENGTH, then an unknown critical field */
    w.n = 0;
    w_uint(&w, IMP_T_VERSION_MIN, 1, 3);
    w_uint(&w, IMP_T_VERSION_MAX, 1, 2);
    w_field(&w, 0x8001, "", 0);
    assert_int_equal(decode_w(IMP_HELLO, &w, &m), IMP_ERR_FIELD_LENGTH);

    /* UNKNOWN_CRITICAL, then a field out of order */
    w.n = 0;
    w_uint(&w, IMP_T_CODE, 1, 2);
    w_field(&w, 0x8100, "", 0);
    w_field(&w, IMP_T_TEXT, "", 0);
    assert_int_equal(decode_w(IMP_ERROR, &w, &m), IMP_ERR_UNKNOWN_CRITICAL);

    /* BAD_NAME, then ZERO_TAG */
    w.n = 0;
    w_str(&w, IMP_T_USER, "-x");
    w_field(&w, IMP_T_PASSWORD, "pw", 2);
    w_field(&w, 0, "", 0);
    assert_int_equal(decode_w(IMP_REGISTER, &w, &m), IMP_ERR_BAD_NAME);

    /* BAD_LIST, then BAD_VALUE */
    w.n = 0;
    w_str(&w, IMP_T_ROOM, "r");
    w_field(&w, IMP_T_NAMES,
            "\x05"
            "ab",
            3);
    w_uint(&w, IMP_T_MORE, 2, 1);
    assert_int_equal(decode_w(IMP_MEMBER_LIST, &w, &m), IMP_ERR_BAD_LIST);

    /* BAD_NAME, then BAD_VALUE, then BAD_UTF8; and BAD_VALUE, then BAD_UTF8 */
    w.n = 0;
    w_str(&w, IMP_T_USER, "a b");
    w_uint(&w, IMP_T_STATUS, 9, 1);
    w_str(&w, IMP_T_STATUS_TEXT, "\xff");
    assert_int_equal(decode_w(IMP_PRESENCE_EVENT, &w, &m), IMP_ERR_BAD_NAME);
    w.n = 0;
    w_str(&w, IMP_T_USER, "ab");
    w_uint(&w, IMP_T_STATUS, 9, 1);
    w_str(&w, IMP_T_STATUS_TEXT, "\xff");
    assert_int_equal(decode_w(IMP_PRESENCE_EVENT, &w, &m), IMP_ERR_BAD_VALUE);

    /* per field: a duplicate is reported as such even when its value is also bad */
    w.n = 0;
    w_uint(&w, IMP_T_CODE, 1, 2);
    w_uint(&w, IMP_T_CODE, 0, 5);
    assert_int_equal(decode_w(IMP_ERROR, &w, &m), IMP_ERR_DUPLICATE_FIELD);

    /* per field: out of order beats a bad value */
    w.n = 0;
    w_uint(&w, IMP_T_VERSION_MAX, 1, 2);
    w_uint(&w, IMP_T_VERSION_MIN, 0, 2);
    assert_int_equal(decode_w(IMP_HELLO, &w, &m), IMP_ERR_FIELD_ORDER);

    /* per field: FIELD_LENGTH beats BAD_NAME (a 33-byte name) and BAD_UTF8 */
    w.n = 0;
    w_str(&w, IMP_T_USER, "-23456789012345678901234567890123");
    w_field(&w, IMP_T_PASSWORD, "pw", 2);
    assert_int_equal(decode_w(IMP_REGISTER, &w, &m), IMP_ERR_FIELD_LENGTH);
    w.n = 0;
    w_uint(&w, IMP_T_VERSION_MIN, 1, 2);
    w_uint(&w, IMP_T_VERSION_MAX, 1, 2);
    w_field(&w, IMP_T_AGENT, "", 0);
    assert_int_equal(decode_w(IMP_HELLO, &w, &m), IMP_ERR_FIELD_LENGTH);

    /* per field: a truncated value is TRUNCATED whatever its tag */
    w.n = 0;
    w_hdr(&w, 0, 5);
    w_raw(&w, "ab", 2);
    assert_int_equal(decode_w(IMP_PING, &w, &m), IMP_ERR_TRUNCATED);
    w.n = 0;
    w_hdr(&w, 0xffff, 5);
    w_raw(&w, "ab", 2);
    assert_int_equal(decode_w(IMP_PING, &w, &m), IMP_ERR_TRUNCATED);

    /* per-field errors beat MISSING_FIELD */
    w.n = 0;
    w_str(&w, IMP_T_AGENT, "\xc0\x80");
    assert_int_equal(decode_w(IMP_HELLO, &w, &m), IMP_ERR_BAD_UTF8);
    w.n = 0;
    w_uint(&w, IMP_T_VERSION_MIN, 0, 2); /* per-field range (table 3.1), VERSION_MAX missing */
    assert_int_equal(decode_w(IMP_HELLO, &w, &m), IMP_ERR_BAD_VALUE);
    w.n = 0;
    w_field(&w, 0xfff0, "", 0);
    assert_int_equal(decode_w(IMP_ERROR, &w, &m), IMP_ERR_UNKNOWN_CRITICAL);

    /* MISSING_FIELD beats the cross-field rules */
    w.n = 0;
    w_uint(&w, IMP_T_TARGET_KIND, IMP_TARGET_BROADCAST, 1);
    w_str(&w, IMP_T_TARGET, "bob"); /* FIELD_CONFLICT, but BODY is missing */
    assert_int_equal(decode_w(IMP_SEND, &w, &m), IMP_ERR_MISSING_FIELD);
    w.n = 0;
    w_field(&w, IMP_T_PASSWORD, "pw", 2); /* FIELD_CONFLICT, but USER is missing */
    w_field(&w, IMP_T_TOKEN, GOOD_BYTES, 16);
    assert_int_equal(decode_w(IMP_LOGIN, &w, &m), IMP_ERR_MISSING_FIELD);
    w.n = 0;
    w_uint(&w, IMP_T_MAX_FRAME, 4096, 4);
    w_uint(&w, IMP_T_MAX_FRAME_PREAUTH, 8192, 4); /* BAD_VALUE cross-field; VERSION missing */
    w_uint(&w, IMP_T_PING_INTERVAL, 0, 4);
    w_uint(&w, IMP_T_AUTH_TIMEOUT, 0, 4);
    assert_int_equal(decode_w(IMP_WELCOME, &w, &m), IMP_ERR_MISSING_FIELD);
}

/* IMP_ERR_UNKNOWN_TYPE for a type IMP/1 does not define (imp_frame built by hand: the frame
 * parser already refuses such types). */
static void test_decode_unknown_type(void **state)
{
    static const uint8_t types[] = {0x00, 0x09, 0x0f, 0x14, 0x28, 0x35, 0x44, 0x52, 0x80, 0xff};
    size_t i;
    (void)state;
    for (i = 0; i < sizeof types / sizeof types[0]; i++) {
        imp_frame f;
        imp_msg m;
        f.version = 1;
        f.type = types[i];
        f.flags = 0;
        f.length = 0;
        f.request_id = 1;
        f.payload = NULL;
        assert_int_equal(imp_msg_decode(&f, &m), IMP_ERR_UNKNOWN_TYPE);
        imp_msg_init(&m, types[i], 1);
        assert_true(imp_msg_validate(&m) < 0);
        assert_true(imp_msg_encoded_size(&m) < 0);
    }
}

/* ---- round trip (IMP-FIELD-008) ------------------------------------------------------------ */

static uint64_t rng_s;

static uint64_t rnd(void)
{
    /* xorshift64* */
    rng_s ^= rng_s >> 12;
    rng_s ^= rng_s << 25;
    rng_s ^= rng_s >> 27;
    return rng_s * UINT64_C(2685821657736338717);
}

static uint64_t below(uint64_t n)
{
    return n == 0 ? 0 : rnd() % n;
}

static uint64_t between(uint64_t lo, uint64_t hi) /* inclusive, with extremes often */
{
    switch (below(8)) {
    case 0:
        return lo;
    case 1:
        return hi;
    default:
        if (hi - lo == UINT64_MAX)
            return rnd();
        return lo + below(hi - lo + 1);
    }
}

static uint8_t g_arena[1 << 18];
static size_t g_used;

static uint8_t *arena(size_t n)
{
    uint8_t *p;
    assert_true(g_used + n <= sizeof g_arena);
    p = g_arena + g_used;
    g_used += n;
    return p;
}

static size_t put_cp(uint8_t *o, uint32_t cp)
{
    if (cp < 0x80) {
        o[0] = (uint8_t)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (uint8_t)(0xc0 | (cp >> 6));
        o[1] = (uint8_t)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (uint8_t)(0xe0 | (cp >> 12));
        o[1] = (uint8_t)(0x80 | ((cp >> 6) & 0x3f));
        o[2] = (uint8_t)(0x80 | (cp & 0x3f));
        return 3;
    }
    o[0] = (uint8_t)(0xf0 | (cp >> 18));
    o[1] = (uint8_t)(0x80 | ((cp >> 12) & 0x3f));
    o[2] = (uint8_t)(0x80 | ((cp >> 6) & 0x3f));
    o[3] = (uint8_t)(0x80 | (cp & 0x3f));
    return 4;
}

/* Random valid UTF-8 (no NUL) of exactly len bytes. */
static void gen_text(uint8_t *o, size_t len)
{
    static const uint32_t edges[] = {0x01,   0x7f,   0x80,   0x7ff,   0x800,   0xd7ff,
                                     0xe000, 0xfffd, 0xffff, 0x10000, 0x10ffff};
    size_t off = 0;
    while (off < len) {
        size_t room = len - off, w = 1 + (size_t)below(4);
        uint32_t cp;
        if (w > room)
            w = room;
        if (below(10) == 0) {
            uint8_t tmp[4];
            cp = edges[below(sizeof edges / sizeof edges[0])];
            if (put_cp(tmp, cp) > room)
                cp = 'e';
        } else {
            switch (w) {
            case 1:
                cp = (uint32_t)between(1, 0x7f);
                break;
            case 2:
                cp = (uint32_t)between(0x80, 0x7ff);
                break;
            case 3:
                do
                    cp = (uint32_t)between(0x800, 0xffff);
                while (cp >= 0xd800 && cp <= 0xdfff);
                break;
            default:
                cp = (uint32_t)between(0x10000, 0x10ffff);
                break;
            }
        }
        off += put_cp(o + off, cp);
    }
}

static const char NAME_FIRST[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
static const char NAME_REST[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-.";
static const char KEY_CHARS[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-.";
static const char STAT_CHARS[] = "abcdefghijklmnopqrstuvwxyz0123456789_.";

static void gen_name(uint8_t *o, size_t len)
{
    size_t i;
    o[0] = (uint8_t)NAME_FIRST[below(sizeof NAME_FIRST - 1)];
    for (i = 1; i < len; i++)
        o[i] = (uint8_t)NAME_REST[below(sizeof NAME_REST - 1)];
}

/* A length in [lo, hi]: mostly up to soft, now and then up to hi (at most 64 KiB). */
static size_t gen_len(uint64_t lo, uint64_t hi, uint64_t soft)
{
    if (hi > 65536)
        hi = 65536;
    if (hi > soft && below(50) != 0)
        hi = soft > lo ? soft : lo;
    return (size_t)between(lo, hi);
}

static void gen_list(imp_kind k, uint64_t maxlen, imp_bytes *out)
{
    size_t cap = (size_t)maxlen, n, i;
    imp_builder b;
    uint8_t *buf;
    if (below(200) != 0 && cap > 2048)
        cap = 2048;
    buf = arena(cap);
    imp_builder_init(&b, buf, cap);
    n = (size_t)(below(100) == 0 ? below(1100) : below(9));
    for (i = 0; i < n; i++) {
        int r;
        if (k == IMP_K_NAMES) {
            uint8_t name[IMP_NAME_MAX];
            size_t len = (size_t)between(1, IMP_NAME_MAX);
            gen_name(name, len);
            r = imp_names_add(&b, name, len);
        } else if (k == IMP_K_HEADERS) {
            uint8_t key[IMP_HEADER_KEY_MAX], val[IMP_HEADER_VALUE_MAX];
            size_t klen = (size_t)between(4, IMP_HEADER_KEY_MAX), vlen, j;
            for (j = 0; j + 3 < klen; j++)
                key[j] = (uint8_t)KEY_CHARS[below(sizeof KEY_CHARS - 1)];
            key[klen - 3] = '.'; /* suffix ".NN": keys differ even ignoring case */
            key[klen - 2] = (uint8_t)('0' + i / 10 % 10);
            key[klen - 1] = (uint8_t)('0' + i % 10);
            vlen = gen_len(0, IMP_HEADER_VALUE_MAX, 40);
            gen_text(val, vlen);
            r = imp_headers_add(&b, key, klen, val, vlen);
        } else {
            uint8_t name[IMP_STAT_NAME_MAX];
            size_t len = (size_t)between(1, IMP_STAT_NAME_MAX), j;
            for (j = 0; j < len; j++)
                name[j] = (uint8_t)STAT_CHARS[below(sizeof STAT_CHARS - 1)];
            r = imp_stats_add(&b, name, len, between(0, UINT64_MAX));
        }
        if (r != 0) {
            /* only running out of room or entries is expected; the list so far stays valid */
            if (r != IMP_ERR_BUFFER && r != IMP_ERR_BAD_LIST)
                fail_msg("builder kind %d entry %zu: %s", (int)k, i, ename(r));
            if (r == IMP_ERR_BAD_LIST &&
                i < (k == IMP_K_HEADERS ? IMP_LIST_MAX_HEADERS : IMP_LIST_MAX_NAMES))
                fail_msg("builder kind %d refused valid entry %zu", (int)k, i);
            break;
        }
    }
    out->p = buf;
    out->len = b.len;
}

static void gen_value(imp_msg *m, unsigned tag)
{
    const spec_field *f = sfield(tag);
    uint8_t *p;
    size_t len;
    imp_bytes lb;
    switch (f->kind) {
    case IMP_K_ENUM:
        imp_msg_set_u(m, tag, f->enums[below(f->nenum)]);
        return;
    case IMP_K_U16:
    case IMP_K_U32:
    case IMP_K_U64:
    case IMP_K_BOOL:
        imp_msg_set_u(m, tag, between(f->vmin, f->vmax));
        return;
    case IMP_K_TEXT:
        len = gen_len(f->min_len, f->max_len, 80);
        p = arena(len);
        gen_text(p, len);
        imp_msg_set_b(m, tag, p, len);
        return;
    case IMP_K_NAME:
        len = gen_len(f->min_len, f->max_len, f->max_len);
        p = arena(len);
        gen_name(p, len);
        imp_msg_set_b(m, tag, p, len);
        return;
    case IMP_K_BYTES:
        len = gen_len(f->min_len, f->max_len, 200);
        p = arena(len);
        {
            size_t i;
            for (i = 0; i < len; i++)
                p[i] = (uint8_t)rnd();
        }
        imp_msg_set_b(m, tag, len > 0 || below(2) ? p : NULL, len);
        return;
    default:
        gen_list(f->kind, f->max_len, &lb);
        imp_msg_set_b(m, tag, lb.p, lb.len);
        return;
    }
}

static void gen_msg(imp_msg *m, const spec_type *t)
{
    unsigned tag;
    uint32_t rid = (uint32_t)between(0, 0xffffffffu);
    g_used = 0;
    imp_msg_init(m, (uint8_t)t->type, rid);
    for (tag = 1; tag <= IMP_TAG_MAX; tag++) {
        if ((t->req & BIT(tag)) || ((t->allowed & BIT(tag)) && below(2)))
            gen_value(m, tag);
    }
    /* the cross-field rules */
    switch (t->type) {
    case IMP_HELLO: {
        uint64_t lo = between(1, 0xffff);
        imp_msg_set_u(m, IMP_T_VERSION_MIN, lo);
        imp_msg_set_u(m, IMP_T_VERSION_MAX, between(lo, 0xffff));
        break;
    }
    case IMP_WELCOME: {
        uint64_t mf = between(IMP_FRAME_MIN_LIMIT, HARD);
        imp_msg_set_u(m, IMP_T_MAX_FRAME, mf);
        imp_msg_set_u(m, IMP_T_MAX_FRAME_PREAUTH, between(1024, mf));
        break;
    }
    case IMP_LOGIN:
        if (below(2)) {
            imp_msg_clear(m, IMP_T_TOKEN);
            gen_value(m, IMP_T_PASSWORD);
        } else {
            imp_msg_clear(m, IMP_T_PASSWORD);
            gen_value(m, IMP_T_TOKEN);
        }
        break;
    case IMP_SEND:
    case IMP_DELIVER:
        if (imp_msg_u(m, IMP_T_TARGET_KIND, 0) == IMP_TARGET_BROADCAST)
            imp_msg_clear(m, IMP_T_TARGET);
        else if (!imp_msg_has(m, IMP_T_TARGET))
            gen_value(m, IMP_T_TARGET);
        break;
    case IMP_ACK:
        if (imp_msg_u(m, IMP_T_OUTCOME, 0) == IMP_OUTCOME_REFUSED) {
            if (!imp_msg_has(m, IMP_T_CODE))
                gen_value(m, IMP_T_CODE);
        } else if (!imp_msg_has(m, IMP_T_MSG_ID)) {
            gen_value(m, IMP_T_MSG_ID);
        }
        break;
    case IMP_PRESENCE:
        imp_msg_set_u(m, IMP_T_STATUS, between(IMP_STATUS_ONLINE, IMP_STATUS_BUSY));
        break;
    default:
        break;
    }
}

static void roundtrip_one(const imp_msg *m, unsigned long iter, uint64_t seed)
{
    imp_ssize size = imp_msg_encoded_size(m), n;
    uint8_t *buf, *again;
    imp_frame f;
    imp_msg d;
    size_t need;
    unsigned tag;
    int r;
    if (size <= 0)
        fail_msg("seed 0x%" PRIx64 " iteration %lu: %s: encoded_size %s", seed, iter,
                 tname(m->type), ename((int)size));
    buf = xmalloc((size_t)size);
    n = imp_msg_encode(m, buf, (size_t)size);
    if (n != size)
        fail_msg("seed 0x%" PRIx64 " iteration %lu: %s: encode %td, size %td", seed, iter,
                 tname(m->type), n, size);
    if (iter % 97 == 0) /* one byte short */
        assert_int_equal(imp_msg_encode(m, buf, (size_t)size - 1), IMP_ERR_BUFFER);
    if (iter % 97 == 0)
        assert_int_equal(imp_msg_encode(m, buf, (size_t)size), size);
    assert_int_equal(imp_frame_parse(buf, (size_t)n, 0, &f, &need), n);
    r = imp_msg_decode(&f, &d);
    if (r != 0)
        fail_msg("seed 0x%" PRIx64 " iteration %lu: %s: decode %s", seed, iter, tname(m->type),
                 ename(r));
    if (d.type != m->type || d.request_id != m->request_id || d.present != m->present)
        fail_msg("seed 0x%" PRIx64 " iteration %lu: %s: header/presence differ (present "
                 "0x%" PRIx64 " vs 0x%" PRIx64 ")",
                 seed, iter, tname(m->type), d.present, m->present);
    for (tag = 1; tag <= IMP_TAG_MAX; tag++) {
        if (!imp_msg_has(m, tag))
            continue;
        if (is_int_kind(sfield(tag)->kind)) {
            if (d.v[tag].u != m->v[tag].u)
                fail_msg("seed 0x%" PRIx64 " iteration %lu: %s.%s: %" PRIu64 " != %" PRIu64, seed,
                         iter, tname(m->type), fname(tag), d.v[tag].u, m->v[tag].u);
        } else {
            const imp_bytes a = d.v[tag].b, b = m->v[tag].b;
            if (a.len != b.len || (a.len > 0 && memcmp(a.p, b.p, a.len) != 0))
                fail_msg("seed 0x%" PRIx64 " iteration %lu: %s.%s: values differ", seed, iter,
                         tname(m->type), fname(tag));
            if (a.len > 0 && (a.p < buf + IMP_HEADER_SIZE || a.p + a.len > buf + n))
                fail_msg("seed 0x%" PRIx64 " iteration %lu: %s.%s: view outside the frame", seed,
                         iter, tname(m->type), fname(tag));
        }
    }
    /* canonical: encoding the decoded message gives the same bytes */
    again = xmalloc((size_t)n);
    if (imp_msg_encode(&d, again, (size_t)n) != n || memcmp(again, buf, (size_t)n) != 0)
        fail_msg("seed 0x%" PRIx64 " iteration %lu: %s: re-encoding differs", seed, iter,
                 tname(m->type));
    free(again);
    free(buf);
}

static void test_roundtrip_random(void **state)
{
    const char *env = getenv("IMP_TEST_SEED");
    uint64_t seed = UINT64_C(0x1f2e3d4c5b6a7988);
    unsigned long iter, count = 100000;
    (void)state;
    need_spec();
    if (env != NULL && *env != '\0')
        seed = strtoull(env, NULL, 0);
    print_message("round trip: %lu messages, seed 0x%016" PRIx64 " (IMP_TEST_SEED=0x%016" PRIx64
                  " to replay)\n",
                  count, seed, seed);
    rng_s = seed != 0 ? seed : 1;
    for (iter = 0; iter < count; iter++) {
        const spec_type *t = &g_type[iter % g_ntype];
        imp_msg m;
        gen_msg(&m, t);
        roundtrip_one(&m, iter, seed);
    }
}

/* IMP-SEC-004: SENDER, TIMESTAMP and MSG_ID are defined only for server-to-client types; a
 * client's SEND carrying a SENDER (or the others) decodes with them absent. */
static void test_identity_fields_server_only(void **state)
{
    (void)state;
    const uint64_t identity = (UINT64_C(1) << IMP_T_SENDER) | (UINT64_C(1) << IMP_T_TIMESTAMP) |
                              (UINT64_C(1) << IMP_T_MSG_ID);
    unsigned c2s = 0;
    for (unsigned i = 0; i < IMP_TYPE_COUNT; i++) {
        uint8_t t = imp_type_at(i);
        if (imp_type_dir(t) & IMP_DIR_C2S) {
            c2s++;
            assert_int_equal(imp_type_allowed(t) & identity, 0);
        }
    }
    assert_true(c2s >= 15);

    /* SEND to bob, body "hi", with SENDER "mallory" (31), MSG_ID 9 (24), TIMESTAMP 1 (32). */
    /* clang-format off */
    static const uint8_t frame[] = {
        0x01, 0x10, 0x00, 0x00, 0x00, 0x00, 0x00, 0x41, 0x00, 0x00, 0x00, 0x07,
        0x00, 0x11, 0x00, 0x00, 0x00, 0x01, 0x01,                              /* TARGET_KIND */
        0x00, 0x12, 0x00, 0x00, 0x00, 0x03, 'b', 'o', 'b',                     /* TARGET */
        0x00, 0x17, 0x00, 0x00, 0x00, 0x02, 'h', 'i',                          /* BODY */
        0x00, 0x18, 0x00, 0x00, 0x00, 0x08, 0, 0, 0, 0, 0, 0, 0, 9,            /* MSG_ID */
        0x00, 0x1f, 0x00, 0x00, 0x00, 0x07, 'm', 'a', 'l', 'l', 'o', 'r', 'y', /* SENDER */
        0x00, 0x20, 0x00, 0x00, 0x00, 0x08, 0, 0, 0, 0, 0, 0, 0, 1,            /* TIMESTAMP */
    };
    /* clang-format on */
    imp_frame f;
    size_t need = 0;
    assert_int_equal(imp_frame_parse(frame, sizeof frame, 0, &f, &need), (imp_ssize)sizeof frame);
    imp_msg m;
    assert_int_equal(imp_msg_decode(&f, &m), 0);
    assert_int_equal(m.type, IMP_SEND);
    assert_false(imp_msg_has(&m, IMP_T_SENDER));
    assert_false(imp_msg_has(&m, IMP_T_MSG_ID));
    assert_false(imp_msg_has(&m, IMP_T_TIMESTAMP));
    assert_true(imp_msg_has(&m, IMP_T_BODY));
    /* and an application cannot put them into a client frame either */
    imp_msg_set_s(&m, IMP_T_SENDER, "mallory");
    assert_int_equal(imp_msg_validate(&m), IMP_ERR_INVAL);
}

/* ---- present-field iteration (issue 3: the codec visits only the fields present) ------------
 * Every type with only its required fields (plus what the cross-field rules need) and with every
 * field it allows, so that the lowest and highest tags of the table (1 in HELLO, 45 in OK) and
 * every tag in between are present somewhere: validate, encoded_size and encode agree with the
 * hand-computed size, the library's bytes equal this file's hand-written frame, and the decoded
 * message equals the one encoded. Then the same messages with an invalid value at their lowest
 * and at their highest present tag, at both, with a required field missing, with a field the type
 * does not define, and with present bits outside 1..45: the same errors on both sides, in the same
 * order (fields in ascending tag order, then the message rules). */

/* All fields the type allows, with good values; LOGIN without TOKEN (it conflicts with
 * PASSWORD, IMP-MSG-004). */
static void fs_all(fset *s, const spec_type *t)
{
    unsigned tag;
    fs_init(s, (uint8_t)t->type);
    for (tag = 1; tag <= IMP_TAG_MAX; tag++)
        if (t->allowed & BIT(tag))
            fs_good(s, tag);
    if (t->type == IMP_LOGIN)
        fs_clear(s, IMP_T_TOKEN);
}

static uint64_t fs_mask(const fset *s)
{
    uint64_t m = 0;
    unsigned tag;
    for (tag = 1; tag <= IMP_TAG_MAX; tag++)
        if (s->f[tag].set)
            m |= BIT(tag);
    return m;
}

/* A valid set: the library's encoding is the hand-written frame, and it decodes to the same
 * message (values equal, views inside the frame). */
static void expect_roundtrip(const fset *s, const char *what)
{
    size_t total, i;
    uint8_t *want = fs_wire(s, &total), *got = xmalloc(total);
    imp_msg m, d;
    imp_frame f;
    unsigned tag;
    int r;
    fs_msg(s, &m);
    assert_int_equal(imp_msg_validate(&m), 0);
    assert_int_equal(imp_msg_encoded_size(&m), (imp_ssize)total);
    assert_int_equal(imp_msg_encode(&m, got, total), (imp_ssize)total);
    for (i = 0; i < total; i++)
        if (got[i] != want[i])
            fail_msg("%s %s: byte %zu of %zu is 0x%02x, want 0x%02x", tname(s->type), what, i,
                     total, got[i], want[i]);
    assert_int_equal(imp_frame_parse(got, total, 0, &f, NULL), (imp_ssize)total);
    memset(&d, 0x5a, sizeof d);
    r = imp_msg_decode(&f, &d);
    if (r != 0)
        fail_msg("%s %s: decode %s", tname(s->type), what, ename(r));
    assert_int_equal(d.type, s->type);
    assert_int_equal(d.request_id, s->rid);
    if (d.present != fs_mask(s))
        fail_msg("%s %s: decoded present 0x%" PRIx64 ", want 0x%" PRIx64, tname(s->type), what,
                 d.present, fs_mask(s));
    for (tag = 1; tag <= IMP_TAG_MAX; tag++) {
        const fval *v = &s->f[tag];
        if (!v->set)
            continue;
        if (is_int_kind(sfield(tag)->kind)) {
            if (d.v[tag].u != v->u)
                fail_msg("%s %s: %s decoded %" PRIu64 ", want %" PRIu64, tname(s->type), what,
                         fname(tag), d.v[tag].u, v->u);
        } else {
            assert_int_equal(d.v[tag].b.len, v->len);
            if (v->len > 0) {
                assert_memory_equal(d.v[tag].b.p, v->p, v->len);
                assert_true(d.v[tag].b.p >= got + IMP_HEADER_SIZE &&
                            d.v[tag].b.p + v->len <= got + total);
            }
        }
    }
    /* and the decoded message (its views into got) encodes to the same bytes again */
    {
        uint8_t *again = xmalloc(total);
        assert_int_equal(imp_msg_encode(&d, again, total), (imp_ssize)total);
        assert_memory_equal(again, want, total);
        free(again);
    }
    free(got);
    free(want);
}

static const uint8_t BAD_UTF8_2[] = "a\xc3\x28"; /* a lead byte without continuation */
static const uint8_t BAD_NAME_2[] = "al ice";    /* a space */
static const uint8_t BAD_NAMES_2[] = "\x05"
                                     "ab"; /* an entry longer than the list */
static uint8_t g_long[65536 + 2];          /* 'a' * n: too long for its field */

/* Make tag's value invalid in one way (variant 0, 1, ...); returns the error validate and decode
 * must give, 0 when the field has no such variant. */
static int fs_bad(fset *s, unsigned tag, int variant)
{
    const spec_field *f = sfield(tag);
    assert_non_null(f);
    memset(g_long, 'a', sizeof g_long);
    if (is_int_kind(f->kind)) {
        if (variant == 0 && f->vmin > 0) {
            fs_set_u(s, tag, f->vmin - 1);
            return IMP_ERR_BAD_VALUE;
        }
        if (variant == 1 && f->vmax < kind_max(f->kind)) {
            fs_set_u(s, tag, f->vmax + 1);
            return IMP_ERR_BAD_VALUE;
        }
        return 0;
    }
    if (variant == 0 && f->min_len > 0) { /* too short */
        fs_set_b(s, tag, g_long, (size_t)f->min_len - 1);
        return IMP_ERR_FIELD_LENGTH;
    }
    if (variant == 1 && f->max_len < sizeof g_long) { /* too long */
        fs_set_b(s, tag, g_long, (size_t)f->max_len + 1);
        return IMP_ERR_FIELD_LENGTH;
    }
    if (variant == 2) {
        switch (f->kind) {
        case IMP_K_TEXT:
            fs_set_b(s, tag, BAD_UTF8_2, sizeof BAD_UTF8_2 - 1);
            return IMP_ERR_BAD_UTF8;
        case IMP_K_NAME:
            fs_set_b(s, tag, BAD_NAME_2, sizeof BAD_NAME_2 - 1);
            return IMP_ERR_BAD_NAME;
        case IMP_K_NAMES:
        case IMP_K_HEADERS:
        case IMP_K_STATS:
            fs_set_b(s, tag, BAD_NAMES_2, sizeof BAD_NAMES_2 - 1);
            return IMP_ERR_BAD_LIST;
        default:
            return 0;
        }
    }
    return 0;
}

static unsigned lowest_tag(uint64_t m)
{
    unsigned t = 1;
    while (t <= IMP_TAG_MAX && !(m & BIT(t)))
        t++;
    return t;
}

static unsigned highest_tag(uint64_t m)
{
    unsigned t = IMP_TAG_MAX;
    while (t >= 1 && !(m & BIT(t)))
        t--;
    return t;
}

static void test_present_fields_every_type(void **state)
{
    uint64_t covered = 0, all_tags = 0;
    unsigned tag;
    size_t i;
    int v, checked = 0;
    (void)state;
    need_spec();
    for (tag = 1; tag <= IMP_TAG_MAX; tag++)
        all_tags |= BIT(tag);
    for (i = 0; i < g_ntype; i++) {
        const spec_type *t = &g_type[i];
        fset s;
        int shape;
        for (shape = 0; shape < 2; shape++) {
            const char *what = shape ? "with every field" : "with no optional field";
            uint64_t mask;
            unsigned lo, hi;
            if (shape)
                fs_all(&s, t);
            else
                fs_base(&s, t);
            mask = fs_mask(&s);
            if (!shape)
                assert_int_equal(mask & ~(t->req | base_mask(t)), 0);
            covered |= mask;
            expect_both(&s, 0, what);
            expect_roundtrip(&s, what);
            if (mask == 0)
                continue;
            lo = lowest_tag(mask);
            hi = highest_tag(mask);
            /* an invalid value at the lowest, at the highest, at both (the lowest wins) */
            for (v = 0; v < 3; v++) {
                char w[128];
                int elo, ehi;
                fset b = s;
                elo = fs_bad(&b, lo, v);
                if (elo) {
                    snprintf(w, sizeof w, "%s, bad %s (%d)", what, fname(lo), v);
                    expect_both(&b, elo, w);
                    checked++;
                }
                b = s;
                ehi = fs_bad(&b, hi, v);
                if (ehi) {
                    snprintf(w, sizeof w, "%s, bad %s (%d)", what, fname(hi), v);
                    expect_both(&b, ehi, w);
                    checked++;
                    /* a missing required field is found after the fields' own errors */
                    if (t->req & ~BIT(hi)) {
                        fs_clear(&b, lowest_tag(t->req & ~BIT(hi)));
                        snprintf(w, sizeof w, "%s, bad %s (%d), %s missing", what, fname(hi), v,
                                 fname(lowest_tag(t->req & ~BIT(hi))));
                        expect_both(&b, ehi, w);
                    }
                }
                if (elo && lo != hi) {
                    b = s;
                    (void)fs_bad(&b, hi, v);
                    (void)fs_bad(&b, lo, v);
                    snprintf(w, sizeof w, "%s, bad %s and %s (%d)", what, fname(lo), fname(hi), v);
                    expect_both(&b, elo, w);
                }
            }
            /* each required field missing */
            for (tag = 1; tag <= IMP_TAG_MAX; tag++) {
                char w[128];
                fset b = s;
                if (!(t->req & BIT(tag)))
                    continue;
                fs_clear(&b, tag);
                snprintf(w, sizeof w, "%s, without %s", what, fname(tag));
                expect_both(&b, IMP_ERR_MISSING_FIELD, w);
            }
            /* a field the type does not define, below and above the ones present; bits outside
             * the tag range */
            for (tag = 1; tag <= IMP_TAG_MAX; tag++) {
                imp_msg m;
                fset b = s;
                if (t->allowed & BIT(tag) || (tag > lo && tag < hi && tag != lo + 1))
                    continue;
                fs_good(&b, tag);
                fs_msg(&b, &m);
                assert_int_equal(imp_msg_validate(&m), IMP_ERR_INVAL);
                assert_int_equal(imp_msg_encoded_size(&m), IMP_ERR_INVAL);
            }
            {
                static const unsigned outside[] = {0, 46, 47, 63};
                size_t k;
                for (k = 0; k < sizeof outside / sizeof outside[0]; k++) {
                    imp_msg m;
                    uint8_t buf[4096];
                    fs_msg(&s, &m);
                    m.present |= BIT(outside[k]);
                    assert_int_equal(imp_msg_validate(&m), IMP_ERR_INVAL);
                    assert_int_equal(imp_msg_encoded_size(&m), IMP_ERR_INVAL);
                    assert_int_equal(imp_msg_encode(&m, buf, sizeof buf), IMP_ERR_INVAL);
                }
            }
        }
    }
    /* every tag, the lowest and the highest among them, was present in some message */
    assert_int_equal(covered, all_tags);
    assert_true(stype(IMP_HELLO)->allowed & BIT(1));
    assert_true(stype(IMP_OK)->allowed & BIT(IMP_TAG_MAX));
    assert_true(checked > 40);
}

/* A type byte that is no frame type: refused before any field is looked at, whatever the
 * fields (IMP_ERR_UNKNOWN_TYPE from validate, encoded_size and encode alike). */
static void test_validate_unknown_type_with_fields(void **state)
{
    static const uint8_t types[] = {0x00, 0x09, 0x7f, 0x99, 0xff};
    size_t i;
    (void)state;
    need_spec();
    for (i = 0; i < sizeof types / sizeof types[0]; i++) {
        fset s;
        imp_msg m;
        uint8_t buf[4096];
        fs_all(&s, stype(IMP_HELLO));
        fs_good(&s, IMP_TAG_MAX);
        s.type = types[i];
        fs_msg(&s, &m);
        assert_int_equal(imp_msg_validate(&m), IMP_ERR_UNKNOWN_TYPE);
        assert_int_equal(imp_msg_encoded_size(&m), IMP_ERR_UNKNOWN_TYPE);
        assert_int_equal(imp_msg_encode(&m, buf, sizeof buf), IMP_ERR_UNKNOWN_TYPE);
        m.present |= BIT(0) | BIT(63);
        assert_int_equal(imp_msg_validate(&m), IMP_ERR_UNKNOWN_TYPE);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_msg_init_is_empty),
        cmocka_unit_test(test_msg_set_u_overwrite_clear),
        cmocka_unit_test(test_msg_set_b_and_s_are_views),
        cmocka_unit_test(test_msg_setters_ignore_big_tags),
        cmocka_unit_test(test_spec_field_table_matches_library),
        cmocka_unit_test(test_spec_enum_values_match_header),
        cmocka_unit_test(test_spec_type_table_matches_library),
        cmocka_unit_test(test_encode_spec_example_hello),
        cmocka_unit_test(test_encode_spec_example_send),
        cmocka_unit_test(test_encode_spec_example_ping_and_error),
        cmocka_unit_test(test_encode_field_order_independent),
        cmocka_unit_test(test_encode_integers_big_endian),
        cmocka_unit_test(test_encode_buffer_caps),
        cmocka_unit_test(test_missing_required_every_type),
        cmocka_unit_test(test_field_not_defined_for_type),
        cmocka_unit_test(test_variable_length_limits),
        cmocka_unit_test(test_decode_integer_lengths),
        cmocka_unit_test(test_bool_enum_values),
        cmocka_unit_test(test_integer_value_ranges),
        cmocka_unit_test(test_cross_field_rules),
        cmocka_unit_test(test_encode_too_large),
        cmocka_unit_test(test_text_fields_utf8),
        cmocka_unit_test(test_name_fields_rules),
        cmocka_unit_test(test_decode_spec_examples),
        cmocka_unit_test(test_decode_values_and_views),
        cmocka_unit_test(test_decode_truncated),
        cmocka_unit_test(test_decode_zero_tag),
        cmocka_unit_test(test_decode_order_and_duplicates),
        cmocka_unit_test(test_decode_unknown_noncritical_skipped),
        cmocka_unit_test(test_decode_unknown_critical),
        cmocka_unit_test(test_decode_first_error_wins),
        cmocka_unit_test(test_decode_unknown_type),
        cmocka_unit_test(test_roundtrip_random),
        cmocka_unit_test(test_identity_fields_server_only),
        cmocka_unit_test(test_present_fields_every_type),
        cmocka_unit_test(test_validate_unknown_type_with_fields),
    };
    return cmocka_run_group_tests(tests, load_spec, NULL);
}
