/* imd — internal structures of the server core (server.c, session.c, deliver.c, rooms.c,
 * presence.c). Not a public interface: the network layer uses server.h only.
 */
#ifndef IMS_CORE_H
#define IMS_CORE_H

#include <stddef.h>
#include <stdint.h>

#include <imp/imp.h>

#include "auth.h"
#include "bus.h"
#include "config.h"
#include "server.h"
#include "store.h"

#define IMS_WINDOW 1000   /* unacknowledged DELIVERs in flight per session at most */
#define IMS_READ_PAGE 64  /* queue entries read from the store at a time */
#define IMS_SUBS_MAX 1000 /* presence subscriptions per session */
#define IMS_CLIENT_BUCKETS 1024
#define IMS_USER_BUCKETS 1024
/* Rooms whose member ids are kept for transient fan-out, and for how long (rooms.c). */
#define IMS_ROOM_CACHE 256
#define IMS_ROOM_CACHE_MS 1000
#define IMS_TRANSIENT_ID_BIT (UINT64_C(1) << 63) /* MSG_IDs of transient messages */

/* Counters and gauges (ims_server_stats names in ims_stat_names, same order). */
enum ims_stat {
    ST_CONNECTIONS = 0, /* gauge */
    ST_CONNECTIONS_TOTAL,
    ST_SESSIONS,     /* gauge */
    ST_USERS_ONLINE, /* gauge */
    ST_LOGINS_OK,
    ST_LOGINS_FAILED,
    ST_REGISTRATIONS,
    ST_MSGS_IN,
    ST_MSGS_STORED,
    ST_MSGS_DELIVERED,
    ST_MSGS_REFUSED,
    ST_MSGS_DUPLICATE,
    ST_TRANSIENT_IN,
    ST_TRANSIENT_DELIVERED,
    ST_TRANSIENT_DROPPED,
    ST_BYTES_IN,
    ST_BYTES_OUT,
    ST_HASH_PENDING, /* gauge */
    ST_HASH_BUSY,
    ST_STORE_COMMITS,
    ST_STORE_COMMIT_FAILURES,
    ST_STORE_COMMIT_MS_TOTAL,
    ST_STORE_COMMIT_MS_MAX,
    ST_ACCEPT_ERRORS,
    ST_MONITOR_DROPPED,
    ST_CLOSE_PEER,
    ST_CLOSE_LOGOUT,
    ST_CLOSE_PROTOCOL,
    ST_CLOSE_AUTH_TIMEOUT,
    ST_CLOSE_PING_TIMEOUT,
    ST_CLOSE_SLOW_CONSUMER,
    ST_CLOSE_SERVER_FULL,
    ST_CLOSE_BANNED,
    ST_CLOSE_SHUTDOWN,
    ST_CLOSE_KICKED,
    ST_CLOSE_OTHER,
    ST_HASH_RUNNING_MAX,    /* gauge: most password hashes running at once since start (auth.c) */
    ST_STORE_SYNCS,         /* fsync_thread: fsyncs of the log that released batches */
    ST_STORE_SYNC_FAILURES, /* fsync_thread: failed fsyncs (their batches were refused) */
    ST_STORE_CHECKPOINTS,   /* fsync_thread: checkpoints run by the syncer */
    ST_STORE_LOG_FRAMES,    /* gauge: frames in the write-ahead log at the last checkpoint */
    ST_LOOP_LAG_PROBES,     /* loop_probe_ms (auth.h ims_loop_lag): probes served */
    ST_LOOP_LAG_US_TOTAL,   /* sum of their lags, microseconds */
    ST_LOOP_LAG_US_MAX,     /* the worst lag since the start */
    ST_LOOP_PROBE_WAKE_US_MAX, /* of the worst: the probe thread's own part */
    ST_LOOP_SERVE_US_MAX,      /* the worst from the probe's wake-up call to the loop serving it */
    ST_LOOP_LAG_OVER_1MS,      /* probes served more than 1 ms late */
    ST_LOOP_LAG_OVER_10MS,
    ST_LOOP_LAG_OVER_50MS,
    ST_COUNT
};

typedef struct ims_ouser ims_ouser;

/* Where a client is in authentication (beyond what its imp_conn says). */
enum { CL_PREAUTH = 0, CL_HASHING, CL_READY };

