/* Unit tests for server/store_sqlite.c: the durable state of imd (SPEC.md section 9) on a real
 * SQLite database and real libsodium digests. Every store test runs twice: on ":memory:" and
 * on a file in a mkdtemp directory with sync_full=1 (WAL, synchronous=FULL). Persistence,
 * corruption and locking tests use files only. Temporary directories are removed at the end. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <sqlite3.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "imp/imp.h"
#include "files.h"
#include "store.h"

/* ---- fixture -------------------------------------------------------------------------------- */

typedef struct fx {
    int file; /* 1: a file database in a temporary directory, sync_full=1 */
    char dir[64];
    char path[160];
    ims_store *s;
    char last_log[512];
    int nlog;
} fx;

static fx fx_mem = {.file = 0};
static fx fx_file = {.file = 1};

static void log_hook(void *ud, const char *msg)
{
    fx *f = ud;
    snprintf(f->last_log, sizeof f->last_log, "%s", msg);
    f->nlog++;
}

static ims_store *fx_open(fx *f)
{
    ims_store_options o = {f->file ? f->path : ":memory:", f->file, log_hook, f, 0, 0};
    char err[256] = "unset";
    ims_store *s = ims_store_open(&o, err, sizeof err);
    if (s == NULL)
        fail_msg("ims_store_open: %s", err);
    return s;
}

static int setup(void **state)
{
    fx *f = *state;
    f->s = NULL;
    f->nlog = 0;
    f->last_log[0] = '\0';
    snprintf(f->dir, sizeof f->dir, "/tmp/imd-test-store-XXXXXX");
    if (mkdtemp(f->dir) == NULL)
        return -1;
    snprintf(f->path, sizeof f->path, "%s/imd.db", f->dir);
    f->s = fx_open(f);
    return 0;
}

static int teardown(void **state)
{
    fx *f = *state;
    ims_store_close(f->s);
    f->s = NULL;
    tf_rm_tree(f->dir);
    return 0;
}

/* Close and open again (file databases keep their content). */
static void fx_reopen(fx *f)
{
    ims_store_close(f->s);
    f->s = fx_open(f);
}

/* ---- helpers ----------------------------------------------------------------------------------
 */

static int64_t mk_user(ims_store *s, const char *name)
{
    int64_t id = 0;
    assert_int_equal(ims_store_user_create(s, name, "$argon2id$fake", 0, 1000, &id), 0);
    assert_true(id > 0);
    return id;
}

static void digest_of(const char *body, uint8_t d[32])
{
    crypto_generichash(d, 32, (const uint8_t *)body, strlen(body), NULL, 0);
}

static int64_t put_ts = 5000; /* the time put_rc stamps */

static int put_rc(ims_store *s, int64_t sender_id, const char *sender, int kind, const char *target,
                  const char *body, const char *cmid, const int64_t *rcpt, size_t n,
                  int64_t *msg_id, uint64_t *seqs)
{
    ims_message m;
    memset(&m, 0, sizeof m);
    m.sender_id = sender_id;
    snprintf(m.sender, sizeof m.sender, "%s", sender);
    m.target_kind = kind;
    snprintf(m.target, sizeof m.target, "%s", target);
    m.ts_ms = put_ts;
    m.body = (const uint8_t *)body;
    m.body_len = strlen(body);
    uint8_t d[32];
    digest_of(body, d);
    return ims_store_message_put(s, &m, cmid, cmid ? d : NULL, rcpt, n, msg_id, seqs);
}

static int64_t put(ims_store *s, int64_t sender_id, const char *sender, int kind,
                   const char *target, const char *body, const int64_t *rcpt, size_t n,
                   uint64_t *seqs)
{
    int64_t id = 0;
    assert_int_equal(put_rc(s, sender_id, sender, kind, target, body, NULL, rcpt, n, &id, seqs), 0);
    assert_true(id > 0);
    return id;
}

typedef struct got_msg {
    int64_t msg_id, sender_id, ts_ms;
    uint64_t seq;
    int kind;
    char sender[33], target[33];
    char body[128];
    size_t body_len;
    uint8_t headers[32];
    size_t headers_len;
    int headers_null;
} got_msg;

typedef struct got {
    got_msg m[128];
    int n;
    int stop_after; /* 0: never stop */
} got;

static int collect_msg(void *ud, const ims_message *m)
{
    got *g = ud;
    assert_true(g->n < 128);
    got_msg *o = &g->m[g->n++];
    memset(o, 0, sizeof *o);
    o->msg_id = m->msg_id;
    o->sender_id = m->sender_id;
    o->ts_ms = m->ts_ms;
    o->seq = m->seq;
    o->kind = m->target_kind;
    memcpy(o->sender, m->sender, sizeof o->sender);
    memcpy(o->target, m->target, sizeof o->target);
    assert_true(m->body_len < sizeof o->body);
    if (m->body_len)
        memcpy(o->body, m->body, m->body_len);
    o->body_len = m->body_len;
    assert_true(m->headers_len <= sizeof o->headers);
    o->headers_null = m->headers == NULL;
    if (m->headers_len)
        memcpy(o->headers, m->headers, m->headers_len);
    o->headers_len = m->headers_len;
    return g->stop_after && g->n >= g->stop_after;
}

typedef struct names {
    char v[64][33];
    int n;
    int stop_after;
} names;

static int collect_name(void *ud, const char *name)
{
    names *g = ud;
    assert_true(g->n < 64);
    assert_true(strlen(name) <= 32);
    snprintf(g->v[g->n++], 33, "%s", name);
    return g->stop_after && g->n >= g->stop_after;
}

static int collect_user(void *ud, const ims_user *u)
{
    return collect_name(ud, u->name);
}

static int64_t qcount(ims_store *s, int64_t uid)
{
    int64_t c = -1;
    assert_int_equal(ims_store_queue_count(s, uid, &c), 0);
    return c;
}

static int64_t mcount(ims_store *s)
{
    int64_t c = -1;
    assert_int_equal(ims_store_message_count(s, &c), 0);
    return c;
}

static void integrity_ok(ims_store *s)
{
    char err[256] = "";
    int rc = ims_store_integrity_check(s, err, sizeof err);
    if (rc != 0)
        fail_msg("integrity_check: %s", err);
}

/* ---- open, schema, pragmas --------------------------------------------------------------------
 */

static void test_open_bad_arguments(void **state)
{
    (void)state;
    char err[128];
    memset(err, 'x', sizeof err);
    assert_null(ims_store_open(NULL, err, sizeof err));
    assert_true(strlen(err) > 0 && strlen(err) < sizeof err);
    ims_store_options o = {NULL, 0, NULL, NULL, 0, 0};
    memset(err, 'x', sizeof err);
    assert_null(ims_store_open(&o, err, sizeof err));
    assert_true(strlen(err) > 0 && strlen(err) < sizeof err);
    /* A directory that does not exist: SQLite cannot create the file. */
    ims_store_options o2 = {"/tmp/imd-test-store-no-such-dir/x/y.db", 1, NULL, NULL, 0, 0};
    memset(err, 'x', sizeof err);
    assert_null(ims_store_open(&o2, err, sizeof err));
    assert_true(strlen(err) > 0 && strlen(err) < sizeof err);
    /* A tiny error buffer is still NUL-terminated. */
    char small[4];
    memset(small, 'x', sizeof small);
    assert_null(ims_store_open(&o2, small, sizeof small));
    assert_int_equal(small[3], '\0');
    /* NULL store arguments are refused, not dereferenced. */
    ims_user u;
    assert_int_equal(ims_store_begin(NULL), IMP_ERR_INVAL);
    assert_int_equal(ims_store_user_get(NULL, "a", &u), IMP_ERR_INVAL);
    ims_store_close(NULL);
}

/* Reads a pragma of a file database through a separate connection. */
static void pragma_text(const char *path, const char *sql, char *out, size_t outlen)
{
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    sqlite3_stmt *q = NULL;
    assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &q, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(q), SQLITE_ROW);
    snprintf(out, outlen, "%s", (const char *)sqlite3_column_text(q, 0));
    sqlite3_finalize(q);
    sqlite3_close(db);
}

static void exec_sql(const char *path, const char *sql)
{
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    char *msg = NULL;
    int rc = sqlite3_exec(db, sql, NULL, NULL, &msg);
    if (rc != SQLITE_OK)
        fail_msg("%s: %s", sql, msg ? msg : "?");
    sqlite3_close(db);
}

/* Schema version 3: the queue and dedupe tables have no foreign keys (the users row is not
 * looked up for each of their rows); tokens and members keep theirs. */
static void no_user_foreign_keys(const char *path)
{
    char v[64];
    pragma_text(path, "SELECT count(*) FROM pragma_foreign_key_list('queue')", v, sizeof v);
    assert_string_equal(v, "0");
    pragma_text(path, "SELECT count(*) FROM pragma_foreign_key_list('dedupe')", v, sizeof v);
    assert_string_equal(v, "0");
    pragma_text(path, "SELECT count(*) FROM pragma_foreign_key_list('tokens')", v, sizeof v);
    assert_string_equal(v, "1");
    pragma_text(path, "SELECT count(*) FROM pragma_foreign_key_list('members')", v, sizeof v);
    assert_string_equal(v, "2");
}

static void test_schema_and_pragmas(void **state)
{
    fx *f = *state;
    mk_user(f->s, "alice");
    integrity_ok(f->s);
    if (!f->file)
        return;
    char v[64];
    pragma_text(f->path, "PRAGMA journal_mode", v, sizeof v);
    assert_string_equal(v, "wal");
    pragma_text(f->path, "PRAGMA user_version", v, sizeof v);
    assert_string_equal(v, "4");
    pragma_text(f->path,
                "SELECT group_concat(name, ',') FROM (SELECT name FROM sqlite_schema WHERE "
                "type='table' AND name NOT LIKE 'sqlite_%' ORDER BY name)",
                v, sizeof v);
    assert_string_equal(v, "dedupe,members,messages,queue,rooms,tokens,users");
    no_user_foreign_keys(f->path);
    /* Opening again finds the schema and keeps the data. */
    fx_reopen(f);
    ims_user u;
    assert_int_equal(ims_store_user_get(f->s, "alice", &u), 0);
}

static void test_open_refuses_foreign_or_newer_schema(void **state)
{
    fx *f = *state;
    char err[256];
    char path[200];
    /* A newer schema version. */
    ims_store_close(f->s);
    f->s = NULL;
    exec_sql(f->path, "PRAGMA user_version=99");
    ims_store_options o = {f->path, 1, NULL, NULL, 0, 0};
    err[0] = '\0';
    assert_null(ims_store_open(&o, err, sizeof err));
    assert_non_null(strstr(err, "99"));
    /* Some other application's database. */
    snprintf(path, sizeof path, "%s/other.db", f->dir);
    exec_sql(path, "CREATE TABLE users(x); INSERT INTO users VALUES (1)");
    ims_store_options o2 = {path, 1, NULL, NULL, 0, 0};
    err[0] = '\0';
    assert_null(ims_store_open(&o2, err, sizeof err));
    assert_true(strlen(err) > 0);
    /* A file that is not a database at all. */
    snprintf(path, sizeof path, "%s/text.db", f->dir);
    FILE *fp = fopen(path, "w");
    assert_non_null(fp);
    for (int i = 0; i < 200; i++)
        fputs("this is not a database file\n", fp);
    fclose(fp);
    ims_store_options o3 = {path, 1, NULL, NULL, 0, 0};
    err[0] = '\0';
    assert_null(ims_store_open(&o3, err, sizeof err));
    assert_true(strlen(err) > 0);
    exec_sql(f->path, "PRAGMA user_version=2");
    f->s = fx_open(f);
}

/* A database of schema version 1 (every queue entry a reference to a messages row) is migrated
 * to version 2 at open, in one transaction: the entries, the marks, the sequence and the
 * history are kept, the ids go on from the sequence, and acks delete what nobody needs. */
static void test_migrate_schema_1(void **state)
{
    fx *f = *state;
    ims_store_close(f->s);
    f->s = NULL;
    char path[200];
    snprintf(path, sizeof path, "%s/v1.db", f->dir);
    exec_sql(
        path,
        "PRAGMA journal_mode = WAL;"
        "CREATE TABLE users(id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL UNIQUE,"
        " hash TEXT NOT NULL, admin INTEGER NOT NULL DEFAULT 0,"
        " last_seq INTEGER NOT NULL DEFAULT 0, acked_seq INTEGER NOT NULL DEFAULT 0,"
        " created_ms INTEGER NOT NULL);"
        "CREATE TABLE tokens(hash BLOB PRIMARY KEY NOT NULL CHECK (length(hash) = 32),"
        " user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,"
        " expires_ms INTEGER NOT NULL);"
        "CREATE INDEX tokens_user ON tokens(user_id);"
        "CREATE TABLE messages(msg_id INTEGER PRIMARY KEY AUTOINCREMENT,"
        " sender_id INTEGER NOT NULL, sender TEXT NOT NULL, target_kind INTEGER NOT NULL,"
        " target TEXT NOT NULL, ts_ms INTEGER NOT NULL, headers BLOB, body BLOB NOT NULL,"
        " hist INTEGER NOT NULL DEFAULT 0);"
        "CREATE INDEX messages_hist ON messages(target, msg_id) WHERE hist = 1;"
        "CREATE TABLE queue(user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,"
        " seq INTEGER NOT NULL, msg_id INTEGER NOT NULL REFERENCES messages(msg_id),"
        " PRIMARY KEY(user_id, seq)) WITHOUT ROWID;"
        "CREATE INDEX queue_msg ON queue(msg_id);"
        "CREATE TABLE dedupe(sender_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,"
        " client_msg_id TEXT NOT NULL, msg_id INTEGER NOT NULL, digest BLOB,"
        " ts_ms INTEGER NOT NULL, PRIMARY KEY(sender_id, client_msg_id)) WITHOUT ROWID;"
        "CREATE INDEX dedupe_ts ON dedupe(ts_ms);"
        "CREATE TABLE rooms(name TEXT PRIMARY KEY NOT NULL, created_ms INTEGER NOT NULL)"
        " WITHOUT ROWID;"
        "CREATE TABLE members(room TEXT NOT NULL REFERENCES rooms(name) ON DELETE CASCADE,"
        " user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,"
        " PRIMARY KEY(room, user_id)) WITHOUT ROWID;"
        "CREATE INDEX members_user ON members(user_id, room);"
        "INSERT INTO users(name, hash, last_seq, acked_seq, created_ms) VALUES"
        " ('alice', 'h', 0, 0, 1), ('bob', 'h', 4, 2, 1), ('carol', 'h', 1, 0, 1);"
        "INSERT INTO rooms VALUES ('lobby', 1);"
        "INSERT INTO members VALUES ('lobby', 2), ('lobby', 3);"
        "INSERT INTO messages(msg_id, sender_id, sender, target_kind, target, ts_ms, body,"
        " hist) VALUES (3, 1, 'alice', 1, 'bob', 10, x'6431', 0),"
        " (7, 1, 'alice', 2, 'lobby', 11, x'7231', 1);"
        "UPDATE sqlite_sequence SET seq = 9 WHERE name = 'messages';"
        "INSERT INTO queue VALUES (2, 3, 3), (2, 4, 7), (3, 1, 7);"
        "INSERT INTO dedupe VALUES (1, 'cm-1', 3, NULL, 10);"
        "PRAGMA application_id = 1768776753; PRAGMA user_version = 1;");
    ims_store_options o = {path, 1, log_hook, f, 0, 0};
    char err[256] = "";
    ims_store *s = ims_store_open(&o, err, sizeof err);
    if (s == NULL)
        fail_msg("open: %s", err);
    char v[64];
    pragma_text(path, "PRAGMA user_version", v, sizeof v);
    assert_string_equal(v, "4");
    no_user_foreign_keys(path);
    integrity_ok(s);
    ims_user bob, carol;
    assert_int_equal(ims_store_user_get(s, "bob", &bob), 0);
    assert_int_equal(ims_store_user_get(s, "carol", &carol), 0);
    assert_int_equal(bob.last_seq, 4);
    assert_int_equal(bob.acked_seq, 2);
    got g = {.n = 0};
    assert_int_equal(ims_store_queue_read(s, bob.id, 0, 10, collect_msg, &g), 2);
    assert_int_equal(g.m[0].seq, 3);
    assert_int_equal(g.m[0].msg_id, 3);
    assert_memory_equal(g.m[0].body, "d1", 2);
    assert_int_equal(g.m[1].seq, 4);
    assert_int_equal(g.m[1].msg_id, 7);
    assert_int_equal(g.m[1].kind, 2);
    assert_string_equal(g.m[1].target, "lobby");
    int64_t mid = 0;
    assert_int_equal(ims_store_dedupe_get(s, 1, "cm-1", &mid, NULL), 1);
    assert_int_equal(mid, 3);
    /* new messages: ids after the sequence (never 8 or 9 again), the direct one inline */
    uint64_t seqs[1];
    int64_t rb[] = {bob.id};
    int64_t id = put(s, 1, "alice", 1, "bob", "d2", rb, 1, seqs);
    assert_int_equal(id, 10);
    assert_int_equal(seqs[0], 5);
    assert_int_equal(mcount(s), 3);
    g.n = 0;
    assert_int_equal(ims_store_queue_read(s, bob.id, 4, 10, collect_msg, &g), 1);
    assert_int_equal(g.m[0].msg_id, 10);
    assert_memory_equal(g.m[0].body, "d2", 2);
    /* bob acks all: the old direct message and the new one go, the room message stays (carol
     * has it, and it is history) */
    assert_int_equal(ims_store_queue_ack(s, bob.id, 5, NULL), 0);
    assert_int_equal(mcount(s), 1);
    int more = 0;
    g.n = 0;
    assert_int_equal(ims_store_room_history(s, "lobby", 0, 10, collect_msg, &g, &more), 1);
    assert_memory_equal(g.m[0].body, "r1", 2);
    integrity_ok(s);
    ims_store_close(s);
    /* and it opens again as version 3 */
    s = ims_store_open(&o, err, sizeof err);
    if (s == NULL)
        fail_msg("reopen: %s", err);
    g.n = 0;
    assert_int_equal(ims_store_queue_read(s, carol.id, 0, 10, collect_msg, &g), 1);
    assert_memory_equal(g.m[0].body, "r1", 2);
    integrity_ok(s);
    ims_store_close(s);
    f->s = fx_open(f);
}

/* A schema version 2 database (the queue and dedupe tables with foreign keys on users) is
 * migrated to version 3 when opened: entries, marks, dedupe rows and the sequence are kept. */
