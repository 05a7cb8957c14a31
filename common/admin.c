/*
 * admin: the admin API (admin.h). This file: roles, the dispatch of a
 * request to its verb, the reply builder, and the verbs that go through
 * the node (status, sync, promote, settings test). The settings and
 * revision verbs are in admin_settings.c.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "admin.h"
#include "admin_internal.h"
#include "conntest.h"
#include "error.h"
#include "settings_pb.h"

#define NEEDS_SUPER_ADMIN "this needs the super-admin role"

int admin_role_parse(const char *name)
{
    if (name != NULL && strcmp(name, "operator") == 0)
        return ADMIN_ROLE_OPERATOR;
    if (name != NULL && strcmp(name, "super-admin") == 0)
        return ADMIN_ROLE_SUPER_ADMIN;
    return ERROR_INVALID;
}

const char *admin_role_name(enum admin_role role)
{
    switch (role) {
#define XX(id, name)                                                                               \
    case ADMIN_ROLE_##id:                                                                          \
        return name;
        ADMIN_ROLE_MAP(XX)
#undef XX
    }
    return "unknown";
}

const char *admin_replica_state_name(Smtpsync__ReplicaState state)
{
    switch (state) {
    case SMTPSYNC__REPLICA_STATE__REPLICA_STATE_NEVER_SYNCED:
        return "never-synced";
    case SMTPSYNC__REPLICA_STATE__REPLICA_STATE_IN_SYNC:
        return "in-sync";
    case SMTPSYNC__REPLICA_STATE__REPLICA_STATE_BEHIND:
        return "behind";
    case SMTPSYNC__REPLICA_STATE__REPLICA_STATE_SYNCING:
        return "syncing";
    case SMTPSYNC__REPLICA_STATE__REPLICA_STATE_UNREACHABLE:
        return "unreachable";
    case SMTPSYNC__REPLICA_STATE__REPLICA_STATE_DIVERGED:
        return "diverged";
    case SMTPSYNC__REPLICA_STATE__REPLICA_STATE_FENCED:
        return "fenced";
    default:
        break;
    }
    return "unknown";
}

/* --- the reply builder ---------------------------------------------------- */

bool admin__out_init(struct admin_out *o)
{
    o->nomem = false;
    o->r = malloc(sizeof(*o->r));
    if (o->r == NULL) {
        o->nomem = true;
        return false;
    }
    smtpsync__admin_reply__init(o->r);
    return true;
}

void admin__out_error(struct admin_out *o, int code, const char *fmt, ...)
{
    char line[512];
    va_list ap;

    if (o->r == NULL)
        return;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    o->r->code = code;
    if (o->r->error != protobuf_c_empty_string)
        free(o->r->error);
    o->r->error = strdup(line);
    if (o->r->error == NULL) {
        o->r->error = ADMIN_EMPTY;
        o->nomem = true;
    }
}

/* Grows a repeated field of pointers by one slot; false when out of memory. */
static bool grow(void ***v, size_t n)
{
    void **nv = realloc(*v, (n + 1) * sizeof(**v));

    if (nv == NULL)
        return false;
    *v = nv;
    return true;
}

void admin__out_problems(struct admin_out *o, const struct settings_problems *p,
                         bool only_incomplete)
{
    for (size_t i = 0; o->r != NULL && i < p->count; i++) {
        const struct settings_problem *q = &p->items[i];
        Smtpsync__Problem *m;

        if (only_incomplete && !q->incomplete)
            continue;
        if (!grow((void ***)&o->r->problems, o->r->n_problems) ||
            (m = malloc(sizeof(*m))) == NULL) {
            o->nomem = true;
            return;
        }
        smtpsync__problem__init(m);
        o->r->problems[o->r->n_problems++] = m;
        m->incomplete = q->incomplete;
        m->field = strdup(q->field);
        m->message = strdup(q->message);
        if (m->field == NULL || m->message == NULL) {
            if (m->field == NULL)
                m->field = ADMIN_EMPTY;
            if (m->message == NULL)
                m->message = ADMIN_EMPTY;
            o->nomem = true;
            return;
        }
    }
}

