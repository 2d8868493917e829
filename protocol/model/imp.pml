/*
 * imp.pml -- formal model of the IMP/1 session and delivery protocol.
 *
 * Checked with spin by ci/spin-check; see protocol/model/README.md for what
 * is modelled, what is abstracted away, the requirements (IMP-...) each part
 * verifies, and the state counts.
 *
 * Actors
 *   Sender     one client that sends N_MSGS durable messages to Recipient
 *              (with -DROOM: to a room whose members are the recipients)
 *   Recipient  a client whose application processes the messages; one
 *              process per recipient (two room members with -DROOM)
 *   Server     the server: per-connection session handling, the durable
 *              store (messages, per-recipient sequences, dedupe table, ack
 *              marks) and its volatile state (sessions, pending replies)
 *   Faults     the environment: drops a TCP connection (both directions'
 *              in-flight frames are lost) at most MAX_DROPS times, and
 *              crashes/restarts the server at most MAX_RESTARTS times
 *
 * Compile-time knobs (spin -DNAME=value):
 *   N_MSGS        messages the sender sends          (default 3)
 *   MAX_DROPS     connection drops, all connections  (default 2)
 *   MAX_RESTARTS  server restarts                    (default 2)
 *   QUOTA         the recipient's offline quota: at most QUOTA stored,
 *                 unacknowledged messages; a SEND that would exceed it is
 *                 refused (IMP-DELIV-007). Unset: no quota.
 *   ROOM          the sender's messages go to a room with two members
 *                 (IMP-DELIV-008). ci/spin-check runs it with N_MSGS=2,
 *                 MAX_DROPS=1, MAX_RESTARTS=1. QUOTA and ROOM exclude each
 *                 other.
 *   TOKEN_REFUSAL 1: a LOGIN with a resume token may be refused (non-fatal
 *                 ERROR, IMP-SESS-005); 0: tokens are always accepted.
 *                 Default 1, and 0 with ROOM: the refusal is per session and
 *                 checked by the direct configurations, and it would
 *                 nearly triple the room configuration's state space.
 *   CHECK_ORDER   keep the order checks of IMP-DELIV-006 with a quota and
 *                 N_MSGS > QUOTA + 1, where they do not hold (see
 *                 ORDER_CHECKS below and the README's findings).
 *
 * Deliberate bugs (each must make spin report an error, see ci/spin-check):
 *   BUG_ACK_BEFORE_STORE    the server ACKs a new message before committing it
 *   BUG_NO_DEDUPE           the recipient application does not dedupe by seq
 *   BUG_SERVER_NO_DEDUPE    the server stores a retried client message id again
 *   BUG_STALE_SESSION       the server keeps a connection's logged-in state
 *                           when the connection drops (state per user, not
 *                           per connection)
 *   BUG_RESUME_FROM_SENT    on login the server resumes delivery after the
 *                           last seq it *sent* (a per-user cursor kept in
 *                           memory across connections) instead of after the
 *                           last seq *acked*
 *   BUG_VOLATILE_SEQ        the server numbers messages from an in-memory
 *                           counter that is not reloaded from the store after
 *                           a restart
 *   BUG_NO_CATCHUP          a recipient that logs in without LAST_SEQ does not
 *                           acknowledge what it processed but the server's
 *                           AUTH_OK LAST_SEQ says is unacked (it ignores
 *                           duplicates without acking them)
 *   BUG_QUOTA_DROP          (with QUOTA) a SEND over the quota is ACKed as
 *                           stored but silently dropped
 *   BUG_QUOTA_BEFORE_DEDUPE (with QUOTA) the server checks the quota before the
 *                           dedupe table, so a retried SEND of a stored
 *                           message is refused when the queue is full
 *   BUG_ROOM_SINGLE_QUEUE   (with ROOM) a room message is queued only for the
 *                           members that are logged in when it is sent
 */

#ifndef N_MSGS
#define N_MSGS 3
#endif
#ifndef MAX_DROPS
#define MAX_DROPS 2
#endif
#ifndef MAX_RESTARTS
#define MAX_RESTARTS 2
#endif

#ifndef TOKEN_REFUSAL
#ifdef ROOM
#define TOKEN_REFUSAL 0
#else
#define TOKEN_REFUSAL 1
#endif
#endif

/* IMP-DELIV-006 order checks (send_ack, Recipient): the server's first ACKs
 * come in store (msg_id) order, and the application sees the messages in
 * the sender's order. Neither holds once a refusal can be lost: a SEND
 * refused with QUOTA whose ACK is lost in a drop or restart is retried and
 * can be stored after a later message of the same sender (README, findings).
 * With a quota that happens from N_MSGS > QUOTA + 1 on; there the checks are
 * left out unless -DCHECK_ORDER (which reproduces the finding). */
#if !defined(QUOTA) || defined(CHECK_ORDER)
#define ORDER_CHECKS 1
#elif N_MSGS <= QUOTA + 1
#define ORDER_CHECKS 1
#else
#define ORDER_CHECKS 0
#endif

