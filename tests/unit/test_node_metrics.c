/*
 * node_metrics: the state gauges of GET /metrics, and the [node]
 * metrics_listen key that turns the endpoint on (loopback only).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "error.h"
#include "metrics.h"
#include "metrics_http.h"
#include "mtls.h"
#include "node_metrics.h"
#include "outbox.h"
#include "pem.h"
#include "settings.h"
#include "store.h"
#include "testutil.h"

#define NODE_HEAD "[node]\nid = primary\ndata_dir = /var/lib/smtpsync\n"

/* ---- [node] metrics_listen ---- */

/* metrics_listen = value parses; host and port as expected. */
static void expect_listen(const char *value, const char *host, int port)
{
    char text[256];
    struct config_problems p;
    struct config c;

    snprintf(text, sizeof(text), NODE_HEAD "metrics_listen = %s\n", value);
    if (testutil_parse_config(text, &c, &p) != 0) {
        for (size_t i = 0; i < p.count; i++)
            print_message("  problem: %s\n", p.lines[i]);
        fail_msg("metrics_listen = %s refused", value);
    }
    assert_string_equal(c.node.metrics_listen.text, value);
    assert_string_equal(c.node.metrics_listen.host, host);
    assert_int_equal(c.node.metrics_listen.port, port);
    config_problems_free(&p);
    config_clear(&c);
}

/* metrics_listen = value is one problem on line 4 containing `why`. */
static void expect_refused(const char *value, const char *why)
{
    char text[256], prefix[128];
    struct config_problems p;
    struct config c;

    snprintf(text, sizeof(text), NODE_HEAD "metrics_listen = %s\n", value);
    assert_int_equal(testutil_parse_config(text, &c, &p), ERROR_INVALID);
    snprintf(prefix, sizeof(prefix),
             "t.ini:4: invalid value '%s' for 'metrics_listen' in [node]: ", value);
    if (p.count != 1 || strncmp(p.lines[0], prefix, strlen(prefix)) != 0 ||
        strstr(p.lines[0], why) == NULL) {
        for (size_t i = 0; i < p.count; i++)
            print_message("  problem: %s\n", p.lines[i]);
        fail_msg("metrics_listen = %s: expected one problem with '%s'", value, why);
    }
    /* Nothing half-set is left behind. */
    assert_string_equal(c.node.metrics_listen.text, "");
    config_problems_free(&p);
    config_clear(&c);
}

static void test_metrics_listen_loopback_accepted(void **state)
{
    (void)state;
    expect_listen("127.0.0.1:9465", "127.0.0.1", 9465);
    expect_listen("127.3.2.1:1", "127.3.2.1", 1);
    expect_listen("[::1]:9465", "::1", 9465);
    expect_listen("localhost:9465", "localhost", 9465);
    expect_listen("LocalHost:9465", "LocalHost", 9465);
    /* Port 0: any free port, logged at start (tests use it). */
    expect_listen("127.0.0.1:0", "127.0.0.1", 0);
    expect_listen("[::1]:0", "::1", 0);
}

static void test_metrics_listen_off(void **state)
{
    struct config_problems p;
    struct config c;

    (void)state;
    /* Absent: off. */
    assert_int_equal(testutil_parse_config(NODE_HEAD, &c, &p), 0);
    assert_string_equal(c.node.metrics_listen.text, "");
    config_problems_free(&p);
    config_clear(&c);
    /* Empty: off as well, not an "empty value" problem. */
    assert_int_equal(testutil_parse_config(NODE_HEAD "metrics_listen =\n", &c, &p), 0);
    assert_int_equal(p.count, 0);
    assert_string_equal(c.node.metrics_listen.text, "");
    assert_int_equal(c.node.metrics_listen.port, 0);
    config_problems_free(&p);
    config_clear(&c);
    /* Other keys keep refusing an empty value. */
    assert_int_equal(testutil_parse_config(NODE_HEAD "listen =\n", &c, &p), ERROR_INVALID);
    assert_int_equal(p.count, 1);
    assert_string_equal(p.lines[0], "t.ini:4: empty value for 'listen' in [node]");
    config_problems_free(&p);
    config_clear(&c);
}

