/* imsend -i: the interactive chat REPL on GNU readline's callback interface.
 *
 * libevent watches stdin and hands each byte to rl_callback_read_char(), so the one event loop
 * serves the terminal and the connection. Incoming messages and presence changes are printed
 * above the prompt with rl_clear_visible_line() + rl_forced_update_display(): readline keeps
 * its line buffer and point, so a half-typed line is redrawn intact below the new output.
 *
 * Completion (Tab): commands at the start of the line; user names (from WHO, refreshed every
 * few seconds and by presence events) after /to and in messages; room names (ROOMS) after
 * /join. Readline has no user pointer for its callbacks, hence the file-level state R.
 */
#include "imsend.h"

#include <errno.h>
#include <signal.h>
#include <event2/event.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include <readline/history.h>
#include <readline/readline.h>

#define REFRESH_MS 5000
#define HISTORY_MAX 1000
#define NAMES_MAX 4096

typedef struct namelist {
    char **v;
    size_t n;
} namelist;

typedef struct hist_item {
    char *text;
} hist_item;

static struct repl {
    imsend *s;
    char prompt[80];
    int installed;
    int in_handler; /* inside on_line: readline's line is finished, print plainly */
    int quitting;
    struct event *ev_stdin, *ev_refresh, *ev_int, *ev_term;
    rl_voidfunc_t *deprep; /* readline's terminal restore, called only when we leave */
    namelist users, rooms, subscribed;
    uint32_t who_req, rooms_req, history_req;
    int who_print, rooms_print; /* the reply answers a /who or /rooms typed by the user */
    int who_fresh, rooms_fresh; /* the next page starts a new list */
    hist_item *hist;
    size_t nhist, hcap;
    char hist_path[1024];
    int kind; /* current target */
    char target[IMP_NAME_MAX + 1];
    char me[IMP_NAME_MAX + 1];
} R;

/* ---- name lists ---------------------------------------------------------------------------- */

static int nl_has(const namelist *l, const char *name)
{
    for (size_t i = 0; i < l->n; i++)
        if (strcasecmp(l->v[i], name) == 0)
            return 1;
    return 0;
}

static void nl_add(namelist *l, const char *name)
{
    if (nl_has(l, name) || l->n >= NAMES_MAX)
        return;
    char **v = realloc(l->v, (l->n + 1) * sizeof *v);
    if (!v)
        return;
    l->v = v;
    char *d = strdup(name);
    if (d)
        l->v[l->n++] = d;
}

static void nl_del(namelist *l, const char *name)
{
    for (size_t i = 0; i < l->n; i++)
        if (strcasecmp(l->v[i], name) == 0) {
            free(l->v[i]);
            l->v[i] = l->v[--l->n];
            return;
        }
}

static void nl_clear(namelist *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->v[i]);
    free(l->v);
    l->v = NULL;
    l->n = 0;
}

/* ---- output above the prompt --------------------------------------------------------------- */

#if defined(__GNUC__)
__attribute__((format(printf, 1, 2)))
#endif
static void
say(const char *fmt, ...)
{
    char msg[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (!R.installed || R.in_handler) {
        printf("%s\n", msg);
        fflush(stdout);
        return;
    }
    /* Erase the prompt and the half-typed line, print, then redraw both: readline's buffer
     * (rl_line_buffer, rl_point) is untouched. */
    rl_clear_visible_line();
    printf("%s\n", msg);
    fflush(stdout);
    rl_forced_update_display();
}

/* Printable text of a body: valid UTF-8 with control characters shown as '?', or a note for
 * binary bodies. */
static void body_text(imp_bytes b, char *out, size_t cap)
{
    if (!imp_utf8_valid(b.p, b.len)) {
        snprintf(out, cap, "<%zu bytes of binary data>", b.len);
        return;
    }
    size_t n = b.len < cap - 1 ? b.len : cap - 1;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = b.p[i];
        out[i] = (c < 0x20 && c != '\t') || c == 0x7f ? '?' : (char)c;
    }
    out[n] = 0;
}

static void fmt_time(uint64_t ms, char *out, size_t cap)
{
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    if (ms == 0 || !localtime_r(&t, &tm)) {
        snprintf(out, cap, "--:--:--");
        return;
    }
    strftime(out, cap, "%H:%M:%S", &tm);
}

