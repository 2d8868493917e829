/* The session state tables (SPEC.md section 7, IMP-SESS-001, IMP-SESS-002). Each table is a
 * row per state and a column per frame-type group, in the order of the spec's columns;
 * tests/protocol/test_state.c reads the spec's tables and checks every cell against the
 * connection's behaviour. */
#include "state.h"

#include "imp/frame.h"

/* Column groups; every frame type belongs to exactly one. */
enum group {
    G_HELLO,
    G_WELCOME,
    G_AUTH, /* REGISTER, LOGIN */
    G_AUTH_OK,
    G_LOGOUT,
    G_OK,
    G_ERROR,
    G_PING,
    G_PONG,
    G_APP_C, /* SEND, DELIVERED, JOIN, LEAVE, MEMBERS, HISTORY, ROOMS, PRESENCE, SUBSCRIBE,
                WHO, STATS, MONITOR */
    G_APP_S, /* ACK, DELIVER, MEMBER_LIST, HISTORY_ITEM, ROOM_LIST, PRESENCE_EVENT, WHO_LIST,
                STATS_REPLY, MONITOR_EVENT (APP_S of the spec without OK) */
    G_COUNT
};

static enum group group_of(uint8_t type)
{
    switch (type) {
    case IMP_HELLO:
        return G_HELLO;
    case IMP_WELCOME:
        return G_WELCOME;
    case IMP_REGISTER:
    case IMP_LOGIN:
        return G_AUTH;
    case IMP_AUTH_OK:
        return G_AUTH_OK;
    case IMP_LOGOUT:
        return G_LOGOUT;
    case IMP_OK:
        return G_OK;
    case IMP_ERROR:
        return G_ERROR;
    case IMP_PING:
        return G_PING;
    case IMP_PONG:
        return G_PONG;
    default:
        return imp_type_dir(type) == IMP_DIR_C2S ? G_APP_C : G_APP_S;
    }
}

#define GO(s)              \
    {                      \
        CELL_GO, IMP_S_##s \
    }
#define SAME         \
    {                \
        CELL_STAY, 0 \
    }
#define IGN            \
    {                  \
        CELL_IGNORE, 0 \
    }
#define FAIL(e)                \
    {                          \
        CELL_FAIL, IMP_ERR_##e \
    }
#define NOPE                             \
    {                                    \
        CELL_REFUSE, IMP_ERR_NOT_ALLOWED \
    }
#define SHUT                        \
    {                               \
        CELL_REFUSE, IMP_ERR_CLOSED \
    }
#define ERRF(s)              \
    {                        \
        CELL_ERRF, IMP_S_##s \
    }
#define ERRF_SAME     \
    {                 \
        CELL_ERRF, -1 \
    }
/* "CLOSING if LOGOUT's id, else =" (IMP-SESS-007, IMP-SESS-008) */
#define LOGOUT_OK         \
    {                     \
        CELL_LOGOUT_OK, 0 \
    }
/* "CLOSING (auto OK), LOGOUT_RCVD if deferred" (IMP-SESS-008) */
#define LOGOUT_IN                     \
    {                                 \
        CELL_LOGOUT_IN, IMP_S_CLOSING \
    }
#define ALL(c)                          \
    {                                   \
        c, c, c, c, c, c, c, c, c, c, c \
    }

typedef struct imp_cell row[G_COUNT];

/* Columns: HELLO WELCOME AUTH AUTH_OK LOGOUT OK ERROR PING PONG APP_C APP_S */

/* 7.1 Server role: receive. WELCOME, AUTH_OK, OK and APP_S are the client's: WRONG_ROLE.
 * Before READY an application request fails with NOT_AUTHENTICATED (IMP-SESS-004), so nothing
 * that names another user or room is processed before authentication (IMP-SEC-003). */
static const row server_rx[IMP_STATE_COUNT] = {
    [IMP_S_AWAIT_HELLO] = {GO(AWAIT_AUTH), FAIL(WRONG_ROLE), FAIL(STATE), FAIL(WRONG_ROLE),
                           FAIL(STATE), FAIL(WRONG_ROLE), GO(CLOSING), FAIL(STATE), FAIL(STATE),
                           FAIL(STATE), FAIL(WRONG_ROLE)},
    [IMP_S_AWAIT_AUTH] = {FAIL(STATE), FAIL(WRONG_ROLE), GO(AUTHENTICATING), FAIL(WRONG_ROLE),
                          GO(CLOSING), FAIL(WRONG_ROLE), GO(CLOSING), SAME, SAME,
                          FAIL(NOT_AUTHENTICATED), FAIL(WRONG_ROLE)},
    [IMP_S_AUTHENTICATING] = {FAIL(STATE), FAIL(WRONG_ROLE), FAIL(STATE), FAIL(WRONG_ROLE),
                              GO(CLOSING), FAIL(WRONG_ROLE), GO(CLOSING), SAME, SAME,
                              FAIL(NOT_AUTHENTICATED), FAIL(WRONG_ROLE)},
    [IMP_S_READY] = {FAIL(STATE), FAIL(WRONG_ROLE), FAIL(STATE), FAIL(WRONG_ROLE), LOGOUT_IN,
                     FAIL(WRONG_ROLE), GO(CLOSING), SAME, SAME, SAME, FAIL(WRONG_ROLE)},
    /* IMP-SESS-008: after a deferred LOGOUT input is ignored, as in CLOSING */
    [IMP_S_LOGOUT_RCVD] = ALL(IGN),
    [IMP_S_CLOSING] = ALL(IGN),
};

