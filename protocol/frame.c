/* Frame header codec and frame type table (SPEC.md sections 2 and 5). */
#include "imp/frame.h"

#include "wire.h"

struct type_info {
    uint8_t type;
    uint8_t dir;
    const char *name;
};

/* Transcribed from the table of SPEC.md section 5 (test_msg.c checks it against the spec). */
static const struct type_info types[IMP_TYPE_COUNT] = {
    {IMP_HELLO, IMP_DIR_C2S, "HELLO"},
    {IMP_WELCOME, IMP_DIR_S2C, "WELCOME"},
    {IMP_REGISTER, IMP_DIR_C2S, "REGISTER"},
    {IMP_LOGIN, IMP_DIR_C2S, "LOGIN"},
    {IMP_AUTH_OK, IMP_DIR_S2C, "AUTH_OK"},
    {IMP_LOGOUT, IMP_DIR_C2S, "LOGOUT"},
    {IMP_OK, IMP_DIR_S2C, "OK"},
    {IMP_ERROR, IMP_DIR_BOTH, "ERROR"},
    {IMP_SEND, IMP_DIR_C2S, "SEND"},
    {IMP_ACK, IMP_DIR_S2C, "ACK"},
    {IMP_DELIVER, IMP_DIR_S2C, "DELIVER"},
    {IMP_DELIVERED, IMP_DIR_C2S, "DELIVERED"},
    {IMP_JOIN, IMP_DIR_C2S, "JOIN"},
    {IMP_LEAVE, IMP_DIR_C2S, "LEAVE"},
    {IMP_MEMBERS, IMP_DIR_C2S, "MEMBERS"},
    {IMP_MEMBER_LIST, IMP_DIR_S2C, "MEMBER_LIST"},
    {IMP_HISTORY, IMP_DIR_C2S, "HISTORY"},
    {IMP_HISTORY_ITEM, IMP_DIR_S2C, "HISTORY_ITEM"},
    {IMP_ROOMS, IMP_DIR_C2S, "ROOMS"},
    {IMP_ROOM_LIST, IMP_DIR_S2C, "ROOM_LIST"},
    {IMP_PRESENCE, IMP_DIR_C2S, "PRESENCE"},
    {IMP_SUBSCRIBE, IMP_DIR_C2S, "SUBSCRIBE"},
    {IMP_PRESENCE_EVENT, IMP_DIR_S2C, "PRESENCE_EVENT"},
    {IMP_WHO, IMP_DIR_C2S, "WHO"},
    {IMP_WHO_LIST, IMP_DIR_S2C, "WHO_LIST"},
    {IMP_STATS, IMP_DIR_C2S, "STATS"},
    {IMP_STATS_REPLY, IMP_DIR_S2C, "STATS_REPLY"},
    {IMP_MONITOR, IMP_DIR_C2S, "MONITOR"},
    {IMP_MONITOR_EVENT, IMP_DIR_S2C, "MONITOR_EVENT"},
    {IMP_PING, IMP_DIR_BOTH, "PING"},
    {IMP_PONG, IMP_DIR_BOTH, "PONG"},
};

/* type byte -> index + 1 into types[] (0: unknown); built on first use would need state, so
 * it is a constant table. */
static const uint8_t type_index[256] = {
    [IMP_HELLO] = 1,        [IMP_WELCOME] = 2,         [IMP_REGISTER] = 3,
    [IMP_LOGIN] = 4,        [IMP_AUTH_OK] = 5,         [IMP_LOGOUT] = 6,
    [IMP_OK] = 7,           [IMP_ERROR] = 8,           [IMP_SEND] = 9,
    [IMP_ACK] = 10,         [IMP_DELIVER] = 11,        [IMP_DELIVERED] = 12,
    [IMP_JOIN] = 13,        [IMP_LEAVE] = 14,          [IMP_MEMBERS] = 15,
    [IMP_MEMBER_LIST] = 16, [IMP_HISTORY] = 17,        [IMP_HISTORY_ITEM] = 18,
    [IMP_ROOMS] = 19,       [IMP_ROOM_LIST] = 20,      [IMP_PRESENCE] = 21,
    [IMP_SUBSCRIBE] = 22,   [IMP_PRESENCE_EVENT] = 23, [IMP_WHO] = 24,
    [IMP_WHO_LIST] = 25,    [IMP_STATS] = 26,          [IMP_STATS_REPLY] = 27,
    [IMP_MONITOR] = 28,     [IMP_MONITOR_EVENT] = 29,  [IMP_PING] = 30,
    [IMP_PONG] = 31,
};

uint8_t imp_type_at(unsigned i)
{
    return i < IMP_TYPE_COUNT ? types[i].type : 0;
}

int imp_type_index(unsigned type)
{
    return type < 256 ? (int)type_index[type] - 1 : -1;
}

int imp_type_known(unsigned type)
{
    return imp_type_index(type) >= 0;
}

unsigned imp_type_dir(unsigned type)
{
    int i = imp_type_index(type);
    return i < 0 ? 0 : types[i].dir;
}

const char *imp_type_name(unsigned type)
{
    int i = imp_type_index(type);
    return i < 0 ? NULL : types[i].name;
}

imp_ssize imp_frame_parse(const uint8_t *buf, size_t len, size_t max_frame, imp_frame *out,
                          size_t *need)
{
    if (max_frame == 0 || max_frame > IMP_FRAME_MAX_HARD)
        max_frame = IMP_FRAME_MAX_HARD;
    if (len < IMP_HEADER_SIZE) {
        if (need)
            *need = IMP_HEADER_SIZE - len;
        return 0;
    }
    /* IMP-FRAME-006: version, type, flags, length, in that order, on the header alone. */
    if (buf[0] != IMP_PROTOCOL_VERSION)
        return IMP_ERR_BAD_VERSION; /* IMP-FRAME-002 */
    if (!imp_type_known(buf[1]))
        return IMP_ERR_UNKNOWN_TYPE; /* IMP-FRAME-003 */
    uint16_t flags = imp_get16(buf + 2);
    if (flags != 0)
        return IMP_ERR_RESERVED_FLAGS; /* IMP-FRAME-004 */
    uint32_t length = imp_get32(buf + 4);
    /* IMP-FRAME-005, IMP-SEC-002: checked before any payload byte is needed. */
    if ((uint64_t)length + IMP_HEADER_SIZE > max_frame)
        return IMP_ERR_FRAME_TOO_LARGE;
    size_t total = IMP_HEADER_SIZE + (size_t)length;
    if (len < total) {
        if (need)
            *need = total - len;
        return 0;
    }
    out->version = buf[0];
    out->type = buf[1];
    out->flags = flags;
    out->length = length;
    out->request_id = imp_get32(buf + 8);
    out->payload = buf + IMP_HEADER_SIZE; /* IMP-LIB-002: a view, never a copy */
    return (imp_ssize)total;
}

void imp_frame_header_write(uint8_t out[IMP_HEADER_SIZE], uint8_t type, uint32_t payload_len,
                            uint32_t request_id)
{
    /* IMP-FRAME-001 */
    out[0] = IMP_PROTOCOL_VERSION;
    out[1] = type;
    imp_put16(out + 2, 0);
    imp_put32(out + 4, payload_len);
    imp_put32(out + 8, request_id);
}
