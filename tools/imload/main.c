/* imload — options, the phases of a run, the report (table, --json FILE, --csv FILE) and the
 * --assert gates. The connections and the measurement are in engine.c. */
#include "imload.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netdb.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "gate.h"
#include "imt_client.h"
#include "imt_opts.h"

#define MAX_ASSERTS 32
#define DEFAULT_PASSWORD "imload-load-password"

enum {
    OPT_SENDERS = 0x200,
    OPT_RECEIVERS,
    OPT_INFLIGHT,
    OPT_DURATION,
    OPT_SIZE,
    OPT_WARMUP,
    OPT_DRAIN,
    OPT_ACK,
    OPT_TRANSIENT,
    OPT_SEED,
    OPT_PREFIX,
    OPT_ROOM,
    OPT_PREPARE,
    OPT_RECONNECT,
    OPT_PING,
    OPT_AUTH_INFLIGHT,
    OPT_THREADS,
    OPT_SOURCE_ADDRS,
    OPT_CSV,
    OPT_ASSERT,
    OPT_SETUP_TIMEOUT,
    OPT_SINK,
    OPT_LISTEN,
    OPT_JSONFILE,
    OPT_COALESCE,
    OPT_PROCS,
    OPT_RAMP,
    OPT_TLS,
    OPT_CAFILE,
    OPT_INSECURE,
    OPT_TLS_NAME,
    OPT_HISTORY,
    OPT_CHECK,
    OPT_LATE
};

static const char *const usage_text[] = {
    "NAME\n"
    "  imload - load generator for IMP servers: latency and proof that nothing was lost\n"
    "\n"
    "SYNOPSIS\n"
    "  imload [OPTIONS] direct|room|broadcast|idle|churn|login\n"
    "  imload --sink [--listen ADDR]\n"
    "  imload --check FILE...\n"
    "\n"
    "DESCRIPTION\n"
    "  Opens many IMP connections to a server, sends messages on a schedule and checks every\n"
    "  one: each message carries its sender, a sequence number and its intended send time.\n"
    "  Latency is measured from the intended time (open loop: a message written late because\n"
    "  the server or the connection lagged counts its whole delay, correcting coordinated\n"
    "  omission), in a log-linear histogram (<= 1 % error from 1 us to 60 s), for the ACK and\n"
    "  for end-to-end delivery separately. At the end, after a drain period, it reports what\n"
    "  was sent, acknowledged, delivered, lost (acknowledged, or with --ack none sent, but\n"
    "  never delivered to an expected receiver), duplicated and reordered, per sender and\n"
    "  receiver pair, and the connection and protocol errors.\n"
    "\n"
    "SCENARIOS\n"
    "  direct                   S senders PREFIXs<i> -> R receivers PREFIXr<j>, sender i to\n"
    "                           receiver i mod R (default: -c 2, half of -c each)\n"
    "  room                     -c members PREFIXm<i> join ROOM; the first --senders of them\n"
    "                           (default 1) send; every member receives (fan-out -c)\n"
    "  broadcast                the administrator -u broadcasts to -c receivers PREFIXr<j>\n"
    "  idle                     -c connections log in and stay, each PINGing every\n"
    "                           --ping-interval; latency is the PING round trip\n"
    "  churn                    --senders connections (default -c, 10) repeat: connect, log\n"
    "                           in, send one message to a receiver, wait for its ACK,\n"
    "                           disconnect; --receivers (default 1) stay connected\n"
    "  login                    -c connections repeat: connect, LOGIN, disconnect (accounts\n"
    "                           are prepared first); latency is connect to AUTH_OK\n"
    "\n",
    "LOAD SHAPE\n"
    "  -c, --conns N            connections (see SCENARIOS)\n"
    "      --senders N          sending connections\n"
    "      --receivers N        receiving connections\n"
    "      --late-receivers N   direct: the last N receivers stay offline until sending has\n"
    "                           ended, then log in and receive their offline queue within\n"
    "                           --drain (implies --prepare: their accounts exist up front)\n"
    "  -r, --rate R             open loop (default): R messages/s in total (R, R/s, 10k,\n"
    "                           2M), spread evenly over the senders (default 1000);\n"
    "                           -r 0 with -w: closed loop\n"
    "  -w, --inflight W         closed loop instead: each sender keeps W messages without\n"
    "                           ACK (not with --ack none)\n"
    "  -t, --duration T         send for T after the warm-up (default 10s)\n"
    "  -n, --count N            send N messages in total (with -t: whichever ends first)\n"
    "      --size BYTES         message body size (default 64, at least 32)\n"
    "      --warmup T           not measured at the start (default 1s)\n"
    "      --drain T            after the last send, wait at most T for outstanding ACKs\n"
    "                           and deliveries before counting losses (default 5s)\n"
    "      --ack MODE           none, stored (default) or delivered\n"
    "      --transient          transient messages (never stored)\n"
    "      --seed N             0 (default): the senders' schedules are evenly staggered;\n"
    "                           otherwise their phase offsets are random from seed N\n"
    "      --ping-interval T    idle: time between PINGs per connection (default 1s)\n"
    "      --ramp T             ramp up: the connections open evenly over T, and (open\n"
    "                           loop) the rate grows linearly from 0 to --rate over the\n"
    "                           first T of the run (with --warmup T, only the full rate\n"
    "                           is measured)\n"
    "      --coalesce T         open loop: a due message may wait up to T (default 20us;\n"
    "                           0: none) so that several are written at once; the wait\n"
    "                           counts in the latency\n"
    "\n"
    "ACCOUNTS\n"
    "      --prefix P           account names start with P (default ld)\n"
    "      --room NAME          the room (default PREFIXroom)\n"
    "      --prepare            register every account first (REGISTER; existing accounts\n"
    "                           are fine), then run with LOGIN. Without it accounts are\n"
    "                           registered on the fly (REGISTER, then LOGIN if it exists).\n"
    "                           The password of the load accounts is $IMLOAD_PASSWORD, else\n"
    "                           " DEFAULT_PASSWORD "\n"
    "      --reconnect          reconnect lost connections and resend what was not\n"
    "                           acknowledged, with the same CLIENT_MSG_ID (the server\n"
    "                           stores it once); receivers resume with LOGIN LAST_SEQ\n"
    "      --auth-inflight N    connections authenticating at once (default 32)\n"
    "      --setup-timeout T    bound on connecting every connection (default 60s)\n"
    "\n",
    "TLS\n"
    "      --tls                TLS to the server, verifying its certificate against the\n"
    "                           system's trust store (or --cafile) and its name against\n"
    "                           the host of --server (TLS 1.2 at least)\n"
    "      --cafile FILE        trust the PEM certificates in FILE (implies --tls)\n"
    "      --insecure           do not verify the certificate (tests only; implies --tls)\n"
    "      --tls-name NAME      verify the certificate against NAME instead of the host\n"
    "  A failed handshake or verification is a connection error (exit 3 when the\n"
    "  connections cannot be set up); --connect-timeout bounds connect + handshake.\n"
    "\n"
    "SCALE\n"
    "      --threads N          event loops (one epoll loop per thread, default 1); the\n"
    "                           results are merged\n"
    "      --source-addrs N     spread connections over 127.0.0.1 .. 127.0.0.N (past the\n"
    "                           ephemeral port limit of one source address)\n"
    "      --procs N            N worker processes (past one process's descriptor limit),\n"
    "                           each with --threads loops and its share of the connections;\n"
    "                           they start sending at the same instant and their results\n"
    "                           are merged into one report (direct, idle, churn, login;\n"
    "                           progress lines show process 0 only)\n"
    "  The soft descriptor limit is raised to the hard limit at start.\n"
    "\n",
    "OUTPUT AND GATES\n"
    "      --json FILE          the whole result as one JSON object (- is stdout, and the\n"
    "                           table goes to stderr): config,\n"
    "                           server agent, counts (rate, sent, acked, delivered, lost,\n"
    "                           duplicated, reordered, errors) and latency.ack and\n"
    "                           latency.delivery (p50 p90 p99 p999 p9999 max mean, in us,\n"
    "                           and the histogram)\n"
    "      --csv FILE           one CSV row (a header first when FILE is new or empty)\n"
    "      --assert EXPR        METRIC OP VALUE, e.g. 'p99<2ms' 'lost=0' 'rate>=100000';\n"
    "                           metrics: rate sent acked delivered lost duplicated reordered\n"
    "                           errors refused unconfirmed unsent, latency p50 p90 p99\n"
    "                           p999 p9999 max mean (of delivery; ack.p99 for the ACK; idle\n"
    "                           and login measure only ack.*, which plain p99 then means);\n"
    "                           OP one of\n"
    "                           < <= > >= = == !=; VALUE with k M G, or ns us ms s for\n"
    "                           latencies (bare: us). Repeatable; exit 1 if one fails\n"
    "  A progress line goes to stderr every second (not with -q); the report table to\n"
    "  stdout.\n"
    "\n",
    "HISTORY AND CHECK\n"
    "      --history FILE       direct and churn: append one line per message event to\n"
    "                           FILE (truncated first; one file for all threads and\n"
    "                           --procs, whole lines with O_APPEND):\n"
    "                             H imload-history 1 SCENARIO ACK\n"
    "                             S SENDER SEQ CMID TARGET      first written\n"
    "                             R SENDER SEQ CMID TARGET      resent after a reconnect\n"
    "                             A SENDER SEQ OUTCOME CODE MSG_ID DUP   each ACK\n"
    "                             D RECEIVER SENDER SEQ MSG_ID DSEQ      each DELIVER\n"
    "      --check FILE         check history files (FILE and any further arguments)\n"
    "                           instead of running, independently of the run's own\n"
    "                           counting, and print one line: check: sent acked\n"
    "                           refused delivered lost duplicates reordered unexpected\n"
    "                           redelivered resent unconfirmed; exit 0 when lost,\n"
    "                           duplicates, reordered and unexpected are all 0, else 1\n"
    "\n"
    "SINK\n"
    "      --sink               run a minimal IMP server instead: it answers HELLO and any\n"
    "                           REGISTER/LOGIN, ACKs SENDs and turns them into DELIVERs\n"
    "                           without storing anything; for measuring imload itself\n"
    "      --listen ADDR        sink address (default 127.0.0.1:0; the port is printed)\n"
    "\n"
    "COMMON OPTIONS\n"
    "  -s, --server ADDR        HOST[:PORT] (IPv4; env IMP_SERVER; default 127.0.0.1:7600)\n"
    "  -u, --user NAME          broadcast: the administrator who sends (env IMP_USER)\n"
    "      --password-file FILE its password (else IMP_PASSWORD, else a prompt)\n"
    "      --connect-timeout T  with --tls: bound on connect + handshake (default 5s);\n"
    "                           see also --setup-timeout\n"
    "  -q, --quiet              no progress lines, no error messages\n"
    "  -v, --verbose            the phases on stderr\n"
    "  -d, --debug              accepted (imload does not trace frames)\n"
    "      --version            print the version and exit\n"
    "  -h, --help               this text\n"
    "\n",
    "EXIT STATUS\n"
    "  0  the run completed (and every --assert held)\n"
    "  1  an --assert failed\n"
    "  2  usage or configuration error\n"
    "  3  cannot connect (the connections could not all be set up)\n"
    "  4  authentication refused\n"
    "  7  connections were lost and not recovered (the report is still printed)\n"
    "  With --check: 0 no anomaly, 1 anomalies, 2 a file cannot be read or malformed\n"
    "\n"
    "EXAMPLES\n"
    "  imload -s 127.0.0.1:7600 direct -c 200 -r 50k -t 30s --assert 'p99<5ms' \\\n"
    "         --assert lost=0 --json result.json\n"
    "  imload room -c 100 --senders 5 -r 1000 --ack delivered\n"
    "  imload direct -c 20 -w 64 --ack stored -n 1000000 --threads 2\n"};

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

