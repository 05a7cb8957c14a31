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
#include <time.h>

#include <openssl/crypto.h>
#include <openssl/x509.h>

#include "error.h"
#include "pem.h"
#include "settings.h"
#include "testutil.h"

/* ---------------------------------------------------------------------
 * Helpers */

static void set(struct settings *s, const char *field, const char *value)
{
    struct settings_problems p = {0};
    int f = settings_field_lookup(field);

    assert_true(f >= 0);
    if (settings_set_field(s, (enum settings_field)f, value, &p) != 0)
        fail_msg("setting %s=%s: %s", field, value, p.count ? p.items[0].message : "?");
    assert_int_equal(p.count, 0);
}

/* A record that validates: the baseline every table case starts from. */
static void base_valid(struct settings *s)
{
    settings_init(s);
    set(s, "instance", "primary");
    set(s, "hostname", "mail.test");
    set(s, "from_address", "noreply@mail.test");
    set(s, "test_address", "admin@example.org");
}

static void load_cert(struct settings *s, const char *file)
{
    struct settings_problems p = {0};
    size_t len;
    char *pem = testutil_read_file(testutil_cert_path(file), &len);

    assert_int_equal(settings_set_certificate(s, pem, len, &p), 0);
    free(pem);
}

static const struct settings_problem *find_problem(const struct settings_problems *p,
                                                   const char *field)
{
    size_t i;

    for (i = 0; i < p->count; i++)
        if (strcmp(p->items[i].field, field) == 0)
            return &p->items[i];
    return NULL;
}

static void print_problems(const struct settings_problems *p)
{
    size_t i;

    for (i = 0; i < p->count; i++)
        print_message("  problem %s%s: %s\n", p->items[i].field,
                      p->items[i].incomplete ? " (incomplete)" : "", p->items[i].message);
}

/* A string of n copies of c, in a static buffer. */
static const char *repeat(char c, size_t n)
{
    static char buf[2048];

    assert_true(n < sizeof(buf));
    memset(buf, c, n);
    buf[n] = '\0';
    return buf;
}

/* ---------------------------------------------------------------------
 * The validation table */

#define MAX_SETS   8
#define MAX_EXPECT 5

struct vcase {
    const char *name;
    const char *sets[MAX_SETS * 2 + 1]; /* field, value, ..., NULL */
    const char *cert;                   /* certificate fixture, or NULL */
    void (*setup)(struct settings *);
    const char *password;
    const char *confirm;
    const char *expect[MAX_EXPECT]; /* fields that must have problems; none: valid */
    bool incomplete;                /* the problems are all "missing" ones */
};

#define TLS_ON "smtps_enabled", "on", "tls_mode", "starttls"

static void setup_label_64(struct settings *s)
{
    snprintf(s->hostname, sizeof(s->hostname), "%.64s.test", repeat('a', 64));
}

static void setup_hostname_253(struct settings *s)
{
    char h[SETTINGS_HOSTNAME_MAX + 1];

    /* Three labels of 63 and their dots (192), then one of 61. */
    memset(h, 'a', 192);
    h[63] = h[127] = h[191] = '.';
    memset(h + 192, 'b', 61);
    h[253] = '\0';
    set(s, "hostname", h);
}

static void setup_port_big(struct settings *s)
{
    s->port = 70000; /* only possible from a decoded record */
}

static void setup_local_64(struct settings *s)
{
    char a[128];

    snprintf(a, sizeof(a), "%.64s@mail.test", repeat('l', 64));
    set(s, "from_address", a);
}

static void setup_local_65(struct settings *s)
{
    char a[128];

    snprintf(a, sizeof(a), "%.65s@mail.test", repeat('l', 65));
    set(s, "from_address", a);
}

static void setup_control_chars(struct settings *s)
{
    /* As a corrupt or hostile protobuf record could carry them. */
    strcpy(s->hostname, "mail.test\r\nRCPT TO:<x@y>");
    strcpy(s->user_id, "user\tname");
}

static void setup_long_password(struct settings *s)
{
    assert_int_equal(settings_set_password(s, repeat('p', SETTINGS_PASSWORD_MAX + 1)), 0);
}

static void setup_password_crlf(struct settings *s)
{
    assert_int_equal(settings_set_password(s, "pass\r\nword"), 0);
}

static void setup_timeout_big(struct settings *s)
{
    s->timeouts.connect = SETTINGS_TIMEOUT_MAX + 1;
}

static void setup_relay_bad(struct settings *s)
{
    strcpy(s->relays[0].hostname, "bad..relay");
    s->relays[1].port = 65536;
    strcpy(s->relays[1].hostname, "relay.test");
    s->nrelays = 2;
}

static void setup_instance_missing(struct settings *s)
{
    s->instance[0] = '\0';
}

static void setup_instance_bad(struct settings *s)
{
    strcpy(s->instance, "-site");
}

static void setup_cert_and_key(struct settings *s)
{
    struct settings_problems p = {0};
    char *cert = testutil_read_file(testutil_cert_path("leaf.pem"), NULL);
    char *key = testutil_read_file(testutil_cert_path("leaf.key"), NULL);
    char *both = NULL;

    assert_true(asprintf(&both, "%s%s", cert, key) > 0);
    assert_int_equal(settings_set_certificate(s, both, strlen(both), &p), 0);
    free(both);
    free(key);
    free(cert);
}

static void setup_text_outside(struct settings *s)
{
    struct settings_problems p = {0};
    char *cert = testutil_read_file(testutil_cert_path("leaf.pem"), NULL);
    char *text = NULL;

    assert_true(asprintf(&text, "%sSubject: CN=mail.test\n", cert) > 0);
    assert_int_equal(settings_set_certificate(s, text, strlen(text), &p), 0);
    free(text);
    free(cert);
}

static void setup_empty_pem(struct settings *s)
{
    struct settings_problems p = {0};

    assert_int_equal(settings_set_certificate(s, "\n  \n", 4, &p), 0);
}

static void setup_four_bad(struct settings *s)
{
    set(s, "hostname", "mail..test");
    s->port = 100000;
    set(s, "from_address", "no-at-sign");
    set(s, "test_address", "a b@example.org");
}

