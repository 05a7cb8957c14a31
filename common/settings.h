/*
 * settings: the per-instance SMTP/SMTPS settings record and its validation.
 *
 * One `struct settings` holds everything an instance (node) needs to send
 * mail, field for field from the original console (DESIGN.md, "Settings").
 * Strings live in fixed arrays sized to their limits, so copies are plain
 * and nothing is truncated silently: setters refuse over-long input with a
 * problem instead. Two members are owned heap pointers:
 *   - `password`: the plaintext logon password, or NULL when it is not
 *     loaded. It is wiped with OPENSSL_cleanse before it is freed.
 *   - `trust_certificate`: the imported PEM bundle, or NULL.
 * settings_clear() releases both; settings_copy() duplicates both.
 *
 * Validation collects: it returns every problem at once, each naming its
 * field (STYLE.md, point 7).
 */
#ifndef SMTPSYNC_SETTINGS_H
#define SMTPSYNC_SETTINGS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "syntax.h"

#define SETTINGS_INSTANCE_MAX  64 /* [A-Za-z0-9][A-Za-z0-9._-]* */
#define SETTINGS_HOSTNAME_MAX  SYNTAX_HOSTNAME_MAX
#define SETTINGS_ADDRESS_MAX   SYNTAX_ADDRESS_MAX
#define SETTINGS_LOCAL_MAX     SYNTAX_LOCAL_MAX
#define SETTINGS_USER_MAX      255
#define SETTINGS_PASSWORD_MAX  1024
#define SETTINGS_PEM_MAX       (128 * 1024)
#define SETTINGS_RELAYS_MAX    4
#define SETTINGS_SECRET_ID_LEN 16
#define SETTINGS_TIMEOUT_MAX   3600 /* seconds, per phase */

/* How the password is shown anywhere a person or a script can read it. */
#define SETTINGS_PASSWORD_MASK "********"

enum settings_tls_mode {
    SETTINGS_TLS_UNSET = 0,
    SETTINGS_TLS_STRICT = 1,   /* implicit TLS from the first byte */
    SETTINGS_TLS_STARTTLS = 2, /* explicit upgrade */
};

/* Per-phase SMTP timeouts in seconds; 0 means the RFC 5321 default. */
struct settings_timeouts {
    uint32_t connect;
    uint32_t greeting;
    uint32_t command;
    uint32_t mail;
    uint32_t rcpt;
    uint32_t data_init;
    uint32_t data_block;
    uint32_t data_term;
};

struct settings_relay {
    char hostname[SETTINGS_HOSTNAME_MAX + 1];
    uint32_t port;
};

struct settings {
    char instance[SETTINGS_INSTANCE_MAX + 1];
    char hostname[SETTINGS_HOSTNAME_MAX + 1];
    uint32_t port; /* 0: settings_port() picks 25, 465 or 587 */
    char from_address[SETTINGS_ADDRESS_MAX + 1];
    bool logon_required;
    char user_id[SETTINGS_USER_MAX + 1];
    /* The password is "set" when password_set is true; its value is in
     * `password` only when loaded (see store.h, STORE_UNSEAL). password_id
     * is random, drawn anew whenever the password changes. */
    bool password_set;
    uint8_t password_id[SETTINGS_SECRET_ID_LEN];
    char *password;
    bool smtps_enabled;
    char *trust_certificate;
    enum settings_tls_mode tls_mode;
    char test_address[SETTINGS_ADDRESS_MAX + 1];
    bool starttls_fallback;
    bool allow_plaintext_auth;
    struct settings_timeouts timeouts;
    struct settings_relay relays[SETTINGS_RELAYS_MAX];
    size_t nrelays;
};

/*
 * Field names, as the CLI flags, JSON keys, problems and diffs spell them.
 * XX(enum suffix, name, kind); kinds: STRING, PORT, BOOL, SECRET, PEM, TLS,
 * TIMEOUT, RELAYS.
 */
#define SETTINGS_FIELD_MAP(XX)                                                                     \
    XX(INSTANCE, "instance", STRING)                                                               \
    XX(HOSTNAME, "hostname", STRING)                                                               \
    XX(PORT, "port", PORT)                                                                         \
    XX(FROM_ADDRESS, "from_address", STRING)                                                       \
    XX(LOGON_REQUIRED, "logon_required", BOOL)                                                     \
    XX(USER_ID, "user_id", STRING)                                                                 \
    XX(PASSWORD, "password", SECRET)                                                               \
    XX(SMTPS_ENABLED, "smtps_enabled", BOOL)                                                       \
    XX(TRUST_CERTIFICATE, "trust_certificate", PEM)                                                \
    XX(TLS_MODE, "tls_mode", TLS)                                                                  \
    XX(TEST_ADDRESS, "test_address", STRING)                                                       \
    XX(STARTTLS_FALLBACK, "starttls_fallback", BOOL)                                               \
    XX(ALLOW_PLAINTEXT_AUTH, "allow_plaintext_auth", BOOL)                                         \
    XX(TIMEOUT_CONNECT, "timeout_connect", TIMEOUT)                                                \
    XX(TIMEOUT_GREETING, "timeout_greeting", TIMEOUT)                                              \
    XX(TIMEOUT_COMMAND, "timeout_command", TIMEOUT)                                                \
    XX(TIMEOUT_MAIL, "timeout_mail", TIMEOUT)                                                      \
    XX(TIMEOUT_RCPT, "timeout_rcpt", TIMEOUT)                                                      \
    XX(TIMEOUT_DATA_INIT, "timeout_data_init", TIMEOUT)                                            \
    XX(TIMEOUT_DATA_BLOCK, "timeout_data_block", TIMEOUT)                                          \
    XX(TIMEOUT_DATA_TERM, "timeout_data_term", TIMEOUT)                                            \
    XX(FALLBACK_RELAYS, "fallback_relays", RELAYS)

