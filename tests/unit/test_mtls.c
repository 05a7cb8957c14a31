#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "error.h"
#include "mtls.h"
#include "testutil.h"
#include "tlsio.h"

/* The PKI made by tests/tools/make-pki.sh for this program. */
static char *pki;

static const char *pki_path(const char *name)
{
    static char path[4096];

    snprintf(path, sizeof(path), "%s/%s", pki, name);
    return path;
}

/* The script sits next to this file's folder (CMake compiles with absolute
 * paths); SMTPSYNC_MAKE_PKI overrides. */
static int group_setup(void **state)
{
    char cmd[8192];

    (void)state;
    if ((pki = testutil_make_pki("-a alice", "primary site-b")) == NULL)
        return -1;
    snprintf(cmd, sizeof(cmd),
             "cd '%s' && printf 'not a PEM file\\n' > garbage.pem && "
             "printf -- '-----BEGIN PRIVATE KEY-----\\nAAAA\\n-----END PRIVATE KEY-----\\n' "
             "> garbage.key && openssl pkey -in primary.key -aes256 -passout pass:secret "
             "-out encrypted.key 2>/dev/null",
             pki);
    return system(cmd) == 0 ? 0 : -1;
}

static int group_teardown(void **state)
{
    (void)state;
    testutil_rmtree(pki);
    free(pki);
    return 0;
}

/* Loads and expects failure with `needle` in the reason. */
static void load_fails(const char *ca, const char *cert, const char *key, const char *needle)
{
    char why[MTLS_WHY_MAX];
    char p_ca[4096], p_cert[4096], p_key[4096];
    static int dummy;
    struct mtls_ctx *ctx = (struct mtls_ctx *)(void *)&dummy; /* must be reset */

    snprintf(p_ca, sizeof(p_ca), "%s", pki_path(ca));
    snprintf(p_cert, sizeof(p_cert), "%s", pki_path(cert));
    snprintf(p_key, sizeof(p_key), "%s", pki_path(key));
    assert_int_equal(mtls_ctx_load(p_ca, p_cert, p_key, &ctx, why, sizeof(why)), ERROR_TLS);
    assert_null(ctx);
    if (strstr(why, needle) == NULL)
        fail_msg("reason '%s' lacks '%s'", why, needle);
    assert_null(strchr(why, '\n'));
}

static struct mtls_ctx *load(const char *ca, const char *cert, const char *key)
{
    char why[MTLS_WHY_MAX];
    char p_ca[4096], p_cert[4096], p_key[4096];
    struct mtls_ctx *ctx;

    snprintf(p_ca, sizeof(p_ca), "%s", pki_path(ca));
    snprintf(p_cert, sizeof(p_cert), "%s", pki_path(cert));
    snprintf(p_key, sizeof(p_key), "%s", pki_path(key));
    if (mtls_ctx_load(p_ca, p_cert, p_key, &ctx, why, sizeof(why)) != 0)
        fail_msg("mtls_ctx_load: %s", why);
    assert_string_equal(why, "");
    return ctx;
}

static void test_mtls_load_reports_id_and_expiry(void **state)
{
    struct mtls_ctx *ctx = load("ca.pem", "primary.pem", "primary.key");
    time_t now = time(NULL);

    (void)state;
    assert_string_equal(mtls_ctx_id(ctx), "primary");
    assert_non_null(mtls_ctx_server(ctx));
    assert_non_null(mtls_ctx_client(ctx));
    assert_true(mtls_ctx_not_before(ctx) <= now);
    /* make-pki.sh signs for 825 days. */
    assert_true(mtls_ctx_expiry(ctx) > now + 824 * 86400);
    assert_true(mtls_ctx_expiry(ctx) <= now + 826 * 86400);
    assert_false(mtls_expires_within(ctx, now, MTLS_EXPIRY_WARN_SECONDS));
    assert_true(
        mtls_expires_within(ctx, mtls_ctx_expiry(ctx) - 10 * 86400, MTLS_EXPIRY_WARN_SECONDS));
    assert_false(
        mtls_expires_within(ctx, mtls_ctx_expiry(ctx) - 31 * 86400, MTLS_EXPIRY_WARN_SECONDS));
    mtls_ctx_unref(ctx);
}

