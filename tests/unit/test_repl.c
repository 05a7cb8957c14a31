/*
 * repl: the replication engine in one process. A primary and three replica
 * nodes (repl_node), each with its own store and its own certificate made
 * by tests/tools/make-pki.sh, on one loop over loopback mutual TLS: first
 * sync by snapshot, delta after save, push_on_commit and the schedule, a
 * replica stopped during saves catching up by delta and (after compaction)
 * by snapshot, divergence repaired, snapshot concurrency, promotion and the
 * fenced old primary, status fields and their persistence, sync and tests
 * through the admin hooks, and refusals: a certificate outside the
 * membership, pushes before a Hello, a member that is not the primary, a
 * lower epoch.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <uv.h>

#include "admin.h"
#include "conntest.h"
#include "error.h"
#include "log.h"
#include "mtls.h"
#include "peer.h"
#include "repl.h"
#include "settings.h"
#include "store.h"
#include "testutil.h"

#define NREPLICAS 3
#define SECRET    "Repl-T3st-Secret-pw"

static char *pki;
static const char *const replica_ids[NREPLICAS] = {"site-b", "site-c", "site-d"};

static int group_setup(void **state)
{
    (void)state;
    log_init("test_repl", getenv("SMTPSYNC_TEST_DEBUG") ? LOG_LEVEL_DEBUG : LOG_LEVEL_ERROR,
             LOG_FORMAT_TEXT);
    pki = testutil_make_pki("-a alice", "primary site-b site-c site-d intruder");
    return pki != NULL ? 0 : -1;
}

static int group_teardown(void **state)
{
    (void)state;
    testutil_rmtree(pki);
    free(pki);
    return 0;
}

static struct mtls_ctx *load_ctx(const char *name)
{
    return testutil_mtls_ctx(pki, name);
}

/* ---- the bench ---- */

struct node_h {
    struct bench *b;
    char id[32];
    char dir[4200];
    bool primary_daemon;
    struct store *st;
    struct mtls_ctx *ctx;
    struct repl_node *rn;
    struct repl_tuning tuning;
    struct peer_params listen_peer;
    int port;
    bool stopped;
    int settings_changed;
    uint64_t outbox_pending;
};

struct bench {
    uv_loop_t loop;
    uv_timer_t tick;
    char *dir;
    struct node_h p;
    struct node_h r[NREPLICAS];
};

static struct repl_tuning test_tuning(void)
{
    struct repl_tuning t;

    memset(&t, 0, sizeof(t));
    t.interval_ms = 60000;
    t.jitter_ms = 0;
    t.push_on_commit = true;
    t.history_keep = 1000;
    t.snapshot_concurrency = 4;
    t.retry_initial_ms = 40;
    t.status_flush_ms = 20;
    return t;
}

static void on_tick(uv_timer_t *t)
{
    (void)t;
}

static void cb_settings_changed(void *arg)
{
    ((struct node_h *)arg)->settings_changed++;
}

static void cb_outbox_depth(void *arg, uint64_t *pending, uint64_t *dead)
{
    *pending = ((struct node_h *)arg)->outbox_pending;
    *dead = 1;
}

/* A loopback port free now, so a node keeps its address across restarts
 * and the membership can name it before it listens. */
static int free_port(void)
{
    struct sockaddr_in sa;
    socklen_t len = sizeof(sa);
    int fd = socket(AF_INET, SOCK_STREAM, 0), port;

    assert_true(fd >= 0);
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
    port = ntohs(sa.sin_port);
    close(fd);
    return port;
}

static void node_init(struct bench *b, struct node_h *n, const char *id, bool primary_daemon)
{
    struct store_params sp = {.dir = n->dir, .create = true};

    n->b = b;
    snprintf(n->id, sizeof(n->id), "%s", id);
    snprintf(n->dir, sizeof(n->dir), "%s/%s", b->dir, id);
    n->primary_daemon = primary_daemon;
    n->tuning = test_tuning();
    assert_int_equal(store_open(&sp, &n->st), 0);
    n->ctx = load_ctx(id);
    n->port = free_port();
    n->stopped = true;
}

/* Starts (or restarts, on the same port) a node's replication. */
static void node_start(struct node_h *n)
{
    struct bench *b = n->b;
    struct repl_node_params p;
    struct repl_member_cfg members[NREPLICAS];
    const char *operators[] = {"alice"};
    char listen[64], addrs[NREPLICAS][64];

    memset(&p, 0, sizeof(p));
    snprintf(listen, sizeof(listen), "127.0.0.1:%d", n->port);
    p.loop = &b->loop;
    p.store = n->st;
    p.ctx = n->ctx;
    p.node_id = n->id;
    p.primary_daemon = n->primary_daemon;
    p.listen = listen;
    p.listen_peer = n->listen_peer;
    p.config.tuning = n->tuning;
    p.config.operators = operators;
    p.config.noperators = 1;
    if (n->primary_daemon) {
        for (int i = 0; i < NREPLICAS; i++) {
            snprintf(addrs[i], sizeof(addrs[i]), "127.0.0.1:%d", b->r[i].port);
            members[i].id = b->r[i].id;
            members[i].address = addrs[i];
        }
        p.config.replicas = members;
        p.config.nreplicas = NREPLICAS;
        p.config.address = listen;
    } else {
        p.config.primary = "primary";
    }
    p.settings_changed = cb_settings_changed;
    p.outbox_depth = cb_outbox_depth;
    p.arg = n;
    assert_int_equal(repl_node_start(&p, &n->rn), 0);
    assert_int_equal(repl_node_port(n->rn), n->port);
    n->stopped = false;
}

static void on_node_stopped(void *arg)
{
    struct node_h *n = arg;

    n->rn = NULL;
    n->stopped = true;
}

static bool run_until(struct bench *b, bool (*pred)(struct bench *b, void *arg), void *arg,
                      uint64_t ms)
{
    uint64_t deadline;

    uv_update_time(&b->loop);
    deadline = uv_now(&b->loop) + ms;
    uv_timer_start(&b->tick, on_tick, 2, 2);
    while (!pred(b, arg)) {
        uv_update_time(&b->loop);
        if (uv_now(&b->loop) > deadline) {
            uv_timer_stop(&b->tick);
            return false;
        }
        uv_run(&b->loop, UV_RUN_ONCE);
    }
    uv_timer_stop(&b->tick);
    return true;
}

static bool pred_stopped(struct bench *b, void *arg)
{
    (void)b;
    return ((struct node_h *)arg)->stopped;
}

static void node_stop(struct node_h *n)
{
    if (n->stopped)
        return;
    repl_node_stop(n->rn, on_node_stopped, n);
    assert_true(run_until(n->b, pred_stopped, n, 5000));
}

/* Runs the loop for `ms`, whatever happens. */
static bool pred_never(struct bench *b, void *arg)
{
    (void)b;
    (void)arg;
    return false;
}

static void run_for(struct bench *b, uint64_t ms)
{
    (void)run_until(b, pred_never, NULL, ms);
}

static void bench_init(struct bench *b)
{
    memset(b, 0, sizeof(*b));
    assert_int_equal(uv_loop_init(&b->loop), 0);
    assert_int_equal(uv_timer_init(&b->loop, &b->tick), 0);
    b->dir = testutil_tmpdir();
    node_init(b, &b->p, "primary", true);
    for (int i = 0; i < NREPLICAS; i++)
        node_init(b, &b->r[i], replica_ids[i], false);
}

/* Replicas first (their ports go into the primary's [replica] list). */
static void bench_start(struct bench *b)
{
    for (int i = 0; i < NREPLICAS; i++)
        node_start(&b->r[i]);
    node_start(&b->p);
}

