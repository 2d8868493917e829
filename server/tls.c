/* imd — TLS server context (see tls.h).
 *
 * IMP-SEC-005: clients that reach imd over a network use TLS (tls_listen); plain listeners stay
 * on loopback unless allow_insecure_listen says otherwise (config.c), and a TLS connection is
 * held to the same limits and deadlines as a plain one plus a handshake deadline (net.c).
 */
#include "tls.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/x509.h>

/* TLS 1.2 suites: ECDHE key exchange with AEAD only (the "intermediate" profile many guides
 * recommend); TLS 1.3 keeps OpenSSL's default suites, which are all AEAD. */
#define TLS12_CIPHERS                                                                          \
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:" \
    "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"

struct ims_tls {
    SSL_CTX *ctx;
    char desc[256];
};

const char *ims_tls_errors(char *buf, size_t len)
{
    size_t n = 0;
    unsigned long e;
    if (len == 0)
        return buf;
    buf[0] = 0;
    while ((e = ERR_get_error()) != 0) {
        if (n + 3 >= len)
            continue; /* keep draining the queue */
        char one[256];
        const char *reason = ERR_reason_error_string(e);
        if (reason)
            snprintf(one, sizeof one, "%s", reason);
        else
            ERR_error_string_n(e, one, sizeof one);
        /* the same reason twice (file, then PEM lib) says nothing new */
        if (strstr(buf, one))
            continue;
        int w = snprintf(buf + n, len - n, "%s%s", n ? "; " : "", one);
        if (w > 0)
            n += (size_t)w < len - n ? (size_t)w : len - n - 1;
    }
    return buf;
}

/* The subject of the context's certificate into desc (for the log). */
static void describe_cert(SSL_CTX *ctx, char *desc, size_t desclen)
{
    X509 *x = SSL_CTX_get0_certificate(ctx);
    if (!x) {
        snprintf(desc, desclen, "?");
        return;
    }
    X509_NAME_oneline(X509_get_subject_name(x), desc, (int)desclen);
}

/* A file must be readable before OpenSSL is asked: its errors for a missing file are vague. */
static int readable(const char *key, const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "%s %s: cannot read: %s", key, path, strerror(errno));
        return -1;
    }
    fclose(f);
    return 0;
}

static SSL_CTX *build_ctx(const ims_cfg *cfg, char *desc, size_t desclen, char *err, size_t errlen)
{
    char why[512];
    ERR_clear_error();
    if (!cfg->tls_cert[0] || !cfg->tls_key[0]) {
        snprintf(err, errlen, "%s: not set (tls_listen needs tls_cert and tls_key)",
                 cfg->tls_cert[0] ? "tls_key" : "tls_cert");
        return NULL;
    }
    if (readable("tls_cert", cfg->tls_cert, err, errlen) != 0 ||
        readable("tls_key", cfg->tls_key, err, errlen) != 0)
        return NULL;
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx) {
        snprintf(err, errlen, "TLS: cannot create a context: %s", ims_tls_errors(why, sizeof why));
        return NULL;
    }
    int minv = strcmp(cfg->tls_min_version, "1.3") == 0 ? TLS1_3_VERSION : TLS1_2_VERSION;
    SSL_CTX_set_min_proto_version(ctx, minv);
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION |
                                 SSL_OP_CIPHER_SERVER_PREFERENCE);
    /* Buffers of idle connections are given back (many idle clients, little memory). */
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
    static const unsigned char sid_ctx[] = "imd";
    SSL_CTX_set_session_id_context(ctx, sid_ctx, sizeof sid_ctx - 1);
    if (SSL_CTX_set_cipher_list(ctx, TLS12_CIPHERS) != 1) {
        snprintf(err, errlen, "TLS: cipher list: %s", ims_tls_errors(why, sizeof why));
        SSL_CTX_free(ctx);
        return NULL;
    }
    if (SSL_CTX_use_certificate_chain_file(ctx, cfg->tls_cert) != 1) {
        snprintf(err, errlen, "tls_cert %s: not a usable PEM certificate chain: %s", cfg->tls_cert,
                 ims_tls_errors(why, sizeof why));
        SSL_CTX_free(ctx);
        return NULL;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, cfg->tls_key, SSL_FILETYPE_PEM) != 1) {
        snprintf(err, errlen, "tls_key %s: not a usable PEM private key for %s: %s", cfg->tls_key,
                 cfg->tls_cert, ims_tls_errors(why, sizeof why));
        SSL_CTX_free(ctx);
        return NULL;
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
        snprintf(err, errlen, "tls_key %s: does not match the certificate of %s: %s", cfg->tls_key,
                 cfg->tls_cert, ims_tls_errors(why, sizeof why));
        SSL_CTX_free(ctx);
        return NULL;
    }
    describe_cert(ctx, desc, desclen);
    ERR_clear_error();
    return ctx;
}

ims_tls *ims_tls_new(const ims_cfg *cfg, char *err, size_t errlen)
{
    ims_tls *t = calloc(1, sizeof *t);
    if (!t) {
        snprintf(err, errlen, "TLS: out of memory");
        return NULL;
    }
    t->ctx = build_ctx(cfg, t->desc, sizeof t->desc, err, errlen);
    if (!t->ctx) {
        free(t);
        return NULL;
    }
    return t;
}

int ims_tls_reload(ims_tls *t, const ims_cfg *cfg, char *err, size_t errlen)
{
    char desc[256];
    SSL_CTX *ctx = build_ctx(cfg, desc, sizeof desc, err, errlen);
    if (!ctx)
        return -1;
    SSL_CTX_free(t->ctx); /* connections made with it hold their own reference */
    t->ctx = ctx;
    memcpy(t->desc, desc, sizeof desc);
    return 0;
}

SSL *ims_tls_ssl_new(ims_tls *t)
{
    return SSL_new(t->ctx);
}

const char *ims_tls_describe(const ims_tls *t)
{
    return t->desc;
}

void ims_tls_free(ims_tls *t)
{
    if (!t)
        return;
    SSL_CTX_free(t->ctx);
    free(t);
}
