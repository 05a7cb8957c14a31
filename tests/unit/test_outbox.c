/*
 * The outbox: submission, due order, leases, results, expiry, operator
 * actions, growth of the map, damaged records, and reopening.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <lmdb.h>
#include <uv.h>

#include "error.h"
#include "outbox.h"
#include "smtp_message.h"
#include "smtpsync.pb-c.h"
#include "testutil.h"

#define NOW    ((int64_t)1700000000000)
#define MINUTE ((int64_t)60 * 1000)

struct fixture {
    char *dir;
    struct outbox *ob;
};

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));
    struct outbox_params p = {0};

    assert_non_null(f);
    f->dir = testutil_tmpdir();
    p.dir = f->dir;
    assert_int_equal(outbox_open(&p, &f->ob), 0);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;

    outbox_close(f->ob);
    testutil_rmtree(f->dir);
    free(f->dir);
    free(f);
    return 0;
}

static void reopen(struct fixture *f)
{
    struct outbox_params p = {.dir = f->dir};

    outbox_close(f->ob);
    f->ob = NULL;
    assert_int_equal(outbox_open(&p, &f->ob), 0);
}

static const char *const one_rcpt[] = {"alice@example.com"};

static struct outbox_new new_msg(enum outbox_priority prio, const char *body)
{
    struct outbox_new m = {
        .priority = prio,
        .rcpts = one_rcpt,
        .nrcpts = 1,
        .message = body,
        .message_len = strlen(body),
    };
    return m;
}

static uint64_t submit(struct outbox *ob, enum outbox_priority prio, const char *body, int64_t now)
{
    struct outbox_new m = new_msg(prio, body);
    uint64_t id = 0;

    assert_int_equal(outbox_submit(ob, &m, 1, now, &id), 0);
    assert_true(id != 0);
    return id;
}

/* Takes up to `max` (<= 64) messages; returns the count, ids in ids[]. */
static size_t take_ids(struct outbox *ob, int64_t now, size_t max, uint64_t *ids)
{
    struct outbox_msg *out[64];
    size_t n = 99;

    assert_true(max <= 64);
    assert_int_equal(outbox_take(ob, now, out, max, &n), 0);
    assert_true(n <= max);
    for (size_t i = 0; i < n; i++) {
        if (ids != NULL)
            ids[i] = out[i]->id;
        outbox_msg_free(out[i]);
    }
    return n;
}

static void apply1(struct outbox *ob, uint64_t id, enum outbox_outcome o, int64_t next,
                   const char *error, int64_t now)
{
    struct outbox_result r = {.id = id, .outcome = o, .next_try_ms = next, .error = error};

    assert_int_equal(outbox_apply(ob, &r, 1, now), 0);
}

/* Collects what outbox_each() lists. */
struct listing {
    struct outbox_msg *m[64];
    bool dead[64];
    size_t n;
};

static int collect(const struct outbox_msg *m, bool dead, void *arg)
{
    struct listing *l = arg;
    struct outbox_msg *c = calloc(1, sizeof(*c));

    assert_non_null(c);
    assert_true(l->n < 64);
    assert_null(m->message);
    *c = *m;
    c->last_error = strdup(m->last_error);
    c->mail_from = strdup(m->mail_from);
    c->dead_reason = strdup(m->dead_reason);
    c->rcpts = calloc(m->nrcpts + 1, sizeof(char *));
    assert_non_null(c->rcpts);
    for (size_t i = 0; i < m->nrcpts; i++)
        c->rcpts[i] = strdup(m->rcpts[i]);
    l->dead[l->n] = dead;
    l->m[l->n++] = c;
    return 0;
}

static void list(struct outbox *ob, bool dead, struct listing *l)
{
    memset(l, 0, sizeof(*l));
    assert_int_equal(outbox_each(ob, dead, collect, l), 0);
}

static void list_free(struct listing *l)
{
    for (size_t i = 0; i < l->n; i++)
        outbox_msg_free(l->m[i]);
    l->n = 0;
}

static void assert_depth(struct outbox *ob, uint64_t tokencodes, uint64_t reports, uint64_t dead)
{
    struct outbox_depth d;

    assert_int_equal(outbox_depth(ob, &d), 0);
    assert_int_equal(d.pending[OUTBOX_TOKENCODE], tokencodes);
    assert_int_equal(d.pending[OUTBOX_REPORT], reports);
    assert_int_equal(d.dead, dead);
}

/* Writes key -> value into a database of the outbox directly (the outbox
 * must be closed): a record changed behind the outbox's back. A NULL value
 * deletes the key. */
static void raw_put(const char *dir, const char *db, const void *key, size_t klen,
                    const void *value, size_t vlen)
{
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;
    MDB_val k = {klen, (void *)(uintptr_t)key}, v = {vlen, (void *)(uintptr_t)value};

    assert_int_equal(mdb_env_create(&env), 0);
    assert_int_equal(mdb_env_set_maxdbs(env, 8), 0);
    assert_int_equal(mdb_env_open(env, dir, 0, 0600), 0);
    assert_int_equal(mdb_txn_begin(env, NULL, 0, &txn), 0);
    assert_int_equal(mdb_dbi_open(txn, db, 0, &dbi), 0);
    if (value != NULL)
        assert_int_equal(mdb_put(txn, dbi, &k, &v, 0), 0);
    else
        assert_int_equal(mdb_del(txn, dbi, &k, NULL), 0);
    assert_int_equal(mdb_txn_commit(txn), 0);
    mdb_env_close(env);
}

static void be64(uint8_t *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--, v >>= 8)
        p[i] = (uint8_t)v;
}

/* ------------------------------------------------------------------------ */

static void test_outbox_round_trip(void **state)
{
    struct fixture *f = *state;
    const char *rcpts[] = {"a@example.com", "b@example.org"};
    const char body[] = "Subject: hi\r\n\r\nbody\r\n";
    struct outbox_new m = {
        .priority = OUTBOX_REPORT,
        .mail_from = "bounce@example.com",
        .rcpts = rcpts,
        .nrcpts = 2,
        .message = body,
        .message_len = sizeof(body) - 1,
    };
    struct outbox_msg *out[4];
    uint64_t id = 0;
    size_t n;

    assert_int_equal(outbox_next_due(f->ob), INT64_MAX);
    assert_int_equal(outbox_submit(f->ob, &m, 1, NOW, &id), 0);
    assert_int_equal(id, 1);
    assert_depth(f->ob, 0, 1, 0);
    assert_int_equal(outbox_next_due(f->ob), NOW);

    /* Nothing is due before its time. */
    assert_int_equal(outbox_take(f->ob, NOW - 1, out, 4, &n), 0);
    assert_int_equal(n, 0);

    assert_int_equal(outbox_take(f->ob, NOW, out, 4, &n), 0);
    assert_int_equal(n, 1);
    assert_int_equal(out[0]->id, id);
    assert_int_equal(out[0]->priority, OUTBOX_REPORT);
    assert_int_equal(out[0]->created_ms, NOW);
    assert_int_equal(out[0]->next_try_ms, NOW);
    assert_int_equal(out[0]->expires_ms, NOW + 5 * 24 * 60 * MINUTE);
    assert_int_equal(out[0]->attempts, 0);
    assert_string_equal(out[0]->last_error, "");
    assert_string_equal(out[0]->mail_from, "bounce@example.com");
    assert_int_equal(out[0]->nrcpts, 2);
    assert_string_equal(out[0]->rcpts[0], "a@example.com");
    assert_string_equal(out[0]->rcpts[1], "b@example.org");
    assert_int_equal(out[0]->message_len, sizeof(body) - 1);
    assert_memory_equal(out[0]->message, body, sizeof(body) - 1);
    assert_string_equal(out[0]->dead_reason, "");
    outbox_msg_free(out[0]);

    /* Leased: neither handed out again nor counted as next due. */
    assert_int_equal(take_ids(f->ob, NOW, 4, NULL), 0);
    assert_int_equal(outbox_next_due(f->ob), INT64_MAX);
    assert_depth(f->ob, 0, 1, 0);

    apply1(f->ob, id, OUTBOX_DELIVERED, 0, NULL, NOW);
    assert_depth(f->ob, 0, 0, 0);
    assert_int_equal(take_ids(f->ob, NOW + MINUTE, 4, NULL), 0);
    assert_int_equal(outbox_verify(f->ob), 0);
    outbox_msg_free(NULL);
}

static void test_outbox_tokencodes_first(void **state)
{
    struct fixture *f = *state;
    uint64_t r1, r2, t1, t2, ids[8];

    r1 = submit(f->ob, OUTBOX_REPORT, "report 1", NOW - 3000);
    r2 = submit(f->ob, OUTBOX_REPORT, "report 2", NOW - 2000);
    t1 = submit(f->ob, OUTBOX_TOKENCODE, "code 1", NOW - 1000);
    t2 = submit(f->ob, OUTBOX_TOKENCODE, "code 2", NOW);
    assert_depth(f->ob, 2, 2, 0);

    /* Submitted last, tokencodes still go first; then earliest next try. */
    assert_int_equal(take_ids(f->ob, NOW, 8, ids), 4);
    assert_int_equal(ids[0], t1);
    assert_int_equal(ids[1], t2);
    assert_int_equal(ids[2], r1);
    assert_int_equal(ids[3], r2);
}