static void walk_close(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

static void bench_free(struct bench *b)
{
    struct node_h *all[] = {&b->p, &b->r[0], &b->r[1], &b->r[2]};

    for (size_t i = 0; i < 4; i++)
        node_stop(all[i]);
    /* Tests still running finish; then the loop is empty. */
    uv_close((uv_handle_t *)&b->tick, NULL);
    uv_run(&b->loop, UV_RUN_DEFAULT);
    uv_walk(&b->loop, walk_close, NULL);
    uv_run(&b->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&b->loop), 0);
    for (size_t i = 0; i < 4; i++) {
        store_close(all[i]->st);
        mtls_ctx_unref(all[i]->ctx);
    }
    testutil_rmtree(b->dir);
    free(b->dir);
}

/* ---- store helpers ---- */

static uint64_t save_one(struct store *st, const char *instance, const char *host,
                         const char *password)
{
    struct store_commit c = {.actor = "alice", .comment = "test"};
    struct settings_problems problems;
    struct settings s;
    uint64_t rev = 0;

    memset(&problems, 0, sizeof(problems));
    settings_init(&s);
    snprintf(s.instance, sizeof(s.instance), "%s", instance);
    snprintf(s.hostname, sizeof(s.hostname), "%s", host);
    s.port = 587;
    snprintf(s.from_address, sizeof(s.from_address), "noreply@example.com");
    snprintf(s.test_address, sizeof(s.test_address), "ops@example.com");
    if (password != NULL) {
        s.logon_required = true;
        s.allow_plaintext_auth = true;
        snprintf(s.user_id, sizeof(s.user_id), "mailer");
        assert_int_equal(settings_set_password(&s, password), 0);
    }
    assert_int_equal(store_draft_put(st, &s), 0);
    settings_clear(&s);
    assert_int_equal(store_save(st, NULL, 0, &c, &problems, &rev), 0);
    return rev;
}

/* A save on the primary, announced as the admin API does. */
static uint64_t primary_save(struct bench *b, const char *instance, const char *host)
{
    uint64_t rev = save_one(b->p.st, instance, host, NULL);
    const struct admin_hooks *h = repl_node_hooks(b->p.rn);

    h->saved(h->arg, rev);
    return rev;
}

static struct store_info info_of(struct store *st)
{
    struct store_info info;

    assert_int_equal(store_info(st, &info), 0);
    return info;
}

static bool same_state(struct store *a, struct store *b)
{
    struct store_info x = info_of(a), y = info_of(b);

    return x.revision == y.revision && memcmp(x.hash, y.hash, STORE_HASH_LEN) == 0;
}

static bool pred_replica_synced(struct bench *b, void *arg)
{
    return same_state(b->p.st, ((struct node_h *)arg)->st);
}

static bool pred_all_synced(struct bench *b, void *arg)
{
    (void)arg;
    for (int i = 0; i < NREPLICAS; i++)
        if (!b->r[i].stopped && !same_state(b->p.st, b->r[i].st))
            return false;
    return true;
}

static Smtpsync__StatusReply *status_of(struct node_h *n)
{
    Smtpsync__StatusReply *r = NULL;

    assert_int_equal(repl_node_status(n->rn, &r), 0);
    assert_non_null(r);
    assert_non_null(r->node);
    return r;
}

static const Smtpsync__ReplicaStatus *replica_status(const Smtpsync__StatusReply *r, const char *id)
{
    for (size_t i = 0; i < r->n_replicas; i++)
        if (strcmp(r->replicas[i]->id, id) == 0)
            return r->replicas[i];
    fail_msg("no status for %s", id);
    return NULL;
}

struct want_state {
    const char *id;
    Smtpsync__ReplicaState state;
};

static bool pred_replica_state(struct bench *b, void *arg)
{
    struct want_state *w = arg;
    Smtpsync__StatusReply *r = NULL;
    bool ok;

    if (repl_node_status(b->p.rn, &r) != 0)
        return false;
    ok = replica_status(r, w->id)->state == w->state;
    smtpsync__status_reply__free_unpacked(r, NULL);
    return ok;
}

static int count_row(const struct store_revision *r, void *arg)
{
    (void)r;
    (*(size_t *)arg)++;
    return 0;
}

static size_t count_history(struct store *st)
{
    size_t n = 0;

    assert_int_equal(store_history(st, 0, count_row, &n), 0);
    return n;
}

/* ---- tests ---- */

static void test_repl_first_sync_by_snapshot(void **state)
{
    struct bench b;
    struct settings s;
    Smtpsync__Membership *m = NULL;

    (void)state;
    bench_init(&b);
    save_one(b.p.st, "primary", "mail.example.com", NULL);
    save_one(b.p.st, "site-b", "mail-b.example.com", SECRET);
    bench_start(&b);
    assert_true(repl_node_is_primary(b.p.rn));
    for (int i = 0; i < NREPLICAS; i++)
        assert_false(repl_node_is_primary(b.r[i].rn));
    assert_true(run_until(&b, pred_all_synced, NULL, 5000));
    for (int i = 0; i < NREPLICAS; i++) {
        struct store_info ri = info_of(b.r[i].st);
        /* A snapshot: the replica's base is the primary's revision, no rows. */
        assert_int_equal(ri.revision, 2);
        assert_int_equal(ri.base_revision, 2);
        assert_int_equal(count_history(b.r[i].st), 0);
        assert_true(b.r[i].settings_changed > 0);
        /* The membership came with it: the primary and three replicas. */
        assert_int_equal(store_repl_membership(b.r[i].st, &m), 0);
        assert_int_equal(m->n_members, 4);
        assert_string_equal(repl_membership_primary(m), "primary");
        smtpsync__membership__free_unpacked(m, NULL);
    }
    /* The password travelled (sealed anew under the replica's key). */
    settings_init(&s);
    assert_int_equal(store_get(b.r[2].st, "site-b", 0, STORE_UNSEAL, &s), 0);
    assert_non_null(s.password);
    assert_string_equal(s.password, SECRET);
    assert_string_equal(s.hostname, "mail-b.example.com");
    settings_clear(&s);
    bench_free(&b);
}

static void test_repl_delta_after_save_push_on_commit(void **state)
{
    struct bench b;
    uint64_t rev, t0, elapsed;

    (void)state;
    bench_init(&b);
    save_one(b.p.st, "primary", "mail.example.com", NULL);
    bench_start(&b);
    assert_true(run_until(&b, pred_all_synced, NULL, 5000));
    /* Each save reaches every replica at once, as a delta: the replicas'
     * history gets the primary's rows, revision for revision. */
    for (int k = 0; k < 3; k++) {
        char host[64];
        snprintf(host, sizeof(host), "mail%d.example.com", k);
        t0 = uv_hrtime();
        rev = primary_save(&b, "site-c", host);
        assert_true(run_until(&b, pred_all_synced, NULL, 3000));
        elapsed = (uv_hrtime() - t0) / 1000000;
        /* Milliseconds in practice; generous for sanitizers on 2 shared cores. */
        assert_true(elapsed < 1500);
        for (int i = 0; i < NREPLICAS; i++) {
            assert_int_equal(info_of(b.r[i].st).revision, rev);
            assert_int_equal(info_of(b.r[i].st).base_revision, 1);
            assert_int_equal(count_history(b.r[i].st), (size_t)k + 1);
        }
    }
    bench_free(&b);
}

static void test_repl_without_push_on_commit_waits_for_schedule(void **state)
{
    struct bench b;
    struct want_state behind = {"site-b", SMTPSYNC__REPLICA_STATE__REPLICA_STATE_BEHIND};
    struct want_state in_sync = {"site-b", SMTPSYNC__REPLICA_STATE__REPLICA_STATE_IN_SYNC};
    Smtpsync__StatusReply *r;
    int64_t before;

    (void)state;
    bench_init(&b);
    b.p.tuning.push_on_commit = false;
    b.p.tuning.interval_ms = 1500;
    save_one(b.p.st, "primary", "mail.example.com", NULL);
    bench_start(&b);
    assert_true(run_until(&b, pred_all_synced, NULL, 5000));
    /* The acknowledgement too, or the push under way would go on. */
    assert_true(run_until(&b, pred_replica_state, &in_sync, 3000));
    r = status_of(&b.p);
    before = replica_status(r, "site-b")->next_push_ms;
    smtpsync__status_reply__free_unpacked(r, NULL);
    primary_save(&b, "site-b", "mail-b.example.com");
    /* Not pushed at once: behind until the scheduled push. */
    run_for(&b, 300);
    assert_false(same_state(b.p.st, b.r[0].st));
    assert_true(run_until(&b, pred_replica_state, &behind, 100));
    r = status_of(&b.p);
    assert_int_equal(replica_status(r, "site-b")->lag_revisions, 1);
    assert_true(replica_status(r, "site-b")->lag_seconds >= 0);
    assert_int_equal(replica_status(r, "site-b")->next_push_ms, before);
    smtpsync__status_reply__free_unpacked(r, NULL);
    assert_true(run_until(&b, pred_all_synced, NULL, 4000));
    bench_free(&b);
}

