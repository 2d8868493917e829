/* Integration: faults, and nothing acknowledged is lost (issue 6, "Faults"; SPEC.md 9:
 * IMP-DELIV-001, -003, -004, -007).
 *
 * - power loss: imd with the test-only VFS tests/faults/powerloss_vfs.c LD_PRELOADed (writes
 *   reach the file only when it is synced: xSync, or imd's own fdatasync of the file; at a chosen
 *   write or sync the process _exit()s without them), 20 crash points with the default
 *   configuration (fsync_thread=yes: the syncer thread fdatasyncs the log, at least one crash
 *   point falls in such an fdatasync) and 6 with the other fsync_thread value (when imd knows
 *   the key): every ACKed message is delivered after a restart without the VFS, PRAGMA
 *   integrity_check ok; the control with sync_full=no loses ACKed messages (so the check can
 *   fail);
 * - disk full: the data directory on a small tmpfs (own mount namespace; root only, skipped
 *   otherwise): each SEND is stored or refused with STORAGE, logins and transient delivery keep
 *   working, everything is stored again once space returns, every stored message is delivered
 *   exactly once;
 * - corrupt store at start: truncated and bit-flipped copies of the database and of its WAL:
 *   imd refuses to start with a clear message, or starts; what it then delivers is reported;
 * - a recipient reset (SO_LINGER 0) after DELIVERED(60) of 100 gets exactly 61..100 again, by
 *   LOGIN and by resume token;
 * - a slow consumer (4 KiB receive buffer, never reads, 20 MiB sent) is disconnected, imd's
 *   memory stays bounded, other clients' round trips go on, and it then gets everything;
 * - a SIGSTOPped client is dropped after the ping timeout, its watcher sees it offline;
 * - 1,000 connections with megabytes queued, reset: descriptors back to the baseline.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "itest.h"

#define T 5000

/* ---- helpers ------------------------------------------------------------------------------ */

/* Resets the connection: SO_LINGER {1, 0} and close sends RST, whatever is queued. */
static void tc_reset(tc *c)
{
    struct linger lg = {1, 0};
    setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    tc_close(c);
}

static uint32_t send_async(tc *c, const char *to, const char *cmid, const void *body, size_t len,
                           int cls)
{
    tc_msg s;
    memset(&s, 0, sizeof s);
    s.kind = IMP_TARGET_USER;
    s.target = to;
    s.cmid = cmid;
    s.cls = cls;
    s.ack_mode = -1;
    s.body = body;
    s.body_len = len;
    imp_msg m;
    tc_build_send(&s, &m);
    return tc_request(c, &m);
}

/* PING and wait for its PONG: everything sent before has been processed. */
static void sync_with(tc *c, const char *who)
{
    uint32_t req = tc_simple(c, IMP_PING);
    IT_CHECK(req != 0, "%s: PING", who);
    tc_frame *f = tc_wait(c, IMP_PONG, req, T);
    IT_CHECK(f != NULL, "%s: no PONG", who);
    tc_frame_free(f);
}

/* PRAGMA integrity_check on a database file (imd stopped): the first row into out. */
static void db_check(const char *path, char *out, size_t len)
{
    sqlite3 *db = NULL;
    snprintf(out, len, "cannot open");
    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE, NULL) == SQLITE_OK) {
        sqlite3_stmt *q = NULL;
        if (sqlite3_prepare_v2(db, "PRAGMA integrity_check", -1, &q, NULL) == SQLITE_OK &&
            sqlite3_step(q) == SQLITE_ROW)
            snprintf(out, len, "%s", (const char *)sqlite3_column_text(q, 0));
        else
            snprintf(out, len, "%s", sqlite3_errmsg(db));
        sqlite3_finalize(q);
    }
    sqlite3_close(db);
}

static void db_path(const imd_proc *p, char *out, size_t len)
{
    snprintf(out, len, "%s/imd.db", p->data);
}

static uint64_t pct(uint64_t *v, size_t n, double q)
{
    if (n == 0)
        return 0;
    qsort(v, n, sizeof *v, it_cmp_u64);
    size_t i = (size_t)(q * (double)(n - 1) + 0.5);
    return v[i < n ? i : n - 1];
}

/* ---- 1. power loss ------------------------------------------------------------------------ */

/* PL_PAUSE_MS: a pause in the sending, well over imd's checkpoint interval (IMS_SYNCER_CKPT_MS,
 * 200 ms in server/syncer.h), so that the syncer's checkpoint connection runs before the crash */
enum { PL_MAX = 4000, PL_WINDOW = 8, PL_EXIT = 99, PL_PAUSE_MS = 600 };
static const char PL_PW_S[] = "sender password", PL_PW_R[] = "recipient password";

static char saved_asan[1024];
static int had_asan;

static void preload_on(const char *var, long n)
{
    const char *so = it_tool_path("tests/faults/libpowerloss.so");
    IT_CHECK(access(so, R_OK) == 0, "%s is missing (make builds it)", so);
    setenv("LD_PRELOAD", so, 1);
    char v[32];
    snprintf(v, sizeof v, "%ld", n);
    setenv(var, v, 1);
    /* the VFS is not sanitized: a sanitized imd must accept a library preloaded before ASan */
    const char *a = getenv("ASAN_OPTIONS");
    had_asan = a != NULL;
    snprintf(saved_asan, sizeof saved_asan, "%s", a ? a : "");
    char asan[1100];
    snprintf(asan, sizeof asan, "%s%sverify_asan_link_order=0", saved_asan,
             saved_asan[0] ? ":" : "");
    setenv("ASAN_OPTIONS", asan, 1);
}

static void preload_off(void)
{
    unsetenv("LD_PRELOAD");
    unsetenv("IMP_POWERLOSS_CRASH_AT");
    unsetenv("IMP_POWERLOSS_CRASH_AT_SYNC");
    if (had_asan)
        setenv("ASAN_OPTIONS", saved_asan, 1);
    else
        unsetenv("ASAN_OPTIONS");
}

typedef struct pl_res {
    int sent, acked, lost, extra; /* extra: stored without an ACK seen (ACK lost in the crash) */
    char how[16]; /* the crash, from the VFS's message: "write", "xSync", "fdatasync", "fsync" */
    long xsyncs;  /* xSyncs before the crash (-1: unknown): > 1 after the syncer's checkpoint */
} pl_res;

/* The simulated power loss in p's stderr log from byte `from` on ("powerloss: simulated power
 * loss at write N" or "... at sync N (xSync|fdatasync|fsync)", then "; before it: X xSync, ..."):
 * its kind into out ("write", the sync's kind, or "?" when there is none), X into *xsyncs (-1
 * unknown). */
static void pl_crash_kind(const imd_proc *p, long from, char *out, size_t len, long *xsyncs)
{
    static const char pre[] = "powerloss: simulated power loss at ";
    snprintf(out, len, "?");
    *xsyncs = -1;
    char *log = it_slurp_from(p->errlog, from);
    if (log == NULL)
        return;
    char *last = NULL;
    for (char *at = strstr(log, pre); at != NULL; at = strstr(at + 1, pre))
        last = at;
    if (last != NULL) {
        last += sizeof pre - 1;
        char *eol = strchr(last, '\n');
        if (eol != NULL)
            *eol = '\0';
        const char *before = strstr(last, "; before it: ");
        if (before == NULL || sscanf(before, "; before it: %ld xSync", xsyncs) != 1)
            *xsyncs = -1;
        char *lp = strchr(last, '(');
        char *rp = lp ? strchr(lp, ')') : NULL;
        if (strncmp(last, "write ", 6) == 0)
            snprintf(out, len, "write");
        else if (lp != NULL && rp != NULL)
            snprintf(out, len, "%.*s", (int)(rp - lp - 1), lp + 1);
    }
    free(log);
}

/* One crash point: imd with the VFS (var = n), a sender pipelining durable messages with
 * CLIENT_MSG_IDs "c<round>-<i>" to plr (online when `online`, never acknowledging) until the
 * simulated power loss, pausing PL_PAUSE_MS once pause_at (> 0) were ACKed; then imd without the
 * VFS on the same data: plr must get every ACKed message (counted as lost otherwise), once;
 * acknowledged, clean stop, integrity_check ok. */