static void test_migrate_schema_2(void **state)
{
    fx *f = *state;
    char path[200];
    snprintf(path, sizeof path, "%s/v2.db", f->dir);
    exec_sql(
        path,
        "PRAGMA journal_mode = WAL;"
        "CREATE TABLE users(id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL UNIQUE,"
        " hash TEXT NOT NULL, admin INTEGER NOT NULL DEFAULT 0,"
        " last_seq INTEGER NOT NULL DEFAULT 0, acked_seq INTEGER NOT NULL DEFAULT 0,"
        " created_ms INTEGER NOT NULL);"
        "CREATE TABLE tokens(hash BLOB PRIMARY KEY NOT NULL CHECK (length(hash) = 32),"
        " user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,"
        " expires_ms INTEGER NOT NULL);"
        "CREATE INDEX tokens_user ON tokens(user_id);"
        "CREATE TABLE messages(msg_id INTEGER PRIMARY KEY AUTOINCREMENT,"
        " sender_id INTEGER NOT NULL, sender TEXT NOT NULL, target_kind INTEGER NOT NULL,"
        " target TEXT NOT NULL, ts_ms INTEGER NOT NULL, headers BLOB, body BLOB NOT NULL,"
        " hist INTEGER NOT NULL DEFAULT 0);"
        "CREATE INDEX messages_hist ON messages(target, msg_id) WHERE hist = 1;"
        "CREATE TABLE queue(user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,"
        " seq INTEGER NOT NULL, msg_id INTEGER NOT NULL, inl INTEGER NOT NULL DEFAULT 0,"
        " sender_id INTEGER, sender TEXT, target TEXT, ts_ms INTEGER, headers BLOB, body BLOB,"
        " PRIMARY KEY(user_id, seq)) WITHOUT ROWID;"
        "CREATE INDEX queue_msg ON queue(msg_id) WHERE inl = 0;"
        "CREATE TABLE dedupe(sender_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,"
        " client_msg_id TEXT NOT NULL, msg_id INTEGER NOT NULL, digest BLOB,"
        " ts_ms INTEGER NOT NULL, PRIMARY KEY(sender_id, client_msg_id)) WITHOUT ROWID;"
        "CREATE INDEX dedupe_ts ON dedupe(ts_ms);"
        "CREATE TABLE rooms(name TEXT PRIMARY KEY NOT NULL, created_ms INTEGER NOT NULL)"
        " WITHOUT ROWID;"
        "CREATE TABLE members(room TEXT NOT NULL REFERENCES rooms(name) ON DELETE CASCADE,"
        " user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,"
        " PRIMARY KEY(room, user_id)) WITHOUT ROWID;"
        "CREATE INDEX members_user ON members(user_id, room);"
        "INSERT INTO users(name, hash, last_seq, acked_seq, created_ms) VALUES"
        " ('alice', 'h', 0, 0, 1), ('bob', 'h', 3, 1, 1), ('carol', 'h', 1, 0, 1);"
        "INSERT INTO rooms VALUES ('lobby', 1);"
        "INSERT INTO members VALUES ('lobby', 2), ('lobby', 3);"
        "INSERT INTO messages(msg_id, sender_id, sender, target_kind, target, ts_ms, body,"
        " hist) VALUES (7, 1, 'alice', 2, 'lobby', 11, x'7231', 1);"
        "UPDATE sqlite_sequence SET seq = 9 WHERE name = 'messages';"
        "INSERT INTO queue(user_id, seq, msg_id, inl, sender_id, sender, target, ts_ms, headers,"
        " body) VALUES (2, 2, 6, 1, 1, 'alice', 'bob', 10, x'0001', x'6432'),"
        " (2, 3, 7, 0, NULL, NULL, NULL, NULL, NULL, NULL), (3, 1, 7, 0, NULL, NULL, NULL, NULL,"
        " NULL, NULL);"
        "INSERT INTO dedupe VALUES (1, 'cm-6', 6, NULL, 10), (2, 'cm-b', 5, NULL, 9);"
        "PRAGMA application_id = 1768776753; PRAGMA user_version = 2;");
    ims_store_options o = {path, 1, log_hook, f, 0, 0};
    char err[256] = "";
    ims_store *s = ims_store_open(&o, err, sizeof err);
    if (s == NULL)
        fail_msg("open: %s", err);
    char v[64];
    pragma_text(path, "PRAGMA user_version", v, sizeof v);
    assert_string_equal(v, "4");
    no_user_foreign_keys(path);
    integrity_ok(s);
    ims_user bob;
    assert_int_equal(ims_store_user_get(s, "bob", &bob), 0);
    got g = {.n = 0};
    assert_int_equal(ims_store_queue_read(s, bob.id, 0, 10, collect_msg, &g), 2);
    assert_int_equal(g.m[0].seq, 2);
    assert_int_equal(g.m[0].msg_id, 6);
    assert_memory_equal(g.m[0].body, "d2", 2);
    assert_int_equal(g.m[0].headers_len, 2);
    assert_int_equal(g.m[1].msg_id, 7);
    assert_string_equal(g.m[1].target, "lobby");
    int64_t mid = 0;
    assert_int_equal(ims_store_dedupe_get(s, 1, "cm-6", &mid, NULL), 1);
    assert_int_equal(mid, 6);
    /* the sequence goes on; deleting bob deletes his dedupe rows too (no cascade any more) */
    int64_t rb[] = {bob.id};
    uint64_t seqs[1];
    assert_int_equal(put(s, 1, "alice", 1, "bob", "d3", rb, 1, seqs), 10);
    assert_int_equal(seqs[0], 4);
    assert_int_equal(ims_store_user_delete(s, bob.id), 0);
    assert_int_equal(ims_store_dedupe_get(s, bob.id, "cm-b", &mid, NULL), 0);
    integrity_ok(s);
    ims_store_close(s);
}

/* Without foreign keys on queue and dedupe, rows of a user who does not exist (left by a hand
 * edit or a damaged file) are found by the integrity check; and the store itself refuses a
 * dedupe row for a sender who does not exist, as the foreign key did. */
static void test_integrity_rows_of_no_user(void **state)
{
    fx *f = *state;
    ims_store *s = f->s;
    int64_t a = mk_user(s, "alice"), b = mk_user(s, "bob");
    int64_t rb[] = {b}, mid = 0;
    assert_int_equal(put_rc(s, 9999, "ghost", 1, "bob", "x", "cm-g", rb, 1, &mid, NULL),
                     IMP_ERR_NO_SUCH_USER);
    assert_int_equal(ims_store_dedupe_get(s, 9999, "cm-g", &mid, NULL), 0);
    assert_int_equal(qcount(s, b), 0);
    assert_int_equal(ims_store_begin(s), 0); /* and in a batch */
    assert_int_equal(put_rc(s, 9999, "ghost", 1, "bob", "x", "cm-g", rb, 1, &mid, NULL),
                     IMP_ERR_NO_SUCH_USER);
    assert_int_equal(put_rc(s, a, "alice", 1, "bob", "y", "cm-a", rb, 1, &mid, NULL), 0);
    assert_int_equal(ims_store_commit(s), 0);
    assert_int_equal(qcount(s, b), 1);
    integrity_ok(s);
    if (!f->file)
        return;
    char err[256] = "";
    exec_sql(f->path, "INSERT INTO queue(user_id, seq, msg_id, inl, sender_id, sender, target, "
                      "ts_ms, body) VALUES (9999, 1, 1, 1, 1, 'a', 'b', 1, x'00')");
    assert_int_equal(ims_store_integrity_check(s, err, sizeof err), IMP_ERR_STORAGE);
    assert_non_null(strstr(err, "belongs to no user"));
    exec_sql(f->path, "DELETE FROM queue WHERE user_id = 9999;"
                      "INSERT INTO dedupe VALUES (9999, 'cm-x', 1, NULL, 1)");
    assert_int_equal(ims_store_integrity_check(s, err, sizeof err), IMP_ERR_STORAGE);
    assert_non_null(strstr(err, "dedupe entry 9999/cm-x belongs to no user"));
    exec_sql(f->path, "DELETE FROM dedupe WHERE sender_id = 9999");
    integrity_ok(s);
}

/* ---- users ------------------------------------------------------------------------------------
 */

static void test_users_crud(void **state)
{
    fx *f = *state;
    ims_store *s = f->s;
    int64_t a = 0, b = 0;
    assert_int_equal(ims_store_user_create(s, "alice", "hash-a", 1, 111, &a), 0);
    assert_int_equal(ims_store_user_create(s, "bob", "hash-b", 0, 222, &b), 0);
    assert_true(a > 0 && b > 0 && a != b);
    assert_int_equal(ims_store_user_create(s, "carol", "hash-c", 0, 333, NULL), 0);
    /* Uniqueness: the store compares the (already folded) names as bytes. */
    assert_int_equal(ims_store_user_create(s, "alice", "other", 0, 1, NULL), IMP_ERR_USER_EXISTS);
    int64_t cnt = 0;
    assert_int_equal(ims_store_user_count(s, &cnt), 0);
    assert_int_equal(cnt, 3);

    ims_user u;
    assert_int_equal(ims_store_user_get(s, "alice", &u), 0);
    assert_int_equal(u.id, a);
    assert_string_equal(u.name, "alice");
    assert_string_equal(u.hash, "hash-a");
    assert_int_equal(u.admin, 1);
    assert_int_equal(u.last_seq, 0);
    assert_int_equal(u.acked_seq, 0);
    assert_int_equal(u.created_ms, 111);
    assert_int_equal(ims_store_user_get_id(s, b, &u), 0);
    assert_string_equal(u.name, "bob");
    assert_int_equal(u.admin, 0);
    assert_int_equal(u.created_ms, 222);
    assert_int_equal(ims_store_user_get(s, "nobody", &u), IMP_ERR_NO_SUCH_USER);
    assert_int_equal(ims_store_user_get_id(s, 9999, &u), IMP_ERR_NO_SUCH_USER);

    assert_int_equal(ims_store_user_set_hash(s, a, "hash-a2"), 0);
    assert_int_equal(ims_store_user_set_admin(s, a, 0), 0);
    assert_int_equal(ims_store_user_set_admin(s, b, 1), 0);
    assert_int_equal(ims_store_user_get(s, "alice", &u), 0);
    assert_string_equal(u.hash, "hash-a2");
    assert_int_equal(u.admin, 0);
    assert_int_equal(ims_store_user_get(s, "bob", &u), 0);
    assert_int_equal(u.admin, 1);
    assert_int_equal(ims_store_user_set_hash(s, 9999, "x"), IMP_ERR_NO_SUCH_USER);
    assert_int_equal(ims_store_user_set_admin(s, 9999, 1), IMP_ERR_NO_SUCH_USER);

    assert_int_equal(ims_store_user_delete(s, b), 0);
    assert_int_equal(ims_store_user_get(s, "bob", &u), IMP_ERR_NO_SUCH_USER);
    assert_int_equal(ims_store_user_delete(s, b), IMP_ERR_NO_SUCH_USER);
    assert_int_equal(ims_store_user_count(s, &cnt), 0);
    assert_int_equal(cnt, 2);
    /* The name is free again, with a new id (ids are never reused). */
    int64_t b2 = 0;
    assert_int_equal(ims_store_user_create(s, "bob", "h", 0, 1, &b2), 0);
    assert_true(b2 > b);
    integrity_ok(s);
}

static void test_users_bad_input(void **state)
{
    fx *f = *state;
    ims_store *s = f->s;
    char longname[40];
    memset(longname, 'a', 33);
    longname[33] = '\0';
    char longhash[200];
    memset(longhash, 'h', 128);
    longhash[128] = '\0';
    assert_int_equal(ims_store_user_create(s, NULL, "h", 0, 1, NULL), IMP_ERR_INVAL);
    assert_int_equal(ims_store_user_create(s, "", "h", 0, 1, NULL), IMP_ERR_INVAL);
    assert_int_equal(ims_store_user_create(s, longname, "h", 0, 1, NULL), IMP_ERR_INVAL);
    assert_int_equal(ims_store_user_create(s, "a", NULL, 0, 1, NULL), IMP_ERR_INVAL);
    assert_int_equal(ims_store_user_create(s, "a", longhash, 0, 1, NULL), IMP_ERR_INVAL);
    longname[32] = '\0'; /* 32 bytes: the longest name */
    longhash[127] = '\0';
    int64_t id;
    assert_int_equal(ims_store_user_create(s, longname, longhash, 0, 1, &id), 0);
    ims_user u;
    assert_int_equal(ims_store_user_get(s, longname, &u), 0);
    assert_string_equal(u.name, longname);
    assert_string_equal(u.hash, longhash);
    longname[32] = 'a';
    assert_int_equal(ims_store_user_get(s, longname, &u), IMP_ERR_NO_SUCH_USER);
    assert_int_equal(ims_store_user_get(s, NULL, &u), IMP_ERR_INVAL);
    assert_int_equal(ims_store_user_get(s, "a", NULL), IMP_ERR_INVAL);
    assert_int_equal(ims_store_user_set_hash(s, id, longhash), 0);
    longhash[127] = 'h';
    assert_int_equal(ims_store_user_set_hash(s, id, longhash), IMP_ERR_INVAL);
    assert_int_equal(ims_store_user_set_hash(s, id, NULL), IMP_ERR_INVAL);
    names g = {.n = 0};
    assert_int_equal(ims_store_user_list(s, "", -1, collect_user, &g), IMP_ERR_INVAL);
    assert_int_equal(ims_store_user_list(s, "", 0, collect_user, &g), 0);
    assert_int_equal(g.n, 0);
    assert_int_equal(ims_store_user_list(s, "", 5, NULL, NULL), IMP_ERR_INVAL);
}

static void test_users_list_paging(void **state)
{
    fx *f = *state;
    ims_store *s = f->s;
    const char *order[] = {"amy", "bea", "cid", "dan", "eve", "fay", "gus"};
    /* Created out of order: the list is in name order. */
    const int create[] = {3, 0, 6, 1, 5, 2, 4};
    for (int i = 0; i < 7; i++)
        mk_user(s, order[create[i]]);
    names g = {.n = 0};
    assert_int_equal(ims_store_user_list(s, "", 3, collect_user, &g), 3);
    assert_int_equal(g.n, 3);
    for (int i = 0; i < 3; i++)
        assert_string_equal(g.v[i], order[i]);
    names g2 = {.n = 0};
    assert_int_equal(ims_store_user_list(s, g.v[2], 3, collect_user, &g2), 3);
    for (int i = 0; i < 3; i++)
        assert_string_equal(g2.v[i], order[3 + i]);
    names g3 = {.n = 0};
    assert_int_equal(ims_store_user_list(s, g2.v[2], 3, collect_user, &g3), 1);
    assert_string_equal(g3.v[0], "gus");
    names g4 = {.n = 0};
    assert_int_equal(ims_store_user_list(s, "gus", 3, collect_user, &g4), 0);
    /* Early stop: the callback's non-zero return ends the walk; it counts as passed. */
    names g5 = {.n = 0, .stop_after = 2};
    assert_int_equal(ims_store_user_list(s, "", 100, collect_user, &g5), 2);
    assert_int_equal(g5.n, 2);
}

static void test_all_user_ids(void **state)
{
    fx *f = *state;
    ims_store *s = f->s;
    int64_t *ids = (int64_t *)1;
    size_t n = 99;
    assert_int_equal(ims_store_all_user_ids(s, &ids, &n), 0);
    assert_int_equal(n, 0);
    free(ids);
    int64_t want[40];
    char name[16];
    for (int i = 0; i < 40; i++) {
        snprintf(name, sizeof name, "u%02d", 39 - i);
        want[i] = mk_user(s, name);
    }
    assert_int_equal(ims_store_user_delete(s, want[7]), 0);
    assert_int_equal(ims_store_all_user_ids(s, &ids, &n), 0);
    assert_int_equal(n, 39);
    for (size_t i = 0, k = 0; i < 40; i++) {
        if (i == 7)
            continue;
        assert_int_equal(ids[k++], want[i]);
    }
    free(ids);
    assert_int_equal(ims_store_all_user_ids(s, NULL, &n), IMP_ERR_INVAL);
}

/* ---- tokens -----------------------------------------------------------------------------------
 */

static void test_tokens(void **state)
{
    fx *f = *state;
    ims_store *s = f->s;
    int64_t a = mk_user(s, "alice"), b = mk_user(s, "bob");
    uint8_t t1[32], t2[32], t3[32], t4[32];
    crypto_generichash(t1, 32, (const uint8_t *)"token-1", 7, NULL, 0);
    crypto_generichash(t2, 32, (const uint8_t *)"token-2", 7, NULL, 0);
    crypto_generichash(t3, 32, (const uint8_t *)"token-3", 7, NULL, 0);
    crypto_generichash(t4, 32, (const uint8_t *)"token-4", 7, NULL, 0);
    assert_int_equal(ims_store_token_add(s, a, t1, 1000), 0);
    assert_int_equal(ims_store_token_add(s, a, t2, 2000), 0);
    assert_int_equal(ims_store_token_add(s, b, t3, 3000), 0);
    assert_int_equal(ims_store_token_add(s, 9999, t4, 3000), IMP_ERR_NO_SUCH_USER);
    int64_t uid = 0;
    assert_int_equal(ims_store_token_check(s, t1, 999, &uid), 0);
    assert_int_equal(uid, a);
    assert_int_equal(ims_store_token_check(s, t3, 0, &uid), 0);
    assert_int_equal(uid, b);
    /* Expired at expires_ms. */
    assert_int_equal(ims_store_token_check(s, t1, 1000, &uid), IMP_ERR_TOKEN_INVALID);
    assert_int_equal(ims_store_token_check(s, t4, 0, &uid), IMP_ERR_TOKEN_INVALID);
    /* Expiry removes exactly the expired ones. */
    assert_int_equal(ims_store_token_expire(s, 2500), 2);
    assert_int_equal(ims_store_token_expire(s, 2500), 0);
    assert_int_equal(ims_store_token_check(s, t2, 0, &uid), IMP_ERR_TOKEN_INVALID);
    assert_int_equal(ims_store_token_check(s, t3, 2500, &uid), 0);
    assert_int_equal(ims_store_token_delete(s, t3), 0);
    assert_int_equal(ims_store_token_check(s, t3, 0, &uid), IMP_ERR_TOKEN_INVALID);
    assert_int_equal(ims_store_token_delete(s, t3), 0);
    /* Deleting a user deletes their tokens. */
    assert_int_equal(ims_store_token_add(s, b, t4, 9000), 0);
    assert_int_equal(ims_store_token_check(s, t4, 0, &uid), 0);
    assert_int_equal(ims_store_user_delete(s, b), 0);
    assert_int_equal(ims_store_token_check(s, t4, 0, &uid), IMP_ERR_TOKEN_INVALID);
    assert_int_equal(ims_store_token_add(s, a, NULL, 1), IMP_ERR_INVAL);
    assert_int_equal(ims_store_token_check(s, NULL, 1, &uid), IMP_ERR_INVAL);
    integrity_ok(s);
    if (f->file) {
        /* Only the 32-byte hash is stored. */
        assert_int_equal(ims_store_token_add(s, a, t2, 9000), 0);
        fx_reopen(f);
        char v[64];
        pragma_text(f->path, "SELECT count(*) || ':' || sum(length(hash)) FROM tokens", v,
                    sizeof v);
        assert_string_equal(v, "1:32");
    }
}

/* ---- messages and queues ----------------------------------------------------------------------
 */

/* IMP-DELIV-002: each recipient gets its own next sequence number, contiguous from 1;
 * IMP-DELIV-008: a message is stored once and queued for every recipient. */
