/* imd — login throttling (see auth.h): per-address bans and per-account backoff.
 *
 * Addresses: an address is banned for addr_ban_ms when addr_max_failures of its failures lie
 * within addr_window_ms (a true sliding window: the entry keeps the times of its last
 * addr_max_failures failures in a ring, and the ban starts when the oldest of them is less than
 * addr_window_ms old). The ring is cleared when a ban starts, so after the ban the address has
 * its full allowance again. A success does not clear an address: a client with one valid
 * account of its own must not be able to reset the count it runs up against others.
 * addr_max_failures = 0 turns address bans off.
 *
 * Accounts: consecutive failures. Once there are f >= max(user_free_failures, 1), the next
 * attempt must come at least min(user_backoff_ms << (f - max(user_free_failures, 1)),
 * user_backoff_max_ms) after the last failure. A success removes the account's entry.
 * user_backoff_ms = 0 turns backoff off.
 *
 * Both kinds of entry live in one hash table (chaining; SipHash with a random key, so that
 * chosen addresses or names cannot pile into one bucket) and on one LRU list: at most
 * max_entries entries exist, and a new one evicts the least recently used. check() touches an
 * existing entry but never creates one. Keys longer than IMS_THROTTLE_KEY_MAX bytes are
 * truncated (such keys only share a counter). Time is passed in by the caller.
 */
#include "auth.h"

#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "imp/errors.h"

#define IMS_THROTTLE_KEY_MAX 256
#define IMS_THROTTLE_FAILURES_MAX 1000
#define IMS_THROTTLE_BUCKETS_MAX ((size_t)1 << 22)

enum { KIND_ADDR = 1, KIND_USER = 2 };

typedef struct thr_entry {
    struct thr_entry *hnext;               /* bucket chain */
    struct thr_entry *lru_prev, *lru_next; /* lru_prev towards the most recent */
    uint64_t hash;
    uint8_t kind;
    uint16_t key_len;
    /* address */
    uint64_t banned_until;
    uint32_t n_fail;   /* failure times in ring (<= addr_max_failures) */
    uint32_t ring_pos; /* where the next failure time goes */
    /* account */
    uint32_t fails;
    uint64_t last_fail;
    /* address entries: addr_max_failures failure times; then the key (not terminated) */
    uint64_t ring[];
} thr_entry;

struct ims_throttle {
    ims_throttle_options opt;
    uint8_t sip_key[crypto_shorthash_KEYBYTES];
    thr_entry **buckets;
    size_t mask;
    size_t count;
    thr_entry *lru_head; /* most recently used */
    thr_entry *lru_tail; /* least recently used: evicted first */
};

void ims_throttle_options_default(ims_throttle_options *o)
{
    if (!o)
        return;
    memset(o, 0, sizeof *o);
    o->addr_max_failures = 10;
    o->addr_window_ms = 60 * 1000;
    o->addr_ban_ms = 300 * 1000;
    o->user_free_failures = 3;
    o->user_backoff_ms = 1000;
    o->user_backoff_max_ms = 60 * 1000;
    o->max_entries = 100000;
}

ims_throttle *ims_throttle_new(const ims_throttle_options *o)
{
    ims_throttle_options def;
    if (!o) {
        ims_throttle_options_default(&def);
        o = &def;
    }
    if (o->max_entries < 1 || o->addr_max_failures < 0 ||
        o->addr_max_failures > IMS_THROTTLE_FAILURES_MAX ||
        (o->addr_max_failures > 0 && o->addr_window_ms == 0) || o->user_free_failures < 0)
        return NULL;
    if (sodium_init() < 0)
        return NULL;
    ims_throttle *t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    t->opt = *o;
    size_t n = 16;
    while (n < o->max_entries && n < IMS_THROTTLE_BUCKETS_MAX)
        n *= 2;
    t->buckets = calloc(n, sizeof *t->buckets);
    if (!t->buckets) {
        free(t);
        return NULL;
    }
    t->mask = n - 1;
    randombytes_buf(t->sip_key, sizeof t->sip_key);
    return t;
}

