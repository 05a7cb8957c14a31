/*
 * smtp_client: see smtp_client.h. This file holds the session's state
 * machine (the states are listed in internal.h): the API, the one event
 * function, the replies up to READY (greeting, EHLO/HELO, STARTTLS, RSET,
 * QUIT), the timeouts, the steps and the end of the session.
 * smtp_client_conn.c holds the connection (resolving, connecting, I/O,
 * TLS), smtp_client_auth.c AUTH, smtp_client_mail.c the mail transaction.
 *
 * Decisions beyond the header:
 *   - STARTTLS falls back to plaintext (starttls_fallback=on) only when it
 *     is not offered or is refused with a reply; never after a failed
 *     handshake, which ends the attempt with the TLS or certificate failure
 *     it met (CERT_*, TLS_VERSION, TLS_NOT_TLS or TLS_HANDSHAKE), so that a
 *     certificate problem is never papered over. The fallback is refused
 *     whenever logon_required is on, allow_plaintext_auth or not: a session
 *     that asked for TLS never sends the password in clear.
 *   - The implicit TLS handshake is timed with the greeting timeout (it is
 *     the server's first answer), the STARTTLS one with the command timeout.
 *   - SMTP_FAIL_SETTINGS also covers a message the client cannot send as
 *     given (no recipient, a control character in an address): it is
 *     permanent, like the settings problems it is named after.
 *   - Every end of a session but a clean QUIT or a cancel is reported
 *     through on_step as a failed step of the phase the session was in
 *     (smtp_client__finish adds it when the code that failed did not), so
 *     that Test Connection never has to guess where a session broke. A
 *     failure met while handling a reply quotes it, malformed or not.
 */
#include "internal.h"

#include <assert.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "log.h"
#include "metrics.h"
#include "syntax.h"

static_assert(SMTP_REPLY_LINE_MAX == SMTP_CLIENT_LINE_MAX, "one line limit");
static_assert(SMTP_REPLY_LINES_MAX == SMTP_CLIENT_REPLY_LINES_MAX, "one line count limit");
static_assert(SMTP_REPLY_TEXT_MAX == SMTP_CLIENT_REPLY_TEXT_MAX, "one reply text limit");

static const char *const fail_text[] = {
#define XX(name, text) text,
    SMTP_FAIL_MAP(XX)
#undef XX
};

const char *smtp_fail_str(enum smtp_fail f)
{
    if ((unsigned)f >= SMTP_FAIL_COUNT)
        return "unknown failure";
    return fail_text[f];
}

/* Permanent: the server said so (5xx), or nothing will change until the
 * message or the settings do (TOO_BIG, SETTINGS). Everything else may be
 * over on the next attempt, a certificate problem included: the operator
 * can import the right certificate while the message waits. */
bool smtp_fail_is_temporary(enum smtp_fail f)
{
    switch (f) {
    case SMTP_FAIL_REPLY_5XX:
    case SMTP_FAIL_TOO_BIG:
    case SMTP_FAIL_SETTINGS:
    case SMTP_FAIL_NONE:
    case SMTP_FAIL_COUNT:
        return false;
    default:
        return true;
    }
}

static const char *const state_names[] = {
#define XX(name) #name,
    SMTP_CLIENT_STATE_MAP(XX)
#undef XX
};

const char *smtp_client__state_name(enum smtp_client_state s)
{
    return state_names[s];
}

enum smtp_fail smtp_client__fail_of(int code)
{
    return code >= 500 ? SMTP_FAIL_REPLY_5XX : SMTP_FAIL_REPLY_4XX;
}

const char *smtp_client__quote(char *buf, size_t len, const char *s)
{
    smtp_reply_escape(buf, len, s, strlen(s));
    return buf;
}

void smtp_client__reason(const struct smtp_client *c, char *buf, size_t len, const char *what)
{
    int n = snprintf(buf, len, "%s: ", what);

    /* The summary cuts itself with "..." to what is left. */
    if (n >= 0 && (size_t)n < len)
        smtp_reply_summary(&c->reply, buf + n, len - (size_t)n);
}

/* ---- steps ---- */

/* Buffers for a step's texts: larger than any detail or reply the client
 * makes (a copy is never cut, which could cut a secret in half). */
#define STEP_DETAIL_MAX (2 * SMTP_CLIENT_REASON_MAX + 64)
#define STEP_REPLY_MAX  (SMTP_CLIENT_REPLY_TEXT_MAX + 64)

/* A copy of `in` with the password masked, for handing out. */
static const char *redacted(const struct smtp_client *c, char *buf, size_t len, const char *in)
{
    snprintf(buf, len, "%s", in);
    smtp_client_redact(&c->settings, buf, len);
    return buf;
}

void smtp_client__step(struct smtp_client *c, enum smtp_client_step_kind kind, bool ok,
                       enum smtp_fail fail, const char *detail, const char *reply)
{
    char dbuf[STEP_DETAIL_MAX], rbuf[STEP_REPLY_MAX];
    uint64_t now = uv_hrtime();
    struct smtp_client_step step = {
        .kind = kind,
        .ok = ok,
        .fail = ok ? SMTP_FAIL_NONE : fail,
        .elapsed_us = (now - c->step_start) / 1000,
        .detail = redacted(c, dbuf, sizeof(dbuf), detail != NULL ? detail : ""),
        .server_reply = reply != NULL ? redacted(c, rbuf, sizeof(rbuf), reply) : NULL,
    };

