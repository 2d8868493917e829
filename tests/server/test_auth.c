/* Unit tests for server/auth.c: the Argon2id hashing pool (worker threads, bounded queue,
 * completion list drained by ims_auth_poll, the wake hook), the dummy hash for unknown users,
 * rehashing when the parameters changed, the synchronous mode and ims_auth_hash_now.
 *
 * Everything runs on real libsodium. Most tests use the smallest parameters libsodium allows
 * so that they stay fast (also under valgrind); one test uses the defaults and prints how long
 * one hash takes on this machine. Nothing here depends on timing: where a test needs a job to
 * be held back, the single worker is parked inside the wake hook (it calls the hook after it
 * has finished a job, so a parked worker takes no new jobs), which makes the queue contents
 * exact.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <sodium.h>

#include "auth.h"
#include "hash_arena.h"
#include "imp/errors.h"

/* Small parameters: t=1, m=64 KiB (libsodium's minimum is 8 KiB). */
#define T_OPS 1u
#define T_MEM ((size_t)64 * 1024)

/* Upper bound for any wait in these tests (a hang becomes a failure, never a timing test). */
#define WAIT_LIMIT_S 120

static const uint8_t k_pw[] = "correct horse battery staple";
#define K_PW_LEN (sizeof k_pw - 1)
static const uint8_t k_wrong[] = "correct horse battery stapler";
#define K_WRONG_LEN (sizeof k_wrong - 1)

/* ---- the wake hook: counts calls, records the thread, can park the worker ----------------- */

typedef struct gate {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int calls;      /* wake calls so far */
    int park;       /* 1: the next wake calls wait until released */
    int parked;     /* a worker is waiting inside wake */
    pthread_t last; /* thread of the last wake call */
} gate;

static void gate_init(gate *g)
{
    memset(g, 0, sizeof *g);
    assert_int_equal(pthread_mutex_init(&g->mu, NULL), 0);
    assert_int_equal(pthread_cond_init(&g->cv, NULL), 0);
}

static void gate_destroy(gate *g)
{
    pthread_cond_destroy(&g->cv);
    pthread_mutex_destroy(&g->mu);
}

static void gate_wake(void *ud)
{
    gate *g = ud;
    pthread_mutex_lock(&g->mu);
    g->calls++;
    g->last = pthread_self();
    pthread_cond_broadcast(&g->cv);
    if (g->park) {
        g->parked = 1;
        pthread_cond_broadcast(&g->cv);
        while (g->park)
            pthread_cond_wait(&g->cv, &g->mu);
        g->parked = 0;
    }
    pthread_mutex_unlock(&g->mu);
}

static struct timespec deadline(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += WAIT_LIMIT_S;
    return ts;
}

/* Waits (bounded) under g->mu until cond(g) holds; fails the test on the time limit. */
static void gate_wait(gate *g, int (*cond)(const gate *g, int arg), int arg)
{
    struct timespec ts = deadline();
    pthread_mutex_lock(&g->mu);
    while (!cond(g, arg)) {
        int rc = pthread_cond_timedwait(&g->cv, &g->mu, &ts);
        if (rc == ETIMEDOUT && !cond(g, arg)) {
            pthread_mutex_unlock(&g->mu);
            fail_msg("gave up waiting after %d s", WAIT_LIMIT_S);
        }
    }
    pthread_mutex_unlock(&g->mu);
}

static int cond_calls_above(const gate *g, int n)
{
    return g->calls > n;
}

static int cond_parked(const gate *g, int unused)
{
    (void)unused;
    return g->parked;
}

static int gate_calls(gate *g)
{
    pthread_mutex_lock(&g->mu);
    int n = g->calls;
    pthread_mutex_unlock(&g->mu);
    return n;
}

static void gate_set_park(gate *g, int park)
{
    pthread_mutex_lock(&g->mu);
    g->park = park;
    pthread_cond_broadcast(&g->cv);
    pthread_mutex_unlock(&g->mu);
}

/* ---- result collection ---------------------------------------------------------------------- */

#define MAX_RESULTS 64

typedef struct results {
    int n;
    ims_auth_result r[MAX_RESULTS];
} results;

static void collect_cb(void *ud, const ims_auth_result *r)
{
    results *rs = ud;
    assert_true(rs->n < MAX_RESULTS);
    rs->r[rs->n++] = *r;
}

/* Polls until rs holds `want` results, sleeping on the wake hook in between. */
static void collect(ims_auth *a, gate *g, results *rs, int want)
{
    while (rs->n < want) {
        int calls = gate_calls(g);
        int got = ims_auth_poll(a, collect_cb, rs);
        assert_true(got >= 0);
        if (rs->n >= want)
            break;
        /* A result added after this poll's drain finds the list empty and calls wake. */
        gate_wait(g, cond_calls_above, calls);
    }
    assert_int_equal(rs->n, want);
}

static const ims_auth_result *find_cookie(const results *rs, uint64_t cookie)
{
    const ims_auth_result *found = NULL;
    for (int i = 0; i < rs->n; i++) {
        if (rs->r[i].cookie == cookie) {
            assert_null(found); /* every cookie exactly once */
            found = &rs->r[i];
        }
    }
    assert_non_null(found);
    return found;
}

static void small_options(ims_auth_options *o, int threads, int queue_max, gate *g)
{
    ims_auth_options_default(o);
    o->threads = threads;
    o->queue_max = queue_max;
    o->opslimit = T_OPS;
    o->memlimit = T_MEM;
    o->wake = g ? gate_wake : NULL;
    o->wake_ud = g;
}

