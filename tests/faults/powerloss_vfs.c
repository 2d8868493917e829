/* Test-only SQLite VFS that simulates a power loss (tests/integration/test_faults.c).
 *
 * LD_PRELOADed into imd, a constructor registers it as the default VFS. It wraps SQLite's
 * "unix" VFS: every write (and truncation) to a file is held in memory and reaches the real
 * file only when that file is synced, which is what an operating system's page cache does
 * between fsyncs, minus the write-back. Reads, xFileSize and further writes see the pending
 * writes. A simulated power loss _exit()s the process at once: whatever was not synced never
 * reaches the disk. Shared memory (-shm) is passed through: SQLite rebuilds it from the WAL after
 * a crash.
 *
 * Like the kernel's page cache, the pending writes belong to the file (the inode: st_dev and
 * st_ino, taken at xOpen), not to one descriptor: two connections that open the same file (imd's
 * store and its syncer's checkpoint connection) share them, each reads what the other wrote, and
 * a sync through either one makes both durable.
 *
 * A file is synced by its xSync, or by an fdatasync() or fsync() that the process makes outside
 * SQLite on its own descriptor of the same inode (imd's syncer fdatasync()s the -wal file that it
 * opened itself): this library defines fdatasync and fsync, so that, preloaded, it sees those
 * calls; it applies the inode's pending writes exactly as an xSync would, then calls the real
 * function (dlsym RTLD_NEXT). A descriptor that is no VFS file is passed straight through; so are
 * the calls the unix VFS itself makes inside an xSync (already counted and applied).
 *
 * Threads: one global mutex around every method that touches the pending writes, the counters or
 * the real files (SQLite calls a VFS from several threads at once: imd's loop and its syncer).
 *
 * Environment (read once, in the constructor):
 *   IMP_POWERLOSS_CRASH_AT=N       power loss at the N-th xWrite (1-based, all files counted;
 *                                  the N-th write is not applied)
 *   IMP_POWERLOSS_CRASH_AT_SYNC=N  power loss at the N-th sync (xSync, or fdatasync/fsync of a
 *                                  VFS file made outside SQLite), before it applies anything
 *   neither: never crashes (writes still wait for a sync)
 * On the power loss, in whichever thread reached it, it writes "powerloss: simulated power loss
 * at write N" (or "at sync N (xSync)", "at sync N (fdatasync)", "at sync N (fsync)"), then
 * "; before it: X xSync, Y outside SQLite, Z writes" (the syncs and writes done), to stderr and
 * exits with status 99 (POWERLOSS_EXIT).
 *
 * A file closed with writes pending, by the last connection that had it open, hands them to the
 * real file (without a sync): a closed file's data lives on in the page cache, so this model only
 * loses what an open file did not sync.
 *
 * Pending writes are kept per 4 KiB chunk (a copy of the chunk's whole logical content), plus
 * the lowest size the file was truncated to since the last sync. At a sync: truncate the real
 * file to that size, write the chunks, truncate to the logical size, then the real sync.
 */
#define _GNU_SOURCE /* RTLD_NEXT */
#include <sqlite3.h>

#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#define POWERLOSS_EXIT 99
#define CHUNK 4096

typedef struct chunk {
    int64_t index; /* offset / CHUNK */
    unsigned char data[CHUNK];
} chunk;

struct pl_file;

/* One real file (inode) and its pending writes, shared by every pl_file open on it. */
typedef struct pl_inode {
    struct pl_inode *next; /* in `inodes` (keyed ones only) */
    int keyed;             /* 1: dev/ino known (0: a file without a name; never shared) */
    dev_t dev;
    ino_t ino;
    struct pl_file *files; /* open on it (at least one while the pl_inode exists) */
    int64_t real_size;     /* size of the real file (as last written by us) */
    int64_t size;          /* logical size, pending writes included */
    int64_t trunc_to;      /* lowest truncation since the last sync; -1 none */
    chunk **tab;           /* open addressing by index; NULL slots empty */
    size_t cap, n;
} pl_inode;

