/*
 * repl: the replication engine (DESIGN.md, "Replication protocol"; issue 4).
 *
 * Three parts (repl_internal.h is what their files share):
 *
 *   repl_primary (the pusher: repl_primary.c, its state machine;
 *     repl_primary_status.c, the status view and its persistence;
 *     repl_primary_ops.c, saves, syncs and tests) runs on the primary: one
 *     persistent mTLS connection per replica of the membership (peer.h,
 *     reconnecting with backoff), Hello/State, then a Delta of the
 *     revisions the replica lacks, or a Snapshot when the history no
 *     longer reaches back (ERROR_COMPACTED), the replica is ahead, its
 *     hash differs at the same revision, it reported Diverged, or it has
 *     nothing yet (first sync). At most `snapshot_concurrency` snapshots
 *     are in flight at once; the others queue. Each replica is pushed on
 *     the schedule of repl_sched.h and right after a save (push_on_commit).
 *     A replica that answers Fenced means a newer primary exists: the
 *     pusher stops pushing to everyone and says so loudly. The status of
 *     every replica is kept in the store (store_repl_status_*), written at
 *     most every `status_flush_ms`, so it survives a restart.
 *
 *   repl_replica (repl_replica.c, the agent) runs on every node: it
 *     answers the frames that a member sends on the node's listener. A
 *     Hello from a lower epoch is answered Fenced and closed; from the
 *     primary of our epoch or a member of a higher epoch (a promoted
 *     node), it is answered State; Delta and Snapshot are applied in one
 *     write transaction each and answered Ack (or Diverged, the primary
 *     then repairing with a snapshot); StatusQuery is answered with this
 *     node's status; RunTest runs Test Connection here (conntest.h).
 *
 *   repl_node (repl_node.c; repl_node_role.c: membership, role,
 *     promotion, status) is a node's replication side, what the
 *     daemons run: the mTLS listener, authorization of every certificate
 *     at the handshake (an admin id of the configuration with its role, or
 *     a member of the replicated membership; anything else is refused and
 *     logged), admin requests to admin.h with the hooks implemented here,
 *     member frames to the agent, the pusher while this node is the
 *     primary, promotion, compaction, reloads.
 *
 * Roles are dynamic: a node is the primary while its store's membership
 * names it PRIMARY (and it was not fenced). A store without a membership
 * takes the daemon's: smtpsync-primary writes one from its configuration
 * (itself and its [replica] sections) whenever it is the primary, while
 * smtpsync-replica never writes one, it receives it (in a Hello or a
 * Snapshot). A promoted replica raises the epoch and rewrites the
 * membership (itself PRIMARY, the old primary REPLICA), and the others
 * follow the higher epoch.
 *
 * Everything runs on the loop's thread. Ownership is stated per function;
 * strings passed in params are copied unless said otherwise.
 */
#ifndef SMTPSYNC_REPL_H
#define SMTPSYNC_REPL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "admin.h"
#include "backoff.h"
#include "mtls.h"
#include "peer.h"
#include "repl_sched.h"
#include "smtpsync.pb-c.h"
#include "store.h"

#define REPL_KEEPALIVE_DEFAULT_MS      30000u
#define REPL_ANSWER_TIMEOUT_DEFAULT_MS 20000u
#define REPL_ANSWER_MIN_RATE           128u /* octets/ms (~1 Mbit/s) a push may take to send */
#define REPL_STATUS_FLUSH_DEFAULT_MS   1000u
#define REPL_LISTEN_IDLE_DEFAULT_MS    300000u
#define REPL_SNAPSHOTS_DEFAULT         4u
#define REPL_DELTA_MAX_REVISIONS       256u /* per Delta frame; more follow on its Ack */
#define REPL_ERROR_MAX                 256  /* a last_error, with its NUL */
#define REPL_ADDR_MAX                  PEER_ADDR_MAX

/* What [replication] sets, plus knobs tests turn. */
struct repl_tuning {
    uint64_t interval_ms;          /* scheduled push period */
    uint64_t jitter_ms;            /* random 0..jitter added to it */
    bool push_on_commit;           /* push right after each save */
    uint64_t history_keep;         /* revisions kept; 0: never compact */
    unsigned snapshot_concurrency; /* snapshots in flight at once; 0: 4 */
    uint64_t retry_initial_ms;     /* first retry after a failure; 0: 1 s */
    uint64_t keepalive_ms;         /* a quiet connection gets a StatusQuery; 0: 30 s */
    uint64_t answer_timeout_ms;    /* Hello/Delta/Snapshot unanswered this long (plus
                                    * its size at REPL_ANSWER_MIN_RATE): reconnect; 0: 20 s */
    uint64_t status_flush_ms;      /* persisted status written at most this often; 0: 1 s */
    /* The pusher's connections. idle_timeout_ms 0 means keepalive + answer
     * timeout: the replica answers every keepalive, so only a dead peer is
     * idle that long. */
    struct peer_params peer;
};

/* ---- repl_primary: the pusher ------------------------------------------- */

struct repl_primary;

