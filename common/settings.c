#include "settings.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/rand.h>
#include <openssl/x509.h>

#include "error.h"
#include "pem.h"
#include "syntax.h"
#include "internal.h"

/*
 * This file: problems, the record's life cycle, field names, setting fields
 * from text, and display and comparison. Validation is in settings_check.c.
 */

enum settings_kind {
    KIND_STRING,
    KIND_PORT,
    KIND_BOOL,
    KIND_SECRET,
    KIND_PEM,
    KIND_TLS,
    KIND_TIMEOUT,
    KIND_RELAYS,
};

static const struct {
    const char *name;
    enum settings_kind kind;
} settings_fields[SETTINGS_F_COUNT] = {
#define XX(id, name, kind) [SETTINGS_F_##id] = {name, KIND_##kind},
    SETTINGS_FIELD_MAP(XX)
#undef XX
};

/* ---------------------------------------------------------------------
 * Problems */

void settings_problem_add(struct settings_problems *p, const char *field, bool incomplete,
                          const char *fmt, ...)
{
    struct settings_problem *item;
    va_list ap;

    if (p == NULL)
        return;
    if (p->count >= SETTINGS_PROBLEMS_MAX) {
        p->dropped++;
        return;
    }
    item = &p->items[p->count++];
    snprintf(item->field, sizeof(item->field), "%s", field);
    item->incomplete = incomplete;
    va_start(ap, fmt);
    vsnprintf(item->message, sizeof(item->message), fmt, ap);
    va_end(ap);
}

bool settings_problems_only_incomplete(const struct settings_problems *p)
{
    size_t i;

    /* Problems that did not fit were not kept, so nothing is known about
     * them: assume the worst. */
    if (p->dropped > 0)
        return false;
    for (i = 0; i < p->count; i++)
        if (!p->items[i].incomplete)
            return false;
    return true;
}

const char *settings__quote(char *buf, size_t len, const char *value)
{
    size_t n = strlen(value);

    if (n > SETTINGS__QUOTE_MAX)
        snprintf(buf, len, "\"%.*s...\"", SETTINGS__QUOTE_MAX, value);
    else
        snprintf(buf, len, "\"%s\"", value);
    return buf;
}

/* ---------------------------------------------------------------------
 * Record life cycle */

void settings_init(struct settings *s)
{
    memset(s, 0, sizeof(*s));
    s->tls_mode = SETTINGS_TLS_UNSET;
    s->port = 0;
    s->starttls_fallback = false;
}

static void settings_free_password(struct settings *s)
{
    if (s->password != NULL) {
        OPENSSL_cleanse(s->password, strlen(s->password));
        free(s->password);
        s->password = NULL;
    }
}

void settings_clear(struct settings *s)
{
    settings_free_password(s);
    free(s->trust_certificate);
    settings_init(s);
}

int settings_copy(struct settings *dst, const struct settings *src)
{
    char *password = NULL, *cert = NULL;

    if (dst == src)
        return 0;
    if (src->password != NULL && (password = strdup(src->password)) == NULL)
        goto nomem;
    if (src->trust_certificate != NULL && (cert = strdup(src->trust_certificate)) == NULL)
        goto free_password;
    settings_clear(dst);
    *dst = *src;
    dst->password = password;
    dst->trust_certificate = cert;
    return 0;

free_password:
    if (password != NULL) {
        OPENSSL_cleanse(password, strlen(password));
        free(password);
    }
nomem:
    settings_clear(dst);
    return -ENOMEM;
}

int settings_set_password(struct settings *s, const char *password)
{
    uint8_t id[SETTINGS_SECRET_ID_LEN];
    char *copy;

    if (password == NULL) {
        settings_free_password(s);
        s->password_set = false;
        memset(s->password_id, 0, sizeof(s->password_id));
        return 0;
    }
    copy = strdup(password);
    if (copy == NULL)
        return -ENOMEM;
    if (RAND_bytes(id, sizeof(id)) != 1) {
        ERR_clear_error();
        OPENSSL_cleanse(copy, strlen(copy));
        free(copy);
        return ERROR_CRYPTO;
    }
    settings_free_password(s);
    s->password = copy;
    s->password_set = true;
    memcpy(s->password_id, id, sizeof(id));
    return 0;
}