    c->step_start = now;
    c->step_failed = !ok;
    if (c->cb.on_step != NULL)
        c->cb.on_step(c->ctx, &step);
}

/* The fallback warning: ok=false, warning=true, the session goes on. */
static void step_warning(struct smtp_client *c, const char *detail, const char *reply)
{
    char dbuf[STEP_DETAIL_MAX], rbuf[STEP_REPLY_MAX];
    uint64_t now = uv_hrtime();
    struct smtp_client_step step = {
        .kind = SMTP_STEP_STARTTLS,
        .ok = false,
        .warning = true,
        .fail = SMTP_FAIL_STARTTLS,
        .elapsed_us = (now - c->step_start) / 1000,
        .detail = redacted(c, dbuf, sizeof(dbuf), detail),
        .server_reply = reply != NULL ? redacted(c, rbuf, sizeof(rbuf), reply) : NULL,
    };

    c->step_start = now;
    if (c->cb.on_step != NULL)
        c->cb.on_step(c->ctx, &step);
}

/* ---- closing ---- */

static void client_free(struct smtp_client *c)
{
    tlsio_free(c->tls);
    SSL_CTX_free(c->ssl_ctx);
    if (c->ai != NULL)
        uv_freeaddrinfo(c->ai);
    free(c->rcpts);
    settings_clear(&c->settings);
    /* Buffers may hold what the server sent after AUTH, or message text. */
    OPENSSL_cleanse(c, sizeof(*c));
    free(c);
}

/* The last pending close or request is done: on_closed, then free. */
void smtp_client__maybe_finalize(struct smtp_client *c)
{
    if (c->state != SMTP_CLIENT_CLOSING || c->closes > 0 || c->gai_pending)
        return;
    smtp_client__set_state(c, SMTP_CLIENT_CLOSED);
    c->cb.on_closed(c->ctx, c->fail, c->reason);
    client_free(c);
}

/* The step a failure in state s belongs to. */
static enum smtp_client_step_kind phase_step(enum smtp_client_state s)
{
    switch (s) {
    case SMTP_CLIENT_INIT:
    case SMTP_CLIENT_RESOLVE:
        return SMTP_STEP_RESOLVE;
    case SMTP_CLIENT_CONNECT:
        return SMTP_STEP_CONNECT;
    case SMTP_CLIENT_TLS:
    case SMTP_CLIENT_STARTTLS_TLS:
        return SMTP_STEP_TLS;
    case SMTP_CLIENT_GREETING:
        return SMTP_STEP_GREETING;
    case SMTP_CLIENT_EHLO:
    case SMTP_CLIENT_HELO:
        return SMTP_STEP_EHLO;
    case SMTP_CLIENT_STARTTLS:
        return SMTP_STEP_STARTTLS;
    case SMTP_CLIENT_AUTH:
        return SMTP_STEP_AUTH;
    case SMTP_CLIENT_RSET: /* the start of the next transaction */
    case SMTP_CLIENT_MAIL:
        return SMTP_STEP_MAIL;
    case SMTP_CLIENT_RCPT:
        return SMTP_STEP_RCPT;
    case SMTP_CLIENT_DATA:
    case SMTP_CLIENT_BODY:
    case SMTP_CLIENT_DOT:
        return SMTP_STEP_DATA;
    case SMTP_CLIENT_READY: /* between transactions: the end of the session */
    case SMTP_CLIENT_IDLE:
    case SMTP_CLIENT_QUIT:
    case SMTP_CLIENT_CLOSING:
    case SMTP_CLIENT_CLOSED:
        return SMTP_STEP_QUIT;
    }
    abort();
}

void smtp_client__finish(struct smtp_client *c, enum smtp_fail fail, const char *fmt, ...)
{
    const struct smtp_client_msg *msg = c->msg;
    enum smtp_client_state phase = c->state;
    char reply[SMTP_CLIENT_REPLY_TEXT_MAX];
    bool report;
    va_list ap;

    if (c->state >= SMTP_CLIENT_CLOSING)
        return;
    c->fail = fail;
    va_start(ap, fmt);
    vsnprintf(c->reason, sizeof(c->reason), fmt, ap);
    va_end(ap);
    smtp_client_redact(&c->settings, c->reason, sizeof(c->reason));
    report = fail != SMTP_FAIL_NONE && fail != SMTP_FAIL_CANCELLED && !c->step_failed;
    if (report && c->in_reply)
        smtp_reply_received(&c->reply, reply, sizeof(reply));
    /* Closing first: a cancel from on_step finds the session ending. */
    smtp_client__set_state(c, SMTP_CLIENT_CLOSING);
    if (report)
        smtp_client__step(c, phase_step(phase), false, fail, c->reason,
                          c->in_reply && reply[0] != '\0' ? reply : NULL);
    if (msg != NULL) {
        c->result.fail = fail;
        if (c->result.code == 0)
            c->result.code =
                fail == SMTP_FAIL_REPLY_4XX || fail == SMTP_FAIL_REPLY_5XX ? c->reply.code : 0;
        snprintf(c->result.reason, sizeof(c->result.reason), "%s", c->reason);
        smtp_client__mail_done(c);
    }
}

