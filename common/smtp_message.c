/*
 * smtp_message: compose (`smtpsyncctl send`), the Date and Message-ID
 * headers, the From header for delivery and dot-stuffing, plus what
 * smtp_message_parse.c shares with them (declared in internal.h): the
 * growable buffer and the text helpers both halves use.
 *
 * The header scanner, the address-list parser, parse() and normalize() are
 * in smtp_message_parse.c.
 */
#include "smtp_message.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/rand.h>

#include "error.h"
#include "internal.h"
#include "syntax.h"
#include "utf8.h"

#define LINE_FOLD   76 /* fold composed header lines at this many columns */
#define EW_OVERHEAD 12 /* "=?UTF-8?Q?" and "?=" around an encoded-word */

/* --- growable output buffer ----------------------------------------------- */

static int buf_reserve(struct smtp_message__buf *b, size_t more)
{
    size_t cap = b->cap > 0 ? b->cap : 1024;
    char *p;

    if (more > SIZE_MAX / 2 - b->len)
        return -ENOMEM;
    if (b->len + more <= b->cap)
        return 0;
    while (cap < b->len + more)
        cap *= 2;
    p = realloc(b->p, cap);
    if (p == NULL)
        return -ENOMEM;
    b->p = p;
    b->cap = cap;
    return 0;
}

int smtp_message__buf_add(struct smtp_message__buf *b, const void *data, size_t n)
{
    int rc = buf_reserve(b, n);

    if (rc != 0)
        return rc;
    if (n > 0)
        memcpy(b->p + b->len, data, n);
    b->len += n;
    return 0;
}

static int buf_str(struct smtp_message__buf *b, const char *s)
{
    return smtp_message__buf_add(b, s, strlen(s));
}

static int buf_char(struct smtp_message__buf *b, char c)
{
    return smtp_message__buf_add(b, &c, 1);
}

int smtp_message__buf_terminate(struct smtp_message__buf *b)
{
    int rc = buf_reserve(b, 1);

    if (rc == 0)
        b->p[b->len] = '\0';
    return rc;
}

/* --- text helpers --------------------------------------------------------- */

const char *smtp_message__safe_text(const char *s, size_t n, char *out, size_t outlen)
{
    size_t o = 0;

    for (size_t i = 0; i < n && o + 4 < outlen; i++) {
        unsigned char c = (unsigned char)s[i];

        if (o >= 64) {
            memcpy(out + o, "...", 3);
            o += 3;
            break;
        }
        out[o++] = (c >= 0x20 && c < 0x7f) ? (char)c : '?';
    }
    out[o] = '\0';
    return out;
}

bool smtp_message__dot_atom(const char *s, size_t n)
{
    if (n == 0 || s[0] == '.' || s[n - 1] == '.')
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];

        if (c == '.' ? s[i + 1] == '.' : !syntax_atext(c))
            return false;
    }
    return true;
}

/* --- Date and Message-ID ---------------------------------------------------- */

int smtp_message__add_date(struct smtp_message__buf *b, time_t t, char *why, size_t whylen)
{
    static const char days[7][4] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
    static const char months[12][4] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                       "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    char line[64];
    struct tm tm;

    if (gmtime_r(&t, &tm) == NULL || tm.tm_year > 9999 - 1900 || tm.tm_year < 0) {
        snprintf(why, whylen, "the date cannot be written as a Date header");
        return ERROR_INVALID;
    }
    snprintf(line, sizeof(line), "Date: %s, %02d %s %04d %02d:%02d:%02d +0000\r\n",
             days[tm.tm_wday], tm.tm_mday, months[tm.tm_mon], tm.tm_year + 1900, tm.tm_hour,
             tm.tm_min, tm.tm_sec);
    return buf_str(b, line);
}

/* RFC 5322 no-fold-literal: "[" dtext "]", as in an address literal. */
static bool no_fold_literal(const char *d)
{
    size_t n = strlen(d);

    if (n < 3 || d[0] != '[' || d[n - 1] != ']')
        return false;
    for (size_t i = 1; i + 1 < n; i++)
        if (d[i] < 33 || d[i] > 126 || d[i] == '[' || d[i] == ']' || d[i] == '\\')
            return false;
    return true;
}

