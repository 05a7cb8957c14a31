/*
 * mtls: the deployment's mutual TLS contexts (mtls.h).
 *
 * The files are read into memory first (the key into a buffer wiped after
 * parsing) and checked together before any SSL_CTX is made, so a reload
 * with a bad file set leaves the running context untouched and the
 * operator is told which file is wrong and why.
 */
#include "mtls.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "error.h"
#include "pem.h"

/* A PEM file of certificates or a key is never near this large. */
#define MTLS_FILE_MAX (1024 * 1024)

/* The session id context servers need when they verify clients; sessions
 * are never resumed, but OpenSSL insists. */
static const unsigned char mtls_sid_ctx[] = "smtpsync-mtls";

struct mtls_ctx {
    unsigned refs; /* one loop thread: no atomics needed */
    SSL_CTX *server;
    SSL_CTX *client;
    time_t not_before;
    time_t not_after;
    time_t ca_not_after; /* the earliest of the CA file's certificates; -1: unreadable */
    char id[MTLS_ID_MAX + 1];
};

/* OpenSSL's reason for the last error queued, or `fallback`; the queue is
 * emptied. */
static const char *mtls_ossl_reason(const char *fallback)
{
    unsigned long e = ERR_peek_last_error();
    const char *r = e != 0 ? ERR_reason_error_string(e) : NULL;

    ERR_clear_error();
    return r != NULL ? r : fallback;
}

/* Reads a whole (small) file into a malloc()ed, NUL-terminated buffer. */
static int mtls_read_file(const char *what, const char *path, char **out, size_t *outlen, char *why,
                          size_t whylen)
{
    struct stat st;
    char *buf = NULL;
    size_t len = 0;
    int fd, rc;

    *out = NULL;
    *outlen = 0;
    if (path == NULL || path[0] == '\0') {
        error_why(why, whylen, "no %s file configured", what);
        return ERROR_TLS;
    }
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        error_why(why, whylen, "cannot read %s file %s: %s", what, path, strerror(errno));
        return ERROR_TLS;
    }
    rc = ERROR_TLS;
    if (fstat(fd, &st) < 0) {
        error_why(why, whylen, "cannot read %s file %s: %s", what, path, strerror(errno));
        goto fd_close;
    }
    if (!S_ISREG(st.st_mode) || st.st_size > MTLS_FILE_MAX) {
        error_why(why, whylen, "cannot read %s file %s: %s", what, path,
                  !S_ISREG(st.st_mode) ? "not a regular file" : "larger than 1 MiB");
        goto fd_close;
    }
    rc = -ENOMEM;
    buf = malloc((size_t)st.st_size + 1);
    if (buf == NULL)
        goto fd_close;
    while (len < (size_t)st.st_size) {
        ssize_t n = read(fd, buf + len, (size_t)st.st_size - len);

        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            error_why(why, whylen, "cannot read %s file %s: %s", what, path,
                      n < 0 ? strerror(errno) : "file shrank while read");
            rc = ERROR_TLS;
            goto buf_free;
        }
        len += (size_t)n;
    }
    buf[len] = '\0';
    close(fd);
    *out = buf;
    *outlen = len;
    return 0;

buf_free:
    OPENSSL_cleanse(buf, len);
    free(buf);
fd_close:
    close(fd);
    return rc;
}

/* Certificates of a PEM file. */
static int mtls_read_certs(const char *what, const char *path, STACK_OF(X509) **out, char *why,
                           size_t whylen)
{
    char reason[MTLS_WHY_MAX];
    char *pem;
    size_t len;
    int rc;

    *out = NULL;
    if ((rc = mtls_read_file(what, path, &pem, &len, why, whylen)) < 0)
        return rc;
    rc = pem_read_certs(pem, len, out, reason, sizeof(reason));
    free(pem);
    if (rc == -ENOMEM)
        return rc;
    if (rc < 0) {
        error_why(why, whylen, "%s file %s: %s", what, path, reason);
        return ERROR_TLS;
    }
    return 0;
}

/* Never asks for a passphrase (a daemon has no terminal): an encrypted key
 * fails to load. */
static int mtls_no_passphrase(char *buf, int size, int rwflag, void *u)
{
    (void)buf;
    (void)size;
    (void)rwflag;
    (void)u;
    return -1;
}