static void test_metrics_listen_not_loopback_refused(void **state)
{
    static const char *const outside[] = {
        "0.0.0.0:9465",
        "10.0.0.1:9465",
        "192.168.1.1:9465",
        "[::]:9465",
        "[2001:db8::1]:9465",
        "mail.example.com:9465",
        "localhost.example.com:9465",
        "128.0.0.1:9465",
        "[::ffff:10.0.0.1]:9465",
    };

    (void)state;
    for (size_t i = 0; i < sizeof(outside) / sizeof(outside[0]); i++)
        expect_refused(outside[i], "metrics are served on loopback only");
    /* The address syntax is still checked first. */
    expect_refused("127.0.0.1:65536", "port must be 0-65535");
    expect_refused("127.0.0.1", "must be host:port");
    expect_refused("::1:9465", "an IPv6 address must be in brackets");
    expect_refused(":9465", "bad host: empty");
    /* [node] listen keeps its rules: no port 0. */
    {
        struct config_problems p;
        struct config c;

        assert_int_equal(testutil_parse_config(NODE_HEAD "listen = 127.0.0.1:0\n", &c, &p),
                         ERROR_INVALID);
        assert_int_equal(p.count, 1);
        assert_non_null(strstr(p.lines[0], "port must be 1-65535"));
        config_problems_free(&p);
        config_clear(&c);
    }
}

static void on_http_stopped(void *arg)
{
    *(int *)arg += 1;
}

static void no_metrics(struct metrics_out *o, void *arg)
{
    (void)o;
    (void)arg;
}

/* Every metrics_listen the config file accepts, the server starts on (the
 * daemon hands it the parsed host and port); every one it refuses never
 * reaches the server. `--check-config` passing a value the daemon then
 * cannot start with ("127.0.0.1:00009465" once did) is a broken promise.
 * A start that fails for another reason than the address (address in use,
 * no IPv6) still counts as started. */
static void test_metrics_listen_config_and_server_agree(void **state)
{
    static const struct {
        const char *value;
        bool ok;
    } values[] = {
        {"127.0.0.1:0", true},
        {"127.0.0.1:00000", true},
        {"127.0.0.1:00009465", true},
        {"127.0.0.1:0000000000000000000000000000001", true},
        {"localhost:000", true},
        {"LOCALHOST:0", true},
        {"[::1]:0", true},
        {"[::1]:0000", true},
        {"[0:0:0:0:0:0:0:1]:0", true},
        {"127.255.255.254:0", true},
        {"127.0.0.1:00065536", false},
        {"127.0.0.1:65536", false},
        {"127.0.0.1:99999999999999999999999", false},
        {"127.0.0.1:", false},
        {"127.0.0.1:+1", false},
        {"127.0.0.1:-0", false},
        {"127.0.0.1:0x10", false},
        {"127.0.0.1:1 2", false},
        {"127.0.0.1", false},
        {"[127.0.0.1]:0", false},
        {"[localhost]:0", false},
        {"[]:0", false},
        {":0", false},
        {"::1:0", false},
        {"[::1]", false},
        {"[::ffff:127.0.0.1]:0", false},
        {"127.1:0", false},
        {"0177.0.0.1:0", false},
        {"10.0.0.1:0", false},
        {"localhost.:0", false},
    };
    char text[256], why[256];
    uv_loop_t loop;

    (void)state;
    assert_int_equal(uv_loop_init(&loop), 0);
    for (size_t i = 0; i < sizeof(values) / sizeof(values[0]); i++) {
        struct metrics_http *h = NULL;
        struct config_problems p;
        struct config c;
        bool config_ok;
        int err, stopped = 0;

        snprintf(text, sizeof(text), NODE_HEAD "metrics_listen = %s\n", values[i].value);
        config_ok = testutil_parse_config(text, &c, &p) == 0;
        if (config_ok != values[i].ok)
            fail_msg("metrics_listen = %s: config %s (%s)", values[i].value,
                     config_ok ? "accepts" : "refuses", p.count > 0 ? p.lines[0] : "");
        if (config_ok) {
            why[0] = '\0';
            err = metrics_http_start(&loop, c.node.metrics_listen.host, c.node.metrics_listen.port,
                                     no_metrics, NULL, &h, why, sizeof(why));
            if (err == ERROR_INVALID)
                fail_msg("metrics_listen = %s: the config accepts it, the server refuses: %s",
                         values[i].value, why);
            if (err == 0) {
                metrics_http_stop(h, on_http_stopped, &stopped);
                assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
                assert_int_equal(stopped, 1);
            }
        }
        config_problems_free(&p);
        config_clear(&c);
    }
    assert_int_equal(uv_loop_close(&loop), 0);
}

