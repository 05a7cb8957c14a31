#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <dirent.h>
#include <lmdb.h>
#include <openssl/evp.h>

#include "error.h"
#include "seal.h"
#include "settings.h"
#include "smtpsync.pb-c.h"
#include "store.h"
#include "testutil.h"

#define SECRET_TEXT "Pl41nT3xt-P@ss"

struct fixture {
    char *dir;
    struct store *st;
};

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));
    struct store_params p = {0};

    assert_non_null(f);
    f->dir = testutil_tmpdir();
    p.dir = f->dir;
    p.create = true;
    assert_int_equal(store_open(&p, &f->st), 0);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;

    store_close(f->st);
    testutil_rmtree(f->dir);
    free(f->dir);
    free(f);
    return 0;
}

static void reopen(struct fixture *f)
{
    struct store_params p = {.dir = f->dir};

    store_close(f->st);
    f->st = NULL;
    assert_int_equal(store_open(&p, &f->st), 0);
}

/* A record that passes validation. */
static void make_record(struct settings *s, const char *instance, const char *host, uint32_t port,
                        const char *password)
{
    settings_clear(s);
    snprintf(s->instance, sizeof(s->instance), "%s", instance);
    snprintf(s->hostname, sizeof(s->hostname), "%s", host);
    s->port = port;
    snprintf(s->from_address, sizeof(s->from_address), "noreply@example.com");
    snprintf(s->test_address, sizeof(s->test_address), "ops@example.com");
    if (password != NULL) {
        s->logon_required = true;
        s->allow_plaintext_auth = true; /* no SMTPS in these records */
        snprintf(s->user_id, sizeof(s->user_id), "mailer");
        assert_int_equal(settings_set_password(s, password), 0);
    }
}

static void put_draft(struct store *st, const char *instance, const char *host, uint32_t port,
                      const char *password)
{
    struct settings s;

    settings_init(&s);
    make_record(&s, instance, host, port, password);
    assert_int_equal(store_draft_put(st, &s), 0);
    settings_clear(&s);
}

static uint64_t save_all(struct store *st, const char *comment)
{
    struct store_commit c = {.actor = "local:test", .comment = comment};
    struct settings_problems problems = {0};
    uint64_t rev = 0;

    assert_int_equal(store_save(st, NULL, 0, &c, &problems, &rev), 0);
    assert_int_equal(problems.count, 0);
    return rev;
}

static uint64_t save_one(struct store *st, const char *instance, const char *host, uint32_t port,
                         const char *password)
{
    put_draft(st, instance, host, port, password);
    return save_all(st, NULL);
}

static uint64_t head(struct store *st)
{
    struct store_info info;

    assert_int_equal(store_info(st, &info), 0);
    return info.revision;
}

static bool has_problem(const struct settings_problems *p, const char *field)
{
    for (size_t i = 0; i < p->count; i++)
        if (strcmp(p->items[i].field, field) == 0)
            return true;
    return false;
}

/* Opens the store's LMDB environment directly, as an attacker or a disk
 * error would see it. The store must be closed. */
static void raw_open(const char *dir, const char *db, MDB_env **env, MDB_txn **txn, MDB_dbi *dbi)
{
    assert_int_equal(mdb_env_create(env), 0);
    assert_int_equal(mdb_env_set_maxdbs(*env, 16), 0);
    assert_int_equal(mdb_env_open(*env, dir, 0, 0600), 0);
    assert_int_equal(mdb_txn_begin(*env, NULL, 0, txn), 0);
    assert_int_equal(mdb_dbi_open(*txn, db, 0, dbi), 0);
}

static void raw_commit(MDB_env *env, MDB_txn *txn)
{
    assert_int_equal(mdb_txn_commit(txn), 0);
    mdb_env_close(env);
}

static MDB_val rev_key(uint64_t rev, uint8_t buf[8])
{
    for (int i = 7; i >= 0; i--) {
        buf[i] = (uint8_t)rev;
        rev >>= 8;
    }
    return (MDB_val){.mv_size = 8, .mv_data = buf};
}

/* Rewrites the message under `key` in database `db` through `edit`, behind
 * the store's back (protobuf-c's generic API, so one helper serves every
 * record type). The store must be closed. */
static void raw_edit(const char *dir, const char *db, MDB_val key,
                     const ProtobufCMessageDescriptor *desc,
                     void (*edit)(ProtobufCMessage *m, void *arg), void *arg)
{
    ProtobufCMessage *m;
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;
    MDB_val val;
    uint8_t *buf;

    raw_open(dir, db, &env, &txn, &dbi);
    assert_int_equal(mdb_get(txn, dbi, &key, &val), 0);
    m = protobuf_c_message_unpack(desc, NULL, val.mv_size, val.mv_data);
    assert_non_null(m);
    edit(m, arg);
    val.mv_size = protobuf_c_message_get_packed_size(m);
    buf = malloc(val.mv_size);
    assert_non_null(buf);
    protobuf_c_message_pack(m, buf);
    val.mv_data = buf;
    assert_int_equal(mdb_put(txn, dbi, &key, &val, 0), 0);
    protobuf_c_message_free_unpacked(m, NULL);
    free(buf);
    raw_commit(env, txn);
}

/* An edit of a typed message, carried through raw_edit(). */
struct typed_edit {
    void (*settings)(Smtpsync__Settings *m, void *arg);
    void (*revision)(Smtpsync__Revision *m, void *arg);
    void *arg;
};

static void typed_edit_apply(ProtobufCMessage *m, void *arg)
{
    struct typed_edit *t = arg;

    if (t->settings != NULL)
        t->settings((Smtpsync__Settings *)m, t->arg);
    else
        t->revision((Smtpsync__Revision *)m, t->arg);
}

/* Rewrites the Settings record under `key` in database `db` through `edit`. */
static void raw_edit_record(const char *dir, const char *db, const char *key,
                            void (*edit)(Smtpsync__Settings *m, void *arg), void *arg)
{
    struct typed_edit t = {.settings = edit, .arg = arg};
    MDB_val k = {.mv_size = strlen(key), .mv_data = (void *)(uintptr_t)key};

    raw_edit(dir, db, k, &smtpsync__settings__descriptor, typed_edit_apply, &t);
}

/* Puts raw bytes under `key` in database `db`. The store must be closed. */
static void raw_put(const char *dir, const char *db, MDB_val key, const void *data, size_t len)
{
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;
    MDB_val val = {.mv_size = len, .mv_data = (void *)(uintptr_t)data};

    raw_open(dir, db, &env, &txn, &dbi);
    assert_int_equal(mdb_put(txn, dbi, &key, &val, 0), 0);
    raw_commit(env, txn);
}

/* The meta record, unpacked (free with smtpsync__store_meta__free_unpacked). */
static Smtpsync__StoreMeta *raw_meta(const char *dir)
{
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;
    MDB_val k = {.mv_size = 5, .mv_data = "state"}, val;
    Smtpsync__StoreMeta *m;

    raw_open(dir, "meta", &env, &txn, &dbi);
    assert_int_equal(mdb_get(txn, dbi, &k, &val), 0);
    m = smtpsync__store_meta__unpack(NULL, val.mv_size, val.mv_data);
    mdb_txn_abort(txn);
    mdb_env_close(env);
    assert_non_null(m);
    return m;
}

static int dir_entries(const char *path)
{
    struct dirent *e;
    int n = 0;
    DIR *d = opendir(path);

    assert_non_null(d);
    while ((e = readdir(d)) != NULL)
        n += strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0;
    closedir(d);
    return n;
}

/* ------------------------------------------------------------------------ */

static void test_store_open_creates_and_reopens(void **state)
{
    struct fixture *f = *state;
    static const uint8_t zeros[STORE_HASH_LEN];
    struct store_params p = {0};
    struct store_info info;
    struct store *st;
    struct stat sb;
    char path[4096];

    assert_int_equal(store_info(f->st, &info), 0);
    assert_int_equal(info.revision, 0);
    assert_int_equal(info.epoch, 1);
    assert_int_equal(info.base_revision, 0);
    assert_memory_equal(info.hash, zeros, STORE_HASH_LEN);
    assert_int_equal(info.ndrafts, 0);
    assert_int_equal(info.ninstances, 0);

    snprintf(path, sizeof(path), "%s/node.key", f->dir);
    assert_int_equal(stat(path, &sb), 0);
    assert_int_equal(sb.st_mode & 0777, 0600);

    /* A missing data directory is created, private. */
    snprintf(path, sizeof(path), "%s/sub", f->dir);
    p.dir = path;
    p.create = true;
    assert_int_equal(store_open(&p, &st), 0);
    store_close(st);
    assert_int_equal(stat(path, &sb), 0);
    assert_int_equal(sb.st_mode & 0777, 0700);

    save_one(f->st, "site-a", "mail.example.com", 0, NULL);
    reopen(f);
    assert_int_equal(store_info(f->st, &info), 0);
    assert_int_equal(info.revision, 1);
    assert_int_equal(info.epoch, 1);
    assert_int_equal(info.ninstances, 1);
}

