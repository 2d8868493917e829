/* Frame codec benchmark: how fast libimp frames, decodes and encodes, and that decoding never
 * touches the heap (IMP-LIB-002: the parser and decoder never allocate).
 *
 *   (a) a buffer holding a stream of 64-byte SEND frames: imp_frame_parse over the whole stream
 *       (frames/s, GB/s), then imp_frame_parse + imp_msg_decode (frames/s)
 *   (b) the same with 16 KiB frames
 *   (c) imp_msg_encode of 64-byte SENDs
 *   (d) allocations during the decode loop: malloc/calloc/realloc calls counted by interposing
 *       them (glibc, dlsym(RTLD_NEXT)), plus glibc's mallinfo2() arena use before and after
 *   (e) a server imp_conn in READY fed the 64-byte (and 16 KiB) stream in 64 KiB chunks, every
 *       event taken: frames/s, and the connection's allocations through its allocator hook
 *   (f) imd's per-message hot path (issue 3), in ns per operation: imp_msg_decode of a parsed
 *       SEND with a 64-byte body; imp_msg_encode of the DELIVER imd builds for it (64-byte body,
 *       8 fields); imp_prepared_new + imp_prepared_free of that DELIVER; imp_conn_send_prepared
 *       of it; imp_conn_send of the ACK imd answers with (CLIENT_MSG_ID, MSG_ID, OUTCOME)
 *
 * Each measurement runs for about IMP_BENCH_SECONDS (default 0.75) seconds, three times; the
 * best and the median are printed. Build: `make bench` (-O2, no sanitizers). The whole run takes
 * about 17 s. Output is plain text, one result per line, then a summary.
 *
 * GB/s counts the bytes framed (the stream's size): the parser reads only the 12-byte header of
 * each frame and the decoder only field headers and checked values, so large frames frame at
 * memory-bandwidth-independent rates; (e) includes the copy into the connection's buffer.
 *
 * IMP_BENCH_ONLY=f runs only (f) (a few seconds): for before/after comparisons of the hot path.
 */
#define _GNU_SOURCE

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "imp/imp.h"

#if defined(__GLIBC__) && !defined(IMP_BENCH_NO_MALLOC_HOOK)
#include <dlfcn.h>
#include <malloc.h>
#define HAVE_MALLOC_HOOK 1
#else
#define HAVE_MALLOC_HOOK 0
#endif

/* ---- counting malloc (glibc) -------------------------------------------------------------- */

static volatile unsigned long heap_calls; /* malloc/calloc/realloc calls while counting */
static volatile int counting;

#if HAVE_MALLOC_HOOK
/* The program's malloc family replaces the C library's (glibc supports this) and forwards to
 * the next definition. While dlsym itself needs memory, a small static arena serves it. */
static void *(*next_malloc)(size_t);
static void *(*next_calloc)(size_t, size_t);
static void *(*next_realloc)(void *, size_t);
static void (*next_free)(void *);
static _Alignas(16) unsigned char boot[8192];
static size_t boot_used;
static int resolving;

static void *boot_alloc(size_t n)
{
    n = (n + 15) & ~(size_t)15;
    if (n > sizeof boot - boot_used)
        return NULL;
    void *p = boot + boot_used;
    boot_used += n;
    return p;
}

static int in_boot(const void *p)
{
    return (const unsigned char *)p >= boot && (const unsigned char *)p < boot + sizeof boot;
}

static void resolve(void)
{
    if (resolving)
        return;
    resolving = 1;
    /* dlsym returns an object pointer; copy its bits into the function pointers */
    void *m = dlsym(RTLD_NEXT, "malloc"), *c = dlsym(RTLD_NEXT, "calloc");
    void *r = dlsym(RTLD_NEXT, "realloc"), *f = dlsym(RTLD_NEXT, "free");
    memcpy(&next_calloc, &c, sizeof c);
    memcpy(&next_realloc, &r, sizeof r);
    memcpy(&next_free, &f, sizeof f);
    memcpy(&next_malloc, &m, sizeof m); /* last: malloc stops using the arena */
    resolving = 0;
}

void *malloc(size_t n)
{
    if (!next_malloc)
        resolve();
    if (!next_malloc)
        return boot_alloc(n);
    if (counting)
        heap_calls++;
    return next_malloc(n);
}

