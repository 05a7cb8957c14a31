#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <openssl/x509_vfy.h>

#include "metrics.h"
#include "testutil.h"

static const char *const event_families[][2] = {
    {"smtpsync_replication_pushes_total", "counter"},
    {"smtpsync_replication_push_bytes_total", "counter"},
    {"smtpsync_deliveries_total", "counter"},
    {"smtpsync_tls_handshake_failures_total", "counter"},
    {"smtpsync_delivery_latency_seconds", "histogram"},
};
#define EVENT_FAMILIES (sizeof(event_families) / sizeof(event_families[0]))

static int setup(void **state)
{
    (void)state;
    metrics_reset();
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    metrics_reset();
    return 0;
}

static char *render(metrics_collect_cb collect, void *arg)
{
    char *body = NULL;
    size_t len = 0;

    assert_int_equal(metrics_render(collect, arg, &body, &len), 0);
    assert_non_null(body);
    assert_int_equal(strlen(body), len);
    assert_true(len > 0 && body[len - 1] == '\n');
    return body;
}

/* Number of lines of `body` that start with `prefix`. */
static size_t count_lines(const char *body, const char *prefix)
{
    size_t n = 0, plen = strlen(prefix);
    const char *line = body;

    while (*line != '\0') {
        const char *nl = strchr(line, '\n');

        if (strncmp(line, prefix, plen) == 0)
            n++;
        if (nl == NULL)
            break;
        line = nl + 1;
    }
    return n;
}

/* True if `line` (with its newline) is one whole line of `body`. */
static int has_line(const char *body, const char *line)
{
    size_t n = strlen(line);
    const char *p = body;

    while ((p = strstr(p, line)) != NULL) {
        if ((p == body || p[-1] == '\n') && p[n] == '\n')
            return 1;
        p++;
    }
    return 0;
}

/* Runs promtool's own parser and linter over `body` when promtool is
 * installed; the check is skipped (with a note) otherwise. */
static void promtool_check(const char *body)
{
    char *dir, path[4096], cmd[8192], out[4096];
    size_t n;
    FILE *f;
    int status;

    if (access("/usr/bin/promtool", X_OK) != 0) {
        print_message("promtool not installed: format check skipped\n");
        return;
    }
    dir = testutil_tmpdir();
    snprintf(path, sizeof(path), "%s/metrics.txt", dir);
    f = fopen(path, "w");
    assert_non_null(f);
    assert_int_equal(fwrite(body, 1, strlen(body), f), strlen(body));
    assert_int_equal(fclose(f), 0);
    snprintf(cmd, sizeof(cmd), "/usr/bin/promtool check metrics < '%s' 2>&1", path);
    f = popen(cmd, "r");
    assert_non_null(f);
    n = fread(out, 1, sizeof(out) - 1, f);
    out[n] = '\0';
    status = pclose(f);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        fail_msg("promtool check metrics: %s\n--- body ---\n%s", out, body);
    testutil_rmtree(dir);
    free(dir);
}

static void test_metrics_counter_with_labels(void **state)
{
    char *body;

    (void)state;
    metrics_count(METRICS_REPL_PUSHES, "site-b", "ok", 1);
    metrics_count(METRICS_REPL_PUSHES, "site-b", "ok", 2);
    metrics_count(METRICS_REPL_PUSHES, "site-b", "failed", 1);
    metrics_count(METRICS_REPL_PUSHES, "site-c", "ok", 1);
    metrics_count(METRICS_REPL_PUSH_BYTES, "site-b", "ok", 123456789012ULL);
    metrics_count(METRICS_DELIVERIES, "high", "delivered", 5);
    metrics_count(METRICS_DELIVERIES, NULL, NULL, 1);
    metrics_count(METRICS_TLS_HANDSHAKE_FAILURES, "smtp", METRICS_TLS_EXPIRED, 1);
    body = render(NULL, NULL);
    assert_true(
        has_line(body, "smtpsync_replication_pushes_total{replica=\"site-b\",result=\"ok\"} 3"));
    assert_true(has_line(
        body, "smtpsync_replication_pushes_total{replica=\"site-b\",result=\"failed\"} 1"));
    assert_true(
        has_line(body, "smtpsync_replication_pushes_total{replica=\"site-c\",result=\"ok\"} 1"));
    assert_int_equal(count_lines(body, "smtpsync_replication_pushes_total{"), 3);
    assert_true(has_line(
        body,
        "smtpsync_replication_push_bytes_total{replica=\"site-b\",result=\"ok\"} 123456789012"));
    assert_true(
        has_line(body, "smtpsync_deliveries_total{priority=\"high\",result=\"delivered\"} 5"));
    assert_true(has_line(body, "smtpsync_deliveries_total{priority=\"\",result=\"\"} 1"));
    assert_true(has_line(
        body, "smtpsync_tls_handshake_failures_total{channel=\"smtp\",reason=\"expired\"} 1"));
    assert_true(has_line(body, "# TYPE smtpsync_replication_pushes_total counter"));
    promtool_check(body);
    free(body);
}

