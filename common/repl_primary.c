/*
 * repl_primary: the pusher (repl.h).
 *
 * One target per replica of the membership, each an explicit state machine
 * over its persistent connection:
 *
 *   IDLE -> CONNECTING -> HELLO -> READY <-> PUSHING
 *                           |        ^  \-> QUEUED -> SNAPSHOT
 *                           \--------+----------------/
 *   any -> IDLE when the connection closes (backoff), any -> FENCED (for
 *   good), any -> CLOSING (removed from the membership, or stopping).
 *
 * IDLE waits on the target's timer (the schedule, or the backoff) and then
 * connects; on open a Hello goes out and the State that answers it decides:
 * in sync (READY), a Delta (PUSHING) or a Snapshot (SNAPSHOT, or QUEUED
 * while `snapshot_concurrency` are in flight). An Ack that leaves the
 * replica behind the head pushes the next delta; one at the head is a
 * success (repl_sched). READY arms the timer for the next scheduled push
 * (a fresh Hello) or, sooner, a keepalive StatusQuery.
 *
 * A save pushes a READY replica at once with a Delta from the revision it
 * acknowledged, without a Hello round trip: should the replica have moved
 * behind our back, its answer (Diverged, or a State) sets things right.
 *
 * The status view lives in repl_primary_status.c, the node's requests
 * (save, sync, test) in repl_primary_ops.c.
 */
#include "repl.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "error.h"
#include "internal.h"
#include "log.h"
#include "metrics.h"
#include "repl_internal.h"

#ifndef SMTPSYNC_VERSION
#define SMTPSYNC_VERSION "unknown"
#endif

static const char *const target_state_names[] = {
#define XX(name, text) text,
    TARGET_STATE_MAP(XX)
#undef XX
};