static void set_prompt(void)
{
    if (R.kind == IMP_TARGET_USER)
        snprintf(R.prompt, sizeof R.prompt, "@%s> ", R.target);
    else if (R.kind == IMP_TARGET_ROOM)
        snprintf(R.prompt, sizeof R.prompt, "#%s> ", R.target);
    else
        snprintf(R.prompt, sizeof R.prompt, "imsend> ");
    if (R.installed)
        rl_set_prompt(R.prompt);
}

/* ---- requests ------------------------------------------------------------------------------ */

static void refresh(int print_who, int print_rooms)
{
    imt_client *c = R.s->c;
    if (imt_client_who(c, NULL, 0, 0, &R.who_req) == 0) {
        R.who_print = print_who;
        R.who_fresh = 1;
    }
    if (imt_client_rooms(c, NULL, 0, 0, &R.rooms_req) == 0) {
        R.rooms_print = print_rooms;
        R.rooms_fresh = 1;
    }
}

static void on_refresh_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    if (!imt_client_ready(R.s->c))
        return;
    refresh(0, 0);
    struct timeval tv = {REFRESH_MS / 1000, 0};
    evtimer_add(R.ev_refresh, &tv);
}

static void subscribe(const char *name)
{
    if (nl_has(&R.subscribed, name) || strcasecmp(name, R.me) == 0)
        return;
    const char *names[2] = {name, NULL};
    if (imt_client_subscribe(R.s->c, names, 1, NULL) == 0)
        nl_add(&R.subscribed, name);
}

/* Remove the line handler and give the terminal back its settings. */
static void uninstall(void)
{
    if (!R.installed)
        return;
    rl_deprep_term_function = R.deprep;
    rl_callback_handler_remove();
    R.installed = 0;
}

static void quit(void)
{
    if (R.quitting)
        return;
    R.quitting = 1;
    uninstall();
    if (R.ev_stdin)
        event_del(R.ev_stdin);
    imt_client_close(R.s->c, 0, NULL);
}

/* ---- commands ------------------------------------------------------------------------------ */

static const char *const commands[] = {"/to",      "/join",   "/leave", "/who",  "/rooms",
                                       "/history", "/status", "/help",  "/quit", NULL};

static void help(void)
{
    say("commands:\n"
        "  /to USER              send the next lines to USER\n"
        "  /join ROOM            join ROOM and send the next lines there\n"
        "  /leave                leave the current room\n"
        "  /who                  users online\n"
        "  /rooms                rooms\n"
        "  /history [N]          the last N (default 20) messages of the current room\n"
        "  /status online|away|busy [\"text\"]   set your presence\n"
        "  /quit                 leave (also Ctrl-D)\n"
        "other lines are sent to the current target; Tab completes commands and names");
}

static char *skip_ws(char *p)
{
    while (*p == ' ' || *p == '\t')
        p++;
    return p;
}

static void trim_end(char *p)
{
    size_t n = strlen(p);
    while (n && (p[n - 1] == ' ' || p[n - 1] == '\t'))
        p[--n] = 0;
}

static int valid_name(const char *n)
{
    return imp_name_valid((const uint8_t *)n, strlen(n));
}

static void report(const char *what, int r)
{
    char cs[64];
    say("%s: %s", what, r == IMP_ERR_CLOSED ? "not connected" : imt_code_str(r, cs, sizeof cs));
}

