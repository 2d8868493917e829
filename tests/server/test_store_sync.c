/* Unit tests for the store's fsync_thread mode (store.h, "syncing off the loop"; issue 3: no
 * event-loop stall, IMP-DELIV-001: an ACK still means on disk). A batch's COMMIT is counted
 * (commit_gen) but is not on disk until ims_store_synced() (or ims_store_sync()) says so: until
 * then its messages are above ims_store_durable_msg_id() and its committed mark is not in the
 * marker. Operations outside a batch sync inline. Without fsync_thread nothing changes. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "imp/imp.h"
#include "files.h"
#include "store.h"

typedef struct sfx {
    char dir[64];
    char path[160];
    char marker[180];
    ims_store *s;
    int64_t alice, bob;
} sfx;

static ims_store *open_mode(const char *path, int sync_full, int fsync_thread)
{
    ims_store_options o = {path, sync_full, NULL, NULL, 0, fsync_thread};
    char err[512] = "";
    ims_store *s = ims_store_open(&o, err, sizeof err);
    if (!s)
        fprintf(stderr, "open: %s\n", err);
    return s;
}

static int setup(void **state)
{
    sfx *f = calloc(1, sizeof *f);
    assert_non_null(f);
    snprintf(f->dir, sizeof f->dir, "/tmp/imd-sync-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->path, sizeof f->path, "%s/s.db", f->dir);
    snprintf(f->marker, sizeof f->marker, "%s-running", f->path);
    f->s = open_mode(f->path, 1, 1);
    assert_non_null(f->s);
    /* outside a batch: each create syncs inline */
    assert_int_equal(ims_store_user_create(f->s, "alice", "$argon2id$x", 0, 1, &f->alice), 0);
    assert_int_equal(ims_store_user_create(f->s, "bob", "$argon2id$x", 0, 1, &f->bob), 0);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    sfx *f = *state;
    ims_store_close(f->s);
    tf_rm_tree(f->dir);
    free(f);
    return 0;
}

static int64_t put_batch(sfx *f, int n)
{
    int64_t id = 0;
    assert_int_equal(ims_store_begin(f->s), 0);
    for (int i = 0; i < n; i++) {
        ims_message m;
        memset(&m, 0, sizeof m);
        m.sender_id = f->alice;
        snprintf(m.sender, sizeof m.sender, "alice");
        m.target_kind = 1;
        snprintf(m.target, sizeof m.target, "bob");
        m.ts_ms = 1000 + i;
        m.body = (const uint8_t *)"hello";
        m.body_len = 5;
        assert_int_equal(ims_store_message_put(f->s, &m, NULL, NULL, &f->bob, 1, &id, NULL), 0);
    }
    assert_int_equal(ims_store_commit(f->s), 0);
    return id;
}

/* The marker's msg_id mark (store_sqlite.c: bytes 16..23, little-endian), -1 if none. */
static int64_t marker_msg(const sfx *f)
{
    size_t n = 0;
    uint8_t *b = tf_slurp(f->marker, &n);
    int64_t v = -1;
    if (n == 40) {
        v = 0;
        for (int i = 7; i >= 0; i--)
            v = v << 8 | b[16 + i];
    }
    free(b);
    return v;
}

static void test_modes(void **state)
{
    sfx *f = *state;
    assert_true(ims_store_sync_fd(f->s) >= 0);
    assert_string_equal(ims_store_path(f->s), f->path);
    /* the inline syncs of setup: everything committed is on disk */
    assert_true(ims_store_commit_gen(f->s) >= 2);
    assert_int_equal(ims_store_synced_gen(f->s), ims_store_commit_gen(f->s));
    /* no fsync_thread, or no sync at all, or memory: inline, everything delivered at once */
    char p[200];
    snprintf(p, sizeof p, "%s/b.db", f->dir);
    ims_store *b = open_mode(p, 1, 0);
    assert_non_null(b);
    assert_int_equal(ims_store_sync_fd(b), -1);
    assert_int_equal(ims_store_durable_msg_id(b), INT64_MAX);
    ims_store_close(b);
    snprintf(p, sizeof p, "%s/c.db", f->dir);
    b = open_mode(p, 0, 1);
    assert_non_null(b);
    assert_int_equal(ims_store_sync_fd(b), -1);
    ims_store_close(b);
    b = open_mode(":memory:", 1, 1);
    assert_non_null(b);
    assert_int_equal(ims_store_sync_fd(b), -1);
    assert_int_equal(ims_store_durable_msg_id(b), INT64_MAX);
    assert_int_equal(ims_store_sync(b), 0);
    ims_store_close(b);
}

