/*
 * conntest: Test Connection (conntest.h). One smtp_client session with
 * verbose steps sends one short test mail; every step the client reports
 * becomes a TestStep, and a failed one gets a diagnosis written from the
 * failure kind, the step, the server's reply and the settings (host, port,
 * TLS mode, user, recipient).
 *
 * Nothing secret reaches the result: the client's details never hold one,
 * and the server's text, which a hostile server could make echo what it
 * was sent, is scrubbed of the password and of the base64 forms AUTH LOGIN
 * and AUTH PLAIN send it in before it is recorded.
 */
#include "conntest.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "error.h"
#include "pem.h"
#include "smtp_client.h"
#include "smtp_message.h"
#include "syntax.h"

#define CONNTEST_TEXT_MAX 8192 /* a recorded string, before escaping */
#define CONNTEST_DIAG_MAX 2048
#define CONNTEST_NODE_MAX 256
#define CONNTEST_SECRETS  3

struct conntest {
    uv_loop_t *loop;
    /* Never started: closing it defers `done` to the loop, so that it is
     * never called from conntest_start() or from inside a client callback. */
    uv_timer_t finish;
    conntest_done_cb done; /* NULL after a failed start: free, call nothing */
    void *arg;

    struct settings settings; /* copy; the password is wiped by settings_clear */
    char to[SETTINGS_ADDRESS_MAX + 1];
    char node[CONNTEST_NODE_MAX];
    char *helo;
    char *revision;
    uint32_t port;
    /* The password as it may come back in a server's text: plain, base64
     * (AUTH LOGIN), base64 of "\0user\0password" (AUTH PLAIN). Wiped. */
    char *secrets[CONNTEST_SECRETS];

    /* The test mail; msg points into the fields below. */
    struct smtp_client_msg msg;
    const char *rcpts[1];
    char from_header[SETTINGS_ADDRESS_MAX + 32];
    char *data;
    size_t data_len;
    bool msg_handed;
    bool accepted;
    bool failed; /* a failed step that is not a warning was recorded */
    bool nomem;  /* a step could not be recorded */

    char caps[CONNTEST_TEXT_MAX]; /* the last EHLO capabilities, for AUTH */
    Smtpsync__TestResult *result;
    size_t steps_cap;
};

/* --- names ---------------------------------------------------------------- */

static const char *const step_names[] = {
    [SMTPSYNC__TEST_STEP_KIND__TEST_STEP_UNSET] = "settings",
    [SMTPSYNC__TEST_STEP_KIND__TEST_STEP_RESOLVE] = "resolve",
    [SMTPSYNC__TEST_STEP_KIND__TEST_STEP_CONNECT] = "connect",
    [SMTPSYNC__TEST_STEP_KIND__TEST_STEP_TLS] = "tls",
    [SMTPSYNC__TEST_STEP_KIND__TEST_STEP_CERTIFICATE] = "certificate",
    [SMTPSYNC__TEST_STEP_KIND__TEST_STEP_GREETING] = "greeting",
    [SMTPSYNC__TEST_STEP_KIND__TEST_STEP_EHLO] = "ehlo",
    [SMTPSYNC__TEST_STEP_KIND__TEST_STEP_STARTTLS] = "starttls",
    [SMTPSYNC__TEST_STEP_KIND__TEST_STEP_AUTH] = "auth",
    [SMTPSYNC__TEST_STEP_KIND__TEST_STEP_MAIL] = "mail",
    [SMTPSYNC__TEST_STEP_KIND__TEST_STEP_RCPT] = "rcpt",
    [SMTPSYNC__TEST_STEP_KIND__TEST_STEP_DATA] = "data",
    [SMTPSYNC__TEST_STEP_KIND__TEST_STEP_QUIT] = "quit",
};

#define N_STEP_NAMES (sizeof(step_names) / sizeof(step_names[0]))

const char *conntest_step_name(Smtpsync__TestStepKind kind)
{
    if ((unsigned)kind < N_STEP_NAMES && step_names[kind] != NULL)
        return step_names[kind];
    return "unknown";
}

/* The client's step kinds, in the proto's terms. */
static Smtpsync__TestStepKind step_kind(enum smtp_client_step_kind k)
{
    static const Smtpsync__TestStepKind kinds[] = {
        [SMTP_STEP_RESOLVE] = SMTPSYNC__TEST_STEP_KIND__TEST_STEP_RESOLVE,
        [SMTP_STEP_CONNECT] = SMTPSYNC__TEST_STEP_KIND__TEST_STEP_CONNECT,
        [SMTP_STEP_TLS] = SMTPSYNC__TEST_STEP_KIND__TEST_STEP_TLS,
        [SMTP_STEP_CERTIFICATE] = SMTPSYNC__TEST_STEP_KIND__TEST_STEP_CERTIFICATE,
        [SMTP_STEP_GREETING] = SMTPSYNC__TEST_STEP_KIND__TEST_STEP_GREETING,
        [SMTP_STEP_EHLO] = SMTPSYNC__TEST_STEP_KIND__TEST_STEP_EHLO,
        [SMTP_STEP_STARTTLS] = SMTPSYNC__TEST_STEP_KIND__TEST_STEP_STARTTLS,
        [SMTP_STEP_AUTH] = SMTPSYNC__TEST_STEP_KIND__TEST_STEP_AUTH,
        [SMTP_STEP_MAIL] = SMTPSYNC__TEST_STEP_KIND__TEST_STEP_MAIL,
        [SMTP_STEP_RCPT] = SMTPSYNC__TEST_STEP_KIND__TEST_STEP_RCPT,
        [SMTP_STEP_DATA] = SMTPSYNC__TEST_STEP_KIND__TEST_STEP_DATA,
        [SMTP_STEP_QUIT] = SMTPSYNC__TEST_STEP_KIND__TEST_STEP_QUIT,
    };

    if ((unsigned)k < sizeof(kinds) / sizeof(kinds[0]))
        return kinds[k];
    return SMTPSYNC__TEST_STEP_KIND__TEST_STEP_UNSET;
}

/* --- text ----------------------------------------------------------------- */