int smtp_message__add_message_id(struct smtp_message__buf *b, const char *domain, char *why,
                                 size_t whylen)
{
    unsigned char rnd[16];
    char hex[sizeof(rnd) * 2 + 1];
    int rc;

    if (domain == NULL || strlen(domain) > SYNTAX_HOSTNAME_MAX ||
        !(smtp_message__dot_atom(domain, strlen(domain)) || no_fold_literal(domain))) {
        snprintf(why, whylen, "the Message-ID domain is not a valid domain");
        return ERROR_INVALID;
    }
    if (RAND_bytes(rnd, sizeof(rnd)) != 1) {
        snprintf(why, whylen, "no random octets for the Message-ID");
        return ERROR_CRYPTO;
    }
    for (size_t i = 0; i < sizeof(rnd); i++)
        snprintf(hex + 2 * i, 3, "%02x", rnd[i]);
    rc = buf_str(b, "Message-ID: <");
    if (rc == 0)
        rc = buf_str(b, hex);
    if (rc == 0)
        rc = buf_char(b, '@');
    if (rc == 0)
        rc = buf_str(b, domain);
    if (rc == 0)
        rc = buf_str(b, ">\r\n");
    return rc;
}

/* --- compose ---------------------------------------------------------------- */

/* Appends "Name: a, b, ..." folded before an address that would pass
 * LINE_FOLD columns. */
static int add_address_header(struct smtp_message__buf *b, const char *name,
                              const char *const *addrs, size_t n)
{
    size_t col;
    int rc;

    if (n == 0)
        return 0;
    rc = buf_str(b, name);
    if (rc == 0)
        rc = buf_str(b, ": ");
    col = strlen(name) + 2;
    for (size_t i = 0; rc == 0 && i < n; i++) {
        size_t alen = strlen(addrs[i]);

        if (i > 0) {
            bool fold = col + 2 + alen > LINE_FOLD;

            rc = buf_str(b, fold ? ",\r\n " : ", ");
            col = fold ? 1 : col + 2;
        }
        if (rc == 0)
            rc = smtp_message__buf_add(b, addrs[i], alen);
        col += alen;
    }
    return rc == 0 ? smtp_message__buf_add(b, "\r\n", 2) : rc;
}

static bool q_literal(unsigned char c)
{
    /* RFC 2047 section 5 (3): the safest set, valid wherever a word goes. */
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '!' ||
           c == '*' || c == '+' || c == '-' || c == '/' || c == ' ';
}

/* Octets of the Q encoding of s[n]. */
static size_t q_len(const char *s, size_t n)
{
    size_t k = 0;

    for (size_t i = 0; i < n; i++)
        k += q_literal((unsigned char)s[i]) ? 1 : 3;
    return k;
}

/* "=XX": how both Q (RFC 2047) and quoted-printable (RFC 2045) escape an
 * octet, upper-case hex. */
static int buf_hex_escape(struct smtp_message__buf *b, unsigned char c)
{
    static const char hexd[] = "0123456789ABCDEF";
    char e[3] = {'=', hexd[c >> 4], hexd[c & 15]};

    return smtp_message__buf_add(b, e, 3);
}

static int q_encode(struct smtp_message__buf *b, const char *s, size_t n)
{
    int rc = 0;

    for (size_t i = 0; rc == 0 && i < n; i++) {
        unsigned char c = (unsigned char)s[i];

        if (c == ' ')
            rc = buf_char(b, '_');
        else if (q_literal(c))
            rc = buf_char(b, (char)c);
        else
            rc = buf_hex_escape(b, c);
    }
    return rc;
}

static int b_encode(struct smtp_message__buf *b, const char *s, size_t n)
{
    static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    const unsigned char *u = (const unsigned char *)s;
    int rc = 0;

    for (size_t i = 0; rc == 0 && i < n; i += 3) {
        unsigned v = (unsigned)u[i] << 16;
        char e[4];

        if (i + 1 < n)
            v |= (unsigned)u[i + 1] << 8;
        if (i + 2 < n)
            v |= u[i + 2];
        e[0] = b64[(v >> 18) & 63];
        e[1] = b64[(v >> 12) & 63];
        e[2] = i + 1 < n ? b64[(v >> 6) & 63] : '=';
        e[3] = i + 2 < n ? b64[v & 63] : '=';
        rc = smtp_message__buf_add(b, e, 4);
    }
    return rc;
}

/*
 * The subject as RFC 2047 encoded-words, each at most 75 characters and on
 * its own line, holding whole UTF-8 characters (RFC 2047 section 5), so
 * that a reader that decodes word by word never shows half a character.
 * Q when shorter than B (mostly ASCII), else B.
 */
