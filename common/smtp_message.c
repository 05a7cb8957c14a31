/*
 * smtp_message: compose, parse, normalize and dot-stuff RFC 5322 messages.
 *
 * The header section is read by one scanner (hdr_scan) that both parse()
 * and normalize() use, so what `sendmail -t` accepts and what the daemon
 * stores can never disagree. The scanner refuses rather than guesses:
 * every construct that two mail programs could read differently (a line of
 * white space inside the header, a bare CR, white space before a colon, a
 * control character) is an error, since such differences are how headers
 * get smuggled past one program and into another.
 */
#include "smtp_message.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/rand.h>

#include "error.h"
#include "syntax.h"

#define LINE_FOLD   76 /* fold composed header lines at this many columns */
#define EW_OVERHEAD 12 /* "=?UTF-8?Q?" and "?=" around an encoded-word */

/* --- growable output buffer ----------------------------------------------- */

struct buf {
    char *p;
    size_t len, cap;
};

static int buf_reserve(struct buf *b, size_t more)
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

static int buf_add(struct buf *b, const void *data, size_t n)
{
    int rc = buf_reserve(b, n);

    if (rc != 0)
        return rc;
    if (n > 0)
        memcpy(b->p + b->len, data, n);
    b->len += n;
    return 0;
}

static int buf_str(struct buf *b, const char *s)
{
    return buf_add(b, s, strlen(s));
}

static int buf_char(struct buf *b, char c)
{
    return buf_add(b, &c, 1);
}

/* Ends the text with a NUL that its length does not count. */
static int buf_terminate(struct buf *b)
{
    int rc = buf_reserve(b, 1);

    if (rc == 0)
        b->p[b->len] = '\0';
    return rc;
}

/* Copies text whose line ends are LF or CRLF (no bare CR: checked before),
 * writing every line end as CRLF. */
static int buf_add_crlf(struct buf *b, const char *s, size_t n)
{
    int rc = 0;

    while (rc == 0 && n > 0) {
        const char *lf = memchr(s, '\n', n);
        size_t k = lf != NULL ? (size_t)(lf - s) : n;

        if (lf == NULL)
            return buf_add(b, s, n);
        if (k > 0 && s[k - 1] == '\r')
            k--;
        rc = buf_add(b, s, k);
        if (rc == 0)
            rc = buf_add(b, "\r\n", 2);
        k = (size_t)(lf - s) + 1;
        s += k;
        n -= k;
    }
    return rc;
}

/* --- small text helpers ---------------------------------------------------- */

/* Copies untrusted text into a reason: printable ASCII only, at most 64
 * characters, so a reason can be logged or printed as it is. */
static const char *safe_text(const char *s, size_t n, char *out, size_t outlen)
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

/* RFC 5322 atext, plus octets >= 0x80 (RFC 6532 UTF-8 in display names;
 * addresses are then refused by syntax_mailbox_valid). */
static bool atext(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c != '\0' && strchr("!#$%&'*+-/=?^_`{|}~", c) != NULL) || c >= 0x80;
}

static bool ftext(unsigned char c)
{
    return c >= 33 && c <= 126 && c != ':';
}

/* Length of the valid UTF-8 character at s (n octets available), 0 if it is
 * not one: no overlong forms, no surrogates, nothing above U+10FFFF. */
static size_t utf8_char(const unsigned char *s, size_t n)
{
    unsigned c = s[0], min;
    size_t len;
    unsigned cp;

    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf)
        len = 2, cp = c & 0x1f, min = 0x80;
    else if (c >= 0xe0 && c <= 0xef)
        len = 3, cp = c & 0x0f, min = 0x800;
    else if (c >= 0xf0 && c <= 0xf4)
        len = 4, cp = c & 0x07, min = 0x10000;
    else
        return 0;
    if (n < len)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[i] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return len;
}

static bool utf8_valid(const char *s, size_t n)
{
    const unsigned char *u = (const unsigned char *)s;

    for (size_t i = 0; i < n;) {
        size_t k = utf8_char(u + i, n - i);

        if (k == 0)
            return false;
        i += k;
    }
    return true;
}

/* The domain of an address: after its last '@' (a quoted local part may
 * hold one). */
static const char *addr_domain(const char *a)
{
    const char *at = strrchr(a, '@');

    return at != NULL ? at : a + strlen(a);
}

bool smtp_message_address_equal(const char *a, const char *b)
{
    const char *da = addr_domain(a), *db = addr_domain(b);

    return da - a == db - b && memcmp(a, b, (size_t)(da - a)) == 0 && strcasecmp(da, db) == 0;
}

/* --- lines ------------------------------------------------------------------ */

struct line {
    size_t start, end; /* the content, without its line end */
    size_t next;       /* where the next line starts */
};

