/*
 * mtls: the TLS contexts of the deployment's mutual TLS (replication and
 * the admin API), built from the [tls] files of a node or of smtpsyncctl.
 *
 *   - TLS 1.2 minimum; TLS 1.3 is preferred (OpenSSL negotiates the highest).
 *   - Both sides present a certificate and both verify the other's against
 *     the deployment CA only: no default verify paths, no partial chains
 *     (an intermediate is never an anchor), the CA file is the whole trust.
 *   - No session resumption (no tickets, no cache): every connection runs a
 *     full handshake, so a reloaded CA or a replaced certificate applies to
 *     every new connection. Connections are long-lived; this costs little.
 *   - A node is identified by its certificate (mtls_cert_id): the first DNS
 *     name of its subjectAltName, or its CN when it has no DNS SAN.
 *
 * A context holds a server SSL_CTX (a listener's side) and a client SSL_CTX
 * (a connector's side) sharing one trust store, and is reference counted:
 * reloading (SIGHUP) is mtls_ctx_load() of a new one, swapped in where the
 * old one was kept (peer_listener_set_ctx() for a listener); connections
 * made before keep the context they were made with, as each SSL object
 * holds its own reference on its SSL_CTX.
 *
 * Errors: ERROR_TLS with a one-line reason in `why` (a file that cannot be
 * read, a PEM block that does not parse, a key that does not match the
 * certificate, a certificate outside its validity or that does not verify
 * against the CA), or -ENOMEM. The private key is read into memory that is
 * wiped after use; it never appears in `why`.
 */
#ifndef SMTPSYNC_MTLS_H
#define SMTPSYNC_MTLS_H

#include <stdbool.h>
#include <stddef.h>
#include <time.h>

#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "syntax.h"

#define MTLS_WHY_MAX 256
#define MTLS_ID_MAX  SYNTAX_HOSTNAME_MAX /* a certificate's id, without its NUL */

/* Status warns when the node's certificate expires within this (30 days). */
#define MTLS_EXPIRY_WARN_SECONDS ((time_t)30 * 24 * 3600)

struct mtls_ctx;

/*
 * Builds a context from PEM files: `ca` (one or more CA certificates: the
 * trust), `cert` (this node's certificate, optionally followed by
 * intermediates) and `key` (its private key, unencrypted). Checks that the
 * key matches the certificate, that the certificate is valid now and that
 * it chains to `ca`. On success *out holds one reference.
 * @return 0, ERROR_TLS (with `why`), -ENOMEM.
 */
int mtls_ctx_load(const char *ca, const char *cert, const char *key, struct mtls_ctx **out,
                  char *why, size_t whylen);

/* Takes one more reference; returns ctx. */
struct mtls_ctx *mtls_ctx_ref(struct mtls_ctx *ctx);
/* Drops one reference; the last one frees the context. NULL is ignored. */
void mtls_ctx_unref(struct mtls_ctx *ctx);

/* The SSL_CTX of each role, borrowed from `ctx` (SSL_new() takes its own
 * reference). Tests may change their settings (e.g. the maximum version);
 * code that connects peers does not. */
SSL_CTX *mtls_ctx_server(const struct mtls_ctx *ctx);
SSL_CTX *mtls_ctx_client(const struct mtls_ctx *ctx);

/* This node's id as its certificate states it (mtls_cert_id). */
const char *mtls_ctx_id(const struct mtls_ctx *ctx);

/* This node's certificate's notAfter and notBefore, as Unix time. */
time_t mtls_ctx_expiry(const struct mtls_ctx *ctx);
time_t mtls_ctx_not_before(const struct mtls_ctx *ctx);
/* The earliest notAfter of the CA file's certificates (the trust ends with
 * it); -1 if none was readable. */
time_t mtls_ctx_ca_expiry(const struct mtls_ctx *ctx);

/* True if this node's certificate expires before now + seconds (status
 * warns with MTLS_EXPIRY_WARN_SECONDS). `now` is injectable for tests. */
bool mtls_expires_within(const struct mtls_ctx *ctx, time_t now, time_t seconds);

/*
 * The id a certificate stands for: its first subjectAltName DNS name, or,
 * if it has none, its (last) commonName. Copied into buf (len >=
 * MTLS_ID_MAX + 1 holds any). Refused (ERROR_TLS, with `why`): no name,
 * a name longer than MTLS_ID_MAX, or one holding a NUL, a control
 * character, a space or a non-ASCII octet.
 */
int mtls_cert_id(X509 *cert, char *buf, size_t len, char *why, size_t whylen);

/*
 * The id of the peer of a completed handshake: mtls_cert_id() of its
 * certificate, only if the chain verified (SSL_get_verify_result is
 * X509_V_OK). ERROR_TLS with `why` otherwise (no certificate, not verified).
 */
int mtls_peer_id(SSL *ssl, char *buf, size_t len, char *why, size_t whylen);

/* The notAfter of a certificate as Unix time; -1 if unreadable. */
time_t mtls_cert_expiry(X509 *cert);

#endif