static void test_store_open_refuses_open_key_file(void **state)
{
    struct fixture *f = *state;
    struct store_params p = {0};
    struct store *st = NULL;
    char path[4096];

    snprintf(path, sizeof(path), "%s/node.key", f->dir);
    assert_int_equal(chmod(path, 0644), 0);
    p.dir = f->dir;
    assert_int_equal(store_open(&p, &st), ERROR_KEYFILE);
    assert_null(st);
}

static int count_cb(const struct settings *s, void *arg)
{
    (void)s;
    (*(int *)arg)++;
    return 0;
}

static void test_store_draft_put_get_discard(void **state)
{
    struct fixture *f = *state;
    struct settings s, out;
    struct store_info info;
    int n = 0;

    settings_init(&s);
    settings_init(&out);
    make_record(&s, "site-a", "mail.example.com", 587, SECRET_TEXT);
    s.tls_mode = SETTINGS_TLS_STARTTLS;
    assert_int_equal(store_draft_put(f->st, &s), 0);

    assert_int_equal(store_draft_get(f->st, "site-a", STORE_UNSEAL, &out), 0);
    for (int i = 0; i < SETTINGS_F_COUNT; i++)
        assert_false(settings_field_differs(&s, &out, (enum settings_field)i));
    assert_non_null(out.password);
    assert_string_equal(out.password, SECRET_TEXT);

    /* Without STORE_UNSEAL the password is known to be set, not loaded. */
    assert_int_equal(store_draft_get(f->st, "site-a", 0, &out), 0);
    assert_true(out.password_set);
    assert_null(out.password);
    assert_memory_equal(out.password_id, s.password_id, SETTINGS_SECRET_ID_LEN);

    /* A set password must be loaded to be sealed. */
    assert_int_equal(store_draft_put(f->st, &out), ERROR_INVALID);

    assert_int_equal(store_get(f->st, "site-a", 0, 0, &out), ERROR_NOT_FOUND);
    assert_int_equal(store_draft_get(f->st, "site-b", 0, &out), ERROR_NOT_FOUND);
    put_draft(f->st, "site-b", "mail.example.com", 0, NULL);
    assert_int_equal(store_info(f->st, &info), 0);
    assert_int_equal(info.ndrafts, 2);
    assert_int_equal(store_draft_each(f->st, STORE_UNSEAL, count_cb, &n), 0);
    assert_int_equal(n, 2);

    assert_int_equal(store_draft_discard(f->st, "site-a"), 0);
    assert_int_equal(store_draft_discard(f->st, "site-a"), ERROR_NOT_FOUND);
    assert_int_equal(store_draft_get(f->st, "site-a", 0, &out), ERROR_NOT_FOUND);
    assert_int_equal(store_draft_discard(f->st, NULL), 0);
    assert_int_equal(store_draft_discard(f->st, NULL), ERROR_NOT_FOUND);
    assert_int_equal(store_info(f->st, &info), 0);
    assert_int_equal(info.ndrafts, 0);

    settings_clear(&s);
    settings_clear(&out);
}

struct history_rows {
    int n;
    uint64_t revision[32];
    uint64_t rollback_of[32];
    char actor[32][STORE_ACTOR_MAX + 1];
    char comment[32][64];
    int64_t time_ms[32];
    size_t nchanges[32];
    char first_instance[32][SETTINGS_INSTANCE_MAX + 1];
    bool first_deleted[32];
    uint8_t hash[32][STORE_HASH_LEN];
};

static int history_cb(const struct store_revision *r, void *arg)
{
    struct history_rows *h = arg;
    int i = h->n++;

    assert_true(i < 32);
    h->revision[i] = r->revision;
    h->rollback_of[i] = r->rollback_of;
    snprintf(h->actor[i], sizeof(h->actor[i]), "%s", r->actor);
    snprintf(h->comment[i], sizeof(h->comment[i]), "%s", r->comment);
    h->time_ms[i] = r->time_ms;
    h->nchanges[i] = r->nchanges;
    h->first_instance[i][0] = '\0';
    if (r->nchanges > 0) {
        snprintf(h->first_instance[i], sizeof(h->first_instance[i]), "%s", r->instances[0]);
        h->first_deleted[i] = r->deleted[0];
    }
    memcpy(h->hash[i], r->hash, STORE_HASH_LEN);
    return 0;
}

static void test_store_save_creates_revision(void **state)
{
    struct fixture *f = *state;
    static const uint8_t zeros[STORE_HASH_LEN];
    struct store_commit c = {.actor = "alice", .comment = "first", .time_ms = 1700000000123};
    struct history_rows *h = calloc(1, sizeof(*h));
    struct settings_problems problems = {0};
    struct store_info info;
    struct settings out;
    uint64_t rev = 0;

    assert_non_null(h);
    settings_init(&out);
    put_draft(f->st, "site-a", "mail.example.com", 25, SECRET_TEXT);
    assert_int_equal(store_save(f->st, NULL, 0, &c, &problems, &rev), 0);
    assert_int_equal(rev, 1);

    assert_int_equal(store_info(f->st, &info), 0);
    assert_int_equal(info.revision, 1);
    assert_int_equal(info.revision_time_ms, 1700000000123);
    assert_int_equal(info.ndrafts, 0);
    assert_int_equal(info.ninstances, 1);
    assert_memory_not_equal(info.hash, zeros, STORE_HASH_LEN);

    assert_int_equal(store_draft_get(f->st, "site-a", 0, &out), ERROR_NOT_FOUND);
    assert_int_equal(store_get(f->st, "site-a", 0, STORE_UNSEAL, &out), 0);
    assert_string_equal(out.hostname, "mail.example.com");
    assert_int_equal(out.port, 25);
    assert_string_equal(out.password, SECRET_TEXT);

    assert_int_equal(store_history(f->st, 0, history_cb, h), 0);
    assert_int_equal(h->n, 1);
    assert_int_equal(h->revision[0], 1);
    assert_string_equal(h->actor[0], "alice");
    assert_string_equal(h->comment[0], "first");
    assert_int_equal(h->time_ms[0], 1700000000123);
    assert_int_equal(h->nchanges[0], 1);
    assert_string_equal(h->first_instance[0], "site-a");
    assert_false(h->first_deleted[0]);
    assert_memory_equal(h->hash[0], info.hash, STORE_HASH_LEN);
    assert_int_equal(store_verify(f->st), 0);

    settings_clear(&out);
    free(h);
}

static void test_store_save_requires_actor(void **state)
{
    struct fixture *f = *state;
    struct store_commit c = {.actor = NULL};
    char longer[STORE_ACTOR_MAX + 2];

    put_draft(f->st, "site-a", "mail.example.com", 25, NULL);
    assert_int_equal(store_save(f->st, NULL, 0, &c, NULL, NULL), ERROR_INVALID);
    c.actor = "";
    assert_int_equal(store_save(f->st, NULL, 0, &c, NULL, NULL), ERROR_INVALID);
    memset(longer, 'a', sizeof(longer) - 1);
    longer[sizeof(longer) - 1] = '\0';
    c.actor = longer;
    assert_int_equal(store_save(f->st, NULL, 0, &c, NULL, NULL), ERROR_TOO_BIG);
    assert_int_equal(head(f->st), 0);
}

