/* imd — password hashing off the event loop, and login throttling.
 *
 * Hashing (Argon2id through libsodium's crypto_pwhash_str, OWASP minimum t=2, m=19 MiB by
 * default) runs on worker threads fed by a bounded queue. A job that does not fit is refused at
 * once (IMP_ERR_BUSY, the server answers ERROR BUSY with RETRY_AFTER). Results come back on the
 * event-loop thread: the pool holds a completion queue that ims_auth_poll() drains, and calls
 * the `wake` hook (from a worker thread) whenever it adds to an empty completion queue — the
 * network layer makes that an event_active() on the loop. No libevent here, so the core can be
 * unit-tested and fuzzed with a synchronous pool (threads = 0: jobs run inside submit and their
 * results wait for the next poll).
 *
 * Unknown users are verified against a dummy hash made at start with the same parameters, so
 * that "no such user" and "wrong password" take the same time and give the same error
 * (AUTH_FAILED).
 */
#ifndef IMS_AUTH_H
#define IMS_AUTH_H

#include <stddef.h>
#include <stdint.h>

#define IMS_HASH_MAX 128 /* >= crypto_pwhash_STRBYTES */
/* Longest password the pool takes (the wire limit of PASSWORD, SPEC.md); longer is INVAL. */
#define IMS_AUTH_PASSWORD_MAX 1024

typedef struct ims_auth ims_auth;

typedef struct ims_auth_options {
    int threads;            /* worker threads; 0 = run jobs synchronously inside submit */
    int queue_max;          /* jobs waiting or running at most; more are refused with BUSY */
    uint64_t opslimit;      /* Argon2id t (default 2) */
    size_t memlimit;        /* Argon2id m in bytes (default 19 MiB) */
    void (*wake)(void *ud); /* called from a worker when results are ready; may be NULL */
    void *wake_ud;
} ims_auth_options;

void ims_auth_options_default(ims_auth_options *o);

/* NULL on failure (sodium_init, threads, bad options: threads outside 0..256, queue_max < 1,
 * opslimit/memlimit outside libsodium's Argon2id range); o NULL means the defaults. */
ims_auth *ims_auth_new(const ims_auth_options *o);
/* Stops the workers; pending jobs are dropped without callback. */
void ims_auth_free(ims_auth *a);

typedef enum ims_auth_kind {
    IMS_AUTH_HASH = 1, /* hash password -> hash */
    IMS_AUTH_VERIFY    /* verify password against hash (dummy hash when hash is "") */
} ims_auth_kind;

typedef struct ims_auth_result {
    uint64_t cookie; /* the submitter's cookie, e.g. a connection id */
    ims_auth_kind kind;
    int ok;                  /* VERIFY: 1 password matches; HASH: 1 hashed */
    int needs_rehash;        /* VERIFY with ok: the hash's parameters differ from ours */
    char hash[IMS_HASH_MAX]; /* HASH: the new hash; VERIFY with needs_rehash: a new hash of
                                the same password with our parameters */
    int64_t user_id;         /* passed through */
    double seconds;          /* time the job took on its worker */
} ims_auth_result;

/* Queues a job. password is copied (and wiped after use). hash may be NULL or "" for VERIFY
 * (then the dummy hash is used and ok is 0). Returns 0, or IMP_ERR_BUSY when the queue is full,
 * IMP_ERR_INVAL for a bad argument. */
int ims_auth_submit(ims_auth *a, ims_auth_kind kind, uint64_t cookie, int64_t user_id,
                    const uint8_t *password, size_t password_len, const char *hash);

/* Takes finished jobs on the calling (loop) thread: calls cb for each, returns how many. */
int ims_auth_poll(ims_auth *a, void (*cb)(void *ud, const ims_auth_result *r), void *ud);