static struct vcase cases[] = {
    {.name = "baseline_is_valid"},
    /* hostname */
    {.name = "hostname_ipv4", .sets = {"hostname", "192.0.2.10"}},
    {.name = "hostname_ipv6", .sets = {"hostname", "2001:db8::25"}},
    {.name = "hostname_ipv6_bracketed", .sets = {"hostname", "[2001:db8::25]"}},
    {.name = "hostname_single_label", .sets = {"hostname", "localhost"}},
    {.name = "hostname_punycode", .sets = {"hostname", "xn--bcher-kva.example"}},
    {.name = "hostname_253_characters", .setup = setup_hostname_253},
    {.name = "hostname_empty_label", .sets = {"hostname", "mail..example"}, .expect = {"hostname"}},
    {.name = "hostname_leading_hyphen",
     .sets = {"hostname", "-mail.example"},
     .expect = {"hostname"}},
    {.name = "hostname_trailing_hyphen",
     .sets = {"hostname", "mail-.example"},
     .expect = {"hostname"}},
    {.name = "hostname_underscore",
     .sets = {"hostname", "mail_relay.example"},
     .expect = {"hostname"}},
    {.name = "hostname_label_64", .setup = setup_label_64, .expect = {"hostname"}},
    {.name = "hostname_trailing_dot", .sets = {"hostname", "mail.test."}, .expect = {"hostname"}},
    {.name = "hostname_bad_ipv4", .sets = {"hostname", "192.168.1"}, .expect = {"hostname"}},
    {.name = "hostname_ipv4_over_255",
     .sets = {"hostname", "192.168.1.256"},
     .expect = {"hostname"}},
    {.name = "hostname_bad_ipv6", .sets = {"hostname", "2001:db8::zz"}, .expect = {"hostname"}},
    {.name = "hostname_bracketed_ipv4",
     .sets = {"hostname", "[192.0.2.1]"},
     .expect = {"hostname"}},
    {.name = "hostname_space", .sets = {"hostname", "mail test"}, .expect = {"hostname"}},
    {.name = "hostname_missing",
     .sets = {"hostname", ""},
     .expect = {"hostname"},
     .incomplete = true},
    /* port */
    {.name = "port_65535", .sets = {"port", "65535"}},
    {.name = "port_out_of_range", .setup = setup_port_big, .expect = {"port"}},
    /* from_address and test_address */
    {.name = "address_quoted_local", .sets = {"from_address", "\"john doe\"@mail.test"}},
    {.name = "address_quoted_pair", .sets = {"from_address", "\"a\\\"b\"@mail.test"}},
    {.name = "address_dots_and_plus", .sets = {"from_address", "first.last+tag@mail.test"}},
    {.name = "address_local_64", .setup = setup_local_64},
    {.name = "address_ipv4_literal", .sets = {"from_address", "postmaster@[192.0.2.1]"}},
    {.name = "address_ipv6_literal", .sets = {"test_address", "admin@[IPv6:2001:db8::1]"}},
    {.name = "address_leading_dot",
     .sets = {"from_address", ".first@mail.test"},
     .expect = {"from_address"}},
    {.name = "address_double_dot",
     .sets = {"from_address", "first..last@mail.test"},
     .expect = {"from_address"}},
    {.name = "address_trailing_dot",
     .sets = {"from_address", "first.@mail.test"},
     .expect = {"from_address"}},
    {.name = "address_missing_at",
     .sets = {"from_address", "noreply.mail.test"},
     .expect = {"from_address"}},
    {.name = "address_two_at",
     .sets = {"from_address", "a@b@mail.test"},
     .expect = {"from_address"}},
    {.name = "address_local_65", .setup = setup_local_65, .expect = {"from_address"}},
    {.name = "address_bad_literal",
     .sets = {"from_address", "user@[300.1.1.1]"},
     .expect = {"from_address"}},
    {.name = "address_unbracketed_ip",
     .sets = {"from_address", "user@192.0.2.1"},
     .expect = {"from_address"}},
    {.name = "address_bad_domain",
     .sets = {"from_address", "user@mail_test.example"},
     .expect = {"from_address"}},
    {.name = "address_unquoted_space",
     .sets = {"test_address", "a b@example.org"},
     .expect = {"test_address"}},
    {.name = "address_unclosed_quote",
     .sets = {"test_address", "\"ab@example.org"},
     .expect = {"test_address"}},
    {.name = "address_nothing_before_at",
     .sets = {"test_address", "@example.org"},
     .expect = {"test_address"}},
    {.name = "address_from_missing",
     .sets = {"from_address", ""},
     .expect = {"from_address"},
     .incomplete = true},
    {.name = "address_test_missing",
     .sets = {"test_address", ""},
     .expect = {"test_address"},
     .incomplete = true},
    /* logon */
    {.name = "logon_without_user_or_password",
     .sets = {"logon_required", "on", "allow_plaintext_auth", "on"},
     .expect = {"user_id", "password"},
     .incomplete = true},
    {.name = "logon_complete",
     .sets = {"logon_required", "yes", "user_id", "mailer", "allow_plaintext_auth", "on"},
     .password = "s3cret-pw",
     .confirm = "s3cret-pw"},
    {.name = "logon_password_mismatch",
     .sets = {"logon_required", "yes", "user_id", "mailer", "allow_plaintext_auth", "on"},
     .password = "s3cret-pw",
     .confirm = "s3cret-pW",
     .expect = {"password"}},
    {.name = "logon_confirmation_longer",
     .sets = {"logon_required", "yes", "user_id", "mailer", "allow_plaintext_auth", "on"},
     .password = "s3cret-pw",
     .confirm = "s3cret-pw2",
     .expect = {"password"}},
    {.name = "logon_in_clear_refused",
     .sets = {"logon_required", "yes", "user_id", "mailer"},
     .password = "s3cret-pw",
     .confirm = "s3cret-pw",
     .expect = {"logon_required"},
     .incomplete = true},
    {.name = "logon_password_too_long", .setup = setup_long_password, .expect = {"password"}},
    {.name = "logon_password_line_break", .setup = setup_password_crlf, .expect = {"password"}},
    /* SMTPS and the certificate */
    {.name = "smtps_without_certificate",
     .sets = {TLS_ON},
     .expect = {"trust_certificate"},
     .incomplete = true},
    {.name = "smtps_without_tls_mode",
     .sets = {"smtps_enabled", "on"},
     .cert = "leaf.pem",
     .expect = {"tls_mode"},
     .incomplete = true},
    {.name = "smtps_leaf_matches", .sets = {TLS_ON}, .cert = "leaf.pem"},
    {.name = "smtps_strict_leaf_matches",
     .sets = {"smtps_enabled", "on", "tls_mode", "strict"},
     .cert = "leaf.pem"},
    {.name = "cert_expired",
     .sets = {TLS_ON},
     .cert = "expired.pem",
     .expect = {"trust_certificate"}},
    {.name = "cert_not_yet_valid",
     .sets = {TLS_ON},
     .cert = "future.pem",
     .expect = {"trust_certificate"}},
    {.name = "cert_hostname_mismatch",
     .sets = {TLS_ON, "hostname", "other.test"},
     .cert = "leaf.pem",
     .expect = {"hostname"}},
    {.name = "cert_cn_only_matches", .sets = {TLS_ON, "hostname", "cn.test"}, .cert = "cnonly.pem"},
    {.name = "cert_cn_only_mismatch",
     .sets = {TLS_ON, "hostname", "mail.test"},
     .cert = "cnonly.pem",
     .expect = {"hostname"}},
    {.name = "cert_wildcard_matches",
     .sets = {TLS_ON, "hostname", "a.wild.test"},
     .cert = "leaf.pem"},
    {.name = "cert_wildcard_not_bare",
     .sets = {TLS_ON, "hostname", "wild.test"},
     .cert = "leaf.pem",
     .expect = {"hostname"}},
    {.name = "cert_wildcard_one_label",
     .sets = {TLS_ON, "hostname", "a.b.wild.test"},
     .cert = "leaf.pem",
     .expect = {"hostname"}},
    {.name = "cert_ip_san_ipv4", .sets = {TLS_ON, "hostname", "127.0.0.1"}, .cert = "leaf.pem"},
    {.name = "cert_ip_san_ipv6", .sets = {TLS_ON, "hostname", "::1"}, .cert = "leaf.pem"},
    {.name = "cert_ip_san_ipv6_bracketed",
     .sets = {TLS_ON, "hostname", "[::1]"},
     .cert = "leaf.pem"},
    {.name = "cert_ip_san_mismatch",
     .sets = {TLS_ON, "hostname", "127.0.0.2"},
     .cert = "leaf.pem",
     .expect = {"hostname"}},
    {.name = "cert_selfsigned_matches",
     .sets = {TLS_ON, "hostname", "mail.test"},
     .cert = "selfsigned.pem"},
    {.name = "cert_selfsigned_mismatch",
     .sets = {TLS_ON, "hostname", "other.test"},
     .cert = "selfsigned.pem",
     .expect = {"hostname"}},
    {.name = "cert_ca_only_any_hostname",
     .sets = {TLS_ON, "hostname", "anything.example"},
     .cert = "ca.pem"},
    {.name = "cert_chain_matches", .sets = {TLS_ON}, .cert = "chain.pem"},
    {.name = "cert_chain_mismatch",
     .sets = {TLS_ON, "hostname", "other.test"},
     .cert = "chain.pem",
     .expect = {"hostname"}},
    {.name = "cert_garbage",
     .sets = {TLS_ON},
     .cert = "garbage.pem",
     .expect = {"trust_certificate"}},
    {.name = "cert_private_key",
     .sets = {TLS_ON},
     .cert = "leaf.key",
     .expect = {"trust_certificate"}},
    {.name = "cert_with_private_key",
     .sets = {TLS_ON},
     .setup = setup_cert_and_key,
     .expect = {"trust_certificate"}},
    {.name = "cert_text_outside_blocks",
     .sets = {TLS_ON},
     .setup = setup_text_outside,
     .expect = {"trust_certificate"}},
    {.name = "cert_empty",
     .sets = {TLS_ON},
     .setup = setup_empty_pem,
     .expect = {"trust_certificate"}},
    {.name = "cert_checked_with_smtps_off", .cert = "expired.pem", .expect = {"trust_certificate"}},
    /* Fallback relays must be in the certificate too when SMTPS is on. */
    {.name = "smtps_relays_in_leaf",
     .sets = {TLS_ON, "fallback_relays", "a.wild.test:465, 127.0.0.1, [::1]:25"},
     .cert = "leaf.pem"},
    {.name = "smtps_relay_not_in_leaf",
     .sets = {TLS_ON, "fallback_relays", "a.wild.test, relay.example:465"},
     .cert = "leaf.pem",
     .expect = {"fallback_relays"}},
    {.name = "smtps_relay_in_chain_leaf",
     .sets = {TLS_ON, "fallback_relays", "b.wild.test"},
     .cert = "chain.pem"},
    {.name = "smtps_relay_with_ca_only",
     .sets = {TLS_ON, "hostname", "anything.example", "fallback_relays", "relay.example"},
     .cert = "ca.pem"},
    {.name = "relay_not_in_leaf_smtps_off",
     .sets = {"fallback_relays", "relay.example"},
     .cert = "leaf.pem"},
    /* Fields that SMTPS off makes irrelevant are kept and not reported. */
    {.name = "tls_mode_kept_with_smtps_off",
     .sets = {"tls_mode", "strict", "starttls_fallback", "on"}},
    /* the rest */
    {.name = "control_characters", .setup = setup_control_chars, .expect = {"hostname", "user_id"}},
    {.name = "timeout_too_long", .setup = setup_timeout_big, .expect = {"timeout_connect"}},
    {.name = "relays_valid", .sets = {"fallback_relays", "relay.test:2525, [::1]:25, 192.0.2.7"}},
    {.name = "relays_invalid", .setup = setup_relay_bad, .expect = {"fallback_relays"}},
    {.name = "instance_missing",
     .setup = setup_instance_missing,
     .expect = {"instance"},
     .incomplete = true},
    {.name = "instance_invalid", .setup = setup_instance_bad, .expect = {"instance"}},
    {.name = "many_problems_at_once",
     .setup = setup_four_bad,
     .expect = {"hostname", "port", "from_address", "test_address"}},
};

