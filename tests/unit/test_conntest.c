#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <uv.h>

#include "conntest.h"
#include "error.h"
#include "fake_smtp.h"
#include "settings.h"
#include "testutil.h"

#define PASSWORD "Quartz-8812-UNIQUE-secret"
#define USER     "smtpuser"
#define NODE     "testnode"

/* One test: a loop shared by the fake server and the test, the settings
 * to try, and what `done` was given. */
struct fixture {
    uv_loop_t loop;
    struct fake_smtp *srv;
    uint16_t port;
    struct settings s;
    const char *to;
    Smtpsync__TestResult *result;
    unsigned done_calls;
    /* What the server received, kept when the test ended (the server is
     * freed with the loop's next turn). */
    size_t nmessages;
    char *message;
    char *envelope;
    char *dir; /* made on demand for certificates a test makes itself */
};

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));

    assert_non_null(f);
    assert_int_equal(uv_loop_init(&f->loop), 0);
    settings_init(&f->s);
    snprintf(f->s.instance, sizeof(f->s.instance), "primary");
    snprintf(f->s.hostname, sizeof(f->s.hostname), "127.0.0.1");
    snprintf(f->s.from_address, sizeof(f->s.from_address), "noreply@example.com");
    snprintf(f->s.test_address, sizeof(f->s.test_address), "admin@example.com");
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;

    conntest_result_free(f->result);
    free(f->message);
    free(f->envelope);
    settings_clear(&f->s);
    assert_int_equal(uv_loop_close(&f->loop), 0);
    if (f->dir != NULL) {
        testutil_rmtree(f->dir);
        free(f->dir);
    }
    free(f);
    return 0;
}

static void start_server(struct fixture *f, const struct fake_smtp_params *p)
{
    assert_int_equal(fake_smtp_start(&f->loop, p, &f->srv, &f->port), 0);
    f->s.port = f->port;
}

/* The imported certificate: a PEM file of the test certificates. */
static void trust(struct fixture *f, const char *name, enum settings_tls_mode mode)
{
    size_t len;
    char *pem = testutil_read_file(testutil_cert_path(name), &len);
    struct settings_problems p = {.count = 0, .dropped = 0};

    assert_int_equal(settings_set_certificate(&f->s, pem, len, &p), 0);
    free(pem);
    f->s.smtps_enabled = true;
    f->s.tls_mode = mode;
}

static void logon(struct fixture *f, const char *password)
{
    f->s.logon_required = true;
    snprintf(f->s.user_id, sizeof(f->s.user_id), USER);
    assert_int_equal(settings_set_password(&f->s, password), 0);
}

static void on_done(void *arg, Smtpsync__TestResult *result)
{
    struct fixture *f = arg;

    f->done_calls++;
    f->result = result;
    if (f->srv == NULL)
        return;
    f->nmessages = fake_smtp_nmessages(f->srv);
    if (f->nmessages > 0) {
        size_t len;
        const char *m = fake_smtp_message(f->srv, 0, &len);
        f->message = strndup(m, len);
        f->envelope = strdup(fake_smtp_envelope(f->srv, 0));
    }
    fake_smtp_stop(f->srv);
    f->srv = NULL;
}

/* Runs the test to its end on the fixture's loop. */
static void run(struct fixture *f)
{
    struct conntest_params p = {
        .settings = &f->s,
        .to = f->to,
        .node = NODE,
        .helo = "client.test",
        .revision = "draft on revision 7",
    };

    assert_int_equal(conntest_start(&f->loop, &p, on_done, f), 0);
    /* `done` comes from the loop, never from inside conntest_start(). */
    assert_int_equal(f->done_calls, 0);
    assert_int_equal(uv_run(&f->loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(f->done_calls, 1);
    assert_non_null(f->result);
    assert_string_equal(f->result->instance, "primary");
    assert_string_equal(f->result->node, NODE);
}

/* Index of the first step of `kind` at or after `from`, or -1. */
static int find_step(const Smtpsync__TestResult *r, Smtpsync__TestStepKind kind, size_t from)
{
    for (size_t i = from; i < r->n_steps; i++) {
        if (r->steps[i]->kind == kind)
            return (int)i;
    }
    return -1;
}

/* Asserts that the steps of `kinds` occur in this order (others may be in
 * between) and are ok. */
static void assert_steps_ok_in_order(const Smtpsync__TestResult *r,
                                     const Smtpsync__TestStepKind *kinds, size_t n)
{
    size_t from = 0;

    for (size_t i = 0; i < n; i++) {
        int at = find_step(r, kinds[i], from);
        if (at < 0)
            fail_msg("step %s missing or out of order", conntest_step_name(kinds[i]));
        assert_true(r->steps[at]->ok);
        from = (size_t)at + 1;
    }
}

/* The failed step (not a warning) of a failed result. */
static const Smtpsync__TestStep *failed_step(const Smtpsync__TestResult *r)
{
    const Smtpsync__TestStep *failed = NULL;

    assert_false(r->ok);
    for (size_t i = 0; i < r->n_steps; i++) {
        const Smtpsync__TestStep *st = r->steps[i];
        if (!st->ok && strncmp(st->diagnosis, CONNTEST_WARNING, strlen(CONNTEST_WARNING)) != 0) {
            assert_null(failed); /* one failure ends the test */
            failed = st;
        }
    }
    assert_non_null(failed);
    assert_true(failed->diagnosis[0] != '\0');
    return failed;
}

static void assert_has(const char *hay, const char *needle)
{
    if (strstr(hay, needle) == NULL)
        fail_msg("\"%s\" does not contain \"%s\"", hay, needle);
}

/* The printed result, in a malloc'd string. */
static char *printed(const Smtpsync__TestResult *r)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);

    assert_non_null(f);
    conntest_print(f, r);
    assert_int_equal(fclose(f), 0);
    return buf;
}

