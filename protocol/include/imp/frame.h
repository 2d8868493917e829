/* libimp — frame header codec (SPEC.md section 2).
 *
 * A pull parser in the style of picohttpparser: it never allocates and never copies; the
 * returned frame's payload points into the caller's buffer.
 */
#ifndef IMP_FRAME_H
#define IMP_FRAME_H

#include <stddef.h>
#include <stdint.h>

#include "errors.h"

#ifdef __cplusplus
extern "C" {
#endif

#define IMP_PROTOCOL_VERSION 1u        /* header version byte and HELLO/WELCOME version */
#define IMP_HEADER_SIZE 12u            /* IMP-FRAME-001 */
#define IMP_FRAME_MAX_HARD 16777216u   /* 16 MiB, largest frame size ever: IMP-FRAME-005 */
#define IMP_FRAME_MIN_LIMIT 4096u      /* smallest MAX_FRAME a server may announce */
#define IMP_DEFAULT_MAX_FRAME 1048576u /* server default MAX_FRAME (1 MiB) */
#define IMP_DEFAULT_MAX_PREAUTH 4096u  /* server default MAX_FRAME_PREAUTH */

/* Frame types (SPEC.md section 5). */
typedef enum imp_type {
    IMP_HELLO = 0x01,
    IMP_WELCOME = 0x02,
    IMP_REGISTER = 0x03,
    IMP_LOGIN = 0x04,
    IMP_AUTH_OK = 0x05,
    IMP_LOGOUT = 0x06,
    IMP_OK = 0x07,
    IMP_ERROR = 0x08,
    IMP_SEND = 0x10,
    IMP_ACK = 0x11,
    IMP_DELIVER = 0x12,
    IMP_DELIVERED = 0x13,
    IMP_JOIN = 0x20,
    IMP_LEAVE = 0x21,
    IMP_MEMBERS = 0x22,
    IMP_MEMBER_LIST = 0x23,
    IMP_HISTORY = 0x24,
    IMP_HISTORY_ITEM = 0x25,
    IMP_ROOMS = 0x26,
    IMP_ROOM_LIST = 0x27,
    IMP_PRESENCE = 0x30,
    IMP_SUBSCRIBE = 0x31,
    IMP_PRESENCE_EVENT = 0x32,
    IMP_WHO = 0x33,
    IMP_WHO_LIST = 0x34,
    IMP_STATS = 0x40,
    IMP_STATS_REPLY = 0x41,
    IMP_MONITOR = 0x42,
    IMP_MONITOR_EVENT = 0x43,
    IMP_PING = 0x50,
    IMP_PONG = 0x51
} imp_type;

/* Number of frame types, and an iteration helper: imp_type_at(i) for i in [0, IMP_TYPE_COUNT)
 * gives every defined type in ascending order. */
#define IMP_TYPE_COUNT 31
uint8_t imp_type_at(unsigned i);

/* Who may send a type. */
#define IMP_DIR_C2S 1u /* only a client sends it */
#define IMP_DIR_S2C 2u /* only a server sends it */
#define IMP_DIR_BOTH 3u

/* 1 if type is defined by IMP/1, else 0. */
int imp_type_known(unsigned type);
/* IMP_DIR_* of a known type, 0 for an unknown one. */
unsigned imp_type_dir(unsigned type);
/* "SEND", "DELIVER", ...; NULL for an unknown type. */
const char *imp_type_name(unsigned type);

/* A parsed frame header plus a view of its payload. */
typedef struct imp_frame {
    uint8_t version;
    uint8_t type;
    uint16_t flags;
    uint32_t length; /* payload length */
    uint32_t request_id;
    const uint8_t *payload; /* view into the parsed buffer: length bytes */
} imp_frame;

/* Parse one frame from buf[0..len).
 *   max_frame: the receiver's current limit on the frame size (12 + payload length); values
 *              above IMP_FRAME_MAX_HARD (and 0) mean IMP_FRAME_MAX_HARD.
 * Returns
 *   > 0  the frame size: one whole frame was parsed into *out; *out->payload views buf.
 *   0    incomplete: *need (if need != NULL) is the number of bytes still missing for the
 *        header or, once the header is valid, for the whole frame.
 *   < 0  IMP_ERR_BAD_VERSION, IMP_ERR_UNKNOWN_TYPE, IMP_ERR_RESERVED_FLAGS or
 *        IMP_ERR_FRAME_TOO_LARGE, checked in that order as soon as the 12 header bytes are
 *        present (IMP-FRAME-006), before any payload byte is needed. *out is unspecified.
 * Never allocates; buf may be NULL when len is 0. The payload is not validated here: see
 * imp_msg_decode(). */
imp_ssize imp_frame_parse(const uint8_t *buf, size_t len, size_t max_frame, imp_frame *out,
                          size_t *need);

/* Write a 12-byte header (version 1, flags 0) into out. */
void imp_frame_header_write(uint8_t out[IMP_HEADER_SIZE], uint8_t type, uint32_t payload_len,
                            uint32_t request_id);

#ifdef __cplusplus
}
#endif
#endif
