/*
 * outbox: see outbox.h.
 *
 * Every change runs in one write transaction (dbenv_write) that is run
 * again whole, with a larger map, after MDB_MAP_FULL, so a transaction body
 * keeps no effect outside its transaction; leases, which live in memory,
 * change only after the commit. The jobs of outbox_submit_async() and
 * outbox_apply_async() run on the libuv thread pool, one group at a time
 * (LMDB has one writer anyway): those queued while a group runs make the
 * next, one transaction with a nested one per job, so one commit (one
 * fsync) for all. Leases and the job queue are touched on the loop thread
 * only. What dbenv_ returns is of error.h's
 * convention already; what mdb_* calls outside it return goes through
 * dbenv_error() before it leaves an outbox_* function.
 *
 * Records, due keys, error texts and the lease set are in outbox_record.c.
 * Records are decoded in one place (outbox__record_unpack) with size limits
 * and checks; a pending record that fails them is not handed out: outbox_take
 * moves it to `dead` with its raw bytes as the message and a reason, so
 * one damaged record can never stop the queue. Everything else that meets
 * one reports ERROR_CORRUPT.
 */
#include "outbox.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <lmdb.h>

#include "dbenv.h"
#include "error.h"
#include "internal.h"
#include "smtp_message.h"
#include "smtpsync.pb-c.h"

#define OUTBOX_MAP_DEFAULT   ((size_t)64 << 20)
#define OUTBOX_MAXDBS        8
#define OUTBOX_META_NEXT_ID  "next_id"
#define OUTBOX_TOKENCODE_TTL ((int64_t)10 * 60 * 1000)
#define OUTBOX_REPORT_TTL    ((int64_t)5 * 24 * 3600 * 1000)

struct outbox_job;

struct outbox {
    MDB_env *env;
    MDB_dbi pending;
    MDB_dbi due;
    MDB_dbi dead;
    MDB_dbi meta;
    struct outbox_expiry expiry;
    struct outbox_leases leases;
    /* outbox_submit_async(): the job running (NULL: none), then those
     * waiting, oldest first. Loop thread only. */
    struct outbox_job *running, *queue_head, *queue_tail;
    bool sweep_wanted; /* a take skipped what needs a write: outbox_sweep() */
    int64_t sweep_now; /* the latest such take's now_ms */
};

static int64_t add_ms(int64_t t, int64_t d)
{
    if (d > 0 && t > INT64_MAX - d)
        return INT64_MAX;
    return t + d;
}

/* ------------------------------------------------------------------------ */
/* Helpers of the transactions below. */

static int next_id_read(struct outbox *ob, MDB_txn *txn, uint64_t *out)
{
    MDB_val key = dbenv_key_str(OUTBOX_META_NEXT_ID), val;
    int rc = mdb_get(txn, ob->meta, &key, &val);

    if (rc == MDB_NOTFOUND) {
        *out = 1;
        return 0;
    }
    if (rc != 0)
        return rc;
    if (val.mv_size != 8)
        return ERROR_CORRUPT;
    *out = dbenv_get_u64(val.mv_data);
    return *out != 0 ? 0 : ERROR_CORRUPT;
}

static int next_id_write(struct outbox *ob, MDB_txn *txn, uint64_t next)
{
    MDB_val key = dbenv_key_str(OUTBOX_META_NEXT_ID), val;
    uint8_t buf[8];

    val = dbenv_key_u64(next, buf);
    return mdb_put(txn, ob->meta, &key, &val, 0);
}

/* Deletes a key that may be missing. */
static int del_opt(MDB_txn *txn, MDB_dbi dbi, MDB_val *key)
{
    int rc = mdb_del(txn, dbi, key, NULL);

    return rc == MDB_NOTFOUND ? 0 : rc;
}

/* The due key of `id` found by a walk of the whole index: only for a
 * record too damaged to say where its key is. */
static int due_find_scan(struct outbox *ob, MDB_txn *txn, uint64_t id, struct outbox_due *out)
{
    MDB_cursor *cur;
    MDB_val k, v;
    int rc;

    rc = mdb_cursor_open(txn, ob->due, &cur);
    if (rc != 0)
        return rc;
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0;
         rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT))
        if (outbox__due_parse(&k, out) && out->id == id)
            break;
    mdb_cursor_close(cur);
    return rc;
}

/* Removes a pending record (its raw value `val` under `id`) and its due key. */
static int pending_remove(struct outbox *ob, MDB_txn *txn, uint64_t id, const MDB_val *val)
{
    Smtpsync__OutboxMessage *r;
    uint8_t kb[8], db[OUTBOX__DUE_KEY_LEN];
    MDB_val key = dbenv_key_u64(id, kb), dk;
    struct outbox_due d;
    const char *why;
    int rc;

    rc = outbox__record_unpack(val, id, false, &r, &why);
    if (rc == 0) {
        dk = outbox__due_key(r->priority, r->next_try_ms, id, db);
        outbox__record_free(r);
    } else if (rc == ERROR_CORRUPT) {
        rc = due_find_scan(ob, txn, id, &d);
        if (rc == 0)
            dk = outbox__due_key(d.priority, d.next_try_ms, id, db);
        else if (rc != MDB_NOTFOUND)
            return rc;
    }
    if (rc == 0)
        rc = del_opt(txn, ob->due, &dk);
    else if (rc == MDB_NOTFOUND)
        rc = 0;
    if (rc == 0)
        rc = mdb_del(txn, ob->pending, &key, NULL);
    return rc;
}

/* Writes a pending record and its due key; flags are mdb_put()'s, for the
 * record. */
static int pending_put(struct outbox *ob, MDB_txn *txn, const Smtpsync__OutboxMessage *r,
                       unsigned flags)
{
    uint8_t db[OUTBOX__DUE_KEY_LEN];
    MDB_val dk = outbox__due_key(r->priority, r->next_try_ms, r->id, db), empty = {0, NULL};
    int rc = outbox__record_put(txn, ob->pending, r, flags);

    if (rc == 0)
        rc = mdb_put(txn, ob->due, &dk, &empty, 0);
    return rc;
}