/* ---- the state machine ---- */

static bool keyword_is(const char *t, size_t n, const char *kw)
{
    return n == strlen(kw) && strncasecmp(t, kw, n) == 0;
}

/* One capability line of an EHLO reply. */
static void caps_line(struct smtp_client *c)
{
    struct smtp_client_caps *k = &c->caps;
    const char *t = smtp_reply_line_text(&c->reply);
    size_t n = strcspn(t, " ="), len = strlen(k->text);

    if (keyword_is(t, n, "PIPELINING")) {
        k->pipelining = true;
    } else if (keyword_is(t, n, "8BITMIME")) {
        k->eight_bit = true;
    } else if (keyword_is(t, n, "SMTPUTF8")) {
        k->smtputf8 = true;
    } else if (keyword_is(t, n, "STARTTLS")) {
        k->starttls = true;
    } else if (keyword_is(t, n, "SIZE")) {
        const char *v = t + n + (t[n] == ' ');
        uint64_t max = 0;

        k->size = true;
        /* RFC 1870: digits, or nothing for no fixed limit. */
        for (; *v >= '0' && *v <= '9' && max < UINT64_MAX / 10 - 9; v++)
            max = max * 10 + (uint64_t)(*v - '0');
        k->size_max = *v == '\0' ? max : 0;
    } else if (keyword_is(t, n, "AUTH")) {
        /* "AUTH PLAIN LOGIN", and the old "AUTH=PLAIN LOGIN". */
        const char *m = t + n;

        while (*m != '\0') {
            size_t w;

            m += strspn(m, " =");
            w = strcspn(m, " ");
            if (keyword_is(m, w, "PLAIN"))
                k->auth |= SMTP_CLIENT_AUTH_PLAIN;
            else if (keyword_is(m, w, "LOGIN"))
                k->auth |= SMTP_CLIENT_AUTH_LOGIN;
            else if (keyword_is(m, w, "CRAM-MD5"))
                k->auth |= SMTP_CLIENT_AUTH_CRAM_MD5;
            m += w;
        }
    }
    if (*t != '\0' && len + 3 < sizeof(k->text)) {
        if (len > 0) {
            memcpy(k->text + len, ", ", 3);
            len += 2;
        }
        smtp_reply_escape(k->text + len, sizeof(k->text) - len, t, strlen(t));
    }
}

void smtp_client__what(const struct smtp_client *c, char *buf, size_t len)
{
    char q[SETTINGS_ADDRESS_MAX * 4 + 4];

    switch (c->state) {
    case SMTP_CLIENT_GREETING:
        snprintf(buf, len, "greeting");
        return;
    case SMTP_CLIENT_AUTH:
        snprintf(buf, len, "AUTH %s", smtp_client__auth_name(c->auth_mech));
        return;
    case SMTP_CLIENT_MAIL:
        snprintf(buf, len, "MAIL FROM:<%s>", smtp_client__quote(q, sizeof(q), c->msg->mail_from));
        return;
    case SMTP_CLIENT_RCPT:
        snprintf(buf, len, "RCPT TO:<%s>",
                 smtp_client__quote(q, sizeof(q), c->msg->rcpts[c->rcpt_next]));
        return;
    case SMTP_CLIENT_BODY:
    case SMTP_CLIENT_DOT:
        snprintf(buf, len, "end of DATA");
        return;
    case SMTP_CLIENT_READY:
    case SMTP_CLIENT_IDLE:
        snprintf(buf, len, "while idle");
        return;
    default:
        snprintf(buf, len, "%s", smtp_client__state_name(c->state));
        return;
    }
}

void smtp_client__input(struct smtp_client *c, const char *data, size_t len)
{
    size_t off = 0;

    while (off < len && c->state < SMTP_CLIENT_CLOSING) {
        size_t used = 0;
        int rc = smtp_reply_feed(&c->reply, data + off, len - off, &used);

        off += used;
        if (rc == ERROR_DECODE) {
            char what[SMTP_CLIENT_REASON_MAX];

            smtp_client__what(c, what, sizeof(what));
            c->in_reply = true;
            smtp_client__finish(c, SMTP_FAIL_PROTOCOL, "malformed reply to %s from %s: %s", what,
                                c->host, c->reply.why);
            return;
        }
        if (rc == SMTP_REPLY_AGAIN)
            break;
        /* Capabilities, line by line (the first names the server). */
        if (c->state == SMTP_CLIENT_EHLO && c->reply.nlines > 1)
            caps_line(c);
        if (rc != SMTP_REPLY_DONE)
            continue;
        c->rx_left = len - off;
        /* Only a pipelined group has more replies on the way; STARTTLS
         * says why more is refused after its 220 itself. */
        if (c->rx_left > 0 && c->state != SMTP_CLIENT_STARTTLS &&
            !(c->pipelined && (c->state == SMTP_CLIENT_MAIL || c->state == SMTP_CLIENT_RCPT))) {
            char what[SMTP_CLIENT_REASON_MAX];

            smtp_client__what(c, what, sizeof(what));
            c->in_reply = true;
            smtp_client__finish(c, SMTP_FAIL_PROTOCOL,
                                "%s sent more than one reply to %s (%zu octets more)", c->host,
                                what, c->rx_left);
            return;
        }
        /* A failure while handling it quotes it, unless a command went out
         * since (smtp_client__send); c lives on until the loop turns. */
        c->in_reply = true;
        smtp_client__event(c, SMTP_CLIENT_EV_REPLY);
        c->in_reply = false;
    }
}

