/* Fuzz target: decode -> encode -> decode round trips, and build -> encode -> decode.
 *
 * Requirements checked:
 *   IMP-FIELD-003, IMP-FIELD-008  encoding is canonical: re-encoding a decoded frame gives the
 *                 input frame exactly when it has no unknown fields, and the input minus its
 *                 unknown fields otherwise; encode(decode(encode(m))) == encode(m)
 *   IMP-FIELD-004  unknown non-critical fields are dropped, never re-encoded
 *   IMP-FIELD-005..010, IMP-MSG-002..004, 006..009  imp_msg_validate (and so encode and
 *                 encoded_size) agree with the reference rules on messages built from the input,
 *                 and what they accept decodes back to the same message
 * and the documented error returns: IMP_ERR_BUFFER for a buffer one byte short, IMP_ERR_INVAL
 * for a field the type does not define, encoded_size == encode's size.
 *
 * Input: if byte 0 is 1 (the version byte of a frame), the input is a frame (seeds are plain
 * frames). Otherwise the input describes a message: byte 1 picks the type, bytes 2-5 the request
 * id, then operations "set field", "clear field", "set a raw present bit".
 */
#include "fuzz_ref.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Encode m (which must be valid), and check the round trip. Returns the encoding (malloc'd). */
static uint8_t *encode_checked(const imp_msg *m, size_t *len)
{
    imp_ssize n = imp_msg_encoded_size(m);
    FZ_CHECK(n >= 12);
    uint8_t *buf = malloc((size_t)n);
    if (!buf)
        abort();
    FZ_CHECK_EQ(imp_msg_encode(m, buf, (size_t)n), n);
    /* one byte short: IMP_ERR_BUFFER and no write past cap (ASan checks the heap copy) */
    uint8_t *small = malloc((size_t)n - 1);
    if (!small)
        abort();
    FZ_CHECK_EQ(imp_msg_encode(m, small, (size_t)n - 1), IMP_ERR_BUFFER);
    free(small);

    imp_frame f;
    size_t need;
    FZ_CHECK_EQ(imp_frame_parse(buf, (size_t)n, 0, &f, &need), n);
    imp_msg m2;
    FZ_CHECK_EQ(fz_decode_checked(&f, &m2), 0);
    FZ_CHECK(fz_msg_equal(m, &m2));
    /* and again: byte for byte the same */
    uint8_t *again = malloc((size_t)n);
    if (!again)
        abort();
    FZ_CHECK_EQ(imp_msg_encode(&m2, again, (size_t)n), n);
    FZ_CHECK(memcmp(buf, again, (size_t)n) == 0);
    free(again);
    *len = (size_t)n;
    return buf;
}

/* The frame f without its unknown fields (the canonical re-encoding). */
static uint8_t *strip_unknown(const uint8_t *frame, const imp_frame *f, size_t *len)
{
    const ref_type *ti = ref_type_info(f->type);
    uint64_t allowed = ti->req | ti->opt;
    uint8_t *out = malloc(12 + (size_t)f->length);
    if (!out)
        abort();
    memcpy(out, frame, 12);
    size_t o = 12, off = 0;
    while (off < f->length) {
        unsigned tag = fz_be16(f->payload + off);
        size_t flen = fz_be32(f->payload + off + 2);
        if (tag <= 45 && (allowed & FZ_B(tag))) {
            memcpy(out + o, f->payload + off, 6 + flen);
            o += 6 + flen;
        }
        off += 6 + flen;
    }
    fz_put32(out + 4, (uint32_t)(o - 12));
    *len = o;
    return out;
}

static void frame_mode(const uint8_t *data, size_t size)
{
    imp_frame f;
    imp_ssize r = imp_frame_parse(data, size, 0, &f, NULL);
    if (r <= 0)
        return;
    uint8_t *frame = malloc((size_t)r); /* exact size: over-reads are caught */
    if (!frame)
        abort();
    memcpy(frame, data, (size_t)r);
    f.payload = frame + 12;
    imp_msg m;
    if (fz_decode_checked(&f, &m) == 0) {
        ref_msg rm;
        int alt;
        FZ_CHECK_EQ(ref_decode(f.type, f.payload, f.length, &rm, &alt), 0);
        size_t n;
        uint8_t *enc = encode_checked(&m, &n);
        if (!rm.unknown) { /* canonical input: the same bytes */
            FZ_CHECK_EQ(n, (size_t)r);
            FZ_CHECK(memcmp(enc, frame, n) == 0);
        } else {
            size_t sn;
            uint8_t *stripped = strip_unknown(frame, &f, &sn);
            FZ_CHECK_EQ(n, sn);
            FZ_CHECK(memcmp(enc, stripped, n) == 0);
            free(stripped);
        }
        free(enc);
    }
    free(frame);
}

