/* imd — configuration: one table of keys drives ims_cfg_set, ims_cfg_dump, the range checks of
 * ims_cfg_validate and the help texts (dist/imd.conf and man/imd.conf.5 are tested against
 * it). See config.h for the file format. */
#include "config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include <sodium.h>

#define KIB 1024ull
#define MIB (1024ull * 1024)
#define GIB (1024ull * 1024 * 1024)
#define CFG_LINE_MAX 4096

/* Sizes of buffers are capped at 4 GiB (and at what size_t holds). */
#define SIZE_CAP (SIZE_MAX < 4 * GIB ? (uint64_t)SIZE_MAX : 4 * GIB)

typedef enum ims_ktype {
    K_LISTEN, /* the listen list: each set appends one address */
    K_ADDR,   /* one optional TCP address */
    K_STR,    /* a string; min = minimum length */
    K_ENUM,   /* one of choices, stored in lower case */
    K_BOOL,   /* an int, 0 or 1 */
    K_INT,    /* a plain integer */
    K_SIZE,   /* bytes, with k/m/g or KiB/MiB/GiB */
    K_DUR     /* milliseconds, with ms/s/m/h/d */
} ims_ktype;

typedef struct ims_kdef {
    const char *name;
    size_t off, width; /* the field */
    ims_ktype type;
    int is_signed;     /* numbers: the field is int or int64_t */
    uint64_t min, max; /* numbers: range; K_STR: minimum length in min */
    int reload;        /* takes effect on SIGHUP */
    const char *const *choices;
    const char *help;
} ims_kdef;

static const char *const log_levels[] = {"error", "warn", "info", "debug", NULL};
static const char *const log_formats[] = {"text", "json", NULL};
static const char *const tls_versions[] = {"1.2", "1.3", NULL};
static const char *const loop_priorities[] = {"normal", "high", "realtime", NULL};

#define FIELD(f) #f, offsetof(ims_cfg, f), sizeof(((ims_cfg *)0)->f)
#define NUM(f, type, sgn, mn, mx, rl, help)         \
    {                                               \
        FIELD(f), type, sgn, mn, mx, rl, NULL, help \
    }
#define STRK(f, type, mn, rl, ch, help)        \
    {                                          \
        FIELD(f), type, 0, mn, 0, rl, ch, help \
    }