#if defined(QUOTA) && defined(ROOM)
#error "QUOTA and ROOM are separate configurations"
#endif
#if (defined(BUG_QUOTA_DROP) || defined(BUG_QUOTA_BEFORE_DEDUPE)) && !defined(QUOTA)
#error "BUG_QUOTA_DROP and BUG_QUOTA_BEFORE_DEDUPE need -DQUOTA=..."
#endif
#if defined(BUG_ROOM_SINGLE_QUEUE) && !defined(ROOM)
#error "BUG_ROOM_SINGLE_QUEUE needs -DROOM"
#endif

/* Recipients: one, or the two members of the room. */
#ifdef ROOM
#define NR 2
#else
#define NR 1
#endif

/* Sequence numbers are 1..d_top[r]. A correct server queues every message
 * once per recipient, so d_top[r] <= N_MSGS; the arrays have room for
 * duplicates so that the buggy variants run into an assertion rather than
 * an array bound. */
#define MAX_SEQ (2 * N_MSGS)

/* The TCP connections of the model (fixed roles). */
#define SC 0    /* sender   <-> server */
#define RC 1    /* recipient r <-> server is connection RC + r */
#define NCONN (RC + NR)

/* Per-recipient arrays are flattened: entry (r, i). */
#define QENT(r, s)  d_q[(r) * (MAX_SEQ + 1) + (s)]
#define ASSIGNED(r, s) g_assigned[(r) * (MAX_SEQ + 1) + (s)]
#define SEEN(r, k)  app_seen[(r) * (N_MSGS + 1) + (k)]

/* Frames. Payloads are abstracted to two small integers a, b:
 *   HELLO      -          WELCOME    -
 *   LOGIN      kind, last_seq          (kind PASSWORD or TOKEN; last_seq is
 *                                       LOGIN's LAST_SEQ, 0 when absent)
 *   AUTH_OK    last_seq               (highest seq the user has acked)
 *   ERROR      -                      (non-fatal: resume token refused)
 *   SEND       cmid                   (client message id)
 *   ACK        cmid, msg_id           (msg_id >= 1: OUTCOME stored, msg_id =
 *                                      server id; msg_id 0: OUTCOME refused,
 *                                      CODE QUOTA, no MSG_ID)
 *   DELIVER    seq, cmid              (cmid stands for the message body)
 *   DELIVERED  seq                    (cumulative)
 */
mtype = { HELLO, WELCOME, LOGIN, AUTH_OK, ERROR, SEND, ACK, DELIVER, DELIVERED };

/* IMP-MSG-004: LOGIN carries exactly one of PASSWORD and TOKEN. The model's
 * LOGIN has one credential field whose value says which; the server asserts
 * it is one of the two. */
#define PASSWORD 1
#define TOKEN    2

/* A connection is a pair of FIFO channels (TCP: reliable and ordered while
 * it lasts). The capacity is large enough that no send ever blocks (out()
 * asserts it): e.g. AUTH_OK followed by N_MSGS DELIVERs, unread. */
#ifndef QSIZE
#define QSIZE (N_MSGS + 1)
#endif
chan c2s[NCONN] = [QSIZE] of { mtype, byte, byte };   /* client -> server */
chan s2c[NCONN] = [QSIZE] of { mtype, byte, byte };   /* server -> client */
bool conn_up[NCONN];                                  /* TCP connection open */

/* ---------------- server: durable store (survives restart) ---------------- */
byte d_top[NR];              /* last sequence number assigned to recipient r */
byte d_acked[NR];            /* recipient r's acked mark: max DELIVERED seen */
byte d_q[NR * (MAX_SEQ + 1)];/* QENT(r, seq) = cmid queued for r under seq,
                              * 0 = none/deleted (cmid stands for the body) */
byte d_msgid[N_MSGS + 1];    /* dedupe table: cmid -> msg_id, 0 = not stored.
                              * Direct messages: msg_id = the recipient's seq.
                              * Rooms: msg_id = the room's own counter. */
#ifdef ROOM
byte d_mtop;                 /* last room msg_id assigned (room order) */
#endif

/* ---------------- server: volatile state (lost on restart) ---------------- */
#define S_NONE   0           /* connected, no HELLO yet (or no connection) */
#define S_HELLO  1           /* WELCOME sent, not authenticated */
#define S_READY  2           /* AUTH_OK sent */
byte sess[NCONN];            /* per-connection session state */
byte sent_upto[NR];          /* recipient r's session: highest seq DELIVERed on it */
byte pend_ack;               /* sender session: cmid whose ACK is still to be sent */
#ifdef BUG_ACK_BEFORE_STORE
byte pend_store;             /* cmid ACKed but not yet written to the store */
#endif
#ifdef BUG_RESUME_FROM_SENT
byte user_sent[NR];          /* per-user (not per-connection) "sent up to" */
#endif
#ifdef BUG_VOLATILE_SEQ
byte v_seq[NR];              /* next-seq counter kept only in memory */
#endif

/* ---------------- clients ---------------- */
bool s_acked[N_MSGS + 1];    /* sender: ACK (stored) received, message discarded */
#ifdef QUOTA
bool s_refused[N_MSGS + 1];  /* sender: ACK (refused, QUOTA) received; the
                              * application is told and the message is not
                              * retried (sending it again later would be a
                              * new message) */
