/*
 * repl internals: what the files of the pusher (repl_primary.c: the state
 * machine; repl_primary_status.c: the status view and its persistence;
 * repl_primary_ops.c: saves, syncs and tests asked by the node) share, and
 * those of the node's replication side (repl_node.c: listener, connections,
 * admin hooks, life; repl_node_role.c: membership, role, promotion,
 * status).
 * Never included from outside common/ (STYLE.md, point 2).
 */
#ifndef SMTPSYNC_REPL_INTERNAL_H
#define SMTPSYNC_REPL_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "admin.h"
#include "mtls.h"
#include "peer.h"
#include "repl.h"
#include "repl_sched.h"
#include "store.h"

/* A status in steady state is written again after this long (see
 * repl__flush_now). */
#define REPL_STATUS_REFRESH_MS 30000

#define TARGET_STATE_MAP(XX)                                                                       \
    XX(IDLE, "idle")                                                                               \
    XX(CONNECTING, "connecting")                                                                   \
    XX(HELLO, "hello")                                                                             \
    XX(READY, "ready")                                                                             \
    XX(PUSHING, "pushing")                                                                         \
    XX(QUEUED, "queued")                                                                           \
    XX(SNAPSHOT, "snapshot")                                                                       \
    XX(FENCED, "fenced")                                                                           \
    XX(CLOSING, "closing")

enum target_state {
#define XX(name, text) T_##name,
    TARGET_STATE_MAP(XX)
#undef XX
};

/* One sync request, shared by the targets it waits on. */
struct waiter {
    admin_done_cb done;
    void *arg;
    unsigned pending;
    int err;
    char message[512];
};

struct waiter_link {
    struct waiter *w;
    struct waiter_link *next;
};

/* A RunTest awaiting its TestResult. */
struct test_req {
    struct test_req *next;
    uint64_t id;
    admin_test_cb done;
    void *arg;
};

struct target {
    struct target *next;
    struct repl_primary *rp;
    char id[MTLS_ID_MAX + 1];
    char address[REPL_ADDR_MAX + 1];
    enum target_state state;
    struct peer *peer;
    uv_timer_t timer;
    unsigned closes; /* handles being closed (CLOSING) */
    struct repl_sched sched;

    uint64_t inflight; /* the frame id whose answer is awaited; 0: none */
    bool known;        /* applied/hash learned on this connection */
    uint64_t applied;  /* the replica's revision, as last known */
    uint8_t hash[STORE_HASH_LEN];
    bool need_snapshot;   /* the next push is a snapshot */
    bool diverged;        /* until a snapshot repairs it */
    bool holds_slot;      /* counts in rp->snapshots */
    struct target *qnext; /* in the snapshot queue */
    bool queued;

    int64_t last_contact_ms, last_sent_ms, cert_expiry_ms;
    uint64_t outbox_depth;
    char last_error[REPL_ERROR_MAX];
    bool dirty; /* status not yet persisted */
    /* What the store holds, to skip writes that change little. */
    Smtpsync__ReplicaState persisted_state;
    char persisted_error[REPL_ERROR_MAX];
    int64_t persisted_ms;

    struct waiter_link *waiters;
    struct test_req *tests;

    bool logged_sync;         /* "in sync at revision N" was logged for ... */
    uint64_t logged_sync_rev; /* ... this N */

    /* The encoded size of the Delta or Snapshot sent and not yet answered
     * (0: none), counted in the push metrics once its fate is known. */
    size_t push_bytes;
};

struct repl_primary {
    uv_loop_t *loop;
    struct store *store;
    struct mtls_ctx *ctx;
    char node_id[MTLS_ID_MAX + 1];
    struct repl_tuning tuning;
    struct repl_clock clock;
    struct backoff_rng rng;
    void (*on_fenced)(void *arg, const char *by, uint64_t epoch);
    void *arg;

    struct target *targets;
    struct target *queue_head, *queue_tail;
    unsigned snapshots; /* in flight */
    uint64_t next_id;
    /* While repl_primary_saved() pushes one save to every replica, the
     * Delta built for the first is kept here and sent to every other one
     * at the same revision: reading the history and unsealing its
     * passwords once per save, not once per replica. NULL otherwise; it
     * holds plaintext passwords and is wiped when the loop ends. */
    Smtpsync__Delta *save_delta;
    bool in_save;

    bool fenced;
    uint64_t fenced_epoch;
    char fenced_by[MTLS_ID_MAX + 1];

    uv_timer_t flush;
    bool flush_armed;
    bool stopping;
    unsigned handles; /* targets not yet freed, and the flush timer */
    void (*done)(void *arg);
    void *done_arg;
};

