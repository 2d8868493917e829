/* Private: big-endian integer access and internal table lookups shared by the codec files. */
#ifndef IMP_WIRE_H
#define IMP_WIRE_H

#include <stdint.h>

static inline uint16_t imp_get16(const uint8_t *p)
{
    return (uint16_t)((unsigned)p[0] << 8 | p[1]);
}
static inline uint32_t imp_get32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static inline uint64_t imp_get64(const uint8_t *p)
{
    return (uint64_t)imp_get32(p) << 32 | imp_get32(p + 4);
}
static inline void imp_put16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}
static inline void imp_put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}
static inline void imp_put64(uint8_t *p, uint64_t v)
{
    imp_put32(p, (uint32_t)(v >> 32));
    imp_put32(p + 4, (uint32_t)v);
}

/* The index of the lowest set bit of x, which must not be 0: the codec's loops visit only the
 * fields present in a message's mask (issue 3), lowest tag first, as the wire order wants.
 * imp_low_bit_portable is the fallback for compilers without __builtin_ctzll (test_frame.c
 * compares the two). */
static inline unsigned imp_low_bit_portable(uint64_t x)
{
    unsigned n = 0;
    if (!(x & 0xFFFFFFFFu)) {
        x >>= 32;
        n += 32;
    }
    if (!(x & 0xFFFFu)) {
        x >>= 16;
        n += 16;
    }
    if (!(x & 0xFFu)) {
        x >>= 8;
        n += 8;
    }
    if (!(x & 0xFu)) {
        x >>= 4;
        n += 4;
    }
    if (!(x & 0x3u)) {
        x >>= 2;
        n += 2;
    }
    return n + (unsigned)!(x & 1u);
}

static inline unsigned imp_low_bit(uint64_t x)
{
#ifdef __GNUC__
    return (unsigned)__builtin_ctzll(x);
#else
    return imp_low_bit_portable(x);
#endif
}

/* Index of a type in the type table, -1 if unknown (frame.c). */
int imp_type_index(unsigned type);

#endif
