#include "settings_pb.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "internal.h"
#include "syntax.h"

static Smtpsync__TlsMode tls_mode_to_pb(enum settings_tls_mode m)
{
    switch (m) {
    case SETTINGS_TLS_STRICT:
        return SMTPSYNC__TLS_MODE__TLS_MODE_STRICT;
    case SETTINGS_TLS_STARTTLS:
        return SMTPSYNC__TLS_MODE__TLS_MODE_STARTTLS;
    case SETTINGS_TLS_UNSET:
        break;
    }
    return SMTPSYNC__TLS_MODE__TLS_MODE_UNSET;
}

/* True if a fixed string field holds a NUL within its array. */
#define TERMINATED(arr) (strnlen((arr), sizeof(arr)) < sizeof(arr))

/* What the view can represent faithfully: protobuf-c would read past an
 * unterminated array, and an unknown mode or relay count has no encoding. */
static bool view_possible(const struct settings *s)
{
    if (!TERMINATED(s->instance) || !TERMINATED(s->hostname) || !TERMINATED(s->from_address) ||
        !TERMINATED(s->user_id) || !TERMINATED(s->test_address))
        return false;
    if (s->tls_mode != SETTINGS_TLS_UNSET && s->tls_mode != SETTINGS_TLS_STRICT &&
        s->tls_mode != SETTINGS_TLS_STARTTLS)
        return false;
    if (s->nrelays > SETTINGS_RELAYS_MAX)
        return false;
    for (size_t i = 0; i < s->nrelays; i++)
        if (!TERMINATED(s->relays[i].hostname))
            return false;
    return true;
}

int settings_pb_view(struct settings_pb *v, const struct settings *s,
                     enum settings_pb_secret secret)
{
    const struct settings_timeouts *t = &s->timeouts;
    Smtpsync__Settings *m = &v->msg;

    if (!view_possible(s))
        return ERROR_INVALID;
    if (secret == SETTINGS_PB_SECRET_PLAIN && s->password_set && s->password == NULL)
        return ERROR_INVALID;

    smtpsync__settings__init(m);
    smtpsync__secret__init(&v->secret);
    smtpsync__timeouts__init(&v->timeouts);

    m->instance = BORROW_CONST(s->instance);
    m->hostname = BORROW_CONST(s->hostname);
    m->port = s->port;
    m->from_address = BORROW_CONST(s->from_address);
    m->logon_required = s->logon_required;
    m->user_id = BORROW_CONST(s->user_id);
    m->smtps_enabled = s->smtps_enabled;
    m->trust_certificate = BORROW_CONST(s->trust_certificate != NULL ? s->trust_certificate : "");
    m->tls_mode = tls_mode_to_pb(s->tls_mode);
    m->test_address = BORROW_CONST(s->test_address);
    m->starttls_fallback = s->starttls_fallback;
    m->allow_plaintext_auth = s->allow_plaintext_auth;

    if (s->password_set) {
        v->secret.id.data = (uint8_t *)(uintptr_t)s->password_id;
        v->secret.id.len = SETTINGS_SECRET_ID_LEN;
        if (secret == SETTINGS_PB_SECRET_PLAIN) {
            v->secret.plaintext.data = (uint8_t *)s->password;
            v->secret.plaintext.len = strlen(s->password);
        }
        m->password = &v->secret;
    }

    v->timeouts.connect = t->connect;
    v->timeouts.greeting = t->greeting;
    v->timeouts.command = t->command;
    v->timeouts.mail = t->mail;
    v->timeouts.rcpt = t->rcpt;
    v->timeouts.data_init = t->data_init;
    v->timeouts.data_block = t->data_block;
    v->timeouts.data_term = t->data_term;
    /* An all-default Timeouts is left out, so records without timeouts
     * encode (and hash) the same as before the field existed. */
    if (t->connect | t->greeting | t->command | t->mail | t->rcpt | t->data_init | t->data_block |
        t->data_term)
        m->timeouts = &v->timeouts;

