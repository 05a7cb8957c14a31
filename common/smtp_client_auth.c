/*
 * smtp_client_auth: AUTH PLAIN (RFC 4616), LOGIN and CRAM-MD5 (RFC 2195)
 * for the SMTP client (RFC 4954). See smtp_client.h.
 *
 * Choice: over TLS, PLAIN, then LOGIN, then CRAM-MD5: the channel protects
 * the password, and CRAM-MD5 would make the server keep it in clear. In
 * clear (only when allow_plaintext_auth is on), CRAM-MD5 first: it never
 * sends the password itself.
 *
 * Every buffer that holds the password, or something it can be recovered
 * from (its base64), is wiped with OPENSSL_cleanse before it goes away; no
 * log line or step carries it.
 */
#include "internal.h"

#include <stdio.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "log.h"

/* base64 of the longest "\0user\0password", with its NUL. */
#define B64_MAX       (4 * ((SETTINGS_USER_MAX + SETTINGS_PASSWORD_MAX + 2 + 2) / 3) + 1)
/* A CRAM-MD5 challenge, decoded. */
#define CHALLENGE_MAX 512

unsigned smtp_client__auth_choose(unsigned offered, bool tls)
{
    static const unsigned over_tls[] = {SMTP_CLIENT_AUTH_PLAIN, SMTP_CLIENT_AUTH_LOGIN,
                                        SMTP_CLIENT_AUTH_CRAM_MD5};
    static const unsigned in_clear[] = {SMTP_CLIENT_AUTH_CRAM_MD5, SMTP_CLIENT_AUTH_PLAIN,
                                        SMTP_CLIENT_AUTH_LOGIN};
    const unsigned *order = tls ? over_tls : in_clear;

    for (size_t i = 0; i < 3; i++)
        if (offered & order[i])
            return order[i];
    return 0;
}

const char *smtp_client__auth_name(unsigned mech)
{
    switch (mech) {
    case SMTP_CLIENT_AUTH_PLAIN:
        return "PLAIN";
    case SMTP_CLIENT_AUTH_LOGIN:
        return "LOGIN";
    case SMTP_CLIENT_AUTH_CRAM_MD5:
        return "CRAM-MD5";
    default:
        return "?";
    }
}

/* base64 of `len` octets into out (room for B64_MAX). */
static void b64(char *out, const void *in, size_t len)
{
    EVP_EncodeBlock((unsigned char *)out, in, (int)len);
}

static void auth_plain(struct smtp_client *c)
{
    const struct settings *s = &c->settings;
    size_t ulen = strlen(s->user_id), plen = strlen(s->password);
    char raw[SETTINGS_USER_MAX + SETTINGS_PASSWORD_MAX + 2];
    char enc[B64_MAX];

    /* authzid (empty) NUL authcid NUL passwd */
    raw[0] = '\0';
    memcpy(raw + 1, s->user_id, ulen);
    raw[1 + ulen] = '\0';
    memcpy(raw + 2 + ulen, s->password, plen);
    b64(enc, raw, 2 + ulen + plen);
    smtp_client__command(c, true, "AUTH PLAIN %s", enc);
    OPENSSL_cleanse(raw, sizeof(raw));
    OPENSSL_cleanse(enc, sizeof(enc));
}

/* The reply to the CRAM-MD5 challenge: base64("user hex(HMAC-MD5)"). */
static int cram_response(struct smtp_client *c, const char *challenge64)
{
    const struct settings *s = &c->settings;
    unsigned char challenge[CHALLENGE_MAX], mac[EVP_MAX_MD_SIZE];
    unsigned int maclen = 0;
    char resp[SETTINGS_USER_MAX + 2 + 2 * EVP_MAX_MD_SIZE + 1], enc[B64_MAX];
    size_t clen = strlen(challenge64), n;
    int dlen, rc = -1;

    /* EVP_DecodeBlock counts padding as data: take it off again. */
    if (clen == 0 || clen % 4 != 0 || clen / 4 * 3 > sizeof(challenge))
        return -1;
    dlen = EVP_DecodeBlock(challenge, (const unsigned char *)challenge64, (int)clen);
    if (dlen < 0)
        return -1;
    for (size_t i = clen; i > 0 && challenge64[i - 1] == '='; i--)
        dlen--;
    if (HMAC(EVP_md5(), s->password, (int)strlen(s->password), challenge, (size_t)dlen, mac,
             &maclen) == NULL)
        goto wipe;
    n = (size_t)snprintf(resp, sizeof(resp), "%s ", s->user_id);
    for (unsigned i = 0; i < maclen; i++)
        n += (size_t)snprintf(resp + n, sizeof(resp) - n, "%02x", mac[i]);
    b64(enc, resp, n);
    rc = smtp_client__command(c, true, "%s", enc) < 0 ? 1 : 0;
wipe:
    OPENSSL_cleanse(mac, sizeof(mac));
    OPENSSL_cleanse(resp, sizeof(resp));
    OPENSSL_cleanse(enc, sizeof(enc));
    return rc;
}

