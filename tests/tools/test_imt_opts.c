/* Unit tests for tools/common/imt_opts.c: common option handling, the password sources
 * (file, environment; never the command line), durations and integers. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "imt_opts.h"

static char tmpdir[] = "/tmp/imt_opts_XXXXXX";

static const char *write_tmp(const char *name, const char *content, size_t len)
{
    static char path[256];
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(content, 1, len, f), len);
    fclose(f);
    return path;
}

static int setup(void **state)
{
    (void)state;
    unsetenv("IMP_SERVER");
    unsetenv("IMP_USER");
    unsetenv("IMP_PASSWORD");
    return 0;
}

static void test_duration(void **state)
{
    (void)state;
    uint32_t ms = 0;
    assert_int_equal(imt_parse_duration_ms("5", &ms), 0);
    assert_int_equal(ms, 5000);
    assert_int_equal(imt_parse_duration_ms("1.5", &ms), 0);
    assert_int_equal(ms, 1500);
    assert_int_equal(imt_parse_duration_ms("0.25s", &ms), 0);
    assert_int_equal(ms, 250);
    assert_int_equal(imt_parse_duration_ms("250ms", &ms), 0);
    assert_int_equal(ms, 250);
    assert_int_equal(imt_parse_duration_ms("2s", &ms), 0);
    assert_int_equal(ms, 2000);
    assert_int_equal(imt_parse_duration_ms("1m", &ms), 0);
    assert_int_equal(ms, 60000);
    assert_int_equal(imt_parse_duration_ms("0", &ms), 0);
    assert_int_equal(ms, 0);
    static const char *bad[] = {"", "x", "-1", "5h", "1.5.2", "ms", "5 s", "1e3", ".", "99999999"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ms = 77;
        assert_int_equal(imt_parse_duration_ms(bad[i], &ms), -1);
    }
}

static void test_u64(void **state)
{
    (void)state;
    uint64_t v;
    assert_int_equal(imt_parse_u64("10", 1, 100, &v), 0);
    assert_int_equal(v, 10);
    assert_int_equal(imt_parse_u64("0", 1, 100, &v), -1);
    assert_int_equal(imt_parse_u64("101", 1, 100, &v), -1);
    assert_int_equal(imt_parse_u64("-1", 0, 100, &v), -1);
    assert_int_equal(imt_parse_u64("1x", 0, 100, &v), -1);
    assert_int_equal(imt_parse_u64("", 0, 100, &v), -1);
    assert_int_equal(imt_parse_u64("99999999999999999999999", 0, UINT64_MAX, &v), -1);
    assert_int_equal(imt_parse_u64("18446744073709551615", 0, UINT64_MAX, &v), 0);
    assert_true(v == UINT64_MAX);
}

static void test_first_line(void **state)
{
    (void)state;
    char *s;
    size_t n;
    char err[256];
    const char *p = write_tmp("a", "secret\nsecond\n", 14);
    assert_int_equal(imt_read_first_line(p, &s, &n, err, sizeof err), 0);
    assert_int_equal(n, 6);
    assert_memory_equal(s, "secret", 6);
    free(s);
    p = write_tmp("b", "crlf pw\r\n", 9);
    assert_int_equal(imt_read_first_line(p, &s, &n, err, sizeof err), 0);
    assert_int_equal(n, 7);
    assert_memory_equal(s, "crlf pw", 7);
    free(s);
    p = write_tmp("c", "noeol", 5);
    assert_int_equal(imt_read_first_line(p, &s, &n, err, sizeof err), 0);
    assert_int_equal(n, 5);
    free(s);
    p = write_tmp("d", "\nx\n", 3);
    assert_int_equal(imt_read_first_line(p, &s, &n, err, sizeof err), -1);
    assert_non_null(strstr(err, "empty"));
    assert_int_equal(imt_read_first_line("/nonexistent/x", &s, &n, err, sizeof err), -1);
    assert_non_null(strstr(err, "/nonexistent/x"));
}

static void test_handle(void **state)
{
    (void)state;
    imt_opts o;
    setenv("IMP_SERVER", "envhost:1", 1);
    setenv("IMP_USER", "envuser", 1);
    imt_opts_init(&o, "t");
    assert_string_equal(o.server, "envhost:1");
    assert_string_equal(o.user, "envuser");
    assert_int_equal(o.connect_timeout_ms, IMT_DEFAULT_CONNECT_TIMEOUT_MS);
    assert_int_equal(imt_opts_handle(&o, 's', "h:2"), 1);
    assert_string_equal(o.server, "h:2");
    assert_int_equal(imt_opts_handle(&o, 'u', "alice"), 1);
    assert_string_equal(o.user, "alice");
    assert_int_equal(imt_opts_handle(&o, 'q', NULL), 1);
    assert_int_equal(imt_opts_handle(&o, 'v', NULL), 1);
    assert_int_equal(imt_opts_handle(&o, 'd', NULL), 1);
    assert_int_equal(imt_opts_handle(&o, IMT_OPT_JSON, NULL), 1);
    assert_int_equal(imt_opts_handle(&o, IMT_OPT_REGISTER, NULL), 1);
    assert_int_equal(imt_opts_handle(&o, IMT_OPT_VERSION, NULL), 1);
    assert_int_equal(imt_opts_handle(&o, IMT_OPT_CONNECT_TIMEOUT, "250ms"), 1);
    assert_int_equal(o.quiet + o.verbose + o.debug + o.json + o.do_register + o.show_version, 6);
    assert_int_equal(o.connect_timeout_ms, 250);
    assert_int_equal(imt_opts_handle(&o, IMT_OPT_CONNECT_TIMEOUT, "soon"), -1);
    assert_int_equal(imt_opts_handle(&o, 't', "x"), 0);
    assert_int_equal(imt_opts_handle(&o, 'p', "x"), 0);

    imt_client_config cfg;
    imt_client_config_init(&cfg);
    o.password = NULL;
    imt_opts_client_config(&o, &cfg);
    assert_string_equal(cfg.server, "h:2");
    assert_string_equal(cfg.user, "alice");
    assert_int_equal(cfg.do_register, 1);
    assert_int_equal(cfg.trace, 1);
    assert_int_equal(cfg.verbose, 1);
    assert_int_equal(cfg.connect_timeout_ms, 250);
    assert_string_equal(cfg.prog, "t");
    imt_opts_free(&o);
    setup(NULL);
}

static void test_finish_password_sources(void **state)
{
    (void)state;
    imt_opts o;
    /* file wins over the environment */
    setenv("IMP_PASSWORD", "fromenv", 1);
    imt_opts_init(&o, "t");
    imt_opts_handle(&o, 'u', "alice");
    const char *p = write_tmp("pw", "fromfile\n", 9);
    imt_opts_handle(&o, IMT_OPT_PASSWORD_FILE, p);
    assert_int_equal(imt_opts_finish(&o, 1), 0);
    assert_int_equal(o.password_len, 8);
    assert_memory_equal(o.password, "fromfile", 8);
    imt_opts_free(&o);
    assert_null(o.password);

    imt_opts_init(&o, "t");
    imt_opts_handle(&o, 'u', "alice");
    assert_int_equal(imt_opts_finish(&o, 1), 0);
    assert_int_equal(o.password_len, 7);
    assert_memory_equal(o.password, "fromenv", 7);
    imt_opts_free(&o);
    unsetenv("IMP_PASSWORD");

    /* no password needed */
    imt_opts_init(&o, "t");
    assert_int_equal(imt_opts_finish(&o, 0), 0);
    imt_opts_free(&o);
}

