/* imd — a per-thread memory arena for Argon2id hashing (see hash_arena.c for why and how).
 *
 * A hash worker brackets each crypto_pwhash_str / crypto_pwhash_str_verify call with
 * ims_hash_arena_arm() and ims_hash_arena_disarm(). While the calling thread is armed, the big
 * anonymous mapping libsodium makes for the Argon2 memory is served from a region the thread
 * keeps between hashes, instead of being mapped, faulted in and unmapped again every time.
 * ims_hash_arena_release() wipes and unmaps the calling thread's region; a thread that was ever
 * armed must call it before it exits (otherwise the region stays mapped until the process
 * exits).
 *
 * All state is per thread; nothing here takes a lock. Where the interposition is compiled out
 * (AddressSanitizer/ThreadSanitizer builds, non-Linux, other CPUs than x86_64 and aarch64) the
 * three functions do nothing and hashing works exactly as without this file.
 */
#ifndef IMS_HASH_ARENA_H
#define IMS_HASH_ARENA_H

#include <stddef.h>

/* Requests smaller than this always go to the real mmap. */
#define IMS_HASH_ARENA_MIN ((size_t)1 << 20)

void ims_hash_arena_arm(void);
void ims_hash_arena_disarm(void);
void ims_hash_arena_release(void);

/* 1 when the interposition is compiled in (arming has an effect), else 0. */
int ims_hash_arena_available(void);

/* ---- for tests (tests/server/test_hash_arena.c, test_auth.c) -------------------------------- */

typedef struct ims_hash_arena_info {
    const void *base;     /* the calling thread's region, NULL when it has none */
    size_t size;          /* its size in bytes (a multiple of the page size), 0 when none */
    int in_use;           /* 1: handed out by mmap and not given back by munmap yet */
    int armed;            /* the calling thread is armed */
    unsigned long maps;   /* real mappings made for this thread's region so far */
    unsigned long served; /* requests this thread's region has served so far */
} ims_hash_arena_info;

/* The calling thread's state. */
void ims_hash_arena_info_get(ims_hash_arena_info *out);
/* Regions mapped now, all threads together. */
long ims_hash_arena_live(void);

#endif
