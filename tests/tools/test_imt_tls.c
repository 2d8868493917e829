/* Unit tests for the tools' TLS options (imt_opts: --tls, --cafile, --insecure, --tls-name,
 * IMP_CAFILE) and tools/common/imt_tls.c (client contexts, name verification, error texts).
 *
 * The certificates are made here with the OpenSSL API (self-signed EC P-256 for 127.0.0.1 and
 * "localhost"); handshakes run in memory (two SSL objects joined by BIO pairs), no sockets. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "imt_opts.h"
#include "imt_tls.h"

static char tmpdir[] = "/tmp/imt_tls_XXXXXX";
static char cert_path[300], other_cert_path[300];
static EVP_PKEY *srv_key;
static X509 *srv_cert;

static const char *tmp_path(const char *name)
{
    static char paths[4][300];
    static int next;
    char *p = paths[next++ % 4];
    snprintf(p, 300, "%s/%s", tmpdir, name);
    return p;
}

/* ---- stderr capture ---------------------------------------------------------------------- */

static int saved_stderr = -1;

static void capture_begin(void)
{
    fflush(stderr);
    saved_stderr = dup(2);
    int fd = open(tmp_path("stderr"), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_true(fd >= 0);
    dup2(fd, 2);
    close(fd);
}

/* What was written to stderr since capture_begin (static buffer). */
static const char *capture_end(void)
{
    static char buf[4096];
    fflush(stderr);
    dup2(saved_stderr, 2);
    close(saved_stderr);
    FILE *f = fopen(tmp_path("stderr"), "r");
    assert_non_null(f);
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = 0;
    fclose(f);
    return buf;
}

/* ---- certificates ------------------------------------------------------------------------ */

static X509 *make_cert(EVP_PKEY *key, const char *cn, const char *san)
{
    X509 *x = X509_new();
    assert_non_null(x);
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), (long)(getpid() & 0xffff) + 1);
    X509_gmtime_adj(X509_getm_notBefore(x), -60);
    X509_gmtime_adj(X509_getm_notAfter(x), 86400);
    X509_set_pubkey(x, key);
    X509_NAME *name = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0);
    X509_set_issuer_name(x, name);
    X509V3_CTX v3;
    X509V3_set_ctx_nodb(&v3);
    X509V3_set_ctx(&v3, x, x, NULL, NULL, 0);
    const char *exts[][2] = {{"subjectAltName", san}, {"basicConstraints", "critical,CA:TRUE"}};
    for (size_t i = 0; i < 2; i++) {
        X509_EXTENSION *e = X509V3_EXT_conf(NULL, &v3, exts[i][0], exts[i][1]);
        assert_non_null(e);
        X509_add_ext(x, e, -1);
        X509_EXTENSION_free(e);
    }
    assert_true(X509_sign(x, key, EVP_sha256()) > 0);
    return x;
}

static void write_cert(const char *path, X509 *x)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    assert_int_equal(PEM_write_X509(f, x), 1);
    fclose(f);
}

static int group_setup(void **state)
{
    (void)state;
    if (!mkdtemp(tmpdir))
        return -1;
    srv_key = EVP_EC_gen("P-256");
    if (!srv_key)
        return -1;
    srv_cert = make_cert(srv_key, "localhost", "DNS:localhost,IP:127.0.0.1,IP:::1");
    snprintf(cert_path, sizeof cert_path, "%s/cert.pem", tmpdir);
    write_cert(cert_path, srv_cert);
    /* another self-signed certificate (another key): a CA that did not sign the server's */
    EVP_PKEY *k2 = EVP_EC_gen("P-256");
    X509 *x2 = make_cert(k2, "localhost", "DNS:localhost,IP:127.0.0.1");
    snprintf(other_cert_path, sizeof other_cert_path, "%s/other.pem", tmpdir);
    write_cert(other_cert_path, x2);
    X509_free(x2);
    EVP_PKEY_free(k2);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    X509_free(srv_cert);
    EVP_PKEY_free(srv_key);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", tmpdir);
    return 0;
}

