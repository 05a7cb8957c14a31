/*
 * syntax: the syntax of host names (RFC 1035/1123, IP literals) and of mail
 * addresses (RFC 5321 Mailbox), shared by settings validation and, later,
 * the config file and the SMTP client. Each check that fails writes a
 * plain-language reason into `why` (always NUL-terminated).
 */
#ifndef SMTPSYNC_SYNTAX_H
#define SMTPSYNC_SYNTAX_H

#include <stdbool.h>
#include <stddef.h>

#define SYNTAX_HOSTNAME_MAX 253 /* RFC 1035 */
#define SYNTAX_ADDRESS_MAX  254 /* RFC 5321 path (256) without the brackets */
#define SYNTAX_LOCAL_MAX    64  /* RFC 5321 local-part */

enum syntax_host {
    SYNTAX_HOST_BAD,
    SYNTAX_HOST_DNS,
    SYNTAX_HOST_IPV4,
    SYNTAX_HOST_IPV6,
};

/* True if s holds a control character (below 0x20, or 0x7f): CR and LF in
 * particular, which would let a value inject SMTP commands or headers. */
bool syntax_has_control(const char *s);

bool syntax_ipv4_valid(const char *s);

/* True for "localhost" (any case), an IPv4 literal in 127.0.0.0/8 or the
 * IPv6 literal ::1 (no brackets): addresses only this host can reach. The
 * name is not resolved, so a hosts file cannot move it elsewhere. */
bool syntax_is_loopback(const char *host);

/* True if s is IPv6 text, optionally within [ ]; copies the bare address to
 * bare (barelen >= INET6_ADDRSTRLEN + 1 holds any). */
bool syntax_ipv6_bare(const char *s, char *bare, size_t barelen);

/* A DNS name, an IPv4 literal or an IPv6 literal (with or without brackets);
 * SYNTAX_HOST_BAD with the reason in `why`. */
enum syntax_host syntax_host_classify(const char *h, char *why, size_t whylen);

/* RFC 5322 atext, which RFC 5321's Dot-string and RFC 5322's dot-atom are
 * made of: letters, digits and !#$%&'*+-/=?^_`{|}~; ASCII only. */
bool syntax_atext(unsigned char c);

/* RFC 5321 Mailbox = Local-part "@" ( Domain / address-literal ), ASCII only. */
bool syntax_mailbox_valid(const char *a, char *why, size_t whylen);

#endif
