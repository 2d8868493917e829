/* imsend — send messages over IMP: options, the one-shot mode (arguments, -f, --stdin,
 * --count, --rate) and the streamed mode (-l, one message per stdin line, pipelined with a
 * bounded window of unacknowledged sends). The REPL (-i) is in repl.c. */
#include "imsend.h"

#include <errno.h>
#include <event2/event.h>
#include <getopt.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define PROG "imsend"
#define DEFAULT_TIMEOUT_MS 10000u
#define DEFAULT_WINDOW 100u
#define MAX_WINDOW 10000u
#define MAX_FILE (64u * 1024u * 1024u)
#define MAX_LINE (16u * 1024u * 1024u)
#define OUTPUT_HIGH (1024u * 1024u) /* --ack none: stop reading stdin above this */
#define READ_CHUNK 65536

enum {
    OPT_STDIN = 0x200,
    OPT_ACK,
    OPT_ID,
    OPT_COUNT,
    OPT_RATE,
    OPT_TRANSIENT,
    OPT_TIMEOUT,
    OPT_WINDOW,
    OPT_JOIN,
    OPT_PASSWORD_ARG
};

static const char usage_text[] =
    "NAME\n"
    "  imsend - send instant messages over IMP\n"
    "\n"
    "SYNOPSIS\n"
    "  imsend [OPTIONS] (-t USER | -g ROOM | -b) MESSAGE...\n"
    "  imsend [OPTIONS] (-t USER | -g ROOM | -b) (-f FILE | --stdin | -l | -n)\n"
    "  imsend [OPTIONS] -i [-t USER | -g ROOM]\n"
    "\n"
    "DESCRIPTION\n"
    "  Sends one message (the MESSAGE arguments joined by single spaces, like mosquitto_pub\n"
    "  -m), a file, all of standard input, or one message per input line, and exits once the\n"
    "  server has acknowledged every message (ACK stored, or delivered with --ack delivered).\n"
    "  With -i it is an interactive chat client with line editing.\n"
    "\n"
    "TARGET\n"
    "  -t, --to USER            a direct message to USER\n"
    "  -g, --room ROOM          a message to ROOM (you must be a member; see --join)\n"
    "      --join               join ROOM first (JOIN creates the room if needed)\n"
    "  -b, --broadcast          a message to every user (administrators only)\n"
    "\n"
    "BODY\n"
    "  MESSAGE...               the arguments, joined by spaces, as one message\n"
    "  -f, --file FILE          the whole file as one message (binary-safe; - is stdin)\n"
    "      --stdin              all of standard input as one message\n"
    "  -l, --lines              one message per line of standard input (the newline is not\n"
    "                           sent; empty lines are empty messages), streamed: messages are\n"
    "                           sent while input arrives (tail -f log | imsend -l -g ops)\n"
    "  -n, --null               one empty message\n"
    "\n"
    "MESSAGE OPTIONS\n"
    "      --ack MODE           none, stored (default) or delivered: when the server answers.\n"
    "                           none does not wait: a refusal is reported (exit 5) only\n"
    "                           when it arrives before the session ends\n"
    "      --id KEY             idempotency key (CLIENT_MSG_ID): a retry with the same KEY is\n"
    "                           not stored twice. With --count N or -l the keys are KEY-1,\n"
    "                           KEY-2, ... (KEY-n for the n-th message or line)\n"
    "  -c, --count N            send the message N times (default 1)\n"
    "  -r, --rate R             at most R messages per second (R, R/s or R/m)\n"
    "      --transient          transient class: only for sessions online now, never stored\n"
    "  -H, --header KEY=VALUE   add a header (repeatable)\n"
    "      --timeout T          wait at most T for each ACK (default 10s; 0 = forever)\n"
    "      --window N           unacknowledged messages in flight at most (default 100)\n"
    "\n"
    "INTERACTIVE\n"
    "  -i, --interactive        chat REPL (GNU readline): /to USER, /join ROOM, /leave, /who,\n"
    "                           /rooms, /history [N], /status online|away|busy [\"text\"],\n"
    "                           /help, /quit; other lines are sent to the current target.\n"
    "                           Tab completes commands, online users and rooms. History:\n"
    "                           $IMSEND_HISTORY or ~/.imsend_history\n"
    "\n"
    "COMMON OPTIONS\n"
    "%s"
    "%s"
    "  -h, --help               this text\n"
    "\n"
    "OUTPUT\n"
    "  Nothing on stdout unless --json: then one JSON object per ACK, e.g.\n"
    "  "
    "{\"v\":1,\"type\":\"ack\",\"req\":2,\"client_msg_id\":\"k\",\"id\":17,\"outcome\":\"stored\","
    "\n"
    "   \"duplicate\":false,\"code\":0}, and an {\"v\":1,\"type\":\"error\",...} object when "
    "imsend\n"
    "  fails for another reason. Diagnostics go to stderr, e.g.\n"
    "  imsend: refused: 500 NO_SUCH_USER\n"
    "\n"
    "ENVIRONMENT\n"
    "  IMP_SERVER, IMP_USER, IMP_PASSWORD, IMP_CAFILE (with --tls), IMSEND_HISTORY\n"
    "\n"
    "EXIT STATUS\n"
    "  0  every message was acknowledged (or -i ended with /quit or end of input)\n"
    "  1  expectation not met\n"
    "  2  usage or configuration error (bad option, no password, unreadable file)\n"
    "  3  cannot connect (nothing listening, unknown host, server full, banned, TLS\n"
    "     handshake or certificate verification failed)\n"
    "  4  authentication refused (wrong user or password, user exists, ...)\n"
    "  5  a message or request was refused by the server (the code is printed)\n"
    "  6  timeout (no ACK within --timeout, no login within --connect-timeout)\n"
    "  7  connection lost (server closed or died, protocol error)\n"
    "\n"
    "EXAMPLES\n"
    "  imsend -u alice -t bob \"lunch?\"\n"
    "  tail -f /var/log/syslog | imsend -u ops-bot -l -g ops --join\n"
    "  imsend -u alice -t bob --id invoice-42 -f invoice.pdf --json\n"
    "  imsend -s chat.example.org:7643 --cafile ca.pem -u alice -t bob \"over TLS\"\n";

