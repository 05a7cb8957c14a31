/*
 * store: the versioned settings store on LMDB (DESIGN.md, "Store").
 *
 * Named databases:
 *   settings  instance -> Settings      the current record of every instance
 *   drafts    instance -> Settings      edits not yet saved
 *   history   revision -> Revision      one row per save (big-endian key)
 *   snapshot  instance -> Settings      state at meta.base_revision, the base
 *                                       that history rows are replayed onto
 *   meta      "state"  -> StoreMeta     revision, epoch, chain hash, base
 * Later issues add replicas, outbox and dead to the same environment.
 *
 * Every record is a packed protobuf message. The password is sealed with
 * seal.h under the node key before it reaches LMDB; plaintext never does.
 * A sealed password is bound to its instance and its secret id, so it opens
 * only in the record it was sealed for: not in another instance's, nor in
 * place of a later password of the same instance.
 *
 * Chain hash: h(0) = 32 zero bytes; h(n) = SHA-256(h(n-1) || canonical(n)),
 * where canonical(n) is the packed Revision n with `hash` cleared and every
 * Secret reduced to its id (smtpsync.proto, header comment). Two nodes at
 * the same revision with different hashes have diverged.
 *
 * The snapshot is covered by meta.base_state_hash, a SHA-256 of it in the
 * same canonical form (smtpsync.proto, StoreMeta), checked whenever the
 * snapshot is read: an old revision, compaction and store_verify() refuse a
 * snapshot that was altered with ERROR_CORRUPT.
 *
 * Every change is one LMDB write transaction: after a crash at any point a
 * reader sees either the whole revision or none of it. When the map is full,
 * the store doubles it and retries the transaction instead of failing.
 *
 * A `struct store` is used by one thread at a time (the daemons' loop
 * thread); it is not thread-safe.
 */
#ifndef SMTPSYNC_STORE_H
#define SMTPSYNC_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "settings.h"

#define STORE_HASH_LEN    32
#define STORE_ACTOR_MAX   128
#define STORE_COMMENT_MAX 1024
#define STORE_NODE_MAX    SETTINGS_INSTANCE_MAX

struct store;

struct store_params {
    const char *dir;      /* data directory */
    const char *key_file; /* node key; NULL: <dir>/node.key */
    size_t map_size;      /* initial map size; 0: 8 MiB. Grows on demand. */
    /* May a new store be made? Then a missing directory is created (0700)
     * and, for a new store only, a missing key file too. */
    bool create;
};

/*
 * Opens the store. A store that does not exist yet is created only with
 * params->create (else ERROR_NOT_FOUND). The node key of an existing store
 * is never created: a missing, unreadable or different key (the store keeps
 * a check value of its key in meta) is ERROR_KEYFILE, so a mistyped key
 * path cannot seal new secrets under a second key. Other errors: -errno,
 * LMDB codes, ERROR_CORRUPT (meta record unreadable).
 */
int store_open(const struct store_params *params, struct store **out);
void store_close(struct store *st);

struct store_info {
    uint64_t revision;
    uint64_t epoch;
    uint8_t hash[STORE_HASH_LEN];
    uint64_t base_revision; /* revisions < this can no longer be shown */
    int64_t revision_time_ms;
    size_t ndrafts;
    size_t ninstances;
};

int store_info(struct store *st, struct store_info *out);

/* Read flags. */
#define STORE_UNSEAL 0x1 /* also open the sealed password into s->password */

/*
 * Current record of `instance` (revision 0) or its record as of `revision`.
 * `out` is initialised by the caller and cleared first. ERROR_NOT_FOUND if
 * the instance has no record then; ERROR_COMPACTED if `revision` is older
 * than the base; ERROR_INVALID if it is newer than the current one.
 */
int store_get(struct store *st, const char *instance, uint64_t revision, unsigned flags,
              struct settings *out);

/* Calls cb for every instance's record at `revision` (0: current), in
 * instance order; a non-zero return from cb stops and is returned. */
typedef int (*store_each_cb)(const struct settings *s, void *arg);
int store_each(struct store *st, uint64_t revision, unsigned flags, store_each_cb cb, void *arg);

/*
 * Drafts. store_draft_put() stores a draft as given; when s->password_set,
 * s->password must be loaded (read with STORE_UNSEAL) so it can be sealed:
 * otherwise ERROR_INVALID. Drafts are checked fully at save, not here.
 */
int store_draft_get(struct store *st, const char *instance, unsigned flags, struct settings *out);
int store_draft_put(struct store *st, const struct settings *s);
/* Discards the draft of `instance`, or every draft when NULL. ERROR_NOT_FOUND
 * if there was none. */
int store_draft_discard(struct store *st, const char *instance);
int store_draft_each(struct store *st, unsigned flags, store_each_cb cb, void *arg);

