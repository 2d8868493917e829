/* imd — the reference IMP/1 server: command line, admin subcommands, signals, the loop. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <sodium.h>

#include <imp/imp.h>
#include <imp/text.h>

#include "auth.h"
#include "config.h"
#include "core.h"
#include "log.h"
#include "net.h"
#include "server.h"
#include "store.h"
#include "syncer.h"
#include "tls.h"

#define EXIT_USAGE 2   /* usage or configuration error (the tools' class 2) */
#define EXIT_RUNTIME 1 /* could not start or failed while running */

static const char usage_text[] =
    "usage: imd [OPTIONS]                     run the server\n"
    "       imd [OPTIONS] user add NAME [--admin] [--password-file FILE]\n"
    "       imd [OPTIONS] user del NAME\n"
    "       imd [OPTIONS] user passwd NAME [--password-file FILE]\n"
    "       imd [OPTIONS] user admin NAME on|off\n"
    "       imd [OPTIONS] user list\n"
    "\n"
    "Options:\n"
    "  -c, --config FILE      read settings from FILE (imd.conf(5))\n"
    "  -D, --data DIR         data directory (default ./imd-data; created if missing)\n"
    "  -l, --listen ADDR      listen on ADDR: HOST:PORT, [V6]:PORT or unix:PATH; repeatable;\n"
    "                         port 0 picks a free port (default 127.0.0.1:7600)\n"
    "  -m, --metrics ADDR     serve Prometheus /metrics over HTTP on HOST:PORT\n"
    "      --tls-listen ADDR  listen with TLS on ADDR: HOST:PORT or [V6]:PORT; repeatable\n"
    "      --tls-cert FILE    PEM certificate chain for --tls-listen\n"
    "      --tls-key FILE     PEM private key for --tls-listen\n"
    "      --allow-insecure-listen\n"
    "                         allow plain listen and metrics addresses that are not\n"
    "                         loopback (refused by default: use --tls-listen)\n"
    "  -o, --set KEY=VALUE    set any configuration key (repeatable; wins over the file)\n"
    "      --log-level LEVEL  error, warn, info (default) or debug\n"
    "      --log-json         log JSON lines instead of text\n"
    "      --check-config     check the configuration, print it, and exit\n"
    "  -V, --version          print the version and exit\n"
    "  -h, --help             this help\n"
    "\n"
    "Passwords for `user add` and `user passwd` are read from --password-file or the first\n"
    "line of standard input, never from the command line.\n"
    "\n"
    "On start imd prints one line per listener on standard output, e.g.\n"
    "  imd: listening on 127.0.0.1:7600\n"
    "  imd: listening on 0.0.0.0:7643 (tls)\n"
    "then `imd: ready`. Logs go to standard error. SIGTERM/SIGINT: stop accepting, commit,\n"
    "tell clients (ERROR 730 SHUTDOWN) and exit within shutdown_grace_ms. SIGHUP: reload the\n"
    "config file's reloadable settings and the TLS certificate and key.\n"
    "\n"
    "Exit status: 0 success, 1 runtime failure, 2 usage or configuration error.\n";

typedef struct opts {
    const char *config;
    const char *sets[64];
    int nsets;
    int check;
} opts;

static opts g_opts;

static void die_usage(const char *msg)
{
    if (msg)
        fprintf(stderr, "imd: %s\n", msg);
    fprintf(stderr, "Try 'imd --help'.\n");
    exit(EXIT_USAGE);
}

static int push_set(opts *o, const char *s)
{
    if (o->nsets >= (int)(sizeof o->sets / sizeof o->sets[0]))
        return -1;
    o->sets[o->nsets++] = s;
    return 0;
}