static void test_message_put_fanout_seqs(void **state)
{
    fx *f = *state;
    ims_store *s = f->s;
    int64_t a = mk_user(s, "alice"), b = mk_user(s, "bob"), c = mk_user(s, "carol");
    uint64_t seqs[8];
    int64_t r1[] = {b};
    int64_t id1 = put(s, a, "alice", 1, "bob", "one", r1, 1, seqs);
    assert_int_equal(seqs[0], 1);
    /* Duplicates in the list are queued once and get the same seq. */
    int64_t r2[] = {a, b, c, b, a};
    int64_t id2 = put(s, a, "alice", 2, "room", "two", r2, 5, seqs);
    assert_true(id2 > id1);
    assert_int_equal(seqs[0], 1); /* alice's first */
    assert_int_equal(seqs[1], 2); /* bob's second */
    assert_int_equal(seqs[2], 1); /* carol's first */
    assert_int_equal(seqs[3], 2);
    assert_int_equal(seqs[4], 1);
    int64_t r3[] = {c, b};
    int64_t id3 = put(s, b, "bob", 2, "room", "three", r3, 2, NULL);
    assert_true(id3 > id2);
    ims_user u;
    assert_int_equal(ims_store_user_get_id(s, a, &u), 0);
    assert_int_equal(u.last_seq, 1);
    assert_int_equal(ims_store_user_get_id(s, b, &u), 0);
    assert_int_equal(u.last_seq, 3);
    assert_int_equal(ims_store_user_get_id(s, c, &u), 0);
    assert_int_equal(u.last_seq, 2);
    assert_int_equal(qcount(s, a), 1);
    assert_int_equal(qcount(s, b), 3);
    assert_int_equal(qcount(s, c), 2);
    /* Stored once: three messages, whatever the fan-out. */
    assert_int_equal(mcount(s), 3);
    /* bob's queue: seqs 1, 2, 3 in order with the right messages. */
    got g = {.n = 0};
    assert_int_equal(ims_store_queue_read(s, b, 0, 10, collect_msg, &g), 3);
    for (int i = 0; i < 3; i++)
        assert_int_equal(g.m[i].seq, (uint64_t)i + 1);
    assert_int_equal(g.m[0].msg_id, id1);
    assert_int_equal(g.m[1].msg_id, id2);
    assert_int_equal(g.m[2].msg_id, id3);
    integrity_ok(s);
}

/* A large fan-out (a room with many members), duplicates included: every distinct recipient is
 * queued once, seqs[i] agrees for equal ids. */
static void test_message_put_large_fanout(void **state)
{
    fx *f = *state;
    ims_store *s = f->s;
    int64_t ids[60];
    char name[16];
    for (int i = 0; i < 60; i++) {
        snprintf(name, sizeof name, "m%02d", i);
        ids[i] = mk_user(s, name);
    }
    /* 60 members, then 40 duplicates in scrambled order. */
    int64_t r[100];
    for (int i = 0; i < 60; i++)
        r[i] = ids[(i * 7) % 60];
    for (int i = 0; i < 40; i++)
        r[60 + i] = ids[(i * 13) % 60];
    uint64_t seqs[100];
    put(s, ids[0], "m00", 2, "big", "x", r, 100, seqs);
    for (int i = 0; i < 100; i++)
        assert_int_equal(seqs[i], 1);
    put(s, ids[0], "m00", 2, "big", "y", r, 100, seqs);
    for (int i = 0; i < 100; i++)
        assert_int_equal(seqs[i], 2);
    for (int i = 0; i < 60; i++)
        assert_int_equal(qcount(s, ids[i]), 2);
    integrity_ok(s);
}

static void test_message_put_errors_store_nothing(void **state)
{
    fx *f = *state;
    ims_store *s = f->s;
    int64_t a = mk_user(s, "alice"), b = mk_user(s, "bob");
    int64_t r[] = {b, 9999};
    int64_t mid = 0;
    uint64_t seqs[2];
    /* An unknown recipient after a known one: bob's seq must not be used up. */
    assert_int_equal(put_rc(s, a, "alice", 1, "bob", "x", "c1", r, 2, &mid, seqs),
                     IMP_ERR_NO_SUCH_USER);
    ims_user u;
    assert_int_equal(ims_store_user_get_id(s, b, &u), 0);
    assert_int_equal(u.last_seq, 0);
    assert_int_equal(qcount(s, b), 0);
    assert_int_equal(mcount(s), 0);
    int64_t got_id = 0;
    assert_int_equal(ims_store_dedupe_get(s, a, "c1", &got_id, NULL), 0);
    /* Bad arguments. */
    ims_message m;
    memset(&m, 0, sizeof m);
    m.sender_id = a;
    m.target_kind = 1;
    m.body_len = 3; /* with a NULL body */
    assert_int_equal(ims_store_message_put(s, &m, NULL, NULL, r, 1, &mid, NULL), IMP_ERR_INVAL);
    m.body_len = 0;
    m.target_kind = 0;
    assert_int_equal(ims_store_message_put(s, &m, NULL, NULL, r, 1, &mid, NULL), IMP_ERR_INVAL);
    m.target_kind = 1;
    memset(m.target, 'x', sizeof m.target); /* not NUL-terminated */
    assert_int_equal(ims_store_message_put(s, &m, NULL, NULL, r, 1, &mid, NULL), IMP_ERR_INVAL);
    m.target[0] = '\0';
    assert_int_equal(ims_store_message_put(s, &m, NULL, NULL, NULL, 1, &mid, NULL), IMP_ERR_INVAL);
    assert_int_equal(ims_store_message_put(s, NULL, NULL, NULL, r, 1, &mid, NULL), IMP_ERR_INVAL);
    assert_int_equal(ims_store_message_put(s, &m, NULL, NULL, r, 1, NULL, NULL), IMP_ERR_INVAL);
    /* A client_msg_id without its digest. */
    assert_int_equal(ims_store_message_put(s, &m, "c2", NULL, r, 1, &mid, NULL), IMP_ERR_INVAL);
    assert_int_equal(mcount(s), 0);
    /* An empty body and no headers are fine. */
    assert_int_equal(ims_store_message_put(s, &m, NULL, NULL, r, 1, &mid, seqs), 0);
    assert_int_equal(seqs[0], 1);
    got g = {.n = 0};
    assert_int_equal(ims_store_queue_read(s, b, 0, 10, collect_msg, &g), 1);
    assert_int_equal(g.m[0].body_len, 0);
    assert_int_equal(g.m[0].headers_len, 0);
    assert_true(g.m[0].headers_null);
    integrity_ok(s);
}

/* IMP-DELIV-004: a user's queue is read in seq order from after_seq on. */
static void test_queue_read(void **state)
{
    fx *f = *state;
    ims_store *s = f->s;
    int64_t a = mk_user(s, "alice"), b = mk_user(s, "bob");
    int64_t r[] = {b};
    const uint8_t hdr[] = {0x00, 0x05, 'k', '=', 0x00, 'v', 0x01};
    int64_t ids[10];
    for (int i = 0; i < 10; i++) {
        char body[16];
        snprintf(body, sizeof body, "msg-%d", i);
        ims_message m;
        memset(&m, 0, sizeof m);
        m.sender_id = a;
        snprintf(m.sender, sizeof m.sender, "alice");
        m.target_kind = 1;
        snprintf(m.target, sizeof m.target, "bob");
        m.ts_ms = 1000 + i;
        m.body = (const uint8_t *)body;
        m.body_len = strlen(body);
        if (i % 2) {
            m.headers = hdr;
            m.headers_len = sizeof hdr;
        }
        assert_int_equal(ims_store_message_put(s, &m, NULL, NULL, r, 1, &ids[i], NULL), 0);
        if (i)
            assert_true(ids[i] > ids[i - 1]); /* IMP-DELIV-006: ascending ids */
    }
    got g = {.n = 0};
    assert_int_equal(ims_store_queue_read(s, b, 0, 100, collect_msg, &g), 10);
    for (int i = 0; i < 10; i++) {
        char body[16];
        snprintf(body, sizeof body, "msg-%d", i);
        got_msg *m = &g.m[i];
        assert_int_equal(m->seq, (uint64_t)i + 1);
        assert_int_equal(m->msg_id, ids[i]);
        assert_int_equal(m->sender_id, a);
        assert_string_equal(m->sender, "alice");
        assert_int_equal(m->kind, 1);
        assert_string_equal(m->target, "bob");
        assert_int_equal(m->ts_ms, 1000 + i);
        assert_int_equal(m->body_len, strlen(body));
        assert_memory_equal(m->body, body, m->body_len);
        if (i % 2) {
            assert_int_equal(m->headers_len, sizeof hdr);
            assert_memory_equal(m->headers, hdr, sizeof hdr);
        } else {
            assert_int_equal(m->headers_len, 0);
            assert_true(m->headers_null);
        }
    }
    /* after_seq and limit. */
    got g2 = {.n = 0};
    assert_int_equal(ims_store_queue_read(s, b, 4, 3, collect_msg, &g2), 3);
    assert_int_equal(g2.m[0].seq, 5);
    assert_int_equal(g2.m[2].seq, 7);
    got g3 = {.n = 0};
    assert_int_equal(ims_store_queue_read(s, b, 10, 3, collect_msg, &g3), 0);
    got g4 = {.n = 0};
    assert_int_equal(ims_store_queue_read(s, b, UINT64_MAX, 3, collect_msg, &g4), 0);
    got g5 = {.n = 0, .stop_after = 2};
    assert_int_equal(ims_store_queue_read(s, b, 0, 100, collect_msg, &g5), 2);
    got g6 = {.n = 0};
    assert_int_equal(ims_store_queue_read(s, a, 0, 100, collect_msg, &g6), 0);
    assert_int_equal(ims_store_queue_read(s, b, 0, -1, collect_msg, &g6), IMP_ERR_INVAL);
    assert_int_equal(ims_store_queue_read(s, b, 0, 1, NULL, NULL), IMP_ERR_INVAL);
}

/* IMP-DELIV-003: cumulative acknowledgement, BAD_REQUEST above last_seq, idempotent below the
 * acked mark; acknowledged entries are deleted. */
static void test_queue_ack(void **state)
{
    fx *f = *state;
    ims_store *s = f->s;
    int64_t a = mk_user(s, "alice"), b = mk_user(s, "bob");
    uint64_t acked = 77;
    /* Nothing assigned yet: DELIVERED(1) is above last_seq 0; DELIVERED(0) changes nothing. */
    assert_int_equal(ims_store_queue_ack(s, b, 1, &acked), IMP_ERR_BAD_REQUEST);
    assert_int_equal(ims_store_queue_ack(s, b, 0, &acked), 0);
    assert_int_equal(acked, 0);
    int64_t r[] = {b};
    for (int i = 0; i < 5; i++)
        put(s, a, "alice", 1, "bob", "m", r, 1, NULL);
    assert_int_equal(qcount(s, b), 5);
    assert_int_equal(ims_store_queue_ack(s, b, 6, &acked), IMP_ERR_BAD_REQUEST);
    assert_int_equal(ims_store_queue_ack(s, b, UINT64_MAX, &acked), IMP_ERR_BAD_REQUEST);
    assert_int_equal(qcount(s, b), 5);
    assert_int_equal(ims_store_queue_ack(s, b, 2, &acked), 0);
    assert_int_equal(acked, 2);
    assert_int_equal(qcount(s, b), 3); /* IMP-DELIV-007: the quota counts unacked entries */
    ims_user u;
    assert_int_equal(ims_store_user_get_id(s, b, &u), 0);
    assert_int_equal(u.acked_seq, 2);
    assert_int_equal(u.last_seq, 5);
    /* Entries <= acked are gone even when read from 0. */
    got g = {.n = 0};
    assert_int_equal(ims_store_queue_read(s, b, 0, 100, collect_msg, &g), 3);
    assert_int_equal(g.m[0].seq, 3);
    assert_int_equal(g.m[2].seq, 5);
    /* At or below the mark: nothing changes, the mark stays. */
    assert_int_equal(ims_store_queue_ack(s, b, 1, &acked), 0);
    assert_int_equal(acked, 2);
    assert_int_equal(ims_store_queue_ack(s, b, 2, NULL), 0);
    assert_int_equal(qcount(s, b), 3);
    /* Up to last_seq exactly. */
    assert_int_equal(ims_store_queue_ack(s, b, 5, &acked), 0);
    assert_int_equal(acked, 5);
    assert_int_equal(qcount(s, b), 0);
    assert_int_equal(ims_store_queue_ack(s, b, 5, &acked), 0);
    assert_int_equal(ims_store_queue_ack(s, b, 6, &acked), IMP_ERR_BAD_REQUEST);
    /* Acknowledged by their only recipient, the messages are deleted. */
    assert_int_equal(mcount(s), 0);
    /* The sequence goes on after the mark. */
    uint64_t seqs[1];
    put(s, a, "alice", 1, "bob", "m6", r, 1, seqs);
    assert_int_equal(seqs[0], 6);
    assert_int_equal(qcount(s, b), 1);
    assert_int_equal(ims_store_queue_ack(s, 9999, 0, &acked), IMP_ERR_NO_SUCH_USER);
    int64_t c;
    assert_int_equal(ims_store_queue_count(s, 9999, &c), IMP_ERR_NO_SUCH_USER);
    integrity_ok(s);
}

/* A message queued for several users is kept until the last of them acknowledges it. */
static void test_ack_deletes_message_after_last_recipient(void **state)
{
    fx *f = *state;
    ims_store *s = f->s;
    int64_t a = mk_user(s, "alice"), b = mk_user(s, "bob"), c = mk_user(s, "carol");
    int64_t r[] = {b, c};
    put(s, a, "alice", 3, "", "broadcast", r, 2, NULL);
    assert_int_equal(mcount(s), 1);
    assert_int_equal(ims_store_queue_ack(s, b, 1, NULL), 0);
    assert_int_equal(mcount(s), 1);
    got g = {.n = 0};
    assert_int_equal(ims_store_queue_read(s, c, 0, 10, collect_msg, &g), 1);
    assert_memory_equal(g.m[0].body, "broadcast", 9);
    assert_int_equal(g.m[0].kind, 3);
    assert_string_equal(g.m[0].target, "");
    assert_int_equal(ims_store_queue_ack(s, c, 1, NULL), 0);
    assert_int_equal(mcount(s), 0);
    integrity_ok(s);
    /* one ack over several messages (they are deleted in one statement): only those nobody
     * else holds go; a room message in its room's history stays */
    int64_t rb[] = {b};
    assert_int_equal(ims_store_room_join(s, "lobby", b, 1, NULL), 0);
    put(s, a, "alice", 3, "", "bc1", r, 2, NULL);      /* b 2, c 2 */
    put(s, a, "alice", 1, "bob", "d1", rb, 1, NULL);   /* b 3 */
    put(s, a, "alice", 3, "", "bc2", r, 2, NULL);      /* b 4, c 3 */
    put(s, a, "alice", 2, "lobby", "r1", rb, 1, NULL); /* b 5, history */
    put(s, a, "alice", 1, "bob", "d2", rb, 1, NULL);   /* b 6 */
    assert_int_equal(mcount(s), 5);
    assert_int_equal(ims_store_queue_ack(s, b, 6, NULL), 0);
    assert_int_equal(mcount(s), 3); /* bc1, bc2 (carol), r1 (history) */
    g.n = 0;
    assert_int_equal(ims_store_queue_read(s, c, 0, 10, collect_msg, &g), 2);
    assert_memory_equal(g.m[0].body, "bc1", 3);
    assert_memory_equal(g.m[1].body, "bc2", 3);
    assert_int_equal(ims_store_queue_ack(s, c, 3, NULL), 0);
    assert_int_equal(mcount(s), 1);
    integrity_ok(s);
}

/* IMP-DELIV-005: a sender's CLIENT_MSG_ID maps to the first message and its digest. */
/* Expiry works in bounded batches (about IMS_DEDUPE_EXPIRE_BATCH rows per call, through the
 * index on ts_ms: the first version's DELETE ... IN (subquery) searched the primary key by
 * sender only and scanned every entry of the sender per row, 4.5x slower under load), so that
 * the server's tick never stalls on a large table; what remains goes on the next calls. */
static void test_dedupe_expire_batches(void **state)
{
    fx *f = *state;
    ims_store *s = f->s;
    int64_t a = mk_user(s, "alice"), b = mk_user(s, "bob");
    int64_t r[] = {b};
    int n = IMS_DEDUPE_EXPIRE_BATCH * 2 + 500;
    for (int i = 0; i < n; i++) {
        char cmid[32];
        snprintf(cmid, sizeof cmid, "b-%d", i);
        int64_t id = 0;
        put_ts = 10000 + i / 4; /* four entries per millisecond */
        assert_int_equal(put_rc(s, a, "alice", 1, "bob", "x", cmid, r, 1, &id, NULL), 0);
    }
    put_ts = 5000;
    int64_t first = 0;
    assert_int_equal(ims_store_dedupe_get(s, a, "b-0", &first, NULL), 1);
    assert_int_equal(ims_store_dedupe_expire(s, 10000), 0); /* none older than 10000 */
    /* everything older than the last millisecond: n - 4 entries, in bounded calls */
    int total = 0, calls = 0, k;
    while ((k = ims_store_dedupe_expire(s, 10000 + (n - 1) / 4)) > 0) {
        assert_true(k <= IMS_DEDUPE_EXPIRE_BATCH);
        total += k;
        calls++;
        assert_true(calls <= 10);
    }
    assert_int_equal(k, 0);
    assert_int_equal(total, n - 4);
    assert_true(calls >= 3);
    assert_int_equal(ims_store_dedupe_get(s, a, "b-0", &first, NULL), 0);
    char last[32];
    snprintf(last, sizeof last, "b-%d", n - 1);
    assert_int_equal(ims_store_dedupe_get(s, a, last, &first, NULL), 1);
    /* entries sharing one timestamp go together even when they are more than a batch */
    for (int i = 0; i < IMS_DEDUPE_EXPIRE_BATCH + 10; i++) {
        char cmid[32];
        snprintf(cmid, sizeof cmid, "same-%d", i);
        int64_t id = 0;
        put_ts = 20000;
        assert_int_equal(put_rc(s, a, "alice", 1, "bob", "x", cmid, r, 1, &id, NULL), 0);
    }
    put_ts = 5000;
    total = 0;
    while ((k = ims_store_dedupe_expire(s, 20001)) > 0)
        total += k;
    assert_int_equal(total, 4 + IMS_DEDUPE_EXPIRE_BATCH + 10);
}

static void test_dedupe(void **state)
{
    fx *f = *state;
    ims_store *s = f->s;
    int64_t a = mk_user(s, "alice"), b = mk_user(s, "bob");
    int64_t r[] = {b};
    int64_t id1 = 0, got_id = 0;
    uint8_t d[32], want[32];
    assert_int_equal(ims_store_dedupe_get(s, a, "c-1", &got_id, d), 0);
    assert_int_equal(put_rc(s, a, "alice", 1, "bob", "hello", "c-1", r, 1, &id1, NULL), 0);
    digest_of("hello", want);
    memset(d, 0, sizeof d);
    assert_int_equal(ims_store_dedupe_get(s, a, "c-1", &got_id, d), 1);
    assert_int_equal(got_id, id1);
    assert_memory_equal(d, want, 32);
    assert_int_equal(ims_store_dedupe_get(s, a, "c-1", &got_id, NULL), 1);
    /* Per sender. */
    assert_int_equal(ims_store_dedupe_get(s, b, "c-1", &got_id, d), 0);
    /* Storing the same CLIENT_MSG_ID again is refused and stores nothing. */
    int64_t id2 = 0;
    assert_int_equal(put_rc(s, a, "alice", 1, "bob", "other", "c-1", r, 1, &id2, NULL),
                     IMP_ERR_ID_CONFLICT);
    assert_int_equal(qcount(s, b), 1);
    assert_int_equal(mcount(s), 1);
    assert_int_equal(ims_store_dedupe_get(s, a, "c-1", &got_id, d), 1);
    assert_int_equal(got_id, id1);
    assert_memory_equal(d, want, 32);
    /* "" and NULL: no dedupe entry. */
    assert_int_equal(put_rc(s, a, "alice", 1, "bob", "x", "", r, 1, &id2, NULL), 0);
    assert_int_equal(put_rc(s, a, "alice", 1, "bob", "x", "", r, 1, &id2, NULL), 0);
    assert_int_equal(ims_store_dedupe_get(s, a, "", &got_id, d), 0);
    /* The entry outlives the message (the retry may come after the recipient acked). */
    assert_int_equal(ims_store_queue_ack(s, b, 3, NULL), 0);
    assert_int_equal(mcount(s), 0);
    assert_int_equal(ims_store_dedupe_get(s, a, "c-1", &got_id, d), 1);
    assert_int_equal(got_id, id1);
    /* A later message never reuses a deleted message's id (IMP-DELIV-006). */
    int64_t id3 = put(s, a, "alice", 1, "bob", "y", r, 1, NULL);
    assert_true(id3 > id2);
    /* Expiry by message time (put_rc stamps 5000). */
    assert_int_equal(ims_store_dedupe_expire(s, 5000), 0);
    assert_int_equal(ims_store_dedupe_expire(s, 5001), 1);
    assert_int_equal(ims_store_dedupe_get(s, a, "c-1", &got_id, d), 0);
    /* Deleting the sender deletes their entries. */
    assert_int_equal(put_rc(s, a, "alice", 1, "bob", "z", "c-2", r, 1, &id2, NULL), 0);
    assert_int_equal(ims_store_user_delete(s, a), 0);
    assert_int_equal(ims_store_dedupe_get(s, a, "c-2", &got_id, d), 0);
    assert_int_equal(ims_store_dedupe_get(s, a, NULL, &got_id, d), IMP_ERR_INVAL);
    integrity_ok(s);
}