void *calloc(size_t a, size_t b)
{
    if (!next_calloc)
        resolve();
    if (!next_calloc)
        return b && a > SIZE_MAX / b ? NULL : boot_alloc(a * b); /* static: already zero */
    if (counting)
        heap_calls++;
    return next_calloc(a, b);
}

void *realloc(void *p, size_t n)
{
    if (!next_realloc)
        resolve();
    if (counting)
        heap_calls++;
    if (in_boot(p)) { /* move out of the bootstrap arena */
        void *q = malloc(n);
        size_t avail = (size_t)(boot + sizeof boot - (unsigned char *)p);
        if (q)
            memcpy(q, p, n < avail ? n : avail);
        return q;
    }
    return next_realloc ? next_realloc(p, n) : NULL;
}

void free(void *p)
{
    if (!p || in_boot(p))
        return;
    if (!next_free)
        resolve();
    if (next_free)
        next_free(p);
}

static size_t arena_in_use(void)
{
    struct mallinfo2 mi = mallinfo2();
    return mi.uordblks + mi.hblkhd;
}
#else
static size_t arena_in_use(void)
{
    return 0;
}
#endif

/* ---- the connection's allocator hook ------------------------------------------------------- */

static unsigned long conn_allocs;

static void *counting_realloc(void *ud, void *ptr, size_t size)
{
    (void)ud;
    if (size == 0) {
        free(ptr);
        return NULL;
    }
    conn_allocs++;
    return realloc(ptr, size);
}

static const imp_allocator hook = {counting_realloc, NULL};

/* ---- timing -------------------------------------------------------------------------------- */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static double run_seconds = 0.75;
static volatile uint64_t sink; /* keeps the loops from being optimised away */

static void die(const char *what, long long v)
{
    fprintf(stderr, "bench_frame: %s (%lld)\n", what, v);
    exit(1);
}

/* A stream of n copies of one frame. */
typedef struct stream {
    uint8_t *p;
    size_t len, frame, n;
} stream;

static void make_send(uint8_t *out, size_t frame_size, uint32_t rid)
{
    /* header 12 + TARGET_KIND 7 + TARGET "bob" 9 + BODY header 6 = 34 bytes before the body */
    size_t body_len = frame_size - 34;
    uint8_t *body = malloc(body_len);
    if (!body)
        die("out of memory", 0);
    memset(body, 'x', body_len);
    imp_msg m;
    imp_msg_init(&m, IMP_SEND, rid);
    imp_msg_set_u(&m, IMP_T_TARGET_KIND, IMP_TARGET_USER);
    imp_msg_set_s(&m, IMP_T_TARGET, "bob");
    imp_msg_set_b(&m, IMP_T_BODY, body, body_len);
    imp_ssize n = imp_msg_encode(&m, out, frame_size);
    if (n != (imp_ssize)frame_size)
        die("encoded SEND has the wrong size", n);
    free(body);
}

static stream make_stream(size_t frame_size, size_t total)
{
    stream s;
    s.frame = frame_size;
    s.n = total / frame_size;
    s.len = s.n * frame_size;
    s.p = malloc(s.len);
    if (!s.p)
        die("out of memory", 0);
    make_send(s.p, frame_size, 7);
    for (size_t i = 1; i < s.n; i++)
        memcpy(s.p + i * frame_size, s.p, frame_size);
    return s;
}

/* One pass over the stream; returns frames seen. */
static size_t pass_parse(const stream *s)
{
    size_t off = 0, frames = 0;
    uint64_t acc = 0;
    while (off < s->len) {
        imp_frame f;
        imp_ssize n = imp_frame_parse(s->p + off, s->len - off, 0, &f, NULL);
        if (n <= 0)
            die("parse failed", n);
        acc += f.length;
        off += (size_t)n;
        frames++;
    }
    sink += acc;
    return frames;
}

static size_t pass_decode(const stream *s)
{
    size_t off = 0, frames = 0;
    uint64_t acc = 0;
    while (off < s->len) {
        imp_frame f;
        imp_msg m;
        imp_ssize n = imp_frame_parse(s->p + off, s->len - off, 0, &f, NULL);
        if (n <= 0)
            die("parse failed", n);
        int r = imp_msg_decode(&f, &m);
        if (r)
            die("decode failed", r);
        acc += m.v[IMP_T_BODY].b.len + m.present;
        off += (size_t)n;
        frames++;
    }
    sink += acc;
    return frames;
}

