/* Unit tests for server/config.c: defaults, every key (value, range, errors), the file format
 * (comments, sections, CRLF, line numbers, overlong lines), listen replacement, cross-field
 * validation, dump round-trips, addresses, and the sample dist/imd.conf and man/imd.conf.5
 * against the key table (so that the documentation cannot drift from the code). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <imp/imp.h>

#include "config.h"

#define KiB 1024ull
#define MiB (1024ull * 1024)
#define GiB (1024ull * 1024 * 1024)

/* ---- helpers ------------------------------------------------------------------------------ */

static char tmpdir[64];
static int nfiles;

static int setup_dir(void **state)
{
    (void)state;
    strcpy(tmpdir, "/tmp/imd-test-config-XXXXXX");
    if (!mkdtemp(tmpdir))
        return -1;
    return 0;
}

static int teardown_dir(void **state)
{
    (void)state;
    char p[128];
    for (int i = 0; i < nfiles; i++) {
        snprintf(p, sizeof p, "%s/f%d.conf", tmpdir, i);
        unlink(p);
    }
    return rmdir(tmpdir);
}

/* Writes n bytes to a new file under tmpdir; returns its path (static storage, one per call
 * until the next 8 calls). */
static const char *write_file_n(const char *data, size_t n)
{
    static char paths[8][128];
    char *p = paths[nfiles % 8];
    snprintf(p, 128, "%s/f%d.conf", tmpdir, nfiles);
    nfiles++;
    FILE *f = fopen(p, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, n, f), n);
    assert_int_equal(fclose(f), 0);
    return p;
}

static const char *write_file(const char *data)
{
    return write_file_n(data, strlen(data));
}

