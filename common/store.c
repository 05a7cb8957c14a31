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

#include "error.h"
#include "seal.h"
#include "settings_pb.h"
#include "internal.h"

/*
 * This file: opening the environment, the write-transaction helper,
 * records (sealing), meta, reading, drafts and save. States rebuilt from
 * history, the chain hash and the history verbs are in store_history.c.
 */

#define STORE_FORMAT      1
#define STORE_MAP_DEFAULT ((size_t)8 << 20)
/* Five databases now; replicas, outbox and dead come later, and more after. */
#define STORE_MAXDBS      16
#define STORE_META_KEY    "state"
#define STORE_KEY_FILE    "node.key"

int store__check_commit(const struct store_commit *c)
{
    if (c == NULL || c->actor == NULL || c->actor[0] == '\0')
        return ERROR_INVALID;
    if (strlen(c->actor) > STORE_ACTOR_MAX)
        return ERROR_TOO_BIG;
    if (c->comment != NULL && strlen(c->comment) > STORE_COMMENT_MAX)
        return ERROR_TOO_BIG;
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Transactions. */

int store__txn_read(struct store *st, MDB_txn **txn)
{
    int rc = mdb_txn_begin(st->env, NULL, MDB_RDONLY, txn);

    if (rc == MDB_MAP_RESIZED) {
        /* Another process grew the map; adopt its size. */
        rc = mdb_env_set_mapsize(st->env, 0);
        if (rc == 0)
            rc = mdb_txn_begin(st->env, NULL, MDB_RDONLY, txn);
    }
    return rc;
}

/*
 * Runs `body` in one write transaction and commits it. When the map is
 * full, the whole body runs again in a new transaction after the map has
 * doubled: a body therefore keeps no effect outside its transaction until
 * it succeeds. No other transaction of ours is open here (store.h: one
 * thread), which mdb_env_set_mapsize() requires.
 */
int store__write(struct store *st, store__txn_fn body, void *arg)
{
    MDB_envinfo info;
    MDB_txn *txn;
    int rc;

    for (;;) {
        rc = mdb_txn_begin(st->env, NULL, 0, &txn);
        if (rc == MDB_MAP_RESIZED) {
            rc = mdb_env_set_mapsize(st->env, 0);
            if (rc != 0)
                return rc;
            continue;
        }
        if (rc != 0)
            return rc;
        rc = body(st, txn, arg);
        if (rc == 0)
            rc = mdb_txn_commit(txn);
        else
            mdb_txn_abort(txn);
        if (rc != MDB_MAP_FULL)
            return rc;
        rc = mdb_env_info(st->env, &info);
        if (rc != 0)
            return rc;
        if (info.me_mapsize > SIZE_MAX / 2)
            return MDB_MAP_FULL;
        rc = mdb_env_set_mapsize(st->env, info.me_mapsize * 2);
        if (rc != 0)
            return rc;
    }
}

/* ------------------------------------------------------------------------ */
/* Records. */

/* Packs `s` as it is stored: the password sealed under the node key and
 * bound to the instance id. *out is malloc'd. */
static int record_pack(struct store *st, const struct settings *s, uint8_t **out, size_t *out_len)
{
    struct settings_pb v;
    uint8_t *sealed = NULL, *buf;
    size_t sealed_len = 0, plen, len;
    int rc;

    rc = settings_pb_view(&v, s, SETTINGS_PB_SECRET_ID);
    if (rc != 0)
        return rc;
    if (s->password_set) {
        if (s->password == NULL)
            return ERROR_INVALID;
        plen = strlen(s->password);
        sealed = malloc(seal_sealed_len(plen));
        if (sealed == NULL)
            return -ENOMEM;
        rc = seal_seal(&st->key, s->instance, (const uint8_t *)s->password, plen, sealed,
                       seal_sealed_len(plen), &sealed_len);
        if (rc != 0)
            goto free_sealed;
        v.secret.sealed.data = sealed;
        v.secret.sealed.len = sealed_len;
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
    free(sealed);
    return rc;
}

/* Opens a sealed secret into a new NUL-terminated string (*out, wiped and
 * freed by settings_clear). */
static int secret_open(struct store *st, const Smtpsync__Secret *sec, const char *aad, char **out)
{
    size_t cap, plen;
    char *buf;
    int rc;

    if (sec == NULL || sec->sealed.len == 0)
        return ERROR_CORRUPT; /* a password is set but was never sealed */
    cap = sec->sealed.len;
    buf = malloc(cap + 1);
    if (buf == NULL)
        return -ENOMEM;
    rc = seal_open(&st->key, aad, sec->sealed.data, sec->sealed.len, (uint8_t *)buf, cap, &plen);
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

/* Decodes an unpacked stored record into `out` (cleared first); with
 * STORE_UNSEAL also opens its password. `instance`, when given, is the key
 * the record was found under and must be its id. */
static int record_decode_msg(struct store *st, const Smtpsync__Settings *m, const char *instance,
                             unsigned flags, struct settings *out)
{
    struct settings_problems problems;
    int rc;

    settings_clear(out);
    /* Plaintext never reaches LMDB; a record holding one is not ours. */
    if (m->password != NULL && m->password->plaintext.len != 0)
        return ERROR_CORRUPT;
    problems.count = 0;
    problems.dropped = 0;
    rc = settings_pb_decode(out, m, &problems);
    if (rc != 0)
        return rc == ERROR_DECODE ? ERROR_CORRUPT : rc;
    if (instance != NULL && strcmp(out->instance, instance) != 0) {
        rc = ERROR_CORRUPT;
        goto clear_out;
    }
    if ((flags & STORE_UNSEAL) && out->password_set) {
        rc = secret_open(st, m->password, out->instance, &out->password);
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
    rc = record_decode_msg(st, m, instance, flags, out);
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
    MDB_val key = store__key_str(STORE_META_KEY), val;
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
    if (m->format != STORE_FORMAT || m->hash.len != STORE_HASH_LEN ||
        m->base_hash.len != STORE_HASH_LEN || m->base_revision > m->revision)
        goto free_meta;
    out->revision = m->revision;
    out->epoch = m->epoch;
    out->base_revision = m->base_revision;
    out->revision_time_ms = m->revision_time_ms;
    memcpy(out->hash, m->hash.data, STORE_HASH_LEN);
    memcpy(out->base_hash, m->base_hash.data, STORE_HASH_LEN);
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
    MDB_val key = store__key_str(STORE_META_KEY), val;
    ProtobufCBinaryData saved_hash, saved_base;
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
    m->format = STORE_FORMAT;
    m->revision = meta->revision;
    m->epoch = meta->epoch;
    m->base_revision = meta->base_revision;
    m->revision_time_ms = meta->revision_time_ms;
    m->hash = (ProtobufCBinaryData){.len = STORE_HASH_LEN, .data = meta->hash};
    m->base_hash = (ProtobufCBinaryData){.len = STORE_HASH_LEN, .data = meta->base_hash};

    val.mv_size = smtpsync__store_meta__get_packed_size(m);
    rc = mdb_put(txn, st->meta, &key, &val, MDB_RESERVE);
    if (rc == 0)
        smtpsync__store_meta__pack(m, val.mv_data);

    m->hash = saved_hash;
    m->base_hash = saved_base;
    if (old != NULL)
        smtpsync__store_meta__free_unpacked(old, NULL);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Open and close. */

static const struct {
    const char *name;
    size_t offset;
} store_dbs[] = {
    {"settings", offsetof(struct store, settings)}, {"drafts", offsetof(struct store, drafts)},
    {"history", offsetof(struct store, history)},   {"snapshot", offsetof(struct store, snapshot)},
    {"meta", offsetof(struct store, meta)},
};

static int open_body(struct store *st, MDB_txn *txn, void *arg)
{
    struct store_meta meta;
    MDB_val key = store__key_str(STORE_META_KEY), val;
    int rc;

    (void)arg;
    for (size_t i = 0; i < sizeof(store_dbs) / sizeof(store_dbs[0]); i++) {
        MDB_dbi *dbi = (MDB_dbi *)((char *)st + store_dbs[i].offset);
        rc = mdb_dbi_open(txn, store_dbs[i].name, MDB_CREATE, dbi);
        if (rc != 0)
            return rc;
    }
    rc = mdb_get(txn, st->meta, &key, &val);
    if (rc == 0)
        return store__meta_read(st, txn, &meta);
    if (rc != MDB_NOTFOUND)
        return rc;
    /* A new store: revision 0, epoch 1, h(0) = zeros, nothing compacted. */
    memset(&meta, 0, sizeof(meta));
    meta.epoch = 1;
    return store__meta_write(st, txn, &meta);
}

int store_open(const struct store_params *params, struct store **out)
{
    char keypath[PATH_MAX];
    const char *kp = params->key_file;
    struct store *st;
    int rc, dead;

    if (params->dir == NULL || params->dir[0] == '\0')
        return ERROR_INVALID;
    if (mkdir(params->dir, 0700) != 0 && errno != EEXIST)
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
    rc = seal_key_load(kp, true, &st->key);
    if (rc != 0)
        goto free_store;
    rc = mdb_env_create(&st->env);
    if (rc != 0)
        goto wipe_key;
    rc = mdb_env_set_maxdbs(st->env, STORE_MAXDBS);
    if (rc == 0)
        rc = mdb_env_set_mapsize(st->env,
                                 params->map_size != 0 ? params->map_size : STORE_MAP_DEFAULT);
    if (rc == 0)
        rc = mdb_env_open(st->env, params->dir, 0, 0600);
    if (rc != 0)
        goto env_close;
    /* A process killed while reading leaves its reader slot behind. */
    rc = mdb_reader_check(st->env, &dead);
    if (rc == 0)
        rc = store__write(st, open_body, NULL);
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

    rc = store__txn_read(st, &txn);
    if (rc != 0)
        return rc;
    rc = store__meta_read(st, txn, &meta);
    if (rc == 0)
        rc = mdb_stat(txn, st->drafts, &sd);
    if (rc == 0)
        rc = mdb_stat(txn, st->settings, &ss);
    mdb_txn_abort(txn);
    if (rc != 0)
        return rc;
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
static int state_each(struct store *st, const struct store_state *s, unsigned flags,
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
    rc = store__txn_read(st, &txn);
    if (rc != 0)
        return rc;
    rc = store__meta_read(st, txn, &meta);
    if (rc != 0)
        goto txn_abort;
    if (revision == 0 || revision == meta.revision) {
        key = store__key_str(instance);
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
    return rc;
}

int store_each(struct store *st, uint64_t revision, unsigned flags, store_each_cb cb, void *arg)
{
    struct store_meta meta;
    struct store_state s = {0};
    MDB_txn *txn;
    int rc;

    rc = store__txn_read(st, &txn);
    if (rc != 0)
        return rc;
    rc = store__meta_read(st, txn, &meta);
    if (rc == 0)
        rc = store__state_at(st, txn, &meta, revision == 0 ? meta.revision : revision, &s);
    /* Callbacks run outside the transaction: they may use the store. */
    mdb_txn_abort(txn);
    if (rc == 0)
        rc = state_each(st, &s, flags, cb, arg);
    store__state_free(&s);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Drafts. */

struct draft_put_ctx {
    const char *instance;
    uint8_t *data;
    size_t len;
};

static int draft_put_body(struct store *st, MDB_txn *txn, void *arg)
{
    struct draft_put_ctx *c = arg;
    MDB_val key = store__key_str(c->instance), val = {.mv_size = c->len, .mv_data = c->data};

    return mdb_put(txn, st->drafts, &key, &val, 0);
}

int store_draft_put(struct store *st, const struct settings *s)
{
    struct draft_put_ctx c = {.instance = s->instance};
    int rc;

    if (!settings_instance_valid(s->instance) || s->nrelays > SETTINGS_RELAYS_MAX)
        return ERROR_INVALID;
    /* What settings_pb_decode() would refuse must not be stored: the draft
     * could never be read back. */
    if (s->trust_certificate != NULL &&
        strnlen(s->trust_certificate, SETTINGS_PEM_MAX + 1) > SETTINGS_PEM_MAX)
        return ERROR_TOO_BIG;
    rc = record_pack(st, s, &c.data, &c.len);
    if (rc != 0)
        return rc;
    rc = store__write(st, draft_put_body, &c);
    free(c.data);
    return rc;
}

int store_draft_get(struct store *st, const char *instance, unsigned flags, struct settings *out)
{
    MDB_txn *txn;
    MDB_val key, val;
    int rc;

    settings_clear(out);
    if (instance == NULL || !settings_instance_valid(instance))
        return ERROR_INVALID;
    rc = store__txn_read(st, &txn);
    if (rc != 0)
        return rc;
    key = store__key_str(instance);
    rc = mdb_get(txn, st->drafts, &key, &val);
    if (rc == MDB_NOTFOUND)
        rc = ERROR_NOT_FOUND;
    if (rc == 0)
        rc = store__record_decode(st, val.mv_data, val.mv_size, instance, flags, out);
    mdb_txn_abort(txn);
    return rc;
}

static int draft_discard_body(struct store *st, MDB_txn *txn, void *arg)
{
    const char *instance = arg;
    MDB_stat ms;
    MDB_val key;
    int rc;

    if (instance != NULL) {
        key = store__key_str(instance);
        rc = mdb_del(txn, st->drafts, &key, NULL);
        return rc == MDB_NOTFOUND ? ERROR_NOT_FOUND : rc;
    }
    rc = mdb_stat(txn, st->drafts, &ms);
    if (rc != 0)
        return rc;
    if (ms.ms_entries == 0)
        return ERROR_NOT_FOUND;
    return mdb_drop(txn, st->drafts, 0);
}

int store_draft_discard(struct store *st, const char *instance)
{
    if (instance != NULL && !settings_instance_valid(instance))
        return ERROR_INVALID;
    return store__write(st, draft_discard_body, STORE_BORROW(instance));
}

int store_draft_each(struct store *st, unsigned flags, store_each_cb cb, void *arg)
{
    struct store_state s = {0};
    MDB_txn *txn;
    int rc;

    rc = store__txn_read(st, &txn);
    if (rc != 0)
        return rc;
    rc = store__state_load(txn, st->drafts, &s);
    mdb_txn_abort(txn);
    if (rc == 0)
        rc = state_each(st, &s, flags, cb, arg);
    store__state_free(&s);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Save. */

struct save_item {
    char instance[SETTINGS_INSTANCE_MAX + 1];
    Smtpsync__Settings *msg; /* the draft as stored */
    bool changed;
};

struct save_ctx {
    const char *const *instances;
    size_t n;
    const struct store_commit *commit;
    struct settings_problems *problems;
    size_t problems_count; /* the caller's list as it was, restored on retry */
    size_t problems_dropped;
    uint64_t revision;
};

static void save_items_free(struct save_item *items, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (items[i].msg != NULL)
            smtpsync__settings__free_unpacked(items[i].msg, NULL);
    free(items);
}

/* Collects the drafts to save: the named ones, or all. */
static int save_collect(struct store *st, MDB_txn *txn, struct save_ctx *c, struct save_item **out,
                        size_t *nout)
{
    struct save_item *items = NULL, *grown;
    size_t n = 0, cap = 0;
    MDB_cursor *cur = NULL;
    MDB_val key, val;
    int rc = 0;

    if (c->n == 0) {
        rc = mdb_cursor_open(txn, st->drafts, &cur);
        if (rc != 0)
            return rc;
        rc = mdb_cursor_get(cur, &key, &val, MDB_FIRST);
    }
    for (size_t i = 0;; i++) {
        if (c->n > 0) {
            bool dup = false;
            if (i == c->n)
                break;
            if (!settings_instance_valid(c->instances[i])) {
                rc = ERROR_INVALID;
                break;
            }
            for (size_t j = 0; j < n && !dup; j++)
                dup = strcmp(items[j].instance, c->instances[i]) == 0;
            if (dup)
                continue;
            key = store__key_str(c->instances[i]);
            rc = mdb_get(txn, st->drafts, &key, &val);
            if (rc == MDB_NOTFOUND)
                rc = ERROR_NOT_FOUND;
        } else if (i > 0) {
            rc = mdb_cursor_get(cur, &key, &val, MDB_NEXT);
        }
        if (rc == MDB_NOTFOUND && c->n == 0) {
            rc = 0;
            break;
        }
        if (rc != 0)
            break;
        if (n == cap) {
            cap = cap ? cap * 2 : 8;
            grown = realloc(items, cap * sizeof(*items));
            if (grown == NULL) {
                rc = -ENOMEM;
                break;
            }
            items = grown;
        }
        memset(&items[n], 0, sizeof(items[n]));
        rc = store__key_instance(&key, items[n].instance);
        if (rc != 0)
            break;
        items[n].msg = store__record_unpack(val.mv_data, val.mv_size);
        if (items[n].msg == NULL) {
            rc = ERROR_CORRUPT;
            break;
        }
        n++;
    }
    if (cur != NULL)
        mdb_cursor_close(cur);
    if (rc != 0) {
        save_items_free(items, n);
        return rc;
    }
    *out = items;
    *nout = n;
    return 0;
}

/* Validates one draft fully, adding its problems to the caller's list
 * with "<instance>." before each field name; notes whether it changes the
 * current record. */
static int save_check(struct store *st, MDB_txn *txn, struct save_ctx *c, struct save_item *item,
                      bool *valid)
{
    struct settings_problems *local;
    struct settings draft, current;
    MDB_val key = store__key_str(item->instance), val;
    char field[sizeof(local->items[0].field) + SETTINGS_INSTANCE_MAX + 2];
    int rc;

    local = calloc(1, sizeof(*local));
    if (local == NULL)
        return -ENOMEM;
    settings_init(&draft);
    settings_init(&current);
    /* Unsealed so the password's own rules are checked too, and so a secret
     * that no longer opens is refused before it is committed. */
    rc = record_decode_msg(st, item->msg, item->instance, STORE_UNSEAL, &draft);
    if (rc != 0)
        goto free_local;
    if (settings_validate(&draft, NULL, time(NULL), local) != 0) {
        *valid = false;
        for (size_t i = 0; i < local->count && c->problems != NULL; i++) {
            snprintf(field, sizeof(field), "%s.%s", item->instance, local->items[i].field);
            settings_problem_add(c->problems, field, local->items[i].incomplete, "%s",
                                 local->items[i].message);
        }
        if (c->problems != NULL)
            c->problems->dropped += local->dropped;
    }
    rc = mdb_get(txn, st->settings, &key, &val);
    if (rc == MDB_NOTFOUND) {
        item->changed = true;
        rc = 0;
    } else if (rc == 0) {
        rc = store__record_decode(st, val.mv_data, val.mv_size, item->instance, 0, &current);
        if (rc == 0)
            item->changed = store__record_differs(&draft, &current);
    }
    settings_clear(&current);
    settings_clear(&draft);
free_local:
    free(local);
    return rc;
}

/*
 * A draft equal to the current record in every field is not written to
 * history (a revision without a change would only add noise). A save that
 * has some changed drafts also removes the unchanged ones, as their
 * content is current; when no draft changes anything the save returns
 * ERROR_EMPTY and, like every failed save, leaves the drafts in place.
 */
static int save_body(struct store *st, MDB_txn *txn, void *arg)
{
    struct save_ctx *c = arg;
    struct save_item *items = NULL;
    Smtpsync__Change *changes = NULL, **ptrs = NULL;
    struct store_meta meta;
    size_t n = 0, nchanged = 0;
    bool valid = true;
    MDB_val key;
    int rc;

    if (c->problems != NULL) {
        c->problems->count = c->problems_count;
        c->problems->dropped = c->problems_dropped;
    }
    rc = store__meta_read(st, txn, &meta);
    if (rc != 0)
        return rc;
    rc = save_collect(st, txn, c, &items, &n);
    if (rc != 0)
        return rc;
    if (n == 0) {
        rc = ERROR_EMPTY;
        goto free_items;
    }
    for (size_t i = 0; i < n && rc == 0; i++)
        rc = save_check(st, txn, c, &items[i], &valid);
    if (rc == 0 && !valid)
        rc = ERROR_INVALID;
    if (rc != 0)
        goto free_items;

    changes = calloc(n, sizeof(*changes));
    ptrs = calloc(n, sizeof(*ptrs));
    if (changes == NULL || ptrs == NULL) {
        rc = -ENOMEM;
        goto free_changes;
    }
    for (size_t i = 0; i < n; i++) {
        if (!items[i].changed)
            continue;
        smtpsync__change__init(&changes[nchanged]);
        changes[nchanged].instance = items[i].instance;
        changes[nchanged].kind = SMTPSYNC__CHANGE_KIND__CHANGE_KIND_PUT;
        changes[nchanged].settings = items[i].msg;
        ptrs[nchanged] = &changes[nchanged];
        nchanged++;
    }
    if (nchanged == 0) {
        rc = ERROR_EMPTY;
        goto free_changes;
    }
    rc = store__revision_commit(st, txn, &meta, c->commit, ptrs, nchanged, 0, &c->revision);
    for (size_t i = 0; i < n && rc == 0; i++) {
        key = store__key_str(items[i].instance);
        rc = mdb_del(txn, st->drafts, &key, NULL);
    }
free_changes:
    free(ptrs);
    free(changes);
free_items:
    save_items_free(items, n);
    return rc;
}

int store_save(struct store *st, const char *const *instances, size_t n,
               const struct store_commit *commit, struct settings_problems *problems,
               uint64_t *revision_out)
{
    struct save_ctx c = {
        .instances = instances,
        .n = n,
        .commit = commit,
        .problems = problems,
    };
    int rc;

    rc = store__check_commit(commit);
    if (rc != 0)
        return rc;
    if (n > 0 && instances == NULL)
        return ERROR_INVALID;
    if (problems != NULL) {
        c.problems_count = problems->count;
        c.problems_dropped = problems->dropped;
    }
    rc = store__write(st, save_body, &c);
    if (rc == 0 && revision_out != NULL)
        *revision_out = c.revision;
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
