/* Fuzz target: the list codec (names, headers, stats): iterators imp_*_next over arbitrary
 * bytes, validation inside imp_msg_decode, and the builders imp_*_add.
 *
 * Requirements checked:
 *   IMP-FIELD-009  list structure and entry rules (names valid, header keys 1-64 of
 *                  A-Z a-z 0-9 - _ ., values 0-1024 bytes of UTF-8, no two keys equal ignoring
 *                  case, stat names 1-64 of a-z 0-9 _ ., at most 1000 / 32 / 1000 entries):
 *                  decode accepts a list exactly when the reference accepts it (else BAD_LIST,
 *                  or FIELD_LENGTH over the field's length limit)
 *   IMP-SEC-002    every iterator step stays inside the list: each entry is the bytes its
 *                  length prefix declares, the rest advances by exactly the entry's size, and a
 *                  length running past the end is BAD_LIST, never an over-read (exact-size heap
 *                  copies make ASan see one)
 *   builders       (msg.h) a valid list rebuilt entry by entry through the builders gives the
 *                  same bytes; the builders refuse exactly the invalid entries with the
 *                  documented codes, errors are sticky and change nothing, and whatever a
 *                  builder produced iterates back to the entries it accepted
 *
 * Input: byte 0 % 4 picks the mode: 0 names, 1 headers, 2 stats (the rest is the list), 3
 * builders (byte 1: kind, bytes 2-3: capacity, then operations).
 */
#include "fuzz_ref.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

typedef struct entry {
    imp_bytes a; /* name / key */
    imp_bytes b; /* header value */
    uint64_t v;  /* stat value */
} entry;

static const int kinds[3] = {IMP_K_NAMES, IMP_K_HEADERS, IMP_K_STATS};
static const size_t limits[3] = {1000, 32, 1000};

/* One iterator step with all its invariants. 1 entry, 0 end, < 0 error. */
static int step(int kind, imp_bytes *rest, entry *e)
{
    imp_bytes before = *rest;
    int r;
    size_t used;
    memset(e, 0, sizeof *e);
    if (kind == IMP_K_NAMES)
        r = imp_names_next(rest, &e->a);
    else if (kind == IMP_K_HEADERS)
        r = imp_headers_next(rest, &e->a, &e->b);
    else
        r = imp_stats_next(rest, &e->a, &e->v);
    if (r == 0) {
        FZ_CHECK_EQ(before.len, 0);
        return 0;
    }
    if (r < 0) {
        FZ_CHECK_EQ(r, IMP_ERR_BAD_LIST);
        return r;
    }
    FZ_CHECK_EQ(r, 1);
    FZ_CHECK(before.len > 0);
    FZ_CHECK(e->a.p == before.p + 1);
    FZ_CHECK_EQ(e->a.len, before.p[0]);
    if (kind == IMP_K_NAMES) {
        used = 1 + e->a.len;
    } else if (kind == IMP_K_HEADERS) {
        FZ_CHECK(e->b.p == e->a.p + e->a.len + 2);
        FZ_CHECK_EQ(e->b.len, fz_be16(e->a.p + e->a.len));
        used = 3 + e->a.len + e->b.len;
    } else {
        FZ_CHECK(e->v == fz_be64(e->a.p + e->a.len));
        used = 9 + e->a.len;
    }
    FZ_CHECK(used <= before.len);
    FZ_CHECK(rest->p == before.p + used);
    FZ_CHECK_EQ(rest->len, before.len - used);
    return 1;
}

/* Add an entry; 0 or the error. */
static int add(int kind, imp_builder *b, const entry *e)
{
    if (kind == IMP_K_NAMES)
        return imp_names_add(b, e->a.p, e->a.len);
    if (kind == IMP_K_HEADERS)
        return imp_headers_add(b, e->a.p, e->a.len, e->b.p, e->b.len);
    return imp_stats_add(b, e->a.p, e->a.len, e->v);
}

static size_t entry_size(int kind, const entry *e)
{
    return kind == IMP_K_NAMES     ? 1 + e->a.len
           : kind == IMP_K_HEADERS ? 3 + e->a.len + e->b.len
                                   : 9 + e->a.len;
}

/* Add with the reference expectation: which errors are acceptable for this entry given the
 * entries already in the list (accepted[0..n)). */