static void run_case(void **state)
{
    const struct vcase *c = *state;
    struct settings s;
    struct settings_problems p = {0};
    size_t i, j, nexpect = 0;
    int rc;

    base_valid(&s);
    for (i = 0; c->sets[i] != NULL; i += 2)
        set(&s, c->sets[i], c->sets[i + 1]);
    if (c->cert != NULL)
        load_cert(&s, c->cert);
    if (c->password != NULL)
        assert_int_equal(settings_set_password(&s, c->password), 0);
    if (c->setup != NULL)
        c->setup(&s);

    rc = settings_validate(&s, c->confirm, time(NULL), &p);
    print_problems(&p);
    for (j = 0; j < MAX_EXPECT && c->expect[j] != NULL; j++) {
        nexpect++;
        if (find_problem(&p, c->expect[j]) == NULL)
            fail_msg("%s: expected a problem on %s", c->name, c->expect[j]);
    }
    /* No problem on any field the case did not expect. */
    for (i = 0; i < p.count; i++) {
        bool expected = false;

        for (j = 0; j < nexpect; j++)
            expected = expected || strcmp(p.items[i].field, c->expect[j]) == 0;
        if (!expected)
            fail_msg("%s: unexpected problem on %s: %s", c->name, p.items[i].field,
                     p.items[i].message);
        /* A problem message never repeats a password. */
        if (c->password != NULL)
            assert_null(strstr(p.items[i].message, c->password));
    }
    if (nexpect == 0) {
        assert_int_equal(rc, 0);
    } else {
        assert_int_equal(rc, ERROR_INVALID);
        assert_int_equal(settings_problems_only_incomplete(&p), c->incomplete);
    }
    settings_clear(&s);
}

/* ---------------------------------------------------------------------
 * Messages of validation */

static void validate_one(const char *field, const char *value, const char *cert,
                         struct settings_problems *p)
{
    struct settings s;

    base_valid(&s);
    if (cert != NULL) {
        set(&s, "smtps_enabled", "on");
        set(&s, "tls_mode", "starttls");
        load_cert(&s, cert);
    }
    if (field != NULL)
        set(&s, field, value);
    assert_int_equal(settings_validate(&s, NULL, time(NULL), p), ERROR_INVALID);
    settings_clear(&s);
}

static void assert_message(const struct settings_problems *p, const char *field, const char *needle)
{
    const struct settings_problem *pr = find_problem(p, field);

    assert_non_null(pr);
    if (strstr(pr->message, needle) == NULL)
        fail_msg("%s: \"%s\" does not contain \"%s\"", field, pr->message, needle);
}

