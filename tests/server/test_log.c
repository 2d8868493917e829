/* Unit tests for server/log.c: levels, the text and JSON line formats (read back through a
 * pipe), escaping, quoting, truncation at 4 KiB, errno, and whole lines under concurrent
 * writers. JSON lines are checked by a small strict parser written here, which also decodes
 * the members so that random values can be compared with what was logged. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "log.h"

static int rfd = -1, wfd = -1;
static char tmpdir[] = "/tmp/imd-test-log-XXXXXX", logpath[64];

static int setup_pipe(void **state)
{
    (void)state;
    if (!mkdtemp(tmpdir))
        return -1;
    snprintf(logpath, sizeof logpath, "%s/log", tmpdir);
    int p[2];
    if (pipe(p) != 0)
        return -1;
    rfd = p[0];
    wfd = p[1];
    if (fcntl(rfd, F_SETFL, O_NONBLOCK) != 0)
        return -1;
    ims_log_set_fd(wfd);
    return 0;
}

static int teardown_pipe(void **state)
{
    (void)state;
    ims_log_set_fd(2);
    close(rfd);
    close(wfd);
    unlink(logpath);
    return rmdir(tmpdir);
}

/* The line written by the last ims_log, or "" when nothing was written. One write per line,
 * smaller than PIPE_BUF: one read gets all of it. */
static char linebuf[3 * 4096];
static const char *got(void)
{
    ssize_t n = read(rfd, linebuf, sizeof linebuf - 1);
    if (n < 0) {
        assert_int_equal(errno, EAGAIN);
        n = 0;
    }
    linebuf[n] = 0;
    return linebuf;
}

/* "2026-11-25T10:00:00.123Z", within a few seconds of now */
static void assert_ts(const char *s)
{
    static const char pat[] = "dddd-dd-ddTdd:dd:dd.dddZ";
    for (size_t i = 0; i < 24; i++) {
        if (pat[i] == 'd' ? (s[i] < '0' || s[i] > '9') : s[i] != pat[i])
            fail_msg("bad timestamp \"%.24s\"", s);
    }
    struct tm tm;
    memset(&tm, 0, sizeof tm);
    tm.tm_year = atoi(s) - 1900;
    tm.tm_mon = atoi(s + 5) - 1;
    tm.tm_mday = atoi(s + 8);
    tm.tm_hour = atoi(s + 11);
    tm.tm_min = atoi(s + 14);
    tm.tm_sec = atoi(s + 17);
    time_t t = timegm(&tm), now = time(NULL);
    assert_true(t <= now + 1 && t >= now - 5);
}

/* Text line: the timestamp, then exactly rest. */
static void assert_text(const char *line, const char *rest)
{
    assert_ts(line);
    assert_int_equal(line[24], ' ');
    if (strcmp(line + 25, rest) != 0)
        fail_msg("got \"%s\", want \"%s\"", line + 25, rest);
}

/* JSON line: {"ts":"<ts>", then exactly rest. */
static void assert_json(const char *line, const char *rest)
{
    assert_true(strncmp(line, "{\"ts\":\"", 7) == 0);
    assert_ts(line + 7);
    assert_int_equal(line[31], '"');
    if (strcmp(line + 32, rest) != 0)
        fail_msg("got \"%s\", want \"%s\"", line + 32, rest);
}

/* ---- a strict checker for the JSON lines: an object of string (or true) members ----------- */

typedef struct member {
    char key[4200];
    char val[4200];
    size_t klen, vlen;
} member;