static int mtls_read_key(const char *path, EVP_PKEY **out, char *why, size_t whylen)
{
    char *pem;
    size_t len;
    BIO *bio;
    int rc;

    *out = NULL;
    if ((rc = mtls_read_file("key", path, &pem, &len, why, whylen)) < 0)
        return rc;
    rc = -ENOMEM;
    bio = BIO_new_mem_buf(pem, (int)len);
    if (bio == NULL)
        goto pem_wipe;
    ERR_clear_error();
    *out = PEM_read_bio_PrivateKey(bio, NULL, mtls_no_passphrase, NULL);
    if (*out == NULL) {
        error_why(why, whylen, "key file %s: no usable private key (%s)", path,
                  mtls_ossl_reason("unreadable"));
        rc = ERROR_TLS;
    } else {
        rc = 0;
    }
    BIO_free(bio);
pem_wipe:
    OPENSSL_cleanse(pem, len);
    free(pem);
    return rc;
}

/* "2029-03-08 16:42:46 UTC" */
static void mtls_format_time(time_t t, char *buf, size_t len)
{
    struct tm tm;

    if (t < 0 || gmtime_r(&t, &tm) == NULL)
        snprintf(buf, len, "(unreadable date)");
    else
        strftime(buf, len, "%Y-%m-%d %H:%M:%S UTC", &tm);
}

time_t mtls_cert_expiry(X509 *cert)
{
    return (time_t)pem_not_after(cert);
}

/* The trust store: the CA certificates and nothing else. */
static int mtls_make_store(const char *path, STACK_OF(X509) *cas, X509_STORE **out, char *why,
                           size_t whylen)
{
    X509_STORE *store = X509_STORE_new();

    *out = NULL;
    if (store == NULL)
        return -ENOMEM;
    for (int i = 0; i < sk_X509_num(cas); i++) {
        X509 *ca = sk_X509_value(cas, i);

        if (X509_check_ca(ca) == 0) {
            char subject[128];

            pem_subject(ca, subject, sizeof(subject));
            error_why(why, whylen, "CA file %s: certificate %d (%s) is not a CA certificate", path,
                      i + 1, subject);
            X509_STORE_free(store);
            return ERROR_TLS;
        }
        if (X509_STORE_add_cert(store, ca) != 1) {
            unsigned long e = ERR_peek_last_error();

            /* The same certificate twice in the file is harmless. */
            if (ERR_GET_REASON(e) == X509_R_CERT_ALREADY_IN_HASH_TABLE) {
                ERR_clear_error();
                continue;
            }
            error_why(why, whylen, "CA file %s: cannot trust certificate %d: %s", path, i + 1,
                      mtls_ossl_reason("unknown reason"));
            X509_STORE_free(store);
            return ERROR_TLS;
        }
    }
    *out = store;
    return 0;
}

/* Does the node's certificate chain to the CA, today? */
static int mtls_check_chain(X509_STORE *store, X509 *leaf, STACK_OF(X509) *chain,
                            const char *cert_path, char *why, size_t whylen)
{
    X509_STORE_CTX *vctx = X509_STORE_CTX_new();
    int rc = 0;

    if (vctx == NULL)
        return -ENOMEM;
    if (X509_STORE_CTX_init(vctx, store, leaf, chain) != 1) {
        X509_STORE_CTX_free(vctx);
        ERR_clear_error();
        return -ENOMEM;
    }
    if (X509_verify_cert(vctx) != 1) {
        error_why(why, whylen, "certificate file %s: does not verify against the deployment CA: %s",
                  cert_path, X509_verify_cert_error_string(X509_STORE_CTX_get_error(vctx)));
        rc = ERROR_TLS;
    }
    X509_STORE_CTX_free(vctx);
    ERR_clear_error();
    return rc;
}

/* One role's SSL_CTX, holding the certificate, its chain, the key and a
 * reference on the shared store. */
static int mtls_make_role(bool server, X509_STORE *store, X509 *leaf, STACK_OF(X509) *chain,
                          EVP_PKEY *pkey, SSL_CTX **out, char *why, size_t whylen)
{
    SSL_CTX *ctx;

    *out = NULL;
    ctx = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method());
    if (ctx == NULL) {
        ERR_clear_error();
        return -ENOMEM;
    }
    if (SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) != 1)
        goto fail;
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_TICKET);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    if (server) {
        if (SSL_CTX_set_num_tickets(ctx, 0) != 1 ||
            SSL_CTX_set_session_id_context(ctx, mtls_sid_ctx, sizeof(mtls_sid_ctx) - 1) != 1)
            goto fail;
    }
    if (SSL_CTX_use_certificate(ctx, leaf) != 1 || SSL_CTX_use_PrivateKey(ctx, pkey) != 1)
        goto fail;
    for (int i = 0; i < sk_X509_num(chain); i++)
        if (SSL_CTX_add1_chain_cert(ctx, sk_X509_value(chain, i)) != 1)
            goto fail;
    if (SSL_CTX_check_private_key(ctx) != 1)
        goto fail;
    /* No default paths, no partial chains: the CA file is the whole trust. */
    SSL_CTX_set1_cert_store(ctx, store);
    X509_VERIFY_PARAM_clear_flags(SSL_CTX_get0_param(ctx), X509_V_FLAG_PARTIAL_CHAIN);
    SSL_CTX_set_verify(
        ctx, server ? SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT : SSL_VERIFY_PEER, NULL);
    *out = ctx;
    return 0;