void ims_throttle_free(ims_throttle *t)
{
    if (!t)
        return;
    thr_entry *e = t->lru_head;
    while (e) {
        thr_entry *next = e->lru_next;
        free(e);
        e = next;
    }
    free(t->buckets);
    free(t);
}

size_t ims_throttle_entries(const ims_throttle *t)
{
    return t ? t->count : 0;
}

/* ---- table ------------------------------------------------------------------------------- */

static size_t ring_len(const ims_throttle *t, int kind)
{
    return kind == KIND_ADDR ? (size_t)t->opt.addr_max_failures : 0;
}

static const char *entry_key(const ims_throttle *t, const thr_entry *e)
{
    return (const char *)(e->ring + ring_len(t, e->kind));
}

static uint64_t key_hash(const ims_throttle *t, int kind, const char *key, size_t len)
{
    uint8_t out[crypto_shorthash_BYTES];
    crypto_shorthash(out, (const unsigned char *)key, len, t->sip_key);
    uint64_t h = 0;
    for (size_t i = 0; i < sizeof out; i++)
        h = h << 8 | out[i];
    return h ^ (uint64_t)kind;
}

static void lru_unlink(ims_throttle *t, thr_entry *e)
{
    if (e->lru_prev)
        e->lru_prev->lru_next = e->lru_next;
    else
        t->lru_head = e->lru_next;
    if (e->lru_next)
        e->lru_next->lru_prev = e->lru_prev;
    else
        t->lru_tail = e->lru_prev;
    e->lru_prev = e->lru_next = NULL;
}

static void lru_push_front(ims_throttle *t, thr_entry *e)
{
    e->lru_prev = NULL;
    e->lru_next = t->lru_head;
    if (t->lru_head)
        t->lru_head->lru_prev = e;
    else
        t->lru_tail = e;
    t->lru_head = e;
}

static void touch(ims_throttle *t, thr_entry *e)
{
    if (t->lru_head != e) {
        lru_unlink(t, e);
        lru_push_front(t, e);
    }
}

static void remove_entry(ims_throttle *t, thr_entry *e)
{
    thr_entry **pp = &t->buckets[e->hash & t->mask];
    while (*pp != e)
        pp = &(*pp)->hnext;
    *pp = e->hnext;
    lru_unlink(t, e);
    t->count--;
    free(e);
}

static size_t clamp_key(const char *key)
{
    return strnlen(key, IMS_THROTTLE_KEY_MAX);
}

static thr_entry *find(ims_throttle *t, int kind, const char *key)
{
    size_t len = clamp_key(key);
    uint64_t h = key_hash(t, kind, key, len);
    for (thr_entry *e = t->buckets[h & t->mask]; e; e = e->hnext) {
        if (e->hash == h && e->kind == kind && e->key_len == len &&
            memcmp(entry_key(t, e), key, len) == 0)
            return e;
    }
    return NULL;
}

/* The entry for key, created (evicting the least recently used) when missing; NULL only when
 * out of memory. */
static thr_entry *find_or_add(ims_throttle *t, int kind, const char *key)
{
    thr_entry *e = find(t, kind, key);
    if (e) {
        touch(t, e);
        return e;
    }
    while (t->count >= t->opt.max_entries && t->lru_tail)
        remove_entry(t, t->lru_tail);
    size_t len = clamp_key(key);
    size_t ring = ring_len(t, kind);
    e = calloc(1, sizeof *e + ring * sizeof e->ring[0] + len);
    if (!e)
        return NULL;
    e->kind = (uint8_t)kind;
    e->key_len = (uint16_t)len;
    e->hash = key_hash(t, kind, key, len);
    memcpy((char *)(e->ring + ring), key, len);
    thr_entry **bucket = &t->buckets[e->hash & t->mask];
    e->hnext = *bucket;
    *bucket = e;
    lru_push_front(t, e);
    t->count++;
    return e;
}

