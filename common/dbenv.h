/*
 * dbenv: what every LMDB environment of smtpsync needs, in one place:
 * opening it and its named databases, read transactions that follow a
 * map another process grew, write transactions that grow a full map and
 * run again, big-endian and string keys, and LMDB's return values in
 * error.h's convention.
 *
 * LMDB reports its own failures as negative MDB_* codes but system
 * failures as POSITIVE errno values (EIO, EACCES, ENOMEM, ENOSPC... from
 * mdb_env_open, mdb_txn_begin, mdb_txn_commit, mdb_put...), which a caller
 * testing rc < 0 would take for success. Every dbenv_ function returns
 * values of the convention already; a module that calls mdb_* itself
 * passes what it got through dbenv_error() before it leaves the module.
 *
 * Ownership: dbenv_open() hands out an MDB_env the caller closes with
 * mdb_env_close(). dbenv_txn_read() hands out a read transaction the caller
 * ends with mdb_txn_abort(). A write transaction belongs to dbenv_write()
 * throughout: the function it runs neither ends it nor keeps it, nor any
 * MDB_val read through it, once it returns.
 *
 * Threads: LMDB lets mdb_env_set_mapsize() run only while this process has
 * no transaction open on the environment, and does not check.
 * dbenv_txn_read() and dbenv_write() call it (to adopt or to grow the map),
 * so an environment is used by one thread at a time, and neither function
 * is called while the caller holds another transaction of the same
 * environment. Opened without MDB_NOTLS, a read transaction also stays on
 * the thread that began it.
 */
#ifndef SMTPSYNC_DBENV_H
#define SMTPSYNC_DBENV_H

#include <stddef.h>
#include <stdint.h>

#include <lmdb.h>

struct dbenv_params {
    const char *dir; /* an existing directory */
    unsigned maxdbs; /* named databases, mdb_env_set_maxdbs() */
    size_t map_size; /* initial map size; 0: LMDB's default. Grows on demand. */
    unsigned flags;  /* mdb_env_open() flags, e.g. MDB_NOTLS */
    mdb_mode_t mode; /* of the files LMDB creates, e.g. 0600 */
};

/*
 * Creates and opens an environment, then clears the reader slots of dead
 * processes (a process killed while reading leaves its slot behind, which
 * would pin old pages forever). On failure nothing is left open and *out
 * is untouched. Returns 0, -errno (-ENOENT for a missing directory,
 * -EACCES...), or an MDB_* code (MDB_INVALID, MDB_VERSION_MISMATCH...).
 */
int dbenv_open(const struct dbenv_params *params, MDB_env **out);

/*
 * Begins a read transaction. When another process grew the map past ours
 * (MDB_MAP_RESIZED), adopts its size and begins again. Returns 0 or an
 * error of the convention.
 */
int dbenv_txn_read(MDB_env *env, MDB_txn **txn);

/*
 * A function run inside a write transaction. It returns 0 to commit, or an
 * error (of the convention, or any mdb_* return value) to abort. It may run
 * more than once (see dbenv_write), so it starts from its arguments as
 * given each time and keeps no effect outside the transaction until
 * dbenv_write() returns 0.
 */
typedef int (*dbenv_txn_fn)(MDB_txn *txn, void *arg);

/*
 * Runs fn in one write transaction and commits it (synced as the
 * environment's flags say: with the default flags, on disk when this
 * returns 0). When the map is full (MDB_MAP_FULL from fn or from the
 * commit), the transaction is aborted and fn runs again whole in a new one
 * after the map has grown: at least doubled, and by at least twice `need`
 * octets, what fn is about to write when that is known (0 otherwise), so a
 * large record does not climb there by doublings. When fn fails, its
 * transaction is aborted: nothing of it is kept. Returns 0, fn's error
 * (converted), MDB_MAP_FULL when the map cannot grow further, or another
 * error of the convention.
 */
int dbenv_write(MDB_env *env, dbenv_txn_fn fn, void *arg, size_t need);

/* A named database of an environment and where its handle goes. */
struct dbenv_db {
    const char *name;
    MDB_dbi *dbi;
};

/* Opens every database of dbs[0..n) in txn, creating those missing: their
 * handles are valid once txn commits. Stops at the first failure. */
int dbenv_open_dbs(MDB_txn *txn, const struct dbenv_db *dbs, size_t n);

/* Any LMDB return value in error.h's convention: a positive errno becomes
 * -errno; 0, MDB_* codes and values already negative are kept. */
int dbenv_error(int rc);

/* Keys. Integers are big-endian so that LMDB's byte order is theirs. */

/* A key holding the bytes of `s` (without its NUL); it borrows `s`. */
MDB_val dbenv_key_str(const char *s);
/* An 8-octet key of `v`, written into buf (which the key borrows). */
MDB_val dbenv_key_u64(uint64_t v, uint8_t buf[8]);
void dbenv_put_u64(uint8_t *p, uint64_t v);
/* The big-endian integer in p[0..8). */
uint64_t dbenv_get_u64(const uint8_t *p);

#endif
