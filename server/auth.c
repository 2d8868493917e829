/* imd — the password hashing pool (see auth.h).
 *
 * One mutex guards the job queue, the completion list and the counters. A job is one
 * allocation: the result it will deliver, a copy of the stored hash and the password (wiped as
 * soon as the hash function is done with it, and on every path that frees an unrun job). The
 * same node moves from the job queue to the completion list, so a worker never allocates and a
 * finished job can never be lost for want of memory.
 *
 * `pending` counts jobs waiting or running; submit refuses with IMP_ERR_BUSY when it reaches
 * queue_max. Finished results do not count: the loop drains them with ims_auth_poll().
 * `running` counts jobs between their start on a worker and their completion, and
 * `running_max` keeps its high-water mark (STATS hash_running_max).
 *
 * Workers hash with their thread's hash arena armed (hash_arena.h): libsodium's 19 MiB Argon2
 * mapping is then reused from one hash to the next instead of being mapped, faulted in and
 * unmapped every time (about half of a hash's cost on the CI VM, see hash_arena.c). A worker
 * releases its region when the queue has been empty for IMS_AUTH_IDLE_RELEASE_MS, and before
 * it exits, so an idle imd does not keep threads x memlimit bytes. The synchronous mode
 * (threads = 0) and ims_auth_hash_now run on the caller's thread and do not arm.
 *
 * Workers also run at a lower priority (nice +IMS_AUTH_WORKER_NICE) than the event-loop thread,
 * so that on a busy machine the loop gets the CPU first when both are runnable: a hash waits a
 * little, a PING does not.
 *
 * The pool also hosts the event loop's lag probe (loop_probe_ms, ims_auth_loop_probe): a thread
 * of its own that wakes the loop through the same hook on a fixed schedule; the loop measures
 * how late it got there. It shares no lock with the loop or the workers.
 *
 * And the event loop's own scheduling helpers (auth.h): loop_priority (ims_loop_set_priority)
 * and the busy-poll decision of busy_poll_us (ims_busy_poll; the loop itself is in main.c).
 * Measured for issue 14 (2 CPUs, shared): with 10,000 logins the loop's stalls over 10 ms were
 * it waiting for a CPU after its bursts of work (EEVDF lag) behind the nice +5 workers and
 * other processes, 57-182 ms at worst; a SCHED_FIFO loop (loop_priority = realtime) had none
 * (worst 3.9 and 5.2 ms) in the same runs, once main.c grew the descriptor table at start (its
 * growth under threads blocked even a real-time loop 106-191 ms in accept, waiting for RCU).
 * Nice values alone cannot give that: see lower_priority.
 */
#include "auth.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifdef __linux__
#include <sched.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include <sodium.h>

#include "hash_arena.h"
#include "imp/errors.h"

#define IMS_AUTH_THREADS_MAX 256

/* A worker gives its hash arena back after the queue has been empty this long. One second, not
 * more: `bench/run-imd idle` samples imd's RSS 2 s after the last registration, and two 8 MiB
 * regions still mapped then would count ~1.6 KiB per connection against its 1 KiB budget. */
#define IMS_AUTH_IDLE_RELEASE_MS 1000
/* Workers' nice value relative to the loop thread (Linux: per thread). */
#define IMS_AUTH_WORKER_NICE 5

typedef struct ims_auth_job {
    struct ims_auth_job *next;
    ims_auth_result res;
    char stored[IMS_HASH_MAX]; /* VERIFY: the hash to check; "" = the dummy */
    size_t pw_len;
    uint8_t pw[]; /* pw_len bytes, wiped after use */
} ims_auth_job;

struct ims_auth {
    ims_auth_options opt;
    pthread_mutex_t mu;
    pthread_cond_t cv; /* workers wait here for jobs or stop */
    ims_auth_job *q_head, *q_tail;
    ims_auth_job *done_head, *done_tail;
    int pending;     /* waiting + running */
    int running;     /* running on a worker (or inside submit, synchronous mode) */
    int running_max; /* high-water mark of running */
    int stopping;
    int n_threads; /* started */
    pthread_t *threads;
    char dummy[IMS_HASH_MAX];
    /* The loop-lag probe (auth.h). It shares no lock with the loop or the workers (a lock
     * held by a preempted thread would show as lag that is not the loop's): its thread sleeps
     * on probe_mu/probe_cv (only ims_auth_free takes them too, to stop it); the outstanding
     * probe is handed over in atomics (only the probe thread sets due, only the loop clears
     * it); lag is the loop's alone (ims_auth_poll and ims_auth_loop_lag, on the loop). */
    pthread_mutex_t probe_mu;
    pthread_cond_t probe_cv;
    int probe_stop;
    pthread_t probe;
    int probe_started;
    uint32_t probe_ms;
    _Atomic uint64_t probe_due_ns; /* the outstanding probe's due time; 0: none */
    _Atomic uint64_t probe_woke_ns;
    ims_loop_lag lag;
};

