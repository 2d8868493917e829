/* imwatch live modes on the shared client layer (tools/common): messages, --stats, --monitor,
 * and the listings --who and --rooms (every page of WHO / ROOMS, one name per line, then exit).
 *
 * Order of events: connect and log in (LOGIN LAST_SEQ = --since); then the setup requests
 * (JOIN per -g room, MEMBERS of those rooms for a bare --presence, SUBSCRIBE, MONITOR, the
 * first STATS) each answered before the watch counts as ready. Messages that arrive before
 * that (the offline queue comes right after AUTH_OK) are held and printed once ready, after the
 * --ready line, so a script that waits for "ready" sees every message after it.
 *
 * Acknowledgement: DELIVERED is cumulative (IMP-DELIV-003), so imwatch acknowledges the
 * highest SEQ it has printed (or filtered out), batched: at most every ACK_DELAY_MS or every
 * ACK_BATCH messages, and always before it stops. stdout is flushed before each DELIVERED, so
 * a message is never acknowledged before it was handed to the output (IMP-DELIV-005: at least
 * once for the consumer). Messages not yet printed when imwatch stops (past -C, after an
 * --until match) are not acknowledged and stay queued.
 */
#include "imwatch.h"

#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "imt_json.h"

#define ACK_DELAY_MS 200
#define ACK_BATCH 64
#define MAX_SETUP 256
#define MAX_SUBSCRIBE 1000 /* IMP_LIST_MAX_NAMES */

enum setup_kind { SU_JOIN = 1, SU_MEMBERS, SU_SUBSCRIBE, SU_MONITOR, SU_STATS, SU_LIST };

struct setup {
    uint32_t req;
    int kind;
    const char *room;
};

/* A message held until the watch is ready: an owned copy of the view. */
struct held {
    struct held *next;
    imt_message m;
    uint8_t *data; /* headers then body */
};

struct stat_row {
    char name[IMP_STAT_NAME_MAX + 1];
    uint64_t value;
    int gauge; /* seen decreasing, or known as a gauge: no rate */
};

typedef struct iw {
    iw_config *cfg;
    struct event_base *base;
    imt_client *c;
    struct event *ack_timer, *wait_timer, *stats_timer, *sig_int, *sig_term;
    imt_json j;

    struct setup setup[MAX_SETUP];
    size_t nsetup;
    int setup_started;
    int ready;
    struct held *held_head, *held_tail;
    char **members; /* names collected for a bare --presence */
    size_t nmembers;

    uint64_t printed;       /* records printed (messages, monitor events, stats samples) */
    uint64_t processed_seq; /* highest SEQ printed or filtered out */
    uint64_t acked_seq;     /* highest SEQ acknowledged (AUTH_OK LAST_SEQ included) */
    unsigned unacked;       /* messages processed since the last DELIVERED */
    int done;               /* stop taking messages: -C reached, --until matched, stopping */
    int matched;
    int exit_status; /* set when imwatch decides to stop; -1: not yet */
    int out_error;

    /* --stats */
    struct stat_row *rows;
    size_t nrows;
    uint64_t prev_time; /* ms of the previous sample (SERVER_TIME or local), 0: none */
    int tty;
} iw;

static const char *const known_gauges[] = {
    "connections",         "sessions", "users_online", "hash_pending", "hash_running_max",
    "store_commit_ms_max", NULL};

static void stop(iw *w, int status);
static int add_setup(iw *w, int kind, const char *room, int r, uint32_t req);

static int quiet(const iw *w)
{
    return w->cfg->o->quiet;
}

/* A diagnostic on stderr ("imwatch: WHAT: 502 FORBIDDEN (text)") and, with --json, the
 * schema's error object on stdout. */
static void note_error(iw *w, int status, int code, const char *what, const char *text)
{
    char cs[64];
    if (!quiet(w) || status >= IW_EXIT_USAGE) {
        fprintf(stderr, "imwatch: %s", what);
        /* The client layer's close texts already name the code ("400 AUTH_FAILED: ..."). */
        if (code && !strstr(what, imt_code_str(code, cs, sizeof cs)))
            fprintf(stderr, ": %s", imt_code_str(code, cs, sizeof cs));
        if (text && *text)
            fprintf(stderr, " (%s)", text);
        fputc('\n', stderr);
    }
    if (w->cfg->o->json) {
        imt_result r;
        memset(&r, 0, sizeof r);
        r.status = status;
        r.code = code;
        snprintf(r.text, sizeof r.text, "%s", text && *text ? text : what);
        imt_json_reset(&w->j);
        imt_json_error(&w->j, &r);
        imt_json_emit(&w->j, stdout);
    }
}

