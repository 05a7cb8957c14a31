#include "store.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <lmdb.h>
#include <openssl/evp.h>

#include "dbenv.h"
#include "error.h"
#include "settings_pb.h"
#include "internal.h"

/*
 * This file: states rebuilt from the snapshot and history, the chain hash,
 * appending a revision, and rollback, history, diff, compaction and
 * verification on top of them.
 */

/* ------------------------------------------------------------------------ */
/* In-memory states. */

void store__state_free(struct store_state *s)
{
    for (size_t i = 0; i < s->n; i++)
        free(s->v[i].data);
    free(s->v);
    memset(s, 0, sizeof(*s));
}

/* Index of `instance`, or where it would go; *found tells which. */
size_t store__state_find(const struct store_state *s, const char *instance, bool *found)
{
    size_t lo = 0, hi = s->n;

    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(s->v[mid].instance, instance);
        if (c == 0) {
            *found = true;
            return mid;
        }
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    *found = false;
    return lo;
}

/* Sets the record of `instance` to data[len], taking ownership of the
 * malloc'd `data` (freed on failure too). */
static int state_put_take(struct store_state *s, const char *instance, uint8_t *data, size_t len)
{
    bool found;
    size_t i;

    if (strlen(instance) > SETTINGS_INSTANCE_MAX || instance[0] == '\0') {
        free(data);
        return ERROR_CORRUPT;
    }
    i = store__state_find(s, instance, &found);
    if (found) {
        free(s->v[i].data);
        s->v[i].data = data;
        s->v[i].len = len;
        return 0;
    }
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 16;
        struct store_state_entry *v = realloc(s->v, cap * sizeof(*v));
        if (v == NULL) {
            free(data);
            return -ENOMEM;
        }
        s->v = v;
        s->cap = cap;
    }
    memmove(&s->v[i + 1], &s->v[i], (s->n - i) * sizeof(s->v[0]));
    strcpy(s->v[i].instance, instance);
    s->v[i].data = data;
    s->v[i].len = len;
    s->n++;
    return 0;
}

static void state_del(struct store_state *s, const char *instance)
{
    bool found;
    size_t i = store__state_find(s, instance, &found);

    if (!found)
        return;
    free(s->v[i].data);
    memmove(&s->v[i], &s->v[i + 1], (s->n - i - 1) * sizeof(s->v[0]));
    s->n--;
}

/* Loads a whole instance -> record database (settings, snapshot, drafts). */
int store__state_load(MDB_txn *txn, MDB_dbi dbi, struct store_state *out)
{
    char instance[SETTINGS_INSTANCE_MAX + 1];
    MDB_cursor *cur;
    MDB_val key, val;
    uint8_t *copy;
    int rc;

    rc = mdb_cursor_open(txn, dbi, &cur);
    if (rc != 0)
        return rc;
    for (rc = mdb_cursor_get(cur, &key, &val, MDB_FIRST); rc == 0;
         rc = mdb_cursor_get(cur, &key, &val, MDB_NEXT)) {
        rc = store__key_instance(&key, instance);
        if (rc != 0)
            break;
        copy = malloc(val.mv_size ? val.mv_size : 1);
        if (copy == NULL) {
            rc = -ENOMEM;
            break;
        }
        memcpy(copy, val.mv_data, val.mv_size);
        rc = state_put_take(out, instance, copy, val.mv_size);
        if (rc != 0)
            break;
    }
    mdb_cursor_close(cur);
    return rc == MDB_NOTFOUND ? 0 : rc;
}

/* Applies one history row to a state. */
static int state_apply(struct store_state *s, const Smtpsync__Revision *r)
{
    int rc;

    for (size_t i = 0; i < r->n_changes; i++) {
        const Smtpsync__Change *c = r->changes[i];
        uint8_t *buf;
        size_t len;

        switch (c->kind) {
        case SMTPSYNC__CHANGE_KIND__CHANGE_KIND_PUT:
            if (c->settings == NULL || strcmp(c->settings->instance, c->instance) != 0)
                return ERROR_CORRUPT;
            len = smtpsync__settings__get_packed_size(c->settings);
            buf = malloc(len ? len : 1);
            if (buf == NULL)
                return -ENOMEM;
            smtpsync__settings__pack(c->settings, buf);
            rc = state_put_take(s, c->instance, buf, len);
            if (rc != 0)
                return rc;
            break;
        case SMTPSYNC__CHANGE_KIND__CHANGE_KIND_DELETE:
            state_del(s, c->instance);
            break;
        default:
            return ERROR_CORRUPT;
        }
    }
    return 0;
}