/* Appends `fmt` to buf[len] at *pos; output that does not fit is cut. */
static void appendf(char *buf, size_t len, size_t *pos, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void appendf(char *buf, size_t len, size_t *pos, const char *fmt, ...)
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

/* Copies `in` with every occurrence of a secret replaced by the mask. */
static char *redact(const struct conntest *ct, const char *in)
{
    char *cur = strdup(in);

    for (size_t i = 0; i < CONNTEST_SECRETS && cur != NULL; i++) {
        const char *secret = ct->secrets[i];
        size_t slen, mlen = strlen(SETTINGS_PASSWORD_MASK), n = 0, cap;
        const char *p, *hit;
        char *out;

        if (secret == NULL || (slen = strlen(secret)) == 0 || strstr(cur, secret) == NULL)
            continue;
        /* Each hit of slen >= 1 octets grows by at most mlen - 1. */
        cap = strlen(cur) * mlen + 1;
        out = malloc(cap);
        if (out == NULL) {
            OPENSSL_cleanse(cur, strlen(cur));
            free(cur);
            return NULL;
        }
        for (p = cur; (hit = strstr(p, secret)) != NULL; p = hit + slen) {
            memcpy(out + n, p, (size_t)(hit - p));
            n += (size_t)(hit - p);
            memcpy(out + n, SETTINGS_PASSWORD_MASK, mlen);
            n += mlen;
        }
        memcpy(out + n, p, strlen(p) + 1);
        OPENSSL_cleanse(cur, strlen(cur));
        free(cur);
        cur = out;
    }
    return cur;
}

/* Writes `in` as printable ASCII: other octets as \xNN, and "\n" kept only
 * when `multiline`. At most `max` input octets are taken; more is cut with
 * "...". Returns a malloc'd string or NULL. */
static char *escape(const char *in, bool multiline, size_t max)
{
    size_t n = strnlen(in, max + 1), o = 0;
    char *out = malloc((n > max ? max : n) * 4 + 4);

    if (out == NULL)
        return NULL;
    for (size_t i = 0; i < n && i < max; i++) {
        unsigned char c = (unsigned char)in[i];
        if ((c >= 0x20 && c < 0x7f) || (c == '\n' && multiline))
            out[o++] = (char)c;
        else
            o += (size_t)snprintf(out + o, 5, "\\x%02x", c);
    }
    if (n > max) {
        memcpy(out + o, "...", 3);
        o += 3;
    }
    out[o] = '\0';
    return out;
}

/* Text from the server, the client or the settings as it is recorded:
 * redacted, then escaped. NULL and "" give NULL (the field keeps its
 * default ""); sets ct->nomem when out of memory. */
static char *record_text(struct conntest *ct, const char *in, bool multiline)
{
    char *red, *out;

    if (in == NULL || in[0] == '\0')
        return NULL;
    red = redact(ct, in);
    if (red == NULL) {
        ct->nomem = true;
        return NULL;
    }
    /* Trailing line ends of a reply say nothing. */
    for (size_t n = strlen(red); n > 0 && (red[n - 1] == '\n' || red[n - 1] == '\r'); n--)
        red[n - 1] = '\0';
    out = red[0] != '\0' ? escape(red, multiline, CONNTEST_TEXT_MAX) : NULL;
    if (out == NULL && red[0] != '\0')
        ct->nomem = true;
    OPENSSL_cleanse(red, strlen(red));
    free(red);
    return out;
}

/* The reply code at the start of a server reply, or 0. */
static int reply_code(const char *reply)
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
            appendf(buf, len, &pos, "; and %d more", sk_X509_num(certs) - 3);
            break;
        }
        pem_subject(sk_X509_value(certs, i), subject, sizeof(subject));
        appendf(buf, len, &pos, "%s%s", i > 0 ? "; " : "", subject);
    }
    sk_X509_pop_free(certs, X509_free);
}

/* --- diagnosis ------------------------------------------------------------ */

/* What the diagnosis looks at. */
struct diag_in {
    Smtpsync__TestStepKind kind;
    enum smtp_fail fail;
    const char *detail; /* may be NULL */
    const char *reply;  /* may be NULL */
    int code;           /* reply code, 0 if none */
};

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
static const char *reply_ref(const struct diag_in *in)
{
    return in->reply != NULL && in->reply[0] != '\0' ? " (its reply is quoted above)" : "";
}

static void diagnose_timeout(const struct conntest *ct, const struct diag_in *in, char *b,
                             size_t len, size_t *pos)
{
    const struct settings *s = &ct->settings;
    const char *host = s->hostname;
    uint32_t port = ct->port, value = 0;
    const char *setting = timeout_name(s, in->kind, &value);
    bool strict = s->smtps_enabled && s->tls_mode == SETTINGS_TLS_STRICT;

    switch (in->kind) {
    case SMTPSYNC__TEST_STEP_KIND__TEST_STEP_RESOLVE:
        appendf(b, len, pos, "the name server did not answer for %s in time", host);
        break;
    case SMTPSYNC__TEST_STEP_KIND__TEST_STEP_CONNECT:
        appendf(b, len, pos,
                "no answer from %s:%" PRIu32 ": a firewall may drop the connection, or the host "
                "is down",
                host, port);
        break;
    case SMTPSYNC__TEST_STEP_KIND__TEST_STEP_TLS:
        if (strict && port != 465)
            appendf(b, len, pos,
                    "the server did not answer the TLS handshake: port %" PRIu32
                    " expects STARTTLS (set tls_mode=starttls) or plaintext; implicit TLS is "
                    "normally on port 465",
                    port);
        else
            appendf(b, len, pos, "the server did not complete the TLS handshake in time");
        break;
    case SMTPSYNC__TEST_STEP_KIND__TEST_STEP_GREETING:
        if (!strict && port == 465)
            appendf(b, len, pos,
                    "no greeting from the server: port 465 usually expects implicit TLS: set "
                    "%stls_mode=strict",
                    s->smtps_enabled ? "" : "smtps_enabled=on and ");
        else if (!strict)
            appendf(b, len, pos,
                    "the server accepted the connection but sent no greeting in time: it may be "
                    "overloaded, or expect implicit TLS: then set %stls_mode=strict",
                    s->smtps_enabled ? "" : "smtps_enabled=on and ");
        else
            appendf(b, len, pos,
                    "the server accepted the connection but sent no greeting in time: it may be "
                    "overloaded, or not an SMTP server");
        break;
    default:
        appendf(b, len, pos, "the server did not answer %s in time", step_command(in->kind));
        break;
    }
    if (value != 0)
        appendf(b, len, pos, "; waited %" PRIu32 " s (%s)", value, setting);
    else
        appendf(b, len, pos, "; waited the default time (%s)", setting);
}