#if defined(__GNUC__)
__attribute__((format(printf, 1, 2)))
#endif
static void
usage_error(const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fprintf(stderr, PROG ": %s\n" PROG ": try '" PROG " --help'\n", msg);
}

/* ---- body sources ----------------------------------------------------------------------- */

static int read_all(FILE *f, char **out, size_t *len, const char *what)
{
    size_t cap = 65536, n = 0;
    char *b = malloc(cap);
    if (!b) {
        fprintf(stderr, PROG ": out of memory\n");
        return -1;
    }
    for (;;) {
        if (n == cap) {
            if (cap >= MAX_FILE) {
                fprintf(stderr, PROG ": %s is larger than %u bytes\n", what, MAX_FILE);
                free(b);
                return -1;
            }
            cap *= 2;
            char *nb = realloc(b, cap);
            if (!nb) {
                free(b);
                fprintf(stderr, PROG ": out of memory\n");
                return -1;
            }
            b = nb;
        }
        size_t r = fread(b + n, 1, cap - n, f);
        n += r;
        if (r == 0) {
            if (ferror(f)) {
                fprintf(stderr, PROG ": cannot read %s: %s\n", what, strerror(errno));
                free(b);
                return -1;
            }
            break;
        }
    }
    *out = b;
    *len = n;
    return 0;
}

/* ---- sending ------------------------------------------------------------------------------ */

static void finish_now(imsend *s, int status, int code, const char *text)
{
    if (s->exit_status == 0)
        s->exit_status = status;
    s->done = 1;
    imt_client_close(s->c, code, text);
}

static void arm_timeout(imsend *s)
{
    if (!s->timeout_ms || !s->ev_timeout)
        return;
    if (s->inflight == 0) {
        event_del(s->ev_timeout);
        return;
    }
    struct timeval tv = {(time_t)(s->timeout_ms / 1000),
                         (suseconds_t)(s->timeout_ms % 1000) * 1000};
    evtimer_add(s->ev_timeout, &tv);
}