/* ---- policy ------------------------------------------------------------------------------ */

static uint32_t clamp_u32(uint64_t v)
{
    return v > UINT32_MAX ? UINT32_MAX : (uint32_t)v;
}

static int user_free(const ims_throttle *t)
{
    return t->opt.user_free_failures > 0 ? t->opt.user_free_failures : 1;
}

/* How long after its last failure the account must wait now (0: not at all). */
static uint64_t user_wait(const ims_throttle *t, const thr_entry *e)
{
    uint32_t free_n = (uint32_t)user_free(t);
    if (t->opt.user_backoff_ms == 0 || e->fails < free_n)
        return 0;
    uint32_t k = e->fails - free_n;
    uint64_t cap = t->opt.user_backoff_max_ms;
    /* backoff < 2^32, so below 2^32 doublings nothing overflows 64 bits */
    uint64_t w = k < 32 ? (uint64_t)t->opt.user_backoff_ms << k : UINT64_MAX;
    return w < cap ? w : cap;
}

int ims_throttle_check(ims_throttle *t, const char *addr, const char *user, uint64_t now_ms,
                       uint32_t *retry_after_ms)
{
    if (retry_after_ms)
        *retry_after_ms = 0;
    if (!t || !addr)
        return IMP_ERR_INVAL;

    if (t->opt.addr_max_failures > 0) {
        thr_entry *e = find(t, KIND_ADDR, addr);
        if (e) {
            touch(t, e);
            if (now_ms < e->banned_until) {
                if (retry_after_ms)
                    *retry_after_ms = clamp_u32(e->banned_until - now_ms);
                return IMP_ERR_BANNED;
            }
        }
    }
    if (user) {
        thr_entry *e = find(t, KIND_USER, user);
        if (e) {
            touch(t, e);
            uint64_t wait = user_wait(t, e);
            uint64_t since = now_ms > e->last_fail ? now_ms - e->last_fail : 0;
            if (since < wait) {
                if (retry_after_ms)
                    *retry_after_ms = clamp_u32(wait - since);
                return IMP_ERR_AUTH_BACKOFF;
            }
        }
    }
    return IMP_ERR_NONE;
}

static void addr_failure(ims_throttle *t, thr_entry *e, uint64_t now_ms)
{
    uint32_t n = (uint32_t)t->opt.addr_max_failures;
    e->ring[e->ring_pos] = now_ms;
    e->ring_pos = (e->ring_pos + 1) % n;
    if (e->n_fail < n)
        e->n_fail++;
    if (e->n_fail < n)
        return;
    /* The ring is full: ring_pos now points at the oldest of the last n failures. */
    uint64_t oldest = e->ring[e->ring_pos];
    uint64_t span = now_ms > oldest ? now_ms - oldest : 0;
    if (span < t->opt.addr_window_ms) {
        e->banned_until =
            now_ms > UINT64_MAX - t->opt.addr_ban_ms ? UINT64_MAX : now_ms + t->opt.addr_ban_ms;
        e->n_fail = 0;
        e->ring_pos = 0;
    }
}

void ims_throttle_record(ims_throttle *t, const char *addr, const char *user, int ok,
                         uint64_t now_ms)
{
    if (!t || !addr)
        return;
    if (!ok && t->opt.addr_max_failures > 0) {
        thr_entry *e = find_or_add(t, KIND_ADDR, addr);
        if (e)
            addr_failure(t, e, now_ms);
    }
    if (!user)
        return;
    if (ok) {
        thr_entry *e = find(t, KIND_USER, user);
        if (e)
            remove_entry(t, e);
        return;
    }
    thr_entry *e = find_or_add(t, KIND_USER, user);
    if (e) {
        if (e->fails < UINT32_MAX)
            e->fails++;
        e->last_fail = now_ms;
    }
}
