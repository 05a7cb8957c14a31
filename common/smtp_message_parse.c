/*
 * smtp_message_parse: the header section of a submitted message, read
 * strictly: smtp_message_parse() (`sendmail -t`) and
 * smtp_message_normalize() (the daemon, at submission).
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

#include "error.h"
#include "internal.h"
#include "syntax.h"

/* --- lines ------------------------------------------------------------------ */

/* Copies text whose line ends are LF or CRLF (no bare CR: checked before),
 * writing every line end as CRLF. */
static int buf_add_crlf(struct smtp_message__buf *b, const char *s, size_t n)
{
    int rc = 0;

    while (rc == 0 && n > 0) {
        const char *lf = memchr(s, '\n', n);
        size_t k = lf != NULL ? (size_t)(lf - s) : n;

        if (lf == NULL)
            return smtp_message__buf_add(b, s, n);
        if (k > 0 && s[k - 1] == '\r')
            k--;
        rc = smtp_message__buf_add(b, s, k);
        if (rc == 0)
            rc = smtp_message__buf_add(b, "\r\n", 2);
        k = (size_t)(lf - s) + 1;
        s += k;
        n -= k;
    }
    return rc;
}

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

static bool ftext(unsigned char c)
{
    return c >= 33 && c <= 126 && c != ':';
}

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
    struct smtp_message__buf value; /* the unfolded value of the field being read */
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
                     smtp_message__safe_text(s->field.name, s->field.namelen, name, sizeof(name)),
                     c);
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
                rc = smtp_message__buf_add(&s.value, msg + l.start, n);
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
                         smtp_message__safe_text(s.field.name, s.field.namelen, name, sizeof(name)),
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
            rc = smtp_message__buf_add(&s.value, colon + 1, n);
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

/* What an atom of a header is made of: RFC 5322 atext, plus octets >= 0x80
 * (RFC 6532 UTF-8 in display names; addresses are then refused by
 * syntax_mailbox_valid). */
static bool atom_char(unsigned char c)
{
    return syntax_atext(c) || c >= 0x80;
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
    if (atom_char((unsigned char)c) || c == '.') {
        while (lx->pos < lx->len &&
               (atom_char((unsigned char)lx->s[lx->pos]) || lx->s[lx->pos] == '.'))
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
        quote = !smtp_message__dot_atom(plain, p);
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
                 smtp_message__safe_text(addr, o, shown, sizeof(shown)), sub);
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
                 smtp_message__safe_text(last.p, last.n, shown, sizeof(shown)));
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
    struct smtp_message__buf *out; /* normalize: the fields kept, CRLF */
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
            rc = smtp_message__buf_add(p->out, "\r\n", 2);
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

/* --- normalize -------------------------------------------------------------- */

int smtp_message_normalize(const char *msg, size_t len, time_t now, const char *msgid_domain,
                           char **out, size_t *outlen, char *why, size_t whylen)
{
    struct smtp_message__buf fields = {0}, b = {0};
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
        rc = smtp_message__add_date(&b, now, why, whylen);
    if (rc == 0 && !p.has_message_id)
        rc = smtp_message__add_message_id(&b, msgid_domain, why, whylen);
    if (rc == 0)
        rc = smtp_message__buf_add(&b, fields.p, fields.len);
    if (rc == 0)
        rc = smtp_message__buf_add(&b, "\r\n", 2);
    /* The body: lines checked one by one, line ends written as CRLF. */
    for (const char *c = msg; c < msg + header_len; c++)
        lineno += *c == '\n';
    for (pos = header_len; rc == 0 && pos < len;) {
        struct line l;

        rc = line_next(msg, len, pos, ++lineno, &l, why, whylen);
        if (rc == 0)
            rc = smtp_message__buf_add(&b, msg + l.start, l.end - l.start);
        if (rc == 0)
            rc = smtp_message__buf_add(&b, "\r\n", 2);
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
    rc = smtp_message__buf_terminate(&b);
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
