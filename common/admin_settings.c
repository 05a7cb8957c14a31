/*
 * admin_settings: the settings and revision verbs of the admin API:
 * settings set, import-cert, show, save (--apply-to-replicas), discard,
 * history, diff, rollback. The texts of errors are those smtpsyncctl
 * prints in local mode, so an operator reads the same in both.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "admin.h"
#include "admin_internal.h"
#include "error.h"
#include "settings_pb.h"

#define INSTANCE_SYNTAX "(1-64 of A-Z a-z 0-9 . _ -, starting with a letter or digit)"

static bool instance_ok(struct admin_out *o, const char *id)
{
    if (id != NULL && settings_instance_valid(id))
        return true;
    admin__out_error(o, ERROR_INVALID, "--instance: invalid instance id " INSTANCE_SYNTAX);
    return false;
}

/* The error of admin_draft_base(), as local mode words it. */
static void base_error(struct admin_out *o, const char *instance, int err)
{
    admin__out_error(
        o, err, "cannot read the settings of instance %s: %s%s", instance, error_str(err),
        err == ERROR_TAMPERED ? " (the node key does not open the stored password)" : "");
}

/*
 * The end of set and import-cert: check and store the draft. Success: the
 * draft (masked) and the problems still to fix before a save (the missing
 * values). Refusal: every problem, ERROR_INVALID, nothing written.
 */
static void check_and_put(struct store *st, struct admin_out *o, const struct settings *s,
                          const char *confirm, struct settings_problems *problems)
{
    int err = admin_draft_check_put(st, s, confirm, problems);

    if (err == ERROR_INVALID && !settings_problems_only_incomplete(problems)) {
        admin__out_problems(o, problems, false);
        admin__out_error(o, ERROR_INVALID,
                         "nothing was written: the draft of instance %s was left as it was",
                         s->instance);
        return;
    }
    if (err < 0) {
        admin__out_error(o, err, "cannot store the draft of instance %s: %s", s->instance,
                         error_str(err));
        return;
    }
    admin__out_settings(o, s);
    admin__out_problems(o, problems, true);
}

/* --- settings set --------------------------------------------------------- */

/* The password of a patch, which must be loaded: NUL-free text. */
static int patch_password(struct settings *base, const Smtpsync__Secret *sec,
                          struct settings_problems *problems)
{
    char *pw;
    int err;

    if (sec == NULL || sec->plaintext.len == 0)
        return settings_set_password(base, NULL);
    if (sec->plaintext.len > SETTINGS_PASSWORD_MAX ||
        memchr(sec->plaintext.data, '\0', sec->plaintext.len) != NULL) {
        settings_problem_add(problems, "password", false,
                             "is longer than %d characters or holds NUL", SETTINGS_PASSWORD_MAX);
        return ERROR_INVALID;
    }
    if ((pw = malloc(sec->plaintext.len + 1)) == NULL)
        return -ENOMEM;
    memcpy(pw, sec->plaintext.data, sec->plaintext.len);
    pw[sec->plaintext.len] = '\0';
    err = settings_set_password(base, pw);
    OPENSSL_cleanse(pw, sec->plaintext.len);
    free(pw);
    return err;
}

/*
 * SettingsSet: `settings` holds the values of the fields named in `fields`
 * (the rest is ignored), the new password in its plaintext. The draft
 * starts from the instance's draft, else its saved record, else nothing,
 * exactly as in local mode.
 */
