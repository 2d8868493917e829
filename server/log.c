/* imd — logging: text or JSON lines, one write(2) each (see log.h). */
#include "log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static atomic_int cur_level = IMS_LOG_INFO;
static atomic_int cur_json = 0;
static atomic_int cur_fd = 2;

static const char *const level_names[] = {"error", "warn", "info", "debug"};

int ims_log_setup(const char *level, const char *format)
{
    int lv = -1, js = -1;
    if (level) {
        for (int i = 0; i <= IMS_LOG_DEBUG; i++) {
            if (strcmp(level, level_names[i]) == 0)
                lv = i;
        }
        if (lv < 0)
            return -1;
    }
    if (format) {
        if (strcmp(format, "text") == 0)
            js = 0;
        else if (strcmp(format, "json") == 0)
            js = 1;
        else
            return -1;
    }
    if (lv >= 0)
        atomic_store(&cur_level, lv);
    if (js >= 0)
        atomic_store(&cur_json, js);
    return 0;
}

int ims_log_enabled(ims_log_level level)
{
    return (int)level <= atomic_load_explicit(&cur_level, memory_order_relaxed);
}

void ims_log_set_fd(int fd)
{
    atomic_store(&cur_fd, fd);
}

/* ---- a line buffer that never cuts an escape or a UTF-8 sequence -------------------------- */

typedef struct ims_lbuf {
    char b[IMS_LOG_LINE_MAX];
    size_t n;   /* bytes used */
    size_t lim; /* content limit; what closes the line goes beyond it */
    int full;   /* a unit did not fit: nothing more is added */
} ims_lbuf;

/* Adds k bytes as one unit, or marks the buffer full. */
static void lb_put(ims_lbuf *l, const char *s, size_t k)
{
    if (l->full)
        return;
    if (k > l->lim - l->n) {
        l->full = 1;
        return;
    }
    memcpy(l->b + l->n, s, k);
    l->n += k;
}

static void lb_puts(ims_lbuf *l, const char *s)
{
    lb_put(l, s, strlen(s));
}

/* The end of the line, past lim (the limits leave room for it). */
static void lb_close(ims_lbuf *l, const char *s)
{
    size_t k = strlen(s);
    if (k > sizeof l->b - l->n)
        k = sizeof l->b - l->n;
    memcpy(l->b + l->n, s, k);
    l->n += k;
}

/* Length of the well-formed UTF-8 sequence at p (at most n bytes), 0 if ill-formed. */
static size_t utf8_seq(const unsigned char *p, size_t n)
{
    unsigned c = p[0];
    size_t len;
    uint_least32_t cp, min;
    if (c < 0x80)
        return 1;
    if ((c & 0xe0) == 0xc0) {
        len = 2;
        cp = c & 0x1f;
        min = 0x80;
    } else if ((c & 0xf0) == 0xe0) {
        len = 3;
        cp = c & 0x0f;
        min = 0x800;
    } else if ((c & 0xf8) == 0xf0) {
        len = 4;
        cp = c & 0x07;
        min = 0x10000;
    } else {
        return 0;
    }
    if (n < len)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((p[i] & 0xc0) != 0x80)
            return 0;
        cp = cp << 6 | (p[i] & 0x3fu);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return len;
}

/* JSON string content: quotes and backslashes escaped, control characters as \u00XX, invalid
 * UTF-8 as U+FFFD (one per byte). */
static void put_json(ims_lbuf *l, const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < n && !l->full) {
        unsigned ch = p[i];
        char esc[8];
        if (ch == '"' || ch == '\\') {
            esc[0] = '\\';
            esc[1] = (char)ch;
            lb_put(l, esc, 2);
            i++;
        } else if (ch < 0x20 || ch == 0x7f) {
            snprintf(esc, sizeof esc, "\\u%04x", ch);
            lb_put(l, esc, 6);
            i++;
        } else {
            size_t k = utf8_seq(p + i, n - i);
            if (k) {
                lb_put(l, s + i, k);
                i += k;
            } else {
                lb_put(l, "\\ufffd", 6);
                i++;
            }
        }
    }
}

/* Text: control characters as \n, \r, \t or \xHH, invalid UTF-8 bytes as \xHH. */
static void put_text(ims_lbuf *l, const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < n && !l->full) {
        unsigned ch = p[i];
        char esc[8];
        size_t k = ch < 0x20 || ch == 0x7f ? 0 : utf8_seq(p + i, n - i);
        if (k) {
            lb_put(l, s + i, k);
            i += k;
            continue;
        }
        if (ch == '\n')
            lb_put(l, "\\n", 2);
        else if (ch == '\r')
            lb_put(l, "\\r", 2);
        else if (ch == '\t')
            lb_put(l, "\\t", 2);
        else {
            snprintf(esc, sizeof esc, "\\x%02x", ch);
            lb_put(l, esc, 4);
        }
        i++;
    }
}

static int key_char(char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           ch == '_' || ch == '.' || ch == '-';
}