static void command(char *line)
{
    char *cmd = line;
    char *arg = cmd;
    while (*arg && *arg != ' ' && *arg != '\t')
        arg++;
    if (*arg)
        *arg++ = 0;
    arg = skip_ws(arg);
    trim_end(arg);
    imt_client *c = R.s->c;
    int r;
    if (strcmp(cmd, "/quit") == 0 || strcmp(cmd, "/exit") == 0) {
        quit();
    } else if (strcmp(cmd, "/help") == 0) {
        help();
    } else if (strcmp(cmd, "/to") == 0) {
        if (!valid_name(arg)) {
            say("usage: /to USER");
            return;
        }
        R.kind = IMP_TARGET_USER;
        snprintf(R.target, sizeof R.target, "%s", arg);
        subscribe(arg);
        set_prompt();
    } else if (strcmp(cmd, "/join") == 0) {
        if (!valid_name(arg)) {
            say("usage: /join ROOM");
            return;
        }
        if ((r = imt_client_join(c, arg, NULL)) < 0) {
            report("/join", r);
            return;
        }
        R.kind = IMP_TARGET_ROOM;
        snprintf(R.target, sizeof R.target, "%s", arg);
        nl_add(&R.rooms, arg);
        set_prompt();
    } else if (strcmp(cmd, "/leave") == 0) {
        const char *room = *arg ? arg : (R.kind == IMP_TARGET_ROOM ? R.target : NULL);
        if (!room || !valid_name(room)) {
            say("usage: /leave [ROOM] (no current room)");
            return;
        }
        if ((r = imt_client_leave(c, room, NULL)) < 0) {
            report("/leave", r);
            return;
        }
        if (R.kind == IMP_TARGET_ROOM && strcasecmp(room, R.target) == 0) {
            R.kind = 0;
            R.target[0] = 0;
            set_prompt();
        }
    } else if (strcmp(cmd, "/who") == 0) {
        if ((r = imt_client_who(c, NULL, 0, 0, &R.who_req)) < 0) {
            report("/who", r);
            return;
        }
        R.who_print = 1;
        R.who_fresh = 1;
    } else if (strcmp(cmd, "/rooms") == 0) {
        if ((r = imt_client_rooms(c, NULL, 0, 0, &R.rooms_req)) < 0) {
            report("/rooms", r);
            return;
        }
        R.rooms_print = 1;
        R.rooms_fresh = 1;
    } else if (strcmp(cmd, "/history") == 0) {
        uint64_t n = 20;
        if (*arg && imt_parse_u64(arg, 1, 1000, &n) != 0) {
            say("usage: /history [N] (1-1000)");
            return;
        }
        if (R.kind != IMP_TARGET_ROOM) {
            say("/history: no current room (use /join ROOM)");
            return;
        }
        R.nhist = 0;
        if ((r = imt_client_history(c, R.target, (uint32_t)n, 0, &R.history_req)) < 0)
            report("/history", r);
    } else if (strcmp(cmd, "/status") == 0) {
        char *word = arg;
        char *text = word;
        while (*text && *text != ' ' && *text != '\t')
            text++;
        if (*text)
            *text++ = 0;
        text = skip_ws(text);
        size_t tl = strlen(text);
        if (tl >= 2 && text[0] == '"' && text[tl - 1] == '"') {
            text[tl - 1] = 0;
            text++;
        }
        int st = strcmp(word, "online") == 0 ? IMP_STATUS_ONLINE
                 : strcmp(word, "away") == 0 ? IMP_STATUS_AWAY
                 : strcmp(word, "busy") == 0 ? IMP_STATUS_BUSY
                                             : -1;
        if (st < 0) {
            say("usage: /status online|away|busy [\"text\"]");
            return;
        }
        if ((r = imt_client_presence(c, st, *text ? text : NULL, NULL)) < 0)
            report("/status", r);
    } else {
        say("unknown command %s (try /help)", cmd);
    }
}

static void send_text(const char *line)
{
    if (!R.kind) {
        say("no recipient: use /to USER or /join ROOM first");
        return;
    }
    imt_send_args a;
    imt_send_args_init(&a);
    a.target_kind = R.kind;
    a.target = R.target;
    a.body = line;
    a.body_len = strlen(line);
    int r = imt_client_send(R.s->c, &a, NULL);
    if (r < 0)
        report("not sent", r);
}

static void on_line(char *line)
{
    if (!line) { /* Ctrl-D / end of input */
        if (R.installed)
            printf("\n");
        quit();
        return;
    }
    R.in_handler = 1;
    if (*line) {
        add_history(line);
        if (line[0] == '/' && line[1] != '/')
            command(line);
        else
            send_text(line[0] == '/' ? line + 1 : line); /* "//x" sends "/x" */
    }
    R.in_handler = 0;
    free(line);
}

/* ---- completion ---------------------------------------------------------------------------- */