/* ---- output and acknowledgement ------------------------------------------------------------ */

static int flush_out(iw *w)
{
    if (fflush(stdout) != 0 || ferror(stdout)) {
        if (!w->out_error)
            fprintf(stderr, "imwatch: stdout: %s\n", strerror(errno));
        w->out_error = 1;
        return -1;
    }
    return 0;
}

/* Send DELIVERED for what was printed, after the output has really left. */
static void ack_now(iw *w)
{
    if (w->cfg->no_ack || w->processed_seq <= w->acked_seq || !w->c)
        return;
    if (flush_out(w) != 0)
        return; /* never acknowledge what the consumer did not get */
    if (imt_client_delivered(w->c, w->processed_seq) == 0) {
        w->acked_seq = w->processed_seq;
        w->unacked = 0;
    }
}

static void ack_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    ack_now(arg);
}

static void ack_later(iw *w)
{
    if (w->cfg->no_ack)
        return;
    if (++w->unacked >= ACK_BATCH) {
        ack_now(w);
        return;
    }
    if (!evtimer_pending(w->ack_timer, NULL)) {
        struct timeval tv = {0, ACK_DELAY_MS * 1000};
        evtimer_add(w->ack_timer, &tv);
    }
}

static int room_selected(const iw *w, const char *room)
{
    for (size_t i = 0; i < w->cfg->nrooms; i++)
        if (imp_name_equal((const uint8_t *)room, strlen(room), (const uint8_t *)w->cfg->rooms[i],
                           strlen(w->cfg->rooms[i])))
            return 1;
    return 0;
}

static int until_matches(const iw *w, const imt_message *m)
{
    regmatch_t pm[1];
    /* REG_STARTEND: the body is not NUL-terminated and may hold NUL bytes. */
    pm[0].rm_so = 0;
    pm[0].rm_eo = (regoff_t)m->body.len;
    const char *s = m->body.len ? (const char *)m->body.p : "";
    return regexec(&w->cfg->until, s, 1, pm, REG_STARTEND) == 0;
}

static void print_message(iw *w, const imt_message *m)
{
    const iw_config *cfg = w->cfg;
    if (cfg->nul) {
        if (m->body.len)
            fwrite(m->body.p, 1, m->body.len, stdout);
        fputc('\0', stdout);
    } else if (cfg->o->json) {
        imt_json_reset(&w->j);
        imt_json_message(&w->j, m);
        imt_json_emit(&w->j, stdout);
    } else if (cfg->format) {
        const char *json = NULL;
        if (iw_format_needs_json(cfg->format)) {
            imt_json_reset(&w->j);
            imt_json_message(&w->j, m);
            json = w->j.buf;
        }
        iw_format_message(stdout, cfg->format, m, json);
        if (!cfg->no_newline)
            fputc('\n', stdout);
    } else {
        iw_print_default(stdout, m);
    }
    flush_out(w); /* record by record, for people and pipelines */
}

static void process_message(iw *w, const imt_message *m)
{
    const iw_config *cfg = w->cfg;
    if (w->done)
        return; /* past -C or --until: left unacknowledged, queued for the next reader */
    int show = 1;
    if (cfg->nrooms > 0) {
        if (m->target_kind == IMP_TARGET_ROOM)
            show = room_selected(w, m->target);
        else
            show = !cfg->rooms_only;
    }
    if (show) {
        print_message(w, m);
        w->printed++;
    }
    if (m->seq > w->processed_seq) {
        w->processed_seq = m->seq;
        ack_later(w);
    }
    if (!show)
        return;
    if (w->out_error) {
        stop(w, IW_EXIT_USAGE);
    } else if (cfg->has_until && until_matches(w, m)) {
        w->matched = 1;
        stop(w, IW_EXIT_OK);
    } else if (cfg->count && w->printed >= cfg->count) {
        /* With --until, -C bounds how many messages may be examined for a match. */
        stop(w, cfg->has_until ? IW_EXIT_UNMET : IW_EXIT_OK);
    }
}