static const char *const scenario_names[] = {"direct",    "idle",  "room",
                                             "broadcast", "churn", "login"};
static const int scenario_ids[] = {SC_DIRECT, SC_IDLE, SC_ROOM, SC_BROADCAST, SC_CHURN, SC_LOGIN};

static const char *scenario_name(int sc)
{
    for (size_t i = 0; i < sizeof scenario_ids / sizeof scenario_ids[0]; i++)
        if (scenario_ids[i] == sc)
            return scenario_names[i];
    return "?";
}

static const char *ack_name(int a)
{
    return a == IMP_ACK_NONE ? "none" : a == IMP_ACK_DELIVERED ? "delivered" : "stored";
}

static int parse_server(const char *spec, config *cfg)
{
    imt_addr a;
    char err[300];
    if (imt_addr_parse(spec, &a, err, sizeof err) != 0) {
        usage_error("%s", err);
        return -1;
    }
    if (a.is_unix) {
        usage_error("unix sockets are not supported by imload (use HOST:PORT)");
        return -1;
    }
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_INET;
    hints.ai_socktype = SOCK_STREAM;
    int r = getaddrinfo(a.host, a.port, &hints, &res);
    if (r != 0 || !res) {
        fprintf(stderr, PROG ": cannot resolve %s: %s\n", a.host, gai_strerror(r));
        return -1;
    }
    memcpy(&cfg->server, res->ai_addr, sizeof cfg->server);
    freeaddrinfo(res);
    snprintf(cfg->server_str, sizeof cfg->server_str, "%s:%s", a.host, a.port);
    snprintf(cfg->host, sizeof cfg->host, "%s", a.host);
    return 0;
}

/* ---- results --------------------------------------------------------------------------------- */

typedef struct result {
    counters c;
    hist ack, e2e;
    uint64_t lost, unconfirmed, errors, unsent;
    double elapsed_s, rate;
    int dead;
    int nconns;
    double cpu_s;  /* imload's own CPU time (user + system, all threads) during the run */
    double wall_s; /* wall time of the run (warm-up and drain included) */
    uint64_t end_ns, measure_from_ns;
    int status;
    char agent[80];
    anomaly anomalies[ANOMALY_MAX]; /* --procs: a worker's anomalous pairs */
    int nanomalies;
} result;

static hist *g_ack, *g_e2e; /* large: heap */

static double us(uint64_t ns)
{
    return (double)ns / 1000.0;
}

static void print_lat_row(FILE *f, const char *name, const hist *h)
{
    if (!h->count) {
        fprintf(f, "  %-10s %10s\n", name, "-");
        return;
    }
    fprintf(f, "  %-10s %10.1f %10.1f %10.1f %10.1f %10.1f %10.1f %10.1f %10llu\n", name,
            us(hist_percentile(h, 50)), us(hist_percentile(h, 90)), us(hist_percentile(h, 99)),
            us(hist_percentile(h, 99.9)), us(hist_percentile(h, 99.99)), us(h->max),
            us(hist_mean(h)), (unsigned long long)h->count);
}

static const char *ack_label(const config *cfg)
{
    switch (cfg->scenario) {
    case SC_IDLE:
        return "ping";
    case SC_LOGIN:
        return "login";
    default:
        return "ack";
    }
}

static void print_report(const config *cfg, const shared *sh, const result *r, FILE *f)
{
    fprintf(f, "imload %s: %s, %d connections", scenario_name(cfg->scenario), cfg->server_str,
            sh->nconns);
    if (sh->nsenders)
        fprintf(f, " (%d senders, %d receivers)", sh->nsenders, sh->nreceivers);
    fprintf(f, ", %d thread%s", cfg->threads, cfg->threads == 1 ? "" : "s");
    if (cfg->procs > 1)
        fprintf(f, " in each of %d processes", cfg->procs);
    fprintf(f, "\n");
    if (sh->nsenders) {
        if (cfg->rate > 0)
            fprintf(f, "load: open loop %.0f msg/s", cfg->rate);
        else
            fprintf(f, "load: closed loop, %u in flight per sender", cfg->inflight);
        fprintf(f, ", %zu-byte bodies, ack %s%s, fan-out %d\n", cfg->size, ack_name(cfg->ack),
                cfg->transient ? ", transient" : "", sh->fanout);
    }
    fprintf(f, "server: %s\n", sh->agent[0] ? sh->agent : "(no AGENT)");
    fprintf(f, "measured: %.3f s after a %.3f s warm-up\n\n", r->elapsed_s, cfg->warmup_s);
    const counters *c = &r->c;
    fprintf(f, "  %-12s %14llu\n", "sent", (unsigned long long)c->sent);
    fprintf(f, "  %-12s %14llu\n", "acked", (unsigned long long)c->acked);
    fprintf(f, "  %-12s %14llu\n", "delivered", (unsigned long long)c->delivered);
    fprintf(f, "  %-12s %14llu\n", "lost", (unsigned long long)r->lost);
    fprintf(f, "  %-12s %14llu\n", "duplicated", (unsigned long long)c->duplicated);
    fprintf(f, "  %-12s %14llu\n", "reordered", (unsigned long long)c->reordered);
    fprintf(f, "  %-12s %14llu\n", "refused", (unsigned long long)c->refused);
    fprintf(f, "  %-12s %14llu   (sent, neither acked nor delivered)\n", "unconfirmed",
            (unsigned long long)r->unconfirmed);
    if (r->unsent)
        fprintf(f, "  %-12s %14llu   (due but never written: behind the schedule)\n", "unsent",
                (unsigned long long)r->unsent);
    fprintf(f, "  %-12s %14llu   (connection %llu, protocol %llu, authentication %llu)\n", "errors",
            (unsigned long long)r->errors, (unsigned long long)c->conn_errors,
            (unsigned long long)c->proto_errors, (unsigned long long)c->auth_errors);
    fprintf(f, "  %-12s %14llu   (reconnects %llu, logins %llu)\n", "connects",
            (unsigned long long)c->connects, (unsigned long long)c->reconnects,
            (unsigned long long)c->logins);
    const char *unit = cfg->scenario == SC_IDLE    ? "pongs/s"
                       : cfg->scenario == SC_LOGIN ? "logins/s"
                       : cfg->scenario == SC_CHURN ? "cycles/s"
                                                   : "delivered msg/s";
    fprintf(f, "  %-12s %14.1f   %s\n", "rate", r->rate, unit);
    fprintf(f, "  %-12s %14.1f   %% of one core (%.2f s CPU in %.2f s)\n\n", "imload cpu",
            r->wall_s > 0 ? 100.0 * r->cpu_s / r->wall_s : 0, r->cpu_s, r->wall_s);
    if (sh->nanomalies) {
        fprintf(f, "  pairs with lost, duplicated or reordered messages%s:\n",
                sh->nanomalies >= ANOMALY_MAX ? " (the first 100)" : "");
        for (int i = 0; i < sh->nanomalies && i < 10; i++)
            fprintf(f, "    %s -> %s: lost %llu, duplicated %llu, reordered %llu\n",
                    sh->anomalies[i].sender, sh->anomalies[i].receiver,
                    (unsigned long long)sh->anomalies[i].lost,
                    (unsigned long long)sh->anomalies[i].duplicated,
                    (unsigned long long)sh->anomalies[i].reordered);
        if (sh->nanomalies > 10)
            fprintf(f, "    ... (all of them in --json)\n");
        fprintf(f, "\n");
    }
    fprintf(f, "  %-10s %10s %10s %10s %10s %10s %10s %10s %10s\n", "latency us", "p50", "p90",
            "p99", "p99.9", "p99.99", "max", "mean", "count");
    print_lat_row(f, ack_label(cfg), &r->ack);
    if (sh->nreceivers)
        print_lat_row(f, "delivery", &r->e2e);
    fflush(f);
}