typedef struct pl_file {
    sqlite3_file base;
    sqlite3_file *real;   /* the unix VFS's file, allocated after this struct */
    pl_inode *node;       /* its pending writes */
    struct pl_file *next; /* in node->files */
} pl_file;

static sqlite3_vfs *unix_vfs;
static sqlite3_vfs pl_vfs;
static long crash_write, crash_sync; /* 0: never */

/* Everything below is under `mu`: the counters, the inodes and their chunks, and the calls into
 * the unix VFS's files (a flush from one thread writes through a file another thread uses). */
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static long writes, syncs;
static long xsyncs, outside_syncs; /* syncs by kind: xSync; fdatasync/fsync outside SQLite */
static pl_inode *inodes;
/* 1 while this thread holds `mu`: an fdatasync()/fsync() it makes then comes from the unix VFS
 * (inside an xSync already counted, or a directory sync) and is passed through. */
static _Thread_local int inside;

static void enter(void)
{
    pthread_mutex_lock(&mu);
    inside = 1;
}

static void leave(void)
{
    inside = 0;
    pthread_mutex_unlock(&mu);
}

static void put_err(const char *s)
{
    size_t n = strlen(s);
    while (n > 0) {
        ssize_t w = write(2, s, n);
        if (w <= 0)
            return;
        s += w;
        n -= (size_t)w;
    }
}

/* With `mu` held; the other threads stay blocked on it (or run on outside the VFS) until the
 * process is gone. */
static void power_loss(const char *what, long n, const char *how)
{
    char msg[192];
    snprintf(msg, sizeof msg,
             "powerloss: simulated power loss at %s %ld%s%s%s; before it: %ld xSync, %ld "
             "outside SQLite, %ld writes\n",
             what, n, how ? " (" : "", how ? how : "", how ? ")" : "", xsyncs, outside_syncs,
             writes - (how ? 0 : 1));
    put_err(msg);
    _exit(POWERLOSS_EXIT);
}

/* ---- chunk table ---------------------------------------------------------------------------- */

static size_t slot_of(const pl_inode *f, int64_t index)
{
    uint64_t h = (uint64_t)index * 0x9E3779B97F4A7C15ull;
    return (size_t)(h >> 17) & (f->cap - 1);
}

static chunk *chunk_find(const pl_inode *f, int64_t index)
{
    if (f->cap == 0)
        return NULL;
    for (size_t i = slot_of(f, index);; i = (i + 1) & (f->cap - 1)) {
        if (f->tab[i] == NULL)
            return NULL;
        if (f->tab[i]->index == index)
            return f->tab[i];
    }
}

static int chunk_insert(pl_inode *f, chunk *c)
{
    if ((f->n + 1) * 2 > f->cap) {
        size_t ncap = f->cap ? f->cap * 2 : 64;
        chunk **nt = calloc(ncap, sizeof *nt);
        if (nt == NULL)
            return -1;
        chunk **old = f->tab;
        size_t ocap = f->cap;
        f->tab = nt;
        f->cap = ncap;
        for (size_t i = 0; i < ocap; i++)
            if (old[i] != NULL) {
                size_t j = slot_of(f, old[i]->index);
                while (f->tab[j] != NULL)
                    j = (j + 1) & (f->cap - 1);
                f->tab[j] = old[i];
            }
        free(old);
    }
    size_t j = slot_of(f, c->index);
    while (f->tab[j] != NULL)
        j = (j + 1) & (f->cap - 1);
    f->tab[j] = c;
    f->n++;
    return 0;
}

static void chunks_clear(pl_inode *f)
{
    for (size_t i = 0; i < f->cap; i++)
        free(f->tab[i]);
    free(f->tab);
    f->tab = NULL;
    f->cap = f->n = 0;
}

