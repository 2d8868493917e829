/* Test-only SQLite VFS that simulates a power loss (tests/integration/test_faults.c).
 *
 * LD_PRELOADed into imd, a constructor registers it as the default VFS. It wraps SQLite's
 * "unix" VFS: every write (and truncation) to a file is held in memory and reaches the real
 * file only at that file's xSync, which is what an operating system's page cache does between
 * fsyncs, minus the write-back. Reads, xFileSize and further writes see the pending writes. A
 * simulated power loss _exit()s the process at once: whatever was not synced never reaches the
 * disk. Shared memory (-shm) is passed through: SQLite rebuilds it from the WAL after a crash.
 *
 * Environment (read once, in the constructor):
 *   IMP_POWERLOSS_CRASH_AT=N       power loss at the N-th xWrite (1-based, all files counted;
 *                                  the N-th write is not applied)
 *   IMP_POWERLOSS_CRASH_AT_SYNC=N  power loss at the N-th xSync, before it applies anything
 *   neither: never crashes (writes still wait for xSync)
 * On the power loss it writes "powerloss: simulated power loss at write N" (or "at sync N") to
 * stderr and exits with status 99 (POWERLOSS_EXIT).
 *
 * A file closed with writes pending hands them to the real file (without a sync): a closed
 * file's data lives on in the page cache, so this model only loses what an open file did not
 * sync.
 *
 * Pending writes are kept per 4 KiB chunk (a copy of the chunk's whole logical content), plus
 * the lowest size the file was truncated to since the last sync. At xSync: truncate the real
 * file to that size, write the chunks, truncate to the logical size, then the real xSync.
 */
#include <sqlite3.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define POWERLOSS_EXIT 99
#define CHUNK 4096

typedef struct chunk {
    int64_t index; /* offset / CHUNK */
    unsigned char data[CHUNK];
} chunk;

typedef struct pl_file {
    sqlite3_file base;
    sqlite3_file *real; /* the unix VFS's file, allocated after this struct */
    int64_t real_size;  /* size of the real file (as last written by us) */
    int64_t size;       /* logical size, pending writes included */
    int64_t trunc_to;   /* lowest truncation since the last sync; -1 none */
    chunk **tab;        /* open addressing by index; NULL slots empty */
    size_t cap, n;
} pl_file;

static sqlite3_vfs *unix_vfs;
static sqlite3_vfs pl_vfs;
static long crash_write, crash_sync; /* 0: never */
static long writes, syncs;

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

static void power_loss(const char *what, long n)
{
    char msg[96];
    snprintf(msg, sizeof msg, "powerloss: simulated power loss at %s %ld\n", what, n);
    put_err(msg);
    _exit(POWERLOSS_EXIT);
}

/* ---- chunk table ---------------------------------------------------------------------------- */

static size_t slot_of(const pl_file *f, int64_t index)
{
    uint64_t h = (uint64_t)index * 0x9E3779B97F4A7C15ull;
    return (size_t)(h >> 17) & (f->cap - 1);
}

static chunk *chunk_find(const pl_file *f, int64_t index)
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

static int chunk_insert(pl_file *f, chunk *c)
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

static void chunks_clear(pl_file *f)
{
    for (size_t i = 0; i < f->cap; i++)
        free(f->tab[i]);
    free(f->tab);
    f->tab = NULL;
    f->cap = f->n = 0;
}

/* Bytes [off, off+n) of the real file as the logical file sees them apart from the chunks:
 * zero beyond the real size or beyond a pending truncation. */
static int real_read(pl_file *f, unsigned char *buf, int64_t n, int64_t off)
{
    int64_t limit = f->real_size;
    if (f->trunc_to >= 0 && f->trunc_to < limit)
        limit = f->trunc_to;
    memset(buf, 0, (size_t)n);
    if (off >= limit)
        return SQLITE_OK;
    int64_t m = off + n <= limit ? n : limit - off;
    int rc = f->real->pMethods->xRead(f->real, buf, (int)m, off);
    if (rc == SQLITE_IOERR_SHORT_READ)
        rc = SQLITE_OK; /* zero-filled */
    return rc;
}