/* Neither the password nor a base64 form of it is anywhere in the result:
 * not in its packed bytes, not in its printed form. */
static void assert_no_password(const Smtpsync__TestResult *r, const char *password)
{
    size_t len = smtpsync__test_result__get_packed_size(r);
    uint8_t *packed = malloc(len + 1);
    char b64[256];
    char *text;

    assert_non_null(packed);
    assert_int_equal(smtpsync__test_result__pack(r, packed), len);
    EVP_EncodeBlock((unsigned char *)b64, (const unsigned char *)password, (int)strlen(password));
    assert_false(testutil_memmem(packed, len, password, strlen(password)));
    assert_false(testutil_memmem(packed, len, b64, strlen(b64)));
    free(packed);
    text = printed(r);
    assert_null(strstr(text, password));
    assert_null(strstr(text, b64));
    free(text);
}

/* --- success -------------------------------------------------------------- */

/* Fails the test with the printed result unless the mail was accepted. */
static void assert_accepted(const Smtpsync__TestResult *r)
{
    if (!r->ok)
        fail_msg("the test failed:\n%s", printed(r));
}

static void test_conntest_plaintext_success(void **state)
{
    struct fixture *f = *state;
    struct fake_smtp_params p = {.pipelining = true};
    static const Smtpsync__TestStepKind order[] = {
        SMTPSYNC__TEST_STEP_KIND__TEST_STEP_CONNECT, SMTPSYNC__TEST_STEP_KIND__TEST_STEP_GREETING,
        SMTPSYNC__TEST_STEP_KIND__TEST_STEP_EHLO,    SMTPSYNC__TEST_STEP_KIND__TEST_STEP_MAIL,
        SMTPSYNC__TEST_STEP_KIND__TEST_STEP_RCPT,    SMTPSYNC__TEST_STEP_KIND__TEST_STEP_DATA,
    };
    const char *msg;
    size_t len;

    start_server(f, &p);
    run(f);
    assert_accepted(f->result);
    assert_steps_ok_in_order(f->result, order, sizeof(order) / sizeof(order[0]));
    for (size_t i = 0; i < f->result->n_steps; i++) {
        assert_true(f->result->steps[i]->ok);
        assert_string_equal(f->result->steps[i]->diagnosis, "");
    }
    assert_int_equal(find_step(f->result, SMTPSYNC__TEST_STEP_KIND__TEST_STEP_TLS, 0), -1);
    assert_int_equal(find_step(f->result, SMTPSYNC__TEST_STEP_KIND__TEST_STEP_AUTH, 0), -1);

    /* One test mail, saying where it comes from. */
    assert_int_equal(f->nmessages, 1);
    assert_string_equal(f->envelope, "noreply@example.com admin@example.com");
    msg = f->message;
    len = strlen(msg);
    assert_true(testutil_memmem(msg, len, "Subject: smtpsync Test Connection from " NODE,
                                strlen("Subject: smtpsync Test Connection from " NODE)));
    assert_true(testutil_memmem(msg, len, "From: ", 6));
    assert_true(testutil_memmem(msg, len, "instance: primary", 17));
    assert_true(testutil_memmem(msg, len, "draft on revision 7", 19));
    assert_true(testutil_memmem(msg, len, "node:     " NODE, strlen("node:     " NODE)));
}

static void test_conntest_plaintext_auth_success(void **state)
{
    struct fixture *f = *state;
    struct fake_smtp_params p = {.auth = "PLAIN LOGIN", .user = USER, .password = PASSWORD};
    int auth;

    start_server(f, &p);
    logon(f, PASSWORD);
    f->s.allow_plaintext_auth = true;
    run(f);
    assert_accepted(f->result);
    auth = find_step(f->result, SMTPSYNC__TEST_STEP_KIND__TEST_STEP_AUTH, 0);
    assert_true(auth >= 0);
    assert_true(f->result->steps[auth]->ok);
    assert_true(find_step(f->result, SMTPSYNC__TEST_STEP_KIND__TEST_STEP_MAIL, (size_t)auth) >
                auth);
    assert_int_equal(f->nmessages, 1);
    assert_no_password(f->result, PASSWORD);
}

