/*
 * tlsio: OpenSSL over memory BIOs, for sessions that do their own I/O on
 * libuv (the SMTP client, the test server, and replication's mTLS). No
 * socket is ever given to OpenSSL and nothing here blocks: the owner feeds
 * the octets it read from the network in, takes the octets to send out,
 * and drives the handshake and plaintext reads when new input arrived.
 *
 *   network --read--> tlsio_feed() --> [SSL] --> tlsio_read()  --> plaintext
 *   plaintext --> tlsio_write() --> [SSL] --> tlsio_take()     --> network
 *
 * After every feed, handshake step or write, the owner sends whatever
 * tlsio_pending() reports (TLS may need to write while reading).
 *
 * Contexts: tlsio_client_ctx() builds the context of an SMTP client:
 * TLS 1.2 minimum, peer verification on, the trust store made only of the
 * given PEM bundle, X509_V_FLAG_PARTIAL_CHAIN so that a self-signed leaf
 * or an intermediate imported by the administrator is a valid anchor.
 * Hostname (or IP) checking and SNI are per session (tlsio_new).
 *
 * Ownership: a tlsio owns its SSL and both BIOs; it holds a reference on
 * the SSL_CTX, which the caller may free at once. tlsio_free() releases all.
 */
#ifndef SMTPSYNC_TLSIO_H
#define SMTPSYNC_TLSIO_H

#include <stdbool.h>
#include <stddef.h>

#include <openssl/ssl.h>

#define TLSIO_WHY_MAX 256

/* Results besides 0 and the error convention's negative values. */
enum {
    TLSIO_AGAIN = 1, /* needs more input from the network */
    TLSIO_EOF = 2,   /* the peer sent close_notify */
};

struct tlsio;

/* Client context as described above, trusting only the certificates of
 * `pem` (len octets). ERROR_TLS with `why` when the bundle holds no usable
 * certificate; -ENOMEM. The caller frees it with SSL_CTX_free(). */
int tlsio_client_ctx(const char *pem, size_t len, SSL_CTX **out, char *why, size_t whylen);

/*
 * A session on `ctx`. For a client, `host` is the name (or IP literal) the
 * certificate must match and, unless an IP literal, the SNI sent; NULL
 * turns both off (only for tests and servers). Returns 0, -ENOMEM or
 * ERROR_TLS.
 */
int tlsio_new(SSL_CTX *ctx, bool server, const char *host, struct tlsio **out);
void tlsio_free(struct tlsio *t);

/* The SSL object, to read the negotiated version, cipher, peer chain and
 * verify result (SSL_get_verify_result) after the handshake. */
SSL *tlsio_ssl(struct tlsio *t);

/* Octets received from the network. -ENOMEM only. */
int tlsio_feed(struct tlsio *t, const void *data, size_t len);

/* The network stream ended (TCP EOF): from now on a read that needs more
 * input fails with ERROR_TLS ("unexpected eof while reading") instead of
 * TLSIO_AGAIN, since a peer that closes without close_notify may have had
 * its data truncated. */
void tlsio_feed_eof(struct tlsio *t);

/* Advances the handshake: 0 when complete, TLSIO_AGAIN, or ERROR_TLS with
 * tlsio_why() set (certificate verification failures included). */
int tlsio_handshake(struct tlsio *t);

/* Plaintext, once the handshake is complete: 0 with *got > 0, TLSIO_AGAIN
 * (nothing decrypted yet), TLSIO_EOF, or ERROR_TLS. */
int tlsio_read(struct tlsio *t, void *buf, size_t len, size_t *got);

/* Encrypts all of `len` octets (the output waits in tlsio_pending).
 * 0 or ERROR_TLS. */
int tlsio_write(struct tlsio *t, const void *buf, size_t len);

/* Queues a close_notify. */
void tlsio_shutdown(struct tlsio *t);

/* Octets waiting to be sent, and taking (copying out and consuming) them. */
size_t tlsio_pending(const struct tlsio *t);
size_t tlsio_take(struct tlsio *t, void *buf, size_t len);

/* Why the last call failed, in one line (OpenSSL's reason or the
 * certificate verification result). "" if none. */
const char *tlsio_why(const struct tlsio *t);

#endif
