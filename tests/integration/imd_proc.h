/* Integration tests: imd as a child process.
 *
 * An imd_proc owns a fresh temporary directory (mkdtemp) holding the data directory (data/),
 * imd's stderr (stderr.log, appended across restarts) and stdout (stdout.log). imd is started
 * with `--data DIR/data --listen 127.0.0.1:0` plus the extra arguments given at creation; the
 * port is parsed from the line `imd: listening on 127.0.0.1:PORT` and the start waits (bounded)
 * for `imd: ready`. A restart reuses the directory and the arguments.
 *
 *     imd_proc *p = imd_new(args);      // NULL-terminated extra arguments; NULL on failure
 *     ... p->port ...
 *     imd_stop(p, 5000);                // SIGTERM; exit status, or -1 (then SIGKILLed)
 *     imd_start(p);                     // restart on the same data dir
 *     imd_destroy(p);                   // stop if running, remove the directory
 *
 * Every imd_proc is registered: imd_dump_all() prints the tail of each one's stderr (used when a
 * test fails) and imd_kill_all() SIGKILLs every running child (async-signal-safe; used by the
 * alarm safety net). Children also get PR_SET_PDEATHSIG, so they die with the test.
 */
#ifndef IMP_ITEST_IMD_PROC_H
#define IMP_ITEST_IMD_PROC_H

#include <stddef.h>
#include <sys/types.h>

#define IMD_MAX_ARGS 40
#define IMD_START_TIMEOUT_MS 20000

typedef struct imd_proc {
    pid_t pid; /* 0 when not running */
    char dir[256];
    char data[300];
    char errlog[300];
    char outlog[300];
    int port;         /* TCP port of the first listener */
    int metrics_port; /* 0 when no metrics listener was announced */
    int tls_port;     /* TCP port of the last TLS listener ("imd: listening on A:P (tls)"), 0 */
    int keep_port;    /* imd_keep_port: the next starts listen on this port, not port 0 */
    char *args[IMD_MAX_ARGS + 1];
    int nargs;
    int last_status; /* wait status of the last exit; -1 unknown */
    int starts;      /* successful starts */
} imd_proc;

/* Path of the imd binary: $IMD, else $IMP_BUILD_DIR/imd (relative to IMP_SRCDIR when
 * IMP_BUILD_DIR is relative), else IMP_SRCDIR/build/imd. */
const char *imd_binary(void);
/* 1 if the binary exists and is executable. */
int imd_available(void);

/* Allocate and make the directory, without starting (for admin subcommands before the first
 * start). NULL (with a message on stderr) on failure. */
imd_proc *imd_create(const char *const *args);
/* imd_create, then imd_start. */
imd_proc *imd_new(const char *const *args);
/* Append arguments for the next starts (e.g. a configuration change before a restart). */
void imd_add_args(imd_proc *p, const char *const *args);
/* (Re)start on the existing directory. 0, or -1 with a message (and the log) on stderr. */
int imd_start(imd_proc *p);
/* The next starts listen on 127.0.0.1:<the current port> instead of port 0, so that clients
 * (imload --reconnect) find the restarted server at the same address. */
void imd_keep_port(imd_proc *p);
/* SIGTERM and wait up to timeout_ms. Returns the exit code (0-255), 128+signal when killed by a
 * signal, or -1 when it did not exit in time (it is then SIGKILLed and reaped). */
int imd_stop(imd_proc *p, int timeout_ms);
/* Wait (no signal) up to timeout_ms for the child to exit: exit code as imd_stop, -1 when
 * it still runs (it is left running). */
int imd_wait_exit(imd_proc *p, int timeout_ms);
/* SIGKILL and reap. */
void imd_kill9(imd_proc *p);
/* 1 while the child runs (reaps it otherwise). */
int imd_alive(imd_proc *p);
/* Stop (SIGTERM, then SIGKILL), remove the directory (unless $IMP_ITEST_KEEP is set), free. */
void imd_destroy(imd_proc *p);

/* Run `imd --data DIR/data ARGV...` (argv NULL-terminated) with stdin_text as its standard
 * input (NULL: /dev/null), wait up to timeout_ms. Its stdout goes to out (NUL-terminated,
 * truncated to outlen), its stderr to the stderr log. Returns the exit code, 128+signal, or -1
 * (could not run, or timed out: then killed). */
int imd_admin(imd_proc *p, const char *stdin_text, char *out, size_t outlen,
              const char *const *argv, int timeout_ms);

/* Print the last maxbytes of a child's stderr log to stderr (async-signal-safe). */
void imd_dump_log(const imd_proc *p, size_t maxbytes);
void imd_dump_all(void);
void imd_kill_all(void);
/* Destroy every registered imd_proc (test teardown). */
void imd_destroy_all(void);

#endif