#define ANSWERED(k) (s_acked[k] || s_refused[k])
#else
#define ANSWERED(k) (s_acked[k])
#endif
bool s_done;                 /* sender finished and closed its connection */
bool r_done[NR];             /* recipient r finished and closed its connection */
byte app_last[NR];           /* recipient r's app: highest seq processed */
byte app_seen[NR * (N_MSGS + 1)]; /* SEEN(r, cmid): times r's app processed it */

/* ---------------- fault budget ---------------- */
byte drops, restarts;

/* ---------------- ghost (specification-only) variables ---------------- */
bool g_ready[NCONN];         /* AUTH_OK was sent on the current connection c.
                              * Set only where AUTH_OK is sent, cleared by the
                              * connection lifecycle, independent of sess[]. */
bool g_acked[N_MSGS + 1];    /* the server has sent ACK (stored) for cmid */
byte g_msgid[N_MSGS + 1];    /* msg_id carried by the first ACK for cmid */
byte g_assigned[NR * (MAX_SEQ + 1)]; /* ASSIGNED(r, seq): times seq was
                              * assigned in recipient r's sequence */
byte g_nacks;                /* messages ACKed (stored) so far: first ACKs */
#if defined(QUOTA) && ORDER_CHECKS
byte g_lastcm;               /* cmid the app processed last */
#endif
#ifdef ROOM
byte g_lastmid[NR];          /* room msg_id member r's app processed last */
#endif

#if NR > 1
#define all_done (s_done && r_done[0] && r_done[1])
#else
#define all_done (s_done && r_done[0])
#endif

/* Every frame is sent with out(): the channel capacities are meant never to
 * block a sender (that would split an atomic step), and this checks it. */
inline out(q, t, x, y) {
	assert(nfull(q));
	q!t, x, y
}

/* ======================================================================== */
/* Connection lifecycle                                                     */
/* ======================================================================== */

inline flush(q) {
	do
	:: nempty(q) -> q?_, _, _
	:: empty(q) -> break
	od
}

/* Connection c (of recipient r, when c != SC) is gone: frames in flight in
 * both directions are lost, and the server's per-connection session state
 * goes with it. Used for faults, for server restarts and for a client
 * closing when it is finished. */
inline disconnect(c, r) {
	conn_up[c] = false;
	flush(c2s[c]);
	flush(s2c[c]);
	g_ready[c] = false;
#ifndef BUG_STALE_SESSION
	sess[c] = S_NONE;
#endif
	if
	:: c == SC -> pend_ack = 0
	:: else    -> sent_upto[r] = 0
	fi
}

/* Server crash and restart: every connection drops; everything volatile
 * is lost; the durable store (d_*) is kept. */
inline restart() {
	if :: conn_up[SC] -> disconnect(SC, 0) :: else fi;
	if :: conn_up[RC] -> disconnect(RC, 0) :: else fi;
#if NR > 1
	if :: conn_up[RC + 1] -> disconnect(RC + 1, 1) :: else fi;
	sess[RC + 1] = S_NONE;
	sent_upto[1] = 0;
#ifdef BUG_RESUME_FROM_SENT
	user_sent[1] = 0;
#endif
#ifdef BUG_VOLATILE_SEQ
	v_seq[1] = 0;
#endif
#endif
	sess[SC] = S_NONE;
	sess[RC] = S_NONE;
	pend_ack = 0;
	sent_upto[0] = 0;
#ifdef BUG_ACK_BEFORE_STORE
	pend_store = 0;
#endif
#ifdef BUG_RESUME_FROM_SENT
	user_sent[0] = 0;
#endif
#ifdef BUG_VOLATILE_SEQ
	v_seq[0] = 0;
#endif
}

/* ======================================================================== */
/* Server                                                                   */
/* ======================================================================== */

/* Store invariants, checked after every change of the store, for every
 * recipient r:
 *  - IMP-DELIV-002: sequence numbers are contiguous: 1..d_top[r] were each
 *    assigned exactly once and nothing above d_top[r] was assigned;
 *  - IMP-DELIV-003: a message stays queued until acknowledged: every seq in
 *    (d_acked[r], d_top[r]] holds a message, everything <= d_acked[r] is
 *    deleted;
 *  - the ack mark never passes the last assigned seq, nor what the
 *    recipient application has actually processed. */
inline check_store() {
	j = 0;
	do
	:: j < NR ->
		i = 1;
		do
		:: i <= MAX_SEQ ->
			assert(ASSIGNED(j, i) == (i <= d_top[j] -> 1 : 0));
			assert((i > d_acked[j] && i <= d_top[j]) -> QENT(j, i) != 0 : QENT(j, i) == 0);
			i++
		:: else -> break
		od;
		assert(d_acked[j] <= d_top[j]);
		assert(d_acked[j] <= app_last[j]);
		j++
	:: else -> break
	od;
	i = 0;
	j = 0
}

/* IMP-DELIV-002: queue message cm for recipient r under the next number of
 * r's sequence, assigned now, when it is stored. */
inline enqueue(r, cm) {
	assert(d_top[r] < MAX_SEQ);
#ifdef BUG_VOLATILE_SEQ
	v_seq[r]++;
	d_top[r] = v_seq[r];
#else
	d_top[r]++;
#endif
	QENT(r, d_top[r]) = cm;
	ASSIGNED(r, d_top[r])++;
	printf("srv: commit cmid %d as seq %d of rcp%d\n", cm, d_top[r], r + 1)
}