uint32_t settings_port(const struct settings *s)
{
    if (s->port != 0)
        return s->port;
    /* tls_mode only matters with SMTPS on (see settings_validate). */
    if (!s->smtps_enabled)
        return 25;
    switch (s->tls_mode) {
    case SETTINGS_TLS_STRICT:
        return 465;
    case SETTINGS_TLS_STARTTLS:
        return 587;
    default:
        return 25;
    }
}

/* ---------------------------------------------------------------------
 * Names */

const char *settings_field_name(enum settings_field f)
{
    if ((unsigned)f >= SETTINGS_F_COUNT)
        return "unknown";
    return settings_fields[f].name;
}

int settings_field_lookup(const char *name)
{
    char norm[32];
    size_t i, n;
    int f;

    if (name == NULL)
        return ERROR_NOT_FOUND;
    n = strlen(name);
    if (n == 0 || n >= sizeof(norm))
        return ERROR_NOT_FOUND;
    for (i = 0; i <= n; i++)
        norm[i] = name[i] == '-' ? '_' : name[i];
    for (f = 0; f < SETTINGS_F_COUNT; f++)
        if (strcasecmp(norm, settings_fields[f].name) == 0)
            return f;
    return ERROR_NOT_FOUND;
}

const char *settings_tls_mode_name(enum settings_tls_mode m)
{
    switch (m) {
    case SETTINGS_TLS_UNSET:
        return "";
    case SETTINGS_TLS_STRICT:
        return "strict";
    case SETTINGS_TLS_STARTTLS:
        return "starttls";
    }
    return "invalid";
}

bool settings_instance_valid(const char *id)
{
    size_t i, n;

    if (id == NULL)
        return false;
    n = strnlen(id, SETTINGS_INSTANCE_MAX + 1);
    if (n == 0 || n > SETTINGS_INSTANCE_MAX || !isalnum((unsigned char)id[0]))
        return false;
    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)id[i];

        if (!(isalnum(c) || c == '.' || c == '_' || c == '-') || c >= 0x80)
            return false;
    }
    return true;
}

/* ---------------------------------------------------------------------
 * Setting one field from text */

/*
 * Where each field lives in the record, so one accessor serves both the
 * setters and the const readers (format, differs, validate).
 */
#define MEMBER_SIZE(m) sizeof(((struct settings *)0)->m)

static size_t string_offset(enum settings_field f, size_t *cap)
{
    switch (f) {
    case SETTINGS_F_INSTANCE:
        *cap = MEMBER_SIZE(instance);
        return offsetof(struct settings, instance);
    case SETTINGS_F_HOSTNAME:
        *cap = MEMBER_SIZE(hostname);
        return offsetof(struct settings, hostname);
    case SETTINGS_F_FROM_ADDRESS:
        *cap = MEMBER_SIZE(from_address);
        return offsetof(struct settings, from_address);
    case SETTINGS_F_USER_ID:
        *cap = MEMBER_SIZE(user_id);
        return offsetof(struct settings, user_id);
    case SETTINGS_F_TEST_ADDRESS:
        *cap = MEMBER_SIZE(test_address);
        return offsetof(struct settings, test_address);
    default:
        abort(); /* only called for KIND_STRING fields */
    }
}

static size_t bool_offset(enum settings_field f)
{
    switch (f) {
    case SETTINGS_F_LOGON_REQUIRED:
        return offsetof(struct settings, logon_required);
    case SETTINGS_F_SMTPS_ENABLED:
        return offsetof(struct settings, smtps_enabled);
    case SETTINGS_F_STARTTLS_FALLBACK:
        return offsetof(struct settings, starttls_fallback);
    case SETTINGS_F_ALLOW_PLAINTEXT_AUTH:
        return offsetof(struct settings, allow_plaintext_auth);
    default:
        abort(); /* only called for KIND_BOOL fields */
    }
}

static size_t timeout_offset(enum settings_field f)
{
    switch (f) {
    case SETTINGS_F_TIMEOUT_CONNECT:
        return offsetof(struct settings, timeouts.connect);
    case SETTINGS_F_TIMEOUT_GREETING:
        return offsetof(struct settings, timeouts.greeting);
    case SETTINGS_F_TIMEOUT_COMMAND:
        return offsetof(struct settings, timeouts.command);
    case SETTINGS_F_TIMEOUT_MAIL:
        return offsetof(struct settings, timeouts.mail);
    case SETTINGS_F_TIMEOUT_RCPT:
        return offsetof(struct settings, timeouts.rcpt);
    case SETTINGS_F_TIMEOUT_DATA_INIT:
        return offsetof(struct settings, timeouts.data_init);
    case SETTINGS_F_TIMEOUT_DATA_BLOCK:
        return offsetof(struct settings, timeouts.data_block);
    case SETTINGS_F_TIMEOUT_DATA_TERM:
        return offsetof(struct settings, timeouts.data_term);
    default:
        abort(); /* only called for KIND_TIMEOUT fields */
    }
}

