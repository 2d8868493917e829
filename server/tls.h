/* imd — TLS: the OpenSSL server context of the tls_listen listeners (issue 6, IMP-SEC-005).
 *
 * One ims_tls holds the current SSL_CTX: TLS_server_method, the oldest version from
 * tls_min_version, no compression, no renegotiation, forward-secret AEAD cipher suites for
 * TLS 1.2 (OpenSSL's defaults for 1.3), session tickets on. The certificate chain and the key
 * are loaded and checked (the key must match the certificate) by ims_tls_new; ims_tls_reload
 * builds a new context from the files and swaps it in only when it loads, so that a bad file on
 * SIGHUP leaves the old certificate in place. Connections hold a reference to the context they
 * were created with (SSL_new), so a reload never disturbs them.
 *
 * The connection I/O (libevent OpenSSL bufferevents) is in net.c.
 */
#ifndef IMS_TLS_H
#define IMS_TLS_H

#include <stddef.h>

#include <openssl/ssl.h>

#include "config.h"

typedef struct ims_tls ims_tls;

/* Loads cfg->tls_cert and cfg->tls_key. NULL with a message naming the file and OpenSSL's
 * reason in err ("tls_cert /etc/imd/cert.pem: ... "). */
ims_tls *ims_tls_new(const ims_cfg *cfg, char *err, size_t errlen);
/* Rebuilds the context from cfg (files, tls_min_version). 0; or -1 with err, the old context
 * stays. */
int ims_tls_reload(ims_tls *t, const ims_cfg *cfg, char *err, size_t errlen);
/* A new server-side SSL for one connection (NULL when out of memory). */
SSL *ims_tls_ssl_new(ims_tls *t);
/* A short description of the current certificate (subject), for the log. */
const char *ims_tls_describe(const ims_tls *t);
void ims_tls_free(ims_tls *t);

/* The OpenSSL errors queued on this thread, as one line into buf (emptying the queue); "" when
 * there is none. */
const char *ims_tls_errors(char *buf, size_t len);

#endif