static uint64_t read_field(const ims_cfg *c, size_t off, size_t size)
{
    const unsigned char *p = (const unsigned char *)c + off;
    if (size == 4) {
        uint32_t v;
        memcpy(&v, p, 4);
        return v;
    }
    assert_int_equal(size, 8);
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

/* err starts with "key: " */
static void assert_names_key(const char *err, const char *key)
{
    size_t n = strlen(key);
    if (strncmp(err, key, n) != 0 || err[n] != ':' || err[n + 1] != ' ')
        fail_msg("error for %s does not name it: \"%s\"", key, err);
}

static void assert_contains(const char *s, const char *sub)
{
    if (!strstr(s, sub))
        fail_msg("\"%s\" does not contain \"%s\"", s, sub);
}

/* Every field compared by name (not memcmp: a missed field shows which one). */
static void assert_cfg_equal(const ims_cfg *a, const ims_cfg *b)
{
    assert_int_equal(a->n_listen, b->n_listen);
    for (int i = 0; i < a->n_listen; i++)
        assert_string_equal(a->listen[i], b->listen[i]);
    assert_string_equal(a->metrics_listen, b->metrics_listen);
    assert_int_equal(a->n_tls_listen, b->n_tls_listen);
    for (int i = 0; i < a->n_tls_listen; i++)
        assert_string_equal(a->tls_listen[i], b->tls_listen[i]);
    assert_string_equal(a->tls_cert, b->tls_cert);
    assert_string_equal(a->tls_key, b->tls_key);
    assert_string_equal(a->tls_min_version, b->tls_min_version);
    assert_string_equal(a->data_dir, b->data_dir);
    assert_string_equal(a->log_level, b->log_level);
    assert_string_equal(a->log_format, b->log_format);
    assert_string_equal(a->loop_priority, b->loop_priority);
#define EQ(f)                                                                                  \
    do {                                                                                       \
        if (a->f != b->f)                                                                      \
            fail_msg(#f ": %llu != %llu", (unsigned long long)a->f, (unsigned long long)b->f); \
    } while (0)
    EQ(tls_handshake_timeout_ms);
    EQ(allow_insecure_listen);
    EQ(registration);
    EQ(hash_opslimit);
    EQ(hash_memlimit);
    EQ(hash_threads);
    EQ(hash_queue);
    EQ(loop_probe_ms);
    EQ(busy_poll_us);
    EQ(token_ttl_ms);
    EQ(max_sessions_per_user);
    EQ(addr_max_failures);
    EQ(addr_window_ms);
    EQ(addr_ban_ms);
    EQ(user_free_failures);
    EQ(user_backoff_ms);
    EQ(user_backoff_max_ms);
    EQ(max_frame);
    EQ(max_frame_preauth);
    EQ(auth_timeout_ms);
    EQ(ping_interval_ms);
    EQ(ping_max_missed);
    EQ(output_soft);
    EQ(output_soft_ms);
    EQ(output_hard);
    EQ(msg_rate);
    EQ(msg_burst);
    EQ(max_connections);
    EQ(max_connections_per_addr);
    EQ(offline_quota);
    EQ(room_history);
    EQ(page_size);
    EQ(page_max);
    EQ(sync_full);
    EQ(startup_full_check);
    EQ(fsync_thread);
    EQ(dedupe_window_ms);
    EQ(shutdown_grace_ms);
#undef EQ
}

static void set_ok(ims_cfg *c, const char *key, const char *value)
{
    char err[256] = "";
    if (ims_cfg_set(c, key, value, err, sizeof err) != 0)
        fail_msg("%s = %s: %s", key, value, err);
}

/* ---- the numeric keys: field, a valid value, both ends of the range and just past them ---- */

#define F(f) #f, offsetof(ims_cfg, f), sizeof(((ims_cfg *)0)->f)

typedef struct numcase {
    const char *key;
    size_t off, size;
    const char *val; /* valid, not the default */
    uint64_t want;
    const char *min_s; /* the smallest accepted value */
    uint64_t min;
    const char *below; /* just below the minimum; NULL when the minimum is 0 */
    const char *max_s; /* the largest accepted value */
    uint64_t max;
    const char *above; /* just above the maximum */
    char kind;         /* 's' size, 'd' duration, 'i' integer */
} numcase;

static const numcase nums[] = {
    {F(tls_handshake_timeout_ms), "2s", 2000, "1ms", 1, "0", "4294967295", 4294967295u,
     "4294967296", 'd'},
    {F(hash_opslimit), "3", 3, "1", 1, "0", "4294967295", 4294967295u, "4294967296", 'i'},
    {F(hash_memlimit), "32m", 32 * MiB, "8MiB", 8 * MiB, "8388607", "4g", 4 * GiB, "4294967297",
     's'},
    {F(hash_threads), "4", 4, "1", 1, "0", "64", 64, "65", 'i'},
    {F(hash_queue), "128", 128, "1", 1, "0", "1000000", 1000000, "1000001", 'i'},
    {F(loop_probe_ms), "10ms", 10, "0", 0, NULL, "1m", 60000, "60001", 'd'},
    {F(busy_poll_us), "50", 50, "0", 0, NULL, "100000", 100000, "100001", 'i'},
    {F(token_ttl_ms), "7d", 604800000, "1s", 1000, "999", "4294967295", 4294967295u, "4294967296",
     'd'},
    {F(max_sessions_per_user), "4", 4, "1", 1, "0", "100000", 100000, "100001", 'i'},
    {F(addr_max_failures), "5", 5, "1", 1, "0", "1000", 1000, "1001", 'i'},
    {F(addr_window_ms), "2m", 120000, "1ms", 1, "0", "4294967295ms", 4294967295u, "50d", 'd'},
    {F(addr_ban_ms), "1h", 3600000, "0", 0, NULL, "49d", 4233600000u, "4294967296", 'd'},
    {F(user_free_failures), "5", 5, "0", 0, NULL, "1000000", 1000000, "1000001", 'i'},
    {F(user_backoff_ms), "500ms", 500, "0", 0, NULL, "4294967295", 4294967295u, "4294967296ms",
     'd'},
    {F(user_backoff_max_ms), "2m", 120000, "0s", 0, NULL, "4294967295", 4294967295u, "4294967296",
     'd'},
    {F(max_frame), "64k", 64 * KiB, "4096", 4096, "4095", "16777136", 16777136, "16m", 's'},
    {F(max_frame_preauth), "2KiB", 2048, "1k", 1024, "1023", "16MiB", 16 * MiB, "16385k", 's'},
    {F(auth_timeout_ms), "5s", 5000, "1", 1, "0", "4294967295", 4294967295u, "4294967296", 'd'},
    {F(ping_interval_ms), "1m", 60000, "1ms", 1, "0ms", "4294967295", 4294967295u, "4294968s", 'd'},
    {F(ping_max_missed), "3", 3, "1", 1, "0", "1000", 1000, "1001", 'i'},
    {F(output_soft), "2m", 2 * MiB, "1k", 1024, "1023", "4g", 4 * GiB, "4294967297", 's'},
    {F(output_soft_ms), "20s", 20000, "0", 0, NULL, "4294967295", 4294967295u, "4294967296", 'd'},
    {F(output_hard), "16M", 16 * MiB, "1K", 1024, "1023", "4G", 4 * GiB, "4194305k", 's'},
    {F(msg_rate), "500", 500, "0", 0, NULL, "10000000", 10000000, "10000001", 'i'},
    {F(msg_burst), "1000", 1000, "1", 1, "0", "100000000", 100000000, "100000001", 'i'},
    {F(max_connections), "50", 50, "1", 1, "0", "10000000", 10000000, "10000001", 'i'},
    {F(max_connections_per_addr), "10", 10, "1", 1, "0", "10000000", 10000000, "10000001", 'i'},
    {F(offline_quota), "500", 500, "1", 1, "0", "1000000000", 1000000000, "1000000001", 'i'},
    {F(room_history), "50", 50, "0", 0, NULL, "100000000", 100000000, "100000001", 'i'},
    {F(page_size), "10", 10, "1", 1, "0", "1000000", 1000000, "1000001", 'i'},
    {F(page_max), "20", 20, "1", 1, "0", "1000000", 1000000, "1000001", 'i'},
    {F(shutdown_grace_ms), "10s", 10000, "0", 0, NULL, "4294967295", 4294967295u, "4294967296",
     'd'},
    {F(dedupe_window_ms), "2h", 7200000, "0", 0, NULL, "4294967295", 4294967295u, "4294967296",
     'd'},
};
#define NNUMS (sizeof nums / sizeof nums[0])

static const char *const other_keys[] = {"listen",
                                         "metrics_listen",
                                         "tls_listen",
                                         "tls_cert",
                                         "tls_key",
                                         "tls_min_version",
                                         "allow_insecure_listen",
                                         "startup_full_check",
                                         "data_dir",
                                         "log_level",
                                         "log_format",
                                         "registration",
                                         "sync_full",
                                         "fsync_thread",
                                         "loop_priority"};
#define NOTHER (sizeof other_keys / sizeof other_keys[0])

/* A config in which every key differs from the default. */
static void perturbed(ims_cfg *c)
{
    ims_cfg_default(c);
    for (size_t i = 0; i < NNUMS; i++)
        set_ok(c, nums[i].key, nums[i].val);
    ims_cfg_listen_reset(c);
    set_ok(c, "listen", "[::1]:7601");
    set_ok(c, "listen", "unix:/run/imd/imd.sock");
    set_ok(c, "metrics_listen", "127.0.0.1:9100");
    set_ok(c, "tls_listen", "127.0.0.1:7643");
    set_ok(c, "tls_listen", "[::1]:7643");
    set_ok(c, "tls_cert", "/etc/imd/cert.pem");
    set_ok(c, "tls_key", "/etc/imd/key.pem");
    set_ok(c, "tls_min_version", "1.3");
    set_ok(c, "allow_insecure_listen", "yes");
    set_ok(c, "data_dir", "/var/lib/imd");
    set_ok(c, "log_level", "debug");
    set_ok(c, "log_format", "json");
    set_ok(c, "loop_priority", "high"); /* realtime is refused with busy_poll_us */
    set_ok(c, "registration", "no");
    set_ok(c, "sync_full", "off");
}

/* ---- defaults ----------------------------------------------------------------------------- */

static void test_defaults(void **state)
{
    (void)state;
    ims_cfg c;
    memset(&c, 0xa5, sizeof c);
    ims_cfg_default(&c);
    assert_int_equal(c.n_listen, 1);
    assert_string_equal(c.listen[0], "127.0.0.1:7600");
    assert_string_equal(c.metrics_listen, "");
    assert_int_equal(c.n_tls_listen, 0);
    assert_string_equal(c.tls_cert, "");
    assert_string_equal(c.tls_key, "");
    assert_string_equal(c.tls_min_version, "1.2");
    assert_int_equal(c.tls_handshake_timeout_ms, 5000);
    assert_int_equal(c.allow_insecure_listen, 0);
    assert_string_equal(c.data_dir, "./imd-data");
    assert_string_equal(c.log_level, "info");
    assert_string_equal(c.log_format, "text");
    assert_int_equal(c.registration, 1);
    assert_int_equal(c.hash_opslimit, 2);
    assert_int_equal(c.hash_memlimit, 19 * MiB);
    assert_int_equal(c.hash_threads, 2);
    assert_int_equal(c.hash_queue, 64);
    assert_int_equal(c.loop_probe_ms, 100);
    assert_string_equal(c.loop_priority, "normal");
    assert_int_equal(c.busy_poll_us, 0);
    assert_int_equal(c.token_ttl_ms, 30u * 24 * 3600 * 1000);
    assert_int_equal(c.max_sessions_per_user, 16);
    assert_int_equal(c.addr_max_failures, 10);
    assert_int_equal(c.addr_window_ms, 60000);
    assert_int_equal(c.addr_ban_ms, 300000);
    assert_int_equal(c.user_free_failures, 3);
    assert_int_equal(c.user_backoff_ms, 1000);
    assert_int_equal(c.user_backoff_max_ms, 60000);
    assert_int_equal(c.max_frame, 1 * MiB);
    assert_int_equal(c.max_frame_preauth, 4096);
    assert_int_equal(c.auth_timeout_ms, 10000);
    assert_int_equal(c.ping_interval_ms, 30000);
    assert_int_equal(c.ping_max_missed, 2);
    assert_int_equal(c.output_soft, 1 * MiB);
    assert_int_equal(c.output_soft_ms, 10000);
    assert_int_equal(c.output_hard, 8 * MiB);
    assert_int_equal(c.msg_rate, 10000);
    assert_int_equal(c.msg_burst, 20000);
    assert_int_equal(c.max_connections, 10000);
    assert_int_equal(c.max_connections_per_addr, 1000);
    assert_int_equal(c.offline_quota, 10000);
    assert_int_equal(c.room_history, 1000);
    assert_int_equal(c.page_size, 100);
    assert_int_equal(c.page_max, 1000);
    assert_int_equal(c.sync_full, 1);
    assert_int_equal(c.startup_full_check, 1);
    assert_int_equal(c.fsync_thread, 1);
    assert_int_equal(c.dedupe_window_ms, 24u * 3600 * 1000);
    assert_int_equal(c.shutdown_grace_ms, 5000);
    char err[256] = "";
    assert_int_equal(ims_cfg_validate(&c, err, sizeof err), 0);
}

/* ---- the key table ------------------------------------------------------------------------ */

static void test_every_key_known(void **state)
{
    (void)state;
    size_t n = 0;
    const char *k;
    while ((k = ims_cfg_key(n)) != NULL) {
        int found = 0;
        for (size_t i = 0; i < NNUMS; i++)
            found += strcmp(nums[i].key, k) == 0;
        for (size_t i = 0; i < NOTHER; i++)
            found += strcmp(other_keys[i], k) == 0;
        if (found != 1)
            fail_msg("table key %s is not covered by this test", k);
        const char *h = ims_cfg_help(k);
        assert_non_null(h);
        assert_true(strlen(h) > 10 && strlen(h) < 98);
        assert_null(strchr(h, '\n'));
        assert_int_not_equal(ims_cfg_reloadable(k), -1);
        for (size_t j = 0; j < n; j++)
            assert_string_not_equal(ims_cfg_key(j), k);
        n++;
    }
    assert_int_equal(n, NNUMS + NOTHER);
    assert_null(ims_cfg_key(n + 1));
    assert_null(ims_cfg_help("nope"));
}

static void test_reloadable(void **state)
{
    (void)state;
    assert_int_equal(ims_cfg_reloadable("listen"), 0);
    assert_int_equal(ims_cfg_reloadable("data_dir"), 0);
    assert_int_equal(ims_cfg_reloadable("metrics_listen"), 0);
    assert_int_equal(ims_cfg_reloadable("hash_threads"), 0);
    assert_int_equal(ims_cfg_reloadable("loop_probe_ms"), 0);
    assert_int_equal(ims_cfg_reloadable("loop_priority"), 0);
    assert_int_equal(ims_cfg_reloadable("busy_poll_us"), 0);
    assert_int_equal(ims_cfg_reloadable("sync_full"), 0);
    assert_int_equal(ims_cfg_reloadable("tls_listen"), 0);
    assert_int_equal(ims_cfg_reloadable("allow_insecure_listen"), 0);
    assert_int_equal(ims_cfg_reloadable("tls_cert"), 1);
    assert_int_equal(ims_cfg_reloadable("tls_key"), 1);
    assert_int_equal(ims_cfg_reloadable("tls_min_version"), 1);
    assert_int_equal(ims_cfg_reloadable("tls_handshake_timeout_ms"), 1);
    assert_int_equal(ims_cfg_reloadable("log_level"), 1);
    assert_int_equal(ims_cfg_reloadable("registration"), 1);
    assert_int_equal(ims_cfg_reloadable("max_frame"), 1);
    assert_int_equal(ims_cfg_reloadable("msg_rate"), 1);
    assert_int_equal(ims_cfg_reloadable("offline_quota"), 1);
    assert_int_equal(ims_cfg_reloadable("ping_interval_ms"), 1);
    assert_int_equal(ims_cfg_reloadable("frobnicate"), -1);
    assert_int_equal(ims_cfg_reloadable(""), -1);
}

static void test_numeric_keys(void **state)
{
    (void)state;
    for (size_t i = 0; i < NNUMS; i++) {
        const numcase *t = &nums[i];
        ims_cfg c, before;
        char err[256];
        ims_cfg_default(&c);
        assert_int_not_equal(read_field(&c, t->off, t->size), t->want);
        set_ok(&c, t->key, t->val);
        if (read_field(&c, t->off, t->size) != t->want)
            fail_msg("%s = %s gave %llu", t->key, t->val,
                     (unsigned long long)read_field(&c, t->off, t->size));
        set_ok(&c, t->key, t->min_s);
        assert_int_equal(read_field(&c, t->off, t->size), t->min);
        set_ok(&c, t->key, t->max_s);
        assert_int_equal(read_field(&c, t->off, t->size), t->max);

        const char *bad[] = {t->below,
                             t->above,
                             "-1",
                             "",
                             "  ",
                             "12q",
                             "1.5",
                             "0x10",
                             "+5",
                             "5 5",
                             "99999999999999999999999",
                             "18446744073709551616",
                             "17179869184g",
                             "1 kb",
                             "one",
                             "1e3",
                             "\t",
                             "--1"};
        for (size_t j = 0; j < sizeof bad / sizeof bad[0]; j++) {
            if (!bad[j])
                continue;
            before = c;
            err[0] = 0;
            if (ims_cfg_set(&c, t->key, bad[j], err, sizeof err) == 0)
                fail_msg("%s = \"%s\" accepted", t->key, bad[j]);
            assert_names_key(err, t->key);
            assert_memory_equal(&before, &c, sizeof c);
        }
        /* the messages say what is wrong */
        assert_int_equal(ims_cfg_set(&c, t->key, "-1", err, sizeof err), -1);
        assert_contains(err, "negative");
        assert_int_equal(ims_cfg_set(&c, t->key, "99999999999999999999999", err, sizeof err), -1);
        assert_contains(err, "too large");
        assert_int_equal(ims_cfg_set(&c, t->key, t->above, err, sizeof err), -1);
        assert_contains(err, "out of range");
        assert_contains(err, t->above);
        assert_int_equal(ims_cfg_set(&c, t->key, "", err, sizeof err), -1);
        assert_contains(err, "missing value");
        assert_int_equal(ims_cfg_set(&c, t->key, "12q", err, sizeof err), -1);
        assert_contains(err, t->kind == 's'   ? "not a size: 12q"
                             : t->kind == 'd' ? "not a duration: 12q"
                                              : "not an integer: 12q");
    }
}

static void test_size_suffixes(void **state)
{
    (void)state;
    static const struct {
        const char *s;
        uint64_t v;
    } ok[] = {{"4096", 4096},      {"8k", 8 * KiB}, {"8K", 8 * KiB}, {"8KiB", 8 * KiB},
              {"1m", MiB},         {"1M", MiB},     {"1MiB", MiB},   {"15 MiB", 15 * MiB},
              {"0016k", 16 * KiB}, {"4k", 4 * KiB}};
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        ims_cfg c;
        ims_cfg_default(&c);
        set_ok(&c, "max_frame", ok[i].s);
        assert_int_equal(c.max_frame, ok[i].v);
    }
    ims_cfg c;
    ims_cfg_default(&c);
    set_ok(&c, "hash_memlimit", "1g");
    assert_int_equal(c.hash_memlimit, GiB);
    set_ok(&c, "hash_memlimit", "2GiB");
    assert_int_equal(c.hash_memlimit, 2 * GiB);
    set_ok(&c, "hash_memlimit", "3G");
    assert_int_equal(c.hash_memlimit, 3 * GiB);
    const char *bad[] = {"8kb", "8KB", "8kib", "8ki", "8 k b", "8t", "8s", "8ms", "k", "8k8"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char err[256];
        if (ims_cfg_set(&c, "max_frame", bad[i], err, sizeof err) == 0)
            fail_msg("max_frame = %s accepted", bad[i]);
        assert_names_key(err, "max_frame");
        assert_contains(err, "not a size");
    }
}

static void test_duration_suffixes(void **state)
{
    (void)state;
    static const struct {
        const char *s;
        uint32_t v;
    } ok[] = {{"250", 250},
              {"250ms", 250},
              {"3s", 3000},
              {"2m", 120000},
              {"1h", 3600000},
              {"2d", 172800000},
              {"10 s", 10000},
              {"0", 0},
              {"4294967295ms", 4294967295u},
              {"4294967s", 4294967000u}};
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        ims_cfg c;
        ims_cfg_default(&c);
        set_ok(&c, "shutdown_grace_ms", ok[i].s);
        assert_int_equal(c.shutdown_grace_ms, ok[i].v);
    }
    const char *bad[] = {"1M",  "1S",    "1sec", "1k",    "1.5s",       "s",
                         "1hm", "1 h 2", "1mss", "5000d", "4294967296", "4294968s"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ims_cfg c;
        char err[256];
        ims_cfg_default(&c);
        if (ims_cfg_set(&c, "shutdown_grace_ms", bad[i], err, sizeof err) == 0)
            fail_msg("shutdown_grace_ms = %s accepted", bad[i]);
        assert_names_key(err, "shutdown_grace_ms");
    }
}