static void test_store_save_invalid_writes_nothing(void **state)
{
    struct fixture *f = *state;
    struct store_commit c = {.actor = "local:test"};
    struct settings_problems problems = {0};
    struct store_info before, after;
    struct settings s, out;
    uint64_t rev = 99;

    settings_init(&s);
    settings_init(&out);
    save_one(f->st, "site-a", "mail.example.com", 25, NULL);
    assert_int_equal(store_info(f->st, &before), 0);

    /* One good draft and one with two problems: neither is saved. */
    put_draft(f->st, "site-a", "other.example.com", 25, NULL);
    make_record(&s, "site-b", "bad host name!", 0, NULL);
    s.from_address[0] = '\0';
    assert_int_equal(store_draft_put(f->st, &s), 0);

    assert_int_equal(store_save(f->st, NULL, 0, &c, &problems, &rev), ERROR_INVALID);
    assert_int_equal(rev, 99);
    assert_true(has_problem(&problems, "site-b.hostname"));
    assert_true(has_problem(&problems, "site-b.from_address"));
    for (size_t i = 0; i < problems.count; i++)
        assert_int_equal(strncmp(problems.items[i].field, "site-b.", 7), 0);

    assert_int_equal(store_info(f->st, &after), 0);
    assert_int_equal(after.revision, before.revision);
    assert_memory_equal(after.hash, before.hash, STORE_HASH_LEN);
    assert_int_equal(after.ndrafts, 2);
    assert_int_equal(store_get(f->st, "site-a", 0, 0, &out), 0);
    assert_string_equal(out.hostname, "mail.example.com");
    assert_int_equal(store_draft_get(f->st, "site-b", 0, &out), 0);

    /* A draft whose password breaks the password rules is refused too. */
    assert_int_equal(store_draft_discard(f->st, "site-b"), 0);
    make_record(&s, "site-a", "mail.example.com", 25, "two\nlines");
    assert_int_equal(store_draft_put(f->st, &s), 0);
    memset(&problems, 0, sizeof(problems));
    assert_int_equal(store_save(f->st, NULL, 0, &c, &problems, NULL), ERROR_INVALID);
    assert_true(has_problem(&problems, "site-a.password"));

    settings_clear(&s);
    settings_clear(&out);
}

static void test_store_save_empty(void **state)
{
    struct fixture *f = *state;
    struct store_commit c = {.actor = "local:test"};
    const char *names[] = {"site-x"};
    struct store_info info;

    assert_int_equal(store_save(f->st, NULL, 0, &c, NULL, NULL), ERROR_EMPTY);
    assert_int_equal(store_save(f->st, names, 1, &c, NULL, NULL), ERROR_NOT_FOUND);

    /* A draft equal to the current record saves nothing and stays. */
    save_one(f->st, "site-a", "mail.example.com", 25, NULL);
    put_draft(f->st, "site-a", "mail.example.com", 25, NULL);
    assert_int_equal(store_save(f->st, NULL, 0, &c, NULL, NULL), ERROR_EMPTY);
    assert_int_equal(store_info(f->st, &info), 0);
    assert_int_equal(info.revision, 1);
    assert_int_equal(info.ndrafts, 1);
}

static void test_store_save_several_instances(void **state)
{
    struct fixture *f = *state;
    struct store_commit c = {.actor = "local:test"};
    struct history_rows *h = calloc(1, sizeof(*h));
    const char *names[] = {"site-c", "site-c"};
    struct store_info info;
    uint64_t rev;
    int n = 0;

    assert_non_null(h);
    put_draft(f->st, "site-a", "a.example.com", 25, SECRET_TEXT);
    put_draft(f->st, "site-b", "b.example.com", 25, NULL);
    assert_int_equal(save_all(f->st, "two"), 1);
    assert_int_equal(store_history(f->st, 0, history_cb, h), 0);
    assert_int_equal(h->n, 1);
    assert_int_equal(h->nchanges[0], 2);

    /* Only the named draft is saved; the other stays a draft. */
    put_draft(f->st, "site-c", "c.example.com", 25, NULL);
    put_draft(f->st, "site-d", "d.example.com", 25, NULL);
    assert_int_equal(store_save(f->st, names, 2, &c, NULL, &rev), 0);
    assert_int_equal(rev, 2);
    assert_int_equal(store_info(f->st, &info), 0);
    assert_int_equal(info.ninstances, 3);
    assert_int_equal(info.ndrafts, 1);
    assert_int_equal(store_each(f->st, 0, STORE_UNSEAL, count_cb, &n), 0);
    assert_int_equal(n, 3);
    free(h);
}

struct each_names {
    int n;
    char names[8][SETTINGS_INSTANCE_MAX + 1];
    char hosts[8][SETTINGS_HOSTNAME_MAX + 1];
};

static int names_cb(const struct settings *s, void *arg)
{
    struct each_names *e = arg;

    assert_true(e->n < 8);
    snprintf(e->names[e->n], sizeof(e->names[0]), "%s", s->instance);
    snprintf(e->hosts[e->n], sizeof(e->hosts[0]), "%s", s->hostname);
    e->n++;
    return 0;
}

static int stop_cb(const struct settings *s, void *arg)
{
    (void)s;
    (*(int *)arg)++;
    return 42;
}

static void test_store_get_older_revision(void **state)
{
    struct fixture *f = *state;
    struct each_names e = {0};
    struct settings out;
    int calls = 0;

    settings_init(&out);
    save_one(f->st, "site-b", "one.example.com", 25, NULL);
    save_one(f->st, "site-b", "two.example.com", 25, NULL);
    save_one(f->st, "site-a", "a.example.com", 25, NULL);

    assert_int_equal(store_get(f->st, "site-b", 1, 0, &out), 0);
    assert_string_equal(out.hostname, "one.example.com");
    assert_int_equal(store_get(f->st, "site-b", 2, 0, &out), 0);
    assert_string_equal(out.hostname, "two.example.com");
    assert_int_equal(store_get(f->st, "site-b", 0, 0, &out), 0);
    assert_string_equal(out.hostname, "two.example.com");
    assert_int_equal(store_get(f->st, "site-a", 2, 0, &out), ERROR_NOT_FOUND);
    assert_int_equal(store_get(f->st, "site-a", 4, 0, &out), ERROR_INVALID);

    assert_int_equal(store_each(f->st, 2, 0, names_cb, &e), 0);
    assert_int_equal(e.n, 1);
    assert_string_equal(e.names[0], "site-b");
    memset(&e, 0, sizeof(e));
    assert_int_equal(store_each(f->st, 0, 0, names_cb, &e), 0);
    assert_int_equal(e.n, 2);
    assert_string_equal(e.names[0], "site-a");
    assert_string_equal(e.names[1], "site-b");
    assert_int_equal(store_each(f->st, 0, 0, stop_cb, &calls), 42);
    assert_int_equal(calls, 1);
    settings_clear(&out);
}

static void test_store_history_order_and_limit(void **state)
{
    struct fixture *f = *state;
    struct history_rows *h = calloc(1, sizeof(*h));
    char comment[32];

    assert_non_null(h);
    for (int i = 1; i <= 5; i++) {
        char host[64];
        snprintf(host, sizeof(host), "h%d.example.com", i);
        snprintf(comment, sizeof(comment), "change %d", i);
        put_draft(f->st, "site-a", host, 25, NULL);
        save_all(f->st, comment);
    }
    assert_int_equal(store_history(f->st, 0, history_cb, h), 0);
    assert_int_equal(h->n, 5);
    for (int i = 0; i < 5; i++) {
        assert_int_equal(h->revision[i], 5 - i);
        snprintf(comment, sizeof(comment), "change %d", 5 - i);
        assert_string_equal(h->comment[i], comment);
        assert_string_equal(h->actor[i], "local:test");
        assert_true(h->time_ms[i] > 0);
    }
    memset(h, 0, sizeof(*h));
    assert_int_equal(store_history(f->st, 2, history_cb, h), 0);
    assert_int_equal(h->n, 2);
    assert_int_equal(h->revision[0], 5);
    assert_int_equal(h->revision[1], 4);
    free(h);
}

struct diffs {
    int n;
    char instance[64][SETTINGS_INSTANCE_MAX + 1];
    char field[64][32];
    char old_value[64][300];
    char new_value[64][300];
};

static int diff_cb(const struct store_diff *d, void *arg)
{
    struct diffs *x = arg;
    int i = x->n++;

    assert_true(i < 64);
    assert_null(strstr(d->old_value, SECRET_TEXT));
    assert_null(strstr(d->new_value, SECRET_TEXT));
    snprintf(x->instance[i], sizeof(x->instance[i]), "%s", d->instance);
    snprintf(x->field[i], sizeof(x->field[i]), "%s", d->field);
    snprintf(x->old_value[i], sizeof(x->old_value[i]), "%s", d->old_value);
    snprintf(x->new_value[i], sizeof(x->new_value[i]), "%s", d->new_value);
    return 0;
}

