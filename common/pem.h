/*
 * pem: strict parsing of PEM certificate bundles.
 *
 * A bundle is one or more "CERTIFICATE" blocks, optionally separated by
 * white space; anything else (keys, other block types, stray text between or
 * after blocks, bad base64, a certificate that does not decode) is refused
 * with a reason, so an operator who imports the wrong file is told so.
 */
#ifndef SMTPSYNC_PEM_H
#define SMTPSYNC_PEM_H

#include <stddef.h>

#include <openssl/x509.h>

/*
 * Parses `len` bytes of PEM into a new stack of certificates (*out, owned by
 * the caller: OSSL_STACK_OF_X509_free). On failure writes a one-line reason
 * into `why` and returns ERROR_INVALID (or -ENOMEM).
 */
int pem_read_certs(const char *pem, size_t len, STACK_OF(X509) **out, char *why, size_t whylen);

/* "CN=mail.example.com, O=Example" style one-line subject into buf. */
void pem_subject(X509 *cert, char *buf, size_t len);

/* notAfter as Unix time; -1 if it cannot be read. */
long long pem_not_after(X509 *cert);

#endif