/*
 * Moves a pending record to dead. `r` is its decoded record (changed here)
 * with `reason`; with `r` NULL the record is damaged: its raw bytes `raw`
 * become the message of a dead record without recipients, `reason` saying
 * why, and `d` its due key if known.
 */
static int pending_to_dead(struct outbox *ob, MDB_txn *txn, uint64_t id, Smtpsync__OutboxMessage *r,
                           const MDB_val *raw, const struct outbox_due *d, const char *reason,
                           int64_t now_ms)
{
    Smtpsync__OutboxMessage q;
    char kept[OUTBOX_ERROR_MAX + 1];
    uint8_t kb[8], db[OUTBOX__DUE_KEY_LEN];
    MDB_val key = dbenv_key_u64(id, kb), dk;
    char *saved;
    int rc;

    smtpsync__outbox_message__init(&q);
    outbox__error_copy(kept, reason);
    if (r != NULL) {
        dk = outbox__due_key(r->priority, r->next_try_ms, id, db);
        saved = r->dead_reason;
        r->dead_reason = kept;
        r->dead_ms = now_ms;
        rc = outbox__record_put(txn, ob->dead, r, 0);
        r->dead_reason = saved;
    } else {
        /* A copy: `raw` points into a page that writes may spill. */
        q.message.len = raw->mv_size < SMTP_MESSAGE_MAX ? raw->mv_size : SMTP_MESSAGE_MAX;
        q.message.data = malloc(q.message.len + 1);
        if (q.message.data == NULL)
            return -ENOMEM;
        memcpy(q.message.data, raw->mv_data, q.message.len);
        q.id = id;
        q.priority =
            d != NULL ? (Smtpsync__Priority)d->priority : SMTPSYNC__PRIORITY__PRIORITY_REPORT;
        q.dead_reason = kept;
        q.dead_ms = now_ms;
        if (d != NULL)
            dk = outbox__due_key(d->priority, d->next_try_ms, id, db);
        rc = outbox__record_put(txn, ob->dead, &q, 0);
        free(q.message.data);
    }
    if (rc == 0 && (r != NULL || d != NULL))
        rc = del_opt(txn, ob->due, &dk);
    if (rc == 0)
        rc = mdb_del(txn, ob->pending, &key, NULL);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Open and close. */

static int open_body(MDB_txn *txn, void *arg)
{
    struct outbox *ob = arg;
    const struct dbenv_db dbs[] = {
        {"pending", &ob->pending},
        {"due", &ob->due},
        {"dead", &ob->dead},
        {"meta", &ob->meta},
    };
    MDB_dbi ids[2];
    uint64_t next, last = 0;
    int rc;

    rc = dbenv_open_dbs(txn, dbs, sizeof(dbs) / sizeof(dbs[0]));
    if (rc == 0)
        rc = next_id_read(ob, txn, &next);
    if (rc != 0)
        return rc;
    /* An id must never be given twice: should meta lag behind the records
     * (it cannot, short of damage), it moves past the highest id there. */
    ids[0] = ob->pending;
    ids[1] = ob->dead;
    for (size_t i = 0; i < 2; i++) {
        MDB_cursor *cur;
        MDB_val k, v;
        rc = mdb_cursor_open(txn, ids[i], &cur);
        if (rc != 0)
            return rc;
        rc = mdb_cursor_get(cur, &k, &v, MDB_LAST);
        mdb_cursor_close(cur);
        if (rc == MDB_NOTFOUND)
            continue;
        if (rc != 0)
            return rc;
        if (k.mv_size != 8)
            return ERROR_CORRUPT;
        if (dbenv_get_u64(k.mv_data) > last)
            last = dbenv_get_u64(k.mv_data);
    }
    if (last == UINT64_MAX)
        return ERROR_CORRUPT;
    if (next <= last)
        return next_id_write(ob, txn, last + 1);
    return 0;
}

int outbox_open(const struct outbox_params *params, struct outbox **out)
{
    struct dbenv_params ep = {
        .maxdbs = OUTBOX_MAXDBS,
        /* NOTLS: read transactions are not tied to a thread, so the outbox
         * may move between threads (commits on the libuv thread pool). */
        .flags = MDB_NOTLS,
        .mode = 0600,
    };
    struct outbox *ob;
    int rc;

    if (params == NULL || params->dir == NULL || params->dir[0] == '\0' || out == NULL)
        return ERROR_INVALID;
    if (mkdir(params->dir, 0700) != 0 && errno != EEXIST)
        return -errno;
    ob = calloc(1, sizeof(*ob));
    if (ob == NULL)
        return -ENOMEM;
    ob->expiry.tokencode_ms = OUTBOX_TOKENCODE_TTL;
    ob->expiry.report_ms = OUTBOX_REPORT_TTL;
    ep.dir = params->dir;
    ep.map_size = params->map_size != 0 ? params->map_size : OUTBOX_MAP_DEFAULT;
    rc = dbenv_open(&ep, &ob->env);
    if (rc != 0)
        goto free_outbox;
    rc = dbenv_write(ob->env, open_body, ob, 0);
    if (rc != 0)
        goto env_close;
    *out = ob;
    return 0;
env_close:
    mdb_env_close(ob->env);
free_outbox:
    free(ob);
    return rc;
}

void outbox_close(struct outbox *ob)
{
    if (ob == NULL)
        return;
    mdb_env_close(ob->env);
    free(ob->leases.slot);
    free(ob);
}

const char *outbox_priority_name(enum outbox_priority p)
{
    switch (p) {
    case OUTBOX_TOKENCODE:
        return "tokencode";
    case OUTBOX_REPORT:
        return "report";
    }
    return "unknown";
}

void outbox_set_expiry(struct outbox *ob, const struct outbox_expiry *e)
{
    ob->expiry.tokencode_ms = e->tokencode_ms > 0 ? e->tokencode_ms : OUTBOX_TOKENCODE_TTL;
    ob->expiry.report_ms = e->report_ms > 0 ? e->report_ms : OUTBOX_REPORT_TTL;
}

static int64_t default_expiry(const struct outbox *ob, int priority, int64_t now_ms)
{
    return add_ms(now_ms,
                  priority == OUTBOX_TOKENCODE ? ob->expiry.tokencode_ms : ob->expiry.report_ms);
}

/* ------------------------------------------------------------------------ */
/* Submit. */

struct submit_ctx {
    struct outbox *ob;
    const struct outbox_new *msgs;
    size_t n;
    int64_t now_ms;
    uint64_t *ids;
};

static int submit_body(MDB_txn *txn, void *arg)
{
    struct submit_ctx *c = arg;
    struct outbox *ob = c->ob;
    uint64_t next;
    int rc;

    rc = next_id_read(ob, txn, &next);
    if (rc != 0)
        return rc;
    if (next > UINT64_MAX - c->n)
        return ERROR_CORRUPT;
    for (size_t i = 0; i < c->n; i++) {
        const struct outbox_new *s = &c->msgs[i];
        Smtpsync__OutboxMessage r;

        smtpsync__outbox_message__init(&r);
        r.id = next++;
        r.priority = (Smtpsync__Priority)s->priority;
        r.created_ms = c->now_ms;
        r.expires_ms =
            s->expires_ms != 0 ? s->expires_ms : default_expiry(ob, s->priority, c->now_ms);
        r.next_try_ms = c->now_ms > 0 ? c->now_ms : 0;
        r.mail_from = BORROW_CONST(s->mail_from != NULL ? s->mail_from : "");
        r.n_rcpt_to = s->nrcpts;
        r.rcpt_to = BORROW_CONST(s->rcpts);
        r.message.data = BORROW_CONST(s->message);
        r.message.len = s->message_len;
        /* ids only grow: appending is cheaper, and refused (MDB_KEYEXIST)
         * should meta ever point below a record. */
        rc = pending_put(ob, txn, &r, MDB_APPEND);
        if (rc == MDB_KEYEXIST)
            rc = ERROR_CORRUPT;
        if (rc != 0)
            return rc;
        c->ids[i] = r.id;
    }
    return next_id_write(ob, txn, next);
}

/* ERROR_INVALID or ERROR_TOO_BIG for a message the outbox does not take. */
static int submit_check(const struct outbox_new *s)
{
    if (!outbox__priority_valid(s->priority) || s->nrcpts == 0 ||
        s->nrcpts > SMTP_MESSAGE_RCPT_MAX || s->rcpts == NULL ||
        (s->message == NULL && s->message_len != 0))
        return ERROR_INVALID;
    if (s->message_len > SMTP_MESSAGE_MAX)
        return ERROR_TOO_BIG;
    if (s->mail_from != NULL && strlen(s->mail_from) > OUTBOX_ADDRESS_MAX)
        return ERROR_TOO_BIG;
    if (!outbox__address_valid(s->mail_from, true))
        return ERROR_INVALID;
    for (size_t i = 0; i < s->nrcpts; i++) {
        if (s->rcpts[i] != NULL && strlen(s->rcpts[i]) > OUTBOX_ADDRESS_MAX)
            return ERROR_TOO_BIG;
        if (!outbox__address_valid(s->rcpts[i], false))
            return ERROR_INVALID;
    }
    return 0;
}

int outbox_submit(struct outbox *ob, const struct outbox_new *msgs, size_t n, int64_t now_ms,
                  uint64_t *ids)
{
    struct submit_ctx c = {ob, msgs, n, now_ms, ids};
    size_t need = 0;
    int rc;

    if (n == 0)
        return 0;
    if (msgs == NULL || ids == NULL)
        return ERROR_INVALID;
    for (size_t i = 0; i < n; i++) {
        rc = submit_check(&msgs[i]);
        if (rc != 0)
            return rc;
        need += msgs[i].message_len + 4096;
    }
    return dbenv_write(ob->env, submit_body, &c, need);
}

/* ------------------------------------------------------------------------ */
/* Take. */

struct take_ctx {
    struct outbox *ob;
    int64_t now_ms;
    struct outbox_msg **out;
    size_t max, n;
    bool readonly; /* a read transaction: what needs a write is skipped */
    bool skipped;  /* readonly: something was */
    bool sweep;    /* hands out nothing: only what needs a write is done */
};

static void take_reset(struct take_ctx *c)
{
    for (size_t i = 0; i < c->n; i++) {
        outbox_msg_free(c->out[i]);
        c->out[i] = NULL;
    }
    c->n = 0;
}

/*
 * Handles the due entry `d`: hands it out, or moves it to dead (expired,
 * damaged), or removes a key left without its record or not its record's.
 * *moved tells whether the key is gone from under the cursor. The key is
 * rebuilt from `d` (outbox__due_parse() accepts only the canonical encoding): a
 * key read through a cursor points into a page the deletion changes.
 */
static int take_one(struct outbox *ob, MDB_txn *txn, struct take_ctx *c, const struct outbox_due *d,
                    bool *moved)
{
    char reason[OUTBOX_ERROR_MAX + 64];
    Smtpsync__OutboxMessage *r;
    uint8_t kb[8], db[OUTBOX__DUE_KEY_LEN];
    MDB_val key = dbenv_key_u64(d->id, kb),
            dk = outbox__due_key(d->priority, d->next_try_ms, d->id, db), val;
    const char *why;
    int rc;

    *moved = false;
    rc = mdb_get(txn, ob->pending, &key, &val);
    if (rc == MDB_NOTFOUND) {
        if (c->readonly) {
            c->skipped = true;
            return 0;
        }
        *moved = true;
        return mdb_del(txn, ob->due, &dk, NULL);
    }
    if (rc != 0)
        return rc;
    rc = outbox__record_unpack(&val, d->id, false, &r, &why);
    if (rc == ERROR_CORRUPT) {
        if (c->readonly) {
            c->skipped = true;
            return 0;
        }
        *moved = true;
        snprintf(reason, sizeof(reason), "corrupt record (%s): taken out of the queue", why);
        return pending_to_dead(ob, txn, d->id, NULL, &val, d, reason, c->now_ms);
    }
    if (rc != 0)
        return rc;
    if (c->readonly && ((int)r->priority != d->priority || r->next_try_ms != d->next_try_ms ||
                        c->now_ms >= r->expires_ms)) {
        c->skipped = true; /* left for a take that may write: outbox_sweep() */
        rc = 0;
    } else if ((int)r->priority != d->priority || r->next_try_ms != d->next_try_ms) {
        /* A stale key: the record has its own. */
        *moved = true;
        rc = mdb_del(txn, ob->due, &dk, NULL);
    } else if (c->now_ms >= r->expires_ms) {
        *moved = true;
        if (r->attempts == 0)
            snprintf(reason, sizeof(reason), "expired before any attempt");
        else
            snprintf(reason, sizeof(reason), "expired after %u attempt%s: %s", r->attempts,
                     r->attempts == 1 ? "" : "s", r->last_error);
        rc = pending_to_dead(ob, txn, d->id, r, NULL, NULL, reason, c->now_ms);
    } else if (!c->sweep) {
        rc = outbox__msg_from_record(r, true, &c->out[c->n]);
        if (rc == 0)
            c->n++;
    }
    outbox__record_free(r);
    return rc;
}

static int take_body(MDB_txn *txn, void *arg)
{
    struct take_ctx *c = arg;
    struct outbox *ob = c->ob;
    uint8_t at[OUTBOX__DUE_KEY_LEN];
    MDB_cursor *cur;
    MDB_val k, v;
    struct outbox_due d;
    bool moved;
    int rc;

    take_reset(c);
    rc = mdb_cursor_open(txn, ob->due, &cur);
    if (rc != 0)
        return rc;
    for (int p = OUTBOX_TOKENCODE; p <= OUTBOX_REPORT && c->n < c->max; p++) {
        uint8_t start = (uint8_t)p;

        k = (MDB_val){1, &start};
        rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
        while (rc == 0 && c->n < c->max) {
            if (k.mv_size == 0 || ((const uint8_t *)k.mv_data)[0] != p)
                break;
            /* A key not of ours is left alone; a leased one is being tried.
             * An id is never met twice: only the key its record names is
             * handed out (take_one). */
            if (!outbox__due_parse(&k, &d) || outbox__lease_has(&ob->leases, d.id)) {
                rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
                continue;
            }
            if (d.next_try_ms > c->now_ms)
                break; /* nothing later of this priority is due */
            memcpy(at, k.mv_data, sizeof(at));
            rc = take_one(ob, txn, c, &d, &moved);
            if (rc != 0)
                break;
            if (moved) {
                /* The key at `at` is gone: carry on from the one after it. */
                k = (MDB_val){sizeof(at), at};
                rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
            } else {
                rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
            }
        }
        if (rc != 0 && rc != MDB_NOTFOUND)
            break;
        rc = 0;
    }
    mdb_cursor_close(cur);
    if (rc != 0)
        take_reset(c);
    return rc;
}

int outbox_take(struct outbox *ob, int64_t now_ms, struct outbox_msg **out, size_t max, size_t *n)
{
    struct take_ctx c = {ob, now_ms, out, max, 0, outbox_busy(ob), false, false};
    MDB_txn *txn;
    int rc;

    *n = 0;
    if (max == 0)
        return 0;
    /* Room first: once committed, every message handed out is leased. */
    rc = outbox__lease_reserve(&ob->leases, max);
    if (rc == 0 && c.readonly) {
        /* A write would wait for the job's commit, the loop with it. */
        rc = dbenv_txn_read(ob->env, &txn);
        if (rc == 0) {
            rc = dbenv_error(take_body(txn, &c));
            mdb_txn_abort(txn);
        }
    } else if (rc == 0) {
        rc = dbenv_write(ob->env, take_body, &c, 0);
    }
    if (rc != 0) {
        take_reset(&c);
        return rc;
    }
    for (size_t i = 0; i < c.n; i++)
        outbox__lease_insert(&ob->leases, out[i]->id);
    *n = c.n;
    if (c.skipped) {
        ob->sweep_wanted = true;
        if (now_ms > ob->sweep_now)
            ob->sweep_now = now_ms;
    }
    return 0;
}

/*
 * What takes during jobs left (expired, damaged, stale keys: they need a
 * write), done between two groups of jobs, on the loop (the lease set is
 * the loop's). Without it, under a steady flow of commits, an expired
 * message would stay pending and due for good. Errors wait for the next
 * take, which meets those records again.
 */
static void outbox_sweep(struct outbox *ob)
{
    struct take_ctx c = {ob, ob->sweep_now, NULL, SIZE_MAX, 0, false, false, true};

    ob->sweep_wanted = false;
    (void)dbenv_write(ob->env, take_body, &c, 0);
}

int64_t outbox_next_due(struct outbox *ob)
{
    int64_t best = INT64_MAX;
    MDB_cursor *cur;
    MDB_txn *txn;
    MDB_val k, v;
    struct outbox_due d;
    int rc;

    if (dbenv_txn_read(ob->env, &txn) != 0)
        return 0;
    if (mdb_cursor_open(txn, ob->due, &cur) != 0) {
        best = 0;
        goto txn_abort;
    }
    for (int p = OUTBOX_TOKENCODE; p <= OUTBOX_REPORT; p++) {
        uint8_t start = (uint8_t)p;

        k = (MDB_val){1, &start};
        for (rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE); rc == 0;
             rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
            if (k.mv_size == 0 || ((const uint8_t *)k.mv_data)[0] != p)
                break;
            if (!outbox__due_parse(&k, &d) || outbox__lease_has(&ob->leases, d.id))
                continue;
            if (d.next_try_ms < best)
                best = d.next_try_ms;
            break;
        }
        if (rc != 0 && rc != MDB_NOTFOUND)
            best = 0;
    }
    mdb_cursor_close(cur);
txn_abort:
    mdb_txn_abort(txn);
    return best;
}

