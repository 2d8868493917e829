/* Unit tests for server/hash_arena.c: the per-thread region that serves libsodium's Argon2
 * mapping while a thread is armed.
 *
 * Everything runs on real libsodium with small parameters (t=1, m=2 MiB: above the arena's
 * 1 MiB threshold, a few milliseconds per hash). The region is observed through the test
 * accessors in hash_arena.h (the calling thread's region and counters, the process-wide number
 * of live regions) and through the kernel: mincore() fails with ENOMEM on an address range that
 * is not mapped, and /proc/self/smaps shows MADV_DONTDUMP as "dd" in VmFlags.
 *
 * Where the interposition is compiled out (ASan/TSan builds), the tests that depend on it skip
 * with a message; the result-equality test runs everywhere.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <sodium.h>

#include "hash_arena.h"

#define T_OPS 1u
#define T_MEM ((size_t)2 << 20) /* 2 MiB: served by the arena */
#define MIB ((size_t)1 << 20)

static const char k_pw[] = "correct horse battery staple";
#define K_PW_LEN (sizeof k_pw - 1)

static int setup(void **state)
{
    (void)state;
    return sodium_init() < 0 ? -1 : 0;
}

/* Every test leaves the calling thread unarmed and without a region. */
static int teardown(void **state)
{
    (void)state;
    ims_hash_arena_disarm();
    ims_hash_arena_release();
    return 0;
}

#define NEED_ARENA()                                                                              \
    do {                                                                                          \
        if (!ims_hash_arena_available()) {                                                        \
            print_message("hash arena interposition compiled out (sanitizer or platform build): " \
                          "skipped\n");                                                           \
            skip();                                                                               \
        }                                                                                         \
    } while (0)

static ims_hash_arena_info info(void)
{
    ims_hash_arena_info i;
    memset(&i, 0xa5, sizeof i);
    ims_hash_arena_info_get(&i);
    return i;
}

static void hash_str(char out[crypto_pwhash_STRBYTES])
{
    assert_int_equal(
        crypto_pwhash_str_alg(out, k_pw, K_PW_LEN, T_OPS, T_MEM, crypto_pwhash_ALG_ARGON2ID13), 0);
}

/* 1 when every page of [p, p+len) is mapped. */
static int is_mapped(const void *p, size_t len)
{
    long pg = sysconf(_SC_PAGESIZE);
    size_t pages = (len + (size_t)pg - 1) / (size_t)pg;
    unsigned char *vec = malloc(pages);
    assert_non_null(vec);
    int rc = mincore((void *)(uintptr_t)p, len, vec);
    int err = errno;
    free(vec);
    if (rc == 0)
        return 1;
    assert_int_equal(err, ENOMEM);
    return 0;
}

/* 1 when the mapping that starts at p has "dd" (MADV_DONTDUMP) in its VmFlags. */
static int is_dontdump(const void *p)
{
    FILE *f = fopen("/proc/self/smaps", "r");
    assert_non_null(f);
    char line[512];
    int in = 0, found = 0;
    while (fgets(line, sizeof line, f)) {
        unsigned long lo, hi;
        if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2 && strchr(line, '-') < strchr(line, ' ')) {
            in = lo == (unsigned long)(uintptr_t)p;
            continue;
        }
        if (in && strncmp(line, "VmFlags:", 8) == 0) {
            found = strstr(line, " dd") != NULL;
            break;
        }
    }
    fclose(f);
    return found;
}

static int contains(const ims_hash_arena_info *i, const void *p)
{
    const char *b = i->base, *q = p;
    return b && q >= b && q < b + i->size;
}

/* ---- tests ---------------------------------------------------------------------------------- */

