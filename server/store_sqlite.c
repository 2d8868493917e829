/* imd — the store on SQLite (store.h): users, resume tokens, messages and per-user queues
 * (SPEC.md section 9, IMP-DELIV-001..008), rooms and their history.
 *
 * One connection, used by one thread. Every statement is prepared once at open and kept in
 * s->st[] (reset and rebound per call); a statement still in use by an outer call (a callback
 * calling the store again) is not reused: a fresh one is prepared for the nested call and
 * finalized after it.
 *
 * Transactions: ims_store_begin() is BEGIN IMMEDIATE, ims_store_commit() COMMIT (with
 * synchronous=FULL the commit is the fsync, IMP-DELIV-001). Every writing operation runs inside
 * a SAVEPOINT when a batch is open, so that a failing operation is undone alone and the batch
 * stays usable; outside a batch it runs in its own BEGIN IMMEDIATE ... COMMIT. Inside a
 * transaction the users' last_seq/acked_seq live in memory and are written once per user just
 * before COMMIT ("user marks" below).
 *
 * Schema (PRAGMA user_version 4, application_id 'imd1'; versions 1 to 3 are migrated):
 *   users(id AUTOINCREMENT, name UNIQUE, hash, admin, last_seq, acked_seq, created_ms)
 *   tokens(hash BLOB(32) PK, user_id, expires_ms)
 *   messages(msg_id AUTOINCREMENT: global, ascending, never reused; sender_id, sender,
 *            target_kind, target, ts_ms, headers, body, hist: 1 while in its room's kept history)
 *            room and broadcast messages (shared by their recipients' queues)
 *   queue(user_id, seq, msg_id, inl, sender_id, sender, target, ts_ms, headers, body, n)
 *            PK(user_id, seq) WITHOUT ROWID: the unacknowledged entries. An entry holds the n
 *            messages seq-n+1..seq of its user; each user's entries tile the seqs from at most
 *            acked_seq+1 to last_seq (the first may also hold acknowledged ones). A direct
 *            message of at most IMS_INLINE_MAX bytes is kept in its entry (inl = 1, n = 1),
 *            or with the other direct messages queued for the same user in the same batch
 *            (inl = 2, n >= 2: "packed entries" below); other entries refer to their messages
 *            row (inl = 0, n = 1). msg_ids of all come from the one sequence of messages
 *            (sqlite_sequence, next_msg_id).
 *   dedupe(sender_id, client_msg_id, msg_id, digest, ts_ms) PK(sender_id, client_msg_id)
 *   rooms(name PK, created_ms), members(room, user_id) PK(room, user_id)
 * A message row is deleted as soon as no queue row refers to it and hist = 0; an inline message
 * goes with its queue entry.
 */
#include "store.h"
#include "store_wal.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#define IMS_SCHEMA_VERSION 4
#define IMS_APPLICATION_ID 0x696d6431 /* "imd1" */
#define IMS_NAME_MAX 32
#define IMS_HASH_LEN_MAX 127
#define IMS_BUSY_DEFAULT_MS 5000
/* The largest direct message (body + headers) kept inline in its queue entry. The queue is a
 * WITHOUT ROWID table: SQLite reads a whole entry to use any of its columns, and an entry over
 * about 1,000 bytes (4 KiB pages) spills into overflow pages. Larger messages take a messages
 * row, as room messages do (a 512 KiB message was copied whole by every read of its entry). */
#define IMS_INLINE_MAX 768

/* ---- statements ----------------------------------------------------------------------------- */

enum {
    ST_BEGIN,
    ST_COMMIT,
    ST_ROLLBACK,
    ST_SAVEPOINT,
    ST_RELEASE,
    ST_ROLLBACK_TO,
    ST_USER_INSERT,
    ST_USER_BY_NAME,
    ST_USER_BY_ID,
    ST_USER_SET_HASH,
    ST_USER_SET_ADMIN,
    ST_USER_DELETE,
    ST_USER_LIST,
    ST_USER_COUNT,
    ST_USER_IDS,
    ST_USER_MARKS,
    ST_USER_SET_MARKS,
    ST_TOKEN_INSERT,
    ST_TOKEN_CHECK,
    ST_TOKEN_DELETE,
    ST_TOKEN_EXPIRE,
    ST_DEDUPE_GET,
    ST_DEDUPE_INSERT,
    ST_DEDUPE_DELETE_USER,
    ST_DEDUPE_CUT,
    ST_DEDUPE_EXPIRE,
    ST_MSG_INSERT,
    ST_MSG_DELETE_UNUSED,
    ST_MSG_COUNT,
    ST_MSG_DELETE_UNUSED_LIST,
    ST_MSG_SEQ_GET,
    ST_MSG_SEQ_SET,
    ST_MSG_SEQ_ADD,
    ST_QUEUE_INSERT,
    ST_QUEUE_INSERT_INLINE,
    ST_QUEUE_INSERT_PACK,
    ST_QUEUE_READ,
    ST_QUEUE_IDS_RANGE,
    ST_QUEUE_DELETE_RANGE,
    ST_ROOM_INSERT,
    ST_ROOM_EXISTS,
    ST_ROOM_LIST,
    ST_MEMBER_INSERT,
    ST_MEMBER_DELETE,
    ST_MEMBER_CHECK,
    ST_MEMBER_IDS,
    ST_MEMBER_NAMES,
    ST_USER_ROOMS,
    ST_HISTORY,
    ST_HISTORY_EXCESS,
    ST_HISTORY_DROP,
    ST_HISTORY_COUNT,
    ST_HISTORY_OLDEST,
    ST_MARK,
    ST_COUNT
};

/* The highest msg_id and user id ever given: AUTOINCREMENT keeps them in sqlite_sequence, and
 * never gives an id twice, even after the row is deleted (an acknowledged message): they never
 * go backwards. NULL (no row yet) reads as 0. */
#define MARK_SQL                                                         \
    "SELECT (SELECT seq FROM sqlite_sequence WHERE name = 'messages'), " \
    "(SELECT seq FROM sqlite_sequence WHERE name = 'users')"

#define MSG_COLS \
    "m.msg_id, m.sender_id, m.sender, m.target_kind, m.target, m.ts_ms, m.headers, m.body"

#define IMS_STR_(x) #x
#define IMS_STR(x) IMS_STR_(x)

static const char *const st_sql[ST_COUNT] = {
    [ST_BEGIN] = "BEGIN IMMEDIATE",
    [ST_COMMIT] = "COMMIT",
    [ST_ROLLBACK] = "ROLLBACK",
    [ST_SAVEPOINT] = "SAVEPOINT ims_op",
    [ST_RELEASE] = "RELEASE ims_op",
    [ST_ROLLBACK_TO] = "ROLLBACK TO ims_op",
    [ST_USER_INSERT] = "INSERT INTO users(name, hash, admin, created_ms) VALUES (?1, ?2, ?3, ?4)",
    [ST_USER_BY_NAME] = "SELECT id, name, hash, admin, last_seq, acked_seq, created_ms FROM users "
                        "WHERE name = ?1",
    [ST_USER_BY_ID] = "SELECT id, name, hash, admin, last_seq, acked_seq, created_ms FROM users "
                      "WHERE id = ?1",
    [ST_USER_SET_HASH] = "UPDATE users SET hash = ?2 WHERE id = ?1",
    [ST_USER_SET_ADMIN] = "UPDATE users SET admin = ?2 WHERE id = ?1",
    [ST_USER_DELETE] = "DELETE FROM users WHERE id = ?1",
    [ST_DEDUPE_DELETE_USER] = "DELETE FROM dedupe WHERE sender_id = ?1",
    [ST_USER_LIST] = "SELECT id, name, hash, admin, last_seq, acked_seq, created_ms FROM users "
                     "WHERE name > ?1 ORDER BY name LIMIT ?2",
    [ST_USER_COUNT] = "SELECT count(*) FROM users",
    [ST_USER_IDS] = "SELECT id FROM users ORDER BY id",
    [ST_USER_MARKS] = "SELECT last_seq, acked_seq FROM users WHERE id = ?1",
    /* the batch's marks (see "user marks" below), written once per user before COMMIT */
    [ST_USER_SET_MARKS] = "UPDATE users SET last_seq = ?2, acked_seq = ?3 WHERE id = ?1",
    [ST_TOKEN_INSERT] = "INSERT INTO tokens(hash, user_id, expires_ms) VALUES (?1, ?2, ?3)",
    [ST_TOKEN_CHECK] = "SELECT user_id FROM tokens WHERE hash = ?1 AND expires_ms > ?2",
    [ST_TOKEN_DELETE] = "DELETE FROM tokens WHERE hash = ?1",
    [ST_TOKEN_EXPIRE] = "DELETE FROM tokens WHERE expires_ms <= ?1",
    [ST_DEDUPE_GET] = "SELECT msg_id, digest FROM dedupe WHERE sender_id = ?1 AND "
                      "client_msg_id = ?2",
    [ST_DEDUPE_INSERT] = "INSERT INTO dedupe(sender_id, client_msg_id, msg_id, digest, ts_ms) "
                         "VALUES (?1, ?2, ?3, ?4, ?5)",
    /* the timestamp of the BATCH-th oldest entry: expiry deletes below it (the index range) */
    [ST_DEDUPE_CUT] =
        "SELECT ts_ms FROM dedupe WHERE ts_ms < ?1 ORDER BY ts_ms LIMIT 1 OFFSET " IMS_STR(
            IMS_DEDUPE_EXPIRE_BATCH) " - 1",
    [ST_DEDUPE_EXPIRE] = "DELETE FROM dedupe WHERE ts_ms < ?1",
    /* msg_id given (next_msg_id): the same sequence as the direct messages kept inline */
    [ST_MSG_INSERT] = "INSERT INTO messages(sender_id, sender, target_kind, target, ts_ms, "
                      "headers, body, hist, msg_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    [ST_MSG_DELETE_UNUSED] = "DELETE FROM messages WHERE msg_id = ?1 AND hist = 0 AND "
                             "NOT EXISTS (SELECT 1 FROM queue WHERE msg_id = ?1 AND inl = 0)",
    /* the messages: the shared rows and the direct messages kept inline in a queue */
    [ST_MSG_COUNT] = "SELECT (SELECT count(*) FROM messages) + (SELECT coalesce(sum(CASE WHEN "
                     "q.inl = 2 THEN min(q.n, q.seq - u.acked_seq) ELSE 1 END), 0) FROM queue q "
                     "JOIN users u ON u.id = q.user_id WHERE q.inl <> 0)",
    /* the messages of an ack's range that nobody needs any more, in one statement (?1: a JSON
     * array of ids; one DELETE per message was a fifth of the durable benchmark's time) */
    [ST_MSG_DELETE_UNUSED_LIST] =
        "DELETE FROM messages WHERE msg_id IN (SELECT value FROM json_each(?1)) AND hist = 0 AND "
        "NOT EXISTS (SELECT 1 FROM queue WHERE msg_id = messages.msg_id AND inl = 0)",
    [ST_MSG_SEQ_GET] = "SELECT seq FROM sqlite_sequence WHERE name = 'messages'",
    [ST_MSG_SEQ_SET] = "UPDATE sqlite_sequence SET seq = ?1 WHERE name = 'messages' AND seq < ?1",
    [ST_MSG_SEQ_ADD] = "INSERT INTO sqlite_sequence(name, seq) SELECT 'messages', ?1 "
                       "WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'messages')",
    /* an entry for a message of the messages table (room, broadcast) */
    [ST_QUEUE_INSERT] = "INSERT INTO queue(user_id, seq, msg_id) VALUES (?1, ?2, ?3)",
    /* a direct message: kept in its recipient's queue entry (issue 3: one row, not three) */
    [ST_QUEUE_INSERT_INLINE] =
        "INSERT INTO queue(user_id, seq, msg_id, inl, sender_id, sender, target, ts_ms, headers, "
        "body) VALUES (?1, ?2, ?3, 1, ?4, ?5, ?6, ?7, ?8, ?9)",
    /* direct messages packed into one entry (?2 the last one's seq, ?3 its msg_id) */
    [ST_QUEUE_INSERT_PACK] =
        "INSERT INTO queue(user_id, seq, msg_id, inl, body, n) VALUES (?1, ?2, ?3, 2, ?4, ?5)",
    /* columns 0-7 the inline message, 8-15 the shared one (NULL for an inline entry), 16 seq,
     * 17 inl, 18 n (a packed entry: its records in column 7) */
    [ST_QUEUE_READ] = "SELECT q.msg_id, q.sender_id, q.sender, 1, q.target, q.ts_ms, q.headers, "
                      "q.body, " MSG_COLS ", q.seq, q.inl, q.n FROM queue q LEFT JOIN messages m "
                      /* not "ON q.inl = 0 AND ...": SQLite would seek messages first */
                      "ON m.msg_id = CASE WHEN q.inl = 0 THEN q.msg_id END "
                      "WHERE q.user_id = ?1 AND q.seq > ?2 ORDER BY q.seq LIMIT ?3",
    /* an ack: the ids of the shared messages first (candidates for deletion), then the range
     * (DELETE ... RETURNING would materialize its rows in a temporary table: measured slower) */
    [ST_QUEUE_IDS_RANGE] = "SELECT msg_id FROM queue WHERE user_id = ?1 AND seq > ?2 AND "
                           "seq <= ?3 AND inl = 0",
    [ST_QUEUE_DELETE_RANGE] = "DELETE FROM queue WHERE user_id = ?1 AND seq > ?2 AND seq <= ?3",
    [ST_ROOM_INSERT] = "INSERT OR IGNORE INTO rooms(name, created_ms) VALUES (?1, ?2)",
    [ST_ROOM_EXISTS] = "SELECT 1 FROM rooms WHERE name = ?1",
    [ST_ROOM_LIST] = "SELECT name FROM rooms WHERE name > ?1 ORDER BY name LIMIT ?2",
    [ST_MEMBER_INSERT] = "INSERT OR IGNORE INTO members(room, user_id) VALUES (?1, ?2)",
    [ST_MEMBER_DELETE] = "DELETE FROM members WHERE room = ?1 AND user_id = ?2",
    [ST_MEMBER_CHECK] = "SELECT (SELECT 1 FROM rooms WHERE name = ?1), "
                        "(SELECT 1 FROM members WHERE room = ?1 AND user_id = ?2)",
    [ST_MEMBER_IDS] = "SELECT user_id FROM members WHERE room = ?1 ORDER BY user_id",
    [ST_MEMBER_NAMES] = "SELECT u.name FROM members mb JOIN users u ON u.id = mb.user_id "
                        "WHERE mb.room = ?1 AND u.name > ?2 ORDER BY u.name LIMIT ?3",
    [ST_USER_ROOMS] = "SELECT room FROM members WHERE user_id = ?1 ORDER BY room",
    [ST_HISTORY] = "SELECT " MSG_COLS " FROM messages m WHERE m.hist = 1 AND m.target = ?1 AND "
                   "m.msg_id < ?2 ORDER BY m.msg_id DESC LIMIT ?3",
    [ST_HISTORY_EXCESS] = "SELECT msg_id FROM messages WHERE hist = 1 AND target = ?1 "
                          "ORDER BY msg_id DESC LIMIT -1 OFFSET ?2",
    [ST_HISTORY_DROP] = "UPDATE messages SET hist = 0 WHERE msg_id = ?1",
    [ST_HISTORY_COUNT] = "SELECT count(*) FROM messages WHERE hist = 1 AND target = ?1",
    /* the ?2 oldest of a room's history (the prune when its length is known) */
    [ST_HISTORY_OLDEST] = "SELECT msg_id FROM messages WHERE hist = 1 AND target = ?1 "
                          "ORDER BY msg_id LIMIT ?2",
    /* The committed high-water mark (see "the committed mark" below). */
    [ST_MARK] = MARK_SQL,
};

/* Schema version 2 (issue 3, durable throughput): a direct message lives in its recipient's
 * queue entry (inl = 1: the message's columns in the entry, no messages row); an entry of a room
 * or broadcast message refers to its messages row (inl = 0, the other columns NULL). msg_id has
 * no foreign key any more (an inline entry has no parent row): ims_store_integrity_check checks
 * the references. */
/* Schema version 3 (issue 3): queue.user_id and dedupe.sender_id have no foreign key either.
 * With foreign keys enforced SQLite looks the users row up for every child row inserted or
 * deleted, the queue's busiest statements: about a fifth of imd's CPU for a durable direct
 * message. A user's queue and dedupe rows are deleted with the user by ims_store_user_delete,
 * a message to or from a user who does not exist is refused before it is written (user marks),
 * and ims_store_integrity_check looks for rows of no user. */
/* Schema version 4 (issue 3): the n column (packed entries). QUEUE_DDL(name, "") is the
 * table of versions 2 and 3 (the migrations build it), QUEUE_DDL(name, QUEUE_N) version 4's. */
#define QUEUE_N " n INTEGER NOT NULL DEFAULT 1,"
#define QUEUE_DDL(name, extra)                                                                    \
    "CREATE TABLE " name "("                                                                      \
    " user_id INTEGER NOT NULL,"                                                                  \
    " seq INTEGER NOT NULL,"                                                                      \
    " msg_id INTEGER NOT NULL,"                                                                   \
    " inl INTEGER NOT NULL DEFAULT 0,"                                                            \
    " sender_id INTEGER, sender TEXT, target TEXT, ts_ms INTEGER, headers BLOB, body BLOB," extra \
    " PRIMARY KEY(user_id, seq)) WITHOUT ROWID;"
#define QUEUE_INDEX_DDL "CREATE INDEX queue_msg ON queue(msg_id) WHERE inl = 0;"

#define DEDUPE_DDL(name)            \
    "CREATE TABLE " name "("        \
    " sender_id INTEGER NOT NULL,"  \
    " client_msg_id TEXT NOT NULL," \
    " msg_id INTEGER NOT NULL,"     \
    " digest BLOB,"                 \
    " ts_ms INTEGER NOT NULL,"      \
    " PRIMARY KEY(sender_id, client_msg_id)) WITHOUT ROWID;"
#define DEDUPE_INDEX_DDL "CREATE INDEX dedupe_ts ON dedupe(ts_ms);"

/* Version 1 to 2: the queue table rebuilt (its entries all refer to messages rows). */
static const char migrate_1_2_sql[] =
    QUEUE_DDL("queue_v2", "") "INSERT INTO queue_v2(user_id, seq, msg_id) "
                              "SELECT user_id, seq, msg_id FROM queue;"
                              "DROP TABLE queue;"
                              "ALTER TABLE queue_v2 RENAME TO queue;" QUEUE_INDEX_DDL
                              "PRAGMA user_version = 2;";