static void test_repl_stopped_replica_catches_up_by_delta(void **state)
{
    struct bench b;
    struct want_state unreachable = {"site-b", SMTPSYNC__REPLICA_STATE__REPLICA_STATE_UNREACHABLE};
    Smtpsync__StatusReply *r;
    const Smtpsync__ReplicaStatus *rs;
    uint64_t base;

    (void)state;
    bench_init(&b);
    save_one(b.p.st, "primary", "mail.example.com", NULL);
    bench_start(&b);
    assert_true(run_until(&b, pred_all_synced, NULL, 5000));
    base = info_of(b.r[0].st).base_revision;
    node_stop(&b.r[0]);
    for (int k = 0; k < 4; k++) {
        char host[64];
        snprintf(host, sizeof(host), "m%d.example.com", k);
        primary_save(&b, "site-b", host);
    }
    assert_true(run_until(&b, pred_all_synced, NULL, 3000));
    assert_true(run_until(&b, pred_replica_state, &unreachable, 3000));
    r = status_of(&b.p);
    rs = replica_status(r, "site-b");
    assert_int_equal(rs->lag_revisions, 4);
    assert_int_equal(rs->applied_revision, 1);
    assert_int_equal(rs->primary_revision, 5);
    assert_true(rs->last_error[0] != '\0');
    assert_true(rs->consecutive_failures >= 1);
    assert_true(rs->lag_seconds >= 0);
    smtpsync__status_reply__free_unpacked(r, NULL);
    /* Back on its port: the pusher reconnects and sends what it lacks. */
    node_start(&b.r[0]);
    assert_true(run_until(&b, pred_replica_synced, &b.r[0], 5000));
    assert_int_equal(info_of(b.r[0].st).base_revision, base);
    assert_int_equal(count_history(b.r[0].st), 4);
    bench_free(&b);
}

static void test_repl_catches_up_by_snapshot_after_compaction(void **state)
{
    struct bench b;

    (void)state;
    bench_init(&b);
    b.p.tuning.history_keep = 2;
    save_one(b.p.st, "primary", "mail.example.com", NULL);
    bench_start(&b);
    assert_true(run_until(&b, pred_all_synced, NULL, 5000));
    node_stop(&b.r[1]);
    for (int k = 0; k < 5; k++) {
        char host[64];
        snprintf(host, sizeof(host), "c%d.example.com", k);
        primary_save(&b, "site-c", host);
    }
    /* The primary kept only 2 revisions: revision 2 is gone. */
    assert_int_equal(info_of(b.p.st).base_revision, 4);
    assert_true(run_until(&b, pred_all_synced, NULL, 3000));
    node_start(&b.r[1]);
    assert_true(run_until(&b, pred_replica_synced, &b.r[1], 5000));
    /* By snapshot: its base is the primary's head. */
    assert_int_equal(info_of(b.r[1].st).base_revision, 6);
    /* The others, pushed by delta each time, compacted their own history. */
    assert_true(count_history(b.r[0].st) <= 2);
    bench_free(&b);
}

static void test_repl_divergence_repaired_by_snapshot(void **state)
{
    struct bench b;
    struct want_state in_sync = {"site-d", SMTPSYNC__REPLICA_STATE__REPLICA_STATE_IN_SYNC};
    Smtpsync__StatusReply *r;

    (void)state;
    bench_init(&b);
    save_one(b.p.st, "primary", "mail.example.com", NULL);
    bench_start(&b);
    assert_true(run_until(&b, pred_all_synced, NULL, 5000));
    /* Someone saves on the replica's store behind the cluster's back. */
    node_stop(&b.r[2]);
    save_one(b.r[2].st, "site-d", "rogue.example.com", NULL);
    /* The primary moves on by two: the replica's revision 2 is not the
     * primary's revision 2, so the delta 2..3 does not chain: Diverged. */
    primary_save(&b, "site-d", "good.example.com");
    primary_save(&b, "site-d", "better.example.com");
    node_start(&b.r[2]);
    assert_true(run_until(&b, pred_replica_synced, &b.r[2], 5000));
    assert_true(run_until(&b, pred_replica_state, &in_sync, 3000));
    /* Repaired by a snapshot: the replica's base is the primary's head, and
     * the error is gone from the status once in sync. */
    assert_int_equal(info_of(b.r[2].st).base_revision, info_of(b.p.st).revision);
    r = status_of(&b.p);
    assert_string_equal(replica_status(r, "site-d")->last_error, "");
    smtpsync__status_reply__free_unpacked(r, NULL);
    struct settings s;
    settings_init(&s);
    assert_int_equal(store_get(b.r[2].st, "site-d", 0, 0, &s), 0);
    assert_string_equal(s.hostname, "better.example.com");
    settings_clear(&s);

    /* Same revision, another hash: repaired too. */
    node_stop(&b.r[2]);
    save_one(b.r[2].st, "site-d", "rogue2.example.com", NULL);
    primary_save(&b, "site-d", "best.example.com");
    assert_int_equal(info_of(b.r[2].st).revision, info_of(b.p.st).revision);
    node_start(&b.r[2]);
    assert_true(run_until(&b, pred_replica_synced, &b.r[2], 5000));
    bench_free(&b);
}

static void test_repl_snapshot_concurrency_queue_drains(void **state)
{
    struct bench b;
    char path[4300], *log;
    int saved_fd, fd;
    size_t queued = 0, sent = 0, in_flight = 0;

    (void)state;
    bench_init(&b);
    b.p.tuning.snapshot_concurrency = 1;
    save_one(b.p.st, "primary", "mail.example.com", NULL);
    save_one(b.p.st, "site-b", "mail-b.example.com", SECRET);
    /* The log says when a snapshot waits for a slot. */
    snprintf(path, sizeof(path), "%s/log", b.dir);
    fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_true(fd >= 0);
    fflush(stderr);
    saved_fd = dup(2);
    dup2(fd, 2);
    close(fd);
    log_init("test_repl", LOG_LEVEL_INFO, LOG_FORMAT_TEXT);
    bench_start(&b);
    /* Three replicas need a snapshot, one at a time. */
    assert_true(run_until(&b, pred_all_synced, NULL, 8000));
    fflush(stderr);
    dup2(saved_fd, 2);
    close(saved_fd);
    log_init("test_repl", getenv("SMTPSYNC_TEST_DEBUG") ? LOG_LEVEL_DEBUG : LOG_LEVEL_ERROR,
             LOG_FORMAT_TEXT);
    log = testutil_read_file(path, NULL);
    /* Never two snapshots between a send and its replica's acknowledgement. */
    for (char *line = strtok(log, "\n"); line != NULL; line = strtok(NULL, "\n")) {
        if (strstr(line, ": snapshot of revision ") != NULL)
            in_flight++;
        else if (strstr(line, ": snapshot acknowledged at revision ") != NULL)
            in_flight--;
        else if (strstr(line, ": snapshot queued (1 in flight)") != NULL)
            queued++;
        assert_true(in_flight <= 1);
        sent += strstr(line, ": snapshot of revision ") != NULL;
    }
    assert_int_equal(sent, 3);
    assert_true(queued >= 1);
    free(log);
    bench_free(&b);
}