/* Bytes [off, off+n) of the real file (read through `via`, any file open on it) as the logical
 * file sees them apart from the chunks: zero beyond the real size or beyond a pending
 * truncation. */
static int real_read(pl_inode *f, sqlite3_file *via, unsigned char *buf, int64_t n, int64_t off)
{
    int64_t limit = f->real_size;
    if (f->trunc_to >= 0 && f->trunc_to < limit)
        limit = f->trunc_to;
    memset(buf, 0, (size_t)n);
    if (off >= limit)
        return SQLITE_OK;
    int64_t m = off + n <= limit ? n : limit - off;
    int rc = via->pMethods->xRead(via, buf, (int)m, off);
    if (rc == SQLITE_IOERR_SHORT_READ)
        rc = SQLITE_OK; /* zero-filled */
    return rc;
}

/* ---- io methods ----------------------------------------------------------------------------- */

/* The inode's pending writes into the real file, written through `via` (any file open on it). */
static int flush_pending(pl_inode *f, sqlite3_file *via)
{
    int rc = SQLITE_OK;
    if (f->trunc_to >= 0 && f->trunc_to < f->real_size) {
        rc = via->pMethods->xTruncate(via, f->trunc_to);
        if (rc != SQLITE_OK)
            return rc;
        f->real_size = f->trunc_to;
    }
    for (size_t i = 0; i < f->cap; i++) {
        chunk *c = f->tab[i];
        if (c == NULL)
            continue;
        int64_t off = c->index * CHUNK;
        if (off >= f->size)
            continue;
        int64_t len = f->size - off < CHUNK ? f->size - off : CHUNK;
        rc = via->pMethods->xWrite(via, c->data, (int)len, off);
        if (rc != SQLITE_OK)
            return rc;
        if (off + len > f->real_size)
            f->real_size = off + len;
    }
    if (f->real_size != f->size) {
        rc = via->pMethods->xTruncate(via, f->size);
        if (rc != SQLITE_OK)
            return rc;
        f->real_size = f->size;
    }
    chunks_clear(f);
    f->trunc_to = -1;
    return SQLITE_OK;
}

static int pl_close(sqlite3_file *pf)
{
    pl_file *f = (pl_file *)pf;
    enter();
    pl_inode *node = f->node;
    for (pl_file **pp = &node->files; *pp != NULL; pp = &(*pp)->next)
        if (*pp == f) {
            *pp = f->next;
            break;
        }
    if (node->files == NULL) {
        /* the last one: what it did not sync stays in the page cache, i.e. reaches the file */
        flush_pending(node, f->real);
        chunks_clear(node);
        for (pl_inode **pp = &inodes; *pp != NULL; pp = &(*pp)->next)
            if (*pp == node) {
                *pp = node->next;
                break;
            }
        free(node);
    }
    f->node = NULL;
    int rc = f->real->pMethods ? f->real->pMethods->xClose(f->real) : SQLITE_OK;
    leave();
    return rc;
}

static int pl_read(sqlite3_file *pf, void *buf, int amt, sqlite3_int64 off)
{
    pl_file *f = (pl_file *)pf;
    unsigned char *out = buf;
    int64_t pos = off, end = off + amt;
    int rc = SQLITE_OK;
    enter();
    pl_inode *node = f->node;
    while (pos < end) {
        int64_t idx = pos / CHUNK, in = pos % CHUNK;
        int64_t take = CHUNK - in < end - pos ? CHUNK - in : end - pos;
        chunk *c = chunk_find(node, idx);
        if (c != NULL) {
            memcpy(out + (pos - off), c->data + in, (size_t)take);
        } else {
            rc = real_read(node, f->real, out + (pos - off), take, pos);
            if (rc != SQLITE_OK)
                break;
        }
        pos += take;
    }
    if (rc == SQLITE_OK && end > node->size) {
        int64_t from = node->size > off ? node->size - off : 0;
        memset(out + from, 0, (size_t)(amt - from));
        rc = SQLITE_IOERR_SHORT_READ;
    }
    leave();
    return rc;
}