struct change {
    int n;
    bool live;
    char old_value[64], new_value[64];
};

static void on_change(const char *section, const char *key, const char *old_value,
                      const char *new_value, bool live, void *arg)
{
    struct change *ch = arg;

    if (strcmp(section, "node") != 0 || strcmp(key, "metrics_listen") != 0)
        return;
    ch->n++;
    ch->live = live;
    snprintf(ch->old_value, sizeof(ch->old_value), "%s", old_value);
    snprintf(ch->new_value, sizeof(ch->new_value), "%s", new_value);
}

/* A change is reported as needing a restart (the daemon logs "restart
 * needed" for every change that is not live). */
static void test_metrics_listen_change_needs_restart(void **state)
{
    struct config_problems p;
    struct config a, b;
    struct change ch = {0};

    (void)state;
    assert_int_equal(testutil_parse_config(NODE_HEAD, &a, &p), 0);
    config_problems_free(&p);
    assert_int_equal(testutil_parse_config(NODE_HEAD "metrics_listen = 127.0.0.1:9465\n", &b, &p),
                     0);
    config_problems_free(&p);
    config_diff(&a, &b, on_change, &ch);
    assert_int_equal(ch.n, 1);
    assert_false(ch.live);
    assert_string_equal(ch.old_value, "");
    assert_string_equal(ch.new_value, "127.0.0.1:9465");
    memset(&ch, 0, sizeof(ch));
    config_diff(&b, &b, on_change, &ch);
    assert_int_equal(ch.n, 0);
    config_clear(&a);
    config_clear(&b);
}

/* ---- the gauges ---- */

struct env {
    char *dir;
    struct store *st;
    struct outbox *ob;
    char *pki;
    struct mtls_ctx *ctx;
};

static int setup(void **state)
{
    struct env *e = calloc(1, sizeof(*e));
    struct store_params sp = {0};
    struct outbox_params op = {0};
    char sdir[4096], odir[4096];

    assert_non_null(e);
    e->dir = testutil_tmpdir();
    snprintf(sdir, sizeof(sdir), "%s/store", e->dir);
    snprintf(odir, sizeof(odir), "%s/outbox", e->dir);
    sp.dir = sdir;
    sp.create = true;
    assert_int_equal(store_open(&sp, &e->st), 0);
    op.dir = odir;
    assert_int_equal(outbox_open(&op, &e->ob), 0);
    metrics_reset();
    *state = e;
    return 0;
}

static int teardown(void **state)
{
    struct env *e = *state;

    mtls_ctx_unref(e->ctx);
    if (e->pki != NULL) {
        testutil_rmtree(e->pki);
        free(e->pki);
    }
    outbox_close(e->ob);
    store_close(e->st);
    testutil_rmtree(e->dir);
    free(e->dir);
    free(e);
    metrics_reset();
    return 0;
}

static void collect(struct metrics_out *o, void *arg)
{
    node_metrics_write(o, arg);
}

/* The scrape of `src`, NUL-terminated (free it). */
static char *scrape(const struct node_metrics_source *src)
{
    char *body;
    size_t len;

    assert_int_equal(metrics_render(collect, (void *)(uintptr_t)src, &body, &len), 0);
    assert_int_equal(strlen(body), len);
    return body;
}

/* `line` is a whole line of `body`. */
static bool has_line(const char *body, const char *line)
{
    size_t n = strlen(line);

    for (const char *p = body; (p = strstr(p, line)) != NULL; p++)
        if ((p == body || p[-1] == '\n') && p[n] == '\n')
            return true;
    return false;
}