/* ------------------------------------------------------------------------ */
/* The chain hash. */

/* A shallow copy of a record with its Secret reduced to the id: the
 * canonical form of a record in the chain hash and the snapshot digest.
 * Sealed blobs differ on every node and must never enter either. */
struct canon_settings {
    Smtpsync__Settings settings;
    Smtpsync__Secret secret;
};

static void canon_settings(struct canon_settings *c, const Smtpsync__Settings *m)
{
    c->settings = *m;
    if (m->password != NULL) {
        smtpsync__secret__init(&c->secret);
        c->secret.id = m->password->id;
        c->settings.password = &c->secret;
    }
}

struct canon_change {
    Smtpsync__Change change;
    struct canon_settings settings;
};

/* out = SHA-256(prev || canonical(r)); canonical(r) packs a shallow copy of
 * `r` without its hash and with every Secret reduced to its id, so sealed
 * blobs (different on every node) never enter the chain. */
int store__chain_hash(const uint8_t prev[STORE_HASH_LEN], const Smtpsync__Revision *r,
                      uint8_t out[STORE_HASH_LEN])
{
    Smtpsync__Revision c = *r;
    struct canon_change *cc = NULL;
    Smtpsync__Change **ptrs = NULL;
    EVP_MD_CTX *ctx = NULL;
    unsigned int outlen = 0;
    uint8_t *buf = NULL;
    size_t len;
    int rc = -ENOMEM;

    if (r->n_changes > 0) {
        cc = calloc(r->n_changes, sizeof(*cc));
        ptrs = calloc(r->n_changes, sizeof(*ptrs));
        if (cc == NULL || ptrs == NULL)
            goto free_all;
    }
    for (size_t i = 0; i < r->n_changes; i++) {
        cc[i].change = *r->changes[i];
        if (cc[i].change.settings != NULL) {
            canon_settings(&cc[i].settings, cc[i].change.settings);
            cc[i].change.settings = &cc[i].settings.settings;
        }
        ptrs[i] = &cc[i].change;
    }
    c.changes = ptrs;
    c.hash = (ProtobufCBinaryData){0};
    len = smtpsync__revision__get_packed_size(&c);
    buf = malloc(len ? len : 1);
    if (buf == NULL)
        goto free_all;
    smtpsync__revision__pack(&c, buf);

    rc = ERROR_CRYPTO;
    ctx = EVP_MD_CTX_new();
    if (ctx == NULL)
        goto free_all;
    if (EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1 ||
        EVP_DigestUpdate(ctx, prev, STORE_HASH_LEN) != 1 || EVP_DigestUpdate(ctx, buf, len) != 1 ||
        EVP_DigestFinal_ex(ctx, out, &outlen) != 1 || outlen != STORE_HASH_LEN)
        goto free_all;
    rc = 0;
free_all:
    EVP_MD_CTX_free(ctx);
    free(buf);
    free(ptrs);
    free(cc);
    return rc;
}

/*
 * The canonical digest of a state (internal.h). A Snapshot message packs
 * its repeated `records` one after the other, each as tag, length, record;
 * so packing a Snapshot of one record at a time and hashing the pieces in
 * order gives the digest of the whole message without building it.
 */
