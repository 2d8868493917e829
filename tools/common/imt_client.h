/* STABLE (issue 4): the API below is fixed; additions only, no changes to what is here.
 *
 * imt_client — the event-driven IMP client shared by the tools (imsend, imwatch, ...), built
 * on libevent and libimp (imp_conn, client role).
 *
 * One imt_client is one connection: connect (TCP "HOST[:PORT]" or "unix:/path", bounded by
 * connect_timeout_ms, which covers TCP connect + HELLO/WELCOME + LOGIN/REGISTER), handshake,
 * authenticate, then run until the tool closes it or the connection ends. Everything happens
 * inside the caller's event_base: the tool calls imt_client_start() and event_base_dispatch().
 *
 *     imt_client_config cfg;
 *     imt_client_config_init(&cfg);         // or imt_opts_client_config() from imt_opts.h
 *     cfg.server = "127.0.0.1:7600"; cfg.user = "alice"; cfg.password = pw;
 *     cfg.password_len = strlen(pw);
 *     imt_callbacks cb = {0}; cb.on_ready = ready; cb.on_ack = ack; cb.on_close = closed;
 *     imt_client *c = imt_client_new(base, &cfg, &cb, ud);
 *     imt_client_start(c);
 *     event_base_dispatch(base);            // on_close calls event_base_loopexit()
 *     imt_client_free(c);
 *
 * Callbacks run from the event loop (never from inside an imt_client_* call made by the tool,
 * except on_close, which may run from inside imt_client_close()). A callback may call any
 * imt_client_* function, including imt_client_close(); it must not call imt_client_free()
 * (free after the loop returns, or from a deferred event).
 *
 * Views (imp_bytes, const imp_msg *) passed to callbacks are valid only during the callback.
 * Strings in the structs passed to callbacks are NUL-terminated copies (also only valid during
 * the callback).
 *
 * Exit statuses (the protocol's code classes, SPEC.md section 6, IMP-ERR-001):
 *   0 ok, 1 expectation not met, 2 usage/config, 3 cannot connect, 4 authentication refused,
 *   5 request refused by the server, 6 timeout, 7 connection lost.
 */
#ifndef IMT_CLIENT_H
#define IMT_CLIENT_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "imp/imp.h"

struct event_base;

