/* Unit tests of imload --check (tools/imload/check.c) on hand-written history files: a clean
 * history (with a resend, an at-least-once redelivery and lines of different connections
 * interleaved out of order) passes; each anomaly kind (lost, lost with --ack none, duplicate
 * stored under two MSG_IDs, reordered by MSG_ID, reordered by sender seq, unexpected: never
 * sent / wrong receiver / refused) makes it exit 1 with the right count; malformed or missing
 * files exit 2. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../../tools/imload/check.c"

static char dir[] = "/tmp/imload_check_XXXXXX";
static char out_text[4096], err_text[8192];

/* Write text to a file of the temporary directory; returns its path (static, per name). */
static const char *put(const char *name, const char *text)
{
    static char paths[8][300];
    static int next;
    char *p = paths[next++ % 8];
    snprintf(p, 300, "%s/%s", dir, name);
    FILE *f = fopen(p, "w");
    assert_non_null(f);
    fputs(text, f);
    assert_int_equal(fclose(f), 0);
    return p;
}

/* Run the checker on the files; the summary into out_text, the details into err_text. */
static int run_files(int n, const char *const *files)
{
    char *ob = NULL, *eb = NULL;
    size_t ol = 0, el = 0;
    FILE *o = open_memstream(&ob, &ol), *e = open_memstream(&eb, &el);
    assert_non_null(o);
    assert_non_null(e);
    int rc = check_main(n, (char *const *)files, o, e);
    fclose(o);
    fclose(e);
    snprintf(out_text, sizeof out_text, "%s", ob ? ob : "");
    snprintf(err_text, sizeof err_text, "%s", eb ? eb : "");
    free(ob);
    free(eb);
    return rc;
}

static int run_text(const char *text)
{
    const char *f = put("h", text);
    return run_files(1, &f);
}

/* The number after " key " in the summary line; -1 when absent. */
static long long num(const char *key)
{
    char k[64];
    snprintf(k, sizeof k, " %s ", key);
    const char *p = strstr(out_text, k);
    return p ? atoll(p + strlen(k)) : -1;
}

#define HEAD "H imload-history 1 direct stored\n"

/* Two senders to two receivers: sender 0 seq 2 was resent after a reconnect (its first ACK
 * lost) and acknowledged twice with the same MSG_ID (DUPLICATE 1); receiver r0 got seq 1 twice
 * (at least once); A lines come after the D lines of other connections. */
static const char clean[] = HEAD "S 0 1 00000000000000000001 r0\n"
                                 "S 1 1 00000001000000000001 r1\n"
                                 "D r0 0 1 10 1\n"
                                 "S 0 2 00000000000000000002 r0\n"
                                 "A 0 1 stored 0 10 0\n"
                                 "R 0 2 00000000000000000002 r0\n"
                                 "D r0 0 1 10 1\n"
                                 "A 0 2 stored 0 12 0\n"
                                 "A 0 2 stored 0 12 1\n"
                                 "D r1 1 1 11 1\n"
                                 "D r0 0 2 12 2\n"
                                 "A 1 1 stored 0 11 0\n";

static void test_clean(void **state)
{
    (void)state;
    assert_int_equal(run_text(clean), 0);
    assert_true(strncmp(out_text, "check: ", 7) == 0);
    assert_int_equal(num("sent"), 3);
    assert_int_equal(num("acked"), 3);
    assert_int_equal(num("refused"), 0);
    assert_int_equal(num("delivered"), 3);
    assert_int_equal(num("lost"), 0);
    assert_int_equal(num("duplicates"), 0);
    assert_int_equal(num("reordered"), 0);
    assert_int_equal(num("unexpected"), 0);
    assert_int_equal(num("redelivered"), 1);
    assert_int_equal(num("resent"), 1);
    assert_int_equal(num("unconfirmed"), 0);
    assert_string_equal(err_text, "");
}

/* Refused and unconfirmed messages are not lost; split over two files (two processes). */
static void test_refused_unconfirmed_two_files(void **state)
{
    (void)state;
    const char *f[2];
    f[0] = put("a", HEAD "S 0 1 - r0\nA 0 1 refused 509 0 0\nS 0 2 - r0\n");
    f[1] = put("b", HEAD "S 1 1 - r1\nA 1 1 stored 0 5 0\nD r1 1 1 5 1\n");
    assert_int_equal(run_files(2, f), 0);
    assert_int_equal(num("sent"), 3);
    assert_int_equal(num("acked"), 1);
    assert_int_equal(num("refused"), 1);
    assert_int_equal(num("unconfirmed"), 1);
    assert_int_equal(num("lost"), 0);
}