static size_t pass_encode(const stream *s)
{
    /* encode the 64-byte SEND into consecutive slots of the stream buffer */
    static const uint8_t body[30] = "012345678901234567890123456789";
    size_t frames = 0;
    imp_msg m;
    imp_msg_init(&m, IMP_SEND, 0);
    imp_msg_set_u(&m, IMP_T_TARGET_KIND, IMP_TARGET_USER);
    imp_msg_set_s(&m, IMP_T_TARGET, "bob");
    imp_msg_set_b(&m, IMP_T_BODY, body, sizeof body);
    for (size_t off = 0; off + 64 <= s->len; off += 64) {
        m.request_id = (uint32_t)off;
        imp_ssize n = imp_msg_encode(&m, s->p + off, 64);
        if (n != 64)
            die("encode failed", n);
        frames++;
    }
    sink += s->p[s->len - 1];
    return frames;
}

/* A server connection in READY (HELLO, LOGIN, AUTH_OK done). */
static imp_conn *ready_server(void)
{
    imp_config cfg;
    imp_config_default(&cfg, IMP_ROLE_SERVER);
    cfg.alloc = &hook;
    cfg.ping_interval_ms = 0;
    cfg.auth_timeout_ms = 0;
    imp_conn *c = imp_conn_new(IMP_ROLE_SERVER, &cfg, 0);
    if (!c)
        die("imp_conn_new failed", 0);
    uint8_t buf[256];
    imp_msg m;
    imp_msg_init(&m, IMP_HELLO, 1);
    imp_msg_set_u(&m, IMP_T_VERSION_MIN, 1);
    imp_msg_set_u(&m, IMP_T_VERSION_MAX, 1);
    imp_ssize n = imp_msg_encode(&m, buf, sizeof buf);
    imp_msg_init(&m, IMP_LOGIN, 2);
    imp_msg_set_s(&m, IMP_T_USER, "alice");
    imp_msg_set_s(&m, IMP_T_PASSWORD, "secret");
    imp_ssize n2 = imp_msg_encode(&m, buf + n, sizeof buf - (size_t)n);
    if (n < 0 || n2 < 0 || imp_conn_feed(c, buf, (size_t)(n + n2)) != n + n2)
        die("handshake feed failed", 0);
    while (imp_conn_next_event(c, &m) > 0)
        ;
    imp_msg_init(&m, IMP_AUTH_OK, 2);
    imp_msg_set_s(&m, IMP_T_USER, "alice");
    imp_msg_set_u(&m, IMP_T_SESSION_ID, 1);
    imp_msg_set_u(&m, IMP_T_LAST_SEQ, 0);
    int r = imp_conn_send(c, &m);
    if (r || imp_conn_state(c) != IMP_S_READY)
        die("AUTH_OK failed", r);
    const uint8_t *out;
    imp_conn_consume_output(c, imp_conn_pending_output(c, &out));
    return c;
}

static imp_conn *bench_conn; /* the connection pass_conn feeds */

static size_t pass_conn(const stream *s)
{
    size_t frames = 0;
    for (size_t off = 0; off < s->len;) {
        size_t chunk = s->len - off < 65536 ? s->len - off : 65536;
        size_t done = 0;
        while (done < chunk) {
            imp_ssize r = imp_conn_feed(bench_conn, s->p + off + done, chunk - done);
            if (r < 0)
                die("feed failed", r);
            done += (size_t)r;
            imp_msg m;
            int e;
            while ((e = imp_conn_next_event(bench_conn, &m)) > 0)
                frames++;
            if (e < 0)
                die("next_event failed", e);
        }
        off += chunk;
    }
    const uint8_t *out;
    size_t pending = imp_conn_pending_output(bench_conn, &out);
    if (pending)
        imp_conn_consume_output(bench_conn, pending);
    return frames;
}

/* ---- (f) imd's per-message hot path ------------------------------------------------------- */

#define HOT_OPS 4096 /* operations per pass */

static const uint8_t body64[64] =
    "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
static uint8_t hot_buf[256];
static imp_frame send64; /* a parsed SEND with a 64-byte body, as imd receives it */
static uint8_t send64_bytes[256];