/* The pairs as JSON members. On entry the event's string is open; on return a string is open
 * (its closing quote is written by the caller), so that a cut anywhere can be closed. */
static void json_pairs(ims_lbuf *l, const char *s)
{
    size_t n = strlen(s), i = 0;
    int member = 0; /* the open string is a value (or "msg") that words continue */
    while (!l->full) {
        size_t gap = i;
        while (i < n && s[i] == ' ')
            i++;
        if (i >= n)
            break;
        size_t t = i, k = i, e;
        while (k < n && key_char(s[k]))
            k++;
        if (k > t && k < n && s[k] == '=') {
            char head[IMS_LOG_LINE_MAX];
            size_t kl = k - t;
            if (kl + 6 > sizeof head) {
                l->full = 1;
                break;
            }
            memcpy(head, "\",\"", 3);
            memcpy(head + 3, s + t, kl);
            memcpy(head + 3 + kl, "\":\"", 3);
            lb_put(l, head, kl + 6); /* whole, or the line ends before this member */
            i = k + 1;
            if (i < n && s[i] == '"') {
                for (i++; i < n && s[i] != '"' && !l->full;) {
                    if (s[i] == '\\' && i + 1 < n && (s[i + 1] == '"' || s[i + 1] == '\\')) {
                        put_json(l, s + i + 1, 1);
                        i += 2;
                        continue;
                    }
                    for (e = i + 1; e < n && s[e] != '"' && s[e] != '\\';)
                        e++;
                    put_json(l, s + i, e - i);
                    i = e;
                }
                if (i < n && s[i] == '"')
                    i++;
            }
            for (e = i; e < n && s[e] != ' ';)
                e++;
            put_json(l, s + i, e - i);
            i = e;
            member = 1;
        } else {
            for (e = t; e < n && s[e] != ' ';)
                e++;
            if (member) {
                put_json(l, s + gap, e - gap);
            } else {
                lb_puts(l, "\",\"msg\":\"");
                put_json(l, s + t, e - t);
                member = 1;
            }
            i = e;
        }
    }
}

static void render(ims_lbuf *l, size_t lim, int json, const char *ts, const char *level,
                   const char *event, const char *kv)
{
    l->n = 0;
    l->full = 0;
    l->lim = lim;
    if (json) {
        lb_puts(l, "{\"ts\":\"");
        lb_puts(l, ts);
        lb_puts(l, "\",\"level\":\"");
        lb_puts(l, level);
        lb_puts(l, "\",\"event\":\"");
        put_json(l, event, strlen(event));
        json_pairs(l, kv);
        return;
    }
    lb_puts(l, ts);
    lb_puts(l, " ");
    lb_puts(l, level);
    lb_puts(l, " ");
    put_text(l, event, strlen(event));
    size_t a = 0, b = strlen(kv);
    while (a < b && kv[a] == ' ')
        a++;
    while (b > a && kv[b - 1] == ' ')
        b--;
    if (b > a) {
        lb_puts(l, " ");
        put_text(l, kv + a, b - a);
    }
}

void ims_log(ims_log_level level, const char *event, const char *kv_fmt, ...)
{
    if ((int)level < 0)
        level = IMS_LOG_ERROR;
    if ((int)level > IMS_LOG_DEBUG)
        level = IMS_LOG_DEBUG;
    if (!ims_log_enabled(level))
        return;
    int saved = errno;
    char kv[IMS_LOG_LINE_MAX];
    int cut = 0;
    kv[0] = 0;
    if (kv_fmt) {
        va_list ap;
        va_start(ap, kv_fmt);
        int r = vsnprintf(kv, sizeof kv, kv_fmt, ap);
        va_end(ap);
        if (r < 0)
            kv[0] = 0;
        else if ((size_t)r >= sizeof kv)
            cut = 1;
    }
    struct timespec now;
    struct tm tm;
    char ts[64];
    clock_gettime(CLOCK_REALTIME, &now);
    gmtime_r(&now.tv_sec, &tm);
    snprintf(ts, sizeof ts, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(now.tv_nsec / 1000000));
    int json = atomic_load_explicit(&cur_json, memory_order_relaxed);
    const char *ev = event ? event : "log";
    ims_lbuf l;
    /* closing: JSON '"}' and the newline; text the newline */
    render(&l, sizeof l.b - (json ? 3 : 1), json, ts, level_names[level], ev, kv);
    if (l.full || cut) {
        static const char jmark[] = "\",\"truncated\":true}\n", tmark[] = " [truncated]\n";
        render(&l, sizeof l.b - (json ? sizeof jmark : sizeof tmark) + 1, json, ts,
               level_names[level], ev, kv);
        lb_close(&l, json ? jmark : tmark);
    } else {
        lb_close(&l, json ? "\"}\n" : "\n");
    }
    int fd = atomic_load_explicit(&cur_fd, memory_order_relaxed);
    size_t off = 0;
    while (off < l.n) {
        ssize_t w = write(fd, l.b + off, l.n - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            break;
        off += (size_t)w;
    }
    errno = saved;
}