static int setup(void **state)
{
    (void)state;
    unsetenv("IMP_SERVER");
    unsetenv("IMP_USER");
    unsetenv("IMP_PASSWORD");
    unsetenv("IMP_CAFILE");
    return 0;
}

/* ---- in-memory handshake ----------------------------------------------------------------- */

/* Handshake a client SSL (made by imt_tls_new for host) with a server using srv_cert. Returns
 * 1 when the client's handshake succeeded, 0 when it failed (the message in err). */
static int handshake(const imt_tls_opts *o, const char *host, char *err, size_t errlen)
{
    char e[300] = "";
    SSL_CTX *cctx = imt_tls_ctx_new(o, e, sizeof e);
    assert_non_null(cctx);
    SSL *c = imt_tls_new(cctx, o, host, e, sizeof e);
    assert_non_null(c);
    SSL_CTX *sctx = SSL_CTX_new(TLS_server_method());
    assert_non_null(sctx);
    assert_int_equal(SSL_CTX_use_certificate(sctx, srv_cert), 1);
    assert_int_equal(SSL_CTX_use_PrivateKey(sctx, srv_key), 1);
    SSL *s = SSL_new(sctx);
    assert_non_null(s);
    BIO *cb, *sb;
    assert_int_equal(BIO_new_bio_pair(&cb, 0, &sb, 0), 1);
    SSL_set_bio(c, cb, cb);
    SSL_set_bio(s, sb, sb);
    SSL_set_connect_state(c);
    SSL_set_accept_state(s);
    int cdone = 0, sdone = 0, failed = 0;
    for (int i = 0; i < 50 && !failed && !(cdone && sdone); i++) {
        if (!cdone) {
            int r = SSL_do_handshake(c);
            if (r == 1)
                cdone = 1;
            else if (SSL_get_error(c, r) != SSL_ERROR_WANT_READ &&
                     SSL_get_error(c, r) != SSL_ERROR_WANT_WRITE) {
                imt_tls_error(c, err, errlen);
                failed = 1;
            }
        }
        if (!sdone && !failed) {
            int r = SSL_do_handshake(s);
            if (r == 1)
                sdone = 1;
            else if (SSL_get_error(s, r) != SSL_ERROR_WANT_READ &&
                     SSL_get_error(s, r) != SSL_ERROR_WANT_WRITE)
                sdone = 1; /* the server gave up (the client sent an alert) */
        }
    }
    ERR_clear_error();
    SSL_free(c);
    SSL_free(s);
    SSL_CTX_free(cctx);
    SSL_CTX_free(sctx);
    return cdone && !failed;
}

/* ---- tests ------------------------------------------------------------------------------- */