static void test_outbox_due_order(void **state)
{
    struct fixture *f = *state;
    struct outbox_result res[3];
    uint64_t a, b, c, ids[8];

    a = submit(f->ob, OUTBOX_REPORT, "a", NOW);
    b = submit(f->ob, OUTBOX_REPORT, "b", NOW);
    c = submit(f->ob, OUTBOX_REPORT, "c", NOW);
    /* Same next try: id order. */
    assert_int_equal(take_ids(f->ob, NOW, 8, ids), 3);
    assert_int_equal(ids[0], a);
    assert_int_equal(ids[1], b);
    assert_int_equal(ids[2], c);
    /* a later than c later than b. */
    res[0] = (struct outbox_result){a, OUTBOX_DEFER, NOW + 3000, "451 a"};
    res[1] = (struct outbox_result){b, OUTBOX_DEFER, NOW + 1000, "451 b"};
    res[2] = (struct outbox_result){c, OUTBOX_DEFER, NOW + 2000, "451 c"};
    assert_int_equal(outbox_apply(f->ob, res, 3, NOW), 0);
    assert_int_equal(outbox_next_due(f->ob), NOW + 1000);
    assert_int_equal(take_ids(f->ob, NOW + 2000, 8, ids), 2);
    assert_int_equal(ids[0], b);
    assert_int_equal(ids[1], c);
    assert_int_equal(outbox_next_due(f->ob), NOW + 3000);
    /* A due report is found behind a tokencode that is not due yet. */
    submit(f->ob, OUTBOX_TOKENCODE, "t", NOW + 10000);
    assert_int_equal(take_ids(f->ob, NOW + 3000, 8, ids), 1);
    assert_int_equal(ids[0], a);
}

static void test_outbox_leases(void **state)
{
    struct fixture *f = *state;
    uint64_t a, b, ids[8];

    a = submit(f->ob, OUTBOX_REPORT, "a", NOW);
    b = submit(f->ob, OUTBOX_REPORT, "b", NOW);
    assert_int_equal(take_ids(f->ob, NOW, 1, ids), 1);
    assert_int_equal(ids[0], a);
    assert_int_equal(take_ids(f->ob, NOW, 8, ids), 1);
    assert_int_equal(ids[0], b);
    assert_int_equal(take_ids(f->ob, NOW, 8, ids), 0);
    assert_int_equal(take_ids(f->ob, NOW, 0, ids), 0);

    /* Released unchanged: handed out again, no attempt counted. */
    apply1(f->ob, a, OUTBOX_RELEASE, 0, NULL, NOW);
    {
        struct outbox_msg *out[2];
        size_t n;
        assert_int_equal(outbox_take(f->ob, NOW, out, 2, &n), 0);
        assert_int_equal(n, 1);
        assert_int_equal(out[0]->id, a);
        assert_int_equal(out[0]->attempts, 0);
        outbox_msg_free(out[0]);
    }

    /* Leases do not survive a restart: both are handed out again. */
    reopen(f);
    assert_int_equal(take_ids(f->ob, NOW, 8, ids), 2);
    assert_int_equal(ids[0], a);
    assert_int_equal(ids[1], b);
}

static void test_outbox_many_leases(void **state)
{
    struct fixture *f = *state;
    enum { TOTAL = 3200, BATCH = 32 };
    struct outbox_new m[BATCH];
    struct outbox_msg **out = calloc(TOTAL, sizeof(*out));
    struct outbox_result *res = calloc(TOTAL, sizeof(*res));
    uint64_t ids[BATCH], first = 0;
    size_t n;

    assert_non_null(out);
    assert_non_null(res);
    for (int i = 0; i < BATCH; i++)
        m[i] = new_msg(OUTBOX_REPORT, "x");
    for (int i = 0; i < TOTAL / BATCH; i++) {
        assert_int_equal(outbox_submit(f->ob, m, BATCH, NOW, ids), 0);
        if (i == 0)
            first = ids[0];
    }
    assert_depth(f->ob, 0, TOTAL, 0);
    assert_int_equal(outbox_take(f->ob, NOW, out, TOTAL, &n), 0);
    assert_int_equal(n, TOTAL);
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(out[i]->id, first + i);
        /* Every other one back, the rest delivered. */
        res[i] =
            (struct outbox_result){out[i]->id, i % 2 ? OUTBOX_RELEASE : OUTBOX_DELIVERED, 0, NULL};
        outbox_msg_free(out[i]);
    }
    assert_int_equal(take_ids(f->ob, NOW, 8, NULL), 0);
    assert_int_equal(outbox_next_due(f->ob), INT64_MAX);
    assert_int_equal(outbox_apply(f->ob, res, TOTAL, NOW), 0);
    assert_depth(f->ob, 0, TOTAL / 2, 0);
    assert_int_equal(outbox_next_due(f->ob), NOW);
    assert_int_equal(outbox_take(f->ob, NOW, out, TOTAL, &n), 0);
    assert_int_equal(n, TOTAL / 2);
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(out[i]->id, first + 2 * i + 1);
        outbox_msg_free(out[i]);
    }
    assert_int_equal(outbox_verify(f->ob), 0);
    free(out);
    free(res);
}

/* Writes pending messages with the given ids (ascending) straight into the
 * databases, as the outbox would, with next_id past them; the outbox must
 * be closed. */
static void raw_fill(const char *dir, const uint64_t *ids, size_t n)
{
    static const char *const rcpt[] = {"r@example.com"};
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi pending, due, meta;
    uint8_t key[8], dk[17], buf[256];
    MDB_val k, v;

    assert_int_equal(mdb_env_create(&env), 0);
    assert_int_equal(mdb_env_set_maxdbs(env, 8), 0);
    assert_int_equal(mdb_env_open(env, dir, 0, 0600), 0);
    assert_int_equal(mdb_txn_begin(env, NULL, 0, &txn), 0);
    assert_int_equal(mdb_dbi_open(txn, "pending", 0, &pending), 0);
    assert_int_equal(mdb_dbi_open(txn, "due", 0, &due), 0);
    assert_int_equal(mdb_dbi_open(txn, "meta", 0, &meta), 0);
    for (size_t i = 0; i < n; i++) {
        Smtpsync__OutboxMessage r;

        smtpsync__outbox_message__init(&r);
        r.id = ids[i];
        r.priority = SMTPSYNC__PRIORITY__PRIORITY_REPORT;
        r.created_ms = NOW;
        r.next_try_ms = NOW;
        r.expires_ms = NOW + 60 * MINUTE;
        r.n_rcpt_to = 1;
        r.rcpt_to = (char **)(uintptr_t)rcpt;
        r.message.data = (uint8_t *)(uintptr_t) "x";
        r.message.len = 1;
        be64(key, ids[i]);
        k = (MDB_val){8, key};
        v = (MDB_val){smtpsync__outbox_message__pack(&r, buf), buf};
        assert_int_equal(mdb_put(txn, pending, &k, &v, 0), 0);
        dk[0] = OUTBOX_REPORT;
        be64(dk + 1, (uint64_t)NOW);
        be64(dk + 9, ids[i]);
        k = (MDB_val){17, dk};
        v = (MDB_val){0, NULL};
        assert_int_equal(mdb_put(txn, due, &k, &v, 0), 0);
    }
    be64(key, ids[n - 1] + 1);
    k = (MDB_val){7, (void *)(uintptr_t) "next_id"};
    v = (MDB_val){8, key};
    assert_int_equal(mdb_put(txn, meta, &k, &v, 0), 0);
    assert_int_equal(mdb_txn_commit(txn), 0);
    mdb_env_close(env);
}

/* Leases against a model: random releases in random order, random takes;
 * a take hands out exactly the free messages, in id order, never a leased
 * one. The ids are scattered (sequential ones hash without a collision),
 * so the lease set probes and shifts entries back on removal. */
