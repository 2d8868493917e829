/* Test support: loader and runner for the files tests/vectors/NAME.txt (see vectors.h and
 * tests/vectors/README.md). */
#include "vectors.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "guard.h"

/* ---- small helpers ---------------------------------------------------------------------- */

static void set_why(char *why, size_t len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_why(char *why, size_t len, const char *fmt, ...)
{
    if (!why || len == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, len, fmt, ap);
    va_end(ap);
}

static char *xstrdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *p = malloc(n);
    if (!p) {
        fprintf(stderr, "vectors: out of memory\n");
        abort();
    }
    memcpy(p, s, n);
    return p;
}

static void *xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);
    if (!q) {
        fprintf(stderr, "vectors: out of memory\n");
        abort();
    }
    return q;
}

static uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

static int hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Parse hex digits in s[0..n) into a new buffer; spaces are allowed between byte pairs only. */
static int parse_hex(const char *s, size_t n, uint8_t **out, size_t *outlen, char *err,
                     size_t errlen)
{
    uint8_t *b = NULL;
    size_t len = 0;
    if (n / 2 > 0)
        b = xrealloc(NULL, n / 2);
    for (size_t i = 0; i < n;) {
        if (s[i] == ' ' || s[i] == '\t') {
            i++;
            continue;
        }
        int hi = hexval((unsigned char)s[i]);
        int lo = i + 1 < n ? hexval((unsigned char)s[i + 1]) : -1;
        if (hi < 0 || lo < 0) {
            set_why(err, errlen, "bad hex near \"%.16s\"", s + i);
            free(b);
            return -1;
        }
        b[len++] = (uint8_t)(hi << 4 | lo);
        i += 2;
    }
    if (len == 0) {
        free(b);
        b = NULL;
    }
    *out = b;
    *outlen = len;
    return 0;
}

static int parse_u64(const char *s, uint64_t *out)
{
    if (!*s)
        return -1;
    uint64_t v = 0;
    for (; *s; s++) {
        if (*s < '0' || *s > '9')
            return -1;
        unsigned d = (unsigned)(*s - '0');
        if (v > (UINT64_MAX - d) / 10)
            return -1;
        v = v * 10 + d;
    }
    *out = v;
    return 0;
}

/* Trim s[0..*n) in place: returns the new start and updates *n. */
static const char *trim(const char *s, size_t *n)
{
    while (*n && isspace((unsigned char)*s)) {
        s++;
        (*n)--;
    }
    while (*n && isspace((unsigned char)s[*n - 1]))
        (*n)--;
    return s;
}

/* ---- name lookups ----------------------------------------------------------------------- */

int vec_err_code(const char *name)
{
    for (int code = -200; code >= -799; code--) {
        const char *n = imp_err_name(code);
        if (n && strcmp(n, name) == 0)
            return code;
    }
    return 0;
}

unsigned vec_type_code(const char *name)
{
    for (unsigned t = 0; t < 256; t++) {
        const char *n = imp_type_name(t);
        if (n && strcmp(n, name) == 0)
            return t;
    }
    return 0;
}

int vec_state_code(const char *name)
{
    for (int s = 0; s < IMP_STATE_COUNT; s++) {
        const char *n = imp_state_name((imp_state)s);
        if (n && strcmp(n, name) == 0)
            return s;
    }
    return -1;
}

static unsigned tag_code(const char *name)
{
    for (unsigned t = 1; t <= IMP_TAG_MAX; t++) {
        const char *n = imp_tag_name(t);
        if (n && strcmp(n, name) == 0)
            return t;
    }
    return 0;
}

/* ---- parsing ---------------------------------------------------------------------------- */

void vec_clear(vec *v)
{
    free(v->bytes);
    for (size_t i = 0; i < v->nfields; i++)
        free(v->fields[i].bytes);
    free(v->fields);
    memset(v, 0, sizeof *v);
}