/* The transient DELIVER imd builds (server/deliver.c build_deliver) for a 64-byte body. */
static void build_deliver64(imp_msg *d, uint64_t id)
{
    imp_msg_init(d, IMP_DELIVER, 0);
    imp_msg_set_u(d, IMP_T_TARGET_KIND, IMP_TARGET_USER);
    imp_msg_set_s(d, IMP_T_TARGET, "user42");
    imp_msg_set_u(d, IMP_T_CLASS, IMP_CLASS_TRANSIENT);
    imp_msg_set_b(d, IMP_T_BODY, body64, sizeof body64);
    imp_msg_set_u(d, IMP_T_MSG_ID, id);
    imp_msg_set_u(d, IMP_T_SEQ, 0);
    imp_msg_set_s(d, IMP_T_SENDER, "user17");
    imp_msg_set_u(d, IMP_T_TIMESTAMP, UINT64_C(1764134100000) + id);
}

static void make_send64(void)
{
    imp_msg m;
    imp_msg_init(&m, IMP_SEND, 77);
    imp_msg_set_u(&m, IMP_T_TARGET_KIND, IMP_TARGET_USER);
    imp_msg_set_s(&m, IMP_T_TARGET, "user42");
    imp_msg_set_s(&m, IMP_T_CLIENT_MSG_ID, "c-000123");
    imp_msg_set_u(&m, IMP_T_CLASS, IMP_CLASS_TRANSIENT);
    imp_msg_set_b(&m, IMP_T_BODY, body64, sizeof body64);
    imp_ssize n = imp_msg_encode(&m, send64_bytes, sizeof send64_bytes);
    if (n <= 0 || imp_frame_parse(send64_bytes, (size_t)n, 0, &send64, NULL) != n)
        die("SEND64 encode/parse failed", n);
}

static size_t pass_hot_decode(const stream *s)
{
    (void)s;
    uint64_t acc = 0;
    for (size_t i = 0; i < HOT_OPS; i++) {
        imp_msg m;
        int r = imp_msg_decode(&send64, &m);
        if (r)
            die("decode failed", r);
        acc += m.present + m.v[IMP_T_BODY].b.len;
    }
    sink += acc;
    return HOT_OPS;
}

static size_t pass_hot_encode(const stream *s)
{
    (void)s;
    imp_msg d;
    build_deliver64(&d, 1);
    for (size_t i = 0; i < HOT_OPS; i++) {
        d.v[IMP_T_MSG_ID].u = i;
        imp_ssize n = imp_msg_encode(&d, hot_buf, sizeof hot_buf);
        if (n <= 0)
            die("encode failed", n);
    }
    sink += hot_buf[40];
    return HOT_OPS;
}

static size_t pass_hot_prepare(const stream *s)
{
    (void)s;
    imp_msg d;
    build_deliver64(&d, 1);
    uint64_t acc = 0;
    for (size_t i = 0; i < HOT_OPS; i++) {
        d.v[IMP_T_MSG_ID].u = i;
        int err;
        imp_prepared *p = imp_prepared_new(&d, NULL, &err);
        if (!p)
            die("imp_prepared_new failed", err);
        acc += imp_prepared_size(p);
        imp_prepared_free(p);
    }
    sink += acc;
    return HOT_OPS;
}

static imp_prepared *hot_prep;

static size_t pass_hot_send_prepared(const stream *s)
{
    (void)s;
    const uint8_t *out;
    for (size_t i = 0; i < HOT_OPS; i++) {
        int r = imp_conn_send_prepared(bench_conn, hot_prep);
        if (r)
            die("imp_conn_send_prepared failed", r);
        if ((i & 63) == 63) /* imd's writes drain the output now and then */
            imp_conn_consume_output(bench_conn, imp_conn_pending_output(bench_conn, &out));
    }
    imp_conn_consume_output(bench_conn, imp_conn_pending_output(bench_conn, &out));
    return HOT_OPS;
}

