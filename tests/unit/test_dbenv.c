/*
 * dbenv: LMDB return values in error.h's convention, opening, map growth on
 * MDB_MAP_FULL (by doubling and by a size hint), adoption of a map another
 * process grew, a failing write function leaving nothing behind, keys.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <lmdb.h>

#include "dbenv.h"
#include "error.h"
#include "testutil.h"

#define TINY_MAP ((size_t)64 * 1024)

struct fixture {
    char *dir;
    MDB_env *env;
    MDB_dbi dbi;
};

/* What a write function does: put `count` values of `len` octets under
 * keys first..first+count-1, then return `fail`. `calls` counts its runs. */
struct put_ctx {
    MDB_dbi *dbi;
    uint64_t first;
    size_t count;
    size_t len;
    int fail;
    int calls;
};

static int put_fn(MDB_txn *txn, void *arg)
{
    struct put_ctx *c = arg;
    uint8_t kb[8];
    MDB_val key, val;
    int rc;

    c->calls++;
    for (size_t i = 0; i < c->count; i++) {
        key = dbenv_key_u64(c->first + i, kb);
        val = (MDB_val){.mv_size = c->len, .mv_data = NULL};
        rc = mdb_put(txn, *c->dbi, &key, &val, MDB_RESERVE);
        if (rc != 0)
            return rc;
        memset(val.mv_data, (int)(i & 0xff), c->len);
    }
    return c->fail;
}

static int open_dbs_fn(MDB_txn *txn, void *arg)
{
    const struct dbenv_db db = {"data", arg};

    return dbenv_open_dbs(txn, &db, 1);
}

static int open_env(const char *dir, size_t map_size, MDB_env **env, MDB_dbi *dbi)
{
    struct dbenv_params p = {.dir = dir, .maxdbs = 2, .map_size = map_size, .mode = 0600};
    int rc = dbenv_open(&p, env);

    if (rc == 0) {
        rc = dbenv_write(*env, open_dbs_fn, dbi, 0);
        if (rc != 0)
            mdb_env_close(*env);
    }
    return rc;
}

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));

    assert_non_null(f);
    f->dir = testutil_tmpdir();
    assert_int_equal(open_env(f->dir, TINY_MAP, &f->env, &f->dbi), 0);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;

    if (f->env != NULL)
        mdb_env_close(f->env);
    testutil_rmtree(f->dir);
    free(f->dir);
    free(f);
    return 0;
}

static size_t map_size(MDB_env *env)
{
    MDB_envinfo info;

    assert_int_equal(mdb_env_info(env, &info), 0);
    return info.me_mapsize;
}

/* Entries in the database, read through dbenv_txn_read(). */
static size_t entries(MDB_env *env, MDB_dbi dbi)
{
    MDB_txn *txn;
    MDB_stat st;

    assert_int_equal(dbenv_txn_read(env, &txn), 0);
    assert_int_equal(mdb_stat(txn, dbi, &st), 0);
    mdb_txn_abort(txn);
    return st.ms_entries;
}

/* ------------------------------------------------------------------------ */

static void test_dbenv_error_converts(void **state)
{
    (void)state;
    /* System errors come from LMDB positive; the convention wants them
     * negative, with error_str() giving the errno text. */
    assert_int_equal(dbenv_error(EIO), -EIO);
    assert_int_equal(dbenv_error(EACCES), -EACCES);
    assert_int_equal(dbenv_error(ENOMEM), -ENOMEM);
    assert_int_equal(dbenv_error(ENOSPC), -ENOSPC);
    assert_string_equal(error_str(dbenv_error(EACCES)), strerror(EACCES));
    /* LMDB's own codes are negative already and stay as they are. */
    assert_int_equal(dbenv_error(MDB_NOTFOUND), MDB_NOTFOUND);
    assert_int_equal(dbenv_error(MDB_MAP_FULL), MDB_MAP_FULL);
    assert_int_equal(dbenv_error(MDB_KEYEXIST), MDB_KEYEXIST);
    assert_int_equal(dbenv_error(MDB_CORRUPTED), MDB_CORRUPTED);
    assert_string_equal(error_str(dbenv_error(MDB_MAP_FULL)), mdb_strerror(MDB_MAP_FULL));
    /* Success, and values of the convention, pass through. */
    assert_int_equal(dbenv_error(0), 0);
    assert_int_equal(dbenv_error(-ENOENT), -ENOENT);
    assert_int_equal(dbenv_error(ERROR_CORRUPT), ERROR_CORRUPT);
}

/* A positive value is outside the convention: typically LMDB's system error
 * passed on without dbenv_error(). Its text must not say "success". */