static void test_mtls_load_chain_and_admin(void **state)
{
    struct mtls_ctx *ctx = load("ca.pem", "chain-primary.pem", "primary.key");

    (void)state;
    assert_string_equal(mtls_ctx_id(ctx), "primary");
    mtls_ctx_unref(ctx);
    ctx = load("ca.pem", "alice.pem", "alice.key");
    assert_string_equal(mtls_ctx_id(ctx), "alice");
    mtls_ctx_unref(ctx);
    /* A CN-only certificate stands for its CN. */
    ctx = load("ca.pem", "cnonly.pem", "cnonly.key");
    assert_string_equal(mtls_ctx_id(ctx), "cnonly");
    mtls_ctx_unref(ctx);
}

static void test_mtls_ref_counts(void **state)
{
    struct mtls_ctx *ctx = load("ca.pem", "site-b.pem", "site-b.key");

    (void)state;
    assert_ptr_equal(mtls_ctx_ref(ctx), ctx);
    mtls_ctx_unref(ctx);
    assert_string_equal(mtls_ctx_id(ctx), "site-b"); /* still held */
    mtls_ctx_unref(ctx);
    mtls_ctx_unref(NULL);
}

static void test_mtls_load_missing_file(void **state)
{
    (void)state;
    load_fails("nonexistent-ca.pem", "primary.pem", "primary.key", "No such file");
    load_fails("ca.pem", "nonexistent.pem", "primary.key", "nonexistent.pem");
    load_fails("ca.pem", "primary.pem", "nonexistent.key", "cannot read key file");
    load_fails("ca.pem", "primary.pem", ".", "not a regular file");
}

static void test_mtls_load_empty_path(void **state)
{
    char why[MTLS_WHY_MAX];
    struct mtls_ctx *ctx;

    (void)state;
    assert_int_equal(mtls_ctx_load("", pki_path("primary.pem"), "x", &ctx, why, sizeof(why)),
                     ERROR_TLS);
    assert_non_null(strstr(why, "no CA file configured"));
}

static void test_mtls_load_key_mismatch(void **state)
{
    (void)state;
    load_fails("ca.pem", "primary.pem", "site-b.key", "does not match");
}

static void test_mtls_load_garbage_pem(void **state)
{
    (void)state;
    load_fails("garbage.pem", "primary.pem", "primary.key", "CA file");
    load_fails("ca.pem", "garbage.pem", "primary.key", "certificate file");
    load_fails("ca.pem", "primary.pem", "garbage.key", "no usable private key");
    /* A certificate where the key belongs, and a key where a certificate does. */
    load_fails("ca.pem", "primary.pem", "primary.pem", "no usable private key");
    load_fails("ca.pem", "primary.key", "primary.key", "certificate file");
}

static void test_mtls_load_encrypted_key_never_prompts(void **state)
{
    (void)state;
    load_fails("ca.pem", "primary.pem", "encrypted.key", "no usable private key");
}

static void test_mtls_load_refuses_bad_validity(void **state)
{
    (void)state;
    load_fails("ca.pem", "expired.pem", "expired.key", "expired on 2020-02-01");
    load_fails("ca.pem", "future.pem", "future.key", "not valid before 2099-01-01");
}

static void test_mtls_load_refuses_other_ca(void **state)
{
    (void)state;
    load_fails("ca.pem", "foreign.pem", "foreign.key",
               "does not verify against the deployment CA: unable to get local issuer");
    /* A leaf is no CA. */
    load_fails("site-b.pem", "primary.pem", "primary.key", "not a CA certificate");
}

/* ---- certificate ids ---- */

/* One key for every certificate made here, freed at exit. */
static EVP_PKEY *the_key;

static EVP_PKEY *test_key(void)
{
    if (the_key == NULL)
        the_key = EVP_EC_gen("P-256");
    assert_non_null(the_key);
    return the_key;
}

/* A self-signed certificate with `cn` (NULL: none) and one DNS SAN of
 * `dnslen` octets (NULL: no SAN), or an IP SAN only when ip_only. */