/* ---- status ---- */

static void test_repl_status_fields_and_persistence(void **state)
{
    struct bench b;
    Smtpsync__StatusReply *r;
    const Smtpsync__ReplicaStatus *rs;
    struct want_state in_sync = {"site-c", SMTPSYNC__REPLICA_STATE__REPLICA_STATE_IN_SYNC};
    int64_t now = (int64_t)time(NULL) * 1000, success;
    char addr[64];

    (void)state;
    bench_init(&b);
    b.r[1].outbox_pending = 7;
    save_one(b.p.st, "primary", "mail.example.com", NULL);
    bench_start(&b);
    assert_true(run_until(&b, pred_all_synced, NULL, 5000));
    assert_true(run_until(&b, pred_replica_state, &in_sync, 3000));
    r = status_of(&b.p);
    assert_string_equal(r->node->node, "primary");
    assert_int_equal(r->node->role, SMTPSYNC__ROLE__ROLE_PRIMARY);
    assert_int_equal(r->node->revision, 1);
    assert_int_equal(r->node->hash.len, STORE_HASH_LEN);
    assert_string_equal(r->node->primary, "primary");
    assert_int_equal(r->node->dead_count, 1);
    assert_true(r->node->cert_expiry_ms > now);
    assert_int_equal(r->n_replicas, NREPLICAS);
    rs = replica_status(r, "site-c");
    assert_int_equal(rs->state, SMTPSYNC__REPLICA_STATE__REPLICA_STATE_IN_SYNC);
    assert_int_equal(rs->applied_revision, 1);
    assert_int_equal(rs->primary_revision, 1);
    assert_int_equal(rs->lag_revisions, 0);
    assert_int_equal(rs->lag_seconds, 0);
    assert_true(rs->last_contact_ms >= now - 5000);
    assert_true(rs->last_success_ms >= now - 5000);
    /* jitter 0: exactly one interval after the success. */
    assert_int_equal(rs->next_push_ms, rs->last_success_ms + 60000);
    /* make-pki's node certificates are valid 825 days. */
    assert_true(rs->cert_expiry_ms > now + 800LL * 86400 * 1000);
    assert_int_equal(rs->outbox_depth, 7);
    snprintf(addr, sizeof(addr), "127.0.0.1:%d", b.r[1].port);
    assert_string_equal(rs->address, addr);
    assert_string_equal(rs->last_error, "");
    assert_int_equal(rs->consecutive_failures, 0);
    success = rs->last_success_ms;
    smtpsync__status_reply__free_unpacked(r, NULL);

    /* A replica's own view. */
    r = status_of(&b.r[1]);
    assert_string_equal(r->node->node, "site-c");
    assert_int_equal(r->node->role, SMTPSYNC__ROLE__ROLE_REPLICA);
    assert_int_equal(r->node->outbox_depth, 7);
    assert_string_equal(r->node->primary, "primary");
    assert_int_equal(r->node->primary_revision, 1);
    assert_true(r->node->last_push_ms >= now - 5000);
    assert_int_equal(r->n_replicas, 0);
    smtpsync__status_reply__free_unpacked(r, NULL);

    /* The view survives the primary's restart, the replicas gone. */
    for (int i = 0; i < NREPLICAS; i++)
        node_stop(&b.r[i]);
    node_stop(&b.p);
    node_start(&b.p);
    r = status_of(&b.p);
    rs = replica_status(r, "site-c");
    assert_int_equal(rs->last_success_ms, success);
    assert_int_equal(rs->applied_revision, 1);
    assert_int_equal(rs->outbox_depth, 7);
    smtpsync__status_reply__free_unpacked(r, NULL);
    bench_free(&b);
}

static void test_repl_keepalive_holds_quiet_connections(void **state)
{
    struct bench b;
    Smtpsync__StatusReply *r;
    const Smtpsync__ReplicaStatus *rs;
    struct want_state in_sync = {"site-b", SMTPSYNC__REPLICA_STATE__REPLICA_STATE_IN_SYNC};
    int64_t success, contact;

    (void)state;
    bench_init(&b);
    /* Replicas close a connection quiet for 300 ms; the primary speaks
     * every 100 ms. */
    b.p.tuning.keepalive_ms = 100;
    for (int i = 0; i < NREPLICAS; i++)
        b.r[i].listen_peer.idle_timeout_ms = 300;
    save_one(b.p.st, "primary", "mail.example.com", NULL);
    bench_start(&b);
    assert_true(run_until(&b, pred_all_synced, NULL, 5000));
    assert_true(run_until(&b, pred_replica_state, &in_sync, 3000));
    r = status_of(&b.p);
    success = replica_status(r, "site-b")->last_success_ms;
    contact = replica_status(r, "site-b")->last_contact_ms;
    smtpsync__status_reply__free_unpacked(r, NULL);
    run_for(&b, 1500);
    r = status_of(&b.p);
    rs = replica_status(r, "site-b");
    /* Still the same connection: no new Hello cycle, no failure, and the
     * replica answered the keepalives. */
    assert_int_equal(rs->state, SMTPSYNC__REPLICA_STATE__REPLICA_STATE_IN_SYNC);
    assert_int_equal(rs->last_success_ms, success);
    assert_int_equal(rs->consecutive_failures, 0);
    assert_string_equal(rs->last_error, "");
    assert_true(rs->last_contact_ms >= contact + 1000);
    smtpsync__status_reply__free_unpacked(r, NULL);
    bench_free(&b);
}

/* ---- admin hooks: sync, tests, promotion ---- */

struct done_rec {
    int calls;
    int err;
    char message[512];
    Smtpsync__TestResult *result;
};

static void on_sync_done(void *arg, int err, const char *message)
{
    struct done_rec *d = arg;

    d->calls++;
    d->err = err;
    snprintf(d->message, sizeof(d->message), "%s", message ? message : "");
}

static void on_test_done(void *arg, int err, const char *message, Smtpsync__TestResult *result)
{
    struct done_rec *d = arg;

    d->calls++;
    d->err = err;
    snprintf(d->message, sizeof(d->message), "%s", message ? message : "");
    d->result = result;
}

static bool pred_done(struct bench *b, void *arg)
{
    (void)b;
    return ((struct done_rec *)arg)->calls > 0;
}

static void test_repl_sync_hook(void **state)
{
    struct bench b;
    struct done_rec d;
    const struct admin_hooks *h;
    char why[256];

    (void)state;
    bench_init(&b);
    save_one(b.p.st, "primary", "mail.example.com", NULL);
    bench_start(&b);
    h = repl_node_hooks(b.p.rn);
    memset(&d, 0, sizeof(d));
    assert_int_equal(h->sync(h->arg, NULL, on_sync_done, &d, why, sizeof(why)), 0);
    assert_true(run_until(&b, pred_done, &d, 5000));
    assert_int_equal(d.err, 0);
    assert_true(pred_all_synced(&b, NULL));
    /* A save without telling the pusher; sync pushes it. */
    save_one(b.p.st, "site-b", "x.example.com", NULL);
    memset(&d, 0, sizeof(d));
    assert_int_equal(h->sync(h->arg, "site-b", on_sync_done, &d, why, sizeof(why)), 0);
    assert_true(run_until(&b, pred_done, &d, 5000));
    assert_int_equal(d.err, 0);
    assert_true(same_state(b.p.st, b.r[0].st));
    assert_false(same_state(b.p.st, b.r[1].st));
    assert_int_equal(h->sync(h->arg, "site-x", on_sync_done, &d, why, sizeof(why)),
                     ERROR_NOT_FOUND);
    /* A stopped replica: the sync ends in an error naming it. */
    node_stop(&b.r[2]);
    memset(&d, 0, sizeof(d));
    assert_int_equal(h->sync(h->arg, NULL, on_sync_done, &d, why, sizeof(why)), 0);
    assert_true(run_until(&b, pred_done, &d, 5000));
    assert_true(d.err < 0);
    assert_non_null(strstr(d.message, "site-d"));
    /* Only the primary syncs. */
    h = repl_node_hooks(b.r[0].rn);
    assert_int_equal(h->sync(h->arg, NULL, on_sync_done, &d, why, sizeof(why)), ERROR_NOT_PRIMARY);
    assert_false(h->is_primary(h->arg));
    bench_free(&b);
}