static void test_outbox_leases_random(void **state)
{
    struct fixture *f = *state;
    enum { TOTAL = 1500 };
    struct outbox_msg **out = calloc(TOTAL, sizeof(*out));
    struct outbox_result *res = calloc(TOTAL, sizeof(*res));
    uint64_t *ids = calloc(TOTAL, sizeof(*ids));
    bool *leased = calloc(TOTAL, sizeof(*leased));
    unsigned seed = 7;
    size_t n;

    assert_non_null(out);
    assert_non_null(res);
    assert_non_null(ids);
    assert_non_null(leased);
    for (size_t i = 0; i < TOTAL; i++)
        ids[i] = (i == 0 ? 0 : ids[i - 1]) + 1 + (uint64_t)rand_r(&seed) % 100000;
    outbox_close(f->ob);
    f->ob = NULL;
    raw_fill(f->dir, ids, TOTAL);
    reopen(f);
    assert_int_equal(outbox_verify(f->ob), 0);
    for (int round = 0; round < 60; round++) {
        size_t max = 1 + (size_t)rand_r(&seed) % TOTAL, nres = 0, want = 0, next = 0;

        assert_int_equal(outbox_take(f->ob, NOW, out, max, &n), 0);
        for (size_t i = 0; i < TOTAL; i++)
            want += !leased[i];
        assert_int_equal(n, want < max ? want : max);
        for (size_t i = 0; i < n; i++) {
            while (leased[next])
                next++;
            assert_int_equal(out[i]->id, ids[next]);
            leased[next++] = true;
            outbox_msg_free(out[i]);
        }
        /* Give back a random part, in a random order. */
        for (size_t i = 0; i < TOTAL; i++)
            if (leased[i] && rand_r(&seed) % 3 == 0)
                res[nres++] = (struct outbox_result){i, OUTBOX_RELEASE, 0, NULL};
        for (size_t i = nres; i > 1; i--) {
            size_t j = (size_t)rand_r(&seed) % i;
            struct outbox_result t = res[i - 1];
            res[i - 1] = res[j];
            res[j] = t;
        }
        for (size_t i = 0; i < nres; i++) {
            leased[res[i].id] = false;
            res[i].id = ids[res[i].id]; /* index -> id */
        }
        for (size_t i = 0; i < nres; i += 50) {
            size_t k = nres - i < 50 ? nres - i : 50;
            assert_int_equal(outbox_apply(f->ob, res + i, k, NOW), 0);
        }
        assert_int_equal(outbox_next_due(f->ob), nres != 0 || want > n ? NOW : INT64_MAX);
    }
    free(out);
    free(res);
    free(ids);
    free(leased);
}

static void test_outbox_expired_before_attempt(void **state)
{
    struct fixture *f = *state;
    struct outbox_new m = new_msg(OUTBOX_TOKENCODE, "code");
    struct listing l;
    uint64_t id, keep;

    m.expires_ms = NOW + 1000;
    assert_int_equal(outbox_submit(f->ob, &m, 1, NOW, &id), 0);
    keep = submit(f->ob, OUTBOX_REPORT, "report", NOW);
    /* At its expiry it is not handed out, but moved to dead in that call. */
    assert_int_equal(take_ids(f->ob, NOW + 1000, 8, NULL), 1);
    assert_depth(f->ob, 0, 1, 1);
    list(f->ob, true, &l);
    assert_int_equal(l.n, 1);
    assert_true(l.dead[0]);
    assert_int_equal(l.m[0]->id, id);
    assert_string_equal(l.m[0]->dead_reason, "expired before any attempt");
    assert_int_equal(l.m[0]->dead_ms, NOW + 1000);
    assert_int_equal(l.m[0]->nrcpts, 1);
    list_free(&l);
    list(f->ob, false, &l);
    assert_int_equal(l.n, 1);
    assert_int_equal(l.m[0]->id, keep);
    list_free(&l);
    assert_int_equal(outbox_verify(f->ob), 0);
}

static void test_outbox_expired_after_attempts(void **state)
{
    struct fixture *f = *state;
    struct outbox_new m = new_msg(OUTBOX_REPORT, "report");
    struct listing l;
    uint64_t id;

    m.expires_ms = NOW + 10000;
    assert_int_equal(outbox_submit(f->ob, &m, 1, NOW, &id), 0);
    assert_int_equal(take_ids(f->ob, NOW, 8, NULL), 1);
    apply1(f->ob, id, OUTBOX_DEFER, NOW + 1000, "421 busy", NOW);
    assert_int_equal(take_ids(f->ob, NOW + 1000, 8, NULL), 1);
    /* A next try after the expiry is brought back to the expiry. */
    apply1(f->ob, id, OUTBOX_DEFER, NOW + 60000, "451 greylisted", NOW + 1000);
    assert_int_equal(outbox_next_due(f->ob), NOW + 10000);
    assert_int_equal(take_ids(f->ob, NOW + 9999, 8, NULL), 0);
    assert_int_equal(take_ids(f->ob, NOW + 10000, 8, NULL), 0);
    list(f->ob, true, &l);
    assert_int_equal(l.n, 1);
    assert_string_equal(l.m[0]->dead_reason, "expired after 2 attempts: 451 greylisted");
    assert_int_equal(l.m[0]->attempts, 2);
    assert_string_equal(l.m[0]->last_error, "451 greylisted");
    list_free(&l);

    /* One attempt reads as one. */
    m.expires_ms = NOW + 20000;
    assert_int_equal(outbox_submit(f->ob, &m, 1, NOW, &id), 0);
    assert_int_equal(take_ids(f->ob, NOW, 8, NULL), 1);
    apply1(f->ob, id, OUTBOX_DEFER, NOW + 1000, "421 busy", NOW);
    assert_int_equal(take_ids(f->ob, NOW + 20000, 8, NULL), 0);
    list(f->ob, true, &l);
    assert_int_equal(l.n, 2);
    assert_string_equal(l.m[1]->dead_reason, "expired after 1 attempt: 421 busy");
    list_free(&l);
    assert_depth(f->ob, 0, 0, 2);
}

static void test_outbox_default_expiry(void **state)
{
    struct fixture *f = *state;
    struct outbox_expiry e = {.tokencode_ms = 5000, .report_ms = 7000};
    struct outbox_msg *out[4];
    size_t n;

    submit(f->ob, OUTBOX_TOKENCODE, "t", NOW);
    outbox_set_expiry(f->ob, &e);
    submit(f->ob, OUTBOX_TOKENCODE, "t", NOW);
    submit(f->ob, OUTBOX_REPORT, "r", NOW);
    assert_int_equal(outbox_take(f->ob, NOW, out, 4, &n), 0);
    assert_int_equal(n, 3);
    assert_int_equal(out[0]->expires_ms, NOW + 10 * MINUTE);
    assert_int_equal(out[1]->expires_ms, NOW + 5000);
    assert_int_equal(out[2]->expires_ms, NOW + 7000);
    for (size_t i = 0; i < n; i++)
        outbox_msg_free(out[i]);
}

static void test_outbox_defer(void **state)
{
    struct fixture *f = *state;
    struct outbox_msg *out[4];
    uint64_t id;
    size_t n;

    id = submit(f->ob, OUTBOX_REPORT, "r", NOW);
    assert_int_equal(take_ids(f->ob, NOW, 4, NULL), 1);
    apply1(f->ob, id, OUTBOX_DEFER, NOW + 5000, "451 4.7.1 try again later", NOW);
    assert_int_equal(outbox_next_due(f->ob), NOW + 5000);
    assert_int_equal(take_ids(f->ob, NOW + 4999, 4, NULL), 0);
    assert_depth(f->ob, 0, 1, 0);
    assert_int_equal(outbox_take(f->ob, NOW + 5000, out, 4, &n), 0);
    assert_int_equal(n, 1);
    assert_int_equal(out[0]->attempts, 1);
    assert_int_equal(out[0]->next_try_ms, NOW + 5000);
    assert_string_equal(out[0]->last_error, "451 4.7.1 try again later");
    outbox_msg_free(out[0]);
    /* A NULL error is kept as "". */
    apply1(f->ob, id, OUTBOX_DEFER, NOW + 6000, NULL, NOW + 5000);
    assert_int_equal(outbox_take(f->ob, NOW + 6000, out, 4, &n), 0);
    assert_int_equal(n, 1);
    assert_int_equal(out[0]->attempts, 2);
    assert_string_equal(out[0]->last_error, "");
    outbox_msg_free(out[0]);
    assert_int_equal(outbox_verify(f->ob), 0);
}

static void test_outbox_dead_outcome(void **state)
{
    struct fixture *f = *state;
    struct listing l;
    uint64_t id;

    id = submit(f->ob, OUTBOX_TOKENCODE, "t", NOW);
    assert_int_equal(take_ids(f->ob, NOW, 4, NULL), 1);
    apply1(f->ob, id, OUTBOX_DEAD, 0, "550 5.1.1 no such user", NOW + 10);
    assert_depth(f->ob, 0, 0, 1);
    assert_int_equal(outbox_next_due(f->ob), INT64_MAX);
    assert_int_equal(take_ids(f->ob, NOW + MINUTE, 4, NULL), 0);
    list(f->ob, true, &l);
    assert_int_equal(l.n, 1);
    assert_int_equal(l.m[0]->id, id);
    assert_int_equal(l.m[0]->priority, OUTBOX_TOKENCODE);
    assert_string_equal(l.m[0]->dead_reason, "550 5.1.1 no such user");
    assert_int_equal(l.m[0]->dead_ms, NOW + 10);
    assert_int_equal(l.m[0]->attempts, 1);
    assert_string_equal(l.m[0]->rcpts[0], "alice@example.com");
    list_free(&l);
    list(f->ob, false, &l);
    assert_int_equal(l.n, 0);
    assert_int_equal(outbox_verify(f->ob), 0);
}