/*
 * Reads the line at `pos` (LF or CRLF ends; the last may have none).
 * Refuses a NUL or a bare CR (ERROR_INVALID) and a line over
 * SMTP_MESSAGE_LINE_MAX octets (ERROR_TOO_BIG).
 */
static int line_next(const char *msg, size_t len, size_t pos, unsigned lineno, struct line *l,
                     char *why, size_t whylen)
{
    const char *lf = memchr(msg + pos, '\n', len - pos);
    size_t end = lf != NULL ? (size_t)(lf - msg) : len;

    l->start = pos;
    l->next = lf != NULL ? end + 1 : len;
    if (lf != NULL && end > pos && msg[end - 1] == '\r')
        end--;
    l->end = end;
    if (memchr(msg + pos, '\r', end - pos) != NULL) {
        snprintf(why, whylen,
                 "line %u has a carriage return (CR) that does not end the line; "
                 "lines must end with LF or CRLF",
                 lineno);
        return ERROR_INVALID;
    }
    if (memchr(msg + pos, '\0', end - pos) != NULL) {
        snprintf(why, whylen, "line %u has a NUL octet", lineno);
        return ERROR_INVALID;
    }
    if (end - pos > SMTP_MESSAGE_LINE_MAX) {
        snprintf(why, whylen, "line %u is longer than %d octets", lineno, SMTP_MESSAGE_LINE_MAX);
        return ERROR_TOO_BIG;
    }
    return 0;
}

/* --- header section scanner ------------------------------------------------- */

struct hdr_field {
    const char *name;
    size_t namelen;
    size_t start, end; /* raw octets in the message, line ends included */
    const char *value; /* unfolded (line ends removed), after the colon */
    size_t valuelen;
};

typedef int (*hdr_field_fn)(void *ctx, const struct hdr_field *f, char *why, size_t whylen);

struct hdr_scan {
    const char *msg;
    size_t len;
    hdr_field_fn fn;
    void *ctx;
    struct buf value; /* the unfolded value of the field being read */
    struct hdr_field field;
    bool open;
};

static bool name_is(const struct hdr_field *f, const char *name)
{
    /* Not strncasecmp: f->name is not NUL-terminated. */
    if (f->namelen != strlen(name))
        return false;
    for (size_t i = 0; i < f->namelen; i++)
        if (tolower((unsigned char)f->name[i]) != tolower((unsigned char)name[i]))
            return false;
    return true;
}

static int hdr_flush(struct hdr_scan *s, char *why, size_t whylen)
{
    if (!s->open)
        return 0;
    s->open = false;
    s->field.value = s->value.len > 0 ? s->value.p : "";
    s->field.valuelen = s->value.len;
    return s->fn(s->ctx, &s->field, why, whylen);
}

/* A field's text may hold HTAB but no other control character. */
static int hdr_check_text(const struct hdr_scan *s, const char *p, size_t n, char *why,
                          size_t whylen)
{
    char name[80];

    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];

        if ((c < 0x20 && c != '\t') || c == 0x7f) {
            snprintf(why, whylen, "%s: the header holds a control character (0x%02x)",
                     safe_text(s->field.name, s->field.namelen, name, sizeof(name)), c);
            return ERROR_INVALID;
        }
    }
    return 0;
}

/*
 * Calls fn for every field of the header section of msg, in order, and
 * sets *header_len (the blank line included; the whole message when it has
 * no blank line). Errors: those of line_next(), ERROR_INVALID for a line
 * that is not a field, -ENOMEM, or whatever fn returns.
 */