static int add_checked(int kind, imp_builder *b, const entry *e, const entry *accepted, size_t n)
{
    size_t len0 = b->len;
    unsigned count0 = b->count;
    int sticky = b->err;
    int bad_list = 0, bad_name = 0, bad_utf8 = 0, no_room = 0;
    int ki = kind == IMP_K_NAMES ? 0 : kind == IMP_K_HEADERS ? 1 : 2;
    if (n >= limits[ki])
        bad_list = 1;
    if (kind == IMP_K_NAMES) {
        bad_name = !ref_name_valid(e->a.p, e->a.len);
    } else if (kind == IMP_K_HEADERS) {
        if (!ref_key_valid(e->a.p, e->a.len) || e->b.len > 1024)
            bad_list = 1;
        for (size_t i = 0; i < n; i++)
            if (ref_keys_equal(accepted[i].a.p, accepted[i].a.len, e->a.p, e->a.len))
                bad_list = 1;
        bad_utf8 = !ref_utf8_valid(e->b.p, e->b.len);
    } else {
        bad_list |= !ref_stat_name_valid(e->a.p, e->a.len);
    }
    no_room = b->cap - b->len < entry_size(kind, e);
    int r = add(kind, b, e);
    if (sticky) {
        FZ_CHECK_EQ(r, sticky);
    } else if (!bad_list && !bad_name && !bad_utf8 && !no_room) {
        FZ_CHECK_EQ(r, 0);
    } else {
        FZ_CHECK((bad_list && r == IMP_ERR_BAD_LIST) || (bad_name && r == IMP_ERR_BAD_NAME) ||
                 (bad_utf8 && r == IMP_ERR_BAD_UTF8) || (no_room && r == IMP_ERR_BUFFER));
    }
    FZ_CHECK_EQ(b->err, r ? r : 0);
    if (r) { /* nothing changes */
        FZ_CHECK_EQ(b->len, len0);
        FZ_CHECK_EQ(b->count, count0);
    } else {
        FZ_CHECK_EQ(b->len, len0 + entry_size(kind, e));
        FZ_CHECK_EQ(b->count, count0 + 1);
    }
    return r;
}

/* Decode a frame that carries the list, and compare with the reference verdict. */
static void check_decode(int kind, const uint8_t *list, size_t len)
{
    uint8_t *frame = malloc(12 + 7 + 6 + 6 + len);
    if (!frame)
        abort();
    size_t o = 12;
    unsigned type, tag;
    if (kind == IMP_K_HEADERS) { /* SEND, broadcast, HEADERS, empty BODY */
        type = IMP_SEND;
        tag = IMP_T_HEADERS;
        fz_put16(frame + o, IMP_T_TARGET_KIND);
        fz_put32(frame + o + 2, 1);
        frame[o + 6] = IMP_TARGET_BROADCAST;
        o += 7;
    } else {
        type = kind == IMP_K_NAMES ? IMP_ROOM_LIST : IMP_STATS_REPLY;
        tag = kind == IMP_K_NAMES ? IMP_T_NAMES : IMP_T_STATS;
    }
    fz_put16(frame + o, tag);
    fz_put32(frame + o + 2, (uint32_t)len);
    if (len)
        memcpy(frame + o + 6, list, len);
    o += 6 + len;
    if (kind == IMP_K_HEADERS) {
        fz_put16(frame + o, IMP_T_BODY);
        fz_put32(frame + o + 2, 0);
        o += 6;
    }
    imp_frame_header_write(frame, (uint8_t)type, (uint32_t)(o - 12), 9);
    imp_frame f;
    FZ_CHECK_EQ(imp_frame_parse(frame, o, 0, &f, NULL), (imp_ssize)o);
    imp_msg m;
    int e = fz_decode_checked(&f, &m);
    size_t max = kind == IMP_K_HEADERS ? 16384 : 65536;
    if (len > max)
        FZ_CHECK_EQ(e, IMP_ERR_FIELD_LENGTH);
    else
        FZ_CHECK_EQ(e, ref_list_valid(kind, list, len, NULL) ? 0 : IMP_ERR_BAD_LIST);
    if (e == 0) {
        imp_bytes v = imp_msg_b(&m, tag);
        FZ_CHECK_EQ(v.len, len);
        FZ_CHECK(len == 0 || memcmp(v.p, list, len) == 0);
    }
    free(frame);
}

