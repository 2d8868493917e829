/* imd — the store: one narrow interface to durable state (SPEC.md section 9), so that a
 * PostgreSQL backend can follow the SQLite one (store_sqlite.c).
 *
 * Threading: one thread (the event loop) uses a store. Nothing here does network I/O.
 *
 * Group commit (IMP-DELIV-001): writes are made inside a batch. ims_store_begin() opens one
 * (a no-op when one is open); the server calls ims_store_commit() once per event-loop turn and
 * only then sends the ACKs and DELIVERs of that turn. With synchronous=FULL the commit is the
 * fsync. Reads see the batch's own uncommitted writes.
 *
 * Names: callers pass user and room names already folded (imp_name_fold) — the store compares
 * bytes. Display names are the folded names (IMP-TEXT-002 folding is ASCII lower case).
 *
 * Errors: functions return 0 (IMP_ERR_NONE) or a negative imp_err: IMP_ERR_STORAGE for any
 * database failure (the message is logged through the log hook), IMP_ERR_USER_EXISTS,
 * IMP_ERR_NO_SUCH_USER, IMP_ERR_NO_SUCH_ROOM as documented per function. A function that
 * fails leaves the batch usable: the failed statement's partial effects are undone
 * (SAVEPOINT per operation).
 *
 * Outside a batch, every writing function runs as its own transaction (BEGIN IMMEDIATE ...
 * COMMIT, one fsync each with sync_full): all of its statements or none. Reads run in
 * autocommit mode.
 *
 * Callbacks may call the store again (reads and writes): a statement in use by an outer call is
 * not reused (a fresh one is prepared for the nested call).
 *
 * limit arguments: < 0 is IMP_ERR_INVAL, 0 passes nothing.
 */
#ifndef IMS_STORE_H
#define IMS_STORE_H

#include <stddef.h>
#include <stdint.h>

#include <imp/imp.h>

typedef struct ims_store ims_store;

typedef struct ims_store_options {
    const char *path; /* database file; ":memory:" for tests and the fuzz target */
    int sync_full;    /* 1: journal_mode=WAL, synchronous=FULL (default); 0: synchronous=OFF
                         (tests and fuzzing only) */
    void (*log)(void *ud, const char *msg); /* error details; NULL: silent */
    void *log_ud;
    int full_check;   /* 1: the full check (below) at every open, not only after an unclean
                         shutdown (imd: startup_full_check, default yes) */
    int fsync_thread; /* 1 (imd: fsync_thread, default yes): a batch's COMMIT does not fsync; the
                         caller syncs off its thread (see "Syncing off the loop" below). Only
                         for a file database with sync_full; else ignored. */
} ims_store_options;

/* Opens (creating the schema on first use) and checks the database; NULL on failure with a
 * message in err (always NUL-terminated).
 *
 * A file database has a marker next to it while it is open, "<path>-running" (made, and
 * fsync'd, before the database file is touched; removed by a clean ims_store_close). When the
 * marker is there at open, the last process did not close the store (crash, kill -9, power
 * loss): the open then runs the full ims_store_integrity_check (PRAGMA integrity_check, which
 * also compares every index with its table, foreign keys, the queue invariant) instead of
 * PRAGMA quick_check. An existing empty database file without the marker (truncated or
 * replaced behind imd's back) is refused instead of becoming a new, empty store. The store that
 * made or found the marker holds an flock on it while open; a second process on the same files
 * (an admin command while imd runs) finds it locked: it runs the full check, and leaves the
 * marker on close (the holder removes it).
 *
 * The committed mark (IMP-DELIV-007, no silent loss): after every commit that returned (with
 * sync_full: after its fsync) the store writes into the marker one fixed-size record (magic,
 * version, the highest msg_id and user id ever given, checksum) with a single pwrite at offset
 * 0, not synced. Both values never go backwards (AUTOINCREMENT). When the marker is there at
 * open and its record checks out, a database whose values are lower has lost committed
 * transactions (a write-ahead log cut short, or the database restored from an older copy
 * without its log, or gone): the open is refused, files untouched, with a message naming the
 * database, the marker, both marks and what to do (restore from backup, or remove the marker to
 * accept the loss). A record that does not check out (torn, garbage) is ignored and logged; an
 * empty marker (no commit yet, or an older imd's) means nothing. Every value the record ever
 * holds was durable before it was written, so a crash (kill -9, or power loss with
 * synchronous=FULL) cannot cause a refusal: an unsynced record is at most older than the
 * database. With sync_full = 0 no record is written.
 *
 * Before SQLite opens (and replays) it, a non-empty write-ahead log "<path>-wal" is scanned
 * (store_wal.h; IMP-DELIV-007, no silent loss). SQLite ends the log at the first frame whose
 * checksum fails and takes the rest for a crash before those commits; the open is refused
 * (files untouched, a message naming the log, the frame and what was found, and what to do:
 * restore from backup, or move the log away to accept the loss) when that would drop
 * transactions whose commit had returned: the log's header is damaged while committed frames
 * follow it, or at least two commit frames check out after the damaged frame. Limits: a log
 * truncated (the frames are gone) and damage inside its last transaction cannot be told from
 * a crash during that transaction without a record outside the log: that record is the
 * committed mark above (refused when the marker holds the last commits' mark). */