static void test_settings_validate_messages_explain(void **state)
{
    struct settings_problems p;

    (void)state;
    memset(&p, 0, sizeof(p));
    validate_one("hostname", "mail..example", NULL, &p);
    assert_message(&p, "hostname", "\"mail..example\" is not a valid host name or IP address");

    memset(&p, 0, sizeof(p));
    validate_one("hostname", "other.test", "leaf.pem", &p);
    assert_message(&p, "hostname", "\"other.test\" is not in the certificate (CN/SAN: ");
    assert_message(&p, "hostname", "*.wild.test");
    assert_message(&p, "hostname", "127.0.0.1");

    memset(&p, 0, sizeof(p));
    validate_one(NULL, NULL, "expired.pem", &p);
    assert_message(&p, "trust_certificate", "CN=mail.test");
    assert_message(&p, "trust_certificate", "expired on 2020-02-01");

    memset(&p, 0, sizeof(p));
    validate_one(NULL, NULL, "future.pem", &p);
    assert_message(&p, "trust_certificate", "not valid until 2099-01-01");

    memset(&p, 0, sizeof(p));
    validate_one(NULL, NULL, "leaf.key", &p);
    assert_message(&p, "trust_certificate", "contains a private key; import only the certificate");

    memset(&p, 0, sizeof(p));
    validate_one("from_address", "noreply.mail.test", NULL, &p);
    assert_message(&p, "from_address", "no \"@\"");

    /* The relay that the certificate does not name is named. */
    memset(&p, 0, sizeof(p));
    validate_one("fallback_relays", "mail.test, relay.example", "leaf.pem", &p);
    assert_int_equal(p.count, 1);
    assert_message(&p, "fallback_relays", "entry 2: \"relay.example\" is not in the certificate");
    assert_message(&p, "fallback_relays", "*.wild.test");
}

static void test_settings_validate_reports_every_problem(void **state)
{
    struct settings s;
    struct settings_problems p = {0};

    (void)state;
    base_valid(&s);
    setup_four_bad(&s);
    assert_int_equal(settings_validate(&s, NULL, time(NULL), &p), ERROR_INVALID);
    assert_int_equal(p.count, 4);
    assert_string_equal(p.items[0].field, "hostname");
    assert_non_null(find_problem(&p, "port"));
    assert_non_null(find_problem(&p, "from_address"));
    assert_non_null(find_problem(&p, "test_address"));
    assert_false(settings_problems_only_incomplete(&p));
    settings_clear(&s);

    /* An empty record: every required field is reported, all incomplete. */
    memset(&p, 0, sizeof(p));
    settings_init(&s);
    set(&s, "logon_required", "on");
    set(&s, "smtps_enabled", "on");
    assert_int_equal(settings_validate(&s, NULL, time(NULL), &p), ERROR_INVALID);
    assert_int_equal(p.count, 8);
    assert_true(settings_problems_only_incomplete(&p));
    settings_clear(&s);
}

static void test_settings_validate_uses_now(void **state)
{
    struct settings s;
    struct settings_problems p = {0};
    struct tm tm = {.tm_year = 2020 - 1900, .tm_mon = 0, .tm_mday = 15};

    (void)state;
    base_valid(&s);
    set(&s, "smtps_enabled", "on");
    set(&s, "tls_mode", "strict");
    load_cert(&s, "expired.pem");
    /* On 2020-01-15 the certificate was valid. */
    assert_int_equal(settings_validate(&s, NULL, timegm(&tm), &p), 0);
    settings_clear(&s);
}

/* ---------------------------------------------------------------------
 * settings_set_field */

static void test_settings_set_field_refuses_too_long(void **state)
{
    static const struct {
        const char *field;
        size_t max;
    } fields[] = {
        {"instance", SETTINGS_INSTANCE_MAX},    {"hostname", SETTINGS_HOSTNAME_MAX},
        {"from_address", SETTINGS_ADDRESS_MAX}, {"user_id", SETTINGS_USER_MAX},
        {"test_address", SETTINGS_ADDRESS_MAX},
    };
    struct settings s;
    size_t i;
    char expect[128], before[512], after[512];

    (void)state;
    base_valid(&s);
    set(&s, "user_id", "mailer");
    for (i = 0; i < sizeof(fields) / sizeof(fields[0]); i++) {
        struct settings_problems p = {0};
        int f = settings_field_lookup(fields[i].field);

        /* Exactly the limit is fine (instance ids must still be valid). */
        assert_int_equal(settings_set_field(&s, f, repeat('a', fields[i].max), &p), 0);
        assert_int_equal(settings_field_format(&s, f, before, sizeof(before)), 0);
        assert_int_equal(strlen(before), fields[i].max);

        assert_int_equal(settings_set_field(&s, f, repeat('b', fields[i].max + 1), &p),
                         ERROR_INVALID);
        assert_int_equal(p.count, 1);
        assert_string_equal(p.items[0].field, fields[i].field);
        snprintf(expect, sizeof(expect), "is too long (%zu characters; at most %zu)",
                 fields[i].max + 1, fields[i].max);
        assert_string_equal(p.items[0].message, expect);
        /* Unchanged: neither truncated nor cleared. */
        assert_int_equal(settings_field_format(&s, f, after, sizeof(after)), 0);
        assert_string_equal(before, after);
    }
    settings_clear(&s);
}

static void test_settings_set_field_refuses_control_characters(void **state)
{
    static const char *const fields[] = {
        "instance", "hostname",       "from_address", "user_id",         "test_address",
        "port",     "logon_required", "tls_mode",     "timeout_connect", "fallback_relays"};
    static const char *const values[] = {"mail.test\r\nX", "a\tb", "x\x7fy", "\x1b[31m"};
    struct settings s, orig;
    size_t i, j;

    (void)state;
    base_valid(&s);
    base_valid(&orig);
    for (i = 0; i < sizeof(fields) / sizeof(fields[0]); i++) {
        for (j = 0; j < sizeof(values) / sizeof(values[0]); j++) {
            struct settings_problems p = {0};
            int f = settings_field_lookup(fields[i]);

            assert_int_equal(settings_set_field(&s, f, values[j], &p), ERROR_INVALID);
            assert_int_equal(p.count, 1);
            assert_string_equal(p.items[0].field, fields[i]);
            assert_non_null(strstr(p.items[0].message, "control character"));
            assert_false(settings_field_differs(&s, &orig, f));
        }
    }
    settings_clear(&s);
    settings_clear(&orig);
}

static void test_settings_set_field_port(void **state)
{
    static const char *const bad[] = {
        "65536", "-1", "+25", " 25", "25 ", "abc", "", "99999999999999999999", "0x19", "25.0"};
    struct settings s;
    struct settings_problems p = {0};
    size_t i;

    (void)state;
    settings_init(&s);
    set(&s, "port", "25");
    assert_int_equal(s.port, 25);
    set(&s, "port", "65535");
    assert_int_equal(s.port, 65535);
    set(&s, "port", "default");
    assert_int_equal(s.port, 0);
    set(&s, "port", "2525");
    set(&s, "port", "0");
    assert_int_equal(s.port, 0);
    set(&s, "port", "1");
    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_int_equal(settings_set_field(&s, SETTINGS_F_PORT, bad[i], &p), ERROR_INVALID);
        assert_int_equal(s.port, 1);
    }
    assert_int_equal(p.count, sizeof(bad) / sizeof(bad[0]));
    assert_string_equal(p.items[0].field, "port");
    settings_clear(&s);
}

