/* Unit tests for the store's committed high-water mark (store.h: the record in "<path>-running",
 * written after every commit, IMP-DELIV-007: no silent loss). A store is written through the
 * store API with synchronous=FULL (one message per commit), and its files (database, write-ahead
 * log, marker) are copied while it is still open, as a crash leaves them. The copies are then
 * opened as they are, with the log cut short at a frame boundary (the last transactions gone,
 * which the log scan of store_wal.h cannot see), without the log (a database restored from an
 * older copy), and with a damaged or stale marker. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <fcntl.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "imp/imp.h"
#include "files.h"
#include "store.h"
#include "store_wal.h"

enum { NMSG = 12 }; /* messages, one commit each, all in the log (no checkpoint) */

typedef struct mfx {
    char dir[64];
    char path[160];                /* the original store */
    uint8_t *db, *wal, *mk;        /* the copies' bytes, taken while it was open */
    size_t dblen, wallen, mklen;   /* ... */
    uint8_t *mk_early;             /* the marker as it was after NMSG / 2 messages */
    size_t mk_early_len;           /* ... */
    uint64_t commit_end[NMSG + 8]; /* log length after each commit frame, in order */
    size_t ncommit;
    int64_t bob;
} mfx;

static char logged[2048]; /* what the store logged (log hook) */

static void log_hook(void *ud, const char *msg)
{
    (void)ud;
    size_t n = strlen(logged);
    snprintf(logged + n, sizeof logged - n, "%s\n", msg);
}

static int exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

static uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static ims_store *open_path(const char *path, char *err, size_t n)
{
    ims_store_options o = {path, 1, log_hook, NULL, 0, 0};
    err[0] = '\0';
    return ims_store_open(&o, err, n);
}

static void put_one(ims_store *s, int64_t from, int64_t to, int i)
{
    char body[64];
    snprintf(body, sizeof body, "message %d", i);
    ims_message m;
    memset(&m, 0, sizeof m);
    m.sender_id = from;
    snprintf(m.sender, sizeof m.sender, "alice");
    m.target_kind = 1;
    snprintf(m.target, sizeof m.target, "bob");
    m.ts_ms = 1000 + i;
    m.body = (const uint8_t *)body;
    m.body_len = strlen(body);
    int64_t id = 0;
    assert_int_equal(ims_store_begin(s), 0);
    assert_int_equal(ims_store_message_put(s, &m, NULL, NULL, &to, 1, &id, NULL), 0);
    assert_int_equal(ims_store_commit(s), 0);
    assert_true(id > 0);
}