static void test_store_diff_field_by_field(void **state)
{
    struct fixture *f = *state;
    struct diffs *d = calloc(1, sizeof(*d));

    assert_non_null(d);
    save_one(f->st, "site-a", "one.example.com", 25, SECRET_TEXT);
    save_one(f->st, "site-a", "two.example.com", 2525, SECRET_TEXT);

    assert_int_equal(store_diff(f->st, 1, 2, diff_cb, d), 0);
    /* The password was set anew (new id) in the second draft too. */
    assert_int_equal(d->n, 3);
    assert_string_equal(d->field[0], "hostname");
    assert_string_equal(d->old_value[0], "one.example.com");
    assert_string_equal(d->new_value[0], "two.example.com");
    assert_string_equal(d->field[1], "port");
    assert_string_equal(d->old_value[1], "25");
    assert_string_equal(d->new_value[1], "2525");
    assert_string_equal(d->field[2], "password");
    assert_string_equal(d->old_value[2], SETTINGS_PASSWORD_MASK);
    assert_string_equal(d->new_value[2], SETTINGS_PASSWORD_MASK);

    /* Only hostname and port: the password is carried over unchanged. */
    {
        struct settings s;
        settings_init(&s);
        assert_int_equal(store_get(f->st, "site-a", 0, STORE_UNSEAL, &s), 0);
        snprintf(s.hostname, sizeof(s.hostname), "three.example.com");
        s.port = 587;
        assert_int_equal(store_draft_put(f->st, &s), 0);
        settings_clear(&s);
        save_all(f->st, NULL);
    }
    memset(d, 0, sizeof(*d));
    assert_int_equal(store_diff(f->st, 2, 3, diff_cb, d), 0);
    assert_int_equal(d->n, 2);
    assert_string_equal(d->field[0], "hostname");
    assert_string_equal(d->field[1], "port");
    assert_string_equal(d->instance[0], "site-a");

    /* A new instance lists its set fields against "". */
    save_one(f->st, "site-b", "b.example.com", 25, NULL);
    memset(d, 0, sizeof(*d));
    assert_int_equal(store_diff(f->st, 3, 4, diff_cb, d), 0);
    assert_true(d->n >= 3);
    for (int i = 0; i < d->n; i++) {
        assert_string_equal(d->instance[i], "site-b");
        assert_string_equal(d->old_value[i], "");
    }
    assert_string_equal(d->field[0], "instance");
    assert_string_equal(d->new_value[0], "site-b");

    memset(d, 0, sizeof(*d));
    assert_int_equal(store_diff(f->st, 4, 4, diff_cb, d), 0);
    assert_int_equal(d->n, 0);
    assert_int_equal(store_diff(f->st, 1, 9, diff_cb, d), ERROR_INVALID);
    free(d);
}

static void test_store_rollback_restores_old_values(void **state)
{
    struct fixture *f = *state;
    struct store_commit c = {.actor = "bob", .comment = "undo"};
    struct history_rows *h = calloc(1, sizeof(*h));
    struct settings out;
    uint64_t rev = 0;

    assert_non_null(h);
    settings_init(&out);
    save_one(f->st, "site-a", "one.example.com", 25, "first-password");
    save_one(f->st, "site-a", "two.example.com", 465, "second-password");

    assert_int_equal(store_rollback(f->st, 1, &c, &rev), 0);
    assert_int_equal(rev, 3);
    assert_int_equal(store_get(f->st, "site-a", 0, STORE_UNSEAL, &out), 0);
    assert_string_equal(out.hostname, "one.example.com");
    assert_int_equal(out.port, 25);
    assert_string_equal(out.password, "first-password");

    assert_int_equal(store_history(f->st, 1, history_cb, h), 0);
    assert_int_equal(h->revision[0], 3);
    assert_int_equal(h->rollback_of[0], 1);
    assert_string_equal(h->actor[0], "bob");
    assert_string_equal(h->comment[0], "undo");

    assert_int_equal(store_rollback(f->st, 3, &c, NULL), ERROR_EMPTY);
    assert_int_equal(store_rollback(f->st, 1, &c, NULL), ERROR_EMPTY);
    assert_int_equal(store_rollback(f->st, 0, &c, NULL), ERROR_INVALID);
    assert_int_equal(store_rollback(f->st, 99, &c, NULL), ERROR_INVALID);
    assert_int_equal(head(f->st), 3);

    /* And forward again to revision 2. */
    assert_int_equal(store_rollback(f->st, 2, &c, &rev), 0);
    assert_int_equal(store_get(f->st, "site-a", 0, STORE_UNSEAL, &out), 0);
    assert_string_equal(out.password, "second-password");
    assert_int_equal(store_verify(f->st), 0);
    settings_clear(&out);
    free(h);
}

static void test_store_rollback_deletes_later_instance(void **state)
{
    struct fixture *f = *state;
    struct store_commit c = {.actor = "bob"};
    struct history_rows *h = calloc(1, sizeof(*h));
    struct store_info info;
    struct settings out;

    assert_non_null(h);
    settings_init(&out);
    save_one(f->st, "site-a", "a.example.com", 25, NULL);
    save_one(f->st, "site-b", "b.example.com", 25, NULL);
    assert_int_equal(store_rollback(f->st, 1, &c, NULL), 0);

    assert_int_equal(store_get(f->st, "site-b", 0, 0, &out), ERROR_NOT_FOUND);
    assert_int_equal(store_get(f->st, "site-b", 2, 0, &out), 0);
    assert_int_equal(store_get(f->st, "site-a", 0, 0, &out), 0);
    assert_int_equal(store_info(f->st, &info), 0);
    assert_int_equal(info.ninstances, 1);
    assert_int_equal(store_history(f->st, 1, history_cb, h), 0);
    assert_int_equal(h->nchanges[0], 1);
    assert_string_equal(h->first_instance[0], "site-b");
    assert_true(h->first_deleted[0]);
    assert_int_equal(store_verify(f->st), 0);
    settings_clear(&out);
    free(h);
}

/* Recomputes h(1) from the raw history row, independently of the store:
 * SHA-256(32 zero bytes || Revision packed without hash and sealed blobs). */
static void test_store_chain_hash_recomputed(void **state)
{
    struct fixture *f = *state;
    uint8_t zeros[STORE_HASH_LEN] = {0}, h[EVP_MAX_MD_SIZE], kb[8], *buf;
    struct store_info info;
    Smtpsync__Revision *r;
    ProtobufCBinaryData saved;
    unsigned int hlen = 0;
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;
    MDB_val key, val;
    EVP_MD_CTX *ctx;
    size_t len;

    save_one(f->st, "site-a", "a.example.com", 25, SECRET_TEXT);
    assert_int_equal(store_info(f->st, &info), 0);
    store_close(f->st);
    f->st = NULL;

    raw_open(f->dir, "history", &env, &txn, &dbi);
    key = rev_key(1, kb);
    assert_int_equal(mdb_get(txn, dbi, &key, &val), 0);
    r = smtpsync__revision__unpack(NULL, val.mv_size, val.mv_data);
    mdb_txn_abort(txn);
    mdb_env_close(env);
    assert_non_null(r);
    assert_int_equal(r->n_changes, 1);
    assert_non_null(r->changes[0]->settings->password);
    /* The stored row keeps the sealed blob (for rollback), never plaintext. */
    assert_true(r->changes[0]->settings->password->sealed.len > 0);
    assert_int_equal(r->changes[0]->settings->password->plaintext.len, 0);
    assert_memory_equal(r->hash.data, info.hash, STORE_HASH_LEN);

    saved = r->changes[0]->settings->password->sealed;
    r->changes[0]->settings->password->sealed = (ProtobufCBinaryData){0};
    free(r->hash.data);
    r->hash = (ProtobufCBinaryData){0};
    len = smtpsync__revision__get_packed_size(r);
    buf = malloc(len);
    assert_non_null(buf);
    smtpsync__revision__pack(r, buf);
    r->changes[0]->settings->password->sealed = saved;
    smtpsync__revision__free_unpacked(r, NULL);

    ctx = EVP_MD_CTX_new();
    assert_non_null(ctx);
    assert_int_equal(EVP_DigestInit_ex(ctx, EVP_sha256(), NULL), 1);
    assert_int_equal(EVP_DigestUpdate(ctx, zeros, sizeof(zeros)), 1);
    assert_int_equal(EVP_DigestUpdate(ctx, buf, len), 1);
    assert_int_equal(EVP_DigestFinal_ex(ctx, h, &hlen), 1);
    EVP_MD_CTX_free(ctx);
    free(buf);
    assert_int_equal(hlen, STORE_HASH_LEN);
    assert_memory_equal(h, info.hash, STORE_HASH_LEN);
    reopen(f);
}