static const ims_kdef keys[] = {
    STRK(listen, K_LISTEN, 0, 0, NULL,
         "address to accept clients on: HOST:PORT, [V6]:PORT or unix:PATH (repeat for more)"),
    STRK(metrics_listen, K_ADDR, 0, 0, NULL,
         "HOST:PORT of the Prometheus /metrics HTTP endpoint; empty = none"),
    STRK(tls_listen, K_LISTEN, 0, 0, NULL,
         "address to accept TLS clients on: HOST:PORT or [V6]:PORT (repeat for more)"),
    STRK(tls_cert, K_STR, 0, 1, NULL,
         "PEM file of the TLS certificate chain (server first); needed by tls_listen"),
    STRK(tls_key, K_STR, 0, 1, NULL, "PEM file of the TLS private key; needed by tls_listen"),
    STRK(tls_min_version, K_ENUM, 0, 1, tls_versions, "oldest TLS version accepted: 1.2 or 1.3"),
    NUM(tls_handshake_timeout_ms, K_DUR, 0, 1, UINT32_MAX, 1,
        "time a TLS client has to complete its handshake"),
    NUM(allow_insecure_listen, K_BOOL, 1, 0, 1, 0,
        "allow listen and metrics_listen without TLS on addresses other than loopback"),
    STRK(data_dir, K_STR, 1, 0, NULL, "directory of the SQLite database"),
    STRK(log_level, K_ENUM, 0, 1, log_levels,
         "least severe level logged: error, warn, info, debug"),
    STRK(log_format, K_ENUM, 0, 1, log_formats, "format of the log lines on stderr: text or json"),
    NUM(registration, K_BOOL, 1, 0, 1, 1, "let anyone create an account with REGISTER"),
    NUM(hash_opslimit, K_INT, 0, crypto_pwhash_OPSLIMIT_MIN, crypto_pwhash_OPSLIMIT_MAX, 0,
        "Argon2id passes (t) per password hash; OWASP: 2 with 19 MiB"),
    NUM(hash_memlimit, K_SIZE, 0, 8 * MIB, SIZE_CAP, 0,
        "Argon2id memory (m) per password hash, 8 MiB to 4 GiB; OWASP: 19 MiB with t = 2"),
    NUM(hash_threads, K_INT, 1, 1, 64, 0, "threads hashing passwords off the event loop"),
    NUM(hash_queue, K_INT, 1, 1, 1000000, 0,
        "password jobs queued or running at most; more are refused with BUSY"),
    NUM(loop_probe_ms, K_DUR, 0, 0, 60000, 0,
        "how often the event loop's lag is probed (STATS and /metrics loop_lag_*); 0 = off"),
    STRK(loop_priority, K_ENUM, 0, 0, loop_priorities,
         "scheduling of the event-loop thread: normal, high (nice -10) or realtime (SCHED_FIFO)"),
    NUM(busy_poll_us, K_INT, 0, 0, 100000, 0,
        "microseconds the event loop polls for more I/O before it sleeps; 0 = off"),
    NUM(token_ttl_ms, K_DUR, 0, 1000, UINT32_MAX, 1, "lifetime of a resume token"),
    NUM(max_sessions_per_user, K_INT, 1, 1, 100000, 1, "sessions one account may have at once"),
    NUM(addr_max_failures, K_INT, 1, 1, 1000, 0,
        "failed logins from one address within addr_window_ms that get it banned"),
    NUM(addr_window_ms, K_DUR, 0, 1, UINT32_MAX, 0,
        "window in which the failed logins of an address are counted"),
    NUM(addr_ban_ms, K_DUR, 0, 0, UINT32_MAX, 0, "how long a banned address is refused"),
    NUM(user_free_failures, K_INT, 1, 0, 1000000, 0,
        "failed logins of one account before its backoff starts"),
    NUM(user_backoff_ms, K_DUR, 0, 0, UINT32_MAX, 0,
        "first backoff of an account, doubled for each further failed login"),
    NUM(user_backoff_max_ms, K_DUR, 0, 0, UINT32_MAX, 0, "longest backoff of an account"),
    NUM(max_frame, K_SIZE, 0, 4096, 16 * MIB - IMS_DELIVER_GROWTH, 1,
        "largest frame accepted after login, 4 KiB to 16 MiB - 80 bytes (MAX_FRAME)"),
    NUM(max_frame_preauth, K_SIZE, 0, 1024, 16 * MIB, 1,
        "largest frame accepted before login, 1 KiB to max_frame (MAX_FRAME_PREAUTH)"),
    NUM(auth_timeout_ms, K_DUR, 0, 1, UINT32_MAX, 1, "time a new connection has to log in"),
    NUM(ping_interval_ms, K_DUR, 0, 1, UINT32_MAX, 1,
        "idle time after which the server sends PING"),
    NUM(ping_max_missed, K_INT, 0, 1, 1000, 1,
        "unanswered PINGs in a row after which the connection is closed"),
    NUM(output_soft, K_SIZE, 0, 1024, SIZE_CAP, 1,
        "queued output above which a client counts as slow (see output_soft_ms)"),
    NUM(output_soft_ms, K_DUR, 0, 0, UINT32_MAX, 1,
        "time a client may stay above output_soft before it is disconnected"),
    NUM(output_hard, K_SIZE, 0, 1024, SIZE_CAP, 1,
        "queued output that disconnects a client at once; at least output_soft + max_frame"),
    NUM(msg_rate, K_INT, 0, 0, 10000000, 1,
        "messages per second one connection may send; 0 = no limit"),
    NUM(msg_burst, K_INT, 0, 1, 100000000, 1, "messages one connection may send in a burst"),
    NUM(max_connections, K_INT, 1, 1, 10000000, 1,
        "client connections at most; more are refused with SERVER_FULL"),
    NUM(max_connections_per_addr, K_INT, 1, 1, 10000000, 1,
        "client connections from one address at most"),
    NUM(offline_quota, K_INT, 1, 1, 1000000000, 1,
        "unacknowledged messages kept for one user at most"),
    NUM(room_history, K_INT, 1, 0, 100000000, 1,
        "messages kept per room for HISTORY; 0 = no limit"),
    NUM(page_size, K_INT, 1, 1, 1000000, 1,
        "page length of WHO, MEMBERS, ROOMS and HISTORY when LIMIT is absent or 0"),
    NUM(page_max, K_INT, 1, 1, 1000000, 1, "largest LIMIT a client may ask for"),
    NUM(sync_full, K_BOOL, 1, 0, 1, 0,
        "SQLite synchronous=FULL: no acknowledged message lost on power failure"),
    NUM(startup_full_check, K_BOOL, 1, 0, 1, 0,
        "PRAGMA integrity_check at every start, not only after a crash"),
    NUM(fsync_thread, K_BOOL, 1, 0, 1, 0,
        "fsync the group commit on its own thread: ACKs still wait for it, the loop does not"),
    NUM(dedupe_window_ms, K_DUR, 0, 0, UINT32_MAX, 1,
        "how long a CLIENT_MSG_ID is remembered for retries; 0: forever"),
    NUM(shutdown_grace_ms, K_DUR, 0, 0, UINT32_MAX, 1,
        "time clients get on SIGTERM to receive what is queued before they are cut"),
};
#define NKEYS (sizeof keys / sizeof keys[0])