static int hdr_scan(const char *msg, size_t len, hdr_field_fn fn, void *ctx, size_t *header_len,
                    char *why, size_t whylen)
{
    struct hdr_scan s = {.msg = msg, .len = len, .fn = fn, .ctx = ctx};
    size_t pos = 0;
    unsigned lineno = 0;
    int rc = 0;

    *header_len = len;
    while (rc == 0 && pos < len) {
        struct line l;
        const char *colon;
        size_t n;

        rc = line_next(msg, len, pos, ++lineno, &l, why, whylen);
        if (rc != 0)
            break;
        pos = l.next;
        n = l.end - l.start;
        if (n == 0 && l.next > l.start) {
            *header_len = l.next;
            break;
        }
        if (msg[l.start] == ' ' || msg[l.start] == '\t') {
            size_t i = 0;

            if (!s.open) {
                snprintf(why, whylen,
                         "line %u starts with white space but continues no header field", lineno);
                rc = ERROR_INVALID;
                break;
            }
            while (i < n && (msg[l.start + i] == ' ' || msg[l.start + i] == '\t'))
                i++;
            if (i == n) {
                /* Some programs take such a line for the end of the header
                 * section, others for a continuation: refused as ambiguous. */
                snprintf(why, whylen,
                         "line %u, in the header section, holds only white space "
                         "(a blank line must be empty)",
                         lineno);
                rc = ERROR_INVALID;
                break;
            }
            rc = hdr_check_text(&s, msg + l.start, n, why, whylen);
            if (rc == 0)
                rc = buf_add(&s.value, msg + l.start, n);
            s.field.end = l.next;
            continue;
        }
        rc = hdr_flush(&s, why, whylen);
        if (rc != 0)
            break;
        colon = memchr(msg + l.start, ':', n);
        if (colon == NULL || colon == msg + l.start) {
            snprintf(why, whylen,
                     colon == NULL ? "line %u is not a header field (it has no colon); a blank "
                                     "line must separate the header from the body"
                                   : "line %u is a header field without a name",
                     lineno);
            rc = ERROR_INVALID;
            break;
        }
        s.field.name = msg + l.start;
        s.field.namelen = (size_t)(colon - s.field.name);
        for (size_t i = 0; i < s.field.namelen; i++) {
            unsigned char c = (unsigned char)s.field.name[i];

            if (!ftext(c)) {
                char name[80];

                snprintf(why, whylen, "line %u: the header name \"%s\" has %s", lineno,
                         safe_text(s.field.name, s.field.namelen, name, sizeof(name)),
                         c == ' ' || c == '\t' ? "white space (none may come before the colon)"
                                               : "a character not allowed in a header name");
                rc = ERROR_INVALID;
                break;
            }
        }
        if (rc != 0)
            break;
        s.field.start = l.start;
        s.field.end = l.next;
        s.value.len = 0;
        s.open = true;
        n = l.end - (size_t)(colon + 1 - msg);
        rc = hdr_check_text(&s, colon + 1, n, why, whylen);
        if (rc == 0)
            rc = buf_add(&s.value, colon + 1, n);
    }
    if (rc == 0)
        rc = hdr_flush(&s, why, whylen);
    free(s.value.p);
    return rc;
}

/* --- address lists (RFC 5322 section 3.4) ----------------------------------- */

enum tok_kind {
    TOK_END,
    TOK_ATOM,    /* atext and dots: a dot-atom, or a word of a phrase */
    TOK_QUOTED,  /* quoted-string; p/n hold the text between the quotes */
    TOK_LITERAL, /* domain-literal, brackets included */
    TOK_SPECIAL, /* one of < > @ , ; : */
};

struct tok {
    enum tok_kind kind;
    const char *p;
    size_t n;
};

struct lexer {
    const char *s;
    size_t len, pos;
    const char *header; /* canonical name, for reasons */
    struct tok cur;
    char *why;
    size_t whylen;
};

static int lex_fail(struct lexer *lx, const char *what)
{
    snprintf(lx->why, lx->whylen, "%s: %s", lx->header, what);
    return ERROR_INVALID;
}

/* Skips white space and comments (nested, with quoted-pairs). */
static int lex_cfws(struct lexer *lx)
{
    while (lx->pos < lx->len) {
        char c = lx->s[lx->pos];
        unsigned depth = 0;

        if (c == ' ' || c == '\t') {
            lx->pos++;
            continue;
        }
        if (c != '(')
            return 0;
        do {
            c = lx->s[lx->pos++];
            if (c == '\\') {
                if (lx->pos == lx->len)
                    break;
                lx->pos++;
            } else if (c == '(') {
                depth++;
            } else if (c == ')') {
                depth--;
            }
        } while (depth > 0 && lx->pos < lx->len);
        if (depth > 0)
            return lex_fail(lx, "a comment is not closed with \")\"");
    }
    return 0;
}

