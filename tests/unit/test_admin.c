/*
 * test_admin: the admin API against a real store in a temporary directory
 * and fake node hooks. Every reply is packed as the node would send it and
 * searched for the plaintext password: no reply may ever carry it.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "admin.h"
#include "error.h"
#include "settings.h"
#include "smtpsync.pb-c.h"
#include "store.h"
#include "testutil.h"

#define SECRET "Pl41n-S3cret-P@ss"

/* What the fake node saw and did. */
struct fake_node {
    bool primary;
    bool lagging;
    unsigned saved_calls;
    uint64_t saved_revision;
    unsigned status_calls;
    /* sync */
    unsigned sync_calls;
    char sync_replica[SETTINGS_INSTANCE_MAX + 1];
    admin_done_cb sync_done;
    void *sync_arg;
    /* promote */
    bool why_names_force; /* the refusal's why names --force itself */
    unsigned promote_calls;
    bool promote_force;
    /* run_test */
    unsigned test_calls;
    char test_instance[SETTINGS_INSTANCE_MAX + 1];
    char test_password[64];
    char test_to[64];
    char test_revision[96];
    admin_test_cb test_done;
    void *test_arg;
};

struct fixture {
    char *dir;
    struct store *st;
    struct fake_node node;
    struct admin_hooks hooks;
    /* the last reply */
    unsigned replies;
    Smtpsync__AdminReply *reply;
    /* every reply, packed, for the secret search */
    uint8_t *all;
    size_t all_len;
};

/* --- fake hooks ------------------------------------------------------------ */

static bool fake_is_primary(void *arg)
{
    return ((struct fake_node *)arg)->primary;
}

static void fake_saved(void *arg, uint64_t revision)
{
    struct fake_node *n = arg;

    n->saved_calls++;
    n->saved_revision = revision;
}

static char *dup_or_fail(const char *s)
{
    char *d = strdup(s);

    assert_non_null(d);
    return d;
}

static int fake_status(void *arg, Smtpsync__StatusReply **out)
{
    struct fake_node *n = arg;
    Smtpsync__StatusReply *sr = malloc(sizeof(*sr));
    Smtpsync__ReplicaStatus *rs = malloc(sizeof(*rs));

    assert_non_null(sr);
    assert_non_null(rs);
    n->status_calls++;
    smtpsync__status_reply__init(sr);
    sr->node = malloc(sizeof(*sr->node));
    assert_non_null(sr->node);
    smtpsync__node_status__init(sr->node);
    sr->node->node = dup_or_fail("primary");
    sr->node->role = n->primary ? SMTPSYNC__ROLE__ROLE_PRIMARY : SMTPSYNC__ROLE__ROLE_REPLICA;
    sr->node->epoch = n->promote_calls > 0 ? 2 : 1;
    smtpsync__replica_status__init(rs);
    rs->id = dup_or_fail("site-b");
    rs->state = SMTPSYNC__REPLICA_STATE__REPLICA_STATE_IN_SYNC;
    sr->replicas = malloc(sizeof(*sr->replicas));
    assert_non_null(sr->replicas);
    sr->replicas[0] = rs;
    sr->n_replicas = 1;
    *out = sr;
    return 0;
}

static int fake_sync(void *arg, const char *replica, admin_done_cb done, void *done_arg, char *why,
                     size_t whylen)
{
    struct fake_node *n = arg;

    n->sync_calls++;
    if (replica != NULL && strcmp(replica, "nosuch") == 0) {
        snprintf(why, whylen, "there is no replica nosuch");
        return ERROR_NOT_FOUND;
    }
    snprintf(n->sync_replica, sizeof(n->sync_replica), "%s", replica != NULL ? replica : "");
    n->sync_done = done;
    n->sync_arg = done_arg;
    return 0;
}

static int fake_promote(void *arg, bool force, uint64_t *epoch, char *why, size_t whylen)
{
    struct fake_node *n = arg;

    n->promote_force = force;
    if (n->primary) {
        snprintf(why, whylen, "this node is the primary already");
        return ERROR_INVALID;
    }
    if (n->lagging && !force) {
        /* As repl_node_role.c says it, --force hint included. */
        snprintf(why, whylen, "this node is 3 revisions behind the primary%s",
                 n->why_names_force ? "; promote --force makes it primary anyway" : "");
        return ERROR_CONFLICT;
    }
    n->promote_calls++;
    n->primary = true;
    *epoch = 2;
    return 0;
}

static int fake_run_test(void *arg, const char *instance, const struct settings *s, const char *to,
                         const char *revision, admin_test_cb done, void *done_arg, char *why,
                         size_t whylen)
{
    struct fake_node *n = arg;

    n->test_calls++;
    if (strcmp(instance, "ghost") == 0) {
        snprintf(why, whylen, "no node of the cluster is instance ghost");
        return ERROR_NOT_FOUND;
    }
    snprintf(n->test_instance, sizeof(n->test_instance), "%s", instance);
    snprintf(n->test_password, sizeof(n->test_password), "%s",
             s->password != NULL ? s->password : "");
    snprintf(n->test_to, sizeof(n->test_to), "%s", to != NULL ? to : "");
    snprintf(n->test_revision, sizeof(n->test_revision), "%s", revision);
    n->test_done = done;
    n->test_arg = done_arg;
    return 0;
}

/* A result as a node would send it (every part malloc'd). */
static Smtpsync__TestResult *make_result(const char *instance, bool ok)
{
    Smtpsync__TestResult *r = malloc(sizeof(*r));

    assert_non_null(r);
    smtpsync__test_result__init(r);
    r->instance = dup_or_fail(instance);
    r->node = dup_or_fail(instance);
    r->ok = ok;
    return r;
}

/* --- fixture --------------------------------------------------------------- */

