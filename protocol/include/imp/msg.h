/* libimp — payload fields and per-type message codec (SPEC.md sections 3 and 5).
 *
 * An imp_msg is a frame type, a request id and a set of fields indexed by tag. Decoding never
 * allocates: byte, text, name and list values are views into the frame's payload. Encoding
 * writes a whole frame (header and payload) into a caller's buffer.
 *
 *     imp_msg m;
 *     imp_msg_init(&m, IMP_SEND, 7);
 *     imp_msg_set_u(&m, IMP_T_TARGET_KIND, IMP_TARGET_USER);
 *     imp_msg_set_s(&m, IMP_T_TARGET, "bob");
 *     imp_msg_set_b(&m, IMP_T_BODY, "hi", 2);
 *     imp_ssize n = imp_msg_encode(&m, buf, sizeof buf); // 36 bytes, or < 0
 */
#ifndef IMP_MSG_H
#define IMP_MSG_H

#include <stddef.h>
#include <stdint.h>

#include "errors.h"
#include "frame.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Field tags (SPEC.md table 3.1). */
enum imp_tag {
    IMP_T_VERSION_MIN = 1,
    IMP_T_VERSION_MAX = 2,
    IMP_T_VERSION = 3,
    IMP_T_AGENT = 4,
    IMP_T_CAPS = 5,
    IMP_T_MAX_FRAME = 6,
    IMP_T_MAX_FRAME_PREAUTH = 7,
    IMP_T_PING_INTERVAL = 8,
    IMP_T_AUTH_TIMEOUT = 9,
    IMP_T_SERVER_TIME = 10,
    IMP_T_USER = 11,
    IMP_T_PASSWORD = 12,
    IMP_T_TOKEN = 13,
    IMP_T_SESSION_ID = 14,
    IMP_T_LAST_SEQ = 15,
    IMP_T_ADMIN = 16,
    IMP_T_TARGET_KIND = 17,
    IMP_T_TARGET = 18,
    IMP_T_CLIENT_MSG_ID = 19,
    IMP_T_CLASS = 20,
    IMP_T_ACK_MODE = 21,
    IMP_T_HEADERS = 22,
    IMP_T_BODY = 23,
    IMP_T_MSG_ID = 24,
    IMP_T_OUTCOME = 25,
    IMP_T_CODE = 26,
    IMP_T_TEXT = 27,
    IMP_T_DUPLICATE = 28,
    IMP_T_RETRY_AFTER = 29,
    IMP_T_SEQ = 30,
    IMP_T_SENDER = 31,
    IMP_T_TIMESTAMP = 32,
    IMP_T_ROOM = 33,
    IMP_T_NAMES = 34,
    IMP_T_LIMIT = 35,
    IMP_T_CURSOR = 36,
    IMP_T_BEFORE_ID = 37,
    IMP_T_MORE = 38,
    IMP_T_STATUS = 39,
    IMP_T_STATUS_TEXT = 40,
    IMP_T_SESSIONS = 41,
    IMP_T_ENABLE = 42,
    IMP_T_STATS = 43,
    IMP_T_EVENT = 44,
    IMP_T_COUNT = 45
};
#define IMP_TAG_MAX 45           /* highest defined tag */
#define IMP_TAG_CRITICAL 0x8000u /* IMP-FIELD-004 */

/* Field kinds. */
typedef enum imp_kind {
    IMP_K_U16 = 1,
    IMP_K_U32,
    IMP_K_U64,
    IMP_K_BOOL,
    IMP_K_ENUM,
    IMP_K_TEXT,
    IMP_K_NAME,
    IMP_K_BYTES,
    IMP_K_NAMES,
    IMP_K_HEADERS,
    IMP_K_STATS
} imp_kind;

/* Enumerated values. */
enum { IMP_TARGET_USER = 1, IMP_TARGET_ROOM = 2, IMP_TARGET_BROADCAST = 3 };
enum { IMP_CLASS_DURABLE = 0, IMP_CLASS_TRANSIENT = 1 };
enum { IMP_ACK_NONE = 0, IMP_ACK_STORED = 1, IMP_ACK_DELIVERED = 2 };
enum { IMP_OUTCOME_STORED = 1, IMP_OUTCOME_DELIVERED = 2, IMP_OUTCOME_REFUSED = 3 };
enum { IMP_STATUS_OFFLINE = 0, IMP_STATUS_ONLINE = 1, IMP_STATUS_AWAY = 2, IMP_STATUS_BUSY = 3 };

/* List limits (IMP-FIELD-009). */
#define IMP_NAME_MAX 32
#define IMP_LIST_MAX_NAMES 1000
#define IMP_LIST_MAX_HEADERS 32
#define IMP_LIST_MAX_STATS 1000
#define IMP_HEADER_KEY_MAX 64
#define IMP_HEADER_VALUE_MAX 1024
#define IMP_STAT_NAME_MAX 64

/* A view: len bytes at p (p may be NULL when len is 0). Never NUL-terminated. */
typedef struct imp_bytes {
    const uint8_t *p;
    size_t len;
} imp_bytes;

typedef union imp_value {
    uint64_t u;  /* integer kinds */
    imp_bytes b; /* text, name, bytes and list kinds */
} imp_value;

typedef struct imp_msg {
    uint8_t type;                 /* imp_type */
    uint32_t request_id;          /* IMP-FRAME-007 */
    uint64_t present;             /* bit t set: field with tag t is present */
    imp_value v[IMP_TAG_MAX + 1]; /* only entries whose bit is set are meaningful */
} imp_msg;