static void pl_round(imd_proc *p, int round, const char *var, long n, int online, int pause_at,
                     pl_res *res)
{
    static char acked[PL_MAX], got[PL_MAX];
    memset(acked, 0, sizeof acked);
    memset(got, 0, sizeof got);
    memset(res, 0, sizeof *res);
    struct stat lst;
    long log_from = stat(p->errlog, &lst) == 0 ? (long)lst.st_size : 0;
    preload_on(var, n);
    int st = imd_start(p);
    preload_off();
    IT_CHECK(st == 0, "imd with the power-loss VFS (%s=%ld) did not start", var, n);

    tc *rcv = NULL;
    if (online) {
        rcv = tc_connect(p->port, T);
        if (rcv && tc_login(rcv, "plr", PL_PW_R, UINT64_MAX, NULL, T) != 0) {
            tc_close(rcv);
            rcv = NULL;
        }
    }
    tc *snd = tc_connect(p->port, T);
    int ok = snd && tc_login(snd, "pls", PL_PW_S, UINT64_MAX, NULL, T) == 0;
    int next = 0, inflight = 0;
    uint64_t t0 = it_now_ms(), pause_until = 0;
    while (ok && !snd->eof) {
        IT_CHECK(it_now_ms() - t0 < 20000 && next < PL_MAX,
                 "crash point %s=%ld not reached: %d SENDs in %llu ms", var, n, next,
                 (unsigned long long)(it_now_ms() - t0));
        if (pause_at > 0 && pause_until == 0 && res->acked >= pause_at)
            pause_until = it_now_ms() + PL_PAUSE_MS;
        while (inflight < PL_WINDOW && next < PL_MAX && it_now_ms() >= pause_until) {
            char id[32];
            snprintf(id, sizeof id, "c%d-%d", round, next);
            if (send_async(snd, "plr", id, id, strlen(id), -1) == 0) {
                ok = 0;
                break;
            }
            inflight++;
            next++;
        }
        tc_pump(snd, 20);
        tc_frame *f;
        while ((f = tc_wait(snd, IMP_ACK, 0, 0)) != NULL) {
            char id[65];
            int r = -1, i = -1;
            tc_str(&f->m, IMP_T_CLIENT_MSG_ID, id, sizeof id);
            IT_CHECK(sscanf(id, "c%d-%d", &r, &i) == 2 && r == round && i >= 0 && i < next,
                     "ACK for '%s'", id);
            IT_EQ(imp_msg_u(&f->m, IMP_T_OUTCOME, 0), IMP_OUTCOME_STORED);
            acked[i] = 1;
            res->acked++;
            inflight--;
            tc_frame_free(f);
        }
        if (rcv) {
            tc_pump(rcv, 0);
            while ((f = tc_wait(rcv, IMP_DELIVER, 0, 0)) != NULL)
                tc_frame_free(f);
        }
    }
    res->sent = next;
    int rc = imd_wait_exit(p, 10000);
    IT_CHECK(rc == PL_EXIT, "imd with %s=%ld: exit %d, want %d (the simulated power loss)", var, n,
             rc, PL_EXIT);
    pl_crash_kind(p, log_from, res->how, sizeof res->how, &res->xsyncs);
    tc_close(snd);
    if (rcv)
        tc_close(rcv);

    /* After the power loss, without the VFS: the recipient gets what was stored. */
    it_start(p);
    tc_auth ra;
    rcv = it_login(p->port, "plr", PL_PW_R, &ra);
    uint64_t maxseq = ra.last_seq, deadline = it_now_ms() + T, acked_to = ra.last_seq;
    int seen = 0;
    for (;;) {
        int missing = 0;
        for (int i = 0; i < next; i++)
            missing += acked[i] && !got[i];
        tc_frame *f = tc_wait(rcv, IMP_DELIVER, 0, missing && it_now_ms() < deadline ? 200 : 300);
        if (!f)
            if (!missing || it_now_ms() >= deadline)
                break;
        if (!f)
            continue;
        char body[32];
        tc_str(&f->m, IMP_T_BODY, body, sizeof body);
        int r = -1, i = -1;
        IT_CHECK(sscanf(body, "c%d-%d", &r, &i) == 2 && r == round && i >= 0 && i < next,
                 "unexpected message '%s' after crash point %s=%ld", body, var, n);
        IT_CHECK(!got[i], "'%s' delivered twice on one session (stored twice?)", body);
        got[i] = 1;
        seen++;
        uint64_t seq = imp_msg_u(&f->m, IMP_T_SEQ, 0);
        IT_CHECK(seq > maxseq, "SEQ %llu after %llu", (unsigned long long)seq,
                 (unsigned long long)maxseq);
        maxseq = seq;
        tc_frame_free(f);
        if (seen % 200 == 0) {
            /* imd keeps at most IMS_WINDOW (1,000) DELIVERs unacknowledged per session */
            IT_EQ(tc_delivered(rcv, maxseq), 0);
            acked_to = maxseq;
        }
    }
    for (int i = 0; i < next; i++) {
        res->lost += acked[i] && !got[i];
        res->extra += got[i] && !acked[i];
    }
    if (maxseq > acked_to)
        IT_EQ(tc_delivered(rcv, maxseq), 0);
    sync_with(rcv, "plr");
    tc_close(rcv);
    IT_EQ(imd_stop(p, 5000), 0);
    char path[400], chk[256];
    db_path(p, path, sizeof path);
    db_check(path, chk, sizeof chk);
    IT_CHECK(strcmp(chk, "ok") == 0, "integrity_check after crash point %s=%ld: %s", var, n, chk);
}

static imd_proc *pl_setup(const char *const *args)
{
    imd_proc *p = it_start_imd(args);
    tc_close(it_register(p->port, "pls", PL_PW_S, NULL));
    tc_close(it_register(p->port, "plr", PL_PW_R, NULL));
    IT_EQ(imd_stop(p, 5000), 0);
    return p;
}

typedef struct pl_point {
    int sync; /* 1: at the n-th sync, before it is durable; 0: at the n-th write */
    long n;
    int online;   /* the recipient is online during the round */
    int pause_at; /* > 0: pause PL_PAUSE_MS after that many ACKs (the checkpoint runs) */
} pl_point;

/* The schedule's crash point k: even k at the N-th write (inside a commit's WAL frames), odd k
 * at the N-th sync (the commit itself, or the syncer's fdatasync of it). */
static pl_point pl_sched(int k)
{
    pl_point pt = {k % 2, k % 2 ? 2 + 3L * k : 20 + 37L * k, k % 4 < 2, 0};
    return pt;
}

/* Crash points pts[0..n) on p, rounds base+j; no ACKed message may be lost. Counts the points
 * whose crash fell in a sync made outside SQLite (imd's own fdatasync/fsync) into *outside, and,
 * with fsync_thread=yes (`async`: SQLite then syncs only the log's header when it starts it, and
 * the checkpoints), those that came after the syncer's checkpoint (more than one xSync) into
 * *ckpt. */
static void pl_points(imd_proc *p, const char *mode, int async, int base, const pl_point *pts,
                      int n, int *outside, int *ckpt)
{
    int total_acked = 0, total_lost = 0, total_extra = 0, with_acks = 0;
    uint64_t t0 = it_now_ms();
    *outside = *ckpt = 0;
    for (int j = 0; j < n; j++) {
        const pl_point *pt = &pts[j];
        const char *var = pt->sync ? "IMP_POWERLOSS_CRASH_AT_SYNC" : "IMP_POWERLOSS_CRASH_AT";
        pl_res r;
        pl_round(p, base + j, var, pt->n, pt->online, pt->pause_at, &r);
        it_note("power loss (%s) %2d: %s=%ld (%s, after %ld xSync)%s, recipient %s: %d SENDs, %d "
                "ACKed, lost %d, stored without ACK %d",
                mode, j + 1, var + 14, pt->n, r.how, r.xsyncs, pt->pause_at ? ", paused" : "",
                pt->online ? "online" : "offline", r.sent, r.acked, r.lost, r.extra);
        IT_CHECK(r.lost == 0, "%s, crash point %s=%ld (%s): %d ACKed messages lost (IMP-DELIV-001)",
                 mode, var, pt->n, r.how, r.lost);
        int in_imd = strcmp(r.how, "fdatasync") == 0 || strcmp(r.how, "fsync") == 0;
        int as_set = pt->sync ? in_imd || strcmp(r.how, "xSync") == 0 : strcmp(r.how, "write") == 0;
        IT_CHECK(as_set && r.xsyncs >= 0,
                 "%s, crash point %s=%ld: the VFS reported a power loss at '%s' (%ld xSync)", mode,
                 var, pt->n, r.how, r.xsyncs);
        *outside += in_imd;
        *ckpt += async && r.xsyncs > 1;
        total_acked += r.acked;
        total_lost += r.lost;
        total_extra += r.extra;
        with_acks += r.acked > 0;
    }
    char ck[40] = "";
    if (async)
        snprintf(ck, sizeof ck, ", %d after a checkpoint", *ckpt);
    it_note("power loss (%s): %d crash points (%d with ACKs, %d in imd's own fdatasync%s), %d "
            "ACKed, lost %d, %d stored without an ACK; %llu ms",
            mode, n, with_acks, *outside, ck, total_acked, total_lost, total_extra,
            (unsigned long long)(it_now_ms() - t0));
    IT_CHECK(with_acks >= n / 2, "%s: only %d of %d crash points came after an ACK", mode,
             with_acks, n);
}

/* The value --check-config prints for fsync_thread with extra arguments ("yes"/"no"), or ""
 * when imd refuses them (a binary that does not know the key). */
static void pl_fsync_thread(imd_proc *p, const char *set, char *out, size_t len)
{
    static char dump[16384];
    const char *with[] = {"--set", set, "--check-config", NULL};
    const char *without[] = {"--check-config", NULL};
    snprintf(out, len, "%s", "");
    if (imd_admin(p, NULL, dump, sizeof dump, set ? with : without, 5000) != 0)
        return;
    for (const char *l = dump; *l;) {
        char v[8];
        if (sscanf(l, "fsync_thread = %7[a-z]", v) == 1) {
            snprintf(out, len, "%s", v);
            return;
        }
        const char *eol = strchr(l, '\n');
        if (eol == NULL)
            break;
        l = eol + 1;
    }
}

/* With fsync_thread=yes the crash points covered what is new there: a crash inside imd's own
 * fdatasync of the log (outside SQLite), and crashes after the syncer thread's checkpoint. */
static void pl_check_async(const char *mode, int outside, int ckpt)
{
    IT_CHECK(outside > 0,
             "%s, yet no crash point fell in imd's own fdatasync of the log: the VFS does not see "
             "it (or imd syncs inline)",
             mode);
    IT_CHECK(ckpt > 0, "%s, yet no crash point came after a checkpoint (pause of %d ms)", mode,
             PL_PAUSE_MS);
}

