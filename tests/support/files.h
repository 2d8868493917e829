/* Test support: small file helpers shared by the unit tests (cmocka asserts on failure). */
#ifndef IMP_TEST_FILES_H
#define IMP_TEST_FILES_H

#include <stddef.h>
#include <stdint.h>

/* Removes the files of a flat directory, then the directory (missing: nothing). */
void tf_rm_tree(const char *dir);
/* A whole file (malloc'd, one spare byte; the caller frees); fails the test when unreadable. */
uint8_t *tf_slurp(const char *path, size_t *len);
/* Writes n bytes as the whole file; fails the test on error. */
void tf_spit(const char *path, const uint8_t *b, size_t n);

#endif