/* Makes a hash with the small parameters and the given opslimit, without the pool. */
static void make_hash(uint64_t ops, const uint8_t *pw, size_t len, char out[IMS_HASH_MAX])
{
    ims_auth_options o;
    small_options(&o, 0, 1, NULL);
    o.opslimit = ops;
    assert_int_equal(ims_auth_hash_now(&o, pw, len, out), IMP_ERR_NONE);
}

/* ---- tests ------------------------------------------------------------------------------------
 */

static void test_options_default(void **state)
{
    (void)state;
    ims_auth_options o;
    memset(&o, 0x5a, sizeof o);
    ims_auth_options_default(&o);
    assert_int_equal(o.threads, 2);
    assert_int_equal(o.queue_max, 64);
    assert_int_equal(o.opslimit, 2);
    assert_int_equal(o.memlimit, (size_t)19 * 1024 * 1024);
    assert_null(o.wake);
    assert_null(o.wake_ud);
}

static void test_new_rejects_bad_options(void **state)
{
    (void)state;
    ims_auth_options o;

    small_options(&o, -1, 4, NULL);
    assert_null(ims_auth_new(&o));
    small_options(&o, 1000000, 4, NULL);
    assert_null(ims_auth_new(&o));
    small_options(&o, 1, 0, NULL);
    assert_null(ims_auth_new(&o));
    small_options(&o, 1, -3, NULL);
    assert_null(ims_auth_new(&o));
    small_options(&o, 1, 4, NULL);
    o.opslimit = 0;
    assert_null(ims_auth_new(&o));
    small_options(&o, 1, 4, NULL);
    o.memlimit = 1024; /* below crypto_pwhash_MEMLIMIT_MIN */
    assert_null(ims_auth_new(&o));

    ims_auth_free(NULL); /* harmless */
}

static void test_submit_rejects_bad_arguments(void **state)
{
    (void)state;
    ims_auth_options o;
    small_options(&o, 0, 4, NULL);
    ims_auth *a = ims_auth_new(&o);
    assert_non_null(a);

    char long_hash[IMS_HASH_MAX + 10];
    memset(long_hash, 'x', sizeof long_hash - 1);
    long_hash[sizeof long_hash - 1] = '\0';
    static uint8_t big[IMS_AUTH_PASSWORD_MAX + 1];

    assert_int_equal(ims_auth_submit(NULL, IMS_AUTH_HASH, 1, 0, k_pw, K_PW_LEN, NULL),
                     IMP_ERR_INVAL);
    assert_int_equal(ims_auth_submit(a, (ims_auth_kind)0, 1, 0, k_pw, K_PW_LEN, NULL),
                     IMP_ERR_INVAL);
    assert_int_equal(ims_auth_submit(a, (ims_auth_kind)3, 1, 0, k_pw, K_PW_LEN, NULL),
                     IMP_ERR_INVAL);
    assert_int_equal(ims_auth_submit(a, IMS_AUTH_HASH, 1, 0, NULL, 5, NULL), IMP_ERR_INVAL);
    assert_int_equal(ims_auth_submit(a, IMS_AUTH_HASH, 1, 0, big, sizeof big, NULL), IMP_ERR_INVAL);
    assert_int_equal(ims_auth_submit(a, IMS_AUTH_VERIFY, 1, 0, k_pw, K_PW_LEN, long_hash),
                     IMP_ERR_INVAL);
    assert_int_equal(ims_auth_pending(a), 0);
    assert_int_equal(ims_auth_poll(a, collect_cb, NULL), 0);
    assert_int_equal(ims_auth_poll(NULL, collect_cb, NULL), IMP_ERR_INVAL);
    assert_int_equal(ims_auth_pending(NULL), 0);

    /* The longest accepted password and an empty one are fine. */
    results rs = {0};
    assert_int_equal(ims_auth_submit(a, IMS_AUTH_HASH, 7, 0, big, sizeof big - 1, NULL), 0);
    assert_int_equal(ims_auth_submit(a, IMS_AUTH_HASH, 8, 0, NULL, 0, NULL), 0);
    assert_int_equal(ims_auth_poll(a, collect_cb, &rs), 2);
    assert_int_equal(rs.r[0].ok, 1);
    assert_int_equal(rs.r[1].ok, 1);
    assert_int_equal(crypto_pwhash_str_verify(rs.r[0].hash, (const char *)big, sizeof big - 1), 0);
    assert_int_equal(crypto_pwhash_str_verify(rs.r[1].hash, "", 0), 0);

    ims_auth_free(a);
}