static void json_str(FILE *f, const char *s)
{
    fputc('"', f);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\')
            fprintf(f, "\\%c", *p);
        else if (*p < 0x20 || *p == 0x7f)
            fprintf(f, "\\u%04x", *p);
        else
            fputc(*p, f);
    }
    fputc('"', f);
}

static void json_hist(FILE *f, const hist *h)
{
    fprintf(f,
            "{\"count\":%llu,\"p50\":%.3f,\"p90\":%.3f,\"p99\":%.3f,\"p999\":%.3f,"
            "\"p9999\":%.3f,\"max\":%.3f,\"min\":%.3f,\"mean\":%.3f,\"unit\":\"us\","
            "\"histogram\":[",
            (unsigned long long)h->count, us(hist_percentile(h, 50)), us(hist_percentile(h, 90)),
            us(hist_percentile(h, 99)), us(hist_percentile(h, 99.9)), us(hist_percentile(h, 99.99)),
            us(h->max), us(h->count ? h->min : 0), us(hist_mean(h)));
    int first = 1;
    for (unsigned i = 0; i < HIST_BUCKETS; i++) {
        if (!h->b[i])
            continue;
        fprintf(f, "%s[%.3f,%llu]", first ? "" : ",", us(hist_bucket_value(i)),
                (unsigned long long)h->b[i]);
        first = 0;
    }
    fprintf(f, "]}");
}

static int write_json(const char *path, const config *cfg, const shared *sh, const result *r)
{
    FILE *f = strcmp(path, "-") == 0 ? stdout : fopen(path, "w");
    if (!f) {
        fprintf(stderr, PROG ": cannot write %s: %s\n", path, strerror(errno));
        return -1;
    }
    const counters *c = &r->c;
    fprintf(f, "{\"v\":1,\"tool\":\"imload\",\"version\":\"%s\",\"scenario\":\"%s\",",
            IMP_LIB_VERSION, scenario_name(cfg->scenario));
    fprintf(f, "\"server\":{\"address\":");
    json_str(f, cfg->server_str);
    fprintf(f, ",\"agent\":");
    json_str(f, sh->agent);
    fprintf(f,
            "},\"config\":{\"conns\":%d,\"senders\":%d,\"receivers\":%d,\"fanout\":%d,"
            "\"threads\":%d,\"procs\":%d,\"source_addrs\":%d,\"loop\":\"%s\",\"rate\":%.3f,"
            "\"inflight\":%u,\"duration_s\":%.3f,\"count\":%llu,\"size\":%zu,"
            "\"warmup_s\":%.3f,\"drain_s\":%.3f,\"ack\":\"%s\",\"class\":\"%s\","
            "\"seed\":%llu,\"ramp_s\":%.3f,\"prefix\":",
            sh->nconns, sh->nsenders, sh->nreceivers, sh->fanout, cfg->threads, cfg->procs,
            cfg->source_addrs, cfg->rate > 0 ? "open" : "closed", cfg->rate, cfg->inflight,
            cfg->duration_s, (unsigned long long)cfg->count, cfg->size, cfg->warmup_s, cfg->drain_s,
            ack_name(cfg->ack), cfg->transient ? "transient" : "durable",
            (unsigned long long)cfg->seed, (double)cfg->ramp_ns / 1e9);
    json_str(f, cfg->prefix);
    fprintf(f, ",\"room\":");
    json_str(f, cfg->room);
    fprintf(f, ",\"coalesce_us\":%.3f", (double)cfg->coalesce_ns / 1e3);
    fprintf(f, ",\"prepare\":%s,\"reconnect\":%s,\"tls\":%s,\"late_receivers\":%d},",
            cfg->prepare ? "true" : "false", cfg->reconnect ? "true" : "false",
            cfg->tls.enabled ? "true" : "false", cfg->late_receivers);
    fprintf(f,
            "\"elapsed_s\":%.6f,\"rate\":%.3f,\"sent\":%llu,\"acked\":%llu,\"delivered\":%llu,"
            "\"lost\":%llu,\"duplicated\":%llu,\"reordered\":%llu,\"errors\":%llu,"
            "\"refused\":%llu,\"unconfirmed\":%llu,\"unsent\":%llu,\"delivered_measured\":%llu,",
            r->elapsed_s, r->rate, (unsigned long long)c->sent, (unsigned long long)c->acked,
            (unsigned long long)c->delivered, (unsigned long long)r->lost,
            (unsigned long long)c->duplicated, (unsigned long long)c->reordered,
            (unsigned long long)r->errors, (unsigned long long)c->refused,
            (unsigned long long)r->unconfirmed, (unsigned long long)r->unsent,
            (unsigned long long)c->delivered_measured);
    fprintf(f,
            "\"error_detail\":{\"connection\":%llu,\"protocol\":%llu,\"authentication\":%llu},"
            "\"connects\":%llu,\"reconnects\":%llu,\"logins\":%llu,\"pings\":%llu,"
            "\"pongs\":%llu,\"cycles\":%llu,\"connections_lost\":%d,\"client_cpu_s\":%.3f,"
            "\"wall_s\":%.3f,",
            (unsigned long long)c->conn_errors, (unsigned long long)c->proto_errors,
            (unsigned long long)c->auth_errors, (unsigned long long)c->connects,
            (unsigned long long)c->reconnects, (unsigned long long)c->logins,
            (unsigned long long)c->pings, (unsigned long long)c->pongs,
            (unsigned long long)c->cycles, r->dead, r->cpu_s, r->wall_s);
    fprintf(f, "\"pairs\":[");
    for (int i = 0; i < sh->nanomalies; i++) {
        const anomaly *a = &sh->anomalies[i];
        fprintf(f, "%s{\"sender\":", i ? "," : "");
        json_str(f, a->sender);
        fprintf(f, ",\"receiver\":");
        json_str(f, a->receiver);
        fprintf(f, ",\"lost\":%llu,\"duplicated\":%llu,\"reordered\":%llu}",
                (unsigned long long)a->lost, (unsigned long long)a->duplicated,
                (unsigned long long)a->reordered);
    }
    fprintf(f, "],");
    fprintf(f, "\"latency\":{\"ack\":");
    json_hist(f, &r->ack);
    fprintf(f, ",\"delivery\":");
    json_hist(f, &r->e2e);
    fprintf(f, "}}\n");
    if (f != stdout) {
        if (fclose(f) != 0) {
            fprintf(stderr, PROG ": cannot write %s: %s\n", path, strerror(errno));
            return -1;
        }
    } else {
        fflush(f);
    }
    return 0;
}