static void test_bool_keys(void **state)
{
    (void)state;
    static const struct {
        const char *s;
        int v;
    } ok[] = {{"yes", 1}, {"no", 0}, {"true", 1}, {"false", 0}, {"on", 1},
              {"off", 0}, {"1", 1},  {"0", 0},    {"YES", 1},   {"Off", 0}};
    const char *keys[] = {"registration", "sync_full", "allow_insecure_listen",
                          "startup_full_check", "fsync_thread"};
    for (size_t k = 0; k < 5; k++) {
        for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
            ims_cfg c;
            ims_cfg_default(&c);
            int *f = k == 0   ? &c.registration
                     : k == 1 ? &c.sync_full
                     : k == 2 ? &c.allow_insecure_listen
                     : k == 3 ? &c.startup_full_check
                              : &c.fsync_thread;
            *f = !ok[i].v;
            set_ok(&c, keys[k], ok[i].s);
            assert_int_equal(*f, ok[i].v);
        }
        const char *bad[] = {"maybe", "2", "", "y", "-1", "yes please", "10"};
        for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
            ims_cfg c;
            char err[256];
            ims_cfg_default(&c);
            if (ims_cfg_set(&c, keys[k], bad[i], err, sizeof err) == 0)
                fail_msg("%s = %s accepted", keys[k], bad[i]);
            assert_names_key(err, keys[k]);
        }
    }
}

static void test_enum_keys(void **state)
{
    (void)state;
    ims_cfg c;
    char err[256];
    ims_cfg_default(&c);
    const char *levels[] = {"error", "warn", "info", "debug"};
    for (size_t i = 0; i < 4; i++) {
        set_ok(&c, "log_level", levels[i]);
        assert_string_equal(c.log_level, levels[i]);
    }
    set_ok(&c, "log_level", "WARN");
    assert_string_equal(c.log_level, "warn");
    set_ok(&c, "log_format", "json");
    assert_string_equal(c.log_format, "json");
    set_ok(&c, "log_format", "text");
    assert_string_equal(c.log_format, "text");
    assert_int_equal(ims_cfg_set(&c, "log_level", "loud", err, sizeof err), -1);
    assert_names_key(err, "log_level");
    assert_contains(err, "error, warn, info, debug");
    assert_contains(err, "loud");
    assert_int_equal(ims_cfg_set(&c, "log_format", "xml", err, sizeof err), -1);
    assert_names_key(err, "log_format");
    assert_contains(err, "text, json");
    assert_int_equal(ims_cfg_set(&c, "log_level", "", err, sizeof err), -1);
    /* loop_priority: the three names, any case, stored in lower case */
    set_ok(&c, "loop_priority", "realtime");
    assert_string_equal(c.loop_priority, "realtime");
    set_ok(&c, "loop_priority", "HIGH");
    assert_string_equal(c.loop_priority, "high");
    set_ok(&c, "loop_priority", "normal");
    assert_string_equal(c.loop_priority, "normal");
    assert_int_equal(ims_cfg_set(&c, "loop_priority", "fifo", err, sizeof err), -1);
    assert_names_key(err, "loop_priority");
    assert_contains(err, "normal, high, realtime");
    assert_contains(err, "fifo");
    assert_int_equal(ims_cfg_set(&c, "loop_priority", "", err, sizeof err), -1);
    assert_string_equal(c.loop_priority, "normal");
    /* a real-time loop must not busy-poll (it would starve its CPU); each alone is valid */
    set_ok(&c, "busy_poll_us", "200");
    assert_int_equal(ims_cfg_validate(&c, err, sizeof err), 0);
    set_ok(&c, "loop_priority", "high");
    assert_int_equal(ims_cfg_validate(&c, err, sizeof err), 0);
    set_ok(&c, "loop_priority", "realtime");
    assert_int_equal(ims_cfg_validate(&c, err, sizeof err), -1);
    assert_contains(err, "busy_poll_us");
    assert_contains(err, "realtime");
    set_ok(&c, "busy_poll_us", "0");
    assert_int_equal(ims_cfg_validate(&c, err, sizeof err), 0);
    set_ok(&c, "loop_priority", "normal");
    assert_int_equal(ims_cfg_set(&c, "log_level", "warning", err, sizeof err), -1);
    assert_int_equal(ims_cfg_set(&c, "log_level", "info ", err, sizeof err), -1);
}

static void test_string_keys(void **state)
{
    (void)state;
    ims_cfg c;
    char err[256];
    char big[600];
    ims_cfg_default(&c);
    set_ok(&c, "data_dir", "/var/lib/imd data");
    assert_string_equal(c.data_dir, "/var/lib/imd data");
    memset(big, 'd', sizeof big);
    big[511] = 0;
    set_ok(&c, "data_dir", big);
    assert_string_equal(c.data_dir, big);
    big[511] = 'd';
    big[512] = 0;
    assert_int_equal(ims_cfg_set(&c, "data_dir", big, err, sizeof err), -1);
    assert_names_key(err, "data_dir");
    assert_contains(err, "too long");
    assert_int_equal(ims_cfg_set(&c, "data_dir", "", err, sizeof err), -1);
    assert_names_key(err, "data_dir");
    assert_contains(err, "empty");
    assert_int_equal(ims_cfg_set(&c, "data_dir", "a\x01z", err, sizeof err), -1);
    assert_names_key(err, "data_dir");
    assert_contains(err, "control character");

    set_ok(&c, "metrics_listen", "127.0.0.1:9100");
    assert_string_equal(c.metrics_listen, "127.0.0.1:9100");
    set_ok(&c, "metrics_listen", "[::1]:0");
    assert_string_equal(c.metrics_listen, "[::1]:0");
    set_ok(&c, "metrics_listen", "");
    assert_string_equal(c.metrics_listen, "");
    const char *bad[] = {"unix:/tmp/m.sock", "junk", "127.0.0.1:70000", "127.0.0.1"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        if (ims_cfg_set(&c, "metrics_listen", bad[i], err, sizeof err) == 0)
            fail_msg("metrics_listen = %s accepted", bad[i]);
        assert_names_key(err, "metrics_listen");
    }
}

static void test_unknown_key(void **state)
{
    (void)state;
    ims_cfg c;
    char err[256];
    ims_cfg_default(&c);
    assert_int_equal(ims_cfg_set(&c, "frobnicate", "1", err, sizeof err), -1);
    assert_string_equal(err, "frobnicate: unknown key");
    assert_int_equal(ims_cfg_set(&c, "Max_Frame", "4096", err, sizeof err), -1);
    assert_names_key(err, "Max_Frame");
    assert_int_equal(ims_cfg_set(&c, "", "1", err, sizeof err), -1);
    assert_contains(err, "unknown key");
    /* a small error buffer is filled, never overrun, and terminated */
    char small[9];
    memset(small, 'x', sizeof small);
    assert_int_equal(ims_cfg_set(&c, "frobnicate", "1", small, 8), -1);
    assert_int_equal(small[7], 0);
    assert_int_equal(small[8], 'x');
    assert_int_equal(ims_cfg_set(&c, "frobnicate", "1", NULL, 0), -1);
}