/* Jobs queued or running now; the configured maximum. (Metrics.) */
int ims_auth_pending(const ims_auth *a);
/* The most jobs (hashes or verifications) that were running at the same moment since the pool
 * was made: a high-water mark, at most the number of threads (1 in the synchronous mode);
 * 0 before the first job. (Metrics: STATS hash_running_max; tests.) */
int ims_auth_running_max(const ims_auth *a);

/* ---- the event loop's lag probe (loop_probe_ms) -------------------------------------------- */

/* How late the event loop serves a wake-up (the idea of Redis's latency monitor and its
 * intrinsic-latency check, here as a periodic probe): a thread marks a due time every period_ms
 * (an absolute schedule on the monotonic clock) and calls the wake hook, the same wake-up the
 * workers' results use; the next ims_auth_poll on the loop records now - due. One probe is
 * outstanding at most: a stalled loop gets one wake-up, and its lag grows until served. The lag
 * covers the probe thread's own wake-up, the loop thread's (run queue) and whatever the loop did
 * meanwhile; wake_max_us says how much of the worst one was the probe thread's. */
typedef struct ims_loop_lag {
    uint64_t probes;       /* probes served */
    uint64_t total_us;     /* sum of their lags */
    uint64_t max_us;       /* the worst lag since the start */
    uint64_t wake_max_us;  /* of the worst: from due to the probe thread's wake-up call */
    uint64_t serve_max_us; /* the worst from a wake-up call to the loop serving it (any probe):
                            * the loop's own part, what a client's PING meets */
    uint64_t over_1ms, over_10ms, over_50ms; /* probes served later than that */
} ims_loop_lag;

/* Starts the probe thread (period_ms 0: off, returns 0). IMP_ERR_INVAL without a wake hook, when
 * already started, or when the thread cannot start. */
int ims_auth_loop_probe(ims_auth *a, uint32_t period_ms);
/* A copy of the lag counters (zeros when never started). On the loop's thread (the one that
 * calls ims_auth_poll): the counters are its own, kept without a lock. */
void ims_auth_loop_lag(const ims_auth *a, ims_loop_lag *out);

/* ---- the event loop's scheduling (loop_priority, busy_poll_us) ------------------------------ */

/* loop_priority: how the event-loop thread is scheduled against the hash workers, the fsync
 * thread and other processes. IMS_LOOP_PRIO_NORMAL leaves it as it is (the workers still run at
 * nice +5); HIGH sets the calling thread's nice value to IMS_LOOP_HIGH_NICE; REALTIME makes it
 * SCHED_FIFO at priority 1 (the lowest real-time priority, above every normal thread) so that a
 * wake-up preempts a hashing worker at once. Both need root or CAP_SYS_NICE (HIGH also works within
 * RLIMIT_NICE). Only the calling thread changes: threads it starts later would inherit the policy,
 * so main.c calls this after every helper thread has started (right before the loop). */
typedef enum ims_loop_prio {
    IMS_LOOP_PRIO_NORMAL = 0,
    IMS_LOOP_PRIO_HIGH,
    IMS_LOOP_PRIO_REALTIME
} ims_loop_prio;

#define IMS_LOOP_HIGH_NICE (-10)

/* "normal", "high", "realtime" (as config.c stores them, lower case); -1 for anything else. */
int ims_loop_prio_parse(const char *s);
/* Applies prio to the calling thread. 0 on success (NORMAL: nothing to do), else the errno of
 * the refusal (EPERM without the privilege; ENOSYS off Linux); the thread is then unchanged.
 * what (may be NULL) gets a description for the log: "SCHED_FIFO priority 1", "nice -10". */
int ims_loop_set_priority(ims_loop_prio prio, char *what, size_t whatlen);

