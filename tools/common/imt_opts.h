/* STABLE (issue 4): the API below is fixed; additions only, no changes to what is here.
 *
 * imt_opts — the options every tool shares, for getopt_long:
 *
 *   -s, --server ADDR        HOST[:PORT], [V6]:PORT or unix:/path (env IMP_SERVER;
 *                            default 127.0.0.1:7600)
 *   -u, --user NAME          user name (env IMP_USER)
 *       --password-file FILE password = first line of FILE (without the line end)
 *                            otherwise env IMP_PASSWORD, otherwise a no-echo prompt on
 *                            /dev/tty; a password is never taken from the command line
 *       --register           create the account (REGISTER) instead of LOGIN
 *       --connect-timeout T  bound on connect + handshake + login (default 5s)
 *       --json               JSON lines on stdout (schema in imt_json.h)
 *   -q, --quiet              fewer messages on stderr
 *   -v, --verbose            connection progress on stderr
 *   -d, --debug              frame trace on stderr: each frame decoded + hex dump
 *       --version            print "<prog> (imp) IMP_LIB_VERSION" and exit 0
 *
 * Durations (T) are "5", "1.5", "250ms", "2s", "1m": a bare number is seconds.
 *
 * Use in a tool:
 *
 *     static const struct option longopts[] = {IMT_OPTS_LONG, {"to", required_argument, 0,
 *         't'}, ..., {0, 0, 0, 0}};
 *     imt_opts o;
 *     imt_opts_init(&o, "imsend");
 *     while ((ch = getopt_long(argc, argv, IMT_OPTS_SHORT "t:g:...", longopts, NULL)) != -1) {
 *         int r = imt_opts_handle(&o, ch, optarg);
 *         if (r > 0) continue;                 // one of ours
 *         if (r < 0) return IMT_EXIT_USAGE;    // bad value; message printed
 *         switch (ch) { ... tool options ... }
 *     }
 *     if (o.show_version) return imt_print_version(&o), 0;
 *     if (imt_opts_finish(&o, 1) != 0) return IMT_EXIT_USAGE;  // user + password obtained
 *     imt_client_config cfg; imt_opts_client_config(&o, &cfg);
 *     ...
 *     imt_opts_free(&o);
 */
#ifndef IMT_OPTS_H
#define IMT_OPTS_H

#include <getopt.h>
#include <stddef.h>
#include <stdint.h>

#include "imt_client.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Option values above any character, for long-only options. Tools use values >= 0x200. */
enum {
    IMT_OPT_PASSWORD_FILE = 0x100,
    IMT_OPT_REGISTER,
    IMT_OPT_CONNECT_TIMEOUT,
    IMT_OPT_JSON,
    IMT_OPT_VERSION
};

#define IMT_OPTS_SHORT "s:u:qvd"

/* clang-format off */
#define IMT_OPTS_LONG                                                       \
    {"server", required_argument, NULL, 's'},                               \
    {"user", required_argument, NULL, 'u'},                                 \
    {"password-file", required_argument, NULL, IMT_OPT_PASSWORD_FILE},      \
    {"register", no_argument, NULL, IMT_OPT_REGISTER},                      \
    {"connect-timeout", required_argument, NULL, IMT_OPT_CONNECT_TIMEOUT},  \
    {"json", no_argument, NULL, IMT_OPT_JSON},                              \
    {"quiet", no_argument, NULL, 'q'},                                      \
    {"verbose", no_argument, NULL, 'v'},                                    \
    {"debug", no_argument, NULL, 'd'},                                      \
    {"version", no_argument, NULL, IMT_OPT_VERSION}
/* clang-format on */

/* Help text of the common options (lines indented by two spaces, ending with a newline). */
extern const char imt_opts_help[];

typedef struct imt_opts {
    const char *prog;          /* for messages: "imsend: ..." */
    const char *server;        /* -s, else $IMP_SERVER, else NULL (default) */
    const char *user;          /* -u, else $IMP_USER, else NULL */
    const char *password_file; /* --password-file */
    int do_register;
    uint32_t connect_timeout_ms; /* default IMT_DEFAULT_CONNECT_TIMEOUT_MS */
    int json;
    int quiet;
    int verbose;
    int debug;
    int show_version;
    /* Filled by imt_opts_finish: */
    char *password; /* heap, wiped and freed by imt_opts_free */
    size_t password_len;
} imt_opts;

/* Defaults and the environment (IMP_SERVER, IMP_USER). */
void imt_opts_init(imt_opts *o, const char *prog);

/* Handle one getopt_long result. Returns 1 when ch is a common option (value stored), 0 when
 * it is not (the tool handles it), -1 when the value is invalid (message printed on stderr:
 * "<prog>: bad --connect-timeout value 'x'"). */
int imt_opts_handle(imt_opts *o, int ch, const char *arg);

/* After parsing: check the server address syntax; when need_auth, require a user name (valid
 * IMP name) and obtain the password: --password-file, else $IMP_PASSWORD, else prompt (no
 * echo) on /dev/tty; without a terminal: error. Returns 0, or -1 with a message on stderr
 * (the tool exits IMT_EXIT_USAGE). */
int imt_opts_finish(imt_opts *o, int need_auth);

/* Fill a client configuration from the options (imt_client_config_init first). */
void imt_opts_client_config(const imt_opts *o, imt_client_config *cfg);

/* "<prog> (imp) <IMP_LIB_VERSION>\n" on stdout. */
void imt_print_version(const imt_opts *o);

/* Wipe and free the password. */
void imt_opts_free(imt_opts *o);

/* Helpers also used by tool-specific options. */
/* Duration: "5" / "1.5" (seconds), "250ms", "2s", "1m". 0 or -1. */
int imt_parse_duration_ms(const char *s, uint32_t *ms);
/* Unsigned decimal integer in [min, max]. 0 or -1. */
int imt_parse_u64(const char *s, uint64_t min, uint64_t max, uint64_t *out);
/* Read the first line of a file (without "\n" / "\r\n") into a heap buffer. 0, or -1 with a
 * message in err. An empty first line is an error. */
int imt_read_first_line(const char *path, char **out, size_t *len, char *err, size_t errlen);

#ifdef __cplusplus
}
#endif
#endif