static void test_power_loss(void **state)
{
    (void)state;
    imd_proc *p = pl_setup(NULL);
    /* the default configuration: fsync_thread=yes, unless the binary predates it */
    char def[8], other[8];
    pl_fsync_thread(p, NULL, def, sizeof def);
    int def_yes = strcmp(def, "yes") == 0;
    char mode[40];
    snprintf(mode, sizeof mode, "default, fsync_thread=%s", def[0] ? def : "unknown");
    /* the 20 of the schedule, then 2 late ones after a pause: with fsync_thread=yes the syncer's
     * checkpoint connection (its own files on the same database and log, another thread) has
     * run before the crash */
    pl_point pts[22];
    for (int k = 0; k < 20; k++)
        pts[k] = pl_sched(k);
    pts[20] = (pl_point){1, 150, 1, 40};
    pts[21] = (pl_point){0, 1500, 0, 40};
    int outside = 0, ckpt = 0;
    pl_points(p, mode, def_yes, 0, pts, 22, &outside, &ckpt);
    if (def_yes)
        pl_check_async(mode, outside, ckpt);

    /* The other fsync_thread value, a few crash points, when imd knows the key. */
    const char *oset = def_yes ? "fsync_thread=no" : "fsync_thread=yes";
    pl_fsync_thread(p, oset, other, sizeof other);
    if (def[0] == '\0' || other[0] == '\0') {
        it_note("power loss: imd does not accept --set %s (no fsync_thread key): that part is "
                "skipped",
                oset);
    } else {
        const char *const oargs[] = {"--set", oset, NULL};
        imd_proc *o = pl_setup(oargs);
        pl_point opts[7];
        static const int some[] = {2, 5, 8, 11, 16, 19};
        for (int j = 0; j < 6; j++)
            opts[j] = pl_sched(some[j]);
        opts[6] = (pl_point){1, 150, 1, 40};
        int o_outside = 0, o_ckpt = 0;
        snprintf(mode, sizeof mode, "%s", oset);
        pl_points(o, mode, !def_yes, 200, opts, 7, &o_outside, &o_ckpt);
        if (!def_yes)
            pl_check_async(mode, o_outside, o_ckpt);
        it_start(o);
        it_liveness(o, (long)o->pid, NULL, NULL, NULL, NULL);
        it_finish(o);
    }

    /* The control: the same VFS with sync_full=no (synchronous=OFF, nothing is ever synced):
     * ACKed messages are lost, so the check above can fail. */
    static const char *const off[] = {"--set", "sync_full=no", NULL};
    imd_proc *q = pl_setup(off);
    int lost_points = 0, ctl_acked = 0, ctl_lost = 0;
    static const long ctl[] = {60, 200, 500};
    for (int k = 0; k < 3; k++) {
        pl_res r;
        pl_round(q, 100 + k, "IMP_POWERLOSS_CRASH_AT", ctl[k], k == 1, 0, &r);
        it_note("control (sync_full=no) %d: CRASH_AT=%ld: %d SENDs, %d ACKed, lost %d", k + 1,
                ctl[k], r.sent, r.acked, r.lost);
        lost_points += r.lost > 0;
        ctl_acked += r.acked;
        ctl_lost += r.lost;
    }
    it_note("control (sync_full=no): %d of 3 crash points lost ACKed messages (%d of %d)",
            lost_points, ctl_lost, ctl_acked);
    IT_CHECK(lost_points > 0, "the control lost nothing: the power-loss test cannot fail");
    it_start(q);
    it_liveness(q, (long)q->pid, NULL, NULL, NULL, NULL);
    it_finish(q);
    it_start(p);
    it_liveness(p, (long)p->pid, NULL, NULL, NULL, NULL);
    it_finish(p);
}

/* ---- 4. recipient dies before acknowledging ----------------------------------------------- */

/* Reads DELIVERs on c: exactly SEQ from..to, with the MSG_IDs ids[from-1..to-1], then nothing
 * more within 300 ms. */
static void expect_tail(tc *c, const uint64_t *ids, uint64_t from, uint64_t to, const char *what)
{
    for (uint64_t s = from; s <= to; s++) {
        tc_frame *f = tc_wait(c, IMP_DELIVER, 0, T);
        char d[512];
        IT_CHECK(f != NULL, "%s: DELIVER SEQ %llu missing: %s", what, (unsigned long long)s,
                 tc_describe(c, d, sizeof d));
        uint64_t seq = imp_msg_u(&f->m, IMP_T_SEQ, 0), id = imp_msg_u(&f->m, IMP_T_MSG_ID, 0);
        IT_CHECK(seq == s && id == ids[s - 1],
                 "%s: got SEQ %llu MSG_ID %llu, want SEQ %llu MSG_ID %llu", what,
                 (unsigned long long)seq, (unsigned long long)id, (unsigned long long)s,
                 (unsigned long long)ids[s - 1]);
        char body[16], want[16];
        snprintf(want, sizeof want, "m%03llu", (unsigned long long)s);
        IT_CHECK(strcmp(tc_str(&f->m, IMP_T_BODY, body, sizeof body), want) == 0,
                 "%s: SEQ %llu has body %s", what, (unsigned long long)s, body);
        tc_frame_free(f);
    }
    tc_frame *f = tc_wait(c, IMP_DELIVER, 0, 300);
    IT_CHECK(f == NULL, "%s: a DELIVER beyond SEQ %llu (SEQ %llu)", what, (unsigned long long)to,
             (unsigned long long)(f ? imp_msg_u(&f->m, IMP_T_SEQ, 0) : 0));
}

static void test_unacked_tail(void **state)
{
    (void)state;
    enum { N = 100, ACKED = 60 };
    imd_proc *p = it_start_imd(NULL);
    long pid = (long)p->pid;
    tc *a = it_register(p->port, "tail_a", "tail_a password", NULL);
    tc_auth ba;
    tc *b = it_register(p->port, "tail_b", "tail_b password", &ba);
    IT_CHECK(ba.has_token, "AUTH_OK without a resume token");
    static uint64_t ids[N];
    for (int i = 0; i < N; i++) {
        char body[16];
        snprintf(body, sizeof body, "m%03d", i + 1);
        tc_ack ack;
        IT_EQ(tc_send_text(a, "tail_b", body, body, &ack), 0);
        IT_EQ(ack.outcome, IMP_OUTCOME_STORED);
        ids[i] = ack.msg_id;
    }
    expect_tail(b, ids, 1, N, "first session");
    IT_EQ(tc_delivered(b, ACKED), 0);
    sync_with(b, "tail_b"); /* DELIVERED(60) is processed (and committed) before the PONG */
    tc_reset(b);

    /* LOGIN: exactly 61..100. */
    tc_auth b2;
    b = it_login(p->port, "tail_b", "tail_b password", &b2);
    IT_EQ(b2.last_seq, ACKED);
    expect_tail(b, ids, ACKED + 1, N, "after reset, LOGIN");
    tc_reset(b); /* nothing more acknowledged */

    /* The resume token (from the first session): 61..100 again. */
    b = tc_connect(p->port, T);
    IT_CHECK(b != NULL, "connect");
    tc_auth b3;
    IT_EQ(tc_login_token(b, "tail_b", ba.token, ba.token_len, UINT64_MAX, &b3, T), 0);
    IT_EQ(b3.last_seq, ACKED);
    expect_tail(b, ids, ACKED + 1, N, "after reset, resume token");
    IT_EQ(tc_delivered(b, N), 0);
    sync_with(b, "tail_b");
    it_note("unacked tail: DELIVERED(%d) of %d, reset twice: %d..%d redelivered by LOGIN and by "
            "resume token, nothing else",
            ACKED, N, ACKED + 1, N);
    tc_close(a);
    tc_close(b);
    it_liveness(p, pid, NULL, NULL, NULL, NULL);
    it_finish(p);
}

/* ---- 6. dead peer: a SIGSTOPped client ----------------------------------------------------- */