/* ------------------------------------------------------------------------ */
/* Results. */

struct apply_ctx {
    struct outbox *ob;
    const struct outbox_result *results;
    const struct outbox_rcpts *rcpts; /* NULL, or one per result */
    size_t n;
    int64_t now_ms;
};

/* The recipients of `r` that `keep` names, in r's order, into *out (borrowed
 * from r; free the array only). *n is 0 when `keep` names none. */
static int rcpts_narrow(const Smtpsync__OutboxMessage *r, const struct outbox_rcpts *keep,
                        char ***out, size_t *n)
{
    char **kept = malloc((r->n_rcpt_to > 0 ? r->n_rcpt_to : 1) * sizeof(*kept));

    *n = 0;
    *out = kept;
    if (kept == NULL)
        return -ENOMEM;
    for (size_t i = 0; i < r->n_rcpt_to; i++)
        for (size_t j = 0; j < keep->nrcpts; j++)
            if (strcmp(r->rcpt_to[i], keep->rcpts[j]) == 0) {
                kept[(*n)++] = r->rcpt_to[i];
                break;
            }
    return 0;
}

static int apply_one(struct outbox *ob, MDB_txn *txn, const struct outbox_result *res,
                     const struct outbox_rcpts *keep, int64_t now_ms)
{
    char kept_error[OUTBOX_ERROR_MAX + 1], reason[OUTBOX_ERROR_MAX + 64];
    uint8_t kb[8], db[OUTBOX__DUE_KEY_LEN];
    MDB_val key = dbenv_key_u64(res->id, kb), val, dk;
    Smtpsync__OutboxMessage *r;
    struct outbox_due d;
    char **saved_rcpts, **kept = NULL;
    size_t saved_n, nkept = 0;
    char *saved;
    const char *why;
    int rc;

    if (res->outcome == OUTBOX_RELEASE)
        return 0;
    rc = mdb_get(txn, ob->pending, &key, &val);
    if (rc == MDB_NOTFOUND)
        return 0; /* dropped meanwhile */
    if (rc != 0)
        return rc;
    if (res->outcome == OUTBOX_DELIVERED)
        return pending_remove(ob, txn, res->id, &val);
    rc = outbox__record_unpack(&val, res->id, false, &r, &why);
    if (rc == ERROR_CORRUPT) {
        rc = due_find_scan(ob, txn, res->id, &d);
        if (rc != 0 && rc != MDB_NOTFOUND)
            return rc;
        snprintf(reason, sizeof(reason), "corrupt record (%s): taken out of the queue", why);
        return pending_to_dead(ob, txn, res->id, NULL, &val, rc == 0 ? &d : NULL, reason, now_ms);
    }
    if (rc != 0)
        return rc;
    if (r->attempts < UINT32_MAX)
        r->attempts++;
    if (res->outcome == OUTBOX_DEAD) {
        rc = pending_to_dead(ob, txn, res->id, r, NULL, NULL, res->error, now_ms);
        goto free_record;
    }
    dk = outbox__due_key(r->priority, r->next_try_ms, res->id, db);
    rc = del_opt(txn, ob->due, &dk);
    if (rc != 0)
        goto free_record;
    /* Never later than the expiry: the message goes to dead then, not at
     * some try after it. The key holds no time before the epoch. */
    r->next_try_ms = res->next_try_ms < r->expires_ms ? res->next_try_ms : r->expires_ms;
    if (r->next_try_ms < 0)
        r->next_try_ms = 0;
    if (keep != NULL && keep->nrcpts > 0) {
        rc = rcpts_narrow(r, keep, &kept, &nkept);
        if (rc != 0)
            goto free_record;
    }
    outbox__error_copy(kept_error, res->error);
    /* Borrowed for packing; the unpacked ones go back before free. */
    saved = r->last_error;
    saved_rcpts = r->rcpt_to;
    saved_n = r->n_rcpt_to;
    r->last_error = kept_error;
    if (nkept > 0) {
        r->rcpt_to = kept;
        r->n_rcpt_to = nkept;
    }
    rc = pending_put(ob, txn, r, 0);
    r->last_error = saved;
    r->rcpt_to = saved_rcpts;
    r->n_rcpt_to = saved_n;
free_record:
    free(kept);
    outbox__record_free(r);
    return rc;
}