static size_t pass_hot_ack(const stream *s)
{
    (void)s;
    const uint8_t *out;
    for (size_t i = 0; i < HOT_OPS; i++) {
        imp_msg m; /* built each time, as imd's send_ack does */
        imp_msg_init(&m, IMP_ACK, (uint32_t)i + 1);
        imp_msg_set_s(&m, IMP_T_CLIENT_MSG_ID, "c-000123");
        imp_msg_set_u(&m, IMP_T_MSG_ID, i);
        imp_msg_set_u(&m, IMP_T_OUTCOME, IMP_OUTCOME_STORED);
        int r = imp_conn_send(bench_conn, &m);
        if (r)
            die("imp_conn_send(ACK) failed", r);
        if ((i & 63) == 63)
            imp_conn_consume_output(bench_conn, imp_conn_pending_output(bench_conn, &out));
    }
    imp_conn_consume_output(bench_conn, imp_conn_pending_output(bench_conn, &out));
    return HOT_OPS;
}

typedef struct result {
    double fps[3], gbps[3];
    unsigned long heap[3];
    size_t frames;
} result;

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Run pass() over s until run_seconds elapsed, three times. */
static result measure(size_t (*pass)(const stream *), const stream *s)
{
    result res;
    memset(&res, 0, sizeof res);
    (void)pass(s); /* warm up: caches, branch predictors, the connection's buffers */
    for (int k = 0; k < 3; k++) {
        size_t frames = 0, passes = 0;
        unsigned long calls0 = heap_calls;
        counting = 1;
        double t0 = now_s(), t;
        do {
            frames += pass(s);
            passes++;
            t = now_s();
        } while (t - t0 < run_seconds);
        counting = 0;
        res.heap[k] = heap_calls - calls0;
        res.fps[k] = (double)frames / (t - t0);
        res.gbps[k] = s ? (double)passes * (double)s->len / (t - t0) / 1e9 : 0;
        res.frames += frames;
    }
    return res;
}

static void report(const char *name, const result *r, int with_gbps)
{
    double f[3], g[3];
    memcpy(f, r->fps, sizeof f);
    memcpy(g, r->gbps, sizeof g);
    qsort(f, 3, sizeof f[0], cmp_double);
    qsort(g, 3, sizeof g[0], cmp_double);
    if (with_gbps)
        printf("%-34s best %8.2f Mframes/s %8.2f GB/s   median %8.2f Mframes/s %8.2f GB/s\n", name,
               f[2] / 1e6, g[2], f[1] / 1e6, g[1]);
    else
        printf("%-34s best %8.2f Mframes/s                median %8.2f Mframes/s\n", name,
               f[2] / 1e6, f[1] / 1e6);
    fflush(stdout);
}

static void report_ns(const char *name, const result *r)
{
    double f[3];
    memcpy(f, r->fps, sizeof f);
    qsort(f, 3, sizeof f[0], cmp_double);
    printf("%-34s best %8.1f ns/op  (%6.2f Mops/s)   median %8.1f ns/op\n", name, 1e9 / f[2],
           f[2] / 1e6, 1e9 / f[1]);
    fflush(stdout);
}

/* (f): each case in ns per operation. */
static void run_hot(void)
{
    make_send64();
    result r = measure(pass_hot_decode, NULL);
    report_ns("(f) decode SEND, 64 B body", &r);
    r = measure(pass_hot_encode, NULL);
    report_ns("(f) encode DELIVER, 64 B body", &r);
    r = measure(pass_hot_prepare, NULL);
    report_ns("(f) prepared_new+free DELIVER 64 B", &r);
    imp_msg d;
    build_deliver64(&d, 1);
    int err;
    hot_prep = imp_prepared_new(&d, NULL, &err);
    if (!hot_prep)
        die("imp_prepared_new failed", err);
    bench_conn = ready_server();
    r = measure(pass_hot_send_prepared, NULL);
    report_ns("(f) conn_send_prepared DELIVER", &r);
    r = measure(pass_hot_ack, NULL);
    report_ns("(f) build + conn_send ACK", &r);
    imp_conn_free(bench_conn);
    imp_prepared_free(hot_prep);
}

static double best(const result *r, int gb)
{
    const double *v = gb ? r->gbps : r->fps;
    double b = v[0];
    for (int i = 1; i < 3; i++)
        if (v[i] > b)
            b = v[i];
    return b;
}