static void auth_or_ready(struct smtp_client *c)
{
    char detail[SMTP_CLIENT_REASON_MAX];

    if (!c->settings.logon_required) {
        smtp_client__set_state(c, SMTP_CLIENT_READY);
        return;
    }
    if (!c->tls_on && !c->settings.allow_plaintext_auth) {
        smtp_client__step(c, SMTP_STEP_AUTH, false, SMTP_FAIL_AUTH_PLAINTEXT,
                          "not sent: the connection is not encrypted", NULL);
        smtp_client__finish(c, SMTP_FAIL_AUTH_PLAINTEXT,
                            "the connection to %s is not encrypted: AUTH would send the password "
                            "in clear (allow_plaintext_auth is off)",
                            c->host);
        return;
    }
    c->auth_mech = smtp_client__auth_choose(c->caps.auth, c->tls_on);
    if (c->auth_mech == 0) {
        snprintf(detail, sizeof(detail), "%s offers no AUTH mechanism of PLAIN, LOGIN, CRAM-MD5",
                 c->host);
        smtp_client__step(c, SMTP_STEP_AUTH, false, SMTP_FAIL_AUTH_UNAVAILABLE, detail, NULL);
        smtp_client__finish(c, SMTP_FAIL_AUTH_UNAVAILABLE, "%s (capabilities: %s)", detail,
                            c->caps.text[0] != '\0' ? c->caps.text : "none");
        return;
    }
    c->auth_stage = 0;
    smtp_client__set_state(c, SMTP_CLIENT_AUTH);
}

/* STARTTLS not offered or refused: fail closed, or fall back if allowed. */
static void starttls_unavailable(struct smtp_client *c, const char *what, const char *reply)
{
    char detail[SMTP_CLIENT_REASON_MAX];
    bool fallback = c->settings.starttls_fallback;

    if (fallback && !c->settings.logon_required) {
        snprintf(detail, sizeof(detail), "%s; continuing without TLS (starttls_fallback is on)",
                 what);
        smtp_client_redact(&c->settings, detail, sizeof(detail));
        log_debug("smtp %s: %s", c->peer, detail);
        step_warning(c, detail, reply);
        c->want_starttls = false;
        auth_or_ready(c);
        return;
    }
    smtp_client__step(c, SMTP_STEP_STARTTLS, false, SMTP_FAIL_STARTTLS, what, reply);
    smtp_client__finish(c, SMTP_FAIL_STARTTLS, "%s (tls_mode is starttls%s)", what,
                        fallback ? "; no plaintext fallback, AUTH would send the password in clear"
                                 : "");
}

/* EHLO or HELO succeeded: STARTTLS, AUTH or ready. */
static void after_ehlo(struct smtp_client *c)
{
    char what[SMTP_CLIENT_REASON_MAX];

    if (c->want_starttls && !c->tls_on) {
        if (c->caps.starttls) {
            smtp_client__set_state(c, SMTP_CLIENT_STARTTLS);
            return;
        }
        snprintf(what, sizeof(what), "%s does not offer STARTTLS", c->host);
        starttls_unavailable(c, what, NULL);
        return;
    }
    auth_or_ready(c);
}

static void greeting_reply(struct smtp_client *c)
{
    char reason[SMTP_CLIENT_REASON_MAX];
    const struct smtp_reply *r = &c->reply;

    if (r->code / 100 == 2) {
        smtp_client__step(c, SMTP_STEP_GREETING, true, SMTP_FAIL_NONE, NULL, r->text);
        smtp_client__set_state(c, SMTP_CLIENT_EHLO);
        return;
    }
    smtp_client__reason(c, reason, sizeof(reason), "greeting");
    smtp_client__step(c, SMTP_STEP_GREETING, false, smtp_client__fail_of(r->code), reason, r->text);
    smtp_client__finish(c, smtp_client__fail_of(r->code), "%s", reason);
}

static void ehlo_reply(struct smtp_client *c)
{
    char reason[SMTP_CLIENT_REASON_MAX];
    const struct smtp_reply *r = &c->reply;
    const char *verb = c->state == SMTP_CLIENT_HELO ? "HELO" : "EHLO";

    if (r->code / 100 == 2) {
        if (c->state == SMTP_CLIENT_HELO)
            memset(&c->caps, 0, sizeof(c->caps));
        smtp_client__step(c, SMTP_STEP_EHLO, true, SMTP_FAIL_NONE,
                          c->state == SMTP_CLIENT_HELO ? "HELO (EHLO refused): no extensions"
                          : c->caps.text[0] != '\0'    ? c->caps.text
                                                       : "no extensions",
                          r->text);
        after_ehlo(c);
        return;
    }
    if (r->code / 100 == 5 && c->state == SMTP_CLIENT_EHLO) {
        /* RFC 5321 §3.2: an old server; try HELO. */
        smtp_client__set_state(c, SMTP_CLIENT_HELO);
        return;
    }
    smtp_client__reason(c, reason, sizeof(reason), verb);
    smtp_client__step(c, SMTP_STEP_EHLO, false, smtp_client__fail_of(r->code), reason, r->text);
    smtp_client__finish(c, smtp_client__fail_of(r->code), "%s", reason);
}

