/*
 * repl_replica: the agent (repl.h). Answers what a member sends on the
 * node's listener, connection by connection:
 *
 *   Hello     epoch lower than ours: Fenced{our epoch}, then close;
 *             from this node's own id: refused (a primary never takes
 *             pushes at its own epoch);
 *             our epoch from a member that is not the primary: refused;
 *             a higher epoch whose membership does not name the sender
 *             (its certificate's id, which the Hello's node must match) the
 *             primary: refused, nothing adopted;
 *             else (the primary, or a promoted node): the epoch and
 *             membership are adopted and State{...} answers; the
 *             connection may now push
 *   Delta     applied in one transaction: Ack{revision, hash}; a chain
 *             mismatch: Diverged{revision, expected, actual}; a delta that
 *             does not start at our revision: our State (the primary
 *             decides again)
 *   Snapshot  applied in one transaction: Ack
 *   StatusQuery  this node's StatusReply (the primary's keepalive too)
 *   RunTest   Test Connection here, answered by TestResult
 * Replies carry the request's frame id. A push (Delta, Snapshot, RunTest)
 * on a connection whose Hello was not accepted is refused and closed.
 */
#include "repl.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conntest.h"
#include "error.h"
#include "internal.h"
#include "log.h"
#include "settings_pb.h"

#ifndef SMTPSYNC_VERSION
#define SMTPSYNC_VERSION "unknown"
#endif

/* One member's connection. */
struct session {
    struct session *next;
    struct peer *p;
    bool accepted; /* its Hello was accepted: it may push */
};

/* A RunTest being run; outlives its connection and the agent if need be. */
struct test_run {
    struct test_run *next;
    struct repl_replica *rr; /* NULL once the agent is freed */
    struct peer *p;          /* NULL once the connection closed */
    uint64_t id;
};

struct repl_replica {
    uv_loop_t *loop;
    struct store *store;
    char node_id[MTLS_ID_MAX + 1];
    char configured_primary[MTLS_ID_MAX + 1];
    char helo[SYNTAX_HOSTNAME_MAX + 1];
    struct repl_clock clock;
    void (*applied)(void *arg, uint64_t revision);
    void (*membership_changed)(void *arg);
    int (*status)(void *arg, Smtpsync__StatusReply **out);
    uint64_t (*outbox_depth)(void *arg);
    void *arg;

    struct session *sessions;
    struct test_run *tests;
    uint64_t primary_revision;
    int64_t last_ms;
};

/* ---- replies ---- */

static void send_frame(struct peer *p, Smtpsync__Frame *f)
{
    int rc = peer_send(p, f);

    if (rc != 0 && rc != -ENOTCONN)
        log_warnx("cannot answer %s: %s", peer_id(p), error_str(rc));
}

static void send_error(struct peer *p, uint64_t id, int code, const char *message)
{
    Smtpsync__Frame f;
    Smtpsync__Error e;

    smtpsync__error__init(&e);
    e.code = code;
    e.message = BORROW_CONST(message);
    smtpsync__frame__init(&f);
    f.id = id;
    f.body_case = SMTPSYNC__FRAME__BODY_ERROR;
    f.error = &e;
    send_frame(p, &f);
}

/* Refuses and closes (an Error with id 0 would be taken for the farewell). */
static void refuse(struct peer *p, uint64_t id, int code, const char *message)
{
    log_warnx("refused %s: %s", peer_id(p), message);
    if (id != 0)
        send_error(p, id, code, message);
    peer_close(p, id != 0 ? 0 : code, message);
}

