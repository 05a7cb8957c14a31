#include "pem.h"

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/asn1.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <arpa/inet.h>

#include "error.h"
#include "syntax.h"

#define PEM_DASHES     "-----"
#define PEM_BEGIN      "-----BEGIN "
#define PEM_END        "-----END "
#define PEM_CERT_LABEL "CERTIFICATE"

/* One line of the input, without its line ending and surrounding blanks. */
struct pem_line {
    const char *p;
    size_t len;
};

static bool pem_blank(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\f' || c == '\v';
}

/* Returns the next line starting at *pos and advances *pos past it. */
static struct pem_line pem_next_line(const char *pem, size_t len, size_t *pos)
{
    struct pem_line l;
    size_t start = *pos, end;
    const char *nl = memchr(pem + start, '\n', len - start);

    end = nl != NULL ? (size_t)(nl - pem) : len;
    *pos = nl != NULL ? end + 1 : len;
    while (start < end && pem_blank(pem[start]))
        start++;
    while (end > start && pem_blank(pem[end - 1]))
        end--;
    l.p = pem + start;
    l.len = end - start;
    return l;
}

static bool pem_line_is(struct pem_line l, const char *s)
{
    return l.len == strlen(s) && memcmp(l.p, s, l.len) == 0;
}

/*
 * If the line is "-----BEGIN X-----" (or END, by `prefix`), points *label at
 * X and returns true.
 */
static bool pem_boundary(struct pem_line l, const char *prefix, struct pem_line *label)
{
    size_t plen = strlen(prefix), dlen = strlen(PEM_DASHES);

    if (l.len < plen + dlen || memcmp(l.p, prefix, plen) != 0 ||
        memcmp(l.p + l.len - dlen, PEM_DASHES, dlen) != 0)
        return false;
    label->p = l.p + plen;
    label->len = l.len - plen - dlen;
    return true;
}

static bool pem_label_has(struct pem_line label, const char *word)
{
    return memmem(label.p, label.len, word, strlen(word)) != NULL;
}

/* Explains a block other than CERTIFICATE in the operator's terms. */
static void pem_refuse_label(struct pem_line label, unsigned lineno, char *why, size_t whylen)
{
    int n = label.len > 40 ? 40 : (int)label.len;

    if (pem_label_has(label, "PRIVATE KEY"))
        error_why(why, whylen, "line %u: contains a private key; import only the certificate",
                  lineno);
    else if (pem_line_is(label, "TRUSTED CERTIFICATE"))
        error_why(why, whylen,
                  "line %u: a TRUSTED CERTIFICATE block (OpenSSL trust format) is not accepted; "
                  "convert it with: openssl x509 -in FILE -out cert.pem",
                  lineno);
    else if (pem_label_has(label, "CERTIFICATE REQUEST"))
        error_why(why, whylen, "line %u: is a certificate signing request, not a certificate",
                  lineno);
    else
        error_why(why, whylen,
                  "line %u: unexpected \"%.*s\" block; only CERTIFICATE blocks are accepted",
                  lineno, n, label.p);
}

/*
 * Decodes the base64 body lines [body, body_end) of one block into a
 * certificate. Lines are already known to lie between BEGIN and END.
 */