static void diagnose_cert(const struct conntest *ct, const struct diag_in *in, char *b, size_t len,
                          size_t *pos)
{
    const struct settings *s = &ct->settings;
    const char *d = in->detail != NULL ? in->detail : "";
    char names[1024], issuer[512], subject[512], anchors[1024], expires[128];

    switch (in->fail) {
    case SMTP_FAIL_CERT_HOSTNAME:
        if ((detail_value(d, "san", names, sizeof(names)) && strcmp(names, "none") != 0) ||
            detail_value(d, "subject", names, sizeof(names)))
            appendf(b, len, pos,
                    "the certificate names %s, not %s: set hostname to a name the certificate "
                    "holds, or have the server's certificate name %s",
                    names, s->hostname, s->hostname);
        else
            appendf(b, len, pos, "the server's certificate does not name %s", s->hostname);
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
            appendf(b, len, pos,
                    "the server's certificate is self-signed (subject %s) and is not the "
                    "imported certificate (subject %s): import the server's certificate",
                    subject, anchors);
        else if (issuer[0] != '\0')
            appendf(b, len, pos,
                    "the server's certificate (issuer %s) is not signed by the imported "
                    "certificate (subject %s): import the certificate of %s",
                    issuer, anchors, issuer);
        else
            appendf(b, len, pos,
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
                appendf(b, len, pos,
                        "the server's certificate is not valid yet (it expires on %s, but its "
                        "start date is still to come): check the clocks of this machine and of "
                        "the server",
                        expires);
            else
                appendf(b, len, pos,
                        "the server's certificate expired on %s: the server needs a new one",
                        expires);
        } else {
            appendf(b, len, pos,
                    "the server's certificate has expired or is not valid yet: renew it, or "
                    "check the clocks of this machine and of the server");
        }
        break;
    default:
        break;
    }
}

static void diagnose_reply(const struct conntest *ct, const struct diag_in *in, char *b, size_t len,
                           size_t *pos)
{
    const struct settings *s = &ct->settings;
    const char *r = in->reply != NULL ? in->reply : (in->detail != NULL ? in->detail : "");
    bool temp = in->fail == SMTP_FAIL_REPLY_4XX;

    switch (in->kind) {
    case SMTPSYNC__TEST_STEP_KIND__TEST_STEP_GREETING:
        if (temp)
            appendf(b, len, pos,
                    "the server does not take connections now (busy or shutting down): try "
                    "again later");
        else
            appendf(b, len, pos,
                    "the server refuses connections from this machine: its address may be "
                    "blocked or not allowed to send through this server");
        break;
    case SMTPSYNC__TEST_STEP_KIND__TEST_STEP_MAIL:
        if (in->code == 530)
            appendf(b, len, pos,
                    "the server requires a logon: set logon_required=on with user_id and "
                    "password");
        else if (temp)
            appendf(b, len, pos, "the server temporarily refused the sender %s: try again later",
                    s->from_address);
        else
            appendf(b, len, pos,
                    "the server refused the sender %s: this From address may not be allowed to "
                    "send%s",
                    s->from_address, s->logon_required ? " with this logon" : " without a logon");
        break;
    case SMTPSYNC__TEST_STEP_KIND__TEST_STEP_RCPT:
        if (in->code == 530)
            appendf(b, len, pos,
                    "the server requires a logon: set logon_required=on with user_id and "
                    "password");
        else if (temp)
            appendf(b, len, pos,
                    "the server temporarily refused the recipient %s (greylisting, or a "
                    "temporary problem): try again in a few minutes",
                    ct->to);
        else if (contains_ci(r, "5.1.1") || contains_ci(r, "unknown") ||
                 contains_ci(r, "no such") || contains_ci(r, "does not exist") ||
                 contains_ci(r, "not found"))
            appendf(b, len, pos, "the server says there is no mailbox %s: check the address",
                    ct->to);
        else if (in->code == 552 || contains_ci(r, "5.2.2"))
            appendf(b, len, pos, "the mailbox %s is full", ct->to);
        else
            appendf(b, len, pos,
                    "the server refused to relay to %s: relay denied (the From address or logon "
                    "may not be allowed to send)",
                    ct->to);
        break;
    case SMTPSYNC__TEST_STEP_KIND__TEST_STEP_DATA:
        if (temp)
            appendf(b, len, pos, "the server temporarily refused the test mail%s: try again later",
                    reply_ref(in));
        else
            appendf(b, len, pos,
                    "the server refused the test mail%s: a content or policy filter may reject "
                    "it",
                    reply_ref(in));
        break;
    case SMTPSYNC__TEST_STEP_KIND__TEST_STEP_EHLO:
        appendf(b, len, pos, "the server refused EHLO and HELO%s: it may not accept %s as a name",
                reply_ref(in), ct->helo != NULL ? ct->helo : "this host's name");
        break;
    default:
        appendf(b, len, pos, "the server reported a %s failure at %s%s",
                temp ? "temporary" : "permanent", conntest_step_name(in->kind), reply_ref(in));
        break;
    }
}

