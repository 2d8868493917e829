/* imt_tls — TLS client contexts for the tools (imsend, imwatch, imload), on OpenSSL.
 *
 * Options every tool takes (imt_opts.h parses them into an imt_tls_opts):
 *   --tls            TLS to the server, verifying its certificate against the system's trust
 *                    store (or --cafile) and its name against the host of the server address
 *   --cafile FILE    trust the PEM certificates in FILE (implies --tls)
 *   --insecure       TLS without verifying the certificate (tests only; implies --tls)
 *   --tls-name NAME  verify the certificate against NAME instead of the host (needs TLS on)
 *   $IMP_CAFILE      the CA file when TLS is on and --cafile is not given (does not turn TLS on)
 * TLS 1.2 is the minimum. A failed handshake or verification is "cannot connect" (exit 3).
 *
 *     imt_tls_opts o = {.enabled = 1, .cafile = "ca.pem"};
 *     SSL_CTX *ctx = imt_tls_ctx_new(&o, err, sizeof err);    // once per process
 *     SSL *ssl = imt_tls_new(ctx, &o, "127.0.0.1", err, sizeof err);  // once per connection
 *     SSL_set_fd(ssl, fd); SSL_set_connect_state(ssl); ...
 */
#ifndef IMT_TLS_H
#define IMT_TLS_H

#include <stddef.h>

#include <openssl/ssl.h>

typedef struct imt_tls_opts {
    int enabled;             /* --tls (or implied by --cafile / --insecure) */
    const char *cafile;      /* NULL: the default verify paths */
    int insecure;            /* no certificate verification */
    const char *server_name; /* NULL: the host of the server address */
} imt_tls_opts;

/* A client context: TLS 1.2 minimum, peer verification unless insecure, the CA file or the
 * default verify paths. NULL with a message in err ("cannot read CA file x: ..."). Free with
 * SSL_CTX_free. */
SSL_CTX *imt_tls_ctx_new(const imt_tls_opts *o, char *err, size_t errlen);

/* A connection: SNI (when the name is not an IP address) and name verification (host name, or
 * IP address) against o->server_name or host. NULL with a message in err. */
SSL *imt_tls_new(SSL_CTX *ctx, const imt_tls_opts *o, const char *host, char *err, size_t errlen);

/* The reason of the last failure on this thread's OpenSSL error queue, and the verification
 * result when ssl is not NULL ("certificate verify failed: self-signed certificate"), into
 * buf; clears the queue; returns buf. */
const char *imt_tls_error(SSL *ssl, char *buf, size_t len);

#endif