static int pem_decode_block(const char *pem, size_t body, size_t body_end, unsigned begin_line,
                            X509 **out, char *why, size_t whylen)
{
    EVP_ENCODE_CTX *ctx;
    unsigned char *der;
    const unsigned char *p;
    size_t pos = body, cap = (body_end - body) / 4 * 3 + 3, n = 0;
    unsigned lineno = begin_line;
    int outl, rc = ERROR_INVALID;
    X509 *x;

    *out = NULL;
    der = malloc(cap + 1);
    ctx = EVP_ENCODE_CTX_new();
    if (der == NULL || ctx == NULL) {
        rc = -ENOMEM;
        goto free_ctx;
    }
    EVP_DecodeInit(ctx);
    while (pos < body_end) {
        struct pem_line l = pem_next_line(pem, body_end, &pos);

        lineno++;
        if (l.len == 0)
            continue;
        if (memchr(l.p, ':', l.len) != NULL) {
            error_why(why, whylen,
                      "line %u: the certificate block has headers (an encrypted or legacy PEM "
                      "file?); only plain certificates are accepted",
                      lineno);
            goto free_ctx;
        }
        /* cap bounds the whole output: base64 never decodes to more than 3/4
         * of its length. */
        if (l.len > INT_MAX ||
            EVP_DecodeUpdate(ctx, der + n, &outl, (const unsigned char *)l.p, (int)l.len) < 0) {
            error_why(why, whylen, "line %u: invalid base64 in the certificate block", lineno);
            goto free_ctx;
        }
        n += (size_t)outl;
    }
    if (EVP_DecodeFinal(ctx, der + n, &outl) < 0) {
        error_why(why, whylen, "line %u: the certificate block's base64 is cut short", begin_line);
        goto free_ctx;
    }
    n += (size_t)outl;
    if (n == 0) {
        error_why(why, whylen, "line %u: the certificate block is empty", begin_line);
        goto free_ctx;
    }
    p = der;
    x = d2i_X509(NULL, &p, (long)n);
    if (x == NULL) {
        error_why(why, whylen, "line %u: the certificate block does not hold a valid certificate",
                  begin_line);
        goto free_ctx;
    }
    if ((size_t)(p - der) != n) {
        X509_free(x);
        error_why(why, whylen,
                  "line %u: the certificate block has extra data after the certificate",
                  begin_line);
        goto free_ctx;
    }
    *out = x;
    rc = 0;
free_ctx:
    EVP_ENCODE_CTX_free(ctx);
    free(der);
    return rc;
}

/* Parses the whole text; on error *certs keeps what was read so far. */
static int pem_parse(const char *pem, size_t len, STACK_OF(X509) *certs, char *why, size_t whylen)
{
    size_t pos = 0;
    unsigned lineno = 0;
    int rc;

    /* Editors on Windows like to start UTF-8 files with a byte order mark. */
    if (len >= 3 && memcmp(pem, "\xEF\xBB\xBF", 3) == 0)
        pos = 3;
    while (pos < len) {
        struct pem_line l = pem_next_line(pem, len, &pos), label, end_label;
        unsigned begin_line;
        size_t body, body_end = 0;
        bool closed = false;
        X509 *x;

        lineno++;
        if (l.len == 0)
            continue;
        if (!pem_boundary(l, PEM_BEGIN, &label)) {
            error_why(why, whylen, "line %u: unexpected text outside a certificate block", lineno);
            return ERROR_INVALID;
        }
        if (!pem_line_is(label, PEM_CERT_LABEL)) {
            pem_refuse_label(label, lineno, why, whylen);
            return ERROR_INVALID;
        }
        begin_line = lineno;
        body = pos;
        while (pos < len) {
            size_t line_start = pos;

            l = pem_next_line(pem, len, &pos);
            lineno++;
            if (pem_boundary(l, PEM_END, &end_label)) {
                if (!pem_line_is(end_label, PEM_CERT_LABEL)) {
                    error_why(why, whylen, "line %u: END line does not match the BEGIN on line %u",
                              lineno, begin_line);
                    return ERROR_INVALID;
                }
                body_end = line_start;
                closed = true;
                break;
            }
            if (pem_boundary(l, PEM_BEGIN, &end_label))
                break;
        }
        if (!closed) {
            error_why(why, whylen,
                      "line %u: the certificate block is not closed (no END CERTIFICATE line)",
                      begin_line);
            return ERROR_INVALID;
        }
        rc = pem_decode_block(pem, body, body_end, begin_line, &x, why, whylen);
        if (rc < 0)
            return rc;
        if (sk_X509_push(certs, x) <= 0) {
            X509_free(x);
            return -ENOMEM;
        }
    }
    if (sk_X509_num(certs) == 0) {
        error_why(why, whylen, "holds no certificate (the file is empty)");
        return ERROR_INVALID;
    }
    return 0;
}