/* Moves lx->cur to the next token. */
static int lex_next(struct lexer *lx)
{
    struct tok *t = &lx->cur;
    int rc = lex_cfws(lx);
    char c;

    if (rc != 0)
        return rc;
    t->p = lx->s + lx->pos;
    t->n = 0;
    if (lx->pos == lx->len) {
        t->kind = TOK_END;
        return 0;
    }
    c = lx->s[lx->pos];
    if (atext((unsigned char)c) || c == '.') {
        while (lx->pos < lx->len && (atext((unsigned char)lx->s[lx->pos]) || lx->s[lx->pos] == '.'))
            lx->pos++;
        t->kind = TOK_ATOM;
        t->n = (size_t)(lx->s + lx->pos - t->p);
        return 0;
    }
    if (c == '"') {
        lx->pos++;
        t->p++;
        while (lx->pos < lx->len && lx->s[lx->pos] != '"') {
            if (lx->s[lx->pos] == '\\' && lx->pos + 1 < lx->len)
                lx->pos++;
            lx->pos++;
        }
        if (lx->pos == lx->len)
            return lex_fail(lx, "a quoted string is not closed with '\"'");
        t->kind = TOK_QUOTED;
        t->n = (size_t)(lx->s + lx->pos - t->p);
        lx->pos++;
        return 0;
    }
    if (c == '[') {
        lx->pos++;
        while (lx->pos < lx->len && lx->s[lx->pos] != ']') {
            c = lx->s[lx->pos++];
            if (c == '[' || c == '\\' || c == ' ' || c == '\t')
                return lex_fail(lx, "a domain literal [...] holds a character it may not");
        }
        if (lx->pos == lx->len)
            return lex_fail(lx, "a domain literal is not closed with \"]\"");
        lx->pos++;
        t->kind = TOK_LITERAL;
        t->n = (size_t)(lx->s + lx->pos - t->p);
        return 0;
    }
    if (c != '\0' && strchr("<>@,;:", c) != NULL) {
        lx->pos++;
        t->kind = TOK_SPECIAL;
        t->n = 1;
        return 0;
    }
    {
        char what[64];

        snprintf(what, sizeof(what), "unexpected \"%c\"", c >= 0x20 && c < 0x7f ? c : '?');
        return lex_fail(lx, what);
    }
}

static bool tok_is(const struct tok *t, char c)
{
    return t->kind == TOK_SPECIAL && t->p[0] == c;
}

/* What the address parser adds recipients to. */
struct rcpt_list {
    char **v;
    size_t n;
};

static void rcpt_list_free(struct rcpt_list *r)
{
    for (size_t i = 0; i < r->n; i++)
        free(r->v[i]);
    free(r->v);
    r->v = NULL;
    r->n = 0;
}

/* Adds a copy of addr unless an equal one is there; ERROR_INVALID past
 * SMTP_MESSAGE_RCPT_MAX. */
static int rcpt_list_add(struct rcpt_list *r, const char *addr, char *why, size_t whylen)
{
    char **v;

    for (size_t i = 0; i < r->n; i++)
        if (smtp_message_address_equal(r->v[i], addr))
            return 0;
    if (r->n == SMTP_MESSAGE_RCPT_MAX) {
        snprintf(why, whylen, "more than %d recipients", SMTP_MESSAGE_RCPT_MAX);
        return ERROR_INVALID;
    }
    v = realloc(r->v, (r->n + 1) * sizeof(*v));
    if (v == NULL)
        return -ENOMEM;
    r->v = v;
    r->v[r->n] = strdup(addr);
    if (r->v[r->n] == NULL)
        return -ENOMEM;
    r->n++;
    return 0;
}

/* True if s[n] is a dot-atom-text: atext (ASCII) runs separated by dots. */
static bool dot_atom(const char *s, size_t n)
{
    if (n == 0 || s[0] == '.' || s[n - 1] == '.')
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];

        if (c == '.' ? s[i + 1] == '.' : (!atext(c) || c >= 0x80))
            return false;
    }
    return true;
}

/*
 * Builds local@domain from the tokens of an addr-spec, checks it with
 * syntax_mailbox_valid() and adds it. A quoted local part that needs no
 * quotes loses them, so "john"@example.com and john@example.com are one
 * recipient.
 */
static int add_addr_spec(struct lexer *lx, const struct tok *local, const struct tok *domain,
                         struct rcpt_list *r)
{
    char addr[SYNTAX_ADDRESS_MAX + 2], sub[160], shown[80], what[320];
    size_t o = 0, cap = sizeof(addr) - 1;
    bool quote = false;
    int rc;

    if (local->kind == TOK_QUOTED) {
        char plain[SYNTAX_ADDRESS_MAX + 2] = "";
        size_t p = 0;

        for (size_t i = 0; i < local->n && p < cap; i++) {
            if (local->p[i] == '\\' && i + 1 < local->n)
                i++;
            plain[p++] = local->p[i];
        }
        quote = !dot_atom(plain, p);
        if (quote)
            addr[o++] = '"';
        for (size_t i = 0; i < p && o + 2 < cap; i++) {
            if (quote && (plain[i] == '"' || plain[i] == '\\'))
                addr[o++] = '\\';
            addr[o++] = plain[i];
        }
        if (quote && o < cap)
            addr[o++] = '"';
    } else {
        for (size_t i = 0; i < local->n && o < cap; i++)
            addr[o++] = local->p[i];
    }
    if (o < cap)
        addr[o++] = '@';
    for (size_t i = 0; i < domain->n && o < cap; i++)
        addr[o++] = domain->p[i];
    if (o >= cap) {
        snprintf(what, sizeof(what), "an address is longer than %d characters", SYNTAX_ADDRESS_MAX);
        return lex_fail(lx, what);
    }
    addr[o] = '\0';
    if (!syntax_mailbox_valid(addr, sub, sizeof(sub))) {
        snprintf(what, sizeof(what), "\"%s\" is not a valid address: %s",
                 safe_text(addr, o, shown, sizeof(shown)), sub);
        return lex_fail(lx, what);
    }
    rc = rcpt_list_add(r, addr, sub, sizeof(sub));
    return rc == ERROR_INVALID ? lex_fail(lx, sub) : rc;
}