static int send_one(imsend *s, const void *body, size_t len)
{
    imt_send_args a;
    imt_send_args_init(&a);
    a.target_kind = s->kind;
    a.target = s->kind == IMP_TARGET_BROADCAST ? NULL : s->target;
    char cmid[80];
    uint64_t n = s->sent + 1;
    if (s->id_key) {
        if (s->lines || s->count > 1)
            snprintf(cmid, sizeof cmid, "%s-%llu", s->id_key, (unsigned long long)n);
        else
            snprintf(cmid, sizeof cmid, "%s", s->id_key);
        a.client_msg_id = cmid;
    }
    a.cls = s->transient ? IMP_CLASS_TRANSIENT : -1;
    a.ack_mode = s->ack_mode == IMP_ACK_STORED ? -1 : s->ack_mode;
    if (s->has_headers) {
        a.headers = s->headers;
        a.headers_len = s->headers_len;
    }
    a.body = body;
    a.body_len = len;
    int r = imt_client_send(s->c, &a, NULL);
    if (r < 0) {
        char cs[64], text[200];
        snprintf(text, sizeof text, "cannot send message %llu: %s (%s)", (unsigned long long)n,
                 imt_code_str(r, cs, sizeof cs), imp_strerror(r));
        fprintf(stderr, PROG ": %s\n", text);
        finish_now(s, imt_exit_status(r), 0, NULL);
        return -1;
    }
    s->sent++;
    if (s->ack_mode != IMP_ACK_NONE) {
        if (s->inflight++ == 0)
            arm_timeout(s);
    }
    if (s->rate_interval_ms)
        s->next_send_ms = imt_now_ms() + s->rate_interval_ms;
    return 0;
}

static void check_done(imsend *s)
{
    if (s->done || s->inflight > 0)
        return;
    int all = s->lines ? (s->input_eof && s->llen == 0) : s->sent >= s->count;
    if (!all)
        return;
    s->done = 1;
    /* LOGOUT. With --ack none, refusal ACKs that the server sends after its answer to LOGOUT
     * are not seen (imd answers LOGOUT at once but ACKs after its commit): documented. */
    imt_client_close(s->c, 0, NULL);
}

static void pause_input(imsend *s)
{
    if (s->ev_stdin && !s->input_paused) {
        event_del(s->ev_stdin);
        s->input_paused = 1;
    }
}

static void resume_input(imsend *s)
{
    if (!s->ev_stdin || s->input_eof)
        return;
    if (s->stdin_regular) {
        struct timeval tv = {0, 0};
        evtimer_add(s->ev_stdin, &tv);
    } else {
        event_add(s->ev_stdin, NULL);
    }
    s->input_paused = 0;
}

/* 1 when another message may go now; otherwise 0, with a timer armed when the rate limit is
 * what holds it back (ACKs and on_drain call pump again for the window). */
static int may_send(imsend *s)
{
    if (s->ack_mode != IMP_ACK_NONE && s->inflight >= s->window)
        return 0;
    if (s->ack_mode == IMP_ACK_NONE && imt_client_output_pending(s->c) > OUTPUT_HIGH)
        return 0;
    if (s->rate_interval_ms) {
        uint64_t now = imt_now_ms();
        if (now < s->next_send_ms) {
            uint64_t w = s->next_send_ms - now;
            struct timeval tv = {(time_t)(w / 1000), (suseconds_t)(w % 1000) * 1000};
            evtimer_add(s->ev_pump, &tv);
            return 0;
        }
    }
    return 1;
}