/* 7.2 Server role: send. A non-fatal ERROR answering REGISTER/LOGIN returns to AWAIT_AUTH
 * (IMP-SESS-005). The spec's OK column is the G_OK group, its "APP_S except OK" G_APP_S. */
static const row server_tx[IMP_STATE_COUNT] = {
    [IMP_S_AWAIT_HELLO] = {NOPE, NOPE, NOPE, NOPE, NOPE, NOPE, ERRF_SAME, NOPE, NOPE, NOPE, NOPE},
    [IMP_S_AWAIT_AUTH] = {NOPE, NOPE, NOPE, NOPE, NOPE, NOPE, ERRF_SAME, NOPE, NOPE, NOPE, NOPE},
    [IMP_S_AUTHENTICATING] = {NOPE, NOPE, NOPE, GO(READY), NOPE, NOPE, ERRF(AWAIT_AUTH), NOPE, NOPE,
                              NOPE, NOPE},
    [IMP_S_READY] = {NOPE, NOPE, NOPE, NOPE, NOPE, SAME, ERRF_SAME, SAME, NOPE, NOPE, SAME},
    /* IMP-SESS-008: the answers owed for the requests before LOGOUT, then the OK with LOGOUT's
     * request id, which closes */
    [IMP_S_LOGOUT_RCVD] = {NOPE, NOPE, NOPE, NOPE, NOPE, LOGOUT_OK, ERRF_SAME, NOPE, NOPE, NOPE,
                           SAME},
    [IMP_S_CLOSING] = ALL(SHUT),
};

/* 7.3 Client role: receive. A non-fatal ERROR in AUTH_SENT returns to CONNECTED
 * (IMP-SESS-005). */
static const row client_rx[IMP_STATE_COUNT] = {
    [IMP_S_HELLO_SENT] = {FAIL(WRONG_ROLE), GO(CONNECTED), FAIL(WRONG_ROLE), FAIL(STATE),
                          FAIL(WRONG_ROLE), FAIL(STATE), ERRF_SAME, SAME, SAME, FAIL(WRONG_ROLE),
                          FAIL(STATE)},
    [IMP_S_CONNECTED] = {FAIL(WRONG_ROLE), FAIL(STATE), FAIL(WRONG_ROLE), FAIL(STATE),
                         FAIL(WRONG_ROLE), FAIL(STATE), ERRF_SAME, SAME, SAME, FAIL(WRONG_ROLE),
                         FAIL(STATE)},
    [IMP_S_AUTH_SENT] = {FAIL(WRONG_ROLE), FAIL(STATE), FAIL(WRONG_ROLE), GO(READY),
                         FAIL(WRONG_ROLE), FAIL(STATE), ERRF(CONNECTED), SAME, SAME,
                         FAIL(WRONG_ROLE), FAIL(STATE)},
    [IMP_S_READY] = {FAIL(WRONG_ROLE), FAIL(STATE), FAIL(WRONG_ROLE), FAIL(STATE), FAIL(WRONG_ROLE),
                     SAME, ERRF_SAME, SAME, SAME, FAIL(WRONG_ROLE), SAME},
    [IMP_S_LOGOUT_SENT] = {FAIL(WRONG_ROLE),
                           FAIL(STATE),
                           FAIL(WRONG_ROLE),
                           SAME,
                           FAIL(WRONG_ROLE),
                           {CELL_LOGOUT_OK, 0},
                           ERRF_SAME,
                           SAME,
                           SAME,
                           FAIL(WRONG_ROLE),
                           SAME},
    [IMP_S_CLOSING] = ALL(IGN),
};

/* 7.4 Client role: send. */
static const row client_tx[IMP_STATE_COUNT] = {
    [IMP_S_HELLO_SENT] = {NOPE, NOPE, NOPE, NOPE, NOPE, NOPE, GO(CLOSING), NOPE, NOPE, NOPE, NOPE},
    [IMP_S_CONNECTED] = {NOPE, NOPE, GO(AUTH_SENT), NOPE, GO(LOGOUT_SENT), NOPE, GO(CLOSING), NOPE,
                         NOPE, NOPE, NOPE},
    [IMP_S_AUTH_SENT] = {NOPE, NOPE, NOPE, NOPE, GO(LOGOUT_SENT), NOPE, GO(CLOSING), NOPE, NOPE,
                         NOPE, NOPE},
    [IMP_S_READY] = {NOPE, NOPE, NOPE, NOPE, GO(LOGOUT_SENT), NOPE, GO(CLOSING), SAME, NOPE, SAME,
                     NOPE},
    [IMP_S_LOGOUT_SENT] = {NOPE, NOPE, NOPE, NOPE, NOPE, NOPE, GO(CLOSING), NOPE, NOPE, NOPE, NOPE},
    [IMP_S_CLOSING] = ALL(SHUT),
};

struct imp_cell imp_state_cell(imp_role role, int send, imp_state state, uint8_t type)
{
    const row *t =
        role == IMP_ROLE_SERVER ? (send ? server_tx : server_rx) : (send ? client_tx : client_rx);
    return t[state][group_of(type)];
}

const char *imp_state_name(imp_state s)
{
    static const char *const names[IMP_STATE_COUNT] = {
        "AWAIT_HELLO", "AWAIT_AUTH", "AUTHENTICATING", "HELLO_SENT", "CONNECTED",
        "AUTH_SENT",   "READY",      "LOGOUT_SENT",    "CLOSING",    "LOGOUT_RCVD"};
    return (unsigned)s < IMP_STATE_COUNT ? names[s] : NULL;
}