static void test_hash_then_verify(void **state)
{
    (void)state;
    gate g;
    gate_init(&g);
    ims_auth_options o;
    small_options(&o, 2, 8, &g);
    ims_auth *a = ims_auth_new(&o);
    assert_non_null(a);

    results rs = {0};
    assert_int_equal(ims_auth_submit(a, IMS_AUTH_HASH, 1, 41, k_pw, K_PW_LEN, NULL), 0);
    collect(a, &g, &rs, 1);
    const ims_auth_result *h = &rs.r[0];
    assert_int_equal(h->cookie, 1);
    assert_int_equal(h->kind, IMS_AUTH_HASH);
    assert_int_equal(h->ok, 1);
    assert_int_equal(h->user_id, 41);
    assert_true(h->seconds >= 0.0);
    assert_true(strncmp(h->hash, "$argon2id$v=19$m=64,t=1,p=1$", 28) == 0);
    assert_true(strlen(h->hash) < IMS_HASH_MAX);
    /* libsodium itself agrees. */
    assert_int_equal(crypto_pwhash_str_verify(h->hash, (const char *)k_pw, K_PW_LEN), 0);
    char stored[IMS_HASH_MAX];
    memcpy(stored, h->hash, IMS_HASH_MAX);

    assert_int_equal(ims_auth_submit(a, IMS_AUTH_VERIFY, 2, 41, k_pw, K_PW_LEN, stored), 0);
    assert_int_equal(ims_auth_submit(a, IMS_AUTH_VERIFY, 3, 41, k_wrong, K_WRONG_LEN, stored), 0);
    assert_int_equal(ims_auth_submit(a, IMS_AUTH_VERIFY, 4, 41, k_pw, K_PW_LEN - 1, stored), 0);
    collect(a, &g, &rs, 4);

    const ims_auth_result *right = find_cookie(&rs, 2);
    assert_int_equal(right->kind, IMS_AUTH_VERIFY);
    assert_int_equal(right->ok, 1);
    assert_int_equal(right->needs_rehash, 0);
    assert_int_equal(right->user_id, 41);
    assert_string_equal(right->hash, "");
    const ims_auth_result *wrong = find_cookie(&rs, 3);
    assert_int_equal(wrong->ok, 0);
    assert_int_equal(wrong->needs_rehash, 0);
    assert_int_equal(find_cookie(&rs, 4)->ok, 0); /* a prefix of the password */

    assert_int_equal(ims_auth_pending(a), 0);
    ims_auth_free(a);
    gate_destroy(&g);
}

static void test_unknown_user_uses_dummy(void **state)
{
    (void)state;
    ims_auth_options o;
    small_options(&o, 0, 4, NULL);
    ims_auth *a = ims_auth_new(&o);
    assert_non_null(a);

    results rs = {0};
    assert_int_equal(ims_auth_submit(a, IMS_AUTH_VERIFY, 10, -1, k_pw, K_PW_LEN, NULL), 0);
    assert_int_equal(ims_auth_submit(a, IMS_AUTH_VERIFY, 11, -1, k_pw, K_PW_LEN, ""), 0);
    assert_int_equal(ims_auth_submit(a, IMS_AUTH_VERIFY, 12, -1, NULL, 0, NULL), 0);
    /* A malformed stored hash is a failure, not a crash. */
    assert_int_equal(ims_auth_submit(a, IMS_AUTH_VERIFY, 13, 5, k_pw, K_PW_LEN, "$argon2id$x"), 0);
    assert_int_equal(ims_auth_poll(a, collect_cb, &rs), 4);
    for (int i = 0; i < 4; i++) {
        assert_int_equal(rs.r[i].cookie, 10 + (uint64_t)i); /* in submission order */
        assert_int_equal(rs.r[i].kind, IMS_AUTH_VERIFY);
        assert_int_equal(rs.r[i].ok, 0);
        assert_int_equal(rs.r[i].needs_rehash, 0);
        assert_string_equal(rs.r[i].hash, "");
        assert_true(rs.r[i].seconds >= 0.0);
    }
    ims_auth_free(a);
}

static void test_needs_rehash(void **state)
{
    (void)state;
    char old_t3[IMS_HASH_MAX];
    make_hash(3, k_pw, K_PW_LEN, old_t3);
    assert_non_null(strstr(old_t3, ",t=3,"));
    char same[IMS_HASH_MAX];
    make_hash(2, k_pw, K_PW_LEN, same);

    /* An Argon2i hash (older algorithm) must be upgraded too. */
    char argon2i[IMS_HASH_MAX];
    assert_int_equal(crypto_pwhash_argon2i_str(argon2i, (const char *)k_pw, K_PW_LEN, 3, T_MEM), 0);

    ims_auth_options o;
    small_options(&o, 0, 8, NULL);
    o.opslimit = 2;
    ims_auth *a = ims_auth_new(&o);
    assert_non_null(a);

    results rs = {0};
    assert_int_equal(ims_auth_submit(a, IMS_AUTH_VERIFY, 1, 9, k_pw, K_PW_LEN, old_t3), 0);
    assert_int_equal(ims_auth_submit(a, IMS_AUTH_VERIFY, 2, 9, k_wrong, K_WRONG_LEN, old_t3), 0);
    assert_int_equal(ims_auth_submit(a, IMS_AUTH_VERIFY, 3, 9, k_pw, K_PW_LEN, same), 0);
    assert_int_equal(ims_auth_submit(a, IMS_AUTH_VERIFY, 4, 9, k_pw, K_PW_LEN, argon2i), 0);
    assert_int_equal(ims_auth_poll(a, collect_cb, &rs), 4);

    const ims_auth_result *r = find_cookie(&rs, 1);
    assert_int_equal(r->ok, 1);
    assert_int_equal(r->needs_rehash, 1);
    assert_non_null(strstr(r->hash, "$argon2id$v=19$m=64,t=2,p=1$"));
    assert_int_equal(crypto_pwhash_str_verify(r->hash, (const char *)k_pw, K_PW_LEN), 0);
    assert_int_equal(crypto_pwhash_str_needs_rehash(r->hash, 2, T_MEM), 0);

    r = find_cookie(&rs, 2); /* wrong password: no rehash */
    assert_int_equal(r->ok, 0);
    assert_int_equal(r->needs_rehash, 0);
    assert_string_equal(r->hash, "");

    r = find_cookie(&rs, 3); /* our parameters already */
    assert_int_equal(r->ok, 1);
    assert_int_equal(r->needs_rehash, 0);
    assert_string_equal(r->hash, "");

    r = find_cookie(&rs, 4);
    assert_int_equal(r->ok, 1);
    assert_int_equal(r->needs_rehash, 1);
    assert_true(strncmp(r->hash, "$argon2id$", 10) == 0);
    assert_int_equal(crypto_pwhash_str_verify(r->hash, (const char *)k_pw, K_PW_LEN), 0);

    ims_auth_free(a);

    /* Argon2i with exactly the pool's t and m: the algorithm alone makes it rehash. */
    o.opslimit = 3;
    a = ims_auth_new(&o);
    assert_non_null(a);
    rs.n = 0;
    assert_int_equal(ims_auth_submit(a, IMS_AUTH_VERIFY, 5, 9, k_pw, K_PW_LEN, argon2i), 0);
    assert_int_equal(ims_auth_poll(a, collect_cb, &rs), 1);
    assert_int_equal(rs.r[0].ok, 1);
    assert_int_equal(rs.r[0].needs_rehash, 1);
    assert_true(strncmp(rs.r[0].hash, "$argon2id$v=19$m=64,t=3,p=1$", 28) == 0);
    assert_int_equal(crypto_pwhash_str_verify(rs.r[0].hash, (const char *)k_pw, K_PW_LEN), 0);
    ims_auth_free(a);
}