/* Commit message cm to the durable store, with its queue entries. */
inline store(cm) {
#ifdef QUOTA
	/* IMP-DELIV-007: a message refused to the sender is never stored */
	assert(!s_refused[cm]);
#endif
#ifdef ROOM
	/* IMP-DELIV-008: a room message is stored once (one msg_id, in room
	 * order) and queued for every member, each with that member's own
	 * per-recipient seq (IMP-DELIV-002). */
	d_mtop++;
	d_msgid[cm] = d_mtop;
	printf("srv: room message cmid %d is msg_id %d\n", cm, d_mtop);
	j = 0;
	do
	:: j < NR ->
#ifdef BUG_ROOM_SINGLE_QUEUE
		if
		:: sess[RC + j] == S_READY -> enqueue(j, cm)
		:: else -> printf("srv: rcp%d is offline, not queued\n", j + 1)
		fi;
#else
		enqueue(j, cm);
#endif
		j++
	:: else -> break
	od;
	j = 0;
#else
	enqueue(0, cm);
	d_msgid[cm] = d_top[0];        /* msg_id = seq: one recipient */
#endif
	check_store()
}

/* Record a cumulative acknowledgement by recipient r up to n (IMP-DELIV-003):
 * acked = max(acked, n), durably; acknowledged messages may then be
 * deleted (we delete them). */
inline ack_upto(r, n) {
	/* IMP-DELIV-003: a DELIVERED above the highest seq ever assigned is
	 * BAD_REQUEST; the model's clients never send one */
	assert(n <= d_top[r]);
	if
	:: n > d_acked[r] ->
		printf("srv: rcp%d acked mark %d -> %d, delete seq <= %d\n", r + 1, d_acked[r], n, n);
		do
		:: d_acked[r] < n -> d_acked[r]++; QENT(r, d_acked[r]) = 0
		:: else -> break
		od;
		/* IMP-DELIV-003: the session's delivery position moves past the
		 * acked mark. The recipient session's delivery cursor must not
		 * point into the deleted part: a DELIVERED (e.g. a client's
		 * catch-up ack after AUTH_OK, IMP-DELIV-005) can overtake the
		 * redelivery of the tail. */
		if
		:: sent_upto[r] < d_acked[r] -> sent_upto[r] = d_acked[r]
		:: else
		fi
	:: else                        /* at or below the mark: no change */
	fi;
	check_store()
}

/* Send ACK(cm, id), OUTCOME stored. */
inline send_ack(cm, id) {
	printf("srv: ACK cmid %d msg_id %d (stored)\n", cm, id);
	/* IMP-DELIV-001, IMP-DELIV-007: ack means durable -- the message and
	 * its queue entries are committed, under this msg_id, before ACK */
	assert(d_msgid[cm] != 0 && d_msgid[cm] == id);
	/* IMP-DELIV-005: a retried SEND is answered with the first message's
	 * msg_id */
	assert(g_msgid[cm] == 0 || g_msgid[cm] == id);
#if ORDER_CHECKS
	/* IMP-DELIV-006: the server ACKs messages in the order it stored them
	 * (msg_id order), so delivery in seq order (asserted by the
	 * recipient) is delivery in the order of the ACKs */
	if
	:: g_msgid[cm] == 0 -> assert(id == g_nacks + 1); g_nacks++
	:: else
	fi;
#endif
	g_msgid[cm] = id;
	g_acked[cm] = true;
	out(s2c[SC], ACK, cm, id)
}

/* LOGIN on connection c, of recipient r when c != SC (a = kind,
 * b = LAST_SEQ). A resume token may have expired: then the answer is a
 * non-fatal ERROR and the client may retry (here with its password). A
 * password login always succeeds (wrong passwords are not modelled). */
inline login(c, r) {
	/* IMP-SESS-004: one LOGIN outstanding, on a connection past HELLO;
	 * IMP-SESS-005: after a refused LOGIN the server is back in AWAIT_AUTH
	 * (S_HELLO) and accepts another LOGIN */
	assert(sess[c] == S_HELLO);
	assert(a == PASSWORD || a == TOKEN);   /* IMP-MSG-004 */
	if
#if TOKEN_REFUSAL
	:: a == TOKEN ->
		/* IMP-SESS-005: non-fatal ERROR (TOKEN_INVALID); session state
		 * stays S_HELLO and the connection stays open */
		if
		:: c == SC -> printf("srv: sender's resume token refused (ERROR)\n")
		:: else    -> printf("srv: rcp%d's resume token refused (ERROR)\n", r + 1)
		fi;
		out(s2c[c], ERROR, 0, 0)
#endif
	:: true ->
		sess[c] = S_READY;
		g_ready[c] = true;
		if
		:: c != SC ->
			/* IMP-DELIV-004: LAST_SEQ acts as DELIVERED(LAST_SEQ) before
			 * the resume */
			ack_upto(r, b);
#ifdef BUG_RESUME_FROM_SENT
			sent_upto[r] = (user_sent[r] > d_acked[r] -> user_sent[r] : d_acked[r]);
#else
			/* IMP-DELIV-004: redeliver everything after the acked mark */
			sent_upto[r] = d_acked[r];
#endif
			printf("srv: rcp%d AUTH_OK LAST_SEQ=%d, deliver after seq %d\n", r + 1, d_acked[r], sent_upto[r]);
			out(s2c[c], AUTH_OK, d_acked[r], 0)
		:: else ->
			printf("srv: sender AUTH_OK\n");
			out(s2c[c], AUTH_OK, 0, 0)   /* the sender has no messages queued */
		fi
	fi
}