static bool valid_utf8(const char *s)
{
    const unsigned char *p = (const unsigned char *)s;

    while (*p != 0) {
        size_t n = *p < 0x80 ? 1 : (*p & 0xe0) == 0xc0 ? 2 : (*p & 0xf0) == 0xe0 ? 3 : 4;
        for (size_t i = 1; i < n; i++)
            if ((p[i] & 0xc0) != 0x80)
                return false;
        p += n;
    }
    return true;
}

static void test_outbox_error_truncated(void **state)
{
    struct fixture *f = *state;
    char long_err[2000], *p = long_err;
    struct listing l;
    uint64_t a, b;

    /* "x" then two-octet characters: the limit falls inside one. */
    *p++ = 'x';
    while (p + 2 < long_err + sizeof(long_err)) {
        memcpy(p, "\xc3\xa9", 2);
        p += 2;
    }
    *p = '\0';
    a = submit(f->ob, OUTBOX_REPORT, "a", NOW);
    b = submit(f->ob, OUTBOX_REPORT, "b", NOW);
    assert_int_equal(take_ids(f->ob, NOW, 4, NULL), 2);
    apply1(f->ob, a, OUTBOX_DEFER, NOW + 1000, long_err, NOW);
    /* Hostile text: control characters and octets that are not UTF-8. */
    apply1(f->ob, b, OUTBOX_DEAD, 0, "550 \x1b[31mred\r\nX\xff\xc3(", NOW);
    list(f->ob, false, &l);
    assert_int_equal(l.n, 1);
    assert_int_equal(strlen(l.m[0]->last_error), OUTBOX_ERROR_MAX - 1);
    assert_memory_equal(l.m[0]->last_error, long_err, OUTBOX_ERROR_MAX - 1);
    assert_true(valid_utf8(l.m[0]->last_error));
    list_free(&l);
    list(f->ob, true, &l);
    assert_int_equal(l.n, 1);
    assert_string_equal(l.m[0]->dead_reason, "550  [31mred  X?"
                                             "?(");
    list_free(&l);

    /* Expiry quotes the last error within the limit too. */
    assert_int_equal(take_ids(f->ob, NOW + 6 * 24 * 60 * MINUTE, 4, NULL), 0);
    list(f->ob, true, &l);
    assert_int_equal(l.n, 2);
    assert_int_equal(l.m[0]->id, a);
    assert_true(strlen(l.m[0]->dead_reason) <= OUTBOX_ERROR_MAX);
    assert_true(valid_utf8(l.m[0]->dead_reason));
    assert_true(strncmp(l.m[0]->dead_reason, "expired after 1 attempt: x\xc3\xa9", 28) == 0);
    list_free(&l);
}

static void test_outbox_retry_dead(void **state)
{
    struct fixture *f = *state;
    struct outbox_msg *out[4];
    uint64_t id;
    size_t n;

    id = submit(f->ob, OUTBOX_TOKENCODE, "t", NOW);
    assert_int_equal(take_ids(f->ob, NOW, 4, NULL), 1);
    apply1(f->ob, id, OUTBOX_DEFER, NOW + 1000, "421 busy", NOW);
    assert_int_equal(take_ids(f->ob, NOW + 1000, 4, NULL), 1);
    apply1(f->ob, id, OUTBOX_DEAD, 0, "554 rejected", NOW + 1000);
    assert_depth(f->ob, 0, 0, 1);

    assert_int_equal(outbox_retry(f->ob, id, NOW + 50 * MINUTE), 0);
    assert_depth(f->ob, 1, 0, 0);
    assert_int_equal(outbox_next_due(f->ob), NOW + 50 * MINUTE);
    assert_int_equal(outbox_take(f->ob, NOW + 50 * MINUTE, out, 4, &n), 0);
    assert_int_equal(n, 1);
    assert_int_equal(out[0]->id, id);
    assert_int_equal(out[0]->attempts, 0);
    assert_int_equal(out[0]->expires_ms, NOW + 60 * MINUTE);
    assert_string_equal(out[0]->dead_reason, "");
    assert_string_equal(out[0]->last_error, "");
    assert_int_equal(out[0]->dead_ms, 0);
    assert_memory_equal(out[0]->message, "t", 1);
    outbox_msg_free(out[0]);
    assert_int_equal(outbox_verify(f->ob), 0);
}

static void test_outbox_retry_pending(void **state)
{
    struct fixture *f = *state;
    struct outbox_msg *out[4];
    uint64_t id;
    size_t n;

    id = submit(f->ob, OUTBOX_REPORT, "r", NOW);
    assert_int_equal(take_ids(f->ob, NOW, 4, NULL), 1);
    apply1(f->ob, id, OUTBOX_DEFER, NOW + 60 * MINUTE, "421 busy", NOW);
    assert_int_equal(take_ids(f->ob, NOW + 1, 4, NULL), 0);
    /* Due now, attempts and error kept. */
    assert_int_equal(outbox_retry(f->ob, id, NOW + 1), 0);
    assert_int_equal(outbox_next_due(f->ob), NOW + 1);
    assert_int_equal(outbox_take(f->ob, NOW + 1, out, 4, &n), 0);
    assert_int_equal(n, 1);
    assert_int_equal(out[0]->attempts, 1);
    assert_string_equal(out[0]->last_error, "421 busy");
    outbox_msg_free(out[0]);
    assert_depth(f->ob, 0, 1, 0);
    /* Retried while leased: not handed out twice. */
    assert_int_equal(outbox_retry(f->ob, id, NOW + 2), 0);
    assert_int_equal(take_ids(f->ob, NOW + 2, 4, NULL), 0);
    apply1(f->ob, id, OUTBOX_DELIVERED, 0, NULL, NOW + 2);
    assert_depth(f->ob, 0, 0, 0);
    assert_int_equal(outbox_verify(f->ob), 0);
}

static void test_outbox_unknown_ids(void **state)
{
    struct fixture *f = *state;
    struct outbox_result res[2] = {{42, OUTBOX_DELIVERED, 0, NULL}, {43, OUTBOX_DEFER, 0, "x"}};

    assert_int_equal(outbox_retry(f->ob, 42, NOW), ERROR_NOT_FOUND);
    assert_int_equal(outbox_drop(f->ob, 42), ERROR_NOT_FOUND);
    /* Skipped: dropped meanwhile. */
    assert_int_equal(outbox_apply(f->ob, res, 2, NOW), 0);
    res[0].outcome = (enum outbox_outcome)99;
    assert_int_equal(outbox_apply(f->ob, res, 2, NOW), ERROR_INVALID);
    assert_depth(f->ob, 0, 0, 0);
}

static void test_outbox_drop(void **state)
{
    struct fixture *f = *state;
    struct outbox_msg *out[4];
    uint64_t a, b, c;
    size_t n;

    a = submit(f->ob, OUTBOX_REPORT, "a", NOW);
    b = submit(f->ob, OUTBOX_TOKENCODE, "b", NOW);
    c = submit(f->ob, OUTBOX_REPORT, "c", NOW);
    assert_int_equal(outbox_take(f->ob, NOW, out, 1, &n), 0);
    assert_int_equal(n, 1);
    assert_int_equal(out[0]->id, b);
    outbox_msg_free(out[0]);
    apply1(f->ob, b, OUTBOX_DEAD, 0, "550 no", NOW);
    assert_depth(f->ob, 0, 2, 1);

    assert_int_equal(outbox_drop(f->ob, a), 0); /* pending */
    assert_int_equal(outbox_drop(f->ob, b), 0); /* dead */
    assert_int_equal(outbox_drop(f->ob, b), ERROR_NOT_FOUND);
    assert_depth(f->ob, 0, 1, 0);
    /* Dropped while leased: the result that comes later is skipped. */
    assert_int_equal(take_ids(f->ob, NOW, 4, NULL), 1);
    assert_int_equal(outbox_drop(f->ob, c), 0);
    apply1(f->ob, c, OUTBOX_DEFER, NOW + 1000, "421", NOW);
    assert_depth(f->ob, 0, 0, 0);
    assert_int_equal(outbox_next_due(f->ob), INT64_MAX);
    assert_int_equal(outbox_verify(f->ob), 0);
}