ims_store *ims_store_open(const ims_store_options *opt, char *err, size_t errlen);
/* Commits an open batch, then closes. */
void ims_store_close(ims_store *s);

/* BEGIN IMMEDIATE (takes the write lock: IMP_ERR_STORAGE when another process holds it longer
 * than the busy timeout). */
int ims_store_begin(ims_store *s);
/* No-op (0) when no batch is open. On failure the batch is rolled back (its writes are lost),
 * no batch is open any more and IMP_ERR_STORAGE is returned. */
int ims_store_commit(ims_store *s);
int ims_store_in_batch(const ims_store *s);

/* ---- syncing off the loop (fsync_thread) ----------------------------------------------------
 *
 * IMP-DELIV-001 asks that an ACK means "committed and on disk". With fsync_thread the store
 * runs SQLite's WAL with synchronous=NORMAL: ims_store_commit() writes the batch into the log
 * (the page cache) without an fsync, and counts it: ims_store_commit_gen() is the number of
 * batches committed so far. Another thread (server/syncer.c) then fdatasync()s the log through
 * ims_store_sync_fd() — one fsync covers every batch written before it started — and the loop
 * thread reports it with ims_store_synced(gen): only then are that batch's ACKs sent, its
 * messages delivered (ims_store_durable_msg_id()) and its committed mark written into the
 * marker (the mark is never ahead of what is on disk). Operations outside a batch (admin
 * commands, imd's start-up) still sync inline before they return; so does ims_store_sync().
 * Checkpoints run on the syncer's own connection (SQLite's automatic checkpoint on this
 * connection stays as a bound: at IMS_STORE_AUTOCKPT_ASYNC pages of log).
 *
 * Without fsync_thread (or for ":memory:", or sync_full = 0) every commit is synced inline
 * (synchronous=FULL) and commit_gen == synced_gen after each commit. */
#define IMS_STORE_AUTOCKPT_ASYNC 16384
/* The log's descriptor to fdatasync (owned by the store), or -1 when commits sync inline. */
int ims_store_sync_fd(const ims_store *s);
/* The database's path (for the syncer's checkpoint connection). */
const char *ims_store_path(const ims_store *s);
uint64_t ims_store_commit_gen(const ims_store *s);
/* The highest batch known to be on disk. */
uint64_t ims_store_synced_gen(const ims_store *s);
/* Called on the store's thread after an fdatasync of the log that started when batch gen had
 * been committed: batches up to gen are on disk. Writes their committed mark into the marker. */
void ims_store_synced(ims_store *s, uint64_t gen);
/* fdatasync of the log now, on this thread (shutdown): every committed batch is on disk after
 * it. 0, or IMP_ERR_STORAGE when the fsync failed. A no-op when commits sync inline. */
int ims_store_sync(ims_store *s);
/* The highest msg_id on disk: a message above it was committed but is not yet synced and must
 * not be delivered (INT64_MAX when commits sync inline). */
int64_t ims_store_durable_msg_id(const ims_store *s);

/* Queue reads answered from memory (the store's cache of just-stored direct messages) rather
 * than the database, since open: a measure for tests and diagnostics. */
uint64_t ims_store_queue_cache_hits(const ims_store *s);
/* PRAGMA integrity_check: 0 when "ok", IMP_ERR_STORAGE otherwise. Also checks foreign keys and
 * the queue invariant (each user's queue entries hold exactly the seqs acked_seq+1..last_seq,
 * and the first may also hold acknowledged ones: packed entries), and that every packed entry
 * decodes. */
int ims_store_integrity_check(ims_store *s, char *err, size_t errlen);
/* How long a statement waits for another process's lock (default 5000 ms). */
int ims_store_set_busy_timeout(ims_store *s, int ms);

/* ---- users -------------------------------------------------------------------------------- */