static const char *const *gen_list;
static size_t gen_n;

static char *gen(const char *text, int state)
{
    static size_t i;
    if (!state)
        i = 0;
    size_t len = strlen(text);
    while (i < gen_n) {
        const char *n = gen_list[i++];
        if (strncasecmp(n, text, len) == 0)
            return strdup(n);
    }
    return NULL;
}

static char **complete(const char *text, int start, int end)
{
    (void)end;
    rl_attempted_completion_over = 1; /* never file names */
    static const char *const statuses[] = {"online", "away", "busy"};
    const char *buf = rl_line_buffer;
    if (start == 0 && text[0] == '/') {
        gen_list = commands;
        gen_n = sizeof commands / sizeof commands[0] - 1;
    } else if (strncmp(buf, "/join ", 6) == 0 || strncmp(buf, "/leave ", 7) == 0 ||
               strncmp(buf, "/history ", 9) == 0) {
        gen_list = (const char *const *)R.rooms.v;
        gen_n = R.rooms.n;
    } else if (strncmp(buf, "/status ", 8) == 0) {
        gen_list = statuses;
        gen_n = 3;
    } else {
        gen_list = (const char *const *)R.users.v;
        gen_n = R.users.n;
    }
    return rl_completion_matches(text, gen);
}

/* ---- client callbacks ---------------------------------------------------------------------- */

static void install(void)
{
    if (R.installed || R.quitting)
        return;
    set_prompt();
    rl_callback_handler_install(R.prompt, on_line);
    /* Readline's callback mode restores the terminal (cooked mode, echo) while the line
     * handler runs and sets it raw again afterwards: keys typed meanwhile are echoed by the
     * tty, and a Ctrl-D typed then is lost. Keep the terminal raw for the whole session and
     * restore it once, in uninstall(). */
    R.deprep = rl_deprep_term_function;
    rl_deprep_term_function = NULL;
    R.installed = 1;
    event_add(R.ev_stdin, NULL);
}

static void on_stdin(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    rl_callback_read_char();
}

/* Ctrl-C: clear a non-empty line (as shells do), else leave; SIGTERM: leave. Readline's own
 * signal handlers are off (rl_catch_signals = 0) so that the terminal is always restored by
 * uninstall(). */
static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    (void)what;
    (void)arg;
    if (sig == SIGINT && R.installed && rl_end > 0) {
        rl_replace_line("", 0);
        rl_point = 0;
        rl_forced_update_display();
        return;
    }
    if (R.installed)
        printf("\n");
    quit();
}

static void cb_ready(imt_client *c, const imt_session *sess, void *ud)
{
    (void)ud;
    snprintf(R.me, sizeof R.me, "%s", sess->user);
    say("connected as %s%s; /help for commands", sess->user, sess->admin ? " (admin)" : "");
    if (R.kind == IMP_TARGET_ROOM)
        imt_client_join(c, R.target, NULL);
    else if (R.kind == IMP_TARGET_USER)
        subscribe(R.target);
    refresh(0, 0);
    struct timeval tv = {REFRESH_MS / 1000, 0};
    evtimer_add(R.ev_refresh, &tv);
}

