/* Unit tests for the syncer (syncer.h): the group commit's fsync on its own thread. A request
 * for batch gen is answered by one fdatasync and a wake; poll reports the highest batch done
 * and the failures (a descriptor that cannot be synced); free syncs what was asked; checkpoints
 * of a real WAL database run on the syncer's own connection. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <fcntl.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "files.h"
#include "syncer.h"

typedef struct waker {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int wakes;
} waker;

static void on_wake(void *ud)
{
    waker *w = ud;
    pthread_mutex_lock(&w->mu);
    w->wakes++;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

static void waker_init(waker *w)
{
    memset(w, 0, sizeof *w);
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cv, NULL);
}

static void waker_done(waker *w)
{
    pthread_cond_destroy(&w->cv);
    pthread_mutex_destroy(&w->mu);
}

/* Polls until gen is done (each poll after a wake), at most 10 s; returns the failures seen. */
static int wait_done(ims_syncer *sy, waker *w, uint64_t gen)
{
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    dl.tv_sec += 10;
    int failures = 0;
    for (;;) {
        uint64_t done = 0;
        failures += ims_syncer_poll(sy, &done);
        if (done >= gen)
            return failures;
        pthread_mutex_lock(&w->mu);
        int seen = w->wakes;
        int rc = 0;
        while (w->wakes == seen && rc == 0)
            rc = pthread_cond_timedwait(&w->cv, &w->mu, &dl);
        pthread_mutex_unlock(&w->mu);
        assert_int_equal(rc, 0); /* no wake within 10 s */
    }
}

static void test_request_poll(void **state)
{
    (void)state;
    char dir[64] = "/tmp/imd-syncer-XXXXXX", path[128];
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/f", dir);
    int fd = open(path, O_RDWR | O_CREAT, 0600);
    assert_true(fd >= 0);
    waker w;
    waker_init(&w);
    char err[256];
    ims_syncer *sy = ims_syncer_new(fd, NULL, on_wake, &w, err, sizeof err);
    assert_non_null(sy);
    uint64_t done = 99;
    assert_int_equal(ims_syncer_poll(sy, &done), 0);
    assert_int_equal(done, 0); /* nothing asked, nothing done */
    assert_int_equal(write(fd, "abc", 3), 3);
    ims_syncer_request(sy, 1);
    assert_int_equal(wait_done(sy, &w, 1), 0);
    /* several requests while one runs: answered up to the newest */
    for (uint64_t g = 2; g <= 50; g++) {
        assert_int_equal(write(fd, "x", 1), 1);
        ims_syncer_request(sy, g);
    }
    ims_syncer_request(sy, 7); /* older than asked: nothing new */
    assert_int_equal(wait_done(sy, &w, 50), 0);
    uint64_t syncs = 0, ckpts = 9, frames = 9;
    ims_syncer_stats(sy, &syncs, &ckpts, &frames);
    assert_true(syncs >= 2 && syncs <= 50); /* at least the first and the last, never one more */
    assert_int_equal(ckpts, 0);             /* no database: no checkpoints */
    /* free after a request: it is synced before the thread stops */
    ims_syncer_request(sy, 51);
    ims_syncer_free(sy);
    close(fd);
    waker_done(&w);
    tf_rm_tree(dir);
}

static void test_failure_reported(void **state)
{
    (void)state;
    int p[2];
    assert_int_equal(pipe(p), 0); /* fdatasync on a pipe fails (EINVAL) */
    waker w;
    waker_init(&w);
    char err[256];
    ims_syncer *sy = ims_syncer_new(p[1], NULL, on_wake, &w, err, sizeof err);
    assert_non_null(sy);
    ims_syncer_request(sy, 3);
    assert_true(wait_done(sy, &w, 3) >= 1);
    uint64_t done = 0;
    assert_int_equal(ims_syncer_poll(sy, &done), 0); /* reported once */
    assert_int_equal(done, 3);
    ims_syncer_free(sy);
    close(p[0]);
    close(p[1]);
    waker_done(&w);
}

static void test_bad_arguments(void **state)
{
    (void)state;
    char err[256] = "";
    waker w;
    waker_init(&w);
    assert_null(ims_syncer_new(-1, NULL, on_wake, &w, err, sizeof err));
    assert_true(strlen(err) > 0);
    err[0] = '\0';
    assert_null(ims_syncer_new(2, NULL, NULL, &w, err, sizeof err));
    assert_true(strlen(err) > 0);
    ims_syncer_free(NULL);
    waker_done(&w);
}

static void exec(sqlite3 *db, const char *sql)
{
    char *msg = NULL;
    int rc = sqlite3_exec(db, sql, NULL, NULL, &msg);
    if (rc != SQLITE_OK)
        fprintf(stderr, "%s: %s\n", sql, msg ? msg : "?");
    sqlite3_free(msg);
    assert_int_equal(rc, SQLITE_OK);
}

/* A WAL database written by another connection (the loop's), never checkpointed by it: the
 * syncer's connection checkpoints it (PASSIVE) after a sync, IMS_SYNCER_CKPT_MS apart. */
static void test_checkpoints(void **state)
{
    (void)state;
    char dir[64] = "/tmp/imd-syncer-XXXXXX", path[128], wal[140];
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/s.db", dir);
    snprintf(wal, sizeof wal, "%s-wal", path);
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    exec(db, "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;"
             "PRAGMA wal_autocheckpoint = 0; CREATE TABLE t(x)");
    int fd = open(wal, O_RDWR);
    assert_true(fd >= 0);
    waker w;
    waker_init(&w);
    char err[256];
    ims_syncer *sy = ims_syncer_new(fd, path, on_wake, &w, err, sizeof err);
    assert_non_null(sy);
    uint64_t syncs = 0, ckpts = 0, frames = 0;
    struct timespec t0, now;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    uint64_t g = 0;
    do {
        exec(db, "INSERT INTO t VALUES (randomblob(3000))");
        ims_syncer_request(sy, ++g);
        assert_int_equal(wait_done(sy, &w, g), 0);
        struct timespec d = {0, 20 * 1000 * 1000};
        nanosleep(&d, NULL);
        ims_syncer_stats(sy, &syncs, &ckpts, &frames);
        clock_gettime(CLOCK_MONOTONIC, &now);
    } while (ckpts == 0 && now.tv_sec - t0.tv_sec < 10);
    assert_true(ckpts >= 1);
    assert_true(frames >= 1); /* the log held the inserts' frames */
    ims_syncer_free(sy);
    /* the checkpointed rows are in the database file: readable, intact */
    sqlite3_stmt *q = NULL;
    assert_int_equal(sqlite3_prepare_v2(db, "SELECT count(*) FROM t", -1, &q, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(q), SQLITE_ROW);
    assert_int_equal(sqlite3_column_int64(q, 0), (int64_t)g);
    sqlite3_finalize(q);
    sqlite3_close(db);
    close(fd);
    waker_done(&w);
    tf_rm_tree(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_request_poll),
        cmocka_unit_test(test_failure_reported),
        cmocka_unit_test(test_bad_arguments),
        cmocka_unit_test(test_checkpoints),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
