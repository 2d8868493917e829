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
#include "imt_tls.h"

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

/* ---- TLS options (issue 6) ----------------------------------------------------------------
 *       --tls            TLS to the server; verify its certificate (system trust store, or
 *                        --cafile, else $IMP_CAFILE) and its name (the host of --server)
 *       --cafile FILE    trust the PEM certificate(s) in FILE (implies --tls)
 *       --insecure       TLS without certificate verification, for tests (implies --tls)
 *       --tls-name NAME  verify the certificate against NAME, send it as SNI (needs one of the
 *                        above; alone it is a usage error, as in imload)
 * A tool that uses imt_opts_handle adds IMT_OPTS_TLS_LONG to its table and imt_opts_tls_help
 * to its help; imt_opts_handle stores the values in imt_opts.tls, imt_opts_finish checks them
 * and makes imt_opts.tls_ctx, imt_opts_client_config passes both on. A tool with its own
 * option handling uses imt_opts_tls() and imt_opts_tls_finish() directly. */
enum { IMT_OPT_TLS = 0x180, IMT_OPT_CAFILE, IMT_OPT_INSECURE, IMT_OPT_TLS_NAME };

/* clang-format off */
#define IMT_OPTS_TLS_LONG                                                   \
    {"tls", no_argument, NULL, IMT_OPT_TLS},                                \
    {"cafile", required_argument, NULL, IMT_OPT_CAFILE},                    \
    {"insecure", no_argument, NULL, IMT_OPT_INSECURE},                      \
    {"tls-name", required_argument, NULL, IMT_OPT_TLS_NAME}
/* clang-format on */

/* Help text of the TLS options (same layout as imt_opts_help). */
extern const char imt_opts_tls_help[];

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
    /* TLS (appended, issue 6) */
    imt_tls_opts tls; /* --tls, --cafile, --insecure, --tls-name */
    SSL_CTX *tls_ctx; /* made by imt_opts_finish when tls.enabled; freed by imt_opts_free */
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

/* Wipe and free the password (and free tls_ctx). */
void imt_opts_free(imt_opts *o);

/* One TLS option (IMT_OPT_TLS, IMT_OPT_CAFILE, IMT_OPT_INSECURE, IMT_OPT_TLS_NAME) into t.
 * Returns 1 when ch is one of them (value stored; --cafile and --insecure imply --tls), 0 when
 * it is not, -1 when the value is invalid (empty; message "<prog>: ..." on stderr). */
int imt_opts_tls(const char *prog, int ch, const char *arg, imt_tls_opts *t);

/* After parsing, for a TCP server: --tls-name without TLS on is an error ("--tls-name needs
 * --tls ..."); when t->enabled, take $IMP_CAFILE as the CA file when none was given (and not
 * insecure), then make the client context into *ctx (the caller frees it with SSL_CTX_free). *ctx
 * is NULL when TLS is off. Returns 0, or -1 with a message on stderr
 * ("<prog>: cannot read CA file x: ..."; the tool exits IMT_EXIT_USAGE). */
int imt_opts_tls_finish(const char *prog, imt_tls_opts *t, SSL_CTX **ctx);

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