void admin__out_settings(struct admin_out *o, const struct settings *s)
{
    struct settings_pb v;
    Smtpsync__Settings *copy;
    uint8_t *buf;
    size_t len;

    if (o->r == NULL)
        return;
    if (settings_pb_view(&v, s, SETTINGS_PB_SECRET_ID) < 0) {
        admin__out_error(o, ERROR_CORRUPT, "the record of instance %s cannot be encoded",
                         s->instance);
        return;
    }
    /* The mask stands in for the value; the sealed bytes never leave. */
    if (s->password_set) {
        v.secret.plaintext.data = (uint8_t *)(uintptr_t)SETTINGS_PASSWORD_MASK;
        v.secret.plaintext.len = strlen(SETTINGS_PASSWORD_MASK);
    }
    /* A deep, malloc'd copy, as the reply is freed as unpacked. */
    len = smtpsync__settings__get_packed_size(&v.msg);
    buf = malloc(len + 1);
    if (buf == NULL) {
        o->nomem = true;
        return;
    }
    smtpsync__settings__pack(&v.msg, buf);
    copy = smtpsync__settings__unpack(NULL, len, buf);
    free(buf);
    if (copy == NULL || !grow((void ***)&o->r->settings, o->r->n_settings)) {
        smtpsync__settings__free_unpacked(copy, NULL);
        o->nomem = true;
        return;
    }
    o->r->settings[o->r->n_settings++] = copy;
}

void admin__send(struct admin_out *o, admin_reply_cb reply, void *arg)
{
    if (o->nomem || o->r == NULL) {
        Smtpsync__AdminReply r;

        smtpsync__admin_reply__init(&r);
        r.code = -ENOMEM;
        r.error = (char *)"the node ran out of memory answering this request";
        reply(arg, &r);
    } else {
        reply(arg, o->r);
    }
    smtpsync__admin_reply__free_unpacked(o->r, NULL);
    o->r = NULL;
}

bool admin__revision_ok(struct admin_out *o, const char *what, uint64_t rev, uint64_t head)
{
    if (rev == 0) {
        admin__out_error(o, ERROR_INVALID, "%s: '0' is not a revision number (1, 2, ...)", what);
        return false;
    }
    if (rev <= head)
        return true;
    if (head == 0)
        admin__out_error(o, ERROR_INVALID,
                         "%s: revision %" PRIu64 " does not exist (nothing has been saved yet)",
                         what, rev);
    else
        admin__out_error(o, ERROR_INVALID,
                         "%s: revision %" PRIu64 " does not exist (the newest is %" PRIu64 ")",
                         what, rev, head);
    return false;
}

void admin__revision_error(struct admin_out *o, const char *doing, int err, uint64_t base)
{
    if (err == ERROR_COMPACTED)
        admin__out_error(o, err, "cannot %s: %s (the oldest revision still kept is %" PRIu64 ")",
                         doing, error_str(err), base + 1);
    else
        admin__out_error(o, err, "cannot %s: %s", doing, error_str(err));
}

/* Adds the node's status to the reply (status, and after sync and promote). */
static void out_status(struct admin_out *o, const struct admin_hooks *h)
{
    Smtpsync__StatusReply *sr = NULL;
    uint8_t *buf;
    size_t len;
    int err;

    if (o->r == NULL || h->status == NULL)
        return;
    err = h->status(h->arg, &sr);
    if (err < 0) {
        if (o->r->code == 0)
            admin__out_error(o, err, "cannot read the node's status: %s", error_str(err));
        return;
    }
    /* A copy in the reply's own allocation: the node may build its
     * StatusReply any way it likes and frees it its own way. */
    len = smtpsync__status_reply__get_packed_size(sr);
    buf = malloc(len + 1);
    if (buf != NULL) {
        smtpsync__status_reply__pack(sr, buf);
        o->r->status = smtpsync__status_reply__unpack(NULL, len, buf);
        free(buf);
    }
    if (o->r->status == NULL)
        o->nomem = true;
    if (h->status_free != NULL)
        h->status_free(h->arg, sr);
    else
        smtpsync__status_reply__free_unpacked(sr, NULL);
}

/* --- status, sync, promote ----------------------------------------------- */

static void do_status(const struct admin_req *rq)
{
    struct admin_out o;

    if (admin__out_init(&o))
        out_status(&o, rq->h);
    admin__send(&o, rq->reply, rq->arg);
}

/* An asynchronous request (sync, test) waiting for the node: the reply
 * built so far, sent by the done callback. */
struct pending {
    struct admin_req rq;
    struct admin_out o;
    char instance[SETTINGS_INSTANCE_MAX + 1];
};

/* Takes over the reply `o` (on success; on failure `o` stays the caller's). */
static struct pending *pending_new(const struct admin_req *rq, struct admin_out *o)
{
    struct pending *p = calloc(1, sizeof(*p));

    if (p == NULL)
        return NULL;
    p->rq = *rq;
    p->rq.actor = NULL; /* borrowed for admin_handle() only */
    p->o = *o;
    o->r = NULL;
    return p;
}