static void cb_list(imt_client *c, uint32_t req, const imp_msg *m, void *ud)
{
    (void)ud;
    imp_bytes rest = imp_msg_b(m, IMP_T_NAMES), nm;
    int more = (int)imp_msg_u(m, IMP_T_MORE, 0);
    imp_bytes cursor = imp_msg_b(m, IMP_T_CURSOR);
    char line[4096];
    size_t ln = 0;
    line[0] = 0;
    namelist *l = NULL;
    int print = 0;
    if (m->type == IMP_WHO_LIST && req == R.who_req) {
        l = &R.users;
        print = R.who_print;
        if (R.who_fresh)
            nl_clear(l);
        R.who_fresh = 0;
    } else if (m->type == IMP_ROOM_LIST && req == R.rooms_req) {
        l = &R.rooms;
        print = R.rooms_print;
        if (R.rooms_fresh)
            nl_clear(l);
        R.rooms_fresh = 0;
    } else {
        return;
    }
    while (imp_names_next(&rest, &nm) == 1) {
        char name[IMP_NAME_MAX + 1];
        memcpy(name, nm.p, nm.len);
        name[nm.len] = 0;
        nl_add(l, name);
        if (m->type == IMP_WHO_LIST)
            subscribe(name);
        if (print && ln + nm.len + 3 < sizeof line)
            ln += (size_t)snprintf(line + ln, sizeof line - ln, "%s%s", ln ? ", " : "", name);
    }
    if (print)
        say("%s: %s", m->type == IMP_WHO_LIST ? "online" : "rooms", ln ? line : "(none)");
    if (more && cursor.len) {
        uint32_t *r = m->type == IMP_WHO_LIST ? &R.who_req : &R.rooms_req;
        if (m->type == IMP_WHO_LIST)
            imt_client_who(c, cursor.p, cursor.len, 0, r);
        else
            imt_client_rooms(c, cursor.p, cursor.len, 0, r);
        return;
    }
    if (m->type == IMP_WHO_LIST) {
        R.who_print = 0;
        install(); /* the first WHO answered: completion has names, show the prompt */
    } else {
        R.rooms_print = 0;
    }
}

static void cb_message(imt_client *c, const imt_message *msg, void *ud)
{
    (void)c;
    (void)ud;
    char body[2048], ts[16];
    body_text(msg->body, body, sizeof body);
    fmt_time(msg->timestamp, ts, sizeof ts);
    if (msg->frame_type == IMP_HISTORY_ITEM) {
        if (msg->request_id != R.history_req)
            return;
        char item[2400];
        snprintf(item, sizeof item, "[%s] #%s %s: %s", ts, msg->target, msg->sender, body);
        if (R.nhist == R.hcap) {
            size_t cap = R.hcap ? R.hcap * 2 : 32;
            hist_item *h = realloc(R.hist, cap * sizeof *h);
            if (!h)
                return;
            R.hist = h;
            R.hcap = cap;
        }
        R.hist[R.nhist++].text = strdup(item);
        return;
    }
    /* our own room messages come back to us (SPEC IMP-DELIV-008): the typed line shows it */
    if (msg->target_kind == IMP_TARGET_ROOM && strcasecmp(msg->sender, R.me) == 0)
        return;
    if (msg->target_kind == IMP_TARGET_ROOM)
        say("[%s] #%s %s: %s", ts, msg->target, msg->sender, body);
    else if (msg->target_kind == IMP_TARGET_BROADCAST)
        say("[%s] (broadcast) %s: %s", ts, msg->sender, body);
    else
        say("[%s] %s: %s", ts, msg->sender, body);
}

static void cb_ok(imt_client *c, uint32_t req, const imp_msg *m, void *ud)
{
    (void)c;
    (void)m;
    (void)ud;
    if (req && req == R.history_req) {
        for (size_t i = R.nhist; i > 0; i--) { /* oldest first */
            if (R.hist[i - 1].text)
                say("%s", R.hist[i - 1].text);
            free(R.hist[i - 1].text);
        }
        if (R.nhist == 0)
            say("(no messages in #%s)", R.target);
        R.nhist = 0;
        R.history_req = 0;
    }
}

static void cb_ack(imt_client *c, const imt_ack *a, void *ud)
{
    (void)c;
    imsend *s = ud;
    char ct[700];
    if (a->outcome == IMP_OUTCOME_REFUSED)
        say("refused: %s", imt_code_text(a->code, a->text, ct, sizeof ct));
    else if (s->o.verbose)
        say("(%s as message %llu)", imt_outcome_name(a->outcome), (unsigned long long)a->msg_id);
}

static void cb_error(imt_client *c, uint32_t req, int code, const char *text,
                     uint32_t retry_after_ms, void *ud)
{
    (void)c;
    (void)req;
    (void)retry_after_ms;
    (void)ud;
    char ct[700];
    say("error: %s", imt_code_text(code, text, ct, sizeof ct));
}

static void cb_presence(imt_client *c, const imt_presence *p, void *ud)
{
    (void)c;
    (void)ud;
    if (p->status == IMP_STATUS_OFFLINE)
        nl_del(&R.users, p->user);
    else
        nl_add(&R.users, p->user);
    if (strcasecmp(p->user, R.me) == 0)
        return;
    say("* %s is %s%s%s", p->user, imt_status_name(p->status), p->status_text[0] ? ": " : "",
        p->status_text);
}

