/*
 * repl_node_role: who is the primary (repl.h). The membership written by a
 * primary daemon from its configuration, the pusher started or stopped to
 * match the store's membership, promotion, and this node's status.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "internal.h"
#include "log.h"
#include "repl_internal.h"

#ifndef SMTPSYNC_VERSION
#define SMTPSYNC_VERSION "unknown"
#endif

/* ---- helpers shared by the parts ---- */

const Smtpsync__Member *repl_member_find(const Smtpsync__Membership *m, const char *node)
{
    for (size_t i = 0; m != NULL && i < m->n_members; i++)
        if (m->members[i]->node != NULL && strcmp(m->members[i]->node, node) == 0)
            return m->members[i];
    return NULL;
}

const char *repl_membership_primary(const Smtpsync__Membership *m)
{
    for (size_t i = 0; m != NULL && i < m->n_members; i++)
        if (m->members[i]->role == SMTPSYNC__ROLE__ROLE_PRIMARY)
            return m->members[i]->node;
    return NULL;
}

const char *repl_state_name(Smtpsync__ReplicaState s)
{
    const char *name = admin_replica_state_name(s);

    return name != NULL ? name : "unknown";
}

/* ---- membership ---- */

static bool membership_same(const Smtpsync__Membership *a, const Smtpsync__Membership *b)
{
    if (a->n_members != b->n_members)
        return false;
    for (size_t i = 0; i < a->n_members; i++) {
        const Smtpsync__Member *x = a->members[i], *y = b->members[i];
        if (strcmp(x->node, y->node) != 0 || strcmp(x->address, y->address) != 0 ||
            x->role != y->role)
            return false;
    }
    return true;
}

/* A membership view: members point into `c` and `rn`; nothing to free but
 * the two arrays. */
struct membership_view {
    Smtpsync__Membership m;
    Smtpsync__Member *items;
    Smtpsync__Member **ptrs;
};

static int view_alloc(struct membership_view *v, size_t n)
{
    smtpsync__membership__init(&v->m);
    v->items = calloc(n ? n : 1, sizeof(*v->items));
    v->ptrs = calloc(n ? n : 1, sizeof(*v->ptrs));
    if (v->items == NULL || v->ptrs == NULL) {
        free(v->items);
        free(v->ptrs);
        return -ENOMEM;
    }
    v->m.members = v->ptrs;
    return 0;
}

static void view_add(struct membership_view *v, const char *node, const char *address,
                     Smtpsync__Role role)
{
    Smtpsync__Member *mb = &v->items[v->m.n_members];

    smtpsync__member__init(mb);
    mb->node = BORROW_CONST(node);
    mb->address = BORROW_CONST(address);
    mb->role = role;
    v->ptrs[v->m.n_members++] = mb;
}

static void view_free(struct membership_view *v)
{
    free(v->items);
    free(v->ptrs);
}

/*
 * smtpsync-primary: while this node is the primary (or nothing is known
 * yet), the membership is this node and its [replica] sections. When the
 * store names another primary, this node was replaced: it runs as a
 * replica and writes nothing.
 */
void repl__write_config_membership(struct repl_node *rn)
{
    Smtpsync__Membership *m = NULL;
    struct membership_view v;
    const char *primary;
    int rc;

    if (!rn->primary_daemon)
        return;
    if ((rc = store_repl_membership(rn->store, &m)) != 0) {
        log_error("cannot read the membership: %s", error_str(rc));
        return;
    }
    primary = repl_membership_primary(m);
    if (m->n_members > 0 && (primary == NULL || strcmp(primary, rn->node_id) != 0)) {
        log_warnx("the membership names %s as the primary: this node runs as a replica "
                  "(its [replica] sections are not used) until it is promoted",
                  primary ? primary : "no node");
        goto out;
    }
    if (view_alloc(&v, rn->cfg.nreplicas + 1) != 0)
        goto out;
    view_add(&v, rn->node_id, rn->cfg.address, SMTPSYNC__ROLE__ROLE_PRIMARY);
    for (size_t i = 0; i < rn->cfg.nreplicas; i++)
        view_add(&v, rn->cfg.replicas[i].id, rn->cfg.replicas[i].address,
                 SMTPSYNC__ROLE__ROLE_REPLICA);
    if (!membership_same(&v.m, m)) {
        if ((rc = store_repl_set_membership(rn->store, &v.m)) != 0)
            log_error("cannot write the membership: %s", error_str(rc));
        else
            log_info("membership written from the configuration: %s and %zu replicas", rn->node_id,
                     rn->cfg.nreplicas);
    }
    view_free(&v);
out:
    smtpsync__membership__free_unpacked(m, NULL);
}