struct repl_primary_params {
    uv_loop_t *loop;
    struct store *store;  /* borrowed; must outlive the pusher */
    struct mtls_ctx *ctx; /* client side of the pushes; a reference is taken */
    const char *node_id;  /* this node: never pushed to */
    struct repl_tuning tuning;
    struct repl_clock clock;       /* NULL now_ms: the wall clock */
    const struct backoff_rng *rng; /* NULL: the system's; else borrowed */
    /* A replica answered Fenced (or reported a higher epoch): `by` is that
     * replica, `epoch` the newer epoch. Every push has stopped. */
    void (*on_fenced)(void *arg, const char *by, uint64_t epoch);
    void *arg;
};

/*
 * Starts pushing to every member of the store's membership other than this
 * node, with the persisted status of each as the starting point; every
 * replica is connected at once (Hello/State tells where it stands).
 * @return 0, -ENOMEM, a store error. No callback is called on failure.
 */
int repl_primary_start(const struct repl_primary_params *params, struct repl_primary **out);

/* The membership changed: replicas that joined start, those that left stop
 * (their persisted status stays), addresses that moved reconnect. */
int repl_primary_members_changed(struct repl_primary *rp);

/* [replication] reloaded: applies from the next scheduling decision. */
void repl_primary_set_tuning(struct repl_primary *rp, const struct repl_tuning *tuning);

/* New TLS files (SIGHUP): connections made from now on use `ctx` (a
 * reference is taken); open connections keep theirs. */
void repl_primary_set_ctx(struct repl_primary *rp, struct mtls_ctx *ctx);

/* A revision was saved (by the admin API or behind the daemon's back):
 * with push_on_commit, every healthy replica is pushed at once. */
void repl_primary_saved(struct repl_primary *rp, uint64_t revision);

/*
 * Pushes now to `replica` (NULL: every replica) and calls `done` once the
 * push ended: 0 when every replica acknowledged the primary's revision,
 * else the first error and a message naming the replicas that failed.
 * @return 0 (done follows, maybe before this returns), ERROR_NOT_FOUND (no
 *         such replica), ERROR_FENCED, -ENOMEM; `why` says it.
 */
int repl_primary_sync(struct repl_primary *rp, const char *replica, admin_done_cb done,
                      void *done_arg, char *why, size_t whylen);

/*
 * Sends RunTest to `replica` over its connection and calls `done` with its
 * TestResult (allocated as protobuf-c unpacks; the callee owns it), or with
 * an error when the connection closes first. `req` is only read now.
 * @return 0, ERROR_NOT_FOUND (no such replica), -ENOTCONN (not connected
 *         now: `why` has its last error), -ENOMEM.
 */
int repl_primary_run_test(struct repl_primary *rp, const char *replica,
                          const Smtpsync__RunTest *req, admin_test_cb done, void *done_arg,
                          char *why, size_t whylen);

/* True once a replica fenced this node; *epoch (may be NULL) the newer one. */
bool repl_primary_fenced(const struct repl_primary *rp, uint64_t *epoch);

/*
 * Appends one ReplicaStatus per replica (membership order) to `reply`,
 * allocated as protobuf-c unpacks: smtpsync__status_reply__free_unpacked()
 * frees the whole reply. -ENOMEM (what was appended stays valid).
 */
int repl_primary_status(struct repl_primary *rp, Smtpsync__StatusReply *reply);

/*
 * Stops: pending syncs and tests complete with -ECANCELED, the status is
 * written, the connections close. `done` (may be NULL) is called from the
 * loop once every handle is closed; the pusher is then freed.
 */
void repl_primary_stop(struct repl_primary *rp, void (*done)(void *arg), void *arg);

/* ---- repl_replica: the agent -------------------------------------------- */

struct repl_replica;

struct repl_replica_params {
    uv_loop_t *loop;
    struct store *store; /* borrowed */
    const char *node_id;
    /* [replication] primary: the id whose pushes are taken at our epoch
     * while the store has no membership; NULL or "": none. */
    const char *configured_primary;
    const char *helo; /* EHLO name of tests run here; NULL: this host's */
    struct repl_clock clock;
    /* A delta or snapshot was applied: the settings changed (the sender
     * must reload them). */
    void (*applied)(void *arg, uint64_t revision);
    /* The membership or the epoch changed: roles may have. */
    void (*membership_changed)(void *arg);
    /* This node's status, for a StatusQuery (owned by the caller of the
     * callback, freed with smtpsync__status_reply__free_unpacked). */
    int (*status)(void *arg, Smtpsync__StatusReply **out);
    /* Mail waiting in the outbox, for State; may be NULL. */
    uint64_t (*outbox_depth)(void *arg);
    void *arg;
};

int repl_replica_new(const struct repl_replica_params *params, struct repl_replica **out);
/* [replication] primary reloaded. */
int repl_replica_set_primary(struct repl_replica *rr, const char *configured_primary);

/* One frame from an authorized member's connection `p` (peer_id(p) is the
 * member). Replies go to `p`. */
