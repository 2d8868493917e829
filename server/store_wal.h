/* imd — a scan of a SQLite write-ahead log before SQLite replays it (store.h, ims_store_open).
 *
 * SQLite's WAL recovery replays the frames of the log up to the last commit frame of the valid
 * prefix: the header's checksum must hold, and every frame must carry the header's salts and a
 * checksum chained from the previous one. The first frame that fails ends the log, and SQLite
 * takes the rest for a transaction that a crash interrupted. A damaged byte in the middle of the
 * log therefore drops, without any error, every transaction committed after it
 * (IMP-DELIV-007: no silent loss). This scan finds the cases that a crash cannot explain:
 *
 *  - rule A: the header fails its checksum (or its magic number or page size is not valid), yet
 *    frames follow that carry its salts, check out locally (each frame's checksum computed from
 *    the stored checksum of the frame before it, or of the header) and include a commit frame:
 *    SQLite would ignore the whole log.
 *  - rule B: after the end of the valid prefix, at least two commit frames with the header's
 *    salts check out locally: at least one transaction whose commit had returned is dropped.
 *
 * Limits: a log truncated (the frames are simply gone) and a damaged frame inside the last
 * transaction look exactly like a crash during that transaction and are accepted; telling them
 * apart needs a record kept outside the log. The rules assume the writer synced its commits
 * (synchronous=FULL, imd's default): after a power loss with synchronous=OFF the log can
 * legitimately look like rule B (and acknowledged transactions are then really lost).
 *
 * Frames and offsets are those of the documented WAL file format
 * (https://www.sqlite.org/fileformat2.html, "WAL file format"); the code is written from it.
 */
#ifndef IMS_STORE_WAL_H
#define IMS_STORE_WAL_H

#include <stddef.h>
#include <stdint.h>

enum {
    IMS_WAL_OK = 0,     /* nothing to report (no log, empty, intact, or a crash's torn tail) */
    IMS_WAL_REFUSE = 1, /* committed transactions would be dropped: do not open */
};

typedef struct ims_wal_scan_result {
    int header_ok;          /* magic, page size and header checksum valid */
    uint32_t page_size;     /* from the header (0 when not valid) */
    uint64_t frames;        /* whole frames in the file */
    uint64_t valid_frames;  /* frames of the valid prefix (SQLite replays up to its last commit) */
    uint64_t valid_commits; /* commit frames in the valid prefix */
    uint64_t first_bad;     /* 1-based frame that ends the valid prefix; 0: none (header: 0) */
    uint64_t lost_commits;  /* commit frames after the end that check out locally */
    uint64_t lost_first;    /* the first of them (1-based frame number), 0 if none */
    char rule;              /* 'A', 'B', or 0 */
} ims_wal_scan_result;

/* Scans the log at wal_path (the file is only read). IMS_WAL_OK when it does not exist or is
 * empty. IMS_WAL_REFUSE with a message in msg (naming the file, the frame and what was found,
 * and what the operator can do) when rule A or B holds, or when the file cannot be read. r may
 * be NULL. */
int ims_wal_scan(const char *wal_path, ims_wal_scan_result *r, char *msg, size_t msglen);

#endif