static void hold_message(iw *w, const imt_message *m)
{
    struct held *h = calloc(1, sizeof *h);
    uint8_t *data = malloc(m->headers.len + m->body.len + 1);
    if (!h || !data) {
        free(h);
        free(data);
        fprintf(stderr, "imwatch: out of memory\n");
        stop(w, IW_EXIT_USAGE);
        return;
    }
    h->m = *m;
    if (m->headers.len)
        memcpy(data, m->headers.p, m->headers.len);
    if (m->body.len)
        memcpy(data + m->headers.len, m->body.p, m->body.len);
    h->m.headers.p = m->headers.len ? data : NULL;
    h->m.body.p = m->body.len ? data + m->headers.len : NULL;
    h->m.m = NULL;
    h->data = data;
    if (w->held_tail)
        w->held_tail->next = h;
    else
        w->held_head = h;
    w->held_tail = h;
}

static void free_held(iw *w)
{
    struct held *h = w->held_head;
    while (h) {
        struct held *n = h->next;
        free(h->data);
        free(h);
        h = n;
    }
    w->held_head = w->held_tail = NULL;
}

static void on_message(imt_client *c, const imt_message *m, void *ud)
{
    iw *w = ud;
    (void)c;
    if (w->cfg->mode != IW_MODE_MESSAGES || m->frame_type != IMP_DELIVER)
        return; /* --stats/--monitor leave the queue alone */
    if (!w->ready)
        hold_message(w, m);
    else
        process_message(w, m);
}

static void on_presence(imt_client *c, const imt_presence *p, void *ud)
{
    iw *w = ud;
    char when[40];
    (void)c;
    if (!w->cfg->presence || w->cfg->nul || w->done)
        return;
    if (w->cfg->o->json) {
        imt_json_reset(&w->j);
        imt_json_presence(&w->j, p);
        imt_json_emit(&w->j, stdout);
        return;
    }
    printf("%s presence %s %s", p->timestamp ? iw_iso_time(when, sizeof when, p->timestamp) : "-",
           p->user, imt_status_name(p->status));
    if (p->has_sessions)
        printf(" (%" PRIu32 " %s)", p->sessions, p->sessions == 1 ? "session" : "sessions");
    if (p->status_text[0]) {
        fputs(" \"", stdout);
        iw_escape(stdout, (const uint8_t *)p->status_text, strlen(p->status_text), 1);
        fputc('"', stdout);
    }
    fputc('\n', stdout);
    fflush(stdout);
}

static void on_monitor(imt_client *c, const imt_monitor_event *e, void *ud)
{
    iw *w = ud;
    char when[40];
    (void)c;
    if (w->cfg->mode != IW_MODE_MONITOR || w->done || !w->ready)
        return;
    if (w->cfg->o->json) {
        imt_json_reset(&w->j);
        imt_json_monitor(&w->j, e);
        imt_json_emit(&w->j, stdout);
    } else {
        printf("%s %s", iw_iso_time(when, sizeof when, e->timestamp), e->event);
        if (e->user[0])
            printf(" user=%s", e->user);
        if (e->text[0]) {
            fputs(" ", stdout);
            iw_escape(stdout, (const uint8_t *)e->text, strlen(e->text), 0);
        }
        fputc('\n', stdout);
        fflush(stdout);
    }
    w->printed++;
    if (w->cfg->count && w->printed >= w->cfg->count)
        stop(w, IW_EXIT_OK);
}

/* ---- --stats -------------------------------------------------------------------------------- */

static struct stat_row *stat_row(iw *w, const uint8_t *name, size_t len)
{
    for (size_t i = 0; i < w->nrows; i++)
        if (strlen(w->rows[i].name) == len && memcmp(w->rows[i].name, name, len) == 0)
            return &w->rows[i];
    struct stat_row *r = realloc(w->rows, (w->nrows + 1) * sizeof *r);
    if (!r)
        return NULL;
    w->rows = r;
    r = &w->rows[w->nrows++];
    memset(r, 0, sizeof *r);
    memcpy(r->name, name, len < IMP_STAT_NAME_MAX ? len : IMP_STAT_NAME_MAX);
    for (size_t i = 0; known_gauges[i]; i++)
        if (strcmp(known_gauges[i], r->name) == 0)
            r->gauge = 1;
    r->value = UINT64_MAX; /* no previous sample */
    return r;
}

