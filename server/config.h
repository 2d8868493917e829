/* imd — configuration: defaults, the INI-style file (imd.conf(5)), command-line flags.
 *
 * Keys are the names of the ims_cfg fields below (one table in config.c drives ims_cfg_set,
 * ims_cfg_dump, ims_cfg_validate's range checks and the help texts; dist/imd.conf and
 * man/imd.conf.5 are checked against it by tests/server/test_config.c).
 *
 * File format: lines `key = value`; `#` or `;` starts a comment line (comments only on lines of
 * their own: `max_frame = 1m # x` is an error); blank lines ignored; `[section]` headers are
 * allowed and ignored (keys are global and unique; a later line wins). CRLF line ends and a
 * UTF-8 byte order mark are tolerated; a line longer than 4096 bytes is an error. Values:
 * integers with optional suffixes (sizes: k, m, g or KiB, MiB, GiB, bare = bytes; durations:
 * ms, s, m, h, d, bare durations are milliseconds, at most 4294967295 ms), booleans (yes/no,
 * true/false, on/off, 1/0), strings as the rest of the line with surrounding blanks removed.
 * `listen` may be given several times: each ims_cfg_set adds one address; the first `listen`
 * of a file replaces the list it started with (so a file's listens replace the default), and
 * the first `--listen` of the command line replaces the file's (main.c calls
 * ims_cfg_listen_reset before it). `tls_listen` works the same way (ims_cfg_tls_listen_reset);
 * its default is empty, and an empty value (`tls_listen =`) adds nothing.
 *
 * Errors name the file, the line and the key: "imd.conf:12: max_frame: not a size: 12q".
 * ims_cfg_set and ims_cfg_load_file leave c unchanged when they fail.
 */
#ifndef IMS_CONFIG_H
#define IMS_CONFIG_H

#include <stddef.h>
#include <stdint.h>

#define IMS_MAX_LISTEN 8

/* The most a frame imd sends for a stored message exceeds the SEND that carried it: a DELIVER
 * adds MSG_ID, SEQ and TIMESTAMP (14 bytes each with their field headers) and SENDER (6 + at
 * most 32) to the smallest SEND (a HISTORY_ITEM adds less). No frame may exceed 16 MiB
 * (IMP-FRAME-005), so max_frame is at most 16 MiB - IMS_DELIVER_GROWTH: a larger SEND would be
 * acknowledged and then never delivered (issue 3). */
#define IMS_DELIVER_GROWTH 80u

typedef struct ims_cfg {
    /* network */
    char listen[IMS_MAX_LISTEN][128]; /* "127.0.0.1:7600", "[::1]:7600", "unix:/path" */
    int n_listen;                     /* default: one, 127.0.0.1:7600 */
    char metrics_listen[128];         /* "" = no HTTP /metrics (default) */
    /* TLS (issue 6) */
    char tls_listen[IMS_MAX_LISTEN][128]; /* TCP addresses served with TLS; default none */
    int n_tls_listen;
    char tls_cert[512];                /* PEM certificate chain; required with tls_listen */
    char tls_key[512];                 /* PEM private key; required with tls_listen */
    char tls_min_version[8];           /* "1.2" (default) or "1.3" */
    uint32_t tls_handshake_timeout_ms; /* default 5 s */
    int allow_insecure_listen;         /* plain listen off loopback allowed; default 0 */
    char data_dir[512];                /* default "./imd-data" */
    /* logging */
    char log_level[16];  /* error, warn, info (default), debug */
    char log_format[16]; /* text (default), json */
    /* accounts */
    int registration;             /* open registration, default 1 */
    uint64_t hash_opslimit;       /* default 2 */
    uint64_t hash_memlimit;       /* bytes, default 19 MiB; minimum 8 MiB */
    int hash_threads;             /* default 2 */
    int hash_queue;               /* default 64 */
    uint32_t loop_probe_ms;       /* event-loop lag probe period, default 100 ms; 0 = off */
    char loop_priority[16];       /* normal (default), high, realtime (auth.h ims_loop_prio) */
    uint32_t busy_poll_us;        /* event loop's busy poll before sleeping, default 0 = off */
    uint32_t token_ttl_ms;        /* resume-token lifetime, default 30 days */
    int max_sessions_per_user;    /* default 16 */
    int addr_max_failures;        /* default 10 within addr_window_ms */
    uint32_t addr_window_ms;      /* default 60 s */
    uint32_t addr_ban_ms;         /* default 300 s */
    int user_free_failures;       /* default 3 */
    uint32_t user_backoff_ms;     /* default 1 s */
    uint32_t user_backoff_max_ms; /* default 60 s */
    /* protocol limits and timers */
    uint32_t max_frame;         /* default 1 MiB; at most 16 MiB - IMS_DELIVER_GROWTH */
    uint32_t max_frame_preauth; /* default 4096 */
    uint32_t auth_timeout_ms;   /* default 10 s */
    uint32_t ping_interval_ms;  /* default 30 s */
    uint32_t ping_max_missed;   /* default 2 */
    /* flow control */
    size_t output_soft;           /* default 1 MiB: over it for output_soft_ms -> slow */
    uint32_t output_soft_ms;      /* default 10 s */
    size_t output_hard;           /* default 8 MiB: over it at once -> slow consumer; at least
                                   * output_soft + max_frame */
    uint32_t msg_rate;            /* messages/s per connection, default 10000; 0 = no limit */
    uint32_t msg_burst;           /* default 20000 */
    int max_connections;          /* default 10000 */
    int max_connections_per_addr; /* default 1000 */
    /* storage and delivery */
    int64_t offline_quota;      /* unacked messages per user, default 10000 */
    int room_history;           /* messages kept per room, default 1000 */
    int page_size;              /* default page for WHO/MEMBERS/ROOMS/HISTORY, default 100 */
    int page_max;               /* default 1000 */
    int sync_full;              /* synchronous=FULL, default 1 */
    int startup_full_check;     /* integrity_check at every start, default 1 */
    int fsync_thread;           /* the group commit's fsync off the loop (syncer.h), default 1 */
    uint32_t dedupe_window_ms;  /* CLIENT_MSG_IDs kept for retries, default 24 h; 0 = forever */
    uint32_t shutdown_grace_ms; /* default 5000 */
} ims_cfg;