/* ---- rooms ------------------------------------------------------------------------------------
 */

static void test_rooms_membership(void **state)
{
    fx *f = *state;
    ims_store *s = f->s;
    int64_t a = mk_user(s, "alice"), b = mk_user(s, "bob"), c = mk_user(s, "carol");
    int created = -1;
    assert_int_equal(ims_store_room_is_member(s, "lobby", a), IMP_ERR_NO_SUCH_ROOM);
    assert_int_equal(ims_store_room_join(s, "lobby", a, 10, &created), 0);
    assert_int_equal(created, 1);
    assert_int_equal(ims_store_room_join(s, "lobby", a, 11, &created), 0);
    assert_int_equal(created, 0); /* joining twice is not an error */
    assert_int_equal(ims_store_room_join(s, "lobby", c, 12, &created), 0);
    assert_int_equal(created, 0);
    assert_int_equal(ims_store_room_join(s, "lobby", b, 12, NULL), 0);
    assert_int_equal(ims_store_room_join(s, "dev", b, 13, &created), 0);
    assert_int_equal(created, 1);
    assert_int_equal(ims_store_room_is_member(s, "lobby", a), 1);
    assert_int_equal(ims_store_room_is_member(s, "dev", a), 0);
    assert_int_equal(ims_store_room_is_member(s, "dev", b), 1);
    /* An unknown user cannot join, and the room it named is not created. */
    assert_int_equal(ims_store_room_join(s, "ghost", 9999, 14, &created), IMP_ERR_NO_SUCH_USER);
    assert_int_equal(ims_store_room_is_member(s, "ghost", a), IMP_ERR_NO_SUCH_ROOM);

    int64_t *ids = NULL;
    size_t n = 0;
    assert_int_equal(ims_store_room_member_ids(s, "lobby", &ids, &n), 0);
    assert_int_equal(n, 3);
    int seen = 0;
    for (size_t i = 0; i < n; i++)
        seen |= (ids[i] == a) | (ids[i] == b) << 1 | (ids[i] == c) << 2;
    assert_int_equal(seen, 7);
    free(ids);
    assert_int_equal(ims_store_room_member_ids(s, "nope", &ids, &n), IMP_ERR_NO_SUCH_ROOM);

    names g = {.n = 0};
    assert_int_equal(ims_store_room_members(s, "lobby", "", 2, collect_name, &g), 2);
    assert_string_equal(g.v[0], "alice");
    assert_string_equal(g.v[1], "bob");
    names g2 = {.n = 0};
    assert_int_equal(ims_store_room_members(s, "lobby", "bob", 2, collect_name, &g2), 1);
    assert_string_equal(g2.v[0], "carol");
    assert_int_equal(ims_store_room_members(s, "nope", "", 2, collect_name, &g2),
                     IMP_ERR_NO_SUCH_ROOM);

    names r = {.n = 0};
    assert_int_equal(ims_store_room_list(s, "", 10, collect_name, &r), 2);
    assert_string_equal(r.v[0], "dev");
    assert_string_equal(r.v[1], "lobby");
    names r2 = {.n = 0};
    assert_int_equal(ims_store_room_list(s, "dev", 10, collect_name, &r2), 1);
    assert_string_equal(r2.v[0], "lobby");
    names r3 = {.n = 0};
    assert_int_equal(ims_store_room_list(s, "", 1, collect_name, &r3), 1);

    names ur = {.n = 0};
    assert_int_equal(ims_store_user_rooms(s, b, collect_name, &ur), 2);
    assert_string_equal(ur.v[0], "dev");
    assert_string_equal(ur.v[1], "lobby");

    assert_int_equal(ims_store_room_leave(s, "lobby", a), 0);
    assert_int_equal(ims_store_room_leave(s, "lobby", a), IMP_ERR_NOT_MEMBER);
    assert_int_equal(ims_store_room_leave(s, "nope", a), IMP_ERR_NO_SUCH_ROOM);
    assert_int_equal(ims_store_room_is_member(s, "lobby", a), 0);
    names ur2 = {.n = 0};
    assert_int_equal(ims_store_user_rooms(s, a, collect_name, &ur2), 0);
    /* Deleting a user removes their memberships. */
    assert_int_equal(ims_store_user_delete(s, c), 0);
    assert_int_equal(ims_store_room_member_ids(s, "lobby", &ids, &n), 0);
    assert_int_equal(n, 1);
    assert_int_equal(ids[0], b);
    free(ids);
    /* A room whose last member left still exists (empty). */
    assert_int_equal(ims_store_room_leave(s, "dev", b), 0);
    assert_int_equal(ims_store_room_member_ids(s, "dev", &ids, &n), 0);
    assert_int_equal(n, 0);
    free(ids);
    char longname[40];
    memset(longname, 'r', 33);
    longname[33] = '\0';
    assert_int_equal(ims_store_room_join(s, longname, a, 1, &created), IMP_ERR_INVAL);
    assert_int_equal(ims_store_room_join(s, "", a, 1, &created), IMP_ERR_INVAL);
    assert_int_equal(ims_store_room_join(s, NULL, a, 1, &created), IMP_ERR_INVAL);
    integrity_ok(s);
}

/* Room history: newest first, before_id paging, MORE; pruning keeps history_max messages.
 * IMP-DELIV-008: pruned messages still queued for offline members remain deliverable. */
static void test_room_history_and_prune(void **state)
{
    fx *f = *state;
    ims_store *s = f->s;
    int64_t a = mk_user(s, "alice"), b = mk_user(s, "bob");
    assert_int_equal(ims_store_room_join(s, "lobby", a, 1, NULL), 0);
    assert_int_equal(ims_store_room_join(s, "lobby", b, 1, NULL), 0);
    assert_int_equal(ims_store_room_join(s, "empty", b, 1, NULL), 0);
    int64_t r[] = {a, b};
    int64_t ids[10];
    int64_t rb[] = {b};
    for (int i = 0; i < 10; i++) {
        char body[16];
        snprintf(body, sizeof body, "r%d", i);
        ids[i] = put(s, a, "alice", 2, "lobby", body, r, 2, NULL);
        /* Direct messages and other rooms are not lobby history. */
        put(s, a, "alice", 1, "bob", "direct", rb, 1, NULL);
    }
    got g = {.n = 0};
    int more = -1;
    assert_int_equal(ims_store_room_history(s, "lobby", 0, 3, collect_msg, &g, &more), 3);
    assert_int_equal(more, 1);
    assert_int_equal(g.m[0].msg_id, ids[9]);
    assert_int_equal(g.m[1].msg_id, ids[8]);
    assert_int_equal(g.m[2].msg_id, ids[7]);
    assert_memory_equal(g.m[0].body, "r9", 2);
    assert_int_equal(g.m[0].kind, 2);
    assert_string_equal(g.m[0].target, "lobby");
    assert_string_equal(g.m[0].sender, "alice");
    got g2 = {.n = 0};
    assert_int_equal(ims_store_room_history(s, "lobby", g.m[2].msg_id, 7, collect_msg, &g2, &more),
                     7);
    assert_int_equal(more, 0);
    assert_int_equal(g2.m[0].msg_id, ids[6]);
    assert_int_equal(g2.m[6].msg_id, ids[0]);
    got g3 = {.n = 0};
    assert_int_equal(ims_store_room_history(s, "lobby", ids[1], 7, collect_msg, &g3, &more), 1);
    assert_int_equal(more, 0);
    got g4 = {.n = 0};
    assert_int_equal(ims_store_room_history(s, "lobby", ids[2], 2, collect_msg, &g4, &more), 2);
    assert_int_equal(more, 0);
    assert_int_equal(ims_store_room_history(s, "lobby", ids[3], 2, collect_msg, &g4, &more), 2);
    assert_int_equal(more, 1);
    got g5 = {.n = 0};
    assert_int_equal(ims_store_room_history(s, "empty", 0, 5, collect_msg, &g5, &more), 0);
    assert_int_equal(more, 0);
    assert_int_equal(ims_store_room_history(s, "nope", 0, 5, collect_msg, &g5, &more),
                     IMP_ERR_NO_SUCH_ROOM);

    /* Everyone acknowledges everything: the room messages stay as history, the direct ones go. */
    assert_int_equal(ims_store_queue_ack(s, a, 10, NULL), 0);
    assert_int_equal(ims_store_queue_ack(s, b, 20, NULL), 0);
    assert_int_equal(mcount(s), 10);
    /* bob gets a new room message while offline, then the history is pruned to 4. */
    ids[0] = put(s, a, "alice", 2, "lobby", "late", rb, 1, NULL);
    assert_int_equal(ims_store_room_prune(s, "lobby", 4), 0);
    got g6 = {.n = 0};
    assert_int_equal(ims_store_room_history(s, "lobby", 0, 100, collect_msg, &g6, &more), 4);
    assert_int_equal(more, 0);
    assert_int_equal(g6.m[0].msg_id, ids[0]);
    assert_int_equal(g6.m[3].msg_id, ids[7]);
    assert_int_equal(mcount(s), 4);
    /* Pruned below the newest one, which bob has not acknowledged: still in bob's queue. */
    assert_int_equal(ims_store_room_prune(s, "lobby", 0), 0);
    got g7 = {.n = 0};
    assert_int_equal(ims_store_room_history(s, "lobby", 0, 100, collect_msg, &g7, &more), 0);
    assert_int_equal(mcount(s), 1);
    got g8 = {.n = 0};
    assert_int_equal(ims_store_queue_read(s, b, 0, 10, collect_msg, &g8), 1);
    assert_memory_equal(g8.m[0].body, "late", 4);
    assert_int_equal(ims_store_queue_ack(s, b, g8.m[0].seq, NULL), 0);
    assert_int_equal(mcount(s), 0);
    assert_int_equal(ims_store_room_prune(s, "nope", 4), IMP_ERR_NO_SUCH_ROOM);
    assert_int_equal(ims_store_room_prune(s, "lobby", -1), IMP_ERR_INVAL);
    assert_int_equal(ims_store_room_history(s, "lobby", -5, 2, collect_msg, &g8, &more),
                     IMP_ERR_INVAL);
    integrity_ok(s);
}

static int hist_len(ims_store *s, const char *room)
{
    got g = {.n = 0};
    int more = 0;
    int n = ims_store_room_history(s, room, 0, 100, collect_msg, &g, &more);
    assert_true(n >= 0);
    return n;
}

/* The prune after each room message keeps the history at history_max exactly, also when the
 * store skips the query because it knows the room's count (the count is only ever too high
 * after a rolled-back batch, which makes it look again), when history_max changes, and after
 * a reopening. */
static void test_room_prune_counts(void **state)
{
    fx *f = *state;
    int64_t a = mk_user(f->s, "alice"), b = mk_user(f->s, "bob");
    int64_t r[] = {a, b};
    assert_int_equal(ims_store_room_join(f->s, "lobby", a, 1, NULL), 0);
    assert_int_equal(ims_store_room_join(f->s, "lobby", b, 1, NULL), 0);
    for (int i = 0; i < 40; i++) {
        int batch = i % 3 == 0;
        if (batch)
            assert_int_equal(ims_store_begin(f->s), 0);
        put(f->s, a, "alice", 2, "lobby", "m", r, 2, NULL);
        assert_int_equal(ims_store_room_prune(f->s, "lobby", 10), 0);
        if (batch)
            assert_int_equal(ims_store_commit(f->s), 0);
        assert_int_equal(hist_len(f->s, "lobby"), i < 10 ? i + 1 : 10);
    }
    assert_int_equal(ims_store_room_prune(f->s, "lobby", 4), 0); /* lowered */
    assert_int_equal(hist_len(f->s, "lobby"), 4);
    put(f->s, a, "alice", 2, "lobby", "m", r, 2, NULL);
    assert_int_equal(ims_store_room_prune(f->s, "lobby", 10), 0); /* raised */
    assert_int_equal(hist_len(f->s, "lobby"), 5);
    for (int i = 0; i < 5; i++) {
        put(f->s, a, "alice", 2, "lobby", "m", r, 2, NULL);
        assert_int_equal(ims_store_room_prune(f->s, "lobby", 10), 0);
    }
    assert_int_equal(hist_len(f->s, "lobby"), 10);
    if (f->file) {
        /* a batch with room messages and a prune, rolled back whole (a planted failure) */
        exec_sql(f->path, "CREATE TRIGGER no_delete BEFORE DELETE ON queue "
                          "BEGIN SELECT RAISE(ABORT, 'planted'); END");
        assert_int_equal(ims_store_begin(f->s), 0);
        for (int i = 0; i < 3; i++)
            put(f->s, a, "alice", 2, "lobby", "lost", r, 2, NULL);
        assert_int_equal(ims_store_room_prune(f->s, "lobby", 10), 0);
        put(f->s, a, "alice", 2, "lobby", "lost", r, 2, NULL);
        assert_int_equal(ims_store_queue_ack(f->s, b, 1, NULL), IMP_ERR_STORAGE);
        assert_int_equal(ims_store_commit(f->s), IMP_ERR_STORAGE);
        exec_sql(f->path, "DROP TRIGGER no_delete");
        assert_int_equal(hist_len(f->s, "lobby"), 10);
        for (int i = 0; i < 4; i++) {
            put(f->s, a, "alice", 2, "lobby", "m", r, 2, NULL);
            assert_int_equal(ims_store_room_prune(f->s, "lobby", 10), 0);
            assert_int_equal(hist_len(f->s, "lobby"), 10);
        }
        fx_reopen(f);
        for (int i = 0; i < 3; i++) {
            put(f->s, a, "alice", 2, "lobby", "m", r, 2, NULL);
            assert_int_equal(ims_store_room_prune(f->s, "lobby", 10), 0);
            assert_int_equal(hist_len(f->s, "lobby"), 10);
        }
    }
    assert_int_equal(ims_store_room_prune(f->s, "nope", 10), IMP_ERR_NO_SUCH_ROOM);
    integrity_ok(f->s);
}

/* ---- user delete ------------------------------------------------------------------------------
 */

static void test_user_delete_removes_everything(void **state)
{
    fx *f = *state;
    ims_store *s = f->s;
    int64_t a = mk_user(s, "alice"), b = mk_user(s, "bob"), c = mk_user(s, "carol");
    int64_t rb[] = {b}, rbc[] = {b, c};
    uint8_t t[32] = {1, 2, 3};
    assert_int_equal(ims_store_token_add(s, b, t, 1000), 0);
    assert_int_equal(ims_store_room_join(s, "lobby", b, 1, NULL), 0);
    put(s, a, "alice", 1, "bob", "only bob", rb, 1, NULL);
    put(s, a, "alice", 3, "", "bob and carol", rbc, 2, NULL);
    int64_t mid;
    assert_int_equal(
        put_rc(s, b, "bob", 1, "carol", "from bob", "cm", (int64_t[]){c}, 1, &mid, NULL), 0);
    assert_int_equal(mcount(s), 3);
    assert_int_equal(ims_store_user_delete(s, b), 0);
    /* bob's queue is gone and with it the message only he had; carol keeps hers, including
     * the one bob sent. */
    assert_int_equal(mcount(s), 2);
    assert_int_equal(qcount(s, c), 2);
    int64_t uid;
    assert_int_equal(ims_store_token_check(s, t, 0, &uid), IMP_ERR_TOKEN_INVALID);
    assert_int_equal(ims_store_room_is_member(s, "lobby", b), 0);
    assert_int_equal(ims_store_dedupe_get(s, b, "cm", &mid, NULL), 0);
    assert_int_equal(ims_store_queue_count(s, b, &uid), IMP_ERR_NO_SUCH_USER);
    integrity_ok(s);
}

/* ---- batches ----------------------------------------------------------------------------------
 */

/* IMP-DELIV-001 group commit: a failing operation inside a batch is undone alone; the batch
 * stays usable and commits the rest. */
static void test_batch_failure_isolated(void **state)
{
    fx *f = *state;
    ims_store *s = f->s;
    int64_t a = mk_user(s, "alice"), b = mk_user(s, "bob");
    assert_int_equal(ims_store_in_batch(s), 0);
    assert_int_equal(ims_store_commit(s), 0); /* no batch: no-op */
    assert_int_equal(ims_store_begin(s), 0);
    assert_int_equal(ims_store_in_batch(s), 1);
    assert_int_equal(ims_store_begin(s), 0); /* already open: no-op */
    assert_int_equal(ims_store_in_batch(s), 1);
    int64_t r[] = {b};
    uint64_t seqs[2];
    put(s, a, "alice", 1, "bob", "first", r, 1, seqs);
    assert_int_equal(seqs[0], 1);
    assert_int_equal(ims_store_user_create(s, "carol", "h", 0, 1, NULL), 0);
    /* Fails after its message row and bob's queue entry were written. */
    int64_t bad[] = {b, 9999};
    int64_t mid;
    assert_int_equal(put_rc(s, a, "alice", 1, "bob", "bad", "cm-bad", bad, 2, &mid, seqs),
                     IMP_ERR_NO_SUCH_USER);
    assert_int_equal(ims_store_user_create(s, "alice", "h", 0, 1, NULL), IMP_ERR_USER_EXISTS);
    assert_int_equal(ims_store_queue_ack(s, b, 5, NULL), IMP_ERR_BAD_REQUEST);
    assert_int_equal(ims_store_in_batch(s), 1);
    /* Reads see the batch's own writes; nothing of the failed put is left. */
    ims_user u;
    assert_int_equal(ims_store_user_get(s, "carol", &u), 0);
    assert_int_equal(qcount(s, b), 1);
    put(s, a, "alice", 1, "bob", "second", r, 1, seqs);
    assert_int_equal(seqs[0], 2);
    assert_int_equal(ims_store_commit(s), 0);
    assert_int_equal(ims_store_in_batch(s), 0);
    if (f->file)
        fx_reopen(f);
    s = f->s;
    assert_int_equal(ims_store_user_get(s, "carol", &u), 0);
    got g = {.n = 0};
    assert_int_equal(ims_store_queue_read(s, b, 0, 10, collect_msg, &g), 2);
    assert_memory_equal(g.m[0].body, "first", 5);
    assert_memory_equal(g.m[1].body, "second", 6);
    assert_int_equal(mcount(s), 2);
    assert_int_equal(ims_store_dedupe_get(s, a, "cm-bad", &mid, NULL), 0);
    integrity_ok(s);
}

