/* Unit tests for server/store_wal.c (the scan of a damaged write-ahead log before SQLite replays
 * it, IMP-DELIV-007: no silent loss) and for ims_store_open's use of it. The logs are real: an
 * imd database made by ims_store_open, then written by plain SQLite in WAL mode with
 * synchronous=FULL and wal_autocheckpoint=0, copied (database and log) while the connection is
 * still open, so that no checkpoint empties the log. The copies are then damaged. */
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

enum { NTX = 30 }; /* transactions written into the log (each a commit frame or more) */

typedef struct wfx {
    char dir[64];
    char path[160];       /* the original database, its connection open while the log is read */
    uint8_t *db, *wal;    /* the copies' bytes */
    size_t dblen, wallen; /* ... */
    uint32_t page;        /* the log's page size */
    uint64_t frames;      /* whole frames */
    uint64_t commit[512]; /* 1-based numbers of the commit frames, in order */
    size_t ncommit;
} wfx;

static uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void exec_ok(sqlite3 *h, const char *sql)
{
    char *e = NULL;
    if (sqlite3_exec(h, sql, NULL, NULL, &e) != SQLITE_OK)
        fail_msg("%s: %s", sql, e ? e : "?");
}

static int64_t count_rows(sqlite3 *h, const char *sql)
{
    sqlite3_stmt *q = NULL;
    assert_int_equal(sqlite3_prepare_v2(h, sql, -1, &q, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(q), SQLITE_ROW);
    int64_t n = sqlite3_column_int64(q, 0);
    sqlite3_finalize(q);
    return n;
}

/* Transactions i0 .. i0+n-1 on h: each inserts rows of 1500 bytes (several pages a few times). */
static void write_tx(sqlite3 *h, int i0, int n)
{
    for (int i = i0; i < i0 + n; i++) {
        char sql[200];
        snprintf(sql, sizeof sql,
                 "BEGIN; INSERT INTO extra(i, b) VALUES (%d, zeroblob(1500)), (%d, "
                 "randomblob(1500)); COMMIT",
                 2 * i, 2 * i + 1);
        exec_ok(h, sql);
    }
}

/* Reads the frame layout of f->wal (made by SQLite: its checksums are trusted here). */
static void layout(wfx *f)
{
    assert_true(f->wallen >= 32);
    f->page = be32(f->wal + 8);
    assert_true(f->page >= 512 && (f->page & (f->page - 1)) == 0);
    size_t fsz = 24 + (size_t)f->page;
    f->frames = (f->wallen - 32) / fsz;
    f->ncommit = 0;
    for (uint64_t i = 1; i <= f->frames; i++) {
        const uint8_t *h = f->wal + 32 + (i - 1) * fsz;
        /* frames of this generation only (the salts of the header) */
        if (memcmp(h + 8, f->wal + 16, 8) != 0)
            break;
        if (be32(h + 4) != 0 && f->ncommit < sizeof f->commit / sizeof f->commit[0])
            f->commit[f->ncommit++] = i;
    }
}

static size_t frame_off(const wfx *f, uint64_t i)
{
    return 32 + (size_t)(i - 1) * (24 + (size_t)f->page);
}

/* An imd database, then NTX transactions in its log; the copies taken with h still open. With
 * restart: first 40 transactions, a RESTART checkpoint, then 3 transactions (a new generation of
 * the log over the stale frames of the old one). */
static void make_wal(wfx *f, int restart)
{
    memset(f, 0, sizeof *f);
    snprintf(f->dir, sizeof f->dir, "/tmp/imd-test-wal-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->path, sizeof f->path, "%s/imd.db", f->dir);
    ims_store_options o = {f->path, 1, NULL, NULL, 0, 0};
    char err[256] = "";
    ims_store *s = ims_store_open(&o, err, sizeof err);
    if (s == NULL)
        fail_msg("ims_store_open: %s", err);
    ims_store_close(s);
    sqlite3 *h = NULL;
    assert_int_equal(sqlite3_open_v2(f->path, &h, SQLITE_OPEN_READWRITE, NULL), SQLITE_OK);
    exec_ok(h, "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; "
               "PRAGMA wal_autocheckpoint = 0; CREATE TABLE extra(i INTEGER PRIMARY KEY, b BLOB)");
    if (restart) {
        write_tx(h, 1000, 40);
        exec_ok(h, "PRAGMA wal_checkpoint(RESTART)");
        write_tx(h, 2000, 3);
    } else {
        write_tx(h, 0, NTX);
    }
    char p[200];
    f->db = tf_slurp(f->path, &f->dblen);
    snprintf(p, sizeof p, "%s-wal", f->path);
    f->wal = tf_slurp(p, &f->wallen);
    sqlite3_close(h);
    layout(f);
}

static void wfx_free(wfx *f)
{
    free(f->db);
    free(f->wal);
    tf_rm_tree(f->dir);
}

/* The copy (db and log of wallen bytes, from wal) as dir/c.db; returns the log's path. */
static const char *put_copy(const wfx *f, const uint8_t *wal, size_t wallen)
{
    static char p[200];
    snprintf(p, sizeof p, "%s/c.db", f->dir);
    tf_spit(p, f->db, f->dblen);
    snprintf(p, sizeof p, "%s/c.db-running", f->dir);
    unlink(p);
    snprintf(p, sizeof p, "%s/c.db-shm", f->dir);
    unlink(p);
    snprintf(p, sizeof p, "%s/c.db-wal", f->dir);
    tf_spit(p, wal, wallen);
    return p;
}

static int scan(const char *wal_path, ims_wal_scan_result *r, char *msg, size_t n)
{
    memset(r, 0xee, sizeof *r);
    msg[0] = '\0';
    return ims_wal_scan(wal_path, r, msg, n);
}

/* Rows of table extra that plain SQLite sees in the copy (it replays the log); -1 when it does
 * not see the table. */
static int64_t sqlite_rows(const wfx *f)
{
    char p[200];
    snprintf(p, sizeof p, "%s/c.db", f->dir);
    sqlite3 *h = NULL;
    assert_int_equal(sqlite3_open_v2(p, &h, SQLITE_OPEN_READWRITE, NULL), SQLITE_OK);
    int64_t n = -1; /* -1: not even the table (made in the log) */
    if (count_rows(h, "SELECT count(*) FROM sqlite_schema WHERE name = 'extra'") == 1)
        n = count_rows(h, "SELECT count(*) FROM extra");
    sqlite3_close(h);
    return n;
}

/* ims_store_open on the copy: 1 opened (closed again), 0 refused (err filled). The copy's files
 * are not modified by a refusal, and no marker is left. */
static int store_open_copy(const wfx *f, const uint8_t *wal, size_t wallen, char *err, size_t n)
{
    put_copy(f, wal, wallen);
    char db[200], wp[200], mk[200];
    snprintf(db, sizeof db, "%s/c.db", f->dir);
    snprintf(wp, sizeof wp, "%s/c.db-wal", f->dir);
    snprintf(mk, sizeof mk, "%s/c.db-running", f->dir);
    ims_store_options o = {db, 1, NULL, NULL, 0, 0};
    err[0] = '\0';
    ims_store *s = ims_store_open(&o, err, n);
    if (s != NULL) {
        ims_store_close(s);
        return 1;
    }
    size_t l1 = 0, l2 = 0;
    uint8_t *b1 = tf_slurp(db, &l1), *b2 = tf_slurp(wp, &l2);
    assert_true(l1 == f->dblen && memcmp(b1, f->db, l1) == 0);
    assert_true(l2 == wallen && memcmp(b2, wal, l2) == 0);
    free(b1);
    free(b2);
    struct stat st;
    assert_int_not_equal(stat(mk, &st), 0);
    return 0;
}

/* ---- tests ------------------------------------------------------------------------------------
 */

static void test_intact_and_empty(void **state)
{
    (void)state;
    wfx f;
    make_wal(&f, 0);
    assert_true(f.ncommit >= NTX);
    ims_wal_scan_result r;
    char msg[300];
    const char *wp = put_copy(&f, f.wal, f.wallen);
    assert_int_equal(scan(wp, &r, msg, sizeof msg), IMS_WAL_OK);
    assert_int_equal(r.header_ok, 1);
    assert_int_equal(r.page_size, f.page);
    assert_int_equal(r.frames, f.frames);
    assert_int_equal(r.valid_frames, f.frames);
    assert_int_equal(r.valid_commits, f.ncommit);
    assert_int_equal(r.first_bad, 0);
    assert_int_equal(r.lost_commits, 0);
    assert_int_equal(r.rule, 0);
    assert_string_equal(msg, "");
    assert_int_equal(sqlite_rows(&f), 2 * NTX);
    /* empty, header only, missing */
    wp = put_copy(&f, f.wal, 0);
    assert_int_equal(scan(wp, &r, msg, sizeof msg), IMS_WAL_OK);
    assert_int_equal(r.frames, 0);
    wp = put_copy(&f, f.wal, 32);
    assert_int_equal(scan(wp, &r, msg, sizeof msg), IMS_WAL_OK);
    assert_int_equal(r.frames, 0);
    unlink(wp);
    assert_int_equal(scan(wp, &r, msg, sizeof msg), IMS_WAL_OK);
    /* through ims_store_open: opens, and the rows of the log are there */
    char err[256];
    assert_int_equal(store_open_copy(&f, f.wal, f.wallen, err, sizeof err), 1);
    put_copy(&f, f.wal, f.wallen);
    assert_int_equal(sqlite_rows(&f), 2 * NTX);
    wfx_free(&f);
}

/* Rule A: a bit flipped anywhere in the 32-byte header. SQLite ignores the whole log. */
static void test_header_damaged_refused(void **state)
{
    (void)state;
    wfx f;
    make_wal(&f, 0);
    uint8_t *w = malloc(f.wallen);
    assert_non_null(w);
    ims_wal_scan_result r;
    char msg[300];
    for (size_t off = 0; off < 32; off++) {
        for (int bit = 0; bit < 8; bit += 3) {
            memcpy(w, f.wal, f.wallen);
            w[off] ^= (uint8_t)(1u << bit);
            const char *wp = put_copy(&f, w, f.wallen);
            int rc = scan(wp, &r, msg, sizeof msg);
            if (rc != IMS_WAL_REFUSE)
                fail_msg("header byte %zu bit %d: not refused", off, bit);
            assert_int_equal(r.header_ok, 0);
            assert_int_equal(r.rule, 'A');
            assert_true(r.lost_commits >= 1);
            assert_non_null(strstr(msg, "c.db-wal"));
            assert_non_null(strstr(msg, "header"));
            assert_non_null(strstr(msg, "frame"));
            assert_non_null(strstr(msg, "backup"));
        }
    }
    /* what SQLite does with it: the whole log is ignored (the table made in it too) */
    memcpy(w, f.wal, f.wallen);
    w[10] ^= 0x10;
    put_copy(&f, w, f.wallen);
    assert_int_equal(sqlite_rows(&f), -1);
    /* ims_store_open refuses, naming the log, and touches nothing */
    char err[256];
    assert_int_equal(store_open_copy(&f, w, f.wallen, err, sizeof err), 0);
    assert_non_null(strstr(err, "c.db-wal"));
    assert_non_null(strstr(err, "damaged"));
    free(w);
    wfx_free(&f);
}

/* Rule B: a bit flipped in a frame's page data in the middle of the log. */
static void test_middle_damaged_refused(void **state)
{
    (void)state;
    wfx f;
    make_wal(&f, 0);
    uint8_t *w = malloc(f.wallen);
    assert_non_null(w);
    ims_wal_scan_result r;
    char msg[300];
    uint64_t mid = f.frames / 2;
    memcpy(w, f.wal, f.wallen);
    w[frame_off(&f, mid) + 24 + 100] ^= 0x10;
    const char *wp = put_copy(&f, w, f.wallen);
    assert_int_equal(scan(wp, &r, msg, sizeof msg), IMS_WAL_REFUSE);
    assert_int_equal(r.header_ok, 1);
    assert_int_equal(r.rule, 'B');
    assert_int_equal(r.first_bad, mid);
    size_t after = 0; /* commit frames after the damaged one */
    for (size_t k = 0; k < f.ncommit; k++)
        after += f.commit[k] > mid;
    assert_true(after >= 2);
    assert_int_equal(r.lost_commits, after);
    assert_true(r.lost_first > mid);
    char want[40];
    snprintf(want, sizeof want, "frame %llu", (unsigned long long)mid);
    assert_non_null(strstr(msg, want));
    assert_non_null(strstr(msg, "c.db-wal"));
    assert_non_null(strstr(msg, "move the WAL away"));
    /* SQLite would drop those transactions */
    assert_true(sqlite_rows(&f) < 2 * NTX);
    char err[256];
    assert_int_equal(store_open_copy(&f, w, f.wallen, err, sizeof err), 0);
    assert_non_null(strstr(err, "c.db-wal"));
    assert_non_null(strstr(err, want));
    /* a frame's header damaged (its page number, its salts, its checksum) in the first half */
    const size_t fields[] = {1, 9, 13, 17, 21};
    for (size_t k = 0; k < sizeof fields / sizeof fields[0]; k++) {
        memcpy(w, f.wal, f.wallen);
        w[frame_off(&f, f.commit[1]) + fields[k]] ^= 0x04;
        wp = put_copy(&f, w, f.wallen);
        if (scan(wp, &r, msg, sizeof msg) != IMS_WAL_REFUSE)
            fail_msg("frame header byte %zu: not refused", fields[k]);
        assert_int_equal(r.rule, 'B');
    }
    free(w);
    wfx_free(&f);
}

/* Damage inside the last transaction, or its last frame cut: a crash during that transaction
 * looks the same (its commit never returned): accepted. */
static void test_last_transaction_accepted(void **state)
{
    (void)state;
    wfx f;
    make_wal(&f, 0);
    assert_true(f.ncommit >= 2);
    uint8_t *w = malloc(f.wallen);
    assert_non_null(w);
    ims_wal_scan_result r;
    char msg[300];
    uint64_t last = f.commit[f.ncommit - 1], prev = f.commit[f.ncommit - 2];
    assert_int_equal(last, f.frames);
    for (uint64_t i = prev + 1; i <= last; i++) {
        memcpy(w, f.wal, f.wallen);
        w[frame_off(&f, i) + 24 + f.page / 2] ^= 0x01;
        const char *wp = put_copy(&f, w, f.wallen);
        assert_int_equal(scan(wp, &r, msg, sizeof msg), IMS_WAL_OK);
        assert_int_equal(r.first_bad, i);
        assert_int_equal(r.valid_commits, f.ncommit - 1);
        assert_true(r.lost_commits <= 1);
        assert_int_equal(r.rule, 0);
    }
    /* the last frame cut short (a torn write), and a cut in the middle (frames gone) */
    const size_t cuts[] = {f.wallen - 100, f.wallen - f.page, frame_off(&f, f.frames / 2) + 7};
    for (size_t k = 0; k < sizeof cuts / sizeof cuts[0]; k++) {
        const char *wp = put_copy(&f, f.wal, cuts[k]);
        assert_int_equal(scan(wp, &r, msg, sizeof msg), IMS_WAL_OK);
        assert_int_equal(r.lost_commits, 0);
    }
    char err[256];
    assert_int_equal(store_open_copy(&f, f.wal, f.wallen - 100, err, sizeof err), 1);
    memcpy(w, f.wal, f.wallen);
    w[f.wallen - 100] ^= 0x10;
    assert_int_equal(store_open_copy(&f, w, f.wallen, err, sizeof err), 1);
    free(w);
    wfx_free(&f);
}

/* After a checkpoint restarted the log, a new header (new salts) and a few frames overwrite the
 * start of the old log: the old generation's frames after them are stale (they check out among
 * themselves and hold commit frames, but with the old salts): accepted. */
static void test_new_generation_stale_frames_accepted(void **state)
{
    (void)state;
    wfx f;
    make_wal(&f, 1);
    ims_wal_scan_result r;
    char msg[300];
    const char *wp = put_copy(&f, f.wal, f.wallen);
    assert_int_equal(scan(wp, &r, msg, sizeof msg), IMS_WAL_OK);
    assert_int_equal(r.header_ok, 1);
    assert_int_equal(r.valid_commits, f.ncommit);
    assert_true(r.valid_commits >= 3);
    assert_true(r.frames > r.valid_frames + 10); /* stale frames are there */
    assert_int_equal(r.first_bad, r.valid_frames + 1);
    assert_int_equal(r.lost_commits, 0);
    assert_int_equal(sqlite_rows(&f), 2 * 43);
    char err[256];
    assert_int_equal(store_open_copy(&f, f.wal, f.wallen, err, sizeof err), 1);
    wfx_free(&f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_intact_and_empty),
        cmocka_unit_test(test_header_damaged_refused),
        cmocka_unit_test(test_middle_damaged_refused),
        cmocka_unit_test(test_last_transaction_accepted),
        cmocka_unit_test(test_new_generation_stale_frames_accepted),
    };
    return cmocka_run_group_tests_name("server: store WAL scan", tests, NULL, NULL);
}