static void test_repl_run_test_on_a_replica(void **state)
{
    struct bench b;
    struct done_rec d;
    const struct admin_hooks *h;
    struct settings s;
    char why[256];

    (void)state;
    bench_init(&b);
    save_one(b.p.st, "primary", "mail.example.com", NULL);
    bench_start(&b);
    assert_true(run_until(&b, pred_all_synced, NULL, 5000));
    settings_init(&s);
    snprintf(s.instance, sizeof(s.instance), "site-c");
    snprintf(s.hostname, sizeof(s.hostname), "127.0.0.1");
    s.port = 1; /* nothing listens: the test fails at connect */
    snprintf(s.from_address, sizeof(s.from_address), "noreply@example.com");
    snprintf(s.test_address, sizeof(s.test_address), "ops@example.com");
    s.logon_required = true;
    s.allow_plaintext_auth = true;
    snprintf(s.user_id, sizeof(s.user_id), "mailer");
    assert_int_equal(settings_set_password(&s, SECRET), 0);
    h = repl_node_hooks(b.p.rn);
    memset(&d, 0, sizeof(d));
    assert_int_equal((h->run_test)(h->arg, "site-c", &s, NULL, "draft on revision 1", on_test_done,
                                   &d, why, sizeof(why)),
                     0);
    assert_true(run_until(&b, pred_done, &d, 8000));
    assert_int_equal(d.err, 0);
    assert_non_null(d.result);
    assert_string_equal(d.result->node, "site-c");
    assert_false(d.result->ok);
    assert_true(d.result->n_steps > 0);
    conntest_result_free(d.result);
    /* On the primary itself. */
    memset(&d, 0, sizeof(d));
    snprintf(s.instance, sizeof(s.instance), "primary");
    assert_int_equal(
        (h->run_test)(h->arg, "primary", &s, NULL, NULL, on_test_done, &d, why, sizeof(why)), 0);
    assert_true(run_until(&b, pred_done, &d, 8000));
    assert_string_equal(d.result->node, "primary");
    conntest_result_free(d.result);
    /* An unknown node, and a replica that is down. */
    assert_int_equal(
        (h->run_test)(h->arg, "site-x", &s, NULL, NULL, on_test_done, &d, why, sizeof(why)),
        ERROR_NOT_FOUND);
    node_stop(&b.r[2]);
    run_for(&b, 50);
    assert_int_equal(
        (h->run_test)(h->arg, "site-d", &s, NULL, NULL, on_test_done, &d, why, sizeof(why)),
        -ENOTCONN);
    settings_clear(&s);
    bench_free(&b);
}

static bool pred_not_primary(struct bench *b, void *arg)
{
    (void)b;
    return !repl_node_is_primary(((struct node_h *)arg)->rn);
}

static bool pred_epoch2_everywhere(struct bench *b, void *arg)
{
    (void)arg;
    for (int i = 0; i < NREPLICAS; i++)
        if (info_of(b->r[i].st).epoch < 2)
            return false;
    return true;
}

static bool pred_fenced(struct bench *b, void *arg)
{
    Smtpsync__StatusReply *r = NULL;
    bool fenced;

    (void)arg;
    if (repl_node_status(b->p.rn, &r) != 0)
        return false;
    fenced = r->node->fenced_epoch == 2;
    smtpsync__status_reply__free_unpacked(r, NULL);
    return fenced;
}

static bool pred_old_primary_synced(struct bench *b, void *arg)
{
    (void)arg;
    return same_state(b->r[0].st, b->p.st);
}

static bool pred_follow_new_primary(struct bench *b, void *arg)
{
    (void)arg;
    return same_state(b->r[0].st, b->r[1].st) && same_state(b->r[0].st, b->r[2].st);
}

static void test_repl_promotion_and_fenced_old_primary(void **state)
{
    struct bench b;
    const struct admin_hooks *h;
    Smtpsync__StatusReply *r;
    Smtpsync__Membership *m = NULL;
    struct done_rec d;
    uint64_t epoch = 0, rev;
    char why[512];

    (void)state;
    bench_init(&b);
    /* The new primary retries slowly: the old one meets the replicas first. */
    b.r[0].tuning.retry_initial_ms = 20000;
    b.r[0].tuning.interval_ms = 60000;
    save_one(b.p.st, "primary", "mail.example.com", NULL);
    bench_start(&b);
    assert_true(run_until(&b, pred_all_synced, NULL, 5000));
    /* The primary is lost. */
    node_stop(&b.p);
    h = repl_node_hooks(b.r[0].rn);
    assert_int_equal(h->promote(h->arg, false, &epoch, why, sizeof(why)), 0);
    assert_int_equal(epoch, 2);
    assert_true(repl_node_is_primary(b.r[0].rn));
    assert_int_equal(h->promote(h->arg, false, &epoch, why, sizeof(why)), ERROR_INVALID);
    assert_int_equal(store_repl_membership(b.r[0].st, &m), 0);
    assert_string_equal(repl_membership_primary(m), "site-b");
    assert_int_equal(repl_member_find(m, "primary")->role, SMTPSYNC__ROLE__ROLE_REPLICA);
    smtpsync__membership__free_unpacked(m, NULL);
    /* The other replicas follow the higher epoch. */
    assert_true(run_until(&b, pred_epoch2_everywhere, NULL, 5000));
    rev = save_one(b.r[0].st, "site-c", "after-promotion.example.com", NULL);
    h->saved(h->arg, rev);
    assert_true(run_until(&b, pred_follow_new_primary, NULL, 5000));
    for (int i = 1; i < NREPLICAS; i++)
        assert_int_equal(info_of(b.r[i].st).epoch, 2);
    /* The old primary returns: its pushes are refused, it learns it was
     * fenced and stops. */
    node_start(&b.p);
    assert_true(run_until(&b, pred_fenced, NULL, 5000));
    assert_true(run_until(&b, pred_not_primary, &b.p, 1000));
    r = status_of(&b.p);
    for (size_t i = 0; i < r->n_replicas; i++)
        assert_int_equal(r->replicas[i]->state, SMTPSYNC__REPLICA_STATE__REPLICA_STATE_FENCED);
    smtpsync__status_reply__free_unpacked(r, NULL);
    h = repl_node_hooks(b.p.rn);
    assert_int_equal(h->sync(h->arg, NULL, on_sync_done, &d, why, sizeof(why)), ERROR_NOT_PRIMARY);
    /* The new primary brings it back as a replica. */
    h = repl_node_hooks(b.r[0].rn);
    memset(&d, 0, sizeof(d));
    assert_int_equal(h->sync(h->arg, "primary", on_sync_done, &d, why, sizeof(why)), 0);
    assert_true(run_until(&b, pred_done, &d, 5000));
    assert_int_equal(d.err, 0);
    assert_true(run_until(&b, pred_old_primary_synced, NULL, 3000));
    assert_int_equal(info_of(b.p.st).epoch, 2);
    assert_false(repl_node_is_primary(b.p.rn));
    /* A replica of site-b now, and its status still says it was fenced. */
    r = status_of(&b.p);
    assert_int_equal(r->node->fenced_epoch, 2);
    assert_string_equal(r->node->primary, "site-b");
    smtpsync__status_reply__free_unpacked(r, NULL);
    bench_free(&b);
}

/* ---- a hand-driven peer: refusals and hostile frames ---- */

struct raw_peer {
    struct bench *b;
    struct peer *p;
    bool opened, closed;
    int err;
    char reason[PEER_REASON_MAX];
    int frames;
    Smtpsync__Frame__BodyCase last_body;
    uint64_t last_id;
    int last_error_code;
    uint64_t fenced_epoch;
    void (*on_open)(struct raw_peer *rp);
};

