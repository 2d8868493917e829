/* Private: the state tables of SPEC.md section 7, transcribed. */
#ifndef IMP_STATE_H
#define IMP_STATE_H

#include <stdint.h>

#include "imp/conn.h"

enum cell_action {
    CELL_GO = 1,    /* move to state arg */
    CELL_STAY,      /* = */
    CELL_IGNORE,    /* drop silently */
    CELL_FAIL,      /* fatal protocol violation with error arg */
    CELL_REFUSE,    /* send refused with error arg; nothing changes */
    CELL_ERRF,      /* ERROR: fatal code -> CLOSING, else state arg (or stay if arg < 0) */
    CELL_LOGOUT_OK, /* client LOGOUT_SENT receives OK, server LOGOUT_RCVD sends OK: CLOSING if
                       LOGOUT's id, else stay */
    CELL_LOGOUT_IN  /* server READY receives LOGOUT: CLOSING with the auto OK, or LOGOUT_RCVD
                       and nothing sent when deferred (IMP-SESS-008) */
};

struct imp_cell {
    uint8_t action;
    int16_t arg;
};

/* The cell for a frame type received (send = 0) or sent (send = 1) in a state by a role. */
struct imp_cell imp_state_cell(imp_role role, int send, imp_state state, uint8_t type);

#endif