void smtp_client__auth_start(struct smtp_client *c)
{
    switch (c->auth_mech) {
    case SMTP_CLIENT_AUTH_PLAIN:
        auth_plain(c);
        return;
    case SMTP_CLIENT_AUTH_LOGIN:
        smtp_client__command(c, false, "AUTH LOGIN");
        return;
    case SMTP_CLIENT_AUTH_CRAM_MD5:
        smtp_client__command(c, false, "AUTH CRAM-MD5");
        return;
    default:
        abort();
    }
}

static void auth_failed(struct smtp_client *c, enum smtp_fail f, const char *reason)
{
    smtp_client__step(c, SMTP_STEP_AUTH, false, f, reason, c->reply.text);
    smtp_client__finish(c, f, "%s", reason);
}

/* A 334: the next line of the exchange. */
static void auth_continue(struct smtp_client *c)
{
    const struct settings *s = &c->settings;
    const char *arg = smtp_client__auth_name(c->auth_mech);
    char enc[B64_MAX], reason[SMTP_CLIENT_REASON_MAX];
    int rc = -1;

    c->auth_stage++;
    if (c->auth_mech == SMTP_CLIENT_AUTH_LOGIN && c->auth_stage == 1) {
        b64(enc, s->user_id, strlen(s->user_id));
        rc = smtp_client__command(c, true, "%s", enc);
    } else if (c->auth_mech == SMTP_CLIENT_AUTH_LOGIN && c->auth_stage == 2) {
        b64(enc, s->password, strlen(s->password));
        rc = smtp_client__command(c, true, "%s", enc);
    } else if (c->auth_mech == SMTP_CLIENT_AUTH_CRAM_MD5 && c->auth_stage == 1) {
        rc = cram_response(c, smtp_reply_line_text(&c->reply));
        if (rc < 0) {
            snprintf(reason, sizeof(reason), "AUTH CRAM-MD5: malformed challenge from %s", c->host);
            auth_failed(c, SMTP_FAIL_PROTOCOL, reason);
            return;
        }
    } else {
        snprintf(reason, sizeof(reason), "AUTH %s: unexpected 334 from %s at step %d", arg, c->host,
                 c->auth_stage);
        auth_failed(c, SMTP_FAIL_PROTOCOL, reason);
        return;
    }
    OPENSSL_cleanse(enc, sizeof(enc));
    if (rc == 0)
        smtp_client__arm(c, smtp_client__timeout(c, SETTINGS_F_TIMEOUT_COMMAND));
}

void smtp_client__auth_reply(struct smtp_client *c)
{
    const struct smtp_reply *r = &c->reply;
    char what[64], reason[SMTP_CLIENT_REASON_MAX];

    snprintf(what, sizeof(what), "AUTH %s", smtp_client__auth_name(c->auth_mech));
    if (r->code == 235) {
        smtp_client__step(c, SMTP_STEP_AUTH, true, SMTP_FAIL_NONE,
                          smtp_client__auth_name(c->auth_mech), r->text);
        smtp_client__set_state(c, SMTP_CLIENT_READY);
        return;
    }
    if (r->code == 334) {
        auth_continue(c);
        return;
    }
    smtp_client__reason(c, reason, sizeof(reason), what);
    auth_failed(c, r->code >= 400 ? SMTP_FAIL_AUTH_REFUSED : SMTP_FAIL_PROTOCOL, reason);
}