static void cb_close(imt_client *c, const imt_result *r, void *ud)
{
    (void)c;
    imsend *s = ud;
    if (R.installed) {
        uninstall();
        printf("\n");
    }
    if (r->status != 0) {
        fprintf(stderr, "imsend: %s%s\n",
                r->status == IMT_EXIT_AUTH      ? "login refused: "
                : r->status == IMT_EXIT_TIMEOUT ? "timeout: "
                                                : "",
                r->text);
        s->exit_status = r->status;
    } else if (!R.quitting) {
        s->exit_status = IMT_EXIT_LOST;
    }
    event_base_loopexit(s->base, NULL);
}

/* ---- entry --------------------------------------------------------------------------------- */

int imsend_repl_run(imsend *s)
{
    memset(&R, 0, sizeof R);
    R.s = s;
    if (s->kind == IMP_TARGET_USER || s->kind == IMP_TARGET_ROOM) {
        R.kind = s->kind;
        snprintf(R.target, sizeof R.target, "%s", s->target);
    }
    const char *hp = getenv("IMSEND_HISTORY");
    const char *home = getenv("HOME");
    if (hp && *hp)
        snprintf(R.hist_path, sizeof R.hist_path, "%s", hp);
    else if (home && *home)
        snprintf(R.hist_path, sizeof R.hist_path, "%s/.imsend_history", home);
    rl_readline_name = "imsend";
    rl_catch_signals = 0;
    rl_attempted_completion_function = complete;
    static char word_breaks[] = " \t";
    rl_completer_word_break_characters = word_breaks;
    using_history();
    stifle_history(HISTORY_MAX);
    if (R.hist_path[0])
        read_history(R.hist_path); /* a missing file is not an error */

    imt_client_config cfg;
    imt_client_config_init(&cfg);
    imt_opts_client_config(&s->o, &cfg);
    cfg.auto_delivered = 1;
    cfg.ping_interval_ms = 20000;
    cfg.agent = "imsend/" IMP_LIB_VERSION;
    imt_callbacks cb;
    memset(&cb, 0, sizeof cb);
    cb.on_ready = cb_ready;
    cb.on_list = cb_list;
    cb.on_message = cb_message;
    cb.on_ok = cb_ok;
    cb.on_ack = cb_ack;
    cb.on_error = cb_error;
    cb.on_presence = cb_presence;
    cb.on_close = cb_close;
    s->c = imt_client_new(s->base, &cfg, &cb, s);
    R.ev_stdin = event_new(s->base, STDIN_FILENO, EV_READ | EV_PERSIST, on_stdin, NULL);
    R.ev_refresh = evtimer_new(s->base, on_refresh_timer, NULL);
    R.ev_int = evsignal_new(s->base, SIGINT, on_signal, NULL);
    R.ev_term = evsignal_new(s->base, SIGTERM, on_signal, NULL);
    if (!s->c || !R.ev_stdin || !R.ev_refresh || !R.ev_int || !R.ev_term) {
        fprintf(stderr, "imsend: out of memory\n");
        return IMT_EXIT_USAGE;
    }
    evsignal_add(R.ev_int, NULL);
    evsignal_add(R.ev_term, NULL);
    imt_client_start(s->c);
    event_base_dispatch(s->base);
    uninstall();
    if (R.hist_path[0] && history_length > 0) {
        if (write_history(R.hist_path) != 0)
            fprintf(stderr, "imsend: cannot write history %s: %s\n", R.hist_path, strerror(errno));
        else
            history_truncate_file(R.hist_path, HISTORY_MAX);
    }
    imt_client_free(s->c);
    s->c = NULL;
    event_free(R.ev_stdin);
    event_free(R.ev_refresh);
    event_free(R.ev_int);
    event_free(R.ev_term);
    nl_clear(&R.users);
    nl_clear(&R.rooms);
    nl_clear(&R.subscribed);
    for (size_t i = 0; i < R.nhist; i++)
        free(R.hist[i].text);
    free(R.hist);
    return s->exit_status;
}
