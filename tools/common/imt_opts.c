/* imt_opts — the options shared by the tools (see imt_opts.h). */
#include "imt_opts.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <unistd.h>

#define PASSWORD_MAX 1024

const char imt_opts_help[] =
    "  -s, --server ADDR        server: HOST[:PORT], [IPV6]:PORT or unix:/PATH\n"
    "                           (default: $IMP_SERVER, else 127.0.0.1:7600)\n"
    "  -u, --user NAME          user name (default: $IMP_USER)\n"
    "      --password-file FILE read the password from the first line of FILE; otherwise\n"
    "                           $IMP_PASSWORD, otherwise a prompt on the terminal (never\n"
    "                           on the command line)\n"
    "      --register           create the account first (REGISTER instead of LOGIN)\n"
    "      --connect-timeout T  limit on connect + handshake + login (default 5s)\n"
    "      --json               JSON lines on stdout (schema v1, see the manual)\n"
    "  -q, --quiet              print less on stderr\n"
    "  -v, --verbose            print connection progress on stderr\n"
    "  -d, --debug              trace every frame (decoded, with hex) on stderr\n"
    "      --version            print the version and exit\n";

const char imt_opts_tls_help[] =
    "      --tls                TLS to the server, verifying its certificate (system trust\n"
    "                           store, --cafile or $IMP_CAFILE) and its name\n"
    "      --cafile FILE        trust the PEM certificate(s) in FILE (implies --tls)\n"
    "      --insecure           TLS without verifying the certificate: tests only\n"
    "                           (implies --tls)\n"
    "      --tls-name NAME      with TLS: expect NAME in the certificate instead of the\n"
    "                           server's host\n";

void imt_opts_init(imt_opts *o, const char *prog)
{
    memset(o, 0, sizeof *o);
    o->prog = prog ? prog : "imt";
    const char *s = getenv("IMP_SERVER");
    o->server = s && *s ? s : NULL;
    const char *u = getenv("IMP_USER");
    o->user = u && *u ? u : NULL;
    o->connect_timeout_ms = IMT_DEFAULT_CONNECT_TIMEOUT_MS;
}

int imt_opts_handle(imt_opts *o, int ch, const char *arg)
{
    switch (ch) {
    case 's':
        o->server = arg;
        return 1;
    case 'u':
        o->user = arg;
        return 1;
    case 'q':
        o->quiet = 1;
        return 1;
    case 'v':
        o->verbose = 1;
        return 1;
    case 'd':
        o->debug = 1;
        return 1;
    case IMT_OPT_PASSWORD_FILE:
        o->password_file = arg;
        return 1;
    case IMT_OPT_REGISTER:
        o->do_register = 1;
        return 1;
    case IMT_OPT_JSON:
        o->json = 1;
        return 1;
    case IMT_OPT_VERSION:
        o->show_version = 1;
        return 1;
    case IMT_OPT_CONNECT_TIMEOUT:
        if (imt_parse_duration_ms(arg, &o->connect_timeout_ms) != 0) {
            fprintf(stderr, "%s: bad --connect-timeout value '%s' (e.g. 5, 1.5s, 500ms)\n", o->prog,
                    arg);
            return -1;
        }
        return 1;
    default:
        return imt_opts_tls(o->prog, ch, arg, &o->tls);
    }
}

int imt_opts_tls(const char *prog, int ch, const char *arg, imt_tls_opts *t)
{
    const char *name = NULL;
    switch (ch) {
    case IMT_OPT_TLS:
        break;
    case IMT_OPT_INSECURE:
        t->insecure = 1;
        break;
    case IMT_OPT_CAFILE:
        name = "--cafile";
        break;
    case IMT_OPT_TLS_NAME:
        name = "--tls-name";
        break;
    default:
        return 0;
    }
    if (name && (!arg || !*arg)) {
        fprintf(stderr, "%s: empty %s value\n", prog ? prog : "imt", name);
        return -1;
    }
    if (ch == IMT_OPT_TLS_NAME) {
        t->server_name = arg; /* checked by imt_opts_tls_finish: needs TLS on */
        return 1;
    }
    if (ch == IMT_OPT_CAFILE)
        t->cafile = arg;
    t->enabled = 1;
    return 1;
}

