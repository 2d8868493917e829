/* imwatch --decode: a raw IMP byte stream (a capture, a test vector, a fuzz input) printed
 * frame by frame, with every field by name and errors at their byte offset.
 *
 * Resynchronisation: IMP frames carry no sync marker, so after a bad header (BAD_VERSION,
 * UNKNOWN_TYPE, RESERVED_FLAGS, FRAME_TOO_LARGE) nothing says where the next frame starts: the
 * decoder stops there (exit 7). A payload error leaves the header's length intact, so the frame
 * boundaries are still known: the error is shown and decoding goes on with the next frame (the
 * exit status is still 7). A stream that ends inside a frame is reported and ends with 7.
 */
#include "imwatch.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "imt_json.h"

#define CHUNK 65536

static uint16_t get16(const uint8_t *p)
{
    return (uint16_t)((unsigned)p[0] << 8 | p[1]);
}

static uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static uint64_t get64(const uint8_t *p)
{
    return (uint64_t)get32(p) << 32 | get32(p + 4);
}

static const char *enum_name(unsigned tag, uint64_t v)
{
    static const char *const kinds[] = {NULL, "user", "room", "broadcast"};
    static const char *const classes[] = {"durable", "transient"};
    static const char *const acks[] = {"none", "stored", "delivered"};
    static const char *const outcomes[] = {NULL, "stored", "delivered", "refused"};
    static const char *const statuses[] = {"offline", "online", "away", "busy"};
    switch (tag) {
    case IMP_T_TARGET_KIND:
        return v < 4 ? kinds[v] : NULL;
    case IMP_T_CLASS:
        return v < 2 ? classes[v] : NULL;
    case IMP_T_ACK_MODE:
        return v < 3 ? acks[v] : NULL;
    case IMP_T_OUTCOME:
        return v < 4 ? outcomes[v] : NULL;
    case IMP_T_STATUS:
        return v < 4 ? statuses[v] : NULL;
    default:
        return NULL;
    }
}

static void print_hex(FILE *out, const uint8_t *p, size_t len)
{
    for (size_t i = 0; i < len; i++)
        fprintf(out, "%02x", p[i]);
}

static void print_int(FILE *out, unsigned tag, imp_kind kind, uint64_t v)
{
    char when[40];
    fprintf(out, "%" PRIu64, v);
    switch (tag) {
    case IMP_T_CODE: {
        const char *n = imp_err_name((int)v);
        fprintf(out, " (%s)", n ? n : "unknown code");
        return;
    }
    case IMP_T_TIMESTAMP:
    case IMP_T_SERVER_TIME:
        fprintf(out, " (%s)", iw_iso_time(when, sizeof when, v));
        return;
    case IMP_T_PING_INTERVAL:
    case IMP_T_AUTH_TIMEOUT:
    case IMP_T_RETRY_AFTER:
        fputs(" ms", out);
        return;
    default:
        break;
    }
    if (kind == IMP_K_BOOL)
        fputs(v ? " (true)" : " (false)", out);
    else if (kind == IMP_K_ENUM && enum_name(tag, v))
        fprintf(out, " (%s)", enum_name(tag, v));
}

