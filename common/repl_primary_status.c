/*
 * repl_primary_status: the pusher's view of its replicas (repl.h): the
 * state each is shown in, lag in revisions and seconds, and the persisted
 * copy in the store (store_repl_status_*), written at most every
 * status_flush_ms and read back when a target starts, so a restarted
 * primary shows where every replica stood.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "log.h"
#include "repl_internal.h"

static void on_flush(uv_timer_t *h);

void repl__mark_dirty(struct target *t)
{
    struct repl_primary *rp = t->rp;
    uint64_t ms =
        rp->tuning.status_flush_ms ? rp->tuning.status_flush_ms : REPL_STATUS_FLUSH_DEFAULT_MS;

    t->dirty = true;
    if (rp->stopping)
        return;
    /* A flush put off for a quiet status must not delay this change. */
    if (!rp->flush_armed || uv_timer_get_due_in(&rp->flush) > ms) {
        rp->flush_armed = true;
        uv_timer_start(&rp->flush, on_flush, ms, 0);
    }
}

/* Revision -> time of the revisions after `from` (the oldest unapplied
 * revision's time is the lag). */
struct lag_scan {
    uint64_t after; /* the smallest applied revision of interest */
    int64_t *times; /* index: revision - after - 1 */
    size_t n;
    int64_t oldest; /* time of the oldest row seen (for compacted ranges) */
    uint64_t oldest_rev;
};

static int lag_row(const struct store_revision *r, void *arg)
{
    struct lag_scan *s = arg;

    if (r->revision <= s->after)
        return 1; /* older than anything asked: stop */
    if (r->revision - s->after - 1 < s->n)
        s->times[r->revision - s->after - 1] = r->time_ms;
    s->oldest = r->time_ms;
    s->oldest_rev = r->revision;
    return 0;
}

/* Time of revision `applied + 1`, from the scan; -1 when unknown. */
static int64_t lag_time(const struct lag_scan *s, uint64_t applied)
{
    if (s->times == NULL)
        return -1;
    if (applied >= s->after && applied - s->after < s->n && s->times[applied - s->after] != 0)
        return s->times[applied - s->after];
    /* Compacted: the oldest row kept is a lower bound of the lag. */
    if (s->oldest_rev > applied)
        return s->oldest;
    return -1;
}

/* Scans the history once for every target's lag. */
static void lag_scan_run(struct repl_primary *rp, const struct store_info *info, struct lag_scan *s)
{
    uint64_t min_applied = info->revision;

    memset(s, 0, sizeof(*s));
    for (struct target *t = rp->targets; t != NULL; t = t->next)
        if (t->state != T_CLOSING && t->applied < min_applied)
            min_applied = t->applied;
    if (min_applied >= info->revision)
        return;
    s->after = min_applied;
    s->n = (size_t)(info->revision - min_applied);
    if (s->n > 100000)
        s->n = 100000;
    if ((s->times = calloc(s->n, sizeof(*s->times))) == NULL)
        return;
    if (store_history(rp->store, s->n, lag_row, s) < 0) {
        free(s->times);
        s->times = NULL;
    }
}

static Smtpsync__ReplicaState target_public_state(const struct target *t,
                                                  const struct store_info *info)
{
    if (t->rp->fenced || t->state == T_FENCED)
        return SMTPSYNC__REPLICA_STATE__REPLICA_STATE_FENCED;
    if ((t->state == T_IDLE || t->state == T_CONNECTING) && t->sched.failures > 0)
        return SMTPSYNC__REPLICA_STATE__REPLICA_STATE_UNREACHABLE;
    if (t->diverged)
        return SMTPSYNC__REPLICA_STATE__REPLICA_STATE_DIVERGED;
    if (t->state == T_PUSHING || t->state == T_QUEUED || t->state == T_SNAPSHOT)
        return SMTPSYNC__REPLICA_STATE__REPLICA_STATE_SYNCING;
    if (t->sched.last_success_ms == 0)
        return SMTPSYNC__REPLICA_STATE__REPLICA_STATE_NEVER_SYNCED;
    if (t->applied == info->revision && memcmp(t->hash, info->hash, STORE_HASH_LEN) == 0)
        return SMTPSYNC__REPLICA_STATE__REPLICA_STATE_IN_SYNC;
    return SMTPSYNC__REPLICA_STATE__REPLICA_STATE_BEHIND;
}

/* A ReplicaStatus allocated as protobuf-c unpacks (free_unpacked frees it). */
static Smtpsync__ReplicaStatus *target_status(const struct target *t, const struct store_info *info,
                                              const struct lag_scan *lag, int64_t now)
{
    Smtpsync__ReplicaStatus *rs = malloc(sizeof(*rs));
    int64_t oldest;

    if (rs == NULL)
        return NULL;
    smtpsync__replica_status__init(rs);
    rs->id = strdup(t->id);
    rs->address = strdup(t->address);
    rs->last_error = strdup(t->last_error);
    if (rs->id == NULL || rs->address == NULL || rs->last_error == NULL) {
        smtpsync__replica_status__free_unpacked(rs, NULL);
        return NULL;
    }
    rs->state = target_public_state(t, info);
    rs->applied_revision = t->applied;
    rs->primary_revision = info->revision;
    rs->lag_revisions = info->revision > t->applied ? info->revision - t->applied : 0;
    if (rs->lag_revisions == 0)
        rs->lag_seconds = 0;
    else if ((oldest = lag_time(lag, t->applied)) > 0)
        rs->lag_seconds = now > oldest ? (now - oldest) / 1000 : 0;
    else
        rs->lag_seconds = -1;
    rs->last_contact_ms = t->last_contact_ms;
    rs->last_success_ms = t->sched.last_success_ms;
    rs->next_push_ms = t->rp->fenced || t->address[0] == '\0' ? 0 : t->sched.next_ms;
    rs->cert_expiry_ms = t->cert_expiry_ms;
    rs->outbox_depth = t->outbox_depth;
    rs->consecutive_failures = t->sched.failures;
    return rs;
}

