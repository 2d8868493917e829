/* Integration tests: common helpers for the test programs.
 *
 * Checks: IT_CHECK(cond, fmt, ...) and IT_EQ(a, b) report file:line and a message, print the
 * tail of every running imd's stderr and fail the cmocka test. Use them (not assert_*) so that a
 * failure always shows what imd logged.
 *
 * Every test program calls it_main_init() first: it arms an alarm() safety net (the whole
 * program is killed, imd children included, when it runs longer than the bound) and ignores
 * SIGPIPE. Each cmocka test uses it_teardown, which closes every client and destroys every
 * imd_proc the test left behind.
 */
#ifndef IMP_ITEST_H
#define IMP_ITEST_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "client.h"
#include "imd_proc.h"

#if defined(__GNUC__)
#define IT_PRINTF(a, b) __attribute__((format(printf, a, b)))
#define IT_NORETURN __attribute__((noreturn))
#else
#define IT_PRINTF(a, b)
#define IT_NORETURN
#endif

void it_failed(const char *file, int line, const char *expr, const char *fmt, ...)
    IT_PRINTF(4, 5) IT_NORETURN;
/* A note printed to stderr with a prefix (test progress, timings). */
void it_note(const char *fmt, ...) IT_PRINTF(1, 2);

#define IT_CHECK(cond, ...)                                    \
    do {                                                       \
        if (!(cond))                                           \
            it_failed(__FILE__, __LINE__, #cond, __VA_ARGS__); \
    } while (0)

#define IT_EQ(a, b)                                                                    \
    do {                                                                               \
        long long it_a_ = (long long)(a), it_b_ = (long long)(b);                      \
        if (it_a_ != it_b_)                                                            \
            it_failed(__FILE__, __LINE__, #a " == " #b, "%lld != %lld", it_a_, it_b_); \
    } while (0)

/* Arms alarm(seconds) ($IMP_ITEST_TIMEOUT overrides), ignores SIGPIPE, unbuffers stderr. */
void it_main_init(unsigned seconds);
/* cmocka teardown: closes all clients, destroys all imd processes. */
int it_teardown(void **state);
/* 1 when imd is available; otherwise prints why the program skips and returns 0. */
int it_imd_or_skip(void);

/* Monotonic milliseconds. */
uint64_t it_now_ms(void);
void it_sleep_ms(unsigned ms);

/* The path of a program of this build flavour: $IMP_BUILD_DIR/name (default build/), absolute.
 * Points to a static buffer per call site family: copy it if you need two at once. */
const char *it_tool_path(const char *name);
/* A file's contents, NUL-terminated (the caller frees; "" when it cannot be read); *len (may be
 * NULL) is the length without the NUL. */
char *it_slurp(const char *path, size_t *len);
/* Waits for a child: its exit code (0-255), 128 + signal, or -1 when it did not exit within
 * timeout_ms (it is then killed and reaped). */
int it_wait_exit(pid_t pid, int timeout_ms);

/* A process's resident set (VmRSS, KiB) and open descriptor count (/proc/PID/fd), or -1. */
long it_rss_kb(pid_t pid);
int it_fd_count(pid_t pid);

/* Makes a self-signed certificate for 127.0.0.1, ::1 and "localhost" (EC P-256, valid 1 day,
 * `openssl req -x509`) in dir: writes the paths of the PEM certificate and key into cert and
 * key (the certificate is its own CA: pass it as --cafile). Fails the test when openssl is
 * missing or fails. */
void it_make_cert(const char *dir, char *cert, size_t certlen, char *key, size_t keylen);

/* Writes len bytes as the whole file, through a temporary file and a rename (a reader never
 * sees half a file); fails the test on error. */
void it_write_file(const char *path, const void *data, size_t len);
/* The same for a string (a config file). */
void it_write_text(const char *path, const char *text);
/* A file from offset from to its end, NUL-terminated (the caller frees; "" when missing). */
char *it_slurp_from(const char *path, long from);
/* Waits until imd's stderr log, after offset from, contains needle: 1 found, 0 timeout. */
int it_wait_log(const imd_proc *p, long from, const char *needle, int timeout_ms);
/* qsort comparison of uint64_t values. */
int it_cmp_u64(const void *a, const void *b);

/* GET path from 127.0.0.1:port over HTTP/1.0 (3 s deadline): the whole response, headers
 * included, NUL-terminated in buf; its length, or -1 when the request could not be made. */
int it_http_get(int port, const char *path, char *buf, size_t cap);
/* One named counter or gauge of STATS (c: an administrator's session); fails the test when
 * STATS is not answered; -1 when the name is not in the reply. */
long long it_stat(tc *c, const char *name);

/* Start imd with the fast hashing parameters (hash_opslimit=1, hash_memlimit=8m) and the given
 * extra arguments (NULL-terminated, may be NULL). Fails the test when it does not start. */
imd_proc *it_start_imd(const char *const *extra);
/* Same, created but not started (admin subcommands first); start it with it_start. */
imd_proc *it_create_imd(const char *const *extra);
void it_start(imd_proc *p);
/* Same without the fast hashing parameters (server defaults). */
imd_proc *it_start_imd_plain(const char *const *extra);

/* Run an admin subcommand (`imd --data DIR ARGS...`, NULL-terminated) with stdin_text;
 * returns its exit code; its stdout into out. */
int it_admin(imd_proc *p, const char *stdin_text, char *out, size_t outlen,
             const char *const *args);

/* A fresh unique name with a prefix: "<prefix><counter>" (valid IMP name). */
const char *it_name(char *buf, size_t len, const char *prefix);

/* Register user (password) on a new connection, failing the test on any error. */
tc *it_register(int port, const char *user, const char *password, tc_auth *auth);
/* Log in on a new connection, failing the test on any error. */
tc *it_login(int port, const char *user, const char *password, tc_auth *auth);

/* The end of every test: imd (same pid as before, when pid > 0) is alive; two fresh users
 * register (or, when reg_user is not NULL, these existing users log in) and a direct message
 * round trip works: SEND -> ACK stored -> DELIVER with the body -> DELIVERED. */
void it_liveness(imd_proc *p, long pid, const char *user_a, const char *pw_a, const char *user_b,
                 const char *pw_b);

/* The very end of a test: SIGTERM; imd must exit 0 within 5 s (graceful stop), and its stderr
 * must hold no sanitizer report (AddressSanitizer, LeakSanitizer, UBSan "runtime error:"). */
void it_finish(imd_proc *p);

/* Expect a closed connection within timeout_ms. want > 0: an ERROR with exactly that code must
 * have been received before the close; 0: any or none. Returns the ERROR code seen (0 none). */
int it_expect_closed(tc *c, int timeout_ms, int want, const char *what);

#endif
