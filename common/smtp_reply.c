/*
 * smtp_reply: see smtp_reply.h.
 */
#include "smtp_reply.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "error.h"

/* The octets of a line before its CRLF. */
#define LINE_CONTENT_MAX (SMTP_REPLY_LINE_MAX - 2)
/* How much of an offending line a reason quotes. */
#define EXCERPT_MAX      40
/* When the start of a line is checked (check_prefix). */
#define PREFIX_CHECK_AT  16

static const char hexdigits[] = "0123456789abcdef";

/* The escaped form of one octet into out (room for 4); returns its length. */
static size_t escape_octet(unsigned char c, char *out)
{
    if (c == '\\') {
        out[0] = '\\';
        out[1] = '\\';
        return 2;
    }
    if (c < 0x20 || c >= 0x7f) {
        out[0] = '\\';
        out[1] = 'x';
        out[2] = hexdigits[c >> 4];
        out[3] = hexdigits[c & 0xf];
        return 4;
    }
    out[0] = (char)c;
    return 1;
}

static size_t escaped_len(const char *in, size_t inlen)
{
    char piece[4];
    size_t n = 0;

    for (size_t i = 0; i < inlen; i++)
        n += escape_octet((unsigned char)in[i], piece);
    return n;
}

/* Writes whole escapes of `in` into buf while they fit within `limit`
 * octets; returns the length written (no NUL). */
static size_t escape_into(char *buf, size_t limit, const char *in, size_t inlen)
{
    char piece[4];
    size_t pos = 0;

    for (size_t i = 0; i < inlen; i++) {
        size_t n = escape_octet((unsigned char)in[i], piece);

        if (pos + n > limit)
            break;
        memcpy(buf + pos, piece, n);
        pos += n;
    }
    return pos;
}

size_t smtp_reply_escape(char *buf, size_t len, const char *in, size_t inlen)
{
    size_t pos, room;

    if (len == 0)
        return 0;
    room = len - 1;
    if (escaped_len(in, inlen) <= room) {
        pos = escape_into(buf, room, in, inlen);
    } else {
        pos = escape_into(buf, room >= 3 ? room - 3 : 0, in, inlen);
        for (size_t i = 0; i < 3 && pos < room; i++)
            buf[pos++] = '.';
    }
    buf[pos] = '\0';
    return pos;
}

static int fail(struct smtp_reply *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int fail(struct smtp_reply *r, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(r->why, sizeof(r->why), fmt, ap);
    va_end(ap);
    r->failed = true;
    return ERROR_DECODE;
}

/* The start of the current line, escaped, for a reason. */
static const char *excerpt(const struct smtp_reply *r, char *buf, size_t len)
{
    smtp_reply_escape(buf, len, r->line, r->line_len < EXCERPT_MAX ? r->line_len : EXCERPT_MAX);
    return buf;
}

void smtp_reply_init(struct smtp_reply *r)
{
    memset(r, 0, sizeof(*r));
}

static void reply_reset(struct smtp_reply *r)
{
    r->code = 0;
    r->nlines = 0;
    r->text[0] = '\0';
    r->text_len = 0;
    r->text_cut = false;
    r->done = false;
}

/*
 * Appends the line just completed to `text`. A whole line is appended only
 * if three octets stay free after it, so that a later cut always has room
 * for its "..." without splitting an escape.
 */
static void text_append(struct smtp_reply *r)
{
    size_t room = SMTP_REPLY_TEXT_MAX - 1 - r->text_len;
    size_t sep = r->nlines > 1 ? 1 : 0;
    size_t need = sep + escaped_len(r->line, r->line_len);
    char *p = r->text + r->text_len;

    if (r->text_cut)
        return;
    if (need + 3 <= room) {
        if (sep)
            *p++ = '\n';
        p += escape_into(p, room - sep, r->line, r->line_len);
    } else {
        /* room >= 3 holds by the rule above. */
        if (sep && room >= 4) {
            *p++ = '\n';
            room--;
        }
        p += escape_into(p, room - 3, r->line, r->line_len);
        memcpy(p, "...", 3);
        p += 3;
        r->text_cut = true;
    }
    *p = '\0';
    r->text_len = (size_t)(p - r->text);
}

/* Checks the code and separator at the start of the line. Done once the
 * line holds PREFIX_CHECK_AT octets (or is complete), so garbage is refused
 * early, yet with enough of it quoted to recognise it. */
static int check_prefix(struct smtp_reply *r)
{
    char ex[EXCERPT_MAX * 4 + 4];
    const char *l = r->line;
    size_t n = r->line_len;

    if ((n > 0 && (l[0] < '2' || l[0] > '5')) || (n > 1 && (l[1] < '0' || l[1] > '5')) ||
        (n > 2 && (l[2] < '0' || l[2] > '9')))
        return fail(r, "reply line does not start with a valid code (2yz-5yz): \"%s\"",
                    excerpt(r, ex, sizeof(ex)));
    if (n > 3 && l[3] != ' ' && l[3] != '-')
        return fail(r, "reply code not followed by ' ' or '-': \"%s\"", excerpt(r, ex, sizeof(ex)));
    return 0;
}

static int complete_line(struct smtp_reply *r)
{
    char ex[EXCERPT_MAX * 4 + 4];
    int code;
    bool last;
    int rc;

    if (r->line_len < PREFIX_CHECK_AT && (rc = check_prefix(r)) != 0)
        return rc;
    if (r->line_len < 3)
        return fail(r, "reply line too short for a code: \"%s\"", excerpt(r, ex, sizeof(ex)));
    code = (r->line[0] - '0') * 100 + (r->line[1] - '0') * 10 + (r->line[2] - '0');
    if (r->nlines > 0 && code != r->code)
        return fail(r, "reply code changed from %d to %d within one reply", r->code, code);
    if (r->nlines == SMTP_REPLY_LINES_MAX)
        return fail(r, "reply of more than %d lines", SMTP_REPLY_LINES_MAX);
    r->code = code;
    r->nlines++;
    r->line[r->line_len] = '\0';
    r->line_done = true;
    text_append(r);
    last = r->line_len == 3 || r->line[3] == ' ';
    if (!last)
        return SMTP_REPLY_LINE;
    r->done = true;
    return SMTP_REPLY_DONE;
}

int smtp_reply_feed(struct smtp_reply *r, const char *data, size_t len, size_t *used)
{
    *used = 0;
    if (r->failed)
        return ERROR_DECODE;
    if (r->done)
        reply_reset(r);
    if (r->line_done) {
        r->line_len = 0;
        r->line_done = false;
    }
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)data[i];
        int rc;

        if (r->cr) {
            if (c != '\n')
                return fail(r, "bare CR in a reply line");
            r->cr = false;
            *used = i + 1;
            return complete_line(r);
        }
        if (c == '\r') {
            r->cr = true;
            continue;
        }
        if (c == '\n')
            return fail(r, "bare LF in a reply (lines must end with CRLF)");
        if (c == '\0')
            return fail(r, "NUL octet in a reply");
        if (r->line_len == LINE_CONTENT_MAX)
            return fail(r, "reply line longer than %d octets", SMTP_REPLY_LINE_MAX);
        r->line[r->line_len++] = (char)c;
        if (r->line_len == PREFIX_CHECK_AT && (rc = check_prefix(r)) != 0)
            return rc;
    }
    *used = len;
    return SMTP_REPLY_AGAIN;
}