/* Static facts about tags and types. */
imp_kind imp_tag_kind(unsigned tag);    /* 0 for an undefined tag */
const char *imp_tag_name(unsigned tag); /* "BODY", NULL for an undefined tag */
/* Bit masks of the fields a type requires and allows (bit t = tag t); 0 for unknown types. */
uint64_t imp_type_required(unsigned type);
uint64_t imp_type_allowed(unsigned type);

/* Start an empty message. */
void imp_msg_init(imp_msg *m, uint8_t type, uint32_t request_id);
/* Set an integer field. */
void imp_msg_set_u(imp_msg *m, unsigned tag, uint64_t value);
/* Set a byte/text/name/list field to a view of len bytes at p (not copied: p must outlive m's
 * use). */
void imp_msg_set_b(imp_msg *m, unsigned tag, const void *p, size_t len);
/* Same with a NUL-terminated string (the NUL is not part of the value). */
void imp_msg_set_s(imp_msg *m, unsigned tag, const char *s);
/* (The setters ignore tags above IMP_TAG_MAX.) Remove a field. */
void imp_msg_clear(imp_msg *m, unsigned tag);

static inline int imp_msg_has(const imp_msg *m, unsigned tag)
{
    return tag <= IMP_TAG_MAX && ((m->present >> tag) & 1u);
}
/* Integer value, or dflt when absent. */
static inline uint64_t imp_msg_u(const imp_msg *m, unsigned tag, uint64_t dflt)
{
    return imp_msg_has(m, tag) ? m->v[tag].u : dflt;
}
/* View value; {NULL, 0} when absent. */
static inline imp_bytes imp_msg_b(const imp_msg *m, unsigned tag)
{
    imp_bytes none = {0, 0};
    return imp_msg_has(m, tag) ? m->v[tag].b : none;
}

/* Decode and validate the payload of a parsed frame into *m (type and request id included).
 * Returns 0 or the first error met, walking fields in order: IMP_ERR_TRUNCATED,
 * IMP_ERR_ZERO_TAG, IMP_ERR_FIELD_ORDER, IMP_ERR_DUPLICATE_FIELD, IMP_ERR_UNKNOWN_CRITICAL,
 * IMP_ERR_FIELD_LENGTH, IMP_ERR_BAD_VALUE, IMP_ERR_BAD_UTF8, IMP_ERR_BAD_NAME,
 * IMP_ERR_BAD_LIST (per field); then IMP_ERR_MISSING_FIELD, then the cross-field rules
 * (IMP_ERR_FIELD_CONFLICT, IMP_ERR_MISSING_FIELD, IMP_ERR_BAD_VALUE); IMP_ERR_UNKNOWN_TYPE for
 * a type IMP/1 does not define. Unknown non-critical fields are skipped. Views in *m point
 * into f->payload. Never allocates. */
int imp_msg_decode(const imp_frame *f, imp_msg *m);

/* Validate a message built by an application with the same rules as imp_msg_decode(). A field
 * present but not defined for the type gives IMP_ERR_INVAL (an encoder never sends unknown
 * fields). Returns 0 or an error. */
int imp_msg_validate(const imp_msg *m);

/* Size of the whole encoded frame (header included), or < 0 if m is invalid (as
 * imp_msg_validate) or the frame would exceed IMP_FRAME_MAX_HARD (IMP_ERR_TOO_LARGE). */
imp_ssize imp_msg_encoded_size(const imp_msg *m);

/* Encode m as a whole frame into buf. Returns the frame size, IMP_ERR_BUFFER when cap is too
 * small (nothing useful is written), or a validation error. Output is canonical:
 * IMP-FIELD-008. */
imp_ssize imp_msg_encode(const imp_msg *m, uint8_t *buf, size_t cap);

/* ---- lists (IMP-FIELD-009) ---------------------------------------------------------------
 * Iterators take the remaining list in *rest and advance it. They return 1 with an entry,
 * 0 at the end, or IMP_ERR_BAD_LIST (only for lists that were not validated by decode). */
int imp_names_next(imp_bytes *rest, imp_bytes *name);
int imp_headers_next(imp_bytes *rest, imp_bytes *key, imp_bytes *value);
int imp_stats_next(imp_bytes *rest, imp_bytes *name, uint64_t *value);

/* Builders append one entry to a list in a caller's buffer; use one builder per list. They
 * return 0, or an error that is also kept, sticky, in b->err (later adds fail with it and
 * change nothing): IMP_ERR_BUFFER when the entry does not fit; names_add: IMP_ERR_BAD_NAME;
 * headers_add: IMP_ERR_BAD_LIST for a bad or duplicate key or a value over 1024 bytes,
 * IMP_ERR_BAD_UTF8 for a value that is not text; stats_add: IMP_ERR_BAD_LIST for a bad name;
 * all: IMP_ERR_BAD_LIST past the entry limit. The list is b->buf[0..b->len). */
typedef struct imp_builder {
    uint8_t *buf;
    size_t cap;
    size_t len;
    unsigned count; /* entries added */
    int err;
} imp_builder;
void imp_builder_init(imp_builder *b, uint8_t *buf, size_t cap);
int imp_names_add(imp_builder *b, const void *name, size_t len);
int imp_headers_add(imp_builder *b, const void *key, size_t klen, const void *value, size_t vlen);
int imp_stats_add(imp_builder *b, const void *name, size_t nlen, uint64_t value);

#ifdef __cplusplus
}
#endif
#endif