int main(void)
{
    const char *env = getenv("IMP_BENCH_SECONDS");
    if (env && atof(env) > 0)
        run_seconds = atof(env);
    double start = now_s();

    /* the counter must see an allocation, or its "0" below would prove nothing */
    int hook_works = 0;
    if (HAVE_MALLOC_HOOK) {
        void *(*volatile alloc)(size_t) = malloc;
        unsigned long before = heap_calls;
        counting = 1;
        void *p = alloc(32);
        counting = 0;
        free(p);
        hook_works = heap_calls == before + 1;
    }

    const char *only = getenv("IMP_BENCH_ONLY");
    if (only && strcmp(only, "f") == 0) {
        printf("bench_frame: libimp %s; (f) only; 3 runs of %.2f s each, best and median\n",
               IMP_LIB_VERSION, run_seconds);
        run_hot();
        return 0;
    }

    stream small = make_stream(64, 1u << 20);
    stream large = make_stream(16384, 1u << 20);
    stream encbuf = make_stream(64, 1u << 20);
    printf("bench_frame: libimp %s; 64-byte SEND frames (%zu in a %zu-byte stream) and 16 KiB "
           "SEND frames (%zu); 3 runs of %.2f s each, best and median\n",
           IMP_LIB_VERSION, small.n, small.len, large.n, run_seconds);

    /* (a), (d) */
    result a1 = measure(pass_parse, &small);
    report("(a) parse, 64 B frames", &a1, 1);
    size_t arena0 = arena_in_use();
    result a2 = measure(pass_decode, &small);
    size_t arena1 = arena_in_use();
    report("(a) parse+decode, 64 B frames", &a2, 1);
    /* (b) */
    result b1 = measure(pass_parse, &large);
    report("(b) parse, 16 KiB frames", &b1, 1);
    result b2 = measure(pass_decode, &large);
    report("(b) parse+decode, 16 KiB frames", &b2, 1);
    /* (c) */
    result c1 = measure(pass_encode, &encbuf);
    report("(c) encode, 64 B SEND", &c1, 1);
    /* (e) */
    bench_conn = ready_server();
    unsigned long ca0 = conn_allocs;
    result e1 = measure(pass_conn, &small);
    unsigned long e1_allocs = conn_allocs - ca0;
    report("(e) conn READY, 64 B, 64 KiB chunks", &e1, 1);
    ca0 = conn_allocs;
    result e2 = measure(pass_conn, &large);
    unsigned long e2_allocs = conn_allocs - ca0;
    report("(e) conn READY, 16 KiB, 64 KiB chunks", &e2, 1);
    imp_conn_free(bench_conn);
    /* (f) */
    run_hot();

    unsigned long decode_heap = a2.heap[0] + a2.heap[1] + a2.heap[2] + a1.heap[0] + a1.heap[1] +
                                a1.heap[2] + b2.heap[0] + b2.heap[1] + b2.heap[2];
    if (hook_works) {
        printf("(d) allocations during decode: %lu (malloc/calloc/realloc calls over %zu parsed "
               "and decoded frames; heap in use before/after: %zu/%zu bytes)\n",
               decode_heap, a2.frames + b2.frames, arena0, arena1);
        printf("(d) allocations during encode: %lu over %zu frames\n",
               c1.heap[0] + c1.heap[1] + c1.heap[2], c1.frames);
    } else {
        printf("(d) allocations during decode: not counted (needs glibc malloc interposition)\n");
    }
    printf("note: GB/s is the size of the stream framed per second; parse reads only headers "
           "(payloads are views), so (b) measures per-frame cost, not memory bandwidth\n");
    size_t chunks1 = e1.frames * 64 / 65536, chunks2 = e2.frames * 16384 / 65536;
    printf("(e) connection allocations through its hook: %lu over %zu chunks (64 B frames), %lu "
           "over %zu chunks (16 KiB frames)\n",
           e1_allocs, chunks1, e2_allocs, chunks2);

    printf("summary: parse %.1f M frames/s (%.2f GB/s) and parse+decode %.1f M frames/s for 64 B "
           "frames; parse %.1f GB/s for 16 KiB frames; encode %.1f M frames/s; connection %.1f M "
           "frames/s (64 B), %.2f GB/s (16 KiB); %lu allocations during decode; %.1f s\n",
           best(&a1, 0) / 1e6, best(&a1, 1), best(&a2, 0) / 1e6, best(&b1, 1), best(&c1, 0) / 1e6,
           best(&e1, 0) / 1e6, best(&e2, 1), decode_heap, now_s() - start);
    free(small.p);
    free(large.p);
    free(encbuf.p);
    return hook_works && decode_heap ? 1 : 0;
}