static void test_busy_when_queue_full(void **state)
{
    (void)state;
    gate g;
    gate_init(&g);
    ims_auth_options o;
    small_options(&o, 1, 2, &g);
    ims_auth *a = ims_auth_new(&o);
    assert_non_null(a);

    /* Park the only worker in the wake hook after its first job. */
    gate_set_park(&g, 1);
    assert_int_equal(ims_auth_submit(a, IMS_AUTH_HASH, 1, 0, k_pw, K_PW_LEN, NULL), 0);
    gate_wait(&g, cond_parked, 0);
    assert_int_equal(ims_auth_pending(a), 0); /* a finished job no longer counts */
    results rs = {0};
    assert_int_equal(ims_auth_poll(a, collect_cb, &rs), 1);
    assert_int_equal(rs.r[0].cookie, 1);

    /* Two jobs wait; the third and fourth are refused at once. */
    assert_int_equal(ims_auth_submit(a, IMS_AUTH_HASH, 2, 0, k_pw, K_PW_LEN, NULL), 0);
    assert_int_equal(ims_auth_pending(a), 1);
    assert_int_equal(ims_auth_submit(a, IMS_AUTH_VERIFY, 3, 0, k_pw, K_PW_LEN, NULL), 0);
    assert_int_equal(ims_auth_pending(a), 2);
    assert_int_equal(ims_auth_submit(a, IMS_AUTH_HASH, 4, 0, k_pw, K_PW_LEN, NULL), IMP_ERR_BUSY);
    assert_int_equal(ims_auth_submit(a, IMS_AUTH_VERIFY, 5, 0, k_pw, K_PW_LEN, ""), IMP_ERR_BUSY);
    assert_int_equal(ims_auth_pending(a), 2);

    gate_set_park(&g, 0);
    collect(a, &g, &rs, 3);
    find_cookie(&rs, 2);
    find_cookie(&rs, 3);
    assert_int_equal(ims_auth_pending(a), 0);
    /* Nothing of the refused jobs ever comes back. */
    assert_int_equal(ims_auth_poll(a, collect_cb, &rs), 0);
    assert_int_equal(rs.n, 3);

    /* Room again once the queue drained. */
    assert_int_equal(ims_auth_submit(a, IMS_AUTH_HASH, 6, 0, k_pw, K_PW_LEN, NULL), 0);
    collect(a, &g, &rs, 4);
    assert_int_equal(rs.r[3].cookie, 6);

    ims_auth_free(a);
    gate_destroy(&g);
}

static void test_password_is_copied(void **state)
{
    (void)state;
    gate g;
    gate_init(&g);
    ims_auth_options o;
    small_options(&o, 1, 4, &g);
    ims_auth *a = ims_auth_new(&o);
    assert_non_null(a);

    char stored[IMS_HASH_MAX];
    make_hash(T_OPS, k_pw, K_PW_LEN, stored);

    gate_set_park(&g, 1);
    assert_int_equal(ims_auth_submit(a, IMS_AUTH_HASH, 1, 0, k_pw, K_PW_LEN, NULL), 0);
    gate_wait(&g, cond_parked, 0);

    /* The worker is parked: the job below cannot start before the buffers are clobbered. */
    uint8_t buf[sizeof k_pw];
    char hash_copy[IMS_HASH_MAX];
    memcpy(buf, k_pw, sizeof k_pw);
    memcpy(hash_copy, stored, sizeof stored);
    assert_int_equal(ims_auth_submit(a, IMS_AUTH_VERIFY, 2, 0, buf, K_PW_LEN, hash_copy), 0);
    memset(buf, 'z', sizeof buf);
    memset(hash_copy, 0, sizeof hash_copy);

    gate_set_park(&g, 0);
    results rs = {0};
    collect(a, &g, &rs, 2);
    assert_int_equal(find_cookie(&rs, 2)->ok, 1);

    ims_auth_free(a);
    gate_destroy(&g);
}

