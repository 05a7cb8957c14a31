/*
 * repl_node: a node's replication side (repl.h): the listener and who may
 * use it, the admin API's hooks, the agent, and the pusher while this node
 * is the primary.
 *
 * Every accepted connection is judged at the handshake (authorize): a
 * member of the membership (or, before any membership is known, the
 * configured primary) is a member connection, its frames go to the agent;
 * an id of [admin] is an admin connection with that role, its frames go to
 * admin_handle(); anything else is refused (peer.c logs it). A member id
 * is looked up first, so a node's certificate can never act as an admin.
 * The decision is taken again for every open connection after a reload
 * and after the agent saw the membership change (repl__node_recheck):
 * rights removed there end the connection at once, a changed admin role
 * applies from the next request.
 */
#include "repl.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "conntest.h"
#include "error.h"
#include "internal.h"
#include "log.h"
#include "repl_internal.h"
#include "settings_pb.h"

#ifndef SMTPSYNC_VERSION
#define SMTPSYNC_VERSION "unknown"
#endif

/* ---- the owned config ---- */

static void strs_free(char **v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

static void cfg_free(struct node_cfg *c)
{
    free(c->replicas);
    strs_free(c->super_admins, c->nsuper_admins);
    strs_free(c->operators, c->noperators);
    memset(c, 0, sizeof(*c));
}

static int strs_copy(char ***out, const char *const *v, size_t n)
{
    *out = NULL;
    if (n == 0)
        return 0;
    if ((*out = calloc(n, sizeof(**out))) == NULL)
        return -ENOMEM;
    for (size_t i = 0; i < n; i++)
        if (((*out)[i] = strdup(v[i])) == NULL)
            return -ENOMEM;
    return 0;
}

static int cfg_copy(struct node_cfg *c, const struct repl_node_config *src)
{
    memset(c, 0, sizeof(*c));
    c->tuning = src->tuning;
    snprintf(c->primary, sizeof(c->primary), "%s", src->primary ? src->primary : "");
    snprintf(c->address, sizeof(c->address), "%s", src->address ? src->address : "");
    if (src->nreplicas > 0) {
        if ((c->replicas = calloc(src->nreplicas, sizeof(*c->replicas))) == NULL)
            goto nomem;
        c->nreplicas = src->nreplicas;
        for (size_t i = 0; i < src->nreplicas; i++) {
            snprintf(c->replicas[i].id, sizeof(c->replicas[i].id), "%s", src->replicas[i].id);
            snprintf(c->replicas[i].address, sizeof(c->replicas[i].address), "%s",
                     src->replicas[i].address ? src->replicas[i].address : "");
        }
    }
    c->nsuper_admins = src->nsuper_admins;
    if (strs_copy(&c->super_admins, src->super_admins, src->nsuper_admins) != 0)
        goto nomem;
    c->noperators = src->noperators;
    if (strs_copy(&c->operators, src->operators, src->noperators) != 0)
        goto nomem;
    return 0;
nomem:
    cfg_free(c);
    return -ENOMEM;
}

static bool strs_has(char *const *v, size_t n, const char *s)
{
    for (size_t i = 0; i < n; i++)
        if (v[i] != NULL && strcmp(v[i], s) == 0)
            return true;
    return false;
}

/* ---- revisions ---- */

static void compact(struct repl_node *rn)
{
    struct store_info info;
    uint64_t keep = rn->cfg.tuning.history_keep, removed = 0;
    int rc;

    if (keep == 0 || store_info(rn->store, &info) != 0)
        return;
    if (info.revision - info.base_revision <= keep)
        return;
    if ((rc = store_compact(rn->store, keep, &removed)) != 0)
        log_warnx("cannot compact the history to %" PRIu64 " revisions: %s", keep, error_str(rc));
    else
        log_debug("history compacted: %" PRIu64 " revisions folded into the base", removed);
}

void repl_node_revision_changed(struct repl_node *rn, uint64_t revision)
{
    if (rn->stopping || revision == rn->revision)
        return;
    rn->revision = revision;
    if (rn->pusher != NULL)
        repl_primary_saved(rn->pusher, revision);
    if (rn->settings_changed != NULL)
        rn->settings_changed(rn->arg);
    compact(rn);
}

/* ---- the agent's callbacks ---- */

static void agent_applied(void *arg, uint64_t revision)
{
    struct repl_node *rn = arg;

    rn->revision = revision;
    if (rn->settings_changed != NULL)
        rn->settings_changed(rn->arg);
    compact(rn);
}

static void agent_membership_changed(void *arg)
{
    repl__recompute_role(arg);
    repl__node_recheck(arg, "a membership change");
}

static int agent_status(void *arg, Smtpsync__StatusReply **out)
{
    return repl_node_status(arg, out);
}

static uint64_t agent_outbox_depth(void *arg)
{
    struct repl_node *rn = arg;
    uint64_t pending = 0, dead = 0;

    if (rn->outbox_depth != NULL)
        rn->outbox_depth(rn->arg, &pending, &dead);
    return pending;
}

/* ---- admin hooks ---- */

static bool hook_is_primary(void *arg)
{
    return ((struct repl_node *)arg)->is_primary;
}

static void hook_saved(void *arg, uint64_t revision)
{
    repl_node_revision_changed(arg, revision);
}

static int hook_status(void *arg, Smtpsync__StatusReply **out)
{
    return repl_node_status(arg, out);
}

static int hook_sync(void *arg, const char *replica, admin_done_cb done, void *done_arg, char *why,
                     size_t whylen)
{
    struct repl_node *rn = arg;

    if (!rn->is_primary || rn->pusher == NULL) {
        snprintf(why, whylen, "this node is not the primary");
        return ERROR_NOT_PRIMARY;
    }
    return repl_primary_sync(rn->pusher, replica, done, done_arg, why, whylen);
}

static int hook_promote(void *arg, bool force, uint64_t *epoch, char *why, size_t whylen)
{
    return repl_node_promote(arg, force, epoch, why, whylen);
}

static void local_test_done(void *arg, Smtpsync__TestResult *result)
{
    struct local_test *lt = arg;

    if (lt->cancelled) {
        conntest_result_free(result);
        free(lt);
        return;
    }
    for (struct local_test **pp = &lt->rn->tests; *pp != NULL; pp = &(*pp)->next)
        if (*pp == lt) {
            *pp = lt->next;
            break;
        }
    lt->done(lt->arg, 0, "", result);
    free(lt);
}

static int hook_run_test(void *arg, const char *instance, const struct settings *settings,
                         const char *to, const char *revision, admin_test_cb done, void *done_arg,
                         char *why, size_t whylen)
{
    struct repl_node *rn = arg;
    struct settings_pb view;
    Smtpsync__RunTest rt;
    int rc;

    if (strcmp(instance, rn->node_id) == 0) {
        struct conntest_params cp = {
            .settings = settings,
            .to = to,
            .node = rn->node_id,
            .helo = rn->helo[0] ? rn->helo : NULL,
            .revision = revision,
        };
        struct local_test *lt = calloc(1, sizeof(*lt));
        if (lt == NULL) {
            snprintf(why, whylen, "out of memory");
            return -ENOMEM;
        }
        lt->rn = rn;
        lt->done = done;
        lt->arg = done_arg;
        if ((rc = conntest_start(rn->loop, &cp, local_test_done, lt)) != 0) {
            free(lt);
            snprintf(why, whylen, "cannot start the test: %s", error_str(rc));
            return rc;
        }
        lt->next = rn->tests;
        rn->tests = lt;
        return 0;
    }
    if (!rn->is_primary || rn->pusher == NULL) {
        snprintf(why, whylen, "only the primary runs tests on other nodes");
        return ERROR_NOT_PRIMARY;
    }
    if ((rc = settings_pb_view(&view, settings,
                               settings->password != NULL ? SETTINGS_PB_SECRET_PLAIN
                                                          : SETTINGS_PB_SECRET_ID)) != 0) {
        snprintf(why, whylen, "the settings cannot be sent: %s", error_str(rc));
        return rc;
    }
    smtpsync__run_test__init(&rt);
    rt.settings = &view.msg;
    rt.to = BORROW_CONST(to ? to : "");
    rt.revision = BORROW_CONST(revision ? revision : "");
    return repl_primary_run_test(rn->pusher, instance, &rt, done, done_arg, why, whylen);
}

/* ---- connections ---- */

static enum admin_role admin_role_of(const struct repl_node *rn, const char *id)
{
    if (strs_has(rn->cfg.super_admins, rn->cfg.nsuper_admins, id))
        return ADMIN_ROLE_SUPER_ADMIN;
    if (strs_has(rn->cfg.operators, rn->cfg.noperators, id))
        return ADMIN_ROLE_OPERATOR;
    return ADMIN_ROLE_NONE;
}

static bool is_member(struct repl_node *rn, const char *id)
{
    Smtpsync__Membership *m = NULL;
    bool member;

    if (store_repl_membership(rn->store, &m) != 0)
        return false;
    if (m->n_members > 0)
        member = repl_member_find(m, id) != NULL;
    else
        member = rn->cfg.primary[0] != '\0' && strcmp(rn->cfg.primary, id) == 0;
    smtpsync__membership__free_unpacked(m, NULL);
    return member;
}

static bool has_membership(struct repl_node *rn)
{
    Smtpsync__Membership *m = NULL;
    bool has;

    if (store_repl_membership(rn->store, &m) != 0)
        return false;
    has = m->n_members > 0;
    smtpsync__membership__free_unpacked(m, NULL);
    return has;
}

/* Who `id` is now: a member, else an admin with *role; false (and why)
 * when neither. The one decision of authorize and of a recheck. */
static bool decide(struct repl_node *rn, const char *id, bool *member, enum admin_role *role,
                   char *why, size_t whylen)
{
    *role = ADMIN_ROLE_NONE;
    *member = is_member(rn, id);
    if (!*member && (*role = admin_role_of(rn, id)) == ADMIN_ROLE_NONE) {
        snprintf(why, whylen, "not a member of the cluster nor an admin certificate");
        return false;
    }
    return true;
}

static bool on_authorize(void *arg, struct peer *p, const char *id, char *why, size_t whylen)
{
    struct repl_node *rn = ((struct conn *)arg)->rn;
    enum admin_role role;
    bool member;
    struct conn *c;

    if (rn->stopping) {
        snprintf(why, whylen, "the daemon is stopping");
        return false;
    }
    if (!decide(rn, id, &member, &role, why, whylen))
        return false;
    if ((c = calloc(1, sizeof(*c))) == NULL) {
        snprintf(why, whylen, "out of memory");
        return false;
    }
    c->rn = rn;
    c->p = p;
    c->admin = !member;
    c->role = role;
    snprintf(c->id, sizeof(c->id), "%s", id);
    peer_set_arg(p, c);
    /* Listed from now on: on_close follows whether or not on_open does. */
    c->next = rn->conns;
    rn->conns = c;
    return true;
}

void repl__node_recheck(struct repl_node *rn, const char *after)
{
    char why[PEER_REASON_MAX - 32], reason[PEER_REASON_MAX];
    enum admin_role role;
    bool member;

    if (rn->stopping)
        return; /* the listener closes them all */
    for (struct conn *c = rn->conns; c != NULL; c = c->next) {
        if (c->revoked || peer_state(c->p) >= PEER_CLOSING)
            continue;
        if (decide(rn, c->id, &member, &role, why, sizeof(why))) {
            if (member && c->admin)
                /* A member id is never an admin (see the top). */
                snprintf(why, sizeof(why), "its id is now a member of the cluster, not an admin");
            else if (!member && !c->admin)
                snprintf(why, sizeof(why), "no longer a member of the cluster");
            else {
                if (c->admin && role != c->role) {
                    log_warnx("admin %s is %s after %s (was %s)", c->id, admin_role_name(role),
                              after, admin_role_name(c->role));
                    c->role = role;
                }
                continue;
            }
        }
        /* peer_close() calls on_close later, from the loop: the list
         * stays as it is while it is walked. */
        log_warnx("peer %s no longer allowed after %s: %s", c->id, after, why);
        snprintf(reason, sizeof(reason), "no longer allowed: %s", why);
        c->revoked = true;
        peer_close(c->p, ERROR_FORBIDDEN, reason);
    }
}

static void on_open(void *arg, struct peer *p, const char *id)
{
    struct conn *c = arg;

    if (c == &c->rn->lconn) {
        peer_close(p, ERROR_FORBIDDEN, "not authorized");
        return;
    }
    if (c->admin)
        log_info("admin %s connected from %s (%s)", id, peer_remote(p), admin_role_name(c->role));
    else
        log_debug("member %s connected from %s", id, peer_remote(p));
}

static void on_admin_reply(void *arg, const Smtpsync__AdminReply *reply)
{
    struct admin_req *req = arg, **pp;
    Smtpsync__Frame f;
    int rc;

    if (req->conn != NULL) {
        smtpsync__frame__init(&f);
        f.id = req->id;
        f.body_case = SMTPSYNC__FRAME__BODY_ADMIN_REPLY;
        f.admin_reply = BORROW_CONST(reply);
        if ((rc = peer_send(req->conn->p, &f)) != 0 && rc != -ENOTCONN)
            log_warnx("cannot answer admin %s: %s", req->conn->id, error_str(rc));
    }
    for (pp = &req->rn->reqs; *pp != NULL; pp = &(*pp)->next)
        if (*pp == req) {
            *pp = req->next;
            break;
        }
    free(req);
}

static void on_frame(void *arg, struct peer *p, const Smtpsync__Frame *f)
{
    struct conn *c = arg;
    struct repl_node *rn = c->rn;
    struct admin_req *req;

    if (c == &rn->lconn || c->revoked)
        return;
    if (!c->admin) {
        repl_replica_frame(rn->agent, p, f);
        return;
    }
    if ((req = calloc(1, sizeof(*req))) == NULL) {
        peer_close(p, -ENOMEM, "out of memory");
        return;
    }
    req->rn = rn;
    req->conn = c;
    req->id = f->id;
    req->next = rn->reqs;
    rn->reqs = req;
    admin_handle(rn->store, &rn->hooks, c->role, c->id, f, on_admin_reply, req);
}

static void on_close(void *arg, struct peer *p, int err, const char *reason)
{
    struct conn *c = arg;
    struct repl_node *rn = c->rn;

    (void)err;
    (void)reason;
    if (c == &rn->lconn)
        return; /* refused or failed before authorize: no conn of its own */
    for (struct conn **pp = &rn->conns; *pp != NULL; pp = &(*pp)->next)
        if (*pp == c) {
            *pp = c->next;
            break;
        }
    if (!c->admin)
        repl_replica_closed(rn->agent, p);
    for (struct admin_req *r = rn->reqs; r != NULL; r = r->next)
        if (r->conn == c)
            r->conn = NULL;
    free(c);
}

static const struct peer_callbacks listener_callbacks = {
    .authorize = on_authorize,
    .on_open = on_open,
    .on_frame = on_frame,
    .on_close = on_close,
};

/* ---- life ---- */

static void finish(struct repl_node *rn)
{
    void (*done)(void *) = rn->done;
    void *done_arg = rn->done_arg;
    struct admin_req *r, *next;

    repl_replica_free(rn->agent);
    mtls_ctx_unref(rn->ctx);
    /* Every hook has answered by now; a request still listed was answered
     * by admin.c through another path and never will be again. */
    for (r = rn->reqs; r != NULL; r = next) {
        next = r->next;
        free(r);
    }
    cfg_free(&rn->cfg);
    free(rn);
    if (done != NULL)
        done(done_arg);
}

void repl__node_part_done(void *arg)
{
    struct repl_node *rn = arg;

    if (--rn->parts == 0 && rn->stopping)
        finish(rn);
}

static void on_listener_closed(void *arg)
{
    struct repl_node *rn = arg;

    rn->listener = NULL;
    repl__node_part_done(rn);
}

int repl_node_start(const struct repl_node_params *params, struct repl_node **out)
{
    struct repl_replica_params ap;
    struct peer_params lp;
    struct repl_node *rn;
    struct store_info info;
    int rc;

    if (params->loop == NULL || params->store == NULL || params->ctx == NULL ||
        params->node_id == NULL)
        return -EINVAL;
    if ((rn = calloc(1, sizeof(*rn))) == NULL)
        return -ENOMEM;
    rn->loop = params->loop;
    rn->store = params->store;
    rn->ctx = mtls_ctx_ref(params->ctx);
    snprintf(rn->node_id, sizeof(rn->node_id), "%s", params->node_id);
    rn->primary_daemon = params->primary_daemon;
    snprintf(rn->helo, sizeof(rn->helo), "%s", params->helo ? params->helo : "");
    rn->clock = params->clock;
    if (params->rng != NULL) {
        rn->rng = *params->rng;
        rn->have_rng = true;
    }
    rn->settings_changed = params->settings_changed;
    rn->outbox_depth = params->outbox_depth;
    rn->arg = params->arg;
    rn->hooks = (struct admin_hooks){
        .arg = rn,
        .node_id = rn->node_id,
        .is_primary = hook_is_primary,
        .saved = hook_saved,
        .status = hook_status,
        .status_free = NULL,
        .sync = hook_sync,
        .promote = hook_promote,
        .run_test = hook_run_test,
    };
    if ((rc = cfg_copy(&rn->cfg, &params->config)) != 0)
        goto fail;
    if ((rc = store_info(rn->store, &info)) != 0)
        goto fail;
    rn->revision = info.revision;

    memset(&ap, 0, sizeof(ap));
    ap.loop = rn->loop;
    ap.store = rn->store;
    ap.node_id = rn->node_id;
    ap.configured_primary = rn->cfg.primary;
    ap.helo = params->helo;
    ap.clock = rn->clock;
    ap.applied = agent_applied;
    ap.membership_changed = agent_membership_changed;
    ap.status = agent_status;
    ap.outbox_depth = agent_outbox_depth;
    ap.arg = rn;
    if ((rc = repl_replica_new(&ap, &rn->agent)) != 0)
        goto fail;

    repl__write_config_membership(rn);
    if (params->listen != NULL && params->listen[0] != '\0') {
        lp = params->listen_peer;
        if (lp.idle_timeout_ms == 0)
            lp.idle_timeout_ms = REPL_LISTEN_IDLE_DEFAULT_MS;
        rn->lconn.rn = rn;
        rc = peer_listen(rn->loop, params->listen, rn->ctx, &lp, &listener_callbacks, &rn->lconn,
                         &rn->listener);
        if (rc != 0) {
            rn->listener = NULL;
            log_error("cannot listen on %s: %s", params->listen, error_str(rc));
            goto fail;
        }
        rn->parts++;
    }
    repl__recompute_role(rn);
    if (!rn->is_primary && rn->cfg.primary[0] == '\0' && !has_membership(rn))
        log_warnx("no membership yet and no [replication] primary: every push is refused until "
                  "one is configured");
    if (mtls_expires_within(rn->ctx, time(NULL), MTLS_EXPIRY_WARN_SECONDS))
        log_warnx("this node's certificate expires within 30 days: renew it and send SIGHUP");
    *out = rn;
    return 0;
fail:
    if (rn->listener != NULL || rn->pusher != NULL) {
        /* Handles are open: close them through the loop. */
        repl_node_stop(rn, NULL, NULL);
        return rc;
    }
    repl_replica_free(rn->agent);
    mtls_ctx_unref(rn->ctx);
    cfg_free(&rn->cfg);
    free(rn);
    return rc;
}

int repl_node_port(const struct repl_node *rn)
{
    return rn->listener != NULL ? peer_listener_port(rn->listener) : 0;
}

bool repl_node_is_primary(const struct repl_node *rn)
{
    return rn->is_primary;
}

const struct admin_hooks *repl_node_hooks(const struct repl_node *rn)
{
    return &rn->hooks;
}

int repl_node_reconfigure(struct repl_node *rn, const struct repl_node_config *config,
                          struct mtls_ctx *ctx)
{
    struct node_cfg fresh;

    if (cfg_copy(&fresh, config) != 0)
        return -ENOMEM;
    cfg_free(&rn->cfg);
    rn->cfg = fresh;
    (void)repl_replica_set_primary(rn->agent, rn->cfg.primary);
    if (ctx != NULL) {
        struct mtls_ctx *old = rn->ctx;
        rn->ctx = mtls_ctx_ref(ctx);
        mtls_ctx_unref(old);
        if (rn->listener != NULL)
            peer_listener_set_ctx(rn->listener, ctx);
        if (rn->pusher != NULL)
            repl_primary_set_ctx(rn->pusher, ctx);
        if (mtls_expires_within(rn->ctx, time(NULL), MTLS_EXPIRY_WARN_SECONDS))
            log_warnx("this node's certificate expires within 30 days");
    }
    if (rn->pusher != NULL)
        repl_primary_set_tuning(rn->pusher, &rn->cfg.tuning);
    repl__write_config_membership(rn);
    repl__recompute_role(rn);
    /* [admin], [replication] primary or the membership may have changed:
     * open connections keep no right the new configuration denies. */
    repl__node_recheck(rn, "reload");
    return 0;
}

void repl_node_stop(struct repl_node *rn, void (*done)(void *arg), void *arg)
{
    struct local_test *lt, *next;

    if (rn->stopping)
        return;
    rn->stopping = true;
    rn->done = done;
    rn->done_arg = arg;
    rn->is_primary = false;
    /* Tests cannot be cut short: their admins are answered now, their
     * results dropped when they end. */
    for (lt = rn->tests; lt != NULL; lt = next) {
        next = lt->next;
        lt->cancelled = true;
        lt->done(lt->arg, -ECANCELED, "the daemon is stopping", NULL);
    }
    rn->tests = NULL;
    rn->parts++; /* held while the parts are stopped */
    repl__pusher_stop(rn);
    if (rn->listener != NULL)
        peer_listener_close(rn->listener, on_listener_closed, rn);
    repl__node_part_done(rn);
}
