/*
 * outbox_record: what outbox.c builds on (internal.h, "outbox"): the
 * in-memory lease set, the due key, the text kept from delivery errors,
 * and records, decoded in one place (outbox__record_unpack) with size
 * limits and checks so that a damaged record is told from a valid one
 * before anything uses it.
 */
#include "outbox.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <lmdb.h>

#include "dbenv.h"
#include "error.h"
#include "internal.h"
#include "smtp_message.h"
#include "smtpsync.pb-c.h"
#include "utf8.h"

/* The largest record this code writes, with room for the envelope and the
 * fields around the message; anything larger is not ours. */
#define OUTBOX_RECORD_MAX                                                                          \
    ((size_t)SMTP_MESSAGE_MAX + (SMTP_MESSAGE_RCPT_MAX + 1) * (OUTBOX_ADDRESS_MAX + 8) +           \
     3 * (OUTBOX_ERROR_MAX + 8) + 256)

/* ------------------------------------------------------------------------ */
/* Leases (struct outbox_leases in internal.h). */

static size_t lease_home(const struct outbox_leases *ls, uint64_t id)
{
    return (size_t)((id * 0x9e3779b97f4a7c15ull) >> 32) & (ls->cap - 1);
}

bool outbox__lease_has(const struct outbox_leases *ls, uint64_t id)
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

void outbox__lease_insert(struct outbox_leases *ls, uint64_t id)
{
    size_t i = lease_home(ls, id);

    while (ls->slot[i] != 0 && ls->slot[i] != id)
        i = (i + 1) & (ls->cap - 1);
    if (ls->slot[i] == 0) {
        ls->slot[i] = id;
        ls->n++;
    }
}

int outbox__lease_reserve(struct outbox_leases *ls, size_t more)
{
    struct outbox_leases grown;
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
            outbox__lease_insert(&grown, ls->slot[i]);
    free(ls->slot);
    *ls = grown;
    return 0;
}

void outbox__lease_remove(struct outbox_leases *ls, uint64_t id)
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
/* Due keys. */

/* A time before the epoch sorts as the epoch: due keys hold unsigned times. */
MDB_val outbox__due_key(int priority, int64_t next_try_ms, uint64_t id,
                        uint8_t buf[OUTBOX__DUE_KEY_LEN])
{
    buf[0] = (uint8_t)priority;
    dbenv_put_u64(buf + 1, next_try_ms > 0 ? (uint64_t)next_try_ms : 0);
    dbenv_put_u64(buf + 9, id);
    return (MDB_val){.mv_size = OUTBOX__DUE_KEY_LEN, .mv_data = buf};
}

bool outbox__due_parse(const MDB_val *k, struct outbox_due *out)
{
    const uint8_t *p = k->mv_data;
    uint64_t t;

    if (k->mv_size != OUTBOX__DUE_KEY_LEN || (p[0] != OUTBOX_TOKENCODE && p[0] != OUTBOX_REPORT))
        return false;
    t = dbenv_get_u64(p + 1);
    if (t > INT64_MAX)
        return false;
    out->priority = p[0];
    out->next_try_ms = (int64_t)t;
    out->id = dbenv_get_u64(p + 9);
    return out->id != 0;
}

bool outbox__priority_valid(int p)
{
    return p == OUTBOX_TOKENCODE || p == OUTBOX_REPORT;
}

/* ------------------------------------------------------------------------ */
/* Text kept from delivery errors. */

/* The text comes from a remote server and ends up in listings and JSON:
 * hence valid UTF-8 without control characters, cut on a boundary. */
void outbox__error_copy(char out[OUTBOX_ERROR_MAX + 1], const char *in)
{
    const unsigned char *s = (const unsigned char *)(in != NULL ? in : "");
    size_t len = strlen((const char *)s), o = 0;

    while (len > 0) {
        size_t n = utf8_char_len((const char *)s, len);
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

bool outbox__address_valid(const char *a, bool may_be_empty)
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

void outbox__record_free(Smtpsync__OutboxMessage *m)
{
    if (m != NULL)
        smtpsync__outbox_message__free_unpacked(m, NULL);
}

/* Every field this code relies on is checked here, once: a record that
 * passes is used as it is everywhere else. */
int outbox__record_unpack(const MDB_val *val, uint64_t id, bool dead, Smtpsync__OutboxMessage **out,
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
    else if (!outbox__priority_valid(m->priority))
        *why = "no valid priority";
    else if (m->n_rcpt_to > SMTP_MESSAGE_RCPT_MAX || (m->n_rcpt_to == 0 && !dead))
        *why = "no valid number of recipients";
    else if (!outbox__address_valid(m->mail_from, true))
        *why = "invalid envelope sender";
    else if (m->message.len > SMTP_MESSAGE_MAX)
        *why = "message over its size limit";
    else if (strlen(m->last_error) > OUTBOX_ERROR_MAX || strlen(m->dead_reason) > OUTBOX_ERROR_MAX)
        *why = "error text over its size limit";
    for (size_t i = 0; **why == '\0' && i < m->n_rcpt_to; i++)
        if (!outbox__address_valid(m->rcpt_to[i], false))
            *why = "invalid recipient";
    if (**why != '\0') {
        /* Our allocator's free is free(): the default one releases it. */
        outbox__record_free(m);
        return ERROR_CORRUPT;
    }
    *out = m;
    return 0;
}

int outbox__record_put(MDB_txn *txn, MDB_dbi dbi, const Smtpsync__OutboxMessage *m, unsigned flags)
{
    uint8_t kb[8];
    MDB_val key = dbenv_key_u64(m->id, kb), val;
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
int outbox__msg_from_record(const Smtpsync__OutboxMessage *r, bool body, struct outbox_msg **out)
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
