#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509_vfy.h>

#include "error.h"
#include "testutil.h"
#include "tlsio.h"

/*
 * A client and a server tlsio wired back to back in memory: what one has
 * to send is fed to the other, no socket involved.
 */
struct pair {
    SSL_CTX *cctx;
    SSL_CTX *sctx;
    struct tlsio *c;
    struct tlsio *s;
    int crc; /* last handshake results */
    int src;
};

/* The client context trusting the bundle made by make-certs.sh `name`. */
static SSL_CTX *client_ctx(const char *name)
{
    char why[TLSIO_WHY_MAX];
    SSL_CTX *ctx;
    size_t len;
    char *pem = testutil_read_file(testutil_cert_path(name), &len);

    assert_int_equal(tlsio_client_ctx(pem, len, &ctx, why, sizeof(why)), 0);
    assert_string_equal(why, "");
    free(pem);
    return ctx;
}

/* A server context with `cert` and `key`; max_version 0 for the default. */
static SSL_CTX *server_ctx(const char *cert, const char *key, int max_version)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    char path[4096];

    assert_non_null(ctx);
    if (max_version != 0) {
        /* OpenSSL 3 refuses TLS 1.1's algorithms above security level 0. */
        SSL_CTX_set_security_level(ctx, 0);
        assert_int_equal(SSL_CTX_set_cipher_list(ctx, "DEFAULT:@SECLEVEL=0"), 1);
        assert_int_equal(SSL_CTX_set_min_proto_version(ctx, 0), 1);
        assert_int_equal(SSL_CTX_set_max_proto_version(ctx, max_version), 1);
    }
    snprintf(path, sizeof(path), "%s", testutil_cert_path(cert));
    assert_int_equal(SSL_CTX_use_certificate_chain_file(ctx, path), 1);
    snprintf(path, sizeof(path), "%s", testutil_cert_path(key));
    assert_int_equal(SSL_CTX_use_PrivateKey_file(ctx, path, SSL_FILETYPE_PEM), 1);
    return ctx;
}

static void pair_open(struct pair *p, const char *trust, const char *cert, const char *key,
                      const char *host)
{
    memset(p, 0, sizeof(*p));
    p->cctx = client_ctx(trust);
    p->sctx = server_ctx(cert, key, 0);
    assert_int_equal(tlsio_new(p->cctx, false, host, &p->c), 0);
    assert_int_equal(tlsio_new(p->sctx, true, NULL, &p->s), 0);
    /* Each session holds its own reference on its context. */
    SSL_CTX_free(p->cctx);
    SSL_CTX_free(p->sctx);
    p->cctx = p->sctx = NULL;
}

static void pair_close(struct pair *p)
{
    tlsio_free(p->c);
    tlsio_free(p->s);
}

/* Moves what `from` has to send into `to`, at most `chunk` octets per feed. */
static size_t move(struct tlsio *from, struct tlsio *to, size_t chunk)
{
    char buf[16384];
    size_t n, total = 0;

    if (chunk > sizeof(buf))
        chunk = sizeof(buf);
    while ((n = tlsio_take(from, buf, chunk)) > 0) {
        assert_int_equal(tlsio_feed(to, buf, n), 0);
        total += n;
    }
    assert_int_equal(tlsio_pending(from), 0);
    return total;
}

/* Runs both handshakes until neither waits any more; returns the client's
 * result (the server's is in p->src). */
static int pair_handshake_chunked(struct pair *p, size_t chunk)
{
    p->crc = p->src = TLSIO_AGAIN;
    for (int i = 0; i < 20 && (p->crc == TLSIO_AGAIN || p->src == TLSIO_AGAIN); i++) {
        size_t moved;

        if (p->crc == TLSIO_AGAIN)
            p->crc = tlsio_handshake(p->c);
        moved = move(p->c, p->s, chunk);
        if (p->src == TLSIO_AGAIN)
            p->src = tlsio_handshake(p->s);
        moved += move(p->s, p->c, chunk);
        if (moved == 0 && (p->crc < 0 || p->src < 0))
            break;
    }
    /* Nothing of a failed handshake is left for another session to see. */
    assert_int_equal(ERR_peek_error(), 0);
    return p->crc;
}

static int pair_handshake(struct pair *p)
{
    return pair_handshake_chunked(p, 16384);
}

/* Reads everything `t` can decrypt into buf; returns the length. */
static size_t read_all(struct tlsio *t, char *buf, size_t cap)
{
    size_t total = 0, got;
    int rc;

    while ((rc = tlsio_read(t, buf + total, cap - total, &got)) == 0) {
        assert_true(got > 0);
        total += got;
        assert_true(total < cap);
    }
    assert_int_equal(rc, TLSIO_AGAIN);
    return total;
}

