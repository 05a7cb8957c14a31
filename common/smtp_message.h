/*
 * smtp_message: RFC 5322 messages as smtpsync submits and sends them.
 *
 *   compose    `smtpsyncctl send`: To/Cc/Subject/body -> a message (CRLF,
 *              RFC 2047 encoded-words for a non-ASCII subject, quoted-
 *              printable for a non-ASCII body or lines over 998 octets, so
 *              the result is 7-bit and needs no 8BITMIME).
 *   parse      `smtpsyncctl sendmail -t`: reads the header section of a
 *              message strictly, collects the To/Cc/Bcc recipients (address
 *              lists with display names, groups and comments).
 *   normalize  the daemon, at submission: line ends to CRLF, Bcc and From
 *              removed (the From header always comes from the instance's
 *              settings at delivery), Date and Message-ID added if missing,
 *              header syntax checked. The result is what the outbox stores.
 *   dotstuff   the SMTP client, at DATA: a streaming encoder that doubles a
 *              leading '.' on every line (RFC 5321 §4.5.2).
 *
 * Addresses and header values never carry CR or LF: input with them is
 * refused, never "cleaned", so no header can be injected.
 *
 * Every function that returns a buffer allocates it with malloc(); the
 * caller owns it and frees it with free(). Such a buffer also ends with a
 * NUL that its returned length does not count.
 */
#ifndef SMTPSYNC_SMTP_MESSAGE_H
#define SMTPSYNC_SMTP_MESSAGE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#define SMTP_MESSAGE_MAX      (10 * 1024 * 1024) /* octets, as submitted */
#define SMTP_MESSAGE_RCPT_MAX 100                /* recipients per message */
#define SMTP_MESSAGE_LINE_MAX 998                /* RFC 5322 §2.1.1 */

struct smtp_message_compose {
    const char *const *to; /* bare addresses (local@domain) */
    size_t nto;
    const char *const *cc;
    size_t ncc;
    const char *subject; /* UTF-8, may be "" */
    const char *body;    /* UTF-8 text, any line ends */
    size_t body_len;
    time_t date;              /* Date header */
    const char *msgid_domain; /* right side of the Message-ID */
};

/*
 * Builds a message. Returns 0, ERROR_INVALID with `why` set (an address
 * that is not a mailbox, CR/LF in the subject, invalid UTF-8, no
 * recipient, too many), ERROR_TOO_BIG, ERROR_CRYPTO (no random octets for
 * the Message-ID) or -ENOMEM.
 */
int smtp_message_compose(const struct smtp_message_compose *c, char **out, size_t *outlen,
                         char *why, size_t whylen);

/* What parse() found; the address arrays are owned by the struct. */
struct smtp_message_info {
    char **rcpts; /* To, Cc and Bcc addresses, each once, in order */
    size_t nrcpts;
    bool has_from, has_date, has_message_id;
    bool eight_bit;    /* an octet >= 0x80 anywhere: needs 8BITMIME */
    size_t header_len; /* octets of the header section, blank line included */
};

/* Parses the header section of `msg` (LF or CRLF line ends). Returns 0,
 * ERROR_INVALID with `why` naming the header and the problem, or -ENOMEM.
 * smtp_message_info_free() must be called after a 0 return only. */
int smtp_message_parse(const char *msg, size_t len, struct smtp_message_info *info, char *why,
                       size_t whylen);
void smtp_message_info_free(struct smtp_message_info *info);

/*
 * Normalizes a submitted message as described at the top. `now` and
 * `msgid_domain` feed the headers it adds. Returns 0, ERROR_INVALID with
 * `why`, ERROR_TOO_BIG (over SMTP_MESSAGE_MAX, or a line over
 * SMTP_MESSAGE_LINE_MAX octets), ERROR_CRYPTO or -ENOMEM.
 */
int smtp_message_normalize(const char *msg, size_t len, time_t now, const char *msgid_domain,
                           char **out, size_t *outlen, char *why, size_t whylen);

/* True if a and b are the same mailbox: the local parts equal, the domains
 * (after the last '@') equal ignoring case. Used to drop duplicates. */
bool smtp_message_address_equal(const char *a, const char *b);

/* "From: <addr>\r\n" for delivery; 0, ERROR_INVALID for a bad address or
 * ERROR_TOO_BIG when buf is too small. */
int smtp_message_from_header(const char *address, char *buf, size_t len);

/*
 * Dot-stuffing, streaming: feed the message (CRLF lines) in pieces; each
 * call appends at most 2 * len + 2 octets to `out` (which must have that
 * room) and returns how many it wrote. `state` starts zeroed and remembers
 * whether the next octet begins a line. A bare CR or LF in the input goes
 * out as CRLF, so no end-of-data look-alike (SMTP smuggling) can be sent.
 * smtp_message_dotstuff_end() writes
 * the terminator: a CRLF if the message did not end with one, then ".\r\n";
 * at most 5 octets.
 */
struct smtp_message_dotstuff {
    bool mid_line; /* false at the start of a line */
    bool last_cr;
};
size_t smtp_message_dotstuff(struct smtp_message_dotstuff *state, const char *in, size_t len,
                             char *out);
size_t smtp_message_dotstuff_end(struct smtp_message_dotstuff *state, char *out);

#endif