static void on_reply(void *arg, const Smtpsync__AdminReply *reply)
{
    struct fixture *f = arg;
    size_t len = smtpsync__admin_reply__get_packed_size(reply);
    uint8_t *buf = malloc(len + 1);

    assert_non_null(buf);
    smtpsync__admin_reply__pack(reply, buf);
    f->all = realloc(f->all, f->all_len + len + 1);
    assert_non_null(f->all);
    memcpy(f->all + f->all_len, buf, len);
    f->all_len += len;
    if (f->reply != NULL)
        smtpsync__admin_reply__free_unpacked(f->reply, NULL);
    f->reply = smtpsync__admin_reply__unpack(NULL, len, buf);
    assert_non_null(f->reply);
    free(buf);
    f->replies++;
}

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));
    struct store_params p = {0};

    assert_non_null(f);
    f->dir = testutil_tmpdir();
    p.dir = f->dir;
    p.create = true;
    assert_int_equal(store_open(&p, &f->st), 0);
    f->node.primary = true;
    f->hooks = (struct admin_hooks){
        .arg = &f->node,
        .node_id = "primary",
        .is_primary = fake_is_primary,
        .saved = fake_saved,
        .status = fake_status,
        .status_free = NULL,
        .sync = fake_sync,
        .promote = fake_promote,
        .run_test = fake_run_test,
    };
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;

    /* The one rule every test keeps: no reply held the password. */
    if (f->all_len > 0)
        assert_false(testutil_memmem(f->all, f->all_len, SECRET, strlen(SECRET)));
    if (f->reply != NULL)
        smtpsync__admin_reply__free_unpacked(f->reply, NULL);
    free(f->all);
    store_close(f->st);
    testutil_rmtree(f->dir);
    free(f->dir);
    free(f);
    return 0;
}

/* Sends one request as `role` and returns the reply (synchronous verbs). */
static const Smtpsync__AdminReply *handle(struct fixture *f, enum admin_role role,
                                          const Smtpsync__Frame *req)
{
    unsigned before = f->replies;

    admin_handle(f->st, &f->hooks, role, "alice", req, on_reply, f);
    assert_int_equal(f->replies, before + 1);
    return f->reply;
}

static bool has_problem(const Smtpsync__AdminReply *r, const char *field, bool incomplete)
{
    for (size_t i = 0; i < r->n_problems; i++)
        if (strcmp(r->problems[i]->field, field) == 0 && r->problems[i]->incomplete == incomplete)
            return true;
    return false;
}

/* --- request builders ------------------------------------------------------ */

struct set_req {
    Smtpsync__Frame f;
    Smtpsync__SettingsSet m;
    Smtpsync__Settings s;
    Smtpsync__Secret secret;
    char *fields[32];
};

/* A SettingsSet naming `fields` (NULL-terminated names) with values in
 * r->s; the password, when `password` is not NULL. */
static Smtpsync__Frame *set_request(struct set_req *r, const char *instance,
                                    const char *const *fields, const char *password,
                                    const char *confirm)
{
    size_t n = 0;

    smtpsync__frame__init(&r->f);
    smtpsync__settings_set__init(&r->m);
    smtpsync__settings__init(&r->s);
    r->s.instance = (char *)(uintptr_t)instance;
    for (; fields != NULL && fields[n] != NULL; n++)
        r->fields[n] = (char *)(uintptr_t)fields[n];
    if (password != NULL) {
        smtpsync__secret__init(&r->secret);
        r->secret.plaintext.data = (uint8_t *)(uintptr_t)password;
        r->secret.plaintext.len = strlen(password);
        r->s.password = &r->secret;
        r->fields[n++] = (char *)"password";
        r->m.password_confirm = (char *)(uintptr_t)(confirm != NULL ? confirm : password);
    }
    r->m.settings = &r->s;
    r->m.fields = r->fields;
    r->m.n_fields = n;
    r->f.body_case = SMTPSYNC__FRAME__BODY_SETTINGS_SET;
    r->f.settings_set = &r->m;
    return &r->f;
}

/* A complete record for `instance` with a logon and the secret. */
static void set_full(struct fixture *f, const char *instance, uint32_t port)
{
    static const char *const fields[] = {
        "hostname",       "port",    "from_address",         "test_address",
        "logon_required", "user_id", "allow_plaintext_auth", NULL};
    struct set_req r;
    const Smtpsync__AdminReply *rep;

    set_request(&r, instance, fields, SECRET, SECRET);
    r.s.hostname = (char *)"mail.example.com";
    r.s.port = port;
    r.s.from_address = (char *)"noreply@example.com";
    r.s.test_address = (char *)"ops@example.com";
    r.s.logon_required = true;
    r.s.user_id = (char *)"mailer";
    r.s.allow_plaintext_auth = true;
    rep = handle(f, ADMIN_ROLE_SUPER_ADMIN, &r.f);
    assert_int_equal(rep->code, 0);
    assert_int_equal(rep->n_problems, 0);
}

static const Smtpsync__AdminReply *save(struct fixture *f, enum admin_role role, bool apply,
                                        const char *comment)
{
    Smtpsync__Frame fr;
    Smtpsync__SettingsSave m;

    smtpsync__frame__init(&fr);
    smtpsync__settings_save__init(&m);
    m.apply_to_replicas = apply;
    if (comment != NULL)
        m.comment = (char *)(uintptr_t)comment;
    fr.body_case = SMTPSYNC__FRAME__BODY_SETTINGS_SAVE;
    fr.settings_save = &m;
    return handle(f, role, &fr);
}

static const Smtpsync__AdminReply *show(struct fixture *f, enum admin_role role,
                                        const char *instance, uint64_t revision, bool draft)
{
    Smtpsync__Frame fr;
    Smtpsync__SettingsShow m;

    smtpsync__frame__init(&fr);
    smtpsync__settings_show__init(&m);
    if (instance != NULL)
        m.instance = (char *)(uintptr_t)instance;
    m.revision = revision;
    m.draft = draft;
    fr.body_case = SMTPSYNC__FRAME__BODY_SETTINGS_SHOW;
    fr.settings_show = &m;
    return handle(f, role, &fr);
}

static const Smtpsync__AdminReply *status(struct fixture *f, enum admin_role role)
{
    Smtpsync__Frame fr;
    Smtpsync__StatusQuery m;

    smtpsync__frame__init(&fr);
    smtpsync__status_query__init(&m);
    fr.body_case = SMTPSYNC__FRAME__BODY_STATUS_QUERY;
    fr.status_query = &m;
    return handle(f, role, &fr);
}

