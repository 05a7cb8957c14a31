/*
 * admin: the admin API of the daemons. One request Frame from an
 * authenticated admin client (smtpsyncctl --server, over the node's mTLS
 * port) becomes exactly one AdminReply, answered against the node's store
 * and, for what only the running node knows or does (replication status,
 * pushing, promotion, Test Connection on another node), through hooks the
 * node implements.
 *
 * Roles (issue 4; DESIGN.md, "Admin API"):
 *   - operator: status, settings show, history, diff;
 *   - super-admin: everything an operator may, and settings set,
 *     import-cert, save (also --apply-to-replicas), discard, test,
 *     rollback, sync, promote.
 * A verb refused for lack of a role answers ERROR_FORBIDDEN with
 * AdminReply.needs_role = "super-admin" and "this needs the super-admin
 * role". A client without any role should never get here (the node refuses
 * it at the handshake); if one does, every request is ERROR_FORBIDDEN.
 *
 * Where: the writing verbs (settings set, import-cert, save, discard,
 * rollback, test, sync) need the primary; on a replica they answer
 * ERROR_NOT_PRIMARY ("this node is a replica: send changes to the
 * primary"). status, promote, settings show, history and diff work on
 * every node. queue is answered only on the local submission socket (it
 * names recipients): over mTLS it is refused with ERROR_INVALID.
 *
 * Secrets: a reply never carries a password, plaintext or sealed. Every
 * Settings in a reply has its password reduced to the display mask: when
 * a password is set, Secret{id, plaintext = SETTINGS_PASSWORD_MASK}, never
 * the sealed bytes (the id is random and tells nothing about the value;
 * settings_pb_decode() needs it to see that a password is set). A new
 * password arrives in SettingsSet.settings.password.plaintext with
 * SettingsSet.password_confirm and is sealed by the store; request buffers
 * holding it are the node's to wipe (peer.c wipes its frame buffers).
 *
 * Validation problems are listed in AdminReply.problems (field, message,
 * incomplete), with the same texts as smtpsyncctl's local mode, and code
 * ERROR_INVALID. Error lines are those of local mode too.
 *
 * What each reply carries besides code and error:
 *   settings set, import-cert: settings = [the draft], problems = what is
 *     still missing before a save;
 *   settings show: settings, revision = the revision shown (0 for drafts);
 *   settings save, rollback: revision = the new revision;
 *   settings discard: settings = the drafts discarded;
 *   history: history (rows with their changes' instance and kind only);
 *   diff: diff (display forms, the password as the mask);
 *   settings test: test, revision = the store's, settings = [the draft
 *     tried] when a draft was tried;
 *   status, sync, promote: status (the node's view after the verb).
 *
 * Everything runs on the node's loop thread; nothing is thread-safe.
 */
#ifndef SMTPSYNC_ADMIN_H
#define SMTPSYNC_ADMIN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "settings.h"
#include "smtpsync.pb-c.h"
#include "store.h"

#define ADMIN_WHY_MAX 256

#define ADMIN_ROLE_MAP(XX)                                                                         \
    XX(NONE, "none")                                                                               \
    XX(OPERATOR, "operator")                                                                       \
    XX(SUPER_ADMIN, "super-admin")

enum admin_role {
#define XX(id, name) ADMIN_ROLE_##id,
    ADMIN_ROLE_MAP(XX)
#undef XX
};

/* "operator", "super-admin" (exact, lower case) -> the role; anything else
 * (including "none") -> ERROR_INVALID. */
int admin_role_parse(const char *name);
/* "none", "operator", "super-admin"; "unknown" for a value out of range. */
const char *admin_role_name(enum admin_role role);

/* "in-sync", "behind", "syncing", "unreachable", "diverged", "fenced",
 * "never-synced"; "unknown" for REPLICA_STATE_UNSET or a value out of
 * range. The names of status output and of logs. */
const char *admin_replica_state_name(Smtpsync__ReplicaState state);

/* --- hooks: what the node does for the admin module -----------------------
 *
 * Asynchronous hooks (sync, run_test) return 0 and later call their `done`
 * exactly once, or return an error (with a one-line reason in `why`) and
 * never call it. `done` may be called before the hook returns. At shutdown
 * the node completes every pending one with an error (-ECANCELED) rather
 * than dropping it, so every admin request is answered or freed.
 */

/* Completion of a sync: 0, or an error with a one-line message. */
typedef void (*admin_done_cb)(void *done_arg, int err, const char *message);

/* Completion of a test. `result` (may be NULL when err < 0) becomes the
 * admin module's: it is freed with conntest_result_free(), so it must be
 * allocated as protobuf-c unpacks (every part malloc'd), e.g. by
 * conntest or smtpsync__test_result__unpack(). `message` explains err. */