/* ---- listen ------------------------------------------------------------------------------- */

static void test_listen_set(void **state)
{
    (void)state;
    ims_cfg c;
    char err[256];
    ims_cfg_default(&c);
    set_ok(&c, "listen", "[::1]:7600");
    assert_int_equal(c.n_listen, 2);
    assert_string_equal(c.listen[0], "127.0.0.1:7600");
    assert_string_equal(c.listen[1], "[::1]:7600");
    ims_cfg_listen_reset(&c);
    assert_int_equal(c.n_listen, 0);
    assert_int_equal(ims_cfg_validate(&c, err, sizeof err), -1);
    assert_contains(err, "listen");
    for (int i = 0; i < IMS_MAX_LISTEN; i++) {
        char a[32];
        snprintf(a, sizeof a, "127.0.0.1:%d", 7000 + i);
        set_ok(&c, "listen", a);
    }
    assert_int_equal(c.n_listen, IMS_MAX_LISTEN);
    assert_int_equal(ims_cfg_set(&c, "listen", "127.0.0.1:9999", err, sizeof err), -1);
    assert_names_key(err, "listen");
    assert_contains(err, "too many");
    ims_cfg_listen_reset(&c);
    set_ok(&c, "listen", "127.0.0.1:1");
    assert_int_equal(ims_cfg_set(&c, "listen", "127.0.0.1:1", err, sizeof err), -1);
    assert_contains(err, "duplicate");
    /* port 0 picks a fresh port each time: never a duplicate, not even of metrics_listen */
    ims_cfg_listen_reset(&c);
    set_ok(&c, "listen", "127.0.0.1:0");
    set_ok(&c, "listen", "127.0.0.1:0");
    set_ok(&c, "metrics_listen", "127.0.0.1:0");
    assert_int_equal(ims_cfg_validate(&c, err, sizeof err), 0);
    set_ok(&c, "metrics_listen", "");
    ims_cfg_listen_reset(&c);
    set_ok(&c, "listen", "127.0.0.1:1");
    assert_int_equal(ims_cfg_set(&c, "listen", "127.0.0.1:99999", err, sizeof err), -1);
    assert_names_key(err, "listen");
    assert_contains(err, "127.0.0.1:99999");
    assert_contains(err, "port");
    assert_int_equal(ims_cfg_set(&c, "listen", "", err, sizeof err), -1);
    assert_names_key(err, "listen");
    assert_int_equal(c.n_listen, 1);
    char big[200];
    memset(big, 'a', sizeof big);
    memcpy(big, "unix:/", 6);
    big[130] = 0;
    assert_int_equal(ims_cfg_set(&c, "listen", big, err, sizeof err), -1);
    assert_names_key(err, "listen");
}

static void test_listen_file_replaces(void **state)
{
    (void)state;
    ims_cfg c;
    char err[512];
    /* no listen in the file: the default stays */
    ims_cfg_default(&c);
    assert_int_equal(ims_cfg_load_file(&c, write_file("max_frame = 8k\n"), err, sizeof err), 0);
    assert_int_equal(c.n_listen, 1);
    assert_string_equal(c.listen[0], "127.0.0.1:7600");
    /* the file's listens replace the default */
    const char *f = write_file("listen = [::1]:1\nmax_frame = 8k\nlisten = unix:/tmp/x.sock\n");
    assert_int_equal(ims_cfg_load_file(&c, f, err, sizeof err), 0);
    assert_int_equal(c.n_listen, 2);
    assert_string_equal(c.listen[0], "[::1]:1");
    assert_string_equal(c.listen[1], "unix:/tmp/x.sock");
    /* a second file with listens replaces the first file's */
    assert_int_equal(ims_cfg_load_file(&c, write_file("listen = 127.0.0.1:2\n"), err, sizeof err),
                     0);
    assert_int_equal(c.n_listen, 1);
    assert_string_equal(c.listen[0], "127.0.0.1:2");
    /* command line: main.c resets before the first --listen, then appends */
    ims_cfg_listen_reset(&c);
    set_ok(&c, "listen", "127.0.0.1:3");
    set_ok(&c, "listen", "127.0.0.1:4");
    assert_int_equal(c.n_listen, 2);
    assert_string_equal(c.listen[0], "127.0.0.1:3");
    assert_string_equal(c.listen[1], "127.0.0.1:4");
    /* a file listing the same address twice is refused with its line */
    ims_cfg_default(&c);
    f = write_file("listen = 127.0.0.1:5\nlisten = 127.0.0.1:5\n");
    assert_int_equal(ims_cfg_load_file(&c, f, err, sizeof err), -1);
    assert_contains(err, ":2: listen: duplicate");
    /* nine listens: too many */
    char buf[1024] = "";
    for (int i = 0; i <= IMS_MAX_LISTEN; i++) {
        char line[64];
        snprintf(line, sizeof line, "listen = 127.0.0.1:%d\n", 100 + i);
        strcat(buf, line);
    }
    assert_int_equal(ims_cfg_load_file(&c, write_file(buf), err, sizeof err), -1);
    assert_contains(err, ":9: listen: too many");
    assert_int_equal(c.n_listen, 1); /* unchanged on error */
}

/* ---- addresses ---------------------------------------------------------------------------- */

static void test_parse_addr(void **state)
{
    (void)state;
    static const struct {
        const char *s;
        int is_unix;
        const char *host_or_path;
        int port;
    } ok[] = {
        {"127.0.0.1:7600", 0, "127.0.0.1", 7600},
        {"localhost:7600", 0, "localhost", 7600},
        {"[::1]:7600", 0, "::1", 7600},
        {"[::]:0", 0, "::", 0},
        {"[2001:db8::1:2]:443", 0, "2001:db8::1:2", 443},
        {"[::ffff:10.0.0.1]:1", 0, "::ffff:10.0.0.1", 1},
        {"0.0.0.0:65535", 0, "0.0.0.0", 65535},
        {"example-host.lan:1", 0, "example-host.lan", 1},
        {"a:0", 0, "a", 0},
        {"host.:80", 0, "host.", 80},
        {"chat1:00080", 0, "chat1", 80},
        {"unix:/tmp/imd.sock", 1, "/tmp/imd.sock", 0},
        {"unix:imd.sock", 1, "imd.sock", 0},
        {"unix:/a b", 1, "/a b", 0},
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        ims_addr_spec a;
        memset(&a, 0x5a, sizeof a);
        if (ims_cfg_parse_addr(ok[i].s, &a) != 0)
            fail_msg("%s refused", ok[i].s);
        assert_int_equal(a.is_unix, ok[i].is_unix);
        assert_string_equal(ok[i].is_unix ? a.path : a.host, ok[i].host_or_path);
        assert_int_equal(a.port, ok[i].port);
    }
    /* the longest Unix path (107 bytes) and the longest host (63) */
    char s[256];
    memset(s, 'p', sizeof s);
    memcpy(s, "unix:/", 6);
    s[5 + 107] = 0;
    ims_addr_spec a;
    assert_int_equal(ims_cfg_parse_addr(s, &a), 0);
    assert_int_equal(strlen(a.path), 107);
    s[5 + 107] = 'p';
    s[5 + 108] = 0;
    assert_int_equal(ims_cfg_parse_addr(s, &a), -1);
    memset(s, 'h', 63);
    strcpy(s + 63, ":1");
    s[20] = '.';
    assert_int_equal(ims_cfg_parse_addr(s, &a), 0);
    assert_int_equal(strlen(a.host), 63);
    memset(s, 'h', 64);
    strcpy(s + 64, ":1");
    s[20] = '.';
    assert_int_equal(ims_cfg_parse_addr(s, &a), -1);

    const char *bad[] = {"",
                         "127.0.0.1",
                         "127.0.0.1:",
                         ":7600",
                         "127.0.0.1:65536",
                         "127.0.0.1:-1",
                         "127.0.0.1:+1",
                         "127.0.0.1:76a",
                         "127.0.0.1: 7600",
                         "127.0.0.1:7600 ",
                         " 127.0.0.1:7600",
                         "127.0.0.1:000007600",
                         "::1:7600",
                         "[::1]",
                         "[::1]7600",
                         "[::1:7600",
                         "[zz]:1",
                         "[]:1",
                         "[127.0.0.1]:1",
                         "1.2.3.256:1",
                         "1.2.3:1",
                         "999:1",
                         "unix:",
                         "unix:/a\nb",
                         "host name:1",
                         "-bad:1",
                         "bad-:1",
                         "a..b:1",
                         ".a:1",
                         "a_b:1",
                         "h\xc3\xa9:1",
                         "127.0.0.1:7600\n",
                         "tcp://127.0.0.1:1",
                         "*:7600"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        if (ims_cfg_parse_addr(bad[i], &a) == 0)
            fail_msg("address \"%s\" accepted", bad[i]);
    }
    char long_label[80];
    memset(long_label, 'l', 64);
    strcpy(long_label + 64, ".x:1"); /* a 64-byte label, and the name is too long anyway */
    assert_int_equal(ims_cfg_parse_addr(long_label, &a), -1);
}

/* ---- files -------------------------------------------------------------------------------- */

