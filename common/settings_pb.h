/*
 * settings_pb: conversion between `struct settings` and the protobuf
 * Smtpsync__Settings message (proto/smtpsync.proto).
 *
 * Encoding builds a *view*: a protobuf-c message whose strings point into the
 * settings record, so nothing is allocated and nothing must be freed; the
 * view is valid while the record is unchanged. The secret part is left for
 * the caller to fill: the store puts the sealed blob there, replication the
 * plaintext, the chain hash only the id.
 *
 * Decoding copies, with the same length and range checks as the setters, so
 * a hostile or corrupt message cannot overflow a field or pass unchecked.
 * One thing it cannot see: protobuf-c unpacks a string with an embedded NUL
 * as a C string cut short at that NUL, so such a value arrives truncated
 * rather than refused. (Secret.plaintext is `bytes` and is checked for NUL.)
 */
#ifndef SMTPSYNC_SETTINGS_PB_H
#define SMTPSYNC_SETTINGS_PB_H

#include "settings.h"
#include "smtpsync.pb-c.h"

struct settings_pb {
    Smtpsync__Settings msg;
    Smtpsync__Secret secret;
    Smtpsync__Timeouts timeouts;
    Smtpsync__Relay relays[SETTINGS_RELAYS_MAX];
    Smtpsync__Relay *relay_ptrs[SETTINGS_RELAYS_MAX];
};

enum settings_pb_secret {
    SETTINGS_PB_SECRET_ID = 0,    /* id only: canonical form for hashing */
    SETTINGS_PB_SECRET_PLAIN = 1, /* id and plaintext (s->password must be loaded) */
};

/*
 * Fills `v` as a view of `s`. With SETTINGS_PB_SECRET_PLAIN, the plaintext
 * password is referenced too; the caller may set v->secret.sealed itself.
 * Returns ERROR_INVALID, leaving `v` unusable, if a plaintext was asked for
 * but is not loaded, if s->nrelays exceeds SETTINGS_RELAYS_MAX, if
 * s->tls_mode is not a known mode, or if a fixed string field (instance,
 * hostname, from_address, user_id, test_address, a relay's hostname) is not
 * NUL-terminated within its array. Nothing else is checked.
 */
int settings_pb_view(struct settings_pb *v, const struct settings *s,
                     enum settings_pb_secret secret);

/*
 * Copies `m` into `out` (initialised by the caller; cleared first). A
 * plaintext password in the message is copied too; a sealed one is not
 * touched (the store opens it). Adds a problem for every field that does
 * not fit its limits and returns ERROR_DECODE, leaving `out` cleared:
 *   - a string too long for its field, or holding a control character
 *     (all strings but the certificate, which is PEM text in lines);
 *   - an instance id that is missing or not valid (settings_instance_valid);
 *   - port or a relay's port above 65535, a timeout above
 *     SETTINGS_TIMEOUT_MAX, more than SETTINGS_RELAYS_MAX relays;
 *   - an unknown tls_mode, a secret id not SETTINGS_SECRET_ID_LEN bytes, a
 *     plaintext password too long or holding NUL, a certificate over
 *     SETTINGS_PEM_MAX.
 * The rest (host and address syntax, required fields, the certificate's
 * content) is settings_validate()'s.
 */
int settings_pb_decode(struct settings *out, const Smtpsync__Settings *m,
                       struct settings_problems *problems);

#endif
