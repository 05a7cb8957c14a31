#include "tlsio.h"

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <arpa/inet.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>
#include <openssl/x509v3.h>

#include "error.h"
#include "pem.h"
#include "syntax.h"

struct tlsio {
    SSL *ssl;
    BIO *in;  /* network -> SSL; owned by ssl */
    BIO *out; /* SSL -> network; owned by ssl */
    char why[TLSIO_WHY_MAX];
};

/*
 * Explains a failed SSL call in t->why from, in order of precision: the
 * certificate verification result, the first error OpenSSL queued, or the
 * SSL_get_error() class. The queue is emptied so that nothing of this
 * session is mistaken for the cause of another one's failure.
 */
static int tlsio_fail(struct tlsio *t, int sslerr)
{
    unsigned long e = ERR_peek_error();
    long verify = SSL_get_verify_result(t->ssl);
    const char *reason = NULL;

    if (e != 0 && ERR_GET_LIB(e) == ERR_LIB_SSL &&
        ERR_GET_REASON(e) == SSL_R_CERTIFICATE_VERIFY_FAILED && verify != X509_V_OK)
        reason = X509_verify_cert_error_string(verify);
    else if (e != 0)
        reason = ERR_reason_error_string(e);
    if (reason != NULL)
        error_why(t->why, sizeof(t->why), "%s", reason);
    else if (e != 0)
        error_why(t->why, sizeof(t->why), "OpenSSL error %lu", e);
    else if (sslerr == SSL_ERROR_ZERO_RETURN)
        error_why(t->why, sizeof(t->why), "connection closed by the peer");
    else if (sslerr == SSL_ERROR_SYSCALL)
        error_why(t->why, sizeof(t->why), "unexpected eof while reading");
    else
        error_why(t->why, sizeof(t->why), "TLS failure (SSL error %d)", sslerr);
    ERR_clear_error();
    return ERROR_TLS;
}

int tlsio_client_ctx(const char *pem, size_t len, SSL_CTX **out, char *why, size_t whylen)
{
    STACK_OF(X509) *certs = NULL;
    X509_STORE *store = NULL;
    SSL_CTX *ctx = NULL;
    int rc;

    *out = NULL;
    error_why(why, whylen, "%s", "");
    rc = pem_read_certs(pem, len, &certs, why, whylen);
    if (rc == -ENOMEM)
        return rc;
    if (rc < 0)
        return ERROR_TLS;
    rc = -ENOMEM;
    ctx = SSL_CTX_new(TLS_client_method());
    if (ctx == NULL)
        goto certs_free;
    if (SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) != 1) {
        error_why(why, whylen, "cannot require TLS 1.2");
        rc = ERROR_TLS;
        goto ctx_free;
    }
    /* A renegotiation would run a handshake outside tlsio_handshake(), in
     * the middle of the SMTP stream; no mail server needs one. */
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    store = X509_STORE_new();
    if (store == NULL)
        goto ctx_free;
    for (int i = 0; i < sk_X509_num(certs); i++) {
        if (X509_STORE_add_cert(store, sk_X509_value(certs, i)) != 1) {
            unsigned long e = ERR_peek_last_error();

            /* The same certificate twice in a bundle is harmless. */
            if (ERR_GET_REASON(e) == X509_R_CERT_ALREADY_IN_HASH_TABLE) {
                ERR_clear_error();
                continue;
            }
            error_why(why, whylen, "cannot trust certificate %d: %s", i + 1,
                      ERR_reason_error_string(e) != NULL ? ERR_reason_error_string(e)
                                                         : "unknown reason");
            rc = ERROR_TLS;
            goto store_free;
        }
    }
    X509_STORE_set_flags(store, X509_V_FLAG_PARTIAL_CHAIN);
    /* The context takes the store; no default verify paths are ever loaded. */
    SSL_CTX_set_cert_store(ctx, store);
    sk_X509_pop_free(certs, X509_free);
    ERR_clear_error();
    *out = ctx;
    return 0;

store_free:
    X509_STORE_free(store);
ctx_free:
    SSL_CTX_free(ctx);
certs_free:
    sk_X509_pop_free(certs, X509_free);
    ERR_clear_error();
    return rc;
}

/* Hostname or IP check and SNI of a client session. */
static int tlsio_set_host(SSL *ssl, const char *host)
{
    char bare[INET6_ADDRSTRLEN + 1];
    char name[SYNTAX_HOSTNAME_MAX + 1];
    char why[128];

    switch (syntax_host_classify(host, why, sizeof(why))) {
    case SYNTAX_HOST_DNS:
        /* A copy, as SSL_set_tlsext_host_name() is a macro that casts const away. */
        if (strlen(host) >= sizeof(name))
            return ERROR_TLS;
        strcpy(name, host);
        SSL_set_hostflags(ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
        if (SSL_set_tlsext_host_name(ssl, name) != 1 || SSL_set1_host(ssl, name) != 1)
            return ERROR_TLS;
        return 0;
    case SYNTAX_HOST_IPV4:
        if (X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), host) != 1)
            return ERROR_TLS;
        return 0;
    case SYNTAX_HOST_IPV6:
        if (!syntax_ipv6_bare(host, bare, sizeof(bare)) ||
            X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), bare) != 1)
            return ERROR_TLS;
        return 0;
    case SYNTAX_HOST_BAD:
        return ERROR_TLS;
    }
    abort();
}