static void test_tls_option_values(void **state)
{
    (void)state;
    imt_tls_opts t;
    memset(&t, 0, sizeof t);
    assert_int_equal(imt_opts_tls("t", 's', "x", &t), 0);
    assert_int_equal(imt_opts_tls("t", IMT_OPT_PASSWORD_FILE, "x", &t), 0);
    assert_int_equal(t.enabled, 0);

    assert_int_equal(imt_opts_tls("t", IMT_OPT_TLS, NULL, &t), 1);
    assert_int_equal(t.enabled, 1);
    assert_null(t.cafile);
    assert_int_equal(t.insecure, 0);
    assert_null(t.server_name);

    /* --cafile and --insecure imply --tls; --tls-name does not (checked at the end) */
    memset(&t, 0, sizeof t);
    assert_int_equal(imt_opts_tls("t", IMT_OPT_CAFILE, "ca.pem", &t), 1);
    assert_int_equal(t.enabled, 1);
    assert_string_equal(t.cafile, "ca.pem");
    memset(&t, 0, sizeof t);
    assert_int_equal(imt_opts_tls("t", IMT_OPT_INSECURE, NULL, &t), 1);
    assert_int_equal(t.enabled, 1);
    assert_int_equal(t.insecure, 1);
    memset(&t, 0, sizeof t);
    assert_int_equal(imt_opts_tls("t", IMT_OPT_TLS_NAME, "chat.example.org", &t), 1);
    assert_int_equal(t.enabled, 0);
    assert_string_equal(t.server_name, "chat.example.org");
    SSL_CTX *ctx = (SSL_CTX *)&t; /* must be reset to NULL */
    capture_begin();
    assert_int_equal(imt_opts_tls_finish("prog", &t, &ctx), -1);
    const char *m0 = capture_end();
    assert_non_null(strstr(m0, "prog: --tls-name needs --tls"));
    assert_null(ctx);
    assert_int_equal(imt_opts_tls("t", IMT_OPT_TLS, NULL, &t), 1);
    assert_int_equal(imt_opts_tls_finish("prog", &t, &ctx), 0);
    assert_non_null(ctx);
    SSL_CTX_free(ctx);

    /* empty values are errors, with a message naming the option */
    memset(&t, 0, sizeof t);
    capture_begin();
    assert_int_equal(imt_opts_tls("prog", IMT_OPT_CAFILE, "", &t), -1);
    const char *msg = capture_end();
    assert_non_null(strstr(msg, "prog: "));
    assert_non_null(strstr(msg, "--cafile"));
    capture_begin();
    assert_int_equal(imt_opts_tls("prog", IMT_OPT_TLS_NAME, "", &t), -1);
    msg = capture_end();
    assert_non_null(strstr(msg, "--tls-name"));
    assert_int_equal(t.enabled, 0);
}

/* The whole path through getopt_long with the tools' option tables. */
static void test_tls_getopt(void **state)
{
    (void)state;
    static const struct option longopts[] = {IMT_OPTS_LONG, IMT_OPTS_TLS_LONG, {0, 0, 0, 0}};
    const char *argv[] = {"t",          "-u",        "alice", "--cafile",       cert_path,
                          "--tls-name", "localhost", "-s",    "127.0.0.1:7643", NULL};
    int argc = 9;
    imt_opts o;
    imt_opts_init(&o, "t");
    assert_int_equal(o.tls.enabled, 0);
    optind = 0;
    int ch;
    while ((ch = getopt_long(argc, (char *const *)argv, IMT_OPTS_SHORT, longopts, NULL)) != -1)
        assert_int_equal(imt_opts_handle(&o, ch, optarg), 1);
    assert_int_equal(o.tls.enabled, 1);
    assert_string_equal(o.tls.cafile, cert_path);
    assert_string_equal(o.tls.server_name, "localhost");
    setenv("IMP_PASSWORD", "pw", 1);
    assert_int_equal(imt_opts_finish(&o, 1), 0);
    assert_non_null(o.tls_ctx);
    imt_client_config cfg;
    imt_client_config_init(&cfg);
    imt_opts_client_config(&o, &cfg);
    assert_ptr_equal(cfg.tls, &o.tls);
    assert_ptr_equal(cfg.tls_ctx, o.tls_ctx);
    imt_opts_free(&o);
    assert_null(o.tls_ctx);

    /* --insecure alone */
    const char *argv2[] = {"t", "--insecure", NULL};
    imt_opts_init(&o, "t");
    optind = 0;
    while ((ch = getopt_long(2, (char *const *)argv2, IMT_OPTS_SHORT, longopts, NULL)) != -1)
        assert_int_equal(imt_opts_handle(&o, ch, optarg), 1);
    assert_int_equal(o.tls.enabled, 1);
    assert_int_equal(o.tls.insecure, 1);
    assert_int_equal(imt_opts_finish(&o, 0), 0);
    assert_non_null(o.tls_ctx);
    imt_opts_free(&o);
}

