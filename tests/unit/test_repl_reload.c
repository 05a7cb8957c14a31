/*
 * repl reload: a connection's rights are judged again when the node is
 * reconfigured (SIGHUP). An admin removed from [admin] is disconnected and
 * refused from then on; one demoted to operator keeps its connection but
 * its next write is refused with needs_role; a member removed from the
 * membership, or a [replication] primary replaced, loses its connection;
 * so does a member left out of a membership the primary sends.
 * One node on one loop, certificates from tests/tools/make-pki.sh, hand-
 * driven clients over loopback mutual TLS.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include "error.h"
#include "log.h"
#include "mtls.h"
#include "peer.h"
#include "repl.h"
#include "store.h"
#include "testutil.h"

static char *pki;

static int group_setup(void **state)
{
    (void)state;
    log_init("test_repl_reload", getenv("SMTPSYNC_TEST_DEBUG") ? LOG_LEVEL_DEBUG : LOG_LEVEL_ERROR,
             LOG_FORMAT_TEXT);
    pki = testutil_make_pki("-a alice", "primary site-b site-c");
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

/* ---- one node ---- */

struct bench {
    uv_loop_t loop;
    uv_timer_t tick;
    char *dir;
    struct store *st;
    struct mtls_ctx *ctx;
    struct repl_node *rn;
    bool stopped;
};

static void on_tick(uv_timer_t *t)
{
    (void)t;
}

static struct repl_tuning test_tuning(void)
{
    struct repl_tuning t;

    memset(&t, 0, sizeof(t));
    t.interval_ms = 60000;
    t.push_on_commit = true;
    t.history_keep = 1000;
    t.retry_initial_ms = 1000;
    t.status_flush_ms = 20;
    return t;
}

/* The node "primary": a primary daemon with `config`, or a replica daemon. */
static void bench_start(struct bench *b, bool primary_daemon, const struct repl_node_config *config)
{
    struct store_params sp;
    struct repl_node_params p;

    memset(b, 0, sizeof(*b));
    assert_int_equal(uv_loop_init(&b->loop), 0);
    assert_int_equal(uv_timer_init(&b->loop, &b->tick), 0);
    b->dir = testutil_tmpdir();
    sp = (struct store_params){.dir = b->dir, .create = true};
    assert_int_equal(store_open(&sp, &b->st), 0);
    b->ctx = load_ctx("primary");
    memset(&p, 0, sizeof(p));
    p.loop = &b->loop;
    p.store = b->st;
    p.ctx = b->ctx;
    p.node_id = "primary";
    p.primary_daemon = primary_daemon;
    p.listen = "127.0.0.1:0";
    p.config = *config;
    assert_int_equal(repl_node_start(&p, &b->rn), 0);
}