static void send_state(struct repl_replica *rr, struct peer *p, uint64_t id)
{
    struct store_info info;
    Smtpsync__Frame f;
    Smtpsync__State s;
    int rc;

    if ((rc = store_info(rr->store, &info)) != 0) {
        refuse(p, id, rc, "cannot read the store");
        return;
    }
    smtpsync__state__init(&s);
    s.epoch = info.epoch;
    s.applied_revision = info.revision;
    s.hash.data = info.hash;
    s.hash.len = STORE_HASH_LEN;
    s.outbox_depth = rr->outbox_depth != NULL ? rr->outbox_depth(rr->arg) : 0;
    s.version = BORROW_CONST(SMTPSYNC_VERSION);
    s.node = rr->node_id;
    smtpsync__frame__init(&f);
    f.id = id;
    f.body_case = SMTPSYNC__FRAME__BODY_STATE;
    f.state = &s;
    send_frame(p, &f);
}

static void send_ack(struct repl_replica *rr, struct peer *p, uint64_t id)
{
    struct store_info info;
    Smtpsync__Frame f;
    Smtpsync__Ack a;
    int rc;

    if ((rc = store_info(rr->store, &info)) != 0) {
        refuse(p, id, rc, "cannot read the store");
        return;
    }
    smtpsync__ack__init(&a);
    a.revision = info.revision;
    a.hash.data = info.hash;
    a.hash.len = STORE_HASH_LEN;
    smtpsync__frame__init(&f);
    f.id = id;
    f.body_case = SMTPSYNC__FRAME__BODY_ACK;
    f.ack = &a;
    send_frame(p, &f);
}

static void send_fenced(struct peer *p, uint64_t id, uint64_t epoch)
{
    Smtpsync__Frame f;
    Smtpsync__Fenced fe;

    smtpsync__fenced__init(&fe);
    fe.epoch = epoch;
    smtpsync__frame__init(&f);
    f.id = id;
    f.body_case = SMTPSYNC__FRAME__BODY_FENCED;
    f.fenced = &fe;
    send_frame(p, &f);
    peer_close(p, 0, "fenced: the sender's epoch is older");
}

/* ---- sessions ---- */

static struct session *session_get(struct repl_replica *rr, struct peer *p)
{
    struct session *s;

    for (s = rr->sessions; s != NULL; s = s->next)
        if (s->p == p)
            return s;
    if ((s = calloc(1, sizeof(*s))) == NULL)
        return NULL;
    s->p = p;
    s->next = rr->sessions;
    rr->sessions = s;
    return s;
}

void repl_replica_closed(struct repl_replica *rr, struct peer *p)
{
    struct session **pp, *s;

    for (pp = &rr->sessions; (s = *pp) != NULL; pp = &s->next)
        if (s->p == p) {
            *pp = s->next;
            free(s);
            break;
        }
    for (struct test_run *t = rr->tests; t != NULL; t = t->next)
        if (t->p == p)
            t->p = NULL;
}

/* ---- Hello ---- */

static bool membership_equal(const Smtpsync__Membership *a, const Smtpsync__Membership *b)
{
    size_t la = smtpsync__membership__get_packed_size(a);
    size_t lb = smtpsync__membership__get_packed_size(b);
    uint8_t *ba, *bb;
    bool eq = false;

    if (la != lb)
        return false;
    ba = malloc(la ? la : 1);
    bb = malloc(lb ? lb : 1);
    if (ba != NULL && bb != NULL) {
        smtpsync__membership__pack(a, ba);
        smtpsync__membership__pack(b, bb);
        eq = memcmp(ba, bb, la) == 0;
    }
    free(ba);
    free(bb);
    return eq;
}