#if defined(__GNUC__)
__attribute__((format(printf, 3, 4)))
#endif
static void
seterr(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static const ims_kdef *find_key(const char *name)
{
    for (size_t i = 0; i < NKEYS; i++) {
        if (strcmp(keys[i].name, name) == 0)
            return &keys[i];
    }
    return NULL;
}

static char *field(ims_cfg *c, const ims_kdef *k)
{
    return (char *)c + k->off;
}

static const char *cfield(const ims_cfg *c, const ims_kdef *k)
{
    return (const char *)c + k->off;
}

/* ---- numbers ------------------------------------------------------------------------------ */

/* The value of a numeric field; *neg is set when a signed field holds a negative number (the
 * magnitude is returned then). */
static uint64_t get_num(const ims_cfg *c, const ims_kdef *k, int *neg)
{
    const char *p = cfield(c, k);
    *neg = 0;
    if (k->width == 4 && k->is_signed) {
        int32_t v;
        memcpy(&v, p, 4);
        if (v < 0) {
            *neg = 1;
            return (uint64_t)(-(int64_t)v);
        }
        return (uint64_t)v;
    }
    if (k->width == 4) {
        uint32_t v;
        memcpy(&v, p, 4);
        return v;
    }
    if (k->is_signed) {
        int64_t v;
        memcpy(&v, p, 8);
        if (v < 0) {
            *neg = 1;
            return (uint64_t)(-(v + 1)) + 1;
        }
        return (uint64_t)v;
    }
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

/* v is within the key's range, which fits the field (int fields have max <= INT_MAX): the
 * representation of a non-negative value is the same in the signed and unsigned type. */
static void put_num(ims_cfg *c, const ims_kdef *k, uint64_t v)
{
    if (k->width == 4) {
        uint32_t u = (uint32_t)v;
        memcpy(field(c, k), &u, 4);
    } else {
        memcpy(field(c, k), &v, 8);
    }
}

typedef struct ims_suffix {
    const char *s;
    uint64_t mult;
} ims_suffix;

static const ims_suffix size_suffixes[] = {
    {"", 1},      {"k", KIB}, {"K", KIB}, {"KiB", KIB}, {"m", MIB}, {"M", MIB},
    {"MiB", MIB}, {"g", GIB}, {"G", GIB}, {"GiB", GIB}, {NULL, 0},
};
static const ims_suffix dur_suffixes[] = {
    {"", 1}, {"ms", 1}, {"s", 1000}, {"m", 60000}, {"h", 3600000}, {"d", 86400000}, {NULL, 0},
};
static const ims_suffix int_suffixes[] = {{"", 1}, {NULL, 0}};

/* Writes v as ims_cfg_set reads it back: the largest unit that divides it. */
static void format_num(const ims_kdef *k, uint64_t v, char *buf, size_t len)
{
    unsigned long long u = (unsigned long long)v;
    if (k->type == K_SIZE) {
        if (v != 0 && v % GIB == 0)
            snprintf(buf, len, "%lluGiB", u / GIB);
        else if (v != 0 && v % MIB == 0)
            snprintf(buf, len, "%lluMiB", u / MIB);
        else if (v != 0 && v % KIB == 0)
            snprintf(buf, len, "%lluKiB", u / KIB);
        else
            snprintf(buf, len, "%llu", u);
    } else if (k->type == K_DUR) {
        static const ims_suffix order[] = {
            {"d", 86400000}, {"h", 3600000}, {"m", 60000}, {"s", 1000}};
        for (size_t i = 0; i < sizeof order / sizeof order[0]; i++) {
            if (v != 0 && v % order[i].mult == 0) {
                snprintf(buf, len, "%llu%s", u / order[i].mult, order[i].s);
                return;
            }
        }
        snprintf(buf, len, "%llums", u);
    } else if (k->type == K_BOOL) {
        snprintf(buf, len, "%s", v ? "yes" : "no");
    } else {
        snprintf(buf, len, "%llu", u);
    }
}

static int is_digit(char ch)
{
    return ch >= '0' && ch <= '9';
}

static int is_blank(char ch)
{
    return ch == ' ' || ch == '\t';
}

static int is_alpha(char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z');
}

static int parse_num(const ims_kdef *k, const char *v, uint64_t *out, char *err, size_t errlen)
{
    const char *what = k->type == K_SIZE  ? "a size"
                       : k->type == K_DUR ? "a duration"
                                          : "an integer";
    const ims_suffix *sfx = k->type == K_SIZE  ? size_suffixes
                            : k->type == K_DUR ? dur_suffixes
                                               : int_suffixes;
    if (!*v) {
        seterr(err, errlen, "%s: missing value", k->name);
        return -1;
    }
    if (*v == '-') {
        seterr(err, errlen, "%s: must not be negative: %s", k->name, v);
        return -1;
    }
    if (!is_digit(*v)) {
        seterr(err, errlen, "%s: not %s: %s", k->name, what, v);
        return -1;
    }
    const char *p = v;
    uint64_t n = 0;
    int overflow = 0;
    for (; is_digit(*p); p++) {
        unsigned d = (unsigned)(*p - '0');
        if (n > (UINT64_MAX - d) / 10)
            overflow = 1;
        else
            n = n * 10 + d;
    }
    /* blanks are allowed between the number and a unit: "16 MiB" */
    const char *q = p;
    while (is_blank(*q))
        q++;
    if (is_alpha(*q))
        p = q;
    uint64_t mult = 0;
    for (size_t i = 0; sfx[i].s; i++) {
        if (strcmp(p, sfx[i].s) == 0) {
            mult = sfx[i].mult;
            break;
        }
    }
    if (mult == 0) {
        seterr(err, errlen, "%s: not %s: %s", k->name, what, v);
        return -1;
    }
    if (overflow || n > UINT64_MAX / mult) {
        seterr(err, errlen, "%s: too large: %s", k->name, v);
        return -1;
    }
    n *= mult;
    if (n < k->min || n > k->max) {
        char lo[32], hi[32];
        format_num(k, k->min, lo, sizeof lo);
        format_num(k, k->max, hi, sizeof hi);
        seterr(err, errlen, "%s: out of range (%s to %s): %s", k->name, lo, hi, v);
        return -1;
    }
    *out = n;
    return 0;
}

/* ---- addresses ---------------------------------------------------------------------------- */

static int valid_hostname(const char *h)
{
    size_t label = 0;
    int only_digits = 1;
    for (const char *p = h; *p; p++) {
        char ch = *p;
        if (ch == '.') {
            if (label == 0 || p[-1] == '-')
                return 0;
            label = 0;
            continue;
        }
        if (!is_alpha(ch) && !is_digit(ch) && ch != '-')
            return 0;
        if (ch == '-' && label == 0)
            return 0;
        if (!is_digit(ch))
            only_digits = 0;
        if (++label > 63)
            return 0;
    }
    if (label > 0 && h[strlen(h) - 1] == '-')
        return 0;
    /* all digits and dots would be read as a (legacy) IPv4 number by the resolver */
    return !only_digits;
}

static int parse_addr(const char *s, ims_addr_spec *out, const char **why)
{
    memset(out, 0, sizeof *out);
    if (!*s) {
        *why = "empty";
        return -1;
    }
    if (strncmp(s, "unix:", 5) == 0) {
        const char *p = s + 5;
        size_t n = strlen(p);
        if (n == 0) {
            *why = "empty socket path";
            return -1;
        }
        if (n >= sizeof out->path) {
            *why = "socket path longer than 107 bytes";
            return -1;
        }
        for (size_t i = 0; i < n; i++) {
            if ((unsigned char)p[i] < 0x20 || p[i] == 0x7f) {
                *why = "control character in the socket path";
                return -1;
            }
        }
        out->is_unix = 1;
        memcpy(out->path, p, n + 1);
        return 0;
    }
    const char *port;
    if (*s == '[') {
        const char *rb = strchr(s, ']');
        if (!rb) {
            *why = "missing ] after an IPv6 address";
            return -1;
        }
        size_t hl = (size_t)(rb - s - 1);
        if (hl == 0 || hl >= sizeof out->host) {
            *why = "not an IPv6 address";
            return -1;
        }
        memcpy(out->host, s + 1, hl);
        out->host[hl] = 0;
        struct in6_addr a6;
        if (inet_pton(AF_INET6, out->host, &a6) != 1) {
            *why = "not an IPv6 address";
            return -1;
        }
        if (rb[1] != ':') {
            *why = "expected :PORT after ]";
            return -1;
        }
        port = rb + 2;
    } else {
        const char *colon = strrchr(s, ':');
        if (!colon) {
            *why = "expected HOST:PORT";
            return -1;
        }
        size_t hl = (size_t)(colon - s);
        if (memchr(s, ':', hl)) {
            *why = "an IPv6 address needs brackets: [ADDRESS]:PORT";
            return -1;
        }
        if (hl == 0) {
            *why = "empty host";
            return -1;
        }
        if (hl >= sizeof out->host) {
            *why = "host name longer than 63 bytes";
            return -1;
        }
        memcpy(out->host, s, hl);
        out->host[hl] = 0;
        if (strspn(out->host, "0123456789.") == hl) {
            struct in_addr a4;
            if (inet_pton(AF_INET, out->host, &a4) != 1) {
                *why = "not an IPv4 address";
                return -1;
            }
        } else if (!valid_hostname(out->host)) {
            *why = "not a host name (letters, digits, '-' and '.')";
            return -1;
        }
        port = colon + 1;
    }
    size_t pl = strlen(port);
    if (pl == 0) {
        *why = "missing port";
        return -1;
    }
    if (strspn(port, "0123456789") != pl) {
        *why = "port is not a number";
        return -1;
    }
    if (pl > 5) {
        *why = "port out of range 0..65535";
        return -1;
    }
    long v = 0;
    for (size_t i = 0; i < pl; i++)
        v = v * 10 + (port[i] - '0');
    if (v > 65535) {
        *why = "port out of range 0..65535";
        return -1;
    }
    out->port = (int)v;
    return 0;
}

/* 1 when s names one fixed address: port 0 (any free port) or a bad address never collides. */
static int fixed_addr(const char *s)
{
    ims_addr_spec a;
    const char *why;
    return parse_addr(s, &a, &why) == 0 && (a.is_unix || a.port != 0);
}

int ims_cfg_parse_addr(const char *s, ims_addr_spec *out)
{
    const char *why;
    ims_addr_spec tmp;
    int r = parse_addr(s ? s : "", &tmp, &why);
    if (out)
        *out = tmp;
    return r;
}

/* ---- set ---------------------------------------------------------------------------------- */

static int has_control(const char *s)
{
    for (; *s; s++) {
        if ((unsigned char)*s < 0x20 || *s == 0x7f)
            return 1;
    }
    return 0;
}

static void put_str(ims_cfg *c, const ims_kdef *k, const char *v)
{
    memset(field(c, k), 0, k->width);
    memcpy(field(c, k), v, strlen(v));
}

/* The two address lists (K_LISTEN keys): listen and tls_listen. */
static int is_tls_list(const ims_kdef *k)
{
    return strcmp(k->name, "tls_listen") == 0;
}

static char (*list_addrs(ims_cfg *c, const ims_kdef *k))[128]
{
    return is_tls_list(k) ? c->tls_listen : c->listen;
}

static const char (*list_caddrs(const ims_cfg *c, const ims_kdef *k))[128]
{
    return is_tls_list(k) ? c->tls_listen : c->listen;
}

static int *list_count(ims_cfg *c, const ims_kdef *k)
{
    return is_tls_list(k) ? &c->n_tls_listen : &c->n_listen;
}

static int list_ccount(const ims_cfg *c, const ims_kdef *k)
{
    return is_tls_list(k) ? c->n_tls_listen : c->n_listen;
}

static int set_listen(ims_cfg *c, const ims_kdef *k, const char *v, char *err, size_t errlen)
{
    ims_addr_spec a;
    const char *why;
    char(*list)[128] = list_addrs(c, k);
    int *n = list_count(c, k);
    if (is_tls_list(k) && !*v)
        return 0; /* `tls_listen =`: no TLS listener (the default) */
    if (parse_addr(v, &a, &why) != 0) {
        seterr(err, errlen, "%s: bad address \"%s\": %s", k->name, v, why);
        return -1;
    }
    if (is_tls_list(k) && a.is_unix) {
        seterr(err, errlen, "%s: TLS needs HOST:PORT, not a Unix socket: %s", k->name, v);
        return -1;
    }
    if (strlen(v) >= sizeof list[0]) {
        seterr(err, errlen, "%s: address too long: %s", k->name, v);
        return -1;
    }
    for (int i = 0; fixed_addr(v) && i < *n && i < IMS_MAX_LISTEN; i++) {
        if (strcmp(list[i], v) == 0) {
            seterr(err, errlen, "%s: duplicate address: %s", k->name, v);
            return -1;
        }
    }
    if (*n >= IMS_MAX_LISTEN || *n < 0) {
        seterr(err, errlen, "%s: too many addresses (at most %d)", k->name, IMS_MAX_LISTEN);
        return -1;
    }
    memset(list[*n], 0, sizeof list[0]);
    memcpy(list[*n], v, strlen(v));
    (*n)++;
    return 0;
}

static int parse_bool(const char *v, int *out)
{
    static const char *const yes[] = {"yes", "true", "on", "1"};
    static const char *const no[] = {"no", "false", "off", "0"};
    for (size_t i = 0; i < 4; i++) {
        if (strcasecmp(v, yes[i]) == 0) {
            *out = 1;
            return 0;
        }
        if (strcasecmp(v, no[i]) == 0) {
            *out = 0;
            return 0;
        }
    }
    return -1;
}

static void choice_list(const char *const *ch, char *buf, size_t len)
{
    size_t n = 0;
    buf[0] = 0;
    for (size_t i = 0; ch[i] && n < len; i++)
        n += (size_t)snprintf(buf + n, len - n, "%s%s", i ? ", " : "", ch[i]);
}

int ims_cfg_set(ims_cfg *c, const char *key, const char *value, char *err, size_t errlen)
{
    const ims_kdef *k = find_key(key ? key : "");
    if (!k) {
        seterr(err, errlen, "%s: unknown key", key ? key : "");
        return -1;
    }
    const char *v = value ? value : "";
    switch (k->type) {
    case K_LISTEN:
        return set_listen(c, k, v, err, errlen);
    case K_ADDR: {
        ims_addr_spec a;
        const char *why;
        if (*v && parse_addr(v, &a, &why) != 0) {
            seterr(err, errlen, "%s: bad address \"%s\": %s", k->name, v, why);
            return -1;
        }
        if (*v && a.is_unix) {
            seterr(err, errlen, "%s: must be HOST:PORT, not a Unix socket: %s", k->name, v);
            return -1;
        }
        if (strlen(v) >= k->width) {
            seterr(err, errlen, "%s: address too long: %s", k->name, v);
            return -1;
        }
        put_str(c, k, v);
        return 0;
    }
    case K_STR:
        if (strlen(v) < k->min) {
            seterr(err, errlen, "%s: must not be empty", k->name);
            return -1;
        }
        if (strlen(v) >= k->width) {
            seterr(err, errlen, "%s: too long (at most %zu bytes)", k->name, k->width - 1);
            return -1;
        }
        if (has_control(v)) {
            seterr(err, errlen, "%s: contains a control character", k->name);
            return -1;
        }
        put_str(c, k, v);
        return 0;
    case K_ENUM:
        for (size_t i = 0; k->choices[i]; i++) {
            if (strcasecmp(v, k->choices[i]) == 0) {
                put_str(c, k, k->choices[i]);
                return 0;
            }
        }
        {
            char list[128];
            choice_list(k->choices, list, sizeof list);
            seterr(err, errlen, "%s: must be one of %s: %s", k->name, list, v);
        }
        return -1;
    case K_BOOL: {
        int b;
        if (!*v) {
            seterr(err, errlen, "%s: missing value", k->name);
            return -1;
        }
        if (parse_bool(v, &b) != 0) {
            seterr(err, errlen, "%s: not a boolean (yes/no, true/false, on/off, 1/0): %s", k->name,
                   v);
            return -1;
        }
        put_num(c, k, (uint64_t)b);
        return 0;
    }
    case K_INT:
    case K_SIZE:
    case K_DUR: {
        uint64_t n;
        if (parse_num(k, v, &n, err, errlen) != 0)
            return -1;
        put_num(c, k, n);
        return 0;
    }
    }
    return -1;
}

/* ---- defaults, listen, keys --------------------------------------------------------------- */

void ims_cfg_default(ims_cfg *c)
{
    memset(c, 0, sizeof *c);
    strcpy(c->listen[0], "127.0.0.1:7600");
    c->n_listen = 1;
    strcpy(c->tls_min_version, "1.2");
    c->tls_handshake_timeout_ms = 5000;
    strcpy(c->data_dir, "./imd-data");
    strcpy(c->log_level, "info");
    strcpy(c->log_format, "text");
    c->registration = 1;
    c->hash_opslimit = 2; /* OWASP: Argon2id t=2, m=19 MiB, p=1 */
    c->hash_memlimit = 19 * MIB;
    c->hash_threads = 2;
    c->hash_queue = 64;
    c->loop_probe_ms = 100;
    strcpy(c->loop_priority, "normal");
    c->busy_poll_us = 0;
    c->token_ttl_ms = 30u * 24 * 3600 * 1000;
    c->max_sessions_per_user = 16;
    c->addr_max_failures = 10;
    c->addr_window_ms = 60 * 1000;
    c->addr_ban_ms = 300 * 1000;
    c->user_free_failures = 3;
    c->user_backoff_ms = 1000;
    c->user_backoff_max_ms = 60 * 1000;
    c->max_frame = 1 * MIB;
    c->max_frame_preauth = 4096;
    c->auth_timeout_ms = 10 * 1000;
    c->ping_interval_ms = 30 * 1000;
    c->ping_max_missed = 2;
    c->output_soft = 1 * MIB;
    c->output_soft_ms = 10 * 1000;
    c->output_hard = 8 * MIB;
    c->msg_rate = 10000;
    c->msg_burst = 20000;
    c->max_connections = 10000;
    c->max_connections_per_addr = 1000;
    c->offline_quota = 10000;
    c->room_history = 1000;
    c->page_size = 100;
    c->page_max = 1000;
    c->sync_full = 1;
    c->startup_full_check = 1;
    c->fsync_thread = 1;
    c->dedupe_window_ms = 24u * 3600 * 1000;
    c->shutdown_grace_ms = 5000;
}

void ims_cfg_listen_reset(ims_cfg *c)
{
    memset(c->listen, 0, sizeof c->listen);
    c->n_listen = 0;
}

void ims_cfg_tls_listen_reset(ims_cfg *c)
{
    memset(c->tls_listen, 0, sizeof c->tls_listen);
    c->n_tls_listen = 0;
}

int ims_cfg_reloadable(const char *key)
{
    const ims_kdef *k = find_key(key ? key : "");
    return k ? k->reload : -1;
}

const char *ims_cfg_key(size_t i)
{
    return i < NKEYS ? keys[i].name : NULL;
}

const char *ims_cfg_help(const char *key)
{
    const ims_kdef *k = find_key(key ? key : "");
    return k ? k->help : NULL;
}

/* ---- dump and get ------------------------------------------------------------------------- */

/* The value of a non-listen key. Strings are copied up to their field's end. */
static void value_of(const ims_cfg *c, const ims_kdef *k, char *buf, size_t len)
{
    if (k->type == K_ADDR || k->type == K_STR || k->type == K_ENUM) {
        const char *s = cfield(c, k);
        size_t n = strnlen(s, k->width);
        snprintf(buf, len, "%.*s", (int)n, s);
        return;
    }
    int neg;
    uint64_t v = get_num(c, k, &neg);
    if (neg)
        snprintf(buf, len, "-%llu", (unsigned long long)v);
    else
        format_num(k, v, buf, len);
}

void ims_cfg_dump(const ims_cfg *c, void (*line)(void *ud, const char *s), void *ud)
{
    char buf[1024], val[600];
    for (size_t i = 0; i < NKEYS; i++) {
        const ims_kdef *k = &keys[i];
        if (k->type == K_LISTEN) {
            const char(*list)[128] = list_caddrs(c, k);
            int n = list_ccount(c, k);
            for (int j = 0; j < n && j < IMS_MAX_LISTEN; j++) {
                snprintf(buf, sizeof buf, "%s = %.*s", k->name, (int)sizeof list[j], list[j]);
                line(ud, buf);
            }
            if (n <= 0) { /* tls_listen's default: none */
                snprintf(buf, sizeof buf, "%s =", k->name);
                line(ud, buf);
            }
            continue;
        }
        value_of(c, k, val, sizeof val);
        snprintf(buf, sizeof buf, "%s =%s%s", k->name, val[0] ? " " : "", val);
        line(ud, buf);
    }
}

int ims_cfg_get(const ims_cfg *c, const char *key, char *buf, size_t len)
{
    const ims_kdef *k = find_key(key ? key : "");
    if (!k)
        return -1;
    if (len == 0)
        return 0;
    if (k->type != K_LISTEN) {
        value_of(c, k, buf, len);
        return 0;
    }
    size_t n = 0;
    buf[0] = 0;
    const char(*list)[128] = list_caddrs(c, k);
    for (int j = 0; j < list_ccount(c, k) && j < IMS_MAX_LISTEN && n < len; j++)
        n += (size_t)snprintf(buf + n, len - n, "%s%.*s", j ? " " : "", (int)sizeof list[j],
                              list[j]);
    return 0;
}

/* ---- validate ----------------------------------------------------------------------------- */

static int check_key(const ims_cfg *c, const ims_kdef *k, char *err, size_t errlen)
{
    const char *why;
    ims_addr_spec a;
    if (k->type == K_LISTEN) {
        const char(*list)[128] = list_caddrs(c, k);
        int n = list_ccount(c, k);
        if (n < 1 && !is_tls_list(k)) {
            seterr(err, errlen, "%s: no address to listen on", k->name);
            return -1;
        }
        if (n < 0 || n > IMS_MAX_LISTEN) {
            seterr(err, errlen, "%s: too many addresses (%d, at most %d)", k->name, n,
                   IMS_MAX_LISTEN);
            return -1;
        }
        for (int i = 0; i < n; i++) {
            const char *s = list[i];
            if (!memchr(s, 0, sizeof list[i])) {
                seterr(err, errlen, "%s: address %d is not terminated", k->name, i + 1);
                return -1;
            }
            if (parse_addr(s, &a, &why) != 0) {
                seterr(err, errlen, "%s: bad address \"%s\": %s", k->name, s, why);
                return -1;
            }
            if (is_tls_list(k) && a.is_unix) {
                seterr(err, errlen, "%s: TLS needs HOST:PORT, not a Unix socket: %s", k->name, s);
                return -1;
            }
            for (int j = 0; fixed_addr(s) && j < i; j++) {
                if (strcmp(list[j], s) == 0) {
                    seterr(err, errlen, "%s: duplicate address: %s", k->name, s);
                    return -1;
                }
            }
        }
        return 0;
    }
    if (k->type == K_ADDR || k->type == K_STR || k->type == K_ENUM) {
        const char *s = cfield(c, k);
        if (!memchr(s, 0, k->width)) {
            seterr(err, errlen, "%s: value is not terminated", k->name);
            return -1;
        }
        /* ims_cfg_set checks all the rest; a copy gives the same message */
        ims_cfg tmp = *c;
        return ims_cfg_set(&tmp, k->name, s, err, errlen);
    }
    int neg;
    uint64_t v = get_num(c, k, &neg);
    if (neg || v < k->min || v > k->max) {
        char val[32], lo[32], hi[32];
        value_of(c, k, val, sizeof val);
        format_num(k, k->min, lo, sizeof lo);
        format_num(k, k->max, hi, sizeof hi);
        if (k->type == K_BOOL)
            seterr(err, errlen, "%s: must be 0 or 1, not %s%llu", k->name, neg ? "-" : "",
                   (unsigned long long)v);
        else
            seterr(err, errlen, "%s: out of range (%s to %s): %s", k->name, lo, hi, val);
        return -1;
    }
    return 0;
}

static int check_le(const ims_cfg *c, const char *a, const char *b, const char *why, char *err,
                    size_t errlen)
{
    const ims_kdef *ka = find_key(a), *kb = find_key(b);
    int na, nb;
    uint64_t va = get_num(c, ka, &na), vb = get_num(c, kb, &nb);
    if (va <= vb)
        return 0;
    char sa[32], sb[32];
    format_num(ka, va, sa, sizeof sa);
    format_num(kb, vb, sb, sizeof sb);
    seterr(err, errlen, "%s: %s is larger than %s (%s)%s", a, sa, b, sb, why);
    return -1;
}

int ims_cfg_validate(const ims_cfg *c, char *err, size_t errlen)
{
    for (size_t i = 0; i < NKEYS; i++) {
        if (check_key(c, &keys[i], err, errlen) != 0)
            return -1;
    }
    if (check_le(c, "max_frame_preauth", "max_frame", "", err, errlen) != 0 ||
        check_le(c, "output_soft", "output_hard", "", err, errlen) != 0 ||
        check_le(c, "page_size", "page_max", "", err, errlen) != 0 ||
        check_le(c, "user_backoff_ms", "user_backoff_max_ms", "", err, errlen) != 0)
        return -1;
    if ((uint64_t)c->output_hard < c->max_frame) {
        char sh[32], sf[32];
        format_num(find_key("output_hard"), c->output_hard, sh, sizeof sh);
        format_num(find_key("max_frame"), c->max_frame, sf, sizeof sf);
        seterr(err, errlen, "output_hard: %s is smaller than max_frame (%s): a frame must fit", sh,
               sf);
        return -1;
    }
    /* Issue 3: imd queues the next DELIVER or HISTORY_ITEM while the output is at most
     * output_soft (deliver.c, rooms.c) and cuts a session when a frame would take it over
     * output_hard (server.c). Below output_soft + max_frame, one message of the largest size
     * accepted would cut a client that reads as fast as it can. (Strictly, a DELIVER can be
     * IMS_DELIVER_GROWTH bytes larger than max_frame; that slack is not required here, so the
     * configurations in use with output_hard = output_soft + max_frame stay valid.) */
    uint64_t need = (uint64_t)c->output_soft + c->max_frame;
    if ((uint64_t)c->output_hard < need) {
        char sh[32], ss[32], sf[32], sn[32];
        const ims_kdef *kh = find_key("output_hard");
        format_num(kh, c->output_hard, sh, sizeof sh);
        format_num(kh, c->output_soft, ss, sizeof ss);
        format_num(kh, c->max_frame, sf, sizeof sf);
        format_num(kh, need, sn, sizeof sn);
        seterr(err, errlen,
               "output_hard: %s is less than output_soft (%s) + max_frame (%s) = %s: one "
               "message of max_frame queued at output_soft would cut the client at once",
               sh, ss, sf, sn);
        return -1;
    }
    for (int i = 0; fixed_addr(c->metrics_listen) && i < c->n_listen; i++) {
        if (strcmp(c->listen[i], c->metrics_listen) == 0) {
            seterr(err, errlen, "metrics_listen: also a client listen address: %s",
                   c->metrics_listen);
            return -1;
        }
    }
    if (c->busy_poll_us > 0 && strcmp(c->loop_priority, "realtime") == 0) {
        /* measured (bench/run-imd latency): a SCHED_FIFO loop that polls keeps its CPU from the
         * kernel's per-CPU work and every other thread there until real-time throttling, p99
         * 30-86 ms instead of 0.1-0.6 ms */
        seterr(err, errlen,
               "busy_poll_us: %u with loop_priority = realtime: a real-time thread that polls "
               "starves everything else on its CPU; use one or the other",
               (unsigned)c->busy_poll_us);
        return -1;
    }
    if (c->n_tls_listen > 0 && !c->tls_cert[0]) {
        seterr(err, errlen, "tls_cert: required by tls_listen (a PEM certificate chain)");
        return -1;
    }
    if (c->n_tls_listen > 0 && !c->tls_key[0]) {
        seterr(err, errlen, "tls_key: required by tls_listen (a PEM private key)");
        return -1;
    }
    for (int i = 0; i < c->n_tls_listen; i++) {
        const char *t = c->tls_listen[i];
        if (!fixed_addr(t))
            continue;
        for (int j = 0; j < c->n_listen; j++) {
            if (strcmp(c->listen[j], t) == 0) {
                seterr(err, errlen, "tls_listen: also a plain listen address: %s", t);
                return -1;
            }
        }
        if (strcmp(c->metrics_listen, t) == 0) {
            seterr(err, errlen, "metrics_listen: also a TLS listen address: %s", t);
            return -1;
        }
    }
    return 0;
}

/* ---- safe listening defaults ---------------------------------------------------------------- */

static int sa_loopback(const struct sockaddr *sa)
{
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)(const void *)sa;
        return (ntohl(in->sin_addr.s_addr) >> 24) == 127;
    }
    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)(const void *)sa;
        const uint8_t *b = in6->sin6_addr.s6_addr;
        if (IN6_IS_ADDR_LOOPBACK(&in6->sin6_addr))
            return 1;
        return IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr) && b[12] == 127; /* ::ffff:127.x.y.z */
    }
    return 0;
}