static int apply_body(MDB_txn *txn, void *arg)
{
    struct apply_ctx *c = arg;
    int rc = 0;

    for (size_t i = 0; i < c->n && rc == 0; i++)
        rc = apply_one(c->ob, txn, &c->results[i], c->rcpts != NULL ? &c->rcpts[i] : NULL,
                       c->now_ms);
    return rc;
}

/* ERROR_INVALID for an unknown outcome or a bad recipient list; *writes
 * tells whether some result is not a RELEASE. */
static int apply_check(const struct outbox_result *results, const struct outbox_rcpts *rcpts,
                       size_t n, bool *writes)
{
    for (size_t i = 0; i < n; i++) {
        const struct outbox_rcpts *k = rcpts != NULL ? &rcpts[i] : NULL;

        if (results[i].outcome != OUTBOX_DELIVERED && results[i].outcome != OUTBOX_DEFER &&
            results[i].outcome != OUTBOX_DEAD && results[i].outcome != OUTBOX_RELEASE)
            return ERROR_INVALID;
        if (k != NULL && k->nrcpts > 0) {
            if (results[i].outcome != OUTBOX_DEFER || k->rcpts == NULL)
                return ERROR_INVALID;
            for (size_t j = 0; j < k->nrcpts; j++)
                if (k->rcpts[j] == NULL)
                    return ERROR_INVALID;
        }
        *writes = *writes || results[i].outcome != OUTBOX_RELEASE;
    }
    return 0;
}

