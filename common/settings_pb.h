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
 * Returns ERROR_INVALID if a plaintext was asked for but is not loaded.
 */
int settings_pb_view(struct settings_pb *v, const struct settings *s,
                     enum settings_pb_secret secret);

/*
 * Copies `m` into `out` (initialised by the caller; cleared first). A
 * plaintext password in the message is copied too; a sealed one is not
 * touched (the store opens it). Adds problems for every field that does not
 * fit its limits and returns ERROR_DECODE, leaving `out` cleared.
 */
int settings_pb_decode(struct settings *out, const Smtpsync__Settings *m,
                       struct settings_problems *problems);

#endif
