/* libimp — the connection: session state machine for client and server roles (SPEC.md
 * sections 7 and 8), sans I/O (IMP-LIB-001).
 *
 * Bytes go in with imp_conn_feed(), frames come out with imp_conn_next_event(), bytes to write
 * are lent out by imp_conn_pending_output() until imp_conn_consume_output(), frames are queued
 * with imp_conn_send(), and time is passed in (imp_conn_new, imp_conn_tick). No user code runs
 * inside the library.
 *
 * A typical loop:
 *     feed what the socket gave; while ((r = imp_conn_next_event(c, &m)) > 0) handle(&m);
 *     if (r < 0 || imp_conn_want_close(c)) { write pending output, then close }
 *     write imp_conn_pending_output(); call imp_conn_tick() at imp_conn_next_deadline().
 *
 * Errors: a fatal error (imp_is_fatal) is sticky: the connection queues an ERROR frame for the
 * peer when it can (carrying the offending frame's request id), enters IMP_S_CLOSING, and every
 * later next_event/tick/feed call returns the same error while imp_conn_send returns
 * IMP_ERR_CLOSED (IMP-ERR-003). A connection that reached CLOSING without a local error (LOGOUT,
 * a fatal ERROR from the peer, imp_conn_close) takes and drops input and returns 0 events.
 */
#ifndef IMP_CONN_H
#define IMP_CONN_H

#include <stddef.h>
#include <stdint.h>

#include "errors.h"
#include "msg.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum imp_role { IMP_ROLE_CLIENT = 1, IMP_ROLE_SERVER = 2 } imp_role;

/* States (SPEC.md section 7). Server: AWAIT_HELLO, AWAIT_AUTH, AUTHENTICATING, READY,
 * LOGOUT_RCVD (only with imp_conn_set_defer_logout), CLOSING. Client: HELLO_SENT, CONNECTED,
 * AUTH_SENT, READY, LOGOUT_SENT, CLOSING. LOGOUT_RCVD comes last so that the older values keep
 * their numbers. */
typedef enum imp_state {
    IMP_S_AWAIT_HELLO = 0,
    IMP_S_AWAIT_AUTH,
    IMP_S_AUTHENTICATING,
    IMP_S_HELLO_SENT,
    IMP_S_CONNECTED,
    IMP_S_AUTH_SENT,
    IMP_S_READY,
    IMP_S_LOGOUT_SENT,
    IMP_S_CLOSING,
    IMP_S_LOGOUT_RCVD
} imp_state;
#define IMP_STATE_COUNT 10
const char *imp_state_name(imp_state s); /* "AWAIT_HELLO", ...; NULL if out of range */

/* The one allocator hook (IMP-LIB-003): realloc semantics; size 0 frees and returns NULL.
 * NULL hook = the C library's realloc/free. */
typedef struct imp_allocator {
    void *(*realloc)(void *ud, void *ptr, size_t size);
    void *ud;
} imp_allocator;

typedef struct imp_config {
    const imp_allocator *alloc; /* NULL: libc */
    /* Receive limits on the frame size (IMP-FRAME-005, IMP-SESS-006). Server: max_frame
     * after AUTH_OK and max_frame_preauth before, both announced in WELCOME. Client: the
     * limit on frames received (max_frame; max_frame_preauth unused). */
    uint32_t max_frame;
    uint32_t max_frame_preauth;
    uint32_t ping_interval_ms; /* IMP-TIME-002; 0 disables our PINGs */
    uint32_t ping_max_missed;  /* N of IMP-TIME-002 (>= 1) */
    uint32_t auth_timeout_ms;  /* IMP-TIME-001; 0 disables the deadline */
    size_t max_output;         /* cap on queued output bytes; 0 = none. Over it, send fails
                                  with IMP_ERR_OUTPUT_FULL (library frames are never refused) */
    const char *agent;         /* AGENT in HELLO/WELCOME; NULL = none */
    imp_bytes caps;            /* CAPS list (see imp_names_add); len 0 = none */
} imp_config;

/* Defaults for a role: server max_frame 1 MiB, preauth 4096, ping 30000 ms, 2 missed,
 * auth timeout 10000 ms; client max_frame 16 MiB, preauth 4096 (unused), no pings (2 missed
 * if enabled), auth timeout 10000 ms. No allocator (libc), no agent, no caps, no output cap. */