static void render_stats(iw *w, const imp_msg *m)
{
    uint64_t now =
        imp_msg_has(m, IMP_T_SERVER_TIME) ? imp_msg_u(m, IMP_T_SERVER_TIME, 0) : imt_now_ms();
    double secs = w->prev_time && now > w->prev_time ? (double)(now - w->prev_time) / 1000.0 : 0;
    char when[40];
    iw_iso_time(when, sizeof when,
                imp_msg_has(m, IMP_T_SERVER_TIME) ? now : (uint64_t)time(NULL) * 1000u);
    imp_bytes rest = imp_msg_b(m, IMP_T_STATS), name;
    uint64_t v;
    int json = w->cfg->o->json;
    if (json) {
        imt_json_reset(&w->j);
        imt_json_obj_begin(&w->j);
        imt_json_key(&w->j, "v");
        imt_json_u64(&w->j, IMT_JSON_SCHEMA_VERSION);
        imt_json_key(&w->j, "type");
        imt_json_str(&w->j, "stats");
        imt_json_key(&w->j, "ts");
        imt_json_u64(&w->j, now);
        imt_json_key(&w->j, "counters");
        imt_json_obj_begin(&w->j);
    } else if (w->tty) {
        printf("\033[H\033[2J"); /* home, clear */
        printf("imwatch --stats  %s  every %.1fs  (Ctrl-C quits)\n\n", when,
               w->cfg->interval_ms / 1000.0);
        printf("%-28s %20s %12s\n", "counter", "value", "per second");
    }
    /* Rates are computed for counters; a value that ever goes down is a gauge. */
    struct {
        char name[IMP_STAT_NAME_MAX + 1];
        double rate;
    } *rates = NULL;
    size_t nrates = 0;
    while (imp_stats_next(&rest, &name, &v) > 0) {
        struct stat_row *r = stat_row(w, name.p, name.len);
        if (!r)
            break;
        int have_rate = 0;
        double rate = 0;
        if (r->value != UINT64_MAX && v < r->value)
            r->gauge = 1;
        if (!r->gauge && r->value != UINT64_MAX && secs > 0) {
            have_rate = 1;
            rate = (double)(v - r->value) / secs;
        }
        r->value = v;
        if (json) {
            imt_json_key(&w->j, r->name);
            imt_json_u64(&w->j, v);
            if (have_rate) {
                void *nr = realloc(rates, (nrates + 1) * sizeof *rates);
                if (nr) {
                    rates = nr;
                    snprintf(rates[nrates].name, sizeof rates[nrates].name, "%s", r->name);
                    rates[nrates++].rate = rate;
                }
            }
        } else if (w->tty) {
            if (have_rate)
                printf("%-28s %20" PRIu64 " %12.1f\n", r->name, v, rate);
            else
                printf("%-28s %20" PRIu64 " %12s\n", r->name, v, r->gauge ? "" : "-");
        } else {
            if (have_rate)
                printf("%s %s %" PRIu64 " %.1f/s\n", when, r->name, v, rate);
            else
                printf("%s %s %" PRIu64 "\n", when, r->name, v);
        }
    }
    if (json) {
        imt_json_obj_end(&w->j);
        imt_json_key(&w->j, "rates");
        imt_json_obj_begin(&w->j);
        for (size_t i = 0; i < nrates; i++) {
            imt_json_key(&w->j, rates[i].name);
            /* per second, rounded to an integer (the JSON writer has no fractions) */
            imt_json_u64(&w->j, (uint64_t)(rates[i].rate + 0.5));
        }
        imt_json_obj_end(&w->j);
        imt_json_obj_end(&w->j);
        imt_json_emit(&w->j, stdout);
    }
    free(rates);
    fflush(stdout);
    w->prev_time = now;
}

static void stats_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    iw *w = arg;
    (void)fd;
    (void)what;
    if (w->done || !w->c)
        return;
    uint32_t req = 0;
    int r = imt_client_stats(w->c, &req);
    if (r < 0) {
        note_error(w, IW_EXIT_LOST, 0, "cannot send STATS", imp_strerror(r));
        stop(w, imt_exit_status(r));
    }
}

static void on_stats(imt_client *c, uint32_t req, const imp_msg *m, void *ud);

/* ---- --who, --rooms ----------------------------------------------------------------------- */

static const char *list_name(const iw *w)
{
    return w->cfg->mode == IW_MODE_WHO ? "WHO" : "ROOMS";
}

/* One page of WHO or ROOMS (cursor NULL: the first). */
static int list_request(iw *w, const void *cursor, size_t cursor_len, uint32_t *req)
{
    if (w->cfg->mode == IW_MODE_WHO)
        return imt_client_who(w->c, cursor, cursor_len, 0, req);
    return imt_client_rooms(w->c, cursor, cursor_len, 0, req);
}