static void test_wake_and_poll_threaded(void **state)
{
    (void)state;
    gate g;
    gate_init(&g);
    ims_auth_options o;
    small_options(&o, 3, MAX_RESULTS, &g);
    ims_auth *a = ims_auth_new(&o);
    assert_non_null(a);

    char stored[IMS_HASH_MAX];
    make_hash(T_OPS, k_pw, K_PW_LEN, stored);

    enum { N = 24 };
    for (int i = 0; i < N; i++) {
        uint64_t cookie = 1000 + (uint64_t)i;
        int rc;
        if (i % 3 == 0)
            rc = ims_auth_submit(a, IMS_AUTH_HASH, cookie, i, k_pw, K_PW_LEN, NULL);
        else if (i % 3 == 1)
            rc = ims_auth_submit(a, IMS_AUTH_VERIFY, cookie, i, k_pw, K_PW_LEN, stored);
        else
            rc = ims_auth_submit(a, IMS_AUTH_VERIFY, cookie, i, k_wrong, K_WRONG_LEN, stored);
        assert_int_equal(rc, 0);
    }
    results rs = {0};
    collect(a, &g, &rs, N);
    for (int i = 0; i < N; i++) {
        const ims_auth_result *r = find_cookie(&rs, 1000 + (uint64_t)i);
        assert_int_equal(r->user_id, i);
        assert_int_equal(r->kind, i % 3 == 0 ? IMS_AUTH_HASH : IMS_AUTH_VERIFY);
        assert_int_equal(r->ok, i % 3 != 2);
        if (i % 3 == 0)
            assert_int_equal(crypto_pwhash_str_verify(r->hash, (const char *)k_pw, K_PW_LEN), 0);
    }
    /* wake ran on a worker, not on this thread, and at most once per result. */
    int calls = gate_calls(&g);
    assert_true(calls >= 1 && calls <= N);
    pthread_mutex_lock(&g.mu);
    assert_false(pthread_equal(g.last, pthread_self()));
    pthread_mutex_unlock(&g.mu);
    assert_int_equal(ims_auth_poll(a, collect_cb, &rs), 0);

    ims_auth_free(a);
    gate_destroy(&g);
}

static void test_running_max(void **state)
{
    (void)state;
    /* The high-water mark of jobs running at once: 0 before any job, never above the number of
     * workers however many jobs wait, at least 1 once a job ran; 1 in the synchronous mode. */
    gate g;
    gate_init(&g);
    ims_auth_options o;
    small_options(&o, 2, MAX_RESULTS, &g);
    ims_auth *a = ims_auth_new(&o);
    assert_non_null(a);
    assert_int_equal(ims_auth_running_max(a), 0);
    enum { N = 40 };
    for (int i = 0; i < N; i++)
        assert_int_equal(
            ims_auth_submit(a, IMS_AUTH_HASH, 1 + (uint64_t)i, 0, k_pw, K_PW_LEN, NULL), 0);
    results rs = {0};
    collect(a, &g, &rs, N);
    int mx = ims_auth_running_max(a);
    assert_true(mx >= 1 && mx <= 2);
    assert_int_equal(ims_auth_pending(a), 0);
    ims_auth_free(a);
    gate_destroy(&g);

    gate_init(&g);
    small_options(&o, 0, 4, &g);
    a = ims_auth_new(&o);
    assert_non_null(a);
    assert_int_equal(ims_auth_running_max(a), 0);
    assert_int_equal(ims_auth_submit(a, IMS_AUTH_HASH, 1, 0, k_pw, K_PW_LEN, NULL), 0);
    assert_int_equal(ims_auth_submit(a, IMS_AUTH_VERIFY, 2, 0, k_pw, K_PW_LEN, ""), 0);
    assert_int_equal(ims_auth_running_max(a), 1);
    rs.n = 0;
    assert_int_equal(ims_auth_poll(a, collect_cb, &rs), 2);
    assert_int_equal(ims_auth_running_max(NULL), 0);
    ims_auth_free(a);
    gate_destroy(&g);
}

static void test_sync_mode(void **state)
{
    (void)state;
    gate g;
    gate_init(&g);
    ims_auth_options o;
    small_options(&o, 0, 4, &g);
    ims_auth *a = ims_auth_new(&o);
    assert_non_null(a);

    results rs = {0};
    assert_int_equal(ims_auth_submit(a, IMS_AUTH_HASH, 1, 0, k_pw, K_PW_LEN, NULL), 0);
    /* Done inside submit, delivered only by poll; wake once for the empty -> non-empty edge. */
    assert_int_equal(rs.n, 0);
    assert_int_equal(ims_auth_pending(a), 0);
    assert_int_equal(gate_calls(&g), 1);
    assert_true(pthread_equal(g.last, pthread_self()));
    assert_int_equal(ims_auth_submit(a, IMS_AUTH_HASH, 2, 0, k_wrong, K_WRONG_LEN, NULL), 0);
    assert_int_equal(gate_calls(&g), 1); /* the list was not empty */

    /* queue_max bounds waiting + running jobs only: finished results do not count. */
    for (uint64_t c = 3; c <= 8; c++)
        assert_int_equal(ims_auth_submit(a, IMS_AUTH_VERIFY, c, 0, k_pw, K_PW_LEN, NULL), 0);
    assert_int_equal(gate_calls(&g), 1);

    assert_int_equal(ims_auth_poll(a, collect_cb, &rs), 8);
    for (int i = 0; i < 8; i++)
        assert_int_equal(rs.r[i].cookie, (uint64_t)i + 1);
    assert_int_equal(crypto_pwhash_str_verify(rs.r[0].hash, (const char *)k_pw, K_PW_LEN), 0);
    assert_int_equal(crypto_pwhash_str_verify(rs.r[1].hash, (const char *)k_wrong, K_WRONG_LEN), 0);
    assert_int_equal(ims_auth_poll(a, collect_cb, &rs), 0);

    assert_int_equal(ims_auth_submit(a, IMS_AUTH_HASH, 9, 0, k_pw, K_PW_LEN, NULL), 0);
    assert_int_equal(gate_calls(&g), 2);
    assert_int_equal(ims_auth_poll(a, collect_cb, &rs), 1);
    assert_int_equal(rs.r[8].cookie, 9);

    /* No wake hook at all is fine too. */
    ims_auth_free(a);
    small_options(&o, 0, 4, NULL);
    a = ims_auth_new(&o);
    assert_non_null(a);
    assert_int_equal(ims_auth_submit(a, IMS_AUTH_HASH, 10, 0, k_pw, K_PW_LEN, NULL), 0);
    assert_int_equal(ims_auth_poll(a, collect_cb, &rs), 1);
    ims_auth_free(a);
    gate_destroy(&g);
}

