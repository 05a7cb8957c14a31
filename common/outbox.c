/*
 * outbox: see outbox.h.
 *
 * Every change runs in one write transaction (outbox_write) that is run
 * again whole, with a larger map, after MDB_MAP_FULL, so a transaction body
 * keeps no effect outside its transaction; leases, which live in memory,
 * change only after the commit.
 *
 * Records are decoded in one place (record_unpack) with size limits and
 * checks; a pending record that fails them is not handed out: outbox_take
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
#include <unistd.h>

#include <lmdb.h>

#include "error.h"
#include "internal.h"
#include "smtp_message.h"
#include "smtpsync.pb-c.h"

#define OUTBOX_MAP_DEFAULT   ((size_t)64 << 20)
#define OUTBOX_MAXDBS        8
#define OUTBOX_META_NEXT_ID  "next_id"
#define OUTBOX_DUE_KEY_LEN   17
#define OUTBOX_TOKENCODE_TTL ((int64_t)10 * 60 * 1000)
#define OUTBOX_REPORT_TTL    ((int64_t)5 * 24 * 3600 * 1000)
/* The largest record this code writes, with room for the envelope and the
 * fields around the message; anything larger is not ours. */
#define OUTBOX_RECORD_MAX                                                                          \
    ((size_t)SMTP_MESSAGE_MAX + (SMTP_MESSAGE_RCPT_MAX + 1) * (OUTBOX_ADDRESS_MAX + 8) +           \
     3 * (OUTBOX_ERROR_MAX + 8) + 256)

/* ------------------------------------------------------------------------ */
/* Leases: an open-addressing set of ids (linear probing, deletion by
 * backward shift, so no tombstones); 0 is never an id and marks a free
 * slot. At most half full. */

struct lease_set {
    uint64_t *slot;
    size_t cap; /* a power of two, or 0 */
    size_t n;
};

static size_t lease_home(const struct lease_set *ls, uint64_t id)
{
    return (size_t)((id * 0x9e3779b97f4a7c15ull) >> 32) & (ls->cap - 1);
}

static bool lease_has(const struct lease_set *ls, uint64_t id)
{
    if (ls->n == 0)
        return false;
    for (size_t i = lease_home(ls, id);; i = (i + 1) & (ls->cap - 1)) {
        if (ls->slot[i] == id)
            return true;
        if (ls->slot[i] == 0)
            return false;
    }
}

static void lease_insert(struct lease_set *ls, uint64_t id)
{
    size_t i = lease_home(ls, id);

    while (ls->slot[i] != 0 && ls->slot[i] != id)
        i = (i + 1) & (ls->cap - 1);
    if (ls->slot[i] == 0) {
        ls->slot[i] = id;
        ls->n++;
    }
}

/* Makes room for `more` ids, so that the inserts that follow cannot fail. */
static int lease_reserve(struct lease_set *ls, size_t more)
{
    struct lease_set grown;
    size_t cap = ls->cap != 0 ? ls->cap : 64;

    if (more > SIZE_MAX / 4 - ls->n)
        return -ENOMEM;
    while ((ls->n + more) * 2 > cap)
        cap *= 2;
    if (cap == ls->cap)
        return 0;
    grown.slot = calloc(cap, sizeof(*grown.slot));
    if (grown.slot == NULL)
        return -ENOMEM;
    grown.cap = cap;
    grown.n = 0;
    for (size_t i = 0; i < ls->cap; i++)
        if (ls->slot[i] != 0)
            lease_insert(&grown, ls->slot[i]);
    free(ls->slot);
    *ls = grown;
    return 0;
}

static void lease_remove(struct lease_set *ls, uint64_t id)
{
    size_t mask = ls->cap - 1, i, j;

    if (ls->n == 0)
        return;
    for (i = lease_home(ls, id); ls->slot[i] != id; i = (i + 1) & mask)
        if (ls->slot[i] == 0)
            return;
    /* Shift back every following entry of the run that may move into the
     * hole: one whose home is not cyclically within (hole, its place]. */
    for (j = (i + 1) & mask; ls->slot[j] != 0; j = (j + 1) & mask) {
        size_t k = lease_home(ls, ls->slot[j]);
        if ((j > i && (k <= i || k > j)) || (j < i && k <= i && k > j)) {
            ls->slot[i] = ls->slot[j];
            i = j;
        }
    }
    ls->slot[i] = 0;
    ls->n--;
}

/* ------------------------------------------------------------------------ */