static void test_settings_set_field_bool(void **state)
{
    static const char *const on[] = {"on", "yes", "true", "1", "ON", "Yes"};
    static const char *const off[] = {"off", "no", "false", "0", "OFF", "False"};
    struct settings s;
    struct settings_problems p = {0};
    size_t i;

    (void)state;
    settings_init(&s);
    for (i = 0; i < sizeof(on) / sizeof(on[0]); i++) {
        set(&s, "logon_required", on[i]);
        assert_true(s.logon_required);
        set(&s, "logon_required", off[i]);
        assert_false(s.logon_required);
    }
    set(&s, "smtps-enabled", "on");
    set(&s, "starttls_fallback", "yes");
    set(&s, "allow_plaintext_auth", "true");
    assert_true(s.smtps_enabled && s.starttls_fallback && s.allow_plaintext_auth);
    assert_int_equal(settings_set_field(&s, SETTINGS_F_SMTPS_ENABLED, "maybe", &p), ERROR_INVALID);
    assert_int_equal(settings_set_field(&s, SETTINGS_F_SMTPS_ENABLED, "", &p), ERROR_INVALID);
    assert_true(s.smtps_enabled);
    assert_int_equal(p.count, 2);
    assert_string_equal(p.items[0].field, "smtps_enabled");
    settings_clear(&s);
}

static void test_settings_set_field_tls_mode(void **state)
{
    struct settings s;
    struct settings_problems p = {0};

    (void)state;
    settings_init(&s);
    assert_int_equal(s.tls_mode, SETTINGS_TLS_UNSET);
    set(&s, "tls_mode", "strict");
    assert_int_equal(s.tls_mode, SETTINGS_TLS_STRICT);
    set(&s, "tls-mode", "STARTTLS");
    assert_int_equal(s.tls_mode, SETTINGS_TLS_STARTTLS);
    assert_int_equal(settings_set_field(&s, SETTINGS_F_TLS_MODE, "ssl", &p), ERROR_INVALID);
    assert_int_equal(s.tls_mode, SETTINGS_TLS_STARTTLS);
    set(&s, "tls_mode", "");
    assert_int_equal(s.tls_mode, SETTINGS_TLS_UNSET);
    assert_string_equal(settings_tls_mode_name(SETTINGS_TLS_STRICT), "strict");
    assert_string_equal(settings_tls_mode_name(SETTINGS_TLS_STARTTLS), "starttls");
    assert_string_equal(settings_tls_mode_name(SETTINGS_TLS_UNSET), "");
    settings_clear(&s);
}

static void test_settings_set_field_timeouts(void **state)
{
    struct settings s;
    struct settings_problems p = {0};
    char buf[32];
    int f;

    (void)state;
    settings_init(&s);
    for (f = SETTINGS_F_TIMEOUT_CONNECT; f <= SETTINGS_F_TIMEOUT_DATA_TERM; f++) {
        assert_int_equal(settings_set_field(&s, f, "30", &p), 0);
        assert_int_equal(settings_field_format(&s, f, buf, sizeof(buf)), 0);
        assert_string_equal(buf, "30");
        assert_int_equal(settings_set_field(&s, f, "3601", &p), ERROR_INVALID);
        assert_int_equal(settings_set_field(&s, f, "-5", &p), ERROR_INVALID);
        assert_int_equal(settings_set_field(&s, f, "10m", &p), ERROR_INVALID);
        assert_int_equal(settings_field_format(&s, f, buf, sizeof(buf)), 0);
        assert_string_equal(buf, "30");
        assert_int_equal(settings_set_field(&s, f, "default", &p), 0);
        assert_int_equal(settings_field_format(&s, f, buf, sizeof(buf)), 0);
        assert_string_equal(buf, "default");
        assert_int_equal(settings_set_field(&s, f, "3600", &p), 0);
        assert_int_equal(settings_set_field(&s, f, "0", &p), 0);
    }
    assert_int_equal(s.timeouts.connect, 0);
    assert_int_equal(p.count, 3 * (SETTINGS_F_TIMEOUT_DATA_TERM - SETTINGS_F_TIMEOUT_CONNECT + 1));
    set(&s, "timeout-data-block", "180");
    assert_int_equal(s.timeouts.data_block, 180);
    settings_clear(&s);
}

static void test_settings_set_field_relays(void **state)
{
    static const char *const bad[] = {
        "::1",
        "[::1",
        "[::1]x",
        "relay.test:0",
        "relay.test:x",
        "relay.test:",
        "a.test,,b.test",
        "a.test,b.test,c.test,d.test,e.test",
        "bad..relay",
        "[relay.test]:25",
        "relay_x.test",
        "a.test:70000",
    };
    struct settings s;
    struct settings_problems p = {0};
    char buf[256];
    size_t i;

    (void)state;
    settings_init(&s);
    set(&s, "fallback_relays", "relay.test:2525, [2001:db8::1]:25,192.0.2.7 , [::1]");
    assert_int_equal(s.nrelays, 4);
    assert_string_equal(s.relays[0].hostname, "relay.test");
    assert_int_equal(s.relays[0].port, 2525);
    assert_string_equal(s.relays[1].hostname, "2001:db8::1");
    assert_int_equal(s.relays[1].port, 25);
    assert_string_equal(s.relays[2].hostname, "192.0.2.7");
    assert_int_equal(s.relays[2].port, 0);
    assert_string_equal(s.relays[3].hostname, "::1");
    assert_int_equal(settings_field_format(&s, SETTINGS_F_FALLBACK_RELAYS, buf, sizeof(buf)), 0);
    assert_string_equal(buf, "relay.test:2525, [2001:db8::1]:25, 192.0.2.7, [::1]");

    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        memset(&p, 0, sizeof(p));
        if (settings_set_field(&s, SETTINGS_F_FALLBACK_RELAYS, bad[i], &p) != ERROR_INVALID)
            fail_msg("relays \"%s\" accepted", bad[i]);
        assert_int_equal(p.count, 1);
        assert_string_equal(p.items[0].field, "fallback_relays");
        assert_int_equal(s.nrelays, 4);
    }
    set(&s, "fallback_relays", "");
    assert_int_equal(s.nrelays, 0);
    settings_clear(&s);
}

static void test_settings_set_field_instance(void **state)
{
    static const char *const bad[] = {"", "-site", ".site", "site b", "site/b", "sité"};
    struct settings s;
    struct settings_problems p = {0};
    size_t i;

    (void)state;
    settings_init(&s);
    set(&s, "instance", "site-b");
    set(&s, "instance", "Site_2.east");
    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(settings_set_field(&s, SETTINGS_F_INSTANCE, bad[i], &p), ERROR_INVALID);
    assert_string_equal(s.instance, "Site_2.east");
    assert_true(settings_instance_valid("primary"));
    assert_true(settings_instance_valid(repeat('x', SETTINGS_INSTANCE_MAX)));
    assert_false(settings_instance_valid(repeat('x', SETTINGS_INSTANCE_MAX + 1)));
    assert_false(settings_instance_valid(NULL));
    settings_clear(&s);
}

static void test_settings_set_field_strings(void **state)
{
    struct settings s;

    (void)state;
    settings_init(&s);
    set(&s, "hostname", "mail.test");
    set(&s, "from-address", "noreply@mail.test");
    set(&s, "user_id", "DOMAIN\\mailer");
    set(&s, "test_address", "admin@example.org");
    assert_string_equal(s.hostname, "mail.test");
    assert_string_equal(s.from_address, "noreply@mail.test");
    assert_string_equal(s.user_id, "DOMAIN\\mailer");
    assert_string_equal(s.test_address, "admin@example.org");
    /* The empty string clears a text field. */
    set(&s, "user_id", "");
    assert_string_equal(s.user_id, "");
    settings_clear(&s);
}