static void test_finish_errors(void **state)
{
    (void)state;
    imt_opts o;
    setenv("IMP_PASSWORD", "pw", 1);
    /* no user */
    imt_opts_init(&o, "t");
    assert_int_equal(imt_opts_finish(&o, 1), -1);
    imt_opts_free(&o);
    /* invalid user name */
    imt_opts_init(&o, "t");
    imt_opts_handle(&o, 'u', "bad name!");
    assert_int_equal(imt_opts_finish(&o, 1), -1);
    imt_opts_free(&o);
    /* bad server address */
    imt_opts_init(&o, "t");
    imt_opts_handle(&o, 'u', "alice");
    imt_opts_handle(&o, 's', "host:notaport");
    assert_int_equal(imt_opts_finish(&o, 1), -1);
    imt_opts_free(&o);
    /* unreadable password file */
    imt_opts_init(&o, "t");
    imt_opts_handle(&o, 'u', "alice");
    imt_opts_handle(&o, IMT_OPT_PASSWORD_FILE, "/nonexistent/pw");
    assert_int_equal(imt_opts_finish(&o, 1), -1);
    imt_opts_free(&o);
    unsetenv("IMP_PASSWORD");
}

static void test_help_and_version(void **state)
{
    (void)state;
    assert_non_null(strstr(imt_opts_help, "--password-file"));
    assert_non_null(strstr(imt_opts_help, "IMP_SERVER"));
    assert_null(strstr(imt_opts_help, "--password "));
}

int main(void)
{
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_duration, setup),
        cmocka_unit_test_setup(test_u64, setup),
        cmocka_unit_test_setup(test_first_line, setup),
        cmocka_unit_test_setup(test_handle, setup),
        cmocka_unit_test_setup(test_finish_password_sources, setup),
        cmocka_unit_test_setup(test_finish_errors, setup),
        cmocka_unit_test_setup(test_help_and_version, setup),
    };
    int r = cmocka_run_group_tests(tests, NULL, NULL);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", tmpdir);
    return r;
}