static void test_conntest_implicit_tls_success(void **state)
{
    struct fixture *f = *state;
    char cert[4096], key[4096];
    struct fake_smtp_params p = {.implicit_tls = true,
                                 .cert_file = cert,
                                 .key_file = key,
                                 .auth = "PLAIN LOGIN",
                                 .user = USER,
                                 .password = PASSWORD};
    static const Smtpsync__TestStepKind order[] = {
        SMTPSYNC__TEST_STEP_KIND__TEST_STEP_CONNECT,
        SMTPSYNC__TEST_STEP_KIND__TEST_STEP_TLS,
        SMTPSYNC__TEST_STEP_KIND__TEST_STEP_CERTIFICATE,
        SMTPSYNC__TEST_STEP_KIND__TEST_STEP_GREETING,
        SMTPSYNC__TEST_STEP_KIND__TEST_STEP_EHLO,
        SMTPSYNC__TEST_STEP_KIND__TEST_STEP_AUTH,
        SMTPSYNC__TEST_STEP_KIND__TEST_STEP_MAIL,
        SMTPSYNC__TEST_STEP_KIND__TEST_STEP_RCPT,
        SMTPSYNC__TEST_STEP_KIND__TEST_STEP_DATA,
    };
    int tls, certificate;

    snprintf(cert, sizeof(cert), "%s", testutil_cert_path("leaf.pem"));
    snprintf(key, sizeof(key), "%s", testutil_cert_path("leaf.key"));
    start_server(f, &p);
    trust(f, "ca.pem", SETTINGS_TLS_STRICT);
    logon(f, PASSWORD);
    run(f);
    assert_accepted(f->result);
    assert_steps_ok_in_order(f->result, order, sizeof(order) / sizeof(order[0]));
    tls = find_step(f->result, SMTPSYNC__TEST_STEP_KIND__TEST_STEP_TLS, 0);
    assert_has(f->result->steps[tls]->detail, "TLSv1.");
    certificate = find_step(f->result, SMTPSYNC__TEST_STEP_KIND__TEST_STEP_CERTIFICATE, 0);
    assert_true(certificate >= 0);
    assert_true(f->result->steps[certificate]->ok);
    assert_has(f->result->steps[certificate]->detail, "mail.test");
    assert_int_equal(f->nmessages, 1);
    assert_no_password(f->result, PASSWORD);
}

static void test_conntest_starttls_success(void **state)
{
    struct fixture *f = *state;
    char cert[4096], key[4096];
    struct fake_smtp_params p = {.starttls = true, .cert_file = cert, .key_file = key};
    static const Smtpsync__TestStepKind order[] = {
        SMTPSYNC__TEST_STEP_KIND__TEST_STEP_GREETING,    SMTPSYNC__TEST_STEP_KIND__TEST_STEP_EHLO,
        SMTPSYNC__TEST_STEP_KIND__TEST_STEP_STARTTLS,    SMTPSYNC__TEST_STEP_KIND__TEST_STEP_TLS,
        SMTPSYNC__TEST_STEP_KIND__TEST_STEP_CERTIFICATE, SMTPSYNC__TEST_STEP_KIND__TEST_STEP_EHLO,
        SMTPSYNC__TEST_STEP_KIND__TEST_STEP_MAIL,        SMTPSYNC__TEST_STEP_KIND__TEST_STEP_RCPT,
        SMTPSYNC__TEST_STEP_KIND__TEST_STEP_DATA,
    };

    snprintf(cert, sizeof(cert), "%s", testutil_cert_path("leaf.pem"));
    snprintf(key, sizeof(key), "%s", testutil_cert_path("leaf.key"));
    start_server(f, &p);
    trust(f, "ca.pem", SETTINGS_TLS_STARTTLS);
    run(f);
    assert_accepted(f->result);
    /* A fresh EHLO after the handshake: two EHLO steps around STARTTLS. */
    assert_steps_ok_in_order(f->result, order, sizeof(order) / sizeof(order[0]));
    assert_int_equal(f->nmessages, 1);
}

/* STARTTLS missing with starttls_fallback on: the mail goes out in clear,
 * the test passes with a warning on the STARTTLS step. */
static void test_conntest_starttls_fallback_warns(void **state)
{
    struct fixture *f = *state;
    struct fake_smtp_params p = {.starttls = false};
    const Smtpsync__TestStep *st;
    char *text;
    int at;

    start_server(f, &p);
    trust(f, "ca.pem", SETTINGS_TLS_STARTTLS);
    f->s.starttls_fallback = true;
    run(f);
    assert_accepted(f->result);
    at = find_step(f->result, SMTPSYNC__TEST_STEP_KIND__TEST_STEP_STARTTLS, 0);
    assert_true(at >= 0);
    st = f->result->steps[at];
    assert_false(st->ok);
    assert_has(st->diagnosis, CONNTEST_WARNING "STARTTLS failed and starttls_fallback=on");
    text = printed(f->result);
    assert_has(text, "  WARN  starttls");
    assert_has(text, "1 warning)");
    free(text);
    assert_int_equal(f->nmessages, 1);
}

/* A server that wants a logon the settings do not give. */
static void test_conntest_mail_530_asks_for_logon(void **state)
{
    struct fixture *f = *state;
    struct fake_smtp_params p = {.pipelining = false};
    const Smtpsync__TestStep *st;

    start_server(f, &p);
    fake_smtp_script(f->srv, "MAIL", "530 5.7.0 Authentication required", 1);
    run(f);
    st = failed_step(f->result);
    assert_int_equal(st->kind, SMTPSYNC__TEST_STEP_KIND__TEST_STEP_MAIL);
    assert_has(st->server_reply, "530 5.7.0 Authentication required");
    assert_has(st->diagnosis, "the server requires a logon: set logon_required=on");
}

/* --to replaces the test address; none needs to be set then. */
static void test_conntest_to_overrides_test_address(void **state)
{
    struct fixture *f = *state;
    struct fake_smtp_params p = {.pipelining = false};

    start_server(f, &p);
    f->s.test_address[0] = '\0';
    f->to = "other@example.org";
    run(f);
    assert_accepted(f->result);
    assert_int_equal(f->nmessages, 1);
    assert_string_equal(f->envelope, "noreply@example.com other@example.org");
}