static void test_tlsio_handshake_and_data_both_ways(void **state)
{
    struct pair p;
    char buf[256];
    size_t n;

    (void)state;
    pair_open(&p, "ca.pem", "chain.pem", "leaf.key", "mail.test");
    assert_int_equal(pair_handshake(&p), 0);
    assert_int_equal(p.src, 0);
    assert_int_equal(SSL_get_verify_result(tlsio_ssl(p.c)), X509_V_OK);
    assert_true(SSL_version(tlsio_ssl(p.c)) >= TLS1_2_VERSION);
    assert_string_equal(SSL_get_servername(tlsio_ssl(p.s), TLSEXT_NAMETYPE_host_name), "mail.test");
    assert_string_equal(tlsio_why(p.c), "");

    /* Nothing sent yet: reading waits. */
    assert_int_equal(tlsio_read(p.s, buf, sizeof(buf), &n), TLSIO_AGAIN);
    assert_int_equal(n, 0);

    assert_int_equal(tlsio_write(p.c, "EHLO client.test\r\n", 18), 0);
    assert_true(tlsio_pending(p.c) > 18); /* encrypted and framed */
    move(p.c, p.s, 16384);
    n = read_all(p.s, buf, sizeof(buf));
    assert_int_equal(n, 18);
    assert_memory_equal(buf, "EHLO client.test\r\n", 18);

    assert_int_equal(tlsio_write(p.s, "250 fake.test\r\n", 15), 0);
    move(p.s, p.c, 16384);
    n = read_all(p.c, buf, sizeof(buf));
    assert_int_equal(n, 15);
    assert_memory_equal(buf, "250 fake.test\r\n", 15);
    pair_close(&p);
}

static void test_tlsio_one_octet_at_a_time(void **state)
{
    struct pair p;
    char buf[64];

    (void)state;
    pair_open(&p, "ca.pem", "chain.pem", "leaf.key", "mail.test");
    assert_int_equal(pair_handshake_chunked(&p, 1), 0);
    assert_int_equal(p.src, 0);
    assert_int_equal(tlsio_write(p.c, "NOOP\r\n", 6), 0);
    move(p.c, p.s, 1);
    assert_int_equal(read_all(p.s, buf, sizeof(buf)), 6);
    pair_close(&p);
}

static void test_tlsio_large_data_through(void **state)
{
    const size_t total = 1024 * 1024;
    char *out = malloc(total), *in = malloc(total);
    struct pair p;
    size_t got = 0;

    (void)state;
    assert_non_null(out);
    assert_non_null(in);
    for (size_t i = 0; i < total; i++)
        out[i] = (char)(i * 7 + i / 251);
    pair_open(&p, "ca.pem", "chain.pem", "leaf.key", "mail.test");
    assert_int_equal(pair_handshake(&p), 0);

    /* One write of 1 MiB, then the server reads it back in pieces. */
    assert_int_equal(tlsio_write(p.c, out, total), 0);
    move(p.c, p.s, 16384);
    while (got < total) {
        size_t n;

        assert_int_equal(tlsio_read(p.s, in + got, total - got, &n), 0);
        got += n;
    }
    assert_memory_equal(in, out, total);

    /* And back, written in odd-sized pieces, moved as they come. */
    memset(in, 0, total);
    got = 0;
    for (size_t off = 0; off < total; off += 4093) {
        size_t n = total - off < 4093 ? total - off : 4093;

        assert_int_equal(tlsio_write(p.s, out + off, n), 0);
        move(p.s, p.c, 1000);
        got += read_all(p.c, in + got, total - got + 1);
    }
    assert_int_equal(got, total);
    assert_memory_equal(in, out, total);
    pair_close(&p);
    free(out);
    free(in);
}

/* A handshake the client must refuse; returns its reason. */
static void expect_refused(const char *trust, const char *cert, const char *key, const char *host,
                           const char *why)
{
    struct pair p;

    pair_open(&p, trust, cert, key, host);
    assert_int_equal(pair_handshake(&p), ERROR_TLS);
    assert_string_equal(tlsio_why(p.c), why);
    /* The client told the server with an alert. */
    assert_int_equal(p.src, ERROR_TLS);
    pair_close(&p);
}