inline hello(c) {
#ifndef BUG_STALE_SESSION
	assert(sess[c] == S_NONE);
#endif
	sess[c] = S_HELLO;
	out(s2c[c], WELCOME, 0, 0)
}

/* SEND of a message the store does not hold yet. */
inline accept(cm) {
#ifdef BUG_ACK_BEFORE_STORE
	send_ack(cm, d_top[0] + 1);     /* ACK goes out before the commit */
	pend_store = cm
#else
	store(cm);                      /* IMP-DELIV-001: commit first ... */
	pend_ack = cm                   /* ... then ACK (separate step below) */
#endif
}

#ifdef QUOTA
/* IMP-DELIV-007: the recipient's offline queue (stored, unacknowledged
 * messages) is full. The SEND is refused with ACK OUTCOME refused, CODE
 * QUOTA, before anything is stored: this step changes nothing durable. */
inline over_quota(cm) {
#ifdef BUG_QUOTA_DROP
	printf("srv: queue full: cmid %d dropped, but ACKed as stored\n", cm);
	send_ack(cm, d_top[0] + 1)
#else
	printf("srv: SEND cmid %d refused: QUOTA (%d queued)\n", cm, d_top[0] - d_acked[0]);
	assert(d_msgid[cm] == 0);
	out(s2c[SC], ACK, cm, 0)
#endif
}
#endif

#ifdef QUOTA
#define QUEUE_FULL (d_top[0] - d_acked[0] >= QUOTA)
#endif
#ifdef BUG_QUOTA_BEFORE_DEDUPE
#define DEDUPE_FIRST (!QUEUE_FULL)   /* the quota is checked first */
#else
#define DEDUPE_FIRST true
#endif

#ifdef BUG_ACK_BEFORE_STORE
#define SENDER_IDLE (pend_ack == 0 && pend_store == 0)
#else
#define SENDER_IDLE (pend_ack == 0)
#endif

/* A frame from recipient r. */
inline from_recipient(r) {
	c2s[RC + r]?f, a, b;
	if
	:: f == HELLO -> hello(RC + r)
	:: f == LOGIN -> login(RC + r, r)
	:: f == DELIVERED ->
		/* IMP-SESS-004: DELIVERED only on an authenticated session */
		assert(sess[RC + r] == S_READY);
		ack_upto(r, a)                 /* IMP-DELIV-003 */
	:: else -> assert(false)
	fi;
	f = 0; a = 0; b = 0
}

/* IMP-DELIV-002, IMP-DELIV-004: push the next queued message to recipient
 * r's logged-in session, in increasing seq order. A write on a dropped
 * connection fails, hence conn_up. */
#define CAN_DELIVER(r) (sess[RC + (r)] == S_READY && conn_up[RC + (r)] && sent_upto[r] < d_top[r])
inline deliver(r) {
	sent_upto[r]++;
#ifdef BUG_RESUME_FROM_SENT
	user_sent[r] = sent_upto[r];
#endif
	printf("srv: DELIVER seq %d (cmid %d) to rcp%d\n", sent_upto[r], QENT(r, sent_upto[r]), r + 1);
	/* IMP-SESS-004: never DELIVER on a connection that has not logged in */
	assert(g_ready[RC + r]);
	/* IMP-DELIV-003: never a message at or below the acked mark (deleted) */
	assert(QENT(r, sent_upto[r]) != 0);
	out(s2c[RC + r], DELIVER, sent_upto[r], QENT(r, sent_upto[r]))
}

proctype Server() {
	mtype f;
	byte a, b, i, j;

	do
	/* A frame from the sender. One request at a time per connection: the
	 * next SEND is read once the previous one is answered. */
	:: atomic {
		nempty(c2s[SC]) && SENDER_IDLE ->
		c2s[SC]?f, a, b;
		if
		:: f == HELLO -> hello(SC)
		:: f == LOGIN -> login(SC, 0)
		:: f == SEND ->
			/* IMP-SESS-004: only an authenticated session may SEND */
			assert(sess[SC] == S_READY && a >= 1 && a <= N_MSGS);
			if
#ifndef BUG_SERVER_NO_DEDUPE
			:: d_msgid[a] != 0 && DEDUPE_FIRST ->
				/* IMP-DELIV-005: duplicate CLIENT_MSG_ID: not stored
				 * again, answered with the first msg_id (DUPLICATE) --
				 * also when the queue is full now (IMP-DELIV-007) */
				printf("srv: SEND cmid %d is a duplicate of msg_id %d\n", a, d_msgid[a]);
				pend_ack = a
#endif
#ifdef BUG_QUOTA_BEFORE_DEDUPE
			:: d_msgid[a] != 0 && QUEUE_FULL -> over_quota(a)
#endif
			:: else ->
#ifdef QUOTA
				if
				:: QUEUE_FULL -> over_quota(a)
				:: else -> accept(a)
				fi
#else
				accept(a)
#endif
			fi
		:: else -> assert(false)
		fi;
		f = 0; a = 0; b = 0
	   }

	/* A frame from a recipient. */
	:: atomic { nempty(c2s[RC]) -> from_recipient(0) }
#if NR > 1
	:: atomic { nempty(c2s[RC + 1]) -> from_recipient(1) }
#endif

	/* ACK a committed message (the commit happened in an earlier step, so
	 * a crash between commit and ACK is part of the model). */
	:: atomic {
		pend_ack != 0 ->
		send_ack(pend_ack, d_msgid[pend_ack]);
		pend_ack = 0
	   }

#ifdef BUG_ACK_BEFORE_STORE
	:: atomic {
		pend_store != 0 ->
		assert(d_msgid[pend_store] == 0);
		store(pend_store);
		pend_store = 0
	   }
#endif

	:: atomic { CAN_DELIVER(0) -> deliver(0) }
#if NR > 1
	:: atomic { CAN_DELIVER(1) -> deliver(1) }
#endif

	:: all_done -> break
	od
}

