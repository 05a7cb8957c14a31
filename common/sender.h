/*
 * sender: drains the node's outbox with the node's own settings.
 *
 * The sender reads the instance's record (with its password) from the
 * node's local store, never from another node, so mail keeps flowing while
 * the primary is unreachable. It checks the store's revision before each
 * batch and whenever sender_settings_changed() is called, so a new revision
 * (saved locally or replicated) is used without a restart; sessions open
 * at that moment finish their current message and close.
 *
 * Scheduling: due messages are taken from the outbox, tokencodes first, and
 * handed to at most `max_sessions` concurrent SMTP sessions (smtp_client),
 * each of which sends queued messages one after another on the same
 * connection (up to `max_per_session`) before QUIT. Outcomes:
 *   - accepted (250 after DATA)        -> delivered, removed
 *   - accepted for some recipients     -> delivered to those; the ones
 *                                         refused with 4xx stay (the message
 *                                         is deferred for them alone), those
 *                                         refused with 5xx are dropped and
 *                                         logged; none left: removed
 *   - 4xx, connection/TLS failures     -> deferred: backoff_delay() from
 *                                         retry_initial_ms up to retry_max_ms
 *   - a session refused before its     -> deferred, whatever the code (a 554
 *     first message                       greeting, 5xx to EHLO and HELO): it
 *                                         is the relay's failure, not the mail's
 *   - 5xx (every recipient or DATA)    -> dead, with the server's reply
 *   - expired (also while waiting for  -> dead ("expired after N attempts")
 *     a session)
 *   - no record for the instance yet   -> deferred until usable settings
 *     (a new node starts empty), one      arrive or the message expires; the
 *     that fails settings_validate()      problem is logged once per revision
 *     (no hostname...), or that cannot    (not at every message); the first
 *     be read                             64 messages so deferred are made
 *                                         due again as soon as usable
 *                                         settings are loaded. An operator
 *                                         fixes the record and mail flows; it
 *                                         is dead only at expiry.
 *   - trust_certificate problems       -> logged once per revision, and not
 *     (expired, not yet valid...)         held against the settings: the TLS
 *                                         handshake checks the certificate at
 *                                         the moment of sending (a failure
 *                                         there defers like any TLS failure)
 * Results are committed in batches (outbox_apply), at most one transaction
 * per loop iteration. A commit that fails (a full disk) keeps the results
 * and their messages' leases: nothing is taken (or sent twice) meanwhile,
 * and the commit is tried again with backoff.
 *
 * Ownership: the sender borrows the loop, the store and the outbox; they
 * must outlive it. sender_stop() stops taking mail, lets sessions finish
 * (or cancels them after drain_ms) and calls `done` once nothing is left;
 * the sender is freed after `done` returns.
 */
#ifndef SMTPSYNC_SENDER_H
#define SMTPSYNC_SENDER_H

#include <stdint.h>

#include <uv.h>

#include "backoff.h"
#include "outbox.h"
#include "store.h"

struct sender;

struct sender_params {
    uv_loop_t *loop;
    struct store *store;
    struct outbox *outbox;
    const char *instance;      /* whose settings to use: the node id */
    const char *helo;          /* EHLO name; NULL: this host's name */
    unsigned max_sessions;     /* 0: 4 */
    unsigned max_per_session;  /* 0: 100 */
    uint64_t idle_ms;          /* keep an idle session open; 0: 2000 */
    uint64_t retry_initial_ms; /* 0: 30 s */
    uint64_t retry_max_ms;     /* 0: 1 h */
    uint64_t drain_ms;         /* sender_stop() waits this long; 0: 10 s */
    /* Injectable for tests; NULL: uv_now()-based wall clock / the system rng. */
    int64_t (*now_ms)(void *arg);
    void *now_arg;
    const struct backoff_rng *rng;
};

/* Counters for status and metrics. */
struct sender_stats {
    uint64_t delivered, deferred, dead;
    uint64_t sessions_opened, sessions_failed;
    unsigned sessions_active;
    uint64_t settings_revision; /* the revision in use; 0 before the first */
    char last_error[512];       /* "" if none */
};

int sender_start(const struct sender_params *params, struct sender **out);
/* New mail was submitted: look at the outbox now. */
void sender_wake(struct sender *s);
/* The store may have a new revision: reload the settings before the next session. */
void sender_settings_changed(struct sender *s);
void sender_stats(const struct sender *s, struct sender_stats *out);
void sender_stop(struct sender *s, void (*done)(void *arg), void *arg);

#endif