/* --- tests ----------------------------------------------------------------- */

static void test_admin_role_parse_and_name(void **state)
{
    (void)state;
    assert_int_equal(admin_role_parse("operator"), ADMIN_ROLE_OPERATOR);
    assert_int_equal(admin_role_parse("super-admin"), ADMIN_ROLE_SUPER_ADMIN);
    assert_int_equal(admin_role_parse("none"), ERROR_INVALID);
    assert_int_equal(admin_role_parse("Super-Admin"), ERROR_INVALID);
    assert_int_equal(admin_role_parse(""), ERROR_INVALID);
    assert_int_equal(admin_role_parse(NULL), ERROR_INVALID);
    assert_string_equal(admin_role_name(ADMIN_ROLE_SUPER_ADMIN), "super-admin");
    assert_string_equal(admin_role_name(ADMIN_ROLE_OPERATOR), "operator");
    assert_string_equal(admin_role_name((enum admin_role)42), "unknown");
    assert_string_equal(admin_replica_state_name(SMTPSYNC__REPLICA_STATE__REPLICA_STATE_IN_SYNC),
                        "in-sync");
    assert_string_equal(
        admin_replica_state_name(SMTPSYNC__REPLICA_STATE__REPLICA_STATE_NEVER_SYNCED),
        "never-synced");
    assert_string_equal(admin_replica_state_name((Smtpsync__ReplicaState)99), "unknown");
}

static void test_admin_set_stores_draft_and_masks_password(void **state)
{
    struct fixture *f = *state;
    const Smtpsync__AdminReply *r;
    struct settings s;

    set_full(f, "primary", 587);
    /* The reply named the draft, password masked. */
    assert_int_equal(f->reply->n_settings, 1);
    assert_non_null(f->reply->settings[0]->password);
    assert_int_equal(f->reply->settings[0]->password->sealed.len, 0);
    assert_memory_equal(f->reply->settings[0]->password->plaintext.data, SETTINGS_PASSWORD_MASK,
                        strlen(SETTINGS_PASSWORD_MASK));

    /* The store has it, sealed, and opens it. */
    settings_init(&s);
    assert_int_equal(store_draft_get(f->st, "primary", STORE_UNSEAL, &s), 0);
    assert_string_equal(s.password, SECRET);
    assert_string_equal(s.hostname, "mail.example.com");
    assert_int_equal(s.port, 587);
    settings_clear(&s);

    /* An operator reads the draft: masked. */
    r = show(f, ADMIN_ROLE_OPERATOR, "primary", 0, true);
    assert_int_equal(r->code, 0);
    assert_int_equal(r->n_settings, 1);
    assert_int_equal(r->settings[0]->password->plaintext.len, strlen(SETTINGS_PASSWORD_MASK));
    assert_int_equal(r->settings[0]->password->sealed.len, 0);
}

static void test_admin_set_patch_keeps_other_fields(void **state)
{
    struct fixture *f = *state;
    static const char *const port_only[] = {"port", NULL};
    struct set_req r;
    struct settings s;

    set_full(f, "primary", 587);
    set_request(&r, "primary", port_only, NULL, NULL);
    r.s.port = 2525;
    r.s.hostname = (char *)"not.named.example"; /* not in fields: ignored */
    assert_int_equal(handle(f, ADMIN_ROLE_SUPER_ADMIN, &r.f)->code, 0);
    settings_init(&s);
    assert_int_equal(store_draft_get(f->st, "primary", STORE_UNSEAL, &s), 0);
    assert_int_equal(s.port, 2525);
    assert_string_equal(s.hostname, "mail.example.com");
    assert_string_equal(s.password, SECRET); /* kept across the patch */
    settings_clear(&s);
}

static void test_admin_set_lists_every_problem(void **state)
{
    struct fixture *f = *state;
    static const char *const fields[] = {"hostname", "from_address", "nosuchfield", NULL};
    struct set_req r;
    const Smtpsync__AdminReply *rep;
    struct settings s;

    set_request(&r, "primary", fields, "one", "two");
    r.s.hostname = (char *)"bad host name";
    r.s.from_address = (char *)"not-an-address";
    rep = handle(f, ADMIN_ROLE_SUPER_ADMIN, &r.f);
    assert_int_equal(rep->code, ERROR_INVALID);
    assert_true(has_problem(rep, "hostname", false));
    assert_true(has_problem(rep, "from_address", false));
    assert_true(has_problem(rep, "password", false)); /* confirmation differs */
    assert_true(has_problem(rep, "nosuchfield", false));
    assert_non_null(strstr(rep->error, "nothing was written"));
    settings_init(&s);
    assert_int_equal(store_draft_get(f->st, "primary", 0, &s), ERROR_NOT_FOUND);
    settings_clear(&s);
}

static void test_admin_set_incomplete_is_stored_with_what_is_missing(void **state)
{
    struct fixture *f = *state;
    static const char *const fields[] = {"hostname", NULL};
    struct set_req r;
    const Smtpsync__AdminReply *rep;

    set_request(&r, "primary", fields, NULL, NULL);
    r.s.hostname = (char *)"mail.example.com";
    rep = handle(f, ADMIN_ROLE_SUPER_ADMIN, &r.f);
    assert_int_equal(rep->code, 0);
    assert_true(rep->n_problems > 0);
    for (size_t i = 0; i < rep->n_problems; i++)
        assert_true(rep->problems[i]->incomplete);
    assert_true(has_problem(rep, "from_address", true));
}