int store__state_digest(const struct store_state *s, uint8_t out[STORE_HASH_LEN])
{
    EVP_MD_CTX *ctx;
    unsigned int outlen = 0;
    uint8_t *buf = NULL, *grown;
    size_t cap = 0;
    int rc = ERROR_CRYPTO;

    ctx = EVP_MD_CTX_new();
    if (ctx == NULL || EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1)
        goto free_ctx;
    for (size_t i = 0; i < s->n; i++) {
        Smtpsync__Settings *m = store__record_unpack(s->v[i].data, s->v[i].len);
        Smtpsync__Settings *rec;
        struct canon_settings cs;
        Smtpsync__Snapshot snap;
        size_t len;

        if (m == NULL) {
            rc = ERROR_CORRUPT;
            goto free_ctx;
        }
        canon_settings(&cs, m);
        rec = &cs.settings;
        smtpsync__snapshot__init(&snap);
        snap.n_records = 1;
        snap.records = &rec;
        len = smtpsync__snapshot__get_packed_size(&snap);
        if (len > cap) {
            grown = realloc(buf, len);
            if (grown == NULL) {
                smtpsync__settings__free_unpacked(m, NULL);
                rc = -ENOMEM;
                goto free_ctx;
            }
            buf = grown;
            cap = len;
        }
        smtpsync__snapshot__pack(&snap, buf);
        smtpsync__settings__free_unpacked(m, NULL);
        if (EVP_DigestUpdate(ctx, buf, len) != 1)
            goto free_ctx;
    }
    if (EVP_DigestFinal_ex(ctx, out, &outlen) != 1 || outlen != STORE_HASH_LEN)
        goto free_ctx;
    rc = 0;
free_ctx:
    EVP_MD_CTX_free(ctx);
    free(buf);
    return rc;
}

/*
 * Rebuilds into `out` the state at `revision` (base <= revision <= head):
 * the snapshot, checked against meta's base_state_hash, then every history
 * row after the base replayed. With `hash`, also recomputes the chain from
 * meta's base hash, checks each row's stored hash, and leaves h(revision)
 * in `hash`.
 */
static int state_rebuild(struct store *st, MDB_txn *txn, const struct store_meta *meta,
                         uint64_t revision, uint8_t *hash, struct store_state *out)
{
    uint8_t kb[8], next_hash[STORE_HASH_LEN], digest[STORE_HASH_LEN];
    Smtpsync__Revision *r;
    MDB_cursor *cur;
    MDB_val key, val;
    uint64_t next;
    int rc;

    rc = store__state_load(txn, st->snapshot, out);
    if (rc == 0)
        rc = store__state_digest(out, digest);
    if (rc != 0)
        return rc;
    /* The chain covers history only; this covers what it is replayed onto. */
    if (memcmp(digest, meta->base_state_hash, STORE_HASH_LEN) != 0)
        return ERROR_CORRUPT;
    if (hash != NULL)
        memcpy(hash, meta->base_hash, STORE_HASH_LEN);
    if (revision <= meta->base_revision)
        return 0;
    rc = mdb_cursor_open(txn, st->history, &cur);
    if (rc != 0)
        return rc;
    next = meta->base_revision + 1;
    key = dbenv_key_u64(next, kb);
    rc = mdb_cursor_get(cur, &key, &val, MDB_SET_RANGE);
    for (;;) {
        if (rc == MDB_NOTFOUND)
            rc = ERROR_CORRUPT; /* a row is missing */
        if (rc != 0)
            break;
        if (key.mv_size != 8 || dbenv_get_u64(key.mv_data) != next) {
            rc = ERROR_CORRUPT;
            break;
        }
        r = smtpsync__revision__unpack(NULL, val.mv_size, val.mv_data);
        if (r == NULL) {
            rc = ERROR_CORRUPT;
            break;
        }
        rc = r->revision == next ? 0 : ERROR_CORRUPT;
        if (rc == 0 && hash != NULL) {
            rc = store__chain_hash(hash, r, next_hash);
            if (rc == 0 && (r->hash.len != STORE_HASH_LEN ||
                            memcmp(r->hash.data, next_hash, STORE_HASH_LEN) != 0))
                rc = ERROR_CORRUPT;
            if (rc == 0)
                memcpy(hash, next_hash, STORE_HASH_LEN);
        }
        if (rc == 0)
            rc = state_apply(out, r);
        smtpsync__revision__free_unpacked(r, NULL);
        if (rc != 0 || next == revision)
            break;
        next++;
        rc = mdb_cursor_get(cur, &key, &val, MDB_NEXT);
    }
    mdb_cursor_close(cur);
    return rc;
}