static void on_hello(struct repl_replica *rr, struct session *s, uint64_t id,
                     const Smtpsync__Hello *h)
{
    const char *from = peer_id(s->p), *primary;
    Smtpsync__Membership *m = NULL;
    struct store_info info;
    bool changed = false;
    char why[2 * MTLS_ID_MAX + 128];
    int rc;

    if ((rc = store_info(rr->store, &info)) != 0 ||
        (rc = store_repl_membership(rr->store, &m)) != 0) {
        refuse(s->p, id, rc, "cannot read the store");
        return;
    }
    if (h->epoch < info.epoch) {
        log_warnx("refused a push from %s at epoch %" PRIu64 ": ours is %" PRIu64
                  " (a newer primary exists): answered Fenced",
                  from, h->epoch, info.epoch);
        send_fenced(s->p, id, info.epoch);
        goto out;
    }
    if (h->epoch == UINT64_MAX) {
        /* Adopting it would leave no epoch above it: promoting this node
         * later would overflow to 0 and be fenced by everyone. */
        refuse(s->p, id, ERROR_INVALID, "epoch out of range: a promotion would overflow");
        goto out;
    }
    if (strcmp(from, rr->node_id) == 0) {
        /* This node's own id: a node never pushes to itself, and a primary
         * never takes pushes at its own epoch (nor does anyone holding a
         * copy of its certificate). */
        snprintf(why, sizeof(why), "%s is this node's own id%s: it never pushes to itself", from,
                 repl_membership_primary(m) != NULL &&
                         strcmp(repl_membership_primary(m), rr->node_id) == 0
                     ? " (this node is the primary)"
                     : "");
        refuse(s->p, id, ERROR_FORBIDDEN, why);
        goto out;
    }
    primary = repl_membership_primary(m);
    if (primary == NULL && m->n_members == 0 && rr->configured_primary[0] != '\0')
        primary = rr->configured_primary;
    if (h->epoch == info.epoch && (primary == NULL || strcmp(primary, from) != 0)) {
        snprintf(why, sizeof(why), "%s is not the primary of epoch %" PRIu64 " (%s%s)", from,
                 info.epoch, primary ? "the primary is " : "no primary is known",
                 primary ? primary : "");
        refuse(s->p, id, ERROR_FORBIDDEN, why);
        goto out;
    }
    if (h->epoch > info.epoch) {
        /* Only a promoted node may raise the epoch, and it always sends its
         * membership naming itself the primary: anyone else's higher epoch
         * would fence the real primary (one Hello would leave the cluster
         * without one). The certificate's id decides; the Hello's node
         * field must agree with it. */
        const char *named = repl_membership_primary(h->membership);

        if (h->node == NULL || strcmp(h->node, from) != 0 || named == NULL ||
            strcmp(named, from) != 0) {
            char qnode[MTLS_ID_MAX + 16], qnamed[MTLS_ID_MAX + 16];

            log_quote(qnode, sizeof(qnode), h->node != NULL ? h->node : "");
            log_quote(qnamed, sizeof(qnamed), named != NULL ? named : "");
            log_warnx("refused epoch %" PRIu64 " from %s (ours is %" PRIu64
                      "): its Hello does not name it the primary (node=%s, primary=%s)",
                      h->epoch, from, info.epoch, qnode, qnamed);
            snprintf(why, sizeof(why),
                     "%s is not the primary of epoch %" PRIu64
                     ": a higher epoch needs a membership naming the sender the primary",
                     from, h->epoch);
            refuse(s->p, id, ERROR_FORBIDDEN, why);
            goto out;
        }
        if ((rc = store_repl_set_epoch(rr->store, h->epoch)) != 0) {
            refuse(s->p, id, rc, "cannot adopt the new epoch");
            goto out;
        }
        log_warnx("epoch %" PRIu64 " -> %" PRIu64 ": %s is the primary now", info.epoch, h->epoch,
                  from);
        changed = true;
    }
    if (h->membership != NULL && h->membership->n_members > 0 &&
        !membership_equal(m, h->membership)) {
        if ((rc = store_repl_set_membership(rr->store, h->membership)) != 0)
            log_warnx("cannot keep the membership sent by %s: %s", from, error_str(rc));
        else {
            log_info("membership updated by %s (%zu members)", from, h->membership->n_members);
            changed = true;
        }
    }
    if (!s->accepted)
        log_info("primary %s connected: epoch %" PRIu64 " revision %" PRIu64, from, h->epoch,
                 h->revision);
    s->accepted = true;
    rr->primary_revision = h->revision;
    rr->last_ms = repl_clock_now(&rr->clock);
    send_state(rr, s->p, id);
    if (changed && rr->membership_changed != NULL)
        rr->membership_changed(rr->arg);
out:
    smtpsync__membership__free_unpacked(m, NULL);
}

