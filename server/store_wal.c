/* imd — the scan of a SQLite write-ahead log before SQLite replays it (store_wal.h).
 *
 * Written from the documented file format (https://www.sqlite.org/fileformat2.html, section
 * "WAL file format"); no code from SQLite.
 *
 * Layout: a 32-byte header (magic 0x377f0682 or 0x377f0683, format version, page size,
 * checkpoint sequence, salt-1, salt-2, checksum-1, checksum-2 over the first 24 bytes), then
 * frames of a 24-byte header (page number, database size in pages for a commit frame or 0,
 * salt-1, salt-2, checksum-1, checksum-2) and one page. A frame's checksum runs over the first 8
 * bytes of its header and its page, seeded with the previous frame's checksum (the header's for
 * the first frame). All integers are big-endian; the checksum reads the data as 32-bit words in
 * big-endian order when the magic's low bit is 1, little-endian otherwise. */
#include "store_wal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define WAL_MAGIC 0x377f0682u
#define WAL_HDR 32
#define FRAME_HDR 24
#define PAGE_MIN 512u
#define PAGE_MAX 65536u

static uint32_t get_be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

static uint32_t get_le32(const uint8_t *p)
{
    return (uint32_t)p[3] << 24 | (uint32_t)p[2] << 16 | (uint32_t)p[1] << 8 | (uint32_t)p[0];
}

/* The format's checksum over n bytes (a multiple of 8), continuing from s. */
static void wal_sum(int big, const uint8_t *p, size_t n, uint32_t s[2])
{
    uint32_t s0 = s[0], s1 = s[1];
    for (size_t i = 0; i + 8 <= n; i += 8) {
        uint32_t x0 = big ? get_be32(p + i) : get_le32(p + i);
        uint32_t x1 = big ? get_be32(p + i + 4) : get_le32(p + i + 4);
        s0 += x0 + s1;
        s1 += x1 + s0;
    }
    s[0] = s0;
    s[1] = s1;
}

static int page_size_ok(uint32_t ps)
{
    return ps >= PAGE_MIN && ps <= PAGE_MAX && (ps & (ps - 1)) == 0;
}

static int read_at(int fd, uint8_t *buf, size_t n, uint64_t off)
{
    size_t got = 0;
    while (got < n) {
        ssize_t r = pread(fd, buf + got, n - got, (off_t)(off + got));
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        got += (size_t)r;
    }
    return 0;
}

/* One walk over the frames with a given reading of the header.
 *
 * chain_ok on entry: the header is valid; the walk then follows SQLite's recovery: frames are
 * valid while they carry salt and their checksum chain holds; the first that does not ends the
 * valid prefix. Every frame is also checked locally (its checksum seeded with the stored
 * checksum of the frame before it, or seed for the first frame): while the chain holds the two
 * coincide. After the end (or from the start when the header is not valid), each commit frame
 * that carries salt and checks out locally is counted in lost_commits. */
typedef struct walk {
    int big;
    uint32_t ps;
    uint8_t salt[8];
    uint32_t seed[2];
    int chain_ok;
} walk;

static int walk_frames(int fd, uint64_t size, const walk *w, uint8_t *buf, ims_wal_scan_result *r)
{
    size_t fsz = FRAME_HDR + (size_t)w->ps;
    uint64_t n = size >= WAL_HDR ? (size - WAL_HDR) / fsz : 0;
    uint32_t prev[2] = {w->seed[0], w->seed[1]};
    int chain = w->chain_ok;
    r->frames = n;
    r->valid_frames = r->valid_commits = r->first_bad = r->lost_commits = r->lost_first = 0;
    for (uint64_t i = 1; i <= n; i++) {
        if (read_at(fd, buf, fsz, WAL_HDR + (i - 1) * fsz) != 0)
            return -1;
        uint32_t s[2] = {prev[0], prev[1]};
        wal_sum(w->big, buf, 8, s);
        wal_sum(w->big, buf + FRAME_HDR, w->ps, s);
        int ok = get_be32(buf) != 0 && memcmp(buf + 8, w->salt, 8) == 0 &&
                 s[0] == get_be32(buf + 16) && s[1] == get_be32(buf + 20);
        int commit = get_be32(buf + 4) != 0;
        if (chain && ok) {
            r->valid_frames++;
            r->valid_commits += commit;
        } else {
            if (chain) {
                chain = 0;
                r->first_bad = i;
            }
            if (ok && commit && r->lost_commits++ == 0)
                r->lost_first = i;
        }
        prev[0] = get_be32(buf + 16);
        prev[1] = get_be32(buf + 20);
    }
    return 0;
}