void admin__settings_set(const struct admin_req *rq, const Smtpsync__SettingsSet *m)
{
    struct settings_problems problems = {.count = 0, .dropped = 0};
    Smtpsync__Settings patch_msg;
    struct settings base, patch;
    struct admin_out o;
    const char *instance, *confirm = NULL;
    bool new_password = false;
    int err;

    settings_init(&base);
    settings_init(&patch);
    if (!admin__out_init(&o))
        goto send;
    instance = m->settings != NULL ? m->settings->instance : NULL;
    if (!instance_ok(&o, instance))
        goto send;

    /* The patch is decoded with the password left out: it is set below
     * with settings_set_password(), which draws its new id. */
    patch_msg = *m->settings;
    patch_msg.password = NULL;
    err = settings_pb_decode(&patch, &patch_msg, &problems);
    if (err == -ENOMEM) {
        o.nomem = true;
        goto send;
    }
    if (err < 0) {
        admin__out_problems(&o, &problems, false);
        admin__out_error(&o, ERROR_INVALID,
                         "nothing was written: the draft of instance %s was left as it was",
                         instance);
        goto send;
    }
    if ((err = admin_draft_base(rq->st, instance, &base)) < 0) {
        base_error(&o, instance, err);
        goto send;
    }
    for (size_t i = 0; i < m->n_fields; i++) {
        int f = settings_field_lookup(m->fields[i]);

        if (f < 0 || f == SETTINGS_F_INSTANCE) {
            settings_problem_add(&problems, m->fields[i], false, "is not a field that can be set");
            continue;
        }
        if (f == SETTINGS_F_PASSWORD) {
            new_password = true;
            err = patch_password(&base, m->settings->password, &problems);
        } else {
            err = admin_settings_copy_field(&base, &patch, (enum settings_field)f);
        }
        if (err == -ENOMEM || err == ERROR_CRYPTO) {
            admin__out_error(&o, err, "cannot set the %s: %s", m->fields[i], error_str(err));
            goto send;
        }
    }
    if (new_password)
        confirm = m->password_confirm != NULL && m->password_confirm[0] != '\0'
                      ? m->password_confirm
                      : base.password;
    check_and_put(rq->st, &o, &base, confirm, &problems);
send:
    settings_clear(&patch);
    settings_clear(&base);
    admin__send(&o, rq->reply, rq->arg);
}

/* --- settings import-cert ------------------------------------------------- */

void admin__import_cert(const struct admin_req *rq, const Smtpsync__ImportCert *m)
{
    struct settings_problems problems = {.count = 0, .dropped = 0};
    struct admin_out o;
    struct settings s;
    size_t len;
    int err;

    settings_init(&s);
    if (!admin__out_init(&o) || !instance_ok(&o, m->instance))
        goto send;
    len = m->pem != NULL ? strlen(m->pem) : 0;
    if (len == 0) {
        admin__out_error(&o, ERROR_INVALID,
                         "empty; expected PEM certificates (-----BEGIN CERTIFICATE-----)");
        goto send;
    }
    if (len > SETTINGS_PEM_MAX) {
        admin__out_error(&o, ERROR_TOO_BIG,
                         "larger than %d bytes; a certificate bundle must be smaller",
                         SETTINGS_PEM_MAX);
        goto send;
    }
    if ((err = admin_draft_base(rq->st, m->instance, &s)) < 0) {
        base_error(&o, m->instance, err);
        goto send;
    }
    err = settings_set_certificate(&s, m->pem, len, &problems);
    if (err < 0 && err != ERROR_INVALID) {
        admin__out_error(&o, err, "cannot attach the certificate: %s", error_str(err));
        goto send;
    }
    check_and_put(rq->st, &o, &s, NULL, &problems);
send:
    settings_clear(&s);
    admin__send(&o, rq->reply, rq->arg);
}

/* --- settings show -------------------------------------------------------- */

static int show_one(const struct settings *s, void *arg)
{
    struct admin_out *o = arg;

    admin__out_settings(o, s);
    return o->nomem ? -ENOMEM : 0;
}

/* One instance, or all (instance ""), saved (at `revision`, 0: now) or
 * drafts. reply.revision: the revision shown (0 for drafts). */
void admin__settings_show(const struct admin_req *rq, const Smtpsync__SettingsShow *m)
{
    const char *instance = m->instance != NULL && m->instance[0] != '\0' ? m->instance : NULL;
    struct store_info info;
    struct admin_out o;
    int err;

    if (!admin__out_init(&o))
        goto send;
    if (instance != NULL && !instance_ok(&o, instance))
        goto send;
    if (m->draft && m->revision != 0) {
        admin__out_error(&o, ERROR_INVALID,
                         "settings show: --draft and --revision exclude each other");
        goto send;
    }
    if ((err = store_info(rq->st, &info)) < 0) {
        admin__out_error(&o, err, "cannot read the store: %s", error_str(err));
        goto send;
    }
    if (m->revision != 0 && !admin__revision_ok(&o, "--revision", m->revision, info.revision))
        goto send;
    if (instance != NULL) {
        struct settings s;

        settings_init(&s);
        err = m->draft ? store_draft_get(rq->st, instance, 0, &s)
                       : store_get(rq->st, instance, m->revision, 0, &s);
        if (err == 0)
            err = show_one(&s, &o);
        settings_clear(&s);
        if (err == ERROR_NOT_FOUND) {
            if (m->draft)
                admin__out_error(&o, err, "instance %s has no draft", instance);
            else if (m->revision != 0)
                admin__out_error(&o, err, "instance %s has no settings at revision %" PRIu64,
                                 instance, m->revision);
            else
                admin__out_error(&o, err, "instance %s has no saved settings", instance);
            goto send;
        }
    } else {
        err = m->draft ? store_draft_each(rq->st, 0, show_one, &o)
                       : store_each(rq->st, m->revision, 0, show_one, &o);
    }
    if (err == -ENOMEM)
        o.nomem = true;
    else if (err < 0)
        admin__revision_error(&o, "show the settings", err, info.base_revision);
    else if (!m->draft)
        o.r->revision = m->revision != 0 ? m->revision : info.revision;
send:
    admin__send(&o, rq->reply, rq->arg);
}