static void test_batch_waits_for_sync(void **state)
{
    sfx *f = *state;
    int64_t durable0 = ims_store_durable_msg_id(f->s);
    int64_t mark0 = marker_msg(f);
    uint64_t g0 = ims_store_commit_gen(f->s);
    int64_t last1 = put_batch(f, 3);
    uint64_t g1 = ims_store_commit_gen(f->s);
    assert_int_equal(g1, g0 + 1);
    assert_int_equal(ims_store_synced_gen(f->s), g0);
    /* committed (readable) but not on disk: not deliverable, not in the marker */
    assert_true(last1 > durable0);
    assert_int_equal(ims_store_durable_msg_id(f->s), durable0);
    assert_int_equal(marker_msg(f), mark0);
    int64_t count = 0;
    assert_int_equal(ims_store_queue_count(f->s, f->bob, &count), 0);
    assert_int_equal(count, 3);
    /* a second batch while the first's fsync "runs" */
    int64_t last2 = put_batch(f, 2);
    uint64_t g2 = ims_store_commit_gen(f->s);
    assert_int_equal(g2, g1 + 1);
    /* the fsync that started after batch g1: g1 is on disk, g2 not yet */
    assert_int_equal(fdatasync(ims_store_sync_fd(f->s)), 0);
    ims_store_synced(f->s, g1);
    assert_int_equal(ims_store_synced_gen(f->s), g1);
    assert_int_equal(ims_store_durable_msg_id(f->s), last1);
    assert_int_equal(marker_msg(f), last1);
    /* an older report changes nothing; a report beyond what was committed is capped */
    ims_store_synced(f->s, g0);
    assert_int_equal(ims_store_synced_gen(f->s), g1);
    ims_store_synced(f->s, g2 + 5);
    assert_int_equal(ims_store_synced_gen(f->s), g2);
    assert_int_equal(ims_store_durable_msg_id(f->s), last2);
    assert_int_equal(marker_msg(f), last2);
}

/* A batch that only read (the turn of transient messages, a refused SEND) has nothing to
 * sync: it is not counted, so no fsync is asked for it. */
static void test_read_only_batch_not_counted(void **state)
{
    sfx *f = *state;
    uint64_t g0 = ims_store_commit_gen(f->s);
    assert_int_equal(ims_store_begin(f->s), 0);
    ims_user u;
    assert_int_equal(ims_store_user_get(f->s, "bob", &u), 0);
    int64_t count = 0;
    assert_int_equal(ims_store_queue_count(f->s, f->bob, &count), 0);
    assert_int_equal(ims_store_commit(f->s), 0);
    assert_int_equal(ims_store_commit_gen(f->s), g0);
    assert_int_equal(ims_store_synced_gen(f->s), g0);
    put_batch(f, 1); /* a batch that wrote is */
    assert_int_equal(ims_store_commit_gen(f->s), g0 + 1);
}

