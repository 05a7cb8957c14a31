/*
 * internal: non-static helpers shared between files of common/, never
 * installed and never included from outside common/ (STYLE.md, point 2).
 *
 * settings: what settings.c (record, setters, names, display) and
 * settings_check.c (validation) share.
 *
 * store: what store.c (open, meta, records, reading), store_draft.c (drafts,
 * save) and store_history.c (states, chain hash, rollback, history, diff,
 * compaction, verification) share.
 */
#ifndef SMTPSYNC_COMMON_INTERNAL_H
#define SMTPSYNC_COMMON_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#include <lmdb.h>

#include "error.h"
#include "seal.h"
#include "settings_pb.h"
#include "settings.h"
#include "store.h"

/* settings.c */

#define SETTINGS__PORT_MAX  65535u
/* How much of a bad value a problem message quotes back. */
#define SETTINGS__QUOTE_MAX 64

/* Quotes (a prefix of) a value for a problem message: "value" or
 * "valu..."; buf should hold SETTINGS__QUOTE_MAX + 8 bytes. Returns buf. */
const char *settings__quote(char *buf, size_t len, const char *value);
/* The value of a TIMEOUT field; aborts for any other field. */
uint32_t settings__timeout_value(const struct settings *s, enum settings_field f);
/* "YYYY-MM-DD HH:MM UTC" of a Unix time, or "an unreadable date" if t < 0. */
void settings__format_date(long long t, char *buf, size_t len);

/* protobuf-c messages and LMDB's MDB_val hold non-const pointers although
 * packing and mdb_put/mdb_get only read through them; what we hand them
 * borrows const data through this one cast. */
#define BORROW_CONST(p) ((void *)(uintptr_t)(p))

struct store {
    MDB_env *env;
    MDB_dbi settings;
    MDB_dbi drafts;
    MDB_dbi history;
    MDB_dbi snapshot;
    MDB_dbi meta;
    struct seal_key key;
};

/* The fields of StoreMeta the store itself maintains. */
struct store_meta {
    uint64_t revision;
    uint64_t epoch;
    uint64_t base_revision;
    int64_t revision_time_ms;
    uint8_t hash[STORE_HASH_LEN];
    uint8_t base_hash[STORE_HASH_LEN];
    uint8_t base_state_hash[STORE_HASH_LEN]; /* store__state_digest(snapshot) */
    uint8_t key_check[SEAL_CHECK_LEN];       /* seal_key_check(node key) */
};

/* A whole state (instance -> packed Settings, sealed secrets included),
 * sorted by instance in LMDB's key order, rebuilt in memory for reading
 * old revisions, rollback, compaction and verification. */
struct store_state_entry {
    char instance[SETTINGS_INSTANCE_MAX + 1];
    uint8_t *data;
    size_t len;
};

struct store_state {
    struct store_state_entry *v;
    size_t n;
    size_t cap;
};

static inline int64_t store__now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static inline MDB_val store__key_str(const char *s)
{
    return (MDB_val){.mv_size = strlen(s), .mv_data = BORROW_CONST(s)};
}

/* History keys are big-endian so LMDB's byte order is revision order. */
static inline MDB_val store__key_rev(uint64_t rev, uint8_t buf[8])
{
    for (int i = 7; i >= 0; i--) {
        buf[i] = (uint8_t)rev;
        rev >>= 8;
    }
    return (MDB_val){.mv_size = 8, .mv_data = buf};
}

static inline uint64_t store__rev_of_key(const MDB_val *k)
{
    const uint8_t *p = k->mv_data;
    uint64_t rev = 0;

    for (size_t i = 0; i < 8; i++)
        rev = rev << 8 | p[i];
    return rev;
}

/* An instance key read back from LMDB must be a valid id. */
static inline int store__key_instance(const MDB_val *k, char out[SETTINGS_INSTANCE_MAX + 1])
{
    if (k->mv_size == 0 || k->mv_size > SETTINGS_INSTANCE_MAX ||
        memchr(k->mv_data, '\0', k->mv_size) != NULL)
        return ERROR_CORRUPT;
    memcpy(out, k->mv_data, k->mv_size);
    out[k->mv_size] = '\0';
    return 0;
}

