/*
 * fake_smtp's SMTP side: the replies, scripted or default, to each command
 * of a connection, AUTH exchanges and DATA; fake_smtp.c does the I/O.
 */
#include "fake_smtp_internal.h"

#include <ctype.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "tlsio.h"

/* ---- base64 ---- */

static void fake_b64_encode(const void *data, size_t len, struct fake_buf *out)
{
    size_t n = 4 * ((len + 2) / 3) + 1;
    char *tmp = malloc(n);

    if (tmp == NULL)
        fake_smtp__oom();
    EVP_EncodeBlock((unsigned char *)tmp, data, (int)len);
    fake_smtp__buf_str(out, tmp);
    free(tmp);
}

static int fake_b64_value(char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

/* Strict base64 (padding required) into out; false if malformed. */
static bool fake_b64_decode(const char *s, struct fake_buf *out)
{
    size_t len = strlen(s);

    fake_smtp__buf_reset(out);
    if (len % 4 != 0)
        return false;
    for (size_t i = 0; i < len; i += 4) {
        int v[4];
        unsigned char o[3];
        int pad = 0;

        for (int k = 0; k < 4; k++) {
            if (s[i + k] == '=' && i + 4 == len && k >= 2) {
                v[k] = 0;
                pad++;
            } else if (pad > 0 || (v[k] = fake_b64_value(s[i + k])) < 0) {
                return false;
            }
        }
        o[0] = (unsigned char)(v[0] << 2 | v[1] >> 4);
        o[1] = (unsigned char)((v[1] & 0xf) << 4 | v[2] >> 2);
        o[2] = (unsigned char)((v[2] & 0x3) << 6 | v[3]);
        fake_smtp__buf_add(out, o, (size_t)(3 - pad));
    }
    return true;
}

/* ---- replies ---- */

/* What a script of NULL stands for: no reply, ever. */
static const char fake_silent[] = "(silent)";

/* The next scripted reply for `verb` (fake_silent for a NULL script), or
 * NULL for the default. */
static const char *fake_script_take(struct fake_smtp *s, const char *verb)
{
    for (struct fake_script *sc = s->scripts; sc != NULL; sc = sc->next) {
        if (strcasecmp(sc->verb, verb) != 0 || (!sc->forever && sc->count == 0))
            continue;
        if (!sc->forever)
            sc->count--;
        return sc->reply != NULL ? sc->reply : fake_silent;
    }
    return NULL;
}

/* The code of the last line of a reply; 0 if it has none. */
static int fake_reply_code(const char *r, size_t len)
{
    size_t start = 0;

    while (len > 0 && (r[len - 1] == '\n' || r[len - 1] == '\r'))
        len--;
    for (size_t i = 0; i < len; i++)
        if (r[i] == '\n')
            start = i + 1;
    if (len - start < 3 || !isdigit((unsigned char)r[start]) ||
        !isdigit((unsigned char)r[start + 1]) || !isdigit((unsigned char)r[start + 2]))
        return 0;
    return (r[start] - '0') * 100 + (r[start + 1] - '0') * 10 + (r[start + 2] - '0');
}

/*
 * Queues `scripted` if not NULL, else `dflt`, adding a missing final CRLF.
 * Returns the code of its last line (0 if that has none: garbage is sent
 * as scripted), or -1 if a script of "" ended the connection instead or
 * one of NULL made the server fall silent: the replies before are sent,
 * nothing more is read or answered until the client closes.
 */
static int fake_reply_with(struct fake_conn *c, const char *scripted, const char *dflt)
{
    const char *r = scripted != NULL ? scripted : dflt;
    size_t len = strlen(r);

    if (r == fake_silent) {
        fake_smtp__flush(c);
        c->ending = true;
        return -1;
    }
    if (len == 0) {
        fake_smtp__conn_end(c);
        return -1;
    }
    fake_smtp__buf_add(&c->out, r, len);
    if (r[len - 1] != '\n')
        fake_smtp__buf_str(&c->out, "\r\n");
    return fake_reply_code(r, len);
}

/* The scripted reply for `verb`, or `dflt`. */
static int fake_reply(struct fake_conn *c, const char *verb, const char *dflt)
{
    return fake_reply_with(c, fake_script_take(c->s, verb), dflt);
}

static bool fake_ok(int code)
{
    return code >= 200 && code < 400;
}

/* ---- the session ---- */

static void fake_transaction_reset(struct fake_conn *c)
{
    c->mail = false;
    c->nrcpt = 0;
    fake_smtp__buf_reset(&c->envelope);
    fake_smtp__buf_reset(&c->data);
}

static void fake_transcript_add(struct fake_smtp *s, const char *line)
{
    if (s->transcript.len > 0)
        fake_smtp__buf_str(&s->transcript, "\n");
    fake_smtp__buf_str(&s->transcript, line);
}

static bool fake_mech_offered(const struct fake_smtp *s, const char *mech)
{
    const char *p = s->p.auth;
    size_t n = strlen(mech);

    while (p != NULL && *p != '\0') {
        size_t w;

        while (*p == ' ')
            p++;
        w = strcspn(p, " ");
        if (w == n && w > 0 && strncasecmp(p, mech, n) == 0)
            return true;
        p += w;
    }
    return false;
}

/* The final reply of an AUTH exchange; "AUTH-RESULT" scripts it. */
static void fake_auth_result(struct fake_conn *c, bool ok)
{
    const char *r = fake_script_take(c->s, "AUTH-RESULT");
    int code;

    c->state = FAKE_COMMAND;
    code = fake_reply_with(c, r,
                           ok ? "235 2.7.0 Authentication successful"
                              : "535 5.7.8 Error: authentication failed");
    c->authed = r != NULL ? code == 235 : ok;
}

static bool fake_credentials_ok(const struct fake_smtp *s, const char *user, size_t ulen,
                                const char *pass, size_t plen)
{
    return s->p.user != NULL && s->p.password != NULL && ulen == strlen(s->p.user) &&
           memcmp(user, s->p.user, ulen) == 0 && plen == strlen(s->p.password) &&
           memcmp(pass, s->p.password, plen) == 0;
}

/* base64(authzid NUL authcid NUL password). */
static void fake_auth_plain(struct fake_conn *c, const char *arg)
{
    struct fake_buf raw = {0};
    bool ok = false;

    if (fake_b64_decode(arg, &raw) && raw.len > 0) {
        const char *end = raw.p + raw.len;
        const char *user = memchr(raw.p, '\0', raw.len);
        const char *pass = user != NULL ? memchr(user + 1, '\0', (size_t)(end - user - 1)) : NULL;

        if (pass != NULL && memchr(pass + 1, '\0', (size_t)(end - pass - 1)) == NULL)
            ok = fake_credentials_ok(c->s, user + 1, (size_t)(pass - user - 1), pass + 1,
                                     (size_t)(end - pass - 1));
    }
    fake_smtp__buf_wipe(&raw);
    fake_auth_result(c, ok);
}

static void fake_auth_login_user(struct fake_conn *c, const char *arg)
{
    struct fake_buf raw = {0};

    if (!fake_b64_decode(arg, &raw) || memchr(raw.p != NULL ? raw.p : "", '\0', raw.len) != NULL) {
        fake_smtp__buf_wipe(&raw);
        c->state = FAKE_COMMAND;
        fake_reply(c, "AUTH-RESULT", "501 5.5.2 Error: malformed base64");
        return;
    }
    fake_smtp__free_secret(c->login_user);
    c->login_user = fake_smtp__strdup(raw.len > 0 ? raw.p : "");
    fake_smtp__buf_wipe(&raw);
    c->state = FAKE_AUTH_LOGIN_PASS;
    fake_smtp__buf_str(&c->out, "334 UGFzc3dvcmQ6\r\n");
}

static void fake_auth_login_pass(struct fake_conn *c, const char *arg)
{
    struct fake_buf raw = {0};
    const char *user = c->login_user != NULL ? c->login_user : "";
    bool ok;

    ok = fake_b64_decode(arg, &raw) &&
         fake_credentials_ok(c->s, user, strlen(user), raw.len > 0 ? raw.p : "", raw.len);
    fake_smtp__buf_wipe(&raw);
    fake_auth_result(c, ok);
}

/* base64("user " hex(HMAC-MD5(password, challenge))). */
static void fake_auth_cram(struct fake_conn *c, const char *arg)
{
    struct fake_buf raw = {0};
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int maclen = 0;
    char hex[2 * EVP_MAX_MD_SIZE + 1];
    const char *pw = c->s->p.password;
    bool ok = false;

    if (fake_b64_decode(arg, &raw) && raw.len > 0 && pw != NULL) {
        char *sp = memrchr(raw.p, ' ', raw.len);

        if (sp != NULL && HMAC(EVP_md5(), pw, (int)strlen(pw), (const unsigned char *)c->challenge,
                               strlen(c->challenge), mac, &maclen) != NULL) {
            for (unsigned i = 0; i < maclen; i++)
                snprintf(hex + 2 * i, 3, "%02x", mac[i]);
            hex[2 * maclen] = '\0';
            ok = fake_credentials_ok(c->s, raw.p, (size_t)(sp - raw.p), pw, strlen(pw)) &&
                 raw.len - (size_t)(sp + 1 - raw.p) == 2 * maclen &&
                 memcmp(sp + 1, hex, 2 * maclen) == 0;
        }
        OPENSSL_cleanse(mac, sizeof(mac));
    }
    ERR_clear_error();
    fake_smtp__buf_wipe(&raw);
    fake_auth_result(c, ok);
}

/* The line after a 334: "*" cancels (RFC 4954). */
static void fake_auth_continue(struct fake_conn *c, const char *line)
{
    if (strcmp(line, "*") == 0) {
        c->state = FAKE_COMMAND;
        fake_reply(c, "AUTH-RESULT", "501 5.7.0 Authentication aborted");
        return;
    }
    switch (c->state) {
    case FAKE_AUTH_PLAIN:
        fake_auth_plain(c, line);
        return;
    case FAKE_AUTH_LOGIN_USER:
        fake_auth_login_user(c, line);
        return;
    case FAKE_AUTH_LOGIN_PASS:
        fake_auth_login_pass(c, line);
        return;
    case FAKE_AUTH_CRAM:
        fake_auth_cram(c, line);
        return;
    case FAKE_COMMAND:
    case FAKE_DATA:
        break;
    }
    abort();
}

static void fake_cmd_auth(struct fake_conn *c, const char *arg)
{
    const char *scripted = fake_script_take(c->s, "AUTH");
    char mech[FAKE_SMTP_VERB_MAX + 1];
    const char *initial;
    size_t n = strcspn(arg, " ");
    bool plain, login, cram;

    if (n > FAKE_SMTP_VERB_MAX)
        n = FAKE_SMTP_VERB_MAX;
    memcpy(mech, arg, n);
    mech[n] = '\0';
    initial = arg[n] == ' ' ? arg + n + 1 : NULL;
    plain = strcasecmp(mech, "PLAIN") == 0;
    login = strcasecmp(mech, "LOGIN") == 0;
    cram = strcasecmp(mech, "CRAM-MD5") == 0;
    if (cram)
        snprintf(c->challenge, sizeof(c->challenge), "<%u.%ld@" FAKE_SMTP_NAME ">", ++c->s->serial,
                 (long)getpid());
    if (scripted != NULL) {
        int code = fake_reply_with(c, scripted, "");

        c->authed = code == 235;
        if (code == 334)
            c->state = plain                      ? FAKE_AUTH_PLAIN
                       : cram                     ? FAKE_AUTH_CRAM
                       : login && initial != NULL ? FAKE_AUTH_LOGIN_PASS
                                                  : FAKE_AUTH_LOGIN_USER;
        return;
    }
    if (c->s->p.auth == NULL) {
        fake_reply_with(c, NULL, "503 5.5.1 Error: authentication not enabled");
    } else if (c->authed) {
        fake_reply_with(c, NULL, "503 5.5.1 Error: already authenticated");
    } else if (!c->helo) {
        fake_reply_with(c, NULL, "503 5.5.1 Error: send HELO/EHLO first");
    } else if (n == 0 || !fake_mech_offered(c->s, mech) || !(plain || login || cram)) {
        fake_reply_with(c, NULL, "504 5.5.4 Unsupported authentication mechanism");
    } else if (plain && initial != NULL) {
        fake_auth_plain(c, strcmp(initial, "=") == 0 ? "" : initial);
    } else if (plain) {
        c->state = FAKE_AUTH_PLAIN;
        fake_smtp__buf_str(&c->out, "334 \r\n");
    } else if (login && initial != NULL) {
        fake_auth_login_user(c, initial);
    } else if (login) {
        c->state = FAKE_AUTH_LOGIN_USER;
        fake_smtp__buf_str(&c->out, "334 VXNlcm5hbWU6\r\n");
    } else {
        c->state = FAKE_AUTH_CRAM;
        fake_smtp__buf_str(&c->out, "334 ");
        fake_b64_encode(c->challenge, strlen(c->challenge), &c->out);
        fake_smtp__buf_str(&c->out, "\r\n");
    }
}

static void fake_cmd_ehlo(struct fake_conn *c, const char *arg)
{
    const struct fake_smtp_params *p = &c->s->p;
    const char *scripted = fake_script_take(c->s, "EHLO");
    struct fake_buf r = {0};
    char line[128];
    const char *caps[8];
    size_t ncaps = 0;

    if (scripted == NULL && *arg == '\0') {
        fake_reply_with(c, NULL, "501 5.5.4 Syntax: EHLO hostname");
        return;
    }
    if (p->pipelining)
        caps[ncaps++] = "PIPELINING";
    if (p->size_limit > 0) {
        snprintf(line, sizeof(line), "SIZE %" PRIu64, p->size_limit);
        caps[ncaps++] = line;
    }
    caps[ncaps++] = "8BITMIME";
    if (p->smtputf8)
        caps[ncaps++] = "SMTPUTF8";
    if (p->starttls && c->tls == NULL)
        caps[ncaps++] = "STARTTLS";
    caps[ncaps++] = "ENHANCEDSTATUSCODES";
    fake_smtp__buf_str(&r, "250-" FAKE_SMTP_NAME);
    if (p->auth != NULL) {
        fake_smtp__buf_str(&r, "\r\n250-AUTH ");
        fake_smtp__buf_str(&r, p->auth);
    }
    for (size_t i = 0; i < ncaps; i++) {
        fake_smtp__buf_str(&r, i + 1 == ncaps ? "\r\n250 " : "\r\n250-");
        fake_smtp__buf_str(&r, caps[i]);
    }
    if (fake_ok(fake_reply_with(c, scripted, r.p))) {
        c->helo = true;
        fake_transaction_reset(c);
    }
    fake_smtp__buf_wipe(&r);
}

/*
 * The path of "MAIL FROM:<path> params" after the colon: *path points into
 * arg and *plen is its length; *params the rest. False on bad syntax.
 */
static bool fake_parse_path(const char *arg, const char *prefix, const char **path, size_t *plen,
                            const char **params)
{
    size_t n = strlen(prefix);
    const char *p, *end;

    if (strncasecmp(arg, prefix, n) != 0)
        return false;
    p = arg + n;
    while (*p == ' ')
        p++;
    if (*p != '<' || (end = strchr(p, '>')) == NULL)
        return false;
    *path = p + 1;
    *plen = (size_t)(end - p - 1);
    *params = end + 1;
    return **params == '\0' || **params == ' ';
}

/* SIZE=n among the MAIL parameters, 0 if absent. */
static uint64_t fake_param_size(const char *params)
{
    const char *p = strcasestr(params, " SIZE=");

    return p != NULL ? strtoull(p + 6, NULL, 10) : 0;
}

static void fake_cmd_mail(struct fake_conn *c, const char *arg)
{
    const char *scripted = fake_script_take(c->s, "MAIL");
    const char *path, *params;
    size_t plen;
    bool syntax = fake_parse_path(arg, "FROM:", &path, &plen, &params);
    const char *dflt = "250 2.1.0 Ok";

    if (!c->helo)
        dflt = "503 5.5.1 Error: send HELO/EHLO first";
    else if (c->mail)
        dflt = "503 5.5.1 Error: nested MAIL command";
    else if (!syntax)
        dflt = "501 5.5.4 Syntax: MAIL FROM:<address>";
    else if (c->s->p.size_limit > 0 && fake_param_size(params) > c->s->p.size_limit)
        dflt = "552 5.3.4 Message size exceeds fixed limit";
    if (fake_ok(fake_reply_with(c, scripted, dflt)) && syntax) {
        fake_transaction_reset(c);
        c->mail = true;
        fake_smtp__buf_add(&c->envelope, path, plen);
    }
}

static void fake_cmd_rcpt(struct fake_conn *c, const char *arg)
{
    const char *scripted = fake_script_take(c->s, "RCPT");
    const char *path, *params;
    size_t plen;
    bool syntax = fake_parse_path(arg, "TO:", &path, &plen, &params);
    const char *dflt = "250 2.1.5 Ok";

    if (!c->mail)
        dflt = "503 5.5.1 Error: need MAIL command";
    else if (!syntax || plen == 0)
        dflt = "501 5.5.4 Syntax: RCPT TO:<address>";
    if (fake_ok(fake_reply_with(c, scripted, dflt)) && syntax && c->mail) {
        c->nrcpt++;
        fake_smtp__buf_str(&c->envelope, " ");
        fake_smtp__buf_add(&c->envelope, path, plen);
    }
}

static void fake_cmd_data(struct fake_conn *c)
{
    const char *scripted = fake_script_take(c->s, "DATA");
    const char *dflt = "354 End data with <CR><LF>.<CR><LF>";
    int code;

    if (!c->mail)
        dflt = "503 5.5.1 Error: need RCPT command";
    else if (c->nrcpt == 0)
        dflt = "554 5.5.1 Error: no valid recipients";
    code = fake_reply_with(c, scripted, dflt);
    if (code >= 300 && code < 400) {
        c->state = FAKE_DATA;
        fake_smtp__buf_reset(&c->data);
    }
}

static void fake_message_add(struct fake_smtp *s, const struct fake_conn *c)
{
    struct fake_message *m;

    if (s->nmsgs == s->capmsgs) {
        size_t cap = s->capmsgs == 0 ? 8 : 2 * s->capmsgs;
        struct fake_message *v = realloc(s->msgs, cap * sizeof(*v));

        if (v == NULL)
            fake_smtp__oom();
        s->msgs = v;
        s->capmsgs = cap;
    }
    m = &s->msgs[s->nmsgs++];
    m->len = c->data.len;
    m->data = malloc(c->data.len + 1);
    if (m->data == NULL)
        fake_smtp__oom();
    if (c->data.len > 0)
        memcpy(m->data, c->data.p, c->data.len);
    m->data[c->data.len] = '\0';
    m->envelope = fake_smtp__strdup(c->envelope.p != NULL ? c->envelope.p : "");
}

/* One line of DATA, line ending included. */
static void fake_data_line(struct fake_conn *c, const char *line, size_t len)
{
    char dflt[64];
    int code;

    if ((len == 3 && memcmp(line, ".\r\n", 3) == 0) || (len == 2 && memcmp(line, ".\n", 2) == 0)) {
        c->state = FAKE_COMMAND;
        if (c->s->p.size_limit > 0 && c->data.len > c->s->p.size_limit)
            snprintf(dflt, sizeof(dflt), "552 5.3.4 Message size exceeds fixed limit");
        else
            snprintf(dflt, sizeof(dflt), "250 2.0.0 Ok: queued as FAKE%zu", c->s->nmsgs + 1);
        code = fake_reply(c, "DATA-END", dflt);
        if (code >= 200 && code < 300)
            fake_message_add(c->s, c);
        fake_transaction_reset(c);
        return;
    }
    if (line[0] == '.') { /* RFC 5321 §4.5.2 transparency */
        line++;
        len--;
    }
    fake_smtp__buf_add(&c->data, line, len);
}

static void fake_cmd_starttls(struct fake_conn *c)
{
    struct fake_smtp *s = c->s;
    const char *scripted = fake_script_take(s, "STARTTLS");
    const char *dflt = "220 2.0.0 Ready to start TLS";
    int rc;

    if (c->tls != NULL)
        dflt = "554 5.5.1 Error: TLS already active";
    else if (!s->p.starttls || s->ctx == NULL)
        dflt = "502 5.5.1 Error: command not implemented";
    /* The first line decides: a scripted "220 ...\r\n250 injected" starts TLS. */
    if (fake_reply_with(c, scripted, dflt) < 0 ||
        strncmp(scripted != NULL ? scripted : dflt, "220", 3) != 0 || c->tls != NULL ||
        s->ctx == NULL)
        return;
    /* The 220 and anything scripted after it go out in clear, in one write;
     * what the client sent after STARTTLS is dropped, as Postfix does
     * (CVE-2011-0411). */
    fake_smtp__flush(c);
    c->in_off = c->in.len;
    rc = tlsio_new(s->ctx, true, NULL, &c->tls);
    if (rc < 0) {
        fake_smtp__conn_close(c);
        return;
    }
    c->helo = false;
    c->authed = false;
    fake_transaction_reset(c);
}

static void fake_command(struct fake_conn *c, const char *line)
{
    char verb[FAKE_SMTP_VERB_MAX + 1];
    size_t n = strcspn(line, " ");
    const char *arg = line[n] == ' ' ? line + n + 1 : line + n;

    if (n > FAKE_SMTP_VERB_MAX)
        n = FAKE_SMTP_VERB_MAX;
    for (size_t i = 0; i < n; i++)
        verb[i] = (char)toupper((unsigned char)line[i]);
    verb[n] = '\0';
    if (strcmp(verb, "EHLO") == 0) {
        fake_cmd_ehlo(c, arg);
    } else if (strcmp(verb, "HELO") == 0) {
        if (fake_ok(fake_reply(c, "HELO",
                               *arg != '\0' ? "250 " FAKE_SMTP_NAME
                                            : "501 5.5.4 Syntax: HELO hostname"))) {
            c->helo = true;
            fake_transaction_reset(c);
        }
    } else if (strcmp(verb, "STARTTLS") == 0) {
        fake_cmd_starttls(c);
    } else if (strcmp(verb, "AUTH") == 0) {
        fake_cmd_auth(c, arg);
    } else if (strcmp(verb, "MAIL") == 0) {
        fake_cmd_mail(c, arg);
    } else if (strcmp(verb, "RCPT") == 0) {
        fake_cmd_rcpt(c, arg);
    } else if (strcmp(verb, "DATA") == 0) {
        fake_cmd_data(c);
    } else if (strcmp(verb, "RSET") == 0) {
        if (fake_ok(fake_reply(c, "RSET", "250 2.0.0 Ok")))
            fake_transaction_reset(c);
    } else if (strcmp(verb, "NOOP") == 0) {
        fake_reply(c, "NOOP", "250 2.0.0 Ok");
    } else if (strcmp(verb, "QUIT") == 0) {
        fake_reply(c, "QUIT", "221 2.0.0 Bye");
        fake_smtp__conn_end(c);
    } else if (n == 0) {
        fake_reply(c, "", "500 5.5.2 Error: bad syntax");
    } else {
        fake_reply(c, verb, "502 5.5.2 Error: command not recognized");
    }
}

/* One line (LF included) outside of TLS handshakes. */
static void fake_line(struct fake_conn *c, const char *line, size_t len)
{
    char *cmd;
    size_t n = len;

    if (c->state == FAKE_DATA) {
        fake_data_line(c, line, len);
        return;
    }
    while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
        n--;
    cmd = malloc(n + 1);
    if (cmd == NULL)
        fake_smtp__oom();
    memcpy(cmd, line, n);
    cmd[n] = '\0';
    fake_transcript_add(c->s, cmd);
    if (c->state == FAKE_COMMAND)
        fake_command(c, cmd);
    else
        fake_auth_continue(c, cmd);
    OPENSSL_cleanse(cmd, n);
    free(cmd);
}

/* Handles every complete line received, in order, as long as the session
 * is in a state to read commands; then sends the replies in one write, as
 * a server that supports PIPELINING may. */
void fake_smtp__process(struct fake_conn *c)
{
    while (!c->ending && c->greeted && (c->tls == NULL || c->tls_up)) {
        const char *start, *nl;
        size_t len;

        if (c->in_off == c->in.len)
            break;
        start = c->in.p + c->in_off;
        nl = memchr(start, '\n', c->in.len - c->in_off);
        if (nl == NULL)
            break;
        len = (size_t)(nl - start) + 1;
        c->in_off += len;
        fake_line(c, start, len);
    }
    if (c->in_off == c->in.len) {
        fake_smtp__buf_reset(&c->in);
        c->in_off = 0;
    } else if (c->in_off > 0) {
        memmove(c->in.p, c->in.p + c->in_off, c->in.len - c->in_off);
        c->in.len -= c->in_off;
        c->in.p[c->in.len] = '\0';
        c->in_off = 0;
    }
    fake_smtp__flush(c);
}

void fake_smtp__greet(struct fake_conn *c)
{
    char banner[128];

    if (c->greeted || c->ending || !c->delay_done || (c->tls != NULL && !c->tls_up))
        return;
    c->greeted = true;
    snprintf(banner, sizeof(banner), "220 %s ESMTP fake_smtp", FAKE_SMTP_NAME);
    if (fake_reply(c, "GREETING", banner) < 0)
        return;
    fake_smtp__process(c);
}