/* addr-spec = local-part "@" domain, the local part already read. */
static int parse_domain_part(struct lexer *lx, const struct tok *local, struct rcpt_list *r)
{
    struct tok domain;
    int rc = lex_next(lx); /* past '@' */

    if (rc != 0)
        return rc;
    if (lx->cur.kind != TOK_ATOM && lx->cur.kind != TOK_LITERAL)
        return lex_fail(lx, "an address has nothing after \"@\"");
    domain = lx->cur;
    rc = add_addr_spec(lx, local, &domain, r);
    return rc != 0 ? rc : lex_next(lx);
}

/* angle-addr, after its '<'. Source routes (obs-route) are refused. */
static int parse_angle(struct lexer *lx, struct rcpt_list *r)
{
    struct tok local;
    int rc = lex_next(lx);

    if (rc != 0)
        return rc;
    if (tok_is(&lx->cur, '>'))
        return lex_fail(lx, "an empty address <> is not a recipient");
    if (tok_is(&lx->cur, '@'))
        return lex_fail(lx, "source routes (<@host:...>) are not supported");
    if (lx->cur.kind != TOK_ATOM && lx->cur.kind != TOK_QUOTED)
        return lex_fail(lx, "\"<\" is not followed by an address");
    local = lx->cur;
    rc = lex_next(lx);
    if (rc != 0)
        return rc;
    if (!tok_is(&lx->cur, '@'))
        return lex_fail(lx, "an address in <> has no \"@\"");
    rc = parse_domain_part(lx, &local, r);
    if (rc != 0)
        return rc;
    if (!tok_is(&lx->cur, '>'))
        return lex_fail(lx, "an address in <> is not closed with \">\"");
    return lex_next(lx);
}

/* address = mailbox / group; groups do not nest. */
static int parse_address(struct lexer *lx, bool in_group, struct rcpt_list *r)
{
    struct tok last = {0};
    size_t words = 0;
    int rc = 0;

    while (lx->cur.kind == TOK_ATOM || lx->cur.kind == TOK_QUOTED) {
        last = lx->cur;
        words++;
        rc = lex_next(lx);
        if (rc != 0)
            return rc;
    }
    if (tok_is(&lx->cur, '<'))
        return parse_angle(lx, r);
    if (tok_is(&lx->cur, '@')) {
        if (words != 1)
            return lex_fail(lx, words == 0 ? "an address has nothing before \"@\""
                                           : "an address has white space before \"@\" (quote "
                                             "the display name and put the address in <>)");
        return parse_domain_part(lx, &last, r);
    }
    if (tok_is(&lx->cur, ':')) {
        if (in_group)
            return lex_fail(lx, "a group inside a group");
        if (words == 0)
            return lex_fail(lx, "a group has no name before \":\"");
        rc = lex_next(lx);
        while (rc == 0) {
            while (rc == 0 && tok_is(&lx->cur, ','))
                rc = lex_next(lx);
            if (rc != 0 || tok_is(&lx->cur, ';'))
                break;
            if (lx->cur.kind == TOK_END)
                return lex_fail(lx, "a group is not closed with \";\"");
            rc = parse_address(lx, true, r);
            if (rc == 0 && lx->cur.kind == TOK_END)
                return lex_fail(lx, "a group is not closed with \";\"");
            if (rc == 0 && !tok_is(&lx->cur, ',') && !tok_is(&lx->cur, ';'))
                return lex_fail(lx, "addresses in a group must be separated by commas");
        }
        return rc != 0 ? rc : lex_next(lx);
    }
    if (words == 1 && last.kind == TOK_ATOM) {
        char shown[80], what[160];

        snprintf(what, sizeof(what), "\"%s\" is not an address (it has no \"@\")",
                 safe_text(last.p, last.n, shown, sizeof(shown)));
        return lex_fail(lx, what);
    }
    if (words > 0)
        return lex_fail(lx, "a name is not followed by an address (no \"@\")");
    return lex_fail(lx, "expected an address");
}