enum settings_field {
#define XX(id, name, kind) SETTINGS_F_##id,
    SETTINGS_FIELD_MAP(XX)
#undef XX
        SETTINGS_F_COUNT
};

#define SETTINGS_PROBLEMS_MAX     48
#define SETTINGS_PROBLEM_TEXT_MAX 256

struct settings_problem {
    char field[96]; /* "<instance>.<field>" from a multi-instance save */
    char message[SETTINGS_PROBLEM_TEXT_MAX];
    /* A required value is missing. A draft may be stored while only such
     * problems remain; a save may not. */
    bool incomplete;
};

struct settings_problems {
    struct settings_problem items[SETTINGS_PROBLEMS_MAX];
    size_t count;
    size_t dropped; /* problems beyond SETTINGS_PROBLEMS_MAX, counted only */
};

void settings_init(struct settings *s);
void settings_clear(struct settings *s);
/* Deep copy; dst must be initialised (it is cleared first). -ENOMEM. */
int settings_copy(struct settings *dst, const struct settings *src);

/* Sets the password (copied) and draws a new password_id; NULL clears it.
 * -ENOMEM, ERROR_CRYPTO (no randomness). */
int settings_set_password(struct settings *s, const char *password);

/*
 * Parses `value` as the text form of `field` and stores it (NULL is "").
 * On bad input adds a problem naming the field, leaves the field unchanged
 * and returns ERROR_INVALID (-EINVAL for a field out of range). It checks:
 *   - every field: no control character (below 0x20, or 0x7f);
 *   - strings: the length limit of the field; for instance also the id
 *     syntax (settings_instance_valid). The syntax of hostname,
 *     from_address and test_address is NOT checked here, nor is any field
 *     required: settings_validate() does both, so a draft can be built up
 *     one field at a time;
 *   - booleans: on/off, yes/no, true/false, 1/0 (any case);
 *   - port: 1-65535, or "default" / "0";
 *   - tls_mode: strict or starttls (any case), "" for unset;
 *   - timeouts: whole seconds 0-SETTINGS_TIMEOUT_MAX, or "default" (0);
 *   - fallback_relays: a comma-separated host[:port] list ("" for none) of
 *     at most SETTINGS_RELAYS_MAX entries, IPv6 in brackets; each host's
 *     syntax is checked here, as the list must be parsed anyway, and each
 *     port must be 1-65535.
 * The password is not settable here (settings_set_password), nor the
 * certificate (settings_set_certificate): both are refused with a problem.
 */
int settings_set_field(struct settings *s, enum settings_field field, const char *value,
                       struct settings_problems *problems);

/* Stores a PEM bundle (copied). It is checked by settings_validate(). */
int settings_set_certificate(struct settings *s, const char *pem, size_t len,
                             struct settings_problems *problems);

/*
 * Checks the whole record and adds every problem found. `confirm` is the
 * password confirmation when a new password was given (else NULL). `now` is
 * the time certificates must be valid at. Returns 0 when there is no problem
 * at all, ERROR_INVALID otherwise (including when only `incomplete` ones).
 */
int settings_validate(const struct settings *s, const char *confirm, time_t now,
                      struct settings_problems *problems);

/* True if every problem in the list is `incomplete`. */
bool settings_problems_only_incomplete(const struct settings_problems *p);

/* Adds a problem (printf-style message); used by every validator. */
void settings_problem_add(struct settings_problems *p, const char *field, bool incomplete,
                          const char *fmt, ...) __attribute__((format(printf, 4, 5)));

/* The port used to connect: `port`, else 25, 465 (strict) or 587 (starttls). */
uint32_t settings_port(const struct settings *s);

const char *settings_field_name(enum settings_field f);
/* Looks a field up by name, ignoring case; accepts '-' for '_'. Returns the
 * enum settings_field value, or ERROR_NOT_FOUND (negative) if unknown. */
int settings_field_lookup(const char *name);
const char *settings_tls_mode_name(enum settings_tls_mode m);

/*
 * Writes the display form of one field into buf (always NUL-terminated,
 * "" for an unset value). The password prints as SETTINGS_PASSWORD_MASK when
 * set, never its value. The certificate prints as a one-line summary
 * (count, first subject, expiry). Returns -ENOSPC if buf was too small.
 */
int settings_field_format(const struct settings *s, enum settings_field f, char *buf, size_t len);

/* True if the field differs between a and b; the password compares by id. */
bool settings_field_differs(const struct settings *a, const struct settings *b,
                            enum settings_field f);

/* Instance ids: 1..64 of [A-Za-z0-9._-], starting with a letter or digit. */
bool settings_instance_valid(const char *id);

#endif