#ifdef __cplusplus
extern "C" {
#endif

enum imt_exit {
    IMT_EXIT_OK = 0,
    IMT_EXIT_UNMET = 1,   /* the tool ran, but its expectation was not met (e.g. imwatch -C) */
    IMT_EXIT_USAGE = 2,   /* bad arguments or configuration; 2xx codes */
    IMT_EXIT_CONNECT = 3, /* cannot connect (DNS, TCP refused, 3xx codes) */
    IMT_EXIT_AUTH = 4,    /* authentication refused (4xx codes) */
    IMT_EXIT_REFUSED = 5, /* a request was refused (5xx codes) */
    IMT_EXIT_TIMEOUT = 6, /* a time limit expired (6xx codes) */
    IMT_EXIT_LOST = 7     /* the connection was lost / protocol violation (7xx codes) */
};

#define IMT_DEFAULT_SERVER "127.0.0.1:7600"
#define IMT_DEFAULT_PORT "7600"
#define IMT_DEFAULT_CONNECT_TIMEOUT_MS 5000u

/* Exit status for a code: 0 -> 0; a positive wire code or a negative imp_err -> its class
 * (imp_exit_status: the hundreds digit, 2..7; codes outside 200..799 -> 7). */
int imt_exit_status(int code);

/* "500 NO_SUCH_USER" (or "599 unknown" for a code without a name) into buf; returns buf.
 * Accepts positive wire codes and negative imp_err values (printed positive). */
const char *imt_code_str(int code, char *buf, size_t len);

/* "500 NO_SUCH_USER: text" into buf (just the code when text is NULL, empty or only repeats
 * the code's name); returns buf. */
const char *imt_code_text(int code, const char *text, char *buf, size_t len);

/* Monotonic milliseconds (CLOCK_MONOTONIC). */
uint64_t imt_now_ms(void);

/* ---- addresses -------------------------------------------------------------------------- */

typedef struct imt_addr {
    int is_unix;    /* 1: path is a unix socket path */
    char host[256]; /* TCP: host name or address (IPv6 literal without brackets) */
    char port[16];  /* TCP: port (digits) */
    char path[108]; /* unix: the socket path */
} imt_addr;

/* Parse "HOST", "HOST:PORT", "[V6ADDR]:PORT", ":PORT" (host 127.0.0.1) or "unix:/path".
 * NULL or "" means $IMP_SERVER, else IMT_DEFAULT_SERVER. Returns 0, or -1 with a message in
 * err (e.g. "bad port 'x' in 'host:x'"). */
int imt_addr_parse(const char *spec, imt_addr *out, char *err, size_t errlen);

/* ---- configuration ---------------------------------------------------------------------- */

typedef struct imt_client_config {
    const char *server;          /* imt_addr_parse spec; NULL: $IMP_SERVER or the default */
    const char *user;            /* required */
    const void *password;        /* required; not copied: must outlive the client */
    size_t password_len;         /* 1..1024 */
    int do_register;             /* 1: REGISTER instead of LOGIN */
    uint32_t connect_timeout_ms; /* connect + handshake + auth; default 5000; 0 = none */
    uint32_t ping_interval_ms;   /* our keepalive PINGs while READY; 0 = none (default) */
    uint64_t last_seq;           /* LOGIN LAST_SEQ (resume); UINT64_MAX = absent (default) */
    int auto_delivered;          /* 1: after on_deliver returns, send DELIVERED(seq) for
                                    durable messages (seq > 0) */
    int trace;                   /* 1 (-d): every frame sent and received, decoded, with a hex
                                    dump, on stderr */
    int verbose;                 /* 1 (-v): connection progress on stderr */
    const char *prog;            /* prefix of diagnostics ("imsend"); default "imt" */
    const char *agent;           /* HELLO AGENT; default "imt/" IMP_LIB_VERSION */
    size_t max_output;           /* cap of queued output bytes in libimp; 0 = none */
    /* TLS (appended, issue 6; imt_tls.h). tls NULL or !tls->enabled: plain TCP. Otherwise the
     * connection runs TLS (TCP addresses only), the connect timeout covers the TLS handshake,
     * and a failed handshake or certificate check ends it with status 3 and a text such as
     * "127.0.0.1:7643: certificate verify failed: self-signed certificate". tls_ctx: a context
     * from imt_tls_ctx_new to use (shared, not freed by the client); NULL: the client makes
     * its own from *tls (a failure then also ends with status 3). Neither is copied. */
    const struct imt_tls_opts *tls;
    struct ssl_ctx_st *tls_ctx;
} imt_client_config;

void imt_client_config_init(imt_client_config *cfg);

/* ---- events ----------------------------------------------------------------------------- */

typedef struct imt_session {
    char user[IMP_NAME_MAX + 1]; /* canonical user name from AUTH_OK */
    uint64_t session_id;
    uint64_t last_seq; /* AUTH_OK LAST_SEQ */
    int admin;
    const uint8_t *token; /* resume token (view), may be NULL */
    size_t token_len;
} imt_session;

/* A message: DELIVER (from == IMP_DELIVER) or HISTORY_ITEM (from == IMP_HISTORY_ITEM: seq 0,
 * target_kind room, target = the room, cls durable). */
typedef struct imt_message {
    uint8_t frame_type;  /* IMP_DELIVER or IMP_HISTORY_ITEM */
    uint32_t request_id; /* HISTORY_ITEM: the HISTORY request; DELIVER: 0 */
    uint64_t msg_id;
    uint64_t seq;                  /* 0 for transient messages and history items */
    uint64_t timestamp;            /* ms since 1970 (server time) */
    int target_kind;               /* IMP_TARGET_USER/ROOM/BROADCAST */
    char target[IMP_NAME_MAX + 1]; /* recipient or room; "" for broadcast */
    char sender[IMP_NAME_MAX + 1];
    int cls;           /* IMP_CLASS_DURABLE / IMP_CLASS_TRANSIENT */
    imp_bytes headers; /* headers list (iterate with imp_headers_next); len 0 when absent */
    imp_bytes body;
    const imp_msg *m; /* the whole frame */
} imt_message;

typedef struct imt_ack {
    uint32_t request_id; /* the SEND's request id */
    int outcome;         /* IMP_OUTCOME_STORED/DELIVERED/REFUSED */
    uint64_t msg_id;
    int has_msg_id;
    int code;               /* CODE (positive wire code), 0 when absent */
    int duplicate;          /* DUPLICATE */
    char client_msg_id[65]; /* echoed CLIENT_MSG_ID, "" when absent */
    char text[513];         /* TEXT, "" when absent */
} imt_ack;

typedef struct imt_presence {
    char user[IMP_NAME_MAX + 1];
    int status; /* IMP_STATUS_* */
    char status_text[257];
    uint32_t sessions; /* SESSIONS, 0 when absent */
    int has_sessions;
    uint64_t timestamp; /* 0 when absent */
} imt_presence;

typedef struct imt_monitor_event {
    char event[65];
    char user[IMP_NAME_MAX + 1]; /* "" when absent */
    char text[513];              /* "" when absent */
    uint64_t timestamp;
} imt_monitor_event;

/* How a connection ended (on_close) or a request failed. */
typedef struct imt_result {
    int status;     /* exit status (enum imt_exit); 0 for a clean close */
    int code;       /* wire code when there is one (e.g. 400, 733, 602), else 0 */
    char text[256]; /* human-readable cause, e.g. "connect 127.0.0.1:7600: Connection refused" */
} imt_result;

typedef struct imt_client imt_client;

/* Callbacks; every pointer may be NULL. ud is the pointer given to imt_client_new. */
typedef struct imt_callbacks {
    /* Authenticated (AUTH_OK): requests may be sent from here on. */
    void (*on_ready)(imt_client *c, const imt_session *s, void *ud);
    void (*on_message)(imt_client *c, const imt_message *msg, void *ud); /* DELIVER, HISTORY_ITEM */
    void (*on_ack)(imt_client *c, const imt_ack *ack, void *ud);
    void (*on_presence)(imt_client *c, const imt_presence *p, void *ud);
    void (*on_monitor)(imt_client *c, const imt_monitor_event *e, void *ud);
    /* STATS_REPLY: iterate the STATS field with imp_stats_next(). */
    void (*on_stats)(imt_client *c, uint32_t req, const imp_msg *m, void *ud);
    /* MEMBER_LIST, ROOM_LIST, WHO_LIST (type in m->type): NAMES (imp_names_next), CURSOR,
     * MORE; MEMBER_LIST also ROOM. */
    void (*on_list)(imt_client *c, uint32_t req, const imp_msg *m, void *ud);
    /* OK answering request req (COUNT, MORE optional). */
    void (*on_ok)(imt_client *c, uint32_t req, const imp_msg *m, void *ud);
    /* A non-fatal ERROR (4xx/5xx or unknown class) answering request req (0 when the server
     * sent it unsolicited). retry_after_ms 0 when absent. Fatal ERRORs end the connection and
     * arrive through on_close instead. */
    void (*on_error)(imt_client *c, uint32_t req, int code, const char *text,
                     uint32_t retry_after_ms, void *ud);
    /* Every received frame, before the specific callback (for tools that want everything). */
    void (*on_frame)(imt_client *c, const imp_msg *m, void *ud);
    /* The output queued in the client was completely written to the socket (after it was
     * non-empty): use it for flow control together with imt_client_output_pending(). */
    void (*on_drain)(imt_client *c, void *ud);
    /* The connection ended; called exactly once per imt_client_start (unless the client is
     * freed first). r->status 0: clean close (LOGOUT answered, or imt_client_close(c, 0)).
     * Otherwise: 3 connect failure / 3xx ERROR, 4 LOGIN/REGISTER refused (code 4xx), 6 the
     * connect timeout or a ping timeout (602, 601), 7 connection lost (733 for EOF/reset,
     * 7xx for a protocol error, 730 SHUTDOWN, 732 KICKED...). */
    void (*on_close)(imt_client *c, const imt_result *r, void *ud);
} imt_callbacks;

/* ---- lifecycle -------------------------------------------------------------------------- */

/* Create (nothing happens until imt_client_start). cfg and cb are copied (the strings and the
 * password they point to are not: they must outlive the client). NULL on allocation failure. */
imt_client *imt_client_new(struct event_base *base, const imt_client_config *cfg,
                           const imt_callbacks *cb, void *ud);

/* Begin: resolve and connect (the name lookup is synchronous), then HELLO, LOGIN/REGISTER.
 * Returns 0 when started; a failure that is known at once (bad address syntax: status 2,
 * lookup failure: status 3) is still reported through on_close, from the event loop, and
 * the function returns 0 too. Returns -1 only when called twice or on allocation failure. */
int imt_client_start(imt_client *c);

/* Close. code 0: graceful — send LOGOUT, wait (bounded by 2 s) for its OK, then on_close with
 * status 0. code != 0: close at once after trying to write pending output; on_close gets
 * status imt_exit_status(code) and that code (use IMP_ERR_TIMEOUT for a tool's own time
 * limit). Calling it again, or after on_close, does nothing. */
void imt_client_close(imt_client *c, int code, const char *text);

/* Free: closes the socket without callbacks. NULL is ignored. */
void imt_client_free(imt_client *c);

/* ---- state ------------------------------------------------------------------------------ */

int imt_client_ready(const imt_client *c); /* 1 once AUTH_OK arrived and until closed */
const imt_session *imt_client_session(const imt_client *c); /* NULL before AUTH_OK */
/* Bytes queued in the client (libimp's output) and not yet written to the socket. */
size_t imt_client_output_pending(const imt_client *c);
imp_conn *imt_client_conn(imt_client *c); /* the underlying libimp connection (or NULL) */
void *imt_client_ud(const imt_client *c);

/* ---- requests ----------------------------------------------------------------------------
 * Every request function returns 0 with *req (may be NULL) set to the request id, or a
 * negative imp_err: IMP_ERR_NOT_ALLOWED before on_ready, IMP_ERR_CLOSED after close, a
 * validation error (IMP_ERR_BAD_NAME, IMP_ERR_FIELD_LENGTH, IMP_ERR_BAD_UTF8, ...),
 * IMP_ERR_TOO_LARGE over the server's frame limit, IMP_ERR_OUTPUT_FULL over max_output. */

typedef struct imt_send_args {
    int target_kind;           /* IMP_TARGET_USER/ROOM/BROADCAST */
    const char *target;        /* user or room; NULL for broadcast */
    const char *client_msg_id; /* NULL: absent */
    int cls;                   /* -1: absent (durable), else IMP_CLASS_* */
    int ack_mode;              /* -1: absent (stored), else IMP_ACK_* */
    const void *headers;       /* headers list (imp_headers_add); NULL: absent */
    size_t headers_len;
    const void *body;
    size_t body_len;
} imt_send_args;

/* Initialise with absent optional fields (cls, ack_mode -1). */
void imt_send_args_init(imt_send_args *a);

int imt_client_send(imt_client *c, const imt_send_args *a, uint32_t *req);
int imt_client_delivered(imt_client *c, uint64_t seq); /* DELIVERED; no reply */
int imt_client_join(imt_client *c, const char *room, uint32_t *req);
int imt_client_leave(imt_client *c, const char *room, uint32_t *req);
/* PRESENCE: status IMP_STATUS_ONLINE/AWAY/BUSY; text NULL: absent. */
int imt_client_presence(imt_client *c, int status, const char *text, uint32_t *req);
/* SUBSCRIBE: names is a NULL-terminated array; enable 1/0. */
int imt_client_subscribe(imt_client *c, const char *const *names, int enable, uint32_t *req);
/* WHO / ROOMS: cursor (NULL/0 absent) from a previous list, limit 0: absent. */
int imt_client_who(imt_client *c, const void *cursor, size_t cursor_len, uint32_t limit,
                   uint32_t *req);
int imt_client_rooms(imt_client *c, const void *cursor, size_t cursor_len, uint32_t limit,
                     uint32_t *req);
int imt_client_members(imt_client *c, const char *room, const void *cursor, size_t cursor_len,
                       uint32_t limit, uint32_t *req);
/* HISTORY: limit 0 absent; before_id 0 absent. Items arrive through on_message, then OK. */
int imt_client_history(imt_client *c, const char *room, uint32_t limit, uint64_t before_id,
                       uint32_t *req);
int imt_client_stats(imt_client *c, uint32_t *req);
int imt_client_monitor(imt_client *c, int enable, uint32_t *req);
/* Any other frame built by the tool (request_id 0: a fresh one is assigned). */
int imt_client_request(imt_client *c, imp_msg *m, uint32_t *req);

/* ---- diagnostics ------------------------------------------------------------------------ */

/* The -d trace line(s) of one frame: "<prog>: <dir> TYPE req=N FIELD=value ..." then a hex
 * dump of the encoded frame, to out. dir is "<<" (received) or ">>" (sent). */
void imt_trace_frame(FILE *out, const char *prog, const char *dir, const imp_msg *m);

#ifdef __cplusplus
}
#endif
#endif