bool smtp_reply_pending(const struct smtp_reply *r)
{
    if (r->done)
        return false;
    return r->nlines > 0 || r->cr || (!r->line_done && r->line_len > 0);
}

const char *smtp_reply_line_text(const struct smtp_reply *r)
{
    return r->line_len > 4 ? r->line + 4 : "";
}

/* Appends n octets to buf[*pos] while there is room; false when cut. */
static bool emit(char *buf, size_t len, size_t *pos, const char *s, size_t n)
{
    size_t room = len - 1 - *pos;

    if (n > room) {
        memcpy(buf + *pos, s, room);
        *pos += room;
        return false;
    }
    memcpy(buf + *pos, s, n);
    *pos += n;
    return true;
}

void smtp_reply_summary(const struct smtp_reply *r, char *buf, size_t len)
{
    const char *p = r->text, *end = r->text + r->text_len;
    size_t pos = 0;
    bool whole = true;

    if (len == 0)
        return;
    /* `text` is escaped already: copy it, keeping the code of the first
     * line only and joining the lines' text with a space. */
    while (p < end && whole) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *stop = nl != NULL ? nl : end;

        if (p == r->text)
            whole = emit(buf, len, &pos, p, stop - p < 3 ? (size_t)(stop - p) : 3);
        if (whole && stop - p > 4)
            whole =
                emit(buf, len, &pos, " ", 1) && emit(buf, len, &pos, p + 4, (size_t)(stop - p - 4));
        p = nl != NULL ? nl + 1 : end;
    }
    if (!whole) {
        /* Cut: end in "..." without leaving half an escape behind. */
        size_t keep = len - 1 >= 3 ? len - 1 - 3 : 0;

        pos = pos < keep ? pos : keep;
        for (size_t i = pos >= 3 ? pos - 3 : 0; i < pos; i++) {
            if (buf[i] == '\\') {
                pos = i;
                break;
            }
        }
        for (size_t i = 0; i < 3 && pos < len - 1; i++)
            buf[pos++] = '.';
    }
    buf[pos] = '\0';
}

void smtp_reply_received(const struct smtp_reply *r, char *buf, size_t len)
{
    size_t pos = r->text_len < len ? r->text_len : len - 1;

    if (len == 0)
        return;
    /* `text` is escaped already and ends in "..." when it was cut; a
     * buffer of SMTP_REPLY_TEXT_MAX holds it whole. */
    memcpy(buf, r->text, pos);
    buf[pos] = '\0';
    /* The offending line, unless the reply was whole (it is in `text`). */
    if (r->text_cut || r->line_len == 0 || r->line_done)
        return;
    if (pos > 0 && pos + 1 < len)
        buf[pos++] = '\n';
    smtp_reply_escape(buf + pos, len - pos, r->line, r->line_len);
}