static int parse_context(const char *s, vec *v, char *err, size_t errlen)
{
    if (strcmp(s, "frame") == 0) {
        v->ctx = VEC_CTX_FRAME;
        v->limit = IMP_FRAME_MAX_HARD;
        return 0;
    }
    if (strncmp(s, "frame:", 6) == 0) {
        uint64_t lim;
        if (parse_u64(s + 6, &lim) != 0 || lim > SIZE_MAX) {
            set_why(err, errlen, "bad frame limit \"%s\"", s + 6);
            return -1;
        }
        v->ctx = VEC_CTX_FRAME;
        v->limit = (size_t)lim;
        return 0;
    }
    const char *colon = strchr(s, ':');
    if (colon) {
        size_t rl = (size_t)(colon - s);
        if (rl == 6 && strncmp(s, "server", 6) == 0)
            v->role = IMP_ROLE_SERVER;
        else if (rl == 6 && strncmp(s, "client", 6) == 0)
            v->role = IMP_ROLE_CLIENT;
        else
            goto bad;
        int st = vec_state_code(colon + 1);
        if (st < 0) {
            set_why(err, errlen, "unknown state \"%s\"", colon + 1);
            return -1;
        }
        v->ctx = VEC_CTX_CONN;
        v->state = (imp_state)st;
        return 0;
    }
bad:
    set_why(err, errlen, "bad context \"%s\"", s);
    return -1;
}

static int parse_expect(const char *s, vec *v, char *err, size_t errlen)
{
    if (strncmp(s, "ok:", 3) == 0) {
        unsigned t = vec_type_code(s + 3);
        if (!t) {
            set_why(err, errlen, "unknown frame type \"%s\"", s + 3);
            return -1;
        }
        v->expect = VEC_OK;
        v->type = (uint8_t)t;
        return 0;
    }
    if (strcmp(s, "need") == 0) {
        v->expect = VEC_NEED;
        return 0;
    }
    int code = vec_err_code(s);
    if (!code) {
        set_why(err, errlen, "unknown expectation or error name \"%s\"", s);
        return -1;
    }
    v->expect = VEC_ERR;
    v->err = code;
    return 0;
}

static int parse_field(const char *tok, vec_field *f, char *err, size_t errlen)
{
    memset(f, 0, sizeof *f);
    const char *eq = strchr(tok, '=');
    if (!eq || eq == tok) {
        set_why(err, errlen, "bad field check \"%s\"", tok);
        return -1;
    }
    char tagname[32];
    size_t tl = (size_t)(eq - tok);
    if (tl >= sizeof tagname) {
        set_why(err, errlen, "bad field name in \"%s\"", tok);
        return -1;
    }
    memcpy(tagname, tok, tl);
    tagname[tl] = '\0';
    if (strcmp(tagname, "REQ") == 0) {
        f->tag = 0;
    } else {
        f->tag = tag_code(tagname);
        if (!f->tag) {
            set_why(err, errlen, "unknown field name \"%s\"", tagname);
            return -1;
        }
    }
    const char *val = eq + 1;
    if (strcmp(val, "absent") == 0 && f->tag != 0) {
        f->absent = 1;
        return 0;
    }
    if (strncmp(val, "x:", 2) == 0 && f->tag != 0) {
        f->is_bytes = 1;
        if (parse_hex(val + 2, strlen(val + 2), &f->bytes, &f->len, err, errlen) != 0)
            return -1;
        if (imp_tag_kind(f->tag) < IMP_K_TEXT) {
            set_why(err, errlen, "%s is an integer field, not x:", tagname);
            return -1;
        }
        return 0;
    }
    if (parse_u64(val, &f->u) != 0) {
        set_why(err, errlen, "bad value in \"%s\"", tok);
        return -1;
    }
    if (f->tag != 0 && imp_tag_kind(f->tag) >= IMP_K_TEXT) {
        set_why(err, errlen, "%s needs an x: value", tagname);
        return -1;
    }
    if (f->tag == 0 && f->u > UINT32_MAX) {
        set_why(err, errlen, "REQ out of range");
        return -1;
    }
    return 0;
}

static int parse_fields(const char *s, size_t n, vec *v, char *err, size_t errlen)
{
    size_t i = 0;
    while (i < n) {
        while (i < n && isspace((unsigned char)s[i]))
            i++;
        if (i >= n)
            break;
        size_t j = i;
        while (j < n && !isspace((unsigned char)s[j]))
            j++;
        char *tok = xrealloc(NULL, j - i + 1);
        memcpy(tok, s + i, j - i);
        tok[j - i] = '\0';
        v->fields = xrealloc(v->fields, (v->nfields + 1) * sizeof *v->fields);
        int r = parse_field(tok, &v->fields[v->nfields], err, errlen);
        free(tok);
        if (r != 0) {
            free(v->fields[v->nfields].bytes);
            return -1;
        }
        v->nfields++;
        i = j;
    }
    return 0;
}