int pem_read_certs(const char *pem, size_t len, STACK_OF(X509) **out, char *why, size_t whylen)
{
    STACK_OF(X509) *certs;
    int rc;

    *out = NULL;
    error_why(why, whylen, "%s", "");
    if (pem == NULL)
        len = 0;
    /* A DER certificate starts with an ASN.1 SEQUENCE; say so plainly. */
    if (len > 0 && (unsigned char)pem[0] == 0x30) {
        error_why(why, whylen,
                  "is binary (DER), not PEM; convert it with: "
                  "openssl x509 -inform der -in FILE -out cert.pem");
        return ERROR_INVALID;
    }
    if (len > 0 && memchr(pem, '\0', len) != NULL) {
        error_why(why, whylen, "contains binary data; a PEM file is text");
        return ERROR_INVALID;
    }
    certs = sk_X509_new_null();
    if (certs == NULL)
        return -ENOMEM;
    /* Leave the caller's OpenSSL error queue as it was, whatever d2i adds. */
    ERR_set_mark();
    rc = pem_parse(pem, len, certs, why, whylen);
    ERR_pop_to_mark();
    if (rc < 0) {
        sk_X509_pop_free(certs, X509_free);
        return rc;
    }
    *out = certs;
    return 0;
}

void pem_subject(X509 *cert, char *buf, size_t len)
{
    /* RFC 2253 order and escaping (CN first, control and 8-bit bytes
     * escaped, so the text is safe to print) with ", " between parts. */
    unsigned long flags = (XN_FLAG_RFC2253 & ~XN_FLAG_SEP_MASK) | XN_FLAG_SEP_CPLUS_SPC;
    BIO *bio;
    char *data;
    long n;

    if (len == 0)
        return;
    buf[0] = '\0';
    bio = BIO_new(BIO_s_mem());
    if (bio == NULL)
        return;
    if (X509_NAME_print_ex(bio, X509_get_subject_name(cert), 0, flags) >= 0) {
        n = BIO_get_mem_data(bio, &data);
        if (n > 0)
            snprintf(buf, len, "%.*s", (int)(n > 4096 ? 4096 : n), data);
    }
    if (buf[0] == '\0')
        snprintf(buf, len, "(no subject)");
    BIO_free(bio);
    ERR_clear_error();
}

/* ---------------------------------------------------------------------
 * What validation and diagnosis ask of a certificate */

static long long asn1_time_unix(const ASN1_TIME *t)
{
    struct tm tm;

    memset(&tm, 0, sizeof(tm));
    if (t == NULL || ASN1_TIME_to_tm(t, &tm) != 1) {
        ERR_clear_error();
        return -1;
    }
    return (long long)timegm(&tm);
}

long long pem_not_after(X509 *cert)
{
    return asn1_time_unix(X509_get0_notAfter(cert));
}

long long pem_earliest_not_after(STACK_OF(X509) *certs)
{
    long long earliest = -1;

    for (int i = 0; i < sk_X509_num(certs); i++) {
        long long t = pem_not_after(sk_X509_value(certs, i));

        if (t >= 0 && (earliest < 0 || t < earliest))
            earliest = t;
    }
    return earliest;
}

/*
 * A leaf is a server certificate the hostname must match: one that is not a
 * CA, or a self-signed one that names hosts in a subjectAltName (openssl req
 * -x509 marks such certificates CA:TRUE, yet they are what a small mail
 * server presents).
 */
bool pem_is_leaf(X509 *c)
{
    if (X509_check_ca(c) == 0)
        return true;
    return X509_self_signed(c, 0) == 1 && X509_get_ext_by_NID(c, NID_subject_alt_name, -1) >= 0;
}

