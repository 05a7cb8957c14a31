#include "settings.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/x509.h>

#include "error.h"
#include "pem.h"
#include "syntax.h"
#include "internal.h"

/*
 * This file: settings_validate() and its checks, certificates included.
 * The record, its setters and its display are in settings.c.
 */

/*
 * Checks that a fixed-size string field is terminated and free of control
 * characters (records may come from protobuf). Returns false if the value
 * must not be looked at further.
 */
static bool check_string(const char *field, const char *v, size_t cap, struct settings_problems *p)
{
    size_t n = strnlen(v, cap);

    if (n == cap) {
        settings_problem_add(p, field, false, "is too long (at most %zu characters)", cap - 1);
        return false;
    }
    if (syntax_has_control(v)) {
        settings_problem_add(p, field, false,
                             "contains a control character (such as a line break); remove it");
        return false;
    }
    return true;
}

static enum syntax_host check_hostname(const char *h, struct settings_problems *p)
{
    char why[200], q[SETTINGS__QUOTE_MAX + 8];
    enum syntax_host kind;

    if (!check_string("hostname", h, SETTINGS_HOSTNAME_MAX + 1, p))
        return SYNTAX_HOST_BAD;
    if (h[0] == '\0') {
        settings_problem_add(p, "hostname", true,
                             "is required: the name or IP address of the mail server");
        return SYNTAX_HOST_BAD;
    }
    kind = syntax_host_classify(h, why, sizeof(why));
    if (kind == SYNTAX_HOST_BAD)
        settings_problem_add(p, "hostname", false, "%s is not a valid host name or IP address: %s",
                             settings__quote(q, sizeof(q), h), why);
    return kind;
}

static void check_address(const char *field, const char *a, const char *purpose,
                          struct settings_problems *p)
{
    char why[200], q[SETTINGS__QUOTE_MAX + 8];

    if (!check_string(field, a, SETTINGS_ADDRESS_MAX + 1, p))
        return;
    if (a[0] == '\0') {
        settings_problem_add(p, field, true, "is required: %s", purpose);
        return;
    }
    if (!syntax_mailbox_valid(a, why, sizeof(why)))
        settings_problem_add(p, field, false, "%s is not a valid mail address: %s",
                             settings__quote(q, sizeof(q), a), why);
}

static void check_logon(const struct settings *s, const char *confirm, struct settings_problems *p)
{
    size_t n;

    if (check_string("user_id", s->user_id, sizeof(s->user_id), p) && s->logon_required &&
        s->user_id[0] == '\0')
        settings_problem_add(p, "user_id", true,
                             "is required when logon_required is on: the account on the mail "
                             "server");
    if (s->logon_required && !s->password_set)
        settings_problem_add(p, "password", true, "is required when logon_required is on");
    /* The sender never sends AUTH in clear unless told to (DESIGN.md), so
     * such a record could never deliver: say so before a save, not at the
     * first mail. "Incomplete" so a draft may be built in the console's
     * order (logon first, SMTPS after). */
    if (s->logon_required && !s->smtps_enabled && !s->allow_plaintext_auth)
        settings_problem_add(p, "logon_required", true,
                             "would send the password unencrypted: turn on smtps_enabled, or "
                             "(only on a trusted network) allow_plaintext_auth");
    if (confirm != NULL) {
        size_t clen = strlen(confirm);

        n = s->password != NULL ? strlen(s->password) : 0;
        if (s->password == NULL || n != clen || CRYPTO_memcmp(s->password, confirm, n) != 0)
            settings_problem_add(p, "password", false, "does not match its confirmation");
    }
    if (s->password != NULL) {
        n = strnlen(s->password, SETTINGS_PASSWORD_MAX + 1);
        if (n == 0)
            settings_problem_add(p, "password", false, "is empty");
        else if (n > SETTINGS_PASSWORD_MAX)
            settings_problem_add(p, "password", false, "is too long (at most %d characters)",
                                 SETTINGS_PASSWORD_MAX);
        else if (strpbrk(s->password, "\r\n") != NULL)
            settings_problem_add(p, "password", false, "contains a line break");
    }
}