/* Copy column s[0..n) into a NUL-terminated buffer of at most cap bytes. */
static int column(const char *s, size_t n, char *buf, size_t cap, const char *what, char *err,
                  size_t errlen)
{
    if (n >= cap) {
        set_why(err, errlen, "%s too long", what);
        return -1;
    }
    memcpy(buf, s, n);
    buf[n] = '\0';
    return 0;
}

int vec_parse_line(const char *line, vec *v, char *err, size_t errlen)
{
    memset(v, 0, sizeof *v);
    size_t n = strlen(line);
    const char *hash = memchr(line, '#', n);
    if (hash)
        n = (size_t)(hash - line);
    line = trim(line, &n);
    if (n == 0)
        return 0;

    const char *col[6];
    size_t cl[6];
    size_t ncol = 0;
    const char *p = line, *end = line + n;
    for (;;) {
        const char *bar = memchr(p, '|', (size_t)(end - p));
        const char *stop = bar ? bar : end;
        if (ncol == 6) {
            set_why(err, errlen, "too many columns");
            return -1;
        }
        cl[ncol] = (size_t)(stop - p);
        col[ncol] = trim(p, &cl[ncol]);
        ncol++;
        if (!bar)
            break;
        p = bar + 1;
    }
    if (ncol < 4 || ncol > 5) {
        set_why(err, errlen, "expected 4 or 5 columns, got %zu", ncol);
        return -1;
    }

    char buf[128];
    if (cl[0] == 0 || cl[0] > VEC_NAME_MAX) {
        set_why(err, errlen, "bad name length");
        return -1;
    }
    for (size_t i = 0; i < cl[0]; i++) {
        char c = col[0][i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_')) {
            set_why(err, errlen, "bad character in name \"%.*s\"", (int)cl[0], col[0]);
            return -1;
        }
    }
    memcpy(v->name, col[0], cl[0]);
    v->name[cl[0]] = '\0';

    if (column(col[1], cl[1], buf, sizeof buf, "context", err, errlen) != 0 ||
        parse_context(buf, v, err, errlen) != 0)
        goto fail;
    if (parse_hex(col[2], cl[2], &v->bytes, &v->len, err, errlen) != 0)
        goto fail;
    if (column(col[3], cl[3], buf, sizeof buf, "expectation", err, errlen) != 0 ||
        parse_expect(buf, v, err, errlen) != 0)
        goto fail;
    if (ncol == 5 && cl[4] > 0) {
        if (v->expect != VEC_OK) {
            set_why(err, errlen, "field checks are only allowed with ok:");
            goto fail;
        }
        if (parse_fields(col[4], cl[4], v, err, errlen) != 0)
            goto fail;
    }
    return 1;
fail:
    vec_clear(v);
    return -1;
}

/* ---- sets and files --------------------------------------------------------------------- */

void vec_set_init(vec_set *s)
{
    memset(s, 0, sizeof *s);
}

void vec_set_free(vec_set *s)
{
    for (size_t i = 0; i < s->n; i++)
        vec_clear(&s->v[i]);
    free(s->v);
    for (size_t i = 0; i < s->nfiles; i++)
        free(s->files[i]);
    free(s->files);
    memset(s, 0, sizeof *s);
}

static int read_file(const char *path, char **out, size_t *outlen)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return -1;
    char *b = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (cap - len < 65536) {
            cap = cap ? cap * 2 : 131072;
            b = xrealloc(b, cap + 1);
        }
        size_t r = fread(b + len, 1, cap - len, f);
        len += r;
        if (r == 0)
            break;
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        free(b);
        return -1;
    }
    b[len] = '\0';
    *out = b;
    *outlen = len;
    return 0;
}