/* A result callback that submits again (the loop answers one job by queueing another). */
typedef struct resubmit {
    ims_auth *a;
    int seen;
} resubmit;

static void resubmit_cb(void *ud, const ims_auth_result *r)
{
    resubmit *s = ud;
    s->seen++;
    if (r->cookie == 1)
        assert_int_equal(ims_auth_submit(s->a, IMS_AUTH_HASH, 2, 0, k_pw, K_PW_LEN, NULL), 0);
}

static void test_poll_callback_may_submit(void **state)
{
    (void)state;
    ims_auth_options o;
    small_options(&o, 0, 1, NULL);
    ims_auth *a = ims_auth_new(&o);
    assert_non_null(a);
    resubmit s = {a, 0};
    assert_int_equal(ims_auth_submit(a, IMS_AUTH_HASH, 1, 0, k_pw, K_PW_LEN, NULL), 0);
    assert_int_equal(ims_auth_poll(a, resubmit_cb, &s), 1);
    assert_int_equal(s.seen, 1);
    assert_int_equal(ims_auth_poll(a, resubmit_cb, &s), 1);
    assert_int_equal(s.seen, 2);
    ims_auth_free(a);
}

static void test_free_with_jobs_pending(void **state)
{
    (void)state;
    gate g;
    gate_init(&g);
    ims_auth_options o;
    small_options(&o, 1, 16, &g);
    ims_auth *a = ims_auth_new(&o);
    assert_non_null(a);

    gate_set_park(&g, 1);
    assert_int_equal(ims_auth_submit(a, IMS_AUTH_HASH, 1, 0, k_pw, K_PW_LEN, NULL), 0);
    gate_wait(&g, cond_parked, 0);
    /* Result 1 stays unpolled; 15 jobs wait behind the parked worker. */
    for (uint64_t c = 2; c <= 16; c++)
        assert_int_equal(
            ims_auth_submit(a, c % 2 ? IMS_AUTH_HASH : IMS_AUTH_VERIFY, c, 0, k_pw, K_PW_LEN, NULL),
            0);
    assert_int_equal(ims_auth_pending(a), 15);
    gate_set_park(&g, 0);
    /* Whatever the worker managed to run, nothing leaks or crashes (ASan, valgrind). */
    ims_auth_free(a);
    gate_destroy(&g);

    /* Freeing right after submitting, with several workers busy. */
    small_options(&o, 2, 16, NULL);
    a = ims_auth_new(&o);
    assert_non_null(a);
    for (uint64_t c = 1; c <= 16; c++)
        assert_int_equal(ims_auth_submit(a, IMS_AUTH_HASH, c, 0, k_pw, K_PW_LEN, NULL), 0);
    ims_auth_free(a);

    /* And with no jobs at all. */
    a = ims_auth_new(&o);
    assert_non_null(a);
    ims_auth_free(a);
}

static void test_hash_now(void **state)
{
    (void)state;
    char out[IMS_HASH_MAX];
    ims_auth_options o;
    small_options(&o, 0, 1, NULL);

    assert_int_equal(ims_auth_hash_now(&o, k_pw, K_PW_LEN, out), 0);
    assert_true(strncmp(out, "$argon2id$v=19$m=64,t=1,p=1$", 28) == 0);
    assert_int_equal(crypto_pwhash_str_verify(out, (const char *)k_pw, K_PW_LEN), 0);
    assert_int_equal(crypto_pwhash_str_verify(out, (const char *)k_wrong, K_WRONG_LEN), -1);

    char out2[IMS_HASH_MAX];
    assert_int_equal(ims_auth_hash_now(&o, k_pw, K_PW_LEN, out2), 0);
    assert_string_not_equal(out, out2); /* fresh salt */

    static uint8_t big[IMS_AUTH_PASSWORD_MAX + 1];
    assert_int_equal(ims_auth_hash_now(&o, NULL, 3, out), IMP_ERR_INVAL);
    assert_int_equal(ims_auth_hash_now(&o, k_pw, K_PW_LEN, NULL), IMP_ERR_INVAL);
    assert_int_equal(ims_auth_hash_now(&o, big, sizeof big, out), IMP_ERR_INVAL);
    o.opslimit = 0;
    assert_int_equal(ims_auth_hash_now(&o, k_pw, K_PW_LEN, out), IMP_ERR_INVAL);
    small_options(&o, 0, 1, NULL);
    o.memlimit = 100;
    assert_int_equal(ims_auth_hash_now(&o, k_pw, K_PW_LEN, out), IMP_ERR_INVAL);
}