/* On failure nothing is applied and the leases stay: a message whose
 * outcome is not on disk is not handed out again (sent again) meanwhile. */
int outbox_apply_rcpts(struct outbox *ob, const struct outbox_result *results,
                       const struct outbox_rcpts *rcpts, size_t n, int64_t now_ms)
{
    struct apply_ctx c = {ob, results, rcpts, n, now_ms};
    bool writes = false;
    int rc = 0;

    if (n == 0)
        return 0;
    if (results == NULL)
        return ERROR_INVALID;
    rc = apply_check(results, rcpts, n, &writes);
    if (rc != 0)
        return rc;
    /* Giving leases back writes nothing: it works on a full disk too. */
    if (writes)
        rc = dbenv_write(ob->env, apply_body, &c, 0);
    if (rc != 0)
        return rc;
    for (size_t i = 0; i < n; i++)
        outbox__lease_remove(&ob->leases, results[i].id);
    return 0;
}

int outbox_apply(struct outbox *ob, const struct outbox_result *results, size_t n, int64_t now_ms)
{
    return outbox_apply_rcpts(ob, results, NULL, n, now_ms);
}

/* ------------------------------------------------------------------------ */
/* Commits on the libuv thread pool (outbox_submit_async, outbox_apply_async). */

/* One outbox_submit_async() or outbox_apply_async() call; freed after its
 * callback. Everything it points to is the caller's. */