long vec_load_file(vec_set *s, const char *path, char *err, size_t errlen)
{
    char *text;
    size_t len;
    if (read_file(path, &text, &len) != 0) {
        set_why(err, errlen, "%s: %s", path, strerror(errno));
        return -1;
    }
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    s->files = xrealloc(s->files, (s->nfiles + 1) * sizeof *s->files);
    s->files[s->nfiles] = xstrdup(base);
    const char *fname = s->files[s->nfiles++];

    long count = 0;
    unsigned lineno = 0;
    char why[200];
    for (char *line = text; line < text + len;) {
        char *nl = memchr(line, '\n', (size_t)(text + len - line));
        char *next = nl ? nl + 1 : text + len;
        if (nl)
            *nl = '\0';
        size_t ll = strlen(line);
        if (ll && line[ll - 1] == '\r')
            line[ll - 1] = '\0';
        lineno++;
        vec v;
        int r = vec_parse_line(line, &v, why, sizeof why);
        if (r < 0) {
            set_why(err, errlen, "%s:%u: %s", fname, lineno, why);
            free(text);
            return -1;
        }
        if (r > 0) {
            for (size_t i = 0; i < s->n; i++) {
                if (strcmp(s->v[i].name, v.name) == 0) {
                    set_why(err, errlen, "%s:%u: duplicate name %s (also %s:%u)", fname, lineno,
                            v.name, s->v[i].file, s->v[i].line);
                    vec_clear(&v);
                    free(text);
                    return -1;
                }
            }
            v.file = fname;
            v.line = lineno;
            if (s->n == s->cap) {
                s->cap = s->cap ? s->cap * 2 : 256;
                s->v = xrealloc(s->v, s->cap * sizeof *s->v);
            }
            s->v[s->n++] = v;
            count++;
        }
        line = next;
    }
    free(text);
    return count;
}

static int cmp_str(const void *a, const void *b)
{
    const char *const *x = a;
    const char *const *y = b;
    return strcmp(*x, *y);
}

long vec_load_dir(vec_set *s, const char *dir, char *err, size_t errlen)
{
    DIR *d = opendir(dir);
    if (!d) {
        set_why(err, errlen, "%s: %s", dir, strerror(errno));
        return -1;
    }
    char **names = NULL;
    size_t n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        size_t l = strlen(e->d_name);
        if (l > 4 && strcmp(e->d_name + l - 4, ".txt") == 0 && e->d_name[0] != '.') {
            names = xrealloc(names, (n + 1) * sizeof *names);
            names[n++] = xstrdup(e->d_name);
        }
    }
    closedir(d);
    if (n)
        qsort(names, n, sizeof *names, cmp_str);
    long total = 0;
    for (size_t i = 0; i < n; i++) {
        size_t pl = strlen(dir) + strlen(names[i]) + 2;
        char *path = xrealloc(NULL, pl);
        snprintf(path, pl, "%s/%s", dir, names[i]);
        long r = total >= 0 ? vec_load_file(s, path, err, errlen) : -1;
        free(path);
        total = r < 0 ? -1 : total + r;
    }
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
    return total;
}

/* ---- strings ---------------------------------------------------------------------------- */

static const char *kind_str(vec_kind k, uint8_t type, int err, char *buf, size_t len)
{
    if (k == VEC_OK) {
        const char *n = imp_type_name(type);
        if (n)
            snprintf(buf, len, "ok:%s", n);
        else
            snprintf(buf, len, "ok:0x%02x", type);
    } else if (k == VEC_NEED) {
        snprintf(buf, len, "need");
    } else {
        const char *n = imp_err_name(err);
        if (n)
            snprintf(buf, len, "%s", n);
        else
            snprintf(buf, len, "error %d", err);
    }
    return buf;
}

const char *vec_expect_str(const vec *v, char *buf, size_t len)
{
    return kind_str(v->expect, v->type, v->err, buf, len);
}

const char *vec_outcome_str(const vec_outcome *o, char *buf, size_t len)
{
    char k[64];
    kind_str(o->kind, o->type, o->err, k, sizeof k);
    if (!o->harness_ok || !o->fields_ok)
        snprintf(buf, len, "%s [%s]", k, o->detail);
    else
        snprintf(buf, len, "%s", k);
    return buf;
}

int vec_outcome_equal(const vec_outcome *a, const vec_outcome *b)
{
    if (a->kind != b->kind || a->fields_ok != b->fields_ok || a->harness_ok != b->harness_ok)
        return 0;
    if (a->kind == VEC_OK)
        return a->type == b->type;
    if (a->kind == VEC_ERR)
        return a->err == b->err;
    return 1;
}