static void test_outbox_depth_counts(void **state)
{
    struct fixture *f = *state;
    uint64_t ids[8];

    for (int i = 0; i < 3; i++)
        submit(f->ob, OUTBOX_TOKENCODE, "t", NOW);
    for (int i = 0; i < 5; i++)
        submit(f->ob, OUTBOX_REPORT, "r", NOW);
    assert_depth(f->ob, 3, 5, 0);
    assert_int_equal(take_ids(f->ob, NOW, 4, ids), 4);
    apply1(f->ob, ids[0], OUTBOX_DEAD, 0, "550", NOW);
    apply1(f->ob, ids[1], OUTBOX_DELIVERED, 0, NULL, NOW);
    apply1(f->ob, ids[3], OUTBOX_DEFER, NOW + 1, "451", NOW);
    /* Leased messages are still pending. */
    assert_depth(f->ob, 1, 5, 1);
}

static void test_outbox_ids_monotonic(void **state)
{
    struct fixture *f = *state;
    struct outbox_new m[3] = {new_msg(OUTBOX_REPORT, "a"), new_msg(OUTBOX_TOKENCODE, "b"),
                              new_msg(OUTBOX_REPORT, "c")};
    uint64_t ids[3], last, id;

    assert_int_equal(outbox_submit(f->ob, m, 3, NOW, ids), 0);
    assert_int_equal(ids[0], 1);
    assert_int_equal(ids[1], 2);
    assert_int_equal(ids[2], 3);
    last = ids[2];
    /* Even after the highest id is gone and the outbox reopened, ids are
     * never given again. */
    assert_int_equal(outbox_drop(f->ob, last), 0);
    reopen(f);
    id = submit(f->ob, OUTBOX_REPORT, "d", NOW);
    assert_int_equal(id, last + 1);
    assert_int_equal(take_ids(f->ob, NOW, 8, NULL), 3);
    apply1(f->ob, id, OUTBOX_DELIVERED, 0, NULL, NOW);
    reopen(f);
    assert_int_equal(submit(f->ob, OUTBOX_REPORT, "e", NOW), id + 1);
    /* An empty batch stores nothing and takes no id. */
    assert_int_equal(outbox_submit(f->ob, m, 0, NOW, ids), 0);
    assert_int_equal(submit(f->ob, OUTBOX_REPORT, "f", NOW), id + 2);
}

static void test_outbox_invalid_submissions(void **state)
{
    struct fixture *f = *state;
    const char *two[] = {"a@example.com", "b@example.com"};
    const char *with_null[] = {"a@example.com", NULL};
    const char *empty[] = {""};
    const char *cr[] = {"a@example.com\r"};
    const char *lf[] = {"a@example.com\nRCPT TO:<x@evil>"};
    const char *many[SMTP_MESSAGE_RCPT_MAX + 1];
    char longaddr[OUTBOX_ADDRESS_MAX + 2];
    const char *toolong[] = {longaddr};
    struct outbox_new good = new_msg(OUTBOX_REPORT, "ok"), m[2];
    char *big = malloc(SMTP_MESSAGE_MAX + 1);
    uint64_t ids[2] = {0, 0};

    assert_non_null(big);
    memset(big, 'a', SMTP_MESSAGE_MAX + 1);
    memset(longaddr, 'a', sizeof(longaddr) - 1);
    longaddr[sizeof(longaddr) - 1] = '\0';
    for (size_t i = 0; i < SMTP_MESSAGE_RCPT_MAX + 1; i++)
        many[i] = "a@example.com";

#define REFUSED(field, value, code)                                                                \
    do {                                                                                           \
        m[0] = good;                                                                               \
        m[1] = good;                                                                               \
        m[1].field = value;                                                                        \
        assert_int_equal(outbox_submit(f->ob, m, 2, NOW, ids), code);                              \
    } while (0)
    REFUSED(nrcpts, 0, ERROR_INVALID);
    REFUSED(rcpts, NULL, ERROR_INVALID);
    REFUSED(priority, (enum outbox_priority)0, ERROR_INVALID);
    REFUSED(priority, (enum outbox_priority)3, ERROR_INVALID);
    REFUSED(rcpts, empty, ERROR_INVALID);
    REFUSED(rcpts, cr, ERROR_INVALID);
    REFUSED(rcpts, lf, ERROR_INVALID);
    REFUSED(rcpts, toolong, ERROR_TOO_BIG);
    REFUSED(mail_from, "a@b\r\n", ERROR_INVALID);
    REFUSED(mail_from, longaddr, ERROR_TOO_BIG);
    REFUSED(message, NULL, ERROR_INVALID);
    m[0] = good;
    m[1] = good;
    m[1].rcpts = with_null;
    m[1].nrcpts = 2;
    assert_int_equal(outbox_submit(f->ob, m, 2, NOW, ids), ERROR_INVALID);
    m[1].rcpts = many;
    m[1].nrcpts = SMTP_MESSAGE_RCPT_MAX + 1;
    assert_int_equal(outbox_submit(f->ob, m, 2, NOW, ids), ERROR_INVALID);
    m[1].nrcpts = SMTP_MESSAGE_RCPT_MAX; /* the limit itself is fine */
    m[1].message = big;
    m[1].message_len = SMTP_MESSAGE_MAX + 1;
    assert_int_equal(outbox_submit(f->ob, m, 2, NOW, ids), ERROR_TOO_BIG);
    assert_int_equal(outbox_submit(f->ob, m, 2, NOW, NULL), ERROR_INVALID);
    assert_int_equal(outbox_submit(f->ob, NULL, 2, NOW, ids), ERROR_INVALID);
#undef REFUSED

    /* Nothing stored, no id used. */
    assert_depth(f->ob, 0, 0, 0);
    assert_int_equal(take_ids(f->ob, NOW, 8, NULL), 0);
    m[1].message_len = SMTP_MESSAGE_MAX;
    m[1].rcpts = two;
    m[1].nrcpts = 2;
    assert_int_equal(outbox_submit(f->ob, m, 2, NOW, ids), 0);
    assert_int_equal(ids[0], 1);
    assert_int_equal(ids[1], 2);
    free(big);
}

static void test_outbox_map_growth(void **state)
{
    struct fixture *f = *state;
    struct outbox_params p = {.dir = f->dir, .map_size = 64 * 1024};
    enum { N = 6 };
    size_t sizes[N] = {100, 1 << 20, 3 << 20, SMTP_MESSAGE_MAX, 200000, 5};
    struct outbox_new m[N];
    struct outbox_msg *out[N];
    char *bodies[N];
    uint64_t ids[N];
    size_t n;

    outbox_close(f->ob);
    testutil_rmtree(f->dir);
    assert_int_equal(outbox_open(&p, &f->ob), 0);
    for (int i = 0; i < N; i++) {
        bodies[i] = malloc(sizes[i]);
        assert_non_null(bodies[i]);
        for (size_t j = 0; j < sizes[i]; j++)
            bodies[i][j] = (char)('a' + (j * 7 + (size_t)i) % 26);
        m[i] = new_msg(OUTBOX_REPORT, "");
        m[i].message = bodies[i];
        m[i].message_len = sizes[i];
    }
    /* One at a time, then all in one transaction. */
    for (int i = 0; i < N; i++)
        assert_int_equal(outbox_submit(f->ob, &m[i], 1, NOW, &ids[i]), 0);
    assert_int_equal(outbox_submit(f->ob, m, N, NOW, ids), 0);
    reopen(f);
    for (int round = 0; round < 2; round++) {
        assert_int_equal(outbox_take(f->ob, NOW, out, N, &n), 0);
        assert_int_equal(n, N);
        for (int i = 0; i < N; i++) {
            assert_int_equal(out[i]->message_len, sizes[i]);
            assert_memory_equal(out[i]->message, bodies[i], sizes[i]);
            apply1(f->ob, out[i]->id, OUTBOX_DELIVERED, 0, NULL, NOW);
            outbox_msg_free(out[i]);
        }
    }
    assert_depth(f->ob, 0, 0, 0);
    for (int i = 0; i < N; i++)
        free(bodies[i]);
}

static void test_outbox_corrupt_pending_record(void **state)
{
    struct fixture *f = *state;
    static const uint8_t garbage[] = {0xff, 0xff, 0xff, 0x01, 0x02, 0x03};
    struct listing l;
    uint64_t a, b, ids[4];
    uint8_t key[8];

    a = submit(f->ob, OUTBOX_REPORT, "a", NOW);
    b = submit(f->ob, OUTBOX_REPORT, "b", NOW);
    outbox_close(f->ob);
    f->ob = NULL;
    be64(key, a);
    raw_put(f->dir, "pending", key, 8, garbage, sizeof(garbage));
    reopen(f);

    /* Reported, not crashed on. */
    assert_int_equal(outbox_verify(f->ob), ERROR_CORRUPT);
    memset(&l, 0, sizeof(l));
    assert_int_equal(outbox_each(f->ob, false, collect, &l), ERROR_CORRUPT);
    assert_int_equal(l.n, 0);
    assert_int_equal(outbox_retry(f->ob, a, NOW), ERROR_CORRUPT);
    /* It does not stop the queue: taken out of it, into dead, bytes kept. */
    assert_int_equal(take_ids(f->ob, NOW, 4, ids), 1);
    assert_int_equal(ids[0], b);
    assert_depth(f->ob, 0, 1, 1);
    list(f->ob, true, &l);
    assert_int_equal(l.n, 1);
    assert_int_equal(l.m[0]->id, a);
    assert_int_equal(l.m[0]->nrcpts, 0);
    assert_non_null(strstr(l.m[0]->dead_reason, "corrupt record"));
    list_free(&l);
    assert_int_equal(outbox_verify(f->ob), 0);
    /* A damaged record in dead cannot be retried, but can be dropped. */
    assert_int_equal(outbox_retry(f->ob, a, NOW), ERROR_CORRUPT);
    assert_int_equal(outbox_drop(f->ob, a), 0);
    assert_depth(f->ob, 0, 1, 0);
}