struct store_commit {
    const char *actor;   /* who: "local:root", "alice", ... (required) */
    const char *comment; /* may be NULL; like actor, one line of text */
    int64_t time_ms;     /* 0: now */
};

/*
 * Saves drafts as one new revision, in one write transaction: the records
 * replace the current ones, the drafts are removed, a history row with the
 * chain hash is written and meta advances. `instances` names the drafts to
 * save (n = 0: every draft). Each draft is validated fully first; if any has
 * a problem nothing is written, the problems (field names prefixed with
 * "<instance>.") go to `problems` and ERROR_INVALID is returned. A draft that
 * cannot be read back is such a problem too: a password that no longer
 * opens under this node's key is one on "<instance>.password", a damaged
 * field one on that field, a draft that does not decode at all one on
 * "<instance>".
 * A draft equal to its current record in every field is not a change:
 * when some drafts change something, the revision holds only those, and
 * the unchanged drafts are removed with the others (their content is
 * current). When no draft changes anything, ERROR_EMPTY is returned and the
 * drafts stay, as after every failed save. ERROR_EMPTY also when there is no
 * draft at all; ERROR_NOT_FOUND when a named instance has no draft;
 * ERROR_INVALID (nothing checked) for a missing actor, an actor or comment
 * holding a control character; ERROR_TOO_BIG for an actor or comment over
 * its limit.
 */
int store_save(struct store *st, const char *const *instances, size_t n,
               const struct store_commit *commit, struct settings_problems *problems,
               uint64_t *revision_out);

/*
 * Makes the state of `revision` current again, as a new revision (its
 * history row has rollback_of = revision): records that differ are put
 * back, records that did not exist then are deleted. ERROR_EMPTY if the
 * state is already the same, ERROR_COMPACTED, ERROR_INVALID.
 */
int store_rollback(struct store *st, uint64_t revision, const struct store_commit *commit,
                   uint64_t *revision_out);

/* One history row as shown to people; strings valid during the callback. */
struct store_revision {
    uint64_t revision;
    uint64_t epoch;
    uint64_t rollback_of; /* 0 unless a rollback */
    int64_t time_ms;
    const char *actor;
    const char *comment;
    uint8_t hash[STORE_HASH_LEN];
    size_t nchanges;
    const char *const *instances; /* nchanges ids */
    const bool *deleted;          /* nchanges flags: true if the change deletes */
};

typedef int (*store_history_cb)(const struct store_revision *r, void *arg);
/* Rows from newest to oldest, at most `limit` (0: all). */
int store_history(struct store *st, size_t limit, store_history_cb cb, void *arg);

/* One field that differs; values are display forms (settings_field_format),
 * "" for a record that does not exist on that side. */
struct store_diff {
    const char *instance;
    const char *field;
    const char *old_value;
    const char *new_value;
};

typedef int (*store_diff_cb)(const struct store_diff *d, void *arg);
/* Every field of every instance that differs between the two revisions, in
 * instance then field order. ERROR_COMPACTED, ERROR_INVALID. */
int store_diff(struct store *st, uint64_t from, uint64_t to, store_diff_cb cb, void *arg);

/* Folds history rows older than the newest `keep` into the snapshot and
 * deletes them; `*removed` counts them. keep = 0 is refused (ERROR_INVALID). */
int store_compact(struct store *st, uint64_t keep, uint64_t *removed);

/* Recomputes the chain from the base to the head and compares it with every
 * stored hash and with meta; rebuilds the current state from snapshot plus
 * history and compares it with `settings`. ERROR_CORRUPT on any mismatch. */
int store_verify(struct store *st);

/* The actor for local use: "local:<login name>". */
void store_local_actor(char *buf, size_t len);

/* --- Replication (store_repl.c) ------------------------------------------
 *
 * What the primary sends and a replica applies. On the wire a Secret
 * carries its plaintext (the channel is mutual TLS) and never its sealed
 * form: each node seals with its own key. The chain hash covers only the
 * secret's id, so a primary and its replica at the same revision have the
 * same hash although their sealed bytes differ.
 *
 * Frames built here hold plaintext passwords: free them with
 * store_repl_free_*(), which wipe every password before freeing. A Delta
 * or Snapshot received inside a Frame is wiped with store_repl_wipe_*()
 * before the Frame is freed.
 */

#include "smtpsync.pb-c.h"

/*
 * The revisions after `from` up to the head, at most `max` of them (0: no
 * limit), as a Delta with hash_after = h(to_revision) and the store's epoch.
 * ERROR_COMPACTED when `from` is older than the base (send a snapshot);
 * ERROR_INVALID when `from` is ahead of the head; ERROR_EMPTY when there is
 * nothing after `from`.
 */