/* ---- pushes ---- */

static void on_delta(struct repl_replica *rr, struct session *s, uint64_t id,
                     const Smtpsync__Delta *d)
{
    uint8_t actual[STORE_HASH_LEN];
    struct store_info before, after;
    char msg[256];
    int rc;

    rr->last_ms = repl_clock_now(&rr->clock);
    if ((rc = store_info(rr->store, &before)) != 0) {
        refuse(s->p, id, rc, "cannot read the store");
        return;
    }
    memset(actual, 0, sizeof(actual));
    rc = store_repl_apply_delta(rr->store, d, actual);
    switch (rc) {
    case 0:
        if (store_info(rr->store, &after) != 0)
            after = before;
        log_info("applied revisions %" PRIu64 "..%" PRIu64 " from %s", d->from_revision + 1,
                 d->to_revision, peer_id(s->p));
        /* What the primary announced counts once applied, never from a
         * delta that was refused. */
        if (d->to_revision > rr->primary_revision)
            rr->primary_revision = d->to_revision;
        send_ack(rr, s->p, id);
        if (rr->applied != NULL)
            rr->applied(rr->arg, after.revision);
        if (after.epoch != before.epoch && rr->membership_changed != NULL)
            rr->membership_changed(rr->arg);
        return;
    case ERROR_FENCED:
        log_warnx("refused a delta from %s at epoch %" PRIu64 ": ours is %" PRIu64, peer_id(s->p),
                  d->epoch, before.epoch);
        send_fenced(s->p, id, before.epoch);
        return;
    case ERROR_CONFLICT:
        log_info("a delta from revision %" PRIu64 " does not start at ours (%" PRIu64
                 "): answered our state",
                 d->from_revision, before.revision);
        send_state(rr, s->p, id);
        return;
    case ERROR_DIVERGED: {
        Smtpsync__Frame f;
        Smtpsync__Diverged dv;

        log_warnx("delta %" PRIu64 "..%" PRIu64 " from %s does not chain onto our history: "
                  "diverged (nothing applied)",
                  d->from_revision, d->to_revision, peer_id(s->p));
        smtpsync__diverged__init(&dv);
        dv.revision = d->to_revision;
        dv.expected_hash = d->hash_after;
        dv.actual_hash.data = actual;
        dv.actual_hash.len = STORE_HASH_LEN;
        smtpsync__frame__init(&f);
        f.id = id;
        f.body_case = SMTPSYNC__FRAME__BODY_DIVERGED;
        f.diverged = &dv;
        send_frame(s->p, &f);
        return;
    }
    default:
        snprintf(msg, sizeof(msg), "cannot apply delta %" PRIu64 "..%" PRIu64 ": %s",
                 d->from_revision, d->to_revision, error_str(rc));
        log_warnx("%s (from %s)", msg, peer_id(s->p));
        send_error(s->p, id, rc, msg);
        return;
    }
}

static void on_snapshot(struct repl_replica *rr, struct session *s, uint64_t id,
                        const Smtpsync__Snapshot *snap)
{
    struct store_info before;
    char msg[256];
    int rc;

    rr->last_ms = repl_clock_now(&rr->clock);
    if ((rc = store_info(rr->store, &before)) != 0) {
        refuse(s->p, id, rc, "cannot read the store");
        return;
    }
    rc = store_repl_apply_snapshot(rr->store, snap);
    if (rc == ERROR_FENCED) {
        log_warnx("refused a snapshot from %s at epoch %" PRIu64 ": ours is %" PRIu64,
                  peer_id(s->p), snap->epoch, before.epoch);
        send_fenced(s->p, id, before.epoch);
        return;
    }
    if (rc != 0) {
        snprintf(msg, sizeof(msg), "cannot apply the snapshot of revision %" PRIu64 ": %s",
                 snap->revision, error_str(rc));
        log_warnx("%s (from %s)", msg, peer_id(s->p));
        send_error(s->p, id, rc, msg);
        return;
    }
    if (snap->revision < before.revision)
        /* Legitimate after a divergence at the same epoch, but also what a
         * primary restored from an old backup does to every replica:
         * docs/OPERATIONS.md says to promote a replica instead. */
        log_warnx("applied the snapshot of revision %" PRIu64 " from %s: this store went BACK "
                  "from revision %" PRIu64 " (%" PRIu64 " revisions undone)",
                  snap->revision, peer_id(s->p), before.revision, before.revision - snap->revision);
    else
        log_info("applied the snapshot of revision %" PRIu64 " (%zu records) from %s (was %" PRIu64
                 ")",
                 snap->revision, snap->n_records, peer_id(s->p), before.revision);
    rr->primary_revision = snap->revision; /* the primary's state, whole, once applied */
    send_ack(rr, s->p, id);
    if (rr->applied != NULL)
        rr->applied(rr->arg, snap->revision);
    if (rr->membership_changed != NULL)
        rr->membership_changed(rr->arg);
}

