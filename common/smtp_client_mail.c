/*
 * smtp_client_mail: the mail transaction of the SMTP client: MAIL, RCPT,
 * DATA (RFC 5321 §3.3), pipelined when the server offers PIPELINING (RFC
 * 2920: MAIL, every RCPT and DATA in one write, the replies read in
 * order), SIZE (RFC 1870), 8BITMIME (RFC 6152), SMTPUTF8 (RFC 6531), and
 * the message written in bounded, dot-stuffed chunks. See smtp_client.h.
 */
#include "internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

/* An address is sent between < and >: nothing may end the path or the
 * command early, and it fits a path (RFC 5321 §4.5.3.1.3) and the command
 * buffers below. */
static bool address_ok(const char *a)
{
    return a != NULL && strnlen(a, SETTINGS_ADDRESS_MAX + 1) <= SETTINGS_ADDRESS_MAX &&
           strpbrk(a, "<>") == NULL && !syntax_has_control(a);
}

void smtp_client__mail_done(struct smtp_client *c)
{
    const struct smtp_client_msg *msg = c->msg;

    c->result.naccepted = c->naccepted;
    /* Only once a RCPT reply is matched to its recipient (rcpt_next counts
     * them): a session that failed at MAIL, pipelined or not, has none. */
    c->result.rcpts = c->rcpt_next > 0 ? c->rcpts : NULL;
    /* The server's words go out: never with the password in them. */
    smtp_client_redact(&c->settings, c->result.reason, sizeof(c->result.reason));
    for (size_t i = 0; i < c->rcpt_next && c->rcpts != NULL; i++)
        smtp_client_redact(&c->settings, c->rcpts[i].text, sizeof(c->rcpts[i].text));
    /* Cleared first: a cancel from on_done finds no message held. */
    c->msg = NULL;
    c->cb.on_done(c->ctx, msg, &c->result);
    free(c->rcpts);
    c->rcpts = NULL;
    c->naccepted = 0;
    memset(&c->result, 0, sizeof(c->result));
}