static void test_lost(void **state)
{
    (void)state;
    assert_int_equal(run_text(HEAD "S 0 1 - r0\nA 0 1 stored 0 7 0\nS 0 2 - r0\n"
                                   "A 0 2 stored 0 8 0\nD r0 0 2 8 1\n"),
                     1);
    assert_int_equal(num("lost"), 1);
    assert_int_equal(num("delivered"), 1);
    assert_non_null(strstr(err_text, "lost: sender 0 seq 1"));
}

/* --ack none: sent but never delivered is lost. */
static void test_lost_ack_none(void **state)
{
    (void)state;
    assert_int_equal(run_text("H imload-history 1 direct none\nS 3 1 - r1\nS 3 2 - r1\n"
                              "D r1 3 2 4 1\n"),
                     1);
    assert_int_equal(num("lost"), 1);
    assert_int_equal(num("unconfirmed"), 0);
}

/* The same (sender, seq) stored under two MSG_IDs: in the ACKs, or ACK and DELIVER. */
static void test_duplicate(void **state)
{
    (void)state;
    assert_int_equal(run_text(HEAD "S 0 1 c1 r0\nA 0 1 stored 0 7 0\nR 0 1 c1 r0\n"
                                   "A 0 1 stored 0 9 0\nD r0 0 1 7 1\n"),
                     1);
    assert_int_equal(num("duplicates"), 1);
    assert_non_null(strstr(err_text, "stored as MSG_ID 7 and 9"));
    assert_int_equal(run_text(HEAD "S 0 1 c1 r0\nA 0 1 stored 0 7 0\nD r0 0 1 7 1\n"
                                   "D r0 0 1 8 2\n"),
                     1);
    assert_int_equal(num("duplicates"), 1);
    assert_int_equal(num("redelivered"), 0);
    /* the same MSG_ID twice is a redelivery, not a duplicate */
    assert_int_equal(run_text(HEAD "S 0 1 c1 r0\nA 0 1 stored 0 7 0\nD r0 0 1 7 1\n"
                                   "D r0 0 1 7 2\n"),
                     0);
    assert_int_equal(num("duplicates"), 0);
    assert_int_equal(num("redelivered"), 1);
}

/* First deliveries of one pair below a MSG_ID already delivered. */
static void test_reordered_msg_id(void **state)
{
    (void)state;
    assert_int_equal(run_text(HEAD "S 0 1 c1 r0\nS 0 2 c2 r0\nR 0 1 c1 r0\nR 0 2 c2 r0\n"
                                   "A 0 1 stored 0 20 0\nA 0 2 stored 0 10 0\n"
                                   "D r0 0 2 10 1\nD r0 0 1 20 2\nS 0 3 c3 r0\n"
                                   "A 0 3 stored 0 15 0\nD r0 0 3 15 3\n"),
                     1);
    assert_int_equal(num("reordered"), 1);
    assert_non_null(strstr(err_text, "MSG_ID 15 after MSG_ID 20"));
    /* other pairs have their own order */
    assert_int_equal(run_text(HEAD "S 0 1 - r0\nS 1 1 - r0\nA 0 1 stored 0 20 0\n"
                                   "A 1 1 stored 0 10 0\nD r0 0 1 20 1\nD r0 1 1 10 2\n"),
                     0);
}

/* Messages never resent must arrive in sender seq order; a resent one may be stored later. */
static void test_reordered_seq(void **state)
{
    (void)state;
    static const char never_resent[] = HEAD "S 0 1 c1 r0\nS 0 2 c2 r0\nA 0 2 stored 0 10 0\n"
                                            "A 0 1 stored 0 11 0\nD r0 0 2 10 1\nD r0 0 1 11 2\n";
    assert_int_equal(run_text(never_resent), 1);
    assert_int_equal(num("reordered"), 1);
    static const char resent[] = HEAD "S 0 1 c1 r0\nS 0 2 c2 r0\nR 0 1 c1 r0\n"
                                      "A 0 2 stored 0 10 0\nA 0 1 stored 0 11 0\n"
                                      "D r0 0 2 10 1\nD r0 0 1 11 2\n";
    assert_int_equal(run_text(resent), 0);
    assert_int_equal(num("reordered"), 0);
}

