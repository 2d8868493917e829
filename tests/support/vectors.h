/* Test support: the test-vector format of the files tests/vectors/NAME.txt (see
 * tests/vectors/README.md).
 *
 * One vector per line, '|'-separated columns, '#' comments and blank lines ignored:
 *     name | context | hex | expect | fields
 * The loader parses files into vec structs; vec_run() feeds a vector to the library with a given
 * chunking (each chunk copied into a guard-page buffer) and reports what happened;
 * vec_check_fields() compares a decoded message with the vector's field checks.
 *
 * Used by tests/protocol/test_vectors.c, and meant for reuse by the server conformance tests and
 * the fuzz seed extraction (vec_load_dir + the bytes of each vector).
 */
#ifndef IMP_TEST_VECTORS_H
#define IMP_TEST_VECTORS_H

#include <stddef.h>
#include <stdint.h>

#include "imp/imp.h"

#define VEC_NAME_MAX 80

typedef enum vec_ctx {
    VEC_CTX_FRAME = 1, /* imp_frame_parse with a limit, then imp_msg_decode */
    VEC_CTX_CONN = 2   /* a connection of a role driven to a state, then fed the bytes */
} vec_ctx;

typedef enum vec_kind {
    VEC_OK = 1,   /* a frame (event) of a type was produced */
    VEC_NEED = 2, /* nothing yet: no event and no error */
    VEC_ERR = 3   /* an error */
} vec_kind;

/* One field check: TAG=value. tag 0 is REQ (the request id). */
typedef struct vec_field {
    unsigned tag;
    int absent;     /* TAG=absent: the field must not be present */
    int is_bytes;   /* value given as x:HEX */
    uint64_t u;     /* decimal value */
    uint8_t *bytes; /* x: value (malloc'd; NULL when empty) */
    size_t len;
} vec_field;

typedef struct vec {
    char name[VEC_NAME_MAX + 1];
    const char *file; /* base name of the file it came from (owned by the set) */
    unsigned line;
    vec_ctx ctx;
    size_t limit;    /* VEC_CTX_FRAME: max_frame argument of imp_frame_parse */
    imp_role role;   /* VEC_CTX_CONN */
    imp_state state; /* VEC_CTX_CONN */
    uint8_t *bytes;  /* the input (malloc'd; NULL when empty) */
    size_t len;
    vec_kind expect;
    uint8_t type; /* VEC_OK: the frame type */
    int err;      /* VEC_ERR: the negative IMP_ERR_* code */
    vec_field *fields;
    size_t nfields;
} vec;

typedef struct vec_set {
    vec *v;
    size_t n, cap;
    char **files; /* file base names, referenced by vec.file */
    size_t nfiles;
} vec_set;

void vec_set_init(vec_set *s);
void vec_set_free(vec_set *s);

/* Append the vectors of one file. Returns the number of vectors read, or -1 with a message
 * ("file:line: why") in err. Names must be unique within the set. */
long vec_load_file(vec_set *s, const char *path, char *err, size_t errlen);
/* Load every *.txt of a directory in name order. Returns the number of vectors or -1. */
long vec_load_dir(vec_set *s, const char *dir, char *err, size_t errlen);

/* Parse a single vector line (without the newline). Returns 1 with *v filled, 0 for a comment
 * or blank line, -1 with a message in err. *v must be released with vec_clear(). */
int vec_parse_line(const char *line, vec *v, char *err, size_t errlen);
void vec_clear(vec *v);

/* What happened when a vector was run. */
typedef struct vec_outcome {
    vec_kind kind;
    uint8_t type;     /* VEC_OK */
    int err;          /* VEC_ERR */
    int fields_ok;    /* VEC_OK: 1 if vec_check_fields passed (always 1 otherwise) */
    int harness_ok;   /* 0 when an invariant failed on the way (an inexact *need, a wrong
                         frame size, a connection that could not be driven to its state...) */
    char detail[256]; /* why fields_ok or harness_ok is 0 */
} vec_outcome;

/* Run v with its input split into chunks of the given sizes (their sum must be v->len; a
 * nchunks of 0 means one chunk with the whole input). Every chunk is copied into a guard-page
 * buffer before the library sees it. For VEC_CTX_FRAME the chunks are accumulated, as a
 * streaming reader would, and imp_frame_parse runs on the accumulated bytes (also placed at a
 * guard page) after each chunk; *need is checked to be exact. For VEC_CTX_CONN each chunk is
 * fed with imp_conn_feed and the next event taken after it. Returns 0, or -1 if the harness
 * itself failed (see out->detail). */
int vec_run(const vec *v, const size_t *chunks, size_t nchunks, vec_outcome *out);

/* 1 if m passes every field check of v, else 0 with a reason in why. */
int vec_check_fields(const vec *v, const imp_msg *m, char *why, size_t whylen);

/* 1 if the outcome is what the vector expects (kind, type or error, fields, harness). */
int vec_outcome_matches(const vec *v, const vec_outcome *o);
/* 1 if two outcomes are the same (kind, type, error, fields_ok). */
int vec_outcome_equal(const vec_outcome *a, const vec_outcome *b);

/* "ok:SEND", "need", "FRAME_TOO_LARGE" (into buf). */
const char *vec_expect_str(const vec *v, char *buf, size_t len);
const char *vec_outcome_str(const vec_outcome *o, char *buf, size_t len);

/* Name lookups used by the loader: error name without prefix -> negative code (0 if unknown),
 * frame type name -> type (0 if unknown), state name -> state (-1 if unknown). */
int vec_err_code(const char *name);
unsigned vec_type_code(const char *name);
int vec_state_code(const char *name);

/* Create a connection of a role and drive it to a state with valid frames, using the library
 * (imp_msg_encode, imp_conn_feed, imp_conn_send). NULL with a reason in why on failure. */
imp_conn *vec_conn_at(imp_role role, imp_state state, char *why, size_t whylen);

#endif