void ims_auth_options_default(ims_auth_options *o)
{
    if (!o)
        return;
    memset(o, 0, sizeof *o);
    o->threads = 2;
    o->queue_max = 64;
    o->opslimit = 2;
    o->memlimit = (size_t)19 * 1024 * 1024;
    o->wake = NULL;
    o->wake_ud = NULL;
}

static int params_ok(uint64_t ops, size_t mem)
{
    return ops >= crypto_pwhash_argon2id_OPSLIMIT_MIN &&
           ops <= crypto_pwhash_argon2id_OPSLIMIT_MAX &&
           mem >= crypto_pwhash_argon2id_MEMLIMIT_MIN && mem <= crypto_pwhash_argon2id_MEMLIMIT_MAX;
}

static int make_hash(char out[IMS_HASH_MAX], const uint8_t *pw, size_t len, uint64_t ops,
                     size_t mem)
{
    /* libsodium reads nothing for a zero length, but wants a valid pointer. */
    static const uint8_t empty[1];
    const char *p = (const char *)(pw ? pw : empty);
    if (crypto_pwhash_str_alg(out, p, len, ops, mem, crypto_pwhash_ALG_ARGON2ID13) != 0) {
        out[0] = '\0';
        return IMP_ERR_NOMEM; /* the only failure for valid parameters: no memory */
    }
    return IMP_ERR_NONE;
}

static uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static double mono_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Runs one job (no lock held): fills job->res and wipes the password. */
static void run_job(const ims_auth *a, ims_auth_job *job)
{
    ims_auth_result *r = &job->res;
    double t0 = mono_seconds();
    if (r->kind == IMS_AUTH_HASH) {
        r->ok = make_hash(r->hash, job->pw, job->pw_len, a->opt.opslimit, a->opt.memlimit) ==
                IMP_ERR_NONE;
    } else {
        static const uint8_t empty[1];
        const char *p = (const char *)(job->pw_len ? job->pw : empty);
        int dummy = job->stored[0] == '\0';
        const char *h = dummy ? a->dummy : job->stored;
        int match = crypto_pwhash_str_verify(h, p, job->pw_len) == 0;
        r->ok = match && !dummy;
        /* Any other algorithm or parameters (also Argon2i, or garbage that somehow verified)
         * is upgraded: the Argon2id check answers -1 for a string that is not Argon2id. */
        if (r->ok &&
            crypto_pwhash_argon2id_str_needs_rehash(h, a->opt.opslimit, a->opt.memlimit) != 0) {
            r->needs_rehash = make_hash(r->hash, job->pw, job->pw_len, a->opt.opslimit,
                                        a->opt.memlimit) == IMP_ERR_NONE;
        }
    }
    sodium_memzero(job->pw, job->pw_len);
    r->seconds = mono_seconds() - t0;
}

static void free_job(ims_auth_job *job)
{
    sodium_memzero(job->pw, job->pw_len);
    free(job);
}

/* Puts a finished job on the completion list; calls wake when the list was empty. */
static void complete(ims_auth *a, ims_auth_job *job)
{
    pthread_mutex_lock(&a->mu);
    a->pending--;
    a->running--;
    int was_empty = a->done_head == NULL;
    job->next = NULL;
    if (a->done_tail)
        a->done_tail->next = job;
    else
        a->done_head = job;
    a->done_tail = job;
    pthread_mutex_unlock(&a->mu);
    if (was_empty && a->opt.wake)
        a->opt.wake(a->opt.wake_ud);
}

/* A job starts running (lock held): counts it for the high-water mark. */
static void start_running(ims_auth *a)
{
    if (++a->running > a->running_max)
        a->running_max = a->running;
}