/* One defined field of a frame that decoded: its value, lists one entry per line. */
static void print_value(FILE *out, unsigned tag, const uint8_t *p, size_t len, int verbose)
{
    imp_kind kind = imp_tag_kind(tag);
    imp_bytes rest = {p, len}, a, b;
    uint64_t v;
    unsigned n = 0;
    switch (kind) {
    case IMP_K_U16:
    case IMP_K_U32:
    case IMP_K_U64:
    case IMP_K_BOOL:
    case IMP_K_ENUM:
        v = len == 1 ? p[0] : len == 2 ? get16(p) : len == 4 ? get32(p) : get64(p);
        print_int(out, tag, kind, v);
        fputc('\n', out);
        return;
    case IMP_K_TEXT:
    case IMP_K_NAME:
        fputc('"', out);
        iw_escape(out, p, len, 1);
        fputs("\"\n", out);
        return;
    case IMP_K_BYTES:
        if (tag == IMP_T_PASSWORD && !verbose) {
            fprintf(out, "(%zu bytes, hidden; -v shows them)\n", len);
        } else if (tag == IMP_T_TOKEN || tag == IMP_T_CURSOR) {
            fprintf(out, "(%zu bytes) ", len);
            print_hex(out, p, len);
            fputc('\n', out);
        } else {
            fprintf(out, "(%zu bytes) \"", len);
            iw_escape(out, p, len, 1);
            fputs("\"\n", out);
        }
        return;
    case IMP_K_NAMES:
        while (imp_names_next(&rest, &a) > 0)
            n++;
        fprintf(out, "%u %s\n", n, n == 1 ? "name" : "names");
        rest.p = p;
        rest.len = len;
        while (imp_names_next(&rest, &a) > 0) {
            fputs("      ", out);
            iw_escape(out, a.p, a.len, 0);
            fputc('\n', out);
        }
        return;
    case IMP_K_HEADERS:
        while (imp_headers_next(&rest, &a, &b) > 0)
            n++;
        fprintf(out, "%u %s\n", n, n == 1 ? "header" : "headers");
        rest.p = p;
        rest.len = len;
        while (imp_headers_next(&rest, &a, &b) > 0) {
            fputs("      ", out);
            iw_escape(out, a.p, a.len, 0);
            fputs(": \"", out);
            iw_escape(out, b.p, b.len, 1);
            fputs("\"\n", out);
        }
        return;
    case IMP_K_STATS:
        while (imp_stats_next(&rest, &a, &v) > 0)
            n++;
        fprintf(out, "%u %s\n", n, n == 1 ? "counter" : "counters");
        rest.p = p;
        rest.len = len;
        while (imp_stats_next(&rest, &a, &v) > 0) {
            fputs("      ", out);
            iw_escape(out, a.p, a.len, 0);
            fprintf(out, " = %" PRIu64 "\n", v);
        }
        return;
    }
    fprintf(out, "(%zu bytes)\n", len);
}

/* A field printed without interpretation (unknown, or at/after an error). */
static void print_raw_field(FILE *out, size_t off, unsigned tag, const uint8_t *p, size_t len,
                            const char *note)
{
    const char *name = imp_tag_name(tag);
    fprintf(out, "  @%zu %s (%u) %s: %zu bytes", off, name ? name : "tag", tag, note, len);
    if (len) {
        fputc(' ', out);
        print_hex(out, p, len < 32 ? len : 32);
        if (len > 32)
            fputs("...", out);
    }
    fputc('\n', out);
}

static void report(FILE *out, size_t off, int err, const char *what)
{
    const char *name = imp_err_name(err);
    fprintf(out, "  ! offset %zu: %s (%d): %s%s%s\n", off, name ? name : "ERROR", -err,
            imp_strerror(err), what ? ": " : "", what ? what : "");
    fprintf(stderr, "imwatch: offset %zu: %s (%d): %s%s%s\n", off, name ? name : "ERROR", -err,
            imp_strerror(err), what ? ": " : "", what ? what : "");
}

/* Does the payload prefix of plen bytes decode with err? */
static int prefix_fails(const imp_frame *f, size_t plen, int err)
{
    imp_frame pf = *f;
    imp_msg m;
    pf.length = (uint32_t)plen;
    return imp_msg_decode(&pf, &m) == err;
}

/* The field that makes imp_msg_decode fail with err, found by decoding prefixes of the payload
 * that end at field boundaries: decode reports the first failing field in order, so every
 * prefix that contains the culprit fails with err and none before it does; a binary search
 * over the boundaries finds it (a frame may hold millions of small fields). MISSING_FIELD
 * belongs to the frame as a whole. Returns the field index with *field_off its payload
 * offset, or -1. */