void ims_cfg_default(ims_cfg *c);

/* Applies a config file over c. 0, or -1 with a message in err. */
int ims_cfg_load_file(ims_cfg *c, const char *path, char *err, size_t errlen);
/* Sets one key from a string (file line or --set key=value / a flag). 0 or -1 with err. */
int ims_cfg_set(ims_cfg *c, const char *key, const char *value, char *err, size_t errlen);
/* Cross-field checks (max_frame_preauth <= max_frame, output_soft + max_frame <= output_hard,
 * ranges). 0 or -1 with err. */
int ims_cfg_validate(const ims_cfg *c, char *err, size_t errlen);
/* Writes every key with its value, one `key = value` per line (`key =` for an empty value), in
 * table order, in a form ims_cfg_set and ims_cfg_load_file read back (--check-config). */
void ims_cfg_dump(const ims_cfg *c, void (*line)(void *ud, const char *s), void *ud);

/* Empties the listen list (main.c: before the first --listen flag). */
void ims_cfg_listen_reset(ims_cfg *c);
/* Empties the tls_listen list (main.c: before the first --tls-listen flag). */
void ims_cfg_tls_listen_reset(ims_cfg *c);

/* Safe listening defaults: every plain listener (listen, metrics_listen) must be a Unix socket
 * or a loopback address (127.0.0.0/8, ::1; a host name is resolved and every address it has
 * must be loopback). TLS listeners may be anywhere. Returns 0 when all are safe; -1 when one is
 * not and allow_insecure_listen is off (err: "listen 0.0.0.0:7600: not a loopback address and
 * not TLS: use tls_listen, or set allow_insecure_listen = yes"); 1 when one is not but
 * allow_insecure_listen is on (err: the warning to log). Resolves names (getaddrinfo). */
int ims_cfg_check_listen_safety(const ims_cfg *c, char *err, size_t errlen);
/* 1 if a change of key takes effect on SIGHUP, 0 if it needs a restart, -1 unknown key. */
int ims_cfg_reloadable(const char *key);
/* The i-th key in table order (the order of ims_cfg_dump), NULL past the last. */
const char *ims_cfg_key(size_t i);
/* A one-line explanation of key (the comment above it in dist/imd.conf), NULL if unknown. */
const char *ims_cfg_help(const char *key);
/* The value of key as ims_cfg_dump writes it (listen, tls_listen: the addresses separated by
 * spaces).
 * 0, or -1 for an unknown key; the value is truncated to fit len. For SIGHUP diffs. */
int ims_cfg_get(const ims_cfg *c, const char *key, char *buf, size_t len);

/* Parses "HOST:PORT", "[v6]:PORT", "unix:/path" (port 0 = any). 0 or -1. HOST is an IPv4
 * address or a host name (letters, digits, '-', '.'; at most 63 bytes); an IPv6 address needs
 * the brackets, which host does not keep ("[::1]:7600" -> host "::1"). A Unix socket path is
 * 1 to 107 bytes (port 0). ims_cfg_set("listen", ...) says why an address is refused. */
typedef struct ims_addr_spec {
    int is_unix;
    char host[64];
    char path[108];
    int port;
} ims_addr_spec;
int ims_cfg_parse_addr(const char *s, ims_addr_spec *out);

#endif