/* ======================================================================== */
/* Environment: connection drops and server restarts, bounded               */
/* ======================================================================== */

/* IMP-DELIV-004: a drop or a restart loses the frames in flight, including
 * DELIVERs not yet acknowledged; they are delivered again after login.
 * IMP-DELIV-007: a slow consumer that the server disconnects
 * (SLOW_CONSUMER) is a drop of its connection with its queued messages
 * kept -- exactly the recipient connection drop below. */
proctype Faults() {
	do
	:: atomic {
		!all_done && drops < MAX_DROPS && conn_up[SC] ->
		printf("FAULT: sender connection drops\n");
		drops++; disconnect(SC, 0)
	   }
	:: atomic {
		!all_done && drops < MAX_DROPS && conn_up[RC] ->
		printf("FAULT: rcp1 connection drops\n");
		drops++; disconnect(RC, 0)
	   }
#if NR > 1
	:: atomic {
		!all_done && drops < MAX_DROPS && conn_up[RC + 1] ->
		printf("FAULT: rcp2 connection drops\n");
		drops++; disconnect(RC + 1, 1)
	   }
#endif
	:: atomic {
		!all_done && restarts < MAX_RESTARTS ->
		printf("FAULT: server restarts (volatile state lost, connections dropped)\n");
		restarts++; restart()
	   }
	:: all_done -> break
	od
}

/* ======================================================================== */
/* Clients                                                                  */
/* ======================================================================== */

/* Every client wait also watches for the connection dropping (a failed
 * read); every client write is guarded by conn_up (a failed write). */

proctype Sender() {
	mtype f;
	byte a, b;
	byte next;          /* next cmid to (re)send on this session */
	byte nacked;        /* messages answered (ACKed stored or refused) so far */
	bool have_token;    /* a previous AUTH_OK gave a resume token */

connect:
	atomic {
		assert(!conn_up[SC]);
		printf("snd: connect, HELLO\n");
		conn_up[SC] = true; out(c2s[SC], HELLO, 0, 0)
	};
	if
	:: atomic { s2c[SC]?f, a, b -> assert(f == WELCOME); f = 0 }
	:: !conn_up[SC] -> goto connect
	fi;
relogin:
	/* IMP-MSG-004: exactly one credential, the token if it has one */
	if
	:: atomic { conn_up[SC] -> out(c2s[SC], LOGIN, (have_token -> TOKEN : PASSWORD), 0) }
	:: !conn_up[SC] -> goto connect
	fi;
	if
	:: atomic {
		s2c[SC]?f, a, b ->
		if
		/* IMP-SESS-005: after the non-fatal ERROR the client is back in
		 * CONNECTED and tries again, with its password */
		:: f == ERROR -> f = 0; have_token = false; goto relogin
		:: f == AUTH_OK -> f = 0; a = 0; have_token = true; next = 1
		/* IMP-SESS-004: nothing else may precede AUTH_OK */
		:: else -> assert(false)
		fi
	   }
	:: !conn_up[SC] -> goto connect
	fi;

	/* Logged in (IMP-SESS-004: SEND only now): (re)send every message not
	 * yet answered, in order, pipelined; collect ACKs. IMP-DELIV-005: a
	 * retry after a lost connection reuses the message's CLIENT_MSG_ID. */
	do
	:: atomic {
		next <= N_MSGS && conn_up[SC] ->
		if
		:: !ANSWERED(next) ->
			printf("snd: SEND cmid %d\n", next);
			out(c2s[SC], SEND, next, 0)
		:: else
		fi;
		next++
	   }
	:: atomic {
		s2c[SC]?f, a, b ->
		assert(f == ACK && a >= 1 && a <= N_MSGS && !ANSWERED(a));
		if
		:: b != 0 ->
			printf("snd: got ACK cmid %d msg_id %d, discard message\n", a, b);
			s_acked[a] = true          /* discard the message */
#ifdef QUOTA
		:: else ->
			/* IMP-DELIV-007: refused (QUOTA): never stored, never
			 * delivered; the sender knows and does not retry it */
			printf("snd: got ACK cmid %d refused (QUOTA), not retried\n", a);
			assert(d_msgid[a] == 0 && SEEN(0, a) == 0);
			s_refused[a] = true
#else
		:: else -> assert(false)       /* no refusals without a quota */
#endif
		fi;
		nacked++;
		f = 0; a = 0; b = 0
	   }
	:: nacked == N_MSGS -> break
	:: !conn_up[SC] -> goto connect
	od;

	atomic { s_done = true; disconnect(SC, 0) }
}