/* Builds the configuration: defaults, then the file, then the flags in order. */
static int build_cfg(const opts *o, ims_cfg *cfg, char *err, size_t errlen)
{
    ims_cfg_default(cfg);
    if (o->config && ims_cfg_load_file(cfg, o->config, err, errlen) != 0)
        return -1;
    int listen_reset = 0, tls_listen_reset = 0;
    for (int i = 0; i < o->nsets; i++) {
        char key[64];
        const char *eq = strchr(o->sets[i], '=');
        if (!eq || eq == o->sets[i] || (size_t)(eq - o->sets[i]) >= sizeof key) {
            snprintf(err, errlen, "--set %s: expected KEY=VALUE", o->sets[i]);
            return -1;
        }
        memcpy(key, o->sets[i], (size_t)(eq - o->sets[i]));
        key[eq - o->sets[i]] = 0;
        if (strcmp(key, "listen") == 0 && !listen_reset) {
            ims_cfg_listen_reset(cfg); /* command-line listens replace the file's */
            listen_reset = 1;
        }
        if (strcmp(key, "tls_listen") == 0 && !tls_listen_reset) {
            ims_cfg_tls_listen_reset(cfg);
            tls_listen_reset = 1;
        }
        if (ims_cfg_set(cfg, key, eq + 1, err, errlen) != 0)
            return -1;
    }
    return ims_cfg_validate(cfg, err, errlen);
}

static int mkdir_p(const char *dir)
{
    char tmp[512];
    snprintf(tmp, sizeof tmp, "%s", dir);
    for (char *p = tmp + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = 0;
        if (mkdir(tmp, 0700) != 0 && errno != EEXIST)
            return -1;
        *p = '/';
    }
    if (mkdir(tmp, 0700) != 0 && errno != EEXIST)
        return -1;
    return 0;
}

static void store_log(void *ud, const char *msg)
{
    (void)ud;
    ims_log(IMS_LOG_ERROR, "store", "error=\"%s\"", msg);
}

/* fsync_thread: 1 for the server (its syncer fsyncs), 0 for the admin commands (inline). */
static ims_store *open_store(const ims_cfg *cfg, int fsync_thread)
{
    if (mkdir_p(cfg->data_dir) != 0) {
        fprintf(stderr, "imd: data directory %s: %s\n", cfg->data_dir, strerror(errno));
        return NULL;
    }
    char path[600], err[512];
    snprintf(path, sizeof path, "%s/imd.db", cfg->data_dir);
    ims_store_options so = {path, cfg->sync_full,          store_log,
                            NULL, cfg->startup_full_check, fsync_thread};
    ims_store *s = ims_store_open(&so, err, sizeof err);
    if (!s) { /* the store's messages usually start with the path already */
        if (strncmp(err, path, strlen(path)) == 0)
            fprintf(stderr, "imd: store %s\n", err);
        else
            fprintf(stderr, "imd: store %s: %s\n", path, err);
    }
    return s;
}

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- admin subcommands ---------------------------------------------------------------------- */

static int read_password(const char *file, char *out, size_t cap)
{
    FILE *f = stdin;
    if (file && !(f = fopen(file, "r"))) {
        fprintf(stderr, "imd: %s: %s\n", file, strerror(errno));
        return -1;
    }
    if (!file && isatty(0))
        fprintf(stderr, "Password: ");
    int ok = fgets(out, (int)cap, f) != NULL;
    if (file)
        fclose(f);
    if (!ok) {
        fprintf(stderr, "imd: no password given\n");
        return -1;
    }
    out[strcspn(out, "\r\n")] = 0;
    if (strlen(out) < 8) {
        fprintf(stderr, "imd: password too short (8 bytes at least)\n");
        return -1;
    }
    return 0;
}

static int fold_name(const char *name, char out[33])
{
    size_t len = strlen(name);
    if (!imp_name_valid((const uint8_t *)name, len)) {
        fprintf(stderr, "imd: not a valid user name: %s\n", name);
        return -1;
    }
    imp_name_fold((const uint8_t *)name, len, (uint8_t *)out);
    out[len] = 0;
    return 0;
}

static int list_user(void *ud, const ims_user *u)
{
    (void)ud;
    printf("%s%s\n", u->name, u->admin ? " admin" : "");
    return 0;
}