static void starttls_reply(struct smtp_client *c)
{
    char reason[SMTP_CLIENT_REASON_MAX];
    const struct smtp_reply *r = &c->reply;

    if (r->code == 220) {
        /* Nothing may follow the 220 before the handshake: whatever did
         * was not sent by the server we are about to authenticate. */
        if (c->rx_left > 0) {
            smtp_client__step(c, SMTP_STEP_STARTTLS, false, SMTP_FAIL_PROTOCOL,
                              "octets after the 220 to STARTTLS", r->text);
            smtp_client__finish(c, SMTP_FAIL_PROTOCOL,
                                "%s sent %zu octets after its 220 to STARTTLS, before the TLS "
                                "handshake (STARTTLS injection): session refused",
                                c->host, c->rx_left);
            return;
        }
        smtp_client__step(c, SMTP_STEP_STARTTLS, true, SMTP_FAIL_NONE, NULL, r->text);
        smtp_client__set_state(c, SMTP_CLIENT_STARTTLS_TLS);
        return;
    }
    smtp_client__reason(c, reason, sizeof(reason), "STARTTLS refused");
    starttls_unavailable(c, reason, r->text);
}

static void rset_reply(struct smtp_client *c)
{
    if (c->reply.code / 100 == 2) {
        c->need_rset = false;
        if (!smtp_client__mail_start(c))
            smtp_client__set_state(c, SMTP_CLIENT_READY);
        return;
    }
    /* Not the message's fault: temporary, whatever the code. */
    smtp_client__reason(c, c->fail_reason, sizeof(c->fail_reason), "RSET");
    smtp_client__finish(c, SMTP_FAIL_PROTOCOL, "%s", c->fail_reason);
}

/* A whole reply arrived. */
static void event_reply(struct smtp_client *c)
{
    char what[SMTP_CLIENT_REASON_MAX], reason[SMTP_CLIENT_REASON_MAX];

    /* A challenge, or an echo of what was sent, is nobody's business. */
    if (c->state == SMTP_CLIENT_AUTH)
        log_debug("smtp %s <<< %d [AUTH exchange not logged]", c->peer, c->reply.code);
    else
        log_debug("smtp %s <<< %s", c->peer, redacted(c, reason, sizeof(reason), c->reply.text));
    uv_timer_stop(&c->timer);
    if (c->reply.code == 421 && c->state != SMTP_CLIENT_QUIT) {
        /* RFC 5321 §3.8: the server is closing the channel. */
        smtp_client__what(c, what, sizeof(what));
        smtp_client__reason(c, reason, sizeof(reason), what);
        smtp_client__finish(c, SMTP_FAIL_REPLY_4XX, "%s", reason);
        return;
    }
    switch (c->state) {
    case SMTP_CLIENT_GREETING:
        greeting_reply(c);
        return;
    case SMTP_CLIENT_EHLO:
    case SMTP_CLIENT_HELO:
        ehlo_reply(c);
        return;
    case SMTP_CLIENT_STARTTLS:
        starttls_reply(c);
        return;
    case SMTP_CLIENT_AUTH:
        smtp_client__auth_reply(c);
        return;
    case SMTP_CLIENT_RSET:
        rset_reply(c);
        return;
    case SMTP_CLIENT_MAIL:
    case SMTP_CLIENT_RCPT:
    case SMTP_CLIENT_DATA:
    case SMTP_CLIENT_BODY:
    case SMTP_CLIENT_DOT:
        smtp_client__mail_reply(c);
        return;
    case SMTP_CLIENT_QUIT:
        smtp_client__step(c, SMTP_STEP_QUIT, true, SMTP_FAIL_NONE, NULL, c->reply.text);
        smtp_client__finish(c, SMTP_FAIL_NONE, "%s", "");
        return;
    case SMTP_CLIENT_READY:
    case SMTP_CLIENT_IDLE:
        smtp_client__reason(c, reason, sizeof(reason), "unexpected reply while idle");
        smtp_client__finish(c, SMTP_FAIL_PROTOCOL, "%s", reason);
        return;
    case SMTP_CLIENT_INIT:
    case SMTP_CLIENT_RESOLVE:
    case SMTP_CLIENT_CONNECT:
    case SMTP_CLIENT_TLS:
    case SMTP_CLIENT_STARTTLS_TLS:
    case SMTP_CLIENT_CLOSING:
    case SMTP_CLIENT_CLOSED:
        break;
    }
    /* Input is read only from GREETING on, never during a handshake. */
    abort();
}