/* The state at `revision`: the current records when it is the head. */
int store__state_at(struct store *st, MDB_txn *txn, const struct store_meta *meta,
                    uint64_t revision, struct store_state *out)
{
    if (revision < meta->base_revision)
        return ERROR_COMPACTED;
    if (revision > meta->revision)
        return ERROR_INVALID;
    if (revision == meta->revision)
        return store__state_load(txn, st->settings, out);
    return state_rebuild(st, txn, meta, revision, NULL, out);
}

/* ------------------------------------------------------------------------ */
/* Writing a revision. */

/*
 * Appends revision meta->revision + 1 with `changes` (PUT changes carry
 * the whole record as stored, sealed secret included) inside `txn`: the
 * history row with its chain hash, the current records, and meta.
 */
int store__revision_commit(struct store *st, MDB_txn *txn, struct store_meta *meta,
                           const struct store_commit *commit, Smtpsync__Change **changes, size_t n,
                           uint64_t rollback_of, uint64_t *rev_out)
{
    Smtpsync__Revision r;
    uint8_t hash[STORE_HASH_LEN], kb[8];
    MDB_val key, val;
    int rc;

    smtpsync__revision__init(&r);
    r.revision = meta->revision + 1;
    r.epoch = meta->epoch;
    r.time_ms = commit->time_ms != 0 ? commit->time_ms : store__now_ms();
    r.actor = BORROW_CONST(commit->actor);
    r.comment = BORROW_CONST(commit->comment != NULL ? commit->comment : "");
    r.n_changes = n;
    r.changes = changes;
    r.rollback_of = rollback_of;
    rc = store__chain_hash(meta->hash, &r, hash);
    if (rc != 0)
        return rc;
    r.hash = (ProtobufCBinaryData){.len = STORE_HASH_LEN, .data = hash};

    key = dbenv_key_u64(r.revision, kb);
    val.mv_size = smtpsync__revision__get_packed_size(&r);
    rc = mdb_put(txn, st->history, &key, &val, MDB_NOOVERWRITE | MDB_RESERVE);
    if (rc == MDB_KEYEXIST)
        return ERROR_CORRUPT; /* a row beyond meta's head */
    if (rc != 0)
        return rc;
    smtpsync__revision__pack(&r, val.mv_data);

    for (size_t i = 0; i < n; i++) {
        key = dbenv_key_str(changes[i]->instance);
        if (changes[i]->kind == SMTPSYNC__CHANGE_KIND__CHANGE_KIND_DELETE) {
            rc = mdb_del(txn, st->settings, &key, NULL);
            if (rc == MDB_NOTFOUND)
                rc = 0;
        } else {
            val.mv_size = smtpsync__settings__get_packed_size(changes[i]->settings);
            rc = mdb_put(txn, st->settings, &key, &val, MDB_RESERVE);
            if (rc == 0)
                smtpsync__settings__pack(changes[i]->settings, val.mv_data);
        }
        if (rc != 0)
            return rc;
    }

    meta->revision = r.revision;
    meta->revision_time_ms = r.time_ms;
    memcpy(meta->hash, hash, STORE_HASH_LEN);
    rc = store__meta_write(st, txn, meta);
    if (rc == 0 && rev_out != NULL)
        *rev_out = r.revision;
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Rollback. */

struct rollback_ctx {
    struct store *st;
    uint64_t target;
    const struct store_commit *commit;
    uint64_t revision;
};

/* True if the packed records a and b differ in a field; ERROR_CORRUPT and
 * friends through *rc. Secrets compare by id: nothing is unsealed. */
static bool packed_differs(struct store *st, const struct store_state_entry *a,
                           const struct store_state_entry *b, int *rc)
{
    struct settings ra, rb;
    bool differs = false;

    settings_init(&ra);
    settings_init(&rb);
    *rc = store__record_decode(st, a->data, a->len, a->instance, 0, &ra);
    if (*rc == 0)
        *rc = store__record_decode(st, b->data, b->len, b->instance, 0, &rb);
    if (*rc == 0)
        differs = store__record_differs(&ra, &rb);
    settings_clear(&ra);
    settings_clear(&rb);
    return differs;
}

static int rollback_body(MDB_txn *txn, void *arg)
{
    struct rollback_ctx *c = arg;
    struct store *st = c->st;
    struct store_state then = {0}, now = {0};
    Smtpsync__Change *changes = NULL, **ptrs = NULL;
    struct store_meta meta;
    size_t i = 0, j = 0, n = 0;
    int rc;

    rc = store__meta_read(st, txn, &meta);
    if (rc != 0)
        return rc;
    rc = store__state_at(st, txn, &meta, c->target, &then);
    if (rc == 0)
        rc = store__state_load(txn, st->settings, &now);
    if (rc != 0)
        goto free_states;
    changes = calloc(then.n + now.n + 1, sizeof(*changes));
    ptrs = calloc(then.n + now.n + 1, sizeof(*ptrs));
    if (changes == NULL || ptrs == NULL) {
        rc = -ENOMEM;
        goto free_changes;
    }
    /* Merge the two sorted states: put back what was there then and differs
     * or is gone, delete what did not exist then. */
    while (rc == 0 && (i < then.n || j < now.n)) {
        int cmp = i == then.n ? 1 : j == now.n ? -1 : strcmp(then.v[i].instance, now.v[j].instance);
        const struct store_state_entry *put = NULL;

        if (cmp < 0) {
            put = &then.v[i++];
        } else if (cmp > 0) {
            smtpsync__change__init(&changes[n]);
            changes[n].instance = now.v[j++].instance;
            changes[n].kind = SMTPSYNC__CHANGE_KIND__CHANGE_KIND_DELETE;
            ptrs[n] = &changes[n];
            n++;
        } else {
            if (packed_differs(st, &then.v[i], &now.v[j], &rc))
                put = &then.v[i];
            i++;
            j++;
        }
        if (put == NULL)
            continue;
        smtpsync__change__init(&changes[n]);
        changes[n].instance = BORROW_CONST(put->instance);
        changes[n].kind = SMTPSYNC__CHANGE_KIND__CHANGE_KIND_PUT;
        /* The old record as stored: its sealed password comes back as is. */
        changes[n].settings = store__record_unpack(put->data, put->len);
        ptrs[n] = &changes[n];
        n++;
        if (changes[n - 1].settings == NULL)
            rc = ERROR_CORRUPT;
    }
    if (rc == 0 && n == 0)
        rc = ERROR_EMPTY;
    if (rc == 0)
        rc = store__revision_commit(st, txn, &meta, c->commit, ptrs, n, c->target, &c->revision);
free_changes:
    for (size_t k = 0; k < n; k++)
        if (changes[k].settings != NULL)
            smtpsync__settings__free_unpacked(changes[k].settings, NULL);
    free(ptrs);
    free(changes);
free_states:
    store__state_free(&then);
    store__state_free(&now);
    return rc;
}

int store_rollback(struct store *st, uint64_t revision, const struct store_commit *commit,
                   uint64_t *revision_out)
{
    struct rollback_ctx c = {.st = st, .target = revision, .commit = commit};
    int rc;

    rc = store__check_commit(commit);
    if (rc != 0)
        return rc;
    /* 0 means "current" elsewhere in this API; here it would silently
     * delete every record, so it is refused. */
    if (revision == 0)
        return ERROR_INVALID;
    rc = dbenv_write(st->env, rollback_body, &c, 0);
    if (rc == 0 && revision_out != NULL)
        *revision_out = c.revision;
    return rc;
}

/* ------------------------------------------------------------------------ */
/* History and diff. */

/* The rows of store_history(), built whole before the first callback. */
struct history_rows {
    Smtpsync__Revision **msgs;
    struct store_revision *rows;
    const char **ids; /* every row's instance ids, one array */
    bool *deleted;    /* and their flags */
    size_t n;
};

static void history_rows_free(struct history_rows *h)
{
    for (size_t i = 0; i < h->n; i++)
        smtpsync__revision__free_unpacked(h->msgs[i], NULL);
    free(h->msgs);
    free(h->rows);
    free(h->ids);
    free(h->deleted);
}

/* Reads the newest `limit` rows (0: all) into h->msgs, newest first. */
static int history_read(struct store *st, size_t limit, struct history_rows *h)
{
    Smtpsync__Revision **grown;
    size_t cap = 0;
    MDB_cursor *cur;
    MDB_txn *txn;
    MDB_val key, val;
    int rc;

    rc = dbenv_txn_read(st->env, &txn);
    if (rc != 0)
        return rc;
    rc = mdb_cursor_open(txn, st->history, &cur);
    if (rc != 0)
        goto txn_abort;
    for (rc = mdb_cursor_get(cur, &key, &val, MDB_LAST); rc == 0 && (limit == 0 || h->n < limit);
         rc = mdb_cursor_get(cur, &key, &val, MDB_PREV)) {
        Smtpsync__Revision *r;

        if (h->n == cap) {
            cap = cap ? cap * 2 : 16;
            grown = realloc(h->msgs, cap * sizeof(*grown));
            if (grown == NULL) {
                rc = -ENOMEM;
                break;
            }
            h->msgs = grown;
        }
        r = smtpsync__revision__unpack(NULL, val.mv_size, val.mv_data);
        if (r == NULL) {
            rc = ERROR_CORRUPT;
            break;
        }
        h->msgs[h->n++] = r;
        if (key.mv_size != 8 || r->revision != dbenv_get_u64(key.mv_data) ||
            r->hash.len != STORE_HASH_LEN) {
            rc = ERROR_CORRUPT;
            break;
        }
    }
    if (rc == MDB_NOTFOUND)
        rc = 0;
    mdb_cursor_close(cur);
txn_abort:
    mdb_txn_abort(txn);
    return dbenv_error(rc);
}

/* Fills h->rows from h->msgs: everything a callback sees. */
static int history_build(struct history_rows *h)
{
    size_t total = 0, k = 0;

    for (size_t i = 0; i < h->n; i++)
        total += h->msgs[i]->n_changes;
    h->rows = calloc(h->n + 1, sizeof(*h->rows));
    h->ids = calloc(total + 1, sizeof(*h->ids));
    h->deleted = calloc(total + 1, sizeof(*h->deleted));
    if (h->rows == NULL || h->ids == NULL || h->deleted == NULL)
        return -ENOMEM;
    for (size_t i = 0; i < h->n; i++) {
        const Smtpsync__Revision *r = h->msgs[i];
        struct store_revision *sr = &h->rows[i];

        sr->revision = r->revision;
        sr->epoch = r->epoch;
        sr->rollback_of = r->rollback_of;
        sr->time_ms = r->time_ms;
        sr->actor = r->actor;
        sr->comment = r->comment;
        memcpy(sr->hash, r->hash.data, STORE_HASH_LEN);
        sr->nchanges = r->n_changes;
        sr->instances = &h->ids[k];
        sr->deleted = &h->deleted[k];
        for (size_t c = 0; c < r->n_changes; c++, k++) {
            h->ids[k] = r->changes[c]->instance;
            h->deleted[k] = r->changes[c]->kind == SMTPSYNC__CHANGE_KIND__CHANGE_KIND_DELETE;
        }
    }
    return 0;
}

int store_history(struct store *st, size_t limit, store_history_cb cb, void *arg)
{
    struct history_rows h = {0};
    int rc;

    /* Every row is read and built before the first callback: a failure
     * (corrupt row, no memory) is returned with no callback made. */
    rc = history_read(st, limit, &h);
    if (rc == 0)
        rc = history_build(&h);
    for (size_t i = 0; i < h.n && rc == 0; i++)
        rc = cb(&h.rows[i], arg);
    history_rows_free(&h);
    return rc;
}

struct diff_list {
    struct diff_item {
        const char *instance; /* borrowed from a state */
        enum settings_field field;
        char *old_value;
        char *new_value;
    } * v;
    size_t n;
    size_t cap;
};

#define STORE_DIFF_VALUE_MAX 4096

static int diff_add(struct diff_list *l, const char *instance, enum settings_field f,
                    const char *old_value, const char *new_value)
{
    struct diff_item *grown, *d;

    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 16;
        grown = realloc(l->v, cap * sizeof(*grown));
        if (grown == NULL)
            return -ENOMEM;
        l->v = grown;
        l->cap = cap;
    }
    d = &l->v[l->n];
    d->instance = instance;
    d->field = f;
    d->old_value = strdup(old_value);
    d->new_value = strdup(new_value);
    if (d->old_value == NULL || d->new_value == NULL) {
        free(d->old_value);
        free(d->new_value);
        return -ENOMEM;
    }
    l->n++;
    return 0;
}