/* ---- io methods ----------------------------------------------------------------------------- */

static int flush_pending(pl_file *f)
{
    int rc = SQLITE_OK;
    if (f->trunc_to >= 0 && f->trunc_to < f->real_size) {
        rc = f->real->pMethods->xTruncate(f->real, f->trunc_to);
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
        rc = f->real->pMethods->xWrite(f->real, c->data, (int)len, off);
        if (rc != SQLITE_OK)
            return rc;
        if (off + len > f->real_size)
            f->real_size = off + len;
    }
    if (f->real_size != f->size) {
        rc = f->real->pMethods->xTruncate(f->real, f->size);
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
    flush_pending(f);
    chunks_clear(f);
    return f->real->pMethods ? f->real->pMethods->xClose(f->real) : SQLITE_OK;
}

static int pl_read(sqlite3_file *pf, void *buf, int amt, sqlite3_int64 off)
{
    pl_file *f = (pl_file *)pf;
    unsigned char *out = buf;
    int64_t pos = off, end = off + amt;
    while (pos < end) {
        int64_t idx = pos / CHUNK, in = pos % CHUNK;
        int64_t take = CHUNK - in < end - pos ? CHUNK - in : end - pos;
        chunk *c = chunk_find(f, idx);
        if (c != NULL) {
            memcpy(out + (pos - off), c->data + in, (size_t)take);
        } else {
            int rc = real_read(f, out + (pos - off), take, pos);
            if (rc != SQLITE_OK)
                return rc;
        }
        pos += take;
    }
    if (end > f->size) {
        int64_t from = f->size > off ? f->size - off : 0;
        memset(out + from, 0, (size_t)(amt - from));
        return SQLITE_IOERR_SHORT_READ;
    }
    return SQLITE_OK;
}

static int pl_write(sqlite3_file *pf, const void *buf, int amt, sqlite3_int64 off)
{
    pl_file *f = (pl_file *)pf;
    writes++;
    if (crash_write > 0 && writes >= crash_write)
        power_loss("write", writes);
    const unsigned char *in = buf;
    int64_t pos = off, end = off + amt;
    while (pos < end) {
        int64_t idx = pos / CHUNK, at = pos % CHUNK;
        int64_t take = CHUNK - at < end - pos ? CHUNK - at : end - pos;
        chunk *c = chunk_find(f, idx);
        if (c == NULL) {
            c = malloc(sizeof *c);
            if (c == NULL)
                return SQLITE_IOERR_NOMEM;
            c->index = idx;
            /* the chunk's current logical content: real bytes, zero past the logical size */
            int rc = real_read(f, c->data, CHUNK, idx * CHUNK);
            if (rc != SQLITE_OK) {
                free(c);
                return rc;
            }
            if (idx * CHUNK + CHUNK > f->size) {
                int64_t keep = f->size > idx * CHUNK ? f->size - idx * CHUNK : 0;
                memset(c->data + keep, 0, (size_t)(CHUNK - keep));
            }
            if (chunk_insert(f, c) != 0) {
                free(c);
                return SQLITE_IOERR_NOMEM;
            }
        }
        memcpy(c->data + at, in + (pos - off), (size_t)take);
        pos += take;
    }
    if (end > f->size)
        f->size = end;
    return SQLITE_OK;
}

static int pl_truncate(sqlite3_file *pf, sqlite3_int64 size)
{
    pl_file *f = (pl_file *)pf;
    if (size >= f->size) {
        /* growing by truncate: zeros (already what reads see past the end once size grows) */
        f->size = size;
        return SQLITE_OK;
    }
    /* drop the chunks past the new end, zero the tail of the one holding it */
    chunk **keep = NULL;
    size_t nkeep = 0;
    if (f->n > 0) {
        keep = malloc(f->n * sizeof *keep);
        if (keep == NULL)
            return SQLITE_IOERR_NOMEM;
    }
    for (size_t i = 0; i < f->cap; i++) {
        chunk *c = f->tab[i];
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
        f->tab[i] = NULL;
    }
    f->n = 0;
    for (size_t i = 0; i < nkeep; i++)
        chunk_insert(f, keep[i]); /* cannot grow: fewer than before */
    free(keep);
    if (f->trunc_to < 0 || size < f->trunc_to)
        f->trunc_to = size;
    f->size = size;
    return SQLITE_OK;
}

static int pl_sync(sqlite3_file *pf, int flags)
{
    pl_file *f = (pl_file *)pf;
    syncs++;
    if (crash_sync > 0 && syncs >= crash_sync)
        power_loss("sync", syncs);
    int rc = flush_pending(f);
    if (rc != SQLITE_OK)
        return rc;
    return f->real->pMethods->xSync(f->real, flags);
}

static int pl_file_size(sqlite3_file *pf, sqlite3_int64 *size)
{
    *size = ((pl_file *)pf)->size;
    return SQLITE_OK;
}

static int pl_lock(sqlite3_file *pf, int lock)
{
    pl_file *f = (pl_file *)pf;
    return f->real->pMethods->xLock(f->real, lock);
}

static int pl_unlock(sqlite3_file *pf, int lock)
{
    pl_file *f = (pl_file *)pf;
    return f->real->pMethods->xUnlock(f->real, lock);
}

static int pl_check_reserved(sqlite3_file *pf, int *out)
{
    pl_file *f = (pl_file *)pf;
    return f->real->pMethods->xCheckReservedLock(f->real, out);
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
    return f->real->pMethods->xFileControl(f->real, op, arg);
}

static int pl_sector_size(sqlite3_file *pf)
{
    pl_file *f = (pl_file *)pf;
    return f->real->pMethods->xSectorSize(f->real);
}

static int pl_device_chars(sqlite3_file *pf)
{
    pl_file *f = (pl_file *)pf;
    return f->real->pMethods->xDeviceCharacteristics(f->real);
}

static int pl_shm_map(sqlite3_file *pf, int pg, int sz, int extend, void volatile **pp)
{
    pl_file *f = (pl_file *)pf;
    return f->real->pMethods->xShmMap(f->real, pg, sz, extend, pp);
}

static int pl_shm_lock(sqlite3_file *pf, int off, int n, int flags)
{
    pl_file *f = (pl_file *)pf;
    return f->real->pMethods->xShmLock(f->real, off, n, flags);
}

static void pl_shm_barrier(sqlite3_file *pf)
{
    pl_file *f = (pl_file *)pf;
    f->real->pMethods->xShmBarrier(f->real);
}

static int pl_shm_unmap(sqlite3_file *pf, int del)
{
    pl_file *f = (pl_file *)pf;
    return f->real->pMethods->xShmUnmap(f->real, del);
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

static int pl_open(sqlite3_vfs *vfs, const char *name, sqlite3_file *pf, int flags, int *out_flags)
{
    (void)vfs;
    pl_file *f = (pl_file *)pf;
    memset(f, 0, sizeof *f);
    f->real = (sqlite3_file *)(f + 1);
    f->trunc_to = -1;
    int rc = unix_vfs->xOpen(unix_vfs, name, f->real, flags, out_flags);
    if (rc != SQLITE_OK) {
        f->base.pMethods = NULL;
        return rc;
    }
    sqlite3_int64 sz = 0;
    rc = f->real->pMethods->xFileSize(f->real, &sz);
    if (rc != SQLITE_OK) {
        f->real->pMethods->xClose(f->real);
        f->base.pMethods = NULL;
        return rc;
    }
    f->real_size = f->size = sz;
    f->base.pMethods = &pl_io;
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
    if (getenv("IMP_POWERLOSS_NO_AUTO") == NULL)
        imp_powerloss_register();
}
#endif
