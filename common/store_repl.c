#include "store.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <lmdb.h>
#include <openssl/crypto.h>

#include "dbenv.h"
#include "error.h"
#include "settings_pb.h"
#include "syntax.h"
#include "internal.h"

/*
 * This file: what the primary sends (deltas, snapshots) and a replica
 * applies, the epoch, the membership kept in meta, and the primary's
 * persisted view of its replicas (`replicas` database).
 *
 * Frames built here are protobuf-c message trees allocated with the
 * default allocator (malloc), whether unpacked from LMDB or assembled
 * here, so smtpsync__*__free_unpacked() frees them whole once every
 * plaintext password in them is wiped.
 *
 * What arrives is checked whole before the write transaction begins:
 * every record decoded with settings_pb's limits, every password sealed
 * under this node's key and every stored form packed. The transaction
 * then only compares chain hashes and writes.
 */

/* "[" host "]:" port, as config.h's CONFIG_ADDR_MAX. */
#define REPL_ADDRESS_MAX (SYNTAX_HOSTNAME_MAX + 8)

/* ------------------------------------------------------------------------ */
/* Secrets on the wire. */

/* Wipes the plaintext of a record's password, if any. */
static void secret_wipe(Smtpsync__Settings *m)
{
    if (m != NULL && m->password != NULL && m->password->plaintext.data != NULL)
        OPENSSL_cleanse(m->password->plaintext.data, m->password->plaintext.len);
}

/*
 * Turns the stored record `m` (an unpacked tree of our own) into its wire
 * form: the sealed password is opened under this node's key and replaced
 * by its plaintext; the id stays. `instance` is the id the record is
 * stored under. ERROR_CORRUPT, ERROR_TAMPERED, -ENOMEM.
 */
static int secret_to_plain(struct store *st, Smtpsync__Settings *m, const char *instance)
{
    Smtpsync__Secret *sec = m->password;
    struct settings s;
    uint8_t *plain;
    size_t len;
    int rc;

    if (sec == NULL)
        return 0;
    settings_init(&s);
    rc = store__record_decode_msg(st, m, instance, STORE_UNSEAL, &s, NULL);
    if (rc != 0)
        return rc;
    len = s.password != NULL ? strlen(s.password) : 0;
    plain = malloc(len ? len : 1);
    if (plain == NULL) {
        settings_clear(&s);
        return -ENOMEM;
    }
    memcpy(plain, s.password != NULL ? s.password : "", len);
    settings_clear(&s); /* wipes its copy */
    free(sec->sealed.data);
    sec->sealed = (ProtobufCBinaryData){0};
    sec->plaintext = (ProtobufCBinaryData){.len = len, .data = plain};
    return 0;
}

void store_repl_wipe_delta(Smtpsync__Delta *d)
{
    for (size_t i = 0; d != NULL && i < d->n_revisions; i++) {
        const Smtpsync__Revision *r = d->revisions[i];

        for (size_t j = 0; r != NULL && j < r->n_changes; j++)
            if (r->changes[j] != NULL)
                secret_wipe(r->changes[j]->settings);
    }
}

void store_repl_wipe_snapshot(Smtpsync__Snapshot *s)
{
    for (size_t i = 0; s != NULL && i < s->n_records; i++)
        secret_wipe(s->records[i]);
}

void store_repl_free_delta(Smtpsync__Delta *d)
{
    if (d == NULL)
        return;
    store_repl_wipe_delta(d);
    smtpsync__delta__free_unpacked(d, NULL);
}

void store_repl_free_snapshot(Smtpsync__Snapshot *s)
{
    if (s == NULL)
        return;
    store_repl_wipe_snapshot(s);
    smtpsync__snapshot__free_unpacked(s, NULL);
}

/* ------------------------------------------------------------------------ */
/* Meta: the parts the store's struct store_meta does not hold. */

/* The meta record unpacked whole; free with smtpsync__store_meta__free_unpacked. */
static int meta_raw_get(struct store *st, MDB_txn *txn, Smtpsync__StoreMeta **out)
{
    MDB_val key = dbenv_key_str(STORE__META_KEY), val;
    int rc;

    rc = mdb_get(txn, st->meta, &key, &val);
    if (rc == MDB_NOTFOUND)
        return ERROR_CORRUPT; /* store_open() creates it */
    if (rc != 0)
        return rc;
    *out = smtpsync__store_meta__unpack(NULL, val.mv_size, val.mv_data);
    return *out != NULL ? 0 : ERROR_CORRUPT;
}

