/* imt_json — JSON lines writer and schema v1 (see imt_json.h). */
#include "imt_json.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

void imt_json_init(imt_json *j)
{
    memset(j, 0, sizeof *j);
    j->first[0] = 1;
}

void imt_json_reset(imt_json *j)
{
    j->len = 0;
    if (j->buf)
        j->buf[0] = 0;
    j->err = 0;
    j->depth = 0;
    j->first[0] = 1;
    j->after_key = 0;
}

void imt_json_free(imt_json *j)
{
    free(j->buf);
    imt_json_init(j);
}

static void put(imt_json *j, const char *p, size_t n)
{
    if (j->err)
        return;
    if (j->len + n + 1 > j->cap) {
        size_t cap = j->cap ? j->cap : 256;
        while (cap < j->len + n + 1)
            cap *= 2;
        char *b = realloc(j->buf, cap);
        if (!b) {
            j->err = 1;
            return;
        }
        j->buf = b;
        j->cap = cap;
    }
    memcpy(j->buf + j->len, p, n);
    j->len += n;
    j->buf[j->len] = 0;
}

static void putc_(imt_json *j, char c)
{
    put(j, &c, 1);
}

/* Before a value: a comma unless it is the first at this depth or follows a key. At depth 0
 * (top level) values are never separated: the caller emits one value per line. */
static void before_value(imt_json *j)
{
    if (j->after_key) {
        j->after_key = 0;
        return;
    }
    if (j->depth > 0 && !j->first[j->depth])
        putc_(j, ',');
    j->first[j->depth] = 0;
}

static void open_(imt_json *j, char c)
{
    before_value(j);
    if (j->depth >= IMT_JSON_MAX_DEPTH) {
        j->err = 1;
        return;
    }
    putc_(j, c);
    j->depth++;
    j->first[j->depth] = 1;
}

static void close_(imt_json *j, char c)
{
    if (j->depth <= 0 || j->after_key) {
        j->err = 1;
        return;
    }
    putc_(j, c);
    j->depth--;
}

void imt_json_obj_begin(imt_json *j)
{
    open_(j, '{');
}

void imt_json_obj_end(imt_json *j)
{
    close_(j, '}');
}

void imt_json_arr_begin(imt_json *j)
{
    open_(j, '[');
}

void imt_json_arr_end(imt_json *j)
{
    close_(j, ']');
}

/* Length of the valid UTF-8 sequence at p (1..4), or 0 when the bytes there are not one
 * (RFC 3629: no overlongs, no surrogates, nothing above U+10FFFF). */
static size_t utf8_seq(const uint8_t *p, size_t n)
{
    uint8_t c = p[0];
    if (c < 0x80)
        return 1;
    size_t len;
    uint32_t cp;
    if (c >= 0xc2 && c <= 0xdf) {
        len = 2;
        cp = c & 0x1fu;
    } else if (c >= 0xe0 && c <= 0xef) {
        len = 3;
        cp = c & 0x0fu;
    } else if (c >= 0xf0 && c <= 0xf4) {
        len = 4;
        cp = c & 0x07u;
    } else {
        return 0;
    }
    if (n < len)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((p[i] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (p[i] & 0x3fu);
    }
    if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10ffff)))
        return 0;
    if (cp >= 0xd800 && cp <= 0xdfff)
        return 0;
    return len;
}

static int utf8_valid(const uint8_t *p, size_t n)
{
    size_t i = 0;
    while (i < n) {
        size_t k = utf8_seq(p + i, n - i);
        if (!k)
            return 0;
        i += k;
    }
    return 1;
}

