/* libimp — error codes (SPEC.md section 6).
 *
 * One numeric table serves the wire (ERROR and ACK CODE fields), the library (as the negative
 * value -code) and the tools (the hundreds digit is the exit status). IMP-ERR-001.
 */
#ifndef IMP_ERRORS_H
#define IMP_ERRORS_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Signed size: >= 0 a byte count, < 0 an imp_err value. */
typedef ptrdiff_t imp_ssize;

/* Library return values are 0 (OK), positive counts, or one of these (negative). */
typedef enum imp_err {
    IMP_ERR_NONE = 0, /* success (the frame type OK is IMP_OK) */
    /* 2xx usage: local only, never on the wire */
    IMP_ERR_INVAL = -200,
    IMP_ERR_NOMEM = -201,
    IMP_ERR_BUFFER = -202,
    IMP_ERR_OUTPUT_FULL = -203,
    IMP_ERR_NOT_ALLOWED = -204,
    IMP_ERR_CLOSED = -205,
    /* 3xx cannot connect (fatal) */
    IMP_ERR_VERSION = -300,
    IMP_ERR_SERVER_FULL = -301,
    IMP_ERR_BANNED = -302,
    /* 4xx authentication refused */
    IMP_ERR_AUTH_FAILED = -400,
    IMP_ERR_USER_EXISTS = -401,
    IMP_ERR_REGISTRATION_CLOSED = -402,
    IMP_ERR_TOKEN_INVALID = -403,
    IMP_ERR_AUTH_BACKOFF = -404,
    IMP_ERR_WEAK_PASSWORD = -405,
    /* 5xx request refused */
    IMP_ERR_NO_SUCH_USER = -500,
    IMP_ERR_NO_SUCH_ROOM = -501,
    IMP_ERR_FORBIDDEN = -502,
    IMP_ERR_NOT_MEMBER = -503,
    IMP_ERR_QUOTA = -504,
    IMP_ERR_TOO_LARGE = -505,
    IMP_ERR_RATE_LIMITED = -506,
    IMP_ERR_BUSY = -507,
    IMP_ERR_STORAGE = -508,
    IMP_ERR_INTERNAL = -509,
    IMP_ERR_BAD_REQUEST = -510,
    IMP_ERR_ID_CONFLICT = -511,
    /* 6xx timeout (fatal) */
    IMP_ERR_AUTH_TIMEOUT = -600,
    IMP_ERR_PING_TIMEOUT = -601,
    IMP_ERR_TIMEOUT = -602,
    /* 7xx connection lost: protocol violations and closes (fatal) */
    IMP_ERR_PROTOCOL = -700,
    IMP_ERR_BAD_VERSION = -701,
    IMP_ERR_UNKNOWN_TYPE = -702,
    IMP_ERR_RESERVED_FLAGS = -703,
    IMP_ERR_FRAME_TOO_LARGE = -704,
    IMP_ERR_WRONG_ROLE = -705,
    IMP_ERR_STATE = -706,
    IMP_ERR_NOT_AUTHENTICATED = -707,
    IMP_ERR_TRUNCATED = -710,
    IMP_ERR_ZERO_TAG = -711,
    IMP_ERR_FIELD_ORDER = -712,
    IMP_ERR_DUPLICATE_FIELD = -713,
    IMP_ERR_UNKNOWN_CRITICAL = -714,
    IMP_ERR_MISSING_FIELD = -715,
    IMP_ERR_FIELD_LENGTH = -716,
    IMP_ERR_BAD_UTF8 = -717,
    IMP_ERR_BAD_NAME = -718,
    IMP_ERR_BAD_VALUE = -719,
    IMP_ERR_FIELD_CONFLICT = -720,
    IMP_ERR_BAD_LIST = -721,
    IMP_ERR_SHUTDOWN = -730,
    IMP_ERR_SLOW_CONSUMER = -731,
    IMP_ERR_KICKED = -732,
    IMP_ERR_CONNECTION_LOST = -733
} imp_err;

/* Short English description of an error (negative) or wire code (positive). Never NULL:
 * unknown codes get a description of their class ("request refused (code 599)" style strings
 * are static: "unknown error"). 0 gives "ok". */
const char *imp_strerror(int err);

/* Upper-case name without prefix ("FRAME_TOO_LARGE"), or NULL for an unknown code.
 * Accepts negative library values and positive wire codes alike. */
const char *imp_err_name(int err);

/* 1 when the error closes the connection (classes 3xx, 6xx, 7xx, and NOMEM), else 0.
 * Accepts negative library values and positive wire codes. IMP-ERR-002. */
int imp_is_fatal(int err);

/* The tool exit status for an error: 0 for IMP_ERR_NONE (0), else the hundreds digit of the code
 * (2..7). Codes outside 200..799 map to 7 (connection lost). IMP-ERR-001. */
int imp_exit_status(int err);

#ifdef __cplusplus
}
#endif
#endif