/* --- failures and their diagnoses ----------------------------------------- */

static void test_conntest_auth_refused(void **state)
{
    struct fixture *f = *state;
    struct fake_smtp_params p = {.auth = "PLAIN LOGIN", .user = USER, .password = "other"};
    const Smtpsync__TestStep *st;

    start_server(f, &p);
    logon(f, PASSWORD);
    f->s.allow_plaintext_auth = true;
    run(f);
    st = failed_step(f->result);
    assert_int_equal(st->kind, SMTPSYNC__TEST_STEP_KIND__TEST_STEP_AUTH);
    assert_has(st->server_reply, "535");
    assert_has(st->diagnosis, "the server refused user " USER ": check the user ID and password");
    assert_int_equal(f->nmessages, 0);
    assert_no_password(f->result, PASSWORD);
}

/* A hostile server echoes the credentials it was sent: they are masked. */
static void test_conntest_echoed_password_is_masked(void **state)
{
    struct fixture *f = *state;
    struct fake_smtp_params p = {.auth = "LOGIN", .user = USER, .password = "other"};
    char reply[512], b64[128];
    const Smtpsync__TestStep *st;

    EVP_EncodeBlock((unsigned char *)b64, (const unsigned char *)PASSWORD, strlen(PASSWORD));
    snprintf(reply, sizeof(reply),
             "535-5.7.8 you sent " PASSWORD "\r\n535 5.7.8 that is %s in base64\r\n", b64);
    start_server(f, &p);
    fake_smtp_script(f->srv, "AUTH-RESULT", reply, 1);
    logon(f, PASSWORD);
    f->s.allow_plaintext_auth = true;
    run(f);
    st = failed_step(f->result);
    assert_int_equal(st->kind, SMTPSYNC__TEST_STEP_KIND__TEST_STEP_AUTH);
    assert_has(st->server_reply, "you sent " SETTINGS_PASSWORD_MASK);
    assert_has(st->server_reply, "that is " SETTINGS_PASSWORD_MASK " in base64");
    assert_no_password(f->result, PASSWORD);
}

static void test_conntest_rcpt_relay_denied(void **state)
{
    struct fixture *f = *state;
    struct fake_smtp_params p = {.pipelining = false};
    const Smtpsync__TestStep *st;
    char *text;

    start_server(f, &p);
    fake_smtp_script(f->srv, "RCPT", "550 5.7.1 <admin@example.com>: Relay access denied", 1);
    run(f);
    st = failed_step(f->result);
    assert_int_equal(st->kind, SMTPSYNC__TEST_STEP_KIND__TEST_STEP_RCPT);
    assert_has(st->server_reply, "550 5.7.1 <admin@example.com>: Relay access denied");
    assert_has(st->diagnosis, "the server refused to relay to admin@example.com: relay denied");
    assert_int_equal(f->nmessages, 0);

    text = printed(f->result);
    assert_has(text, "  FAIL  rcpt");
    assert_has(text, "        server reply: 550 5.7.1 <admin@example.com>: Relay access denied\n");
    assert_has(text, "        diagnosis: the server refused to relay to admin@example.com");
    assert_has(text, "  result: FAILED at rcpt\n");
    free(text);
}

/* A port nothing listens on: bound once, then closed. */
static uint16_t closed_port(uv_loop_t *loop)
{
    struct sockaddr_in addr;
    struct sockaddr_storage got;
    int len = sizeof(got);
    uv_tcp_t tcp;

    assert_int_equal(uv_ip4_addr("127.0.0.1", 0, &addr), 0);
    assert_int_equal(uv_tcp_init(loop, &tcp), 0);
    assert_int_equal(uv_tcp_bind(&tcp, (const struct sockaddr *)&addr, 0), 0);
    assert_int_equal(uv_tcp_getsockname(&tcp, (struct sockaddr *)&got, &len), 0);
    uv_close((uv_handle_t *)&tcp, NULL);
    assert_int_equal(uv_run(loop, UV_RUN_DEFAULT), 0);
    return ntohs(((struct sockaddr_in *)&got)->sin_port);
}

static void test_conntest_connect_refused(void **state)
{
    struct fixture *f = *state;
    const Smtpsync__TestStep *st;
    char want[128];
    char *text;

    f->s.port = closed_port(&f->loop);
    logon(f, PASSWORD);
    f->s.allow_plaintext_auth = true;
    run(f);
    st = failed_step(f->result);
    assert_int_equal(st->kind, SMTPSYNC__TEST_STEP_KIND__TEST_STEP_CONNECT);
    snprintf(want, sizeof(want), "nothing listens on 127.0.0.1:%u", f->s.port);
    assert_has(st->diagnosis, want);
    text = printed(f->result);
    assert_has(text, "  FAIL  connect");
    assert_has(text, "  result: FAILED at connect\n");
    free(text);
    assert_no_password(f->result, PASSWORD);
}