static void test_tlsio_hostname_mismatch(void **state)
{
    (void)state;
    expect_refused("ca.pem", "chain.pem", "leaf.key", "other.test", "hostname mismatch");
    /* A wildcard covers one label only. */
    expect_refused("ca.pem", "chain.pem", "leaf.key", "a.b.wild.test", "hostname mismatch");
}

static void test_tlsio_wildcard_matches_one_label(void **state)
{
    struct pair p;

    (void)state;
    pair_open(&p, "ca.pem", "chain.pem", "leaf.key", "a.wild.test");
    assert_int_equal(pair_handshake(&p), 0);
    pair_close(&p);
}

static void test_tlsio_untrusted_ca(void **state)
{
    (void)state;
    expect_refused("other-ca.pem", "leaf.pem", "leaf.key", "mail.test",
                   "unable to get local issuer certificate");
    /* A server that sends its CA too does not make it trusted. */
    expect_refused("other-ca.pem", "chain.pem", "leaf.key", "mail.test",
                   "self-signed certificate in certificate chain");
    /* The bundle is the only trust: the system store is never consulted. */
    expect_refused("other-ca.pem", "selfsigned.pem", "selfsigned.key", "mail.test",
                   "self-signed certificate");
}

static void test_tlsio_expired_and_future_certificates(void **state)
{
    (void)state;
    expect_refused("ca.pem", "expired.pem", "expired.key", "mail.test", "certificate has expired");
    expect_refused("ca.pem", "future.pem", "future.key", "mail.test",
                   "certificate is not yet valid");
}

static void test_tlsio_partial_chain_anchors(void **state)
{
    struct pair p;

    (void)state;
    /* A self-signed leaf imported as the trust is its own anchor. */
    pair_open(&p, "selfsigned.pem", "selfsigned.pem", "selfsigned.key", "mail.test");
    assert_int_equal(pair_handshake(&p), 0);
    pair_close(&p);
    /* So is a CA-signed leaf, without its CA. */
    pair_open(&p, "leaf.pem", "chain.pem", "leaf.key", "mail.test");
    assert_int_equal(pair_handshake(&p), 0);
    pair_close(&p);
}

static void test_tlsio_ip_literals(void **state)
{
    struct pair p;

    (void)state;
    pair_open(&p, "ca.pem", "chain.pem", "leaf.key", "127.0.0.1");
    assert_int_equal(pair_handshake(&p), 0);
    /* No SNI for an IP literal (RFC 6066 §3). */
    assert_null(SSL_get_servername(tlsio_ssl(p.s), TLSEXT_NAMETYPE_host_name));
    pair_close(&p);

    pair_open(&p, "ca.pem", "chain.pem", "leaf.key", "::1");
    assert_int_equal(pair_handshake(&p), 0);
    pair_close(&p);
    pair_open(&p, "ca.pem", "chain.pem", "leaf.key", "[::1]");
    assert_int_equal(pair_handshake(&p), 0);
    pair_close(&p);

    expect_refused("ca.pem", "chain.pem", "leaf.key", "127.0.0.2", "IP address mismatch");
    /* A name-only certificate does not cover an address. */
    expect_refused("selfsigned.pem", "selfsigned.pem", "selfsigned.key", "127.0.0.1",
                   "IP address mismatch");
}

static void test_tlsio_bad_host_refused(void **state)
{
    SSL_CTX *ctx = client_ctx("ca.pem");
    struct tlsio *t = (struct tlsio *)1;

    (void)state;
    assert_int_equal(tlsio_new(ctx, false, "bad host", &t), ERROR_TLS);
    assert_null(t);
    SSL_CTX_free(ctx);
}

static void test_tlsio_no_host_no_check(void **state)
{
    struct pair p;

    (void)state;
    /* host NULL: the chain is still verified, the name is not. */
    pair_open(&p, "ca.pem", "chain.pem", "leaf.key", NULL);
    assert_int_equal(pair_handshake(&p), 0);
    pair_close(&p);
    expect_refused("other-ca.pem", "leaf.pem", "leaf.key", NULL,
                   "unable to get local issuer certificate");
}

static void test_tlsio_tls11_server_refused(void **state)
{
    struct pair p;

    (void)state;
    memset(&p, 0, sizeof(p));
    p.cctx = client_ctx("ca.pem");
    p.sctx = server_ctx("chain.pem", "leaf.key", TLS1_1_VERSION);
    assert_int_equal(tlsio_new(p.cctx, false, "mail.test", &p.c), 0);
    assert_int_equal(tlsio_new(p.sctx, true, NULL, &p.s), 0);
    SSL_CTX_free(p.cctx);
    SSL_CTX_free(p.sctx);
    assert_int_equal(pair_handshake(&p), ERROR_TLS);
    assert_true(strstr(tlsio_why(p.c), "protocol version") != NULL ||
                strstr(tlsio_why(p.c), "unsupported protocol") != NULL);
    pair_close(&p);
}