fail:
    error_why(why, whylen, "cannot set up the %s TLS context: %s", server ? "server" : "client",
              mtls_ossl_reason("unknown reason"));
    SSL_CTX_free(ctx);
    return ERROR_TLS;
}

int mtls_ctx_load(const char *ca, const char *cert, const char *key, struct mtls_ctx **out,
                  char *why, size_t whylen)
{
    STACK_OF(X509) *cas = NULL, *certs = NULL, *chain = NULL;
    X509_STORE *store = NULL;
    EVP_PKEY *pkey = NULL;
    struct mtls_ctx *c = NULL;
    X509 *leaf;
    char date[64];
    time_t now = time(NULL);
    int rc;

    *out = NULL;
    error_why(why, whylen, "%s", "");
    if ((rc = mtls_read_certs("CA", ca, &cas, why, whylen)) < 0)
        goto done;
    if ((rc = mtls_read_certs("certificate", cert, &certs, why, whylen)) < 0)
        goto done;
    if ((rc = mtls_read_key(key, &pkey, why, whylen)) < 0)
        goto done;
    leaf = sk_X509_value(certs, 0);

    rc = ERROR_TLS;
    if (X509_check_private_key(leaf, pkey) != 1) {
        ERR_clear_error();
        error_why(why, whylen, "key file %s does not match the certificate in %s", key, cert);
        goto done;
    }
    rc = -ENOMEM;
    c = calloc(1, sizeof(*c));
    if (c == NULL)
        goto done;
    c->refs = 1;
    c->not_before = (time_t)pem_not_before(leaf);
    c->not_after = (time_t)pem_not_after(leaf);
    rc = ERROR_TLS;
    if (c->not_before < 0 || c->not_after < 0) {
        error_why(why, whylen, "certificate file %s: unreadable validity dates", cert);
        goto done;
    }
    if (now < c->not_before) {
        mtls_format_time(c->not_before, date, sizeof(date));
        error_why(why, whylen, "certificate file %s: not valid before %s", cert, date);
        goto done;
    }
    if (now > c->not_after) {
        mtls_format_time(c->not_after, date, sizeof(date));
        error_why(why, whylen, "certificate file %s: expired on %s", cert, date);
        goto done;
    }
    {
        char reason[MTLS_WHY_MAX];

        if (mtls_cert_id(leaf, c->id, sizeof(c->id), reason, sizeof(reason)) < 0) {
            error_why(why, whylen, "certificate file %s: %s", cert, reason);
            goto done;
        }
    }
    if ((rc = mtls_make_store(ca, cas, &store, why, whylen)) < 0)
        goto done;
    c->ca_not_after = (time_t)pem_earliest_not_after(cas);
    rc = -ENOMEM;
    chain = sk_X509_new_null();
    if (chain == NULL)
        goto done;
    for (int i = 1; i < sk_X509_num(certs); i++)
        if (sk_X509_push(chain, sk_X509_value(certs, i)) <= 0)
            goto done;
    if ((rc = mtls_check_chain(store, leaf, chain, cert, why, whylen)) < 0)
        goto done;
    if ((rc = mtls_make_role(true, store, leaf, chain, pkey, &c->server, why, whylen)) < 0)
        goto done;
    if ((rc = mtls_make_role(false, store, leaf, chain, pkey, &c->client, why, whylen)) < 0)
        goto done;
    *out = c;
    c = NULL;
    rc = 0;

done:
    if (c != NULL) {
        SSL_CTX_free(c->server);
        SSL_CTX_free(c->client);
        free(c);
    }
    /* The chain only borrows from `certs`. */
    sk_X509_free(chain);
    X509_STORE_free(store);
    EVP_PKEY_free(pkey);
    sk_X509_pop_free(certs, X509_free);
    sk_X509_pop_free(cas, X509_free);
    ERR_clear_error();
    return rc;
}

struct mtls_ctx *mtls_ctx_ref(struct mtls_ctx *ctx)
{
    ctx->refs++;
    return ctx;
}