static void test_sigstopped_peer(void **state)
{
    (void)state;
    enum { I = 300, MISSED = 2 };
    static const char *const args[] = {"--set", "ping_interval_ms=300", "--set",
                                       "ping_max_missed=2", NULL};
    imd_proc *p = it_start_imd(args);
    long pid = (long)p->pid;
    tc_close(it_register(p->port, "frozen", "frozen password", NULL));
    tc *w = it_register(p->port, "watcher", "watcher password", NULL);
    uint8_t nb[64];
    imp_builder b;
    imp_builder_init(&b, nb, sizeof nb);
    IT_EQ(imp_names_add(&b, "frozen", 6), 0);
    imp_msg m;
    imp_msg_init(&m, IMP_SUBSCRIBE, 0);
    imp_msg_set_b(&m, IMP_T_NAMES, nb, b.len);
    imp_msg_set_u(&m, IMP_T_ENABLE, 1);
    uint32_t req = tc_request(w, &m);
    tc_frame *f = tc_wait_reply(w, req, T);
    IT_CHECK(f && f->m.type == IMP_OK, "SUBSCRIBE");
    tc_frame_free(f);
    it_sleep_ms(50);
    int fd_base = it_fd_count(p->pid);

    int pipefd[2];
    IT_EQ(pipe(pipefd), 0);
    pid_t child = fork();
    IT_CHECK(child >= 0, "fork: %s", strerror(errno));
    if (child == 0) {
        /* The client process: logs in, answers PINGs until it is stopped. */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        close(pipefd[0]);
        tc *c = tc_connect(p->port, T);
        char ok = c && tc_login(c, "frozen", "frozen password", UINT64_MAX, NULL, T) == 0;
        if (write(pipefd[1], &ok, 1) != 1)
            _exit(1);
        for (;;)
            if (!c || tc_pump(c, 100) < 0)
                _exit(2);
    }
    close(pipefd[1]);
    char ok = 0;
    IT_CHECK(read(pipefd[0], &ok, 1) == 1 && ok, "the child did not log in");
    close(pipefd[0]);
    int online = 0;
    uint64_t end = it_now_ms() + T;
    while (!online && it_now_ms() < end) {
        f = tc_wait(w, IMP_PRESENCE_EVENT, 0, 200);
        if (f && tc_field_is(&f->m, IMP_T_USER, "frozen") &&
            imp_msg_u(&f->m, IMP_T_STATUS, 9) == IMP_STATUS_ONLINE)
            online = 1;
        tc_frame_free(f);
    }
    IT_CHECK(online, "the watcher did not see frozen online");
    int fd_online = it_fd_count(p->pid);
    /* Alive while it runs: several ping intervals, still online (answering PINGs). */
    uint64_t t_run = it_now_ms();
    while (it_now_ms() - t_run < 4 * I) {
        f = tc_wait(w, IMP_PRESENCE_EVENT, 0, 50);
        IT_CHECK(f == NULL || !tc_field_is(&f->m, IMP_T_USER, "frozen"),
                 "presence changed while frozen was running (status %llu)",
                 (unsigned long long)imp_msg_u(&f->m, IMP_T_STATUS, 9));
        tc_frame_free(f);
    }
    IT_EQ(kill(child, SIGSTOP), 0);
    uint64_t t_stop = it_now_ms(), t_off = 0;
    /* bound: (missed + 1) intervals after the last PONG, plus a generous margin */
    uint64_t bound = (MISSED + 1) * I + 3000;
    while (!t_off && it_now_ms() - t_stop < bound) {
        f = tc_wait(w, IMP_PRESENCE_EVENT, 0, 20);
        if (f && tc_field_is(&f->m, IMP_T_USER, "frozen") &&
            imp_msg_u(&f->m, IMP_T_STATUS, 9) == IMP_STATUS_OFFLINE)
            t_off = it_now_ms();
        tc_frame_free(f);
    }
    IT_CHECK(t_off != 0, "no offline event for the stopped client within %llu ms",
             (unsigned long long)bound);
    /* The server closed its side: the descriptor count is back to the baseline. */
    int fd_now = it_fd_count(p->pid);
    end = it_now_ms() + 2000;
    while (fd_now != fd_base && it_now_ms() < end) {
        it_sleep_ms(20);
        fd_now = it_fd_count(p->pid);
    }
    it_note("SIGSTOPped peer (ping %d ms, %d missed): offline %llu ms after SIGSTOP (bound %llu); "
            "imd fds %d -> %d online -> %d",
            I, MISSED, (unsigned long long)(t_off - t_stop), (unsigned long long)bound, fd_base,
            fd_online, fd_now);
    IT_EQ(fd_online, fd_base + 1);
    IT_EQ(fd_now, fd_base);
    kill(child, SIGKILL);
    int st;
    IT_EQ(waitpid(child, &st, 0), child);
    IT_CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL, "child status %d", st);
    IT_CHECK(!w->eof, "the watcher was closed too");
    tc_close(w);
    it_liveness(p, pid, NULL, NULL, NULL, NULL);
    it_finish(p);
}

/* ---- 7. 1,000 resets with output queued ----------------------------------------------------- */

static void test_resets(void **state)
{
    (void)state;
    enum { USERS = 50, ROUNDS = 20, TBODY = 65536, TPER = 2, DBODY = 8192 };
    imd_proc *p = it_start_imd(NULL);
    long pid = (long)p->pid;
    static tc_auth au[USERS];
    char name[USERS][16];
    for (int i = 0; i < USERS; i++) {
        snprintf(name[i], sizeof name[i], "rz%02d", i);
        tc_close(it_register(p->port, name[i], "reset password", &au[i]));
        IT_CHECK(au[i].has_token, "no token");
    }
    tc *s = it_register(p->port, "rzsend", "reset password", NULL);
    sync_with(s, "rzsend");
    it_sleep_ms(100);
    int fd_base = it_fd_count(p->pid);
    long rss_base = it_rss_kb(p->pid), rss_peak = rss_base;
    static uint8_t tbody[TBODY], dbody[DBODY];
    memset(tbody, 't', sizeof tbody);
    memset(dbody, 'd', sizeof dbody);
    uint64_t queued_bytes = 0, t0 = it_now_ms();
    int conns = 0;
    for (int r = 0; r < ROUNDS; r++) {
        tc *c[USERS];
        for (int i = 0; i < USERS; i++) {
            c[i] = tc_connect_raw(p->port, T, 4096);
            IT_CHECK(c[i] != NULL, "connect %d", i);
            IT_EQ(tc_raw_hello(c[i], T), 0);
            IT_EQ(tc_login_token(c[i], name[i], au[i].token, au[i].token_len, UINT64_MAX, NULL, T),
                  0);
            conns++;
        }
        /* Output for every one of them: transient messages (queued at once) and a durable one
         * (delivered after the commit; it stays queued: nobody acknowledges). */
        uint32_t last = 0;
        int nreq = 0;
        for (int i = 0; i < USERS; i++) {
            for (int k = 0; k < TPER; k++) {
                last = send_async(s, name[i], NULL, tbody, sizeof tbody, IMP_CLASS_TRANSIENT);
                IT_CHECK(last != 0, "transient SEND");
                nreq++;
            }
            char id[32];
            snprintf(id, sizeof id, "r%d-%d", r, i);
            last = send_async(s, name[i], id, dbody, sizeof dbody, -1);
            IT_CHECK(last != 0, "durable SEND");
            nreq++;
            queued_bytes += TPER * TBODY + DBODY;
        }
        for (int k = 0; k < nreq; k++) {
            tc_frame *f = tc_wait(s, IMP_ACK, 0, T);
            IT_CHECK(f != NULL, "round %d: ACK %d of %d missing", r, k, nreq);
            int oc = (int)imp_msg_u(&f->m, IMP_T_OUTCOME, 0);
            IT_CHECK(oc == IMP_OUTCOME_STORED || oc == IMP_OUTCOME_DELIVERED,
                     "OUTCOME %d CODE %llu", oc,
                     (unsigned long long)imp_msg_u(&f->m, IMP_T_CODE, 0));
            tc_frame_free(f);
        }
        sync_with(s, "rzsend");
        long rss = it_rss_kb(p->pid);
        if (rss > rss_peak)
            rss_peak = rss;
        for (int i = 0; i < USERS; i++)
            tc_reset(c[i]);
    }
    uint64_t took = it_now_ms() - t0;
    int fd_now = it_fd_count(p->pid);
    uint64_t end = it_now_ms() + T;
    while (fd_now != fd_base && it_now_ms() < end) {
        it_sleep_ms(20);
        fd_now = it_fd_count(p->pid);
    }
    long rss_after = it_rss_kb(p->pid);
    it_note("%d connections reset (%d rounds of %d), %.1f MB sent to them, %llu ms; imd fds "
            "%d -> %d; RSS %ld KiB -> peak %ld KiB -> %ld KiB after",
            conns, ROUNDS, USERS, (double)queued_bytes / 1e6, (unsigned long long)took, fd_base,
            fd_now, rss_base, rss_peak, rss_after);
    IT_EQ(fd_now, fd_base);
    /* generous: a sanitized imd keeps up to 256 MiB in ASan's quarantine alone */
    IT_CHECK(rss_after < rss_base + 512 * 1024, "RSS %ld KiB after, %ld KiB before", rss_after,
             rss_base);
    tc_close(s);
    it_liveness(p, pid, NULL, NULL, NULL, NULL);
    it_finish(p);
}

/* ---- 2. disk full --------------------------------------------------------------------------- */

static char mounted[300]; /* a tmpfs this program mounted (unmounted by faults_teardown) */

static int faults_teardown(void **state)
{
    tc_close_all();
    for (int i = 0; mounted[0] && i < 16; i++) {
        /* imd must be gone before the unmount frees the directory for removal */
        imd_kill_all();
        if (umount2(mounted, MNT_DETACH) == 0 || errno == EINVAL)
            mounted[0] = 0;
    }
    return it_teardown(state);
}

/* Fills the file system of dir (a filler file) and gives back `room` bytes. */
static long long fill_fs(const char *path, long long room)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    IT_CHECK(fd >= 0, "%s: %s", path, strerror(errno));
    static char chunk[65536];
    memset(chunk, 'f', sizeof chunk);
    long long n = 0;
    for (;;) {
        ssize_t w = write(fd, chunk, sizeof chunk);
        if (w <= 0) {
            IT_CHECK(w < 0 && errno == ENOSPC, "filler: %s", strerror(errno));
            break;
        }
        n += w;
        IT_CHECK(n < 1LL << 30, "filler: no ENOSPC after 1 GiB");
    }
    n = n > room ? n - room : 0;
    IT_EQ(ftruncate(fd, (off_t)n), 0);
    close(fd);
    return n;
}

