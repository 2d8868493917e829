/* imwatch — watch an IMP server: print the messages delivered to a user (and acknowledge
 * them), presence changes, the server's STATS or its MONITOR stream; or decode a raw IMP byte
 * stream (--decode). See imwatch(1) and --help.
 */
#include "imwatch.h"

#include <getopt.h>
#include <stdlib.h>
#include <string.h>

#include "imt_client.h"
#include "imt_opts.h"

enum {
    OPT_ROOMS_ONLY = 0x200,
    OPT_NO_ACK,
    OPT_PRESENCE,
    OPT_SINCE,
    OPT_UNTIL,
    OPT_READY,
    OPT_STATS,
    OPT_INTERVAL,
    OPT_MONITOR,
    OPT_DECODE,
    OPT_HEX,
    OPT_WHO,
    OPT_ROOMS
};

static const char usage_text[] =
    "Usage: imwatch -u USER [OPTION]...                  watch the messages delivered to USER\n"
    "       imwatch -u ADMIN --stats [--interval S]      live server counters (administrators)\n"
    "       imwatch -u ADMIN --monitor                   live server events (administrators)\n"
    "       imwatch -u USER --who | --rooms              list the online users or the rooms\n"
    "       imwatch --decode [FILE]                      decode a raw IMP byte stream\n"
    "\n"
    "Logs in, prints every message delivered to USER as it arrives (the offline queue first)\n"
    "and acknowledges it (DELIVERED, cumulative, batched, after the output is flushed) so the\n"
    "queue drains. Data goes to stdout, diagnostics to stderr.\n"
    "\n"
    "Connection and output (shared by the imp tools):\n";

static const char usage_tail[] =
    "\n"
    "What to watch:\n"
    "  -g, --room ROOM          join ROOM and watch it (repeatable). With -g, room messages\n"
    "                           are printed only for the -g rooms; direct messages and\n"
    "                           broadcasts still are, unless --rooms-only\n"
    "      --rooms-only         with -g: print only the messages of the -g rooms\n"
    "      --presence[=USER,...]  print presence changes of these users (SUBSCRIBE); without a\n"
    "                           list: of the members of the -g rooms\n"
    "      --since SEQ          resume after sequence number SEQ (LOGIN LAST_SEQ: everything up\n"
    "                           to SEQ counts as acknowledged, also with --no-ack)\n"
    "      --no-ack             peek: never acknowledge, the messages stay queued\n"
    "      --stats              a top-like view of the server's STATS, redrawn every --interval\n"
    "                           on a terminal, plain lines (TIME NAME VALUE [RATE/s]) otherwise;\n"
    "                           per-second rates for counters (administrators only)\n"
    "      --interval S         --stats refresh period (default 1s)\n"
    "      --monitor            the server's MONITOR_EVENT stream (administrators only)\n"
    "      --who                list the users online (every page of WHO), one name per line,\n"
    "                           then exit 0; queued messages are left alone\n"
    "      --rooms              list the rooms (every page of ROOMS), one name per line, then\n"
    "                           exit 0. --who and --rooms take only -W and the connection\n"
    "                           options\n"
    "      --decode [FILE]      no server: read a raw IMP byte stream from FILE (default stdin)\n"
    "                           and print each frame with every field by name; errors are shown\n"
    "                           at their byte offset. After a bad header the stream cannot be\n"
    "                           resynchronised: decoding stops; after a bad payload it goes on\n"
    "                           with the next frame. Exit 7 if anything was malformed.\n"
    "                           With --json: one JSON object per frame\n"
    "      --hex                with --decode: the input is hex text (\"01 50 0000 ...\"; white\n"
    "                           space and # comments ignored), as in SPEC.md section 12\n"
    "\n"
    "Output of messages (default: TIME KIND:TARGET <SENDER> BODY, non-printable bytes escaped):\n"
    "  -F, --format FMT         print each message with FMT, then a newline (-N: none):\n"
    "                           %b body  %B body escaped  %f sender  %t target  %k kind\n"
    "                           (user, room, broadcast)  %c class  %n seq  %i message id\n"
    "                           %T ISO-8601 time  %u time in ms  %j message as JSON  %%\n"
    "                           \\n newline  \\t tab  \\0 NUL  \\\\ backslash\n"
    "  -N                       no newline after a -F record\n"
    "      --json               one JSON object per line (schema v1: message, presence,\n"
    "                           monitor, error; stats and ready objects for --stats, --ready)\n"
    "  -0                       raw bodies, each followed by a NUL byte (binary-safe)\n"
    "\n";