static X509 *make_cert(const char *cn, const char *dns, int dnslen, bool ip_only)
{
    X509 *x = X509_new();
    X509_NAME *name = X509_NAME_new();

    assert_non_null(x);
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
    X509_gmtime_adj(X509_getm_notBefore(x), 0);
    X509_gmtime_adj(X509_getm_notAfter(x), 86400);
    if (cn != NULL)
        X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8, (const unsigned char *)cn, -1, -1, 0);
    X509_set_subject_name(x, name);
    X509_set_issuer_name(x, name);
    X509_NAME_free(name);
    if (dns != NULL || ip_only) {
        GENERAL_NAMES *names = sk_GENERAL_NAME_new_null();
        GENERAL_NAME *g = GENERAL_NAME_new();

        if (ip_only) {
            static const unsigned char ip[4] = {127, 0, 0, 1};
            ASN1_OCTET_STRING *os = ASN1_OCTET_STRING_new();

            ASN1_OCTET_STRING_set(os, ip, 4);
            GENERAL_NAME_set0_value(g, GEN_IPADD, os);
        } else {
            ASN1_IA5STRING *s = ASN1_IA5STRING_new();

            ASN1_STRING_set(s, dns, dnslen);
            GENERAL_NAME_set0_value(g, GEN_DNS, s);
        }
        sk_GENERAL_NAME_push(names, g);
        X509_add1_ext_i2d(x, NID_subject_alt_name, names, 0, 0);
        GENERAL_NAMES_free(names);
    }
    X509_set_pubkey(x, test_key());
    assert_true(X509_sign(x, test_key(), EVP_sha256()) > 0);
    return x;
}

static void expect_id(X509 *x, int rc, const char *id_or_why)
{
    char id[MTLS_ID_MAX + 1], why[MTLS_WHY_MAX];

    assert_int_equal(mtls_cert_id(x, id, sizeof(id), why, sizeof(why)), rc);
    if (rc == 0) {
        assert_string_equal(id, id_or_why);
    } else {
        assert_string_equal(id, "");
        if (strstr(why, id_or_why) == NULL)
            fail_msg("reason '%s' lacks '%s'", why, id_or_why);
    }
    X509_free(x);
}

static void test_mtls_cert_id_prefers_first_dns_san(void **state)
{
    char long_name[300];

    (void)state;
    expect_id(make_cert("cn-name", "san-name", 8, false), 0, "san-name");
    expect_id(make_cert("cn-name", NULL, 0, false), 0, "cn-name");
    /* An IP SAN alone: the CN is the id. */
    expect_id(make_cert("cn-name", NULL, 0, true), 0, "cn-name");
    expect_id(make_cert(NULL, NULL, 0, false), ERROR_TLS, "neither");
    /* Names that could forge a log line or hide in one are refused. */
    expect_id(make_cert("cn", "bad\0name", 8, false), ERROR_TLS, "control");
    expect_id(make_cert("cn", "bad name", 8, false), ERROR_TLS, "space");
    expect_id(make_cert("cn", "bad\nname", 8, false), ERROR_TLS, "control");
    expect_id(make_cert("cn", "", 0, false), ERROR_TLS, "empty");
    expect_id(make_cert("caf\xc3\xa9", NULL, 0, false), ERROR_TLS, "non-ASCII");
    memset(long_name, 'a', sizeof(long_name));
    expect_id(make_cert("cn", long_name, MTLS_ID_MAX + 1, false), ERROR_TLS, "longer");
    expect_id(make_cert("cn", long_name, MTLS_ID_MAX, false), 0,
              "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
              "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
              "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
              "aaaaaaaaaa");
}

/* ---- both roles in memory: handshake and peer ids ---- */

static size_t move(struct tlsio *from, struct tlsio *to)
{
    char buf[16384];
    size_t n, total = 0;

    while ((n = tlsio_take(from, buf, sizeof(buf))) > 0) {
        assert_int_equal(tlsio_feed(to, buf, n), 0);
        total += n;
    }
    return total;
}

/* Runs a handshake between a client on `cctx` and a server on `sctx`;
 * returns the server's result (the client's in *crc). */
static int handshake(struct mtls_ctx *cctx, struct mtls_ctx *sctx, struct tlsio **c,
                     struct tlsio **s, int *crc)
{
    int src = TLSIO_AGAIN;

    *crc = TLSIO_AGAIN;
    assert_int_equal(tlsio_new(mtls_ctx_client(cctx), false, NULL, c), 0);
    assert_int_equal(tlsio_new(mtls_ctx_server(sctx), true, NULL, s), 0);
    for (int i = 0; i < 10 && (*crc == TLSIO_AGAIN || src == TLSIO_AGAIN); i++) {
        size_t moved;

        if (*crc == TLSIO_AGAIN)
            *crc = tlsio_handshake(*c);
        moved = move(*c, *s);
        if (src == TLSIO_AGAIN)
            src = tlsio_handshake(*s);
        moved += move(*s, *c);
        if (moved == 0)
            break;
    }
    return src;
}