struct outbox {
    MDB_env *env;
    MDB_dbi pending;
    MDB_dbi due;
    MDB_dbi dead;
    MDB_dbi meta;
    struct outbox_expiry expiry;
    struct lease_set leases;
};

/* Keys. ids and times are big-endian so that LMDB's byte order is theirs. */

static void put_be64(uint8_t *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--) {
        p[i] = (uint8_t)v;
        v >>= 8;
    }
}

static uint64_t get_be64(const uint8_t *p)
{
    uint64_t v = 0;

    for (int i = 0; i < 8; i++)
        v = v << 8 | p[i];
    return v;
}

static MDB_val id_key(uint64_t id, uint8_t buf[8])
{
    put_be64(buf, id);
    return (MDB_val){.mv_size = 8, .mv_data = buf};
}

/* A time before the epoch sorts as the epoch: due keys hold unsigned times. */
static MDB_val due_key(int priority, int64_t next_try_ms, uint64_t id,
                       uint8_t buf[OUTBOX_DUE_KEY_LEN])
{
    buf[0] = (uint8_t)priority;
    put_be64(buf + 1, next_try_ms > 0 ? (uint64_t)next_try_ms : 0);
    put_be64(buf + 9, id);
    return (MDB_val){.mv_size = OUTBOX_DUE_KEY_LEN, .mv_data = buf};
}

struct due {
    int priority;
    int64_t next_try_ms;
    uint64_t id;
};

static bool due_parse(const MDB_val *k, struct due *out)
{
    const uint8_t *p = k->mv_data;
    uint64_t t;

    if (k->mv_size != OUTBOX_DUE_KEY_LEN || (p[0] != OUTBOX_TOKENCODE && p[0] != OUTBOX_REPORT))
        return false;
    t = get_be64(p + 1);
    if (t > INT64_MAX)
        return false;
    out->priority = p[0];
    out->next_try_ms = (int64_t)t;
    out->id = get_be64(p + 9);
    return out->id != 0;
}

static bool priority_valid(int p)
{
    return p == OUTBOX_TOKENCODE || p == OUTBOX_REPORT;
}

static int64_t add_ms(int64_t t, int64_t d)
{
    if (d > 0 && t > INT64_MAX - d)
        return INT64_MAX;
    return t + d;
}

/* ------------------------------------------------------------------------ */
/* Text kept from delivery errors. */

/* Length of the valid UTF-8 sequence at s[0..len), or 0 if there is none
 * (overlong forms, surrogates and code points above U+10FFFF included). */
static size_t utf8_seq(const unsigned char *s, size_t len)
{
    size_t n;
    uint32_t cp;

    if (s[0] < 0x80)
        return 1;
    if (s[0] >= 0xc2 && s[0] <= 0xdf)
        n = 2, cp = s[0] & 0x1fu;
    else if (s[0] >= 0xe0 && s[0] <= 0xef)
        n = 3, cp = s[0] & 0x0fu;
    else if (s[0] >= 0xf0 && s[0] <= 0xf4)
        n = 4, cp = s[0] & 0x07u;
    else
        return 0;
    if (len < n)
        return 0;
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = cp << 6 | (s[i] & 0x3fu);
    }
    if ((n == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) ||
        (n == 4 && (cp < 0x10000 || cp > 0x10ffff)))
        return 0;
    return n;
}

/*
 * Copies an error text as it is kept: at most OUTBOX_ERROR_MAX octets, cut
 * on a character boundary; an octet that is not UTF-8 becomes '?' and a
 * control character a space, since the text comes from a remote server and
 * ends up in listings and JSON. NULL is "".
 */
static void error_copy(char out[OUTBOX_ERROR_MAX + 1], const char *in)
{
    const unsigned char *s = (const unsigned char *)(in != NULL ? in : "");
    size_t len = strlen((const char *)s), o = 0;

    while (len > 0) {
        size_t n = utf8_seq(s, len);
        if (o + (n != 0 ? n : 1) > OUTBOX_ERROR_MAX)
            break;
        if (n == 0)
            out[o++] = '?';
        else if (n == 1 && (s[0] < 0x20 || s[0] == 0x7f))
            out[o++] = ' ';
        else
            memcpy(out + o, s, n), o += n;
        n = n != 0 ? n : 1;
        s += n;
        len -= n;
    }
    out[o] = '\0';
}