int vec_outcome_matches(const vec *v, const vec_outcome *o)
{
    if (!o->harness_ok || o->kind != v->expect)
        return 0;
    if (v->expect == VEC_OK)
        return o->type == v->type && o->fields_ok;
    if (v->expect == VEC_ERR)
        return o->err == v->err;
    return 1;
}

/* ---- field checks ----------------------------------------------------------------------- */

int vec_check_fields(const vec *v, const imp_msg *m, char *why, size_t whylen)
{
    for (size_t i = 0; i < v->nfields; i++) {
        const vec_field *f = &v->fields[i];
        const char *name = f->tag ? imp_tag_name(f->tag) : "REQ";
        if (f->tag == 0) {
            if (m->request_id != f->u) {
                set_why(why, whylen, "REQ is %lu, expected %lu", (unsigned long)m->request_id,
                        (unsigned long)f->u);
                return 0;
            }
            continue;
        }
        if (f->absent) {
            if (imp_msg_has(m, f->tag)) {
                set_why(why, whylen, "%s present, expected absent", name);
                return 0;
            }
            continue;
        }
        if (!imp_msg_has(m, f->tag)) {
            set_why(why, whylen, "%s absent", name);
            return 0;
        }
        if (f->is_bytes) {
            imp_bytes b = imp_msg_b(m, f->tag);
            if (b.len != f->len || (f->len && (!b.p || memcmp(b.p, f->bytes, f->len) != 0))) {
                set_why(why, whylen, "%s differs (%zu bytes, expected %zu)", name, b.len, f->len);
                return 0;
            }
        } else {
            uint64_t u = imp_msg_u(m, f->tag, 0);
            if (u != f->u) {
                set_why(why, whylen, "%s is %llu, expected %llu", name, (unsigned long long)u,
                        (unsigned long long)f->u);
                return 0;
            }
        }
    }
    return 1;
}

/* ---- connections driven to a state ------------------------------------------------------ */

static void drain(imp_conn *c)
{
    const uint8_t *o;
    size_t n = imp_conn_pending_output(c, &o);
    imp_conn_consume_output(c, n);
}

/* 1 if the pending output holds a frame of that type and request id. */
static int output_has(imp_conn *c, uint8_t type, uint32_t request_id)
{
    const uint8_t *o;
    size_t n = imp_conn_pending_output(c, &o);
    imp_frame f;
    size_t need;
    imp_ssize r;
    while (n > 0 && (r = imp_frame_parse(o, n, 0, &f, &need)) > 0) {
        if (f.type == type && f.request_id == request_id)
            return 1;
        o += r;
        n -= (size_t)r;
    }
    return 0;
}

/* Feed one encoded message and take its event, which must be that message's type; then
 * discard the output (when drain_after). */
static int feed_msg(imp_conn *c, const imp_msg *m, int drain_after, char *why, size_t whylen)
{
    uint8_t buf[512];
    imp_ssize n = imp_msg_encode(m, buf, sizeof buf);
    if (n <= 0) {
        set_why(why, whylen, "encoding %s failed: %d", imp_type_name(m->type), (int)n);
        return -1;
    }
    imp_ssize r = imp_conn_feed(c, buf, (size_t)n);
    if (r != n) {
        set_why(why, whylen, "feeding %s returned %d", imp_type_name(m->type), (int)r);
        return -1;
    }
    imp_msg ev;
    int e = imp_conn_next_event(c, &ev);
    if (e != 1 || ev.type != m->type) {
        set_why(why, whylen, "feeding %s: next_event %d (type %u)", imp_type_name(m->type), e,
                e == 1 ? ev.type : 0u);
        return -1;
    }
    if (drain_after)
        drain(c);
    return 0;
}

static int send_msg(imp_conn *c, const imp_msg *m, char *why, size_t whylen)
{
    int r = imp_conn_send(c, m);
    if (r != 0) {
        set_why(why, whylen, "sending %s returned %d", imp_type_name(m->type), r);
        return -1;
    }
    drain(c);
    return 0;
}

#define DRIVE_LOGIN_ID 2u
#define DRIVE_LOGOUT_ID 3u

/* IMP-SESS-001: a server starts in AWAIT_HELLO, a client in HELLO_SENT with HELLO queued;
 * vec_conn_at() checks the state reached after every path below. */
