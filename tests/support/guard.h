/* Test support: buffers that end exactly at an inaccessible page.
 *
 * As picohttpparser's tests do, every input handed to a parser is copied so that its last byte
 * is immediately followed by a PROT_NONE page: reading even one byte past the end crashes the
 * test (SIGSEGV) instead of silently reading whatever follows in the heap.
 *
 *     uint8_t *p = guard_copy(data, len);   // p[len] is unmapped
 *     imp_frame_parse(p, len, ...);
 *     guard_free(p, len);
 *
 * For many inputs in a row, a guard_buf reuses one mapping: guard_buf_place() copies the data to
 * the end of its readable region (growing the mapping when needed). Pointers returned by
 * guard_buf_place stay valid until the next place or guard_buf_free.
 */
#ifndef IMP_TEST_GUARD_H
#define IMP_TEST_GUARD_H

#include <stddef.h>
#include <stdint.h>

/* A one-shot copy of data[0..len) ending at a PROT_NONE page (len may be 0: the returned pointer
 * is then the start of the guard page itself). Aborts the process when the mapping fails. */
uint8_t *guard_copy(const void *data, size_t len);
/* Release a guard_copy() result; len must be the length it was made with. NULL is ignored. */
void guard_free(uint8_t *p, size_t len);

typedef struct guard_buf {
    uint8_t *base;   /* start of the mapping */
    size_t readable; /* bytes of readable pages; the guard page follows */
} guard_buf;

/* An empty buffer (no mapping until the first place). */
void guard_buf_init(guard_buf *g);
/* Copy data[0..len) so that it ends right before the guard page; returns where it starts. */
uint8_t *guard_buf_place(guard_buf *g, const void *data, size_t len);
void guard_buf_free(guard_buf *g);

/* The system page size. */
size_t guard_page_size(void);

#endif
