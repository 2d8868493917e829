/* Integration tests: a blocking test client on libimp.
 *
 * Two modes:
 *  - conn mode (tc_connect): an imp_conn of the client role drives the session, so every frame
 *    the server sends is also checked against the client state machine (SPEC.md 7.3); a
 *    violation by the server is recorded in tc->lib_err (and reported by tc_wait's caller);
 *  - raw mode (tc_connect_raw): no state machine; frames are encoded with imp_msg_encode and
 *    sent as they are, received frames are parsed with imp_frame_parse/imp_msg_decode. For
 *    malformed input, limits and anything the library would refuse to send.
 * Both modes may also send arbitrary bytes (tc_send_raw).
 *
 * Received frames are copied (tc_frame, owning its bytes) into a queue in arrival order;
 * tc_wait() takes the first queued frame that matches (type and/or request id), reading more
 * with poll() until a deadline. Every wait is bounded.
 */
#ifndef IMP_ITEST_CLIENT_H
#define IMP_ITEST_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#include "imp/imp.h"

#define TC_TIMEOUT_MS 5000 /* default bound of one wait */

typedef struct tc_frame {
    struct tc_frame *next;
    uint8_t *buf; /* the whole frame, canonical encoding */
    size_t len;
    imp_msg m; /* views into buf */
} tc_frame;

typedef struct tc {
    int fd;
    int raw;        /* raw mode */
    imp_conn *conn; /* conn mode */
    uint32_t next_req;
    tc_frame *head, *tail; /* received, not yet taken */
    size_t queued;
    uint8_t *rbuf; /* raw mode: bytes not yet parsed */
    size_t rlen, rcap;
    int eof;        /* the server closed (EOF or reset) */
    int rd_errno;   /* errno of a failed read (ECONNRESET...), 0 */
    int wr_errno;   /* errno of a failed write (EPIPE...), 0 */
    int lib_err;    /* conn mode: the library's error on server input; raw mode: parse error */
    int last_error; /* CODE of the last ERROR frame received (0 none) */
    uint64_t bytes_in;
    imp_msg welcome; /* WELCOME (views into welcome_buf) */
    uint8_t *welcome_buf;
    int has_welcome;
    /* tc_record_start: a copy of every byte received from then on (rec_len bytes at rec) */
    int recording;
    uint8_t *rec;
    size_t rec_len, rec_cap;
} tc;

typedef struct tc_auth {
    char user[33];
    uint8_t token[64];
    size_t token_len;
    uint64_t session_id;
    uint64_t last_seq;
    int admin; /* ADMIN field value; 0 when absent */
    int has_token;
} tc_auth;

typedef struct tc_msg {
    int kind;           /* IMP_TARGET_* */
    const char *target; /* NULL for broadcast */
    const char *cmid;   /* CLIENT_MSG_ID or NULL */
    int cls;            /* -1: absent, else CLASS */
    int ack_mode;       /* -1: absent, else ACK_MODE */
    const void *headers;
    size_t headers_len;
    int has_headers;
    const void *body;
    size_t body_len;
} tc_msg;

typedef struct tc_ack {
    int outcome;     /* OUTCOME */
    uint64_t msg_id; /* 0 when absent */
    int has_msg_id;
    int code;      /* CODE, 0 when absent */
    int duplicate; /* DUPLICATE, 0 when absent */
    char cmid[65]; /* CLIENT_MSG_ID echoed, "" when absent */
} tc_ack;

/* Connect to 127.0.0.1:port within timeout_ms. Conn mode sends HELLO and waits for WELCOME
 * (NULL on failure, with a message on stderr). rcvbuf > 0 sets SO_RCVBUF before connecting. */
tc *tc_connect(int port, int timeout_ms);
tc *tc_connect_raw(int port, int timeout_ms, int rcvbuf);
/* Raw mode: send HELLO (versions 1-1) and wait for WELCOME. 0 or -1. */
int tc_raw_hello(tc *c, int timeout_ms);
void tc_close(tc *c);
/* Close every client still open (test teardown). */
void tc_close_all(void);

/* Next request id (distinct, non-zero). */
uint32_t tc_req(tc *c);
/* Send a message built by the caller: conn mode through imp_conn_send, raw mode encoded as is.
 * If m->request_id is 0 a fresh id is set. Returns the request id, or 0 on failure (the
 * library refused it: see the message on stderr). Output is flushed (bounded). */
