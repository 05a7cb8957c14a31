/*
 * utf8: decoding UTF-8 (RFC 3629) one character at a time, for every module
 * that checks, cuts or escapes text it did not write (message subjects and
 * bodies, log lines, error texts from remote servers).
 *
 * A character is valid only in its shortest form, never a surrogate
 * (U+D800..U+DFFF) and never above U+10FFFF: an overlong or out-of-range
 * form would let a filter that looks for one octet miss the same character
 * written another way. An ASCII octet, NUL included, is a character of one
 * octet; what to do with controls is the caller's business.
 */
#ifndef SMTPSYNC_UTF8_H
#define SMTPSYNC_UTF8_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define UTF8_CHAR_MAX 4 /* octets of the longest character */

/* Length (1 to UTF8_CHAR_MAX) of the valid character that starts s[0..n),
 * with its code point in *cp when cp is not NULL; 0 when s does not start
 * with a whole valid character (n == 0, a truncated sequence included), and
 * *cp is then left as it was. */
size_t utf8_decode(const char *s, size_t n, uint32_t *cp);

/* utf8_decode() without the code point. */
size_t utf8_char_len(const char *s, size_t n);

/* True if s[0..n) is a sequence of whole valid characters (true for n == 0). */
bool utf8_valid(const char *s, size_t n);

#endif