/* A client that sent its ClientHello and gets `data` back. */
static int client_gets(const void *data, size_t len, struct tlsio **t, SSL_CTX **ctx)
{
    *ctx = client_ctx("ca.pem");
    assert_int_equal(tlsio_new(*ctx, false, "mail.test", t), 0);
    assert_int_equal(tlsio_handshake(*t), TLSIO_AGAIN);
    assert_true(tlsio_pending(*t) > 0);
    assert_int_equal(tlsio_feed(*t, data, len), 0);
    return tlsio_handshake(*t);
}

static void test_tlsio_plaintext_banner_is_error(void **state)
{
    struct tlsio *t;
    SSL_CTX *ctx;

    (void)state;
    /* An SMTP server on the implicit-TLS port of a STARTTLS setup. */
    assert_int_equal(client_gets("220 hello\r\n", 11, &t, &ctx), ERROR_TLS);
    assert_string_equal(tlsio_why(t), "wrong version number");
    assert_int_equal(ERR_peek_error(), 0);
    tlsio_free(t);
    SSL_CTX_free(ctx);
}

static void test_tlsio_garbage_is_error(void **state)
{
    /* A handshake record header announcing a record larger than TLS allows. */
    static const unsigned char garbage[] = {0x16, 0x03, 0x03, 0xff, 0xff, 0x00, 0x01, 0x02};
    struct tlsio *t;
    SSL_CTX *ctx;
    char buf[64];
    size_t n;

    (void)state;
    assert_int_equal(client_gets(garbage, sizeof(garbage), &t, &ctx), ERROR_TLS);
    assert_string_not_equal(tlsio_why(t), "");
    assert_int_equal(ERR_peek_error(), 0);
    /* The session stays failed. */
    assert_int_equal(tlsio_read(t, buf, sizeof(buf), &n), ERROR_TLS);
    tlsio_free(t);
    SSL_CTX_free(ctx);
}

static void test_tlsio_garbage_after_handshake_is_error(void **state)
{
    struct pair p;
    char buf[64];
    size_t n;

    (void)state;
    pair_open(&p, "ca.pem", "chain.pem", "leaf.key", "mail.test");
    assert_int_equal(pair_handshake(&p), 0);
    assert_int_equal(tlsio_feed(p.c, "250 plaintext\r\n", 15), 0);
    assert_int_equal(tlsio_read(p.c, buf, sizeof(buf), &n), ERROR_TLS);
    assert_string_not_equal(tlsio_why(p.c), "");
    assert_int_equal(ERR_peek_error(), 0);
    pair_close(&p);
}

static void test_tlsio_close_notify_is_eof(void **state)
{
    struct pair p;
    char buf[64];
    size_t n;

    (void)state;
    pair_open(&p, "ca.pem", "chain.pem", "leaf.key", "mail.test");
    assert_int_equal(pair_handshake(&p), 0);
    assert_int_equal(tlsio_write(p.s, "221 bye\r\n", 9), 0);
    tlsio_shutdown(p.s);
    move(p.s, p.c, 16384);
    assert_int_equal(tlsio_read(p.c, buf, sizeof(buf), &n), 0);
    assert_int_equal(n, 9);
    assert_int_equal(tlsio_read(p.c, buf, sizeof(buf), &n), TLSIO_EOF);
    assert_int_equal(n, 0);
    pair_close(&p);
}

static void test_tlsio_unexpected_eof_is_error(void **state)
{
    struct pair p;
    char buf[64];
    size_t n;

    (void)state;
    pair_open(&p, "ca.pem", "chain.pem", "leaf.key", "mail.test");
    assert_int_equal(pair_handshake(&p), 0);
    assert_int_equal(tlsio_read(p.c, buf, sizeof(buf), &n), TLSIO_AGAIN);
    /* TCP closed without close_notify: the data may have been truncated. */
    tlsio_feed_eof(p.c);
    assert_int_equal(tlsio_read(p.c, buf, sizeof(buf), &n), ERROR_TLS);
    assert_string_equal(tlsio_why(p.c), "unexpected eof while reading");
    pair_close(&p);
}