/* --- settings save -------------------------------------------------------- */

/* What --apply-to-replicas changes: the replicas' drafts as they were, to
 * be put back when the save fails. */
struct apply {
    size_t n;
    const char **ids;        /* replica instance ids (into the membership) */
    struct settings *before; /* their drafts before the copy */
    bool *had_draft;
    Smtpsync__Membership *membership;
};

static void apply_free(struct apply *a)
{
    for (size_t i = 0; i < a->n; i++)
        settings_clear(&a->before[i]);
    free(a->before);
    free(a->had_draft);
    free(a->ids);
    if (a->membership != NULL)
        smtpsync__membership__free_unpacked(a->membership, NULL);
    memset(a, 0, sizeof(*a));
}

/* Puts the replicas' drafts back as they were before the copy. */
static void apply_undo(struct store *st, const struct apply *a)
{
    for (size_t i = 0; i < a->n; i++) {
        if (a->had_draft[i])
            (void)store_draft_put(st, &a->before[i]);
        else
            (void)store_draft_discard(st, a->ids[i]);
    }
}

/*
 * Copies the primary instance's settings (its draft, else its saved
 * record) into a draft of every replica instance of the membership, the
 * password and certificate included. The source is checked first, so a
 * source that could not be saved writes nothing. Sets the error of `o`
 * and returns it on failure (drafts already copied are put back).
 */
static int apply_prepare(struct store *st, const char *primary, struct admin_out *o,
                         struct apply *a)
{
    struct settings_problems problems = {.count = 0, .dropped = 0};
    struct settings src;
    int err;

    settings_init(&src);
    err = store_repl_membership(st, &a->membership);
    if (err < 0) {
        admin__out_error(o, err, "cannot read the membership: %s", error_str(err));
        goto clear_src;
    }
    a->ids = calloc(a->membership->n_members + 1, sizeof(*a->ids));
    a->before = calloc(a->membership->n_members + 1, sizeof(*a->before));
    a->had_draft = calloc(a->membership->n_members + 1, sizeof(*a->had_draft));
    if (a->ids == NULL || a->before == NULL || a->had_draft == NULL) {
        err = -ENOMEM;
        o->nomem = true;
        goto clear_src;
    }
    for (size_t i = 0; i < a->membership->n_members; i++) {
        const Smtpsync__Member *mb = a->membership->members[i];
        if (mb->role == SMTPSYNC__ROLE__ROLE_PRIMARY || strcmp(mb->node, primary) == 0 ||
            !settings_instance_valid(mb->node))
            continue;
        settings_init(&a->before[a->n]);
        a->ids[a->n++] = mb->node;
    }
    if (a->n == 0) {
        err = ERROR_NOT_FOUND;
        admin__out_error(o, err, "--apply-to-replicas: the membership lists no replica to copy to");
        goto clear_src;
    }

    err = store_draft_get(st, primary, STORE_UNSEAL, &src);
    if (err == ERROR_NOT_FOUND)
        err = store_get(st, primary, 0, STORE_UNSEAL, &src);
    if (err == ERROR_NOT_FOUND) {
        admin__out_error(o, err,
                         "--apply-to-replicas: instance %s (the primary) has no settings to copy",
                         primary);
        goto clear_src;
    }
    if (err < 0) {
        base_error(o, primary, err);
        goto clear_src;
    }
    if (settings_validate(&src, NULL, time(NULL), &problems) < 0) {
        admin__out_problems(o, &problems, false);
        admin__out_error(o, ERROR_INVALID,
                         "nothing was saved: fix the problems above with `settings set` or "
                         "`settings import-cert`");
        err = ERROR_INVALID;
        goto clear_src;
    }