static int pl_write(sqlite3_file *pf, const void *buf, int amt, sqlite3_int64 off)
{
    pl_file *f = (pl_file *)pf;
    const unsigned char *in = buf;
    int64_t pos = off, end = off + amt;
    int rc = SQLITE_OK;
    enter();
    pl_inode *node = f->node;
    writes++;
    if (crash_write > 0 && writes >= crash_write)
        power_loss("write", writes, NULL);
    while (pos < end) {
        int64_t idx = pos / CHUNK, at = pos % CHUNK;
        int64_t take = CHUNK - at < end - pos ? CHUNK - at : end - pos;
        chunk *c = chunk_find(node, idx);
        if (c == NULL) {
            c = malloc(sizeof *c);
            if (c == NULL) {
                rc = SQLITE_IOERR_NOMEM;
                break;
            }
            c->index = idx;
            /* the chunk's current logical content: real bytes, zero past the logical size */
            rc = real_read(node, f->real, c->data, CHUNK, idx * CHUNK);
            if (rc != SQLITE_OK) {
                free(c);
                break;
            }
            if (idx * CHUNK + CHUNK > node->size) {
                int64_t keep = node->size > idx * CHUNK ? node->size - idx * CHUNK : 0;
                memset(c->data + keep, 0, (size_t)(CHUNK - keep));
            }
            if (chunk_insert(node, c) != 0) {
                free(c);
                rc = SQLITE_IOERR_NOMEM;
                break;
            }
        }
        memcpy(c->data + at, in + (pos - off), (size_t)take);
        pos += take;
    }
    if (rc == SQLITE_OK && end > node->size)
        node->size = end;
    leave();
    return rc;
}

static int pl_truncate(sqlite3_file *pf, sqlite3_int64 size)
{
    pl_file *f = (pl_file *)pf;
    enter();
    pl_inode *node = f->node;
    if (size >= node->size) {
        /* growing by truncate: zeros (already what reads see past the end once size grows) */
        node->size = size;
        leave();
        return SQLITE_OK;
    }
    /* drop the chunks past the new end, zero the tail of the one holding it */
    chunk **keep = NULL;
    size_t nkeep = 0;
    if (node->n > 0) {
        keep = malloc(node->n * sizeof *keep);
        if (keep == NULL) {
            leave();
            return SQLITE_IOERR_NOMEM;
        }
    }
    for (size_t i = 0; i < node->cap; i++) {
        chunk *c = node->tab[i];
        if (c == NULL)
            continue;
        if (c->index * CHUNK >= size) {
            free(c);
        } else {
            if (c->index * CHUNK + CHUNK > size)
                memset(c->data + (size - c->index * CHUNK), 0,
                       (size_t)(c->index * CHUNK + CHUNK - size));
            keep[nkeep++] = c;
        }
        node->tab[i] = NULL;
    }
    node->n = 0;
    for (size_t i = 0; i < nkeep; i++)
        chunk_insert(node, keep[i]); /* cannot grow: fewer than before */
    free(keep);
    if (node->trunc_to < 0 || size < node->trunc_to)
        node->trunc_to = size;
    node->size = size;
    leave();
    return SQLITE_OK;
}

static int pl_sync(sqlite3_file *pf, int flags)
{
    pl_file *f = (pl_file *)pf;
    enter();
    syncs++;
    if (crash_sync > 0 && syncs >= crash_sync)
        power_loss("sync", syncs, "xSync");
    xsyncs++;
    int rc = flush_pending(f->node, f->real);
    if (rc == SQLITE_OK)
        rc = f->real->pMethods->xSync(f->real, flags); /* its fdatasync passes through */
    leave();
    return rc;
}

static int pl_file_size(sqlite3_file *pf, sqlite3_int64 *size)
{
    enter();
    *size = ((pl_file *)pf)->node->size;
    leave();
    return SQLITE_OK;
}