    for (size_t i = 0; i < s->nrelays; i++) {
        smtpsync__relay__init(&v->relays[i]);
        v->relays[i].hostname = BORROW_CONST(s->relays[i].hostname);
        v->relays[i].port = s->relays[i].port;
        v->relay_ptrs[i] = &v->relays[i];
    }
    m->n_fallback_relays = s->nrelays;
    m->fallback_relays = s->nrelays > 0 ? v->relay_ptrs : NULL;
    return 0;
}

#define PORT_MAX 65535u

/* Copies a protobuf string into a fixed field, refusing what does not fit
 * and control characters, as the setters do. False if refused. */
static bool copy_str(char *dst, size_t cap, const char *src, const char *field,
                     struct settings_problems *p)
{
    size_t len = src != NULL ? strlen(src) : 0;

    if (len >= cap) {
        settings_problem_add(p, field, false, "is too long (%zu characters; at most %zu)", len,
                             cap - 1);
        return false;
    }
    if (src != NULL && syntax_has_control(src)) {
        settings_problem_add(p, field, false,
                             "contains a control character (such as a line break); remove it");
        return false;
    }
    memcpy(dst, src != NULL ? src : "", len + 1);
    return true;
}

static void decode_timeouts(struct settings *out, const Smtpsync__Timeouts *t,
                            struct settings_problems *p)
{
    const struct {
        const char *field;
        uint32_t value;
        uint32_t *dst;
    } map[] = {
        {"timeout_connect", t->connect, &out->timeouts.connect},
        {"timeout_greeting", t->greeting, &out->timeouts.greeting},
        {"timeout_command", t->command, &out->timeouts.command},
        {"timeout_mail", t->mail, &out->timeouts.mail},
        {"timeout_rcpt", t->rcpt, &out->timeouts.rcpt},
        {"timeout_data_init", t->data_init, &out->timeouts.data_init},
        {"timeout_data_block", t->data_block, &out->timeouts.data_block},
        {"timeout_data_term", t->data_term, &out->timeouts.data_term},
    };

    for (size_t i = 0; i < sizeof(map) / sizeof(map[0]); i++) {
        if (map[i].value > SETTINGS_TIMEOUT_MAX)
            settings_problem_add(p, map[i].field, false,
                                 "is %u seconds; at most %d (or 0 for the default)", map[i].value,
                                 SETTINGS_TIMEOUT_MAX);
        else
            *map[i].dst = map[i].value;
    }
}

static void decode_relays(struct settings *out, const Smtpsync__Settings *m,
                          struct settings_problems *p)
{
    if (m->n_fallback_relays > SETTINGS_RELAYS_MAX) {
        settings_problem_add(p, "fallback_relays", false, "lists %zu relays; at most %d",
                             m->n_fallback_relays, SETTINGS_RELAYS_MAX);
        return;
    }
    for (size_t i = 0; i < m->n_fallback_relays; i++) {
        const Smtpsync__Relay *r = m->fallback_relays[i];

        copy_str(out->relays[i].hostname, sizeof(out->relays[i].hostname), r->hostname,
                 "fallback_relays", p);
        if (r->port > PORT_MAX)
            settings_problem_add(p, "fallback_relays", false,
                                 "entry %zu: port %u is out of range (1 to 65535)", i + 1, r->port);
        out->relays[i].port = r->port;
    }
    out->nrelays = m->n_fallback_relays;
}

static void decode_tls_mode(struct settings *out, Smtpsync__TlsMode m, struct settings_problems *p)
{
    switch (m) {
    case SMTPSYNC__TLS_MODE__TLS_MODE_UNSET:
        out->tls_mode = SETTINGS_TLS_UNSET;
        return;
    case SMTPSYNC__TLS_MODE__TLS_MODE_STRICT:
        out->tls_mode = SETTINGS_TLS_STRICT;
        return;
    case SMTPSYNC__TLS_MODE__TLS_MODE_STARTTLS:
        out->tls_mode = SETTINGS_TLS_STARTTLS;
        return;
    default:
        break;
    }
    settings_problem_add(p, "tls_mode", false, "has an unknown value %d", (int)m);
}

