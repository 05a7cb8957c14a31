/*
 * Replication in the store (store.h, "Replication"): deltas and snapshots
 * from a primary store applied to a replica store, each with its own
 * temporary directory and its own node key, so every password must be
 * unsealed on one side and sealed afresh on the other.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "error.h"
#include "settings.h"
#include "smtpsync.pb-c.h"
#include "store.h"
#include "testutil.h"

#define SECRET_A "Pl41nT3xt-P@ss-A"
#define SECRET_B "s3cond-S3cret-B"

struct fixture {
    char *dir;
    char pdir[4096];
    char rdir[4096];
    struct store *primary;
    struct store *replica;
};

static struct store *open_store(const char *dir)
{
    struct store_params p = {.dir = dir, .create = true};
    struct store *st;

    assert_int_equal(store_open(&p, &st), 0);
    return st;
}

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));

    assert_non_null(f);
    f->dir = testutil_tmpdir();
    snprintf(f->pdir, sizeof(f->pdir), "%s/primary", f->dir);
    snprintf(f->rdir, sizeof(f->rdir), "%s/replica", f->dir);
    f->primary = open_store(f->pdir);
    f->replica = open_store(f->rdir);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;

    store_close(f->primary);
    store_close(f->replica);
    testutil_rmtree(f->dir);
    free(f->dir);
    free(f);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Helpers. */

static void make_record(struct settings *s, const char *instance, const char *host,
                        const char *password)
{
    settings_clear(s);
    snprintf(s->instance, sizeof(s->instance), "%s", instance);
    snprintf(s->hostname, sizeof(s->hostname), "%s", host);
    s->port = 587;
    snprintf(s->from_address, sizeof(s->from_address), "noreply@example.com");
    snprintf(s->test_address, sizeof(s->test_address), "ops@example.com");
    if (password != NULL) {
        s->logon_required = true;
        s->allow_plaintext_auth = true; /* no SMTPS in these records */
        snprintf(s->user_id, sizeof(s->user_id), "mailer");
        assert_int_equal(settings_set_password(s, password), 0);
    }
}

static void put_draft(struct store *st, const char *instance, const char *host,
                      const char *password)
{
    struct settings s;

    settings_init(&s);
    make_record(&s, instance, host, password);
    assert_int_equal(store_draft_put(st, &s), 0);
    settings_clear(&s);
}

static uint64_t save_all(struct store *st, const char *comment)
{
    struct store_commit c = {.actor = "alice", .comment = comment};
    struct settings_problems problems = {0};
    uint64_t rev = 0;

    assert_int_equal(store_save(st, NULL, 0, &c, &problems, &rev), 0);
    assert_int_equal(problems.count, 0);
    return rev;
}

static uint64_t save_one(struct store *st, const char *instance, const char *host,
                         const char *password)
{
    put_draft(st, instance, host, password);
    return save_all(st, NULL);
}

static struct store_info info_of(struct store *st)
{
    struct store_info info;

    assert_int_equal(store_info(st, &info), 0);
    return info;
}

/* Sends everything after the replica's revision and applies it. */
static void sync_delta(struct store *from, struct store *to)
{
    struct store_info ri = info_of(to);
    Smtpsync__Delta *d = NULL;

    assert_int_equal(store_repl_delta(from, ri.revision, 0, &d), 0);
    assert_int_equal(store_repl_apply_delta(to, d, NULL), 0);
    store_repl_free_delta(d);
}

/* Every current record, unsealed, in instance order. */
#define RECORDS_MAX 512
struct records {
    struct settings v[RECORDS_MAX];
    size_t n;
};

static int collect_record(const struct settings *s, void *arg)
{
    struct records *r = arg;

    assert_true(r->n < RECORDS_MAX);
    settings_init(&r->v[r->n]);
    assert_int_equal(settings_copy(&r->v[r->n], s), 0);
    r->n++;
    return 0;
}

static void records_clear(struct records *r)
{
    for (size_t i = 0; i < r->n; i++)
        settings_clear(&r->v[i]);
    r->n = 0;
}

/* One history row, copied. */
struct row {
    uint64_t revision, epoch, rollback_of;
    int64_t time_ms;
    char actor[STORE_ACTOR_MAX + 1];
    char comment[STORE_COMMENT_MAX + 1];
    uint8_t hash[STORE_HASH_LEN];
    size_t nchanges;
};

struct rows {
    struct row v[64];
    size_t n;
};

static int collect_row(const struct store_revision *r, void *arg)
{
    struct rows *rows = arg;
    struct row *w;

    assert_true(rows->n < 64);
    w = &rows->v[rows->n++];
    memset(w, 0, sizeof(*w));
    w->revision = r->revision;
    w->epoch = r->epoch;
    w->rollback_of = r->rollback_of;
    w->time_ms = r->time_ms;
    snprintf(w->actor, sizeof(w->actor), "%s", r->actor);
    snprintf(w->comment, sizeof(w->comment), "%s", r->comment);
    memcpy(w->hash, r->hash, STORE_HASH_LEN);
    w->nchanges = r->nchanges;
    return 0;
}

/* The two stores hold the same revision, hash, history rows and records
 * (passwords included), and both verify. */
static void assert_same(struct store *a, struct store *b)
{
    struct store_info ia = info_of(a), ib = info_of(b);
    struct records *ra = calloc(1, sizeof(*ra)), *rb = calloc(1, sizeof(*rb));
    struct rows *ha = calloc(1, sizeof(*ha)), *hb = calloc(1, sizeof(*hb));

    assert_non_null(ra);
    assert_non_null(rb);
    assert_non_null(ha);
    assert_non_null(hb);
    assert_int_equal(ia.revision, ib.revision);
    assert_int_equal(ia.epoch, ib.epoch);
    assert_memory_equal(ia.hash, ib.hash, STORE_HASH_LEN);
    assert_int_equal(ia.revision_time_ms, ib.revision_time_ms);
    assert_int_equal(ia.ninstances, ib.ninstances);

    assert_int_equal(store_each(a, 0, STORE_UNSEAL, collect_record, ra), 0);
    assert_int_equal(store_each(b, 0, STORE_UNSEAL, collect_record, rb), 0);
    assert_int_equal(ra->n, rb->n);
    for (size_t i = 0; i < ra->n; i++) {
        assert_string_equal(ra->v[i].instance, rb->v[i].instance);
        for (int fld = 0; fld < SETTINGS_F_COUNT; fld++)
            assert_false(settings_field_differs(&ra->v[i], &rb->v[i], (enum settings_field)fld));
        assert_int_equal(ra->v[i].password_set, rb->v[i].password_set);
        if (ra->v[i].password_set)
            assert_string_equal(ra->v[i].password, rb->v[i].password);
    }

    /* History rows from the replica's base up. */
    assert_int_equal(store_history(a, 0, collect_row, ha), 0);
    assert_int_equal(store_history(b, 0, collect_row, hb), 0);
    for (size_t i = 0; i < hb->n; i++) {
        assert_true(i < ha->n);
        assert_int_equal(ha->v[i].revision, hb->v[i].revision);
        assert_int_equal(ha->v[i].epoch, hb->v[i].epoch);
        assert_int_equal(ha->v[i].rollback_of, hb->v[i].rollback_of);
        assert_int_equal(ha->v[i].time_ms, hb->v[i].time_ms);
        assert_string_equal(ha->v[i].actor, hb->v[i].actor);
        assert_string_equal(ha->v[i].comment, hb->v[i].comment);
        assert_memory_equal(ha->v[i].hash, hb->v[i].hash, STORE_HASH_LEN);
        assert_int_equal(ha->v[i].nchanges, hb->v[i].nchanges);
    }
    assert_int_equal(store_verify(a), 0);
    assert_int_equal(store_verify(b), 0);
    records_clear(ra);
    records_clear(rb);
    free(ra);
    free(rb);
    free(ha);
    free(hb);
}

static size_t history_len(struct store *st)
{
    struct rows *h = calloc(1, sizeof(*h));
    size_t n;

    assert_non_null(h);
    assert_int_equal(store_history(st, 0, collect_row, h), 0);
    n = h->n;
    free(h);
    return n;
}

