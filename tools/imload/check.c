/* imload --check FILE...: an independent checker of --history files.
 *
 * It reads only the history lines (format in imload.h and imload(1)), none of imload's run-time
 * counting, and decides from them:
 *
 *   sent         messages with an S line (distinct sender, seq)
 *   acked        messages with an ACK stored or delivered
 *   refused      messages whose every ACK was a refusal
 *   delivered    messages delivered (at least once) to their target
 *   lost         acknowledged as stored (with ack mode none: sent) but never delivered to the
 *                target
 *   duplicates   messages (sender, seq) seen under two or more MSG_IDs (in ACKs or DELIVERs):
 *                stored twice. The same MSG_ID delivered again is at-least-once redelivery,
 *                counted apart as redelivered
 *   reordered    per (sender, receiver) pair, in the order the receiver got them, first
 *                deliveries of a MSG_ID below one already delivered (IMP-DELIV-006: store
 *                order), or, among messages never resent (no R line), below the sender seq
 *                of one already delivered (a message never resent was stored in send order)
 *   unexpected   a delivery of a message never sent (no S line), to another receiver than its
 *                target, or of a message that was only refused
 *   resent       R lines; unconfirmed: sent, neither acknowledged, refused nor delivered
 *
 * Exit 0 when lost, duplicates, reordered and unexpected are all 0, 1 otherwise, 2 when a file
 * cannot be read or a line is malformed. The lines of one connection are in order in the file;
 * those of different connections are not (an ACK line may follow the DELIVER line of the same
 * message), so everything is collected first and the deliveries are judged afterwards.
 */
#include "imload.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CK_DETAILS 10 /* anomalies of each kind described */

typedef struct ck_msg {
    uint32_t sender;
    uint32_t used;
    uint64_t seq;
    int target; /* receiver id; -1: no S line */
    uint8_t sent, ok, refused;
    uint8_t nids;     /* distinct MSG_IDs seen (at most 2 kept) */
    uint8_t ndel_ids; /* distinct MSG_IDs delivered to the target (at most 2 kept) */
    uint8_t resent;
    uint64_t ids[2];
    uint64_t del_ids[2];
} ck_msg;

typedef struct ck_deliv {
    int receiver;
    uint32_t sender;
    uint64_t seq, msg_id;
} ck_deliv;

typedef struct ck_pair {
    uint32_t sender;
    int receiver;
    int used;
    uint64_t max_id, max_seq; /* max_seq: among messages never resent */
} ck_pair;

typedef struct ck {
    ck_msg *m;
    size_t mcap, mn;
    ck_pair *p;
    size_t pcap, pn;
    char **names; /* receiver ids -> names */
    size_t nnames, names_cap;
    size_t *nidx; /* name hash: index + 1, 0 = empty */
    size_t ncap;
    ck_deliv *d;
    size_t dn, dcap;
    char ack[16];
    uint64_t resent;
    FILE *err;
    int oom;
} ck;

static uint64_t mix(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    return x ^ (x >> 33);
}

static int grow(void **p, size_t *cap, size_t n, size_t each)
{
    if (n < *cap)
        return 0;
    size_t nc = *cap ? *cap * 2 : 1024;
    while (nc <= n)
        nc *= 2;
    void *q = realloc(*p, nc * each);
    if (!q)
        return -1;
    *p = q;
    *cap = nc;
    return 0;
}

/* ---- messages (sender, seq) ------------------------------------------------------------------ */

static ck_msg *msg_get(ck *k, uint32_t sender, uint64_t seq, int create)
{
    if (create && (k->mn + 1) * 2 > k->mcap) {
        size_t nc = k->mcap ? k->mcap * 2 : 4096;
        ck_msg *nm = calloc(nc, sizeof *nm);
        if (!nm) {
            k->oom = 1;
            return NULL;
        }
        for (size_t i = 0; i < k->mcap; i++) {
            if (!k->m[i].used)
                continue;
            size_t h = mix((uint64_t)k->m[i].sender << 40 ^ k->m[i].seq) & (nc - 1);
            while (nm[h].used)
                h = (h + 1) & (nc - 1);
            nm[h] = k->m[i];
        }
        free(k->m);
        k->m = nm;
        k->mcap = nc;
    }
    if (!k->mcap)
        return NULL;
    size_t h = mix((uint64_t)sender << 40 ^ seq) & (k->mcap - 1);
    while (k->m[h].used) {
        if (k->m[h].sender == sender && k->m[h].seq == seq)
            return &k->m[h];
        h = (h + 1) & (k->mcap - 1);
    }
    if (!create)
        return NULL;
    ck_msg *m = &k->m[h];
    memset(m, 0, sizeof *m);
    m->used = 1;
    m->sender = sender;
    m->seq = seq;
    m->target = -1;
    k->mn++;
    return m;
}