static double mono_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* The real parameters: t=2, m=19 MiB. Prints the time per hash (no assertion on it). */
static void test_default_parameters(void **state)
{
    (void)state;
    char out[IMS_HASH_MAX];
    double t0 = mono_now();
    assert_int_equal(ims_auth_hash_now(NULL, k_pw, K_PW_LEN, out), 0);
    double t1 = mono_now();
    assert_true(strncmp(out, "$argon2id$v=19$m=19456,t=2,p=1$", 31) == 0);

    gate g;
    gate_init(&g);
    ims_auth_options o;
    ims_auth_options_default(&o);
    o.wake = gate_wake;
    o.wake_ud = &g;
    ims_auth *a = ims_auth_new(&o);
    assert_non_null(a);
    assert_int_equal(ims_auth_submit(a, IMS_AUTH_VERIFY, 1, 0, k_pw, K_PW_LEN, out), 0);
    assert_int_equal(ims_auth_submit(a, IMS_AUTH_VERIFY, 2, 0, k_pw, K_PW_LEN, NULL), 0);
    assert_int_equal(ims_auth_submit(a, IMS_AUTH_HASH, 3, 0, k_pw, K_PW_LEN, NULL), 0);
    results rs = {0};
    collect(a, &g, &rs, 3);
    const ims_auth_result *known = find_cookie(&rs, 1);
    const ims_auth_result *unknown = find_cookie(&rs, 2);
    const ims_auth_result *hashed = find_cookie(&rs, 3);
    assert_int_equal(known->ok, 1);
    assert_int_equal(known->needs_rehash, 0);
    assert_int_equal(unknown->ok, 0);
    assert_int_equal(hashed->ok, 1);
    assert_int_equal(crypto_pwhash_str_needs_rehash(hashed->hash, 2, (size_t)19 << 20), 0);
    print_message("argon2id t=2 m=19 MiB: hash_now %.3f s; pool: verify known %.3f s, "
                  "verify unknown (dummy) %.3f s, hash %.3f s\n",
                  t1 - t0, known->seconds, unknown->seconds, hashed->seconds);
    ims_auth_free(a);
    gate_destroy(&g);
}

/* ---- the workers' hash arena (hash_arena.h): kept while busy, released when idle ------------ */

#define ARENA_MEM ((size_t)2 << 20) /* above the arena's 1 MiB threshold */

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static void test_worker_region_released_when_idle(void **state)
{
    (void)state;
    if (!ims_hash_arena_available()) {
        print_message("hash arena interposition compiled out (sanitizer or platform build): "
                      "skipped\n");
        skip();
    }
    long live0 = ims_hash_arena_live();
    gate g;
    gate_init(&g);
    ims_auth_options o;
    small_options(&o, 1, 8, &g);
    o.memlimit = ARENA_MEM;
    ims_auth *a = ims_auth_new(&o);
    assert_non_null(a);
    assert_int_equal(ims_hash_arena_live(), live0); /* the dummy hash is not armed */

    assert_int_equal(ims_auth_submit(a, IMS_AUTH_HASH, 1, 0, k_pw, K_PW_LEN, NULL), 0);
    assert_int_equal(ims_auth_submit(a, IMS_AUTH_HASH, 2, 0, k_pw, K_PW_LEN, NULL), 0);
    results rs = {0};
    collect(a, &g, &rs, 2);
    double t_done = mono_now();
    long live1 = ims_hash_arena_live();
    double seen = mono_now() - t_done;
    assert_true(live1 == live0 || live1 == live0 + 1);
    if (seen < 0.5) /* well before the idle release: the worker still holds its region */
        assert_int_equal(live1, live0 + 1);
    char h[IMS_HASH_MAX];
    memcpy(h, find_cookie(&rs, 1)->hash, sizeof h);

    while (ims_hash_arena_live() != live0 && mono_now() - t_done < WAIT_LIMIT_S)
        sleep_ms(10);
    double released = mono_now() - t_done;
    assert_int_equal(ims_hash_arena_live(), live0);
    print_message("worker region released %.2f s after the queue went idle\n", released);

    /* after the release the worker maps again, and hashes as before */
    rs.n = 0;
    assert_int_equal(ims_auth_submit(a, IMS_AUTH_VERIFY, 3, 0, k_pw, K_PW_LEN, h), 0);
    collect(a, &g, &rs, 1);
    assert_int_equal(rs.r[0].ok, 1);
    long live2 = ims_hash_arena_live();
    assert_true(live2 == live0 || live2 == live0 + 1);
    /* freeing the pool releases what its workers hold */
    ims_auth_free(a);
    assert_int_equal(ims_hash_arena_live(), live0);
    gate_destroy(&g);
}

static void test_sync_mode_uses_no_region(void **state)
{
    (void)state;
    long live0 = ims_hash_arena_live();
    ims_auth_options o;
    small_options(&o, 0, 4, NULL);
    o.memlimit = ARENA_MEM;
    ims_auth *a = ims_auth_new(&o);
    assert_non_null(a);
    assert_int_equal(ims_auth_submit(a, IMS_AUTH_HASH, 1, 0, k_pw, K_PW_LEN, NULL), 0);
    results rs = {0};
    assert_int_equal(ims_auth_poll(a, collect_cb, &rs), 1);
    assert_int_equal(rs.r[0].ok, 1);
    ims_hash_arena_info i;
    ims_hash_arena_info_get(&i);
    assert_null(i.base); /* the submitting (loop) thread keeps nothing */
    assert_int_equal(i.armed, 0);
    assert_int_equal(ims_hash_arena_live(), live0);
    ims_auth_free(a);
}

