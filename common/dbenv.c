#include "dbenv.h"

#include <stdint.h>
#include <string.h>
#include <unistd.h>

#include <lmdb.h>

#include "error.h"
#include "internal.h"

int dbenv_error(int rc)
{
    return rc > 0 ? -rc : rc;
}

int dbenv_open(const struct dbenv_params *params, MDB_env **out)
{
    MDB_env *env;
    int rc, dead;

    rc = mdb_env_create(&env);
    if (rc != 0)
        return dbenv_error(rc);
    rc = mdb_env_set_maxdbs(env, params->maxdbs);
    if (rc == 0 && params->map_size != 0)
        rc = mdb_env_set_mapsize(env, params->map_size);
    if (rc == 0)
        rc = mdb_env_open(env, params->dir, params->flags, params->mode);
    if (rc == 0)
        rc = mdb_reader_check(env, &dead);
    if (rc != 0) {
        mdb_env_close(env);
        return dbenv_error(rc);
    }
    *out = env;
    return 0;
}

int dbenv_txn_read(MDB_env *env, MDB_txn **txn)
{
    int rc = mdb_txn_begin(env, NULL, MDB_RDONLY, txn);

    if (rc == MDB_MAP_RESIZED) {
        /* Another process grew the map; adopt its size. */
        rc = mdb_env_set_mapsize(env, 0);
        if (rc == 0)
            rc = mdb_txn_begin(env, NULL, MDB_RDONLY, txn);
    }
    return dbenv_error(rc);
}

/*
 * The map after MDB_MAP_FULL: doubled, and at least `need` twice over
 * (records that large go to overflow pages, and the pages they replace are
 * not free until the commit), rounded up to a page.
 */
static int map_grow(MDB_env *env, size_t need)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE), size;
    MDB_envinfo info;
    int rc;

    rc = mdb_env_info(env, &info);
    if (rc != 0)
        return rc;
    if (info.me_mapsize > SIZE_MAX / 2 || need > (SIZE_MAX - info.me_mapsize) / 4)
        return MDB_MAP_FULL;
    size = info.me_mapsize * 2;
    if (size < info.me_mapsize + 2 * need)
        size = info.me_mapsize + 2 * need;
    size = (size + page - 1) / page * page;
    return mdb_env_set_mapsize(env, size);
}

int dbenv_write(MDB_env *env, dbenv_txn_fn fn, void *arg, size_t need)
{
    MDB_txn *txn;
    int rc;

    for (;;) {
        rc = mdb_txn_begin(env, NULL, 0, &txn);
        if (rc == MDB_MAP_RESIZED) {
            rc = mdb_env_set_mapsize(env, 0);
            if (rc != 0)
                break;
            continue;
        }
        if (rc != 0)
            break;
        rc = fn(txn, arg);
        if (rc == 0)
            rc = mdb_txn_commit(txn); /* which frees txn, failing or not */
        else
            mdb_txn_abort(txn);
        if (rc != MDB_MAP_FULL)
            break;
        /* No transaction of ours is open now, as mdb_env_set_mapsize()
         * requires (dbenv.h, threads). */
        rc = map_grow(env, need);
        if (rc != 0)
            break;
    }
    return dbenv_error(rc);
}

int dbenv_open_dbs(MDB_txn *txn, const struct dbenv_db *dbs, size_t n)
{
    int rc = 0;

    for (size_t i = 0; i < n && rc == 0; i++)
        rc = mdb_dbi_open(txn, dbs[i].name, MDB_CREATE, dbs[i].dbi);
    return dbenv_error(rc);
}

MDB_val dbenv_key_str(const char *s)
{
    return (MDB_val){.mv_size = strlen(s), .mv_data = BORROW_CONST(s)};
}

void dbenv_put_u64(uint8_t *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--) {
        p[i] = (uint8_t)v;
        v >>= 8;
    }
}

uint64_t dbenv_get_u64(const uint8_t *p)
{
    uint64_t v = 0;

    for (int i = 0; i < 8; i++)
        v = v << 8 | p[i];
    return v;
}

MDB_val dbenv_key_u64(uint64_t v, uint8_t buf[8])
{
    dbenv_put_u64(buf, v);
    return (MDB_val){.mv_size = 8, .mv_data = buf};
}