static void test_settings_set_field_refuses_secrets(void **state)
{
    struct settings s;
    struct settings_problems p = {0};

    (void)state;
    settings_init(&s);
    assert_int_equal(settings_set_field(&s, SETTINGS_F_PASSWORD, "hunter2", &p), ERROR_INVALID);
    assert_int_equal(settings_set_field(&s, SETTINGS_F_TRUST_CERTIFICATE, "-----BEGIN", &p),
                     ERROR_INVALID);
    assert_int_equal(p.count, 2);
    assert_string_equal(p.items[0].field, "password");
    assert_null(strstr(p.items[0].message, "hunter2"));
    assert_string_equal(p.items[1].field, "trust_certificate");
    assert_non_null(strstr(p.items[1].message, "import"));
    assert_false(s.password_set);
    assert_null(s.password);
    assert_null(s.trust_certificate);
    settings_clear(&s);
}

/* ---------------------------------------------------------------------
 * Password, certificate, copy */

static void test_settings_set_password_draws_new_id(void **state)
{
    struct settings s;
    uint8_t zero[SETTINGS_SECRET_ID_LEN] = {0}, first[SETTINGS_SECRET_ID_LEN];

    (void)state;
    settings_init(&s);
    assert_false(s.password_set);
    assert_int_equal(settings_set_password(&s, "one"), 0);
    assert_true(s.password_set);
    assert_string_equal(s.password, "one");
    assert_memory_not_equal(s.password_id, zero, sizeof(zero));
    memcpy(first, s.password_id, sizeof(first));
    assert_int_equal(settings_set_password(&s, "one"), 0);
    assert_memory_not_equal(s.password_id, first, sizeof(first));
    assert_int_equal(settings_set_password(&s, NULL), 0);
    assert_false(s.password_set);
    assert_null(s.password);
    assert_memory_equal(s.password_id, zero, sizeof(zero));
    settings_clear(&s);
}

static void test_settings_set_certificate_limits(void **state)
{
    struct settings s;
    struct settings_problems p = {0};
    char *big = malloc(SETTINGS_PEM_MAX + 1);

    (void)state;
    assert_non_null(big);
    memset(big, '\n', SETTINGS_PEM_MAX + 1);
    settings_init(&s);
    load_cert(&s, "leaf.pem");
    assert_int_equal(settings_set_certificate(&s, big, SETTINGS_PEM_MAX + 1, &p), ERROR_INVALID);
    assert_int_equal(p.count, 1);
    assert_string_equal(p.items[0].field, "trust_certificate");
    assert_non_null(strstr(s.trust_certificate, "BEGIN CERTIFICATE"));
    assert_int_equal(settings_set_certificate(&s, "abc\0def", 7, &p), ERROR_INVALID);
    assert_non_null(strstr(s.trust_certificate, "BEGIN CERTIFICATE"));
    assert_int_equal(settings_set_certificate(&s, big, SETTINGS_PEM_MAX, &p), 0);
    assert_int_equal(strlen(s.trust_certificate), SETTINGS_PEM_MAX);
    assert_int_equal(settings_set_certificate(&s, NULL, 0, &p), 0);
    assert_null(s.trust_certificate);
    free(big);
    settings_clear(&s);
}

static void test_settings_copy_is_deep(void **state)
{
    struct settings a, b;
    int f;

    (void)state;
    base_valid(&a);
    settings_init(&b);
    set(&b, "hostname", "stale.test"); /* cleared by the copy */
    assert_int_equal(settings_set_password(&b, "old"), 0);
    set(&a, "fallback_relays", "relay.test:2525");
    assert_int_equal(settings_set_password(&a, "s3cret-pw"), 0);
    load_cert(&a, "chain.pem");
    assert_int_equal(settings_copy(&b, &a), 0);
    assert_ptr_not_equal(a.password, b.password);
    assert_ptr_not_equal(a.trust_certificate, b.trust_certificate);
    assert_string_equal(b.password, "s3cret-pw");
    assert_string_equal(a.trust_certificate, b.trust_certificate);
    for (f = 0; f < SETTINGS_F_COUNT; f++)
        assert_false(settings_field_differs(&a, &b, f));
    /* Changing or freeing the source leaves the copy intact. */
    a.trust_certificate[0] = 'X';
    assert_true(settings_field_differs(&a, &b, SETTINGS_F_TRUST_CERTIFICATE));
    settings_clear(&a);
    assert_string_equal(b.password, "s3cret-pw");
    assert_non_null(strstr(b.trust_certificate, "BEGIN CERTIFICATE"));
    assert_string_equal(b.hostname, "mail.test");
    settings_clear(&b);
}

static void test_settings_field_differs(void **state)
{
    struct settings a, b;

    (void)state;
    base_valid(&a);
    base_valid(&b);
    assert_false(settings_field_differs(&a, &b, SETTINGS_F_PASSWORD));
    /* The same password set twice is a change: a new id each time. */
    assert_int_equal(settings_set_password(&a, "same"), 0);
    assert_int_equal(settings_set_password(&b, "same"), 0);
    assert_true(settings_field_differs(&a, &b, SETTINGS_F_PASSWORD));
    /* Same id, plaintext loaded in only one: no difference. */
    memcpy(b.password_id, a.password_id, SETTINGS_SECRET_ID_LEN);
    OPENSSL_cleanse(b.password, strlen(b.password));
    free(b.password);
    b.password = NULL;
    assert_false(settings_field_differs(&a, &b, SETTINGS_F_PASSWORD));
    set(&b, "port", "2525");
    assert_true(settings_field_differs(&a, &b, SETTINGS_F_PORT));
    assert_false(settings_field_differs(&a, &b, SETTINGS_F_HOSTNAME));
    set(&b, "fallback_relays", "r.test");
    assert_true(settings_field_differs(&a, &b, SETTINGS_F_FALLBACK_RELAYS));
    load_cert(&a, "leaf.pem");
    assert_true(settings_field_differs(&a, &b, SETTINGS_F_TRUST_CERTIFICATE));
    load_cert(&b, "leaf.pem");
    assert_false(settings_field_differs(&a, &b, SETTINGS_F_TRUST_CERTIFICATE));
    settings_clear(&a);
    settings_clear(&b);
}

/* ---------------------------------------------------------------------
 * Display */

static void test_settings_field_format_hides_password(void **state)
{
    struct settings s;
    char buf[1024];
    int f;

    (void)state;
    base_valid(&s);
    assert_int_equal(settings_field_format(&s, SETTINGS_F_PASSWORD, buf, sizeof(buf)), 0);
    assert_string_equal(buf, "");
    set(&s, "logon_required", "on");
    set(&s, "user_id", "mailer");
    assert_int_equal(settings_set_password(&s, "Hunter2-secret"), 0);
    for (f = 0; f < SETTINGS_F_COUNT; f++) {
        assert_int_equal(settings_field_format(&s, f, buf, sizeof(buf)), 0);
        assert_null(strstr(buf, "Hunter2"));
    }
    assert_int_equal(settings_field_format(&s, SETTINGS_F_PASSWORD, buf, sizeof(buf)), 0);
    assert_string_equal(buf, SETTINGS_PASSWORD_MASK);
    settings_clear(&s);
}