/* ---- receiver names -------------------------------------------------------------------------- */

static uint64_t str_hash(const char *s)
{
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

static int name_id(ck *k, const char *name)
{
    if ((k->nnames + 1) * 2 > k->ncap) {
        size_t nc = k->ncap ? k->ncap * 2 : 256;
        size_t *ni = calloc(nc, sizeof *ni);
        if (!ni) {
            k->oom = 1;
            return -1;
        }
        for (size_t i = 0; i < k->nnames; i++) {
            size_t h = str_hash(k->names[i]) & (nc - 1);
            while (ni[h])
                h = (h + 1) & (nc - 1);
            ni[h] = i + 1;
        }
        free(k->nidx);
        k->nidx = ni;
        k->ncap = nc;
    }
    size_t h = str_hash(name) & (k->ncap - 1);
    while (k->nidx[h]) {
        if (!strcmp(k->names[k->nidx[h] - 1], name))
            return (int)(k->nidx[h] - 1);
        h = (h + 1) & (k->ncap - 1);
    }
    if (grow((void **)&k->names, &k->names_cap, k->nnames, sizeof *k->names) != 0 ||
        !(k->names[k->nnames] = strdup(name))) {
        k->oom = 1;
        return -1;
    }
    k->nidx[h] = ++k->nnames;
    return (int)(k->nnames - 1);
}

/* ---- (sender, receiver) pairs ---------------------------------------------------------------- */

static ck_pair *pair_get(ck *k, uint32_t sender, int receiver)
{
    if ((k->pn + 1) * 2 > k->pcap) {
        size_t nc = k->pcap ? k->pcap * 2 : 1024;
        ck_pair *np = calloc(nc, sizeof *np);
        if (!np) {
            k->oom = 1;
            return NULL;
        }
        for (size_t i = 0; i < k->pcap; i++) {
            if (!k->p[i].used)
                continue;
            size_t h = mix((uint64_t)k->p[i].sender << 32 ^ (uint32_t)k->p[i].receiver) & (nc - 1);
            while (np[h].used)
                h = (h + 1) & (nc - 1);
            np[h] = k->p[i];
        }
        free(k->p);
        k->p = np;
        k->pcap = nc;
    }
    size_t h = mix((uint64_t)sender << 32 ^ (uint32_t)receiver) & (k->pcap - 1);
    while (k->p[h].used) {
        if (k->p[h].sender == sender && k->p[h].receiver == receiver)
            return &k->p[h];
        h = (h + 1) & (k->pcap - 1);
    }
    ck_pair *p = &k->p[h];
    memset(p, 0, sizeof *p);
    p->used = 1;
    p->sender = sender;
    p->receiver = receiver;
    k->pn++;
    return p;
}

/* Remember a MSG_ID of a message (at most two distinct are kept: two means stored twice). */
static void add_id(ck_msg *m, uint64_t id)
{
    if (!id)
        return;
    for (int i = 0; i < m->nids && i < 2; i++)
        if (m->ids[i] == id)
            return;
    if (m->nids < 2)
        m->ids[m->nids] = id;
    if (m->nids < 255)
        m->nids++;
}

/* ---- parsing --------------------------------------------------------------------------------- */

static int parse_u64(const char *s, uint64_t *out)
{
    if (!s || *s < '0' || *s > '9')
        return -1;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end)
        return -1;
    *out = v;
    return 0;
}

/* Split line into at most max space-separated fields; returns the count. */
static int split(char *line, char **f, int max)
{
    int n = 0;
    char *save = NULL;
    for (char *t = strtok_r(line, " ", &save); t; t = strtok_r(NULL, " ", &save)) {
        if (n == max)
            return max + 1;
        f[n++] = t;
    }
    return n;
}

