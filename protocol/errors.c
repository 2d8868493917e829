/* Error codes: names, descriptions, classes (SPEC.md section 6, IMP-ERR-001, IMP-ERR-002). */
#include "imp/errors.h"

#include <limits.h>
#include <stddef.h>

struct err_info {
    int code; /* positive wire code */
    const char *name;
    const char *text;
};

/* Transcribed from the table of SPEC.md section 6; tests/protocol/test_errors.c compares the
 * two row by row. */
static const struct err_info errs[] = {
    {200, "INVAL", "invalid argument"},
    {201, "NOMEM", "out of memory"},
    {202, "BUFFER", "buffer too small"},
    {203, "OUTPUT_FULL", "output buffer full"},
    {204, "NOT_ALLOWED", "this frame may not be sent now"},
    {205, "CLOSED", "connection is closing"},
    {300, "VERSION", "no protocol version in common"},
    {301, "SERVER_FULL", "server full"},
    {302, "BANNED", "address temporarily banned"},
    {400, "AUTH_FAILED", "authentication failed"},
    {401, "USER_EXISTS", "user already exists"},
    {402, "REGISTRATION_CLOSED", "registration closed"},
    {403, "TOKEN_INVALID", "resume token invalid"},
    {404, "AUTH_BACKOFF", "too many failed logins, retry later"},
    {405, "WEAK_PASSWORD", "password too weak"},
    {500, "NO_SUCH_USER", "no such user"},
    {501, "NO_SUCH_ROOM", "no such room"},
    {502, "FORBIDDEN", "forbidden"},
    {503, "NOT_MEMBER", "not a member of the room"},
    {504, "QUOTA", "recipient's offline quota is full"},
    {505, "TOO_LARGE", "too large"},
    {506, "RATE_LIMITED", "rate limited"},
    {507, "BUSY", "server busy"},
    {508, "STORAGE", "storage error"},
    {509, "INTERNAL", "internal error"},
    {510, "BAD_REQUEST", "bad request"},
    {511, "ID_CONFLICT", "client message id reused for a different message"},
    {600, "AUTH_TIMEOUT", "authentication timeout"},
    {601, "PING_TIMEOUT", "peer stopped answering pings"},
    {602, "TIMEOUT", "timeout"},
    {700, "PROTOCOL", "protocol error"},
    {701, "BAD_VERSION", "bad frame version"},
    {702, "UNKNOWN_TYPE", "unknown frame type"},
    {703, "RESERVED_FLAGS", "reserved flags set"},
    {704, "FRAME_TOO_LARGE", "frame too large"},
    {705, "WRONG_ROLE", "frame not allowed from this role"},
    {706, "STATE", "frame not allowed in this state"},
    {707, "NOT_AUTHENTICATED", "not authenticated"},
    {710, "TRUNCATED", "field truncated"},
    {711, "ZERO_TAG", "field tag 0"},
    {712, "FIELD_ORDER", "fields out of order"},
    {713, "DUPLICATE_FIELD", "duplicate field"},
    {714, "UNKNOWN_CRITICAL", "unknown critical field"},
    {715, "MISSING_FIELD", "required field missing"},
    {716, "FIELD_LENGTH", "bad field length"},
    {717, "BAD_UTF8", "invalid UTF-8"},
    {718, "BAD_NAME", "invalid name"},
    {719, "BAD_VALUE", "value out of range"},
    {720, "FIELD_CONFLICT", "conflicting fields"},
    {721, "BAD_LIST", "malformed list"},
    {730, "SHUTDOWN", "server shutting down"},
    {731, "SLOW_CONSUMER", "slow consumer"},
    {732, "KICKED", "session closed by an administrator"},
    {733, "CONNECTION_LOST", "connection lost"},
};

static int wire_code(int err)
{
    /* -INT_MIN is undefined; any such value is an unknown code anyway. */
    return err == INT_MIN ? INT_MAX : err < 0 ? -err : err;
}

static const struct err_info *find(int err)
{
    int code = wire_code(err);
    for (size_t i = 0; i < sizeof errs / sizeof errs[0]; i++)
        if (errs[i].code == code)
            return &errs[i];
    return NULL;
}

const char *imp_err_name(int err)
{
    const struct err_info *e = find(err);
    return e ? e->name : NULL;
}

const char *imp_strerror(int err)
{
    static const char *const classes[] = {
        "unknown error",          "unknown error",   "usage error", "cannot connect",
        "authentication refused", "request refused", "timeout",     "connection lost"};
    if (err == 0)
        return "ok";
    const struct err_info *e = find(err);
    if (e)
        return e->text;
    int code = wire_code(err);
    /* Unknown codes are described by their class (IMP-MSG-009). */
    if (code >= 200 && code <= 799)
        return classes[code / 100];
    return "unknown error";
}

int imp_is_fatal(int err)
{
    int cls = wire_code(err) / 100;
    /* IMP-ERR-002: 3xx, 6xx and 7xx close the connection; of the local 2xx only NOMEM. */
    return cls == 3 || cls == 6 || cls == 7 || wire_code(err) == 201;
}

int imp_exit_status(int err)
{
    int code = wire_code(err);
    if (code == 0)
        return 0;
    /* IMP-ERR-001: the hundreds digit is the exit status. */
    if (code < 200 || code > 799)
        return 7;
    return code / 100;
}