static void test_metrics_counter_saturates(void **state)
{
    char *body;

    (void)state;
    metrics_count(METRICS_REPL_PUSH_BYTES, "r", "ok", UINT64_MAX - 1);
    metrics_count(METRICS_REPL_PUSH_BYTES, "r", "ok", 5);
    body = render(NULL, NULL);
    assert_true(has_line(body, "smtpsync_replication_push_bytes_total{replica=\"r\",result=\"ok\"} "
                               "18446744073709551615"));
    free(body);
}

static void test_metrics_hostile_label_values(void **state)
{
    char *body, *long_value, *expect;
    size_t long_len = 10000;

    (void)state;
    long_value = malloc(long_len + 1);
    assert_non_null(long_value);
    memset(long_value, 'x', long_len);
    long_value[long_len] = '\0';

    metrics_count(METRICS_REPL_PUSHES, "a\"b\\c\nd", "} 99\nsmtpsync_forged 1", 1);
    metrics_count(METRICS_REPL_PUSHES, long_value, "ok", 2);
    metrics_count(METRICS_REPL_PUSHES, "\\", "\"", 3);
    metrics_count(METRICS_REPL_PUSHES, "caf\xc3\xa9", "\t", 4);
    metrics_observe(METRICS_DELIVERY_LATENCY, "p\"\n\\", 1);
    body = render(NULL, NULL);

    assert_true(has_line(body, "smtpsync_replication_pushes_total{replica=\"a\\\"b\\\\c\\nd\","
                               "result=\"} 99\\nsmtpsync_forged 1\"} 1"));
    assert_int_equal(count_lines(body, "smtpsync_forged"), 0);
    assert_true(
        has_line(body, "smtpsync_replication_pushes_total{replica=\"\\\\\",result=\"\\\"\"} 3"));
    assert_true(has_line(body, "smtpsync_replication_pushes_total{replica=\"caf\xc3\xa9\","
                               "result=\"\t\"} 4"));
    assert_true(
        has_line(body, "smtpsync_delivery_latency_seconds_count{priority=\"p\\\"\\n\\\\\"} 1"));

    expect = malloc(long_len + 128);
    assert_non_null(expect);
    snprintf(expect, long_len + 128,
             "smtpsync_replication_pushes_total{replica=\"%s\",result=\"ok\"} 2", long_value);
    assert_true(has_line(body, expect));

    /* Every line is a comment or a sample of one of our families. */
    assert_int_equal(count_lines(body, ""),
                     count_lines(body, "# ") + count_lines(body, "smtpsync_"));
    promtool_check(body);
    free(expect);
    free(long_value);
    free(body);
}

static void test_metrics_overflow_to_other(void **state)
{
    char name[32], *body;

    (void)state;
    for (int i = 0; i < METRICS_MAX_SERIES + 10; i++) {
        snprintf(name, sizeof(name), "replica-%d", i);
        metrics_count(METRICS_REPL_PUSHES, name, "ok", 1);
        metrics_count(METRICS_REPL_PUSHES, name, "ok", 1);
    }
    /* A known series still counts after the table is full. */
    metrics_count(METRICS_REPL_PUSHES, "replica-0", "ok", 5);
    for (int i = 0; i < METRICS_MAX_SERIES + 3; i++) {
        snprintf(name, sizeof(name), "p%d", i);
        metrics_observe(METRICS_DELIVERY_LATENCY, name, 0.01);
    }
    body = render(NULL, NULL);
    assert_int_equal(count_lines(body, "smtpsync_replication_pushes_total{"),
                     METRICS_MAX_SERIES + 1);
    assert_true(
        has_line(body, "smtpsync_replication_pushes_total{replica=\"replica-0\",result=\"ok\"} 7"));
    assert_true(has_line(
        body, "smtpsync_replication_pushes_total{replica=\"replica-63\",result=\"ok\"} 2"));
    assert_int_equal(count_lines(body, "smtpsync_replication_pushes_total{replica=\"replica-64\""),
                     0);
    assert_true(
        has_line(body, "smtpsync_replication_pushes_total{replica=\"other\",result=\"other\"} 20"));
    assert_int_equal(count_lines(body, "smtpsync_delivery_latency_seconds_count{"),
                     METRICS_MAX_SERIES + 1);
    assert_true(has_line(body, "smtpsync_delivery_latency_seconds_count{priority=\"other\"} 3"));
    promtool_check(body);
    free(body);
}