static int cmd_user(const ims_cfg *cfg, int argc, char **argv)
{
    if (argc < 1)
        die_usage("user: expected add, del, passwd, admin or list");
    const char *sub = argv[0];
    const char *pwfile = NULL;
    int admin = 0;
    const char *pos[3] = {NULL, NULL, NULL};
    int npos = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--admin") == 0)
            admin = 1;
        else if (strcmp(argv[i], "--password-file") == 0 && i + 1 < argc)
            pwfile = argv[++i];
        else if (argv[i][0] == '-')
            die_usage("user: unknown option");
        else if (npos < 3)
            pos[npos++] = argv[i];
        else
            die_usage("user: too many arguments");
    }
    ims_store *s = open_store(cfg, 0);
    if (!s)
        return EXIT_RUNTIME;
    int rc = EXIT_RUNTIME;
    char name[33], pw[1100], hash[IMS_HASH_MAX];
    ims_auth_options ao;
    ims_auth_options_default(&ao);
    ao.opslimit = cfg->hash_opslimit;
    ao.memlimit = (size_t)cfg->hash_memlimit;
    ims_user u;
    if (strcmp(sub, "list") == 0) {
        if (npos != 0)
            die_usage("user list: no arguments");
        rc = ims_store_user_list(s, "", 1 << 30, list_user, NULL) < 0 ? EXIT_RUNTIME : 0;
    } else if (npos < 1) {
        die_usage("user: NAME missing");
    } else if (fold_name(pos[0], name) != 0) {
        rc = EXIT_USAGE;
    } else if (strcmp(sub, "add") == 0) {
        if (read_password(pwfile, pw, sizeof pw) == 0 &&
            ims_auth_hash_now(&ao, (const uint8_t *)pw, strlen(pw), hash) == 0) {
            int r = ims_store_user_create(s, name, hash, admin, wall_ms(), NULL);
            if (r == 0)
                rc = 0;
            else
                fprintf(stderr, "imd: user add %s: %s\n", name, imp_strerror(r));
        }
    } else if (ims_store_user_get(s, name, &u) != 0) {
        fprintf(stderr, "imd: no such user: %s\n", name);
    } else if (strcmp(sub, "del") == 0) {
        rc = ims_store_user_delete(s, u.id) == 0 ? 0 : EXIT_RUNTIME;
    } else if (strcmp(sub, "passwd") == 0) {
        if (read_password(pwfile, pw, sizeof pw) == 0 &&
            ims_auth_hash_now(&ao, (const uint8_t *)pw, strlen(pw), hash) == 0)
            rc = ims_store_user_set_hash(s, u.id, hash) == 0 ? 0 : EXIT_RUNTIME;
    } else if (strcmp(sub, "admin") == 0) {
        int on = !pos[1] || strcmp(pos[1], "on") == 0;
        if (pos[1] && !on && strcmp(pos[1], "off") != 0)
            die_usage("user admin NAME on|off");
        rc = ims_store_user_set_admin(s, u.id, on) == 0 ? 0 : EXIT_RUNTIME;
    } else {
        die_usage("user: expected add, del, passwd, admin or list");
    }
    sodium_memzero(pw, sizeof pw);
    ims_store_close(s);
    return rc;
}

/* ---- the server ------------------------------------------------------------------------------ */

typedef struct run_ctx {
    struct event_base *base;
    ims_net *net;
    ims_server *srv;
    ims_tls *tls; /* NULL without tls_listen */
    ims_cfg cfg;
    int stopping;
} run_ctx;

static void print_line(void *ud, const char *s)
{
    fprintf(ud, "%s\n", s);
}

