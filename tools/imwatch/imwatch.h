/* imwatch — internal interfaces between its files.
 *
 *   main.c    options, --help, dispatch to one of the modes below
 *   watch.c   the live modes on the shared client layer (messages, --stats, --monitor) and
 *             the listings (--who, --rooms)
 *   format.c  output of one delivered message: default lines, -F templates, -0, escaping
 *   decode.c  --decode: a raw IMP byte stream printed frame by frame (no server)
 */
#ifndef IMWATCH_H
#define IMWATCH_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <regex.h>

#include "imp/imp.h"
#include "imt_client.h"
#include "imt_opts.h"

/* Exit statuses shared by all tools (see --help and imwatch(1)). */
enum {
    IW_EXIT_OK = 0,
    IW_EXIT_UNMET = 1,   /* expectation not met (--until never matched) */
    IW_EXIT_USAGE = 2,   /* usage or configuration */
    IW_EXIT_CONNECT = 3, /* cannot connect */
    IW_EXIT_AUTH = 4,    /* authentication refused */
    IW_EXIT_REFUSED = 5, /* server refused a request */
    IW_EXIT_TIMEOUT = 6, /* -W expired */
    IW_EXIT_LOST = 7     /* connection lost; --decode: malformed stream */
};

/* Write p[0..len) for people: printable ASCII and well-formed UTF-8 as they are; control
 * characters, C1 controls, DEL and bytes that are not UTF-8 as \n \t \r \\ or \xHH. quote:
 * also escape '"' (inside a quoted value). */
void iw_escape(FILE *out, const uint8_t *p, size_t len, int quote);
/* ISO-8601 UTC with milliseconds, "2026-11-26T00:45:38.123Z", into buf (>= 32 bytes). */
const char *iw_iso_time(char *buf, size_t len, uint64_t ms);

/* What the live modes do (filled by main.c from the options). */
typedef enum iw_mode {
    IW_MODE_MESSAGES = 0,
    IW_MODE_STATS,
    IW_MODE_MONITOR,
    IW_MODE_WHO,  /* --who: every page of WHO, one user name per line, then exit */
    IW_MODE_ROOMS /* --rooms: every page of ROOMS, one room name per line, then exit */
} iw_mode;

typedef struct iw_config {
    imt_opts *o; /* common options: server, user, password, --json, -q, -v, -d */
    iw_mode mode;
    const char **rooms; /* -g, NULL-terminated */
    size_t nrooms;
    int rooms_only;              /* --rooms-only */
    int no_ack;                  /* --no-ack */
    int presence;                /* --presence (with or without users) */
    const char **presence_users; /* --presence USER,...: NULL-terminated, NULL: room members */
    uint64_t since;              /* --since; UINT64_MAX: absent */
    const char *format;          /* -F template (checked), NULL: default lines */
    int nul;                     /* -0 */
    int no_newline;              /* -N: no newline after a -F record */
    uint64_t count;              /* -C; 0: unlimited */
    uint32_t wait_ms;            /* -W; 0: none */
    regex_t until;               /* --until (REG_EXTENDED | REG_NOSUB) */
    int has_until;
    int ready_line;       /* --ready */
    uint32_t interval_ms; /* --stats --interval */
} iw_config;

/* Run a live mode until it stops; returns the exit status. */
int iw_watch(iw_config *cfg);

/* -F templates: 0 when fmt is valid, else -1 with a message in err. */
int iw_format_check(const char *fmt, char *err, size_t errlen);
/* Print one message with a -F template (no newline added). json: the message as a schema v1
 * JSON object for %j (computed by the caller only when the template has %j, else NULL). */
void iw_format_message(FILE *out, const char *fmt, const imt_message *m, const char *json);
/* 1 when the template uses %j. */
int iw_format_needs_json(const char *fmt);
/* The default line of a message: "TIME KIND:TARGET <SENDER> BODY" (body escaped). */
void iw_print_default(FILE *out, const imt_message *m);

/* --decode: read path ("-" or NULL: stdin) and print every frame to out. Returns the exit
 * status: 0 when every frame decoded, 7 when one was malformed (field errors are reported at
 * their byte offset and decoding goes on with the next frame; a bad header or a stream that
 * ends inside a frame stops it), 2 when the file cannot be read. hex: the input is text, hex
 * digit pairs with white space and '#' comments (as in SPEC.md section 12 and
 * tests/vectors). quiet: no summary line on stderr. json: one JSON object per frame (see
 * decode.c). */
int iw_decode(const char *path, FILE *out, int verbose, int hex, int quiet, int json);

#endif