static void expect_line(const char *body, const char *line)
{
    if (!has_line(body, line))
        fail_msg("no line '%s' in:\n%s", line, body);
}

static void expect_no(const char *body, const char *text)
{
    if (strstr(body, text) != NULL)
        fail_msg("'%s' should not be in:\n%s", text, body);
}

static void base_source(struct env *e, struct node_metrics_source *src)
{
    memset(src, 0, sizeof(*src));
    src->node_id = "primary";
    src->role = "primary";
    src->version = "1.2.3";
    src->store = e->st;
    src->outbox = e->ob;
}

static void test_gauges_fresh_node(void **state)
{
    struct env *e = *state;
    struct node_metrics_source src;
    char *body;

    base_source(e, &src);
    body = scrape(&src);
    expect_line(body, "smtpsync_info{node=\"primary\",role=\"primary\",version=\"1.2.3\"} 1");
    expect_line(body, "smtpsync_store_revision 0");
    expect_line(body, "smtpsync_epoch 1"); /* a new store's first epoch */
    expect_line(body, "smtpsync_outbox_messages{priority=\"tokencode\",state=\"pending\"} 0");
    expect_line(body, "smtpsync_outbox_messages{priority=\"report\",state=\"pending\"} 0");
    expect_line(body, "smtpsync_outbox_messages{state=\"dead\"} 0");
    /* Every family is announced, even without samples. */
    expect_line(body, "# TYPE smtpsync_replica_state gauge");
    expect_line(body, "# TYPE smtpsync_certificate_expiry_timestamp_seconds gauge");
    expect_line(body, "# TYPE smtpsync_sender_sessions_active gauge");
    /* No replication, no sender, no [tls], no SMTP settings: no samples. */
    expect_no(body, "smtpsync_replica_state{");
    expect_no(body, "\nsmtpsync_primary_last_contact_timestamp_seconds ");
    expect_no(body, "\nsmtpsync_sender_sessions_active ");
    expect_no(body, "smtpsync_certificate_expiry_timestamp_seconds{");
    free(body);
}

static void test_gauges_outbox_depth(void **state)
{
    struct env *e = *state;
    struct node_metrics_source src;
    const char *rcpt[] = {"a@example.com"};
    struct outbox_new m[3];
    uint64_t ids[3];
    char *body;

    memset(m, 0, sizeof(m));
    for (size_t i = 0; i < 3; i++) {
        m[i].priority = i == 0 ? OUTBOX_TOKENCODE : OUTBOX_REPORT;
        m[i].rcpts = rcpt;
        m[i].nrcpts = 1;
        m[i].message = "Subject: x\r\n\r\nbody\r\n";
        m[i].message_len = strlen(m[i].message);
    }
    assert_int_equal(outbox_submit(e->ob, m, 3, (int64_t)time(NULL) * 1000, ids), 0);
    base_source(e, &src);
    src.role = "replica";
    body = scrape(&src);
    expect_line(body, "smtpsync_info{node=\"primary\",role=\"replica\",version=\"1.2.3\"} 1");
    expect_line(body, "smtpsync_outbox_messages{priority=\"tokencode\",state=\"pending\"} 1");
    expect_line(body, "smtpsync_outbox_messages{priority=\"report\",state=\"pending\"} 2");
    free(body);
}

/* A label value is escaped, whatever the node id holds. */
static void test_gauges_escape_labels(void **state)
{
    struct env *e = *state;
    struct node_metrics_source src;
    char *body;

    base_source(e, &src);
    src.version = "a\"b\\c\nd";
    body = scrape(&src);
    expect_line(body,
                "smtpsync_info{node=\"primary\",role=\"primary\",version=\"a\\\"b\\\\c\\nd\"} 1");
    free(body);
}

