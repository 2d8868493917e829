/* imsend — send messages over IMP (one-shot, streamed lines, or an interactive REPL).
 * Private header shared by main.c (options, one-shot and -l modes) and repl.c (-i). */
#ifndef IMSEND_H
#define IMSEND_H

#include <stddef.h>
#include <stdint.h>

#include "imt_client.h"
#include "imt_json.h"
#include "imt_opts.h"

struct event;

typedef struct imsend {
    imt_opts o;
    struct event_base *base;
    imt_client *c;
    imt_json json;
    int exit_status; /* decided so far; the process exit status */

    /* target */
    int kind; /* IMP_TARGET_*, 0 none */
    const char *target;
    int join; /* --join: JOIN the room before sending */

    /* message options */
    int ack_mode; /* IMP_ACK_* */
    int transient;
    const char *id_key;
    uint64_t count;
    uint32_t rate_interval_ms; /* 0: no rate limit */
    uint32_t timeout_ms;       /* wait for an ACK at most this long */
    uint32_t window;           /* unacknowledged sends in flight at most */
    uint8_t headers[16384];
    size_t headers_len;
    int has_headers;

    /* body source */
    int lines;       /* -l */
    int interactive; /* -i */
    char *body;
    size_t body_len;

    /* progress */
    int sending;       /* ready (and joined): sends may go */
    uint64_t sent;     /* SENDs queued */
    uint64_t inflight; /* SENDs awaiting an ACK */
    uint64_t next_send_ms;
    int input_eof;     /* -l: stdin reached its end */
    int input_paused;  /* -l: stdin not watched (window full) */
    int stdin_regular; /* -l: stdin is a regular file (not pollable) */
    int done;          /* LOGOUT asked */
    uint32_t join_req;
    char *lbuf; /* -l: bytes read, not yet sent */
    size_t llen, lcap;
    uint64_t lineno;
    struct event *ev_stdin, *ev_pump, *ev_timeout;
} imsend;

/* The interactive REPL (repl.c): runs the event loop; returns the exit status. */
int imsend_repl_run(imsend *s);

#endif