static bool run_until(struct bench *b, bool (*pred)(void *arg), void *arg, uint64_t ms)
{
    uint64_t deadline;

    uv_update_time(&b->loop);
    deadline = uv_now(&b->loop) + ms;
    uv_timer_start(&b->tick, on_tick, 2, 2);
    while (!pred(arg)) {
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

static void on_node_stopped(void *arg)
{
    ((struct bench *)arg)->stopped = true;
}

static bool pred_stopped(void *arg)
{
    return ((struct bench *)arg)->stopped;
}

static void bench_free(struct bench *b)
{
    repl_node_stop(b->rn, on_node_stopped, b);
    assert_true(run_until(b, pred_stopped, b, 5000));
    uv_close((uv_handle_t *)&b->tick, NULL);
    uv_run(&b->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&b->loop), 0);
    store_close(b->st);
    mtls_ctx_unref(b->ctx);
    testutil_rmtree(b->dir);
    free(b->dir);
}

/* ---- a hand-driven client ---- */

struct client {
    struct peer *p;
    bool opened, closed;
    int err;
    char reason[PEER_REASON_MAX];
    int frames, replies;
    uint64_t last_id;
    int last_code;
    char needs_role[32];
};

static void cl_open(void *arg, struct peer *p, const char *id)
{
    (void)p;
    (void)id;
    ((struct client *)arg)->opened = true;
}

static void cl_frame(void *arg, struct peer *p, const Smtpsync__Frame *f)
{
    struct client *c = arg;

    (void)p;
    c->frames++;
    if (f->body_case != SMTPSYNC__FRAME__BODY_ADMIN_REPLY)
        return;
    c->replies++;
    c->last_id = f->id;
    c->last_code = f->admin_reply->code;
    snprintf(c->needs_role, sizeof(c->needs_role), "%s",
             f->admin_reply->needs_role ? f->admin_reply->needs_role : "");
}

static void cl_close(void *arg, struct peer *p, int err, const char *reason)
{
    struct client *c = arg;

    (void)p;
    c->closed = true;
    c->p = NULL;
    c->err = err;
    snprintf(c->reason, sizeof(c->reason), "%s", reason);
}

static const struct peer_callbacks client_cb = {
    .on_open = cl_open,
    .on_frame = cl_frame,
    .on_close = cl_close,
};

static bool pred_opened(void *arg)
{
    return ((struct client *)arg)->opened || ((struct client *)arg)->closed;
}

static bool pred_closed(void *arg)
{
    return ((struct client *)arg)->closed;
}

static void client_connect(struct bench *b, struct client *c, const char *as)
{
    struct mtls_ctx *ctx = load_ctx(as);
    char addr[64];

    memset(c, 0, sizeof(*c));
    snprintf(addr, sizeof(addr), "127.0.0.1:%d", repl_node_port(b->rn));
    assert_int_equal(peer_connect(&b->loop, addr, ctx, "primary", NULL, &client_cb, c, &c->p), 0);
    mtls_ctx_unref(ctx);
}

static bool pred_frames(void *arg)
{
    return ((struct client *)arg)->frames > 0 || ((struct client *)arg)->closed;
}

/* Connects and waits until the node accepted the connection: with TLS 1.3
 * the client opens before the server judged it, so a StatusQuery (the
 * agent's for a member, the admin API's for an admin) must be answered. */
static void client_connect_open(struct bench *b, struct client *c, const char *as)
{
    Smtpsync__Frame f;
    Smtpsync__StatusQuery q;

    client_connect(b, c, as);
    assert_true(run_until(b, pred_opened, c, 5000));
    assert_true(c->opened);
    smtpsync__status_query__init(&q);
    smtpsync__frame__init(&f);
    f.id = 100;
    f.body_case = SMTPSYNC__FRAME__BODY_STATUS_QUERY;
    f.status_query = &q;
    assert_int_equal(peer_send(c->p, &f), 0);
    assert_true(run_until(b, pred_frames, c, 5000));
    assert_false(c->closed);
    c->replies = 0;
}

struct reply_wait {
    struct client *c;
    int want;
};

static bool pred_replies(void *arg)
{
    struct reply_wait *w = arg;

    return w->c->replies >= w->want || w->c->closed;
}

/* A write (settings discard, a super-admin verb): its reply's code;
 * ERROR_NOT_FOUND (no drafts) once past the role check. */
static int client_discard(struct bench *b, struct client *c, uint64_t id)
{
    Smtpsync__Frame f;
    Smtpsync__SettingsDiscard d;
    struct reply_wait w = {c, c->replies + 1};

    smtpsync__settings_discard__init(&d);
    smtpsync__frame__init(&f);
    f.id = id;
    f.body_case = SMTPSYNC__FRAME__BODY_SETTINGS_DISCARD;
    f.settings_discard = &d;
    assert_int_equal(peer_send(c->p, &f), 0);
    assert_true(run_until(b, pred_replies, &w, 5000));
    assert_false(c->closed);
    assert_int_equal(c->last_id, id);
    return c->last_code;
}

static void client_close(struct bench *b, struct client *c)
{
    if (c->closed)
        return;
    peer_close(c->p, 0, "done");
    assert_true(run_until(b, pred_closed, c, 5000));
}

/* A client of `as` is refused at the handshake. */
static void assert_refused(struct bench *b, const char *as)
{
    struct client c;

    client_connect(b, &c, as);
    assert_true(run_until(b, pred_closed, &c, 5000));
    assert_int_equal(c.err, ERROR_TLS);
    assert_int_equal(c.replies, 0);
}

/* ---- tests ---- */

static void test_repl_reload_admin_demoted_then_removed(void **state)
{
    const char *alice[] = {"alice"};
    struct repl_node_config cfg;
    struct bench b;
    struct client c;

    (void)state;
    memset(&cfg, 0, sizeof(cfg));
    cfg.tuning = test_tuning();
    cfg.super_admins = alice;
    cfg.nsuper_admins = 1;
    bench_start(&b, true, &cfg);
    assert_true(repl_node_is_primary(b.rn));

    client_connect_open(&b, &c, "alice");
    assert_int_equal(client_discard(&b, &c, 1), ERROR_NOT_FOUND);
    assert_string_equal(c.needs_role, "");

    /* A reload that changes nothing for alice keeps her connection and
     * her role. */
    assert_int_equal(repl_node_reconfigure(b.rn, &cfg, NULL), 0);
    assert_int_equal(client_discard(&b, &c, 2), ERROR_NOT_FOUND);

    /* Demoted to operator: the same connection's next write is refused. */
    cfg.super_admins = NULL;
    cfg.nsuper_admins = 0;
    cfg.operators = alice;
    cfg.noperators = 1;
    assert_int_equal(repl_node_reconfigure(b.rn, &cfg, NULL), 0);
    assert_int_equal(client_discard(&b, &c, 3), ERROR_FORBIDDEN);
    assert_string_equal(c.needs_role, "super-admin");

    /* Removed from [admin]: the connection is closed, with the reason. */
    cfg.operators = NULL;
    cfg.noperators = 0;
    assert_int_equal(repl_node_reconfigure(b.rn, &cfg, NULL), 0);
    assert_true(run_until(&b, pred_closed, &c, 5000));
    assert_int_equal(c.err, ERROR_FORBIDDEN);
    assert_non_null(strstr(c.reason, "no longer allowed"));
    assert_int_equal(c.replies, 3);

    /* And a new connection is refused. */
    assert_refused(&b, "alice");
    bench_free(&b);
}

static void test_repl_reload_admin_promoted(void **state)
{
    const char *alice[] = {"alice"};
    struct repl_node_config cfg;
    struct bench b;
    struct client c;

    (void)state;
    memset(&cfg, 0, sizeof(cfg));
    cfg.tuning = test_tuning();
    cfg.operators = alice;
    cfg.noperators = 1;
    bench_start(&b, true, &cfg);
    client_connect_open(&b, &c, "alice");
    assert_int_equal(client_discard(&b, &c, 1), ERROR_FORBIDDEN);
    assert_string_equal(c.needs_role, "super-admin");

    cfg.operators = NULL;
    cfg.noperators = 0;
    cfg.super_admins = alice;
    cfg.nsuper_admins = 1;
    assert_int_equal(repl_node_reconfigure(b.rn, &cfg, NULL), 0);
    assert_int_equal(client_discard(&b, &c, 2), ERROR_NOT_FOUND);
    assert_string_equal(c.needs_role, "");
    client_close(&b, &c);
    bench_free(&b);
}

static void test_repl_reload_member_removed(void **state)
{
    const char *alice[] = {"alice"};
    struct repl_member_cfg replicas[] = {{"site-b", "127.0.0.1:9"}};
    struct repl_node_config cfg;
    struct bench b;
    struct client member, admin;

    (void)state;
    memset(&cfg, 0, sizeof(cfg));
    cfg.tuning = test_tuning();
    cfg.replicas = replicas;
    cfg.nreplicas = 1;
    cfg.super_admins = alice;
    cfg.nsuper_admins = 1;
    bench_start(&b, true, &cfg);
    client_connect_open(&b, &member, "site-b");
    client_connect_open(&b, &admin, "alice");

    /* site-b leaves the [replica] sections, hence the membership: its
     * connection ends; alice's, still allowed, stays. */
    cfg.replicas = NULL;
    cfg.nreplicas = 0;
    assert_int_equal(repl_node_reconfigure(b.rn, &cfg, NULL), 0);
    assert_true(run_until(&b, pred_closed, &member, 5000));
    assert_int_equal(member.err, ERROR_FORBIDDEN);
    assert_non_null(strstr(member.reason, "no longer allowed"));
    assert_int_equal(client_discard(&b, &admin, 1), ERROR_NOT_FOUND);
    assert_refused(&b, "site-b");
    client_close(&b, &admin);
    bench_free(&b);
}

static void test_repl_reload_primary_replaced(void **state)
{
    struct repl_node_config cfg;
    struct bench b;
    struct client c;

    (void)state;
    /* A replica daemon with no membership yet: only [replication]
     * primary may push. */
    memset(&cfg, 0, sizeof(cfg));
    cfg.tuning = test_tuning();
    cfg.primary = "site-b";
    bench_start(&b, false, &cfg);
    assert_false(repl_node_is_primary(b.rn));
    client_connect_open(&b, &c, "site-b");

    cfg.primary = "elsewhere";
    assert_int_equal(repl_node_reconfigure(b.rn, &cfg, NULL), 0);
    assert_true(run_until(&b, pred_closed, &c, 5000));
    assert_int_equal(c.err, ERROR_FORBIDDEN);
    assert_refused(&b, "site-b");
    bench_free(&b);
}

struct frame_wait {
    struct client *c;
    int want;
};

static bool pred_frame_count(void *arg)
{
    struct frame_wait *w = arg;

    return w->c->frames >= w->want || w->c->closed;
}

/* A Hello from the primary site-b at `epoch`, with a membership of site-b
 * (primary), this node and, with `with_c`, site-c; waits for its answer. */
static void hello_members(struct bench *b, struct client *c, uint64_t id, uint64_t epoch,
                          bool with_c)
{
    static const char *const ids[] = {"site-b", "primary", "site-c"};
    Smtpsync__Member members[3], *mp[3];
    Smtpsync__Membership m;
    Smtpsync__Frame f;
    Smtpsync__Hello h;
    struct frame_wait w = {c, c->frames + 1};

    smtpsync__membership__init(&m);
    for (size_t i = 0; i < 3; i++) {
        smtpsync__member__init(&members[i]);
        members[i].node = (char *)(uintptr_t)ids[i];
        members[i].address = "127.0.0.1:9";
        members[i].role = i == 0 ? SMTPSYNC__ROLE__ROLE_PRIMARY : SMTPSYNC__ROLE__ROLE_REPLICA;
        mp[i] = &members[i];
    }
    m.n_members = with_c ? 3 : 2;
    m.members = mp;
    smtpsync__hello__init(&h);
    h.node = "site-b";
    h.epoch = epoch;
    h.revision = 0;
    h.membership = &m;
    smtpsync__frame__init(&f);
    f.id = id;
    f.body_case = SMTPSYNC__FRAME__BODY_HELLO;
    f.hello = &h;
    assert_int_equal(peer_send(c->p, &f), 0);
    assert_true(run_until(b, pred_frame_count, &w, 5000));
    assert_false(c->closed);
}

static void test_repl_reload_member_left_out_by_primary(void **state)
{
    struct repl_node_config cfg;
    struct store_info info;
    struct bench b;
    struct client primary, other;

    (void)state;
    memset(&cfg, 0, sizeof(cfg));
    cfg.tuning = test_tuning();
    cfg.primary = "site-b";
    bench_start(&b, false, &cfg);
    assert_int_equal(store_info(b.st, &info), 0);
    client_connect_open(&b, &primary, "site-b");
    hello_members(&b, &primary, 1, info.epoch, true);

    /* site-c is a member now. */
    client_connect_open(&b, &other, "site-c");

    /* The primary's next membership leaves site-c out: no reload, yet its
     * connection ends at once; the primary's stays. */
    hello_members(&b, &primary, 2, info.epoch, false);
    assert_true(run_until(&b, pred_closed, &other, 5000));
    assert_int_equal(other.err, ERROR_FORBIDDEN);
    assert_non_null(strstr(other.reason, "no longer allowed"));
    assert_false(primary.closed);
    assert_refused(&b, "site-c");
    client_close(&b, &primary);
    bench_free(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_repl_reload_admin_demoted_then_removed),
        cmocka_unit_test(test_repl_reload_admin_promoted),
        cmocka_unit_test(test_repl_reload_member_removed),
        cmocka_unit_test(test_repl_reload_primary_replaced),
        cmocka_unit_test(test_repl_reload_member_left_out_by_primary),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