static void test_sync_now_and_inline_ops(void **state)
{
    sfx *f = *state;
    int64_t last = put_batch(f, 4);
    assert_true(ims_store_durable_msg_id(f->s) < last);
    /* shutdown's path: sync on this thread */
    assert_int_equal(ims_store_sync(f->s), 0);
    assert_int_equal(ims_store_synced_gen(f->s), ims_store_commit_gen(f->s));
    assert_int_equal(ims_store_durable_msg_id(f->s), last);
    assert_int_equal(marker_msg(f), last);
    /* nothing new: a no-op */
    assert_int_equal(ims_store_sync(f->s), 0);
    /* an operation outside a batch syncs inline, and with it every batch before it */
    int64_t last2 = put_batch(f, 1);
    assert_true(ims_store_synced_gen(f->s) < ims_store_commit_gen(f->s));
    int64_t carol = 0;
    assert_int_equal(ims_store_user_create(f->s, "carol", "$argon2id$x", 0, 1, &carol), 0);
    assert_int_equal(ims_store_synced_gen(f->s), ims_store_commit_gen(f->s));
    assert_int_equal(ims_store_durable_msg_id(f->s), last2);
}

static void test_reopen_counts_all_as_durable(void **state)
{
    sfx *f = *state;
    int64_t last = put_batch(f, 2);
    assert_true(ims_store_durable_msg_id(f->s) < last);
    /* close syncs what is committed; a reopened store starts with everything on disk */
    ims_store_close(f->s);
    f->s = open_mode(f->path, 1, 1);
    assert_non_null(f->s);
    assert_int_equal(ims_store_durable_msg_id(f->s), last);
    int64_t count = 0;
    assert_int_equal(ims_store_queue_count(f->s, f->bob, &count), 0);
    assert_int_equal(count, 2);
}

static int count_cb(void *ud, const ims_message *m)
{
    (void)m;
    (*(int *)ud)++;
    return 0;
}

/* HISTORY shows only what is on disk: a room message committed in a batch whose fsync has not
 * been reported yet is not in the room's history (it could still be lost; its senders have no
 * ACK and its members no DELIVER yet). IMP-DELIV-001. */
static void test_history_waits_for_sync(void **state)
{
    sfx *f = *state;
    assert_int_equal(ims_store_room_join(f->s, "lobby", f->alice, 1, NULL), 0);
    int64_t durable0 = ims_store_durable_msg_id(f->s);
    assert_int_equal(ims_store_begin(f->s), 0);
    ims_message m;
    memset(&m, 0, sizeof m);
    m.sender_id = f->alice;
    snprintf(m.sender, sizeof m.sender, "alice");
    m.target_kind = 2;
    snprintf(m.target, sizeof m.target, "lobby");
    m.ts_ms = 2000;
    m.body = (const uint8_t *)"hi";
    m.body_len = 2;
    int64_t id = 0;
    assert_int_equal(ims_store_message_put(f->s, &m, NULL, NULL, &f->alice, 1, &id, NULL), 0);
    assert_int_equal(ims_store_commit(f->s), 0);
    assert_true(id > durable0);
    int n = 0, more = -1;
    assert_int_equal(ims_store_room_history(f->s, "lobby", 0, 10, count_cb, &n, &more), 0);
    assert_int_equal(n, 0);
    assert_int_equal(more, 0);
    n = 0;
    assert_int_equal(ims_store_room_history(f->s, "lobby", id + 1, 10, count_cb, &n, &more), 0);
    assert_int_equal(n, 0);
    assert_int_equal(ims_store_sync(f->s), 0);
    assert_int_equal(ims_store_durable_msg_id(f->s), id);
    n = 0;
    assert_int_equal(ims_store_room_history(f->s, "lobby", 0, 10, count_cb, &n, &more), 1);
    assert_int_equal(n, 1);
    n = 0;
    assert_int_equal(ims_store_room_history(f->s, "lobby", id, 10, count_cb, &n, &more), 0);
    assert_int_equal(n, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_modes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_batch_waits_for_sync, setup, teardown),
        cmocka_unit_test_setup_teardown(test_read_only_batch_not_counted, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sync_now_and_inline_ops, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reopen_counts_all_as_durable, setup, teardown),
        cmocka_unit_test_setup_teardown(test_history_waits_for_sync, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
