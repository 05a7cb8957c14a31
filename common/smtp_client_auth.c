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
 * log line or step carries it (smtp_client__command() logs AUTH lines by a
 * label), and smtp_client_redact() masks it in whatever a server sends back.
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

/* Replaces every occurrence of `secret` in the string `text` (room for
 * `size` octets) with the mask, cutting what no longer fits; octets freed
 * at the end are zeroed, so no tail of a secret stays behind the NUL. */
static void redact_form(char *text, size_t size, const char *secret)
{
    size_t slen = strlen(secret), mlen = strlen(SETTINGS_PASSWORD_MASK);
    size_t len = strnlen(text, size);
    char *p = text, *hit;

    if (slen == 0 || len == size)
        return;
    while ((hit = strstr(p, secret)) != NULL) {
        size_t at = (size_t)(hit - text), tail = len - at - slen, room = size - 1 - at;
        size_t m = mlen < room ? mlen : room, t = tail < room - m ? tail : room - m;

        memmove(hit + m, hit + slen, t);
        memcpy(hit, SETTINGS_PASSWORD_MASK, m);
        if (at + m + t < len)
            memset(hit + m + t, 0, len - (at + m + t));
        len = at + m + t;
        text[len] = '\0';
        p = hit + m;
    }
}

void smtp_client_redact(const struct settings *s, char *text, size_t size)
{
    char raw[SETTINGS_USER_MAX + SETTINGS_PASSWORD_MAX + 2];
    char enc[B64_MAX], esc[4 * SETTINGS_PASSWORD_MAX + 1];
    size_t ulen, plen;

    if (s == NULL || s->password == NULL || s->password[0] == '\0' || text == NULL || size == 0)
        return;
    ulen = strnlen(s->user_id, sizeof(s->user_id) - 1);
    plen = strnlen(s->password, SETTINGS_PASSWORD_MAX);
    /* Longest first: a shorter form masked inside a longer one would leave
     * the rest of that one to decode. AUTH PLAIN's blob, AUTH LOGIN's
     * base64, then the password as escaped in a reply, and as it is. */
    raw[0] = '\0';
    memcpy(raw + 1, s->user_id, ulen);
    raw[1 + ulen] = '\0';
    memcpy(raw + 2 + ulen, s->password, plen);
    b64(enc, raw, 2 + ulen + plen);
    redact_form(text, size, enc);
    b64(enc, s->password, plen);
    redact_form(text, size, enc);
    smtp_reply_escape(esc, sizeof(esc), s->password, plen);
    redact_form(text, size, esc);
    memcpy(raw, s->password, plen);
    raw[plen] = '\0';
    redact_form(text, size, raw);
    OPENSSL_cleanse(raw, sizeof(raw));
    OPENSSL_cleanse(enc, sizeof(enc));
    OPENSSL_cleanse(esc, sizeof(esc));
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

/* The reply to the CRAM-MD5 challenge: base64("user hex(HMAC-MD5)").
 * Returns 0, ERROR_DECODE for a malformed challenge, ERROR_CRYPTO when
 * HMAC fails, or the error of sending (the session is ending then). */
static int cram_response(struct smtp_client *c, const char *challenge64)
{
    const struct settings *s = &c->settings;
    unsigned char challenge[CHALLENGE_MAX], mac[EVP_MAX_MD_SIZE];
    unsigned int maclen = 0;
    char resp[SETTINGS_USER_MAX + 2 + 2 * EVP_MAX_MD_SIZE + 1], enc[B64_MAX];
    size_t clen = strlen(challenge64), n;
    int dlen, rc = ERROR_CRYPTO;

    /* EVP_DecodeBlock counts padding as data: take it off again. */
    if (clen == 0 || clen % 4 != 0 || clen / 4 * 3 > sizeof(challenge))
        return ERROR_DECODE;
    dlen = EVP_DecodeBlock(challenge, (const unsigned char *)challenge64, (int)clen);
    if (dlen < 0)
        return ERROR_DECODE;
    for (size_t i = clen; i > 0 && challenge64[i - 1] == '='; i--)
        dlen--;
    if (HMAC(EVP_md5(), s->password, (int)strlen(s->password), challenge, (size_t)dlen, mac,
             &maclen) == NULL)
        goto wipe;
    n = (size_t)snprintf(resp, sizeof(resp), "%s ", s->user_id);
    for (unsigned i = 0; i < maclen; i++)
        n += (size_t)snprintf(resp + n, sizeof(resp) - n, "%02x", mac[i]);
    b64(enc, resp, n);
    rc = smtp_client__command(c, true, "%s", enc);
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
        if (rc == ERROR_DECODE || rc == ERROR_CRYPTO) {
            snprintf(reason, sizeof(reason), "AUTH CRAM-MD5: %s from %s",
                     rc == ERROR_DECODE ? "malformed challenge" : "cannot answer the challenge",
                     c->host);
            auth_failed(c, rc == ERROR_DECODE ? SMTP_FAIL_PROTOCOL : SMTP_FAIL_INTERNAL, reason);
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