    for (size_t i = 0; i < a->n; i++) {
        err = store_draft_get(st, a->ids[i], STORE_UNSEAL, &a->before[i]);
        if (err == 0)
            a->had_draft[i] = true;
        else if (err != ERROR_NOT_FOUND)
            break;
        /* The copy keeps the password's id: the same value everywhere,
         * and no change at all where it was copied before. */
        snprintf(src.instance, sizeof(src.instance), "%s", a->ids[i]);
        err = store_draft_put(st, &src);
        if (err < 0)
            break;
    }
    if (err < 0) {
        admin__out_error(o, err, "--apply-to-replicas: cannot copy the settings: %s",
                         error_str(err));
        apply_undo(st, a);
    }
clear_src:
    settings_clear(&src);
    return err;
}

/* The instances a save names: the request's, plus the replicas when the
 * primary's settings are applied to them (never twice). */
static const char **save_names(const Smtpsync__SettingsSave *m, const struct apply *a, size_t *n)
{
    const char **ids = calloc(m->n_instances + a->n + 1, sizeof(*ids));

    *n = 0;
    if (ids == NULL)
        return NULL;
    for (size_t i = 0; i < m->n_instances; i++)
        ids[(*n)++] = m->instances[i];
    for (size_t i = 0; m->n_instances > 0 && i < a->n; i++) {
        bool dup = false;
        for (size_t k = 0; k < m->n_instances; k++)
            dup = dup || strcmp(ids[k], a->ids[i]) == 0;
        if (!dup)
            ids[(*n)++] = a->ids[i];
    }
    return ids;
}

void admin__settings_save(const struct admin_req *rq, const Smtpsync__SettingsSave *m)
{
    struct settings_problems problems = {.count = 0, .dropped = 0};
    struct apply a = {0};
    struct admin_out o;
    const char **names = NULL;
    const char *comment = m->comment != NULL && m->comment[0] != '\0' ? m->comment : NULL;
    char missing[512] = "";
    size_t n = 0, nmissing = 0;
    uint64_t revision = 0;
    int err;

    if (!admin__out_init(&o))
        goto send;
    /* Name every instance without a draft, not just the first. */
    for (size_t i = 0; i < m->n_instances; i++) {
        struct settings s;

        if (!instance_ok(&o, m->instances[i]))
            goto send;
        settings_init(&s);
        err = store_draft_get(rq->st, m->instances[i], 0, &s);
        settings_clear(&s);
        if (err == ERROR_NOT_FOUND) {
            size_t used = strlen(missing);
            snprintf(missing + used, sizeof(missing) - used, "%s%s", nmissing > 0 ? ", " : "",
                     m->instances[i]);
            nmissing++;
        } else if (err < 0) {
            admin__out_error(&o, err, "cannot read the draft of instance %s: %s", m->instances[i],
                             error_str(err));
            goto send;
        }
    }
    if (nmissing > 0) {
        admin__out_error(&o, ERROR_NOT_FOUND, "instance%s %s %s no draft to save",
                         nmissing > 1 ? "s" : "", missing, nmissing > 1 ? "have" : "has");
        goto send;
    }
    if (m->apply_to_replicas &&
        apply_prepare(rq->st, rq->h->node_id != NULL ? rq->h->node_id : "", &o, &a) < 0)
        goto send;
    if ((names = save_names(m, &a, &n)) == NULL) {
        o.nomem = true;
        goto undo;
    }

    struct store_commit commit = {.actor = rq->actor, .comment = comment, .time_ms = 0};
    err = store_save(rq->st, names, n, &commit, &problems, &revision);
    if (err == ERROR_INVALID && problems.count > 0) {
        admin__out_problems(&o, &problems, false);
        admin__out_error(&o, err,
                         "nothing was saved: fix the problems above with `settings set` or "
                         "`settings import-cert`");
        goto undo;
    }
    if (err == ERROR_EMPTY) {
        admin__out_error(&o, err,
                         m->apply_to_replicas
                             ? "nothing to save: the replicas already have these settings"
                             : "nothing to save: there is no draft (make one with `settings set`)");
        goto undo;
    }
    if (err < 0) {
        admin__out_error(&o, err, "cannot save: %s", error_str(err));
        goto undo;
    }
    o.r->revision = revision;
    if (rq->h->saved != NULL)
        rq->h->saved(rq->h->arg, revision);
    goto free_names;

undo:
    if (m->apply_to_replicas && a.n > 0)
        apply_undo(rq->st, &a);
free_names:
    free(names);
send:
    apply_free(&a);
    admin__send(&o, rq->reply, rq->arg);
}