static bool address_valid(const char *a, bool may_be_empty)
{
    size_t len;

    if (a == NULL)
        return may_be_empty;
    len = strlen(a);
    if (len == 0)
        return may_be_empty;
    return len <= OUTBOX_ADDRESS_MAX && strpbrk(a, "\r\n") == NULL;
}

/* ------------------------------------------------------------------------ */
/* Records. */

/* protobuf-c reports a failed allocation and a malformed message alike;
 * this allocator tells them apart, so an out-of-memory is never taken for
 * a damaged record (and moved to dead). */
struct unpack_alloc {
    ProtobufCAllocator a;
    bool failed;
};

static void *unpack_alloc_fn(void *data, size_t size)
{
    void *p = malloc(size);

    if (p == NULL)
        ((struct unpack_alloc *)data)->failed = true;
    return p;
}

static void unpack_free_fn(void *data, void *p)
{
    (void)data;
    free(p);
}

static void record_free(Smtpsync__OutboxMessage *m)
{
    if (m != NULL)
        smtpsync__outbox_message__free_unpacked(m, NULL);
}

/*
 * Decodes a record stored under `id` (in `dead` when `dead`). Returns 0,
 * -ENOMEM, or ERROR_CORRUPT with *why saying what is wrong. Free *out with
 * record_free().
 */
static int record_unpack(const MDB_val *val, uint64_t id, bool dead, Smtpsync__OutboxMessage **out,
                         const char **why)
{
    struct unpack_alloc ua = {{unpack_alloc_fn, unpack_free_fn, NULL}, false};
    Smtpsync__OutboxMessage *m;

    ua.a.allocator_data = &ua;
    *out = NULL;
    *why = "";
    if (val->mv_size > OUTBOX_RECORD_MAX) {
        *why = "larger than any record";
        return ERROR_CORRUPT;
    }
    m = smtpsync__outbox_message__unpack(&ua.a, val->mv_size, val->mv_data);
    if (m == NULL && ua.failed)
        return -ENOMEM;
    if (m == NULL) {
        *why = "not an OutboxMessage";
        return ERROR_CORRUPT;
    }
    if (m->id != id)
        *why = "stored under another id";
    else if (!priority_valid(m->priority))
        *why = "no valid priority";
    else if (m->n_rcpt_to > SMTP_MESSAGE_RCPT_MAX || (m->n_rcpt_to == 0 && !dead))
        *why = "no valid number of recipients";
    else if (!address_valid(m->mail_from, true))
        *why = "invalid envelope sender";
    else if (m->message.len > SMTP_MESSAGE_MAX)
        *why = "message over its size limit";
    else if (strlen(m->last_error) > OUTBOX_ERROR_MAX || strlen(m->dead_reason) > OUTBOX_ERROR_MAX)
        *why = "error text over its size limit";
    for (size_t i = 0; **why == '\0' && i < m->n_rcpt_to; i++)
        if (!address_valid(m->rcpt_to[i], false))
            *why = "invalid recipient";
    if (**why != '\0') {
        /* Our allocator's free is free(): the default one releases it. */
        record_free(m);
        return ERROR_CORRUPT;
    }
    *out = m;
    return 0;
}

static int record_put(MDB_txn *txn, MDB_dbi dbi, const Smtpsync__OutboxMessage *m, unsigned flags)
{
    uint8_t kb[8];
    MDB_val key = id_key(m->id, kb), val;
    int rc;

    val.mv_size = smtpsync__outbox_message__get_packed_size(m);
    val.mv_data = NULL;
    rc = mdb_put(txn, dbi, &key, &val, flags | MDB_RESERVE);
    if (rc == 0)
        smtpsync__outbox_message__pack(m, val.mv_data);
    return rc;
}

static char *dup_str(const char *s, bool *failed)
{
    char *d = strdup(s != NULL ? s : "");

    if (d == NULL)
        *failed = true;
    return d;
}