int imt_opts_tls_finish(const char *prog, imt_tls_opts *t, SSL_CTX **ctx)
{
    *ctx = NULL;
    if (!t->enabled && t->server_name) {
        fprintf(stderr, "%s: --tls-name needs --tls (or --cafile, --insecure)\n",
                prog ? prog : "imt");
        return -1;
    }
    if (!t->enabled)
        return 0;
    const char *env = getenv("IMP_CAFILE");
    if (!t->cafile && !t->insecure && env && *env)
        t->cafile = env;
    char err[400];
    *ctx = imt_tls_ctx_new(t, err, sizeof err);
    if (!*ctx) {
        fprintf(stderr, "%s: %s\n", prog ? prog : "imt", err);
        return -1;
    }
    return 0;
}

int imt_read_first_line(const char *path, char **out, size_t *len, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "cannot open %s: %s", path, strerror(errno));
        return -1;
    }
    char *line = NULL;
    size_t cap = 0;
    errno = 0;
    ssize_t n = getline(&line, &cap, f);
    int e = errno;
    fclose(f);
    if (n < 0) {
        free(line);
        if (e)
            snprintf(err, errlen, "cannot read %s: %s", path, strerror(e));
        else
            snprintf(err, errlen, "%s is empty", path);
        return -1;
    }
    size_t k = (size_t)n;
    if (k > 0 && line[k - 1] == '\n')
        k--;
    if (k > 0 && line[k - 1] == '\r')
        k--;
    line[k] = 0;
    if (k == 0) {
        free(line);
        snprintf(err, errlen, "the first line of %s is empty", path);
        return -1;
    }
    *out = line;
    *len = k;
    return 0;
}

/* Prompt on /dev/tty with echo off. 0, or -1 with a message in err. */
static int prompt_password(const imt_opts *o, char **out, size_t *len, char *err, size_t errlen)
{
    int fd = open("/dev/tty", O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, errlen,
                 "no password: use --password-file FILE or IMP_PASSWORD (no terminal to ask on)");
        return -1;
    }
    struct termios old, noecho;
    int have_tio = tcgetattr(fd, &old) == 0;
    /* Echo goes off before the prompt is shown, and without discarding input (TCSADRAIN, not
     * TCSAFLUSH): a password typed right after the prompt appears is neither echoed nor lost. */
    if (have_tio) {
        noecho = old;
        noecho.c_lflag &= (tcflag_t) ~(ECHO | ECHONL);
        noecho.c_lflag |= ICANON;
        tcsetattr(fd, TCSADRAIN, &noecho);
    }
    char prompt[128];
    int pn = snprintf(prompt, sizeof prompt, "%s: password for %s: ", o->prog, o->user);
    if (write(fd, prompt, (size_t)pn) < 0) {
        /* nothing useful to do: the read below still works */
    }
    char *buf = malloc(PASSWORD_MAX + 2);
    size_t n = 0;
    int rc = -1;
    if (buf) {
        for (;;) {
            char ch;
            ssize_t r = read(fd, &ch, 1);
            if (r <= 0 || ch == '\n' || ch == '\r')
                break;
            if (n < PASSWORD_MAX + 1)
                buf[n++] = ch;
        }
        buf[n] = 0;
        rc = 0;
    }
    if (have_tio)
        tcsetattr(fd, TCSADRAIN, &old);
    if (write(fd, "\n", 1) < 0) {
        /* ignore */
    }
    close(fd);
    if (rc != 0) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    if (n == 0) {
        free(buf);
        snprintf(err, errlen, "empty password");
        return -1;
    }
    *out = buf;
    *len = n;
    return 0;
}