/* A series that itself carries the overflow values absorbs the overflow,
 * so no label set appears twice. */
static void test_metrics_overflow_merges_with_existing_other(void **state)
{
    char name[32], *body;

    (void)state;
    metrics_count(METRICS_TLS_HANDSHAKE_FAILURES, "other", "other", 1);
    for (int i = 0; i < METRICS_MAX_SERIES + 4; i++) {
        snprintf(name, sizeof(name), "c%d", i);
        metrics_count(METRICS_TLS_HANDSHAKE_FAILURES, name, "other", 1);
    }
    metrics_count(METRICS_TLS_HANDSHAKE_FAILURES, "other", "other", 1);
    body = render(NULL, NULL);
    assert_int_equal(count_lines(body, "smtpsync_tls_handshake_failures_total{"),
                     METRICS_MAX_SERIES);
    /* 1 + the 5 names that found no room + 1. */
    assert_true(has_line(
        body, "smtpsync_tls_handshake_failures_total{channel=\"other\",reason=\"other\"} 7"));
    free(body);
}

/* Parses the `le` and value of each _bucket line for priority `p`. */
static size_t read_buckets(const char *body, const char *p, double *le, unsigned long long *v,
                           size_t max)
{
    char prefix[128];
    const char *line = body;
    size_t n = 0;

    snprintf(prefix, sizeof(prefix),
             "smtpsync_delivery_latency_seconds_bucket{priority=\"%s\",le=\"", p);
    while ((line = strstr(line, prefix)) != NULL && n < max) {
        const char *q = line + strlen(prefix);
        char *end;

        le[n] = strtod(q, &end);
        assert_true(end[0] == '"' && end[1] == '}' && end[2] == ' ');
        v[n] = strtoull(end + 3, &end, 10);
        assert_int_equal(*end, '\n');
        n++;
        line = end;
    }
    return n;
}

static void test_metrics_histogram(void **state)
{
    static const double bounds[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,  1,       2.5,
                                    5,     10,   30,    60,   300, 900,  3600, INFINITY};
    double le[32];
    unsigned long long v[32];
    char *body;
    size_t n;

    (void)state;
    metrics_observe(METRICS_DELIVERY_LATENCY, "normal", 0.005); /* on a bound: inclusive */
    metrics_observe(METRICS_DELIVERY_LATENCY, "normal", 0.3);
    metrics_observe(METRICS_DELIVERY_LATENCY, "normal", 7200); /* +Inf only */
    metrics_observe(METRICS_DELIVERY_LATENCY, "normal", -1);   /* a clock step: 0 */
    metrics_observe(METRICS_DELIVERY_LATENCY, "normal", NAN);  /* ignored */
    metrics_observe(METRICS_DELIVERY_LATENCY, "high", 2);
    body = render(NULL, NULL);

    n = read_buckets(body, "normal", le, v, 32);
    assert_int_equal(n, 17);
    for (size_t i = 0; i < n; i++) {
        assert_true(le[i] == bounds[i]);
        if (i > 0)
            assert_true(v[i] >= v[i - 1]);
    }
    assert_int_equal(v[0], 2);  /* 0.005 and 0 */
    assert_int_equal(v[5], 2);  /* le 0.25 */
    assert_int_equal(v[6], 3);  /* le 0.5 */
    assert_int_equal(v[15], 3); /* le 3600 */
    assert_int_equal(v[16], 4); /* +Inf == _count */
    assert_true(has_line(body, "smtpsync_delivery_latency_seconds_bucket{priority=\"normal\","
                               "le=\"0.005\"} 2"));
    assert_true(has_line(body, "smtpsync_delivery_latency_seconds_bucket{priority=\"normal\","
                               "le=\"+Inf\"} 4"));
    assert_true(has_line(body, "smtpsync_delivery_latency_seconds_bucket{priority=\"normal\","
                               "le=\"3600\"} 3"));
    assert_true(has_line(body, "smtpsync_delivery_latency_seconds_count{priority=\"normal\"} 4"));
    assert_true(
        has_line(body, "smtpsync_delivery_latency_seconds_sum{priority=\"normal\"} 7200.305"));

    n = read_buckets(body, "high", le, v, 32);
    assert_int_equal(n, 17);
    assert_int_equal(v[7], 0); /* le 1 */
    assert_int_equal(v[8], 1); /* le 2.5 */
    assert_int_equal(v[16], 1);
    assert_true(has_line(body, "smtpsync_delivery_latency_seconds_sum{priority=\"high\"} 2"));
    assert_true(has_line(body, "# TYPE smtpsync_delivery_latency_seconds histogram"));
    promtool_check(body);
    free(body);
}