/* address-list, also with empty elements (obs-addr-list: "a@b, , c@d"). */
static int parse_address_list(const char *header, const char *s, size_t n, struct rcpt_list *r,
                              char *why, size_t whylen)
{
    struct lexer lx = {.s = s, .len = n, .header = header, .why = why, .whylen = whylen};
    int rc = lex_next(&lx);

    while (rc == 0) {
        while (rc == 0 && tok_is(&lx.cur, ','))
            rc = lex_next(&lx);
        if (rc != 0 || lx.cur.kind == TOK_END)
            break;
        rc = parse_address(&lx, false, r);
        if (rc == 0 && lx.cur.kind != TOK_END && !tok_is(&lx.cur, ','))
            return lex_fail(&lx, "addresses must be separated by commas");
    }
    return rc;
}

/* --- parse ------------------------------------------------------------------ */

/* What parse() and normalize() learn from the fields, one at a time. */
struct parse_ctx {
    struct rcpt_list rcpts;
    bool has_from, has_date, has_message_id, has_subject;
    struct buf *out; /* normalize: the fields kept, CRLF */
    const char *msg;
};

/* msg-id = "<" id-left "@" id-right ">", with optional white space around. */
static bool msgid_valid(const char *v, size_t n)
{
    const char *at;

    while (n > 0 && (v[0] == ' ' || v[0] == '\t'))
        v++, n--;
    while (n > 0 && (v[n - 1] == ' ' || v[n - 1] == '\t'))
        n--;
    if (n < 5 || v[0] != '<' || v[n - 1] != '>')
        return false;
    at = memchr(v, '@', n);
    if (at == NULL || at == v + 1 || at == v + n - 2 ||
        memchr(at + 1, '@', (size_t)(v + n - at - 1)))
        return false;
    for (size_t i = 1; i + 1 < n; i++)
        if ((unsigned char)v[i] <= 0x20 || (unsigned char)v[i] >= 0x7f ||
            strchr("<>()\\\",;", v[i]) != NULL)
            return false;
    return true;
}

static int once(bool *seen, const char *name, char *why, size_t whylen)
{
    if (*seen) {
        snprintf(why, whylen, "%s: the header appears more than once", name);
        return ERROR_INVALID;
    }
    *seen = true;
    return 0;
}

static int parse_field(void *arg, const struct hdr_field *f, char *why, size_t whylen)
{
    struct parse_ctx *p = arg;
    bool drop = false;
    int rc = 0;

    if (name_is(f, "To") || name_is(f, "Cc") || name_is(f, "Bcc")) {
        const char *name = name_is(f, "To") ? "To" : name_is(f, "Cc") ? "Cc" : "Bcc";

        rc = parse_address_list(name, f->value, f->valuelen, &p->rcpts, why, whylen);
        drop = name[0] == 'B';
    } else if (name_is(f, "Resent-Bcc")) {
        drop = true; /* not read for recipients, but never shown to them either */
    } else if (name_is(f, "From")) {
        p->has_from = true;
        drop = true;
    } else if (name_is(f, "Date")) {
        rc = once(&p->has_date, "Date", why, whylen);
    } else if (name_is(f, "Subject")) {
        rc = once(&p->has_subject, "Subject", why, whylen);
    } else if (name_is(f, "Message-ID")) {
        rc = once(&p->has_message_id, "Message-ID", why, whylen);
        if (rc == 0 && !msgid_valid(f->value, f->valuelen)) {
            snprintf(why, whylen, "Message-ID: it is not of the form <id@domain>");
            rc = ERROR_INVALID;
        }
    }
    if (rc == 0 && p->out != NULL && !drop) {
        rc = buf_add_crlf(p->out, p->msg + f->start, f->end - f->start);
        if (rc == 0 && p->msg[f->end - 1] != '\n')
            rc = buf_add(p->out, "\r\n", 2);
    }
    return rc;
}

int smtp_message_parse(const char *msg, size_t len, struct smtp_message_info *info, char *why,
                       size_t whylen)
{
    struct parse_ctx p = {.msg = msg};
    size_t header_len;
    int rc;

    memset(info, 0, sizeof(*info));
    snprintf(why, whylen, "%s", "");
    rc = hdr_scan(msg, len, parse_field, &p, &header_len, why, whylen);
    if (rc != 0) {
        rcpt_list_free(&p.rcpts);
        return rc == ERROR_TOO_BIG ? ERROR_INVALID : rc;
    }
    info->rcpts = p.rcpts.v;
    info->nrcpts = p.rcpts.n;
    info->has_from = p.has_from;
    info->has_date = p.has_date;
    info->has_message_id = p.has_message_id;
    info->header_len = header_len;
    for (size_t i = 0; i < len && !info->eight_bit; i++)
        info->eight_bit = (unsigned char)msg[i] >= 0x80;
    return 0;
}