/* Model closure (not protocol): recipient r has everything it will get. */
#ifdef QUOTA
#define R_FINISHED(r) (s_done && app_last[r] == d_top[r] && d_acked[r] == d_top[r])
#else
#define R_FINISHED(r) (app_last[r] == N_MSGS && d_acked[r] == N_MSGS)
#endif

/* Each login of a recipient chooses at random whether LOGIN carries
 * LAST_SEQ -- except in the room configuration, where member 1 always
 * passes it and member 2 never does (and relies on the catch-up ack,
 * IMP-DELIV-005): both resume paths are checked per member, with a third
 * less state space. */
#ifdef ROOM
#define MAY_PASS_LAST_SEQ(r) ((r) == 0)
#define MAY_OMIT_LAST_SEQ(r) ((r) == 1)
#else
#define MAY_PASS_LAST_SEQ(r) true
#define MAY_OMIT_LAST_SEQ(r) true
#endif

/* Recipient r (a room member with -DROOM), on connection RC + r. */
proctype Recipient(byte r) {
	mtype f;
	byte a, b;
	bool have_token;
	bool need_ack;      /* processed something not yet DELIVERED */

connect:
	atomic {
		assert(!conn_up[RC + r]);
		printf("rcp%d: connect, HELLO\n", r + 1);
		conn_up[RC + r] = true; out(c2s[RC + r], HELLO, 0, 0)
	};
	if
	:: atomic { s2c[RC + r]?f, a, b -> assert(f == WELCOME); f = 0 }
	:: !conn_up[RC + r] -> goto connect
	fi;
relogin:
	if
	/* IMP-DELIV-004: LOGIN's LAST_SEQ is optional: with it, the server
	 * first treats it as DELIVERED(LAST_SEQ); without it (0), the server
	 * redelivers from its acked mark, which may include messages the app
	 * already processed. IMP-MSG-004: one credential. */
	:: atomic {
		conn_up[RC + r] && MAY_PASS_LAST_SEQ(r) ->
		printf("rcp%d: LOGIN with LAST_SEQ=%d\n", r + 1, app_last[r]);
		out(c2s[RC + r], LOGIN, (have_token -> TOKEN : PASSWORD), app_last[r])
	   }
	:: atomic {
		conn_up[RC + r] && MAY_OMIT_LAST_SEQ(r) ->
		printf("rcp%d: LOGIN without LAST_SEQ\n", r + 1);
		out(c2s[RC + r], LOGIN, (have_token -> TOKEN : PASSWORD), 0)
	   }
	:: !conn_up[RC + r] -> goto connect
	fi;
	if
	:: atomic {
		s2c[RC + r]?f, a, b ->
		if
		/* IMP-SESS-005: back to CONNECTED, try again with the password */
		:: f == ERROR -> f = 0; have_token = false; goto relogin
		:: f == AUTH_OK ->
			/* the server's ack mark never exceeds what the app processed */
			assert(a <= app_last[r]);
#ifdef BUG_NO_CATCHUP
			need_ack = false;
#else
			/* IMP-DELIV-005: catch-up: processed messages the server
			 * does not know about (a DELIVERED lost with the old
			 * connection, no LAST_SEQ) are acknowledged right away */
			need_ack = (a < app_last[r]);
#endif
			f = 0; a = 0; have_token = true
		/* IMP-SESS-004: in particular no DELIVER before AUTH_OK */
		:: else -> assert(false)
		fi
	   }
	:: !conn_up[RC + r] -> goto connect
	fi;

	do
	:: atomic {
		s2c[RC + r]?f, a, b ->
		assert(f == DELIVER);
		if
#ifndef BUG_NO_DEDUPE
		:: a <= app_last[r] ->
			/* IMP-DELIV-005: redelivery: already processed, ignore
			 * (acknowledged by the catch-up ack or by the DELIVERED
			 * that covers the later messages) */
			printf("rcp%d: ignore duplicate seq %d\n", r + 1, a)
#endif
		:: else ->
			printf("rcp%d: app processes seq %d (cmid %d)\n", r + 1, a, b);
			/* IMP-DELIV-002, IMP-DELIV-005: the application sees every
			 * message once, in seq order without gaps */
			assert(a == app_last[r] + 1);
			assert(b >= 1 && b <= N_MSGS && SEEN(r, b) == 0);
#if defined(ROOM)
			/* IMP-DELIV-006, IMP-DELIV-008: every member sees every room
			 * message, in room order (msg_id ascending, no gaps: the
			 * membership does not change in the model) */
			assert(d_msgid[b] == g_lastmid[r] + 1);
			g_lastmid[r] = d_msgid[b];
#elif defined(QUOTA)
			/* IMP-DELIV-007: a refused message is never delivered */
			assert(!s_refused[b]);
#if ORDER_CHECKS
			/* IMP-DELIV-006: in the order the sender sent them (and the
			 * server ACKed them), skipping refused messages */
			assert(b > g_lastcm);
			g_lastcm = b;
#endif
#else
			/* IMP-DELIV-006: in the order the sender sent them (the
			 * order the server ACKed them) */
			assert(b == app_last[r] + 1);
#endif
			SEEN(r, b)++;
			app_last[r] = a;
			need_ack = true
		fi;
		f = 0; a = 0; b = 0
	   }
	/* IMP-DELIV-003: cumulative ack, possibly covering several DELIVERs */
	:: atomic {
		need_ack && conn_up[RC + r] ->
		printf("rcp%d: DELIVERED %d\n", r + 1, app_last[r]);
		out(c2s[RC + r], DELIVERED, app_last[r], 0);
		need_ack = false
	   }
	:: !conn_up[RC + r] -> goto connect
	/* Model closure (not protocol): a real client stays online; the model
	 * lets the recipient leave once everything is processed and the server
	 * has recorded the acknowledgement durably. */
	:: atomic { R_FINISHED(r) -> r_done[r] = true; disconnect(RC + r, r); break }
	od
}