/* Replaces a string of a message tree built by protobuf-c (malloc'd). */
static void replace_str(char **field, const char *value)
{
    free(*field);
    *field = strdup(value);
    assert_non_null(*field);
}

/* ------------------------------------------------------------------------ */
/* Deltas. */

static void test_store_repl_delta_round_trip(void **state)
{
    struct fixture *f = *state;
    Smtpsync__Delta *d = NULL;
    struct store_info pi;

    put_draft(f->primary, "site-a", "a.example.com", SECRET_A);
    put_draft(f->primary, "site-b", "b.example.com", NULL);
    save_all(f->primary, "first");
    pi = info_of(f->primary);

    assert_int_equal(store_repl_delta(f->primary, 0, 0, &d), 0);
    assert_int_equal(d->from_revision, 0);
    assert_int_equal(d->to_revision, 1);
    assert_int_equal(d->epoch, pi.epoch);
    assert_int_equal(d->n_revisions, 1);
    assert_int_equal(d->hash_after.len, STORE_HASH_LEN);
    assert_memory_equal(d->hash_after.data, pi.hash, STORE_HASH_LEN);
    /* On the wire a secret is its id and plaintext, never sealed bytes. */
    for (size_t i = 0; i < d->revisions[0]->n_changes; i++) {
        const Smtpsync__Settings *m = d->revisions[0]->changes[i]->settings;

        if (strcmp(m->instance, "site-a") != 0) {
            assert_null(m->password);
            continue;
        }
        assert_non_null(m->password);
        assert_int_equal(m->password->sealed.len, 0);
        assert_int_equal(m->password->id.len, SETTINGS_SECRET_ID_LEN);
        assert_int_equal(m->password->plaintext.len, strlen(SECRET_A));
        assert_memory_equal(m->password->plaintext.data, SECRET_A, strlen(SECRET_A));
    }
    assert_int_equal(store_repl_apply_delta(f->replica, d, NULL), 0);
    store_repl_free_delta(d);
    assert_same(f->primary, f->replica);
    assert_int_equal(history_len(f->replica), 1);

    /* What a replica applied it can send on (after a promotion, say). */
    {
        char dir3[4200];
        struct store *third;

        snprintf(dir3, sizeof(dir3), "%s/third", f->dir);
        third = open_store(dir3);
        sync_delta(f->replica, third);
        assert_same(f->primary, third);
        store_close(third);
    }
}

/* As on the wire: packed into a Frame, unpacked on the other side, applied
 * from there, and wiped before the Frame is freed. */
static void test_store_repl_delta_through_frame(void **state)
{
    struct fixture *f = *state;
    Smtpsync__Frame frame = SMTPSYNC__FRAME__INIT, *got;
    Smtpsync__Delta *d = NULL;
    Smtpsync__Snapshot *s = NULL;
    const Smtpsync__Secret *sec;
    uint8_t *buf;
    size_t len;

    save_one(f->primary, "site-a", "a.example.com", SECRET_A);
    save_one(f->primary, "site-b", "b.example.com", SECRET_B);
    assert_int_equal(store_repl_delta(f->primary, 0, 0, &d), 0);
    frame.id = 7;
    frame.body_case = SMTPSYNC__FRAME__BODY_DELTA;
    frame.delta = d;
    len = smtpsync__frame__get_packed_size(&frame);
    buf = malloc(len);
    assert_non_null(buf);
    smtpsync__frame__pack(&frame, buf);
    store_repl_free_delta(d);
    got = smtpsync__frame__unpack(NULL, len, buf);
    OPENSSL_cleanse(buf, len);
    free(buf);
    assert_non_null(got);
    assert_int_equal(got->body_case, SMTPSYNC__FRAME__BODY_DELTA);
    assert_int_equal(store_repl_apply_delta(f->replica, got->delta, NULL), 0);
    sec = got->delta->revisions[0]->changes[0]->settings->password;
    assert_int_equal(sec->plaintext.len, strlen(SECRET_A));
    store_repl_wipe_delta(got->delta);
    for (size_t i = 0; i < sec->plaintext.len; i++)
        assert_int_equal(sec->plaintext.data[i], 0);
    smtpsync__frame__free_unpacked(got, NULL);
    assert_same(f->primary, f->replica);

    /* A snapshot the same way, and wiping NULL is allowed. */
    assert_int_equal(store_repl_snapshot(f->primary, &s), 0);
    smtpsync__frame__init(&frame);
    frame.body_case = SMTPSYNC__FRAME__BODY_SNAPSHOT;
    frame.snapshot = s;
    len = smtpsync__frame__get_packed_size(&frame);
    buf = malloc(len);
    assert_non_null(buf);
    smtpsync__frame__pack(&frame, buf);
    store_repl_free_snapshot(s);
    got = smtpsync__frame__unpack(NULL, len, buf);
    OPENSSL_cleanse(buf, len);
    free(buf);
    assert_non_null(got);
    assert_int_equal(store_repl_apply_snapshot(f->replica, got->snapshot), 0);
    sec = got->snapshot->records[1]->password;
    store_repl_wipe_snapshot(got->snapshot);
    for (size_t i = 0; i < sec->plaintext.len; i++)
        assert_int_equal(sec->plaintext.data[i], 0);
    smtpsync__frame__free_unpacked(got, NULL);
    store_repl_wipe_delta(NULL);
    store_repl_wipe_snapshot(NULL);
    assert_same(f->primary, f->replica);
}

static void test_store_repl_delta_several_saves(void **state)
{
    struct fixture *f = *state;
    struct store_commit c = {.actor = "bob", .comment = "undo"};
    Smtpsync__Delta *d = NULL;

    save_one(f->primary, "site-a", "a1.example.com", SECRET_A);
    sync_delta(f->primary, f->replica);
    /* A draft on the replica is left alone by deltas. */
    put_draft(f->replica, "site-z", "z.example.com", NULL);

    save_one(f->primary, "site-b", "b1.example.com", SECRET_B);
    save_one(f->primary, "site-a", "a2.example.com", SECRET_B);
    put_draft(f->primary, "site-c", "c1.example.com", NULL);
    put_draft(f->primary, "site-a", "a3.example.com", NULL); /* password removed */
    save_all(f->primary, "two at once");
    /* Back to revision 2: site-c is deleted, site-a's old password returns. */
    assert_int_equal(store_rollback(f->primary, 2, &c, NULL), 0);
    assert_int_equal(info_of(f->primary).revision, 5);

    assert_int_equal(store_repl_delta(f->primary, 1, 0, &d), 0);
    assert_int_equal(d->n_revisions, 4);
    assert_int_equal(d->revisions[3]->rollback_of, 2);
    assert_int_equal(store_repl_apply_delta(f->replica, d, NULL), 0);
    store_repl_free_delta(d);
    assert_same(f->primary, f->replica);
    assert_int_equal(history_len(f->replica), 5);
    assert_int_equal(info_of(f->replica).ndrafts, 1);

    /* Older revisions read back the same on both sides too. */
    for (uint64_t rev = 1; rev <= 5; rev++) {
        struct records *ra = calloc(1, sizeof(*ra)), *rb = calloc(1, sizeof(*rb));

        assert_int_equal(store_each(f->primary, rev, STORE_UNSEAL, collect_record, ra), 0);
        assert_int_equal(store_each(f->replica, rev, STORE_UNSEAL, collect_record, rb), 0);
        assert_int_equal(ra->n, rb->n);
        for (size_t i = 0; i < ra->n; i++) {
            assert_string_equal(ra->v[i].hostname, rb->v[i].hostname);
            if (ra->v[i].password_set)
                assert_string_equal(ra->v[i].password, rb->v[i].password);
        }
        records_clear(ra);
        records_clear(rb);
        free(ra);
        free(rb);
    }
}

