/* imload — a load generator for IMP servers: shared definitions.
 *
 * main.c    options, --help, the run's phases, the report (table, --json, --csv), --assert
 * engine.c  the workers: one epoll loop per thread (--threads), each owning a share of the
 *           connections (client role on libimp), the send schedule and the counters
 * sink.c    --sink: a tiny IMP server that answers the handshake and logins, acknowledges
 *           SENDs and turns them into DELIVERs (to measure imload's own ceiling)
 * hist.c    the log-linear latency histogram
 * gate.c    option value parsers and the --assert gates
 * check.c   --check: the independent checker of --history files (reads only the files)
 *
 * Threads share nothing but the phase and a few start-time fields (set before the phase
 * changes, read after): each connection, its bitmaps and its counters belong to one worker.
 * --procs forks worker processes that each own a slice of the connections (a receiver and every
 * sender that sends to it in the same process, so losses are counted locally); they report
 * their merged results to the parent through a pipe.
 */
#ifndef IMLOAD_H
#define IMLOAD_H

#include <netinet/in.h>
#include <stddef.h>
#include <stdio.h>
#include <stdint.h>

#include "hist.h"
#include "imp/imp.h"
#include "imt_tls.h"

#define PROG "imload"

enum scenario { SC_DIRECT, SC_ROOM, SC_BROADCAST, SC_IDLE, SC_CHURN, SC_LOGIN };

/* Roles of a connection. */
enum { R_SEND = 1, R_RECV = 2, R_ADMIN = 4 };

/* Message body header (the rest of --size is filler). Big-endian. */
#define BODY_MAGIC 0x494d4c44u /* "IMLD" */
#define BODY_HDR 32            /* magic u32, sender u32, seq u64, intended ns u64, 0 u64 */

typedef struct config {
    int scenario;
    struct sockaddr_in server;
    char server_str[300];
    int conns;     /* -c */
    int senders;   /* --senders */
    int receivers; /* --receivers */
    int threads;
    int source_addrs;
    double rate;       /* total messages/s (open loop); 0 = closed loop */
    uint32_t inflight; /* closed loop window per sender */
    double duration_s;
    uint64_t count; /* -n: total messages (0 = by duration) */
    size_t size;
    double warmup_s;
    double drain_s;
    int ack; /* IMP_ACK_* */
    int transient;
    uint64_t seed;
    char prefix[24];
    char room[40];
    int prepare;
    int reconnect;
    uint32_t ping_ms;
    int auth_inflight;
    const char *password; /* the load accounts' password */
    size_t password_len;
    const char *admin_user; /* broadcast sender (-u) */
    const char *admin_password;
    size_t admin_password_len;
    int quiet, verbose;
    int quiet_progress; /* --procs: only worker process 0 prints progress */
    uint32_t connect_timeout_ms;
    uint64_t coalesce_ns;
    int procs;          /* --procs: worker processes */
    uint64_t ramp_ns;   /* --ramp: connections and rate ramp up over this time */
    int proc_index;     /* this worker process (0..procs-1); -1: the parent (layout only) */
    int late_receivers; /* direct: the last N receivers connect only once sending has ended */
    /* TLS (--tls, --cafile, --insecure, --tls-name): one context per process */
    imt_tls_opts tls;
    SSL_CTX *tls_ctx;
    char host[256]; /* the host of --server (certificate name check) */
    /* --history FILE: the descriptor (O_APPEND, shared by the threads and worker processes);
     * -1 when off */
    int history_fd;
} config;

/* --history: one line per event, fields separated by one space (see imload(1)):
 *   H imload-history 1 <scenario> <ack mode>           first line of the file
 *   S <sender> <seq> <cmid> <target>                   a SEND first written
 *   R <sender> <seq> <cmid> <target>                   a SEND written again after a reconnect
 *   A <sender> <seq> <outcome> <code> <msg_id> <dup>   an ACK (outcome stored, delivered or
 *                                                      refused; code 0 and msg_id 0 when absent;
 *                                                      dup 1 when DUPLICATE was set)
 *   D <receiver> <sender> <seq> <msg_id> <dseq>        a DELIVER (sender and seq from the body
 *                                                      header; dseq is the DELIVER's SEQ)
 * <sender> is the sender's index (the number in its account name PREFIXs<i>), <seq> its
 * sequence number (1, 2, ...), <cmid> the CLIENT_MSG_ID or "-", <target> and <receiver> account
 * names. Each worker thread collects whole lines in its own buffer and appends the buffer with
 * one write(2) to the O_APPEND descriptor, so lines never interleave and the lines of one
 * connection keep their order (lines of different connections do not). */