static int parse_line(ck *k, char *line)
{
    char *f[8];
    int n = split(line, f, 7);
    if (n < 1 || f[0][1])
        return -1;
    uint64_t a, b, c, d;
    switch (f[0][0]) {
    case 'S':
    case 'R': {
        if (n != 5 || parse_u64(f[1], &a) || a > UINT32_MAX || parse_u64(f[2], &b))
            return -1;
        int t = name_id(k, f[4]);
        ck_msg *m = msg_get(k, (uint32_t)a, b, 1);
        if (!m || t < 0)
            return -2;
        if (m->target >= 0 && m->target != t)
            return -1; /* one message, two targets: not a history imload writes */
        m->target = t;
        if (f[0][0] == 'S')
            m->sent = 1;
        else {
            m->resent = 1;
            k->resent++;
        }
        return 0;
    }
    case 'A': {
        if (n != 7 || parse_u64(f[1], &a) || a > UINT32_MAX || parse_u64(f[2], &b) ||
            parse_u64(f[4], &c) || parse_u64(f[5], &d))
            return -1;
        int refused = !strcmp(f[3], "refused");
        if (!refused && strcmp(f[3], "stored") && strcmp(f[3], "delivered"))
            return -1;
        ck_msg *m = msg_get(k, (uint32_t)a, b, 1);
        if (!m)
            return -2;
        if (refused)
            m->refused = 1;
        else {
            m->ok = 1;
            add_id(m, d);
        }
        return 0;
    }
    case 'D': {
        if (n != 6 || parse_u64(f[2], &a) || a > UINT32_MAX || parse_u64(f[3], &b) ||
            parse_u64(f[4], &c) || parse_u64(f[5], &d))
            return -1;
        int r = name_id(k, f[1]);
        if (r < 0 || grow((void **)&k->d, &k->dcap, k->dn, sizeof *k->d) != 0)
            return -2;
        k->d[k->dn++] = (ck_deliv){r, (uint32_t)a, b, c};
        return 0;
    }
    default:
        return -1;
    }
}