/* --- settings discard ----------------------------------------------------- */

/* Each draft discarded goes into the reply (masked), so the client can
 * count and name them. */
void admin__settings_discard(const struct admin_req *rq, const Smtpsync__SettingsDiscard *m)
{
    struct admin_out o;
    int err;

    if (!admin__out_init(&o))
        goto send;
    for (size_t i = 0; i < m->n_instances; i++)
        if (!instance_ok(&o, m->instances[i]))
            goto send;
    if (m->n_instances == 0) {
        err = store_draft_each(rq->st, 0, show_one, &o);
        if (err == 0)
            err = store_draft_discard(rq->st, NULL);
        if (err == ERROR_NOT_FOUND || (err == 0 && o.r->n_settings == 0))
            admin__out_error(&o, ERROR_NOT_FOUND, "there are no drafts to discard");
        else if (err < 0)
            admin__out_error(&o, err, "cannot discard: %s", error_str(err));
        goto send;
    }
    for (size_t i = 0; i < m->n_instances; i++) {
        struct settings s;

        settings_init(&s);
        err = store_draft_get(rq->st, m->instances[i], 0, &s);
        if (err == 0)
            err = store_draft_discard(rq->st, m->instances[i]);
        if (err == 0)
            admin__out_settings(&o, &s);
        settings_clear(&s);
        if (err == ERROR_NOT_FOUND) {
            admin__out_error(&o, err, "instance %s has no draft", m->instances[i]);
            goto send;
        }
        if (err < 0) {
            admin__out_error(&o, err, "cannot discard: %s", error_str(err));
            goto send;
        }
    }
send:
    admin__send(&o, rq->reply, rq->arg);
}

/* --- history -------------------------------------------------------------- */

struct history_ctx {
    struct admin_out *o;
    uint64_t from; /* 0: from the newest */
    size_t limit;  /* 0: all */
};

/* One history row into the reply: what `history` shows, never a record
 * (changes carry their instance and kind only). */
static int history_row(const struct store_revision *sr, void *arg)
{
    struct history_ctx *hc = arg;
    Smtpsync__AdminReply *r = hc->o->r;
    Smtpsync__Revision *m;
    void **nv;

    if (hc->from != 0 && sr->revision > hc->from)
        return 0;
    if (hc->limit != 0 && r->n_history >= hc->limit)
        return 1; /* enough: stop */
    nv = realloc(r->history, (r->n_history + 1) * sizeof(*r->history));
    if (nv == NULL)
        return -ENOMEM;
    r->history = (Smtpsync__Revision **)nv;
    if ((m = malloc(sizeof(*m))) == NULL)
        return -ENOMEM;
    smtpsync__revision__init(m);
    r->history[r->n_history++] = m;
    m->revision = sr->revision;
    m->epoch = sr->epoch;
    m->time_ms = sr->time_ms;
    m->rollback_of = sr->rollback_of;
    if ((sr->actor != NULL && (m->actor = strdup(sr->actor)) == NULL) ||
        (sr->comment != NULL && (m->comment = strdup(sr->comment)) == NULL)) {
        if (m->actor == NULL)
            m->actor = ADMIN_EMPTY;
        if (m->comment == NULL)
            m->comment = ADMIN_EMPTY;
        return -ENOMEM;
    }
    if (m->actor == NULL)
        m->actor = ADMIN_EMPTY;
    if (m->comment == NULL)
        m->comment = ADMIN_EMPTY;
    if ((m->hash.data = malloc(STORE_HASH_LEN)) == NULL)
        return -ENOMEM;
    memcpy(m->hash.data, sr->hash, STORE_HASH_LEN);
    m->hash.len = STORE_HASH_LEN;
    if (sr->nchanges == 0)
        return 0;
    if ((m->changes = calloc(sr->nchanges, sizeof(*m->changes))) == NULL)
        return -ENOMEM;
    for (size_t i = 0; i < sr->nchanges; i++) {
        Smtpsync__Change *c = malloc(sizeof(*c));
        if (c == NULL)
            return -ENOMEM;
        smtpsync__change__init(c);
        m->changes[m->n_changes++] = c;
        c->kind = sr->deleted[i] ? SMTPSYNC__CHANGE_KIND__CHANGE_KIND_DELETE
                                 : SMTPSYNC__CHANGE_KIND__CHANGE_KIND_PUT;
        if ((c->instance = strdup(sr->instances[i])) == NULL) {
            c->instance = ADMIN_EMPTY;
            return -ENOMEM;
        }
    }
    return 0;
}