static int add_encoded_subject(struct smtp_message__buf *b, const char *s, size_t n)
{
    bool q = q_len(s, n) <= (n + 2) / 3 * 4;
    size_t col = strlen("Subject: "), i = 0;
    int rc = buf_str(b, "Subject: ");

    while (rc == 0 && i < n) {
        /* What may go in this word: its line holds at most LINE_FOLD. */
        size_t room = LINE_FOLD - col - EW_OVERHEAD, take = 0, enc = 0;

        if (room > 75 - EW_OVERHEAD)
            room = 75 - EW_OVERHEAD;
        while (i + take < n) {
            size_t k = utf8_char_len(s + i + take, n - i - take);
            size_t e = q ? q_len(s + i + take, k) : (take + k + 2) / 3 * 4;

            if (k == 0 || (q ? enc + e : e) > room)
                break;
            enc = q ? enc + e : e;
            take += k;
        }
        if (take == 0)
            return ERROR_INVALID; /* not UTF-8: checked before, never here */
        rc = buf_str(b, q ? "=?UTF-8?Q?" : "=?UTF-8?B?");
        if (rc == 0)
            rc = q ? q_encode(b, s + i, take) : b_encode(b, s + i, take);
        if (rc == 0)
            rc = buf_str(b, "?=");
        i += take;
        if (rc == 0 && i < n) {
            rc = buf_str(b, "\r\n ");
            col = 1;
        }
    }
    return rc == 0 ? smtp_message__buf_add(b, "\r\n", 2) : rc;
}

/*
 * Writes the subject as it is, folded at white space, into b (NULL: only
 * checks). False if some line would pass LINE_FOLD columns: a word too long
 * for a line. A fold never leaves a line of only white space.
 */
static bool plain_subject(struct smtp_message__buf *b, const char *s, size_t n, int *rc)
{
    size_t col = strlen("Subject: "), i = 0;

    while (*rc == 0 && i < n) {
        /* A segment: white space, then a word (or only white space, last). */
        size_t j = i;

        while (j < n && (s[j] == ' ' || s[j] == '\t'))
            j++;
        while (j < n && s[j] != ' ' && s[j] != '\t')
            j++;
        if (i > 0 && col + (j - i) > LINE_FOLD && s[j - 1] != ' ' && s[j - 1] != '\t') {
            if (b != NULL)
                *rc = smtp_message__buf_add(b, "\r\n", 2);
            col = 0;
        }
        if (col + (j - i) > LINE_FOLD)
            return false;
        if (b != NULL && *rc == 0)
            *rc = smtp_message__buf_add(b, s + i, j - i);
        col += j - i;
        i = j;
    }
    return true;
}

/*
 * The subject as it is when it is ASCII, holds no "=?" (a reader would try
 * to decode it) and folds into lines of LINE_FOLD columns; otherwise as
 * encoded-words, which can be cut anywhere between characters.
 */
static int add_subject(struct smtp_message__buf *b, const char *s)
{
    size_t n = strlen(s);
    bool plain = strstr(s, "=?") == NULL;
    int rc = 0;

    for (size_t k = 0; plain && k < n; k++)
        plain = (unsigned char)s[k] < 0x80;
    if (n > 0 && !(plain && plain_subject(NULL, s, n, &rc)))
        return add_encoded_subject(b, s, n);
    rc = buf_str(b, n > 0 ? "Subject: " : "Subject:");
    if (rc == 0)
        plain_subject(b, s, n, &rc);
    return rc == 0 ? smtp_message__buf_add(b, "\r\n", 2) : rc;
}

/*
 * Quoted-printable (RFC 2045 section 6.7) of text with CRLF line ends:
 * lines of at most 76 characters with soft breaks, white space before a
 * line end encoded, and "From " at a line start encoded so that no mbox
 * writer on the way alters the line.
 */