static void test_outbox_corrupt_records_in_results(void **state)
{
    struct fixture *f = *state;
    Smtpsync__OutboxMessage r;
    uint8_t key[8], packed[128];
    struct listing l;
    size_t len;
    uint64_t a, b, c, ids[4];

    smtpsync__outbox_message__init(&r);
    a = submit(f->ob, OUTBOX_REPORT, "a", NOW);
    b = submit(f->ob, OUTBOX_TOKENCODE, "b", NOW);
    c = submit(f->ob, OUTBOX_REPORT, "c", NOW);
    assert_int_equal(take_ids(f->ob, NOW, 4, NULL), 3);
    outbox_close(f->ob);
    f->ob = NULL;
    /* A well-formed record stored under another id, and one with no
     * recipient: both refused by the checks after unpacking. */
    r.id = 999;
    r.priority = SMTPSYNC__PRIORITY__PRIORITY_REPORT;
    len = smtpsync__outbox_message__pack(&r, packed);
    be64(key, a);
    raw_put(f->dir, "pending", key, 8, packed, len);
    r.id = b;
    len = smtpsync__outbox_message__pack(&r, packed);
    be64(key, b);
    raw_put(f->dir, "pending", key, 8, packed, len);
    reopen(f);
    assert_int_equal(outbox_verify(f->ob), ERROR_CORRUPT);
    /* Results for damaged records: delivered removes, defer moves it to
     * dead (under the priority its due key names). */
    apply1(f->ob, a, OUTBOX_DELIVERED, 0, NULL, NOW);
    apply1(f->ob, b, OUTBOX_DEFER, NOW + 10, "451", NOW);
    assert_int_equal(take_ids(f->ob, NOW, 4, ids), 1);
    assert_int_equal(ids[0], c);
    apply1(f->ob, c, OUTBOX_DEFER, NOW + 10, "451", NOW);
    assert_depth(f->ob, 0, 1, 1);
    list(f->ob, true, &l);
    assert_int_equal(l.n, 1);
    assert_int_equal(l.m[0]->id, b);
    assert_int_equal(l.m[0]->priority, OUTBOX_TOKENCODE);
    list_free(&l);
    assert_int_equal(outbox_verify(f->ob), 0);
}

static void test_outbox_apply_to_corrupt_record(void **state)
{
    struct fixture *f = *state;
    uint8_t key[8];
    uint64_t a;
    struct listing l;

    a = submit(f->ob, OUTBOX_TOKENCODE, "a", NOW);
    assert_int_equal(take_ids(f->ob, NOW, 4, NULL), 1);
    /* Damaged while leased (the outbox must be closed to write behind
     * it: the lease is lost, and the result comes from a sender that
     * still holds it). */
    outbox_close(f->ob);
    f->ob = NULL;
    be64(key, a);
    raw_put(f->dir, "pending", key, 8, "\x08", 1);
    reopen(f);
    apply1(f->ob, a, OUTBOX_DEFER, NOW + 10, "451", NOW);
    assert_depth(f->ob, 0, 0, 1);
    list(f->ob, true, &l);
    assert_int_equal(l.n, 1);
    assert_int_equal(l.m[0]->priority, OUTBOX_TOKENCODE);
    assert_non_null(strstr(l.m[0]->dead_reason, "corrupt record"));
    list_free(&l);
    assert_int_equal(outbox_verify(f->ob), 0);
}

static void test_outbox_index_repair(void **state)
{
    struct fixture *f = *state;
    uint8_t key[8], dk[17], odd[3] = {OUTBOX_REPORT, 0, 0};
    uint64_t a, b, ids[4];

    a = submit(f->ob, OUTBOX_REPORT, "a", NOW);
    b = submit(f->ob, OUTBOX_REPORT, "b", NOW);
    outbox_close(f->ob);
    f->ob = NULL;
    /* a's record disappears, leaving its due key; a stray key for b;
     * a key of the wrong shape. */
    be64(key, a);
    raw_put(f->dir, "pending", key, 8, NULL, 0);
    dk[0] = OUTBOX_REPORT;
    be64(dk + 1, (uint64_t)NOW - 5);
    be64(dk + 9, b);
    raw_put(f->dir, "due", dk, 17, "", 0);
    raw_put(f->dir, "due", odd, 3, "", 0);
    reopen(f);
    assert_int_equal(outbox_verify(f->ob), ERROR_CORRUPT);
    assert_int_equal(take_ids(f->ob, NOW, 4, ids), 1);
    assert_int_equal(ids[0], b);
    /* The key of the wrong shape is not ours to remove, so still reported. */
    assert_int_equal(outbox_verify(f->ob), ERROR_CORRUPT);
    outbox_close(f->ob);
    f->ob = NULL;
    raw_put(f->dir, "due", odd, 3, NULL, 0);
    reopen(f);
    assert_int_equal(outbox_verify(f->ob), 0);
    assert_depth(f->ob, 0, 1, 0);
}

static void test_outbox_corrupt_meta(void **state)
{
    struct fixture *f = *state;
    struct outbox_params p = {.dir = f->dir};
    uint8_t zero[8] = {0};

    submit(f->ob, OUTBOX_REPORT, "a", NOW);
    outbox_close(f->ob);
    f->ob = NULL;
    raw_put(f->dir, "meta", "next_id", 7, "abc", 3);
    assert_int_equal(outbox_open(&p, &f->ob), ERROR_CORRUPT);
    raw_put(f->dir, "meta", "next_id", 7, zero, 8);
    assert_int_equal(outbox_open(&p, &f->ob), ERROR_CORRUPT);
    /* Behind the records (which damage alone could do): moved past them. */
    zero[7] = 1;
    raw_put(f->dir, "meta", "next_id", 7, zero, 8);
    assert_int_equal(outbox_open(&p, &f->ob), 0);
    assert_int_equal(outbox_verify(f->ob), 0);
    assert_int_equal(submit(f->ob, OUTBOX_REPORT, "b", NOW), 2);
}

static void test_outbox_reopen_keeps_everything(void **state)
{
    struct fixture *f = *state;
    const char *rcpts[] = {"x@example.com", "y@example.com", "z@example.com"};
    struct outbox_new m = new_msg(OUTBOX_TOKENCODE, "body");
    struct listing before[2], after[2];
    uint64_t ids[4];

    m.rcpts = rcpts;
    m.nrcpts = 3;
    m.mail_from = "from@example.com";
    m.expires_ms = NOW + 99999;
    assert_int_equal(outbox_submit(f->ob, &m, 1, NOW, ids), 0);
    submit(f->ob, OUTBOX_REPORT, "r1", NOW);
    submit(f->ob, OUTBOX_REPORT, "r2", NOW);
    assert_int_equal(take_ids(f->ob, NOW, 4, ids), 3);
    apply1(f->ob, ids[0], OUTBOX_DEFER, NOW + 500, "421 later", NOW);
    apply1(f->ob, ids[1], OUTBOX_DEAD, 0, "550 never", NOW);
    list(f->ob, false, &before[0]);
    list(f->ob, true, &before[1]);
    reopen(f);
    list(f->ob, false, &after[0]);
    list(f->ob, true, &after[1]);
    for (int d = 0; d < 2; d++) {
        assert_int_equal(before[d].n, after[d].n);
        for (size_t i = 0; i < before[d].n; i++) {
            const struct outbox_msg *x = before[d].m[i], *y = after[d].m[i];
            assert_int_equal(x->id, y->id);
            assert_int_equal(x->priority, y->priority);
            assert_int_equal(x->created_ms, y->created_ms);
            assert_int_equal(x->expires_ms, y->expires_ms);
            assert_int_equal(x->next_try_ms, y->next_try_ms);
            assert_int_equal(x->attempts, y->attempts);
            assert_string_equal(x->last_error, y->last_error);
            assert_string_equal(x->mail_from, y->mail_from);
            assert_string_equal(x->dead_reason, y->dead_reason);
            assert_int_equal(x->dead_ms, y->dead_ms);
            assert_int_equal(x->nrcpts, y->nrcpts);
            for (size_t j = 0; j < x->nrcpts; j++)
                assert_string_equal(x->rcpts[j], y->rcpts[j]);
        }
        list_free(&before[d]);
        list_free(&after[d]);
    }
    assert_depth(f->ob, 1, 1, 1);
    assert_int_equal(outbox_next_due(f->ob), NOW);
    assert_int_equal(outbox_verify(f->ob), 0);
}

