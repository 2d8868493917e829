/* imd — the server core: sessions, accounts, routing, rooms, presence, delivery, limits,
 * metrics. No sockets and no libevent here: the network layer (net.c) moves bytes, the core
 * turns them into frames with libimp and acts on them. The fuzz target and the unit tests drive
 * the core directly, with an in-memory store and a synchronous hash pool.
 *
 * Contract with the network layer:
 *   c = ims_server_accept(srv, "127.0.0.1:5555", io_ctx)   a new connection (never NULL unless
 *                                                          out of memory; over a connection
 *                                                          limit it is born closing with ERROR
 *                                                          SERVER_FULL queued)
 *   ims_client_input(c, bytes, n)                          bytes read from the socket
 *   n = ims_client_output(c, &p); ims_client_consumed(c, k)   bytes to write
 *   ims_client_done(c)                                     1: write what is pending, then close
 *   ims_client_closed(c)                                   the transport is gone: frees c (its
 *                                                          messages stay queued)
 *   ims_server_turn_end(srv)                               once per event-loop turn after I/O:
 *                                                          group commit (IMP-DELIV-001), then
 *                                                          the turn's ACKs and DELIVERs
 *   ims_server_tick(srv)                                   periodically (every 100 ms): timers
 *   ims_server_auth_ready(srv)                             the hash pool's wake hook fired
 * Output of a turn's stored messages (ACKs, DELIVERs, the queue of a user who logged in) is
 * only produced by ims_server_turn_end, after the commit: call it after tick and auth_ready
 * too (net.c's turn event does).
 * Whenever the core queues output for a client or decides to close it outside a call on that
 * client, it calls io.want_write(io_ctx). The network layer must then look at
 * ims_client_output and ims_client_done for that client.
 *
 * Notes for the network layer:
 * - ims_client_consumed may queue more output for that client at once (delivery continues when
 *   the output drains, without want_write): look at ims_client_output again after it.
 * - ims_client_done is 1 as soon as a close is decided (ERROR queued, reason counted); write
 *   what is pending, then call ims_client_closed. Its reason only counts when the core had not
 *   decided one: 733 (or 0) "close.peer", others by class (7xx "close.protocol", ...).
 * - ims_server_accept never calls want_write for the new client: look at its output at once
 *   (a client over a limit is born done, with ERROR SERVER_FULL queued).
 * - The io ctx passed to accept is given back to want_write only; the core never frees it.
 * - Slow consumers: the core fills a client's output only up to output_soft (and 1000
 *   unacknowledged DELIVERs); what does not fit stays in the store. A client whose output stays
 *   over output_soft for output_soft_ms (checked by ims_server_tick) or would pass output_hard
 *   is closed with SLOW_CONSUMER (IMP-DELIV-007).
 */
#ifndef IMS_SERVER_H
#define IMS_SERVER_H

#include <stddef.h>
#include <stdint.h>

#include <imp/imp.h>

#include "auth.h"
#include "config.h"
#include "store.h"

typedef struct ims_server ims_server;
typedef struct ims_client ims_client;

typedef struct ims_io_ops {
    void (*want_write)(void *io_ctx); /* output queued or close decided for that client */
} ims_io_ops;

typedef struct ims_clock {
    uint64_t (*mono_ms)(void *ud); /* monotonic milliseconds (timers) */
    int64_t (*wall_ms)(void *ud);  /* Unix time in ms (TIMESTAMP, SERVER_TIME) */
    void *ud;
} ims_clock;

typedef struct ims_server_options {
    const ims_cfg *cfg; /* copied */
    ims_store *store;   /* owned by the caller, outlives the server */
    ims_auth *auth;     /* owned by the caller */
    ims_io_ops io;
    ims_clock clock;     /* NULL members: CLOCK_MONOTONIC / CLOCK_REALTIME */
    const char *version; /* AGENT in WELCOME, "imd/0.1.0" */
    /* The group commit; NULL = ims_store_commit. A hook for tests that inject a failed commit
     * (every ACK held for the batch then becomes OUTCOME refused, STORAGE). */
    int (*commit)(void *ud, ims_store *s);
    void *commit_ud;
    /* The fsync thread (syncer.h) when the store's commits do not sync inline
     * (ims_store_sync_fd >= 0); NULL otherwise. Owned by the caller, outlives the server. */
    struct ims_syncer *syncer;
} ims_server_options;

ims_server *ims_server_new(const ims_server_options *o);
/* Frees every client (the network layer must have closed their transports first). */
void ims_server_free(ims_server *srv);

ims_client *ims_server_accept(ims_server *srv, const char *peer, void *io_ctx);
void ims_client_input(ims_client *c, const uint8_t *p, size_t n);
size_t ims_client_output(ims_client *c, const uint8_t **p);
/* The same output as segments (imp_conn_output_iov: the buffer, then the frames shared with
 * other clients, e.g. a room's fan-out), at most max; for one gathering write (sendmsg). */
int ims_client_output_iov(ims_client *c, imp_iovec *v, int max);
/* All output bytes not yet written (shared frames included). */
size_t ims_client_pending(const ims_client *c);
void ims_client_consumed(ims_client *c, size_t n);
int ims_client_done(const ims_client *c);
/* reason: a wire code (e.g. 733 CONNECTION_LOST for EOF/reset) counted among close reasons. */
void ims_client_closed(ims_client *c, int reason);
void *ims_client_io(const ims_client *c);

void ims_server_turn_end(ims_server *srv);
/* fsync_thread: syncs what waits for the syncer on this thread, releases it, and forgets the
 * syncer (later commits sync inline): before ims_syncer_free. */
void ims_server_detach_syncer(ims_server *srv);
void ims_server_tick(ims_server *srv);
void ims_server_auth_ready(ims_server *srv);

/* Graceful shutdown (SIGTERM): stop new logins, commit, send ERROR SHUTDOWN (730) to every
 * client and mark them done. The network layer stops accepting, flushes and exits. */
void ims_server_shutdown(ims_server *srv);
/* SIGHUP: applies the reloadable settings of cfg (limits, timers for new connections,
 * registration, log level, quotas); calls changed(key, old, new) for each change. */
void ims_server_reload(ims_server *srv, const ims_cfg *cfg,
                       void (*changed)(void *ud, const char *key, const char *from, const char *to),
                       void *ud);

/* Counters and gauges for STATS and /metrics: names in [a-z0-9_.], e.g. "connections",
 * "logins_ok", "msgs_in", "close.slow_consumer". */
void ims_server_stats(ims_server *srv, void (*cb)(void *ud, const char *name, uint64_t v),
                      void *ud);
/* Counters the network layer owns. */
void ims_server_count_bytes(ims_server *srv, uint64_t in, uint64_t out);
void ims_server_count_accept_error(ims_server *srv);

#endif