void admin__history(const struct admin_req *rq, const Smtpsync__HistoryQuery *m)
{
    struct admin_out o;
    struct history_ctx hc = {&o, m->from_revision, m->limit};
    int err;

    if (!admin__out_init(&o))
        goto send;
    /* With a start, rows newer than it are skipped before the limit. */
    err = store_history(rq->st, m->from_revision != 0 ? 0 : m->limit, history_row, &hc);
    if (err == -ENOMEM)
        o.nomem = true;
    else if (err < 0)
        admin__out_error(&o, err, "cannot list the history: %s", error_str(err));
send:
    admin__send(&o, rq->reply, rq->arg);
}

/* --- diff ----------------------------------------------------------------- */

static int diff_row(const struct store_diff *d, void *arg)
{
    Smtpsync__DiffReply *dr = arg;
    Smtpsync__FieldDiff *f;
    void **nv;

    nv = realloc(dr->diffs, (dr->n_diffs + 1) * sizeof(*dr->diffs));
    if (nv == NULL)
        return -ENOMEM;
    dr->diffs = (Smtpsync__FieldDiff **)nv;
    if ((f = malloc(sizeof(*f))) == NULL)
        return -ENOMEM;
    smtpsync__field_diff__init(f);
    dr->diffs[dr->n_diffs++] = f;
    /* The values are display forms: the password is the mask already. */
    f->instance = strdup(d->instance);
    f->field = strdup(d->field);
    f->old_value = strdup(d->old_value);
    f->new_value = strdup(d->new_value);
    if (f->instance == NULL || f->field == NULL || f->old_value == NULL || f->new_value == NULL) {
        char **s[] = {&f->instance, &f->field, &f->old_value, &f->new_value};
        for (size_t i = 0; i < 4; i++)
            if (*s[i] == NULL)
                *s[i] = ADMIN_EMPTY;
        return -ENOMEM;
    }
    return 0;
}

void admin__diff(const struct admin_req *rq, const Smtpsync__DiffQuery *m)
{
    struct store_info info;
    struct admin_out o;
    int err;

    if (!admin__out_init(&o))
        goto send;
    if ((err = store_info(rq->st, &info)) < 0) {
        admin__out_error(&o, err, "cannot read the store: %s", error_str(err));
        goto send;
    }
    if (!admin__revision_ok(&o, "R1", m->from_revision, info.revision) ||
        !admin__revision_ok(&o, "R2", m->to_revision, info.revision))
        goto send;
    if ((o.r->diff = malloc(sizeof(*o.r->diff))) == NULL) {
        o.nomem = true;
        goto send;
    }
    smtpsync__diff_reply__init(o.r->diff);
    err = store_diff(rq->st, m->from_revision, m->to_revision, diff_row, o.r->diff);
    if (err == -ENOMEM)
        o.nomem = true;
    else if (err < 0)
        admin__revision_error(&o, "compare revisions", err, info.base_revision);
send:
    admin__send(&o, rq->reply, rq->arg);
}

/* --- rollback ------------------------------------------------------------- */

void admin__rollback(const struct admin_req *rq, const Smtpsync__RollbackRequest *m)
{
    const char *comment = m->comment != NULL && m->comment[0] != '\0' ? m->comment : NULL;
    struct store_info info;
    struct admin_out o;
    uint64_t revision = 0;
    int err;

    if (!admin__out_init(&o))
        goto send;
    if ((err = store_info(rq->st, &info)) < 0) {
        admin__out_error(&o, err, "cannot read the store: %s", error_str(err));
        goto send;
    }
    if (!admin__revision_ok(&o, "R", m->revision, info.revision))
        goto send;
    struct store_commit commit = {.actor = rq->actor, .comment = comment, .time_ms = 0};
    err = store_rollback(rq->st, m->revision, &commit, &revision);
    if (err == ERROR_EMPTY) {
        admin__out_error(&o, err,
                         "nothing to roll back: the settings are already those of revision "
                         "%" PRIu64,
                         m->revision);
        goto send;
    }
    if (err < 0) {
        admin__revision_error(&o, "roll back", err, info.base_revision);
        goto send;
    }
    o.r->revision = revision;
    if (rq->h->saved != NULL)
        rq->h->saved(rq->h->arg, revision);
send:
    admin__send(&o, rq->reply, rq->arg);
}