/* Login-time state: from LOGIN/REGISTER until the password hash's result (session.c). */
typedef struct ims_authing {
    uint64_t last_seq; /* LOGIN's LAST_SEQ */
    uint32_t req;
    uint8_t reg;          /* REGISTER (else LOGIN) */
    uint8_t has_last_seq; /* LOGIN had LAST_SEQ */
    char user[33];        /* folded */
} ims_authing;

/* Kept small (issue 3: 10,000 idle logged-in connections, <= 1 KiB of server memory each):
 * 119 bytes before the peer's text, which is in the same allocation (offsetof(ims_client,
 * peer) + its length + 1: a 144-byte glibc chunk for "127.0.0.1:54321"); login-time state in
 * a block of its own while the hash runs, sharing its pointer with the presence
 * subscriptions (never both: auth only while CL_HASHING, subs only once CL_READY); flags in
 * bit fields. */
struct ims_client {
    ims_server *srv;
    uint64_t id; /* unique, never reused: the hash pool's cookie */
    void *io;
    imp_conn *conn;
    ims_client *next, *prev; /* all clients */
    ims_client *hnext;       /* id hash chain */
    union {
        ims_authing *auth; /* malloc'd while CL_HASHING, else NULL */
        char (*subs)[33];  /* CL_READY: presence subscriptions (folded names), or NULL */
    };
    /* session */
    ims_ouser *u;
    ims_client *unext; /* the user's other sessions (SESSION_ID is AUTH_OK's only) */
    uint64_t sent;     /* highest SEQ sent on this session (delivery cursor - 1) */
    /* flow control */
    uint64_t soft_since; /* mono ms since the output is over output_soft, 0 = under */
    double tokens;       /* rate limit bucket */
    uint64_t tokens_ms;
    uint16_t reason;      /* close reason counted (wire code), 0 while open */
    unsigned nsubs : 11;  /* presence subscriptions (at most IMS_SUBS_MAX) */
    unsigned phase : 2;   /* CL_* */
    unsigned ended : 1;   /* session ended (presence, delivery) */
    unsigned monitor : 1; /* MONITOR on */
    unsigned active : 1;  /* input or output since the last tick (idle: buffers released) */
    uint16_t mark;        /* recipient de-duplication during presence fan-out (presence.c) */
    uint8_t addr_len;     /* the address (peer without the port: the per-address limit and */
                          /* throttle key): addr_len bytes at peer + (peer[0] == '[') */
    char peer[];          /* "[v6 address]:port", at most 63 bytes, NUL-terminated */
};
_Static_assert(IMS_SUBS_MAX < (1 << 11), "ims_client.nsubs is 11 bits");

/* A user with at least one session on this server (71 bytes and the name: issue 3). */
struct ims_ouser {
    int64_t id;
    uint64_t last_seq, acked; /* mirrors of the store (IMP-DELIV-002/003) */
    ims_client *sessions;
    char *status_text; /* malloc'd, at most 256 bytes; NULL: none */
    ims_ouser *dnext;
    ims_ouser *hnext; /* id hash chain */
    ims_ouser *nnext; /* name hash chain */
    int nsessions;
    uint8_t admin;
    uint8_t status; /* IMP_STATUS_* */
    uint8_t dirty;  /* delivery to do at the end of the turn */
    char name[];    /* at most 32 bytes and the NUL: allocated to fit (issue 3, idle memory) */
};

/* An ACK held until the turn's commit (IMP-DELIV-001), or waiting for DELIVERED (ACK_MODE 2). */
typedef struct ims_held {
    uint64_t client; /* client id of the sender */
    uint32_t req;
    char cmid[65];
    int64_t msg_id;
    int code;      /* > 0: refused with this code; 0: accepted */
    int duplicate; /* answer with DUPLICATE 1 */
    int mode;      /* ACK_MODE */
    int lost;      /* ACK_MODE 2: a recipient went offline before acknowledging */
    /* ACK_MODE 2: recipients online at send time, with the seq each must acknowledge */
    int nwait;
    int64_t *wait_user;
    uint64_t *wait_seq;
    struct ims_held *next;
} ims_held;