/* Gives the reply back to the caller (the hook failed). */
static void pending_cancel(struct pending *p, struct admin_out *o)
{
    *o = p->o;
    free(p);
}

static void pending_finish(struct pending *p)
{
    admin__send(&p->o, p->rq.reply, p->rq.arg);
    free(p);
}

static void sync_done(void *done_arg, int err, const char *message)
{
    struct pending *p = done_arg;

    if (err < 0)
        admin__out_error(&p->o, err, "sync failed: %s",
                         message != NULL && message[0] != '\0' ? message : error_str(err));
    out_status(&p->o, p->rq.h);
    pending_finish(p);
}

static void do_sync(const struct admin_req *rq, const Smtpsync__SyncRequest *m)
{
    const char *replica = m->replica != NULL && m->replica[0] != '\0' ? m->replica : NULL;
    char why[ADMIN_WHY_MAX] = "";
    struct admin_out o;
    struct pending *p;
    int err;

    if (!admin__out_init(&o))
        goto send;
    if (replica != NULL && !settings_instance_valid(replica)) {
        admin__out_error(&o, ERROR_INVALID,
                         "--replica: invalid replica id (1-%d of A-Z a-z 0-9 . _ -, starting "
                         "with a letter or digit)",
                         SETTINGS_INSTANCE_MAX);
        goto send;
    }
    if (rq->h->sync == NULL) {
        admin__out_error(&o, ERROR_NOT_PRIMARY, "this node does not push to replicas");
        goto send;
    }
    if ((p = pending_new(rq, &o)) == NULL) {
        o.nomem = true;
        goto send;
    }
    err = rq->h->sync(rq->h->arg, replica, sync_done, p, why, sizeof(why));
    if (err == 0)
        return; /* sync_done answers */
    pending_cancel(p, &o);
    if (err == ERROR_NOT_FOUND && why[0] == '\0')
        snprintf(why, sizeof(why), "there is no replica %s", replica != NULL ? replica : "");
    admin__out_error(&o, err, "cannot sync: %s", why[0] != '\0' ? why : error_str(err));
send:
    admin__send(&o, rq->reply, rq->arg);
}

static void do_promote(const struct admin_req *rq, const Smtpsync__PromoteRequest *m)
{
    char why[ADMIN_WHY_MAX] = "";
    struct admin_out o;
    uint64_t epoch = 0;
    int err;

    if (!admin__out_init(&o))
        goto send;
    if (rq->h->promote == NULL) {
        admin__out_error(&o, ERROR_INVALID, "this node cannot be promoted");
        goto send;
    }
    err = rq->h->promote(rq->h->arg, m->force, &epoch, why, sizeof(why));
    if (err == ERROR_CONFLICT && strstr(why, "--force") != NULL)
        admin__out_error(&o, err, "not promoted: %s", why); /* the node named it already */
    else if (err == ERROR_CONFLICT)
        admin__out_error(&o, err, "not promoted: %s (--force promotes anyway)",
                         why[0] != '\0' ? why : "this node lags behind the primary");
    else if (err < 0)
        admin__out_error(&o, err, "not promoted: %s", why[0] != '\0' ? why : error_str(err));
    else
        out_status(&o, rq->h);
send:
    admin__send(&o, rq->reply, rq->arg);
}

/* --- settings test -------------------------------------------------------- */

static void test_done(void *done_arg, int err, const char *message, Smtpsync__TestResult *result)
{
    struct pending *p = done_arg;

    if (err < 0)
        admin__out_error(&p->o, err, "cannot run the test on %s: %s", p->instance,
                         message != NULL && message[0] != '\0' ? message : error_str(err));
    if (result != NULL && p->o.r != NULL && p->o.r->test == NULL) {
        p->o.r->test = result; /* freed with the reply */
        result = NULL;
    }
    conntest_result_free(result);
    if (err == 0 && p->o.r != NULL && p->o.r->test == NULL)
        admin__out_error(&p->o, -EIO, "the test on %s ended without a result", p->instance);
    pending_finish(p);
}

/*
 * The settings tried: the draft unless `saved`, else the saved record,
 * password unsealed; `what` names them as local mode does. Sets the error
 * of `o` and returns it on failure.
 */
static int test_load(struct store *st, struct admin_out *o, const char *instance, bool saved,
                     struct settings *s, bool *is_draft, char *what, size_t whatlen)
{
    struct store_info info;
    int err;