static int stop_at_two(const struct outbox_msg *m, bool dead, void *arg)
{
    (void)m;
    (void)dead;
    return ++*(int *)arg == 2 ? ERROR_EMPTY : 0;
}

static void test_outbox_each_stops(void **state)
{
    struct fixture *f = *state;
    int calls = 0;

    for (int i = 0; i < 4; i++)
        submit(f->ob, OUTBOX_REPORT, "r", NOW);
    assert_int_equal(outbox_each(f->ob, false, stop_at_two, &calls), ERROR_EMPTY);
    assert_int_equal(calls, 2);
}

static void test_outbox_open_refuses(void **state)
{
    struct outbox_params p = {0};
    struct outbox *ob = NULL;
    char *dir = testutil_tmpdir(), path[4096];
    FILE *fp;

    (void)state;
    assert_int_equal(outbox_open(&p, &ob), ERROR_INVALID);
    p.dir = "";
    assert_int_equal(outbox_open(&p, &ob), ERROR_INVALID);
    /* A file where the directory should be. */
    snprintf(path, sizeof(path), "%s/file", dir);
    fp = fopen(path, "w");
    assert_non_null(fp);
    fclose(fp);
    p.dir = path;
    assert_true(outbox_open(&p, &ob) < 0);
    assert_null(ob);
    /* A missing directory is made. */
    snprintf(path, sizeof(path), "%s/outbox", dir);
    assert_int_equal(outbox_open(&p, &ob), 0);
    outbox_close(ob);
    outbox_close(NULL);
    testutil_rmtree(dir);
    free(dir);
}

/* A DEFER that keeps some recipients: the others (delivered meanwhile)
 * are gone from the record, in the same transaction as the attempt. */
static void test_outbox_apply_narrows_rcpts(void **state)
{
    static const char *const three[] = {"a@example.com", "b@example.com", "c@example.com"};
    static const char *const keep_ca[] = {"c@example.com", "a@example.com", "z@example.com"};
    static const char *const keep_none[] = {"z@example.com"};
    struct fixture *f = *state;
    struct outbox_new m = new_msg(OUTBOX_REPORT, "body");
    struct outbox_result r = {.outcome = OUTBOX_DEFER, .next_try_ms = NOW + 1000, .error = "451"};
    struct outbox_rcpts k = {.rcpts = keep_ca, .nrcpts = 3};
    struct outbox_msg *out[4];
    uint64_t id;
    size_t n;

    m.rcpts = three;
    m.nrcpts = 3;
    assert_int_equal(outbox_submit(f->ob, &m, 1, NOW, &id), 0);
    assert_int_equal(take_ids(f->ob, NOW, 4, NULL), 1);
    r.id = id;
    assert_int_equal(outbox_apply_rcpts(f->ob, &r, &k, 1, NOW), 0);
    assert_int_equal(outbox_take(f->ob, NOW + 1000, out, 4, &n), 0);
    assert_int_equal(n, 1);
    assert_int_equal(out[0]->attempts, 1);
    assert_string_equal(out[0]->last_error, "451");
    assert_int_equal(out[0]->nrcpts, 2);
    assert_string_equal(out[0]->rcpts[0], "a@example.com");
    assert_string_equal(out[0]->rcpts[1], "c@example.com");
    outbox_msg_free(out[0]);

    /* A list naming none of them, or none given: unchanged. */
    k = (struct outbox_rcpts){.rcpts = keep_none, .nrcpts = 1};
    r.next_try_ms = NOW + 2000;
    assert_int_equal(outbox_apply_rcpts(f->ob, &r, &k, 1, NOW), 0);
    assert_int_equal(outbox_take(f->ob, NOW + 2000, out, 4, &n), 0);
    assert_int_equal(n, 1);
    assert_int_equal(out[0]->attempts, 2);
    assert_int_equal(out[0]->nrcpts, 2);
    outbox_msg_free(out[0]);
    r.next_try_ms = NOW + 3000;
    assert_int_equal(outbox_apply(f->ob, &r, 1, NOW), 0);
    assert_int_equal(outbox_take(f->ob, NOW + 3000, out, 4, &n), 0);
    assert_int_equal(n, 1);
    assert_int_equal(out[0]->nrcpts, 2);
    outbox_msg_free(out[0]);

    /* A list with another outcome, or with a NULL: refused, lease kept. */
    r.outcome = OUTBOX_DELIVERED;
    k = (struct outbox_rcpts){.rcpts = keep_ca, .nrcpts = 1};
    assert_int_equal(outbox_apply_rcpts(f->ob, &r, &k, 1, NOW), ERROR_INVALID);
    r.outcome = OUTBOX_DEFER;
    k.rcpts = NULL;
    assert_int_equal(outbox_apply_rcpts(f->ob, &r, &k, 1, NOW), ERROR_INVALID);
    assert_int_equal(take_ids(f->ob, NOW + 5000, 4, NULL), 0);
    r.outcome = OUTBOX_DELIVERED;
    assert_int_equal(outbox_apply_rcpts(f->ob, &r, NULL, 1, NOW), 0);
    assert_depth(f->ob, 0, 0, 0);
    assert_int_equal(outbox_verify(f->ob), 0);
}

/* The disk is full (RLIMIT_FSIZE at the file's size): an apply fails,
 * nothing changes, and the lease stays, so the message is not handed out
 * (and sent) again while its outcome waits; giving it back still works. */
static void test_outbox_apply_failure_keeps_lease(void **state)
{
    struct fixture *f = *state;
    static char body[200000];
    struct outbox_new m = new_msg(OUTBOX_REPORT, "");
    struct outbox_result r = {.outcome = OUTBOX_DELIVERED};
    struct rlimit saved, full;
    void (*old)(int);
    struct stat st;
    char path[4200];
    uint64_t id;
    int rc;

    memset(body, 'x', sizeof(body) - 3);
    memcpy(body + sizeof(body) - 3, "\r\n", 3);
    m.message = body;
    m.message_len = sizeof(body) - 1;
    assert_int_equal(outbox_submit(f->ob, &m, 1, NOW, &id), 0);
    snprintf(path, sizeof(path), "%s/data.mdb", f->dir);
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(take_ids(f->ob, NOW, 4, NULL), 1);

    old = signal(SIGXFSZ, SIG_IGN);
    assert_int_equal(getrlimit(RLIMIT_FSIZE, &saved), 0);
    full = saved;
    full.rlim_cur = (rlim_t)st.st_size;
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &full), 0);
    r.id = id;
    rc = outbox_apply(f->ob, &r, 1, NOW);
    /* Still leased: neither handed out nor due. */
    assert_int_equal(take_ids(f->ob, NOW + MINUTE, 4, NULL), 0);
    assert_int_equal(outbox_next_due(f->ob), INT64_MAX);
    /* Released: no write needed, so it works on the full disk. */
    r.outcome = OUTBOX_RELEASE;
    assert_int_equal(outbox_apply(f->ob, &r, 1, NOW), 0);
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &saved), 0);
    signal(SIGXFSZ, old);
    assert_int_equal(rc, -EFBIG);

    assert_depth(f->ob, 0, 1, 0);
    assert_int_equal(outbox_next_due(f->ob), NOW);
    assert_int_equal(take_ids(f->ob, NOW, 4, NULL), 1);
    r.outcome = OUTBOX_DELIVERED;
    assert_int_equal(outbox_apply(f->ob, &r, 1, NOW), 0);
    assert_depth(f->ob, 0, 0, 0);
}

/* ---- commits on the thread pool ---- */

/* Holds the outbox's LMDB write lock from a thread of its own, as a slow
 * disk holds a commit, until `release` is set. */
struct writer_lock {
    const char *dir;
    pthread_t thread;
    atomic_int locked; /* 1: held; -1: could not */
    atomic_int release;
};

static void *writer_lock_main(void *arg)
{
    struct writer_lock *w = arg;
    MDB_env *env = NULL;
    MDB_txn *txn;

    if (mdb_env_create(&env) != 0 || mdb_env_set_maxdbs(env, 8) != 0 ||
        mdb_env_open(env, w->dir, MDB_NOTLS, 0600) != 0 || mdb_txn_begin(env, NULL, 0, &txn) != 0) {
        atomic_store(&w->locked, -1);
        mdb_env_close(env);
        return NULL;
    }
    atomic_store(&w->locked, 1);
    while (atomic_load(&w->release) == 0)
        usleep(500);
    mdb_txn_abort(txn);
    mdb_env_close(env);
    return NULL;
}