static void raw_open(void *arg, struct peer *p, const char *id)
{
    struct raw_peer *rp = arg;

    (void)p;
    (void)id;
    rp->opened = true;
    if (rp->on_open != NULL)
        rp->on_open(rp);
}

static void raw_frame(void *arg, struct peer *p, const Smtpsync__Frame *f)
{
    struct raw_peer *rp = arg;

    (void)p;
    rp->frames++;
    rp->last_body = f->body_case;
    rp->last_id = f->id;
    if (f->body_case == SMTPSYNC__FRAME__BODY_ERROR)
        rp->last_error_code = f->error->code;
    if (f->body_case == SMTPSYNC__FRAME__BODY_FENCED)
        rp->fenced_epoch = f->fenced->epoch;
}

static void raw_close(void *arg, struct peer *p, int err, const char *reason)
{
    struct raw_peer *rp = arg;

    (void)p;
    rp->closed = true;
    rp->p = NULL;
    rp->err = err;
    snprintf(rp->reason, sizeof(rp->reason), "%s", reason);
}

static const struct peer_callbacks raw_cb = {
    .on_open = raw_open,
    .on_frame = raw_frame,
    .on_close = raw_close,
};

static void raw_connect(struct bench *b, struct raw_peer *rp, const char *as, struct node_h *to)
{
    struct mtls_ctx *ctx = load_ctx(as);
    char addr[64];

    rp->b = b;
    snprintf(addr, sizeof(addr), "127.0.0.1:%d", to->port);
    assert_int_equal(peer_connect(&b->loop, addr, ctx, to->id, NULL, &raw_cb, rp, &rp->p), 0);
    mtls_ctx_unref(ctx);
}

static bool pred_raw_closed(struct bench *b, void *arg)
{
    (void)b;
    return ((struct raw_peer *)arg)->closed;
}

static bool pred_raw_opened(struct bench *b, void *arg)
{
    (void)b;
    return ((struct raw_peer *)arg)->opened || ((struct raw_peer *)arg)->closed;
}

static bool pred_raw_frames(struct bench *b, void *arg)
{
    (void)b;
    return ((struct raw_peer *)arg)->frames > 0 || ((struct raw_peer *)arg)->closed;
}

static void send_hello(struct raw_peer *rp, uint64_t id, uint64_t epoch, uint64_t revision)
{
    Smtpsync__Frame f;
    Smtpsync__Hello h;

    smtpsync__hello__init(&h);
    h.node = "test";
    h.epoch = epoch;
    h.revision = revision;
    smtpsync__frame__init(&f);
    f.id = id;
    f.body_case = SMTPSYNC__FRAME__BODY_HELLO;
    f.hello = &h;
    assert_int_equal(peer_send(rp->p, &f), 0);
}

static void send_empty_delta(struct raw_peer *rp, uint64_t id)
{
    Smtpsync__Frame f;
    Smtpsync__Delta d;

    smtpsync__delta__init(&d);
    smtpsync__frame__init(&f);
    f.id = id;
    f.body_case = SMTPSYNC__FRAME__BODY_DELTA;
    f.delta = &d;
    assert_int_equal(peer_send(rp->p, &f), 0);
}

static void test_repl_refusals(void **state)
{
    struct bench b;
    struct raw_peer rp;
    uint64_t epoch;
    char why[512];
    const struct admin_hooks *h;

    (void)state;
    bench_init(&b);
    save_one(b.p.st, "primary", "mail.example.com", NULL);
    bench_start(&b);
    assert_true(run_until(&b, pred_all_synced, NULL, 5000));

    /* A certificate of the deployment CA that is no member: refused at the
     * handshake. */
    memset(&rp, 0, sizeof(rp));
    raw_connect(&b, &rp, "intruder", &b.r[0]);
    assert_true(run_until(&b, pred_raw_closed, &rp, 5000));
    assert_int_equal(rp.err, ERROR_TLS);
    assert_int_equal(rp.frames, 0);

    /* A member that is not the primary, at the same epoch: refused. */
    memset(&rp, 0, sizeof(rp));
    raw_connect(&b, &rp, "site-c", &b.r[0]);
    assert_true(run_until(&b, pred_raw_opened, &rp, 5000));
    assert_true(rp.opened);
    send_hello(&rp, 7, info_of(b.r[0].st).epoch, 1);
    assert_true(run_until(&b, pred_raw_closed, &rp, 5000));
    assert_int_equal(rp.last_body, SMTPSYNC__FRAME__BODY_ERROR);
    assert_int_equal(rp.last_id, 7);
    assert_int_equal(rp.last_error_code, ERROR_FORBIDDEN);

    /* The primary's certificate, but a push before any Hello: refused. */
    memset(&rp, 0, sizeof(rp));
    raw_connect(&b, &rp, "primary", &b.r[1]);
    assert_true(run_until(&b, pred_raw_opened, &rp, 5000));
    send_empty_delta(&rp, 9);
    assert_true(run_until(&b, pred_raw_closed, &rp, 5000));
    assert_int_equal(rp.last_error_code, ERROR_FORBIDDEN);
    assert_true(same_state(b.p.st, b.r[1].st));

    /* A lower epoch: Fenced, with ours. */
    h = repl_node_hooks(b.r[2].rn);
    node_stop(&b.p);
    assert_int_equal(h->promote(h->arg, false, &epoch, why, sizeof(why)), 0);
    memset(&rp, 0, sizeof(rp));
    raw_connect(&b, &rp, "primary", &b.r[2]);
    assert_true(run_until(&b, pred_raw_opened, &rp, 5000));
    send_hello(&rp, 11, 1, 1);
    assert_true(run_until(&b, pred_raw_closed, &rp, 5000));
    assert_int_equal(rp.last_body, SMTPSYNC__FRAME__BODY_FENCED);
    assert_int_equal(rp.fenced_epoch, epoch);

    /* An admin certificate: its frames go to the admin API, and it is
     * answered with the request's id. */
    memset(&rp, 0, sizeof(rp));
    raw_connect(&b, &rp, "alice", &b.r[1]);
    assert_true(run_until(&b, pred_raw_opened, &rp, 5000));
    assert_true(rp.opened);
    {
        Smtpsync__Frame f;
        Smtpsync__StatusQuery q;
        smtpsync__status_query__init(&q);
        smtpsync__frame__init(&f);
        f.id = 42;
        f.body_case = SMTPSYNC__FRAME__BODY_STATUS_QUERY;
        f.status_query = &q;
        assert_int_equal(peer_send(rp.p, &f), 0);
    }
    assert_true(run_until(&b, pred_raw_frames, &rp, 5000));
    assert_int_equal(rp.last_body, SMTPSYNC__FRAME__BODY_ADMIN_REPLY);
    assert_int_equal(rp.last_id, 42);
    peer_close(rp.p, 0, "done");
    assert_true(run_until(&b, pred_raw_closed, &rp, 5000));
    bench_free(&b);
}

/* A Hello from a hand-driven member: NODE in its node field and, when
 * NAMED is not NULL, a membership naming NAMED the primary (and the other
 * members replicas). */
static void send_hello_named(struct raw_peer *rp, uint64_t id, uint64_t epoch, const char *node,
                             const char *named)
{
    static const char *const ids[] = {"primary", "site-b", "site-c", "site-d"};
    Smtpsync__Member members[4], *mp[4];
    Smtpsync__Membership m;
    Smtpsync__Frame f;
    Smtpsync__Hello h;

    smtpsync__membership__init(&m);
    for (size_t i = 0; i < 4; i++) {
        smtpsync__member__init(&members[i]);
        members[i].node = (char *)(uintptr_t)ids[i];
        members[i].address = "127.0.0.1:1";
        members[i].role = named != NULL && strcmp(named, ids[i]) == 0
                              ? SMTPSYNC__ROLE__ROLE_PRIMARY
                              : SMTPSYNC__ROLE__ROLE_REPLICA;
        mp[i] = &members[i];
    }
    m.n_members = 4;
    m.members = mp;
    smtpsync__hello__init(&h);
    h.node = (char *)(uintptr_t)node;
    h.epoch = epoch;
    h.revision = 1;
    h.membership = named != NULL ? &m : NULL;
    smtpsync__frame__init(&f);
    f.id = id;
    f.body_case = SMTPSYNC__FRAME__BODY_HELLO;
    f.hello = &h;
    assert_int_equal(peer_send(rp->p, &f), 0);
}