struct outbox_job {
    uv_work_t work;
    struct outbox *ob;
    bool apply;          /* else a submission */
    struct submit_ctx c; /* submission */
    struct apply_ctx a;  /* apply */
    bool writes;         /* apply: some result is not a RELEASE */
    size_t need;
    int rc; /* the worker's, raw: LMDB or error.h */
    outbox_async_cb cb;
    void *arg;
    struct outbox_job *next;
};

static int job_body(MDB_txn *txn, void *arg)
{
    struct outbox_job *j = arg;

    return j->apply ? apply_body(txn, &j->a) : submit_body(txn, &j->c);
}

static bool job_writes(const struct outbox_job *j)
{
    return !j->apply || j->writes;
}

/*
 * The thread pool's part: the jobs waiting when it started (a group, linked
 * by `next`), each in a nested transaction of one write transaction, so
 * that they share one commit (one fsync) and a job that fails (its own
 * error) leaves the others be. It touches only LMDB and the jobs' inputs:
 * leases are the loop's (group_done). No map growth here:
 * mdb_env_set_mapsize() wants no transaction open in the process, and the
 * loop may hold a read one; a full map (or one another process grew) is
 * left to group_done().
 */
static void group_work(uv_work_t *w)
{
    struct outbox_job *group = w->data;
    MDB_txn *txn, *child;
    bool writes = false;
    int rc;

    for (struct outbox_job *j = group; j != NULL; j = j->next) {
        j->rc = 0; /* giving leases back writes nothing */
        writes = writes || job_writes(j);
    }
    if (!writes)
        return;
    rc = mdb_txn_begin(group->ob->env, NULL, 0, &txn);
    for (struct outbox_job *j = group; j != NULL && rc == 0; j = j->next) {
        if (!job_writes(j))
            continue;
        j->rc = mdb_txn_begin(group->ob->env, txn, 0, &child);
        if (j->rc == 0) {
            j->rc = job_body(child, j);
            if (j->rc == 0)
                j->rc = mdb_txn_commit(child);
            else
                mdb_txn_abort(child);
        }
    }
    if (rc == 0)
        rc = mdb_txn_commit(txn);
    if (rc != 0)
        for (struct outbox_job *j = group; j != NULL; j = j->next)
            if (j->rc == 0 && job_writes(j))
                j->rc = rc;
}

static void job_start(struct outbox *ob, uv_loop_t *loop);

static void group_done(uv_work_t *w, int status)
{
    struct outbox_job *j = w->data, *next;
    struct outbox *ob = j->ob;
    uv_loop_t *loop = w->loop; /* w is in the first job, freed below */
    int rc;

    /* `running` stays set through the callbacks: a job they queue waits,
     * so that nothing runs on the pool while a redo below may grow the
     * map. */
    for (; j != NULL; j = next) {
        next = j->next;
        rc = status != 0 ? status : j->rc;
        /* Rare: done again here, on the loop, where the map may grow (a
         * body starts from its inputs, so running it again is safe); the
         * loop waits for this one commit. */
        if (rc == MDB_MAP_FULL || rc == MDB_MAP_RESIZED)
            rc = dbenv_write(ob->env, job_body, j, j->need);
        else
            rc = dbenv_error(rc);
        /* Committed: the leases end (on failure they stay, as outbox_apply). */
        if (rc == 0 && j->apply)
            for (size_t i = 0; i < j->a.n; i++)
                outbox__lease_remove(&ob->leases, j->a.results[i].id);
        j->cb(rc, j->arg);
        free(j);
    }
    if (ob->sweep_wanted)
        outbox_sweep(ob);
    ob->running = NULL;
    job_start(ob, loop);
}

/* Starts every waiting job, as one group, unless one runs. */
static void job_start(struct outbox *ob, uv_loop_t *loop)
{
    struct outbox_job *group = ob->queue_head, *next;
    int rc;

    if (ob->running != NULL || group == NULL)
        return;
    ob->queue_head = ob->queue_tail = NULL;
    ob->running = group;
    group->work.data = group;
    rc = uv_queue_work(loop, &group->work, group_work, group_done);
    if (rc != 0) {
        /* Cannot happen with a valid loop and callbacks; the callers get
         * the error rather than no answer. */
        for (struct outbox_job *j = group; j != NULL; j = next) {
            next = j->next;
            j->cb(rc, j->arg);
            free(j);
        }
        ob->running = NULL;
        job_start(ob, loop);
    }
}

