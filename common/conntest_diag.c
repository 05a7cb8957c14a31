/*
 * conntest_diag: the diagnosis of a failed Test Connection step
 * (conntest.h): a plain sentence written from the failure kind, the step,
 * the server's reply and the settings tried (host, port, TLS mode, user,
 * recipient), saying what is wrong and what to change. conntest.c records
 * the steps and calls conntest__diagnose() for each failed one.
 *
 * The inputs come straight from the client, server text included: a
 * diagnosis may quote them, and conntest.c redacts and escapes it when it
 * records it, like every other text of the result.
 */
#include "internal.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "conntest.h"
#include "pem.h"

void conntest__appendf(char *buf, size_t len, size_t *pos, const char *fmt, ...)
{
    va_list ap;
    int n;

    if (*pos >= len)
        return;
    va_start(ap, fmt);
    n = vsnprintf(buf + *pos, len - *pos, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    *pos = (size_t)n < len - *pos ? *pos + (size_t)n : len - 1;
}

int conntest__reply_code(const char *reply)
{
    if (reply == NULL || reply[0] < '2' || reply[0] > '5' || reply[1] < '0' || reply[1] > '9' ||
        reply[2] < '0' || reply[2] > '9')
        return 0;
    return (reply[0] - '0') * 100 + (reply[1] - '0') * 10 + (reply[2] - '0');
}

/* True if `needle` occurs in `hay`, ignoring case. */
static bool contains_ci(const char *hay, const char *needle)
{
    size_t n = strlen(needle);

    for (; hay != NULL && *hay != '\0'; hay++) {
        if (strncasecmp(hay, needle, n) == 0)
            return true;
    }
    return false;
}

/*
 * The value of `key` in a step detail of the form "subject=CN=a, O=b
 * san=DNS:a, DNS:b expires=... chain=...": from after "key=" up to the next
 * " word=" with a lower-case word (DN attributes are upper case), trailing
 * separators removed. False if the key is absent or its value empty.
 */
static bool detail_value(const char *detail, const char *key, char *buf, size_t len)
{
    size_t klen = strlen(key), n;
    const char *p, *v = NULL, *end;

    for (p = detail; p != NULL && *p != '\0'; p++) {
        if ((p == detail || p[-1] == ' ' || p[-1] == ';' || p[-1] == ',') &&
            strncmp(p, key, klen) == 0 && p[klen] == '=') {
            v = p + klen + 1;
            break;
        }
    }
    if (v == NULL)
        return false;
    for (end = v; *end != '\0'; end++) {
        if (*end != ' ')
            continue;
        const char *w = end + 1;
        while ((*w >= 'a' && *w <= 'z') || *w == '_')
            w++;
        if (w > end + 1 && *w == '=')
            break;
    }
    while (end > v && (end[-1] == ' ' || end[-1] == ',' || end[-1] == ';'))
        end--;
    n = (size_t)(end - v);
    if (n == 0 || len == 0)
        return false;
    if (n >= len)
        n = len - 1;
    memcpy(buf, v, n);
    buf[n] = '\0';
    return true;
}

/* Parses a certificate date as a client may print it; -1 if it cannot. */
static long long parse_date(const char *text)
{
    static const char *const formats[] = {
        "%Y-%m-%dT%H:%M:%SZ",
        "%Y-%m-%d %H:%M:%S",
        "%b %d %H:%M:%S %Y GMT",
        "%Y-%m-%d",
    };
    struct tm tm;

    for (size_t i = 0; i < sizeof(formats) / sizeof(formats[0]); i++) {
        memset(&tm, 0, sizeof(tm));
        const char *end = strptime(text, formats[i], &tm);
        if (end != NULL && (*end == '\0' || *end == ' ' || *end == ','))
            return (long long)timegm(&tm);
    }
    return -1;
}

/* "CN=a; CN=b" of the imported certificates, for CERT_UNTRUSTED. */
static void trust_subjects(const struct settings *s, char *buf, size_t len)
{
    STACK_OF(X509) *certs = NULL;
    char why[128], subject[256];
    size_t pos = 0;

    buf[0] = '\0';
    if (s->trust_certificate == NULL ||
        pem_read_certs(s->trust_certificate, strlen(s->trust_certificate), &certs, why,
                       sizeof(why)) < 0)
        return;
    for (int i = 0; i < sk_X509_num(certs); i++) {
        if (i == 3) {
            conntest__appendf(buf, len, &pos, "; and %d more", sk_X509_num(certs) - 3);
            break;
        }
        pem_subject(sk_X509_value(certs, i), subject, sizeof(subject));
        conntest__appendf(buf, len, &pos, "%s%s", i > 0 ? "; " : "", subject);
    }
    sk_X509_pop_free(certs, X509_free);
}

/* --- diagnosis ------------------------------------------------------------ */

/* What the client sent in a step, as a diagnosis names it. */
static const char *step_command(Smtpsync__TestStepKind kind)
{
    switch (kind) {
    case SMTPSYNC__TEST_STEP_KIND__TEST_STEP_TLS:
    case SMTPSYNC__TEST_STEP_KIND__TEST_STEP_CERTIFICATE:
        return "the TLS handshake";
    case SMTPSYNC__TEST_STEP_KIND__TEST_STEP_EHLO:
        return "EHLO";
    case SMTPSYNC__TEST_STEP_KIND__TEST_STEP_STARTTLS:
        return "STARTTLS";
    case SMTPSYNC__TEST_STEP_KIND__TEST_STEP_AUTH:
        return "AUTH";
    case SMTPSYNC__TEST_STEP_KIND__TEST_STEP_MAIL:
        return "MAIL FROM";
    case SMTPSYNC__TEST_STEP_KIND__TEST_STEP_RCPT:
        return "RCPT TO";
    case SMTPSYNC__TEST_STEP_KIND__TEST_STEP_DATA:
        return "DATA";
    case SMTPSYNC__TEST_STEP_KIND__TEST_STEP_QUIT:
        return "QUIT";
    default:
        return conntest_step_name(kind);
    }
}

/* The timeout setting of a step, for the TIMEOUT diagnosis. */
static const char *timeout_name(const struct settings *s, Smtpsync__TestStepKind kind,
                                uint32_t *value)
{
    switch (kind) {
    case SMTPSYNC__TEST_STEP_KIND__TEST_STEP_RESOLVE:
    case SMTPSYNC__TEST_STEP_KIND__TEST_STEP_CONNECT:
        *value = s->timeouts.connect;
        return "timeout_connect";
    case SMTPSYNC__TEST_STEP_KIND__TEST_STEP_GREETING:
        *value = s->timeouts.greeting;
        return "timeout_greeting";
    case SMTPSYNC__TEST_STEP_KIND__TEST_STEP_MAIL:
        *value = s->timeouts.mail;
        return "timeout_mail";
    case SMTPSYNC__TEST_STEP_KIND__TEST_STEP_RCPT:
        *value = s->timeouts.rcpt;
        return "timeout_rcpt";
    case SMTPSYNC__TEST_STEP_KIND__TEST_STEP_DATA:
        *value = s->timeouts.data_term;
        return "timeout_data_init, timeout_data_block and timeout_data_term";
    default:
        *value = s->timeouts.command;
        return "timeout_command";
    }
}

/* "the server's reply" when one was quoted, for sentences that refer to it. */
static const char *reply_ref(const struct conntest__diag *in)
{
    return in->reply != NULL && in->reply[0] != '\0' ? " (its reply is quoted above)" : "";
}

static void diagnose_timeout(const struct conntest__diag *in, char *b, size_t len, size_t *pos)
{
    const struct settings *s = in->settings;
    const char *host = s->hostname;
    uint32_t port = in->port, value = 0;
    const char *setting = timeout_name(s, in->kind, &value);
    bool strict = s->smtps_enabled && s->tls_mode == SETTINGS_TLS_STRICT;

    switch (in->kind) {
    case SMTPSYNC__TEST_STEP_KIND__TEST_STEP_RESOLVE:
        conntest__appendf(b, len, pos, "the name server did not answer for %s in time", host);
        break;
    case SMTPSYNC__TEST_STEP_KIND__TEST_STEP_CONNECT:
        conntest__appendf(b, len, pos,
                          "no answer from %s:%" PRIu32
                          ": a firewall may drop the connection, or the host is down",
                          host, port);
        break;
    case SMTPSYNC__TEST_STEP_KIND__TEST_STEP_TLS:
        if (strict && port != 465)
            conntest__appendf(
                b, len, pos,
                "the server did not answer the TLS handshake: port %" PRIu32
                " expects STARTTLS (set tls_mode=starttls) or plaintext; implicit TLS is "
                "normally on port 465",
                port);
        else
            conntest__appendf(b, len, pos, "the server did not complete the TLS handshake in time");
        break;
    case SMTPSYNC__TEST_STEP_KIND__TEST_STEP_GREETING:
        if (!strict && port == 465)
            conntest__appendf(
                b, len, pos,
                "no greeting from the server: port 465 usually expects implicit TLS: set "
                "%stls_mode=strict",
                s->smtps_enabled ? "" : "smtps_enabled=on and ");
        else if (!strict)
            conntest__appendf(
                b, len, pos,
                "the server accepted the connection but sent no greeting in time: it may be "
                "overloaded, or expect implicit TLS: then set %stls_mode=strict",
                s->smtps_enabled ? "" : "smtps_enabled=on and ");
        else
            conntest__appendf(
                b, len, pos,
                "the server accepted the connection but sent no greeting in time: it may be "
                "overloaded, or not an SMTP server");
        break;
    default:
        conntest__appendf(b, len, pos, "the server did not answer %s in time",
                          step_command(in->kind));
        break;
    }
    if (value != 0)
        conntest__appendf(b, len, pos, "; waited %" PRIu32 " s (%s)", value, setting);
    else
        conntest__appendf(b, len, pos, "; waited the default time (%s)", setting);
}

static void diagnose_cert(const struct conntest__diag *in, char *b, size_t len, size_t *pos)
{
    const struct settings *s = in->settings;
    const char *d = in->detail != NULL ? in->detail : "";
    char names[1024], issuer[512], subject[512], anchors[1024], expires[128];

    switch (in->fail) {
    case SMTP_FAIL_CERT_HOSTNAME:
        if ((detail_value(d, "san", names, sizeof(names)) && strcmp(names, "none") != 0) ||
            detail_value(d, "subject", names, sizeof(names)))
            conntest__appendf(
                b, len, pos,
                "the certificate names %s, not %s: set hostname to a name the certificate "
                "holds, or have the server's certificate name %s",
                names, s->hostname, s->hostname);
        else
            conntest__appendf(b, len, pos, "the server's certificate does not name %s",
                              s->hostname);
        break;
    case SMTP_FAIL_CERT_UNTRUSTED:
        trust_subjects(s, anchors, sizeof(anchors));
        if (anchors[0] == '\0')
            snprintf(anchors, sizeof(anchors), "none readable");
        if (!detail_value(d, "subject", subject, sizeof(subject)))
            subject[0] = '\0';
        if (!detail_value(d, "issuer", issuer, sizeof(issuer)))
            issuer[0] = '\0';
        if (issuer[0] != '\0' && strcmp(issuer, subject) == 0)
            conntest__appendf(b, len, pos,
                              "the server's certificate is self-signed (subject %s) and is not the "
                              "imported certificate (subject %s): import the server's certificate",
                              subject, anchors);
        else if (issuer[0] != '\0')
            conntest__appendf(b, len, pos,
                              "the server's certificate (issuer %s) is not signed by the imported "
                              "certificate (subject %s): import the certificate of %s",
                              issuer, anchors, issuer);
        else
            conntest__appendf(
                b, len, pos,
                "the server's certificate%s%s%s is not signed by the imported certificate "
                "(subject %s): import the certificate of the CA that issued it",
                subject[0] != '\0' ? " (subject " : "", subject, subject[0] != '\0' ? ")" : "",
                anchors);
        break;
    case SMTP_FAIL_CERT_EXPIRED:
        if (detail_value(d, "expires", expires, sizeof(expires)) ||
            detail_value(d, "not_after", expires, sizeof(expires))) {
            long long t = parse_date(expires);
            if (t >= 0 && t > (long long)time(NULL))
                conntest__appendf(
                    b, len, pos,
                    "the server's certificate is not valid yet (it expires on %s, but its "
                    "start date is still to come): check the clocks of this machine and of "
                    "the server",
                    expires);
            else
                conntest__appendf(
                    b, len, pos,
                    "the server's certificate expired on %s: the server needs a new one", expires);
        } else {
            conntest__appendf(
                b, len, pos,
                "the server's certificate has expired or is not valid yet: renew it, or "
                "check the clocks of this machine and of the server");
        }
        break;
    default:
        break;
    }
}

static void diagnose_reply(const struct conntest__diag *in, char *b, size_t len, size_t *pos)
{
    const struct settings *s = in->settings;
    const char *r = in->reply != NULL ? in->reply : (in->detail != NULL ? in->detail : "");
    bool temp = in->fail == SMTP_FAIL_REPLY_4XX;

    /* RFC 5321 §3.8: 421 closes the session, whatever it answers. */
    if (in->code == 421 && in->kind != SMTPSYNC__TEST_STEP_KIND__TEST_STEP_GREETING) {
        conntest__appendf(b, len, pos,
                          "the server closed the session in reply to %s (421: service "
                          "temporarily unavailable): it may be shutting down or overloaded; try "
                          "again later",
                          step_command(in->kind));
        return;
    }
    switch (in->kind) {
    case SMTPSYNC__TEST_STEP_KIND__TEST_STEP_GREETING:
        if (temp)
            conntest__appendf(
                b, len, pos,
                "the server does not take connections now (busy or shutting down): try "
                "again later");
        else
            conntest__appendf(
                b, len, pos,
                "the server refuses connections from this machine: its address may be "
                "blocked or not allowed to send through this server");
        break;
    case SMTPSYNC__TEST_STEP_KIND__TEST_STEP_MAIL:
        if (in->code == 530)
            conntest__appendf(b, len, pos,
                              "the server requires a logon: set logon_required=on with user_id and "
                              "password");
        else if (temp)
            conntest__appendf(b, len, pos,
                              "the server temporarily refused the sender %s: try again later",
                              s->from_address);
        else
            conntest__appendf(
                b, len, pos,
                "the server refused the sender %s: this From address may not be allowed to "
                "send%s",
                s->from_address, s->logon_required ? " with this logon" : " without a logon");
        break;
    case SMTPSYNC__TEST_STEP_KIND__TEST_STEP_RCPT:
        if (in->code == 530)
            conntest__appendf(b, len, pos,
                              "the server requires a logon: set logon_required=on with user_id and "
                              "password");
        else if (temp)
            conntest__appendf(b, len, pos,
                              "the server temporarily refused the recipient %s (greylisting, or a "
                              "temporary problem): try again in a few minutes",
                              in->to);
        else if (contains_ci(r, "5.1.1") || contains_ci(r, "unknown") ||
                 contains_ci(r, "no such") || contains_ci(r, "does not exist") ||
                 contains_ci(r, "not found"))
            conntest__appendf(b, len, pos,
                              "the server says there is no mailbox %s: check the address", in->to);
        else if (in->code == 552 || contains_ci(r, "5.2.2"))
            conntest__appendf(b, len, pos, "the mailbox %s is full", in->to);
        else
            conntest__appendf(
                b, len, pos,
                "the server refused to relay to %s: relay denied (the From address or logon "
                "may not be allowed to send)",
                in->to);
        break;
    case SMTPSYNC__TEST_STEP_KIND__TEST_STEP_DATA:
        if (temp)
            conntest__appendf(b, len, pos,
                              "the server temporarily refused the test mail%s: try again later",
                              reply_ref(in));
        else
            conntest__appendf(
                b, len, pos,
                "the server refused the test mail%s: a content or policy filter may reject "
                "it",
                reply_ref(in));
        break;
    case SMTPSYNC__TEST_STEP_KIND__TEST_STEP_EHLO:
        conntest__appendf(b, len, pos,
                          "the server refused EHLO and HELO%s: it may not accept %s as a name",
                          reply_ref(in), in->helo != NULL ? in->helo : "this host's name");
        break;
    default:
        conntest__appendf(b, len, pos, "the server reported a %s failure at %s%s",
                          temp ? "temporary" : "permanent", conntest_step_name(in->kind),
                          reply_ref(in));
        break;
    }
}

static void diagnose_auth(const struct conntest__diag *in, char *b, size_t len, size_t *pos)
{
    const struct settings *s = in->settings;
    bool tls = s->smtps_enabled;

    switch (in->fail) {
    case SMTP_FAIL_AUTH_REFUSED:
        if (in->code == 534 || in->code == 538)
            conntest__appendf(
                b, len, pos,
                "the server wants a stronger AUTH mechanism or an encrypted connection for "
                "user %s%s",
                s->user_id, tls ? "" : ": turn on smtps_enabled");
        else if (in->code == 454 || (in->code >= 400 && in->code < 500))
            conntest__appendf(
                b, len, pos,
                "the server could not check user %s now (a temporary failure): try again "
                "later",
                s->user_id);
        else
            conntest__appendf(b, len, pos,
                              "the server refused user %s: check the user ID and password",
                              s->user_id);
        break;
    case SMTP_FAIL_AUTH_PLAINTEXT:
        conntest__appendf(
            b, len, pos,
            "the logon would send the password unencrypted: turn on smtps_enabled with "
            "tls_mode=starttls or strict, or (only on a trusted network) set "
            "allow_plaintext_auth=on");
        break;
    case SMTP_FAIL_AUTH_UNAVAILABLE: {
        const char *auth = strstr(in->caps, "AUTH");
        if (auth != NULL) {
            char mechs[256];
            size_t n = strcspn(auth + 4, "\n,;");
            if (n >= sizeof(mechs))
                n = sizeof(mechs) - 1;
            memcpy(mechs, auth + 4, n);
            mechs[n] = '\0';
            conntest__appendf(
                b, len, pos,
                "the server offers AUTH%s, none of which smtpsync speaks (PLAIN, LOGIN, "
                "CRAM-MD5)",
                mechs);
        } else {
            conntest__appendf(
                b, len, pos, "the server offers no AUTH mechanism: is logon required?%s",
                tls ? " (if it is not, set logon_required=off)"
                    : " (many servers offer AUTH only over TLS: turn on smtps_enabled; if no "
                      "logon is needed, set logon_required=off)");
        }
        break;
    }
    default:
        break;
    }
}

/* Writes a plain-language diagnosis of a failed step into b. */
void conntest__diagnose(const struct conntest__diag *in, char *b, size_t len)
{
    const struct settings *s = in->settings;
    const char *d = in->detail != NULL ? in->detail : "";
    bool strict = s->smtps_enabled && s->tls_mode == SETTINGS_TLS_STRICT;
    size_t pos = 0;

    b[0] = '\0';
    switch (in->fail) {
    case SMTP_FAIL_NONE:
        break;
    case SMTP_FAIL_RESOLVE:
        conntest__appendf(
            b, len, &pos,
            "the host name %s does not resolve: check hostname and this machine's DNS",
            s->hostname);
        break;
    case SMTP_FAIL_CONNECT:
        if (contains_ci(d, "refused"))
            conntest__appendf(b, len, &pos,
                              "nothing listens on %s:%" PRIu32
                              " (connection refused): check hostname and "
                              "port",
                              s->hostname, in->port);
        else if (contains_ci(d, "unreachable"))
            conntest__appendf(b, len, &pos,
                              "%s:%" PRIu32
                              " cannot be reached from this machine (no route): check the "
                              "network and firewalls",
                              s->hostname, in->port);
        else
            conntest__appendf(b, len, &pos,
                              "could not connect to %s:%" PRIu32
                              ": nothing listens there, or a firewall "
                              "blocks the connection",
                              s->hostname, in->port);
        break;
    case SMTP_FAIL_TIMEOUT:
        diagnose_timeout(in, b, len, &pos);
        break;
    case SMTP_FAIL_CLOSED:
        if (in->kind == SMTPSYNC__TEST_STEP_KIND__TEST_STEP_TLS && strict && in->port != 465)
            conntest__appendf(
                b, len, &pos,
                "the server closed the connection during the TLS handshake: port %" PRIu32
                " may expect STARTTLS (set tls_mode=starttls) or plaintext; implicit TLS is "
                "normally on port 465",
                in->port);
        else if (in->kind == SMTPSYNC__TEST_STEP_KIND__TEST_STEP_GREETING && !strict &&
                 in->port == 465)
            conntest__appendf(
                b, len, &pos,
                "the server closed the connection before its greeting: port 465 usually "
                "expects implicit TLS: set %stls_mode=strict",
                s->smtps_enabled ? "" : "smtps_enabled=on and ");
        else
            conntest__appendf(b, len, &pos, "the server closed the connection during %s%s",
                              conntest_step_name(in->kind),
                              in->kind == SMTPSYNC__TEST_STEP_KIND__TEST_STEP_GREETING
                                  ? ": it may refuse connections from this machine"
                                  : "");
        break;
    case SMTP_FAIL_TLS_NOT_TLS:
        if (in->kind == SMTPSYNC__TEST_STEP_KIND__TEST_STEP_STARTTLS ||
            s->tls_mode == SETTINGS_TLS_STARTTLS)
            conntest__appendf(b, len, &pos, "the server accepted STARTTLS but did not start TLS");
        else if (in->port == 465)
            conntest__appendf(
                b, len, &pos,
                "the server answered in plaintext on port 465: it does not offer implicit "
                "TLS there; try tls_mode=starttls on port 587");
        else
            conntest__appendf(
                b, len, &pos,
                "the server answered in plaintext: port %" PRIu32
                " expects STARTTLS (set tls_mode=starttls) or implicit TLS on port 465",
                in->port);
        break;
    case SMTP_FAIL_TLS_VERSION:
        conntest__appendf(b, len, &pos,
                          "the server offers only TLS versions older than 1.2 (SSL 3, TLS 1.0 "
                          "or 1.1), which smtpsync refuses: the server's TLS configuration must "
                          "be updated to offer TLS 1.2 or 1.3");
        break;
    case SMTP_FAIL_TLS_HANDSHAKE:
        if (contains_ci(d, "without answering"))
            /* Some servers (Python's asyncio, some appliances) drop the
             * connection instead of sending their alert. */
            conntest__appendf(b, len, &pos,
                              "the server closed the connection without answering the TLS "
                              "handshake: it may offer only TLS versions older than 1.2 or no "
                              "cipher smtpsync accepts, or not speak TLS on port %" PRIu32,
                              in->port);
        else
            conntest__appendf(b, len, &pos,
                              "the TLS handshake failed%s%s: the server and smtpsync share no TLS "
                              "version or cipher, or the server is not speaking TLS",
                              d[0] != '\0' ? ": " : "", d);
        break;
    case SMTP_FAIL_CERT_UNTRUSTED:
    case SMTP_FAIL_CERT_HOSTNAME:
    case SMTP_FAIL_CERT_EXPIRED:
        diagnose_cert(in, b, len, &pos);
        break;
    case SMTP_FAIL_STARTTLS:
        if (in->port == 465)
            conntest__appendf(b, len, &pos,
                              "port 465 usually expects implicit TLS: set tls_mode=strict");
        else if (in->code != 0)
            conntest__appendf(
                b, len, &pos,
                "the server refused STARTTLS%s: TLS may be broken or switched off on the "
                "server",
                reply_ref(in));
        else
            conntest__appendf(
                b, len, &pos,
                "the server does not offer STARTTLS on port %" PRIu32
                ": switch TLS on at the server, or use implicit TLS (tls_mode=strict, port "
                "465)",
                in->port);
        if (s->starttls_fallback && s->logon_required)
            conntest__appendf(
                b, len, &pos,
                "; starttls_fallback does not apply: the logon would send the password in "
                "clear");
        break;
    case SMTP_FAIL_AUTH_UNAVAILABLE:
    case SMTP_FAIL_AUTH_REFUSED:
    case SMTP_FAIL_AUTH_PLAINTEXT:
        diagnose_auth(in, b, len, &pos);
        break;
    case SMTP_FAIL_PROTOCOL:
        /* The client's STARTTLS step says "octets after the 220 to STARTTLS". */
        if (in->kind == SMTPSYNC__TEST_STEP_KIND__TEST_STEP_STARTTLS &&
            contains_ci(d, "after the 220"))
            conntest__appendf(
                b, len, &pos,
                "the server sent data after its 220 to STARTTLS and before TLS started: "
                "someone may be injecting commands (STARTTLS injection); the session was "
                "aborted");
        else
            conntest__appendf(b, len, &pos, "the server broke the SMTP protocol%s%s",
                              d[0] ? ": " : "", d);
        break;
    case SMTP_FAIL_REPLY_4XX:
    case SMTP_FAIL_REPLY_5XX:
        diagnose_reply(in, b, len, &pos);
        break;
    case SMTP_FAIL_TOO_BIG:
        conntest__appendf(b, len, &pos,
                          "the test mail is larger than the server accepts (its SIZE limit)");
        break;
    case SMTP_FAIL_SETTINGS:
        conntest__appendf(b, len, &pos, "the settings cannot be used%s%s", d[0] ? ": " : "", d);
        break;
    case SMTP_FAIL_CANCELLED:
        conntest__appendf(b, len, &pos, "the test was cancelled");
        break;
    case SMTP_FAIL_INTERNAL:
    case SMTP_FAIL_COUNT:
        conntest__appendf(b, len, &pos, "smtpsync failed internally%s%s", d[0] ? ": " : "", d);
        break;
    }
    if (b[0] == '\0')
        conntest__appendf(b, len, &pos, "%s", smtp_fail_str(in->fail));
}