/* Rewrites history row `rev` through `edit`. */
static void raw_edit_history(const char *dir, uint64_t rev,
                             void (*edit)(Smtpsync__Revision *m, void *arg), void *arg)
{
    struct typed_edit t = {.revision = edit, .arg = arg};
    uint8_t kb[8];

    raw_edit(dir, "history", rev_key(rev, kb), &smtpsync__revision__descriptor, typed_edit_apply,
             &t);
}

static void set_comment(Smtpsync__Revision *r, void *arg)
{
    /* An absent string is protobuf-c's shared empty string, not ours. */
    if (r->comment != protobuf_c_empty_string)
        free(r->comment);
    r->comment = strdup(arg);
    assert_non_null(r->comment);
}

/* Rewrites history row `rev` with another comment, as a tamperer would. */
static void tamper_history_comment(const char *dir, uint64_t rev)
{
    raw_edit_history(dir, rev, set_comment, "nothing to see here");
}

static void test_store_verify_detects_tampered_history(void **state)
{
    struct fixture *f = *state;

    save_one(f->st, "site-a", "a.example.com", 25, SECRET_TEXT);
    save_one(f->st, "site-a", "b.example.com", 25, SECRET_TEXT);
    save_one(f->st, "site-b", "c.example.com", 25, NULL);
    assert_int_equal(store_verify(f->st), 0);
    store_close(f->st);
    f->st = NULL;
    tamper_history_comment(f->dir, 2);
    reopen(f);
    assert_int_equal(store_verify(f->st), ERROR_CORRUPT);
}

static void rename_host(Smtpsync__Settings *m, void *arg)
{
    if (m->hostname != protobuf_c_empty_string)
        free(m->hostname);
    m->hostname = strdup(arg);
    assert_non_null(m->hostname);
}

static void test_store_verify_detects_changed_record(void **state)
{
    struct fixture *f = *state;

    save_one(f->st, "site-a", "a.example.com", 25, NULL);
    store_close(f->st);
    f->st = NULL;

    /* A current record edited behind the store's back. */
    raw_edit_record(f->dir, "settings", "site-a", rename_host, "evil.example.com");

    reopen(f);
    assert_int_equal(store_verify(f->st), ERROR_CORRUPT);
}

static void test_store_compaction(void **state)
{
    struct fixture *f = *state;
    struct store_commit c = {.actor = "bob"};
    struct history_rows *h = calloc(1, sizeof(*h));
    struct store_info before, after;
    struct settings out;
    uint64_t removed = 0, rev;
    struct diffs *d = calloc(1, sizeof(*d));
    char host[64];

    assert_non_null(h);
    assert_non_null(d);
    settings_init(&out);
    for (int i = 1; i <= 20; i++) {
        snprintf(host, sizeof(host), "h%d.example.com", i);
        save_one(f->st, i % 2 ? "site-a" : "site-b", host, 25, i % 3 ? NULL : SECRET_TEXT);
    }
    assert_int_equal(store_info(f->st, &before), 0);
    assert_int_equal(store_compact(f->st, 0, &removed), ERROR_INVALID);
    assert_int_equal(store_compact(f->st, 5, &removed), 0);
    assert_int_equal(removed, 15);

    assert_int_equal(store_info(f->st, &after), 0);
    assert_int_equal(after.base_revision, 15);
    assert_int_equal(after.revision, 20);
    assert_memory_equal(after.hash, before.hash, STORE_HASH_LEN);
    assert_int_equal(store_verify(f->st), 0);

    assert_int_equal(store_get(f->st, "site-a", 10, 0, &out), ERROR_COMPACTED);
    assert_int_equal(store_diff(f->st, 10, 20, diff_cb, d), ERROR_COMPACTED);
    assert_int_equal(store_rollback(f->st, 14, &c, NULL), ERROR_COMPACTED);
    assert_int_equal(store_get(f->st, "site-a", 15, 0, &out), 0);
    assert_string_equal(out.hostname, "h15.example.com");
    assert_int_equal(store_get(f->st, "site-b", 16, 0, &out), 0);
    assert_string_equal(out.hostname, "h16.example.com");
    assert_int_equal(store_history(f->st, 0, history_cb, h), 0);
    assert_int_equal(h->n, 5);
    assert_int_equal(h->revision[4], 16);

    assert_int_equal(store_rollback(f->st, 16, &c, &rev), 0);
    assert_int_equal(rev, 21);
    assert_int_equal(store_get(f->st, "site-a", 0, 0, &out), 0);
    assert_string_equal(out.hostname, "h15.example.com");
    assert_int_equal(store_get(f->st, "site-b", 0, 0, &out), 0);
    assert_string_equal(out.hostname, "h16.example.com");
    assert_int_equal(store_verify(f->st), 0);

    /* Nothing to fold: keep covers all rows. */
    assert_int_equal(store_compact(f->st, 100, &removed), 0);
    assert_int_equal(removed, 0);
    /* Fold everything but the head, twice: revision 21 (the rollback, with
     * its sealed password) then lives only in the snapshot. */
    assert_int_equal(store_compact(f->st, 1, &removed), 0);
    assert_int_equal(removed, 5);
    assert_int_equal(store_get(f->st, "site-a", 20, 0, &out), 0);
    assert_string_equal(out.hostname, "h19.example.com");
    save_one(f->st, "site-b", "h22.example.com", 25, NULL);
    assert_int_equal(store_compact(f->st, 1, &removed), 0);
    assert_int_equal(removed, 1);
    reopen(f);
    assert_int_equal(store_verify(f->st), 0);
    assert_int_equal(store_get(f->st, "site-a", 21, STORE_UNSEAL, &out), 0);
    assert_string_equal(out.hostname, "h15.example.com");
    assert_string_equal(out.password, SECRET_TEXT);
    assert_int_equal(store_get(f->st, "site-b", 21, 0, &out), 0);
    assert_string_equal(out.hostname, "h16.example.com");
    assert_int_equal(store_get(f->st, "site-b", 20, 0, &out), ERROR_COMPACTED);
    settings_clear(&out);
    free(h);
    free(d);
}

/* A ~100 KiB certificate bundle: the test chain, many times over. */
static char *big_bundle(size_t *len)
{
    size_t one_len, n = 0;
    char *one = testutil_read_file(testutil_cert_path("chain.pem"), &one_len);
    size_t copies = 100 * 1024 / one_len;
    char *big = malloc(copies * one_len + 1);

    assert_non_null(big);
    for (size_t i = 0; i < copies; i++) {
        memcpy(big + n, one, one_len);
        n += one_len;
    }
    big[n] = '\0';
    free(one);
    *len = n;
    return big;
}

static void test_store_map_grows(void **state)
{
    struct fixture *f = *state;
    struct store_params p = {0};
    struct settings_problems problems = {0};
    struct store_info info;
    struct settings s, out;
    struct store *st;
    struct stat sb;
    char dir[4096], path[4200];
    size_t len;
    char *pem = big_bundle(&len);

    settings_init(&s);
    settings_init(&out);
    snprintf(dir, sizeof(dir), "%s/tiny", f->dir);
    p.dir = dir;
    p.map_size = 64 * 1024;
    p.create = true;
    assert_int_equal(store_open(&p, &st), 0);
    for (int i = 0; i < 12; i++) {
        char id[32];
        snprintf(id, sizeof(id), "site-%02d", i);
        make_record(&s, id, "mail.test", 465, SECRET_TEXT);
        s.smtps_enabled = true;
        s.tls_mode = SETTINGS_TLS_STRICT;
        assert_int_equal(settings_set_certificate(&s, pem, len, &problems), 0);
        assert_int_equal(store_draft_put(st, &s), 0);
        save_all(st, NULL);
    }
    assert_int_equal(store_info(st, &info), 0);
    assert_int_equal(info.revision, 12);
    assert_int_equal(store_verify(st), 0);
    store_close(st);
    /* Twelve records of 100 KiB and their history: far past 64 KiB. */
    snprintf(path, sizeof(path), "%s/data.mdb", dir);
    assert_int_equal(stat(path, &sb), 0);
    assert_true(sb.st_size > 2 * 1024 * 1024);

    /* Another open with the tiny map adopts the grown one. */
    p.create = false;
    assert_int_equal(store_open(&p, &st), 0);
    assert_int_equal(store_get(st, "site-07", 0, STORE_UNSEAL, &out), 0);
    assert_string_equal(out.trust_certificate, pem);
    assert_int_equal(store_compact(st, 2, NULL), 0);
    assert_int_equal(store_verify(st), 0);
    store_close(st);
    settings_clear(&s);
    settings_clear(&out);
    free(pem);
}

