/* imd — a per-thread memory arena for Argon2id hashing (see hash_arena.h).
 *
 * Why. libsodium's Argon2 (argon2-core.c, allocate_memory/free_memory) maps the whole
 * memory-hard buffer with mmap(NULL, m, PROT_READ|PROT_WRITE, MAP_ANON|MAP_PRIVATE, -1, 0) at
 * the start of every hash and munmaps it at the end. With the default m = 19 MiB that is ~4,900
 * page faults per hash to populate it, then the unmap and TLB shootdown; with two workers
 * mapping at once they also contend on the process's mmap lock. Measured on the 2-CPU CI VM
 * (issue 3): crypto_pwhash_str t=2 m=19 MiB took 18.1 ms per hash, and 9.0 ms when a thread
 * reused one region across hashes; perf showed ~45 % of the hash workers' time in the kernel
 * populating and unmapping that region. This file gives each hash worker one region it keeps
 * between hashes.
 *
 * How. This file defines mmap and munmap. The executable's definitions win symbol resolution
 * over libc's for calls from shared libraries (libsodium calls mmap/munmap through its PLT), and
 * for calls inside the executable; glibc's own internal calls (malloc, thread stacks) do not go
 * through them. While the calling thread is armed (ims_hash_arena_arm .. ims_hash_arena_disarm,
 * around one crypto_pwhash_str / _str_verify call in a worker) an anonymous, private,
 * read-write, addr == NULL, fd == -1, offset 0 request of at least IMS_HASH_ARENA_MIN bytes is
 * served from the thread's region: made on first use with the real mmap (and
 * madvise(MADV_DONTDUMP), so password-derived memory never lands in a core file), replaced by a
 * bigger one when a larger request comes, and a munmap of it only marks it free again. Anything
 * else — other flags, small or file mappings, a second request while the region is handed out,
 * and every call from a thread that is not armed — goes to the real functions, found once with
 * dlsym(RTLD_NEXT, ...) (or, if that fails, the raw system calls). Where that cannot be done
 * safely the interposition is compiled out and arm/disarm/release do nothing: under
 * AddressSanitizer and ThreadSanitizer (they intercept mmap themselves; the fuzz target and
 * CI's sanitizer builds link this file), on non-Linux systems, and on CPUs other than x86_64
 * and aarch64 (where we have no syscall fallback we trust).
 *
 * What it relies on: that libsodium maps the Argon2 memory with mmap per call and frees it
 * with munmap from the same thread (true of libsodium 1.0.x built with HAVE_MMAP, as Debian's
 * is). If a libsodium version allocates differently (malloc, posix_memalign, a cache of its
 * own), armed hashing just sees no qualifying request and is as slow as before — never wrong:
 * the region is ordinary zero-filled-on-first-use anonymous memory, Argon2 writes every block
 * before it reads it, and the results are identical (tests/server/test_hash_arena.c checks
 * that). The idea is ours.
 *
 * Contents. libsodium may or may not wipe the Argon2 blocks before munmap (it does only when a
 * clear flag is set); with the arena they stay in the region until the next hash overwrites
 * them or ims_hash_arena_release wipes the region with sodium_memzero and unmaps it. Either way
 * memory holding password-derived blocks never leaves the process (without the arena it goes
 * back to the kernel, which zeroes it before anyone else sees it), and it is excluded from core
 * dumps.
 *
 * Threads and errno. All state is thread-local (a region belongs to the thread that made it;
 * the only shared datum is an atomic count of live regions, for tests). Serving from the region
 * leaves errno untouched; real calls set it as the real functions do. fork: imd does not fork;
 * a child would inherit only the forking thread's region, which stays valid in the child.
 */
#include "hash_arena.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>

#include <sodium.h>

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define IMS_ARENA_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer) || \
    __has_feature(memory_sanitizer)
#define IMS_ARENA_SANITIZED 1
#endif
#endif

#if defined(__linux__) && (defined(__x86_64__) || defined(__aarch64__)) && \
    !defined(IMS_ARENA_SANITIZED)
#define IMS_ARENA_INTERPOSE 1
#else
#define IMS_ARENA_INTERPOSE 0
#endif

#if IMS_ARENA_INTERPOSE

#include <dlfcn.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

typedef void *(*mmap_fn)(void *, size_t, int, int, int, off_t);
typedef int (*munmap_fn)(void *, size_t);

/* 0 not resolved yet; 1 dlsym found both; 2 use the system calls. */
static atomic_int g_resolved;
static _Atomic(mmap_fn) g_mmap;
static _Atomic(munmap_fn) g_munmap;
static atomic_long g_live; /* regions mapped now, all threads */

static _Thread_local struct {
    char *base; /* the region, NULL when none */
    size_t size;
    int in_use;
    int armed;
    int resolving; /* inside dlsym: do not recurse into it */
    unsigned long maps;
    unsigned long served;
} t_arena;

static void *sys_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
    return (void *)syscall(SYS_mmap, addr, len, prot, flags, fd, off);
}

static int sys_munmap(void *addr, size_t len)
{
    return (int)syscall(SYS_munmap, addr, len);
}

static void resolve(void)
{
    if (atomic_load_explicit(&g_resolved, memory_order_acquire) != 0 || t_arena.resolving)
        return;
    int saved = errno;
    t_arena.resolving = 1;
    void *m = dlsym(RTLD_NEXT, "mmap");
    void *u = dlsym(RTLD_NEXT, "munmap");
    t_arena.resolving = 0;
    if (m && u) {
        /* POSIX guarantees dlsym's object pointer converts to a function pointer. */
        mmap_fn mf;
        munmap_fn uf;
        _Static_assert(sizeof mf == sizeof m && sizeof uf == sizeof u, "function pointers");
        memcpy(&mf, &m, sizeof mf);
        memcpy(&uf, &u, sizeof uf);
        atomic_store_explicit(&g_mmap, mf, memory_order_relaxed);
        atomic_store_explicit(&g_munmap, uf, memory_order_relaxed);
        atomic_store_explicit(&g_resolved, 1, memory_order_release);
    } else {
        atomic_store_explicit(&g_resolved, 2, memory_order_release);
    }
    errno = saved;
}