static void test_conntest_cert_wrong_hostname(void **state)
{
    struct fixture *f = *state;
    char cert[4096], key[4096];
    struct fake_smtp_params p = {.implicit_tls = true, .cert_file = cert, .key_file = key};
    const Smtpsync__TestStep *st;

    snprintf(cert, sizeof(cert), "%s", testutil_cert_path("cnonly.pem"));
    snprintf(key, sizeof(key), "%s", testutil_cert_path("cnonly.key"));
    start_server(f, &p);
    trust(f, "ca.pem", SETTINGS_TLS_STRICT);
    run(f);
    st = failed_step(f->result);
    assert_true(st->kind == SMTPSYNC__TEST_STEP_KIND__TEST_STEP_CERTIFICATE ||
                st->kind == SMTPSYNC__TEST_STEP_KIND__TEST_STEP_TLS);
    assert_has(st->diagnosis, "the certificate names cn.test, not 127.0.0.1");
    assert_int_equal(f->nmessages, 0);
}

static void test_conntest_cert_other_ca(void **state)
{
    struct fixture *f = *state;
    char cert[4096], key[4096];
    struct fake_smtp_params p = {.implicit_tls = true, .cert_file = cert, .key_file = key};
    const Smtpsync__TestStep *st;

    snprintf(cert, sizeof(cert), "%s", testutil_cert_path("leaf.pem"));
    snprintf(key, sizeof(key), "%s", testutil_cert_path("leaf.key"));
    start_server(f, &p);
    trust(f, "other-ca.pem", SETTINGS_TLS_STRICT);
    run(f);
    st = failed_step(f->result);
    assert_int_equal(st->kind, SMTPSYNC__TEST_STEP_KIND__TEST_STEP_CERTIFICATE);
    assert_has(st->detail, "issuer=CN=smtpsync test CA");
    assert_has(st->diagnosis, "the server's certificate (issuer CN=smtpsync test CA) is not signed "
                              "by the imported certificate (subject CN=unrelated test CA)");
}

/* A certificate for 127.0.0.1 signed by the test CA that expired in 2020,
 * made here: make-certs.sh's expired.pem names only mail.test. */
static void make_expired(struct fixture *f, char *cert_path, char *key_path, size_t len)
{
    FILE *fp;
    X509 *ca, *x = X509_new();
    EVP_PKEY *ca_key, *key = EVP_EC_gen("P-256");
    X509V3_CTX ctx;
    X509_EXTENSION *ext;

    f->dir = testutil_tmpdir();
    snprintf(cert_path, len, "%s/expired-ip.pem", f->dir);
    snprintf(key_path, len, "%s/expired-ip.key", f->dir);
    assert_non_null(fp = fopen(testutil_cert_path("ca.pem"), "r"));
    assert_non_null(ca = PEM_read_X509(fp, NULL, NULL, NULL));
    fclose(fp);
    assert_non_null(fp = fopen(testutil_cert_path("ca.key"), "r"));
    assert_non_null(ca_key = PEM_read_PrivateKey(fp, NULL, NULL, NULL));
    fclose(fp);
    assert_non_null(x);
    assert_non_null(key);
    assert_int_equal(X509_set_version(x, 2), 1);
    assert_int_equal(ASN1_INTEGER_set(X509_get_serialNumber(x), 4242), 1);
    assert_int_equal(ASN1_TIME_set_string(X509_getm_notBefore(x), "20200101000000Z"), 1);
    assert_int_equal(ASN1_TIME_set_string(X509_getm_notAfter(x), "20200201000000Z"), 1);
    assert_int_equal(X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "CN", MBSTRING_ASC,
                                                (const unsigned char *)"expired.test", -1, -1, 0),
                     1);
    assert_int_equal(X509_set_issuer_name(x, X509_get_subject_name(ca)), 1);
    assert_int_equal(X509_set_pubkey(x, key), 1);
    X509V3_set_ctx(&ctx, ca, x, NULL, NULL, 0);
    assert_non_null(ext = X509V3_EXT_conf_nid(NULL, &ctx, NID_subject_alt_name, "IP:127.0.0.1"));
    assert_int_equal(X509_add_ext(x, ext, -1), 1);
    X509_EXTENSION_free(ext);
    assert_true(X509_sign(x, ca_key, EVP_sha256()) > 0);
    assert_non_null(fp = fopen(cert_path, "w"));
    assert_int_equal(PEM_write_X509(fp, x), 1);
    fclose(fp);
    assert_non_null(fp = fopen(key_path, "w"));
    assert_int_equal(PEM_write_PrivateKey(fp, key, NULL, NULL, 0, NULL, NULL), 1);
    fclose(fp);
    X509_free(x);
    X509_free(ca);
    EVP_PKEY_free(key);
    EVP_PKEY_free(ca_key);
}

static void test_conntest_cert_expired(void **state)
{
    struct fixture *f = *state;
    char cert[4096], key[4096];
    struct fake_smtp_params p = {.implicit_tls = true, .cert_file = cert, .key_file = key};
    const Smtpsync__TestStep *st;

    make_expired(f, cert, key, sizeof(cert));
    start_server(f, &p);
    trust(f, "ca.pem", SETTINGS_TLS_STRICT);
    run(f);
    st = failed_step(f->result);
    assert_has(st->diagnosis, "the server's certificate expired on ");
    assert_has(st->diagnosis, "2020");
}

/* Implicit TLS against a plaintext server: the wrong port for the mode. */
static void test_conntest_strict_against_plaintext(void **state)
{
    struct fixture *f = *state;
    struct fake_smtp_params p = {.pipelining = false};
    const Smtpsync__TestStep *st;
    char want[160];

    start_server(f, &p);
    trust(f, "ca.pem", SETTINGS_TLS_STRICT);
    run(f);
    st = failed_step(f->result);
    assert_int_equal(st->kind, SMTPSYNC__TEST_STEP_KIND__TEST_STEP_TLS);
    snprintf(want, sizeof(want),
             "the server answered in plaintext: port %u expects STARTTLS (set "
             "tls_mode=starttls) or implicit TLS on port 465",
             f->s.port);
    assert_has(st->diagnosis, want);
}