#define HISTORY_MAGIC "H imload-history 1"

/* --check FILE...: the checker (check.c). Prints the summary line on out and the first
 * anomalies on err; returns 0 (no anomaly), 1 (anomalies) or 2 (unreadable or malformed). */
int check_main(int nfiles, char *const *files, FILE *out, FILE *err);

/* Counters of one worker (merged into a total). */
typedef struct counters {
    uint64_t sent, acked, refused, delivered, duplicated, reordered;
    uint64_t delivered_measured; /* deliveries of messages intended after the warm-up */
    uint64_t conn_errors, proto_errors, auth_errors;
    uint64_t connects, logins, reconnects;
    uint64_t pings, pongs, cycles;
    uint64_t ack_outstanding; /* sent, not yet acked (ack modes stored/delivered) */
} counters;

/* A sender -> receiver pair with lost, duplicated or reordered messages (the first
 * ANOMALY_MAX are kept, for the report). */
#define ANOMALY_MAX 100
typedef struct anomaly {
    char sender[48], receiver[48];
    uint64_t lost, duplicated, reordered;
} anomaly;

/* The run's phases, set by the main thread and read by the workers. */
enum phase { PH_SETUP, PH_RUN, PH_DRAIN, PH_STOP };

struct worker;

typedef struct shared {
    const config *cfg;
    volatile int phase;       /* enum phase (accessed with __atomic builtins) */
    uint64_t t0_ns;           /* start of the run (schedule origin) */
    uint64_t setup_start_ns;  /* --ramp: connections open evenly from here */
    uint64_t measure_from_ns; /* end of the warm-up */
    uint64_t send_until_ns;   /* no message is intended at or after this */
    int nconns;               /* all connections */
    int nsenders, nreceivers; /* sender and receiver indexes */
    int fanout;               /* expected receivers per message */
    int setup_want;           /* connections of this process that connect before the run */
    uint64_t local_count;     /* -n: the messages of the senders of this process */
    char agent[80];           /* the server's WELCOME AGENT */
    int agent_set;
    anomaly anomalies[ANOMALY_MAX]; /* filled by engine_lost */
    int nanomalies;
    struct worker **workers;
    int nworkers;
} shared;

/* Per-thread state (engine.c). */
typedef struct worker worker;

worker *worker_new(shared *sh, int id);
void worker_free(worker *w);
/* Thread body: runs until the phase is PH_STOP. */
void *worker_main(void *arg);
/* Published counters (relaxed reads from another thread). */
void worker_snapshot(worker *w, counters *out, int *ready, int *dead);
/* After the thread ended. */
const counters *worker_counters(const worker *w);
const hist *worker_hist_ack(const worker *w);
const hist *worker_hist_e2e(const worker *w);
/* Correctness after the run: lost deliveries, counted from the senders' acked sets and the
 * receivers' delivered sets of all workers. */
uint64_t engine_lost(shared *sh, uint64_t *unconfirmed);
/* A run that only registers the accounts (--prepare). 0 or an exit status. */
void engine_set_prepare(shared *sh, int on);
/* Lay out the scenario's connections over the workers (sh->workers must exist). */
int engine_setup(shared *sh);
/* Every connection idle again (a run after the --prepare run). */
void engine_reset(shared *sh);
void engine_teardown(void);
/* Open loop: messages that were due before send_end_ns (and the end of the schedule) but never
 * written: imload (or the connection) fell behind the schedule. */
uint64_t engine_unsent(shared *sh, uint64_t send_end_ns);

int sink_main(const char *listen_addr, int quiet);

uint64_t now_ns(void);

#endif