static long culprit(const imp_frame *f, int err, size_t *field_off)
{
    size_t pos = 0, n = 0, cap = 0;
    size_t *starts = NULL;
    long found = -1;
    int truncated = 0;
    while (pos < f->length) {
        if (n == cap) {
            size_t ncap = cap ? cap * 2 : 64;
            size_t *ns = realloc(starts, (ncap + 1) * sizeof *ns);
            if (!ns) {
                free(starts);
                return -1;
            }
            starts = ns;
            cap = ncap;
        }
        starts[n] = pos;
        if (f->length - pos < 6 || get32(f->payload + pos + 2) > f->length - pos - 6) {
            truncated = 1; /* field n is cut off: it is not a boundary */
            break;
        }
        pos += 6 + (size_t)get32(f->payload + pos + 2);
        n++;
    }
    if (!starts)
        return -1;
    starts[n] = pos; /* end of the last complete field */
    if (err == IMP_ERR_TRUNCATED) {
        if (truncated) {
            *field_off = starts[n];
            found = (long)n;
        }
    } else if (err != IMP_ERR_MISSING_FIELD && n > 0 && prefix_fails(f, starts[n], err)) {
        size_t lo = 0, hi = n - 1; /* the culprit is in [lo, hi] */
        while (lo < hi) {
            size_t mid = lo + (hi - lo) / 2;
            if (prefix_fails(f, starts[mid + 1], err))
                hi = mid;
            else
                lo = mid + 1;
        }
        *field_off = starts[lo];
        found = (long)lo;
    }
    free(starts);
    return found;
}

/* ---- --json: one object per frame ---------------------------------------------------------
 * {"v":1,"type":"frame","offset":N,"frame":"SEND","frame_type":16,"req":7,"length":24,
 *  "fields":[{"offset":N,"tag":17,"name":"TARGET_KIND","len":1,"value":1,"label":"user"},...],
 *  "error":{"offset":N,"code":712,"code_name":"FIELD_ORDER","text":"...","stop":false}}
 * Values: integers as numbers (enums, bools and CODE with a "label"); text and names as
 * strings; bytes as a string with "enc" utf8 or base64 (PASSWORD: "hidden":true unless -v);
 * names as an array, headers and stats as objects. Fields IMP/1 does not define for the type
 * have "skipped":true and their bytes in base64. A frame with an error lists the fields
 * before the culprit. */

static void json_field_value(imt_json *j, unsigned tag, const uint8_t *p, size_t len, int verbose)
{
    imp_kind kind = imp_tag_kind(tag);
    imp_bytes rest = {p, len}, a, b;
    uint64_t v;
    char key[IMP_HEADER_KEY_MAX + IMP_STAT_NAME_MAX + 2];
    switch (kind) {
    case IMP_K_U16:
    case IMP_K_U32:
    case IMP_K_U64:
    case IMP_K_BOOL:
    case IMP_K_ENUM:
        v = len == 1 ? p[0] : len == 2 ? get16(p) : len == 4 ? get32(p) : get64(p);
        imt_json_key(j, "value");
        imt_json_u64(j, v);
        if (tag == IMP_T_CODE && imp_err_name((int)v)) {
            imt_json_key(j, "label");
            imt_json_str(j, imp_err_name((int)v));
        } else if (kind == IMP_K_BOOL || (kind == IMP_K_ENUM && enum_name(tag, v))) {
            imt_json_key(j, "label");
            imt_json_str(j, kind == IMP_K_BOOL ? (v ? "true" : "false") : enum_name(tag, v));
        }
        return;
    case IMP_K_TEXT:
    case IMP_K_NAME:
        imt_json_key(j, "value");
        imt_json_strn(j, p, len);
        return;
    case IMP_K_NAMES:
        imt_json_key(j, "value");
        imt_json_arr_begin(j);
        while (imp_names_next(&rest, &a) > 0)
            imt_json_strn(j, a.p, a.len);
        imt_json_arr_end(j);
        return;
    case IMP_K_HEADERS:
        imt_json_key(j, "value");
        imt_json_obj_begin(j);
        while (imp_headers_next(&rest, &a, &b) > 0) {
            snprintf(key, sizeof key, "%.*s", (int)a.len, (const char *)a.p);
            imt_json_key(j, key);
            imt_json_strn(j, b.p, b.len);
        }
        imt_json_obj_end(j);
        return;
    case IMP_K_STATS:
        imt_json_key(j, "value");
        imt_json_obj_begin(j);
        while (imp_stats_next(&rest, &a, &v) > 0) {
            snprintf(key, sizeof key, "%.*s", (int)a.len, (const char *)a.p);
            imt_json_key(j, key);
            imt_json_u64(j, v);
        }
        imt_json_obj_end(j);
        return;
    case IMP_K_BYTES:
    default:
        if (tag == IMP_T_PASSWORD && !verbose) {
            imt_json_key(j, "hidden");
            imt_json_bool(j, 1);
            return;
        }
        imt_json_key(j, "value");
        if (imp_utf8_valid(p, len)) {
            imt_json_strn(j, p, len);
            imt_json_key(j, "enc");
            imt_json_str(j, "utf8");
        } else {
            imt_json_base64(j, p, len);
            imt_json_key(j, "enc");
            imt_json_str(j, "base64");
        }
        return;
    }
}