static void test_settings_field_format_values(void **state)
{
    struct settings s;
    char buf[256];

    (void)state;
    base_valid(&s);
    assert_int_equal(settings_field_format(&s, SETTINGS_F_PORT, buf, sizeof(buf)), 0);
    assert_string_equal(buf, "25 (default)");
    set(&s, "smtps_enabled", "on");
    set(&s, "tls_mode", "starttls");
    assert_int_equal(settings_field_format(&s, SETTINGS_F_PORT, buf, sizeof(buf)), 0);
    assert_string_equal(buf, "587 (default)");
    assert_int_equal(settings_port(&s), 587);
    set(&s, "tls_mode", "strict");
    assert_int_equal(settings_field_format(&s, SETTINGS_F_PORT, buf, sizeof(buf)), 0);
    assert_string_equal(buf, "465 (default)");
    set(&s, "port", "2525");
    assert_int_equal(settings_field_format(&s, SETTINGS_F_PORT, buf, sizeof(buf)), 0);
    assert_string_equal(buf, "2525");
    assert_int_equal(settings_port(&s), 2525);

    assert_int_equal(settings_field_format(&s, SETTINGS_F_SMTPS_ENABLED, buf, sizeof(buf)), 0);
    assert_string_equal(buf, "on");
    assert_int_equal(settings_field_format(&s, SETTINGS_F_LOGON_REQUIRED, buf, sizeof(buf)), 0);
    assert_string_equal(buf, "off");
    assert_int_equal(settings_field_format(&s, SETTINGS_F_TLS_MODE, buf, sizeof(buf)), 0);
    assert_string_equal(buf, "strict");
    assert_int_equal(settings_field_format(&s, SETTINGS_F_HOSTNAME, buf, sizeof(buf)), 0);
    assert_string_equal(buf, "mail.test");
    assert_int_equal(settings_field_format(&s, SETTINGS_F_TIMEOUT_RCPT, buf, sizeof(buf)), 0);
    assert_string_equal(buf, "default");

    assert_int_equal(settings_field_format(&s, SETTINGS_F_TRUST_CERTIFICATE, buf, sizeof(buf)), 0);
    assert_string_equal(buf, "");
    load_cert(&s, "chain.pem");
    assert_int_equal(settings_field_format(&s, SETTINGS_F_TRUST_CERTIFICATE, buf, sizeof(buf)), 0);
    assert_true(strncmp(buf, "2 certificates; CN=mail.test; expires 20", 40) == 0);
    assert_int_equal(strlen(buf), 48);
    load_cert(&s, "expired.pem");
    assert_int_equal(settings_field_format(&s, SETTINGS_F_TRUST_CERTIFICATE, buf, sizeof(buf)), 0);
    assert_string_equal(buf, "1 certificate; CN=mail.test; expires 2020-02-01");

    /* Too small a buffer: -ENOSPC, still a terminated string. */
    assert_int_equal(settings_field_format(&s, SETTINGS_F_HOSTNAME, buf, 5), -ENOSPC);
    assert_string_equal(buf, "mail");
    settings_clear(&s);
}

static void test_settings_field_lookup(void **state)
{
    int f;

    (void)state;
    for (f = 0; f < SETTINGS_F_COUNT; f++)
        assert_int_equal(settings_field_lookup(settings_field_name(f)), f);
    assert_int_equal(settings_field_lookup("from-address"), SETTINGS_F_FROM_ADDRESS);
    assert_int_equal(settings_field_lookup("timeout-data-term"), SETTINGS_F_TIMEOUT_DATA_TERM);
    assert_int_equal(settings_field_lookup("trust_certificate"), SETTINGS_F_TRUST_CERTIFICATE);
    assert_int_equal(settings_field_lookup("bogus"), ERROR_NOT_FOUND);
    assert_int_equal(settings_field_lookup(""), ERROR_NOT_FOUND);
    assert_int_equal(settings_field_lookup("hostname2"), ERROR_NOT_FOUND);
    assert_int_equal(settings_field_lookup(NULL), ERROR_NOT_FOUND);
    assert_int_equal(settings_field_lookup(repeat('a', 100)), ERROR_NOT_FOUND);
    assert_string_equal(settings_field_name(SETTINGS_F_TEST_ADDRESS), "test_address");
}

/* ---------------------------------------------------------------------
 * Problems list */

static void test_settings_problems_bounded(void **state)
{
    struct settings_problems p = {0};
    int i;

    (void)state;
    assert_true(settings_problems_only_incomplete(&p));
    settings_problem_add(&p, "hostname", true, "is required");
    assert_true(settings_problems_only_incomplete(&p));
    for (i = 1; i < SETTINGS_PROBLEMS_MAX + 12; i++)
        settings_problem_add(&p, "user_id", true, "problem %d %s", i, repeat('m', 400));
    assert_int_equal(p.count, SETTINGS_PROBLEMS_MAX);
    assert_int_equal(p.dropped, 12);
    assert_int_equal(strlen(p.items[1].message), SETTINGS_PROBLEM_TEXT_MAX - 1);
    /* Dropped problems are of unknown kind. */
    assert_false(settings_problems_only_incomplete(&p));
    memset(&p, 0, sizeof(p));
    settings_problem_add(&p, "port", false, "bad");
    assert_false(settings_problems_only_incomplete(&p));
}

/* ---------------------------------------------------------------------
 * pem */

static int read_pem(const char *text, STACK_OF(X509) **certs, char *why, size_t len)
{
    return pem_read_certs(text, strlen(text), certs, why, len);
}

static void test_settings_pem_reads_bundles(void **state)
{
    STACK_OF(X509) *certs = NULL;
    char why[256], subject[128], *pem, *crlf;
    size_t len, i, j;

    (void)state;
    pem = testutil_read_file(testutil_cert_path("chain.pem"), &len);
    assert_int_equal(pem_read_certs(pem, len, &certs, why, sizeof(why)), 0);
    assert_int_equal(sk_X509_num(certs), 2);
    pem_subject(sk_X509_value(certs, 0), subject, sizeof(subject));
    assert_string_equal(subject, "CN=mail.test");
    pem_subject(sk_X509_value(certs, 1), subject, sizeof(subject));
    assert_string_equal(subject, "CN=smtpsync test CA");
    sk_X509_pop_free(certs, X509_free);

    /* CRLF line endings and blank lines around blocks are fine. */
    crlf = malloc(2 * len + 8);
    assert_non_null(crlf);
    j = 0;
    crlf[j++] = '\r';
    crlf[j++] = '\n';
    for (i = 0; i < len; i++) {
        if (pem[i] == '\n')
            crlf[j++] = '\r';
        crlf[j++] = pem[i];
    }
    crlf[j++] = ' ';
    crlf[j++] = '\n';
    assert_int_equal(pem_read_certs(crlf, j, &certs, why, sizeof(why)), 0);
    assert_int_equal(sk_X509_num(certs), 2);
    sk_X509_pop_free(certs, X509_free);
    free(crlf);
    free(pem);

    pem = testutil_read_file(testutil_cert_path("expired.pem"), &len);
    assert_int_equal(pem_read_certs(pem, len, &certs, why, sizeof(why)), 0);
    assert_int_equal(pem_not_after(sk_X509_value(certs, 0)), 1580515200LL); /* 2020-02-01 */
    sk_X509_pop_free(certs, X509_free);
    free(pem);
}