static char *string_field(struct settings *s, enum settings_field f, size_t *cap)
{
    return (char *)s + string_offset(f, cap);
}

static const char *string_value(const struct settings *s, enum settings_field f, size_t *cap)
{
    return (const char *)s + string_offset(f, cap);
}

static bool *bool_field(struct settings *s, enum settings_field f)
{
    return (bool *)((char *)s + bool_offset(f));
}

static bool bool_value(const struct settings *s, enum settings_field f)
{
    return *(const bool *)((const char *)s + bool_offset(f));
}

static uint32_t *timeout_field(struct settings *s, enum settings_field f)
{
    return (uint32_t *)((char *)s + timeout_offset(f));
}

uint32_t settings__timeout_value(const struct settings *s, enum settings_field f)
{
    return *(const uint32_t *)((const char *)s + timeout_offset(f));
}

/* Decimal digits only (no sign, no blanks), at most `max`. */
static bool parse_number(const char *v, size_t len, uint32_t max, uint32_t *out)
{
    uint64_t n = 0;
    size_t i;

    if (len == 0)
        return false;
    for (i = 0; i < len; i++) {
        if (v[i] < '0' || v[i] > '9')
            return false;
        n = n * 10 + (uint64_t)(v[i] - '0');
        if (n > max)
            return false;
    }
    *out = (uint32_t)n;
    return true;
}

static int set_string(struct settings *s, enum settings_field f, const char *v,
                      struct settings_problems *p)
{
    const char *name = settings_fields[f].name;
    size_t cap, n = strlen(v);
    char *dst = string_field(s, f, &cap);
    char q[SETTINGS__QUOTE_MAX + 8];

    if (n >= cap) {
        settings_problem_add(p, name, false, "is too long (%zu characters; at most %zu)", n,
                             cap - 1);
        return ERROR_INVALID;
    }
    if (syntax_has_control(v)) {
        settings_problem_add(p, name, false,
                             "contains a control character (such as a line break or tab); "
                             "remove it");
        return ERROR_INVALID;
    }
    if (f == SETTINGS_F_INSTANCE && !settings_instance_valid(v)) {
        settings_problem_add(p, name, false,
                             "%s is not a valid instance id (letters, digits, \".\", \"_\" and "
                             "\"-\", starting with a letter or digit)",
                             settings__quote(q, sizeof(q), v));
        return ERROR_INVALID;
    }
    memcpy(dst, v, n + 1);
    return 0;
}

/*
 * Parses "host[:port]" (IPv6 as "[addr]" or "[addr]:port") into a relay. The
 * host is stored without brackets.
 */
static bool relay_parse(const char *v, size_t len, struct settings_relay *r, char *why,
                        size_t whylen)
{
    char host[SETTINGS_HOSTNAME_MAX + 3];
    const char *hp = v, *colon = NULL;
    size_t hlen = len;
    uint32_t port = 0;

    if (len == 0) {
        snprintf(why, whylen, "an entry is empty");
        return false;
    }
    if (v[0] == '[') {
        const char *close = memchr(v, ']', len);

        if (close == NULL) {
            snprintf(why, whylen, "an IPv6 address is missing its closing \"]\"");
            return false;
        }
        hp = v + 1;
        hlen = (size_t)(close - hp);
        if ((size_t)(close + 1 - v) < len) {
            if (close[1] != ':') {
                snprintf(why, whylen, "unexpected text after \"]\"");
                return false;
            }
            colon = close + 1;
        }
    } else {
        colon = memchr(v, ':', len);
        if (colon != NULL && memchr(colon + 1, ':', len - (size_t)(colon + 1 - v)) != NULL) {
            snprintf(why, whylen, "write IPv6 addresses in brackets, e.g. [2001:db8::1]:25");
            return false;
        }
        if (colon != NULL)
            hlen = (size_t)(colon - v);
    }
    if (colon != NULL &&
        !parse_number(colon + 1, len - (size_t)(colon + 1 - v), SETTINGS__PORT_MAX, &port)) {
        snprintf(why, whylen, "the port after \":\" must be a number from 1 to 65535");
        return false;
    }
    if (colon != NULL && port == 0) {
        snprintf(why, whylen, "the port after \":\" must be a number from 1 to 65535");
        return false;
    }
    if (hlen > SETTINGS_HOSTNAME_MAX) {
        snprintf(why, whylen, "a host name is too long (%zu characters; at most %d)", hlen,
                 SETTINGS_HOSTNAME_MAX);
        return false;
    }
    memcpy(host, hp, hlen);
    host[hlen] = '\0';
    if (syntax_has_control(host)) {
        snprintf(why, whylen, "it contains a control character");
        return false;
    }
    if (v[0] == '[') {
        char bare[INET6_ADDRSTRLEN + 1];

        if (!syntax_ipv6_bare(host, bare, sizeof(bare))) {
            snprintf(why, whylen, "\"%.*s\" is not a valid IPv6 address", SETTINGS__QUOTE_MAX,
                     host);
            return false;
        }
    } else {
        char sub[112];

        if (syntax_host_classify(host, sub, sizeof(sub)) == SYNTAX_HOST_BAD) {
            snprintf(why, whylen, "\"%.*s\" is not a valid host name or IP address: %s",
                     SETTINGS__QUOTE_MAX, host, sub);
            return false;
        }
    }
    memcpy(r->hostname, host, hlen + 1);
    r->port = port;
    return true;
}