static const char usage_stop[] =
    "Stopping:\n"
    "  -C, --count N            stop after N messages (--monitor: events, --stats: samples);\n"
    "                           exit 0 (with --until: exit 1 when none of the N matched)\n"
    "  -W, --timeout T          stop after T (5, 1.5, 250ms, 2s, 1m); exit 6\n"
    "      --until REGEX        stop at the first message whose body matches the POSIX\n"
    "                           extended REGEX (printed); exit 0, or 1 if -W expires or the\n"
    "                           connection ends first\n"
    "      --ready              print a line \"ready\" on stdout once logged in and every -g,\n"
    "                           --presence, --monitor request is answered, before any message\n"
    "                           (--json: {\"v\":1,\"type\":\"ready\",...}; -0: \"ready\" + NUL)\n"
    "  -h, --help               this help\n"
    "\n"
    "Messages printed are acknowledged (also those filtered out by -g); messages not printed\n"
    "because imwatch stopped (-C, --until, -W) stay queued. SIGINT/SIGTERM stop gracefully.\n"
    "When stdout is a closed pipe, imwatch dies of SIGPIPE like other filters, before it\n"
    "acknowledges anything it could not write.\n"
    "\n"
    "Exit status:\n"
    "  0  success (-C reached, --until matched, stopped by a signal)\n"
    "  1  expectation not met (--until did not match; -C or --until and a signal)\n"
    "  2  usage or configuration error (also: stdout could not be written)\n"
    "  3  cannot connect (connection refused, DNS, SERVER_FULL, BANNED, VERSION, TLS\n"
    "     handshake or certificate verification failed)\n"
    "  4  authentication refused (AUTH_FAILED, USER_EXISTS, ...)\n"
    "  5  the server refused a request (e.g. FORBIDDEN for --stats; the code is printed)\n"
    "  6  timeout (-W, --connect-timeout, PING_TIMEOUT)\n"
    "  7  connection lost (EOF, protocol error, SHUTDOWN, KICKED); --decode: malformed input\n"
    "\n"
    "Environment: IMP_SERVER, IMP_USER, IMP_PASSWORD, IMP_CAFILE (with --tls).  See imwatch(1).\n";

static void usage(FILE *out)
{
    fputs(usage_text, out);
    fputs(imt_opts_help, out);
    fputs(imt_opts_tls_help, out);
    fputs(usage_tail, out);
    fputs(usage_stop, out);
}

/* "--presence USERS" and "--decode FILE" take an optional argument also as the next word,
 * which getopt_long only accepts as "--presence=USERS": rewrite them so. */
static char **rewrite_args(int argc, char **argv, char ***owned, int *nowned)
{
    char **nv = calloc((size_t)argc + 1, sizeof *nv);
    char **own = calloc((size_t)argc + 1, sizeof *own);
    int n = 0, k = 0;
    if (!nv || !own) {
        free(nv);
        free(own);
        return NULL;
    }
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        int pres = strcmp(a, "--presence") == 0, dec = strcmp(a, "--decode") == 0;
        if (strcmp(a, "--") == 0) {
            while (i < argc)
                nv[n++] = argv[i++];
            break;
        }
        if ((pres || dec) && i + 1 < argc &&
            (argv[i + 1][0] != '-' || (dec && strcmp(argv[i + 1], "-") == 0))) {
            size_t len = strlen(a) + strlen(argv[i + 1]) + 2;
            char *s = malloc(len);
            if (!s)
                break;
            snprintf(s, len, "%s=%s", a, argv[i + 1]);
            own[k++] = s;
            nv[n++] = s;
            i++;
            continue;
        }
        nv[n++] = argv[i];
    }
    nv[n] = NULL;
    *owned = own;
    *nowned = k;
    return nv;
}

/* Split "a,b,c" into a NULL-terminated array (the string is modified). */
static const char **split_names(char *s)
{
    size_t n = 1;
    for (const char *p = s; *p; p++)
        n += *p == ',';
    const char **v = calloc(n + 1, sizeof *v);
    if (!v)
        return NULL;
    size_t k = 0;
    for (char *tok = strtok(s, ","); tok; tok = strtok(NULL, ","))
        if (*tok)
            v[k++] = tok;
    v[k] = NULL;
    return v;
}