uint32_t tc_request(tc *c, imp_msg *m);
/* Write bytes as they are (bounded by timeout_ms). 0, or -errno (EPIPE, ECONNRESET, ETIMEDOUT
 * when not all could be written in time). */
int tc_send_raw(tc *c, const void *p, size_t n, int timeout_ms);

/* Read what arrives within timeout_ms (one poll + reads until EAGAIN) into the queue. Returns
 * the number of frames queued by this call, or -1 when the connection is closed (eof). */
int tc_pump(tc *c, int timeout_ms);

/* Take the first queued frame of the given type (0: any) and request id (0: any), reading
 * until timeout_ms. NULL on timeout, when the connection closed first, or when the server's
 * input failed to parse (lib_err). Free with tc_frame_free. */
tc_frame *tc_wait(tc *c, uint8_t type, uint32_t req, int timeout_ms);
/* Take the first frame whose request id is req (the reply: OK, ERROR, ACK, ...). */
tc_frame *tc_wait_reply(tc *c, uint32_t req, int timeout_ms);
/* Peek: number of queued frames of a type (0: any). */
size_t tc_queued(const tc *c, uint8_t type);
void tc_frame_free(tc_frame *f);
/* Describe the queue (types and request ids) into buf, for failure messages. */
const char *tc_describe(const tc *c, char *buf, size_t len);

/* Wait for the server to close the connection (EOF or reset) within timeout_ms, reading and
 * queuing frames meanwhile. Returns 1 when closed, 0 on timeout. *err_code (may be NULL) is the
 * CODE of the last ERROR received (0 none). */
int tc_expect_close(tc *c, int timeout_ms, int *err_code);

/* REGISTER / LOGIN. Return 0 with *auth filled on AUTH_OK, the positive ERROR code on ERROR,
 * -1 on timeout or a closed connection. last_seq: UINT64_MAX means no LAST_SEQ field. */
int tc_register(tc *c, const char *user, const char *password, tc_auth *auth, int timeout_ms);
int tc_login(tc *c, const char *user, const char *password, uint64_t last_seq, tc_auth *auth,
             int timeout_ms);
int tc_login_token(tc *c, const char *user, const uint8_t *token, size_t token_len,
                   uint64_t last_seq, tc_auth *auth, int timeout_ms);

/* Build a SEND from a tc_msg into *m (views into the tc_msg's strings and buffers). */
void tc_build_send(const tc_msg *s, imp_msg *m);
/* SEND and, unless ack_mode says none, wait for its ACK. Returns 0 with *ack filled, the
 * positive ERROR code if the server answered ERROR, -1 on timeout or close. */
int tc_send(tc *c, const tc_msg *s, tc_ack *ack, int timeout_ms);
/* Shorthand: durable direct message with a body string, optional CLIENT_MSG_ID. */
int tc_send_text(tc *c, const char *to, const char *cmid, const char *body, tc_ack *ack);
/* Fill *ack from an ACK frame. */
void tc_ack_from(const imp_msg *m, tc_ack *ack);
/* Wait for the ACK of request req. */
int tc_wait_ack(tc *c, uint32_t req, tc_ack *ack, int timeout_ms);

/* DELIVERED(seq); no reply expected. 0 or -1. */
int tc_delivered(tc *c, uint64_t seq);
/* Send a request without fields of a given type (STATS, LOGOUT, PING...), returns req id. */
uint32_t tc_simple(tc *c, uint8_t type);

/* Recording: from now on keep a copy of every byte the server sends on this connection (in
 * c->rec, c->rec_len; freed by tc_close), e.g. to scan everything a client received for data it
 * must not see, or to compare transcripts. */
void tc_record_start(tc *c);
/* 1 when the recorded bytes contain the needle (n bytes). */
int tc_recorded_has(const tc *c, const void *needle, size_t n);

/* Field helpers. */
/* Copy a byte/text field into a NUL-terminated string (truncated); "" when absent. */
const char *tc_str(const imp_msg *m, unsigned tag, char *buf, size_t len);
/* 1 if field tag equals the string. */
int tc_field_is(const imp_msg *m, unsigned tag, const char *s);
/* Number of entries in a names list field and the i-th entry into buf. */
size_t tc_names_count(const imp_msg *m, unsigned tag);
int tc_names_has(const imp_msg *m, unsigned tag, const char *name);
/* Value of a named counter in a STATS list; -1 when absent. */
long long tc_stat(const imp_msg *m, const char *name);

#endif