static void test_plain_has_no_tls(void **state)
{
    (void)state;
    setenv("IMP_CAFILE", cert_path, 1); /* a default for --cafile: does not turn TLS on */
    imt_opts o;
    imt_opts_init(&o, "t");
    assert_int_equal(imt_opts_finish(&o, 0), 0);
    assert_int_equal(o.tls.enabled, 0);
    assert_null(o.tls_ctx);
    imt_client_config cfg;
    imt_client_config_init(&cfg);
    assert_null(cfg.tls);
    assert_null(cfg.tls_ctx);
    imt_opts_client_config(&o, &cfg);
    assert_null(cfg.tls);
    assert_null(cfg.tls_ctx);
    imt_opts_free(&o);
}

static void test_imp_cafile_env(void **state)
{
    (void)state;
    setenv("IMP_CAFILE", cert_path, 1);
    imt_opts o;
    imt_opts_init(&o, "t");
    assert_int_equal(imt_opts_handle(&o, IMT_OPT_TLS, NULL), 1);
    assert_int_equal(imt_opts_finish(&o, 0), 0);
    assert_string_equal(o.tls.cafile, cert_path);
    assert_non_null(o.tls_ctx);
    imt_opts_free(&o);
    /* --cafile wins over IMP_CAFILE */
    imt_opts_init(&o, "t");
    assert_int_equal(imt_opts_handle(&o, IMT_OPT_CAFILE, other_cert_path), 1);
    assert_int_equal(imt_opts_finish(&o, 0), 0);
    assert_string_equal(o.tls.cafile, other_cert_path);
    imt_opts_free(&o);
    /* an empty IMP_CAFILE is ignored */
    setenv("IMP_CAFILE", "", 1);
    imt_opts_init(&o, "t");
    assert_int_equal(imt_opts_handle(&o, IMT_OPT_TLS, NULL), 1);
    assert_int_equal(imt_opts_finish(&o, 0), 0);
    assert_null(o.tls.cafile);
    imt_opts_free(&o);
}

static void test_finish_tls_errors(void **state)
{
    (void)state;
    imt_opts o;
    /* a missing CA file: a usage error at once, with the file named */
    imt_opts_init(&o, "prog");
    imt_opts_handle(&o, IMT_OPT_CAFILE, "/nonexistent/ca.pem");
    capture_begin();
    assert_int_equal(imt_opts_finish(&o, 0), -1);
    const char *msg = capture_end();
    assert_non_null(strstr(msg, "prog: cannot read CA file /nonexistent/ca.pem"));
    assert_null(o.tls_ctx);
    imt_opts_free(&o);
    /* a file that holds no certificate */
    const char *junk = tmp_path("junk.pem");
    FILE *f = fopen(junk, "w");
    assert_non_null(f);
    fputs("not a certificate\n", f);
    fclose(f);
    imt_opts_init(&o, "prog");
    imt_opts_handle(&o, IMT_OPT_CAFILE, junk);
    capture_begin();
    assert_int_equal(imt_opts_finish(&o, 0), -1);
    msg = capture_end();
    assert_non_null(strstr(msg, "cannot read CA file"));
    imt_opts_free(&o);
    /* --tls-name alone */
    imt_opts_init(&o, "prog");
    imt_opts_handle(&o, IMT_OPT_TLS_NAME, "localhost");
    capture_begin();
    assert_int_equal(imt_opts_finish(&o, 0), -1);
    msg = capture_end();
    assert_non_null(strstr(msg, "--tls-name needs --tls"));
    assert_null(o.tls_ctx);
    imt_opts_free(&o);
    /* TLS needs a TCP address */
    imt_opts_init(&o, "prog");
    imt_opts_handle(&o, 's', "unix:/tmp/imd.sock");
    imt_opts_handle(&o, IMT_OPT_INSECURE, NULL);
    capture_begin();
    assert_int_equal(imt_opts_finish(&o, 0), -1);
    msg = capture_end();
    assert_non_null(strstr(msg, "unix"));
    assert_null(o.tls_ctx);
    imt_opts_free(&o);
}