static void test_conntest_starttls_not_offered(void **state)
{
    struct fixture *f = *state;
    struct fake_smtp_params p = {.starttls = false};
    const Smtpsync__TestStep *st;

    start_server(f, &p);
    trust(f, "ca.pem", SETTINGS_TLS_STARTTLS);
    run(f);
    st = failed_step(f->result);
    assert_int_equal(st->kind, SMTPSYNC__TEST_STEP_KIND__TEST_STEP_STARTTLS);
    assert_has(st->diagnosis, "the server does not offer STARTTLS on port");
    assert_int_equal(f->nmessages, 0);
}

static void test_conntest_greeting_timeout(void **state)
{
    struct fixture *f = *state;
    struct fake_smtp_params p = {.greeting_delay_ms = 5000};
    const Smtpsync__TestStep *st;

    start_server(f, &p);
    f->s.timeouts.greeting = 1;
    run(f);
    st = failed_step(f->result);
    assert_int_equal(st->kind, SMTPSYNC__TEST_STEP_KIND__TEST_STEP_GREETING);
    assert_has(st->diagnosis, "sent no greeting in time");
    assert_has(st->diagnosis, "; waited 1 s (timeout_greeting)");
}

static void test_conntest_auth_unavailable(void **state)
{
    struct fixture *f = *state;
    struct fake_smtp_params p = {.auth = NULL};
    const Smtpsync__TestStep *st;

    start_server(f, &p);
    logon(f, PASSWORD);
    f->s.allow_plaintext_auth = true;
    run(f);
    st = failed_step(f->result);
    assert_int_equal(st->kind, SMTPSYNC__TEST_STEP_KIND__TEST_STEP_AUTH);
    assert_has(st->diagnosis, "the server offers no AUTH mechanism: is logon required?");
}

/* No step of a plaintext session is ever a TLS step. */
static void assert_no_tls_step(const Smtpsync__TestResult *r)
{
    assert_int_equal(find_step(r, SMTPSYNC__TEST_STEP_KIND__TEST_STEP_TLS, 0), -1);
    assert_int_equal(find_step(r, SMTPSYNC__TEST_STEP_KIND__TEST_STEP_CERTIFICATE, 0), -1);
}

/* A 421 to a pipelined MAIL: the server closed the session at MAIL. */
static void test_conntest_421_pipelined_mail(void **state)
{
    struct fixture *f = *state;
    struct fake_smtp_params p = {.pipelining = true};
    const Smtpsync__TestStep *st;
    char *text;

    start_server(f, &p);
    fake_smtp_script(f->srv, "MAIL", "421 4.3.2 fake.test shutting down", 1);
    fake_smtp_script(f->srv, "RCPT", "", 1);
    run(f);
    st = failed_step(f->result);
    assert_int_equal(st->kind, SMTPSYNC__TEST_STEP_KIND__TEST_STEP_MAIL);
    assert_string_equal(st->server_reply, "421 4.3.2 fake.test shutting down");
    assert_has(st->diagnosis, "the server closed the session in reply to MAIL FROM (421: service "
                              "temporarily unavailable)");
    assert_int_equal(find_step(f->result, SMTPSYNC__TEST_STEP_KIND__TEST_STEP_RCPT, 0), -1);
    text = printed(f->result);
    assert_has(text, "        server reply: 421 4.3.2 fake.test shutting down\n");
    assert_has(text, "  result: FAILED at mail\n");
    free(text);
}

/* A greeting line over 512 octets: the greeting step fails, quoting it
 * (escaped); nothing is blamed on TLS or STARTTLS. */
static void test_conntest_oversized_greeting(void **state)
{
    struct fixture *f = *state;
    struct fake_smtp_params p = {.pipelining = false};
    const Smtpsync__TestStep *st;
    char line[4000];

    memset(line, 'x', sizeof(line) - 1);
    memcpy(line, "220 \x7f", 5);
    line[sizeof(line) - 1] = '\0';
    start_server(f, &p);
    fake_smtp_script(f->srv, "GREETING", line, 1);
    run(f);
    st = failed_step(f->result);
    assert_int_equal(st->kind, SMTPSYNC__TEST_STEP_KIND__TEST_STEP_GREETING);
    assert_has(st->detail, "reply line longer than 512 octets");
    assert_has(st->server_reply, "220 \\x7fxxxxxxxx");
    assert_has(st->diagnosis, "the server broke the SMTP protocol");
    assert_null(strstr(st->diagnosis, "STARTTLS"));
    assert_no_tls_step(f->result);
}

/* Malformed replies later in a plaintext session: still their own step. */
static void test_conntest_malformed_ehlo(void **state)
{
    struct fixture *f = *state;
    struct fake_smtp_params p = {.pipelining = false};
    const Smtpsync__TestStep *st;

    start_server(f, &p);
    fake_smtp_script(f->srv, "EHLO", "250-fake.test\r\n250-x\n", 1);
    run(f);
    st = failed_step(f->result);
    assert_int_equal(st->kind, SMTPSYNC__TEST_STEP_KIND__TEST_STEP_EHLO);
    assert_has(st->detail, "bare LF");
    assert_has(st->server_reply, "250-fake.test\n250-x");
    assert_no_tls_step(f->result);
}