static int pl_lock(sqlite3_file *pf, int lock)
{
    pl_file *f = (pl_file *)pf;
    enter();
    int rc = f->real->pMethods->xLock(f->real, lock);
    leave();
    return rc;
}

static int pl_unlock(sqlite3_file *pf, int lock)
{
    pl_file *f = (pl_file *)pf;
    enter();
    int rc = f->real->pMethods->xUnlock(f->real, lock);
    leave();
    return rc;
}

static int pl_check_reserved(sqlite3_file *pf, int *out)
{
    pl_file *f = (pl_file *)pf;
    enter();
    int rc = f->real->pMethods->xCheckReservedLock(f->real, out);
    leave();
    return rc;
}

static int pl_file_control(sqlite3_file *pf, int op, void *arg)
{
    pl_file *f = (pl_file *)pf;
    if (op == SQLITE_FCNTL_SIZE_HINT)
        return SQLITE_OK; /* a hint; it would grow the real file behind the pending writes */
    if (op == SQLITE_FCNTL_VFSNAME) {
        *(char **)arg = sqlite3_mprintf("powerloss");
        return SQLITE_OK;
    }
    enter();
    int rc = f->real->pMethods->xFileControl(f->real, op, arg);
    leave();
    return rc;
}

static int pl_sector_size(sqlite3_file *pf)
{
    pl_file *f = (pl_file *)pf;
    enter();
    int rc = f->real->pMethods->xSectorSize(f->real);
    leave();
    return rc;
}

static int pl_device_chars(sqlite3_file *pf)
{
    pl_file *f = (pl_file *)pf;
    enter();
    int rc = f->real->pMethods->xDeviceCharacteristics(f->real);
    leave();
    return rc;
}

static int pl_shm_map(sqlite3_file *pf, int pg, int sz, int extend, void volatile **pp)
{
    pl_file *f = (pl_file *)pf;
    enter();
    int rc = f->real->pMethods->xShmMap(f->real, pg, sz, extend, pp);
    leave();
    return rc;
}

static int pl_shm_lock(sqlite3_file *pf, int off, int n, int flags)
{
    pl_file *f = (pl_file *)pf;
    enter();
    int rc = f->real->pMethods->xShmLock(f->real, off, n, flags);
    leave();
    return rc;
}

static void pl_shm_barrier(sqlite3_file *pf)
{
    pl_file *f = (pl_file *)pf;
    enter();
    f->real->pMethods->xShmBarrier(f->real);
    leave();
}

static int pl_shm_unmap(sqlite3_file *pf, int del)
{
    pl_file *f = (pl_file *)pf;
    enter();
    int rc = f->real->pMethods->xShmUnmap(f->real, del);
    leave();
    return rc;
}

/* Version 2: shared memory (WAL), no xFetch, so that SQLite never reads through mmap around the
 * pending writes. */
static const sqlite3_io_methods pl_io = {
    2,
    pl_close,
    pl_read,
    pl_write,
    pl_truncate,
    pl_sync,
    pl_file_size,
    pl_lock,
    pl_unlock,
    pl_check_reserved,
    pl_file_control,
    pl_sector_size,
    pl_device_chars,
    pl_shm_map,
    pl_shm_lock,
    pl_shm_barrier,
    pl_shm_unmap,
    NULL,
    NULL,
};

/* ---- vfs ------------------------------------------------------------------------------------ */

static pl_inode *inode_find(dev_t dev, ino_t ino)
{
    for (pl_inode *n = inodes; n != NULL; n = n->next)
        if (n->dev == dev && n->ino == ino)
            return n;
    return NULL;
}

