/* STABLE (issue 4): the API below is fixed; additions only, no changes to what is here.
 *
 * imt_json — a small JSON writer (one object per line, "JSON lines") and the tools' JSON
 * schema, version 1.
 *
 * Writer: values are appended to a growing buffer; commas are inserted automatically. Strings
 * are escaped per RFC 8259: '"' '\\' as \" \\, \b \f \n \r \t, other control characters and
 * U+007F as \u00XX; valid UTF-8 is copied as is. Bytes that are not valid UTF-8 (only possible
 * through imt_json_strn) are written as \u00XX of the byte value (Latin-1 reading): the output
 * is always valid JSON and valid UTF-8, but such a string does not round-trip. Message bodies
 * therefore never rely on that: see body_enc below.
 *
 * ---- Schema v1 (every object has "v":1 and "type") ------------------------------------------
 *
 * message (DELIVER; HISTORY_ITEM with "history":true):
 *   {"v":1,"type":"message","id":MSG_ID,"seq":SEQ,"from":"alice","kind":"user"|"room"|
 *    "broadcast","to":"bob" (absent for broadcast),"ts":MS_SINCE_EPOCH,
 *    "class":"durable"|"transient","headers":{"k":"v",...} (absent when none),
 *    "body":"...","body_enc":"utf8"|"base64"[,"history":true]}
 *   body_enc "utf8": the body is valid UTF-8 and "body" is it, JSON-escaped (a NUL byte is
 *   \u0000); "base64": the body is not UTF-8 and "body" is its standard base64 (RFC 4648, with
 *   padding). Decoding "body" per body_enc always gives the exact bytes.
 *
 * ack (one per ACK received):
 *   {"v":1,"type":"ack","req":N,"client_msg_id":"..." (absent when none),"id":MSG_ID (absent
 *    when refused),"outcome":"stored"|"delivered"|"refused","duplicate":true|false,
 *    "code":CODE (0 unless refused),"code_name":"NO_SUCH_USER" (only with a code),
 *    "text":"..." (only when the server sent one)}
 *
 * presence:
 *   {"v":1,"type":"presence","user":"bob","status":"offline"|"online"|"away"|"busy",
 *    "status_text":"..." (absent when none),"sessions":N (absent when none),"ts":MS (absent
 *    when none)}
 *
 * monitor:
 *   {"v":1,"type":"monitor","event":"login","user":"bob" (absent),"text":"..." (absent),
 *    "ts":MS}
 *
 * error (a tool's final error, when --json; also on stdout):
 *   {"v":1,"type":"error","status":EXIT_STATUS,"code":CODE,"code_name":"..." (when known),
 *    "text":"..."}
 */
#ifndef IMT_JSON_H
#define IMT_JSON_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "imt_client.h"

#ifdef __cplusplus
extern "C" {
#endif

#define IMT_JSON_SCHEMA_VERSION 1
#define IMT_JSON_MAX_DEPTH 16

typedef struct imt_json {
    char *buf; /* NUL-terminated */
    size_t len, cap;
    int err;   /* sticky: 1 after an allocation failure or misuse (depth) */
    int depth; /* open containers */
    unsigned char first[IMT_JSON_MAX_DEPTH + 1]; /* 1: no value yet at that depth */
    int after_key;                               /* a key was written, its value is next */
} imt_json;

void imt_json_init(imt_json *j);
void imt_json_reset(imt_json *j); /* empty the buffer, keep the memory */
void imt_json_free(imt_json *j);

void imt_json_obj_begin(imt_json *j);
void imt_json_obj_end(imt_json *j);
void imt_json_arr_begin(imt_json *j);
void imt_json_arr_end(imt_json *j);
void imt_json_key(imt_json *j, const char *key); /* inside an object, before its value */
void imt_json_str(imt_json *j, const char *s);   /* NULL writes null */
void imt_json_strn(imt_json *j, const void *p, size_t n);
void imt_json_base64(imt_json *j, const void *p, size_t n); /* a string of base64 */
void imt_json_u64(imt_json *j, uint64_t v);
void imt_json_i64(imt_json *j, int64_t v);
void imt_json_bool(imt_json *j, int v);
void imt_json_null(imt_json *j);

/* Write the buffer and a newline to out, flush, then reset. 0, or -1 (error or j->err). */
int imt_json_emit(imt_json *j, FILE *out);

/* Base64 (RFC 4648, padded) of p[0..n) into out (cap >= imt_base64_len(n) + 1, NUL-terminated).
 * Returns the length written. */
size_t imt_base64_len(size_t n);
size_t imt_base64_encode(const void *p, size_t n, char *out);

/* Schema v1 objects, appended to j as one complete object (j should be empty). */
void imt_json_message(imt_json *j, const imt_message *m);
void imt_json_ack(imt_json *j, const imt_ack *a);
void imt_json_presence(imt_json *j, const imt_presence *p);
void imt_json_monitor(imt_json *j, const imt_monitor_event *e);
void imt_json_error(imt_json *j, const imt_result *r);

/* Names for enum values: "user"/"room"/"broadcast", "durable"/"transient",
 * "stored"/"delivered"/"refused", "offline"/"online"/"away"/"busy"; "unknown" otherwise. */
const char *imt_kind_name(int target_kind);
const char *imt_class_name(int cls);
const char *imt_outcome_name(int outcome);
const char *imt_status_name(int status);

#ifdef __cplusplus
}
#endif
#endif