static void test_ctx_missing_cafile(void **state)
{
    (void)state;
    imt_tls_opts t = {.enabled = 1, .cafile = "/nonexistent/ca.pem"};
    char err[300] = "";
    assert_null(imt_tls_ctx_new(&t, err, sizeof err));
    assert_non_null(strstr(err, "cannot read CA file /nonexistent/ca.pem"));
    t.cafile = cert_path;
    err[0] = 0;
    SSL_CTX *ctx = imt_tls_ctx_new(&t, err, sizeof err);
    assert_non_null(ctx);
    assert_int_equal(SSL_CTX_get_min_proto_version(ctx), TLS1_2_VERSION);
    assert_int_equal(SSL_CTX_get_verify_mode(ctx) & SSL_VERIFY_PEER, SSL_VERIFY_PEER);
    SSL_CTX_free(ctx);
    /* insecure: no verification, the CA file is not read */
    imt_tls_opts ins = {.enabled = 1, .insecure = 1, .cafile = "/nonexistent/ca.pem"};
    ctx = imt_tls_ctx_new(&ins, err, sizeof err);
    assert_non_null(ctx);
    assert_int_equal(SSL_CTX_get_verify_mode(ctx), SSL_VERIFY_NONE);
    SSL_CTX_free(ctx);
}

static void test_handshake_verification(void **state)
{
    (void)state;
    char err[300];
    imt_tls_opts t = {.enabled = 1, .cafile = cert_path};
    /* the right CA, the IP address and the DNS name in the certificate */
    err[0] = 0;
    assert_int_equal(handshake(&t, "127.0.0.1", err, sizeof err), 1);
    assert_int_equal(handshake(&t, "localhost", err, sizeof err), 1);
    assert_int_equal(handshake(&t, "::1", err, sizeof err), 1);
    /* an address that is not in the certificate */
    err[0] = 0;
    assert_int_equal(handshake(&t, "127.0.0.2", err, sizeof err), 0);
    assert_non_null(strstr(err, "certificate verify failed: "));
    /* --tls-name overrides the host: wrong name fails, right name passes */
    imt_tls_opts named = {.enabled = 1, .cafile = cert_path, .server_name = "wrong.example"};
    err[0] = 0;
    assert_int_equal(handshake(&named, "127.0.0.1", err, sizeof err), 0);
    assert_non_null(strstr(err, "certificate verify failed: "));
    assert_non_null(strstr(err, "mismatch"));
    named.server_name = "localhost";
    assert_int_equal(handshake(&named, "127.0.0.2", err, sizeof err), 1);
    /* another CA: the self-signed server certificate is not trusted */
    imt_tls_opts other = {.enabled = 1, .cafile = other_cert_path};
    err[0] = 0;
    assert_int_equal(handshake(&other, "127.0.0.1", err, sizeof err), 0);
    assert_non_null(strstr(err, "certificate verify failed: self-signed certificate"));
    /* insecure: anything goes */
    imt_tls_opts ins = {.enabled = 1, .insecure = 1, .server_name = "wrong.example"};
    assert_int_equal(handshake(&ins, "127.0.0.2", err, sizeof err), 1);
}

static void test_help(void **state)
{
    (void)state;
    const char *opts[] = {"--tls ", "--cafile FILE", "--insecure", "--tls-name NAME", "IMP_CAFILE"};
    for (size_t i = 0; i < sizeof opts / sizeof opts[0]; i++)
        assert_non_null(strstr(imt_opts_tls_help, opts[i]));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_tls_option_values, setup),
        cmocka_unit_test_setup(test_tls_getopt, setup),
        cmocka_unit_test_setup(test_plain_has_no_tls, setup),
        cmocka_unit_test_setup(test_imp_cafile_env, setup),
        cmocka_unit_test_setup(test_finish_tls_errors, setup),
        cmocka_unit_test_setup(test_ctx_missing_cafile, setup),
        cmocka_unit_test_setup(test_handshake_verification, setup),
        cmocka_unit_test_setup(test_help, setup),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