static int pl_open(sqlite3_vfs *vfs, const char *name, sqlite3_file *pf, int flags, int *out_flags)
{
    (void)vfs;
    pl_file *f = (pl_file *)pf;
    memset(f, 0, sizeof *f);
    f->real = (sqlite3_file *)(f + 1);
    enter();
    int rc = unix_vfs->xOpen(unix_vfs, name, f->real, flags, out_flags);
    if (rc != SQLITE_OK) {
        f->base.pMethods = NULL;
        leave();
        return rc;
    }
    /* the real file's identity (a file without a name, or already unlinked, has none: its
     * pending writes are its own) */
    struct stat st;
    pl_inode *node = NULL;
    int keyed = name != NULL && stat(name, &st) == 0;
    if (keyed)
        node = inode_find(st.st_dev, st.st_ino);
    if (node == NULL) {
        sqlite3_int64 sz = 0;
        rc = f->real->pMethods->xFileSize(f->real, &sz);
        if (rc == SQLITE_OK && (node = calloc(1, sizeof *node)) == NULL)
            rc = SQLITE_IOERR_NOMEM;
        if (rc != SQLITE_OK) {
            f->real->pMethods->xClose(f->real);
            f->base.pMethods = NULL;
            leave();
            return rc;
        }
        node->keyed = keyed;
        if (keyed) {
            node->dev = st.st_dev;
            node->ino = st.st_ino;
            node->next = inodes;
            inodes = node;
        }
        node->real_size = node->size = sz;
        node->trunc_to = -1;
    }
    f->node = node;
    f->next = node->files;
    node->files = f;
    f->base.pMethods = &pl_io;
    leave();
    return SQLITE_OK;
}

static int pl_delete(sqlite3_vfs *vfs, const char *name, int sync_dir)
{
    (void)vfs;
    return unix_vfs->xDelete(unix_vfs, name, sync_dir);
}

static int pl_access(sqlite3_vfs *vfs, const char *name, int flags, int *out)
{
    (void)vfs;
    return unix_vfs->xAccess(unix_vfs, name, flags, out);
}

static int pl_full_pathname(sqlite3_vfs *vfs, const char *name, int n, char *out)
{
    (void)vfs;
    return unix_vfs->xFullPathname(unix_vfs, name, n, out);
}

static void *pl_dlopen(sqlite3_vfs *vfs, const char *name)
{
    (void)vfs;
    return unix_vfs->xDlOpen(unix_vfs, name);
}

static void pl_dlerror(sqlite3_vfs *vfs, int n, char *msg)
{
    (void)vfs;
    unix_vfs->xDlError(unix_vfs, n, msg);
}

static void (*pl_dlsym(sqlite3_vfs *vfs, void *h, const char *sym))(void)
{
    (void)vfs;
    return unix_vfs->xDlSym(unix_vfs, h, sym);
}

static void pl_dlclose(sqlite3_vfs *vfs, void *h)
{
    (void)vfs;
    unix_vfs->xDlClose(unix_vfs, h);
}

static int pl_randomness(sqlite3_vfs *vfs, int n, char *out)
{
    (void)vfs;
    return unix_vfs->xRandomness(unix_vfs, n, out);
}

static int pl_sleep(sqlite3_vfs *vfs, int us)
{
    (void)vfs;
    return unix_vfs->xSleep(unix_vfs, us);
}

static int pl_current_time(sqlite3_vfs *vfs, double *t)
{
    (void)vfs;
    return unix_vfs->xCurrentTime(unix_vfs, t);
}

static int pl_last_error(sqlite3_vfs *vfs, int n, char *msg)
{
    (void)vfs;
    return unix_vfs->xGetLastError ? unix_vfs->xGetLastError(unix_vfs, n, msg) : 0;
}

static int pl_current_time64(sqlite3_vfs *vfs, sqlite3_int64 *t)
{
    (void)vfs;
    return unix_vfs->xCurrentTimeInt64(unix_vfs, t);
}

/* ---- fdatasync / fsync made outside SQLite -------------------------------------------------- */

typedef int (*sync_fn)(int);
static sync_fn real_fdatasync, real_fsync;
static pthread_once_t real_once = PTHREAD_ONCE_INIT;