/* ---- status and tests ---- */

static void on_status_query(struct repl_replica *rr, struct session *s, uint64_t id)
{
    Smtpsync__StatusReply *reply = NULL;
    Smtpsync__Frame f;
    int rc = ERROR_INVALID;

    if (s->accepted)
        rr->last_ms = repl_clock_now(&rr->clock);
    if (rr->status == NULL || (rc = rr->status(rr->arg, &reply)) != 0) {
        send_error(s->p, id, rc, "no status");
        return;
    }
    smtpsync__frame__init(&f);
    f.id = id;
    f.body_case = SMTPSYNC__FRAME__BODY_STATUS_REPLY;
    f.status_reply = reply;
    send_frame(s->p, &f);
    smtpsync__status_reply__free_unpacked(reply, NULL);
}

static void on_test_done(void *arg, Smtpsync__TestResult *result)
{
    struct test_run *t = arg;
    Smtpsync__Frame f;

    if (t->p != NULL) {
        smtpsync__frame__init(&f);
        f.id = t->id;
        f.body_case = SMTPSYNC__FRAME__BODY_TEST_RESULT;
        f.test_result = result;
        send_frame(t->p, &f);
    }
    conntest_result_free(result);
    if (t->rr != NULL) {
        struct test_run **pp;
        for (pp = &t->rr->tests; *pp != NULL; pp = &(*pp)->next)
            if (*pp == t) {
                *pp = t->next;
                break;
            }
    }
    free(t);
}

static void on_run_test(struct repl_replica *rr, struct session *s, uint64_t id,
                        const Smtpsync__RunTest *rt)
{
    struct settings_problems problems;
    struct conntest_params cp;
    struct settings settings;
    struct test_run *t;
    char msg[2 * SETTINGS_PROBLEM_TEXT_MAX], instance[SETTINGS_INSTANCE_MAX + 1];
    int rc;

    if (rt->settings == NULL) {
        send_error(s->p, id, ERROR_INVALID, "RunTest without settings");
        return;
    }
    settings_init(&settings);
    memset(&problems, 0, sizeof(problems));
    if (settings_pb_decode(&settings, rt->settings, &problems) != 0) {
        snprintf(msg, sizeof(msg), "the test's settings do not decode%s%s%s%s",
                 problems.count ? ": " : "", problems.count ? problems.items[0].field : "",
                 problems.count ? ": " : "", problems.count ? problems.items[0].message : "");
        send_error(s->p, id, ERROR_INVALID, msg);
        return;
    }
    if ((t = calloc(1, sizeof(*t))) == NULL) {
        settings_clear(&settings);
        send_error(s->p, id, -ENOMEM, "out of memory");
        return;
    }
    t->rr = rr;
    t->p = s->p;
    t->id = id;
    memset(&cp, 0, sizeof(cp));
    cp.settings = &settings;
    cp.to = rt->to != NULL && rt->to[0] != '\0' ? rt->to : NULL;
    cp.node = rr->node_id;
    cp.helo = rr->helo[0] != '\0' ? rr->helo : NULL;
    cp.revision = rt->revision != NULL && rt->revision[0] != '\0' ? rt->revision : NULL;
    snprintf(instance, sizeof(instance), "%s", settings.instance);
    rc = conntest_start(rr->loop, &cp, on_test_done, t);
    settings_clear(&settings); /* conntest copied it; the password is wiped */
    if (rc != 0) {
        free(t);
        send_error(s->p, id, rc, "cannot start the test");
        return;
    }
    log_info("test connection for %s requested by %s", instance, peer_id(s->p));
    t->next = rr->tests;
    rr->tests = t;
}