/* users.last_seq/acked_seq of another connection (what a second process sees): -1 if no row. */
static void marks_outside(const char *path, int64_t id, int64_t *last, int64_t *acked)
{
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    sqlite3_stmt *q = NULL;
    assert_int_equal(
        sqlite3_prepare_v2(db, "SELECT last_seq, acked_seq FROM users WHERE id = ?1", -1, &q, NULL),
        SQLITE_OK);
    sqlite3_bind_int64(q, 1, id);
    *last = *acked = -1;
    if (sqlite3_step(q) == SQLITE_ROW) {
        *last = sqlite3_column_int64(q, 0);
        *acked = sqlite3_column_int64(q, 1);
    }
    sqlite3_finalize(q);
    sqlite3_close(db);
}

/* Issue 3 (durable throughput): in a batch the seq and ack marks are kept in memory and written
 * into the users row once, in the same transaction, just before COMMIT: readers of the store see
 * them at once, other processes only with the commit, and a failed operation takes its changes
 * back. IMP-DELIV-002 (seqs), IMP-DELIV-003 (acks). */
static void test_batch_marks_written_at_commit(void **state)
{
    fx *f = *state;
    ims_store *s = f->s;
    int64_t a = mk_user(s, "alice"), b = mk_user(s, "bob"), c = mk_user(s, "carol");
    int64_t rb[] = {b}, rc[] = {c}, bad[] = {b, c, 9999};
    uint64_t seqs[3];
    int64_t last = 0, acked = 0, mid = 0;
    assert_int_equal(ims_store_begin(s), 0);
    for (int i = 0; i < 3; i++) {
        put(s, a, "alice", 1, "bob", "m", rb, 1, seqs);
        assert_int_equal(seqs[0], (uint64_t)i + 1);
    }
    uint64_t acked_out = 0;
    assert_int_equal(ims_store_queue_ack(s, b, 2, &acked_out), 0);
    assert_int_equal(acked_out, 2);
    /* a failing operation: bob's and carol's seqs are given back */
    assert_int_equal(put_rc(s, a, "alice", 1, "bob", "x", NULL, bad, 3, &mid, seqs),
                     IMP_ERR_NO_SUCH_USER);
    assert_int_equal(ims_store_queue_ack(s, b, 4, NULL), IMP_ERR_BAD_REQUEST);
    ims_user u;
    assert_int_equal(ims_store_user_get_id(s, b, &u), 0);
    assert_int_equal(u.last_seq, 3);
    assert_int_equal(u.acked_seq, 2);
    assert_int_equal(qcount(s, b), 1);
    assert_int_equal(qcount(s, c), 0);
    if (f->file) {
        marks_outside(f->path, b, &last, &acked);
        assert_int_equal(last, 0); /* not committed yet */
        assert_int_equal(acked, 0);
    }
    put(s, a, "alice", 1, "carol", "c1", rc, 1, seqs);
    assert_int_equal(seqs[0], 1);
    /* carol deleted in the batch: no seq for her any more, and no row written back */
    assert_int_equal(ims_store_user_delete(s, c), 0);
    assert_int_equal(put_rc(s, a, "alice", 1, "carol", "c2", NULL, rc, 1, &mid, seqs),
                     IMP_ERR_NO_SUCH_USER);
    assert_int_equal(ims_store_queue_count(s, c, &last), IMP_ERR_NO_SUCH_USER);
    assert_int_equal(ims_store_commit(s), 0);
    if (f->file) {
        marks_outside(f->path, b, &last, &acked);
        assert_int_equal(last, 3);
        assert_int_equal(acked, 2);
        marks_outside(f->path, c, &last, &acked);
        assert_int_equal(last, -1);
    }
    assert_int_equal(ims_store_user_get_id(s, b, &u), 0);
    assert_int_equal(u.last_seq, 3);
    assert_int_equal(u.acked_seq, 2);
    integrity_ok(s);
    /* the next transaction reads the rows again: a change made in between by someone else
     * (here: bob's row deleted behind the store's back) is seen */
    if (f->file) {
        sqlite3 *db = NULL;
        char sql[256];
        snprintf(sql, sizeof sql,
                 "PRAGMA foreign_keys = ON; DELETE FROM queue WHERE user_id = %lld;"
                 "DELETE FROM users WHERE id = %lld; DELETE FROM messages WHERE hist = 0 AND "
                 "msg_id NOT IN (SELECT msg_id FROM queue)",
                 (long long)b, (long long)b);
        assert_int_equal(sqlite3_open(f->path, &db), SQLITE_OK);
        assert_int_equal(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
        sqlite3_close(db);
        assert_int_equal(ims_store_begin(s), 0);
        assert_int_equal(put_rc(s, a, "alice", 1, "bob", "y", NULL, rb, 1, &mid, seqs),
                         IMP_ERR_NO_SUCH_USER);
        assert_int_equal(ims_store_commit(s), 0);
        integrity_ok(s);
    }
    /* outside a batch each operation commits its own marks */
    int64_t d = mk_user(s, "dave"), rd[] = {d};
    put(s, a, "alice", 1, "dave", "d1", rd, 1, seqs);
    put(s, a, "alice", 1, "dave", "d2", rd, 1, seqs);
    assert_int_equal(seqs[0], 2);
    assert_int_equal(ims_store_queue_ack(s, d, 1, NULL), 0);
    if (f->file) {
        marks_outside(f->path, d, &last, &acked);
        assert_int_equal(last, 2);
        assert_int_equal(acked, 1);
    }
    assert_int_equal(qcount(s, d), 1);
    integrity_ok(s);
}

/* A direct message in a batch runs without a SAVEPOINT (issue 3): a refusal found before anything
 * was written (an unknown recipient, a reused CLIENT_MSG_ID) changes nothing and the batch goes
 * on; a failure after a write (here: the queue entry collides with one planted behind the
 * store's back) rolls the whole batch back, so its COMMIT fails and nothing of it is kept. */
static void test_direct_put_failures_in_batch(void **state)
{
    fx *f = *state;
    ims_store *s = f->s;
    int64_t a = mk_user(s, "alice"), b = mk_user(s, "bob");
    int64_t rb[] = {b}, nobody[] = {9999};
    uint64_t seqs[1];
    int64_t mid = 0;
    put(s, a, "alice", 1, "bob", "first", rb, 1, seqs);
    assert_int_equal(ims_store_begin(s), 0);
    assert_int_equal(put_rc(s, a, "alice", 1, "x", "m", "cm-x", nobody, 1, &mid, seqs),
                     IMP_ERR_NO_SUCH_USER);
    assert_int_equal(put_rc(s, a, "alice", 1, "bob", "m", "cm-1", rb, 1, &mid, seqs), 0);
    assert_int_equal(seqs[0], 2);
    int64_t id1 = mid;
    assert_int_equal(put_rc(s, a, "alice", 1, "bob", "m", "cm-1", rb, 1, &mid, seqs),
                     IMP_ERR_ID_CONFLICT);
    assert_int_equal(put_rc(s, a, "alice", 1, "bob", "m2", NULL, rb, 1, &mid, seqs), 0);
    assert_int_equal(seqs[0], 3);
    assert_int_equal(mid, id1 + 1); /* the refusals used up no id */
    assert_int_equal(ims_store_commit(s), 0);
    assert_int_equal(ims_store_dedupe_get(s, a, "cm-x", &mid, NULL), 0);
    assert_int_equal(qcount(s, b), 3);
    integrity_ok(s);
    if (!f->file)
        return;
    /* plant bob's seq 4 so that the next direct message's entry collides */
    char sql[200];
    snprintf(sql, sizeof sql,
             "INSERT INTO queue(user_id, seq, msg_id, inl, sender_id, sender, target, ts_ms, body)"
             " VALUES (%lld, 4, 1000, 1, %lld, 'alice', 'bob', 1, x'00')",
             (long long)b, (long long)a);
    exec_sql(f->path, sql);
    /* schema version 4: a direct message of a batch is written with the batch's others (packed
     * entries) before the next operation with a SAVEPOINT or the COMMIT; the collision is
     * found then, and the whole batch is rolled back, nothing of it kept */
    assert_int_equal(ims_store_begin(s), 0);
    assert_int_equal(put_rc(s, a, "alice", 1, "bob", "c1", NULL, rb, 1, &mid, seqs), 0);
    assert_int_equal(ims_store_user_create(s, "carol", "h", 0, 1, NULL), IMP_ERR_STORAGE);
    assert_int_equal(put_rc(s, a, "alice", 1, "bob", "c0", NULL, rb, 1, &mid, seqs),
                     IMP_ERR_STORAGE); /* refused: the batch is gone */
    assert_int_equal(ims_store_commit(s), IMP_ERR_STORAGE);
    ims_user u;
    assert_int_equal(ims_store_user_get(s, "carol", &u), IMP_ERR_NO_SUCH_USER);
    assert_int_equal(qcount(s, b), 3);
    /* found at COMMIT: the same, with a dedupe row among the batch's writes */
    assert_int_equal(ims_store_begin(s), 0);
    assert_int_equal(ims_store_user_create(s, "dave", "h", 0, 1, NULL), 0);
    assert_int_equal(put_rc(s, a, "alice", 1, "bob", "c2", "cm-2", rb, 1, &mid, seqs), 0);
    assert_int_equal(ims_store_commit(s), IMP_ERR_STORAGE);
    assert_int_equal(ims_store_in_batch(s), 0);
    assert_int_equal(ims_store_user_get(s, "dave", &u), IMP_ERR_NO_SUCH_USER);
    assert_int_equal(ims_store_dedupe_get(s, a, "cm-2", &mid, NULL), 0);
    /* and the store works on */
    snprintf(sql, sizeof sql, "DELETE FROM queue WHERE user_id = %lld AND seq = 4", (long long)b);
    exec_sql(f->path, sql);
    put(s, a, "alice", 1, "bob", "after", rb, 1, seqs);
    assert_int_equal(seqs[0], 4);
    integrity_ok(s);
}

/* An ack in a batch takes no SAVEPOINT: a refused one (above last_seq) changes nothing and the
 * batch goes on; one that fails after it began deleting rolls the whole batch back, so nothing
 * of the batch is acknowledged (a trigger makes the delete fail). */
static void test_ack_failures_in_batch(void **state)
{
    fx *f = *state;
    ims_store *s = f->s;
    int64_t a = mk_user(s, "alice"), b = mk_user(s, "bob"), c = mk_user(s, "carol");
    int64_t rb[] = {b}, rc[] = {c};
    for (int i = 0; i < 3; i++)
        put(s, a, "alice", 1, "bob", "m", rb, 1, NULL);
    uint64_t acked = 0;
    assert_int_equal(ims_store_begin(s), 0);
    assert_int_equal(ims_store_queue_ack(s, b, 9, &acked), IMP_ERR_BAD_REQUEST);
    assert_int_equal(ims_store_queue_ack(s, b, 1, &acked), 0);
    assert_int_equal(acked, 1);
    put(s, a, "alice", 1, "carol", "kept", rc, 1, NULL);
    assert_int_equal(ims_store_commit(s), 0);
    assert_int_equal(qcount(s, b), 2);
    assert_int_equal(qcount(s, c), 1);
    exec_sql(f->path, "CREATE TRIGGER no_delete BEFORE DELETE ON queue "
                      "BEGIN SELECT RAISE(ABORT, 'planted'); END");
    assert_int_equal(ims_store_begin(s), 0);
    put(s, a, "alice", 1, "carol", "lost", rc, 1, NULL);
    assert_int_equal(ims_store_queue_ack(s, b, 2, &acked), IMP_ERR_STORAGE);
    assert_int_equal(ims_store_queue_ack(s, c, 1, &acked), IMP_ERR_STORAGE); /* refused now */
    assert_int_equal(ims_store_commit(s), IMP_ERR_STORAGE);
    exec_sql(f->path, "DROP TRIGGER no_delete");
    assert_int_equal(qcount(s, b), 2); /* bob's ack was not kept */
    assert_int_equal(qcount(s, c), 1); /* carol's second message was not kept */
    ims_user u;
    assert_int_equal(ims_store_user_get_id(s, b, &u), 0);
    assert_int_equal(u.acked_seq, 1);
    /* and the store works on */
    assert_int_equal(ims_store_queue_ack(s, b, 3, &acked), 0);
    assert_int_equal(qcount(s, b), 0);
    integrity_ok(s);
}

struct lens {
    size_t len[8];
    int64_t id[8];
    int kind[8], first[8], n;
};

static int collect_len(void *ud, const ims_message *m)
{
    struct lens *l = ud;
    assert_true(l->n < 8);
    l->len[l->n] = m->body_len;
    l->id[l->n] = m->msg_id;
    l->kind[l->n] = m->target_kind;
    l->first[l->n] = m->body_len ? m->body[0] : -1;
    assert_string_equal(m->target, "bob");
    l->n++;
    return 0;
}

/* A direct message is kept in its queue entry only when small (IMS_INLINE_MAX, 768 bytes of
 * body and headers); a larger one takes a messages row (a WITHOUT ROWID entry is read whole).
 * Both read back the same, and an ack removes either. */
static void test_direct_inline_threshold(void **state)
{
    fx *f = *state;
    ims_store *s = f->s;
    int64_t a = mk_user(s, "alice"), b = mk_user(s, "bob"), rb[] = {b};
    static char big[2001], edge[769];
    memset(big, 'B', 2000);
    memset(edge, 'E', 768);
    put(s, a, "alice", 1, "bob", edge, rb, 1, NULL);
    put(s, a, "alice", 1, "bob", big, rb, 1, NULL);
    put(s, a, "alice", 1, "bob", "small", rb, 1, NULL);
    assert_int_equal(mcount(s), 3);
    if (f->file) {
        char v[64];
        pragma_text(f->path,
                    "SELECT group_concat(inl, ',') FROM (SELECT inl FROM queue ORDER BY seq)", v,
                    sizeof v);
        assert_string_equal(v, "1,0,1");
    }
    struct lens l = {0};
    assert_int_equal(ims_store_queue_read(s, b, 0, 10, collect_len, &l), 3);
    assert_int_equal(l.len[0], 768);
    assert_int_equal(l.len[1], 2000);
    assert_int_equal(l.len[2], 5);
    assert_int_equal(l.first[1], 'B');
    assert_int_equal(l.kind[1], 1);
    assert_true(l.id[0] < l.id[1] && l.id[1] < l.id[2]);
    assert_int_equal(ims_store_queue_ack(s, b, 3, NULL), 0);
    assert_int_equal(mcount(s), 0);
    integrity_ok(s);
    if (!f->file)
        return;
    /* the check that ids never pass the sequence (IMP-DELIV-006: the next id would repeat) */
    put(s, a, "alice", 1, "bob", "again", rb, 1, NULL);
    exec_sql(f->path, "UPDATE sqlite_sequence SET seq = 1 WHERE name = 'messages'");
    char err[256] = "";
    assert_int_equal(ims_store_integrity_check(s, err, sizeof err), IMP_ERR_STORAGE);
    assert_non_null(strstr(err, "above the sequence"));
    exec_sql(f->path, "UPDATE sqlite_sequence SET seq = 4 WHERE name = 'messages'");
    integrity_ok(s);
}

/* Everything committed survives close and open; ims_store_close commits an open batch. */
/* ---- the queue cache (reads of just-stored direct messages from memory) -----------------------
 */

/* A read served from memory gives exactly what the table gives: every field, headers absent or
 * present, an empty body, the largest inline body; room entries in between come from the
 * table. */
static void test_queue_cache_matches_table(void **state)
{
    fx *f = *state;
    ims_store *s = f->s;
    int64_t a = mk_user(s, "alice"), b = mk_user(s, "bob"), c = mk_user(s, "carol");
    int64_t rb[] = {b}, rbc[] = {b, c};
    const uint8_t hdr[] = {0x00, 0x01, 'k', 0x00, 0x01, 'v'};
    static uint8_t big[700];
    memset(big, 'z', sizeof big);
    for (int i = 0; i < 6; i++) {
        ims_message m;
        memset(&m, 0, sizeof m);
        m.sender_id = a;
        snprintf(m.sender, sizeof m.sender, "alice");
        m.target_kind = 1;
        snprintf(m.target, sizeof m.target, "bob");
        m.ts_ms = 7000 + i;
        if (i == 1) {
            m.headers = hdr;
            m.headers_len = sizeof hdr;
        }
        if (i == 2) { /* empty body */
            m.body = (const uint8_t *)"";
        } else if (i == 3) {
            m.body = big;
            m.body_len = 100; /* collect_msg keeps 127 bytes: the big one is checked below */
        } else {
            m.body = (const uint8_t *)"hello";
            m.body_len = 5;
        }
        int64_t id;
        assert_int_equal(ims_store_message_put(s, &m, NULL, NULL, rb, 1, &id, NULL), 0);
        if (i == 3)
            put(s, a, "alice", 2, "lobby", "room in between", rbc, 2, NULL);
    }
    got fresh = {.n = 0};
    uint64_t hits = ims_store_queue_cache_hits(s);
    assert_int_equal(ims_store_queue_read(s, b, 0, 100, collect_msg, &fresh), 7);
    assert_int_equal(ims_store_queue_cache_hits(s) - hits, 4); /* seqs 1-4; 5-7 from the table */
    if (f->file)
        fx_reopen(f); /* an empty cache: everything from the table */
    else
        assert_int_equal(ims_store_queue_ack(f->s, c, 1, NULL), 0); /* unrelated user */
    s = f->s;
    got table = {.n = 0};
    assert_int_equal(ims_store_queue_read(s, b, 0, 100, collect_msg, &table), 7);
    assert_memory_equal(&fresh, &table, sizeof fresh);
    assert_int_equal(fresh.m[4].kind, 2);
    assert_string_equal(fresh.m[4].body, "room in between");
    assert_true(fresh.m[1].headers_len == sizeof hdr && !fresh.m[1].headers_null);
    assert_true(fresh.m[0].headers_null && fresh.m[2].body_len == 0);
    /* reading from the middle, and a limit that ends inside the cached run */
    got mid = {.n = 0};
    assert_int_equal(ims_store_queue_read(s, b, 5, 1, collect_msg, &mid), 1);
    assert_int_equal(mid.m[0].seq, 6);
    assert_string_equal(mid.m[0].body, "hello");
}

struct seq_check {
    uint64_t next; /* the seq expected next */
    int n;
};

/* Checks that m is seq ->next, its body "m<seq>:" followed, every 1,000th, by 'x' up to 759
 * bytes. */
static int check_seq_body(void *ud, const ims_message *m)
{
    struct seq_check *c = ud;
    assert_int_equal(m->seq, c->next);
    char head[32];
    int len = snprintf(head, sizeof head, "m%llu:", (unsigned long long)m->seq);
    size_t want = m->seq % 1000 == 0 ? 759 : (size_t)len;
    assert_int_equal(m->body_len, want);
    assert_memory_equal(m->body, head, (size_t)len);
    for (size_t i = (size_t)len; i < m->body_len; i++)
        assert_int_equal(m->body[i], 'x');
    c->next++;
    c->n++;
    return 0;
}

/* More messages than the cache holds, and bodies up to the inline limit: every read in order,
 * complete, whether it starts in memory or in the table. */
static void test_queue_cache_overflow(void **state)
{
    fx *f = *state;
    ims_store *s = f->s;
    int64_t a = mk_user(s, "alice"), b = mk_user(s, "bob");
    int64_t rb[] = {b};
    enum { N = 9000 }; /* > the cache's 8,192 entries */
    static char body[760];
    assert_int_equal(ims_store_begin(s), 0);
    for (int i = 1; i <= N; i++) {
        int len = snprintf(body, sizeof body, "m%d:", i);
        if (i % 1000 == 0) { /* near the inline limit (768 bytes of body and headers) */
            memset(body + len, 'x', sizeof body - 1 - (size_t)len);
            body[sizeof body - 1] = '\0';
        }
        put(s, a, "alice", 1, "bob", body, rb, 1, NULL);
    }
    assert_int_equal(ims_store_commit(s), 0);
    struct seq_check c = {1, 0};
    while (c.next <= N) {
        int before = c.n;
        int n = ims_store_queue_read(s, b, c.next - 1, 128, check_seq_body, &c);
        assert_true(n > 0 && n <= 128);
        assert_int_equal(c.n - before, n);
    }
    /* a read starting in the table and one starting in memory */
    c = (struct seq_check){1, 0};
    assert_int_equal(ims_store_queue_read(s, b, 0, 64, check_seq_body, &c), 64);
    c = (struct seq_check){N - 99, 0};
    uint64_t hits = ims_store_queue_cache_hits(s);
    assert_int_equal(ims_store_queue_read(s, b, N - 100, 1000, check_seq_body, &c), 100);
    assert_int_equal(ims_store_queue_cache_hits(s) - hits, 100);
    /* acknowledged ones are no longer read, from the cache or the table */
    assert_int_equal(ims_store_queue_ack(s, b, N - 10, NULL), 0);
    c = (struct seq_check){N - 9, 0};
    assert_int_equal(ims_store_queue_read(s, b, 0, 128, check_seq_body, &c), 10);
    integrity_ok(s);
}

/* The cache only answers with committed rows: the entries of a rolled-back batch are not read,
 * and their seqs, given again, read as the new messages. */
static void test_queue_cache_rolled_back_batch(void **state)
{
    fx *f = *state;
    ims_store *s = f->s;
    int64_t a = mk_user(s, "alice"), b = mk_user(s, "bob");
    int64_t rb[] = {b};
    uint64_t seqs[1];
    int64_t mid = 0;
    put(s, a, "alice", 1, "bob", "one", rb, 1, seqs);
    /* plant bob's seq 3: the second message of the next batch collides after its dedupe row
     * was written, so the whole batch is rolled back (test_direct_put_failures_in_batch) */
    char sql[200];
    snprintf(sql, sizeof sql,
             "INSERT INTO queue(user_id, seq, msg_id, inl, sender_id, sender, target, ts_ms, body)"
             " VALUES (%lld, 3, 1000, 1, %lld, 'alice', 'bob', 1, x'00')",
             (long long)b, (long long)a);
    exec_sql(f->path, sql);
    assert_int_equal(ims_store_begin(s), 0);
    assert_int_equal(put_rc(s, a, "alice", 1, "bob", "two-lost", NULL, rb, 1, &mid, seqs), 0);
    assert_int_equal(seqs[0], 2);
    /* written at COMMIT with the batch's other direct messages (schema version 4) */
    assert_int_equal(put_rc(s, a, "alice", 1, "bob", "three", "cm-3", rb, 1, &mid, seqs), 0);
    assert_int_equal(ims_store_commit(s), IMP_ERR_STORAGE);
    assert_int_equal(ims_store_dedupe_get(s, a, "cm-3", &mid, NULL), 0);
    snprintf(sql, sizeof sql, "DELETE FROM queue WHERE user_id = %lld AND seq = 3", (long long)b);
    exec_sql(f->path, sql);
    got g = {.n = 0};
    assert_int_equal(ims_store_queue_read(s, b, 0, 10, collect_msg, &g), 1);
    assert_string_equal(g.m[0].body, "one");
    got g1 = {.n = 0};
    assert_int_equal(ims_store_queue_read(s, b, 1, 10, collect_msg, &g1), 0);
    /* seq 2 again, for another message */
    put(s, a, "alice", 1, "bob", "two", rb, 1, seqs);
    assert_int_equal(seqs[0], 2);
    got g2 = {.n = 0};
    assert_int_equal(ims_store_queue_read(s, b, 1, 10, collect_msg, &g2), 1);
    assert_string_equal(g2.m[0].body, "two");
    integrity_ok(s);
}

struct body_check {
    int64_t user;
    uint64_t next;
    int n;
};

static int check_user_body(void *ud, const ims_message *m)
{
    struct body_check *c = ud;
    char want[48];
    snprintf(want, sizeof want, "u%llds%llu", (long long)c->user, (unsigned long long)c->next);
    assert_int_equal(m->seq, c->next);
    assert_int_equal(m->body_len, strlen(want));
    assert_memory_equal(m->body, want, m->body_len);
    c->next++;
    c->n++;
    return 0;
}

/* Random puts, acks, reads and batches over many users, checked against a model: the cache's
 * index (open addressing with deletes) and eviction under collisions and churn, read back
 * exactly as stored (and, under AddressSanitizer, no use after free). */
static void test_queue_cache_random(void **state)
{
    fx *f = *state;
    ims_store *s = f->s;
    enum { USERS = 40, OPS = 30000 };
    int64_t a = mk_user(s, "alice"), ids[USERS];
    uint64_t last[USERS] = {0}, acked[USERS] = {0};
    for (int i = 0; i < USERS; i++) {
        char name[16];
        snprintf(name, sizeof name, "user%d", i);
        ids[i] = mk_user(s, name);
    }
    uint32_t rnd = 12345;
#define RND() (rnd = rnd * 1103515245u + 12345u, (rnd >> 8) & 0xffff)
    uint64_t hits0 = ims_store_queue_cache_hits(s);
    int in_batch = 0;
    for (int op = 0; op < OPS; op++) {
        int k = (int)(RND() % USERS), what = (int)(RND() % 100);
        if (!in_batch && RND() % 16 != 0) {
            assert_int_equal(ims_store_begin(s), 0);
            in_batch = 1;
        }
        if (what < 70) {
            char body[48];
            snprintf(body, sizeof body, "u%llds%llu", (long long)ids[k],
                     (unsigned long long)last[k] + 1);
            uint64_t seq = 0;
            put(s, a, "alice", 1, "x", body, &ids[k], 1, &seq);
            assert_int_equal(seq, ++last[k]);
        } else if (what < 85) {
            uint64_t upto = acked[k] + RND() % (last[k] - acked[k] + 1);
            assert_int_equal(ims_store_queue_ack(s, ids[k], upto, NULL), 0);
            acked[k] = upto;
        } else if (in_batch && what < 95) {
            assert_int_equal(ims_store_commit(s), 0);
            in_batch = 0;
        }
        if (!in_batch && what >= 95) { /* reads happen between batches, as the pump's */
            int limit = 1 + (int)(RND() % 64);
            struct body_check c = {ids[k], acked[k] + 1, 0};
            int n = ims_store_queue_read(s, ids[k], acked[k], limit, check_user_body, &c);
            uint64_t avail = last[k] - acked[k];
            assert_int_equal(n, avail < (uint64_t)limit ? (int)avail : limit);
        }
    }
#undef RND
    if (in_batch)
        assert_int_equal(ims_store_commit(s), 0);
    for (int k = 0; k < USERS; k++) {
        struct body_check c = {ids[k], acked[k] + 1, 0};
        while (c.next <= last[k])
            assert_true(ims_store_queue_read(s, ids[k], c.next - 1, 100, check_user_body, &c) > 0);
        assert_int_equal(c.next, last[k] + 1);
        assert_int_equal(qcount(s, ids[k]), (int64_t)(last[k] - acked[k]));
    }
    assert_true(ims_store_queue_cache_hits(s) > hits0);
    integrity_ok(s);
}

/* A deleted user's cached entries go with the table's. */
static void test_queue_cache_user_delete(void **state)
{
    fx *f = *state;
    ims_store *s = f->s;
    int64_t a = mk_user(s, "alice"), b = mk_user(s, "bob");
    int64_t rb[] = {b};
    put(s, a, "alice", 1, "bob", "for bob", rb, 1, NULL);
    got g = {.n = 0};
    assert_int_equal(ims_store_queue_read(s, b, 0, 10, collect_msg, &g), 1);
    assert_int_equal(ims_store_user_delete(s, b), 0);
    got g2 = {.n = 0};
    assert_int_equal(ims_store_queue_read(s, b, 0, 10, collect_msg, &g2), 0);
    integrity_ok(s);
}

static void test_persistence(void **state)
{
    fx *f = *state;
    ims_store *s = f->s;
    int64_t a = mk_user(s, "alice"), b = mk_user(s, "bob");
    uint8_t t[32];
    memset(t, 7, sizeof t);
    assert_int_equal(ims_store_token_add(s, a, t, 5000), 0);
    assert_int_equal(ims_store_room_join(s, "lobby", a, 1, NULL), 0);
    assert_int_equal(ims_store_begin(s), 0);
    int64_t mid;
    int64_t r[] = {a, b};
    assert_int_equal(put_rc(s, a, "alice", 2, "lobby", "hello", "c1", r, 2, &mid, NULL), 0);
    assert_int_equal(ims_store_commit(s), 0);
    assert_int_equal(ims_store_queue_ack(s, a, 1, NULL), 0);
    /* An open batch at close is committed. */
    assert_int_equal(ims_store_begin(s), 0);
    assert_int_equal(ims_store_user_create(s, "carol", "hc", 1, 2, NULL), 0);
    assert_int_equal(ims_store_room_join(s, "lobby", b, 1, NULL), 0);
    fx_reopen(f);
    s = f->s;
    assert_int_equal(ims_store_in_batch(s), 0);
    ims_user u;
    assert_int_equal(ims_store_user_get(s, "carol", &u), 0);
    assert_int_equal(u.admin, 1);
    assert_int_equal(ims_store_user_get(s, "alice", &u), 0);
    assert_int_equal(u.last_seq, 1);
    assert_int_equal(u.acked_seq, 1);
    int64_t uid;
    assert_int_equal(ims_store_token_check(s, t, 10, &uid), 0);
    assert_int_equal(uid, a);
    assert_int_equal(ims_store_room_is_member(s, "lobby", b), 1);
    int64_t got_id;
    assert_int_equal(ims_store_dedupe_get(s, a, "c1", &got_id, NULL), 1);
    assert_int_equal(got_id, mid);
    got g = {.n = 0};
    assert_int_equal(ims_store_queue_read(s, b, 0, 10, collect_msg, &g), 1);
    assert_int_equal(g.m[0].msg_id, mid);
    int more;
    got h = {.n = 0};
    assert_int_equal(ims_store_room_history(s, "lobby", 0, 10, collect_msg, &h, &more), 1);
    /* Ids keep ascending after a restart (IMP-DELIV-006). */
    int64_t rb[] = {b};
    int64_t mid2 = put(s, a, "alice", 1, "bob", "x", rb, 1, NULL);
    assert_true(mid2 > mid);
    integrity_ok(s);
}

static int count_users_outside(const char *path)
{
    char v[32];
    pragma_text(path, "SELECT count(*) FROM users", v, sizeof v);
    return atoi(v);
}

/* IMP-DELIV-001: a batch is durable at ims_store_commit and not before. Another connection does
 * not see uncommitted writes; a process that dies with a batch open loses exactly that batch,
 * and one that dies right after a commit loses nothing. */
static void test_uncommitted_batch_lost_on_crash(void **state)
{
    fx *f = *state;
    mk_user(f->s, "alice");
    assert_int_equal(ims_store_begin(f->s), 0);
    mk_user(f->s, "bob");
    assert_int_equal(count_users_outside(f->path), 1);
    assert_int_equal(ims_store_commit(f->s), 0);
    assert_int_equal(count_users_outside(f->path), 2);
    ims_store_close(f->s);
    f->s = NULL;
    for (int commit = 0; commit < 2; commit++) {
        fflush(NULL);
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
            /* The child: no cmocka, no close: killed by SIGKILL at the end. */
            ims_store_options o = {f->path, 1, NULL, NULL, 0, 0};
            char err[256];
            ims_store *s = ims_store_open(&o, err, sizeof err);
            if (s == NULL || ims_store_begin(s) != 0)
                _exit(2);
            int64_t id;
            if (ims_store_user_create(s, commit ? "carol" : "mallory", "h", 0, 1, &id) != 0)
                _exit(3);
            if (commit && ims_store_commit(s) != 0)
                _exit(4);
            kill(getpid(), SIGKILL); /* crashes with the store open */
            _exit(5);
        }
        int status = 0;
        assert_int_equal(waitpid(pid, &status, 0), pid);
        if (!WIFSIGNALED(status) || WTERMSIG(status) != SIGKILL)
            fail_msg("child: status %d", status);
    }
    f->s = fx_open(f);
    ims_user u;
    assert_int_equal(ims_store_user_get(f->s, "alice", &u), 0);
    assert_int_equal(ims_store_user_get(f->s, "bob", &u), 0);
    assert_int_equal(ims_store_user_get(f->s, "mallory", &u), IMP_ERR_NO_SUCH_USER);
    assert_int_equal(ims_store_user_get(f->s, "carol", &u), 0);
    integrity_ok(f->s);
}