static void test_tlsio_eof_during_handshake_is_error(void **state)
{
    struct tlsio *t;
    SSL_CTX *ctx = client_ctx("ca.pem");

    (void)state;
    assert_int_equal(tlsio_new(ctx, false, "mail.test", &t), 0);
    assert_int_equal(tlsio_handshake(t), TLSIO_AGAIN);
    tlsio_feed_eof(t);
    assert_int_equal(tlsio_handshake(t), ERROR_TLS);
    assert_string_not_equal(tlsio_why(t), "");
    tlsio_free(t);
    SSL_CTX_free(ctx);
}

static void test_tlsio_write_before_handshake_refused(void **state)
{
    struct tlsio *t;
    SSL_CTX *ctx = client_ctx("ca.pem");

    (void)state;
    assert_int_equal(tlsio_new(ctx, false, "mail.test", &t), 0);
    assert_int_equal(tlsio_write(t, "EHLO x\r\n", 8), ERROR_TLS);
    assert_string_not_equal(tlsio_why(t), "");
    /* Shutting down an unfinished session queues nothing and is harmless. */
    tlsio_shutdown(t);
    assert_int_equal(ERR_peek_error(), 0);
    tlsio_free(t);
    SSL_CTX_free(ctx);
}

static void expect_bad_bundle(const char *pem, size_t len)
{
    char why[TLSIO_WHY_MAX] = "untouched";
    SSL_CTX *ctx = (SSL_CTX *)1;

    assert_int_equal(tlsio_client_ctx(pem, len, &ctx, why, sizeof(why)), ERROR_TLS);
    assert_null(ctx);
    assert_string_not_equal(why, "");
    assert_string_not_equal(why, "untouched");
    assert_int_equal(ERR_peek_error(), 0);
}

static void test_tlsio_bundle_without_certificates(void **state)
{
    size_t len;
    char *pem;

    (void)state;
    expect_bad_bundle("", 0);
    expect_bad_bundle("\n\n", 2);
    pem = testutil_read_file(testutil_cert_path("leaf.key"), &len);
    expect_bad_bundle(pem, len);
    OPENSSL_cleanse(pem, len);
    free(pem);
    pem = testutil_read_file(testutil_cert_path("garbage.pem"), &len);
    expect_bad_bundle(pem, len);
    free(pem);
}

static void test_tlsio_bundle_with_duplicates(void **state)
{
    char why[TLSIO_WHY_MAX];
    size_t len;
    char *pem = testutil_read_file(testutil_cert_path("ca.pem"), &len);
    char *twice = malloc(2 * len);
    SSL_CTX *ctx;

    (void)state;
    assert_non_null(twice);
    memcpy(twice, pem, len);
    memcpy(twice + len, pem, len);
    assert_int_equal(tlsio_client_ctx(twice, 2 * len, &ctx, why, sizeof(why)), 0);
    assert_int_equal(SSL_CTX_get_min_proto_version(ctx), TLS1_2_VERSION);
    assert_int_equal(SSL_CTX_get_verify_mode(ctx), SSL_VERIFY_PEER);
    SSL_CTX_free(ctx);
    free(twice);
    free(pem);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tlsio_handshake_and_data_both_ways),
        cmocka_unit_test(test_tlsio_one_octet_at_a_time),
        cmocka_unit_test(test_tlsio_large_data_through),
        cmocka_unit_test(test_tlsio_hostname_mismatch),
        cmocka_unit_test(test_tlsio_wildcard_matches_one_label),
        cmocka_unit_test(test_tlsio_untrusted_ca),
        cmocka_unit_test(test_tlsio_expired_and_future_certificates),
        cmocka_unit_test(test_tlsio_partial_chain_anchors),
        cmocka_unit_test(test_tlsio_ip_literals),
        cmocka_unit_test(test_tlsio_bad_host_refused),
        cmocka_unit_test(test_tlsio_no_host_no_check),
        cmocka_unit_test(test_tlsio_tls11_server_refused),
        cmocka_unit_test(test_tlsio_plaintext_banner_is_error),
        cmocka_unit_test(test_tlsio_garbage_is_error),
        cmocka_unit_test(test_tlsio_garbage_after_handshake_is_error),
        cmocka_unit_test(test_tlsio_close_notify_is_eof),
        cmocka_unit_test(test_tlsio_unexpected_eof_is_error),
        cmocka_unit_test(test_tlsio_eof_during_handshake_is_error),
        cmocka_unit_test(test_tlsio_write_before_handshake_refused),
        cmocka_unit_test(test_tlsio_bundle_without_certificates),
        cmocka_unit_test(test_tlsio_bundle_with_duplicates),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