static void flip_sealed_bit(Smtpsync__Settings *m, void *arg)
{
    (void)arg;
    assert_non_null(m->password);
    m->password->sealed.data[m->password->sealed.len - 1] ^= 0x01;
}

static void test_store_tampered_secret_refused(void **state)
{
    struct fixture *f = *state;
    struct settings out;

    settings_init(&out);
    save_one(f->st, "site-a", "a.example.com", 25, SECRET_TEXT);
    save_one(f->st, "site-b", "b.example.com", 25, NULL);
    store_close(f->st);
    f->st = NULL;

    raw_edit_record(f->dir, "settings", "site-a", flip_sealed_bit, NULL);

    reopen(f);
    assert_int_equal(store_get(f->st, "site-a", 0, STORE_UNSEAL, &out), ERROR_TAMPERED);
    assert_null(out.password);
    assert_int_equal(store_get(f->st, "site-a", 0, 0, &out), 0);
    assert_true(out.password_set);
    /* The sealed copy in history is intact: the old revision still opens. */
    assert_int_equal(store_get(f->st, "site-a", 1, STORE_UNSEAL, &out), 0);
    assert_string_equal(out.password, SECRET_TEXT);
    settings_clear(&out);
}

static void test_store_secret_bound_to_instance(void **state)
{
    struct fixture *f = *state;
    struct settings out;
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;
    MDB_val ka = {.mv_size = 6, .mv_data = "site-a"}, kb = {.mv_size = 6, .mv_data = "site-b"};
    MDB_val va, vb;
    Smtpsync__Settings *a, *b;
    ProtobufCBinaryData saved;
    uint8_t *buf;

    settings_init(&out);
    put_draft(f->st, "site-a", "a.example.com", 25, "password-of-a");
    put_draft(f->st, "site-b", "b.example.com", 25, "password-of-b");
    store_close(f->st);
    f->st = NULL;

    /* Move a's sealed blob into b's draft. */
    raw_open(f->dir, "drafts", &env, &txn, &dbi);
    assert_int_equal(mdb_get(txn, dbi, &ka, &va), 0);
    a = smtpsync__settings__unpack(NULL, va.mv_size, va.mv_data);
    assert_int_equal(mdb_get(txn, dbi, &kb, &vb), 0);
    b = smtpsync__settings__unpack(NULL, vb.mv_size, vb.mv_data);
    assert_non_null(a);
    assert_non_null(b);
    saved = b->password->sealed;
    b->password->sealed = a->password->sealed;
    vb.mv_size = smtpsync__settings__get_packed_size(b);
    buf = malloc(vb.mv_size);
    assert_non_null(buf);
    smtpsync__settings__pack(b, buf);
    vb.mv_data = buf;
    assert_int_equal(mdb_put(txn, dbi, &kb, &vb, 0), 0);
    b->password->sealed = saved;
    smtpsync__settings__free_unpacked(a, NULL);
    smtpsync__settings__free_unpacked(b, NULL);
    free(buf);
    raw_commit(env, txn);

    reopen(f);
    assert_int_equal(store_draft_get(f->st, "site-b", STORE_UNSEAL, &out), ERROR_TAMPERED);
    /* Nor can it be saved: a problem says which instance's password. */
    {
        struct store_commit c = {.actor = "x"};
        struct settings_problems problems = {0};
        const char *names[] = {"site-b"};
        assert_int_equal(store_save(f->st, names, 1, &c, &problems, NULL), ERROR_INVALID);
        assert_true(has_problem(&problems, "site-b.password"));
        assert_int_equal(head(f->st), 0);
    }
    settings_clear(&out);
}

static void test_store_no_plaintext_on_disk(void **state)
{
    struct fixture *f = *state;
    struct store_commit c = {.actor = "bob"};
    char path[4096];
    size_t len;
    char *data;

    save_one(f->st, "site-a", "a.example.com", 25, SECRET_TEXT);
    save_one(f->st, "site-a", "b.example.com", 25, "another-one");
    assert_int_equal(store_rollback(f->st, 1, &c, NULL), 0);
    put_draft(f->st, "site-b", "b.example.com", 25, SECRET_TEXT);
    assert_int_equal(store_compact(f->st, 1, NULL), 0);
    store_close(f->st);
    f->st = NULL;

    snprintf(path, sizeof(path), "%s/data.mdb", f->dir);
    data = testutil_read_file(path, &len);
    assert_true(len > 0);
    assert_false(testutil_memmem(data, len, SECRET_TEXT, strlen(SECRET_TEXT)));
    assert_false(testutil_memmem(data, len, "another-one", strlen("another-one")));
    /* The ids are there, so the scan does look at the records. */
    assert_true(testutil_memmem(data, len, "a.example.com", strlen("a.example.com")));
    free(data);
    snprintf(path, sizeof(path), "%s/lock.mdb", f->dir);
    data = testutil_read_file(path, &len);
    assert_false(testutil_memmem(data, len, SECRET_TEXT, strlen(SECRET_TEXT)));
    free(data);
    reopen(f);
}

/* ------------------------------------------------------------------------ */
/* Key file rules (store.h, store_open). */

static void test_store_open_missing_store_without_create(void **state)
{
    struct fixture *f = *state;
    struct store_params p = {0};
    struct store *st = NULL;
    struct stat sb;
    char path[4096];

    /* A missing directory is not made. */
    snprintf(path, sizeof(path), "%s/absent", f->dir);
    p.dir = path;
    assert_int_equal(store_open(&p, &st), ERROR_NOT_FOUND);
    assert_null(st);
    assert_int_not_equal(stat(path, &sb), 0);

    /* An empty directory stays empty: no key, no data file. */
    snprintf(path, sizeof(path), "%s/empty", f->dir);
    assert_int_equal(mkdir(path, 0700), 0);
    assert_int_equal(store_open(&p, &st), ERROR_NOT_FOUND);
    assert_int_equal(dir_entries(path), 0);

    /* With create, the same directory becomes a store. */
    p.create = true;
    assert_int_equal(store_open(&p, &st), 0);
    store_close(st);
    p.create = false;
    assert_int_equal(store_open(&p, &st), 0);
    store_close(st);
}

static void test_store_open_never_creates_key_of_existing_store(void **state)
{
    struct fixture *f = *state;
    struct store_params p = {.dir = f->dir};
    struct store *st = NULL;
    struct stat sb;
    char path[4096], other[4200];

    save_one(f->st, "site-a", "a.example.com", 25, SECRET_TEXT);
    store_close(f->st);
    f->st = NULL;
    snprintf(path, sizeof(path), "%s/node.key", f->dir);
    snprintf(other, sizeof(other), "%s/moved.key", f->dir);
    assert_int_equal(rename(path, other), 0);

    assert_int_equal(store_open(&p, &st), ERROR_KEYFILE);
    /* Not even when creating is allowed: the store exists. */
    p.create = true;
    assert_int_equal(store_open(&p, &st), ERROR_KEYFILE);
    assert_null(st);
    assert_int_not_equal(stat(path, &sb), 0);

    /* The key given by its path opens the store. */
    p.key_file = other;
    p.create = false;
    assert_int_equal(store_open(&p, &f->st), 0);
}

static void test_store_open_refuses_other_key(void **state)
{
    struct fixture *f = *state;
    struct store_params p = {.dir = f->dir};
    struct seal_key key, other;
    uint8_t check[SEAL_CHECK_LEN];
    Smtpsync__StoreMeta *m;
    struct store *st = NULL;
    char path[4096];

    store_close(f->st);
    f->st = NULL;
    /* The store keeps the check value of the key it was made with. */
    snprintf(path, sizeof(path), "%s/node.key", f->dir);
    assert_int_equal(seal_key_load(path, false, &key), 0);
    assert_int_equal(seal_key_check(&key, check), 0);
    m = raw_meta(f->dir);
    assert_int_equal(m->key_check.len, SEAL_CHECK_LEN);
    assert_memory_equal(m->key_check.data, check, SEAL_CHECK_LEN);
    smtpsync__store_meta__free_unpacked(m, NULL);

    /* A valid key file, but not this store's: refused, even with create. */
    snprintf(path, sizeof(path), "%s/other.key", f->dir);
    assert_int_equal(seal_key_load(path, true, &other), 0);
    p.key_file = path;
    assert_int_equal(store_open(&p, &st), ERROR_KEYFILE);
    p.create = true;
    assert_int_equal(store_open(&p, &st), ERROR_KEYFILE);
    assert_null(st);
    seal_key_wipe(&key);
    seal_key_wipe(&other);
    reopen(f);
}