/* One Hello from AS to TO: the body of the last frame answered. */
static Smtpsync__Frame__BodyCase hello_answer(struct bench *b, const char *as, struct node_h *to,
                                              uint64_t epoch, const char *node, const char *named,
                                              int *code)
{
    struct raw_peer rp;

    memset(&rp, 0, sizeof(rp));
    raw_connect(b, &rp, as, to);
    assert_true(run_until(b, pred_raw_opened, &rp, 5000));
    assert_true(rp.opened);
    send_hello_named(&rp, 21, epoch, node, named);
    assert_true(run_until(b, pred_raw_frames, &rp, 5000));
    if (!rp.closed)
        peer_close(rp.p, 0, "done");
    assert_true(run_until(b, pred_raw_closed, &rp, 5000));
    *code = rp.last_error_code;
    return rp.last_body;
}

/* A member's higher epoch is adopted only from a promoted node: a Hello
 * whose membership names the sender (its certificate, with which the Hello's
 * node agrees) the primary. Anything else would fence the real primary. */
static void test_repl_higher_epoch_only_from_a_named_primary(void **state)
{
    static const struct {
        const char *node, *named;
    } bad[] = {
        {"site-c", NULL},                       /* no membership at all */
        {"site-c", "primary"},                  /* the membership names another primary */
        {"site-c", "site-b"},                   /* ... or the receiver */
        {"site-d", "site-d"},                   /* the node field is not the certificate's id */
        {"primary", "primary"}, {"", "site-c"}, /* names the sender, but the node field is empty */
    };
    struct bench b;
    int code;

    (void)state;
    bench_init(&b);
    save_one(b.p.st, "primary", "mail.example.com", NULL);
    bench_start(&b);
    assert_true(run_until(&b, pred_all_synced, NULL, 5000));

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_int_equal(hello_answer(&b, "site-c", &b.r[0], 5, bad[i].node, bad[i].named, &code),
                         SMTPSYNC__FRAME__BODY_ERROR);
        assert_int_equal(code, ERROR_FORBIDDEN);
        assert_int_equal(info_of(b.r[0].st).epoch, 1);
    }
    /* Nothing changed: the primary still pushes to site-b. */
    primary_save(&b, "second", "mail2.example.com");
    assert_true(run_until(&b, pred_all_synced, NULL, 5000));
    assert_true(repl_node_is_primary(b.p.rn));
    assert_int_equal(info_of(b.p.st).epoch, 1);

    /* The largest epoch, even from a named primary: refused (promoting
     * this node later would overflow). */
    assert_int_equal(hello_answer(&b, "site-c", &b.r[0], UINT64_MAX, "site-c", "site-c", &code),
                     SMTPSYNC__FRAME__BODY_ERROR);
    assert_int_equal(code, ERROR_INVALID);
    assert_int_equal(info_of(b.r[0].st).epoch, 1);

    /* A promoted node (its membership names it): adopted. */
    assert_int_equal(hello_answer(&b, "site-c", &b.r[0], 5, "site-c", "site-c", &code),
                     SMTPSYNC__FRAME__BODY_STATE);
    assert_int_equal(info_of(b.r[0].st).epoch, 5);
    bench_free(&b);
}

/* A primary never takes pushes at its own epoch, not even from its own id. */
static void test_repl_primary_refuses_a_hello_from_its_own_id(void **state)
{
    struct bench b;
    int code;

    (void)state;
    bench_init(&b);
    save_one(b.p.st, "primary", "mail.example.com", NULL);
    bench_start(&b);
    assert_true(run_until(&b, pred_all_synced, NULL, 5000));
    assert_int_equal(hello_answer(&b, "primary", &b.p, 1, "primary", "primary", &code),
                     SMTPSYNC__FRAME__BODY_ERROR);
    assert_int_equal(code, ERROR_FORBIDDEN);
    assert_int_equal(hello_answer(&b, "primary", &b.p, 1, "primary", NULL, &code),
                     SMTPSYNC__FRAME__BODY_ERROR);
    assert_int_equal(code, ERROR_FORBIDDEN);
    assert_true(repl_node_is_primary(b.p.rn));
    primary_save(&b, "second", "mail2.example.com");
    assert_true(run_until(&b, pred_all_synced, NULL, 5000));
    bench_free(&b);
}

static void test_repl_promotion_refused_when_lagging(void **state)
{
    struct bench b;
    struct raw_peer rp;
    const struct admin_hooks *h;
    uint64_t epoch = 0;
    char why[512];

    (void)state;
    bench_init(&b);
    save_one(b.p.st, "primary", "mail.example.com", NULL);
    bench_start(&b);
    assert_true(run_until(&b, pred_all_synced, NULL, 5000));
    node_stop(&b.p);
    /* The "primary" announces a revision the replica never gets. */
    memset(&rp, 0, sizeof(rp));
    raw_connect(&b, &rp, "primary", &b.r[0]);
    assert_true(run_until(&b, pred_raw_opened, &rp, 5000));
    send_hello(&rp, 5, info_of(b.r[0].st).epoch, 4);
    assert_true(run_until(&b, pred_raw_frames, &rp, 5000));
    assert_int_equal(rp.last_body, SMTPSYNC__FRAME__BODY_STATE);
    peer_close(rp.p, 0, "gone");
    assert_true(run_until(&b, pred_raw_closed, &rp, 5000));
    h = repl_node_hooks(b.r[0].rn);
    assert_int_equal(h->promote(h->arg, false, &epoch, why, sizeof(why)), ERROR_CONFLICT);
    assert_non_null(strstr(why, "3 behind"));
    assert_false(repl_node_is_primary(b.r[0].rn));
    assert_int_equal(info_of(b.r[0].st).epoch, 1);
    assert_int_equal(h->promote(h->arg, true, &epoch, why, sizeof(why)), 0);
    assert_int_equal(epoch, 2);
    assert_true(repl_node_is_primary(b.r[0].rn));
    bench_free(&b);
}

/* What the primary announced counts only from frames the replica took: a
 * refused Delta's to_revision does not make the replica look behind. */
static void test_repl_refused_delta_does_not_raise_primary_revision(void **state)
{
    struct bench b;
    struct raw_peer rp;
    const struct admin_hooks *h;
    uint64_t epoch = 0;
    char why[512];
    struct store_info in;

    (void)state;
    bench_init(&b);
    save_one(b.p.st, "primary", "mail.example.com", NULL);
    bench_start(&b);
    assert_true(run_until(&b, pred_all_synced, NULL, 5000));
    node_stop(&b.p);
    in = info_of(b.r[0].st);
    memset(&rp, 0, sizeof(rp));
    raw_connect(&b, &rp, "primary", &b.r[0]);
    assert_true(run_until(&b, pred_raw_opened, &rp, 5000));
    send_hello(&rp, 5, in.epoch, in.revision);
    assert_true(run_until(&b, pred_raw_frames, &rp, 5000));
    assert_int_equal(rp.last_body, SMTPSYNC__FRAME__BODY_STATE);
    {
        /* Not chaining onto ours (and inconsistent): refused. */
        Smtpsync__Frame f;
        Smtpsync__Delta d;

        smtpsync__delta__init(&d);
        d.epoch = in.epoch;
        d.from_revision = in.revision + 4;
        d.to_revision = in.revision + 8;
        smtpsync__frame__init(&f);
        f.id = 6;
        f.body_case = SMTPSYNC__FRAME__BODY_DELTA;
        f.delta = &d;
        rp.frames = 0;
        assert_int_equal(peer_send(rp.p, &f), 0);
    }
    assert_true(run_until(&b, pred_raw_frames, &rp, 5000));
    assert_int_not_equal(rp.last_body, SMTPSYNC__FRAME__BODY_ACK);
    if (!rp.closed)
        peer_close(rp.p, 0, "gone");
    assert_true(run_until(&b, pred_raw_closed, &rp, 5000));
    assert_int_equal(info_of(b.r[0].st).revision, in.revision);
    /* Not behind: promotion needs no force. */
    h = repl_node_hooks(b.r[0].rn);
    assert_int_equal(h->promote(h->arg, false, &epoch, why, sizeof(why)), 0);
    assert_int_equal(epoch, in.epoch + 1);
    bench_free(&b);
}