static void put_escaped(imt_json *j, const uint8_t *p, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    putc_(j, '"');
    size_t i = 0;
    while (i < n) {
        uint8_t c = p[i];
        const char *esc = NULL;
        switch (c) {
        case '"':
            esc = "\\\"";
            break;
        case '\\':
            esc = "\\\\";
            break;
        case '\b':
            esc = "\\b";
            break;
        case '\f':
            esc = "\\f";
            break;
        case '\n':
            esc = "\\n";
            break;
        case '\r':
            esc = "\\r";
            break;
        case '\t':
            esc = "\\t";
            break;
        default:
            break;
        }
        if (esc) {
            put(j, esc, strlen(esc));
            i++;
            continue;
        }
        size_t k = utf8_seq(p + i, n - i);
        if (c < 0x20 || c == 0x7f || k == 0) {
            /* control character, or a byte that is not part of valid UTF-8 */
            char u[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
            put(j, u, 6);
            i++;
            continue;
        }
        put(j, (const char *)p + i, k);
        i += k;
    }
    putc_(j, '"');
}

void imt_json_key(imt_json *j, const char *key)
{
    before_value(j);
    put_escaped(j, (const uint8_t *)key, strlen(key));
    putc_(j, ':');
    j->after_key = 1;
}

void imt_json_str(imt_json *j, const char *s)
{
    if (!s) {
        imt_json_null(j);
        return;
    }
    imt_json_strn(j, s, strlen(s));
}

void imt_json_strn(imt_json *j, const void *p, size_t n)
{
    before_value(j);
    put_escaped(j, p, n);
}

size_t imt_base64_len(size_t n)
{
    return (n + 2) / 3 * 4;
}

size_t imt_base64_encode(const void *p, size_t n, char *out)
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    const uint8_t *s = p;
    size_t o = 0, i = 0;
    for (; i + 3 <= n; i += 3) {
        uint32_t v = (uint32_t)s[i] << 16 | (uint32_t)s[i + 1] << 8 | s[i + 2];
        out[o++] = tab[v >> 18];
        out[o++] = tab[(v >> 12) & 63];
        out[o++] = tab[(v >> 6) & 63];
        out[o++] = tab[v & 63];
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)s[i] << 16;
        out[o++] = tab[v >> 18];
        out[o++] = tab[(v >> 12) & 63];
        out[o++] = '=';
        out[o++] = '=';
    } else if (n - i == 2) {
        uint32_t v = (uint32_t)s[i] << 16 | (uint32_t)s[i + 1] << 8;
        out[o++] = tab[v >> 18];
        out[o++] = tab[(v >> 12) & 63];
        out[o++] = tab[(v >> 6) & 63];
        out[o++] = '=';
    }
    out[o] = 0;
    return o;
}

void imt_json_base64(imt_json *j, const void *p, size_t n)
{
    before_value(j);
    char *tmp = malloc(imt_base64_len(n) + 1);
    if (!tmp) {
        j->err = 1;
        return;
    }
    size_t k = imt_base64_encode(p, n, tmp);
    putc_(j, '"');
    put(j, tmp, k);
    putc_(j, '"');
    free(tmp);
}

void imt_json_u64(imt_json *j, uint64_t v)
{
    char b[24];
    int n = snprintf(b, sizeof b, "%" PRIu64, v);
    before_value(j);
    put(j, b, (size_t)n);
}

void imt_json_i64(imt_json *j, int64_t v)
{
    char b[24];
    int n = snprintf(b, sizeof b, "%" PRId64, v);
    before_value(j);
    put(j, b, (size_t)n);
}

void imt_json_bool(imt_json *j, int v)
{
    before_value(j);
    put(j, v ? "true" : "false", v ? 4 : 5);
}

void imt_json_null(imt_json *j)
{
    before_value(j);
    put(j, "null", 4);
}

int imt_json_emit(imt_json *j, FILE *out)
{
    int rc = 0;
    if (j->err || j->depth != 0)
        rc = -1;
    else if (fwrite(j->buf ? j->buf : "", 1, j->len, out) != j->len || fputc('\n', out) == EOF ||
             fflush(out) != 0)
        rc = -1;
    imt_json_reset(j);
    return rc;
}

/* ---- schema v1 ---------------------------------------------------------------------------- */

const char *imt_kind_name(int k)
{
    switch (k) {
    case IMP_TARGET_USER:
        return "user";
    case IMP_TARGET_ROOM:
        return "room";
    case IMP_TARGET_BROADCAST:
        return "broadcast";
    default:
        return "unknown";
    }
}

const char *imt_class_name(int c)
{
    switch (c) {
    case IMP_CLASS_DURABLE:
        return "durable";
    case IMP_CLASS_TRANSIENT:
        return "transient";
    default:
        return "unknown";
    }
}

const char *imt_outcome_name(int o)
{
    switch (o) {
    case IMP_OUTCOME_STORED:
        return "stored";
    case IMP_OUTCOME_DELIVERED:
        return "delivered";
    case IMP_OUTCOME_REFUSED:
        return "refused";
    default:
        return "unknown";
    }
}

const char *imt_status_name(int s)
{
    switch (s) {
    case IMP_STATUS_OFFLINE:
        return "offline";
    case IMP_STATUS_ONLINE:
        return "online";
    case IMP_STATUS_AWAY:
        return "away";
    case IMP_STATUS_BUSY:
        return "busy";
    default:
        return "unknown";
    }
}

