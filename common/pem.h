/*
 * pem: certificate bundles: strict PEM parsing, and the questions validation
 * and diagnosis ask of a certificate (dates, leaf or CA, names, host match).
 *
 * A bundle is one or more "CERTIFICATE" blocks, optionally separated by
 * white space; anything else (keys, other block types, stray text between or
 * after blocks, bad base64, a certificate that does not decode) is refused
 * with a reason, so an operator who imports the wrong file is told so.
 */
#ifndef SMTPSYNC_PEM_H
#define SMTPSYNC_PEM_H

#include <stdbool.h>
#include <stddef.h>

#include <openssl/x509.h>

#include "syntax.h"

/*
 * Parses `len` bytes of PEM into a new stack of certificates (*out, owned by
 * the caller: sk_X509_pop_free(certs, X509_free)). On failure writes a one-line reason
 * into `why` and returns ERROR_INVALID (or -ENOMEM).
 */
int pem_read_certs(const char *pem, size_t len, STACK_OF(X509) **out, char *why, size_t whylen);

/* "CN=mail.example.com, O=Example" style one-line subject into buf. */
void pem_subject(X509 *cert, char *buf, size_t len);

/* notAfter / notBefore as Unix time; -1 if it cannot be read. */
long long pem_not_after(X509 *cert);
long long pem_not_before(X509 *cert);
/* The earliest notAfter of a bundle, the date it needs attention by; -1
 * if none can be read. */
long long pem_earliest_not_after(STACK_OF(X509) *certs);

/*
 * A leaf is a server certificate the hostname must match: one that is not a
 * CA, or a self-signed one that names hosts in a subjectAltName.
 */
bool pem_is_leaf(X509 *cert);

/* Appends the certificate's CN and SAN DNS/IP names to buf as a ", " list
 * (buf[len] must hold a string; what does not fit ends in "..."; a buf with
 * no NUL within len is left as it is). */
void pem_names(X509 *cert, char *buf, size_t len);

/* True if the certificate is valid for `host` of the given kind: DNS names
 * by X509_check_host without partial wildcards, IP literals by
 * X509_check_ip_asc. */
bool pem_matches_host(X509 *cert, const char *host, enum syntax_host kind);

#endif