static void test_dbenv_error_str_positive_is_not_success(void **state)
{
    (void)state;
    assert_string_equal(error_str(0), "success");
    assert_string_not_equal(error_str(EIO), "success");
    assert_string_not_equal(error_str(1), "success");
    assert_string_not_equal(error_str(0x7fffffff), "success");
    assert_non_null(strstr(error_str(EACCES), "positive"));
    /* Converted, the same value reads as its errno. */
    assert_string_equal(error_str(dbenv_error(EIO)), strerror(EIO));
}

static void test_dbenv_open_system_error_negative(void **state)
{
    struct dbenv_params p = {.maxdbs = 1, .map_size = TINY_MAP, .mode = 0600};
    char *dir = testutil_tmpdir();
    char path[512];
    MDB_env *env = (MDB_env *)&p; /* a sentinel: must stay untouched */
    FILE *fp;
    int rc;

    (void)state;
    /* mdb_env_open() fails with a positive errno for both. */
    snprintf(path, sizeof(path), "%s/missing", dir);
    p.dir = path;
    rc = dbenv_open(&p, &env);
    assert_int_equal(rc, -ENOENT);
    assert_ptr_equal(env, (MDB_env *)&p);

    snprintf(path, sizeof(path), "%s/file", dir);
    fp = fopen(path, "w");
    assert_non_null(fp);
    fclose(fp);
    rc = dbenv_open(&p, &env);
    assert_true(rc < 0);
    assert_int_equal(rc, -ENOTDIR);
    assert_string_equal(error_str(rc), strerror(ENOTDIR));
    assert_ptr_equal(env, (MDB_env *)&p);

    testutil_rmtree(dir);
    free(dir);
}

static void test_dbenv_write_grows_map_by_doubling(void **state)
{
    struct fixture *f = *state;
    /* About 20 times the initial map, in small records. */
    struct put_ctx c = {.dbi = &f->dbi, .count = 1280, .len = 1000};
    size_t before = map_size(f->env);

    assert_int_equal(dbenv_write(f->env, put_fn, &c, 0), 0);
    assert_true(c.calls > 2); /* several doublings, each a full rerun */
    assert_true(map_size(f->env) >= 16 * before);
    assert_int_equal(entries(f->env, f->dbi), 1280);
}

static void test_dbenv_write_grows_map_for_hint(void **state)
{
    struct fixture *f = *state;
    struct put_ctx c = {.dbi = &f->dbi, .count = 1, .len = (size_t)4 << 20};
    size_t before = map_size(f->env);
    MDB_txn *txn;
    uint8_t kb[8];
    MDB_val key = dbenv_key_u64(0, kb), val;

    /* A 4 MiB record in a 64 KiB map: with its size stated, one growth
     * makes room, where doublings alone would take seven. */
    assert_int_equal(dbenv_write(f->env, put_fn, &c, c.len), 0);
    assert_int_equal(c.calls, 2);
    assert_true(map_size(f->env) >= before + 2 * c.len);
    assert_int_equal(map_size(f->env) % (size_t)sysconf(_SC_PAGESIZE), 0);

    assert_int_equal(dbenv_txn_read(f->env, &txn), 0);
    assert_int_equal(mdb_get(txn, f->dbi, &key, &val), 0);
    assert_int_equal(val.mv_size, c.len);
    mdb_txn_abort(txn);
}

static void test_dbenv_write_failure_keeps_nothing(void **state)
{
    struct fixture *f = *state;
    struct put_ctx c = {.dbi = &f->dbi, .count = 3, .len = 10, .fail = ERROR_INVALID};
    MDB_txn *txn;
    uint8_t kb[8];
    MDB_val key = dbenv_key_u64(0, kb), val;

    assert_int_equal(dbenv_write(f->env, put_fn, &c, 0), ERROR_INVALID);
    assert_int_equal(c.calls, 1); /* a failure is not retried */
    assert_int_equal(entries(f->env, f->dbi), 0);

    /* A positive errno from the function comes back negative. */
    c.fail = EIO;
    c.calls = 0;
    assert_int_equal(dbenv_write(f->env, put_fn, &c, 0), -EIO);
    assert_int_equal(c.calls, 1);
    assert_int_equal(dbenv_txn_read(f->env, &txn), 0);
    assert_int_equal(mdb_get(txn, f->dbi, &key, &val), MDB_NOTFOUND);
    mdb_txn_abort(txn);

    /* Failing after a growth: the grown map stays, the data does not. */
    c.count = 200;
    c.len = 1000;
    c.fail = ERROR_CONFLICT;
    c.calls = 0;
    assert_int_equal(dbenv_write(f->env, put_fn, &c, 0), ERROR_CONFLICT);
    assert_true(c.calls >= 2);
    assert_int_equal(entries(f->env, f->dbi), 0);

    /* And the environment is as usable as before. */
    c.fail = 0;
    assert_int_equal(dbenv_write(f->env, put_fn, &c, 0), 0);
    assert_int_equal(entries(f->env, f->dbi), 200);
}