static int decode_secret(struct settings *out, const Smtpsync__Secret *sec,
                         struct settings_problems *p)
{
    if (sec == NULL)
        return 0;
    if (sec->id.len != SETTINGS_SECRET_ID_LEN) {
        settings_problem_add(p, "password", false, "has a malformed secret id (%zu bytes)",
                             sec->id.len);
        return 0;
    }
    out->password_set = true;
    memcpy(out->password_id, sec->id.data, SETTINGS_SECRET_ID_LEN);
    if (sec->plaintext.len == 0)
        return 0;
    if (sec->plaintext.len > SETTINGS_PASSWORD_MAX ||
        memchr(sec->plaintext.data, '\0', sec->plaintext.len) != NULL) {
        settings_problem_add(p, "password", false, "is longer than %d characters or holds NUL",
                             SETTINGS_PASSWORD_MAX);
        return 0;
    }
    out->password = malloc(sec->plaintext.len + 1);
    if (out->password == NULL)
        return -ENOMEM;
    memcpy(out->password, sec->plaintext.data, sec->plaintext.len);
    out->password[sec->plaintext.len] = '\0';
    return 0;
}

static int decode_certificate(struct settings *out, const char *pem, struct settings_problems *p)
{
    size_t len = pem != NULL ? strlen(pem) : 0;

    if (len == 0)
        return 0;
    if (len > SETTINGS_PEM_MAX) {
        settings_problem_add(p, "trust_certificate", false, "is too large (%zu bytes; at most %d)",
                             len, SETTINGS_PEM_MAX);
        return 0;
    }
    out->trust_certificate = strdup(pem);
    return out->trust_certificate != NULL ? 0 : -ENOMEM;
}

int settings_pb_decode(struct settings *out, const Smtpsync__Settings *m,
                       struct settings_problems *problems)
{
    size_t before = problems->count + problems->dropped;
    int rc;

    settings_clear(out);
    /* Every record names its instance: the store keys it by the id, peers
     * address it by the id. */
    if (copy_str(out->instance, sizeof(out->instance), m->instance, "instance", problems) &&
        !settings_instance_valid(out->instance))
        settings_problem_add(problems, "instance", false,
                             "is missing or not a valid instance id (letters, digits, \".\", "
                             "\"_\" and \"-\", starting with a letter or digit)");
    copy_str(out->hostname, sizeof(out->hostname), m->hostname, "hostname", problems);
    out->port = m->port;
    if (m->port > PORT_MAX)
        settings_problem_add(problems, "port", false,
                             "%u is out of range (1 to 65535, or 0 for the default)", m->port);
    copy_str(out->from_address, sizeof(out->from_address), m->from_address, "from_address",
             problems);
    out->logon_required = m->logon_required;
    copy_str(out->user_id, sizeof(out->user_id), m->user_id, "user_id", problems);
    out->smtps_enabled = m->smtps_enabled;
    decode_tls_mode(out, m->tls_mode, problems);
    copy_str(out->test_address, sizeof(out->test_address), m->test_address, "test_address",
             problems);
    out->starttls_fallback = m->starttls_fallback;
    out->allow_plaintext_auth = m->allow_plaintext_auth;

    if (m->timeouts != NULL)
        decode_timeouts(out, m->timeouts, problems);
    decode_relays(out, m, problems);

    rc = decode_secret(out, m->password, problems);
    if (rc == 0)
        rc = decode_certificate(out, m->trust_certificate, problems);
    if (rc == 0 && problems->count + problems->dropped != before)
        rc = ERROR_DECODE;
    if (rc != 0)
        settings_clear(out);
    return rc;
}
