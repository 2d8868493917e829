/* imd — the network layer: listeners (TCP over IPv4/IPv6, Unix sockets), connections as raw
 * non-blocking sockets on libevent (TLS connections: libevent's OpenSSL bufferevents, IMP-SEC-005),
 * the group-commit turn, timers, the hash pool's wake-up, and
 * the Prometheus /metrics endpoint (evhttp). All socket I/O of imd is here; the core
 * (server.h) only sees bytes.
 *
 * Event-loop turn: socket callbacks run at priority 0; one "turn" event at priority 1 runs after
 * them, calls ims_server_turn_end() (group commit: one SQLite commit for every write of the
 * turn, IMP-DELIV-001) and then writes what the core queued and closes what it finished: first
 * the connections whose input was read since the last turn (their answers, e.g. a room sender's
 * ACKs: it sends its next messages while the rest is written), then the others. The order of
 * writing to different connections changes nothing that is queued, nor any connection's order.
 */
#ifndef IMS_NET_H
#define IMS_NET_H

#include <stdio.h>

#include <event2/event.h>

#include "config.h"
#include "server.h"
#include "tls.h"

typedef struct ims_net ims_net;

/* Creates the network layer on base (which must have been created by the caller; ims_net_new
 * sets its priorities). */
ims_net *ims_net_new(struct event_base *base);
/* The io ops (and their context) to give the core in ims_server_options. */
ims_io_ops ims_net_io_ops(void);
void ims_net_set_server(ims_net *n, ims_server *srv);
/* The wake hook for ims_auth_options (thread-safe: writes to a self-pipe). */
void ims_net_auth_wake(void *net);

/* The TLS context of the tls_listen listeners (owned by the caller, outlives n; NULL: none)
 * and the handshake deadline of new TLS connections. Call before ims_net_listen, and again on
 * SIGHUP for a new deadline. */
void ims_net_set_tls(ims_net *n, ims_tls *tls, uint32_t handshake_timeout_ms);

/* Listens on every cfg->listen address, every cfg->tls_listen address (TLS, see
 * ims_net_set_tls) and cfg->metrics_listen; prints one line per listener on out ("imd:
 * listening on 127.0.0.1:41234", "imd: listening on 127.0.0.1:41236 (tls)", "imd: metrics on
 * 127.0.0.1:41235"). 0, or -1 with a message in err. */
int ims_net_listen(ims_net *n, const ims_cfg *cfg, FILE *out, char *err, size_t errlen);

/* Graceful stop: stop accepting, tell the core (ERROR SHUTDOWN to every client), flush, and
 * leave the loop when every connection is closed or after grace_ms. */
void ims_net_shutdown(ims_net *n, unsigned grace_ms);

/* Closes every connection and listener and frees. Call after the loop ended. */
void ims_net_free(ims_net *n);

/* Open connections now (for logs and tests). */
int ims_net_connections(const ims_net *n);

#endif
