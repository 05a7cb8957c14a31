/*
 * admin_draft: editing a draft, the same for the admin API (admin.c) and
 * smtpsyncctl's local mode (ctl_settings.c), so both check and store it
 * alike.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>

#include "admin.h"
#include "error.h"

int admin_draft_base(struct store *st, const char *instance, struct settings *s)
{
    int err;

    err = store_draft_get(st, instance, STORE_UNSEAL, s);
    if (err == ERROR_NOT_FOUND)
        err = store_get(st, instance, 0, STORE_UNSEAL, s);
    if (err == ERROR_NOT_FOUND) {
        settings_clear(s);
        settings_init(s);
        snprintf(s->instance, sizeof(s->instance), "%s", instance);
        return 0;
    }
    return err;
}

int admin_draft_check_put(struct store *st, const struct settings *s, const char *confirm,
                          struct settings_problems *problems)
{
    /* Problems the caller added (a value that did not parse) count too. */
    (void)settings_validate(s, confirm, time(NULL), problems);
    if (!settings_problems_only_incomplete(problems))
        return ERROR_INVALID;
    return store_draft_put(st, s);
}

/* Replaces *dst by a copy of src (NULL clears); secrets are wiped. */
static int dup_string(char **dst, const char *src, bool secret)
{
    char *copy = NULL;

    if (src != NULL && (copy = strdup(src)) == NULL)
        return -ENOMEM;
    if (*dst != NULL && secret)
        OPENSSL_cleanse(*dst, strlen(*dst));
    free(*dst);
    *dst = copy;
    return 0;
}

int admin_settings_copy_field(struct settings *to, const struct settings *from,
                              enum settings_field f)
{
    switch (f) {
    case SETTINGS_F_INSTANCE:
        return ERROR_INVALID;
    case SETTINGS_F_HOSTNAME:
        memcpy(to->hostname, from->hostname, sizeof(to->hostname));
        return 0;
    case SETTINGS_F_PORT:
        to->port = from->port;
        return 0;
    case SETTINGS_F_FROM_ADDRESS:
        memcpy(to->from_address, from->from_address, sizeof(to->from_address));
        return 0;
    case SETTINGS_F_LOGON_REQUIRED:
        to->logon_required = from->logon_required;
        return 0;
    case SETTINGS_F_USER_ID:
        memcpy(to->user_id, from->user_id, sizeof(to->user_id));
        return 0;
    case SETTINGS_F_PASSWORD:
        if (dup_string(&to->password, from->password, true) < 0)
            return -ENOMEM;
        to->password_set = from->password_set;
        memcpy(to->password_id, from->password_id, sizeof(to->password_id));
        return 0;
    case SETTINGS_F_SMTPS_ENABLED:
        to->smtps_enabled = from->smtps_enabled;
        return 0;
    case SETTINGS_F_TRUST_CERTIFICATE:
        return dup_string(&to->trust_certificate, from->trust_certificate, false);
    case SETTINGS_F_TLS_MODE:
        to->tls_mode = from->tls_mode;
        return 0;
    case SETTINGS_F_TEST_ADDRESS:
        memcpy(to->test_address, from->test_address, sizeof(to->test_address));
        return 0;
    case SETTINGS_F_STARTTLS_FALLBACK:
        to->starttls_fallback = from->starttls_fallback;
        return 0;
    case SETTINGS_F_ALLOW_PLAINTEXT_AUTH:
        to->allow_plaintext_auth = from->allow_plaintext_auth;
        return 0;
    case SETTINGS_F_TIMEOUT_CONNECT:
        to->timeouts.connect = from->timeouts.connect;
        return 0;
    case SETTINGS_F_TIMEOUT_GREETING:
        to->timeouts.greeting = from->timeouts.greeting;
        return 0;
    case SETTINGS_F_TIMEOUT_COMMAND:
        to->timeouts.command = from->timeouts.command;
        return 0;
    case SETTINGS_F_TIMEOUT_MAIL:
        to->timeouts.mail = from->timeouts.mail;
        return 0;
    case SETTINGS_F_TIMEOUT_RCPT:
        to->timeouts.rcpt = from->timeouts.rcpt;
        return 0;
    case SETTINGS_F_TIMEOUT_DATA_INIT:
        to->timeouts.data_init = from->timeouts.data_init;
        return 0;
    case SETTINGS_F_TIMEOUT_DATA_BLOCK:
        to->timeouts.data_block = from->timeouts.data_block;
        return 0;
    case SETTINGS_F_TIMEOUT_DATA_TERM:
        to->timeouts.data_term = from->timeouts.data_term;
        return 0;
    case SETTINGS_F_FALLBACK_RELAYS:
        memcpy(to->relays, from->relays, sizeof(to->relays));
        to->nrelays = from->nrelays;
        return 0;
    case SETTINGS_F_COUNT:
        break;
    }
    return ERROR_INVALID;
}