int tlsio_new(SSL_CTX *ctx, bool server, const char *host, struct tlsio **out)
{
    struct tlsio *t;
    int rc = -ENOMEM;

    *out = NULL;
    t = calloc(1, sizeof(*t));
    if (t == NULL)
        return -ENOMEM;
    t->ssl = SSL_new(ctx);
    if (t->ssl == NULL)
        goto t_free;
    t->in = BIO_new(BIO_s_mem());
    if (t->in == NULL)
        goto ssl_free;
    t->out = BIO_new(BIO_s_mem());
    if (t->out == NULL) {
        BIO_free(t->in);
        goto ssl_free;
    }
    /* An empty input BIO means "wait for the network", not end of stream;
     * tlsio_feed_eof() says when the stream really ended. */
    BIO_set_mem_eof_return(t->in, -1);
    SSL_set_bio(t->ssl, t->in, t->out);
    if (server) {
        SSL_set_accept_state(t->ssl);
    } else {
        SSL_set_connect_state(t->ssl);
        if (host != NULL && (rc = tlsio_set_host(t->ssl, host)) < 0)
            goto ssl_free;
    }
    ERR_clear_error();
    *out = t;
    return 0;

ssl_free:
    SSL_free(t->ssl);
t_free:
    free(t);
    ERR_clear_error();
    return rc;
}

void tlsio_free(struct tlsio *t)
{
    if (t == NULL)
        return;
    SSL_free(t->ssl);
    free(t);
}

SSL *tlsio_ssl(struct tlsio *t)
{
    return t->ssl;
}

int tlsio_feed(struct tlsio *t, const void *data, size_t len)
{
    const char *p = data;

    while (len > 0) {
        int n = len > INT_MAX ? INT_MAX : (int)len;
        int w = BIO_write(t->in, p, n);

        if (w <= 0) {
            ERR_clear_error();
            return -ENOMEM;
        }
        p += w;
        len -= (size_t)w;
    }
    return 0;
}

void tlsio_feed_eof(struct tlsio *t)
{
    BIO_set_mem_eof_return(t->in, 0);
}

int tlsio_handshake(struct tlsio *t)
{
    int r, e;

    ERR_clear_error();
    t->why[0] = '\0';
    r = SSL_do_handshake(t->ssl);
    if (r == 1)
        return 0;
    e = SSL_get_error(t->ssl, r);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
        return TLSIO_AGAIN;
    return tlsio_fail(t, e);
}

int tlsio_read(struct tlsio *t, void *buf, size_t len, size_t *got)
{
    int r, e;

    *got = 0;
    ERR_clear_error();
    t->why[0] = '\0';
    r = SSL_read_ex(t->ssl, buf, len, got);
    if (r == 1)
        return 0;
    *got = 0;
    e = SSL_get_error(t->ssl, r);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
        return TLSIO_AGAIN;
    if (e == SSL_ERROR_ZERO_RETURN) {
        ERR_clear_error();
        return TLSIO_EOF;
    }
    return tlsio_fail(t, e);
}

int tlsio_write(struct tlsio *t, const void *buf, size_t len)
{
    const char *p = buf;

    ERR_clear_error();
    t->why[0] = '\0';
    while (len > 0) {
        size_t written = 0;
        int r = SSL_write_ex(t->ssl, p, len, &written);

        if (r != 1) {
            int e = SSL_get_error(t->ssl, r);

            /* The output BIO grows without bound, so wanting I/O here means
             * the handshake is not complete: a caller's mistake. */
            if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
                ERR_clear_error();
                error_why(t->why, sizeof(t->why), "write before the handshake completed");
                return ERROR_TLS;
            }
            return tlsio_fail(t, e);
        }
        p += written;
        len -= written;
    }
    return 0;
}

void tlsio_shutdown(struct tlsio *t)
{
    /* Only queues our close_notify; a failure (handshake not done, already
     * sent) leaves nothing to do. */
    if (SSL_is_init_finished(t->ssl))
        (void)SSL_shutdown(t->ssl);
    ERR_clear_error();
}

size_t tlsio_pending(const struct tlsio *t)
{
    return BIO_ctrl_pending(t->out);
}

size_t tlsio_take(struct tlsio *t, void *buf, size_t len)
{
    int n = len > INT_MAX ? INT_MAX : (int)len;
    int r;

    if (n == 0)
        return 0;
    r = BIO_read(t->out, buf, n);
    if (r <= 0) {
        ERR_clear_error();
        return 0;
    }
    return (size_t)r;
}

const char *tlsio_why(const struct tlsio *t)
{
    return t->why;
}