static void test_unexpected(void **state)
{
    (void)state;
    /* never sent */
    assert_int_equal(run_text(HEAD "S 0 1 - r0\nA 0 1 stored 0 1 0\nD r0 0 1 1 1\n"
                                   "D r0 0 9 2 2\n"),
                     1);
    assert_int_equal(num("unexpected"), 1);
    assert_non_null(strstr(err_text, "never sent"));
    /* to a receiver that should not get it (and so lost for its target) */
    assert_int_equal(run_text(HEAD "S 0 1 - r0\nA 0 1 stored 0 1 0\nD r1 0 1 1 1\n"), 1);
    assert_int_equal(num("unexpected"), 1);
    assert_int_equal(num("lost"), 1);
    assert_non_null(strstr(err_text, "sent to r0"));
    /* refused, yet delivered */
    assert_int_equal(run_text(HEAD "S 0 1 - r0\nA 0 1 refused 511 0 0\nD r0 0 1 3 1\n"), 1);
    assert_int_equal(num("unexpected"), 1);
}

static void test_malformed(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "S 0 1 - r0\n",                  /* no header */
        HEAD "S 0 x - r0\n",             /* not a number */
        HEAD "S 0 1 - r0 extra\n",       /* too many fields */
        HEAD "A 0 1 maybe 0 1 0\n",      /* unknown outcome */
        HEAD "D r0 0 1 1\n",             /* too few fields */
        HEAD "Q 1 2 3\n",                /* unknown kind */
        HEAD "S 0 1 - r0\nS 0 1 - r1\n", /* one message, two targets */
        "",                              /* empty */
        "H imload-history 1 direct\n",   /* no ack mode */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int rc = run_text(bad[i]);
        if (rc != 2)
            fail_msg("case %zu: exit %d, want 2 (%s)", i, rc, out_text);
        assert_string_equal(out_text, "");
    }
    const char *missing = "/nonexistent/imload-history";
    assert_int_equal(run_files(1, &missing), 2);
    assert_non_null(strstr(err_text, "cannot read"));
    /* files of different ack modes */
    const char *f[2];
    f[0] = put("m1", HEAD);
    f[1] = put("m2", "H imload-history 1 direct none\n");
    assert_int_equal(run_files(2, f), 2);
}

/* A larger history: 200 senders x 500 messages, in order: clean; then one line removed. */
static void test_large(void **state)
{
    (void)state;
    size_t cap = 200u * 500u * 80u + 100u, len = 0;
    char *t = malloc(cap);
    assert_non_null(t);
    len += (size_t)snprintf(t + len, cap - len, HEAD);
    uint64_t id = 0;
    for (int s = 0; s < 200; s++)
        for (int q = 1; q <= 500; q++) {
            id++;
            len += (size_t)snprintf(t + len, cap - len, "S %d %d - r%d\nA %d %d stored 0 %llu 0\n",
                                    s, q, s % 7, s, q, (unsigned long long)id);
            if (!(s == 150 && q == 250))
                len += (size_t)snprintf(t + len, cap - len, "D r%d %d %d %llu %d\n", s % 7, s, q,
                                        (unsigned long long)id, q);
        }
    assert_int_equal(run_text(t), 1);
    assert_int_equal(num("sent"), 100000);
    assert_int_equal(num("delivered"), 99999);
    assert_int_equal(num("lost"), 1);
    assert_int_equal(num("reordered"), 0);
    free(t);
}

int main(void)
{
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_clean),         cmocka_unit_test(test_refused_unconfirmed_two_files),
        cmocka_unit_test(test_lost),          cmocka_unit_test(test_lost_ack_none),
        cmocka_unit_test(test_duplicate),     cmocka_unit_test(test_reordered_msg_id),
        cmocka_unit_test(test_reordered_seq), cmocka_unit_test(test_unexpected),
        cmocka_unit_test(test_malformed),     cmocka_unit_test(test_large),
    };
    int r = cmocka_run_group_tests(tests, NULL, NULL);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "cannot remove %s\n", dir);
    return r;
}