struct ims_server {
    ims_cfg cfg;
    ims_store *store;
    ims_auth *auth;
    ims_throttle *throttle;
    ims_bus *bus;
    ims_io_ops io;
    ims_clock clock;
    char version[65];
    uint8_t caps[64];
    size_t caps_len;
    ims_client *clients;
    ims_client *cbucket[IMS_CLIENT_BUCKETS];
    ims_ouser *ubucket[IMS_USER_BUCKETS];
    ims_ouser *nbucket[IMS_USER_BUCKETS]; /* the same users by name */
    ims_ouser *dirty;
    ims_held *held, **held_tail; /* ACKs of this turn, in order */
    ims_held *waiting;           /* ACK_MODE 2 */
    struct ims_note {
        int64_t user_id;
        uint64_t seq;
    } * notes; /* queues grown in this turn, published on the bus after the commit */
    size_t nnotes, capnotes;
    /* deferred LOGOUT (IMP-SESS-008): clients whose OK to LOGOUT waits for their ACKs held for
     * a commit or an fsync (held, batches), with LOGOUT's request id. Kept here, not in the
     * clients (issue 3: an idle client's bytes); allocated only while one is pending. */
    struct ims_logout {
        uint64_t client; /* client id */
        uint32_t req;
    } * logouts;
    size_t nlogouts, caplogouts;
    ims_client *cur;    /* the client whose input is being handled */
    int64_t wall_cache; /* ims_now_wall while cur's input is handled (wall_cached) */
    int wall_cached;
    uint64_t next_client_id;
    int n_open; /* clients in the list not closing (reason 0): ims_server_accept's limit */
    uint64_t next_session_id;
    uint64_t next_transient_id;
    /* the DELIVER of the transient message being fanned out, encoded once (deliver.c) */
    imp_prepared *tprep;
    int64_t tprep_id;
    unsigned mark;   /* presence.c: 1..UINT16_MAX (ims_client.mark) */
    int monitors;    /* sessions with MONITOR on (monitor events cost nothing without) */
    int subscribers; /* sessions with presence subscriptions */
    int shutting_down;
    int (*commit)(void *ud, ims_store *s);
    void *commit_ud;
    /* fsync_thread (syncer.h): the turns' held ACKs and queue notes, committed but not yet on
     * disk, oldest first; each waits for the fsync of its store batch (gen). */
    struct ims_syncer *syncer;
    struct ims_batch {
        uint64_t gen;
        int ok; /* 0: the commit failed: every held ACK becomes a STORAGE refusal */
        ims_held *held;
        struct ims_note *notes;
        size_t nnotes;
        struct ims_batch *next;
    } * batches, **batches_tail;
    uint64_t sync_asked;
    /* transient room fan-out: member ids per room (rooms.c, ims_room_members) */
    struct ims_room_cache {
        char name[33]; /* "" = empty slot */
        int64_t *ids;  /* ascending */
        size_t n;
        uint64_t loaded_ms;
    } rcache[IMS_ROOM_CACHE];
    uint64_t last_expire_ms;
    uint64_t dedupe_next_ms; /* next dedupe expiry pass (monotonic ms) */
    uint64_t st[ST_COUNT];
};

extern const char *const ims_stat_names[ST_COUNT];

/* ---- server.c ---------------------------------------------------------------------------- */
uint64_t ims_now_mono(ims_server *srv);
int64_t ims_now_wall(ims_server *srv);
ims_client *ims_client_by_id(ims_server *srv, uint64_t id);
/* c's address (its peer without the port), NUL-terminated in buf; returns buf. */
const char *ims_client_addr(const ims_client *c, char buf[64]);
ims_ouser *ims_ouser_find(ims_server *srv, int64_t id);
/* An online (or pending-delivery) user by folded name, NULL if not in memory. */
ims_ouser *ims_ouser_find_name(ims_server *srv, const char *name);
/* Sets (n > 0) or clears (n == 0) the user's status text. */
void ims_ouser_set_status_text(ims_ouser *u, const uint8_t *p, size_t n);
ims_ouser *ims_ouser_get(ims_server *srv, const ims_user *u); /* finds or creates */
void ims_ouser_release(ims_server *srv, ims_ouser *u);        /* frees when no session */
void ims_ouser_dirty(ims_server *srv, ims_ouser *u);
/* Queues a frame for c; handles an output cap overrun (slow consumer). 0 or < 0. */
int ims_client_send(ims_client *c, const imp_msg *m);
/* The same for a frame encoded once for many clients (fan-out): its bytes copied. */
int ims_client_send_prepared(ims_client *c, const imp_prepared *p);
/* The same, queued by reference (imp_conn_send_shared: written from the one frame). */
int ims_client_send_shared(ims_client *c, imp_prepared *p);
int ims_client_error(ims_client *c, uint32_t req, int code, const char *text,
                     uint32_t retry_after_ms);