/* ---- the pusher ---- */

static void on_fenced(void *arg, const char *by, uint64_t epoch)
{
    struct repl_node *rn = arg;

    (void)by;
    rn->is_primary = false;
    rn->fenced_epoch = epoch;
}

void repl__pusher_stop(struct repl_node *rn)
{
    if (rn->pusher == NULL)
        return;
    rn->parts++;
    repl_primary_stop(rn->pusher, repl__node_part_done, rn);
    rn->pusher = NULL;
}

static int pusher_start(struct repl_node *rn)
{
    struct repl_primary_params pp;
    int rc;

    memset(&pp, 0, sizeof(pp));
    pp.loop = rn->loop;
    pp.store = rn->store;
    pp.ctx = rn->ctx;
    pp.node_id = rn->node_id;
    pp.tuning = rn->cfg.tuning;
    pp.clock = rn->clock;
    pp.rng = rn->have_rng ? &rn->rng : NULL;
    pp.on_fenced = on_fenced;
    pp.arg = rn;
    if ((rc = repl_primary_start(&pp, &rn->pusher)) != 0) {
        rn->pusher = NULL;
        log_error("cannot start pushing to the replicas: %s", error_str(rc));
        return rc;
    }
    rn->fenced_epoch = 0; /* the primary again (promoted): not fenced */
    return 0;
}

/* Who is the primary now? Starts or stops the pusher to match. */
void repl__recompute_role(struct repl_node *rn)
{
    Smtpsync__Membership *m = NULL;
    const char *primary;
    bool push, was = rn->is_primary;
    int rc;

    if (rn->stopping)
        return;
    if ((rc = store_repl_membership(rn->store, &m)) != 0) {
        log_error("cannot read the membership: %s", error_str(rc));
        return;
    }
    primary = repl_membership_primary(m);
    if (m->n_members > 0)
        push = primary != NULL && strcmp(primary, rn->node_id) == 0;
    else
        push = rn->primary_daemon;
    smtpsync__membership__free_unpacked(m, NULL);
    if (push && rn->pusher == NULL)
        (void)pusher_start(rn);
    else if (push)
        (void)repl_primary_members_changed(rn->pusher);
    else
        repl__pusher_stop(rn);
    rn->is_primary = rn->pusher != NULL && !repl_primary_fenced(rn->pusher, NULL);
    if (rn->is_primary != was)
        log_info("role: %s", rn->is_primary ? "primary" : "replica");
}

/* ---- status ---- */

int repl_node_status(struct repl_node *rn, Smtpsync__StatusReply **out)
{
    Smtpsync__StatusReply *reply = malloc(sizeof(*reply));
    Smtpsync__NodeStatus *ns = malloc(sizeof(*ns));
    Smtpsync__Membership *m = NULL;
    struct store_info info;
    uint64_t pending = 0, dead = 0;
    const char *primary;
    int rc;

    if (reply == NULL || ns == NULL) {
        free(reply);
        free(ns);
        return -ENOMEM;
    }
    smtpsync__status_reply__init(reply);
    smtpsync__node_status__init(ns);
    reply->node = ns;
    if ((rc = store_info(rn->store, &info)) != 0 ||
        (rc = store_repl_membership(rn->store, &m)) != 0)
        goto fail;
    primary = repl_membership_primary(m);
    if (primary == NULL && m->n_members == 0)
        primary = rn->is_primary ? rn->node_id : rn->cfg.primary;
    ns->node = strdup(rn->node_id);
    ns->version = strdup(SMTPSYNC_VERSION);
    ns->primary = strdup(primary ? primary : "");
    ns->hash.data = malloc(STORE_HASH_LEN);
    smtpsync__membership__free_unpacked(m, NULL);
    if (ns->node == NULL || ns->version == NULL || ns->primary == NULL || ns->hash.data == NULL) {
        rc = -ENOMEM;
        goto fail;
    }
    memcpy(ns->hash.data, info.hash, STORE_HASH_LEN);
    ns->hash.len = STORE_HASH_LEN;
    ns->role = rn->is_primary ? SMTPSYNC__ROLE__ROLE_PRIMARY : SMTPSYNC__ROLE__ROLE_REPLICA;
    ns->epoch = info.epoch;
    ns->revision = info.revision;
    ns->revision_time_ms = info.revision_time_ms;
    if (rn->outbox_depth != NULL)
        rn->outbox_depth(rn->arg, &pending, &dead);
    ns->outbox_depth = pending;
    ns->dead_count = dead;
    ns->cert_expiry_ms = (int64_t)mtls_ctx_expiry(rn->ctx) * 1000;
    repl_replica_primary_info(rn->agent, &ns->primary_revision, &ns->last_push_ms);
    ns->fenced_epoch = rn->fenced_epoch;
    if (rn->pusher != NULL) {
        if ((rc = repl_primary_status(rn->pusher, reply)) != 0)
            goto fail;
    }
    *out = reply;
    return 0;
fail:
    smtpsync__status_reply__free_unpacked(reply, NULL);
    return rc;
}