/* A page of the listing: print its names, then ask for the next page or stop (exit 0). */
static void list_page(iw *w, struct setup *su, const imp_msg *m)
{
    uint8_t want = w->cfg->mode == IW_MODE_WHO ? IMP_WHO_LIST : IMP_ROOM_LIST;
    if (m->type != want) {
        note_error(w, IW_EXIT_LOST, 0, "unexpected answer to the listing request", NULL);
        stop(w, IW_EXIT_LOST);
        return;
    }
    imp_bytes rest = imp_msg_b(m, IMP_T_NAMES), name;
    while (imp_names_next(&rest, &name) > 0) {
        iw_escape(stdout, name.p, name.len, 0);
        putc('\n', stdout);
    }
    if (!imp_msg_u(m, IMP_T_MORE, 0)) {
        su->kind = 0;
        stop(w, IW_EXIT_OK);
        return;
    }
    imp_bytes cur = imp_msg_b(m, IMP_T_CURSOR);
    if (cur.len == 0) {
        note_error(w, IW_EXIT_LOST, 0, "the server sent MORE without a CURSOR", NULL);
        stop(w, IW_EXIT_LOST);
        return;
    }
    uint32_t next = 0;
    int r = list_request(w, cur.p, cur.len, &next);
    if (r < 0) {
        add_setup(w, SU_LIST, NULL, r, 0);
        return;
    }
    su->req = next; /* the same step goes on with the next page */
}

/* ---- setup ------------------------------------------------------------------------------ */

static int add_setup(iw *w, int kind, const char *room, int r, uint32_t req)
{
    if (r < 0) {
        char what[96];
        snprintf(what, sizeof what, "cannot send the %s request",
                 kind == SU_JOIN      ? "JOIN"
                 : kind == SU_MEMBERS ? "MEMBERS"
                 : kind == SU_MONITOR ? "MONITOR"
                 : kind == SU_STATS   ? "STATS"
                 : kind == SU_LIST    ? list_name(w)
                                      : "SUBSCRIBE");
        note_error(w, imt_exit_status(r), 0, what, imp_strerror(r));
        stop(w, imt_exit_status(r));
        return -1;
    }
    if (w->nsetup >= MAX_SETUP) {
        fprintf(stderr, "imwatch: too many setup requests\n");
        stop(w, IW_EXIT_USAGE);
        return -1;
    }
    w->setup[w->nsetup].req = req;
    w->setup[w->nsetup].kind = kind;
    w->setup[w->nsetup].room = room;
    w->nsetup++;
    return 0;
}

static struct setup *find_setup(iw *w, uint32_t req)
{
    for (size_t i = 0; i < w->nsetup; i++)
        if (w->setup[i].req == req)
            return &w->setup[i];
    return NULL;
}

static void go_ready(iw *w)
{
    if (w->ready || w->exit_status >= 0)
        return;
    w->ready = 1;
    if (w->cfg->ready_line) {
        if (w->cfg->o->json) {
            imt_json_reset(&w->j);
            imt_json_obj_begin(&w->j);
            imt_json_key(&w->j, "v");
            imt_json_u64(&w->j, IMT_JSON_SCHEMA_VERSION);
            imt_json_key(&w->j, "type");
            imt_json_str(&w->j, "ready");
            const imt_session *s = imt_client_session(w->c);
            if (s) {
                imt_json_key(&w->j, "user");
                imt_json_str(&w->j, s->user);
                imt_json_key(&w->j, "last_seq");
                imt_json_u64(&w->j, s->last_seq);
            }
            imt_json_obj_end(&w->j);
            imt_json_emit(&w->j, stdout);
        } else if (w->cfg->nul) {
            fwrite("ready", 1, 6, stdout); /* with its NUL: one record like the bodies */
        } else {
            fputs("ready\n", stdout);
        }
        flush_out(w);
    }
    if (w->cfg->o->verbose)
        fprintf(stderr, "imwatch: ready\n");
    /* Messages held during setup, in arrival order. */
    struct held *h = w->held_head;
    w->held_head = w->held_tail = NULL;
    while (h) {
        struct held *n = h->next;
        process_message(w, &h->m);
        free(h->data);
        free(h);
        h = n;
    }
}

static void setup_done(iw *w, uint32_t req)
{
    for (size_t i = 0; i < w->nsetup; i++) {
        if (w->setup[i].req == req) {
            w->setup[i] = w->setup[--w->nsetup];
            break;
        }
    }
    if (w->nsetup == 0 && w->setup_started)
        go_ready(w);
}

static void send_subscribe(iw *w, const char *const *names)
{
    uint32_t req = 0;
    if (!names[0])
        return;
    int r = imt_client_subscribe(w->c, names, 1, &req);
    add_setup(w, SU_SUBSCRIBE, NULL, r, req);
}

