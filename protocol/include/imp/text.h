/* libimp — UTF-8 text and names (SPEC.md section 4). */
#ifndef IMP_TEXT_H
#define IMP_TEXT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* 1 if p[0..len) is well-formed UTF-8 without U+0000 (IMP-TEXT-001), else 0. */
int imp_utf8_valid(const uint8_t *p, size_t len);

/* 1 if p[0..len) is a valid name (IMP-TEXT-002), else 0. */
int imp_name_valid(const uint8_t *p, size_t len);

/* Fold a name to its canonical lower-case form (IMP-TEXT-003): out receives len bytes
 * (out may equal p). Does not validate. */
void imp_name_fold(const uint8_t *p, size_t len, uint8_t *out);

/* 1 if two names are equal after folding, else 0. */
int imp_name_equal(const uint8_t *a, size_t alen, const uint8_t *b, size_t blen);

#ifdef __cplusplus
}
#endif
#endif