static void log_change(void *ud, const char *key, const char *from, const char *to)
{
    (void)ud;
    ims_log(IMS_LOG_INFO, "reload", "key=%s from=%s to=%s", key, from, to);
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    (void)what;
    run_ctx *r = arg;
    if (sig == SIGHUP) {
        ims_cfg cfg;
        char err[512];
        if (build_cfg(&g_opts, &cfg, err, sizeof err) != 0) {
            ims_log(IMS_LOG_ERROR, "reload_failed", "error=\"%s\"", err);
            return;
        }
        ims_log_setup(cfg.log_level, cfg.log_format); /* the change is logged in the new format */
        if (strcmp(cfg.log_format, r->cfg.log_format) != 0)
            log_change(NULL, "log_format", r->cfg.log_format, cfg.log_format);
        if (cfg.shutdown_grace_ms != r->cfg.shutdown_grace_ms) {
            char a[16], b[16];
            snprintf(a, sizeof a, "%u", (unsigned)r->cfg.shutdown_grace_ms);
            snprintf(b, sizeof b, "%u", (unsigned)cfg.shutdown_grace_ms);
            log_change(NULL, "shutdown_grace_ms", a, b);
        }
        ims_server_reload(r->srv, &cfg, log_change, NULL);
        if (r->tls) {
            /* IMP-SEC-005: new connections get the reloaded certificate; on failure the old one
             * stays */
            if (ims_tls_reload(r->tls, &cfg, err, sizeof err) != 0) {
                ims_log(IMS_LOG_ERROR, "tls_reload_failed", "error=\"%s\"", err);
            } else {
                if (strcmp(cfg.tls_min_version, r->cfg.tls_min_version) != 0)
                    log_change(NULL, "tls_min_version", r->cfg.tls_min_version,
                               cfg.tls_min_version);
                memcpy(r->cfg.tls_min_version, cfg.tls_min_version, sizeof r->cfg.tls_min_version);
                ims_log(IMS_LOG_INFO, "tls_reloaded", "cert=%s subject=\"%s\"", cfg.tls_cert,
                        ims_tls_describe(r->tls));
            }
            if (cfg.tls_handshake_timeout_ms != r->cfg.tls_handshake_timeout_ms) {
                char a[16], b[16];
                snprintf(a, sizeof a, "%u", (unsigned)r->cfg.tls_handshake_timeout_ms);
                snprintf(b, sizeof b, "%u", (unsigned)cfg.tls_handshake_timeout_ms);
                log_change(NULL, "tls_handshake_timeout_ms", a, b);
                r->cfg.tls_handshake_timeout_ms = cfg.tls_handshake_timeout_ms;
            }
            ims_net_set_tls(r->net, r->tls, r->cfg.tls_handshake_timeout_ms);
        }
        /* main's own reloadable settings (the core keeps its copy) */
        snprintf(r->cfg.log_level, sizeof r->cfg.log_level, "%s", cfg.log_level);
        snprintf(r->cfg.log_format, sizeof r->cfg.log_format, "%s", cfg.log_format);
        r->cfg.shutdown_grace_ms = cfg.shutdown_grace_ms;
        ims_log(IMS_LOG_INFO, "reloaded", "config=%s", g_opts.config ? g_opts.config : "-");
        return;
    }
    if (r->stopping) {
        /* a second SIGTERM/SIGINT: stop waiting for clients, still commit and exit 0 */
        ims_log(IMS_LOG_WARN, "shutdown_now", "signal=%d", (int)sig);
        event_base_loopexit(r->base, NULL);
        return;
    }
    r->stopping = 1;
    ims_log(IMS_LOG_INFO, "shutdown", "signal=%d", (int)sig);
    ims_net_shutdown(r->net, r->cfg.shutdown_grace_ms);
}

/* Grows the process's descriptor table now, to hold max_connections clients and some more,
 * while imd has one thread. Linux grows the table by doubling when a new descriptor does not
 * fit, and once threads share it (hash workers, fsync thread), each growth waits for an RCU
 * grace period: perf sched showed the event loop blocked 6.7 and 13.8 ms in accept4 ->
 * expand_files -> synchronize_rcu during 10,000 logins. The table never shrinks; it costs
 * kernel memory (8 bytes a slot: 128 KiB for 16,384), not RSS. Best effort, within
 * RLIMIT_NOFILE. */
static void presize_fd_table(const ims_cfg *cfg)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return;
    long want = (long)cfg->max_connections + 64; /* listeners, database, pipes, metrics */
    if (rl.rlim_cur != RLIM_INFINITY && (rlim_t)want >= rl.rlim_cur)
        want = (long)rl.rlim_cur - 1;
    if (want < 256)
        return;
    int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return;
    int hi = fcntl(fd, F_DUPFD_CLOEXEC, (int)want);
    if (hi >= 0)
        close(hi);
    close(fd);
}