static void test_metrics_tls_reason(void **state)
{
    (void)state;
    assert_string_equal(metrics_tls_reason(X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT), "unknown_ca");
    assert_string_equal(metrics_tls_reason(X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY),
                        "unknown_ca");
    assert_string_equal(metrics_tls_reason(X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE),
                        "unknown_ca");
    assert_string_equal(metrics_tls_reason(X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT), "unknown_ca");
    assert_string_equal(metrics_tls_reason(X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN), "unknown_ca");
    assert_string_equal(metrics_tls_reason(X509_V_ERR_CERT_UNTRUSTED), "unknown_ca");
    assert_string_equal(metrics_tls_reason(X509_V_ERR_CERT_HAS_EXPIRED), "expired");
    assert_string_equal(metrics_tls_reason(X509_V_ERR_CERT_NOT_YET_VALID), "not_yet_valid");
    assert_string_equal(metrics_tls_reason(X509_V_ERR_HOSTNAME_MISMATCH), "hostname_mismatch");
    assert_string_equal(metrics_tls_reason(X509_V_ERR_IP_ADDRESS_MISMATCH), "hostname_mismatch");
    assert_string_equal(metrics_tls_reason(X509_V_OK), "other");
    assert_string_equal(metrics_tls_reason(X509_V_ERR_CERT_REVOKED), "other");
    assert_string_equal(metrics_tls_reason(-1), "other");
    assert_string_equal(metrics_tls_reason(999999), "other");
}

static void test_metrics_every_family_without_samples(void **state)
{
    char line[256], *body;

    (void)state;
    body = render(NULL, NULL);
    for (size_t i = 0; i < EVENT_FAMILIES; i++) {
        snprintf(line, sizeof(line), "# HELP %s ", event_families[i][0]);
        assert_int_equal(count_lines(body, line), 1);
        snprintf(line, sizeof(line), "# TYPE %s %s", event_families[i][0], event_families[i][1]);
        assert_true(has_line(body, line));
    }
    /* No samples: every line is HELP or TYPE. */
    assert_int_equal(count_lines(body, ""), 2 * EVENT_FAMILIES);
    promtool_check(body);
    free(body);
}

static void collect(struct metrics_out *o, void *arg)
{
    int *calls = arg;

    (*calls)++;
    metrics_family(o, "smtpsync_settings_revision", METRICS_GAUGE,
                   "Revision of the settings held.\nSecond line with a \\ backslash.");
    metrics_sample(o, "smtpsync_settings_revision", NULL, 42);
    metrics_family(o, "smtpsync_test_values", METRICS_GAUGE, "Number formats.");
    metrics_sample(o, "smtpsync_test_values", (const char *const[]){"v", "int", NULL}, 3);
    metrics_sample(o, "smtpsync_test_values", (const char *const[]){"v", "neg", NULL}, -7);
    metrics_sample(o, "smtpsync_test_values", (const char *const[]){"v", "frac", NULL}, 0.1);
    metrics_sample(o, "smtpsync_test_values", (const char *const[]){"v", "half", NULL}, 1.5);
    metrics_sample(o, "smtpsync_test_values", (const char *const[]){"v", "big", NULL}, 1e20);
    metrics_sample(o, "smtpsync_test_values", (const char *const[]){"v", "time", NULL},
                   1764866486.0);
    metrics_sample(o, "smtpsync_test_values", (const char *const[]){"v", "zero", NULL}, -0.0);
    metrics_sample(o, "smtpsync_test_values", (const char *const[]){"v", "pinf", NULL}, INFINITY);
    metrics_sample(o, "smtpsync_test_values", (const char *const[]){"v", "ninf", NULL}, -INFINITY);
    metrics_sample(o, "smtpsync_test_values", (const char *const[]){"v", "nan", NULL}, NAN);
    metrics_sample(o, "smtpsync_test_values",
                   (const char *const[]){"v", "two", "replica", "a\"b", NULL}, 2);
}