int ims_client_ok(ims_client *c, uint32_t req, int has_count, uint32_t count, int more);
/* Decides to close c: ERROR code (when fatal and sendable), counted, session ended. */
void ims_client_close(ims_client *c, int code, const char *text);
void ims_client_wake(ims_client *c);
int ims_client_ready(const ims_client *c);
void ims_monitor(ims_server *srv, const char *event, const char *user, const char *text);
/* Copies a name field folded into out[33]; 0 or IMP_ERR_BAD_NAME. */
int ims_fold(imp_bytes b, char out[33]);

/* ---- session.c --------------------------------------------------------------------------- */
void ims_session_register(ims_client *c, const imp_msg *m);
void ims_session_login(ims_client *c, const imp_msg *m);
void ims_session_auth_result(void *ud, const ims_auth_result *r);
/* The session of c ends (close, logout): presence, ACK waits. Idempotent. */
void ims_session_end(ims_client *c);

/* ---- deliver.c --------------------------------------------------------------------------- */
void ims_deliver_send(ims_client *c, const imp_msg *m);
void ims_deliver_delivered(ims_client *c, const imp_msg *m);
/* Sends queued messages to c within the window and the output soft cap (never inside an
 * uncommitted batch: IMP-DELIV-001). */
void ims_deliver_pump(ims_client *c);
/* After the commit: held ACKs out (or turned into STORAGE refusals when ok == 0), then the
 * dirty users' deliveries. */
void ims_deliver_flush(ims_server *srv, int commit_ok);
/* ---- rooms.c ------------------------------------------------------------------------------ */
/* The member ids of room (ascending) for a transient message from user_id: 0, or
 * IMP_ERR_NOT_MEMBER, IMP_ERR_NO_SUCH_ROOM, IMP_ERR_STORAGE. *ids belongs to the cache: valid
 * until the next call into rooms.c or the end of the turn. Read from the store at most every
 * IMS_ROOM_CACHE_MS per room, and at once after a JOIN or LEAVE through this server (other
 * processes' changes, e.g. `imd user del`, show within IMS_ROOM_CACHE_MS). */
int ims_room_members(ims_server *srv, const char *room, int64_t user_id, const int64_t **ids,
                     size_t *n);
/* Forgets the cached members of room (NULL: of every room). */
void ims_room_forget(ims_server *srv, const char *room);

/* Notes that uid's queue grew to seq in this turn (published on the bus after the commit). */
void ims_note_add(ims_server *srv, int64_t uid, uint64_t seq);
void ims_deliver_forget_client(ims_server *srv, ims_client *c);
void ims_deliver_user_offline(ims_server *srv, ims_ouser *u);
void ims_deliver_acked(ims_server *srv, ims_ouser *u);
void ims_deliver_bus_event(void *ud, ims_bus_event *ev);
void ims_deliver_free(ims_server *srv);

/* ---- rooms.c ----------------------------------------------------------------------------- */
void ims_rooms_join(ims_client *c, const imp_msg *m);
void ims_rooms_leave(ims_client *c, const imp_msg *m);
void ims_rooms_members(ims_client *c, const imp_msg *m);
void ims_rooms_list(ims_client *c, const imp_msg *m);
void ims_rooms_history(ims_client *c, const imp_msg *m);
/* LIMIT of a paged request: absent or 0 = page_size, capped at page_max and at cap. */
int ims_page_limit(ims_server *srv, const imp_msg *m, int cap);

/* ---- presence.c -------------------------------------------------------------------------- */
void ims_presence_set(ims_client *c, const imp_msg *m);
void ims_presence_subscribe(ims_client *c, const imp_msg *m);
void ims_presence_who(ims_client *c, const imp_msg *m);
/* Tells subscribers and room peers of u its status (offline when u has no session). */
void ims_presence_announce(ims_server *srv, ims_ouser *u);

/* For main.c's busy poll (busy_poll_us, auth.h ims_busy_poll): a count that grows whenever the
 * network layer read or wrote bytes or accepted a connection (the loop did I/O). */
uint64_t ims_server_io_count(const ims_server *srv);

#endif