static void job_queue(struct outbox *ob, uv_loop_t *loop, struct outbox_job *j)
{
    if (ob->queue_tail != NULL)
        ob->queue_tail->next = j;
    else
        ob->queue_head = j;
    ob->queue_tail = j;
    job_start(ob, loop);
}

int outbox_submit_async(struct outbox *ob, uv_loop_t *loop, const struct outbox_new *msgs, size_t n,
                        int64_t now_ms, uint64_t *ids, outbox_async_cb cb, void *arg)
{
    struct outbox_job *j;
    size_t need = 0;
    int rc;

    if (loop == NULL || cb == NULL || (n > 0 && (msgs == NULL || ids == NULL)))
        return ERROR_INVALID;
    for (size_t i = 0; i < n; i++) {
        rc = submit_check(&msgs[i]);
        if (rc != 0)
            return rc;
        need += msgs[i].message_len + 4096;
    }
    j = calloc(1, sizeof(*j));
    if (j == NULL)
        return -ENOMEM;
    j->ob = ob;
    j->c = (struct submit_ctx){ob, msgs, n, now_ms, ids};
    j->need = need;
    j->cb = cb;
    j->arg = arg;
    job_queue(ob, loop, j);
    return 0;
}

bool outbox_busy(const struct outbox *ob)
{
    return ob->running != NULL || ob->queue_head != NULL;
}

int outbox_apply_async(struct outbox *ob, uv_loop_t *loop, const struct outbox_result *results,
                       const struct outbox_rcpts *rcpts, size_t n, int64_t now_ms,
                       outbox_async_cb cb, void *arg)
{
    struct outbox_job *j;
    bool writes = false;
    int rc;

    if (loop == NULL || cb == NULL || (n > 0 && results == NULL))
        return ERROR_INVALID;
    rc = apply_check(results, rcpts, n, &writes);
    if (rc != 0)
        return rc;
    j = calloc(1, sizeof(*j));
    if (j == NULL)
        return -ENOMEM;
    j->ob = ob;
    j->apply = true;
    j->a = (struct apply_ctx){ob, results, rcpts, n, now_ms};
    j->writes = writes;
    j->cb = cb;
    j->arg = arg;
    job_queue(ob, loop, j);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Operator actions. */

struct op_ctx {
    struct outbox *ob;
    uint64_t id;
    int64_t now_ms;
};

static int retry_body(MDB_txn *txn, void *arg)
{
    struct op_ctx *c = arg;
    struct outbox *ob = c->ob;
    uint8_t kb[8], db[OUTBOX__DUE_KEY_LEN];
    MDB_val key = dbenv_key_u64(c->id, kb), val, dk;
    Smtpsync__OutboxMessage *r;
    int64_t now = c->now_ms > 0 ? c->now_ms : 0;
    char *saved_error, *saved_reason;
    bool dead = false;
    const char *why;
    int rc;

    rc = mdb_get(txn, ob->pending, &key, &val);
    if (rc == MDB_NOTFOUND) {
        dead = true;
        rc = mdb_get(txn, ob->dead, &key, &val);
        if (rc == MDB_NOTFOUND)
            return ERROR_NOT_FOUND;
    }
    if (rc != 0)
        return rc;
    rc = outbox__record_unpack(&val, c->id, dead, &r, &why);
    if (rc != 0)
        return rc;
    if (r->n_rcpt_to == 0) {
        rc = ERROR_CORRUPT; /* a damaged record kept in dead */
        goto free_record;
    }
    if (dead) {
        /* A fresh start: only the envelope, the message and the id stay. */
        r->attempts = 0;
        r->expires_ms = default_expiry(ob, r->priority, now);
        r->dead_ms = 0;
        rc = mdb_del(txn, ob->dead, &key, NULL);
    } else {
        dk = outbox__due_key(r->priority, r->next_try_ms, c->id, db);
        rc = del_opt(txn, ob->due, &dk);
    }
    r->next_try_ms = now;
    /* Borrowed for packing; the unpacked strings go back before free. */
    saved_error = r->last_error;
    saved_reason = r->dead_reason;
    if (dead) {
        r->last_error = BORROW_CONST("");
        r->dead_reason = BORROW_CONST("");
    }
    if (rc == 0)
        rc = pending_put(ob, txn, r, 0);
    r->last_error = saved_error;
    r->dead_reason = saved_reason;
free_record:
    outbox__record_free(r);
    return rc;
}

int outbox_retry(struct outbox *ob, uint64_t id, int64_t now_ms)
{
    struct op_ctx c = {ob, id, now_ms};

    return dbenv_write(ob->env, retry_body, &c, 0);
}

static int drop_body(MDB_txn *txn, void *arg)
{
    struct op_ctx *c = arg;
    struct outbox *ob = c->ob;
    uint8_t kb[8];
    MDB_val key = dbenv_key_u64(c->id, kb), val;
    bool found = false;
    int rc;

    rc = mdb_get(txn, ob->pending, &key, &val);
    if (rc == 0) {
        found = true;
        rc = pending_remove(ob, txn, c->id, &val);
    } else if (rc == MDB_NOTFOUND) {
        rc = 0;
    }
    if (rc == 0) {
        rc = mdb_del(txn, ob->dead, &key, NULL);
        if (rc == 0)
            found = true;
        else if (rc == MDB_NOTFOUND)
            rc = 0;
    }
    if (rc == 0 && !found)
        rc = ERROR_NOT_FOUND;
    return rc;
}

int outbox_drop(struct outbox *ob, uint64_t id)
{
    struct op_ctx c = {ob, id, 0};

    return dbenv_write(ob->env, drop_body, &c, 0);
}

/* ------------------------------------------------------------------------ */
/* Reading. */

/* The record at a cursor on an id-keyed database (pending, dead), decoded;
 * ERROR_CORRUPT for a key that is not an id. */
static int record_at(const MDB_val *k, const MDB_val *v, bool dead, Smtpsync__OutboxMessage **r)
{
    const char *why;

    *r = NULL;
    if (k->mv_size != 8)
        return ERROR_CORRUPT;
    return outbox__record_unpack(v, dbenv_get_u64(k->mv_data), dead, r, &why);
}

/*
 * Decodes the first OUTBOX_LIST_LIMIT records, then calls cb for each
 * outside the transaction, so it may use the outbox. A record that fails
 * to decode is reported (ERROR_CORRUPT) before any callback runs.
 */
int outbox_each(struct outbox *ob, bool dead, outbox_each_cb cb, void *arg)
{
    struct outbox_msg **list;
    size_t n = 0;
    MDB_cursor *cur;
    MDB_txn *txn;
    MDB_val k, v;
    int rc;

    list = calloc(OUTBOX_LIST_LIMIT, sizeof(*list));
    if (list == NULL)
        return -ENOMEM;
    rc = dbenv_txn_read(ob->env, &txn);
    if (rc != 0)
        goto free_list;
    rc = mdb_cursor_open(txn, dead ? ob->dead : ob->pending, &cur);
    if (rc != 0)
        goto txn_abort;
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0 && n < OUTBOX_LIST_LIMIT;
         rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        Smtpsync__OutboxMessage *r;

        rc = record_at(&k, &v, dead, &r);
        if (rc == 0)
            rc = outbox__msg_from_record(r, false, &list[n]);
        outbox__record_free(r);
        if (rc != 0)
            break;
        n++;
    }
    if (rc == MDB_NOTFOUND || n == OUTBOX_LIST_LIMIT)
        rc = 0;
    mdb_cursor_close(cur);
txn_abort:
    mdb_txn_abort(txn);
    rc = dbenv_error(rc);
    for (size_t i = 0; i < n && rc == 0; i++)
        rc = cb(list[i], dead, arg);
free_list:
    for (size_t i = 0; i < n; i++)
        outbox_msg_free(list[i]);
    free(list);
    return rc;
}