/* 1 if every address host stands for is loopback, 0 if one is not, -1 (why in *gai) when the
 * name does not resolve. Literals never reach the resolver (AI_NUMERICHOST first). */
static int host_loopback(const char *host, int *gai)
{
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICHOST;
    int r = getaddrinfo(host, NULL, &hints, &res);
    if (r != 0) {
        hints.ai_flags = 0;
        r = getaddrinfo(host, NULL, &hints, &res);
    }
    if (r != 0) {
        *gai = r;
        return -1;
    }
    int all = res != NULL;
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next)
        if (!sa_loopback(ai->ai_addr))
            all = 0;
    freeaddrinfo(res);
    return all;
}

/* 0 when spec is a Unix socket or loopback; else -1 (or 1 when allowed) with the message. */
static int check_plain_addr(const ims_cfg *c, const char *key, const char *spec, char *err,
                            size_t errlen)
{
    ims_addr_spec a;
    const char *why;
    if (parse_addr(spec, &a, &why) != 0 || a.is_unix)
        return 0; /* bad addresses are ims_cfg_validate's; Unix sockets are local */
    int gai = 0;
    int lo = host_loopback(a.host, &gai);
    if (lo == 1)
        return 0;
    int metrics = strcmp(key, "metrics_listen") == 0;
    char what[160];
    if (lo < 0)
        snprintf(what, sizeof what, "cannot resolve %s (%s), so not known to be loopback", a.host,
                 gai_strerror(gai));
    else
        snprintf(what, sizeof what, "not a loopback address and %s",
                 metrics ? "/metrics has no TLS" : "not TLS");
    if (c->allow_insecure_listen) {
        seterr(err, errlen, "%s %s: %s (allowed by allow_insecure_listen)", key, spec, what);
        return 1;
    }
    seterr(err, errlen, "%s %s: %s: %sset allow_insecure_listen = yes", key, spec, what,
           metrics ? "" : "use tls_listen, or ");
    return -1;
}