/* Replaces the membership in the meta record, keeping every other field. */
static int meta_set_membership(struct store *st, MDB_txn *txn, const Smtpsync__Membership *ms)
{
    MDB_val key = dbenv_key_str(STORE__META_KEY), val;
    Smtpsync__Membership *saved;
    Smtpsync__StoreMeta *m;
    int rc;

    rc = meta_raw_get(st, txn, &m);
    if (rc != 0)
        return rc;
    saved = m->membership;
    m->membership = BORROW_CONST(ms);
    val.mv_size = smtpsync__store_meta__get_packed_size(m);
    rc = mdb_put(txn, st->meta, &key, &val, MDB_RESERVE);
    if (rc == 0)
        smtpsync__store_meta__pack(m, val.mv_data);
    m->membership = saved;
    smtpsync__store_meta__free_unpacked(m, NULL);
    return rc;
}

/* A deep copy of `m` (NULL: an empty membership) the caller frees with
 * smtpsync__membership__free_unpacked(). */
static int membership_copy(const Smtpsync__Membership *m, Smtpsync__Membership **out)
{
    uint8_t *buf = NULL;
    size_t len = 0;

    if (m != NULL) {
        len = smtpsync__membership__get_packed_size(m);
        buf = malloc(len ? len : 1);
        if (buf == NULL)
            return -ENOMEM;
        smtpsync__membership__pack(m, buf);
    }
    *out = smtpsync__membership__unpack(NULL, len, buf);
    free(buf);
    return *out != NULL ? 0 : -ENOMEM;
}

/* Every member named by a valid, distinct node id, with a known role and
 * an address of one line; at most one primary. */
static int membership_check(const Smtpsync__Membership *m)
{
    size_t primaries = 0;

    for (size_t i = 0; i < m->n_members; i++) {
        const Smtpsync__Member *a = m->members[i];

        if (a == NULL || a->node == NULL || !settings_instance_valid(a->node))
            return ERROR_INVALID;
        if (a->address == NULL || strlen(a->address) > REPL_ADDRESS_MAX ||
            syntax_has_control(a->address))
            return ERROR_INVALID;
        if (a->role == SMTPSYNC__ROLE__ROLE_PRIMARY)
            primaries++;
        else if (a->role != SMTPSYNC__ROLE__ROLE_REPLICA)
            return ERROR_INVALID;
        for (size_t j = 0; j < i; j++)
            if (strcmp(m->members[j]->node, a->node) == 0)
                return ERROR_INVALID;
    }
    return primaries <= 1 ? 0 : ERROR_INVALID;
}

/* ------------------------------------------------------------------------ */
/* Delta. */

/* Reads the rows from+1 .. to into d (its hash_after from the last row). */
static int delta_read(struct store *st, MDB_txn *txn, uint64_t from, uint64_t to,
                      Smtpsync__Delta *d)
{
    uint8_t kb[8];
    MDB_val key, val;
    int rc;

    for (uint64_t rev = from + 1; rev <= to; rev++) {
        Smtpsync__Revision *r;

        key = dbenv_key_u64(rev, kb);
        rc = mdb_get(txn, st->history, &key, &val);
        if (rc == MDB_NOTFOUND)
            return ERROR_CORRUPT; /* a row between base and head is missing */
        if (rc != 0)
            return rc;
        r = smtpsync__revision__unpack(NULL, val.mv_size, val.mv_data);
        if (r == NULL)
            return ERROR_CORRUPT;
        d->revisions[d->n_revisions++] = r;
        if (r->revision != rev || r->hash.len != STORE_HASH_LEN)
            return ERROR_CORRUPT;
    }
    memcpy(d->hash_after.data, d->revisions[d->n_revisions - 1]->hash.data, STORE_HASH_LEN);
    return 0;
}