static void head(imt_json *j, const char *type)
{
    imt_json_obj_begin(j);
    imt_json_key(j, "v");
    imt_json_u64(j, IMT_JSON_SCHEMA_VERSION);
    imt_json_key(j, "type");
    imt_json_str(j, type);
}

static void kv_str(imt_json *j, const char *k, const char *v)
{
    imt_json_key(j, k);
    imt_json_str(j, v);
}

static void kv_u64(imt_json *j, const char *k, uint64_t v)
{
    imt_json_key(j, k);
    imt_json_u64(j, v);
}

void imt_json_message(imt_json *j, const imt_message *m)
{
    head(j, "message");
    kv_u64(j, "id", m->msg_id);
    kv_u64(j, "seq", m->seq);
    kv_str(j, "from", m->sender);
    kv_str(j, "kind", imt_kind_name(m->target_kind));
    if (m->target_kind != IMP_TARGET_BROADCAST && m->target[0])
        kv_str(j, "to", m->target);
    kv_u64(j, "ts", m->timestamp);
    kv_str(j, "class", imt_class_name(m->cls));
    if (m->headers.len > 0) {
        imt_json_key(j, "headers");
        imt_json_obj_begin(j);
        imp_bytes rest = m->headers, k, v;
        while (imp_headers_next(&rest, &k, &v) == 1) {
            char key[IMP_HEADER_KEY_MAX + 1];
            memcpy(key, k.p, k.len);
            key[k.len] = 0;
            imt_json_key(j, key);
            imt_json_strn(j, v.p, v.len);
        }
        imt_json_obj_end(j);
    }
    imt_json_key(j, "body");
    int text = m->body.len == 0 || utf8_valid(m->body.p, m->body.len);
    if (text)
        imt_json_strn(j, m->body.p, m->body.len);
    else
        imt_json_base64(j, m->body.p, m->body.len);
    kv_str(j, "body_enc", text ? "utf8" : "base64");
    if (m->frame_type == IMP_HISTORY_ITEM) {
        imt_json_key(j, "history");
        imt_json_bool(j, 1);
    }
    imt_json_obj_end(j);
}

void imt_json_ack(imt_json *j, const imt_ack *a)
{
    head(j, "ack");
    kv_u64(j, "req", a->request_id);
    if (a->client_msg_id[0])
        kv_str(j, "client_msg_id", a->client_msg_id);
    if (a->has_msg_id)
        kv_u64(j, "id", a->msg_id);
    kv_str(j, "outcome", imt_outcome_name(a->outcome));
    imt_json_key(j, "duplicate");
    imt_json_bool(j, a->duplicate);
    kv_u64(j, "code", (uint64_t)(a->code > 0 ? a->code : 0));
    if (a->code > 0 && imp_err_name(a->code))
        kv_str(j, "code_name", imp_err_name(a->code));
    if (a->text[0])
        kv_str(j, "text", a->text);
    imt_json_obj_end(j);
}

void imt_json_presence(imt_json *j, const imt_presence *p)
{
    head(j, "presence");
    kv_str(j, "user", p->user);
    kv_str(j, "status", imt_status_name(p->status));
    if (p->status_text[0])
        kv_str(j, "status_text", p->status_text);
    if (p->has_sessions)
        kv_u64(j, "sessions", p->sessions);
    if (p->timestamp)
        kv_u64(j, "ts", p->timestamp);
    imt_json_obj_end(j);
}

void imt_json_monitor(imt_json *j, const imt_monitor_event *e)
{
    head(j, "monitor");
    kv_str(j, "event", e->event);
    if (e->user[0])
        kv_str(j, "user", e->user);
    if (e->text[0])
        kv_str(j, "text", e->text);
    kv_u64(j, "ts", e->timestamp);
    imt_json_obj_end(j);
}

void imt_json_error(imt_json *j, const imt_result *r)
{
    head(j, "error");
    kv_u64(j, "status", (uint64_t)(r->status > 0 ? r->status : 0));
    kv_u64(j, "code", (uint64_t)(r->code > 0 ? r->code : 0));
    if (r->code > 0 && imp_err_name(r->code))
        kv_str(j, "code_name", imp_err_name(r->code));
    kv_str(j, "text", r->text);
    imt_json_obj_end(j);
}