/* A meta without a key check value is refused, not adopted. */
static void test_store_open_meta_without_key_check(void **state)
{
    struct fixture *f = *state;
    struct store_params p = {.dir = f->dir};
    Smtpsync__StoreMeta *m;
    struct store *st = NULL;
    ProtobufCBinaryData saved;
    uint8_t *buf;
    size_t len;

    store_close(f->st);
    f->st = NULL;
    m = raw_meta(f->dir);
    saved = m->key_check;
    m->key_check = (ProtobufCBinaryData){0};
    len = smtpsync__store_meta__get_packed_size(m);
    buf = malloc(len);
    assert_non_null(buf);
    smtpsync__store_meta__pack(m, buf);
    m->key_check = saved;
    smtpsync__store_meta__free_unpacked(m, NULL);
    raw_put(f->dir, "meta", (MDB_val){.mv_size = 5, .mv_data = "state"}, buf, len);
    free(buf);
    assert_int_equal(store_open(&p, &st), ERROR_CORRUPT);
    assert_null(st);
}

/* LMDB returns system errors as positive errno values; the store gives them
 * back negative (error.h), so a caller testing rc < 0 sees the failure. */
static void test_store_open_system_error_is_negative(void **state)
{
    struct fixture *f = *state;
    struct store_params p = {.dir = f->dir};
    struct store *st = NULL;
    char path[4096];
    int rc;

    store_close(f->st);
    f->st = NULL;
    /* A directory where LMDB's lock file should be: mdb_env_open() fails
     * with EISDIR (as root, no permission bit would stop it). */
    snprintf(path, sizeof(path), "%s/lock.mdb", f->dir);
    assert_int_equal(unlink(path), 0);
    assert_int_equal(mkdir(path, 0700), 0);
    rc = store_open(&p, &st);
    assert_true(rc < 0);
    assert_int_equal(rc, -EISDIR);
    assert_string_equal(error_str(rc), strerror(EISDIR));
    assert_null(st);

    /* Nothing else was touched: with the lock file back, the store opens. */
    assert_int_equal(rmdir(path), 0);
    reopen(f);
    assert_int_equal(head(f->st), 0);
}

/* ------------------------------------------------------------------------ */
/* Secrets bound to their id; drafts that do not read back. */

struct blob {
    uint8_t data[256];
    size_t len;
};

static void take_sealed(Smtpsync__Settings *m, void *arg)
{
    struct blob *b = arg;

    assert_non_null(m->password);
    assert_true(m->password->sealed.len <= sizeof(b->data));
    memcpy(b->data, m->password->sealed.data, m->password->sealed.len);
    b->len = m->password->sealed.len;
}

/* Replaces the sealed blob, keeping the record's secret id. */
static void put_sealed(Smtpsync__Settings *m, void *arg)
{
    struct blob *b = arg;

    assert_non_null(m->password);
    free(m->password->sealed.data);
    m->password->sealed.data = malloc(b->len);
    assert_non_null(m->password->sealed.data);
    memcpy(m->password->sealed.data, b->data, b->len);
    m->password->sealed.len = b->len;
}

/* The sealed blob of the (only) change of history row `rev`. */
static void history_blob(const char *dir, uint64_t rev, struct blob *b)
{
    Smtpsync__Revision *r;
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;
    uint8_t kb[8];
    MDB_val key = rev_key(rev, kb), val;

    raw_open(dir, "history", &env, &txn, &dbi);
    assert_int_equal(mdb_get(txn, dbi, &key, &val), 0);
    r = smtpsync__revision__unpack(NULL, val.mv_size, val.mv_data);
    assert_non_null(r);
    take_sealed(r->changes[0]->settings, b);
    smtpsync__revision__free_unpacked(r, NULL);
    mdb_txn_abort(txn);
    mdb_env_close(env);
}

static void put_sealed_in_change(Smtpsync__Revision *r, void *arg)
{
    put_sealed(r->changes[0]->settings, arg);
}

/* Copies the sealed blob of history row `from` into history row `to`. */
static void swap_history_blob(const char *dir, uint64_t from, uint64_t to)
{
    struct blob b = {0};

    history_blob(dir, from, &b);
    raw_edit_history(dir, to, put_sealed_in_change, &b);
}

/* The reviewer's case: an older revision's sealed password put into the
 * current revision (history row and current record, ids kept) leaves the
 * chain intact, since it covers ids only; the binding to the id refuses it. */
static void test_store_old_secret_swapped_in_refused(void **state)
{
    struct fixture *f = *state;
    struct blob old = {0};
    struct settings out;

    settings_init(&out);
    save_one(f->st, "site-a", "a.example.com", 25, "OLD-password");
    save_one(f->st, "site-a", "a.example.com", 25, "NEW-password");
    store_close(f->st);
    f->st = NULL;

    history_blob(f->dir, 1, &old);
    swap_history_blob(f->dir, 1, 2);
    raw_edit_record(f->dir, "settings", "site-a", put_sealed, &old);

    reopen(f);
    assert_int_equal(store_get(f->st, "site-a", 0, STORE_UNSEAL, &out), ERROR_TAMPERED);
    assert_null(out.password);
    assert_int_equal(store_get(f->st, "site-a", 1, STORE_UNSEAL, &out), 0);
    assert_string_equal(out.password, "OLD-password");
    {
        int rc = store_verify(f->st);
        assert_true(rc == ERROR_TAMPERED || rc == ERROR_CORRUPT);
    }
    settings_clear(&out);
}

static void set_port_70000(Smtpsync__Settings *m, void *arg)
{
    (void)arg;
    m->port = 70000;
}

/* A draft that cannot be read back is a problem naming its instance and
 * field, not a bare error. */
static void test_store_save_reports_unreadable_drafts(void **state)
{
    struct fixture *f = *state;
    struct store_commit c = {.actor = "local:test"};
    struct settings_problems problems = {0};
    static const uint8_t garbage[] = {0xff, 0xff, 0xff, 0xff};

    put_draft(f->st, "site-a", "a.example.com", 25, SECRET_TEXT);
    put_draft(f->st, "site-b", "b.example.com", 25, NULL);
    put_draft(f->st, "site-c", "c.example.com", 25, NULL);
    put_draft(f->st, "site-d", "d.example.com", 25, NULL);
    store_close(f->st);
    f->st = NULL;
    raw_edit_record(f->dir, "drafts", "site-a", flip_sealed_bit, NULL);
    raw_edit_record(f->dir, "drafts", "site-b", set_port_70000, NULL);
    raw_put(f->dir, "drafts", (MDB_val){.mv_size = 6, .mv_data = "site-c"}, garbage,
            sizeof(garbage));
    reopen(f);

    assert_int_equal(store_save(f->st, NULL, 0, &c, &problems, NULL), ERROR_INVALID);
    assert_true(has_problem(&problems, "site-a.password"));
    assert_true(has_problem(&problems, "site-b.port"));
    assert_true(has_problem(&problems, "site-c"));
    for (size_t i = 0; i < problems.count; i++)
        assert_int_not_equal(strncmp(problems.items[i].field, "site-d", 6), 0);
    assert_int_equal(head(f->st), 0);
}

/* ------------------------------------------------------------------------ */
/* Commit text. */

static void test_store_commit_refuses_control_characters(void **state)
{
    struct fixture *f = *state;
    struct store_commit c = {.actor = "local:test\nrevision 99 by admin"};

    save_one(f->st, "site-a", "a.example.com", 25, NULL);
    put_draft(f->st, "site-a", "b.example.com", 25, NULL);
    assert_int_equal(store_save(f->st, NULL, 0, &c, NULL, NULL), ERROR_INVALID);
    c.actor = "local:test";
    c.comment = "fix\x1b[2Jcleared";
    assert_int_equal(store_save(f->st, NULL, 0, &c, NULL, NULL), ERROR_INVALID);
    c.comment = "tab\there";
    assert_int_equal(store_save(f->st, NULL, 0, &c, NULL, NULL), ERROR_INVALID);
    assert_int_equal(store_rollback(f->st, 1, &c, NULL), ERROR_INVALID);
    assert_int_equal(head(f->st), 1);
    c.comment = "one line, UTF-8 \xc3\xa9 is fine";
    assert_int_equal(store_save(f->st, NULL, 0, &c, NULL, NULL), 0);
    assert_int_equal(head(f->st), 2);
}

/* ------------------------------------------------------------------------ */
/* The snapshot's digest. */