static void *real_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
    resolve();
    if (atomic_load_explicit(&g_resolved, memory_order_acquire) != 1)
        return sys_mmap(addr, len, prot, flags, fd, off);
    mmap_fn f = atomic_load_explicit(&g_mmap, memory_order_relaxed);
    return f(addr, len, prot, flags, fd, off);
}

static int real_munmap(void *addr, size_t len)
{
    resolve();
    if (atomic_load_explicit(&g_resolved, memory_order_acquire) != 1)
        return sys_munmap(addr, len);
    munmap_fn f = atomic_load_explicit(&g_munmap, memory_order_relaxed);
    return f(addr, len);
}

/* Forgets the region without unmapping it (its holder owns it now). */
static void forget_region(void)
{
    t_arena.base = NULL;
    t_arena.size = 0;
    t_arena.in_use = 0;
    atomic_fetch_sub_explicit(&g_live, 1, memory_order_relaxed);
}

/* Wipes and unmaps the region (not in use). */
static void drop_region(void)
{
    sodium_memzero(t_arena.base, t_arena.size);
    char *b = t_arena.base;
    size_t n = t_arena.size;
    forget_region();
    (void)real_munmap(b, n);
}

/* The region for a qualifying request of len bytes, or NULL (then the caller maps for real).
 * errno is left as it was. */
static void *take_region(size_t len)
{
    if (t_arena.base && t_arena.size >= len) {
        t_arena.in_use = 1;
        t_arena.served++;
        return t_arena.base;
    }
    int saved = errno;
    if (t_arena.base)
        drop_region(); /* too small: replaced by a big enough one */
    long pg = sysconf(_SC_PAGESIZE);
    size_t page = pg > 0 ? (size_t)pg : 4096;
    if (len > SIZE_MAX - page) {
        errno = saved;
        return NULL;
    }
    size_t size = (len + page - 1) / page * page;
    void *p = real_mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        errno = saved;
        return NULL;
    }
    if (madvise(p, size, MADV_DONTDUMP) != 0) {
        /* Never keep password-derived memory that a core file would show. */
        (void)real_munmap(p, size);
        errno = saved;
        return NULL;
    }
    atomic_fetch_add_explicit(&g_live, 1, memory_order_relaxed);
    t_arena.base = p;
    t_arena.size = size;
    t_arena.maps++;
    t_arena.in_use = 1;
    t_arena.served++;
    errno = saved;
    return p;
}

static int qualifies(const void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
    return t_arena.armed && !t_arena.in_use && addr == NULL && fd == -1 && off == 0 &&
           len >= IMS_HASH_ARENA_MIN && prot == (PROT_READ | PROT_WRITE) &&
           (flags & ~(MAP_POPULATE | MAP_NORESERVE)) == (MAP_PRIVATE | MAP_ANONYMOUS);
}

void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
    if (qualifies(addr, len, prot, flags, fd, off)) {
        void *p = take_region(len);
        if (p)
            return p;
    }
    return real_mmap(addr, len, prot, flags, fd, off);
}

int munmap(void *addr, size_t len)
{
    char *b = t_arena.base;
    if (b && len > 0) {
        uintptr_t lo = (uintptr_t)addr, hi = lo + len;
        uintptr_t rlo = (uintptr_t)b, rhi = rlo + t_arena.size;
        if (lo < rhi && hi > rlo) {
            if (t_arena.armed && t_arena.in_use && lo == rlo && len <= t_arena.size) {
                t_arena.in_use = 0; /* free again; the next hash overwrites it */
                return 0;
            }
            /* Unmapped some other way (unarmed, or not as handed out): it is no longer ours. */
            forget_region();
        }
    }
    return real_munmap(addr, len);
}

void ims_hash_arena_arm(void)
{
    resolve();
    t_arena.armed = 1;
}

void ims_hash_arena_disarm(void)
{
    t_arena.armed = 0;
}

void ims_hash_arena_release(void)
{
    if (!t_arena.base)
        return;
    if (t_arena.in_use) {
        forget_region(); /* handed out: its holder will unmap it */
        return;
    }
    int saved = errno;
    drop_region();
    errno = saved;
}

int ims_hash_arena_available(void)
{
    resolve();
    return 1; /* dlsym or the system calls: either way there is a real mmap to fall back to */
}

void ims_hash_arena_info_get(ims_hash_arena_info *out)
{
    if (!out)
        return;
    memset(out, 0, sizeof *out);
    out->base = t_arena.base;
    out->size = t_arena.size;
    out->in_use = t_arena.in_use;
    out->armed = t_arena.armed;
    out->maps = t_arena.maps;
    out->served = t_arena.served;
}

long ims_hash_arena_live(void)
{
    return atomic_load_explicit(&g_live, memory_order_relaxed);
}

#else /* !IMS_ARENA_INTERPOSE: hashing maps its memory as libsodium does */

void ims_hash_arena_arm(void) {}

void ims_hash_arena_disarm(void) {}

void ims_hash_arena_release(void) {}

int ims_hash_arena_available(void)
{
    return 0;
}

void ims_hash_arena_info_get(ims_hash_arena_info *out)
{
    if (out)
        memset(out, 0, sizeof *out);
}

long ims_hash_arena_live(void)
{
    return 0;
}

#endif