static void outdated_server(struct fixture *f, bool silent)
{
    char cert[4096], key[4096];
    struct fake_smtp_params p = {.implicit_tls = true, .cert_file = cert, .key_file = key};

    snprintf(cert, sizeof(cert), "%s", testutil_cert_path("leaf.pem"));
    snprintf(key, sizeof(key), "%s", testutil_cert_path("leaf.key"));
    if (silent)
        p.tls_silent_close = true;
    else
        p.tls_max_version = TLS1_1_VERSION;
    start_server(f, &p);
    trust(f, "ca.pem", SETTINGS_TLS_STRICT);
    run(f);
}

/* A server offering only TLS 1.1 answers with a protocol version alert. */
static void test_conntest_tls_version(void **state)
{
    struct fixture *f = *state;
    const Smtpsync__TestStep *st;

    outdated_server(f, false);
    st = failed_step(f->result);
    assert_int_equal(st->kind, SMTPSYNC__TEST_STEP_KIND__TEST_STEP_TLS);
    assert_has(st->detail, "protocol version");
    assert_has(st->diagnosis, "the server offers only TLS versions older than 1.2 (SSL 3, TLS "
                              "1.0 or 1.1)");
}

/* One that drops the connection instead: the diagnosis names the likely
 * causes, outdated TLS first. */
static void test_conntest_tls_closed_silently(void **state)
{
    struct fixture *f = *state;
    const Smtpsync__TestStep *st;

    outdated_server(f, true);
    st = failed_step(f->result);
    assert_int_equal(st->kind, SMTPSYNC__TEST_STEP_KIND__TEST_STEP_TLS);
    assert_has(st->detail, "without answering the handshake");
    assert_has(st->diagnosis, "the server closed the connection without answering the TLS "
                              "handshake: it may offer only TLS versions older than 1.2");
}

/* After the failure that decides the result, a broken end of the session
 * is a warning: one step is the failure. */
static void test_conntest_failure_after_failure_is_warning(void **state)
{
    struct fixture *f = *state;
    struct fake_smtp_params p = {.pipelining = false};
    const Smtpsync__TestStep *st;
    int quit;
    char *text;

    start_server(f, &p);
    fake_smtp_script(f->srv, "RCPT", "550 5.1.1 <admin@example.com>: no such user", 1);
    fake_smtp_script(f->srv, "QUIT", "22", 1);
    run(f);
    st = failed_step(f->result);
    assert_int_equal(st->kind, SMTPSYNC__TEST_STEP_KIND__TEST_STEP_RCPT);
    quit = find_step(f->result, SMTPSYNC__TEST_STEP_KIND__TEST_STEP_QUIT, 0);
    assert_true(quit >= 0);
    st = f->result->steps[quit];
    assert_false(st->ok);
    assert_has(st->diagnosis, CONNTEST_WARNING "after the failure above, the server broke the SMTP "
                                               "protocol");
    text = printed(f->result);
    assert_has(text, "  WARN  quit");
    assert_has(text, "  result: FAILED at rcpt\n");
    free(text);
}

/* --- settings that cannot be tried ---------------------------------------- */

static void test_conntest_unusable_settings(void **state)
{
    struct fixture *f = *state;
    const Smtpsync__TestStep *st;
    char *text;

    f->s.hostname[0] = '\0';
    f->s.test_address[0] = '\0';
    run(f);
    assert_int_equal(f->result->n_steps, 1);
    st = failed_step(f->result);
    assert_int_equal(st->kind, SMTPSYNC__TEST_STEP_KIND__TEST_STEP_SETTINGS);
    assert_has(st->detail, "2 problems");
    assert_has(st->diagnosis, "hostname: is required");
    assert_has(st->diagnosis, "test_address: is required");
    text = printed(f->result);
    assert_has(text, "  FAIL  settings");
    assert_has(text, "  result: FAILED at settings\n");
    free(text);
}

static void test_conntest_invalid_to(void **state)
{
    struct fixture *f = *state;
    const Smtpsync__TestStep *st;

    f->to = "not an address";
    run(f);
    st = failed_step(f->result);
    assert_int_equal(st->kind, SMTPSYNC__TEST_STEP_KIND__TEST_STEP_SETTINGS);
    assert_has(st->diagnosis, "to: is not a valid mail address");
}

/* Logon without TLS and without allow_plaintext_auth fails validation. */
static void test_conntest_plaintext_logon_refused_before_connecting(void **state)
{
    struct fixture *f = *state;
    const Smtpsync__TestStep *st;

    f->s.port = 1; /* never tried */
    logon(f, PASSWORD);
    run(f);
    st = failed_step(f->result);
    assert_int_equal(f->result->n_steps, 1);
    assert_int_equal(st->kind, SMTPSYNC__TEST_STEP_KIND__TEST_STEP_SETTINGS);
    assert_has(st->diagnosis, "logon_required: would send the password unencrypted");
    assert_no_password(f->result, PASSWORD);
}

/* --- printing ------------------------------------------------------------- */

