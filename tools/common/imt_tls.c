/* imt_tls — TLS client contexts for the tools (see imt_tls.h). */
#include "imt_tls.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/x509v3.h>

/* The reason of an OpenSSL error code ("No such file or directory", "wrong version number"),
 * else its full string ("error:0A00010B:SSL routines::..."). */
static void reason_text(unsigned long e, char *buf, size_t len)
{
#ifdef ERR_SYSTEM_ERROR
    if (ERR_SYSTEM_ERROR(e)) { /* OpenSSL 3: the reason is an errno value */
        snprintf(buf, len, "%s", strerror(ERR_GET_REASON(e)));
        return;
    }
#endif
    const char *r = ERR_reason_error_string(e);
    if (r && *r)
        snprintf(buf, len, "%s", r);
    else
        ERR_error_string_n(e, buf, len);
}

static void last_error(char *err, size_t errlen, const char *what)
{
    unsigned long e = ERR_get_error();
    char buf[256] = "unknown error";
    if (e)
        reason_text(e, buf, sizeof buf);
    ERR_clear_error();
    snprintf(err, errlen, "%s: %s", what, buf);
}

SSL_CTX *imt_tls_ctx_new(const imt_tls_opts *o, char *err, size_t errlen)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx) {
        last_error(err, errlen, "cannot create a TLS context");
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    if (o->insecure) {
        SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
        return ctx;
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    if (o->cafile) {
        if (SSL_CTX_load_verify_locations(ctx, o->cafile, NULL) != 1) {
            char what[300];
            snprintf(what, sizeof what, "cannot read CA file %s", o->cafile);
            last_error(err, errlen, what);
            SSL_CTX_free(ctx);
            return NULL;
        }
    } else if (SSL_CTX_set_default_verify_paths(ctx) != 1) {
        last_error(err, errlen, "cannot load the system's trusted certificates");
        SSL_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}

static int is_ip(const char *name)
{
    unsigned char buf[16];
    return inet_pton(AF_INET, name, buf) == 1 || inet_pton(AF_INET6, name, buf) == 1;
}

SSL *imt_tls_new(SSL_CTX *ctx, const imt_tls_opts *o, const char *host, char *err, size_t errlen)
{
    const char *name = o->server_name && *o->server_name ? o->server_name : host;
    SSL *ssl = SSL_new(ctx);
    if (!ssl) {
        last_error(err, errlen, "cannot create a TLS connection");
        return NULL;
    }
    int ok = 1;
    if (name && *name && !is_ip(name))
        ok = SSL_set_tlsext_host_name(ssl, name) == 1;
    if (ok && !o->insecure && name && *name) {
        X509_VERIFY_PARAM *vp = SSL_get0_param(ssl);
        if (is_ip(name))
            ok = X509_VERIFY_PARAM_set1_ip_asc(vp, name) == 1;
        else
            ok = X509_VERIFY_PARAM_set1_host(vp, name, 0) == 1;
    }
    if (!ok) {
        last_error(err, errlen, "cannot set the TLS server name");
        SSL_free(ssl);
        return NULL;
    }
    return ssl;
}

const char *imt_tls_error(SSL *ssl, char *buf, size_t len)
{
    unsigned long e = ERR_get_error();
    char reason[256] = "";
    if (e)
        reason_text(e, reason, sizeof reason);
    ERR_clear_error();
    long v = ssl ? SSL_get_verify_result(ssl) : X509_V_OK;
    if (v != X509_V_OK)
        snprintf(buf, len, "certificate verify failed: %s", X509_verify_cert_error_string(v));
    else if (*reason)
        snprintf(buf, len, "TLS error: %s", reason);
    else
        snprintf(buf, len, "TLS handshake failed");
    return buf;
}