static int add_qp(struct smtp_message__buf *b, const char *s, size_t n)
{
    size_t col = 0;
    int rc = 0;

    for (size_t i = 0; rc == 0 && i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        bool eol = i + 1 == n || (s[i + 1] == '\r' && i + 2 < n && s[i + 2] == '\n');
        size_t k;

        if (c == '\r' && i + 1 < n && s[i + 1] == '\n') {
            rc = smtp_message__buf_add(b, "\r\n", 2);
            col = 0;
            i++;
            continue;
        }
        k = (c >= 33 && c <= 126 && c != '=') || ((c == ' ' || c == '\t') && !eol) ? 1 : 3;
        if (col == 0 && c == 'F' && n - i >= 5 && memcmp(s + i, "From ", 5) == 0)
            k = 3;
        if (col == 0 && c == '.')
            k = 3; /* survives a relay that forgets to dot-stuff */
        if (col + k > 75) {
            rc = smtp_message__buf_add(b, "=\r\n", 3);
            col = 0;
        }
        if (rc == 0)
            rc = k == 1 ? buf_char(b, (char)c) : buf_hex_escape(b, c);
        col += k;
    }
    return rc;
}

/* A bare mailbox (local@domain) as compose and the From header take it:
 * ERROR_INVALID with `why` naming the header. */
static int check_address(const char *hdr, const char *a, char *why, size_t whylen)
{
    char sub[160], shown[80];

    if (syntax_has_control(a)) {
        snprintf(why, whylen, "%s address \"%s\" holds a control character (CR, LF, ...)", hdr,
                 smtp_message__safe_text(a, strlen(a), shown, sizeof(shown)));
        return ERROR_INVALID;
    }
    if (!syntax_mailbox_valid(a, sub, sizeof(sub))) {
        snprintf(why, whylen, "%s address \"%s\" is not valid: %s", hdr,
                 smtp_message__safe_text(a, strlen(a), shown, sizeof(shown)), sub);
        return ERROR_INVALID;
    }
    return 0;
}

static int compose_check(const struct smtp_message_compose *c, char *why, size_t whylen)
{
    int rc = 0;

    if (c->nto + c->ncc == 0) {
        snprintf(why, whylen, "the message has no recipient");
        return ERROR_INVALID;
    }
    if (c->nto + c->ncc > SMTP_MESSAGE_RCPT_MAX) {
        snprintf(why, whylen, "more than %d recipients", SMTP_MESSAGE_RCPT_MAX);
        return ERROR_INVALID;
    }
    for (size_t i = 0; rc == 0 && i < c->nto; i++)
        rc = check_address("To", c->to[i], why, whylen);
    for (size_t i = 0; rc == 0 && i < c->ncc; i++)
        rc = check_address("Cc", c->cc[i], why, whylen);
    if (rc != 0)
        return rc;
    if (strpbrk(c->subject, "\r\n") != NULL) {
        snprintf(why, whylen, "the subject holds a line break (CR or LF)");
        return ERROR_INVALID;
    }
    for (const char *p = c->subject; *p != '\0'; p++) {
        if (((unsigned char)*p < 0x20 && *p != '\t') || *p == 0x7f) {
            snprintf(why, whylen, "the subject holds a control character (0x%02x)",
                     (unsigned char)*p);
            return ERROR_INVALID;
        }
    }
    if (!utf8_valid(c->subject, strlen(c->subject))) {
        snprintf(why, whylen, "the subject is not valid UTF-8");
        return ERROR_INVALID;
    }
    if (c->body_len > SMTP_MESSAGE_MAX) {
        snprintf(why, whylen, "the body is larger than %d octets", SMTP_MESSAGE_MAX);
        return ERROR_TOO_BIG;
    }
    if (c->body_len > 0 && memchr(c->body, '\0', c->body_len) != NULL) {
        snprintf(why, whylen, "the body holds a NUL octet (it is not text)");
        return ERROR_INVALID;
    }
    if (!utf8_valid(c->body, c->body_len)) {
        snprintf(why, whylen, "the body is not valid UTF-8");
        return ERROR_INVALID;
    }
    return 0;
}

/* The body with every line end (CRLF, LF or a lone CR) as CRLF. */
static int body_crlf(const char *s, size_t n, struct smtp_message__buf *b, bool *ascii,
                     bool *long_line)
{
    size_t col = 0;
    int rc = buf_reserve(b, n + n / 32 + 2);

    *ascii = true;
    *long_line = false;
    for (size_t i = 0; rc == 0 && i < n; i++) {
        if (s[i] == '\r' || s[i] == '\n') {
            if (s[i] == '\r' && i + 1 < n && s[i + 1] == '\n')
                i++;
            rc = smtp_message__buf_add(b, "\r\n", 2);
            col = 0;
            continue;
        }
        *ascii = *ascii && (unsigned char)s[i] < 0x80;
        *long_line = *long_line || ++col > SMTP_MESSAGE_LINE_MAX;
        rc = buf_char(b, s[i]);
    }
    return rc;
}