static void check_cert_dates(X509 *c, time_t now, struct settings_problems *p)
{
    char subject[128], date[64];
    time_t t = now;
    int after = X509_cmp_time(X509_get0_notAfter(c), &t);
    int before = X509_cmp_time(X509_get0_notBefore(c), &t);

    pem_subject(c, subject, sizeof(subject));
    if (after == 0 || before == 0) {
        settings_problem_add(p, "trust_certificate", false,
                             "certificate \"%s\" has an unreadable validity period", subject);
        return;
    }
    if (after < 0) {
        settings__format_date(pem_not_after(c), date, sizeof(date));
        settings_problem_add(p, "trust_certificate", false,
                             "certificate \"%s\" expired on %s; import a current one", subject,
                             date);
    }
    if (before > 0) {
        settings__format_date(pem_not_before(c), date, sizeof(date));
        settings_problem_add(p, "trust_certificate", false,
                             "certificate \"%s\" is not valid until %s (check the clock or the "
                             "certificate)",
                             subject, date);
    }
}

/* True if some leaf of the bundle is valid for `host` of kind `kind`. */
static bool leaf_matches(STACK_OF(X509) *certs, const char *host, enum syntax_host kind)
{
    for (int i = 0; i < sk_X509_num(certs); i++) {
        X509 *c = sk_X509_value(certs, i);

        if (pem_is_leaf(c) && pem_matches_host(c, host, kind))
            return true;
    }
    return false;
}

/*
 * With SMTPS on, the sender verifies a fallback relay against the same
 * bundle as the main host: when the bundle names servers (has a leaf), a
 * relay it does not name would fail every handshake, so it is reported now
 * rather than on the day the main host is down. Relays whose host is
 * missing or malformed are reported by check_relays() alone.
 */
static void check_relay_names(const struct settings *s, STACK_OF(X509) *certs, const char *names,
                              struct settings_problems *p)
{
    size_t n = s->nrelays > SETTINGS_RELAYS_MAX ? SETTINGS_RELAYS_MAX : s->nrelays;
    char why[200], q[SETTINGS__QUOTE_MAX + 8];

    for (size_t i = 0; i < n; i++) {
        const struct settings_relay *r = &s->relays[i];
        enum syntax_host kind;

        if (strnlen(r->hostname, sizeof(r->hostname)) == sizeof(r->hostname) ||
            r->hostname[0] == '\0' || syntax_has_control(r->hostname))
            continue;
        kind = syntax_host_classify(r->hostname, why, sizeof(why));
        if (kind == SYNTAX_HOST_BAD || leaf_matches(certs, r->hostname, kind))
            continue;
        settings_problem_add(p, "fallback_relays", false,
                             "entry %zu: %s is not in the certificate (CN/SAN: %s); with SMTPS "
                             "the relay must present a certificate for its name",
                             i + 1, settings__quote(q, sizeof(q), r->hostname),
                             names[0] ? names : "none");
    }
}

static void check_certificate(const struct settings *s, enum syntax_host host, time_t now,
                              struct settings_problems *p)
{
    STACK_OF(X509) *certs = NULL;
    char why[200], names[160] = "", q[SETTINGS__QUOTE_MAX + 8];
    size_t len;
    bool any_leaf = false, matched = false;
    int i, rc;

    if (s->trust_certificate == NULL) {
        if (s->smtps_enabled)
            settings_problem_add(p, "trust_certificate", true,
                                 "is required when smtps_enabled is on: import the mail "
                                 "server's certificate or its CA (settings import-cert)");
        return;
    }
    len = strnlen(s->trust_certificate, SETTINGS_PEM_MAX + 1);
    if (len > SETTINGS_PEM_MAX) {
        settings_problem_add(p, "trust_certificate", false, "is too large (at most %d bytes)",
                             SETTINGS_PEM_MAX);
        return;
    }
    rc = pem_read_certs(s->trust_certificate, len, &certs, why, sizeof(why));
    if (rc == -ENOMEM) {
        settings_problem_add(p, "trust_certificate", false, "could not be read (out of memory)");
        return;
    }
    if (rc < 0) {
        settings_problem_add(p, "trust_certificate", false, "%s", why);
        return;
    }
    for (i = 0; i < sk_X509_num(certs); i++) {
        X509 *c = sk_X509_value(certs, i);

        check_cert_dates(c, now, p);
        if (!pem_is_leaf(c))
            continue;
        any_leaf = true;
        if (host != SYNTAX_HOST_BAD && pem_matches_host(c, s->hostname, host))
            matched = true;
        pem_names(c, names, sizeof(names));
    }
    /* An invalid or empty hostname is reported on its own; a bundle of CAs
     * only is checked by the chain at connection time, with any name. */
    if (any_leaf && host != SYNTAX_HOST_BAD && !matched)
        settings_problem_add(p, "hostname", false, "%s is not in the certificate (CN/SAN: %s)",
                             settings__quote(q, sizeof(q), s->hostname), names[0] ? names : "none");
    if (any_leaf && s->smtps_enabled)
        check_relay_names(s, certs, names, p);
    sk_X509_pop_free(certs, X509_free);
    ERR_clear_error();
}