/* Another process holding the write lock: the store's write fails with STORAGE and a logged
 * SQLite message, and works again once the lock is gone. */
static void test_locked_database(void **state)
{
    fx *f = *state;
    ims_store *s = f->s;
    int64_t a = mk_user(s, "alice");
    assert_int_equal(ims_store_set_busy_timeout(s, 20), 0);
    sqlite3 *other = NULL;
    assert_int_equal(sqlite3_open(f->path, &other), SQLITE_OK);
    assert_int_equal(sqlite3_exec(other, "BEGIN IMMEDIATE", NULL, NULL, NULL), SQLITE_OK);
    f->nlog = 0;
    assert_int_equal(ims_store_user_create(s, "bob", "h", 0, 1, NULL), IMP_ERR_STORAGE);
    assert_true(f->nlog > 0);
    assert_non_null(strstr(f->last_log, "locked"));
    assert_int_equal(ims_store_begin(s), IMP_ERR_STORAGE);
    assert_int_equal(ims_store_in_batch(s), 0);
    /* Reads still work (WAL). */
    ims_user u;
    assert_int_equal(ims_store_user_get_id(s, a, &u), 0);
    assert_int_equal(sqlite3_exec(other, "ROLLBACK", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(other);
    assert_int_equal(ims_store_user_create(s, "bob", "h", 0, 1, NULL), 0);
    assert_int_equal(ims_store_begin(s), 0);
    assert_int_equal(ims_store_commit(s), 0);
}

/* ---- callbacks that call the store again ------------------------------------------------------
 */

typedef struct nested {
    ims_store *s;
    int calls;
    int inner_total;
} nested;

static int nested_user_cb(void *ud, const ims_user *u)
{
    nested *n = ud;
    n->calls++;
    /* The same statement as the outer call, and a write outside or inside a batch. */
    names g = {.n = 0};
    int r = ims_store_user_list(n->s, "", 100, collect_user, &g);
    assert_true(r > 0);
    n->inner_total += r;
    ims_user v;
    assert_int_equal(ims_store_user_get(n->s, u->name, &v), 0);
    assert_int_equal(v.id, u->id);
    assert_int_equal(ims_store_user_set_admin(n->s, u->id, 1), 0);
    return 0;
}

static int nested_msg_cb(void *ud, const ims_message *m)
{
    nested *n = ud;
    n->calls++;
    got g = {.n = 0};
    assert_int_equal(ims_store_queue_read(n->s, 2, 0, 100, collect_msg, &g), 3);
    assert_int_equal(g.m[m->seq - 1].msg_id, m->msg_id);
    return 0;
}

static void test_reentrant_callbacks(void **state)
{
    fx *f = *state;
    ims_store *s = f->s;
    int64_t a = mk_user(s, "alice"), b = mk_user(s, "bob");
    assert_int_equal(b, 2); /* nested_msg_cb reads user 2's queue */
    mk_user(s, "carol");
    nested n = {s, 0, 0};
    assert_int_equal(ims_store_user_list(s, "", 100, nested_user_cb, &n), 3);
    assert_int_equal(n.calls, 3);
    assert_int_equal(n.inner_total, 9);
    assert_int_equal(ims_store_begin(s), 0);
    nested n2 = {s, 0, 0};
    assert_int_equal(ims_store_user_list(s, "", 100, nested_user_cb, &n2), 3);
    assert_int_equal(ims_store_commit(s), 0);
    ims_user u;
    assert_int_equal(ims_store_user_get(s, "carol", &u), 0);
    assert_int_equal(u.admin, 1);
    int64_t r[] = {b};
    for (int i = 0; i < 3; i++)
        put(s, a, "alice", 1, "bob", "m", r, 1, NULL);
    nested n3 = {s, 0, 0};
    assert_int_equal(ims_store_queue_read(s, b, 0, 100, nested_msg_cb, &n3), 3);
    assert_int_equal(n3.calls, 3);
    integrity_ok(s);
}

/* ---- damaged database files -------------------------------------------------------------------
 */

static void copy_file(const char *from, const char *to)
{
    FILE *in = fopen(from, "rb");
    FILE *out = fopen(to, "wb");
    assert_non_null(in);
    assert_non_null(out);
    char buf[8192];
    size_t k;
    while ((k = fread(buf, 1, sizeof buf, in)) > 0)
        assert_int_equal(fwrite(buf, 1, k, out), k);
    fclose(in);
    assert_int_equal(fclose(out), 0);
}

static long file_size(const char *p)
{
    struct stat st;
    assert_int_equal(stat(p, &st), 0);
    return (long)st.st_size;
}

/* Fills the database with enough pages to damage some in the middle; returns the page size. */
static long fill_and_close(fx *f)
{
    ims_store *s = f->s;
    int64_t a = mk_user(s, "alice"), b = mk_user(s, "bob");
    assert_int_equal(ims_store_room_join(s, "lobby", a, 1, NULL), 0);
    int64_t r[] = {a, b};
    char body[600];
    assert_int_equal(ims_store_begin(s), 0);
    for (int i = 0; i < 300; i++) {
        memset(body, 'a' + i % 26, sizeof body - 1);
        body[sizeof body - 1] = '\0';
        char cmid[16];
        snprintf(cmid, sizeof cmid, "c%d", i);
        int64_t mid;
        assert_int_equal(put_rc(s, a, "alice", 2, "lobby", body, cmid, r, 2, &mid, NULL), 0);
    }
    assert_int_equal(ims_store_commit(s), 0);
    ims_store_close(f->s);
    f->s = NULL;
    char v[32];
    pragma_text(f->path, "PRAGMA page_size", v, sizeof v);
    return atol(v);
}

/* ims_store_open runs PRAGMA quick_check: a database with any one page overwritten with garbage
 * is refused with a message, never opened and never a crash. */
static void test_open_corrupt_database(void **state)
{
    fx *f = *state;
    long page = fill_and_close(f);
    long size = file_size(f->path);
    long npages = size / page;
    assert_true(npages >= 20);
    char path[200];
    snprintf(path, sizeof path, "%s/corrupt.db", f->dir);
    char garbage[65536];
    assert_true(page <= (long)sizeof garbage);
    memset(garbage, 0xa5, sizeof garbage);
    int refused = 0;
    for (long pg = 1; pg < npages; pg++) { /* page 0 (the header page) is tested below */
        unlink(path);
        copy_file(f->path, path);
        int fd = open(path, O_WRONLY);
        assert_true(fd >= 0);
        assert_int_equal(pwrite(fd, garbage, (size_t)page, pg * page), page);
        close(fd);
        ims_store_options o = {path, 1, NULL, NULL, 0, 0};
        char err[256] = "";
        ims_store *s = ims_store_open(&o, err, sizeof err);
        if (s != NULL) {
            ims_store_close(s);
            fail_msg("page %ld of %ld overwritten: opened", pg, npages);
        }
        assert_true(strlen(err) > 0);
        refused++;
    }
    assert_int_equal(refused, npages - 1);
    /* Bytes in the middle of the first page (the schema's root page). */
    unlink(path);
    copy_file(f->path, path);
    int fd = open(path, O_WRONLY);
    assert_true(fd >= 0);
    assert_int_equal(pwrite(fd, garbage, 1000, 100), 1000);
    close(fd);
    ims_store_options o = {path, 1, NULL, NULL, 0, 0};
    char err[256] = "";
    ims_store *bad = ims_store_open(&o, err, sizeof err);
    if (bad != NULL) {
        ims_store_close(bad);
        fail_msg("first page overwritten: opened");
    }
    assert_true(strlen(err) > 0);
    f->s = fx_open(f); /* the original is intact */
    integrity_ok(f->s);
}

/* A truncated database file (a lost tail) is refused with a message, or opened consistently:
 * then the integrity check passes and the store works. */
static void test_open_truncated_database(void **state)
{
    fx *f = *state;
    long page = fill_and_close(f);
    long size = file_size(f->path);
    char path[200];
    snprintf(path, sizeof path, "%s/truncated.db", f->dir);
    const long cuts[] = {size / 2, size / 2 + 100, size - page, page, 50, 0};
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
        unlink(path);
        copy_file(f->path, path);
        assert_int_equal(truncate(path, cuts[i]), 0);
        ims_store_options o = {path, 1, NULL, NULL, 0, 0};
        char err[256] = "";
        ims_store *s = ims_store_open(&o, err, sizeof err);
        if (s == NULL) {
            assert_true(strlen(err) > 0);
            continue;
        }
        char ierr[256] = "";
        if (ims_store_integrity_check(s, ierr, sizeof ierr) != 0)
            fail_msg("cut at %ld: opened but inconsistent: %s", cuts[i], ierr);
        assert_true(strcmp(ierr, "") == 0 || strcmp(ierr, "ok") == 0);
        int64_t id;
        assert_int_equal(ims_store_user_create(s, "zed", "h", 0, 1, &id), 0);
        ims_store_close(s);
        /* Only an empty file may open: it is a new, empty database. */
        assert_int_equal(cuts[i], 0);
    }
    f->s = fx_open(f);
}

/* ---- unclean shutdown: the marker and the full check ------------------------------------------
 */

static int exists(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0;
}

/* While a file store is open, "<path>-running" exists; a clean close removes it. */
static void test_running_marker(void **state)
{
    fx *f = *state;
    char marker[200];
    snprintf(marker, sizeof marker, "%s-running", f->path);
    assert_true(exists(marker));
    ims_store_close(f->s);
    f->s = NULL;
    assert_false(exists(marker));
    f->s = fx_open(f);
    assert_true(exists(marker));
}

/* Runs sql statements on a database file with plain SQLite (writable_schema allowed). */
static void raw_exec(const char *path, const char *sql)
{
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE, NULL), SQLITE_OK);
    char *msg = NULL;
    if (sqlite3_exec(db, sql, NULL, NULL, &msg) != SQLITE_OK)
        fail_msg("%s: %s", sql, msg ? msg : "?");
    sqlite3_close(db);
}