/* Adds the differing fields of one instance; a or b is NULL when the
 * record does not exist on that side, and then every field it has set is
 * listed against "". */
static int diff_instance(struct store *st, struct diff_list *l, const struct store_state_entry *a,
                         const struct store_state_entry *b)
{
    const char *instance = a != NULL ? a->instance : b->instance;
    struct settings ra, rb;
    char *va = NULL, *vb = NULL;
    int rc = -ENOMEM;

    settings_init(&ra);
    settings_init(&rb);
    va = malloc(STORE_DIFF_VALUE_MAX);
    vb = malloc(STORE_DIFF_VALUE_MAX);
    if (va == NULL || vb == NULL)
        goto clear_all;
    rc = a != NULL ? store__record_decode(st, a->data, a->len, a->instance, 0, &ra) : 0;
    if (rc == 0 && b != NULL)
        rc = store__record_decode(st, b->data, b->len, b->instance, 0, &rb);
    for (int i = 0; i < SETTINGS_F_COUNT && rc == 0; i++) {
        enum settings_field f = (enum settings_field)i;

        if (a != NULL && b != NULL && !settings_field_differs(&ra, &rb, f))
            continue;
        va[0] = vb[0] = '\0';
        if (a != NULL && settings_field_format(&ra, f, va, STORE_DIFF_VALUE_MAX) != 0)
            rc = -ENOSPC;
        if (b != NULL && settings_field_format(&rb, f, vb, STORE_DIFF_VALUE_MAX) != 0)
            rc = -ENOSPC;
        if (rc == 0 && (a == NULL || b == NULL) && va[0] == '\0' && vb[0] == '\0')
            continue;
        if (rc == 0)
            rc = diff_add(l, instance, f, va, vb);
    }
clear_all:
    free(va);
    free(vb);
    settings_clear(&ra);
    settings_clear(&rb);
    return rc;
}