static int set_relays(struct settings *s, const char *v, struct settings_problems *p)
{
    struct settings_relay relays[SETTINGS_RELAYS_MAX];
    size_t n = 0;
    const char *start = v;
    char why[SETTINGS_PROBLEM_TEXT_MAX];

    memset(relays, 0, sizeof(relays));
    while (*start == ' ' || *start == '\t')
        start++;
    if (*start == '\0') {
        memset(s->relays, 0, sizeof(s->relays));
        s->nrelays = 0;
        return 0;
    }
    for (;;) {
        const char *comma = strchr(start, ','), *end;

        end = comma != NULL ? comma : start + strlen(start);
        while (start < end && (*start == ' ' || *start == '\t'))
            start++;
        while (end > start && (end[-1] == ' ' || end[-1] == '\t'))
            end--;
        if (n == SETTINGS_RELAYS_MAX) {
            settings_problem_add(p, "fallback_relays", false, "lists more than %d relays",
                                 SETTINGS_RELAYS_MAX);
            return ERROR_INVALID;
        }
        if (!relay_parse(start, (size_t)(end - start), &relays[n], why, sizeof(why))) {
            settings_problem_add(p, "fallback_relays", false, "entry %zu: %s", n + 1, why);
            return ERROR_INVALID;
        }
        n++;
        if (comma == NULL)
            break;
        start = comma + 1;
    }
    memcpy(s->relays, relays, sizeof(relays));
    s->nrelays = n;
    return 0;
}

int settings_set_field(struct settings *s, enum settings_field field, const char *value,
                       struct settings_problems *problems)
{
    const char *name;
    char q[SETTINGS__QUOTE_MAX + 8];
    uint32_t n;