static void event_timeout(struct smtp_client *c)
{
    char what[SMTP_CLIENT_REASON_MAX];
    unsigned long long secs = (unsigned long long)(c->timer_ms / 1000);

    switch (c->state) {
    case SMTP_CLIENT_RESOLVE:
        /* getaddrinfo() cannot be stopped: on_closed waits for it, but the
         * step and the reason are known now. */
        snprintf(what, sizeof(what), "no answer within %llu s", secs);
        smtp_client__step(c, SMTP_STEP_RESOLVE, false, SMTP_FAIL_TIMEOUT, what, NULL);
        smtp_client__finish(c, SMTP_FAIL_TIMEOUT, "cannot resolve %s: %s", c->host, what);
        return;
    case SMTP_CLIENT_CONNECT:
        snprintf(what, sizeof(what), "no answer within %llu s", secs);
        smtp_client__attempt_failed(c, what, true);
        smtp_client__tcp_close(c); /* on_close() tries the next address */
        return;
    case SMTP_CLIENT_IDLE:
        smtp_client__set_state(c, SMTP_CLIENT_QUIT);
        return;
    case SMTP_CLIENT_QUIT:
        smtp_client__finish(c, SMTP_FAIL_NONE, "%s", "");
        return;
    case SMTP_CLIENT_TLS:
    case SMTP_CLIENT_STARTTLS_TLS:
        snprintf(what, sizeof(what), "no TLS handshake within %llu s", secs);
        metrics_count(METRICS_TLS_HANDSHAKE_FAILURES, "smtp", METRICS_TLS_TIMEOUT, 1);
        smtp_client__step(c, SMTP_STEP_TLS, false, SMTP_FAIL_TIMEOUT, what, NULL);
        smtp_client__finish(c, SMTP_FAIL_TIMEOUT, "%s: %s", c->host, what);
        return;
    case SMTP_CLIENT_GREETING:
        smtp_client__step(c, SMTP_STEP_GREETING, false, SMTP_FAIL_TIMEOUT, "no greeting", NULL);
        smtp_client__finish(c, SMTP_FAIL_TIMEOUT, "no greeting from %s within %llu s", c->host,
                            secs);
        return;
    case SMTP_CLIENT_BODY:
        smtp_client__finish(c, SMTP_FAIL_TIMEOUT,
                            "%s did not take the message data within %llu s (data block)", c->host,
                            secs);
        return;
    case SMTP_CLIENT_EHLO:
    case SMTP_CLIENT_HELO:
    case SMTP_CLIENT_STARTTLS:
    case SMTP_CLIENT_AUTH:
    case SMTP_CLIENT_RSET:
    case SMTP_CLIENT_MAIL:
    case SMTP_CLIENT_RCPT:
    case SMTP_CLIENT_DATA:
    case SMTP_CLIENT_DOT:
        smtp_client__what(c, what, sizeof(what));
        smtp_client__finish(c, SMTP_FAIL_TIMEOUT, "no reply to %s from %s within %llu s", what,
                            c->host, secs);
        return;
    case SMTP_CLIENT_INIT:
    case SMTP_CLIENT_READY:
    case SMTP_CLIENT_CLOSING:
    case SMTP_CLIENT_CLOSED:
        break;
    }
    /* The timer is never armed in these states. */
    abort();
}

static void event_connected(struct smtp_client *c)
{
    char detail[SMTP_CLIENT_REASON_MAX * 2];

    uv_timer_stop(&c->timer);
    if (c->attempts[0] != '\0')
        snprintf(detail, sizeof(detail), "%s (after %s)", c->peer, c->attempts);
    else
        snprintf(detail, sizeof(detail), "%s", c->peer);
    smtp_client__step(c, SMTP_STEP_CONNECT, true, SMTP_FAIL_NONE, detail, NULL);
    smtp_client__set_state(c, c->implicit_tls ? SMTP_CLIENT_TLS : SMTP_CLIENT_GREETING);
}

static void event_eof(struct smtp_client *c)
{
    switch (c->state) {
    case SMTP_CLIENT_QUIT:
        smtp_client__finish(c, SMTP_FAIL_NONE, "%s", "");
        return;
    case SMTP_CLIENT_BODY:
    case SMTP_CLIENT_DOT:
        smtp_client__finish(c, SMTP_FAIL_CLOSED,
                            "%s closed the connection after the message was sent, before its "
                            "reply to the end of DATA (delivery unknown)",
                            c->host);
        return;
    case SMTP_CLIENT_IDLE:
        smtp_client__finish(c, SMTP_FAIL_CLOSED, "%s closed the idle connection", c->host);
        return;
    case SMTP_CLIENT_TLS:
    case SMTP_CLIENT_STARTTLS_TLS:
        smtp_client__tls_eof(c);
        return;
    default:
        smtp_client__finish(c, SMTP_FAIL_CLOSED, "%s closed the connection (state %s)", c->host,
                            smtp_client__state_name(c->state));
        return;
    }
}

static void event_tls_up(struct smtp_client *c)
{
    switch (c->state) {
    case SMTP_CLIENT_TLS:
        smtp_client__set_state(c, SMTP_CLIENT_GREETING);
        return;
    case SMTP_CLIENT_STARTTLS_TLS:
        /* RFC 3207 §4.2: what was learned in clear is forgotten. */
        memset(&c->caps, 0, sizeof(c->caps));
        smtp_client__set_state(c, SMTP_CLIENT_EHLO);
        return;
    default:
        abort(); /* a handshake runs in these two states only */
    }
}