static int drive_server(imp_conn *c, imp_state target, char *why, size_t whylen)
{
    imp_msg m;
    if (target == IMP_S_AWAIT_HELLO)
        return 0;
    imp_msg_init(&m, IMP_HELLO, 1);
    imp_msg_set_u(&m, IMP_T_VERSION_MIN, 1);
    imp_msg_set_u(&m, IMP_T_VERSION_MAX, 1);
    if (feed_msg(c, &m, 0, why, whylen) != 0)
        return -1;
    /* IMP-MSG-002, IMP-FRAME-007: WELCOME, automatic, with HELLO's request id */
    if (!output_has(c, IMP_WELCOME, 1)) {
        set_why(why, whylen, "no WELCOME answered HELLO");
        return -1;
    }
    drain(c);
    if (target == IMP_S_AWAIT_AUTH)
        return 0;
    imp_msg_init(&m, IMP_LOGIN, DRIVE_LOGIN_ID);
    imp_msg_set_s(&m, IMP_T_USER, "alice");
    imp_msg_set_s(&m, IMP_T_PASSWORD, "secret");
    if (feed_msg(c, &m, 1, why, whylen) != 0)
        return -1;
    if (target == IMP_S_AUTHENTICATING)
        return 0;
    imp_msg_init(&m, IMP_AUTH_OK, DRIVE_LOGIN_ID);
    imp_msg_set_s(&m, IMP_T_USER, "alice");
    imp_msg_set_u(&m, IMP_T_SESSION_ID, 1);
    imp_msg_set_u(&m, IMP_T_LAST_SEQ, 0);
    if (send_msg(c, &m, why, whylen) != 0)
        return -1;
    if (target == IMP_S_READY)
        return 0;
    /* CLOSING: LOGOUT from READY. IMP-MSG-005: the server answers OK with LOGOUT's request
     * id (queued by the library itself) and closes. */
    imp_msg_init(&m, IMP_LOGOUT, DRIVE_LOGOUT_ID);
    if (feed_msg(c, &m, 0, why, whylen) != 0)
        return -1;
    if (!output_has(c, IMP_OK, DRIVE_LOGOUT_ID)) {
        set_why(why, whylen, "no OK answered LOGOUT");
        return -1;
    }
    drain(c);
    return 0;
}

static int drive_client(imp_conn *c, imp_state target, char *why, size_t whylen)
{
    imp_msg m;
    const uint8_t *out;
    size_t n = imp_conn_pending_output(c, &out);
    imp_frame f;
    size_t need;
    if (imp_frame_parse(out, n, 0, &f, &need) <= 0 || f.type != IMP_HELLO) {
        set_why(why, whylen, "a new client did not queue HELLO");
        return -1;
    }
    uint32_t hello_id = f.request_id;
    drain(c);
    if (target == IMP_S_HELLO_SENT)
        return 0;
    imp_msg_init(&m, IMP_WELCOME, hello_id);
    imp_msg_set_u(&m, IMP_T_VERSION, 1);
    imp_msg_set_u(&m, IMP_T_MAX_FRAME, IMP_DEFAULT_MAX_FRAME);
    imp_msg_set_u(&m, IMP_T_MAX_FRAME_PREAUTH, IMP_DEFAULT_MAX_PREAUTH);
    imp_msg_set_u(&m, IMP_T_PING_INTERVAL, 30000);
    imp_msg_set_u(&m, IMP_T_AUTH_TIMEOUT, 10000);
    if (feed_msg(c, &m, 1, why, whylen) != 0)
        return -1;
    if (target == IMP_S_CONNECTED)
        return 0;
    imp_msg_init(&m, IMP_LOGIN, DRIVE_LOGIN_ID);
    imp_msg_set_s(&m, IMP_T_USER, "alice");
    imp_msg_set_s(&m, IMP_T_PASSWORD, "secret");
    if (send_msg(c, &m, why, whylen) != 0)
        return -1;
    if (target == IMP_S_AUTH_SENT)
        return 0;
    imp_msg_init(&m, IMP_AUTH_OK, DRIVE_LOGIN_ID);
    imp_msg_set_s(&m, IMP_T_USER, "alice");
    imp_msg_set_u(&m, IMP_T_SESSION_ID, 1);
    imp_msg_set_u(&m, IMP_T_LAST_SEQ, 0);
    if (feed_msg(c, &m, 1, why, whylen) != 0)
        return -1;
    if (target == IMP_S_READY)
        return 0;
    imp_msg_init(&m, IMP_LOGOUT, DRIVE_LOGOUT_ID);
    if (send_msg(c, &m, why, whylen) != 0)
        return -1;
    if (target == IMP_S_LOGOUT_SENT)
        return 0;
    /* CLOSING: the OK that answers LOGOUT (IMP-SESS-007). */
    imp_msg_init(&m, IMP_OK, DRIVE_LOGOUT_ID);
    return feed_msg(c, &m, 1, why, whylen);
}