    if ((unsigned)field >= SETTINGS_F_COUNT)
        return -EINVAL;
    name = settings_fields[field].name;
    if (value == NULL)
        value = "";
    /* Every kind refuses control characters; strings say so themselves. */
    if (settings_fields[field].kind != KIND_STRING && syntax_has_control(value)) {
        settings_problem_add(problems, name, false, "contains a control character; remove it");
        return ERROR_INVALID;
    }
    settings__quote(q, sizeof(q), value);
    switch (settings_fields[field].kind) {
    case KIND_STRING:
        return set_string(s, field, value, problems);
    case KIND_PORT:
        if (strcasecmp(value, "default") == 0 || strcmp(value, "0") == 0) {
            s->port = 0;
            return 0;
        }
        if (!parse_number(value, strlen(value), SETTINGS__PORT_MAX, &n) || n == 0) {
            settings_problem_add(problems, name, false,
                                 "%s is not a port number (1 to 65535, or \"default\")", q);
            return ERROR_INVALID;
        }
        s->port = n;
        return 0;
    case KIND_BOOL: {
        static const char *const on[] = {"on", "yes", "true", "1"};
        static const char *const off[] = {"off", "no", "false", "0"};
        size_t i;

        for (i = 0; i < sizeof(on) / sizeof(on[0]); i++) {
            if (strcasecmp(value, on[i]) == 0) {
                *bool_field(s, field) = true;
                return 0;
            }
            if (strcasecmp(value, off[i]) == 0) {
                *bool_field(s, field) = false;
                return 0;
            }
        }
        settings_problem_add(problems, name, false, "%s is not on/off (or yes/no, true/false)", q);
        return ERROR_INVALID;
    }
    case KIND_TLS:
        if (strcasecmp(value, "strict") == 0)
            s->tls_mode = SETTINGS_TLS_STRICT;
        else if (strcasecmp(value, "starttls") == 0)
            s->tls_mode = SETTINGS_TLS_STARTTLS;
        else if (value[0] == '\0')
            s->tls_mode = SETTINGS_TLS_UNSET;
        else {
            settings_problem_add(problems, name, false,
                                 "%s is not a TLS mode (strict: TLS from the first byte, port "
                                 "465; starttls: upgrade with STARTTLS, port 587)",
                                 q);
            return ERROR_INVALID;
        }
        return 0;
    case KIND_TIMEOUT:
        if (strcasecmp(value, "default") == 0) {
            n = 0;
        } else if (!parse_number(value, strlen(value), SETTINGS_TIMEOUT_MAX, &n)) {
            settings_problem_add(problems, name, false,
                                 "%s is not a number of seconds from 1 to %d (or \"default\")", q,
                                 SETTINGS_TIMEOUT_MAX);
            return ERROR_INVALID;
        }
        *timeout_field(s, field) = n;
        return 0;
    case KIND_RELAYS:
        return set_relays(s, value, problems);
    case KIND_SECRET:
        settings_problem_add(problems, name, false,
                             "cannot be given as a value; it is asked for (twice) at a prompt");
        return ERROR_INVALID;
    case KIND_PEM:
        settings_problem_add(problems, name, false,
                             "cannot be given as a value; import it from a PEM file "
                             "(settings import-cert)");
        return ERROR_INVALID;
    }
    return -EINVAL;
}

int settings_set_certificate(struct settings *s, const char *pem, size_t len,
                             struct settings_problems *problems)
{
    char *copy;

    if (pem == NULL) {
        free(s->trust_certificate);
        s->trust_certificate = NULL;
        return 0;
    }
    if (len > SETTINGS_PEM_MAX) {
        settings_problem_add(problems, "trust_certificate", false,
                             "is too large (%zu bytes; at most %d)", len, SETTINGS_PEM_MAX);
        return ERROR_INVALID;
    }
    /* Stored as a C string: a NUL inside would cut it short silently. */
    if (memchr(pem, '\0', len) != NULL) {
        settings_problem_add(problems, "trust_certificate", false,
                             "contains binary data; a PEM file is text");
        return ERROR_INVALID;
    }
    copy = malloc(len + 1);
    if (copy == NULL)
        return -ENOMEM;
    memcpy(copy, pem, len);
    copy[len] = '\0';
    free(s->trust_certificate);
    s->trust_certificate = copy;
    return 0;
}

/* ---------------------------------------------------------------------
 * Display and comparison */

void settings__format_date(long long t, char *buf, size_t len)
{
    time_t tt = (time_t)t;
    struct tm tm;

    if (t < 0 || gmtime_r(&tt, &tm) == NULL)
        snprintf(buf, len, "an unreadable date");
    else
        strftime(buf, len, "%Y-%m-%d %H:%M UTC", &tm);
}

static void format_certificate(const char *pem, char *out, size_t len)
{
    STACK_OF(X509) *certs = NULL;
    char why[200], subject[128], date[64];
    long long earliest;
    int n;

    if (pem_read_certs(pem, strnlen(pem, SETTINGS_PEM_MAX + 1), &certs, why, sizeof(why)) < 0) {
        snprintf(out, len, "not a valid certificate bundle (%zu bytes)",
                 strnlen(pem, SETTINGS_PEM_MAX + 1));
        return;
    }
    n = sk_X509_num(certs);
    earliest = pem_earliest_not_after(certs);
    pem_subject(sk_X509_value(certs, 0), subject, sizeof(subject));
    settings__format_date(earliest, date, sizeof(date));
    if (earliest >= 0)
        date[10] = '\0'; /* the day is enough here: YYYY-MM-DD */
    snprintf(out, len, "%d certificate%s; %s; expires %s", n, n == 1 ? "" : "s", subject, date);
    sk_X509_pop_free(certs, X509_free);
}