/* busy_poll_us: after a turn of the loop that did I/O, poll (without sleeping) for up to that
 * long before blocking, and again for as long after each poll that found more I/O. A message
 * that arrives meanwhile is served without the sleep/wake-up of the loop thread (on a VM an
 * idle virtual CPU's wake-up alone costs tens of microseconds). The idea of Linux's
 * SO_BUSY_POLL / net.core.busy_poll and of DPDK-style polling; here the decision only. The loop
 * (main.c) counts its I/O with any counter that grows with each read or write:
 *
 *     ims_busy_poll bp;  ims_busy_poll_init(&bp, us);
 *     loop: block for one turn;  poll = ims_busy_poll_start(&bp, now_ns, io);
 *           while (poll) { one non-blocking turn;  poll = ims_busy_poll_again(&bp, now_ns, io); }
 *
 * A window of 0 never polls. A turn without I/O (a timer, a probe) does not start polling. */
typedef struct ims_busy_poll {
    uint64_t window_ns;
    uint64_t until_ns; /* polling stops at this time unless more I/O is seen */
    uint64_t io;       /* the I/O counter at the last look */
    uint64_t polls;    /* windows started */
    uint64_t hits;     /* polls that found I/O (each extends its window) */
} ims_busy_poll;

void ims_busy_poll_init(ims_busy_poll *bp, uint32_t window_us);
/* After a blocking turn: 1 to poll (the turn did I/O), 0 to block again. */
int ims_busy_poll_start(ims_busy_poll *bp, uint64_t now_ns, uint64_t io);
/* After a non-blocking turn: 1 to poll again (the window is not over, or this turn did I/O:
 * the window restarts from now), 0 to block. */
int ims_busy_poll_again(ims_busy_poll *bp, uint64_t now_ns, uint64_t io);

/* Synchronous helpers for `imd user add|passwd` (not for the event loop). */
int ims_auth_hash_now(const ims_auth_options *o, const uint8_t *pw, size_t len,
                      char out[IMS_HASH_MAX]);

/* ---- throttling (per address: temporary ban; per account: backoff) ------------------------ */

typedef struct ims_throttle ims_throttle;

typedef struct ims_throttle_options {
    int addr_max_failures; /* failures from one address within addr_window_ms -> ban */
    uint32_t addr_window_ms;
    uint32_t addr_ban_ms;
    int user_free_failures;       /* failures of one account before backoff starts */
    uint32_t user_backoff_ms;     /* first backoff, doubled per further failure */
    uint32_t user_backoff_max_ms; /* cap */
    size_t max_entries;           /* memory bound: oldest entries evicted */
} ims_throttle_options;

/* Defaults: 10 failures in 60 s -> 300 s ban; 3 free failures, then 1 s doubling to 60 s;
 * 100000 entries. The address window is sliding (exact: the last addr_max_failures failure
 * times are kept, so memory is about max_entries * (8 * addr_max_failures + 100) bytes at
 * worst); a ban uses up the failures that caused it; a success does not clear an address.
 * addr_max_failures 0 turns bans off, user_backoff_ms 0 turns backoff off. */
void ims_throttle_options_default(ims_throttle_options *o);
/* NULL for bad options (max_entries 0, addr_max_failures outside 0..1000, addr_window_ms 0
 * with bans on, user_free_failures < 0) or no memory; o NULL means the defaults. */
ims_throttle *ims_throttle_new(const ims_throttle_options *o);
void ims_throttle_free(ims_throttle *t);

/* Before a login attempt: 0 allowed; IMP_ERR_BANNED (address banned) or IMP_ERR_AUTH_BACKOFF
 * (account backing off), with *retry_after_ms set. addr is a printable address key; user the
 * folded name (may be NULL for REGISTER). */
int ims_throttle_check(ims_throttle *t, const char *addr, const char *user, uint64_t now_ms,
                       uint32_t *retry_after_ms);
/* After an attempt: ok = 1 success (clears the account's failures), 0 failure. */
void ims_throttle_record(ims_throttle *t, const char *addr, const char *user, int ok,
                         uint64_t now_ms);
/* Addresses and accounts tracked now (at most max_entries). (Metrics, tests.) */
size_t ims_throttle_entries(const ims_throttle *t);

#endif