/* ---- promotion ---- */

int repl_node_promote(struct repl_node *rn, bool force, uint64_t *epoch, char *why, size_t whylen)
{
    Smtpsync__Membership *m = NULL;
    struct membership_view v;
    struct store_info info;
    uint64_t announced = 0, fenced_epoch = 0, next;
    const char *old_primary;
    bool has_self = false;
    int rc;

    if (rn->is_primary) {
        snprintf(why, whylen, "this node is already the primary");
        return ERROR_INVALID;
    }
    if ((rc = store_info(rn->store, &info)) != 0 ||
        (rc = store_repl_membership(rn->store, &m)) != 0) {
        snprintf(why, whylen, "cannot read the store: %s", error_str(rc));
        return rc;
    }
    repl_replica_primary_info(rn->agent, &announced, NULL);
    if (!force && announced > info.revision) {
        snprintf(why, whylen,
                 "this node lags: it has revision %" PRIu64 ", the primary announced %" PRIu64
                 " (%" PRIu64 " behind); promote --force makes it primary anyway, and those "
                 "revisions are lost",
                 info.revision, announced, announced - info.revision);
        rc = ERROR_CONFLICT;
        goto out;
    }
    fenced_epoch = rn->fenced_epoch;
    next = (info.epoch > fenced_epoch ? info.epoch : fenced_epoch) + 1;
    old_primary = repl_membership_primary(m);
    if ((rc = view_alloc(&v, m->n_members + 1 + rn->cfg.nreplicas)) != 0) {
        snprintf(why, whylen, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < m->n_members; i++) {
        const Smtpsync__Member *mb = m->members[i];
        bool self = strcmp(mb->node, rn->node_id) == 0;
        const char *address = mb->address;
        has_self |= self;
        if (self && rn->cfg.address[0] != '\0')
            address = rn->cfg.address;
        view_add(&v, mb->node, address,
                 self ? SMTPSYNC__ROLE__ROLE_PRIMARY : SMTPSYNC__ROLE__ROLE_REPLICA);
    }
    if (!has_self)
        view_add(&v, rn->node_id, rn->cfg.address, SMTPSYNC__ROLE__ROLE_PRIMARY);
    if (m->n_members == 0)
        for (size_t i = 0; i < rn->cfg.nreplicas; i++)
            view_add(&v, rn->cfg.replicas[i].id, rn->cfg.replicas[i].address,
                     SMTPSYNC__ROLE__ROLE_REPLICA);
    /* The epoch first: should the membership write fail, the node is not
     * primary yet but no longer takes pushes from the old one; promoting
     * again finishes the job. */
    if ((rc = store_repl_set_epoch(rn->store, next)) != 0)
        snprintf(why, whylen, "cannot raise the epoch: %s", error_str(rc));
    else if ((rc = store_repl_set_membership(rn->store, &v.m)) != 0)
        snprintf(why, whylen, "cannot write the membership: %s", error_str(rc));
    view_free(&v);
    if (rc != 0)
        goto out;
    log_warnx("PROMOTED: this node is the primary now, epoch %" PRIu64 " (was %" PRIu64
              "); the old primary %s is fenced%s",
              next, info.epoch, old_primary ? old_primary : "(none known)",
              force && announced > info.revision ? " (forced: revisions it lacked are lost)" : "");
    repl__pusher_stop(rn); /* a fenced one, if any: a fresh pusher starts */
    repl__recompute_role(rn);
    if (epoch != NULL)
        *epoch = next;
out:
    smtpsync__membership__free_unpacked(m, NULL);
    return rc;
}