int store_diff(struct store *st, uint64_t from, uint64_t to, store_diff_cb cb, void *arg)
{
    struct store_state a = {0}, b = {0};
    struct diff_list l = {0};
    struct store_meta meta;
    size_t i = 0, j = 0;
    MDB_txn *txn;
    int rc;

    rc = dbenv_txn_read(st->env, &txn);
    if (rc != 0)
        return rc;
    rc = store__meta_read(st, txn, &meta);
    if (rc == 0)
        rc = store__state_at(st, txn, &meta, from, &a);
    if (rc == 0)
        rc = store__state_at(st, txn, &meta, to, &b);
    mdb_txn_abort(txn);
    rc = dbenv_error(rc);

    while (rc == 0 && (i < a.n || j < b.n)) {
        int cmp = i == a.n ? 1 : j == b.n ? -1 : strcmp(a.v[i].instance, b.v[j].instance);
        if (cmp < 0)
            rc = diff_instance(st, &l, &a.v[i++], NULL);
        else if (cmp > 0)
            rc = diff_instance(st, &l, NULL, &b.v[j++]);
        else
            rc = diff_instance(st, &l, &a.v[i++], &b.v[j++]);
    }
    for (size_t k = 0; k < l.n && rc == 0; k++) {
        struct store_diff d = {
            .instance = l.v[k].instance,
            .field = settings_field_name(l.v[k].field),
            .old_value = l.v[k].old_value,
            .new_value = l.v[k].new_value,
        };
        rc = cb(&d, arg);
    }
    for (size_t k = 0; k < l.n; k++) {
        free(l.v[k].old_value);
        free(l.v[k].new_value);
    }
    free(l.v);
    store__state_free(&a);
    store__state_free(&b);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Compaction and verification. */

struct compact_ctx {
    struct store *st;
    uint64_t keep;
    uint64_t removed;
};

static int compact_body(MDB_txn *txn, void *arg)
{
    struct compact_ctx *c = arg;
    struct store *st = c->st;
    uint8_t hash[STORE_HASH_LEN], kb[8];
    struct store_meta meta;
    struct store_state s = {0};
    uint64_t base;
    MDB_val key, val;
    int rc;

    c->removed = 0;
    rc = store__meta_read(st, txn, &meta);
    if (rc != 0)
        return rc;
    if (meta.revision - meta.base_revision <= c->keep)
        return 0;
    base = meta.revision - c->keep;
    /* The chain is checked on the way: a corrupt history must not be
     * laundered into a snapshot and a fresh base hash. */
    rc = state_rebuild(st, txn, &meta, base, hash, &s);
    if (rc == 0)
        rc = store__state_digest(&s, meta.base_state_hash);
    if (rc == 0)
        rc = mdb_drop(txn, st->snapshot, 0);
    for (size_t i = 0; i < s.n && rc == 0; i++) {
        key = dbenv_key_str(s.v[i].instance);
        val = (MDB_val){.mv_size = s.v[i].len, .mv_data = s.v[i].data};
        rc = mdb_put(txn, st->snapshot, &key, &val, 0);
    }
    for (uint64_t r = meta.base_revision + 1; r <= base && rc == 0; r++) {
        key = dbenv_key_u64(r, kb);
        rc = mdb_del(txn, st->history, &key, NULL);
    }
    if (rc == 0) {
        c->removed = base - meta.base_revision;
        meta.base_revision = base;
        memcpy(meta.base_hash, hash, STORE_HASH_LEN);
        rc = store__meta_write(st, txn, &meta);
    }
    store__state_free(&s);
    return rc;
}

int store_compact(struct store *st, uint64_t keep, uint64_t *removed)
{
    struct compact_ctx c = {.st = st, .keep = keep};
    int rc;

    if (keep == 0)
        return ERROR_INVALID;
    rc = dbenv_write(st->env, compact_body, &c, 0);
    if (rc == 0 && removed != NULL)
        *removed = c.removed;
    return rc;
}

int store_verify(struct store *st)
{
    uint8_t hash[STORE_HASH_LEN];
    struct store_state built = {0}, cur = {0};
    struct store_meta meta;
    struct settings rec;
    MDB_stat hs;
    MDB_txn *txn;
    int rc;

    settings_init(&rec);
    rc = dbenv_txn_read(st->env, &txn);
    if (rc != 0)
        return rc;
    rc = store__meta_read(st, txn, &meta);
    if (rc == 0)
        rc = state_rebuild(st, txn, &meta, meta.revision, hash, &built);
    if (rc == 0 && memcmp(hash, meta.hash, STORE_HASH_LEN) != 0)
        rc = ERROR_CORRUPT;
    /* No row may exist outside base+1 .. head. */
    if (rc == 0)
        rc = mdb_stat(txn, st->history, &hs);
    if (rc == 0 && hs.ms_entries != meta.revision - meta.base_revision)
        rc = ERROR_CORRUPT;
    if (rc == 0)
        rc = store__state_load(txn, st->settings, &cur);
    mdb_txn_abort(txn);
    rc = dbenv_error(rc);
    if (rc == 0 && built.n != cur.n)
        rc = ERROR_CORRUPT;
    for (size_t i = 0; i < cur.n && rc == 0; i++) {
        if (strcmp(built.v[i].instance, cur.v[i].instance) != 0 || built.v[i].len != cur.v[i].len ||
            memcmp(built.v[i].data, cur.v[i].data, cur.v[i].len) != 0) {
            rc = ERROR_CORRUPT;
            break;
        }
        /* Every current record must decode, and its password open under
         * this node's key (ERROR_TAMPERED otherwise). */
        rc = store__record_decode(st, cur.v[i].data, cur.v[i].len, cur.v[i].instance, STORE_UNSEAL,
                                  &rec);
        settings_clear(&rec);
    }
    store__state_free(&built);
    store__state_free(&cur);
    return rc;
}
