/* imd — the syncer (syncer.h). */
#define _POSIX_C_SOURCE 200809L
#include "syncer.h"

#include <errno.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "log.h"

struct ims_syncer {
    int fd;
    char *db_path;
    void (*wake)(void *ud);
    void *ud;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    /* under mu */
    uint64_t requested, done;
    int failures, stopping;
    uint64_t syncs, checkpoints, log_frames;
};

static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* The checkpoint connection: opened on this thread, used only here. */
static sqlite3 *ckpt_open(const char *path)
{
    sqlite3 *db = NULL;
    if (path == NULL || sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX,
                                        NULL) != SQLITE_OK) {
        ims_log(IMS_LOG_WARN, "checkpoint", "error=\"%s\"",
                db ? sqlite3_errmsg(db) : "cannot open the database");
        sqlite3_close(db);
        return NULL;
    }
    /* this connection never checkpoints on close (the loop's does, last) nor waits for locks */
    sqlite3_db_config(db, SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1, NULL);
    sqlite3_busy_timeout(db, 0);
    /* a connection knows the database is in WAL mode only once it has read it: before that a
     * checkpoint is a silent no-op */
    if (sqlite3_exec(db, "SELECT count(*) FROM sqlite_schema", NULL, NULL, NULL) != SQLITE_OK) {
        ims_log(IMS_LOG_WARN, "checkpoint", "error=\"%s\"", sqlite3_errmsg(db));
        sqlite3_close(db);
        return NULL;
    }
    return db;
}

static void *run(void *arg)
{
    ims_syncer *sy = arg;
    sqlite3 *db = ckpt_open(sy->db_path);
    uint64_t last_ckpt = mono_ms(), ckpt_gen = 0;
    pthread_mutex_lock(&sy->mu);
    for (;;) {
        while (!sy->stopping && sy->requested <= sy->done)
            pthread_cond_wait(&sy->cv, &sy->mu);
        if (sy->requested <= sy->done)
            break; /* stopping, nothing left */
        uint64_t gen = sy->requested;
        pthread_mutex_unlock(&sy->mu);

        int rc = fdatasync(sy->fd);
        int e = errno;

        pthread_mutex_lock(&sy->mu);
        sy->done = gen;
        sy->syncs++;
        if (rc != 0) {
            sy->failures++;
            ims_log(IMS_LOG_ERROR, "fsync_failed", "error=\"%s\"", strerror(e));
        }
        pthread_mutex_unlock(&sy->mu);
        sy->wake(sy->ud);

        /* IMS_SYNCER_CKPT_MS after the last checkpoint, if batches came in since */
        uint64_t now = mono_ms();
        if (db && rc == 0 && gen > ckpt_gen && now - last_ckpt >= IMS_SYNCER_CKPT_MS) {
            int nlog = 0, nckpt = 0;
            int r = sqlite3_wal_checkpoint_v2(db, NULL, SQLITE_CHECKPOINT_PASSIVE, &nlog, &nckpt);
            if (r != SQLITE_OK && r != SQLITE_BUSY)
                ims_log(IMS_LOG_WARN, "checkpoint", "error=\"%s\"", sqlite3_errmsg(db));
            last_ckpt = mono_ms();
            ckpt_gen = gen;
            pthread_mutex_lock(&sy->mu);
            sy->checkpoints++;
            sy->log_frames = nlog > 0 ? (uint64_t)nlog : 0;
            pthread_mutex_unlock(&sy->mu);
        }
        pthread_mutex_lock(&sy->mu);
    }
    pthread_mutex_unlock(&sy->mu);
    sqlite3_close(db);
    return NULL;
}

ims_syncer *ims_syncer_new(int fd, const char *db_path, void (*wake)(void *ud), void *ud, char *err,
                           size_t errlen)
{
    ims_syncer *sy = calloc(1, sizeof *sy);
    if (!sy || fd < 0 || !wake) {
        snprintf(err, errlen, "syncer: %s", sy ? "bad arguments" : "out of memory");
        free(sy);
        return NULL;
    }
    sy->fd = fd;
    sy->wake = wake;
    sy->ud = ud;
    if (db_path && !(sy->db_path = strdup(db_path))) {
        snprintf(err, errlen, "syncer: out of memory");
        free(sy);
        return NULL;
    }
    if (pthread_mutex_init(&sy->mu, NULL) != 0) {
        snprintf(err, errlen, "syncer: mutex");
        free(sy->db_path);
        free(sy);
        return NULL;
    }
    if (pthread_cond_init(&sy->cv, NULL) != 0) {
        snprintf(err, errlen, "syncer: condition variable");
        pthread_mutex_destroy(&sy->mu);
        free(sy->db_path);
        free(sy);
        return NULL;
    }
    int e = pthread_create(&sy->thread, NULL, run, sy);
    if (e != 0) {
        snprintf(err, errlen, "syncer: thread: %s", strerror(e));
        pthread_cond_destroy(&sy->cv);
        pthread_mutex_destroy(&sy->mu);
        free(sy->db_path);
        free(sy);
        return NULL;
    }
    return sy;
}

void ims_syncer_request(ims_syncer *sy, uint64_t gen)
{
    pthread_mutex_lock(&sy->mu);
    if (gen > sy->requested) {
        sy->requested = gen;
        pthread_cond_signal(&sy->cv);
    }
    pthread_mutex_unlock(&sy->mu);
}

int ims_syncer_poll(ims_syncer *sy, uint64_t *gen)
{
    pthread_mutex_lock(&sy->mu);
    *gen = sy->done;
    int f = sy->failures;
    sy->failures = 0;
    pthread_mutex_unlock(&sy->mu);
    return f;
}

void ims_syncer_stats(ims_syncer *sy, uint64_t *syncs, uint64_t *checkpoints, uint64_t *log_frames)
{
    pthread_mutex_lock(&sy->mu);
    *syncs = sy->syncs;
    *checkpoints = sy->checkpoints;
    *log_frames = sy->log_frames;
    pthread_mutex_unlock(&sy->mu);
}

void ims_syncer_free(ims_syncer *sy)
{
    if (!sy)
        return;
    pthread_mutex_lock(&sy->mu);
    sy->stopping = 1;
    pthread_cond_signal(&sy->cv);
    pthread_mutex_unlock(&sy->mu);
    pthread_join(sy->thread, NULL);
    pthread_cond_destroy(&sy->cv);
    pthread_mutex_destroy(&sy->mu);
    free(sy->db_path);
    free(sy);
}