int smtp_message_compose(const struct smtp_message_compose *c, char **out, size_t *outlen,
                         char *why, size_t whylen)
{
    struct smtp_message__buf b = {0}, body = {0};
    bool ascii, long_line, qp;
    int rc;

    *out = NULL;
    *outlen = 0;
    snprintf(why, whylen, "%s", "");
    rc = compose_check(c, why, whylen);
    if (rc != 0)
        return rc;
    rc = body_crlf(c->body, c->body_len, &body, &ascii, &long_line);
    qp = !ascii || long_line;
    if (rc == 0)
        rc = smtp_message__add_date(&b, c->date, why, whylen);
    if (rc == 0)
        rc = smtp_message__add_message_id(&b, c->msgid_domain, why, whylen);
    if (rc == 0)
        rc = add_address_header(&b, "To", c->to, c->nto);
    if (rc == 0)
        rc = add_address_header(&b, "Cc", c->cc, c->ncc);
    if (rc == 0)
        rc = add_subject(&b, c->subject);
    if (rc == 0)
        rc = buf_str(&b, "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=");
    if (rc == 0)
        rc = buf_str(&b, ascii ? "us-ascii\r\n" : "utf-8\r\n");
    if (rc == 0)
        rc = buf_str(&b, qp ? "Content-Transfer-Encoding: quoted-printable\r\n\r\n"
                            : "Content-Transfer-Encoding: 7bit\r\n\r\n");
    if (rc == 0)
        rc = qp ? add_qp(&b, body.p, body.len) : smtp_message__buf_add(&b, body.p, body.len);
    if (rc == 0 && body.len > 0 && body.p[body.len - 1] != '\n')
        rc = smtp_message__buf_add(&b, qp ? "=\r\n" : "\r\n", qp ? 3 : 2);
    free(body.p);
    if (rc == 0 && b.len > SMTP_MESSAGE_MAX) {
        snprintf(why, whylen, "the message would be larger than %d octets", SMTP_MESSAGE_MAX);
        rc = ERROR_TOO_BIG;
    }
    if (rc == 0)
        rc = smtp_message__buf_terminate(&b);
    if (rc != 0) {
        free(b.p);
        return rc;
    }
    *out = b.p;
    *outlen = b.len;
    return 0;
}

/* --- From header ----------------------------------------------------------- */

int smtp_message_from_header(const char *address, char *buf, size_t len)
{
    char why[320];
    int n;

    if (address == NULL || check_address("From", address, why, sizeof(why)) != 0)
        return ERROR_INVALID;
    n = snprintf(buf, len, "From: <%s>\r\n", address);
    return n < 0 || (size_t)n >= len ? ERROR_TOO_BIG : 0;
}

/* --- dot-stuffing ----------------------------------------------------------- */

/*
 * Besides doubling a leading '.', the encoder turns a bare LF or a bare CR
 * into CRLF: the outbox only holds CRLF text, but if anything else ever
 * reached here, a lone LF or CR is exactly what an "SMTP smuggling"
 * end-of-data sequence is built from, and must never go out. A CR at the
 * end of one piece is sent at once; whether it was bare is known only at
 * the next octet, which then gets the LF it lacked.
 */
size_t smtp_message_dotstuff(struct smtp_message_dotstuff *state, const char *in, size_t len,
                             char *out)
{
    size_t o = 0;

    for (size_t i = 0; i < len; i++) {
        char c = in[i];

        if (state->last_cr) {
            state->last_cr = false;
            out[o++] = '\n';
            state->mid_line = false;
            if (c == '\n')
                continue;
        }
        if (c == '\r') {
            out[o++] = '\r';
            state->last_cr = true;
            continue;
        }
        if (c == '\n') {
            out[o++] = '\r';
            out[o++] = '\n';
            state->mid_line = false;
            continue;
        }
        if (!state->mid_line && c == '.')
            out[o++] = '.';
        out[o++] = c;
        state->mid_line = true;
    }
    return o;
}

size_t smtp_message_dotstuff_end(struct smtp_message_dotstuff *state, char *out)
{
    size_t o = 0;

    if (state->last_cr) {
        out[o++] = '\n';
    } else if (state->mid_line) {
        out[o++] = '\r';
        out[o++] = '\n';
    }
    memcpy(out + o, ".\r\n", 3);
    o += 3;
    state->mid_line = false;
    state->last_cr = false;
    return o;
}