static void target_push(struct target *t);
static void target_want_snapshot(struct target *t);
static void target_fail(struct target *t, int err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* ---- small helpers ---- */

int64_t repl__now_ms(const struct repl_primary *rp)
{
    return repl_clock_now(&rp->clock);
}

struct repl_sched_params repl__sched_params(const struct repl_primary *rp)
{
    struct repl_sched_params p = {
        .interval_ms = rp->tuning.interval_ms,
        .jitter_ms = rp->tuning.jitter_ms,
        .retry_initial_ms = rp->tuning.retry_initial_ms,
        .push_on_commit = rp->tuning.push_on_commit,
    };
    return p;
}

uint64_t repl__keepalive_ms(const struct repl_primary *rp)
{
    return rp->tuning.keepalive_ms ? rp->tuning.keepalive_ms : REPL_KEEPALIVE_DEFAULT_MS;
}

static uint64_t answer_timeout_ms(const struct repl_primary *rp)
{
    return rp->tuning.answer_timeout_ms ? rp->tuning.answer_timeout_ms
                                        : REPL_ANSWER_TIMEOUT_DEFAULT_MS;
}

/* How long the push in flight may go unanswered: the answer timeout, plus
 * the time to send its frame at REPL_ANSWER_MIN_RATE, so a 16 MiB Snapshot
 * on a slow site link is not abandoned (and sent again, forever) while it
 * is still on its way. */
static uint64_t answer_deadline_ms(const struct target *t)
{
    return answer_timeout_ms(t->rp) + t->push_bytes / REPL_ANSWER_MIN_RATE;
}

/* Hello, Delta and Snapshot each wait for one answer (inflight). */
static bool target_awaits_answer(const struct target *t)
{
    return t->state == T_HELLO || t->state == T_PUSHING || t->state == T_SNAPSHOT;
}

static void hex8(const uint8_t *h, size_t len, char out[17])
{
    static const char digits[] = "0123456789abcdef";
    size_t i;

    for (i = 0; i < 8 && i < len; i++) {
        out[2 * i] = digits[h[i] >> 4];
        out[2 * i + 1] = digits[h[i] & 15];
    }
    out[2 * i] = '\0';
}

static void target_set_state(struct target *t, enum target_state next)
{
    if (t->state == next)
        return;
    log_debug("replica %s: %s -> %s", t->id, target_state_names[t->state],
              target_state_names[next]);
    t->state = next;
}

void repl__set_error(struct target *t, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(t->last_error, sizeof(t->last_error), fmt, ap);
    va_end(ap);
    repl__mark_dirty(t);
}

/* Sends a frame to the target's replica; the connection closes on failure
 * (its on_close follows). */
int repl__target_send(struct target *t, Smtpsync__Frame *f)
{
    int rc;

    if (t->peer == NULL)
        return -ENOTCONN;
    rc = peer_send(t->peer, f);
    if (rc == 0)
        t->last_sent_ms = repl__now_ms(t->rp);
    if (rc == 0 && (f->body_case == SMTPSYNC__FRAME__BODY_DELTA ||
                    f->body_case == SMTPSYNC__FRAME__BODY_SNAPSHOT))
        t->push_bytes = smtpsync__frame__get_packed_size(f);
    return rc;
}

/* The push in flight is settled: "ok" when acknowledged, "failed" when
 * answered otherwise (refused, Diverged, a State, Fenced) or when the
 * connection closed before its answer. */
static void push_settled(struct target *t, const char *result)
{
    if (t->push_bytes == 0)
        return;
    metrics_count(METRICS_REPL_PUSHES, t->id, result, 1);
    metrics_count(METRICS_REPL_PUSH_BYTES, t->id, result, t->push_bytes);
    t->push_bytes = 0;
}

/* ---- snapshot slots ---- */

static void target_send_snapshot(struct target *t);

static void queue_remove(struct target *t)
{
    struct repl_primary *rp = t->rp;
    struct target **pp = &rp->queue_head, *prev = NULL;

    if (!t->queued)
        return;
    for (; *pp != NULL; prev = *pp, pp = &(*pp)->qnext)
        if (*pp == t) {
            *pp = t->qnext;
            if (rp->queue_tail == t)
                rp->queue_tail = prev;
            break;
        }
    t->qnext = NULL;
    t->queued = false;
}

static void slot_release(struct target *t)
{
    struct repl_primary *rp = t->rp;
    struct target *next;

    if (!t->holds_slot)
        return;
    t->holds_slot = false;
    rp->snapshots--;
    while (rp->snapshots < (rp->tuning.snapshot_concurrency ? rp->tuning.snapshot_concurrency
                                                            : REPL_SNAPSHOTS_DEFAULT) &&
           (next = rp->queue_head) != NULL) {
        queue_remove(next);
        if (next->state == T_QUEUED && next->peer != NULL)
            target_send_snapshot(next);
    }
}

static void target_want_snapshot(struct target *t)
{
    struct repl_primary *rp = t->rp;
    unsigned k =
        rp->tuning.snapshot_concurrency ? rp->tuning.snapshot_concurrency : REPL_SNAPSHOTS_DEFAULT;

    t->need_snapshot = true;
    if (t->holds_slot || rp->snapshots < k) {
        target_send_snapshot(t);
        return;
    }
    target_set_state(t, T_QUEUED);
    t->inflight = 0;
    repl__target_arm(t); /* keepalives while it waits for a slot */
    if (!t->queued) {
        t->queued = true;
        t->qnext = NULL;
        if (rp->queue_tail != NULL)
            rp->queue_tail->qnext = t;
        else
            rp->queue_head = t;
        rp->queue_tail = t;
    }
    log_info("replica %s: snapshot queued (%u in flight)", t->id, rp->snapshots);
    repl__mark_dirty(t);
}

static void target_send_snapshot(struct target *t)
{
    struct repl_primary *rp = t->rp;
    Smtpsync__Snapshot *s = NULL;
    Smtpsync__Frame f;
    int rc;

    if (!t->holds_slot) {
        t->holds_slot = true;
        rp->snapshots++;
    }
    if ((rc = store_repl_snapshot(rp->store, &s)) != 0) {
        slot_release(t);
        target_fail(t, rc, "cannot build a snapshot: %s", error_str(rc));
        return;
    }
    smtpsync__frame__init(&f);
    f.id = ++rp->next_id;
    f.body_case = SMTPSYNC__FRAME__BODY_SNAPSHOT;
    f.snapshot = s;
    rc = repl__target_send(t, &f);
    if (rc == 0) {
        target_set_state(t, T_SNAPSHOT);
        t->inflight = f.id;
        repl__target_arm(t);
        log_info("replica %s: snapshot of revision %" PRIu64 " sent (%zu records)", t->id,
                 s->revision, s->n_records);
        repl__mark_dirty(t);
    }
    store_repl_free_snapshot(s);
    if (rc == ERROR_TOO_BIG) {
        slot_release(t);
        target_fail(t, rc, "the snapshot exceeds the frame limit");
    } else if (rc != 0) {
        slot_release(t);
        if (t->peer != NULL)
            peer_close(t->peer, rc, "cannot send the snapshot");
    }
}

/* ---- pushing ---- */

static void target_in_sync(struct target *t)
{
    struct repl_primary *rp = t->rp;
    struct repl_sched_params sp = repl__sched_params(rp);
    bool recovered = t->sched.failures > 0;

    target_set_state(t, T_READY);
    t->inflight = 0;
    repl_sched_success(&sp, &t->sched, repl__now_ms(rp), &rp->rng);
    /* Once per revision reached: a scheduled check that finds nothing to
     * push is not news. */
    if (!t->logged_sync || t->logged_sync_rev != t->applied || recovered)
        log_info("replica %s: in sync at revision %" PRIu64, t->id, t->applied);
    else
        log_debug("replica %s: still in sync at revision %" PRIu64, t->id, t->applied);
    t->logged_sync = true;
    t->logged_sync_rev = t->applied;
    /* The status shows what is wrong now; the log keeps what was. */
    t->last_error[0] = '\0';
    repl__mark_dirty(t);
    repl__target_waiters_done(t, 0, "");
    repl__target_arm(t);
}

/* A Delta from `t->applied` to the head, or a snapshot when the history no
 * longer holds it. */
void repl__target_send_delta(struct target *t)
{
    struct repl_primary *rp = t->rp;
    Smtpsync__Delta *d = NULL;
    Smtpsync__Frame f;
    int rc;

    if (rp->save_delta != NULL && rp->save_delta->from_revision == t->applied)
        d = rp->save_delta, rc = 0;
    else
        rc = store_repl_delta(rp->store, t->applied, REPL_DELTA_MAX_REVISIONS, &d);
    if (rc == ERROR_COMPACTED || rc == ERROR_INVALID) {
        log_info("replica %s: revision %" PRIu64 " is %s: sending a snapshot", t->id, t->applied,
                 rc == ERROR_COMPACTED ? "compacted" : "ahead of ours");
        target_want_snapshot(t);
        return;
    }
    if (rc == ERROR_EMPTY) {
        target_push(t); /* nothing after it: compare hashes */
        return;
    }
    if (rc != 0) {
        target_fail(t, rc, "cannot build a delta from revision %" PRIu64 ": %s", t->applied,
                    error_str(rc));
        return;
    }
    smtpsync__frame__init(&f);
    f.id = ++rp->next_id;
    f.body_case = SMTPSYNC__FRAME__BODY_DELTA;
    f.delta = d;
    rc = repl__target_send(t, &f);
    if (rc == 0) {
        target_set_state(t, T_PUSHING);
        t->inflight = f.id;
        repl__target_arm(t);
        log_debug("replica %s: delta %" PRIu64 "..%" PRIu64 " sent", t->id, d->from_revision,
                  d->to_revision);
        repl__mark_dirty(t);
    }
    if (rp->in_save && rp->save_delta == NULL)
        rp->save_delta = d; /* for the other replicas of this save */
    else if (d != rp->save_delta)
        store_repl_free_delta(d);
    if (rc == ERROR_TOO_BIG) {
        log_info("replica %s: delta too big for a frame: sending a snapshot", t->id);
        target_want_snapshot(t);
    } else if (rc != 0 && t->peer != NULL) {
        peer_close(t->peer, rc, "cannot send the delta");
    }
}

/* Decides what the replica needs, from what it told us. */
static void target_push(struct target *t)
{
    struct store_info info;
    int rc;

    if ((rc = store_info(t->rp->store, &info)) != 0) {
        target_fail(t, rc, "cannot read the store: %s", error_str(rc));
        return;
    }
    if (t->need_snapshot || t->diverged)
        target_want_snapshot(t);
    else if (t->applied == 0 && info.revision > 0)
        target_want_snapshot(t); /* the first sync */
    else if (t->applied > info.revision)
        target_want_snapshot(t); /* ahead: a lagging node was promoted */
    else if (t->applied == info.revision) {
        if (memcmp(t->hash, info.hash, STORE_HASH_LEN) == 0)
            target_in_sync(t);
        else
            target_want_snapshot(t);
    } else
        repl__target_send_delta(t);
}

void repl__target_send_hello(struct target *t)
{
    struct repl_primary *rp = t->rp;
    Smtpsync__Membership *m = NULL;
    struct store_info info;
    Smtpsync__Frame f;
    Smtpsync__Hello h;
    int rc;

    if ((rc = store_info(rp->store, &info)) != 0 ||
        (rc = store_repl_membership(rp->store, &m)) != 0) {
        target_fail(t, rc, "cannot read the store: %s", error_str(rc));
        return;
    }
    smtpsync__hello__init(&h);
    h.node = rp->node_id;
    h.epoch = info.epoch;
    h.revision = info.revision;
    h.hash.data = info.hash;
    h.hash.len = STORE_HASH_LEN;
    h.version = BORROW_CONST(SMTPSYNC_VERSION);
    h.membership = m;
    smtpsync__frame__init(&f);
    f.id = ++rp->next_id;
    f.body_case = SMTPSYNC__FRAME__BODY_HELLO;
    f.hello = &h;
    rc = repl__target_send(t, &f);
    smtpsync__membership__free_unpacked(m, NULL);
    if (rc == 0) {
        target_set_state(t, T_HELLO);
        t->inflight = f.id;
        repl__target_arm(t);
    } else if (t->peer != NULL) {
        peer_close(t->peer, rc, "cannot send Hello");
    }
}

static void target_keepalive(struct target *t)
{
    Smtpsync__Frame f;
    Smtpsync__StatusQuery q;
    int rc;

    smtpsync__status_query__init(&q);
    smtpsync__frame__init(&f);
    f.id = ++t->rp->next_id;
    f.body_case = SMTPSYNC__FRAME__BODY_STATUS_QUERY;
    f.status_query = &q;
    if ((rc = repl__target_send(t, &f)) != 0 && t->peer != NULL)
        peer_close(t->peer, rc, "cannot send a keepalive");
}

/* ---- the connection ---- */

static void target_fenced(struct target *t, uint64_t epoch);
static void target_maybe_free(struct target *t);

static void on_open(void *arg, struct peer *p, const char *id)
{
    struct target *t = arg;
    time_t expiry = peer_cert_expiry(p);

    (void)id;
    t->cert_expiry_ms = expiry > 0 ? (int64_t)expiry * 1000 : 0;
    t->last_contact_ms = repl__now_ms(t->rp);
    t->known = false;
    log_info("replica %s: connected to %s (%s)", t->id, peer_remote(p), peer_tls_version(p));
    repl__mark_dirty(t);
    repl__target_send_hello(t);
}

static bool hash_of(uint8_t out[STORE_HASH_LEN], ProtobufCBinaryData h)
{
    if (h.len != STORE_HASH_LEN)
        return false;
    memcpy(out, h.data, STORE_HASH_LEN);
    return true;
}

static void on_state(struct target *t, const Smtpsync__State *st)
{
    struct store_info info;

    t->applied = st->applied_revision;
    t->outbox_depth = st->outbox_depth;
    if (!hash_of(t->hash, st->hash))
        memset(t->hash, 0, sizeof(t->hash));
    t->known = true;
    if (store_info(t->rp->store, &info) == 0 && st->epoch > info.epoch) {
        target_fenced(t, st->epoch);
        return;
    }
    target_push(t);
}

/* Whether this node's store names another node the primary: a newer
 * primary has already taken this node over (its Hello raised our epoch), so
 * this pusher is stale whatever epoch a Fenced carries. */
static bool superseded(struct repl_primary *rp)
{
    Smtpsync__Membership *m = NULL;
    const char *primary;
    bool other;

    if (store_repl_membership(rp->store, &m) != 0)
        return false;
    primary = repl_membership_primary(m);
    other = primary != NULL && strcmp(primary, rp->node_id) != 0;
    smtpsync__membership__free_unpacked(m, NULL);
    return other;
}

/* A replica says it follows a newer primary. Only an epoch above ours
 * fences this node (as in on_state): an equal or older one, from a stale or
 * confused replica, must not stop replication. Unless a newer primary has
 * already raised our epoch (the Fenced may answer a Hello sent before): we
 * are no longer the primary, and the fence stands. */
static void on_fenced(struct target *t, const Smtpsync__Fenced *fd)
{
    struct store_info info;
    int rc;

    if ((rc = store_info(t->rp->store, &info)) != 0) {
        log_warnx("replica %s: Fenced ignored: cannot read our epoch: %s", t->id, error_str(rc));
        return;
    }
    if (fd->epoch <= info.epoch && !superseded(t->rp)) {
        log_warnx("replica %s: Fenced with epoch %" PRIu64 ", not newer than ours (%" PRIu64
                  "): ignored",
                  t->id, fd->epoch, info.epoch);
        return;
    }
    target_fenced(t, fd->epoch);
}

static void on_ack(struct target *t, const Smtpsync__Ack *ack)
{
    struct store_info info;
    bool was_snapshot = t->state == T_SNAPSHOT;
    int rc;

    t->applied = ack->revision;
    if (!hash_of(t->hash, ack->hash))
        memset(t->hash, 0, sizeof(t->hash));
    t->inflight = 0;
    repl__mark_dirty(t);
    if (was_snapshot) {
        log_info("replica %s: snapshot acknowledged at revision %" PRIu64, t->id, t->applied);
        slot_release(t);
        t->need_snapshot = false;
        t->diverged = false;
    }
    if ((rc = store_info(t->rp->store, &info)) != 0) {
        target_fail(t, rc, "cannot read the store: %s", error_str(rc));
        return;
    }
    if (t->applied == info.revision && memcmp(t->hash, info.hash, STORE_HASH_LEN) == 0) {
        target_in_sync(t);
    } else if (t->applied < info.revision && !was_snapshot) {
        repl__target_send_delta(t); /* saved meanwhile, or more than one frame's worth */
    } else if (was_snapshot && t->applied != info.revision) {
        target_push(t); /* a save while the snapshot travelled */
    } else {
        char a[17], b[17];
        hex8(t->hash, STORE_HASH_LEN, a);
        hex8(info.hash, STORE_HASH_LEN, b);
        target_fail(t, ERROR_DIVERGED,
                    "acknowledged revision %" PRIu64 " with hash %s..., ours is %s...", t->applied,
                    a, b);
        t->need_snapshot = true;
        if (t->peer != NULL)
            peer_close(t->peer, 0, "acknowledged an unexpected hash");
    }
}

static void on_diverged(struct target *t, const Smtpsync__Diverged *dv)
{
    char e[17], a[17];

    hex8(dv->expected_hash.data, dv->expected_hash.len, e);
    hex8(dv->actual_hash.data, dv->actual_hash.len, a);
    t->diverged = true;
    repl__set_error(
        t, "diverged at revision %" PRIu64 ": expected hash %s..., the replica computed %s...",
        dv->revision, e, a);
    log_warnx("replica %s: %s: repairing with a snapshot", t->id, t->last_error);
    target_want_snapshot(t);
}

static void on_frame(void *arg, struct peer *p, const Smtpsync__Frame *f)
{
    struct target *t = arg;
    bool answer = f->id != 0 && f->id == t->inflight;

    (void)p;
    t->last_contact_ms = repl__now_ms(t->rp);
    if (answer)
        push_settled(t, f->body_case == SMTPSYNC__FRAME__BODY_ACK ? "ok" : "failed");
    switch (f->body_case) {
    case SMTPSYNC__FRAME__BODY_STATE:
        /* The answer to a Hello, or to a Delta that no longer fit the
         * replica's revision: decide again from what it says. */
        if (answer && (t->state == T_HELLO || t->state == T_PUSHING))
            on_state(t, f->state);
        break;
    case SMTPSYNC__FRAME__BODY_ACK:
        if (answer && (t->state == T_PUSHING || t->state == T_SNAPSHOT))
            on_ack(t, f->ack);
        break;
    case SMTPSYNC__FRAME__BODY_DIVERGED:
        if (answer && t->state == T_PUSHING)
            on_diverged(t, f->diverged);
        break;
    case SMTPSYNC__FRAME__BODY_FENCED:
        on_fenced(t, f->fenced);
        break;
    case SMTPSYNC__FRAME__BODY_STATUS_REPLY:
        if (f->status_reply->node != NULL)
            t->outbox_depth = f->status_reply->node->outbox_depth;
        repl__mark_dirty(t);
        break;
    case SMTPSYNC__FRAME__BODY_TEST_RESULT:
        repl__on_test_result(t, f->id, f->test_result, NULL);
        break;
    case SMTPSYNC__FRAME__BODY_ERROR:
        if (answer) {
            /* The replica refused the push: note it, reconnect later with a
             * snapshot (a state that rejects deltas is repaired whole). */
            repl__set_error(t, "the replica refused the push: %s",
                            f->error->message ? f->error->message : error_str(f->error->code));
            log_warnx("replica %s: %s", t->id, t->last_error);
            t->need_snapshot = true;
            if (t->state == T_SNAPSHOT)
                slot_release(t);
            peer_close(t->peer, 0, "push refused");
        } else {
            repl__on_test_result(t, f->id, NULL, f->error);
        }
        break;
    default:
        peer_close(t->peer, ERROR_INVALID, "unexpected frame from a replica");
        break;
    }
}

static void on_close(void *arg, struct peer *p, int err, const char *reason)
{
    struct target *t = arg;
    struct repl_primary *rp = t->rp;
    struct repl_sched_params sp = repl__sched_params(rp);

    (void)p;
    push_settled(t, "failed");
    t->peer = NULL;
    t->inflight = 0;
    t->known = false;
    slot_release(t);
    queue_remove(t);
    repl__target_tests_fail(t, err != 0 ? err : -ECONNRESET, reason);
    if (t->state == T_CLOSING) {
        t->closes--;
        target_maybe_free(t);
        return;
    }
    if (t->state == T_FENCED)
        return;
    repl_sched_failure(&sp, &t->sched, repl__now_ms(rp), &rp->rng);
    if (t->sched.failures == 1 || t->last_error[0] == '\0' || strstr(t->last_error, reason) == NULL)
        log_warnx("replica %s: connection to %s closed: %s (retry in %" PRIu64 " ms)", t->id,
                  t->address, reason, repl_sched_delay(&t->sched, repl__now_ms(rp)));
    repl__set_error(t, "%s", reason);
    target_set_state(t, T_IDLE);
    repl__target_waiters_done(t, err != 0 ? err : -ECONNRESET, reason);
    repl__target_arm(t);
}

static const struct peer_callbacks target_callbacks = {
    .authorize = NULL,
    .on_open = on_open,
    .on_frame = on_frame,
    .on_close = on_close,
};

void repl__target_connect(struct target *t)
{
    struct repl_primary *rp = t->rp;
    struct repl_sched_params sp = repl__sched_params(rp);
    struct peer_params pp = rp->tuning.peer;
    int rc;

    if (t->address[0] == '\0')
        return;
    if (pp.idle_timeout_ms == 0)
        pp.idle_timeout_ms = repl__keepalive_ms(rp) + answer_timeout_ms(rp);
    rc = peer_connect(rp->loop, t->address, rp->ctx, t->id, &pp, &target_callbacks, t, &t->peer);
    if (rc != 0) {
        t->peer = NULL;
        repl_sched_failure(&sp, &t->sched, repl__now_ms(rp), &rp->rng);
        repl__set_error(t, "cannot connect to %s: %s", t->address, error_str(rc));
        log_warnx("replica %s: %s", t->id, t->last_error);
        repl__target_waiters_done(t, rc, t->last_error);
        repl__target_arm(t);
        return;
    }
    target_set_state(t, T_CONNECTING);
}

/* A failure on an open connection: recorded, and the connection closed
 * (reconnecting with backoff). */
static void target_fail(struct target *t, int err, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(t->last_error, sizeof(t->last_error), fmt, ap);
    va_end(ap);
    repl__mark_dirty(t);
    log_warnx("replica %s: %s", t->id, t->last_error);
    t->inflight = 0;
    if (t->peer != NULL)
        peer_close(t->peer, err, t->last_error);
    else
        repl__target_waiters_done(t, err, t->last_error);
}

static void on_timer(uv_timer_t *h)
{
    struct target *t = h->data;
    int64_t now = repl__now_ms(t->rp);

    switch (t->state) {
    case T_IDLE:
        repl__target_connect(t);
        break;
    case T_READY:
        if (repl_sched_delay(&t->sched, now) == 0)
            repl__target_send_hello(t); /* the scheduled push: where does it stand? */
        else {
            target_keepalive(t);
            repl__target_arm(t);
        }
        break;
    case T_QUEUED:
        target_keepalive(t);
        repl__target_arm(t);
        break;
    case T_HELLO:
    case T_PUSHING:
    case T_SNAPSHOT:
        /* A link that went down without a FIN or RST (a partition) holds
         * the connection open until TCP gives up, minutes later: an answer
         * that does not come in time ends it, so the status says
         * unreachable and the reconnect backoff starts now. */
        target_fail(t, -ETIMEDOUT, "no answer to the %s within %" PRIu64 " ms",
                    t->state == T_HELLO     ? "Hello"
                    : t->state == T_PUSHING ? "Delta"
                                            : "Snapshot",
                    answer_deadline_ms(t));
        break;
    default:
        break;
    }
}

/* Arms the target's timer for what it waits on in its state. */
void repl__target_arm(struct target *t)
{
    struct repl_primary *rp = t->rp;
    int64_t now = repl__now_ms(rp);
    uint64_t delay;

    if (rp->fenced || rp->stopping || t->state == T_CLOSING || t->state == T_FENCED) {
        uv_timer_stop(&t->timer);
        return;
    }
    switch (t->state) {
    case T_IDLE:
        if (t->address[0] == '\0') {
            uv_timer_stop(&t->timer);
            return;
        }
        delay = repl_sched_delay(&t->sched, now);
        break;
    case T_READY:
    case T_QUEUED: {
        /* The next keepalive; for a READY replica the scheduled push if
         * sooner (a QUEUED one waits for a snapshot slot, not a time). */
        int64_t ka_at = t->last_sent_ms + (int64_t)repl__keepalive_ms(rp);
        delay = ka_at > now ? (uint64_t)(ka_at - now) : 0;
        if (t->state == T_READY && repl_sched_delay(&t->sched, now) < delay)
            delay = repl_sched_delay(&t->sched, now);
        break;
    }
    default:
        if (!target_awaits_answer(t)) {
            uv_timer_stop(&t->timer);
            return;
        }
        delay = answer_deadline_ms(t);
        break;
    }
    uv_timer_start(&t->timer, on_timer, delay, 0);
}

/* ---- fencing ---- */

static void target_fenced(struct target *by, uint64_t epoch)
{
    struct repl_primary *rp = by->rp;

    if (rp->fenced)
        return;
    rp->fenced = true;
    rp->fenced_epoch = epoch;
    snprintf(rp->fenced_by, sizeof(rp->fenced_by), "%s", by->id);
    log_error("FENCED: replica %s has epoch %" PRIu64 ", newer than ours: another node was "
              "promoted primary. This node stops pushing to every replica; its saves no "
              "longer replicate. Follow the disaster-recovery runbook.",
              by->id, epoch);
    for (struct target *t = rp->targets; t != NULL; t = t->next) {
        if (t->state == T_CLOSING)
            continue;
        slot_release(t);
        queue_remove(t);
        target_set_state(t, T_FENCED);
        repl__set_error(t,
                        "this node was fenced: %s has epoch %" PRIu64 " (a newer primary exists)",
                        by->id, epoch);
        uv_timer_stop(&t->timer);
        repl__target_waiters_done(t, ERROR_FENCED, t->last_error);
        if (t->peer != NULL)
            peer_close(t->peer, 0, "fenced by a newer primary");
    }
    if (rp->on_fenced != NULL)
        rp->on_fenced(rp->arg, by->id, epoch);
}

/* ---- targets ---- */

static void maybe_done(struct repl_primary *rp)
{
    if (!rp->stopping || rp->handles > 0)
        return;
    mtls_ctx_unref(rp->ctx);
    if (rp->done != NULL)
        rp->done(rp->done_arg);
    free(rp);
}

static void target_maybe_free(struct target *t)
{
    struct repl_primary *rp = t->rp;
    struct target **pp;

    if (t->closes > 0)
        return;
    for (pp = &rp->targets; *pp != NULL; pp = &(*pp)->next)
        if (*pp == t) {
            *pp = t->next;
            break;
        }
    free(t);
    rp->handles--;
    maybe_done(rp);
}

static void on_target_timer_closed(uv_handle_t *h)
{
    struct target *t = h->data;

    t->closes--;
    target_maybe_free(t);
}

/* Removes a target: its syncs and tests fail, its handles close. */
static void target_remove(struct target *t, int err, const char *why)
{
    if (t->state == T_CLOSING)
        return;
    slot_release(t);
    queue_remove(t);
    target_set_state(t, T_CLOSING);
    repl__target_waiters_done(t, err, why);
    repl__target_tests_fail(t, err, why);
    t->closes = 1;
    uv_close((uv_handle_t *)&t->timer, on_target_timer_closed);
    if (t->peer != NULL) {
        t->closes++;
        peer_close(t->peer, 0, why);
    }
}

struct target *repl__target_find(struct repl_primary *rp, const char *id)
{
    for (struct target *t = rp->targets; t != NULL; t = t->next)
        if (t->state != T_CLOSING && strcmp(t->id, id) == 0)
            return t;
    return NULL;
}

static struct target *target_new(struct repl_primary *rp, const char *id, const char *address)
{
    struct target *t = calloc(1, sizeof(*t));
    struct target **tail;

    if (t == NULL)
        return NULL;
    t->rp = rp;
    snprintf(t->id, sizeof(t->id), "%s", id);
    snprintf(t->address, sizeof(t->address), "%s", address ? address : "");
    t->state = T_IDLE;
    uv_timer_init(rp->loop, &t->timer);
    t->timer.data = t;
    repl_sched_init(&t->sched, repl__now_ms(rp), 0);
    repl__target_load(t);
    if (t->address[0] == '\0')
        repl__set_error(t, "no address for this replica in the membership");
    for (tail = &rp->targets; *tail != NULL; tail = &(*tail)->next)
        ;
    *tail = t;
    rp->handles++;
    return t;
}

int repl_primary_members_changed(struct repl_primary *rp)
{
    Smtpsync__Membership *m = NULL;
    int rc;

    if (rp->stopping)
        return 0;
    if ((rc = store_repl_membership(rp->store, &m)) != 0)
        return rc;
    /* Gone: removed (their persisted status stays for the record). */
    for (struct target *t = rp->targets; t != NULL; t = t->next) {
        const Smtpsync__Member *mb = repl_member_find(m, t->id);
        if (t->state == T_CLOSING)
            continue;
        if (mb == NULL || mb->role == SMTPSYNC__ROLE__ROLE_PRIMARY) {
            log_info("replica %s: no longer a replica of the membership", t->id);
            target_remove(t, ERROR_NOT_FOUND, "removed from the membership");
        }
    }
    for (size_t i = 0; i < m->n_members; i++) {
        const Smtpsync__Member *mb = m->members[i];
        struct target *t;
        if (mb->role == SMTPSYNC__ROLE__ROLE_PRIMARY || strcmp(mb->node, rp->node_id) == 0)
            continue;
        if ((t = repl__target_find(rp, mb->node)) == NULL) {
            if ((t = target_new(rp, mb->node, mb->address)) == NULL) {
                rc = -ENOMEM;
                break;
            }
            log_info("replica %s: pushing to %s", t->id, t->address[0] ? t->address : "(none)");
            if (!rp->fenced)
                repl__target_arm(t);
            else
                target_set_state(t, T_FENCED);
        } else if (strcmp(t->address, mb->address ? mb->address : "") != 0) {
            log_info("replica %s: address %s -> %s", t->id, t->address, mb->address);
            snprintf(t->address, sizeof(t->address), "%s", mb->address ? mb->address : "");
            if (t->peer != NULL)
                peer_close(t->peer, 0, "the replica's address changed");
            else
                repl__target_arm(t);
        }
    }
    smtpsync__membership__free_unpacked(m, NULL);
    return rc;
}

/* ---- public ---- */

int repl_primary_start(const struct repl_primary_params *params, struct repl_primary **out)
{
    struct repl_primary *rp;
    int rc;

    if (params->loop == NULL || params->store == NULL || params->ctx == NULL ||
        params->node_id == NULL || params->tuning.interval_ms == 0)
        return -EINVAL;
    if ((rp = calloc(1, sizeof(*rp))) == NULL)
        return -ENOMEM;
    rp->loop = params->loop;
    rp->store = params->store;
    rp->ctx = mtls_ctx_ref(params->ctx);
    snprintf(rp->node_id, sizeof(rp->node_id), "%s", params->node_id);
    rp->tuning = params->tuning;
    rp->clock = params->clock;
    if (params->rng != NULL)
        rp->rng = *params->rng;
    else
        rp->rng.next = backoff_rng_system;
    rp->on_fenced = params->on_fenced;
    rp->arg = params->arg;
    uv_timer_init(rp->loop, &rp->flush);
    rp->flush.data = rp;
    rp->handles = 1;
    if ((rc = repl_primary_members_changed(rp)) != 0) {
        repl_primary_stop(rp, NULL, NULL);
        return rc;
    }
    *out = rp;
    return 0;
}

static void on_flush_closed(uv_handle_t *h)
{
    struct repl_primary *rp = h->data;

    rp->handles--;
    maybe_done(rp);
}

void repl_primary_stop(struct repl_primary *rp, void (*done)(void *arg), void *arg)
{
    struct target *t, *next;

    if (rp->stopping)
        return;
    repl__flush_now(rp, true);
    rp->stopping = true;
    rp->done = done;
    rp->done_arg = arg;
    for (t = rp->targets; t != NULL; t = next) {
        next = t->next; /* a target may be freed only from a close callback */
        target_remove(t, -ECANCELED, "the daemon is stopping");
    }
    uv_close((uv_handle_t *)&rp->flush, on_flush_closed);
}