static void pump(imsend *s)
{
    if (!s->sending || s->done)
        return;
    if (!s->lines) {
        while (s->sent < s->count && may_send(s))
            if (send_one(s, s->body, s->body_len) != 0)
                return;
        check_done(s);
        return;
    }
    for (;;) {
        if (s->done)
            return;
        char *nl = s->llen ? memchr(s->lbuf, '\n', s->llen) : NULL;
        if (!nl && !(s->input_eof && s->llen > 0)) {
            if (s->input_eof) {
                check_done(s);
                return;
            }
            if (s->llen >= MAX_LINE) {
                fprintf(stderr, PROG ": line %llu is longer than %u bytes\n",
                        (unsigned long long)s->lineno + 1, MAX_LINE);
                finish_now(s, IMT_EXIT_REFUSED, 0, NULL);
                return;
            }
            resume_input(s); /* need more input */
            return;
        }
        if (!may_send(s)) {
            pause_input(s);
            return;
        }
        size_t len = nl ? (size_t)(nl - s->lbuf) : s->llen;
        s->lineno++;
        if (send_one(s, s->lbuf, len) != 0)
            return;
        size_t used = nl ? len + 1 : len;
        memmove(s->lbuf, s->lbuf + used, s->llen - used);
        s->llen -= used;
    }
}

static void on_stdin(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    (void)fd;
    imsend *s = arg;
    if (s->llen + READ_CHUNK > s->lcap) {
        size_t cap = s->lcap ? s->lcap * 2 : 4 * READ_CHUNK;
        while (cap < s->llen + READ_CHUNK)
            cap *= 2;
        char *b = realloc(s->lbuf, cap);
        if (!b) {
            fprintf(stderr, PROG ": out of memory\n");
            finish_now(s, IMT_EXIT_USAGE, 0, NULL);
            return;
        }
        s->lbuf = b;
        s->lcap = cap;
    }
    ssize_t n = read(STDIN_FILENO, s->lbuf + s->llen, READ_CHUNK);
    if (n < 0) {
        if (errno == EAGAIN || errno == EINTR)
            return;
        fprintf(stderr, PROG ": reading stdin: %s\n", strerror(errno));
        pause_input(s);
        finish_now(s, IMT_EXIT_USAGE, 0, NULL);
        return;
    }
    if (n == 0) {
        s->input_eof = 1;
        pause_input(s);
    } else {
        s->llen += (size_t)n;
    }
    /* a regular file re-arms through pump -> resume_input */
    if (s->stdin_regular)
        s->input_paused = 1;
    pump(s);
}

static void on_pump_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    pump(arg);
}

static void on_ack_timeout(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    imsend *s = arg;
    char text[200];
    snprintf(text, sizeof text, "602 TIMEOUT: no ACK within %u ms (%llu message%s unacknowledged)",
             (unsigned)s->timeout_ms, (unsigned long long)s->inflight, s->inflight == 1 ? "" : "s");
    /* reported by cb_close (stderr, and the JSON error object) with status 6 */
    s->done = 1;
    imt_client_close(s->c, IMP_ERR_TIMEOUT, text);
}

/* ---- client callbacks -------------------------------------------------------------------- */

static void cb_ready(imt_client *c, const imt_session *sess, void *ud)
{
    imsend *s = ud;
    (void)sess;
    if (s->join) {
        int r = imt_client_join(c, s->target, &s->join_req);
        if (r < 0) {
            fprintf(stderr, PROG ": cannot join %s: %s\n", s->target, imp_strerror(r));
            finish_now(s, imt_exit_status(r), 0, NULL);
        }
        return;
    }
    s->sending = 1;
    pump(s);
}

static void cb_ok(imt_client *c, uint32_t req, const imp_msg *m, void *ud)
{
    (void)c;
    (void)m;
    imsend *s = ud;
    if (req && req == s->join_req) {
        s->sending = 1;
        pump(s);
    }
}

static void print_refusal(imsend *s, int code, const char *text)
{
    char ct[700];
    fprintf(stderr, PROG ": refused: %s%s\n", imt_code_text(code, text, ct, sizeof ct),
            code == -IMP_ERR_NOT_MEMBER && s->kind == IMP_TARGET_ROOM
                ? " (not a member of the room: use --join)"
                : "");
}