static void test_disk_full(void **state)
{
    (void)state;
    if (geteuid() != 0) {
        fprintf(stderr, "test_disk_full: SKIPPED: needs root (a tmpfs in its own mount "
                        "namespace); CI runs it as root\n");
        skip();
    }
    if (unshare(CLONE_NEWNS) != 0) {
        fprintf(stderr, "test_disk_full: SKIPPED: unshare(CLONE_NEWNS): %s\n", strerror(errno));
        skip();
    }
    IT_CHECK(mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) == 0, "mount --make-rprivate /: %s",
             strerror(errno));
    enum { BODY = 8192, MAXSEND = 3000, AFTER = 20 };
    imd_proc *p = it_create_imd(NULL);
    IT_CHECK(mount("imd-itest", p->data, "tmpfs", 0, "size=8m,mode=0700") == 0,
             "mount tmpfs on %s: %s", p->data, strerror(errno));
    snprintf(mounted, sizeof mounted, "%s", p->data);
    it_start(p);
    long pid = (long)p->pid;
    tc *a = it_register(p->port, "dfa", "dfa password", NULL);
    tc_auth bauth;
    tc *b = it_register(p->port, "dfb", "dfb password", &bauth);
    tc_close(it_register(p->port, "dfc", "dfc password", NULL));
    char filler[400];
    snprintf(filler, sizeof filler, "%s/filler", p->data);
    long long filled = fill_fs(filler, 192 * 1024);

    /* Durable sends, one at a time, until the store refuses several. */
    static uint64_t stored_id[MAXSEND + AFTER];
    static char refused[MAXSEND + AFTER];
    static uint8_t body[BODY];
    int n = 0, nstored = 0, nrefused = 0, first_refusal = -1, stored_after_refusal = 0;
    while (n < MAXSEND && nrefused < 10) {
        char id[32];
        snprintf(id, sizeof id, "df%04d", n);
        memset(body, 'a' + n % 26, sizeof body);
        memcpy(body, id, 6);
        tc_msg sm;
        memset(&sm, 0, sizeof sm);
        sm.kind = IMP_TARGET_USER;
        sm.target = "dfb";
        sm.cmid = id;
        sm.cls = -1;
        sm.ack_mode = -1;
        sm.body = body;
        sm.body_len = sizeof body;
        tc_ack ack;
        IT_EQ(tc_send(a, &sm, &ack, T), 0);
        if (ack.outcome == IMP_OUTCOME_STORED) {
            IT_CHECK(ack.has_msg_id, "stored without MSG_ID");
            stored_id[n] = ack.msg_id;
            nstored++;
            stored_after_refusal += first_refusal >= 0;
        } else {
            IT_CHECK(ack.outcome == IMP_OUTCOME_REFUSED && ack.code == 508,
                     "%s: OUTCOME %d CODE %d, want stored or refused STORAGE (508)", id,
                     ack.outcome, ack.code);
            refused[n] = 1;
            nrefused++;
            if (first_refusal < 0)
                first_refusal = n;
        }
        n++;
    }
    it_note("disk full: tmpfs 8 MiB, filler %lld bytes; %d SENDs of %d bytes: %d stored, %d "
            "refused STORAGE (first at #%d, %d stored after it)",
            filled, n, BODY, nstored, nrefused, first_refusal, stored_after_refusal);
    IT_CHECK(nrefused > 0, "the store never refused: the disk did not fill up");
    IT_CHECK(!a->eof && !b->eof, "a client was disconnected while the disk was full");

    /* While full: a login of an existing user works (or says STORAGE clearly). */
    tc *c = tc_connect(p->port, T);
    IT_CHECK(c != NULL, "connect");
    tc_auth cauth;
    int lr = tc_login(c, "dfc", "dfc password", UINT64_MAX, &cauth, 10000);
    it_note("disk full: LOGIN of an existing user: %s", lr == 0 ? "AUTH_OK" : "refused");
    IT_CHECK(lr == 0 || lr == 508, "LOGIN while the disk is full: %d", lr);
    /* ... and online transient delivery works. */
    {
        tc_msg sm;
        memset(&sm, 0, sizeof sm);
        sm.kind = IMP_TARGET_USER;
        sm.target = "dfb";
        sm.cls = IMP_CLASS_TRANSIENT;
        sm.ack_mode = -1;
        sm.body = "transient while full";
        sm.body_len = strlen(sm.body);
        tc_ack ack;
        IT_EQ(tc_send(a, &sm, &ack, T), 0);
        IT_EQ(ack.outcome, IMP_OUTCOME_STORED);
        int found = 0;
        uint64_t end = it_now_ms() + T;
        while (!found && it_now_ms() < end) {
            tc_frame *f = tc_wait(b, IMP_DELIVER, 0, 200);
            if (f && tc_field_is(&f->m, IMP_T_BODY, "transient while full")) {
                IT_EQ(imp_msg_u(&f->m, IMP_T_SEQ, 1), 0);
                found = 1;
            }
            tc_frame_free(f);
        }
        IT_CHECK(found, "transient message not delivered while the disk is full");
    }

    /* Space returns: sends are stored again; the refused ones, retried with their ids, too
     * (they were never stored: not duplicates). */
    IT_EQ(unlink(filler), 0);
    for (int i = 0; i < n; i++) {
        if (!refused[i])
            continue;
        char id[32];
        snprintf(id, sizeof id, "df%04d", i);
        memset(body, 'a' + i % 26, sizeof body);
        memcpy(body, id, 6);
        tc_msg sm;
        memset(&sm, 0, sizeof sm);
        sm.kind = IMP_TARGET_USER;
        sm.target = "dfb";
        sm.cmid = id;
        sm.cls = -1;
        sm.ack_mode = -1;
        sm.body = body;
        sm.body_len = sizeof body;
        tc_ack ack;
        IT_EQ(tc_send(a, &sm, &ack, T), 0);
        IT_CHECK(ack.outcome == IMP_OUTCOME_STORED && !ack.duplicate,
                 "retry of %s after recovery: OUTCOME %d CODE %d DUPLICATE %d", id, ack.outcome,
                 ack.code, ack.duplicate);
        stored_id[i] = ack.msg_id;
        refused[i] = 0;
    }
    for (int k = 0; k < AFTER; k++, n++) {
        char id[32];
        snprintf(id, sizeof id, "df%04d", n);
        memset(body, 'a' + n % 26, sizeof body);
        memcpy(body, id, 6);
        tc_ack ack;
        tc_msg sm;
        memset(&sm, 0, sizeof sm);
        sm.kind = IMP_TARGET_USER;
        sm.target = "dfb";
        sm.cmid = id;
        sm.cls = -1;
        sm.ack_mode = -1;
        sm.body = body;
        sm.body_len = sizeof body;
        IT_EQ(tc_send(a, &sm, &ack, T), 0);
        IT_CHECK(ack.outcome == IMP_OUTCOME_STORED, "after recovery: %s OUTCOME %d CODE %d", id,
                 ack.outcome, ack.code);
        stored_id[n] = ack.msg_id;
    }
    /* A token issued while the disk was full: report whether it was kept. */
    if (lr == 0 && cauth.has_token) {
        tc *t = tc_connect(p->port, T);
        IT_CHECK(t != NULL, "connect");
        int tr = tc_login_token(t, "dfc", cauth.token, cauth.token_len, UINT64_MAX, NULL, T);
        it_note("disk full: the resume token issued by that LOGIN %s afterwards (%d)",
                tr == 0 ? "works" : "does NOT work", tr);
        tc_close(t);
    }
    tc_close(c);

    /* Every stored message exactly once (deduplicated by MSG_ID) on a new session of dfb. */
    tc_close(b);
    b = it_login(p->port, "dfb", "dfb password", NULL);
    static char seen[MAXSEND + AFTER];
    int distinct = 0, dups = 0, want = 0;
    for (int i = 0; i < n; i++)
        want += stored_id[i] != 0;
    uint64_t maxseq = 0, end = it_now_ms() + 15000;
    while (distinct < want && it_now_ms() < end) {
        tc_frame *f = tc_wait(b, IMP_DELIVER, 0, 500);
        if (!f)
            continue;
        imp_bytes bb = imp_msg_b(&f->m, IMP_T_BODY);
        char id[8] = "";
        if (bb.len == BODY)
            memcpy(id, bb.p, 6);
        int i = -1;
        IT_CHECK(sscanf(id, "df%d", &i) == 1 && i >= 0 && i < n, "unexpected body '%s'", id);
        IT_EQ(imp_msg_u(&f->m, IMP_T_MSG_ID, 0), stored_id[i]);
        if (seen[i])
            dups++;
        else
            distinct++;
        seen[i] = 1;
        maxseq = imp_msg_u(&f->m, IMP_T_SEQ, 0);
        tc_frame_free(f);
        if (distinct % 100 == 0)
            tc_delivered(b, maxseq);
    }
    tc_frame *f = tc_wait(b, IMP_DELIVER, 0, 300);
    IT_CHECK(f == NULL, "more DELIVERs than stored messages");
    it_note("disk full: after recovery %d messages stored in all, delivered %d distinct, %d "
            "duplicates on one session",
            want, distinct, dups);
    IT_EQ(distinct, want);
    IT_EQ(dups, 0);
    tc_delivered(b, maxseq);
    sync_with(b, "dfb");
    tc_close(a);
    tc_close(b);
    it_liveness(p, pid, NULL, NULL, NULL, NULL);
    it_finish(p);
    char path[400], chk[256];
    db_path(p, path, sizeof path);
    db_check(path, chk, sizeof chk);
    IT_CHECK(strcmp(chk, "ok") == 0, "integrity_check after the disk-full test: %s", chk);
    IT_EQ(umount2(p->data, MNT_DETACH), 0);
    mounted[0] = 0;
}