static sync_fn next_symbol(const char *name)
{
    void *p = dlsym(RTLD_NEXT, name);
    sync_fn fn = NULL;
    if (p != NULL)
        memcpy(&fn, &p, sizeof fn); /* object to function pointer, without a pedantic cast */
    return fn;
}

static void real_resolve(void)
{
    real_fdatasync = next_symbol("fdatasync");
    real_fsync = next_symbol("fsync");
}

/* A sync of descriptor fd, made by the process (not by the unix VFS inside an xSync): when fd is
 * a VFS file (same inode), it counts as a sync and applies the pending writes, as an xSync of
 * that file would; then the real call. */
static int sync_outside(int fd, int data_only)
{
    pthread_once(&real_once, real_resolve);
    sync_fn fn = data_only ? real_fdatasync : real_fsync;
    if (fn == NULL) {
        errno = ENOSYS;
        return -1;
    }
    struct stat st;
    if (!inside && fstat(fd, &st) == 0) {
        enter();
        pl_inode *node = inode_find(st.st_dev, st.st_ino);
        if (node != NULL) {
            syncs++;
            if (crash_sync > 0 && syncs >= crash_sync)
                power_loss("sync", syncs, data_only ? "fdatasync" : "fsync");
            outside_syncs++;
            if (flush_pending(node, node->files->real) != SQLITE_OK) {
                leave();
                errno = EIO;
                return -1;
            }
        }
        leave();
    }
    return fn(fd);
}

int fdatasync(int fd)
{
    return sync_outside(fd, 1);
}

int fsync(int fd)
{
    return sync_outside(fd, 0);
}

/* ---- registration --------------------------------------------------------------------------- */

static long env_long(const char *name)
{
    const char *v = getenv(name);
    return v && *v ? strtol(v, NULL, 10) : 0;
}

/* Registers the VFS as the default when the library is loaded. Also callable by a unit test. */
int imp_powerloss_register(void);
int imp_powerloss_register(void)
{
    if (unix_vfs != NULL)
        return SQLITE_OK;
    crash_write = env_long("IMP_POWERLOSS_CRASH_AT");
    crash_sync = env_long("IMP_POWERLOSS_CRASH_AT_SYNC");
    unix_vfs = sqlite3_vfs_find("unix");
    if (unix_vfs == NULL) {
        put_err("powerloss: no \"unix\" VFS\n");
        return SQLITE_ERROR;
    }
    pl_vfs.iVersion = 2;
    pl_vfs.szOsFile = (int)sizeof(pl_file) + unix_vfs->szOsFile;
    pl_vfs.mxPathname = unix_vfs->mxPathname;
    pl_vfs.zName = "powerloss";
    pl_vfs.xOpen = pl_open;
    pl_vfs.xDelete = pl_delete;
    pl_vfs.xAccess = pl_access;
    pl_vfs.xFullPathname = pl_full_pathname;
    pl_vfs.xDlOpen = pl_dlopen;
    pl_vfs.xDlError = pl_dlerror;
    pl_vfs.xDlSym = pl_dlsym;
    pl_vfs.xDlClose = pl_dlclose;
    pl_vfs.xRandomness = pl_randomness;
    pl_vfs.xSleep = pl_sleep;
    pl_vfs.xCurrentTime = pl_current_time;
    pl_vfs.xGetLastError = pl_last_error;
    pl_vfs.xCurrentTimeInt64 = pl_current_time64;
    int rc = sqlite3_vfs_register(&pl_vfs, 1);
    if (rc != SQLITE_OK)
        put_err("powerloss: sqlite3_vfs_register failed\n");
    return rc;
}

#if defined(__GNUC__)
__attribute__((constructor)) static void pl_init(void)
{
    pthread_once(&real_once, real_resolve);
    if (getenv("IMP_POWERLOSS_NO_AUTO") == NULL)
        imp_powerloss_register();
}
#endif