/* Lowers the calling worker thread's priority below the event loop's (best effort): nice
 * +IMS_AUTH_WORKER_NICE for this thread only. Measured for issue 3 on the 2-CPU VM (shared with
 * other work, whose noise was larger than the differences): with nice +5 the loop's wake-up
 * p99 and the login bench's pong p99 were lower (median of the runs) than with no change,
 * SCHED_BATCH, or both.
 *
 * Measured again with the loop-lag probe (10 ms) in `bench/run-imd login`, the variants
 * switching every 2 s inside each run so that the other work on the shared VM (27-63 % of the
 * CPUs) hit them alike. SCHED_IDLE workers against nice +5, 3 runs alternating 2 ways: probes
 * served more than 10 ms late 64/110, 7/22, 13/23, mean lag 2.48/3.22, 0.44/0.70, 0.36/0.81 ms;
 * but 3 runs alternating 4 ways gave 19/20, 10/11, 30/26 and 3.33/1.31, 0.51/0.49, 1.24/0.85
 * ms, and 3 runs back to back per binary gave no better PONG delays (worst 635/178/912 ms
 * against 138/76/585 ms, other work 49-55 % against 15-55 %): not adopted, nothing shown. A
 * 100 us EEVDF slice for the loop thread (sched_setattr sched_runtime, Linux >= 6.12) raised
 * the loop's mean lag in all 3 runs alternating 4 ways (1.42/2.61/1.69 ms against
 * 1.31/0.49/0.85 ms): a short slice also gets the loop's own turns preempted. The loop never
 * waited more than 1.7 ms for this pool's mutex in those runs. The stalls over 10 ms were the
 * loop thread runnable but not running (perf sched: run-queue waits up to 32 ms, its longest
 * turn 5.3 ms), the CPUs busy with the workers and other processes. */
static void lower_priority(void)
{
#ifdef __linux__
    /* On Linux, PRIO_PROCESS with a thread id sets that thread's nice value only. */
    id_t tid = (id_t)syscall(SYS_gettid);
    errno = 0;
    int cur = getpriority(PRIO_PROCESS, tid);
    if (errno == 0)
        (void)setpriority(PRIO_PROCESS, tid, cur + IMS_AUTH_WORKER_NICE);
#endif
}