void imp_config_default(imp_config *cfg, imp_role role);

typedef struct imp_conn imp_conn;

/* Create a connection at time now_ms (monotonic milliseconds). A client connection queues
 * HELLO at once (state HELLO_SENT); a server connection starts in AWAIT_HELLO. cfg is copied
 * (the agent string and caps bytes must outlive the connection); cfg NULL means
 * imp_config_default(role). NULL on allocation failure or invalid configuration
 * (max_frame_preauth > max_frame, limits out of range, bad agent text or caps list). */
imp_conn *imp_conn_new(imp_role role, const imp_config *cfg, uint64_t now_ms);
void imp_conn_free(imp_conn *c);

/* Give received bytes to the connection; they are copied. Returns the number of bytes taken,
 * which is less than len when the input buffer holds a whole frame's worth of unread bytes
 * plus 64 KiB: take events, then feed the rest. In CLOSING all bytes are taken and dropped.
 * Returns the sticky error if the connection has failed, IMP_ERR_NOMEM if the buffer could
 * not grow (fatal). */
imp_ssize imp_conn_feed(imp_conn *c, const uint8_t *buf, size_t len);

/* Take the next received frame.
 *   1: *m holds it; its views point into the connection's buffer and stay valid until the
 *      next call of imp_conn_feed, imp_conn_next_event or imp_conn_free.
 *   0: no whole frame buffered (or the connection is closing without error).
 *  <0: the connection failed (sticky), e.g. IMP_ERR_FRAME_TOO_LARGE, IMP_ERR_STATE.
 * Frames the library answers itself (HELLO, PING, LOGOUT) are still returned as events. */
int imp_conn_next_event(imp_conn *c, imp_msg *m);

/* Queue a frame built by the application. Checks the send table (IMP-SESS-002): returns
 * IMP_ERR_NOT_ALLOWED or IMP_ERR_CLOSED without queuing anything; validates the message (as
 * imp_msg_validate); IMP_ERR_TOO_LARGE if a client frame exceeds the server's announced
 * limit; IMP_ERR_OUTPUT_FULL if max_output would be exceeded; IMP_ERR_NOMEM (fatal).
 * Returns 0 when queued. Sending a fatal ERROR moves the connection to CLOSING. */
int imp_conn_send(imp_conn *c, const imp_msg *m);

/* A frame validated and encoded once, to queue the same bytes on many connections (a room's
 * fan-out) without building, validating and encoding the message again for each. Opaque: its
 * bytes cannot change after validation, so queuing it keeps imp_conn_send's guarantees. */
typedef struct imp_prepared imp_prepared;

/* Validate m (as imp_msg_validate; IMP_ERR_INVAL for a type IMP/1 does not define) and encode
 * it into a new prepared frame allocated through alloc (NULL: the C library). Returns NULL on
 * failure with *err (when err != NULL) set to the validation error, IMP_ERR_TOO_LARGE or
 * IMP_ERR_NOMEM; m's views are copied, m may change or go away afterwards. */
imp_prepared *imp_prepared_new(const imp_msg *m, const imp_allocator *alloc, int *err);
/* Drops the caller's reference (NULL: nothing): the frame is freed once no connection holds it
 * either (imp_conn_send_shared). Not thread-safe: a frame and the connections it is queued on
 * belong to one thread. */
void imp_prepared_free(imp_prepared *p);
/* The size of the encoded frame (header included). */
size_t imp_prepared_size(const imp_prepared *p);

/* Queue a prepared frame: the same checks and effects as imp_conn_send of the message it was
 * prepared from (the send table, IMP_ERR_CLOSED, the client's frame limit, max_output:
 * IMP_ERR_OUTPUT_FULL, IMP_ERR_NOMEM fatal), with its bytes copied instead of encoded. */
int imp_conn_send_prepared(imp_conn *c, const imp_prepared *p);

/* Queue a prepared frame by reference: the same checks and effects as imp_conn_send_prepared,
 * but once authenticated the connection keeps a reference to p (which keeps p alive after the
 * caller's imp_prepared_free) instead of copying its bytes, until they are written. For a
 * frame queued on many connections (a room's fan-out): each connection's output lists the
 * frames it shares (imp_conn_output_iov) and a writer hands them to the kernel without a copy
 * per connection. Order is kept: the output is the buffer's bytes, then the shared frames in
 * the order queued; a frame queued by anything but this function after shared frames first
 * copies them into the buffer. Before authentication the bytes are copied. */