static void json_error(imt_json *j, size_t off, int err, int stop)
{
    const char *name = imp_err_name(err);
    imt_json_key(j, "error");
    imt_json_obj_begin(j);
    imt_json_key(j, "offset");
    imt_json_u64(j, off);
    imt_json_key(j, "code");
    imt_json_i64(j, -err);
    if (name) {
        imt_json_key(j, "code_name");
        imt_json_str(j, name);
    }
    imt_json_key(j, "text");
    imt_json_str(j, imp_strerror(err));
    imt_json_key(j, "stop");
    imt_json_bool(j, stop);
    imt_json_obj_end(j);
}

static void json_head(imt_json *j, size_t off)
{
    imt_json_reset(j);
    imt_json_obj_begin(j);
    imt_json_key(j, "v");
    imt_json_u64(j, IMT_JSON_SCHEMA_VERSION);
    imt_json_key(j, "type");
    imt_json_str(j, "frame");
    imt_json_key(j, "offset");
    imt_json_u64(j, off);
}

/* The JSON twin of print_frame. */
static int json_frame(imt_json *j, FILE *out, size_t base, const imp_frame *f, int verbose)
{
    imp_msg m;
    int err = imp_msg_decode(f, &m);
    size_t bad_off = 0;
    long bad = err ? culprit(f, err, &bad_off) : -1;
    uint64_t allowed = imp_type_allowed(f->type);
    json_head(j, base);
    imt_json_key(j, "frame");
    imt_json_str(j, imp_type_name(f->type));
    imt_json_key(j, "frame_type");
    imt_json_u64(j, f->type);
    imt_json_key(j, "req");
    imt_json_u64(j, f->request_id);
    imt_json_key(j, "length");
    imt_json_u64(j, f->length);
    imt_json_key(j, "fields");
    imt_json_arr_begin(j);
    size_t pos = 0;
    long i = 0;
    /* Up to the culprit (or, for a frame-level error, every field: all passed their checks). */
    while (pos < f->length && i != bad && f->length - pos >= 6) {
        unsigned tag = get16(f->payload + pos);
        uint32_t len = get32(f->payload + pos + 2);
        if (len > f->length - pos - 6)
            break;
        const uint8_t *val = f->payload + pos + 6;
        const char *name = imp_tag_name(tag);
        int known = tag <= IMP_TAG_MAX && ((allowed >> tag) & 1u);
        imt_json_obj_begin(j);
        imt_json_key(j, "offset");
        imt_json_u64(j, base + IMP_HEADER_SIZE + pos);
        imt_json_key(j, "tag");
        imt_json_u64(j, tag);
        if (name) {
            imt_json_key(j, "name");
            imt_json_str(j, name);
        }
        imt_json_key(j, "len");
        imt_json_u64(j, len);
        if (known) {
            json_field_value(j, tag, val, len, verbose);
        } else {
            imt_json_key(j, "skipped");
            imt_json_bool(j, 1);
            imt_json_key(j, "value");
            imt_json_base64(j, val, len);
            imt_json_key(j, "enc");
            imt_json_str(j, "base64");
        }
        imt_json_obj_end(j);
        pos += 6 + (size_t)len;
        i++;
    }
    imt_json_arr_end(j);
    if (err) {
        const char *name = imp_err_name(err);
        size_t at = bad >= 0 ? base + IMP_HEADER_SIZE + bad_off : base;
        json_error(j, at, err, 0);
        fprintf(stderr, "imwatch: offset %zu: %s (%d): %s\n", at, name ? name : "ERROR", -err,
                imp_strerror(err));
    }
    imt_json_obj_end(j);
    imt_json_emit(j, out);
    return err ? 1 : 0;
}