int imt_opts_finish(imt_opts *o, int need_auth)
{
    char err[300];
    imt_addr a;
    if (imt_addr_parse(o->server, &a, err, sizeof err) != 0) {
        fprintf(stderr, "%s: %s\n", o->prog, err);
        return -1;
    }
    if (o->tls.enabled && a.is_unix) {
        fprintf(stderr, "%s: TLS needs a TCP server address, not unix:%s\n", o->prog, a.path);
        return -1;
    }
    if (!o->tls_ctx && imt_opts_tls_finish(o->prog, &o->tls, &o->tls_ctx) != 0)
        return -1;
    if (!need_auth)
        return 0;
    if (!o->user || !*o->user) {
        fprintf(stderr, "%s: no user name: use -u NAME or IMP_USER\n", o->prog);
        return -1;
    }
    if (!imp_name_valid((const uint8_t *)o->user, strlen(o->user))) {
        fprintf(stderr,
                "%s: bad user name '%s' (1-32 of A-Z a-z 0-9 _ - ., starting with a letter "
                "or digit)\n",
                o->prog, o->user);
        return -1;
    }
    if (o->password)
        return 0;
    const char *env = getenv("IMP_PASSWORD");
    if (o->password_file) {
        if (imt_read_first_line(o->password_file, &o->password, &o->password_len, err,
                                sizeof err) != 0) {
            fprintf(stderr, "%s: --password-file: %s\n", o->prog, err);
            return -1;
        }
    } else if (env && *env) {
        o->password = strdup(env);
        if (!o->password) {
            fprintf(stderr, "%s: out of memory\n", o->prog);
            return -1;
        }
        o->password_len = strlen(env);
    } else if (prompt_password(o, &o->password, &o->password_len, err, sizeof err) != 0) {
        fprintf(stderr, "%s: %s\n", o->prog, err);
        return -1;
    }
    if (o->password_len > PASSWORD_MAX) {
        fprintf(stderr, "%s: password longer than %d bytes\n", o->prog, PASSWORD_MAX);
        imt_opts_free(o);
        return -1;
    }
    return 0;
}

void imt_opts_client_config(const imt_opts *o, imt_client_config *cfg)
{
    cfg->server = o->server;
    cfg->user = o->user;
    cfg->password = o->password;
    cfg->password_len = o->password_len;
    cfg->do_register = o->do_register;
    cfg->connect_timeout_ms = o->connect_timeout_ms;
    cfg->trace = o->debug;
    cfg->verbose = o->verbose;
    cfg->prog = o->prog;
    cfg->tls = o->tls.enabled ? &o->tls : NULL;
    cfg->tls_ctx = o->tls.enabled ? o->tls_ctx : NULL;
}

void imt_print_version(const imt_opts *o)
{
    printf("%s (imp) %s\n", o->prog, IMP_LIB_VERSION);
}

void imt_opts_free(imt_opts *o)
{
    if (o->password) {
        volatile char *p = o->password;
        for (size_t i = 0; i < o->password_len; i++)
            p[i] = 0;
        free(o->password);
    }
    o->password = NULL;
    o->password_len = 0;
    if (o->tls_ctx)
        SSL_CTX_free(o->tls_ctx);
    o->tls_ctx = NULL;
}

int imt_parse_u64(const char *s, uint64_t min, uint64_t max, uint64_t *out)
{
    if (!s || !*s)
        return -1;
    uint64_t v = 0;
    for (const char *p = s; *p; p++) {
        if (*p < '0' || *p > '9')
            return -1;
        unsigned d = (unsigned)(*p - '0');
        if (v > (UINT64_MAX - d) / 10)
            return -1;
        v = v * 10 + d;
    }
    if (v < min || v > max)
        return -1;
    *out = v;
    return 0;
}

int imt_parse_duration_ms(const char *s, uint32_t *ms)
{
    if (!s || !*s)
        return -1;
    /* integer part, optional fraction (up to 3 digits kept), unit */
    uint64_t ip = 0, frac = 0, fscale = 1;
    const char *p = s;
    int digits = 0;
    while (*p >= '0' && *p <= '9') {
        ip = ip * 10 + (uint64_t)(*p - '0');
        if (ip > 100000000ull)
            return -1;
        p++;
        digits++;
    }
    if (*p == '.') {
        p++;
        while (*p >= '0' && *p <= '9') {
            if (fscale < 1000) {
                frac = frac * 10 + (uint64_t)(*p - '0');
                fscale *= 10;
            }
            p++;
            digits++;
        }
    }
    if (!digits)
        return -1;
    uint64_t mult;
    if (*p == 0 || strcmp(p, "s") == 0)
        mult = 1000;
    else if (strcmp(p, "ms") == 0)
        mult = 1;
    else if (strcmp(p, "m") == 0)
        mult = 60000;
    else
        return -1;
    uint64_t v = ip * mult + frac * mult / fscale;
    if (v > 86400000ull)
        return -1;
    *ms = (uint32_t)v;
    return 0;
}
