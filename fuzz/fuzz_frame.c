/* Fuzz target: the frame header parser (imp_frame_parse) and the payload decoder
 * (imp_msg_decode), compared with the reference model of fuzz_ref.h.
 *
 * Requirements checked:
 *   IMP-FRAME-001  frame = 12-byte header + payload; the returned size is 12 + length and the
 *                  payload view is exactly the bytes after the header, inside the input
 *   IMP-FRAME-002..004  version, type and flags errors
 *   IMP-FRAME-005  the limit (from the input's first bytes) is checked on the header alone,
 *                  a frame of exactly the limit is accepted; 0 and values above 16 MiB mean 16 MiB
 *   IMP-FRAME-006  checks in the order version, type, flags, length
 *   IMP-LIB-002    decoded views point into the payload; the parser never allocates
 *   IMP-FIELD-001..010, IMP-TEXT-001..002, IMP-MSG-002..004, 006..009  every decode result and
 *                  every decoded field equals the reference decoder's
 * and, for incomplete input, that *need is exact and > 0 (a streaming reader can wait for
 * exactly that many bytes), and that every proper prefix of a frame is incomplete.
 *
 * Input: byte 0 selects the limit (bits 0-2; 7 = the next 4 bytes, big-endian, are the limit),
 * the rest is a stream of frames, parsed one after another until an error or the end.
 */
#include "fuzz_ref.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static size_t pick_limit(fz_src *s)
{
    unsigned b = fz_byte(s, 0);
    switch (b & 7) {
    case 0:
        return 0; /* the hard limit */
    case 1:
        return 12 + (b >> 3); /* tiny: 12..43 */
    case 2:
        return 1024;
    case 3:
        return 4096;
    case 4:
        return 65536;
    case 5:
        return 16777216;
    case 6:
        return 16777217 + ((size_t)b << 8); /* above the hard limit: means the hard limit */
    default:
        return fz_u32(s);
    }
}

/* Parse a proper prefix of a frame: must be "incomplete" with the exact number missing. */
static void check_prefix(const uint8_t *p, size_t k, size_t limit, size_t total)
{
    imp_frame f;
    size_t need = 0;
    FZ_CHECK_EQ(imp_frame_parse(p, k, limit, &f, &need), 0);
    FZ_CHECK_EQ(need, k < 12 ? 12 - k : total - k);
}

static void check_frame(const uint8_t *p, size_t n, size_t limit, const imp_frame *f, imp_ssize r)
{
    size_t eff = limit == 0 || limit > 16777216u ? 16777216u : limit;
    FZ_CHECK((size_t)r <= n);
    FZ_CHECK((size_t)r <= eff);
    FZ_CHECK_EQ(f->version, 1);
    FZ_CHECK_EQ(f->type, p[1]);
    FZ_CHECK_EQ(f->flags, 0);
    FZ_CHECK_EQ(f->length, fz_be32(p + 4));
    FZ_CHECK_EQ((size_t)r, 12 + (size_t)f->length);
    FZ_CHECK_EQ(f->request_id, fz_be32(p + 8));
    FZ_CHECK(f->payload == p + 12); /* a view, inside the input */
    FZ_CHECK(imp_type_known(f->type) && imp_type_name(f->type) != NULL);

    /* every proper prefix is incomplete; try the interesting ones */
    check_prefix(p, 0, limit, (size_t)r);
    check_prefix(p, 11, limit, (size_t)r);
    if (r > 12)
        check_prefix(p, 12, limit, (size_t)r);
    check_prefix(p, (size_t)r - 1, limit, (size_t)r);
    /* need is optional */
    imp_frame g;
    FZ_CHECK_EQ(imp_frame_parse(p, (size_t)r - 1, limit, &g, NULL), 0);

    /* Decode from an exact-size heap copy: reading past the payload is caught by ASan even
     * when more frames follow in the input. */
    uint8_t *copy = malloc(f->length ? f->length : 1);
    if (!copy)
        abort();
    if (f->length)
        memcpy(copy, f->payload, f->length);
    g = *f;
    g.payload = copy;
    imp_msg m, m2;
    int e = fz_decode_checked(&g, &m);
    /* deterministic, and the payload is only read */
    FZ_CHECK_EQ(imp_msg_decode(&g, &m2), e);
    FZ_CHECK(f->length == 0 || memcmp(copy, f->payload, f->length) == 0);
    if (e == 0)
        FZ_CHECK(fz_msg_equal(&m, &m2));
    free(copy);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fz_src s = {data, size};
    size_t limit = pick_limit(&s);
    const uint8_t *p = s.p;
    size_t n = s.n;
    int frames = 0;
    while (frames < 4096) {
        imp_frame f;
        size_t need = 0, ref_need = 0;
        long long want = ref_frame(p, n, limit, &ref_need);
        imp_ssize r = imp_frame_parse(n ? p : NULL, n, limit, &f, &need);
        FZ_CHECK_EQ(r, want);
        if (r == 0) { /* incomplete: need is exact */
            FZ_CHECK(need > 0);
            FZ_CHECK_EQ(need, ref_need);
            break;
        }
        if (r < 0)
            break;
        check_frame(p, n, limit, &f, r);
        p += r;
        n -= (size_t)r;
        frames++;
    }
    /* Whatever is left, decoded as a payload of the type its second byte names (unknown
     * types included: IMP_ERR_UNKNOWN_TYPE). */
    if (n >= 2) {
        uint8_t *copy = malloc(n - 2 ? n - 2 : 1);
        if (!copy)
            abort();
        memcpy(copy, p + 2, n - 2);
        imp_frame g = {1, p[1], 0, (uint32_t)(n - 2), p[0], copy};
        imp_msg m;
        (void)fz_decode_checked(&g, &m);
        free(copy);
    }
    return 0;
}