static void subscribe_members(iw *w)
{
    const imt_session *s = imt_client_session(w->c);
    const char **names = calloc(w->nmembers + 1, sizeof *names);
    size_t n = 0;
    if (!names) {
        stop(w, IW_EXIT_USAGE);
        return;
    }
    for (size_t i = 0; i < w->nmembers && n < MAX_SUBSCRIBE; i++) {
        if (s && strcmp(s->user, w->members[i]) == 0)
            continue; /* our own presence is not news */
        int dup = 0;
        for (size_t k = 0; k < n && !dup; k++)
            dup = strcmp(names[k], w->members[i]) == 0;
        if (!dup)
            names[n++] = w->members[i];
    }
    names[n] = NULL;
    send_subscribe(w, names);
    free(names);
}

static void on_ready(imt_client *c, const imt_session *s, void *ud)
{
    iw *w = ud;
    const iw_config *cfg = w->cfg;
    uint32_t req = 0;
    int r;
    if (cfg->o->verbose)
        fprintf(stderr, "imwatch: logged in as %s (acknowledged up to %" PRIu64 ")%s\n", s->user,
                s->last_seq, s->admin ? ", administrator" : "");
    w->acked_seq = s->last_seq;
    if (w->processed_seq < s->last_seq)
        w->processed_seq = s->last_seq;
    switch (cfg->mode) {
    case IW_MODE_STATS:
        r = imt_client_stats(c, &req);
        if (add_setup(w, SU_STATS, NULL, r, req) < 0)
            return;
        break;
    case IW_MODE_MONITOR:
        r = imt_client_monitor(c, 1, &req);
        if (add_setup(w, SU_MONITOR, NULL, r, req) < 0)
            return;
        break;
    case IW_MODE_WHO:
    case IW_MODE_ROOMS:
        r = list_request(w, NULL, 0, &req);
        if (add_setup(w, SU_LIST, NULL, r, req) < 0)
            return;
        break;
    case IW_MODE_MESSAGES:
        for (size_t i = 0; i < cfg->nrooms; i++) {
            r = imt_client_join(c, cfg->rooms[i], &req);
            if (add_setup(w, SU_JOIN, cfg->rooms[i], r, req) < 0)
                return;
        }
        if (cfg->presence && cfg->presence_users) {
            send_subscribe(w, cfg->presence_users);
        } else if (cfg->presence) {
            for (size_t i = 0; i < cfg->nrooms; i++) {
                r = imt_client_members(c, cfg->rooms[i], NULL, 0, 0, &req);
                if (add_setup(w, SU_MEMBERS, cfg->rooms[i], r, req) < 0)
                    return;
            }
        }
        break;
    }
    w->setup_started = 1;
    if (w->nsetup == 0)
        go_ready(w);
}

static void on_ok(imt_client *c, uint32_t req, const imp_msg *m, void *ud)
{
    iw *w = ud;
    (void)c;
    (void)m;
    if (find_setup(w, req))
        setup_done(w, req);
}

static void on_list(imt_client *c, uint32_t req, const imp_msg *m, void *ud)
{
    iw *w = ud;
    struct setup *su = find_setup(w, req);
    if (su && su->kind == SU_LIST && !w->done) {
        list_page(w, su, m);
        return;
    }
    if (!su || su->kind != SU_MEMBERS || m->type != IMP_MEMBER_LIST)
        return;
    imp_bytes rest = imp_msg_b(m, IMP_T_NAMES), name;
    while (imp_names_next(&rest, &name) > 0) {
        char **nm = realloc(w->members, (w->nmembers + 1) * sizeof *nm);
        char *s = malloc(name.len + 1);
        if (!nm || !s) {
            free(s);
            if (nm)
                w->members = nm;
            stop(w, IW_EXIT_USAGE);
            return;
        }
        w->members = nm;
        memcpy(s, name.p, name.len);
        s[name.len] = '\0';
        w->members[w->nmembers++] = s;
    }
    const char *room = su->room;
    if (imp_msg_u(m, IMP_T_MORE, 0)) {
        imp_bytes cur = imp_msg_b(m, IMP_T_CURSOR);
        uint32_t next;
        int r = imt_client_members(c, room, cur.p, cur.len, 0, &next);
        if (r < 0) {
            add_setup(w, SU_MEMBERS, room, r, 0);
            return;
        }
        su->req = next; /* the same setup step goes on with the next page */
        return;
    }
    /* The last page of this room: when no other MEMBERS is outstanding, subscribe. */
    su->kind = 0;
    int more = 0;
    for (size_t i = 0; i < w->nsetup; i++)
        more |= w->setup[i].kind == SU_MEMBERS;
    if (!more)
        subscribe_members(w);
    setup_done(w, req);
}