static Smtpsync__TestStep *make_step(Smtpsync__TestStepKind kind, bool ok, uint64_t us,
                                     const char *detail, const char *reply, const char *diag)
{
    Smtpsync__TestStep *st = malloc(sizeof(*st));

    assert_non_null(st);
    smtpsync__test_step__init(st);
    st->kind = kind;
    st->ok = ok;
    st->elapsed_us = us;
    if (detail != NULL)
        st->detail = strdup(detail);
    if (reply != NULL)
        st->server_reply = strdup(reply);
    if (diag != NULL)
        st->diagnosis = strdup(diag);
    return st;
}

static void test_conntest_print_aligned(void **state)
{
    Smtpsync__TestResult *r = malloc(sizeof(*r));
    char *text;

    (void)state;
    assert_non_null(r);
    smtpsync__test_result__init(r);
    r->instance = strdup("primary");
    r->node = strdup("n1");
    r->n_steps = 3;
    r->steps = calloc(3, sizeof(*r->steps));
    r->steps[0] = make_step(SMTPSYNC__TEST_STEP_KIND__TEST_STEP_RESOLVE, true, 400,
                            "mail.example.com -> 127.0.0.1", NULL, NULL);
    r->steps[1] = make_step(SMTPSYNC__TEST_STEP_KIND__TEST_STEP_TLS, true, 4100,
                            "TLSv1.3 TLS_AES_256_GCM_SHA384", NULL, NULL);
    /* A reply from another node's test is escaped when printed too. */
    r->steps[2] = make_step(SMTPSYNC__TEST_STEP_KIND__TEST_STEP_CERTIFICATE, false, 0,
                            "subject=CN=other\x1b[2J", "554-first\n554 second",
                            "the certificate names other, not mail.example.com");
    text = printed(r);
    assert_string_equal(text,
                        "  ok    resolve         0.4 ms  mail.example.com -> 127.0.0.1\n"
                        "  ok    tls             4.1 ms  TLSv1.3 TLS_AES_256_GCM_SHA384\n"
                        "  FAIL  certificate     0.0 ms  subject=CN=other\\x1b[2J\n"
                        "        server reply: 554-first\n"
                        "                      554 second\n"
                        "        diagnosis: the certificate names other, not mail.example.com\n"
                        "  result: FAILED at certificate\n");
    free(text);

    /* A warning does not fail the result. */
    r->ok = true;
    free(r->steps[2]->diagnosis);
    r->steps[2]->diagnosis = strdup(CONNTEST_WARNING "the mail went unencrypted");
    text = printed(r);
    assert_has(text, "  WARN  certificate");
    assert_has(text, "  result: ok, the test mail was accepted (4.5 ms, 1 warning)\n");
    free(text);
    conntest_result_free(r);
}

static void test_conntest_step_names(void **state)
{
    (void)state;
    assert_string_equal(conntest_step_name(SMTPSYNC__TEST_STEP_KIND__TEST_STEP_SETTINGS),
                        "settings");
    assert_string_equal(conntest_step_name(SMTPSYNC__TEST_STEP_KIND__TEST_STEP_UNSET), "unknown");
    assert_string_equal(conntest_step_name(SMTPSYNC__TEST_STEP_KIND__TEST_STEP_CERTIFICATE),
                        "certificate");
    assert_string_equal(conntest_step_name(SMTPSYNC__TEST_STEP_KIND__TEST_STEP_QUIT), "quit");
    assert_string_equal(conntest_step_name((Smtpsync__TestStepKind)99), "unknown");
}

/* conntest_run: its own loop, the same result. */
static void test_conntest_run_private_loop(void **state)
{
    struct fixture *f = *state;
    struct conntest_params p = {.settings = &f->s, .node = NODE};
    Smtpsync__TestResult *r = NULL;

    f->s.port = closed_port(&f->loop);
    assert_int_equal(conntest_run(&p, &r), 0);
    assert_non_null(r);
    assert_false(r->ok);
    assert_int_equal(failed_step(r)->kind, SMTPSYNC__TEST_STEP_KIND__TEST_STEP_CONNECT);
    conntest_result_free(r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)
        T(test_conntest_plaintext_success),
        T(test_conntest_plaintext_auth_success),
        T(test_conntest_implicit_tls_success),
        T(test_conntest_starttls_success),
        T(test_conntest_starttls_fallback_warns),
        T(test_conntest_mail_530_asks_for_logon),
        T(test_conntest_to_overrides_test_address),
        T(test_conntest_auth_refused),
        T(test_conntest_echoed_password_is_masked),
        T(test_conntest_rcpt_relay_denied),
        T(test_conntest_connect_refused),
        T(test_conntest_cert_wrong_hostname),
        T(test_conntest_cert_other_ca),
        T(test_conntest_cert_expired),
        T(test_conntest_strict_against_plaintext),
        T(test_conntest_starttls_not_offered),
        T(test_conntest_greeting_timeout),
        T(test_conntest_auth_unavailable),
        T(test_conntest_421_pipelined_mail),
        T(test_conntest_oversized_greeting),
        T(test_conntest_malformed_ehlo),
        T(test_conntest_tls_version),
        T(test_conntest_tls_closed_silently),
        T(test_conntest_failure_after_failure_is_warning),
        T(test_conntest_unusable_settings),
        T(test_conntest_invalid_to),
        T(test_conntest_plaintext_logon_refused_before_connecting),
        T(test_conntest_print_aligned),
        T(test_conntest_step_names),
        T(test_conntest_run_private_loop),
#undef T
    };

    /* A server closing while the client writes must not kill the test. */
    signal(SIGPIPE, SIG_IGN);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