static void test_store_repl_delta_limits(void **state)
{
    struct fixture *f = *state;
    Smtpsync__Delta *d = NULL;
    struct rows *h = calloc(1, sizeof(*h));

    assert_non_null(h);
    /* Nothing to send yet. */
    assert_int_equal(store_repl_delta(f->primary, 0, 0, &d), ERROR_EMPTY);
    for (int i = 0; i < 5; i++) {
        char host[64];
        snprintf(host, sizeof(host), "h%d.example.com", i);
        save_one(f->primary, "site-a", host, SECRET_A);
    }
    assert_int_equal(store_repl_delta(f->primary, 5, 0, &d), ERROR_EMPTY);
    assert_int_equal(store_repl_delta(f->primary, 6, 0, &d), ERROR_INVALID);
    assert_null(d);

    /* At most `max` revisions; hash_after is h(to), not the head's. */
    assert_int_equal(store_history(f->primary, 0, collect_row, h), 0);
    assert_int_equal(store_repl_delta(f->primary, 0, 2, &d), 0);
    assert_int_equal(d->to_revision, 2);
    assert_int_equal(d->n_revisions, 2);
    assert_memory_equal(d->hash_after.data, h->v[3].hash, STORE_HASH_LEN); /* newest first */
    assert_int_equal(store_repl_apply_delta(f->replica, d, NULL), 0);
    store_repl_free_delta(d);
    assert_int_equal(info_of(f->replica).revision, 2);
    assert_int_equal(store_verify(f->replica), 0);
    sync_delta(f->primary, f->replica);
    assert_same(f->primary, f->replica);
    free(h);
}

static void test_store_repl_delta_compacted_then_snapshot(void **state)
{
    struct fixture *f = *state;
    Smtpsync__Delta *d = NULL;
    Smtpsync__Snapshot *s = NULL;
    uint64_t removed = 0;

    for (int i = 0; i < 5; i++) {
        char host[64];
        snprintf(host, sizeof(host), "h%d.example.com", i);
        save_one(f->primary, i % 2 ? "site-a" : "site-b", host, i % 2 ? SECRET_A : SECRET_B);
    }
    assert_int_equal(store_compact(f->primary, 2, &removed), 0);
    assert_int_equal(removed, 3);
    assert_int_equal(store_repl_delta(f->primary, 0, 0, &d), ERROR_COMPACTED);
    assert_int_equal(store_repl_delta(f->primary, 2, 0, &d), ERROR_COMPACTED);
    assert_null(d);
    assert_int_equal(store_repl_delta(f->primary, 3, 0, &d), 0);
    assert_int_equal(d->n_revisions, 2);
    store_repl_free_delta(d);

    /* The replica at 0 gets a snapshot instead, then deltas after it. */
    assert_int_equal(store_repl_snapshot(f->primary, &s), 0);
    assert_int_equal(store_repl_apply_snapshot(f->replica, s), 0);
    store_repl_free_snapshot(s);
    assert_same(f->primary, f->replica);
    assert_int_equal(info_of(f->replica).base_revision, 5);
    save_one(f->primary, "site-c", "c.example.com", SECRET_B);
    sync_delta(f->primary, f->replica);
    assert_same(f->primary, f->replica);
    assert_int_equal(history_len(f->replica), 1);
}

/* ------------------------------------------------------------------------ */
/* Snapshots. */

static Smtpsync__Member *member(const char *node, const char *address, Smtpsync__Role role)
{
    Smtpsync__Member *m = malloc(sizeof(*m));

    assert_non_null(m);
    smtpsync__member__init(m);
    m->node = strdup(node);
    m->address = strdup(address);
    m->role = role;
    assert_non_null(m->node);
    assert_non_null(m->address);
    return m;
}

/* A membership as a malloc'd tree, freed with free_unpacked. */
static Smtpsync__Membership *membership3(void)
{
    Smtpsync__Membership *ms = malloc(sizeof(*ms));

    assert_non_null(ms);
    smtpsync__membership__init(ms);
    ms->members = calloc(3, sizeof(*ms->members));
    assert_non_null(ms->members);
    ms->members[0] = member("hq", "hq.example.com:7443", SMTPSYNC__ROLE__ROLE_PRIMARY);
    ms->members[1] = member("site-1", "[2001:db8::1]:7443", SMTPSYNC__ROLE__ROLE_REPLICA);
    ms->members[2] = member("site-2", "10.0.0.2:7443", SMTPSYNC__ROLE__ROLE_REPLICA);
    ms->n_members = 3;
    return ms;
}

static void assert_membership3(struct store *st)
{
    Smtpsync__Membership *got = NULL;

    assert_int_equal(store_repl_membership(st, &got), 0);
    assert_int_equal(got->n_members, 3);
    assert_string_equal(got->members[0]->node, "hq");
    assert_string_equal(got->members[0]->address, "hq.example.com:7443");
    assert_int_equal(got->members[0]->role, SMTPSYNC__ROLE__ROLE_PRIMARY);
    assert_string_equal(got->members[1]->address, "[2001:db8::1]:7443");
    assert_string_equal(got->members[2]->node, "site-2");
    assert_int_equal(got->members[2]->role, SMTPSYNC__ROLE__ROLE_REPLICA);
    smtpsync__membership__free_unpacked(got, NULL);
}

static void test_store_repl_snapshot_round_trip(void **state)
{
    struct fixture *f = *state;
    Smtpsync__Membership *ms = membership3();
    Smtpsync__Snapshot *s = NULL;
    struct store_info pi, ri;

    assert_int_equal(store_repl_set_membership(f->primary, ms), 0);
    smtpsync__membership__free_unpacked(ms, NULL);
    put_draft(f->primary, "site-a", "a.example.com", SECRET_A);
    put_draft(f->primary, "site-b", "b.example.com", NULL);
    put_draft(f->primary, "site-c", "c.example.com", SECRET_B);
    save_all(f->primary, NULL);
    save_one(f->primary, "site-b", "b2.example.com", SECRET_B);

    /* The replica had a history of its own, and a draft: both go. */
    save_one(f->replica, "site-x", "x.example.com", SECRET_A);
    save_one(f->replica, "site-x", "x2.example.com", SECRET_A);
    put_draft(f->replica, "site-y", "y.example.com", NULL);

    assert_int_equal(store_repl_snapshot(f->primary, &s), 0);
    pi = info_of(f->primary);
    assert_int_equal(s->revision, pi.revision);
    assert_int_equal(s->epoch, pi.epoch);
    assert_int_equal(s->revision_time_ms, pi.revision_time_ms);
    assert_memory_equal(s->hash.data, pi.hash, STORE_HASH_LEN);
    assert_int_equal(s->n_records, 3);
    assert_non_null(s->membership);
    assert_int_equal(s->membership->n_members, 3);
    assert_string_equal(s->records[0]->instance, "site-a");
    assert_int_equal(s->records[0]->password->sealed.len, 0);
    assert_memory_equal(s->records[0]->password->plaintext.data, SECRET_A, strlen(SECRET_A));
    assert_int_equal(store_repl_apply_snapshot(f->replica, s), 0);
    store_repl_free_snapshot(s);

    ri = info_of(f->replica);
    assert_int_equal(ri.base_revision, pi.revision);
    assert_int_equal(ri.ndrafts, 0);
    assert_int_equal(history_len(f->replica), 0);
    assert_same(f->primary, f->replica);
    assert_membership3(f->replica);

    /* Deltas follow on from the snapshot, across a reopen. */
    store_close(f->replica);
    f->replica = open_store(f->rdir);
    save_one(f->primary, "site-a", "a2.example.com", SECRET_B);
    save_one(f->primary, "site-d", "d.example.com", NULL);
    sync_delta(f->primary, f->replica);
    assert_same(f->primary, f->replica);
    assert_int_equal(history_len(f->replica), 2);
    /* Compaction on the replica works from the snapshot's base. */
    assert_int_equal(store_compact(f->replica, 1, NULL), 0);
    assert_int_equal(store_verify(f->replica), 0);
}

static void test_store_repl_snapshot_empty_store(void **state)
{
    struct fixture *f = *state;
    Smtpsync__Snapshot *s = NULL;

    save_one(f->replica, "site-x", "x.example.com", SECRET_A);
    assert_int_equal(store_repl_snapshot(f->primary, &s), 0);
    assert_int_equal(s->n_records, 0);
    assert_int_equal(s->revision, 0);
    assert_non_null(s->membership);
    assert_int_equal(s->membership->n_members, 0);
    assert_int_equal(store_repl_apply_snapshot(f->replica, s), 0);
    store_repl_free_snapshot(s);
    assert_same(f->primary, f->replica);
    assert_int_equal(info_of(f->replica).ninstances, 0);
    assert_int_equal(history_len(f->replica), 0);
}