/* An index that no longer matches its table: PRAGMA quick_check does not see it, PRAGMA
 * integrity_check (and the queue invariant) do. After a clean close the open runs quick_check
 * only (it opens); after an unclean one (the marker left by a process that died with the store
 * open) it runs the full check and refuses with a message. */
static void test_open_after_unclean_shutdown_full_check(void **state)
{
    fx *f = *state;
    fill_and_close(f);
    char marker[200];
    snprintf(marker, sizeof marker, "%s-running", f->path);
    assert_false(exists(marker));
    /* Drop the index queue_msg from the schema, delete a queue row behind its back, put the
     * index back: it keeps an entry for the deleted row. */
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open_v2(f->path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    sqlite3_stmt *q = NULL;
    assert_int_equal(sqlite3_prepare_v2(db,
                                        "SELECT rootpage, sql FROM sqlite_schema WHERE name = "
                                        "'queue_msg'",
                                        -1, &q, NULL),
                     SQLITE_OK);
    assert_int_equal(sqlite3_step(q), SQLITE_ROW);
    long root = (long)sqlite3_column_int64(q, 0);
    char idx_sql[200];
    snprintf(idx_sql, sizeof idx_sql, "%s", (const char *)sqlite3_column_text(q, 1));
    sqlite3_finalize(q);
    sqlite3_close(db);
    raw_exec(f->path, "PRAGMA writable_schema = ON; DELETE FROM sqlite_schema WHERE name = "
                      "'queue_msg'");
    raw_exec(f->path, "DELETE FROM queue WHERE seq = 7");
    char sql[600];
    snprintf(sql, sizeof sql,
             "PRAGMA writable_schema = ON; INSERT INTO sqlite_schema(type, name, tbl_name, "
             "rootpage, sql) VALUES ('index', 'queue_msg', 'queue', %ld, '%s')",
             root, idx_sql);
    raw_exec(f->path, sql);
    char v[200];
    pragma_text(f->path, "PRAGMA quick_check", v, sizeof v);
    assert_string_equal(v, "ok");
    pragma_text(f->path, "PRAGMA integrity_check", v, sizeof v);
    assert_string_not_equal(v, "ok");

    /* Clean shutdown before: quick_check only, it opens. */
    char copy[200];
    snprintf(copy, sizeof copy, "%s/clean.db", f->dir);
    copy_file(f->path, copy);
    ims_store_options o = {copy, 1, NULL, NULL, 0, 0};
    char err[256] = "";
    ims_store *s = ims_store_open(&o, err, sizeof err);
    assert_non_null(s);
    ims_store_close(s);

    /* A process that dies with the store open leaves the marker: the next open checks all. */
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        ims_store_options oc = {f->path, 1, NULL, NULL, 0, 0};
        char e[256];
        _exit(ims_store_open(&oc, e, sizeof e) != NULL ? 0 : 1);
    }
    int st = 0;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    assert_true(exists(marker));
    ims_store_options o2 = {f->path, 1, NULL, NULL, 0, 0};
    err[0] = '\0';
    s = ims_store_open(&o2, err, sizeof err);
    if (s != NULL) {
        ims_store_close(s);
        fail_msg("opened after an unclean shutdown with a stale index");
    }
    assert_non_null(strstr(err, "unclean shutdown"));
    assert_non_null(strstr(err, "PRAGMA integrity_check"));
    assert_true(exists(marker)); /* still unclean: the next start checks again */
    unlink(marker);
    unlink(f->path);
}

/* An existing empty database file that imd did not just create (no marker: it was truncated or
 * replaced) is refused rather than silently made into a new, empty store. With the marker (imd
 * died while it created the file) it is initialized. A missing file is a new store. */
