/* Fuzz target: a client-role imp_conn fed the input as a byte stream, with a fake application
 * answering its events (fuzz_conn.h has the driver and the full list of checks).
 *
 * Requirements checked (see fuzz_conn.h for how):
 *   IMP-SESS-001..007  client states, receive table 7.3 and send table 7.4 cell by cell;
 *                  HELLO queued at creation; non-fatal ERROR in AUTH_SENT back to CONNECTED;
 *                  LOGOUT_SENT closes on the OK with LOGOUT's request id
 *   IMP-MSG-001    WRONG_ROLE for server-bound frames
 *   IMP-MSG-002    WELCOME with another VERSION fails with VERSION
 *   IMP-MSG-003    after WELCOME, frames over MAX_FRAME_PREAUTH (before AUTH_OK) or MAX_FRAME
 *                  (after) are refused with TOO_LARGE and change nothing
 *   IMP-MSG-004    LOGIN with both PASSWORD and TOKEN is refused (FIELD_CONFLICT)
 *   IMP-FRAME-005  the client's own receive limit
 *   IMP-FRAME-007  PONG echoes the PING's id
 *   IMP-FRAME-008  events are exactly the frames of the stream, whatever the chunking
 *   IMP-ERR-002, IMP-ERR-003  fatal ERROR received closes; errors are sticky
 *   IMP-TIME-001..003  the client's own auth deadline, keepalive, time never runs backwards
 *   IMP-LIB-003    allocation failures (injected) give a sticky NOMEM and leak nothing
 *   IMP-SESS-008   imp_conn_set_defer_logout is refused with IMP_ERR_INVAL (a server option)
 *   and: application requests are refused before READY.
 *
 * Input: 4 config bytes (limits, timers, output cap, agent/caps, injected allocation failure,
 * start time) | A | A bytes of application decisions | L | L bytes of io decisions (chunk
 * sizes, ticks, extra actions, output consumption) | the byte stream. A = L = 0 means: feed
 * everything at once, answer every request the happy way, no time passing.
 */
#include "fuzz_conn.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    return fz_one_input(IMP_ROLE_CLIENT, data, size);
}