static void test_file_format(void **state)
{
    (void)state;
    ims_cfg c;
    char err[512] = "";
    ims_cfg_default(&c);
    const char *f = write_file("\xef\xbb\xbf# imd\n"
                               "; another comment\n"
                               "   # indented comment\n"
                               "\n"
                               "   \t \n"
                               "[network]\n"
                               "  [ limits ]  \n"
                               "max_frame=64k\n"
                               "  max_frame_preauth   =\t2k  \r\n"
                               "data_dir = /srv/imd data  \n"
                               "registration = off\r\n"
                               "log_level = debug\n"
                               "msg_rate = 5\n"
                               "msg_rate = 7\n"
                               "metrics_listen =\n"
                               "page_size = 10"); /* no newline at the end */
    assert_int_equal(ims_cfg_load_file(&c, f, err, sizeof err), 0);
    assert_int_equal(c.max_frame, 65536);
    assert_int_equal(c.max_frame_preauth, 2048);
    assert_string_equal(c.data_dir, "/srv/imd data");
    assert_int_equal(c.registration, 0);
    assert_string_equal(c.log_level, "debug");
    assert_int_equal(c.msg_rate, 7);
    assert_string_equal(c.metrics_listen, "");
    assert_int_equal(c.page_size, 10);
    /* an empty file and a file of comments change nothing */
    ims_cfg d, e;
    ims_cfg_default(&d);
    ims_cfg_default(&e);
    assert_int_equal(ims_cfg_load_file(&d, write_file(""), err, sizeof err), 0);
    assert_int_equal(ims_cfg_load_file(&d, write_file("#x\r\n\r\n;y"), err, sizeof err), 0);
    assert_cfg_equal(&d, &e);
}

typedef struct errcase {
    const char *text;
    int line;
    const char *expect; /* after "path:line: " */
} errcase;