/* Appends a name to a ", " list in buf[len] unless it is there already.
 * Every read stays within the list, buf[0..n): a buf holding no NUL within
 * len is left alone. */
static void names_append(char *buf, size_t len, const char *name)
{
    size_t n = strnlen(buf, len), nlen = strlen(name);
    const char *end = buf + n, *at;

    /* An empty CN or SAN names nothing (and would match everywhere). */
    if (nlen == 0 || n == len)
        return;
    for (at = buf; (size_t)(end - at) >= nlen; at++) {
        at = memmem(at, (size_t)(end - at), name, nlen);
        if (at == NULL)
            break;
        /* A whole entry: preceded by the start or ", ", followed by the end
         * or ",". at + nlen <= end, so at[nlen] is read only inside. */
        if ((at == buf || at[-1] == ' ') && (at + nlen == end || at[nlen] == ','))
            return;
    }
    if (n + 1 >= len)
        return;
    if ((size_t)snprintf(buf + n, len - n, "%s%s", n > 0 ? ", " : "", name) >= len - n && len >= 4)
        snprintf(buf + len - 4, 4, "...");
}

/* Appends the CN and SAN DNS/IP names of a certificate, for a problem. */
void pem_names(X509 *c, char *buf, size_t len)
{
    X509_NAME *subject = X509_get_subject_name(c);
    GENERAL_NAMES *sans;
    char tmp[128];
    int i = -1;

    while ((i = X509_NAME_get_index_by_NID(subject, NID_commonName, i)) >= 0) {
        ASN1_STRING *d = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subject, i));
        unsigned char *utf8 = NULL;
        int n = ASN1_STRING_to_UTF8(&utf8, d);

        if (n >= 0) {
            snprintf(tmp, sizeof(tmp), "%.*s", n > 100 ? 100 : n, (const char *)utf8);
            if (!syntax_has_control(tmp))
                names_append(buf, len, tmp);
        }
        OPENSSL_free(utf8);
    }
    sans = X509_get_ext_d2i(c, NID_subject_alt_name, NULL, NULL);
    for (i = 0; sans != NULL && i < sk_GENERAL_NAME_num(sans); i++) {
        GENERAL_NAME *g = sk_GENERAL_NAME_value(sans, i);

        if (g->type == GEN_DNS) {
            int n = ASN1_STRING_length(g->d.dNSName);

            snprintf(tmp, sizeof(tmp), "%.*s", n > 100 ? 100 : n,
                     (const char *)ASN1_STRING_get0_data(g->d.dNSName));
            if (!syntax_has_control(tmp))
                names_append(buf, len, tmp);
        } else if (g->type == GEN_IPADD) {
            int n = ASN1_STRING_length(g->d.iPAddress);
            const unsigned char *ip = ASN1_STRING_get0_data(g->d.iPAddress);

            if ((n == 4 && inet_ntop(AF_INET, ip, tmp, sizeof(tmp)) != NULL) ||
                (n == 16 && inet_ntop(AF_INET6, ip, tmp, sizeof(tmp)) != NULL))
                names_append(buf, len, tmp);
        }
    }
    GENERAL_NAMES_free(sans);
}

bool pem_matches_host(X509 *c, const char *host, enum syntax_host kind)
{
    char bare[INET6_ADDRSTRLEN + 1];

    if (kind == SYNTAX_HOST_DNS)
        return X509_check_host(c, host, strlen(host), X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS, NULL) ==
               1;
    if (kind == SYNTAX_HOST_IPV4)
        return X509_check_ip_asc(c, host, 0) == 1;
    return syntax_ipv6_bare(host, bare, sizeof(bare)) && X509_check_ip_asc(c, bare, 0) == 1;
}

long long pem_not_before(X509 *cert)
{
    return asn1_time_unix(X509_get0_notBefore(cert));
}