int store_repl_delta(struct store *st, uint64_t from, size_t max, Smtpsync__Delta **out)
{
    struct store_meta meta;
    Smtpsync__Delta *d;
    uint64_t to;
    MDB_txn *txn;
    int rc;

    d = malloc(sizeof(*d));
    if (d == NULL)
        return -ENOMEM;
    smtpsync__delta__init(d);
    rc = dbenv_txn_read(st->env, &txn);
    if (rc != 0)
        goto free_delta;
    rc = store__meta_read(st, txn, &meta);
    if (rc != 0)
        goto txn_abort;
    if (from < meta.base_revision)
        rc = ERROR_COMPACTED;
    else if (from > meta.revision)
        rc = ERROR_INVALID;
    else if (from == meta.revision)
        rc = ERROR_EMPTY;
    if (rc != 0)
        goto txn_abort;
    to = meta.revision;
    if (max != 0 && to - from > max)
        to = from + max;
    if (to - from > SIZE_MAX / sizeof(*d->revisions)) {
        rc = -ENOMEM;
        goto txn_abort;
    }
    d->from_revision = from;
    d->to_revision = to;
    d->epoch = meta.epoch;
    d->revisions = calloc((size_t)(to - from), sizeof(*d->revisions));
    d->hash_after.data = malloc(STORE_HASH_LEN);
    if (d->revisions == NULL || d->hash_after.data == NULL) {
        rc = -ENOMEM;
        goto txn_abort;
    }
    d->hash_after.len = STORE_HASH_LEN;
    rc = delta_read(st, txn, from, to, d);
txn_abort:
    mdb_txn_abort(txn);
    rc = dbenv_error(rc);
    /* Unsealing needs no transaction. */
    for (size_t i = 0; i < d->n_revisions && rc == 0; i++) {
        Smtpsync__Revision *r = d->revisions[i];

        for (size_t j = 0; j < r->n_changes && rc == 0; j++)
            if (r->changes[j]->settings != NULL)
                rc = secret_to_plain(st, r->changes[j]->settings, r->changes[j]->instance);
    }
    if (rc == 0) {
        *out = d;
        return 0;
    }
free_delta:
    store_repl_free_delta(d);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Snapshot. */

static int snapshot_add(Smtpsync__Snapshot *s, size_t *cap, Smtpsync__Settings *m)
{
    if (s->n_records == *cap) {
        size_t ncap = *cap ? *cap * 2 : 16;
        Smtpsync__Settings **grown = realloc(s->records, ncap * sizeof(*grown));

        if (grown == NULL)
            return -ENOMEM;
        s->records = grown;
        *cap = ncap;
    }
    s->records[s->n_records++] = m;
    return 0;
}

/* Every current record, unpacked, in instance order. */
static int snapshot_read_records(struct store *st, MDB_txn *txn, Smtpsync__Snapshot *s)
{
    char instance[SETTINGS_INSTANCE_MAX + 1];
    MDB_cursor *cur;
    MDB_val key, val;
    size_t cap = 0;
    int rc;

    rc = mdb_cursor_open(txn, st->settings, &cur);
    if (rc != 0)
        return rc;
    for (rc = mdb_cursor_get(cur, &key, &val, MDB_FIRST); rc == 0;
         rc = mdb_cursor_get(cur, &key, &val, MDB_NEXT)) {
        Smtpsync__Settings *m;

        rc = store__key_instance(&key, instance);
        if (rc != 0)
            break;
        m = store__record_unpack(val.mv_data, val.mv_size);
        if (m == NULL) {
            rc = ERROR_CORRUPT;
            break;
        }
        rc = snapshot_add(s, &cap, m);
        if (rc != 0) {
            smtpsync__settings__free_unpacked(m, NULL);
            break;
        }
        if (strcmp(m->instance, instance) != 0) {
            rc = ERROR_CORRUPT;
            break;
        }
    }
    mdb_cursor_close(cur);
    return rc == MDB_NOTFOUND ? 0 : rc;
}

int store_repl_snapshot(struct store *st, Smtpsync__Snapshot **out)
{
    Smtpsync__StoreMeta *raw = NULL;
    struct store_meta meta;
    Smtpsync__Snapshot *s;
    MDB_txn *txn;
    int rc;

    s = malloc(sizeof(*s));
    if (s == NULL)
        return -ENOMEM;
    smtpsync__snapshot__init(s);
    rc = dbenv_txn_read(st->env, &txn);
    if (rc != 0)
        goto free_snapshot;
    rc = store__meta_read(st, txn, &meta);
    if (rc == 0)
        rc = meta_raw_get(st, txn, &raw);
    if (rc == 0)
        rc = membership_copy(raw->membership, &s->membership);
    if (rc == 0)
        rc = snapshot_read_records(st, txn, s);
    mdb_txn_abort(txn);
    rc = dbenv_error(rc);
    if (raw != NULL)
        smtpsync__store_meta__free_unpacked(raw, NULL);
    if (rc != 0)
        goto free_snapshot;
    s->revision = meta.revision;
    s->epoch = meta.epoch;
    s->revision_time_ms = meta.revision_time_ms;
    s->hash.data = malloc(STORE_HASH_LEN);
    if (s->hash.data == NULL) {
        rc = -ENOMEM;
        goto free_snapshot;
    }
    s->hash.len = STORE_HASH_LEN;
    memcpy(s->hash.data, meta.hash, STORE_HASH_LEN);
    for (size_t i = 0; i < s->n_records && rc == 0; i++)
        rc = secret_to_plain(st, s->records[i], s->records[i]->instance);
    if (rc == 0) {
        *out = s;
        return 0;
    }
free_snapshot:
    store_repl_free_snapshot(s);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Records received: checked and turned into their stored form. */

/* A record as it will be stored: packed, its password sealed. */
struct repl_record {
    const char *instance; /* borrowed from the received message */
    bool del;
    uint8_t *data; /* NULL for a delete */
    size_t len;
    Smtpsync__Secret sealed; /* the Secret of the stored form */
};

static void repl_record_free(struct repl_record *rec)
{
    free(rec->data);
    free(rec->sealed.sealed.data);
    memset(rec, 0, sizeof(*rec));
}

/*
 * Checks a received record (wire form: a Secret carries its plaintext and
 * no sealed bytes) with settings_pb's limits, and prepares its stored form
 * in `rec`: the same message with the password sealed under this node's
 * key. `instance`, when given, must be its id. ERROR_DECODE for a record
 * that does not decode, ERROR_INVALID for one that is not a wire record.
 */
static int record_prepare(struct store *st, const Smtpsync__Settings *m, const char *instance,
                          struct repl_record *rec)
{
    struct settings_problems problems = {0};
    Smtpsync__Settings stored;
    struct settings s;
    int rc;

    if (m->password != NULL && m->password->sealed.len != 0)
        return ERROR_INVALID; /* sealed bytes are of the sender's key: never sent */
    settings_init(&s);
    rc = settings_pb_decode(&s, m, &problems);
    if (rc != 0)
        return rc;
    if (instance != NULL && strcmp(s.instance, instance) != 0) {
        rc = ERROR_INVALID;
        goto clear_settings;
    }
    rec->instance = m->instance;
    stored = *m;
    if (s.password_set) {
        /* An empty password travels as an id without plaintext. */
        smtpsync__secret__init(&rec->sealed);
        rec->sealed.id = m->password->id;
        rc = store__secret_seal(st, s.instance, s.password_id, s.password != NULL ? s.password : "",
                                &rec->sealed.sealed);
        if (rc != 0)
            goto clear_settings;
        stored.password = &rec->sealed;
    }
    rec->len = smtpsync__settings__get_packed_size(&stored);
    rec->data = malloc(rec->len ? rec->len : 1);
    if (rec->data == NULL) {
        rc = -ENOMEM;
        goto clear_settings;
    }
    smtpsync__settings__pack(&stored, rec->data);
clear_settings:
    settings_clear(&s); /* wipes the plaintext copy */
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Applying a delta. */

/* One received revision in its stored form. */
struct repl_row {
    const Smtpsync__Revision *r; /* as received, for the chain hash */
    uint8_t *data;               /* the packed history row */
    size_t len;
    struct repl_record *recs; /* r->n_changes */
};

struct apply_delta_ctx {
    struct store *st;
    const Smtpsync__Delta *d;
    struct repl_row *rows;
    uint8_t actual[STORE_HASH_LEN]; /* set with ERROR_DIVERGED */
};

static void rows_free(struct repl_row *rows, size_t n)
{
    for (size_t i = 0; rows != NULL && i < n; i++) {
        for (size_t j = 0; rows[i].recs != NULL && j < rows[i].r->n_changes; j++)
            repl_record_free(&rows[i].recs[j]);
        free(rows[i].recs);
        free(rows[i].data);
    }
    free(rows);
}

/* The form of one revision: numbered in sequence, no later epoch than the
 * delta's, a printable actor and comment, valid changes. */
static int revision_check(const Smtpsync__Delta *d, size_t i)
{
    const Smtpsync__Revision *r = d->revisions[i];
    struct store_commit commit;

    if (r == NULL || r->revision != d->from_revision + i + 1 || r->epoch > d->epoch ||
        r->hash.len != STORE_HASH_LEN || r->rollback_of >= r->revision || r->n_changes == 0)
        return ERROR_INVALID;
    commit = (struct store_commit){.actor = r->actor, .comment = r->comment};
    if (store__check_commit(&commit) != 0)
        return ERROR_INVALID;
    for (size_t j = 0; j < r->n_changes; j++) {
        const Smtpsync__Change *c = r->changes[j];

        if (c == NULL || c->instance == NULL || !settings_instance_valid(c->instance))
            return ERROR_INVALID;
        switch (c->kind) {
        case SMTPSYNC__CHANGE_KIND__CHANGE_KIND_PUT:
            if (c->settings == NULL)
                return ERROR_INVALID;
            break;
        case SMTPSYNC__CHANGE_KIND__CHANGE_KIND_DELETE:
            if (c->settings != NULL)
                return ERROR_INVALID;
            break;
        default:
            return ERROR_INVALID;
        }
    }
    return 0;
}

/* Checks revision i and prepares its stored form: every record, and the
 * history row holding them. */
static int row_prepare(struct store *st, const Smtpsync__Delta *d, size_t i, struct repl_row *row)
{
    const Smtpsync__Revision *r = d->revisions[i];
    Smtpsync__Change *changes = NULL, **ptrs = NULL;
    Smtpsync__Settings *stored = NULL;
    Smtpsync__Revision out;
    int rc;

    rc = revision_check(d, i);
    if (rc != 0)
        return rc;
    row->r = r;
    row->recs = calloc(r->n_changes, sizeof(*row->recs));
    changes = calloc(r->n_changes, sizeof(*changes));
    ptrs = calloc(r->n_changes, sizeof(*ptrs));
    stored = calloc(r->n_changes, sizeof(*stored));
    if (row->recs == NULL || changes == NULL || ptrs == NULL || stored == NULL) {
        rc = -ENOMEM;
        goto free_all;
    }
    for (size_t j = 0; j < r->n_changes && rc == 0; j++) {
        const Smtpsync__Change *c = r->changes[j];

        changes[j] = *c;
        ptrs[j] = &changes[j];
        if (c->kind == SMTPSYNC__CHANGE_KIND__CHANGE_KIND_DELETE) {
            row->recs[j].instance = c->instance;
            row->recs[j].del = true;
            continue;
        }
        rc = record_prepare(st, c->settings, c->instance, &row->recs[j]);
        if (rc != 0)
            break;
        /* The row holds the same stored form as the settings database, so
         * that a rebuild from history matches it byte for byte. */
        stored[j] = *c->settings;
        if (c->settings->password != NULL)
            stored[j].password = &row->recs[j].sealed;
        changes[j].settings = &stored[j];
    }
    if (rc != 0)
        goto free_all;
    out = *r;
    out.changes = ptrs;
    row->len = smtpsync__revision__get_packed_size(&out);
    row->data = malloc(row->len);
    if (row->data == NULL) {
        rc = -ENOMEM;
        goto free_all;
    }
    smtpsync__revision__pack(&out, row->data);
free_all:
    free(stored);
    free(ptrs);
    free(changes);
    return rc;
}

static int row_write(struct store *st, MDB_txn *txn, const struct repl_row *row)
{
    uint8_t kb[8];
    MDB_val key, val;
    int rc;

    key = dbenv_key_u64(row->r->revision, kb);
    val = (MDB_val){.mv_size = row->len, .mv_data = row->data};
    rc = mdb_put(txn, st->history, &key, &val, MDB_NOOVERWRITE);
    if (rc == MDB_KEYEXIST)
        return ERROR_CORRUPT; /* a row beyond meta's head */
    for (size_t j = 0; j < row->r->n_changes && rc == 0; j++) {
        const struct repl_record *rec = &row->recs[j];

        key = dbenv_key_str(rec->instance);
        if (rec->del) {
            rc = mdb_del(txn, st->settings, &key, NULL);
            if (rc == MDB_NOTFOUND)
                rc = 0;
        } else {
            val = (MDB_val){.mv_size = rec->len, .mv_data = rec->data};
            rc = mdb_put(txn, st->settings, &key, &val, 0);
        }
    }
    return rc;
}

static int apply_delta_body(MDB_txn *txn, void *arg)
{
    struct apply_delta_ctx *c = arg;
    const Smtpsync__Delta *d = c->d;
    struct store *st = c->st;
    uint8_t hash[STORE_HASH_LEN], next[STORE_HASH_LEN];
    struct store_meta meta;
    int rc;

    rc = store__meta_read(st, txn, &meta);
    if (rc != 0)
        return rc;
    if (d->epoch < meta.epoch)
        return ERROR_FENCED;
    if (d->from_revision != meta.revision)
        return ERROR_CONFLICT;
    /* Every hash first: a divergence writes nothing. */
    memcpy(hash, meta.hash, STORE_HASH_LEN);
    for (size_t i = 0; i < d->n_revisions; i++) {
        const Smtpsync__Revision *r = d->revisions[i];

        rc = store__chain_hash(hash, r, next);
        if (rc != 0)
            return rc;
        memcpy(hash, next, STORE_HASH_LEN);
        if (CRYPTO_memcmp(next, r->hash.data, STORE_HASH_LEN) != 0)
            goto diverged;
    }
    if (CRYPTO_memcmp(hash, d->hash_after.data, STORE_HASH_LEN) != 0)
        goto diverged;
    for (size_t i = 0; i < d->n_revisions && rc == 0; i++)
        rc = row_write(st, txn, &c->rows[i]);
    if (rc != 0)
        return rc;
    meta.revision = d->to_revision;
    memcpy(meta.hash, hash, STORE_HASH_LEN);
    if (d->epoch > meta.epoch)
        meta.epoch = d->epoch;
    if (d->n_revisions > 0)
        meta.revision_time_ms = d->revisions[d->n_revisions - 1]->time_ms;
    return store__meta_write(st, txn, &meta);
diverged:
    memcpy(c->actual, hash, STORE_HASH_LEN);
    return ERROR_DIVERGED;
}

int store_repl_apply_delta(struct store *st, const Smtpsync__Delta *d,
                           uint8_t actual[STORE_HASH_LEN])
{
    struct apply_delta_ctx c = {.st = st, .d = d};
    size_t prepared = 0, need = 0;
    int rc = 0;

    /* An empty delta (to == from) only compares hashes and adopts the
     * epoch: "we are at the same revision with the same hash". */
    if (d->to_revision < d->from_revision || d->to_revision - d->from_revision != d->n_revisions ||
        d->hash_after.len != STORE_HASH_LEN)
        return ERROR_INVALID;
    if (d->n_revisions > 0) {
        c.rows = calloc(d->n_revisions, sizeof(*c.rows));
        if (c.rows == NULL)
            return -ENOMEM;
    }
    for (; prepared < d->n_revisions && rc == 0; prepared++) {
        rc = row_prepare(st, d, prepared, &c.rows[prepared]);
        need += c.rows[prepared].len;
        for (size_t j = 0; c.rows[prepared].recs != NULL && j < d->revisions[prepared]->n_changes;
             j++)
            need += c.rows[prepared].recs[j].len;
    }
    if (rc == 0)
        rc = dbenv_write(st->env, apply_delta_body, &c, need);
    if (rc == ERROR_DIVERGED && actual != NULL)
        memcpy(actual, c.actual, STORE_HASH_LEN);
    rows_free(c.rows, prepared);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Applying a snapshot. */

struct apply_snapshot_ctx {
    struct store *st;
    const Smtpsync__Snapshot *s;
    struct repl_record *recs; /* s->n_records, in instance order */
};

static int record_cmp(const void *a, const void *b)
{
    return strcmp(((const struct repl_record *)a)->instance,
                  ((const struct repl_record *)b)->instance);
}

static int apply_snapshot_body(MDB_txn *txn, void *arg)
{
    struct apply_snapshot_ctx *c = arg;
    const Smtpsync__Snapshot *s = c->s;
    struct store *st = c->st;
    struct store_state state = {0};
    struct store_meta meta;
    MDB_val key, val;
    int rc;

    rc = store__meta_read(st, txn, &meta);
    if (rc != 0)
        return rc;
    if (s->epoch < meta.epoch)
        return ERROR_FENCED;
    rc = mdb_drop(txn, st->settings, 0);
    if (rc == 0)
        rc = mdb_drop(txn, st->snapshot, 0);
    if (rc == 0)
        rc = mdb_drop(txn, st->history, 0);
    if (rc == 0)
        rc = mdb_drop(txn, st->drafts, 0);
    /* The snapshot is the new base: the state at base_revision = revision. */
    for (size_t i = 0; i < s->n_records && rc == 0; i++) {
        key = dbenv_key_str(c->recs[i].instance);
        val = (MDB_val){.mv_size = c->recs[i].len, .mv_data = c->recs[i].data};
        rc = mdb_put(txn, st->settings, &key, &val, 0);
        if (rc == 0)
            rc = mdb_put(txn, st->snapshot, &key, &val, 0);
    }
    if (rc == 0)
        rc = store__state_load(txn, st->snapshot, &state);
    if (rc == 0)
        rc = store__state_digest(&state, meta.base_state_hash);
    store__state_free(&state);
    if (rc != 0)
        return rc;
    meta.revision = s->revision;
    meta.epoch = s->epoch;
    meta.base_revision = s->revision;
    meta.revision_time_ms = s->revision_time_ms;
    memcpy(meta.hash, s->hash.data, STORE_HASH_LEN);
    memcpy(meta.base_hash, s->hash.data, STORE_HASH_LEN);
    rc = store__meta_write(st, txn, &meta);
    if (rc == 0 && s->membership != NULL)
        rc = meta_set_membership(st, txn, s->membership);
    return rc;
}

int store_repl_apply_snapshot(struct store *st, const Smtpsync__Snapshot *s)
{
    struct apply_snapshot_ctx c = {.st = st, .s = s};
    size_t prepared = 0, need = 0;
    int rc = 0;

    if (s->hash.len != STORE_HASH_LEN)
        return ERROR_INVALID;
    if (s->membership != NULL && membership_check(s->membership) != 0)
        return ERROR_INVALID;
    if (s->n_records > 0) {
        c.recs = calloc(s->n_records, sizeof(*c.recs));
        if (c.recs == NULL)
            return -ENOMEM;
    }
    for (; prepared < s->n_records && rc == 0; prepared++) {
        rc = s->records[prepared] != NULL
                 ? record_prepare(st, s->records[prepared], NULL, &c.recs[prepared])
                 : ERROR_INVALID;
        need += 2 * c.recs[prepared].len; /* settings and snapshot */
    }
    if (rc == 0 && s->n_records > 1) {
        qsort(c.recs, s->n_records, sizeof(*c.recs), record_cmp);
        for (size_t i = 1; i < s->n_records && rc == 0; i++)
            if (strcmp(c.recs[i - 1].instance, c.recs[i].instance) == 0)
                rc = ERROR_INVALID; /* one record per instance */
    }
    if (rc == 0)
        rc = dbenv_write(st->env, apply_snapshot_body, &c, need);
    for (size_t i = 0; i < prepared; i++)
        repl_record_free(&c.recs[i]);
    free(c.recs);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Epoch and membership. */

struct set_epoch_ctx {
    struct store *st;
    uint64_t epoch;
};

static int set_epoch_body(MDB_txn *txn, void *arg)
{
    struct set_epoch_ctx *c = arg;
    struct store_meta meta;
    int rc;

    rc = store__meta_read(c->st, txn, &meta);
    if (rc != 0)
        return rc;
    if (c->epoch <= meta.epoch)
        return ERROR_INVALID;
    meta.epoch = c->epoch;
    return store__meta_write(c->st, txn, &meta);
}

int store_repl_set_epoch(struct store *st, uint64_t epoch)
{
    struct set_epoch_ctx c = {.st = st, .epoch = epoch};

    return dbenv_write(st->env, set_epoch_body, &c, 0);
}

int store_repl_membership(struct store *st, Smtpsync__Membership **out)
{
    Smtpsync__StoreMeta *raw = NULL;
    MDB_txn *txn;
    int rc;

    rc = dbenv_txn_read(st->env, &txn);
    if (rc != 0)
        return rc;
    rc = meta_raw_get(st, txn, &raw);
    mdb_txn_abort(txn);
    rc = dbenv_error(rc);
    if (rc != 0)
        return rc;
    rc = membership_copy(raw->membership, out);
    smtpsync__store_meta__free_unpacked(raw, NULL);
    return rc;
}

struct set_membership_ctx {
    struct store *st;
    const Smtpsync__Membership *m;
};

static int set_membership_body(MDB_txn *txn, void *arg)
{
    struct set_membership_ctx *c = arg;

    return meta_set_membership(c->st, txn, c->m);
}

int store_repl_set_membership(struct store *st, const Smtpsync__Membership *m)
{
    struct set_membership_ctx c = {.st = st, .m = m};

    if (m == NULL || membership_check(m) != 0)
        return ERROR_INVALID;
    return dbenv_write(st->env, set_membership_body, &c, 0);
}

/* ------------------------------------------------------------------------ */
/* The replicas database. */

/* The record of a status unpacked, with its id checked against the key. */
static Smtpsync__ReplicaStatus *status_unpack(const MDB_val *key, const MDB_val *val)
{
    Smtpsync__ReplicaStatus *rs =
        smtpsync__replica_status__unpack(NULL, val->mv_size, val->mv_data);

    if (rs != NULL &&
        (strlen(rs->id) != key->mv_size || memcmp(rs->id, key->mv_data, key->mv_size) != 0)) {
        smtpsync__replica_status__free_unpacked(rs, NULL);
        rs = NULL;
    }
    return rs;
}

int store_repl_status_get(struct store *st, const char *id, Smtpsync__ReplicaStatus **out)
{
    MDB_val key, val;
    MDB_txn *txn;
    int rc;

    if (id == NULL || !settings_instance_valid(id))
        return ERROR_INVALID;
    rc = dbenv_txn_read(st->env, &txn);
    if (rc != 0)
        return rc;
    key = dbenv_key_str(id);
    rc = mdb_get(txn, st->replicas, &key, &val);
    if (rc == MDB_NOTFOUND)
        rc = ERROR_NOT_FOUND;
    if (rc == 0) {
        *out = status_unpack(&key, &val);
        if (*out == NULL)
            rc = ERROR_CORRUPT;
    }
    mdb_txn_abort(txn);
    return dbenv_error(rc);
}

/* Every record packed back to back in one buffer: entry i is the `len[i]`
 * octets at data + off[i], under the key rs[i]->id. */
struct status_put_ctx {
    struct store *st;
    const Smtpsync__ReplicaStatus *const *rs;
    size_t n;
    uint8_t *data;
    size_t *off;
    size_t *len;
};

static int status_put_body(MDB_txn *txn, void *arg)
{
    struct status_put_ctx *c = arg;
    int rc = 0;

    for (size_t i = 0; i < c->n && rc == 0; i++) {
        MDB_val key = dbenv_key_str(c->rs[i]->id);
        MDB_val val = {.mv_size = c->len[i], .mv_data = c->data + c->off[i]};
        rc = mdb_put(txn, c->st->replicas, &key, &val, 0);
    }
    return rc;
}

int store_repl_status_put(struct store *st, const Smtpsync__ReplicaStatus *rs)
{
    return store_repl_status_put_many(st, &rs, 1);
}

int store_repl_status_put_many(struct store *st, const Smtpsync__ReplicaStatus *const *rs, size_t n)
{
    struct status_put_ctx c = {.st = st, .rs = rs, .n = n};
    size_t total = 0;
    int rc;

    if (n == 0)
        return 0;
    /* Every entry is checked before anything is written: all or nothing. */
    if (rs == NULL)
        return ERROR_INVALID;
    for (size_t i = 0; i < n; i++)
        if (rs[i] == NULL || rs[i]->id == NULL || !settings_instance_valid(rs[i]->id))
            return ERROR_INVALID;
    if (n > SIZE_MAX / sizeof(*c.off))
        return -ENOMEM;
    c.off = malloc(n * sizeof(*c.off));
    c.len = malloc(n * sizeof(*c.len));
    if (c.off == NULL || c.len == NULL) {
        rc = -ENOMEM;
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        c.len[i] = smtpsync__replica_status__get_packed_size(rs[i]);
        if (c.len[i] > SIZE_MAX - total) {
            rc = -ENOMEM;
            goto out;
        }
        c.off[i] = total;
        total += c.len[i];
    }
    c.data = malloc(total ? total : 1);
    if (c.data == NULL) {
        rc = -ENOMEM;
        goto out;
    }
    for (size_t i = 0; i < n; i++)
        smtpsync__replica_status__pack(rs[i], c.data + c.off[i]);
    rc = dbenv_write(st->env, status_put_body, &c, total);
out:
    free(c.data);
    free(c.len);
    free(c.off);
    return rc;
}

int store_repl_status_each(struct store *st, store_repl_status_cb cb, void *arg)
{
    Smtpsync__ReplicaStatus **v = NULL, **grown;
    size_t n = 0, cap = 0;
    MDB_cursor *cur = NULL;
    MDB_val key, val;
    MDB_txn *txn;
    int rc;

    rc = dbenv_txn_read(st->env, &txn);
    if (rc != 0)
        return rc;
    rc = mdb_cursor_open(txn, st->replicas, &cur);
    for (rc = rc == 0 ? mdb_cursor_get(cur, &key, &val, MDB_FIRST) : rc; rc == 0;
         rc = mdb_cursor_get(cur, &key, &val, MDB_NEXT)) {
        if (n == cap) {
            cap = cap ? cap * 2 : 8;
            grown = realloc(v, cap * sizeof(*v));
            if (grown == NULL) {
                rc = -ENOMEM;
                break;
            }
            v = grown;
        }
        v[n] = status_unpack(&key, &val);
        if (v[n] == NULL) {
            rc = ERROR_CORRUPT;
            break;
        }
        n++;
    }
    if (cur != NULL)
        mdb_cursor_close(cur);
    mdb_txn_abort(txn);
    if (rc == MDB_NOTFOUND) /* the end */
        rc = 0;
    rc = dbenv_error(rc);
    /* Callbacks run outside the transaction: they may use the store. */
    for (size_t i = 0; i < n && rc == 0; i++)
        rc = cb(v[i], arg);
    for (size_t i = 0; i < n; i++)
        smtpsync__replica_status__free_unpacked(v[i], NULL);
    free(v);
    return rc;
}