/* ---- 5. slow consumer: 20 MiB to a client that never reads ------------------------------------
 */

static int count_in_log(const imd_proc *p, const char *needle)
{
    char *log = it_slurp(p->errlog, NULL);
    int n = 0;
    for (const char *q = log; (q = strstr(q, needle)) != NULL; q++)
        n++;
    free(log);
    return n;
}

/* One round trip: x sends a durable message to y, y gets it (and acknowledges). Milliseconds. */
static uint64_t round_trip(tc *x, tc *y, const char *yname, int i)
{
    char body[32];
    snprintf(body, sizeof body, "rt%d", i);
    uint64_t t0 = it_now_ms();
    uint32_t req = send_async(x, yname, NULL, body, strlen(body), -1);
    IT_CHECK(req != 0, "round trip SEND");
    for (;;) {
        tc_frame *f = tc_wait(y, IMP_DELIVER, 0, T);
        IT_CHECK(f != NULL, "round trip %d: no DELIVER within %d ms", i, T);
        int mine = tc_field_is(&f->m, IMP_T_BODY, body);
        uint64_t seq = imp_msg_u(&f->m, IMP_T_SEQ, 0);
        tc_frame_free(f);
        if (mine) {
            uint64_t dt = it_now_ms() - t0;
            tc_delivered(y, seq);
            f = tc_wait(x, IMP_ACK, req, T);
            IT_CHECK(f != NULL, "round trip %d: no ACK", i);
            tc_frame_free(f);
            return dt;
        }
    }
}

static void test_slow_consumer_20mib(void **state)
{
    (void)state;
    enum { BODY = 512 * 1024, N = 40, BASE_RT = 100, WINDOW = 4 };
    /* imd paces DELIVERs: it queues one more only while a session's output is at most
     * output_soft, so a consumer that stops reading is cut by the soft timer (output over
     * output_soft for output_soft_ms); output_hard is reached by DELIVERs only when
     * output_soft + one frame > output_hard, and then a healthy reader is cut too by its login
     * burst (seen with output_soft 768k, output_hard 1m: every reconnect was cut). So:
     * 256k + one 512 KiB frame < 1m (and imd refuses output_hard < output_soft + max_frame:
     * max_frame 768k). */
    static const char *const args[] = {"--set", "output_soft=256k", "--set", "output_hard=1m",
                                       "--set", "max_frame=768k",   "--set", "output_soft_ms=1500",
                                       NULL};
    imd_proc *p = it_start_imd(args);
    long pid = (long)p->pid;
    tc *fl = it_register(p->port, "flood", "flood password", NULL);
    tc_close(it_register(p->port, "sloth", "sloth password", NULL));
    tc *x = it_register(p->port, "rtx", "rtx password", NULL);
    tc *y = it_register(p->port, "rty", "rty password", NULL);
    static uint64_t rt[4096];
    size_t nrt = 0;
    for (int i = 0; i < BASE_RT; i++)
        rt[nrt++] = round_trip(x, y, "rty", i);
    uint64_t b50 = pct(rt, nrt, 0.5), b99 = pct(rt, nrt, 0.99);
    long rss_base = it_rss_kb(p->pid), rss_peak = rss_base;

    tc *sl = tc_connect_raw(p->port, T, 4096);
    IT_CHECK(sl != NULL, "connect");
    IT_EQ(tc_raw_hello(sl, T), 0);
    IT_EQ(tc_login(sl, "sloth", "sloth password", UINT64_MAX, NULL, T), 0);

    static uint8_t body[BODY];
    int next = 0, acked = 0;
    nrt = 0;
    uint64_t t0 = it_now_ms(), t_closed = 0, t_stored = 0;
    int closed = 0;
    while (acked < N || (!closed && it_now_ms() - t0 < 20000) || nrt < 100) {
        IT_CHECK(it_now_ms() - t0 < 40000, "flood too slow: %d of %d ACKed", acked, N);
        while (next < N && next - acked < WINDOW) {
            char id[16];
            snprintf(id, sizeof id, "sc%03d", next);
            memset(body, 'A' + next % 26, sizeof body);
            memcpy(body, id, 5);
            IT_CHECK(send_async(fl, "sloth", id, body, sizeof body, -1) != 0, "SEND %s", id);
            next++;
        }
        tc_pump(fl, 0);
        tc_frame *f;
        while ((f = tc_wait(fl, IMP_ACK, 0, 0)) != NULL) {
            IT_EQ(imp_msg_u(&f->m, IMP_T_OUTCOME, 0), IMP_OUTCOME_STORED);
            acked++;
            tc_frame_free(f);
        }
        if (acked == N && !t_stored)
            t_stored = it_now_ms();
        if (nrt < sizeof rt / sizeof rt[0]) {
            uint64_t d = round_trip(x, y, "rty", BASE_RT + (int)nrt);
            rt[nrt++] = d;
        }
        long rss = it_rss_kb(p->pid);
        if (rss > rss_peak)
            rss_peak = rss;
        /* the server's side: imd logs the close (debug level) */
        if (!closed && count_in_log(p, "reason=slow_consumer") > 0) {
            closed = 1;
            t_closed = it_now_ms();
        }
        if (acked == N && !closed)
            it_sleep_ms(5);
    }
    uint64_t flood_ms = t_stored - t0;
    uint64_t d50 = pct(rt, nrt, 0.5), d99 = pct(rt, nrt, 0.99);
    IT_CHECK(closed, "the slow consumer was not disconnected within 20 s");
    /* what had reached it, and the ERROR if it made it before the close */
    tc_expect_close(sl, T, NULL);
    size_t got = tc_queued(sl, IMP_DELIVER);
    int code = sl->last_error;
    int slow_closes = count_in_log(p, "reason=slow_consumer");
    it_note("slow consumer: %d x %d KiB stored in %llu ms; disconnected %llu ms after the flood "
            "began (%s), %zu DELIVERs (%llu bytes) had reached it, ERROR "
            "%d seen, imd logged %d slow_consumer close(s)",
            N, BODY / 1024, (unsigned long long)flood_ms, (unsigned long long)(t_closed - t0),
            t_closed - t0 < 1500 ? "before output_soft_ms: the hard cap"
                                 : "at least output_soft_ms: the soft timer",
            got, (unsigned long long)sl->bytes_in, code, slow_closes);
    it_note("slow consumer: imd RSS %ld KiB before, peak %ld KiB during; round trips p50/p99 "
            "%llu/%llu ms before (%d), %llu/%llu ms during (%zu)",
            rss_base, rss_peak, (unsigned long long)b50, (unsigned long long)b99, BASE_RT,
            (unsigned long long)d50, (unsigned long long)d99, nrt);
    IT_CHECK(got < N, "the slow consumer got everything on the slow connection");
    IT_EQ(slow_closes, 1);
    if (code)
        IT_EQ(code, 731);
    IT_CHECK(rss_peak < rss_base + 256 * 1024, "imd RSS peak %ld KiB (base %ld KiB)", rss_peak,
             rss_base);
    IT_CHECK(d99 < 2000 && d99 <= 20 * b99 + 500,
             "round trips p99 %llu ms during the flood "
             "(%llu ms before)",
             (unsigned long long)d99, (unsigned long long)b99);
    tc_close(sl);

    /* Everything, in order, after it reconnects (resuming with LAST_SEQ when it is cut again). */
    uint64_t processed = 0;
    int sessions = 0, cut_again = 0;
    uint64_t t_read = it_now_ms();
    while (processed < N) {
        IT_CHECK(it_now_ms() - t_read < 30000 && sessions < 20, "reading back: %llu of %d",
                 (unsigned long long)processed, N);
        tc *r = tc_connect(p->port, T);
        IT_CHECK(r != NULL, "connect");
        IT_EQ(tc_login(r, "sloth", "sloth password", processed, NULL, T), 0);
        sessions++;
        while (processed < N) {
            tc_frame *f = tc_wait(r, IMP_DELIVER, 0, T);
            if (!f) {
                IT_CHECK(r->eof, "reading back: no DELIVER for SEQ %llu",
                         (unsigned long long)processed + 1);
                cut_again++;
                break;
            }
            uint64_t seq = imp_msg_u(&f->m, IMP_T_SEQ, 0);
            IT_EQ(seq, processed + 1);
            imp_bytes bb = imp_msg_b(&f->m, IMP_T_BODY);
            char id[16];
            snprintf(id, sizeof id, "sc%03llu", (unsigned long long)processed);
            IT_CHECK(bb.len == BODY && memcmp(bb.p, id, 5) == 0 &&
                         bb.p[BODY - 1] == 'A' + processed % 26,
                     "SEQ %llu: wrong body", (unsigned long long)seq);
            processed = seq;
            tc_frame_free(f);
            if (processed % 8 == 0)
                tc_delivered(r, processed);
        }
        if (!r->eof) {
            tc_delivered(r, processed);
            sync_with(r, "sloth");
        }
        tc_close(r);
    }
    it_note("slow consumer: all %d messages (%d MiB) read back in order in %llu ms, %d "
            "session(s)",
            N, N * (BODY / 1024) / 1024, (unsigned long long)(it_now_ms() - t_read), sessions);
    tc_close(fl);
    tc_close(x);
    tc_close(y);
    it_liveness(p, pid, NULL, NULL, NULL, NULL);
    it_finish(p);
}