void smtp_message_info_free(struct smtp_message_info *info)
{
    struct rcpt_list r = {.v = info->rcpts, .n = info->nrcpts};

    rcpt_list_free(&r);
    info->rcpts = NULL;
    info->nrcpts = 0;
}

/* --- Date and Message-ID ---------------------------------------------------- */

/* "Date: Mon, 02 Jan 2006 15:04:05 +0000\r\n", without the locale. */
static int add_date(struct buf *b, time_t t, char *why, size_t whylen)
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

/* "Message-ID: <32 hex digits@domain>\r\n"; the domain is a dot-atom (a host
 * name) or an address literal such as [192.0.2.1] or [IPv6:2001:db8::1]. */
static int add_message_id(struct buf *b, const char *domain, char *why, size_t whylen)
{
    unsigned char rnd[16];
    char hex[sizeof(rnd) * 2 + 1];
    int rc;

    if (domain == NULL || strlen(domain) > SYNTAX_HOSTNAME_MAX ||
        !(dot_atom(domain, strlen(domain)) || no_fold_literal(domain))) {
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

/* --- normalize -------------------------------------------------------------- */

int smtp_message_normalize(const char *msg, size_t len, time_t now, const char *msgid_domain,
                           char **out, size_t *outlen, char *why, size_t whylen)
{
    struct buf fields = {0}, b = {0};
    struct parse_ctx p = {.msg = msg, .out = &fields};
    size_t header_len, pos;
    unsigned lineno = 0;
    int rc;

    *out = NULL;
    *outlen = 0;
    snprintf(why, whylen, "%s", "");
    if (len > SMTP_MESSAGE_MAX) {
        snprintf(why, whylen, "the message is larger than %d octets", SMTP_MESSAGE_MAX);
        return ERROR_TOO_BIG;
    }
    rc = hdr_scan(msg, len, parse_field, &p, &header_len, why, whylen);
    if (rc != 0)
        goto fail;
    if (!p.has_date)
        rc = add_date(&b, now, why, whylen);
    if (rc == 0 && !p.has_message_id)
        rc = add_message_id(&b, msgid_domain, why, whylen);
    if (rc == 0)
        rc = buf_add(&b, fields.p, fields.len);
    if (rc == 0)
        rc = buf_add(&b, "\r\n", 2);
    /* The body: lines checked one by one, line ends written as CRLF. */
    for (const char *c = msg; c < msg + header_len; c++)
        lineno += *c == '\n';
    for (pos = header_len; rc == 0 && pos < len;) {
        struct line l;

        rc = line_next(msg, len, pos, ++lineno, &l, why, whylen);
        if (rc == 0)
            rc = buf_add(&b, msg + l.start, l.end - l.start);
        if (rc == 0)
            rc = buf_add(&b, "\r\n", 2);
        pos = l.next;
    }
    if (rc != 0)
        goto fail;
    if (b.len > SMTP_MESSAGE_MAX) {
        snprintf(why, whylen, "the message is larger than %d octets once its lines end with CRLF",
                 SMTP_MESSAGE_MAX);
        rc = ERROR_TOO_BIG;
        goto fail;
    }
    rc = buf_terminate(&b);
    if (rc != 0)
        goto fail;
    *out = b.p;
    *outlen = b.len;
    free(fields.p);
    rcpt_list_free(&p.rcpts);
    return 0;

fail:
    free(b.p);
    free(fields.p);
    rcpt_list_free(&p.rcpts);
    return rc;
}

int smtp_message_from_header(const char *address, char *buf, size_t len)
{
    char why[160];
    int n;

    if (address == NULL || syntax_has_control(address) ||
        !syntax_mailbox_valid(address, why, sizeof(why)))
        return ERROR_INVALID;
    n = snprintf(buf, len, "From: <%s>\r\n", address);
    return n < 0 || (size_t)n >= len ? ERROR_TOO_BIG : 0;
}

/* --- compose ---------------------------------------------------------------- */

/* Appends "Name: a, b, ..." folded before an address that would pass
 * LINE_FOLD columns. */
static int add_address_header(struct buf *b, const char *name, const char *const *addrs, size_t n)
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
            rc = buf_add(b, addrs[i], alen);
        col += alen;
    }
    return rc == 0 ? buf_add(b, "\r\n", 2) : rc;
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

static int q_encode(struct buf *b, const char *s, size_t n)
{
    static const char hexd[] = "0123456789ABCDEF";
    int rc = 0;

    for (size_t i = 0; rc == 0 && i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        char e[3] = {'=', hexd[c >> 4], hexd[c & 15]};

        if (c == ' ')
            rc = buf_char(b, '_');
        else if (q_literal(c))
            rc = buf_char(b, (char)c);
        else
            rc = buf_add(b, e, 3);
    }
    return rc;
}

static int b_encode(struct buf *b, const char *s, size_t n)
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
        rc = buf_add(b, e, 4);
    }
    return rc;
}

