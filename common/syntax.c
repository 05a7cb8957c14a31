/*
 * syntax: host names and mail addresses, checked once for every input path.
 */
#include "syntax.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

bool syntax_has_control(const char *s)
{
    for (; *s != '\0'; s++)
        if ((unsigned char)*s < 0x20 || (unsigned char)*s == 0x7f)
            return true;
    return false;
}

static bool ldh(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-';
}

/*
 * RFC 1035/1123 host name: dot-separated labels of 1-63 letters, digits and
 * hyphens, not starting or ending with a hyphen, 253 characters at most.
 * A trailing dot (the absolute form) is refused: it is not wanted in SNI
 * (RFC 6066) nor matched by certificate names, and mail domains never carry
 * one, so accepting it would only move the surprise to delivery time.
 * A name whose last label is all digits is refused (RFC 3696 section 2), so
 * a mistyped IPv4 address such as 192.168.1 is not taken for a name.
 */
static bool dns_name_valid(const char *h, char *why, size_t whylen)
{
    size_t n = strlen(h), i, label = 0;
    bool all_digits = true;

    if (n == 0) {
        snprintf(why, whylen, "it is empty");
        return false;
    }
    if (n > SYNTAX_HOSTNAME_MAX) {
        snprintf(why, whylen, "it is longer than %d characters", SYNTAX_HOSTNAME_MAX);
        return false;
    }
    if (h[n - 1] == '.') {
        snprintf(why, whylen, "it ends with a dot; leave the final dot out");
        return false;
    }
    for (i = 0; i <= n; i++) {
        unsigned char c = (unsigned char)h[i];

        if (c == '.' || c == '\0') {
            if (label == 0) {
                snprintf(why, whylen, "%s",
                         i == 0 ? "it starts with a dot" : "it has two dots in a row");
                return false;
            }
            if (h[i - 1] == '-') {
                snprintf(why, whylen, "a part between dots ends with a hyphen");
                return false;
            }
            if (c == '.')
                all_digits = true;
            label = 0;
            continue;
        }
        if (c >= 0x80) {
            snprintf(why, whylen,
                     "it has non-ASCII letters; write an international name in its "
                     "xn-- (punycode) form");
            return false;
        }
        if (!ldh(c)) {
            snprintf(why, whylen, "\"%c\" is not allowed (only letters, digits, hyphens, dots)", c);
            return false;
        }
        if (label == 0 && c == '-') {
            snprintf(why, whylen, "a part between dots starts with a hyphen");
            return false;
        }
        if (++label > 63) {
            snprintf(why, whylen, "a part between dots is longer than 63 characters");
            return false;
        }
        if (c < '0' || c > '9')
            all_digits = false;
    }
    if (all_digits) {
        snprintf(why, whylen, "it looks like an IPv4 address but is not a valid one");
        return false;
    }
    return true;
}

bool syntax_is_loopback(const char *host)
{
    unsigned char a[16];

    if (strcasecmp(host, "localhost") == 0)
        return true;
    if (inet_pton(AF_INET, host, a) == 1)
        return a[0] == 127;
    if (inet_pton(AF_INET6, host, a) == 1)
        return memcmp(a, &in6addr_loopback, sizeof(in6addr_loopback)) == 0;
    return false;
}

bool syntax_ipv4_valid(const char *s)
{
    struct in_addr a;

    return inet_pton(AF_INET, s, &a) == 1;
}

/* IPv6 text, optionally within [ ]; copies the bare address to `bare`. */
bool syntax_ipv6_bare(const char *s, char *bare, size_t barelen)
{
    struct in6_addr a;
    size_t n = strlen(s);

    if (n >= 2 && s[0] == '[' && s[n - 1] == ']') {
        s++;
        n -= 2;
    }
    if (n == 0 || n >= barelen)
        return false;
    memcpy(bare, s, n);
    bare[n] = '\0';
    return inet_pton(AF_INET6, bare, &a) == 1;
}

/*
 * Classifies a host: a DNS name, an IPv4 literal or an IPv6 literal (with or
 * without brackets). On SYNTAX_HOST_BAD, `why` says what is wrong.
 */
enum syntax_host syntax_host_classify(const char *h, char *why, size_t whylen)
{
    char bare[INET6_ADDRSTRLEN + 1] = "";

    if (h[0] == '[' || strchr(h, ':') != NULL) {
        if (syntax_ipv6_bare(h, bare, sizeof(bare)))
            return SYNTAX_HOST_IPV6;
        if (h[0] == '[' && syntax_ipv4_valid(bare))
            snprintf(why, whylen, "only IPv6 addresses go in brackets; write %s", bare);
        else
            snprintf(why, whylen, "it is not a valid IPv6 address");
        return SYNTAX_HOST_BAD;
    }
    if (syntax_ipv4_valid(h))
        return SYNTAX_HOST_IPV4;
    return dns_name_valid(h, why, whylen) ? SYNTAX_HOST_DNS : SYNTAX_HOST_BAD;
}

