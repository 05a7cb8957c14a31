#include "store.h"

#include <errno.h>
#include <limits.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <lmdb.h>
#include <openssl/crypto.h>

#include "dbenv.h"
#include "error.h"
#include "seal.h"
#include "settings_pb.h"
#include "syntax.h"
#include "internal.h"

/*
 * This file: opening the store (its LMDB environment and transactions are
 * dbenv.h's), records (sealing), meta and reading. Drafts and save are in
 * store_draft.c; states rebuilt from history, the chain hash and the
 * history verbs in store_history.c.
 */

#define STORE_FORMAT      1
#define STORE_MAP_DEFAULT ((size_t)8 << 20)
/* Six databases now, room for more after. */
#define STORE_MAXDBS      16
#define STORE_KEY_FILE    "node.key"
#define STORE_DATA_FILE   "data.mdb" /* LMDB's file in the data directory */

int store__check_commit(const struct store_commit *c)
{
    if (c == NULL || c->actor == NULL || c->actor[0] == '\0')
        return ERROR_INVALID;
    if (strlen(c->actor) > STORE_ACTOR_MAX)
        return ERROR_TOO_BIG;
    if (c->comment != NULL && strlen(c->comment) > STORE_COMMENT_MAX)
        return ERROR_TOO_BIG;
    /* History is printed line by line, one row per line: a line break or an
     * escape sequence in it would forge rows or drive the terminal. */
    if (syntax_has_control(c->actor) || (c->comment != NULL && syntax_has_control(c->comment)))
        return ERROR_INVALID;
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Records. */

#define STORE_AAD_LABEL "smtpsync-secret-v1"
#define STORE_AAD_MAX   (sizeof(STORE_AAD_LABEL) + SETTINGS_INSTANCE_MAX + 1 + SETTINGS_SECRET_ID_LEN)

/*
 * The associated data a password is sealed with:
 *     "smtpsync-secret-v1" 0x00 instance 0x00 password_id (16 bytes)
 * The instance keeps a blob from opening in another instance's record; the
 * id keeps an older password of the same instance (history, a rollback
 * source) from being put back under the current id unnoticed, as the chain
 * hash covers only the id. Returns the length written to out.
 */
static size_t secret_aad(uint8_t out[STORE_AAD_MAX], const char *instance,
                         const uint8_t id[SETTINGS_SECRET_ID_LEN])
{
    size_t n = sizeof(STORE_AAD_LABEL), ilen = strnlen(instance, SETTINGS_INSTANCE_MAX);

    memcpy(out, STORE_AAD_LABEL, n); /* with its NUL: the separator */
    memcpy(out + n, instance, ilen);
    n += ilen;
    out[n++] = 0x00;
    memcpy(out + n, id, SETTINGS_SECRET_ID_LEN);
    return n + SETTINGS_SECRET_ID_LEN;
}

/* Seals a password of `instance` under the node key, bound to the instance
 * and the secret id by secret_aad(); out->data is malloc'd. */
int store__secret_seal(struct store *st, const char *instance,
                       const uint8_t id[SETTINGS_SECRET_ID_LEN], const char *plain,
                       ProtobufCBinaryData *out)
{
    uint8_t aad[STORE_AAD_MAX], *sealed;
    size_t plen = strlen(plain), aadlen, len = 0;
    int rc;

    sealed = malloc(seal_sealed_len(plen));
    if (sealed == NULL)
        return -ENOMEM;
    aadlen = secret_aad(aad, instance, id);
    rc = seal_seal(&st->key, aad, aadlen, (const uint8_t *)plain, plen, sealed,
                   seal_sealed_len(plen), &len);
    if (rc != 0) {
        free(sealed);
        return rc;
    }
    *out = (ProtobufCBinaryData){.len = len, .data = sealed};
    return 0;
}

/* Packs `s` as it is stored: the password sealed under the node key and
 * bound to the instance and the secret id. *out is malloc'd. */
int store__record_pack(struct store *st, const struct settings *s, uint8_t **out, size_t *out_len)
{
    struct settings_pb v;
    uint8_t *buf;
    size_t len;
    int rc;

    rc = settings_pb_view(&v, s, SETTINGS_PB_SECRET_ID);
    if (rc != 0)
        return rc;
    if (s->password_set) {
        if (s->password == NULL)
            return ERROR_INVALID;
        rc = store__secret_seal(st, s->instance, s->password_id, s->password, &v.secret.sealed);
        if (rc != 0)
            return rc;
        v.msg.password = &v.secret;
    }
    len = smtpsync__settings__get_packed_size(&v.msg);
    buf = malloc(len);
    if (buf == NULL) {
        rc = -ENOMEM;
        goto free_sealed;
    }
    smtpsync__settings__pack(&v.msg, buf);
    *out = buf;
    *out_len = len;
free_sealed:
    free(v.secret.sealed.data);
    return rc;
}

/* Opens the sealed password of the decoded record `s` into a new
 * NUL-terminated string (*out, wiped and freed by settings_clear). */
static int secret_open(struct store *st, const Smtpsync__Secret *sec, const struct settings *s,
                       char **out)
{
    uint8_t aad[STORE_AAD_MAX];
    size_t cap, plen, aadlen;
    char *buf;
    int rc;

    if (sec == NULL || sec->sealed.len == 0)
        return ERROR_CORRUPT; /* a password is set but was never sealed */
    cap = sec->sealed.len;
    buf = malloc(cap + 1);
    if (buf == NULL)
        return -ENOMEM;
    aadlen = secret_aad(aad, s->instance, s->password_id);
    rc = seal_open(&st->key, aad, aadlen, sec->sealed.data, sec->sealed.len, (uint8_t *)buf, cap,
                   &plen);
    if (rc == 0 && memchr(buf, '\0', plen) != NULL)
        rc = ERROR_CORRUPT;
    if (rc != 0) {
        OPENSSL_cleanse(buf, cap + 1);
        free(buf);
        return rc;
    }
    buf[plen] = '\0';
    *out = buf;
    return 0;
}

Smtpsync__Settings *store__record_unpack(const void *data, size_t len)
{
    return smtpsync__settings__unpack(NULL, len, data);
}

/*
 * Decodes an unpacked stored record into `out` (cleared first); with
 * STORE_UNSEAL also opens its password. `instance`, when given, is the key
 * the record was found under and must be its id. When the record is
 * refused (ERROR_CORRUPT, ERROR_TAMPERED) and `problems` is not NULL, it
 * says which field failed and why.
 */
int store__record_decode_msg(struct store *st, const Smtpsync__Settings *m, const char *instance,
                             unsigned flags, struct settings *out,
                             struct settings_problems *problems)
{
    struct settings_problems local;
    int rc;

    settings_clear(out);
    if (problems == NULL) {
        local.count = 0;
        local.dropped = 0;
        problems = &local;
    }
    /* Plaintext never reaches LMDB; a record holding one is not ours. */
    if (m->password != NULL && m->password->plaintext.len != 0) {
        settings_problem_add(problems, "password", false,
                             "is stored in plain text, which this store never does; set it again");
        return ERROR_CORRUPT;
    }
    rc = settings_pb_decode(out, m, problems);
    if (rc != 0)
        return rc == ERROR_DECODE ? ERROR_CORRUPT : rc;
    if (instance != NULL && strcmp(out->instance, instance) != 0) {
        settings_problem_add(problems, "instance", false,
                             "does not match the instance the record is stored under");
        rc = ERROR_CORRUPT;
        goto clear_out;
    }
    if ((flags & STORE_UNSEAL) && out->password_set) {
        rc = secret_open(st, m->password, out, &out->password);
        if (rc == ERROR_TAMPERED)
            settings_problem_add(problems, "password", false,
                                 "does not open under this node's key (altered, moved from "
                                 "another record, or sealed under another key); set it again");
        else if (rc == ERROR_CORRUPT)
            settings_problem_add(problems, "password", false,
                                 "is set but its sealed value is missing or damaged; set it again");
        if (rc != 0)
            goto clear_out;
    }
    return 0;
clear_out:
    settings_clear(out);
    return rc;
}

int store__record_decode(struct store *st, const void *data, size_t len, const char *instance,
                         unsigned flags, struct settings *out)
{
    Smtpsync__Settings *m;
    int rc;

    settings_clear(out);
    m = store__record_unpack(data, len);
    if (m == NULL)
        return ERROR_CORRUPT;
    rc = store__record_decode_msg(st, m, instance, flags, out, NULL);
    smtpsync__settings__free_unpacked(m, NULL);
    return rc;
}

/* True if two decoded records differ in any field. */
bool store__record_differs(const struct settings *a, const struct settings *b)
{
    for (int f = 0; f < SETTINGS_F_COUNT; f++)
        if (settings_field_differs(a, b, (enum settings_field)f))
            return true;
    return false;
}

/* ------------------------------------------------------------------------ */
/* Meta. */

int store__meta_read(struct store *st, MDB_txn *txn, struct store_meta *out)
{
    MDB_val key = dbenv_key_str(STORE__META_KEY), val;
    Smtpsync__StoreMeta *m;
    int rc;

    rc = mdb_get(txn, st->meta, &key, &val);
    if (rc == MDB_NOTFOUND)
        return ERROR_CORRUPT; /* store_open() creates it */
    if (rc != 0)
        return rc;
    m = smtpsync__store_meta__unpack(NULL, val.mv_size, val.mv_data);
    if (m == NULL)
        return ERROR_CORRUPT;
    rc = ERROR_CORRUPT;
    /* A meta without a key check value or a snapshot digest is refused as
     * corrupt rather than adopted: every store this code makes has both
     * from its first transaction (there was no release before them), and
     * adopting would accept whatever key or snapshot happens to be there. */
    if (m->format != STORE_FORMAT || m->hash.len != STORE_HASH_LEN ||
        m->base_hash.len != STORE_HASH_LEN || m->base_state_hash.len != STORE_HASH_LEN ||
        m->key_check.len != SEAL_CHECK_LEN || m->base_revision > m->revision)
        goto free_meta;
    out->revision = m->revision;
    out->epoch = m->epoch;
    out->base_revision = m->base_revision;
    out->revision_time_ms = m->revision_time_ms;
    memcpy(out->hash, m->hash.data, STORE_HASH_LEN);
    memcpy(out->base_hash, m->base_hash.data, STORE_HASH_LEN);
    memcpy(out->base_state_hash, m->base_state_hash.data, STORE_HASH_LEN);
    memcpy(out->key_check, m->key_check.data, SEAL_CHECK_LEN);
    rc = 0;
free_meta:
    smtpsync__store_meta__free_unpacked(m, NULL);
    return rc;
}

/* Writes the store's fields into the meta record, keeping the others
 * (cluster, node, membership, fields of later versions) as they are. */
int store__meta_write(struct store *st, MDB_txn *txn, struct store_meta *meta)
{
    Smtpsync__StoreMeta fresh, *old = NULL, *m = &fresh;
    MDB_val key = dbenv_key_str(STORE__META_KEY), val;
    ProtobufCBinaryData saved_hash, saved_base, saved_state, saved_check;
    int rc;

    smtpsync__store_meta__init(&fresh);
    rc = mdb_get(txn, st->meta, &key, &val);
    if (rc == 0) {
        old = smtpsync__store_meta__unpack(NULL, val.mv_size, val.mv_data);
        if (old == NULL)
            return ERROR_CORRUPT;
        m = old;
    } else if (rc != MDB_NOTFOUND) {
        return rc;
    }
    /* Borrow our hashes for packing; the unpacked ones go back before free. */
    saved_hash = m->hash;
    saved_base = m->base_hash;
    saved_state = m->base_state_hash;
    saved_check = m->key_check;
    m->format = STORE_FORMAT;
    m->revision = meta->revision;
    m->epoch = meta->epoch;
    m->base_revision = meta->base_revision;
    m->revision_time_ms = meta->revision_time_ms;
    m->hash = (ProtobufCBinaryData){.len = STORE_HASH_LEN, .data = meta->hash};
    m->base_hash = (ProtobufCBinaryData){.len = STORE_HASH_LEN, .data = meta->base_hash};
    m->base_state_hash =
        (ProtobufCBinaryData){.len = STORE_HASH_LEN, .data = meta->base_state_hash};
    m->key_check = (ProtobufCBinaryData){.len = SEAL_CHECK_LEN, .data = meta->key_check};

    val.mv_size = smtpsync__store_meta__get_packed_size(m);
    rc = mdb_put(txn, st->meta, &key, &val, MDB_RESERVE);
    if (rc == 0)
        smtpsync__store_meta__pack(m, val.mv_data);

    m->hash = saved_hash;
    m->base_hash = saved_base;
    m->base_state_hash = saved_state;
    m->key_check = saved_check;
    if (old != NULL)
        smtpsync__store_meta__free_unpacked(old, NULL);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Open and close. */

struct open_ctx {
    struct store *st;
    bool create;
};

static int open_body(MDB_txn *txn, void *arg)
{
    struct open_ctx *c = arg;
    struct store *st = c->st;
    const struct dbenv_db dbs[] = {
        {"settings", &st->settings}, {"drafts", &st->drafts}, {"history", &st->history},
        {"snapshot", &st->snapshot}, {"meta", &st->meta},     {"replicas", &st->replicas},
    };
    struct store_state empty = {0};
    uint8_t check[SEAL_CHECK_LEN];
    struct store_meta meta;
    MDB_val key = dbenv_key_str(STORE__META_KEY), val;
    int rc;

    rc = seal_key_check(&st->key, check);
    if (rc != 0)
        return rc;
    rc = dbenv_open_dbs(txn, dbs, sizeof(dbs) / sizeof(dbs[0]));
    if (rc != 0)
        return rc;
    rc = mdb_get(txn, st->meta, &key, &val);
    if (rc == 0) {
        rc = store__meta_read(st, txn, &meta);
        if (rc == 0 && CRYPTO_memcmp(meta.key_check, check, SEAL_CHECK_LEN) != 0)
            rc = ERROR_KEYFILE; /* another key than the store was made with */
        return rc;
    }
    if (rc != MDB_NOTFOUND)
        return rc;
    /* No meta: the store was never made, or its making was cut short
     * before this transaction committed (nothing else was written then).
     * Without `create` this transaction is aborted: nothing is made. */
    if (!c->create)
        return ERROR_NOT_FOUND;
    /* A new store: revision 0, epoch 1, h(0) = zeros, nothing compacted,
     * an empty snapshot, and the check value of the key it is made with. */
    memset(&meta, 0, sizeof(meta));
    meta.epoch = 1;
    memcpy(meta.key_check, check, SEAL_CHECK_LEN);
    rc = store__state_digest(&empty, meta.base_state_hash);
    if (rc != 0)
        return rc;
    return store__meta_write(st, txn, &meta);
}

/*
 * The key file rules (store.h): a new store, one whose data file does not
 * exist yet, may create its key; an existing one never does, so a mistyped
 * key path fails instead of sealing new secrets under a second key. Which
 * key is the right one is settled by meta's key check value (open_body).
 */
int store_open(const struct store_params *params, struct store **out)
{
    char keypath[PATH_MAX], datapath[PATH_MAX];
    const char *kp = params->key_file;
    struct dbenv_params ep = {
        .dir = params->dir,
        .maxdbs = STORE_MAXDBS,
        .map_size = params->map_size != 0 ? params->map_size : STORE_MAP_DEFAULT,
        .mode = 0600,
    };
    struct open_ctx oc = {.create = params->create};
    struct store *st;
    struct stat sb;
    bool fresh;
    int rc;

    if (params->dir == NULL || params->dir[0] == '\0')
        return ERROR_INVALID;
    if ((size_t)snprintf(datapath, sizeof(datapath), "%s/%s", params->dir, STORE_DATA_FILE) >=
        sizeof(datapath))
        return -ENAMETOOLONG;
    if (stat(datapath, &sb) == 0)
        fresh = false;
    else if (errno == ENOENT)
        fresh = true; /* also when the directory is missing */
    else
        return -errno;
    if (fresh && !params->create)
        return ERROR_NOT_FOUND; /* and nothing is made, not even the directory */
    if (fresh && mkdir(params->dir, 0700) != 0 && errno != EEXIST)
        return -errno;
    if (kp == NULL) {
        if ((size_t)snprintf(keypath, sizeof(keypath), "%s/%s", params->dir, STORE_KEY_FILE) >=
            sizeof(keypath))
            return -ENAMETOOLONG;
        kp = keypath;
    }
    st = calloc(1, sizeof(*st));
    if (st == NULL)
        return -ENOMEM;
    rc = seal_key_load(kp, fresh, &st->key);
    /* Missing or unreadable is the key file's fault, in the header's terms. */
    if (rc == -ENOENT || rc == -EACCES || rc == -EPERM || rc == -EISDIR)
        rc = ERROR_KEYFILE;
    if (rc != 0)
        goto free_store;
    rc = dbenv_open(&ep, &st->env);
    if (rc != 0)
        goto wipe_key;
    oc.st = st;
    rc = dbenv_write(st->env, open_body, &oc, 0);
    if (rc != 0)
        goto env_close;
    *out = st;
    return 0;
env_close:
    mdb_env_close(st->env);
wipe_key:
    seal_key_wipe(&st->key);
free_store:
    free(st);
    return rc;
}

void store_close(struct store *st)
{
    if (st == NULL)
        return;
    mdb_env_close(st->env);
    seal_key_wipe(&st->key);
    free(st);
}

int store_info(struct store *st, struct store_info *out)
{
    struct store_meta meta;
    MDB_stat sd, ss;
    MDB_txn *txn;
    int rc;

    rc = dbenv_txn_read(st->env, &txn);
    if (rc != 0)
        return rc;
    rc = store__meta_read(st, txn, &meta);
    if (rc == 0)
        rc = mdb_stat(txn, st->drafts, &sd);
    if (rc == 0)
        rc = mdb_stat(txn, st->settings, &ss);
    mdb_txn_abort(txn);
    if (rc != 0)
        return dbenv_error(rc);
    memset(out, 0, sizeof(*out));
    out->revision = meta.revision;
    out->epoch = meta.epoch;
    memcpy(out->hash, meta.hash, STORE_HASH_LEN);
    out->base_revision = meta.base_revision;
    out->revision_time_ms = meta.revision_time_ms;
    out->ndrafts = sd.ms_entries;
    out->ninstances = ss.ms_entries;
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Reading records. */

/* Decodes every record of a state, then calls cb for each: a decode
 * failure is reported before any callback runs. */
int store__state_each(struct store *st, const struct store_state *s, unsigned flags,
                      store_each_cb cb, void *arg)
{
    struct settings *recs;
    size_t done = 0;
    int rc = 0;

    if (s->n == 0)
        return 0;
    recs = calloc(s->n, sizeof(*recs));
    if (recs == NULL)
        return -ENOMEM;
    for (; done < s->n; done++) {
        settings_init(&recs[done]);
        rc = store__record_decode(st, s->v[done].data, s->v[done].len, s->v[done].instance, flags,
                                  &recs[done]);
        if (rc != 0) {
            done++;
            goto clear_recs;
        }
    }
    for (size_t i = 0; i < s->n && rc == 0; i++)
        rc = cb(&recs[i], arg);
clear_recs:
    for (size_t i = 0; i < done; i++)
        settings_clear(&recs[i]);
    free(recs);
    return rc;
}

int store_get(struct store *st, const char *instance, uint64_t revision, unsigned flags,
              struct settings *out)
{
    struct store_meta meta;
    struct store_state s = {0};
    MDB_txn *txn;
    MDB_val key, val;
    bool found;
    size_t i;
    int rc;

    settings_clear(out);
    if (instance == NULL || !settings_instance_valid(instance))
        return ERROR_INVALID;
    rc = dbenv_txn_read(st->env, &txn);
    if (rc != 0)
        return rc;
    rc = store__meta_read(st, txn, &meta);
    if (rc != 0)
        goto txn_abort;
    if (revision == 0 || revision == meta.revision) {
        key = dbenv_key_str(instance);
        rc = mdb_get(txn, st->settings, &key, &val);
        if (rc == MDB_NOTFOUND)
            rc = ERROR_NOT_FOUND;
        if (rc == 0)
            rc = store__record_decode(st, val.mv_data, val.mv_size, instance, flags, out);
        goto txn_abort;
    }
    rc = store__state_at(st, txn, &meta, revision, &s);
    if (rc != 0)
        goto free_state;
    i = store__state_find(&s, instance, &found);
    if (!found)
        rc = ERROR_NOT_FOUND;
    else
        rc = store__record_decode(st, s.v[i].data, s.v[i].len, instance, flags, out);
free_state:
    store__state_free(&s);
txn_abort:
    mdb_txn_abort(txn);
    return dbenv_error(rc);
}

int store_each(struct store *st, uint64_t revision, unsigned flags, store_each_cb cb, void *arg)
{
    struct store_meta meta;
    struct store_state s = {0};
    MDB_txn *txn;
    int rc;

    rc = dbenv_txn_read(st->env, &txn);
    if (rc != 0)
        return rc;
    rc = store__meta_read(st, txn, &meta);
    if (rc == 0)
        rc = store__state_at(st, txn, &meta, revision == 0 ? meta.revision : revision, &s);
    /* Callbacks run outside the transaction: they may use the store; what
     * they return is theirs and is not converted. */
    mdb_txn_abort(txn);
    rc = dbenv_error(rc);
    if (rc == 0)
        rc = store__state_each(st, &s, flags, cb, arg);
    store__state_free(&s);
    return rc;
}

/* ------------------------------------------------------------------------ */

void store_local_actor(char *buf, size_t len)
{
    struct passwd pw, *res = NULL;
    char tmp[1024];
    uid_t uid = geteuid();

    if (buf == NULL || len == 0)
        return;
    if (getpwuid_r(uid, &pw, tmp, sizeof(tmp), &res) == 0 && res != NULL && res->pw_name != NULL &&
        res->pw_name[0] != '\0')
        snprintf(buf, len, "local:%s", res->pw_name);
    else
        snprintf(buf, len, "local:%lu", (unsigned long)uid);
}