static void diagnose_auth(const struct conntest *ct, const struct diag_in *in, char *b, size_t len,
                          size_t *pos)
{
    const struct settings *s = &ct->settings;
    bool tls = s->smtps_enabled;

    switch (in->fail) {
    case SMTP_FAIL_AUTH_REFUSED:
        if (in->code == 534 || in->code == 538)
            appendf(b, len, pos,
                    "the server wants a stronger AUTH mechanism or an encrypted connection for "
                    "user %s%s",
                    s->user_id, tls ? "" : ": turn on smtps_enabled");
        else if (in->code == 454 || (in->code >= 400 && in->code < 500))
            appendf(b, len, pos,
                    "the server could not check user %s now (a temporary failure): try again "
                    "later",
                    s->user_id);
        else
            appendf(b, len, pos, "the server refused user %s: check the user ID and password",
                    s->user_id);
        break;
    case SMTP_FAIL_AUTH_PLAINTEXT:
        appendf(b, len, pos,
                "the logon would send the password unencrypted: turn on smtps_enabled with "
                "tls_mode=starttls or strict, or (only on a trusted network) set "
                "allow_plaintext_auth=on");
        break;
    case SMTP_FAIL_AUTH_UNAVAILABLE: {
        const char *auth = strstr(ct->caps, "AUTH");
        if (auth != NULL) {
            char mechs[256];
            size_t n = strcspn(auth + 4, "\n,;");
            if (n >= sizeof(mechs))
                n = sizeof(mechs) - 1;
            memcpy(mechs, auth + 4, n);
            mechs[n] = '\0';
            appendf(b, len, pos,
                    "the server offers AUTH%s, none of which smtpsync speaks (PLAIN, LOGIN, "
                    "CRAM-MD5)",
                    mechs);
        } else {
            appendf(b, len, pos, "the server offers no AUTH mechanism: is logon required?%s",
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
static void diagnose(const struct conntest *ct, const struct diag_in *in, char *b, size_t len)
{
    const struct settings *s = &ct->settings;
    const char *d = in->detail != NULL ? in->detail : "";
    bool strict = s->smtps_enabled && s->tls_mode == SETTINGS_TLS_STRICT;
    size_t pos = 0;

    b[0] = '\0';
    switch (in->fail) {
    case SMTP_FAIL_NONE:
        break;
    case SMTP_FAIL_RESOLVE:
        appendf(b, len, &pos,
                "the host name %s does not resolve: check hostname and this machine's DNS",
                s->hostname);
        break;
    case SMTP_FAIL_CONNECT:
        if (contains_ci(d, "refused"))
            appendf(b, len, &pos,
                    "nothing listens on %s:%" PRIu32 " (connection refused): check hostname and "
                    "port",
                    s->hostname, ct->port);
        else if (contains_ci(d, "unreachable"))
            appendf(b, len, &pos,
                    "%s:%" PRIu32 " cannot be reached from this machine (no route): check the "
                    "network and firewalls",
                    s->hostname, ct->port);
        else
            appendf(b, len, &pos,
                    "could not connect to %s:%" PRIu32 ": nothing listens there, or a firewall "
                    "blocks the connection",
                    s->hostname, ct->port);
        break;
    case SMTP_FAIL_TIMEOUT:
        diagnose_timeout(ct, in, b, len, &pos);
        break;
    case SMTP_FAIL_CLOSED:
        if (in->kind == SMTPSYNC__TEST_STEP_KIND__TEST_STEP_TLS && strict && ct->port != 465)
            appendf(b, len, &pos,
                    "the server closed the connection during the TLS handshake: port %" PRIu32
                    " may expect STARTTLS (set tls_mode=starttls) or plaintext; implicit TLS is "
                    "normally on port 465",
                    ct->port);
        else if (in->kind == SMTPSYNC__TEST_STEP_KIND__TEST_STEP_GREETING && !strict &&
                 ct->port == 465)
            appendf(b, len, &pos,
                    "the server closed the connection before its greeting: port 465 usually "
                    "expects implicit TLS: set %stls_mode=strict",
                    s->smtps_enabled ? "" : "smtps_enabled=on and ");
        else
            appendf(b, len, &pos, "the server closed the connection during %s%s",
                    conntest_step_name(in->kind),
                    in->kind == SMTPSYNC__TEST_STEP_KIND__TEST_STEP_GREETING
                        ? ": it may refuse connections from this machine"
                        : "");
        break;
    case SMTP_FAIL_TLS_NOT_TLS:
        if (in->kind == SMTPSYNC__TEST_STEP_KIND__TEST_STEP_STARTTLS ||
            s->tls_mode == SETTINGS_TLS_STARTTLS)
            appendf(b, len, &pos, "the server accepted STARTTLS but did not start TLS");
        else if (ct->port == 465)
            appendf(b, len, &pos,
                    "the server answered in plaintext on port 465: it does not offer implicit "
                    "TLS there; try tls_mode=starttls on port 587");
        else
            appendf(b, len, &pos,
                    "the server answered in plaintext: port %" PRIu32
                    " expects STARTTLS (set tls_mode=starttls) or implicit TLS on port 465",
                    ct->port);
        break;
    case SMTP_FAIL_TLS_VERSION:
        appendf(b, len, &pos,
                "the server offers only TLS versions older than 1.2, which smtpsync refuses: "
                "the server's TLS configuration must be updated");
        break;
    case SMTP_FAIL_TLS_HANDSHAKE:
        appendf(b, len, &pos,
                "the TLS handshake failed%s%s: the server and smtpsync share no TLS version or "
                "cipher, or the server is not speaking TLS",
                d[0] != '\0' ? ": " : "", d);
        break;
    case SMTP_FAIL_CERT_UNTRUSTED:
    case SMTP_FAIL_CERT_HOSTNAME:
    case SMTP_FAIL_CERT_EXPIRED:
        diagnose_cert(ct, in, b, len, &pos);
        break;
    case SMTP_FAIL_STARTTLS:
        if (ct->port == 465)
            appendf(b, len, &pos, "port 465 usually expects implicit TLS: set tls_mode=strict");
        else if (in->code != 0)
            appendf(b, len, &pos,
                    "the server refused STARTTLS%s: TLS may be broken or switched off on the "
                    "server",
                    reply_ref(in));
        else
            appendf(b, len, &pos,
                    "the server does not offer STARTTLS on port %" PRIu32
                    ": switch TLS on at the server, or use implicit TLS (tls_mode=strict, port "
                    "465)",
                    ct->port);
        if (s->starttls_fallback && s->logon_required)
            appendf(b, len, &pos,
                    "; starttls_fallback does not apply: the logon would send the password in "
                    "clear");
        break;
    case SMTP_FAIL_AUTH_UNAVAILABLE:
    case SMTP_FAIL_AUTH_REFUSED:
    case SMTP_FAIL_AUTH_PLAINTEXT:
        diagnose_auth(ct, in, b, len, &pos);
        break;
    case SMTP_FAIL_PROTOCOL:
        if (in->kind == SMTPSYNC__TEST_STEP_KIND__TEST_STEP_STARTTLS ||
            in->kind == SMTPSYNC__TEST_STEP_KIND__TEST_STEP_TLS)
            appendf(b, len, &pos,
                    "the server sent data after its 220 to STARTTLS and before TLS started: "
                    "someone may be injecting commands (STARTTLS injection); the session was "
                    "aborted");
        else
            appendf(b, len, &pos, "the server broke the SMTP protocol%s%s", d[0] ? ": " : "", d);
        break;
    case SMTP_FAIL_REPLY_4XX:
    case SMTP_FAIL_REPLY_5XX:
        diagnose_reply(ct, in, b, len, &pos);
        break;
    case SMTP_FAIL_TOO_BIG:
        appendf(b, len, &pos, "the test mail is larger than the server accepts (its SIZE limit)");
        break;
    case SMTP_FAIL_SETTINGS:
        appendf(b, len, &pos, "the settings cannot be used%s%s", d[0] ? ": " : "", d);
        break;
    case SMTP_FAIL_CANCELLED:
        appendf(b, len, &pos, "the test was cancelled");
        break;
    case SMTP_FAIL_INTERNAL:
    case SMTP_FAIL_COUNT:
        appendf(b, len, &pos, "smtpsync failed internally%s%s", d[0] ? ": " : "", d);
        break;
    }
    if (b[0] == '\0')
        appendf(b, len, &pos, "%s", smtp_fail_str(in->fail));
}

/* --- recording steps ------------------------------------------------------ */

/* Appends a step; its strings are recorded (redacted, escaped). */
static void step_add(struct conntest *ct, Smtpsync__TestStepKind kind, bool ok, uint64_t elapsed_us,
                     const char *detail, const char *reply, const char *diagnosis)
{
    Smtpsync__TestResult *r = ct->result;
    Smtpsync__TestStep *st;
    char *text;

    if (r->n_steps == ct->steps_cap) {
        size_t cap = ct->steps_cap == 0 ? 16 : ct->steps_cap * 2;
        Smtpsync__TestStep **steps = realloc(r->steps, cap * sizeof(*steps));
        if (steps == NULL) {
            ct->nomem = true;
            return;
        }
        r->steps = steps;
        ct->steps_cap = cap;
    }
    st = malloc(sizeof(*st));
    if (st == NULL) {
        ct->nomem = true;
        return;
    }
    smtpsync__test_step__init(st);
    st->kind = kind;
    st->ok = ok;
    st->elapsed_us = elapsed_us;
    if ((text = record_text(ct, detail, false)) != NULL)
        st->detail = text;
    if ((text = record_text(ct, reply, true)) != NULL)
        st->server_reply = text;
    if ((text = record_text(ct, diagnosis, true)) != NULL)
        st->diagnosis = text;
    r->steps[r->n_steps++] = st;
}

/* Records a failed step with its diagnosis. A failure after the mail was
 * accepted, or one the client only warns about, is a warning. */
static void step_fail(struct conntest *ct, const struct diag_in *in, uint64_t elapsed_us,
                      bool warning)
{
    char diag[CONNTEST_DIAG_MAX];
    size_t pos = 0;

    warning = warning || ct->accepted;
    if (warning)
        appendf(diag, sizeof(diag), &pos, "%s", CONNTEST_WARNING);
    if (warning && in->kind == SMTPSYNC__TEST_STEP_KIND__TEST_STEP_STARTTLS && !ct->accepted) {
        appendf(diag, sizeof(diag), &pos,
                "STARTTLS failed and starttls_fallback=on let the session go on in plaintext: "
                "mail from this node travels unencrypted; switch starttls_fallback off once the "
                "server offers STARTTLS");
    } else {
        if (warning)
            appendf(diag, sizeof(diag), &pos, "the test mail was accepted, but then ");
        diagnose(ct, in, diag + pos, sizeof(diag) - pos);
    }
    step_add(ct, in->kind, false, elapsed_us, in->detail, in->reply, diag);
    if (!warning)
        ct->failed = true;
}

/* The first failed step of the settings check: every problem, one a line. */
static void step_settings(struct conntest *ct, const struct settings_problems *p, const char *why)
{
    char diag[CONNTEST_DIAG_MAX * 2], detail[128];
    size_t pos = 0, n = p != NULL ? p->count : 0, dropped = p != NULL ? p->dropped : 0;

    if (why != NULL)
        appendf(diag, sizeof(diag), &pos, "%s", why);
    for (size_t i = 0; i < n && i < SETTINGS_PROBLEMS_MAX; i++)
        appendf(diag, sizeof(diag), &pos, "%s%s: %s", pos > 0 ? "\n" : "", p->items[i].field,
                p->items[i].message);
    if (dropped > 0)
        appendf(diag, sizeof(diag), &pos, "\n... and %zu more", dropped);
    if (n > 0)
        snprintf(detail, sizeof(detail), "%zu problem%s in the settings: they cannot be tried",
                 n + dropped, n + dropped == 1 ? "" : "s");
    else
        snprintf(detail, sizeof(detail), "the settings cannot be tried");
    step_add(ct, SMTPSYNC__TEST_STEP_KIND__TEST_STEP_UNSET, false, 0, detail, NULL, diag);
    ct->failed = true;
}

/* --- the session ---------------------------------------------------------- */

/* Frees the test and what it owns but its result; wipes the secrets. */
static void conntest_free(struct conntest *ct)
{
    settings_clear(&ct->settings);
    for (size_t i = 0; i < CONNTEST_SECRETS; i++) {
        if (ct->secrets[i] != NULL) {
            OPENSSL_cleanse(ct->secrets[i], strlen(ct->secrets[i]));
            free(ct->secrets[i]);
        }
    }
    free(ct->data);
    free(ct->helo);
    free(ct->revision);
    free(ct);
}

static void on_finished(uv_handle_t *h)
{
    struct conntest *ct = h->data;
    conntest_done_cb done = ct->done;
    void *arg = ct->arg;
    Smtpsync__TestResult *result = ct->result;

    /* The callback comes last: it may free or reuse what `arg` points to. */
    conntest_free(ct);
    if (done != NULL)
        done(arg, result);
    else
        conntest_result_free(result);
}

/* Ends the test: the result goes to `done` from the loop. */
static void finish(struct conntest *ct)
{
    if (!ct->accepted && !ct->failed)
        step_add(ct, SMTPSYNC__TEST_STEP_KIND__TEST_STEP_UNSET, false, 0,
                 "the session ended before the test mail was sent", NULL,
                 "smtpsync failed internally: the session ended without a result");
    ct->result->ok = ct->accepted && !ct->nomem;
    uv_close((uv_handle_t *)&ct->finish, on_finished);
}

/* The step a failure reported without one belongs to. */
static Smtpsync__TestStepKind fail_kind(const struct conntest *ct, enum smtp_fail fail)
{
    const Smtpsync__TestResult *r = ct->result;
    Smtpsync__TestStepKind last;

    switch (fail) {
    case SMTP_FAIL_RESOLVE:
        return SMTPSYNC__TEST_STEP_KIND__TEST_STEP_RESOLVE;
    case SMTP_FAIL_CONNECT:
        return SMTPSYNC__TEST_STEP_KIND__TEST_STEP_CONNECT;
    case SMTP_FAIL_TLS_HANDSHAKE:
    case SMTP_FAIL_TLS_NOT_TLS:
    case SMTP_FAIL_TLS_VERSION:
        return SMTPSYNC__TEST_STEP_KIND__TEST_STEP_TLS;
    case SMTP_FAIL_CERT_UNTRUSTED:
    case SMTP_FAIL_CERT_HOSTNAME:
    case SMTP_FAIL_CERT_EXPIRED:
        return SMTPSYNC__TEST_STEP_KIND__TEST_STEP_CERTIFICATE;
    case SMTP_FAIL_STARTTLS:
        return SMTPSYNC__TEST_STEP_KIND__TEST_STEP_STARTTLS;
    case SMTP_FAIL_AUTH_UNAVAILABLE:
    case SMTP_FAIL_AUTH_REFUSED:
    case SMTP_FAIL_AUTH_PLAINTEXT:
        return SMTPSYNC__TEST_STEP_KIND__TEST_STEP_AUTH;
    case SMTP_FAIL_TOO_BIG:
        return SMTPSYNC__TEST_STEP_KIND__TEST_STEP_MAIL;
    default:
        break;
    }
    /* Otherwise the step after the last one that completed. */
    if (r->n_steps == 0)
        return SMTPSYNC__TEST_STEP_KIND__TEST_STEP_RESOLVE;
    last = r->steps[r->n_steps - 1]->kind;
    if (last == SMTPSYNC__TEST_STEP_KIND__TEST_STEP_UNSET ||
        last >= SMTPSYNC__TEST_STEP_KIND__TEST_STEP_QUIT)
        return last;
    return (Smtpsync__TestStepKind)(last + 1);
}

static bool on_next(void *arg, const struct smtp_client_msg **msg)
{
    struct conntest *ct = arg;

    if (ct->msg_handed)
        return false;
    ct->msg_handed = true;
    *msg = &ct->msg;
    return true;
}

static void on_step(void *arg, const struct smtp_client_step *step)
{
    struct conntest *ct = arg;
    Smtpsync__TestStepKind kind = step_kind(step->kind);

    if (kind == SMTPSYNC__TEST_STEP_KIND__TEST_STEP_EHLO && step->ok && step->detail != NULL)
        snprintf(ct->caps, sizeof(ct->caps), "%s", step->detail);
    if (step->ok) {
        step_add(ct, kind, true, step->elapsed_us, step->detail, step->server_reply, NULL);
        return;
    }
    struct diag_in in = {
        .kind = kind,
        .fail = step->fail,
        .detail = step->detail,
        .reply = step->server_reply,
        .code = reply_code(step->server_reply),
    };
    step_fail(ct, &in, step->elapsed_us, step->warning);
}

static void on_done(void *arg, const struct smtp_client_msg *msg,
                    const struct smtp_client_result *result)
{
    struct conntest *ct = arg;

    (void)msg;
    if (result->fail == SMTP_FAIL_NONE) {
        ct->accepted = true;
        return;
    }
    if (ct->failed)
        return;
    /* The client ended the transaction without a failed step: record one. */
    const char *reply = NULL;
    Smtpsync__TestStepKind kind = SMTPSYNC__TEST_STEP_KIND__TEST_STEP_DATA;
    if (result->rcpts == NULL)
        kind = fail_kind(ct, result->fail);
    else if (result->naccepted == 0) {
        kind = SMTPSYNC__TEST_STEP_KIND__TEST_STEP_RCPT;
        reply = result->rcpts[0].text;
    }
    struct diag_in in = {
        .kind = kind,
        .fail = result->fail,
        .detail = result->reason,
        .reply = reply,
        .code = result->code,
    };
    step_fail(ct, &in, 0, false);
}

static void on_closed(void *arg, enum smtp_fail fail, const char *reason)
{
    struct conntest *ct = arg;

    if (fail != SMTP_FAIL_NONE && !ct->failed && !ct->accepted) {
        struct diag_in in = {
            .kind = fail_kind(ct, fail),
            .fail = fail,
            .detail = reason,
            .reply = NULL,
            .code = 0,
        };
        step_fail(ct, &in, 0, false);
    }
    finish(ct);
}

/* --- start ---------------------------------------------------------------- */

/* base64 of len octets, NUL-terminated, or NULL. */
static char *base64(const unsigned char *in, size_t len)
{
    char *out = malloc(4 * ((len + 2) / 3) + 1);

    if (out != NULL)
        EVP_EncodeBlock((unsigned char *)out, in, (int)len);
    return out;
}

/* The forms of the password a server might echo (struct conntest). */
static int make_secrets(struct conntest *ct)
{
    const struct settings *s = &ct->settings;
    size_t ulen, plen, n;
    unsigned char *plain;

    if (s->password == NULL || s->password[0] == '\0')
        return 0;
    ulen = strlen(s->user_id);
    plen = strlen(s->password);
    if ((ct->secrets[0] = strdup(s->password)) == NULL ||
        (ct->secrets[1] = base64((const unsigned char *)s->password, plen)) == NULL)
        return -ENOMEM;
    n = 1 + ulen + 1 + plen;
    if ((plain = malloc(n)) == NULL)
        return -ENOMEM;
    plain[0] = '\0';
    memcpy(plain + 1, s->user_id, ulen);
    plain[1 + ulen] = '\0';
    memcpy(plain + 2 + ulen, s->password, plen);
    ct->secrets[2] = base64(plain, n);
    OPENSSL_cleanse(plain, n);
    free(plain);
    return ct->secrets[2] == NULL ? -ENOMEM : 0;
}

/* Every reason the settings cannot be tried, into `out`. */
static void check_settings(const struct conntest *ct, const struct conntest_params *params,
                           struct settings_problems *out)
{
    struct settings_problems all = {.count = 0, .dropped = 0};
    const struct settings *s = &ct->settings;
    char why[200];

    (void)settings_validate(s, NULL, time(NULL), &all);
    for (size_t i = 0; i < all.count && i < SETTINGS_PROBLEMS_MAX; i++) {
        /* --to stands in for the test address. */
        if (params->to != NULL && strcmp(all.items[i].field, "test_address") == 0)
            continue;
        if (out->count < SETTINGS_PROBLEMS_MAX)
            out->items[out->count++] = all.items[i];
        else
            out->dropped++;
    }
    out->dropped += all.dropped;
    if (params->to != NULL) {
        if (strlen(params->to) > SETTINGS_ADDRESS_MAX)
            settings_problem_add(out, "to", false, "is longer than %d characters",
                                 SETTINGS_ADDRESS_MAX);
        else if (!syntax_mailbox_valid(params->to, why, sizeof(why)))
            settings_problem_add(out, "to", false, "is not a valid mail address: %s", why);
    }
    if (s->logon_required && s->password_set && s->password == NULL)
        settings_problem_add(out, "password", false,
                             "could not be loaded for the test (it was not unsealed)");
}

/* Builds the test mail. 0, or ERROR_INVALID with why, or -ENOMEM. */
static int compose(struct conntest *ct, char *why, size_t whylen)
{
    const struct settings *s = &ct->settings;
    char subject[CONNTEST_NODE_MAX + 64], body[2048], date[64];
    const char *domain = strrchr(s->from_address, '@');
    time_t now = time(NULL);
    struct tm tm;
    size_t pos = 0;
    int err;

    if (gmtime_r(&now, &tm) == NULL || strftime(date, sizeof(date), "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
        snprintf(date, sizeof(date), "@%lld", (long long)now);
    snprintf(subject, sizeof(subject), "smtpsync Test Connection from %s", ct->node);
    appendf(body, sizeof(body), &pos,
            "This is a test mail from smtpsync Test Connection.\n"
            "\n"
            "instance: %s\n",
            s->instance);
    if (ct->revision != NULL)
        appendf(body, sizeof(body), &pos, "settings: %s\n", ct->revision);
    appendf(body, sizeof(body), &pos,
            "node:     %s\n"
            "server:   %s:%" PRIu32 " (%s)\n"
            "sent:     %s\n"
            "\n"
            "If it arrived, these settings deliver mail from this node.\n",
            ct->node, s->hostname, ct->port,
            !s->smtps_enabled                    ? "no TLS"
            : s->tls_mode == SETTINGS_TLS_STRICT ? "implicit TLS"
                                                 : "STARTTLS",
            date);

    err = smtp_message_from_header(s->from_address, ct->from_header, sizeof(ct->from_header));
    if (err < 0) {
        snprintf(why, whylen, "from_address: cannot be used as the From header");
        return err;
    }
    ct->rcpts[0] = ct->to;
    struct smtp_message_compose c = {
        .to = ct->rcpts,
        .nto = 1,
        .cc = NULL,
        .ncc = 0,
        .subject = subject,
        .body = body,
        .body_len = strlen(body),
        .date = now,
        .msgid_domain = domain != NULL && domain[1] != '\0' ? domain + 1 : s->hostname,
    };
    err = smtp_message_compose(&c, &ct->data, &ct->data_len, why, whylen);
    if (err < 0)
        return err;
    ct->msg = (struct smtp_client_msg){
        .mail_from = s->from_address,
        .rcpts = ct->rcpts,
        .nrcpts = 1,
        .header_prefix = ct->from_header,
        .header_prefix_len = strlen(ct->from_header),
        .data = ct->data,
        .data_len = ct->data_len,
        .eight_bit = false,
        .smtputf8 = false,
    };
    return 0;
}

int conntest_start(uv_loop_t *loop, const struct conntest_params *params, conntest_done_cb done,
                   void *arg)
{
    struct settings_problems problems = {.count = 0, .dropped = 0};
    struct smtp_client *client;
    struct conntest *ct;
    char why[512], *text;
    int err = -ENOMEM;

    ct = calloc(1, sizeof(*ct));
    if (ct == NULL)
        return -ENOMEM;
    ct->loop = loop;
    ct->done = done;
    ct->arg = arg;
    settings_init(&ct->settings);
    if (settings_copy(&ct->settings, params->settings) < 0)
        goto free_ct;
    ct->port = settings_port(&ct->settings);
    snprintf(ct->to, sizeof(ct->to), "%s",
             params->to != NULL ? params->to : ct->settings.test_address);
    if (params->node != NULL && params->node[0] != '\0')
        snprintf(ct->node, sizeof(ct->node), "%s", params->node);
    else if (gethostname(ct->node, sizeof(ct->node)) < 0 || ct->node[0] == '\0')
        snprintf(ct->node, sizeof(ct->node), "localhost");
    ct->node[sizeof(ct->node) - 1] = '\0';
    if ((params->helo != NULL && (ct->helo = strdup(params->helo)) == NULL) ||
        (params->revision != NULL && (ct->revision = strdup(params->revision)) == NULL))
        goto free_ct;
    if (make_secrets(ct) < 0)
        goto free_ct;
    if ((ct->result = malloc(sizeof(*ct->result))) == NULL)
        goto free_ct;
    smtpsync__test_result__init(ct->result);
    /* Empty strings keep the default that __init set. */
    if ((text = record_text(ct, ct->settings.instance, false)) != NULL)
        ct->result->instance = text;
    if ((text = record_text(ct, ct->node, false)) != NULL)
        ct->result->node = text;
    if (ct->nomem)
        goto free_ct;
    (void)uv_timer_init(loop, &ct->finish);
    ct->finish.data = ct;

    check_settings(ct, params, &problems);
    if (problems.count > 0) {
        step_settings(ct, &problems, NULL);
        finish(ct);
        return 0;
    }
    why[0] = '\0';
    err = compose(ct, why, sizeof(why));
    if (err == -ENOMEM)
        goto close_timer;
    if (err < 0) {
        step_settings(ct, NULL, why);
        finish(ct);
        return 0;
    }

    struct smtp_client_params cp = {
        .settings = &ct->settings,
        .host = NULL,
        .port = 0,
        .helo = ct->helo,
        .idle_ms = 0,
        .verbose_steps = true,
    };
    static const struct smtp_client_callbacks cb = {
        .on_next = on_next,
        .on_done = on_done,
        .on_step = on_step,
        .on_closed = on_closed,
    };
    err = smtp_client_start(loop, &cp, &cb, ct, &client);
    if (err == -ENOMEM)
        goto close_timer;
    if (err < 0) {
        snprintf(why, sizeof(why), "the SMTP client refused the settings: %s%s", error_str(err),
                 err == ERROR_TLS ? " (the imported certificate cannot be used as a trust anchor)"
                                  : "");
        step_settings(ct, NULL, why);
        finish(ct);
    }
    return 0;

close_timer:
    /* The handle is in the loop now: it is freed from there, and `done`
     * is never called. */
    ct->done = NULL;
    uv_close((uv_handle_t *)&ct->finish, on_finished);
    return -ENOMEM;
free_ct:
    conntest_result_free(ct->result);
    conntest_free(ct);
    return err;
}

/* --- running and printing ------------------------------------------------- */

struct run_ctx {
    Smtpsync__TestResult *result;
    unsigned calls;
};

static void run_done(void *arg, Smtpsync__TestResult *result)
{
    struct run_ctx *rc = arg;

    rc->result = result;
    rc->calls++;
}

static void close_any(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

int conntest_run(const struct conntest_params *params, Smtpsync__TestResult **result)
{
    struct run_ctx rc = {NULL, 0};
    uv_loop_t loop;
    int err;

    *result = NULL;
    err = uv_loop_init(&loop);
    if (err < 0)
        return err;
    err = conntest_start(&loop, params, run_done, &rc);
    /* After a failed start too: it may leave a handle to close. */
    (void)uv_run(&loop, UV_RUN_DEFAULT);
    if (uv_loop_close(&loop) == UV_EBUSY) {
        /* Not expected: every handle closes with its session. */
        uv_walk(&loop, close_any, NULL);
        (void)uv_run(&loop, UV_RUN_DEFAULT);
        (void)uv_loop_close(&loop);
    }
    if (err < 0)
        return err;
    if (rc.calls != 1 || rc.result == NULL) {
        conntest_result_free(rc.result);
        return -EIO;
    }
    *result = rc.result;
    return 0;
}

void conntest_result_free(Smtpsync__TestResult *result)
{
    if (result != NULL)
        smtpsync__test_result__free_unpacked(result, NULL);
}

/* Prints text with anything but printable ASCII escaped (a result may come
 * from another node); lines after the first are indented by `indent`. */
static void put_text(FILE *out, const char *text, int indent)
{
    for (const unsigned char *p = (const unsigned char *)text; *p != '\0'; p++) {
        if (*p == '\n')
            fprintf(out, "\n%*s", indent, "");
        else if (*p >= 0x20 && *p < 0x7f)
            fputc(*p, out);
        else
            fprintf(out, "\\x%02x", *p);
    }
}

static bool step_is_warning(const Smtpsync__TestStep *st)
{
    return !st->ok && st->diagnosis != NULL &&
           strncmp(st->diagnosis, CONNTEST_WARNING, strlen(CONNTEST_WARNING)) == 0;
}

static void put_time(FILE *out, uint64_t us)
{
    char buf[32];

    if (us < 10ull * 1000 * 1000)
        snprintf(buf, sizeof(buf), "%.1f ms", (double)us / 1000.0);
    else
        snprintf(buf, sizeof(buf), "%.1f s", (double)us / 1e6);
    fprintf(out, "%10s", buf);
}

#define PRINT_INDENT 8  /* where the lines under a step start */
#define PRINT_DETAIL 32 /* where a step's detail starts */

void conntest_print(FILE *out, const Smtpsync__TestResult *result)
{
    const Smtpsync__TestStep *failed = NULL;
    uint64_t total = 0;
    size_t warnings = 0;

    for (size_t i = 0; i < result->n_steps; i++) {
        const Smtpsync__TestStep *st = result->steps[i];
        bool warning = step_is_warning(st);
        const char *detail = st->detail;

        total += st->elapsed_us;
        fprintf(out, "  %-5s %-12s",
                st->ok    ? "ok"
                : warning ? "WARN"
                          : "FAIL",
                conntest_step_name(st->kind));
        put_time(out, st->elapsed_us);
        if (detail != NULL && detail[0] != '\0') {
            fputs("  ", out);
            put_text(out, detail, PRINT_DETAIL);
        }
        /* An ok step shows the server's answer too: the last line of the
         * reply (the EHLO reply is what its detail lists). */
        if (st->ok && st->server_reply != NULL && st->server_reply[0] != '\0' &&
            st->kind != SMTPSYNC__TEST_STEP_KIND__TEST_STEP_EHLO) {
            const char *last = strrchr(st->server_reply, '\n');
            fputs(detail != NULL && detail[0] != '\0' ? " -> " : "  ", out);
            put_text(out, last != NULL ? last + 1 : st->server_reply, PRINT_DETAIL);
        }
        fputc('\n', out);
        if (st->ok)
            continue;
        if (warning)
            warnings++;
        else
            failed = st;
        if (st->server_reply != NULL && st->server_reply[0] != '\0') {
            fprintf(out, "%*sserver reply: ", PRINT_INDENT, "");
            put_text(out, st->server_reply, PRINT_INDENT + 14);
            fputc('\n', out);
        }
        if (st->diagnosis != NULL && st->diagnosis[0] != '\0') {
            fprintf(out, "%*sdiagnosis: ", PRINT_INDENT, "");
            put_text(out, st->diagnosis, PRINT_INDENT + 11);
            fputc('\n', out);
        }
    }
    if (result->ok) {
        fprintf(out, "  result: ok, the test mail was accepted (%.1f ms", (double)total / 1000.0);
        if (warnings > 0)
            fprintf(out, ", %zu warning%s", warnings, warnings == 1 ? "" : "s");
        fputs(")\n", out);
    } else {
        fprintf(out, "  result: FAILED at %s\n",
                failed != NULL ? conntest_step_name(failed->kind) : "an unknown step");
    }
}