static void test_settings_pem_refuses_with_reason(void **state)
{
    STACK_OF(X509) *certs = (STACK_OF(X509) *)1; /* must come back NULL on failure */
    char why[256], *leaf, *text;
    size_t len;

    (void)state;
    leaf = testutil_read_file(testutil_cert_path("leaf.pem"), &len);

    assert_int_equal(read_pem("", &certs, why, sizeof(why)), ERROR_INVALID);
    assert_null(certs);
    assert_non_null(strstr(why, "no certificate"));

    assert_true(asprintf(&text, "hello\n%s", leaf) > 0);
    assert_int_equal(read_pem(text, &certs, why, sizeof(why)), ERROR_INVALID);
    assert_string_equal(why, "line 1: unexpected text outside a certificate block");
    free(text);

    assert_true(asprintf(&text, "%s\n\ntrailing words\n", leaf) > 0);
    assert_int_equal(read_pem(text, &certs, why, sizeof(why)), ERROR_INVALID);
    assert_non_null(strstr(why, "unexpected text outside a certificate block"));
    free(text);

    /* Cut short: no END line. */
    text = strdup(leaf);
    *strstr(text, "-----END") = '\0';
    assert_int_equal(read_pem(text, &certs, why, sizeof(why)), ERROR_INVALID);
    assert_non_null(strstr(why, "not closed"));
    free(text);

    /* A damaged body. */
    text = strdup(leaf);
    text[40] = '*';
    assert_int_equal(read_pem(text, &certs, why, sizeof(why)), ERROR_INVALID);
    assert_non_null(strstr(why, "base64"));
    free(text);

    assert_true(asprintf(&text, "-----BEGIN TRUSTED CERTIFICATE-----\n%s", leaf + 28) > 0);
    assert_int_equal(read_pem(text, &certs, why, sizeof(why)), ERROR_INVALID);
    assert_non_null(strstr(why, "TRUSTED CERTIFICATE"));
    free(text);

    text = testutil_read_file(testutil_cert_path("leaf.key"), NULL);
    assert_int_equal(read_pem(text, &certs, why, sizeof(why)), ERROR_INVALID);
    assert_string_equal(why, "line 1: contains a private key; import only the certificate");
    free(text);

    text = testutil_read_file(testutil_cert_path("garbage.pem"), NULL);
    assert_int_equal(read_pem(text, &certs, why, sizeof(why)), ERROR_INVALID);
    assert_non_null(strstr(why, "does not hold a valid certificate"));
    free(text);

    assert_int_equal(pem_read_certs("\x30\x82\x01\x00", 4, &certs, why, sizeof(why)),
                     ERROR_INVALID);
    assert_non_null(strstr(why, "DER"));
    free(leaf);
}

/* pem_names() lists each name once, by whole entries, and reads nothing
 * beyond the list it appends to. */
static void test_settings_pem_names(void **state)
{
    STACK_OF(X509) *certs = NULL;
    char why[256], buf[160], *pem, *full;
    size_t len;
    X509 *leaf;

    (void)state;
    pem = testutil_read_file(testutil_cert_path("leaf.pem"), &len);
    assert_int_equal(pem_read_certs(pem, len, &certs, why, sizeof(why)), 0);
    leaf = sk_X509_value(certs, 0);

    buf[0] = '\0';
    pem_names(leaf, buf, sizeof(buf));
    assert_string_equal(buf, "mail.test, *.wild.test, 127.0.0.1, ::1");
    /* Again: nothing is added twice. */
    pem_names(leaf, buf, sizeof(buf));
    assert_string_equal(buf, "mail.test, *.wild.test, 127.0.0.1, ::1");
    /* A longer name holding a shorter one does not hide it. */
    snprintf(buf, sizeof(buf), "xmail.test, mail.testy");
    pem_names(leaf, buf, sizeof(buf));
    assert_string_equal(buf, "xmail.test, mail.testy, mail.test, *.wild.test, 127.0.0.1, ::1");

    /* A buffer without a NUL inside its length is left alone, unread past
     * its end (ASan checks the heap block is exactly that long). */
    full = malloc(16);
    assert_non_null(full);
    memset(full, 'm', 16);
    pem_names(leaf, full, 16);
    for (size_t i = 0; i < 16; i++)
        assert_int_equal(full[i], 'm');
    free(full);

    /* Too small for anything: still a string. */
    buf[0] = '\0';
    pem_names(leaf, buf, 3);
    assert_true(strlen(buf) < 3);
    sk_X509_pop_free(certs, X509_free);
    free(pem);
}

int main(void)
{
    static const struct CMUnitTest fixed[] = {
        cmocka_unit_test(test_settings_validate_messages_explain),
        cmocka_unit_test(test_settings_validate_reports_every_problem),
        cmocka_unit_test(test_settings_validate_uses_now),
        cmocka_unit_test(test_settings_set_field_refuses_too_long),
        cmocka_unit_test(test_settings_set_field_refuses_control_characters),
        cmocka_unit_test(test_settings_set_field_port),
        cmocka_unit_test(test_settings_set_field_bool),
        cmocka_unit_test(test_settings_set_field_tls_mode),
        cmocka_unit_test(test_settings_set_field_timeouts),
        cmocka_unit_test(test_settings_set_field_relays),
        cmocka_unit_test(test_settings_set_field_instance),
        cmocka_unit_test(test_settings_set_field_strings),
        cmocka_unit_test(test_settings_set_field_refuses_secrets),
        cmocka_unit_test(test_settings_set_password_draws_new_id),
        cmocka_unit_test(test_settings_set_certificate_limits),
        cmocka_unit_test(test_settings_copy_is_deep),
        cmocka_unit_test(test_settings_field_differs),
        cmocka_unit_test(test_settings_field_format_hides_password),
        cmocka_unit_test(test_settings_field_format_values),
        cmocka_unit_test(test_settings_field_lookup),
        cmocka_unit_test(test_settings_problems_bounded),
        cmocka_unit_test(test_settings_pem_reads_bundles),
        cmocka_unit_test(test_settings_pem_refuses_with_reason),
        cmocka_unit_test(test_settings_pem_names),
    };
    enum { NCASES = sizeof(cases) / sizeof(cases[0]), NFIXED = sizeof(fixed) / sizeof(fixed[0]) };
    /* One named test per table case: test_settings_validate_<case>. */
    static struct CMUnitTest tests[NCASES + NFIXED];
    static char names[NCASES][96];
    size_t i;

    for (i = 0; i < NCASES; i++) {
        snprintf(names[i], sizeof(names[i]), "test_settings_validate_%s", cases[i].name);
        tests[i] = (struct CMUnitTest){
            .name = names[i], .test_func = run_case, .initial_state = &cases[i]};
    }
    for (i = 0; i < NFIXED; i++)
        tests[NCASES + i] = fixed[i];
    return _cmocka_run_group_tests("settings", tests, NCASES + NFIXED, NULL, NULL);
}