static int read_file(ck *k, const char *path)
{
    FILE *f = strcmp(path, "-") ? fopen(path, "r") : stdin;
    if (!f) {
        fprintf(k->err, PROG ": cannot read %s: %s\n", path, strerror(errno));
        return -1;
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    unsigned long no = 0;
    int rc = 0;
    while ((len = getline(&line, &cap, f)) >= 0) {
        no++;
        if (len > 0 && line[len - 1] == '\n')
            line[--len] = 0;
        if (no == 1) {
            char scen[32], ack[16];
            if (strncmp(line, HISTORY_MAGIC " ", sizeof HISTORY_MAGIC) != 0 ||
                sscanf(line + sizeof HISTORY_MAGIC, "%31s %15s", scen, ack) != 2) {
                fprintf(k->err, PROG ": %s: not an imload history (no '" HISTORY_MAGIC "' line)\n",
                        path);
                rc = -1;
                break;
            }
            if (k->ack[0] && strcmp(k->ack, ack)) {
                fprintf(k->err, PROG ": %s: ack mode %s, other files %s\n", path, ack, k->ack);
                rc = -1;
                break;
            }
            snprintf(k->ack, sizeof k->ack, "%s", ack);
            continue;
        }
        if (!len)
            continue;
        int r = parse_line(k, line);
        if (r == -2 || k->oom) {
            fprintf(k->err, PROG ": out of memory\n");
            rc = -1;
            break;
        }
        if (r < 0) {
            fprintf(k->err, PROG ": %s:%lu: malformed line\n", path, no);
            rc = -1;
            break;
        }
    }
    if (rc == 0 && no == 0) {
        fprintf(k->err, PROG ": %s: empty (not an imload history)\n", path);
        rc = -1;
    }
    if (rc == 0 && ferror(f)) {
        fprintf(k->err, PROG ": cannot read %s: %s\n", path, strerror(errno));
        rc = -1;
    }
    free(line);
    if (f != stdin)
        fclose(f);
    return rc;
}

/* ---- judging --------------------------------------------------------------------------------- */

typedef struct ck_result {
    uint64_t sent, acked, refused, delivered, lost, duplicates, redelivered, reordered, unexpected,
        resent, unconfirmed;
} ck_result;

#if defined(__GNUC__)
__attribute__((format(printf, 4, 5)))
#endif
static void
detail(ck *k, uint64_t *count, const char *kind, const char *fmt, ...)
{
    (*count)++;
    if (*count > CK_DETAILS)
        return;
    char buf[300];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    fprintf(k->err, "check: %s: %s\n", kind, buf);
}

static void judge(ck *k, ck_result *r)
{
    memset(r, 0, sizeof *r);
    r->resent = k->resent;
    /* deliveries, in each receiver's order */
    for (size_t i = 0; i < k->dn; i++) {
        const ck_deliv *d = &k->d[i];
        const char *rn = k->names[d->receiver];
        ck_msg *m = msg_get(k, d->sender, d->seq, 0);
        if (!m || !m->sent) {
            detail(k, &r->unexpected, "unexpected",
                   "%s got sender %" PRIu32 " seq %" PRIu64 " (MSG_ID %" PRIu64 "), never sent", rn,
                   d->sender, d->seq, d->msg_id);
            continue;
        }
        if (m->target != d->receiver) {
            detail(k, &r->unexpected, "unexpected",
                   "%s got sender %" PRIu32 " seq %" PRIu64 " (MSG_ID %" PRIu64 "), sent to %s", rn,
                   d->sender, d->seq, d->msg_id, k->names[m->target]);
            continue;
        }
        if (m->refused && !m->ok && strcmp(k->ack, "none")) {
            detail(k, &r->unexpected, "unexpected",
                   "%s got sender %" PRIu32 " seq %" PRIu64 " (MSG_ID %" PRIu64
                   "), which was refused",
                   rn, d->sender, d->seq, d->msg_id);
            continue;
        }
        add_id(m, d->msg_id);
        int seen = 0;
        for (int j = 0; j < m->ndel_ids && j < 2; j++)
            if (m->del_ids[j] == d->msg_id)
                seen = 1;
        if (seen || m->ndel_ids >= 2) {
            r->redelivered++;
            continue;
        }
        m->del_ids[m->ndel_ids++] = d->msg_id;
        ck_pair *p = pair_get(k, d->sender, d->receiver);
        if (!p) {
            k->oom = 1;
            return;
        }
        int bad_id = d->msg_id < p->max_id, bad_seq = !m->resent && d->seq < p->max_seq;
        if (bad_id || bad_seq)
            detail(k, &r->reordered, "reordered",
                   "sender %" PRIu32 " -> %s: seq %" PRIu64 " MSG_ID %" PRIu64
                   " after MSG_ID %" PRIu64 "%s",
                   d->sender, rn, d->seq, d->msg_id, p->max_id,
                   bad_id ? "" : " (below the seq of a message never resent)");
        if (d->msg_id > p->max_id)
            p->max_id = d->msg_id;
        if (!m->resent && d->seq > p->max_seq)
            p->max_seq = d->seq;
    }
    int ack_none = !strcmp(k->ack, "none");
    for (size_t i = 0; i < k->mcap; i++) {
        const ck_msg *m = &k->m[i];
        if (!m->used || !m->sent)
            continue;
        r->sent++;
        if (m->ok)
            r->acked++;
        else if (m->refused)
            r->refused++;
        if (m->ndel_ids)
            r->delivered++;
        if (m->nids > 1)
            detail(k, &r->duplicates, "duplicate",
                   "sender %" PRIu32 " seq %" PRIu64 " stored as MSG_ID %" PRIu64 " and %" PRIu64,
                   m->sender, m->seq, m->ids[0], m->ids[1]);
        if (!m->ndel_ids && (m->ok || ack_none))
            detail(k, &r->lost, "lost",
                   "sender %" PRIu32 " seq %" PRIu64 " (MSG_ID %" PRIu64
                   ") to %s %s, never delivered",
                   m->sender, m->seq, m->nids ? m->ids[0] : 0, k->names[m->target],
                   ack_none ? "sent" : "acknowledged");
        if (!ack_none && !m->ok && !m->refused && !m->ndel_ids)
            r->unconfirmed++;
    }
}

int check_main(int nfiles, char *const *files, FILE *out, FILE *err)
{
    ck k;
    memset(&k, 0, sizeof k);
    k.err = err;
    int rc = 0;
    for (int i = 0; i < nfiles && rc == 0; i++)
        if (read_file(&k, files[i]) != 0)
            rc = 2;
    ck_result r;
    if (rc == 0) {
        judge(&k, &r);
        if (k.oom) {
            fprintf(err, PROG ": out of memory\n");
            rc = 2;
        }
    }
    if (rc == 0) {
        fprintf(out,
                "check: sent %" PRIu64 " acked %" PRIu64 " refused %" PRIu64 " delivered %" PRIu64
                " lost %" PRIu64 " duplicates %" PRIu64 " reordered %" PRIu64 " unexpected %" PRIu64
                " redelivered %" PRIu64 " resent %" PRIu64 " unconfirmed %" PRIu64 "\n",
                r.sent, r.acked, r.refused, r.delivered, r.lost, r.duplicates, r.reordered,
                r.unexpected, r.redelivered, r.resent, r.unconfirmed);
        fflush(out);
        rc = r.lost || r.duplicates || r.reordered || r.unexpected ? 1 : 0;
    }
    free(k.m);
    free(k.p);
    for (size_t i = 0; i < k.nnames; i++)
        free(k.names[i]);
    free(k.names);
    free(k.nidx);
    free(k.d);
    return rc;
}