static void on_stats(imt_client *c, uint32_t req, const imp_msg *m, void *ud)
{
    iw *w = ud;
    (void)c;
    if (w->cfg->mode != IW_MODE_STATS || w->done)
        return;
    int first = find_setup(w, req) != NULL;
    if (first)
        setup_done(w, req); /* ready first: the --ready line comes before the first sample */
    render_stats(w, m);
    w->printed++;
    if (w->cfg->count && w->printed >= w->cfg->count) {
        stop(w, IW_EXIT_OK);
        return;
    }
    struct timeval tv = {(time_t)(w->cfg->interval_ms / 1000),
                         (suseconds_t)(w->cfg->interval_ms % 1000) * 1000};
    evtimer_add(w->stats_timer, &tv);
}

static void on_error(imt_client *c, uint32_t req, int code, const char *text,
                     uint32_t retry_after_ms, void *ud)
{
    iw *w = ud;
    (void)c;
    (void)retry_after_ms;
    struct setup *su = req ? find_setup(w, req) : NULL;
    const char *what = "the server refused a request";
    char buf[96];
    if (su) {
        switch (su->kind) {
        case SU_JOIN:
            snprintf(buf, sizeof buf, "JOIN %s refused", su->room);
            break;
        case SU_MEMBERS:
            snprintf(buf, sizeof buf, "MEMBERS %s refused", su->room);
            break;
        case SU_SUBSCRIBE:
            snprintf(buf, sizeof buf, "SUBSCRIBE refused");
            break;
        case SU_MONITOR:
            snprintf(buf, sizeof buf, "MONITOR refused");
            break;
        case SU_LIST:
            snprintf(buf, sizeof buf, "%s refused", list_name(w));
            break;
        default:
            snprintf(buf, sizeof buf, "STATS refused");
            break;
        }
        what = buf;
    } else if (w->cfg->mode == IW_MODE_STATS) {
        what = "STATS refused";
    } else if (code == -IMP_ERR_BAD_REQUEST) {
        /* A DELIVERED the server did not like (e.g. a sequence it never assigned). */
        note_error(w, IW_EXIT_REFUSED, code, "DELIVERED refused", text);
        return;
    } else {
        note_error(w, IW_EXIT_REFUSED, code, what, text);
        return; /* unsolicited, not fatal: go on watching */
    }
    int status = imt_exit_status(code);
    note_error(w, status, code, what, text);
    stop(w, status == IW_EXIT_OK ? IW_EXIT_REFUSED : status);
}

static void on_close(imt_client *c, const imt_result *r, void *ud)
{
    iw *w = ud;
    (void)c;
    if (w->exit_status < 0) {
        /* The connection ended without imwatch asking for it. */
        int status = r->status ? r->status : IW_EXIT_LOST;
        if (r->status == 0)
            note_error(w, status, 0, "the server closed the connection", NULL);
        else
            note_error(w, status, r->code, r->text[0] ? r->text : "connection ended", NULL);
        /* --until: the stream ended first (but a refused login stays a refused login). */
        if (w->cfg->has_until && w->ready && (status == IW_EXIT_LOST || status == IW_EXIT_TIMEOUT))
            status = IW_EXIT_UNMET;
        w->exit_status = status;
    }
    w->c = NULL;
    event_base_loopexit(w->base, NULL);
}

/* ---- stopping --------------------------------------------------------------------------- */

/* Stop with an exit status: acknowledge what was printed, then LOGOUT (graceful, so the
 * server has processed the DELIVERED before the connection ends). */
static void stop(iw *w, int status)
{
    if (w->exit_status >= 0)
        return;
    w->exit_status = status;
    w->done = 1;
    evtimer_del(w->stats_timer);
    evtimer_del(w->wait_timer);
    if (w->c) {
        ack_now(w);
        flush_out(w);
        imt_client_close(w->c, 0, NULL);
    } else {
        event_base_loopexit(w->base, NULL);
    }
}

static void wait_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    iw *w = arg;
    (void)fd;
    (void)what;
    if (!quiet(w))
        fprintf(stderr, "imwatch: -W: %s after %.3gs\n",
                w->cfg->has_until ? "no match" : "timed out", w->cfg->wait_ms / 1000.0);
    if (w->cfg->o->json && !w->cfg->has_until) {
        imt_result r;
        memset(&r, 0, sizeof r);
        r.status = IW_EXIT_TIMEOUT;
        r.code = -IMP_ERR_TIMEOUT;
        snprintf(r.text, sizeof r.text, "-W time limit reached");
        imt_json_reset(&w->j);
        imt_json_error(&w->j, &r);
        imt_json_emit(&w->j, stdout);
    }
    stop(w, w->cfg->has_until ? IW_EXIT_UNMET : IW_EXIT_TIMEOUT);
}