imp_conn *vec_conn_at(imp_role role, imp_state state, char *why, size_t whylen)
{
    imp_config cfg;
    imp_config_default(&cfg, role);
    imp_conn *c = imp_conn_new(role, &cfg, 0);
    if (!c) {
        set_why(why, whylen, "imp_conn_new failed");
        return NULL;
    }
    int r = role == IMP_ROLE_SERVER ? drive_server(c, state, why, whylen)
                                    : drive_client(c, state, why, whylen);
    if (r == 0 && imp_conn_state(c) != state) {
        const char *sn = imp_state_name(imp_conn_state(c));
        set_why(why, whylen, "driven to %s instead of %s", sn ? sn : "?",
                imp_state_name(state) ? imp_state_name(state) : "?");
        r = -1;
    }
    if (r != 0) {
        imp_conn_free(c);
        return NULL;
    }
    return c;
}

/* ---- running ---------------------------------------------------------------------------- */

/* Guard-page buffers for chunks and accumulated input, kept from run to run to spare the
 * mmap/munmap calls (the harness is single-threaded). */
static guard_buf cbuf, abuf;

static void outcome_init(vec_outcome *o)
{
    memset(o, 0, sizeof *o);
    o->kind = VEC_NEED;
    o->fields_ok = 1;
    o->harness_ok = 1;
}

static void harness_fail(vec_outcome *o, const char *what, size_t a, size_t b)
{
    if (o->harness_ok)
        snprintf(o->detail, sizeof o->detail, "%s (%zu vs %zu)", what, a, b);
    o->harness_ok = 0;
}

static void got_msg(const vec *v, const imp_msg *m, vec_outcome *o)
{
    o->kind = VEC_OK;
    o->type = m->type;
    if (v->expect == VEC_OK && !vec_check_fields(v, m, o->detail, sizeof o->detail))
        o->fields_ok = 0;
}

static void run_frame(const vec *v, const size_t *chunks, size_t nchunks, vec_outcome *o)
{
    uint8_t *acc = xrealloc(NULL, v->len);
    size_t have = 0;
    for (size_t i = 0; i < nchunks; i++) {
        const uint8_t *c = guard_buf_place(&cbuf, v->bytes ? v->bytes + have : NULL, chunks[i]);
        if (chunks[i])
            memcpy(acc + have, c, chunks[i]);
        have += chunks[i];
        const uint8_t *p = guard_buf_place(&abuf, acc, have);
        imp_frame f;
        size_t need = (size_t)-1;
        imp_ssize r = imp_frame_parse(p, have, v->limit, &f, &need);
        if (r < 0) {
            o->kind = VEC_ERR;
            o->err = (int)r;
            break;
        }
        if (r == 0) {
            /* *need must be exact: the rest of the header, or of the frame. */
            size_t want = have < IMP_HEADER_SIZE ? IMP_HEADER_SIZE - have
                                                 : IMP_HEADER_SIZE + (size_t)be32(p + 4) - have;
            if (need != want)
                harness_fail(o, "inexact *need", need, want);
            continue;
        }
        /* A whole frame: exact size, header fields decoded big-endian, payload a view. */
        if ((size_t)r > have)
            harness_fail(o, "frame size beyond the input", (size_t)r, have);
        else if ((size_t)r != IMP_HEADER_SIZE + (size_t)f.length)
            harness_fail(o, "return != 12 + length", (size_t)r, f.length);
        else if (f.version != p[0] || f.type != p[1] || f.flags != (p[2] << 8 | p[3]) ||
                 f.length != be32(p + 4) || f.request_id != be32(p + 8))
            harness_fail(o, "header fields", 0, 0);
        else if (f.length && f.payload != p + IMP_HEADER_SIZE)
            harness_fail(o, "payload is not a view of the buffer", 0, 0);
        imp_msg m;
        int d = imp_msg_decode(&f, &m);
        if (d < 0) {
            o->kind = VEC_ERR;
            o->err = d;
        } else if (d > 0) {
            harness_fail(o, "imp_msg_decode returned > 0", (size_t)d, 0);
        } else {
            if (m.type != f.type || m.request_id != f.request_id)
                harness_fail(o, "decoded type/request id differ from the header", m.type, f.type);
            got_msg(v, &m, o);
        }
        break;
    }
    free(acc);
}

