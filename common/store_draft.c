#include "store.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <lmdb.h>

#include "dbenv.h"
#include "error.h"
#include "settings_pb.h"
#include "internal.h"

/*
 * This file: drafts (put, get, discard, list) and save, which validates
 * drafts and turns them into one new revision.
 */

/* ------------------------------------------------------------------------ */
/* Drafts. */

struct draft_put_ctx {
    struct store *st;
    const char *instance;
    uint8_t *data;
    size_t len;
};

static int draft_put_body(MDB_txn *txn, void *arg)
{
    struct draft_put_ctx *c = arg;
    MDB_val key = dbenv_key_str(c->instance), val = {.mv_size = c->len, .mv_data = c->data};

    return mdb_put(txn, c->st->drafts, &key, &val, 0);
}

int store_draft_put(struct store *st, const struct settings *s)
{
    struct draft_put_ctx c = {.st = st, .instance = s->instance};
    int rc;

    if (!settings_instance_valid(s->instance) || s->nrelays > SETTINGS_RELAYS_MAX)
        return ERROR_INVALID;
    /* What settings_pb_decode() would refuse must not be stored: the draft
     * could never be read back. */
    if (s->trust_certificate != NULL &&
        strnlen(s->trust_certificate, SETTINGS_PEM_MAX + 1) > SETTINGS_PEM_MAX)
        return ERROR_TOO_BIG;
    rc = store__record_pack(st, s, &c.data, &c.len);
    if (rc != 0)
        return rc;
    rc = dbenv_write(st->env, draft_put_body, &c, c.len);
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
    rc = dbenv_txn_read(st->env, &txn);
    if (rc != 0)
        return rc;
    key = dbenv_key_str(instance);
    rc = mdb_get(txn, st->drafts, &key, &val);
    if (rc == MDB_NOTFOUND)
        rc = ERROR_NOT_FOUND;
    if (rc == 0)
        rc = store__record_decode(st, val.mv_data, val.mv_size, instance, flags, out);
    mdb_txn_abort(txn);
    return dbenv_error(rc);
}

struct draft_discard_ctx {
    struct store *st;
    const char *instance; /* NULL: every draft */
};

static int draft_discard_body(MDB_txn *txn, void *arg)
{
    struct draft_discard_ctx *c = arg;
    struct store *st = c->st;
    MDB_stat ms;
    MDB_val key;
    int rc;

    if (c->instance != NULL) {
        key = dbenv_key_str(c->instance);
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
    struct draft_discard_ctx c = {st, instance};

    if (instance != NULL && !settings_instance_valid(instance))
        return ERROR_INVALID;
    return dbenv_write(st->env, draft_discard_body, &c, 0);
}

int store_draft_each(struct store *st, unsigned flags, store_each_cb cb, void *arg)
{
    struct store_state s = {0};
    MDB_txn *txn;
    int rc;

    rc = dbenv_txn_read(st->env, &txn);
    if (rc != 0)
        return rc;
    rc = store__state_load(txn, st->drafts, &s);
    mdb_txn_abort(txn);
    rc = dbenv_error(rc);
    if (rc == 0)
        rc = store__state_each(st, &s, flags, cb, arg);
    store__state_free(&s);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Save. */

struct save_item {
    char instance[SETTINGS_INSTANCE_MAX + 1];
    Smtpsync__Settings *msg; /* the draft as stored; NULL if it does not unpack */
    bool changed;
};

struct save_ctx {
    struct store *st;
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
            key = dbenv_key_str(c->instances[i]);
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
        /* A draft that does not unpack is reported by save_check(). */
        items[n].msg = store__record_unpack(val.mv_data, val.mv_size);
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

/* Adds the problems of one draft to the caller's list, each field name
 * prefixed with "<instance>.". */
static void save_problems_add(struct save_ctx *c, const char *instance,
                              const struct settings_problems *local)
{
    char field[sizeof(local->items[0].field) + SETTINGS_INSTANCE_MAX + 2];

    if (c->problems == NULL)
        return;
    for (size_t i = 0; i < local->count; i++) {
        snprintf(field, sizeof(field), "%s.%s", instance, local->items[i].field);
        settings_problem_add(c->problems, field, local->items[i].incomplete, "%s",
                             local->items[i].message);
    }
    c->problems->dropped += local->dropped;
}

/* Validates one draft fully, adding its problems to the caller's list
 * (save_problems_add); notes whether it changes the current record. A draft
 * that cannot be read back is a problem of that draft, not a failure of the
 * save: the operator learns which instance to set again. */
static int save_check(struct store *st, MDB_txn *txn, struct save_ctx *c, struct save_item *item,
                      bool *valid)
{
    struct settings_problems *local;
    struct settings draft, current;
    MDB_val key = dbenv_key_str(item->instance), val;
    int rc;

    if (item->msg == NULL) {
        *valid = false;
        settings_problem_add(c->problems, item->instance, false,
                             "the draft is damaged and cannot be read; discard it and enter the "
                             "settings again");
        return 0;
    }
    local = calloc(1, sizeof(*local));
    if (local == NULL)
        return -ENOMEM;
    settings_init(&draft);
    settings_init(&current);
    /* Unsealed so the password's own rules are checked too, and so a secret
     * that no longer opens is refused before it is committed. */
    rc = store__record_decode_msg(st, item->msg, item->instance, STORE_UNSEAL, &draft, local);
    if (rc == ERROR_CORRUPT || rc == ERROR_TAMPERED) {
        *valid = false;
        /* Each refusal above names its field; a refusal without one must
         * still not leave the operator with a bare "invalid". */
        if (local->count + local->dropped == 0)
            settings_problem_add(local, "instance", false, "the draft cannot be read back");
        save_problems_add(c, item->instance, local);
        rc = 0;
        goto free_local;
    }
    if (rc != 0)
        goto free_local;
    if (settings_validate(&draft, NULL, time(NULL), local) != 0) {
        *valid = false;
        save_problems_add(c, item->instance, local);
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
static int save_body(MDB_txn *txn, void *arg)
{
    struct save_ctx *c = arg;
    struct store *st = c->st;
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
        key = dbenv_key_str(items[i].instance);
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
        .st = st,
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
    rc = dbenv_write(st->env, save_body, &c, 0);
    if (rc == 0 && revision_out != NULL)
        *revision_out = c.revision;
    return rc;
}