/* store.c */

/* Actor required; actor and comment within their limits and free of
 * control characters. ERROR_INVALID, ERROR_TOO_BIG. */
int store__check_commit(const struct store_commit *c);
/* A read transaction, adopting a map another process grew. */
int store__txn_read(struct store *st, MDB_txn **txn);

typedef int (*store__txn_fn)(struct store *st, MDB_txn *txn, void *arg);
/* Runs body in one write transaction, retried whole with a doubled map
 * after MDB_MAP_FULL. */
int store__write(struct store *st, store__txn_fn body, void *arg);

/* Packs `s` as it is stored, its password (which must be loaded when set)
 * sealed under the node key and bound to instance and secret id; *out is
 * malloc'd. ERROR_INVALID, -ENOMEM, ERROR_CRYPTO. */
int store__record_pack(struct store *st, const struct settings *s, uint8_t **out, size_t *out_len);
/* NULL if data is not a Settings message; free with
 * smtpsync__settings__free_unpacked(m, NULL). */
Smtpsync__Settings *store__record_unpack(const void *data, size_t len);
/* Decodes an unpacked stored record into out (cleared first), as
 * store__record_decode(); when it refuses the record (ERROR_CORRUPT,
 * ERROR_TAMPERED) and `problems` is not NULL, a problem names the field. */
int store__record_decode_msg(struct store *st, const Smtpsync__Settings *m, const char *instance,
                             unsigned flags, struct settings *out,
                             struct settings_problems *problems);
/* Decodes a stored record into out (cleared first); `instance`, if not
 * NULL, must be its id. STORE_UNSEAL opens the password. ERROR_CORRUPT,
 * ERROR_TAMPERED, -ENOMEM. */
int store__record_decode(struct store *st, const void *data, size_t len, const char *instance,
                         unsigned flags, struct settings *out);
bool store__record_differs(const struct settings *a, const struct settings *b);

int store__meta_read(struct store *st, MDB_txn *txn, struct store_meta *out);
int store__meta_write(struct store *st, MDB_txn *txn, struct store_meta *meta);

/* Decodes every record of a state, then calls cb for each in order: a
 * decode failure is returned before any callback runs. */
int store__state_each(struct store *st, const struct store_state *s, unsigned flags,
                      store_each_cb cb, void *arg);

/* store_history.c */

void store__state_free(struct store_state *s);
/* SHA-256 of a state in canonical form: the packed Snapshot message holding
 * only `records`, in the state's (instance) order, each Secret reduced to
 * its id, so the digest is the same on every node. ERROR_CORRUPT if a
 * record does not unpack. */
int store__state_digest(const struct store_state *s, uint8_t out[STORE_HASH_LEN]);
/* Index of `instance`, or where it would go; *found tells which. */
size_t store__state_find(const struct store_state *s, const char *instance, bool *found);
/* Adds every entry of an instance -> record database to `out`. */
int store__state_load(MDB_txn *txn, MDB_dbi dbi, struct store_state *out);
/* The state at `revision`. ERROR_COMPACTED below the base, ERROR_INVALID
 * beyond the head, ERROR_CORRUPT if the snapshot does not match meta's
 * base_state_hash or history cannot be replayed. */
int store__state_at(struct store *st, MDB_txn *txn, const struct store_meta *meta,
                    uint64_t revision, struct store_state *out);
/* Appends revision meta->revision + 1 made of `changes` inside `txn`:
 * history row with its chain hash, current records, meta (updated). */
int store__revision_commit(struct store *st, MDB_txn *txn, struct store_meta *meta,
                           const struct store_commit *commit, Smtpsync__Change **changes, size_t n,
                           uint64_t rollback_of, uint64_t *rev_out);

#endif