/* After an error the connection must stay failed with the same error (IMP-ERR-003). */
static void check_sticky(imp_conn *c, vec_outcome *o)
{
    imp_msg m;
    int e = imp_conn_next_event(c, &m);
    if (e != o->err)
        harness_fail(o, "error not sticky in next_event", (size_t)-e, (size_t)-o->err);
    if (imp_conn_error(c) != o->err)
        harness_fail(o, "imp_conn_error differs", (size_t)-imp_conn_error(c), (size_t)-o->err);
    static const uint8_t ping[12] = {1, 0x50, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9};
    imp_ssize r = imp_conn_feed(c, ping, sizeof ping);
    if (r != o->err)
        harness_fail(o, "error not sticky in feed", (size_t)-r, (size_t)-o->err);
    if (imp_is_fatal(o->err) && imp_conn_state(c) != IMP_S_CLOSING)
        harness_fail(o, "fatal error but not CLOSING", imp_conn_state(c), IMP_S_CLOSING);
}

static void run_conn(const vec *v, const size_t *chunks, size_t nchunks, vec_outcome *o)
{
    imp_conn *c = vec_conn_at(v->role, v->state, o->detail, sizeof o->detail);
    if (!c) {
        o->harness_ok = 0;
        return;
    }
    size_t off = 0;
    int done = 0;
    imp_msg m;
    for (size_t i = 0; i < nchunks && !done; i++) {
        const uint8_t *p = guard_buf_place(&cbuf, v->bytes ? v->bytes + off : NULL, chunks[i]);
        off += chunks[i];
        size_t pos = 0;
        do {
            imp_ssize r = imp_conn_feed(c, p + pos, chunks[i] - pos);
            if (r < 0) {
                o->kind = VEC_ERR;
                o->err = (int)r;
                done = 1;
                break;
            }
            if ((size_t)r > chunks[i] - pos) {
                harness_fail(o, "feed took more than given", (size_t)r, chunks[i] - pos);
                done = 1;
                break;
            }
            pos += (size_t)r;
            int e = imp_conn_next_event(c, &m);
            if (e > 0) {
                got_msg(v, &m, o);
                done = 1;
            } else if (e < 0) {
                o->kind = VEC_ERR;
                o->err = e;
                done = 1;
            } else if (r == 0 && pos < chunks[i]) {
                harness_fail(o, "feed took nothing and no event came", pos, chunks[i]);
                done = 1;
            }
        } while (!done && pos < chunks[i]);
    }
    if (!done) {
        int e = imp_conn_next_event(c, &m);
        if (e > 0) {
            got_msg(v, &m, o);
        } else if (e < 0) {
            o->kind = VEC_ERR;
            o->err = e;
        }
    }
    if (o->kind == VEC_ERR)
        check_sticky(c, o);
    imp_conn_free(c);
}

int vec_run(const vec *v, const size_t *chunks, size_t nchunks, vec_outcome *out)
{
    size_t whole = v->len;
    outcome_init(out);
    if (nchunks == 0) {
        chunks = &whole;
        nchunks = 1;
    }
    size_t sum = 0;
    for (size_t i = 0; i < nchunks; i++)
        sum += chunks[i];
    if (sum != v->len) {
        harness_fail(out, "chunk sizes do not add up", sum, v->len);
        return -1;
    }
    if (v->ctx == VEC_CTX_FRAME)
        run_frame(v, chunks, nchunks, out);
    else
        run_conn(v, chunks, nchunks, out);
    return out->harness_ok ? 0 : -1;
}