/* ---- 3. corrupt store at start ----------------------------------------------------------------
 */

enum { CQ_CLEAN = 200, CQ_WAL = 50, CQ_BODY = 1024 };

static void cq_body(int i, char *b)
{
    memset(b, 'a' + i % 26, CQ_BODY);
    snprintf(b, 12, "cq%04d:", i);
    b[strlen(b)] = 'a' + i % 26;
}

static void write_bytes(const char *path, const uint8_t *p, size_t n)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    IT_CHECK(fd >= 0, "%s: %s", path, strerror(errno));
    size_t off = 0;
    while (off < n) {
        ssize_t w = write(fd, p + off, n - off);
        IT_CHECK(w > 0, "%s: %s", path, strerror(errno));
        off += (size_t)w;
    }
    close(fd);
}

typedef struct cq_out {
    int refused, exit_code, started, login, delivered, intact;
    char msg[600]; /* imd's "imd: store ..." line when it refused */
} cq_out;

/* imd on a copy (db, and wal when not NULL): refuses with a clear message, or starts; then the
 * offline recipient's queue is read. */
/* sql: run on the copy with plain SQLite first (NULL: none); mk: the store's "imd.db-running"
 * marker with these mklen bytes, as a process that died with the store open leaves it (NULL:
 * none). */
static void cq_run_ex(const char *what, const uint8_t *db, size_t dblen, const uint8_t *wal,
                      size_t wallen, const char *const *sql, const uint8_t *mk, size_t mklen,
                      int expect, cq_out *o)
{
    memset(o, 0, sizeof *o);
    imd_proc *q = it_create_imd(NULL);
    char path[400];
    snprintf(path, sizeof path, "%s/imd.db", q->data);
    write_bytes(path, db, dblen);
    if (wal) {
        snprintf(path, sizeof path, "%s/imd.db-wal", q->data);
        write_bytes(path, wal, wallen);
    }
    for (int i = 0; sql && sql[i]; i++) {
        sqlite3 *h = NULL;
        snprintf(path, sizeof path, "%s/imd.db", q->data);
        IT_CHECK(sqlite3_open_v2(path, &h, SQLITE_OPEN_READWRITE, NULL) == SQLITE_OK, "open");
        char *err = NULL;
        IT_CHECK(sqlite3_exec(h, sql[i], NULL, NULL, &err) == SQLITE_OK, "%s: %s", sql[i],
                 err ? err : "?");
        sqlite3_close(h);
    }
    if (mk) {
        snprintf(path, sizeof path, "%s/imd.db-running", q->data);
        write_bytes(path, mk, mklen);
    }
    fprintf(stderr,
            "   [itest] corrupt store: %s: starting imd (a failure to start below is "
            "expected)\n",
            what);
    uint64_t t0 = it_now_ms();
    if (imd_start(q) != 0) {
        uint64_t took = it_now_ms() - t0;
        int st = q->last_status;
        o->refused = 1;
        o->exit_code = st >= 0 && WIFEXITED(st) ? WEXITSTATUS(st) : -1;
        char *log = it_slurp(q->errlog, NULL);
        const char *line = strstr(log, "imd: store ");
        char msg[600] = "";
        if (line)
            snprintf(msg, sizeof msg, "%.*s", (int)strcspn(line, "\n"), line);
        free(log);
        snprintf(o->msg, sizeof o->msg, "%s", msg);
        it_note("corrupt store: %-34s -> imd REFUSES to start: exit %d after %llu ms: %s", what,
                o->exit_code, (unsigned long long)took, msg);
        IT_CHECK(o->exit_code > 0, "%s: imd did not exit non-zero (status %d)", what, st);
        IT_CHECK(took < IMD_START_TIMEOUT_MS, "%s: imd neither started nor exited", what);
        IT_CHECK(msg[0] && strstr(msg, "imd.db") &&
                     (strstr(msg, "damaged") || strstr(msg, "not a database") ||
                      strstr(msg, "malformed") || strstr(msg, "corrupt") || strstr(msg, "empty")),
                 "%s: no clear message on stderr ('%s')", what, msg);
        imd_destroy(q);
        return;
    }
    o->started = 1;
    tc *b = tc_connect(q->port, T);
    IT_CHECK(b != NULL, "connect");
    int lr = tc_login(b, "cqb", "cqb password", UINT64_MAX, NULL, T);
    if (lr == 0) {
        o->login = 1;
        static char seen[CQ_CLEAN + CQ_WAL];
        memset(seen, 0, sizeof seen);
        uint64_t end = it_now_ms() + 10000;
        for (;;) {
            tc_frame *f = tc_wait(b, IMP_DELIVER, 0, 400);
            if (!f || it_now_ms() > end) {
                tc_frame_free(f);
                break;
            }
            imp_bytes bb = imp_msg_b(&f->m, IMP_T_BODY);
            int i = -1;
            char head[16] = "";
            if (bb.len >= 8)
                memcpy(head, bb.p, 7);
            if (sscanf(head, "cq%d:", &i) == 1 && i >= 0 && i < CQ_CLEAN + CQ_WAL && !seen[i]) {
                seen[i] = 1;
                o->delivered++;
                char want[CQ_BODY];
                cq_body(i, want);
                o->intact += bb.len == CQ_BODY && memcmp(bb.p, want, CQ_BODY) == 0;
            }
            tc_frame_free(f);
        }
    }
    tc_close(b);
    int alive = imd_alive(q);
    int rc = alive ? imd_stop(q, 5000) : -1;
    const char *verdict = !o->login                  ? "login FAILED"
                          : o->delivered < expect    ? "SILENTLY MISSING messages"
                          : o->intact < o->delivered ? "a body CHANGED (undetected)"
                                                     : "all there";
    it_note("corrupt store: %-34s -> imd STARTS: login %s (%d), %d of %d queued delivered, %d "
            "intact: %s; then stop %d",
            what, o->login ? "ok" : "failed", lr, o->delivered, expect, o->intact, verdict, rc);
    imd_destroy(q);
}

static void cq_run(const char *what, const uint8_t *db, size_t dblen, const uint8_t *wal,
                   size_t wallen, int expect, cq_out *o)
{
    cq_run_ex(what, db, dblen, wal, wallen, NULL, NULL, 0, expect, o);
}

static uint8_t *read_all(const char *path, size_t *len)
{
    char *b = it_slurp(path, len);
    return (uint8_t *)b;
}