static int scan_once(int fd, uint64_t size, ims_wal_scan_result *r, uint8_t *buf)
{
    memset(r, 0, sizeof *r);
    uint8_t h[WAL_HDR];
    if (size < WAL_HDR) /* SQLite ignores a log without a whole header: nothing was committed */
        return 0;
    if (read_at(fd, h, WAL_HDR, 0) != 0)
        return -1;
    uint32_t magic = get_be32(h), ps = get_be32(h + 8);
    walk w;
    memset(&w, 0, sizeof w);
    w.big = (int)(magic & 1u);
    memcpy(w.salt, h + 16, 8);
    w.seed[0] = get_be32(h + 24);
    w.seed[1] = get_be32(h + 28);
    if ((magic & ~1u) == WAL_MAGIC && page_size_ok(ps)) {
        uint32_t s[2] = {0, 0};
        wal_sum(w.big, h, 24, s);
        r->header_ok = s[0] == w.seed[0] && s[1] == w.seed[1];
    }
    if (r->header_ok) {
        r->page_size = ps;
        w.ps = ps;
        w.chain_ok = 1;
        if (walk_frames(fd, size, &w, buf, r) != 0)
            return -1;
        /* Rule B. A torn write after a power loss only damages the last transaction: its
         * commit had not returned (the fsync that ends a commit with synchronous=FULL did not
         * complete), so it was never acknowledged. A second commit frame after the damage can
         * only have been written after an earlier commit returned: that is, a committed and
         * acknowledged transaction is being dropped. */
        if (r->lost_commits >= 2)
            r->rule = 'B';
        return 0;
    }
    /* Rule A: the header is damaged. SQLite then ignores the whole log. The header is synced
     * before the first frame of a log's generation is written, so a crash cannot leave a bad
     * header in front of committed frames. Which field is damaged is unknown: the readings
     * tried are the magic's byte order and the other one, the header's page
     * size (all valid ones when it is bad) and the salts of the header and of the first frame.
     * Frames only count when they check out locally, which a wrong reading does not give
     * (a 64-bit checksum). */
    uint8_t salts[2][8];
    int nsalt = 1;
    memcpy(salts[0], h + 16, 8);
    if (size >= WAL_HDR + FRAME_HDR) {
        uint8_t f1[FRAME_HDR];
        if (read_at(fd, f1, FRAME_HDR, WAL_HDR) != 0)
            return -1;
        if (memcmp(f1 + 8, salts[0], 8) != 0)
            memcpy(salts[nsalt++], f1 + 8, 8);
    }
    int bigs[2] = {w.big, !w.big}, nbig = 2; /* the magic's low bit may be the damage */
    uint32_t sizes[10];
    int nsize = 0;
    if (page_size_ok(ps))
        sizes[nsize++] = ps;
    for (uint32_t p = PAGE_MIN; p <= PAGE_MAX; p *= 2)
        if (p != ps)
            sizes[nsize++] = p;
    ims_wal_scan_result t;
    for (int a = 0; a < nsalt; a++)
        for (int b = 0; b < nbig; b++)
            for (int c = 0; c < nsize; c++) {
                memcpy(w.salt, salts[a], 8);
                w.big = bigs[b];
                w.ps = sizes[c];
                w.chain_ok = 0;
                memset(&t, 0, sizeof t);
                if (walk_frames(fd, size, &w, buf, &t) != 0)
                    return -1;
                if (t.lost_commits >= 1) {
                    *r = t;
                    r->page_size = 0;
                    r->rule = 'A';
                    return 0;
                }
                if (a == 0 && b == 0 && c == 0) /* the header's own reading */
                    *r = t;
            }
    r->header_ok = 0;
    r->page_size = 0;
    return 0;
}