/*
 * Writes the changed statuses, all in one durable LMDB commit on the loop's
 * thread (one fsync per flush, not one per replica: at 100 replicas a
 * commit each stalled the loop for hundreds of milliseconds). In steady
 * state (a replica in sync save after save) a status is written again only
 * when its state or error changed, or when the stored copy is
 * REPL_STATUS_REFRESH_MS old; `force` writes every changed one (at stop).
 */
void repl__flush_now(struct repl_primary *rp, bool force)
{
    struct store_info info;
    struct lag_scan lag;
    int64_t now = repl__now_ms(rp), later = INT64_MAX;
    Smtpsync__ReplicaStatus **rs = NULL;
    struct target **who = NULL;
    size_t dirty = 0, n = 0;
    int rc;

    if (rp->flush_armed) {
        uv_timer_stop(&rp->flush);
        rp->flush_armed = false;
    }
    for (struct target *t = rp->targets; t != NULL; t = t->next)
        dirty += t->dirty;
    if (dirty == 0)
        return;
    rs = calloc(dirty, sizeof(*rs));
    who = calloc(dirty, sizeof(*who));
    if (rs == NULL || who == NULL) {
        /* Still dirty: the next change or the next flush tries again. */
        log_warnx("cannot persist replica statuses: %s", error_str(-ENOMEM));
        later = now + REPL_STATUS_REFRESH_MS;
        goto rearm;
    }
    if (store_info(rp->store, &info) != 0)
        goto rearm;
    lag_scan_run(rp, &info, &lag);
    for (struct target *t = rp->targets; t != NULL && n < dirty; t = t->next) {
        Smtpsync__ReplicaStatus *one;
        if (!t->dirty)
            continue;
        if ((one = target_status(t, &info, &lag, now)) == NULL)
            continue;
        if (!force && one->state == t->persisted_state &&
            strcmp(one->last_error, t->persisted_error) == 0 &&
            now - t->persisted_ms < REPL_STATUS_REFRESH_MS) {
            int64_t due = t->persisted_ms + REPL_STATUS_REFRESH_MS;
            if (due < later)
                later = due;
            smtpsync__replica_status__free_unpacked(one, NULL);
            continue;
        }
        t->dirty = false;
        who[n] = t;
        rs[n++] = one;
    }
    free(lag.times);
    rc = store_repl_status_put_many(rp->store, (const Smtpsync__ReplicaStatus *const *)rs, n);
    for (size_t i = 0; i < n; i++) {
        struct target *t = who[i];
        if (rc != 0) {
            log_warnx("replica %s: cannot persist its status: %s", t->id, error_str(rc));
        } else {
            t->persisted_state = rs[i]->state;
            snprintf(t->persisted_error, sizeof(t->persisted_error), "%s", rs[i]->last_error);
            t->persisted_ms = now;
        }
        smtpsync__replica_status__free_unpacked(rs[i], NULL);
    }
rearm:
    free(who);
    free(rs);
    if (later != INT64_MAX && !rp->stopping) {
        rp->flush_armed = true;
        uv_timer_start(&rp->flush, on_flush, later > now ? (uint64_t)(later - now) : 0, 0);
    }
}

static void on_flush(uv_timer_t *h)
{
    struct repl_primary *rp = h->data;

    rp->flush_armed = false;
    repl__flush_now(rp, false);
}

/* The persisted view is where a restarted primary starts from. */
void repl__target_load(struct target *t)
{
    Smtpsync__ReplicaStatus *rs;

    if (store_repl_status_get(t->rp->store, t->id, &rs) != 0)
        return;
    t->applied = rs->applied_revision;
    t->last_contact_ms = rs->last_contact_ms;
    t->sched.last_success_ms = rs->last_success_ms;
    t->cert_expiry_ms = rs->cert_expiry_ms;
    t->outbox_depth = rs->outbox_depth;
    snprintf(t->last_error, sizeof(t->last_error), "%s", rs->last_error ? rs->last_error : "");
    /* Not persisted_*: the first flush of this process writes it anew. */
    if (rs->state == SMTPSYNC__REPLICA_STATE__REPLICA_STATE_DIVERGED) {
        t->diverged = true;
        t->need_snapshot = true;
    }
    /* The hash is not persisted: a target is in sync once State says so. */
    smtpsync__replica_status__free_unpacked(rs, NULL);
}

int repl_primary_status(struct repl_primary *rp, Smtpsync__StatusReply *reply)
{
    struct store_info info;
    struct lag_scan lag;
    int64_t now = repl__now_ms(rp);
    size_t n = 0;
    int rc;

    if ((rc = store_info(rp->store, &info)) != 0)
        return rc;
    for (struct target *t = rp->targets; t != NULL; t = t->next)
        if (t->state != T_CLOSING)
            n++;
    if (n == 0)
        return 0;
    Smtpsync__ReplicaStatus **grown =
        realloc(reply->replicas, (reply->n_replicas + n) * sizeof(*grown));
    if (grown == NULL)
        return -ENOMEM;
    reply->replicas = grown;
    lag_scan_run(rp, &info, &lag);
    for (struct target *t = rp->targets; t != NULL; t = t->next) {
        Smtpsync__ReplicaStatus *rs;
        if (t->state == T_CLOSING)
            continue;
        if ((rs = target_status(t, &info, &lag, now)) == NULL) {
            rc = -ENOMEM;
            break;
        }
        reply->replicas[reply->n_replicas++] = rs;
    }
    free(lag.times);
    return rc;
}