static int write_csv(const char *path, const config *cfg, const shared *sh, const result *r)
{
    FILE *f = fopen(path, "a");
    if (!f) {
        fprintf(stderr, PROG ": cannot write %s: %s\n", path, strerror(errno));
        return -1;
    }
    if (ftell(f) == 0)
        fprintf(f, "scenario,conns,senders,receivers,threads,loop,target_rate,inflight,size,ack,"
                   "elapsed_s,rate,sent,acked,delivered,lost,duplicated,reordered,errors,"
                   "refused,ack_p50_us,ack_p90_us,ack_p99_us,ack_p999_us,ack_p9999_us,"
                   "ack_max_us,delivery_p50_us,delivery_p90_us,delivery_p99_us,"
                   "delivery_p999_us,delivery_p9999_us,delivery_max_us\n");
    const counters *c = &r->c;
    fprintf(f, "%s,%d,%d,%d,%d,%s,%.1f,%u,%zu,%s,%.3f,%.1f,%llu,%llu,%llu,%llu,%llu,%llu,%llu,%llu",
            scenario_name(cfg->scenario), sh->nconns, sh->nsenders, sh->nreceivers, cfg->threads,
            cfg->rate > 0 ? "open" : "closed", cfg->rate, cfg->inflight, cfg->size,
            ack_name(cfg->ack), r->elapsed_s, r->rate, (unsigned long long)c->sent,
            (unsigned long long)c->acked, (unsigned long long)c->delivered,
            (unsigned long long)r->lost, (unsigned long long)c->duplicated,
            (unsigned long long)c->reordered, (unsigned long long)r->errors,
            (unsigned long long)c->refused);
    const hist *hs[2] = {&r->ack, &r->e2e};
    for (int k = 0; k < 2; k++)
        fprintf(f, ",%.1f,%.1f,%.1f,%.1f,%.1f,%.1f", us(hist_percentile(hs[k], 50)),
                us(hist_percentile(hs[k], 90)), us(hist_percentile(hs[k], 99)),
                us(hist_percentile(hs[k], 99.9)), us(hist_percentile(hs[k], 99.99)),
                us(hs[k]->max));
    fprintf(f, "\n");
    if (fclose(f) != 0) {
        fprintf(stderr, PROG ": cannot write %s: %s\n", path, strerror(errno));
        return -1;
    }
    return 0;
}

/* ---- --assert -------------------------------------------------------------------------------- */

static double metric_value(const char *m, const config *cfg, const result *r, int *is_ns)
{
    *is_ns = 0;
    const counters *c = &r->c;
    if (!strcmp(m, "rate"))
        return r->rate;
    if (!strcmp(m, "sent"))
        return (double)c->sent;
    if (!strcmp(m, "acked"))
        return (double)c->acked;
    if (!strcmp(m, "delivered"))
        return (double)c->delivered;
    if (!strcmp(m, "lost"))
        return (double)r->lost;
    if (!strcmp(m, "duplicated"))
        return (double)c->duplicated;
    if (!strcmp(m, "reordered"))
        return (double)c->reordered;
    if (!strcmp(m, "errors"))
        return (double)r->errors;
    if (!strcmp(m, "refused"))
        return (double)c->refused;
    if (!strcmp(m, "unconfirmed"))
        return (double)r->unconfirmed;
    if (!strcmp(m, "unsent"))
        return (double)r->unsent;
    const hist *h = &r->e2e;
    if (cfg->scenario == SC_IDLE || cfg->scenario == SC_LOGIN)
        h = &r->ack;
    const char *d = strchr(m, '.');
    if (d) {
        h = !strncmp(m, "ack.", 4) ? &r->ack : &r->e2e;
        m = d + 1;
    }
    *is_ns = 1;
    if (!strcmp(m, "max"))
        return (double)h->max;
    if (!strcmp(m, "min"))
        return (double)(h->count ? h->min : 0);
    if (!strcmp(m, "mean"))
        return (double)hist_mean(h);
    double p = !strcmp(m, "p50")    ? 50
               : !strcmp(m, "p90")  ? 90
               : !strcmp(m, "p99")  ? 99
               : !strcmp(m, "p999") ? 99.9
                                    : 99.99;
    return (double)hist_percentile(h, p);
}

static int check_gates(const gate *gs, int n, const config *cfg, const result *r, int quiet)
{
    int failed = 0;
    for (int i = 0; i < n; i++) {
        const gate *g = &gs[i];
        int is_ns;
        double v = metric_value(g->metric, cfg, r, &is_ns);
        int ok = gate_holds(g, v);
        if (!quiet || !ok) {
            if (is_ns)
                fprintf(stderr, PROG ": assert %s: %s (%s = %.1f us)\n", g->text,
                        ok ? "ok" : "FAILED", g->metric, v / 1e3);
            else
                fprintf(stderr, PROG ": assert %s: %s (%s = %.1f)\n", g->text, ok ? "ok" : "FAILED",
                        g->metric, v);
        }
        if (!ok)
            failed = 1;
    }
    return failed;
}

/* Rate and elapsed time from the merged counters. */
static void finish_result(const config *cfg, result *r)
{
    r->errors = r->c.conn_errors + r->c.proto_errors + r->c.auth_errors + r->c.refused;
    r->elapsed_s =
        r->end_ns > r->measure_from_ns ? (double)(r->end_ns - r->measure_from_ns) / 1e9 : 0;
    uint64_t ops = r->c.delivered_measured;
    if (cfg->scenario == SC_IDLE || cfg->scenario == SC_LOGIN || cfg->scenario == SC_CHURN)
        ops = r->ack.count;
    r->rate = r->elapsed_s > 0 ? (double)ops / r->elapsed_s : 0;
}

static volatile sig_atomic_t g_interrupted;

static void on_sigint(int sig)
{
    (void)sig;
    g_interrupted = g_interrupted + 1;
}

/* ---- --procs --------------------------------------------------------------------------------- */

typedef struct proc_link {
    pid_t pid;
    int up;   /* worker -> parent: 'R' (set up), 'F' + status (failed), then the result */
    int down; /* parent -> worker: t0 */
} proc_link;