int outbox_depth(struct outbox *ob, struct outbox_depth *out)
{
    uint8_t start = OUTBOX_TOKENCODE;
    MDB_val k = {1, &start}, v;
    MDB_stat sdue, sdead;
    MDB_cursor *cur;
    MDB_txn *txn;
    uint64_t tokencodes = 0;
    int rc;

    memset(out, 0, sizeof(*out));
    rc = dbenv_txn_read(ob->env, &txn);
    if (rc != 0)
        return rc;
    rc = mdb_stat(txn, ob->due, &sdue);
    if (rc == 0)
        rc = mdb_stat(txn, ob->dead, &sdead);
    if (rc == 0)
        rc = mdb_cursor_open(txn, ob->due, &cur);
    if (rc != 0)
        goto txn_abort;
    /* Tokencodes are few and first in the index; reports are the rest. */
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
         rc == 0 && k.mv_size != 0 && ((const uint8_t *)k.mv_data)[0] == OUTBOX_TOKENCODE;
         rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT))
        tokencodes++;
    mdb_cursor_close(cur);
    if (rc == 0 || rc == MDB_NOTFOUND) {
        rc = 0;
        out->pending[OUTBOX_TOKENCODE] = tokencodes;
        out->pending[OUTBOX_REPORT] = sdue.ms_entries - tokencodes;
        out->dead = sdead.ms_entries;
    }
txn_abort:
    mdb_txn_abort(txn);
    return dbenv_error(rc);
}

/* Walks one id-keyed database for outbox_verify(). */
static int verify_ids(struct outbox *ob, MDB_txn *txn, bool dead, uint64_t *last, size_t *n)
{
    uint8_t db[OUTBOX__DUE_KEY_LEN];
    MDB_cursor *cur;
    MDB_val k, v, dk, x;
    int rc;

    rc = mdb_cursor_open(txn, dead ? ob->dead : ob->pending, &cur);
    if (rc != 0)
        return rc;
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0;
         rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        Smtpsync__OutboxMessage *r;

        rc = record_at(&k, &v, dead, &r);
        if (rc != 0)
            break;
        *last = r->id; /* the key's: outbox__record_unpack() checks it */
        if (dead) {
            /* In one place at a time. */
            rc = mdb_get(txn, ob->pending, &k, &x);
            rc = rc == 0 ? ERROR_CORRUPT : rc == MDB_NOTFOUND ? 0 : rc;
        } else {
            dk = outbox__due_key(r->priority, r->next_try_ms, *last, db);
            rc = r->next_try_ms < 0 ? ERROR_CORRUPT : mdb_get(txn, ob->due, &dk, &x);
            if (rc == MDB_NOTFOUND)
                rc = ERROR_CORRUPT;
        }
        outbox__record_free(r);
        if (rc != 0)
            break;
        (*n)++;
    }
    mdb_cursor_close(cur);
    return rc == MDB_NOTFOUND ? 0 : rc;
}

int outbox_verify(struct outbox *ob)
{
    uint64_t next, last_pending = 0, last_dead = 0;
    size_t npending = 0, ndead = 0;
    MDB_stat sdue;
    MDB_txn *txn;
    int rc;

    rc = dbenv_txn_read(ob->env, &txn);
    if (rc != 0)
        return rc;
    rc = next_id_read(ob, txn, &next);
    if (rc == 0)
        rc = verify_ids(ob, txn, false, &last_pending, &npending);
    if (rc == 0)
        rc = verify_ids(ob, txn, true, &last_dead, &ndead);
    if (rc == 0)
        rc = mdb_stat(txn, ob->due, &sdue);
    /* Every pending record has its key, and there is no other key. */
    if (rc == 0 && (sdue.ms_entries != npending || next <= last_pending || next <= last_dead))
        rc = ERROR_CORRUPT;
    mdb_txn_abort(txn);
    return dbenv_error(rc);
}