/* ---- the event-loop lag probe ---------------------------------------------------------------- */

/* This thread plays the event loop: it serves the probe's wake-ups by calling ims_auth_poll.
 * Served at once, probes are counted; a loop blocked for 100 ms after a wake-up shows a lag of
 * at least 100 ms (a lower bound: never a timing assumption), and meanwhile the probe does not
 * pile up wake-ups. */
static void test_loop_probe(void **state)
{
    (void)state;
    gate g;
    gate_init(&g);
    ims_auth_options o;
    small_options(&o, 1, 4, &g);
    ims_auth *a = ims_auth_new(&o);
    assert_non_null(a);
    ims_loop_lag l;
    memset(&l, 0xa5, sizeof l);
    ims_auth_loop_lag(a, &l);
    assert_int_equal(l.probes, 0);
    assert_int_equal(l.max_us, 0);
    assert_int_equal(l.over_1ms + l.over_10ms + l.over_50ms, 0);
    assert_int_equal(gate_calls(&g), 0); /* no probe thread yet: no wake-up */

    assert_int_equal(ims_auth_loop_probe(a, 10), 0);
    for (int i = 0; i < 5; i++) {
        gate_wait(&g, cond_calls_above, i);
        assert_int_equal(ims_auth_poll(a, NULL, NULL), 0); /* no job results, just the probe */
    }
    ims_auth_loop_lag(a, &l);
    assert_int_equal(l.probes, 5);
    assert_true(l.total_us <= 5 * l.max_us);
    assert_true(l.over_50ms <= l.over_10ms && l.over_10ms <= l.over_1ms && l.over_1ms <= 5);

    /* the loop is blocked for 100 ms right after a wake-up */
    int calls = gate_calls(&g);
    gate_wait(&g, cond_calls_above, calls);
    calls = gate_calls(&g);
    sleep_ms(100);
    assert_int_equal(gate_calls(&g), calls); /* one outstanding probe, one wake-up */
    ims_auth_poll(a, NULL, NULL);
    ims_loop_lag m;
    ims_auth_loop_lag(a, &m);
    assert_int_equal(m.probes, l.probes + 1);
    assert_true(m.max_us >= 100000);
    assert_true(m.wake_max_us <= m.max_us);
    assert_true(m.serve_max_us >= 100000); /* the wake-up call came before the 100 ms */
    assert_int_equal(m.over_50ms, l.over_50ms + 1);
    assert_int_equal(m.over_10ms, l.over_10ms + 1);
    assert_int_equal(m.over_1ms, l.over_1ms + 1);
    assert_true(m.total_us >= l.total_us + 100000);
    /* a poll with no probe outstanding counts nothing */
    ims_auth_loop_lag(a, &l);
    ims_auth_poll(a, NULL, NULL);
    ims_auth_loop_lag(a, &m);
    assert_true(m.probes <= l.probes + 1);

    ims_auth_free(a); /* stops the probe thread */
    gate_destroy(&g);
}

static void test_loop_probe_off(void **state)
{
    (void)state;
    gate g;
    gate_init(&g);
    ims_auth_options o;
    small_options(&o, 1, 4, &g);
    ims_auth *a = ims_auth_new(&o);
    assert_non_null(a);
    assert_int_equal(ims_auth_loop_probe(a, 0), 0); /* off */
    sleep_ms(30);
    assert_int_equal(gate_calls(&g), 0);
    ims_auth_poll(a, NULL, NULL);
    ims_loop_lag l;
    ims_auth_loop_lag(a, &l);
    assert_int_equal(l.probes, 0);
    assert_int_equal(ims_auth_loop_probe(a, 10), 0);
    assert_int_equal(ims_auth_loop_probe(a, 10), IMP_ERR_INVAL); /* once */
    ims_auth_free(a);
    gate_destroy(&g);
    /* no wake hook (the synchronous pool of the unit tests and the fuzzer): nothing to wake */
    small_options(&o, 0, 4, NULL);
    a = ims_auth_new(&o);
    assert_non_null(a);
    assert_int_equal(ims_auth_loop_probe(a, 10), IMP_ERR_INVAL);
    ims_auth_free(a);
    assert_int_equal(ims_auth_loop_probe(NULL, 10), IMP_ERR_INVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_options_default),
        cmocka_unit_test(test_new_rejects_bad_options),
        cmocka_unit_test(test_submit_rejects_bad_arguments),
        cmocka_unit_test(test_hash_then_verify),
        cmocka_unit_test(test_unknown_user_uses_dummy),
        cmocka_unit_test(test_needs_rehash),
        cmocka_unit_test(test_busy_when_queue_full),
        cmocka_unit_test(test_password_is_copied),
        cmocka_unit_test(test_wake_and_poll_threaded),
        cmocka_unit_test(test_running_max),
        cmocka_unit_test(test_sync_mode),
        cmocka_unit_test(test_poll_callback_may_submit),
        cmocka_unit_test(test_free_with_jobs_pending),
        cmocka_unit_test(test_hash_now),
        cmocka_unit_test(test_default_parameters),
        cmocka_unit_test(test_worker_region_released_when_idle),
        cmocka_unit_test(test_sync_mode_uses_no_region),
        cmocka_unit_test(test_loop_probe),
        cmocka_unit_test(test_loop_probe_off),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