/*
 * The subject as RFC 2047 encoded-words, each at most 75 characters and on
 * its own line, holding whole UTF-8 characters (RFC 2047 section 5), so
 * that a reader that decodes word by word never shows half a character.
 * Q when shorter than B (mostly ASCII), else B.
 */
static int add_encoded_subject(struct buf *b, const char *s, size_t n)
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
            size_t k = utf8_char((const unsigned char *)s + i + take, n - i - take);
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
    return rc == 0 ? buf_add(b, "\r\n", 2) : rc;
}

/*
 * Writes the subject as it is, folded at white space, into b (NULL: only
 * checks). False if some line would pass LINE_FOLD columns: a word too long
 * for a line. A fold never leaves a line of only white space.
 */
static bool plain_subject(struct buf *b, const char *s, size_t n, int *rc)
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
                *rc = buf_add(b, "\r\n", 2);
            col = 0;
        }
        if (col + (j - i) > LINE_FOLD)
            return false;
        if (b != NULL && *rc == 0)
            *rc = buf_add(b, s + i, j - i);
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
static int add_subject(struct buf *b, const char *s)
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
    return rc == 0 ? buf_add(b, "\r\n", 2) : rc;
}

/*
 * Quoted-printable (RFC 2045 section 6.7) of text with CRLF line ends:
 * lines of at most 76 characters with soft breaks, white space before a
 * line end encoded, and "From " at a line start encoded so that no mbox
 * writer on the way alters the line.
 */
static int add_qp(struct buf *b, const char *s, size_t n)
{
    static const char hexd[] = "0123456789ABCDEF";
    size_t col = 0;
    int rc = 0;

    for (size_t i = 0; rc == 0 && i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        bool eol = i + 1 == n || (s[i + 1] == '\r' && i + 2 < n && s[i + 2] == '\n');
        char e[3] = {'=', hexd[c >> 4], hexd[c & 15]};
        size_t k;

        if (c == '\r' && i + 1 < n && s[i + 1] == '\n') {
            rc = buf_add(b, "\r\n", 2);
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
            rc = buf_add(b, "=\r\n", 3);
            col = 0;
        }
        if (rc == 0)
            rc = k == 1 ? buf_char(b, (char)c) : buf_add(b, e, 3);
        col += k;
    }
    return rc;
}

static int compose_check_address(const char *hdr, const char *a, char *why, size_t whylen)
{
    char sub[160], shown[80];

    if (syntax_has_control(a)) {
        snprintf(why, whylen, "%s address \"%s\" holds a control character (CR, LF, ...)", hdr,
                 safe_text(a, strlen(a), shown, sizeof(shown)));
        return ERROR_INVALID;
    }
    if (!syntax_mailbox_valid(a, sub, sizeof(sub))) {
        snprintf(why, whylen, "%s address \"%s\" is not valid: %s", hdr,
                 safe_text(a, strlen(a), shown, sizeof(shown)), sub);
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
        rc = compose_check_address("To", c->to[i], why, whylen);
    for (size_t i = 0; rc == 0 && i < c->ncc; i++)
        rc = compose_check_address("Cc", c->cc[i], why, whylen);
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
static int body_crlf(const char *s, size_t n, struct buf *b, bool *ascii, bool *long_line)
{
    size_t col = 0;
    int rc = buf_reserve(b, n + n / 32 + 2);

    *ascii = true;
    *long_line = false;
    for (size_t i = 0; rc == 0 && i < n; i++) {
        if (s[i] == '\r' || s[i] == '\n') {
            if (s[i] == '\r' && i + 1 < n && s[i + 1] == '\n')
                i++;
            rc = buf_add(b, "\r\n", 2);
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
    struct buf b = {0}, body = {0};
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
        rc = add_date(&b, c->date, why, whylen);
    if (rc == 0)
        rc = add_message_id(&b, c->msgid_domain, why, whylen);
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
        rc = qp ? add_qp(&b, body.p, body.len) : buf_add(&b, body.p, body.len);
    if (rc == 0 && body.len > 0 && body.p[body.len - 1] != '\n')
        rc = buf_add(&b, qp ? "=\r\n" : "\r\n", qp ? 3 : 2);
    free(body.p);
    if (rc == 0 && b.len > SMTP_MESSAGE_MAX) {
        snprintf(why, whylen, "the message would be larger than %d octets", SMTP_MESSAGE_MAX);
        rc = ERROR_TOO_BIG;
    }
    if (rc == 0)
        rc = buf_terminate(&b);
    if (rc != 0) {
        free(b.p);
        return rc;
    }
    *out = b.p;
    *outlen = b.len;
    return 0;
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