static int write_all(int fd, const void *p, size_t n)
{
    const char *b = p;
    while (n > 0) {
        ssize_t w = write(fd, b, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        b += w;
        n -= (size_t)w;
    }
    return 0;
}

static int read_all(int fd, void *p, size_t n)
{
    char *b = p;
    while (n > 0) {
        ssize_t r = read(fd, b, n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        b += r;
        n -= (size_t)r;
    }
    return 0;
}

static int child_fail(int up_fd, int status)
{
    if (up_fd >= 0) {
        char m[2] = {'F', (char)status};
        (void)write_all(up_fd, m, 2);
    }
    return status;
}

/* A worker process is set up: tell the parent, receive the common start time. */
static int child_sync(int up_fd, int down_fd, uint64_t *t0)
{
    char m[2] = {'R', 0};
    if (write_all(up_fd, m, 2) != 0 || read_all(down_fd, t0, sizeof *t0) != 0)
        return -1;
    return 0;
}

static int reap(proc_link *links, int n)
{
    int st = 0;
    for (int i = 0; i < n; i++) {
        int ws;
        if (waitpid(links[i].pid, &ws, 0) == links[i].pid && WIFEXITED(ws) && WEXITSTATUS(ws) &&
            !st)
            st = WEXITSTATUS(ws);
    }
    return st;
}

static int parent_main(config *cfg, proc_link *links, int total_conns, const char *json_path,
                       const char *csv_path, const gate *gates, int ngates)
{
    int n = cfg->procs, fail = 0;
    /* SIGINT reaches the whole process group: the workers stop and report; wait for them */
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigint;
    sigaction(SIGINT, &sa, NULL);
    for (int i = 0; i < n; i++) {
        char m[2];
        if (read_all(links[i].up, m, 2) != 0)
            fail = fail ? fail : IMT_EXIT_USAGE;
        else if (m[0] == 'F')
            fail = fail ? fail : m[1];
    }
    if (fail) {
        for (int i = 0; i < n; i++) {
            kill(links[i].pid, SIGTERM);
            close(links[i].down);
        }
        reap(links, n);
        return fail;
    }
    uint64_t t0 = now_ns() + 20000000u;
    for (int i = 0; i < n; i++)
        (void)write_all(links[i].down, &t0, sizeof t0);
    static result total, one;
    memset(&total, 0, sizeof total);
    hist_init(&total.ack);
    hist_init(&total.e2e);
    int st = 0;
    for (int i = 0; i < n; i++) {
        if (read_all(links[i].up, &one, sizeof one) != 0) {
            fprintf(stderr, PROG ": worker process %d ended without a result\n", i);
            st = IMT_EXIT_LOST;
            continue;
        }
        const uint64_t *s = (const uint64_t *)&one.c;
        uint64_t *d = (uint64_t *)&total.c;
        for (size_t k = 0; k < sizeof one.c / sizeof(uint64_t); k++)
            d[k] += s[k];
        hist_merge(&total.ack, &one.ack);
        hist_merge(&total.e2e, &one.e2e);
        total.lost += one.lost;
        total.unconfirmed += one.unconfirmed;
        total.unsent += one.unsent;
        total.dead += one.dead;
        total.cpu_s += one.cpu_s;
        if (one.wall_s > total.wall_s)
            total.wall_s = one.wall_s;
        if (one.end_ns > total.end_ns)
            total.end_ns = one.end_ns;
        total.measure_from_ns = one.measure_from_ns;
        if (!total.agent[0])
            memcpy(total.agent, one.agent, sizeof total.agent);
        for (int k = 0; k < one.nanomalies && total.nanomalies < ANOMALY_MAX; k++)
            total.anomalies[total.nanomalies++] = one.anomalies[k];
    }
    int rst = reap(links, n);
    finish_result(cfg, &total);
    /* the layout, for the report's numbers only */
    static shared sh;
    memset(&sh, 0, sizeof sh);
    sh.cfg = cfg;
    sh.nworkers = 1;
    worker *w0;
    sh.workers = &w0;
    cfg->proc_index = -1;
    w0 = worker_new(&sh, 0);
    engine_setup(&sh);
    sh.nconns = total_conns;
    snprintf(sh.agent, sizeof sh.agent, "%s", total.agent);
    memcpy(sh.anomalies, total.anomalies, sizeof sh.anomalies);
    sh.nanomalies = total.nanomalies;
    total.nconns = total_conns;
    print_report(cfg, &sh, &total, json_path && !strcmp(json_path, "-") ? stderr : stdout);
    if (json_path && write_json(json_path, cfg, &sh, &total) != 0)
        st = st ? st : IMT_EXIT_USAGE;
    if (csv_path && write_csv(csv_path, cfg, &sh, &total) != 0)
        st = st ? st : IMT_EXIT_USAGE;
    if (check_gates(gates, ngates, cfg, &total, cfg->quiet))
        st = st ? st : IMT_EXIT_UNMET;
    if (!st && total.dead > 0) {
        if (!cfg->quiet)
            fprintf(stderr, PROG ": %d connections were lost\n", total.dead);
        st = IMT_EXIT_LOST;
    }
    if (!st && rst)
        st = rst;
    engine_teardown();
    worker_free(w0);
    return st;
}

/* ---- the run --------------------------------------------------------------------------------- */

static void set_phase(shared *sh, int ph)
{
    __atomic_store_n(&sh->phase, ph, __ATOMIC_RELEASE);
}

static void sum_snapshots(shared *sh, counters *tot, int *ready, int *dead)
{
    memset(tot, 0, sizeof *tot);
    *ready = *dead = 0;
    for (int i = 0; i < sh->nworkers; i++) {
        counters c;
        int rd, dd;
        worker_snapshot(sh->workers[i], &c, &rd, &dd);
        const uint64_t *s = (const uint64_t *)&c;
        uint64_t *t = (uint64_t *)tot;
        for (size_t k = 0; k < sizeof c / sizeof(uint64_t); k++)
            t[k] += s[k];
        *ready += rd;
        *dead += dd;
    }
}

static double self_cpu_s(void)
{
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0)
        return 0;
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

static void sleep_ms(unsigned ms)
{
    struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static int start_threads(shared *sh, pthread_t *th)
{
    for (int i = 0; i < sh->nworkers; i++)
        if (pthread_create(&th[i], NULL, worker_main, sh->workers[i]) != 0) {
            fprintf(stderr, PROG ": cannot start a thread\n");
            return -1;
        }
    return 0;
}

static void join_threads(shared *sh, pthread_t *th)
{
    set_phase(sh, PH_STOP);
    for (int i = 0; i < sh->nworkers; i++)
        pthread_join(th[i], NULL);
}

/* Wait until `want` connections are ready (or done, when preparing). 0, or an exit status. */
static int wait_setup(shared *sh, int want, uint64_t timeout_ns, const char *what)
{
    const config *cfg = sh->cfg;
    uint64_t until = now_ns() + timeout_ns, last_print = now_ns();
    for (;;) {
        counters c;
        int ready, dead;
        sum_snapshots(sh, &c, &ready, &dead);
        if (ready >= want)
            return 0;
        uint64_t t = now_ns();
        if (dead > 0 && ready + dead >= sh->nconns) {
            fprintf(stderr, PROG ": %s: %d of %d connections failed\n", what, dead, sh->nconns);
            return c.auth_errors ? IMT_EXIT_AUTH : IMT_EXIT_CONNECT;
        }
        if (t >= until || g_interrupted) {
            fprintf(stderr, PROG ": %s: only %d of %d connections ready after %.1f s\n", what,
                    ready, want, (double)timeout_ns / 1e9);
            return c.auth_errors ? IMT_EXIT_AUTH : IMT_EXIT_CONNECT;
        }
        if (!cfg->quiet && t - last_print >= 1000000000u) {
            last_print = t;
            fprintf(stderr, PROG ": %s: %d/%d connections ready\n", what, ready, want);
        }
        sleep_ms(5);
    }
}

static void raise_nofile(int quiet)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0 && !quiet)
            fprintf(stderr, PROG ": cannot raise the descriptor limit: %s\n", strerror(errno));
    }
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"server", required_argument, NULL, 's'},
        {"user", required_argument, NULL, 'u'},
        {"password-file", required_argument, NULL, IMT_OPT_PASSWORD_FILE},
        {"connect-timeout", required_argument, NULL, IMT_OPT_CONNECT_TIMEOUT},
        {"quiet", no_argument, NULL, 'q'},
        {"verbose", no_argument, NULL, 'v'},
        {"debug", no_argument, NULL, 'd'},
        {"version", no_argument, NULL, IMT_OPT_VERSION},
        {"json", required_argument, NULL, OPT_JSONFILE},
        {"help", no_argument, NULL, 'h'},
        {"conns", required_argument, NULL, 'c'},
        {"senders", required_argument, NULL, OPT_SENDERS},
        {"receivers", required_argument, NULL, OPT_RECEIVERS},
        {"rate", required_argument, NULL, 'r'},
        {"inflight", required_argument, NULL, 'w'},
        {"duration", required_argument, NULL, 't'},
        {"count", required_argument, NULL, 'n'},
        {"size", required_argument, NULL, OPT_SIZE},
        {"warmup", required_argument, NULL, OPT_WARMUP},
        {"drain", required_argument, NULL, OPT_DRAIN},
        {"ack", required_argument, NULL, OPT_ACK},
        {"transient", no_argument, NULL, OPT_TRANSIENT},
        {"seed", required_argument, NULL, OPT_SEED},
        {"prefix", required_argument, NULL, OPT_PREFIX},
        {"room", required_argument, NULL, OPT_ROOM},
        {"prepare", no_argument, NULL, OPT_PREPARE},
        {"reconnect", no_argument, NULL, OPT_RECONNECT},
        {"ping-interval", required_argument, NULL, OPT_PING},
        {"auth-inflight", required_argument, NULL, OPT_AUTH_INFLIGHT},
        {"threads", required_argument, NULL, OPT_THREADS},
        {"source-addrs", required_argument, NULL, OPT_SOURCE_ADDRS},
        {"csv", required_argument, NULL, OPT_CSV},
        {"assert", required_argument, NULL, OPT_ASSERT},
        {"setup-timeout", required_argument, NULL, OPT_SETUP_TIMEOUT},
        {"sink", no_argument, NULL, OPT_SINK},
        {"listen", required_argument, NULL, OPT_LISTEN},
        {"coalesce", required_argument, NULL, OPT_COALESCE},
        {"procs", required_argument, NULL, OPT_PROCS},
        {"ramp", required_argument, NULL, OPT_RAMP},
        {"tls", no_argument, NULL, OPT_TLS},
        {"cafile", required_argument, NULL, OPT_CAFILE},
        {"insecure", no_argument, NULL, OPT_INSECURE},
        {"tls-name", required_argument, NULL, OPT_TLS_NAME},
        {"history", required_argument, NULL, OPT_HISTORY},
        {"check", no_argument, NULL, OPT_CHECK},
        {"late-receivers", required_argument, NULL, OPT_LATE},
        {0, 0, 0, 0}};
    imt_opts o;
    imt_opts_init(&o, PROG);
    static config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.conns = -1;
    cfg.senders = -1;
    cfg.receivers = -1;
    cfg.threads = 1;
    cfg.procs = 1;
    cfg.source_addrs = 1;
    cfg.rate = 1000;
    cfg.duration_s = 10;
    cfg.size = 64;
    cfg.warmup_s = 1;
    cfg.drain_s = 5;
    cfg.ack = IMP_ACK_STORED;
    cfg.seed = 0;
    cfg.coalesce_ns = 20000;
    cfg.ping_ms = 1000;
    cfg.auth_inflight = 32;
    snprintf(cfg.prefix, sizeof cfg.prefix, "ld");
    cfg.history_fd = -1;
    const char *history_path = NULL;
    int check = 0;
    int rate_set = 0, duration_set = 0, warmup_set = 0, sink = 0;
    const char *json_path = NULL, *csv_path = NULL, *listen_addr = "127.0.0.1:0";
    uint32_t setup_timeout_ms = 60000;
    static gate gates[MAX_ASSERTS];
    int ngates = 0;
    int ch;
    while ((ch = getopt_long(argc, argv, IMT_OPTS_SHORT "hc:r:w:t:n:", longopts, NULL)) != -1) {
        int r = imt_opts_handle(&o, ch, optarg);
        if (r > 0)
            continue;
        if (r < 0)
            return IMT_EXIT_USAGE;
        uint64_t u;
        uint32_t ms;
        switch (ch) {
        case 'h':
            for (size_t i = 0; i < sizeof usage_text / sizeof usage_text[0]; i++)
                fputs(usage_text[i], stdout);
            return 0;
        case 'c':
        case OPT_SENDERS:
        case OPT_RECEIVERS:
        case OPT_THREADS:
        case OPT_PROCS:
        case OPT_SOURCE_ADDRS:
        case OPT_AUTH_INFLIGHT:
            if (parse_count(optarg, ch == 'c' || ch == OPT_SENDERS || ch == OPT_RECEIVERS ? 0 : 1,
                            ch == OPT_SOURCE_ADDRS ? 254
                            : ch == OPT_THREADS    ? 256
                                                   : 10000000,
                            &u) != 0) {
                usage_error("bad number '%s'", optarg);
                return IMT_EXIT_USAGE;
            }
            if (ch == 'c')
                cfg.conns = (int)u;
            else if (ch == OPT_SENDERS)
                cfg.senders = (int)u;
            else if (ch == OPT_RECEIVERS)
                cfg.receivers = (int)u;
            else if (ch == OPT_THREADS)
                cfg.threads = (int)u;
            else if (ch == OPT_PROCS)
                cfg.procs = (int)u;
            else if (ch == OPT_SOURCE_ADDRS)
                cfg.source_addrs = (int)u;
            else
                cfg.auth_inflight = (int)u;
            break;
        case 'r':
            if (parse_rate(optarg, &cfg.rate) != 0 || cfg.rate < 0) {
                usage_error("bad --rate '%s'", optarg);
                return IMT_EXIT_USAGE;
            }
            rate_set = cfg.rate > 0 ? 1 : 2; /* 2: -r 0, no rate (closed loop with -w) */
            break;
        case 'w':
            if (parse_count(optarg, 1, 1000000, &u) != 0) {
                usage_error("bad --inflight '%s'", optarg);
                return IMT_EXIT_USAGE;
            }
            cfg.inflight = (uint32_t)u;
            break;
        case 't':
        case OPT_WARMUP:
        case OPT_DRAIN:
        case OPT_PING:
        case OPT_RAMP:
        case OPT_SETUP_TIMEOUT:
            if (imt_parse_duration_ms(optarg, &ms) != 0) {
                usage_error("bad duration '%s'", optarg);
                return IMT_EXIT_USAGE;
            }
            if (ch == 't')
                cfg.duration_s = ms / 1000.0, duration_set = 1;
            else if (ch == OPT_WARMUP)
                cfg.warmup_s = ms / 1000.0, warmup_set = 1;
            else if (ch == OPT_DRAIN)
                cfg.drain_s = ms / 1000.0;
            else if (ch == OPT_PING)
                cfg.ping_ms = ms ? ms : 1;
            else if (ch == OPT_RAMP)
                cfg.ramp_ns = (uint64_t)ms * 1000000u;
            else
                setup_timeout_ms = ms;
            break;
        case 'n':
            if (parse_count(optarg, 1, UINT64_MAX / 2, &cfg.count) != 0) {
                usage_error("bad --count '%s'", optarg);
                return IMT_EXIT_USAGE;
            }
            break;
        case OPT_SIZE:
            if (parse_count(optarg, BODY_HDR, 16000000, &u) != 0) {
                usage_error("bad --size '%s' (%d to 16000000)", optarg, BODY_HDR);
                return IMT_EXIT_USAGE;
            }
            cfg.size = (size_t)u;
            break;
        case OPT_ACK:
            if (!strcmp(optarg, "none"))
                cfg.ack = IMP_ACK_NONE;
            else if (!strcmp(optarg, "stored"))
                cfg.ack = IMP_ACK_STORED;
            else if (!strcmp(optarg, "delivered"))
                cfg.ack = IMP_ACK_DELIVERED;
            else {
                usage_error("bad --ack '%s' (none, stored or delivered)", optarg);
                return IMT_EXIT_USAGE;
            }
            break;
        case OPT_TRANSIENT:
            cfg.transient = 1;
            break;
        case OPT_SEED:
            if (imt_parse_u64(optarg, 0, UINT64_MAX, &cfg.seed) != 0) {
                usage_error("bad --seed '%s'", optarg);
                return IMT_EXIT_USAGE;
            }
            break;
        case OPT_PREFIX:
            if (strlen(optarg) > 16 || !imp_name_valid((const uint8_t *)optarg, strlen(optarg))) {
                usage_error("bad --prefix '%s' (a name of at most 16 characters)", optarg);
                return IMT_EXIT_USAGE;
            }
            snprintf(cfg.prefix, sizeof cfg.prefix, "%s", optarg);
            break;
        case OPT_ROOM:
            if (strlen(optarg) > 32 || !imp_name_valid((const uint8_t *)optarg, strlen(optarg))) {
                usage_error("bad --room '%s'", optarg);
                return IMT_EXIT_USAGE;
            }
            snprintf(cfg.room, sizeof cfg.room, "%s", optarg);
            break;
        case OPT_PREPARE:
            cfg.prepare = 1;
            break;
        case OPT_RECONNECT:
            cfg.reconnect = 1;
            break;
        case OPT_JSONFILE:
            json_path = optarg;
            break;
        case OPT_CSV:
            csv_path = optarg;
            break;
        case OPT_ASSERT:
            if (ngates >= MAX_ASSERTS || parse_gate(optarg, &gates[ngates]) != 0) {
                usage_error("bad --assert '%s' (e.g. 'p99<2ms', 'lost=0', 'rate>=1000')", optarg);
                return IMT_EXIT_USAGE;
            }
            ngates++;
            break;
        case OPT_SINK:
            sink = 1;
            break;
        case OPT_LISTEN:
            listen_addr = optarg;
            break;
        case OPT_TLS:
            cfg.tls.enabled = 1;
            break;
        case OPT_CAFILE:
            cfg.tls.enabled = 1;
            cfg.tls.cafile = optarg;
            break;
        case OPT_INSECURE:
            cfg.tls.enabled = 1;
            cfg.tls.insecure = 1;
            break;
        case OPT_TLS_NAME:
            cfg.tls.server_name = optarg;
            break;
        case OPT_HISTORY:
            history_path = optarg;
            break;
        case OPT_CHECK:
            check = 1;
            break;
        case OPT_LATE:
            if (parse_count(optarg, 0, 10000000, &u) != 0) {
                usage_error("bad --late-receivers '%s'", optarg);
                return IMT_EXIT_USAGE;
            }
            cfg.late_receivers = (int)u;
            break;
        case OPT_COALESCE:
            if (parse_ns(optarg, &cfg.coalesce_ns) != 0 || cfg.coalesce_ns > 1000000000u) {
                usage_error("bad --coalesce '%s' (e.g. 0, 20us, 1ms)", optarg);
                return IMT_EXIT_USAGE;
            }
            break;
        default:
            usage_error("unknown option");
            return IMT_EXIT_USAGE;
        }
    }
    if (o.show_version) {
        imt_print_version(&o);
        return 0;
    }
    if (check) {
        if (optind >= argc) {
            usage_error("--check needs history files");
            return IMT_EXIT_USAGE;
        }
        return check_main(argc - optind, argv + optind, stdout, stderr);
    }
    cfg.quiet = o.quiet;
    cfg.verbose = o.verbose;
    signal(SIGPIPE, SIG_IGN);
    raise_nofile(o.quiet);
    if (sink) {
        if (optind < argc) {
            usage_error("--sink takes no scenario");
            return IMT_EXIT_USAGE;
        }
        return sink_main(listen_addr, o.quiet);
    }
    if (optind != argc - 1) {
        usage_error(optind >= argc ? "no scenario (direct, room, broadcast, idle, churn, login)"
                                   : "one scenario only");
        return IMT_EXIT_USAGE;
    }
    cfg.scenario = -1;
    for (size_t i = 0; i < sizeof scenario_ids / sizeof scenario_ids[0]; i++)
        if (!strcmp(argv[optind], scenario_names[i]))
            cfg.scenario = scenario_ids[i];
    if (cfg.scenario < 0) {
        usage_error("unknown scenario '%s'", argv[optind]);
        return IMT_EXIT_USAGE;
    }
    /* shape */
    if (rate_set == 2 && !cfg.inflight) {
        usage_error("-r 0 means no rate: give the closed loop's window (--inflight W)");
        return IMT_EXIT_USAGE;
    }
    if (cfg.inflight && rate_set == 1) {
        usage_error("--rate (open loop) and --inflight (closed loop) exclude each other");
        return IMT_EXIT_USAGE;
    }
    if (cfg.inflight) {
        cfg.rate = 0;
        if (cfg.ack == IMP_ACK_NONE) {
            usage_error("--inflight needs acknowledgements (--ack stored or delivered)");
            return IMT_EXIT_USAGE;
        }
    }
    if (cfg.count && !duration_set) {
        cfg.duration_s = 0; /* by count only */
        if (!warmup_set)
            cfg.warmup_s = 0;
    }
    if (cfg.transient && cfg.reconnect) {
        usage_error("--reconnect resends durable messages; not with --transient");
        return IMT_EXIT_USAGE;
    }
    switch (cfg.scenario) {
    case SC_DIRECT:
        if (cfg.conns < 0)
            cfg.conns =
                (cfg.senders > 0 ? cfg.senders : 1) + (cfg.receivers > 0 ? cfg.receivers : 1);
        if (cfg.senders < 0 && cfg.receivers < 0)
            cfg.senders = cfg.conns / 2, cfg.receivers = cfg.conns - cfg.conns / 2;
        else if (cfg.senders < 0)
            cfg.senders = cfg.conns - cfg.receivers;
        else if (cfg.receivers < 0)
            cfg.receivers = cfg.conns - cfg.senders;
        if (cfg.senders < 1 || cfg.receivers < 1) {
            usage_error("direct needs at least one sender and one receiver (-c 2)");
            return IMT_EXIT_USAGE;
        }
        if (cfg.late_receivers > cfg.receivers) {
            usage_error("--late-receivers %d: there are only %d receivers", cfg.late_receivers,
                        cfg.receivers);
            return IMT_EXIT_USAGE;
        }
        if (cfg.late_receivers > 0)
            cfg.prepare = 1; /* messages to them are stored, not refused (NO_SUCH_USER) */
        break;
    case SC_ROOM:
        if (cfg.conns < 0)
            cfg.conns = 10;
        if (cfg.senders < 0)
            cfg.senders = 1;
        if (cfg.conns < 1 || cfg.senders < 1 || cfg.senders > cfg.conns) {
            usage_error("room needs 1 <= --senders <= -c");
            return IMT_EXIT_USAGE;
        }
        break;
    case SC_BROADCAST:
        if (cfg.receivers < 0)
            cfg.receivers = cfg.conns < 0 ? 10 : cfg.conns;
        if (cfg.receivers < 1) {
            usage_error("broadcast needs receivers");
            return IMT_EXIT_USAGE;
        }
        break;
    case SC_CHURN:
        if (cfg.senders < 0)
            cfg.senders = cfg.conns < 0 ? 10 : cfg.conns;
        if (cfg.receivers < 0)
            cfg.receivers = 1;
        if (cfg.senders < 1 || cfg.receivers < 1) {
            usage_error("churn needs senders and receivers");
            return IMT_EXIT_USAGE;
        }
        if (cfg.ack == IMP_ACK_NONE) {
            usage_error("churn waits for each ACK: not with --ack none");
            return IMT_EXIT_USAGE;
        }
        break;
    case SC_IDLE:
        if (cfg.conns < 0)
            cfg.conns = 100;
        break;
    case SC_LOGIN:
        if (cfg.conns < 0)
            cfg.conns = 10;
        cfg.prepare = 1;
        break;
    }
    if ((cfg.scenario == SC_IDLE || cfg.scenario == SC_LOGIN) && cfg.conns < 1) {
        usage_error("-c must be at least 1");
        return IMT_EXIT_USAGE;
    }
    if (cfg.late_receivers > 0 && cfg.scenario != SC_DIRECT) {
        usage_error("--late-receivers works with direct only");
        return IMT_EXIT_USAGE;
    }
    if (history_path && cfg.scenario != SC_DIRECT && cfg.scenario != SC_CHURN) {
        usage_error("--history works with direct and churn");
        return IMT_EXIT_USAGE;
    }
    if (cfg.tls.server_name && !cfg.tls.enabled) {
        usage_error("--tls-name needs --tls (or --cafile, --insecure)");
        return IMT_EXIT_USAGE;
    }
    if (!cfg.room[0])
        snprintf(cfg.room, sizeof cfg.room, "%sroom", cfg.prefix);
    if (cfg.duration_s <= 0 && !cfg.count) {
        usage_error("nothing to do: --duration 0 without --count");
        return IMT_EXIT_USAGE;
    }
    int need_admin = cfg.scenario == SC_BROADCAST;
    if (imt_opts_finish(&o, need_admin) != 0)
        return IMT_EXIT_USAGE;
    if (parse_server(o.server, &cfg) != 0)
        return IMT_EXIT_USAGE;
    if (need_admin) {
        cfg.admin_user = o.user;
        cfg.admin_password = o.password;
        cfg.admin_password_len = o.password_len;
    }
    const char *pw = getenv("IMLOAD_PASSWORD");
    cfg.password = pw && *pw ? pw : DEFAULT_PASSWORD;
    cfg.password_len = strlen(cfg.password);
    cfg.connect_timeout_ms = o.connect_timeout_ms;

    /* descriptors: one per connection plus a few per thread */
    struct rlimit rl;
    int total_conns = cfg.scenario == SC_DIRECT || cfg.scenario == SC_CHURN
                          ? cfg.senders + cfg.receivers
                      : cfg.scenario == SC_BROADCAST ? cfg.receivers + 1
                                                     : cfg.conns;
    if (cfg.procs > 1 && (cfg.scenario == SC_ROOM || cfg.scenario == SC_BROADCAST)) {
        usage_error("--procs works with direct, idle, churn and login (a room or broadcast "
                    "fans out across processes)");
        return IMT_EXIT_USAGE;
    }
    if (cfg.procs > total_conns)
        cfg.procs = total_conns > 0 ? total_conns : 1;
    int per_proc = (total_conns + cfg.procs - 1) / cfg.procs;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY &&
        (rlim_t)per_proc + 16u + 2u * (rlim_t)cfg.threads > rl.rlim_cur) {
        fprintf(stderr,
                PROG ": %d connections per process need more descriptors than the limit "
                     "(%llu): use --procs N\n",
                per_proc, (unsigned long long)rl.rlim_cur);
        return IMT_EXIT_USAGE;
    }
    if (cfg.threads > per_proc)
        cfg.threads = per_proc > 0 ? per_proc : 1;

    /* --history: one O_APPEND file for every thread and worker process */
    if (history_path) {
        cfg.history_fd =
            open(history_path, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0644);
        char head[100];
        int hn = snprintf(head, sizeof head, HISTORY_MAGIC " %s %s\n", scenario_name(cfg.scenario),
                          ack_name(cfg.ack));
        if (cfg.history_fd < 0 || write(cfg.history_fd, head, (size_t)hn) != hn) {
            fprintf(stderr, PROG ": cannot write %s: %s\n", history_path, strerror(errno));
            return IMT_EXIT_USAGE;
        }
    }

    /* --procs: fork the workers; the parent only merges */
    static proc_link links[256];
    cfg.proc_index = 0;
    int up_fd = -1, down_fd = -1;
    if (cfg.procs > 1) {
        fflush(NULL);
        for (int i = 0; i < cfg.procs; i++) {
            int up[2], down[2];
            if (pipe(up) != 0 || pipe(down) != 0) {
                fprintf(stderr, PROG ": pipe: %s\n", strerror(errno));
                return IMT_EXIT_USAGE;
            }
            pid_t pid = fork();
            if (pid < 0) {
                fprintf(stderr, PROG ": fork: %s\n", strerror(errno));
                return IMT_EXIT_USAGE;
            }
            if (pid == 0) {
                for (int k = 0; k < i; k++) {
                    close(links[k].up);
                    close(links[k].down);
                }
                close(up[0]);
                close(down[1]);
                up_fd = up[1];
                down_fd = down[0];
                cfg.proc_index = i;
                if (i > 0)
                    cfg.quiet_progress = 1;
                break;
            }
            close(up[1]);
            close(down[0]);
            links[i].pid = pid;
            links[i].up = up[0];
            links[i].down = down[1];
        }
        if (up_fd < 0)
            return parent_main(&cfg, links, total_conns, json_path, csv_path, gates, ngates);
    }

    /* TLS: one context per process */
    if (cfg.tls.enabled) {
        char err[400];
        cfg.tls_ctx = imt_tls_ctx_new(&cfg.tls, err, sizeof err);
        if (!cfg.tls_ctx) {
            fprintf(stderr, PROG ": %s\n", err);
            return child_fail(up_fd, IMT_EXIT_USAGE);
        }
    }

    /* layout */
    static shared sh;
    memset(&sh, 0, sizeof sh);
    sh.cfg = &cfg;
    sh.nworkers = cfg.threads;
    sh.workers = calloc((size_t)cfg.threads, sizeof *sh.workers);
    static pthread_t *th;
    th = calloc((size_t)cfg.threads, sizeof *th);
    g_ack = malloc(sizeof *g_ack);
    g_e2e = malloc(sizeof *g_e2e);
    if (!sh.workers || !th || !g_ack || !g_e2e) {
        fprintf(stderr, PROG ": out of memory\n");
        return IMT_EXIT_USAGE;
    }
    for (int i = 0; i < cfg.threads; i++)
        sh.workers[i] = worker_new(&sh, i);
    engine_setup(&sh);

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigint;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    int status = 0;
    uint64_t setup_ns = (uint64_t)setup_timeout_ms * 1000000u + cfg.ramp_ns;
    if (cfg.prepare) {
        if (cfg.verbose)
            fprintf(stderr, PROG ": preparing %d accounts\n", sh.nconns);
        engine_set_prepare(&sh, 1);
        set_phase(&sh, PH_SETUP);
        if (start_threads(&sh, th) != 0)
            return IMT_EXIT_USAGE;
        status = wait_setup(&sh, sh.nconns, setup_ns, "prepare");
        join_threads(&sh, th);
        engine_set_prepare(&sh, 0);
        if (status)
            return child_fail(up_fd, status);
        engine_reset(&sh);
    }
    /* connect everything that stays connected */
    int want = sh.setup_want;
    sh.setup_start_ns = now_ns();
    set_phase(&sh, PH_SETUP);
    if (start_threads(&sh, th) != 0)
        return IMT_EXIT_USAGE;
    if (cfg.verbose)
        fprintf(stderr, PROG ": connecting %d connections\n", want);
    status = wait_setup(&sh, want, setup_ns, "setup");
    if (status) {
        join_threads(&sh, th);
        return child_fail(up_fd, status);
    }
    /* run */
    uint64_t t0 = now_ns() + 2000000u;
    if (up_fd >= 0 && child_sync(up_fd, down_fd, &t0) != 0) {
        join_threads(&sh, th);
        return IMT_EXIT_USAGE;
    }
    sh.t0_ns = t0;
    sh.measure_from_ns = t0 + (uint64_t)(cfg.warmup_s * 1e9);
    sh.send_until_ns =
        cfg.duration_s > 0 ? sh.measure_from_ns + (uint64_t)(cfg.duration_s * 1e9) : UINT64_MAX;
    if (cfg.verbose)
        fprintf(stderr, PROG ": running\n");
    double cpu0 = self_cpu_s();
    set_phase(&sh, PH_RUN);
    uint64_t last_print = t0, drain_from = 0, t_end = 0;
    counters prev;
    memset(&prev, 0, sizeof prev);
    int drained = 0;
    for (;;) {
        sleep_ms(5);
        uint64_t t = now_ns();
        counters c;
        int ready, dead;
        sum_snapshots(&sh, &c, &ready, &dead);
        int ph = __atomic_load_n(&sh.phase, __ATOMIC_ACQUIRE);
        if (!cfg.quiet && !cfg.quiet_progress && t - last_print >= 1000000000u) {
            double dt = (double)(t - last_print) / 1e9;
            last_print = t;
            unsigned long long errs =
                (unsigned long long)(c.conn_errors + c.proto_errors + c.auth_errors + c.refused);
            int up = ready - dead > 0 ? ready - dead : 0;
            if (cfg.scenario == SC_IDLE || cfg.scenario == SC_LOGIN) {
                uint64_t ops = cfg.scenario == SC_IDLE ? c.pongs : c.cycles;
                uint64_t pops = cfg.scenario == SC_IDLE ? prev.pongs : prev.cycles;
                fprintf(stderr, PROG ": %5.1fs%s %s %llu (%.0f/s) errors %llu conns %d/%d\n",
                        (double)(t - t0) / 1e9, ph == PH_DRAIN ? " drain" : "",
                        cfg.scenario == SC_IDLE ? "pongs" : "logins", (unsigned long long)ops,
                        (double)(ops - pops) / dt, errs, up, sh.nconns);
            } else {
                fprintf(stderr,
                        PROG ": %5.1fs%s sent %llu (%.0f/s) acked %llu delivered %llu (%.0f/s) "
                             "errors %llu conns %d/%d\n",
                        (double)(t - t0) / 1e9, ph == PH_DRAIN ? " drain" : "",
                        (unsigned long long)c.sent, (double)(c.sent - prev.sent) / dt,
                        (unsigned long long)c.acked, (unsigned long long)c.delivered,
                        (double)(c.delivered - prev.delivered) / dt, errs, up, sh.nconns);
            }
            prev = c;
        }
        if (ph == PH_RUN) {
            int quota_done = cfg.count && sh.nsenders && c.sent >= sh.local_count;
            if (cfg.count && cfg.scenario == SC_CHURN)
                quota_done = c.acked + c.refused >= sh.local_count;
            if (t >= sh.send_until_ns || quota_done || g_interrupted ||
                (dead >= sh.nconns && sh.nconns > 0)) {
                set_phase(&sh, PH_DRAIN);
                drain_from = t;
                t_end = t;
            }
            continue;
        }
        /* drain: everything acknowledged and delivered, or the drain time is over */
        uint64_t expect = (cfg.ack == IMP_ACK_NONE ? c.sent : c.acked) * (uint64_t)sh.fanout;
        int acks_done = cfg.ack == IMP_ACK_NONE || c.ack_outstanding == 0;
        if (acks_done && c.delivered >= expect) {
            drained = 1;
            t_end = t;
            break;
        }
        if (t - drain_from >= (uint64_t)(cfg.drain_s * 1e9) || dead >= sh.nconns ||
            g_interrupted > 1)
            break;
    }
    double cpu1 = self_cpu_s();
    uint64_t t_stop = now_ns();
    join_threads(&sh, th);

    /* merge */
    static result r;
    memset(&r, 0, sizeof r);
    hist_init(&r.ack);
    hist_init(&r.e2e);
    for (int i = 0; i < sh.nworkers; i++) {
        const counters *wc = worker_counters(sh.workers[i]);
        const uint64_t *s = (const uint64_t *)wc;
        uint64_t *d = (uint64_t *)&r.c;
        for (size_t k = 0; k < sizeof r.c / sizeof(uint64_t); k++)
            d[k] += s[k];
        hist_merge(&r.ack, worker_hist_ack(sh.workers[i]));
        hist_merge(&r.e2e, worker_hist_e2e(sh.workers[i]));
        counters dummy;
        int rd, dd;
        worker_snapshot(sh.workers[i], &dummy, &rd, &dd);
        r.dead += dd;
    }
    r.end_ns = drained ? t_end : (t_end ? t_end : now_ns());
    if (!drained && sh.send_until_ns != UINT64_MAX && r.end_ns > sh.send_until_ns)
        r.end_ns = sh.send_until_ns;
    r.lost = engine_lost(&sh, &r.unconfirmed);
    r.unsent = engine_unsent(&sh, drain_from ? drain_from : now_ns());
    r.errors = r.c.conn_errors + r.c.proto_errors + r.c.auth_errors + r.c.refused;
    r.measure_from_ns = sh.measure_from_ns;
    r.nconns = sh.nconns;
    r.cpu_s = cpu1 - cpu0;
    r.wall_s = t_stop > t0 ? (double)(t_stop - t0) / 1e9 : 0;
    finish_result(&cfg, &r);
    if (up_fd >= 0) { /* a worker process: the parent reports */
        snprintf(r.agent, sizeof r.agent, "%s", sh.agent);
        memcpy(r.anomalies, sh.anomalies, sizeof r.anomalies);
        r.nanomalies = sh.nanomalies;
        int wr = write_all(up_fd, &r, sizeof r);
        engine_teardown();
        return wr == 0 ? 0 : IMT_EXIT_USAGE;
    }

    /* with --json - the JSON object is stdout: the table goes to stderr */
    print_report(&cfg, &sh, &r, json_path && !strcmp(json_path, "-") ? stderr : stdout);
    int st = 0;
    if (json_path && write_json(json_path, &cfg, &sh, &r) != 0)
        st = IMT_EXIT_USAGE;
    if (csv_path && write_csv(csv_path, &cfg, &sh, &r) != 0)
        st = IMT_EXIT_USAGE;
    if (check_gates(gates, ngates, &cfg, &r, cfg.quiet))
        st = st ? st : IMT_EXIT_UNMET;
    if (!st && r.dead > 0) {
        if (!cfg.quiet)
            fprintf(stderr, PROG ": %d connections were lost\n", r.dead);
        st = IMT_EXIT_LOST;
    }
    engine_teardown();
    for (int i = 0; i < sh.nworkers; i++)
        worker_free(sh.workers[i]);
    free(sh.workers);
    free(th);
    free(g_ack);
    free(g_e2e);
    if (cfg.tls_ctx)
        SSL_CTX_free(cfg.tls_ctx);
    if (cfg.history_fd >= 0)
        close(cfg.history_fd);
    imt_opts_free(&o);
    return st;
}