/* Print a frame whose header was valid. Returns 0, or 1 when its payload was malformed. */
static int print_frame(FILE *out, size_t base, const imp_frame *f, int verbose)
{
    imp_msg m;
    int err = imp_msg_decode(f, &m);
    size_t bad_off = 0;
    long bad = err ? culprit(f, err, &bad_off) : -1;
    fprintf(out, "offset %zu: %s (0x%02x) request %" PRIu32 ", %" PRIu32 " bytes payload\n", base,
            imp_type_name(f->type), f->type, f->request_id, f->length);
    uint64_t allowed = imp_type_allowed(f->type);
    size_t pos = 0;
    long i = 0;
    while (pos < f->length) {
        size_t off = base + IMP_HEADER_SIZE + pos;
        if (i == bad) {
            report(out, off, err, NULL);
            size_t left = f->length - pos;
            if (left >= 6) {
                uint32_t len = get32(f->payload + pos + 2);
                print_raw_field(out, off, get16(f->payload + pos), f->payload + pos + 6,
                                len > left - 6 ? left - 6 : len, "(rejected)");
            }
            return 1;
        }
        if (f->length - pos < 6 || get32(f->payload + pos + 2) > f->length - pos - 6)
            break; /* cut off (only when the culprit could not be located) */
        unsigned tag = get16(f->payload + pos);
        uint32_t len = get32(f->payload + pos + 2);
        const uint8_t *val = f->payload + pos + 6;
        pos += 6 + (size_t)len;
        i++;
        if (tag > IMP_TAG_MAX || !((allowed >> tag) & 1u)) {
            print_raw_field(out, off, tag, val, len, "unknown, skipped");
            continue;
        }
        /* Every field before the culprit passed the per-field checks. */
        fprintf(out, "  %s = ", imp_tag_name(tag));
        print_value(out, tag, val, len, verbose);
    }
    if (err) {
        report(out, base, err, "the frame as a whole");
        return 1;
    }
    return 0;
}

/* --hex: the whole input as text (hex digit pairs; white space and '#' comments to the end
 * of a line ignored) converted to bytes, read back through a memory stream. NULL on error
 * (message printed). */
static FILE *hex_input(FILE *in, const char *name, uint8_t **bytes)
{
    size_t cap = 4096, n = 0, line = 1;
    uint8_t *b = malloc(cap);
    int hi = -1, c;
    while (b && (c = getc(in)) != EOF) {
        if (c == '#') {
            while ((c = getc(in)) != EOF && c != '\n')
                ;
        }
        if (c == '\n')
            line++;
        if (c == EOF || c == ' ' || c == '\t' || c == '\r' || c == '\n')
            continue;
        int v = c >= '0' && c <= '9'   ? c - '0'
                : c >= 'a' && c <= 'f' ? c - 'a' + 10
                : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                       : -1;
        if (v < 0) {
            fprintf(stderr, "imwatch: %s:%zu: '%c' is not a hex digit\n", name, line, c);
            free(b);
            return NULL;
        }
        if (hi < 0) {
            hi = v;
            continue;
        }
        if (n == cap) {
            uint8_t *nb = realloc(b, cap * 2);
            if (!nb)
                break;
            b = nb;
            cap *= 2;
        }
        b[n++] = (uint8_t)(hi << 4 | v);
        hi = -1;
    }
    if (!b || c != EOF) {
        fprintf(stderr, "imwatch: out of memory\n");
        free(b);
        return NULL;
    }
    if (hi >= 0) {
        fprintf(stderr, "imwatch: %s: an odd number of hex digits\n", name);
        free(b);
        return NULL;
    }
    FILE *f = n ? fmemopen(b, n, "rb") : fopen("/dev/null", "rb");
    if (!f) {
        fprintf(stderr, "imwatch: %s: %s\n", name, strerror(errno));
        free(b);
        return NULL;
    }
    *bytes = b;
    return f;
}