int imp_conn_send_shared(imp_conn *c, imp_prepared *p);

/* Close with an error for the peer: queues ERROR(code, text) when the state allows sending,
 * and enters CLOSING. code is a wire code (e.g. 730) or a negative imp_err. */
void imp_conn_close(imp_conn *c, int code, const char *text);

/* Output to write: *out points at the bytes (valid until the next call that sends or
 * consumes); returns their number (0: nothing to write). Shared frames are copied into the
 * buffer first (when the buffer cannot grow, fewer bytes are returned: those before them). */
size_t imp_conn_pending_output(const imp_conn *c, const uint8_t **out);

/* One segment of the output (imp_conn_output_iov). */
typedef struct imp_iovec {
    const uint8_t *base;
    size_t len;
} imp_iovec;
/* All output bytes not yet written: the buffer's and the shared frames' (imp_conn_send_shared).
 * This is what max_output is checked against. */
size_t imp_conn_output_size(const imp_conn *c);
/* The output as segments, in order: the buffer's bytes (if any), then each shared frame (the
 * first one from where writing stopped); at most max of them, the first ones. Returns how many
 * were filled (0: nothing to write). Valid until the next call that sends or consumes, or
 * imp_conn_pending_output (which lays the shared frames out). For a
 * gathering write (writev); imp_conn_consume_output takes the bytes written across segments. */
int imp_conn_output_iov(const imp_conn *c, imp_iovec *v, int max);
/* n bytes of the pending output were written (n <= pending). */
void imp_conn_consume_output(imp_conn *c, size_t n);

/* Advance time: checks the authentication deadline and keepalive (section 8), may queue a
 * PING. Returns 0 or the sticky error (IMP_ERR_AUTH_TIMEOUT, IMP_ERR_PING_TIMEOUT). */
int imp_conn_tick(imp_conn *c, uint64_t now_ms);
/* The next time imp_conn_tick should be called; UINT64_MAX when no timer runs. */
uint64_t imp_conn_next_deadline(const imp_conn *c);

/* Releases the input and output buffers when they hold nothing (no unread input, no unwritten
 * output), so that an idle connection costs only the connection object; they are allocated
 * again when needed. The views of the last event become invalid. Cheap; a server calls it for
 * connections idle for a while. */
void imp_conn_trim(imp_conn *c);

/* Change the cap on queued output (imp_config.max_output; 0 = none) of a live connection (a
 * server's reloaded configuration). Output already queued stays; later sends are checked
 * against the new cap. */
void imp_conn_set_max_output(imp_conn *c, size_t max_output);

/* Server role: defer the answer to LOGOUT (on != 0) or not (0, the default), IMP-SESS-008.
 * With it on, a LOGOUT received in READY is returned as an event as ever, but the library sends
 * no OK by itself: the connection moves to IMP_S_LOGOUT_RCVD, where every later input is taken
 * and dropped (no events, no PONG, as in CLOSING), no timer runs, want_close is 0, and the
 * application still sends what it owes for the requests before LOGOUT (ACK, ERROR, OK, replies,
 * any APP_S frame). It then sends OK with LOGOUT's request id (imp_conn_send or
 * imp_conn_send_prepared), which moves the connection to CLOSING; an OK with another request id
 * does not. A LOGOUT before READY is answered at once either way. The option applies to the
 * LOGOUTs received after the call. Returns 0, or IMP_ERR_INVAL for a client connection. */
int imp_conn_set_defer_logout(imp_conn *c, int on);

imp_state imp_conn_state(const imp_conn *c);
imp_role imp_conn_role(const imp_conn *c);
/* The sticky error, or 0. */
int imp_conn_error(const imp_conn *c);
/* 1 when the application should write the pending output and then close the transport. */
int imp_conn_want_close(const imp_conn *c);
/* The current receive limit (IMP-SESS-006). */
uint32_t imp_conn_recv_limit(const imp_conn *c);
/* Client: the limits WELCOME announced (0 before WELCOME). */
uint32_t imp_conn_peer_max_frame(const imp_conn *c);
uint32_t imp_conn_peer_max_preauth(const imp_conn *c);

#ifdef __cplusplus
}
#endif
#endif