void smtp_client__event(struct smtp_client *c, enum smtp_client_event ev)
{
    if (c->state >= SMTP_CLIENT_CLOSING)
        return;
    switch (ev) {
    case SMTP_CLIENT_EV_CONNECTED:
        event_connected(c);
        return;
    case SMTP_CLIENT_EV_TLS_UP:
        event_tls_up(c);
        return;
    case SMTP_CLIENT_EV_REPLY:
        event_reply(c);
        return;
    case SMTP_CLIENT_EV_EOF:
        event_eof(c);
        return;
    case SMTP_CLIENT_EV_TIMEOUT:
        event_timeout(c);
        return;
    case SMTP_CLIENT_EV_KICK:
        /* smtp_client_kick() sends it only in IDLE. */
        smtp_client__set_state(c, SMTP_CLIENT_READY);
        return;
    case SMTP_CLIENT_EV_CANCEL:
        smtp_client__finish(c, SMTP_FAIL_CANCELLED, "cancelled");
        return;
    }
    abort();
}

/* Asks for messages until one is sent, or there is none. */
static void ready_enter(struct smtp_client *c)
{
    uv_timer_stop(&c->timer);
    for (;;) {
        const struct smtp_client_msg *msg = NULL;
        bool got = c->cb.on_next(c->ctx, &msg) && msg != NULL;

        if (c->state != SMTP_CLIENT_READY) {
            /* Cancelled from on_next: a message handed over all the same
             * is handed back. */
            if (got) {
                c->msg = msg;
                c->result.fail = SMTP_FAIL_CANCELLED;
                snprintf(c->result.reason, sizeof(c->result.reason), "%s", c->reason);
                smtp_client__mail_done(c);
            }
            return;
        }
        if (!got) {
            smtp_client__set_state(c, c->idle_ms > 0 ? SMTP_CLIENT_IDLE : SMTP_CLIENT_QUIT);
            return;
        }
        c->msg = msg;
        if (c->need_rset) {
            smtp_client__set_state(c, SMTP_CLIENT_RSET);
            return;
        }
        if (smtp_client__mail_start(c) || c->state != SMTP_CLIENT_READY)
            return;
    }
}

static void closing_enter(struct smtp_client *c)
{
    uv_timer_stop(&c->timer);
    if (c->gai_pending)
        (void)uv_cancel((uv_req_t *)&c->gai); /* on_resolved() comes all the same */
    if (c->tcp_open)
        uv_read_stop((uv_stream_t *)&c->tcp);
    smtp_client__tcp_close(c);
    c->closes++;
    uv_close((uv_handle_t *)&c->timer, smtp_client__on_close);
}

void smtp_client__set_state(struct smtp_client *c, enum smtp_client_state s)
{
    enum smtp_client_state old = c->state;

    /* Once ending, only the end goes on: a callback may have cancelled. */
    if (old >= SMTP_CLIENT_CLOSING && s != SMTP_CLIENT_CLOSED)
        return;
    log_debug("smtp %s: %s -> %s", c->peer[0] != '\0' ? c->peer : c->host,
              smtp_client__state_name(old), smtp_client__state_name(s));
    c->state = s;
    /* A failed step is followed by the end at once, or the session goes
     * on (a refused transaction) and the next failure needs its own. */
    if (s < SMTP_CLIENT_CLOSING)
        c->step_failed = false;
    switch (s) {
    case SMTP_CLIENT_INIT:
    case SMTP_CLIENT_CLOSED:
        return;
    case SMTP_CLIENT_RESOLVE:
        /* Resolving is part of connecting, and bounded by its timeout. */
        smtp_client__arm(c, smtp_client__timeout(c, SETTINGS_F_TIMEOUT_CONNECT));
        return;
    case SMTP_CLIENT_CONNECT:
        c->attempt_timed_out = true;
        smtp_client__connect_next(c);
        return;
    case SMTP_CLIENT_TLS:
    case SMTP_CLIENT_STARTTLS_TLS:
        smtp_client__tls_start(c);
        return;
    case SMTP_CLIENT_GREETING:
        smtp_client__arm(c, smtp_client__timeout(c, SETTINGS_F_TIMEOUT_GREETING));
        return;
    case SMTP_CLIENT_EHLO:
        memset(&c->caps, 0, sizeof(c->caps));
        smtp_client__arm(c, smtp_client__timeout(c, SETTINGS_F_TIMEOUT_COMMAND));
        smtp_client__command(c, false, "EHLO %s", c->helo);
        return;
    case SMTP_CLIENT_HELO:
        smtp_client__arm(c, smtp_client__timeout(c, SETTINGS_F_TIMEOUT_COMMAND));
        smtp_client__command(c, false, "HELO %s", c->helo);
        return;
    case SMTP_CLIENT_STARTTLS:
        smtp_client__arm(c, smtp_client__timeout(c, SETTINGS_F_TIMEOUT_COMMAND));
        smtp_client__command(c, false, "STARTTLS");
        return;
    case SMTP_CLIENT_AUTH:
        smtp_client__arm(c, smtp_client__timeout(c, SETTINGS_F_TIMEOUT_COMMAND));
        smtp_client__auth_start(c);
        return;
    case SMTP_CLIENT_READY:
        ready_enter(c);
        return;
    case SMTP_CLIENT_IDLE:
        smtp_client__arm(c, c->idle_ms);
        return;
    case SMTP_CLIENT_RSET:
        smtp_client__arm(c, smtp_client__timeout(c, SETTINGS_F_TIMEOUT_COMMAND));
        smtp_client__command(c, false, "RSET");
        return;
    case SMTP_CLIENT_MAIL:
    case SMTP_CLIENT_RCPT:
    case SMTP_CLIENT_DATA:
    case SMTP_CLIENT_BODY:
    case SMTP_CLIENT_DOT:
        smtp_client__mail_enter(c);
        return;
    case SMTP_CLIENT_QUIT: {
        /* Every message is settled by now: a server slow to say goodbye
         * must not hold the session (and the sender's slot) for minutes. */
        uint64_t ms = smtp_client__timeout(c, SETTINGS_F_TIMEOUT_COMMAND);

        smtp_client__arm(c, ms < SMTP_CLIENT_QUIT_MS ? ms : SMTP_CLIENT_QUIT_MS);
        smtp_client__command(c, false, "QUIT");
        return;
    }
    case SMTP_CLIENT_CLOSING:
        closing_enter(c);
        return;
    }
    abort();
}