static int valid_name(const char *s)
{
    return imp_name_valid((const uint8_t *)s, strlen(s));
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {IMT_OPTS_LONG,
                                             IMT_OPTS_TLS_LONG,
                                             {"room", required_argument, NULL, 'g'},
                                             {"rooms-only", no_argument, NULL, OPT_ROOMS_ONLY},
                                             {"no-ack", no_argument, NULL, OPT_NO_ACK},
                                             {"presence", optional_argument, NULL, OPT_PRESENCE},
                                             {"since", required_argument, NULL, OPT_SINCE},
                                             {"format", required_argument, NULL, 'F'},
                                             {"count", required_argument, NULL, 'C'},
                                             {"timeout", required_argument, NULL, 'W'},
                                             {"until", required_argument, NULL, OPT_UNTIL},
                                             {"ready", no_argument, NULL, OPT_READY},
                                             {"stats", no_argument, NULL, OPT_STATS},
                                             {"interval", required_argument, NULL, OPT_INTERVAL},
                                             {"monitor", no_argument, NULL, OPT_MONITOR},
                                             {"decode", optional_argument, NULL, OPT_DECODE},
                                             {"hex", no_argument, NULL, OPT_HEX},
                                             {"who", no_argument, NULL, OPT_WHO},
                                             {"rooms", no_argument, NULL, OPT_ROOMS},
                                             {"help", no_argument, NULL, 'h'},
                                             {NULL, 0, NULL, 0}};
    imt_opts o;
    iw_config cfg;
    int status = IW_EXIT_USAGE, decode = 0, stats = 0, monitor = 0, hex = 0, who = 0, rooms = 0;
    const char *decode_path = NULL;
    char *presence_arg = NULL;
    char **owned = NULL;
    int nowned = 0;
    char err[256];

    memset(&cfg, 0, sizeof cfg);
    cfg.o = &o;
    cfg.since = UINT64_MAX;
    cfg.interval_ms = 1000;
    cfg.rooms = calloc((size_t)argc + 1, sizeof *cfg.rooms);
    imt_opts_init(&o, "imwatch");
    char **av = rewrite_args(argc, argv, &owned, &nowned);
    if (!av || !cfg.rooms) {
        fprintf(stderr, "imwatch: out of memory\n");
        goto out;
    }

    int ch;
    int ac = 0;
    while (av[ac])
        ac++;
    while ((ch = getopt_long(ac, av, IMT_OPTS_SHORT "g:F:0NC:W:h", longopts, NULL)) != -1) {
        int r = imt_opts_handle(&o, ch, optarg);
        if (r > 0)
            continue;
        if (r < 0)
            goto out;
        uint64_t v;
        switch (ch) {
        case 'g':
            if (!valid_name(optarg)) {
                fprintf(stderr, "imwatch: -g: '%s' is not a valid room name\n", optarg);
                goto out;
            }
            cfg.rooms[cfg.nrooms++] = optarg;
            break;
        case OPT_ROOMS_ONLY:
            cfg.rooms_only = 1;
            break;
        case OPT_NO_ACK:
            cfg.no_ack = 1;
            break;
        case OPT_PRESENCE:
            cfg.presence = 1;
            if (optarg) {
                free(presence_arg);
                presence_arg = strdup(optarg);
                if (!presence_arg)
                    goto out;
            }
            break;
        case OPT_SINCE:
            if (imt_parse_u64(optarg, 0, UINT64_MAX - 1, &v) != 0) {
                fprintf(stderr, "imwatch: bad --since value '%s'\n", optarg);
                goto out;
            }
            cfg.since = v;
            break;
        case 'F':
            if (iw_format_check(optarg, err, sizeof err) != 0) {
                fprintf(stderr, "imwatch: %s\n", err);
                goto out;
            }
            cfg.format = optarg;
            break;
        case '0':
            cfg.nul = 1;
            break;
        case 'N':
            cfg.no_newline = 1;
            break;
        case 'C':
            if (imt_parse_u64(optarg, 1, UINT64_MAX, &v) != 0) {
                fprintf(stderr, "imwatch: bad -C value '%s' (a count >= 1)\n", optarg);
                goto out;
            }
            cfg.count = v;
            break;
        case 'W':
            if (imt_parse_duration_ms(optarg, &cfg.wait_ms) != 0 || cfg.wait_ms == 0) {
                fprintf(stderr, "imwatch: bad -W value '%s' (e.g. 5, 1.5, 250ms, 2s, 1m)\n",
                        optarg);
                goto out;
            }
            break;
        case OPT_UNTIL: {
            if (cfg.has_until)
                regfree(&cfg.until);
            int rc = regcomp(&cfg.until, optarg, REG_EXTENDED | REG_NOSUB);
            if (rc != 0) {
                regerror(rc, &cfg.until, err, sizeof err);
                fprintf(stderr, "imwatch: bad --until regex '%s': %s\n", optarg, err);
                goto out;
            }
            cfg.has_until = 1;
            break;
        }
        case OPT_READY:
            cfg.ready_line = 1;
            break;
        case OPT_STATS:
            stats = 1;
            break;
        case OPT_INTERVAL:
            if (imt_parse_duration_ms(optarg, &cfg.interval_ms) != 0 || cfg.interval_ms < 10) {
                fprintf(stderr, "imwatch: bad --interval value '%s' (at least 10ms)\n", optarg);
                goto out;
            }
            break;
        case OPT_MONITOR:
            monitor = 1;
            break;
        case OPT_DECODE:
            decode = 1;
            decode_path = optarg;
            break;
        case OPT_HEX:
            hex = 1;
            break;
        case OPT_WHO:
            who = 1;
            break;
        case OPT_ROOMS:
            rooms = 1;
            break;
        case 'h':
            usage(stdout);
            status = IW_EXIT_OK;
            goto out;
        default:
            fprintf(stderr, "Try 'imwatch --help' for more information.\n");
            goto out;
        }
    }
    if (o.show_version) {
        imt_print_version(&o);
        status = IW_EXIT_OK;
        goto out;
    }
    if (decode && !decode_path && optind < ac)
        decode_path = av[optind++]; /* --decode --hex FILE */
    if (optind < ac) {
        fprintf(stderr, "imwatch: unexpected argument '%s'\n", av[optind]);
        goto out;
    }
    if (decode + stats + monitor + who + rooms > 1) {
        fprintf(stderr,
                "imwatch: --decode, --stats, --monitor, --who and --rooms exclude each other\n");
        goto out;
    }
    if ((who || rooms) && (cfg.nrooms || cfg.rooms_only || cfg.presence || cfg.format || cfg.nul ||
                           cfg.no_newline || o.json || cfg.count || cfg.has_until ||
                           cfg.ready_line || cfg.no_ack || cfg.since != UINT64_MAX)) {
        fprintf(stderr, "imwatch: --%s takes only the connection options and -W\n",
                who ? "who" : "rooms");
        goto out;
    }
    if (cfg.nul + (cfg.format != NULL) + o.json > 1) {
        fprintf(stderr, "imwatch: -0, -F and --json exclude each other\n");
        goto out;
    }
    if (hex && !decode) {
        fprintf(stderr, "imwatch: --hex goes with --decode\n");
        goto out;
    }
    if (cfg.rooms_only && cfg.nrooms == 0) {
        fprintf(stderr, "imwatch: --rooms-only needs -g ROOM\n");
        goto out;
    }
    if (decode) {
        status = iw_decode(decode_path, stdout, o.verbose, hex, o.quiet, o.json);
        goto out;
    }
    if (presence_arg) {
        cfg.presence_users = split_names(presence_arg);
        if (!cfg.presence_users)
            goto out;
        for (size_t i = 0; cfg.presence_users[i]; i++) {
            if (!valid_name(cfg.presence_users[i])) {
                fprintf(stderr, "imwatch: --presence: '%s' is not a valid user name\n",
                        cfg.presence_users[i]);
                goto out;
            }
        }
        if (!cfg.presence_users[0]) {
            fprintf(stderr, "imwatch: --presence: empty user list\n");
            goto out;
        }
    } else if (cfg.presence && cfg.nrooms == 0) {
        fprintf(stderr, "imwatch: --presence needs a user list (--presence alice,bob) or -g\n");
        goto out;
    }
    cfg.mode = stats     ? IW_MODE_STATS
               : monitor ? IW_MODE_MONITOR
               : who     ? IW_MODE_WHO
               : rooms   ? IW_MODE_ROOMS
                         : IW_MODE_MESSAGES;
    if (imt_opts_finish(&o, 1) != 0)
        goto out;
    status = iw_watch(&cfg);
out:
    if (cfg.has_until)
        regfree(&cfg.until);
    free(cfg.presence_users);
    free(presence_arg);
    free(cfg.rooms);
    for (int i = 0; i < nowned; i++)
        free(owned[i]);
    free(owned);
    free(av);
    imt_opts_free(&o);
    return status;
}