void mtls_ctx_unref(struct mtls_ctx *ctx)
{
    if (ctx == NULL || --ctx->refs > 0)
        return;
    /* The SSL_CTXs hold the key; OpenSSL wipes it when the last SSL using
     * them is freed. */
    SSL_CTX_free(ctx->server);
    SSL_CTX_free(ctx->client);
    free(ctx);
}

SSL_CTX *mtls_ctx_server(const struct mtls_ctx *ctx)
{
    return ctx->server;
}

SSL_CTX *mtls_ctx_client(const struct mtls_ctx *ctx)
{
    return ctx->client;
}

const char *mtls_ctx_id(const struct mtls_ctx *ctx)
{
    return ctx->id;
}

time_t mtls_ctx_expiry(const struct mtls_ctx *ctx)
{
    return ctx->not_after;
}

time_t mtls_ctx_ca_expiry(const struct mtls_ctx *ctx)
{
    return ctx->ca_not_after;
}

time_t mtls_ctx_not_before(const struct mtls_ctx *ctx)
{
    return ctx->not_before;
}

bool mtls_expires_within(const struct mtls_ctx *ctx, time_t now, time_t seconds)
{
    return ctx->not_after - now < seconds;
}

/* Checks a candidate id of n octets and copies it. */
static int mtls_take_id(const unsigned char *s, int n, const char *what, char *buf, size_t len,
                        char *why, size_t whylen)
{
    if (n <= 0) {
        error_why(why, whylen, "the certificate's %s is empty", what);
        return ERROR_TLS;
    }
    if ((size_t)n > MTLS_ID_MAX || (size_t)n >= len) {
        error_why(why, whylen, "the certificate's %s is longer than %d characters", what,
                  MTLS_ID_MAX);
        return ERROR_TLS;
    }
    for (int i = 0; i < n; i++) {
        if (s[i] <= 0x20 || s[i] >= 0x7f) {
            error_why(why, whylen,
                      "the certificate's %s holds a space, control or non-ASCII character", what);
            return ERROR_TLS;
        }
    }
    memcpy(buf, s, (size_t)n);
    buf[n] = '\0';
    return 0;
}

int mtls_cert_id(X509 *cert, char *buf, size_t len, char *why, size_t whylen)
{
    GENERAL_NAMES *names;
    X509_NAME *subject;
    int idx = -1, last = -1, rc;

    if (len > 0)
        buf[0] = '\0';
    error_why(why, whylen, "%s", "");
    names = X509_get_ext_d2i(cert, NID_subject_alt_name, NULL, NULL);
    if (names != NULL) {
        for (int i = 0; i < sk_GENERAL_NAME_num(names); i++) {
            const GENERAL_NAME *g = sk_GENERAL_NAME_value(names, i);

            if (g->type != GEN_DNS)
                continue;
            rc = mtls_take_id(ASN1_STRING_get0_data(g->d.dNSName), ASN1_STRING_length(g->d.dNSName),
                              "subjectAltName DNS name", buf, len, why, whylen);
            GENERAL_NAMES_free(names);
            return rc;
        }
        GENERAL_NAMES_free(names);
    }
    ERR_clear_error();
    subject = X509_get_subject_name(cert);
    while ((idx = X509_NAME_get_index_by_NID(subject, NID_commonName, idx)) >= 0)
        last = idx;
    if (last < 0) {
        error_why(why, whylen, "the certificate has neither a DNS subjectAltName nor a CN");
        return ERROR_TLS;
    }
    {
        unsigned char *utf8 = NULL;
        int n = ASN1_STRING_to_UTF8(&utf8,
                                    X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subject, last)));

        if (n < 0) {
            ERR_clear_error();
            error_why(why, whylen, "the certificate's CN cannot be read");
            return ERROR_TLS;
        }
        rc = mtls_take_id(utf8, n, "CN", buf, len, why, whylen);
        OPENSSL_free(utf8);
    }
    return rc;
}

int mtls_peer_id(SSL *ssl, char *buf, size_t len, char *why, size_t whylen)
{
    X509 *peer = SSL_get0_peer_certificate(ssl);
    long verify = SSL_get_verify_result(ssl);

    if (len > 0)
        buf[0] = '\0';
    if (peer == NULL) {
        error_why(why, whylen, "the peer sent no certificate");
        return ERROR_TLS;
    }
    if (verify != X509_V_OK) {
        error_why(why, whylen, "the peer's certificate did not verify: %s",
                  X509_verify_cert_error_string(verify));
        return ERROR_TLS;
    }
    return mtls_cert_id(peer, buf, len, why, whylen);
}