static void test_admin_hostile_requests_are_refused(void **state)
{
    struct fixture *f = *state;
    static const char *const none[] = {NULL};
    Smtpsync__Frame fr;
    Smtpsync__SettingsSet empty;
    Smtpsync__Hello hello;
    struct set_req r;
    char long_id[200];
    const Smtpsync__AdminReply *rep;

    /* No record at all. */
    smtpsync__frame__init(&fr);
    smtpsync__settings_set__init(&empty);
    fr.body_case = SMTPSYNC__FRAME__BODY_SETTINGS_SET;
    fr.settings_set = &empty;
    rep = handle(f, ADMIN_ROLE_SUPER_ADMIN, &fr);
    assert_int_equal(rep->code, ERROR_INVALID);

    /* An instance id that is not one. */
    memset(long_id, 'a', sizeof(long_id) - 1);
    long_id[sizeof(long_id) - 1] = '\0';
    rep = handle(f, ADMIN_ROLE_SUPER_ADMIN, set_request(&r, long_id, none, NULL, NULL));
    assert_int_equal(rep->code, ERROR_INVALID);
    rep = handle(f, ADMIN_ROLE_SUPER_ADMIN, set_request(&r, "../etc", none, NULL, NULL));
    assert_int_equal(rep->code, ERROR_INVALID);

    /* A port out of range and a password with NUL. */
    static const char *const port[] = {"port", NULL};
    set_request(&r, "primary", port, NULL, NULL);
    r.s.port = 70000;
    rep = handle(f, ADMIN_ROLE_SUPER_ADMIN, &r.f);
    assert_int_equal(rep->code, ERROR_INVALID);
    assert_true(has_problem(rep, "port", false));
    set_request(&r, "primary", none, "a\0b", "a");
    r.secret.plaintext.len = 3;
    rep = handle(f, ADMIN_ROLE_SUPER_ADMIN, &r.f);
    assert_int_equal(rep->code, ERROR_INVALID);

    /* Not an admin request at all. */
    smtpsync__frame__init(&fr);
    smtpsync__hello__init(&hello);
    fr.body_case = SMTPSYNC__FRAME__BODY_HELLO;
    fr.hello = &hello;
    assert_false(admin_frame_is_request(&fr));
    rep = handle(f, ADMIN_ROLE_SUPER_ADMIN, &fr);
    assert_int_equal(rep->code, ERROR_INVALID);

    /* A revision beyond the head. */
    rep = show(f, ADMIN_ROLE_OPERATOR, NULL, 99, false);
    assert_int_equal(rep->code, ERROR_INVALID);
    assert_string_equal(rep->error, "--revision: revision 99 does not exist (nothing has been "
                                    "saved yet)");
    rep = show(f, ADMIN_ROLE_OPERATOR, NULL, 1, true);
    assert_int_equal(rep->code, ERROR_INVALID);
}

static void test_admin_operator_is_refused_every_write(void **state)
{
    struct fixture *f = *state;
    static const char *const none[] = {NULL};
    Smtpsync__Frame fr;
    struct set_req r;
    Smtpsync__ImportCert ic;
    Smtpsync__SettingsDiscard sd;
    Smtpsync__RollbackRequest rb;
    Smtpsync__SettingsTestRequest st;
    Smtpsync__SyncRequest sy;
    Smtpsync__PromoteRequest pr;
    Smtpsync__Frame frames[8];
    size_t n = 0;

    frames[n++] = *set_request(&r, "primary", none, SECRET, SECRET);
    smtpsync__import_cert__init(&ic);
    ic.instance = (char *)"primary";
    smtpsync__frame__init(&fr);
    fr.body_case = SMTPSYNC__FRAME__BODY_IMPORT_CERT;
    fr.import_cert = &ic;
    frames[n++] = fr;
    smtpsync__settings_discard__init(&sd);
    fr.body_case = SMTPSYNC__FRAME__BODY_SETTINGS_DISCARD;
    fr.settings_discard = &sd;
    frames[n++] = fr;
    smtpsync__rollback_request__init(&rb);
    rb.revision = 1;
    fr.body_case = SMTPSYNC__FRAME__BODY_ROLLBACK;
    fr.rollback = &rb;
    frames[n++] = fr;
    smtpsync__settings_test_request__init(&st);
    st.instance = (char *)"primary";
    fr.body_case = SMTPSYNC__FRAME__BODY_SETTINGS_TEST;
    fr.settings_test = &st;
    frames[n++] = fr;
    smtpsync__sync_request__init(&sy);
    fr.body_case = SMTPSYNC__FRAME__BODY_SYNC;
    fr.sync = &sy;
    frames[n++] = fr;
    smtpsync__promote_request__init(&pr);
    fr.body_case = SMTPSYNC__FRAME__BODY_PROMOTE;
    fr.promote = &pr;
    frames[n++] = fr;

    for (size_t i = 0; i < n; i++) {
        const Smtpsync__AdminReply *rep = handle(f, ADMIN_ROLE_OPERATOR, &frames[i]);
        assert_int_equal(rep->code, ERROR_FORBIDDEN);
        assert_string_equal(rep->needs_role, "super-admin");
        assert_string_equal(rep->error, "this needs the super-admin role");
    }
    /* save too, and nothing reached the node or the store. */
    assert_int_equal(save(f, ADMIN_ROLE_OPERATOR, false, NULL)->code, ERROR_FORBIDDEN);
    assert_int_equal(f->node.sync_calls + f->node.test_calls + f->node.promote_calls, 0);
    struct settings s;
    settings_init(&s);
    assert_int_equal(store_draft_get(f->st, "primary", 0, &s), ERROR_NOT_FOUND);
    settings_clear(&s);

    /* What an operator may do. */
    assert_int_equal(status(f, ADMIN_ROLE_OPERATOR)->code, 0);
    assert_int_equal(show(f, ADMIN_ROLE_OPERATOR, NULL, 0, false)->code, 0);
    /* No role at all: nothing. */
    assert_int_equal(status(f, ADMIN_ROLE_NONE)->code, ERROR_FORBIDDEN);
}