/* Version 2 to 3: queue and dedupe rebuilt without their foreign keys on users. */
static const char migrate_2_3_sql[] = QUEUE_DDL(
    "queue_v3", "") "INSERT INTO queue_v3 SELECT user_id, seq, msg_id, inl, sender_id, "
                    "sender, target, ts_ms, headers, body FROM queue;"
                    "DROP TABLE queue;"
                    "ALTER TABLE queue_v3 RENAME TO queue;" QUEUE_INDEX_DDL DEDUPE_DDL(
                        "dedupe_v3") "INSERT INTO dedupe_v3 SELECT sender_id, "
                                     "client_msg_id, msg_id, digest, ts_ms FROM dedupe;"
                                     "DROP TABLE dedupe;"
                                     "ALTER TABLE dedupe_v3 RENAME TO dedupe;" DEDUPE_INDEX_DDL
                                     "PRAGMA user_version = 3;";

/* Version 3 to 4: the n column; every existing entry holds one message. */
static const char migrate_3_4_sql[] = "ALTER TABLE queue ADD COLUMN n INTEGER NOT NULL DEFAULT 1;"
                                      "PRAGMA user_version = 4;";

static const char schema_sql[] =
    "CREATE TABLE users("
    " id INTEGER PRIMARY KEY AUTOINCREMENT,"
    " name TEXT NOT NULL UNIQUE,"
    " hash TEXT NOT NULL,"
    " admin INTEGER NOT NULL DEFAULT 0,"
    " last_seq INTEGER NOT NULL DEFAULT 0,"
    " acked_seq INTEGER NOT NULL DEFAULT 0,"
    " created_ms INTEGER NOT NULL);"
    "CREATE TABLE tokens("
    " hash BLOB PRIMARY KEY NOT NULL CHECK (length(hash) = 32),"
    " user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,"
    " expires_ms INTEGER NOT NULL);"
    "CREATE INDEX tokens_user ON tokens(user_id);"
    "CREATE TABLE messages("
    " msg_id INTEGER PRIMARY KEY AUTOINCREMENT,"
    " sender_id INTEGER NOT NULL,"
    " sender TEXT NOT NULL,"
    " target_kind INTEGER NOT NULL,"
    " target TEXT NOT NULL,"
    " ts_ms INTEGER NOT NULL,"
    " headers BLOB,"
    " body BLOB NOT NULL,"
    " hist INTEGER NOT NULL DEFAULT 0);"
    "CREATE INDEX messages_hist ON messages(target, msg_id) WHERE hist = 1;" QUEUE_DDL(
        "queue", QUEUE_N) QUEUE_INDEX_DDL DEDUPE_DDL("dedupe") DEDUPE_INDEX_DDL
    "CREATE TABLE rooms("
    " name TEXT PRIMARY KEY NOT NULL,"
    " created_ms INTEGER NOT NULL) WITHOUT ROWID;"
    "CREATE TABLE members("
    " room TEXT NOT NULL REFERENCES rooms(name) ON DELETE CASCADE,"
    " user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,"
    " PRIMARY KEY(room, user_id)) WITHOUT ROWID;"
    "CREATE INDEX members_user ON members(user_id, room);";

struct ims_store {
    sqlite3 *db;
    char *marker;   /* "<path>-running" while open (file databases), NULL otherwise */
    int mark_fd;    /* the marker, open (-1: none): the committed mark is written into it */
    int mark_owner; /* 1: this store holds the marker's lock and removes it on a clean close */
    int mark_write; /* 1: commits write the mark (sync_full only: it needs the commit's fsync) */
    int64_t mark_msg, mark_user; /* the mark last written (-1: none yet) */
    /* fsync_thread (store.h, "syncing off the loop"): the log's descriptor (-1: commits sync
     * inline), batches committed and synced, and the marks of committed, unsynced batches in
     * commit order (at most a few: one per loop turn while an fsync runs). */
    int wal_fd;
    uint64_t gen, synced_gen;
    int64_t durable_msg;
    int64_t changes_at_begin; /* sqlite3_total_changes64 when the transaction began */
    struct pending_mark {
        uint64_t gen;
        int64_t msg, user;
    } * pend;
    size_t npend, cappend;
    char *path;
    sqlite3_stmt *st[ST_COUNT];
    int in_batch;
    void (*log)(void *ud, const char *msg);
    void *log_ud;
    /* Scratch list of message ids whose queue rows were deleted (candidates for deletion). */
    int64_t *ids;
    size_t ids_n, ids_cap;
    /* The user marks of the open transaction (see "user marks" below): an open-addressing
     * table by user id (id 0: free slot), and the current operation's undo records. */
    struct umark {
        int64_t id;
        int64_t last, acked;
        int dirty;   /* changed since read: written by marks_flush() */
        int gone;    /* the user was deleted in this transaction */
        int pk;      /* direct messages for it wait in s->pk (packed entries, below) */
        uint32_t op; /* the operation that last recorded an undo for it */
    } * um;
    size_t um_n, um_cap;
    struct umark_undo {
        int64_t id;
        struct umark old; /* old.id == 0: the entry was absent */
    } * undo;
    size_t undo_n, undo_cap;
    uint32_t op_seq;
    /* The last msg_id given in the open transaction (next_msg_id), read from sqlite_sequence on
     * first use and written back before COMMIT; its value when the current operation began. */
    int64_t msg_seq, msg_seq_op;
    int msg_seq_state, msg_seq_state_op; /* 0: not read, 1: read, 2: changed */
    /* The queue cache (see "queue cache" below): entries by (user, seq) in qc_slots, and in
     * the order they were added in qc_ring (positions qc_tail..qc_head-1, modulo QC_CAP; NULL:
     * removed); those from qc_tent on belong to a transaction not (yet) committed. */
    struct qslot *qc_slots;
    struct qentry **qc_ring;
    uint64_t qc_head, qc_tail, qc_tent;
    size_t qc_n, qc_bytes;
    uint64_t qc_hits;
    /* Packed entries (see "packed entries" below): the inline direct messages of the open batch
     * not written yet, in the order they were queued; their records in pk_buf. */
    struct pk_rec {
        int64_t user_id;
        uint64_t seq;
        size_t off, len; /* the record in pk_buf */
    } * pk;
    size_t pk_n, pk_cap;
    uint8_t *pk_buf, *pk_row;
    size_t pk_len, pk_bufcap, pk_rowcap;
    /* Rooms' history lengths, as far as known (see ims_store_room_prune). */
    struct hcount {
        struct hcount *next;
        int64_t n;
        char room[33];
    } * hc[64];
    size_t hc_n;
    int hc_keep; /* the transaction ending committed: the lengths hold */
};

/* ---- errors --------------------------------------------------------------------------------- */

#if defined(__GNUC__)
#define IMS_PRINTF(f, a) __attribute__((format(printf, f, a)))
#else
#define IMS_PRINTF(f, a)
#endif

IMS_PRINTF(2, 3) static void logf_(ims_store *s, const char *fmt, ...)
{
    if (s->log == NULL)
        return;
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    s->log(s->log_ud, buf);
}

/* A database failure: logs what failed with SQLite's message, returns IMP_ERR_STORAGE. */
static int db_fail(ims_store *s, const char *what)
{
    logf_(s, "store: %s: %s (%d)", what, sqlite3_errmsg(s->db), sqlite3_extended_errcode(s->db));
    return IMP_ERR_STORAGE;
}