/* ------------------------------------------------------------------------ */
/* Refusals. */

static void test_store_repl_divergence_detected(void **state)
{
    struct fixture *f = *state;
    uint8_t actual[STORE_HASH_LEN], zero[STORE_HASH_LEN] = {0};
    Smtpsync__Delta *d = NULL;
    struct store_info before;

    save_one(f->primary, "site-a", "a.example.com", SECRET_A);
    sync_delta(f->primary, f->replica);
    save_one(f->primary, "site-a", "a2.example.com", SECRET_A);
    save_one(f->primary, "site-b", "b.example.com", SECRET_B);
    before = info_of(f->replica);

    /* A hostname changed in the second revision sent. */
    assert_int_equal(store_repl_delta(f->primary, 1, 0, &d), 0);
    replace_str(&d->revisions[1]->changes[0]->settings->hostname, "evil.example.com");
    memset(actual, 0, sizeof(actual));
    assert_int_equal(store_repl_apply_delta(f->replica, d, actual), ERROR_DIVERGED);
    assert_memory_not_equal(actual, zero, STORE_HASH_LEN);
    assert_memory_not_equal(actual, d->revisions[1]->hash.data, STORE_HASH_LEN);
    store_repl_free_delta(d);
    /* Nothing applied: not even the first, good, revision. */
    assert_int_equal(info_of(f->replica).revision, before.revision);
    assert_memory_equal(info_of(f->replica).hash, before.hash, STORE_HASH_LEN);
    assert_int_equal(history_len(f->replica), 1);
    assert_int_equal(info_of(f->replica).ninstances, 1);
    assert_int_equal(store_verify(f->replica), 0);

    /* Only the hash carried by a row altered (the chain itself and
     * hash_after still match): `actual` is the row's true hash. */
    assert_int_equal(store_repl_delta(f->primary, 1, 0, &d), 0);
    d->revisions[0]->hash.data[5] ^= 0x20;
    assert_int_equal(store_repl_apply_delta(f->replica, d, actual), ERROR_DIVERGED);
    d->revisions[0]->hash.data[5] ^= 0x20;
    assert_memory_equal(actual, d->revisions[0]->hash.data, STORE_HASH_LEN);
    store_repl_free_delta(d);
    assert_int_equal(info_of(f->replica).revision, before.revision);

    /* Only hash_after altered: `actual` is the true head hash. */
    assert_int_equal(store_repl_delta(f->primary, 1, 0, &d), 0);
    d->hash_after.data[0] ^= 0x01;
    assert_int_equal(store_repl_apply_delta(f->replica, d, actual), ERROR_DIVERGED);
    assert_memory_equal(actual, info_of(f->primary).hash, STORE_HASH_LEN);
    /* NULL for `actual` is allowed. */
    assert_int_equal(store_repl_apply_delta(f->replica, d, NULL), ERROR_DIVERGED);
    store_repl_free_delta(d);
    assert_int_equal(info_of(f->replica).revision, before.revision);

    /* A replica whose own revision 1 differs has diverged from the first
     * row on. */
    {
        char dir3[4200];
        struct store *other;

        snprintf(dir3, sizeof(dir3), "%s/other", f->dir);
        other = open_store(dir3);
        save_one(other, "site-a", "other.example.com", SECRET_A);
        assert_int_equal(store_repl_delta(f->primary, 1, 0, &d), 0);
        assert_int_equal(store_repl_apply_delta(other, d, actual), ERROR_DIVERGED);
        store_repl_free_delta(d);
        assert_int_equal(info_of(other).revision, 1);
        store_close(other);
    }

    /* The untouched delta still applies. */
    sync_delta(f->primary, f->replica);
    assert_same(f->primary, f->replica);
}

static void test_store_repl_wrong_from_conflicts(void **state)
{
    struct fixture *f = *state;
    Smtpsync__Delta *d = NULL;

    save_one(f->primary, "site-a", "a.example.com", SECRET_A);
    save_one(f->primary, "site-a", "a2.example.com", SECRET_A);
    /* The replica is at 0; a delta from 1 does not follow on. */
    assert_int_equal(store_repl_delta(f->primary, 1, 0, &d), 0);
    assert_int_equal(store_repl_apply_delta(f->replica, d, NULL), ERROR_CONFLICT);
    store_repl_free_delta(d);
    assert_int_equal(info_of(f->replica).revision, 0);

    /* Applying the same delta twice: the second one conflicts. */
    assert_int_equal(store_repl_delta(f->primary, 0, 0, &d), 0);
    assert_int_equal(store_repl_apply_delta(f->replica, d, NULL), 0);
    assert_int_equal(store_repl_apply_delta(f->replica, d, NULL), ERROR_CONFLICT);
    store_repl_free_delta(d);
    assert_same(f->primary, f->replica);
}

static void test_store_repl_epochs(void **state)
{
    struct fixture *f = *state;
    Smtpsync__Delta *d = NULL;
    Smtpsync__Snapshot *s = NULL;
    struct rows *h = calloc(1, sizeof(*h));

    assert_non_null(h);
    /* set_epoch only goes up. */
    assert_int_equal(info_of(f->primary).epoch, 1);
    assert_int_equal(store_repl_set_epoch(f->primary, 1), ERROR_INVALID);
    assert_int_equal(store_repl_set_epoch(f->primary, 0), ERROR_INVALID);
    assert_int_equal(store_repl_set_epoch(f->primary, 3), 0);
    assert_int_equal(store_repl_set_epoch(f->primary, 2), ERROR_INVALID);
    assert_int_equal(info_of(f->primary).epoch, 3);

    /* A higher epoch in a delta is adopted with it. */
    save_one(f->primary, "site-a", "a.example.com", SECRET_A);
    sync_delta(f->primary, f->replica);
    assert_int_equal(info_of(f->replica).epoch, 3);
    assert_int_equal(store_history(f->replica, 0, collect_row, h), 0);
    assert_int_equal(h->v[0].epoch, 3);
    assert_same(f->primary, f->replica);

    /* The replica is promoted past the primary: the old primary's pushes
     * are fenced, deltas and snapshots alike, and change nothing. */
    assert_int_equal(store_repl_set_epoch(f->replica, 4), 0);
    save_one(f->primary, "site-a", "a2.example.com", SECRET_A);
    assert_int_equal(store_repl_delta(f->primary, 1, 0, &d), 0);
    assert_int_equal(store_repl_apply_delta(f->replica, d, NULL), ERROR_FENCED);
    store_repl_free_delta(d);
    assert_int_equal(store_repl_snapshot(f->primary, &s), 0);
    assert_int_equal(store_repl_apply_snapshot(f->replica, s), ERROR_FENCED);
    store_repl_free_snapshot(s);
    assert_int_equal(info_of(f->replica).revision, 1);
    assert_int_equal(info_of(f->replica).epoch, 4);
    assert_int_equal(store_verify(f->replica), 0);

    /* The new primary's writes go the other way; the old one adopts its
     * epoch from the snapshot it is repaired with. */
    save_one(f->replica, "site-b", "b.example.com", SECRET_B);
    assert_int_equal(store_repl_snapshot(f->replica, &s), 0);
    assert_int_equal(store_repl_apply_snapshot(f->primary, s), 0);
    store_repl_free_snapshot(s);
    assert_int_equal(info_of(f->primary).epoch, 4);
    assert_same(f->replica, f->primary);
    free(h);
}

/* ------------------------------------------------------------------------ */
/* Malformed input. */

/* A fresh delta of the primary's two revisions, edited by `edit`, must be
 * refused with `want` and leave the replica at revision 0. */