/* ======================================================================== */
/* Properties                                                               */
/* ======================================================================== */

init {
	byte k, r;

	/* (Faults gets the lowest pid: pan's depth-first search tries higher
	 * pids first, so counterexamples use faults only where they matter.) */
	atomic {
		run Faults();
		run Server();
		run Sender();
		run Recipient(0)
#if NR > 1
		; run Recipient(1)
#endif
	};

	/* End-state check: the system terminates (an invalid end state is a
	 * deadlock), and when it does:
	 *  - IMP-DELIV-003: every recipient acknowledged everything queued for
	 *    it, and the store is drained;
	 *  - IMP-DELIV-001, IMP-DELIV-005, IMP-DELIV-007: every message ACKed
	 *    as stored was processed by every recipient application exactly
	 *    once (IMP-DELIV-008: every room member);
	 *  - IMP-DELIV-007: the sender knows every message's fate: each is
	 *    ACKed stored or refused, never both, and a refused one was never
	 *    stored, ACKed as stored or processed. */
	_nr_pr == 1;
	r = 0;
	do
	:: r < NR ->
		assert(d_acked[r] == d_top[r] && app_last[r] == d_top[r]);
#ifndef QUOTA
		assert(d_top[r] == N_MSGS);
#endif
		r++
	:: else -> break
	od;
	k = 1;
	do
	:: k <= N_MSGS ->
#ifdef QUOTA
		assert(s_acked[k] != s_refused[k]);
		assert(s_acked[k] -> (g_acked[k] && SEEN(0, k) == 1)
		                  : (!g_acked[k] && d_msgid[k] == 0 && SEEN(0, k) == 0));
#else
		assert(s_acked[k] && g_acked[k]);
		r = 0;
		do
		:: r < NR -> assert(SEEN(r, k) == 1); r++
		:: else -> break
		od;
#endif
		k++
	:: else -> break
	od
}

/* Liveness (IMP-DELIV-001, IMP-DELIV-004, IMP-DELIV-007: no silent loss):
 * every message the server ACKed as stored is eventually processed by the
 * recipient application -- with -DROOM by every member's application
 * (IMP-DELIV-008), including a member that was offline when it was sent --
 * given bounded drops/restarts, after which the recipients keep their
 * connections. */
#if NR > 1
ltl delivered1 { [] (g_acked[1] -> (<> (SEEN(0, 1) == 1) && <> (SEEN(1, 1) == 1))) }
#if N_MSGS >= 2
ltl delivered2 { [] (g_acked[2] -> (<> (SEEN(0, 2) == 1) && <> (SEEN(1, 2) == 1))) }
#endif
#if N_MSGS >= 3
ltl delivered3 { [] (g_acked[3] -> (<> (SEEN(0, 3) == 1) && <> (SEEN(1, 3) == 1))) }
#endif
#else
ltl delivered1 { [] (g_acked[1] -> <> (SEEN(0, 1) == 1)) }
#if N_MSGS >= 2
ltl delivered2 { [] (g_acked[2] -> <> (SEEN(0, 2) == 1)) }
#endif
#if N_MSGS >= 3
ltl delivered3 { [] (g_acked[3] -> <> (SEEN(0, 3) == 1)) }
#endif
#if N_MSGS >= 4
ltl delivered4 { [] (g_acked[4] -> <> (SEEN(0, 4) == 1)) }
#endif
#endif

/* Liveness: the exchange completes -- every message is answered to the
 * sender (IMP-DELIV-007: ACKed stored or refused, so the sender knows its
 * fate), processed, and acknowledged to the server (IMP-DELIV-003), which
 * can then delete it. */
#if NR > 1
ltl complete { <> (s_done && r_done[0] && r_done[1] && d_acked[0] == N_MSGS && d_acked[1] == N_MSGS) }
#elif defined(QUOTA)
ltl complete { <> (s_done && r_done[0] && d_acked[0] == d_top[0]) }
#else
ltl complete { <> (s_done && r_done[0] && d_acked[0] == N_MSGS) }
#endif
