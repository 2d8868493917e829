/* imd — the delivery bus: the seam for scale-out. Whatever makes a user's queue grow (a stored
 * message) or carries a transient message for a user is published here, and every server
 * process subscribed gets it and serves its own sessions of that user. bus_local.c is the
 * in-process implementation (one process: publish calls the subscribers at once); a Redis
 * pub/sub bus can implement the same operations later.
 *
 * Durable messages are never carried by the bus: it only says "user U has queued messages up
 * to seq S" (published after the commit, IMP-DELIV-001) and the subscriber reads them from the
 * shared store. Transient messages (never stored) travel whole.
 */
#ifndef IMS_BUS_H
#define IMS_BUS_H

#include <stddef.h>
#include <stdint.h>

#include "store.h"

typedef enum ims_bus_kind {
    IMS_BUS_QUEUED = 1,    /* user_id has queued messages up to seq */
    IMS_BUS_TRANSIENT,     /* msg for user_id, not stored (SEQ 0) */
    IMS_BUS_TRANSIENT_MANY /* msg for each of user_ids[0, n_users) (a room's members) */
} ims_bus_kind;

/* IMS_BUS_TRANSIENT_MANY (issue 3: room fan-out, one publish per room message instead of one
 * per member). The contract, for every bus implementation:
 * - It means exactly what n_users IMS_BUS_TRANSIENT events would, one per user_ids[i] in that
 *   order, with the same msg and origin: every subscriber serves its own sessions of each
 *   listed user (each online session but the origin gets msg once per listing of its user).
 *   user_id is not used (0).
 * - user_ids (n_users of them, n_users > 0) and msg are the publisher's, valid during publish
 *   only: a bus that hands the event on later (another process: a Redis bus publishes msg with
 *   the id list, or splits the list by the process or shard that serves each user) copies them.
 * - origin (for both transient kinds) is a connection id of the publishing process (ids start
 *   at 1): a bus that carries the event to other processes gives their subscribers origin 0
 *   (no session of theirs sent it), or it would exclude an unrelated connection there.
 * - ack_count: subscribers add the sessions they wrote to, as for IMS_BUS_TRANSIENT; a bus
 *   whose subscribers run elsewhere reports only what ran synchronously (the local ones).
 * - publish refuses IMP_ERR_INVAL (nothing delivered) when n_users > 0 without user_ids. */
typedef struct ims_bus_event {
    ims_bus_kind kind;
    int64_t user_id;
    uint64_t seq;            /* QUEUED */
    const ims_message *msg;  /* TRANSIENT*: valid during the callback only */
    uint64_t origin;         /* TRANSIENT*: the sending connection, which does not get it */
    int ack_count;           /* TRANSIENT*: set by subscribers, sessions written to */
    const int64_t *user_ids; /* TRANSIENT_MANY: the recipients (see above) */
    size_t n_users;
} ims_bus_event;

typedef void (*ims_bus_cb)(void *ud, ims_bus_event *ev);

typedef struct ims_bus ims_bus;

typedef struct ims_bus_ops {
    int (*publish)(ims_bus *b, ims_bus_event *ev);
    int (*subscribe)(ims_bus *b, ims_bus_cb cb, void *ud);
    void (*free)(ims_bus *b);
} ims_bus_ops;

struct ims_bus {
    const ims_bus_ops *ops;
};

/* 0 or a negative imp_err. */
int ims_bus_publish(ims_bus *b, ims_bus_event *ev);
int ims_bus_subscribe(ims_bus *b, ims_bus_cb cb, void *ud);
void ims_bus_free(ims_bus *b);

/* The in-process bus; NULL when out of memory. */
ims_bus *ims_bus_local_new(void);

#endif