static void refuse_delta(struct fixture *f, void (*edit)(Smtpsync__Delta *d), int want)
{
    Smtpsync__Delta *d = NULL;

    assert_int_equal(store_repl_delta(f->primary, 0, 0, &d), 0);
    edit(d);
    assert_int_equal(store_repl_apply_delta(f->replica, d, NULL), want);
    store_repl_free_delta(d);
    assert_int_equal(info_of(f->replica).revision, 0);
    assert_int_equal(info_of(f->replica).ninstances, 0);
}

static Smtpsync__Settings *first_put(Smtpsync__Delta *d)
{
    return d->revisions[0]->changes[0]->settings;
}

static void edit_sealed_sent(Smtpsync__Delta *d)
{
    Smtpsync__Secret *sec = first_put(d)->password;

    sec->sealed.data = malloc(40);
    assert_non_null(sec->sealed.data);
    memset(sec->sealed.data, 0x41, 40);
    sec->sealed.len = 40;
}

static void edit_kind_unset(Smtpsync__Delta *d)
{
    d->revisions[1]->changes[0]->kind = SMTPSYNC__CHANGE_KIND__CHANGE_KIND_UNSET;
}

static void edit_kind_unknown(Smtpsync__Delta *d)
{
    d->revisions[0]->changes[0]->kind = (Smtpsync__ChangeKind)77;
}

static void edit_bad_instance(Smtpsync__Delta *d)
{
    replace_str(&d->revisions[0]->changes[0]->instance, "../etc");
}

static void edit_instance_mismatch(Smtpsync__Delta *d)
{
    replace_str(&d->revisions[0]->changes[0]->instance, "site-q");
}