static void cb_error(imt_client *c, uint32_t req, int code, const char *text,
                     uint32_t retry_after_ms, void *ud)
{
    (void)c;
    (void)req;
    (void)retry_after_ms;
    imsend *s = ud;
    print_refusal(s, code, text);
    int st = imt_exit_status(code);
    finish_now(s, st == IMT_EXIT_LOST ? IMT_EXIT_REFUSED : st, 0, NULL);
}

static void cb_ack(imt_client *c, const imt_ack *a, void *ud)
{
    (void)c;
    imsend *s = ud;
    if (s->o.json) {
        imt_json_ack(&s->json, a);
        imt_json_emit(&s->json, stdout);
    }
    if (s->ack_mode != IMP_ACK_NONE && s->inflight > 0)
        s->inflight--;
    arm_timeout(s);
    if (a->outcome == IMP_OUTCOME_REFUSED) {
        print_refusal(s, a->code, a->text);
        int st = imt_exit_status(a->code);
        if (s->exit_status == 0)
            s->exit_status = st == IMT_EXIT_LOST ? IMT_EXIT_REFUSED : st;
        s->done = 1;
        imt_client_close(s->c, 0, NULL);
        return;
    }
    if (s->o.verbose)
        fprintf(stderr, PROG ": %s as message %llu%s\n", imt_outcome_name(a->outcome),
                (unsigned long long)a->msg_id, a->duplicate ? " (duplicate)" : "");
    pump(s);
}

static void cb_drain(imt_client *c, void *ud)
{
    (void)c;
    pump(ud);
}

static void cb_close(imt_client *c, const imt_result *r, void *ud)
{
    (void)c;
    imsend *s = ud;
    if (r->status != 0) {
        if (s->exit_status == 0) {
            s->exit_status = r->status;
            char cs[64];
            switch (r->status) {
            case IMT_EXIT_AUTH:
                fprintf(stderr, PROG ": login refused: %s\n", r->text);
                break;
            case IMT_EXIT_TIMEOUT:
                fprintf(stderr, PROG ": timeout: %s\n", r->text);
                break;
            case IMT_EXIT_LOST:
                if (r->code && r->code != -IMP_ERR_CONNECTION_LOST &&
                    !strstr(r->text, imt_code_str(r->code, cs, sizeof cs)))
                    fprintf(stderr, PROG ": connection lost: %s: %s\n",
                            imt_code_str(r->code, cs, sizeof cs), r->text);
                else if (strstr(r->text, "connection"))
                    fprintf(stderr, PROG ": %s\n", r->text);
                else
                    fprintf(stderr, PROG ": connection lost: %s\n", r->text);
                break;
            default:
                fprintf(stderr, PROG ": %s\n", r->text);
                break;
            }
            if (s->o.json) {
                imt_json_error(&s->json, r);
                imt_json_emit(&s->json, stdout);
            }
        }
    } else if (!s->done && !s->interactive) {
        /* closed before the work was done (cannot happen without an error; be safe) */
        if (s->exit_status == 0)
            s->exit_status = IMT_EXIT_LOST;
    }
    if (s->exit_status == 0 && s->inflight > 0)
        s->exit_status = IMT_EXIT_LOST;
    event_base_loopexit(s->base, NULL);
}

/* ---- options ----------------------------------------------------------------------------- */