static void test_admin_replica_refuses_writes(void **state)
{
    struct fixture *f = *state;
    static const char *const none[] = {NULL};
    struct set_req r;
    const Smtpsync__AdminReply *rep;
    Smtpsync__Frame fr;
    Smtpsync__PromoteRequest pr;

    f->node.primary = false;
    rep = handle(f, ADMIN_ROLE_SUPER_ADMIN, set_request(&r, "primary", none, SECRET, SECRET));
    assert_int_equal(rep->code, ERROR_NOT_PRIMARY);
    assert_non_null(strstr(rep->error, "replica"));
    assert_int_equal(save(f, ADMIN_ROLE_SUPER_ADMIN, false, NULL)->code, ERROR_NOT_PRIMARY);
    /* Reads work everywhere. */
    assert_int_equal(show(f, ADMIN_ROLE_OPERATOR, NULL, 0, false)->code, 0);
    rep = status(f, ADMIN_ROLE_OPERATOR);
    assert_int_equal(rep->code, 0);
    assert_non_null(rep->status);
    assert_int_equal(rep->status->node->role, SMTPSYNC__ROLE__ROLE_REPLICA);
    /* Promotion works on a replica. */
    smtpsync__frame__init(&fr);
    smtpsync__promote_request__init(&pr);
    fr.body_case = SMTPSYNC__FRAME__BODY_PROMOTE;
    fr.promote = &pr;
    rep = handle(f, ADMIN_ROLE_SUPER_ADMIN, &fr);
    assert_int_equal(rep->code, 0);
    assert_int_equal(f->node.promote_calls, 1);
    assert_int_equal(rep->status->node->epoch, 2);
    /* And now it is the primary: writes are taken. */
    rep = handle(f, ADMIN_ROLE_SUPER_ADMIN, set_request(&r, "primary", none, SECRET, SECRET));
    assert_int_equal(rep->code, 0);
}

static void test_admin_promote_refuses_a_lagging_node_unless_forced(void **state)
{
    struct fixture *f = *state;
    Smtpsync__Frame fr;
    Smtpsync__PromoteRequest pr;
    const Smtpsync__AdminReply *rep;

    f->node.primary = false;
    f->node.lagging = true;
    smtpsync__frame__init(&fr);
    smtpsync__promote_request__init(&pr);
    fr.body_case = SMTPSYNC__FRAME__BODY_PROMOTE;
    fr.promote = &pr;
    rep = handle(f, ADMIN_ROLE_SUPER_ADMIN, &fr);
    assert_int_equal(rep->code, ERROR_CONFLICT);
    assert_non_null(strstr(rep->error, "3 revisions behind"));
    assert_non_null(strstr(rep->error, "--force"));
    /* A why that names --force already: the hint is not added twice. */
    f->node.why_names_force = true;
    rep = handle(f, ADMIN_ROLE_SUPER_ADMIN, &fr);
    assert_int_equal(rep->code, ERROR_CONFLICT);
    assert_non_null(strstr(rep->error, "--force"));
    assert_null(strstr(strstr(rep->error, "--force") + 1, "--force"));
    pr.force = true;
    rep = handle(f, ADMIN_ROLE_SUPER_ADMIN, &fr);
    assert_int_equal(rep->code, 0);
    assert_true(f->node.promote_force);
    /* A primary is not promoted again. */
    rep = handle(f, ADMIN_ROLE_SUPER_ADMIN, &fr);
    assert_int_equal(rep->code, ERROR_INVALID);
    assert_non_null(strstr(rep->error, "primary already"));
}

static void test_admin_save_history_diff_rollback(void **state)
{
    struct fixture *f = *state;
    static const char *const port_only[] = {"port", NULL};
    const Smtpsync__AdminReply *rep;
    struct set_req r;
    Smtpsync__Frame fr;
    Smtpsync__HistoryQuery hq;
    Smtpsync__DiffQuery dq;
    Smtpsync__RollbackRequest rb;

    assert_int_equal(save(f, ADMIN_ROLE_SUPER_ADMIN, false, NULL)->code, ERROR_EMPTY);
    set_full(f, "primary", 587);
    rep = save(f, ADMIN_ROLE_SUPER_ADMIN, false, "first");
    assert_int_equal(rep->code, 0);
    assert_int_equal(rep->revision, 1);
    assert_int_equal(f->node.saved_calls, 1);
    assert_int_equal(f->node.saved_revision, 1);

    set_request(&r, "primary", port_only, NULL, NULL);
    r.s.port = 465;
    assert_int_equal(handle(f, ADMIN_ROLE_SUPER_ADMIN, &r.f)->code, 0);
    assert_int_equal(save(f, ADMIN_ROLE_SUPER_ADMIN, false, NULL)->revision, 2);

    /* history: newest first, actor and comment, no records. */
    smtpsync__frame__init(&fr);
    smtpsync__history_query__init(&hq);
    fr.body_case = SMTPSYNC__FRAME__BODY_HISTORY_QUERY;
    fr.history_query = &hq;
    rep = handle(f, ADMIN_ROLE_OPERATOR, &fr);
    assert_int_equal(rep->code, 0);
    assert_int_equal(rep->n_history, 2);
    assert_int_equal(rep->history[0]->revision, 2);
    assert_string_equal(rep->history[1]->actor, "alice");
    assert_string_equal(rep->history[1]->comment, "first");
    assert_int_equal(rep->history[1]->hash.len, STORE_HASH_LEN);
    assert_int_equal(rep->history[1]->n_changes, 1);
    assert_string_equal(rep->history[1]->changes[0]->instance, "primary");
    assert_null(rep->history[1]->changes[0]->settings);
    hq.limit = 1;
    rep = handle(f, ADMIN_ROLE_OPERATOR, &fr);
    assert_int_equal(rep->n_history, 1);
    hq.limit = 0;
    hq.from_revision = 1;
    rep = handle(f, ADMIN_ROLE_OPERATOR, &fr);
    assert_int_equal(rep->n_history, 1);
    assert_int_equal(rep->history[0]->revision, 1);

    /* diff: the port, in display form. */
    smtpsync__diff_query__init(&dq);
    dq.from_revision = 1;
    dq.to_revision = 2;
    fr.body_case = SMTPSYNC__FRAME__BODY_DIFF_QUERY;
    fr.diff_query = &dq;
    rep = handle(f, ADMIN_ROLE_OPERATOR, &fr);
    assert_int_equal(rep->code, 0);
    assert_int_equal(rep->diff->n_diffs, 1);
    assert_string_equal(rep->diff->diffs[0]->field, "port");
    assert_string_equal(rep->diff->diffs[0]->old_value, "587");
    assert_string_equal(rep->diff->diffs[0]->new_value, "465");
    dq.to_revision = 9;
    rep = handle(f, ADMIN_ROLE_OPERATOR, &fr);
    assert_int_equal(rep->code, ERROR_INVALID);
    assert_string_equal(rep->error, "R2: revision 9 does not exist (the newest is 2)");

    /* rollback: a new revision; the node is told. */
    smtpsync__rollback_request__init(&rb);
    rb.revision = 1;
    fr.body_case = SMTPSYNC__FRAME__BODY_ROLLBACK;
    fr.rollback = &rb;
    rep = handle(f, ADMIN_ROLE_SUPER_ADMIN, &fr);
    assert_int_equal(rep->code, 0);
    assert_int_equal(rep->revision, 3);
    assert_int_equal(f->node.saved_revision, 3);
    rep = handle(f, ADMIN_ROLE_SUPER_ADMIN, &fr);
    assert_int_equal(rep->code, ERROR_EMPTY);
    assert_string_equal(rep->error,
                        "nothing to roll back: the settings are already those of revision 1");

    /* show at a revision, masked. */
    rep = show(f, ADMIN_ROLE_OPERATOR, "primary", 2, false);
    assert_int_equal(rep->code, 0);
    assert_int_equal(rep->revision, 2);
    assert_int_equal(rep->settings[0]->port, 465);
    rep = show(f, ADMIN_ROLE_OPERATOR, "nobody", 0, false);
    assert_int_equal(rep->code, ERROR_NOT_FOUND);
    assert_string_equal(rep->error, "instance nobody has no saved settings");
}