/* In a child process (LMDB forbids using an environment across fork(), and
 * one process should open an environment once), opens `dir` with a map of
 * its own and writes one record of `len` octets under key `k`. The parent's
 * map is then smaller than the data file. */
static void grow_elsewhere(const char *dir, uint64_t k, size_t len)
{
    int status;
    pid_t pid = fork();

    assert_true(pid >= 0);
    if (pid == 0) {
        MDB_env *env;
        MDB_dbi dbi;
        struct put_ctx c = {.dbi = &dbi, .first = k, .count = 1, .len = len};
        int rc = open_env(dir, (size_t)8 << 20, &env, &dbi);

        if (rc == 0) {
            rc = dbenv_write(env, put_fn, &c, len);
            mdb_env_close(env);
        }
        _exit(rc == 0 ? 0 : 1);
    }
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
}

static void test_dbenv_txn_read_adopts_grown_map(void **state)
{
    struct fixture *f = *state;
    size_t before = map_size(f->env);
    MDB_txn *txn;
    uint8_t kb[8];
    MDB_val key = dbenv_key_u64(0, kb), val;

    grow_elsewhere(f->dir, 0, (size_t)1 << 20);
    /* LMDB itself refuses to read past our map... */
    assert_int_equal(mdb_txn_begin(f->env, NULL, MDB_RDONLY, &txn), MDB_MAP_RESIZED);
    /* ...dbenv_txn_read() adopts the new size and reads. */
    assert_int_equal(dbenv_txn_read(f->env, &txn), 0);
    assert_int_equal(mdb_get(txn, f->dbi, &key, &val), 0);
    assert_int_equal(val.mv_size, (size_t)1 << 20);
    assert_int_equal(((const uint8_t *)val.mv_data)[val.mv_size - 1], 0);
    mdb_txn_abort(txn);
    assert_true(map_size(f->env) > before);
}

static void test_dbenv_write_adopts_grown_map(void **state)
{
    struct fixture *f = *state;
    struct put_ctx c = {.dbi = &f->dbi, .first = 1, .count = 1, .len = 10};
    MDB_txn *txn;
    int rc;

    grow_elsewhere(f->dir, 0, (size_t)1 << 20);
    rc = mdb_txn_begin(f->env, NULL, 0, &txn);
    if (rc == 0)
        mdb_txn_abort(txn);
    assert_int_equal(rc, MDB_MAP_RESIZED);
    assert_int_equal(dbenv_write(f->env, put_fn, &c, 0), 0);
    assert_int_equal(c.calls, 1);
    assert_int_equal(entries(f->env, f->dbi), 2);
}

static void test_dbenv_keys(void **state)
{
    uint8_t a[8], b[8];
    MDB_val ka = dbenv_key_u64(1, a), kb = dbenv_key_u64(256, b), ks;

    (void)state;
    /* Big-endian: byte order is numeric order. */
    assert_int_equal(ka.mv_size, 8);
    assert_true(memcmp(ka.mv_data, kb.mv_data, 8) < 0);
    assert_int_equal(dbenv_get_u64(a), 1);
    assert_int_equal(dbenv_get_u64(b), 256);
    dbenv_put_u64(a, UINT64_MAX - 1);
    assert_int_equal(a[0], 0xff);
    assert_int_equal(a[7], 0xfe);
    assert_true(dbenv_get_u64(a) == UINT64_MAX - 1);

    ks = dbenv_key_str("state");
    assert_int_equal(ks.mv_size, 5); /* without the NUL */
    assert_memory_equal(ks.mv_data, "state", 5);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dbenv_error_converts),
        cmocka_unit_test(test_dbenv_error_str_positive_is_not_success),
        cmocka_unit_test(test_dbenv_open_system_error_negative),
        cmocka_unit_test_setup_teardown(test_dbenv_write_grows_map_by_doubling, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dbenv_write_grows_map_for_hint, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dbenv_write_failure_keeps_nothing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dbenv_txn_read_adopts_grown_map, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dbenv_write_adopts_grown_map, setup, teardown),
        cmocka_unit_test(test_dbenv_keys),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