static int parse_rate(const char *arg, uint32_t *interval_ms)
{
    char *end;
    errno = 0;
    double r = strtod(arg, &end);
    double per = 1.0;
    if (end == arg || errno)
        return -1;
    if (strcmp(end, "/m") == 0)
        per = 60.0;
    else if (*end && strcmp(end, "/s") != 0)
        return -1;
    if (!(r > 0) || r > 1e6)
        return -1;
    double ms = 1000.0 * per / r;
    if (ms < 1)
        ms = 1; /* faster than 1000/s: no pacing beyond the window */
    if (ms > 86400000.0)
        return -1;
    *interval_ms = (uint32_t)(ms + 0.5);
    return 0;
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        IMT_OPTS_LONG,
        IMT_OPTS_TLS_LONG,
        {"to", required_argument, NULL, 't'},
        {"room", required_argument, NULL, 'g'},
        {"broadcast", no_argument, NULL, 'b'},
        {"join", no_argument, NULL, OPT_JOIN},
        {"file", required_argument, NULL, 'f'},
        {"stdin", no_argument, NULL, OPT_STDIN},
        {"lines", no_argument, NULL, 'l'},
        {"null", no_argument, NULL, 'n'},
        {"ack", required_argument, NULL, OPT_ACK},
        {"id", required_argument, NULL, OPT_ID},
        {"count", required_argument, NULL, 'c'},
        {"rate", required_argument, NULL, 'r'},
        {"transient", no_argument, NULL, OPT_TRANSIENT},
        {"header", required_argument, NULL, 'H'},
        {"timeout", required_argument, NULL, OPT_TIMEOUT},
        {"window", required_argument, NULL, OPT_WINDOW},
        {"interactive", no_argument, NULL, 'i'},
        {"help", no_argument, NULL, 'h'},
        {"password", required_argument, NULL, OPT_PASSWORD_ARG},
        {NULL, 0, NULL, 0},
    };
    static imsend s; /* large (headers buffer): not on the stack */
    memset(&s, 0, sizeof s);
    imt_opts_init(&s.o, PROG);
    imt_json_init(&s.json);
    s.ack_mode = IMP_ACK_STORED;
    s.count = 1;
    s.timeout_ms = DEFAULT_TIMEOUT_MS;
    s.window = DEFAULT_WINDOW;
    const char *file = NULL;
    int use_stdin = 0, empty = 0, targets = 0;
    imp_builder hb;
    imp_builder_init(&hb, s.headers, sizeof s.headers);

    opterr = 0;
    int ch;
    while ((ch = getopt_long(argc, argv, ":" IMT_OPTS_SHORT "t:g:bf:lnc:r:H:ih", longopts, NULL)) !=
           -1) {
        int r = imt_opts_handle(&s.o, ch, optarg);
        if (r > 0)
            continue;
        if (r < 0)
            return IMT_EXIT_USAGE;
        uint64_t v;
        switch (ch) {
        case 't':
        case 'g':
            s.kind = ch == 't' ? IMP_TARGET_USER : IMP_TARGET_ROOM;
            s.target = optarg;
            targets++;
            if (!imp_name_valid((const uint8_t *)optarg, strlen(optarg))) {
                usage_error("bad %s name '%s' (1-32 of A-Z a-z 0-9 _ - ., starting with a "
                            "letter or digit)",
                            ch == 't' ? "user" : "room", optarg);
                return IMT_EXIT_USAGE;
            }
            break;
        case 'b':
            s.kind = IMP_TARGET_BROADCAST;
            targets++;
            break;
        case OPT_JOIN:
            s.join = 1;
            break;
        case 'f':
            file = optarg;
            break;
        case OPT_STDIN:
            use_stdin = 1;
            break;
        case 'l':
            s.lines = 1;
            break;
        case 'n':
            empty = 1;
            break;
        case OPT_ACK:
            if (strcmp(optarg, "none") == 0)
                s.ack_mode = IMP_ACK_NONE;
            else if (strcmp(optarg, "stored") == 0)
                s.ack_mode = IMP_ACK_STORED;
            else if (strcmp(optarg, "delivered") == 0)
                s.ack_mode = IMP_ACK_DELIVERED;
            else {
                usage_error("bad --ack mode '%s' (none, stored or delivered)", optarg);
                return IMT_EXIT_USAGE;
            }
            break;
        case OPT_ID:
            s.id_key = optarg;
            break;
        case 'c':
            if (imt_parse_u64(optarg, 1, 100000000, &v) != 0) {
                usage_error("bad --count '%s' (1 to 100000000)", optarg);
                return IMT_EXIT_USAGE;
            }
            s.count = v;
            break;
        case 'r':
            if (parse_rate(optarg, &s.rate_interval_ms) != 0) {
                usage_error("bad --rate '%s' (messages per second: R, R/s or R/m)", optarg);
                return IMT_EXIT_USAGE;
            }
            break;
        case OPT_TRANSIENT:
            s.transient = 1;
            break;
        case 'H': {
            const char *eq = strchr(optarg, '=');
            if (!eq || eq == optarg) {
                usage_error("bad header '%s' (KEY=VALUE)", optarg);
                return IMT_EXIT_USAGE;
            }
            int hr = imp_headers_add(&hb, optarg, (size_t)(eq - optarg), eq + 1, strlen(eq + 1));
            if (hr != 0) {
                usage_error("bad header '%s' (key: 1-64 of A-Z a-z 0-9 - _ .; value: UTF-8 up "
                            "to 1024 bytes; no repeated key; at most 32)",
                            optarg);
                return IMT_EXIT_USAGE;
            }
            s.has_headers = 1;
            s.headers_len = hb.len;
            break;
        }
        case OPT_TIMEOUT:
            if (imt_parse_duration_ms(optarg, &s.timeout_ms) != 0) {
                usage_error("bad --timeout '%s' (e.g. 10, 2.5s, 500ms)", optarg);
                return IMT_EXIT_USAGE;
            }
            break;
        case OPT_WINDOW:
            if (imt_parse_u64(optarg, 1, MAX_WINDOW, &v) != 0) {
                usage_error("bad --window '%s' (1 to 10000)", optarg);
                return IMT_EXIT_USAGE;
            }
            s.window = (uint32_t)v;
            break;
        case 'i':
            s.interactive = 1;
            break;
        case 'h':
            printf(usage_text, imt_opts_help, imt_opts_tls_help);
            return 0;
        case OPT_PASSWORD_ARG:
            usage_error("%s", "passwords are not accepted on the command line: use "
                              "--password-file FILE, IMP_PASSWORD or the prompt");
            return IMT_EXIT_USAGE;
        case ':':
            usage_error("option '%s' needs a value", argv[optind - 1]);
            return IMT_EXIT_USAGE;
        default:
            if (optopt)
                fprintf(stderr, PROG ": unknown option '-%c'\n", optopt);
            else
                fprintf(stderr, PROG ": unknown option '%s'\n", argv[optind - 1]);
            fprintf(stderr, PROG ": try '" PROG " --help'\n");
            return IMT_EXIT_USAGE;
        }
    }
    if (s.o.show_version) {
        imt_print_version(&s.o);
        return 0;
    }

    /* ---- consistency ---- */
    int nargs = argc - optind;
    int sources = (nargs > 0) + (file != NULL) + use_stdin + s.lines + empty;
    if (targets > 1) {
        usage_error("%s", "give one target: -t USER, -g ROOM or -b");
        return IMT_EXIT_USAGE;
    }
    if (s.interactive) {
        if (sources || s.kind == IMP_TARGET_BROADCAST) {
            usage_error("%s", "-i takes no message, -f, --stdin, -l, -n or -b");
            return IMT_EXIT_USAGE;
        }
    } else {
        if (targets == 0) {
            usage_error("%s", "no target: give -t USER, -g ROOM or -b (or -i)");
            return IMT_EXIT_USAGE;
        }
        if (sources == 0) {
            usage_error("%s", "no message: give MESSAGE, -f FILE, --stdin, -l or -n");
            return IMT_EXIT_USAGE;
        }
        if (sources > 1) {
            usage_error("%s", "give one message source: MESSAGE, -f FILE, --stdin, -l or -n");
            return IMT_EXIT_USAGE;
        }
    }
    if (s.join && s.kind != IMP_TARGET_ROOM) {
        usage_error("%s", "--join needs -g ROOM");
        return IMT_EXIT_USAGE;
    }
    if (s.lines && s.count != 1) {
        usage_error("%s", "--count cannot be used with -l");
        return IMT_EXIT_USAGE;
    }
    if (s.id_key) {
        size_t kl = strlen(s.id_key);
        size_t max = (s.lines || s.count > 1) ? 40 : 64;
        if (kl == 0 || kl > max || !imp_utf8_valid((const uint8_t *)s.id_key, kl)) {
            char msg[120];
            snprintf(msg, sizeof msg, "bad --id: 1 to %zu bytes of UTF-8 text", max);
            usage_error("%s", msg);
            return IMT_EXIT_USAGE;
        }
    }

    /* ---- the body (before connecting: a bad file is a usage error) ---- */
    if (nargs > 0) {
        size_t len = 0;
        for (int i = optind; i < argc; i++)
            len += strlen(argv[i]) + 1;
        s.body = malloc(len);
        if (!s.body)
            return IMT_EXIT_USAGE;
        s.body_len = 0;
        for (int i = optind; i < argc; i++) {
            size_t k = strlen(argv[i]);
            if (i > optind)
                s.body[s.body_len++] = ' ';
            memcpy(s.body + s.body_len, argv[i], k);
            s.body_len += k;
        }
    } else if (file) {
        FILE *f = strcmp(file, "-") == 0 ? stdin : fopen(file, "rb");
        if (!f) {
            fprintf(stderr, PROG ": cannot open %s: %s\n", file, strerror(errno));
            return IMT_EXIT_USAGE;
        }
        int r = read_all(f, &s.body, &s.body_len, file);
        if (f != stdin)
            fclose(f);
        if (r != 0)
            return IMT_EXIT_USAGE;
    } else if (use_stdin) {
        if (read_all(stdin, &s.body, &s.body_len, "stdin") != 0)
            return IMT_EXIT_USAGE;
    } else if (empty) {
        s.body = NULL;
        s.body_len = 0;
    }

    if (imt_opts_finish(&s.o, 1) != 0)
        return IMT_EXIT_USAGE;

    signal(SIGPIPE, SIG_IGN);
    s.base = event_base_new();
    if (!s.base) {
        fprintf(stderr, PROG ": cannot create the event loop\n");
        return IMT_EXIT_USAGE;
    }
    imt_client_config cfg;
    imt_client_config_init(&cfg);
    imt_opts_client_config(&s.o, &cfg);
    cfg.auto_delivered = s.interactive;
    cfg.ping_interval_ms = s.interactive ? 20000 : 0;
    cfg.agent = "imsend/" IMP_LIB_VERSION;
    imt_callbacks cb;
    memset(&cb, 0, sizeof cb);
    int status;
    if (s.interactive) {
        status = imsend_repl_run(&s);
    } else {
        cb.on_ready = cb_ready;
        cb.on_ok = cb_ok;
        cb.on_error = cb_error;
        cb.on_ack = cb_ack;
        cb.on_drain = cb_drain;
        cb.on_close = cb_close;
        s.c = imt_client_new(s.base, &cfg, &cb, &s);
        s.ev_pump = evtimer_new(s.base, on_pump_timer, &s);
        s.ev_timeout = evtimer_new(s.base, on_ack_timeout, &s);
        if (s.lines) {
            struct stat st;
            s.stdin_regular = fstat(STDIN_FILENO, &st) == 0 && !S_ISFIFO(st.st_mode) &&
                              !S_ISSOCK(st.st_mode) && !S_ISCHR(st.st_mode);
            s.ev_stdin = s.stdin_regular
                             ? evtimer_new(s.base, on_stdin, &s)
                             : event_new(s.base, STDIN_FILENO, EV_READ | EV_PERSIST, on_stdin, &s);
            s.input_paused = 1;
        }
        if (!s.c || !s.ev_pump || !s.ev_timeout || (s.lines && !s.ev_stdin)) {
            fprintf(stderr, PROG ": out of memory\n");
            return IMT_EXIT_USAGE;
        }
        imt_client_start(s.c);
        event_base_dispatch(s.base);
        status = s.exit_status;
        imt_client_free(s.c);
        if (s.ev_stdin)
            event_free(s.ev_stdin);
        event_free(s.ev_pump);
        event_free(s.ev_timeout);
    }
    event_base_free(s.base);
    free(s.body);
    free(s.lbuf);
    imt_json_free(&s.json);
    imt_opts_free(&s.o);
    return status;
}