void repl_replica_frame(struct repl_replica *rr, struct peer *p, const Smtpsync__Frame *f);
/* `p` is closing: forget it (a test running for it completes unsent). */
void repl_replica_closed(struct repl_replica *rr, struct peer *p);

/* What this node knows of the primary: the revision it last announced (in
 * a Hello, Delta or Snapshot; 0: nothing since this process started) and
 * when it was last heard from (0: never). */
void repl_replica_primary_info(const struct repl_replica *rr, uint64_t *revision, int64_t *last_ms);

/* Frees the agent. A test still running is detached: its result is
 * dropped when it ends (the loop must still run until then). */
void repl_replica_free(struct repl_replica *rr);

/* ---- repl_node: a node's replication side --------------------------------- */

struct repl_node;

/* One replica of the primary daemon's configuration ([replica "id"]). */
struct repl_member_cfg {
    const char *id;
    const char *address; /* host:port */
};

/* What a reload (SIGHUP) may change; strings and lists are copied. */
struct repl_node_config {
    struct repl_tuning tuning;
    const char *primary; /* [replication] primary; NULL or "": none */
    const char *address; /* [node] address: how others reach this node; NULL: none */
    const struct repl_member_cfg *replicas; /* [replica] sections (primary daemon) */
    size_t nreplicas;
    const char *const *super_admins; /* [admin] */
    size_t nsuper_admins;
    const char *const *operators;
    size_t noperators;
};

struct repl_node_params {
    uv_loop_t *loop;
    struct store *store;  /* borrowed; must outlive the node's replication */
    struct mtls_ctx *ctx; /* a reference is taken */
    const char *node_id;  /* = the certificate's id */
    /* smtpsync-primary: a store without a membership is this node's, and
     * the membership is written from the configuration while primary. */
    bool primary_daemon;
    /* "host:port" to listen on (port 0: any, see repl_node_port()); NULL or
     * "": no listener (a node that only pushes). */
    const char *listen;
    struct peer_params listen_peer; /* idle_timeout_ms 0: 300 s */
    struct repl_node_config config;
    const char *helo; /* EHLO name of tests run here; NULL: this host's */
    struct repl_clock clock;
    const struct backoff_rng *rng;
    /* The settings changed under the node (a replicated revision): the
     * sender reloads. May be NULL. */
    void (*settings_changed)(void *arg);
    /* Outbox depth (pending) and dead count for the status; may be NULL. */
    void (*outbox_depth)(void *arg, uint64_t *pending, uint64_t *dead);
    void *arg;
};

/*
 * Starts the node's replication: membership (written when a primary
 * daemon is primary), listener, agent, and the pusher when primary.
 * Every problem is logged. @return 0, a libuv error (listen), -ENOMEM, a
 * store error. Nothing is left running on failure.
 */
int repl_node_start(const struct repl_node_params *params, struct repl_node **out);

/* The listener's port (0 without a listener). */
int repl_node_port(const struct repl_node *rn);

/* Is this node the primary now? */
bool repl_node_is_primary(const struct repl_node *rn);

/* The admin hooks of this node (admin.h), valid while it runs. */
const struct admin_hooks *repl_node_hooks(const struct repl_node *rn);

/* A reload: the new config, and new TLS files when `ctx` is not NULL (a
 * reference is taken; the listener and new pushes use it). Returns 0 or
 * -ENOMEM (the old config stays). */
int repl_node_reconfigure(struct repl_node *rn, const struct repl_node_config *config,
                          struct mtls_ctx *ctx);

/* The store has a new revision (a save, maybe by another process): the
 * pusher pushes (push_on_commit), old history is compacted. */
void repl_node_revision_changed(struct repl_node *rn, uint64_t revision);

/* This node's status (NodeStatus and, on the primary, every replica), owned
 * by the caller: smtpsync__status_reply__free_unpacked(). */
int repl_node_status(struct repl_node *rn, Smtpsync__StatusReply **out);

/*
 * Promotion (smtpsyncctl promote): epoch + 1, the membership rewritten
 * with this node PRIMARY and the old primary REPLICA, pushing started.
 * ERROR_INVALID when already the primary; ERROR_CONFLICT when this node
 * knows it lags (the primary announced a newer revision) and not `force`.
 */
int repl_node_promote(struct repl_node *rn, bool force, uint64_t *epoch, char *why, size_t whylen);

/*
 * Stops: pending admin requests are answered (-ECANCELED where they wait on
 * a push or test), the pusher stops, the listener and its connections
 * close. `done` (may be NULL) is called from the loop when all is closed;
 * the node's replication is then freed.
 */
void repl_node_stop(struct repl_node *rn, void (*done)(void *arg), void *arg);

/* ---- helpers shared by the parts ------------------------------------------ */

/* The member of `m` with id `node`, or NULL. */
const Smtpsync__Member *repl_member_find(const Smtpsync__Membership *m, const char *node);
/* The id of the member with role PRIMARY, or NULL. */
const char *repl_membership_primary(const Smtpsync__Membership *m);
/* "in-sync", "behind", ... (the names status shows). */
const char *repl_state_name(Smtpsync__ReplicaState s);

#endif
