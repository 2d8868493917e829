/* imwatch output helpers: escaping for people, times. */
#include "imwatch.h"

#include <inttypes.h>
#include <string.h>
#include <time.h>

/* Length of the well-formed UTF-8 sequence at p (2..4), or 0. */
static size_t utf8_seq(const uint8_t *p, size_t len)
{
    size_t n = p[0] >= 0xF0 ? 4 : p[0] >= 0xE0 ? 3 : p[0] >= 0xC2 ? 2 : 0;
    if (n == 0 || n > len || !imp_utf8_valid(p, n))
        return 0;
    return n;
}

void iw_escape(FILE *out, const uint8_t *p, size_t len, int quote)
{
    size_t i = 0;
    while (i < len) {
        uint8_t c = p[i];
        if (c >= 0x80) {
            size_t n = utf8_seq(p + i, len - i);
            /* C1 controls (U+0080..U+009F) move terminals as much as C0 ones do. */
            if (n && !(n == 2 && c == 0xC2 && p[i + 1] < 0xA0)) {
                fwrite(p + i, 1, n, out);
                i += n;
                continue;
            }
            fprintf(out, "\\x%02x", c);
        } else if (c == '\\' || (quote && c == '"')) {
            fputc('\\', out);
            fputc(c, out);
        } else if (c == '\n') {
            fputs("\\n", out);
        } else if (c == '\t') {
            fputs("\\t", out);
        } else if (c == '\r') {
            fputs("\\r", out);
        } else if (c < 0x20 || c == 0x7F) {
            fprintf(out, "\\x%02x", c);
        } else {
            fputc(c, out);
        }
        i++;
    }
}

const char *iw_iso_time(char *buf, size_t len, uint64_t ms)
{
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    if (!gmtime_r(&t, &tm)) {
        snprintf(buf, len, "?");
        return buf;
    }
    snprintf(buf, len, "%04d-%02d-%02dT%02d:%02d:%02d.%03uZ", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (unsigned)(ms % 1000));
    return buf;
}

/* ---- -F templates ---------------------------------------------------------------------------
 * %b body (raw bytes)  %B body escaped  %f sender  %t target  %k target kind  %c class
 * %n seq  %i msg id  %T ISO-8601 time  %u time in ms since 1970  %j JSON  %%
 * \n newline  \t tab  \0 NUL  \\ backslash
 */

static const char fmt_escapes[] = "bBftkcniTuj%";

int iw_format_check(const char *fmt, char *err, size_t errlen)
{
    for (const char *p = fmt; *p; p++) {
        if (*p == '%') {
            if (!p[1] || !strchr(fmt_escapes, p[1])) {
                snprintf(err, errlen,
                         "unknown escape '%%%.1s' in -F (known: %%b %%B %%f %%t %%k "
                         "%%c %%n %%i %%T %%u %%j %%%%)",
                         p[1] ? p + 1 : "");
                return -1;
            }
            p++;
        } else if (*p == '\\') {
            if (!p[1] || !strchr("nt0\\", p[1])) {
                snprintf(err, errlen, "unknown escape '\\%.1s' in -F (known: \\n \\t \\0 \\\\)",
                         p[1] ? p + 1 : "");
                return -1;
            }
            p++;
        }
    }
    return 0;
}

int iw_format_needs_json(const char *fmt)
{
    for (const char *p = fmt; *p; p++) {
        if (*p == '%' || *p == '\\') {
            if (*p == '%' && p[1] == 'j')
                return 1;
            if (p[1])
                p++;
        }
    }
    return 0;
}

static const char *kind_name(int kind)
{
    return kind == IMP_TARGET_USER        ? "user"
           : kind == IMP_TARGET_ROOM      ? "room"
           : kind == IMP_TARGET_BROADCAST ? "broadcast"
                                          : "unknown";
}

void iw_format_message(FILE *out, const char *fmt, const imt_message *m, const char *json)
{
    char when[40];
    for (const char *p = fmt; *p; p++) {
        if (*p == '\\' && p[1]) {
            p++;
            fputc(*p == 'n' ? '\n' : *p == 't' ? '\t' : *p == '0' ? '\0' : *p, out);
            continue;
        }
        if (*p != '%' || !p[1]) {
            fputc(*p, out);
            continue;
        }
        switch (*++p) {
        case 'b':
            if (m->body.len)
                fwrite(m->body.p, 1, m->body.len, out);
            break;
        case 'B':
            iw_escape(out, m->body.p, m->body.len, 0);
            break;
        case 'f':
            fputs(m->sender, out);
            break;
        case 't':
            fputs(m->target, out);
            break;
        case 'k':
            fputs(kind_name(m->target_kind), out);
            break;
        case 'c':
            fputs(m->cls == IMP_CLASS_TRANSIENT ? "transient" : "durable", out);
            break;
        case 'n':
            fprintf(out, "%" PRIu64, m->seq);
            break;
        case 'i':
            fprintf(out, "%" PRIu64, m->msg_id);
            break;
        case 'T':
            fputs(iw_iso_time(when, sizeof when, m->timestamp), out);
            break;
        case 'u':
            fprintf(out, "%" PRIu64, m->timestamp);
            break;
        case 'j':
            fputs(json ? json : "null", out);
            break;
        default: /* '%' (the template was checked) */
            fputc(*p, out);
            break;
        }
    }
}

void iw_print_default(FILE *out, const imt_message *m)
{
    char when[40];
    fputs(iw_iso_time(when, sizeof when, m->timestamp), out);
    if (m->target_kind == IMP_TARGET_BROADCAST)
        fputs(" broadcast", out);
    else
        fprintf(out, " %s:%s", kind_name(m->target_kind), m->target);
    fprintf(out, " <%s>", m->sender);
    if (m->cls == IMP_CLASS_TRANSIENT)
        fputs(" (transient)", out);
    fputc(' ', out);
    iw_escape(out, m->body.p, m->body.len, 0);
    fputc('\n', out);
}