static void test_admin_save_lists_problems(void **state)
{
    struct fixture *f = *state;
    static const char *const fields[] = {"hostname", NULL};
    struct set_req r;
    const Smtpsync__AdminReply *rep;

    set_request(&r, "primary", fields, NULL, NULL);
    r.s.hostname = (char *)"mail.example.com";
    assert_int_equal(handle(f, ADMIN_ROLE_SUPER_ADMIN, &r.f)->code, 0);
    rep = save(f, ADMIN_ROLE_SUPER_ADMIN, false, NULL);
    assert_int_equal(rep->code, ERROR_INVALID);
    assert_true(has_problem(rep, "primary.from_address", true));
    assert_non_null(strstr(rep->error, "nothing was saved"));
    assert_int_equal(f->node.saved_calls, 0);
}

static void set_membership(struct fixture *f, bool with_replicas)
{
    Smtpsync__Member m[3], *mp[3];
    Smtpsync__Membership ms;
    const char *ids[3] = {"primary", "site-b", "site-c"};

    smtpsync__membership__init(&ms);
    for (size_t i = 0; i < (with_replicas ? 3u : 1u); i++) {
        smtpsync__member__init(&m[i]);
        m[i].node = (char *)(uintptr_t)ids[i];
        m[i].address = (char *)"127.0.0.1:7443";
        m[i].role = i == 0 ? SMTPSYNC__ROLE__ROLE_PRIMARY : SMTPSYNC__ROLE__ROLE_REPLICA;
        mp[i] = &m[i];
    }
    ms.members = mp;
    ms.n_members = with_replicas ? 3 : 1;
    assert_int_equal(store_repl_set_membership(f->st, &ms), 0);
}

static void test_admin_apply_to_replicas_in_one_revision(void **state)
{
    struct fixture *f = *state;
    const Smtpsync__AdminReply *rep;
    Smtpsync__Frame fr;
    Smtpsync__HistoryQuery hq;
    struct settings s;
    const char *replicas[] = {"site-b", "site-c"};

    set_membership(f, true);
    set_full(f, "primary", 587);
    rep = save(f, ADMIN_ROLE_SUPER_ADMIN, true, "everywhere");
    assert_int_equal(rep->code, 0);
    assert_int_equal(rep->revision, 1);
    assert_int_equal(f->node.saved_calls, 1);

    smtpsync__frame__init(&fr);
    smtpsync__history_query__init(&hq);
    fr.body_case = SMTPSYNC__FRAME__BODY_HISTORY_QUERY;
    fr.history_query = &hq;
    rep = handle(f, ADMIN_ROLE_OPERATOR, &fr);
    assert_int_equal(rep->n_history, 1);
    assert_int_equal(rep->history[0]->n_changes, 3);

    for (size_t i = 0; i < 2; i++) {
        settings_init(&s);
        assert_int_equal(store_get(f->st, replicas[i], 0, STORE_UNSEAL, &s), 0);
        assert_string_equal(s.instance, replicas[i]);
        assert_string_equal(s.hostname, "mail.example.com");
        assert_string_equal(s.password, SECRET);
        assert_int_equal(s.port, 587);
        settings_clear(&s);
        assert_int_equal(store_draft_get(f->st, replicas[i], 0, &s), ERROR_NOT_FOUND);
        settings_clear(&s);
    }

    /* Again, with nothing new: nothing to save, and no draft left over. */
    rep = save(f, ADMIN_ROLE_SUPER_ADMIN, true, NULL);
    assert_int_equal(rep->code, ERROR_EMPTY);
    settings_init(&s);
    assert_int_equal(store_draft_get(f->st, "site-b", 0, &s), ERROR_NOT_FOUND);
    settings_clear(&s);

    /* From the saved settings of the primary, after a replica drifted. */
    struct set_req r;
    static const char *const port_only[] = {"port", NULL};
    set_request(&r, "site-c", port_only, NULL, NULL);
    r.s.port = 2525;
    assert_int_equal(handle(f, ADMIN_ROLE_SUPER_ADMIN, &r.f)->code, 0);
    assert_int_equal(save(f, ADMIN_ROLE_SUPER_ADMIN, false, NULL)->revision, 2);
    rep = save(f, ADMIN_ROLE_SUPER_ADMIN, true, NULL);
    assert_int_equal(rep->code, 0);
    assert_int_equal(rep->revision, 3);
    settings_init(&s);
    assert_int_equal(store_get(f->st, "site-c", 0, 0, &s), 0);
    assert_int_equal(s.port, 587);
    settings_clear(&s);
}

