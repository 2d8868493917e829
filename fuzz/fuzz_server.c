/* Fuzz target: a server-role imp_conn fed the input as a byte stream, with a fake application
 * answering its events (fuzz_conn.h has the driver and the full list of checks).
 *
 * Requirements checked (see fuzz_conn.h for how):
 *   IMP-SESS-001..006  server states, receive table 7.1 and send table 7.2 cell by cell; one
 *                  REGISTER/LOGIN outstanding; non-fatal ERROR back to AWAIT_AUTH
 *   IMP-MSG-001    WRONG_ROLE for client-bound frames
 *   IMP-MSG-002    WELCOME with the configured limits and the HELLO's request id; VERSION error
 *   IMP-MSG-005    LOGOUT answered by OK with its id, then CLOSING
 *   IMP-SESS-008   deferred LOGOUT (imp_conn_set_defer_logout, config byte 3 bit 2; extra
 *                  action 9 toggles it): no OK sent, LOGOUT_RCVD ignores input and runs no
 *                  timer, table 7.2's LOGOUT_RCVD row, the application's OK with LOGOUT's id
 *                  (plain or prepared) and only that one closes
 *   IMP-FRAME-005, IMP-SESS-006  MAX_FRAME_PREAUTH before AUTH_OK, MAX_FRAME after
 *   IMP-FRAME-007  PONG echoes the PING's id
 *   IMP-FRAME-008  events are exactly the frames of the stream, whatever the chunking
 *   IMP-ERR-002, IMP-ERR-003  errors are sticky, the state is CLOSING, ERROR(code) is sent
 *   IMP-TIME-001..003  absolute auth deadline, keepalive, time never runs backwards
 *   IMP-LIB-003    allocation failures (injected) give a sticky NOMEM and leak nothing
 *   and: no DELIVER or ACK is accepted by imp_conn_send before READY.
 *
 * Input: 4 config bytes (limits, timers, output cap, agent/caps, injected allocation failure,
 * start time, deferred LOGOUT) | A | A bytes of application decisions | L | L bytes of io decisions
 * (chunk sizes, ticks, extra actions, output consumption) | the byte stream. A = L = 0 means: feed
 * everything at once, answer every request the happy way, no time passing.
 */
#include "fuzz_conn.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    return fz_one_input(IMP_ROLE_SERVER, data, size);
}