static void edit_long_hostname(Smtpsync__Delta *d)
{
    char big[400];

    memset(big, 'a', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    replace_str(&first_put(d)->hostname, big);
}

static void edit_control_in_actor(Smtpsync__Delta *d)
{
    replace_str(&d->revisions[0]->actor, "alice\nrevision 99 by root");
}

static void edit_renumbered(Smtpsync__Delta *d)
{
    d->revisions[1]->revision = 7;
}

static void edit_to_revision(Smtpsync__Delta *d)
{
    d->to_revision = 3;
}

static void edit_short_hash(Smtpsync__Delta *d)
{
    d->hash_after.len = 16;
}

static void edit_row_epoch_ahead(Smtpsync__Delta *d)
{
    d->revisions[0]->epoch = d->epoch + 1;
}

static void edit_bad_secret_id(Smtpsync__Delta *d)
{
    first_put(d)->password->id.len = 3;
}

static void edit_delete_with_settings(Smtpsync__Delta *d)
{
    d->revisions[1]->changes[0]->kind = SMTPSYNC__CHANGE_KIND__CHANGE_KIND_DELETE;
}

static void test_store_repl_malformed_delta_refused(void **state)
{
    struct fixture *f = *state;

    save_one(f->primary, "site-a", "a.example.com", SECRET_A);
    save_one(f->primary, "site-b", "b.example.com", SECRET_B);

    refuse_delta(f, edit_sealed_sent, ERROR_INVALID);
    refuse_delta(f, edit_kind_unset, ERROR_INVALID);
    refuse_delta(f, edit_kind_unknown, ERROR_INVALID);
    refuse_delta(f, edit_bad_instance, ERROR_INVALID);
    refuse_delta(f, edit_instance_mismatch, ERROR_INVALID);
    refuse_delta(f, edit_long_hostname, ERROR_DECODE);
    refuse_delta(f, edit_bad_secret_id, ERROR_DECODE);
    refuse_delta(f, edit_control_in_actor, ERROR_INVALID);
    refuse_delta(f, edit_renumbered, ERROR_INVALID);
    refuse_delta(f, edit_to_revision, ERROR_INVALID);
    refuse_delta(f, edit_short_hash, ERROR_INVALID);
    refuse_delta(f, edit_row_epoch_ahead, ERROR_INVALID);
    refuse_delta(f, edit_delete_with_settings, ERROR_INVALID);
    assert_int_equal(store_verify(f->replica), 0);

    /* And the genuine delta still applies after all that. */
    sync_delta(f->primary, f->replica);
    assert_same(f->primary, f->replica);
}

static void test_store_repl_malformed_snapshot_refused(void **state)
{
    struct fixture *f = *state;
    Smtpsync__Snapshot *s = NULL;
    Smtpsync__Settings *saved;

    put_draft(f->primary, "site-a", "a.example.com", SECRET_A);
    put_draft(f->primary, "site-b", "b.example.com", SECRET_B);
    save_all(f->primary, NULL);
    save_one(f->replica, "site-x", "x.example.com", SECRET_A);
    assert_int_equal(store_repl_snapshot(f->primary, &s), 0);

    /* Two records for one instance. */
    replace_str(&s->records[1]->instance, "site-a");
    assert_int_equal(store_repl_apply_snapshot(f->replica, s), ERROR_INVALID);
    replace_str(&s->records[1]->instance, "site-b");
    /* A hash that is not one. */
    s->hash.len = 31;
    assert_int_equal(store_repl_apply_snapshot(f->replica, s), ERROR_INVALID);
    s->hash.len = STORE_HASH_LEN;
    /* An instance id that is not one. */
    replace_str(&s->records[0]->instance, "");
    assert_int_equal(store_repl_apply_snapshot(f->replica, s), ERROR_DECODE);
    replace_str(&s->records[0]->instance, "site-a");
    /* Sealed bytes on the wire. */
    saved = s->records[1];
    saved->password->sealed.data = malloc(8);
    assert_non_null(saved->password->sealed.data);
    memset(saved->password->sealed.data, 1, 8);
    saved->password->sealed.len = 8;
    assert_int_equal(store_repl_apply_snapshot(f->replica, s), ERROR_INVALID);
    free(saved->password->sealed.data);
    saved->password->sealed.data = NULL;
    saved->password->sealed.len = 0;
    /* A membership with an unknown role. */
    s->membership->members = calloc(1, sizeof(*s->membership->members));
    assert_non_null(s->membership->members);
    s->membership->members[0] = member("hq", "hq:1", (Smtpsync__Role)9);
    s->membership->n_members = 1;
    assert_int_equal(store_repl_apply_snapshot(f->replica, s), ERROR_INVALID);
    s->membership->members[0]->role = SMTPSYNC__ROLE__ROLE_PRIMARY;

    /* Nothing of it applied. */
    assert_int_equal(info_of(f->replica).revision, 1);
    assert_int_equal(history_len(f->replica), 1);
    assert_int_equal(store_verify(f->replica), 0);

    /* Repaired, it applies. */
    assert_int_equal(store_repl_apply_snapshot(f->replica, s), 0);
    store_repl_free_snapshot(s);
    assert_same(f->primary, f->replica);
}

/* ------------------------------------------------------------------------ */
/* Membership and the replicas database. */

static void test_store_repl_membership(void **state)
{
    struct fixture *f = *state;
    Smtpsync__Membership *got = NULL, *ms;
    Smtpsync__Snapshot *s = NULL;

    /* Empty when never set. */
    assert_int_equal(store_repl_membership(f->primary, &got), 0);
    assert_int_equal(got->n_members, 0);
    smtpsync__membership__free_unpacked(got, NULL);

    ms = membership3();
    assert_int_equal(store_repl_set_membership(f->primary, ms), 0);
    assert_membership3(f->primary);

    /* Refused: a duplicate node, two primaries, a bad id, a bad role, a
     * line break in an address. The stored one is unchanged. */
    replace_str(&ms->members[2]->node, "site-1");
    assert_int_equal(store_repl_set_membership(f->primary, ms), ERROR_INVALID);
    replace_str(&ms->members[2]->node, "site-2");
    ms->members[1]->role = SMTPSYNC__ROLE__ROLE_PRIMARY;
    assert_int_equal(store_repl_set_membership(f->primary, ms), ERROR_INVALID);
    ms->members[1]->role = SMTPSYNC__ROLE__ROLE_UNSET;
    assert_int_equal(store_repl_set_membership(f->primary, ms), ERROR_INVALID);
    ms->members[1]->role = SMTPSYNC__ROLE__ROLE_REPLICA;
    replace_str(&ms->members[0]->node, "hq/../x");
    assert_int_equal(store_repl_set_membership(f->primary, ms), ERROR_INVALID);
    replace_str(&ms->members[0]->node, "hq");
    replace_str(&ms->members[0]->address, "hq:1\r\nx");
    assert_int_equal(store_repl_set_membership(f->primary, ms), ERROR_INVALID);
    assert_int_equal(store_repl_set_membership(f->primary, NULL), ERROR_INVALID);
    smtpsync__membership__free_unpacked(ms, NULL);
    assert_membership3(f->primary);

    /* It is not a revision, survives saves, compaction and a reopen. */
    assert_int_equal(info_of(f->primary).revision, 0);
    save_one(f->primary, "site-a", "a.example.com", SECRET_A);
    save_one(f->primary, "site-a", "a2.example.com", SECRET_A);
    assert_int_equal(store_compact(f->primary, 1, NULL), 0);
    store_close(f->primary);
    f->primary = open_store(f->pdir);
    assert_membership3(f->primary);

    /* It travels in snapshots. A snapshot without one leaves the
     * replica's own. */
    assert_int_equal(store_repl_snapshot(f->primary, &s), 0);
    assert_int_equal(store_repl_apply_snapshot(f->replica, s), 0);
    assert_membership3(f->replica);
    smtpsync__membership__free_unpacked(s->membership, NULL);
    s->membership = NULL;
    assert_int_equal(store_repl_apply_snapshot(f->replica, s), 0);
    store_repl_free_snapshot(s);
    assert_membership3(f->replica);

    /* Deltas leave it alone. */
    save_one(f->primary, "site-b", "b.example.com", NULL);
    sync_delta(f->primary, f->replica);
    assert_membership3(f->replica);

    /* An empty one clears it. */
    ms = malloc(sizeof(*ms));
    assert_non_null(ms);
    smtpsync__membership__init(ms);
    assert_int_equal(store_repl_set_membership(f->replica, ms), 0);
    smtpsync__membership__free_unpacked(ms, NULL);
    assert_int_equal(store_repl_membership(f->replica, &got), 0);
    assert_int_equal(got->n_members, 0);
    smtpsync__membership__free_unpacked(got, NULL);
    assert_int_equal(store_verify(f->replica), 0);
}

static Smtpsync__ReplicaStatus *status(const char *id, Smtpsync__ReplicaState st, uint64_t applied)
{
    Smtpsync__ReplicaStatus *rs = malloc(sizeof(*rs));

    assert_non_null(rs);
    smtpsync__replica_status__init(rs);
    rs->id = strdup(id);
    rs->state = st;
    rs->applied_revision = applied;
    rs->primary_revision = 9;
    rs->lag_seconds = -1;
    rs->last_error = strdup("connect: Connection refused");
    rs->address = strdup("10.0.0.1:7443");
    assert_non_null(rs->id);
    return rs;
}

struct status_seen {
    char ids[8][SETTINGS_INSTANCE_MAX + 1];
    uint64_t applied[8];
    size_t n;
};

static int collect_status(const Smtpsync__ReplicaStatus *rs, void *arg)
{
    struct status_seen *s = arg;

    assert_true(s->n < 8);
    snprintf(s->ids[s->n], sizeof(s->ids[0]), "%s", rs->id);
    s->applied[s->n] = rs->applied_revision;
    s->n++;
    return s->n == 7 ? 42 : 0;
}

static void test_store_repl_status_db(void **state)
{
    struct fixture *f = *state;
    Smtpsync__ReplicaStatus *rs = NULL, *a, *b;
    struct status_seen seen = {0};

    /* Nothing yet. */
    assert_int_equal(store_repl_status_get(f->primary, "site-1", &rs), ERROR_NOT_FOUND);
    assert_int_equal(store_repl_status_each(f->primary, collect_status, &seen), 0);
    assert_int_equal(seen.n, 0);

    a = status("site-2", SMTPSYNC__REPLICA_STATE__REPLICA_STATE_BEHIND, 3);
    b = status("site-1", SMTPSYNC__REPLICA_STATE__REPLICA_STATE_IN_SYNC, 9);
    assert_int_equal(store_repl_status_put(f->primary, a), 0);
    assert_int_equal(store_repl_status_put(f->primary, b), 0);
    assert_int_equal(store_repl_status_get(f->primary, "site-2", &rs), 0);
    assert_string_equal(rs->id, "site-2");
    assert_int_equal(rs->state, SMTPSYNC__REPLICA_STATE__REPLICA_STATE_BEHIND);
    assert_int_equal(rs->applied_revision, 3);
    assert_int_equal(rs->lag_seconds, -1);
    assert_string_equal(rs->last_error, "connect: Connection refused");
    smtpsync__replica_status__free_unpacked(rs, NULL);

    /* Overwritten in place; listed in id order. */
    a->applied_revision = 9;
    a->state = SMTPSYNC__REPLICA_STATE__REPLICA_STATE_IN_SYNC;
    assert_int_equal(store_repl_status_put(f->primary, a), 0);
    assert_int_equal(store_repl_status_each(f->primary, collect_status, &seen), 0);
    assert_int_equal(seen.n, 2);
    assert_string_equal(seen.ids[0], "site-1");
    assert_string_equal(seen.ids[1], "site-2");
    assert_int_equal(seen.applied[1], 9);

    /* A bad id is refused. */
    replace_str(&a->id, "not an id");
    assert_int_equal(store_repl_status_put(f->primary, a), ERROR_INVALID);
    assert_int_equal(store_repl_status_get(f->primary, "not an id", &rs), ERROR_INVALID);

    /* A callback's non-zero return stops the walk and is returned. */
    for (int i = 3; i <= 8; i++) {
        char id[16];
        snprintf(id, sizeof(id), "site-%d", i);
        replace_str(&a->id, id);
        assert_int_equal(store_repl_status_put(f->primary, a), 0);
    }
    memset(&seen, 0, sizeof(seen));
    assert_int_equal(store_repl_status_each(f->primary, collect_status, &seen), 42);
    assert_int_equal(seen.n, 7);
    smtpsync__replica_status__free_unpacked(a, NULL);
    smtpsync__replica_status__free_unpacked(b, NULL);

    /* It survives a reopen, and the settings are untouched by it. */
    store_close(f->primary);
    f->primary = open_store(f->pdir);
    assert_int_equal(store_repl_status_get(f->primary, "site-1", &rs), 0);
    assert_int_equal(rs->applied_revision, 9);
    smtpsync__replica_status__free_unpacked(rs, NULL);
    assert_int_equal(info_of(f->primary).revision, 0);
    assert_int_equal(store_verify(f->primary), 0);
}

/* Many statuses in one commit: all read back, in id order, and a reopen
 * keeps them. */
static void test_store_repl_status_put_many_round_trip(void **state)
{
    struct fixture *f = *state;
    Smtpsync__ReplicaStatus *v[5], *rs = NULL;
    struct status_seen seen = {0};

    for (int i = 0; i < 5; i++) {
        char id[16];
        snprintf(id, sizeof(id), "site-%d", 5 - i);
        v[i] = status(id, SMTPSYNC__REPLICA_STATE__REPLICA_STATE_BEHIND, (uint64_t)(10 + i));
    }
    assert_int_equal(
        store_repl_status_put_many(f->primary, (const Smtpsync__ReplicaStatus *const *)v, 5), 0);
    assert_int_equal(store_repl_status_each(f->primary, collect_status, &seen), 0);
    assert_int_equal(seen.n, 5);
    for (size_t i = 0; i < 5; i++) {
        char id[16];
        snprintf(id, sizeof(id), "site-%zu", i + 1);
        assert_string_equal(seen.ids[i], id);
        assert_int_equal(seen.applied[i], 10 + (4 - i));
    }

    /* Overwrites in place, as status_put does. */
    v[0]->state = SMTPSYNC__REPLICA_STATE__REPLICA_STATE_IN_SYNC;
    v[0]->applied_revision = 99;
    assert_int_equal(
        store_repl_status_put_many(f->primary, (const Smtpsync__ReplicaStatus *const *)v, 1), 0);
    store_close(f->primary);
    f->primary = open_store(f->pdir);
    assert_int_equal(store_repl_status_get(f->primary, "site-5", &rs), 0);
    assert_int_equal(rs->state, SMTPSYNC__REPLICA_STATE__REPLICA_STATE_IN_SYNC);
    assert_int_equal(rs->applied_revision, 99);
    assert_string_equal(rs->last_error, "connect: Connection refused");
    smtpsync__replica_status__free_unpacked(rs, NULL);
    assert_int_equal(store_repl_status_get(f->primary, "site-1", &rs), 0);
    assert_int_equal(rs->applied_revision, 14);
    smtpsync__replica_status__free_unpacked(rs, NULL);
    for (int i = 0; i < 5; i++)
        smtpsync__replica_status__free_unpacked(v[i], NULL);
    assert_int_equal(info_of(f->primary).revision, 0);
    assert_int_equal(store_verify(f->primary), 0);
}

/* One bad entry (a bad id, or NULL) refuses the whole batch: nothing of it
 * is written, not even the valid entries before it. */
static void test_store_repl_status_put_many_all_or_nothing(void **state)
{
    struct fixture *f = *state;
    Smtpsync__ReplicaStatus *v[3], *rs = NULL;
    struct status_seen seen = {0};

    v[0] = status("site-1", SMTPSYNC__REPLICA_STATE__REPLICA_STATE_BEHIND, 1);
    v[1] = status("site-2", SMTPSYNC__REPLICA_STATE__REPLICA_STATE_BEHIND, 2);
    v[2] = status("bad id/..", SMTPSYNC__REPLICA_STATE__REPLICA_STATE_BEHIND, 3);
    assert_int_equal(
        store_repl_status_put_many(f->primary, (const Smtpsync__ReplicaStatus *const *)v, 3),
        ERROR_INVALID);
    assert_int_equal(store_repl_status_each(f->primary, collect_status, &seen), 0);
    assert_int_equal(seen.n, 0);
    assert_int_equal(store_repl_status_get(f->primary, "site-1", &rs), ERROR_NOT_FOUND);

    /* An empty id and a NULL entry are refused the same way. */
    replace_str(&v[2]->id, "");
    assert_int_equal(
        store_repl_status_put_many(f->primary, (const Smtpsync__ReplicaStatus *const *)v, 3),
        ERROR_INVALID);
    smtpsync__replica_status__free_unpacked(v[2], NULL);
    v[2] = NULL;
    assert_int_equal(
        store_repl_status_put_many(f->primary, (const Smtpsync__ReplicaStatus *const *)v, 3),
        ERROR_INVALID);
    assert_int_equal(store_repl_status_put_many(f->primary, NULL, 2), ERROR_INVALID);
    assert_int_equal(store_repl_status_each(f->primary, collect_status, &seen), 0);
    assert_int_equal(seen.n, 0);

    /* A failed batch leaves what was there before untouched. */
    assert_int_equal(
        store_repl_status_put_many(f->primary, (const Smtpsync__ReplicaStatus *const *)v, 2), 0);
    v[0]->applied_revision = 77;
    assert_int_equal(
        store_repl_status_put_many(f->primary, (const Smtpsync__ReplicaStatus *const *)v, 3),
        ERROR_INVALID);
    assert_int_equal(store_repl_status_get(f->primary, "site-1", &rs), 0);
    assert_int_equal(rs->applied_revision, 1);
    smtpsync__replica_status__free_unpacked(rs, NULL);
    smtpsync__replica_status__free_unpacked(v[0], NULL);
    smtpsync__replica_status__free_unpacked(v[1], NULL);
    assert_int_equal(store_verify(f->primary), 0);
}

/* n == 0 writes nothing and succeeds, whatever the array. */
static void test_store_repl_status_put_many_empty(void **state)
{
    struct fixture *f = *state;
    struct status_seen seen = {0};

    assert_int_equal(store_repl_status_put_many(f->primary, NULL, 0), 0);
    assert_int_equal(store_repl_status_each(f->primary, collect_status, &seen), 0);
    assert_int_equal(seen.n, 0);
    assert_int_equal(info_of(f->primary).revision, 0);
    assert_int_equal(store_verify(f->primary), 0);
}

/* ------------------------------------------------------------------------ */
/* Secrets at rest and map growth. */

static void assert_no_plaintext(const char *dir)
{
    char path[4200];
    size_t len;
    char *data;

    snprintf(path, sizeof(path), "%s/data.mdb", dir);
    data = testutil_read_file(path, &len);
    assert_true(len > 0);
    assert_false(testutil_memmem(data, len, SECRET_A, strlen(SECRET_A)));
    assert_false(testutil_memmem(data, len, SECRET_B, strlen(SECRET_B)));
    /* The scan does look at the records. */
    assert_true(testutil_memmem(data, len, "a.example.com", strlen("a.example.com")));
    free(data);
}

static void test_store_repl_no_plaintext_on_disk(void **state)
{
    struct fixture *f = *state;
    Smtpsync__Snapshot *s = NULL;
    struct settings got;
    char dir3[4200];
    struct store *third;

    settings_init(&got);
    put_draft(f->primary, "site-a", "a.example.com", SECRET_A);
    put_draft(f->primary, "site-b", "b.example.com", SECRET_B);
    save_all(f->primary, NULL);
    save_one(f->primary, "site-b", "b2.example.com", SECRET_A);
    sync_delta(f->primary, f->replica);

    snprintf(dir3, sizeof(dir3), "%s/third", f->dir);
    third = open_store(dir3);
    assert_int_equal(store_repl_snapshot(f->primary, &s), 0);
    assert_int_equal(store_repl_apply_snapshot(third, s), 0);
    store_repl_free_snapshot(s);
    /* The passwords are there, sealed under each node's own key. */
    assert_int_equal(store_get(f->replica, "site-a", 0, STORE_UNSEAL, &got), 0);
    assert_string_equal(got.password, SECRET_A);
    assert_int_equal(store_get(third, "site-b", 0, STORE_UNSEAL, &got), 0);
    assert_string_equal(got.password, SECRET_A);
    settings_clear(&got);
    store_close(third);
    store_close(f->replica);
    f->replica = NULL;

    assert_no_plaintext(f->rdir);
    assert_no_plaintext(dir3);
    f->replica = open_store(f->rdir);
}

static void test_store_repl_apply_grows_map(void **state)
{
    struct fixture *f = *state;
    struct store_params p = {.create = true, .map_size = 64 * 1024};
    Smtpsync__Snapshot *s = NULL;
    struct settings rec;
    char dir[4200], dir2[4200], id[32], host[SETTINGS_HOSTNAME_MAX + 1];
    struct store *tiny, *tiny2;

    settings_init(&rec);
    /* Records with long hostnames: the delta is far past a 64 KiB map. */
    for (int i = 0; i < 300; i++) {
        snprintf(id, sizeof(id), "site-%03d", i);
        snprintf(host, sizeof(host), "%050d.%050d.%050d.example.com", i, i, i);
        make_record(&rec, id, host, SECRET_A);
        assert_int_equal(store_draft_put(f->primary, &rec), 0);
    }
    settings_clear(&rec);
    save_all(f->primary, NULL);

    snprintf(dir, sizeof(dir), "%s/tiny", f->dir);
    p.dir = dir;
    assert_int_equal(store_open(&p, &tiny), 0);
    sync_delta(f->primary, tiny);
    assert_same(f->primary, tiny);
    store_close(tiny);

    snprintf(dir2, sizeof(dir2), "%s/tiny2", f->dir);
    p.dir = dir2;
    assert_int_equal(store_open(&p, &tiny2), 0);
    assert_int_equal(store_repl_snapshot(f->primary, &s), 0);
    assert_int_equal(store_repl_apply_snapshot(tiny2, s), 0);
    store_repl_free_snapshot(s);
    assert_same(f->primary, tiny2);
    store_close(tiny2);
}

/* ------------------------------------------------------------------------ */
/* Crash safety: a child applies delta after delta (and a snapshot when it
 * reaches the head) to a replica until SIGKILL; the replica must then hold
 * exactly one of the primary's revisions, whole. */

#define CRASH_ROUNDS   50
#define CRASH_REVS     24
#define CRASH_STEP     3 /* revisions per delta */
#define CRASH_KILL_MAX 20
#define CRASH_APPLIES  100000

struct crash {
    Smtpsync__Delta *deltas[CRASH_REVS]; /* deltas[r]: from r, at most CRASH_STEP */
    Smtpsync__Snapshot *snap;            /* the state at revision 1 */
    uint8_t hashes[CRASH_REVS + 1][STORE_HASH_LEN];
};

static void crash_child(const char *dir, const struct crash *c)
{
    struct store_params p = {.dir = dir, .map_size = 64 * 1024, .create = true};
    struct store_info info;
    struct store *st;

    if (store_open(&p, &st) != 0)
        _exit(10);
    for (int i = 0; i < CRASH_APPLIES; i++) {
        if (store_info(st, &info) != 0)
            _exit(11);
        if (info.revision == CRASH_REVS) {
            if (store_repl_apply_snapshot(st, c->snap) != 0)
                _exit(12);
        } else if (store_repl_apply_delta(st, c->deltas[info.revision], NULL) != 0) {
            _exit(13);
        }
    }
    store_close(st);
    _exit(0);
}

/* Every record's password was saved with its hostname: they match. */
static int crash_check_record(const struct settings *s, void *arg)
{
    char want[96];
    const char *dot = strchr(s->hostname, '.');

    (*(int *)arg)++;
    assert_non_null(s->password);
    assert_non_null(dot);
    snprintf(want, sizeof(want), "pw/%.*s", (int)(dot - s->hostname), s->hostname);
    assert_string_equal(s->password, want);
    return 0;
}

/* The replica's records are the primary's at `revision`, passwords too. */
static void assert_same_state_at(struct store *primary, uint64_t revision, struct store *replica)
{
    struct records *rp = calloc(1, sizeof(*rp)), *rr = calloc(1, sizeof(*rr));

    assert_non_null(rp);
    assert_non_null(rr);
    /* Revision 0 of store_each() is the current one: the empty state here. */
    if (revision > 0)
        assert_int_equal(store_each(primary, revision, STORE_UNSEAL, collect_record, rp), 0);
    assert_int_equal(store_each(replica, 0, STORE_UNSEAL, collect_record, rr), 0);
    assert_int_equal(rp->n, rr->n);
    for (size_t i = 0; i < rp->n; i++) {
        assert_string_equal(rp->v[i].instance, rr->v[i].instance);
        assert_string_equal(rp->v[i].hostname, rr->v[i].hostname);
        assert_string_equal(rp->v[i].password, rr->v[i].password);
    }
    records_clear(rp);
    records_clear(rr);
    free(rp);
    free(rr);
}

static void test_store_repl_crash_mid_apply(void **state)
{
    struct fixture *f = *state;
    const char *env = getenv("SMTPSYNC_TEST_SEED");
    unsigned seed =
        env != NULL ? (unsigned)strtoul(env, NULL, 10) : (unsigned)time(NULL) ^ (unsigned)getpid();
    struct crash *c = calloc(1, sizeof(*c));
    struct rows *h = calloc(1, sizeof(*h));
    struct store_params p = {0};
    uint64_t last = 0, moved = 0, snapped = 0;
    char dir[4200];

    assert_non_null(c);
    assert_non_null(h);
    printf("repl crash test seed %u (SMTPSYNC_TEST_SEED=%u to replay)\n", seed, seed);
    fflush(stdout);
    srand(seed);
    for (int r = 1; r <= CRASH_REVS; r++) {
        char host[64], pw[64];
        int n = 1 + r % 3;

        for (int k = 0; k < n; k++) {
            char id[16];
            snprintf(id, sizeof(id), "site-%d", (r + k) % 4);
            snprintf(host, sizeof(host), "r%d-k%d.example.com", r, k);
            snprintf(pw, sizeof(pw), "pw/r%d-k%d", r, k);
            put_draft(f->primary, id, host, pw);
        }
        save_all(f->primary, NULL);
        if (r == 1)
            assert_int_equal(store_repl_snapshot(f->primary, &c->snap), 0);
    }
    assert_int_equal(store_history(f->primary, 0, collect_row, h), 0);
    for (size_t i = 0; i < h->n; i++)
        memcpy(c->hashes[h->v[i].revision], h->v[i].hash, STORE_HASH_LEN);
    for (int r = 0; r < CRASH_REVS; r++)
        assert_int_equal(store_repl_delta(f->primary, (uint64_t)r, CRASH_STEP, &c->deltas[r]), 0);

    snprintf(dir, sizeof(dir), "%s/crash", f->dir);
    p.dir = dir;
    for (int round = 0; round < CRASH_ROUNDS; round++) {
        struct store_info info;
        struct store *st;
        int status, rc, n = 0;
        pid_t pid;

        pid = fork();
        assert_true(pid >= 0);
        if (pid == 0)
            crash_child(dir, c);
        usleep((useconds_t)(rand() % (CRASH_KILL_MAX + 1)) * 1000);
        assert_int_equal(kill(pid, SIGKILL), 0);
        assert_int_equal(waitpid(pid, &status, 0), pid);
        if (WIFEXITED(status))
            fail_msg("round %d: child exited with %d", round, WEXITSTATUS(status));

        rc = store_open(&p, &st);
        if (rc == ERROR_NOT_FOUND) {
            assert_int_equal(last, 0);
            continue;
        }
        assert_int_equal(rc, 0);
        assert_int_equal(store_verify(st), 0);
        assert_int_equal(store_info(st, &info), 0);
        /* One of the primary's revisions, with its hash, whole. */
        assert_true(info.revision <= CRASH_REVS);
        assert_memory_equal(info.hash, c->hashes[info.revision], STORE_HASH_LEN);
        assert_int_equal(store_each(st, 0, STORE_UNSEAL, crash_check_record, &n), 0);
        assert_int_equal((size_t)n, info.ninstances);
        assert_same_state_at(f->primary, info.revision, st);
        moved += info.revision != last;
        snapped += info.revision < last; /* the head was passed: a snapshot */
        last = info.revision;
        store_close(st);
    }
    printf("repl crash test: %d rounds, %llu moved the replica, %llu through a snapshot\n",
           CRASH_ROUNDS, (unsigned long long)moved, (unsigned long long)snapped);
    assert_true(moved > CRASH_ROUNDS / 4);
    for (int r = 0; r < CRASH_REVS; r++)
        store_repl_free_delta(c->deltas[r]);
    store_repl_free_snapshot(c->snap);
    free(c);
    free(h);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_store_repl_delta_round_trip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_store_repl_delta_through_frame, setup, teardown),
        cmocka_unit_test_setup_teardown(test_store_repl_delta_several_saves, setup, teardown),
        cmocka_unit_test_setup_teardown(test_store_repl_delta_limits, setup, teardown),
        cmocka_unit_test_setup_teardown(test_store_repl_delta_compacted_then_snapshot, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_store_repl_snapshot_round_trip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_store_repl_snapshot_empty_store, setup, teardown),
        cmocka_unit_test_setup_teardown(test_store_repl_divergence_detected, setup, teardown),
        cmocka_unit_test_setup_teardown(test_store_repl_wrong_from_conflicts, setup, teardown),
        cmocka_unit_test_setup_teardown(test_store_repl_epochs, setup, teardown),
        cmocka_unit_test_setup_teardown(test_store_repl_malformed_delta_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_store_repl_malformed_snapshot_refused, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_store_repl_membership, setup, teardown),
        cmocka_unit_test_setup_teardown(test_store_repl_status_db, setup, teardown),
        cmocka_unit_test_setup_teardown(test_store_repl_status_put_many_round_trip, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_store_repl_status_put_many_all_or_nothing, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_store_repl_status_put_many_empty, setup, teardown),
        cmocka_unit_test_setup_teardown(test_store_repl_no_plaintext_on_disk, setup, teardown),
        cmocka_unit_test_setup_teardown(test_store_repl_apply_grows_map, setup, teardown),
        cmocka_unit_test_setup_teardown(test_store_repl_crash_mid_apply, setup, teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