static void test_file_errors(void **state)
{
    (void)state;
    static const errcase cases[] = {
        {"max_frame = 12q\n", 1, "max_frame: not a size: 12q"},
        {"# c\n\nmax_frame = 12q\n", 3, "max_frame: not a size: 12q"},
        {"a\r\nmax_frame = 8k\r\nfrobnicate = 1\r\n", 1, "expected key = value"},
        {"max_frame = 8k\r\nfrobnicate = 1\r\n", 2, "frobnicate: unknown key"},
        {"[net\n", 1, "section"},
        {"[net] x\n", 1, "section"},
        {"= 5\n", 1, "missing key"},
        {"max frame = 5\n", 1, "max frame: unknown key"},
        {"max_frame = 1m # the default\n", 1, "max_frame: not a size"},
        {"registration = maybe\n", 1, "registration: not a boolean"},
        {"max_frame =\n", 1, "max_frame: missing value"},
        {"ping_max_missed = 0\n", 1, "ping_max_missed: out of range"},
        {"log_level = loud\n", 1, "log_level: must be one of"},
        {"max_frame = -4096\n", 1, "max_frame: must not be negative"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        ims_cfg c, before;
        char err[512] = "", want[256];
        ims_cfg_default(&c);
        set_ok(&c, "max_frame", "32k");
        before = c;
        const char *f = write_file(cases[i].text);
        if (ims_cfg_load_file(&c, f, err, sizeof err) == 0)
            fail_msg("file %zu accepted", i);
        snprintf(want, sizeof want, "%s:%d: %s", f, cases[i].line, cases[i].expect);
        if (strncmp(err, want, strlen(want)) != 0)
            fail_msg("file %zu: \"%s\", want \"%s...\"", i, err, want);
        assert_memory_equal(&c, &before, sizeof c); /* nothing applied */
    }
    /* a NUL byte */
    ims_cfg c;
    char err[512];
    ims_cfg_default(&c);
    const char *f = write_file_n("max_frame = 8k\nmax_\0frame = 8k\n", 31);
    assert_int_equal(ims_cfg_load_file(&c, f, err, sizeof err), -1);
    assert_contains(err, ":2: ");
    assert_contains(err, "NUL");
    /* a missing file and a directory */
    char missing[128];
    snprintf(missing, sizeof missing, "%s/nonexistent.conf", tmpdir);
    assert_int_equal(ims_cfg_load_file(&c, missing, err, sizeof err), -1);
    assert_contains(err, missing);
    assert_contains(err, "No such file");
    assert_int_equal(ims_cfg_load_file(&c, tmpdir, err, sizeof err), -1);
    assert_contains(err, tmpdir);
}

static void test_file_long_lines(void **state)
{
    (void)state;
    size_t n = 3 * 4096;
    char *buf = malloc(n);
    assert_non_null(buf);
    ims_cfg c;
    char err[512];
    ims_cfg_default(&c);
    /* a 4096-byte line is fine, with LF and with CRLF */
    memset(buf, ' ', 4096);
    memcpy(buf, "data_dir = /x", 13);
    buf[4096] = '\n';
    assert_int_equal(ims_cfg_load_file(&c, write_file_n(buf, 4097), err, sizeof err), 0);
    assert_string_equal(c.data_dir, "/x");
    buf[4096] = '\r';
    buf[4097] = '\n';
    memcpy(buf + 4098, "page_size = 7\n", 14);
    assert_int_equal(ims_cfg_load_file(&c, write_file_n(buf, 4112), err, sizeof err), 0);
    assert_int_equal(c.page_size, 7);
    /* 4097 bytes: an error at its line, with or without a newline after it */
    memcpy(buf, "#\n", 2);
    memset(buf + 2, '#', 4097);
    buf[4099] = '\n';
    assert_int_equal(ims_cfg_load_file(&c, write_file_n(buf, 4100), err, sizeof err), -1);
    assert_contains(err, ":2: line too long");
    assert_int_equal(ims_cfg_load_file(&c, write_file_n(buf, 4099), err, sizeof err), -1);
    assert_contains(err, ":2: line too long");
    /* much longer */
    memset(buf, 'x', n);
    assert_int_equal(ims_cfg_load_file(&c, write_file_n(buf, n), err, sizeof err), -1);
    assert_contains(err, ":1: line too long");
    free(buf);
}

/* ---- validation --------------------------------------------------------------------------- */

static void test_validate(void **state)
{
    (void)state;
    ims_cfg c;
    char err[256];
    static const struct {
        const char *k1, *v1, *k2, *v2, *expect;
    } bad[] = {
        {"max_frame", "4096", "max_frame_preauth", "8192", "max_frame_preauth"},
        {"output_soft", "16m", "output_hard", "8m", "output_soft"},
        {"page_size", "2000", "page_max", "1000", "page_size"},
        {"user_backoff_ms", "2m", "user_backoff_max_ms", "1m", "user_backoff_ms"},
        {"max_frame", "15m", "output_hard", "4m", "output_hard"},
        {"metrics_listen", "127.0.0.1:7600", "max_frame", "1m", "metrics_listen"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ims_cfg_default(&c);
        set_ok(&c, bad[i].k1, bad[i].v1);
        set_ok(&c, bad[i].k2, bad[i].v2);
        err[0] = 0;
        if (ims_cfg_validate(&c, err, sizeof err) == 0)
            fail_msg("case %zu validated", i);
        assert_names_key(err, bad[i].expect);
    }
    /* equal limits are fine (output_hard: output_soft plus one largest frame, see
     * test_validate_output_caps) */
    ims_cfg_default(&c);
    set_ok(&c, "max_frame", "4096");
    set_ok(&c, "max_frame_preauth", "4096");
    set_ok(&c, "output_soft", "8m");
    set_ok(&c, "output_hard", "8196k");
    set_ok(&c, "page_size", "1000");
    set_ok(&c, "user_backoff_ms", "60s");
    assert_int_equal(ims_cfg_validate(&c, err, sizeof err), 0);
    /* fields written directly (not through ims_cfg_set) are range-checked too */
    static const struct {
        size_t off, size;
        uint64_t v;
        const char *key;
    } direct[] = {
        {offsetof(ims_cfg, hash_memlimit), 8, 8 * MiB - 1, "hash_memlimit"},
        {offsetof(ims_cfg, hash_opslimit), 8, 0, "hash_opslimit"},
        {offsetof(ims_cfg, ping_max_missed), 4, 0, "ping_max_missed"},
        {offsetof(ims_cfg, max_frame), 4, 17 * MiB, "max_frame"},
        {offsetof(ims_cfg, max_frame_preauth), 4, 1000, "max_frame_preauth"},
        {offsetof(ims_cfg, hash_threads), 4, (uint32_t)-1, "hash_threads"},
        {offsetof(ims_cfg, offline_quota), 8, (uint64_t)-5, "offline_quota"},
        {offsetof(ims_cfg, registration), 4, 2, "registration"},
    };
    for (size_t i = 0; i < sizeof direct / sizeof direct[0]; i++) {
        ims_cfg_default(&c);
        if (direct[i].size == 4) {
            uint32_t v = (uint32_t)direct[i].v;
            memcpy((unsigned char *)&c + direct[i].off, &v, 4);
        } else {
            memcpy((unsigned char *)&c + direct[i].off, &direct[i].v, 8);
        }
        assert_int_equal(ims_cfg_validate(&c, err, sizeof err), -1);
        assert_names_key(err, direct[i].key);
    }
    ims_cfg_default(&c);
    strcpy(c.log_level, "loud");
    assert_int_equal(ims_cfg_validate(&c, err, sizeof err), -1);
    assert_names_key(err, "log_level");
    ims_cfg_default(&c);
    strcpy(c.listen[0], "nonsense");
    assert_int_equal(ims_cfg_validate(&c, err, sizeof err), -1);
    assert_names_key(err, "listen");
    ims_cfg_default(&c);
    c.data_dir[0] = 0;
    assert_int_equal(ims_cfg_validate(&c, err, sizeof err), -1);
    assert_names_key(err, "data_dir");
    ims_cfg_default(&c);
    c.n_listen = IMS_MAX_LISTEN + 1;
    assert_int_equal(ims_cfg_validate(&c, err, sizeof err), -1);
    assert_names_key(err, "listen");
    ims_cfg_default(&c);
    set_ok(&c, "listen", "[::1]:1");
    strcpy(c.listen[1], c.listen[0]);
    assert_int_equal(ims_cfg_validate(&c, err, sizeof err), -1);
    assert_names_key(err, "listen");
    /* a perturbed config is valid */
    perturbed(&c);
    assert_int_equal(ims_cfg_validate(&c, err, sizeof err), 0);
}

/* Issue 3: imd queues the next DELIVER (or HISTORY_ITEM) while a session's output is at most
 * output_soft, and closes the session (SLOW_CONSUMER) when a frame would take the output over
 * output_hard. So output_hard must hold output_soft plus the largest frame imd accepts
 * (max_frame), or one message of that size cuts a client that reads as fast as it can. */
static void output_caps(ims_cfg *c, const char *soft, const char *frame, const char *hard)
{
    ims_cfg_default(c);
    set_ok(c, "max_frame_preauth", "1k");
    set_ok(c, "output_soft", soft);
    set_ok(c, "max_frame", frame);
    set_ok(c, "output_hard", hard);
}

static void test_validate_output_caps(void **state)
{
    (void)state;
    ims_cfg c;
    char err[256];
    static const struct {
        const char *soft, *frame, *hard;
        int ok;
        const char *says; /* in the message when refused */
    } cases[] = {
        {"1m", "1m", "8m", 1, NULL}, /* the defaults */
        {"1m", "1m", "2m", 1, NULL}, /* exactly one frame above the soft cap */
        {"64k", "64k", "128k", 1, NULL},
        {"4k", "4k", "8k", 1, NULL},
        {"1k", "4k", "5k", 1, NULL}, /* the smallest output_hard there is */
        {"2m", "16000k", "18m", 1, NULL},
        {"1m", "1m", "2097151", 0,
         "output_hard: 2097151 is less than output_soft (1MiB) + max_frame (1MiB) = 2MiB"},
        {"7m", "1m", "8m", 1, NULL},
        {"7m", "2m", "8m", 0, "output_soft (7MiB) + max_frame (2MiB) = 9MiB"},
        {"8m", "1m", "8m", 0, "output_hard: 8MiB is less than output_soft (8MiB) + max_frame"},
        {"1k", "16000k", "16000k", 0, "max_frame (16000KiB) = 16001KiB"},
        {"1k", "4k", "4k", 0, "output_hard: 4KiB is less than output_soft (1KiB) + max_frame"},
        {"64k", "64k", "127k", 0, "= 128KiB"},
        {"4g", "16000k", "4g", 0, "output_soft (4GiB) + max_frame (16000KiB) = 4210304KiB"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        output_caps(&c, cases[i].soft, cases[i].frame, cases[i].hard);
        err[0] = 0;
        int r = ims_cfg_validate(&c, err, sizeof err);
        if (cases[i].ok) {
            if (r != 0)
                fail_msg("soft %s frame %s hard %s refused: %s", cases[i].soft, cases[i].frame,
                         cases[i].hard, err);
            continue;
        }
        if (r == 0)
            fail_msg("soft %s frame %s hard %s accepted", cases[i].soft, cases[i].frame,
                     cases[i].hard);
        assert_names_key(err, "output_hard");
        assert_contains(err, cases[i].says);
        /* the message says why, so that the operator knows which key to change */
        assert_contains(err, "output_soft");
        assert_contains(err, "max_frame");
    }
    /* the soft cap above the hard cap is still reported as such */
    output_caps(&c, "16m", "1m", "8m");
    assert_int_equal(ims_cfg_validate(&c, err, sizeof err), -1);
    assert_names_key(err, "output_soft");
    /* a file (what SIGHUP reloads) goes through the same check: ims_cfg_load_file takes the
     * values, ims_cfg_validate refuses them */
    ims_cfg_default(&c);
    assert_int_equal(ims_cfg_load_file(&c,
                                       write_file("[flow control]\noutput_soft = 4m\n"
                                                  "output_hard = 4m\n"),
                                       err, sizeof err),
                     0);
    assert_int_equal(ims_cfg_validate(&c, err, sizeof err), -1);
    assert_names_key(err, "output_hard");
    assert_contains(err, "4MiB is less than output_soft (4MiB) + max_frame (1MiB) = 5MiB");
    /* fields written directly are checked too */
    ims_cfg_default(&c);
    c.output_hard = c.output_soft + c.max_frame - 1;
    assert_int_equal(ims_cfg_validate(&c, err, sizeof err), -1);
    assert_names_key(err, "output_hard");
    c.output_hard++;
    assert_int_equal(ims_cfg_validate(&c, err, sizeof err), 0);
}

/* The size of a message's frame, encoded by libimp. */
static size_t frame_size(const imp_msg *m)
{
    imp_ssize n = imp_msg_encoded_size(m);
    assert_true(n > 0);
    return (size_t)n;
}

/* Issue 3: imd turns a SEND into a DELIVER (and a room SEND into HISTORY_ITEMs) that carries
 * more fields than the SEND; no frame may exceed 16 MiB (IMP-FRAME-005). With max_frame =
 * 16 MiB imd acknowledged a SEND it could never deliver, and the recipient's queue stopped at
 * it. IMS_DELIVER_GROWTH is the most a frame grows, measured here on libimp's encoding. */
static void test_max_frame_fits_deliver(void **state)
{
    (void)state;
    static uint8_t body[1000];
    const char *name32 = "abcdefghijklmnopqrstuvwxyz012345";
    const char *names[] = {"a", name32};
    static const int kinds[] = {IMP_TARGET_USER, IMP_TARGET_ROOM, IMP_TARGET_BROADCAST};
    size_t most = 0;
    for (size_t k = 0; k < 3; k++) {
        for (size_t t = 0; t < 2; t++) {
            for (size_t u = 0; u < 2; u++) {
                imp_msg send, deliver, item;
                /* the smallest SEND that carries this message: no optional field */
                imp_msg_init(&send, IMP_SEND, 1);
                imp_msg_set_u(&send, IMP_T_TARGET_KIND, (uint64_t)kinds[k]);
                if (kinds[k] != IMP_TARGET_BROADCAST)
                    imp_msg_set_s(&send, IMP_T_TARGET, names[t]);
                imp_msg_set_b(&send, IMP_T_BODY, body, sizeof body);
                /* what imd sends for it: every field at its largest */
                imp_msg_init(&deliver, IMP_DELIVER, 0);
                imp_msg_set_u(&deliver, IMP_T_TARGET_KIND, (uint64_t)kinds[k]);
                if (kinds[k] != IMP_TARGET_BROADCAST)
                    imp_msg_set_s(&deliver, IMP_T_TARGET, names[t]);
                imp_msg_set_b(&deliver, IMP_T_BODY, body, sizeof body);
                imp_msg_set_u(&deliver, IMP_T_MSG_ID, UINT64_MAX);
                imp_msg_set_u(&deliver, IMP_T_SEQ, UINT64_MAX);
                imp_msg_set_s(&deliver, IMP_T_SENDER, names[u]);
                imp_msg_set_u(&deliver, IMP_T_TIMESTAMP, UINT64_MAX);
                size_t s = frame_size(&send), d = frame_size(&deliver);
                assert_true(d > s);
                if (d - s > most)
                    most = d - s;
                if (kinds[k] != IMP_TARGET_ROOM)
                    continue;
                imp_msg_init(&item, IMP_HISTORY_ITEM, UINT32_MAX);
                imp_msg_set_b(&item, IMP_T_BODY, body, sizeof body);
                imp_msg_set_u(&item, IMP_T_MSG_ID, UINT64_MAX);
                imp_msg_set_s(&item, IMP_T_SENDER, names[u]);
                imp_msg_set_u(&item, IMP_T_TIMESTAMP, UINT64_MAX);
                imp_msg_set_s(&item, IMP_T_ROOM, names[t]);
                size_t h = frame_size(&item);
                if (h > s && h - s > most)
                    most = h - s;
            }
        }
    }
    assert_int_equal(most, IMS_DELIVER_GROWTH);
    /* max_frame is at most 16 MiB less that growth */
    ims_cfg c;
    char err[256], v[32];
    ims_cfg_default(&c);
    set_ok(&c, "output_hard", "64m");
    snprintf(v, sizeof v, "%u", (unsigned)(IMP_FRAME_MAX_HARD - IMS_DELIVER_GROWTH));
    set_ok(&c, "max_frame", v);
    assert_int_equal(ims_cfg_validate(&c, err, sizeof err), 0);
    snprintf(v, sizeof v, "%u", (unsigned)(IMP_FRAME_MAX_HARD - IMS_DELIVER_GROWTH + 1));
    assert_int_equal(ims_cfg_set(&c, "max_frame", v, err, sizeof err), -1);
    assert_names_key(err, "max_frame");
    assert_contains(err, "out of range");
    assert_int_equal(ims_cfg_set(&c, "max_frame", "16m", err, sizeof err), -1);
    assert_names_key(err, "max_frame");
    /* written directly, it is refused too */
    c.max_frame = IMP_FRAME_MAX_HARD;
    assert_int_equal(ims_cfg_validate(&c, err, sizeof err), -1);
    assert_names_key(err, "max_frame");
}

/* Issue 3: 0 and the largest values of the storage and session limits either work (the help
 * says what 0 means) or are refused naming the key. */
static void test_zero_and_huge_limits(void **state)
{
    (void)state;
    ims_cfg c;
    char err[256];
    static const char *const no_zero[] = {"offline_quota", "max_sessions_per_user"};
    for (size_t i = 0; i < sizeof no_zero / sizeof no_zero[0]; i++) {
        ims_cfg_default(&c);
        assert_int_equal(ims_cfg_set(&c, no_zero[i], "0", err, sizeof err), -1);
        assert_names_key(err, no_zero[i]);
        assert_contains(err, "out of range (1 to ");
    }
    /* room_history = 0 keeps every message (deliver.c prunes only when it is > 0) */
    ims_cfg_default(&c);
    set_ok(&c, "room_history", "0");
    assert_int_equal(ims_cfg_validate(&c, err, sizeof err), 0);
    assert_contains(ims_cfg_help("room_history"), "0 = no limit");
    /* the largest values are a valid configuration */
    ims_cfg_default(&c);
    set_ok(&c, "offline_quota", "1000000000");
    set_ok(&c, "room_history", "100000000");
    set_ok(&c, "max_sessions_per_user", "100000");
    assert_int_equal(ims_cfg_validate(&c, err, sizeof err), 0);
}

/* ---- dump and get ------------------------------------------------------------------------- */

typedef struct lines {
    char buf[16384];
    size_t n;
    int count;
} lines;

static void collect(void *ud, const char *s)
{
    lines *l = ud;
    assert_null(strchr(s, '\n'));
    size_t k = strlen(s);
    assert_true(l->n + k + 2 < sizeof l->buf);
    memcpy(l->buf + l->n, s, k);
    l->n += k;
    l->buf[l->n++] = '\n';
    l->buf[l->n] = 0;
    l->count++;
}

static void roundtrip(const ims_cfg *c)
{
    lines l = {.n = 0, .count = 0};
    ims_cfg_dump(c, collect, &l);
    /* one line per listen and per tls_listen (one `tls_listen =` line when there is none) */
    assert_int_equal(l.count, (int)(NNUMS + NOTHER) - 2 + c->n_listen +
                                  (c->n_tls_listen > 0 ? c->n_tls_listen : 1));
    /* through a file */
    ims_cfg d;
    char err[512];
    ims_cfg_default(&d);
    if (ims_cfg_load_file(&d, write_file(l.buf), err, sizeof err) != 0)
        fail_msg("%s\n%s", err, l.buf);
    assert_cfg_equal(&d, c);
    /* line by line through ims_cfg_set, from a perturbed config */
    perturbed(&d);
    ims_cfg_listen_reset(&d);
    ims_cfg_tls_listen_reset(&d);
    char *save = NULL;
    for (char *s = strtok_r(l.buf, "\n", &save); s; s = strtok_r(NULL, "\n", &save)) {
        char *eq = strstr(s, " =");
        assert_non_null(eq);
        *eq = 0;
        assert_true(eq[2] == 0 || (eq[2] == ' ' && eq[3] != 0)); /* no trailing blank */
        set_ok(&d, s, eq[2] ? eq + 3 : "");
    }
    assert_cfg_equal(&d, c);
}

static void test_dump_roundtrip(void **state)
{
    (void)state;
    ims_cfg c;
    ims_cfg_default(&c);
    roundtrip(&c);
    perturbed(&c);
    roundtrip(&c);
    /* every extreme */
    for (int end = 0; end < 2; end++) {
        ims_cfg_default(&c);
        for (size_t i = 0; i < NNUMS; i++)
            set_ok(&c, nums[i].key, end ? nums[i].max_s : nums[i].min_s);
        roundtrip(&c);
    }
    /* odd values that no suffix divides */
    ims_cfg_default(&c);
    set_ok(&c, "max_frame", "1000001");
    set_ok(&c, "token_ttl_ms", "86400001");
    set_ok(&c, "hash_memlimit", "8390000");
    roundtrip(&c);
}

static void test_dump_format(void **state)
{
    (void)state;
    ims_cfg c;
    ims_cfg_default(&c);
    lines l = {.n = 0, .count = 0};
    ims_cfg_dump(&c, collect, &l);
    /* table order: the first line is listen */
    assert_true(strncmp(l.buf, "listen = 127.0.0.1:7600\n", 24) == 0);
    assert_contains(l.buf, "\nmetrics_listen =\n");
    assert_contains(l.buf, "\nregistration = yes\n");
    assert_contains(l.buf, "\nlog_format = text\n");
    /* the keys come in ims_cfg_key order */
    const char *p = l.buf;
    for (size_t i = 0; ims_cfg_key(i); i++) {
        char want[64];
        snprintf(want, sizeof want, "%s =", ims_cfg_key(i));
        const char *q = strstr(p, want);
        assert_non_null(q);
        assert_true(q == l.buf || q[-1] == '\n');
        p = q;
    }
    char v[128];
    assert_int_equal(ims_cfg_get(&c, "max_frame", v, sizeof v), 0);
    assert_string_equal(v, "1MiB");
    assert_int_equal(ims_cfg_get(&c, "hash_memlimit", v, sizeof v), 0);
    assert_string_equal(v, "19MiB");
    assert_int_equal(ims_cfg_get(&c, "max_frame_preauth", v, sizeof v), 0);
    assert_string_equal(v, "4KiB");
    assert_int_equal(ims_cfg_get(&c, "token_ttl_ms", v, sizeof v), 0);
    assert_string_equal(v, "30d");
    assert_int_equal(ims_cfg_get(&c, "addr_ban_ms", v, sizeof v), 0);
    assert_string_equal(v, "5m");
    assert_int_equal(ims_cfg_get(&c, "shutdown_grace_ms", v, sizeof v), 0);
    assert_string_equal(v, "5s");
    assert_int_equal(ims_cfg_get(&c, "msg_rate", v, sizeof v), 0);
    assert_string_equal(v, "10000");
    assert_int_equal(ims_cfg_get(&c, "sync_full", v, sizeof v), 0);
    assert_string_equal(v, "yes");
    set_ok(&c, "user_backoff_ms", "1500");
    assert_int_equal(ims_cfg_get(&c, "user_backoff_ms", v, sizeof v), 0);
    assert_string_equal(v, "1500ms");
    set_ok(&c, "output_soft_ms", "0");
    assert_int_equal(ims_cfg_get(&c, "output_soft_ms", v, sizeof v), 0);
    assert_string_equal(v, "0ms");
    set_ok(&c, "listen", "[::1]:7600");
    assert_int_equal(ims_cfg_get(&c, "listen", v, sizeof v), 0);
    assert_string_equal(v, "127.0.0.1:7600 [::1]:7600");
    assert_int_equal(ims_cfg_get(&c, "listen", v, 10), 0); /* cut to 9 bytes and the NUL */
    assert_string_equal(v, "127.0.0.1");
    assert_int_equal(ims_cfg_get(&c, "nope", v, sizeof v), -1);
}

/* ---- TLS keys and the listen safety check (issue 6) --------------------------------------- */

static void test_tls_keys(void **state)
{
    (void)state;
    ims_cfg c, before;
    char err[256], v[256];
    ims_cfg_default(&c);
    /* tls_listen: repeatable TCP addresses, port 0 allowed */
    set_ok(&c, "tls_listen", "127.0.0.1:0");
    set_ok(&c, "tls_listen", "127.0.0.1:0");
    set_ok(&c, "tls_listen", "[::1]:7643");
    assert_int_equal(c.n_tls_listen, 3);
    assert_string_equal(c.tls_listen[2], "[::1]:7643");
    assert_int_equal(c.n_listen, 1); /* the plain list is untouched */
    assert_int_equal(ims_cfg_get(&c, "tls_listen", v, sizeof v), 0);
    assert_string_equal(v, "127.0.0.1:0 127.0.0.1:0 [::1]:7643");
    before = c;
    assert_int_equal(ims_cfg_set(&c, "tls_listen", "[::1]:7643", err, sizeof err), -1);
    assert_names_key(err, "tls_listen");
    assert_contains(err, "duplicate");
    assert_int_equal(ims_cfg_set(&c, "tls_listen", "unix:/tmp/imd.sock", err, sizeof err), -1);
    assert_names_key(err, "tls_listen");
    assert_contains(err, "Unix");
    assert_int_equal(ims_cfg_set(&c, "tls_listen", "127.0.0.1", err, sizeof err), -1);
    assert_names_key(err, "tls_listen");
    assert_memory_equal(&before, &c, sizeof c);
    /* an empty value adds nothing (the sample's `tls_listen =`) */
    set_ok(&c, "tls_listen", "");
    assert_int_equal(c.n_tls_listen, 3);
    ims_cfg_tls_listen_reset(&c);
    assert_int_equal(c.n_tls_listen, 0);
    assert_int_equal(ims_cfg_get(&c, "tls_listen", v, sizeof v), 0);
    assert_string_equal(v, "");
    for (int i = 0; i < IMS_MAX_LISTEN; i++) {
        char a[32];
        snprintf(a, sizeof a, "127.0.0.1:%d", 7700 + i);
        set_ok(&c, "tls_listen", a);
    }
    assert_int_equal(ims_cfg_set(&c, "tls_listen", "127.0.0.1:9999", err, sizeof err), -1);
    assert_contains(err, "too many");

    /* tls_min_version: 1.2 or 1.3 */
    ims_cfg_default(&c);
    set_ok(&c, "tls_min_version", "1.3");
    assert_string_equal(c.tls_min_version, "1.3");
    set_ok(&c, "tls_min_version", "1.2");
    assert_string_equal(c.tls_min_version, "1.2");
    const char *badv[] = {"1.1", "1.0", "1", "TLSv1.3", "", "1.4", "1.2 "};
    for (size_t i = 0; i < sizeof badv / sizeof badv[0]; i++) {
        if (ims_cfg_set(&c, "tls_min_version", badv[i], err, sizeof err) == 0)
            fail_msg("tls_min_version = \"%s\" accepted", badv[i]);
        assert_names_key(err, "tls_min_version");
        assert_contains(err, "1.2, 1.3");
    }
    /* the handshake deadline takes the duration syntax */
    set_ok(&c, "tls_handshake_timeout_ms", "750");
    assert_int_equal(c.tls_handshake_timeout_ms, 750);
    set_ok(&c, "tls_handshake_timeout_ms", "1m");
    assert_int_equal(c.tls_handshake_timeout_ms, 60000);
    assert_int_equal(ims_cfg_set(&c, "tls_handshake_timeout_ms", "0", err, sizeof err), -1);
    assert_names_key(err, "tls_handshake_timeout_ms");
    /* cert and key are paths */
    set_ok(&c, "tls_cert", "/etc/imd/fullchain.pem");
    assert_string_equal(c.tls_cert, "/etc/imd/fullchain.pem");
    assert_int_equal(ims_cfg_set(&c, "tls_key", "a\x01z", err, sizeof err), -1);
    assert_names_key(err, "tls_key");

    /* validate: tls_listen needs both tls_cert and tls_key */
    ims_cfg_default(&c);
    set_ok(&c, "tls_listen", "127.0.0.1:0");
    assert_int_equal(ims_cfg_validate(&c, err, sizeof err), -1);
    assert_names_key(err, "tls_cert");
    set_ok(&c, "tls_cert", "/c.pem");
    assert_int_equal(ims_cfg_validate(&c, err, sizeof err), -1);
    assert_names_key(err, "tls_key");
    set_ok(&c, "tls_key", "/k.pem");
    assert_int_equal(ims_cfg_validate(&c, err, sizeof err), 0);
    /* one fixed address cannot be both plain and TLS, nor /metrics */
    set_ok(&c, "tls_listen", "127.0.0.1:7600");
    assert_int_equal(ims_cfg_validate(&c, err, sizeof err), -1);
    assert_names_key(err, "tls_listen");
    assert_contains(err, "127.0.0.1:7600");
    ims_cfg_tls_listen_reset(&c);
    set_ok(&c, "tls_listen", "127.0.0.1:9100");
    set_ok(&c, "metrics_listen", "127.0.0.1:9100");
    assert_int_equal(ims_cfg_validate(&c, err, sizeof err), -1);
    assert_names_key(err, "metrics_listen");
    /* a unix address written directly is caught by validate too */
    ims_cfg_default(&c);
    set_ok(&c, "tls_cert", "/c.pem");
    set_ok(&c, "tls_key", "/k.pem");
    strcpy(c.tls_listen[0], "unix:/tmp/x");
    c.n_tls_listen = 1;
    assert_int_equal(ims_cfg_validate(&c, err, sizeof err), -1);
    assert_names_key(err, "tls_listen");

    /* files: the first tls_listen of a file replaces the list; --tls-listen's reset is main's */
    ims_cfg_default(&c);
    set_ok(&c, "tls_listen", "127.0.0.1:1");
    const char *f = write_file("tls_listen = 127.0.0.1:2\ntls_listen = [::1]:3\n"
                               "tls_cert = /c.pem\ntls_key = /k.pem\n");
    assert_int_equal(ims_cfg_load_file(&c, f, err, sizeof err), 0);
    assert_int_equal(c.n_tls_listen, 2);
    assert_string_equal(c.tls_listen[0], "127.0.0.1:2");
    assert_string_equal(c.tls_listen[1], "[::1]:3");
    assert_int_equal(c.n_listen, 1);
    assert_string_equal(c.listen[0], "127.0.0.1:7600");
    f = write_file("tls_listen =\n");
    assert_int_equal(ims_cfg_load_file(&c, f, err, sizeof err), 0);
    assert_int_equal(c.n_tls_listen, 0);
    f = write_file("tls_listen = unix:/tmp/s\n");
    assert_int_equal(ims_cfg_load_file(&c, f, err, sizeof err), -1);
    assert_contains(err, ":1: tls_listen:");
}

/* Runs the safety check on a config with the given plain listens (NULL-terminated) and
 * metrics address; returns its result with the message in err. */
static int safety(const char *const *listens, const char *metrics, int allow, char *err,
                  size_t errlen)
{
    ims_cfg c;
    ims_cfg_default(&c);
    ims_cfg_listen_reset(&c);
    for (size_t i = 0; listens[i]; i++)
        set_ok(&c, "listen", listens[i]);
    set_ok(&c, "metrics_listen", metrics ? metrics : "");
    set_ok(&c, "allow_insecure_listen", allow ? "yes" : "no");
    err[0] = 0;
    return ims_cfg_check_listen_safety(&c, err, errlen);
}

static void test_listen_safety(void **state)
{
    (void)state;
    char err[512];
    /* loopback and Unix sockets need no TLS */
    const char *const safe[] = {"127.0.0.1:7600", "127.1.2.3:0", "[::1]:7600",
                                "unix:/x",        "localhost:0", "127.255.255.254:1"};
    for (size_t i = 0; i < sizeof safe / sizeof safe[0]; i++) {
        const char *one[] = {safe[i], NULL};
        if (safety(one, NULL, 0, err, sizeof err) != 0)
            fail_msg("listen %s refused: %s", safe[i], err);
        if (safety(one, NULL, 1, err, sizeof err) != 0)
            fail_msg("listen %s with allow_insecure_listen: %s", safe[i], err);
    }
    const char *const all_safe[] = {"127.0.0.1:1", "[::1]:2", "unix:/run/imd.sock", NULL};
    assert_int_equal(safety(all_safe, "127.0.0.1:9100", 0, err, sizeof err), 0);
    assert_int_equal(safety(all_safe, "[::1]:9100", 0, err, sizeof err), 0);
    /* the default configuration is safe */
    ims_cfg c;
    ims_cfg_default(&c);
    assert_int_equal(ims_cfg_check_listen_safety(&c, err, sizeof err), 0);

    /* anything else is refused, naming the address and the way out */
    const char *const unsafe[] = {"0.0.0.0:7600",   "[::]:7600",          "10.0.0.1:7600",
                                  "192.168.1.10:0", "[2001:db8::1]:7600", "128.0.0.1:1"};
    for (size_t i = 0; i < sizeof unsafe / sizeof unsafe[0]; i++) {
        const char *one[] = {unsafe[i], NULL};
        if (safety(one, NULL, 0, err, sizeof err) != -1)
            fail_msg("listen %s accepted without TLS", unsafe[i]);
        char want[128];
        snprintf(want, sizeof want, "listen %s: not a loopback address and not TLS", unsafe[i]);
        assert_contains(err, want);
        assert_contains(err, "tls_listen");
        assert_contains(err, "allow_insecure_listen = yes");
        /* allowed: 1, and the message is the warning to log */
        assert_int_equal(safety(one, NULL, 1, err, sizeof err), 1);
        assert_contains(err, unsafe[i]);
    }
    /* one unsafe address among safe ones is enough */
    const char *const mixed[] = {"127.0.0.1:1", "unix:/x", "0.0.0.0:2", NULL};
    assert_int_equal(safety(mixed, NULL, 0, err, sizeof err), -1);
    assert_contains(err, "listen 0.0.0.0:2:");
    /* metrics_listen likewise */
    const char *const lo[] = {"127.0.0.1:1", NULL};
    assert_int_equal(safety(lo, "0.0.0.0:9100", 0, err, sizeof err), -1);
    assert_contains(err, "metrics_listen 0.0.0.0:9100: not a loopback address");
    assert_contains(err, "allow_insecure_listen = yes");
    assert_int_equal(safety(lo, "[::]:9100", 0, err, sizeof err), -1);
    assert_int_equal(safety(lo, "0.0.0.0:9100", 1, err, sizeof err), 1);
    /* TLS listeners may listen anywhere */
    ims_cfg_default(&c);
    set_ok(&c, "tls_listen", "0.0.0.0:7643");
    set_ok(&c, "tls_listen", "[::]:7643");
    assert_int_equal(ims_cfg_check_listen_safety(&c, err, sizeof err), 0);
}

/* ---- the sample config and the man page --------------------------------------------------- */

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        fail_msg("cannot open %s", path);
    static char buf[1 << 17];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    assert_true(n < sizeof buf - 1);
    buf[n] = 0;
    fclose(f);
    return buf;
}

static void test_sample_is_default(void **state)
{
    (void)state;
    const char *path = IMP_SRCDIR "/dist/imd.conf";
    ims_cfg c, d;
    char err[512] = "";
    /* from a config where every key differs: the sample must set every key to its default */
    perturbed(&c);
    if (ims_cfg_load_file(&c, path, err, sizeof err) != 0)
        fail_msg("%s", err);
    ims_cfg_default(&d);
    assert_cfg_equal(&c, &d);
    /* each key is explained by its help line, written as a comment */
    const char *text = slurp(path);
    for (size_t i = 0; ims_cfg_key(i); i++) {
        char want[160];
        snprintf(want, sizeof want, "# %s\n", ims_cfg_help(ims_cfg_key(i)));
        if (!strstr(text, want))
            fail_msg("dist/imd.conf lacks the comment \"%s\" for %s", want, ims_cfg_key(i));
    }
}

static void test_man_page_lists_keys(void **state)
{
    (void)state;
    const char *text = slurp(IMP_SRCDIR "/man/imd.conf.5");
    for (size_t i = 0; ims_cfg_key(i); i++) {
        char want[80];
        snprintf(want, sizeof want, "\n.B %s\n", ims_cfg_key(i));
        if (!strstr(text, want))
            fail_msg("man/imd.conf.5 does not document %s", ims_cfg_key(i));
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_every_key_known),
        cmocka_unit_test(test_reloadable),
        cmocka_unit_test(test_numeric_keys),
        cmocka_unit_test(test_size_suffixes),
        cmocka_unit_test(test_duration_suffixes),
        cmocka_unit_test(test_bool_keys),
        cmocka_unit_test(test_enum_keys),
        cmocka_unit_test(test_string_keys),
        cmocka_unit_test(test_unknown_key),
        cmocka_unit_test(test_listen_set),
        cmocka_unit_test(test_listen_file_replaces),
        cmocka_unit_test(test_parse_addr),
        cmocka_unit_test(test_file_format),
        cmocka_unit_test(test_file_errors),
        cmocka_unit_test(test_file_long_lines),
        cmocka_unit_test(test_validate),
        cmocka_unit_test(test_validate_output_caps),
        cmocka_unit_test(test_max_frame_fits_deliver),
        cmocka_unit_test(test_zero_and_huge_limits),
        cmocka_unit_test(test_tls_keys),
        cmocka_unit_test(test_listen_safety),
        cmocka_unit_test(test_dump_roundtrip),
        cmocka_unit_test(test_dump_format),
        cmocka_unit_test(test_sample_is_default),
        cmocka_unit_test(test_man_page_lists_keys),
    };
    return cmocka_run_group_tests(tests, setup_dir, teardown_dir);
}