static void signal_cb(evutil_socket_t sig, short what, void *arg)
{
    iw *w = arg;
    (void)what;
    if (w->exit_status >= 0) {
        /* A second signal while stopping: give up on the graceful close. */
        if (w->c)
            imt_client_close(w->c, IMP_ERR_CONNECTION_LOST, "interrupted");
        event_base_loopexit(w->base, NULL);
        return;
    }
    if (w->cfg->o->verbose)
        fprintf(stderr, "imwatch: %s, stopping\n", sig == SIGINT ? "interrupted" : "terminated");
    stop(w, w->cfg->has_until || (w->cfg->count && w->printed < w->cfg->count) ? IW_EXIT_UNMET
                                                                               : IW_EXIT_OK);
}

int iw_watch(iw_config *cfg)
{
    iw w;
    memset(&w, 0, sizeof w);
    w.cfg = cfg;
    w.exit_status = -1;
    w.tty = isatty(STDOUT_FILENO);
    imt_json_init(&w.j);
    w.base = event_base_new();
    if (!w.base) {
        fprintf(stderr, "imwatch: cannot create the event loop\n");
        return IW_EXIT_USAGE;
    }
    w.ack_timer = evtimer_new(w.base, ack_timer_cb, &w);
    w.wait_timer = evtimer_new(w.base, wait_timer_cb, &w);
    w.stats_timer = evtimer_new(w.base, stats_timer_cb, &w);
    w.sig_int = evsignal_new(w.base, SIGINT, signal_cb, &w);
    w.sig_term = evsignal_new(w.base, SIGTERM, signal_cb, &w);
    if (!w.ack_timer || !w.wait_timer || !w.stats_timer || !w.sig_int || !w.sig_term) {
        fprintf(stderr, "imwatch: cannot create events\n");
        w.exit_status = IW_EXIT_USAGE;
        goto out;
    }
    evsignal_add(w.sig_int, NULL);
    evsignal_add(w.sig_term, NULL);

    imt_client_config ccfg;
    imt_client_config_init(&ccfg);
    imt_opts_client_config(cfg->o, &ccfg);
    ccfg.prog = "imwatch";
    ccfg.auto_delivered = 0; /* batched here, after the output */
    ccfg.last_seq = cfg->since;
    imt_callbacks cb;
    memset(&cb, 0, sizeof cb);
    cb.on_ready = on_ready;
    cb.on_message = on_message;
    cb.on_presence = on_presence;
    cb.on_monitor = on_monitor;
    cb.on_stats = on_stats;
    cb.on_list = on_list;
    cb.on_ok = on_ok;
    cb.on_error = on_error;
    cb.on_close = on_close;
    w.c = imt_client_new(w.base, &ccfg, &cb, &w);
    if (!w.c || imt_client_start(w.c) != 0) {
        fprintf(stderr, "imwatch: cannot start the client\n");
        w.exit_status = IW_EXIT_USAGE;
        goto out;
    }
    imt_client *keep = w.c; /* on_close clears w.c; free after the loop */
    if (cfg->wait_ms) {
        struct timeval tv = {(time_t)(cfg->wait_ms / 1000),
                             (suseconds_t)(cfg->wait_ms % 1000) * 1000};
        evtimer_add(w.wait_timer, &tv);
    }
    event_base_dispatch(w.base);
    imt_client_free(keep);
    w.c = NULL;
    if (w.exit_status < 0)
        w.exit_status = IW_EXIT_LOST;
    if (flush_out(&w) != 0 && w.exit_status == IW_EXIT_OK)
        w.exit_status = IW_EXIT_USAGE;
out:
    free_held(&w);
    for (size_t i = 0; i < w.nmembers; i++)
        free(w.members[i]);
    free(w.members);
    free(w.rows);
    imt_json_free(&w.j);
    if (w.ack_timer)
        event_free(w.ack_timer);
    if (w.wait_timer)
        event_free(w.wait_timer);
    if (w.stats_timer)
        event_free(w.stats_timer);
    if (w.sig_int)
        event_free(w.sig_int);
    if (w.sig_term)
        event_free(w.sig_term);
    event_base_free(w.base);
    return w.exit_status;
}