typedef struct ims_user {
    int64_t id;
    char name[33];  /* folded, NUL-terminated */
    char hash[128]; /* crypto_pwhash_str output, NUL-terminated */
    int admin;
    uint64_t last_seq;  /* highest sequence number assigned (IMP-DELIV-002) */
    uint64_t acked_seq; /* highest acknowledged (IMP-DELIV-003) */
    int64_t created_ms;
} ims_user;

/* IMP_ERR_USER_EXISTS when the name is taken. *id_out may be NULL. */
int ims_store_user_create(ims_store *s, const char *name, const char *hash, int admin,
                          int64_t now_ms, int64_t *id_out);
/* IMP_ERR_NO_SUCH_USER when absent (here and in set_hash, set_admin, delete, token_add,
 * queue_count, queue_ack, room_join). IMP_ERR_INVAL for NULL arguments, a name that is empty or
 * longer than 32 bytes on create, a hash of 128 bytes or more. */
int ims_store_user_get(ims_store *s, const char *name, ims_user *u);
int ims_store_user_get_id(ims_store *s, int64_t id, ims_user *u);
int ims_store_user_set_hash(ims_store *s, int64_t id, const char *hash);
int ims_store_user_set_admin(ims_store *s, int64_t id, int admin);
/* Deletes the user, their queue, tokens, memberships and dedupe entries. */
int ims_store_user_delete(ims_store *s, int64_t id);
/* Users in name order with name > after ("" = from the start), at most limit; the callback
 * returns non-zero to stop early. Returns the number of users passed, or < 0. */
int ims_store_user_list(ims_store *s, const char *after, int limit,
                        int (*cb)(void *ud, const ims_user *u), void *ud);
int ims_store_user_count(ims_store *s, int64_t *count);

/* ---- resume tokens (only a hash of the token is stored) ------------------------------------ */

/* token_hash: 32 bytes (crypto_generichash of the token). */
int ims_store_token_add(ims_store *s, int64_t user_id, const uint8_t token_hash[32],
                        int64_t expires_ms);
/* IMP_ERR_TOKEN_INVALID when unknown or expired at now_ms. */
int ims_store_token_check(ims_store *s, const uint8_t token_hash[32], int64_t now_ms,
                          int64_t *user_id);
int ims_store_token_delete(ims_store *s, const uint8_t token_hash[32]);
/* Removes expired tokens; returns the number removed or < 0. */
int ims_store_token_expire(ims_store *s, int64_t now_ms);

/* ---- messages and per-user queues (IMP-DELIV-001..008) ------------------------------------ */

typedef struct ims_message {
    int64_t msg_id; /* server message id: global, ascending (IMP-DELIV-006 room order) */
    int64_t sender_id;
    char sender[33];        /* sender name (folded) */
    int target_kind;        /* 1 user, 2 room, 3 broadcast (TARGET_KIND) */
    char target[33];        /* user or room name, "" for broadcast */
    int64_t ts_ms;          /* server timestamp */
    const uint8_t *headers; /* HEADERS field value (the list encoding), may be NULL */
    size_t headers_len;
    const uint8_t *body;
    size_t body_len;
    uint64_t seq; /* per-recipient sequence (queue reads only) */
} ims_message;

/* Dedupe (IMP-DELIV-005): the message a sender already stored under client_msg_id.
 * Returns 1 and fills *msg_id (and, when not NULL, *digest: the 32-byte crypto_generichash of
 * target_kind|target|headers|body computed at put time, to detect ID_CONFLICT), 0 if none. */
int ims_store_dedupe_get(ims_store *s, int64_t sender_id, const char *client_msg_id,
                         int64_t *msg_id, uint8_t digest[32]);

/* Stores m once (m->msg_id, m->seq ignored) and queues it for every recipient id (duplicates in
 * the list are queued once), each under that user's next sequence number (IMP-DELIV-002,
 * IMP-DELIV-008: the fan-out is part of the same batch). client_msg_id NULL or "" = no dedupe
 * entry; digest as in ims_store_dedupe_get (may be NULL with no client_msg_id). Room messages
 * are also kept as room history. On success *msg_id_out is the new id and, when seqs is not
 * NULL, seqs[i] the sequence number given to recipients[i]. */
/* IMP_ERR_NO_SUCH_USER when a recipient does not exist, IMP_ERR_ID_CONFLICT when client_msg_id
 * is already stored for this sender (check ims_store_dedupe_get first), IMP_ERR_INVAL when
 * client_msg_id is given without a digest; nothing is stored then.
 * Packed entries (schema version 4): in a batch, a direct message kept inline waits in memory
 * and is written, with the batch's other direct messages for the same recipient as one queue
 * entry, before the next operation that needs the queue table or takes a SAVEPOINT, or at
 * COMMIT. When that write fails, the whole batch is rolled back (that operation or the COMMIT
 * returns IMP_ERR_STORAGE; nothing of the batch is kept, so nothing of it may be acknowledged). */