static void test_gauges_certificates(void **state)
{
    struct env *e = *state;
    struct node_metrics_source src;
    struct settings s;
    struct settings_problems problems = {0};
    struct store_commit c = {.actor = "local:test"};
    STACK_OF(X509) *certs = NULL;
    char line[256], why[128], *pem, *body;
    size_t len;
    uint64_t rev;
    long long earliest = -1;

    e->pki = testutil_make_pki("", "primary");
    if (e->pki == NULL)
        skip();
    e->ctx = testutil_mtls_ctx(e->pki, "primary");

    /* This node's own SMTP settings, trusting the test CA. */
    pem = testutil_read_file(testutil_cert_path("ca.pem"), &len);
    settings_init(&s);
    snprintf(s.instance, sizeof(s.instance), "primary");
    snprintf(s.hostname, sizeof(s.hostname), "mail.example.com");
    snprintf(s.from_address, sizeof(s.from_address), "noreply@example.com");
    snprintf(s.test_address, sizeof(s.test_address), "ops@example.com");
    s.smtps_enabled = true;
    s.tls_mode = SETTINGS_TLS_STRICT;
    assert_int_equal(settings_set_certificate(&s, pem, len, &problems), 0);
    assert_int_equal(store_draft_put(e->st, &s), 0);
    settings_clear(&s);
    assert_int_equal(store_save(e->st, NULL, 0, &c, &problems, &rev), 0);
    assert_int_equal(pem_read_certs(pem, len, &certs, why, sizeof(why)), 0);

    base_source(e, &src);
    src.ctx = e->ctx;
    body = scrape(&src);
    snprintf(line, sizeof(line), "smtpsync_store_revision %" PRIu64, rev);
    expect_line(body, line);
    snprintf(line, sizeof(line),
             "smtpsync_certificate_expiry_timestamp_seconds{cert=\"node\"} %lld",
             (long long)mtls_ctx_expiry(e->ctx));
    expect_line(body, line);
    assert_true(mtls_ctx_ca_expiry(e->ctx) > 0);
    snprintf(line, sizeof(line), "smtpsync_certificate_expiry_timestamp_seconds{cert=\"ca\"} %lld",
             (long long)mtls_ctx_ca_expiry(e->ctx));
    expect_line(body, line);
    for (int i = 0; i < sk_X509_num(certs); i++)
        if (earliest < 0 || pem_not_after(sk_X509_value(certs, i)) < earliest)
            earliest = pem_not_after(sk_X509_value(certs, i));
    snprintf(line, sizeof(line),
             "smtpsync_certificate_expiry_timestamp_seconds{cert=\"smtp_trusted\"} %lld", earliest);
    expect_line(body, line);
    free(body);

    /* Another node's id: its settings do not exist here, no sample. */
    src.node_id = "site-b";
    body = scrape(&src);
    expect_no(body, "cert=\"smtp_trusted\"");
    free(body);
    sk_X509_pop_free(certs, X509_free);
    free(pem);
}

static void test_replica_state_names(void **state)
{
    (void)state;
    assert_string_equal(node_metrics_replica_state(SMTPSYNC__REPLICA_STATE__REPLICA_STATE_IN_SYNC),
                        "in_sync");
    assert_string_equal(
        node_metrics_replica_state(SMTPSYNC__REPLICA_STATE__REPLICA_STATE_NEVER_SYNCED),
        "never_synced");
    assert_string_equal(node_metrics_replica_state(SMTPSYNC__REPLICA_STATE__REPLICA_STATE_FENCED),
                        "fenced");
    assert_null(node_metrics_replica_state(SMTPSYNC__REPLICA_STATE__REPLICA_STATE_UNSET));
    assert_null(node_metrics_replica_state((Smtpsync__ReplicaState)99));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_metrics_listen_loopback_accepted),
        cmocka_unit_test(test_metrics_listen_off),
        cmocka_unit_test(test_metrics_listen_not_loopback_refused),
        cmocka_unit_test(test_metrics_listen_change_needs_restart),
        cmocka_unit_test(test_metrics_listen_config_and_server_agree),
        cmocka_unit_test_setup_teardown(test_gauges_fresh_node, setup, teardown),
        cmocka_unit_test_setup_teardown(test_gauges_outbox_depth, setup, teardown),
        cmocka_unit_test_setup_teardown(test_gauges_escape_labels, setup, teardown),
        cmocka_unit_test_setup_teardown(test_gauges_certificates, setup, teardown),
        cmocka_unit_test(test_replica_state_names),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