    *is_draft = false;
    if ((err = store_info(st, &info)) < 0) {
        admin__out_error(o, err, "cannot read the store: %s", error_str(err));
        return err;
    }
    err = ERROR_NOT_FOUND;
    if (!saved) {
        err = store_draft_get(st, instance, STORE_UNSEAL, s);
        if (err == 0) {
            *is_draft = true;
            if (info.revision == 0)
                snprintf(what, whatlen, "draft, nothing saved yet");
            else
                snprintf(what, whatlen, "draft on revision %" PRIu64, info.revision);
        }
    }
    if (err == ERROR_NOT_FOUND) {
        err = store_get(st, instance, 0, STORE_UNSEAL, s);
        if (err == 0)
            snprintf(what, whatlen, "revision %" PRIu64, info.revision);
    }
    if (err == ERROR_NOT_FOUND)
        admin__out_error(o, err,
                         saved ? "instance %s has no saved settings"
                               : "instance %s has no settings: neither a draft nor saved ones",
                         instance);
    else if (err < 0)
        admin__out_error(o, err, "cannot read the settings of instance %s: %s", instance,
                         error_str(err));
    else
        o->r->revision = info.revision;
    return err;
}

static void do_test(const struct admin_req *rq, const Smtpsync__SettingsTestRequest *m)
{
    const char *to = m->to != NULL && m->to[0] != '\0' ? m->to : NULL;
    char why[ADMIN_WHY_MAX] = "", what[96];
    struct admin_out o;
    struct settings s;
    struct pending *p;
    bool is_draft;
    int err;

    settings_init(&s);
    if (!admin__out_init(&o))
        goto send;
    if (m->instance == NULL || !settings_instance_valid(m->instance)) {
        admin__out_error(&o, ERROR_INVALID,
                         "--instance: invalid instance id (1-%d of A-Z a-z 0-9 . _ -, starting "
                         "with a letter or digit)",
                         SETTINGS_INSTANCE_MAX);
        goto send;
    }
    if (to != NULL &&
        (strlen(to) > SETTINGS_ADDRESS_MAX || !syntax_mailbox_valid(to, why, sizeof(why)))) {
        admin__out_error(&o, ERROR_INVALID, "settings test: --to is not a valid mail address: %s",
                         strlen(to) > SETTINGS_ADDRESS_MAX ? "too long" : why);
        goto send;
    }
    if (rq->h->run_test == NULL) {
        admin__out_error(&o, ERROR_INVALID, "this node cannot run tests");
        goto send;
    }
    if (test_load(rq->st, &o, m->instance, m->saved, &s, &is_draft, what, sizeof(what)) < 0)
        goto send;
    /* The reply names the draft that was tried (masked), so the client
     * says "draft on revision N" as local mode does; none: the saved one. */
    if (is_draft)
        admin__out_settings(&o, &s);
    if (o.nomem || (p = pending_new(rq, &o)) == NULL) {
        o.nomem = true;
        goto send;
    }
    snprintf(p->instance, sizeof(p->instance), "%s", m->instance);
    why[0] = '\0';
    err = rq->h->run_test(rq->h->arg, m->instance, &s, to, what, test_done, p, why, sizeof(why));
    if (err == 0) {
        settings_clear(&s);
        return; /* test_done answers */
    }
    pending_cancel(p, &o);
    if (err == ERROR_NOT_FOUND && why[0] == '\0')
        snprintf(why, sizeof(why), "no node of the cluster is instance %s", m->instance);
    admin__out_error(&o, err, "cannot run the test on %s: %s", m->instance,
                     why[0] != '\0' ? why : error_str(err));
send:
    settings_clear(&s);
    admin__send(&o, rq->reply, rq->arg);
}

/* --- dispatch ------------------------------------------------------------- */

/* Who may do what, where (admin.h). */
struct verb_rule {
    Smtpsync__Frame__BodyCase body;
    bool super;   /* needs the super-admin role */
    bool primary; /* only on the primary */
};

static const struct verb_rule rules[] = {
    {SMTPSYNC__FRAME__BODY_STATUS_QUERY, false, false},
    {SMTPSYNC__FRAME__BODY_SETTINGS_SHOW, false, false},
    {SMTPSYNC__FRAME__BODY_HISTORY_QUERY, false, false},
    {SMTPSYNC__FRAME__BODY_DIFF_QUERY, false, false},
    {SMTPSYNC__FRAME__BODY_SETTINGS_SET, true, true},
    {SMTPSYNC__FRAME__BODY_IMPORT_CERT, true, true},
    {SMTPSYNC__FRAME__BODY_SETTINGS_SAVE, true, true},
    {SMTPSYNC__FRAME__BODY_SETTINGS_DISCARD, true, true},
    {SMTPSYNC__FRAME__BODY_ROLLBACK, true, true},
    {SMTPSYNC__FRAME__BODY_SETTINGS_TEST, true, true},
    {SMTPSYNC__FRAME__BODY_SYNC, true, true},
    {SMTPSYNC__FRAME__BODY_PROMOTE, true, false},
    /* Refused below wherever they come from: local socket only. */
    {SMTPSYNC__FRAME__BODY_QUEUE_QUERY, false, false},
    {SMTPSYNC__FRAME__BODY_QUEUE_ACTION, true, false},
};