/* What imp_msg_validate must return for a built message (reference rules). alt: a second
 * acceptable answer where the spec leaves the order open. */
static int ref_validate(const imp_msg *m, int *alt)
{
    *alt = 0;
    const ref_type *ti = ref_type_info(m->type);
    if (!ti)
        return IMP_ERR_UNKNOWN_TYPE;
    if (m->present & ~(ti->req | ti->opt))
        return IMP_ERR_INVAL; /* msg.h: a field the type does not define */
    ref_msg rm;
    memset(&rm, 0, sizeof rm);
    for (unsigned t = 1; t <= 45; t++) {
        if (!(m->present & FZ_B(t)))
            continue;
        ref_tag info = ref_tag_info(t);
        unsigned w = ref_int_width(info.kind);
        int e;
        if (w) {
            uint64_t v = m->v[t].u;
            uint8_t b[8];
            if (w < 8 && v >> (8 * w))
                return IMP_ERR_BAD_VALUE; /* does not fit its fixed length */
            for (unsigned i = 0; i < w; i++)
                b[i] = (uint8_t)(v >> (8 * (w - 1 - i)));
            e = ref_field_check(t, b, w, &rm.u[t]);
        } else {
            e = ref_field_check(t, m->v[t].b.p, m->v[t].b.len, &rm.u[t]);
        }
        if (e)
            return e;
        if (t == 2 && rm.u[2] == 0)
            *alt = IMP_ERR_BAD_VALUE;
        if (t == 7 && rm.u[7] > 16777216u)
            *alt = IMP_ERR_BAD_VALUE;
        rm.present |= FZ_B(t);
    }
    int e = ref_cross_check(m->type, &rm);
    if (!e)
        *alt = 0;
    return e;
}

static void build_mode(const uint8_t *data, size_t size)
{
    fz_src s = {data, size};
    imp_msg m;
    memset(&m, 0, sizeof m);
    imp_msg_init(&m, imp_type_at(fz_byte(&s, 0) % IMP_TYPE_COUNT), fz_u32(&s));
    FZ_CHECK(imp_type_known(m.type));
    while (s.n > 0) {
        unsigned op = fz_byte(&s, 0);
        if (op >= 0xF8) { /* a raw present bit: tag 0 or beyond the table */
            unsigned bit = fz_byte(&s, 0) & 63;
            if (bit == 0 || bit > 45)
                m.present |= UINT64_C(1) << bit;
            continue;
        }
        if (op >= 0xF0) {
            imp_msg_clear(&m, 1 + fz_byte(&s, 0) % 45);
            continue;
        }
        unsigned tag = 1 + op % 45;
        unsigned w = ref_int_width(ref_tag_info(tag).kind);
        if (w) {
            unsigned mode = fz_byte(&s, 0);
            uint64_t v = 0;
            if (mode < 0x80) {
                v = mode; /* small values are the interesting ones */
            } else {
                for (int i = 0; i < 8; i++)
                    v = v << 8 | fz_byte(&s, 0);
                if (mode < 0xC0 && w < 8) /* mostly in range of the width */
                    v &= (UINT64_C(1) << (8 * w)) - 1;
            }
            imp_msg_set_u(&m, tag, v);
        } else {
            size_t len = fz_byte(&s, 0);
            if (len == 255)
                len = 255 + ((size_t)fz_byte(&s, 0) << 8 | fz_byte(&s, 0));
            const uint8_t *p;
            len = fz_take(&s, len, &p);
            imp_msg_set_b(&m, tag, len ? p : NULL, len);
        }
    }
    int alt;
    int want = ref_validate(&m, &alt);
    int got = imp_msg_validate(&m);
    if (got != want && !(alt && got == alt)) {
        fprintf(stderr, "validate type 0x%02x: library %d, reference %d\n", m.type, got, want);
        fz_fail(__FILE__, __LINE__, "imp_msg_validate agrees with the reference");
    }
    imp_ssize n = imp_msg_encoded_size(&m);
    if (got) {
        uint8_t buf[64];
        FZ_CHECK_EQ(n, got);
        FZ_CHECK_EQ(imp_msg_encode(&m, buf, sizeof buf), got);
        return;
    }
    size_t len;
    free(encode_checked(&m, &len));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    if (data[0] == 1)
        frame_mode(data, size);
    else
        build_mode(data + 1, size - 1);
    return 0;
}