/* ---- dispatch ---- */

void repl_replica_frame(struct repl_replica *rr, struct peer *p, const Smtpsync__Frame *f)
{
    struct session *s = session_get(rr, p);

    if (s == NULL) {
        peer_close(p, -ENOMEM, "out of memory");
        return;
    }
    if (f->id == 0) {
        refuse(p, 0, ERROR_INVALID, "a request without an id");
        return;
    }
    switch (f->body_case) {
    case SMTPSYNC__FRAME__BODY_HELLO:
        on_hello(rr, s, f->id, f->hello);
        return;
    case SMTPSYNC__FRAME__BODY_STATUS_QUERY:
        on_status_query(rr, s, f->id);
        return;
    case SMTPSYNC__FRAME__BODY_DELTA:
    case SMTPSYNC__FRAME__BODY_SNAPSHOT:
    case SMTPSYNC__FRAME__BODY_RUN_TEST:
        if (!s->accepted) {
            refuse(p, f->id, ERROR_FORBIDDEN, "a push before an accepted Hello");
            return;
        }
        if (f->body_case == SMTPSYNC__FRAME__BODY_DELTA)
            on_delta(rr, s, f->id, f->delta);
        else if (f->body_case == SMTPSYNC__FRAME__BODY_SNAPSHOT)
            on_snapshot(rr, s, f->id, f->snapshot);
        else
            on_run_test(rr, s, f->id, f->run_test);
        return;
    default:
        refuse(p, f->id, ERROR_INVALID, "unexpected frame from a member");
        return;
    }
}

/* ---- life ---- */

int repl_replica_new(const struct repl_replica_params *params, struct repl_replica **out)
{
    struct repl_replica *rr;

    if (params->loop == NULL || params->store == NULL || params->node_id == NULL)
        return -EINVAL;
    if ((rr = calloc(1, sizeof(*rr))) == NULL)
        return -ENOMEM;
    rr->loop = params->loop;
    rr->store = params->store;
    snprintf(rr->node_id, sizeof(rr->node_id), "%s", params->node_id);
    snprintf(rr->helo, sizeof(rr->helo), "%s", params->helo ? params->helo : "");
    rr->clock = params->clock;
    rr->applied = params->applied;
    rr->membership_changed = params->membership_changed;
    rr->status = params->status;
    rr->outbox_depth = params->outbox_depth;
    rr->arg = params->arg;
    repl_replica_set_primary(rr, params->configured_primary);
    *out = rr;
    return 0;
}

int repl_replica_set_primary(struct repl_replica *rr, const char *configured_primary)
{
    snprintf(rr->configured_primary, sizeof(rr->configured_primary), "%s",
             configured_primary ? configured_primary : "");
    return 0;
}

void repl_replica_primary_info(const struct repl_replica *rr, uint64_t *revision, int64_t *last_ms)
{
    if (revision != NULL)
        *revision = rr->primary_revision;
    if (last_ms != NULL)
        *last_ms = rr->last_ms;
}

void repl_replica_free(struct repl_replica *rr)
{
    struct session *s, *sn;

    if (rr == NULL)
        return;
    for (struct test_run *t = rr->tests; t != NULL; t = t->next)
        t->rr = NULL;
    for (s = rr->sessions; s != NULL; s = sn) {
        sn = s->next;
        free(s);
    }
    free(rr);
}