static void test_mtls_peer_ids_after_handshake(void **state)
{
    struct mtls_ctx *sctx = load("ca.pem", "primary.pem", "primary.key");
    struct mtls_ctx *cctx = load("ca.pem", "site-b.pem", "site-b.key");
    char id[MTLS_ID_MAX + 1], why[MTLS_WHY_MAX];
    struct tlsio *c, *s;
    int crc;

    (void)state;
    assert_int_equal(handshake(cctx, sctx, &c, &s, &crc), 0);
    assert_int_equal(crc, 0);
    assert_string_equal(SSL_get_version(tlsio_ssl(c)), "TLSv1.3");
    assert_int_equal(mtls_peer_id(tlsio_ssl(c), id, sizeof(id), why, sizeof(why)), 0);
    assert_string_equal(id, "primary");
    assert_int_equal(mtls_peer_id(tlsio_ssl(s), id, sizeof(id), why, sizeof(why)), 0);
    assert_string_equal(id, "site-b");
    /* No resumption: the server issued no ticket for the client to read. */
    {
        char buf[64];
        size_t got;

        assert_int_equal(tlsio_read(c, buf, sizeof(buf), &got), TLSIO_AGAIN);
        assert_int_equal(SSL_SESSION_is_resumable(SSL_get0_session(tlsio_ssl(c))), 0);
    }
    tlsio_free(c);
    tlsio_free(s);
    mtls_ctx_unref(sctx);
    mtls_ctx_unref(cctx);
}

/* The other side sends the other CA along (OpenSSL builds the chain from
 * its store): either way the chain ends outside the deployment CA. */
static void assert_untrusted(const char *why)
{
    if (strstr(why, "self-signed certificate in certificate chain") == NULL &&
        strstr(why, "unable to get local issuer certificate") == NULL)
        fail_msg("why: %s", why);
}

static void test_mtls_refuses_peer_from_other_ca(void **state)
{
    char both[4096], cmd[8192], why[MTLS_WHY_MAX];
    struct mtls_ctx *sctx = load("ca.pem", "primary.pem", "primary.key");
    struct mtls_ctx *cctx;
    struct tlsio *c, *s;
    int crc;

    (void)state;
    /* A client that trusts both CAs but holds the other CA's certificate. */
    snprintf(both, sizeof(both), "%s", pki_path("both-ca.pem"));
    snprintf(cmd, sizeof(cmd), "cat '%s/ca.pem' '%s/other-ca.pem' > '%s'", pki, pki, both);
    assert_int_equal(system(cmd), 0);
    cctx = load("both-ca.pem", "foreign.pem", "foreign.key");
    assert_int_equal(handshake(cctx, sctx, &c, &s, &crc), ERROR_TLS);
    assert_untrusted(tlsio_why(s));
    tlsio_free(c);
    tlsio_free(s);
    /* And the other way round: a server of the other CA. */
    mtls_ctx_unref(cctx);
    cctx = load("ca.pem", "site-b.pem", "site-b.key");
    mtls_ctx_unref(sctx);
    sctx = load("both-ca.pem", "foreign.pem", "foreign.key");
    handshake(cctx, sctx, &c, &s, &crc);
    assert_int_equal(crc, ERROR_TLS);
    assert_untrusted(tlsio_why(c));
    assert_int_equal(mtls_peer_id(tlsio_ssl(c), why, sizeof(why), why, sizeof(why)), ERROR_TLS);
    tlsio_free(c);
    tlsio_free(s);
    mtls_ctx_unref(sctx);
    mtls_ctx_unref(cctx);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mtls_load_reports_id_and_expiry),
        cmocka_unit_test(test_mtls_load_chain_and_admin),
        cmocka_unit_test(test_mtls_ref_counts),
        cmocka_unit_test(test_mtls_load_missing_file),
        cmocka_unit_test(test_mtls_load_empty_path),
        cmocka_unit_test(test_mtls_load_key_mismatch),
        cmocka_unit_test(test_mtls_load_garbage_pem),
        cmocka_unit_test(test_mtls_load_encrypted_key_never_prompts),
        cmocka_unit_test(test_mtls_load_refuses_bad_validity),
        cmocka_unit_test(test_mtls_load_refuses_other_ca),
        cmocka_unit_test(test_mtls_cert_id_prefers_first_dns_san),
        cmocka_unit_test(test_mtls_peer_ids_after_handshake),
        cmocka_unit_test(test_mtls_refuses_peer_from_other_ca),
    };
    int rc = cmocka_run_group_tests(tests, group_setup, group_teardown);

    EVP_PKEY_free(the_key);
    return rc;
}