int ims_cfg_check_listen_safety(const ims_cfg *c, char *err, size_t errlen)
{
    int rc = 0, n = c->n_listen < IMS_MAX_LISTEN ? c->n_listen : IMS_MAX_LISTEN;
    char msg[512], first[512] = "";
    for (int i = 0; i <= n; i++) {
        const char *key = i < n ? "listen" : "metrics_listen";
        const char *spec = i < n ? c->listen[i] : c->metrics_listen;
        if (!spec[0])
            continue;
        int r = check_plain_addr(c, key, spec, msg, sizeof msg);
        if (r < 0) {
            seterr(err, errlen, "%s", msg);
            return -1;
        }
        if (r > 0 && rc == 0) {
            rc = 1;
            snprintf(first, sizeof first, "%s", msg);
        }
    }
    if (rc)
        seterr(err, errlen, "%s", first);
    return rc;
}

/* ---- files -------------------------------------------------------------------------------- */

static char *trim(char *s)
{
    while (is_blank(*s))
        s++;
    size_t n = strlen(s);
    while (n > 0 && is_blank(s[n - 1]))
        s[--n] = 0;
    return s;
}

/* One line (without its end). seen_listen[0]: a listen line came before in this file;
 * seen_listen[1]: a tls_listen line did. */
static int apply_line(ims_cfg *c, char *line, int seen_listen[2], char *err, size_t errlen)
{
    char *s = trim(line);
    if (!*s || *s == '#' || *s == ';')
        return 0;
    if (*s == '[') {
        if (s[strlen(s) - 1] != ']') {
            seterr(err, errlen, "section header: expected [name]: %s", s);
            return -1;
        }
        return 0;
    }
    char *eq = strchr(s, '=');
    if (!eq) {
        seterr(err, errlen, "expected key = value: %s", s);
        return -1;
    }
    *eq = 0;
    char *key = trim(s), *value = trim(eq + 1);
    if (!*key) {
        seterr(err, errlen, "missing key before =");
        return -1;
    }
    if (strcmp(key, "listen") == 0 && !seen_listen[0]) {
        ims_cfg_listen_reset(c);
        seen_listen[0] = 1;
    }
    if (strcmp(key, "tls_listen") == 0 && !seen_listen[1]) {
        ims_cfg_tls_listen_reset(c);
        seen_listen[1] = 1;
    }
    return ims_cfg_set(c, key, value, err, errlen);
}