static void check_timeouts(const struct settings *s, struct settings_problems *p)
{
    int f;

    for (f = SETTINGS_F_TIMEOUT_CONNECT; f <= SETTINGS_F_TIMEOUT_DATA_TERM; f++) {
        uint32_t v = settings__timeout_value(s, (enum settings_field)f);

        if (v > SETTINGS_TIMEOUT_MAX)
            settings_problem_add(p, settings_field_name((enum settings_field)f), false,
                                 "is %u seconds; at most %d (or 0 for the default)", v,
                                 SETTINGS_TIMEOUT_MAX);
    }
}

static void check_relays(const struct settings *s, struct settings_problems *p)
{
    size_t i, n = s->nrelays;

    if (n > SETTINGS_RELAYS_MAX) {
        settings_problem_add(p, "fallback_relays", false, "lists %zu relays; at most %d", n,
                             SETTINGS_RELAYS_MAX);
        n = SETTINGS_RELAYS_MAX;
    }
    for (i = 0; i < n; i++) {
        const struct settings_relay *r = &s->relays[i];
        char why[200], q[SETTINGS__QUOTE_MAX + 8];

        if (!check_string("fallback_relays", r->hostname, sizeof(r->hostname), p))
            continue;
        if (r->hostname[0] == '\0')
            settings_problem_add(p, "fallback_relays", false, "entry %zu has no host name", i + 1);
        else if (syntax_host_classify(r->hostname, why, sizeof(why)) == SYNTAX_HOST_BAD)
            settings_problem_add(p, "fallback_relays", false,
                                 "entry %zu: %s is not a valid host name or IP address: %s", i + 1,
                                 settings__quote(q, sizeof(q), r->hostname), why);
        if (r->port > SETTINGS__PORT_MAX)
            settings_problem_add(p, "fallback_relays", false,
                                 "entry %zu: port %u is out of range (1 to 65535)", i + 1, r->port);
    }
}

/*
 * Decisions beyond DESIGN.md:
 *   - tls_mode and starttls_fallback are kept, unchecked and ignored while
 *     smtps_enabled is off: the sender then speaks plain SMTP and
 *     settings_port() defaults to 25. Refusing them would make an
 *     administrator re-enter them each time SMTPS is switched off and on.
 *   - A trust_certificate is checked whenever present, even with SMTPS off,
 *     so a bad import is reported when it is made. Fallback relays are
 *     matched against its leaves only with SMTPS on (check_relay_names):
 *     without SMTPS nothing verifies a relay's certificate.
 */
int settings_validate(const struct settings *s, const char *confirm, time_t now,
                      struct settings_problems *problems)
{
    size_t before = problems->count + problems->dropped;
    enum syntax_host host;

    if (check_string("instance", s->instance, sizeof(s->instance), problems)) {
        if (s->instance[0] == '\0')
            settings_problem_add(problems, "instance", true,
                                 "is required: the id of the node these settings are for");
        else if (!settings_instance_valid(s->instance))
            settings_problem_add(problems, "instance", false,
                                 "is not a valid instance id (letters, digits, \".\", \"_\" and "
                                 "\"-\", starting with a letter or digit)");
    }
    host = check_hostname(s->hostname, problems);
    if (s->port > SETTINGS__PORT_MAX)
        settings_problem_add(problems, "port", false,
                             "%u is out of range (1 to 65535, or 0 for the default)", s->port);
    check_address("from_address", s->from_address, "the sender address shown as From on every mail",
                  problems);
    check_address("test_address", s->test_address, "where Test Connection sends its mail",
                  problems);
    check_logon(s, confirm, problems);
    if (s->tls_mode != SETTINGS_TLS_UNSET && s->tls_mode != SETTINGS_TLS_STRICT &&
        s->tls_mode != SETTINGS_TLS_STARTTLS)
        settings_problem_add(problems, "tls_mode", false, "has an unknown value %d",
                             (int)s->tls_mode);
    else if (s->smtps_enabled && s->tls_mode == SETTINGS_TLS_UNSET)
        settings_problem_add(problems, "tls_mode", true,
                             "is required when smtps_enabled is on: strict (TLS from the first "
                             "byte, port 465) or starttls (upgrade with STARTTLS, port 587)");
    check_certificate(s, host, now, problems);
    check_timeouts(s, problems);
    check_relays(s, problems);
    return problems->count + problems->dropped > before ? ERROR_INVALID : 0;
}