typedef void (*admin_test_cb)(void *done_arg, int err, const char *message,
                              Smtpsync__TestResult *result);

struct admin_hooks {
    void *arg;           /* first argument of every hook */
    const char *node_id; /* this node's id (certificate SAN/CN) */

    /* Is this node the primary now (it changes on promotion)? */
    bool (*is_primary)(void *arg);

    /* A revision was saved through the admin API (save, rollback): the
     * primary pushes at once when push_on_commit is on. May be NULL. */
    void (*saved)(void *arg, uint64_t revision);

    /* This node's view: its NodeStatus and, on a primary, the status of
     * every replica (persisted view plus live state). *out is the admin
     * module's, freed with status_free (or, when status_free is NULL, with
     * smtpsync__status_reply__free_unpacked(*out, NULL)). */
    int (*status)(void *arg, Smtpsync__StatusReply **out);
    void (*status_free)(void *arg, Smtpsync__StatusReply *reply);

    /* Push now to `replica` (NULL: every replica); `done` when the push
     * ended (acknowledged, or failed: then err and message say why).
     * Errors: ERROR_NOT_FOUND (no such replica), ERROR_NOT_PRIMARY. */
    int (*sync)(void *arg, const char *replica, admin_done_cb done, void *done_arg, char *why,
                size_t whylen);

    /* Makes this node the primary (epoch + 1, membership updated, pushing
     * started), synchronously. Refuses a node known to lag unless `force`
     * (ERROR_CONFLICT, `why` says by how much), and a node that already is
     * the primary (ERROR_INVALID). On success *epoch is the new epoch. */
    int (*promote)(void *arg, bool force, uint64_t *epoch, char *why, size_t whylen);

    /* Test Connection for `instance` with `settings` (password loaded;
     * borrowed for the call: copy what must outlive it) to `to` (NULL: the
     * settings' test_address). `revision` names what is tried ("draft on
     * revision 3", "revision 3"), as conntest_params.revision. When
     * `instance` is this node, the node runs conntest on its loop; else it
     * sends RunTest to that member's node and `done` gets its TestResult.
     * Errors: ERROR_NOT_FOUND (no member of that id), -ENOMEM. */
    int (*run_test)(void *arg, const char *instance, const struct settings *settings,
                    const char *to, const char *revision, admin_test_cb done, void *done_arg,
                    char *why, size_t whylen);
};

/* --- requests ---------------------------------------------------------- */

/* The reply to one request: borrowed for the call (the node packs it into
 * Frame{id = request id, admin_reply}). */
typedef void (*admin_reply_cb)(void *arg, const Smtpsync__AdminReply *reply);

/* True if the frame's body is an admin request: StatusQuery, the
 * settings, revision, sync and promote requests, and QueueQuery and
 * QueueAction (which admin_handle() refuses: local socket only). */
bool admin_frame_is_request(const Smtpsync__Frame *f);

/*
 * Answers one request from an admin with `role`; `actor` (the client's
 * certificate id) is recorded in the history of what it saves. `reply` is
 * called exactly once, for every frame (a frame that is not an admin
 * request gets ERROR_INVALID), possibly before admin_handle() returns,
 * possibly later from the loop (settings test, sync). Until then `st` and
 * `h` must stay valid; `req` is only read during this call.
 */
void admin_handle(struct store *st, const struct admin_hooks *h, enum admin_role role,
                  const char *actor, const Smtpsync__Frame *req, admin_reply_cb reply, void *arg);

/* --- draft editing, shared with smtpsyncctl's local mode (admin_draft.c) - */

/*
 * Loads what a change to `instance` starts from: its draft, else its saved
 * record, else an empty record named `instance`. Read with STORE_UNSEAL so
 * a stored password survives being put back as a draft. `s` is
 * initialised by the caller. Errors of store_draft_get() and store_get()
 * (ERROR_TAMPERED: the password does not open under this node key).
 */
int admin_draft_base(struct store *st, const char *instance, struct settings *s);

/*
 * Validates `s` (with `confirm`, the password confirmation when a new
 * password was given) and stores it as the draft of its instance unless a
 * problem other than a missing value remains: then ERROR_INVALID and
 * nothing is written. Every problem found is added to `problems`, the
 * missing values too (they are what is still needed before a save). Other
 * errors: those of store_draft_put().
 */
int admin_draft_check_put(struct store *st, const struct settings *s, const char *confirm,
                          struct settings_problems *problems);

/*
 * Copies one field from `from` into `to` (a patch): the password as a
 * whole (set or not, id and loaded value), the certificate, a list of
 * relays. SETTINGS_F_INSTANCE is never copied (ERROR_INVALID). -ENOMEM.
 */
int admin_settings_copy_field(struct settings *to, const struct settings *from,
                              enum settings_field f);

#endif