int ims_store_message_put(ims_store *s, const ims_message *m, const char *client_msg_id,
                          const uint8_t digest[32], const int64_t *recipients, size_t n,
                          int64_t *msg_id_out, uint64_t *seqs);

/* Queued messages of a user with seq > after_seq, in seq order, at most limit; views in the
 * callback's message are valid during the call only. Returns the number passed, or < 0. */
int ims_store_queue_read(ims_store *s, int64_t user_id, uint64_t after_seq, int limit,
                         int (*cb)(void *ud, const ims_message *m), void *ud);
/* Unacknowledged queued messages of a user (the offline quota counts these): last_seq -
 * acked_seq (O(1)). IMP_ERR_NO_SUCH_USER when absent. */
int ims_store_queue_count(ims_store *s, int64_t user_id, int64_t *count);
/* DELIVERED(upto) (IMP-DELIV-003): acked = max(acked, upto), deletes queue entries <= it.
 * IMP_ERR_BAD_REQUEST when upto > the user's last_seq. *acked_out (may be NULL) is the new
 * acked mark. */
int ims_store_queue_ack(ims_store *s, int64_t user_id, uint64_t upto, uint64_t *acked_out);

/* ---- rooms -------------------------------------------------------------------------------- */

/* Creates the room if needed (*created = 1 then) and adds the member (idempotent). */
int ims_store_room_join(ims_store *s, const char *room, int64_t user_id, int64_t now_ms,
                        int *created);
/* IMP_ERR_NO_SUCH_ROOM, IMP_ERR_NOT_MEMBER when not a member. */
int ims_store_room_leave(ims_store *s, const char *room, int64_t user_id);
/* 1 member, 0 not (IMP_ERR_NO_SUCH_ROOM when the room does not exist). */
int ims_store_room_is_member(ims_store *s, const char *room, int64_t user_id);
/* Member ids of a room (for fan-out): *ids is malloc'd by the store, freed by the caller. */
int ims_store_room_member_ids(ims_store *s, const char *room, int64_t **ids, size_t *n);
/* Member names in name order after `after`, at most limit. Returns the number passed or < 0. */
int ims_store_room_members(ims_store *s, const char *room, const char *after, int limit,
                           int (*cb)(void *ud, const char *name), void *ud);
/* Room names in order after `after`, at most limit. */
int ims_store_room_list(ims_store *s, const char *after, int limit,
                        int (*cb)(void *ud, const char *name), void *ud);
/* Rooms a user belongs to. */
int ims_store_user_rooms(ims_store *s, int64_t user_id, int (*cb)(void *ud, const char *name),
                         void *ud);
/* Room history, newest first, msg_id < before_id (0 = no bound), at most limit; *more = 1 when
 * older ones exist. Only messages at or below ims_store_durable_msg_id() (synced). Keeps at most
 * history_max messages per room: older ones are pruned by ims_store_room_prune. */
int ims_store_room_history(ims_store *s, const char *room, int64_t before_id, int limit,
                           int (*cb)(void *ud, const ims_message *m), void *ud, int *more);
/* Returns 0 (IMP_ERR_NO_SUCH_ROOM when absent). Pruned messages still queued for someone stay
 * readable through their queues. */
int ims_store_room_prune(ims_store *s, const char *room, int history_max);

/* All user ids (broadcast fan-out), ascending. *ids malloc'd (NULL when *n is 0), freed by the
 * caller. */
int ims_store_all_user_ids(ims_store *s, int64_t **ids, size_t *n);

/* ---- additions: maintenance and metrics ----------------------------------------------------- */

/* Stored messages (still queued for someone or kept as room history). A message is deleted once
 * no queue holds it and it is not in its room's kept history (on ack, prune, user delete). */
int ims_store_message_count(ims_store *s, int64_t *count);
/* Removes dedupe entries of messages with ts_ms < before_ms, the oldest first, fewer than
 * IMS_DEDUPE_EXPIRE_BATCH of them (those below the timestamp of the BATCH-th oldest; all
 * entries of one timestamp when more than a batch share it): a range of the index on ts_ms,
 * bounded work per call; call again while it returns > 0. Returns the number removed or < 0. After
 * that, a retried SEND with such a CLIENT_MSG_ID is stored again (IMP-DELIV-005 holds for retries
 * within the kept window, dedupe_window_ms). */
#define IMS_DEDUPE_EXPIRE_BATCH 2000
int ims_store_dedupe_expire(ims_store *s, int64_t before_ms);

#endif