/* ---- the API ---- */

/* The EHLO name: given, or this host's name when it is a domain. */
static int pick_helo(const char *given, char *buf, size_t len)
{
    char why[128];

    if (given != NULL) {
        if (given[0] == '\0' || strlen(given) >= len || strpbrk(given, " <>") != NULL ||
            syntax_has_control(given))
            return ERROR_INVALID;
        snprintf(buf, len, "%s", given);
        return 0;
    }
    if (gethostname(buf, len) != 0 || memchr(buf, '\0', len) == NULL ||
        syntax_host_classify(buf, why, sizeof(why)) != SYNTAX_HOST_DNS)
        snprintf(buf, len, "localhost");
    return 0;
}

int smtp_client_start(uv_loop_t *loop, const struct smtp_client_params *params,
                      const struct smtp_client_callbacks *cb, void *ctx, struct smtp_client **out)
{
    const struct settings *s = params->settings;
    struct smtp_client *c;
    enum syntax_host kind;
    const char *host;
    char why[256];
    int rc;

    if (out != NULL)
        *out = NULL;
    if (s == NULL || cb == NULL || cb->on_next == NULL || cb->on_done == NULL ||
        cb->on_closed == NULL)
        return ERROR_INVALID;
    host = params->host != NULL ? params->host : s->hostname;
    kind = syntax_host_classify(host, why, sizeof(why));
    if (kind == SYNTAX_HOST_BAD)
        return ERROR_INVALID;
    if (s->smtps_enabled &&
        ((s->tls_mode != SETTINGS_TLS_STRICT && s->tls_mode != SETTINGS_TLS_STARTTLS) ||
         s->trust_certificate == NULL || s->trust_certificate[0] == '\0'))
        return ERROR_INVALID;
    /* The AUTH buffers are sized for the settings' limits. */
    if (s->logon_required &&
        (s->user_id[0] == '\0' || s->password == NULL ||
         strnlen(s->password, SETTINGS_PASSWORD_MAX + 1) > SETTINGS_PASSWORD_MAX))
        return ERROR_INVALID;
    c = calloc(1, sizeof(*c));
    if (c == NULL)
        return -ENOMEM;
    c->loop = loop;
    c->cb = *cb;
    c->ctx = ctx;
    settings_init(&c->settings);
    rc = pick_helo(params->helo, c->helo, sizeof(c->helo));
    if (rc < 0)
        goto free_client;
    rc = settings_copy(&c->settings, s);
    if (rc < 0)
        goto free_client;
    if (kind == SYNTAX_HOST_IPV6)
        syntax_ipv6_bare(host, c->host, sizeof(c->host));
    else
        snprintf(c->host, sizeof(c->host), "%s", host);
    c->port = params->port != 0 ? params->port : settings_port(s);
    rc = ERROR_INVALID;
    if (c->port == 0 || c->port > 65535)
        goto free_client;
    c->idle_ms = params->idle_ms;
    c->verbose_steps = params->verbose_steps;
    c->implicit_tls = s->smtps_enabled && s->tls_mode == SETTINGS_TLS_STRICT;
    c->want_starttls = s->smtps_enabled && s->tls_mode == SETTINGS_TLS_STARTTLS;
    if (s->smtps_enabled) {
        rc = tlsio_client_ctx(s->trust_certificate, strlen(s->trust_certificate), &c->ssl_ctx, why,
                              sizeof(why));
        if (rc < 0)
            goto free_client;
    }
    smtp_reply_init(&c->reply);
    rc = smtp_client__resolve(c);
    if (rc < 0)
        goto free_client;
    /* Cannot fail on a valid loop; after getaddrinfo so that nothing is
     * left to close when that fails. */
    uv_timer_init(loop, &c->timer);
    c->timer.data = c;
    c->step_start = uv_hrtime();
    smtp_client__set_state(c, SMTP_CLIENT_RESOLVE);
    if (out != NULL)
        *out = c;
    return 0;

free_client:
    client_free(c);
    return rc;
}

bool smtp_client_kick(struct smtp_client *c)
{
    if (c->state != SMTP_CLIENT_IDLE)
        return false;
    smtp_client__event(c, SMTP_CLIENT_EV_KICK);
    return true;
}

void smtp_client_cancel(struct smtp_client *c)
{
    smtp_client__event(c, SMTP_CLIENT_EV_CANCEL);
}