/* repl_primary.c */
int64_t repl__now_ms(const struct repl_primary *rp);
struct repl_sched_params repl__sched_params(const struct repl_primary *rp);
uint64_t repl__keepalive_ms(const struct repl_primary *rp);
void repl__set_error(struct target *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Sends a frame on the target's connection (which closes on failure). */
int repl__target_send(struct target *t, Smtpsync__Frame *f);
/* Opens the connection (IDLE -> CONNECTING); a failure is recorded. */
void repl__target_connect(struct target *t);
/* Asks the replica where it stands (-> HELLO). */
void repl__target_send_hello(struct target *t);
/* Pushes what the replica lacks after its acknowledged revision. */
void repl__target_send_delta(struct target *t);
/* Arms the target's timer for what its state waits on. */
void repl__target_arm(struct target *t);
/* The live target of `id`, or NULL. */
struct target *repl__target_find(struct repl_primary *rp, const char *id);

/* repl_primary_status.c */
/* The status of `t` changed: written within status_flush_ms. */
void repl__mark_dirty(struct target *t);
/* Writes the changed statuses (all of them with `force`; see the .c). */
void repl__flush_now(struct repl_primary *rp, bool force);
/* Starts a new target from its persisted status. */
void repl__target_load(struct target *t);

/* repl_primary_ops.c */
/* Completes every sync waiting on `t` (err 0: in sync). */
void repl__target_waiters_done(struct target *t, int err, const char *message);
/* Fails every test waiting on `t`'s connection. */
void repl__target_tests_fail(struct target *t, int err, const char *message);
/* A TestResult (or an Error) answering the test of frame `id`. */
void repl__on_test_result(struct target *t, uint64_t id, const Smtpsync__TestResult *r,
                          const Smtpsync__Error *e);

/* ---- the node's replication side (repl_node.c, repl_node_role.c) ---- */

/* An accepted connection that passed authorize; listed in rn->conns from
 * authorize to on_close, so a reload or a membership change can judge it
 * again (repl__node_recheck). */
struct conn {
    struct conn *next;
    struct repl_node *rn;
    struct peer *p;
    bool admin;
    enum admin_role role;
    bool revoked; /* closed by a recheck: its frames are dropped */
    char id[MTLS_ID_MAX + 1];
};

/* An admin request waiting for admin_handle()'s reply. */
struct admin_req {
    struct admin_req *next;
    struct repl_node *rn;
    struct conn *conn; /* NULL once its connection closed */
    uint64_t id;
};

/* Test Connection run here for an admin (hooks.run_test). */
struct local_test {
    struct local_test *next;
    bool cancelled; /* answered at stop; the result is dropped */
    struct repl_node *rn;
    admin_test_cb done;
    void *arg;
};

struct member_copy {
    char id[SETTINGS_INSTANCE_MAX + 1];
    char address[REPL_ADDR_MAX + 1];
};

/* The config, owned. */
struct node_cfg {
    struct repl_tuning tuning;
    char primary[MTLS_ID_MAX + 1];
    char address[REPL_ADDR_MAX + 1];
    struct member_copy *replicas;
    size_t nreplicas;
    char **super_admins, **operators;
    size_t nsuper_admins, noperators;
};

struct repl_node {
    uv_loop_t *loop;
    struct store *store;
    struct mtls_ctx *ctx;
    char node_id[MTLS_ID_MAX + 1];
    bool primary_daemon;
    struct node_cfg cfg;
    char helo[SYNTAX_HOSTNAME_MAX + 1];
    struct repl_clock clock;
    struct backoff_rng rng;
    bool have_rng;
    void (*settings_changed)(void *arg);
    void (*outbox_depth)(void *arg, uint64_t *pending, uint64_t *dead);
    void *arg;

    struct peer_listener *listener;
    struct conn lconn;  /* the listener's arg: connections not yet authorized */
    struct conn *conns; /* authorized, not yet closed */
    struct repl_replica *agent;
    struct repl_primary *pusher;
    bool is_primary;
    /* The epoch that fenced this node's pusher, kept once the new primary
     * made it a replica (status still says so); 0 again when it pushes. */
    uint64_t fenced_epoch;
    uint64_t revision; /* the last revision acted upon */
    struct admin_hooks hooks;
    struct admin_req *reqs;
    struct local_test *tests;

    bool stopping;
    unsigned parts; /* pushers and the listener still closing */
    void (*done)(void *arg);
    void *done_arg;
};

/* repl_node.c */
/* A part (a pusher, the listener) finished closing. */
void repl__node_part_done(void *arg);
/* Judges every open connection again as authorize would now: those no
 * longer allowed (or whose kind, member or admin, changed) are closed and
 * logged ("no longer allowed after `after`"), admins whose role changed
 * get the new one. */
void repl__node_recheck(struct repl_node *rn, const char *after);

/* repl_node_role.c */
/* smtpsync-primary, while primary: the membership from the configuration. */
void repl__write_config_membership(struct repl_node *rn);
/* Starts or stops the pusher to match the store's membership. */
void repl__recompute_role(struct repl_node *rn);
/* Stops the pusher (asynchronously, counted in rn->parts). */
void repl__pusher_stop(struct repl_node *rn);

#endif