/* A stored record as handed to callers; the body only when `body`. */
static int msg_from_record(const Smtpsync__OutboxMessage *r, bool body, struct outbox_msg **out)
{
    struct outbox_msg *m = calloc(1, sizeof(*m));
    bool failed = false;

    *out = NULL;
    if (m == NULL)
        return -ENOMEM;
    m->id = r->id;
    m->priority = (enum outbox_priority)r->priority;
    m->created_ms = r->created_ms;
    m->expires_ms = r->expires_ms;
    m->next_try_ms = r->next_try_ms;
    m->attempts = r->attempts;
    m->dead_ms = r->dead_ms;
    m->last_error = dup_str(r->last_error, &failed);
    m->mail_from = dup_str(r->mail_from, &failed);
    m->dead_reason = dup_str(r->dead_reason, &failed);
    m->rcpts = calloc(r->n_rcpt_to + 1, sizeof(*m->rcpts));
    if (m->rcpts == NULL)
        failed = true;
    for (size_t i = 0; m->rcpts != NULL && i < r->n_rcpt_to; i++, m->nrcpts++)
        m->rcpts[i] = dup_str(r->rcpt_to[i], &failed);
    if (body) {
        /* NUL-terminated as a convenience; message_len is the length. */
        m->message = malloc(r->message.len + 1);
        if (m->message == NULL) {
            failed = true;
        } else {
            if (r->message.len != 0)
                memcpy(m->message, r->message.data, r->message.len);
            m->message[r->message.len] = '\0';
            m->message_len = r->message.len;
        }
    }
    if (failed) {
        outbox_msg_free(m);
        return -ENOMEM;
    }
    *out = m;
    return 0;
}

void outbox_msg_free(struct outbox_msg *m)
{
    if (m == NULL)
        return;
    free(m->last_error);
    free(m->mail_from);
    for (size_t i = 0; i < m->nrcpts; i++)
        free(m->rcpts[i]);
    free(m->rcpts);
    free(m->message);
    free(m->dead_reason);
    free(m);
}

/* ------------------------------------------------------------------------ */
/* Transactions. */

/* LMDB returns system errors as positive errno values; the convention
 * (error.h) wants them negative. Its own codes are negative already. */
static int lmdb_error(int rc)
{
    return rc > 0 ? -rc : rc;
}

/* A read transaction, adopting a map another process grew. */
static int txn_read(struct outbox *ob, MDB_txn **txn)
{
    int rc = mdb_txn_begin(ob->env, NULL, MDB_RDONLY, txn);

    if (rc == MDB_MAP_RESIZED) {
        rc = mdb_env_set_mapsize(ob->env, 0);
        if (rc == 0)
            rc = mdb_txn_begin(ob->env, NULL, MDB_RDONLY, txn);
    }
    return rc;
}

typedef int (*txn_fn)(struct outbox *ob, MDB_txn *txn, void *arg);

/*
 * Runs `body` in one write transaction and commits it (with LMDB's default
 * sync: on disk when this returns 0). After MDB_MAP_FULL the whole body
 * runs again in a new transaction with a map grown by at least twice
 * `need` octets (what the body writes; records go to overflow pages) and
 * at least doubled, so a 10 MiB message does not climb there by doublings.
 */
static int write_txn(struct outbox *ob, txn_fn body, void *arg, size_t need)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE), size;
    MDB_envinfo info;
    MDB_txn *txn;
    int rc;

    for (;;) {
        rc = mdb_txn_begin(ob->env, NULL, 0, &txn);
        if (rc == MDB_MAP_RESIZED) {
            rc = mdb_env_set_mapsize(ob->env, 0);
            if (rc != 0)
                return rc;
            continue;
        }
        if (rc != 0)
            return rc;
        rc = body(ob, txn, arg);
        if (rc == 0)
            rc = mdb_txn_commit(txn);
        else
            mdb_txn_abort(txn);
        if (rc != MDB_MAP_FULL)
            return rc;
        rc = mdb_env_info(ob->env, &info);
        if (rc != 0)
            return rc;
        if (info.me_mapsize > SIZE_MAX / 2 || need > (SIZE_MAX - info.me_mapsize) / 4)
            return MDB_MAP_FULL;
        size = info.me_mapsize * 2;
        if (size < info.me_mapsize + 2 * need)
            size = info.me_mapsize + 2 * need;
        size = (size + page - 1) / page * page;
        rc = mdb_env_set_mapsize(ob->env, size);
        if (rc != 0)
            return rc;
    }
}

static int outbox_write(struct outbox *ob, txn_fn body, void *arg, size_t need)
{
    return lmdb_error(write_txn(ob, body, arg, need));
}

static int next_id_read(struct outbox *ob, MDB_txn *txn, uint64_t *out)
{
    MDB_val key = store__key_str(OUTBOX_META_NEXT_ID), val;
    int rc = mdb_get(txn, ob->meta, &key, &val);

    if (rc == MDB_NOTFOUND) {
        *out = 1;
        return 0;
    }
    if (rc != 0)
        return rc;
    if (val.mv_size != 8)
        return ERROR_CORRUPT;
    *out = get_be64(val.mv_data);
    return *out != 0 ? 0 : ERROR_CORRUPT;
}