static void compacted_store(struct fixture *f)
{
    char host[64];

    for (int i = 1; i <= 6; i++) {
        snprintf(host, sizeof(host), "h%d.example.com", i);
        save_one(f->st, i % 2 ? "site-a" : "site-b", host, 25, i == 3 ? SECRET_TEXT : NULL);
    }
    assert_int_equal(store_compact(f->st, 2, NULL), 0); /* base 4 */
}

/* Recomputes meta's base_state_hash independently: SHA-256 of a packed
 * Snapshot holding only the snapshot's records, secrets reduced to ids. */
static void test_store_snapshot_digest_recomputed(void **state)
{
    struct fixture *f = *state;
    Smtpsync__Settings *recs[8];
    Smtpsync__Secret ids[8], *sealed[8] = {NULL};
    Smtpsync__Snapshot snap;
    Smtpsync__StoreMeta *meta;
    uint8_t h[EVP_MAX_MD_SIZE], *buf;
    unsigned int hlen = 0;
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;
    MDB_cursor *cur;
    MDB_val key, val;
    size_t n = 0, len;
    int rc;

    compacted_store(f);
    store_close(f->st);
    f->st = NULL;

    raw_open(f->dir, "snapshot", &env, &txn, &dbi);
    assert_int_equal(mdb_cursor_open(txn, dbi, &cur), 0);
    for (rc = mdb_cursor_get(cur, &key, &val, MDB_FIRST); rc == 0;
         rc = mdb_cursor_get(cur, &key, &val, MDB_NEXT)) {
        assert_true(n < 8);
        recs[n] = smtpsync__settings__unpack(NULL, val.mv_size, val.mv_data);
        assert_non_null(recs[n]);
        n++;
    }
    mdb_cursor_close(cur);
    mdb_txn_abort(txn);
    mdb_env_close(env);
    assert_int_equal(n, 2);
    /* At the base (4), site-a is h3, saved with a password. */
    assert_non_null(recs[0]->password);
    for (size_t i = 0; i < n; i++) {
        if (recs[i]->password == NULL)
            continue;
        sealed[i] = recs[i]->password;
        smtpsync__secret__init(&ids[i]);
        ids[i].id = sealed[i]->id;
        recs[i]->password = &ids[i];
    }
    smtpsync__snapshot__init(&snap);
    snap.records = recs;
    snap.n_records = n;
    len = smtpsync__snapshot__get_packed_size(&snap);
    buf = malloc(len);
    assert_non_null(buf);
    smtpsync__snapshot__pack(&snap, buf);
    assert_int_equal(EVP_Digest(buf, len, h, &hlen, EVP_sha256(), NULL), 1);
    free(buf);

    meta = raw_meta(f->dir);
    assert_int_equal(meta->base_revision, 4);
    assert_int_equal(meta->base_state_hash.len, STORE_HASH_LEN);
    assert_int_equal(hlen, STORE_HASH_LEN);
    assert_memory_equal(meta->base_state_hash.data, h, STORE_HASH_LEN);
    smtpsync__store_meta__free_unpacked(meta, NULL);
    for (size_t i = 0; i < n; i++) {
        if (sealed[i] != NULL)
            recs[i]->password = sealed[i];
        smtpsync__settings__free_unpacked(recs[i], NULL);
    }
    reopen(f);
}

static void test_store_snapshot_tamper_detected(void **state)
{
    struct fixture *f = *state;
    struct diffs *d = calloc(1, sizeof(*d));
    struct settings out;

    assert_non_null(d);
    settings_init(&out);
    compacted_store(f);
    assert_int_equal(store_verify(f->st), 0);
    assert_int_equal(store_get(f->st, "site-b", 4, 0, &out), 0);
    assert_string_equal(out.hostname, "h4.example.com");
    store_close(f->st);
    f->st = NULL;

    raw_edit_record(f->dir, "snapshot", "site-b", rename_host, "evil.example.com");
    reopen(f);
    assert_int_equal(store_verify(f->st), ERROR_CORRUPT);
    assert_int_equal(store_get(f->st, "site-b", 4, 0, &out), ERROR_CORRUPT);
    assert_int_equal(store_get(f->st, "site-a", 5, 0, &out), ERROR_CORRUPT);
    assert_int_equal(store_diff(f->st, 4, 6, diff_cb, d), ERROR_CORRUPT);
    /* Nor is the altered snapshot folded into a new one. */
    assert_int_equal(store_compact(f->st, 1, NULL), ERROR_CORRUPT);
    /* The head is read from the current records and still works. */
    assert_int_equal(store_get(f->st, "site-b", 0, 0, &out), 0);
    assert_string_equal(out.hostname, "h6.example.com");
    settings_clear(&out);
    free(d);
}

/* ------------------------------------------------------------------------ */
/* History callbacks. */

static void test_store_history_failure_makes_no_callback(void **state)
{
    struct fixture *f = *state;
    struct history_rows *h = calloc(1, sizeof(*h));
    static const uint8_t garbage[] = {0xff, 0xff, 0xff};
    uint8_t kb[8];

    assert_non_null(h);
    for (int i = 1; i <= 4; i++) {
        char host[64];
        snprintf(host, sizeof(host), "h%d.example.com", i);
        save_one(f->st, "site-a", host, 25, NULL);
    }
    store_close(f->st);
    f->st = NULL;
    /* The oldest row is damaged: the newer ones come first in the output,
     * yet none may be handed out before the failure is known. */
    raw_put(f->dir, "history", rev_key(1, kb), garbage, sizeof(garbage));
    reopen(f);
    assert_int_equal(store_history(f->st, 0, history_cb, h), ERROR_CORRUPT);
    assert_int_equal(h->n, 0);
    /* The newest three alone are fine. */
    assert_int_equal(store_history(f->st, 3, history_cb, h), 0);
    assert_int_equal(h->n, 3);
    free(h);
}

static void test_store_local_actor(void **state)
{
    char buf[STORE_ACTOR_MAX + 1];

    (void)state;
    store_local_actor(buf, sizeof(buf));
    assert_int_equal(strncmp(buf, "local:", 6), 0);
    assert_true(strlen(buf) > 6);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_store_open_creates_and_reopens, setup, teardown),
        cmocka_unit_test_setup_teardown(test_store_open_refuses_open_key_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_store_draft_put_get_discard, setup, teardown),
        cmocka_unit_test_setup_teardown(test_store_save_creates_revision, setup, teardown),
        cmocka_unit_test_setup_teardown(test_store_save_requires_actor, setup, teardown),
        cmocka_unit_test_setup_teardown(test_store_save_invalid_writes_nothing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_store_save_empty, setup, teardown),
        cmocka_unit_test_setup_teardown(test_store_save_several_instances, setup, teardown),
        cmocka_unit_test_setup_teardown(test_store_get_older_revision, setup, teardown),
        cmocka_unit_test_setup_teardown(test_store_history_order_and_limit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_store_diff_field_by_field, setup, teardown),
        cmocka_unit_test_setup_teardown(test_store_rollback_restores_old_values, setup, teardown),
        cmocka_unit_test_setup_teardown(test_store_rollback_deletes_later_instance, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_store_chain_hash_recomputed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_store_verify_detects_tampered_history, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_store_verify_detects_changed_record, setup, teardown),
        cmocka_unit_test_setup_teardown(test_store_compaction, setup, teardown),
        cmocka_unit_test_setup_teardown(test_store_map_grows, setup, teardown),
        cmocka_unit_test_setup_teardown(test_store_tampered_secret_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_store_secret_bound_to_instance, setup, teardown),
        cmocka_unit_test_setup_teardown(test_store_no_plaintext_on_disk, setup, teardown),
        cmocka_unit_test_setup_teardown(test_store_open_missing_store_without_create, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_store_open_never_creates_key_of_existing_store, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_store_open_refuses_other_key, setup, teardown),
        cmocka_unit_test_setup_teardown(test_store_open_meta_without_key_check, setup, teardown),
        cmocka_unit_test_setup_teardown(test_store_open_system_error_is_negative, setup, teardown),
        cmocka_unit_test_setup_teardown(test_store_old_secret_swapped_in_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_store_save_reports_unreadable_drafts, setup, teardown),
        cmocka_unit_test_setup_teardown(test_store_commit_refuses_control_characters, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_store_snapshot_digest_recomputed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_store_snapshot_tamper_detected, setup, teardown),
        cmocka_unit_test_setup_teardown(test_store_history_failure_makes_no_callback, setup,
                                        teardown),
        cmocka_unit_test(test_store_local_actor),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