static uint64_t loop_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* loop_priority (auth.h ims_loop_set_priority): on the event-loop thread, after the hash workers
 * and the fsync thread have started (a thread inherits its creator's policy: they must not) and
 * before the server starts the loop-lag probe's thread, which does inherit it: the probe then
 * measures the loop, not its own wait for a CPU behind the workers. Logged once either way; a
 * refusal leaves the thread as it was. */
static void apply_loop_priority(const ims_cfg *cfg)
{
    int prio = ims_loop_prio_parse(cfg->loop_priority);
    if (prio <= IMS_LOOP_PRIO_NORMAL)
        return;
    char what[64];
    int e = ims_loop_set_priority((ims_loop_prio)prio, what, sizeof what);
    if (e == 0)
        ims_log(IMS_LOG_INFO, "loop_priority", "mode=%s sched=\"%s\"", cfg->loop_priority, what);
    else
        ims_log(IMS_LOG_WARN, "loop_priority_failed",
                "mode=%s sched=\"%s\" error=\"%s\" fallback=normal hint=\"needs root or "
                "CAP_SYS_NICE\"",
                cfg->loop_priority, what, strerror(e));
}

/* The event loop. busy_poll_us = 0: libevent's own. Otherwise one blocking turn at a time, each
 * turn that did I/O followed by non-blocking turns for as long as ims_busy_poll says (auth.h;
 * the idea of Linux's SO_BUSY_POLL). Exits as event_base_dispatch does: on
 * event_base_loopexit/loopbreak (0), when no event is left (1), or on an error (-1). */
static int run_loop(run_ctx *r)
{
    if (r->cfg.busy_poll_us == 0)
        return event_base_dispatch(r->base);
    ims_busy_poll bp;
    ims_busy_poll_init(&bp, r->cfg.busy_poll_us);
    int rc = 0;
    for (;;) {
        rc = event_base_loop(r->base, EVLOOP_ONCE);
        if (rc != 0 || event_base_got_exit(r->base) || event_base_got_break(r->base))
            break;
        int poll = ims_busy_poll_start(&bp, loop_now_ns(), ims_server_io_count(r->srv));
        while (poll) {
            rc = event_base_loop(r->base, EVLOOP_NONBLOCK);
            if (rc != 0 || event_base_got_exit(r->base) || event_base_got_break(r->base))
                break;
            poll = ims_busy_poll_again(&bp, loop_now_ns(), ims_server_io_count(r->srv));
        }
        if (poll)
            break; /* left the polling for an exit or an error */
    }
    /* windows started, and polls that found I/O (each one a wake-up saved) */
    ims_log(IMS_LOG_INFO, "busy_poll_stats", "us=%u polls=%llu hits=%llu",
            (unsigned)r->cfg.busy_poll_us, (unsigned long long)bp.polls,
            (unsigned long long)bp.hits);
    return rc < 0 ? -1 : rc;
}

static int run_server(const ims_cfg *cfg, ims_tls *tls)
{
    int rc = EXIT_RUNTIME;
    run_ctx r;
    memset(&r, 0, sizeof r);
    r.cfg = *cfg;
    r.tls = tls;
    ims_store *store = NULL;
    ims_auth *auth = NULL;
    ims_syncer *syncer = NULL;
    struct event *sigs[3] = {NULL, NULL, NULL};
    char err[512];

    signal(SIGPIPE, SIG_IGN);
    presize_fd_table(cfg); /* before the first thread */
    store = open_store(cfg, cfg->fsync_thread);
    if (!store)
        goto out;
    r.base = event_base_new();
    if (!r.base || !(r.net = ims_net_new(r.base))) {
        fprintf(stderr, "imd: cannot create the event loop\n");
        goto out;
    }
    if (ims_store_sync_fd(store) >= 0) {
        /* the group commit's fsync off the loop; its wake shares the hash workers' pipe */
        syncer = ims_syncer_new(ims_store_sync_fd(store), ims_store_path(store), ims_net_auth_wake,
                                r.net, err, sizeof err);
        if (!syncer) {
            fprintf(stderr, "imd: %s\n", err);
            goto out;
        }
    }
    ims_auth_options ao;
    ims_auth_options_default(&ao);
    ao.threads = cfg->hash_threads;
    ao.queue_max = cfg->hash_queue;
    ao.opslimit = cfg->hash_opslimit;
    ao.memlimit = (size_t)cfg->hash_memlimit;
    ao.wake = ims_net_auth_wake;
    ao.wake_ud = r.net;
    auth = ims_auth_new(&ao);
    if (!auth) {
        fprintf(stderr, "imd: cannot start the hash workers\n");
        goto out;
    }
    apply_loop_priority(cfg);
    ims_server_options so;
    memset(&so, 0, sizeof so);
    so.cfg = cfg;
    so.store = store;
    so.auth = auth;
    so.io = ims_net_io_ops();
    so.version = "imd/" IMP_LIB_VERSION;
    so.syncer = syncer;
    r.srv = ims_server_new(&so);
    if (!r.srv) {
        fprintf(stderr, "imd: cannot create the server\n");
        goto out;
    }
    ims_net_set_server(r.net, r.srv);
    ims_net_set_tls(r.net, tls, cfg->tls_handshake_timeout_ms);
    if (ims_net_listen(r.net, cfg, stdout, err, sizeof err) != 0) {
        fprintf(stderr, "imd: %s\n", err);
        goto out;
    }
    int signums[3] = {SIGTERM, SIGINT, SIGHUP};
    for (int i = 0; i < 3; i++) {
        sigs[i] = evsignal_new(r.base, signums[i], on_signal, &r);
        if (!sigs[i] || event_add(sigs[i], NULL) != 0) {
            fprintf(stderr, "imd: cannot install signal handlers\n");
            goto out;
        }
    }
    printf("imd: ready\n");
    fflush(stdout);
    ims_log(IMS_LOG_INFO, "started", "version=%s data=%s", IMP_LIB_VERSION, cfg->data_dir);
    if (cfg->busy_poll_us > 0)
        ims_log(IMS_LOG_INFO, "busy_poll", "us=%u", (unsigned)cfg->busy_poll_us);
    if (run_loop(&r) < 0) {
        fprintf(stderr, "imd: event loop failed\n");
        goto out;
    }
    rc = 0;
    /* The handlers are about to go: a late signal must not kill the final commit. */
    signal(SIGTERM, SIG_IGN);
    signal(SIGINT, SIG_IGN);
    ims_log(IMS_LOG_INFO, "stopped", "connections=%d", ims_net_connections(r.net));
out:
    for (int i = 0; i < 3; i++)
        if (sigs[i])
            event_free(sigs[i]);
    /* before the net: the syncer's thread wakes the loop through the net's pipe; and before the
     * store: its checkpoint connection closes first (the store's close syncs what is left) */
    if (r.srv)
        ims_server_detach_syncer(r.srv);
    ims_syncer_free(syncer);
    if (auth)
        ims_auth_free(auth); /* its workers wake the loop through the net's pipe too */
    if (r.net)
        ims_net_free(r.net);
    if (r.srv)
        ims_server_free(r.srv);
    if (store)
        ims_store_close(store); /* commits the last batch */
    if (r.base)
        event_base_free(r.base);
    return rc;
}

int main(int argc, char **argv)
{
    enum {
        OPT_LOG_LEVEL = 256,
        OPT_LOG_JSON,
        OPT_CHECK,
        OPT_TLS_LISTEN,
        OPT_TLS_CERT,
        OPT_TLS_KEY,
        OPT_ALLOW_INSECURE
    };
    static const struct option longopts[] = {
        {"config", required_argument, NULL, 'c'},
        {"data", required_argument, NULL, 'D'},
        {"listen", required_argument, NULL, 'l'},
        {"metrics", required_argument, NULL, 'm'},
        {"tls-listen", required_argument, NULL, OPT_TLS_LISTEN},
        {"tls-cert", required_argument, NULL, OPT_TLS_CERT},
        {"tls-key", required_argument, NULL, OPT_TLS_KEY},
        {"allow-insecure-listen", no_argument, NULL, OPT_ALLOW_INSECURE},
        {"set", required_argument, NULL, 'o'},
        {"log-level", required_argument, NULL, OPT_LOG_LEVEL},
        {"log-json", no_argument, NULL, OPT_LOG_JSON},
        {"check-config", no_argument, NULL, OPT_CHECK},
        {"version", no_argument, NULL, 'V'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    /* Flags become "key=value" settings applied in order after the config file. */
    static char flagbuf[64][600];
    int nflag = 0;
    int ch;
    while ((ch = getopt_long(argc, argv, "+c:D:l:m:o:Vh", longopts, NULL)) != -1) {
        const char *key = NULL, *val = optarg;
        switch (ch) {
        case 'c':
            g_opts.config = optarg;
            continue;
        case 'D':
            key = "data_dir";
            break;
        case 'l':
            key = "listen";
            break;
        case 'm':
            key = "metrics_listen";
            break;
        case 'o':
            if (push_set(&g_opts, optarg) != 0)
                die_usage("too many settings");
            continue;
        case OPT_TLS_LISTEN:
            key = "tls_listen";
            break;
        case OPT_TLS_CERT:
            key = "tls_cert";
            break;
        case OPT_TLS_KEY:
            key = "tls_key";
            break;
        case OPT_ALLOW_INSECURE:
            key = "allow_insecure_listen";
            val = "yes";
            break;
        case OPT_LOG_LEVEL:
            key = "log_level";
            break;
        case OPT_LOG_JSON:
            key = "log_format";
            val = "json";
            break;
        case OPT_CHECK:
            g_opts.check = 1;
            continue;
        case 'V':
            printf("imd %s\n", IMP_LIB_VERSION);
            return 0;
        case 'h':
            fputs(usage_text, stdout);
            return 0;
        default:
            die_usage(NULL);
        }
        if (nflag >= 64)
            die_usage("too many options");
        snprintf(flagbuf[nflag], sizeof flagbuf[nflag], "%s=%s", key, val);
        if (push_set(&g_opts, flagbuf[nflag++]) != 0)
            die_usage("too many settings");
    }
    ims_cfg cfg;
    char err[512];
    if (build_cfg(&g_opts, &cfg, err, sizeof err) != 0) {
        fprintf(stderr, "imd: %s\n", err);
        return EXIT_USAGE;
    }
    if (ims_log_setup(cfg.log_level, cfg.log_format) != 0) {
        fprintf(stderr, "imd: bad log_level or log_format\n");
        return EXIT_USAGE;
    }
    ims_tls *tls = NULL;
    if (g_opts.check || optind >= argc) {
        /* Serving (or checking a configuration to serve with): safe listening defaults, and
         * the TLS certificate and key must load. Admin subcommands listen on nothing. */
        int safe = ims_cfg_check_listen_safety(&cfg, err, sizeof err);
        if (safe < 0) {
            fprintf(stderr, "imd: %s\n", err);
            return EXIT_USAGE;
        }
        if (safe > 0)
            ims_log(IMS_LOG_WARN, "insecure_listen", "warning=\"%s\"", err);
        if (cfg.n_tls_listen > 0 && !(tls = ims_tls_new(&cfg, err, sizeof err))) {
            fprintf(stderr, "imd: %s\n", err);
            return EXIT_USAGE;
        }
    }
    if (g_opts.check) {
        ims_tls_free(tls);
        ims_cfg_dump(&cfg, print_line, stdout);
        fprintf(stderr, "imd: configuration OK\n");
        return 0;
    }
    if (sodium_init() < 0) {
        fprintf(stderr, "imd: libsodium failed to initialise\n");
        ims_tls_free(tls);
        return EXIT_RUNTIME;
    }
    if (optind < argc) {
        if (strcmp(argv[optind], "user") == 0)
            return cmd_user(&cfg, argc - optind - 1, argv + optind + 1);
        die_usage("unknown command");
    }
    int rc = run_server(&cfg, tls);
    ims_tls_free(tls);
    return rc;
}