/* The message cannot be sent as it is: on_done, nothing was sent. */
static bool refuse(struct smtp_client *c, enum smtp_fail f, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static bool refuse(struct smtp_client *c, enum smtp_fail f, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(c->result.reason, sizeof(c->result.reason), fmt, ap);
    va_end(ap);
    c->result.fail = f;
    /* Nothing was sent: the MAIL step fails without a reply. */
    if (c->verbose_steps)
        smtp_client__step(c, SMTP_STEP_MAIL, false, f, c->result.reason, NULL);
    if (c->msg != NULL)
        smtp_client__mail_done(c);
    return false;
}

bool smtp_client__mail_start(struct smtp_client *c)
{
    const struct smtp_client_msg *m = c->msg;
    unsigned long long size = (unsigned long long)m->header_prefix_len + m->data_len;
    char q[SETTINGS_ADDRESS_MAX * 4 + 4];

    memset(&c->result, 0, sizeof(c->result));
    c->naccepted = 0;
    c->rcpt_next = 0;
    c->mail_ok = false;
    c->discard = false;
    c->fail_code = 0;
    c->fail_reason[0] = '\0';
    c->body_off = 0;
    c->body_done = false;
    memset(&c->dotstuff, 0, sizeof(c->dotstuff));
    if (m->nrcpts == 0)
        return refuse(c, SMTP_FAIL_SETTINGS, "the message has no recipient");
    if (!address_ok(m->mail_from))
        return refuse(c, SMTP_FAIL_SETTINGS, "sender address <%s> cannot be sent",
                      smtp_client__quote(q, sizeof(q), m->mail_from != NULL ? m->mail_from : ""));
    for (size_t i = 0; i < m->nrcpts; i++)
        if (!address_ok(m->rcpts[i]))
            return refuse(c, SMTP_FAIL_SETTINGS, "recipient address <%s> cannot be sent",
                          smtp_client__quote(q, sizeof(q), m->rcpts[i] ? m->rcpts[i] : ""));
    if (c->caps.size && c->caps.size_max > 0 && size > c->caps.size_max)
        return refuse(c, SMTP_FAIL_TOO_BIG,
                      "message of %llu octets is larger than %s accepts (SIZE %llu)", size, c->host,
                      (unsigned long long)c->caps.size_max);
    if (m->eight_bit && !c->caps.eight_bit)
        return refuse(c, SMTP_FAIL_REPLY_5XX,
                      "the message has 8-bit content but %s does not offer 8BITMIME", c->host);
    if (m->smtputf8 && !c->caps.smtputf8)
        return refuse(c, SMTP_FAIL_REPLY_5XX,
                      "an address is not ASCII but %s does not offer SMTPUTF8", c->host);
    c->rcpts = calloc(m->nrcpts, sizeof(*c->rcpts));
    if (c->rcpts == NULL)
        return refuse(c, SMTP_FAIL_INTERNAL, "out of memory");
    c->pipelined = c->caps.pipelining;
    smtp_client__set_state(c, SMTP_CLIENT_MAIL);
    return true;
}

/* "MAIL FROM:<a> SIZE=n BODY=8BITMIME SMTPUTF8" into buf. */
static size_t mail_command(const struct smtp_client *c, char *buf, size_t len)
{
    const struct smtp_client_msg *m = c->msg;
    int n = snprintf(buf, len, "MAIL FROM:<%s>", m->mail_from);

    if (c->caps.size)
        n += snprintf(buf + n, len - (size_t)n, " SIZE=%llu",
                      (unsigned long long)m->header_prefix_len + m->data_len);
    if (m->eight_bit && c->caps.eight_bit)
        n += snprintf(buf + n, len - (size_t)n, " BODY=8BITMIME");
    if (m->smtputf8 && c->caps.smtputf8)
        n += snprintf(buf + n, len - (size_t)n, " SMTPUTF8");
    return (size_t)n;
}

/* MAIL, every RCPT and DATA in one write (RFC 2920 §3.1). */
static void send_pipelined(struct smtp_client *c)
{
    const struct smtp_client_msg *m = c->msg;
    char mail[SETTINGS_ADDRESS_MAX * 4 + 128];
    size_t cap = sizeof(mail) + 8, n;
    char *buf;

    for (size_t i = 0; i < m->nrcpts; i++)
        cap += strlen(m->rcpts[i]) + 14;
    buf = malloc(cap);
    if (buf == NULL) {
        smtp_client__finish(c, SMTP_FAIL_INTERNAL, "out of memory");
        return;
    }
    n = mail_command(c, buf, cap);
    log_debug("smtp %s >>> %s", c->peer, buf);
    memcpy(buf + n, "\r\n", 2);
    n += 2;
    for (size_t i = 0; i < m->nrcpts; i++) {
        log_debug("smtp %s >>> RCPT TO:<%s>", c->peer, m->rcpts[i]);
        n += (size_t)snprintf(buf + n, cap - n, "RCPT TO:<%s>\r\n", m->rcpts[i]);
    }
    log_debug("smtp %s >>> DATA", c->peer);
    n += (size_t)snprintf(buf + n, cap - n, "DATA\r\n");
    smtp_client__send(c, buf, n, false);
    free(buf);
}

void smtp_client__mail_enter(struct smtp_client *c)
{
    char cmd[SETTINGS_ADDRESS_MAX * 4 + 128];

    switch (c->state) {
    case SMTP_CLIENT_MAIL:
        smtp_client__arm(c, smtp_client__timeout(c, SETTINGS_F_TIMEOUT_MAIL));
        if (c->pipelined) {
            send_pipelined(c);
        } else {
            mail_command(c, cmd, sizeof(cmd));
            smtp_client__command(c, false, "%s", cmd);
        }
        return;
    case SMTP_CLIENT_RCPT:
        smtp_client__arm(c, smtp_client__timeout(c, SETTINGS_F_TIMEOUT_RCPT));
        if (!c->pipelined)
            smtp_client__command(c, false, "RCPT TO:<%s>", c->msg->rcpts[c->rcpt_next]);
        return;
    case SMTP_CLIENT_DATA:
        smtp_client__arm(c, smtp_client__timeout(c, SETTINGS_F_TIMEOUT_DATA_INIT));
        if (!c->pipelined)
            smtp_client__command(c, false, "DATA");
        return;
    case SMTP_CLIENT_BODY:
        smtp_client__arm(c, smtp_client__timeout(c, SETTINGS_F_TIMEOUT_DATA_BLOCK));
        smtp_client__body_pump(c);
        return;
    case SMTP_CLIENT_DOT:
        smtp_client__arm(c, smtp_client__timeout(c, SETTINGS_F_TIMEOUT_DATA_TERM));
        /* A 354 although nothing can be delivered: end the empty DATA. */
        if (c->discard)
            smtp_client__send(c, ".\r\n", 3, false);
        return;
    default:
        abort();
    }
}

void smtp_client__body_pump(struct smtp_client *c)
{
    const struct smtp_client_msg *m = c->msg;
    size_t total = m->header_prefix_len + m->data_len;

    while (c->state == SMTP_CLIENT_BODY && !c->body_done && c->inflight < SMTP_CLIENT__INFLIGHT) {
        size_t in = total - c->body_off, n = 0;

        if (in > SMTP_CLIENT__BODY_CHUNK)
            in = SMTP_CLIENT__BODY_CHUNK;
        /* The header prefix, then the message, through one dot-stuffer. */
        if (c->body_off < m->header_prefix_len) {
            size_t k = m->header_prefix_len - c->body_off;

            if (k > in)
                k = in;
            n += smtp_message_dotstuff(&c->dotstuff, m->header_prefix + c->body_off, k,
                                       c->scratch + n);
            c->body_off += k;
            in -= k;
        }
        if (in > 0) {
            n += smtp_message_dotstuff(&c->dotstuff, m->data + (c->body_off - m->header_prefix_len),
                                       in, c->scratch + n);
            c->body_off += in;
        }
        if (c->body_off == total) {
            n += smtp_message_dotstuff_end(&c->dotstuff, c->scratch + n);
            c->body_done = true;
        }
        if (smtp_client__send(c, c->scratch, n, false) < 0)
            return;
    }
    if (c->body_done && c->state == SMTP_CLIENT_BODY)
        smtp_client__set_state(c, SMTP_CLIENT_DOT);
}

/* The transaction failed on the server: report it, RSET before the next. */
static void transaction_failed(struct smtp_client *c)
{
    c->result.fail = c->fail_code != 0 ? smtp_client__fail_of(c->fail_code) : SMTP_FAIL_PROTOCOL;
    c->result.code = c->fail_code;
    snprintf(c->result.reason, sizeof(c->result.reason), "%s", c->fail_reason);
    c->need_rset = true;
    smtp_client__mail_done(c);
    smtp_client__set_state(c, SMTP_CLIENT_READY);
}

/* Remembers the reply that fails the transaction. */
static void fail_with(struct smtp_client *c, const char *what)
{
    c->fail_code = c->reply.code;
    smtp_client__reason(c, c->fail_reason, sizeof(c->fail_reason), what);
}

static void verbose_step(struct smtp_client *c, enum smtp_client_step_kind kind, bool ok,
                         const char *detail)
{
    if (c->verbose_steps)
        smtp_client__step(c, kind, ok, smtp_client__fail_of(c->reply.code), detail, c->reply.text);
}

static void mail_reply(struct smtp_client *c)
{
    char what[SMTP_CLIENT_REASON_MAX];
    bool ok = c->reply.code / 100 == 2;

    smtp_client__what(c, what, sizeof(what));
    verbose_step(c, SMTP_STEP_MAIL, ok, what);
    if (c->state != SMTP_CLIENT_MAIL)
        return;
    c->mail_ok = ok;
    if (!ok) {
        fail_with(c, what);
        /* Pipelined, the replies to RCPT and DATA are on their way. */
        if (!c->pipelined) {
            transaction_failed(c);
            return;
        }
    }
    smtp_client__set_state(c, SMTP_CLIENT_RCPT);
}

static void rcpt_reply(struct smtp_client *c)
{
    struct smtp_client_rcpt_result *res = &c->rcpts[c->rcpt_next];
    char what[SMTP_CLIENT_REASON_MAX];
    int code = c->reply.code;
    bool ok = code / 100 == 2;

    res->code = code;
    smtp_reply_summary(&c->reply, res->text, sizeof(res->text));
    smtp_client__what(c, what, sizeof(what));
    /* After a refused pipelined MAIL, the server refuses every RCPT for
     * want of a sender: the MAIL step said why already. */
    if (c->mail_ok) {
        verbose_step(c, SMTP_STEP_RCPT, ok, what);
        if (c->state != SMTP_CLIENT_RCPT)
            return;
    }
    if (ok)
        c->naccepted++;
    else if (c->mail_ok && (c->fail_code == 0 || (code / 100 == 4 && c->fail_code / 100 == 5)))
        fail_with(c, what); /* the first refusal, a temporary one rather */
    if (++c->rcpt_next < c->msg->nrcpts) {
        smtp_client__set_state(c, SMTP_CLIENT_RCPT);
        return;
    }
    if (!c->pipelined && c->naccepted == 0) {
        transaction_failed(c);
        return;
    }
    smtp_client__set_state(c, SMTP_CLIENT_DATA);
}

static void data_reply(struct smtp_client *c)
{
    bool usable = c->mail_ok && c->naccepted > 0;

    if (c->reply.code / 100 == 3) {
        if (!usable) {
            c->discard = true;
            smtp_client__set_state(c, SMTP_CLIENT_DOT);
            return;
        }
        smtp_client__set_state(c, SMTP_CLIENT_BODY);
        return;
    }
    if (usable) {
        fail_with(c, "DATA");
        verbose_step(c, SMTP_STEP_DATA, false, "DATA");
        if (c->state != SMTP_CLIENT_DATA)
            return;
    }
    transaction_failed(c);
}

static void dot_reply(struct smtp_client *c)
{
    char detail[64];
    bool ok = c->reply.code / 100 == 2;

    if (c->discard) {
        transaction_failed(c);
        return;
    }
    snprintf(detail, sizeof(detail), "%zu octets", c->msg->header_prefix_len + c->msg->data_len);
    verbose_step(c, SMTP_STEP_DATA, ok, detail);
    if (c->state != SMTP_CLIENT_DOT)
        return;
    if (!ok) {
        fail_with(c, "end of DATA");
        transaction_failed(c);
        return;
    }
    c->result.fail = SMTP_FAIL_NONE;
    c->result.code = c->reply.code;
    smtp_reply_summary(&c->reply, c->result.reason, sizeof(c->result.reason));
    smtp_client__mail_done(c);
    smtp_client__set_state(c, SMTP_CLIENT_READY);
}

void smtp_client__mail_reply(struct smtp_client *c)
{
    char reason[SMTP_CLIENT_REASON_MAX];

    switch (c->state) {
    case SMTP_CLIENT_MAIL:
        mail_reply(c);
        return;
    case SMTP_CLIENT_RCPT:
        rcpt_reply(c);
        return;
    case SMTP_CLIENT_DATA:
        data_reply(c);
        return;
    case SMTP_CLIENT_BODY:
        /* A reply before the end of the message: the server gave up on
         * it, and the session is out of step. */
        smtp_client__reason(c, reason, sizeof(reason), "DATA (before the end of the message)");
        c->result.code = c->reply.code;
        smtp_client__finish(
            c, c->reply.code >= 400 ? smtp_client__fail_of(c->reply.code) : SMTP_FAIL_PROTOCOL,
            "%s", reason);
        return;
    case SMTP_CLIENT_DOT:
        dot_reply(c);
        return;
    default:
        abort();
    }
}