static int hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static size_t put_utf8(char *o, unsigned cp)
{
    if (cp < 0x80) {
        o[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (char)(0xc0 | cp >> 6);
        o[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    o[0] = (char)(0xe0 | cp >> 12);
    o[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
    o[2] = (char)(0x80 | (cp & 0x3f));
    return 3;
}

/* Length of the valid UTF-8 sequence at p (RFC 3629), 0 if invalid. */
static size_t utf8_len(const unsigned char *p)
{
    unsigned c = p[0];
    size_t n;
    unsigned cp, min;
    if (c < 0x80)
        return 1;
    if ((c & 0xe0) == 0xc0) {
        n = 2, cp = c & 0x1f, min = 0x80;
    } else if ((c & 0xf0) == 0xe0) {
        n = 3, cp = c & 0x0f, min = 0x800;
    } else if ((c & 0xf8) == 0xf0) {
        n = 4, cp = c & 0x07, min = 0x10000;
    } else {
        return 0;
    }
    for (size_t i = 1; i < n; i++) {
        if ((p[i] & 0xc0) != 0x80)
            return 0;
        cp = cp << 6 | (p[i] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return n;
}

/* Parses a JSON string at *pp (at its opening quote) into out; 0 or -1. */
static int jstring(const char **pp, char *out, size_t cap, size_t *len)
{
    const unsigned char *p = (const unsigned char *)*pp;
    size_t n = 0;
    if (*p++ != '"')
        return -1;
    while (*p != '"') {
        if (n + 4 >= cap || *p < 0x20)
            return -1;
        if (*p == '\\') {
            p++;
            const char *e = strchr("\"\\/bfnrt", *p);
            if (*p && e) {
                out[n++] = "\"\\/\b\f\n\r\t"[e - "\"\\/bfnrt"];
                p++;
            } else if (*p == 'u') {
                unsigned cp = 0;
                for (int i = 1; i <= 4; i++) {
                    int h = hexval(p[i]);
                    if (h < 0)
                        return -1;
                    cp = cp << 4 | (unsigned)h;
                }
                if (cp >= 0xd800 && cp <= 0xdfff)
                    return -1; /* the logger has no reason to write surrogates */
                n += put_utf8(out + n, cp);
                p += 5;
            } else {
                return -1;
            }
            continue;
        }
        size_t k = utf8_len(p);
        if (k == 0)
            return -1;
        memcpy(out + n, p, k);
        n += k;
        p += k;
    }
    out[n] = 0;
    *len = n;
    *pp = (const char *)p + 1;
    return 0;
}

/* Parses a whole line "{...}\n" into at most max members; returns how many, -1 if invalid. */
static int jparse(const char *line, member *m, int max)
{
    const char *p = line;
    int n = 0;
    if (*p++ != '{')
        return -1;
    for (;;) {
        if (n == max)
            return -1;
        if (jstring(&p, m[n].key, sizeof m[n].key, &m[n].klen) != 0 || *p++ != ':')
            return -1;
        if (strncmp(p, "true", 4) == 0) {
            strcpy(m[n].val, "true");
            m[n].vlen = 4;
            p += 4;
        } else if (jstring(&p, m[n].val, sizeof m[n].val, &m[n].vlen) != 0) {
            return -1;
        }
        n++;
        if (*p == ',') {
            p++;
            continue;
        }
        if (*p++ != '}')
            return -1;
        break;
    }
    if (strcmp(p, "\n") != 0)
        return -1;
    return n;
}

static member mem[600];

static void test_checker(void **state)
{
    (void)state;
    /* the checker itself refuses what is not valid */
    assert_int_equal(jparse("{\"a\":\"b\",\"c\":true}\n", mem, 600), 2);
    assert_string_equal(mem[1].key, "c");
    assert_int_equal(jparse("{\"a\":\"\\u00e9\\n\"}\n", mem, 600), 1);
    assert_string_equal(mem[0].val, "\xc3\xa9\n");
    const char *bad[] = {"{\"a\":\"b\"}",       "{\"a\":\"b\",}\n",
                         "{\"a\":\"b\x01\"}\n", "{\"a\":\"\\x41\"}\n",
                         "{\"a\":\"\xff\"}\n",  "{\"a\":\"b\"}}\n",
                         "{\"a\"\"b\"}\n",      "{\"a\":\"\\u12\"}\n",
                         "{\"a\":\"b}\n",       "{}\n"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_int_equal(jparse(bad[i], mem, 600), -1);
}

/* ---- setup and levels --------------------------------------------------------------------- */

static void test_setup_args(void **state)
{
    (void)state;
    assert_int_equal(ims_log_setup("info", "text"), 0);
    assert_int_equal(ims_log_setup("loud", "text"), -1);
    assert_int_equal(ims_log_setup("debug", "xml"), -1);
    assert_int_equal(ims_log_setup("", "json"), -1);
    assert_int_equal(ims_log_setup("INFO", "text"), -1);
    /* a refused setup changes nothing */
    assert_int_equal(ims_log_enabled(IMS_LOG_DEBUG), 0);
    ims_log(IMS_LOG_INFO, "still_text", "a=%d", 1);
    assert_text(got(), "info still_text a=1\n");
    /* NULL keeps the current setting */
    assert_int_equal(ims_log_setup(NULL, "text"), 0);
    assert_int_equal(ims_log_enabled(IMS_LOG_INFO), 1);
    assert_int_equal(ims_log_setup("debug", NULL), 0);
    assert_int_equal(ims_log_enabled(IMS_LOG_DEBUG), 1);
}

static void test_levels(void **state)
{
    (void)state;
    static const char *names[] = {"error", "warn", "info", "debug"};
    for (int set = 0; set < 4; set++) {
        assert_int_equal(ims_log_setup(names[set], "text"), 0);
        for (int l = 0; l < 4; l++) {
            assert_int_equal(ims_log_enabled((ims_log_level)l), l <= set);
            ims_log((ims_log_level)l, "ev", "n=%d", l);
            char want[64];
            snprintf(want, sizeof want, "%s ev n=%d\n", names[l], l);
            if (l <= set)
                assert_text(got(), want);
            else
                assert_string_equal(got(), "");
        }
    }
    assert_int_equal(ims_log_setup("info", "text"), 0);
}

/* ---- text --------------------------------------------------------------------------------- */

static void test_text(void **state)
{
    (void)state;
    assert_int_equal(ims_log_setup("info", "text"), 0);
    ims_log(IMS_LOG_INFO, "login", "user=%s addr=%s", "alice", "127.0.0.1:5555");
    assert_text(got(), "info login user=alice addr=127.0.0.1:5555\n");
    ims_log(IMS_LOG_WARN, "started", "%s", "");
    assert_text(got(), "warn started\n");
    ims_log(IMS_LOG_INFO, "say", "text=\"hello world\" n=%d", 5);
    assert_text(got(), "info say text=\"hello world\" n=5\n");
    /* a value cannot forge a second line */
    ims_log(IMS_LOG_INFO, "ev", "user=%s", "bob\n2026-01-01T00:00:00.000Z error fake x=1");
    assert_text(got(), "info ev user=bob\\n2026-01-01T00:00:00.000Z error fake x=1\n");
    ims_log(IMS_LOG_INFO, "ev", "v=%s", "a\rb\tc\x01\x7f\xc3\xa9\xff");
    assert_text(got(), "info ev v=a\\rb\\tc\\x01\\x7f\xc3\xa9\\xff\n");
    ims_log(IMS_LOG_INFO, "ev\nx", "v=%d", 1);
    assert_text(got(), "info ev\\nx v=1\n");
}

/* ---- JSON --------------------------------------------------------------------------------- */

static void test_json(void **state)
{
    (void)state;
    assert_int_equal(ims_log_setup("debug", "json"), 0);
    ims_log(IMS_LOG_INFO, "login", "user=%s addr=%s", "alice", "127.0.0.1:5555");
    assert_json(got(), ",\"level\":\"info\",\"event\":\"login\",\"user\":\"alice\","
                       "\"addr\":\"127.0.0.1:5555\"}\n");
    ims_log(IMS_LOG_DEBUG, "tick", "%s", "");
    assert_json(got(), ",\"level\":\"debug\",\"event\":\"tick\"}\n");
    ims_log(IMS_LOG_ERROR, "e", "n=%d m=%u", -5, 7u);
    assert_json(got(), ",\"level\":\"error\",\"event\":\"e\",\"n\":\"-5\",\"m\":\"7\"}\n");
    ims_log(IMS_LOG_WARN, "e", "  a=1    b=2  ");
    assert_json(got(), ",\"level\":\"warn\",\"event\":\"e\",\"a\":\"1\",\"b\":\"2\"}\n");
    /* escaping */
    ims_log(IMS_LOG_INFO, "ev", "text=%s", "a\"b\\c\x01\x1f\x7f/\t\n");
    assert_json(got(), ",\"level\":\"info\",\"event\":\"ev\","
                       "\"text\":\"a\\\"b\\\\c\\u0001\\u001f\\u007f/\\u0009\\u000a\"}\n");
    ims_log(IMS_LOG_INFO, "q\"e", "k\\=v");
    assert_json(got(), ",\"level\":\"info\",\"event\":\"q\\\"e\",\"msg\":\"k\\\\=v\"}\n");
    /* UTF-8 passes, invalid bytes become U+FFFD */
    ims_log(IMS_LOG_INFO, "ev", "name=%s bad=%s", "\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80",
            "a\xff\xc3(\xed\xa0\x80z");
    assert_json(got(), ",\"level\":\"info\",\"event\":\"ev\",\"name\":\"\xc3\xa9\xe2\x82\xac"
                       "\xf0\x9f\x98\x80\",\"bad\":\"a\\ufffd\\ufffd(\\ufffd\\ufffd\\ufffdz\"}\n");
    /* quoted values */
    ims_log(IMS_LOG_INFO, "say", "text=\"hello world\" n=%d", 5);
    assert_json(got(), ",\"level\":\"info\",\"event\":\"say\",\"text\":\"hello world\","
                       "\"n\":\"5\"}\n");
    ims_log(IMS_LOG_INFO, "say", "text=\"say \\\"hi\\\" \\\\ok\" e=\"\" u=\"open end");
    assert_json(got(), ",\"level\":\"info\",\"event\":\"say\",\"text\":\"say \\\"hi\\\" "
                       "\\\\ok\",\"e\":\"\",\"u\":\"open end\"}\n");
    /* words that are not key=value continue the value before them, or make up "msg" */
    ims_log(IMS_LOG_WARN, "accept_error", "reason=%s fd=%d", "Too many  open files", 7);
    assert_json(got(), ",\"level\":\"warn\",\"event\":\"accept_error\","
                       "\"reason\":\"Too many  open files\",\"fd\":\"7\"}\n");
    ims_log(IMS_LOG_INFO, "note", "starting up now k=v =x (a=b)");
    assert_json(got(), ",\"level\":\"info\",\"event\":\"note\",\"msg\":\"starting up now\","
                       "\"k\":\"v =x (a=b)\"}\n");
    ims_log(IMS_LOG_INFO, "note", "k=\"a b\" c d");
    assert_json(got(), ",\"level\":\"info\",\"event\":\"note\",\"k\":\"a b c d\"}\n");
    ims_log(IMS_LOG_INFO, "kv", "a.b-c_D9=1 k==2 e=");
    assert_json(got(), ",\"level\":\"info\",\"event\":\"kv\",\"a.b-c_D9\":\"1\",\"k\":\"=2\","
                       "\"e\":\"\"}\n");
    assert_int_equal(ims_log_setup("info", "text"), 0);
}

/* Random keys and values (no spaces, values not starting with a quote) come back exactly. */
static void test_json_random(void **state)
{
    (void)state;
    assert_int_equal(ims_log_setup("info", "json"), 0);
    static const char kch[] = "abcdefghijklmnopqrstuvwxyzABCXYZ0123456789_.-";
    unsigned seed = 12345;
    for (int iter = 0; iter < 3000; iter++) {
        char fmt[1200] = "", keys[8][16], vals[8][64];
        int np = 1 + (int)(rand_r(&seed) % 8);
        size_t n = 0;
        for (int i = 0; i < np; i++) {
            size_t kl = 1 + (size_t)rand_r(&seed) % 12, vl = (size_t)rand_r(&seed) % 60;
            for (size_t j = 0; j < kl; j++)
                keys[i][j] = kch[(size_t)rand_r(&seed) % (sizeof kch - 1)];
            keys[i][kl] = 0;
            for (size_t j = 0; j < vl; j++) {
                int c;
                do
                    c = 1 + rand_r(&seed) % 127;
                while (c == ' ' || (j == 0 && c == '"') || c == '%');
                vals[i][j] = (char)c;
            }
            vals[i][vl] = 0;
            n += (size_t)snprintf(fmt + n, sizeof fmt - n, "%s%s=%s", i ? " " : "", keys[i],
                                  vals[i]);
        }
        ims_log(IMS_LOG_INFO, "rnd", "%s", fmt);
        const char *line = got();
        int m = jparse(line, mem, 600);
        if (m != np + 3)
            fail_msg("iteration %d: %d members in %s (from %s)", iter, m, line, fmt);
        assert_string_equal(mem[0].key, "ts");
        assert_string_equal(mem[1].key, "level");
        assert_string_equal(mem[2].key, "event");
        assert_string_equal(mem[2].val, "rnd");
        for (int i = 0; i < np; i++) {
            assert_string_equal(mem[3 + i].key, keys[i]);
            assert_string_equal(mem[3 + i].val, vals[i]);
        }
    }
    assert_int_equal(ims_log_setup("info", "text"), 0);
}

/* ---- truncation --------------------------------------------------------------------------- */

static void test_truncation(void **state)
{
    (void)state;
    static char big[10000];
    const char *line;
    size_t n;
    /* every cut point near the end, for plain, escaped and multi-byte content and keys */
    static const char *fill[] = {"a", "\x01", "\xc3\xa9", "\"", "\xff"};
    for (int fmt = 0; fmt < 2; fmt++) {
        assert_int_equal(ims_log_setup("info", fmt ? "json" : "text"), 0);
        for (size_t f = 0; f < sizeof fill / sizeof fill[0]; f++) {
            for (size_t len = 3800; len < 4200; len += 3) {
                size_t fl = strlen(fill[f]), k = 0;
                while (k + fl <= len / (f == 1 ? 4 : 1)) {
                    memcpy(big + k, fill[f], fl);
                    k += fl;
                }
                big[k] = 0;
                ims_log(IMS_LOG_INFO, "big", "v=%s key_number_two_is_long=%s x=y", big, big);
                line = got();
                n = strlen(line);
                assert_true(n <= IMS_LOG_LINE_MAX);
                assert_int_equal(line[n - 1], '\n');
                assert_null(memchr(line, '\n', n - 1));
                if (fmt) {
                    int m = jparse(line, mem, 600);
                    if (m < 0)
                        fail_msg("invalid JSON at %zu: %s", len, line);
                    assert_string_equal(mem[m - 1].key, "truncated");
                    assert_string_equal(mem[m - 1].val, "true");
                } else {
                    assert_ts(line);
                    assert_true(n > 14 && strcmp(line + n - 13, " [truncated]\n") == 0);
                }
            }
        }
    }
    /* longer than the formatting buffer */
    memset(big, 'z', sizeof big - 1);
    big[sizeof big - 1] = 0;
    assert_int_equal(ims_log_setup("info", "json"), 0);
    ims_log(IMS_LOG_INFO, "big", "v=%s", big);
    line = got();
    assert_true(strlen(line) <= IMS_LOG_LINE_MAX);
    assert_true(jparse(line, mem, 600) == 5);
    assert_string_equal(mem[4].key, "truncated");
    /* a line that just fits is not marked */
    assert_int_equal(ims_log_setup("info", "text"), 0);
    size_t room = IMS_LOG_LINE_MAX - strlen("2026-11-25T10:00:00.123Z info e v=\n");
    memset(big, 'q', room);
    big[room] = 0;
    ims_log(IMS_LOG_INFO, "e", "v=%s", big);
    line = got();
    assert_int_equal(strlen(line), IMS_LOG_LINE_MAX);
    assert_text(line, line + 25); /* well-formed */
    assert_null(strstr(line, "[truncated]"));
    assert_int_equal(ims_log_setup("info", "text"), 0);
}

static void test_errno_kept(void **state)
{
    (void)state;
    assert_int_equal(ims_log_setup("info", "json"), 0);
    errno = ERANGE;
    ims_log(IMS_LOG_INFO, "ev", "a=%d", 1);
    assert_int_equal(errno, ERANGE);
    got();
    /* a closed fd: nothing to see, nothing breaks, errno kept */
    ims_log_set_fd(-1);
    errno = EDOM;
    ims_log(IMS_LOG_ERROR, "ev", "a=%d", 1);
    assert_int_equal(errno, EDOM);
    ims_log_set_fd(wfd);
    assert_string_equal(got(), "");
    assert_int_equal(ims_log_setup("info", "text"), 0);
}

/* ---- threads: every line whole ------------------------------------------------------------ */

#define NTHREADS 4
#define PER_THREAD 400

static void *writer(void *arg)
{
    int t = (int)(intptr_t)arg;
    static const char pad[] = "................................................................";
    for (int i = 0; i < PER_THREAD; i++) {
        int w = (i * 37 + t * 11) % 64;
        ims_log(IMS_LOG_INFO, "thr", "t=%d i=%d pad=%.*s%.*s%.*s end=1", t, i, w, pad, w, pad,
                (i * 13) % 64, pad);
    }
    return NULL;
}

static void test_threads(void **state)
{
    (void)state;
    const char *path = logpath;
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND, 0600);
    assert_true(fd >= 0);
    ims_log_set_fd(fd);
    for (int fmt = 0; fmt < 2; fmt++) {
        assert_int_equal(ftruncate(fd, 0), 0);
        assert_int_equal(ims_log_setup("info", fmt ? "json" : "text"), 0);
        pthread_t th[NTHREADS];
        for (int t = 0; t < NTHREADS; t++)
            assert_int_equal(pthread_create(&th[t], NULL, writer, (void *)(intptr_t)t), 0);
        for (int t = 0; t < NTHREADS; t++)
            assert_int_equal(pthread_join(th[t], NULL), 0);
        FILE *f = fopen(path, "r");
        assert_non_null(f);
        static char seen[NTHREADS][PER_THREAD];
        memset(seen, 0, sizeof seen);
        char line[512];
        int count = 0;
        while (fgets(line, sizeof line, f)) {
            int t, i, n;
            if (fmt) {
                assert_int_equal(jparse(line, mem, 600), 7);
                t = atoi(mem[3].val);
                i = atoi(mem[4].val);
                assert_string_equal(mem[6].val, "1");
            } else {
                assert_ts(line);
                assert_int_equal(
                    sscanf(line + 25, "info thr t=%d i=%d pad=%*[.] end=1\n%n", &t, &i, &n), 2);
                assert_string_equal(line + strlen(line) - 6, "end=1\n");
            }
            assert_true(t >= 0 && t < NTHREADS && i >= 0 && i < PER_THREAD);
            assert_int_equal(seen[t][i], 0);
            seen[t][i] = 1;
            count++;
        }
        fclose(f);
        assert_int_equal(count, NTHREADS * PER_THREAD);
    }
    ims_log_set_fd(wfd);
    close(fd);
    assert_int_equal(ims_log_setup("info", "text"), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_checker),    cmocka_unit_test(test_setup_args),
        cmocka_unit_test(test_levels),     cmocka_unit_test(test_text),
        cmocka_unit_test(test_json),       cmocka_unit_test(test_json_random),
        cmocka_unit_test(test_truncation), cmocka_unit_test(test_errno_kept),
        cmocka_unit_test(test_threads),
    };
    return cmocka_run_group_tests(tests, setup_pipe, teardown_pipe);
}