static void test_not_armed_no_region(void **state)
{
    (void)state;
    long live0 = ims_hash_arena_live();
    char h[crypto_pwhash_STRBYTES];
    hash_str(h);
    ims_hash_arena_info i = info();
    assert_null(i.base);
    assert_int_equal(i.size, 0);
    assert_int_equal(i.armed, 0);
    assert_int_equal(i.in_use, 0);
    assert_int_equal(i.maps, 0);
    assert_int_equal(i.served, 0);
    assert_int_equal(ims_hash_arena_live(), live0);

    /* Unarmed, a big anonymous mapping is a real one. */
    void *p = mmap(NULL, T_MEM, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    assert_true(p != MAP_FAILED);
    assert_null(info().base);
    assert_int_equal(munmap(p, T_MEM), 0);
    assert_false(is_mapped(p, T_MEM));
}

static void test_armed_hashes_reuse_region(void **state)
{
    (void)state;
    NEED_ARENA();
    long live0 = ims_hash_arena_live();
    char h1[crypto_pwhash_STRBYTES], h2[crypto_pwhash_STRBYTES];

    ims_hash_arena_arm();
    assert_int_equal(info().armed, 1);
    hash_str(h1);
    ims_hash_arena_info a = info();
    assert_non_null(a.base);
    assert_true(a.size >= T_MEM);
    assert_int_equal(a.size % (size_t)sysconf(_SC_PAGESIZE), 0);
    assert_int_equal(a.in_use, 0); /* libsodium's munmap gave it back */
    assert_int_equal(a.maps, 1);
    assert_int_equal(a.served, 1);
    assert_int_equal(ims_hash_arena_live(), live0 + 1);
    assert_true(is_mapped(a.base, a.size)); /* still mapped between hashes */
    assert_true(is_dontdump(a.base));

    hash_str(h2);
    assert_int_equal(crypto_pwhash_str_verify(h1, k_pw, K_PW_LEN), 0); /* a third use */
    ims_hash_arena_disarm();
    ims_hash_arena_info b = info();
    assert_ptr_equal(b.base, a.base);
    assert_int_equal(b.size, a.size);
    assert_int_equal(b.maps, 1); /* no new mapping */
    assert_int_equal(b.served, 3);
    assert_int_equal(b.armed, 0);
    assert_int_equal(ims_hash_arena_live(), live0 + 1);
    assert_string_not_equal(h1, h2); /* random salts */
    print_message("region %p, %zu bytes, %lu map(s) for %lu hashes\n", b.base, b.size, b.maps,
                  b.served);
}

/* Armed and unarmed hashing give the same results (runs with or without the interposition). */
static void test_results_identical(void **state)
{
    (void)state;
    static const unsigned char salt[crypto_pwhash_SALTBYTES] = "0123456789abcdef";
    unsigned char k_plain[32], k_armed[32];

    assert_int_equal(crypto_pwhash(k_plain, sizeof k_plain, k_pw, K_PW_LEN, salt, T_OPS, T_MEM,
                                   crypto_pwhash_ALG_ARGON2ID13),
                     0);
    ims_hash_arena_arm();
    /* twice: a fresh region and a reused one (with the previous hash's blocks in it) */
    for (int round = 0; round < 2; round++) {
        memset(k_armed, 0, sizeof k_armed);
        assert_int_equal(crypto_pwhash(k_armed, sizeof k_armed, k_pw, K_PW_LEN, salt, T_OPS, T_MEM,
                                       crypto_pwhash_ALG_ARGON2ID13),
                         0);
        assert_memory_equal(k_armed, k_plain, sizeof k_plain);
    }
    char h_armed[crypto_pwhash_STRBYTES];
    hash_str(h_armed);
    assert_int_equal(crypto_pwhash_str_verify(h_armed, "wrong", 5), -1);
    ims_hash_arena_disarm();

    char h_plain[crypto_pwhash_STRBYTES];
    hash_str(h_plain);
    /* armed hash verified unarmed, and the other way round */
    assert_int_equal(crypto_pwhash_str_verify(h_armed, k_pw, K_PW_LEN), 0);
    assert_int_equal(crypto_pwhash_str_verify(h_armed, "wrong", 5), -1);
    ims_hash_arena_arm();
    assert_int_equal(crypto_pwhash_str_verify(h_plain, k_pw, K_PW_LEN), 0);
    assert_int_equal(crypto_pwhash_str_verify(h_plain, "wrong", 5), -1);
    ims_hash_arena_disarm();
    if (!ims_hash_arena_available())
        print_message("(interposition compiled out: armed = unarmed here)\n");
}

static void test_release_unmaps_then_maps_again(void **state)
{
    (void)state;
    NEED_ARENA();
    long live0 = ims_hash_arena_live();
    char h[crypto_pwhash_STRBYTES];
    ims_hash_arena_arm();
    hash_str(h);
    ims_hash_arena_disarm();
    ims_hash_arena_info a = info();
    assert_non_null(a.base);
    assert_int_equal(ims_hash_arena_live(), live0 + 1);

    ims_hash_arena_release();
    ims_hash_arena_info b = info();
    assert_null(b.base);
    assert_int_equal(b.size, 0);
    assert_int_equal(ims_hash_arena_live(), live0);
    assert_false(is_mapped(a.base, a.size));
    ims_hash_arena_release(); /* twice is harmless */
    assert_int_equal(ims_hash_arena_live(), live0);

    ims_hash_arena_arm();
    hash_str(h);
    ims_hash_arena_disarm();
    ims_hash_arena_info c = info();
    assert_non_null(c.base);
    assert_int_equal(c.maps, a.maps + 1);
    assert_int_equal(c.served, a.served + 1);
    assert_int_equal(ims_hash_arena_live(), live0 + 1);
    assert_int_equal(crypto_pwhash_str_verify(h, k_pw, K_PW_LEN), 0);
}

static void test_other_requests_go_to_real_mmap(void **state)
{
    (void)state;
    NEED_ARENA();
    const int rw = PROT_READ | PROT_WRITE, pa = MAP_PRIVATE | MAP_ANONYMOUS;
    ims_hash_arena_info before = info(); /* the counters are cumulative per thread */
    ims_hash_arena_arm();

    /* the region is made by the first qualifying request; errno is left alone */
    errno = 4321;
    char *r = mmap(NULL, T_MEM, rw, pa, -1, 0);
    assert_true(r != MAP_FAILED);
    assert_int_equal(errno, 4321);
    ims_hash_arena_info a = info();
    assert_ptr_equal(a.base, r);
    assert_int_equal(a.in_use, 1);
    assert_int_equal(a.maps, before.maps + 1);
    assert_int_equal(a.served, before.served + 1);
    memset(r, 0x5a, T_MEM);

    /* a second request while the region is in use */
    void *second = mmap(NULL, T_MEM, rw, pa, -1, 0);
    assert_true(second != MAP_FAILED);
    assert_false(contains(&a, second));
    assert_int_equal(munmap(second, T_MEM), 0);
    assert_false(is_mapped(second, T_MEM));
    assert_int_equal(munmap(r, T_MEM), 0); /* given back: still mapped, not in use */
    assert_int_equal(info().in_use, 0);
    assert_true(is_mapped(r, T_MEM));

    /* small anonymous */
    void *small = mmap(NULL, 64 * 1024, rw, pa, -1, 0);
    assert_true(small != MAP_FAILED);
    assert_false(contains(&a, small));
    assert_int_equal(munmap(small, 64 * 1024), 0);

    /* shared anonymous, read-only, with an address hint */
    void *shared = mmap(NULL, T_MEM, rw, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    assert_true(shared != MAP_FAILED);
    assert_false(contains(&a, shared));
    assert_int_equal(munmap(shared, T_MEM), 0);
    void *ro = mmap(NULL, T_MEM, PROT_READ, pa, -1, 0);
    assert_true(ro != MAP_FAILED);
    assert_false(contains(&a, ro));
    assert_int_equal(munmap(ro, T_MEM), 0);
    void *hinted = mmap((void *)(uintptr_t)0x200000000000ull, T_MEM, rw, pa, -1, 0);
    assert_true(hinted != MAP_FAILED);
    assert_false(contains(&a, hinted));
    assert_int_equal(munmap(hinted, T_MEM), 0);

    /* a file */
    char path[] = "/tmp/imp-hash-arena-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    unlink(path);
    assert_int_equal(ftruncate(fd, (off_t)T_MEM), 0);
    assert_int_equal(pwrite(fd, "file", 4, 0), 4);
    char *fm = mmap(NULL, T_MEM, rw, MAP_PRIVATE, fd, 0);
    assert_true(fm != MAP_FAILED);
    assert_false(contains(&a, fm));
    assert_memory_equal(fm, "file", 4);
    assert_int_equal(munmap(fm, T_MEM), 0);
    close(fd);

    ims_hash_arena_info b = info();
    assert_ptr_equal(b.base, a.base);
    assert_int_equal(b.maps, a.maps);
    assert_int_equal(b.served, a.served);
    ims_hash_arena_disarm();
}

static void test_grows_by_replacing(void **state)
{
    (void)state;
    NEED_ARENA();
    long live0 = ims_hash_arena_live();
    const int rw = PROT_READ | PROT_WRITE, pa = MAP_PRIVATE | MAP_ANONYMOUS;
    ims_hash_arena_arm();
    void *p = mmap(NULL, MIB, rw, pa, -1, 0);
    assert_true(p != MAP_FAILED);
    ims_hash_arena_info a = info();
    assert_ptr_equal(a.base, p);
    assert_int_equal(a.size, MIB);
    assert_int_equal(munmap(p, MIB), 0);

    char *q = mmap(NULL, 3 * MIB, rw, pa, -1, 0);
    assert_true(q != MAP_FAILED);
    ims_hash_arena_info b = info();
    assert_ptr_equal(b.base, q);
    assert_int_equal(b.size, 3 * MIB);
    assert_int_equal(b.maps, a.maps + 1);
    assert_int_equal(ims_hash_arena_live(), live0 + 1); /* replaced, not added */
    memset(q, 1, 3 * MIB);                              /* all of it is usable */
    assert_int_equal(munmap(q, 3 * MIB), 0);

    /* smaller again: the big region serves it */
    void *s = mmap(NULL, MIB + 4096, rw, pa, -1, 0);
    assert_ptr_equal(s, q);
    assert_int_equal(info().maps, b.maps);
    assert_int_equal(munmap(s, MIB + 4096), 0);
    ims_hash_arena_disarm();
}

/* Unmapped while unarmed, or released while handed out: the holder owns it from then on. */
static void test_region_handed_over(void **state)
{
    (void)state;
    NEED_ARENA();
    long live0 = ims_hash_arena_live();
    const int rw = PROT_READ | PROT_WRITE, pa = MAP_PRIVATE | MAP_ANONYMOUS;

    ims_hash_arena_arm();
    char *p = mmap(NULL, T_MEM, rw, pa, -1, 0);
    assert_ptr_equal(info().base, p);
    ims_hash_arena_disarm();
    assert_int_equal(munmap(p, T_MEM), 0); /* unarmed: a real munmap */
    assert_null(info().base);
    assert_int_equal(ims_hash_arena_live(), live0);
    assert_false(is_mapped(p, T_MEM));

    ims_hash_arena_arm();
    p = mmap(NULL, T_MEM, rw, pa, -1, 0);
    assert_ptr_equal(info().base, p);
    ims_hash_arena_release(); /* in use: not unmapped under its holder */
    assert_null(info().base);
    assert_int_equal(ims_hash_arena_live(), live0);
    assert_true(is_mapped(p, T_MEM));
    p[0] = 1;
    p[T_MEM - 1] = 1;
    assert_int_equal(munmap(p, T_MEM), 0); /* armed, but no longer the region: real */
    assert_false(is_mapped(p, T_MEM));
    ims_hash_arena_disarm();
}

typedef struct thr {
    pthread_barrier_t *bar;
    ims_hash_arena_info seen;
    int verified;
} thr;

static void *thread_main(void *arg)
{
    thr *t = arg;
    char h1[crypto_pwhash_STRBYTES], h2[crypto_pwhash_STRBYTES];
    ims_hash_arena_arm();
    int ok = crypto_pwhash_str(h1, k_pw, K_PW_LEN, T_OPS, T_MEM) == 0 &&
             crypto_pwhash_str(h2, k_pw, K_PW_LEN, T_OPS, T_MEM) == 0 &&
             crypto_pwhash_str_verify(h1, k_pw, K_PW_LEN) == 0;
    ims_hash_arena_disarm();
    ims_hash_arena_info_get(&t->seen);
    t->verified = ok;
    pthread_barrier_wait(t->bar); /* both hold their regions */
    pthread_barrier_wait(t->bar); /* main has looked */
    ims_hash_arena_release();
    return NULL;
}

static void test_threads_have_own_regions(void **state)
{
    (void)state;
    NEED_ARENA();
    long live0 = ims_hash_arena_live();
    pthread_barrier_t bar;
    assert_int_equal(pthread_barrier_init(&bar, NULL, 3), 0);
    thr t[2];
    pthread_t th[2];
    for (int i = 0; i < 2; i++) {
        memset(&t[i], 0, sizeof t[i]);
        t[i].bar = &bar;
        assert_int_equal(pthread_create(&th[i], NULL, thread_main, &t[i]), 0);
    }
    pthread_barrier_wait(&bar);
    assert_int_equal(ims_hash_arena_live(), live0 + 2);
    assert_null(info().base); /* not this thread's */
    for (int i = 0; i < 2; i++) {
        assert_int_equal(t[i].verified, 1);
        assert_non_null(t[i].seen.base);
        assert_int_equal(t[i].seen.maps, 1);
        assert_int_equal(t[i].seen.served, 3);
    }
    assert_false(contains(&t[0].seen, t[1].seen.base));
    assert_false(contains(&t[1].seen, t[0].seen.base));
    pthread_barrier_wait(&bar);
    for (int i = 0; i < 2; i++)
        assert_int_equal(pthread_join(th[i], NULL), 0);
    assert_int_equal(ims_hash_arena_live(), live0);
    assert_false(is_mapped(t[0].seen.base, t[0].seen.size));
    assert_false(is_mapped(t[1].seen.base, t[1].seen.size));
    pthread_barrier_destroy(&bar);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_not_armed_no_region, teardown),
        cmocka_unit_test_teardown(test_armed_hashes_reuse_region, teardown),
        cmocka_unit_test_teardown(test_results_identical, teardown),
        cmocka_unit_test_teardown(test_release_unmaps_then_maps_again, teardown),
        cmocka_unit_test_teardown(test_other_requests_go_to_real_mmap, teardown),
        cmocka_unit_test_teardown(test_grows_by_replacing, teardown),
        cmocka_unit_test_teardown(test_region_handed_over, teardown),
        cmocka_unit_test_teardown(test_threads_have_own_regions, teardown),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}