static void test_metrics_collector_first_and_numbers(void **state)
{
    int calls = 0;
    char *body, *gauge, *event;

    (void)state;
    metrics_count(METRICS_DELIVERIES, "normal", "delivered", 1);
    body = render(collect, &calls);
    assert_int_equal(calls, 1);
    assert_true(strncmp(body, "# HELP smtpsync_settings_revision ", 34) == 0);
    assert_true(has_line(body, "# HELP smtpsync_settings_revision Revision of the settings "
                               "held.\\nSecond line with a \\\\ backslash."));
    assert_true(has_line(body, "# TYPE smtpsync_settings_revision gauge"));
    assert_true(has_line(body, "smtpsync_settings_revision 42"));
    gauge = strstr(body, "smtpsync_test_values{");
    event = strstr(body, "# HELP smtpsync_replication_pushes_total");
    assert_non_null(gauge);
    assert_non_null(event);
    assert_true(gauge < event);

    assert_true(has_line(body, "smtpsync_test_values{v=\"int\"} 3"));
    assert_true(has_line(body, "smtpsync_test_values{v=\"neg\"} -7"));
    assert_true(has_line(body, "smtpsync_test_values{v=\"frac\"} 0.1"));
    assert_true(has_line(body, "smtpsync_test_values{v=\"half\"} 1.5"));
    assert_true(has_line(body, "smtpsync_test_values{v=\"big\"} 1e+20"));
    assert_true(has_line(body, "smtpsync_test_values{v=\"time\"} 1764866486"));
    assert_true(has_line(body, "smtpsync_test_values{v=\"zero\"} 0"));
    assert_true(has_line(body, "smtpsync_test_values{v=\"pinf\"} +Inf"));
    assert_true(has_line(body, "smtpsync_test_values{v=\"ninf\"} -Inf"));
    assert_true(has_line(body, "smtpsync_test_values{v=\"nan\"} NaN"));
    assert_true(has_line(body, "smtpsync_test_values{v=\"two\",replica=\"a\\\"b\"} 2"));
    promtool_check(body);
    free(body);
}

static void test_metrics_reset(void **state)
{
    char *body;

    (void)state;
    metrics_count(METRICS_DELIVERIES, "normal", "delivered", 1);
    metrics_observe(METRICS_DELIVERY_LATENCY, "normal", 1);
    body = render(NULL, NULL);
    assert_int_equal(count_lines(body, "smtpsync_deliveries_total{"), 1);
    free(body);

    metrics_reset();
    body = render(NULL, NULL);
    assert_int_equal(count_lines(body, "smtpsync_"), 0);
    assert_int_equal(count_lines(body, "# TYPE "), EVENT_FAMILIES);
    free(body);

    /* Counting starts again from zero. */
    metrics_count(METRICS_DELIVERIES, "normal", "delivered", 1);
    body = render(NULL, NULL);
    assert_true(
        has_line(body, "smtpsync_deliveries_total{priority=\"normal\",result=\"delivered\"} 1"));
    free(body);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_metrics_counter_with_labels, setup, teardown),
        cmocka_unit_test_setup_teardown(test_metrics_counter_saturates, setup, teardown),
        cmocka_unit_test_setup_teardown(test_metrics_hostile_label_values, setup, teardown),
        cmocka_unit_test_setup_teardown(test_metrics_overflow_to_other, setup, teardown),
        cmocka_unit_test_setup_teardown(test_metrics_overflow_merges_with_existing_other, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_metrics_histogram, setup, teardown),
        cmocka_unit_test_setup_teardown(test_metrics_tls_reason, setup, teardown),
        cmocka_unit_test_setup_teardown(test_metrics_every_family_without_samples, setup, teardown),
        cmocka_unit_test_setup_teardown(test_metrics_collector_first_and_numbers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_metrics_reset, setup, teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