static void test_open_empty_file(void **state)
{
    fx *f = *state;
    char path[200], marker[220];
    snprintf(path, sizeof path, "%s/empty.db", f->dir);
    snprintf(marker, sizeof marker, "%s-running", path);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_true(fd >= 0);
    close(fd);
    ims_store_options o = {path, 1, NULL, NULL, 0, 0};
    char err[256] = "";
    ims_store *s = ims_store_open(&o, err, sizeof err);
    if (s != NULL) {
        ims_store_close(s);
        fail_msg("an empty database file without the marker was opened");
    }
    assert_non_null(strstr(err, "empty"));
    assert_int_equal(file_size(path), 0);
    assert_false(exists(marker));
    /* the marker: imd died between creating the file and its schema */
    fd = open(marker, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_true(fd >= 0);
    close(fd);
    s = ims_store_open(&o, err, sizeof err);
    assert_non_null(s);
    integrity_ok(s);
    ims_store_close(s);
    assert_false(exists(marker));
    /* a new file */
    unlink(path);
    s = ims_store_open(&o, err, sizeof err);
    assert_non_null(s);
    ims_store_close(s);
    unlink(path);
    char wal[220];
    snprintf(wal, sizeof wal, "%s-wal", path);
    unlink(wal);
}

/* ---- throughput (printed, not asserted) -------------------------------------------------------
 */

static void test_throughput(void **state)
{
    fx *f = *state;
    ims_store *s = f->s;
    int64_t a = mk_user(s, "alice"), b = mk_user(s, "bob");
    int64_t r[] = {b};
    const int total = 50000, per_batch = 5000;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int i = 0; i < total; i += per_batch) {
        assert_int_equal(ims_store_begin(s), 0);
        for (int k = 0; k < per_batch; k++) {
            char cmid[16];
            snprintf(cmid, sizeof cmid, "c%d", i + k);
            int64_t mid;
            assert_int_equal(
                put_rc(s, a, "alice", 1, "bob", "a short message body", cmid, r, 1, &mid, NULL), 0);
        }
        assert_int_equal(ims_store_commit(s), 0);
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double sec = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    /* The digest (libsodium) is computed inside put_rc, so this includes it. */
    printf("   store (%s): %d puts with dedupe in batches of %d: %.3f s, %.0f puts/s\n",
           f->file ? "file, sync_full" : "memory", total, per_batch, sec, total / sec);
    assert_int_equal(qcount(s, b), total);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    assert_int_equal(ims_store_queue_ack(s, b, (uint64_t)total, NULL), 0);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    sec = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    printf("   store (%s): ack of %d: %.3f s\n", f->file ? "file, sync_full" : "memory", total,
           sec);
    assert_int_equal(mcount(s), 0);
}

/* ---- packed queue rows (schema version 4) ---------------------------------------------------
 *
 * In a batch, the direct messages queued for one user are written as one queue row at COMMIT
 * (n messages, the row's seq the last one's); a row stays until its last message is
 * acknowledged, and reads skip the acknowledged ones. */

static void sql_int(const char *path, const char *sql, long long *out)
{
    char v[64];
    pragma_text(path, sql, v, sizeof v);
    *out = strtoll(v, NULL, 10);
}

static void put_direct(ims_store *s, int64_t from, const char *from_name, int64_t to,
                       const char *to_name, int64_t ts, const uint8_t *hdr, size_t hdr_len,
                       const char *body, uint64_t *seq)
{
    ims_message m;
    memset(&m, 0, sizeof m);
    m.sender_id = from;
    snprintf(m.sender, sizeof m.sender, "%s", from_name);
    m.target_kind = 1;
    snprintf(m.target, sizeof m.target, "%s", to_name);
    m.ts_ms = ts;
    m.headers = hdr;
    m.headers_len = hdr_len;
    m.body = (const uint8_t *)body;
    m.body_len = strlen(body);
    int64_t id = 0;
    assert_int_equal(ims_store_message_put(s, &m, NULL, NULL, &to, 1, &id, seq), 0);
}

static void test_queue_packed_rows(void **state)
{
    fx *f = *state;
    ims_store *s = f->s;
    int64_t a = mk_user(s, "alice"), b = mk_user(s, "bob"), c = mk_user(s, "carol");
    const uint8_t hdr[] = {0x00, 0x01, 'k', 0x00, 0x01, 'v'};
    assert_int_equal(ims_store_begin(s), 0);
    for (int i = 1; i <= 10; i++) {
        char body[16];
        if (i == 4)
            body[0] = '\0'; /* an empty body */
        else
            snprintf(body, sizeof body, "b%d", i);
        uint64_t seq = 0;
        put_direct(s, a, "alice", b, "bob", 100 + i, i == 2 ? hdr : NULL, i == 2 ? sizeof hdr : 0,
                   body, &seq);
        assert_int_equal(seq, (uint64_t)i);
        if (i % 4 == 0) {
            snprintf(body, sizeof body, "c%d", i / 4);
            put_direct(s, a, "alice", c, "carol", 200 + i, NULL, 0, body, &seq);
            assert_int_equal(seq, (uint64_t)(i / 4));
        }
    }
    got fresh = {.n = 0}; /* read in the batch: it sees its own writes */
    assert_int_equal(ims_store_queue_read(s, b, 0, 100, collect_msg, &fresh), 10);
    assert_int_equal(ims_store_commit(s), 0);
    long long v = 0;
    sql_int(f->path, "SELECT count(*) FROM queue", &v);
    assert_int_equal(v, 2); /* one row for bob's 10, one for carol's 2 */
    sql_int(f->path, "SELECT n FROM queue WHERE user_id = 2", &v);
    assert_int_equal(v, 10);
    sql_int(f->path, "SELECT seq FROM queue WHERE user_id = 2", &v);
    assert_int_equal(v, 10);
    fx_reopen(f); /* an empty cache: reads decode the rows */
    s = f->s;
    got table = {.n = 0};
    assert_int_equal(ims_store_queue_read(s, b, 0, 100, collect_msg, &table), 10);
    assert_memory_equal(&fresh, &table, sizeof fresh);
    for (int i = 0; i < 10; i++) {
        assert_int_equal(table.m[i].seq, (uint64_t)i + 1);
        assert_int_equal(table.m[i].sender_id, a);
        assert_string_equal(table.m[i].sender, "alice");
        assert_string_equal(table.m[i].target, "bob");
        assert_int_equal(table.m[i].kind, 1);
        assert_int_equal(table.m[i].ts_ms, 101 + i);
        if (i > 0)
            assert_true(table.m[i].msg_id > table.m[i - 1].msg_id);
    }
    assert_true(table.m[1].headers_len == sizeof hdr && !table.m[1].headers_null);
    assert_memory_equal(table.m[1].headers, hdr, sizeof hdr);
    assert_true(table.m[0].headers_null && table.m[3].body_len == 0);
    assert_string_equal(table.m[9].body, "b10");
    /* from the middle of the row, with a limit inside it */
    got mid = {.n = 0};
    assert_int_equal(ims_store_queue_read(s, b, 4, 3, collect_msg, &mid), 3);
    assert_int_equal(mid.m[0].seq, 5);
    assert_int_equal(mid.m[2].seq, 7);
    assert_string_equal(mid.m[2].body, "b7");
    assert_int_equal(mcount(s), 12);
    /* an ack inside the row: the row stays, its acknowledged messages are not read again */
    assert_int_equal(ims_store_queue_ack(s, b, 4, NULL), 0);
    assert_int_equal(qcount(s, b), 6);
    assert_int_equal(mcount(s), 8);
    integrity_ok(s);
    fx_reopen(f);
    s = f->s;
    got after = {.n = 0};
    assert_int_equal(ims_store_queue_read(s, b, 0, 100, collect_msg, &after), 6);
    assert_int_equal(after.m[0].seq, 5);
    assert_string_equal(after.m[0].body, "b5");
    assert_int_equal(ims_store_begin(s), 0); /* the same in a transaction (the marks in memory) */
    got inb = {.n = 0};
    assert_int_equal(ims_store_queue_read(s, b, 2, 100, collect_msg, &inb), 6);
    assert_int_equal(inb.m[0].seq, 5);
    assert_int_equal(ims_store_queue_ack(s, b, 7, NULL), 0);
    assert_int_equal(mcount(s), 5);
    assert_int_equal(ims_store_commit(s), 0);
    sql_int(f->path, "SELECT count(*) FROM queue WHERE user_id = 2", &v);
    assert_int_equal(v, 1);
    /* the last one acknowledged: the row goes */
    assert_int_equal(ims_store_queue_ack(s, b, 10, NULL), 0);
    sql_int(f->path, "SELECT count(*) FROM queue WHERE user_id = 2", &v);
    assert_int_equal(v, 0);
    assert_int_equal(qcount(s, b), 0);
    assert_int_equal(mcount(s), 2);
    integrity_ok(s);
    /* carol's row goes with her */
    assert_int_equal(ims_store_user_delete(s, c), 0);
    sql_int(f->path, "SELECT count(*) FROM queue", &v);
    assert_int_equal(v, 0);
    integrity_ok(s);
}

/* A room message (an entry that refers to a messages row) and a large direct message between
 * direct ones: the rows around them hold the runs before and after, in seq order. */
static void test_queue_packed_around_shared_entries(void **state)
{
    fx *f = *state;
    ims_store *s = f->s;
    int64_t a = mk_user(s, "alice"), b = mk_user(s, "bob");
    int64_t rb[] = {b};
    static char big[900];
    memset(big, 'L', sizeof big - 1);
    int room = 0;
    assert_int_equal(ims_store_room_join(s, "lobby", b, 1, &room), 0);
    assert_int_equal(ims_store_begin(s), 0);
    uint64_t seq = 0;
    put_direct(s, a, "alice", b, "bob", 1, NULL, 0, "d1", &seq);
    put_direct(s, a, "alice", b, "bob", 2, NULL, 0, "d2", &seq);
    put(s, a, "alice", 2, "lobby", "r3", rb, 1, NULL);
    put_direct(s, a, "alice", b, "bob", 4, NULL, 0, "d4", &seq);
    put_direct(s, a, "alice", b, "bob", 5, NULL, 0, big, &seq);
    put_direct(s, a, "alice", b, "bob", 6, NULL, 0, "d6", &seq);
    put_direct(s, a, "alice", b, "bob", 7, NULL, 0, "d7", &seq);
    assert_int_equal(seq, 7);
    assert_int_equal(ims_store_commit(s), 0);
    char rows[128];
    pragma_text(f->path,
                "SELECT group_concat(seq || ':' || n, ' ') FROM (SELECT seq, n FROM queue WHERE "
                "user_id = 2 ORDER BY seq)",
                rows, sizeof rows);
    assert_string_equal(rows, "2:2 3:1 4:1 5:1 7:2");
    fx_reopen(f);
    s = f->s;
    const char *want[] = {"d1", "d2", "r3", "d4"};
    /* collect_msg stops at 128 bytes: read the runs around the big one separately */
    got g1 = {.n = 0};
    assert_int_equal(ims_store_queue_read(s, b, 0, 4, collect_msg, &g1), 4);
    for (int i = 0; i < 4; i++) {
        assert_int_equal(g1.m[i].seq, (uint64_t)i + 1);
        assert_string_equal(g1.m[i].body, want[i]);
    }
    assert_int_equal(g1.m[2].kind, 2);
    got g2 = {.n = 0};
    assert_int_equal(ims_store_queue_read(s, b, 5, 10, collect_msg, &g2), 2);
    assert_string_equal(g2.m[0].body, "d6");
    assert_string_equal(g2.m[1].body, "d7");
    integrity_ok(s);
}

/* A row of packed messages that cannot be written: the COMMIT fails and the batch is rolled
 * back whole (nothing of it acknowledged, the marks unchanged); the store works on. */
static void test_queue_packed_write_failure(void **state)
{
    fx *f = *state;
    ims_store *s = f->s;
    int64_t a = mk_user(s, "alice"), b = mk_user(s, "bob"), c = mk_user(s, "carol");
    uint64_t seq = 0;
    put_direct(s, a, "alice", c, "carol", 1, NULL, 0, "before", &seq);
    exec_sql(f->path, "CREATE TRIGGER no_pack BEFORE INSERT ON queue WHEN NEW.n > 1 "
                      "BEGIN SELECT RAISE(ABORT, 'planted'); END");
    assert_int_equal(ims_store_begin(s), 0);
    for (int i = 0; i < 3; i++)
        put_direct(s, a, "alice", b, "bob", 2, NULL, 0, "lost", &seq);
    assert_int_equal(ims_store_queue_ack(s, c, 1, NULL), 0);
    assert_int_equal(ims_store_commit(s), IMP_ERR_STORAGE);
    exec_sql(f->path, "DROP TRIGGER no_pack");
    assert_int_equal(qcount(s, b), 0);
    assert_int_equal(qcount(s, c), 1); /* carol's ack went with the batch */
    got g = {.n = 0};
    assert_int_equal(ims_store_queue_read(s, b, 0, 10, collect_msg, &g), 0);
    ims_user u;
    assert_int_equal(ims_store_user_get_id(s, b, &u), 0);
    assert_int_equal(u.last_seq, 0);
    integrity_ok(s);
    assert_int_equal(ims_store_begin(s), 0);
    for (int i = 0; i < 3; i++)
        put_direct(s, a, "alice", b, "bob", 3, NULL, 0, "kept", &seq);
    assert_int_equal(ims_store_commit(s), 0);
    assert_int_equal(seq, 3);
    assert_int_equal(qcount(s, b), 3);
    integrity_ok(s);
}

/* In one batch: more direct messages for one user than the queue cache holds, read back in the
 * batch from the first (the table: the waiting ones are written first), packed PK_MAX (64) to
 * an entry; and a user deleted in the batch that queued messages for them: no entry is left. */
static void test_queue_packed_big_batch(void **state)
{
    fx *f = *state;
    ims_store *s = f->s;
    int64_t a = mk_user(s, "alice"), b = mk_user(s, "bob"), c = mk_user(s, "carol");
    enum { N = 9000 };
    assert_int_equal(ims_store_begin(s), 0);
    for (int i = 1; i <= N; i++) {
        char body[16];
        snprintf(body, sizeof body, "m%d", i);
        uint64_t seq = 0;
        put_direct(s, a, "alice", b, "bob", 1, NULL, 0, body, &seq);
        assert_int_equal(seq, (uint64_t)i);
    }
    got g = {.n = 0};
    assert_int_equal(ims_store_queue_read(s, b, 0, 100, collect_msg, &g), 100);
    for (int i = 0; i < 100; i++) {
        char want[16];
        snprintf(want, sizeof want, "m%d", i + 1);
        assert_int_equal(g.m[i].seq, (uint64_t)i + 1);
        assert_string_equal(g.m[i].body, want);
    }
    uint64_t seq = 0;
    put_direct(s, a, "alice", c, "carol", 1, NULL, 0, "gone", &seq);
    put_direct(s, a, "alice", c, "carol", 1, NULL, 0, "gone too", &seq);
    assert_int_equal(ims_store_user_delete(s, c), 0);
    assert_int_equal(ims_store_commit(s), 0);
    long long v = 0;
    sql_int(f->path, "SELECT count(*) FROM queue WHERE user_id = 2", &v);
    assert_int_equal(v, (N + 63) / 64);
    sql_int(f->path, "SELECT max(n) FROM queue", &v);
    assert_int_equal(v, 64);
    sql_int(f->path, "SELECT count(*) FROM queue WHERE user_id <> 2", &v);
    assert_int_equal(v, 0);
    assert_int_equal(qcount(s, b), N);
    integrity_ok(s);
}

/* A packed entry that overlaps the one before it, or whose records do not decode (a damaged
 * file or a hand edit): the integrity check names it, and a read of it fails with STORAGE
 * instead of passing garbage on. */
static void test_queue_packed_damage(void **state)
{
    fx *f = *state;
    ims_store *s = f->s;
    int64_t a = mk_user(s, "alice"), b = mk_user(s, "bob");
    uint64_t seq = 0;
    for (int batch = 0; batch < 2; batch++) {
        assert_int_equal(ims_store_begin(s), 0);
        for (int i = 0; i < 3 - batch; i++)
            put_direct(s, a, "alice", b, "bob", 1, NULL, 0, "m", &seq);
        assert_int_equal(ims_store_commit(s), 0);
    }
    integrity_ok(s);
    char sql[200], err[256] = "";
    snprintf(sql, sizeof sql, "UPDATE queue SET n = 3 WHERE user_id = %lld AND seq = 5",
             (long long)b);
    exec_sql(f->path, sql);
    assert_int_equal(ims_store_integrity_check(s, err, sizeof err), IMP_ERR_STORAGE);
    assert_non_null(strstr(err, "does not follow"));
    snprintf(sql, sizeof sql,
             "UPDATE queue SET n = 2, body = substr(body, 1, length(body) - 1) WHERE user_id = "
             "%lld AND seq = 5",
             (long long)b);
    exec_sql(f->path, sql);
    assert_int_equal(ims_store_integrity_check(s, err, sizeof err), IMP_ERR_STORAGE);
    assert_non_null(strstr(err, "do not decode"));
    fx_reopen(f); /* an empty cache */
    got g = {.n = 0};
    assert_int_equal(ims_store_queue_read(f->s, b, 3, 10, collect_msg, &g), IMP_ERR_STORAGE);
    assert_int_equal(g.n, 1); /* seq 4 decodes; the damaged seq 5 is not passed on */
    assert_int_equal(g.m[0].seq, 4);
    assert_non_null(strstr(f->last_log, "damaged"));
    got g2 = {.n = 0}; /* the entry before it reads */
    assert_int_equal(ims_store_queue_read(f->s, b, 0, 3, collect_msg, &g2), 3);
}

/* The expected body of user k's message seq: kept by the model of test_queue_packed_random. */
struct pmodel {
    char (*body)[48]; /* [seq] for seq 1..last */
    size_t cap;
};

struct pcheck {
    const struct pmodel *m;
    uint64_t next;
    int n;
};

static int check_model_body(void *ud, const ims_message *m)
{
    struct pcheck *c = ud;
    assert_int_equal(m->seq, c->next);
    const char *want = c->m->body[m->seq];
    assert_int_equal(m->body_len, strlen(want));
    assert_memory_equal(m->body, want, m->body_len);
    c->next++;
    c->n++;
    return 0;
}

/* Random direct and room messages, acks (inside rows too), reads from any position in and
 * between batches, batches of any size, and reopenings (an empty cache: reads decode rows),
 * checked against a model; the integrity check (the rows tile acked+1..last) at every reopening. */
static void test_queue_packed_random(void **state)
{
    fx *f = *state;
    enum { USERS = 12, OPS = 12000 };
    int64_t a = mk_user(f->s, "alice"), ids[USERS];
    uint64_t last[USERS] = {0}, acked[USERS] = {0};
    struct pmodel model[USERS];
    int room = 0;
    for (int i = 0; i < USERS; i++) {
        char name[16];
        snprintf(name, sizeof name, "user%d", i);
        ids[i] = mk_user(f->s, name);
        if (i % 3 == 0)
            assert_int_equal(ims_store_room_join(f->s, "lobby", ids[i], 1, &room), 0);
        model[i].cap = 64;
        model[i].body = calloc(model[i].cap, sizeof *model[i].body);
        assert_non_null(model[i].body);
    }
    int64_t members[USERS];
    size_t nmembers = 0;
    for (int i = 0; i < USERS; i += 3)
        members[nmembers++] = ids[i];
    uint32_t rnd = 777;
#define RND() (rnd = rnd * 1103515245u + 12345u, (rnd >> 8) & 0xffff)
    int in_batch = 0, reopens = 0;
    long msgs = 0;
    for (int op = 0; op < OPS; op++) {
        int k = (int)(RND() % USERS), what = (int)(RND() % 1000);
        if (!in_batch && RND() % 8 != 0) {
            assert_int_equal(ims_store_begin(f->s), 0);
            in_batch = 1;
        }
        if (what < 700) { /* a direct message, or (1 in 10) a room message to the members */
            int roommsg = RND() % 10 == 0;
            for (size_t j = 0; j < (roommsg ? nmembers : 1); j++) {
                int u = roommsg ? (int)(j * 3) : k;
                if (last[u] + 2 > model[u].cap) {
                    model[u].cap *= 2;
                    model[u].body = realloc(model[u].body, model[u].cap * sizeof *model[u].body);
                    assert_non_null(model[u].body);
                }
            }
            char body[48];
            snprintf(body, sizeof body, "%c%d.%ld", roommsg ? 'r' : 'd', k, ++msgs);
            if (roommsg) {
                uint64_t seqs[USERS];
                put(f->s, a, "alice", 2, "lobby", body, members, nmembers, seqs);
                for (size_t j = 0; j < nmembers; j++) {
                    int u = (int)(j * 3);
                    assert_int_equal(seqs[j], ++last[u]);
                    snprintf(model[u].body[last[u]], sizeof model[u].body[0], "%s", body);
                }
            } else {
                uint64_t seq = 0;
                put(f->s, a, "alice", 1, "x", body, &ids[k], 1, &seq);
                assert_int_equal(seq, ++last[k]);
                snprintf(model[k].body[last[k]], sizeof model[k].body[0], "%s", body);
            }
        } else if (what < 850) {
            uint64_t upto = acked[k] + RND() % (last[k] - acked[k] + 1);
            assert_int_equal(ims_store_queue_ack(f->s, ids[k], upto, NULL), 0);
            if (upto > acked[k])
                acked[k] = upto;
        } else if (what < 950) { /* a read from any position at or after the acked mark */
            uint64_t from = acked[k] + RND() % (last[k] - acked[k] + 1);
            if (RND() % 4 == 0)
                from = RND() % (acked[k] + 1); /* before it: starts after the acked mark */
            uint64_t start = from > acked[k] ? from : acked[k];
            int limit = 1 + (int)(RND() % 40);
            struct pcheck c = {&model[k], start + 1, 0};
            int n = ims_store_queue_read(f->s, ids[k], from, limit, check_model_body, &c);
            uint64_t avail = last[k] - start;
            assert_int_equal(n, avail < (uint64_t)limit ? (int)avail : limit);
        } else if (what < 990) {
            if (in_batch) {
                assert_int_equal(ims_store_commit(f->s), 0);
                in_batch = 0;
            }
        } else {
            if (in_batch) {
                assert_int_equal(ims_store_commit(f->s), 0);
                in_batch = 0;
            }
            integrity_ok(f->s);
            fx_reopen(f);
            reopens++;
        }
    }
#undef RND
    if (in_batch)
        assert_int_equal(ims_store_commit(f->s), 0);
    fx_reopen(f);
    for (int k = 0; k < USERS; k++) {
        struct pcheck c = {&model[k], acked[k] + 1, 0};
        while (c.next <= last[k])
            assert_true(ims_store_queue_read(f->s, ids[k], c.next - 1, 50, check_model_body, &c) >
                        0);
        assert_int_equal(c.next, last[k] + 1);
        assert_int_equal(qcount(f->s, ids[k]), (int64_t)(last[k] - acked[k]));
        free(model[k].body);
    }
    integrity_ok(f->s);
    assert_true(reopens > 5);
    /* the rows were packed: fewer rows than queued messages */
    long long rows = 0, queued = 0;
    sql_int(f->path, "SELECT count(*) FROM queue", &rows);
    sql_int(f->path, "SELECT sum(last_seq - acked_seq) FROM users", &queued);
    print_message("packed random: %ld messages, %d reopenings, %lld queued in %lld rows\n", msgs,
                  reopens, queued, rows);
    assert_true(rows < queued);
}

/* Version 3 to 4: the queue gains its n column (every existing row holds one message). */
static void test_migrate_schema_3(void **state)
{
    fx *f = *state;
    char path[200];
    snprintf(path, sizeof path, "%s/v3.db", f->dir);
    exec_sql(
        path,
        "PRAGMA journal_mode = WAL;"
        "CREATE TABLE users(id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL UNIQUE,"
        " hash TEXT NOT NULL, admin INTEGER NOT NULL DEFAULT 0,"
        " last_seq INTEGER NOT NULL DEFAULT 0, acked_seq INTEGER NOT NULL DEFAULT 0,"
        " created_ms INTEGER NOT NULL);"
        "CREATE TABLE tokens(hash BLOB PRIMARY KEY NOT NULL CHECK (length(hash) = 32),"
        " user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,"
        " expires_ms INTEGER NOT NULL);"
        "CREATE INDEX tokens_user ON tokens(user_id);"
        "CREATE TABLE messages(msg_id INTEGER PRIMARY KEY AUTOINCREMENT,"
        " sender_id INTEGER NOT NULL, sender TEXT NOT NULL, target_kind INTEGER NOT NULL,"
        " target TEXT NOT NULL, ts_ms INTEGER NOT NULL, headers BLOB, body BLOB NOT NULL,"
        " hist INTEGER NOT NULL DEFAULT 0);"
        "CREATE INDEX messages_hist ON messages(target, msg_id) WHERE hist = 1;"
        "CREATE TABLE queue(user_id INTEGER NOT NULL,"
        " seq INTEGER NOT NULL, msg_id INTEGER NOT NULL, inl INTEGER NOT NULL DEFAULT 0,"
        " sender_id INTEGER, sender TEXT, target TEXT, ts_ms INTEGER, headers BLOB, body BLOB,"
        " PRIMARY KEY(user_id, seq)) WITHOUT ROWID;"
        "CREATE INDEX queue_msg ON queue(msg_id) WHERE inl = 0;"
        "CREATE TABLE dedupe(sender_id INTEGER NOT NULL,"
        " client_msg_id TEXT NOT NULL, msg_id INTEGER NOT NULL, digest BLOB,"
        " ts_ms INTEGER NOT NULL, PRIMARY KEY(sender_id, client_msg_id)) WITHOUT ROWID;"
        "CREATE INDEX dedupe_ts ON dedupe(ts_ms);"
        "CREATE TABLE rooms(name TEXT PRIMARY KEY NOT NULL, created_ms INTEGER NOT NULL)"
        " WITHOUT ROWID;"
        "CREATE TABLE members(room TEXT NOT NULL REFERENCES rooms(name) ON DELETE CASCADE,"
        " user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,"
        " PRIMARY KEY(room, user_id)) WITHOUT ROWID;"
        "CREATE INDEX members_user ON members(user_id, room);"
        "INSERT INTO users(name, hash, last_seq, acked_seq, created_ms) VALUES"
        " ('alice', 'h', 0, 0, 1), ('bob', 'h', 3, 1, 1);"
        "INSERT INTO rooms VALUES ('lobby', 1);"
        "INSERT INTO members VALUES ('lobby', 2);"
        "INSERT INTO messages(msg_id, sender_id, sender, target_kind, target, ts_ms, body,"
        " hist) VALUES (7, 1, 'alice', 2, 'lobby', 11, x'7231', 1);"
        "UPDATE sqlite_sequence SET seq = 9 WHERE name = 'messages';"
        "INSERT INTO queue(user_id, seq, msg_id, inl, sender_id, sender, target, ts_ms, headers,"
        " body) VALUES (2, 2, 6, 1, 1, 'alice', 'bob', 10, x'0001', x'6432'),"
        " (2, 3, 7, 0, NULL, NULL, NULL, NULL, NULL, NULL);"
        "PRAGMA application_id = 1768776753; PRAGMA user_version = 3;");
    ims_store_options o = {path, 1, log_hook, f, 0, 0};
    char err[256] = "";
    ims_store *s = ims_store_open(&o, err, sizeof err);
    if (s == NULL)
        fail_msg("open: %s", err);
    char v[64];
    pragma_text(path, "PRAGMA user_version", v, sizeof v);
    assert_string_equal(v, "4");
    pragma_text(path, "SELECT group_concat(n) FROM queue", v, sizeof v);
    assert_string_equal(v, "1,1");
    integrity_ok(s);
    ims_user bob;
    assert_int_equal(ims_store_user_get(s, "bob", &bob), 0);
    got g = {.n = 0};
    assert_int_equal(ims_store_queue_read(s, bob.id, 0, 10, collect_msg, &g), 2);
    assert_int_equal(g.m[0].seq, 2);
    assert_memory_equal(g.m[0].body, "d2", 2);
    assert_int_equal(g.m[1].msg_id, 7);
    /* and new batches pack */
    assert_int_equal(ims_store_begin(s), 0);
    uint64_t seq = 0;
    put_direct(s, 1, "alice", bob.id, "bob", 20, NULL, 0, "d4", &seq);
    put_direct(s, 1, "alice", bob.id, "bob", 21, NULL, 0, "d5", &seq);
    assert_int_equal(ims_store_commit(s), 0);
    pragma_text(path, "SELECT group_concat(seq || ':' || n, ' ') FROM queue", v, sizeof v);
    assert_string_equal(v, "2:1 3:1 5:2");
    integrity_ok(s);
    ims_store_close(s);
}

/* ---- main -------------------------------------------------------------------------------------
 */

#define BOTH(t)                                                            \
    cmocka_unit_test_prestate_setup_teardown(t, setup, teardown, &fx_mem), \
        cmocka_unit_test_prestate_setup_teardown(t, setup, teardown, &fx_file)
#define FILE_ONLY(t) cmocka_unit_test_prestate_setup_teardown(t, setup, teardown, &fx_file)

int main(void)
{
    if (sodium_init() < 0)
        return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_open_bad_arguments),
        BOTH(test_schema_and_pragmas),
        FILE_ONLY(test_open_refuses_foreign_or_newer_schema),
        FILE_ONLY(test_migrate_schema_1),
        FILE_ONLY(test_migrate_schema_2),
        BOTH(test_integrity_rows_of_no_user),
        BOTH(test_users_crud),
        BOTH(test_users_bad_input),
        BOTH(test_users_list_paging),
        BOTH(test_all_user_ids),
        BOTH(test_tokens),
        BOTH(test_message_put_fanout_seqs),
        BOTH(test_message_put_large_fanout),
        BOTH(test_message_put_errors_store_nothing),
        BOTH(test_queue_read),
        BOTH(test_queue_ack),
        BOTH(test_ack_deletes_message_after_last_recipient),
        BOTH(test_dedupe),
        BOTH(test_dedupe_expire_batches),
        BOTH(test_rooms_membership),
        BOTH(test_room_history_and_prune),
        BOTH(test_room_prune_counts),
        BOTH(test_user_delete_removes_everything),
        BOTH(test_batch_failure_isolated),
        BOTH(test_batch_marks_written_at_commit),
        BOTH(test_direct_put_failures_in_batch),
        BOTH(test_direct_inline_threshold),
        FILE_ONLY(test_ack_failures_in_batch),
        BOTH(test_queue_cache_matches_table),
        BOTH(test_queue_cache_overflow),
        FILE_ONLY(test_queue_cache_rolled_back_batch),
        BOTH(test_queue_cache_user_delete),
        BOTH(test_queue_cache_random),
        FILE_ONLY(test_queue_packed_rows),
        FILE_ONLY(test_queue_packed_around_shared_entries),
        FILE_ONLY(test_queue_packed_write_failure),
        FILE_ONLY(test_queue_packed_big_batch),
        FILE_ONLY(test_queue_packed_damage),
        FILE_ONLY(test_queue_packed_random),
        FILE_ONLY(test_migrate_schema_3),
        FILE_ONLY(test_persistence),
        FILE_ONLY(test_uncommitted_batch_lost_on_crash),
        FILE_ONLY(test_locked_database),
        BOTH(test_reentrant_callbacks),
        FILE_ONLY(test_open_corrupt_database),
        FILE_ONLY(test_open_truncated_database),
        FILE_ONLY(test_running_marker),
        FILE_ONLY(test_open_after_unclean_shutdown_full_check),
        FILE_ONLY(test_open_empty_file),
        BOTH(test_throughput),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