static void deadline_after_ms(struct timespec *ts, long ms)
{
    clock_gettime(CLOCK_MONOTONIC, ts);
    ts->tv_sec += ms / 1000;
    ts->tv_nsec += (ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

static void *worker(void *arg)
{
    ims_auth *a = arg;
    lower_priority();
    int holding = 0; /* this thread's arena may hold a region */
    for (;;) {
        pthread_mutex_lock(&a->mu);
        int have_deadline = 0;
        struct timespec idle_until;
        while (!a->stopping && !a->q_head) {
            if (!holding) {
                pthread_cond_wait(&a->cv, &a->mu);
                continue;
            }
            if (!have_deadline) {
                deadline_after_ms(&idle_until, IMS_AUTH_IDLE_RELEASE_MS);
                have_deadline = 1;
            }
            int rc = pthread_cond_timedwait(&a->cv, &a->mu, &idle_until);
            if (rc == ETIMEDOUT && !a->stopping && !a->q_head) {
                /* Idle long enough: wipe and unmap the region (no lock held meanwhile). */
                pthread_mutex_unlock(&a->mu);
                ims_hash_arena_release();
                holding = 0;
                pthread_mutex_lock(&a->mu);
            }
        }
        if (a->stopping) {
            pthread_mutex_unlock(&a->mu);
            ims_hash_arena_release();
            return NULL;
        }
        ims_auth_job *job = a->q_head;
        a->q_head = job->next;
        if (!a->q_head)
            a->q_tail = NULL;
        start_running(a);
        pthread_mutex_unlock(&a->mu);

        ims_hash_arena_arm();
        run_job(a, job);
        ims_hash_arena_disarm();
        holding = 1;
        complete(a, job);
    }
}

static void free_list(ims_auth_job *j)
{
    while (j) {
        ims_auth_job *next = j->next;
        free_job(j);
        j = next;
    }
}

static void stop_workers(ims_auth *a)
{
    pthread_mutex_lock(&a->mu);
    a->stopping = 1;
    pthread_cond_broadcast(&a->cv);
    pthread_mutex_unlock(&a->mu);
    pthread_mutex_lock(&a->probe_mu);
    a->probe_stop = 1;
    pthread_cond_broadcast(&a->probe_cv);
    pthread_mutex_unlock(&a->probe_mu);
    for (int i = 0; i < a->n_threads; i++)
        pthread_join(a->threads[i], NULL);
    a->n_threads = 0;
    if (a->probe_started)
        pthread_join(a->probe, NULL);
    a->probe_started = 0;
}

/* ---- the loop-lag probe ---------------------------------------------------------------------- */

static struct timespec ns_to_ts(uint64_t ns)
{
    struct timespec ts;
    ts.tv_sec = (time_t)(ns / 1000000000u);
    ts.tv_nsec = (long)(ns % 1000000000u);
    return ts;
}

/* The probe thread: every probe_ms (absolute schedule; periods missed while a probe was
 * outstanding or the process was stopped are skipped), one outstanding probe and one wake-up. */
static void *prober(void *arg)
{
    ims_auth *a = arg;
#ifdef __linux__
    (void)prctl(PR_SET_TIMERSLACK, 1UL); /* wake up at the due time, not up to 50 us after */
#endif
    uint64_t period = (uint64_t)a->probe_ms * 1000000u;
    uint64_t next = mono_ns() + period;
    pthread_mutex_lock(&a->probe_mu);
    while (!a->probe_stop) {
        struct timespec ts = ns_to_ts(next);
        pthread_cond_timedwait(&a->probe_cv, &a->probe_mu, &ts);
        if (a->probe_stop)
            break;
        uint64_t now = mono_ns();
        if (now < next)
            continue; /* spurious */
        int wake = 0;
        if (atomic_load(&a->probe_due_ns) == 0) { /* the loop only clears it */
            atomic_store(&a->probe_woke_ns, now);
            atomic_store(&a->probe_due_ns, next);
            wake = 1;
        }
        next += period;
        if (next <= now)
            next = now + period;
        if (wake) {
            pthread_mutex_unlock(&a->probe_mu);
            a->opt.wake(a->opt.wake_ud);
            pthread_mutex_lock(&a->probe_mu);
        }
    }
    pthread_mutex_unlock(&a->probe_mu);
    return NULL;
}

/* On the loop (ims_auth_poll): the outstanding probe, if any, is served now. */
static void probe_served(ims_auth *a)
{
    uint64_t due = atomic_exchange(&a->probe_due_ns, 0);
    if (!due)
        return;
    uint64_t woke = atomic_load(&a->probe_woke_ns);
    uint64_t now = mono_ns();
    uint64_t lag = now > due ? (now - due) / 1000u : 0;
    ims_loop_lag *l = &a->lag;
    l->probes++;
    l->total_us += lag;
    if (lag > l->max_us) {
        l->max_us = lag;
        l->wake_max_us = woke > due ? (woke - due) / 1000u : 0;
    }
    uint64_t serve = now > woke ? (now - woke) / 1000u : 0;
    if (serve > l->serve_max_us)
        l->serve_max_us = serve;
    l->over_1ms += lag > 1000;
    l->over_10ms += lag > 10000;
    l->over_50ms += lag > 50000;
}

int ims_auth_loop_probe(ims_auth *a, uint32_t period_ms)
{
    if (!a)
        return IMP_ERR_INVAL;
    if (period_ms == 0)
        return IMP_ERR_NONE;
    if (!a->opt.wake || a->probe_started)
        return IMP_ERR_INVAL;
    a->probe_ms = period_ms;
    if (pthread_create(&a->probe, NULL, prober, a) != 0)
        return IMP_ERR_INVAL;
    a->probe_started = 1;
    return IMP_ERR_NONE;
}

void ims_auth_loop_lag(const ims_auth *a, ims_loop_lag *out)
{
    memset(out, 0, sizeof *out);
    if (a)
        *out = a->lag; /* the loop's own data */
}

/* ---- the event loop's scheduling ----------------------------------------------------------- */

int ims_loop_prio_parse(const char *s)
{
    if (!s)
        return -1;
    if (strcmp(s, "normal") == 0)
        return IMS_LOOP_PRIO_NORMAL;
    if (strcmp(s, "high") == 0)
        return IMS_LOOP_PRIO_HIGH;
    if (strcmp(s, "realtime") == 0)
        return IMS_LOOP_PRIO_REALTIME;
    return -1;
}

int ims_loop_set_priority(ims_loop_prio prio, char *what, size_t whatlen)
{
    char dummy[1];
    if (!what || whatlen == 0) {
        what = dummy;
        whatlen = sizeof dummy;
    }
    what[0] = '\0';
    switch (prio) {
    case IMS_LOOP_PRIO_NORMAL:
        snprintf(what, whatlen, "unchanged");
        return 0;
    case IMS_LOOP_PRIO_HIGH: {
        snprintf(what, whatlen, "nice %d", IMS_LOOP_HIGH_NICE);
#ifdef __linux__
        /* On Linux, PRIO_PROCESS with a thread id sets that thread's nice value only. */
        id_t tid = (id_t)syscall(SYS_gettid);
        if (setpriority(PRIO_PROCESS, tid, IMS_LOOP_HIGH_NICE) != 0)
            return errno ? errno : EPERM;
        return 0;
#else
        return ENOSYS;
#endif
    }
    case IMS_LOOP_PRIO_REALTIME: {
        snprintf(what, whatlen, "SCHED_FIFO priority 1");
#ifdef __linux__
        /* This thread only (pthread_setschedparam, not sched_setscheduler on the process).
         * Without SCHED_RESET_ON_FORK, which would also keep threads started later (the lag
         * probe's) from inheriting it; imd starts no processes. */
        struct sched_param sp;
        memset(&sp, 0, sizeof sp);
        sp.sched_priority = 1;
        int e = pthread_setschedparam(pthread_self(), SCHED_FIFO, &sp);
        return e;
#else
        return ENOSYS;
#endif
    }
    }
    return EINVAL;
}

void ims_busy_poll_init(ims_busy_poll *bp, uint32_t window_us)
{
    memset(bp, 0, sizeof *bp);
    bp->window_ns = (uint64_t)window_us * 1000u;
}

int ims_busy_poll_start(ims_busy_poll *bp, uint64_t now_ns, uint64_t io)
{
    int did_io = io != bp->io;
    bp->io = io;
    if (bp->window_ns == 0 || !did_io)
        return 0;
    bp->until_ns = now_ns + bp->window_ns;
    bp->polls++;
    return 1;
}

int ims_busy_poll_again(ims_busy_poll *bp, uint64_t now_ns, uint64_t io)
{
    if (bp->window_ns == 0)
        return 0;
    if (io != bp->io) {
        bp->io = io;
        bp->hits++;
        bp->until_ns = now_ns + bp->window_ns;
        return 1;
    }
    return now_ns < bp->until_ns;
}

ims_auth *ims_auth_new(const ims_auth_options *o)
{
    ims_auth_options def;
    if (!o) {
        ims_auth_options_default(&def);
        o = &def;
    }
    if (o->threads < 0 || o->threads > IMS_AUTH_THREADS_MAX || o->queue_max < 1 ||
        !params_ok(o->opslimit, o->memlimit))
        return NULL;
    if (sodium_init() < 0)
        return NULL;

    ims_auth *a = calloc(1, sizeof *a);
    if (!a)
        return NULL;
    a->opt = *o;
    if (pthread_mutex_init(&a->mu, NULL) != 0) {
        free(a);
        return NULL;
    }
    /* The workers' idle timeout is measured on the monotonic clock. */
    pthread_condattr_t ca;
    int cv_ok = pthread_condattr_init(&ca) == 0;
    if (cv_ok) {
        cv_ok = pthread_condattr_setclock(&ca, CLOCK_MONOTONIC) == 0 &&
                pthread_cond_init(&a->cv, &ca) == 0;
        if (cv_ok && pthread_cond_init(&a->probe_cv, &ca) != 0) {
            pthread_cond_destroy(&a->cv);
            cv_ok = 0;
        }
        if (cv_ok && pthread_mutex_init(&a->probe_mu, NULL) != 0) {
            pthread_cond_destroy(&a->probe_cv);
            pthread_cond_destroy(&a->cv);
            cv_ok = 0;
        }
        pthread_condattr_destroy(&ca);
    }
    if (!cv_ok) {
        pthread_mutex_destroy(&a->mu);
        free(a);
        return NULL;
    }

    /* The dummy: a random password nobody knows, hashed with our parameters. */
    uint8_t secret[32];
    randombytes_buf(secret, sizeof secret);
    int rc = make_hash(a->dummy, secret, sizeof secret, o->opslimit, o->memlimit);
    sodium_memzero(secret, sizeof secret);
    if (rc != IMP_ERR_NONE)
        goto fail;

    if (o->threads > 0) {
        a->threads = calloc((size_t)o->threads, sizeof *a->threads);
        if (!a->threads)
            goto fail;
        for (int i = 0; i < o->threads; i++) {
            if (pthread_create(&a->threads[i], NULL, worker, a) != 0)
                goto fail;
            a->n_threads++;
        }
    }
    return a;

fail:
    ims_auth_free(a);
    return NULL;
}

void ims_auth_free(ims_auth *a)
{
    if (!a)
        return;
    stop_workers(a);
    free_list(a->q_head);
    free_list(a->done_head);
    free(a->threads);
    pthread_cond_destroy(&a->cv);
    pthread_cond_destroy(&a->probe_cv);
    pthread_mutex_destroy(&a->mu);
    sodium_memzero(a, sizeof *a);
    free(a);
}

int ims_auth_submit(ims_auth *a, ims_auth_kind kind, uint64_t cookie, int64_t user_id,
                    const uint8_t *password, size_t password_len, const char *hash)
{
    if (!a || (kind != IMS_AUTH_HASH && kind != IMS_AUTH_VERIFY) ||
        (!password && password_len > 0) || password_len > IMS_AUTH_PASSWORD_MAX)
        return IMP_ERR_INVAL;
    size_t hash_len = 0;
    if (kind == IMS_AUTH_VERIFY && hash) {
        hash_len = strnlen(hash, IMS_HASH_MAX);
        if (hash_len >= IMS_HASH_MAX)
            return IMP_ERR_INVAL;
    }

    /* Refuse before allocating: BUSY must be cheap. Re-checked under the lock below. */
    pthread_mutex_lock(&a->mu);
    int full = a->pending >= a->opt.queue_max;
    pthread_mutex_unlock(&a->mu);
    if (full)
        return IMP_ERR_BUSY;

    ims_auth_job *job = calloc(1, sizeof *job + password_len);
    if (!job)
        return IMP_ERR_NOMEM;
    job->res.cookie = cookie;
    job->res.kind = kind;
    job->res.user_id = user_id;
    if (hash_len)
        memcpy(job->stored, hash, hash_len);
    job->pw_len = password_len;
    if (password_len)
        memcpy(job->pw, password, password_len);

    pthread_mutex_lock(&a->mu);
    if (a->pending >= a->opt.queue_max) {
        pthread_mutex_unlock(&a->mu);
        free_job(job);
        return IMP_ERR_BUSY;
    }
    a->pending++;
    if (a->n_threads > 0) {
        if (a->q_tail)
            a->q_tail->next = job;
        else
            a->q_head = job;
        a->q_tail = job;
        pthread_cond_signal(&a->cv);
    } else {
        start_running(a);
    }
    pthread_mutex_unlock(&a->mu);

    if (a->n_threads == 0) {
        run_job(a, job);
        complete(a, job);
    }
    return IMP_ERR_NONE;
}

int ims_auth_poll(ims_auth *a, void (*cb)(void *ud, const ims_auth_result *r), void *ud)
{
    if (!a)
        return IMP_ERR_INVAL;
    pthread_mutex_lock(&a->mu);
    ims_auth_job *list = a->done_head;
    a->done_head = a->done_tail = NULL;
    pthread_mutex_unlock(&a->mu);
    probe_served(a);

    int n = 0;
    while (list) {
        ims_auth_job *next = list->next;
        if (cb)
            cb(ud, &list->res);
        free_job(list);
        list = next;
        n++;
    }
    return n;
}

int ims_auth_pending(const ims_auth *a)
{
    if (!a)
        return 0;
    /* The mutex is not part of the pool's logical state. */
    pthread_mutex_t *mu = (pthread_mutex_t *)&a->mu;
    pthread_mutex_lock(mu);
    int n = a->pending;
    pthread_mutex_unlock(mu);
    return n;
}

int ims_auth_running_max(const ims_auth *a)
{
    if (!a)
        return 0;
    pthread_mutex_t *mu = (pthread_mutex_t *)&a->mu; /* as in ims_auth_pending */
    pthread_mutex_lock(mu);
    int n = a->running_max;
    pthread_mutex_unlock(mu);
    return n;
}

int ims_auth_hash_now(const ims_auth_options *o, const uint8_t *pw, size_t len,
                      char out[IMS_HASH_MAX])
{
    ims_auth_options def;
    if (!o) {
        ims_auth_options_default(&def);
        o = &def;
    }
    if (!out || (!pw && len > 0) || len > IMS_AUTH_PASSWORD_MAX ||
        !params_ok(o->opslimit, o->memlimit))
        return IMP_ERR_INVAL;
    if (sodium_init() < 0)
        return IMP_ERR_INTERNAL;
    return make_hash(out, pw, len, o->opslimit, o->memlimit);
}