/* A stand-in for a replica: answers every Hello with Fenced at `epoch`,
 * or with nothing at all when `silent` (a peer behind a dead link). */
struct fake_replica {
    struct peer_listener *l;
    uint64_t epoch;
    bool silent;
    int hellos;
    struct peer *p;
};

static void fake_open(void *arg, struct peer *p, const char *id)
{
    struct fake_replica *fr = arg;

    (void)id;
    fr->p = p;
}

static void fake_frame(void *arg, struct peer *p, const Smtpsync__Frame *f)
{
    struct fake_replica *fr = arg;
    Smtpsync__Frame out;
    Smtpsync__Fenced fd;

    if (f->body_case != SMTPSYNC__FRAME__BODY_HELLO)
        return;
    fr->hellos++;
    if (fr->silent)
        return;
    smtpsync__fenced__init(&fd);
    fd.epoch = fr->epoch;
    smtpsync__frame__init(&out);
    out.id = f->id;
    out.body_case = SMTPSYNC__FRAME__BODY_FENCED;
    out.fenced = &fd;
    assert_int_equal(peer_send(p, &out), 0);
}

static void fake_close(void *arg, struct peer *p, int err, const char *reason)
{
    struct fake_replica *fr = arg;

    (void)err;
    (void)reason;
    if (fr->p == p)
        fr->p = NULL;
}

static const struct peer_callbacks fake_cb = {
    .on_open = fake_open,
    .on_frame = fake_frame,
    .on_close = fake_close,
};

static bool pred_fake_hellos(struct bench *b, void *arg)
{
    (void)b;
    return ((struct fake_replica *)arg)->hellos >= 2;
}

static bool pred_fake_hello(struct bench *b, void *arg)
{
    (void)b;
    return ((struct fake_replica *)arg)->hellos >= 1;
}

/* A replica's Fenced fences the primary only with an epoch above the
 * primary's own; an equal one is ignored and replication goes on. */
static void test_repl_primary_ignores_fenced_not_newer(void **state)
{
    struct bench b;
    struct fake_replica fr;
    struct mtls_ctx *ctx;
    char addr[64];
    Smtpsync__StatusReply *r;

    (void)state;
    bench_init(&b);
    save_one(b.p.st, "primary", "mail.example.com", NULL);
    bench_start(&b);
    assert_true(run_until(&b, pred_all_synced, NULL, 5000));
    node_stop(&b.r[0]);

    memset(&fr, 0, sizeof(fr));
    fr.epoch = info_of(b.p.st).epoch;
    ctx = load_ctx("site-b");
    snprintf(addr, sizeof(addr), "127.0.0.1:%d", b.r[0].port);
    assert_int_equal(peer_listen(&b.loop, addr, ctx, NULL, &fake_cb, &fr, &fr.l), 0);
    mtls_ctx_unref(ctx);
    primary_save(&b, "second", "mail2.example.com");
    assert_true(run_until(&b, pred_fake_hello, &fr, 5000));
    run_for(&b, 100);
    r = status_of(&b.p);
    assert_int_equal(r->node->fenced_epoch, 0);
    smtpsync__status_reply__free_unpacked(r, NULL);
    assert_true(repl_node_is_primary(b.p.rn));
    /* Still pushing to the others. */
    primary_save(&b, "third", "mail3.example.com");
    assert_true(run_until(&b, pred_replica_synced, &b.r[1], 5000));
    assert_true(run_until(&b, pred_replica_synced, &b.r[2], 5000));

    /* A newer epoch fences it. */
    fr.epoch = info_of(b.p.st).epoch + 1;
    if (fr.p != NULL)
        peer_close(fr.p, 0, "again");
    assert_true(run_until(&b, pred_fake_hellos, &fr, 5000));
    assert_true(run_until(&b, pred_fenced, NULL, 5000));

    peer_listener_close(fr.l, NULL, NULL);
    bench_free(&b);
}

static bool pred_fake_three_hellos(struct bench *b, void *arg)
{
    (void)b;
    return ((struct fake_replica *)arg)->hellos >= 3;
}

/* A replica that stops answering (its link went down without a FIN) is
 * given up after the answer timeout, not after TCP's minutes: the status
 * says why, and the primary reconnects. */
static void test_repl_unanswered_hello_times_out(void **state)
{
    struct bench b;
    struct fake_replica fr;
    struct mtls_ctx *ctx;
    char addr[64];
    Smtpsync__StatusReply *r;
    const Smtpsync__ReplicaStatus *rs;

    (void)state;
    bench_init(&b);
    b.p.tuning.answer_timeout_ms = 200;
    save_one(b.p.st, "primary", "mail.example.com", NULL);
    bench_start(&b);
    assert_true(run_until(&b, pred_all_synced, NULL, 5000));
    node_stop(&b.r[0]);

    memset(&fr, 0, sizeof(fr));
    fr.silent = true;
    ctx = load_ctx("site-b");
    snprintf(addr, sizeof(addr), "127.0.0.1:%d", b.r[0].port);
    assert_int_equal(peer_listen(&b.loop, addr, ctx, NULL, &fake_cb, &fr, &fr.l), 0);
    mtls_ctx_unref(ctx);
    primary_save(&b, "second", "mail2.example.com");
    /* Each unanswered Hello ends its connection; the next one is another. */
    assert_true(run_until(&b, pred_fake_three_hellos, &fr, 5000));
    r = status_of(&b.p);
    rs = replica_status(r, "site-b");
    assert_non_null(strstr(rs->last_error, "no answer to the Hello within 200 ms"));
    assert_true(rs->consecutive_failures >= 1);
    smtpsync__status_reply__free_unpacked(r, NULL);
    /* The others are not held up. */
    assert_true(run_until(&b, pred_replica_synced, &b.r[1], 5000));

    peer_listener_close(fr.l, NULL, NULL);
    bench_free(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_repl_first_sync_by_snapshot),
        cmocka_unit_test(test_repl_delta_after_save_push_on_commit),
        cmocka_unit_test(test_repl_without_push_on_commit_waits_for_schedule),
        cmocka_unit_test(test_repl_stopped_replica_catches_up_by_delta),
        cmocka_unit_test(test_repl_catches_up_by_snapshot_after_compaction),
        cmocka_unit_test(test_repl_divergence_repaired_by_snapshot),
        cmocka_unit_test(test_repl_snapshot_concurrency_queue_drains),
        cmocka_unit_test(test_repl_status_fields_and_persistence),
        cmocka_unit_test(test_repl_keepalive_holds_quiet_connections),
        cmocka_unit_test(test_repl_unanswered_hello_times_out),
        cmocka_unit_test(test_repl_sync_hook),
        cmocka_unit_test(test_repl_run_test_on_a_replica),
        cmocka_unit_test(test_repl_promotion_and_fenced_old_primary),
        cmocka_unit_test(test_repl_refusals),
        cmocka_unit_test(test_repl_promotion_refused_when_lagging),
        cmocka_unit_test(test_repl_higher_epoch_only_from_a_named_primary),
        cmocka_unit_test(test_repl_primary_refuses_a_hello_from_its_own_id),
        cmocka_unit_test(test_repl_refused_delta_does_not_raise_primary_revision),
        cmocka_unit_test(test_repl_primary_ignores_fenced_not_newer),
    };

    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