static void format_relays(const struct settings *s, char *out, size_t len)
{
    size_t i, used = 0, n = s->nrelays > SETTINGS_RELAYS_MAX ? SETTINGS_RELAYS_MAX : s->nrelays;

    out[0] = '\0';
    for (i = 0; i < n && used < len; i++) {
        const struct settings_relay *r = &s->relays[i];
        bool v6 = strchr(r->hostname, ':') != NULL && r->hostname[0] != '[';
        char port[16] = "";

        if (r->port != 0)
            snprintf(port, sizeof(port), ":%u", r->port);
        used += (size_t)snprintf(out + used, len - used, "%s%s%.*s%s%s", i > 0 ? ", " : "",
                                 v6 ? "[" : "", SETTINGS_HOSTNAME_MAX, r->hostname, v6 ? "]" : "",
                                 port);
    }
}

int settings_field_format(const struct settings *s, enum settings_field f, char *buf, size_t len)
{
    /* Large enough for every field but the relays list and long names. */
    char tmp[SETTINGS_RELAYS_MAX * (SETTINGS_HOSTNAME_MAX + 16) + 64];
    size_t cap;
    const char *str;
    int n;

    if (len == 0)
        return -ENOSPC;
    buf[0] = '\0';
    tmp[0] = '\0';
    if ((unsigned)f >= SETTINGS_F_COUNT)
        return -EINVAL;
    switch (settings_fields[f].kind) {
    case KIND_STRING:
        str = string_value(s, f, &cap);
        snprintf(tmp, sizeof(tmp), "%.*s", (int)(cap - 1), str);
        break;
    case KIND_PORT:
        if (s->port != 0)
            snprintf(tmp, sizeof(tmp), "%u", s->port);
        else
            snprintf(tmp, sizeof(tmp), "%u (default)", settings_port(s));
        break;
    case KIND_BOOL:
        snprintf(tmp, sizeof(tmp), "%s", bool_value(s, f) ? "on" : "off");
        break;
    case KIND_SECRET:
        /* Never the value: only whether there is one. */
        snprintf(tmp, sizeof(tmp), "%s", s->password_set ? SETTINGS_PASSWORD_MASK : "");
        break;
    case KIND_PEM:
        if (s->trust_certificate != NULL)
            format_certificate(s->trust_certificate, tmp, sizeof(tmp));
        break;
    case KIND_TLS:
        snprintf(tmp, sizeof(tmp), "%s", settings_tls_mode_name(s->tls_mode));
        break;
    case KIND_TIMEOUT: {
        uint32_t v = settings__timeout_value(s, f);

        if (v == 0)
            snprintf(tmp, sizeof(tmp), "default");
        else
            snprintf(tmp, sizeof(tmp), "%u", v);
        break;
    }
    case KIND_RELAYS:
        format_relays(s, tmp, sizeof(tmp));
        break;
    }
    n = snprintf(buf, len, "%s", tmp);
    return (size_t)n >= len ? -ENOSPC : 0;
}

bool settings_field_differs(const struct settings *a, const struct settings *b,
                            enum settings_field f)
{
    size_t cap, i;

    if ((unsigned)f >= SETTINGS_F_COUNT)
        return false;
    switch (settings_fields[f].kind) {
    case KIND_STRING: {
        const char *x = string_value(a, f, &cap);
        const char *y = string_value(b, f, &cap);

        return strncmp(x, y, cap) != 0;
    }
    case KIND_PORT:
        return a->port != b->port;
    case KIND_BOOL:
        return bool_value(a, f) != bool_value(b, f);
    case KIND_SECRET:
        /* By id only: the plaintext may be loaded in one and not the other. */
        return a->password_set != b->password_set ||
               (a->password_set &&
                memcmp(a->password_id, b->password_id, SETTINGS_SECRET_ID_LEN) != 0);
    case KIND_PEM:
        return strcmp(a->trust_certificate != NULL ? a->trust_certificate : "",
                      b->trust_certificate != NULL ? b->trust_certificate : "") != 0;
    case KIND_TLS:
        return a->tls_mode != b->tls_mode;
    case KIND_TIMEOUT:
        return settings__timeout_value(a, f) != settings__timeout_value(b, f);
    case KIND_RELAYS:
        if (a->nrelays != b->nrelays)
            return true;
        for (i = 0; i < a->nrelays && i < SETTINGS_RELAYS_MAX; i++)
            if (a->relays[i].port != b->relays[i].port ||
                strncmp(a->relays[i].hostname, b->relays[i].hostname,
                        sizeof(a->relays[i].hostname)) != 0)
                return true;
        return false;
    }
    return false;
}