static const struct verb_rule *rule_of(const Smtpsync__Frame *f)
{
    for (size_t i = 0; f != NULL && i < sizeof(rules) / sizeof(rules[0]); i++)
        if (rules[i].body == f->body_case)
            return &rules[i];
    return NULL;
}

bool admin_frame_is_request(const Smtpsync__Frame *f)
{
    return rule_of(f) != NULL;
}

void admin_handle(struct store *st, const struct admin_hooks *h, enum admin_role role,
                  const char *actor, const Smtpsync__Frame *req, admin_reply_cb reply, void *arg)
{
    const struct verb_rule *rule = rule_of(req);
    struct admin_req rq = {st, h, role, actor, reply, arg};
    struct admin_out o;

    if (!admin__out_init(&o))
        goto send;
    if (rule == NULL) {
        admin__out_error(&o, ERROR_INVALID, "not an admin request");
        goto send;
    }
    if (role != ADMIN_ROLE_OPERATOR && role != ADMIN_ROLE_SUPER_ADMIN) {
        admin__out_error(&o, ERROR_FORBIDDEN, "this certificate has no admin role");
        goto send;
    }
    if (rule->super && role != ADMIN_ROLE_SUPER_ADMIN) {
        admin__out_error(&o, ERROR_FORBIDDEN, NEEDS_SUPER_ADMIN);
        o.r->needs_role = strdup(admin_role_name(ADMIN_ROLE_SUPER_ADMIN));
        if (o.r->needs_role == NULL) {
            o.r->needs_role = ADMIN_EMPTY;
            o.nomem = true;
        }
        goto send;
    }
    if (req->body_case == SMTPSYNC__FRAME__BODY_QUEUE_QUERY ||
        req->body_case == SMTPSYNC__FRAME__BODY_QUEUE_ACTION) {
        admin__out_error(&o, ERROR_INVALID,
                         "queue is answered only on the node itself (smtpsyncctl --socket)");
        goto send;
    }
    if (rule->primary && (h->is_primary == NULL || !h->is_primary(h->arg))) {
        admin__out_error(&o, ERROR_NOT_PRIMARY,
                         "this node (%s) is a replica: changes, tests and syncs are made on the "
                         "primary",
                         h->node_id != NULL ? h->node_id : "?");
        goto send;
    }
    smtpsync__admin_reply__free_unpacked(o.r, NULL);

    switch (req->body_case) {
    case SMTPSYNC__FRAME__BODY_STATUS_QUERY:
        do_status(&rq);
        return;
    case SMTPSYNC__FRAME__BODY_SETTINGS_SHOW:
        admin__settings_show(&rq, req->settings_show);
        return;
    case SMTPSYNC__FRAME__BODY_HISTORY_QUERY:
        admin__history(&rq, req->history_query);
        return;
    case SMTPSYNC__FRAME__BODY_DIFF_QUERY:
        admin__diff(&rq, req->diff_query);
        return;
    case SMTPSYNC__FRAME__BODY_SETTINGS_SET:
        admin__settings_set(&rq, req->settings_set);
        return;
    case SMTPSYNC__FRAME__BODY_IMPORT_CERT:
        admin__import_cert(&rq, req->import_cert);
        return;
    case SMTPSYNC__FRAME__BODY_SETTINGS_SAVE:
        admin__settings_save(&rq, req->settings_save);
        return;
    case SMTPSYNC__FRAME__BODY_SETTINGS_DISCARD:
        admin__settings_discard(&rq, req->settings_discard);
        return;
    case SMTPSYNC__FRAME__BODY_ROLLBACK:
        admin__rollback(&rq, req->rollback);
        return;
    case SMTPSYNC__FRAME__BODY_SETTINGS_TEST:
        do_test(&rq, req->settings_test);
        return;
    case SMTPSYNC__FRAME__BODY_SYNC:
        do_sync(&rq, req->sync);
        return;
    case SMTPSYNC__FRAME__BODY_PROMOTE:
        do_promote(&rq, req->promote);
        return;
    default:
        break;
    }
    /* Every rule has a case above. */
    if (admin__out_init(&o))
        admin__out_error(&o, ERROR_INVALID, "not an admin request");
send:
    admin__send(&o, reply, arg);
}