IMS_PRINTF(3, 4) static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (err == NULL || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* ---- statement cache ------------------------------------------------------------------------ */

/* The cached statement, or a fresh one when the cached one is in use by an outer call. */
static sqlite3_stmt *st_get(ims_store *s, int id)
{
    sqlite3_stmt *q = s->st[id];
    if (q != NULL && !sqlite3_stmt_busy(q))
        return q;
    q = NULL;
    if (sqlite3_prepare_v3(s->db, st_sql[id], -1, 0, &q, NULL) != SQLITE_OK) {
        db_fail(s, "prepare");
        sqlite3_finalize(q);
        return NULL;
    }
    return q;
}

static void st_put(ims_store *s, int id, sqlite3_stmt *q)
{
    if (q == NULL)
        return;
    if (q != s->st[id]) {
        sqlite3_finalize(q);
        return;
    }
    sqlite3_reset(q);
    sqlite3_clear_bindings(q);
}

/* Runs a statement without result rows (or ignoring them). 0 or IMP_ERR_STORAGE. */
static int st_run(ims_store *s, int id)
{
    sqlite3_stmt *q = st_get(s, id);
    if (q == NULL)
        return IMP_ERR_STORAGE;
    int rc = sqlite3_step(q);
    int r = (rc == SQLITE_DONE || rc == SQLITE_ROW) ? 0 : db_fail(s, st_sql[id]);
    st_put(s, id, q);
    return r;
}

/* ---- argument checks ------------------------------------------------------------------------ */

/* A name the store can hold: 1..32 bytes (callers pass folded names, IMP-TEXT-002). */
static int name_ok(const char *name)
{
    if (name == NULL)
        return 0;
    size_t n = strnlen(name, IMS_NAME_MAX + 1);
    return n >= 1 && n <= IMS_NAME_MAX;
}

static int64_t u64_to_i64(uint64_t v)
{
    return v > (uint64_t)INT64_MAX ? INT64_MAX : (int64_t)v;
}

static void copy_col_text(char *dst, size_t cap, sqlite3_stmt *q, int col)
{
    const unsigned char *t = sqlite3_column_text(q, col);
    size_t n = t ? (size_t)sqlite3_column_bytes(q, col) : 0;
    if (n >= cap)
        n = cap - 1;
    if (n)
        memcpy(dst, t, n);
    dst[n] = '\0';
}

/* ---- transactions --------------------------------------------------------------------------- */

/* ---- the committed mark ----------------------------------------------------------------------
 *
 * IMP-DELIV-007 (no silent loss): after every commit the store writes the committed high-water
 * mark (MARK_SQL: the highest msg_id and user id ever given, read inside the transaction just
 * before its COMMIT) into the running marker, one fixed-size record at offset 0, one pwrite and
 * no fsync. At the next open, when the marker is still there (the store was not closed), a
 * database whose mark is lower than the record's has lost committed transactions: a
 * write-ahead log cut short (which SQLite replays as far as it goes, and which the log scan of
 * store_wal.h cannot tell from a crash), or a database file put back from an older copy without
 * its log. The open refuses then (store.h).
 *
 * Why this cannot refuse a store that merely crashed (kill -9 or power loss): the record is
 * written only after COMMIT returned, and with synchronous=FULL in WAL mode COMMIT returns after
 * the log's fsync: every value the record ever holds was durable before the pwrite was even
 * issued. The record itself is not synced: after a power loss it holds an older value, or is
 * torn or missing (fixed size plus a checksum: a record that does not check out is ignored), so
 * it can only be lower than the truth, never higher. A checkpoint moves the transactions into
 * the database file (synced before the log restarts) and the mark moves with them; AUTOINCREMENT
 * values never decrease, deleted rows included. Another process on the same files (an admin
 * command while imd runs) writes the values of its own commits: also committed values, whatever
 * order the two pwrites land in. A transaction that fails or is rolled back writes nothing: the
 * record is written only when COMMIT returned success. With synchronous=OFF (tests only) no
 * record is written: the commit is not durable there. */

enum { MARK_LEN = 40, MARK_VERSION = 1 };
static const char mark_magic[8] = {'I', 'M', 'D', 'M', 'A', 'R', 'K', '1'};

static void put_le(uint8_t *p, uint64_t v, int n)
{
    for (int i = 0; i < n; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t get_le(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

/* FNV-1a, 64 bits: enough to tell a torn or garbage record (no adversary here). */
static uint64_t mark_sum(const uint8_t *p, size_t n)
{
    uint64_t h = 0xcbf29ce484222325u;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001b3u;
    }
    return h;
}

/* The record: magic (8), version (u32), 0 (u32), msg_id mark (u64), user id mark (u64),
 * FNV-1a of the 32 bytes before (u64); little-endian. */
static void mark_encode(uint8_t rec[MARK_LEN], int64_t msg, int64_t user)
{
    memcpy(rec, mark_magic, 8);
    put_le(rec + 8, MARK_VERSION, 4);
    put_le(rec + 12, 0, 4);
    put_le(rec + 16, (uint64_t)msg, 8);
    put_le(rec + 24, (uint64_t)user, 8);
    put_le(rec + 32, mark_sum(rec, 32), 8);
}

static int mark_decode(const uint8_t *rec, size_t n, int64_t *msg, int64_t *user)
{
    if (n != MARK_LEN || memcmp(rec, mark_magic, 8) != 0 || get_le(rec + 8, 4) != MARK_VERSION ||
        get_le(rec + 12, 4) != 0 || get_le(rec + 32, 8) != mark_sum(rec, 32))
        return -1;
    *msg = (int64_t)get_le(rec + 16, 8);
    *user = (int64_t)get_le(rec + 24, 8);
    return *msg >= 0 && *user >= 0 ? 0 : -1;
}

static void write_mark(ims_store *s, int64_t msg, int64_t user)
{
    if (msg < 0 || user < 0 || (msg == s->mark_msg && user == s->mark_user))
        return;
    uint8_t rec[MARK_LEN];
    mark_encode(rec, msg, user);
    if (pwrite(s->mark_fd, rec, sizeof rec, 0) != (ssize_t)sizeof rec) {
        /* not fatal (the commit stands); the next open just knows less */
        logf_(s, "store: commit: %s: %s", s->marker, strerror(errno));
        return;
    }
    s->mark_msg = msg;
    s->mark_user = user;
}

void ims_store_synced(ims_store *s, uint64_t gen)
{
    if (s == NULL || gen <= s->synced_gen)
        return;
    if (gen > s->gen)
        gen = s->gen;
    size_t k = 0;
    while (k < s->npend && s->pend[k].gen <= gen)
        k++;
    if (k > 0) {
        /* the newest synced mark: both values only grow */
        const struct pending_mark *m = &s->pend[k - 1];
        if (m->msg > s->durable_msg)
            s->durable_msg = m->msg;
        write_mark(s, m->msg, m->user);
        memmove(s->pend, s->pend + k, (s->npend - k) * sizeof *s->pend);
        s->npend -= k;
    }
    s->synced_gen = gen;
}

int ims_store_sync(ims_store *s)
{
    if (s == NULL)
        return IMP_ERR_INVAL;
    if (s->wal_fd < 0 || s->synced_gen == s->gen)
        return 0;
    uint64_t gen = s->gen;
    if (fdatasync(s->wal_fd) != 0) {
        logf_(s, "store: fsync of the log: %s", strerror(errno));
        return IMP_ERR_STORAGE;
    }
    ims_store_synced(s, gen);
    return 0;
}

/* ---- user marks ----------------------------------------------------------------------------
 *
 * users.last_seq (the highest seq assigned, IMP-DELIV-002) and users.acked_seq (IMP-DELIV-003)
 * change with every queued message and every ack. An UPDATE of the users row for each was about
 * a third of imd's time in the durable benchmark (issue 3). Inside a transaction the two values
 * live here instead: read from the row on first use, changed in memory, and written once per
 * user by marks_flush() just before COMMIT, in the same transaction, so that the queue rows and
 * the marks still commit together (the invariant ims_store_integrity_check verifies).
 *
 * The table exists only while a transaction is open: BEGIN IMMEDIATE holds the write lock, so
 * no other process changes a users row meanwhile (`imd user del` from another process waits for
 * the lock and is seen by the next transaction). It is emptied when the transaction ends,
 * committed or rolled back (marks_reset). Inside a batch, an operation records the old value of
 * every entry before it first changes it; when its SAVEPOINT is rolled back they are restored.
 */

static size_t um_find(const ims_store *s, int64_t id)
{
    size_t mask = s->um_cap - 1;
    size_t i = (size_t)(((uint64_t)id * 0x9E3779B97F4A7C15u) >> 40) & mask;
    while (s->um[i].id != 0 && s->um[i].id != id)
        i = (i + 1) & mask;
    return i;
}

/* The entry of id when the table has one (gone or not), else NULL. */
static struct umark *marks_peek(ims_store *s, int64_t id)
{
    if (s->um_n == 0)
        return NULL;
    struct umark *e = &s->um[um_find(s, id)];
    return e->id == id ? e : NULL;
}

static int marks_grow(ims_store *s)
{
    size_t cap = s->um_cap ? s->um_cap * 2 : 64;
    struct umark *old = s->um;
    size_t oldcap = s->um_cap;
    struct umark *t = calloc(cap, sizeof *t);
    if (t == NULL)
        return IMP_ERR_NOMEM;
    s->um = t;
    s->um_cap = cap;
    for (size_t i = 0; i < oldcap; i++)
        if (old[i].id != 0)
            s->um[um_find(s, old[i].id)] = old[i];
    free(old);
    return 0;
}

/* The marks of user id in the open transaction (*out valid until the next marks_get), read
 * from its row the first time. IMP_ERR_NO_SUCH_USER when there is no such user (any more). */
static int marks_get(ims_store *s, int64_t id, struct umark **out)
{
    struct umark *e = marks_peek(s, id);
    if (e == NULL) {
        if (id <= 0)
            return IMP_ERR_NO_SUCH_USER;
        if ((s->um_n + 1) * 2 > s->um_cap && marks_grow(s) != 0)
            return IMP_ERR_NOMEM;
        sqlite3_stmt *q = st_get(s, ST_USER_MARKS);
        if (q == NULL)
            return IMP_ERR_STORAGE;
        sqlite3_bind_int64(q, 1, id);
        int rc = sqlite3_step(q), r = 0;
        int64_t last = 0, acked = 0;
        if (rc == SQLITE_ROW) {
            last = sqlite3_column_int64(q, 0);
            acked = sqlite3_column_int64(q, 1);
        } else {
            r = rc == SQLITE_DONE ? IMP_ERR_NO_SUCH_USER : db_fail(s, "user marks");
        }
        st_put(s, ST_USER_MARKS, q);
        if (r != 0)
            return r;
        e = &s->um[um_find(s, id)];
        memset(e, 0, sizeof *e);
        e->id = id;
        e->last = last;
        e->acked = acked;
        s->um_n++;
    }
    if (e->gone)
        return IMP_ERR_NO_SUCH_USER;
    *out = e;
    return 0;
}

/* Before the first change of e by the current operation of a batch: remember its value. */
static int marks_touch(ims_store *s, struct umark *e)
{
    if (!s->in_batch || e->op == s->op_seq)
        return 0;
    if (s->undo_n == s->undo_cap) {
        size_t cap = s->undo_cap ? s->undo_cap * 2 : 16;
        struct umark_undo *u = realloc(s->undo, cap * sizeof *u);
        if (u == NULL)
            return IMP_ERR_NOMEM;
        s->undo = u;
        s->undo_cap = cap;
    }
    s->undo[s->undo_n].id = e->id;
    s->undo[s->undo_n].old = *e;
    s->undo_n++;
    e->op = s->op_seq;
    return 0;
}

/* The current operation's SAVEPOINT was rolled back: its changes to the marks too. */
static void marks_undo(ims_store *s)
{
    s->msg_seq = s->msg_seq_op;
    s->msg_seq_state = s->msg_seq_state_op;
    while (s->undo_n > 0) {
        const struct umark_undo *u = &s->undo[--s->undo_n];
        struct umark *e = marks_peek(s, u->id);
        if (e != NULL)
            *e = u->old;
    }
}

/* The transaction ended (committed or rolled back): the rows are the truth again. */
static void hc_clear(ims_store *s);

static void marks_reset(ims_store *s)
{
    /* a transaction that did not commit: the history lengths counted in it may not hold */
    if (!s->hc_keep)
        hc_clear(s);
    s->hc_keep = 0;
    if (s->um_n > 0) {
        if (s->um_cap > 4096) { /* a broadcast's worth: give the memory back */
            free(s->um);
            s->um = NULL;
            s->um_cap = 0;
        } else {
            memset(s->um, 0, s->um_cap * sizeof *s->um);
        }
    }
    s->um_n = 0;
    s->undo_n = 0;
    s->msg_seq_state = 0;
    /* direct messages still waiting to be written (packed entries) go with the transaction */
    s->pk_n = 0;
    s->pk_len = 0;
    if (s->pk_bufcap > (1u << 20)) { /* a large batch's worth: give the memory back */
        free(s->pk_buf);
        s->pk_buf = NULL;
        s->pk_bufcap = 0;
    }
}

/* The next msg_id (IMP-DELIV-006: ascending, never reused): the messages table's AUTOINCREMENT
 * sequence, counted here for the transaction and written back by marks_flush, so that a direct
 * message kept inline in a queue entry takes an id from the same sequence without a row. */
static int next_msg_id(ims_store *s, int64_t *id)
{
    if (s->msg_seq_state == 0) {
        sqlite3_stmt *q = st_get(s, ST_MSG_SEQ_GET);
        if (q == NULL)
            return IMP_ERR_STORAGE;
        int rc = sqlite3_step(q);
        int64_t v = rc == SQLITE_ROW ? sqlite3_column_int64(q, 0) : 0;
        st_put(s, ST_MSG_SEQ_GET, q);
        if (rc != SQLITE_ROW && rc != SQLITE_DONE)
            return db_fail(s, "message sequence");
        s->msg_seq = v;
        s->msg_seq_state = 1;
    }
    if (s->msg_seq == INT64_MAX)
        return IMP_ERR_STORAGE;
    *id = ++s->msg_seq;
    s->msg_seq_state = 2;
    return 0;
}

static int msg_seq_flush(ims_store *s)
{
    if (s->msg_seq_state != 2)
        return 0;
    for (int id = ST_MSG_SEQ_SET; id <= ST_MSG_SEQ_ADD; id++) {
        sqlite3_stmt *q = st_get(s, id);
        if (q == NULL)
            return IMP_ERR_STORAGE;
        sqlite3_bind_int64(q, 1, s->msg_seq);
        int rc = sqlite3_step(q);
        st_put(s, id, q);
        if (rc != SQLITE_DONE)
            return db_fail(s, "message sequence write");
    }
    s->msg_seq_state = 1;
    return 0;
}

/* Writes the changed marks into their rows, in the open transaction (before COMMIT). */
static int marks_flush(ims_store *s)
{
    int r = msg_seq_flush(s);
    if (r != 0)
        return r;
    for (size_t i = 0; i < s->um_cap && s->um_n > 0; i++) {
        struct umark *e = &s->um[i];
        if (e->id == 0 || !e->dirty || e->gone)
            continue;
        sqlite3_stmt *q = st_get(s, ST_USER_SET_MARKS);
        if (q == NULL)
            return IMP_ERR_STORAGE;
        sqlite3_bind_int64(q, 1, e->id);
        sqlite3_bind_int64(q, 2, e->last);
        sqlite3_bind_int64(q, 3, e->acked);
        int rc = sqlite3_step(q);
        st_put(s, ST_USER_SET_MARKS, q);
        if (rc != SQLITE_DONE)
            return db_fail(s, "user marks write");
        e->dirty = 0;
    }
    return 0;
}

/* ---- queue cache ---------------------------------------------------------------------------
 *
 * A recipient who is online reads back each message right after it is stored: the pump reads
 * the queue once the batch is committed and synced (IMP-DELIV-001). That read was about a sixth
 * of the SQLite work of a durable direct message (issue 3). So the store keeps the direct
 * messages it has just put inline (at most QC_CAP, QC_BYTES in all, the oldest evicted first)
 * and answers queue reads from them while it can, then from the table. The cache only ever
 * holds copies of committed rows: an entry put in a transaction counts from its COMMIT on; one
 * whose transaction did not commit is dropped before the next transaction or read. An ack, a
 * user delete and a migration remove what they remove from the table from the cache too.
 * (The idea is a write-through cache of a log's tail, as message brokers keep recent messages
 * in memory for consumers that keep up; no code from any of them.) */

#define QC_CAP 8192u          /* entries; a power of two */
#define QC_SLOTS (2 * QC_CAP) /* the index: open addressing, at most half full */
#define QC_BYTES (8u << 20)   /* headers and bodies */

struct qentry {
    uint64_t pos; /* in qc_ring */
    int64_t user_id;
    uint64_t seq;
    int64_t msg_id, sender_id, ts_ms;
    uint32_t headers_len, body_len;
    char sender[33], target[33];
    uint8_t data[]; /* headers, then body */
};

/* The index by (user, seq): linear probing, the keys in the slots so that a probe reads no
 * entry; e == NULL is a free slot. */
struct qslot {
    int64_t user_id;
    uint64_t seq;
    struct qentry *e;
};

static size_t qc_home(int64_t user_id, uint64_t seq)
{
    uint64_t h = ((uint64_t)user_id * 0x9E3779B97F4A7C15u) ^ (seq * 0xC2B2AE3D27D4EB4Fu);
    return (size_t)(h >> 40) & (QC_SLOTS - 1);
}

/* The slot of (user_id, seq), or the free slot where it would go. */
static size_t qc_find(const ims_store *s, int64_t user_id, uint64_t seq)
{
    size_t i = qc_home(user_id, seq);
    while (s->qc_slots[i].e != NULL &&
           (s->qc_slots[i].user_id != user_id || s->qc_slots[i].seq != seq))
        i = (i + 1) & (QC_SLOTS - 1);
    return i;
}

static struct qentry *qc_get(const ims_store *s, int64_t user_id, uint64_t seq)
{
    if (s->qc_n == 0)
        return NULL;
    return s->qc_slots[qc_find(s, user_id, seq)].e;
}

static void qc_remove(ims_store *s, struct qentry *e)
{
    /* delete from the index with a backward shift: every entry after the hole that may move
     * into it (its home is not cyclically in (hole, its slot]) does */
    size_t i = qc_find(s, e->user_id, e->seq), j = i;
    for (;;) {
        j = (j + 1) & (QC_SLOTS - 1);
        if (s->qc_slots[j].e == NULL)
            break;
        size_t k = qc_home(s->qc_slots[j].user_id, s->qc_slots[j].seq);
        int stays = i <= j ? (i < k && k <= j) : (i < k || k <= j);
        if (!stays) {
            s->qc_slots[i] = s->qc_slots[j];
            i = j;
        }
    }
    s->qc_slots[i].e = NULL;
    s->qc_ring[e->pos & (QC_CAP - 1)] = NULL;
    s->qc_n--;
    s->qc_bytes -= (size_t)e->headers_len + e->body_len;
    free(e);
}

/* Removes the entries at ring positions from..qc_head-1. */
static void qc_remove_from(ims_store *s, uint64_t from)
{
    for (uint64_t p = from; p < s->qc_head && s->qc_n > 0; p++) {
        struct qentry *e = s->qc_ring[p & (QC_CAP - 1)];
        if (e != NULL)
            qc_remove(s, e);
    }
}

/* No transaction is open: entries of one that did not commit go. */
static void qc_settle(ims_store *s)
{
    if (s->qc_tent < s->qc_head) {
        qc_remove_from(s, s->qc_tent);
        s->qc_tent = s->qc_head;
    }
}

/* The open transaction committed: its entries are copies of committed rows now. */
static void qc_commit(ims_store *s)
{
    s->qc_tent = s->qc_head;
}

/* A copy of the direct message m just queued for user_id under seq (best effort: without
 * memory, reads use the table). */
static void qc_add(ims_store *s, int64_t user_id, uint64_t seq, int64_t msg_id,
                   const ims_message *m)
{
    size_t bytes = m->headers_len + m->body_len;
    if (s->qc_slots == NULL) {
        s->qc_slots = calloc(QC_SLOTS, sizeof *s->qc_slots);
        s->qc_ring = calloc(QC_CAP, sizeof *s->qc_ring);
        if (s->qc_slots == NULL || s->qc_ring == NULL) {
            free(s->qc_slots);
            free(s->qc_ring);
            s->qc_slots = NULL;
            s->qc_ring = NULL;
            return;
        }
    }
    /* room: evict the oldest (committed ones first come first; a transaction's own entries
     * are only evicted when it alone fills the cache) */
    while (s->qc_tail < s->qc_head &&
           (s->qc_head - s->qc_tail >= QC_CAP || s->qc_bytes + bytes > QC_BYTES)) {
        struct qentry *old = s->qc_ring[s->qc_tail & (QC_CAP - 1)];
        if (old != NULL)
            qc_remove(s, old);
        s->qc_tail++;
    }
    if (s->qc_tent < s->qc_tail)
        s->qc_tent = s->qc_tail;
    size_t slot = qc_find(s, user_id, seq);
    if (s->qc_slots[slot].e != NULL) { /* cannot happen (qc_settle), kept consistent anyway */
        qc_remove(s, s->qc_slots[slot].e);
        slot = qc_find(s, user_id, seq);
    }
    struct qentry *e = malloc(sizeof *e + bytes);
    if (e == NULL)
        return;
    e->pos = s->qc_head++;
    e->user_id = user_id;
    e->seq = seq;
    e->msg_id = msg_id;
    e->sender_id = m->sender_id;
    e->ts_ms = m->ts_ms;
    e->headers_len = (uint32_t)m->headers_len;
    e->body_len = (uint32_t)m->body_len;
    memcpy(e->sender, m->sender, sizeof e->sender);
    memcpy(e->target, m->target, sizeof e->target);
    if (m->headers_len > 0)
        memcpy(e->data, m->headers, m->headers_len);
    if (m->body_len > 0)
        memcpy(e->data + m->headers_len, m->body, m->body_len);
    s->qc_slots[slot].user_id = user_id;
    s->qc_slots[slot].seq = seq;
    s->qc_slots[slot].e = e;
    s->qc_ring[e->pos & (QC_CAP - 1)] = e;
    s->qc_n++;
    s->qc_bytes += bytes;
}

/* The entries of user_id with after < seq <= upto leave the cache (acked or deleted rows). */
static void qc_forget(ims_store *s, int64_t user_id, uint64_t after, uint64_t upto)
{
    if (s->qc_n == 0 || upto <= after)
        return;
    if (upto - after <= s->qc_n) {
        for (uint64_t q = after + 1; q <= upto; q++) {
            struct qentry *e = qc_get(s, user_id, q);
            if (e != NULL)
                qc_remove(s, e);
        }
        return;
    }
    for (uint64_t p = s->qc_tail; p < s->qc_head && s->qc_n > 0; p++) {
        struct qentry *e = s->qc_ring[p & (QC_CAP - 1)];
        if (e != NULL && e->user_id == user_id && e->seq > after && e->seq <= upto)
            qc_remove(s, e);
    }
}

static void qc_clear(ims_store *s)
{
    qc_remove_from(s, s->qc_tail);
    s->qc_tail = s->qc_tent = s->qc_head;
    free(s->qc_slots);
    free(s->qc_ring);
    s->qc_slots = NULL;
    s->qc_ring = NULL;
}

static void qc_to_msg(const struct qentry *e, ims_message *m)
{
    memset(m, 0, sizeof *m);
    m->msg_id = e->msg_id;
    m->sender_id = e->sender_id;
    memcpy(m->sender, e->sender, sizeof m->sender);
    m->target_kind = 1;
    memcpy(m->target, e->target, sizeof m->target);
    m->ts_ms = e->ts_ms;
    m->headers = e->headers_len > 0 ? e->data : NULL;
    m->headers_len = e->headers_len;
    m->body = e->body_len > 0 ? e->data + e->headers_len : NULL;
    m->body_len = e->body_len;
    m->seq = e->seq;
}

/* ---- history lengths -----------------------------------------------------------------------
 *
 * imd prunes a room's history after every room message (deliver.c). Finding what is older than
 * the newest history_max walks history_max entries of the index (ORDER BY ... DESC OFFSET):
 * about 60 us with the default 1,000, more than storing the message for a small room. So the
 * store keeps each room's history length once it has counted it: a room message adds one when
 * its operation succeeded, a prune sets what it left. A prune then takes the length minus
 * history_max oldest messages (one, after each message, once the history is full), and nothing
 * while the length is within history_max. The lengths are exact in the transaction's view: they
 * are all forgotten when a transaction ends without COMMIT (marks_reset), and counted again. */

static struct hcount **hc_slot(ims_store *s, const char *room)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (const char *p = room; *p; p++)
        h = (h ^ (uint8_t)*p) * 16777619u;
    struct hcount **pp = &s->hc[h % (sizeof s->hc / sizeof s->hc[0])];
    while (*pp && strcmp((*pp)->room, room) != 0)
        pp = &(*pp)->next;
    return pp;
}

static void hc_clear(ims_store *s)
{
    for (size_t i = 0; i < sizeof s->hc / sizeof s->hc[0]; i++) {
        while (s->hc[i]) {
            struct hcount *e = s->hc[i];
            s->hc[i] = e->next;
            free(e);
        }
    }
    s->hc_n = 0;
}

/* Remembers room's history length n (best effort: without memory, prunes query). */
static void hc_set(ims_store *s, const char *room, int64_t n)
{
    struct hcount **pp = hc_slot(s, room);
    if (*pp == NULL) {
        if (s->hc_n >= 4096) /* many rooms: start again rather than grow without bound */
            hc_clear(s), pp = hc_slot(s, room);
        struct hcount *e = calloc(1, sizeof *e);
        if (e == NULL)
            return;
        snprintf(e->room, sizeof e->room, "%s", room);
        *pp = e;
        s->hc_n++;
    }
    (*pp)->n = n;
}

/* ---- packed entries ------------------------------------------------------------------------
 *
 * With one queue row per message, SQLite's B-tree work for the row (insert, then delete when
 * acknowledged) was about half of imd's CPU for a durable direct message (issue 3: about
 * 1.5 us of 2.6 us). So in a batch the inline direct messages are not written one by one: they
 * wait here, encoded, and are written just before COMMIT (pk_flush), the run of consecutive seqs
 * of one user as one entry of n messages (inl = 2, at most PK_MAX messages and PK_BYTES bytes),
 * keyed by its last seq. An ack deletes the entries it covers whole (their key is at most the new
 * acked mark: the same range delete); an entry it covers in part stays, and reads skip the
 * acknowledged messages in it. A lone message is written as before (inl = 1).
 *
 * The batch's reads and writes see one queue: everything that reads or deletes queue rows, and
 * every operation with a SAVEPOINT, writes the waiting messages first; a failure to write them
 * rolls the whole batch back (nothing of it is acknowledged). The waiting messages go with the
 * transaction when it ends without COMMIT (marks_reset).
 *
 * A record: msg_id, sender_id, ts_ms (8 bytes each), headers_len, body_len (4), sender_len,
 * target_len (1), then sender, target, headers, body; integers little-endian. */

#define PK_HEAD 34
#define PK_MAX 64     /* messages per entry */
#define PK_BYTES 4000 /* bytes of records per entry (about one 4 KiB page) */

static void bind_content(sqlite3_stmt *q, int col, const ims_message *m);

/* Decodes the record at p (avail bytes) into m (views into p); its length in *used. -1 when it
 * does not fit or does not make sense (a damaged entry). */
static int pk_decode(const uint8_t *p, size_t avail, ims_message *m, size_t *used)
{
    if (avail < PK_HEAD)
        return -1;
    size_t hl = (size_t)get_le(p + 24, 4), bl = (size_t)get_le(p + 28, 4);
    size_t sl = p[32], tl = p[33];
    if (sl > IMS_NAME_MAX || tl > IMS_NAME_MAX || hl > avail || bl > avail ||
        PK_HEAD + sl + tl + hl + bl > avail)
        return -1;
    memset(m, 0, sizeof *m);
    m->msg_id = (int64_t)get_le(p, 8);
    m->sender_id = (int64_t)get_le(p + 8, 8);
    m->ts_ms = (int64_t)get_le(p + 16, 8);
    m->target_kind = 1;
    const uint8_t *q = p + PK_HEAD;
    memcpy(m->sender, q, sl);
    memcpy(m->target, q + sl, tl);
    q += sl + tl;
    m->headers = hl > 0 ? q : NULL;
    m->headers_len = hl;
    m->body = bl > 0 ? q + hl : NULL;
    m->body_len = bl;
    *used = PK_HEAD + sl + tl + hl + bl;
    return 0;
}

/* Grows *buf to hold need bytes. */
static int pk_reserve(uint8_t **buf, size_t *cap, size_t need)
{
    if (need <= *cap)
        return 0;
    size_t c = *cap ? *cap : 16384;
    while (c < need)
        c *= 2;
    uint8_t *p = realloc(*buf, c);
    if (p == NULL)
        return IMP_ERR_NOMEM;
    *buf = p;
    *cap = c;
    return 0;
}

/* The direct message m (msg_id) waits to be written for user e under seq. IMP_ERR_NOMEM: not
 * added (the caller writes it at once). */
static int pk_add(ims_store *s, struct umark *e, uint64_t seq, int64_t msg_id, const ims_message *m)
{
    size_t sl = strnlen(m->sender, IMS_NAME_MAX), tl = strnlen(m->target, IMS_NAME_MAX);
    size_t len = PK_HEAD + sl + tl + m->headers_len + m->body_len;
    if (s->pk_n == s->pk_cap) {
        size_t cap = s->pk_cap ? s->pk_cap * 2 : 256;
        struct pk_rec *v = realloc(s->pk, cap * sizeof *v);
        if (v == NULL)
            return IMP_ERR_NOMEM;
        s->pk = v;
        s->pk_cap = cap;
    }
    if (pk_reserve(&s->pk_buf, &s->pk_bufcap, s->pk_len + len) != 0)
        return IMP_ERR_NOMEM;
    uint8_t *p = s->pk_buf + s->pk_len;
    put_le(p, (uint64_t)msg_id, 8);
    put_le(p + 8, (uint64_t)m->sender_id, 8);
    put_le(p + 16, (uint64_t)m->ts_ms, 8);
    put_le(p + 24, m->headers_len, 4);
    put_le(p + 28, m->body_len, 4);
    p[32] = (uint8_t)sl;
    p[33] = (uint8_t)tl;
    uint8_t *q = p + PK_HEAD;
    memcpy(q, m->sender, sl);
    memcpy(q + sl, m->target, tl);
    q += sl + tl;
    if (m->headers_len > 0)
        memcpy(q, m->headers, m->headers_len);
    if (m->body_len > 0)
        memcpy(q + m->headers_len, m->body, m->body_len);
    s->pk[s->pk_n++] = (struct pk_rec){e->id, seq, s->pk_len, len};
    s->pk_len += len;
    e->pk = 1;
    return 0;
}

/* A direct message in an entry of its own (inl = 1). */
static int insert_inline(ims_store *s, int64_t user_id, uint64_t seq, int64_t msg_id,
                         const ims_message *m)
{
    sqlite3_stmt *q = st_get(s, ST_QUEUE_INSERT_INLINE);
    if (q == NULL)
        return IMP_ERR_STORAGE;
    sqlite3_bind_int64(q, 1, user_id);
    sqlite3_bind_int64(q, 2, (int64_t)seq);
    sqlite3_bind_int64(q, 3, msg_id);
    sqlite3_bind_int64(q, 4, m->sender_id);
    sqlite3_bind_text(q, 5, m->sender, -1, SQLITE_STATIC);
    sqlite3_bind_text(q, 6, m->target, -1, SQLITE_STATIC);
    sqlite3_bind_int64(q, 7, m->ts_ms);
    bind_content(q, 8, m);
    int r = sqlite3_step(q) == SQLITE_DONE ? 0 : db_fail(s, "queue insert");
    st_put(s, ST_QUEUE_INSERT_INLINE, q);
    return r;
}

static int pk_cmp(const void *a, const void *b)
{
    const struct pk_rec *x = a, *y = b;
    if (x->user_id != y->user_id)
        return x->user_id < y->user_id ? -1 : 1;
    return x->seq < y->seq ? -1 : x->seq > y->seq;
}

/* Writes records i..j-1 of s->pk (one user's consecutive seqs) as one entry. */
static int pk_write(ims_store *s, size_t i, size_t j, size_t bytes)
{
    const struct pk_rec *last = &s->pk[j - 1];
    if (j - i == 1) {
        ims_message m;
        size_t used = 0;
        if (pk_decode(s->pk_buf + last->off, last->len, &m, &used) != 0)
            return IMP_ERR_STORAGE; /* cannot happen: encoded by pk_add */
        return insert_inline(s, last->user_id, last->seq, m.msg_id, &m);
    }
    if (pk_reserve(&s->pk_row, &s->pk_rowcap, bytes) != 0)
        return IMP_ERR_NOMEM;
    size_t len = 0;
    for (size_t k = i; k < j; k++) {
        memcpy(s->pk_row + len, s->pk_buf + s->pk[k].off, s->pk[k].len);
        len += s->pk[k].len;
    }
    sqlite3_stmt *q = st_get(s, ST_QUEUE_INSERT_PACK);
    if (q == NULL)
        return IMP_ERR_STORAGE;
    sqlite3_bind_int64(q, 1, last->user_id);
    sqlite3_bind_int64(q, 2, (int64_t)last->seq);
    sqlite3_bind_int64(q, 3, (int64_t)get_le(s->pk_buf + last->off, 8));
    sqlite3_bind_blob(q, 4, s->pk_row, (int)len, SQLITE_STATIC);
    sqlite3_bind_int64(q, 5, (int64_t)(j - i));
    int r = sqlite3_step(q) == SQLITE_DONE ? 0 : db_fail(s, "queue insert");
    st_put(s, ST_QUEUE_INSERT_PACK, q);
    return r;
}

/* Nothing waits any more (written, or gone with the transaction). */
static void pk_clear(ims_store *s)
{
    for (size_t i = 0; i < s->pk_n; i++) {
        struct umark *e = marks_peek(s, s->pk[i].user_id);
        if (e != NULL)
            e->pk = 0;
    }
    s->pk_n = 0;
    s->pk_len = 0;
}

/* Writes the waiting messages, each user's consecutive seqs packed. On failure the caller
 * rolls the transaction back (some may have been written). */
static int pk_flush(ims_store *s)
{
    if (s->pk_n == 0)
        return 0;
    /* one user's records are already in seq order; sorting groups the users. A user's seqs here
     * are consecutive (an entry of another kind is queued by an operation that writes these
     * first); the loop below checks it anyway, so that an entry never spans a gap. */
    if (s->pk_n > 1)
        qsort(s->pk, s->pk_n, sizeof *s->pk, pk_cmp);
    int r = 0;
    for (size_t i = 0, j; r == 0 && i < s->pk_n; i = j) {
        size_t bytes = s->pk[i].len;
        for (j = i + 1; j < s->pk_n && j - i < PK_MAX && s->pk[j].user_id == s->pk[i].user_id &&
                        s->pk[j].seq == s->pk[j - 1].seq + 1 && bytes + s->pk[j].len <= PK_BYTES;
             j++)
            bytes += s->pk[j].len;
        r = pk_write(s, i, j, bytes);
    }
    pk_clear(s);
    return r;
}

static void rollback(ims_store *s, int id);

/* pk_flush inside a batch: when it fails the whole batch is rolled back (later operations are
 * refused, its COMMIT reports IMP_ERR_STORAGE), as a failure after a write in light_end. */
static int pk_flush_batch(ims_store *s)
{
    if (s->pk_n == 0)
        return 0;
    int r = pk_flush(s);
    if (r != 0) {
        logf_(s, "store: writing the batch's queued messages failed: the batch is rolled back");
        if (!sqlite3_get_autocommit(s->db))
            rollback(s, ST_ROLLBACK);
        else
            marks_reset(s);
    }
    return r;
}

static void rollback(ims_store *s, int id)
{
    st_run(s, id);
    if (id == ST_ROLLBACK_TO)
        marks_undo(s);
    else
        marks_reset(s);
}

/* COMMIT, then (when it returned, i.e. after the fsync) the mark read just before it into the
 * marker. Cost per commit: one SELECT of two rows of sqlite_sequence (cached pages) and one
 * pwrite when the mark changed. With fsync_thread a batch's COMMIT is not synced: its mark waits
 * in s->pend for ims_store_synced(); an operation outside a batch syncs here. */
static int commit_marked(ims_store *s, int batch)
{
    int64_t msg = -1, user = -1;
    int fr = pk_flush(s); /* the caller rolls back on failure */
    if (fr == 0)
        fr = marks_flush(s);
    if (fr != 0)
        return fr;
    if (s->wal_fd >= 0 && sqlite3_total_changes64(s->db) == s->changes_at_begin) {
        /* a batch that wrote nothing: nothing to sync (fsync_thread), no new mark */
        int r = st_run(s, ST_COMMIT);
        s->hc_keep = r == 0;
        return r;
    }
    if (s->mark_write) {
        sqlite3_stmt *q = st_get(s, ST_MARK);
        if (q != NULL && sqlite3_step(q) == SQLITE_ROW) {
            msg = sqlite3_column_int64(q, 0);
            user = sqlite3_column_int64(q, 1);
        }
        st_put(s, ST_MARK, q);
        if (s->wal_fd >= 0 && (msg < 0 || user < 0)) {
            /* without the mark the messages of this batch could never be called on disk */
            logf_(s, "store: commit: cannot read the committed mark");
            return IMP_ERR_STORAGE; /* the caller rolls back */
        }
    }
    int r = st_run(s, ST_COMMIT);
    if (r != 0)
        return r;
    s->hc_keep = 1;
    qc_commit(s);
    s->gen++;
    if (s->wal_fd < 0) { /* synchronous=FULL: on disk now */
        s->synced_gen = s->gen;
        write_mark(s, msg, user);
        return 0;
    }
    if (s->npend == s->cappend) {
        size_t cap = s->cappend ? s->cappend * 2 : 16;
        struct pending_mark *p = realloc(s->pend, cap * sizeof *p);
        if (p == NULL) {
            /* no room to remember the mark: sync now (slower, same guarantees) */
            return ims_store_sync(s) == 0 ? 0 : IMP_ERR_STORAGE;
        }
        s->pend = p;
        s->cappend = cap;
    }
    s->pend[s->npend].gen = s->gen;
    s->pend[s->npend].msg = msg;
    s->pend[s->npend].user = user;
    s->npend++;
    if (!batch && ims_store_sync(s) != 0)
        return IMP_ERR_STORAGE; /* committed, but not known to be on disk: not acknowledged */
    return 0;
}

/* Starts one writing operation: a SAVEPOINT inside a batch, its own transaction outside. */
static int op_begin(ims_store *s)
{
    if (s->in_batch) {
        if (sqlite3_get_autocommit(s->db)) {
            /* SQLite rolled the batch back by itself (e.g. after SQLITE_FULL or an I/O error):
             * nothing more can join it. ims_store_commit() reports it. */
            logf_(s, "store: the batch was rolled back by SQLite; operation refused");
            return IMP_ERR_STORAGE;
        }
        /* the batch's waiting direct messages are written before the SAVEPOINT: the operation
         * sees them, and rolling it back alone leaves them */
        int r = pk_flush_batch(s);
        if (r != 0)
            return r;
        s->op_seq++;
        s->undo_n = 0;
        s->msg_seq_op = s->msg_seq;
        s->msg_seq_state_op = s->msg_seq_state;
        return st_run(s, ST_SAVEPOINT);
    }
    qc_settle(s);
    s->changes_at_begin = sqlite3_total_changes64(s->db);
    return st_run(s, ST_BEGIN);
}

/* Ends the operation: keeps its effects when rc == 0, undoes them otherwise. Returns rc, or
 * IMP_ERR_STORAGE when keeping them failed. */
static int op_end(ims_store *s, int rc)
{
    if (s->in_batch) {
        if (rc == 0) {
            int r = st_run(s, ST_RELEASE);
            if (r == 0) {
                s->undo_n = 0;
                return 0;
            }
            rc = r;
        }
        if (!sqlite3_get_autocommit(s->db)) {
            rollback(s, ST_ROLLBACK_TO);
            st_run(s, ST_RELEASE);
        } else {
            marks_reset(s); /* SQLite rolled the whole batch back */
        }
        return rc;
    }
    if (rc == 0) {
        int r = commit_marked(s, 0);
        if (r == 0) {
            marks_reset(s);
            return 0;
        }
        rc = r;
    }
    if (!sqlite3_get_autocommit(s->db))
        rollback(s, ST_ROLLBACK);
    marks_reset(s);
    return rc;
}

/* An operation of a batch whose statements are each atomic and whose refusals all come before
 * its first write: no SAVEPOINT (SAVEPOINT and RELEASE were about 7 % of imd's time for a durable
 * direct message, issue 3). A failing statement undoes itself; the marks are restored here. A
 * failure after a write (only an I/O error or a damaged database can cause one) cannot be undone
 * alone: the whole batch is rolled back, as SQLite itself does on some I/O errors, so nothing of
 * it is acknowledged (its COMMIT reports STORAGE, later operations are refused). */
static int light_begin(ims_store *s)
{
    if (sqlite3_get_autocommit(s->db)) {
        logf_(s, "store: the batch was rolled back; operation refused");
        return IMP_ERR_STORAGE;
    }
    s->op_seq++;
    s->undo_n = 0;
    s->msg_seq_op = s->msg_seq;
    s->msg_seq_state_op = s->msg_seq_state;
    return 0;
}

static int light_end(ims_store *s, int rc, int wrote)
{
    if (rc == 0) {
        s->undo_n = 0;
        return 0;
    }
    if (!wrote || sqlite3_get_autocommit(s->db)) {
        marks_undo(s);
        return rc;
    }
    logf_(s, "store: an operation failed after writing: the batch is rolled back");
    rollback(s, ST_ROLLBACK);
    return rc;
}

int ims_store_begin(ims_store *s)
{
    if (s == NULL)
        return IMP_ERR_INVAL;
    if (s->in_batch)
        return 0;
    qc_settle(s);
    int r = st_run(s, ST_BEGIN);
    if (r == 0) {
        s->in_batch = 1;
        s->changes_at_begin = sqlite3_total_changes64(s->db);
    }
    return r;
}

int ims_store_commit(ims_store *s)
{
    if (s == NULL)
        return IMP_ERR_INVAL;
    if (!s->in_batch)
        return 0;
    s->in_batch = 0;
    if (sqlite3_get_autocommit(s->db)) {
        marks_reset(s);
        logf_(s, "store: commit: the batch was rolled back by SQLite");
        return IMP_ERR_STORAGE;
    }
    int r = commit_marked(s, 1); /* IMP-DELIV-001: the fsync with synchronous=FULL */
    if (r != 0 && !sqlite3_get_autocommit(s->db))
        rollback(s, ST_ROLLBACK);
    marks_reset(s);
    return r;
}

int ims_store_in_batch(const ims_store *s)
{
    return s != NULL && s->in_batch;
}

int ims_store_sync_fd(const ims_store *s)
{
    return s ? s->wal_fd : -1;
}

const char *ims_store_path(const ims_store *s)
{
    return s ? s->path : NULL;
}

uint64_t ims_store_commit_gen(const ims_store *s)
{
    return s ? s->gen : 0;
}

uint64_t ims_store_synced_gen(const ims_store *s)
{
    return s ? s->synced_gen : 0;
}

uint64_t ims_store_queue_cache_hits(const ims_store *s)
{
    return s ? s->qc_hits : 0;
}

int64_t ims_store_durable_msg_id(const ims_store *s)
{
    return s == NULL || s->wal_fd < 0 ? INT64_MAX : s->durable_msg;
}

int ims_store_set_busy_timeout(ims_store *s, int ms)
{
    if (s == NULL || ms < 0)
        return IMP_ERR_INVAL;
    return sqlite3_busy_timeout(s->db, ms) == SQLITE_OK ? 0 : db_fail(s, "busy_timeout");
}

/* ---- open and close ------------------------------------------------------------------------- */

/* The first column of the first row of sql as an integer (*out), or -1 with err set. */
static int pragma_int(sqlite3 *db, const char *sql, int64_t *out, char *err, size_t errlen)
{
    sqlite3_stmt *q = NULL;
    int rc = sqlite3_prepare_v2(db, sql, -1, &q, NULL);
    if (rc == SQLITE_OK) {
        rc = sqlite3_step(q);
        if (rc == SQLITE_ROW) {
            *out = sqlite3_column_int64(q, 0);
            sqlite3_finalize(q);
            return 0;
        }
    }
    set_err(err, errlen, "%s: %s", sql, sqlite3_errmsg(db));
    sqlite3_finalize(q);
    return -1;
}

static int exec_sql(sqlite3 *db, const char *sql, char *err, size_t errlen)
{
    char *msg = NULL;
    if (sqlite3_exec(db, sql, NULL, NULL, &msg) == SQLITE_OK)
        return 0;
    set_err(err, errlen, "%.60s: %s", sql, msg ? msg : sqlite3_errmsg(db));
    sqlite3_free(msg);
    return -1;
}

/* PRAGMA quick_check (on open) or integrity_check: 0 when the single row is "ok". */
static int run_check(sqlite3 *db, const char *sql, char *err, size_t errlen)
{
    sqlite3_stmt *q = NULL;
    int rc = sqlite3_prepare_v2(db, sql, -1, &q, NULL);
    if (rc != SQLITE_OK) {
        set_err(err, errlen, "%s: %s", sql, sqlite3_errmsg(db));
        sqlite3_finalize(q);
        return -1;
    }
    rc = sqlite3_step(q);
    if (rc != SQLITE_ROW) {
        set_err(err, errlen, "%s: %s", sql, sqlite3_errmsg(db));
        sqlite3_finalize(q);
        return -1;
    }
    const char *t = (const char *)sqlite3_column_text(q, 0);
    if (t != NULL && strcmp(t, "ok") == 0) {
        sqlite3_finalize(q);
        return 0;
    }
    set_err(err, errlen, "%s: %s", sql, t ? t : "(no result)");
    sqlite3_finalize(q);
    return -1;
}

/* Creates the schema in a new database, checks the version of an existing one. */
static int schema_setup(sqlite3 *db, char *err, size_t errlen)
{
    if (exec_sql(db, "BEGIN IMMEDIATE", err, errlen) != 0)
        return -1;
    int64_t version = 0, app = 0, tables = 0;
    if (pragma_int(db, "PRAGMA user_version", &version, err, errlen) != 0 ||
        pragma_int(db, "PRAGMA application_id", &app, err, errlen) != 0 ||
        pragma_int(db, "SELECT count(*) FROM sqlite_schema", &tables, err, errlen) != 0)
        goto fail;
    if (version == 0) {
        if (tables != 0 || app != 0) {
            set_err(err, errlen, "not an imd database (it has other tables)");
            goto fail;
        }
        char sql[64];
        snprintf(sql, sizeof sql, "PRAGMA application_id = %d; PRAGMA user_version = %d",
                 IMS_APPLICATION_ID, IMS_SCHEMA_VERSION);
        if (exec_sql(db, schema_sql, err, errlen) != 0 || exec_sql(db, sql, err, errlen) != 0)
            goto fail;
    } else if (app != IMS_APPLICATION_ID) {
        set_err(err, errlen, "not an imd database (application_id %lld)", (long long)app);
        goto fail;
    } else if (version >= 1 && version <= 3) {
        if (version == 1 && exec_sql(db, migrate_1_2_sql, err, errlen) != 0)
            goto fail;
        if (version <= 2 && exec_sql(db, migrate_2_3_sql, err, errlen) != 0)
            goto fail;
        if (exec_sql(db, migrate_3_4_sql, err, errlen) != 0)
            goto fail;
    } else if (version != IMS_SCHEMA_VERSION) {
        set_err(err, errlen, "database schema version %lld, this imd knows version %d",
                (long long)version, IMS_SCHEMA_VERSION);
        goto fail;
    }
    /* Added to schema version 1 later (dedupe_window_ms): created once in older databases. */
    if (exec_sql(db, "CREATE INDEX IF NOT EXISTS dedupe_ts ON dedupe(ts_ms)", err, errlen) != 0)
        goto fail;
    if (exec_sql(db, "COMMIT", err, errlen) != 0)
        goto fail;
    return 0;
fail:
    if (!sqlite3_get_autocommit(db))
        sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
    return -1;
}

/* fsync of the directory holding path (a new entry in it survives a power loss). */
static void fsync_parent(const char *path)
{
    char *dir = strdup(path);
    char *slash = dir ? strrchr(dir, '/') : NULL;
    if (slash != NULL) {
        *(slash == dir ? slash + 1 : slash) = '\0';
        int dfd = open(dir, O_RDONLY | O_CLOEXEC);
        if (dfd >= 0) {
            (void)fsync(dfd);
            close(dfd);
        }
    }
    free(dir);
}

ims_store *ims_store_open(const ims_store_options *opt, char *err, size_t errlen)
{
    set_err(err, errlen, "%s", "");
    if (opt == NULL || opt->path == NULL || opt->path[0] == '\0') {
        set_err(err, errlen, "no database path");
        return NULL;
    }
    /* RETURNING (3.35) and sqlite_schema (3.33) are used. */
    if (sqlite3_libversion_number() < 3035000) {
        set_err(err, errlen, "SQLite %s is too old (3.35 or later needed)", sqlite3_libversion());
        return NULL;
    }
    /* SQLite's memory statistics cost a global mutex per allocation (about a sixth of a put).
     * This only works before SQLite is initialized (SQLITE_MISUSE afterwards, harmless). */
    static int configured;
    if (!configured) {
        configured = 1;
        (void)sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0);
    }
    ims_store *s = calloc(1, sizeof *s);
    if (s == NULL) {
        set_err(err, errlen, "out of memory");
        return NULL;
    }
    s->log = opt->log;
    s->log_ud = opt->log_ud;
    s->mark_fd = -1;
    s->mark_msg = s->mark_user = -1;
    s->wal_fd = -1;
    s->path = strdup(opt->path);
    if (s->path == NULL) {
        free(s);
        set_err(err, errlen, "%s: out of memory", opt->path);
        return NULL;
    }
    int have_mark = 0; /* the marker holds a record that checks out: mk_msg, mk_user */
    int64_t mk_msg = 0, mk_user = 0;
    char *side[2] = {NULL, NULL}; /* "-wal", "-shm" that SQLite made for a refused open */
    /* The running marker (store.h): its presence at open means the last process that had the
     * store open did not close it. It is made before the database file, so that a file imd
     * created and died before giving a schema is told apart from one emptied behind its back. */
    int unclean = 0, made_marker = 0;
    if (strcmp(opt->path, ":memory:") != 0 && strncmp(opt->path, "file:", 5) != 0) {
        /* The write-ahead log, before SQLite replays it (store_wal.h, IMP-DELIV-007): refused
         * when its damage would drop committed transactions without a word. Nothing is
         * written before this, not even the marker. */
        size_t wn = strlen(opt->path) + sizeof "-wal";
        char *wal = malloc(wn);
        if (wal == NULL) {
            set_err(err, errlen, "out of memory");
            goto fail;
        }
        snprintf(wal, wn, "%s-wal", opt->path);
        int wrc = ims_wal_scan(wal, NULL, err, errlen);
        if (wrc != IMS_WAL_OK) {
            free(wal);
            goto fail;
        }
        struct stat wst;
        if (stat(wal, &wst) != 0)
            side[0] = wal;
        else
            free(wal);
        wn = strlen(opt->path) + sizeof "-shm";
        wal = malloc(wn);
        if (wal != NULL) {
            snprintf(wal, wn, "%s-shm", opt->path);
            if (stat(wal, &wst) == 0) {
                free(wal);
                wal = NULL;
            }
            side[1] = wal;
        }
        size_t n = strlen(opt->path) + sizeof "-running";
        s->marker = malloc(n);
        if (s->marker == NULL) {
            set_err(err, errlen, "out of memory");
            goto fail;
        }
        snprintf(s->marker, n, "%s-running", opt->path);
        struct stat st;
        unclean = stat(s->marker, &st) == 0;
        if (unclean) {
            /* Read first, before the database: a commit by another process in between only
             * makes the database's mark higher. */
            s->mark_fd = open(s->marker, O_RDWR | O_CLOEXEC);
            if (s->mark_fd < 0) {
                logf_(s, "store: open: %s: %s", s->marker, strerror(errno));
            } else {
                uint8_t rec[MARK_LEN + 1];
                ssize_t got = pread(s->mark_fd, rec, sizeof rec, 0);
                if (got > 0 && mark_decode(rec, (size_t)got, &mk_msg, &mk_user) == 0)
                    have_mark = mk_msg > 0 || mk_user > 0;
                else if (got != 0) /* 0: made, no commit yet (or an older imd's marker) */
                    logf_(s,
                          "store: open: %s: its record (%zd bytes) does not check out (torn "
                          "or damaged): ignored",
                          s->marker, got);
            }
        }
        int db_missing = stat(opt->path, &st) != 0 || (S_ISREG(st.st_mode) && st.st_size == 0);
        if (have_mark && db_missing) {
            set_err(err, errlen,
                    "%s: damaged or rolled back, committed data missing: %s records msg_id %lld "
                    "and user id %lld as committed, but the database file is %s. Nothing was "
                    "changed: restore the database from a backup, or remove %s to accept the "
                    "loss",
                    opt->path, s->marker, (long long)mk_msg, (long long)mk_user,
                    stat(opt->path, &st) != 0 ? "gone" : "empty", s->marker);
            goto fail;
        }
        if (!unclean && stat(opt->path, &st) == 0 && S_ISREG(st.st_mode) && st.st_size == 0) {
            set_err(err, errlen,
                    "%s: the database file is empty, and imd did not just create it (truncated "
                    "or replaced?): refusing to start without the data; remove the file to "
                    "start with a new, empty store",
                    opt->path);
            free(s->marker);
            s->marker = NULL; /* not ours: leave no marker behind */
            goto fail;
        }
        if (!unclean) {
            int fd = open(s->marker, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
            if (fd >= 0) {
                /* durable before anything is written, so that a power loss leaves it */
                (void)fsync(fd);
                s->mark_fd = fd;
                made_marker = 1;
                fsync_parent(s->marker);
            } else {
                /* not fatal: without it, the next open after a crash runs quick_check only */
                logf_(s, "store: open: %s: %s", s->marker, strerror(errno));
                free(s->marker);
                s->marker = NULL;
            }
        }
        /* The marker belongs to the store that holds its lock: a second process on the same
         * files (an admin command while imd runs) finds it locked, writes its commits' marks
         * into it too (committed values) and leaves it on close. Without the lock (a file
         * system without flock) the store behaves as the owner. */
        if (s->mark_fd >= 0)
            s->mark_owner = flock(s->mark_fd, LOCK_EX | LOCK_NB) == 0 || errno != EWOULDBLOCK;
        else
            s->mark_owner = s->marker != NULL;
        s->mark_write = s->mark_fd >= 0 && opt->sync_full;
    }
    /* One thread uses the connection (store.h): no per-call connection mutex. */
    int rc = sqlite3_open_v2(
        opt->path, &s->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc != SQLITE_OK) {
        set_err(err, errlen, "%s: %s", opt->path,
                s->db ? sqlite3_errmsg(s->db) : sqlite3_errstr(rc));
        goto fail;
    }
    sqlite3_extended_result_codes(s->db, 1);
    sqlite3_busy_timeout(s->db, IMS_BUSY_DEFAULT_MS);
    if (have_mark) {
        /* The committed mark (see above), before anything can write: SQLite replays the log
         * for this read. A database it cannot read is left to the checks below. */
        int64_t seqs = 0, db_msg = 0, db_user = 0;
        char merr[200];
        if (pragma_int(s->db, "SELECT count(*) FROM sqlite_schema WHERE name = 'sqlite_sequence'",
                       &seqs, merr, sizeof merr) == 0 &&
            (seqs == 0 ||
             (pragma_int(s->db, MARK_SQL, &db_msg, merr, sizeof merr) == 0 &&
              pragma_int(s->db, "SELECT (SELECT seq FROM sqlite_sequence WHERE name = 'users')",
                         &db_user, merr, sizeof merr) == 0)) &&
            (db_msg < mk_msg || db_user < mk_user)) {
            set_err(err, errlen,
                    "%s: damaged or rolled back, committed data missing: %s records msg_id %lld "
                    "and user id %lld as committed, the database has msg_id %lld and user id "
                    "%lld (write-ahead log cut short, or database restored from an older "
                    "copy?). Nothing was changed: restore the database and its -wal from a "
                    "backup, or remove %s to accept the loss",
                    opt->path, s->marker, (long long)mk_msg, (long long)mk_user, (long long)db_msg,
                    (long long)db_user, s->marker);
            /* leave the log as it is: no checkpoint into the database on close; and the empty
             * log and index SQLite made for this read go again */
            sqlite3_db_config(s->db, SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1, NULL);
            sqlite3_close(s->db);
            s->db = NULL;
            struct stat wst;
            if (side[0] != NULL && stat(side[0], &wst) == 0 && wst.st_size == 0)
                unlink(side[0]);
            if (side[1] != NULL)
                unlink(side[1]);
            goto fail;
        }
    }
    if (exec_sql(s->db, "PRAGMA foreign_keys = ON", err, errlen) != 0)
        goto fail;
    /* journal_mode answers the mode in effect: "wal", or "memory" for ":memory:". */
    sqlite3_stmt *q = NULL;
    if (sqlite3_prepare_v2(s->db, "PRAGMA journal_mode = WAL", -1, &q, NULL) != SQLITE_OK ||
        sqlite3_step(q) != SQLITE_ROW) {
        set_err(err, errlen, "%s: journal_mode: %s", opt->path, sqlite3_errmsg(s->db));
        sqlite3_finalize(q);
        goto fail;
    }
    const char *mode = (const char *)sqlite3_column_text(q, 0);
    if (mode == NULL || (strcmp(mode, "wal") != 0 && strcmp(mode, "memory") != 0)) {
        set_err(err, errlen, "%s: cannot use WAL (journal_mode %s)", opt->path, mode ? mode : "?");
        sqlite3_finalize(q);
        goto fail;
    }
    int wal_mode = strcmp(mode, "wal") == 0;
    sqlite3_finalize(q);
    /* fsync_thread (store.h): synchronous=NORMAL, the syncer fsyncs; decided below, once the
     * log file exists */
    int async = opt->fsync_thread && opt->sync_full && s->mark_write && wal_mode;
    if (exec_sql(s->db,
                 async ? "PRAGMA synchronous = NORMAL; PRAGMA wal_autocheckpoint = " IMS_STR(
                             IMS_STORE_AUTOCKPT_ASYNC)
                 : opt->sync_full ? "PRAGMA synchronous = FULL"
                                  : "PRAGMA synchronous = OFF",
                 err, errlen) != 0 ||
        exec_sql(s->db, "PRAGMA temp_store = MEMORY; PRAGMA cache_size = -16384", err, errlen) != 0)
        goto fail;
    char cerr[200] = "";
    /* After a clean close PRAGMA quick_check (fast) unless opt->full_check; after an unclean one
     * the full check below, once the statements are prepared. */
    int full = unclean || opt->full_check;
    if (!full && run_check(s->db, "PRAGMA quick_check", cerr, sizeof cerr) != 0) {
        set_err(err, errlen, "%s: damaged database: %s", opt->path, cerr);
        goto fail;
    }
    if (schema_setup(s->db, cerr, sizeof cerr) != 0) {
        set_err(err, errlen, "%s: %s", opt->path, cerr);
        goto fail;
    }
    if (async) {
        /* the log's own descriptor for the syncer's fdatasync: the same inode as SQLite's
         * (SQLite keeps the -wal file while a connection is open and restarts it in place);
         * it exists now (schema_setup read, or wrote, through it) */
        const char *wal = sqlite3_filename_wal(sqlite3_db_filename(s->db, "main"));
        s->wal_fd = wal ? open(wal, O_RDWR | O_CLOEXEC) : -1;
        if (s->wal_fd < 0) {
            logf_(s, "store: %s: %s: syncing inline", wal ? wal : "-wal", strerror(errno));
            if (exec_sql(s->db, "PRAGMA synchronous = FULL; PRAGMA wal_autocheckpoint = 1000", err,
                         errlen) != 0)
                goto fail;
        }
    }
    for (int i = 0; i < ST_COUNT; i++) {
        if (sqlite3_prepare_v3(s->db, st_sql[i], -1, SQLITE_PREPARE_PERSISTENT, &s->st[i], NULL) !=
            SQLITE_OK) {
            set_err(err, errlen, "%s: prepare: %s", opt->path, sqlite3_errmsg(s->db));
            goto fail;
        }
    }
    if (s->wal_fd >= 0) {
        /* what is in the database at open counts as on disk (the ids a crash lost are gone) */
        char merr[200];
        if (pragma_int(s->db, MARK_SQL, &s->durable_msg, merr, sizeof merr) != 0) {
            set_err(err, errlen, "%s: %s", opt->path, merr);
            goto fail;
        }
    }
    if (full) {
        /* PRAGMA integrity_check (indexes against their tables too), foreign keys and the
         * queue invariant: a store that was not closed cleanly is checked in full (and every
         * store with opt->full_check). */
        char ierr[200] = "";
        if (ims_store_integrity_check(s, ierr, sizeof ierr) != 0) {
            set_err(err, errlen, "%s: damaged database (checked in full%s): %s", opt->path,
                    unclean ? " after an unclean shutdown" : "", ierr);
            goto fail;
        }
    }
    free(side[0]);
    free(side[1]);
    return s;
fail:
    if (err != NULL && errlen > 0 && err[0] == '\0')
        set_err(err, errlen, "%s: cannot open", opt->path);
    for (int i = 0; i < ST_COUNT; i++)
        sqlite3_finalize(s->st[i]);
    sqlite3_close(s->db);
    /* A marker this open made goes (nothing was written); one found at open stays: still
     * unclean, the next open checks in full again. */
    if (made_marker)
        unlink(s->marker);
    if (s->mark_fd >= 0)
        close(s->mark_fd);
    if (s->wal_fd >= 0)
        close(s->wal_fd);
    free(side[0]);
    free(side[1]);
    free(s->marker);
    free(s->path);
    free(s);
    return NULL;
}

void ims_store_close(ims_store *s)
{
    if (s == NULL)
        return;
    if (s->in_batch && ims_store_commit(s) != 0)
        logf_(s, "store: close: the open batch could not be committed");
    if (ims_store_sync(s) != 0) /* the committed mark of the last batches, when on disk */
        logf_(s, "store: close: the last batches could not be synced");
    for (int i = 0; i < ST_COUNT; i++)
        sqlite3_finalize(s->st[i]);
    if (sqlite3_close(s->db) != SQLITE_OK)
        db_fail(s, "close");
    else if (s->marker != NULL && s->mark_owner && unlink(s->marker) != 0 && errno != ENOENT)
        logf_(s, "store: close: %s: %s", s->marker, strerror(errno));
    if (s->mark_fd >= 0)
        close(s->mark_fd); /* after the unlink: the lock is held until the marker is gone */
    if (s->wal_fd >= 0)
        close(s->wal_fd);
    free(s->marker);
    free(s->ids);
    free(s->um);
    free(s->undo);
    free(s->pend);
    free(s->pk);
    free(s->pk_buf);
    free(s->pk_row);
    hc_clear(s);
    free(s->path);
    qc_clear(s);
    free(s);
}

/* Inside a batch: its waiting direct messages and its marks into the rows, so that a query of
 * the tables sees the batch (packed entries, user marks). */
static int rows_current(ims_store *s)
{
    if (!s->in_batch || sqlite3_get_autocommit(s->db))
        return 0;
    int r = pk_flush_batch(s);
    return r != 0 ? r : marks_flush(s);
}

/* Every packed entry decodes into exactly its n messages, in ascending msg_id order. */
static int check_packed(ims_store *s, char *err, size_t errlen)
{
    sqlite3_stmt *q = NULL;
    if (sqlite3_prepare_v2(s->db, "SELECT user_id, seq, n, body, msg_id FROM queue WHERE inl = 2",
                           -1, &q, NULL) != SQLITE_OK) {
        set_err(err, errlen, "integrity check: %s", sqlite3_errmsg(s->db));
        return IMP_ERR_STORAGE;
    }
    int rc, r = 0;
    while (r == 0 && (rc = sqlite3_step(q)) == SQLITE_ROW) {
        const uint8_t *p = sqlite3_column_blob(q, 3);
        size_t len = (size_t)sqlite3_column_bytes(q, 3), off = 0;
        int64_t n = sqlite3_column_int64(q, 2), prev = 0, k = 0;
        ims_message m;
        for (; k < n && p != NULL; k++) {
            size_t used = 0;
            if (pk_decode(p + off, len - off, &m, &used) != 0 || m.msg_id <= prev)
                break;
            prev = m.msg_id;
            off += used;
        }
        if (k != n || off != len || prev != sqlite3_column_int64(q, 4)) {
            set_err(err, errlen, "queue entry %lld/%lld: its %lld packed messages do not decode",
                    (long long)sqlite3_column_int64(q, 0), (long long)sqlite3_column_int64(q, 1),
                    (long long)n);
            r = IMP_ERR_STORAGE;
        }
    }
    if (r == 0 && rc != SQLITE_DONE) {
        set_err(err, errlen, "integrity check: %s", sqlite3_errmsg(s->db));
        r = IMP_ERR_STORAGE;
    }
    sqlite3_finalize(q);
    return r;
}

int ims_store_integrity_check(ims_store *s, char *err, size_t errlen)
{
    set_err(err, errlen, "%s", "");
    if (s == NULL)
        return IMP_ERR_INVAL;
    if (rows_current(s) != 0) {
        set_err(err, errlen, "integrity check: the batch could not be written");
        return IMP_ERR_STORAGE;
    }
    char buf[256] = "";
    if (run_check(s->db, "PRAGMA integrity_check", buf, sizeof buf) != 0) {
        set_err(err, errlen, "%s", buf);
        return IMP_ERR_STORAGE;
    }
    /* Foreign keys, then the queue invariant (IMP-DELIV-002/003): each user's queue holds
     * exactly the seqs acked_seq+1 .. last_seq. */
    static const char *const checks[] = {
        "SELECT 'foreign key violation in ' || \"table\" FROM pragma_foreign_key_check LIMIT 1",
        /* schema version 4: entries of n messages (seq-n+1..seq) tile acked+1..last: none
         * at or below acked or above last, the last at last, the first from at most acked+1,
         * each starting right after the one before it */
        ("SELECT 'user ' || u.id || ': queue does not match last_seq/acked_seq' FROM users u "
         "WHERE u.acked_seq > u.last_seq OR EXISTS (SELECT 1 FROM queue q WHERE q.user_id = u.id "
         "AND (q.seq <= u.acked_seq OR q.seq > u.last_seq)) OR (u.last_seq > u.acked_seq AND NOT "
         "EXISTS (SELECT 1 FROM queue q WHERE q.user_id = u.id AND q.seq = u.last_seq)) OR "
         "(SELECT min(q.seq - q.n) FROM queue q WHERE q.user_id = u.id) > u.acked_seq LIMIT 1"),
        ("SELECT 'queue entry ' || user_id || '/' || seq || ' does not follow the entry before it' "
         "FROM (SELECT user_id, seq, n, lag(seq) OVER (PARTITION BY user_id ORDER BY seq) AS prev "
         "FROM queue) WHERE prev IS NOT NULL AND prev <> seq - n LIMIT 1"),
        ("SELECT 'queue entry ' || user_id || '/' || seq || ' has a bad kind or count' FROM queue "
         "WHERE inl NOT IN (0, 1, 2) OR (inl = 2 AND (n < 2 OR body IS NULL)) OR "
         "(inl <> 2 AND n <> 1) LIMIT 1"),
        ("SELECT 'message ' || m.msg_id || ' is kept for nothing' FROM messages m WHERE m.hist = 0 "
         "AND NOT EXISTS (SELECT 1 FROM queue q WHERE q.msg_id = m.msg_id AND q.inl = 0) LIMIT 1"),
        /* schema version 3: queue.user_id and dedupe.sender_id have no foreign key */
        ("SELECT 'queue entry ' || q.user_id || '/' || q.seq || ' belongs to no user' FROM queue "
         "q WHERE NOT EXISTS (SELECT 1 FROM users u WHERE u.id = q.user_id) LIMIT 1"),
        ("SELECT 'dedupe entry ' || d.sender_id || '/' || d.client_msg_id || ' belongs to no user' "
         "FROM dedupe d WHERE NOT EXISTS (SELECT 1 FROM users u WHERE u.id = d.sender_id) LIMIT 1"),
        /* schema version 2: msg_id has no foreign key (inline entries have no parent row) */
        ("SELECT 'queue entry ' || q.user_id || '/' || q.seq || ' refers to message ' || q.msg_id "
         "|| ', which does not exist' FROM queue q WHERE q.inl = 0 AND NOT EXISTS (SELECT 1 FROM "
         "messages m WHERE m.msg_id = q.msg_id) LIMIT 1"),
        ("SELECT 'queue entry ' || q.user_id || '/' || q.seq || ' has no message' FROM queue q "
         "WHERE q.inl = 1 AND (q.body IS NULL OR q.sender IS NULL OR q.target IS NULL) LIMIT 1"),
        ("SELECT 'message id ' || top || ' is above the sequence' FROM (SELECT max(id) AS top "
         "FROM (SELECT msg_id AS id FROM queue UNION ALL SELECT msg_id FROM messages)) WHERE "
         "top > coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'messages'), 0)"),
    };
    for (size_t i = 0; i < sizeof checks / sizeof checks[0]; i++) {
        sqlite3_stmt *q = NULL;
        int rc = sqlite3_prepare_v2(s->db, checks[i], -1, &q, NULL);
        if (rc == SQLITE_OK)
            rc = sqlite3_step(q);
        if (rc == SQLITE_ROW) {
            set_err(err, errlen, "%s", (const char *)sqlite3_column_text(q, 0));
            sqlite3_finalize(q);
            return IMP_ERR_STORAGE;
        }
        if (rc != SQLITE_DONE) {
            set_err(err, errlen, "integrity check: %s", sqlite3_errmsg(s->db));
            sqlite3_finalize(q);
            return IMP_ERR_STORAGE;
        }
        sqlite3_finalize(q);
    }
    if (check_packed(s, err, errlen) != 0)
        return IMP_ERR_STORAGE;
    set_err(err, errlen, "ok");
    return 0;
}

/* ---- users ---------------------------------------------------------------------------------- */

/* A users row; its marks are the transaction's when it changed them (user marks, below). */
static void row_to_user(ims_store *s, sqlite3_stmt *q, ims_user *u)
{
    memset(u, 0, sizeof *u);
    u->id = sqlite3_column_int64(q, 0);
    copy_col_text(u->name, sizeof u->name, q, 1);
    copy_col_text(u->hash, sizeof u->hash, q, 2);
    u->admin = sqlite3_column_int(q, 3);
    u->last_seq = (uint64_t)sqlite3_column_int64(q, 4);
    u->acked_seq = (uint64_t)sqlite3_column_int64(q, 5);
    u->created_ms = sqlite3_column_int64(q, 6);
    const struct umark *e = marks_peek(s, u->id);
    if (e != NULL && !e->gone) {
        u->last_seq = (uint64_t)e->last;
        u->acked_seq = (uint64_t)e->acked;
    }
}

static int hash_ok(const char *hash)
{
    return hash != NULL && strnlen(hash, IMS_HASH_LEN_MAX + 1) <= IMS_HASH_LEN_MAX;
}

int ims_store_user_create(ims_store *s, const char *name, const char *hash, int admin,
                          int64_t now_ms, int64_t *id_out)
{
    if (s == NULL || !name_ok(name) || !hash_ok(hash))
        return IMP_ERR_INVAL;
    int r = op_begin(s);
    if (r != 0)
        return r;
    sqlite3_stmt *q = st_get(s, ST_USER_INSERT);
    if (q == NULL)
        return op_end(s, IMP_ERR_STORAGE);
    sqlite3_bind_text(q, 1, name, -1, SQLITE_STATIC);
    sqlite3_bind_text(q, 2, hash, -1, SQLITE_STATIC);
    sqlite3_bind_int(q, 3, admin ? 1 : 0);
    sqlite3_bind_int64(q, 4, now_ms);
    int rc = sqlite3_step(q);
    if (rc == SQLITE_DONE) {
        if (id_out != NULL)
            *id_out = sqlite3_last_insert_rowid(s->db);
    } else if (rc == SQLITE_CONSTRAINT_UNIQUE || rc == SQLITE_CONSTRAINT_PRIMARYKEY) {
        r = IMP_ERR_USER_EXISTS;
    } else {
        r = db_fail(s, "user create");
    }
    st_put(s, ST_USER_INSERT, q);
    return op_end(s, r);
}

/* A single-row user lookup by text (name) or id. */
static int user_lookup(ims_store *s, int id, const char *name, int64_t uid, ims_user *u)
{
    sqlite3_stmt *q = st_get(s, id);
    if (q == NULL)
        return IMP_ERR_STORAGE;
    if (name != NULL)
        sqlite3_bind_text(q, 1, name, -1, SQLITE_STATIC);
    else
        sqlite3_bind_int64(q, 1, uid);
    int rc = sqlite3_step(q);
    int r = 0;
    if (rc == SQLITE_ROW)
        row_to_user(s, q, u);
    else if (rc == SQLITE_DONE)
        r = IMP_ERR_NO_SUCH_USER;
    else
        r = db_fail(s, "user get");
    st_put(s, id, q);
    return r;
}

int ims_store_user_get(ims_store *s, const char *name, ims_user *u)
{
    if (s == NULL || name == NULL || u == NULL)
        return IMP_ERR_INVAL;
    if (!name_ok(name))
        return IMP_ERR_NO_SUCH_USER;
    return user_lookup(s, ST_USER_BY_NAME, name, 0, u);
}

int ims_store_user_get_id(ims_store *s, int64_t id, ims_user *u)
{
    if (s == NULL || u == NULL)
        return IMP_ERR_INVAL;
    return user_lookup(s, ST_USER_BY_ID, NULL, id, u);
}

/* UPDATE users SET <col> = ?2 WHERE id = ?1 with a text or an int value. */
static int user_update(ims_store *s, int id, int64_t uid, const char *text, int value)
{
    int r = op_begin(s);
    if (r != 0)
        return r;
    sqlite3_stmt *q = st_get(s, id);
    if (q == NULL)
        return op_end(s, IMP_ERR_STORAGE);
    sqlite3_bind_int64(q, 1, uid);
    if (text != NULL)
        sqlite3_bind_text(q, 2, text, -1, SQLITE_STATIC);
    else
        sqlite3_bind_int(q, 2, value);
    int rc = sqlite3_step(q);
    if (rc != SQLITE_DONE)
        r = db_fail(s, "user update");
    else if (sqlite3_changes(s->db) == 0)
        r = IMP_ERR_NO_SUCH_USER;
    st_put(s, id, q);
    return op_end(s, r);
}

int ims_store_user_set_hash(ims_store *s, int64_t id, const char *hash)
{
    if (s == NULL || !hash_ok(hash))
        return IMP_ERR_INVAL;
    return user_update(s, ST_USER_SET_HASH, id, hash, 0);
}

int ims_store_user_set_admin(ims_store *s, int64_t id, int admin)
{
    if (s == NULL)
        return IMP_ERR_INVAL;
    return user_update(s, ST_USER_SET_ADMIN, id, NULL, admin ? 1 : 0);
}

/* ---- message garbage collection ------------------------------------------------------------- */

static int ids_push(ims_store *s, int64_t id)
{
    if (s->ids_n == s->ids_cap) {
        size_t cap = s->ids_cap ? s->ids_cap * 2 : 256;
        int64_t *p = realloc(s->ids, cap * sizeof *p);
        if (p == NULL) {
            logf_(s, "store: out of memory");
            return IMP_ERR_STORAGE;
        }
        s->ids = p;
        s->ids_cap = cap;
    }
    s->ids[s->ids_n++] = id;
    return 0;
}

/* Runs a "DELETE FROM queue ... RETURNING msg_id" statement (?1 user_id, ?2 upto when
 * non-negative), then deletes the messages that no queue holds any
 * more and that are not room history. */
static int delete_if_unused(ims_store *s, int64_t msg_id)
{
    sqlite3_stmt *d = st_get(s, ST_MSG_DELETE_UNUSED);
    if (d == NULL)
        return IMP_ERR_STORAGE;
    sqlite3_bind_int64(d, 1, msg_id);
    int r = sqlite3_step(d) == SQLITE_DONE ? 0 : db_fail(s, "message delete");
    st_put(s, ST_MSG_DELETE_UNUSED, d);
    return r;
}

/* The same for n ids at once (n > 1). */
static int delete_unused_list(ims_store *s, const int64_t *ids, size_t n)
{
    char small[1024];
    size_t cap = n * 21 + 3;
    char *json = cap <= sizeof small ? small : malloc(cap);
    if (json == NULL)
        return IMP_ERR_NOMEM;
    size_t len = 0;
    json[len++] = '[';
    for (size_t i = 0; i < n; i++)
        len += (size_t)snprintf(json + len, cap - len, i ? ",%lld" : "%lld", (long long)ids[i]);
    json[len++] = ']';
    int r = 0;
    sqlite3_stmt *d = st_get(s, ST_MSG_DELETE_UNUSED_LIST);
    if (d == NULL) {
        r = IMP_ERR_STORAGE;
    } else {
        sqlite3_bind_text(d, 1, json, (int)len, SQLITE_STATIC);
        if (sqlite3_step(d) != SQLITE_DONE)
            r = db_fail(s, "message delete");
        st_put(s, ST_MSG_DELETE_UNUSED_LIST, d);
    }
    if (json != small)
        free(json);
    return r;
}

/* Deletes the queue rows after < seq <= upto of user_id, then the shared messages nobody needs
 * any more. */
static int queue_delete(ims_store *s, int64_t user_id, int64_t after, int64_t upto)
{
    /* The ids are collected first: the message deletes are separate statements. A nested call
     * (callbacks do not run here) cannot interleave, so s->ids is ours. */
    sqlite3_stmt *q = st_get(s, ST_QUEUE_IDS_RANGE);
    if (q == NULL)
        return IMP_ERR_STORAGE;
    sqlite3_bind_int64(q, 1, user_id);
    sqlite3_bind_int64(q, 2, after);
    sqlite3_bind_int64(q, 3, upto);
    size_t base = s->ids_n;
    int rc, r = 0;
    while ((rc = sqlite3_step(q)) == SQLITE_ROW) {
        if (r == 0)
            r = ids_push(s, sqlite3_column_int64(q, 0));
    }
    if (rc != SQLITE_DONE && r == 0)
        r = db_fail(s, "queue delete");
    st_put(s, ST_QUEUE_IDS_RANGE, q);
    if (r == 0) {
        q = st_get(s, ST_QUEUE_DELETE_RANGE);
        if (q == NULL) {
            r = IMP_ERR_STORAGE;
        } else {
            sqlite3_bind_int64(q, 1, user_id);
            sqlite3_bind_int64(q, 2, after);
            sqlite3_bind_int64(q, 3, upto);
            if (sqlite3_step(q) != SQLITE_DONE)
                r = db_fail(s, "queue delete");
            st_put(s, ST_QUEUE_DELETE_RANGE, q);
        }
    }
    if (r == 0 && s->ids_n - base > 1)
        r = delete_unused_list(s, s->ids + base, s->ids_n - base);
    else if (r == 0 && s->ids_n - base == 1)
        r = delete_if_unused(s, s->ids[base]);
    s->ids_n = base;
    return r;
}

int ims_store_user_delete(ims_store *s, int64_t id)
{
    if (s == NULL)
        return IMP_ERR_INVAL;
    int r = op_begin(s);
    if (r != 0)
        return r;
    /* The queue first (its messages may become unused), its dedupe entries (schema version 3:
     * neither has a foreign key), then the user: tokens and memberships go with it (ON DELETE
     * CASCADE). All in this one operation. */
    r = queue_delete(s, id, -1, INT64_MAX);
    if (r == 0) {
        sqlite3_stmt *q = st_get(s, ST_DEDUPE_DELETE_USER);
        if (q == NULL)
            return op_end(s, IMP_ERR_STORAGE);
        sqlite3_bind_int64(q, 1, id);
        if (sqlite3_step(q) != SQLITE_DONE)
            r = db_fail(s, "dedupe delete");
        st_put(s, ST_DEDUPE_DELETE_USER, q);
    }
    if (r == 0) {
        sqlite3_stmt *q = st_get(s, ST_USER_DELETE);
        if (q == NULL)
            return op_end(s, IMP_ERR_STORAGE);
        sqlite3_bind_int64(q, 1, id);
        if (sqlite3_step(q) != SQLITE_DONE)
            r = db_fail(s, "user delete");
        else if (sqlite3_changes(s->db) == 0)
            r = IMP_ERR_NO_SUCH_USER;
        st_put(s, ST_USER_DELETE, q);
    }
    struct umark *e = r == 0 ? marks_peek(s, id) : NULL;
    if (e != NULL && (r = marks_touch(s, e)) == 0)
        e->gone = 1; /* no more seqs for it in this transaction, and no write at COMMIT */
    if (r == 0)
        qc_forget(s, id, 0, UINT64_MAX);
    return op_end(s, r);
}

int ims_store_user_list(ims_store *s, const char *after, int limit,
                        int (*cb)(void *ud, const ims_user *u), void *ud)
{
    if (s == NULL || cb == NULL || limit < 0)
        return IMP_ERR_INVAL;
    if (limit == 0)
        return 0;
    sqlite3_stmt *q = st_get(s, ST_USER_LIST);
    if (q == NULL)
        return IMP_ERR_STORAGE;
    sqlite3_bind_text(q, 1, after ? after : "", -1, SQLITE_STATIC);
    sqlite3_bind_int(q, 2, limit);
    int n = 0, rc;
    ims_user u;
    while ((rc = sqlite3_step(q)) == SQLITE_ROW) {
        row_to_user(s, q, &u);
        n++;
        if (cb(ud, &u) != 0) {
            rc = SQLITE_DONE;
            break;
        }
    }
    if (rc != SQLITE_DONE)
        n = db_fail(s, "user list");
    st_put(s, ST_USER_LIST, q);
    return n;
}

/* A single-value "SELECT count(*)" or similar. */
static int count_query(ims_store *s, int id, int64_t *out)
{
    if (s == NULL || out == NULL)
        return IMP_ERR_INVAL;
    sqlite3_stmt *q = st_get(s, id);
    if (q == NULL)
        return IMP_ERR_STORAGE;
    int r = 0;
    if (sqlite3_step(q) == SQLITE_ROW)
        *out = sqlite3_column_int64(q, 0);
    else
        r = db_fail(s, "count");
    st_put(s, id, q);
    return r;
}

int ims_store_user_count(ims_store *s, int64_t *count)
{
    return count_query(s, ST_USER_COUNT, count);
}

int ims_store_message_count(ims_store *s, int64_t *count)
{
    /* a packed entry's messages above its user's acked mark (the mark as in the batch) */
    int r = s != NULL ? rows_current(s) : 0;
    return r != 0 ? r : count_query(s, ST_MSG_COUNT, count);
}

/* Collects the first column (an integer) of every row into a malloc'd array. */
static int collect_ids(ims_store *s, int id, const char *text, int64_t **ids, size_t *n)
{
    sqlite3_stmt *q = st_get(s, id);
    if (q == NULL)
        return IMP_ERR_STORAGE;
    if (text != NULL)
        sqlite3_bind_text(q, 1, text, -1, SQLITE_STATIC);
    int64_t *v = NULL;
    size_t len = 0, cap = 0;
    int rc, r = 0;
    while ((rc = sqlite3_step(q)) == SQLITE_ROW) {
        if (len == cap) {
            cap = cap ? cap * 2 : 64;
            int64_t *p = realloc(v, cap * sizeof *p);
            if (p == NULL) {
                logf_(s, "store: out of memory");
                r = IMP_ERR_STORAGE;
                break;
            }
            v = p;
        }
        v[len++] = sqlite3_column_int64(q, 0);
    }
    if (r == 0 && rc != SQLITE_DONE)
        r = db_fail(s, "id list");
    st_put(s, id, q);
    if (r != 0) {
        free(v);
        return r;
    }
    *ids = v;
    *n = len;
    return 0;
}

int ims_store_all_user_ids(ims_store *s, int64_t **ids, size_t *n)
{
    if (s == NULL || ids == NULL || n == NULL)
        return IMP_ERR_INVAL;
    *ids = NULL;
    *n = 0;
    return collect_ids(s, ST_USER_IDS, NULL, ids, n);
}

/* ---- tokens --------------------------------------------------------------------------------- */

int ims_store_token_add(ims_store *s, int64_t user_id, const uint8_t token_hash[32],
                        int64_t expires_ms)
{
    if (s == NULL || token_hash == NULL)
        return IMP_ERR_INVAL;
    int r = op_begin(s);
    if (r != 0)
        return r;
    sqlite3_stmt *q = st_get(s, ST_TOKEN_INSERT);
    if (q == NULL)
        return op_end(s, IMP_ERR_STORAGE);
    sqlite3_bind_blob(q, 1, token_hash, 32, SQLITE_STATIC);
    sqlite3_bind_int64(q, 2, user_id);
    sqlite3_bind_int64(q, 3, expires_ms);
    int rc = sqlite3_step(q);
    if (rc == SQLITE_CONSTRAINT_FOREIGNKEY)
        r = IMP_ERR_NO_SUCH_USER;
    else if (rc != SQLITE_DONE)
        r = db_fail(s, "token add");
    st_put(s, ST_TOKEN_INSERT, q);
    return op_end(s, r);
}

int ims_store_token_check(ims_store *s, const uint8_t token_hash[32], int64_t now_ms,
                          int64_t *user_id)
{
    if (s == NULL || token_hash == NULL || user_id == NULL)
        return IMP_ERR_INVAL;
    sqlite3_stmt *q = st_get(s, ST_TOKEN_CHECK);
    if (q == NULL)
        return IMP_ERR_STORAGE;
    sqlite3_bind_blob(q, 1, token_hash, 32, SQLITE_STATIC);
    sqlite3_bind_int64(q, 2, now_ms);
    int rc = sqlite3_step(q), r = 0;
    if (rc == SQLITE_ROW)
        *user_id = sqlite3_column_int64(q, 0);
    else if (rc == SQLITE_DONE)
        r = IMP_ERR_TOKEN_INVALID;
    else
        r = db_fail(s, "token check");
    st_put(s, ST_TOKEN_CHECK, q);
    return r;
}

/* A one-statement write with one blob or integer parameter; returns the changes or < 0. */
static int simple_delete(ims_store *s, int id, const uint8_t *blob, int64_t value)
{
    int r = op_begin(s);
    if (r != 0)
        return r;
    sqlite3_stmt *q = st_get(s, id);
    if (q == NULL)
        return op_end(s, IMP_ERR_STORAGE);
    if (blob != NULL)
        sqlite3_bind_blob(q, 1, blob, 32, SQLITE_STATIC);
    else
        sqlite3_bind_int64(q, 1, value);
    int changes = 0;
    if (sqlite3_step(q) == SQLITE_DONE)
        changes = sqlite3_changes(s->db);
    else
        r = db_fail(s, st_sql[id]);
    st_put(s, id, q);
    r = op_end(s, r);
    return r != 0 ? r : changes;
}

int ims_store_token_delete(ims_store *s, const uint8_t token_hash[32])
{
    if (s == NULL || token_hash == NULL)
        return IMP_ERR_INVAL;
    int r = simple_delete(s, ST_TOKEN_DELETE, token_hash, 0);
    return r < 0 ? r : 0;
}

int ims_store_token_expire(ims_store *s, int64_t now_ms)
{
    if (s == NULL)
        return IMP_ERR_INVAL;
    return simple_delete(s, ST_TOKEN_EXPIRE, NULL, now_ms);
}

int ims_store_dedupe_expire(ims_store *s, int64_t before_ms)
{
    if (s == NULL)
        return IMP_ERR_INVAL;
    /* Bounded through the index on ts_ms: below the timestamp of the BATCH-th oldest entry (a
     * DELETE ... WHERE (sender_id, client_msg_id) IN (subquery) searched the primary key by
     * sender only: a scan of the sender's entries per row). */
    int64_t cut = before_ms;
    int r = op_begin(s);
    if (r != 0)
        return r;
    sqlite3_stmt *q = st_get(s, ST_DEDUPE_CUT);
    if (q == NULL)
        return op_end(s, IMP_ERR_STORAGE);
    sqlite3_bind_int64(q, 1, before_ms);
    int rc = sqlite3_step(q);
    if (rc == SQLITE_ROW)
        cut = sqlite3_column_int64(q, 0);
    else if (rc != SQLITE_DONE)
        r = db_fail(s, st_sql[ST_DEDUPE_CUT]);
    st_put(s, ST_DEDUPE_CUT, q);
    r = op_end(s, r);
    if (r != 0)
        return r;
    int n = simple_delete(s, ST_DEDUPE_EXPIRE, NULL, cut);
    if (n == 0 && cut < before_ms) /* more than a batch share the oldest timestamp */
        n = simple_delete(s, ST_DEDUPE_EXPIRE, NULL, cut + 1);
    return n;
}

/* ---- messages and queues -------------------------------------------------------------------- */

/* IMP-DELIV-005: the first message stored under (sender, client_msg_id). */
int ims_store_dedupe_get(ims_store *s, int64_t sender_id, const char *client_msg_id,
                         int64_t *msg_id, uint8_t digest[32])
{
    if (s == NULL || client_msg_id == NULL || msg_id == NULL)
        return IMP_ERR_INVAL;
    sqlite3_stmt *q = st_get(s, ST_DEDUPE_GET);
    if (q == NULL)
        return IMP_ERR_STORAGE;
    sqlite3_bind_int64(q, 1, sender_id);
    sqlite3_bind_text(q, 2, client_msg_id, -1, SQLITE_STATIC);
    int rc = sqlite3_step(q), r = 0;
    if (rc == SQLITE_ROW) {
        *msg_id = sqlite3_column_int64(q, 0);
        if (digest != NULL) {
            const void *d = sqlite3_column_blob(q, 1);
            memset(digest, 0, 32);
            if (d != NULL && sqlite3_column_bytes(q, 1) == 32)
                memcpy(digest, d, 32);
        }
        r = 1;
    } else if (rc != SQLITE_DONE) {
        r = db_fail(s, "dedupe get");
    }
    st_put(s, ST_DEDUPE_GET, q);
    return r;
}

static int message_ok(const ims_message *m)
{
    if (m->target_kind < 1 || m->target_kind > 3)
        return 0;
    if (memchr(m->sender, '\0', sizeof m->sender) == NULL ||
        memchr(m->target, '\0', sizeof m->target) == NULL)
        return 0;
    if ((m->body == NULL && m->body_len != 0) || (m->headers == NULL && m->headers_len != 0))
        return 0;
    if (m->body_len > (size_t)INT_MAX || m->headers_len > (size_t)INT_MAX)
        return 0;
    return 1;
}

typedef struct rcpt_ref {
    int64_t id;
    size_t idx;
} rcpt_ref;

static int rcpt_cmp(const void *a, const void *b)
{
    const rcpt_ref *x = a, *y = b;
    if (x->id != y->id)
        return x->id < y->id ? -1 : 1;
    return x->idx < y->idx ? -1 : x->idx > y->idx;
}

/* first[i] = the smallest j with recipients[j] == recipients[i]. */
static int first_occurrences(const int64_t *r, size_t n, size_t *first)
{
    if (n <= 16) {
        for (size_t i = 0; i < n; i++) {
            first[i] = i;
            for (size_t j = 0; j < i; j++) {
                if (r[j] == r[i]) {
                    first[i] = j;
                    break;
                }
            }
        }
        return 0;
    }
    rcpt_ref *v = malloc(n * sizeof *v);
    if (v == NULL)
        return -1;
    for (size_t i = 0; i < n; i++)
        v[i] = (rcpt_ref){r[i], i};
    qsort(v, n, sizeof *v, rcpt_cmp);
    for (size_t i = 0; i < n; i++)
        first[v[i].idx] = (i > 0 && v[i - 1].id == v[i].id) ? first[v[i - 1].idx] : v[i].idx;
    free(v);
    return 0;
}

/* Queues msg_id for user_id under the user's next seq (IMP-DELIV-002). */
/* Binds a message's blobs: headers NULL when absent, body never NULL (zero-length blob). */
static void bind_content(sqlite3_stmt *q, int col, const ims_message *m)
{
    if (m->headers != NULL)
        sqlite3_bind_blob(q, col, m->headers, (int)m->headers_len, SQLITE_STATIC);
    else
        sqlite3_bind_null(q, col);
    if (m->body_len > 0)
        sqlite3_bind_blob(q, col + 1, m->body, (int)m->body_len, SQLITE_STATIC);
    else
        sqlite3_bind_zeroblob(q, col + 1, 0);
}

/* Queues message msg_id for user_id under the user's next seq: the message itself in the entry
 * when inl is not NULL (a direct message), else a reference to its messages row. */
static int enqueue(ims_store *s, int64_t user_id, int64_t msg_id, const ims_message *inl,
                   uint64_t *seq_out)
{
    /* IMP-DELIV-002: the user's next sequence number, assigned when the message is stored
     * (kept in the transaction's user marks, written at COMMIT) */
    struct umark *e = NULL;
    int r = marks_get(s, user_id, &e);
    if (r == 0)
        r = marks_touch(s, e);
    if (r != 0)
        return r;
    int64_t seq = e->last + 1;
    if (inl && s->in_batch && pk_add(s, e, (uint64_t)seq, msg_id, inl) == 0) {
        /* written before COMMIT, packed with the user's other ones (packed entries) */
    } else if (inl) {
        r = insert_inline(s, user_id, (uint64_t)seq, msg_id, inl);
    } else {
        sqlite3_stmt *q = st_get(s, ST_QUEUE_INSERT);
        if (q == NULL)
            return IMP_ERR_STORAGE;
        sqlite3_bind_int64(q, 1, user_id);
        sqlite3_bind_int64(q, 2, seq);
        sqlite3_bind_int64(q, 3, msg_id);
        if (sqlite3_step(q) != SQLITE_DONE)
            r = db_fail(s, "queue insert");
        st_put(s, ST_QUEUE_INSERT, q);
    }
    if (r != 0)
        return r;
    e->last = seq;
    e->dirty = 1;
    *seq_out = (uint64_t)seq;
    return 0;
}

/* The messages row of a room or broadcast message; msg_id from next_msg_id (IMP-DELIV-006). */
static int put_message_row(ims_store *s, const ims_message *m, int64_t msg_id)
{
    sqlite3_stmt *q = st_get(s, ST_MSG_INSERT);
    if (q == NULL)
        return IMP_ERR_STORAGE;
    sqlite3_bind_int64(q, 1, m->sender_id);
    sqlite3_bind_text(q, 2, m->sender, -1, SQLITE_STATIC);
    sqlite3_bind_int(q, 3, m->target_kind);
    sqlite3_bind_text(q, 4, m->target, -1, SQLITE_STATIC);
    sqlite3_bind_int64(q, 5, m->ts_ms);
    bind_content(q, 6, m);
    /* Room messages are also the room's history (IMP-DELIV-008). */
    sqlite3_bind_int(q, 8, m->target_kind == 2 ? 1 : 0);
    sqlite3_bind_int64(q, 9, msg_id);
    int r = sqlite3_step(q) == SQLITE_DONE ? 0 : db_fail(s, "message insert");
    st_put(s, ST_MSG_INSERT, q);
    return r;
}

static int put_dedupe_row(ims_store *s, const ims_message *m, const char *cmid,
                          const uint8_t digest[32], int64_t msg_id)
{
    sqlite3_stmt *q = st_get(s, ST_DEDUPE_INSERT);
    if (q == NULL)
        return IMP_ERR_STORAGE;
    sqlite3_bind_int64(q, 1, m->sender_id);
    sqlite3_bind_text(q, 2, cmid, -1, SQLITE_STATIC);
    sqlite3_bind_int64(q, 3, msg_id);
    sqlite3_bind_blob(q, 4, digest, 32, SQLITE_STATIC);
    sqlite3_bind_int64(q, 5, m->ts_ms);
    int rc = sqlite3_step(q), r = 0;
    if (rc == SQLITE_CONSTRAINT_PRIMARYKEY || rc == SQLITE_CONSTRAINT_UNIQUE)
        r = IMP_ERR_ID_CONFLICT;
    else if (rc == SQLITE_CONSTRAINT_FOREIGNKEY)
        r = IMP_ERR_NO_SUCH_USER; /* the sender does not exist */
    else if (rc != SQLITE_DONE)
        r = db_fail(s, "dedupe insert");
    st_put(s, ST_DEDUPE_INSERT, q);
    return r;
}

int ims_store_message_put(ims_store *s, const ims_message *m, const char *client_msg_id,
                          const uint8_t digest[32], const int64_t *recipients, size_t n,
                          int64_t *msg_id_out, uint64_t *seqs)
{
    if (s == NULL || m == NULL || msg_id_out == NULL || (n > 0 && recipients == NULL) ||
        !message_ok(m))
        return IMP_ERR_INVAL;
    int dedupe = client_msg_id != NULL && client_msg_id[0] != '\0';
    if (dedupe && digest == NULL)
        return IMP_ERR_INVAL;
    size_t first_small[16];
    size_t *first = first_small;
    if (n > 16) {
        first = malloc(n * sizeof *first);
        if (first == NULL)
            return IMP_ERR_NOMEM;
    }
    if (first_occurrences(recipients, n, first) != 0) {
        if (first != first_small)
            free(first);
        return IMP_ERR_NOMEM;
    }
    /* IMP-DELIV-006: one sequence for every message. A direct message is kept in its
     * recipient's queue entry; a room or broadcast message once, shared by the entries. A
     * message for nobody (a broadcast without users) only uses up its id. */
    int inl = m->target_kind == 1 && n == 1 && m->body_len + m->headers_len <= IMS_INLINE_MAX;
    /* A direct message in a batch is at most two inserts, each atomic by itself: no SAVEPOINT
     * (light_begin) */
    int light = inl && s->in_batch;
    int r = light ? light_begin(s) : op_begin(s);
    if (r != 0) {
        if (first != first_small)
            free(first);
        return r;
    }
    int64_t msg_id = 0, wrote = 0;
    uint64_t seq0 = 0;
    if (light) { /* refusals before any write: the recipient exists */
        struct umark *e = NULL;
        r = marks_get(s, recipients[0], &e);
    }
    if (r == 0 && dedupe) { /* and so does the sender of a dedupe row (no foreign key) */
        struct umark *e = NULL;
        r = marks_get(s, m->sender_id, &e);
    }
    if (r == 0)
        r = next_msg_id(s, &msg_id);
    if (r == 0 && !inl && (n > 0 || m->target_kind == 2))
        r = put_message_row(s, m, msg_id);
    if (r == 0 && dedupe) {
        r = put_dedupe_row(s, m, client_msg_id, digest, msg_id);
        wrote = r == 0;
    }
    /* IMP-DELIV-008: the whole fan-out is part of this operation (and of the batch). */
    for (size_t i = 0; r == 0 && i < n; i++) {
        uint64_t seq = 0;
        if (first[i] != i) {
            if (seqs != NULL)
                seqs[i] = seqs[first[i]];
            continue;
        }
        r = enqueue(s, recipients[i], msg_id, inl ? m : NULL, &seq);
        if (seqs != NULL)
            seqs[i] = seq;
        seq0 = i == 0 ? seq : seq0;
    }
    if (first != first_small)
        free(first);
    r = light ? light_end(s, r, (int)wrote) : op_end(s, r);
    if (r == 0)
        *msg_id_out = msg_id;
    if (r == 0 && m->target_kind == 2) { /* one more in its room's history (history lengths) */
        struct hcount *h = *hc_slot(s, m->target);
        if (h != NULL)
            h->n++;
    }
    if (r == 0 && inl) {
        qc_add(s, recipients[0], seq0, msg_id, m);
        if (!s->in_batch)
            qc_commit(s); /* its own transaction, committed by op_end */
    }
    return r;
}

/* A message from 8 columns starting at c (MSG_COLS' order). */
static void row_to_msg_at(sqlite3_stmt *q, int c, ims_message *m)
{
    memset(m, 0, sizeof *m);
    m->msg_id = sqlite3_column_int64(q, c);
    m->sender_id = sqlite3_column_int64(q, c + 1);
    copy_col_text(m->sender, sizeof m->sender, q, c + 2);
    m->target_kind = sqlite3_column_int(q, c + 3);
    copy_col_text(m->target, sizeof m->target, q, c + 4);
    m->ts_ms = sqlite3_column_int64(q, c + 5);
    m->headers = sqlite3_column_blob(q, c + 6);
    m->headers_len = m->headers ? (size_t)sqlite3_column_bytes(q, c + 6) : 0;
    m->body = sqlite3_column_blob(q, c + 7);
    m->body_len = m->body ? (size_t)sqlite3_column_bytes(q, c + 7) : 0;
}

static void row_to_msg(sqlite3_stmt *q, ims_message *m)
{
    row_to_msg_at(q, 0, m);
}

static int user_marks(ims_store *s, int64_t user_id, uint64_t *last, uint64_t *acked);

/* Passes the messages of the packed entry in q's current row with seq > skip to cb, counting
 * them in *n up to limit; *stop = 1 when cb asked to stop. SQLITE_ROW when done with the row,
 * SQLITE_CORRUPT (logged) when the entry does not decode. */
static int pk_read_entry(ims_store *s, sqlite3_stmt *q, uint64_t skip, int limit, int *n,
                         int (*cb)(void *ud, const ims_message *m), void *ud, int *stop)
{
    const uint8_t *p = sqlite3_column_blob(q, 7);
    size_t len = (size_t)sqlite3_column_bytes(q, 7);
    uint64_t last = (uint64_t)sqlite3_column_int64(q, 16);
    int64_t cnt = sqlite3_column_int64(q, 18);
    if (cnt < 1 || (uint64_t)cnt > last) {
        logf_(s, "store: queue entry %lld/%llu: bad count %lld",
              (long long)sqlite3_column_int64(q, 0), (unsigned long long)last, (long long)cnt);
        return SQLITE_CORRUPT;
    }
    uint64_t seq = last - (uint64_t)cnt + 1;
    for (size_t off = 0; seq <= last; seq++) {
        ims_message m;
        size_t used = 0;
        if (p == NULL || pk_decode(p + off, len - off, &m, &used) != 0) {
            logf_(s, "store: queue entry with seq %llu: damaged packed message %llu",
                  (unsigned long long)last, (unsigned long long)seq);
            return SQLITE_CORRUPT;
        }
        off += used;
        if (seq <= skip)
            continue;
        m.seq = seq;
        (*n)++;
        if (cb(ud, &m) != 0) {
            *stop = 1;
            return SQLITE_ROW;
        }
        if (*n >= limit)
            return SQLITE_ROW;
    }
    return SQLITE_ROW;
}

/* IMP-DELIV-004: what a session (re)delivers, in seq order (IMP-DELIV-002): every queued
 * message above the position it asks for; acknowledged ones are no longer queued. */
int ims_store_queue_read(ims_store *s, int64_t user_id, uint64_t after_seq, int limit,
                         int (*cb)(void *ud, const ims_message *m), void *ud)
{
    if (s == NULL || cb == NULL || limit < 0)
        return IMP_ERR_INVAL;
    if (limit == 0 || after_seq >= (uint64_t)INT64_MAX)
        return 0;
    int n = 0, rc;
    ims_message m;
    /* from the queue cache while it has the next entry, then from the table */
    if (sqlite3_get_autocommit(s->db))
        qc_settle(s);
    struct qentry *ce;
    while (n < limit && (ce = qc_get(s, user_id, after_seq + 1)) != NULL) {
        qc_to_msg(ce, &m);
        after_seq++;
        n++;
        s->qc_hits++;
        if (cb(ud, &m) != 0)
            return n;
    }
    if (n == limit)
        return n;
    if (s->pk_n > 0) { /* in a batch: its messages waiting for this user are read too */
        struct umark *e = marks_peek(s, user_id);
        if (e != NULL && e->pk && (rc = pk_flush_batch(s)) != 0)
            return rc;
    }
    sqlite3_stmt *q = st_get(s, ST_QUEUE_READ);
    if (q == NULL)
        return IMP_ERR_STORAGE;
    sqlite3_bind_int64(q, 1, user_id);
    sqlite3_bind_int64(q, 2, (int64_t)after_seq);
    sqlite3_bind_int(q, 3, limit - n);
    int first_row = 1;
    rc = SQLITE_DONE;
    /* LIMIT counts entries: a packed one holds several messages */
    while (n < limit && (rc = sqlite3_step(q)) == SQLITE_ROW) {
        int inl = sqlite3_column_int(q, 17);
        if (inl == 2) {
            /* a packed entry: its messages above after_seq and the acked mark (only a user's
             * first entry can hold acknowledged ones: the first row read here) */
            uint64_t skip = after_seq;
            if (first_row) {
                uint64_t ulast = 0, uacked = 0;
                if (user_marks(s, user_id, &ulast, &uacked) != 0) {
                    rc = SQLITE_ERROR;
                    break;
                }
                skip = uacked > skip ? uacked : skip;
            }
            first_row = 0;
            int stop = 0;
            rc = pk_read_entry(s, q, skip, limit, &n, cb, ud, &stop);
            if (rc != SQLITE_ROW || stop) {
                rc = rc == SQLITE_ROW ? SQLITE_DONE : rc;
                break;
            }
            continue;
        }
        first_row = 0;
        if (!inl && sqlite3_column_type(q, 8) == SQLITE_NULL) {
            /* a reference to a missing row (ims_store_integrity_check reports it): skipped,
             * as the join of schema version 1 did */
            continue;
        }
        row_to_msg_at(q, inl ? 0 : 8, &m);
        m.seq = (uint64_t)sqlite3_column_int64(q, 16);
        n++;
        if (cb(ud, &m) != 0) {
            rc = SQLITE_DONE;
            break;
        }
    }
    if (rc == SQLITE_ROW) /* stopped at limit */
        rc = SQLITE_DONE;
    if (rc == SQLITE_CORRUPT)
        n = IMP_ERR_STORAGE; /* logged by pk_read_entry */
    else if (rc != SQLITE_DONE)
        n = db_fail(s, "queue read");
    st_put(s, ST_QUEUE_READ, q);
    return n;
}

static int user_marks(ims_store *s, int64_t user_id, uint64_t *last, uint64_t *acked)
{
    if (!sqlite3_get_autocommit(s->db)) { /* a transaction: its marks (user marks, above) */
        struct umark *e = NULL;
        int r = marks_get(s, user_id, &e);
        if (r == 0) {
            *last = (uint64_t)e->last;
            *acked = (uint64_t)e->acked;
        }
        return r;
    }
    sqlite3_stmt *q = st_get(s, ST_USER_MARKS);
    if (q == NULL)
        return IMP_ERR_STORAGE;
    sqlite3_bind_int64(q, 1, user_id);
    int rc = sqlite3_step(q), r = 0;
    if (rc == SQLITE_ROW) {
        *last = (uint64_t)sqlite3_column_int64(q, 0);
        *acked = (uint64_t)sqlite3_column_int64(q, 1);
    } else if (rc == SQLITE_DONE) {
        r = IMP_ERR_NO_SUCH_USER;
    } else {
        r = db_fail(s, "user marks");
    }
    st_put(s, ST_USER_MARKS, q);
    return r;
}

int ims_store_queue_count(ims_store *s, int64_t user_id, int64_t *count)
{
    if (s == NULL || count == NULL)
        return IMP_ERR_INVAL;
    uint64_t last = 0, acked = 0;
    int r = user_marks(s, user_id, &last, &acked);
    if (r != 0)
        return r;
    /* IMP-DELIV-007: the offline quota counts these. The queue holds exactly acked+1..last
     * (checked by ims_store_integrity_check). */
    *count = last > acked ? (int64_t)(last - acked) : 0;
    return 0;
}

/* IMP-DELIV-003: acked = max(acked, upto); entries <= acked are deleted; BAD_REQUEST above the
 * highest seq ever assigned. */
int ims_store_queue_ack(ims_store *s, int64_t user_id, uint64_t upto, uint64_t *acked_out)
{
    if (s == NULL)
        return IMP_ERR_INVAL;
    /* In a batch without a SAVEPOINT (light_begin): the refusal comes before any write and each
     * statement is atomic; a failure after a write rolls the batch back. */
    int light = s->in_batch, wrote = 0;
    int r = light ? light_begin(s) : op_begin(s);
    if (r != 0)
        return r;
    struct umark *e = NULL;
    uint64_t acked = 0;
    r = marks_get(s, user_id, &e);
    if (r == 0) {
        acked = (uint64_t)e->acked;
        if (upto > (uint64_t)e->last)
            r = IMP_ERR_BAD_REQUEST;
    }
    if (r == 0 && upto > acked) {
        r = marks_touch(s, e);
        if (r == 0 && e->pk) { /* its waiting messages first: the delete sees them */
            wrote = 1;
            r = pk_flush(s); /* a failure rolls the batch back (light_end) */
        }
        if (r == 0) {
            wrote = 1;
            r = queue_delete(s, user_id, (int64_t)acked, u64_to_i64(upto));
        }
        if (r == 0) {
            qc_forget(s, user_id, acked, upto);
            e->acked = u64_to_i64(upto); /* e: no marks_get since */
            e->dirty = 1;
            acked = upto;
        }
    }
    r = light ? light_end(s, r, wrote) : op_end(s, r);
    if (r == 0 && acked_out != NULL)
        *acked_out = acked;
    return r;
}

/* ---- rooms ---------------------------------------------------------------------------------- */

/* 1 when the room exists, 0 when not, < 0 on failure. */
static int room_exists(ims_store *s, const char *room)
{
    sqlite3_stmt *q = st_get(s, ST_ROOM_EXISTS);
    if (q == NULL)
        return IMP_ERR_STORAGE;
    sqlite3_bind_text(q, 1, room, -1, SQLITE_STATIC);
    int rc = sqlite3_step(q);
    int r = rc == SQLITE_ROW ? 1 : rc == SQLITE_DONE ? 0 : db_fail(s, "room lookup");
    st_put(s, ST_ROOM_EXISTS, q);
    return r;
}

int ims_store_room_join(ims_store *s, const char *room, int64_t user_id, int64_t now_ms,
                        int *created)
{
    if (s == NULL || !name_ok(room))
        return IMP_ERR_INVAL;
    int r = op_begin(s);
    if (r != 0)
        return r;
    int made = 0;
    sqlite3_stmt *q = st_get(s, ST_ROOM_INSERT);
    if (q == NULL)
        return op_end(s, IMP_ERR_STORAGE);
    sqlite3_bind_text(q, 1, room, -1, SQLITE_STATIC);
    sqlite3_bind_int64(q, 2, now_ms);
    if (sqlite3_step(q) == SQLITE_DONE)
        made = sqlite3_changes(s->db) > 0;
    else
        r = db_fail(s, "room insert");
    st_put(s, ST_ROOM_INSERT, q);
    if (r == 0) {
        q = st_get(s, ST_MEMBER_INSERT);
        if (q == NULL)
            return op_end(s, IMP_ERR_STORAGE);
        sqlite3_bind_text(q, 1, room, -1, SQLITE_STATIC);
        sqlite3_bind_int64(q, 2, user_id);
        int rc = sqlite3_step(q);
        if (rc == SQLITE_CONSTRAINT_FOREIGNKEY)
            r = IMP_ERR_NO_SUCH_USER; /* the room insert is undone with it */
        else if (rc != SQLITE_DONE)
            r = db_fail(s, "member insert");
        st_put(s, ST_MEMBER_INSERT, q);
    }
    r = op_end(s, r);
    if (r == 0 && created != NULL)
        *created = made;
    return r;
}

int ims_store_room_leave(ims_store *s, const char *room, int64_t user_id)
{
    if (s == NULL || room == NULL)
        return IMP_ERR_INVAL;
    if (!name_ok(room))
        return IMP_ERR_NO_SUCH_ROOM;
    int r = op_begin(s);
    if (r != 0)
        return r;
    int e = room_exists(s, room);
    if (e < 0)
        r = e;
    else if (e == 0)
        r = IMP_ERR_NO_SUCH_ROOM;
    if (r == 0) {
        sqlite3_stmt *q = st_get(s, ST_MEMBER_DELETE);
        if (q == NULL)
            return op_end(s, IMP_ERR_STORAGE);
        sqlite3_bind_text(q, 1, room, -1, SQLITE_STATIC);
        sqlite3_bind_int64(q, 2, user_id);
        if (sqlite3_step(q) != SQLITE_DONE)
            r = db_fail(s, "member delete");
        else if (sqlite3_changes(s->db) == 0)
            r = IMP_ERR_NOT_MEMBER;
        st_put(s, ST_MEMBER_DELETE, q);
    }
    return op_end(s, r);
}

int ims_store_room_is_member(ims_store *s, const char *room, int64_t user_id)
{
    if (s == NULL || room == NULL)
        return IMP_ERR_INVAL;
    if (!name_ok(room))
        return IMP_ERR_NO_SUCH_ROOM;
    sqlite3_stmt *q = st_get(s, ST_MEMBER_CHECK);
    if (q == NULL)
        return IMP_ERR_STORAGE;
    sqlite3_bind_text(q, 1, room, -1, SQLITE_STATIC);
    sqlite3_bind_int64(q, 2, user_id);
    int r;
    if (sqlite3_step(q) == SQLITE_ROW) {
        if (sqlite3_column_type(q, 0) == SQLITE_NULL)
            r = IMP_ERR_NO_SUCH_ROOM;
        else
            r = sqlite3_column_type(q, 1) != SQLITE_NULL;
    } else {
        r = db_fail(s, "member check");
    }
    st_put(s, ST_MEMBER_CHECK, q);
    return r;
}

int ims_store_room_member_ids(ims_store *s, const char *room, int64_t **ids, size_t *n)
{
    if (s == NULL || room == NULL || ids == NULL || n == NULL)
        return IMP_ERR_INVAL;
    *ids = NULL;
    *n = 0;
    if (!name_ok(room))
        return IMP_ERR_NO_SUCH_ROOM;
    int e = room_exists(s, room);
    if (e <= 0)
        return e < 0 ? e : IMP_ERR_NO_SUCH_ROOM;
    return collect_ids(s, ST_MEMBER_IDS, room, ids, n);
}

/* Walks the text column 0 of a statement whose parameters are bound, through cb. */
static int walk_names(ims_store *s, int id, sqlite3_stmt *q, int (*cb)(void *ud, const char *name),
                      void *ud)
{
    int n = 0, rc;
    char name[IMS_NAME_MAX + 1];
    while ((rc = sqlite3_step(q)) == SQLITE_ROW) {
        copy_col_text(name, sizeof name, q, 0);
        n++;
        if (cb(ud, name) != 0) {
            rc = SQLITE_DONE;
            break;
        }
    }
    if (rc != SQLITE_DONE)
        n = db_fail(s, st_sql[id]);
    st_put(s, id, q);
    return n;
}

int ims_store_room_members(ims_store *s, const char *room, const char *after, int limit,
                           int (*cb)(void *ud, const char *name), void *ud)
{
    if (s == NULL || room == NULL || cb == NULL || limit < 0)
        return IMP_ERR_INVAL;
    if (!name_ok(room))
        return IMP_ERR_NO_SUCH_ROOM;
    int e = room_exists(s, room);
    if (e <= 0)
        return e < 0 ? e : IMP_ERR_NO_SUCH_ROOM;
    if (limit == 0)
        return 0;
    sqlite3_stmt *q = st_get(s, ST_MEMBER_NAMES);
    if (q == NULL)
        return IMP_ERR_STORAGE;
    sqlite3_bind_text(q, 1, room, -1, SQLITE_STATIC);
    sqlite3_bind_text(q, 2, after ? after : "", -1, SQLITE_STATIC);
    sqlite3_bind_int(q, 3, limit);
    return walk_names(s, ST_MEMBER_NAMES, q, cb, ud);
}

int ims_store_room_list(ims_store *s, const char *after, int limit,
                        int (*cb)(void *ud, const char *name), void *ud)
{
    if (s == NULL || cb == NULL || limit < 0)
        return IMP_ERR_INVAL;
    if (limit == 0)
        return 0;
    sqlite3_stmt *q = st_get(s, ST_ROOM_LIST);
    if (q == NULL)
        return IMP_ERR_STORAGE;
    sqlite3_bind_text(q, 1, after ? after : "", -1, SQLITE_STATIC);
    sqlite3_bind_int(q, 2, limit);
    return walk_names(s, ST_ROOM_LIST, q, cb, ud);
}

int ims_store_user_rooms(ims_store *s, int64_t user_id, int (*cb)(void *ud, const char *name),
                         void *ud)
{
    if (s == NULL || cb == NULL)
        return IMP_ERR_INVAL;
    sqlite3_stmt *q = st_get(s, ST_USER_ROOMS);
    if (q == NULL)
        return IMP_ERR_STORAGE;
    sqlite3_bind_int64(q, 1, user_id);
    return walk_names(s, ST_USER_ROOMS, q, cb, ud);
}

int ims_store_room_history(ims_store *s, const char *room, int64_t before_id, int limit,
                           int (*cb)(void *ud, const ims_message *m), void *ud, int *more)
{
    if (s == NULL || room == NULL || cb == NULL || limit < 0 || before_id < 0)
        return IMP_ERR_INVAL;
    if (more != NULL)
        *more = 0;
    if (!name_ok(room))
        return IMP_ERR_NO_SUCH_ROOM;
    int e = room_exists(s, room);
    if (e <= 0)
        return e < 0 ? e : IMP_ERR_NO_SUCH_ROOM;
    /* IMP-DELIV-001: only what is on disk (fsync_thread: a committed batch may still wait for
     * its fsync; its messages are neither ACKed nor delivered yet, so not history either) */
    int64_t bound = before_id == 0 ? INT64_MAX : before_id;
    int64_t durable = ims_store_durable_msg_id(s);
    if (durable < INT64_MAX && bound > durable + 1)
        bound = durable + 1;
    sqlite3_stmt *q = st_get(s, ST_HISTORY);
    if (q == NULL)
        return IMP_ERR_STORAGE;
    sqlite3_bind_text(q, 1, room, -1, SQLITE_STATIC);
    sqlite3_bind_int64(q, 2, bound);
    sqlite3_bind_int64(q, 3, (int64_t)limit + 1); /* one more: is there an older one? */
    int n = 0, rc;
    ims_message m;
    while ((rc = sqlite3_step(q)) == SQLITE_ROW) {
        if (n == limit) {
            if (more != NULL)
                *more = 1;
            rc = SQLITE_DONE;
            break;
        }
        row_to_msg(q, &m);
        n++;
        if (cb(ud, &m) != 0) {
            rc = SQLITE_DONE;
            break;
        }
    }
    if (rc != SQLITE_DONE)
        n = db_fail(s, "history");
    st_put(s, ST_HISTORY, q);
    return n;
}

int ims_store_room_prune(ims_store *s, const char *room, int history_max)
{
    if (s == NULL || room == NULL || history_max < 0)
        return IMP_ERR_INVAL;
    if (!name_ok(room))
        return IMP_ERR_NO_SUCH_ROOM;
    struct hcount *known = *hc_slot(s, room);
    if (known != NULL && known->n <= history_max)
        return 0; /* within history_max (history lengths, above); the room exists */
    int64_t excess = known != NULL ? known->n - history_max : -1;
    int r = op_begin(s);
    if (r != 0)
        return r;
    int e = room_exists(s, room);
    if (e < 0)
        r = e;
    else if (e == 0)
        r = IMP_ERR_NO_SUCH_ROOM;
    size_t base = s->ids_n;
    if (r == 0) {
        /* Everything older than the newest history_max leaves the history: the excess oldest
         * when the length is known, else what the index has after the newest history_max. */
        int st = excess >= 0 ? ST_HISTORY_OLDEST : ST_HISTORY_EXCESS;
        sqlite3_stmt *q = st_get(s, st);
        if (q == NULL)
            return op_end(s, IMP_ERR_STORAGE);
        sqlite3_bind_text(q, 1, room, -1, SQLITE_STATIC);
        sqlite3_bind_int64(q, 2, excess >= 0 ? excess : history_max);
        int rc = SQLITE_DONE;
        while (r == 0 && (rc = sqlite3_step(q)) == SQLITE_ROW)
            r = ids_push(s, sqlite3_column_int64(q, 0));
        if (r == 0 && rc != SQLITE_DONE)
            r = db_fail(s, "history prune");
        st_put(s, st, q);
    }
    for (size_t i = base; r == 0 && i < s->ids_n; i++) {
        sqlite3_stmt *q = st_get(s, ST_HISTORY_DROP);
        if (q == NULL) {
            r = IMP_ERR_STORAGE;
            break;
        }
        sqlite3_bind_int64(q, 1, s->ids[i]);
        if (sqlite3_step(q) != SQLITE_DONE)
            r = db_fail(s, "history drop");
        st_put(s, ST_HISTORY_DROP, q);
        /* Still queued for a member who has not acknowledged it: kept for that queue. */
        if (r == 0)
            r = delete_if_unused(s, s->ids[i]);
    }
    /* the length left: history_max when something was pruned, else counted once */
    int64_t len = history_max;
    if (r == 0 && s->ids_n == base) {
        sqlite3_stmt *q = st_get(s, ST_HISTORY_COUNT);
        if (q == NULL) {
            r = IMP_ERR_STORAGE;
        } else {
            sqlite3_bind_text(q, 1, room, -1, SQLITE_STATIC);
            if (sqlite3_step(q) == SQLITE_ROW)
                len = sqlite3_column_int64(q, 0);
            else
                r = db_fail(s, "history count");
            st_put(s, ST_HISTORY_COUNT, q);
        }
    }
    s->ids_n = base;
    r = op_end(s, r);
    if (r == 0)
        hc_set(s, room, len);
    return r;
}