static int next_id_write(struct outbox *ob, MDB_txn *txn, uint64_t next)
{
    MDB_val key = store__key_str(OUTBOX_META_NEXT_ID), val;
    uint8_t buf[8];

    val = id_key(next, buf);
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
static int due_find_scan(struct outbox *ob, MDB_txn *txn, uint64_t id, struct due *out)
{
    MDB_cursor *cur;
    MDB_val k, v;
    int rc;

    rc = mdb_cursor_open(txn, ob->due, &cur);
    if (rc != 0)
        return rc;
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0;
         rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT))
        if (due_parse(&k, out) && out->id == id)
            break;
    mdb_cursor_close(cur);
    return rc;
}

/* Removes a pending record (its raw value `val` under `id`) and its due key. */
static int pending_remove(struct outbox *ob, MDB_txn *txn, uint64_t id, const MDB_val *val)
{
    Smtpsync__OutboxMessage *r;
    uint8_t kb[8], db[OUTBOX_DUE_KEY_LEN];
    MDB_val key = id_key(id, kb), dk;
    struct due d;
    const char *why;
    int rc;

    rc = record_unpack(val, id, false, &r, &why);
    if (rc == 0) {
        dk = due_key(r->priority, r->next_try_ms, id, db);
        record_free(r);
    } else if (rc == ERROR_CORRUPT) {
        rc = due_find_scan(ob, txn, id, &d);
        if (rc == 0)
            dk = due_key(d.priority, d.next_try_ms, id, db);
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

/*
 * Moves a pending record to dead. `r` is its decoded record (changed here)
 * with `reason`; with `r` NULL the record is damaged: its raw bytes `raw`
 * become the message of a dead record without recipients, `reason` saying
 * why, and `d` its due key if known.
 */
static int pending_to_dead(struct outbox *ob, MDB_txn *txn, uint64_t id, Smtpsync__OutboxMessage *r,
                           const MDB_val *raw, const struct due *d, const char *reason,
                           int64_t now_ms)
{
    Smtpsync__OutboxMessage q;
    char kept[OUTBOX_ERROR_MAX + 1];
    uint8_t kb[8], db[OUTBOX_DUE_KEY_LEN];
    MDB_val key = id_key(id, kb), dk;
    char *saved;
    int rc;

    smtpsync__outbox_message__init(&q);
    error_copy(kept, reason);
    if (r != NULL) {
        dk = due_key(r->priority, r->next_try_ms, id, db);
        saved = r->dead_reason;
        r->dead_reason = kept;
        r->dead_ms = now_ms;
        rc = record_put(txn, ob->dead, r, 0);
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
            dk = due_key(d->priority, d->next_try_ms, id, db);
        rc = record_put(txn, ob->dead, &q, 0);
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

static int open_body(struct outbox *ob, MDB_txn *txn, void *arg)
{
    static const struct {
        const char *name;
        size_t offset;
    } dbs[] = {
        {"pending", offsetof(struct outbox, pending)},
        {"due", offsetof(struct outbox, due)},
        {"dead", offsetof(struct outbox, dead)},
        {"meta", offsetof(struct outbox, meta)},
    };
    MDB_dbi ids[2];
    uint64_t next, last = 0;
    int rc;

    (void)arg;
    for (size_t i = 0; i < sizeof(dbs) / sizeof(dbs[0]); i++) {
        rc = mdb_dbi_open(txn, dbs[i].name, MDB_CREATE, (MDB_dbi *)((char *)ob + dbs[i].offset));
        if (rc != 0)
            return rc;
    }
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
        if (get_be64(k.mv_data) > last)
            last = get_be64(k.mv_data);
    }
    if (last == UINT64_MAX)
        return ERROR_CORRUPT;
    if (next <= last)
        return next_id_write(ob, txn, last + 1);
    return 0;
}

int outbox_open(const struct outbox_params *params, struct outbox **out)
{
    struct outbox *ob;
    int rc, dead;

    if (params == NULL || params->dir == NULL || params->dir[0] == '\0' || out == NULL)
        return ERROR_INVALID;
    if (mkdir(params->dir, 0700) != 0 && errno != EEXIST)
        return -errno;
    ob = calloc(1, sizeof(*ob));
    if (ob == NULL)
        return -ENOMEM;
    ob->expiry.tokencode_ms = OUTBOX_TOKENCODE_TTL;
    ob->expiry.report_ms = OUTBOX_REPORT_TTL;
    rc = mdb_env_create(&ob->env);
    if (rc != 0)
        goto free_outbox;
    rc = mdb_env_set_maxdbs(ob->env, OUTBOX_MAXDBS);
    if (rc == 0)
        rc = mdb_env_set_mapsize(ob->env,
                                 params->map_size != 0 ? params->map_size : OUTBOX_MAP_DEFAULT);
    /* NOTLS: read transactions are not tied to a thread, so the outbox may
     * move between threads (commits on the libuv thread pool). */
    if (rc == 0)
        rc = mdb_env_open(ob->env, params->dir, MDB_NOTLS, 0600);
    if (rc != 0)
        goto env_close;
    /* A process killed while reading leaves its reader slot behind. */
    rc = mdb_reader_check(ob->env, &dead);
    if (rc == 0)
        rc = outbox_write(ob, open_body, NULL, 0);
    if (rc != 0)
        goto env_close;
    *out = ob;
    return 0;
env_close:
    mdb_env_close(ob->env);
free_outbox:
    free(ob);
    return lmdb_error(rc);
}

void outbox_close(struct outbox *ob)
{
    if (ob == NULL)
        return;
    mdb_env_close(ob->env);
    free(ob->leases.slot);
    free(ob);
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
    const struct outbox_new *msgs;
    size_t n;
    int64_t now_ms;
    uint64_t *ids;
};

static int submit_body(struct outbox *ob, MDB_txn *txn, void *arg)
{
    struct submit_ctx *c = arg;
    uint8_t db[OUTBOX_DUE_KEY_LEN];
    MDB_val dk, empty = {0, NULL};
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
        rc = record_put(txn, ob->pending, &r, MDB_APPEND);
        if (rc == MDB_KEYEXIST)
            rc = ERROR_CORRUPT;
        if (rc == 0) {
            dk = due_key(r.priority, r.next_try_ms, r.id, db);
            rc = mdb_put(txn, ob->due, &dk, &empty, 0);
        }
        if (rc != 0)
            return rc;
        c->ids[i] = r.id;
    }
    return next_id_write(ob, txn, next);
}

/* ERROR_INVALID or ERROR_TOO_BIG for a message the outbox does not take. */
static int submit_check(const struct outbox_new *s)
{
    if (!priority_valid(s->priority) || s->nrcpts == 0 || s->nrcpts > SMTP_MESSAGE_RCPT_MAX ||
        s->rcpts == NULL || (s->message == NULL && s->message_len != 0))
        return ERROR_INVALID;
    if (s->message_len > SMTP_MESSAGE_MAX)
        return ERROR_TOO_BIG;
    if (s->mail_from != NULL && strlen(s->mail_from) > OUTBOX_ADDRESS_MAX)
        return ERROR_TOO_BIG;
    if (!address_valid(s->mail_from, true))
        return ERROR_INVALID;
    for (size_t i = 0; i < s->nrcpts; i++) {
        if (s->rcpts[i] != NULL && strlen(s->rcpts[i]) > OUTBOX_ADDRESS_MAX)
            return ERROR_TOO_BIG;
        if (!address_valid(s->rcpts[i], false))
            return ERROR_INVALID;
    }
    return 0;
}

int outbox_submit(struct outbox *ob, const struct outbox_new *msgs, size_t n, int64_t now_ms,
                  uint64_t *ids)
{
    struct submit_ctx c = {msgs, n, now_ms, ids};
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
    return outbox_write(ob, submit_body, &c, need);
}

/* ------------------------------------------------------------------------ */
/* Take. */

struct take_ctx {
    int64_t now_ms;
    struct outbox_msg **out;
    size_t max, n;
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
 * rebuilt from `d` (due_parse() accepts only the canonical encoding): a
 * key read through a cursor points into a page the deletion changes.
 */
static int take_one(struct outbox *ob, MDB_txn *txn, struct take_ctx *c, const struct due *d,
                    bool *moved)
{
    char reason[OUTBOX_ERROR_MAX + 64];
    Smtpsync__OutboxMessage *r;
    uint8_t kb[8], db[OUTBOX_DUE_KEY_LEN];
    MDB_val key = id_key(d->id, kb), dk = due_key(d->priority, d->next_try_ms, d->id, db), val;
    const char *why;
    int rc;

    *moved = false;
    rc = mdb_get(txn, ob->pending, &key, &val);
    if (rc == MDB_NOTFOUND) {
        *moved = true;
        return mdb_del(txn, ob->due, &dk, NULL);
    }
    if (rc != 0)
        return rc;
    rc = record_unpack(&val, d->id, false, &r, &why);
    if (rc == ERROR_CORRUPT) {
        *moved = true;
        snprintf(reason, sizeof(reason), "corrupt record (%s): taken out of the queue", why);
        return pending_to_dead(ob, txn, d->id, NULL, &val, d, reason, c->now_ms);
    }
    if (rc != 0)
        return rc;
    if ((int)r->priority != d->priority || r->next_try_ms != d->next_try_ms) {
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
    } else {
        rc = msg_from_record(r, true, &c->out[c->n]);
        if (rc == 0)
            c->n++;
    }
    record_free(r);
    return rc;
}

static int take_body(struct outbox *ob, MDB_txn *txn, void *arg)
{
    struct take_ctx *c = arg;
    uint8_t at[OUTBOX_DUE_KEY_LEN];
    MDB_cursor *cur;
    MDB_val k, v;
    struct due d;
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
            if (!due_parse(&k, &d) || lease_has(&ob->leases, d.id)) {
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
    struct take_ctx c = {now_ms, out, max, 0};
    int rc;

    *n = 0;
    if (max == 0)
        return 0;
    /* Room first: once committed, every message handed out is leased. */
    rc = lease_reserve(&ob->leases, max);
    if (rc == 0)
        rc = outbox_write(ob, take_body, &c, 0);
    if (rc != 0) {
        take_reset(&c);
        return rc;
    }
    for (size_t i = 0; i < c.n; i++)
        lease_insert(&ob->leases, out[i]->id);
    *n = c.n;
    return 0;
}

int64_t outbox_next_due(struct outbox *ob)
{
    int64_t best = INT64_MAX;
    MDB_cursor *cur;
    MDB_txn *txn;
    MDB_val k, v;
    struct due d;
    int rc;

    if (txn_read(ob, &txn) != 0)
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
            if (!due_parse(&k, &d) || lease_has(&ob->leases, d.id))
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
    const struct outbox_result *results;
    size_t n;
    int64_t now_ms;
};

static int apply_one(struct outbox *ob, MDB_txn *txn, const struct outbox_result *res,
                     int64_t now_ms)
{
    char kept[OUTBOX_ERROR_MAX + 1], reason[OUTBOX_ERROR_MAX + 64];
    uint8_t kb[8], db[OUTBOX_DUE_KEY_LEN];
    MDB_val key = id_key(res->id, kb), val, dk, empty = {0, NULL};
    Smtpsync__OutboxMessage *r;
    struct due d;
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
    rc = record_unpack(&val, res->id, false, &r, &why);
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
    dk = due_key(r->priority, r->next_try_ms, res->id, db);
    rc = del_opt(txn, ob->due, &dk);
    if (rc != 0)
        goto free_record;
    /* Never later than the expiry: the message goes to dead then, not at
     * some try after it. The key holds no time before the epoch. */
    r->next_try_ms = res->next_try_ms < r->expires_ms ? res->next_try_ms : r->expires_ms;
    if (r->next_try_ms < 0)
        r->next_try_ms = 0;
    error_copy(kept, res->error);
    saved = r->last_error;
    r->last_error = kept;
    rc = record_put(txn, ob->pending, r, 0);
    r->last_error = saved;
    if (rc == 0) {
        dk = due_key(r->priority, r->next_try_ms, res->id, db);
        rc = mdb_put(txn, ob->due, &dk, &empty, 0);
    }
free_record:
    record_free(r);
    return rc;
}

static int apply_body(struct outbox *ob, MDB_txn *txn, void *arg)
{
    struct apply_ctx *c = arg;
    int rc = 0;

    for (size_t i = 0; i < c->n && rc == 0; i++)
        rc = apply_one(ob, txn, &c->results[i], c->now_ms);
    return rc;
}

/* On failure nothing is applied, yet the leases end all the same: the
 * messages are then tried again, as after a crash. */
int outbox_apply(struct outbox *ob, const struct outbox_result *results, size_t n, int64_t now_ms)
{
    struct apply_ctx c = {results, n, now_ms};
    int rc = 0;

    if (n == 0)
        return 0;
    if (results == NULL)
        return ERROR_INVALID;
    for (size_t i = 0; i < n && rc == 0; i++)
        if (results[i].outcome != OUTBOX_DELIVERED && results[i].outcome != OUTBOX_DEFER &&
            results[i].outcome != OUTBOX_DEAD && results[i].outcome != OUTBOX_RELEASE)
            rc = ERROR_INVALID;
    if (rc == 0)
        rc = outbox_write(ob, apply_body, &c, 0);
    for (size_t i = 0; i < n; i++)
        lease_remove(&ob->leases, results[i].id);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Operator actions. */

struct op_ctx {
    uint64_t id;
    int64_t now_ms;
};

static int retry_body(struct outbox *ob, MDB_txn *txn, void *arg)
{
    struct op_ctx *c = arg;
    uint8_t kb[8], db[OUTBOX_DUE_KEY_LEN];
    MDB_val key = id_key(c->id, kb), val, dk, empty = {0, NULL};
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
    rc = record_unpack(&val, c->id, dead, &r, &why);
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
        dk = due_key(r->priority, r->next_try_ms, c->id, db);
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
        rc = record_put(txn, ob->pending, r, 0);
    r->last_error = saved_error;
    r->dead_reason = saved_reason;
    if (rc == 0) {
        dk = due_key(r->priority, r->next_try_ms, c->id, db);
        rc = mdb_put(txn, ob->due, &dk, &empty, 0);
    }
free_record:
    record_free(r);
    return rc;
}

int outbox_retry(struct outbox *ob, uint64_t id, int64_t now_ms)
{
    struct op_ctx c = {id, now_ms};

    return outbox_write(ob, retry_body, &c, 0);
}

static int drop_body(struct outbox *ob, MDB_txn *txn, void *arg)
{
    struct op_ctx *c = arg;
    uint8_t kb[8];
    MDB_val key = id_key(c->id, kb), val;
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
    struct op_ctx c = {id, 0};

    return outbox_write(ob, drop_body, &c, 0);
}

/* ------------------------------------------------------------------------ */
/* Reading. */

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
    rc = lmdb_error(txn_read(ob, &txn));
    if (rc != 0)
        goto free_list;
    rc = mdb_cursor_open(txn, dead ? ob->dead : ob->pending, &cur);
    if (rc != 0)
        goto txn_abort;
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0 && n < OUTBOX_LIST_LIMIT;
         rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        Smtpsync__OutboxMessage *r;
        const char *why;

        if (k.mv_size != 8) {
            rc = ERROR_CORRUPT;
            break;
        }
        rc = record_unpack(&v, get_be64(k.mv_data), dead, &r, &why);
        if (rc == 0)
            rc = msg_from_record(r, false, &list[n]);
        record_free(r);
        if (rc != 0)
            break;
        n++;
    }
    if (rc == MDB_NOTFOUND || n == OUTBOX_LIST_LIMIT)
        rc = 0;
    mdb_cursor_close(cur);
txn_abort:
    mdb_txn_abort(txn);
    rc = lmdb_error(rc);
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
    rc = txn_read(ob, &txn);
    if (rc != 0)
        return lmdb_error(rc);
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
    return lmdb_error(rc);
}

/* Walks one id-keyed database for outbox_verify(). */
static int verify_ids(struct outbox *ob, MDB_txn *txn, bool dead, uint64_t *last, size_t *n)
{
    uint8_t db[OUTBOX_DUE_KEY_LEN];
    MDB_cursor *cur;
    MDB_val k, v, dk, x;
    int rc;

    rc = mdb_cursor_open(txn, dead ? ob->dead : ob->pending, &cur);
    if (rc != 0)
        return rc;
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0;
         rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        Smtpsync__OutboxMessage *r;
        const char *why;

        if (k.mv_size != 8) {
            rc = ERROR_CORRUPT;
            break;
        }
        *last = get_be64(k.mv_data);
        rc = record_unpack(&v, *last, dead, &r, &why);
        if (rc != 0)
            break;
        if (dead) {
            /* In one place at a time. */
            rc = mdb_get(txn, ob->pending, &k, &x);
            rc = rc == 0 ? ERROR_CORRUPT : rc == MDB_NOTFOUND ? 0 : rc;
        } else {
            dk = due_key(r->priority, r->next_try_ms, *last, db);
            rc = r->next_try_ms < 0 ? ERROR_CORRUPT : mdb_get(txn, ob->due, &dk, &x);
            if (rc == MDB_NOTFOUND)
                rc = ERROR_CORRUPT;
        }
        record_free(r);
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

    rc = txn_read(ob, &txn);
    if (rc != 0)
        return lmdb_error(rc);
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
    return lmdb_error(rc);
}