static void test_admin_apply_to_replicas_refusals(void **state)
{
    struct fixture *f = *state;
    static const char *const fields[] = {"hostname", NULL};
    const Smtpsync__AdminReply *rep;
    struct set_req r;
    struct settings s;

    /* No membership: nothing to copy to. */
    set_full(f, "primary", 587);
    rep = save(f, ADMIN_ROLE_SUPER_ADMIN, true, NULL);
    assert_int_equal(rep->code, ERROR_NOT_FOUND);
    assert_non_null(strstr(rep->error, "no replica"));
    set_membership(f, false);
    assert_int_equal(save(f, ADMIN_ROLE_SUPER_ADMIN, true, NULL)->code, ERROR_NOT_FOUND);

    /* An incomplete source is refused before anything is copied; a
     * replica's own draft is left as it was. */
    set_membership(f, true);
    set_request(&r, "site-b", fields, NULL, NULL);
    r.s.hostname = (char *)"own.example.com";
    assert_int_equal(handle(f, ADMIN_ROLE_SUPER_ADMIN, &r.f)->code, 0);
    set_request(&r, "primary", fields, NULL, NULL);
    r.s.hostname = (char *)"bad host";
    assert_int_equal(handle(f, ADMIN_ROLE_SUPER_ADMIN, &r.f)->code, ERROR_INVALID);
    assert_int_equal(store_draft_discard(f->st, "primary"), 0);
    assert_int_equal(save(f, ADMIN_ROLE_SUPER_ADMIN, true, NULL)->code, ERROR_NOT_FOUND);
    settings_init(&s);
    assert_int_equal(store_draft_get(f->st, "site-b", 0, &s), 0);
    assert_string_equal(s.hostname, "own.example.com");
    settings_clear(&s);
}

static void test_admin_discard(void **state)
{
    struct fixture *f = *state;
    Smtpsync__Frame fr;
    Smtpsync__SettingsDiscard m;
    char *one[] = {(char *)"site-b"};
    const Smtpsync__AdminReply *rep;

    set_full(f, "primary", 587);
    set_full(f, "site-b", 587);
    smtpsync__frame__init(&fr);
    smtpsync__settings_discard__init(&m);
    fr.body_case = SMTPSYNC__FRAME__BODY_SETTINGS_DISCARD;
    fr.settings_discard = &m;
    m.instances = one;
    m.n_instances = 1;
    rep = handle(f, ADMIN_ROLE_SUPER_ADMIN, &fr);
    assert_int_equal(rep->code, 0);
    assert_int_equal(rep->n_settings, 1);
    rep = handle(f, ADMIN_ROLE_SUPER_ADMIN, &fr);
    assert_int_equal(rep->code, ERROR_NOT_FOUND);
    assert_string_equal(rep->error, "instance site-b has no draft");
    m.n_instances = 0;
    rep = handle(f, ADMIN_ROLE_SUPER_ADMIN, &fr);
    assert_int_equal(rep->code, 0);
    assert_int_equal(rep->n_settings, 1);
    rep = handle(f, ADMIN_ROLE_SUPER_ADMIN, &fr);
    assert_int_equal(rep->code, ERROR_NOT_FOUND);
    assert_string_equal(rep->error, "there are no drafts to discard");
}

static void test_admin_import_cert(void **state)
{
    struct fixture *f = *state;
    Smtpsync__Frame fr;
    Smtpsync__ImportCert m;
    const Smtpsync__AdminReply *rep;
    char *pem = testutil_read_file(testutil_cert_path("ca.pem"), NULL);
    struct settings s;

    smtpsync__frame__init(&fr);
    smtpsync__import_cert__init(&m);
    fr.body_case = SMTPSYNC__FRAME__BODY_IMPORT_CERT;
    fr.import_cert = &m;
    m.instance = (char *)"primary";
    m.pem = pem;
    rep = handle(f, ADMIN_ROLE_SUPER_ADMIN, &fr);
    assert_int_equal(rep->code, 0);
    assert_int_equal(rep->n_settings, 1);
    assert_string_equal(rep->settings[0]->trust_certificate, pem);
    settings_init(&s);
    assert_int_equal(store_draft_get(f->st, "primary", 0, &s), 0);
    assert_string_equal(s.trust_certificate, pem);
    settings_clear(&s);
    free(pem);

    m.pem = (char *)"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n";
    rep = handle(f, ADMIN_ROLE_SUPER_ADMIN, &fr);
    assert_int_equal(rep->code, ERROR_INVALID);
    assert_true(has_problem(rep, "trust_certificate", false));
    m.pem = (char *)"";
    assert_int_equal(handle(f, ADMIN_ROLE_SUPER_ADMIN, &fr)->code, ERROR_INVALID);
}

