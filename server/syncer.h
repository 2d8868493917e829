/* imd — the syncer: the fsync of the group commit off the event-loop thread (issue 3: no
 * event-loop stall over 10 ms; IMP-DELIV-001 still holds: an ACK waits for its fsync).
 *
 * One thread. The loop commits a batch (ims_store_commit: written into SQLite's log, not
 * synced), then asks for it with ims_syncer_request(gen). The thread fdatasync()s the log
 * (ims_store_sync_fd) — one fsync for every batch committed before it started, so the loop
 * keeps committing while a sync runs and the next sync takes all of those at once — and wakes
 * the loop (the wake callback, called on the syncer's thread), which reads how far it got with
 * ims_syncer_poll and tells the store (ims_store_synced), then sends those batches' ACKs.
 *
 * The same thread checkpoints the log into the database through its own SQLite connection
 * (PRAGMA wal_checkpoint(PASSIVE): it never waits for the loop's transaction), at most every
 * IMS_SYNCER_CKPT_MS while commits come in, so the loop's connection does not do it inline.
 *
 * A failed fdatasync is reported, not retried as a success: the loop refuses (STORAGE) every
 * batch it covered, and the senders retry (their CLIENT_MSG_IDs make that safe). */
#ifndef IMS_SYNCER_H
#define IMS_SYNCER_H

#include <stddef.h>
#include <stdint.h>

typedef struct ims_syncer ims_syncer;

enum { IMS_SYNCER_CKPT_MS = 200 };

/* fd: the log to fdatasync (not owned); db_path: the database for the checkpoint connection
 * (NULL: no checkpoints); wake(ud) is called on the syncer's thread after each sync. NULL on
 * failure (message in err). */
ims_syncer *ims_syncer_new(int fd, const char *db_path, void (*wake)(void *ud), void *ud, char *err,
                           size_t errlen);
/* Loop thread: batch gen is committed; sync it (no-op when already asked). */
void ims_syncer_request(ims_syncer *sy, uint64_t gen);
/* Loop thread: the highest batch synced so far (*gen), and how many fsyncs failed since the
 * last poll (a failure covers every batch up to the gen it returns: not on disk as far as
 * anyone can tell). */
int ims_syncer_poll(ims_syncer *sy, uint64_t *gen);
/* Statistics: fsyncs done, checkpoints run, frames in the log at the last checkpoint. */
void ims_syncer_stats(ims_syncer *sy, uint64_t *syncs, uint64_t *checkpoints, uint64_t *log_frames);
/* Syncs what was asked, stops the thread, closes the checkpoint connection. */
void ims_syncer_free(ims_syncer *sy);

#endif