static void list_mode(int kind, const uint8_t *data, size_t size)
{
    uint8_t *list = malloc(size ? size : 1); /* exact size */
    if (!list)
        abort();
    if (size)
        memcpy(list, data, size);
    imp_bytes rest = {size ? list : NULL, size};
    entry e;
    size_t n = 0;
    int r;
    while ((r = step(kind, &rest, &e)) > 0)
        n++;
    int whole = r == 0;
    FZ_CHECK_EQ(whole, ref_list_whole(kind, list, size));
    check_decode(kind, list, size);
    if (!whole) {
        free(list);
        return;
    }

    /* rebuild through the builders into a buffer of exactly the list's size */
    size_t count = 0;
    int valid = ref_list_valid(kind, list, size, &count);
    FZ_CHECK_EQ(count, n);
    entry *acc = malloc((n ? n : 1) * sizeof *acc);
    uint8_t *out = malloc(size ? size : 1);
    if (!acc || !out)
        abort();
    imp_builder b;
    imp_builder_init(&b, out, size);
    FZ_CHECK(b.len == 0 && b.count == 0 && b.err == 0);
    imp_bytes it = {size ? list : NULL, size};
    size_t k = 0;
    int err = 0;
    while (step(kind, &it, &e) > 0) {
        err = add_checked(kind, &b, &e, acc, k);
        if (err)
            break;
        acc[k++] = e;
    }
    FZ_CHECK_EQ(valid, err == 0);
    if (err == 0) {
        FZ_CHECK_EQ(b.len, size);
        FZ_CHECK_EQ(b.count, n);
        FZ_CHECK(size == 0 || memcmp(out, list, size) == 0);
        /* full: one more valid entry does not fit (or is past the entry limit) */
        entry more = {{(const uint8_t *)"z", 1}, {NULL, 0}, 7};
        if (kind == IMP_K_HEADERS) {
            static const char key[] = "Zz-some-key";
            more.a.p = (const uint8_t *)key;
            more.a.len = sizeof key - 1;
        }
        (void)add_checked(kind, &b, &more, acc, k);
        FZ_CHECK(b.err == IMP_ERR_BUFFER || b.err == IMP_ERR_BAD_LIST);
    } else { /* sticky: a valid entry now fails with the same error */
        entry good = {{(const uint8_t *)"ok", 2}, {NULL, 0}, 1};
        (void)add_checked(kind, &b, &good, acc, k);
    }
    free(acc);
    free(out);
    free(list);
}

static void builder_mode(const uint8_t *data, size_t size)
{
    fz_src s = {data, size};
    int ki = (int)(fz_byte(&s, 0) % 3);
    int kind = kinds[ki];
    size_t cap = (size_t)fz_byte(&s, 0) << 8;
    cap |= fz_byte(&s, 0);
    uint8_t *buf = malloc(cap ? cap : 1);
    entry *acc = malloc(1100 * sizeof *acc);
    if (!buf || !acc)
        abort();
    imp_builder b;
    imp_builder_init(&b, buf, cap);
    size_t n = 0, calls = 0;
    entry last;
    int have_last = 0;
    /* entries are views into the input; values of stats come from it too */
    while (s.n > 0 && n < 1100) {
        unsigned op = fz_byte(&s, 0);
        entry e;
        memset(&e, 0, sizeof e);
        unsigned reps = 1;
        if (op >= 0xF0) {
            if (!have_last)
                continue;
            e = last;
            reps = ((unsigned)fz_byte(&s, 0) << 2) + 1; /* reach the entry limits */
        } else {
            size_t alen = op % (kind == IMP_K_NAMES ? 40 : 70);
            const uint8_t *p;
            e.a.len = fz_take(&s, alen, &p);
            e.a.p = p;
            if (kind == IMP_K_HEADERS) {
                size_t vlen = fz_byte(&s, 0);
                if (vlen == 255)
                    vlen = 1020 + fz_byte(&s, 0) % 10;
                e.b.len = fz_take(&s, vlen, &p);
                e.b.p = p;
            } else if (kind == IMP_K_STATS) {
                for (int i = 0; i < 8; i++)
                    e.v = e.v << 8 | fz_byte(&s, 0);
            }
            last = e;
            have_last = 1;
        }
        /* once the builder has failed, one more add shows the error is sticky */
        for (unsigned i = 0; i < reps && n < 1100 && calls < 4096; i++, calls++) {
            if (add_checked(kind, &b, &e, acc, n) != 0)
                break;
            acc[n++] = e;
        }
    }
    FZ_CHECK(b.len <= cap);
    FZ_CHECK_EQ(b.count, n);
    /* what the builder made is a valid list of exactly the accepted entries */
    size_t count = 0;
    FZ_CHECK(ref_list_valid(kind, buf, b.len, &count));
    FZ_CHECK_EQ(count, n);
    imp_bytes it = {b.len ? buf : NULL, b.len};
    entry e;
    for (size_t i = 0; i < n; i++) {
        FZ_CHECK_EQ(step(kind, &it, &e), 1);
        FZ_CHECK(e.a.len == acc[i].a.len &&
                 (e.a.len == 0 || memcmp(e.a.p, acc[i].a.p, e.a.len) == 0));
        FZ_CHECK(e.b.len == acc[i].b.len &&
                 (e.b.len == 0 || memcmp(e.b.p, acc[i].b.p, e.b.len) == 0));
        FZ_CHECK(e.v == acc[i].v);
    }
    FZ_CHECK_EQ(step(kind, &it, &e), 0);
    check_decode(kind, buf, b.len);
    free(acc);
    free(buf);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    unsigned mode = data[0] % 4;
    if (mode < 3)
        list_mode(kinds[mode], data + 1, size - 1);
    else
        builder_mode(data + 1, size - 1);
    return 0;
}