static int same_file_state(const struct stat *a, const struct stat *b)
{
    return a->st_ino == b->st_ino && a->st_dev == b->st_dev && a->st_size == b->st_size &&
           a->st_mtim.tv_sec == b->st_mtim.tv_sec && a->st_mtim.tv_nsec == b->st_mtim.tv_nsec;
}

int ims_wal_scan(const char *wal_path, ims_wal_scan_result *out, char *msg, size_t msglen)
{
    ims_wal_scan_result r;
    memset(&r, 0, sizeof r);
    if (out != NULL)
        memset(out, 0, sizeof *out);
    if (msg != NULL && msglen > 0)
        msg[0] = '\0';
    int fd = open(wal_path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT)
            return IMS_WAL_OK;
        if (msg != NULL && msglen > 0)
            snprintf(msg, msglen, "%s: cannot read the WAL: %s", wal_path, strerror(errno));
        return IMS_WAL_REFUSE;
    }
    uint8_t *buf = malloc(FRAME_HDR + PAGE_MAX);
    int oom = buf == NULL, rc = oom ? -1 : 0, settled = 0;
    /* Another process (an admin command while imd runs) may be writing the log: a scan is
     * trusted only when the file did not change while it ran. If it keeps changing, the log is
     * live: its writer's shared memory, not a recovery from this file, is what SQLite uses. */
    for (int attempt = 0; rc == 0 && attempt < 3 && !settled; attempt++) {
        struct stat before, after;
        if (fstat(fd, &before) != 0) {
            rc = -1;
            break;
        }
        if (before.st_size == 0) {
            memset(&r, 0, sizeof r);
            settled = 1;
            break;
        }
        rc = scan_once(fd, (uint64_t)before.st_size, &r, buf);
        settled = rc == 0 && stat(wal_path, &after) == 0 && same_file_state(&before, &after);
    }
    int err = errno;
    free(buf);
    close(fd);
    if (rc != 0) {
        if (msg != NULL && msglen > 0)
            snprintf(msg, msglen, "%s: cannot read the WAL: %s", wal_path,
                     oom ? "out of memory" : strerror(err ? err : EIO));
        return IMS_WAL_REFUSE;
    }
    if (!settled)
        memset(&r, 0, sizeof r);
    if (out != NULL)
        *out = r;
    if (r.rule == 'A') {
        if (msg != NULL && msglen > 0)
            snprintf(msg, msglen,
                     "%s: damaged WAL: bad header checksum, yet %llu commit frame(s) check out "
                     "(first: frame %llu): committed transactions would be lost; restore from "
                     "backup, or move the WAL away to accept the loss",
                     wal_path, (unsigned long long)r.lost_commits,
                     (unsigned long long)r.lost_first);
        return IMS_WAL_REFUSE;
    }
    if (r.rule == 'B') {
        if (msg != NULL && msglen > 0)
            snprintf(msg, msglen,
                     "%s: damaged WAL: frame %llu fails its checksum, yet %llu later commit "
                     "frames check out (first: frame %llu): committed transactions would be "
                     "lost; restore from backup, or move the WAL away to accept the loss",
                     wal_path, (unsigned long long)r.first_bad, (unsigned long long)r.lost_commits,
                     (unsigned long long)r.lost_first);
        return IMS_WAL_REFUSE;
    }
    return IMS_WAL_OK;
}