bool syntax_atext(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c != '\0' && strchr("!#$%&'*+-/=?^_`{|}~", c) != NULL);
}

/*
 * Local-part of an RFC 5321 Mailbox: a Dot-string or a Quoted-string.
 * Returns the length consumed (the '@' is next) or 0 with `why` set.
 */
static size_t local_part_parse(const char *a, char *why, size_t whylen)
{
    size_t i = 0;

    if (a[0] == '"') {
        for (i = 1; a[i] != '"'; i++) {
            unsigned char c = (unsigned char)a[i];

            if (c == '\0') {
                snprintf(why, whylen, "the quoted part before \"@\" has no closing quote");
                return 0;
            }
            if (c == '\\') {
                c = (unsigned char)a[++i];
                if (c < 32 || c > 126) {
                    snprintf(why, whylen, "a backslash in the quoted part escapes nothing");
                    return 0;
                }
            } else if (c < 32 || c > 126) {
                snprintf(why, whylen, "it has non-ASCII characters, which are not supported");
                return 0;
            }
        }
        i++;
        if (a[i] != '@') {
            snprintf(why, whylen, "the quoted part must be followed by \"@\"");
            return 0;
        }
        return i;
    }
    for (; a[i] != '@'; i++) {
        unsigned char c = (unsigned char)a[i];

        if (c == '\0') {
            snprintf(why, whylen, "it has no \"@\"");
            return 0;
        }
        if (c == '.') {
            if (i == 0 || a[i - 1] == '.' || a[i + 1] == '@') {
                snprintf(why, whylen,
                         "the part before \"@\" starts or ends with a dot or "
                         "has two dots in a row");
                return 0;
            }
            continue;
        }
        if (c >= 0x80) {
            snprintf(why, whylen, "it has non-ASCII characters, which are not supported");
            return 0;
        }
        if (c == ' ' || !syntax_atext(c)) {
            if (c == ' ')
                snprintf(why, whylen, "a space is not allowed before \"@\" unless quoted");
            else
                snprintf(why, whylen, "\"%c\" is not allowed before \"@\" unless quoted", c);
            return 0;
        }
    }
    if (i == 0)
        snprintf(why, whylen, "there is nothing before \"@\"");
    return i;
}

/* Domain of a Mailbox: a DNS name or an address literal [IPv4] / [IPv6:...]. */
static bool mail_domain_valid(const char *d, char *why, size_t whylen)
{
    char lit[INET6_ADDRSTRLEN + 8], sub[112];
    size_t n = strlen(d);

    if (n == 0) {
        snprintf(why, whylen, "there is nothing after \"@\"");
        return false;
    }
    if (strchr(d, '@') != NULL) {
        snprintf(why, whylen, "it has more than one \"@\" (quote the part before the last one)");
        return false;
    }
    if (d[0] == '[') {
        if (d[n - 1] != ']' || n - 2 >= sizeof(lit)) {
            snprintf(why, whylen, "the address literal after \"@\" is not closed by \"]\"");
            return false;
        }
        memcpy(lit, d + 1, n - 2);
        lit[n - 2] = '\0';
        if (strncasecmp(lit, "IPv6:", 5) == 0) {
            char bare[INET6_ADDRSTRLEN + 1];

            if (syntax_ipv6_bare(lit + 5, bare, sizeof(bare)) && lit[5] != '[')
                return true;
        } else if (syntax_ipv4_valid(lit)) {
            return true;
        }
        snprintf(why, whylen, "the address literal after \"@\" must be [IPv4] or [IPv6:address]");
        return false;
    }
    if (syntax_ipv4_valid(d)) {
        snprintf(why, whylen, "an IP address after \"@\" must be in brackets, e.g. [%s]", d);
        return false;
    }
    if (!dns_name_valid(d, sub, sizeof(sub))) {
        snprintf(why, whylen, "in the domain after \"@\", %s", sub);
        return false;
    }
    return true;
}

/* RFC 5321 Mailbox = Local-part "@" ( Domain / address-literal ). */
bool syntax_mailbox_valid(const char *a, char *why, size_t whylen)
{
    size_t n = strlen(a), local;

    if (n > SYNTAX_ADDRESS_MAX) {
        snprintf(why, whylen, "it is longer than %d characters", SYNTAX_ADDRESS_MAX);
        return false;
    }
    local = local_part_parse(a, why, whylen);
    if (local == 0)
        return false;
    if (local > SYNTAX_LOCAL_MAX) {
        snprintf(why, whylen, "the part before \"@\" is longer than %d characters",
                 SYNTAX_LOCAL_MAX);
        return false;
    }
    return mail_domain_valid(a + local + 1, why, whylen);
}
