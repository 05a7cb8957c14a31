/*
 * smtp_reply: the incremental, strict parser of SMTP server replies
 * (RFC 5321 §4.2), used by the SMTP client.
 *
 *   Reply-line = *( Reply-code "-" [ textstring ] CRLF )
 *                Reply-code [ SP textstring ] CRLF
 *
 * Octets are fed as they arrive from the network, in pieces of any size.
 * The parser returns after every complete line, so a caller can read a
 * long EHLO reply line by line, and after the last line of a reply, saying
 * how many octets it used, so pipelined replies and octets that follow a
 * reply (the STARTTLS injection class) are seen by the caller.
 *
 * Refused, each with a reason in `why`: a line over SMTP_REPLY_LINE_MAX
 * octets (CRLF included), a reply of more than SMTP_REPLY_LINES_MAX lines,
 * a code that is not three digits with the first 2-5 and the second 0-5
 * (§4.2.1; 1yz is not used by SMTP), a separator other than ' ' or '-', a
 * code that changes within one reply, a bare CR or LF, a NUL.
 * Other octets (control characters, 8-bit) are accepted in the text and
 * escaped wherever the text is shown. The parser never holds more than
 * one line: memory is fixed by the struct, whatever the server sends.
 *
 * The struct is owned by the caller (embedded, no allocation, nothing to
 * free).
 */
#ifndef SMTPSYNC_SMTP_REPLY_H
#define SMTPSYNC_SMTP_REPLY_H

#include <stdbool.h>
#include <stddef.h>

#define SMTP_REPLY_LINE_MAX  512  /* octets in a line, CRLF included (RFC 5321 §4.5.3.1.5) */
#define SMTP_REPLY_LINES_MAX 100  /* lines in one reply */
#define SMTP_REPLY_TEXT_MAX  1024 /* the reply kept for reports (smtp_reply.text) */
#define SMTP_REPLY_WHY_MAX   160

/* Results of smtp_reply_feed() besides ERROR_DECODE (error.h). */
enum {
    SMTP_REPLY_AGAIN = 1, /* every octet used; the line is not complete yet */
    SMTP_REPLY_LINE = 2,  /* a line of a multi-line reply is complete */
    SMTP_REPLY_DONE = 3,  /* the last line is complete: the reply is whole */
};

struct smtp_reply {
    /* Valid after SMTP_REPLY_LINE or SMTP_REPLY_DONE, until the next feed. */
    int code;        /* the reply code */
    unsigned nlines; /* lines of this reply so far */
    /* The line just completed, without CRLF, NUL-terminated (a NUL octet is
     * refused, so this is the whole line); smtp_reply_line_text() skips its
     * code and separator. */
    char line[SMTP_REPLY_LINE_MAX];
    size_t line_len;
    /* The reply so far: its lines joined by "\n", each escaped as by
     * smtp_reply_escape(), cut with "..." past SMTP_REPLY_TEXT_MAX. */
    char text[SMTP_REPLY_TEXT_MAX];
    size_t text_len;
    /* After ERROR_DECODE: why, in one line. */
    char why[SMTP_REPLY_WHY_MAX];

    /* Parser state; private. */
    bool cr;        /* the last octet was a CR */
    bool line_done; /* the last call completed a line: start a new one */
    bool done;      /* the last call completed a reply: start a new one */
    bool text_cut;  /* `text` is full and ends in "..." */
    bool failed;    /* refused input: every later feed fails */
};

/* Readies a parser (also after an error, to use it again). */
void smtp_reply_init(struct smtp_reply *r);

/*
 * Feeds `len` octets. Stops after the first line completed, and sets
 * *used to the octets consumed (all of them with SMTP_REPLY_AGAIN). Returns
 * SMTP_REPLY_AGAIN, SMTP_REPLY_LINE, SMTP_REPLY_DONE, or ERROR_DECODE with
 * `why` set; after ERROR_DECODE the parser refuses everything until
 * smtp_reply_init().
 */
int smtp_reply_feed(struct smtp_reply *r, const char *data, size_t len, size_t *used);

/* True while part of a reply (a partial line, or lines of an unfinished
 * multi-line reply) has been received. */
bool smtp_reply_pending(const struct smtp_reply *r);

/* The text of the line just completed, after the code and its separator
 * ("" for a bare "250"). */
const char *smtp_reply_line_text(const struct smtp_reply *r);

/*
 * The reply as one line for a reason: "550 5.1.1 <bob@example.com>: no
 * such user", the code once, then the text of every line joined by " ",
 * escaped. Always NUL-terminated; cut with "..." when too long.
 */
void smtp_reply_summary(const struct smtp_reply *r, char *buf, size_t len);

/*
 * What was received of the current reply, for quoting one refused as
 * malformed: its complete lines as in `text`, then (after "\n") the part
 * of the offending line the parser holds, escaped as by smtp_reply_escape()
 * and cut with "..." when too long. Always NUL-terminated.
 */
void smtp_reply_received(const struct smtp_reply *r, char *buf, size_t len);

/*
 * Escapes `inlen` octets for showing them: a backslash as "\\", octets
 * below 0x20, 0x7f and above as "\xHH", the rest as they are. Writes at
 * most len - 1 octets and a NUL (an escape is never cut in half; what does
 * not fit ends in "..."); returns the length written.
 */
size_t smtp_reply_escape(char *buf, size_t len, const char *in, size_t inlen);

#endif