static void test_admin_settings_test_is_delegated_and_answered_later(void **state)
{
    struct fixture *f = *state;
    Smtpsync__Frame fr;
    Smtpsync__SettingsTestRequest m;
    unsigned before;

    set_full(f, "primary", 587);
    smtpsync__frame__init(&fr);
    smtpsync__settings_test_request__init(&m);
    fr.body_case = SMTPSYNC__FRAME__BODY_SETTINGS_TEST;
    fr.settings_test = &m;
    m.instance = (char *)"primary";
    m.to = (char *)"someone@example.org";
    before = f->replies;
    admin_handle(f->st, &f->hooks, ADMIN_ROLE_SUPER_ADMIN, "alice", &fr, on_reply, f);
    assert_int_equal(f->replies, before); /* not yet */
    assert_int_equal(f->node.test_calls, 1);
    assert_string_equal(f->node.test_instance, "primary");
    assert_string_equal(f->node.test_password, SECRET); /* the node gets it */
    assert_string_equal(f->node.test_to, "someone@example.org");
    assert_string_equal(f->node.test_revision, "draft, nothing saved yet");

    f->node.test_done(f->node.test_arg, 0, NULL, make_result("primary", true));
    assert_int_equal(f->replies, before + 1);
    assert_int_equal(f->reply->code, 0);
    assert_non_null(f->reply->test);
    assert_true(f->reply->test->ok);
    assert_int_equal(f->reply->n_settings, 1); /* the draft tried, masked */

    /* The saved settings, on a node that is not there. */
    m.saved = true;
    assert_int_equal(handle(f, ADMIN_ROLE_SUPER_ADMIN, &fr)->code, ERROR_NOT_FOUND);
    assert_string_equal(f->reply->error, "instance primary has no saved settings");
    m.saved = false;
    m.instance = (char *)"ghost";
    assert_int_equal(handle(f, ADMIN_ROLE_SUPER_ADMIN, &fr)->code, ERROR_NOT_FOUND);
    set_full(f, "ghost", 25);
    assert_int_equal(handle(f, ADMIN_ROLE_SUPER_ADMIN, &fr)->code, ERROR_NOT_FOUND);
    assert_non_null(strstr(f->reply->error, "no node of the cluster"));

    /* A failure reported by the node, with a partial result. */
    m.instance = (char *)"primary";
    m.to = (char *)"not an address";
    assert_int_equal(handle(f, ADMIN_ROLE_SUPER_ADMIN, &fr)->code, ERROR_INVALID);
    m.to = NULL;
    before = f->replies;
    admin_handle(f->st, &f->hooks, ADMIN_ROLE_SUPER_ADMIN, "alice", &fr, on_reply, f);
    f->node.test_done(f->node.test_arg, -ECONNRESET, "the node went away",
                      make_result("primary", false));
    assert_int_equal(f->replies, before + 1);
    assert_int_equal(f->reply->code, -ECONNRESET);
    assert_non_null(strstr(f->reply->error, "the node went away"));
}

static void test_admin_sync_is_answered_when_the_push_ends(void **state)
{
    struct fixture *f = *state;
    Smtpsync__Frame fr;
    Smtpsync__SyncRequest m;
    unsigned before;

    smtpsync__frame__init(&fr);
    smtpsync__sync_request__init(&m);
    fr.body_case = SMTPSYNC__FRAME__BODY_SYNC;
    fr.sync = &m;
    m.replica = (char *)"site-b";
    before = f->replies;
    admin_handle(f->st, &f->hooks, ADMIN_ROLE_SUPER_ADMIN, "alice", &fr, on_reply, f);
    assert_int_equal(f->replies, before);
    assert_string_equal(f->node.sync_replica, "site-b");
    f->node.sync_done(f->node.sync_arg, 0, NULL);
    assert_int_equal(f->replies, before + 1);
    assert_int_equal(f->reply->code, 0);
    assert_non_null(f->reply->status);
    assert_string_equal(f->reply->status->replicas[0]->id, "site-b");

    /* Every replica; the push fails. */
    m.replica = NULL;
    admin_handle(f->st, &f->hooks, ADMIN_ROLE_SUPER_ADMIN, "alice", &fr, on_reply, f);
    assert_string_equal(f->node.sync_replica, "");
    f->node.sync_done(f->node.sync_arg, -ETIMEDOUT, "site-b did not answer");
    assert_int_equal(f->reply->code, -ETIMEDOUT);
    assert_string_equal(f->reply->error, "sync failed: site-b did not answer");
    assert_non_null(f->reply->status);

    /* Refused at once. */
    m.replica = (char *)"nosuch";
    assert_int_equal(handle(f, ADMIN_ROLE_SUPER_ADMIN, &fr)->code, ERROR_NOT_FOUND);
    assert_string_equal(f->reply->error, "cannot sync: there is no replica nosuch");
    m.replica = (char *)"bad id!";
    assert_int_equal(handle(f, ADMIN_ROLE_SUPER_ADMIN, &fr)->code, ERROR_INVALID);
}

static void test_admin_queue_is_local_only(void **state)
{
    struct fixture *f = *state;
    Smtpsync__Frame fr;
    Smtpsync__QueueQuery q;
    const Smtpsync__AdminReply *rep;

    smtpsync__frame__init(&fr);
    smtpsync__queue_query__init(&q);
    fr.body_case = SMTPSYNC__FRAME__BODY_QUEUE_QUERY;
    fr.queue_query = &q;
    assert_true(admin_frame_is_request(&fr));
    rep = handle(f, ADMIN_ROLE_SUPER_ADMIN, &fr);
    assert_int_equal(rep->code, ERROR_INVALID);
    assert_non_null(strstr(rep->error, "--socket"));
}

static void test_admin_status_copies_the_node_view(void **state)
{
    struct fixture *f = *state;
    const Smtpsync__AdminReply *rep = status(f, ADMIN_ROLE_OPERATOR);

    assert_int_equal(rep->code, 0);
    assert_non_null(rep->status);
    assert_string_equal(rep->status->node->node, "primary");
    assert_int_equal(rep->status->n_replicas, 1);
    assert_int_equal(rep->status->replicas[0]->state,
                     SMTPSYNC__REPLICA_STATE__REPLICA_STATE_IN_SYNC);
    assert_int_equal(f->node.status_calls, 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_admin_role_parse_and_name),
#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)
        T(test_admin_set_stores_draft_and_masks_password),
        T(test_admin_set_patch_keeps_other_fields),
        T(test_admin_set_lists_every_problem),
        T(test_admin_set_incomplete_is_stored_with_what_is_missing),
        T(test_admin_hostile_requests_are_refused),
        T(test_admin_operator_is_refused_every_write),
        T(test_admin_replica_refuses_writes),
        T(test_admin_promote_refuses_a_lagging_node_unless_forced),
        T(test_admin_save_history_diff_rollback),
        T(test_admin_save_lists_problems),
        T(test_admin_apply_to_replicas_in_one_revision),
        T(test_admin_apply_to_replicas_refusals),
        T(test_admin_discard),
        T(test_admin_import_cert),
        T(test_admin_settings_test_is_delegated_and_answered_later),
        T(test_admin_sync_is_answered_when_the_push_ends),
        T(test_admin_queue_is_local_only),
        T(test_admin_status_copies_the_node_view),
#undef T
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