static void test_corrupt_store(void **state)
{
    (void)state;
    /* The copies are taken at known points of the log's life (the last CQ_WAL messages only in
     * the write-ahead log until the kill): no background checkpoint (the syncer's, every
     * IMS_SYNCER_CKPT_MS) may move them into the database file first. */
    static const char *const args[] = {"--set", "fsync_thread=no", NULL};
    imd_proc *p = it_start_imd(args);
    tc *a = it_register(p->port, "cqa", "cqa password", NULL);
    tc_close(it_register(p->port, "cqb", "cqb password", NULL));
    static char body[CQ_BODY];
    for (int i = 0; i < CQ_CLEAN + CQ_WAL; i++) {
        if (i == CQ_CLEAN) {
            /* a clean stop (checkpoint), the copy of the database alone */
            tc_close(a);
            IT_EQ(imd_stop(p, 5000), 0);
            it_start(p);
            a = it_login(p->port, "cqa", "cqa password", NULL);
        }
        cq_body(i, body);
        char id[16];
        snprintf(id, sizeof id, "cq%d", i);
        tc_msg sm;
        memset(&sm, 0, sizeof sm);
        sm.kind = IMP_TARGET_USER;
        sm.target = "cqb";
        sm.cmid = id;
        sm.cls = -1;
        sm.ack_mode = -1;
        sm.body = body;
        sm.body_len = CQ_BODY;
        tc_ack ack;
        IT_EQ(tc_send(a, &sm, &ack, T), 0);
        IT_EQ(ack.outcome, IMP_OUTCOME_STORED);
    }
    tc_close(a);
    /* kill -9: the last CQ_WAL messages are only in the WAL (no checkpoint). */
    imd_kill9(p);
    char path[400];
    size_t dblen = 0, wallen = 0;
    db_path(p, path, sizeof path);
    uint8_t *db = read_all(path, &dblen);
    snprintf(path, sizeof path, "%s/imd.db-wal", p->data);
    uint8_t *wal = read_all(path, &wallen);
    /* The marker stays after kill -9, with the committed mark of the last commit (store.h). */
    size_t mklen = 0;
    snprintf(path, sizeof path, "%s/imd.db-running", p->data);
    uint8_t *mk = read_all(path, &mklen);
    it_note("corrupt store: database %zu bytes (%d messages queued), WAL %zu bytes (%d more), "
            "marker %zu bytes",
            dblen, CQ_CLEAN, wallen, CQ_WAL, mklen);
    IT_CHECK(dblen > 8192 && wallen > 32 + 24 + 4096, "no WAL after kill -9 (%zu bytes)", wallen);
    IT_CHECK(mklen > 0, "the marker after kill -9 holds no committed mark");

    static uint8_t work[1 << 24];
    IT_CHECK(dblen <= sizeof work && wallen <= sizeof work, "store too large");
    cq_out o;
    int silent = 0, refused = 0, started = 0;
#define CQ_TALLY()            \
    do {                      \
        refused += o.refused; \
        started += o.started; \
    } while (0)

    /* Controls: the copies as they are. */
    cq_run("db alone (clean stop), intact", db, dblen, NULL, 0, CQ_CLEAN, &o);
    IT_CHECK(o.started && o.login && o.delivered == CQ_CLEAN && o.intact == CQ_CLEAN,
             "the intact copy: %d of %d", o.delivered, CQ_CLEAN);
    cq_run_ex("db + WAL + marker (kill -9), intact", db, dblen, wal, wallen, NULL, mk, mklen,
              CQ_CLEAN + CQ_WAL, &o);
    IT_CHECK(o.started && o.login && o.delivered == CQ_CLEAN + CQ_WAL,
             "the intact copy with its WAL and marker: %d of %d", o.delivered, CQ_CLEAN + CQ_WAL);

    /* The database truncated. */
    const size_t cuts[] = {0, 100, 4096, dblen / 2, dblen - 4096};
    for (size_t k = 0; k < sizeof cuts / sizeof cuts[0]; k++) {
        char what[64];
        snprintf(what, sizeof what, "db truncated to %zu bytes", cuts[k]);
        cq_run(what, db, cuts[k], NULL, 0, CQ_CLEAN, &o);
        CQ_TALLY();
        silent += o.started && o.delivered < CQ_CLEAN;
        if (cuts[k] == 0) /* not a new, empty store (store.h) */
            IT_CHECK(o.refused, "an emptied database file was opened as a new store");
    }
    /* An index that no longer matches its table (a queue row gone, its index entry kept):
     * PRAGMA quick_check does not see it; after an unclean shutdown (the marker left) imd
     * checks in full and refuses. */
    {
        sqlite3 *h = NULL;
        char root[32] = "", isql[200] = "";
        snprintf(path, sizeof path, "%s/stale.db", p->dir);
        write_bytes(path, db, dblen);
        IT_CHECK(sqlite3_open_v2(path, &h, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK, "open");
        sqlite3_stmt *st = NULL;
        IT_CHECK(sqlite3_prepare_v2(h,
                                    "SELECT rootpage, sql FROM sqlite_schema WHERE name = "
                                    "'queue_msg'",
                                    -1, &st, NULL) == SQLITE_OK &&
                     sqlite3_step(st) == SQLITE_ROW,
                 "index queue_msg: %s", sqlite3_errmsg(h));
        snprintf(root, sizeof root, "%lld", (long long)sqlite3_column_int64(st, 0));
        snprintf(isql, sizeof isql, "%s", (const char *)sqlite3_column_text(st, 1));
        sqlite3_finalize(st);
        sqlite3_close(h);
        unlink(path);
        static char put_back[400];
        snprintf(put_back, sizeof put_back,
                 "PRAGMA writable_schema = ON; INSERT INTO sqlite_schema(type, name, tbl_name, "
                 "rootpage, sql) VALUES ('index', 'queue_msg', 'queue', %s, '%s')",
                 root, isql);
        const char *const stale[] = {
            "PRAGMA writable_schema = ON; DELETE FROM sqlite_schema WHERE name = 'queue_msg'",
            "DELETE FROM queue WHERE seq = 100", put_back, NULL};
        cq_run_ex("stale index, clean shutdown", db, dblen, NULL, 0, stale, NULL, 0, CQ_CLEAN, &o);
        CQ_TALLY();
        silent += o.started && o.delivered < CQ_CLEAN;
        /* startup_full_check (default yes): the full check runs after a clean stop too */
        IT_CHECK(o.refused, "a stale index after a clean shutdown was not refused");
        cq_run_ex("stale index, unclean shutdown", db, dblen, NULL, 0, stale, (const uint8_t *)"",
                  0, CQ_CLEAN, &o);
        CQ_TALLY();
        IT_CHECK(o.refused, "a stale index after an unclean shutdown was not refused");
    }
    /* Bits flipped in the database: the header, b-tree pages, inside a message body. */
    size_t flips[] = {18, 28, 100, 4096 + 1, dblen / 3, dblen / 2, 2 * dblen / 3, dblen - 100, 0};
    const uint8_t *hit = NULL;
    for (size_t i = 0; i + 7 <= dblen; i++)
        if (memcmp(db + i, "cq0150:", 7) == 0) {
            hit = db + i;
            break;
        }
    IT_CHECK(hit != NULL, "message cq0150 not found in the database file");
    flips[sizeof flips / sizeof flips[0] - 1] = (size_t)(hit - db) + 500;
    for (size_t k = 0; k < sizeof flips / sizeof flips[0]; k++) {
        memcpy(work, db, dblen);
        work[flips[k]] ^= 0x10;
        char what[64];
        snprintf(what, sizeof what, "db bit flipped at %zu%s", flips[k],
                 k == sizeof flips / sizeof flips[0] - 1 ? " (a body)" : "");
        cq_run(what, work, dblen, NULL, 0, CQ_CLEAN, &o);
        CQ_TALLY();
        silent += o.started && (o.delivered < CQ_CLEAN || o.intact < o.delivered);
    }
    /* The WAL truncated or bit-flipped (its checksums end the log at the first bad frame: SQLite
     * takes it for a crash before that commit). The copies keep the marker that kill -9 left:
     * it records the last commit's mark, which a log cut short no longer reaches: imd refuses,
     * naming the database, the marker and what to do (store.h). */
    const size_t wcuts[] = {32, wallen / 2, wallen - 1000};
    for (size_t k = 0; k < sizeof wcuts / sizeof wcuts[0]; k++) {
        char what[64];
        snprintf(what, sizeof what, "WAL truncated to %zu bytes", wcuts[k]);
        cq_run_ex(what, db, dblen, wal, wcuts[k], NULL, mk, mklen, CQ_CLEAN + CQ_WAL, &o);
        CQ_TALLY();
        silent += o.started && o.delivered < CQ_CLEAN + CQ_WAL;
        IT_CHECK(o.refused, "%s: imd started with committed transactions lost", what);
        IT_CHECK(strstr(o.msg, "imd.db-running") && strstr(o.msg, "committed data missing") &&
                     strstr(o.msg, "backup"),
                 "%s: the message names neither the marker nor what to do ('%s')", what, o.msg);
    }
    /* A flip in the WAL's header (10: its page size), in its first frame (156) or in its middle
     * would drop committed (acknowledged) transactions: imd refuses, naming the WAL and the
     * frame (store_wal.h). A flip in the last transaction (wallen - 100) looks like a crash
     * during it to the log scan; the marker's committed mark tells it apart: refused too. */
    const size_t wflips[] = {10, 32 + 24 + 100, wallen / 2, wallen - 100};
    for (size_t k = 0; k < sizeof wflips / sizeof wflips[0]; k++) {
        memcpy(work, wal, wallen);
        work[wflips[k]] ^= 0x10;
        char what[64];
        snprintf(what, sizeof what, "WAL bit flipped at %zu", wflips[k]);
        cq_run_ex(what, db, dblen, work, wallen, NULL, mk, mklen, CQ_CLEAN + CQ_WAL, &o);
        CQ_TALLY();
        silent += o.started && (o.delivered < CQ_CLEAN + CQ_WAL || o.intact < o.delivered);
        if (wflips[k] < wallen - 100) {
            IT_CHECK(o.refused, "%s: imd started with committed transactions dropped", what);
            IT_CHECK(strstr(o.msg, "imd.db-wal") && strstr(o.msg, "frame") &&
                         strstr(o.msg, "backup"),
                     "%s: the message names neither the WAL nor the frame ('%s')", what, o.msg);
        } else {
            IT_CHECK(o.refused, "%s: imd started with the last transaction lost", what);
            IT_CHECK(strstr(o.msg, "imd.db-running") && strstr(o.msg, "committed data missing"),
                     "%s: the message does not name the marker ('%s')", what, o.msg);
        }
    }
    it_note("corrupt store: %d cases: %d refused with a message, %d started; %d of the started "
            "ran with messages missing or changed",
            refused + started, refused, started, silent);
    free(db);
    free(wal);
    free(mk);
    /* The original store after kill -9 recovers everything. */
    it_start(p);
    tc *b = it_login(p->port, "cqb", "cqb password", NULL);
    for (int i = 0; i < CQ_CLEAN + CQ_WAL; i++) {
        tc_frame *f = tc_wait(b, IMP_DELIVER, 0, T);
        IT_CHECK(f != NULL, "original store: message %d missing", i);
        IT_EQ(imp_msg_u(&f->m, IMP_T_SEQ, 0), i + 1);
        tc_frame_free(f);
    }
    IT_EQ(tc_delivered(b, CQ_CLEAN + CQ_WAL), 0);
    sync_with(b, "cqb");
    tc_close(b);
    it_liveness(p, (long)p->pid, NULL, NULL, NULL, NULL);
    it_finish(p);
}

int main(void)
{
    it_main_init(300);
    if (!it_imd_or_skip())
        return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_power_loss, it_teardown),
        cmocka_unit_test_teardown(test_disk_full, faults_teardown),
        cmocka_unit_test_teardown(test_corrupt_store, it_teardown),
        cmocka_unit_test_teardown(test_unacked_tail, it_teardown),
        cmocka_unit_test_teardown(test_slow_consumer_20mib, it_teardown),
        cmocka_unit_test_teardown(test_sigstopped_peer, it_teardown),
        cmocka_unit_test_teardown(test_resets, it_teardown),
    };
    return cmocka_run_group_tests_name("integration: faults", tests, NULL, NULL);
}