/* The store with two users and NMSG messages for bob, copied while open. */
static void make_store(mfx *f)
{
    memset(f, 0, sizeof *f);
    snprintf(f->dir, sizeof f->dir, "/tmp/imd-mark-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->path, sizeof f->path, "%s/s.db", f->dir);
    char err[512], p[200];
    ims_store *s = open_path(f->path, err, sizeof err);
    assert_non_null(s);
    int64_t alice = 0;
    assert_int_equal(ims_store_user_create(s, "alice", "$argon2id$fake", 0, 1, &alice), 0);
    assert_int_equal(ims_store_user_create(s, "bob", "$argon2id$fake", 0, 1, &f->bob), 0);
    snprintf(p, sizeof p, "%s-running", f->path);
    for (int i = 0; i < NMSG; i++) {
        put_one(s, alice, f->bob, i);
        if (i + 1 == NMSG / 2)
            f->mk_early = tf_slurp(p, &f->mk_early_len);
    }
    f->db = tf_slurp(f->path, &f->dblen);
    f->mk = tf_slurp(p, &f->mklen);
    snprintf(p, sizeof p, "%s-wal", f->path);
    f->wal = tf_slurp(p, &f->wallen);
    ims_store_close(s);
    /* The log's commit frames (frame header bytes 4..7: the database size after a commit). */
    assert_true(f->wallen > 32);
    uint32_t page = be32(f->wal + 8);
    for (uint64_t off = 32; off + 24 + page <= f->wallen; off += 24 + page)
        if (be32(f->wal + off + 4) != 0 &&
            f->ncommit < sizeof f->commit_end / sizeof f->commit_end[0])
            f->commit_end[f->ncommit++] = off + 24 + page;
    assert_true(f->ncommit >= NMSG);
    assert_true(f->mklen > 0);
}

static void mfx_free(mfx *f)
{
    free(f->db);
    free(f->wal);
    free(f->mk);
    free(f->mk_early);
    tf_rm_tree(f->dir);
}

/* The copy as dir/c.db: db (NULL: no file), log of wallen bytes (0: none), marker (NULL: none). */
static void put_copy(const mfx *f, const uint8_t *db, size_t dblen, size_t wallen,
                     const uint8_t *mk, size_t mklen)
{
    char p[200];
    static const char *const sfx[] = {"", "-wal", "-shm", "-running"};
    for (size_t i = 0; i < 4; i++) {
        snprintf(p, sizeof p, "%s/c.db%s", f->dir, sfx[i]);
        unlink(p);
    }
    if (db) {
        snprintf(p, sizeof p, "%s/c.db", f->dir);
        tf_spit(p, db, dblen);
    }
    if (wallen) {
        snprintf(p, sizeof p, "%s/c.db-wal", f->dir);
        tf_spit(p, f->wal, wallen);
    }
    if (mk) {
        snprintf(p, sizeof p, "%s/c.db-running", f->dir);
        tf_spit(p, mk, mklen);
    }
}

/* Opens the copy; returns bob's queued messages (closing it again), or -1 when refused. A
 * refusal leaves the copy's files exactly as they were. */
static int64_t open_copy(const mfx *f, const uint8_t *db, size_t dblen, size_t wallen,
                         const uint8_t *mk, size_t mklen, char *err, size_t n)
{
    put_copy(f, db, dblen, wallen, mk, mklen);
    logged[0] = '\0';
    char p[200];
    snprintf(p, sizeof p, "%s/c.db", f->dir);
    ims_store *s = open_path(p, err, n);
    if (s != NULL) {
        int64_t c = -1;
        assert_int_equal(ims_store_queue_count(s, f->bob, &c), 0);
        ims_store_close(s);
        return c;
    }
    size_t l = 0;
    if (db) {
        uint8_t *b = tf_slurp(p, &l);
        assert_true(l == dblen && memcmp(b, db, l) == 0);
        free(b);
    } else {
        assert_false(exists(p)); /* not created */
    }
    snprintf(p, sizeof p, "%s/c.db-wal", f->dir);
    if (wallen) {
        uint8_t *b = tf_slurp(p, &l);
        assert_true(l == wallen && memcmp(b, f->wal, l) == 0);
        free(b);
    } else {
        assert_false(exists(p));
    }
    snprintf(p, sizeof p, "%s/c.db-running", f->dir);
    if (mk) {
        uint8_t *b = tf_slurp(p, &l);
        assert_true(l == mklen && memcmp(b, mk, l) == 0);
        free(b);
    } else {
        assert_false(exists(p));
    }
    return -1;
}

/* ---- tests ------------------------------------------------------------------------------------
 */

/* The copy as a crash leaves it opens with everything; so does one whose marker is older
 * (a marker write lost: it is never synced) or empty (made, no commit yet). */
static void test_crash_copy_opens(void **state)
{
    (void)state;
    mfx f;
    make_store(&f);
    char err[512];
    assert_int_equal(open_copy(&f, f.db, f.dblen, f.wallen, f.mk, f.mklen, err, sizeof err), NMSG);
    assert_int_equal(
        open_copy(&f, f.db, f.dblen, f.wallen, f.mk_early, f.mk_early_len, err, sizeof err), NMSG);
    assert_int_equal(open_copy(&f, f.db, f.dblen, f.wallen, f.mk, 0, err, sizeof err), NMSG);
    /* After a clean close the marker is gone (as before). */
    char p[200];
    snprintf(p, sizeof p, "%s/c.db-running", f.dir);
    assert_false(exists(p));
    mfx_free(&f);
}

/* The log cut at a frame boundary before the last commits: the log scan accepts it (nothing
 * damaged, just shorter), the marker says more was committed: refused with a message naming the
 * database, the marker, both values and what to do; files untouched. Without the marker (the
 * operator accepts the loss) it opens with what is left. */
static void test_truncated_wal_refused(void **state)
{
    (void)state;
    mfx f;
    make_store(&f);
    char err[512];
    size_t cut = (size_t)f.commit_end[f.ncommit - 4]; /* the last 3 commits gone */
    put_copy(&f, f.db, f.dblen, cut, NULL, 0);
    char wp[200];
    snprintf(wp, sizeof wp, "%s/c.db-wal", f.dir);
    assert_int_equal(ims_wal_scan(wp, NULL, err, sizeof err), IMS_WAL_OK);
    assert_int_equal(open_copy(&f, f.db, f.dblen, cut, f.mk, f.mklen, err, sizeof err), -1);
    assert_non_null(strstr(err, "c.db"));
    assert_non_null(strstr(err, "c.db-running"));
    assert_non_null(strstr(err, "damaged"));
    assert_non_null(strstr(err, "backup"));
    /* the values: msg id NMSG in the marker, NMSG - 3 in the database */
    char want[64];
    snprintf(want, sizeof want, "records msg_id %d and user id 2 ", NMSG);
    assert_non_null(strstr(err, want));
    snprintf(want, sizeof want, "database has msg_id %d and user id 2 ", NMSG - 3);
    assert_non_null(strstr(err, want));
    /* the same log with the older marker: nothing it knows of is missing */
    assert_int_equal(open_copy(&f, f.db, f.dblen, cut, f.mk_early, f.mk_early_len, err, sizeof err),
                     NMSG - 3);
    /* one commit short: refused too; the marker removed: accepted */
    cut = (size_t)f.commit_end[f.ncommit - 2];
    assert_int_equal(open_copy(&f, f.db, f.dblen, cut, f.mk, f.mklen, err, sizeof err), -1);
    assert_int_equal(open_copy(&f, f.db, f.dblen, cut, NULL, 0, err, sizeof err), NMSG - 1);
    /* the log cut to its header alone */
    assert_int_equal(open_copy(&f, f.db, f.dblen, 32, f.mk, f.mklen, err, sizeof err), -1);
    mfx_free(&f);
}

/* A database restored from an older copy while the log is gone, or gone altogether: refused. */
static void test_rolled_back_db_refused(void **state)
{
    (void)state;
    mfx f;
    make_store(&f);
    char err[512];
    assert_int_equal(open_copy(&f, f.db, f.dblen, 0, f.mk, f.mklen, err, sizeof err), -1);
    assert_non_null(strstr(err, "damaged"));
    assert_int_equal(open_copy(&f, NULL, 0, 0, f.mk, f.mklen, err, sizeof err), -1);
    assert_non_null(strstr(err, "c.db-running"));
    assert_int_equal(open_copy(&f, f.db, 0, 0, f.mk, f.mklen, err, sizeof err), -1);
    assert_non_null(strstr(err, "c.db-running"));
    mfx_free(&f);
}

/* A marker whose record does not check out (torn, garbage, another length) is ignored, with a
 * line in the log; the store opens. */
static void test_garbage_marker_ignored(void **state)
{
    (void)state;
    mfx f;
    make_store(&f);
    char err[512];
    uint8_t g[sizeof f.mk[0] * 64];
    size_t cut = (size_t)f.commit_end[f.ncommit - 2];
    for (size_t i = 0; i < sizeof g; i++)
        g[i] = (uint8_t)(i * 37 + 11);
    assert_int_equal(open_copy(&f, f.db, f.dblen, cut, g, f.mklen, err, sizeof err), NMSG - 1);
    assert_non_null(strstr(logged, "c.db-running"));
    /* the real record with one bit flipped in its value */
    uint8_t *t = malloc(f.mklen);
    assert_non_null(t);
    for (size_t k = 0; k < f.mklen; k++) {
        memcpy(t, f.mk, f.mklen);
        t[k] ^= 0x04;
        assert_int_equal(open_copy(&f, f.db, f.dblen, cut, t, f.mklen, err, sizeof err), NMSG - 1);
        assert_non_null(strstr(logged, "c.db-running"));
    }
    /* cut short */
    assert_int_equal(open_copy(&f, f.db, f.dblen, cut, f.mk, f.mklen - 1, err, sizeof err),
                     NMSG - 1);
    assert_non_null(strstr(logged, "c.db-running"));
    free(t);
    mfx_free(&f);
}

/* The mark never goes backwards: acknowledged (deleted) messages, rolled back operations,
 * operations outside a batch and a second store on the same files (an admin command while imd
 * runs) leave a marker that the crash copy opens with. */
static void test_mark_survives_deletes_and_second_store(void **state)
{
    (void)state;
    char dir[64] = "/tmp/imd-mark-XXXXXX", path[160], mk[200], err[512];
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/s.db", dir);
    snprintf(mk, sizeof mk, "%s-running", path);
    ims_store *s = open_path(path, err, sizeof err);
    assert_non_null(s);
    int64_t a = 0, b = 0;
    assert_int_equal(ims_store_user_create(s, "alice", "$argon2id$fake", 0, 1, &a), 0);
    assert_int_equal(ims_store_user_create(s, "bob", "$argon2id$fake", 0, 1, &b), 0);
    for (int i = 0; i < 5; i++)
        put_one(s, a, b, i);
    /* a failing put in a batch (no such recipient): its msg id is not committed */
    ims_message m;
    memset(&m, 0, sizeof m);
    m.sender_id = a;
    snprintf(m.sender, sizeof m.sender, "alice");
    m.target_kind = 1;
    snprintf(m.target, sizeof m.target, "nobody");
    m.body = (const uint8_t *)"x";
    m.body_len = 1;
    int64_t nobody = 9999, id = 0;
    assert_int_equal(ims_store_begin(s), 0);
    assert_int_equal(ims_store_message_put(s, &m, NULL, NULL, &nobody, 1, &id, NULL),
                     IMP_ERR_NO_SUCH_USER);
    assert_int_equal(ims_store_commit(s), 0);
    /* everything acknowledged: the message rows are deleted */
    assert_int_equal(ims_store_queue_ack(s, b, 5, NULL), 0);
    /* a second store on the same files commits (a user, outside a batch) and closes */
    ims_store *s2 = open_path(path, err, sizeof err);
    assert_non_null(s2);
    assert_int_equal(ims_store_user_create(s2, "carol", "$argon2id$fake", 0, 1, NULL), 0);
    ims_store_close(s2);
    assert_true(exists(mk)); /* still the first store's */
    put_one(s, a, b, 5);
    /* the crash copy */
    mfx f;
    memset(&f, 0, sizeof f);
    snprintf(f.dir, sizeof f.dir, "%s", dir);
    f.bob = b;
    char p[200];
    f.db = tf_slurp(path, &f.dblen);
    snprintf(p, sizeof p, "%s-wal", path);
    f.wal = tf_slurp(p, &f.wallen);
    f.mk = tf_slurp(mk, &f.mklen);
    assert_true(f.mklen > 0);
    assert_int_equal(open_copy(&f, f.db, f.dblen, f.wallen, f.mk, f.mklen, err, sizeof err), 1);
    ims_store_close(s);
    assert_false(exists(mk));
    f.dir[0] = '\0';
    mfx_free(&f);
    tf_rm_tree(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_crash_copy_opens),
        cmocka_unit_test(test_truncated_wal_refused),
        cmocka_unit_test(test_rolled_back_db_refused),
        cmocka_unit_test(test_garbage_marker_ignored),
        cmocka_unit_test(test_mark_survives_deletes_and_second_store),
    };
    return cmocka_run_group_tests_name("server: store high-water mark", tests, NULL, NULL);
}