static void writer_lock_take(struct writer_lock *w, const char *dir)
{
    memset(w, 0, sizeof(*w));
    w->dir = dir;
    assert_int_equal(pthread_create(&w->thread, NULL, writer_lock_main, w), 0);
    while (atomic_load(&w->locked) == 0)
        usleep(200);
    assert_int_equal(atomic_load(&w->locked), 1);
}

static void writer_lock_release(struct writer_lock *w)
{
    atomic_store(&w->release, 1);
    assert_int_equal(pthread_join(w->thread, NULL), 0);
}

struct async_run {
    struct outbox *ob;
    struct writer_lock lock;
    uv_timer_t timer;
    int ticks;
    int done;
    bool released;
};

struct async_job {
    struct async_run *run;
    int rc;
    int order;    /* 1 + how many jobs completed before this one */
    int ticks_at; /* timer ticks seen when it completed */
    bool busy_at; /* outbox_busy() in the callback */
};

static void on_async_tick(uv_timer_t *t)
{
    struct async_run *r = t->data;

    r->ticks++;
    /* The loop turned five times while the commit waited: let it go. */
    if (r->ticks == 5 && !r->released) {
        r->released = true;
        writer_lock_release(&r->lock);
    }
    if (r->done == 2)
        uv_close((uv_handle_t *)t, NULL);
}

static void on_async_done(int rc, void *arg)
{
    struct async_job *j = arg;

    j->rc = rc;
    j->order = ++j->run->done;
    j->ticks_at = j->run->ticks;
    j->busy_at = outbox_busy(j->run->ob);
}

/* While a commit is held up (the write lock is taken elsewhere), the loop
 * keeps turning, takes still work (read only), and a second job waits for
 * the first; each callback runs after its commit, in order. */
static void test_outbox_submit_async_loop_runs(void **state)
{
    struct fixture *f = *state;
    struct async_run r = {.ob = f->ob};
    struct async_job j0 = {.run = &r}, j1 = {.run = &r};
    struct outbox_new two[2] = {new_msg(OUTBOX_TOKENCODE, "a\r\n"),
                                new_msg(OUTBOX_REPORT, "b\r\n")};
    struct outbox_new one = new_msg(OUTBOX_TOKENCODE, "c\r\n"), bad = one;
    uint64_t ids0[2] = {0, 0}, id1 = 0, before, taken[8];
    uv_loop_t loop;

    before = submit(f->ob, OUTBOX_TOKENCODE, "before\r\n", NOW);
    assert_false(outbox_busy(f->ob));
    assert_int_equal(uv_loop_init(&loop), 0);
    assert_int_equal(uv_timer_init(&loop, &r.timer), 0);
    r.timer.data = &r;
    assert_int_equal(uv_timer_start(&r.timer, on_async_tick, 1, 1), 0);
    writer_lock_take(&r.lock, f->dir);

    assert_int_equal(outbox_submit_async(f->ob, &loop, two, 2, NOW, ids0, on_async_done, &j0), 0);
    assert_int_equal(outbox_submit_async(f->ob, &loop, &one, 1, NOW, &id1, on_async_done, &j1), 0);
    /* Refused at once, no callback. */
    bad.nrcpts = 0;
    assert_int_equal(outbox_submit_async(f->ob, &loop, &bad, 1, NOW, &id1, on_async_done, &j1),
                     ERROR_INVALID);
    assert_true(outbox_busy(f->ob));
    /* A take does not wait for the writer: it reads what is committed. */
    assert_int_equal(take_ids(f->ob, NOW, 8, taken), 1);
    assert_int_equal(taken[0], before);

    assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(uv_loop_close(&loop), 0);
    assert_true(r.released);
    assert_int_equal(j0.rc, 0);
    assert_int_equal(j1.rc, 0);
    assert_int_equal(j0.order, 1);
    assert_int_equal(j1.order, 2);
    assert_true(j0.ticks_at >= 5);
    assert_true(j0.busy_at); /* j1 was queued behind it */
    assert_false(outbox_busy(f->ob));
    assert_int_equal(ids0[0], before + 1);
    assert_int_equal(ids0[1], before + 2);
    assert_int_equal(id1, before + 3);
    assert_depth(f->ob, 3, 1, 0);
    assert_int_equal(outbox_verify(f->ob), 0);
}

/* An expired message met by a take while a job is in flight is neither
 * handed out nor moved (that needs the writer); it is moved once the job
 * is done. */
static void test_outbox_take_while_busy_defers_expiry(void **state)
{
    struct fixture *f = *state;
    struct async_run r = {.ob = f->ob};
    struct async_job j0 = {.run = &r};
    struct outbox_new m = new_msg(OUTBOX_TOKENCODE, "x\r\n"), y = new_msg(OUTBOX_REPORT, "y\r\n");
    uint64_t id = 0;
    uv_loop_t loop;

    m.expires_ms = NOW + MINUTE;
    submit(f->ob, OUTBOX_REPORT, "old\r\n", NOW);
    assert_int_equal(outbox_submit(f->ob, &m, 1, NOW, &id), 0);
    assert_int_equal(uv_loop_init(&loop), 0);
    assert_int_equal(uv_timer_init(&loop, &r.timer), 0);
    r.timer.data = &r;
    assert_int_equal(uv_timer_start(&r.timer, on_async_tick, 1, 1), 0);
    writer_lock_take(&r.lock, f->dir);
    r.done = 1; /* one job only: the timer closes once it is done */
    assert_int_equal(outbox_submit_async(f->ob, &loop, &y, 1, NOW, &id, on_async_done, &j0), 0);
    /* Expired (tokencode) is skipped and stays; the report is handed out. */
    assert_int_equal(take_ids(f->ob, NOW + 2 * MINUTE, 8, NULL), 1);
    assert_depth(f->ob, 1, 1, 0);
    assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(uv_loop_close(&loop), 0);
    assert_int_equal(j0.rc, 0);
    /* Swept once the commit was done: the expired one went to dead. */
    assert_depth(f->ob, 0, 2, 1);
    /* The new report is handed out. */
    assert_int_equal(take_ids(f->ob, NOW + 2 * MINUTE, 8, NULL), 1);
    assert_depth(f->ob, 0, 2, 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_outbox_round_trip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_outbox_tokencodes_first, setup, teardown),
        cmocka_unit_test_setup_teardown(test_outbox_due_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_outbox_leases, setup, teardown),
        cmocka_unit_test_setup_teardown(test_outbox_many_leases, setup, teardown),
        cmocka_unit_test_setup_teardown(test_outbox_leases_random, setup, teardown),
        cmocka_unit_test_setup_teardown(test_outbox_expired_before_attempt, setup, teardown),
        cmocka_unit_test_setup_teardown(test_outbox_expired_after_attempts, setup, teardown),
        cmocka_unit_test_setup_teardown(test_outbox_default_expiry, setup, teardown),
        cmocka_unit_test_setup_teardown(test_outbox_defer, setup, teardown),
        cmocka_unit_test_setup_teardown(test_outbox_dead_outcome, setup, teardown),
        cmocka_unit_test_setup_teardown(test_outbox_error_truncated, setup, teardown),
        cmocka_unit_test_setup_teardown(test_outbox_retry_dead, setup, teardown),
        cmocka_unit_test_setup_teardown(test_outbox_retry_pending, setup, teardown),
        cmocka_unit_test_setup_teardown(test_outbox_unknown_ids, setup, teardown),
        cmocka_unit_test_setup_teardown(test_outbox_drop, setup, teardown),
        cmocka_unit_test_setup_teardown(test_outbox_depth_counts, setup, teardown),
        cmocka_unit_test_setup_teardown(test_outbox_ids_monotonic, setup, teardown),
        cmocka_unit_test_setup_teardown(test_outbox_invalid_submissions, setup, teardown),
        cmocka_unit_test_setup_teardown(test_outbox_map_growth, setup, teardown),
        cmocka_unit_test_setup_teardown(test_outbox_corrupt_pending_record, setup, teardown),
        cmocka_unit_test_setup_teardown(test_outbox_corrupt_records_in_results, setup, teardown),
        cmocka_unit_test_setup_teardown(test_outbox_apply_to_corrupt_record, setup, teardown),
        cmocka_unit_test_setup_teardown(test_outbox_apply_narrows_rcpts, setup, teardown),
        cmocka_unit_test_setup_teardown(test_outbox_apply_failure_keeps_lease, setup, teardown),
        cmocka_unit_test_setup_teardown(test_outbox_index_repair, setup, teardown),
        cmocka_unit_test_setup_teardown(test_outbox_corrupt_meta, setup, teardown),
        cmocka_unit_test_setup_teardown(test_outbox_reopen_keeps_everything, setup, teardown),
        cmocka_unit_test_setup_teardown(test_outbox_each_stops, setup, teardown),
        cmocka_unit_test_setup_teardown(test_outbox_submit_async_loop_runs, setup, teardown),
        cmocka_unit_test_setup_teardown(test_outbox_take_while_busy_defers_expiry, setup, teardown),
        cmocka_unit_test(test_outbox_open_refuses),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