int iw_decode(const char *path, FILE *out, int verbose, int hex, int quiet, int json)
{
    FILE *in = stdin;
    uint8_t *hexbytes = NULL;
    if (path && strcmp(path, "-") != 0) {
        in = fopen(path, "rb");
        if (!in) {
            fprintf(stderr, "imwatch: %s: %s\n", path, strerror(errno));
            return IW_EXIT_USAGE;
        }
    }
    if (hex) {
        FILE *h = hex_input(in, in == stdin ? "stdin" : path, &hexbytes);
        if (in != stdin)
            fclose(in);
        if (!h)
            return IW_EXIT_USAGE;
        in = h;
    }
    uint8_t *buf = NULL;
    size_t len = 0, cap = 0, base = 0; /* base: stream offset of buf[0] */
    size_t frames = 0, bad = 0;
    int status = IW_EXIT_OK, eof = 0;
    imt_json j;
    imt_json_init(&j);
    while (!eof || len > 0) {
        if (!eof) {
            if (cap - len < CHUNK) {
                size_t ncap = cap ? cap * 2 : CHUNK * 2;
                uint8_t *nb = realloc(buf, ncap);
                if (!nb) {
                    fprintf(stderr, "imwatch: out of memory\n");
                    status = IW_EXIT_USAGE;
                    break;
                }
                buf = nb;
                cap = ncap;
            }
            size_t n = fread(buf + len, 1, cap - len, in);
            if (n == 0) {
                if (ferror(in)) {
                    fprintf(stderr, "imwatch: read: %s\n", strerror(errno));
                    status = IW_EXIT_USAGE;
                    break;
                }
                eof = 1;
            }
            len += n;
        }
        size_t pos = 0;
        int stop = 0;
        while (pos < len) {
            imp_frame f;
            size_t need = 0;
            imp_ssize r = imp_frame_parse(buf + pos, len - pos, 0, &f, &need);
            if (r < 0) {
                /* Point at the header byte that failed: IMP-FRAME-006's order. */
                size_t at = r == IMP_ERR_UNKNOWN_TYPE      ? 1
                            : r == IMP_ERR_RESERVED_FLAGS  ? 2
                            : r == IMP_ERR_FRAME_TOO_LARGE ? 4
                                                           : 0;
                if (json) {
                    json_head(&j, base + pos);
                    json_error(&j, base + pos + at, (int)r, 1);
                    imt_json_obj_end(&j);
                    imt_json_emit(&j, out);
                    fprintf(stderr, "imwatch: offset %zu: %s (%d): cannot resynchronise\n",
                            base + pos + at, imp_err_name((int)r), (int)-r);
                } else {
                    fprintf(out, "offset %zu: bad frame header\n", base + pos);
                    report(out, base + pos + at, (int)r, "cannot resynchronise, stopping");
                }
                bad++;
                status = IW_EXIT_LOST;
                stop = 1;
                break;
            }
            if (r == 0) {
                if (eof && json) {
                    json_head(&j, base + pos);
                    imt_json_key(&j, "incomplete");
                    imt_json_bool(&j, 1);
                    imt_json_key(&j, "have");
                    imt_json_u64(&j, len - pos);
                    imt_json_key(&j, "need");
                    imt_json_u64(&j, need);
                    imt_json_obj_end(&j);
                    imt_json_emit(&j, out);
                } else if (eof) {
                    fprintf(out, "offset %zu: incomplete frame\n", base + pos);
                    fprintf(out,
                            "  ! offset %zu: end of stream inside the frame at offset %zu (%zu "
                            "bytes, %zu more needed)\n",
                            base + len, base + pos, len - pos, need);
                }
                if (eof) {
                    fprintf(stderr,
                            "imwatch: offset %zu: end of stream inside the frame at offset %zu\n",
                            base + len, base + pos);
                    bad++;
                    status = IW_EXIT_LOST;
                    stop = 1;
                }
                break;
            }
            frames++;
            if (json ? json_frame(&j, out, base + pos, &f, verbose)
                     : print_frame(out, base + pos, &f, verbose)) {
                bad++;
                status = IW_EXIT_LOST;
            }
            pos += (size_t)r;
        }
        if (stop)
            break;
        memmove(buf, buf + pos, len - pos);
        len -= pos;
        base += pos;
        if (eof && len == 0)
            break;
    }
    fflush(out);
    if (!quiet)
        fprintf(stderr, "imwatch: %zu %s decoded, %zu malformed\n", frames,
                frames == 1 ? "frame" : "frames", bad);
    free(buf);
    if (in != stdin)
        fclose(in);
    free(hexbytes);
    imt_json_free(&j);
    return status;
}