int ims_cfg_load_file(ims_cfg *c, const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        seterr(err, errlen, "%s: %s", path, strerror(errno));
        return -1;
    }
    ims_cfg tmp = *c;
    static const char bom[] = "\xef\xbb\xbf";
    char line[CFG_LINE_MAX + 2]; /* the line, a CR, the NUL */
    char msg[512];
    int lineno = 0, seen_listen[2] = {0, 0}, rc = 0;
    for (;;) {
        size_t n = 0;
        int ch, over = 0, nul = 0;
        while ((ch = getc(f)) != EOF && ch != '\n') {
            if (ch == 0)
                nul = 1;
            if (n < sizeof line - 1)
                line[n++] = (char)ch;
            else
                over = 1;
        }
        if (ch == EOF && ferror(f)) {
            seterr(err, errlen, "%s:%d: %s", path, lineno + 1, strerror(errno));
            rc = -1;
            break;
        }
        if (ch == EOF && n == 0 && !over)
            break;
        lineno++;
        if (n > 0 && line[n - 1] == '\r')
            n--;
        if (over || n > CFG_LINE_MAX) {
            seterr(err, errlen, "%s:%d: line too long (more than %d bytes)", path, lineno,
                   CFG_LINE_MAX);
            rc = -1;
            break;
        }
        line[n] = 0;
        if (nul) {
            seterr(err, errlen, "%s:%d: contains a NUL byte", path, lineno);
            rc = -1;
            break;
        }
        char *s = line;
        if (lineno == 1 && strncmp(s, bom, 3) == 0)
            s += 3;
        if (apply_line(&tmp, s, seen_listen, msg, sizeof msg) != 0) {
            seterr(err, errlen, "%s:%d: %s", path, lineno, msg);
            rc = -1;
            break;
        }
        if (ch == EOF)
            break;
    }
    fclose(f);
    if (rc == 0)
        *c = tmp;
    return rc;
}