int store_repl_delta(struct store *st, uint64_t from, size_t max, Smtpsync__Delta **out);
void store_repl_free_delta(Smtpsync__Delta *d);

/* The whole current state: every record, the membership, revision, epoch,
 * hash and revision time. */
int store_repl_snapshot(struct store *st, Smtpsync__Snapshot **out);
void store_repl_free_snapshot(Smtpsync__Snapshot *s);
/* OPENSSL_cleanse() every plaintext password of a message, freeing nothing
 * (NULL is allowed). */
void store_repl_wipe_delta(Smtpsync__Delta *d);
void store_repl_wipe_snapshot(Smtpsync__Snapshot *s);

/*
 * Applies a delta in ONE write transaction: every revision in order, each
 * chained onto the store's hash, its secrets sealed under this node's key;
 * history rows are kept as the primary wrote them (actor, time, epoch,
 * comment), so `history` on a replica shows the same revisions.
 *   - ERROR_FENCED: d->epoch is lower than the store's epoch (nothing done);
 *   - ERROR_CONFLICT: d->from_revision is not the store's revision;
 *   - ERROR_DIVERGED: a computed hash differs from the one sent (in a row or
 *     hash_after); nothing is applied, `actual` (if not NULL) receives the
 *     hash this store computed;
 *   - ERROR_DECODE / ERROR_INVALID: a revision that is not well formed.
 * A higher epoch in the delta is adopted with it. The whole delta is
 * checked before the transaction: a record that does not decode is
 * ERROR_DECODE; a sealed secret on the wire, a bad instance id or change
 * kind, rows out of sequence or of a later epoch than the delta's, an
 * actor or comment store_commit would refuse, is ERROR_INVALID. An empty
 * delta (to_revision = from_revision) only compares hash_after with the
 * store's hash (ERROR_DIVERGED) and adopts a higher epoch. Drafts are kept.
 */
int store_repl_apply_delta(struct store *st, const Smtpsync__Delta *d,
                           uint8_t actual[STORE_HASH_LEN]);

/*
 * Replaces the whole state by a snapshot in ONE write transaction: records,
 * membership, revision, epoch and hash; history and drafts are cleared and
 * the snapshot becomes the base (base_revision = revision). The snapshot's
 * hash is taken as given (it is the chain value of the primary, which the
 * replica cannot recompute without the history) and checked against
 * nothing but its form. ERROR_FENCED as for a delta. ERROR_DECODE /
 * ERROR_INVALID as for a delta, and for two records of one instance or a
 * membership store_repl_set_membership() refuses. A snapshot without a
 * membership leaves the store's as it is.
 */
int store_repl_apply_snapshot(struct store *st, const Smtpsync__Snapshot *s);

/* Promotion: sets the epoch (must be higher than the current one, else
 * ERROR_INVALID) in one transaction. */
int store_repl_set_epoch(struct store *st, uint64_t epoch);

/* The replicated membership (empty when never set). The caller frees *out
 * with smtpsync__membership__free_unpacked(*out, NULL). */
int store_repl_membership(struct store *st, Smtpsync__Membership **out);
/* Sets the membership, without making a revision: the primary writes it
 * from its configuration at start, it travels in snapshots, and a replica
 * keeps the last one it received. ERROR_INVALID unless every member has a
 * valid node id (settings_instance_valid), distinct from the others, a
 * role of PRIMARY or REPLICA and an address of at most 261 characters
 * without control characters, and at most one member is PRIMARY. */
int store_repl_set_membership(struct store *st, const Smtpsync__Membership *m);

/* The primary's persisted view of its replicas (`replicas` database):
 * one ReplicaStatus per replica id. get: ERROR_NOT_FOUND when absent; the
 * caller frees with smtpsync__replica_status__free_unpacked(). An id that
 * is not valid (settings_instance_valid) is ERROR_INVALID. each: in id
 * order, every record read before the first callback. */
int store_repl_status_get(struct store *st, const char *id, Smtpsync__ReplicaStatus **out);
int store_repl_status_put(struct store *st, const Smtpsync__ReplicaStatus *rs);
/* Writes rs[0..n) in one durable commit (one fsync however many). All or
 * nothing: ERROR_INVALID, and nothing written, when any entry is NULL or
 * its id is not valid. n == 0 writes nothing and returns 0. When an id
 * occurs twice, the later entry wins. status_put is put_many with n = 1. */
int store_repl_status_put_many(struct store *st, const Smtpsync__ReplicaStatus *const *rs,
                               size_t n);
typedef int (*store_repl_status_cb)(const Smtpsync__ReplicaStatus *rs, void *arg);
int store_repl_status_each(struct store *st, store_repl_status_cb cb, void *arg);

#endif
